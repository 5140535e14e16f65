//! The sender's side of one SMTP connection: timed reads and writes around
//! the sans-IO [`ReplyParser`], and session setup (connect, implicit TLS or
//! STARTTLS, EHLO, AUTH PLAIN).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::reply::{Reply, ReplyError, ReplyParser};

/// Any byte stream a session can run over (TCP or TLS over TCP).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("timeout {0}")]
    Timeout(String),
    #[error("connection closed by server {0}")]
    Closed(String),
    #[error("protocol error: {0}")]
    Protocol(#[from] ReplyError),
    /// The server refused a setup step or ended the session with a reply.
    #[error("{stage} rejected: {reply}")]
    Rejected { stage: &'static str, reply: Reply },
    #[error("{0}")]
    Other(String),
}

/// One connection's stream, reply parser and reply timeout.
pub struct Conn<S> {
    io: S,
    parser: ReplyParser,
    timeout: Duration,
    rbuf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(io: S, timeout: Duration) -> Conn<S> {
        Conn {
            io,
            parser: ReplyParser::new(),
            timeout,
            rbuf: vec![0; 16 * 1024],
        }
    }

    /// Writes and flushes `data`, within the timeout.
    pub async fn send(&mut self, data: &[u8], what: &str) -> Result<(), ConnError> {
        let io = &mut self.io;
        let write = async move {
            io.write_all(data).await?;
            io.flush().await
        };
        match timeout(self.timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ConnError::Io(format!("sending {what}"), e)),
            Err(_) => Err(ConnError::Timeout(format!("sending {what}"))),
        }
    }

    /// The next complete reply, reading as needed, each read within the timeout.
    pub async fn reply(&mut self, what: &str) -> Result<Reply, ConnError> {
        loop {
            if let Some(reply) = self.parser.next_reply()? {
                return Ok(reply);
            }
            let n = match timeout(self.timeout, self.io.read(&mut self.rbuf)).await {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(ConnError::Io(format!("waiting for reply to {what}"), e)),
                Err(_) => return Err(ConnError::Timeout(format!("waiting for reply to {what}"))),
            };
            if n == 0 {
                return Err(ConnError::Closed(format!("waiting for reply to {what}")));
            }
            self.parser.feed(&self.rbuf[..n]);
        }
    }

    /// Sends a command and reads its reply; a reply outside 2xx/3xx is `Rejected`.
    pub async fn command(&mut self, line: &str, stage: &'static str) -> Result<Reply, ConnError> {
        self.send(format!("{line}\r\n").as_bytes(), stage).await?;
        let reply = self.reply(stage).await?;
        if reply.is_positive() {
            Ok(reply)
        } else {
            Err(ConnError::Rejected { stage, reply })
        }
    }

    /// Sends QUIT and waits briefly for 221; errors are ignored (the work is done).
    pub async fn quit(&mut self) {
        if self.send(b"QUIT\r\n", "QUIT").await.is_ok() {
            let _ = timeout(Duration::from_secs(2), self.reply("QUIT")).await;
        }
        let _ = timeout(Duration::from_secs(2), self.io.shutdown()).await;
    }

    /// The stream back, for a TLS upgrade. Bytes the server sent after its
    /// STARTTLS reply would be a plaintext injection: refused.
    fn into_inner(self) -> Result<S, ConnError> {
        if self.parser.has_pending() {
            return Err(ConnError::Other(
                "server sent data after its STARTTLS reply".into(),
            ));
        }
        Ok(self.io)
    }
}

/// How to set up each connection.
#[derive(Clone)]
pub struct Setup {
    pub addr: String,
    pub tls: TlsMode,
    pub tls_config: Option<Arc<ClientConfig>>,
    pub server_name: Option<ServerName<'static>>,
    pub ehlo_name: String,
    /// (user, password) for AUTH PLAIN.
    pub credentials: Option<(String, String)>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    None,
    Implicit,
    StartTls,
}

impl TlsMode {
    pub fn name(self) -> &'static str {
        match self {
            TlsMode::None => "none",
            TlsMode::Implicit => "implicit",
            TlsMode::StartTls => "starttls",
        }
    }
}

/// What the server's EHLO reply advertised that the sender uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    pub pipelining: bool,
    pub size: bool,
    pub starttls: bool,
}

impl Caps {
    fn from_ehlo(reply: &Reply) -> Caps {
        let mut caps = Caps::default();
        for kw in reply.ehlo_keywords() {
            let word = kw.split(' ').next().unwrap_or("");
            match word {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => caps.size = true,
                "STARTTLS" => caps.starttls = true,
                _ => {}
            }
        }
        caps
    }
}

/// A ready session: greeted, TLS as requested, EHLO done, authenticated.
pub async fn establish(setup: &Setup) -> Result<(Conn<Box<dyn Io>>, Caps), ConnError> {
    let tcp = match timeout(setup.timeout, TcpStream::connect(&setup.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(ConnError::Io("connect".into(), e)),
        Err(_) => return Err(ConnError::Timeout("connecting".into())),
    };
    let _ = tcp.set_nodelay(true);
    let mut conn: Conn<Box<dyn Io>> = match setup.tls {
        TlsMode::None => Conn::new(Box::new(tcp), setup.timeout),
        TlsMode::Implicit => Conn::new(Box::new(handshake(setup, tcp).await?), setup.timeout),
        TlsMode::StartTls => {
            let mut plain = Conn::new(tcp, setup.timeout);
            greeting(&mut plain).await?;
            let reply = plain
                .command(&format!("EHLO {}", setup.ehlo_name), "EHLO")
                .await?;
            if !Caps::from_ehlo(&reply).starttls {
                return Err(ConnError::Other(
                    "server does not advertise STARTTLS".into(),
                ));
            }
            let reply = plain.command("STARTTLS", "STARTTLS").await?;
            if reply.code != 220 {
                return Err(ConnError::Rejected {
                    stage: "STARTTLS",
                    reply,
                });
            }
            let tcp = plain.into_inner()?;
            Conn::new(Box::new(handshake(setup, tcp).await?), setup.timeout)
        }
    };
    if setup.tls != TlsMode::StartTls {
        greeting(&mut conn).await?;
    }
    let reply = conn
        .command(&format!("EHLO {}", setup.ehlo_name), "EHLO")
        .await?;
    let caps = Caps::from_ehlo(&reply);
    if let Some((user, password)) = &setup.credentials {
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        let reply = conn.command(&format!("AUTH PLAIN {token}"), "AUTH").await?;
        if reply.code != 235 {
            return Err(ConnError::Rejected {
                stage: "AUTH",
                reply,
            });
        }
    }
    Ok((conn, caps))
}

async fn greeting<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut Conn<S>) -> Result<(), ConnError> {
    let reply = conn.reply("greeting").await?;
    if reply.code == 220 {
        Ok(())
    } else {
        Err(ConnError::Rejected {
            stage: "greeting",
            reply,
        })
    }
}

async fn handshake(
    setup: &Setup,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnError> {
    let (Some(config), Some(name)) = (&setup.tls_config, &setup.server_name) else {
        return Err(ConnError::Other(
            "TLS requested without a TLS configuration".into(),
        ));
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
    match timeout(setup.timeout, connector.connect(name.clone(), tcp)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(ConnError::Io("TLS handshake".into(), e)),
        Err(_) => Err(ConnError::Timeout("in TLS handshake".into())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn caps_from_ehlo() {
        let reply = Reply {
            code: 250,
            lines: vec![
                "mx Hello".into(),
                "pipelining".into(),
                "SIZE 100".into(),
                "STARTTLS".into(),
            ],
        };
        assert_eq!(
            Caps::from_ehlo(&reply),
            Caps {
                pipelining: true,
                size: true,
                starttls: true
            }
        );
        let reply = Reply {
            code: 250,
            lines: vec!["mx PIPELINING".into()],
        };
        assert_eq!(Caps::from_ehlo(&reply), Caps::default());
    }

    #[tokio::test]
    async fn reply_times_out_and_detects_close() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut conn = Conn::new(client, Duration::from_millis(50));
        assert!(matches!(conn.reply("x").await, Err(ConnError::Timeout(_))));
        server.write_all(b"250-a\r\n").await.unwrap();
        drop(server);
        assert!(matches!(conn.reply("x").await, Err(ConnError::Closed(_))));
    }
}
