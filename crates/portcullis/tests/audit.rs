//! `portcullis audit` against the real binary, with AUTH events written
//! through the store API the way the server writes them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{run, run_stdin};
use portcullis_store::{AuthEvent, SqliteStore, Store};
use tempfile::TempDir;

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;

fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since_epoch.as_millis()).unwrap()
}

struct Ev {
    ago_ms: i64,
    user: &'static str,
    ip: &'static str,
    success: bool,
    reason: &'static str,
    credential: Option<&'static str>,
}

fn ev(ago_ms: i64, user: &'static str, ip: &'static str, reason: &'static str) -> Ev {
    Ev {
        ago_ms,
        user,
        ip,
        success: reason == "ok",
        reason,
        credential: (reason == "ok").then_some("password"),
    }
}

fn record(dir: &TempDir, events: &[Ev]) {
    let now = now_ms();
    let events: Vec<AuthEvent> = events
        .iter()
        .enumerate()
        .map(|(i, e)| AuthEvent {
            at_ms: now - e.ago_ms,
            session_id: format!("s{i:04}"),
            listener: "submission".to_owned(),
            client_ip: e.ip.to_owned(),
            tls: Some("TLSv1.3".to_owned()),
            user: e.user.to_owned(),
            mechanism: "PLAIN".to_owned(),
            credential: e.credential.map(str::to_owned),
            success: e.success,
            reason: e.reason.to_owned(),
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = SqliteStore::open(&dir.path().join("portcullis.db"))
            .await
            .unwrap();
        store.record_auth_events(&events).await.unwrap();
        store.close().await;
    });
}

/// Accounts and a day of AUTH events:
/// - alice: usual IP 192.0.2.1 (2 days ago), 2 wrong passwords from 192.0.2.7,
///   one login from outside her allowlist, then her app password "phone"
///   from 3 new IPs within an hour (new IP + leak signal);
/// - bob (2FA): main password refused;
/// - 12 unknown users from 192.0.2.66 within 2 minutes (burst), then banned;
/// - carol: a wrong password 3 hours ago;
/// - dave: nothing.
fn scenario() -> TempDir {
    let dir = TempDir::new().unwrap();
    for (address, password) in [
        ("alice@example.com", "tangerine-oboe-glacier-71"),
        ("bob@example.com", "marmalade-kiosk-fjord-38"),
        ("carol@example.com", "lantern-quiver-basalt-55"),
        ("dave@example.com", "pelican-saffron-tundra-29"),
        ("erin@example.com", "walnut-cobalt-meadow-83"),
    ] {
        run_stdin(
            &dir,
            &["account", "add", address, "--password-stdin"],
            &format!("{password}\n"),
        )
        .ok();
    }
    run(
        &dir,
        &["account", "allow-ip", "alice@example.com", "192.0.2.0/24"],
    )
    .ok();
    run(&dir, &["account", "2fa", "enable", "bob@example.com"]).ok();
    run(
        &dir,
        &["ban", "add", "192.0.2.66", "--reason", "auth failures"],
    )
    .ok();

    let mut events = vec![
        ev(48 * HOUR, "alice@example.com", "192.0.2.1", "ok"),
        ev(3 * HOUR, "carol@example.com", "192.0.2.99", "bad_password"),
        ev(
            50 * MINUTE,
            "alice@example.com",
            "192.0.2.7",
            "bad_password",
        ),
        ev(
            49 * MINUTE,
            "Alice@Example.com",
            "192.0.2.7",
            "bad_password",
        ),
        ev(
            40 * MINUTE,
            "alice@example.com",
            "198.51.100.4",
            "ip_not_allowed",
        ),
    ];
    for (ago, ip) in [
        (30 * MINUTE, "203.0.113.5"),
        (20 * MINUTE, "203.0.113.6"),
        (10 * MINUTE, "203.0.113.7"),
    ] {
        events.push(Ev {
            credential: Some("app:phone"),
            ..ev(ago, "alice@example.com", ip, "ok")
        });
    }
    const BURST_USERS: [&str; 12] = [
        "a1@example.com",
        "a2@example.com",
        "a3@example.com",
        "a4@example.com",
        "a5@example.com",
        "a6@example.com",
        "a7@example.com",
        "a8@example.com",
        "a9@example.com",
        "a10@example.com",
        "a11@example.com",
        "a12@example.com",
    ];
    for (i, user) in (0i64..).zip(BURST_USERS) {
        events.push(ev(
            8 * MINUTE - i * 10_000,
            user,
            "192.0.2.66",
            "unknown_user",
        ));
    }
    events.push(ev(5 * MINUTE, "erin@example.com", "192.0.2.66", "banned"));
    events.push(ev(
        3 * MINUTE,
        "bob@example.com",
        "192.0.2.9",
        "app_password_required",
    ));
    record(&dir, &events);
    dir
}

fn data_rows(stdout: &str) -> Vec<&str> {
    stdout.lines().skip(1).collect()
}

#[test]
fn audit_lists_and_filters_events() {
    let dir = scenario();
    let all = run(&dir, &["audit"]).ok();
    let header = all.stdout.lines().next().unwrap();
    for column in [
        "TIME",
        "RESULT",
        "REASON",
        "USER",
        "IP",
        "MECHANISM",
        "CREDENTIAL",
        "LISTENER",
        "SESSION",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let rows = data_rows(&all.stdout);
    assert_eq!(rows.len(), 22, "{}", all.stdout);
    // Newest first.
    assert!(rows[0].contains("app_password_required"), "{}", rows[0]);
    assert!(rows[21].contains("192.0.2.1 "), "{}", rows[21]);

    let alice = run(&dir, &["audit", "--user", "ALICE@example.com"]).ok();
    let rows = data_rows(&alice.stdout);
    assert_eq!(rows.len(), 7, "{}", alice.stdout);
    assert!(
        rows.iter()
            .all(|r| r.to_lowercase().contains("alice@example.com"))
    );
    assert!(
        rows[0].contains("success") && rows[0].contains("app:phone"),
        "{}",
        rows[0]
    );

    let burst = run(&dir, &["audit", "--ip", "192.0.2.66", "--failed"]).ok();
    assert_eq!(data_rows(&burst.stdout).len(), 13, "{}", burst.stdout);

    let failed = run(&dir, &["audit", "--failed", "--since", "1h"]).ok();
    let rows = data_rows(&failed.stdout);
    assert_eq!(rows.len(), 17, "{}", failed.stdout);
    assert!(
        rows.iter().all(|r| r.contains("failure")),
        "{}",
        failed.stdout
    );
    assert!(
        !failed.stdout.contains("carol"),
        "3 hours ago: {}",
        failed.stdout
    );

    let limited = run(&dir, &["audit", "--limit", "2"]).ok();
    assert_eq!(data_rows(&limited.stdout).len(), 2, "{}", limited.stdout);
    assert!(limited.stderr.contains("--limit"), "{}", limited.stderr);

    let none = run(&dir, &["audit", "--user", "nobody@example.com"]).ok();
    assert!(
        none.stdout.contains("No authentication attempts"),
        "{}",
        none.stdout
    );

    run(&dir, &["audit", "--ip", "192.0.2"]).fails_naming("--ip: invalid IP address");
    run(&dir, &["audit", "--since", "yesterday"]).fails_naming("--since: invalid duration");
}

#[test]
fn audit_json_is_one_object_per_line() {
    let dir = scenario();
    let out = run(&dir, &["audit", "--json", "--user", "bob@example.com"]).ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{}", out.stdout);
    let event: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(event["result"], "failure");
    assert_eq!(event["reason"], "app_password_required");
    assert_eq!(event["user"], "bob@example.com");
    assert_eq!(event["ip"], "192.0.2.9");
    assert_eq!(event["mechanism"], "PLAIN");
    assert_eq!(event["listener"], "submission");
    assert_eq!(event["tls"], "TLSv1.3");
    assert!(event["credential"].is_null());
    assert!(event["at_ms"].is_i64());
    assert!(event["time"].as_str().unwrap().ends_with('Z'));
    assert!(event["session"].as_str().unwrap().starts_with('s'));

    let all = run(&dir, &["audit", "--json"]).ok();
    assert_eq!(all.stdout.lines().count(), 22);
    for line in all.stdout.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
}

#[test]
fn audit_explain_says_why_and_what_to_do() {
    let dir = scenario();
    let alice = run(&dir, &["audit", "explain", "alice@example.com"]).ok();
    let text = alice.stdout;
    assert!(text.contains("3 failed logins, 3 succeeded"), "{text}");
    assert!(text.contains("bad_password: 2 failures"), "{text}");
    assert!(text.contains("The password is wrong"), "{text}");
    assert!(
        text.contains("portcullis account passwd alice@example.com"),
        "{text}"
    );
    assert!(
        text.contains(
            "Logins came from 198.51.100.4 which is outside the allowlist of the account (192.0.2.0/24)"
        ),
        "{text}"
    );
    assert!(
        text.contains("portcullis account allow-ip alice@example.com 198.51.100.4"),
        "{text}"
    );
    assert!(text.contains("app password phone"), "last success: {text}");

    let bob = run(&dir, &["audit", "explain", "bob@example.com"]).ok();
    assert!(
        bob.stdout.contains("This account has 2FA"),
        "{}",
        bob.stdout
    );
    assert!(
        bob.stdout
            .contains("portcullis app-password add bob@example.com"),
        "{}",
        bob.stdout
    );

    let erin = run(&dir, &["audit", "explain", "erin@example.com"]).ok();
    assert!(
        erin.stdout.contains("blocked after repeated failed logins"),
        "{}",
        erin.stdout
    );
    assert!(
        erin.stdout.contains("portcullis ban remove 192.0.2.66"),
        "{}",
        erin.stdout
    );

    let unknown = run(&dir, &["audit", "explain", "a1@example.com"]).ok();
    assert!(
        unknown.stdout.contains("typo in the username"),
        "{}",
        unknown.stdout
    );

    let dave = run(&dir, &["audit", "explain", "dave@example.com"]).ok();
    assert!(dave.stdout.contains("No login attempts"), "{}", dave.stdout);
    assert!(
        dave.stdout.contains("587") && dave.stdout.contains("465"),
        "{}",
        dave.stdout
    );

    // Disabled accounts.
    run(&dir, &["account", "disable", "carol@example.com"]).ok();
    record(
        &dir,
        &[ev(MINUTE, "carol@example.com", "192.0.2.99", "disabled")],
    );
    let carol = run(&dir, &["audit", "explain", "carol@example.com"]).ok();
    assert!(
        carol
            .stdout
            .contains("portcullis account enable carol@example.com"),
        "{}",
        carol.stdout
    );
}

#[test]
fn audit_summary_ranks_failures_and_flags_anomalies() {
    let dir = scenario();
    let out = run(&dir, &["audit", "summary"]).ok();
    let text = out.stdout;
    assert!(
        text.contains("Authentication in the last 24h: 21 attempts, 18 failed, 3 succeeded"),
        "{text}"
    );
    let top_ip = text
        .lines()
        .skip_while(|l| !l.starts_with("Top failing IPs"))
        .nth(2)
        .unwrap();
    assert!(top_ip.trim_start().starts_with("192.0.2.66 "), "{text}");
    assert!(top_ip.contains(" 13 "), "{top_ip}");
    assert!(text.contains("Top failing users:"), "{text}");

    assert!(
        text.contains("new IP: alice@example.com logged in from 203.0.113.5"),
        "{text}"
    );
    assert!(
        text.contains("burst: 13 failed logins from 192.0.2.66 within 10 minutes"),
        "{text}"
    );
    assert!(
        text.contains(
            "possible leak: app password phone of alice@example.com was used from 3 IPs within an hour"
        ),
        "{text}"
    );
    assert!(
        text.contains("portcullis app-password revoke alice@example.com phone"),
        "{text}"
    );

    // A short window: only the newest events; the 2-day-old login still
    // counts as history for "new IP".
    let recent = run(&dir, &["audit", "summary", "--since", "4m"]).ok();
    assert!(
        recent.stdout.contains("1 attempt, 1 failed, 0 succeeded"),
        "{}",
        recent.stdout
    );
    assert!(
        recent.stdout.contains("Anomalies: none"),
        "{}",
        recent.stdout
    );

    run(&dir, &["audit", "summary", "--since", "0s"]).fails_naming("--since");
}
