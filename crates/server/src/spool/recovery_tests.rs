//! Start-up recovery from the segment journal against real files and a
//! real SQLite store: rows lost as a power cut loses them come back
//! exactly, a failed commit's message and a torn record do not, old spools
//! are not read, and pre-zeroed spare segments change nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_proto::EnqueueOutcome;
use portcullis_store::JournalMark;

use super::Spool;
use super::tests::{Fixture, envelope, fixture, message, origin};
use crate::config::SpoolConfig;
use crate::spool_ref::SpoolRef;

/// What a power loss does to unsynced commits: the rows of the last
/// batches are gone and the journal mark is back where the last durable
/// commit left it. Simulated with a synced delete of those rows and the
/// mark set back (the store cannot tell the difference).
async fn lose_rows_after(f: &Fixture, mark: JournalMark, ids: &[&str]) {
    for id in ids {
        f.store.delete_message(id).await.unwrap();
    }
    f.store.replay_journal(&[], mark).await.unwrap();
}

#[tokio::test]
async fn rows_lost_in_a_crash_are_queued_again_from_the_journal() {
    let f = fixture(256 * 1024, 1024 * 1024).await;
    let first = message("first", 4);
    let a = f.accept(&first).await;
    let after_a = f.store.journal_mark().await.unwrap().unwrap();
    let second = message("second", 7);
    let b = f.accept(&second).await;
    let third = message("third", 1);
    let c = f.accept(&third).await;
    let before = f.store.list_queue().await.unwrap();
    assert!(f.store.journal_mark().await.unwrap().unwrap() > after_a);

    lose_rows_after(&f, after_a, &[&b, &c]).await;
    assert_eq!(f.store.list_queue().await.unwrap().len(), 1);

    // The restart queues b and c again, exactly as they were.
    let mut restarted = Spool::open(&f.data_dir, &SpoolConfig::defaults()).unwrap();
    assert_eq!(restarted.recover(&*f.store).await.unwrap(), 2);
    assert_eq!(f.store.list_queue().await.unwrap(), before);
    f.check_body(&a, &first).await;
    f.check_body(&b, &second).await;
    f.check_body(&c, &third).await;
    // The mark is past every old segment: a second recovery queues nothing,
    // even if b is delivered and deleted in between.
    let mark = f.store.journal_mark().await.unwrap().unwrap();
    assert!(mark.segment > after_a.segment);
    f.store.delete_message(&b).await.unwrap();
    let mut again = Spool::open(&f.data_dir, &SpoolConfig::defaults()).unwrap();
    assert_eq!(again.recover(&*f.store).await.unwrap(), 0);
    assert_eq!(f.store.list_queue().await.unwrap().len(), 2);
    // This run's segments come after the mark.
    let mut w = again.begin(envelope(), origin()).await;
    w.write(&third).await;
    let EnqueueOutcome::Queued { id: d } = again.commit(w, &f.store, Vec::new()).await else {
        panic!("not queued");
    };
    let SpoolRef::Segment { path, .. } = f.body_ref(&d).await else {
        panic!("expected a segment");
    };
    let name = path.file_name().unwrap().to_str().unwrap();
    let id = u64::from_str_radix(name.trim_end_matches(".seg"), 16).unwrap();
    assert!(id >= mark.segment);
}

#[tokio::test]
async fn a_message_whose_commit_failed_is_never_replayed() {
    let f = fixture(256 * 1024, 1024 * 1024).await;
    f.accept(&message("first", 2)).await;
    let mark = f.store.journal_mark().await.unwrap().unwrap();
    // A queue row with the id the next message gets makes its commit fail.
    let mut w = f.spool.begin(envelope(), origin()).await;
    let id = w.id().to_string();
    let blocker = portcullis_store::NewMessage {
        id: id.clone(),
        sender: String::new(),
        recipients: vec!["x@example.net".into()],
        size: 1,
        spool_path: "spool/blocker.eml".into(),
        auth_user: None,
        client_ip: "192.0.2.9".into(),
        received_at: 1,
        usage_ms: Vec::new(),
    };
    f.store.enqueue(&blocker).await.unwrap();
    w.write(&message("refused", 2)).await;
    let outcome = f.spool.commit(w, &f.store, Vec::new()).await;
    assert!(
        matches!(outcome, EnqueueOutcome::TemporaryFailure),
        "{outcome:?}"
    );
    assert_eq!(f.store.journal_mark().await.unwrap(), Some(mark));
    // Its record is in the segment, void.
    let seg = std::fs::read(f.segments().last().unwrap()).unwrap();
    let (records, _) = super::journal::scan(&seg, mark.position);
    assert_eq!(records.len(), 1);
    assert!(records[0].void);
    assert_eq!(records[0].message.id, id);
    // Without the blocker and with the mark where it was, a restart must
    // still not queue the refused message: its client was told 451.
    lose_rows_after(&f, mark, &[&id]).await;
    let mut restarted = Spool::open(&f.data_dir, &SpoolConfig::defaults()).unwrap();
    assert_eq!(restarted.recover(&*f.store).await.unwrap(), 0);
    assert!(f.store.queue_entry(&id).await.unwrap().is_none());
}

#[tokio::test]
async fn a_torn_record_is_not_replayed() {
    let f = fixture(256 * 1024, 1024 * 1024).await;
    let first = message("first", 4);
    let a = f.accept(&first).await;
    let after_a = f.store.journal_mark().await.unwrap().unwrap();
    let b = f.accept(&message("second", 30)).await;
    let seg = f.data_dir.join(f.body_ref(&b).await.file());
    let len = std::fs::metadata(&seg).unwrap().len();
    // The crash cut b's record short (so b was never acknowledged).
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    lose_rows_after(&f, after_a, &[&b]).await;
    let mut restarted = Spool::open(&f.data_dir, &SpoolConfig::defaults()).unwrap();
    assert_eq!(restarted.recover(&*f.store).await.unwrap(), 0);
    let queue = f.store.list_queue().await.unwrap();
    assert_eq!(queue.len(), 1);
    f.check_body(&a, &first).await;
}

/// The first start of a build with the journal on a spool written before
/// it: no mark, old segments without records. Nothing is read or queued;
/// the mark starts at this run's segments.
#[tokio::test]
async fn first_start_with_the_journal_reads_no_old_segment() {
    let f = fixture(256 * 1024, 1024 * 1024).await;
    std::fs::create_dir_all(f.data_dir.join("spool/seg")).unwrap();
    std::fs::write(
        f.data_dir.join("spool/seg/0000000000000005.seg"),
        b"Received: an old-format body\r\n\r\nhello\r\n",
    )
    .unwrap();
    let mut spool = Spool::open(&f.data_dir, &SpoolConfig::defaults()).unwrap();
    assert_eq!(f.store.journal_mark().await.unwrap(), None);
    assert_eq!(spool.recover(&*f.store).await.unwrap(), 0);
    let mark = f.store.journal_mark().await.unwrap().unwrap();
    assert!(mark.segment > 5);
    assert_eq!(mark.position, 0);
}

/// Segments that roll over into pre-zeroed spares hold the same records:
/// bodies read back exactly, and lost rows in every segment are replayed
/// (the zeros after the last record are not a torn tail).
#[tokio::test]
async fn rolled_over_spare_segments_replay_like_fresh_ones() {
    let f = fixture(256 * 1024, 1024 * 1024).await;
    let size = 64 * 1024;
    let mut spool = Spool::open_with_segment_size(&f.data_dir, size);
    assert_eq!(spool.recover(&*f.store).await.unwrap(), 0);
    let mark = f.store.journal_mark().await.unwrap().unwrap();
    let mut ids = Vec::new();
    let mut datas = Vec::new();
    for i in 0..12 {
        // About 12 KiB each: five per segment.
        let data = message(&format!("m{i}"), 150);
        let mut w = spool.begin(envelope(), origin()).await;
        w.write(&data).await;
        let EnqueueOutcome::Queued { id } = spool.commit(w, &f.store, Vec::new()).await else {
            panic!("not queued");
        };
        ids.push(id);
        datas.push(data);
        // Give the background spare time to be ready for the next roll.
        if i % 4 == 0 {
            wait_for(|| f.data_dir.join("spool/seg/next.spare").exists()).await;
        }
    }
    let segments = f.segments();
    assert!(segments.len() >= 3, "{segments:?}");
    let spare_sized = segments
        .iter()
        .filter(|p| std::fs::metadata(p).unwrap().len() == size)
        .count();
    assert!(spare_sized >= 2, "rolled-over segments are spares");
    let before = f.store.list_queue().await.unwrap();
    let lost: Vec<&str> = ids.iter().map(String::as_str).collect();
    lose_rows_after(&f, mark, &lost).await;
    let mut restarted = Spool::open(&f.data_dir, &SpoolConfig::defaults()).unwrap();
    assert_eq!(restarted.recover(&*f.store).await.unwrap(), 12);
    assert_eq!(f.store.list_queue().await.unwrap(), before);
    for (id, data) in ids.iter().zip(&datas) {
        f.check_body(id, data).await;
    }
}

async fn wait_for(ok: impl Fn() -> bool) {
    for _ in 0..500 {
        if ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("condition not met in 5 s");
}

/// A segment append that wrote its records but whose sync failed: the
/// session is told to retry (451), and even though the record is intact on
/// disk, no restart may queue it (the mark is moved past the abandoned
/// segment, durably). The next message goes to a new segment.
#[tokio::test]
async fn a_failed_segment_sync_is_never_replayed() {
    let f = fixture(256 * 1024, 1024 * 1024).await;
    let first = message("first", 3);
    f.accept(&first).await;
    let after_first = f.store.journal_mark().await.unwrap().unwrap();
    f.spool.fail_next_segment_sync(None);
    let mut w = f.spool.begin(envelope(), origin()).await;
    let refused_id = w.id().to_string();
    w.write(&message("refused", 3)).await;
    let outcome = f.spool.commit(w, &f.store, Vec::new()).await;
    assert!(
        matches!(outcome, EnqueueOutcome::TemporaryFailure),
        "{outcome:?}"
    );
    assert!(f.store.queue_entry(&refused_id).await.unwrap().is_none());
    // The record is whole in the old segment, after the first one's mark.
    let seg = std::fs::read(&f.segments()[0]).unwrap();
    let (records, _) = super::journal::scan(&seg, after_first.position);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].message.id, refused_id);
    assert!(!records[0].void);
    // ...but the mark is past that segment.
    let mark = f.store.journal_mark().await.unwrap().unwrap();
    assert!(mark.segment > after_first.segment, "{mark:?}");
    let mut restarted = Spool::open(&f.data_dir, &SpoolConfig::defaults()).unwrap();
    assert_eq!(restarted.recover(&*f.store).await.unwrap(), 0);
    assert!(f.store.queue_entry(&refused_id).await.unwrap().is_none());
    // The spool goes on, in a new segment.
    let next = message("next", 2);
    let id = f.accept(&next).await;
    f.check_body(&id, &next).await;
    assert_ne!(
        f.data_dir.join(f.body_ref(&id).await.file()),
        f.segments()[0]
    );
}

/// A full disk during the segment append is 452 (RFC 3463 4.3.1, mapped by
/// the session), not 451, for every message of the batch; nothing queued.
#[tokio::test]
async fn a_full_disk_during_the_segment_append_is_insufficient_storage() {
    let f = fixture(256 * 1024, 1024 * 1024).await;
    f.spool.fail_next_segment_sync(Some(28)); // ENOSPC
    let mut w = f.spool.begin(envelope(), origin()).await;
    w.write(&message("full", 3)).await;
    let outcome = f.spool.commit(w, &f.store, Vec::new()).await;
    assert!(
        matches!(outcome, EnqueueOutcome::InsufficientStorage),
        "{outcome:?}"
    );
    assert!(f.store.list_queue().await.unwrap().is_empty());
    let again = message("again", 3);
    let id = f.accept(&again).await;
    f.check_body(&id, &again).await;
}

/// A spilled message's row is journaled too (a record without a body that
/// names its file), so its batch commits unsynced as well, and a lost row
/// comes back naming the same file.
#[tokio::test]
async fn a_spilled_messages_lost_row_is_queued_again() {
    let f = fixture(4096, 1024 * 1024).await;
    let first = message("first", 100);
    let a = f.accept(&first).await;
    assert!(!f.body_ref(&a).await.is_segment(), "spilled");
    let after_a = f.store.journal_mark().await.unwrap().unwrap();
    let big = message("big", 500);
    let b = f.accept(&big).await;
    assert!(
        f.store.journal_mark().await.unwrap().unwrap() > after_a,
        "a file-only batch records its mark"
    );
    let before = f.store.list_queue().await.unwrap();
    lose_rows_after(&f, after_a, &[&b]).await;
    let mut restarted = Spool::open(&f.data_dir, &SpoolConfig::defaults()).unwrap();
    assert_eq!(restarted.recover(&*f.store).await.unwrap(), 1);
    assert_eq!(f.store.list_queue().await.unwrap(), before);
    f.check_body(&a, &first).await;
    f.check_body(&b, &big).await;
}
