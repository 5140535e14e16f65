//! The auth service: checks credentials against the store and writes one audit
//! event per attempt with the real reason. The client only ever sees 235, 535,
//! 534, 454 or a closing 421 (DESIGN reply table); every answer is padded to a
//! near-constant duration so timing does not tell an unknown user from a
//! wrong password.
//!
//! Order of the checks (issue 4): ban → brute-force budget → account lookup →
//! app password (SHA-256 digest, constant-time compare against every app
//! password of the account; expiry and allowlists honoured) or main password
//! (Argon2; disabled, account allowlist, 2FA → 534, maximum age) → audit.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use portcullis_proto::{AuthOutcome, CredentialRef, Credentials, Reply, Verification};
use portcullis_store::{AccountStatus, AuthEvent, Ban, Store, StoreError};

use crate::config::SecurityConfig;
use crate::quota::now_ms;
use crate::security::apppass;
use crate::security::audit::{AuditLog, tls_version};
use crate::security::bans::{self, BanList};
use crate::security::bruteforce::{self, BruteForce, Budget};

mod policy;
mod sasl;

pub use sasl::{FAKE_SALT_KEY_FILE, load_fake_salt_key};

use policy::Account;

/// Why an attempt failed (audit log only; stable strings for fail2ban and
/// `portcullis audit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthReason {
    Ok,
    UnknownUser,
    BadPassword,
    Disabled,
    AuthzidMismatch,
    IpNotAllowed,
    AppPasswordRequired,
    AppPasswordExpired,
    PasswordExpired,
    RateLimited,
    Banned,
    StoreUnavailable,
    /// SCRAM for an account whose password predates SCRAM keys (issue 6).
    NoScramKeys,
    /// CRAM-MD5 for an account without an app password that allows it.
    NoCramSecret,
    /// A bearer token was refused; the detail says why.
    Token(crate::oauth::TokenError),
}

impl AuthReason {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthReason::Ok => "ok",
            AuthReason::UnknownUser => "unknown_user",
            AuthReason::BadPassword => "bad_password",
            AuthReason::Disabled => "disabled",
            AuthReason::AuthzidMismatch => "authzid_mismatch",
            AuthReason::IpNotAllowed => "ip_not_allowed",
            AuthReason::AppPasswordRequired => "app_password_required",
            AuthReason::AppPasswordExpired => "app_password_expired",
            AuthReason::PasswordExpired => "password_expired",
            AuthReason::RateLimited => "rate_limited",
            AuthReason::Banned => "banned",
            AuthReason::StoreUnavailable => "store_unavailable",
            AuthReason::NoScramKeys => "no_scram_keys",
            AuthReason::NoCramSecret => "no_cram_secret",
            AuthReason::Token(e) => e.reason(),
        }
    }
}

/// Most audit events read at startup to restore usual IPs.
pub const USUAL_IP_SEED_LIMIT: usize = 100_000;

/// Where an AUTH attempt comes from (for the audit event).
#[derive(Clone, Debug)]
pub struct AuthContext {
    pub session_id: String,
    pub listener: &'static str,
    pub client_ip: IpAddr,
    /// The connection's TLS description, if any.
    pub tls: Option<String>,
}

/// What the driver does with an AUTH attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthDecision {
    /// Hand this outcome to the session (235/535/534/454).
    Outcome(AuthOutcome),
    /// Send this reply (`421 4.7.0`) and close the connection: the
    /// brute-force defence refuses this client.
    Close(Reply),
}

/// `421 4.7.0` for clients the brute-force defence or a ban refuses.
pub fn refused_reply() -> Reply {
    Reply::too_many_auth_failures()
}

/// `421 4.7.0` at the greeting for a banned network.
pub fn banned_greeting_reply() -> Reply {
    Reply::banned()
}

/// The result of the credential check proper.
struct Checked {
    outcome: AuthOutcome,
    reason: AuthReason,
    credential: Option<String>,
}

impl Checked {
    fn fail(reason: AuthReason) -> Checked {
        Checked {
            outcome: AuthOutcome::Failed,
            reason,
            credential: None,
        }
    }
}

pub struct AuthService {
    store: Arc<dyn Store>,
    /// Credential, security and app password reads, cached (issue 9).
    directory: Arc<crate::directory::Directory>,
    /// Derives stable fake SCRAM salts for unknown users (issue 6).
    fake_salt_key: [u8; 32],
    /// Opens sealed CRAM-MD5 secrets; `None` without a secret key.
    sealer: Option<crate::secretbox::SecretBox>,
    /// Validates bearer tokens; `None` when no issuer is enabled.
    tokens: Option<Arc<crate::oauth::TokenValidator>>,
    security: SecurityConfig,
    bruteforce: BruteForce,
    bans: BanList,
    audit: AuditLog,
    /// When each (account, app password, client IP) use was last written,
    /// Unix seconds: a use is recorded at most once per
    /// [`TOUCH_INTERVAL_S`], not with one write transaction per login
    /// (issue 9).
    touched: std::sync::Mutex<std::collections::HashMap<(String, String, IpAddr), i64>>,
}

/// How stale an app password's "last used" may be (issue 9).
const TOUCH_INTERVAL_S: i64 = 60;

fn normalise(s: &str) -> String {
    s.trim().to_ascii_lowercase()
}

fn unix_secs(now_ms: i64) -> i64 {
    now_ms.div_euclid(1000)
}

/// Whether `ip` is inside one of `cidrs` (CIDR or bare IP texts). An empty
/// list allows every IP; entries that do not parse match nothing.
pub fn ip_allowed(cidrs: &[String], ip: IpAddr) -> bool {
    if cidrs.is_empty() {
        return true;
    }
    let canonical = ip.to_canonical();
    cidrs
        .iter()
        .filter_map(|c| bans::parse_network(c))
        .any(|net: IpNet| net.contains(&ip) || net.contains(&canonical))
}

impl AuthService {
    /// Shares `directory` (one cache per process) instead of its own.
    pub fn with_directory(mut self, directory: Arc<crate::directory::Directory>) -> AuthService {
        self.directory = directory;
        self
    }

    pub fn new(store: Arc<dyn Store>, security: &SecurityConfig, audit: AuditLog) -> AuthService {
        AuthService {
            directory: Arc::new(crate::directory::Directory::new(Arc::clone(&store))),
            store,
            fake_salt_key: rand::random(),
            sealer: None,
            tokens: None,
            bruteforce: BruteForce::new(security.bruteforce.clone()),
            security: security.clone(),
            bans: BanList::new(),
            audit,
            touched: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Whether this use of an app password must be written (the first from
    /// this IP in [`TOUCH_INTERVAL_S`]); remembers it if so.
    pub(crate) fn should_touch(
        &self,
        account: &str,
        name: &str,
        ip: IpAddr,
        now_secs: i64,
    ) -> bool {
        let Ok(mut touched) = self.touched.lock() else {
            return true;
        };
        if touched.len() >= 10_000 {
            touched.retain(|_, at| now_secs - *at < TOUCH_INTERVAL_S);
        }
        let key = (account.to_owned(), name.to_owned(), ip);
        match touched.get(&key) {
            Some(at) if now_secs - *at < TOUCH_INTERVAL_S => false,
            _ => {
                touched.insert(key, now_secs);
                true
            }
        }
    }

    /// The brute-force counters (for tests and diagnostics).
    pub fn bruteforce(&self) -> &BruteForce {
        &self.bruteforce
    }

    /// (Re)loads the active bans from the store (startup and periodically,
    /// so `portcullis ban add|remove` reach a running server).
    pub async fn load_bans(&self) -> Result<usize, StoreError> {
        let now = now_ms();
        let list = self.store.list_bans(now).await?;
        for b in &list {
            if let Some(net) = bans::parse_network(&b.network) {
                self.bruteforce.note_ban(net, b.strikes, b.until_ms);
            }
        }
        let n = list.len();
        self.bans.replace_all(list, now);
        Ok(n)
    }

    /// Restores the usual IPs of accounts from the successful logins in the
    /// audit trail (the counters live in memory), so a restart does not let
    /// an automatic subnet ban lock users out of their usual address.
    /// Reads at most the newest [`USUAL_IP_SEED_LIMIT`] events.
    pub async fn seed_usual_ips(&self) -> Result<usize, StoreError> {
        let ttl =
            i64::try_from(self.security.bruteforce.usual_ip_ttl.as_millis()).unwrap_or(i64::MAX);
        let filter = portcullis_store::AuthEventFilter {
            since_ms: Some(now_ms().saturating_sub(ttl)),
            limit: Some(USUAL_IP_SEED_LIMIT),
            ..portcullis_store::AuthEventFilter::default()
        };
        let events = self.store.auth_events(&filter).await?;
        let mut seeded = 0;
        // Oldest first, so the newest success of each (IP, user) wins.
        for ev in events.iter().rev().filter(|e| e.success) {
            if let Ok(ip) = ev.client_ip.parse::<IpAddr>() {
                self.bruteforce.record_success(ip, &ev.user, ev.at_ms);
                seeded += 1;
            }
        }
        Ok(seeded)
    }

    /// Writes the queued audit events (bounded wait); for shutdown.
    pub async fn flush_audit(&self) {
        self.audit.flush().await;
    }

    /// Drops audit events older than `[security] audit_retention`.
    pub async fn prune_audit(&self) {
        let keep = i64::try_from(self.security.audit_retention.as_millis()).unwrap_or(i64::MAX);
        match self
            .store
            .prune_auth_events(now_ms().saturating_sub(keep))
            .await
        {
            Ok(n) if n > 0 => tracing::info!(removed = n, "pruned old auth events"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot prune auth events"),
        }
    }

    /// The ban that refuses a new connection from `ip` at the greeting, if
    /// any. Trusted networks are exempt; automatic bans spare addresses from
    /// which some account logged in successfully (its usual IPs).
    pub fn greeting_ban(&self, ip: IpAddr) -> Option<Ban> {
        if self.security.is_trusted(ip) {
            return None;
        }
        let now = now_ms();
        let ban = self.bans.find(ip, now)?;
        if bans::is_automatic(&ban) && self.bruteforce.is_usual_for_anyone(ip, now) {
            return None;
        }
        Some(ban)
    }

    /// Whether `user` (an authenticated account) may use `sender` as MAIL
    /// FROM (or header From:): its own address, or an address or whole
    /// domain (`@dom`) granted with `account allow-sender`; case-insensitive.
    /// Always true when `[security] enforce_sender` is off. The null sender
    /// (`""`) is allowed: it claims no address.
    pub async fn sender_allowed(&self, user: &str, sender: &str) -> Result<bool, StoreError> {
        if !self.security.enforce_sender {
            return Ok(true);
        }
        let sender = normalise(sender);
        if sender.is_empty() {
            return Ok(true);
        }
        let user = normalise(user);
        if sender == user {
            return Ok(true);
        }
        let Some(sec) = self.directory.account_security(&user).await? else {
            return Ok(false);
        };
        let domain = sender.rsplit_once('@').map(|(_, d)| d);
        Ok(sec.allowed_senders.iter().any(|granted| {
            let granted = normalise(granted);
            match granted.strip_prefix('@') {
                Some(d) => domain == Some(d),
                None => granted == sender,
            }
        }))
    }

    /// Whether the header From: must be checked after DATA too.
    pub fn check_header_from(&self) -> bool {
        self.security.enforce_sender && self.security.check_header_from
    }

    /// Checks `creds`, records the audit event, pads the response time.
    pub async fn authenticate(&self, creds: Credentials, ctx: &AuthContext) -> AuthDecision {
        let started = tokio::time::Instant::now();
        let now = now_ms();
        let ip = ctx.client_ip.to_canonical();
        let user = creds.username.clone();
        let trusted = self.security.is_trusted(ip);
        let fp = bruteforce::fingerprint(&user, creds.password.expose().as_bytes());
        let mut extra = Duration::ZERO;

        let gate =
            if trusted {
                None
            } else if self.bans.find(ip, now).is_some_and(|b| {
                !(bans::is_automatic(&b) && self.bruteforce.is_usual(ip, &user, now))
            }) {
                Some(AuthReason::Banned)
            } else {
                match self.bruteforce.check(ip, &user, now) {
                    Budget::Allow => None,
                    Budget::Delay(d) => {
                        extra = d;
                        None
                    }
                    Budget::Block => Some(AuthReason::RateLimited),
                }
            };

        let (decision, checked) = match gate {
            Some(reason) => {
                if reason == AuthReason::RateLimited {
                    // Attempts refused unchecked still count for the subnet.
                    self.note_failure(ip, &user, fp, now);
                }
                (AuthDecision::Close(refused_reply()), Checked::fail(reason))
            }
            None => {
                let checked = self.check(&creds, ip, now).await;
                match checked.reason {
                    AuthReason::Ok => self.bruteforce.record_success(ip, &user, now),
                    AuthReason::StoreUnavailable => {}
                    _ if trusted => {}
                    _ => self.note_failure(ip, &user, fp, now),
                }
                (AuthDecision::Outcome(checked.outcome.clone()), checked)
            }
        };

        let success = checked.reason == AuthReason::Ok;
        // OAUTHBEARER may name no user: the audit names the token's account.
        let user = match &checked.outcome {
            AuthOutcome::Success { user: account } if user.is_empty() => account.clone(),
            _ => user,
        };
        tracing::info!(
            target: "portcullis::auth",
            event = "auth",
            client_ip = %ip,
            user = %user.escape_debug(),
            mechanism = creds.mechanism.name(),
            credential = checked.credential.as_deref().unwrap_or("-"),
            result = if success { "success" } else { "failure" },
            reason = checked.reason.as_str(),
            "authentication attempt"
        );
        self.audit.record(AuthEvent {
            at_ms: now,
            session_id: ctx.session_id.clone(),
            listener: ctx.listener.to_owned(),
            client_ip: ip.to_string(),
            tls: ctx.tls.as_deref().map(tls_version),
            user,
            mechanism: creds.mechanism.name().to_owned(),
            credential: checked.credential,
            success,
            reason: checked.reason.as_str().to_owned(),
        });
        tokio::time::sleep_until(started + self.security.auth_min_duration + extra).await;
        decision
    }

    /// Counts a failure; bans the subnet when it crosses the threshold.
    fn note_failure(&self, ip: IpAddr, user: &str, fp: bruteforce::Fingerprint, now: i64) {
        let Some(new) = self.bruteforce.record_failure(ip, user, fp, now) else {
            return;
        };
        let ban = Ban {
            network: new.network.to_string(),
            until_ms: new.until_ms,
            reason: format!(
                "{}: {} failed logins",
                bans::AUTO_REASON_PREFIX,
                new.failures
            ),
            created_ms: now,
            strikes: new.strikes,
        };
        tracing::warn!(
            network = %ban.network,
            strikes = ban.strikes,
            until_ms = ban.until_ms,
            "banning a network after repeated authentication failures"
        );
        self.bans.insert(ban.clone());
        let store = Arc::clone(&self.store);
        tokio::spawn(async move {
            if let Err(e) = store.upsert_ban(&ban).await {
                tracing::error!(error = %e, network = %ban.network, "cannot persist ban");
            }
        });
    }

    async fn check(&self, creds: &Credentials, ip: IpAddr, now: i64) -> Checked {
        if creds.verification == Verification::Token {
            return self.check_token(creds, ip, now).await;
        }
        let password = creds.password.clone();
        let by_password = creds.verification == Verification::Password;
        // Only PLAIN/LOGIN carry a password worth a dummy Argon2 run.
        let dummy = || async {
            if by_password {
                spawn_verify(None, password.clone()).await;
            }
        };
        if let Some(z) = &creds.authzid {
            // RFC 4616 2: we do not let one identity act as another.
            if normalise(z) != normalise(&creds.username) {
                dummy().await;
                return Checked::fail(AuthReason::AuthzidMismatch);
            }
        }
        let credential = match self.directory.credential(&creds.username).await {
            Ok(c) => c,
            Err(e) => return unavailable(e),
        };
        let Some(credential) = credential else {
            dummy().await;
            return Checked::fail(AuthReason::UnknownUser);
        };
        let account = credential.address.clone();
        let security = match self.directory.account_security(&account).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                // Removed between the two lookups.
                dummy().await;
                return Checked::fail(AuthReason::UnknownUser);
            }
            Err(e) => return unavailable(e),
        };
        let apps = match self.directory.app_password_secrets(&account).await {
            Ok(a) => a,
            Err(e) => return unavailable(e),
        };
        let account = Account {
            address: account,
            active: credential.status == AccountStatus::Active,
            security,
        };

        let matched = match &creds.verification {
            Verification::Password => {
                // App passwords: a fast digest compare against every one of them.
                let digest = apppass::digest(password.expose());
                let mut matched = None;
                for app in apps.iter() {
                    if apppass::digest_matches(&digest, &app.digest) && matched.is_none() {
                        matched = Some(app);
                    }
                }
                match matched {
                    Some(app) => Some(app),
                    None => {
                        // Main password. Verify before looking at anything
                        // else so every failure costs the same.
                        if !spawn_verify(Some(credential.password_hash.clone()), password).await {
                            return Checked::fail(AuthReason::BadPassword);
                        }
                        None
                    }
                }
            }
            Verification::Matched(Some(CredentialRef::App(name))) => {
                match apps.iter().find(|a| a.name.eq_ignore_ascii_case(name)) {
                    Some(app) => Some(app),
                    // Revoked during the exchange.
                    None => return Checked::fail(AuthReason::BadPassword),
                }
            }
            Verification::Matched(Some(CredentialRef::Main)) => None,
            Verification::Matched(None) | Verification::Token => {
                return Checked::fail(
                    self.no_match_reason(creds.mechanism, &account.address)
                        .await,
                );
            }
        };
        match matched {
            Some(app) => self.app_password_policy(&account, app, ip, now),
            None => self.main_password_policy(&account, ip, now),
        }
    }
}

fn unavailable(e: StoreError) -> Checked {
    tracing::error!(error = %e, "credential lookup failed");
    Checked {
        outcome: AuthOutcome::TemporaryFailure,
        reason: AuthReason::StoreUnavailable,
        credential: None,
    }
}

/// Runs an Argon2 verification on the Argon2 threads; `None` runs the dummy.
async fn spawn_verify(hash: Option<String>, password: portcullis_proto::Secret) -> bool {
    argon2_pool::verify(hash, password).await
}

/// Argon2 verifications run on a fixed set of threads, one per core, instead
/// of tokio's blocking pool (up to 512 threads). Each verification allocates
/// its memory cost (19 MiB with the default parameters) and glibc keeps freed
/// memory per thread arena, so a login flood on the blocking pool grew the
/// server past 1 GiB (issue 9, scenario b); with one thread per core it is
/// bounded by cores × memory cost, and so is the CPU a flood of password
/// guesses can take: verifications beyond the cores wait in a queue.
mod argon2_pool {
    use std::sync::{Mutex, OnceLock, mpsc};

    use portcullis_store::password;
    use tokio::sync::oneshot;

    struct Job {
        hash: Option<String>,
        password: portcullis_proto::Secret,
        done: oneshot::Sender<bool>,
    }

    static QUEUE: OnceLock<Option<Mutex<mpsc::Sender<Job>>>> = OnceLock::new();

    fn start() -> Option<Mutex<mpsc::Sender<Job>>> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(Mutex::new(rx));
        let mut started = 0;
        for i in 0..threads {
            let rx = std::sync::Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        let ok = match &job.hash {
                            Some(h) => password::verify_password(h, job.password.expose()),
                            None => {
                                password::dummy_verify(job.password.expose());
                                false
                            }
                        };
                        let _ = job.done.send(ok);
                    }
                });
            if spawned.is_ok() {
                started += 1;
            }
        }
        (started > 0).then(|| Mutex::new(tx))
    }

    pub(super) async fn verify(hash: Option<String>, password: portcullis_proto::Secret) -> bool {
        let (done, answer) = oneshot::channel();
        let job = Job {
            hash,
            password,
            done,
        };
        let sent = match QUEUE.get_or_init(start) {
            Some(queue) => queue.lock().map(|tx| tx.send(job)).is_ok_and(|r| r.is_ok()),
            None => false,
        };
        // No thread could be started: fail closed (the login is refused).
        sent && answer.await.unwrap_or(false)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn argon2_threads_answer_every_concurrent_verification() {
        let hash = portcullis_store::password::hash_password("right horse").unwrap();
        let mut tasks = Vec::new();
        for i in 0..6 {
            let hash = (i % 3 != 2).then(|| hash.clone());
            let guess = if i % 3 == 0 { "right horse" } else { "wrong" };
            tasks.push(tokio::spawn(spawn_verify(
                hash,
                portcullis_proto::Secret::new(guess.to_owned()),
            )));
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        // Right password, wrong password, dummy (always false), twice.
        assert_eq!(results, [true, false, false, true, false, false]);
    }

    #[test]
    fn allowlists() {
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(ip_allowed(&[], ip));
        assert!(ip_allowed(&["192.0.2.0/24".into()], ip));
        assert!(ip_allowed(&["10.0.0.0/8".into(), "192.0.2.7".into()], ip));
        assert!(!ip_allowed(&["10.0.0.0/8".into()], ip));
        assert!(!ip_allowed(&["garbage".into()], ip), "fails closed");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert!(ip_allowed(&["192.0.2.0/24".into()], mapped));
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert!(ip_allowed(&["2001:db8::/32".into()], v6));
        assert!(!ip_allowed(&["192.0.2.0/24".into()], v6));
    }
}
