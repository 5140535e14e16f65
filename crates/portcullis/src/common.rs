//! What the subcommands share: global options, config loading, opening the
//! store, error wording and plain-text output helpers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::anyhow;
use clap::{Args, ValueEnum};
use ipnet::IpNet;
use portcullis_server::config::{Config, LogFormat, Plan, parse_duration};
use portcullis_store::{SqliteStore, StoreError};

/// File name of the SQLite database inside the data dir.
pub const DATABASE_FILE: &str = "portcullis.db";

/// Options accepted by every subcommand.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Data directory (database, spool, certificate); overrides `data_dir` from the config file.
    #[arg(long, global = true, env = "PORTCULLIS_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Configuration file (TOML); without it the built-in defaults are used.
    #[arg(long, global = true, env = "PORTCULLIS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log format on stderr; overrides `[log] format` from the config file.
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormatArg>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(arg: LogFormatArg) -> LogFormat {
        match arg {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

impl GlobalArgs {
    /// Loads the config file (or the defaults), applies the global overrides and validates.
    pub fn load_config(&self) -> anyhow::Result<Config> {
        let in_file = |error: &dyn std::fmt::Display| match &self.config {
            Some(path) => anyhow!("invalid configuration {}: {error}", path.display()),
            None => anyhow!("invalid configuration: {error}"),
        };
        let mut config = Config::load(self.config.as_deref()).map_err(|e| match e {
            io @ portcullis_server::config::ConfigError::Io { .. } => anyhow!("{io}"),
            other => in_file(&other),
        })?;
        if let Some(data_dir) = &self.data_dir {
            config.data_dir = data_dir.clone();
        }
        if let Some(format) = self.log_format {
            config.log.format = format.into();
        }
        config.validate().map_err(|e| in_file(&e))?;
        Ok(config)
    }
}

/// Opens (creating if needed) `<data_dir>/portcullis.db`. Safe while the
/// server runs: SQLite in WAL mode arbitrates between processes.
pub async fn open_store(config: &Config) -> anyhow::Result<SqliteStore> {
    let path = database_path(&config.data_dir);
    SqliteStore::open(&path).await.map_err(|e| {
        anyhow!(
            "cannot open database {}: {}",
            path.display(),
            store_detail(&e)
        )
    })
}

pub fn database_path(data_dir: &Path) -> PathBuf {
    data_dir.join(DATABASE_FILE)
}

/// Words a store error for the admin, naming the `kind` of thing ("account",
/// "domain") where the store names only the thing itself.
pub fn store_error(kind: &str, error: StoreError) -> anyhow::Error {
    match error {
        StoreError::NotFound(name) => anyhow!("{kind} {name} not found"),
        StoreError::AlreadyExists(name) => anyhow!("{kind} {name} already exists"),
        StoreError::Invalid(message) => anyhow!("{message}"),
        StoreError::Unavailable(message) => anyhow!("database unavailable: {message}"),
    }
}

fn store_detail(error: &StoreError) -> String {
    match error {
        StoreError::Unavailable(message) | StoreError::Invalid(message) => message.clone(),
        other => other.to_string(),
    }
}

/// Unix seconds as RFC 3339 UTC (`2025-01-31T12:00:00Z`).
pub fn format_time(unix_seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_seconds)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix_seconds.to_string())
}

/// Prints left-aligned columns separated by two spaces; the last column is not padded.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// `1 message`, `2 messages`.
pub fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("{count} {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// The plan called `name` (surrounding whitespace ignored) if the
/// configuration defines it; otherwise an error listing the known plans.
pub fn known_plan<'c>(config: &'c Config, name: &str) -> anyhow::Result<(&'c str, &'c Plan)> {
    let name = name.trim();
    config
        .plans
        .get_key_value(name)
        .map(|(name, plan)| (name.as_str(), plan))
        .ok_or_else(|| {
            anyhow!(
                "unknown plan {name:?} (known plans: {})",
                config.plan_names()
            )
        })
}

/// The warning for an account whose plan the configuration does not define
/// (the server refuses its mail with a temporary error until that is fixed).
pub fn undefined_plan_warning(config: &Config, plan: &str) -> String {
    format!(
        "warning: plan {plan:?} is not defined in the configuration (known plans: {}); \
         the server refuses mail from accounts on it until [plans.{plan}] is defined or \
         they are moved with `portcullis account set-plan`",
        config.plan_names()
    )
}

/// The current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX)
}

/// Unix milliseconds as RFC 3339 UTC, rounded up to the whole second (so a
/// "free at" time is never shown earlier than it is).
pub fn format_time_ms(unix_ms: i64) -> String {
    format_time(unix_ms.saturating_add(999).div_euclid(1000))
}

/// A wait in milliseconds as `12m30s`, rounded up to the whole second
/// (`1h`, `2m5s`, `1s`; at least `1s`).
pub fn format_wait(ms: i64) -> String {
    portcullis_server::throttle::human_duration(u64::try_from(ms).unwrap_or(0))
}

/// An IP network from the command line: CIDR (`192.0.2.0/24`,
/// `2001:db8::/32`) or a bare address (a /32 or /128). Host bits are
/// cleared, so `192.0.2.7/24` is `192.0.2.0/24`. `what` names the argument.
pub fn parse_network(what: &str, text: &str) -> anyhow::Result<IpNet> {
    let parsed = portcullis_server::security::bans::parse_network(text);
    parsed.ok_or_else(|| {
        anyhow!(
            "{what}: invalid network {text:?} (use an IP address or CIDR, e.g. 192.0.2.7, 192.0.2.0/24 or 2001:db8::/48)"
        )
    })
}

/// A positive duration from the command line (`30m`, `1h`, `90d`), written as
/// in the config file. `flag` names the option in the error.
pub fn parse_positive_duration(flag: &str, text: &str) -> anyhow::Result<Duration> {
    let duration = parse_duration(text)
        .ok_or_else(|| anyhow!("{flag}: invalid duration {text:?} (use e.g. 30m, 1h, 24h, 90d)"))?;
    if duration.is_zero() {
        anyhow::bail!("{flag}: must be longer than 0s");
    }
    Ok(duration)
}

/// A duration in whole milliseconds (saturating).
pub fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The current time in Unix seconds.
pub fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits() {
        assert_eq!(format_wait(0), "1s");
        assert_eq!(format_wait(-5), "1s");
        assert_eq!(format_wait(1), "1s");
        assert_eq!(format_wait(1000), "1s");
        assert_eq!(format_wait(1001), "2s");
        assert_eq!(format_wait(750_000), "12m30s");
        assert_eq!(format_wait(3_600_000), "1h");
        assert_eq!(format_wait(3_725_000), "1h2m5s");
    }

    #[test]
    fn times_round_up() {
        assert_eq!(format_time_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time_ms(1), "1970-01-01T00:00:01Z");
        assert_eq!(format_time_ms(1000), "1970-01-01T00:00:01Z");
        assert_eq!(format_time_ms(-1), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn networks() {
        let net = |t: &str| parse_network("--allow-ip", t).map(|n| n.to_string());
        assert_eq!(net("192.0.2.7").ok().as_deref(), Some("192.0.2.7/32"));
        assert_eq!(net(" 192.0.2.7/24 ").ok().as_deref(), Some("192.0.2.0/24"));
        assert_eq!(net("2001:db8::1").ok().as_deref(), Some("2001:db8::1/128"));
        assert_eq!(net("2001:db8::1/32").ok().as_deref(), Some("2001:db8::/32"));
        let err = net("192.0.2.300").err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.starts_with("--allow-ip: invalid network"))
        );
        assert!(net("192.0.2.0/33").is_err());
        assert!(net("").is_err());
    }

    #[test]
    fn durations() {
        let ms = |t: &str| parse_positive_duration("--for", t).map(duration_ms).ok();
        assert_eq!(ms("1h"), Some(3_600_000));
        assert_eq!(ms("90d"), Some(90 * 86_400_000));
        assert_eq!(ms("0s"), None);
        assert_eq!(ms("soon"), None);
    }

    #[test]
    fn plans_are_looked_up_by_name() {
        let config = Config::default_config();
        let (name, plan) = known_plan(&config, " premium ").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((name, plan.emails_per_hour), ("premium", 3000));
        let err = known_plan(&config, "gold").err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("unknown plan \"gold\" (known plans: premium, professional, standard, trial)")
        );
        assert!(known_plan(&config, "Premium").is_err());
    }
}
