//! Rolling-window arithmetic for sending limits: pure functions over the
//! millisecond timestamps of counted emails, shared by enforcement (the
//! server's quota check on every RCPT) and reporting (`portcullis account
//! usage`), so both always agree on the numbers.
//!
//! # The window
//!
//! An email counted at time `t` (Unix milliseconds) is **in the window of
//! length `window_ms` at time `now_ms` iff `t > now_ms - window_ms`**. So an
//! email sent at `t` stops counting at exactly `t + window_ms` (at that
//! instant `t > now - window` is false). Timestamps later than `now_ms` (the
//! clock stepped back) still count: this errs on the side of the limit.
//!
//! Precision is one millisecond; there is no bucketing or approximation, so
//! at no moment is the count in any window more than what was recorded, and
//! a limit of `n` admits exactly `n` emails per window.
//!
//! Every function takes the timestamps **sorted ascending** (as the store
//! returns them; duplicates allowed) and runs in `O(log n)` by binary search.
//! Unsorted input gives unspecified (but never panicking) results.

/// One hour in milliseconds: the window of `emails_per_hour`.
pub const HOUR_MS: i64 = 3_600_000;
/// 24 hours in milliseconds: the window of `emails_per_day`.
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// Index of the first timestamp inside the window at `now_ms` (everything
/// before it has left the window).
fn window_start(timestamps: &[i64], now_ms: i64, window_ms: i64) -> usize {
    let cutoff = now_ms.saturating_sub(window_ms);
    timestamps.partition_point(|&t| t <= cutoff)
}

/// How many of `timestamps` (ascending) count in the window of `window_ms`
/// at `now_ms`, i.e. how many satisfy `t > now_ms - window_ms`.
///
/// ```
/// use portcullis_server::usage::{window_count, HOUR_MS};
/// let sent = [1_000, 2_000, 3_000];
/// assert_eq!(window_count(&sent, 3_000, HOUR_MS), 3);
/// // The email at 1_000 leaves the window at exactly 1_000 + HOUR_MS.
/// assert_eq!(window_count(&sent, 1_000 + HOUR_MS, HOUR_MS), 2);
/// ```
pub fn window_count(timestamps: &[i64], now_ms: i64, window_ms: i64) -> usize {
    timestamps.len() - window_start(timestamps, now_ms, window_ms)
}

/// The earliest time at or after `now_ms` at which fewer than `limit` of
/// `timestamps` (ascending) count in the window, i.e. when one more email may
/// be sent, assuming nothing else is sent meanwhile.
///
/// - `Some(now_ms)` if the count is already below `limit`;
/// - otherwise `Some(t + window_ms)` where `t` is the timestamp whose
///   departure brings the count below `limit`: with `c` in the window, the
///   `(c - limit + 1)`-th oldest of them (the oldest one when exactly at the
///   limit);
/// - `None` if `limit` is 0 (nothing may ever be sent).
///
/// The result saturates at `i64::MAX` instead of overflowing.
///
/// ```
/// use portcullis_server::usage::{next_free_ms, HOUR_MS};
/// let sent = [1_000, 2_000, 3_000];
/// // Under the limit: free now.
/// assert_eq!(next_free_ms(&sent, 5_000, HOUR_MS, 4), Some(5_000));
/// // Exactly at the limit: free when the oldest leaves the window.
/// assert_eq!(next_free_ms(&sent, 5_000, HOUR_MS, 3), Some(1_000 + HOUR_MS));
/// // Over the limit (e.g. after a plan change): two must leave first.
/// assert_eq!(next_free_ms(&sent, 5_000, HOUR_MS, 2), Some(2_000 + HOUR_MS));
/// ```
pub fn next_free_ms(timestamps: &[i64], now_ms: i64, window_ms: i64, limit: u32) -> Option<i64> {
    if limit == 0 {
        return None;
    }
    let start = window_start(timestamps, now_ms, window_ms);
    let in_window = &timestamps[start..];
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if in_window.len() < limit {
        return Some(now_ms);
    }
    // Removing the oldest `len - limit + 1` leaves `limit - 1` < limit.
    let leaving = in_window.get(in_window.len() - limit)?;
    Some(leaving.saturating_add(window_ms).max(now_ms))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;

    #[test]
    fn empty_log_counts_nothing_and_is_free_now() {
        assert_eq!(window_count(&[], T0, HOUR_MS), 0);
        assert_eq!(next_free_ms(&[], T0, HOUR_MS, 1), Some(T0));
        assert_eq!(next_free_ms(&[], T0, HOUR_MS, 0), None);
    }

    #[test]
    fn window_boundary_is_exclusive_at_t_plus_window() {
        let sent = [T0];
        assert_eq!(window_count(&sent, T0, HOUR_MS), 1);
        assert_eq!(window_count(&sent, T0 + HOUR_MS - 1, HOUR_MS), 1);
        // At exactly t + window the email no longer counts.
        assert_eq!(window_count(&sent, T0 + HOUR_MS, HOUR_MS), 0);
        assert_eq!(window_count(&sent, T0 + HOUR_MS + 1, HOUR_MS), 0);
    }

    #[test]
    fn future_timestamps_still_count() {
        // The clock stepped back: emails "from the future" are kept in the count.
        let sent = [T0 + 5_000, T0 + 6_000];
        assert_eq!(window_count(&sent, T0, HOUR_MS), 2);
        assert_eq!(
            next_free_ms(&sent, T0, HOUR_MS, 2),
            Some(T0 + 5_000 + HOUR_MS)
        );
    }

    #[test]
    fn exactly_at_the_limit() {
        // Ten emails one minute apart, limit 10.
        let sent: Vec<i64> = (0..10).map(|i| T0 + i * 60_000).collect();
        let now = T0 + 10 * 60_000;
        assert_eq!(window_count(&sent, now, HOUR_MS), 10);
        // At the limit: the first slot frees when the oldest leaves.
        assert_eq!(next_free_ms(&sent, now, HOUR_MS, 10), Some(T0 + HOUR_MS));
        // One below the limit is not refused.
        assert_eq!(window_count(&sent[..9], now, HOUR_MS), 9);
        assert_eq!(next_free_ms(&sent[..9], now, HOUR_MS, 10), Some(now));
    }

    #[test]
    fn first_slot_frees_at_exactly_t_plus_window() {
        let sent: Vec<i64> = (0..10).map(|i| T0 + i * 60_000).collect();
        let free = next_free_ms(&sent, T0 + 30 * 60_000, HOUR_MS, 10).unwrap();
        assert_eq!(free, T0 + HOUR_MS);
        // One millisecond before, still at the limit; at `free`, below it.
        assert_eq!(window_count(&sent, free - 1, HOUR_MS), 10);
        assert_eq!(window_count(&sent, free, HOUR_MS), 9);
        assert_eq!(next_free_ms(&sent, free, HOUR_MS, 10), Some(free));
        // After sending again at `free`, the next slot is the second-oldest's.
        let mut after = sent[1..].to_vec();
        after.push(free);
        assert_eq!(
            next_free_ms(&after, free, HOUR_MS, 10),
            Some(T0 + 60_000 + HOUR_MS)
        );
    }

    #[test]
    fn over_the_limit_waits_for_enough_departures() {
        // A plan lowered from 10 to 4 with 10 in the window: 7 must leave.
        let sent: Vec<i64> = (0..10).map(|i| T0 + i * 1_000).collect();
        let now = T0 + 20_000;
        let free = next_free_ms(&sent, now, HOUR_MS, 4).unwrap();
        assert_eq!(free, sent[6] + HOUR_MS);
        assert_eq!(window_count(&sent, free - 1, HOUR_MS), 4);
        assert_eq!(window_count(&sent, free, HOUR_MS), 3);
    }

    #[test]
    fn old_entries_are_ignored() {
        // Entries that already left the window do not affect either function.
        let sent = [T0 - 2 * HOUR_MS, T0 - HOUR_MS, T0 - 1, T0];
        assert_eq!(window_count(&sent, T0, HOUR_MS), 2);
        assert_eq!(next_free_ms(&sent, T0, HOUR_MS, 2), Some(T0 - 1 + HOUR_MS));
        assert_eq!(window_count(&sent, T0, DAY_MS), 4);
    }

    #[test]
    fn duplicates_count_separately() {
        // Several recipients of one message share one timestamp.
        let sent = [T0, T0, T0];
        assert_eq!(window_count(&sent, T0, HOUR_MS), 3);
        assert_eq!(next_free_ms(&sent, T0, HOUR_MS, 3), Some(T0 + HOUR_MS));
        assert_eq!(next_free_ms(&sent, T0, HOUR_MS, 1), Some(T0 + HOUR_MS));
        assert_eq!(window_count(&sent, T0 + HOUR_MS, HOUR_MS), 0);
    }

    #[test]
    fn restart_in_the_middle_of_a_window() {
        // What was persisted before a restart is reloaded and counted the same.
        let before: Vec<i64> = (0..5).map(|i| T0 + i * 60_000).collect();
        let reloaded = before.clone();
        let now = T0 + 30 * 60_000;
        assert_eq!(
            window_count(&before, now, HOUR_MS),
            window_count(&reloaded, now, HOUR_MS)
        );
        assert_eq!(next_free_ms(&reloaded, now, HOUR_MS, 5), Some(T0 + HOUR_MS));
    }

    #[test]
    fn extremes_do_not_overflow() {
        assert_eq!(window_count(&[i64::MIN + 1, 0], i64::MIN, HOUR_MS), 2);
        assert_eq!(window_count(&[i64::MAX], i64::MAX, HOUR_MS), 1);
        assert_eq!(
            next_free_ms(&[i64::MAX], i64::MAX, HOUR_MS, 1),
            Some(i64::MAX)
        );
        assert_eq!(next_free_ms(&[T0], T0, HOUR_MS, u32::MAX), Some(T0));
    }
}
