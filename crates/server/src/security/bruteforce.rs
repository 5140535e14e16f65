//! Brute-force defence (issue 4 item 6): in-memory sliding windows of failed
//! AUTH attempts, per (client IP, claimed user) and per client subnet (/24
//! IPv4, /64 IPv6). Windows count *distinct* failures: each entry keeps only
//! a short SHA-256 fingerprint of the attempted secret (never the secret), so
//! a client retrying the same wrong password counts once. Unknown users count
//! like known ones. A successful login makes its IP a usual IP of the account;
//! failures elsewhere never block the account there.
//!
//! Time is passed in explicitly (unix milliseconds) so the counters are
//! tested without clocks.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::config::BruteForceConfig;

/// A short fingerprint of an attempted secret (first 8 bytes of SHA-256).
pub type Fingerprint = [u8; 8];

/// Fingerprints `secret` as attempted for `user` (users are part of the
/// input so that the subnet window sees one password sprayed over many
/// users as many distinct failures).
pub fn fingerprint(user: &str, secret: &[u8]) -> Fingerprint {
    let mut h = Sha256::new();
    h.update(user.trim().to_lowercase().as_bytes());
    h.update([0u8]);
    h.update(secret);
    let d = h.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

/// The subnet an address is counted (and banned) in: /24 IPv4, /64 IPv6.
/// IPv4-mapped IPv6 addresses count as the IPv4 address.
pub fn subnet_of(ip: IpAddr) -> IpNet {
    let ip = ip.to_canonical();
    let prefix = if ip.is_ipv4() { 24 } else { 64 };
    IpNet::new(ip, prefix)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| IpNet::from(ip))
}

/// What may happen with the next attempt of (IP, user).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    Allow,
    /// Answer, but only after this extra delay.
    Delay(Duration),
    /// Refuse without checking: `421 4.7.0` and close (`rate_limited`).
    Block,
}

/// A subnet ban decided by the counters; the caller persists and enforces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewBan {
    pub network: IpNet,
    pub until_ms: i64,
    pub strikes: u32,
    pub failures: usize,
}

#[derive(Default, Debug)]
struct Window {
    /// (time, fingerprint), oldest first; fingerprints unique.
    entries: VecDeque<(i64, Fingerprint)>,
}

impl Window {
    fn prune(&mut self, cutoff: i64) {
        while self.entries.front().is_some_and(|(t, _)| *t <= cutoff) {
            self.entries.pop_front();
        }
    }
    /// Adds a failure unless the same fingerprint is already in the window.
    fn add(&mut self, now: i64, fp: Fingerprint) {
        if !self.entries.iter().any(|(_, f)| *f == fp) {
            self.entries.push_back((now, fp));
        }
    }
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[derive(Debug, Default)]
struct Inner {
    pairs: HashMap<(IpAddr, String), Window>,
    subnets: HashMap<IpNet, Window>,
    /// account -> (ip -> last successful login, ms).
    usual: HashMap<String, HashMap<IpAddr, i64>>,
    /// subnet -> (strikes, end of the last ban).
    strikes: HashMap<IpNet, (u32, i64)>,
    last_sweep: i64,
}

/// The counters; one per server, shared by all sessions.
#[derive(Debug)]
pub struct BruteForce {
    cfg: BruteForceConfig,
    inner: Mutex<Inner>,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn key_user(user: &str) -> String {
    let mut u = user.trim().to_lowercase();
    if u.len() > 255 {
        let mut cut = 255;
        while !u.is_char_boundary(cut) {
            cut -= 1;
        }
        u.truncate(cut);
    }
    u
}

impl BruteForce {
    pub fn new(cfg: BruteForceConfig) -> BruteForce {
        BruteForce {
            cfg,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent-enough counters.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The budget of the next attempt by `ip` for `user` at `now_ms`.
    pub fn check(&self, ip: IpAddr, user: &str, now_ms: i64) -> Budget {
        let ip = ip.to_canonical();
        let user = key_user(user);
        let mut inner = self.lock();
        let cutoff = now_ms - ms(self.cfg.window);
        let failures = match inner.pairs.get_mut(&(ip, user)) {
            Some(w) => {
                w.prune(cutoff);
                w.len()
            }
            None => 0,
        };
        let over = |n: u32| n > 0 && failures >= n as usize;
        if over(self.cfg.block_after) {
            Budget::Block
        } else if over(self.cfg.delay_after) {
            Budget::Delay(self.cfg.delay)
        } else {
            Budget::Allow
        }
    }

    /// Counts a failed attempt; returns a subnet ban when this failure
    /// reaches the subnet threshold.
    pub fn record_failure(
        &self,
        ip: IpAddr,
        user: &str,
        fp: Fingerprint,
        now_ms: i64,
    ) -> Option<NewBan> {
        let ip = ip.to_canonical();
        let user = key_user(user);
        let mut inner = self.lock();
        self.sweep(&mut inner, now_ms);
        let pair_cutoff = now_ms - ms(self.cfg.window);
        let w = inner.pairs.entry((ip, user)).or_default();
        w.prune(pair_cutoff);
        w.add(now_ms, fp);
        let net = subnet_of(ip);
        let sub_cutoff = now_ms - ms(self.cfg.subnet_window);
        let w = inner.subnets.entry(net).or_default();
        w.prune(sub_cutoff);
        w.add(now_ms, fp);
        let failures = w.len();
        let threshold = self.cfg.subnet_ban_after as usize;
        if threshold == 0 || failures < threshold {
            return None;
        }
        // Ban: the window starts afresh, the strike count grows.
        inner.subnets.remove(&net);
        let max = ms(self.cfg.ban_max_duration);
        let strikes = match inner.strikes.get(&net) {
            // A repeat within the longest ban after the previous one ended.
            Some((n, last_until)) if now_ms < last_until.saturating_add(max) => n + 1,
            _ => 1,
        };
        let until_ms = now_ms.saturating_add(ban_length_ms(&self.cfg, strikes));
        inner.strikes.insert(net, (strikes, until_ms));
        Some(NewBan {
            network: net,
            until_ms,
            strikes,
            failures,
        })
    }

    /// Remembers the strikes of a ban loaded from the store (at startup).
    pub fn note_ban(&self, network: IpNet, strikes: u32, until_ms: i64) {
        let mut inner = self.lock();
        let e = inner.strikes.entry(network).or_insert((0, 0));
        if strikes >= e.0 {
            *e = (strikes, until_ms);
        }
    }

    /// A successful login: `ip` becomes a usual IP of `user`, and the
    /// failures of this (IP, user) pair are forgotten.
    pub fn record_success(&self, ip: IpAddr, user: &str, now_ms: i64) {
        let ip = ip.to_canonical();
        let user = key_user(user);
        let mut inner = self.lock();
        inner.pairs.remove(&(ip, user.clone()));
        inner.usual.entry(user).or_default().insert(ip, now_ms);
    }

    /// Whether `ip` is a usual IP of `user` (a success within the TTL).
    pub fn is_usual(&self, ip: IpAddr, user: &str, now_ms: i64) -> bool {
        let ip = ip.to_canonical();
        let ttl = ms(self.cfg.usual_ip_ttl);
        self.lock()
            .usual
            .get(&key_user(user))
            .and_then(|m| m.get(&ip))
            .is_some_and(|t| now_ms - t < ttl)
    }

    /// Whether `ip` is a usual IP of any account (exempt from automatic
    /// subnet bans at the greeting).
    pub fn is_usual_for_anyone(&self, ip: IpAddr, now_ms: i64) -> bool {
        let ip = ip.to_canonical();
        let ttl = ms(self.cfg.usual_ip_ttl);
        self.lock()
            .usual
            .values()
            .any(|m| m.get(&ip).is_some_and(|t| now_ms - t < ttl))
    }

    /// Drops expired state (at most once a minute).
    fn sweep(&self, inner: &mut Inner, now_ms: i64) {
        if now_ms - inner.last_sweep < 60_000 {
            return;
        }
        inner.last_sweep = now_ms;
        let pair_cutoff = now_ms - ms(self.cfg.window);
        inner.pairs.retain(|_, w| {
            w.prune(pair_cutoff);
            w.len() > 0
        });
        let sub_cutoff = now_ms - ms(self.cfg.subnet_window);
        inner.subnets.retain(|_, w| {
            w.prune(sub_cutoff);
            w.len() > 0
        });
        let ttl = ms(self.cfg.usual_ip_ttl);
        inner.usual.retain(|_, m| {
            m.retain(|_, t| now_ms - *t < ttl);
            !m.is_empty()
        });
        let max = ms(self.cfg.ban_max_duration);
        inner
            .strikes
            .retain(|_, (_, until)| now_ms < until.saturating_add(max));
    }
}

/// Ban length for the `strikes`-th ban: `ban_duration × 2^(strikes-1)`,
/// at most `ban_max_duration`.
pub fn ban_length_ms(cfg: &BruteForceConfig, strikes: u32) -> i64 {
    let base = ms(cfg.ban_duration);
    let max = ms(cfg.ban_max_duration);
    let shift = strikes.saturating_sub(1).min(40);
    base.saturating_mul(1i64 << shift).min(max)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::config::Config;

    const MIN: i64 = 60_000;

    fn bf() -> BruteForce {
        BruteForce::new(Config::default_config().security.bruteforce)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn fp(n: u32) -> Fingerprint {
        fingerprint("alice@example.com", &n.to_be_bytes())
    }

    #[test]
    fn delay_after_5_block_after_10_distinct_failures() {
        let b = bf();
        let a = ip("192.0.2.7");
        for i in 0..5 {
            assert_eq!(b.check(a, "alice@example.com", i), Budget::Allow);
            assert!(
                b.record_failure(a, "alice@example.com", fp(i as u32), i)
                    .is_none()
            );
        }
        assert_eq!(
            b.check(a, "Alice@Example.com", 10),
            Budget::Delay(Duration::from_secs(3))
        );
        for i in 5..10 {
            b.record_failure(a, "alice@example.com", fp(i), 10);
        }
        assert_eq!(b.check(a, "alice@example.com", 11), Budget::Block);
        // Another user from the same IP, and the same user elsewhere: untouched.
        assert_eq!(b.check(a, "bob@example.com", 11), Budget::Allow);
        assert_eq!(
            b.check(ip("198.51.100.1"), "alice@example.com", 11),
            Budget::Allow
        );
    }

    #[test]
    fn repeating_the_same_wrong_password_counts_once() {
        let b = bf();
        let a = ip("192.0.2.7");
        for t in 0..50 {
            b.record_failure(a, "alice@example.com", fp(1), t);
        }
        assert_eq!(b.check(a, "alice@example.com", 100), Budget::Allow);
    }

    #[test]
    fn window_slides() {
        let b = bf();
        let a = ip("192.0.2.7");
        for i in 0..10 {
            b.record_failure(a, "alice@example.com", fp(i), i64::from(i) * MIN);
        }
        assert_eq!(b.check(a, "alice@example.com", 9 * MIN), Budget::Block);
        // 15 minutes after the first failure it leaves the window: 9 remain.
        assert_eq!(
            b.check(a, "alice@example.com", 15 * MIN + 1),
            Budget::Delay(Duration::from_secs(3))
        );
        // All gone after the last one is 15 minutes old.
        assert_eq!(b.check(a, "alice@example.com", 24 * MIN + 1), Budget::Allow);
    }

    #[test]
    fn subnet_ban_after_30_and_doubling_strikes() {
        let b = bf();
        let mut ban = None;
        // 30 distinct failures spread over users and addresses of one /24.
        for i in 0..30u32 {
            let a = ip(&format!("203.0.113.{}", i % 7 + 1));
            let user = format!("user{}@example.com", i % 3);
            let got = b.record_failure(a, &user, fingerprint(&user, &i.to_be_bytes()), 1000);
            if i < 29 {
                assert!(got.is_none(), "banned early at {i}");
            } else {
                ban = got;
            }
        }
        let ban = ban.expect("ban after 30");
        assert_eq!(ban.network, "203.0.113.0/24".parse::<IpNet>().unwrap());
        assert_eq!(ban.strikes, 1);
        assert_eq!(ban.until_ms, 1000 + 60 * MIN);
        // After the ban, a second burst: twice as long.
        let t = ban.until_ms + 1;
        let mut second = None;
        for i in 0..30u32 {
            second = b.record_failure(
                ip("203.0.113.9"),
                "x@y",
                fingerprint("x", &i.to_be_bytes()),
                t,
            );
        }
        let second = second.expect("second ban");
        assert_eq!(second.strikes, 2);
        assert_eq!(second.until_ms, t + 120 * MIN);
        let cfg = Config::default_config().security.bruteforce;
        assert_eq!(
            ban_length_ms(&cfg, 20),
            7 * 24 * 60 * MIN,
            "capped at a week"
        );
        // Other subnets are not affected.
        assert!(
            b.record_failure(ip("203.0.114.1"), "x@y", fp(1), t)
                .is_none()
        );
    }

    #[test]
    fn ipv6_subnet_is_a_64_and_mapped_v4_is_v4() {
        assert_eq!(
            subnet_of(ip("2001:db8:1:2:3:4:5:6")),
            "2001:db8:1:2::/64".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            subnet_of(ip("::ffff:192.0.2.77")),
            "192.0.2.0/24".parse::<IpNet>().unwrap()
        );
    }

    #[test]
    fn success_records_a_usual_ip_and_clears_the_pair() {
        let b = bf();
        let home = ip("192.0.2.10");
        let attacker = ip("198.51.100.66");
        b.record_success(home, "alice@example.com", 0);
        for i in 0..20 {
            b.record_failure(attacker, "alice@example.com", fp(i), 10);
        }
        assert_eq!(b.check(attacker, "alice@example.com", 20), Budget::Block);
        assert_eq!(b.check(home, "alice@example.com", 20), Budget::Allow);
        assert!(b.is_usual(home, "ALICE@example.com", 20));
        assert!(b.is_usual_for_anyone(home, 20));
        assert!(!b.is_usual(attacker, "alice@example.com", 20));
        // Usual for 30 days only.
        assert!(!b.is_usual(home, "alice@example.com", 31 * 24 * 60 * MIN));
        // Failures at home then a success there: the pair is cleared.
        for i in 0..6 {
            b.record_failure(home, "alice@example.com", fp(100 + i), 30);
        }
        assert!(matches!(
            b.check(home, "alice@example.com", 31),
            Budget::Delay(_)
        ));
        b.record_success(home, "alice@example.com", 32);
        assert_eq!(b.check(home, "alice@example.com", 33), Budget::Allow);
    }
}
