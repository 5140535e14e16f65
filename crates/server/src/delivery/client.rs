//! The outbound SMTP (and LMTP) client: greeting, EHLO, STARTTLS, AUTH,
//! pipelined MAIL/RCPT/DATA with per-recipient results, streamed dot-stuffed
//! bodies, timeouts per RFC 5321 4.5.3.2 and bounded reply reading.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

/// Longest reply line we read, and most lines in one reply.
const MAX_REPLY_LINE: usize = 4096;
const MAX_REPLY_LINES: usize = 100;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An SMTP reply as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The text lines, without the code and separator.
    pub lines: Vec<String>,
}

impl Reply {
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
    pub fn is_temporary(&self) -> bool {
        (400..500).contains(&self.code)
    }
    /// The enhanced status code (RFC 3463) at the start of the first line.
    pub fn enhanced(&self) -> Option<String> {
        let first = self.lines.first()?;
        let token = first.split_whitespace().next()?;
        let parts: Vec<&str> = token.split('.').collect();
        let ok = parts.len() == 3
            && matches!(parts[0], "2" | "4" | "5")
            && parts[1..]
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
        ok.then(|| token.to_owned())
    }
    /// One line: `550 5.1.1 user unknown` (continuation lines joined with spaces).
    pub fn text(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" "))
            .trim_end()
            .to_owned()
    }
}

/// Why a connection or a transaction did not complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Worth retrying later (4xx, network, timeout) vs permanent (5xx).
    pub temporary: bool,
    /// Enhanced status code for the DSN (`4.4.1`, `5.7.0`...).
    pub status: String,
    /// What to show in the queue and the DSN.
    pub text: String,
    /// Whether the remote host answered (the text is its reply).
    pub remote: bool,
}

impl Failure {
    pub fn temporary(status: &str, text: impl Into<String>) -> Failure {
        Failure {
            temporary: true,
            status: status.to_owned(),
            text: text.into(),
            remote: false,
        }
    }
    pub fn permanent(status: &str, text: impl Into<String>) -> Failure {
        Failure {
            temporary: false,
            status: status.to_owned(),
            text: text.into(),
            remote: false,
        }
    }
    /// A failure carried by a remote reply.
    pub fn from_reply(reply: &Reply, stage: &str) -> Failure {
        let temporary = !(500..600).contains(&reply.code);
        let status = reply
            .enhanced()
            .unwrap_or_else(|| if temporary { "4.0.0" } else { "5.0.0" }.to_owned());
        Failure {
            temporary,
            status,
            text: format!("{} (in reply to {stage})", reply.text()),
            remote: true,
        }
    }
}

/// What the peer supports (from its EHLO reply).
#[derive(Clone, Debug, Default)]
pub struct Capabilities {
    pub starttls: bool,
    pub pipelining: bool,
    pub eightbitmime: bool,
    pub smtputf8: bool,
    pub size: Option<u64>,
    pub auth: Vec<String>,
}

impl Capabilities {
    fn parse(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let Some(kw) = words.next() else { continue };
            match kw.to_ascii_uppercase().as_str() {
                "STARTTLS" => caps.starttls = true,
                "PIPELINING" => caps.pipelining = true,
                "8BITMIME" => caps.eightbitmime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "SIZE" => caps.size = words.next().and_then(|n| n.parse().ok()).filter(|n| *n > 0),
                "AUTH" => caps.auth = words.map(|w| w.to_ascii_uppercase()).collect(),
                _ => {}
            }
        }
        caps
    }
}

/// How to treat TLS on this connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// STARTTLS when offered; plain otherwise.
    Opportunistic,
    /// STARTTLS or fail (temporary).
    Required,
    /// TLS from the first byte (port 465).
    Implicit,
}

/// Settings of one connection.
#[derive(Clone)]
pub struct ClientOptions {
    pub helo_name: String,
    pub tls: TlsMode,
    /// Verify the certificate against these roots and the host name; `None`
    /// = accept any certificate (opportunistic MX-to-MX encryption).
    pub verify: Option<Arc<ClientConfig>>,
    pub lmtp: bool,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub data_block_timeout: Duration,
    pub data_done_timeout: Duration,
    /// Login for smarthost mode.
    pub auth: Option<(String, Arc<Zeroizing<String>>)>,
}

/// An envelope to send.
pub struct Envelope<'a> {
    pub from: &'a str,
    pub recipients: &'a [String],
    pub size: u64,
    pub eight_bit: bool,
    pub smtputf8: bool,
}

/// Per-recipient results of one transaction: `Ok(reply)` when accepted (and,
/// with LMTP, delivered), `Err` otherwise.
pub type RecipientResults = Vec<Result<Reply, Failure>>;

/// An open SMTP session to one host.
pub struct Client {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    pub caps: Capabilities,
    /// The host name we connected to (for the DSN's Remote-MTA).
    pub host: String,
    /// TLS version and cipher, when encrypted.
    pub tls: Option<String>,
    opts: ClientOptions,
    /// A transaction failed mid-way; the connection should not be reused.
    broken: bool,
}

/// The TLS client config of opportunistic encryption.
pub fn opportunistic_tls() -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .dangerous()
        // MX hosts rarely have a certificate that verifies, and
        // opportunistic TLS (RFC 7435) still defeats passive eavesdropping.
        .with_custom_certificate_verifier(Arc::new(crate::tls::AcceptAnyChain::new(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A verifying TLS client config: the public roots plus `extra` PEM anchors.
pub fn verifying_tls(extra: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra {
        let certs =
            CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn io_failure(what: &str, host: &str, e: &std::io::Error) -> Failure {
    Failure::temporary("4.4.2", format!("{what} {host}: {e}"))
}

impl Client {
    /// Connects, reads the greeting, says EHLO (LHLO), upgrades to TLS as the
    /// options say and logs in when asked.
    pub async fn connect(
        addr: SocketAddr,
        host: &str,
        opts: ClientOptions,
        tls_config: &Arc<ClientConfig>,
    ) -> Result<Client, Failure> {
        let tcp = match tokio::time::timeout(opts.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(Failure::temporary(
                    "4.4.1",
                    format!("cannot connect to {host} [{addr}]: {e}"),
                ));
            }
            Err(_) => {
                return Err(Failure::temporary(
                    "4.4.1",
                    format!("connection to {host} [{addr}] timed out"),
                ));
            }
        };
        let _ = tcp.set_nodelay(true);
        let mut client = Client {
            io: Box::new(tcp),
            buf: Vec::new(),
            caps: Capabilities::default(),
            host: host.to_owned(),
            tls: None,
            opts,
            broken: false,
        };
        if client.opts.tls == TlsMode::Implicit {
            client.upgrade(tls_config).await?;
        }
        let greeting = client
            .read_reply(client.opts.command_timeout, "greeting")
            .await?;
        if greeting.code != 220 {
            return Err(Failure::from_reply(&greeting, "the greeting"));
        }
        client.hello().await?;
        if client.tls.is_none() {
            let want = client.opts.tls == TlsMode::Required || client.opts.verify.is_some();
            if client.caps.starttls {
                client.send_line("STARTTLS").await?;
                let r = client
                    .read_reply(client.opts.command_timeout, "STARTTLS")
                    .await?;
                if r.code != 220 {
                    if want {
                        return Err(Failure::from_reply(&r, "STARTTLS"));
                    }
                } else {
                    client.upgrade(tls_config).await?;
                    client.hello().await?;
                }
            } else if want {
                return Err(Failure::temporary(
                    "4.7.5",
                    format!(
                        "{host} does not offer STARTTLS and TLS is required for this destination"
                    ),
                ));
            }
        }
        if let Some((user, password)) = client.opts.auth.clone() {
            client.login(&user, &password).await?;
        }
        Ok(client)
    }

    async fn hello(&mut self) -> Result<(), Failure> {
        let verb = if self.opts.lmtp { "LHLO" } else { "EHLO" };
        let line = format!("{verb} {}", self.opts.helo_name);
        self.send_line(&line).await?;
        let r = self.read_reply(self.opts.command_timeout, verb).await?;
        if r.code == 250 {
            self.caps = Capabilities::parse(&r);
            return Ok(());
        }
        if self.opts.lmtp || !(500..600).contains(&r.code) {
            return Err(Failure::from_reply(&r, verb));
        }
        // RFC 5321 3.2: fall back to HELO for servers without ESMTP.
        self.send_line(&format!("HELO {}", self.opts.helo_name))
            .await?;
        let r = self.read_reply(self.opts.command_timeout, "HELO").await?;
        if r.code != 250 {
            return Err(Failure::from_reply(&r, "HELO"));
        }
        self.caps = Capabilities::default();
        Ok(())
    }

    async fn upgrade(&mut self, tls_config: &Arc<ClientConfig>) -> Result<(), Failure> {
        if !self.buf.is_empty() {
            // Bytes after the 220 to STARTTLS: a command-injection attempt.
            return Err(Failure::temporary(
                "4.7.0",
                format!("{} sent data after its STARTTLS reply", self.host),
            ));
        }
        let config = self
            .opts
            .verify
            .clone()
            .unwrap_or_else(|| Arc::clone(tls_config));
        let name = ServerName::try_from(self.host.clone()).map_err(|_| {
            Failure::temporary(
                "4.7.0",
                format!("{} is not a valid TLS server name", self.host),
            )
        })?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let io = std::mem::replace(&mut self.io, Box::new(tokio::io::duplex(1).0));
        let tls = tokio::time::timeout(self.opts.command_timeout, connector.connect(name, io))
            .await
            .map_err(|_| {
                Failure::temporary(
                    "4.7.0",
                    format!("TLS handshake with {} timed out", self.host),
                )
            })?
            .map_err(|e| {
                Failure::temporary(
                    "4.7.0",
                    format!("TLS handshake with {} failed: {e}", self.host),
                )
            })?;
        let (_, conn) = tls.get_ref();
        self.tls = Some(
            format!(
                "{:?} {:?}",
                conn.protocol_version()
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_default(),
                conn.negotiated_cipher_suite()
                    .map(|c| format!("{:?}", c.suite()))
                    .unwrap_or_default()
            )
            .replace('"', ""),
        );
        self.io = Box::new(tls);
        Ok(())
    }

    async fn login(&mut self, user: &str, password: &Zeroizing<String>) -> Result<(), Failure> {
        if self.tls.is_none() {
            return Err(Failure::temporary(
                "4.7.0",
                format!("refusing to send credentials to {} without TLS", self.host),
            ));
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let (cmd, second): (Zeroizing<String>, Option<Zeroizing<String>>) =
            if self.caps.auth.iter().any(|m| m == "PLAIN") || self.caps.auth.is_empty() {
                let mut raw = Zeroizing::new(Vec::new());
                raw.push(0);
                raw.extend_from_slice(user.as_bytes());
                raw.push(0);
                raw.extend_from_slice(password.as_bytes());
                (
                    Zeroizing::new(format!("AUTH PLAIN {}", b64.encode(&*raw))),
                    None,
                )
            } else if self.caps.auth.iter().any(|m| m == "LOGIN") {
                (
                    Zeroizing::new(format!("AUTH LOGIN {}", b64.encode(user))),
                    Some(Zeroizing::new(b64.encode(password.as_bytes()))),
                )
            } else {
                return Err(Failure::temporary(
                    "4.7.0",
                    format!("{} offers neither AUTH PLAIN nor LOGIN", self.host),
                ));
            };
        self.send_line(&cmd).await?;
        let mut r = self.read_reply(self.opts.command_timeout, "AUTH").await?;
        if let (334, Some(pw)) = (r.code, second) {
            self.send_line(&pw).await?;
            r = self.read_reply(self.opts.command_timeout, "AUTH").await?;
        }
        if r.code != 235 {
            // Our credentials are wrong: retrying later is the right thing
            // (an admin fixes them); never bounce the customer's mail for it.
            let mut f = Failure::from_reply(&r, "AUTH");
            f.temporary = true;
            if f.status.starts_with('5') {
                f.status.replace_range(0..1, "4");
            }
            return Err(f);
        }
        Ok(())
    }

    /// Whether the connection can carry another transaction.
    pub fn reusable(&self) -> bool {
        !self.broken
    }

    /// Sends one message. `Err` is a failure of the whole transaction (all
    /// recipients); `Ok` carries one result per recipient.
    pub async fn send(
        &mut self,
        env: &Envelope<'_>,
        body: impl tokio::io::AsyncRead + Unpin,
    ) -> Result<RecipientResults, Failure> {
        if env.eight_bit && !self.caps.eightbitmime {
            return Err(Failure::permanent(
                "5.6.3",
                format!(
                    "{} does not support 8BITMIME and the message contains 8-bit data",
                    self.host
                ),
            ));
        }
        if env.smtputf8 && !self.caps.smtputf8 {
            return Err(Failure::permanent(
                "5.6.7",
                format!(
                    "{} does not support SMTPUTF8 and the message has non-ASCII addresses",
                    self.host
                ),
            ));
        }
        if let Some(max) = self.caps.size
            && env.size > max
        {
            return Err(Failure::permanent(
                "5.3.4",
                format!(
                    "message of {} bytes exceeds {}'s limit of {max} bytes",
                    env.size, self.host
                ),
            ));
        }
        let mut mail = format!("MAIL FROM:<{}>", env.from);
        if self.caps.size.is_some() || self.caps.pipelining {
            mail.push_str(&format!(" SIZE={}", env.size));
        }
        if env.eight_bit {
            mail.push_str(" BODY=8BITMIME");
        }
        if env.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        let rcpts: Vec<String> = env
            .recipients
            .iter()
            .map(|r| format!("RCPT TO:<{r}>"))
            .collect();
        self.broken = true;
        let (mail_reply, rcpt_replies, data_reply) = if self.caps.pipelining {
            let mut batch = String::with_capacity(64 * (rcpts.len() + 2));
            batch.push_str(&mail);
            batch.push_str("\r\n");
            for r in &rcpts {
                batch.push_str(r);
                batch.push_str("\r\n");
            }
            batch.push_str("DATA\r\n");
            self.write_all(batch.as_bytes()).await?;
            let m = self
                .read_reply(self.opts.command_timeout, "MAIL FROM")
                .await?;
            let mut rr = Vec::with_capacity(rcpts.len());
            for _ in &rcpts {
                rr.push(
                    self.read_reply(self.opts.command_timeout, "RCPT TO")
                        .await?,
                );
            }
            let d = self
                .read_reply(self.opts.data_block_timeout, "DATA")
                .await?;
            (m, rr, Some(d))
        } else {
            self.send_line(&mail).await?;
            let m = self
                .read_reply(self.opts.command_timeout, "MAIL FROM")
                .await?;
            let mut rr = Vec::new();
            if m.is_positive() {
                for r in &rcpts {
                    self.send_line(r).await?;
                    rr.push(
                        self.read_reply(self.opts.command_timeout, "RCPT TO")
                            .await?,
                    );
                }
            }
            let any = rr.iter().any(Reply::is_positive);
            let d = if any {
                self.send_line("DATA").await?;
                Some(
                    self.read_reply(self.opts.data_block_timeout, "DATA")
                        .await?,
                )
            } else {
                None
            };
            (m, rr, d)
        };
        if !mail_reply.is_positive() {
            if data_reply.as_ref().is_some_and(|d| d.code == 354) {
                self.write_all(b".\r\n").await?;
                let _ = self
                    .read_reply(self.opts.data_done_timeout, "end of data")
                    .await?;
            }
            self.reset().await;
            return Err(Failure::from_reply(&mail_reply, "MAIL FROM"));
        }
        let mut results: RecipientResults = rcpt_replies
            .iter()
            .map(|r| {
                if r.is_positive() {
                    Ok(r.clone())
                } else {
                    Err(Failure::from_reply(r, "RCPT TO"))
                }
            })
            .collect();
        let accepted: Vec<usize> = (0..results.len()).filter(|i| results[*i].is_ok()).collect();
        let data_reply = match data_reply {
            Some(d) => d,
            None => {
                self.reset().await;
                return Ok(results);
            }
        };
        if data_reply.code != 354 {
            self.reset().await;
            if accepted.is_empty() {
                return Ok(results);
            }
            let f = Failure::from_reply(&data_reply, "DATA");
            for i in &accepted {
                results[*i] = Err(f.clone());
            }
            return Ok(results);
        }
        if accepted.is_empty() {
            // A server that said 354 with no recipient (RFC 2920 says it
            // should not): end the empty transaction.
            self.write_all(b".\r\n").await?;
            let _ = self
                .read_reply(self.opts.data_done_timeout, "end of data")
                .await?;
            self.reset().await;
            return Ok(results);
        }
        self.stream_body(body, env.size).await?;
        if self.opts.lmtp {
            // RFC 2033: one reply per accepted recipient.
            for i in &accepted {
                let r = self
                    .read_reply(self.opts.data_done_timeout, "end of data")
                    .await?;
                results[*i] = if r.is_positive() {
                    Ok(r)
                } else {
                    Err(Failure::from_reply(&r, "end of data"))
                };
            }
        } else {
            let r = self
                .read_reply(self.opts.data_done_timeout, "end of data")
                .await?;
            if !r.is_positive() {
                let f = Failure::from_reply(&r, "end of data");
                for i in &accepted {
                    results[*i] = Err(f.clone());
                }
            } else {
                for i in &accepted {
                    results[*i] = Ok(r.clone());
                }
            }
        }
        self.broken = false;
        Ok(results)
    }

    async fn reset(&mut self) {
        if self.send_line("RSET").await.is_ok()
            && let Ok(r) = self.read_reply(self.opts.command_timeout, "RSET").await
            && r.code == 250
        {
            self.broken = false;
        }
    }

    /// Streams the spooled message with dot-stuffing and the final dot.
    /// `size_hint` (the spooled size) only sizes the buffers. Each chunk is
    /// written once the next read shows more follows, so the last chunk and
    /// the final dot leave in one write (one TLS record and one syscall for a
    /// small message, not two).
    async fn stream_body(
        &mut self,
        mut file: impl tokio::io::AsyncRead + Unpin,
        size_hint: u64,
    ) -> Result<(), Failure> {
        const CHUNK: usize = 64 * 1024;
        let cap = usize::try_from(size_hint)
            .unwrap_or(CHUNK)
            .saturating_add(1)
            .clamp(1024, CHUNK);
        let mut inbuf = vec![0u8; cap];
        let mut out: Vec<u8> = Vec::with_capacity(cap + cap / 32 + 8);
        let mut at_line_start = true;
        let mut last_two = [b'\r', b'\n'];
        loop {
            let n = file.read(&mut inbuf).await.map_err(|e| {
                Failure::temporary("4.3.0", format!("cannot read queued message: {e}"))
            })?;
            if n == 0 {
                break;
            }
            if !out.is_empty() {
                let t = self.opts.data_block_timeout;
                tokio::time::timeout(t, self.io.write_all(&out))
                    .await
                    .map_err(|_| {
                        Failure::temporary(
                            "4.4.2",
                            format!("timeout sending data to {}", self.host),
                        )
                    })?
                    .map_err(|e| io_failure("lost connection sending data to", &self.host, &e))?;
                out.clear();
            }
            for &b in &inbuf[..n] {
                if at_line_start && b == b'.' {
                    out.push(b'.');
                }
                out.push(b);
                at_line_start = b == b'\n';
                last_two = [last_two[1], b];
            }
        }
        out.extend_from_slice(if last_two == [b'\r', b'\n'] {
            b".\r\n"
        } else {
            b"\r\n.\r\n"
        });
        self.write_all(&out).await
    }

    /// Ends the session politely.
    pub async fn quit(mut self) {
        if self.send_line("QUIT").await.is_ok() {
            let _ = self.read_reply(Duration::from_secs(5), "QUIT").await;
        }
        let _ = self.io.shutdown().await;
    }

    async fn send_line(&mut self, line: &str) -> Result<(), Failure> {
        let mut data = Zeroizing::new(Vec::with_capacity(line.len() + 2));
        data.extend_from_slice(line.as_bytes());
        data.extend_from_slice(b"\r\n");
        self.write_all(&data).await
    }

    async fn write_all(&mut self, data: &[u8]) -> Result<(), Failure> {
        let t = self.opts.command_timeout;
        let write = async {
            self.io.write_all(data).await?;
            self.io.flush().await
        };
        tokio::time::timeout(t, write)
            .await
            .map_err(|_| Failure::temporary("4.4.2", format!("timeout writing to {}", self.host)))?
            .map_err(|e| io_failure("lost connection to", &self.host, &e))
    }

    /// Reads one complete reply (all its lines) within `timeout`.
    async fn read_reply(&mut self, timeout: Duration, stage: &str) -> Result<Reply, Failure> {
        let host = self.host.clone();
        let fut = async {
            let mut lines = Vec::new();
            loop {
                let line = self.read_line().await?;
                let bytes = line.as_bytes();
                let code = bytes
                    .get(..3)
                    .filter(|c| c.iter().all(u8::is_ascii_digit) && (b'2'..=b'5').contains(&c[0]))
                    .and_then(|c| std::str::from_utf8(c).ok())
                    .and_then(|c| c.parse::<u16>().ok());
                let Some(code) = code else {
                    return Err(Failure::temporary(
                        "4.5.0",
                        format!("{host} sent a malformed reply to {stage}"),
                    ));
                };
                let sep = bytes.get(3).copied();
                let text = line.get(4..).unwrap_or("").to_owned();
                lines.push(text);
                match sep {
                    Some(b'-') if lines.len() < MAX_REPLY_LINES => continue,
                    Some(b'-') => {
                        return Err(Failure::temporary(
                            "4.5.0",
                            format!("{host} sent a reply of more than {MAX_REPLY_LINES} lines"),
                        ));
                    }
                    Some(b' ') | None => return Ok(Reply { code, lines }),
                    Some(_) => {
                        return Err(Failure::temporary(
                            "4.5.0",
                            format!("{host} sent a malformed reply to {stage}"),
                        ));
                    }
                }
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(Failure::temporary(
                "4.4.2",
                format!("timeout waiting for {host}'s reply to {stage}"),
            )),
        }
    }

    async fn read_line(&mut self) -> Result<String, Failure> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                let text: String = String::from_utf8_lossy(&line)
                    .chars()
                    .filter(|c| !c.is_control())
                    .collect();
                return Ok(text);
            }
            if self.buf.len() > MAX_REPLY_LINE {
                return Err(Failure::temporary(
                    "4.5.0",
                    format!(
                        "{} sent a reply line longer than {MAX_REPLY_LINE} bytes",
                        self.host
                    ),
                ));
            }
            let mut chunk = [0u8; 4096];
            let n = self
                .io
                .read(&mut chunk)
                .await
                .map_err(|e| io_failure("lost connection to", &self.host, &e))?;
            if n == 0 {
                return Err(Failure::temporary(
                    "4.4.2",
                    format!("{} closed the connection", self.host),
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_codes_and_text() {
        let r = Reply {
            code: 550,
            lines: vec!["5.1.1 <x@y>: no such user".into()],
        };
        assert_eq!(r.enhanced().as_deref(), Some("5.1.1"));
        assert_eq!(r.text(), "550 5.1.1 <x@y>: no such user");
        let f = Failure::from_reply(&r, "RCPT TO");
        assert!(!f.temporary);
        assert_eq!(f.status, "5.1.1");
        let plain = Reply {
            code: 451,
            lines: vec!["try later".into()],
        };
        assert_eq!(plain.enhanced(), None);
        let f = Failure::from_reply(&plain, "MAIL FROM");
        assert!(f.temporary);
        assert_eq!(f.status, "4.0.0");
    }

    #[test]
    fn capabilities_from_ehlo() {
        let r = Reply {
            code: 250,
            lines: vec![
                "mx.example Hello".into(),
                "PIPELINING".into(),
                "SIZE 1000".into(),
                "8BITMIME".into(),
                "starttls".into(),
                "AUTH PLAIN login".into(),
            ],
        };
        let c = Capabilities::parse(&r);
        assert!(c.pipelining && c.eightbitmime && c.starttls && !c.smtputf8);
        assert_eq!(c.size, Some(1000));
        assert_eq!(c.auth, vec!["PLAIN", "LOGIN"]);
    }
}
