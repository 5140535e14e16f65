//! The spool against real files and a real SQLite store: where a message
//! goes (segment or its own file), the memory budget, read-back before
//! commit, crash leftovers in a segment, and the sweeper.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use portcullis_proto::command::MailParams;
use portcullis_proto::{EnqueueOutcome, Envelope, ForwardPath, ReversePath};
use portcullis_store::{DeliveryStatus, RecipientOutcome, SqliteStore, Store};

use super::{Origin, Readable, Spool};
use crate::config::SpoolConfig;
use crate::spool_ref::SpoolRef;

pub(super) struct Fixture {
    _dir: tempfile::TempDir,
    pub(super) data_dir: std::path::PathBuf,
    pub(super) spool: Spool,
    pub(super) store: Arc<dyn Store>,
}

pub(super) async fn fixture(memory_threshold: u64, memory_budget: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_path_buf();
    let store = SqliteStore::open(&data_dir.join("portcullis.db"))
        .await
        .unwrap();
    let config = SpoolConfig {
        memory_threshold,
        memory_budget,
    };
    Fixture {
        spool: Spool::open(&data_dir, &config).unwrap(),
        data_dir,
        _dir: dir,
        store: Arc::new(store),
    }
}

pub(super) fn envelope() -> Envelope {
    Envelope {
        from: ReversePath::Null,
        params: MailParams::default(),
        recipients: vec![ForwardPath::Postmaster],
        helo: "client.test".into(),
        esmtp: true,
        tls: false,
        auth_user: None,
    }
}

pub(super) fn origin() -> Origin {
    Origin {
        client_ip: "192.0.2.1".parse().unwrap(),
        hostname: "mx.test".into(),
        tls: None,
    }
}

/// `lines` lines of 78 octets after a header block.
pub(super) fn message(tag: &str, lines: usize) -> Vec<u8> {
    let mut m = format!("Subject: {tag}\r\n\r\n").into_bytes();
    for _ in 0..lines {
        m.extend_from_slice(&[b'x'; 76]);
        m.extend_from_slice(b"\r\n");
    }
    m
}

impl Fixture {
    /// Sends `data` in 1000-octet chunks and commits; returns the queue id.
    pub(super) async fn accept(&self, data: &[u8]) -> String {
        let mut w = self.spool.begin(envelope(), origin()).await;
        for chunk in data.chunks(1000) {
            w.write(chunk).await;
        }
        match self.spool.commit(w, &self.store, Vec::new()).await {
            EnqueueOutcome::Queued { id } => id,
            other => panic!("expected Queued, got {other:?}"),
        }
    }

    pub(super) async fn body_ref(&self, id: &str) -> SpoolRef {
        let entry = self.store.queue_entry(id).await.unwrap().unwrap();
        SpoolRef::parse(&entry.spool_path).unwrap()
    }

    /// The stored body, checked to end with `data` after our Received header.
    pub(super) async fn check_body(&self, id: &str, data: &[u8]) -> SpoolRef {
        let r = self.body_ref(id).await;
        let body = r.read_all(&self.data_dir).unwrap();
        assert!(body.starts_with(b"Received: from client.test"));
        assert!(body.ends_with(data), "body of {id} differs");
        r
    }

    fn eml_files(&self) -> usize {
        std::fs::read_dir(self.data_dir.join("spool"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_file())
            .count()
    }

    /// The segment files (not the spare, `spare.rs`), oldest first.
    pub(super) fn segments(&self) -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(self.data_dir.join("spool/seg"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        v.sort();
        v
    }
}

#[tokio::test]
async fn small_message_goes_to_a_segment_byte_for_byte() {
    let f = fixture(256 * 1024, 64 * 1024 * 1024).await;
    let data = message("small", 20);
    let id = f.accept(&data).await;
    let r = f.check_body(&id, &data).await;
    let SpoolRef::Segment { path, offset, len } = &r else {
        panic!("expected a segment ref, got {r}");
    };
    // After its journal record's header and queue row.
    assert!(*offset > super::journal::HEADER_LEN as u64);
    let entry = f.store.queue_entry(&id).await.unwrap().unwrap();
    assert_eq!(*len, entry.size);
    assert!(path.starts_with("spool/seg"), "{}", path.display());
    assert_eq!(f.eml_files(), 0);
    assert_eq!(f.spool.memory_in_use(), 0, "budget given back");
    let first_end = offset + len;
    // The next message follows it in the same segment.
    let next = f.accept(&message("second", 3)).await;
    match f.body_ref(&next).await {
        SpoolRef::Segment {
            path: p2, offset, ..
        } => {
            assert_eq!(&p2, path);
            assert!(offset > first_end + super::journal::HEADER_LEN as u64);
        }
        other => panic!("expected a segment ref, got {other}"),
    }
}

#[tokio::test]
async fn message_above_the_threshold_gets_its_own_file() {
    let f = fixture(4096, 64 * 1024 * 1024).await;
    // Past the threshold and past one 64 KiB flush block.
    let data = message("big", 2000);
    let id = f.accept(&data).await;
    let r = f.check_body(&id, &data).await;
    assert!(!r.is_segment(), "{r}");
    assert_eq!(r.file().extension().unwrap(), "eml");
    assert_eq!(f.eml_files(), 1);
    assert_eq!(
        std::fs::read_dir(f.data_dir.join("incoming"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(f.spool.memory_in_use(), 0);
}

/// A spilled writer's write buffer is counted in the budget when it gets
/// the big block, and given back with the message; with no room it writes
/// in small blocks, counted nowhere (as before the budget covered it).
#[tokio::test]
async fn spilled_write_buffer_is_counted_when_it_gets_the_big_block() {
    use super::writer::{FLUSH_AT, FLUSH_AT_UNBUDGETED};
    let room = (FLUSH_AT + FLUSH_AT_UNBUDGETED) as u64;
    for (budget, leased) in [(64 * 1024 * 1024, room), (room - 1, 0)] {
        let f = fixture(4096, budget).await;
        let data = message("big", 10_000);
        let mut w = f.spool.begin(envelope(), origin()).await;
        for chunk in data.chunks(8192) {
            w.write(chunk).await;
            if !w.in_memory() {
                assert_eq!(f.spool.memory_in_use(), leased, "budget {budget}");
            }
        }
        assert!(!w.in_memory());
        let id = match f.spool.commit(w, &f.store, Vec::new()).await {
            EnqueueOutcome::Queued { id } => id,
            other => panic!("{other:?}"),
        };
        f.check_body(&id, &data).await;
        assert_eq!(f.spool.memory_in_use(), 0);
    }
}

/// The budget counts what is allocated, before it is: a buffer starts at
/// 4 KiB and doubles, each size granted first.
#[tokio::test]
async fn budget_counts_allocated_capacity() {
    let f = fixture(256 * 1024, 1024 * 1024).await;
    let mut w = f.spool.begin(envelope(), origin()).await;
    assert_eq!(f.spool.memory_in_use(), 4096, "the first allocation");
    w.write(&[b'x'; 5000]).await;
    assert_eq!(f.spool.memory_in_use(), 8192, "doubled for 5 KiB");
    w.write(&[b'x'; 100_000]).await;
    assert!(w.in_memory());
    let used = f.spool.memory_in_use();
    assert!((105_000..=2 * 105_000 + 4096).contains(&used), "{used}");
    drop(w);
    assert_eq!(f.spool.memory_in_use(), 0);
}

#[tokio::test]
async fn exhausted_budget_spills_to_a_file() {
    let f = fixture(64 * 1024, 64 * 1024).await;
    // A first message holds most of the budget while a second one arrives.
    let mut holder = f.spool.begin(envelope(), origin()).await;
    holder.write(&message("holder", 600)).await;
    assert!(holder.in_memory());
    assert!(f.spool.memory_in_use() > 40 * 1024);
    let data = message("spilled", 300);
    let mut w = f.spool.begin(envelope(), origin()).await;
    for chunk in data.chunks(1000) {
        w.write(chunk).await;
    }
    assert!(!w.in_memory(), "no room in the budget: spilled");
    let id = match f.spool.commit(w, &f.store, Vec::new()).await {
        EnqueueOutcome::Queued { id } => id,
        other => panic!("{other:?}"),
    };
    let r = f.check_body(&id, &data).await;
    assert!(!r.is_segment(), "{r}");
    // Dropping the holder (a session that went away) gives its share back.
    drop(holder);
    assert_eq!(f.spool.memory_in_use(), 0);
    let small = message("after", 5);
    let id = f.accept(&small).await;
    assert!(f.check_body(&id, &small).await.is_segment());
}

#[tokio::test]
async fn abort_gives_back_memory_and_removes_spilled_files() {
    let f = fixture(4096, 1024 * 1024).await;
    let mut w = f.spool.begin(envelope(), origin()).await;
    w.write(b"Subject: x\r\n\r\n").await;
    assert!(f.spool.memory_in_use() > 0);
    f.spool.abort(w).await;
    assert_eq!(f.spool.memory_in_use(), 0);
    let mut w = f.spool.begin(envelope(), origin()).await;
    w.write(&message("big", 200)).await;
    assert!(!w.in_memory());
    assert!(f.spool.memory_in_use() > 0, "the write buffer's lease");
    f.spool.abort(w).await;
    assert_eq!(f.spool.memory_in_use(), 0);
    let left = std::fs::read_dir(f.data_dir.join("incoming"))
        .unwrap()
        .count();
    assert_eq!(left, 0);
}

/// DKIM signing and inbound checks read the message back and insert
/// header fields: the same result in memory and in a spilled file.
#[tokio::test]
async fn read_back_and_insert_headers_in_memory_and_in_a_file() {
    for threshold in [256 * 1024, 0] {
        let f = fixture(threshold, 1024 * 1024).await;
        let data = message("signed", 10);
        let mut w = f.spool.begin(envelope(), origin()).await;
        w.write(&data).await;
        assert_eq!(w.in_memory(), threshold > 0);
        let readable = w.readable().await.unwrap();
        assert_eq!(
            matches!(readable, Readable::Memory(_)),
            threshold > 0,
            "threshold {threshold}"
        );
        assert_eq!(readable.read_all().await.unwrap(), data);
        w.insert_headers(b"X-Added: 1\r\n").await;
        let again = w.readable().await.unwrap().read_all().await.unwrap();
        assert!(again.starts_with(b"X-Added: 1\r\nSubject: signed"));
        w.replace_message(b"X-Replaced: 2\r\n", b"Subject: new\r\n\r\nhi\r\n")
            .await;
        let id = match f.spool.commit(w, &f.store, Vec::new()).await {
            EnqueueOutcome::Queued { id } => id,
            other => panic!("{other:?}"),
        };
        let r = f.body_ref(&id).await;
        assert_eq!(r.is_segment(), threshold > 0);
        let body = String::from_utf8(r.read_all(&f.data_dir).unwrap()).unwrap();
        assert!(body.starts_with("Received: from client.test"), "{body}");
        assert!(
            body.ends_with("\r\nX-Replaced: 2\r\nSubject: new\r\n\r\nhi\r\n"),
            "{body}"
        );
        let entry = f.store.queue_entry(&id).await.unwrap().unwrap();
        assert_eq!(body.len() as u64, entry.size);
        assert_eq!(f.spool.memory_in_use(), 0);
    }
}

/// A spilled message gets its added fields in the room before it: no copy
/// of the file (same inode), the row names the range, and the stored body is
/// exactly Received, the fields (latest first, as in memory), the message.
/// Fields too big for the room fall back to a copy.
#[tokio::test]
async fn spilled_message_takes_added_fields_in_place() {
    use std::os::unix::fs::MetadataExt;
    let f = fixture(0, 1024 * 1024).await;
    let data = message("big", 50);
    let mut w = f.spool.begin(envelope(), origin()).await;
    w.write(&data).await;
    let Some(Readable::File { path, .. }) = w.readable().await else {
        panic!("not spilled");
    };
    let inode = std::fs::metadata(&path).unwrap().ino();
    let (h1, h2) = (b"DKIM-Signature: one\r\n", b"Message-ID: <x@y>\r\n");
    w.insert_headers(h1).await;
    w.insert_headers(h2).await;
    assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode, "copied");
    let mut expected = h2.to_vec();
    expected.extend_from_slice(h1);
    expected.extend_from_slice(&data);
    let back = w.readable().await.unwrap().read_all().await.unwrap();
    assert_eq!(back, expected);
    let id = match f.spool.commit(w, &f.store, Vec::new()).await {
        EnqueueOutcome::Queued { id } => id,
        other => panic!("{other:?}"),
    };
    let r = f.body_ref(&id).await;
    let SpoolRef::FileRange { offset, len, .. } = &r else {
        panic!("{r}");
    };
    assert_eq!(
        *offset,
        super::writer::HEADER_ROOM - (h1.len() + h2.len()) as u64
    );
    let body = r.read_all(&f.data_dir).unwrap();
    assert_eq!(body.len() as u64, *len);
    let entry = f.store.queue_entry(&id).await.unwrap().unwrap();
    assert_eq!(entry.size, *len);
    let received_len = body.len() - expected.len();
    assert!(body.starts_with(b"Received: from client.test"));
    assert!(body[..received_len].ends_with(b"\r\n"));
    assert_eq!(&body[received_len..], expected.as_slice());

    // More than the room: the file is copied, the row names the whole file.
    let mut w = f.spool.begin(envelope(), origin()).await;
    w.write(&data).await;
    let mut huge = b"X-Huge: ".to_vec();
    huge.resize(super::writer::HEADER_ROOM as usize + 10, b'h');
    huge.extend_from_slice(b"\r\n");
    w.insert_headers(&huge).await;
    let id = match f.spool.commit(w, &f.store, Vec::new()).await {
        EnqueueOutcome::Queued { id } => id,
        other => panic!("{other:?}"),
    };
    let r = f.body_ref(&id).await;
    assert!(matches!(r, SpoolRef::File(_)), "{r}");
    let body = r.read_all(&f.data_dir).unwrap();
    let mut tail = huge.clone();
    tail.extend_from_slice(&data);
    assert!(body.starts_with(b"Received: from client.test"));
    assert!(body.ends_with(&tail));
    let entry = f.store.queue_entry(&id).await.unwrap().unwrap();
    assert_eq!(entry.size, body.len() as u64);
}

/// A crash after a segment append but before the queue commit leaves
/// bytes nobody refers to after the last committed message; they change
/// nothing for committed messages, and the next run starts a new segment.
#[tokio::test]
async fn garbage_after_the_last_message_does_not_matter() {
    let f = fixture(256 * 1024, 1024 * 1024).await;
    let first = message("first", 4);
    let second = message("second", 7);
    let a = f.accept(&first).await;
    let b = f.accept(&second).await;
    let seg = f.data_dir.join(f.body_ref(&b).await.file());
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        file.write_all(b"Received: half a message that was never committed\r\nSubj")
            .unwrap();
    }
    f.check_body(&a, &first).await;
    f.check_body(&b, &second).await;
    // A restart on the same data dir appends to a new segment.
    let reopened = Spool::open(&f.data_dir, &SpoolConfig::defaults()).unwrap();
    let mut w = reopened.begin(envelope(), origin()).await;
    let third = message("third", 2);
    w.write(&third).await;
    let EnqueueOutcome::Queued { id: c } = reopened.commit(w, &f.store, Vec::new()).await else {
        panic!("not queued");
    };
    let r = f.check_body(&c, &third).await;
    assert_ne!(f.data_dir.join(r.file()), seg);
    f.check_body(&b, &second).await;
    // Recovery reads the garbage as a torn tail: nothing to queue.
    let mut again = Spool::open(&f.data_dir, &SpoolConfig::defaults()).unwrap();
    assert_eq!(again.recover(&*f.store).await.unwrap(), 0);
    assert_eq!(f.store.list_queue().await.unwrap().len(), 3);
}

fn delivered(id: &str) -> RecipientOutcome {
    RecipientOutcome {
        message_id: id.to_owned(),
        position: 0,
        status: DeliveryStatus::Delivered,
        next_attempt_ms: 0,
        reply: "250 2.0.0 ok".to_owned(),
        host: None,
        warned: false,
        new_address: None,
    }
}

#[tokio::test]
async fn sweeper_keeps_referenced_and_active_segments_only() {
    let f = fixture(256 * 1024, 1024 * 1024).await;
    // Segment 1 (an earlier run): one message that will be done, one not.
    let old_run = Spool::open(&f.data_dir, &SpoolConfig::defaults()).unwrap();
    let mut ids = Vec::new();
    for tag in ["kept", "done"] {
        let mut w = old_run.begin(envelope(), origin()).await;
        w.write(&message(tag, 2)).await;
        let EnqueueOutcome::Queued { id } = old_run.commit(w, &f.store, Vec::new()).await else {
            panic!("not queued");
        };
        ids.push(id);
    }
    drop(old_run);
    // Segment 2 (another earlier run): one message, delivered.
    let other_run = Spool::open(&f.data_dir, &SpoolConfig::defaults()).unwrap();
    let mut w = other_run.begin(envelope(), origin()).await;
    w.write(&message("gone", 2)).await;
    let EnqueueOutcome::Queued { id: gone } = other_run.commit(w, &f.store, Vec::new()).await
    else {
        panic!("not queued");
    };
    drop(other_run);
    // Segment 3: this run's active segment, its message delivered too.
    let active_id = f.accept(&message("active", 2)).await;
    let referenced = f.data_dir.join(f.body_ref(&ids[0]).await.file());
    let unreferenced = f.data_dir.join(f.body_ref(&gone).await.file());
    let active = f.data_dir.join(f.body_ref(&active_id).await.file());
    assert_eq!(
        f.segments(),
        vec![referenced.clone(), unreferenced.clone(), active.clone()]
    );
    f.store.claim_due(i64::MAX, 100).await.unwrap();
    let done = f
        .store
        .record_delivery(
            &[delivered(&ids[1]), delivered(&gone), delivered(&active_id)],
            &[],
            1_000,
        )
        .await
        .unwrap();
    assert_eq!(done.len(), 3);
    // An orphan .eml from a crash between rename and commit, an hour old,
    // and a fresh one that may still be committing.
    let orphan = f.data_dir.join("spool/0000000000000ORPHAN.eml");
    let fresh = f.data_dir.join("spool/00000000000000FRESH.eml");
    std::fs::write(&orphan, b"x").unwrap();
    std::fs::write(&fresh, b"x").unwrap();
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&orphan)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();

    let report = f.spool.sweeper().sweep(&*f.store).await.unwrap();
    assert_eq!(report.segments, 1);
    assert_eq!(report.orphans, 1);
    assert_eq!(
        f.segments(),
        vec![referenced, active],
        "referenced and active kept"
    );
    assert!(!orphan.exists());
    assert!(fresh.exists());
    f.check_body(&ids[0], &message("kept", 2)).await;
    // Sweeping again changes nothing.
    let again = f.spool.sweeper().sweep(&*f.store).await.unwrap();
    assert_eq!((again.segments, again.orphans), (0, 0));
}

/// A spilled submission is hashed for DKIM as it is written, unless the
/// session said it will not be signed (issue 9): before the spill nothing
/// is hashed, after it the hash is dropped. Inbound mail is never hashed.
#[tokio::test]
async fn a_submission_that_will_not_be_signed_is_not_hashed() {
    let f = fixture(4096, 1 << 20).await;
    let mut submission = envelope();
    submission.auth_user = Some("ann@example.com".into());
    let m = message("big", 200);

    let mut w = f.spool.begin(submission.clone(), origin()).await;
    assert!(w.stream_hash());
    assert!(!w.would_spill(10));
    assert!(w.would_spill(m.len()));
    for chunk in m.chunks(1000) {
        w.write(chunk).await;
    }
    assert!(!w.in_memory());
    assert!(!w.would_spill(1), "already spilled");
    assert!(w.take_hashed().await.is_some());

    for skip_after_spill in [false, true] {
        let mut w = f.spool.begin(submission.clone(), origin()).await;
        if !skip_after_spill {
            w.skip_stream_hash();
        }
        for chunk in m.chunks(1000) {
            w.write(chunk).await;
        }
        if skip_after_spill {
            w.skip_stream_hash();
        }
        assert!(!w.in_memory());
        assert!(w.take_hashed().await.is_none());
        // Read back whole instead (signing falls back to it).
        let back = w.readable().await.unwrap().read_all().await.unwrap();
        assert_eq!(back, m);
    }

    let w = f.spool.begin(envelope(), origin()).await;
    assert!(!w.stream_hash(), "inbound mail is not signed");
}
