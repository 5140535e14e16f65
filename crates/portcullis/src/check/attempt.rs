//! One attempt: one port, one TLS mode, every step in order until the first
//! failure. Each step is reported to the [`Observer`] as it starts and ends;
//! the failure is kept as a typed [`Failure`] for `diagnose.rs`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::diagnose::{Ctx, diagnose};
use super::output::Observer;
use super::probe::{
    Attempt, Failure, Finding, ServerInfo, Severity, Status, Step, StepKind, TlsMode, TlsUsed,
};
use super::reply::{Reply, auth_mechanisms, ehlo_keywords, has_keyword};
use super::sasl::{Mech, Secret};
use super::smtp::{self, Conn, ConnectError, IoFailure, Transport};
use super::tls::{self, HandshakeError};

#[path = "submit.rs"]
mod submit;

/// Addresses of one host tried in turn, so many DNS records cannot make the
/// connect step last longer than this many timeouts.
const MAX_ADDRESSES: usize = 4;

/// How long a plain connection may stay silent before we also try TLS on it.
const SILENT_BEFORE_TLS_PROBE: Duration = Duration::from_secs(3);

/// What every attempt of one run shares.
pub struct Plan {
    pub host: String,
    pub addresses: Vec<IpAddr>,
    pub tls: TlsMode,
    pub user: Option<String>,
    pub password: Option<std::sync::Arc<Secret>>,
    pub mech: Option<Mech>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub send: bool,
    pub timeout: Duration,
    pub ehlo: String,
}

type Flow<T> = Result<T, Failure>;

pub struct Runner<'a> {
    plan: &'a Plan,
    obs: &'a mut dyn Observer,
    port: u16,
    addr: Option<SocketAddr>,
    name: Option<ServerName<'static>>,
    attempt: Attempt,
}

impl<'a> Runner<'a> {
    pub fn new(plan: &'a Plan, obs: &'a mut dyn Observer, port: u16) -> Runner<'a> {
        Runner {
            plan,
            obs,
            port,
            addr: None,
            name: tls::server_name(&plan.host),
            attempt: Attempt {
                port,
                tls_requested: plan.tls,
                tls_used: TlsUsed::None,
                steps: Vec::new(),
                findings: Vec::new(),
                server: ServerInfo::default(),
                ok: false,
                failure: None,
                diagnosis: None,
            },
        }
    }

    pub async fn run(mut self) -> Attempt {
        self.obs.attempt_started(self.port, self.plan.tls);
        match self.steps().await {
            Ok(conn) => {
                conn.quit().await;
                self.attempt.ok = true;
            }
            Err(failure) => {
                let ctx = Ctx {
                    host: self.plan.host.clone(),
                    port: self.port,
                    tls: self.attempt.tls_used,
                    user: self.plan.user.clone(),
                    from: self.plan.from.clone(),
                    portcullis: self.attempt.server.portcullis,
                };
                self.attempt.diagnosis = Some(diagnose(&failure, &ctx));
                self.attempt.failure = Some(failure);
            }
        }
        self.obs.attempt_done(&self.attempt);
        self.attempt
    }

    async fn steps(&mut self) -> Flow<Conn> {
        let tcp = self.connect().await?;
        let mut conn = if self.plan.tls.implicit_first(self.port) {
            match self.implicit(tcp).await? {
                Some(conn) => conn,
                None => {
                    let tcp = self.reconnect().await?;
                    self.plain_greeting(tcp).await?
                }
            }
        } else {
            self.plain_greeting(tcp).await?
        };
        let keywords = self.ehlo(&mut conn, StepKind::Ehlo).await?;
        if !conn.is_tls() {
            conn = self.maybe_starttls(conn, &keywords).await?;
        }
        self.auth(&mut conn).await?;
        self.envelope(&mut conn).await?;
        Ok(conn)
    }

    // ----- step bookkeeping -----

    fn begin(&mut self, kind: StepKind) -> (StepKind, Instant) {
        self.obs.step_started(kind);
        (kind, Instant::now())
    }

    fn record(
        &mut self,
        (kind, start): (StepKind, Instant),
        status: Status,
        summary: String,
        details: Vec<String>,
        reply: Option<Reply>,
    ) {
        let step = Step {
            step: kind,
            status,
            summary: self.clean(&summary),
            details: details.iter().map(|d| self.clean(d)).collect(),
            reply,
            elapsed_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        self.obs.step_done(&step);
        self.attempt.steps.push(step);
    }

    fn pass(&mut self, step: (StepKind, Instant), summary: String, reply: Option<Reply>) {
        self.record(step, Status::Pass, summary, Vec::new(), reply);
    }

    fn fail<T>(
        &mut self,
        step: (StepKind, Instant),
        summary: String,
        reply: Option<Reply>,
        failure: Failure,
    ) -> Flow<T> {
        self.record(step, Status::Fail, summary, Vec::new(), reply);
        Err(failure)
    }

    fn finding(&mut self, severity: Severity, text: String) {
        let finding = Finding {
            severity,
            text: self.clean(&text),
        };
        self.obs.finding(&finding);
        self.attempt.findings.push(finding);
    }

    /// Takes the password (and its encodings) out of anything the server
    /// said before it is stored or shown.
    fn clean(&self, text: &str) -> String {
        match &self.plan.password {
            Some(secret) => secret.redact(text),
            None => text.to_owned(),
        }
    }

    fn clean_reply(&self, mut reply: Reply) -> Reply {
        for line in &mut reply.lines {
            *line = self.clean(line);
        }
        reply
    }

    /// A failed read or write, as the failure of step `at`.
    fn io_failure<T>(&mut self, step: (StepKind, Instant), error: IoFailure) -> Flow<T> {
        let at = step.0;
        let failure = match &error {
            IoFailure::TimedOut { .. } => Failure::Timeout { at },
            IoFailure::Closed { .. } => Failure::Closed { at },
            IoFailure::Io(e) => Failure::ConnectError { error: e.clone() },
            IoFailure::Protocol(e) => Failure::Protocol {
                at,
                error: e.to_string(),
            },
        };
        self.fail(step, error.to_string(), None, failure)
    }

    async fn read(&mut self, conn: &mut Conn, step: (StepKind, Instant)) -> Flow<Reply> {
        match conn.read_reply().await {
            Ok(reply) => Ok(self.clean_reply(reply)),
            Err(e) => self.io_failure(step, e),
        }
    }

    async fn command(
        &mut self,
        conn: &mut Conn,
        step: (StepKind, Instant),
        line: &str,
    ) -> Flow<Reply> {
        if let Err(e) = conn.send(line).await {
            return self.io_failure(step, e);
        }
        self.read(conn, step).await
    }

    // ----- connect and greeting -----

    async fn connect(&mut self) -> Flow<TcpStream> {
        let step = self.begin(StepKind::Connect);
        let mut last = Failure::ConnectError {
            error: "no address".to_owned(),
        };
        let mut summary = String::new();
        let mut earlier = Vec::new();
        for ip in self.plan.addresses.iter().copied().take(MAX_ADDRESSES) {
            let addr = SocketAddr::new(ip, self.port);
            if !summary.is_empty() {
                earlier.push(std::mem::take(&mut summary));
            }
            match smtp::connect(addr, self.plan.timeout).await {
                Ok(tcp) => {
                    self.addr = Some(addr);
                    let text = format!("connected to {addr}");
                    self.record(step, Status::Pass, text, earlier, None);
                    return Ok(tcp);
                }
                Err(ConnectError::Refused) => {
                    summary = format!("{addr}: connection refused (nothing listens on this port)");
                    last = Failure::ConnectRefused;
                }
                Err(ConnectError::TimedOut) => {
                    summary = format!(
                        "{addr}: timed out after {} (filtered: packets are dropped)",
                        secs(self.plan.timeout)
                    );
                    last = Failure::ConnectTimeout;
                }
                Err(ConnectError::Other(error)) => {
                    summary = format!("{addr}: {error}");
                    last = Failure::ConnectError { error };
                }
            }
        }
        self.record(step, Status::Fail, summary, earlier, None);
        Err(last)
    }

    /// A second connection to the address that worked (for the TLS probe
    /// and the switch between implicit TLS and STARTTLS).
    async fn reconnect(&mut self) -> Flow<TcpStream> {
        let Some(addr) = self.addr else {
            return Err(Failure::ConnectRefused);
        };
        match smtp::connect(addr, self.plan.timeout).await {
            Ok(tcp) => Ok(tcp),
            Err(ConnectError::Refused) => Err(Failure::ConnectRefused),
            Err(ConnectError::TimedOut) => Err(Failure::ConnectTimeout),
            Err(ConnectError::Other(error)) => Err(Failure::ConnectError { error }),
        }
    }

    fn tls_name(&self) -> ServerName<'static> {
        self.name.clone().unwrap_or_else(|| {
            ServerName::IpAddress(
                self.addr
                    .map_or(IpAddr::from([127, 0, 0, 1]), |a| a.ip())
                    .into(),
            )
        })
    }

    /// Implicit TLS first. `Ok(None)`: the port speaks STARTTLS and the
    /// mode is auto, so the caller continues in plain text.
    async fn implicit(&mut self, tcp: TcpStream) -> Flow<Option<Conn>> {
        let step = self.begin(StepKind::Tls);
        match tls::handshake(tcp, self.tls_name(), self.plan.timeout).await {
            Ok(stream) => {
                self.tls_done(step, &stream, TlsUsed::Implicit);
                let conn = Conn::new(Transport::Tls(stream), self.plan.timeout);
                self.greeting(conn).await.map(Some)
            }
            Err(HandshakeError::PlainSmtp(greeting)) if self.plan.tls == TlsMode::Auto => {
                self.record(
                    step,
                    Status::Warn,
                    format!("port {} answered in plain text ({greeting}): it speaks STARTTLS, switching", self.port),
                    Vec::new(),
                    None,
                );
                self.finding(
                    Severity::Info,
                    format!(
                        "port {} speaks STARTTLS (587 style), not implicit TLS",
                        self.port
                    ),
                );
                Ok(None)
            }
            Err(HandshakeError::PlainSmtp(greeting)) => self.fail(
                step,
                format!(
                    "the server sent a plain-text greeting instead of a TLS handshake: {greeting}"
                ),
                None,
                Failure::StarttlsPort { greeting },
            ),
            Err(e) => self.handshake_failed(step, e),
        }
    }

    fn handshake_failed<T>(&mut self, step: (StepKind, Instant), error: HandshakeError) -> Flow<T> {
        let text = match error {
            HandshakeError::TimedOut => "no TLS answer within the timeout".to_owned(),
            HandshakeError::Closed => {
                "the server closed the connection during the handshake".to_owned()
            }
            HandshakeError::PlainSmtp(g) => format!("plain-text answer: {g}"),
            HandshakeError::Failed(e) => e,
        };
        self.fail(
            step,
            format!("handshake failed: {text}"),
            None,
            Failure::TlsHandshake { error: text },
        )
    }

    fn tls_done(&mut self, step: (StepKind, Instant), stream: &smtp::Tls, used: TlsUsed) {
        let info = tls::inspect(stream, &self.tls_name());
        let mut details = Vec::new();
        if let Some(cert) = &info.certificate {
            details.push(format!("subject: {}", cert.subject));
            details.push(format!("names: {}", cert.names.join(", ")));
            details.push(format!("issuer: {}", cert.issuer));
            details.push(format!(
                "valid until: {}",
                super::output::date(cert.not_after)
            ));
        }
        let summary = format!("{} {}, {}", used.describe(), info.version, info.cipher);
        let problems: Vec<String> = info.problems.iter().map(|p| p.describe()).collect();
        let status = if problems.is_empty() {
            Status::Pass
        } else {
            Status::Warn
        };
        self.record(step, status, summary, details, None);
        for problem in problems {
            self.finding(Severity::Warning, problem);
        }
        self.attempt.tls_used = used;
        self.attempt.server.tls = Some(info);
    }

    /// Plain connection: wait for the greeting; if the port stays silent,
    /// check on a second connection whether it speaks implicit TLS.
    async fn plain_greeting(&mut self, tcp: TcpStream) -> Flow<Conn> {
        let mut conn = Conn::new(
            Transport::Plain(smtp::Recording::new(tcp)),
            self.plan.timeout,
        );
        let start = Instant::now();
        self.obs.step_started(StepKind::Greeting);
        let short = SILENT_BEFORE_TLS_PROBE.min(self.plan.timeout);
        match conn.read_reply_until(start + short).await {
            Ok(reply) => {
                let step = (StepKind::Greeting, start);
                return self.check_greeting(step, self.clean_reply(reply), conn);
            }
            Err(
                IoFailure::TimedOut { seen_any: false } | IoFailure::Closed { seen_any: false },
            ) => {}
            Err(IoFailure::TimedOut { seen_any: true }) => {}
            Err(e) => {
                let step = (StepKind::Greeting, start);
                return self.io_failure(step, e);
            }
        }
        if !conn.seen_any()
            && let Some(found) = self.probe_implicit(start).await?
        {
            return Ok(found);
        }
        let step = (StepKind::Greeting, start);
        self.obs.step_started(StepKind::Greeting);
        match conn.read_reply_until(start + self.plan.timeout).await {
            Ok(reply) => self.check_greeting(step, self.clean_reply(reply), conn),
            Err(IoFailure::TimedOut { seen_any: false }) => self.fail(
                step,
                format!("no greeting within {}", secs(self.plan.timeout)),
                None,
                Failure::NoGreeting,
            ),
            Err(e) => self.io_failure(step, e),
        }
    }

    /// The plain connection is silent: does the port speak implicit TLS?
    /// In auto mode a yes means we continue on the TLS connection.
    async fn probe_implicit(&mut self, start: Instant) -> Flow<Option<Conn>> {
        let Ok(tcp) = self.reconnect().await else {
            return Ok(None);
        };
        let Ok(stream) = tls::handshake(tcp, self.tls_name(), self.plan.timeout).await else {
            return Ok(None);
        };
        if self.plan.tls == TlsMode::Auto {
            self.finding(
                Severity::Info,
                format!(
                    "port {} expects implicit TLS (465 style): switched to it",
                    self.port
                ),
            );
            let step = self.begin(StepKind::Tls);
            self.tls_done(step, &stream, TlsUsed::Implicit);
            let conn = Conn::new(Transport::Tls(stream), self.plan.timeout);
            return self.greeting(conn).await.map(Some);
        }
        let step = (StepKind::Greeting, start);
        self.obs.step_started(StepKind::Greeting);
        self.fail(
            step,
            format!(
                "no plain-text greeting within {}, but a TLS handshake works: this port expects implicit TLS (465 style)",
                secs(SILENT_BEFORE_TLS_PROBE.min(self.plan.timeout))
            ),
            None,
            Failure::ImplicitTlsPort,
        )
    }

    async fn greeting(&mut self, mut conn: Conn) -> Flow<Conn> {
        let step = self.begin(StepKind::Greeting);
        let reply = self.read(&mut conn, step).await?;
        self.check_greeting(step, reply, conn)
    }

    fn check_greeting(
        &mut self,
        step: (StepKind, Instant),
        reply: Reply,
        conn: Conn,
    ) -> Flow<Conn> {
        let text = reply.summary();
        if reply.mentions("portcullis") {
            self.attempt.server.portcullis = true;
        }
        self.attempt.server.greeting = Some(text.clone());
        if reply.code == 220 {
            self.pass(step, text, Some(reply));
            Ok(conn)
        } else {
            let failure = Failure::Rejected {
                at: StepKind::Greeting,
                reply: reply.clone(),
            };
            self.fail(step, format!("refused: {text}"), Some(reply), failure)
        }
    }

    // ----- EHLO, STARTTLS -----

    async fn ehlo(&mut self, conn: &mut Conn, kind: StepKind) -> Flow<Vec<String>> {
        let step = self.begin(kind);
        let line = format!("EHLO {}", self.plan.ehlo);
        let reply = self.command(conn, step, &line).await?;
        if reply.code != 250 {
            let failure = Failure::Rejected {
                at: kind,
                reply: reply.clone(),
            };
            return self.fail(step, reply.summary(), Some(reply), failure);
        }
        if reply
            .lines
            .first()
            .is_some_and(|l| l.contains("Portcullis"))
        {
            self.attempt.server.portcullis = true;
        }
        let keywords = ehlo_keywords(&reply);
        let mechs = auth_mechanisms(&keywords);
        let auth = if mechs.is_empty() {
            "no AUTH".to_owned()
        } else {
            format!("AUTH {}", mechs.join(" "))
        };
        let starttls = if has_keyword(&keywords, "STARTTLS") {
            ", STARTTLS"
        } else {
            ""
        };
        let summary = format!("{} extensions; {auth}{starttls}", keywords.len());
        let server = &mut self.attempt.server;
        if !conn.is_tls() {
            server.extensions_before_tls = keywords.clone();
            server.auth_before_tls = mechs;
        } else {
            server.extensions_after_tls = keywords.clone();
            server.auth_after_tls = mechs;
        }
        let details = vec![keywords.join(", ")];
        self.record(step, Status::Pass, summary, details, None);
        Ok(keywords)
    }

    async fn maybe_starttls(&mut self, mut conn: Conn, keywords: &[String]) -> Flow<Conn> {
        let wanted = matches!(self.plan.tls, TlsMode::Auto | TlsMode::Starttls);
        if !wanted {
            return Ok(conn);
        }
        if !has_keyword(keywords, "STARTTLS") {
            let requested = self.plan.tls == TlsMode::Starttls;
            if requested || self.plan.user.is_some() {
                let step = self.begin(StepKind::Starttls);
                return self.fail(
                    step,
                    "not offered by the server".to_owned(),
                    None,
                    Failure::StarttlsNotOffered { requested },
                );
            }
            self.finding(
                Severity::Warning,
                format!(
                    "port {} offers no STARTTLS: mail to it travels unencrypted",
                    self.port
                ),
            );
            return Ok(conn);
        }
        if !auth_mechanisms(keywords).is_empty() {
            self.finding(
                Severity::Info,
                "the server offers AUTH before TLS; a misconfigured client could send its password unencrypted".to_owned(),
            );
        }
        let step = self.begin(StepKind::Starttls);
        let reply = self.command(&mut conn, step, "STARTTLS").await?;
        if reply.code != 220 {
            let failure = Failure::Rejected {
                at: StepKind::Starttls,
                reply: reply.clone(),
            };
            return self.fail(step, reply.summary(), Some(reply), failure);
        }
        let Some(plain) = conn.into_plain() else {
            return Err(Failure::Protocol {
                at: StepKind::Starttls,
                error: "already in TLS".to_owned(),
            });
        };
        let stream =
            match tls::handshake(plain.into_inner(), self.tls_name(), self.plan.timeout).await {
                Ok(stream) => stream,
                Err(e) => return self.handshake_failed(step, e),
            };
        self.tls_done(step, &stream, TlsUsed::Starttls);
        let mut conn = Conn::new(Transport::Tls(stream), self.plan.timeout);
        self.ehlo(&mut conn, StepKind::EhloAfterTls).await?;
        Ok(conn)
    }
}

pub fn secs(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}
