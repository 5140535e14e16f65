//! The DNS records a sending domain publishes: DKIM (one TXT per selector),
//! SPF, DMARC and MX, printed ready to paste or as a BIND zone fragment.
//!
//! Pure functions of the configuration and the stored public keys.

use std::net::IpAddr;

use portcullis_store::{DkimAlgorithm, DkimKey, DkimKeyState};

use super::keys::public_key_base64;
use crate::config::Config;

/// What a record is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Purpose {
    Dkim {
        selector: String,
        algorithm: DkimAlgorithm,
        state: DkimKeyState,
    },
    Spf,
    Dmarc,
    Mx,
}

/// One record to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Fully qualified, without the trailing dot.
    pub name: String,
    pub kind: RecordKind,
    pub purpose: Purpose,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Txt(String),
    Mx { preference: u16, exchange: String },
}

impl Record {
    /// `name. TXT "..."` / `name. MX 10 host.`, one line.
    pub fn line(&self) -> String {
        match &self.kind {
            RecordKind::Txt(text) => format!("{}. TXT \"{}\"", self.name, text),
            RecordKind::Mx {
                preference,
                exchange,
            } => format!("{}. MX {preference} {exchange}.", self.name),
        }
    }

    /// A short label for listings.
    pub fn label(&self) -> String {
        match &self.purpose {
            Purpose::Dkim {
                selector,
                algorithm,
                state,
            } => format!(
                "DKIM {} key, selector {selector} ({})",
                algorithm.as_str(),
                state.as_str()
            ),
            Purpose::Spf => "SPF".into(),
            Purpose::Dmarc => "DMARC".into(),
            Purpose::Mx => "MX".into(),
        }
    }
}

/// The `v=DKIM1` TXT value of a key (RFC 6376 3.6.1, RFC 8463 for `k=ed25519`).
pub fn dkim_value(key: &DkimKey) -> String {
    format!(
        "v=DKIM1; k={}; p={}",
        key.algorithm.as_str(),
        public_key_base64(&key.public_key)
    )
}

/// The DKIM record of one key.
pub fn dkim_record(domain: &str, key: &DkimKey) -> Record {
    Record {
        name: format!("{}._domainkey.{domain}", key.selector),
        kind: RecordKind::Txt(dkim_value(key)),
        purpose: Purpose::Dkim {
            selector: key.selector.clone(),
            algorithm: key.algorithm,
            state: key.state,
        },
    }
}

/// The SPF mechanisms naming this server: `ip4:`/`ip6:` per public address,
/// else `a:<hostname>`.
pub fn spf_mechanisms(config: &Config) -> Vec<String> {
    if config.domains.public_ips.is_empty() {
        return vec![format!("a:{}", config.hostname)];
    }
    config
        .domains
        .public_ips
        .iter()
        .map(|ip| match ip {
            IpAddr::V4(v4) => format!("ip4:{v4}"),
            IpAddr::V6(v6) => format!("ip6:{v6}"),
        })
        .collect()
}

pub fn spf_value(config: &Config) -> String {
    format!("v=spf1 {} ~all", spf_mechanisms(config).join(" "))
}

pub fn dmarc_value(domain: &str) -> String {
    format!("v=DMARC1; p=none; rua=mailto:postmaster@{domain}")
}

/// Every record `domain` should publish, DKIM keys first (all stored
/// pairs: pending ones must be published before activation, retired ones
/// until mail signed with them has been verified).
pub fn domain_records(config: &Config, domain: &str, keys: &[DkimKey]) -> Vec<Record> {
    let mut records: Vec<Record> = keys.iter().map(|k| dkim_record(domain, k)).collect();
    records.push(Record {
        name: domain.to_owned(),
        kind: RecordKind::Txt(spf_value(config)),
        purpose: Purpose::Spf,
    });
    records.push(Record {
        name: format!("_dmarc.{domain}"),
        kind: RecordKind::Txt(dmarc_value(domain)),
        purpose: Purpose::Dmarc,
    });
    if config.domains.publish_mx {
        records.push(Record {
            name: domain.to_owned(),
            kind: RecordKind::Mx {
                preference: 10,
                exchange: config.hostname.clone(),
            },
            purpose: Purpose::Mx,
        });
    }
    records
}

/// Splits a TXT value into character-strings of at most 255 bytes (RFC 1035
/// 3.3.14); DKIM keys longer than that are published as several strings.
pub fn txt_strings(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        if current.len() + c.len_utf8() > 255 {
            out.push(std::mem::take(&mut current));
        }
        current.push(c);
    }
    out.push(current);
    out
}

/// A BIND zone-file fragment: `$ORIGIN domain.` and names relative to it.
pub fn zone_fragment(domain: &str, records: &[Record]) -> String {
    let mut out = format!("$ORIGIN {domain}.\n");
    for record in records {
        let relative = if record.name == domain {
            "@".to_owned()
        } else {
            record
                .name
                .strip_suffix(&format!(".{domain}"))
                .unwrap_or(&record.name)
                .to_owned()
        };
        out.push_str(&format!("; {}\n", record.label()));
        match &record.kind {
            RecordKind::Txt(text) => {
                let parts: Vec<String> = txt_strings(text)
                    .iter()
                    .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
                    .collect();
                if parts.len() == 1 {
                    out.push_str(&format!("{relative}\tIN\tTXT\t{}\n", parts[0]));
                } else {
                    out.push_str(&format!(
                        "{relative}\tIN\tTXT\t( {} )\n",
                        parts.join("\n\t\t\t  ")
                    ));
                }
            }
            RecordKind::Mx {
                preference,
                exchange,
            } => out.push_str(&format!("{relative}\tIN\tMX\t{preference} {exchange}.\n")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(selector: &str, algorithm: DkimAlgorithm, len: usize) -> DkimKey {
        DkimKey {
            domain: "example.com".into(),
            selector: selector.into(),
            tag: "pc202612".into(),
            algorithm,
            private_key: vec![1],
            public_key: vec![7; len],
            state: DkimKeyState::Active,
            created_at: 0,
        }
    }

    fn config(ips: &[&str]) -> Config {
        let mut c = Config::default_config();
        c.hostname = "mail.example.net".into();
        c.domains.public_ips = ips.iter().filter_map(|i| i.parse().ok()).collect();
        c
    }

    #[test]
    fn records_name_this_server() {
        let keys = [key("pc202612e", DkimAlgorithm::Ed25519, 32)];
        let lines: Vec<String> = domain_records(&config(&[]), "example.com", &keys)
            .iter()
            .map(Record::line)
            .collect();
        assert_eq!(
            lines,
            [
                format!(
                    "pc202612e._domainkey.example.com. TXT \"v=DKIM1; k=ed25519; p={}\"",
                    public_key_base64(&[7; 32])
                ),
                "example.com. TXT \"v=spf1 a:mail.example.net ~all\"".to_owned(),
                "_dmarc.example.com. TXT \"v=DMARC1; p=none; rua=mailto:postmaster@example.com\""
                    .to_owned(),
                "example.com. MX 10 mail.example.net.".to_owned(),
            ]
        );
        assert_eq!(
            spf_value(&config(&["192.0.2.1", "2001:db8::1"])),
            "v=spf1 ip4:192.0.2.1 ip6:2001:db8::1 ~all"
        );
    }

    #[test]
    fn zone_fragment_is_relative_and_splits_long_txt() {
        let keys = [key("pc202612r", DkimAlgorithm::Rsa, 294)];
        let zone = zone_fragment(
            "example.com",
            &domain_records(&config(&[]), "example.com", &keys),
        );
        assert!(zone.starts_with("$ORIGIN example.com.\n"), "{zone}");
        assert!(
            zone.contains("pc202612r._domainkey\tIN\tTXT\t( \"v=DKIM1; k=rsa; p="),
            "{zone}"
        );
        assert!(zone.contains("@\tIN\tMX\t10 mail.example.net.\n"), "{zone}");
        assert!(zone.contains("_dmarc\tIN\tTXT\t\"v=DMARC1;"), "{zone}");
        for quoted in zone.split('"').skip(1).step_by(2) {
            assert!(quoted.len() <= 255, "{quoted}");
        }
        let rsa = dkim_value(&keys[0]);
        assert_eq!(txt_strings(&rsa).concat(), rsa);
        assert!(txt_strings(&rsa).len() >= 2);
    }
}
