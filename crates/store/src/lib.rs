//! Storage for Portcullis: accounts, local domains, the queue index and the
//! per-account usage events that sending plans are counted against.
//!
//! Owns the [`Store`] trait (the contract every backend honours, one method per
//! operation, each documented) and the embedded SQLite backend. It must not know
//! about SMTP: protocol code reaches storage only through this trait, so the
//! PostgreSQL backend of the distributed mode can follow without touching it.

pub mod password;
mod sqlite;
pub mod validate;

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

/// The storage contract. Addresses and domains are compared case-insensitively:
/// every method normalises its input (ASCII lowercase, surrounding whitespace
/// trimmed) before use, and everything returned is normalised.
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

    /// Replaces the password hash. `NotFound` if there is no such account.
    async fn set_password_hash(&self, address: &str, password_hash: &str) -> Result<()>;

    /// Enables or disables login. `NotFound` if there is no such account.
    async fn set_account_status(&self, address: &str, status: AccountStatus) -> Result<()>;

    /// Changes the account's plan (trimmed and checked like `add_account`'s;
    /// `Invalid` otherwise). `NotFound` if there is no such account.
    async fn set_account_plan(&self, address: &str, plan: &str) -> Result<()>;

    /// Deletes the account and all its usage events. `NotFound` if there is
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
    /// were deleted.
    async fn prune_usage(&self, before_ms: i64) -> Result<u64>;
}
