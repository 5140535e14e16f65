//! The UDP and TCP listeners.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;

use crate::zone::{Disposition, MAX_UDP_PAYLOAD, Transport, Zone, handle};

/// Idle limit for one TCP read or write.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Queries answered on one TCP connection before we close it.
const TCP_MAX_MESSAGES: usize = 1000;
/// Concurrent TCP connections; further ones are closed at once.
const TCP_MAX_CONNECTIONS: usize = 64;
/// Attempts at finding a port free for both UDP and TCP.
const BIND_ATTEMPTS: usize = 10;

/// State shared by the handle and the listener tasks.
#[derive(Debug)]
struct Shared {
    zone: RwLock<Arc<Zone>>,
    queries: AtomicU64,
}

impl Shared {
    fn zone(&self) -> Arc<Zone> {
        Arc::clone(&self.zone.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Answers one packet and counts it if it was a well-formed query.
    fn handle(&self, packet: &[u8], transport: Transport) -> Option<Vec<u8>> {
        match handle(&self.zone(), packet, transport) {
            Disposition::Answer(bytes) => {
                self.queries.fetch_add(1, Ordering::Relaxed);
                Some(bytes)
            }
            Disposition::Silent => {
                self.queries.fetch_add(1, Ordering::Relaxed);
                None
            }
            Disposition::Malformed(reply) => reply,
            Disposition::Ignore => None,
        }
    }
}

/// A running authoritative DNS server on `127.0.0.1`, UDP and TCP on the same port.
///
/// It answers every name from its [`Zone`] (it is authoritative for the whole tree) and never
/// recurses. Dropping it stops its tasks; it must be started and dropped inside a tokio runtime.
#[derive(Debug)]
pub struct TestDns {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl TestDns {
    /// Binds UDP on `127.0.0.1:0`, then TCP on the same port (retrying with a fresh port if
    /// TCP's is taken), and starts serving `zone`.
    pub async fn start(zone: Zone) -> io::Result<TestDns> {
        let (udp, tcp) = bind_pair().await?;
        let addr = udp.local_addr()?;
        let shared = Arc::new(Shared {
            zone: RwLock::new(Arc::new(zone)),
            queries: AtomicU64::new(0),
        });
        let tasks = vec![
            tokio::spawn(udp_loop(udp, Arc::clone(&shared))),
            tokio::spawn(tcp_loop(tcp, Arc::clone(&shared))),
        ];
        Ok(TestDns {
            addr,
            shared,
            tasks,
        })
    }

    /// The address to send queries to (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the records served, effective for the next query.
    pub fn set_zone(&self, zone: Zone) {
        *self
            .shared
            .zone
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(zone);
    }

    /// Well-formed queries received so far, over both transports (including the ones
    /// deliberately left unanswered by [`Zone::silent`]; malformed packets are not counted).
    pub fn queries(&self) -> u64 {
        self.shared.queries.load(Ordering::Relaxed)
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        // Aborting the TCP task drops its JoinSet, which aborts the connection tasks.
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn bind_pair() -> io::Result<(UdpSocket, TcpListener)> {
    let mut last_err = io::Error::new(io::ErrorKind::AddrInUse, "no free port");
    for _ in 0..BIND_ATTEMPTS {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = udp.local_addr()?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last_err = e,
        }
    }
    Err(last_err)
}

async fn udp_loop(socket: UdpSocket, shared: Arc<Shared>) {
    let mut buf = vec![0u8; MAX_UDP_PAYLOAD];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(_) => {
                // E.g. ICMP errors surfacing on some platforms; do not spin.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let Some(packet) = buf.get(..len) else {
            continue;
        };
        if let Some(reply) = shared.handle(packet, Transport::Udp) {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

async fn tcp_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        if connections.len() >= TCP_MAX_CONNECTIONS {
            continue; // dropping `stream` closes it
        }
        connections.spawn(tcp_connection(stream, Arc::clone(&shared)));
    }
}

/// Serves length-prefixed DNS messages (RFC 1035 §4.2.2) until EOF, an error or idleness.
async fn tcp_connection(mut stream: TcpStream, shared: Arc<Shared>) {
    for _ in 0..TCP_MAX_MESSAGES {
        let mut len = [0u8; 2];
        if !matches!(
            timeout(TCP_IDLE, stream.read_exact(&mut len)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let len = usize::from(u16::from_be_bytes(len));
        let mut packet = vec![0u8; len];
        if !matches!(
            timeout(TCP_IDLE, stream.read_exact(&mut packet)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let Some(reply) = shared.handle(&packet, Transport::Tcp) else {
            continue;
        };
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            continue; // cannot happen: Transport::Tcp responses are capped at 65535 bytes
        };
        let mut frame = Vec::with_capacity(reply.len() + 2);
        frame.extend_from_slice(&reply_len.to_be_bytes());
        frame.extend_from_slice(&reply);
        if !matches!(
            timeout(TCP_IDLE, stream.write_all(&frame)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}
