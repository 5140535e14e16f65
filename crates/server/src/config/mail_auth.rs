//! `[domains]` and `[inbound]`: sending domains and the checks on inbound
//! mail (issue 7). Raw file layer, resolved form, defaults and validation
//! for these two sections.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[domains]`: what `portcullis domain ...` publishes and checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainsConfig {
    /// The public addresses this server sends from (for SPF and PTR
    /// checks); empty = SPF names the hostname (`a:<hostname>`).
    pub public_ips: Vec<IpAddr>,
    /// Local domains receive mail here: print and check an MX record.
    pub publish_mx: bool,
}

/// `[inbound]`: SPF, DKIM and DMARC on the smtp listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundConfig {
    /// Verify SPF, DKIM and DMARC and add Authentication-Results.
    pub verify: bool,
    /// Refuse (550 5.7.1) a DMARC failure whose policy is `p=reject`.
    pub enforce_dmarc: bool,
}

impl DomainsConfig {
    pub fn defaults() -> DomainsConfig {
        DomainsConfig {
            public_ips: Vec::new(),
            publish_mx: true,
        }
    }
}

impl InboundConfig {
    pub fn defaults() -> InboundConfig {
        InboundConfig {
            verify: true,
            enforce_dmarc: true,
        }
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDomains {
    pub public_ips: Option<Vec<String>>,
    pub publish_mx: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInbound {
    pub verify: Option<bool>,
    pub enforce_dmarc: Option<bool>,
}

pub(super) fn resolve_domains(raw: RawDomains) -> Result<DomainsConfig, ConfigError> {
    let mut d = DomainsConfig::defaults();
    if let Some(list) = raw.public_ips {
        d.public_ips = list
            .iter()
            .enumerate()
            .map(|(i, text)| {
                text.trim().parse::<IpAddr>().map_err(|_| {
                    ConfigError::invalid(
                        format!("domains.public_ips[{i}]"),
                        format!("{text:?} is not an IP address"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
    }
    if let Some(v) = raw.publish_mx {
        d.publish_mx = v;
    }
    Ok(d)
}

pub(super) fn resolve_inbound(raw: RawInbound) -> InboundConfig {
    let defaults = InboundConfig::defaults();
    InboundConfig {
        verify: raw.verify.unwrap_or(defaults.verify),
        enforce_dmarc: raw.enforce_dmarc.unwrap_or(defaults.enforce_dmarc),
    }
}

pub(super) fn domains_to_raw(d: &DomainsConfig) -> RawDomains {
    RawDomains {
        public_ips: Some(d.public_ips.iter().map(ToString::to_string).collect()),
        publish_mx: Some(d.publish_mx),
    }
}

pub(super) fn inbound_to_raw(i: &InboundConfig) -> RawInbound {
    RawInbound {
        verify: Some(i.verify),
        enforce_dmarc: Some(i.enforce_dmarc),
    }
}
