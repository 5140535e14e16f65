//! Logging to stderr: human text (colours only on a terminal) or JSON lines.
//! The filter is `RUST_LOG` when set, else `[log] level`.

use std::io::IsTerminal;

use anyhow::anyhow;
use portcullis_server::config::{LogConfig, LogFormat};
use tracing_subscriber::EnvFilter;

pub fn init(log: &LogConfig) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::builder()
            .parse(&directives)
            .map_err(|e| anyhow!("RUST_LOG: invalid filter {directives:?}: {e}"))?,
        _ => EnvFilter::builder()
            .parse(&log.level)
            .map_err(|e| anyhow!("log.level: invalid filter {:?}: {e}", log.level))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match log.format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
    installed.map_err(|e| anyhow!("cannot start logging: {e}"))
}
