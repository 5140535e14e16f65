//! The connection driver: the only code that does socket I/O for a session.
//!
//! It performs the [`Action`]s of the sans-IO [`Session`] — reads, writes,
//! the STARTTLS upgrade, credential checks, recipient lookups and spooling —
//! and enforces the idle and total session timeouts (RFC 5321 4.5.3.2) and
//! graceful shutdown (`421 4.3.2`). Protocol decisions are never made here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_proto::{Action, Mailbox, RecipientStatus, Reply, Session, SessionConfig};
use portcullis_store::Store;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{Instant, timeout};

use crate::auth::{AuthContext, AuthDecision, AuthService};
use crate::config::{Config, ListenerConfig};
use crate::quota::{QuotaService, now_ms};
use crate::spool::{Origin, Spool, SpoolWriter};
use crate::throttle::{Admission, Gcra, human_duration};
use crate::tls::TlsManager;

/// First read buffer of a connection (commands are short).
const READ_BUF_START: usize = 2 * 1024;
/// Largest read buffer (one TLS record of plaintext).
const READ_BUF_MAX: usize = 16 * 1024;

/// The buffer for the next read: the one the last read left, grown while
/// reads filled it, unless the session now waits for a command. Between
/// messages (and while idle) a session holds [`READ_BUF_START`] octets,
/// not the [`READ_BUF_MAX`] its last message's reads grew to (issue 9: a
/// session idle after a 256 KiB message held 45 KiB, 14 KiB after a small
/// one).
fn read_buffer(last: Vec<u8>, in_message: bool) -> Vec<u8> {
    if last.is_empty() || (!in_message && last.len() > READ_BUF_START) {
        vec![0; READ_BUF_START]
    } else {
        last
    }
}

/// A byte stream a session can run on: TCP, TLS over TCP, or an in-memory duplex in tests.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Everything sessions share.
pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub auth: AuthService,
    pub spool: Spool,
    pub tls: Arc<TlsManager>,
    pub hostname: String,
    pub max_auth_failures: u32,
    pub shutdown: watch::Receiver<bool>,
    pub config: Arc<Config>,
    pub quota: QuotaService,
    /// Cached directory reads (domains, accounts, aliases, DKIM keys).
    pub directory: Arc<crate::directory::Directory>,
    /// Per-IP messages per minute on the unauthenticated smtp listener.
    pub mail_rate: Option<Gcra>,
    /// Per-IP new connections per minute, all listeners.
    pub connection_rate: Option<Gcra>,
    /// Inbound SPF/DKIM/DMARC (issue 7); `None` when `[inbound] verify` is off.
    pub mail_auth: Option<mail_auth::MessageAuthenticator>,
}

/// How a session ended (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Closed,
    PeerGone,
    IdleTimeout,
    SessionTimeout,
    Shutdown,
    TlsFailed,
    IoError,
}

pub(crate) fn session_config(shared: &Shared, listener: &ListenerConfig) -> SessionConfig {
    SessionConfig {
        role: crate::server::proto_role(listener.role),
        hostname: shared.hostname.clone(),
        max_message_size: listener.max_message_size,
        max_recipients: listener.max_recipients,
        max_command_line: listener.max_command_line,
        max_text_line: listener.max_text_line,
        max_errors: listener.max_errors,
        max_auth_failures: shared.max_auth_failures,
        starttls: true,
        // Issue 6: only what can work on this server (tokens need an issuer,
        // CRAM-MD5 needs the secret key).
        mechanisms: listener
            .mechanisms
            .iter()
            .copied()
            .filter(|m| !m.is_bearer() || shared.auth.tokens_enabled())
            .filter(|m| *m != portcullis_proto::Mechanism::CramMd5 || shared.auth.cram_enabled())
            .collect(),
    }
}

/// RFC 9266 `tls-exporter` channel binding for SCRAM-SHA-256-PLUS: 32 bytes
/// exported with label "EXPORTER-Channel-Binding" and no context. Only for
/// TLS 1.3 (with TLS 1.2 it is safe only with extended master secret, which
/// we cannot check here), else `None` and PLUS is not offered.
pub(crate) fn tls_exporter(conn: &rustls::ServerConnection) -> Option<Vec<u8>> {
    if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        return None;
    }
    conn.export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None)
        .ok()
        .map(|k| k.to_vec())
}

/// Describes the negotiated TLS parameters, for logs and the Received header.
pub(crate) fn tls_description(conn: &rustls::ServerConnection) -> String {
    let version = conn
        .protocol_version()
        .map(|v| format!("{v:?}").replace("TLSv1_", "TLSv1."))
        .unwrap_or_default();
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|c| format!("{:?}", c.suite()))
        .unwrap_or_default();
    format!("using {version} with cipher {cipher}")
}

struct Driver {
    shared: Arc<Shared>,
    listener: Arc<ListenerConfig>,
    peer: SocketAddr,
    io: Option<Box<dyn Io>>,
    out: Vec<u8>,
    /// Read buffer: [`READ_BUF_START`] octets, doubled up to
    /// [`READ_BUF_MAX`] while reads fill it.
    rbuf: Vec<u8>,
    tls_info: Option<String>,
    spool: Option<SpoolWriter>,
    deadline: Instant,
    /// Plan reservations of the open transaction: (account, timestamps).
    reserved: Option<(String, Vec<i64>)>,
    /// The session id of the logs and the auth audit.
    sid: String,
    /// `tls-exporter` data of the STARTTLS handshake, for the session.
    channel_binding: Option<Vec<u8>>,
    /// The sending plan read at the first RCPT of the current transaction.
    tx_plan: Option<(String, crate::config::Plan)>,
    /// The header block of the current message, kept in authenticated
    /// sessions (header From: check, fix-ups and DKIM signing).
    headers: Option<HeaderCapture>,
}

/// The start of a message up to its blank line (bounded by `HEADER_CAPTURE`).
/// Each chunk is scanned once: the hot DATA path costs nothing after the
/// header block ends.
#[derive(Default)]
struct HeaderCapture {
    buf: Vec<u8>,
    done: bool,
}

impl HeaderCapture {
    fn push(&mut self, data: &[u8]) {
        if self.done {
            return;
        }
        // Re-scan the last 3 bytes: a CRLFCRLF may straddle two chunks.
        let from = self.buf.len().saturating_sub(3);
        let room = HEADER_CAPTURE.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&data[..data.len().min(room)]);
        self.done = self.buf.len() >= HEADER_CAPTURE
            || self.buf.starts_with(b"\r\n")
            || self.buf[from..].windows(4).any(|w| w == b"\r\n\r\n");
    }
}

/// At most this much of a message is kept to read its header block.
const HEADER_CAPTURE: usize = 256 * 1024;

/// Runs one session to completion on `io`. `tls_info` is set when the stream
/// is already TLS (port 465).
pub(crate) async fn serve(
    io: Box<dyn Io>,
    tls_info: Option<String>,
    channel_binding: Option<Vec<u8>>,
    shared: Arc<Shared>,
    listener: Arc<ListenerConfig>,
    peer: SocketAddr,
    sid: String,
) {
    let mut session = Session::new(session_config(&shared, &listener), tls_info.is_some());
    session.seed_nonces(rand::random());
    session.set_channel_binding(channel_binding);
    let mut driver = Driver {
        deadline: Instant::now() + listener.session_timeout,
        shared,
        listener,
        peer,
        io: Some(io),
        out: Vec::with_capacity(1024),
        rbuf: Vec::new(),
        tls_info,
        spool: None,
        reserved: None,
        tx_plan: None,
        sid,
        headers: None,
        channel_binding: None,
    };
    session.greeting().write_to(&mut driver.out);
    let end = driver.run(&mut session).await;
    if let Some(w) = driver.spool.take() {
        driver.shared.spool.abort(w).await;
    }
    driver.release_quota();
    if let Some(mut io) = driver.io.take() {
        let _ = timeout(Duration::from_secs(5), io.shutdown()).await;
    }
    tracing::info!(end = ?end, user = session.authenticated_user().unwrap_or(""), "disconnected");
}

impl Driver {
    async fn run(&mut self, session: &mut Session) -> End {
        loop {
            let action = session.poll();
            match action {
                Action::NeedInput => {
                    if let Err(end) = self.read_into(session).await {
                        return end;
                    }
                }
                Action::Send(reply) => {
                    log_rejection(&reply);
                    reply.write_to(&mut self.out);
                    if self.out.len() > 64 * 1024 && self.flush().await.is_err() {
                        return End::IoError;
                    }
                }
                Action::SendAndClose(reply) => {
                    log_rejection(&reply);
                    reply.write_to(&mut self.out);
                    let _ = self.flush().await;
                    return End::Closed;
                }
                Action::Close => return End::PeerGone,
                Action::StartTls => {
                    if let Err(end) = self.start_tls().await {
                        return end;
                    }
                    session.tls_started();
                    session.set_channel_binding(self.channel_binding.take());
                }
                Action::Authenticate(creds) => {
                    let ctx = AuthContext {
                        session_id: self.sid.clone(),
                        listener: self.listener.role.name(),
                        client_ip: self.peer.ip(),
                        tls: self.tls_info.clone(),
                    };
                    // Boxed: the auth future is ~12 KiB, and inline it made
                    // every connection's future that big, idle or not
                    // (issue 9 scenario f: 10,000 idle sessions).
                    let outcome = match Box::pin(self.shared.auth.authenticate(creds, &ctx)).await {
                        AuthDecision::Outcome(outcome) => outcome,
                        AuthDecision::Close(reply) => {
                            log_rejection(&reply);
                            return self.say_and_end(reply, End::Closed).await;
                        }
                    };
                    if let portcullis_proto::AuthOutcome::Success { user } = &outcome
                        && let Ok((_, plan)) = self.shared.quota.plan_of(user).await
                    {
                        session.set_account_limits(plan.max_recipients, plan.max_message_size);
                    }
                    session.auth_result(outcome);
                }
                Action::LookupSecrets {
                    mechanism,
                    username,
                } => {
                    let secrets = self.shared.auth.sasl_secrets(mechanism, &username).await;
                    session.secrets_result(secrets);
                }
                Action::ReserveQuota { user } => {
                    let (outcome, grant) = self
                        .shared
                        .quota
                        .reserve_cached(&user, now_ms(), &mut self.tx_plan)
                        .await;
                    if let Some(grant) = grant {
                        session.set_account_limits(grant.max_recipients, grant.max_message_size);
                        match &mut self.reserved {
                            Some((u, stamps)) if *u == user => stamps.push(grant.at_ms),
                            _ => {
                                self.release_quota();
                                self.reserved = Some((user, vec![grant.at_ms]));
                            }
                        }
                    }
                    if self.reserved.is_none() {
                        // The cache lives only as long as the transaction's
                        // reservations, which always end with it.
                        self.tx_plan = None;
                    }
                    session.quota_result(outcome);
                }
                Action::ReleaseQuota => self.release_quota(),
                Action::CheckSender { user, sender } => {
                    use portcullis_proto::SenderVerdict;
                    let verdict = match self.shared.auth.sender_allowed(&user, &sender).await {
                        Ok(true) => SenderVerdict::Allowed,
                        Ok(false) => SenderVerdict::NotOwned,
                        Err(e) => {
                            tracing::error!(error = %e, "sender ownership check failed");
                            SenderVerdict::TemporaryFailure
                        }
                    };
                    session.sender_result(verdict);
                }
                Action::CheckMailRate => {
                    let outcome = self.check_mail_rate();
                    session.mail_rate_result(outcome);
                }
                Action::CheckRecipient(mailbox) => {
                    let status = check_recipient(&self.shared.directory, &mailbox).await;
                    session.recipient_result(status);
                }
                Action::BeginMessage(envelope) => {
                    let origin = Origin {
                        client_ip: self.peer.ip(),
                        hostname: self.shared.hostname.clone(),
                        tls: self.tls_info.clone(),
                    };
                    if let Some(old) = self.spool.take() {
                        self.shared.spool.abort(old).await;
                    }
                    self.headers = envelope.auth_user.is_some().then(HeaderCapture::default);
                    self.spool = Some(self.shared.spool.begin(envelope, origin).await);
                }
                Action::MessageData(data) => {
                    if let Some(h) = &mut self.headers {
                        h.push(&data);
                    }
                    if let Some(w) = &mut self.spool {
                        // A submission about to spill is hashed for DKIM as
                        // it is written, unless it will not be signed.
                        if let Some(h) = &self.headers
                            && h.done
                            && w.stream_hash()
                            && w.would_spill(data.len())
                            && !crate::mail_auth::will_sign(&self.shared.directory, &h.buf).await
                        {
                            w.skip_stream_hash();
                        }
                        w.write(&data).await;
                    }
                }
                Action::EndMessage => {
                    let usage = self
                        .reserved
                        .as_ref()
                        .map(|(_, s)| s.clone())
                        .unwrap_or_default();
                    let headers = self.headers.take();
                    let refused = match (&headers, session.authenticated_user()) {
                        (Some(h), Some(user)) if self.shared.auth.check_header_from() => {
                            let user = user.to_owned();
                            header_from_refusal(&self.shared, &user, &h.buf).await
                        }
                        _ => None,
                    };
                    let refused = match refused {
                        Some(r) => Some(r),
                        // Boxed, like the commit below: once per message, and
                        // it keeps these large futures out of every idle
                        // connection's state (issue 9 scenario f).
                        None => Box::pin(self.before_commit(headers.as_ref())).await,
                    };
                    let outcome = match (self.spool.take(), refused) {
                        (Some(w), Some(outcome)) => {
                            self.shared.spool.abort(w).await;
                            outcome
                        }
                        (Some(w), None) => {
                            Box::pin(self.shared.spool.commit(w, &self.shared.store, usage)).await
                        }
                        (None, _) => portcullis_proto::EnqueueOutcome::TemporaryFailure,
                    };
                    self.tx_plan = None;
                    if let portcullis_proto::EnqueueOutcome::Queued { .. } = outcome {
                        // Now durable in usage_events: they stay counted.
                        self.reserved = None;
                    }
                    session.message_result(outcome);
                }
                Action::AbortMessage => {
                    if let Some(w) = self.spool.take() {
                        self.shared.spool.abort(w).await;
                    }
                }
            }
        }
    }

    /// Issue 7: fix-ups and DKIM signing of submitted mail, SPF/DKIM/DMARC
    /// of inbound mail; `Some` when the message must not be queued.
    async fn before_commit(
        &mut self,
        headers: Option<&HeaderCapture>,
    ) -> Option<portcullis_proto::EnqueueOutcome> {
        let writer = self.spool.as_mut()?;
        let result = match headers {
            Some(h) => {
                crate::mail_auth::prepare_submission(
                    &self.shared.directory,
                    &self.shared.hostname,
                    writer,
                    &h.buf,
                )
                .await
            }
            None => match &self.shared.mail_auth {
                Some(auth) if self.listener.role == crate::config::ListenerRole::Smtp => {
                    crate::mail_auth::check_inbound(
                        auth,
                        &self.shared.config,
                        self.peer.ip(),
                        writer,
                    )
                    .await
                }
                _ => Ok(()),
            },
        };
        result.err()
    }

    fn release_quota(&mut self) {
        self.tx_plan = None;
        if let Some((user, stamps)) = self.reserved.take() {
            self.shared.quota.release(&user, &stamps);
        }
    }

    fn check_mail_rate(&self) -> portcullis_proto::QuotaOutcome {
        let ip = self.peer.ip();
        let Some(gcra) = &self.shared.mail_rate else {
            return portcullis_proto::QuotaOutcome::Granted;
        };
        if self.shared.config.security.is_trusted(ip) {
            return portcullis_proto::QuotaOutcome::Granted;
        }
        match gcra.check(ip, now_ms()) {
            Admission::Allowed => portcullis_proto::QuotaOutcome::Granted,
            Admission::Limited { retry_after_ms } => {
                tracing::info!(client_ip = %ip, "message rate limit reached");
                portcullis_proto::QuotaOutcome::Refused(Reply::message_rate_limited(
                    &human_duration(retry_after_ms),
                ))
            }
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let Some(io) = self.io.as_mut() else {
            return Err(std::io::ErrorKind::NotConnected.into());
        };
        let write = async {
            io.write_all(&self.out).await?;
            io.flush().await
        };
        match timeout(self.listener.idle_timeout, write).await {
            Ok(r) => r?,
            Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
        }
        self.out.clear();
        Ok(())
    }

    /// Flushes pending replies and reads more input, honouring timeouts and shutdown.
    async fn read_into(&mut self, session: &mut Session) -> Result<(), End> {
        if self.flush().await.is_err() {
            return Err(End::IoError);
        }
        let mut shutdown = self.shared.shutdown.clone();
        let shutting_down = *shutdown.borrow();
        if shutting_down && !session.in_message() {
            return Err(self
                .say_and_end(Reply::shutting_down(), End::Shutdown)
                .await);
        }
        // Issue 9: a 16 KiB array here lived in every connection's future,
        // idle or not. The buffer starts small and grows while reads fill it
        // (message bodies), so an idle session holds 2 KiB.
        let mut buf = read_buffer(std::mem::take(&mut self.rbuf), session.in_message());
        let idle = self.listener.idle_timeout;
        let deadline = self.deadline;
        let Some(io) = self.io.as_mut() else {
            return Err(End::IoError);
        };
        enum Woke {
            Read(Result<std::io::Result<usize>, tokio::time::error::Elapsed>),
            Deadline,
            Shutdown,
        }
        let in_message = session.in_message();
        let woke = tokio::select! {
            r = timeout(idle, io.read(&mut buf)) => Woke::Read(r),
            _ = tokio::time::sleep_until(deadline) => Woke::Deadline,
            _ = async { if shutdown.wait_for(|s| *s).await.is_err() { std::future::pending::<()>().await } }, if !in_message => Woke::Shutdown,
        };
        let result = match woke {
            Woke::Read(r) => r,
            Woke::Deadline => {
                return Err(self
                    .say_and_end(Reply::session_timeout(), End::SessionTimeout)
                    .await);
            }
            Woke::Shutdown => {
                return Err(self
                    .say_and_end(Reply::shutting_down(), End::Shutdown)
                    .await);
            }
        };
        match result {
            Ok(Ok(0)) => session.eof(),
            Ok(Ok(n)) => {
                session.push(&buf[..n]);
                if n == buf.len() && buf.len() < READ_BUF_MAX {
                    buf.resize((buf.len() * 2).min(READ_BUF_MAX), 0);
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "read failed");
                return Err(End::IoError);
            }
            Err(_) => {
                return Err(self
                    .say_and_end(Reply::idle_timeout(), End::IdleTimeout)
                    .await);
            }
        }
        self.rbuf = buf;
        Ok(())
    }

    async fn say_and_end(&mut self, reply: Reply, end: End) -> End {
        reply.write_to(&mut self.out);
        let _ = self.flush().await;
        end
    }

    async fn start_tls(&mut self) -> Result<(), End> {
        if self.flush().await.is_err() {
            return Err(End::IoError);
        }
        let Some(io) = self.io.take() else {
            return Err(End::IoError);
        };
        let acceptor = self.shared.tls.acceptor();
        match timeout(self.listener.idle_timeout, acceptor.accept(io)).await {
            Ok(Ok(stream)) => {
                let info = tls_description(stream.get_ref().1);
                tracing::debug!(tls = %info, "STARTTLS complete");
                self.tls_info = Some(info);
                self.channel_binding = tls_exporter(stream.get_ref().1);
                self.io = Some(Box::new(stream));
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::info!(error = %e, "TLS handshake failed");
                Err(End::TlsFailed)
            }
            Err(_) => Err(End::TlsFailed),
        }
    }
}

/// Issue 4: an authenticated account may only use header From: addresses it
/// owns (550 5.7.1 after DATA); `None` when the message may be queued.
async fn header_from_refusal(
    shared: &Shared,
    user: &str,
    headers: &[u8],
) -> Option<portcullis_proto::EnqueueOutcome> {
    for from in portcullis_proto::header::from_addresses(headers) {
        match shared.auth.sender_allowed(user, &from).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(user, from = %from, "header From: not owned by the account");
                return Some(portcullis_proto::EnqueueOutcome::Refused(
                    Reply::header_from_not_owned(),
                ));
            }
            Err(e) => {
                tracing::error!(error = %e, "header From: ownership check failed");
                return Some(portcullis_proto::EnqueueOutcome::TemporaryFailure);
            }
        }
    }
    None
}

fn log_rejection(reply: &Reply) {
    if reply.code >= 400 {
        tracing::info!(target: "portcullis::mail", event = "reject", reply = %reply, "rejected");
    }
}

/// Maps store facts about a recipient for the session's relay rule.
async fn check_recipient(
    store: &crate::directory::Directory,
    mailbox: &Mailbox,
) -> RecipientStatus {
    let portcullis_proto::Domain::Name(domain) = &mailbox.domain else {
        return RecipientStatus::NotLocal;
    };
    match store.is_local_domain(domain).await {
        Ok(false) => RecipientStatus::NotLocal,
        Ok(true) => match store.account(&mailbox.to_string()).await {
            Ok(Some(_)) => RecipientStatus::LocalExists,
            // Not an account: an alias (or the domain's catch-all) may take it.
            Ok(None) => match store.resolve_alias(&mailbox.to_string()).await {
                Ok(Some(_)) => RecipientStatus::LocalExists,
                Ok(None) => RecipientStatus::LocalUnknown,
                Err(e) => {
                    tracing::error!(error = %e, "alias lookup failed");
                    RecipientStatus::TemporaryFailure
                }
            },
            // A local part we could never have created (quoted, odd characters).
            Err(portcullis_store::StoreError::Invalid(_)) => RecipientStatus::LocalUnknown,
            Err(e) => {
                tracing::error!(error = %e, "recipient lookup failed");
                RecipientStatus::TemporaryFailure
            }
        },
        Err(e) => {
            tracing::error!(error = %e, "domain lookup failed");
            RecipientStatus::TemporaryFailure
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{HeaderCapture, READ_BUF_MAX, READ_BUF_START, read_buffer};

    #[test]
    fn read_buffer_keeps_its_size_only_inside_a_message() {
        assert_eq!(read_buffer(Vec::new(), false).len(), READ_BUF_START);
        assert_eq!(read_buffer(Vec::new(), true).len(), READ_BUF_START);
        let grown = vec![7u8; READ_BUF_MAX];
        assert_eq!(read_buffer(grown.clone(), true).len(), READ_BUF_MAX);
        let idle = read_buffer(grown, false);
        assert_eq!(idle.len(), READ_BUF_START);
        assert!(
            idle.capacity() < READ_BUF_MAX,
            "the big allocation is freed"
        );
        assert_eq!(
            read_buffer(vec![1u8; READ_BUF_START], false),
            vec![1u8; READ_BUF_START]
        );
    }

    #[test]
    fn header_capture_stops_at_the_blank_line_across_chunks() {
        let mut h = HeaderCapture::default();
        h.push(b"From: a@example.com\r\n\r");
        assert!(!h.done);
        h.push(b"\nbody line\r\n");
        assert!(h.done);
        let kept = h.buf.len();
        h.push(b"From: later@example.com\r\n");
        assert_eq!(h.buf.len(), kept, "nothing is kept after the header block");
        let mut empty = HeaderCapture::default();
        empty.push(b"\r\nno headers\r\n");
        assert!(empty.done);
    }
}
