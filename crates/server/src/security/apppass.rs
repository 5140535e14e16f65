//! App passwords (issue 4 item 1): random high-entropy secrets of which only
//! a SHA-256 digest is stored. A fast hash is enough for 130 random bits, so
//! AUTH with an app password costs microseconds, not an Argon2 run.

use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// RFC 4648 base32 alphabet, lowercase (no 0/1/8/9 to confuse with letters).
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Random characters in a generated app password: 26 × 5 = 130 bits.
pub const SECRET_CHARS: usize = 26;

/// Generates an app password. Returns the text shown once to the admin
/// (groups of 4 characters joined by `-`, e.g. `abcd-efgh-...-yz`) and
/// the SHA-256 digest to store. The dashes are part of the secret as shown;
/// [`digest`] ignores dashes and spaces and case, so users may type it either way.
pub fn generate_app_password() -> (String, Vec<u8>) {
    let mut rng = rand::rng();
    let raw: String = (0..SECRET_CHARS)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    let shown = raw
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-");
    let d = digest(&shown);
    (shown, d)
}

/// The canonical form hashed: dashes and whitespace removed, lowercase.
fn canonical(presented: &str) -> String {
    presented
        .chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// SHA-256 of the canonical form of a presented app password (32 bytes).
pub fn digest(presented: &str) -> Vec<u8> {
    Sha256::digest(canonical(presented).as_bytes()).to_vec()
}

/// Constant-time comparison of two digests (false when lengths differ).
pub fn digest_matches(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_secret_has_130_bits_and_matches_its_digest() {
        let (shown, d) = generate_app_password();
        assert_eq!(canonical(&shown).len(), SECRET_CHARS);
        const { assert!(SECRET_CHARS * 5 >= 128) };
        assert_eq!(d.len(), 32);
        assert!(digest_matches(&digest(&shown), &d));
        // Typed without dashes, in capitals, with spaces: still the same.
        let typed = canonical(&shown).to_uppercase();
        assert!(digest_matches(&digest(&typed), &d));
        let (other, _) = generate_app_password();
        assert_ne!(shown, other);
        assert!(!digest_matches(&digest(&other), &d));
    }

    #[test]
    fn digest_mismatch_on_length() {
        assert!(!digest_matches(&[1, 2, 3], &[1, 2]));
    }
}
