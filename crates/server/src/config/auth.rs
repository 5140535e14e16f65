//! Issue 6 configuration: per-listener SASL mechanism lists, the `[oauth]`
//! section (built-in issuer, `[[oauth.issuer]]` identity providers) and the
//! secret key used to seal CRAM-MD5 secrets (`secret_key_file` or the
//! `PORTCULLIS_SECRET_KEY` environment variable; never the config file).

use std::path::PathBuf;
use std::time::Duration;

use portcullis_proto::Mechanism;
use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::raw::DurationValue;

/// The environment variable that holds the secret key (base64 or hex of 32 bytes).
pub const SECRET_KEY_ENV: &str = "PORTCULLIS_SECRET_KEY";

/// Default `exp`/`nbf` leeway for bearer tokens.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

/// A JWT signature algorithm we accept. `none` and the HMAC family (HS*) are
/// never accepted: a shared secret cannot tell the IdP from anyone holding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwtAlgorithm {
    Rs256,
    Es256,
    EdDsa,
}

impl JwtAlgorithm {
    pub const ALL: [JwtAlgorithm; 3] = [
        JwtAlgorithm::Rs256,
        JwtAlgorithm::Es256,
        JwtAlgorithm::EdDsa,
    ];

    pub fn name(self) -> &'static str {
        match self {
            JwtAlgorithm::Rs256 => "RS256",
            JwtAlgorithm::Es256 => "ES256",
            JwtAlgorithm::EdDsa => "EdDSA",
        }
    }

    pub fn parse(name: &str) -> Option<JwtAlgorithm> {
        JwtAlgorithm::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// Where an issuer's public keys come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    /// Fetched over HTTP(S), cached, refreshed on an unknown `kid`.
    Url(String),
}

/// One `[[oauth.issuer]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerConfig {
    /// The `iss` claim, exactly.
    pub issuer: String,
    /// The `aud` claim must contain this.
    pub audience: String,
    pub algorithms: Vec<JwtAlgorithm>,
    pub keys: JwksSource,
    /// The claim that holds the account address.
    pub claim: String,
}

/// `[oauth]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuthConfig {
    /// Accept tokens minted by `portcullis token issue` (our own Ed25519 key).
    pub builtin_issuer: bool,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    pub issuers: Vec<IssuerConfig>,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        OAuthConfig {
            builtin_issuer: true,
            leeway: DEFAULT_LEEWAY,
            issuers: Vec::new(),
        }
    }
}

impl OAuthConfig {
    /// Whether any bearer token can be accepted at all.
    pub fn any_issuer(&self) -> bool {
        self.builtin_issuer || !self.issuers.is_empty()
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOAuth {
    pub builtin_issuer: Option<bool>,
    pub leeway: Option<DurationValue>,
    pub issuer: Option<Vec<RawIssuer>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIssuer {
    pub issuer: String,
    pub audience: String,
    pub algorithms: Option<Vec<String>>,
    pub jwks_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    pub claim: Option<String>,
}

/// Parses a listener's `mechanisms` list; names are case-insensitive.
pub(super) fn parse_mechanisms(key: &str, names: &[String]) -> Result<Vec<Mechanism>, ConfigError> {
    let mut out = Vec::new();
    for name in names {
        let Some(m) = Mechanism::parse(name.trim()) else {
            let known: Vec<&str> = Mechanism::ALL.iter().map(|m| m.name()).collect();
            return Err(ConfigError::invalid(
                key,
                format!("unknown mechanism {name:?} (known: {})", known.join(", ")),
            ));
        };
        if !out.contains(&m) {
            out.push(m);
        }
    }
    Ok(out)
}

pub(super) fn mechanism_names(list: &[Mechanism]) -> Vec<String> {
    list.iter().map(|m| m.name().to_owned()).collect()
}

pub(super) fn resolve_oauth(raw: RawOAuth) -> Result<OAuthConfig, ConfigError> {
    let mut oauth = OAuthConfig::default();
    if let Some(v) = raw.builtin_issuer {
        oauth.builtin_issuer = v;
    }
    if let Some(v) = raw.leeway {
        oauth.leeway = super::parse_duration_key("oauth.leeway", &v.0)?;
    }
    for (i, r) in raw.issuer.unwrap_or_default().into_iter().enumerate() {
        let key = |f: &str| format!("oauth.issuer[{i}].{f}");
        let algorithms = match r.algorithms {
            None => JwtAlgorithm::ALL.to_vec(),
            Some(list) => {
                let mut algs = Vec::new();
                for a in &list {
                    let alg = JwtAlgorithm::parse(a.trim()).ok_or_else(|| {
                        ConfigError::invalid(
                            key("algorithms"),
                            format!("{a:?} is not accepted (use RS256, ES256 or EdDSA; none and HS* are always refused)"),
                        )
                    })?;
                    algs.push(alg);
                }
                algs
            }
        };
        let keys = match (r.jwks_file, r.jwks_url) {
            (Some(f), None) => JwksSource::File(f),
            (None, Some(u)) => JwksSource::Url(u),
            _ => {
                return Err(ConfigError::invalid(
                    key("jwks_file"),
                    "set exactly one of jwks_file and jwks_url",
                ));
            }
        };
        oauth.issuers.push(IssuerConfig {
            issuer: r.issuer,
            audience: r.audience,
            algorithms,
            keys,
            claim: r.claim.unwrap_or_else(|| "email".to_owned()),
        });
    }
    validate_oauth(&oauth)?;
    Ok(oauth)
}

pub(super) fn validate_oauth(oauth: &OAuthConfig) -> Result<(), ConfigError> {
    if oauth.leeway > Duration::from_secs(600) {
        return Err(ConfigError::invalid("oauth.leeway", "must be at most 10m"));
    }
    for (i, iss) in oauth.issuers.iter().enumerate() {
        let key = |f: &str| format!("oauth.issuer[{i}].{f}");
        if iss.issuer.trim().is_empty() {
            return Err(ConfigError::invalid(key("issuer"), "must not be empty"));
        }
        if iss.audience.trim().is_empty() {
            return Err(ConfigError::invalid(key("audience"), "must not be empty"));
        }
        if iss.algorithms.is_empty() {
            return Err(ConfigError::invalid(key("algorithms"), "must not be empty"));
        }
        if iss.claim.trim().is_empty() {
            return Err(ConfigError::invalid(key("claim"), "must not be empty"));
        }
        if let JwksSource::Url(u) = &iss.keys
            && !(u.starts_with("https://") || u.starts_with("http://"))
        {
            return Err(ConfigError::invalid(
                key("jwks_url"),
                "must be an http:// or https:// URL",
            ));
        }
        if oauth.issuers[..i].iter().any(|o| o.issuer == iss.issuer) {
            return Err(ConfigError::invalid(key("issuer"), "is configured twice"));
        }
    }
    Ok(())
}

pub(super) fn to_raw_oauth(oauth: &OAuthConfig) -> RawOAuth {
    RawOAuth {
        builtin_issuer: Some(oauth.builtin_issuer),
        leeway: Some(DurationValue(super::units::format_duration(oauth.leeway))),
        issuer: Some(
            oauth
                .issuers
                .iter()
                .map(|i| RawIssuer {
                    issuer: i.issuer.clone(),
                    audience: i.audience.clone(),
                    algorithms: Some(i.algorithms.iter().map(|a| a.name().to_owned()).collect()),
                    jwks_file: match &i.keys {
                        JwksSource::File(f) => Some(f.clone()),
                        JwksSource::Url(_) => None,
                    },
                    jwks_url: match &i.keys {
                        JwksSource::Url(u) => Some(u.clone()),
                        JwksSource::File(_) => None,
                    },
                    claim: Some(i.claim.clone()),
                })
                .collect(),
        ),
    }
}

/// Whether a secret key is available: the environment variable or the file key.
pub fn secret_key_configured(secret_key_file: Option<&std::path::Path>) -> bool {
    secret_key_file.is_some() || std::env::var_os(SECRET_KEY_ENV).is_some_and(|v| !v.is_empty())
}
