//! Group commit of delivery results (issue 9): the attempts of many
//! concurrent delivery tasks are recorded with one `record_delivery` call,
//! one SQLite transaction and one WAL sync, instead of one each.
//!
//! A task hands over its outcomes and DSN notices (bodies already durable)
//! and waits. The recorder task takes every request that is waiting (up to
//! [`MAX_BATCH`]), records them together and answers each with the finished
//! messages that are its own. While one batch commits the next gathers, so
//! there is no timer. If the transaction fails, every task of the batch gets
//! the error and handles it as before (its notices are removed, its
//! recipients stay in flight and are retried at the next start).

use std::sync::Arc;

use portcullis_store::{NewMessage, RecipientOutcome, Store};
use tokio::sync::{mpsc, oneshot};

const MAX_BATCH: usize = 128;

/// `(message id, spool path)` of messages now finished, or the error text.
type Recorded = Result<Vec<(String, String)>, String>;

struct Request {
    outcomes: Vec<RecipientOutcome>,
    notices: Vec<NewMessage>,
    now_ms: i64,
    done: oneshot::Sender<Recorded>,
}

#[derive(Clone, Debug)]
pub struct Recorder {
    tx: mpsc::Sender<Request>,
}

impl Recorder {
    /// Starts the recorder task (inside a tokio runtime); it ends when every
    /// handle is dropped.
    pub fn start(store: Arc<dyn Store>) -> Recorder {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(run(rx, store));
        Recorder { tx }
    }

    /// Like `Store::record_delivery`, shared with whatever else is waiting.
    pub async fn record(
        &self,
        outcomes: Vec<RecipientOutcome>,
        notices: Vec<NewMessage>,
        now_ms: i64,
    ) -> Recorded {
        let (done, wait) = oneshot::channel();
        let request = Request {
            outcomes,
            notices,
            now_ms,
            done,
        };
        if self.tx.send(request).await.is_err() {
            return Err("delivery recorder stopped".into());
        }
        wait.await
            .unwrap_or_else(|_| Err("delivery recorder stopped".into()))
    }
}

async fn run(mut rx: mpsc::Receiver<Request>, store: Arc<dyn Store>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Ends when every Recorder handle is gone and the queue is drained.
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let now_ms = batch.iter().map(|r| r.now_ms).max().unwrap_or_default();
        let outcomes: Vec<RecipientOutcome> = batch
            .iter()
            .flat_map(|r| r.outcomes.iter().cloned())
            .collect();
        let notices: Vec<NewMessage> = batch
            .iter()
            .flat_map(|r| r.notices.iter().cloned())
            .collect();
        let result = store.record_delivery(&outcomes, &notices, now_ms).await;
        for request in batch.drain(..) {
            let answer = match &result {
                Ok(done) => Ok(done
                    .iter()
                    .filter(|(id, _)| request.outcomes.iter().any(|o| &o.message_id == id))
                    .cloned()
                    .collect()),
                Err(e) => Err(e.to_string()),
            };
            let _ = request.done.send(answer);
        }
    }
}
