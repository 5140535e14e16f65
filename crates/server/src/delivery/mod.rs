//! The queue manager: claims due recipients from the store, routes them
//! (local mailbox, smarthost, or the domain's MX hosts), delivers them with
//! connection reuse under global and per-destination caps, and records each
//! attempt. Temporary failures are retried on the configured schedule with
//! jitter until `max_age`; permanent failures and expiry produce a DSN to the
//! sender (never for a bounce). Delivery is at-least-once: recipients that
//! were in flight when the process died are retried at the next start.

pub mod client;
pub mod maildir;
pub mod mx;
mod recorder;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_proto::dsn::{DsnAction, DsnRecipient, DsnReport, build_dsn, header_block};
use portcullis_store::{DeliveryJob, DeliveryStatus, NewMessage, RecipientOutcome, Store};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use zeroize::Zeroizing;

use crate::config::{Config, DeliveryConfig, LocalTransport, TlsPolicy};
use crate::spool_ref::SpoolRef;
use client::{Client, ClientOptions, Envelope, Failure, TlsMode};
use mx::{MxHost, MxResolver};

/// Recipients claimed per round.
const CLAIM_BATCH: u32 = 1000;
/// Longest sleep between queue scans when nothing is due (picks up
/// `portcullis queue retry|bounce` made by another process).
const IDLE_SCAN: Duration = Duration::from_secs(5);
/// Delivered messages of one connection whose results may still be on their
/// way to the store while it sends the next (issue 9): the connection does
/// not wait for each group commit, only for this many to be outstanding.
const MAX_UNRECORDED: usize = 32;
/// Messages up to this size (as spooled) are read whole for delivery in one
/// blocking trip instead of being streamed through several (issue 9).
const IN_MEMORY_BODY: u64 = 128 * 1024;
/// How long a stop waits for deliveries under way before abandoning them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);
/// Alias rewrites of one recipient before we call it a loop.
const MAX_ALIAS_HOPS: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("delivery.dns_servers: cannot build the DNS resolver: {0}")]
    Resolver(String),
    #[error("TLS client setup: {0}")]
    Tls(String),
    #[error("delivery.relay_password_file: cannot read {path}: {source}")]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "delivery.relay_host needs credentials: set PORTCULLIS_RELAY_USER (or delivery.relay_user) \
         and PORTCULLIS_RELAY_PASSWORD (or delivery.relay_password_file), or neither"
    )]
    PartialCredentials,
}

/// Where a group of recipients goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Route {
    Local,
    Relay,
    Mx(String),
}

/// Runs deliveries. Create with [`QueueManager::new`], start with [`QueueManager::run`].
pub struct QueueManager {
    store: Arc<dyn Store>,
    config: Arc<Config>,
    resolver: MxResolver,
    opportunistic: Arc<rustls::ClientConfig>,
    relay_verify: Option<Arc<rustls::ClientConfig>>,
    relay_auth: Option<(String, Arc<Zeroizing<String>>)>,
    wake: Arc<Notify>,
    /// `max_connections`: outbound sessions at once, over all destinations.
    global: Arc<Semaphore>,
    per_destination: Mutex<HashMap<Route, Arc<Semaphore>>>,
    /// Group commit of results (issue 9), started on first use.
    recorder: std::sync::OnceLock<recorder::Recorder>,
    /// Told when finished messages free segment space (issue 9).
    sweep_trigger: Option<Arc<Notify>>,
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(i64::MAX)
}

fn rfc2822(unix_s: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_s)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc2822)
                .ok()
        })
        .unwrap_or_default()
}

impl QueueManager {
    /// Builds the resolver, TLS configs and smarthost credentials.
    /// `wake` is notified by the spool when a message is queued.
    pub fn new(
        store: Arc<dyn Store>,
        config: Arc<Config>,
        wake: Arc<Notify>,
    ) -> Result<QueueManager, DeliveryError> {
        let d = &config.delivery;
        let max_connections = d.max_connections;
        let resolver = MxResolver::new(&d.dns_servers).map_err(DeliveryError::Resolver)?;
        let opportunistic =
            client::opportunistic_tls().map_err(|e| DeliveryError::Tls(e.to_string()))?;
        let (relay_verify, relay_auth) = match &d.relay {
            Some(relay) => {
                let verify =
                    client::verifying_tls(relay.ca_file.as_deref()).map_err(DeliveryError::Tls)?;
                let user = std::env::var("PORTCULLIS_RELAY_USER")
                    .ok()
                    .filter(|u| !u.is_empty())
                    .or_else(|| relay.user.clone());
                let password = match std::env::var("PORTCULLIS_RELAY_PASSWORD") {
                    Ok(p) if !p.is_empty() => Some(Zeroizing::new(p)),
                    _ => match &relay.password_file {
                        Some(path) => {
                            let text = std::fs::read_to_string(path).map_err(|source| {
                                DeliveryError::PasswordFile {
                                    path: path.clone(),
                                    source,
                                }
                            })?;
                            Some(Zeroizing::new(
                                text.trim_end_matches(['\r', '\n']).to_owned(),
                            ))
                        }
                        None => None,
                    },
                };
                let auth = match (user, password) {
                    (Some(u), Some(p)) => Some((u, Arc::new(p))),
                    (None, None) => None,
                    _ => return Err(DeliveryError::PartialCredentials),
                };
                (Some(verify), auth)
            }
            None => (None, None),
        };
        Ok(QueueManager {
            store,
            config,
            resolver,
            opportunistic,
            relay_verify,
            relay_auth,
            wake,
            global: Arc::new(Semaphore::new(max_connections)),
            per_destination: Mutex::new(HashMap::new()),
            recorder: std::sync::OnceLock::new(),
            sweep_trigger: None,
        })
    }

    /// Notifies `trigger` when delivery finishes messages stored in a
    /// segment, so the spool's sweeper can delete segments no one needs.
    pub fn with_sweep_trigger(mut self, trigger: Arc<Notify>) -> QueueManager {
        self.sweep_trigger = Some(trigger);
        self
    }

    fn delivery(&self) -> &DeliveryConfig {
        &self.config.delivery
    }

    /// Delivers until `shutdown` turns true. Attempts under way at shutdown
    /// get [`SHUTDOWN_GRACE`] to finish; then they are abandoned, their
    /// recipients stay in flight and are retried at the next start
    /// (at-least-once).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        match self.store.release_in_flight().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                recipients = n,
                "retrying deliveries interrupted by the last stop"
            ),
            Err(e) => tracing::error!(error = %e, "cannot release interrupted deliveries"),
        }
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut last_prune = std::time::Instant::now() - Duration::from_secs(3600);
        loop {
            if *shutdown.borrow() {
                break;
            }
            if last_prune.elapsed() >= Duration::from_secs(3600) {
                last_prune = std::time::Instant::now();
                let keep =
                    i64::try_from(self.delivery().history_retention.as_secs()).unwrap_or(i64::MAX);
                let before = now_ms() / 1000 - keep;
                if let Err(e) = self.store.prune_done(before).await {
                    tracing::warn!(error = %e, "cannot prune delivery history");
                }
            }
            while tasks.try_join_next().is_some() {}
            let free = self.delivery().max_connections.saturating_sub(tasks.len());
            let jobs = if free == 0 {
                Vec::new()
            } else {
                match self.store.claim_due(now_ms(), CLAIM_BATCH).await {
                    Ok(jobs) => jobs,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the queue");
                        Vec::new()
                    }
                }
            };
            if jobs.is_empty() {
                let wait = if free == 0 {
                    Duration::from_millis(200)
                } else {
                    match self.store.next_due_ms().await {
                        Ok(Some(t)) => {
                            Duration::from_millis(u64::try_from((t - now_ms()).max(0)).unwrap_or(0))
                                .min(IDLE_SCAN)
                        }
                        _ => IDLE_SCAN,
                    }
                };
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(wait.max(Duration::from_millis(20))) => {}
                    _ = shutdown.changed() => {}
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                }
                continue;
            }
            let mut by_route: HashMap<Route, Vec<DeliveryJob>> = HashMap::new();
            let mut local_cache: HashMap<String, bool> = HashMap::new();
            for job in jobs {
                let route = self.route(&job.domain, &mut local_cache).await;
                by_route.entry(route).or_default().push(job);
            }
            for (route, jobs) in by_route {
                let cap = match &route {
                    Route::Mx(d) => self.delivery().max_connections_for(d),
                    Route::Relay | Route::Local => self.delivery().max_connections_per_destination,
                };
                let per_conn = self.delivery().max_messages_per_connection;
                let chunks = jobs.len().div_ceil(per_conn).max(1);
                let parts = chunks.min(cap).max(1);
                let mut buckets: Vec<Vec<DeliveryJob>> = (0..parts).map(|_| Vec::new()).collect();
                for (i, job) in jobs.into_iter().enumerate() {
                    buckets[i % parts].push(job);
                }
                let sem = self.destination_semaphore(&route, cap);
                for bucket in buckets {
                    let me = Arc::clone(&self);
                    let route = route.clone();
                    let sem = Arc::clone(&sem);
                    let global = Arc::clone(&self.global);
                    tasks.spawn(async move {
                        let Ok(_permit) = sem.acquire_owned().await else {
                            return;
                        };
                        let Ok(_global) = global.acquire_owned().await else {
                            return;
                        };
                        me.deliver_group(route, bucket).await;
                    });
                }
            }
        }
        // Let attempts under way finish (so a graceful stop does not cause
        // a second copy at the next start), within a bound.
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::info!(
                tasks = tasks.len(),
                "stopping deliveries still under way; they are retried at the next start"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }

    fn destination_semaphore(&self, route: &Route, cap: usize) -> Arc<Semaphore> {
        let mut map = match self.per_destination.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        Arc::clone(
            map.entry(route.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(cap))),
        )
    }

    async fn route(&self, domain: &str, cache: &mut HashMap<String, bool>) -> Route {
        let local = match cache.get(domain) {
            Some(v) => *v,
            None => {
                let v = self.store.is_local_domain(domain).await.unwrap_or(false);
                cache.insert(domain.to_owned(), v);
                v
            }
        };
        if local {
            Route::Local
        } else if self.delivery().relay.is_some() {
            Route::Relay
        } else {
            Route::Mx(domain.to_owned())
        }
    }

    /// Delivers jobs that share a route, reusing connections.
    async fn deliver_group(self: &Arc<Self>, route: Route, jobs: Vec<DeliveryJob>) {
        let mut pending: Vec<DeliveryJob> = Vec::new();
        let mut results: Vec<(DeliveryJob, Vec<Attempt>)> = Vec::new();
        // Administrative bounces never touch the network.
        for job in jobs {
            let (forced, rest): (Vec<_>, Vec<_>) =
                job.recipients.iter().cloned().partition(|r| r.admin_bounce);
            if !forced.is_empty() {
                let j = DeliveryJob {
                    recipients: forced,
                    ..job.clone()
                };
                let n = j.recipients.len();
                results.push((
                    j,
                    vec![
                        Attempt::Failed(Failure::permanent(
                            "5.3.0",
                            "bounced by the administrator"
                        ));
                        n
                    ],
                ));
            }
            if !rest.is_empty() {
                pending.push(DeliveryJob {
                    recipients: rest,
                    ..job
                });
            }
        }
        for (job, attempts) in results {
            self.finish(&job, attempts, None).await;
        }
        match route {
            Route::Local => self.deliver_local(pending).await,
            Route::Relay => {
                let Some(relay) = self.delivery().relay.clone() else {
                    return;
                };
                let mode = if relay.implicit_tls {
                    TlsMode::Implicit
                } else {
                    TlsMode::Required
                };
                let addrs: Vec<SocketAddr> =
                    match tokio::net::lookup_host((relay.host.as_str(), relay.port)).await {
                        Ok(a) => a.collect(),
                        Err(e) => {
                            let f = Failure::temporary(
                                "4.4.3",
                                format!("cannot resolve relay host {}: {e}", relay.host),
                            );
                            for job in pending {
                                let n = job.recipients.len();
                                self.finish(&job, vec![Attempt::Failed(f.clone()); n], None)
                                    .await;
                            }
                            return;
                        }
                    };
                let host = MxHost {
                    name: relay.host.clone(),
                    addresses: Vec::new(),
                };
                let targets: Vec<(MxHost, SocketAddr)> =
                    addrs.into_iter().map(|a| (host.clone(), a)).collect();
                self.deliver_remote(pending, targets, mode, true, false)
                    .await;
            }
            Route::Mx(domain) => {
                let hosts = match self.resolver.hosts(&domain).await {
                    Ok(h) => h,
                    Err(f) => {
                        for job in pending {
                            let n = job.recipients.len();
                            self.finish(&job, vec![Attempt::Failed(f.clone()); n], None)
                                .await;
                        }
                        return;
                    }
                };
                let port = self.delivery().mx_port;
                let targets: Vec<(MxHost, SocketAddr)> = hosts
                    .iter()
                    .flat_map(|h| {
                        h.addresses
                            .iter()
                            .map(move |a| (h.clone(), SocketAddr::new(*a, port)))
                    })
                    .collect();
                let mode = match self.delivery().tls_for(&domain) {
                    TlsPolicy::Required => TlsMode::Required,
                    TlsPolicy::Opportunistic => TlsMode::Opportunistic,
                };
                self.deliver_remote(pending, targets, mode, false, false)
                    .await;
            }
        }
    }

    fn options(&self, mode: TlsMode, relay: bool, lmtp: bool) -> ClientOptions {
        let d = self.delivery();
        ClientOptions {
            helo_name: d
                .helo_name
                .clone()
                .unwrap_or_else(|| self.config.hostname.clone()),
            tls: mode,
            verify: if relay {
                self.relay_verify.clone()
            } else {
                None
            },
            lmtp,
            connect_timeout: d.connect_timeout,
            command_timeout: d.command_timeout,
            data_block_timeout: d.data_block_timeout,
            data_done_timeout: d.data_done_timeout,
            auth: if relay { self.relay_auth.clone() } else { None },
        }
    }

    /// Sends `jobs` to the first target that takes a connection, moving on
    /// to the next target when a connection fails.
    async fn deliver_remote(
        self: &Arc<Self>,
        jobs: Vec<DeliveryJob>,
        targets: Vec<(MxHost, SocketAddr)>,
        mode: TlsMode,
        relay: bool,
        lmtp: bool,
    ) {
        let mut queue = std::collections::VecDeque::from(jobs);
        let mut target_index = 0;
        let mut conn: Option<Client> = None;
        let mut last_failure: Option<Failure> = None;
        let mut sent_on_conn = 0usize;
        // Results being recorded while the connection goes on with the next
        // message; all are waited for before this returns.
        let mut unrecorded: std::collections::VecDeque<tokio::task::JoinHandle<()>> =
            std::collections::VecDeque::new();
        while let Some(job) = queue.pop_front() {
            if conn.as_ref().is_some_and(|c| !c.reusable())
                || sent_on_conn >= self.delivery().max_messages_per_connection
            {
                if let Some(c) = conn.take() {
                    c.quit().await;
                }
                sent_on_conn = 0;
            }
            if conn.is_none() {
                while target_index < targets.len() {
                    let (host, addr) = &targets[target_index];
                    match Client::connect(
                        *addr,
                        &host.name,
                        self.options(mode, relay, lmtp),
                        &self.opportunistic,
                    )
                    .await
                    {
                        Ok(c) => {
                            conn = Some(c);
                            break;
                        }
                        Err(f) => {
                            tracing::info!(host = %host.name, %addr, reason = %f.text, "delivery connection failed");
                            last_failure = Some(f);
                            target_index += 1;
                        }
                    }
                }
            }
            let Some(client) = conn.as_mut() else {
                // No host took the connection: the same for every job left.
                let f = last_failure.clone().unwrap_or_else(|| {
                    Failure::temporary("4.4.4", format!("no host to deliver to for {}", job.domain))
                });
                let f = if f.temporary || f.remote {
                    Failure {
                        temporary: true,
                        ..f
                    }
                } else {
                    f
                };
                for j in std::iter::once(job).chain(queue.drain(..)) {
                    let n = j.recipients.len();
                    self.finish(&j, vec![Attempt::Failed(f.clone()); n], None)
                        .await;
                }
                break;
            };
            let host = client.host.clone();
            let attempts = self.send_job(client, &job).await;
            sent_on_conn += 1;
            match attempts {
                Ok(a) => {
                    // At-least-once either way: a result lost to a crash
                    // before its commit means the message is sent again.
                    if unrecorded.len() >= MAX_UNRECORDED
                        && let Some(oldest) = unrecorded.pop_front()
                    {
                        wait_recorded(oldest).await;
                    }
                    let me = Arc::clone(self);
                    unrecorded.push_back(tokio::spawn(async move {
                        me.finish(&job, a, Some(&host)).await;
                    }));
                }
                Err(f) if f.temporary && !f.remote => {
                    // The connection broke: try the job again on the next host.
                    last_failure = Some(f);
                    conn = None;
                    target_index += 1;
                    queue.push_front(job);
                }
                Err(f) => {
                    let n = job.recipients.len();
                    self.finish(&job, vec![Attempt::Failed(f); n], Some(&host))
                        .await;
                }
            }
        }
        if let Some(c) = conn {
            c.quit().await;
        }
        while let Some(handle) = unrecorded.pop_front() {
            wait_recorded(handle).await;
        }
    }

    async fn send_job(
        &self,
        client: &mut Client,
        job: &DeliveryJob,
    ) -> Result<Vec<Attempt>, Failure> {
        let unreadable = |e: &dyn std::fmt::Display| {
            Failure::temporary("4.3.0", format!("cannot read queued message: {e}"))
        };
        let body = SpoolRef::parse(&job.spool_path).map_err(|e| unreadable(&e))?;
        // A small message is read whole in one blocking trip (open, seek,
        // read) and sent from memory; a big one is streamed, after a pass
        // that looks for 8-bit bytes.
        let in_memory = if job.size <= IN_MEMORY_BODY {
            let (body, dir) = (body.clone(), self.config.data_dir.clone());
            let read = tokio::task::spawn_blocking(move || body.read_all(&dir))
                .await
                .map_err(|e| unreadable(&e))?;
            Some(read.map_err(|e| unreadable(&e))?)
        } else {
            None
        };
        let eight_bit = match &in_memory {
            Some(bytes) => !bytes.is_ascii(),
            None => has_8bit(&body, &self.config.data_dir)
                .await
                .map_err(|e| unreadable(&e))?,
        };
        let recipients: Vec<String> = job.recipients.iter().map(|r| r.address.clone()).collect();
        let smtputf8 = !job.sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii());
        let env = Envelope {
            from: &job.sender,
            recipients: &recipients,
            size: job.size,
            eight_bit,
            smtputf8,
        };
        let results = match &in_memory {
            Some(bytes) => client.send(&env, bytes.as_slice()).await?,
            None => {
                let reader = body
                    .open_async(&self.config.data_dir)
                    .await
                    .map_err(|e| unreadable(&e))?;
                client.send(&env, reader).await?
            }
        };
        Ok(results
            .into_iter()
            .map(|r| match r {
                Ok(reply) => Attempt::Delivered(reply.text()),
                Err(f) => Attempt::Failed(f),
            })
            .collect())
    }

    async fn deliver_local(self: &Arc<Self>, jobs: Vec<DeliveryJob>) {
        match self.delivery().local.clone() {
            LocalTransport::Maildir => {}
            LocalTransport::Lmtp(addr) | LocalTransport::Smtp(addr) => {
                let lmtp = matches!(self.delivery().local, LocalTransport::Lmtp(_));
                let (host, port) = match addr.rsplit_once(':') {
                    Some((h, p)) => (
                        h.trim_matches(['[', ']']).to_owned(),
                        p.parse::<u16>().unwrap_or(25),
                    ),
                    None => (addr.clone(), 25),
                };
                let targets: Vec<(MxHost, SocketAddr)> =
                    match tokio::net::lookup_host((host.as_str(), port)).await {
                        Ok(a) => a
                            .map(|a| {
                                (
                                    MxHost {
                                        name: host.clone(),
                                        addresses: Vec::new(),
                                    },
                                    a,
                                )
                            })
                            .collect(),
                        Err(_) => Vec::new(),
                    };
                let (local_jobs, rewrites) = self.expand_local(jobs).await;
                for (job, attempts) in rewrites {
                    self.finish(&job, attempts, None).await;
                }
                self.deliver_remote(local_jobs, targets, TlsMode::Opportunistic, false, lmtp)
                    .await;
                return;
            }
        }
        let (jobs, rewrites) = self.expand_local(jobs).await;
        for (job, attempts) in rewrites {
            self.finish(&job, attempts, None).await;
        }
        let mail_root = self.config.data_dir.join("mail");
        for job in jobs {
            let mut attempts = Vec::new();
            let body = SpoolRef::parse(&job.spool_path);
            for r in &job.recipients {
                let Some(dir) = maildir::mailbox_dir(&mail_root, &r.address) else {
                    attempts.push(Attempt::Failed(Failure::permanent(
                        "5.1.3",
                        format!("{} cannot be a mailbox name", r.address),
                    )));
                    continue;
                };
                let body = match &body {
                    Ok(b) => b.clone(),
                    Err(e) => {
                        attempts.push(Attempt::Failed(Failure::temporary(
                            "4.3.0",
                            format!("cannot read queued message: {e}"),
                        )));
                        continue;
                    }
                };
                let (data_dir, rcpt, sender, host) = (
                    self.config.data_dir.clone(),
                    r.address.clone(),
                    job.sender.clone(),
                    self.config.hostname.clone(),
                );
                let res = tokio::task::spawn_blocking(move || {
                    let mut message = body.open(&data_dir)?;
                    maildir::deliver(&dir, &mut message, &rcpt, &sender, &host)
                })
                .await;
                attempts.push(match res {
                    Ok(Ok(_)) => Attempt::Delivered("250 2.0.0 delivered to mailbox".to_owned()),
                    Ok(Err(e)) => Attempt::Failed(Failure::temporary(
                        "4.3.0",
                        format!("cannot write to the mailbox: {e}"),
                    )),
                    Err(e) => Attempt::Failed(Failure::temporary(
                        "4.3.0",
                        format!("mailbox writer failed: {e}"),
                    )),
                });
            }
            self.finish(&job, attempts, None).await;
        }
    }

    /// Splits local recipients into real mailboxes (kept) and the rest:
    /// aliases are rewritten (and re-queued), unknown ones bounce.
    async fn expand_local(
        &self,
        jobs: Vec<DeliveryJob>,
    ) -> (Vec<DeliveryJob>, Vec<(DeliveryJob, Vec<Attempt>)>) {
        let mut keep = Vec::new();
        let mut other = Vec::new();
        for job in jobs {
            let mut mailboxes = Vec::new();
            let mut odd = Vec::new();
            let mut odd_attempts = Vec::new();
            for r in &job.recipients {
                let is_account = matches!(self.store.account(&r.address).await, Ok(Some(_)));
                if is_account {
                    mailboxes.push(r.clone());
                    continue;
                }
                let attempt = match self.store.resolve_alias(&r.address).await {
                    Ok(Some(_)) if r.attempts >= MAX_ALIAS_HOPS => {
                        Attempt::Failed(Failure::permanent(
                            "5.4.6",
                            format!("alias loop while expanding {}", r.address),
                        ))
                    }
                    Ok(Some(target)) => Attempt::Expanded(target),
                    Ok(None) => Attempt::Failed(Failure::permanent(
                        "5.1.1",
                        format!("{}: no such mailbox here", r.address),
                    )),
                    Err(e) => Attempt::Failed(Failure::temporary(
                        "4.3.0",
                        format!("alias lookup failed: {e}"),
                    )),
                };
                odd.push(r.clone());
                odd_attempts.push(attempt);
            }
            if !odd.is_empty() {
                other.push((
                    DeliveryJob {
                        recipients: odd,
                        ..job.clone()
                    },
                    odd_attempts,
                ));
            }
            if !mailboxes.is_empty() {
                keep.push(DeliveryJob {
                    recipients: mailboxes,
                    ..job
                });
            }
        }
        (keep, other)
    }

    /// Turns attempt results into recipient outcomes, queues the DSN they
    /// call for, and records everything in one store transaction.
    async fn finish(&self, job: &DeliveryJob, attempts: Vec<Attempt>, host: Option<&str>) {
        let now = now_ms();
        let d = self.delivery();
        let age = Duration::from_secs(u64::try_from(now / 1000 - job.received_at).unwrap_or(0));
        let mut outcomes = Vec::new();
        let mut dsn_failed: Vec<(usize, Failure)> = Vec::new();
        let mut dsn_delayed: Vec<(usize, Failure, i64)> = Vec::new();
        for (i, (r, attempt)) in job.recipients.iter().zip(attempts).enumerate() {
            let mut o = RecipientOutcome {
                message_id: job.message_id.clone(),
                position: r.position,
                status: DeliveryStatus::Delivered,
                next_attempt_ms: 0,
                reply: String::new(),
                host: host.map(str::to_owned),
                warned: false,
                new_address: None,
            };
            match attempt {
                Attempt::Delivered(reply) => {
                    o.reply = reply;
                    tracing::info!(target: "portcullis::mail", event = "delivered", queue_id = %job.message_id, to = %r.address, relay = host.unwrap_or("local"), reply = %o.reply, "delivered");
                }
                Attempt::Expanded(target) => {
                    o.status = DeliveryStatus::Queued;
                    o.next_attempt_ms = now;
                    o.reply = format!("alias of {} expanded to {target}", r.address);
                    o.new_address = Some(target);
                }
                Attempt::Failed(f) if f.temporary && age < d.max_age => {
                    let base = d.retry_delay(r.attempts + 1);
                    let jitter_ms =
                        base.as_millis() as u64 * u64::from(d.retry_jitter_percent) / 100;
                    let extra = if jitter_ms > 0 {
                        rand::random::<u64>() % jitter_ms
                    } else {
                        0
                    };
                    let next = now
                        + i64::try_from(base.as_millis() as u64 + extra).unwrap_or(i64::MAX / 2);
                    o.status = DeliveryStatus::Deferred;
                    o.next_attempt_ms = next;
                    o.reply = f.text.clone();
                    tracing::info!(target: "portcullis::mail", event = "deferred", queue_id = %job.message_id, to = %r.address, reason = %f.text, "deferred");
                    if let Some(after) = d.delay_warning
                        && age >= after
                        && !r.warned
                        && !job.sender.is_empty()
                    {
                        o.warned = true;
                        dsn_delayed.push((
                            i,
                            f,
                            job.received_at + i64::try_from(d.max_age.as_secs()).unwrap_or(0),
                        ));
                    }
                }
                Attempt::Failed(f) => {
                    let f = if f.temporary {
                        Failure {
                            temporary: false,
                            status: "4.4.7".to_owned(),
                            text: format!("delivery time expired; last error: {}", f.text),
                            remote: f.remote,
                        }
                    } else {
                        f
                    };
                    o.status = DeliveryStatus::Bounced;
                    o.reply = f.text.clone();
                    tracing::info!(target: "portcullis::mail", event = "bounced", queue_id = %job.message_id, to = %r.address, reason = %f.text, "bounced");
                    dsn_failed.push((i, f));
                }
            }
            outcomes.push(o);
        }
        let mut notices = Vec::new();
        if !job.sender.is_empty() {
            for (action, list) in [
                (
                    DsnAction::Failed,
                    dsn_failed
                        .iter()
                        .map(|(i, f)| (*i, f, None))
                        .collect::<Vec<_>>(),
                ),
                (
                    DsnAction::Delayed,
                    dsn_delayed
                        .iter()
                        .map(|(i, f, u)| (*i, f, Some(*u)))
                        .collect(),
                ),
            ] {
                if list.is_empty() {
                    continue;
                }
                match self.make_dsn(job, action, &list, host).await {
                    Ok(n) => notices.push(n),
                    Err(e) => {
                        tracing::error!(error = %e, queue_id = %job.message_id, "cannot write the DSN")
                    }
                }
            }
        } else if !dsn_failed.is_empty() {
            tracing::info!(queue_id = %job.message_id, "not bouncing a message with a null sender");
        }
        let requeued = !notices.is_empty() || outcomes.iter().any(|o| o.new_address.is_some());
        let notice_paths: Vec<String> = notices.iter().map(|n| n.spool_path.clone()).collect();
        let recorder = self
            .recorder
            .get_or_init(|| recorder::Recorder::start(Arc::clone(&self.store)));
        match recorder.record(outcomes, notices, now).await {
            Ok(done) => {
                let mut segments_freed = false;
                for (_, path) in done {
                    // A segment is shared: the sweeper deletes it once no
                    // message needs it.
                    match SpoolRef::parse(&path) {
                        Ok(SpoolRef::File(file) | SpoolRef::FileRange { path: file, .. }) => {
                            let _ = tokio::fs::remove_file(self.config.data_dir.join(file)).await;
                        }
                        Ok(SpoolRef::Segment { .. }) => segments_freed = true,
                        Err(e) => {
                            tracing::warn!(error = %e, "not removing the body of a finished message")
                        }
                    }
                }
                if segments_freed && let Some(sweep) = &self.sweep_trigger {
                    sweep.notify_one();
                }
                if requeued {
                    self.wake.notify_one();
                }
            }
            Err(e) => {
                tracing::error!(error = %e, queue_id = %job.message_id, "cannot record delivery results; they will be retried");
                for path in &notice_paths {
                    let _ = tokio::fs::remove_file(self.config.data_dir.join(path)).await;
                }
            }
        }
    }

    /// Writes a DSN durably into the spool and returns its queue record.
    async fn make_dsn(
        &self,
        job: &DeliveryJob,
        action: DsnAction,
        list: &[(usize, &Failure, Option<i64>)],
        host: Option<&str>,
    ) -> std::io::Result<NewMessage> {
        let original = read_head(&job.spool_path, &self.config.data_dir).await;
        let headers = header_block(&original).to_vec();
        let now_s = now_ms() / 1000;
        let date = rfc2822(now_s);
        let arrival = rfc2822(job.received_at);
        let id = crate::spool::new_queue_id();
        let message_id = format!("{id}.dsn@{}", self.config.hostname);
        let boundary = format!("{id}/{}", self.config.hostname);
        let until: Vec<String> = list
            .iter()
            .map(|(_, _, u)| u.map(rfc2822).unwrap_or_default())
            .collect();
        let diagnostics: Vec<String> = list.iter().map(|(_, f, _)| f.text.clone()).collect();
        let recipients: Vec<DsnRecipient<'_>> = list
            .iter()
            .enumerate()
            .map(|(k, (i, f, u))| DsnRecipient {
                final_recipient: &job.recipients[*i].address,
                original_recipient: None,
                action,
                status: &f.status,
                remote_mta: if f.remote { host } else { None },
                diagnostic: Some(&diagnostics[k]),
                last_attempt_date: Some(&date),
                will_retry_until: u.map(|_| until[k].as_str()),
            })
            .collect();
        let report = DsnReport {
            reporting_mta: &self.config.hostname,
            original_sender: &job.sender,
            original_envelope_id: None,
            arrival_date: &arrival,
            date: &date,
            message_id: &message_id,
            boundary: &boundary,
            recipients: &recipients,
            original_headers: &headers,
        };
        let body = build_dsn(&report);
        let rel = crate::spool::write_generated(&self.config.data_dir, &id, &body).await?;
        Ok(NewMessage {
            id,
            sender: String::new(),
            recipients: vec![job.sender.clone()],
            size: body.len() as u64,
            spool_path: rel,
            auth_user: None,
            client_ip: "127.0.0.1".to_owned(),
            received_at: now_s,
            usage_ms: Vec::new(),
        })
    }
}

/// The result of one recipient's attempt.
#[derive(Clone, Debug)]
enum Attempt {
    Delivered(String),
    Failed(Failure),
    Expanded(String),
}

/// Waits for a spawned [`QueueManager::finish`]; a panic in it is logged
/// (its recipients stay in flight and are retried at the next start).
async fn wait_recorded(handle: tokio::task::JoinHandle<()>) {
    if let Err(e) = handle.await
        && e.is_panic()
    {
        tracing::error!("recording a delivery result failed unexpectedly; it will be retried");
    }
}

/// Whether the message holds any byte above 0x7F (needs 8BITMIME).
async fn has_8bit(body: &SpoolRef, data_dir: &std::path::Path) -> std::io::Result<bool> {
    use tokio::io::AsyncReadExt;
    let mut f = body.open_async(data_dir).await?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            return Ok(false);
        }
        if buf[..n].iter().any(|b| *b >= 0x80) {
            return Ok(true);
        }
    }
}

/// The first 64 KiB of a message (enough for its header block); empty when
/// it cannot be read.
async fn read_head(spool_path: &str, data_dir: &std::path::Path) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    if let Ok(body) = SpoolRef::parse(spool_path)
        && let Ok(f) = body.open_async(data_dir).await
    {
        let _ = f.take(64 * 1024).read_to_end(&mut out).await;
    }
    out
}
