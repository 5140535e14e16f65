//! Bearer tokens for XOAUTH2 and OAUTHBEARER (issue 6, RFC 7628): JWTs
//! validated locally against configured issuers (`[[oauth.issuer]]`, keys from
//! a JWKS file or URL) and the built-in issuer (our own Ed25519 key in the
//! data dir, used by `portcullis token issue`).
//!
//! Accepts RS256, ES256 and EdDSA only, per issuer as configured; `alg: none`
//! and HS* are always refused. `exp` is required; `exp`/`nbf` get
//! `[oauth] leeway`. The account is the issuer's `claim` (default `email`).
//! Never logs a token.

pub(crate) mod builtin;
mod fetch;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::config::{IssuerConfig, JwksSource, JwtAlgorithm, OAuthConfig};

pub use builtin::{BUILTIN_AUDIENCE, BuiltinKey, builtin_issuer_name, issue_token};

/// Why a token was refused (audit reason codes; stable strings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    AlgorithmRefused,
    UnknownIssuer,
    UnknownKid,
    BadSignature,
    Expired,
    NotYetValid,
    WrongAudience,
    NoClaim,
    /// The JWKS could not be fetched (454 4.7.0).
    IdpUnavailable,
}

impl TokenError {
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Malformed => "token_malformed",
            TokenError::AlgorithmRefused => "token_alg_refused",
            TokenError::UnknownIssuer => "token_unknown_issuer",
            TokenError::UnknownKid => "token_unknown_kid",
            TokenError::BadSignature => "token_bad_signature",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::WrongAudience => "token_wrong_audience",
            TokenError::NoClaim => "token_no_claim",
            TokenError::IdpUnavailable => "idp_unavailable",
        }
    }
}

/// Why the validator could not be set up (names the key or file).
#[derive(Debug, thiserror::Error)]
pub enum OAuthSetupError {
    #[error("oauth.issuer {issuer}: cannot read jwks_file {path}: {message}")]
    JwksFile {
        issuer: String,
        path: String,
        message: String,
    },
    #[error("built-in token issuer key {path}: {message}")]
    BuiltinKey { path: String, message: String },
}

/// A token that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidToken {
    /// The account address from the issuer's claim.
    pub address: String,
    /// The `iss` of the token.
    pub issuer: String,
}

/// Minimum time between two reloads of a fresh key set on an unknown `kid`.
const REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// Minimum time between two attempts to load keys that are missing or stale.
const RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// Keys fetched from a URL are re-fetched after this long.
const URL_TTL: Duration = Duration::from_secs(3600);

enum KeySource {
    Static,
    File(std::path::PathBuf),
    Url(String),
}

struct KeyCache {
    set: JwkSet,
    loaded: Option<Instant>,
    last_attempt: Option<Instant>,
    last_kid_refresh: Option<Instant>,
}

struct Issuer {
    cfg: IssuerConfig,
    source: KeySource,
    cache: tokio::sync::Mutex<KeyCache>,
}

/// Validates bearer tokens against the configured issuers.
pub struct TokenValidator {
    leeway: u64,
    issuers: Vec<Issuer>,
}

fn read_jwks(path: &Path) -> Result<JwkSet, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("not a JWKS document: {e}"))
}

fn alg_of(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::Rs256 => Algorithm::RS256,
        JwtAlgorithm::Es256 => Algorithm::ES256,
        JwtAlgorithm::EdDsa => Algorithm::EdDSA,
    }
}

fn json_part(part: &str) -> Result<serde_json::Value, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
}

impl TokenValidator {
    /// Sets up the issuers of `[oauth]`; `None` when no issuer is enabled.
    /// Reads JWKS files and (if enabled) loads or creates the built-in key.
    pub fn new(
        config: &OAuthConfig,
        data_dir: &Path,
        hostname: &str,
    ) -> Result<Option<TokenValidator>, OAuthSetupError> {
        if !config.any_issuer() {
            return Ok(None);
        }
        let mut issuers = Vec::new();
        if config.builtin_issuer {
            let key = BuiltinKey::load_or_create(data_dir)?;
            issuers.push(Issuer {
                cfg: IssuerConfig {
                    issuer: builtin_issuer_name(hostname),
                    audience: BUILTIN_AUDIENCE.to_owned(),
                    algorithms: vec![JwtAlgorithm::EdDsa],
                    keys: JwksSource::File(key.path.clone()),
                    claim: "email".to_owned(),
                },
                source: KeySource::Static,
                cache: tokio::sync::Mutex::new(KeyCache {
                    set: key.jwks(),
                    loaded: Some(Instant::now()),
                    last_attempt: None,
                    last_kid_refresh: None,
                }),
            });
        }
        for cfg in &config.issuers {
            let (source, set) = match &cfg.keys {
                JwksSource::File(path) => {
                    let set = read_jwks(path).map_err(|message| OAuthSetupError::JwksFile {
                        issuer: cfg.issuer.clone(),
                        path: path.display().to_string(),
                        message,
                    })?;
                    (KeySource::File(path.clone()), set)
                }
                JwksSource::Url(url) => (KeySource::Url(url.clone()), JwkSet { keys: Vec::new() }),
            };
            let loaded = matches!(source, KeySource::File(_)).then(Instant::now);
            issuers.push(Issuer {
                cfg: cfg.clone(),
                source,
                cache: tokio::sync::Mutex::new(KeyCache {
                    set,
                    loaded,
                    last_attempt: None,
                    last_kid_refresh: None,
                }),
            });
        }
        Ok(Some(TokenValidator {
            leeway: config.leeway.as_secs(),
            issuers,
        }))
    }

    /// Checks `token`; on success, the account address it names.
    pub async fn validate(&self, token: &str) -> Result<ValidToken, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header = json_part(h)?;
        let alg = match header.get("alg").and_then(|a| a.as_str()) {
            Some(name) => JwtAlgorithm::parse(name).ok_or(TokenError::AlgorithmRefused)?,
            None => return Err(TokenError::Malformed),
        };
        let kid = header
            .get("kid")
            .and_then(|k| k.as_str())
            .map(str::to_owned);
        let claims = json_part(p)?;
        let iss = claims
            .get("iss")
            .and_then(|i| i.as_str())
            .ok_or(TokenError::UnknownIssuer)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.cfg.issuer == iss)
            .ok_or(TokenError::UnknownIssuer)?;
        if !issuer.cfg.algorithms.contains(&alg) {
            return Err(TokenError::AlgorithmRefused);
        }
        let keys = issuer.keys_for(kid.as_deref()).await?;
        let mut validation = Validation::new(alg_of(alg));
        validation.set_audience(&[&issuer.cfg.audience]);
        validation.set_issuer(&[&issuer.cfg.issuer]);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let mut last = TokenError::UnknownKid;
        for jwk in &keys {
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            match jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation) {
                Ok(data) => {
                    let address = data
                        .claims
                        .get(&issuer.cfg.claim)
                        .and_then(|v| v.as_str())
                        .filter(|s| !s.trim().is_empty())
                        .ok_or(TokenError::NoClaim)?;
                    return Ok(ValidToken {
                        address: address.trim().to_ascii_lowercase(),
                        issuer: issuer.cfg.issuer.clone(),
                    });
                }
                Err(e) => match e.kind() {
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidKeyFormat
                    | ErrorKind::InvalidEcdsaKey
                    | ErrorKind::InvalidEddsaKey
                    | ErrorKind::InvalidRsaKey(_)
                    | ErrorKind::InvalidAlgorithm
                    | ErrorKind::UnsupportedAlgorithm => last = TokenError::BadSignature,
                    ErrorKind::ExpiredSignature => return Err(TokenError::Expired),
                    ErrorKind::ImmatureSignature => return Err(TokenError::NotYetValid),
                    ErrorKind::InvalidAudience => return Err(TokenError::WrongAudience),
                    ErrorKind::InvalidIssuer => return Err(TokenError::UnknownIssuer),
                    _ => return Err(TokenError::Malformed),
                },
            }
        }
        Err(last)
    }
}

impl Issuer {
    /// The keys that may have signed a token with this `kid` (every key when
    /// the token names none). Reloads the keys once on an unknown `kid`.
    async fn keys_for(&self, kid: Option<&str>) -> Result<Vec<jsonwebtoken::jwk::Jwk>, TokenError> {
        let mut cache = self.cache.lock().await;
        let stale = match (&self.source, cache.loaded) {
            (KeySource::Url(_), Some(at)) => at.elapsed() > URL_TTL,
            (KeySource::Url(_), None) => true,
            _ => false,
        };
        let pick = |set: &JwkSet| -> Vec<jsonwebtoken::jwk::Jwk> {
            match kid {
                Some(k) => set.find(k).cloned().into_iter().collect(),
                None => set.keys.clone(),
            }
        };
        let found = pick(&cache.set);
        if !found.is_empty() && !stale {
            return Ok(found);
        }
        // A missing or stale key set is (re)loaded, retrying a failed load
        // at most every RETRY_INTERVAL; an unknown kid in a fresh set
        // triggers at most one refresh per REFRESH_INTERVAL, so tokens with
        // made-up kids cannot make us hammer the IdP.
        let elapsed = |t: Option<Instant>, d: Duration| t.is_none_or(|t| t.elapsed() >= d);
        let may_reload = if cache.loaded.is_none() || stale {
            elapsed(cache.last_attempt, RETRY_INTERVAL)
        } else {
            elapsed(cache.last_kid_refresh, REFRESH_INTERVAL)
        };
        if may_reload && !(cache.loaded.is_none() || stale) {
            cache.last_kid_refresh = Some(Instant::now());
        }
        if may_reload {
            cache.last_attempt = Some(Instant::now());
            let reloaded = match &self.source {
                KeySource::Static => None,
                KeySource::File(path) => read_jwks(path).ok(),
                KeySource::Url(url) => match fetch::fetch_jwks(url).await {
                    Ok(set) => Some(set),
                    Err(e) => {
                        tracing::warn!(issuer = %self.cfg.issuer, url = %url, error = %e, "cannot fetch JWKS");
                        None
                    }
                },
            };
            match reloaded {
                Some(set) => {
                    cache.set = set;
                    cache.loaded = Some(Instant::now());
                }
                None if cache.loaded.is_none() => return Err(TokenError::IdpUnavailable),
                None => {}
            }
        }
        let found = pick(&cache.set);
        match (found.is_empty(), cache.loaded) {
            (true, None) => Err(TokenError::IdpUnavailable),
            (true, Some(_)) => Err(TokenError::UnknownKid),
            (false, _) => Ok(found),
        }
    }
}
