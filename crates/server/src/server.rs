//! Listener setup, accept loops, connection caps and graceful shutdown
//! (STYLE 10: bound listeners in, a shutdown future, a drain with a bound).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_proto::{Reply, Role};
use portcullis_store::Store;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::Instrument;

use crate::auth::{AuthService, banned_greeting_reply};
use crate::config::{Config, ListenerConfig, ListenerRole};
use crate::conn::{self, Io, Shared};
use crate::quota::{QuotaService, now_ms};
use crate::security::audit::AuditLog;
use crate::spool::Spool;
use crate::throttle::{Admission, Gcra};
use crate::tls::{TlsError, TlsManager};

/// How often active bans are re-read from the store.
const BAN_REFRESH: Duration = Duration::from_secs(30);

/// A random session id for logs and the auth audit.
fn new_session_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// How long open sessions may take to finish after shutdown is requested.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors that stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot bind {listener} listener to {address}: {source}")]
    Bind {
        listener: &'static str,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot create spool directories under {path}: {source}")]
    Spool {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Issue 9: the spool's journal could not be read or replayed.
    #[error("cannot recover the spool journal under {path}: {source}")]
    Recover {
        path: PathBuf,
        source: crate::spool::segment::RecoverError,
    },
    #[error("cannot load sending usage from the store: {0}")]
    Usage(portcullis_store::StoreError),
    #[error("delivery: {0}")]
    Delivery(#[from] crate::delivery::DeliveryError),
    #[error("cannot load bans from the store: {0}")]
    Bans(portcullis_store::StoreError),
    /// Issue 6: a JWKS file or the built-in token key could not be loaded.
    #[error("OAuth: {0}")]
    OAuth(#[from] crate::oauth::OAuthSetupError),
    /// Issue 6: CRAM-MD5 is enabled but the secret key cannot be loaded.
    #[error("secret key: {0}")]
    SecretKey(#[from] crate::secretbox::SecretKeyError),
}

pub(crate) fn proto_role(role: ListenerRole) -> Role {
    match role {
        ListenerRole::Smtp => Role::Mx,
        ListenerRole::Submission => Role::Submission,
        ListenerRole::Submissions => Role::Submissions,
    }
}

/// Reloads the TLS certificate and key from disk; new handshakes use the new
/// pair, established connections are untouched.
#[derive(Clone)]
pub struct TlsReloader {
    tls: Arc<TlsManager>,
}

impl TlsReloader {
    pub fn reload(&self) -> Result<(), ServerError> {
        self.tls.reload()?;
        Ok(())
    }
}

/// A bound, ready-to-run server.
pub struct Server {
    shared: Arc<Shared>,
    /// `None` when `[delivery] enabled = false`.
    queue: Option<Arc<crate::delivery::QueueManager>>,
    listeners: Vec<(Arc<ListenerConfig>, TcpListener)>,
    shutdown_tx: watch::Sender<bool>,
    /// Wakes the spool's segment sweeper (issue 9).
    sweep_trigger: Arc<tokio::sync::Notify>,
}

impl Server {
    /// Binds every enabled listener, opens the spool and loads (or generates)
    /// the TLS certificate.
    pub async fn bind(config: Arc<Config>, store: Arc<dyn Store>) -> Result<Server, ServerError> {
        let tls = TlsManager::load(
            config.tls.cert.as_deref(),
            config.tls.key.as_deref(),
            &config.data_dir,
            &config.hostname,
        )?;
        let mut spool =
            Spool::open(&config.data_dir, &config.spool).map_err(|source| ServerError::Spool {
                path: config.data_dir.clone(),
                source,
            })?;
        // Before anything reads the queue or the usage counts: re-record
        // the rows a crash lost (issue 9, `spool::journal`).
        spool
            .recover(&*store)
            .await
            .map_err(|source| ServerError::Recover {
                path: config.data_dir.clone(),
                source,
            })?;
        let mut listeners = Vec::new();
        for l in config.listeners.iter().filter(|l| l.enabled) {
            let socket =
                TcpListener::bind(l.address)
                    .await
                    .map_err(|source| ServerError::Bind {
                        listener: l.role.name(),
                        address: l.address,
                        source,
                    })?;
            listeners.push((Arc::new(l.clone()), socket));
        }
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        // Delivery asks for a segment sweep when it finishes messages.
        let sweep_trigger = Arc::new(tokio::sync::Notify::new());
        let queue = if config.delivery.enabled {
            Some(Arc::new(
                crate::delivery::QueueManager::new(
                    Arc::clone(&store),
                    Arc::clone(&config),
                    spool.wake_handle(),
                )
                .map_err(ServerError::Delivery)?
                .with_sweep_trigger(Arc::clone(&sweep_trigger)),
            ))
        } else {
            None
        };
        let directory = Arc::new(crate::directory::Directory::new(Arc::clone(&store)));
        let quota = QuotaService::load(Arc::clone(&store), Arc::clone(&config))
            .await
            .map_err(ServerError::Usage)?
            .with_directory(Arc::clone(&directory));
        let throttle = &config.throttle;
        let (audit, _audit_task) =
            AuditLog::start(Arc::clone(&store), Some(config.mail_log_path()));
        let auth = AuthService::new(Arc::clone(&store), &config.security, audit)
            .with_directory(Arc::clone(&directory))
            .with_tokens(
                crate::oauth::TokenValidator::new(
                    &config.oauth,
                    &config.data_dir,
                    &config.hostname,
                )?
                .map(Arc::new),
            )
            .with_secret_box(crate::secretbox::SecretBox::load_if_needed(&config)?);
        let auth = match crate::auth::load_fake_salt_key(&config.data_dir) {
            Ok(key) => auth.with_fake_salt_key(key),
            Err(e) => {
                tracing::warn!(error = %e, "no persistent SCRAM fake-salt key; using a per-process one");
                auth
            }
        };
        let bans = auth.load_bans().await.map_err(ServerError::Bans)?;
        if bans > 0 {
            tracing::info!(bans, "active bans loaded");
        }
        if let Err(e) = auth.seed_usual_ips().await {
            tracing::warn!(error = %e, "cannot restore usual login addresses from the audit");
        }
        // Issue 7: inbound SPF/DKIM/DMARC. Without a resolver, inbound mail
        // is accepted without Authentication-Results rather than refused.
        let mail_auth = if config.inbound.verify {
            match crate::mail_auth::resolver::authenticator(&config.delivery.dns_servers) {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::warn!(error = %e, "no DNS resolver: inbound mail is not verified");
                    None
                }
            }
        } else {
            None
        };
        let shared = Arc::new(Shared {
            mail_auth,
            directory,
            quota,
            mail_rate: Gcra::per_minute(throttle.smtp_messages_per_minute, throttle.burst),
            connection_rate: Gcra::per_minute(throttle.connections_per_minute, throttle.burst),
            config: Arc::clone(&config),
            auth,
            store,
            spool,
            tls: Arc::new(tls),
            hostname: config.hostname.clone(),
            max_auth_failures: config.security.max_auth_failures,
            shutdown: shutdown_rx,
        });
        Ok(Server {
            shared,
            queue,
            listeners,
            shutdown_tx,
            sweep_trigger,
        })
    }

    /// The bound address of a listener (useful with port 0).
    pub fn local_addr(&self, role: ListenerRole) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(cfg, _)| cfg.role == role)
            .and_then(|(_, l)| l.local_addr().ok())
    }

    /// Path of the certificate in use (the generated one when self-signed).
    pub fn certificate_path(&self) -> PathBuf {
        self.shared.tls.cert_path().to_path_buf()
    }

    /// Spilled submissions hashed for DKIM as they were written, since
    /// start ([`crate::spool::Spool::hashed_spills`]).
    pub fn hashed_spills(&self) -> u64 {
        self.shared.spool.hashed_spills()
    }

    /// The TLS reload handle (wire it to SIGHUP).
    pub fn reloader(&self) -> TlsReloader {
        TlsReloader {
            tls: Arc::clone(&self.shared.tls),
        }
    }

    /// Runs one session on an arbitrary stream with the settings of the `role`
    /// listener; `assume_tls` starts it as if TLS were already up. This is the
    /// entry point of the golden dialog tests (an in-memory duplex stream).
    pub async fn serve_stream<S: Io + 'static>(
        &self,
        io: S,
        role: ListenerRole,
        peer: SocketAddr,
        assume_tls: bool,
    ) {
        let Some((cfg, _)) = self.listeners.iter().find(|(c, _)| c.role == role) else {
            return;
        };
        let tls_info = assume_tls.then(|| "assumed TLS".to_owned());
        conn::serve(
            Box::new(io),
            tls_info,
            None,
            Arc::clone(&self.shared),
            Arc::clone(cfg),
            peer,
            new_session_id(),
        )
        .await;
    }

    /// Serves until `shutdown` completes, then answers `421 4.3.2` to idle
    /// sessions, lets messages in progress finish, and drains within a bound.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        let mut loops = JoinSet::new();
        let pruner = tokio::spawn({
            let shared = Arc::clone(&self.shared);
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(3600));
                loop {
                    tick.tick().await;
                    shared.quota.prune().await;
                    shared.auth.prune_audit().await;
                }
            }
        });
        let ban_refresh = tokio::spawn({
            let shared = Arc::clone(&self.shared);
            async move {
                // Picks up `portcullis ban add|remove` made while running.
                let mut tick = tokio::time::interval(BAN_REFRESH);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if let Err(e) = shared.auth.load_bans().await {
                        tracing::warn!(error = %e, "cannot refresh bans");
                    }
                }
            }
        });
        // Issue 9: deletes segments and orphan spool files no message needs.
        let sweeper = tokio::spawn(
            self.shared
                .spool
                .sweeper()
                .run(Arc::clone(&self.shared.store), self.sweep_trigger),
        );
        for (cfg, listener) in self.listeners {
            loops.spawn(accept_loop(listener, cfg, Arc::clone(&self.shared)));
        }
        let queue = self
            .queue
            .map(|q| tokio::spawn(q.run(self.shutdown_tx.subscribe())));
        shutdown.await;
        tracing::info!("shutdown requested: closing listeners and draining sessions");
        let _ = self.shutdown_tx.send(true);
        while loops.join_next().await.is_some() {}
        pruner.abort();
        ban_refresh.abort();
        sweeper.abort();
        if let Some(q) = queue {
            let _ = q.await;
        }
        // The last logins' events, before the caller closes the store.
        self.shared.auth.flush_audit().await;
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// Releases a per-IP connection slot on drop.
struct IpSlot {
    map: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl IpSlot {
    fn take(map: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut guard = map.lock().ok()?;
        let count = guard.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            map: Arc::clone(map),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Ok(mut guard) = self.map.lock()
            && let Some(count) = guard.get_mut(&self.ip)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                guard.remove(&self.ip);
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, cfg: Arc<ListenerConfig>, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut conns = JoinSet::new();
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let per_ip: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let permit = Arc::clone(&slots).try_acquire_owned().ok();
                    let slot = IpSlot::take(&per_ip, peer.ip(), cfg.max_connections_per_ip);
                    conns.spawn(connection(stream, peer, permit, slot, Arc::clone(&cfg), Arc::clone(&shared)));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, listener = cfg.role.name(), "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = async { if shutdown.wait_for(|s| *s).await.is_err() { std::future::pending::<()>().await } } => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let drained = timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            listener = cfg.role.name(),
            remaining = conns.len(),
            "drain timeout: closing remaining sessions"
        );
        conns.shutdown().await;
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    permit: Option<OwnedSemaphorePermit>,
    slot: Option<IpSlot>,
    cfg: Arc<ListenerConfig>,
    shared: Arc<Shared>,
) {
    let sid = new_session_id();
    let span =
        tracing::info_span!("session", sid = %sid, listener = cfg.role.name(), client = %peer);
    async move {
        let rate_limited = !shared.config.security.is_trusted(peer.ip())
            && shared
                .connection_rate
                .as_ref()
                .is_some_and(|g| matches!(g.check(peer.ip(), now_ms()), Admission::Limited { .. }));
        let banned = shared.auth.greeting_ban(peer.ip());
        if let Some(ban) = &banned {
            tracing::info!(network = %ban.network, "connection refused: banned network");
        }
        let reject = match (&permit, &slot) {
            _ if banned.is_some() => Some(banned_greeting_reply()),
            (None, _) => Some(Reply::too_many_connections()),
            (_, None) => Some(Reply::too_many_connections_from_ip()),
            _ if rate_limited => Some(Reply::connection_rate_limited()),
            _ => None,
        };
        if let Some(reply) = reject {
            if banned.is_none() {
                tracing::warn!(reply = %reply, "connection refused: limit reached");
            }
            let refuse = async {
                if cfg.role == ListenerRole::Submissions {
                    // RFC 8314: nothing in plaintext on the implicit-TLS port.
                    if let Ok(mut tls) = shared.tls.acceptor().accept(stream).await {
                        let _ = tls.write_all(&reply.to_bytes()).await;
                        let _ = tls.shutdown().await;
                    }
                } else {
                    let _ = stream.write_all(&reply.to_bytes()).await;
                }
            };
            let _ = timeout(Duration::from_secs(5), refuse).await;
            return;
        }
        tracing::info!("connected");
        let _ = stream.set_nodelay(true);
        if cfg.role == ListenerRole::Submissions {
            // RFC 8314: TLS starts immediately.
            match timeout(cfg.idle_timeout, shared.tls.acceptor().accept(stream)).await {
                Ok(Ok(tls)) => {
                    let info = conn::tls_description(tls.get_ref().1);
                    let binding = conn::tls_exporter(tls.get_ref().1);
                    conn::serve(Box::new(tls), Some(info), binding, shared, cfg, peer, sid).await;
                }
                Ok(Err(e)) => tracing::info!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::info!("TLS handshake timed out"),
            }
        } else {
            conn::serve(Box::new(stream), None, None, shared, cfg, peer, sid).await;
        }
        drop(permit);
        drop(slot);
    }
    .instrument(span)
    .await;
}
