//! Usage reporting: `portcullis usage top` and `portcullis account usage`.
//!
//! The numbers come from the usage events the server records with every
//! queued message (one per accepted recipient) and use the same window
//! arithmetic as enforcement ([`portcullis_server::usage`]): an email sent at
//! `t` counts until exactly `t + 60 minutes` (or `+ 24 hours`). Recipients of
//! a transaction still in progress are counted by the server but not yet
//! recorded, so they show here once their message is queued.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use portcullis_server::config::{Config, format_duration, parse_duration};
use portcullis_server::usage::{DAY_MS, HOUR_MS, next_free_ms, window_count};
use portcullis_store::{SqliteStore, Store, validate};

use crate::common::{
    format_time_ms, format_wait, now_ms, open_store, plural, print_table, store_error,
    undefined_plan_warning,
};

#[derive(Debug, Args)]
pub struct UsageArgs {
    #[command(subcommand)]
    command: UsageCommand,
}

#[derive(Debug, Subcommand)]
enum UsageCommand {
    /// The heaviest senders: emails (accepted recipients) per account, most first.
    ///
    /// The server keeps usage for about a day; older emails are not counted.
    Top {
        /// How far back to count, e.g. 30m, 1h, 24h.
        #[arg(long, value_name = "DURATION", default_value = "1h")]
        since: String,
        /// Show at most this many accounts.
        #[arg(long, value_name = "N", default_value_t = 10,
              value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
}

pub async fn run(args: UsageArgs, config: &Config) -> anyhow::Result<()> {
    match args.command {
        UsageCommand::Top { since, limit } => {
            let window = parse_since(&since)?;
            let store = open_store(config).await?;
            let result = top(&store, config, window, limit).await;
            store.close().await;
            result
        }
    }
}

/// `--since`: a positive duration written as in the config file.
fn parse_since(text: &str) -> anyhow::Result<Duration> {
    let window = parse_duration(text)
        .ok_or_else(|| anyhow!("--since: invalid duration {text:?} (use e.g. 30m, 1h, 24h)"))?;
    if window.is_zero() {
        bail!("--since: must be longer than 0s");
    }
    Ok(window)
}

async fn top(
    store: &SqliteStore,
    config: &Config,
    window: Duration,
    limit: u32,
) -> anyhow::Result<()> {
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    let now = now_ms();
    let events = store
        .usage_all_since(now.saturating_sub(window_ms))
        .await
        .map_err(|e| store_error("usage", e))?;
    let since_text = format_duration(window);
    if events.is_empty() {
        println!("No emails sent in the last {since_text}");
        return Ok(());
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for (account, _) in events {
        *counts.entry(account).or_default() += 1;
    }
    let mut ranked: Vec<(String, usize)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let senders = ranked.len();
    ranked.truncate(usize::try_from(limit).unwrap_or(usize::MAX));

    let plans: HashMap<String, String> = store
        .list_accounts()
        .await
        .map_err(|e| store_error("account", e))?
        .into_iter()
        .map(|a| (a.address, a.plan))
        .collect();
    let mut undefined = Vec::new();
    let rows: Vec<Vec<String>> = ranked
        .iter()
        .map(|(account, count)| {
            let (plan, per_hour) = match plans.get(account) {
                None => ("(no account)".to_owned(), "-".to_owned()),
                Some(plan) => match config.plan(plan) {
                    Some(p) => (plan.clone(), p.emails_per_hour.to_string()),
                    None => {
                        if !undefined.contains(plan) {
                            undefined.push(plan.clone());
                        }
                        (format!("{plan} (undefined)"), "-".to_owned())
                    }
                },
            };
            vec![account.clone(), count.to_string(), plan, per_hour]
        })
        .collect();
    println!("Emails sent in the last {since_text}:");
    print_table(&["ACCOUNT", "EMAILS", "PLAN", "EMAILS/HOUR"], &rows);
    if senders > rows.len() {
        println!(
            "({}; use --limit to show more)",
            plural(senders - rows.len(), "more sender")
        );
    }
    for plan in undefined {
        eprintln!("{}", undefined_plan_warning(config, &plan));
    }
    Ok(())
}

/// `portcullis account usage EMAIL`.
pub async fn account_usage(
    store: &SqliteStore,
    config: &Config,
    email: &str,
) -> anyhow::Result<()> {
    let address = validate::normalize_address(email).map_err(|e| store_error("account", e))?;
    let account = store
        .account(&address)
        .await
        .map_err(|e| store_error("account", e))?
        .ok_or_else(|| anyhow!("account {address} not found"))?;
    let now = now_ms();
    let sent = store
        .usage_since(&account.address, now.saturating_sub(DAY_MS))
        .await
        .map_err(|e| store_error("usage", e))?;
    let report = UsageReport::new(
        &sent,
        now,
        config
            .plan(&account.plan)
            .map(|p| (p.emails_per_hour, p.emails_per_day)),
    );

    println!("account:   {}", account.address);
    match config.plan(&account.plan) {
        Some(plan) => println!(
            "plan:      {} ({} emails/hour{})",
            account.plan,
            plan.emails_per_hour,
            plan.emails_per_day
                .map(|d| format!(", {d} emails/day"))
                .unwrap_or_default()
        ),
        None => println!(
            "plan:      {} (not defined in the configuration)",
            account.plan
        ),
    }
    for line in report.lines(now) {
        println!("{line}");
    }
    if config.plan(&account.plan).is_none() {
        eprintln!("{}", undefined_plan_warning(config, &account.plan));
    }
    Ok(())
}

/// What `account usage` shows, computed from the recorded timestamps.
#[derive(Debug, PartialEq, Eq)]
struct UsageReport {
    last_hour: usize,
    last_day: usize,
    /// `(emails_per_hour, emails_per_day)` of the plan, if it is defined.
    limits: Option<(u32, Option<u32>)>,
    /// When one more email may be sent, if a limit is reached now.
    next_free: Option<i64>,
}

impl UsageReport {
    fn new(sent: &[i64], now: i64, limits: Option<(u32, Option<u32>)>) -> UsageReport {
        let last_hour = window_count(sent, now, HOUR_MS);
        let last_day = window_count(sent, now, DAY_MS);
        let next_free = limits.and_then(|(per_hour, per_day)| {
            let hourly = next_free_ms(sent, now, HOUR_MS, per_hour);
            let daily = per_day.map_or(Some(now), |d| next_free_ms(sent, now, DAY_MS, d));
            // Both conditions only get easier as time passes: the later one wins.
            let free = hourly?.max(daily?);
            (free > now).then_some(free)
        });
        UsageReport {
            last_hour,
            last_day,
            limits,
            next_free,
        }
    }

    fn lines(&self, now: i64) -> Vec<String> {
        let remaining = |limit: u32, count: usize| {
            usize::try_from(limit)
                .unwrap_or(usize::MAX)
                .saturating_sub(count)
        };
        let mut lines = Vec::new();
        match self.limits {
            Some((per_hour, per_day)) => {
                lines.push(format!(
                    "last hour: {}/{per_hour} emails, {} remaining",
                    self.last_hour,
                    remaining(per_hour, self.last_hour)
                ));
                lines.push(match per_day {
                    Some(per_day) => format!(
                        "last 24h:  {}/{per_day} emails, {} remaining",
                        self.last_day,
                        remaining(per_day, self.last_day)
                    ),
                    None => format!(
                        "last 24h:  {} (no daily limit)",
                        plural(self.last_day, "email")
                    ),
                });
                if let Some(free) = self.next_free {
                    lines.push(format!(
                        "limit reached; next slot frees at {} (in {})",
                        format_time_ms(free),
                        format_wait(free - now)
                    ));
                }
            }
            None => {
                lines.push(format!("last hour: {}", plural(self.last_hour, "email")));
                lines.push(format!("last 24h:  {}", plural(self.last_day, "email")));
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    #[test]
    fn since_is_checked() {
        assert_eq!(parse_since("1h").ok(), Some(Duration::from_secs(3600)));
        assert_eq!(parse_since("90m").ok(), Some(Duration::from_secs(5400)));
        let err = |t: &str| {
            parse_since(t)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err("5x").starts_with("--since: invalid duration \"5x\""));
        assert_eq!(err("0s"), "--since: must be longer than 0s");
    }

    #[test]
    fn fresh_account() {
        let report = UsageReport::new(&[], NOW, Some((1500, None)));
        assert_eq!(
            report.lines(NOW),
            [
                "last hour: 0/1500 emails, 1500 remaining",
                "last 24h:  0 emails (no daily limit)"
            ]
        );
    }

    #[test]
    fn at_the_hourly_limit_shows_when_the_oldest_leaves() {
        // Ten emails, the oldest 47m30s ago: the slot frees in 12m30s.
        let oldest = NOW - (47 * 60 + 30) * 1000;
        let sent: Vec<i64> = (0..10).map(|i| oldest + i * 1000).collect();
        let report = UsageReport::new(&sent, NOW, Some((10, None)));
        assert_eq!(report.next_free, Some(oldest + HOUR_MS));
        let lines = report.lines(NOW);
        assert_eq!(lines[0], "last hour: 10/10 emails, 0 remaining");
        assert!(
            lines[2].starts_with("limit reached; next slot frees at "),
            "{}",
            lines[2]
        );
        assert!(lines[2].ends_with("Z (in 12m30s)"), "{}", lines[2]);

        // Under the limit: no "next slot" line.
        let report = UsageReport::new(&sent[1..], NOW, Some((10, None)));
        assert_eq!(report.next_free, None);
        assert_eq!(report.lines(NOW).len(), 2);
    }

    #[test]
    fn old_emails_only_count_for_the_day() {
        let sent = [
            NOW - 5 * HOUR_MS,
            NOW - HOUR_MS,
            NOW - HOUR_MS + 1,
            NOW - 10,
        ];
        let report = UsageReport::new(&sent, NOW, Some((100, Some(1000))));
        assert_eq!((report.last_hour, report.last_day), (2, 4));
        assert_eq!(
            report.lines(NOW),
            [
                "last hour: 2/100 emails, 98 remaining",
                "last 24h:  4/1000 emails, 996 remaining"
            ]
        );
    }

    #[test]
    fn the_daily_limit_can_be_the_later_one() {
        // Daily limit 3 reached by emails 10 hours ago; hourly has room.
        let sent = [NOW - 10 * HOUR_MS, NOW - 10 * HOUR_MS + 5, NOW - 1000];
        let report = UsageReport::new(&sent, NOW, Some((3, Some(3))));
        assert_eq!(report.next_free, Some(NOW - 10 * HOUR_MS + DAY_MS));
        assert!(report.lines(NOW)[1].contains("3/3 emails, 0 remaining"));
    }

    #[test]
    fn undefined_plan_shows_counts_only() {
        let report = UsageReport::new(&[NOW - 1], NOW, None);
        assert_eq!(
            report.lines(NOW),
            ["last hour: 1 email", "last 24h:  1 email"]
        );
    }
}
