//! `portcullis domain check`: looks up what a sending domain publishes and
//! compares it, record by record, with what it should publish
//! ([`super::records`]). Pure comparisons are separate from the lookups so
//! they are unit-tested without DNS.

use std::net::IpAddr;

use hickory_resolver::TokioResolver;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use portcullis_store::{DkimKey, DkimKeyState};

use super::keys::public_key_base64;
use super::records::{self, Record, RecordKind};
use crate::config::Config;

/// The verdict on one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    Missing,
    Wrong,
    /// The lookup failed (timeout, SERVFAIL): nothing can be said.
    DnsError,
}

impl Status {
    pub fn word(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Missing => "MISSING",
            Status::Wrong => "WRONG",
            Status::DnsError => "DNS-ERROR",
        }
    }

    /// Whether this line makes `domain check` fail.
    pub fn is_problem(self) -> bool {
        matches!(self, Status::Missing | Status::Wrong | Status::DnsError)
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub status: Status,
    /// What was checked, e.g. `DKIM pc202612e._domainkey.example.com`.
    pub what: String,
    pub detail: String,
    /// The record to publish, when something is missing or wrong.
    pub publish: Option<String>,
}

enum Lookup<T> {
    Found(Vec<T>),
    NotFound,
    Failed(String),
}

fn lookup_error<T>(e: NetError) -> Lookup<T> {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(NoRecords { response_code, .. }))
            if response_code == ResponseCode::NXDomain
                || response_code == ResponseCode::NoError =>
        {
            Lookup::NotFound
        }
        other => Lookup::Failed(other.to_string()),
    }
}

fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

async fn txt(resolver: &TokioResolver, name: &str) -> Lookup<String> {
    match resolver.txt_lookup(fqdn(name)).await {
        Ok(lookup) => {
            let texts: Vec<String> = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(t) => Some(
                        t.txt_data
                            .iter()
                            .map(|s| String::from_utf8_lossy(s).into_owned())
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect();
            if texts.is_empty() {
                Lookup::NotFound
            } else {
                Lookup::Found(texts)
            }
        }
        Err(e) => lookup_error(e),
    }
}

/// The value of tag `name` in a `tag=value; ...` list (DKIM, DMARC), with
/// folding whitespace removed.
pub fn tag_value(record: &str, name: &str) -> Option<String> {
    record.split(';').find_map(|part| {
        let (tag, value) = part.split_once('=')?;
        (tag.trim().eq_ignore_ascii_case(name))
            .then(|| value.chars().filter(|c| !c.is_whitespace()).collect())
    })
}

/// DKIM: the published `p=` must be the stored public key.
pub fn judge_dkim(record: &Record, key: &DkimKey, published: &[String]) -> Finding {
    let what = format!("DKIM {} ({})", record.name, key.algorithm.as_str());
    let expected = public_key_base64(&key.public_key);
    let publish = Some(record.line());
    let keys: Vec<String> = published.iter().filter_map(|t| tag_value(t, "p")).collect();
    if keys.is_empty() {
        return Finding {
            status: Status::Missing,
            what,
            detail: "no DKIM key record".into(),
            publish,
        };
    }
    if keys.contains(&expected) {
        Finding {
            status: Status::Ok,
            what,
            detail: format!("p= matches the stored {} key", key.state.as_str()),
            publish: None,
        }
    } else {
        Finding {
            status: Status::Wrong,
            what,
            detail: "the published p= is not the stored public key".into(),
            publish,
        }
    }
}

/// SPF: exactly one `v=spf1` record naming this server and ending in
/// `-all` or `~all`.
pub fn judge_spf(config: &Config, domain: &str, published: &[String]) -> Finding {
    let what = format!("SPF {domain}");
    let publish = Some(format!("{domain}. TXT \"{}\"", records::spf_value(config)));
    let spf: Vec<&String> = published
        .iter()
        .filter(|t| t.to_ascii_lowercase().starts_with("v=spf1"))
        .collect();
    let wrong = |detail: String| Finding {
        status: Status::Wrong,
        what: what.clone(),
        detail,
        publish: publish.clone(),
    };
    let record = match spf.as_slice() {
        [] => {
            return Finding {
                status: Status::Missing,
                what,
                detail: "no v=spf1 record".into(),
                publish,
            };
        }
        [one] => one.to_ascii_lowercase(),
        _ => return wrong("more than one v=spf1 record (RFC 7208 4.5: permerror)".into()),
    };
    let terms: Vec<&str> = record.split_whitespace().collect();
    let missing: Vec<String> = records::spf_mechanisms(config)
        .into_iter()
        .filter(|m| !spf_covers(&terms, m))
        .collect();
    if !missing.is_empty() {
        return wrong(format!("does not name this server: {}", missing.join(" ")));
    }
    match terms.last() {
        Some(&"-all") | Some(&"~all") => Finding {
            status: Status::Ok,
            what,
            detail: format!(
                "names this server and ends in {}",
                terms.last().unwrap_or(&"")
            ),
            publish: None,
        },
        _ => wrong("does not end in -all or ~all".into()),
    }
}

/// Whether the SPF terms contain `mechanism` (`ip4:`/`ip6:` may be a
/// network containing the address).
fn spf_covers(terms: &[&str], mechanism: &str) -> bool {
    let mechanism = mechanism.to_ascii_lowercase();
    let strip = |t: &str| t.trim_start_matches(['+']).to_owned();
    let ip = mechanism
        .strip_prefix("ip4:")
        .or_else(|| mechanism.strip_prefix("ip6:"))
        .and_then(|a| a.parse::<IpAddr>().ok());
    terms.iter().any(|t| {
        let t = strip(t);
        if t == mechanism {
            return true;
        }
        match (
            ip,
            t.strip_prefix("ip4:").or_else(|| t.strip_prefix("ip6:")),
        ) {
            (Some(ip), Some(net)) => net
                .parse::<ipnet::IpNet>()
                .map(|n| n.contains(&ip))
                .or_else(|_| net.parse::<IpAddr>().map(|a| a == ip))
                .unwrap_or(false),
            _ => false,
        }
    })
}

/// DMARC: one `v=DMARC1` record with a valid `p=`.
pub fn judge_dmarc(domain: &str, published: &[String]) -> Finding {
    let what = format!("DMARC _dmarc.{domain}");
    let publish = Some(format!(
        "_dmarc.{domain}. TXT \"{}\"",
        records::dmarc_value(domain)
    ));
    let dmarc: Vec<&String> = published
        .iter()
        .filter(|t| t.trim_start().to_ascii_uppercase().starts_with("V=DMARC1"))
        .collect();
    let [record] = dmarc.as_slice() else {
        return Finding {
            status: if dmarc.is_empty() {
                Status::Missing
            } else {
                Status::Wrong
            },
            what,
            detail: if dmarc.is_empty() {
                "no v=DMARC1 record".into()
            } else {
                "more than one v=DMARC1 record".into()
            },
            publish,
        };
    };
    use mail_auth::common::parse::TxtRecordParser;
    let policy = tag_value(record, "p").map(|p| p.to_ascii_lowercase());
    let parses = mail_auth::dmarc::Dmarc::parse(record.as_bytes()).is_ok();
    match policy.as_deref() {
        Some(p @ ("none" | "quarantine" | "reject")) if parses => Finding {
            status: Status::Ok,
            what,
            detail: if p == "none" {
                "p=none (monitoring); move to quarantine, then reject, once reports are clean"
                    .into()
            } else {
                format!("p={p}")
            },
            publish: None,
        },
        _ => Finding {
            status: Status::Wrong,
            what,
            detail: "not a valid DMARC record (p= must be none, quarantine or reject)".into(),
            publish,
        },
    }
}

fn dns_failed(what: String, error: String, publish: Option<String>) -> Finding {
    Finding {
        status: Status::DnsError,
        what,
        detail: format!("lookup failed: {error}"),
        publish,
    }
}

/// Checks every record of `domain` against `keys` (its stored DKIM keys).
pub async fn check_domain(
    resolver: &TokioResolver,
    config: &Config,
    domain: &str,
    keys: &[DkimKey],
) -> Vec<Finding> {
    let mut findings = Vec::new();
    for key in keys.iter().filter(|k| k.state != DkimKeyState::Retired) {
        let record = records::dkim_record(domain, key);
        findings.push(match txt(resolver, &record.name).await {
            Lookup::Found(t) => judge_dkim(&record, key, &t),
            Lookup::NotFound => judge_dkim(&record, key, &[]),
            Lookup::Failed(e) => dns_failed(format!("DKIM {}", record.name), e, None),
        });
    }
    findings.push(match txt(resolver, domain).await {
        Lookup::Found(t) => judge_spf(config, domain, &t),
        Lookup::NotFound => judge_spf(config, domain, &[]),
        Lookup::Failed(e) => dns_failed(format!("SPF {domain}"), e, None),
    });
    let dmarc_name = format!("_dmarc.{domain}");
    findings.push(match txt(resolver, &dmarc_name).await {
        Lookup::Found(t) => judge_dmarc(domain, &t),
        Lookup::NotFound => judge_dmarc(domain, &[]),
        Lookup::Failed(e) => dns_failed(format!("DMARC {dmarc_name}"), e, None),
    });
    if config.domains.publish_mx {
        findings.push(check_mx(resolver, config, domain).await);
    }
    findings.extend(check_ptr(resolver, config).await);
    findings
}

async fn check_mx(resolver: &TokioResolver, config: &Config, domain: &str) -> Finding {
    let what = format!("MX {domain}");
    let expected = records::domain_records(config, domain, &[])
        .into_iter()
        .find(|r| matches!(r.kind, RecordKind::Mx { .. }))
        .map(|r| r.line());
    let host = config.hostname.trim_end_matches('.').to_ascii_lowercase();
    let found = match resolver.mx_lookup(fqdn(domain)).await {
        Ok(lookup) => Lookup::Found(
            lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some(
                        mx.exchange
                            .to_ascii()
                            .trim_end_matches('.')
                            .to_ascii_lowercase(),
                    ),
                    _ => None,
                })
                .collect::<Vec<String>>(),
        ),
        Err(e) => lookup_error(e),
    };
    match found {
        Lookup::Found(hosts) if hosts.contains(&host) => Finding {
            status: Status::Ok,
            what,
            detail: format!("points at {host}"),
            publish: None,
        },
        Lookup::Found(hosts) if !hosts.is_empty() => Finding {
            status: Status::Wrong,
            what,
            detail: format!("points at {} instead of {host}", hosts.join(", ")),
            publish: expected,
        },
        Lookup::Failed(e) => dns_failed(what, e, expected),
        _ => Finding {
            status: Status::Missing,
            what,
            detail: "no MX record".into(),
            publish: expected,
        },
    }
}

/// PTR of each public address (`public_ips`, else the hostname's
/// addresses): it must name the HELO host (forward-confirmed reverse DNS is
/// what receivers check).
async fn check_ptr(resolver: &TokioResolver, config: &Config) -> Vec<Finding> {
    let helo = config
        .delivery
        .helo_name
        .clone()
        .unwrap_or_else(|| config.hostname.clone())
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let mut out = Vec::new();
    // Without public_ips, SPF says a:<hostname>: its addresses are ours.
    let ips: Vec<IpAddr> = if config.domains.public_ips.is_empty() {
        let host = config.hostname.trim_end_matches('.');
        let what = format!("A/AAAA {host}");
        match resolver.lookup_ip(fqdn(host)).await {
            Ok(lookup) => lookup.iter().collect(),
            Err(e) => {
                return vec![match lookup_error::<String>(e) {
                    Lookup::Failed(e) => dns_failed(what, e, None),
                    _ => Finding {
                        status: Status::Missing,
                        what,
                        detail: format!(
                            "{host} has no address, so SPF a:{host} matches nothing; \
                             publish it or set [domains] public_ips"
                        ),
                        publish: None,
                    },
                }];
            }
        }
    } else {
        config.domains.public_ips.clone()
    };
    for ip in &ips {
        let what = format!("PTR {ip}");
        let publish = Some(format!(
            "PTR of {ip} -> {helo}. (ask the owner of the address)"
        ));
        out.push(match resolver.reverse_lookup(*ip).await {
            Ok(lookup) => {
                let names: Vec<String> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::PTR(p) => {
                            Some(p.0.to_ascii().trim_end_matches('.').to_ascii_lowercase())
                        }
                        _ => None,
                    })
                    .collect();
                if names.contains(&helo) {
                    Finding {
                        status: Status::Ok,
                        what,
                        detail: format!("names the HELO host {helo}"),
                        publish: None,
                    }
                } else if names.is_empty() {
                    Finding {
                        status: Status::Missing,
                        what,
                        detail: "no PTR record".into(),
                        publish,
                    }
                } else {
                    Finding {
                        status: Status::Wrong,
                        what,
                        detail: format!(
                            "names {} instead of the HELO host {helo}",
                            names.join(", ")
                        ),
                        publish,
                    }
                }
            }
            Err(e) => match lookup_error::<String>(e) {
                Lookup::Failed(e) => dns_failed(what, e, publish),
                _ => Finding {
                    status: Status::Missing,
                    what,
                    detail: "no PTR record".into(),
                    publish,
                },
            },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ips: &[&str]) -> Config {
        let mut c = Config::default_config();
        c.hostname = "mail.example.net".into();
        c.domains.public_ips = ips.iter().filter_map(|i| i.parse().ok()).collect();
        c
    }

    #[test]
    fn spf_must_name_us_and_end_in_all() {
        let c = config(&["192.0.2.10"]);
        let judge = |t: &str| judge_spf(&c, "example.com", &[t.to_owned()]).status;
        assert_eq!(judge("v=spf1 ip4:192.0.2.10 -all"), Status::Ok);
        assert_eq!(judge("v=spf1 ip4:192.0.2.0/24 ~all"), Status::Ok);
        assert_eq!(judge("v=spf1 ip4:192.0.2.11 -all"), Status::Wrong);
        assert_eq!(judge("v=spf1 ip4:192.0.2.10 ?all"), Status::Wrong);
        assert_eq!(judge_spf(&c, "example.com", &[]).status, Status::Missing);
        let two = ["v=spf1 -all".to_owned(), "v=spf1 ~all".to_owned()];
        assert_eq!(judge_spf(&c, "example.com", &two).status, Status::Wrong);
        let by_name = config(&[]);
        assert_eq!(
            judge_spf(
                &by_name,
                "example.com",
                &["v=spf1 a:mail.example.net ~all".into()]
            )
            .status,
            Status::Ok
        );
    }

    #[test]
    fn dmarc_must_parse() {
        let judge = |t: &str| judge_dmarc("example.com", &[t.to_owned()]).status;
        assert_eq!(
            judge("v=DMARC1; p=none; rua=mailto:a@example.com"),
            Status::Ok
        );
        assert_eq!(judge("v=DMARC1; p=reject"), Status::Ok);
        assert_eq!(judge("v=DMARC1; p=bogus"), Status::Wrong);
        assert_eq!(
            judge_dmarc("example.com", &["other".into()]).status,
            Status::Missing
        );
        assert_eq!(
            tag_value("v=DKIM1; k=rsa; p=AB CD\t EF", "p").as_deref(),
            Some("ABCDEF")
        );
    }
}
