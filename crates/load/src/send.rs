//! The `send` load generator: C concurrent connections, each sending N
//! messages (or until a deadline) over one reused session, with MAIL and RCPT
//! pipelined when the server offers PIPELINING.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::conn::{Caps, Conn, ConnError, Io, Setup, establish};
use crate::message::{BodyPool, MessageSpec, dot_stuff, generate};
use crate::reply::Reply;
use crate::report::{Report, Settings, Stats};

/// Everything a run needs.
#[derive(Clone)]
pub struct SendOptions {
    pub setup: Setup,
    pub connections: usize,
    /// Messages per connection; ignored when `duration` is set.
    pub messages: u64,
    /// Messages per session: after this many, QUIT and set up a new
    /// connection (TCP + TLS + AUTH). 0 = one session for all of them.
    pub per_session: u64,
    /// Send until this much time has passed instead of a fixed count.
    pub duration: Option<Duration>,
    pub recipients: usize,
    pub size: usize,
    pub from: String,
    pub to_domain: String,
}

/// Runs the load and reports. `stop` ends every connection after its current message.
pub async fn run(opts: SendOptions, stop: Arc<AtomicBool>) -> Report {
    let settings = Settings {
        addr: opts.setup.addr.clone(),
        tls: opts.setup.tls.name(),
        connections: opts.connections,
        messages_per_connection: opts.duration.is_none().then_some(opts.messages),
        duration: opts.duration,
        recipients: opts.recipients,
        size: opts.size,
    };
    let pool = Arc::new(BodyPool::new(opts.size));
    let opts = Arc::new(opts);
    let start = Instant::now();
    let deadline = opts.duration.map(|d| start + d);
    let mut tasks = JoinSet::new();
    for id in 0..opts.connections {
        let (opts, pool, stop) = (Arc::clone(&opts), Arc::clone(&pool), Arc::clone(&stop));
        tasks.spawn(async move { connection(id, &opts, &pool, deadline, &stop).await });
    }
    let mut stats = Stats::default();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(s) => stats.merge(s),
            Err(e) => {
                stats.connections_failed += 1;
                stats.connection_error(format!("connection task failed: {e}"));
            }
        }
    }
    Report::new(
        settings,
        stats,
        start.elapsed(),
        stop.load(Ordering::Relaxed),
    )
}

fn record(stats: &mut Stats, err: ConnError) {
    stats.connections_failed += 1;
    match err {
        ConnError::Rejected { stage, reply } => stats.reply_error(stage, &reply),
        other => stats.connection_error(other.to_string()),
    }
}

/// One connection slot's whole life: sessions set up one after another
/// (each carrying up to `per_session` messages); never fails, only counts.
async fn connection(
    id: usize,
    opts: &SendOptions,
    pool: &BodyPool,
    deadline: Option<Instant>,
    stop: &AtomicBool,
) -> Stats {
    let mut stats = Stats::default();
    let rcpts: Vec<String> = (0..opts.recipients)
        .map(|k| format!("rcpt{k}@{}", opts.to_domain))
        .collect();
    let mut wire = Vec::new();
    let mut seq = 0u64;
    let more = |seq: u64| {
        let more = match deadline {
            Some(d) => Instant::now() < d,
            None => seq < opts.messages,
        };
        more && !stop.load(Ordering::Relaxed)
    };
    // Bounded: every session sends at least one message (or ends the slot).
    while more(seq) {
        let setup_started = Instant::now();
        let (mut conn, caps) = match establish(&opts.setup).await {
            Ok(c) => c,
            Err(e) => {
                record(&mut stats, e);
                return stats;
            }
        };
        stats.setup_us.push(micros(setup_started));
        let mut in_session = 0u64;
        while more(seq) && (opts.per_session == 0 || in_session < opts.per_session) {
            let spec = MessageSpec {
                from: &opts.from,
                to: &rcpts,
                connection: id,
                seq,
                size: opts.size,
            };
            let raw = generate(pool, &spec);
            wire.clear();
            dot_stuff(&raw, &mut wire);
            seq += 1;
            in_session += 1;
            let tx = Transaction {
                opts,
                caps,
                rcpts: &rcpts,
                size: raw.len(),
                wire: &wire,
            };
            match tx.run(&mut conn, &mut stats).await {
                Ok(true) => stats.messages_ok += 1,
                Ok(false) => stats.messages_failed += 1,
                Err(e) => {
                    stats.messages_failed += 1;
                    record(&mut stats, e);
                    return stats;
                }
            }
        }
        conn.quit().await;
        stats.connections_ok += 1;
    }
    stats
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// One message's MAIL / RCPT / DATA exchange.
struct Transaction<'a> {
    opts: &'a SendOptions,
    caps: Caps,
    rcpts: &'a [String],
    /// Message size before dot-stuffing.
    size: usize,
    /// Dot-stuffed message with the terminating `.` line.
    wire: &'a [u8],
}

/// A reply that ends the session (421: the server is closing the channel).
fn closing(stage: &'static str, reply: Reply) -> Result<Reply, ConnError> {
    if reply.code == 421 {
        Err(ConnError::Rejected { stage, reply })
    } else {
        Ok(reply)
    }
}

impl Transaction<'_> {
    /// `Ok(true)`: accepted; `Ok(false)`: refused by a reply (counted, session
    /// still usable); `Err`: the session is over.
    async fn run(
        &self,
        conn: &mut Conn<Box<dyn Io>>,
        stats: &mut Stats,
    ) -> Result<bool, ConnError> {
        let mail = if self.caps.size {
            format!("MAIL FROM:<{}> SIZE={}\r\n", self.opts.from, self.size)
        } else {
            format!("MAIL FROM:<{}>\r\n", self.opts.from)
        };
        let started = Instant::now();
        let mut accepted = 0u64;
        let mail_ok;
        if self.caps.pipelining {
            let mut batch = mail.into_bytes();
            for r in self.rcpts {
                batch.extend_from_slice(format!("RCPT TO:<{r}>\r\n").as_bytes());
            }
            conn.send(&batch, "MAIL").await?;
            let reply = closing("MAIL", conn.reply("MAIL").await?)?;
            mail_ok = reply.is_positive();
            if !mail_ok {
                stats.reply_error("MAIL", &reply);
            }
            for _ in self.rcpts {
                let reply = closing("RCPT", conn.reply("RCPT").await?)?;
                accepted += self.rcpt_outcome(mail_ok, &reply, stats);
            }
        } else {
            conn.send(mail.as_bytes(), "MAIL").await?;
            let reply = closing("MAIL", conn.reply("MAIL").await?)?;
            mail_ok = reply.is_positive();
            if !mail_ok {
                stats.reply_error("MAIL", &reply);
                return Ok(false);
            }
            for r in self.rcpts {
                conn.send(format!("RCPT TO:<{r}>\r\n").as_bytes(), "RCPT")
                    .await?;
                let reply = closing("RCPT", conn.reply("RCPT").await?)?;
                accepted += self.rcpt_outcome(true, &reply, stats);
            }
        }
        if !mail_ok || accepted == 0 {
            rset(conn).await?;
            return Ok(false);
        }
        conn.send(b"DATA\r\n", "DATA").await?;
        let reply = closing("DATA", conn.reply("DATA").await?)?;
        if reply.code != 354 {
            stats.reply_error("DATA", &reply);
            rset(conn).await?;
            return Ok(false);
        }
        conn.send(self.wire, "message content").await?;
        let reply = closing("end of data", conn.reply("end of data").await?)?;
        if reply.code != 250 {
            stats.reply_error("DATA end", &reply);
            return Ok(false);
        }
        stats.latencies_us.push(micros(started));
        stats.recipients_ok += accepted;
        stats.bytes += self.size as u64;
        Ok(true)
    }

    /// 1 if the recipient was accepted; counts a refusal when MAIL had succeeded.
    fn rcpt_outcome(&self, mail_ok: bool, reply: &Reply, stats: &mut Stats) -> u64 {
        if reply.is_positive() {
            return 1;
        }
        if mail_ok {
            stats.recipients_failed += 1;
            stats.reply_error("RCPT", reply);
        }
        0
    }
}

/// Resets the transaction after a refusal; a refused RSET ends the session.
async fn rset(conn: &mut Conn<Box<dyn Io>>) -> Result<(), ConnError> {
    conn.command("RSET", "RSET").await.map(|_| ())
}
