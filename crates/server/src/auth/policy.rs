//! The policy once a credential matched: app password (expiry, status,
//! allowlists) or main password (status, allowlist, 2FA, maximum age).
//! Shared by every mechanism; the caller has already identified the
//! credential (PLAIN/LOGIN by checking it, SCRAM/CRAM-MD5 in the session).

use std::net::IpAddr;
use std::sync::Arc;

use portcullis_proto::AuthOutcome;

use super::{AuthReason, AuthService, Checked, ip_allowed, unix_secs};

impl AuthService {
    pub(super) fn app_password_policy(
        &self,
        account: &Account,
        app: &portcullis_store::AppPasswordSecret,
        ip: IpAddr,
        now: i64,
    ) -> Checked {
        let now_secs = unix_secs(now);
        let fail = |reason| Checked {
            outcome: AuthOutcome::Failed,
            reason,
            credential: Some(format!("app:{}", app.name)),
        };
        if app.expires_at.is_some_and(|t| t <= now_secs) {
            return fail(AuthReason::AppPasswordExpired);
        }
        if !account.active {
            return fail(AuthReason::Disabled);
        }
        if !ip_allowed(&app.allowed_ips, ip) || !ip_allowed(&account.security.allowed_ips, ip) {
            return fail(AuthReason::IpNotAllowed);
        }
        if self.should_touch(&account.address, &app.name, ip, now_secs) {
            let store = Arc::clone(&self.store);
            let (name, ip_text) = (app.name.clone(), ip.to_string());
            let touched = account.address.clone();
            tokio::spawn(async move {
                if let Err(e) = store
                    .touch_app_password(&touched, &name, now_secs, &ip_text)
                    .await
                {
                    tracing::warn!(error = %e, "cannot record app password use");
                }
            });
        }
        Checked {
            outcome: AuthOutcome::Success {
                user: account.address.clone(),
            },
            reason: AuthReason::Ok,
            credential: Some(format!("app:{}", app.name)),
        }
    }

    /// The main password matched: status, allowlist, 2FA, maximum age.
    pub(super) fn main_password_policy(&self, account: &Account, ip: IpAddr, now: i64) -> Checked {
        let fail = |reason| Checked {
            outcome: AuthOutcome::Failed,
            reason,
            credential: Some("password".to_owned()),
        };
        if !account.active {
            return fail(AuthReason::Disabled);
        }
        if !ip_allowed(&account.security.allowed_ips, ip) {
            return fail(AuthReason::IpNotAllowed);
        }
        if account.security.totp_secret.is_some() {
            return Checked {
                outcome: AuthOutcome::AppPasswordRequired,
                reason: AuthReason::AppPasswordRequired,
                credential: Some("password".to_owned()),
            };
        }
        if let Some(max_age) = self.security.password_max_age {
            let max = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
            if unix_secs(now) >= account.security.password_changed_at.saturating_add(max) {
                return fail(AuthReason::PasswordExpired);
            }
        }
        Checked {
            outcome: AuthOutcome::Success {
                user: account.address.clone(),
            },
            reason: AuthReason::Ok,
            credential: Some("password".to_owned()),
        }
    }
}

/// What the policy checks need to know about the account.
pub(super) struct Account {
    pub(super) address: String,
    pub(super) active: bool,
    pub(super) security: portcullis_store::AccountSecurity,
}
