//! Sending plans and usage reporting through the real `portcullis` binary:
//! `plan list`, `account add --plan`, `account set-plan`, `account usage`,
//! `usage top`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{Run, run};
use portcullis_store::{NewMessage, SqliteStore, Store};
use tempfile::TempDir;

const HOUR_MS: i64 = 3_600_000;

/// Writes a config file in `dir` and returns the `--config` arguments for it.
fn config_file(dir: &TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn run_with(dir: &TempDir, config: &Path, args: &[&str]) -> Run {
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    run(dir, &all)
}

fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap()
}

/// Records usage the way the server does: one queued message per call with
/// one usage event per timestamp, for `account`.
fn record_usage(dir: &TempDir, account: &str, stamps: &[i64]) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = SqliteStore::open(&dir.path().join("portcullis.db"))
            .await
            .unwrap();
        let id = format!("test-{account}-{}-{}", stamps[0], stamps.len());
        store
            .enqueue(&NewMessage {
                id: id.clone(),
                sender: account.to_owned(),
                recipients: (0..stamps.len())
                    .map(|i| format!("r{i}@example.net"))
                    .collect(),
                size: 100,
                spool_path: format!("spool/{id}"),
                auth_user: Some(account.to_owned()),
                client_ip: "192.0.2.1".to_owned(),
                received_at: stamps.last().copied().unwrap_or(0) / 1000,
                usage_ms: stamps.to_vec(),
            })
            .await
            .unwrap();
        store.close().await;
    });
}

/// The row of `plan list` whose first cell is `name`, split on whitespace.
fn plan_row(stdout: &str, name: &str) -> Vec<String> {
    stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no {name} row in\n{stdout}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[test]
fn plan_list_shows_shipped_plans() {
    let dir = TempDir::new().unwrap();
    let out = run(&dir, &["plan", "list"]).ok();
    let header = out.stdout.lines().next().unwrap();
    for column in [
        "PLAN",
        "EMAILS/HOUR",
        "EMAILS/DAY",
        "MAX RECIPIENTS",
        "MAX MESSAGE SIZE",
        "ACCOUNTS",
    ] {
        assert!(header.contains(column), "{header}");
    }
    assert_eq!(
        plan_row(&out.stdout, "trial"),
        ["trial", "1000", "-", "-", "-", "0"]
    );
    assert_eq!(
        plan_row(&out.stdout, "standard"),
        ["standard", "(default)", "1500", "-", "-", "-", "0"]
    );
    assert_eq!(
        plan_row(&out.stdout, "premium"),
        ["premium", "3000", "-", "-", "-", "0"]
    );
    assert_eq!(
        plan_row(&out.stdout, "professional"),
        ["professional", "5000", "-", "-", "-", "0"]
    );
    assert_eq!(out.stdout.lines().count(), 5, "{}", out.stdout);
}

#[test]
fn plan_list_shows_config_plans_and_account_counts() {
    let dir = TempDir::new().unwrap();
    let config = config_file(
        &dir,
        "default_plan = \"gold\"\n\
         [plans.gold]\nemails_per_hour = 10\nemails_per_day = 100\nmax_recipients = 5\n\
         max_message_size = \"10MiB\"\n\
         [plans.trial]\nemails_per_hour = 20\n",
    );
    run_with(&dir, &config, &["account", "add", "a@example.com"]).ok();
    run_with(&dir, &config, &["account", "add", "b@example.com"]).ok();
    run_with(
        &dir,
        &config,
        &["account", "add", "c@example.com", "--plan", "trial"],
    )
    .ok();
    let out = run_with(&dir, &config, &["plan", "list"]).ok();
    assert_eq!(
        plan_row(&out.stdout, "gold"),
        ["gold", "(default)", "10", "100", "5", "10MiB", "2"]
    );
    assert_eq!(
        plan_row(&out.stdout, "trial"),
        ["trial", "20", "-", "-", "-", "1"]
    );
    assert_eq!(
        plan_row(&out.stdout, "standard"),
        ["standard", "1500", "-", "-", "-", "0"]
    );
    assert!(
        out.stderr.is_empty() || !out.stderr.contains("warning"),
        "{}",
        out.stderr
    );

    // Without the config file, gold is unknown: listed as a warning.
    let out = run(&dir, &["plan", "list"]).ok();
    assert!(!out.stdout.contains("gold"), "{}", out.stdout);
    assert!(
        out.stderr
            .contains("warning: plan \"gold\" is not defined in the configuration"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("2 accounts on it"), "{}", out.stderr);
}

#[test]
fn account_add_uses_the_default_plan_and_checks_plan_names() {
    let dir = TempDir::new().unwrap();
    let out = run(&dir, &["account", "add", "a@example.com"]).ok();
    assert!(
        out.stdout
            .contains("Created account a@example.com (plan standard)"),
        "{}",
        out.stdout
    );
    run(&dir, &["account", "add", "b@example.com", "--plan", "gold"]).fails_naming(
        "unknown plan \"gold\" (known plans: premium, professional, standard, trial)",
    );
    // Nothing was created.
    run(&dir, &["account", "show", "b@example.com"]).fails_naming("b@example.com not found");

    let config = config_file(&dir, "default_plan = \"trial\"\n");
    let out = run_with(&dir, &config, &["account", "add", "c@example.com"]).ok();
    assert!(out.stdout.contains("(plan trial)"), "{}", out.stdout);
    let out = run(
        &dir,
        &["account", "add", "d@example.com", "--plan", "premium"],
    )
    .ok();
    assert!(out.stdout.contains("(plan premium)"), "{}", out.stdout);
}

#[test]
fn set_plan_applies_and_is_shown() {
    let dir = TempDir::new().unwrap();
    run(&dir, &["account", "add", "a@example.com"]).ok();
    let out = run(&dir, &["account", "set-plan", "A@Example.com", "premium"]).ok();
    assert_eq!(
        out.stdout.trim(),
        "Plan of a@example.com is now premium (3000 emails/hour)"
    );
    let show = run(&dir, &["account", "show", "a@example.com"]).ok();
    assert!(
        show.stdout.contains("plan:    premium (3000 emails/hour)"),
        "{}",
        show.stdout
    );
    let list = run(&dir, &["account", "list"]).ok();
    assert!(list.stdout.contains("premium"), "{}", list.stdout);

    run(&dir, &["account", "set-plan", "a@example.com", "gold"]).fails_naming(
        "unknown plan \"gold\" (known plans: premium, professional, standard, trial)",
    );
    run(
        &dir,
        &["account", "set-plan", "nobody@example.com", "trial"],
    )
    .fails_naming("account nobody@example.com not found");
    assert_eq!(run(&dir, &["account", "set-plan", "a@example.com"]).code, 2);

    // A plan from the config file; shown with a warning once it is gone.
    let config = config_file(&dir, "[plans.gold]\nemails_per_hour = 10\n");
    let out = run_with(
        &dir,
        &config,
        &["account", "set-plan", "a@example.com", "gold"],
    )
    .ok();
    assert!(
        out.stdout.contains("is now gold (10 emails/hour)"),
        "{}",
        out.stdout
    );
    let show = run_with(&dir, &config, &["account", "show", "a@example.com"]).ok();
    assert!(
        show.stdout.contains("gold (10 emails/hour)"),
        "{}",
        show.stdout
    );
    let show = run(&dir, &["account", "show", "a@example.com"]).ok();
    assert!(
        show.stdout
            .contains("plan:    gold (not defined in the configuration)"),
        "{}",
        show.stdout
    );
    assert!(
        show.stderr
            .contains("plan \"gold\" is not defined in the configuration"),
        "{}",
        show.stderr
    );
}

#[test]
fn account_usage_on_a_fresh_account() {
    let dir = TempDir::new().unwrap();
    run(&dir, &["account", "add", "a@example.com"]).ok();
    let out = run(&dir, &["account", "usage", "a@example.com"]).ok();
    assert!(
        out.stdout
            .contains("last hour: 0/1500 emails, 1500 remaining"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("last 24h:  0 emails (no daily limit)"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("next slot"), "{}", out.stdout);

    run(&dir, &["account", "usage", "nobody@example.com"])
        .fails_naming("account nobody@example.com not found");
}

#[test]
fn account_usage_counts_recorded_emails_and_shows_the_next_slot() {
    let dir = TempDir::new().unwrap();
    let config = config_file(
        &dir,
        "[plans.tiny]\nemails_per_hour = 10\nemails_per_day = 15\n",
    );
    run_with(
        &dir,
        &config,
        &["account", "add", "a@example.com", "--plan", "tiny"],
    )
    .ok();
    let now = now_ms();
    // Two hours ago (day only), then ten in the last hour, the oldest 47.5 minutes ago.
    record_usage(
        &dir,
        "a@example.com",
        &[now - 2 * HOUR_MS, now - 2 * HOUR_MS + 1],
    );
    let oldest = now - (47 * 60 + 30) * 1000;
    let recent: Vec<i64> = (0..10).map(|i| oldest + i * 1000).collect();
    record_usage(&dir, "a@example.com", &recent);

    let out = run_with(&dir, &config, &["account", "usage", "a@example.com"]).ok();
    assert!(
        out.stdout
            .contains("plan:      tiny (10 emails/hour, 15 emails/day)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("last hour: 10/10 emails, 0 remaining"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("last 24h:  12/15 emails, 3 remaining"),
        "{}",
        out.stdout
    );
    let slot = out
        .stdout
        .lines()
        .find(|l| l.starts_with("limit reached; next slot frees at "))
        .unwrap_or_else(|| panic!("no next slot line in\n{}", out.stdout));
    // The oldest leaves 12m30s from the recording; a little time has passed since.
    let wait = slot.rsplit("(in ").next().unwrap().trim_end_matches(')');
    assert!(wait.starts_with("12m"), "{slot}");
    let free = time::OffsetDateTime::from_unix_timestamp((oldest + HOUR_MS + 999) / 1000).unwrap();
    let expected = free
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    assert!(slot.contains(&expected), "{slot} should name {expected}");

    // On a larger plan the same usage is under the limit.
    run_with(
        &dir,
        &config,
        &["account", "set-plan", "a@example.com", "standard"],
    )
    .ok();
    let out = run_with(&dir, &config, &["account", "usage", "a@example.com"]).ok();
    assert!(
        out.stdout
            .contains("last hour: 10/1500 emails, 1490 remaining"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("last 24h:  12 emails (no daily limit)"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("next slot"), "{}", out.stdout);
}

#[test]
fn usage_top_with_no_data() {
    let dir = TempDir::new().unwrap();
    let out = run(&dir, &["usage", "top"]).ok();
    assert_eq!(out.stdout.trim(), "No emails sent in the last 1h");
    let out = run(&dir, &["usage", "top", "--since", "24h"]).ok();
    assert_eq!(out.stdout.trim(), "No emails sent in the last 24h");
    run(&dir, &["usage", "top", "--since", "soon"]).fails_naming("--since");
    run(&dir, &["usage", "top", "--since", "0s"]).fails_naming("--since");
    assert_eq!(run(&dir, &["usage", "top", "--limit", "0"]).code, 2);
}

#[test]
fn usage_top_ranks_senders() {
    let dir = TempDir::new().unwrap();
    run(
        &dir,
        &["account", "add", "light@example.com", "--plan", "trial"],
    )
    .ok();
    run(
        &dir,
        &["account", "add", "heavy@example.com", "--plan", "premium"],
    )
    .ok();
    let now = now_ms();
    record_usage(&dir, "light@example.com", &[now - 1000, now - 500]);
    record_usage(
        &dir,
        "heavy@example.com",
        &[now - 3000, now - 2000, now - 1000],
    );
    // Sent before the window: only counted with a longer --since.
    record_usage(
        &dir,
        "light@example.com",
        &[now - 3 * HOUR_MS, now - 3 * HOUR_MS, now - 3 * HOUR_MS + 1],
    );

    let out = run(&dir, &["usage", "top"]).ok();
    let lines: Vec<Vec<&str>> = out
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        ["Emails", "sent", "in", "the", "last", "1h:"],
        "{}",
        out.stdout
    );
    assert_eq!(lines[1], ["ACCOUNT", "EMAILS", "PLAN", "EMAILS/HOUR"]);
    assert_eq!(lines[2], ["heavy@example.com", "3", "premium", "3000"]);
    assert_eq!(lines[3], ["light@example.com", "2", "trial", "1000"]);
    assert_eq!(lines.len(), 4, "{}", out.stdout);

    let out = run(&dir, &["usage", "top", "--since", "4h", "--limit", "1"]).ok();
    assert!(out.stdout.contains("last 4h"), "{}", out.stdout);
    assert!(
        out.stdout.contains("light@example.com  5"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("heavy@example.com"), "{}", out.stdout);
    assert!(
        out.stdout.contains("(1 more sender; use --limit"),
        "{}",
        out.stdout
    );
}
