//! Storage for Portcullis: accounts, local domains, the queue index, the
//! per-account usage events that sending plans are counted against, and
//! account security (app passwords, TOTP secrets, IP allowlists, granted
//! senders, the auth audit and bans).
//!
//! Owns the [`Store`] trait (the contract every backend honours, one method per
//! operation, each documented) and the embedded SQLite backend. It must not know
//! about SMTP: protocol code reaches storage only through this trait, so the
//! PostgreSQL backend of the distributed mode can follow without touching it.

pub mod password;
mod sqlite;
pub mod validate;

/// The schema version this build creates (issue 6: tests read it here).
pub use sqlite::SCHEMA_VERSION;
pub use sqlite::SqliteStore;

use async_trait::async_trait;

/// Errors of every backend. `Unavailable` is the only one a live SMTP session
/// turns into a temporary (4xx) reply; the others are caller mistakes.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named thing (account address, domain) does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The named thing already exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The input is not acceptable; the message says which part and why.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The backend cannot be reached or failed (I/O, corruption, lock timeout).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Whether an account may log in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountStatus {
    Active,
    Disabled,
}

impl AccountStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountStatus::Active => "active",
            AccountStatus::Disabled => "disabled",
        }
    }
}

/// An account as shown to admins. Never carries the password hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// The login and primary sending address, normalised to lowercase.
    pub address: String,
    pub status: AccountStatus,
    pub plan: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

/// What the auth service needs to check a password.
#[derive(Clone, Debug)]
pub struct Credential {
    pub address: String,
    pub status: AccountStatus,
    /// Argon2id PHC string.
    pub password_hash: String,
}

/// A message whose body is already durable in the spool, to be recorded in the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    /// Queue id, unique, shown to the client in the 250 reply.
    pub id: String,
    /// Envelope sender; empty string for the null reverse-path `<>`.
    pub sender: String,
    /// Envelope recipients, in RCPT order; at least one.
    pub recipients: Vec<String>,
    /// Body size in octets as spooled (including the added Received header).
    pub size: u64,
    /// Spool file path, relative to the data dir.
    pub spool_path: String,
    /// The authenticated account that submitted it, if any.
    pub auth_user: Option<String>,
    /// Client IP address as text.
    pub client_ip: String,
    /// Unix seconds.
    pub received_at: i64,
    /// Usage events to record for `auth_user` together with the message: Unix
    /// milliseconds, one per recipient counted against the account's plan
    /// (one accepted recipient is one email). Must be empty when `auth_user`
    /// is `None`. Kept as given (no ordering or deduplication).
    pub usage_ms: Vec<i64>,
}

/// A position in the spool's journal (issue 9): the end of a record in the
/// segment file with id `segment`. Orders as the journal is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JournalMark {
    /// The segment's id (its file name in hex).
    pub segment: u64,
    /// Octets from the start of that segment.
    pub position: u64,
}

/// A queued message as listed to admins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedMessage {
    pub id: String,
    pub sender: String,
    pub recipients: Vec<String>,
    pub size: u64,
    pub spool_path: String,
    pub auth_user: Option<String>,
    pub client_ip: String,
    pub received_at: i64,
}

/// An app password as listed to admins. Never carries the digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppPassword {
    /// The account it belongs to, normalised.
    pub account: String,
    /// Its name, unique per account (compared case-insensitively).
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the last successful use, if any.
    pub last_used_at: Option<i64>,
    /// Client IP of the last successful use, if any.
    pub last_used_ip: Option<String>,
    /// Unix seconds after which it no longer works; `None` = never expires.
    pub expires_at: Option<i64>,
    /// CIDR texts as given (e.g. `192.0.2.0/24`); empty = any IP.
    pub allowed_ips: Vec<String>,
}

/// What the auth service needs to check an app password.
#[derive(Clone, PartialEq, Eq)]
pub struct AppPasswordSecret {
    pub name: String,
    /// SHA-256 of the secret, 32 bytes.
    pub digest: Vec<u8>,
    /// Unix seconds; `None` = never expires.
    pub expires_at: Option<i64>,
    /// CIDR texts as given; empty = any IP.
    pub allowed_ips: Vec<String>,
}

impl std::fmt::Debug for AppPasswordSecret {
    /// Leaves the digest out, so logs never carry it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppPasswordSecret")
            .field("name", &self.name)
            .field("digest", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("allowed_ips", &self.allowed_ips)
            .finish()
    }
}

/// SCRAM-SHA-256 keys of one password (RFC 5802 3; issue 6). Never the
/// password: StoredKey and ServerKey are 32 bytes each.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredential {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl std::fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramCredential")
            .field("iterations", &self.iterations)
            .field("keys", &"<redacted>")
            .finish()
    }
}

/// The SCRAM keys of one of an account's credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramKeysOf {
    /// `None` for the main password, else the app password's name.
    pub app_password: Option<String>,
    pub keys: ScramCredential,
}

/// A sealed (encrypted) CRAM-MD5 secret of an app password.
#[derive(Clone, PartialEq, Eq)]
pub struct CramSecret {
    pub app_password: String,
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for CramSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CramSecret")
            .field("app_password", &self.app_password)
            .field("sealed", &"<redacted>")
            .finish()
    }
}

/// An account's security settings.
#[derive(Clone, PartialEq, Eq)]
pub struct AccountSecurity {
    /// Base32 RFC 6238 secret; `Some` = two-factor authentication is on.
    pub totp_secret: Option<String>,
    /// CIDR texts as given; empty = any IP.
    pub allowed_ips: Vec<String>,
    /// Extra addresses (`user@dom`) and whole domains (`@dom`) the account
    /// may send as, normalised to lowercase, sorted.
    pub allowed_senders: Vec<String>,
    /// Unix seconds of the last password change (set by `add_account` and
    /// `set_password_hash`).
    pub password_changed_at: i64,
}

impl std::fmt::Debug for AccountSecurity {
    /// Leaves the TOTP secret out, so logs never carry it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountSecurity")
            .field(
                "totp_secret",
                &self.totp_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("allowed_ips", &self.allowed_ips)
            .field("allowed_senders", &self.allowed_senders)
            .field("password_changed_at", &self.password_changed_at)
            .finish()
    }
}

/// One AUTH attempt, as recorded for the audit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthEvent {
    /// Unix milliseconds.
    pub at_ms: i64,
    pub session_id: String,
    pub listener: String,
    pub client_ip: String,
    /// TLS version, `None` on a plain connection.
    pub tls: Option<String>,
    /// The user as claimed by the client (may be garbage; stored as given,
    /// cut to [`validate::MAX_AUTH_TEXT_CHARS`] characters).
    pub user: String,
    pub mechanism: String,
    /// `"password"` or `"app:<name>"`; `None` when no credential matched.
    pub credential: Option<String>,
    pub success: bool,
    /// Reason code (`ok`, `unknown_user`, `bad_password`, ...).
    pub reason: String,
}

/// Which auth events [`Store::auth_events`] returns. The default returns all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthEventFilter {
    /// Only events whose claimed user equals this, ASCII case-insensitively
    /// (surrounding whitespace of the filter ignored).
    pub user: Option<String>,
    /// Only events from this client IP (exact text, trimmed).
    pub ip: Option<String>,
    /// Only failed attempts.
    pub failed_only: bool,
    /// Only events at or after this time (Unix milliseconds).
    pub since_ms: Option<i64>,
    /// At most this many events (the newest).
    pub limit: Option<usize>,
}

/// A banned IP network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ban {
    /// CIDR text, normalised by [`validate::normalize_network`]: a single
    /// host is its plain address (`192.0.2.7`, `2001:db8::1`), a network is
    /// `address/prefix` with the host bits cleared (`192.0.2.0/24`).
    pub network: String,
    /// Unix milliseconds; the ban is active while `now < until_ms`.
    pub until_ms: i64,
    pub reason: String,
    /// Unix milliseconds.
    pub created_ms: i64,
    /// How many times this network has been banned (for exponential bans).
    pub strikes: u32,
}

// --- Delivery (schema version 5) --------------------------------------------

/// Where one recipient of a queued message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    /// Waiting for its first attempt.
    Queued,
    /// Claimed by the queue manager; an attempt is under way. A process that
    /// dies leaves it here, and the next start puts it back to `Queued`
    /// (at-least-once delivery).
    InFlight,
    /// Accepted by the next hop or written to the local mailbox. Final.
    Delivered,
    /// A temporary failure; retried at `next_attempt_ms`.
    Deferred,
    /// A permanent failure or expiry; a DSN went to the sender. Final.
    Bounced,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 5] = [
        DeliveryStatus::Queued,
        DeliveryStatus::InFlight,
        DeliveryStatus::Delivered,
        DeliveryStatus::Deferred,
        DeliveryStatus::Bounced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Queued => "queued",
            DeliveryStatus::InFlight => "inflight",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Deferred => "deferred",
            DeliveryStatus::Bounced => "bounced",
        }
    }

    /// Parses the stored / command-line name (`in-flight` is accepted too).
    pub fn parse(text: &str) -> Option<DeliveryStatus> {
        match text.trim().to_ascii_lowercase().as_str() {
            "queued" => Some(DeliveryStatus::Queued),
            "inflight" | "in-flight" | "in_flight" => Some(DeliveryStatus::InFlight),
            "delivered" => Some(DeliveryStatus::Delivered),
            "deferred" => Some(DeliveryStatus::Deferred),
            "bounced" => Some(DeliveryStatus::Bounced),
            _ => None,
        }
    }

    /// Delivered and bounced recipients are never attempted again.
    pub fn is_final(self) -> bool {
        matches!(self, DeliveryStatus::Delivered | DeliveryStatus::Bounced)
    }
}

impl std::fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One recipient of a queued message with its delivery state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryRecipient {
    /// RCPT order within the message; with the message id, the key.
    pub position: i64,
    /// As given at RCPT (or as rewritten by an alias).
    pub address: String,
    /// Lowercase domain of `address` (the part after the last `@`).
    pub domain: String,
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: u32,
    /// Unix milliseconds of the next attempt (meaningful when queued/deferred).
    pub next_attempt_ms: i64,
    /// The last reply: remote SMTP text or our own explanation.
    pub last_reply: Option<String>,
    /// The host that gave `last_reply`, if remote.
    pub last_host: Option<String>,
    /// A delay warning has been sent for this recipient.
    pub warned: bool,
    /// `portcullis queue bounce` asked for it to be bounced at once.
    pub admin_bounce: bool,
}

/// Recipients of one message that share a destination domain, claimed for
/// one delivery attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryJob {
    pub message_id: String,
    /// Envelope sender; empty for `<>`.
    pub sender: String,
    /// Relative to the data dir.
    pub spool_path: String,
    pub size: u64,
    /// Unix seconds.
    pub received_at: i64,
    pub auth_user: Option<String>,
    /// Lowercase destination domain shared by `recipients`.
    pub domain: String,
    pub recipients: Vec<DeliveryRecipient>,
}

/// The result of an attempt for one recipient, recorded by
/// [`Store::record_delivery`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientOutcome {
    pub message_id: String,
    pub position: i64,
    /// `Delivered`, `Deferred`, `Bounced`, or `Queued` (released unattempted,
    /// e.g. at shutdown; attempts are then not counted).
    pub status: DeliveryStatus,
    /// When `Deferred`/`Queued`: Unix milliseconds of the next attempt.
    pub next_attempt_ms: i64,
    pub reply: String,
    pub host: Option<String>,
    /// Set the recipient's `warned` flag (a delay DSN was queued).
    pub warned: bool,
    /// Rewrite the recipient's address (alias expansion); it is then queued
    /// for immediate delivery to the new address.
    pub new_address: Option<String>,
}

/// One recorded delivery attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryEvent {
    pub message_id: String,
    pub recipient: String,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// `delivered`, `deferred`, `bounced`, `expanded` or `released`.
    pub outcome: String,
    pub host: Option<String>,
    pub reply: String,
}

/// A queued message with the state of each recipient, for admins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueEntry {
    pub id: String,
    pub sender: String,
    pub size: u64,
    pub spool_path: String,
    pub auth_user: Option<String>,
    pub client_ip: String,
    pub received_at: i64,
    /// Unix seconds when every recipient reached a final status.
    pub done_at: Option<i64>,
    pub recipients: Vec<DeliveryRecipient>,
}

/// An alias: mail for `alias` (`local@domain`, or `@domain` for a catch-all)
/// goes to `target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alias {
    pub alias: String,
    pub target: String,
    pub created_at: i64,
}

/// The storage contract. Addresses and domains are compared case-insensitively:
/// every method normalises its input (ASCII lowercase, surrounding whitespace
/// trimmed) before use, and everything returned is normalised.
/// Where a DKIM key pair is in its rotation (issue 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DkimKeyState {
    /// Published (or about to be), not yet signing.
    Pending,
    /// Signs outgoing mail. At most one tag per domain.
    Active,
    /// No longer signs; its DNS records stay until it is removed.
    Retired,
}

impl DkimKeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            DkimKeyState::Pending => "pending",
            DkimKeyState::Active => "active",
            DkimKeyState::Retired => "retired",
        }
    }

    pub fn parse(text: &str) -> Option<DkimKeyState> {
        match text {
            "pending" => Some(DkimKeyState::Pending),
            "active" => Some(DkimKeyState::Active),
            "retired" => Some(DkimKeyState::Retired),
            _ => None,
        }
    }
}

/// A DKIM signing algorithm (RFC 6376 `rsa-sha256`, RFC 8463 `ed25519-sha256`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DkimAlgorithm {
    Ed25519,
    Rsa,
}

impl DkimAlgorithm {
    /// The `k=` tag value and the stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DkimAlgorithm::Ed25519 => "ed25519",
            DkimAlgorithm::Rsa => "rsa",
        }
    }

    pub fn parse(text: &str) -> Option<DkimAlgorithm> {
        match text {
            "ed25519" => Some(DkimAlgorithm::Ed25519),
            "rsa" => Some(DkimAlgorithm::Rsa),
            _ => None,
        }
    }
}

/// A DKIM key to store. `private_key` is secret: never log it.
#[derive(Clone, PartialEq, Eq)]
pub struct NewDkimKey {
    pub selector: String,
    pub tag: String,
    pub algorithm: DkimAlgorithm,
    /// PKCS#8 DER (both algorithms).
    pub private_key: Vec<u8>,
    /// The bytes published in `p=` (raw 32 bytes for Ed25519, DER
    /// SubjectPublicKeyInfo for RSA).
    pub public_key: Vec<u8>,
}

impl std::fmt::Debug for NewDkimKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewDkimKey")
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// A stored DKIM key.
#[derive(Clone, PartialEq, Eq)]
pub struct DkimKey {
    pub domain: String,
    pub selector: String,
    pub tag: String,
    pub algorithm: DkimAlgorithm,
    pub private_key: Vec<u8>,
    pub public_key: Vec<u8>,
    pub state: DkimKeyState,
    /// Unix seconds.
    pub created_at: i64,
}

impl std::fmt::Debug for DkimKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimKey")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates an active account with the given Argon2id hash and plan. The
    /// address must be `local@domain` with both parts non-empty and no
    /// whitespace or control characters (`Invalid` otherwise). The domain is
    /// added as a local domain if missing. `AlreadyExists` if the address exists.
    async fn add_account(&self, address: &str, password_hash: &str, plan: &str) -> Result<Account>;

    /// The account, or `None`.
    async fn account(&self, address: &str) -> Result<Option<Account>>;

    /// All accounts ordered by address.
    async fn list_accounts(&self) -> Result<Vec<Account>>;

    /// Replaces the password hash and sets `password_changed_at` to now.
    /// `NotFound` if there is no such account.
    async fn set_password_hash(&self, address: &str, password_hash: &str) -> Result<()>;

    /// Enables or disables login. `NotFound` if there is no such account.
    async fn set_account_status(&self, address: &str, status: AccountStatus) -> Result<()>;

    /// Changes the account's plan (trimmed and checked like `add_account`'s;
    /// `Invalid` otherwise). `NotFound` if there is no such account.
    async fn set_account_plan(&self, address: &str, plan: &str) -> Result<()>;

    /// Deletes the account and all its usage events, app passwords and
    /// allowed senders (its auth events stay for the audit). `NotFound` if there is
    /// no such account.
    async fn remove_account(&self, address: &str) -> Result<()>;

    /// The credential for a login, or `None` if no such account.
    async fn credential(&self, address: &str) -> Result<Option<Credential>>;

    /// Adds a local domain (a syntactically valid DNS name; `Invalid` otherwise).
    /// `AlreadyExists` if present.
    async fn add_domain(&self, domain: &str) -> Result<()>;

    /// All local domains, sorted.
    async fn list_domains(&self) -> Result<Vec<String>>;

    /// Removes a local domain. `NotFound` if absent; `Invalid` naming the count
    /// if accounts still use it.
    async fn remove_domain(&self, domain: &str) -> Result<()>;

    /// A token that changes whenever directory data changes — accounts
    /// (status, plan, password, keys), domains, aliases, app passwords,
    /// account security and DKIM keys — whichever process made the change.
    /// It must be cheap (no query: it is read on every lookup of a cache).
    /// Callers may cache directory reads made after reading token `t` for as
    /// long as the token still reads `t`. `None` (the default) means the
    /// backend cannot tell, and nothing may be cached. Queue, delivery,
    /// usage, audit and ban writes need not change it.
    fn directory_token(&self) -> Option<u128> {
        None
    }

    /// Whether `domain` is a local domain.
    async fn is_local_domain(&self, domain: &str) -> Result<bool>;

    /// Records a message in the queue, and one usage event for its
    /// `auth_user` per entry of `usage_ms`, in one transaction: either all of
    /// it is recorded or none. When this returns `Ok`, the record is committed
    /// durably (it survives SIGKILL and power loss) with a single commit, so
    /// usage costs no extra sync.
    /// Envelope sender and recipients are stored as given, only trimmed:
    /// local parts are case-sensitive (RFC 5321 2.4) and may be quoted.
    /// `Invalid` if the message is malformed or
    /// `usage_ms` is non-empty without an `auth_user`; `AlreadyExists(id)` if
    /// the id is already queued.
    async fn enqueue(&self, message: &NewMessage) -> Result<()>;

    /// All queued messages, oldest first.
    async fn list_queue(&self) -> Result<Vec<QueuedMessage>>;

    /// The account's usage events (Unix milliseconds) strictly after
    /// `since_ms`, ascending (duplicates kept). Empty for an unknown or
    /// malformed address. Events are keyed by the normalised `auth_user` of
    /// the enqueued message, whether or not such an account exists.
    async fn usage_since(&self, account: &str, since_ms: i64) -> Result<Vec<i64>>;

    /// Every usage event strictly after `since_ms`, as `(account, at_ms)`
    /// pairs ordered by account, then time (duplicates kept).
    async fn usage_all_since(&self, since_ms: i64) -> Result<Vec<(String, i64)>>;

    /// Deletes every usage event at or before `before_ms` and returns how many
    /// were deleted (emails, whatever the storage grouping).
    async fn prune_usage(&self, before_ms: i64) -> Result<u64>;

    // --- Account security (schema version 3) -------------------------------

    /// Adds an app password to the account, storing only its SHA-256
    /// `digest` (32 bytes; `Invalid` otherwise). The name is trimmed and must
    /// be 1 to 64 characters from `[A-Za-z0-9._-]` (`Invalid` otherwise); it
    /// is kept as given but unique per account case-insensitively
    /// (`AlreadyExists(name)`). `allowed_ips` are CIDR texts, trimmed, each
    /// non-empty, at most 64 characters, without control characters (the
    /// caller checks their syntax); duplicates are dropped. `created_at` is
    /// now. `NotFound(account)` if there is no such account.
    async fn add_app_password(
        &self,
        account: &str,
        name: &str,
        digest: &[u8],
        expires_at: Option<i64>,
        allowed_ips: &[String],
    ) -> Result<()>;

    /// The account's app passwords, without digests, ordered by name
    /// (case-insensitively). Empty for an unknown or malformed account.
    async fn list_app_passwords(&self, account: &str) -> Result<Vec<AppPassword>>;

    /// Deletes an app password (name matched case-insensitively).
    /// `NotFound(account)` if there is no such account, `NotFound(name)` if
    /// it has no such app password.
    async fn revoke_app_password(&self, account: &str, name: &str) -> Result<()>;

    /// The account's app passwords with their digests, for AUTH, ordered by
    /// name. Empty if there are none or no such account (or it is malformed).
    async fn app_password_secrets(&self, account: &str) -> Result<Vec<AppPasswordSecret>>;

    /// Records a successful use of an app password at `at` (Unix seconds)
    /// from `ip`. `NotFound(name)` if there is no such app password (for
    /// instance revoked meanwhile); `Invalid` if `ip` is empty, longer than
    /// 64 characters or has control characters.
    async fn touch_app_password(&self, account: &str, name: &str, at: i64, ip: &str) -> Result<()>;

    /// The account's security settings, or `None` if there is no such
    /// account (or the address is malformed).
    async fn account_security(&self, account: &str) -> Result<Option<AccountSecurity>>;

    /// Turns two-factor authentication on with the given base32 secret
    /// (trimmed; letters A-Z in either case, digits 2-7, `=` padding; at
    /// most 256 characters; `Invalid` otherwise, without echoing it) or off
    /// with `None`. `NotFound(account)` if there is no such account.
    async fn set_totp_secret(&self, account: &str, secret: Option<&str>) -> Result<()>;

    /// Replaces the account's IP allowlist (CIDR texts checked as in
    /// `add_app_password`; empty = any IP). `NotFound(account)` if there is
    /// no such account.
    async fn set_allowed_ips(&self, account: &str, cidrs: &[String]) -> Result<()>;

    /// Grants the account an extra sender: an address `user@dom` (checked
    /// and normalised like account addresses, though the domain may be an
    /// address literal) or a whole domain `@dom` (a DNS name).
    /// `AlreadyExists(sender)` if already granted, `Invalid` if malformed,
    /// `NotFound(account)` if there is no such account.
    async fn add_allowed_sender(&self, account: &str, sender: &str) -> Result<()>;

    /// Withdraws a sender granted by `add_allowed_sender`.
    /// `NotFound(account)` if there is no such account, `NotFound(sender)`
    /// (normalised) if it was not granted.
    async fn remove_allowed_sender(&self, account: &str, sender: &str) -> Result<()>;

    /// Records auth events in one transaction (all or none). Text fields are
    /// stored as given, cut to [`validate::MAX_AUTH_TEXT_CHARS`] characters.
    async fn record_auth_events(&self, events: &[AuthEvent]) -> Result<()>;

    /// The auth events matching `filter`, newest first (ties in reverse
    /// order of recording).
    async fn auth_events(&self, filter: &AuthEventFilter) -> Result<Vec<AuthEvent>>;

    /// Deletes every auth event at or before `before_ms` and returns how
    /// many were deleted.
    async fn prune_auth_events(&self, before_ms: i64) -> Result<u64>;

    /// Creates or replaces (every field) the ban of `ban.network`, which is
    /// normalised by [`validate::normalize_network`] (`Invalid` if it is not
    /// an IP address or CIDR network). The reason must be at most 255
    /// characters without control characters.
    async fn upsert_ban(&self, ban: &Ban) -> Result<()>;

    /// The active bans (`until_ms > now_ms`), ordered by network.
    async fn list_bans(&self, now_ms: i64) -> Result<Vec<Ban>>;

    /// Deletes the ban of `network` (normalised as in `upsert_ban`), active
    /// or expired. `NotFound(network)` if there is none.
    async fn remove_ban(&self, network: &str) -> Result<()>;

    // --- Delivery (schema version 5; issue 3) -------------------------------

    /// Puts every `InFlight` recipient back to `Queued` for immediate retry
    /// (call once at start-up, before the queue manager runs). Returns how many.
    async fn release_in_flight(&self) -> Result<u64>;

    /// Claims up to `limit` recipients that are `Queued`/`Deferred` with
    /// `next_attempt_ms <= now_ms` (earliest first), marks them `InFlight`,
    /// and returns them grouped by (message, domain).
    async fn claim_due(&self, now_ms: i64, limit: u32) -> Result<Vec<DeliveryJob>>;

    /// The earliest `next_attempt_ms` among `Queued`/`Deferred` recipients.
    async fn next_due_ms(&self) -> Result<Option<i64>>;

    /// Records attempt results in one transaction, together with `notices`
    /// (DSNs to enqueue, bodies already durable): each outcome updates its
    /// recipient (attempts + 1 unless the status is `Queued` without a
    /// `new_address`: an alias rewrite counts, which bounds alias loops) and
    /// appends a
    /// [`DeliveryEvent`] at `now_ms`. Messages whose recipients are now all
    /// final get `done_at`; their ids and spool paths are returned so the
    /// caller can delete the bodies.
    async fn record_delivery(
        &self,
        outcomes: &[RecipientOutcome],
        notices: &[NewMessage],
        now_ms: i64,
    ) -> Result<Vec<(String, String)>>;

    /// Queue entries (messages not yet done, unless `include_done`), oldest
    /// first, restricted to messages with at least one recipient in
    /// `status` when given.
    async fn queue_entries(
        &self,
        status: Option<DeliveryStatus>,
        include_done: bool,
    ) -> Result<Vec<QueueEntry>>;

    /// One message with its recipients, or `None`.
    async fn queue_entry(&self, id: &str) -> Result<Option<QueueEntry>>;

    /// The delivery events of a message, oldest first.
    async fn delivery_events(&self, id: &str) -> Result<Vec<DeliveryEvent>>;

    /// Makes the `Queued`/`Deferred` recipients of message `id` (every
    /// message when `None`) due at `now_ms`. Returns how many recipients.
    /// `NotFound(id)` for an unknown message.
    async fn retry_now(&self, id: Option<&str>, now_ms: i64) -> Result<u64>;

    /// Flags the not-yet-final recipients of message `id` for an immediate
    /// bounce by the queue manager. Returns how many. `NotFound(id)`.
    async fn request_bounce(&self, id: &str, now_ms: i64) -> Result<u64>;

    /// Deletes a message, its recipients and events; returns its spool path.
    /// `NotFound(id)`.
    async fn delete_message(&self, id: &str) -> Result<String>;

    /// Deletes messages done before `before_s` (Unix seconds) with their
    /// events; returns how many.
    async fn prune_done(&self, before_s: i64) -> Result<u64>;

    /// Adds an alias. `alias` is `local@domain` or `@domain` (catch-all) on
    /// a local domain (`Invalid` otherwise); `target` is an address.
    /// `AlreadyExists(alias)` if present.
    async fn add_alias(&self, alias: &str, target: &str) -> Result<()>;

    /// Removes an alias. `NotFound(alias)`.
    async fn remove_alias(&self, alias: &str) -> Result<()>;

    /// Every alias, sorted.
    async fn list_aliases(&self) -> Result<Vec<Alias>>;

    /// The target for `address`: its own alias first, else its domain's
    /// catch-all, else `None`.
    async fn resolve_alias(&self, address: &str) -> Result<Option<String>>;

    // issue 6: SCRAM-SHA-256 and CRAM-MD5 ------------------------------------
    // `set_password_hash` also clears the main password's SCRAM keys, so a
    // password change never leaves the old password usable through SCRAM.

    /// Sets (`Some`) or clears (`None`) the SCRAM keys of the account's main
    /// password. `Invalid` unless StoredKey and ServerKey are 32 bytes, the
    /// salt is 8 to 64 bytes and iterations at least 4096. `NotFound(account)`.
    async fn set_scram_keys(&self, account: &str, keys: Option<&ScramCredential>) -> Result<()>;

    /// Sets the SCRAM keys (same checks as `set_scram_keys`) and, when
    /// given, the sealed CRAM-MD5 secret (1 to 512 bytes) of an app password.
    /// `NotFound(account)` / `NotFound(name)`.
    async fn set_app_password_keys(
        &self,
        account: &str,
        name: &str,
        scram: Option<&ScramCredential>,
        cram_sealed: Option<&[u8]>,
    ) -> Result<()>;

    /// Every SCRAM key of the account: the main password first (if it has
    /// keys), then app passwords by name. Expired app passwords are included
    /// (the auth service decides). Empty for an unknown or malformed account.
    async fn scram_keys(&self, account: &str) -> Result<Vec<ScramKeysOf>>;

    /// The sealed CRAM-MD5 secrets of the account's app passwords that have
    /// one, by name. Empty for an unknown or malformed account.
    async fn cram_secrets(&self, account: &str) -> Result<Vec<CramSecret>>;

    // --- Sending domains (issue 7) ------------------------------------------

    /// Stores a new DKIM key pair (`keys`, all with the same `tag`) for the
    /// local domain `domain` in one transaction. The pair becomes `Active`
    /// when the domain has no active key, `Pending` otherwise; the state
    /// given is returned. `NotFound(domain)` if it is not a local domain,
    /// `AlreadyExists(selector)` if a selector is taken, `Invalid` if `keys`
    /// is empty, the tags differ, or a selector is not a DNS label.
    async fn add_dkim_keys(&self, domain: &str, keys: &[NewDkimKey]) -> Result<DkimKeyState>;

    /// The DKIM keys of `domain` (normalised), ordered by tag then selector.
    /// Empty for an unknown domain.
    async fn dkim_keys(&self, domain: &str) -> Result<Vec<DkimKey>>;

    /// Makes the pair `tag` of `domain` the one that signs: it becomes
    /// `Active` and the previously active pair `Retired`, in one
    /// transaction. `NotFound(tag)` if the domain has no such pair.
    async fn activate_dkim_tag(&self, domain: &str, tag: &str) -> Result<()>;

    /// Deletes the pair `tag` of `domain`. `NotFound(tag)` if absent;
    /// `Invalid` if it is the active pair (activate another one first).
    async fn remove_dkim_tag(&self, domain: &str, tag: &str) -> Result<()>;

    // --- Batching (issue 9) ---------------------------------------------------

    /// Records several messages as [`Store::enqueue`] does, all in one
    /// transaction with one durable commit (group commit: the sync is paid
    /// once per batch, not once per message). All or nothing: on any error
    /// none of them is recorded, and the error is the first one met
    /// (`Invalid` / `AlreadyExists(id)` for the offending message, also when
    /// two messages of the batch share an id). An empty batch is `Ok` and
    /// writes nothing.
    async fn enqueue_batch(&self, messages: &[NewMessage]) -> Result<()>;

    /// [`Store::enqueue_batch`] for messages whose rows the caller has
    /// already made durable in its journal (the spool's segment records),
    /// ending at `mark`. `mark` is recorded in the same transaction as the
    /// rows, so the database always says exactly how much of the journal it
    /// holds. With `sync` false the commit need not be durable by itself (no
    /// fsync): it becomes durable with the next synced commit of any
    /// connection or process, and a crash before that loses only rows the
    /// journal can replay ([`Store::replay_journal`]). With `sync` true it
    /// is as durable as `enqueue_batch` (for batches holding messages that
    /// have no journal record). Same errors as `enqueue_batch`; on an error
    /// neither the rows nor the mark are recorded.
    async fn enqueue_journaled(
        &self,
        messages: &[NewMessage],
        mark: JournalMark,
        sync: bool,
    ) -> Result<()>;

    /// Makes every commit made so far durable, also those of
    /// [`Store::enqueue_journaled`] without `sync`: one synced write of the
    /// journal mark (its value unchanged). Nothing to do, and `Ok`, when
    /// no mark was ever recorded. For callers about to remove journal
    /// records whose rows might not be durable yet (the spool's sweeper).
    async fn sync_commits(&self) -> Result<()>;

    /// The last mark recorded by [`Store::enqueue_journaled`] or
    /// [`Store::replay_journal`] that is in the database; `None` if none
    /// ever was.
    async fn journal_mark(&self) -> Result<Option<JournalMark>>;

    /// Start-up recovery: in one durable (synced) transaction, records each
    /// of `messages` whose id is not in the queue (with its recipients and
    /// usage rows, as [`Store::enqueue`]) and sets the mark to `mark`.
    /// Messages already there, whatever their state, are left alone. Returns
    /// how many were recorded. With no messages it only sets the mark,
    /// durably. `Invalid` for a message that `enqueue` would refuse.
    async fn replay_journal(&self, messages: &[NewMessage], mark: JournalMark) -> Result<usize>;

    /// The distinct files that hold the bodies of messages that are not
    /// done (`done_at` unset), so the spool can delete every other one: each
    /// such message's `spool_path` up to its first `#` (a segment reference
    /// `spool/seg/<name>.seg#<offset>+<len>` names its segment file), in no
    /// particular order. Messages that are done do not count, whether or not
    /// they were pruned yet.
    async fn live_spool_files(&self) -> Result<Vec<String>>;
}
