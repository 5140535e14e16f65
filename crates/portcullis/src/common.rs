//! What the subcommands share: global options, config loading, opening the
//! store, error wording and plain-text output helpers.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use clap::{Args, ValueEnum};
use portcullis_server::config::{Config, LogFormat};
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
