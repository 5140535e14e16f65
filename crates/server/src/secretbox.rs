//! Sealing of password-equivalent secrets at rest (issue 6: CRAM-MD5 secrets
//! of app passwords that opted in) with ChaCha20-Poly1305. The key is 32
//! bytes from the `PORTCULLIS_SECRET_KEY` environment variable or from
//! `secret_key_file` (base64 or hex text, or 32 raw bytes), never from the
//! config file. Each sealed value is bound to its context (account and app
//! password name) as associated data, so a row cannot be swapped for another.

use std::path::Path;

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use zeroize::Zeroizing;

use crate::config::SECRET_KEY_ENV;

const NONCE_LEN: usize = 12;

/// Why the secret key could not be loaded (never contains key material).
#[derive(Debug, thiserror::Error)]
pub enum SecretKeyError {
    #[error("no secret key: set {SECRET_KEY_ENV} or secret_key_file")]
    Missing,
    #[error("cannot read secret key file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the secret key from {0} is not 32 bytes of base64, hex or raw data")]
    Invalid(&'static str),
}

/// A loaded key. Debug never shows it.
#[derive(Clone)]
pub struct SecretBox {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(<redacted>)")
    }
}

fn decode_key(bytes: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
    let text = std::str::from_utf8(bytes).map(str::trim).ok();
    let decoded: Option<Zeroizing<Vec<u8>>> = match text {
        Some(t) if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(Zeroizing::new(
                (0..32)
                    .filter_map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16).ok())
                    .collect(),
            ))
        }
        Some(t) if !t.is_empty() => base64::engine::general_purpose::STANDARD
            .decode(t)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t))
            .ok()
            .map(Zeroizing::new),
        _ => None,
    };
    let decoded = match decoded {
        Some(d) if d.len() == 32 => d,
        _ if bytes.len() == 32 => Zeroizing::new(bytes.to_vec()),
        _ => return None,
    };
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&decoded);
    Some(key)
}

impl SecretBox {
    pub fn from_key(key: &[u8; 32]) -> SecretBox {
        SecretBox {
            cipher: ChaCha20Poly1305::new(Key::from_slice(key)),
        }
    }

    /// Loads the key: the environment variable wins over the file.
    pub fn load(key_file: Option<&Path>) -> Result<SecretBox, SecretKeyError> {
        if let Some(v) = std::env::var_os(SECRET_KEY_ENV).filter(|v| !v.is_empty()) {
            let key =
                decode_key(v.as_encoded_bytes()).ok_or(SecretKeyError::Invalid(SECRET_KEY_ENV))?;
            return Ok(SecretBox::from_key(&key));
        }
        let Some(path) = key_file else {
            return Err(SecretKeyError::Missing);
        };
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| SecretKeyError::Io {
            path: path.display().to_string(),
            source,
        })?);
        let key = decode_key(&bytes).ok_or(SecretKeyError::Invalid("secret_key_file"))?;
        Ok(SecretBox::from_key(&key))
    }

    /// The key when a listener enables CRAM-MD5 (an error if it cannot be
    /// loaded then), else whatever key is configured, else `None`.
    pub fn load_if_needed(
        config: &crate::config::Config,
    ) -> Result<Option<SecretBox>, SecretKeyError> {
        let needed = config
            .listeners
            .iter()
            .any(|l| l.enabled && l.mechanisms.contains(&portcullis_proto::Mechanism::CramMd5));
        match SecretBox::load(config.secret_key_file.as_deref()) {
            Ok(b) => Ok(Some(b)),
            Err(SecretKeyError::Missing) if !needed => Ok(None),
            Err(e) if needed => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "secret key not loaded");
                Ok(None)
            }
        }
    }

    /// Encrypts `plain` bound to `context`: nonce || ciphertext+tag.
    pub fn seal(&self, context: &str, plain: &[u8]) -> Option<Vec<u8>> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: context.as_bytes(),
                },
            )
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Some(out)
    }

    /// Decrypts what [`SecretBox::seal`] made for the same `context`.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if sealed.len() < NONCE_LEN + 16 {
            return None;
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: context.as_bytes(),
                },
            )
            .ok()
            .map(Zeroizing::new)
    }
}

/// The associated data of an app password's CRAM-MD5 secret.
pub fn cram_context(account: &str, app_password: &str) -> String {
    format!(
        "portcullis cram-md5 {} {}",
        account.to_ascii_lowercase(),
        app_password.to_ascii_lowercase()
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_binding() {
        let b = SecretBox::from_key(&[9; 32]);
        let sealed = b.seal("ctx a", b"secret").unwrap();
        assert_eq!(b.open("ctx a", &sealed).unwrap().as_slice(), b"secret");
        assert!(b.open("ctx b", &sealed).is_none(), "bound to its context");
        assert!(
            SecretBox::from_key(&[8; 32])
                .open("ctx a", &sealed)
                .is_none()
        );
        assert!(!format!("{b:?}").contains('9'));
    }

    #[test]
    fn key_formats() {
        let hex = "00".repeat(31) + "01";
        assert_eq!(decode_key(hex.as_bytes()).unwrap()[31], 1);
        let b64 = base64::engine::general_purpose::STANDARD.encode([5u8; 32]);
        assert_eq!(*decode_key(format!("{b64}\n").as_bytes()).unwrap(), [5; 32]);
        assert_eq!(*decode_key(&[7u8; 32]).unwrap(), [7; 32]);
        assert!(decode_key(b"short").is_none());
    }
}
