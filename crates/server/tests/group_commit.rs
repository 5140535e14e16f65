//! Group commit (issue 9): many sessions committing at once all get their
//! own answer — every one 250 and queued when the store works, every one
//! 451 and nothing queued (no orphan spool file) when it fails. Never a 250
//! for a message whose batch failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use common::ALICE_PASSWORD;
use portcullis_server::Server;
use portcullis_server::config::ListenerRole;
use portcullis_server::spool_ref::SpoolRef;
use portcullis_store::{SqliteStore, Store};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Barrier;

const SESSIONS: usize = 24;

/// The shared store fixture (alice, bob, carol; example.com local) and a
/// bound server that the tests drive through in-memory streams.
struct Fixture {
    _fx: common::Fixture,
    data_dir: std::path::PathBuf,
    store: Arc<SqliteStore>,
    server: Arc<Server>,
}

async fn fixture() -> Fixture {
    let fx = common::Fixture::new().await;
    let server = fx.bound_server(Duration::from_millis(1)).await;
    Fixture {
        data_dir: fx.data_dir().to_path_buf(),
        store: Arc::clone(&fx.store),
        server: Arc::new(server),
        _fx: fx,
    }
}

fn plain() -> String {
    let raw = format!("\0alice@example.com\0{ALICE_PASSWORD}");
    format!(
        "AUTH PLAIN {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// Both barriers are shared by every session and the test.
struct Gates {
    /// Every session has its 354.
    ready: Barrier,
    /// Send the bodies.
    go: Barrier,
}

fn gates() -> Arc<Gates> {
    Arc::new(Gates {
        ready: Barrier::new(SESSIONS + 1),
        go: Barrier::new(SESSIONS + 1),
    })
}

/// One authenticated session up to DATA's 354; then waits for the gates and
/// sends the body. Returns the reply to the final dot.
async fn session(server: Arc<Server>, n: usize, gates: Arc<Gates>) -> String {
    session_sized(server, n, gates, 0).await
}

/// [`session`] with `filler` extra lines of 78 octets in the body.
async fn session_sized(server: Arc<Server>, n: usize, gates: Arc<Gates>, filler: usize) -> String {
    let (client, server_side) = tokio::io::duplex(64 * 1024);
    // One address each: per-IP connection caps are not under test.
    let peer = format!("192.0.2.{}:40000", n + 1).parse().unwrap();
    let serve = tokio::spawn(async move {
        server
            .serve_stream(server_side, ListenerRole::Submission, peer, true)
            .await;
    });
    let (read, mut write) = tokio::io::split(client);
    let mut reader = BufReader::new(read);
    let reply = async |reader: &mut BufReader<_>| loop {
        let mut got = String::new();
        let read = tokio::time::timeout(Duration::from_secs(20), reader.read_line(&mut got));
        assert!(read.await.unwrap().unwrap() > 0, "session {n} closed");
        if got.as_bytes().get(3) != Some(&b'-') {
            return got.trim_end().to_owned();
        }
    };
    reply(&mut reader).await;
    for line in [
        "EHLO c.test".to_owned(),
        plain(),
        "MAIL FROM:<alice@example.com>".to_owned(),
        format!("RCPT TO:<bob{n}@example.org>"),
        "DATA".to_owned(),
    ] {
        write
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        let got = reply(&mut reader).await;
        assert!(
            got.starts_with('2') || got.starts_with('3'),
            "{line}: {got}"
        );
    }
    gates.ready.wait().await;
    gates.go.wait().await;
    let mut body = format!("From: alice@example.com\r\nSubject: {n}\r\n\r\nbody {n}\r\n");
    for _ in 0..filler {
        body.push_str(&"x".repeat(76));
        body.push_str("\r\n");
    }
    body.push_str(".\r\n");
    write.write_all(body.as_bytes()).await.unwrap();
    let answer = reply(&mut reader).await;
    write.write_all(b"QUIT\r\n").await.unwrap();
    let _ = reply(&mut reader).await;
    drop(write);
    serve.await.unwrap();
    answer
}

/// Runs [`SESSIONS`] sessions whose bodies are all sent at once (so the
/// commits overlap); every one must be queued. Returns the queue ids.
async fn all_queued(f: &Fixture) -> Vec<String> {
    let gates = gates();
    let tasks: Vec<_> = (0..SESSIONS)
        .map(|n| tokio::spawn(session(Arc::clone(&f.server), n, Arc::clone(&gates))))
        .collect();
    wait(&gates.ready).await;
    wait(&gates.go).await;
    let mut ids = Vec::new();
    for t in tasks {
        let answer = t.await.unwrap();
        let id = answer
            .strip_prefix("250 2.0.0 Ok: queued as ")
            .unwrap_or_else(|| panic!("expected 250, got {answer}"));
        ids.push(id.to_owned());
    }
    ids
}

/// The test's side of a gate; a session that failed early never arrives.
async fn wait(gate: &Barrier) {
    tokio::time::timeout(Duration::from_secs(60), gate.wait())
        .await
        .expect("a session failed before reaching DATA");
}

/// Message files in `spool/` and `incoming/` (segments not counted).
fn spool_files(f: &Fixture) -> usize {
    ["spool", "incoming"]
        .iter()
        .flat_map(|d| std::fs::read_dir(f.data_dir.join(d)).unwrap())
        .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_file())
        .count()
}

/// Every queued message's body, by subject number, with its reference.
async fn bodies(f: &Fixture) -> Vec<(SpoolRef, String)> {
    let mut out = Vec::new();
    for m in f.store.list_queue().await.unwrap() {
        let r = SpoolRef::parse(&m.spool_path).unwrap();
        let body = String::from_utf8(r.read_all(&f.data_dir).unwrap()).unwrap();
        assert_eq!(body.len() as u64, m.size, "{}", m.spool_path);
        assert!(body.starts_with("Received: "), "{body}");
        assert!(body.contains(&format!(" id {}", m.id)), "{body}");
        out.push((r, body));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sessions_all_queued() {
    let f = fixture().await;
    let mut ids = all_queued(&f).await;
    let mut queued: Vec<String> = f
        .store
        .list_queue()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    ids.sort();
    queued.sort();
    assert_eq!(ids, queued);
    // Issue 9: small messages share one segment, each at its own range.
    assert_eq!(
        spool_files(&f),
        0,
        "small messages get no file of their own"
    );
    let bodies = bodies(&f).await;
    assert_eq!(bodies.len(), SESSIONS);
    let mut ranges = Vec::new();
    for (r, body) in &bodies {
        let SpoolRef::Segment { path, offset, len } = r else {
            panic!("expected a segment ref, got {r}");
        };
        assert_eq!(path, bodies[0].0.file(), "one segment for all");
        assert!(body.contains("\r\nbody "), "{body}");
        ranges.push((*offset, *len));
    }
    ranges.sort();
    for w in ranges.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "overlapping ranges {ranges:?}");
    }
    // After the last record: the end of the file, or the zeros of a
    // pre-zeroed spare segment.
    let segment = std::fs::read(f.data_dir.join(bodies[0].0.file())).unwrap();
    let (last_offset, last_len) = ranges[ranges.len() - 1];
    let end = usize::try_from(last_offset + last_len).unwrap();
    assert!(
        segment[end..].iter().all(|b| *b == 0),
        "nothing else in the segment"
    );
}

/// Big and small messages in the same batches: big ones get their own file
/// (fsync + directory fsync), small ones a segment range; all are queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn big_and_small_messages_commit_together() {
    let f = fixture().await;
    let gates = gates();
    // 4000 lines of 78 octets: about 305 KiB, above the 256 KiB default.
    let tasks: Vec<_> = (0..SESSIONS)
        .map(|n| {
            let filler = if n % 2 == 0 { 4000 } else { 0 };
            tokio::spawn(session_sized(
                Arc::clone(&f.server),
                n,
                Arc::clone(&gates),
                filler,
            ))
        })
        .collect();
    wait(&gates.ready).await;
    wait(&gates.go).await;
    for t in tasks {
        let answer = t.await.unwrap();
        assert!(answer.starts_with("250 2.0.0 Ok: queued as "), "{answer}");
    }
    let bodies = bodies(&f).await;
    assert_eq!(bodies.len(), SESSIONS);
    let big = bodies.iter().filter(|(_, b)| b.len() > 256 * 1024).count();
    assert_eq!(big, SESSIONS / 2);
    for (r, body) in &bodies {
        assert_eq!(r.is_segment(), body.len() <= 256 * 1024, "{r}");
    }
    assert_eq!(spool_files(&f), SESSIONS / 2, "one .eml per big message");
}

/// A big submission is hashed for DKIM as it spills only when its From:
/// domain will sign it (issue 9: hashing costs ~1 ms of CPU per MiB, wasted
/// without a key). alice's example.com has no key at first, then gets one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_submission_is_hashed_as_it_spills_only_when_it_will_be_signed() {
    let f = fixture().await;
    let one = async |n: usize| {
        let gates = Arc::new(Gates {
            ready: Barrier::new(2),
            go: Barrier::new(2),
        });
        let task = tokio::spawn(session_sized(
            Arc::clone(&f.server),
            n,
            Arc::clone(&gates),
            4000,
        ));
        wait(&gates.ready).await;
        wait(&gates.go).await;
        let answer = task.await.unwrap();
        assert!(answer.starts_with("250 2.0.0 Ok: queued as "), "{answer}");
    };
    one(0).await;
    assert_eq!(f.server.hashed_spills(), 0, "no key: not hashed");
    let keys = portcullis_server::mail_auth::keys::generate_pair("t1").unwrap();
    f.store.add_dkim_keys("example.com", &keys).await.unwrap();
    one(1).await;
    assert_eq!(f.server.hashed_spills(), 1, "an active key: hashed");
    let signed = bodies(&f)
        .await
        .into_iter()
        .filter(|(_, b)| b.contains("DKIM-Signature:"))
        .count();
    assert_eq!(signed, 1, "the second message is signed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_unavailable_fails_every_session() {
    let f = fixture().await;
    let gates = gates();
    let tasks: Vec<_> = (0..SESSIONS)
        .map(|n| tokio::spawn(session(Arc::clone(&f.server), n, Arc::clone(&gates))))
        .collect();
    // Every session is in DATA; the store goes away before any commit.
    wait(&gates.ready).await;
    f.store.close().await;
    wait(&gates.go).await;
    for t in tasks {
        let answer = t.await.unwrap();
        assert!(
            answer.starts_with("451 4.3.0"),
            "expected 451, got {answer}"
        );
    }
    assert_eq!(spool_files(&f), 0, "orphan spool files left");
}

/// The journal (issue 9): rows committed without their own sync and then
/// lost (as a power cut loses them: rows gone, the journal mark back where
/// the last synced commit left it) are queued again when the server binds,
/// before anything reads the queue, with the same bodies.
#[tokio::test]
async fn server_start_queues_again_rows_lost_in_a_crash() {
    use portcullis_store::JournalMark;
    let f = fixture().await;
    let mark_before: JournalMark = f.store.journal_mark().await.unwrap().unwrap();
    let ids = all_queued(&f).await;
    let before = f.store.list_queue().await.unwrap();
    let bodies_before = bodies(&f).await;
    assert!(f.store.journal_mark().await.unwrap().unwrap() > mark_before);
    for id in &ids {
        f.store.delete_message(id).await.unwrap();
    }
    f.store.replay_journal(&[], mark_before).await.unwrap();
    assert!(f.store.list_queue().await.unwrap().is_empty());

    let restarted = common::Fixture::bound_server_on(&f.data_dir, &f.store).await;
    assert_eq!(f.store.list_queue().await.unwrap(), before);
    assert_eq!(bodies(&f).await, bodies_before);
    drop(restarted);
}
