//! The embedded SQLite backend of [`Store`].
//!
//! Owns the connection pool and the SQL for every trait method; the schema and
//! its migrations live in [`schema`]. The database is opened in WAL mode with
//! `synchronous=FULL`, so a committed transaction survives SIGKILL and power
//! loss, and in the normal (shared) locking mode so the server and the admin
//! CLI can use the same file at once. Write transactions start with
//! `BEGIN IMMEDIATE` so they wait (up to the 5 s busy timeout) for another
//! writer instead of failing on a stale read snapshot.

mod change_token;
mod connect;
mod delivery;
mod domains;
mod schema;
mod scram;
mod security;

pub use schema::SCHEMA_VERSION;

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::error::ErrorKind;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteLockingMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Sqlite, SqliteConnection, Transaction};
use time::OffsetDateTime;

use crate::validate::{
    check_password_hash, normalize_account_address, normalize_address, normalize_domain,
    normalize_new_message, normalize_plan,
};
use crate::{
    Account, AccountSecurity, AccountStatus, AppPassword, AppPasswordSecret, AuthEvent,
    AuthEventFilter, Ban, CramSecret, Credential, JournalMark, NewMessage, QueuedMessage, Result,
    ScramCredential, ScramKeysOf, Store, StoreError,
};

/// How long a statement waits for another connection's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections per process. SQLite allows one writer at a time anyway; a few
/// connections let reads proceed while a write commits.
const MAX_CONNECTIONS: u32 = 4;

/// [`Store`] backed by one SQLite file.
///
/// Cloning is cheap and shares the connection pool. Several `SqliteStore`s,
/// in one process or several, may use the same file at once; each sees the
/// others' committed writes.
///
/// Input handling, common to all methods: addresses and domains are trimmed
/// and ASCII-lowercased (see [`crate::validate`]). Methods that create or
/// change something (`add_*`, `set_*`, `remove_*`, `enqueue`) return `Invalid`
/// for a malformed address, domain, plan or password hash (a hash must be a
/// PHC string). Pure lookups (`account`, `credential`, `is_local_domain`)
/// answer `None` / `false` for malformed input, since nothing malformed can
/// be stored; so do the usage reads (`usage_since` answers an empty list).
/// `enqueue` checks and normalises the message with
/// [`crate::validate::normalize_new_message`].
///
/// Account security (see the `security` submodule): app password names,
/// digests, allowlist entries, granted senders, TOTP secrets and ban networks
/// are checked by the functions of [`crate::validate`]; lookups
/// (`account_security`, `list_app_passwords`, `app_password_secrets`) answer
/// `None` / empty for a malformed address. Writes that name an account answer
/// `NotFound(account)` when it does not exist, except `touch_app_password`,
/// which answers `NotFound(name)`.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// One connection for every multi-statement write transaction
    /// ([`SqliteStore::begin_write`]). SQLite runs one writer at a time
    /// anyway; with writes on one connection its page cache stays valid
    /// between transactions (in WAL mode a connection that sees another's
    /// commit drops its whole cache and reads the pages again: 8 `pread`s
    /// per group commit when writes rotated over the pool, issue 9), and
    /// waiting writers queue here instead of polling SQLite's busy handler.
    writer: SqlitePool,
    token: std::sync::Arc<change_token::ChangeToken>,
}

impl SqliteStore {
    /// Opens (creating it and its parent directories if missing) the database
    /// at `path`, switches it to WAL mode and migrates the schema to
    /// the latest version. Every connection uses `synchronous=FULL`,
    /// `foreign_keys=ON` and a 5 s busy timeout.
    ///
    /// `Unavailable` if the file cannot be created or opened, WAL mode cannot
    /// be enabled, or the schema is newer than this build understands.
    pub async fn open(path: &Path) -> Result<SqliteStore> {
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            tokio::fs::create_dir_all(parent).await.map_err(|e| {
                StoreError::Unavailable(format!("creating directory {}: {e}", parent.display()))
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .locking_mode(SqliteLockingMode::Normal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);

        // Entering WAL mode needs a lock that the busy timeout does not wait
        // for, so do it once, on its own connection, retrying while another
        // process holds the file. WAL mode is then a property of the file and
        // the pooled connections need not set it.
        let mut conn = connect::connect_wal(&options, path, BUSY_TIMEOUT).await?;
        let migrated = schema::migrate(&mut conn).await;
        // A failed close only loses a connection that is being dropped anyway.
        let _ = conn.close().await;
        migrated?;

        // No ping before handing out a pooled connection: it is a file in
        // this process, not a network peer, and the ping is one more round
        // trip to SQLite's worker thread on every query (issue 9).
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await
            .map_err(|e| unavailable(&format!("opening {}", path.display()), e))?;
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(BUSY_TIMEOUT)
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(|e| unavailable(&format!("opening {}", path.display()), e))?;
        let token = std::sync::Arc::new(change_token::ChangeToken::open(path));
        Ok(SqliteStore {
            pool,
            writer,
            token,
        })
    }

    /// Marks directory data (accounts, domains, aliases, credentials, keys,
    /// plans) as changed, for every process's [`Store::directory_token`].
    fn directory_changed(&self) {
        self.token.bump();
    }

    /// Closes every connection, waiting for those in use to be returned.
    /// Optional (dropping the store also closes them) but lets a shutting
    /// down process checkpoint the WAL cleanly. Later calls on this store or
    /// its clones fail with `Unavailable`.
    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }

    /// [`insert_messages`] in its own transaction on the writer connection.
    async fn insert_on_writer(&self, messages: &[NewMessage], how: InsertTx) -> Result<()> {
        if messages.is_empty() && !matches!(how, InsertTx::Own { mark: Some(_), .. }) {
            return Ok(());
        }
        let mut conn = self
            .writer
            .acquire()
            .await
            .map_err(|e| unavailable("enqueue_batch", e))?;
        // BEGIN, the INSERTs and COMMIT in one round trip; at most one WAL
        // fsync for the whole batch. Any error (a duplicate id, also inside
        // the batch, is AlreadyExists) is rolled back.
        let result = insert_messages(&mut conn, messages, how).await;
        if result.is_err() {
            // sqlx does not track a transaction begun by SQL text: rather
            // than risk handing out a connection with one still open (a
            // failed ROLLBACK), or one left at synchronous=NORMAL, drop it;
            // the pool opens a fresh one.
            conn.close_on_drop();
        }
        result
    }

    /// A write transaction on the writer connection. Never nest: a second
    /// `begin_write` while one is open would wait for the first.
    async fn begin_write(&self, what: &str) -> Result<Transaction<'static, Sqlite>> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| unavailable(what, e))
    }

    /// Sets one column of an account (and `updated_at`); `NotFound` if the
    /// (normalised) address has no account. `column` is one of our own
    /// column names, never input.
    async fn update_account_column<T>(
        &self,
        what: &str,
        column: &'static str,
        value: T,
        address: String,
    ) -> Result<()>
    where
        T: Send + for<'q> sqlx::Encode<'q, Sqlite> + sqlx::Type<Sqlite>,
    {
        let sql = format!("UPDATE accounts SET {column} = ?, updated_at = ? WHERE address = ?");
        let done = sqlx::query(&sql)
            .bind(value)
            .bind(now())
            .bind(&address)
            .execute(&self.pool)
            .await
            .map_err(|e| unavailable(what, e))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(address));
        }
        Ok(())
    }
}

/// Inserts a normalised message, its recipients and its usage rows (see
/// `enqueue`) on an open write transaction.
pub(crate) async fn insert_message(
    conn: &mut SqliteConnection,
    message: &NewMessage,
) -> Result<()> {
    insert_messages(conn, std::slice::from_ref(message), InsertTx::Caller).await
}

/// How [`insert_messages`] runs.
#[derive(Clone, Copy, Debug)]
enum InsertTx {
    /// On the caller's open transaction, which the caller rolls back on an
    /// error.
    Caller,
    /// In its own transaction, begun and committed in the same query
    /// string. `sync` false commits with `synchronous=NORMAL` (no fsync;
    /// only for rows a journal holds), and `mark`, if any, is recorded in
    /// the same transaction.
    Own {
        sync: bool,
        mark: Option<JournalMark>,
    },
}

/// A mark as the two INTEGER columns of `journal_mark`.
fn mark_columns(mark: JournalMark) -> Result<(i64, i64)> {
    match (i64::try_from(mark.segment), i64::try_from(mark.position)) {
        (Ok(segment), Ok(position)) => Ok((segment, position)),
        _ => Err(StoreError::Invalid(format!(
            "journal mark {}+{} is out of range",
            mark.segment, mark.position
        ))),
    }
}

/// The statement that records the journal mark (one row, id 1), for
/// `sqlx::query` with the two columns bound.
const SET_MARK: &str = "INSERT INTO journal_mark (id, segment_id, position) VALUES (1, ?, ?) \
     ON CONFLICT (id) DO UPDATE SET segment_id = excluded.segment_id, position = excluded.position";

/// Rows per multi-row INSERT: well under SQLite's bound-parameter limit.
const ROWS_PER_INSERT: usize = 100;

/// [`insert_message`] for many messages at once: one multi-row INSERT per
/// table (per chunk of rows), not one round trip per message and row, so a
/// group-commit batch costs a few statements (issue 9). A duplicate id is
/// `AlreadyExists(id)`.
///
/// With [`InsertTx::Caller`] it runs on the caller's open transaction, which
/// the caller rolls back on an error. With [`InsertTx::Own`], the query
/// string is wrapped in `BEGIN IMMEDIATE` ... `COMMIT` (and records the
/// journal mark, if any), so a whole group commit is one round
/// trip to SQLite's worker thread instead of three; on an error the
/// statements after the failing one did not run, and what did is rolled
/// back here before the error is returned.
async fn insert_messages(
    conn: &mut SqliteConnection,
    messages: &[NewMessage],
    how: InsertTx,
) -> Result<()> {
    let (own_transaction, sync, mark) = match how {
        InsertTx::Caller => (false, true, None),
        InsertTx::Own { sync, mark } => (true, sync, mark.map(mark_columns).transpose()?),
    };
    let mut sizes = Vec::with_capacity(messages.len());
    let mut seen = std::collections::HashSet::with_capacity(messages.len());
    for m in messages {
        if !seen.insert(m.id.as_str()) {
            return Err(StoreError::AlreadyExists(m.id.clone()));
        }
        sizes
            .push(i64::try_from(m.size).map_err(|_| {
                StoreError::Invalid(format!("message {}: size is too large", m.id))
            })?);
    }
    let rows: Vec<(&NewMessage, i64)> = messages.iter().zip(sizes).collect();
    // Every row of the batch goes in ONE round trip to SQLite's worker
    // thread: the INSERTs are statements of one query string, and sqlx binds
    // the `?` arguments across them in order (issue 9: each execute was a
    // futex hand-off there and back; issue 5: the usage rows no longer cost a
    // round trip of their own).
    // synchronous is per connection and cannot change inside a
    // transaction: NORMAL for this commit only, FULL again right after.
    let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(match (own_transaction, sync) {
        (false, _) => "",
        (true, true) => "BEGIN IMMEDIATE; ",
        (true, false) => "PRAGMA synchronous = NORMAL; BEGIN IMMEDIATE; ",
    });
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        q.push(
            "INSERT INTO queue_messages \
             (id, sender, size, spool_path, auth_user, client_ip, received_at) ",
        );
        q.push_values(chunk, |mut row, (m, size)| {
            row.push_bind(&m.id)
                .push_bind(&m.sender)
                .push_bind(*size)
                .push_bind(&m.spool_path)
                .push_bind(&m.auth_user)
                .push_bind(&m.client_ip)
                .push_bind(m.received_at);
        });
        q.push("; ");
    }
    let recipients: Vec<(&str, i64, &String)> = messages
        .iter()
        .flat_map(|m| {
            (0_i64..)
                .zip(&m.recipients)
                .map(|(i, r)| (m.id.as_str(), i, r))
        })
        .collect();
    for chunk in recipients.chunks(ROWS_PER_INSERT * 3) {
        q.push("INSERT INTO queue_recipients (message_id, position, address, domain) ");
        q.push_values(chunk, |mut row, (id, position, address)| {
            row.push_bind(*id)
                .push_bind(*position)
                .push_bind(*address)
                .push_bind(recipient_domain(address));
        });
        q.push("; ");
    }
    // normalize_new_message refuses usage without an auth user. Equal
    // timestamps of one message share one row with a count.
    let mut usage: Vec<(&String, i64, i64)> = Vec::new();
    for m in messages {
        let Some(account) = &m.auth_user else {
            continue;
        };
        let mut sorted = m.usage_ms.clone();
        sorted.sort_unstable();
        let first = usage.len();
        for at_ms in sorted {
            let same = usage.len() > first && usage.last().is_some_and(|(_, t, _)| *t == at_ms);
            match usage.last_mut() {
                Some((_, _, n)) if same => *n += 1,
                _ => usage.push((account, at_ms, 1)),
            }
        }
    }
    for chunk in usage.chunks(ROWS_PER_INSERT * 3) {
        q.push("INSERT INTO usage_events (account, at_ms, count) ");
        q.push_values(chunk, |mut row, (account, at_ms, count)| {
            row.push_bind(*account).push_bind(*at_ms).push_bind(*count);
        });
        q.push("; ");
    }
    if let Some((segment, position)) = mark {
        q.push("INSERT INTO journal_mark (id, segment_id, position) VALUES (1, ");
        q.push_bind(segment);
        q.push(", ");
        q.push_bind(position);
        q.push(") ON CONFLICT (id) DO UPDATE SET segment_id = excluded.segment_id, position = excluded.position; ");
    }
    if own_transaction {
        q.push(if sync {
            "COMMIT;"
        } else {
            "COMMIT; PRAGMA synchronous = FULL;"
        });
    }
    if let Err(e) = q.build().execute(&mut *conn).await {
        if own_transaction {
            // Fails harmlessly when BEGIN itself failed (no transaction).
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        }
        // Only the PRAGMA runs after COMMIT: if the mark of this very batch
        // is in the database, the batch committed and the error is the
        // PRAGMA's. Reporting it would make the caller void journal records
        // whose rows are queued and tell their clients to send them again,
        // so reset the setting once more and report success if that works.
        let constraint = matches!(&e, sqlx::Error::Database(db) if db.kind() != ErrorKind::Other);
        if let (Some(want), false) = (mark, sync)
            && !constraint
            && recorded_mark(conn).await == Some(want)
        {
            tracing::warn!(error = %e, "resetting synchronous after an unsynced commit failed; retrying");
            return sqlx::query("PRAGMA synchronous = FULL")
                .execute(&mut *conn)
                .await
                .map(|_| ())
                .map_err(|e| unavailable("committed, but cannot reset synchronous", e));
        }
        return Err(match rows.as_slice() {
            [(only, _)] => insert_error("enqueue", &only.id, e),
            _ => duplicate_in(conn, &rows, e).await,
        });
    }
    Ok(())
}

/// The journal mark in the database, as its two columns; `None` if there is
/// none or it cannot be read.
async fn recorded_mark(conn: &mut SqliteConnection) -> Option<(i64, i64)> {
    sqlx::query_as("SELECT segment_id, position FROM journal_mark WHERE id = 1")
        .fetch_optional(&mut *conn)
        .await
        .ok()
        .flatten()
}

/// After a multi-row INSERT into `queue_messages` failed: `AlreadyExists`
/// naming a message of `chunk` that is already queued, if that was the
/// cause, else the error as `Unavailable`.
async fn duplicate_in(
    conn: &mut SqliteConnection,
    chunk: &[(&NewMessage, i64)],
    error: sqlx::Error,
) -> StoreError {
    let unique =
        matches!(&error, sqlx::Error::Database(db) if db.kind() == ErrorKind::UniqueViolation);
    if !unique {
        return unavailable("enqueue", error);
    }
    for (m, _) in chunk {
        let exists: std::result::Result<bool, _> =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM queue_messages WHERE id = ?)")
                .bind(&m.id)
                .fetch_one(&mut *conn)
                .await;
        if let Ok(true) = exists {
            return StoreError::AlreadyExists(m.id.clone());
        }
    }
    unavailable("enqueue", error)
}

/// Maps a database error to `Unavailable`, naming the operation. SQLite error
/// texts name tables and columns, never bound values, so no hash or other
/// secret can appear in the message.
fn unavailable(what: &str, error: sqlx::Error) -> StoreError {
    StoreError::Unavailable(format!("{what}: {error}"))
}

/// Like [`unavailable`], but a unique-key violation becomes
/// `AlreadyExists(name)`.
fn insert_error(what: &str, name: &str, error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.kind() == ErrorKind::UniqueViolation => {
            StoreError::AlreadyExists(name.to_owned())
        }
        _ => unavailable(what, error),
    }
}

/// The lowercase domain of an envelope address: the text after its last `@`
/// (a quoted local part may hold `@`; a domain never does).
pub(crate) fn recipient_domain(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('>').to_ascii_lowercase())
        .unwrap_or_default()
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

fn parse_status(status: &str) -> Result<AccountStatus> {
    match status {
        "active" => Ok(AccountStatus::Active),
        "disabled" => Ok(AccountStatus::Disabled),
        _ => Err(StoreError::Unavailable(
            "accounts table holds an unknown status value".into(),
        )),
    }
}

type AccountRow = (String, String, String, i64, i64);

fn account_from_row(
    (address, status, plan, created_at, updated_at): AccountRow,
) -> Result<Account> {
    Ok(Account {
        address,
        status: parse_status(&status)?,
        plan,
        created_at,
        updated_at,
    })
}

const SELECT_ACCOUNT: &str = "SELECT address, status, plan, created_at, updated_at FROM accounts";

type QueueRow = (
    String,
    String,
    i64,
    String,
    Option<String>,
    String,
    i64,
    Option<String>,
);

#[async_trait]
impl Store for SqliteStore {
    fn directory_token(&self) -> Option<u128> {
        self.token.read()
    }

    async fn add_account(&self, address: &str, password_hash: &str, plan: &str) -> Result<Account> {
        let result: Result<Account> = async {
            let (address, domain) = normalize_account_address(address)?;
            check_password_hash(password_hash)?;
            let plan = normalize_plan(plan)?;
            let now = now();
            let mut tx = self.begin_write("add_account").await?;
            sqlx::query(
                "INSERT INTO domains (name, created_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
            )
            .bind(&domain)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| unavailable("add_account: adding domain", e))?;
            sqlx::query(
                "INSERT INTO accounts \
                 (address, password_hash, status, plan, created_at, updated_at, password_changed_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&address)
            .bind(password_hash)
            .bind(AccountStatus::Active.as_str())
            .bind(&plan)
            .bind(now)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| insert_error("add_account", &address, e))?;
            tx.commit()
                .await
                .map_err(|e| unavailable("add_account: commit", e))?;
            Ok(Account {
                address,
                status: AccountStatus::Active,
                plan,
                created_at: now,
                updated_at: now,
            })
        }
        .await;
        self.directory_changed();
        result
    }

    async fn account(&self, address: &str) -> Result<Option<Account>> {
        let Ok(address) = normalize_address(address) else {
            return Ok(None);
        };
        let row: Option<AccountRow> =
            sqlx::query_as(&format!("{SELECT_ACCOUNT} WHERE address = ?"))
                .bind(&address)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| unavailable("account", e))?;
        row.map(account_from_row).transpose()
    }

    async fn list_accounts(&self) -> Result<Vec<Account>> {
        let rows: Vec<AccountRow> = sqlx::query_as(&format!("{SELECT_ACCOUNT} ORDER BY address"))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| unavailable("list_accounts", e))?;
        rows.into_iter().map(account_from_row).collect()
    }

    async fn set_password_hash(&self, address: &str, password_hash: &str) -> Result<()> {
        let result: Result<()> = async {
            let address = normalize_address(address)?;
            check_password_hash(password_hash)?;
            let now = now();
            let done = sqlx::query(
                "UPDATE accounts SET password_hash = ?, updated_at = ?, password_changed_at = ?, \
                 scram_salt = NULL, scram_iterations = NULL, scram_stored_key = NULL, \
                 scram_server_key = NULL WHERE address = ?",
            )
            .bind(password_hash)
            .bind(now)
            .bind(now)
            .bind(&address)
            .execute(&self.pool)
            .await
            .map_err(|e| unavailable("set_password_hash", e))?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound(address));
            }
            Ok(())
        }
        .await;
        self.directory_changed();
        result
    }

    async fn set_account_status(&self, address: &str, status: AccountStatus) -> Result<()> {
        let result: Result<()> = async {
            let address = normalize_address(address)?;
            self.update_account_column(
                "set_account_status",
                "status",
                status.as_str().to_owned(),
                address,
            )
            .await
        }
        .await;
        self.directory_changed();
        result
    }

    async fn set_account_plan(&self, address: &str, plan: &str) -> Result<()> {
        let result: Result<()> = async {
            let address = normalize_address(address)?;
            let plan = normalize_plan(plan)?;
            self.update_account_column("set_account_plan", "plan", plan, address)
                .await
        }
        .await;
        self.directory_changed();
        result
    }

    async fn remove_account(&self, address: &str) -> Result<()> {
        let result: Result<()> = async {
            let address = normalize_address(address)?;
            let mut tx = self.begin_write("remove_account").await?;
            let done = sqlx::query("DELETE FROM accounts WHERE address = ?")
                .bind(&address)
                .execute(&mut *tx)
                .await
                .map_err(|e| unavailable("remove_account", e))?;
            if done.rows_affected() == 0 {
                // Dropping the transaction rolls it back; nothing was changed.
                return Err(StoreError::NotFound(address));
            }
            sqlx::query("DELETE FROM usage_events WHERE account = ?")
                .bind(&address)
                .execute(&mut *tx)
                .await
                .map_err(|e| unavailable("remove_account: usage", e))?;
            // The foreign keys cascade too; deleting explicitly keeps this
            // independent of the connection's foreign_keys setting.
            for (table, what) in [
                ("app_passwords", "remove_account: app passwords"),
                ("account_senders", "remove_account: allowed senders"),
            ] {
                sqlx::query(&format!("DELETE FROM {table} WHERE account = ?"))
                    .bind(&address)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| unavailable(what, e))?;
            }
            tx.commit()
                .await
                .map_err(|e| unavailable("remove_account: commit", e))
        }
        .await;
        self.directory_changed();
        result
    }

    async fn credential(&self, address: &str) -> Result<Option<Credential>> {
        let Ok(address) = normalize_address(address) else {
            return Ok(None);
        };
        let row: Option<(String, String, String)> =
            sqlx::query_as("SELECT address, status, password_hash FROM accounts WHERE address = ?")
                .bind(&address)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| unavailable("credential", e))?;
        row.map(|(address, status, password_hash)| {
            Ok(Credential {
                address,
                status: parse_status(&status)?,
                password_hash,
            })
        })
        .transpose()
    }

    async fn add_domain(&self, domain: &str) -> Result<()> {
        let result: Result<()> = async {
            let domain = normalize_domain(domain)?;
            sqlx::query("INSERT INTO domains (name, created_at) VALUES (?, ?)")
                .bind(&domain)
                .bind(now())
                .execute(&self.pool)
                .await
                .map_err(|e| insert_error("add_domain", &domain, e))?;
            Ok(())
        }
        .await;
        self.directory_changed();
        result
    }

    async fn list_domains(&self) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT name FROM domains ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| unavailable("list_domains", e))
    }

    async fn remove_domain(&self, domain: &str) -> Result<()> {
        let result: Result<()> = async {
            let domain = normalize_domain(domain)?;
            let mut tx = self.begin_write("remove_domain").await?;
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM domains WHERE name = ?)")
                    .bind(&domain)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| unavailable("remove_domain", e))?;
            if !exists {
                return Err(StoreError::NotFound(domain));
            }
            let accounts: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM accounts WHERE substr(address, instr(address, '@') + 1) = ?",
            )
            .bind(&domain)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| unavailable("remove_domain: counting accounts", e))?;
            if accounts > 0 {
                let noun = if accounts == 1 { "account" } else { "accounts" };
                return Err(StoreError::Invalid(format!(
                    "domain {domain} still has {accounts} {noun}"
                )));
            }
            sqlx::query("DELETE FROM domains WHERE name = ?")
                .bind(&domain)
                .execute(&mut *tx)
                .await
                .map_err(|e| unavailable("remove_domain", e))?;
            tx.commit()
                .await
                .map_err(|e| unavailable("remove_domain: commit", e))
        }
        .await;
        self.directory_changed();
        result
    }

    async fn is_local_domain(&self, domain: &str) -> Result<bool> {
        let Ok(domain) = normalize_domain(domain) else {
            return Ok(false);
        };
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM domains WHERE name = ?)")
            .bind(&domain)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| unavailable("is_local_domain", e))
    }

    async fn enqueue(&self, message: &NewMessage) -> Result<()> {
        let message = normalize_new_message(message)?;
        let mut tx = self.begin_write("enqueue").await?;
        insert_message(&mut tx, &message).await?;
        // With synchronous=FULL the WAL is fsynced before COMMIT returns.
        tx.commit()
            .await
            .map_err(|e| unavailable("enqueue: commit", e))
    }

    async fn list_queue(&self) -> Result<Vec<QueuedMessage>> {
        // One statement, so one consistent snapshot of both tables.
        let rows: Vec<QueueRow> = sqlx::query_as(
            "SELECT m.id, m.sender, m.size, m.spool_path, m.auth_user, m.client_ip, \
                    m.received_at, r.address \
             FROM queue_messages AS m \
             LEFT JOIN queue_recipients AS r ON r.message_id = m.id \
             ORDER BY m.received_at, m.rowid, r.position",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| unavailable("list_queue", e))?;

        let mut queue: Vec<QueuedMessage> = Vec::new();
        for (id, sender, size, spool_path, auth_user, client_ip, received_at, recipient) in rows {
            let same = queue.last().is_some_and(|last| last.id == id);
            if !same {
                let size = u64::try_from(size).map_err(|_| {
                    StoreError::Unavailable("queue_messages holds a negative size".into())
                })?;
                queue.push(QueuedMessage {
                    id,
                    sender,
                    recipients: Vec::new(),
                    size,
                    spool_path,
                    auth_user,
                    client_ip,
                    received_at,
                });
            }
            if let (Some(last), Some(recipient)) = (queue.last_mut(), recipient) {
                last.recipients.push(recipient);
            }
        }
        Ok(queue)
    }

    async fn usage_since(&self, account: &str, since_ms: i64) -> Result<Vec<i64>> {
        let Ok(account) = normalize_address(account) else {
            return Ok(Vec::new());
        };
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT at_ms, count FROM usage_events WHERE account = ? AND at_ms > ? ORDER BY at_ms",
        )
        .bind(&account)
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| unavailable("usage_since", e))?;
        Ok(rows
            .into_iter()
            .flat_map(|(t, n)| std::iter::repeat_n(t, usize::try_from(n).unwrap_or(0)))
            .collect())
    }

    async fn usage_all_since(&self, since_ms: i64) -> Result<Vec<(String, i64)>> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT account, at_ms, count FROM usage_events WHERE at_ms > ? ORDER BY account, at_ms",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| unavailable("usage_all_since", e))?;
        Ok(rows
            .into_iter()
            .flat_map(|(a, t, n)| std::iter::repeat_n((a, t), usize::try_from(n).unwrap_or(0)))
            .collect())
    }

    async fn prune_usage(&self, before_ms: i64) -> Result<u64> {
        // Reports emails (the sum of counts), not rows.
        // BEGIN IMMEDIATE: a deferred transaction that reads then writes can
        // fail with "database is locked" when another writer got in between.
        let mut tx = self.begin_write("prune_usage").await?;
        let emails: i64 =
            sqlx::query_scalar("SELECT COALESCE(SUM(count), 0) FROM usage_events WHERE at_ms <= ?")
                .bind(before_ms)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| unavailable("prune_usage", e))?;
        sqlx::query("DELETE FROM usage_events WHERE at_ms <= ?")
            .bind(before_ms)
            .execute(&mut *tx)
            .await
            .map_err(|e| unavailable("prune_usage", e))?;
        tx.commit()
            .await
            .map_err(|e| unavailable("prune_usage", e))?;
        Ok(u64::try_from(emails).unwrap_or(0))
    }

    async fn add_app_password(
        &self,
        account: &str,
        name: &str,
        digest: &[u8],
        expires_at: Option<i64>,
        allowed_ips: &[String],
    ) -> Result<()> {
        let result: Result<()> = async {
            self.add_app_password_impl(account, name, digest, expires_at, allowed_ips)
                .await
        }
        .await;
        self.directory_changed();
        result
    }

    async fn list_app_passwords(&self, account: &str) -> Result<Vec<AppPassword>> {
        self.list_app_passwords_impl(account).await
    }

    async fn revoke_app_password(&self, account: &str, name: &str) -> Result<()> {
        let result: Result<()> = async { self.revoke_app_password_impl(account, name).await }.await;
        self.directory_changed();
        result
    }

    async fn app_password_secrets(&self, account: &str) -> Result<Vec<AppPasswordSecret>> {
        self.app_password_secrets_impl(account).await
    }

    async fn touch_app_password(&self, account: &str, name: &str, at: i64, ip: &str) -> Result<()> {
        self.touch_app_password_impl(account, name, at, ip).await
    }

    async fn account_security(&self, account: &str) -> Result<Option<AccountSecurity>> {
        self.account_security_impl(account).await
    }

    async fn set_totp_secret(&self, account: &str, secret: Option<&str>) -> Result<()> {
        let result: Result<()> = async { self.set_totp_secret_impl(account, secret).await }.await;
        self.directory_changed();
        result
    }

    async fn set_allowed_ips(&self, account: &str, cidrs: &[String]) -> Result<()> {
        let result: Result<()> = async { self.set_allowed_ips_impl(account, cidrs).await }.await;
        self.directory_changed();
        result
    }

    async fn add_allowed_sender(&self, account: &str, sender: &str) -> Result<()> {
        let result: Result<()> =
            async { self.add_allowed_sender_impl(account, sender).await }.await;
        self.directory_changed();
        result
    }

    async fn remove_allowed_sender(&self, account: &str, sender: &str) -> Result<()> {
        let result: Result<()> =
            async { self.remove_allowed_sender_impl(account, sender).await }.await;
        self.directory_changed();
        result
    }

    async fn record_auth_events(&self, events: &[AuthEvent]) -> Result<()> {
        self.record_auth_events_impl(events).await
    }

    async fn auth_events(&self, filter: &AuthEventFilter) -> Result<Vec<AuthEvent>> {
        self.auth_events_impl(filter).await
    }

    async fn prune_auth_events(&self, before_ms: i64) -> Result<u64> {
        self.prune_auth_events_impl(before_ms).await
    }

    async fn upsert_ban(&self, ban: &Ban) -> Result<()> {
        self.upsert_ban_impl(ban).await
    }

    async fn list_bans(&self, now_ms: i64) -> Result<Vec<Ban>> {
        self.list_bans_impl(now_ms).await
    }

    async fn remove_ban(&self, network: &str) -> Result<()> {
        self.remove_ban_impl(network).await
    }

    async fn release_in_flight(&self) -> Result<u64> {
        self.release_in_flight_impl().await
    }

    async fn claim_due(&self, now_ms: i64, limit: u32) -> Result<Vec<crate::DeliveryJob>> {
        self.claim_due_impl(now_ms, limit).await
    }

    async fn next_due_ms(&self) -> Result<Option<i64>> {
        self.next_due_ms_impl().await
    }

    async fn record_delivery(
        &self,
        outcomes: &[crate::RecipientOutcome],
        notices: &[NewMessage],
        now_ms: i64,
    ) -> Result<Vec<(String, String)>> {
        self.record_delivery_impl(outcomes, notices, now_ms).await
    }

    async fn queue_entries(
        &self,
        status: Option<crate::DeliveryStatus>,
        include_done: bool,
    ) -> Result<Vec<crate::QueueEntry>> {
        self.queue_entries_impl(status, include_done).await
    }

    async fn queue_entry(&self, id: &str) -> Result<Option<crate::QueueEntry>> {
        self.queue_entry_impl(id).await
    }

    async fn delivery_events(&self, id: &str) -> Result<Vec<crate::DeliveryEvent>> {
        self.delivery_events_impl(id).await
    }

    async fn retry_now(&self, id: Option<&str>, now_ms: i64) -> Result<u64> {
        self.retry_now_impl(id, now_ms).await
    }

    async fn request_bounce(&self, id: &str, now_ms: i64) -> Result<u64> {
        self.request_bounce_impl(id, now_ms).await
    }

    async fn delete_message(&self, id: &str) -> Result<String> {
        self.delete_message_impl(id).await
    }

    async fn prune_done(&self, before_s: i64) -> Result<u64> {
        self.prune_done_impl(before_s).await
    }

    async fn add_alias(&self, alias: &str, target: &str) -> Result<()> {
        let result: Result<()> = async { self.add_alias_impl(alias, target).await }.await;
        self.directory_changed();
        result
    }

    async fn remove_alias(&self, alias: &str) -> Result<()> {
        let result: Result<()> = async { self.remove_alias_impl(alias).await }.await;
        self.directory_changed();
        result
    }

    async fn list_aliases(&self) -> Result<Vec<crate::Alias>> {
        self.list_aliases_impl().await
    }

    async fn resolve_alias(&self, address: &str) -> Result<Option<String>> {
        self.resolve_alias_impl(address).await
    }

    async fn set_scram_keys(&self, account: &str, keys: Option<&ScramCredential>) -> Result<()> {
        let result: Result<()> = async { self.set_scram_keys_impl(account, keys).await }.await;
        self.directory_changed();
        result
    }

    async fn set_app_password_keys(
        &self,
        account: &str,
        name: &str,
        scram: Option<&ScramCredential>,
        cram_sealed: Option<&[u8]>,
    ) -> Result<()> {
        let result: Result<()> = async {
            self.set_app_password_keys_impl(account, name, scram, cram_sealed)
                .await
        }
        .await;
        self.directory_changed();
        result
    }

    async fn scram_keys(&self, account: &str) -> Result<Vec<ScramKeysOf>> {
        self.scram_keys_impl(account).await
    }

    async fn cram_secrets(&self, account: &str) -> Result<Vec<CramSecret>> {
        self.cram_secrets_impl(account).await
    }

    async fn add_dkim_keys(
        &self,
        domain: &str,
        keys: &[crate::NewDkimKey],
    ) -> Result<crate::DkimKeyState> {
        let result: Result<crate::DkimKeyState> =
            async { self.add_dkim_keys_impl(domain, keys).await }.await;
        self.directory_changed();
        result
    }

    async fn dkim_keys(&self, domain: &str) -> Result<Vec<crate::DkimKey>> {
        self.dkim_keys_impl(domain).await
    }

    async fn activate_dkim_tag(&self, domain: &str, tag: &str) -> Result<()> {
        let result: Result<()> = async { self.activate_dkim_tag_impl(domain, tag).await }.await;
        self.directory_changed();
        result
    }

    async fn remove_dkim_tag(&self, domain: &str, tag: &str) -> Result<()> {
        let result: Result<()> = async { self.remove_dkim_tag_impl(domain, tag).await }.await;
        self.directory_changed();
        result
    }

    // --- Batching (issue 9) ---------------------------------------------------

    async fn enqueue_batch(&self, messages: &[NewMessage]) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        // Validate everything before taking the write lock.
        let messages = messages
            .iter()
            .map(normalize_new_message)
            .collect::<Result<Vec<_>>>()?;
        let how = InsertTx::Own {
            sync: true,
            mark: None,
        };
        self.insert_on_writer(&messages, how).await
    }

    async fn enqueue_journaled(
        &self,
        messages: &[NewMessage],
        mark: JournalMark,
        sync: bool,
    ) -> Result<()> {
        let messages = messages
            .iter()
            .map(normalize_new_message)
            .collect::<Result<Vec<_>>>()?;
        let how = InsertTx::Own {
            sync,
            mark: Some(mark),
        };
        self.insert_on_writer(&messages, how).await
    }

    async fn sync_commits(&self) -> Result<()> {
        let mut tx = self.begin_write("sync_commits").await?;
        // Rewriting the row dirties its page, so COMMIT writes a WAL frame
        // and (synchronous=FULL) fsyncs the WAL: every earlier frame is then
        // durable too.
        sqlx::query("UPDATE journal_mark SET position = position WHERE id = 1")
            .execute(&mut *tx)
            .await
            .map_err(|e| unavailable("sync_commits", e))?;
        tx.commit()
            .await
            .map_err(|e| unavailable("sync_commits: commit", e))
    }

    async fn journal_mark(&self) -> Result<Option<JournalMark>> {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT segment_id, position FROM journal_mark WHERE id = 1")
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| unavailable("journal_mark", e))?;
        row.map(
            |(segment, position)| match (u64::try_from(segment), u64::try_from(position)) {
                (Ok(segment), Ok(position)) => Ok(JournalMark { segment, position }),
                _ => Err(StoreError::Unavailable(
                    "journal_mark holds a negative position".into(),
                )),
            },
        )
        .transpose()
    }

    async fn replay_journal(&self, messages: &[NewMessage], mark: JournalMark) -> Result<usize> {
        let messages = messages
            .iter()
            .map(normalize_new_message)
            .collect::<Result<Vec<_>>>()?;
        let (segment, position) = mark_columns(mark)?;
        let mut tx = self.begin_write("replay_journal").await?;
        let mut recorded = 0;
        for m in &messages {
            let present: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM queue_messages WHERE id = ?)")
                    .bind(&m.id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| unavailable("replay_journal", e))?;
            if !present {
                insert_message(&mut tx, m).await?;
                recorded += 1;
            }
        }
        sqlx::query(SET_MARK)
            .bind(segment)
            .bind(position)
            .execute(&mut *tx)
            .await
            .map_err(|e| unavailable("replay_journal: mark", e))?;
        // synchronous=FULL: durable before COMMIT returns.
        tx.commit()
            .await
            .map_err(|e| unavailable("replay_journal: commit", e))?;
        Ok(recorded)
    }

    async fn live_spool_files(&self) -> Result<Vec<String>> {
        self.live_spool_files_impl().await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn writer_synchronous(store: &SqliteStore) -> i64 {
        let mut conn = store.writer.acquire().await.unwrap();
        sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await
            .unwrap()
    }

    fn message(id: &str) -> NewMessage {
        NewMessage {
            id: id.into(),
            sender: String::new(),
            recipients: vec!["x@example.net".into()],
            size: 1,
            spool_path: format!("spool/{id}.eml"),
            auth_user: None,
            client_ip: "192.0.2.1".into(),
            received_at: 1,
            usage_ms: Vec::new(),
        }
    }

    /// An unsynced journaled commit switches the writer to NORMAL for that
    /// commit only: the writes after it, also after a failed one, are FULL
    /// (2) again.
    #[tokio::test]
    async fn unsynced_commit_leaves_the_writer_at_full() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).await.unwrap();
        assert_eq!(writer_synchronous(&store).await, 2);
        let mark = JournalMark {
            segment: 1,
            position: 5,
        };
        store
            .enqueue_journaled(&[message("A")], mark, false)
            .await
            .unwrap();
        assert_eq!(writer_synchronous(&store).await, 2);
        assert!(
            store
                .enqueue_journaled(&[message("A")], mark, false)
                .await
                .is_err()
        );
        assert_eq!(writer_synchronous(&store).await, 2);
    }
}
