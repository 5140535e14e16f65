//! `[delivery]`: how accepted mail leaves (issue 3). Raw file layer,
//! resolved form, defaults and validation for this one section.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::raw::DurationValue;
use super::{ConfigError, parse_duration_key, parse_optional_duration_key, units};

/// Whether outbound connections must be encrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicy {
    /// Use STARTTLS whenever the peer offers it (certificates are not
    /// verified, as is usual between MX hosts: RFC 7435); plain otherwise.
    Opportunistic,
    /// Defer unless STARTTLS succeeds.
    Required,
}

impl TlsPolicy {
    pub fn name(self) -> &'static str {
        match self {
            TlsPolicy::Opportunistic => "opportunistic",
            TlsPolicy::Required => "required",
        }
    }
}

/// Where mail for local domains goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalTransport {
    /// A Maildir per mailbox under `<data_dir>/mail/<domain>/<local-part>/`.
    Maildir,
    /// An LMTP server (e.g. Dovecot) at this address.
    Lmtp(String),
    /// A downstream SMTP server at this address.
    Smtp(String),
}

impl LocalTransport {
    fn text(&self) -> String {
        match self {
            LocalTransport::Maildir => "maildir".to_owned(),
            LocalTransport::Lmtp(a) => format!("lmtp://{a}"),
            LocalTransport::Smtp(a) => format!("smtp://{a}"),
        }
    }
}

/// Per-destination overrides (`[delivery.domains."example.com"]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationConfig {
    pub tls: Option<TlsPolicy>,
    pub max_connections: Option<usize>,
}

/// The upstream of smarthost mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    /// `host:port`.
    pub host: String,
    pub port: u16,
    /// Implicit TLS (port 465) rather than STARTTLS.
    pub implicit_tls: bool,
    /// The login; `PORTCULLIS_RELAY_USER` overrides it.
    pub user: Option<String>,
    /// File holding the password; `PORTCULLIS_RELAY_PASSWORD` takes precedence.
    pub password_file: Option<PathBuf>,
    /// Extra trust anchors (PEM) besides the public roots, for a private CA.
    pub ca_file: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryConfig {
    /// Run the queue manager in `serve` (default true).
    pub enabled: bool,
    /// Nameservers (`ip:port`); empty = the system's resolv.conf.
    pub dns_servers: Vec<SocketAddr>,
    /// Port of MX hosts (25; tests point it elsewhere).
    pub mx_port: u16,
    /// Our name in EHLO; `None` = the server hostname.
    pub helo_name: Option<String>,
    pub tls: TlsPolicy,
    /// Delays between attempts; the last one repeats.
    pub retry_schedule: Vec<Duration>,
    /// Random extra delay, as a fraction of each step (0.0..=1.0).
    pub retry_jitter_percent: u32,
    /// Bounce what is still undelivered after this long (RFC 5321 4.5.4.1).
    pub max_age: Duration,
    /// Send one delay warning after this long; `None` = never.
    pub delay_warning: Option<Duration>,
    /// Outbound connections at once, in total.
    pub max_connections: usize,
    /// Outbound connections at once to one destination domain.
    pub max_connections_per_destination: usize,
    /// Messages sent over one connection before it is closed.
    pub max_messages_per_connection: usize,
    pub connect_timeout: Duration,
    /// Greeting, EHLO, MAIL, RCPT (RFC 5321 4.5.3.2: 5 minutes).
    pub command_timeout: Duration,
    /// Each block of message data (RFC: 3 minutes).
    pub data_block_timeout: Duration,
    /// The reply to the final dot (RFC: 10 minutes).
    pub data_done_timeout: Duration,
    /// Keep delivered/bounced messages' history this long.
    pub history_retention: Duration,
    pub relay: Option<RelayConfig>,
    pub local: LocalTransport,
    pub domains: BTreeMap<String, DestinationConfig>,
}

impl DeliveryConfig {
    pub fn defaults() -> DeliveryConfig {
        let m = |n: u64| Duration::from_secs(n * 60);
        DeliveryConfig {
            enabled: true,
            dns_servers: Vec::new(),
            mx_port: 25,
            helo_name: None,
            tls: TlsPolicy::Opportunistic,
            retry_schedule: vec![m(1), m(5), m(15), m(30), m(60), m(120), m(240)],
            retry_jitter_percent: 20,
            max_age: Duration::from_secs(5 * 24 * 3600),
            delay_warning: Some(m(240)),
            max_connections: 100,
            max_connections_per_destination: 10,
            max_messages_per_connection: 100,
            connect_timeout: Duration::from_secs(30),
            command_timeout: m(5),
            data_block_timeout: m(3),
            data_done_timeout: m(10),
            history_retention: Duration::from_secs(7 * 24 * 3600),
            relay: None,
            local: LocalTransport::Maildir,
            domains: BTreeMap::new(),
        }
    }

    /// The TLS policy for a destination domain.
    pub fn tls_for(&self, domain: &str) -> TlsPolicy {
        self.domains
            .get(domain)
            .and_then(|d| d.tls)
            .unwrap_or(self.tls)
    }

    /// The connection cap for a destination domain.
    pub fn max_connections_for(&self, domain: &str) -> usize {
        self.domains
            .get(domain)
            .and_then(|d| d.max_connections)
            .unwrap_or(self.max_connections_per_destination)
    }

    /// The wait before attempt number `attempts + 1` (without jitter).
    pub fn retry_delay(&self, attempts: u32) -> Duration {
        let i = usize::try_from(attempts.saturating_sub(1)).unwrap_or(usize::MAX);
        self.retry_schedule
            .get(i)
            .or(self.retry_schedule.last())
            .copied()
            .unwrap_or(Duration::from_secs(3600))
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDelivery {
    pub enabled: Option<bool>,
    pub dns_servers: Option<Vec<String>>,
    pub mx_port: Option<u16>,
    pub helo_name: Option<String>,
    pub tls: Option<TlsPolicy>,
    pub retry_schedule: Option<Vec<DurationValue>>,
    pub retry_jitter_percent: Option<u32>,
    pub max_age: Option<DurationValue>,
    pub delay_warning: Option<DurationValue>,
    pub max_connections: Option<usize>,
    pub max_connections_per_destination: Option<usize>,
    pub max_messages_per_connection: Option<usize>,
    pub connect_timeout: Option<DurationValue>,
    pub command_timeout: Option<DurationValue>,
    pub data_block_timeout: Option<DurationValue>,
    pub data_done_timeout: Option<DurationValue>,
    pub history_retention: Option<DurationValue>,
    pub relay_host: Option<String>,
    pub relay_tls: Option<String>,
    pub relay_user: Option<String>,
    pub relay_password_file: Option<PathBuf>,
    pub relay_ca_file: Option<PathBuf>,
    pub local_transport: Option<String>,
    #[serde(default)]
    pub domains: BTreeMap<String, RawDestination>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDestination {
    pub tls: Option<TlsPolicy>,
    pub max_connections: Option<usize>,
}

fn positive(key: &str, v: usize) -> Result<usize, ConfigError> {
    if v == 0 {
        return Err(ConfigError::invalid(key, "must be at least 1"));
    }
    Ok(v)
}

fn host_port(
    key: &str,
    text: &str,
    default_port: Option<u16>,
) -> Result<(String, u16), ConfigError> {
    let t = text.trim();
    let bad = || {
        ConfigError::invalid(
            key,
            format!("{t:?} is not host:port (e.g. \"smtp.provider.example:587\")"),
        )
    };
    let (host, port) = if let Some(rest) = t.strip_prefix('[') {
        let (h, p) = rest.split_once(']').ok_or_else(bad)?;
        (h, p.strip_prefix(':'))
    } else {
        match t.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            _ => (t, None),
        }
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let port = match (port, default_port) {
        (Some(p), _) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?,
        (None, Some(d)) => d,
        (None, None) => return Err(bad()),
    };
    Ok((host.to_owned(), port))
}

pub(super) fn resolve(raw: RawDelivery) -> Result<DeliveryConfig, ConfigError> {
    let mut d = DeliveryConfig::defaults();
    if let Some(v) = raw.enabled {
        d.enabled = v;
    }
    if let Some(list) = raw.dns_servers {
        d.dns_servers = list
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let key = format!("delivery.dns_servers[{i}]");
                let t = text.trim();
                t.parse::<SocketAddr>()
                    .or_else(|_| {
                        t.parse::<std::net::IpAddr>()
                            .map(|ip| SocketAddr::new(ip, 53))
                    })
                    .map_err(|_| {
                        ConfigError::invalid(
                            key,
                            format!(
                                "{t:?} is not an IP address or ip:port (e.g. \"127.0.0.1:5353\")"
                            ),
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
    }
    if let Some(v) = raw.mx_port {
        if v == 0 {
            return Err(ConfigError::invalid("delivery.mx_port", "must be 1..65535"));
        }
        d.mx_port = v;
    }
    if let Some(v) = raw.helo_name {
        d.helo_name = Some(v);
    }
    if let Some(v) = raw.tls {
        d.tls = v;
    }
    if let Some(list) = raw.retry_schedule {
        if list.is_empty() {
            return Err(ConfigError::invalid(
                "delivery.retry_schedule",
                "must list at least one delay (e.g. [\"1m\", \"5m\", \"1h\"])",
            ));
        }
        d.retry_schedule = list
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let key = format!("delivery.retry_schedule[{i}]");
                let dur = parse_duration_key(&key, &v.0)?;
                if dur < Duration::from_secs(1) {
                    return Err(ConfigError::invalid(key, "must be at least 1s"));
                }
                Ok(dur)
            })
            .collect::<Result<_, _>>()?;
    }
    if let Some(v) = raw.retry_jitter_percent {
        if v > 100 {
            return Err(ConfigError::invalid(
                "delivery.retry_jitter_percent",
                "must be 0..100",
            ));
        }
        d.retry_jitter_percent = v;
    }
    if let Some(v) = raw.max_age {
        d.max_age = parse_duration_key("delivery.max_age", &v.0)?;
        if d.max_age < Duration::from_secs(60) {
            return Err(ConfigError::invalid(
                "delivery.max_age",
                "must be at least 1m",
            ));
        }
    }
    if let Some(v) = raw.delay_warning {
        d.delay_warning = parse_optional_duration_key("delivery.delay_warning", &v.0)?;
    }
    if let Some(v) = raw.max_connections {
        d.max_connections = positive("delivery.max_connections", v)?;
    }
    if let Some(v) = raw.max_connections_per_destination {
        d.max_connections_per_destination =
            positive("delivery.max_connections_per_destination", v)?;
    }
    if let Some(v) = raw.max_messages_per_connection {
        d.max_messages_per_connection = positive("delivery.max_messages_per_connection", v)?;
    }
    for (key, slot, value) in [
        (
            "delivery.connect_timeout",
            &mut d.connect_timeout,
            raw.connect_timeout,
        ),
        (
            "delivery.command_timeout",
            &mut d.command_timeout,
            raw.command_timeout,
        ),
        (
            "delivery.data_block_timeout",
            &mut d.data_block_timeout,
            raw.data_block_timeout,
        ),
        (
            "delivery.data_done_timeout",
            &mut d.data_done_timeout,
            raw.data_done_timeout,
        ),
        (
            "delivery.history_retention",
            &mut d.history_retention,
            raw.history_retention,
        ),
    ] {
        if let Some(v) = value {
            let dur = parse_duration_key(key, &v.0)?;
            if dur.is_zero() {
                return Err(ConfigError::invalid(key, "must be more than 0s"));
            }
            *slot = dur;
        }
    }
    if let Some(text) = raw.relay_host.filter(|t| !t.trim().is_empty()) {
        let (host, port) = host_port("delivery.relay_host", &text, Some(587))?;
        let implicit_tls = match raw.relay_tls.as_deref().map(str::trim) {
            None | Some("auto") => port == 465,
            Some("implicit") => true,
            Some("starttls") => false,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "delivery.relay_tls",
                    format!("{other:?} is not one of \"auto\", \"starttls\", \"implicit\""),
                ));
            }
        };
        d.relay = Some(RelayConfig {
            host,
            port,
            implicit_tls,
            user: raw.relay_user.filter(|u| !u.trim().is_empty()),
            password_file: raw.relay_password_file,
            ca_file: raw.relay_ca_file,
        });
    } else if raw.relay_user.is_some()
        || raw.relay_password_file.is_some()
        || raw.relay_tls.is_some()
        || raw.relay_ca_file.is_some()
    {
        return Err(ConfigError::invalid(
            "delivery.relay_host",
            "relay_user, relay_password_file, relay_tls and relay_ca_file need relay_host",
        ));
    }
    if let Some(text) = raw.local_transport {
        let t = text.trim();
        d.local = if t.eq_ignore_ascii_case("maildir") {
            LocalTransport::Maildir
        } else if let Some(rest) = t.strip_prefix("lmtp://") {
            let (h, p) = host_port("delivery.local_transport", rest, Some(24))?;
            LocalTransport::Lmtp(format!("{h}:{p}"))
        } else if let Some(rest) = t.strip_prefix("smtp://") {
            let (h, p) = host_port("delivery.local_transport", rest, Some(25))?;
            LocalTransport::Smtp(format!("{h}:{p}"))
        } else {
            return Err(ConfigError::invalid(
                "delivery.local_transport",
                format!("{t:?} is not \"maildir\", \"lmtp://host:port\" or \"smtp://host:port\""),
            ));
        };
    }
    for (name, raw_dest) in raw.domains {
        let key = format!("delivery.domains.{name}");
        let domain = name.trim().trim_end_matches('.').to_ascii_lowercase();
        if domain.is_empty() || domain.contains(|c: char| c.is_whitespace() || c == '@') {
            return Err(ConfigError::invalid(key, "is not a domain name"));
        }
        if let Some(0) = raw_dest.max_connections {
            return Err(ConfigError::invalid(
                format!("{key}.max_connections"),
                "must be at least 1",
            ));
        }
        d.domains.insert(
            domain,
            DestinationConfig {
                tls: raw_dest.tls,
                max_connections: raw_dest.max_connections,
            },
        );
    }
    Ok(d)
}

pub(super) fn to_raw(d: &DeliveryConfig) -> RawDelivery {
    let dur = |x: Duration| DurationValue(units::format_duration(x));
    RawDelivery {
        enabled: Some(d.enabled),
        dns_servers: Some(d.dns_servers.iter().map(ToString::to_string).collect()),
        mx_port: Some(d.mx_port),
        helo_name: d.helo_name.clone(),
        tls: Some(d.tls),
        retry_schedule: Some(d.retry_schedule.iter().map(|x| dur(*x)).collect()),
        retry_jitter_percent: Some(d.retry_jitter_percent),
        max_age: Some(dur(d.max_age)),
        delay_warning: Some(DurationValue(match d.delay_warning {
            Some(x) => units::format_duration(x),
            None => "off".to_owned(),
        })),
        max_connections: Some(d.max_connections),
        max_connections_per_destination: Some(d.max_connections_per_destination),
        max_messages_per_connection: Some(d.max_messages_per_connection),
        connect_timeout: Some(dur(d.connect_timeout)),
        command_timeout: Some(dur(d.command_timeout)),
        data_block_timeout: Some(dur(d.data_block_timeout)),
        data_done_timeout: Some(dur(d.data_done_timeout)),
        history_retention: Some(dur(d.history_retention)),
        relay_host: d.relay.as_ref().map(|r| format!("{}:{}", r.host, r.port)),
        relay_tls: d.relay.as_ref().map(|r| {
            if r.implicit_tls {
                "implicit"
            } else {
                "starttls"
            }
            .to_owned()
        }),
        relay_user: d.relay.as_ref().and_then(|r| r.user.clone()),
        relay_password_file: d.relay.as_ref().and_then(|r| r.password_file.clone()),
        relay_ca_file: d.relay.as_ref().and_then(|r| r.ca_file.clone()),
        local_transport: Some(d.local.text()),
        domains: d
            .domains
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    RawDestination {
                        tls: v.tls,
                        max_connections: v.max_connections,
                    },
                )
            })
            .collect(),
    }
}
