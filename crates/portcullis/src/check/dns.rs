//! DNS step: A/AAAA for the host, and its MX records when the host is a
//! mail domain (a user who types `example.com` often means its mail server).
//! Uses hickory-resolver with the system configuration; falls back to the
//! system resolver (getaddrinfo) for names only it knows (/etc/hosts, mDNS).

use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use serde::Serialize;
use tokio::time::timeout;

/// What the resolver found.
#[derive(Debug, Clone, Serialize)]
pub struct Resolved {
    pub addresses: Vec<IpAddr>,
    /// MX hosts by preference, when the name has MX records.
    pub mx: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// The name has no A/AAAA records (NXDOMAIN or no data).
    NoAddress {
        mx: Vec<String>,
    },
    TimedOut,
    /// The resolver itself failed (no configuration, no network).
    Resolver(String),
}

/// An IP literal needs no lookup (`192.0.2.1`, `::1`, `[::1]`).
pub fn literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

pub async fn resolve(host: &str, limit: Duration) -> Result<Resolved, DnsError> {
    let resolver = TokioResolver::builder_tokio()
        .and_then(|b| b.build())
        .map_err(|e| DnsError::Resolver(e.to_string()));
    // MX only for names that can be mail domains (`localhost` cannot).
    let wants_mx = host.contains('.');
    let (addresses, mx) = match &resolver {
        Ok(resolver) => {
            let ips = timeout(limit, resolver.lookup_ip(host));
            let mx = async {
                if !wants_mx {
                    return Vec::new();
                }
                match timeout(limit, resolver.mx_lookup(host)).await {
                    Ok(Ok(lookup)) => mx_hosts(lookup.answers()),
                    _ => Vec::new(),
                }
            };
            let (ips, mx) = tokio::join!(ips, mx);
            let addresses = match ips {
                Ok(Ok(lookup)) => Ok(lookup.iter().collect::<Vec<_>>()),
                Ok(Err(e)) if e.is_no_records_found() => {
                    Err(DnsError::NoAddress { mx: Vec::new() })
                }
                Ok(Err(e)) => Err(DnsError::Resolver(e.to_string())),
                Err(_) => Err(DnsError::TimedOut),
            };
            (addresses, mx)
        }
        Err(e) => (Err(e.clone()), Vec::new()),
    };
    match addresses {
        Ok(list) if !list.is_empty() => Ok(Resolved {
            addresses: list,
            mx,
        }),
        other => {
            // The system resolver knows /etc/hosts and nsswitch sources.
            if let Ok(Ok(found)) = timeout(limit, tokio::net::lookup_host((host, 0))).await {
                let mut list: Vec<IpAddr> = found.map(|a| a.ip()).collect();
                list.dedup();
                if !list.is_empty() {
                    return Ok(Resolved {
                        addresses: list,
                        mx,
                    });
                }
            }
            match other {
                Err(DnsError::TimedOut) => Err(DnsError::TimedOut),
                Err(DnsError::Resolver(e)) => Err(DnsError::Resolver(e)),
                _ => Err(DnsError::NoAddress { mx }),
            }
        }
    }
}

fn mx_hosts(records: &[hickory_resolver::proto::rr::Record]) -> Vec<String> {
    let mut mx: Vec<(u16, String)> = records
        .iter()
        .filter_map(|r| match &r.data {
            RData::MX(mx) => Some((
                mx.preference,
                mx.exchange.to_string().trim_end_matches('.').to_owned(),
            )),
            _ => None,
        })
        .collect();
    mx.sort();
    mx.into_iter().map(|(_, host)| host).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals() {
        assert_eq!(literal("127.0.0.1"), Some(IpAddr::from([127, 0, 0, 1])));
        assert!(literal("[::1]").is_some());
        assert_eq!(literal("mail.example.com"), None);
    }
}
