//! Group commit (issue 9): the last two steps of accepting a message — the
//! spool directory fsync and the queue-row transaction — done once for many
//! sessions' messages.
//!
//! Each session writes its spool file, fsyncs it and renames it into
//! `spool/` itself (that work is per message anyway and runs in parallel),
//! then hands the queue row to the [`Committer`] and waits. The committer
//! task takes every request that is waiting (up to [`MAX_BATCH`]), fsyncs
//! the spool directory once, records all rows with one
//! [`Store::enqueue_batch`] (one transaction, one WAL sync), and only then
//! answers each session. While one batch commits, the next one gathers, so
//! there is no timer and a lone session pays no added latency.
//!
//! The guarantee is unchanged: a session is told `Ok` (and answers 250) only
//! after its body, its directory entry and its queue row are all durable. A
//! failed directory fsync or transaction fails every message of the batch.
//! A batch refused for one message's content (`Invalid`, `AlreadyExists`) is
//! retried one message at a time, so one bad message cannot fail others'.
//!
//! This module must not touch message bodies or decide replies: `spool.rs`
//! maps a [`CommitError`] to the SMTP outcome.

use std::path::PathBuf;
use std::sync::Arc;

use portcullis_store::{NewMessage, Store, StoreError};
use tokio::sync::{mpsc, oneshot};

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
    #[error("queue commit: {0}")]
    Store(StoreError),
    /// The committer task is gone (shutdown or panic).
    #[error("committer stopped")]
    Stopped,
}

/// The message comes back with its result, for the caller's log line.
type Answer = (NewMessage, Result<(), CommitError>);

struct Request {
    message: NewMessage,
    done: oneshot::Sender<Answer>,
}

/// Handle to the committer task; cheap to clone.
#[derive(Clone, Debug)]
pub struct Committer {
    tx: mpsc::Sender<Request>,
}

impl Committer {
    /// Starts the committer task for `store`, fsyncing `spool_dir` per
    /// batch. Must be called inside a tokio runtime. The task ends when
    /// every handle is dropped.
    pub fn start(store: Arc<dyn Store>, spool_dir: PathBuf) -> Committer {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run(rx, store, spool_dir));
        Committer { tx }
    }

    /// Makes `message`'s queue row durable together with whatever else is
    /// waiting. Its spool file must already be fsynced and in the spool
    /// directory. `Ok` means the directory entry and the row are durable.
    /// Returns the message with the result; `None` for the message only if
    /// the committer stopped after taking it (then the result is `Stopped`).
    pub async fn commit(
        &self,
        message: NewMessage,
    ) -> (Option<NewMessage>, Result<(), CommitError>) {
        let (done, wait) = oneshot::channel();
        if let Err(mpsc::error::SendError(r)) = self.tx.send(Request { message, done }).await {
            return (Some(r.message), Err(CommitError::Stopped));
        }
        match wait.await {
            Ok((message, result)) => (Some(message), result),
            Err(_) => (None, Err(CommitError::Stopped)),
        }
    }
}

async fn run(mut rx: mpsc::Receiver<Request>, store: Arc<dyn Store>, spool_dir: PathBuf) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Ends when every Committer handle is gone and the queue is drained.
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (messages, waiters): (Vec<NewMessage>, Vec<_>) =
            batch.drain(..).map(|r| (r.message, r.done)).unzip();
        let results = commit_batch(&store, &spool_dir, &messages).await;
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
    messages: &[NewMessage],
) -> Vec<Result<(), CommitError>> {
    let n = messages.len();
    let dir = spool_dir.to_path_buf();
    let synced = tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
    if let Err(e) = synced {
        tracing::error!(error = %e, messages = n, "spool directory fsync failed");
        return (0..n)
            .map(|_| Err(CommitError::Directory(copy_io_error(&e))))
            .collect();
    }
    match store.enqueue_batch(messages).await {
        Ok(()) => {
            tracing::debug!(messages = n, "batch committed");
            (0..n).map(|_| Ok(())).collect()
        }
        // Caused by one message's content: find it, commit the others.
        Err(StoreError::Invalid(_) | StoreError::AlreadyExists(_)) if n > 1 => {
            let mut results = Vec::with_capacity(n);
            for m in messages {
                results.push(store.enqueue(m).await.map_err(CommitError::Store));
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
