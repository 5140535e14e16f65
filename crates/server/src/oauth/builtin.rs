//! The built-in token issuer: an Ed25519 key generated into the data dir on
//! first use (PKCS#8, mode 0600), its JWKS, and the minting of tokens for
//! `portcullis token issue`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::OAuthSetupError;

/// The file in the data dir that holds the key.
pub const KEY_FILE: &str = "oauth-ed25519.key";
/// The `aud` of built-in tokens.
pub const BUILTIN_AUDIENCE: &str = "portcullis";

/// The `iss` of built-in tokens for this server name.
pub fn builtin_issuer_name(hostname: &str) -> String {
    format!("portcullis:{hostname}")
}

/// The built-in signing key. Debug never shows it.
pub struct BuiltinKey {
    pkcs8: Zeroizing<Vec<u8>>,
    public: Vec<u8>,
    pub kid: String,
    pub path: PathBuf,
}

impl std::fmt::Debug for BuiltinKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltinKey")
            .field("kid", &self.kid)
            .finish()
    }
}

fn setup_error(path: &Path, message: impl Into<String>) -> OAuthSetupError {
    OAuthSetupError::BuiltinKey {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Creates `path` with `bytes`, mode 0600; fails if it exists.
pub(crate) fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

impl BuiltinKey {
    /// Reads the key from the data dir, generating it the first time.
    pub fn load_or_create(data_dir: &Path) -> Result<BuiltinKey, OAuthSetupError> {
        let path = data_dir.join(KEY_FILE);
        let pkcs8 = match std::fs::read(&path) {
            Ok(bytes) => Zeroizing::new(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(data_dir).map_err(|e| setup_error(&path, e.to_string()))?;
                let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                    .map_err(|_| setup_error(&path, "cannot generate a key"))?;
                match write_new(&path, doc.as_ref()) {
                    Ok(()) => Zeroizing::new(doc.as_ref().to_vec()),
                    // Another process created it meanwhile: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Zeroizing::new(
                        std::fs::read(&path).map_err(|e| setup_error(&path, e.to_string()))?,
                    ),
                    Err(e) => return Err(setup_error(&path, e.to_string())),
                }
            }
            Err(e) => return Err(setup_error(&path, e.to_string())),
        };
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .map_err(|_| setup_error(&path, "not an Ed25519 PKCS#8 key"))?;
        let public = pair.public_key().as_ref().to_vec();
        let kid = Sha256::digest(&public)[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(BuiltinKey {
            pkcs8,
            public,
            kid,
            path,
        })
    }

    /// The public key as a JWKS (one OKP Ed25519 key).
    pub fn jwks(&self) -> JwkSet {
        let doc = serde_json::json!({"keys": [{
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(&self.public),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        }]});
        serde_json::from_value(doc).unwrap_or(JwkSet { keys: Vec::new() })
    }

    /// Signs a token for `email`, valid from now for `ttl`.
    pub fn sign(
        &self,
        hostname: &str,
        email: &str,
        ttl: Duration,
        now_secs: i64,
    ) -> Option<String> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".to_owned());
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let claims = serde_json::json!({
            "iss": builtin_issuer_name(hostname),
            "aud": BUILTIN_AUDIENCE,
            "sub": email,
            "email": email,
            "iat": now_secs,
            "nbf": now_secs,
            "exp": now_secs.saturating_add(ttl),
        });
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&self.pkcs8)).ok()
    }
}

/// `portcullis token issue`: a token for `email` from the built-in issuer.
pub fn issue_token(
    data_dir: &Path,
    hostname: &str,
    email: &str,
    ttl: Duration,
) -> Result<String, OAuthSetupError> {
    let key = BuiltinKey::load_or_create(data_dir)?;
    let now = crate::quota::now_ms().div_euclid(1000);
    key.sign(hostname, email, ttl, now)
        .ok_or_else(|| setup_error(&key.path, "cannot sign a token"))
}
