//! Counters collected by each connection, merged into one [`Report`] printed
//! as text or as one JSON object.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::json;

use crate::reply::Reply;

/// How often one reply code was seen, at which stage first, and one example text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorEntry {
    pub count: u64,
    pub stage: &'static str,
    pub example: String,
}

/// What one connection (or, merged, the whole run) did.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub connections_ok: u64,
    pub connections_failed: u64,
    pub messages_ok: u64,
    pub messages_failed: u64,
    pub recipients_ok: u64,
    pub recipients_failed: u64,
    /// Octets of accepted messages (before dot-stuffing).
    pub bytes: u64,
    /// Latency of each accepted message, MAIL sent to final 250 received.
    pub latencies_us: Vec<u64>,
    /// Time of each session setup (connect, TLS, EHLO, AUTH).
    pub setup_us: Vec<u64>,
    /// Failure replies by `"451 4.7.1"`-style key.
    pub errors: BTreeMap<String, ErrorEntry>,
    /// Non-reply connection failures (connect, TLS, timeout, protocol) by description.
    pub connection_errors: BTreeMap<String, u64>,
}

impl Stats {
    /// Counts a failure reply.
    pub fn reply_error(&mut self, stage: &'static str, reply: &Reply) {
        let entry = self
            .errors
            .entry(reply.code_key())
            .or_insert_with(|| ErrorEntry {
                count: 0,
                stage,
                example: reply.text().chars().take(200).collect(),
            });
        entry.count += 1;
    }

    pub fn connection_error(&mut self, description: String) {
        *self.connection_errors.entry(description).or_insert(0) += 1;
    }

    pub fn merge(&mut self, other: Stats) {
        self.connections_ok += other.connections_ok;
        self.connections_failed += other.connections_failed;
        self.messages_ok += other.messages_ok;
        self.messages_failed += other.messages_failed;
        self.recipients_ok += other.recipients_ok;
        self.recipients_failed += other.recipients_failed;
        self.bytes += other.bytes;
        self.latencies_us.extend(other.latencies_us);
        self.setup_us.extend(other.setup_us);
        for (key, e) in other.errors {
            self.errors
                .entry(key)
                .and_modify(|mine| mine.count += e.count)
                .or_insert(e);
        }
        for (key, n) in other.connection_errors {
            *self.connection_errors.entry(key).or_insert(0) += n;
        }
    }
}

/// The parameters of the run, echoed in the report.
#[derive(Debug, Clone)]
pub struct Settings {
    pub addr: String,
    pub tls: &'static str,
    pub connections: usize,
    pub messages_per_connection: Option<u64>,
    pub duration: Option<Duration>,
    pub recipients: usize,
    pub size: usize,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

impl Latency {
    /// Percentiles of sorted values.
    pub fn of(l: &[u64]) -> Latency {
        Latency {
            p50: percentile(l, 50.0),
            p90: percentile(l, 90.0),
            p99: percentile(l, 99.0),
            max: l.last().copied().unwrap_or(0),
        }
    }
}

/// Nearest-rank percentile of sorted values (0 when empty).
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The outcome of a whole run.
#[derive(Debug, Clone)]
pub struct Report {
    pub settings: Settings,
    pub stats: Stats,
    pub elapsed: Duration,
    /// Stopped early by SIGINT/SIGTERM.
    pub interrupted: bool,
}

impl Report {
    pub fn new(
        settings: Settings,
        mut stats: Stats,
        elapsed: Duration,
        interrupted: bool,
    ) -> Report {
        stats.latencies_us.sort_unstable();
        stats.setup_us.sort_unstable();
        Report {
            settings,
            stats,
            elapsed,
            interrupted,
        }
    }

    pub fn latency(&self) -> Latency {
        Latency::of(&self.stats.latencies_us)
    }

    /// Session setup (connect + TLS + EHLO + AUTH) percentiles.
    pub fn setup_latency(&self) -> Latency {
        Latency::of(&self.stats.setup_us)
    }

    /// Messages that were planned but never attempted (count mode only).
    pub fn not_sent(&self) -> u64 {
        let Some(per) = self.settings.messages_per_connection else {
            return 0;
        };
        let planned = per * self.settings.connections as u64;
        planned.saturating_sub(self.stats.messages_ok + self.stats.messages_failed)
    }

    /// Every planned message accepted, no error of any kind.
    pub fn all_ok(&self) -> bool {
        let s = &self.stats;
        !self.interrupted
            && s.messages_failed == 0
            && s.recipients_failed == 0
            && s.connections_failed == 0
            && s.connection_errors.is_empty()
            && self.not_sent() == 0
            && s.messages_ok > 0
    }

    fn rate(&self, n: u64) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { n as f64 / secs } else { 0.0 }
    }

    pub fn json(&self) -> serde_json::Value {
        let s = &self.stats;
        let l = self.latency();
        let su = self.setup_latency();
        let ms = |us: u64| us as f64 / 1000.0;
        let errors: serde_json::Map<String, serde_json::Value> = s
            .errors
            .iter()
            .map(|(k, e)| {
                (
                    k.clone(),
                    json!({"count": e.count, "stage": e.stage, "example": e.example}),
                )
            })
            .collect();
        json!({
            "addr": self.settings.addr,
            "tls": self.settings.tls,
            "connections": self.settings.connections,
            "messages_per_connection": self.settings.messages_per_connection,
            "duration_s": self.settings.duration.map(|d| d.as_secs_f64()),
            "recipients_per_message": self.settings.recipients,
            "size": self.settings.size,
            "interrupted": self.interrupted,
            "connections_ok": s.connections_ok,
            "connections_failed": s.connections_failed,
            "messages": s.messages_ok,
            "messages_failed": s.messages_failed,
            "messages_not_sent": self.not_sent(),
            "recipients": s.recipients_ok,
            "recipients_failed": s.recipients_failed,
            "bytes": s.bytes,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "messages_per_s": self.rate(s.messages_ok),
            "recipients_per_s": self.rate(s.recipients_ok),
            "latency_ms": {"p50": ms(l.p50), "p90": ms(l.p90), "p99": ms(l.p99), "max": ms(l.max)},
            "sessions": s.setup_us.len(),
            "setup_ms": {"p50": ms(su.p50), "p90": ms(su.p90), "p99": ms(su.p99), "max": ms(su.max)},
            "errors": errors,
            "connection_errors": s.connection_errors,
        })
    }

    pub fn text(&self) -> String {
        let s = &self.stats;
        let set = &self.settings;
        let l = self.latency();
        let ms = |us: u64| format!("{:.2} ms", us as f64 / 1000.0);
        let mode = match (set.messages_per_connection, set.duration) {
            (_, Some(d)) => format!("duration={:.1}s", d.as_secs_f64()),
            (Some(n), None) => format!("messages/conn={n}"),
            (None, None) => String::new(),
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "portcullis-load: {} tls={} connections={} {mode} rcpts/msg={} size={}{}",
            set.addr,
            set.tls,
            set.connections,
            set.recipients,
            set.size,
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "connections: {} ok, {} failed",
            s.connections_ok, s.connections_failed
        );
        let _ = writeln!(
            out,
            "messages:    {} ok, {} failed, {} not sent",
            s.messages_ok,
            s.messages_failed,
            self.not_sent()
        );
        let _ = writeln!(
            out,
            "recipients:  {} accepted, {} rejected",
            s.recipients_ok, s.recipients_failed
        );
        let _ = writeln!(out, "elapsed:     {:.3} s", self.elapsed.as_secs_f64());
        let _ = writeln!(
            out,
            "throughput:  {:.1} messages/s, {:.1} recipients/s, {:.2} MiB/s",
            self.rate(s.messages_ok),
            self.rate(s.recipients_ok),
            self.rate(s.bytes) / (1024.0 * 1024.0)
        );
        let _ = writeln!(
            out,
            "latency:     p50 {}  p90 {}  p99 {}  max {}",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.max)
        );
        let su = self.setup_latency();
        let _ = writeln!(
            out,
            "setup:       {} sessions, p50 {}  p99 {} (connect+TLS+EHLO+AUTH)",
            s.setup_us.len(),
            ms(su.p50),
            ms(su.p99)
        );
        if !s.errors.is_empty() {
            let _ = writeln!(out, "errors by code:");
            for (code, e) in &s.errors {
                let _ = writeln!(
                    out,
                    "  {code:<12} {:>8}  at {:<8} e.g. {:?}",
                    e.count, e.stage, e.example
                );
            }
        }
        if !s.connection_errors.is_empty() {
            let _ = writeln!(out, "connection errors:");
            for (what, n) in &s.connection_errors {
                let _ = writeln!(out, "  {n:>8}  {what}");
            }
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 90.0), 90);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[7], 50.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
        assert_eq!(percentile(&[1, 2], 0.0), 1);
    }

    #[test]
    fn merge_and_report() {
        let reply = Reply {
            code: 451,
            lines: vec!["4.7.1 Plan limit".into()],
        };
        let mut a = Stats {
            messages_ok: 2,
            recipients_ok: 4,
            latencies_us: vec![3000, 1000],
            ..Stats::default()
        };
        a.reply_error("MAIL", &reply);
        let mut b = Stats {
            messages_ok: 1,
            messages_failed: 1,
            latencies_us: vec![2000],
            ..Stats::default()
        };
        b.reply_error("MAIL", &reply);
        b.connection_error("connect: refused".into());
        a.merge(b);
        assert_eq!(a.errors["451 4.7.1"].count, 2);
        let settings = Settings {
            addr: "127.0.0.1:1".into(),
            tls: "none",
            connections: 2,
            messages_per_connection: Some(2),
            duration: None,
            recipients: 2,
            size: 100,
        };
        let r = Report::new(settings, a, Duration::from_secs(1), false);
        assert_eq!(
            r.latency(),
            Latency {
                p50: 2000,
                p90: 3000,
                p99: 3000,
                max: 3000
            }
        );
        assert_eq!(r.not_sent(), 0);
        assert!(!r.all_ok());
        let j = r.json();
        assert_eq!(j["messages"], 3);
        assert_eq!(j["errors"]["451 4.7.1"]["count"], 2);
        assert_eq!(j["connection_errors"]["connect: refused"], 1);
        assert_eq!(j["messages_per_s"], 3.0);
        let t = r.text();
        assert!(t.contains("451 4.7.1"), "{t}");
        assert!(t.contains("p50 2.00 ms"), "{t}");
    }
}
