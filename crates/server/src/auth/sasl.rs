//! The auth service's part of the issue 6 mechanisms: the stored keys that
//! SCRAM-SHA-256 and CRAM-MD5 need (`Action::LookupSecrets`), and bearer
//! token checks for XOAUTH2 / OAUTHBEARER. The verdict goes through the same
//! pipeline as PLAIN (`AuthService::authenticate`).

use std::net::IpAddr;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use portcullis_proto::sasl::scram::{self, ScramKeys};
use portcullis_proto::session::SaslSecrets;
use portcullis_proto::{AuthOutcome, CredentialRef, Credentials, Mechanism, Secret};
use portcullis_store::{AccountStatus, ScramCredential};
use sha2::Sha256;

use super::{AuthReason, AuthService, Checked, ip_allowed, normalise, unavailable};
use crate::oauth::{TokenError, TokenValidator};
use crate::secretbox::{SecretBox, cram_context};

fn to_proto_keys(c: &ScramCredential) -> Option<ScramKeys> {
    Some(ScramKeys {
        salt: c.salt.clone(),
        iterations: c.iterations,
        stored_key: c.stored_key.as_slice().try_into().ok()?,
        server_key: c.server_key.as_slice().try_into().ok()?,
    })
}

impl AuthService {
    /// Uses the persistent key of the data dir for fake SCRAM salts (see
    /// [`load_fake_salt_key`]), so they do not change across restarts.
    pub fn with_fake_salt_key(mut self, key: [u8; 32]) -> AuthService {
        self.fake_salt_key = key;
        self
    }

    /// Enables CRAM-MD5 (sealed secrets can be opened).
    pub fn with_secret_box(mut self, sealer: Option<SecretBox>) -> AuthService {
        self.sealer = sealer;
        self
    }

    /// Enables XOAUTH2 / OAUTHBEARER.
    pub fn with_tokens(mut self, tokens: Option<Arc<TokenValidator>>) -> AuthService {
        self.tokens = tokens;
        self
    }

    pub fn tokens_enabled(&self) -> bool {
        self.tokens.is_some()
    }

    pub fn cram_enabled(&self) -> bool {
        self.sealer.is_some()
    }

    /// A stable salt for a user without SCRAM keys, so the exchange looks
    /// the same as for a real account (no user enumeration).
    fn fake_salt(&self, user: &str) -> Vec<u8> {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.fake_salt_key) else {
            return vec![0; 16];
        };
        mac.update(user.as_bytes());
        mac.finalize().into_bytes()[..16].to_vec()
    }

    /// Answers `Action::LookupSecrets`.
    pub async fn sasl_secrets(&self, mechanism: Mechanism, username: &str) -> SaslSecrets {
        let user = normalise(username);
        if mechanism == Mechanism::CramMd5 {
            let Some(sealer) = &self.sealer else {
                return SaslSecrets::Cram(Vec::new());
            };
            return match self.directory.cram_secrets(&user).await {
                Ok(list) => SaslSecrets::Cram(
                    list.iter()
                        .filter_map(|c| {
                            let plain =
                                sealer.open(&cram_context(&user, &c.app_password), &c.sealed)?;
                            let text = String::from_utf8(plain.to_vec()).ok()?;
                            Some((
                                CredentialRef::App(c.app_password.clone()),
                                Secret::new(text),
                            ))
                        })
                        .collect(),
                ),
                Err(e) => {
                    tracing::error!(error = %e, "CRAM-MD5 secret lookup failed");
                    SaslSecrets::TemporaryFailure
                }
            };
        }
        let keys = match self.directory.scram_keys(&user).await {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(error = %e, "SCRAM key lookup failed");
                return SaslSecrets::TemporaryFailure;
            }
        };
        // One exchange has one salt: the main password's (first), and every
        // app password derived with the same salt and iteration count.
        let Some(first) = keys.first().map(|k| k.keys.clone()) else {
            return SaslSecrets::Scram {
                salt: self.fake_salt(&user),
                iterations: scram::DEFAULT_ITERATIONS,
                candidates: Vec::new(),
            };
        };
        let candidates = keys
            .iter()
            .filter(|k| k.keys.salt == first.salt && k.keys.iterations == first.iterations)
            .filter(|k| k.keys.iterations <= scram::MAX_ITERATIONS)
            .filter_map(|k| {
                let credential = match &k.app_password {
                    None => CredentialRef::Main,
                    Some(name) => CredentialRef::App(name.clone()),
                };
                Some((credential, to_proto_keys(&k.keys)?))
            })
            .collect();
        SaslSecrets::Scram {
            salt: first.salt,
            iterations: first.iterations,
            candidates,
        }
    }

    /// Why a challenge-response matched no credential of an existing account.
    pub(super) async fn no_match_reason(&self, mechanism: Mechanism, account: &str) -> AuthReason {
        match mechanism {
            m if m.is_scram() => match self.directory.scram_keys(account).await {
                Ok(k) if k.is_empty() => AuthReason::NoScramKeys,
                _ => AuthReason::BadPassword,
            },
            Mechanism::CramMd5 => match self.directory.cram_secrets(account).await {
                Ok(c) if c.is_empty() || self.sealer.is_none() => AuthReason::NoCramSecret,
                _ => AuthReason::BadPassword,
            },
            _ => AuthReason::BadPassword,
        }
    }

    /// XOAUTH2 / OAUTHBEARER: the token must be valid and name an active
    /// account; the user the client claims (if any) must be that account.
    /// A token counts as strong authentication: no 2FA rule applies.
    pub(super) async fn check_token(&self, creds: &Credentials, ip: IpAddr, _now: i64) -> Checked {
        let Some(tokens) = &self.tokens else {
            return Checked::fail(AuthReason::Token(TokenError::UnknownIssuer));
        };
        let valid = match tokens.validate(creds.password.expose()).await {
            Ok(v) => v,
            Err(TokenError::IdpUnavailable) => {
                return Checked {
                    outcome: AuthOutcome::TemporaryFailure,
                    reason: AuthReason::Token(TokenError::IdpUnavailable),
                    credential: None,
                };
            }
            Err(e) => return Checked::fail(AuthReason::Token(e)),
        };
        let credential_name = Some(format!("token:{}", valid.issuer));
        let fail = |reason| Checked {
            outcome: AuthOutcome::Failed,
            reason,
            credential: credential_name.clone(),
        };
        let claimed = normalise(&creds.username);
        if !claimed.is_empty() && claimed != valid.address {
            return fail(AuthReason::AuthzidMismatch);
        }
        let credential = match self.directory.credential(&valid.address).await {
            Ok(Some(c)) => c,
            Ok(None) => return fail(AuthReason::UnknownUser),
            Err(e) => return unavailable(e),
        };
        let security = match self.directory.account_security(&credential.address).await {
            Ok(Some(s)) => s,
            Ok(None) => return fail(AuthReason::UnknownUser),
            Err(e) => return unavailable(e),
        };
        if credential.status != AccountStatus::Active {
            return fail(AuthReason::Disabled);
        }
        if !ip_allowed(&security.allowed_ips, ip) {
            return fail(AuthReason::IpNotAllowed);
        }
        Checked {
            outcome: AuthOutcome::Success {
                user: credential.address,
            },
            reason: AuthReason::Ok,
            credential: credential_name,
        }
    }
}

/// The file in the data dir that keys the fake SCRAM salts of unknown users.
pub const FAKE_SALT_KEY_FILE: &str = "scram-fake-salt.key";

/// Reads (or creates, mode 0600) the key of the fake SCRAM salts. A salt
/// that changed across restarts for unknown users only would tell them
/// apart from real accounts.
pub fn load_fake_salt_key(data_dir: &std::path::Path) -> std::io::Result<[u8; 32]> {
    let path = data_dir.join(FAKE_SALT_KEY_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::random();
            match crate::oauth::builtin::write_new(&path, &key) {
                Ok(()) => key.to_vec(),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read(&path)?,
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    bytes.try_into().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is not 32 bytes", path.display()),
        )
    })
}
