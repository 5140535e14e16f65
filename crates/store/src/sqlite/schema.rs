//! The SQLite schema and its migrations, tracked in `PRAGMA user_version`.
//!
//! Owns the table definitions. To change the schema, append a migration to
//! [`MIGRATIONS`]; never edit one that has shipped. Each migration runs in the
//! same `BEGIN IMMEDIATE` transaction as the version bump, so concurrent
//! openers (server and admin CLI) apply it exactly once.

use sqlx::{Connection, SqliteConnection};

use crate::{Result, StoreError};

/// Migrations in order; after running `MIGRATIONS[i]` the schema version is `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: accounts, domains, queue index.
    r#"
    CREATE TABLE IF NOT EXISTS domains (
        name        TEXT PRIMARY KEY NOT NULL,
        created_at  INTEGER NOT NULL
    );

    CREATE TABLE IF NOT EXISTS accounts (
        address        TEXT PRIMARY KEY NOT NULL,
        password_hash  TEXT NOT NULL,
        status         TEXT NOT NULL DEFAULT 'active'
                       CHECK (status IN ('active', 'disabled')),
        plan           TEXT NOT NULL,
        created_at     INTEGER NOT NULL,
        updated_at     INTEGER NOT NULL
    );

    CREATE INDEX IF NOT EXISTS accounts_by_domain
        ON accounts (substr(address, instr(address, '@') + 1));

    CREATE TABLE IF NOT EXISTS queue_messages (
        id           TEXT PRIMARY KEY NOT NULL,
        sender       TEXT NOT NULL,
        size         INTEGER NOT NULL CHECK (size >= 0),
        spool_path   TEXT NOT NULL,
        auth_user    TEXT,
        client_ip    TEXT NOT NULL,
        received_at  INTEGER NOT NULL
    );

    CREATE INDEX IF NOT EXISTS queue_messages_by_age
        ON queue_messages (received_at);

    CREATE TABLE IF NOT EXISTS queue_recipients (
        message_id  TEXT NOT NULL
                    REFERENCES queue_messages (id) ON DELETE CASCADE,
        position    INTEGER NOT NULL,
        address     TEXT NOT NULL,
        status      TEXT NOT NULL DEFAULT 'queued',
        PRIMARY KEY (message_id, position)
    );
    "#,
    // 2: usage events (one per accepted recipient counted against a plan).
    r#"
    CREATE TABLE IF NOT EXISTS usage_events (
        account  TEXT NOT NULL,
        at_ms    INTEGER NOT NULL
    );

    CREATE INDEX IF NOT EXISTS usage_events_by_account
        ON usage_events (account, at_ms);

    CREATE INDEX IF NOT EXISTS usage_events_by_time
        ON usage_events (at_ms);
    "#,
    // 3: account security: password age, 2FA, IP allowlists, granted
    // senders, app passwords, the auth audit and bans. Allowlists are kept as
    // newline-separated text (entries never contain control characters).
    // Existing accounts take their last update as the password change time.
    r#"
    ALTER TABLE accounts ADD COLUMN password_changed_at INTEGER NOT NULL DEFAULT 0;
    UPDATE accounts SET password_changed_at = updated_at;
    ALTER TABLE accounts ADD COLUMN totp_secret TEXT;
    ALTER TABLE accounts ADD COLUMN allowed_ips TEXT NOT NULL DEFAULT '';

    CREATE TABLE IF NOT EXISTS account_senders (
        account  TEXT NOT NULL
                 REFERENCES accounts (address) ON DELETE CASCADE,
        sender   TEXT NOT NULL,
        PRIMARY KEY (account, sender)
    ) WITHOUT ROWID;

    CREATE TABLE IF NOT EXISTS app_passwords (
        account       TEXT NOT NULL
                      REFERENCES accounts (address) ON DELETE CASCADE,
        name          TEXT NOT NULL COLLATE NOCASE,
        digest        BLOB NOT NULL,
        created_at    INTEGER NOT NULL,
        last_used_at  INTEGER,
        last_used_ip  TEXT,
        expires_at    INTEGER,
        allowed_ips   TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (account, name)
    );

    CREATE TABLE IF NOT EXISTS auth_events (
        id            INTEGER PRIMARY KEY,
        at_ms         INTEGER NOT NULL,
        session_id    TEXT NOT NULL,
        listener      TEXT NOT NULL,
        client_ip     TEXT NOT NULL,
        tls           TEXT,
        claimed_user  TEXT NOT NULL,
        mechanism     TEXT NOT NULL,
        credential    TEXT,
        success       INTEGER NOT NULL CHECK (success IN (0, 1)),
        reason        TEXT NOT NULL
    );

    CREATE INDEX IF NOT EXISTS auth_events_by_time
        ON auth_events (at_ms);

    CREATE INDEX IF NOT EXISTS auth_events_by_user
        ON auth_events (lower(claimed_user), at_ms);

    CREATE INDEX IF NOT EXISTS auth_events_by_ip
        ON auth_events (client_ip, at_ms);

    CREATE TABLE IF NOT EXISTS bans (
        network     TEXT PRIMARY KEY NOT NULL,
        until_ms    INTEGER NOT NULL,
        reason      TEXT NOT NULL,
        created_ms  INTEGER NOT NULL,
        strikes     INTEGER NOT NULL CHECK (strikes >= 0)
    );
    "#,
    // 4: usage rows carry a count (all emails of one message counted in the
    // same millisecond share a row), and the time-only index goes: pruning
    // and the startup load are rare scans, while every enqueue paid for it.
    r#"
    ALTER TABLE usage_events ADD COLUMN count INTEGER NOT NULL DEFAULT 1 CHECK (count >= 1);
    DROP INDEX IF EXISTS usage_events_by_time;
    "#,
    // 5: delivery. Each recipient carries its destination domain (lowercase,
    // after the last '@'), its attempt count, next attempt time, last reply and
    // flags; every attempt is an event; aliases map addresses (or '@domain'
    // catch-alls) of local domains to targets.
    r#"
    ALTER TABLE queue_messages ADD COLUMN done_at INTEGER;
    ALTER TABLE queue_recipients ADD COLUMN domain TEXT NOT NULL DEFAULT '';
    UPDATE queue_recipients SET domain = lower(substr(address, instr(address, '@') + 1));
    ALTER TABLE queue_recipients ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE queue_recipients ADD COLUMN next_attempt_ms INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE queue_recipients ADD COLUMN last_reply TEXT;
    ALTER TABLE queue_recipients ADD COLUMN last_host TEXT;
    ALTER TABLE queue_recipients ADD COLUMN warned INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE queue_recipients ADD COLUMN admin_bounce INTEGER NOT NULL DEFAULT 0;

    CREATE INDEX IF NOT EXISTS queue_recipients_due
        ON queue_recipients (next_attempt_ms)
        WHERE status IN ('queued', 'deferred');

    CREATE INDEX IF NOT EXISTS queue_messages_done
        ON queue_messages (done_at)
        WHERE done_at IS NOT NULL;

    CREATE TABLE IF NOT EXISTS delivery_events (
        id          INTEGER PRIMARY KEY,
        message_id  TEXT NOT NULL,
        recipient   TEXT NOT NULL,
        at_ms       INTEGER NOT NULL,
        outcome     TEXT NOT NULL,
        host        TEXT,
        reply       TEXT NOT NULL
    );

    CREATE INDEX IF NOT EXISTS delivery_events_by_message
        ON delivery_events (message_id, at_ms);

    CREATE TABLE IF NOT EXISTS aliases (
        alias       TEXT PRIMARY KEY NOT NULL,
        target      TEXT NOT NULL,
        created_at  INTEGER NOT NULL
    );
    "#,
    // 6 (issue 6): SCRAM-SHA-256 keys (RFC 5802: salt, iterations, StoredKey,
    // ServerKey) for the main password and each app password, and the
    // sealed CRAM-MD5 secret of app passwords that opted in. Existing
    // credentials get SCRAM keys when their password is next set.
    r#"
    ALTER TABLE accounts ADD COLUMN scram_salt BLOB;
    ALTER TABLE accounts ADD COLUMN scram_iterations INTEGER;
    ALTER TABLE accounts ADD COLUMN scram_stored_key BLOB;
    ALTER TABLE accounts ADD COLUMN scram_server_key BLOB;
    ALTER TABLE app_passwords ADD COLUMN scram_salt BLOB;
    ALTER TABLE app_passwords ADD COLUMN scram_iterations INTEGER;
    ALTER TABLE app_passwords ADD COLUMN scram_stored_key BLOB;
    ALTER TABLE app_passwords ADD COLUMN scram_server_key BLOB;
    ALTER TABLE app_passwords ADD COLUMN cram_secret BLOB;
    "#,
    // 7 (issue 7): sending domains' DKIM key pairs. Each pair (Ed25519 +
    // RSA) shares a tag; selectors are the tag plus 'e' or 'r'. The private
    // key is a PKCS#8 DER document (both algorithms).
    r#"
    CREATE TABLE IF NOT EXISTS dkim_keys (
        domain       TEXT NOT NULL REFERENCES domains (name) ON DELETE CASCADE,
        selector     TEXT NOT NULL,
        tag          TEXT NOT NULL,
        algorithm    TEXT NOT NULL CHECK (algorithm IN ('ed25519', 'rsa')),
        private_key  BLOB NOT NULL,
        public_key   BLOB NOT NULL,
        state        TEXT NOT NULL CHECK (state IN ('pending', 'active', 'retired')),
        created_at   INTEGER NOT NULL,
        PRIMARY KEY (domain, selector)
    );
    "#,
    // 8 (issue 9): how far the spool's journal (the segment records, each
    // carrying its message's queue row) is applied to this database. Written
    // in the same transaction as the rows it covers; one row at most.
    r#"
    CREATE TABLE IF NOT EXISTS journal_mark (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        segment_id  INTEGER NOT NULL,
        position    INTEGER NOT NULL
    );
    "#,
];

/// The schema version this build creates and understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database up to [`SCHEMA_VERSION`]. Refuses a database whose
/// version is newer (written by a later build) rather than guess at it.
pub(super) async fn migrate(conn: &mut SqliteConnection) -> Result<()> {
    let mut tx = conn
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(|e| super::unavailable("starting schema migration", e))?;
    let current: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| super::unavailable("reading schema version", e))?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::Unavailable(format!(
            "database schema version {current} is newer than this build supports ({SCHEMA_VERSION})"
        )));
    }
    let applied = usize::try_from(current).map_err(|_| {
        StoreError::Unavailable(format!("database schema version {current} is not valid"))
    })?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let version = index + 1;
        sqlx::raw_sql(sql)
            .execute(&mut *tx)
            .await
            .map_err(|e| super::unavailable(&format!("schema migration {version}"), e))?;
        // PRAGMA does not take bound parameters; `version` is our own integer.
        sqlx::raw_sql(&format!("PRAGMA user_version = {version}"))
            .execute(&mut *tx)
            .await
            .map_err(|e| super::unavailable("recording schema version", e))?;
        tracing::info!(version, "applied store schema migration");
    }
    tx.commit()
        .await
        .map_err(|e| super::unavailable("committing schema migration", e))?;
    Ok(())
}
