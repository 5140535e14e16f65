//! DKIM key pairs: generation (Ed25519 and RSA-2048, RFC 8463 dual signing),
//! dated selector tags, and loading stored keys for signing.
//!
//! Private keys only pass through here; nothing in this module logs or
//! prints them.

use base64::Engine;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use portcullis_store::{DkimAlgorithm, DkimKey, NewDkimKey};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// Key generation or loading failed (the crypto library's words).
#[derive(Debug, thiserror::Error)]
#[error("DKIM key: {0}")]
pub struct KeyError(pub String);

/// The prefix of every selector tag we generate ("pc" for Portcullis).
const TAG_PREFIX: &str = "pc";

/// A fresh tag for a new pair: `pc<YYYY><MM>`, with a letter appended when
/// that month's tag is already used (`pc202612b`, `pc202612c`, ...).
pub fn new_tag(now: time::OffsetDateTime, taken: &[String]) -> String {
    let base = format!("{TAG_PREFIX}{:04}{:02}", now.year(), u8::from(now.month()));
    if !taken.contains(&base) {
        return base;
    }
    for letter in 'b'..='z' {
        let tag = format!("{base}{letter}");
        if !taken.contains(&tag) {
            return tag;
        }
    }
    // 26 rotations in a month: fall back to the day and time.
    format!(
        "{base}{:02}{:02}{:02}{:02}",
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

/// The selector of `algorithm` in the pair `tag`: `e` for Ed25519, `r` for RSA.
pub fn selector(tag: &str, algorithm: DkimAlgorithm) -> String {
    match algorithm {
        DkimAlgorithm::Ed25519 => format!("{tag}e"),
        DkimAlgorithm::Rsa => format!("{tag}r"),
    }
}

/// Generates an Ed25519 and an RSA-2048 key sharing `tag`. RSA generation
/// takes a noticeable fraction of a second; call it off the async runtime.
pub fn generate_pair(tag: &str) -> Result<Vec<NewDkimKey>, KeyError> {
    let err = |e: &dyn std::fmt::Display| KeyError(e.to_string());
    let ed_pkcs8 = Ed25519Key::generate_pkcs8().map_err(|e| err(&e))?;
    let ed = Ed25519Key::from_pkcs8_der(&ed_pkcs8).map_err(|e| err(&e))?;
    let ed_public = ed.public_key();

    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
    use aws_lc_rs::signature::KeyPair;
    let rsa =
        aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).map_err(|e| err(&e))?;
    let rsa_pkcs8: Pkcs8V1Der = rsa.as_der().map_err(|e| err(&e))?;
    let rsa_public: PublicKeyX509Der = rsa.public_key().as_der().map_err(|e| err(&e))?;
    Ok(vec![
        NewDkimKey {
            selector: selector(tag, DkimAlgorithm::Ed25519),
            tag: tag.to_owned(),
            algorithm: DkimAlgorithm::Ed25519,
            private_key: ed_pkcs8,
            public_key: ed_public,
        },
        NewDkimKey {
            selector: selector(tag, DkimAlgorithm::Rsa),
            tag: tag.to_owned(),
            algorithm: DkimAlgorithm::Rsa,
            private_key: rsa_pkcs8.as_ref().to_vec(),
            // SubjectPublicKeyInfo, as `openssl rsa -pubout` prints it and
            // RFC 6376 3.6.1 describes.
            public_key: rsa_public.as_ref().to_vec(),
        },
    ])
}

/// The `p=` value of a key.
pub fn public_key_base64(key: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// A stored key ready to sign; cheap to clone (the parsed key is shared).
#[derive(Clone)]
pub struct SigningKey {
    pub selector: String,
    pub key: SharedKey,
}

/// A parsed DKIM key shared between messages: parsing an RSA key runs
/// `RSA_check_key`, about a fifth of the cost of the signature itself, so it
/// is done once per key, not once per message (issue 9).
#[derive(Clone)]
pub struct SharedKey(std::sync::Arc<mail_auth::common::crypto::DkimKey>);

impl mail_auth::common::crypto::SigningKey for SharedKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl mail_auth::common::headers::Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> mail_auth::common::crypto::Algorithm {
        self.0.algorithm()
    }
}

/// Keys parsed so far, by selector, domain and the stored private key
/// bytes (so a rotated or replaced key is parsed afresh). Bounded: emptied
/// when it reaches [`MAX_CACHED_KEYS`].
type KeyCache = std::collections::HashMap<(String, String, Vec<u8>), SigningKey>;
static PARSED: std::sync::Mutex<Option<KeyCache>> = std::sync::Mutex::new(None);
const MAX_CACHED_KEYS: usize = 1024;

impl SigningKey {
    /// [`SigningKey::load`], parsing each distinct stored key only once per
    /// process.
    pub fn load_cached(stored: &DkimKey) -> Result<SigningKey, KeyError> {
        let id = (
            stored.domain.clone(),
            stored.selector.clone(),
            stored.private_key.clone(),
        );
        if let Ok(cache) = PARSED.lock()
            && let Some(key) = cache.as_ref().and_then(|c| c.get(&id))
        {
            return Ok(key.clone());
        }
        let key = SigningKey::load(stored)?;
        if let Ok(mut cache) = PARSED.lock() {
            let cache = cache.get_or_insert_with(KeyCache::new);
            if cache.len() >= MAX_CACHED_KEYS {
                cache.clear();
            }
            cache.insert(id, key.clone());
        }
        Ok(key)
    }

    pub fn load(stored: &DkimKey) -> Result<SigningKey, KeyError> {
        let err = |e: mail_auth::Error| KeyError(format!("{}: {e}", stored.selector));
        let key = match stored.algorithm {
            DkimAlgorithm::Ed25519 => {
                Ed25519Key::from_pkcs8_maybe_unchecked_der(&stored.private_key)
                    .map_err(err)?
                    .into()
            }
            DkimAlgorithm::Rsa => RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(
                PrivatePkcs8KeyDer::from(stored.private_key.as_slice()),
            ))
            .map_err(err)?
            .into(),
        };
        Ok(SigningKey {
            selector: stored.selector.clone(),
            key: SharedKey(std::sync::Arc::new(key)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_dated_and_unique() {
        let now = time::macros::datetime!(2026-12-01 22:30 UTC);
        assert_eq!(new_tag(now, &[]), "pc202612");
        assert_eq!(new_tag(now, &["pc202612".into()]), "pc202612b");
        assert_eq!(
            new_tag(now, &["pc202612".into(), "pc202612b".into()]),
            "pc202612c"
        );
        assert_eq!(selector("pc202612", DkimAlgorithm::Ed25519), "pc202612e");
        assert_eq!(selector("pc202612", DkimAlgorithm::Rsa), "pc202612r");
    }

    #[test]
    fn generated_keys_load_for_signing() {
        let pair = generate_pair("pc202612").unwrap_or_default();
        assert_eq!(pair.len(), 2);
        assert_eq!(pair[0].public_key.len(), 32, "raw Ed25519 key (RFC 8463)");
        for new in pair {
            let stored = DkimKey {
                domain: "example.com".into(),
                selector: new.selector,
                tag: new.tag,
                algorithm: new.algorithm,
                private_key: new.private_key,
                public_key: new.public_key,
                state: portcullis_store::DkimKeyState::Active,
                created_at: 0,
            };
            assert!(SigningKey::load(&stored).is_ok(), "{}", stored.selector);
            let (a, b) = match (
                SigningKey::load_cached(&stored),
                SigningKey::load_cached(&stored),
            ) {
                (Ok(a), Ok(b)) => (a, b),
                _ => panic!("{} does not load", stored.selector),
            };
            assert!(
                std::sync::Arc::ptr_eq(&a.key.0, &b.key.0),
                "parsed once, shared after"
            );
            let mut replaced = stored.clone();
            replaced.private_key = match generate_pair("pc202701") {
                Ok(p) => p[usize::from(stored.algorithm == DkimAlgorithm::Rsa)]
                    .private_key
                    .clone(),
                Err(e) => panic!("{e}"),
            };
            let c = SigningKey::load_cached(&replaced).ok();
            assert!(
                c.is_some_and(|c| !std::sync::Arc::ptr_eq(&a.key.0, &c.key.0)),
                "a replaced key is parsed afresh"
            );
        }
    }
}
