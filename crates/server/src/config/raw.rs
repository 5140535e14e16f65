//! The file layer: what the TOML text deserializes into before defaults and
//! validation. Every field is optional (a missing key takes its default in
//! [`super::Config::default_config`]); unknown keys are rejected. The same
//! types serialize the resolved config back, so reading and printing share one
//! list of key names.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::LogFormat;

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub hostname: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub default_plan: Option<String>,
    pub secret_key_file: Option<PathBuf>,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub tls: RawTls,
    #[serde(default)]
    pub listeners: RawListeners,
    #[serde(default)]
    pub security: RawSecurity,
    #[serde(default)]
    pub throttle: RawThrottle,
    #[serde(default)]
    pub usage: RawUsage,
    /// `[plans.NAME]` tables: add to or override the shipped plans by name.
    #[serde(default)]
    pub plans: BTreeMap<String, RawPlan>,
    #[serde(default)]
    pub delivery: super::delivery::RawDelivery,
    #[serde(default)]
    pub oauth: super::auth::RawOAuth,
    #[serde(default)]
    pub domains: super::mail_auth::RawDomains,
    #[serde(default)]
    pub inbound: super::mail_auth::RawInbound,
    #[serde(default)]
    pub spool: super::spool::RawSpool,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub format: Option<LogFormat>,
    pub level: Option<String>,
    pub mail_log: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListeners {
    pub smtp: Option<RawListener>,
    pub submission: Option<RawListener>,
    pub submissions: Option<RawListener>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub enabled: Option<bool>,
    pub address: Option<String>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub max_message_size: Option<SizeValue>,
    pub max_recipients: Option<usize>,
    pub max_command_line: Option<usize>,
    pub max_text_line: Option<usize>,
    pub idle_timeout: Option<DurationValue>,
    pub session_timeout: Option<DurationValue>,
    pub max_errors: Option<u32>,
    pub mechanisms: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecurity {
    pub auth_min_duration: Option<DurationValue>,
    pub max_auth_failures: Option<u32>,
    pub trusted_networks: Option<Vec<String>>,
    pub password_min_length: Option<usize>,
    pub password_max_age: Option<DurationValue>,
    pub enforce_sender: Option<bool>,
    pub check_header_from: Option<bool>,
    pub bruteforce_window: Option<DurationValue>,
    pub bruteforce_delay_after: Option<u32>,
    pub bruteforce_delay: Option<DurationValue>,
    pub bruteforce_block_after: Option<u32>,
    pub bruteforce_subnet_window: Option<DurationValue>,
    pub bruteforce_subnet_ban_after: Option<u32>,
    pub ban_duration: Option<DurationValue>,
    pub ban_max_duration: Option<DurationValue>,
    pub usual_ip_ttl: Option<DurationValue>,
    pub audit_retention: Option<DurationValue>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawThrottle {
    pub connections_per_minute: Option<u32>,
    pub smtp_messages_per_minute: Option<u32>,
    pub burst: Option<u32>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUsage {
    pub warn_percent: Option<u32>,
    pub enforce: Option<bool>,
}

/// One `[plans.NAME]` table. In an override of a shipped plan every key is
/// optional; a new plan must set `emails_per_hour`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlan {
    pub emails_per_hour: Option<u32>,
    pub emails_per_day: Option<u32>,
    pub max_recipients: Option<usize>,
    pub max_message_size: Option<SizeValue>,
}

/// A duration as written ("30s", "1h30m"); parsed, with the key named in any
/// error, during resolution.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub(super) struct DurationValue(pub String);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = DurationValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"30s\", \"5m\", \"1h\" or \"250ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationValue, E> {
                Ok(DurationValue(v.to_owned()))
            }
        }
        deserializer.deserialize_str(DurationVisitor)
    }
}

/// A size as written: a byte count or a string with a unit ("25MiB").
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(super) enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = SizeValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a number of bytes or a string such as \"25MiB\", \"10MB\" or \"512KiB\"",
                )
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SizeValue, E> {
                Ok(SizeValue::Bytes(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SizeValue, E> {
                u64::try_from(v)
                    .map(SizeValue::Bytes)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SizeValue, E> {
                Ok(SizeValue::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}
