//! The `idle` mode: open N sessions (TCP, TLS, EHLO, optionally AUTH), hold
//! them without sending anything for a while, then QUIT. Measures what idle
//! sessions cost a server (its resident memory is read by the caller while
//! the sessions are held).
//!
//! Bounded: at most `parallel` setups run at once, each within the setup
//! timeout; the hold is a fixed time; QUIT waits at most 2 s per session.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::conn::{ConnError, Setup, establish};

#[derive(Clone)]
pub struct IdleOptions {
    pub setup: Setup,
    /// Sessions to open and hold.
    pub sessions: usize,
    /// Setups in flight at once (a SYN/handshake flood would only measure
    /// the listen backlog).
    pub parallel: usize,
    /// How long to hold the sessions once all setups have finished.
    pub hold: Duration,
    /// Written (with the number of sessions up) once every setup has finished,
    /// so a script knows when to take its measurement.
    pub ready_file: Option<PathBuf>,
}

/// What an idle run did.
#[derive(Debug, Clone, Default)]
pub struct IdleReport {
    pub planned: usize,
    pub established: u64,
    pub failed: u64,
    /// Sessions the server closed (or that broke) during the hold.
    pub lost_while_held: u64,
    pub setup_time: Duration,
    pub held: Duration,
    pub errors: BTreeMap<String, u64>,
    pub interrupted: bool,
}

impl IdleReport {
    pub fn all_ok(&self) -> bool {
        !self.interrupted
            && self.failed == 0
            && self.lost_while_held == 0
            && self.established == self.planned as u64
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "sessions": self.planned, "established": self.established, "failed": self.failed,
            "lost_while_held": self.lost_while_held, "setup_s": self.setup_time.as_secs_f64(),
            "held_s": self.held.as_secs_f64(), "errors": self.errors,
            "interrupted": self.interrupted,
        })
    }

    pub fn text(&self) -> String {
        let mut out = format!(
            "idle: {}/{} sessions established in {:.3} s, held {:.1} s, {} failed, {} lost while held{}\n",
            self.established,
            self.planned,
            self.setup_time.as_secs_f64(),
            self.held.as_secs_f64(),
            self.failed,
            self.lost_while_held,
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        );
        for (e, n) in &self.errors {
            out.push_str(&format!("  {n:>8}  {e}\n"));
        }
        out
    }
}

enum Ended {
    /// Set up, held, and quit normally.
    Held,
    /// Set up, but the session broke while held.
    Lost(ConnError),
    /// Setup failed.
    Failed(ConnError),
}

/// Opens, holds and closes the sessions. `stop` (SIGINT) cuts the hold short.
pub async fn run(opts: IdleOptions, stop: Arc<AtomicBool>) -> IdleReport {
    let start = Instant::now();
    let gate = Arc::new(Semaphore::new(opts.parallel.max(1)));
    let (release_tx, release_rx) = watch::channel(false);
    let (up_tx, mut up_rx) = tokio::sync::mpsc::channel::<bool>(opts.sessions.max(1));
    let setup = Arc::new(opts.setup.clone());
    let mut tasks = JoinSet::new();
    for _ in 0..opts.sessions {
        let (gate, setup, up) = (Arc::clone(&gate), Arc::clone(&setup), up_tx.clone());
        let mut release = release_rx.clone();
        tasks.spawn(async move {
            let established = {
                let _permit = gate.acquire().await;
                establish(&setup).await
            };
            let (mut conn, _) = match established {
                Ok(c) => c,
                Err(e) => {
                    let _ = up.send(false).await;
                    return Ended::Failed(e);
                }
            };
            let _ = up.send(true).await;
            // Hold: wait for the release, noticing a server-side close.
            // Ends with the release (after the bounded hold): a read timeout
            // only means the server stayed quiet, as it should.
            let lost = loop {
                tokio::select! {
                    _ = release.wait_for(|r| *r) => break None,
                    r = conn.reply("idle") => match r {
                        Err(ConnError::Timeout(_)) => continue,
                        Ok(reply) => break Some(ConnError::Rejected { stage: "idle", reply }),
                        Err(e) => break Some(e),
                    },
                }
            };
            match lost {
                Some(e) => Ended::Lost(e),
                None => {
                    conn.quit().await;
                    Ended::Held
                }
            }
        });
    }
    drop(up_tx);
    let mut report = IdleReport {
        planned: opts.sessions,
        ..IdleReport::default()
    };
    let mut finished = 0usize;
    while finished < opts.sessions {
        match up_rx.recv().await {
            Some(true) => report.established += 1,
            Some(false) => {}
            None => break,
        }
        finished += 1;
    }
    report.setup_time = start.elapsed();
    eprintln!(
        "idle: {} sessions up after {:.3} s; holding {:.1} s",
        report.established,
        report.setup_time.as_secs_f64(),
        opts.hold.as_secs_f64()
    );
    if let Some(path) = &opts.ready_file {
        let _ = std::fs::write(path, format!("{}\n", report.established));
    }
    let hold_start = Instant::now();
    while hold_start.elapsed() < opts.hold && !stop.load(Ordering::Relaxed) {
        let left = opts.hold.saturating_sub(hold_start.elapsed());
        tokio::time::sleep(left.min(Duration::from_millis(100))).await;
    }
    report.held = hold_start.elapsed();
    report.interrupted = stop.load(Ordering::Relaxed);
    let _ = release_tx.send(true);
    while let Some(done) = tasks.join_next().await {
        let error = match done {
            Ok(Ended::Held) => None,
            Ok(Ended::Lost(e)) => {
                report.lost_while_held += 1;
                Some(format!("while held: {e}"))
            }
            Ok(Ended::Failed(e)) => {
                report.failed += 1;
                Some(e.to_string())
            }
            Err(e) => {
                report.failed += 1;
                Some(format!("session task failed: {e}"))
            }
        };
        if let Some(e) = error {
            *report.errors.entry(e).or_insert(0) += 1;
        }
    }
    report
}
