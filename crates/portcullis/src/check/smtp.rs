//! The socket side of the check: one SMTP client connection, plain or TLS,
//! where every read and write has a deadline. Reply parsing is in
//! `reply.rs`; this module only moves bytes.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_rustls::client::TlsStream;

use super::reply::{Reply, ReplyError, ReplyReader};

/// How many leading bytes of a connection [`Recording`] keeps.
const RECORD: usize = 256;

/// A TCP stream that remembers the first bytes it read, so a failed TLS
/// handshake can tell whether the peer spoke plain SMTP instead.
#[derive(Debug)]
pub struct Recording {
    inner: TcpStream,
    first: Vec<u8>,
}

impl Recording {
    pub fn new(inner: TcpStream) -> Recording {
        Recording {
            inner,
            first: Vec::new(),
        }
    }

    pub fn first_bytes(&self) -> &[u8] {
        &self.first
    }

    pub fn into_inner(self) -> TcpStream {
        self.inner
    }
}

impl AsyncRead for Recording {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let room = RECORD.saturating_sub(self.first.len());
            let new = &buf.filled()[before..];
            let take = new.len().min(room);
            let copied = new[..take].to_vec();
            self.first.extend_from_slice(&copied);
        }
        result
    }
}

impl AsyncWrite for Recording {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pub type Tls = TlsStream<Recording>;

/// Plain TCP, or TLS (implicit, or after STARTTLS).
pub enum Transport {
    Plain(Recording),
    Tls(Box<Tls>),
}

/// How connecting to one address ended.
#[derive(Debug)]
pub enum ConnectError {
    /// RST: the host answered, nothing listens on the port.
    Refused,
    /// No answer at all within the timeout: a firewall drops the packets.
    TimedOut,
    /// Host or network unreachable, and other errors, as text.
    Other(String),
}

pub async fn connect(addr: SocketAddr, limit: Duration) -> Result<TcpStream, ConnectError> {
    match timeout(limit, TcpStream::connect(addr)).await {
        Err(_) => Err(ConnectError::TimedOut),
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => Err(ConnectError::Refused),
        Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => Err(ConnectError::TimedOut),
        Ok(Err(e)) => Err(ConnectError::Other(e.to_string())),
    }
}

/// Why a read or write on an open connection failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoFailure {
    /// Nothing (or no complete reply) within the deadline.
    TimedOut {
        seen_any: bool,
    },
    /// The server closed the connection.
    Closed {
        seen_any: bool,
    },
    Io(String),
    Protocol(ReplyError),
}

impl std::fmt::Display for IoFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IoFailure::TimedOut { .. } => f.write_str("no reply within the timeout"),
            IoFailure::Closed { .. } => f.write_str("the server closed the connection"),
            IoFailure::Io(e) => write!(f, "network error: {e}"),
            IoFailure::Protocol(e) => write!(f, "invalid reply: {e}"),
        }
    }
}

/// An SMTP client connection.
pub struct Conn {
    transport: Transport,
    reader: ReplyReader,
    timeout: Duration,
}

impl Conn {
    pub fn new(transport: Transport, timeout: Duration) -> Conn {
        Conn {
            transport,
            reader: ReplyReader::default(),
            timeout,
        }
    }

    pub fn seen_any(&self) -> bool {
        self.reader.seen_any()
    }

    /// Reads one reply, waiting at most the connection timeout.
    pub async fn read_reply(&mut self) -> Result<Reply, IoFailure> {
        self.read_reply_until(Instant::now() + self.timeout).await
    }

    /// Reads one reply, waiting until `deadline`. On a timeout the buffered
    /// bytes stay, so the caller may wait again.
    pub async fn read_reply_until(&mut self, deadline: Instant) -> Result<Reply, IoFailure> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(reply) = self.reader.next_reply().map_err(IoFailure::Protocol)? {
                return Ok(reply);
            }
            let read = match &mut self.transport {
                Transport::Plain(s) => timeout_at(deadline, s.read(&mut chunk)).await,
                Transport::Tls(s) => timeout_at(deadline, s.read(&mut chunk)).await,
            };
            let seen_any = self.reader.seen_any();
            match read {
                Err(_) => return Err(IoFailure::TimedOut { seen_any }),
                Ok(Ok(0)) => return Err(IoFailure::Closed { seen_any }),
                Ok(Ok(n)) => self.reader.push(&chunk[..n]),
                Ok(Err(e)) if is_reset(&e) => return Err(IoFailure::Closed { seen_any }),
                Ok(Err(e)) => return Err(IoFailure::Io(e.to_string())),
            }
        }
    }

    /// Sends one command line (CRLF added).
    pub async fn send(&mut self, line: &str) -> Result<(), IoFailure> {
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        self.send_raw(&bytes).await
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), IoFailure> {
        let write = async {
            match &mut self.transport {
                Transport::Plain(s) => {
                    s.write_all(bytes).await?;
                    s.flush().await
                }
                Transport::Tls(s) => {
                    s.write_all(bytes).await?;
                    s.flush().await
                }
            }
        };
        match timeout(self.timeout, write).await {
            Err(_) => Err(IoFailure::TimedOut {
                seen_any: self.reader.seen_any(),
            }),
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if is_reset(&e) => Err(IoFailure::Closed { seen_any: true }),
            Ok(Err(e)) => Err(IoFailure::Io(e.to_string())),
        }
    }

    /// Sends a command and reads its reply.
    pub async fn command(&mut self, line: &str) -> Result<Reply, IoFailure> {
        self.send(line).await?;
        self.read_reply().await
    }

    /// Gives up the plain stream for a STARTTLS upgrade. Buffered bytes are
    /// dropped (RFC 3207 4.2: nothing before the handshake counts).
    pub fn into_plain(self) -> Option<Recording> {
        match self.transport {
            Transport::Plain(s) => Some(s),
            Transport::Tls(_) => None,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.transport, Transport::Tls(_))
    }

    /// Best-effort QUIT and close, bounded by a short deadline.
    pub async fn quit(mut self) {
        let short = self.timeout.min(Duration::from_secs(2));
        self.timeout = short;
        let _ = self.command("QUIT").await;
        let _ = timeout(short, async {
            match &mut self.transport {
                Transport::Plain(s) => s.shutdown().await,
                Transport::Tls(s) => s.shutdown().await,
            }
        })
        .await;
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}
