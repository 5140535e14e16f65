//! Sending-plan enforcement (issue 5): one accepted recipient of an
//! authenticated account is one email, counted in exact rolling windows of
//! 60 minutes and 24 hours.
//!
//! Algorithm: a sliding log. Per account we keep the millisecond timestamps
//! of every email counted in the last 24 hours, ascending, in memory. An email
//! at time `t` counts at time `now` iff `t > now - window` (see
//! [`crate::usage`]). A RCPT is granted iff fewer than `limit` timestamps are
//! in the window, and the grant appends `now` at once (a reservation), so
//! concurrent sessions can never overshoot. Precision is one millisecond: at
//! no moment are more than `limit` emails accepted within any window, and no
//! recipient under the limit is refused. Reservations of a transaction that
//! ends without a queued message are removed again; those of a queued message
//! are written to `usage_events` in the same SQLite transaction as the queue
//! rows (no extra fsync) and reloaded at startup, so counts survive restarts.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use portcullis_proto::{QuotaOutcome, Reply};
use portcullis_store::Store;

use crate::config::{Config, Plan};
use crate::directory::Directory;
use crate::throttle::human_duration;
use crate::usage::{next_free_ms, window_count};

pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// What the driver needs after a grant: the timestamp to persist or release,
/// and the plan's per-message limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub at_ms: i64,
    pub max_recipients: Option<usize>,
    pub max_message_size: Option<u64>,
}

pub struct QuotaService {
    store: Arc<dyn Store>,
    /// Plans come from the account, read through the cache (issue 5: the
    /// check sits on every RCPT and must not cost a store round trip).
    directory: Arc<Directory>,
    config: Arc<Config>,
    windows: Mutex<HashMap<String, VecDeque<i64>>>,
    /// Per account: when the last "90% of the hourly limit" warning was logged.
    warned_at: Mutex<HashMap<String, i64>>,
}

pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl QuotaService {
    /// Loads the last 24 hours of usage from the store.
    pub async fn load(
        store: Arc<dyn Store>,
        config: Arc<Config>,
    ) -> Result<QuotaService, portcullis_store::StoreError> {
        let mut windows: HashMap<String, VecDeque<i64>> = HashMap::new();
        for (account, at) in store.usage_all_since(now_ms() - DAY_MS).await? {
            windows.entry(account).or_default().push_back(at);
        }
        for w in windows.values_mut() {
            w.make_contiguous().sort_unstable();
        }
        Ok(QuotaService {
            directory: Arc::new(Directory::new(Arc::clone(&store))),
            store,
            config,
            windows: Mutex::new(windows),
            warned_at: Mutex::new(HashMap::new()),
        })
    }

    /// Shares `directory` (one cache per process) instead of its own.
    pub fn with_directory(mut self, directory: Arc<Directory>) -> QuotaService {
        self.directory = directory;
        self
    }

    /// The plan of `user` now (plan changes apply at once), with its name.
    pub async fn plan_of(&self, user: &str) -> Result<(String, Plan), QuotaOutcome> {
        let account = match self.directory.account(user).await {
            Ok(Some(a)) => a,
            Ok(None) => return Err(QuotaOutcome::TemporaryFailure),
            Err(e) => {
                tracing::error!(error = %e, "plan lookup failed");
                return Err(QuotaOutcome::TemporaryFailure);
            }
        };
        match self.config.plan(&account.plan) {
            Some(plan) => Ok((account.plan, plan.clone())),
            None => {
                tracing::error!(user, plan = %account.plan, "account is on a plan that is not defined in the configuration");
                Err(QuotaOutcome::TemporaryFailure)
            }
        }
    }

    /// Counts one email for `user` at `now` if the plan allows it.
    pub async fn reserve(&self, user: &str, now: i64) -> (QuotaOutcome, Option<Grant>) {
        self.reserve_cached(user, now, &mut None).await
    }

    /// Like [`reserve`](Self::reserve), reusing the plan looked up earlier in
    /// the same transaction: a plan change applies from the next transaction
    /// (of every open session), and a message with many recipients costs one
    /// plan lookup instead of one per RCPT.
    pub async fn reserve_cached(
        &self,
        user: &str,
        now: i64,
        cache: &mut Option<(String, Plan)>,
    ) -> (QuotaOutcome, Option<Grant>) {
        if !self.config.usage.enforce {
            return (QuotaOutcome::Granted, None);
        }
        if cache.is_none() {
            match self.plan_of(user).await {
                Ok(p) => *cache = Some(p),
                Err(outcome) => return (outcome, None),
            }
        }
        let Some((name, plan)) = cache.as_ref() else {
            return (QuotaOutcome::TemporaryFailure, None);
        };
        let Ok(mut windows) = self.windows.lock() else {
            return (QuotaOutcome::TemporaryFailure, None);
        };
        if !windows.contains_key(user) {
            windows.insert(user.to_owned(), VecDeque::new());
        }
        let Some(window) = windows.get_mut(user) else {
            return (QuotaOutcome::TemporaryFailure, None);
        };
        while window.front().is_some_and(|t| *t <= now - DAY_MS) {
            window.pop_front();
        }
        let stamps = window.make_contiguous();
        let limits = [
            (Some(plan.emails_per_hour), HOUR_MS, "hour"),
            (plan.emails_per_day, DAY_MS, "day"),
        ];
        for (limit, span, period) in limits {
            let Some(limit) = limit else { continue };
            if window_count(stamps, now, span) >= limit as usize {
                let free = next_free_ms(stamps, now, span, limit).unwrap_or(now + span);
                let wait = u64::try_from(free - now).unwrap_or(0);
                tracing::info!(user, plan = %name, limit, period, "sending limit reached");
                return (
                    QuotaOutcome::Refused(Reply::sending_limit(
                        name,
                        limit,
                        period,
                        &human_duration(wait),
                    )),
                    None,
                );
            }
        }
        // Keep the log sorted even if the clock stepped back.
        let pos = window.partition_point(|t| *t <= now);
        window.insert(pos, now);
        let hourly = window_count(window.make_contiguous(), now, HOUR_MS);
        drop(windows);
        self.maybe_warn(user, name, plan, hourly, now);
        (
            QuotaOutcome::Granted,
            Some(Grant {
                at_ms: now,
                max_recipients: plan.max_recipients,
                max_message_size: plan.max_message_size,
            }),
        )
    }

    /// Gives back reservations of a transaction that queued nothing.
    pub fn release(&self, user: &str, stamps: &[i64]) {
        let Ok(mut windows) = self.windows.lock() else {
            return;
        };
        if let Some(window) = windows.get_mut(user) {
            for t in stamps {
                if let Some(i) = window.iter().rposition(|x| x == t) {
                    window.remove(i);
                }
            }
        }
    }

    /// Emails counted for `user` in the last hour (as enforced).
    pub fn hourly_count(&self, user: &str, now: i64) -> usize {
        let Ok(mut windows) = self.windows.lock() else {
            return 0;
        };
        windows
            .get_mut(user)
            .map_or(0, |w| window_count(w.make_contiguous(), now, HOUR_MS))
    }

    fn maybe_warn(&self, user: &str, plan_name: &str, plan: &Plan, hourly: usize, now: i64) {
        let percent = u64::from(self.config.usage.warn_percent);
        let threshold = (u64::from(plan.emails_per_hour) * percent).div_ceil(100);
        if (hourly as u64) < threshold {
            return;
        }
        let Ok(mut warned) = self.warned_at.lock() else {
            return;
        };
        let last = warned.get(user).copied();
        if last.is_some_and(|t| t > now - HOUR_MS) {
            return;
        }
        warned.insert(user.to_owned(), now);
        tracing::warn!(
            target: "portcullis::usage",
            event = "usage_warning",
            user,
            plan = plan_name,
            sent_last_hour = hourly,
            limit = plan.emails_per_hour,
            percent,
            "account crossed {percent}% of its hourly sending limit"
        );
    }

    /// Drops usage rows older than a day (called periodically).
    pub async fn prune(&self) {
        let cutoff = now_ms() - DAY_MS - HOUR_MS;
        match self.store.prune_usage(cutoff).await {
            Ok(n) if n > 0 => tracing::debug!(rows = n, "pruned old usage rows"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "usage pruning failed"),
        }
    }
}
