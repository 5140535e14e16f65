//! Storage failures reach the client as temporary errors, never as a 250 and
//! never as a crash: store unavailable during AUTH → 454 4.7.0, spool write
//! failure → 451 4.3.0, queue commit failure → 451 4.3.0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use common::ALICE_PASSWORD;
use portcullis_server::Server;
use portcullis_server::config::ListenerRole;
use portcullis_store::{SqliteStore, Store};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The shared store fixture (alice, bob, carol; example.com local) and a
/// bound server that the tests drive through in-memory streams.
struct Fixture {
    _fx: common::Fixture,
    data_dir: std::path::PathBuf,
    store: Arc<SqliteStore>,
    server: Server,
}

async fn fixture() -> Fixture {
    let fx = common::Fixture::new().await;
    let server = fx.bound_server(Duration::from_millis(10)).await;
    Fixture {
        data_dir: fx.data_dir().to_path_buf(),
        store: Arc::clone(&fx.store),
        server,
        _fx: fx,
    }
}

/// Runs `lines` against a TLS-assumed submission session; returns all reply lines.
async fn dialog(f: &Fixture, lines: &[&str]) -> Vec<String> {
    let (client, server_side) = tokio::io::duplex(64 * 1024);
    let peer = "192.0.2.7:40000".parse().unwrap();
    let serve = f
        .server
        .serve_stream(server_side, ListenerRole::Submission, peer, true);
    let talk = async move {
        let (read, mut write) = tokio::io::split(client);
        let mut reader = BufReader::new(read);
        for l in lines {
            write.write_all(l.as_bytes()).await.unwrap();
            write.write_all(b"\r\n").await.unwrap();
        }
        let mut replies = Vec::new();
        loop {
            let mut line = String::new();
            match tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(_)) => replies.push(line.trim_end().to_owned()),
                Ok(Err(_)) => break,
            }
        }
        replies
    };
    let ((), replies) = tokio::join!(serve, talk);
    replies
}

fn plain() -> String {
    let raw = format!("\0alice@example.com\0{ALICE_PASSWORD}");
    format!(
        "AUTH PLAIN {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn has(replies: &[String], prefix: &str) -> bool {
    replies.iter().any(|r| r.starts_with(prefix))
}

#[tokio::test]
async fn store_unavailable_during_auth_is_454() {
    let f = fixture().await;
    f.store.close().await;
    let replies = dialog(&f, &["EHLO c.test", &plain(), "QUIT"]).await;
    assert!(has(&replies, "454 4.7.0"), "{replies:?}");
    assert!(!has(&replies, "235"), "{replies:?}");
}

#[tokio::test]
async fn spool_write_failure_is_451_not_250() {
    let f = fixture().await;
    // Make the incoming directory (big messages) and the segment directory
    // (small ones, issue 9) unusable: a file where each directory was.
    for dir in ["incoming", "spool/seg"] {
        let dir = f.data_dir.join(dir);
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::write(&dir, b"not a directory").unwrap();
    }
    let replies = dialog(
        &f,
        &[
            "EHLO c.test",
            &plain(),
            "MAIL FROM:<alice@example.com>",
            "RCPT TO:<bob@example.org>",
            "DATA",
            "Subject: x",
            "",
            "body",
            ".",
            "QUIT",
        ],
    )
    .await;
    assert!(has(&replies, "451 4.3.0"), "{replies:?}");
    assert!(!has(&replies, "250 2.0.0 Ok: queued"), "{replies:?}");
    assert!(
        has(&replies, "221 2.0.0"),
        "session must survive: {replies:?}"
    );
    assert!(f.store.list_queue().await.is_err() || f.store.list_queue().await.unwrap().is_empty());
}

#[tokio::test]
async fn queue_commit_failure_is_451_and_spool_file_removed() {
    let f = fixture().await;
    let replies = dialog(&f, &["EHLO c.test", &plain()]).await;
    assert!(has(&replies, "235 2.7.0"), "{replies:?}");
    // Authenticated session, then the store goes away before the commit.
    let (client, server_side) = tokio::io::duplex(64 * 1024);
    let peer = "192.0.2.7:40001".parse().unwrap();
    let store = f.store.clone();
    let serve = f
        .server
        .serve_stream(server_side, ListenerRole::Submission, peer, true);
    let talk = async move {
        let (read, mut write) = tokio::io::split(client);
        let mut reader = BufReader::new(read);
        let mut replies = Vec::new();
        let mut greeting = String::new();
        reader.read_line(&mut greeting).await.unwrap();
        let mut send = async |line: &str, replies: &mut Vec<String>| {
            write.write_all(line.as_bytes()).await.unwrap();
            write.write_all(b"\r\n").await.unwrap();
            let mut got = String::new();
            loop {
                got.clear();
                tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut got))
                    .await
                    .unwrap()
                    .unwrap();
                replies.push(got.trim_end().to_owned());
                if got.as_bytes().get(3) != Some(&b'-') {
                    break;
                }
            }
        };
        for l in [
            "EHLO c.test",
            &plain(),
            "MAIL FROM:<alice@example.com>",
            "RCPT TO:<bob@example.org>",
            "DATA",
        ] {
            send(l, &mut replies).await;
        }
        store.close().await;
        send("hello\r\n.", &mut replies).await;
        send("QUIT", &mut replies).await;
        replies
    };
    let ((), replies) = tokio::join!(serve, talk);
    assert!(has(&replies, "451 4.3.0"), "{replies:?}");
    assert!(!has(&replies, "250 2.0.0 Ok: queued"), "{replies:?}");
    // Segment bytes of a failed batch are unreferenced (the sweeper
    // reclaims them); no message file may be left.
    let spooled: Vec<_> = std::fs::read_dir(f.data_dir.join("spool"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .collect();
    assert!(spooled.is_empty(), "orphan spool files left: {spooled:?}");
}
