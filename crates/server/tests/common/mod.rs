//! Shared setup for the server integration tests: the store fixture (three
//! accounts, one local domain), a fast test configuration, a running server
//! with a oneshot shutdown, a line-oriented SMTP client, and TLS client
//! configurations that trust a given certificate.
//!
//! Every wait here is bounded: reads by [`IO_TIMEOUT`] unless a caller passes
//! its own, connects and handshakes likewise.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use portcullis_server::config::{Config, ListenerRole};
use portcullis_server::{Server, ServerError, TlsReloader};
use portcullis_store::{AccountStatus, AuthEvent, AuthEventFilter, SqliteStore, Store};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The bound on every single read, connect or handshake.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

pub const HOSTNAME: &str = "mx.test";
pub const LOCAL_DOMAIN: &str = "example.com";

pub const ALICE: &str = "alice@example.com";
pub const ALICE_PASSWORD: &str = "correct horse battery";
pub const BOB: &str = "bob@example.com";
pub const BOB_PASSWORD: &str = "bob password 2";
/// Disabled account.
pub const CAROL: &str = "carol@example.com";
pub const CAROL_PASSWORD: &str = "carol password 1";

/// Argon2id hashes of the three passwords, computed once per test binary
/// (hashing is deliberately slow).
static HASHES: OnceLock<[String; 3]> = OnceLock::new();

async fn hashes() -> &'static [String; 3] {
    if let Some(h) = HASHES.get() {
        return h;
    }
    let computed = tokio::task::spawn_blocking(|| {
        [ALICE_PASSWORD, BOB_PASSWORD, CAROL_PASSWORD]
            .map(|p| portcullis_store::password::hash_password(p).expect("hash_password"))
    })
    .await
    .expect("hashing task");
    let _ = HASHES.set(computed);
    HASHES.get().expect("hashes set")
}

/// A fresh store in a temporary directory that also serves as the data dir.
///
/// Accounts: alice and bob active, carol disabled; local domain example.com.
/// example.org is foreign.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub store: Arc<SqliteStore>,
}

impl Fixture {
    pub async fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path().join("portcullis.db")).await;
        let [alice, bob, carol] = hashes().await;
        store
            .add_account(ALICE, alice, "standard")
            .await
            .expect("add alice");
        store
            .add_account(BOB, bob, "standard")
            .await
            .expect("add bob");
        store
            .add_account(CAROL, carol, "standard")
            .await
            .expect("add carol");
        store
            .set_account_status(CAROL, AccountStatus::Disabled)
            .await
            .expect("disable carol");
        assert!(
            store
                .is_local_domain(LOCAL_DOMAIN)
                .await
                .expect("is_local_domain")
        );
        assert!(
            !store
                .is_local_domain("example.org")
                .await
                .expect("is_local_domain")
        );
        Fixture {
            dir,
            store: Arc::new(store),
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The test configuration with this fixture's data dir.
    pub fn config(&self) -> Config {
        test_config(self.data_dir())
    }

    pub fn store_dyn(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store) as Arc<dyn Store>
    }

    /// A server on this fixture's store and configuration (AUTH padded to
    /// `auth_min`), bound but not running: tests drive sessions through
    /// `Server::serve_stream`.
    pub async fn bound_server(&self, auth_min: Duration) -> Server {
        let mut config = self.config();
        config.security.auth_min_duration = auth_min;
        Server::bind(Arc::new(config), self.store_dyn())
            .await
            .expect("Server::bind")
    }

    /// A second server on `data_dir` and `store` (a restart: what it finds
    /// there is what the first one left), bound but not running.
    pub async fn bound_server_on(data_dir: &Path, store: &Arc<SqliteStore>) -> Server {
        let config = test_config(data_dir);
        Server::bind(Arc::new(config), Arc::clone(store) as Arc<dyn Store>)
            .await
            .expect("Server::bind")
    }

    /// Spool files (`spool/*.eml`; segments in `spool/seg/` not included)
    /// and leftovers in `incoming/`.
    pub fn spool_files(&self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let list = |sub: &str| -> Vec<PathBuf> {
            match std::fs::read_dir(self.data_dir().join(sub)) {
                Ok(rd) => {
                    let mut v: Vec<PathBuf> = rd
                        .filter_map(|e| e.ok())
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                        .map(|e| e.path())
                        .collect();
                    v.sort();
                    v
                }
                Err(_) => Vec::new(),
            }
        };
        (list("spool"), list("incoming"))
    }
}

/// Opens the store off the async task: the future of `SqliteStore::open` is
/// not `Send` (rustc cannot prove sqlx's `Executor` impl for every lifetime),
/// so a task that awaited it directly could not be spawned. `block_on` on a
/// blocking thread of the same runtime has no such bound, and the pool's
/// background tasks still run on this runtime.
async fn open_store(path: PathBuf) -> SqliteStore {
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || handle.block_on(SqliteStore::open(&path)))
        .await
        .expect("open task")
        .expect("SqliteStore::open")
}

/// Waits (bounded, 5 s) until the store holds at least `n` audit events
/// for `user` (they are written in batches); returns them oldest first.
pub async fn events_for(store: &dyn Store, user: &str, n: usize) -> Vec<AuthEvent> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let filter = AuthEventFilter {
            user: Some(user.to_owned()),
            ..AuthEventFilter::default()
        };
        let mut events = store.auth_events(&filter).await.expect("auth_events");
        if events.len() >= n || tokio::time::Instant::now() > deadline {
            events.reverse();
            assert!(
                events.len() >= n,
                "expected {n} audit events for {user}, got {events:?}"
            );
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The newest of at least `n` (at least 1) audit events for `user`.
pub async fn last_event(store: &dyn Store, user: &str, n: usize) -> AuthEvent {
    events_for(store, user, n.max(1))
        .await
        .pop()
        .expect("at least one event")
}

/// `Config::default_config()` made fast and local: hostname mx.test, every
/// listener on 127.0.0.1:0, auth padding 20 ms.
pub fn test_config(data_dir: &Path) -> Config {
    let mut config = Config::default_config();
    config.hostname = HOSTNAME.to_owned();
    config.data_dir = data_dir.to_path_buf();
    for role in ListenerRole::ALL {
        let l = config.listeners.get_mut(role);
        l.enabled = true;
        l.address = "127.0.0.1:0".parse().expect("address");
    }
    config.security.auth_min_duration = Duration::from_millis(20);
    // Mail stays queued unless a test is about delivery.
    config.delivery.enabled = false;
    // Inbound SPF/DKIM/DMARC would query the system resolver; the tests of
    // issue 7 turn it on with testdns.
    config.inbound.verify = false;
    config.validate().expect("test config is valid");
    config
}

/// A server running `run()` in a task, stopped through a oneshot.
pub struct Running {
    pub smtp: SocketAddr,
    pub submission: SocketAddr,
    pub submissions: SocketAddr,
    pub cert_path: PathBuf,
    pub reloader: TlsReloader,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), ServerError>>>,
}

impl Running {
    pub async fn start(config: Config, store: Arc<dyn Store>) -> Running {
        let server = Server::bind(Arc::new(config), store)
            .await
            .expect("Server::bind");
        let addr = |role| server.local_addr(role).expect("listener bound");
        let smtp = addr(ListenerRole::Smtp);
        let submission = addr(ListenerRole::Submission);
        let submissions = addr(ListenerRole::Submissions);
        let cert_path = server.certificate_path();
        let reloader = server.reloader();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        Running {
            smtp,
            submission,
            submissions,
            cert_path,
            reloader,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    pub fn addr(&self, role: ListenerRole) -> SocketAddr {
        match role {
            ListenerRole::Smtp => self.smtp,
            ListenerRole::Submission => self.submission,
            ListenerRole::Submissions => self.submissions,
        }
    }

    /// Fires the shutdown without waiting.
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Fires the shutdown and waits (at most `bound`) for `run()` to return;
    /// returns how long that took.
    pub async fn stop_within(mut self, bound: Duration) -> Duration {
        let started = Instant::now();
        self.trigger_shutdown();
        let handle = self.handle.take().expect("server task");
        match tokio::time::timeout(bound, handle).await {
            Ok(joined) => joined.expect("server task panicked").expect("run() failed"),
            Err(_) => panic!("server run() did not return within {bound:?} of shutdown"),
        }
        started.elapsed()
    }

    /// Stops the server; `run()` must return within 10 s.
    pub async fn stop(self) {
        self.stop_within(Duration::from_secs(10)).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A test that panicked before stop(): still stop the server.
        self.trigger_shutdown();
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

/// A line-oriented SMTP client over any stream. Buffered bytes are kept in
/// the struct, so the stream can be taken back (for STARTTLS) when the buffer
/// is empty.
pub struct LineClient<S> {
    io: S,
    buf: Vec<u8>,
    eof: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> LineClient<S> {
    pub fn new(io: S) -> LineClient<S> {
        LineClient {
            io,
            buf: Vec::new(),
            eof: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// The stream back; panics if unread server bytes are buffered.
    pub fn into_inner(self) -> S {
        assert!(
            self.buf.is_empty(),
            "unread server bytes before taking the stream back: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        self.io
    }

    /// The next CRLF-terminated line (without CRLF) within `within`;
    /// `Ok(None)` on EOF (a partial line at EOF is an error).
    pub async fn next_line(&mut self, within: Duration) -> Result<Option<String>, String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..pos + 2).take(pos).collect();
                return String::from_utf8(line)
                    .map(Some)
                    .map_err(|e| format!("server line is not UTF-8: {e}"));
            }
            if self.eof {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(format!(
                        "EOF after a partial line {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ))
                };
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.io.read(&mut chunk)).await {
                Err(_) => return Err(format!("no complete server line within {within:?}")),
                Ok(Err(e)) => return Err(format!("read error: {e}")),
                Ok(Ok(0)) => self.eof = true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next line within [`IO_TIMEOUT`]; panics on EOF or timeout.
    pub async fn line(&mut self) -> String {
        match self.next_line(IO_TIMEOUT).await {
            Ok(Some(l)) => l,
            Ok(None) => panic!("server closed the connection; a reply line was expected"),
            Err(e) => panic!("{e}"),
        }
    }

    /// One complete (possibly multi-line) reply; returns its lines.
    pub async fn reply(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let l = self.line().await;
            let last = l.len() < 4 || l.as_bytes()[3] == b' ';
            lines.push(l);
            if last {
                return lines;
            }
        }
    }

    /// Reads one reply and asserts its last line starts with `prefix`.
    pub async fn expect(&mut self, prefix: &str) -> Vec<String> {
        let lines = self.reply().await;
        let last = lines.last().expect("reply has a line");
        assert!(
            last.starts_with(prefix),
            "expected a reply starting with {prefix:?}, got {lines:?}"
        );
        lines
    }

    /// Sends `line` + CRLF.
    pub async fn send(&mut self, line: &str) {
        self.write_raw(format!("{line}\r\n").as_bytes()).await;
    }

    pub async fn write_raw(&mut self, bytes: &[u8]) {
        tokio::time::timeout(IO_TIMEOUT, async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        })
        .await
        .expect("write timed out")
        .expect("write failed");
    }

    /// Sends a command and reads its reply.
    pub async fn command(&mut self, line: &str, prefix: &str) -> Vec<String> {
        self.send(line).await;
        self.expect(prefix).await
    }

    /// Asserts the server closes the stream within `within` without sending
    /// anything more. A connection reset counts as closed.
    pub async fn expect_closed_within(&mut self, within: Duration) {
        match self.next_line(within).await {
            Ok(None) => {}
            Ok(Some(l)) => panic!("expected the server to close, got {l:?}"),
            Err(e) if e.contains("reset") => {}
            Err(e) => panic!("expected the server to close: {e}"),
        }
    }

    pub async fn expect_closed(&mut self) {
        self.expect_closed_within(IO_TIMEOUT).await;
    }
}

/// Connects a plain TCP client and reads the greeting.
pub async fn connect(addr: SocketAddr) -> LineClient<TcpStream> {
    let mut c = connect_no_greeting(addr).await;
    c.expect("220 mx.test ESMTP").await;
    c
}

/// Connects a plain TCP client; reads nothing.
pub async fn connect_no_greeting(addr: SocketAddr) -> LineClient<TcpStream> {
    let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect failed");
    LineClient::new(stream)
}

// ---------------------------------------------------------------------------
// TLS clients.

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The first certificate of a PEM file.
pub fn cert_from_pem_file(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path)
        .unwrap_or_else(|e| panic!("cannot read certificate {}: {e}", path.display()))
}

/// A rustls client config trusting exactly `roots`, offering `versions`,
/// without session resumption.
pub fn client_config(
    roots: &[CertificateDer<'static>],
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    for cert in roots {
        store.add(cert.clone()).expect("add root certificate");
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    // Every connection does a full handshake: a resumed session shows the
    // certificate of the session it resumes, not the one the server has now.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// A client config trusting the certificate at `path`, TLS 1.2 and 1.3.
pub fn client_config_trusting(path: &Path) -> Arc<ClientConfig> {
    client_config(&[cert_from_pem_file(path)], rustls::ALL_VERSIONS)
}

/// Runs the client handshake over `stream` for server name "localhost".
pub async fn tls_handshake(
    stream: TcpStream,
    config: Arc<ClientConfig>,
) -> Result<TlsStream<TcpStream>, String> {
    let name = ServerName::try_from("localhost")
        .expect("server name")
        .to_owned();
    match tokio::time::timeout(IO_TIMEOUT, TlsConnector::from(config).connect(name, stream)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
        Err(_) => Err("TLS handshake timed out".to_owned()),
    }
}

/// Implicit TLS (port 465 style): connect, handshake, read the greeting.
pub async fn connect_tls(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> LineClient<TlsStream<TcpStream>> {
    let tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect failed");
    let tls = tls_handshake(tcp, config)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut c = LineClient::new(tls);
    c.expect("220 mx.test ESMTP").await;
    c
}

/// The DER of the certificate the server presented on `c`.
pub fn peer_certificate(c: &LineClient<TlsStream<TcpStream>>) -> CertificateDer<'static> {
    c.get_ref()
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .expect("server presented a certificate")
        .clone()
        .into_owned()
}

// ---------------------------------------------------------------------------
// A store that fails.

impl Fixture {
    /// A second handle on the fixture's database. Closing it (see
    /// [`make_unavailable`]) makes every call on it fail with
    /// `StoreError::Unavailable` while the fixture's own handle keeps working
    /// for the test's checks: a real store that fails, rather than a
    /// hand-written `Store` mock that would break with every new trait method.
    pub async fn second_handle(&self) -> SqliteStore {
        open_store(self.data_dir().join("portcullis.db")).await
    }
}

/// Closes `store`: from now on every call on it (and its clones, such as the
/// one a server holds) fails with `StoreError::Unavailable`.
pub async fn make_unavailable(store: &SqliteStore) {
    store.close().await;
    assert!(
        matches!(
            store.credential(ALICE).await,
            Err(portcullis_store::StoreError::Unavailable(_))
        ),
        "a closed store must answer Unavailable"
    );
}

/// The body of a queued message (a file or a segment range), as text.
pub fn read_body(data_dir: &std::path::Path, spool_path: &str) -> String {
    let body = portcullis_server::spool_ref::SpoolRef::parse(spool_path)
        .unwrap_or_else(|e| panic!("{spool_path}: {e}"));
    let bytes = body
        .read_all(data_dir)
        .unwrap_or_else(|e| panic!("{spool_path}: {e}"));
    String::from_utf8(bytes).unwrap_or_else(|e| panic!("{spool_path}: {e}"))
}
