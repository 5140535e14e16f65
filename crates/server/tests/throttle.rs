//! Per-IP throttles (issue 5) over real sockets: a flood of connections from
//! one IP gets 421 4.7.0 at the greeting while another IP is unaffected; the
//! smtp listener's per-IP message rate answers 451 4.7.1 at MAIL; trusted
//! networks are exempt. Loopback sources 127.0.0.2/3 model other clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use portcullis_server::Server;
use portcullis_server::config::{Config, ListenerRole};
use portcullis_store::{SqliteStore, Store, password};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;

async fn start(
    config: Config,
    dir: &std::path::Path,
) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let store = SqliteStore::open(&dir.join("portcullis.db")).await.unwrap();
    let hash = password::hash_password("correct horse battery").unwrap();
    store
        .add_account("alice@example.com", &hash, "standard")
        .await
        .unwrap();
    let server = Server::bind(Arc::new(config), Arc::new(store))
        .await
        .unwrap();
    let addr = server.local_addr(ListenerRole::Smtp).unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .run(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    (addr, tx, task)
}

fn config(dir: &std::path::Path) -> Config {
    let mut config = Config::default_config();
    // Mail stays queued: these tests are not about delivery.
    config.delivery.enabled = false;
    config.data_dir = dir.to_path_buf();
    config.hostname = "mx.test".into();
    for role in ListenerRole::ALL {
        config.listeners.get_mut(role).address = "127.0.0.1:0".parse().unwrap();
    }
    config
}

struct Client {
    reader: BufReader<tokio::io::ReadHalf<TcpStream>>,
    writer: tokio::io::WriteHalf<TcpStream>,
}

impl Client {
    async fn connect(from: [u8; 4], to: SocketAddr) -> Client {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(IpAddr::from(from), 0)).unwrap();
        let stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(to))
            .await
            .unwrap()
            .unwrap();
        let (r, w) = tokio::io::split(stream);
        Client {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(5), self.reader.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        line
    }

    /// Sends a command and returns the last line of its reply.
    async fn cmd(&mut self, text: &str) -> String {
        self.writer
            .write_all(format!("{text}\r\n").as_bytes())
            .await
            .unwrap();
        loop {
            let l = self.line().await;
            if l.as_bytes().get(3) != Some(&b'-') {
                return l;
            }
        }
    }
}

#[tokio::test]
async fn connection_flood_is_throttled_per_ip() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.throttle.connections_per_minute = 60;
    c.throttle.burst = 3;
    c.security.trusted_networks = vec!["127.0.0.3/32".parse().unwrap()];
    let (addr, stop, task) = start(c, dir.path()).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut client = Client::connect([127, 0, 0, 1], addr).await;
        assert!(client.line().await.starts_with("220 "));
        open.push(client);
    }
    let mut flooded = Client::connect([127, 0, 0, 1], addr).await;
    let greeting = flooded.line().await;
    assert!(greeting.starts_with("421 4.7.0"), "{greeting}");
    // Another IP is not affected, and trusted networks are exempt.
    let mut other = Client::connect([127, 0, 0, 2], addr).await;
    assert!(other.line().await.starts_with("220 "));
    for _ in 0..5 {
        let mut trusted = Client::connect([127, 0, 0, 3], addr).await;
        assert!(trusted.line().await.starts_with("220 "));
    }
    drop(open);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(40), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn smtp_message_rate_is_451_at_mail() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.throttle.smtp_messages_per_minute = 2;
    c.throttle.burst = 2;
    let (addr, stop, task) = start(c, dir.path()).await;
    let mut client = Client::connect([127, 0, 0, 1], addr).await;
    client.line().await;
    assert!(client.cmd("EHLO a.example").await.starts_with("250 "));
    for _ in 0..2 {
        assert!(
            client
                .cmd("MAIL FROM:<x@example.net>")
                .await
                .starts_with("250 2.1.0")
        );
        assert!(client.cmd("RSET").await.starts_with("250"));
    }
    let refused = client.cmd("MAIL FROM:<x@example.net>").await;
    assert!(
        refused.starts_with("451 4.7.1 Too many messages from your address; try again in"),
        "{refused}"
    );
    let mut other = Client::connect([127, 0, 0, 2], addr).await;
    other.line().await;
    assert!(other.cmd("EHLO b.example").await.starts_with("250 "));
    assert!(
        other
            .cmd("MAIL FROM:<y@example.net>")
            .await
            .starts_with("250 2.1.0")
    );
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(40), task)
        .await
        .unwrap()
        .unwrap();
}
