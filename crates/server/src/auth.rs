//! The auth service: checks credentials against the store and writes one audit
//! event per attempt with the real reason. The client only ever sees 235, 535,
//! 534 or 454 (DESIGN reply table); every answer is padded to a near-constant
//! duration so timing does not tell an unknown user from a wrong password.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_proto::{AuthOutcome, Credentials};
use portcullis_store::{AccountStatus, Store, password};

/// Why an attempt failed (audit log only; stable strings for fail2ban).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthReason {
    Ok,
    UnknownUser,
    BadPassword,
    AccountDisabled,
    AuthzidMismatch,
    StoreUnavailable,
}

impl AuthReason {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthReason::Ok => "ok",
            AuthReason::UnknownUser => "unknown_user",
            AuthReason::BadPassword => "bad_password",
            AuthReason::AccountDisabled => "account_disabled",
            AuthReason::AuthzidMismatch => "authzid_mismatch",
            AuthReason::StoreUnavailable => "store_unavailable",
        }
    }
}

pub struct AuthService {
    store: Arc<dyn Store>,
    min_duration: Duration,
}

fn normalise(s: &str) -> String {
    s.trim().to_ascii_lowercase()
}

impl AuthService {
    pub fn new(store: Arc<dyn Store>, min_duration: Duration) -> AuthService {
        AuthService {
            store,
            min_duration,
        }
    }

    /// Checks `creds`, logs the audit event, pads the response time.
    pub async fn authenticate(&self, creds: Credentials, client_ip: IpAddr) -> AuthOutcome {
        let started = tokio::time::Instant::now();
        let (outcome, reason) = self.check(&creds).await;
        tracing::info!(
            target: "portcullis::auth",
            event = "auth",
            client_ip = %client_ip,
            user = %creds.username.escape_debug(),
            mechanism = creds.mechanism.name(),
            result = if matches!(outcome, AuthOutcome::Success { .. }) { "success" } else { "failure" },
            reason = reason.as_str(),
            "authentication attempt"
        );
        tokio::time::sleep_until(started + self.min_duration).await;
        outcome
    }

    async fn check(&self, creds: &Credentials) -> (AuthOutcome, AuthReason) {
        let password = creds.password.clone();
        if let Some(z) = &creds.authzid {
            // RFC 4616 2: we do not let one identity act as another.
            if normalise(z) != normalise(&creds.username) {
                spawn_verify(None, password).await;
                return (AuthOutcome::Failed, AuthReason::AuthzidMismatch);
            }
        }
        let credential = match self.store.credential(&creds.username).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "credential lookup failed");
                return (AuthOutcome::TemporaryFailure, AuthReason::StoreUnavailable);
            }
        };
        let Some(credential) = credential else {
            spawn_verify(None, password).await;
            return (AuthOutcome::Failed, AuthReason::UnknownUser);
        };
        // Verify before looking at status so a disabled account costs the same.
        if !spawn_verify(Some(credential.password_hash.clone()), password).await {
            return (AuthOutcome::Failed, AuthReason::BadPassword);
        }
        if credential.status != AccountStatus::Active {
            return (AuthOutcome::Failed, AuthReason::AccountDisabled);
        }
        (
            AuthOutcome::Success {
                user: credential.address,
            },
            AuthReason::Ok,
        )
    }
}

/// Runs an Argon2 verification on the blocking pool; `None` runs the dummy.
async fn spawn_verify(hash: Option<String>, password: portcullis_proto::Secret) -> bool {
    tokio::task::spawn_blocking(move || match hash {
        Some(h) => password::verify_password(&h, password.expose()),
        None => {
            password::dummy_verify(password.expose());
            false
        }
    })
    .await
    .unwrap_or(false)
}
