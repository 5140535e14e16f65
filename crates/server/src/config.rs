//! Configuration: one TOML file, typed, unknown keys rejected, defaults in one
//! place ([`Config::default_config`]), validated once ([`Config::validate`]).
//!
//! Loading goes file text -> [`raw`] (every key optional, serde
//! `deny_unknown_fields`) -> defaults overlaid, durations/sizes/addresses parsed
//! -> validated [`Config`]. Every error names the key at fault, as
//! `listeners.smtp.max_recipients: must be at least 1`. Command-line flags and
//! `PORTCULLIS_*` variables are applied by the binary on the resolved
//! [`Config`], which it then validates again.

mod auth;
mod delivery;
mod mail_auth;
mod raw;
mod spool;
mod units;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use raw::{
    DurationValue, RawConfig, RawListener, RawListeners, RawLog, RawPlan, RawSecurity, RawThrottle,
    RawTls, RawUsage, SizeValue,
};

pub use auth::{
    IssuerConfig, JwksSource, JwtAlgorithm, OAuthConfig, SECRET_KEY_ENV, secret_key_configured,
};
pub use delivery::{DeliveryConfig, DestinationConfig, LocalTransport, RelayConfig, TlsPolicy};
pub use mail_auth::{DomainsConfig, InboundConfig};
pub use spool::SpoolConfig;
pub use units::{format_duration, format_size, parse_duration, parse_size};

/// What every value of a `*_secret` key prints as in [`Config::to_toml_redacted`].
pub const REDACTED: &str = "<redacted>";

/// The resolved, validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Our name in the greeting, EHLO reply and Received headers.
    pub hostname: String,
    /// Holds the SQLite database, the spool and the generated certificate.
    pub data_dir: PathBuf,
    pub log: LogConfig,
    pub tls: TlsConfig,
    pub listeners: Listeners,
    pub security: SecurityConfig,
    /// Per-IP rate limits (GCRA, in memory).
    pub throttle: ThrottleConfig,
    /// Usage reporting and warnings.
    pub usage: UsageConfig,
    /// The plan of new accounts (`portcullis account add` without `--plan`);
    /// always names an entry of [`Config::plans`].
    pub default_plan: String,
    /// Sending plans by name: the shipped ones ([`shipped_plans`]) with the
    /// file's `[plans.NAME]` tables applied.
    pub plans: BTreeMap<String, Plan>,
    /// `[delivery]`: the queue manager and outbound SMTP.
    pub delivery: DeliveryConfig,
    /// Key file for sealing CRAM-MD5 secrets (issue 6); the
    /// `PORTCULLIS_SECRET_KEY` environment variable takes precedence.
    pub secret_key_file: Option<PathBuf>,
    /// Bearer-token issuers for XOAUTH2 / OAUTHBEARER (issue 6).
    pub oauth: OAuthConfig,
    /// `[domains]`: sending domains (SPF addresses, MX).
    pub domains: DomainsConfig,
    /// `[inbound]`: SPF/DKIM/DMARC on the smtp listener.
    pub inbound: InboundConfig,
    /// `[spool]`: in-memory bodies and segment files (issue 9).
    pub spool: SpoolConfig,
}

/// A sending plan: the limits of every account on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Emails (accepted recipients) per rolling 60 minutes; at least 1.
    pub emails_per_hour: u32,
    /// Emails per rolling 24 hours; `None` = no daily limit. When set, at
    /// least `emails_per_hour`.
    pub emails_per_day: Option<u32>,
    /// Recipients per message; `None` = the listener's `max_recipients`.
    pub max_recipients: Option<usize>,
    /// Largest message in octets; `None` = the listener's `max_message_size`.
    pub max_message_size: Option<u64>,
}

/// Per-client-IP rate limits. `0` disables a limit. Networks in
/// [`SecurityConfig::trusted_networks`] are exempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// New connections per minute from one client IP, over all listeners.
    pub connections_per_minute: u32,
    /// Messages (MAIL commands) per minute from one client IP on the
    /// unauthenticated smtp listener.
    pub smtp_messages_per_minute: u32,
    /// GCRA burst: how many events may arrive at once before the per-minute
    /// spacing applies; at least 1.
    pub burst: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageConfig {
    /// Crossing this percentage of an account's hourly limit logs a warning
    /// event (once per window); 1..=100.
    pub warn_percent: u32,
    /// Enforce plan limits (default true). `false` accepts every recipient
    /// and records no usage: for benchmarking the cost of enforcement and for
    /// deployments that meter elsewhere.
    pub enforce: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing `EnvFilter` directive such as `info` or `portcullis_server=debug,info`.
    pub level: String,
    /// The one-line-per-event mail log (auth events; fail2ban reads it).
    /// `None` = `<data_dir>/log/mail.log` (see [`Config::mail_log_path`]).
    pub mail_log: Option<PathBuf>,
}

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The certificate chain and private key (PEM files). Both or neither: with
/// neither, a self-signed certificate is generated in the data dir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listeners {
    pub smtp: ListenerConfig,
    pub submission: ListenerConfig,
    pub submissions: ListenerConfig,
}

impl Listeners {
    /// The three listeners, enabled or not, in the order smtp, submission, submissions.
    pub fn iter(&self) -> impl Iterator<Item = &ListenerConfig> {
        [&self.smtp, &self.submission, &self.submissions].into_iter()
    }

    pub fn get(&self, role: ListenerRole) -> &ListenerConfig {
        match role {
            ListenerRole::Smtp => &self.smtp,
            ListenerRole::Submission => &self.submission,
            ListenerRole::Submissions => &self.submissions,
        }
    }

    pub fn get_mut(&mut self, role: ListenerRole) -> &mut ListenerConfig {
        match role {
            ListenerRole::Smtp => &mut self.smtp,
            ListenerRole::Submission => &mut self.submission,
            ListenerRole::Submissions => &mut self.submissions,
        }
    }
}

/// What a listener is for; fixes its TLS mode and whether AUTH is offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerRole {
    /// MX: inbound for local domains, no AUTH, no relay (production port 25).
    Smtp,
    /// STARTTLS, AUTH required, RFC 6409 (production port 587).
    Submission,
    /// Implicit TLS, AUTH required, RFC 8314 (production port 465).
    Submissions,
}

impl ListenerRole {
    pub const ALL: [ListenerRole; 3] = [
        ListenerRole::Smtp,
        ListenerRole::Submission,
        ListenerRole::Submissions,
    ];

    /// The name used in the config file (`[listeners.<name>]`) and in logs.
    pub fn name(self) -> &'static str {
        match self {
            ListenerRole::Smtp => "smtp",
            ListenerRole::Submission => "submission",
            ListenerRole::Submissions => "submissions",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerConfig {
    pub role: ListenerRole,
    pub enabled: bool,
    pub address: SocketAddr,
    /// Concurrent connections on this listener.
    pub max_connections: usize,
    /// Concurrent connections from one client IP on this listener.
    pub max_connections_per_ip: usize,
    /// Largest accepted message in octets (advertised as SIZE).
    pub max_message_size: u64,
    /// RCPT commands accepted per transaction.
    pub max_recipients: usize,
    /// Longest command line including CRLF (RFC 5321 4.5.3.1.4: at least 512).
    pub max_command_line: usize,
    /// Longest DATA text line including CRLF (RFC 5321 4.5.3.1.6: at least 1000).
    pub max_text_line: usize,
    /// Time allowed waiting for the client's next command or data chunk.
    pub idle_timeout: Duration,
    /// Total lifetime of one connection.
    pub session_timeout: Duration,
    /// Protocol errors tolerated before the connection is closed.
    pub max_errors: u32,
    /// SASL mechanisms offered after TLS, in EHLO order (issue 6).
    pub mechanisms: Vec<portcullis_proto::Mechanism>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityConfig {
    /// Every AUTH reply is delayed to at least this long after the command.
    pub auth_min_duration: Duration,
    /// Failed AUTH attempts on one connection before `421` and close.
    pub max_auth_failures: u32,
    /// Client networks exempt from the per-IP throttles (`[throttle]`),
    /// the brute-force defence and bans.
    /// A bare IP in the file is a /32 or /128; host bits are cleared.
    pub trusted_networks: Vec<IpNet>,
    /// Shortest password accepted when one is set (policy; default 12).
    pub password_min_length: usize,
    /// Main passwords older than this fail AUTH (`password_expired`);
    /// `None` (`"off"`, the default, per NIST SP 800-63B) = never.
    pub password_max_age: Option<Duration>,
    /// Authenticated clients may only use their own addresses as MAIL FROM.
    pub enforce_sender: bool,
    /// Also check the header From: after DATA (needs `enforce_sender`).
    pub check_header_from: bool,
    /// Brute-force defence thresholds.
    pub bruteforce: BruteForceConfig,
    /// How long auth audit events are kept in the store.
    pub audit_retention: Duration,
}

/// Thresholds of the brute-force defence. Failures are counted as distinct
/// attempted secrets in sliding windows, per (client IP, claimed user) and
/// per client subnet (/24 IPv4, /64 IPv6). `0` disables a threshold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BruteForceConfig {
    /// Window of the per-(IP, user) counter (default 15m).
    pub window: Duration,
    /// From this many failures per (IP, user) in `window`, AUTH answers are
    /// delayed by `delay` (default 5).
    pub delay_after: u32,
    /// The added delay (default 3s).
    pub delay: Duration,
    /// From this many failures per (IP, user) in `window`, AUTH gets
    /// `421 4.7.0` and the connection is closed (default 10).
    pub block_after: u32,
    /// Window of the per-subnet counter (default 1h).
    pub subnet_window: Duration,
    /// This many failures from one subnet in `subnet_window` ban the subnet (default 30).
    pub subnet_ban_after: u32,
    /// The first ban's length; each repeat doubles it (default 1h).
    pub ban_duration: Duration,
    /// The longest ban (default 1 week).
    pub ban_max_duration: Duration,
    /// A successful login makes its IP a usual IP of the account for this
    /// long (default 30d); failures elsewhere never block it there.
    pub usual_ip_ttl: Duration,
}

impl SecurityConfig {
    /// Whether `ip` is in one of [`SecurityConfig::trusted_networks`]. An
    /// IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, as seen on a `[::]`
    /// listener) is also checked as the IPv4 address it maps.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let canonical = ip.to_canonical();
        self.trusted_networks
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical))
    }
}

/// Why a configuration was refused. The message always names the file or key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, unknown key or wrong type; the text names the key and line.
    #[error("{0}")]
    Parse(String),
    /// A well-formed value that is not acceptable.
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

// ---------------------------------------------------------------------------
// Defaults: the one place they are written down.

const DEFAULT_DATA_DIR: &str = "./portcullis-data";
const DEFAULT_HOSTNAME: &str = "localhost";
const DEFAULT_LOG_LEVEL: &str = "info";
const DEFAULT_LOG_FORMAT: LogFormat = LogFormat::Text;
const DEFAULT_MAX_CONNECTIONS: usize = 1000;
const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 20;
const DEFAULT_MAX_MESSAGE_SIZE: u64 = 25 * 1024 * 1024;
const DEFAULT_MAX_RECIPIENTS: usize = 100;
/// RFC 5321 4.5.3.1.4: command line including CRLF.
const MIN_COMMAND_LINE: usize = 512;
/// RFC 5321 4.5.3.1.6: text line including CRLF.
const MIN_TEXT_LINE: usize = 1000;
/// RFC 5321 4.5.3.2.7: the server should wait at least 5 minutes for the next command.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const DEFAULT_MAX_ERRORS: u32 = 10;
const DEFAULT_AUTH_MIN_DURATION: Duration = Duration::from_millis(250);
const DEFAULT_MAX_AUTH_FAILURES: u32 = 3;
const DEFAULT_PASSWORD_MIN_LENGTH: usize = 12;
const DEFAULT_CONNECTIONS_PER_MINUTE: u32 = 600;
const DEFAULT_SMTP_MESSAGES_PER_MINUTE: u32 = 30;
const DEFAULT_BURST: u32 = 50;
const DEFAULT_WARN_PERCENT: u32 = 90;
/// The plan of new accounts unless `default_plan` says otherwise.
pub const DEFAULT_PLAN: &str = "standard";
/// Longest plan name, in characters (all ASCII).
pub const MAX_PLAN_NAME_LEN: usize = 64;
/// Smallest `max_message_size` a plan may set, in octets.
pub const MIN_PLAN_MESSAGE_SIZE: u64 = 1024;

/// The plans every installation has unless the file overrides them: the
/// market's usual tiers by emails per hour, with no daily limit and the
/// listeners' per-message limits.
pub fn shipped_plans() -> BTreeMap<String, Plan> {
    [
        ("trial", 1000),
        ("standard", 1500),
        ("premium", 3000),
        ("professional", 5000),
    ]
    .into_iter()
    .map(|(name, emails_per_hour)| {
        (
            name.to_owned(),
            Plan {
                emails_per_hour,
                emails_per_day: None,
                max_recipients: None,
                max_message_size: None,
            },
        )
    })
    .collect()
}

/// Why `name` is not usable as a plan name: 1 to [`MAX_PLAN_NAME_LEN`]
/// characters of `a-z`, `0-9`, `_` and `-`.
pub fn plan_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("plan name must not be empty".to_owned());
    }
    if name.len() > MAX_PLAN_NAME_LEN {
        return Some(format!(
            "plan name must be at most {MAX_PLAN_NAME_LEN} characters"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Some(format!(
            "invalid plan name {name:?} (use lowercase letters, digits, '_' and '-')"
        ));
    }
    None
}

impl ListenerRole {
    /// The zero-config address (unprivileged ports; production uses 25/587/465).
    pub fn default_address(self) -> SocketAddr {
        let port = match self {
            ListenerRole::Smtp => 2525,
            ListenerRole::Submission => 2587,
            ListenerRole::Submissions => 2465,
        };
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
    }
}

impl ListenerConfig {
    /// The defaults for a listener of `role`.
    pub fn default_for(role: ListenerRole) -> ListenerConfig {
        ListenerConfig {
            role,
            enabled: true,
            address: role.default_address(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_recipients: DEFAULT_MAX_RECIPIENTS,
            max_command_line: MIN_COMMAND_LINE,
            max_text_line: MIN_TEXT_LINE,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            max_errors: DEFAULT_MAX_ERRORS,
            mechanisms: portcullis_proto::Mechanism::DEFAULTS.to_vec(),
        }
    }
}

/// The system hostname if it is usable as an SMTP domain, else `localhost`.
fn system_hostname() -> String {
    hostname::get()
        .ok()
        .and_then(|name| name.into_string().ok())
        .filter(|name| hostname_problem(name).is_none())
        .unwrap_or_else(|| DEFAULT_HOSTNAME.to_owned())
}

// ---------------------------------------------------------------------------
// Loading.

impl Config {
    /// The configuration used when no file is given.
    pub fn default_config() -> Config {
        Config {
            hostname: system_hostname(),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            log: LogConfig {
                format: DEFAULT_LOG_FORMAT,
                level: DEFAULT_LOG_LEVEL.to_owned(),
                mail_log: None,
            },
            tls: TlsConfig {
                cert: None,
                key: None,
            },
            listeners: Listeners {
                smtp: ListenerConfig::default_for(ListenerRole::Smtp),
                submission: ListenerConfig::default_for(ListenerRole::Submission),
                submissions: ListenerConfig::default_for(ListenerRole::Submissions),
            },
            security: SecurityConfig {
                auth_min_duration: DEFAULT_AUTH_MIN_DURATION,
                max_auth_failures: DEFAULT_MAX_AUTH_FAILURES,
                trusted_networks: Vec::new(),
                password_min_length: DEFAULT_PASSWORD_MIN_LENGTH,
                password_max_age: None,
                enforce_sender: true,
                check_header_from: true,
                bruteforce: BruteForceConfig {
                    window: Duration::from_secs(15 * 60),
                    delay_after: 5,
                    delay: Duration::from_secs(3),
                    block_after: 10,
                    subnet_window: Duration::from_secs(3600),
                    subnet_ban_after: 30,
                    ban_duration: Duration::from_secs(3600),
                    ban_max_duration: Duration::from_secs(7 * 24 * 3600),
                    usual_ip_ttl: Duration::from_secs(30 * 24 * 3600),
                },
                audit_retention: Duration::from_secs(90 * 24 * 3600),
            },
            throttle: ThrottleConfig {
                connections_per_minute: DEFAULT_CONNECTIONS_PER_MINUTE,
                smtp_messages_per_minute: DEFAULT_SMTP_MESSAGES_PER_MINUTE,
                burst: DEFAULT_BURST,
            },
            usage: UsageConfig {
                warn_percent: DEFAULT_WARN_PERCENT,
                enforce: true,
            },
            default_plan: DEFAULT_PLAN.to_owned(),
            plans: shipped_plans(),
            delivery: DeliveryConfig::defaults(),
            secret_key_file: None,
            oauth: OAuthConfig::default(),
            domains: DomainsConfig::defaults(),
            inbound: InboundConfig::defaults(),
            spool: SpoolConfig::defaults(),
        }
    }

    /// Where the mail log goes: `[log] mail_log`, else `<data_dir>/log/mail.log`.
    pub fn mail_log_path(&self) -> PathBuf {
        match &self.log.mail_log {
            Some(p) => p.clone(),
            None => self.data_dir.join("log").join("mail.log"),
        }
    }

    /// The plan called `name`, if the configuration defines it.
    pub fn plan(&self, name: &str) -> Option<&Plan> {
        self.plans.get(name)
    }

    /// The defined plan names, sorted, comma-separated (for error messages:
    /// `premium, professional, standard, trial`).
    pub fn plan_names(&self) -> String {
        self.plans
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Reads and validates the file at `path`, or returns the defaults when
    /// `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default_config());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml_str(&text)
    }

    /// Parses and validates TOML text; missing keys take their defaults.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let deserializer = toml::de::Deserializer::parse(text)
            .map_err(|e| ConfigError::Parse(describe_toml_error(text, None, &e)))?;
        let raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            let path = (path != ".").then_some(path);
            ConfigError::Parse(describe_toml_error(text, path.as_deref(), e.inner()))
        })?;
        let config = Config::resolve(raw)?;
        config.validate()?;
        Ok(config)
    }

    /// Overlays the file's values on the defaults, parsing durations, sizes and
    /// addresses.
    fn resolve(raw: RawConfig) -> Result<Config, ConfigError> {
        let mut config = Config::default_config();
        if let Some(hostname) = raw.hostname {
            config.hostname = hostname;
        }
        if let Some(data_dir) = raw.data_dir {
            config.data_dir = data_dir;
        }
        let RawLog {
            format,
            level,
            mail_log,
        } = raw.log;
        if let Some(format) = format {
            config.log.format = format;
        }
        if let Some(mail_log) = mail_log {
            config.log.mail_log = Some(mail_log);
        }
        if let Some(level) = level {
            config.log.level = level;
        }
        config.secret_key_file = raw.secret_key_file;
        config.oauth = auth::resolve_oauth(raw.oauth)?;
        let RawTls { cert, key } = raw.tls;
        config.tls = TlsConfig { cert, key };
        let RawListeners {
            smtp,
            submission,
            submissions,
        } = raw.listeners;
        for (role, raw_listener) in [
            (ListenerRole::Smtp, smtp),
            (ListenerRole::Submission, submission),
            (ListenerRole::Submissions, submissions),
        ] {
            if let Some(raw_listener) = raw_listener {
                resolve_listener(config.listeners.get_mut(role), raw_listener)?;
            }
        }
        let RawSecurity {
            auth_min_duration,
            max_auth_failures,
            trusted_networks,
            password_min_length,
            password_max_age,
            enforce_sender,
            check_header_from,
            bruteforce_window,
            bruteforce_delay_after,
            bruteforce_delay,
            bruteforce_block_after,
            bruteforce_subnet_window,
            bruteforce_subnet_ban_after,
            ban_duration,
            ban_max_duration,
            usual_ip_ttl,
            audit_retention,
        } = raw.security;
        let sec = &mut config.security;
        if let Some(v) = password_min_length {
            sec.password_min_length = v;
        }
        if let Some(v) = password_max_age {
            sec.password_max_age = parse_optional_duration_key("security.password_max_age", &v.0)?;
        }
        if let Some(v) = enforce_sender {
            sec.enforce_sender = v;
        }
        if let Some(v) = check_header_from {
            sec.check_header_from = v;
        }
        let bf = &mut sec.bruteforce;
        if let Some(v) = bruteforce_window {
            bf.window = parse_duration_key("security.bruteforce_window", &v.0)?;
        }
        if let Some(v) = bruteforce_delay_after {
            bf.delay_after = v;
        }
        if let Some(v) = bruteforce_delay {
            bf.delay = parse_duration_key("security.bruteforce_delay", &v.0)?;
        }
        if let Some(v) = bruteforce_block_after {
            bf.block_after = v;
        }
        if let Some(v) = bruteforce_subnet_window {
            bf.subnet_window = parse_duration_key("security.bruteforce_subnet_window", &v.0)?;
        }
        if let Some(v) = bruteforce_subnet_ban_after {
            bf.subnet_ban_after = v;
        }
        if let Some(v) = ban_duration {
            bf.ban_duration = parse_duration_key("security.ban_duration", &v.0)?;
        }
        if let Some(v) = ban_max_duration {
            bf.ban_max_duration = parse_duration_key("security.ban_max_duration", &v.0)?;
        }
        if let Some(v) = usual_ip_ttl {
            bf.usual_ip_ttl = parse_duration_key("security.usual_ip_ttl", &v.0)?;
        }
        if let Some(v) = audit_retention {
            sec.audit_retention = parse_duration_key("security.audit_retention", &v.0)?;
        }
        if let Some(value) = auth_min_duration {
            config.security.auth_min_duration =
                parse_duration_key("security.auth_min_duration", &value.0)?;
        }
        if let Some(value) = max_auth_failures {
            config.security.max_auth_failures = value;
        }
        if let Some(networks) = trusted_networks {
            config.security.trusted_networks = networks
                .iter()
                .enumerate()
                .map(|(i, text)| parse_network(&format!("security.trusted_networks[{i}]"), text))
                .collect::<Result<_, _>>()?;
        }
        let RawThrottle {
            connections_per_minute,
            smtp_messages_per_minute,
            burst,
        } = raw.throttle;
        if let Some(value) = connections_per_minute {
            config.throttle.connections_per_minute = value;
        }
        if let Some(value) = smtp_messages_per_minute {
            config.throttle.smtp_messages_per_minute = value;
        }
        if let Some(value) = burst {
            config.throttle.burst = value;
        }
        let RawUsage {
            warn_percent,
            enforce,
        } = raw.usage;
        if let Some(value) = enforce {
            config.usage.enforce = value;
        }
        if let Some(value) = warn_percent {
            config.usage.warn_percent = value;
        }
        for (name, raw_plan) in raw.plans {
            resolve_plan(&mut config.plans, name, raw_plan)?;
        }
        if let Some(name) = raw.default_plan {
            config.default_plan = name;
        }
        config.delivery = delivery::resolve(raw.delivery)?;
        config.domains = mail_auth::resolve_domains(raw.domains)?;
        config.inbound = mail_auth::resolve_inbound(raw.inbound);
        config.spool = spool::resolve(raw.spool)?;
        Ok(config)
    }

    /// Checks every cross-field and range rule; the error names the key.
    /// Called by [`Config::from_toml_str`]; call it again after changing a
    /// loaded config (e.g. from command-line overrides).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(problem) = hostname_problem(&self.hostname) {
            return Err(ConfigError::invalid("hostname", problem));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("data_dir", "must not be empty"));
        }
        if self.log.level.trim().is_empty() {
            return Err(ConfigError::invalid(
                "log.level",
                "must not be empty (use e.g. \"info\")",
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log.level) {
            return Err(ConfigError::invalid(
                "log.level",
                format!("invalid filter {:?}: {e}", self.log.level),
            ));
        }
        match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "tls.key",
                    "must be set when tls.cert is set",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "tls.cert",
                    "must be set when tls.key is set",
                ));
            }
            (Some(cert), Some(key)) => {
                if cert.as_os_str().is_empty() {
                    return Err(ConfigError::invalid("tls.cert", "must not be empty"));
                }
                if key.as_os_str().is_empty() {
                    return Err(ConfigError::invalid("tls.key", "must not be empty"));
                }
            }
            (None, None) => {}
        }
        for listener in self.listeners.iter() {
            validate_listener(listener)?;
            if listener.enabled
                && listener
                    .mechanisms
                    .contains(&portcullis_proto::Mechanism::CramMd5)
                && !secret_key_configured(self.secret_key_file.as_deref())
            {
                return Err(ConfigError::invalid(
                    format!("listeners.{}.mechanisms", listener.role.name()),
                    format!(
                        "CRAM-MD5 needs a secret key: set secret_key_file or the {SECRET_KEY_ENV} environment variable"
                    ),
                ));
            }
        }
        auth::validate_oauth(&self.oauth)?;
        if !self.listeners.iter().any(|l| l.enabled) {
            return Err(ConfigError::invalid(
                "listeners",
                "at least one listener must be enabled",
            ));
        }
        let enabled: Vec<&ListenerConfig> = self.listeners.iter().filter(|l| l.enabled).collect();
        for (i, later) in enabled.iter().enumerate() {
            for earlier in &enabled[..i] {
                if addresses_conflict(earlier.address, later.address) {
                    return Err(ConfigError::invalid(
                        format!("listeners.{}.address", later.role.name()),
                        format!(
                            "{} conflicts with listeners.{}.address {} (two enabled listeners cannot share a port)",
                            later.address,
                            earlier.role.name(),
                            earlier.address
                        ),
                    ));
                }
            }
        }
        if self.security.max_auth_failures < 1 {
            return Err(ConfigError::invalid(
                "security.max_auth_failures",
                "must be at least 1",
            ));
        }
        if self.security.password_min_length < 8 {
            return Err(ConfigError::invalid(
                "security.password_min_length",
                "must be at least 8 (NIST SP 800-63B)",
            ));
        }
        let bf = &self.security.bruteforce;
        if bf.window.is_zero() {
            return Err(ConfigError::invalid(
                "security.bruteforce_window",
                "must not be 0",
            ));
        }
        if bf.subnet_window.is_zero() {
            return Err(ConfigError::invalid(
                "security.bruteforce_subnet_window",
                "must not be 0",
            ));
        }
        if bf.ban_duration.is_zero() {
            return Err(ConfigError::invalid(
                "security.ban_duration",
                "must not be 0",
            ));
        }
        if bf.ban_max_duration < bf.ban_duration {
            return Err(ConfigError::invalid(
                "security.ban_max_duration",
                "must be at least security.ban_duration",
            ));
        }
        if self.security.audit_retention.is_zero() {
            return Err(ConfigError::invalid(
                "security.audit_retention",
                "must not be 0",
            ));
        }
        if self.throttle.burst < 1 {
            return Err(ConfigError::invalid(
                "throttle.burst",
                "must be at least 1 (set a per-minute limit to 0 to disable it)",
            ));
        }
        if !(1..=100).contains(&self.usage.warn_percent) {
            return Err(ConfigError::invalid(
                "usage.warn_percent",
                "must be between 1 and 100",
            ));
        }
        for (name, plan) in &self.plans {
            validate_plan(name, plan)?;
        }
        self.spool.validate()?;
        if self.plan(&self.default_plan).is_none() {
            return Err(ConfigError::invalid(
                "default_plan",
                format!(
                    "unknown plan {:?} (known plans: {})",
                    self.default_plan,
                    self.plan_names()
                ),
            ));
        }
        Ok(())
    }

    /// The full resolved configuration as TOML that [`Config::from_toml_str`]
    /// accepts back. Values of `*_secret` keys print as [`REDACTED`].
    pub fn to_toml_redacted(&self) -> String {
        let raw = self.to_raw();
        let mut table = match toml::Table::try_from(&raw) {
            Ok(table) => table,
            Err(e) => return format!("# cannot render the configuration: {e}\n"),
        };
        redact(&mut table);
        match toml::to_string(&table) {
            Ok(text) => text,
            Err(e) => format!("# cannot render the configuration: {e}\n"),
        }
    }

    /// The file-layer form with every key present.
    fn to_raw(&self) -> RawConfig {
        let lossy = |p: &Path| PathBuf::from(p.to_string_lossy().into_owned());
        let dur = |d: Duration| DurationValue(units::format_duration(d));
        let listener = |l: &ListenerConfig| {
            Some(RawListener {
                enabled: Some(l.enabled),
                address: Some(l.address.to_string()),
                max_connections: Some(l.max_connections),
                max_connections_per_ip: Some(l.max_connections_per_ip),
                max_message_size: Some(SizeValue::Text(units::format_size(l.max_message_size))),
                max_recipients: Some(l.max_recipients),
                max_command_line: Some(l.max_command_line),
                max_text_line: Some(l.max_text_line),
                idle_timeout: Some(DurationValue(units::format_duration(l.idle_timeout))),
                session_timeout: Some(DurationValue(units::format_duration(l.session_timeout))),
                max_errors: Some(l.max_errors),
                mechanisms: Some(auth::mechanism_names(&l.mechanisms)),
            })
        };
        RawConfig {
            hostname: Some(self.hostname.clone()),
            data_dir: Some(lossy(&self.data_dir)),
            log: RawLog {
                format: Some(self.log.format),
                level: Some(self.log.level.clone()),
                mail_log: self.log.mail_log.as_deref().map(lossy),
            },
            tls: RawTls {
                cert: self.tls.cert.as_deref().map(lossy),
                key: self.tls.key.as_deref().map(lossy),
            },
            listeners: RawListeners {
                smtp: listener(&self.listeners.smtp),
                submission: listener(&self.listeners.submission),
                submissions: listener(&self.listeners.submissions),
            },
            security: RawSecurity {
                auth_min_duration: Some(DurationValue(units::format_duration(
                    self.security.auth_min_duration,
                ))),
                max_auth_failures: Some(self.security.max_auth_failures),
                trusted_networks: Some(
                    self.security
                        .trusted_networks
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                ),
                password_min_length: Some(self.security.password_min_length),
                password_max_age: Some(DurationValue(match self.security.password_max_age {
                    Some(d) => units::format_duration(d),
                    None => "off".to_owned(),
                })),
                enforce_sender: Some(self.security.enforce_sender),
                check_header_from: Some(self.security.check_header_from),
                bruteforce_window: Some(dur(self.security.bruteforce.window)),
                bruteforce_delay_after: Some(self.security.bruteforce.delay_after),
                bruteforce_delay: Some(dur(self.security.bruteforce.delay)),
                bruteforce_block_after: Some(self.security.bruteforce.block_after),
                bruteforce_subnet_window: Some(dur(self.security.bruteforce.subnet_window)),
                bruteforce_subnet_ban_after: Some(self.security.bruteforce.subnet_ban_after),
                ban_duration: Some(dur(self.security.bruteforce.ban_duration)),
                ban_max_duration: Some(dur(self.security.bruteforce.ban_max_duration)),
                usual_ip_ttl: Some(dur(self.security.bruteforce.usual_ip_ttl)),
                audit_retention: Some(dur(self.security.audit_retention)),
            },
            throttle: RawThrottle {
                connections_per_minute: Some(self.throttle.connections_per_minute),
                smtp_messages_per_minute: Some(self.throttle.smtp_messages_per_minute),
                burst: Some(self.throttle.burst),
            },
            usage: RawUsage {
                warn_percent: Some(self.usage.warn_percent),
                enforce: Some(self.usage.enforce),
            },
            default_plan: Some(self.default_plan.clone()),
            secret_key_file: self.secret_key_file.as_deref().map(lossy),
            oauth: auth::to_raw_oauth(&self.oauth),
            plans: self
                .plans
                .iter()
                .map(|(name, plan)| {
                    (
                        name.clone(),
                        RawPlan {
                            emails_per_hour: Some(plan.emails_per_hour),
                            emails_per_day: plan.emails_per_day,
                            max_recipients: plan.max_recipients,
                            max_message_size: plan
                                .max_message_size
                                .map(|size| SizeValue::Text(units::format_size(size))),
                        },
                    )
                })
                .collect(),
            delivery: delivery::to_raw(&self.delivery),
            domains: mail_auth::domains_to_raw(&self.domains),
            inbound: mail_auth::inbound_to_raw(&self.inbound),
            spool: spool::to_raw(&self.spool),
        }
    }
}

/// Applies one `[plans.NAME]` table: overrides the named plan key by key, or
/// adds a new plan (which must set `emails_per_hour`).
fn resolve_plan(
    plans: &mut BTreeMap<String, Plan>,
    name: String,
    raw: RawPlan,
) -> Result<(), ConfigError> {
    if let Some(problem) = plan_name_problem(&name) {
        return Err(ConfigError::invalid(format!("plans.{name}"), problem));
    }
    let key = |field: &str| format!("plans.{name}.{field}");
    let RawPlan {
        emails_per_hour,
        emails_per_day,
        max_recipients,
        max_message_size,
    } = raw;
    let max_message_size = match max_message_size {
        None => None,
        Some(SizeValue::Bytes(bytes)) => Some(bytes),
        Some(SizeValue::Text(text)) => Some(units::parse_size(&text).ok_or_else(|| {
            ConfigError::invalid(
                key("max_message_size"),
                format!("invalid size {text:?} (use bytes or e.g. 25MiB, 10MB, 512KiB)"),
            )
        })?),
    };
    let plan = match plans.get_mut(&name) {
        Some(plan) => plan,
        None => {
            let Some(emails_per_hour) = emails_per_hour else {
                return Err(ConfigError::invalid(
                    key("emails_per_hour"),
                    format!(
                        "must be set for the new plan {name:?} (only the shipped plans {} have a default)",
                        shipped_plans()
                            .keys()
                            .map(String::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            };
            plans.entry(name.clone()).or_insert(Plan {
                emails_per_hour,
                emails_per_day: None,
                max_recipients: None,
                max_message_size: None,
            })
        }
    };
    if let Some(value) = emails_per_hour {
        plan.emails_per_hour = value;
    }
    if let Some(value) = emails_per_day {
        plan.emails_per_day = Some(value);
    }
    if let Some(value) = max_recipients {
        plan.max_recipients = Some(value);
    }
    if let Some(value) = max_message_size {
        plan.max_message_size = Some(value);
    }
    Ok(())
}

fn validate_plan(name: &str, plan: &Plan) -> Result<(), ConfigError> {
    if let Some(problem) = plan_name_problem(name) {
        return Err(ConfigError::invalid(format!("plans.{name}"), problem));
    }
    let key = |field: &str| format!("plans.{name}.{field}");
    if plan.emails_per_hour < 1 {
        return Err(ConfigError::invalid(
            key("emails_per_hour"),
            "must be at least 1",
        ));
    }
    if let Some(per_day) = plan.emails_per_day
        && per_day < plan.emails_per_hour
    {
        return Err(ConfigError::invalid(
            key("emails_per_day"),
            format!(
                "must be at least emails_per_hour ({}) when set",
                plan.emails_per_hour
            ),
        ));
    }
    if plan.max_recipients == Some(0) {
        return Err(ConfigError::invalid(
            key("max_recipients"),
            "must be at least 1",
        ));
    }
    if let Some(size) = plan.max_message_size
        && size < MIN_PLAN_MESSAGE_SIZE
    {
        return Err(ConfigError::invalid(
            key("max_message_size"),
            format!("must be at least {MIN_PLAN_MESSAGE_SIZE} (1KiB)"),
        ));
    }
    Ok(())
}

/// A trusted network: CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a bare IP
/// (a /32 or /128). Host bits are cleared (`10.1.2.3/8` is `10.0.0.0/8`).
fn parse_network(key: &str, text: &str) -> Result<IpNet, ConfigError> {
    let parsed = crate::security::bans::parse_network(text);
    parsed.ok_or_else(|| {
        ConfigError::invalid(
            key,
            format!(
                "invalid network {text:?} (use an IP address or CIDR, e.g. 10.0.0.0/8, 192.0.2.7 or 2001:db8::/32)"
            ),
        )
    })
}

fn resolve_listener(listener: &mut ListenerConfig, raw: RawListener) -> Result<(), ConfigError> {
    let key = |field: &str| format!("listeners.{}.{field}", listener.role.name());
    let RawListener {
        enabled,
        address,
        max_connections,
        max_connections_per_ip,
        max_message_size,
        max_recipients,
        max_command_line,
        max_text_line,
        idle_timeout,
        session_timeout,
        max_errors,
        mechanisms,
    } = raw;
    if let Some(v) = enabled {
        listener.enabled = v;
    }
    if let Some(v) = address {
        listener.address = v.trim().parse().map_err(|_| {
            ConfigError::invalid(
                key("address"),
                format!("invalid address {v:?} (use IP:PORT, e.g. 0.0.0.0:587 or [::]:587)"),
            )
        })?;
    }
    if let Some(v) = max_connections {
        listener.max_connections = v;
    }
    if let Some(v) = max_connections_per_ip {
        listener.max_connections_per_ip = v;
    }
    if let Some(v) = max_message_size {
        listener.max_message_size = match v {
            SizeValue::Bytes(bytes) => bytes,
            SizeValue::Text(text) => units::parse_size(&text).ok_or_else(|| {
                ConfigError::invalid(
                    key("max_message_size"),
                    format!("invalid size {text:?} (use bytes or e.g. 25MiB, 10MB, 512KiB)"),
                )
            })?,
        };
    }
    if let Some(v) = max_recipients {
        listener.max_recipients = v;
    }
    if let Some(v) = max_command_line {
        listener.max_command_line = v;
    }
    if let Some(v) = max_text_line {
        listener.max_text_line = v;
    }
    if let Some(v) = idle_timeout {
        listener.idle_timeout = parse_duration_key(&key("idle_timeout"), &v.0)?;
    }
    if let Some(v) = session_timeout {
        listener.session_timeout = parse_duration_key(&key("session_timeout"), &v.0)?;
    }
    if let Some(v) = max_errors {
        listener.max_errors = v;
    }
    if let Some(v) = mechanisms {
        listener.mechanisms = auth::parse_mechanisms(&key("mechanisms"), &v)?;
    }
    Ok(())
}

fn validate_listener(l: &ListenerConfig) -> Result<(), ConfigError> {
    let key = |field: &str| format!("listeners.{}.{field}", l.role.name());
    let at_least = |field: &str, value: u64, min: u64, why: &str| {
        if value < min {
            Err(ConfigError::invalid(
                key(field),
                format!("must be at least {min}{why}"),
            ))
        } else {
            Ok(())
        }
    };
    at_least("max_connections", l.max_connections as u64, 1, "")?;
    at_least(
        "max_connections_per_ip",
        l.max_connections_per_ip as u64,
        1,
        "",
    )?;
    at_least("max_message_size", l.max_message_size, 1, "")?;
    at_least("max_recipients", l.max_recipients as u64, 1, "")?;
    at_least(
        "max_command_line",
        l.max_command_line as u64,
        MIN_COMMAND_LINE as u64,
        " (RFC 5321 4.5.3.1.4)",
    )?;
    at_least(
        "max_text_line",
        l.max_text_line as u64,
        MIN_TEXT_LINE as u64,
        " (RFC 5321 4.5.3.1.6)",
    )?;
    at_least("max_errors", u64::from(l.max_errors), 1, "")?;
    if l.idle_timeout.is_zero() {
        return Err(ConfigError::invalid(
            key("idle_timeout"),
            "must be longer than 0s",
        ));
    }
    if l.session_timeout.is_zero() {
        return Err(ConfigError::invalid(
            key("session_timeout"),
            "must be longer than 0s",
        ));
    }
    Ok(())
}

/// Whether two listeners would fight over one port. Port 0 (pick any free
/// port) never conflicts; an unspecified IP conflicts with every IP of its family.
fn addresses_conflict(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    a.ip() == b.ip()
        || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified()))
}

/// A duration that may be switched off: `"off"` (or `"0"`) gives `None`.
fn parse_optional_duration_key(key: &str, text: &str) -> Result<Option<Duration>, ConfigError> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("off") || t == "0" {
        return Ok(None);
    }
    let d = parse_duration_key(key, t)?;
    Ok((!d.is_zero()).then_some(d))
}

fn parse_duration_key(key: &str, text: &str) -> Result<Duration, ConfigError> {
    units::parse_duration(text).ok_or_else(|| {
        ConfigError::invalid(
            key,
            format!("invalid duration {text:?} (use e.g. 30s, 5m, 1h)"),
        )
    })
}

/// Why `name` is not usable as our SMTP domain name, if it is not.
fn hostname_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".to_owned());
    }
    if name.len() > 253 {
        return Some("must be at most 253 characters".to_owned());
    }
    for label in name.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Some(format!(
                "{name:?} is not a valid domain name (letters, digits, hyphens and dots, e.g. mail.example.com)"
            ));
        }
    }
    None
}

/// The redaction hook: replaces the value of every `*_secret` key, at any depth.
fn redact(table: &mut toml::Table) {
    for (key, value) in table.iter_mut() {
        if key.ends_with("_secret") {
            *value = toml::Value::String(REDACTED.to_owned());
            continue;
        }
        match value {
            toml::Value::Table(inner) => redact(inner),
            toml::Value::Array(items) => {
                for item in items {
                    if let toml::Value::Table(inner) = item {
                        redact(inner);
                    }
                }
            }
            _ => {}
        }
    }
}

/// One line: `path: message (line L, column C)`.
fn describe_toml_error(text: &str, path: Option<&str>, error: &toml::de::Error) -> String {
    let mut out = String::new();
    if let Some(path) = path {
        out.push_str(path);
        out.push_str(": ");
    }
    let message = error.message().trim();
    out.push_str(&message.split_whitespace().collect::<Vec<_>>().join(" "));
    if let Some(span) = error.span() {
        let before = text.get(..span.start).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        out.push_str(&format!(" (line {line}, column {column})"));
    }
    out
}

#[cfg(test)]
mod tests;
