//! Conformance tests of the SQLite backend.
//!
//! Owns the `#[tokio::test]` entry points: each runs a function of the
//! backend-independent suite (`conformance/suite.rs`) against a real SQLite
//! file in a temporary directory, and some check SQLite specifics (file and
//! directory creation, WAL, schema version and upgrades from versions 1 and 2, two
//! handles on one file, reopening after drop).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "conformance/suite.rs"]
mod suite;

use std::path::Path;
use std::sync::Arc;

use portcullis_store::{SqliteStore, Store, StoreError};
use suite::*;
use tempfile::TempDir;

use portcullis_store::SCHEMA_VERSION;

// ---------------------------------------------------------------------------
// SQLite
// ---------------------------------------------------------------------------

async fn open(path: &Path) -> Arc<dyn Store> {
    Arc::new(SqliteStore::open(path).await.expect("open sqlite store"))
}

async fn fresh() -> (TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("store.db")).await;
    (dir, store)
}

#[tokio::test]
async fn sqlite_accounts() {
    let (_dir, store) = fresh().await;
    suite_accounts(store).await;
}

#[tokio::test]
async fn sqlite_scram_and_cram_keys() {
    let (_dir, store) = fresh().await;
    suite_scram_and_cram_keys(store).await;
}

#[tokio::test]
async fn sqlite_account_errors() {
    let (_dir, store) = fresh().await;
    suite_account_errors(store).await;
}

#[tokio::test]
async fn sqlite_account_changes() {
    let (_dir, store) = fresh().await;
    suite_account_changes(store).await;
}

#[tokio::test]
async fn sqlite_domains() {
    let (_dir, store) = fresh().await;
    suite_domains(store).await;
}

#[tokio::test]
async fn sqlite_domain_accounts() {
    let (_dir, store) = fresh().await;
    suite_domain_accounts(store).await;
}

#[tokio::test]
async fn sqlite_queue() {
    let (_dir, store) = fresh().await;
    suite_queue(store).await;
}

#[tokio::test]
async fn sqlite_enqueue_batch() {
    let (_dir, store) = fresh().await;
    suite_enqueue_batch(store).await;
}

#[tokio::test]
async fn sqlite_journal() {
    let (_dir, store) = fresh().await;
    suite_journal(store).await;
}

/// An unsynced journaled commit is visible to a second handle, and durable
/// with that handle's synced write.
#[tokio::test]
async fn sqlite_journaled_commit_seen_by_another_handle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let a = open(&path).await;
    let b = open(&path).await;
    let mark = portcullis_store::JournalMark {
        segment: 1,
        position: 10,
    };
    a.enqueue_journaled(&[message("H1", "", &["x@example.net"], 1)], mark, false)
        .await
        .unwrap();
    assert_eq!(b.journal_mark().await.unwrap(), Some(mark));
    assert_eq!(b.list_queue().await.unwrap().len(), 1);
    b.delete_message("H1").await.unwrap();
    drop((a, b));
    let c = open(&path).await;
    assert!(c.list_queue().await.unwrap().is_empty());
    assert_eq!(c.journal_mark().await.unwrap(), Some(mark));
}

#[tokio::test]
async fn sqlite_account_plan() {
    let (_dir, store) = fresh().await;
    suite_account_plan(store).await;
}

#[tokio::test]
async fn sqlite_usage() {
    let (_dir, store) = fresh().await;
    suite_usage(store).await;
}

#[tokio::test]
async fn sqlite_usage_same_millisecond() {
    let (_dir, store) = fresh().await;
    suite_usage_same_millisecond(store).await;
}

#[tokio::test]
async fn sqlite_remove_account_usage() {
    let (_dir, store) = fresh().await;
    suite_remove_account_usage(store).await;
}

#[tokio::test]
async fn sqlite_claim_due() {
    let (_dir, store) = fresh().await;
    suite_claim_due(store).await;
}

#[tokio::test]
async fn sqlite_release_in_flight() {
    let (_dir, store) = fresh().await;
    suite_release_in_flight(store).await;
}

#[tokio::test]
async fn sqlite_record_delivery() {
    let (_dir, store) = fresh().await;
    suite_record_delivery(store).await;
}

#[tokio::test]
async fn sqlite_delivery_notices() {
    let (_dir, store) = fresh().await;
    suite_delivery_notices(store).await;
}

#[tokio::test]
async fn sqlite_delivery_rewrite() {
    let (_dir, store) = fresh().await;
    suite_delivery_rewrite(store).await;
}

#[tokio::test]
async fn sqlite_queue_admin() {
    let (_dir, store) = fresh().await;
    suite_queue_admin(store).await;
}

#[tokio::test]
async fn sqlite_aliases() {
    let (_dir, store) = fresh().await;
    suite_aliases(store).await;
}

#[tokio::test]
async fn sqlite_two_handles_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let server = open(&path).await;
    let cli = open(&path).await;
    suite_shared(server, cli).await;
}

#[tokio::test]
async fn sqlite_app_passwords() {
    let (_dir, store) = fresh().await;
    suite_app_passwords(store).await;
}

#[tokio::test]
async fn sqlite_account_security() {
    let (_dir, store) = fresh().await;
    suite_account_security(store).await;
}

#[tokio::test]
async fn sqlite_auth_events() {
    let (_dir, store) = fresh().await;
    suite_auth_events(store).await;
}

#[tokio::test]
async fn sqlite_auth_events_big_batch() {
    let (_dir, store) = fresh().await;
    suite_auth_events_big_batch(store).await;
}

#[tokio::test]
async fn sqlite_bans() {
    let (_dir, store) = fresh().await;
    suite_bans(store).await;
}

#[tokio::test]
async fn sqlite_remove_account_security() {
    let (_dir, store) = fresh().await;
    suite_remove_account_security(store).await;
}

#[tokio::test]
async fn sqlite_two_handles_security() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let server = open(&path).await;
    let cli = open(&path).await;
    suite_shared_security(server, cli).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_writers_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let a = open(&path).await;
    let b = open(&path).await;
    suite_concurrent_writes(a, b).await;
}

#[tokio::test]
async fn sqlite_concurrent_first_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    let (a, b) = tokio::join!(SqliteStore::open(&path), SqliteStore::open(&path));
    let (a, b) = (a.unwrap(), b.unwrap());
    a.add_domain("example.com").await.unwrap();
    assert!(b.is_local_domain("example.com").await.unwrap());
}

#[tokio::test]
async fn sqlite_reopen_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let h = hash("pw");
    {
        let store = open(&path).await;
        store
            .add_account("heidi@example.com", &h, "pro")
            .await
            .unwrap();
        store.add_domain("example.org").await.unwrap();
        store
            .enqueue(&message("R1", "", &["heidi@example.com"], 42))
            .await
            .unwrap();
        store
            .enqueue(&message_with_usage(
                "R2",
                "heidi@example.com",
                &["x@example.net", "y@example.net"],
                &[1_700_000_000_000, 1_700_000_000_001],
            ))
            .await
            .unwrap();
        // Dropped without close, as a killed process would.
    }
    let store = open(&path).await;
    let cred = store
        .credential("HEIDI@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cred.password_hash, h);
    assert_eq!(
        store
            .account("heidi@example.com")
            .await
            .unwrap()
            .unwrap()
            .plan,
        "pro"
    );
    assert_eq!(
        store.list_domains().await.unwrap(),
        ["example.com", "example.org"]
    );
    let queue = store.list_queue().await.unwrap();
    assert_eq!(queue.len(), 2);
    assert_eq!(queue[0].recipients, ["heidi@example.com"]);
    assert_eq!(queue[0].sender, "");
    assert_eq!(
        store.usage_since("heidi@example.com", 0).await.unwrap(),
        [1_700_000_000_000, 1_700_000_000_001]
    );
    assert_eq!(store.usage_all_since(0).await.unwrap().len(), 2);

    // A clean close and a third open also work.
    let sqlite = SqliteStore::open(&path).await.unwrap();
    sqlite.close().await;
    assert!(matches!(
        sqlite.list_domains().await,
        Err(StoreError::Unavailable(_))
    ));
    let store = open(&path).await;
    assert_eq!(store.list_accounts().await.unwrap().len(), 1);
    assert_eq!(
        store
            .usage_since("heidi@example.com", 0)
            .await
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn sqlite_open_creates_parents_and_sets_pragmas() {
    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::{Connection, SqliteConnection};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a").join("b").join("store.db");
    let store = SqliteStore::open(&path).await.unwrap();
    assert!(path.is_file());
    store.add_domain("example.com").await.unwrap();

    let options = SqliteConnectOptions::new().filename(&path);
    let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let mut tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    tables.retain(|t| !t.starts_with("sqlite_"));
    assert_eq!(
        tables,
        [
            "account_senders",
            "accounts",
            "aliases",
            "app_passwords",
            "auth_events",
            "bans",
            "delivery_events",
            "dkim_keys",
            "domains",
            "journal_mark",
            "queue_messages",
            "queue_recipients",
            "usage_events"
        ]
    );
    assert_eq!(usage_indexes(&mut conn).await, usage_indexes_expected());
    // Deleting a message removes its recipients (ON DELETE CASCADE on the
    // store's connections, which enable foreign keys).
    drop(conn);
    store
        .enqueue(&message("D1", "", &["a@example.com", "b@example.com"], 1))
        .await
        .unwrap();
    let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
    sqlx::query("PRAGMA foreign_keys = ON")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("DELETE FROM queue_messages WHERE id = 'D1'")
        .execute(&mut conn)
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM queue_recipients")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn sqlite_refuses_newer_schema() {
    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::{Connection, SqliteConnection};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    drop(SqliteStore::open(&path).await.unwrap());
    let options = SqliteConnectOptions::new().filename(&path);
    let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
    sqlx::query("PRAGMA user_version = 999")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    match SqliteStore::open(&path).await {
        Err(StoreError::Unavailable(msg)) => assert!(msg.contains("999"), "{msg}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// The indexes of `usage_events` as `(name, columns)`, sorted by name.
async fn usage_indexes(conn: &mut sqlx::SqliteConnection) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT il.name, group_concat(ii.name, ',') \
         FROM pragma_index_list('usage_events') AS il, pragma_index_info(il.name) AS ii \
         GROUP BY il.name ORDER BY il.name",
    )
    .fetch_all(conn)
    .await
    .unwrap()
}

fn usage_indexes_expected() -> Vec<(String, String)> {
    [("usage_events_by_account", "account,at_ms")]
        .map(|(name, columns)| (name.to_owned(), columns.to_owned()))
        .to_vec()
}

/// A file written by the version-1 schema (before usage events) is upgraded
/// in place on open, keeping its data, and then works like a new one.
#[tokio::test]
async fn sqlite_upgrades_version_1() {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
    use sqlx::{Connection, SqliteConnection};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let h = hash("pw");
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
    sqlx::raw_sql(include_str!("conformance/schema_v1.sql"))
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::raw_sql(
        "PRAGMA user_version = 1; \
         INSERT INTO domains (name, created_at) VALUES ('example.com', 1); \
         INSERT INTO queue_messages \
             (id, sender, size, spool_path, auth_user, client_ip, received_at) \
             VALUES ('OLD1', 'ivy@example.com', 7, 'spool/OLD1.eml', \
                     'ivy@example.com', '192.0.2.9', 1700000000); \
         INSERT INTO queue_recipients (message_id, position, address) \
             VALUES ('OLD1', 0, 'x@example.net');",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO accounts (address, password_hash, status, plan, created_at, updated_at) \
         VALUES ('ivy@example.com', ?, 'active', 'basic', 1, 1)",
    )
    .bind(&h)
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();

    // Two processes opening the old file at once: both succeed, the
    // migration runs once.
    let (a, b) = tokio::join!(SqliteStore::open(&path), SqliteStore::open(&path));
    let (a, b): (Arc<dyn Store>, Arc<dyn Store>) = (Arc::new(a.unwrap()), Arc::new(b.unwrap()));

    let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(usage_indexes(&mut conn).await, usage_indexes_expected());
    conn.close().await.unwrap();

    // The old data is intact.
    let account = a.account("ivy@example.com").await.unwrap().unwrap();
    assert_eq!(account.plan, "basic");
    assert_eq!(
        b.credential("ivy@example.com")
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        h
    );
    let queue = a.list_queue().await.unwrap();
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0].id, "OLD1");
    assert_eq!(queue[0].recipients, ["x@example.net"]);
    assert!(a.usage_all_since(i64::MIN).await.unwrap().is_empty());
    // Upgraded through version 3: security defaults, the password change
    // time taken from the last update.
    let security = a
        .account_security("ivy@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(security.totp_secret, None);
    assert!(security.allowed_ips.is_empty() && security.allowed_senders.is_empty());
    assert_eq!(security.password_changed_at, 1);

    // And the new operations work on it.
    a.set_account_plan("ivy@example.com", "pro").await.unwrap();
    a.enqueue(&message_with_usage(
        "NEW1",
        "ivy@example.com",
        &["x@example.net", "y@example.net"],
        &[100, 200],
    ))
    .await
    .unwrap();
    assert_eq!(b.usage_since("ivy@example.com", 100).await.unwrap(), [200]);
    drop((a, b));

    // Reopening an upgraded file changes nothing.
    let store = open(&path).await;
    assert_eq!(
        store
            .account("ivy@example.com")
            .await
            .unwrap()
            .unwrap()
            .plan,
        "pro"
    );
    assert_eq!(
        store.usage_since("ivy@example.com", 0).await.unwrap(),
        [100, 200]
    );
    assert_eq!(store.list_queue().await.unwrap().len(), 2);
}

/// A file written by the version-2 schema (before account security) is
/// upgraded in place on open, keeping its data: existing accounts get 2FA
/// off, no allowlists, and their last update as the password change time.
#[tokio::test]
async fn sqlite_upgrades_version_2() {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
    use sqlx::{Connection, SqliteConnection};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let h = hash("pw");
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
    sqlx::raw_sql(include_str!("conformance/schema_v2.sql"))
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::raw_sql(
        "PRAGMA user_version = 2; \
         INSERT INTO domains (name, created_at) VALUES ('example.com', 1); \
         INSERT INTO queue_messages \
             (id, sender, size, spool_path, auth_user, client_ip, received_at) \
             VALUES ('OLD2', 'sam@example.com', 7, 'spool/OLD2.eml', \
                     'sam@example.com', '192.0.2.9', 1700000000); \
         INSERT INTO queue_recipients (message_id, position, address) \
             VALUES ('OLD2', 0, 'x@example.net'); \
         INSERT INTO usage_events (account, at_ms) VALUES ('sam@example.com', 42);",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO accounts (address, password_hash, status, plan, created_at, updated_at) \
         VALUES ('sam@example.com', ?, 'disabled', 'basic', 100, 200)",
    )
    .bind(&h)
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();

    // Two processes opening the old file at once: both succeed, the
    // migration (whose ALTER TABLEs could not run twice) runs once.
    let (a, b) = tokio::join!(SqliteStore::open(&path), SqliteStore::open(&path));
    let (a, b): (Arc<dyn Store>, Arc<dyn Store>) = (Arc::new(a.unwrap()), Arc::new(b.unwrap()));

    let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(usage_indexes(&mut conn).await, usage_indexes_expected());
    conn.close().await.unwrap();

    // The old data is intact.
    let account = a.account("sam@example.com").await.unwrap().unwrap();
    assert_eq!(account.plan, "basic");
    assert_eq!((account.created_at, account.updated_at), (100, 200));
    let cred = b.credential("sam@example.com").await.unwrap().unwrap();
    assert_eq!(cred.password_hash, h);
    assert_eq!(cred.status, portcullis_store::AccountStatus::Disabled);
    assert_eq!(a.list_queue().await.unwrap()[0].id, "OLD2");
    assert_eq!(b.usage_since("sam@example.com", 0).await.unwrap(), [42]);

    // Security defaults for the existing account.
    let security = a
        .account_security("sam@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(security.totp_secret, None);
    assert!(security.allowed_ips.is_empty());
    assert!(security.allowed_senders.is_empty());
    assert_eq!(security.password_changed_at, 200);

    // And the new operations work on it.
    a.add_app_password("sam@example.com", "phone", &digest(7), None, &[])
        .await
        .unwrap();
    b.add_allowed_sender("sam@example.com", "@example.com")
        .await
        .unwrap();
    a.record_auth_events(&[auth_event(5, "sam@example.com", "192.0.2.9", true, "ok")])
        .await
        .unwrap();
    b.upsert_ban(&portcullis_store::Ban {
        network: "203.0.113.0/24".into(),
        until_ms: i64::MAX,
        reason: "test".into(),
        created_ms: 1,
        strikes: 1,
    })
    .await
    .unwrap();
    drop((a, b));

    // Reopening an upgraded file changes nothing.
    let store = open(&path).await;
    assert_eq!(
        store.app_password_secrets("sam@example.com").await.unwrap()[0].digest,
        digest(7)
    );
    assert_eq!(
        store
            .account_security("sam@example.com")
            .await
            .unwrap()
            .unwrap()
            .allowed_senders,
        ["@example.com"]
    );
    assert_eq!(
        store
            .auth_events(&portcullis_store::AuthEventFilter::default())
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.list_bans(0).await.unwrap().len(), 1);
    assert_eq!(store.list_queue().await.unwrap().len(), 1);
}

#[tokio::test]
async fn sqlite_dkim_keys() {
    let (_dir, store) = fresh().await;
    suite_dkim_keys(store).await;
}

#[tokio::test]
async fn sqlite_directory_token_seen_by_another_handle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let server = open(&path).await;
    let cli = open(&path).await;
    assert!(
        server.directory_token().is_some(),
        "the SQLite backend supports the token"
    );
    suite_directory_token(Arc::clone(&server), Arc::clone(&cli)).await;
    // And in the writer's own handle.
    let (_dir2, store) = fresh().await;
    suite_directory_token(Arc::clone(&store), store).await;
}

#[tokio::test]
async fn sqlite_live_spool_files() {
    let (_dir, store) = fresh().await;
    suite_live_spool_files(store).await;
}
