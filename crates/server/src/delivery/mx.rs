//! Where mail for a domain goes (RFC 5321 §5): MX records by preference,
//! shuffled among equal preference, A/AAAA when there is no MX, null MX
//! (RFC 7505) and non-existent domains as permanent failures, DNS trouble as
//! temporary.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use rand::seq::SliceRandom;

use super::client::Failure;

/// One host to try, with its addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MxHost {
    /// The exchange name (for logs, TLS SNI and the DSN).
    pub name: String,
    pub addresses: Vec<IpAddr>,
}

/// Resolves delivery destinations.
#[derive(Clone)]
pub struct MxResolver {
    resolver: TokioResolver,
}

impl MxResolver {
    /// `servers` empty = the system configuration (resolv.conf).
    pub fn new(servers: &[SocketAddr]) -> Result<MxResolver, String> {
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_secs(5);
        opts.attempts = 2;
        opts.cache_size = 1024;
        opts.ndots = 0;
        let resolver = if servers.is_empty() {
            let mut b = TokioResolver::builder_tokio().map_err(|e| e.to_string())?;
            let o = b.options_mut();
            o.timeout = opts.timeout;
            o.attempts = opts.attempts;
            o.ndots = 0;
            b.build().map_err(|e| e.to_string())?
        } else {
            let mut config = ResolverConfig::from_name_servers(Vec::new());
            for s in servers {
                let mut ns = NameServerConfig::udp_and_tcp(s.ip());
                for c in &mut ns.connections {
                    c.port = s.port();
                }
                config.add_name_server(ns);
            }
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
                .with_options(opts)
                .build()
                .map_err(|e| e.to_string())?
        };
        Ok(MxResolver { resolver })
    }

    /// The hosts to try for `domain`, best first.
    pub async fn hosts(&self, domain: &str) -> Result<Vec<MxHost>, Failure> {
        // An address literal: `user@[192.0.2.1]`.
        if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
            let ip = lit
                .strip_prefix("IPv6:")
                .or(Some(lit))
                .and_then(|t| t.parse::<IpAddr>().ok())
                .ok_or_else(|| {
                    Failure::permanent("5.1.2", format!("invalid address literal {domain}"))
                })?;
            return Ok(vec![MxHost {
                name: ip.to_string(),
                addresses: vec![ip],
            }]);
        }
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        let mut exchanges: Vec<(u16, String)> = match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                    _ => None,
                })
                .collect(),
            Err(e) if e.is_nx_domain() => {
                return Err(Failure::permanent(
                    "5.1.2",
                    format!("domain {domain} does not exist (DNS NXDOMAIN)"),
                ));
            }
            Err(e) if e.is_no_records_found() => Vec::new(),
            Err(e) => return Err(dns_failure(domain, "MX", &e)),
        };
        // RFC 7505: a single MX "." with preference 0 says "no mail".
        if exchanges
            .iter()
            .any(|(_, name)| name == "." || name.is_empty())
        {
            return Err(Failure::permanent(
                "5.1.10",
                format!("{domain} does not accept mail (null MX, RFC 7505)"),
            ));
        }
        if exchanges.is_empty() {
            // RFC 5321 5.1: the domain itself is the implicit MX.
            let addresses = self.addresses(&fqdn, domain).await?;
            if addresses.is_empty() {
                return Err(Failure::permanent(
                    "5.1.2",
                    format!("{domain} has no MX and no address records"),
                ));
            }
            return Ok(vec![MxHost {
                name: domain.to_owned(),
                addresses,
            }]);
        }
        exchanges.sort_by_key(|(p, _)| *p);
        // Shuffle among equal preference (RFC 5321 5.1).
        shuffle_equal_preference(&mut exchanges);
        let mut hosts = Vec::new();
        let mut last_failure = None;
        for (_, name) in exchanges {
            match self.addresses(&name, &name).await {
                Ok(addresses) if !addresses.is_empty() => hosts.push(MxHost {
                    name: name.trim_end_matches('.').to_owned(),
                    addresses,
                }),
                Ok(_) => {}
                Err(f) => last_failure = Some(f),
            }
        }
        if hosts.is_empty() {
            return Err(last_failure.unwrap_or_else(|| {
                Failure::temporary("4.4.4", format!("no MX host of {domain} has an address"))
            }));
        }
        Ok(hosts)
    }

    /// A and AAAA of `name` (IPv4 first); empty when neither exists.
    async fn addresses(&self, name: &str, shown: &str) -> Result<Vec<IpAddr>, Failure> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let mut out = Vec::new();
        let mut err = None;
        match self.resolver.ipv4_lookup(fqdn.as_str()).await {
            Ok(l) => out.extend(l.answers().iter().filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                _ => None,
            })),
            Err(e) if e.is_no_records_found() => {}
            Err(e) => err = Some(dns_failure(shown, "A", &e)),
        }
        match self.resolver.ipv6_lookup(fqdn.as_str()).await {
            Ok(l) => out.extend(l.answers().iter().filter_map(|r| match &r.data {
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })),
            Err(e) if e.is_no_records_found() => {}
            Err(e) => err = err.or(Some(dns_failure(shown, "AAAA", &e))),
        }
        match (out.is_empty(), err) {
            (true, Some(f)) => Err(f),
            _ => Ok(out),
        }
    }
}

fn dns_failure(domain: &str, what: &str, e: &NetError) -> Failure {
    Failure::temporary(
        "4.4.3",
        format!("DNS lookup of {what} for {domain} failed: {e}"),
    )
}

/// Sorts by preference and shuffles hosts of equal preference (RFC 5321 5.1).
fn shuffle_equal_preference(exchanges: &mut [(u16, String)]) {
    exchanges.sort_by_key(|(p, _)| *p);
    let mut rng = rand::rng();
    let mut i = 0;
    while i < exchanges.len() {
        let p = exchanges[i].0;
        let j = exchanges[i..]
            .iter()
            .position(|(q, _)| *q != p)
            .map_or(exchanges.len(), |n| i + n);
        exchanges[i..j].shuffle(&mut rng);
        i = j;
    }
}

#[cfg(test)]
mod tests {
    use super::shuffle_equal_preference;

    #[test]
    fn preference_order_is_kept_and_ties_are_shuffled() {
        let mut seen_first = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let mut v = vec![
                (20, "c".to_owned()),
                (10, "a".to_owned()),
                (10, "b".to_owned()),
                (30, "d".to_owned()),
            ];
            shuffle_equal_preference(&mut v);
            let prefs: Vec<u16> = v.iter().map(|(p, _)| *p).collect();
            assert_eq!(prefs, vec![10, 10, 20, 30]);
            seen_first.insert(v[0].1.clone());
        }
        assert_eq!(
            seen_first.len(),
            2,
            "both equal-preference hosts come first sometimes"
        );
    }
}
