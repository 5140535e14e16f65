//! In-memory per-IP rate limits with GCRA (the generic cell rate algorithm,
//! as used by ATM networks and `governor`): one "theoretical arrival time"
//! per key, O(1) per check, exact rate with a configurable burst.
//!
//! A limit of `rate` events per minute with burst `b` admits `b` events at
//! once, then one every `60s / rate`. Never blocks; the caller turns a refusal
//! into `421 4.7.0` (connections) or `451 4.7.1` (messages).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Above this many tracked keys, expired entries are swept on insert.
const SWEEP_ABOVE: usize = 10_000;

#[derive(Debug)]
pub struct Gcra {
    /// Emission interval T in milliseconds (60_000 / rate).
    interval_ms: f64,
    /// Tolerance tau = T * (burst - 1).
    tolerance_ms: f64,
    tat: Mutex<HashMap<IpAddr, f64>>,
}

/// Outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Admission {
    Allowed,
    /// Refused; the next event would be admitted after this many ms.
    Limited {
        retry_after_ms: u64,
    },
}

impl Gcra {
    /// `None` when `per_minute` is 0 (the limit is disabled).
    pub fn per_minute(per_minute: u32, burst: u32) -> Option<Gcra> {
        if per_minute == 0 {
            return None;
        }
        let interval_ms = 60_000.0 / f64::from(per_minute);
        Some(Gcra {
            interval_ms,
            tolerance_ms: interval_ms * f64::from(burst.max(1) - 1),
            tat: Mutex::new(HashMap::new()),
        })
    }

    /// Counts one event for `ip` at `now_ms` if it is within the limit.
    pub fn check(&self, ip: IpAddr, now_ms: i64) -> Admission {
        let now = now_ms as f64;
        let Ok(mut map) = self.tat.lock() else {
            // A poisoned lock only means another thread panicked mid-update;
            // failing open keeps mail flowing (limits are a courtesy here).
            return Admission::Allowed;
        };
        if map.len() > SWEEP_ABOVE {
            map.retain(|_, tat| *tat > now);
        }
        let tat = map.get(&ip).copied().unwrap_or(now).max(now);
        if tat - now > self.tolerance_ms {
            let wait = tat - now - self.tolerance_ms;
            return Admission::Limited {
                retry_after_ms: wait.ceil() as u64,
            };
        }
        map.insert(ip, tat + self.interval_ms);
        Admission::Allowed
    }
}

/// "1m30s"-style text for replies.
pub fn human_duration(ms: u64) -> String {
    let secs = ms.div_ceil(1000).max(1);
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn burst_then_steady_rate() {
        let g = Gcra::per_minute(60, 3).unwrap_or_else(|| unreachable!());
        let t0 = 1_000_000;
        for _ in 0..3 {
            assert_eq!(g.check(ip(1), t0), Admission::Allowed);
        }
        assert_eq!(
            g.check(ip(1), t0),
            Admission::Limited {
                retry_after_ms: 1000
            }
        );
        // Another IP is unaffected.
        assert_eq!(g.check(ip(2), t0), Admission::Allowed);
        assert_eq!(
            g.check(ip(1), t0 + 999),
            Admission::Limited { retry_after_ms: 1 }
        );
        assert_eq!(g.check(ip(1), t0 + 1000), Admission::Allowed);
        assert!(matches!(
            g.check(ip(1), t0 + 1000),
            Admission::Limited { .. }
        ));
        // After a long pause the full burst is available again.
        for _ in 0..3 {
            assert_eq!(g.check(ip(1), t0 + 60_000), Admission::Allowed);
        }
    }

    #[test]
    fn zero_disables() {
        assert!(Gcra::per_minute(0, 10).is_none());
    }

    #[test]
    fn human() {
        assert_eq!(human_duration(0), "1s");
        assert_eq!(human_duration(1), "1s");
        assert_eq!(human_duration(90_000), "1m30s");
        assert_eq!(human_duration(3_600_000), "1h");
        assert_eq!(human_duration(3_750_500), "1h2m31s");
    }
}
