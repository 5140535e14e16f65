//! What the check found, as data: steps with their status, findings, the
//! failure that stopped an attempt, and the whole report. No I/O; the
//! output module renders these and `--json` serializes them as they are.

use serde::Serialize;

use super::diagnose::Diagnosis;
use super::reply::Reply;
use super::tls::TlsInfo;

/// The steps, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Dns,
    Connect,
    Tls,
    Greeting,
    Ehlo,
    Starttls,
    EhloAfterTls,
    Auth,
    Mail,
    Rcpt,
    Data,
}

impl StepKind {
    pub fn label(self) -> &'static str {
        match self {
            StepKind::Dns => "DNS",
            StepKind::Connect => "Connect",
            StepKind::Tls => "TLS",
            StepKind::Greeting => "Greeting",
            StepKind::Ehlo => "EHLO",
            StepKind::Starttls => "STARTTLS",
            StepKind::EhloAfterTls => "EHLO (TLS)",
            StepKind::Auth => "AUTH",
            StepKind::Mail => "MAIL FROM",
            StepKind::Rcpt => "RCPT TO",
            StepKind::Data => "DATA",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    /// Passed, with something a user should know (e.g. self-signed cert).
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub step: StepKind,
    pub status: Status,
    pub summary: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<Reply>,
    pub elapsed_ms: u64,
}

/// The TLS mode asked for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Implicit TLS on 465, STARTTLS elsewhere, switching when the port
    /// turns out to speak the other.
    Auto,
    /// Plain connection upgraded with STARTTLS (RFC 3207, port 587 style).
    Starttls,
    /// TLS from the first byte (RFC 8314, port 465 style).
    Implicit,
    /// No TLS at all (sends the password in clear text if AUTH is tested).
    None,
}

impl TlsMode {
    /// Whether an attempt on `port` starts with a TLS handshake.
    pub fn implicit_first(self, port: u16) -> bool {
        match self {
            TlsMode::Implicit => true,
            TlsMode::Auto => port == 465,
            TlsMode::Starttls | TlsMode::None => false,
        }
    }
}

/// The TLS an attempt actually used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsUsed {
    None,
    Starttls,
    Implicit,
}

impl TlsUsed {
    pub fn describe(self) -> &'static str {
        match self {
            TlsUsed::None => "no TLS",
            TlsUsed::Starttls => "STARTTLS",
            TlsUsed::Implicit => "implicit TLS",
        }
    }
}

/// The step at which a connection failed, for timeouts and closes.
pub type At = StepKind;

/// Why an attempt stopped. Every variant has an entry in `diagnose.rs`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Failure {
    DnsNoAddress {
        mx: Vec<String>,
    },
    DnsTimeout,
    DnsError {
        error: String,
    },
    ConnectRefused,
    ConnectTimeout,
    ConnectError {
        error: String,
    },
    /// Plain connection, silence, but a TLS handshake works.
    ImplicitTlsPort,
    /// TLS handshake answered by a plain `220` greeting.
    StarttlsPort {
        greeting: String,
    },
    TlsHandshake {
        error: String,
    },
    NoGreeting,
    Timeout {
        at: At,
    },
    Closed {
        at: At,
    },
    Protocol {
        at: At,
        error: String,
    },
    /// A reply refused the step (greeting 421/554, EHLO 5xx, AUTH 535, ...).
    Rejected {
        at: At,
        reply: Reply,
    },
    StarttlsNotOffered {
        requested: bool,
    },
    AuthNotOffered {
        tls: bool,
        starttls_offered: bool,
    },
    MechNotOffered {
        mech: String,
        offered: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub text: String,
}

/// What we learned about the server, whatever the outcome.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub greeting: Option<String>,
    /// The greeting or EHLO banner names Portcullis.
    pub portcullis: bool,
    pub extensions_before_tls: Vec<String>,
    pub auth_before_tls: Vec<String>,
    pub extensions_after_tls: Vec<String>,
    pub auth_after_tls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_mechanism: Option<String>,
}

/// One port, one TLS mode: the steps run and how it ended.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub port: u16,
    pub tls_requested: TlsMode,
    pub tls_used: TlsUsed,
    pub steps: Vec<Step>,
    pub findings: Vec<Finding>,
    pub server: ServerInfo,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<Diagnosis>,
}

impl Attempt {
    pub fn auth_passed(&self) -> bool {
        self.steps
            .iter()
            .any(|s| s.step == StepKind::Auth && s.status != Status::Fail)
    }

    /// How far the attempt got (for choosing which failure to explain).
    pub fn progress(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.status != Status::Fail)
            .count()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Recommendation {
    pub port: u16,
    pub tls: TlsUsed,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mechanism: Option<String>,
    pub text: String,
}

/// The whole result, as printed by `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub host: String,
    pub ok: bool,
    pub exit_code: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<Step>,
    pub attempts: Vec<Attempt>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recommendation: Option<Recommendation>,
    /// The diagnosis to act on: the failed single attempt, or, when no port
    /// worked, the attempt that got furthest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<Diagnosis>,
    /// The port of the attempt that `diagnosis` is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnosis_port: Option<u16>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implicit_first_only_on_465_in_auto() {
        assert!(TlsMode::Auto.implicit_first(465));
        assert!(!TlsMode::Auto.implicit_first(587));
        assert!(!TlsMode::Auto.implicit_first(25));
        assert!(TlsMode::Implicit.implicit_first(587));
        assert!(!TlsMode::Starttls.implicit_first(465));
        assert!(!TlsMode::None.implicit_first(465));
    }
}
