//! Opening the first connection to a SQLite file and putting it in WAL mode.
//!
//! Owns the one step of opening that SQLite's busy timeout does not cover:
//! switching the journal mode needs a lock the busy handler will not wait
//! for, so it is retried here while another process (the server, the admin
//! CLI) holds the file.

use std::path::Path;
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{Connection, SqliteConnection};

use super::unavailable;
use crate::{Result, StoreError};

/// Pause between attempts while the file is locked.
const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// Opens one connection with `options` plus `journal_mode=WAL`, retrying for
/// up to `patience` while another connection holds a conflicting lock, and
/// checks that the file really is in WAL mode afterwards.
pub(super) async fn connect_wal(
    options: &SqliteConnectOptions,
    path: &Path,
    patience: Duration,
) -> Result<SqliteConnection> {
    let options = options.clone().journal_mode(SqliteJournalMode::Wal);
    let deadline = Instant::now() + patience;
    let mut conn = loop {
        match SqliteConnection::connect_with(&options).await {
            Ok(conn) => break conn,
            Err(e) if is_busy(&e) && Instant::now() < deadline => {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(e) => return Err(unavailable(&format!("opening {}", path.display()), e)),
        }
    };
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| unavailable("reading journal mode", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        // The connection is being given up; a failed close changes nothing.
        let _ = conn.close().await;
        return Err(StoreError::Unavailable(format!(
            "{} could not be put in WAL mode (journal mode is {mode})",
            path.display()
        )));
    }
    Ok(conn)
}

/// Whether `error` is SQLITE_BUSY or SQLITE_LOCKED (any extended code).
fn is_busy(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|code| code.parse::<i64>().ok())
            .is_some_and(|code| matches!(code & 0xff, 5 | 6)),
        _ => false,
    }
}
