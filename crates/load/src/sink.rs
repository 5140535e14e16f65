//! The `sink`: a minimal, fast SMTP server that accepts any mail and discards
//! it, for delivery benchmarks and as the peer of `send` in tests.
//!
//! It answers EHLO with PIPELINING, 8BITMIME, SIZE (and STARTTLS when it has a
//! certificate), accepts any AUTH PLAIN/LOGIN, reads DATA to CRLF.CRLF and
//! replies 250. Replies are buffered while pipelined commands are waiting and
//! written when the input runs dry.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustls::ServerConfig;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

use crate::dataend::DataEnd;

/// Longest command line accepted, CRLF included.
const MAX_COMMAND: usize = 4096;

#[derive(Clone)]
pub struct SinkOptions {
    /// Offer STARTTLS (or, with `implicit_tls`, require TLS from the first byte).
    pub tls: Option<Arc<ServerConfig>>,
    pub implicit_tls: bool,
    pub hostname: String,
    /// Advertised SIZE; larger messages get 552 after their DATA.
    pub max_size: u64,
    /// Per read/write timeout.
    pub timeout: Duration,
    /// Answer every Nth MAIL (sink-wide) with 451 4.7.1; 0 never.
    pub reject_mail_every: u64,
    pub pipelining: bool,
}

impl Default for SinkOptions {
    fn default() -> SinkOptions {
        SinkOptions {
            tls: None,
            implicit_tls: false,
            hostname: "sink.portcullis-load.invalid".into(),
            max_size: 64 * 1024 * 1024,
            timeout: Duration::from_secs(60),
            reject_mail_every: 0,
            pipelining: true,
        }
    }
}

/// Live counters, shared by all connections.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub connections: AtomicU64,
    pub messages: AtomicU64,
    pub recipients: AtomicU64,
    pub bytes: AtomicU64,
    pub mail_commands: AtomicU64,
    pub rejected: AtomicU64,
    pub errors: AtomicU64,
    /// Microseconds since start of the first and last accepted message (+1; 0 = none).
    first_us: AtomicU64,
    last_us: AtomicU64,
}

impl SinkStats {
    fn message_accepted(&self, started: Instant, recipients: u64, bytes: u64) {
        let now = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX - 1) + 1;
        let _ = self
            .first_us
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        self.last_us.fetch_max(now, Ordering::Relaxed);
        self.recipients.fetch_add(recipients, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.messages.fetch_add(1, Ordering::Relaxed);
    }
}

/// A bound sink; [`Sink::run_until`] serves it.
pub struct Sink {
    listener: TcpListener,
    opts: Arc<SinkOptions>,
    stats: Arc<SinkStats>,
    started: Instant,
}

impl Sink {
    pub async fn bind(addr: &str, opts: SinkOptions) -> std::io::Result<Sink> {
        Ok(Sink {
            listener: TcpListener::bind(addr).await?,
            opts: Arc::new(opts),
            stats: Arc::default(),
            started: Instant::now(),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    pub fn stats(&self) -> Arc<SinkStats> {
        Arc::clone(&self.stats)
    }

    /// Accepts connections until `stop` completes, then summarizes.
    pub async fn run_until(self, stop: impl Future<Output = ()>) -> SinkSummary {
        let mut stop = std::pin::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, _)) => {
                        self.stats.connections.fetch_add(1, Ordering::Relaxed);
                        let (opts, stats) = (Arc::clone(&self.opts), Arc::clone(&self.stats));
                        let started = self.started;
                        tokio::spawn(async move {
                            if handle(tcp, &opts, &stats, started).await.is_err() {
                                stats.errors.fetch_add(1, Ordering::Relaxed);
                            }
                        });
                    }
                    // Out of file descriptors and the like: back off, keep serving.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                },
            }
        }
        SinkSummary::of(&self.stats, self.started.elapsed())
    }
}

/// The totals printed when the sink stops.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkSummary {
    pub connections: u64,
    pub messages: u64,
    pub recipients: u64,
    pub bytes: u64,
    pub rejected: u64,
    pub errors: u64,
    pub uptime: Duration,
    /// From the first accepted message to the last.
    pub active: Duration,
}

impl SinkSummary {
    pub fn of(stats: &SinkStats, uptime: Duration) -> SinkSummary {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (first, last) = (get(&stats.first_us), get(&stats.last_us));
        SinkSummary {
            connections: get(&stats.connections),
            messages: get(&stats.messages),
            recipients: get(&stats.recipients),
            bytes: get(&stats.bytes),
            rejected: get(&stats.rejected),
            errors: get(&stats.errors),
            uptime,
            active: Duration::from_micros(last.saturating_sub(first)),
        }
    }

    fn rate(&self) -> f64 {
        let secs = self.active.as_secs_f64();
        if secs > 0.0 {
            self.messages as f64 / secs
        } else {
            0.0
        }
    }

    pub fn text(&self) -> String {
        format!(
            "sink: {} connections, {} messages, {} recipients, {} bytes, {} rejected, {} connection errors\n\
             sink: uptime {:.3} s, active {:.3} s, {:.1} messages/s while active\n",
            self.connections,
            self.messages,
            self.recipients,
            self.bytes,
            self.rejected,
            self.errors,
            self.uptime.as_secs_f64(),
            self.active.as_secs_f64(),
            self.rate()
        )
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "connections": self.connections, "messages": self.messages,
            "recipients": self.recipients, "bytes": self.bytes, "rejected": self.rejected,
            "connection_errors": self.errors, "uptime_s": self.uptime.as_secs_f64(),
            "active_s": self.active.as_secs_f64(), "messages_per_s": self.rate(),
        })
    }
}

type SinkResult<T> = Result<T, String>;

async fn handle(
    tcp: TcpStream,
    opts: &SinkOptions,
    stats: &SinkStats,
    started: Instant,
) -> SinkResult<()> {
    let _ = tcp.set_nodelay(true);
    let accept = |config: &Arc<ServerConfig>, tcp| {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(config));
        async move {
            match timeout(opts.timeout, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => Ok(s),
                Ok(Err(e)) => Err(format!("TLS handshake: {e}")),
                Err(_) => Err("TLS handshake timed out".to_owned()),
            }
        }
    };
    let mut session = Session {
        opts,
        stats,
        started,
        secure: false,
        greet: true,
    };
    match (&opts.tls, opts.implicit_tls) {
        (Some(config), true) => {
            let tls = accept(config, tcp).await?;
            session.secure = true;
            session.run(tls).await.map(|_| ())
        }
        (config, _) => match session.run(tcp).await? {
            Some(tcp) => {
                let Some(config) = config else { return Ok(()) };
                let tls = accept(config, tcp).await?;
                session.secure = true;
                session.greet = false;
                session.run(tls).await.map(|_| ())
            }
            None => Ok(()),
        },
    }
}

struct Session<'a> {
    opts: &'a SinkOptions,
    stats: &'a SinkStats,
    started: Instant,
    secure: bool,
    greet: bool,
}

struct Io<S> {
    reader: BufReader<S>,
    out: Vec<u8>,
    timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Io<S> {
    fn reply(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    async fn flush(&mut self) -> SinkResult<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let w = self.reader.get_mut();
        let write = async {
            w.write_all(&self.out).await?;
            w.flush().await
        };
        match timeout(self.timeout, write).await {
            Ok(Ok(())) => {
                self.out.clear();
                Ok(())
            }
            Ok(Err(e)) => Err(format!("write: {e}")),
            Err(_) => Err("write timed out".into()),
        }
    }

    /// Reads one line into `line` (CRLF included); `false` at end of input.
    async fn line(&mut self, line: &mut Vec<u8>) -> SinkResult<bool> {
        line.clear();
        loop {
            if self.reader.buffer().is_empty() {
                self.flush().await?;
            }
            let buf = match timeout(self.timeout, self.reader.fill_buf()).await {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => return Err(format!("read: {e}")),
                Err(_) => return Err("read timed out".into()),
            };
            if buf.is_empty() {
                return Ok(false);
            }
            let (n, done) = match memchr::memchr(b'\n', buf) {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            line.extend_from_slice(&buf[..n]);
            self.reader.consume(n);
            if line.len() > MAX_COMMAND {
                return Err("command line too long".into());
            }
            if done {
                return Ok(true);
            }
        }
    }

    /// Discards DATA content through CRLF.CRLF; returns its length.
    async fn data(&mut self) -> SinkResult<u64> {
        self.flush().await?;
        let mut scan = DataEnd::new();
        let mut size = 0u64;
        loop {
            let buf = match timeout(self.timeout, self.reader.fill_buf()).await {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => return Err(format!("read in DATA: {e}")),
                Err(_) => return Err("read in DATA timed out".into()),
            };
            if buf.is_empty() {
                return Err("connection closed in DATA".into());
            }
            let (n, done) = match scan.scan(buf) {
                Some(n) => (n, true),
                None => (buf.len(), false),
            };
            self.reader.consume(n);
            size += n as u64;
            if done {
                return Ok(size.saturating_sub(3));
            }
        }
    }
}

impl Session<'_> {
    /// Serves commands until QUIT or end of input; `Some(stream)` when the
    /// client asked for STARTTLS and the stream should be upgraded.
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: S) -> SinkResult<Option<S>> {
        let mut io = Io {
            reader: BufReader::with_capacity(64 * 1024, stream),
            out: Vec::new(),
            timeout: self.opts.timeout,
        };
        let host = &self.opts.hostname;
        if self.greet {
            io.reply(&format!("220 {host} ESMTP portcullis-load sink"));
        }
        let (mut in_tx, mut rcpts) = (false, 0u64);
        let mut line = Vec::with_capacity(256);
        while io.line(&mut line).await? {
            let cmd = String::from_utf8_lossy(line.trim_ascii_end()).into_owned();
            let verb = cmd.split(' ').next().unwrap_or("").to_ascii_uppercase();
            match verb.as_str() {
                "EHLO" => {
                    in_tx = false;
                    let mut caps = vec![format!("{host} greets you")];
                    if self.opts.pipelining {
                        caps.push("PIPELINING".into());
                    }
                    caps.extend(["8BITMIME".into(), format!("SIZE {}", self.opts.max_size)]);
                    caps.extend(["ENHANCEDSTATUSCODES".into(), "AUTH PLAIN LOGIN".into()]);
                    if self.opts.tls.is_some() && !self.secure {
                        caps.push("STARTTLS".into());
                    }
                    let last = caps.len() - 1;
                    for (i, c) in caps.iter().enumerate() {
                        io.reply(&format!("250{}{c}", if i == last { ' ' } else { '-' }));
                    }
                }
                "HELO" => io.reply(&format!("250 {host}")),
                "STARTTLS" if self.opts.tls.is_some() && !self.secure => {
                    io.reply("220 2.0.0 Ready to start TLS");
                    io.flush().await?;
                    if !io.reader.buffer().is_empty() {
                        return Err("data pipelined after STARTTLS".into());
                    }
                    return Ok(Some(io.reader.into_inner()));
                }
                "STARTTLS" => io.reply("503 5.5.1 TLS not available or already active"),
                "AUTH" => self.auth(&cmd, &mut io, &mut line).await?,
                "MAIL" => {
                    let n = self.stats.mail_commands.fetch_add(1, Ordering::Relaxed) + 1;
                    let every = self.opts.reject_mail_every;
                    if every > 0 && n.is_multiple_of(every) {
                        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                        io.reply("451 4.7.1 Sink: simulated limit, try again later");
                    } else {
                        (in_tx, rcpts) = (true, 0);
                        io.reply("250 2.1.0 Ok");
                    }
                }
                "RCPT" if in_tx => {
                    rcpts += 1;
                    io.reply("250 2.1.5 Ok");
                }
                "RCPT" => io.reply("503 5.5.1 Error: need MAIL command"),
                "DATA" if in_tx && rcpts > 0 => {
                    io.reply("354 End data with <CR><LF>.<CR><LF>");
                    let size = io.data().await?;
                    in_tx = false;
                    if size > self.opts.max_size {
                        io.reply("552 5.3.4 Message size exceeds fixed limit");
                    } else {
                        self.stats.message_accepted(self.started, rcpts, size);
                        io.reply("250 2.0.0 Ok: discarded by sink");
                    }
                }
                "DATA" => io.reply("554 5.5.1 Error: no valid recipients"),
                "RSET" => {
                    in_tx = false;
                    io.reply("250 2.0.0 Ok");
                }
                "NOOP" => io.reply("250 2.0.0 Ok"),
                "VRFY" => io.reply("252 2.0.0 Send some mail, I'll try my best"),
                "QUIT" => {
                    io.reply("221 2.0.0 Bye");
                    io.flush().await?;
                    return Ok(None);
                }
                _ => io.reply("500 5.5.2 Error: command not recognized"),
            }
        }
        Ok(None)
    }

    /// Accepts any credentials for PLAIN (with or without initial response) and LOGIN.
    async fn auth<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        cmd: &str,
        io: &mut Io<S>,
        line: &mut Vec<u8>,
    ) -> SinkResult<()> {
        let mut words = cmd.split(' ').skip(1);
        let mech = words.next().unwrap_or("").to_ascii_uppercase();
        let initial = words.next().is_some();
        let prompts: &[&str] = match (mech.as_str(), initial) {
            ("PLAIN", true) => &[],
            ("PLAIN", false) => &["334 "],
            ("LOGIN", _) => &["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6"],
            _ => {
                io.reply("504 5.5.4 Unrecognized authentication type");
                return Ok(());
            }
        };
        for prompt in prompts {
            io.reply(prompt);
            if !io.line(line).await? {
                return Err("connection closed in AUTH".into());
            }
            if line.trim_ascii() == b"*" {
                io.reply("501 5.0.0 Authentication cancelled");
                return Ok(());
            }
        }
        io.reply("235 2.7.0 Authentication successful");
        Ok(())
    }
}
