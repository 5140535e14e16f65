//! Active bans (issue 4 item 6): networks whose connections get `421 4.7.0`
//! at the greeting. Loaded from the store at startup and refreshed
//! periodically (so `portcullis ban add|remove` take effect on a running
//! server); automatic bans are written through with `upsert_ban`.

use std::net::IpAddr;
use std::sync::RwLock;

use ipnet::IpNet;
use portcullis_store::Ban;

/// `reason` prefix of bans made by the brute-force defence. Only these
/// spare the usual IPs of accounts; bans added by an admin spare nobody.
pub const AUTO_REASON_PREFIX: &str = "bruteforce";

/// Parses a ban network as stored or typed: CIDR or bare IP, normalised
/// (host bits cleared; a bare IP is a /32 or /128).
pub fn parse_network(text: &str) -> Option<IpNet> {
    let t = text.trim();
    if let Ok(net) = t.parse::<IpNet>() {
        return Some(net.trunc());
    }
    t.parse::<IpAddr>().ok().map(IpNet::from)
}

/// How long a fresh automatic ban survives a refresh that does not list it.
const RECENT_MS: i64 = 60_000;

#[derive(Debug, Default)]
pub struct BanList {
    bans: RwLock<Vec<(IpNet, Ban)>>,
}

impl BanList {
    pub fn new() -> BanList {
        BanList::default()
    }

    /// Replaces the list with `bans` (from `Store::list_bans`); unparsable
    /// networks are skipped with a warning. Automatic bans made in the last
    /// minute that the store does not list yet (their write may still be in
    /// flight) are kept.
    pub fn replace_all(&self, bans: Vec<Ban>, now_ms: i64) {
        let mut parsed: Vec<(IpNet, Ban)> = bans
            .into_iter()
            .filter_map(|b| match parse_network(&b.network) {
                Some(net) => Some((net, b)),
                None => {
                    tracing::warn!(network = %b.network, "ignoring a ban with an invalid network");
                    None
                }
            })
            .collect();
        if let Ok(mut guard) = self.bans.write() {
            let recent: Vec<(IpNet, Ban)> = guard
                .iter()
                .filter(|(net, b)| {
                    is_automatic(b)
                        && b.created_ms >= now_ms - RECENT_MS
                        && b.until_ms > now_ms
                        && !parsed.iter().any(|(n, _)| n == net)
                })
                .cloned()
                .collect();
            parsed.extend(recent);
            *guard = parsed;
        }
    }

    /// Adds or replaces the ban of `ban.network`.
    pub fn insert(&self, ban: Ban) {
        let Some(net) = parse_network(&ban.network) else {
            return;
        };
        if let Ok(mut guard) = self.bans.write() {
            guard.retain(|(n, _)| *n != net);
            guard.push((net, ban));
        }
    }

    /// The active ban covering `ip` at `now_ms`, if any (the longest).
    pub fn find(&self, ip: IpAddr, now_ms: i64) -> Option<Ban> {
        let canonical = ip.to_canonical();
        let guard = self.bans.read().ok()?;
        guard
            .iter()
            .filter(|(net, b)| {
                b.until_ms > now_ms && (net.contains(&ip) || net.contains(&canonical))
            })
            .max_by_key(|(_, b)| b.until_ms)
            .map(|(_, b)| b.clone())
    }

    /// Number of bans held (active or not yet dropped).
    pub fn len(&self) -> usize {
        self.bans.read().map(|g| g.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a ban was made by the brute-force defence.
pub fn is_automatic(ban: &Ban) -> bool {
    ban.reason.starts_with(AUTO_REASON_PREFIX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn ban(net: &str, until: i64) -> Ban {
        Ban {
            network: net.into(),
            until_ms: until,
            reason: "manual".into(),
            created_ms: 0,
            strikes: 1,
        }
    }

    #[test]
    fn finds_covering_active_bans() {
        let list = BanList::new();
        list.replace_all(
            vec![
                ban("192.0.2.0/24", 1000),
                ban("2001:db8::/64", 1000),
                ban("junk", 1000),
            ],
            0,
        );
        assert_eq!(list.len(), 2);
        assert!(list.find("192.0.2.77".parse().unwrap(), 10).is_some());
        assert!(
            list.find("::ffff:192.0.2.77".parse().unwrap(), 10)
                .is_some()
        );
        assert!(list.find("2001:db8::5".parse().unwrap(), 10).is_some());
        assert!(list.find("192.0.3.1".parse().unwrap(), 10).is_none());
        assert!(
            list.find("192.0.2.77".parse().unwrap(), 1000).is_none(),
            "expired"
        );
        list.insert(ban("198.51.100.7", 5000));
        assert!(list.find("198.51.100.7".parse().unwrap(), 10).is_some());
        assert!(list.find("198.51.100.8".parse().unwrap(), 10).is_none());
        // A refresh keeps a fresh automatic ban the store does not list yet...
        let mut auto = ban("203.0.113.0/24", 100_000);
        auto.reason = format!("{AUTO_REASON_PREFIX}: 30 failed logins");
        auto.created_ms = 10;
        list.insert(auto);
        list.replace_all(vec![ban("192.0.2.0/24", 100_000)], 20);
        assert!(list.find("203.0.113.5".parse().unwrap(), 20).is_some());
        assert!(
            list.find("198.51.100.7".parse().unwrap(), 20).is_none(),
            "manual: removed"
        );
        // ...but not for long.
        list.replace_all(vec![], 10 + RECENT_MS + 1);
        assert!(list.is_empty());
    }

    #[test]
    fn parse_network_normalises() {
        assert_eq!(
            parse_network("192.0.2.9/24").unwrap().to_string(),
            "192.0.2.0/24"
        );
        assert_eq!(
            parse_network(" 192.0.2.9 ").unwrap().to_string(),
            "192.0.2.9/32"
        );
        assert!(parse_network("nope").is_none());
    }
}
