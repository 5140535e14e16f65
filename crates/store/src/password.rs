//! Password hashing (Argon2id, PHC strings), verification and generation.
//!
//! Owns the one place where passwords meet cryptography: every stored hash is
//! made by [`hash_password`] and checked by [`verify_password`], with the
//! default parameters of the `argon2` 0.5 crate (Argon2id v19, m=19456 KiB,
//! t=2, p=1). [`dummy_verify`] lets the auth path spend the same time on
//! unknown logins as on known ones.
//!
//! Hashing and verifying are deliberately slow and memory-hungry (tens of
//! milliseconds, ~19 MiB). Callers in async code must run them off the
//! runtime's worker threads, e.g. with `tokio::task::spawn_blocking`.
//!
//! Nothing here logs or returns the password it is given.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::rngs::OsRng;
use rand::{Rng, TryRngCore};

use crate::{Result, StoreError};

/// Characters of generated passwords: ASCII letters and digits without the
/// easily confused `0 O o 1 l I` (56 symbols, about 5.81 bits each).
pub const PASSWORD_ALPHABET: &[u8] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz";

/// Length of generated passwords: 24 symbols of [`PASSWORD_ALPHABET`] carry
/// about 139 bits of entropy.
pub const GENERATED_PASSWORD_LEN: usize = 24;

/// Salt length in octets for new hashes (the PHC recommendation).
const SALT_LEN: usize = 16;

/// An Argon2id hash made with the default parameters (the same ones
/// [`hash_password`] uses) of a random password nobody knows; [`dummy_verify`]
/// checks against it so a failed lookup costs a full verification.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$ZEDCFCXiKDGkg2uvIFyLUw$TOb1gxCuOfkhhiYgwhojxxYbOOpMDhzhdv/VWSRNdHY";

/// Hashes `password` with Argon2id (default parameters) and a fresh random
/// salt from the OS RNG, returning the PHC string (`$argon2id$v=19$...`).
///
/// Errors: `Invalid` if the password is empty or hashing fails,
/// `Unavailable` if the OS RNG fails. Messages never contain the password.
///
/// CPU- and memory-heavy: call it through `spawn_blocking` from async code.
pub fn hash_password(password: &str) -> Result<String> {
    if password.is_empty() {
        return Err(StoreError::Invalid("password is empty".into()));
    }
    let mut salt = [0u8; SALT_LEN];
    OsRng
        .try_fill_bytes(&mut salt)
        .map_err(|e| StoreError::Unavailable(format!("OS random number generator: {e}")))?;
    let salt = SaltString::encode_b64(&salt)
        .map_err(|e| StoreError::Invalid(format!("password salt: {e}")))?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| StoreError::Invalid(format!("password hashing failed: {e}")))?;
    Ok(hash.to_string())
}

/// Whether `password` matches the PHC string `phc`. `false` when it does not
/// and when `phc` is malformed or names an unsupported algorithm. The
/// comparison of the derived key is constant-time (done by `argon2`); the
/// parameters are taken from `phc`.
///
/// CPU- and memory-heavy: call it through `spawn_blocking` from async code.
pub fn verify_password(phc: &str, password: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Runs one verification of `password` against a fixed hash with the same
/// parameters as real ones, and discards the result. Call it when the login
/// does not exist so the reply takes as long as for a wrong password.
///
/// CPU- and memory-heavy: call it through `spawn_blocking` from async code.
pub fn dummy_verify(password: &str) {
    let matched = verify_password(DUMMY_HASH, password);
    std::hint::black_box(matched);
}

/// A new random password of [`GENERATED_PASSWORD_LEN`] characters drawn
/// uniformly from [`PASSWORD_ALPHABET`] with the OS RNG (about 139 bits of
/// entropy).
///
/// # Panics
///
/// If the operating system's random number generator fails, which does not
/// happen on supported platforms once the system has booted.
pub fn generate_password() -> String {
    let mut rng = OsRng.unwrap_err();
    (0..GENERATED_PASSWORD_LEN)
        .map(|_| char::from(PASSWORD_ALPHABET[rng.random_range(0..PASSWORD_ALPHABET.len())]))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn round_trip() {
        let hash = hash_password("correct horse battery staple").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password(&hash, "correct horse battery staple"));
        assert!(!verify_password(&hash, "correct horse battery stapler"));
        assert!(!verify_password(&hash, ""));
    }

    #[test]
    fn salts_differ() {
        let a = hash_password("same").unwrap();
        let b = hash_password("same").unwrap();
        assert_ne!(a, b);
        assert!(verify_password(&a, "same") && verify_password(&b, "same"));
    }

    #[test]
    fn uses_default_parameters() {
        let hash = hash_password("x").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(DUMMY_HASH.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        let dummy = PasswordHash::new(DUMMY_HASH).unwrap();
        let real = PasswordHash::new(&hash).unwrap();
        assert_eq!(dummy.params, real.params);
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.version, real.version);
        assert_eq!(
            dummy.hash.map(|h| h.len()),
            real.hash.map(|h| h.len()),
            "output length"
        );
        assert_eq!(dummy.salt.map(|s| s.len()), real.salt.map(|s| s.len()));
    }

    #[test]
    fn dummy_verify_runs() {
        dummy_verify("anything");
        assert!(!verify_password(DUMMY_HASH, "anything"));
    }

    #[test]
    fn malformed_hash_is_false() {
        for bad in [
            "",
            "hunter2",
            "$argon2id$",
            "$argon2id$v=19$m=19456,t=2,p=1$",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$!!!",
            "$unknown$v=1$abc$def",
        ] {
            assert!(!verify_password(bad, "hunter2"), "{bad:?}");
        }
    }

    #[test]
    fn empty_password_is_refused_without_echo() {
        match hash_password("") {
            Err(StoreError::Invalid(msg)) => assert_eq!(msg, "password is empty"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn generated_passwords() {
        let alphabet: HashSet<char> = PASSWORD_ALPHABET.iter().map(|&b| char::from(b)).collect();
        assert_eq!(alphabet.len(), PASSWORD_ALPHABET.len(), "duplicate symbols");
        for c in ['0', 'O', 'o', '1', 'l', 'I'] {
            assert!(!alphabet.contains(&c), "{c} is ambiguous");
        }
        let bits = (PASSWORD_ALPHABET.len() as f64).log2() * GENERATED_PASSWORD_LEN as f64;
        assert!(bits >= 128.0, "{bits} bits");

        let mut seen = HashSet::new();
        for _ in 0..1000 {
            let p = generate_password();
            assert_eq!(p.chars().count(), GENERATED_PASSWORD_LEN);
            assert!(p.chars().all(|c| alphabet.contains(&c)), "{p}");
            assert!(seen.insert(p), "repeated password");
        }
        // Over 24,000 draws every symbol should appear.
        let used: HashSet<char> = seen.iter().flat_map(|p| p.chars()).collect();
        assert_eq!(used, alphabet);
    }
}
