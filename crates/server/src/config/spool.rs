//! `[spool]`: how accepted message bodies are held before they are durable
//! (issue 9). Raw file layer, resolved form, defaults and validation.
//!
//! A message no bigger than `memory_threshold` is kept in memory during DATA
//! and appended to a shared segment file by the committer; a bigger one, or
//! any message while `memory_budget` is used up, is written to its own file.

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::raw::SizeValue;
use super::units;

/// Largest `memory_threshold`: one message never makes a segment much
/// bigger than its roll-over size.
pub const MAX_MEMORY_THRESHOLD: u64 = 16 * 1024 * 1024;

/// `[spool]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolConfig {
    /// A message (with our Received header) up to this many octets stays in
    /// memory and goes into a segment; `0` writes every message to its own
    /// file.
    pub memory_threshold: u64,
    /// Octets of message bodies held in memory by all sessions together;
    /// when it is used up, messages spill to their own files.
    pub memory_budget: u64,
}

impl SpoolConfig {
    pub fn defaults() -> SpoolConfig {
        SpoolConfig {
            memory_threshold: 256 * 1024,
            memory_budget: 64 * 1024 * 1024,
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.memory_threshold > MAX_MEMORY_THRESHOLD {
            return Err(ConfigError::invalid(
                "spool.memory_threshold",
                format!(
                    "must be at most {}",
                    units::format_size(MAX_MEMORY_THRESHOLD)
                ),
            ));
        }
        if self.memory_budget < self.memory_threshold {
            return Err(ConfigError::invalid(
                "spool.memory_budget",
                "must be at least spool.memory_threshold",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpool {
    pub memory_threshold: Option<SizeValue>,
    pub memory_budget: Option<SizeValue>,
}

pub(super) fn resolve(raw: RawSpool) -> Result<SpoolConfig, ConfigError> {
    let mut s = SpoolConfig::defaults();
    if let Some(v) = raw.memory_threshold {
        s.memory_threshold = size("spool.memory_threshold", v)?;
    }
    if let Some(v) = raw.memory_budget {
        s.memory_budget = size("spool.memory_budget", v)?;
    }
    Ok(s)
}

fn size(key: &str, value: SizeValue) -> Result<u64, ConfigError> {
    match value {
        SizeValue::Bytes(bytes) => Ok(bytes),
        SizeValue::Text(text) => units::parse_size(&text).ok_or_else(|| {
            ConfigError::invalid(
                key,
                format!("invalid size {text:?} (use bytes or e.g. 256KiB, 64MiB)"),
            )
        }),
    }
}

pub(super) fn to_raw(s: &SpoolConfig) -> RawSpool {
    RawSpool {
        memory_threshold: Some(SizeValue::Text(units::format_size(s.memory_threshold))),
        memory_budget: Some(SizeValue::Text(units::format_size(s.memory_budget))),
    }
}
