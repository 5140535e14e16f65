//! Group commit (issue 9): the last steps of accepting a message — the
//! segment append, the spool directory fsync and the queue-row transaction —
//! done once for many sessions' messages.
//!
//! A session hands the committer its queue row and either its body
//! ([`Payload::Segment`]: a small message held in memory) or nothing
//! ([`Payload::File`]: a big message it already fdatasynced and renamed
//! into `spool/` itself, work that is per message anyway and runs in
//! parallel). The committer task takes every request that is waiting (up to
//! [`MAX_BATCH`]) and, in this order:
//! 1. appends every message of the batch to the active segment as a
//!    journal record ([`crate::spool::journal`]: a small message's body
//!    with its queue row; a big message's row alone, naming its file) with
//!    one write and one fdatasync (and an fsync of `spool/seg/` when the
//!    segment is new), and sets each small message's `spool_path` to its
//!    body's range;
//! 2. at the same time, fsyncs `spool/` once if the batch has file
//!    messages;
//! 3. records every row whose body is durable with one transaction that
//!    also records the journal mark. A row in the journal needs no sync of
//!    its own: the segment's fdatasync already made it durable, and
//!    start-up replays any the database lost, so the commit is not synced
//!    (a row without a record would make it synced; every ready row has
//!    one);
//! 4. voids, durably, the journal records of rows that failed to commit
//!    (and of file messages whose directory fsync failed).
//!
//! and only then answers each session. While one batch commits, the next
//! one gathers, so there is no timer and a lone session pays no added
//! latency.
//!
//! The guarantee: a session is told `Ok` (and answers 250) only after its
//! body, its directory entry and its queue row are durable (the row in the
//! queue, or in the journal for start-up to replay). A failed segment write
//! or sync fails every segment message of the batch, a failed directory
//! fsync every file message, a failed transaction every message. A batch
//! refused for one message's content (`Invalid`, `AlreadyExists`) is
//! retried one message at a time, so one bad message cannot fail others'.
//! A message told it failed is never replayed.
//!
//! This module must not decide replies: `spool` maps a [`CommitError`] to
//! the SMTP outcome.

use std::path::PathBuf;
use std::sync::Arc;

use portcullis_store::{JournalMark, NewMessage, Store, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::spool::journal;
use crate::spool::segment::SegmentLog;

/// Most messages in one transaction; more waiting ones go into the next.
pub const MAX_BATCH: usize = 256;

/// Requests waiting for the committer before senders wait for room.
const QUEUE_DEPTH: usize = 4 * MAX_BATCH;

/// Why a message was not committed. Nothing of it is in the queue.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The spool directory could not be made durable.
    #[error("spool directory fsync: {0}")]
    Directory(std::io::Error),
    /// The batch's segment append or its fdatasync failed.
    #[error("segment append: {0}")]
    Segment(std::io::Error),
    #[error("queue commit: {0}")]
    Store(StoreError),
    /// The committer task is gone (shutdown or panic).
    #[error("committer stopped")]
    Stopped,
}

/// Where a message's body is when it is handed to the committer.
pub enum Payload {
    /// Already durable in its own file in `spool/` (`spool_path` is set);
    /// needs the directory fsync.
    File,
    /// The whole message, to append to the active segment.
    Segment(Vec<u8>),
}

/// The message comes back with its result, for the caller's log line.
type Answer = (NewMessage, Result<(), CommitError>);

struct Request {
    message: NewMessage,
    payload: Payload,
    done: oneshot::Sender<Answer>,
}

/// Handle to the committer task; cheap to clone.
#[derive(Clone, Debug)]
pub struct Committer {
    tx: mpsc::Sender<Request>,
}

impl Committer {
    /// Starts the committer task for `store`, fsyncing `spool_dir` per
    /// batch with file messages and appending to `segments`. Must be called
    /// inside a tokio runtime. The task ends when every handle is dropped.
    pub fn start(store: Arc<dyn Store>, spool_dir: PathBuf, segments: SegmentLog) -> Committer {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run(rx, store, spool_dir, segments));
        Committer { tx }
    }

    /// Makes `message`'s body (see [`Payload`]) and queue row durable
    /// together with whatever else is waiting. `Ok` means the body, its
    /// directory entry and the row are durable. Returns the message (with
    /// its final `spool_path`) with the result; `None` for the message only
    /// if the committer stopped after taking it (then the result is
    /// `Stopped`).
    pub async fn commit(
        &self,
        message: NewMessage,
        payload: Payload,
    ) -> (Option<NewMessage>, Result<(), CommitError>) {
        let (done, wait) = oneshot::channel();
        let request = Request {
            message,
            payload,
            done,
        };
        if let Err(mpsc::error::SendError(r)) = self.tx.send(request).await {
            return (Some(r.message), Err(CommitError::Stopped));
        }
        match wait.await {
            Ok((message, result)) => (Some(message), result),
            Err(_) => (None, Err(CommitError::Stopped)),
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<Request>,
    store: Arc<dyn Store>,
    spool_dir: PathBuf,
    mut segments: SegmentLog,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Ends when every Committer handle is gone and the queue is drained.
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut messages = Vec::with_capacity(batch.len());
        let mut payloads = Vec::with_capacity(batch.len());
        let mut waiters = Vec::with_capacity(batch.len());
        for r in batch.drain(..) {
            messages.push(r.message);
            payloads.push(r.payload);
            waiters.push(r.done);
        }
        let results =
            commit_batch(&store, &spool_dir, &mut segments, &mut messages, payloads).await;
        for ((done, message), result) in waiters.into_iter().zip(messages).zip(results) {
            // A session that went away no longer needs its answer; its row
            // is committed (or not) all the same.
            let _ = done.send((message, result));
        }
    }
}

/// One result per message, in order.
async fn commit_batch(
    store: &Arc<dyn Store>,
    spool_dir: &std::path::Path,
    segments: &mut SegmentLog,
    messages: &mut [NewMessage],
    payloads: Vec<Payload>,
) -> Vec<Result<(), CommitError>> {
    let n = messages.len();
    let mut results: Vec<Option<Result<(), CommitError>>> = (0..n).map(|_| None).collect();
    let is_file: Vec<bool> = payloads
        .iter()
        .map(|p| matches!(p, Payload::File))
        .collect();
    let has_files = is_file.contains(&true);
    // Each message's journal record: (start, end) once appended. A segment
    // message's record holds its body; a file message's only its row.
    let mut places: Vec<Option<(u64, u64)>> = vec![None; n];
    let mut journaled = Vec::new();
    let mut records = Vec::new();
    for (i, payload) in payloads.into_iter().enumerate() {
        let record = match payload {
            Payload::Segment(body) => journal::record_head(&messages[i], &body).map(|h| (h, body)),
            Payload::File => journal::file_record_head(&messages[i]).map(|h| (h, Vec::new())),
        };
        match record {
            Ok(record) => {
                journaled.push(i);
                records.push(record);
            }
            Err(e) => results[i] = Some(Err(CommitError::Segment(e))),
        }
    }
    // 1. The records: one write, one fdatasync; 2. at the same time, the
    // directory entries of the file messages (their fdatasync and rename
    // were done by the sessions). Both before any row is committed.
    let append = async {
        if records.is_empty() {
            None
        } else {
            Some(segments.append(records).await)
        }
    };
    let dir_sync = async {
        if !has_files {
            return Ok(());
        }
        let dir = spool_dir.to_path_buf();
        tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
    };
    let (appended, synced) = tokio::join!(append, dir_sync);
    let mut segment = None;
    match appended {
        None => {}
        Some(Ok((id, appended))) => {
            segment = Some(id);
            for (i, a) in journaled.iter().zip(appended) {
                if !is_file[*i] {
                    messages[*i].spool_path = a.body.to_string();
                }
                places[*i] = Some((a.start, a.end));
            }
        }
        Some(Err(e)) => {
            tracing::error!(error = %e, messages = journaled.len(), "segment append failed");
            for i in &journaled {
                results[*i] = Some(Err(CommitError::Segment(copy_io_error(&e))));
            }
            skip_abandoned(store, segments.next_id()).await;
        }
    }
    if let Err(e) = synced {
        let files = is_file.iter().filter(|f| **f).count();
        tracing::error!(error = %e, messages = files, "spool directory fsync failed");
        for (i, r) in results.iter_mut().enumerate() {
            if is_file[i] && r.is_none() {
                *r = Some(Err(CommitError::Directory(copy_io_error(&e))));
            }
        }
    }
    // 3. The rows of every message whose body is durable.
    let ready: Vec<usize> = (0..n).filter(|i| results[*i].is_none()).collect();
    let ready_places: Vec<Option<(u64, u64)>> = ready.iter().map(|i| places[*i]).collect();
    let committed = if ready.len() == n {
        enqueue(store, messages, &ready_places, segment).await
    } else {
        let subset: Vec<NewMessage> = ready.iter().map(|i| messages[*i].clone()).collect();
        enqueue(store, &subset, &ready_places, segment).await
    };
    // 4. Records whose rows were not committed must never be replayed:
    // those whose commit failed, and those of file messages whose
    // directory fsync failed.
    let mut failed: Vec<u64> = ready
        .iter()
        .zip(&committed)
        .filter(|(_, r)| r.is_err())
        .filter_map(|(i, _)| places[*i].map(|(start, _)| start))
        .collect();
    failed.extend(
        (0..n)
            .filter(|i| matches!(results[*i], Some(Err(CommitError::Directory(_)))))
            .filter_map(|i| places[i].map(|(start, _)| start)),
    );
    if !failed.is_empty()
        && let Err(e) = segments.void(failed).await
    {
        tracing::error!(error = %e, "cannot void the journal records of failed commits");
        skip_abandoned(store, segments.next_id()).await;
    }
    for (i, result) in ready.iter().zip(committed) {
        results[*i] = Some(result);
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or(Err(CommitError::Stopped)))
        .collect()
}

/// After a segment was abandoned with records whose rows are not in the
/// queue (their sessions are told the commit failed): moves the journal
/// mark past every segment so far, durably, so that start-up never replays
/// them. Every earlier record's row is committed (the committer is serial),
/// and this synced commit makes those rows durable too. If the store fails
/// as well, a crash before the next batch could replay them: logged.
async fn skip_abandoned(store: &Arc<dyn Store>, next_segment: u64) {
    let mark = JournalMark {
        segment: next_segment,
        position: 0,
    };
    if let Err(e) = store.replay_journal(&[], mark).await {
        tracing::error!(
            error = %e,
            "cannot move the journal mark past an abandoned segment: a crash before the next commit may queue its failed messages"
        );
    }
}

/// Commits `rows` in one transaction; one result per row. `places` are the
/// rows' journal records in `segment` (`None` for a message with its own
/// file): the commit records the mark at the last record and is synced
/// only if some row has no record.
async fn enqueue(
    store: &Arc<dyn Store>,
    rows: &[NewMessage],
    places: &[Option<(u64, u64)>],
    segment: Option<u64>,
) -> Vec<Result<(), CommitError>> {
    let n = rows.len();
    if n == 0 {
        return Vec::new();
    }
    let mark_at = |end: u64| {
        segment.map(|segment| JournalMark {
            segment,
            position: end,
        })
    };
    let last = places.iter().flatten().map(|(_, end)| *end).max();
    let all_journaled = places.iter().all(Option::is_some);
    let whole = match last.and_then(mark_at) {
        Some(mark) => store.enqueue_journaled(rows, mark, !all_journaled).await,
        None => store.enqueue_batch(rows).await,
    };
    match whole {
        Ok(()) => {
            tracing::debug!(messages = n, "batch committed");
            (0..n).map(|_| Ok(())).collect()
        }
        // Caused by one message's content: find it, commit the others (in
        // order, so the mark only moves forward).
        Err(StoreError::Invalid(_) | StoreError::AlreadyExists(_)) if n > 1 => {
            let mut results = Vec::with_capacity(n);
            for (m, place) in rows.iter().zip(places) {
                let one = std::slice::from_ref(m);
                let result = match place.and_then(|(_, end)| mark_at(end)) {
                    Some(mark) => store.enqueue_journaled(one, mark, false).await,
                    None => store.enqueue(m).await,
                };
                results.push(result.map_err(CommitError::Store));
            }
            results
        }
        Err(e) => {
            tracing::error!(error = %e, messages = n, "batch commit failed");
            (0..n)
                .map(|_| Err(CommitError::Store(copy_store_error(&e))))
                .collect()
        }
    }
}

/// Same kind and text (errno-based checks like "disk full" keep working).
fn copy_io_error(e: &std::io::Error) -> std::io::Error {
    match e.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => std::io::Error::new(e.kind(), e.to_string()),
    }
}

fn copy_store_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::NotFound(m) => StoreError::NotFound(m.clone()),
        StoreError::AlreadyExists(m) => StoreError::AlreadyExists(m.clone()),
        StoreError::Invalid(m) => StoreError::Invalid(m.clone()),
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
    }
}
