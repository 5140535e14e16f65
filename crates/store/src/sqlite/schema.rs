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
