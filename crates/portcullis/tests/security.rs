//! Account security commands against the real binary: password policy,
//! app passwords, 2FA, IP and sender allowlists, bans, and the fail2ban filter.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{run, run_stdin};
use tempfile::TempDir;

fn dir_with_alice() -> TempDir {
    let dir = TempDir::new().unwrap();
    run(&dir, &["account", "add", "alice@example.com"]).ok();
    dir
}

#[test]
fn password_policy_names_the_rule() {
    let dir = TempDir::new().unwrap();
    let add = |password: &str| {
        run_stdin(
            &dir,
            &["account", "add", "alice@example.com", "--password-stdin"],
            &format!("{password}\n"),
        )
    };
    add("Xk9#q2").fails_naming("password refused: shorter than 12 characters");
    add("password1234").fails_naming("password refused: in the list of common passwords");
    add("zq!Alice-rules-2041")
        .fails_naming("password refused: contains the local part of the address");
    add("aaaaaaaaaaaaaaaa").fails_naming("password refused: too easy to guess");
    // Nothing was created by the refused attempts.
    let list = run(&dir, &["account", "list"]).ok();
    assert!(list.stdout.contains("No accounts"), "{}", list.stdout);

    let out = add("vN7#qL2!xR9@tW4$").ok();
    assert!(!out.stdout.contains("vN7#"), "{}", out.stdout);

    let passwd = |password: &str| {
        run_stdin(
            &dir,
            &["account", "passwd", "alice@example.com", "--password-stdin"],
            &format!("{password}\n"),
        )
    };
    passwd("short").fails_naming("password refused: shorter than 12 characters");
    passwd("qwertyuiop123").fails_naming("password refused");
    passwd("tangerine-oboe-glacier-71").ok();

    // The printed error never contains the refused password.
    let out = passwd("Alice-is-my-secret-77");
    assert!(
        !out.stderr.contains("Alice-is-my-secret-77"),
        "{}",
        out.stderr
    );
}

#[test]
fn policy_minimum_length_comes_from_the_config() {
    let dir = TempDir::new().unwrap();
    let config = dir.path().join("portcullis.toml");
    std::fs::write(&config, "[security]\npassword_min_length = 30\n").unwrap();
    let config = config.to_str().unwrap();
    run_stdin(
        &dir,
        &[
            "--config",
            config,
            "account",
            "add",
            "alice@example.com",
            "--password-stdin",
        ],
        "tangerine-oboe-glacier-71\n",
    )
    .fails_naming("shorter than 30 characters");
    // A generated password is long enough for the configured minimum.
    let out = run(
        &dir,
        &["--config", config, "account", "add", "bob@example.com"],
    )
    .ok();
    let password = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Password for bob@example.com: "))
        .unwrap();
    assert!(password.chars().count() >= 30, "{password}");
}

#[test]
fn app_passwords_are_shown_once_and_listed_without_secret() {
    let dir = dir_with_alice();
    let out = run(
        &dir,
        &[
            "app-password",
            "add",
            "Alice@Example.com",
            "--name",
            "phone",
            "--allow-ip",
            "192.0.2.7/24",
            "--allow-ip",
            "2001:db8::1",
            "--expires",
            "90d",
        ],
    )
    .ok();
    let secret = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("App password: "))
        .unwrap_or_else(|| panic!("no secret in {}", out.stdout))
        .to_owned();
    let chars: String = secret.chars().filter(|c| *c != '-').collect();
    assert!(chars.len() * 5 >= 128, "at least 128 bits: {secret}");
    assert!(out.stdout.contains("not be shown again"), "{}", out.stdout);
    assert!(out.stdout.contains("(in 90d)"), "{}", out.stdout);
    assert!(
        out.stdout.contains("192.0.2.0/24, 2001:db8::1/128"),
        "{}",
        out.stdout
    );
    assert!(!out.stderr.contains(&secret));

    run(
        &dir,
        &[
            "app-password",
            "add",
            "alice@example.com",
            "--name",
            "laptop",
        ],
    )
    .ok();

    let list = run(&dir, &["app-password", "list", "alice@example.com"]).ok();
    assert!(!list.stdout.contains(&secret), "{}", list.stdout);
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert!(lines[0].contains("2 app passwords"), "{}", list.stdout);
    for header in [
        "NAME",
        "CREATED",
        "LAST USED",
        "LAST IP",
        "EXPIRES",
        "ALLOWED IPS",
    ] {
        assert!(lines[1].contains(header), "{}", lines[1]);
    }
    // Sorted by name.
    assert!(lines[2].starts_with("laptop "), "{}", list.stdout);
    assert!(
        lines[2].contains("never") && lines[2].ends_with("any"),
        "{}",
        lines[2]
    );
    assert!(lines[3].starts_with("phone "), "{}", list.stdout);
    assert!(
        lines[3].ends_with("192.0.2.0/24,2001:db8::1/128"),
        "{}",
        lines[3]
    );

    // The server records each use; the list shows the last one.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use portcullis_store::Store;
        let store = portcullis_store::SqliteStore::open(&dir.path().join("portcullis.db"))
            .await
            .unwrap();
        store
            .touch_app_password(
                "alice@example.com",
                "laptop",
                1_795_332_600,
                "198.51.100.23",
            )
            .await
            .unwrap();
        store.close().await;
    });
    let list = run(&dir, &["app-password", "list", "alice@example.com"]).ok();
    let laptop = list
        .stdout
        .lines()
        .find(|l| l.starts_with("laptop "))
        .unwrap();
    assert!(
        laptop.contains("2026-11-22T07:30:00Z  198.51.100.23"),
        "{laptop}"
    );

    let show = run(&dir, &["account", "show", "alice@example.com"]).ok();
    assert!(
        show.stdout.contains("app passwords: 2 app passwords"),
        "{}",
        show.stdout
    );

    run(
        &dir,
        &["app-password", "revoke", "alice@example.com", "phone"],
    )
    .ok();
    let list = run(&dir, &["app-password", "list", "alice@example.com"]).ok();
    assert!(!list.stdout.contains("phone"), "{}", list.stdout);
    run(
        &dir,
        &["app-password", "revoke", "alice@example.com", "laptop"],
    )
    .ok();
    let list = run(&dir, &["app-password", "list", "alice@example.com"]).ok();
    assert!(list.stdout.contains("No app passwords"), "{}", list.stdout);
}

#[test]
fn app_password_errors_name_the_argument() {
    let dir = dir_with_alice();
    let add = |args: &[&str]| {
        let mut all = vec!["app-password", "add"];
        all.extend_from_slice(args);
        run(&dir, &all)
    };
    add(&["bob@example.com", "--name", "phone"]).fails_naming("account bob@example.com not found");
    add(&["alice@example.com", "--name", "my phone"]).fails_naming("--name");
    add(&["alice@example.com", "--name", ""]).fails_naming("--name");
    add(&[
        "alice@example.com",
        "--name",
        "p",
        "--allow-ip",
        "192.0.2.300",
    ])
    .fails_naming("--allow-ip: invalid network \"192.0.2.300\"");
    add(&["alice@example.com", "--name", "p", "--expires", "soon"])
        .fails_naming("--expires: invalid duration \"soon\"");
    add(&["alice@example.com", "--name", "p", "--expires", "0d"]).fails_naming("--expires");
    add(&["alice@example.com", "--name", "phone"]).ok();
    add(&["alice@example.com", "--name", "phone"])
        .fails_naming("app password phone already exists for alice@example.com");
    run(
        &dir,
        &["app-password", "revoke", "alice@example.com", "tablet"],
    )
    .fails_naming("app password tablet not found for alice@example.com");
    run(&dir, &["app-password", "list", "nobody@example.com"])
        .fails_naming("account nobody@example.com not found");
}

#[test]
fn two_factor_enable_prints_uri_and_qr_code() {
    let dir = dir_with_alice();
    let out = run(&dir, &["account", "2fa", "enable", "alice@example.com"]).ok();
    let uri = out
        .stdout
        .lines()
        .find(|l| l.starts_with("otpauth://totp/"))
        .unwrap_or_else(|| panic!("no otpauth URI in {}", out.stdout));
    assert!(uri.contains("secret="), "{uri}");
    assert!(uri.contains("issuer=Portcullis"), "{uri}");
    assert!(uri.contains("alice%40example.com"), "{uri}");
    assert!(
        out.stdout.contains('▀') || out.stdout.contains('▄'),
        "QR code in half blocks: {}",
        out.stdout
    );
    assert!(out.stdout.contains("534 5.7.9"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("portcullis app-password add alice@example.com"),
        "no app password yet: {}",
        out.stdout
    );

    let show = run(&dir, &["account", "show", "alice@example.com"]).ok();
    assert!(show.stdout.contains("2fa:     on"), "{}", show.stdout);
    let secret = uri
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("secret="))
        .unwrap();
    assert!(!show.stdout.contains(secret), "never show the secret again");

    run(&dir, &["account", "2fa", "enable", "alice@example.com"])
        .fails_naming("2FA is already enabled for alice@example.com");
    run(&dir, &["account", "2fa", "disable", "alice@example.com"]).ok();
    let show = run(&dir, &["account", "show", "alice@example.com"]).ok();
    assert!(show.stdout.contains("2fa:     off"), "{}", show.stdout);
    run(&dir, &["account", "2fa", "disable", "alice@example.com"])
        .fails_naming("2FA is not enabled for alice@example.com");
    run(&dir, &["account", "2fa", "enable", "bob@example.com"])
        .fails_naming("account bob@example.com not found");
}

#[test]
fn ip_allowlist_adds_removes_and_clears() {
    let dir = dir_with_alice();
    let out = run(
        &dir,
        &[
            "account",
            "allow-ip",
            "alice@example.com",
            "192.0.2.7/24",
            "2001:db8::1",
        ],
    )
    .ok();
    assert!(
        out.stdout
            .contains("only from: 192.0.2.0/24, 2001:db8::1/128"),
        "{}",
        out.stdout
    );
    run(
        &dir,
        &[
            "account",
            "allow-ip",
            "alice@example.com",
            "198.51.100.9",
            "192.0.2.0/24",
        ],
    )
    .ok();
    let show = run(&dir, &["account", "show", "alice@example.com"]).ok();
    assert!(
        show.stdout
            .contains("allowed IPs: 192.0.2.0/24, 2001:db8::1/128, 198.51.100.9/32"),
        "{}",
        show.stdout
    );
    run(
        &dir,
        &[
            "account",
            "allow-ip",
            "alice@example.com",
            "--remove",
            "2001:db8::1",
        ],
    )
    .ok();
    run(
        &dir,
        &[
            "account",
            "allow-ip",
            "alice@example.com",
            "--remove",
            "203.0.113.1",
        ],
    )
    .fails_naming("203.0.113.1/32 is not in the IP allowlist of alice@example.com");
    run(
        &dir,
        &["account", "allow-ip", "alice@example.com", "10.0.0.0/33"],
    )
    .fails_naming("account allow-ip: invalid network \"10.0.0.0/33\"");
    run(
        &dir,
        &["account", "allow-ip", "bob@example.com", "10.0.0.0/8"],
    )
    .fails_naming("account bob@example.com not found");
    let show = run(&dir, &["account", "show", "alice@example.com"]).ok();
    assert!(
        show.stdout
            .contains("allowed IPs: 192.0.2.0/24, 198.51.100.9/32"),
        "{}",
        show.stdout
    );
    let out = run(
        &dir,
        &["account", "allow-ip", "alice@example.com", "--clear"],
    )
    .ok();
    assert!(out.stdout.contains("any IP"), "{}", out.stdout);
    let show = run(&dir, &["account", "show", "alice@example.com"]).ok();
    assert!(show.stdout.contains("allowed IPs: any"), "{}", show.stdout);

    // Neither networks nor --clear: a usage error from clap.
    let out = run(&dir, &["account", "allow-ip", "alice@example.com"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
}

#[test]
fn allowed_senders_are_granted_and_taken_back() {
    let dir = dir_with_alice();
    let show = run(&dir, &["account", "show", "alice@example.com"]).ok();
    assert!(
        show.stdout
            .contains("allowed senders: own address and aliases only"),
        "{}",
        show.stdout
    );
    run(
        &dir,
        &[
            "account",
            "allow-sender",
            "alice@example.com",
            "@Example.ORG",
        ],
    )
    .ok();
    run(
        &dir,
        &[
            "account",
            "allow-sender",
            "alice@example.com",
            "Billing@example.net",
        ],
    )
    .ok();
    let show = run(&dir, &["account", "show", "alice@example.com"]).ok();
    assert!(show.stdout.contains("@example.org"), "{}", show.stdout);
    assert!(
        show.stdout.contains("billing@example.net"),
        "{}",
        show.stdout
    );
    run(
        &dir,
        &[
            "account",
            "allow-sender",
            "alice@example.com",
            "@example.org",
        ],
    )
    .fails_naming("alice@example.com may already send as any address @example.org");
    run(
        &dir,
        &[
            "account",
            "allow-sender",
            "alice@example.com",
            "not an address",
        ],
    )
    .fails_naming("invalid sender \"not an address\"");
    run(
        &dir,
        &[
            "account",
            "allow-sender",
            "alice@example.com",
            "@example.org",
            "--remove",
        ],
    )
    .ok();
    run(
        &dir,
        &[
            "account",
            "allow-sender",
            "alice@example.com",
            "@example.org",
            "--remove",
        ],
    )
    .fails_naming("@example.org is not an allowed sender of alice@example.com");
    let show = run(&dir, &["account", "show", "alice@example.com"]).ok();
    assert!(!show.stdout.contains("@example.org"), "{}", show.stdout);
}

#[test]
fn bans_are_added_listed_and_removed() {
    let dir = TempDir::new().unwrap();
    let list = run(&dir, &["ban", "list"]).ok();
    assert!(list.stdout.contains("No active bans"), "{}", list.stdout);

    let out = run(
        &dir,
        &[
            "ban",
            "add",
            "192.0.2.7/24",
            "--for",
            "2h",
            "--reason",
            "spam run",
        ],
    )
    .ok();
    assert!(
        out.stdout.contains("Banned 192.0.2.0/24 for 2h"),
        "{}",
        out.stdout
    );
    run(&dir, &["ban", "add", "2001:DB8::1"]).ok();

    let list = run(&dir, &["ban", "list"]).ok();
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert!(lines[0].contains("2 active bans"), "{}", list.stdout);
    for header in ["NETWORK", "UNTIL", "LEFT", "STRIKES", "REASON"] {
        assert!(lines[1].contains(header), "{}", lines[1]);
    }
    // Soonest to end first; the default length is [security] ban_duration (1h).
    assert!(lines[2].starts_with("2001:db8::1 "), "{}", list.stdout);
    assert!(
        lines[2].contains(" 1h ") && lines[2].ends_with("manual"),
        "{}",
        lines[2]
    );
    assert!(lines[3].starts_with("192.0.2.0/24 "), "{}", list.stdout);
    assert!(lines[3].ends_with("spam run"), "{}", lines[3]);

    run(&dir, &["ban", "remove", "2001:db8::1/128"]).ok();
    run(&dir, &["ban", "remove", "2001:db8::1"]).fails_naming("ban 2001:db8::1 not found");
    run(&dir, &["ban", "remove", "192.0.2.0/24"]).ok();
    let list = run(&dir, &["ban", "list"]).ok();
    assert!(list.stdout.contains("No active bans"), "{}", list.stdout);

    run(&dir, &["ban", "add", "nope"]).fails_naming("ban add: invalid network \"nope\"");
    run(&dir, &["ban", "add", "192.0.2.1", "--for", "0s"]).fails_naming("--for");
    run(&dir, &["ban", "add", "192.0.2.1", "--for", "later"]).fails_naming("--for");
}

const SAMPLE_LOG: &str = "\
2026-11-22T07:30:00Z portcullis[auth]: result=failure reason=bad_password user=alice@example.com ip=192.0.2.7 mechanism=PLAIN credential=- session=ab12cd34 listener=submission tls=TLSv1.3
2026-11-22T07:30:01Z portcullis[auth]: result=success reason=ok user=alice@example.com ip=192.0.2.8 mechanism=PLAIN credential=password session=ab12cd35 listener=submission tls=TLSv1.3
2026-11-22T07:30:02Z portcullis[auth]: result=failure reason=unknown_user user=x%20ip%3D203.0.113.9 ip=2001:db8::7 mechanism=LOGIN credential=- session=ab12cd36 listener=submissions tls=TLSv1.3
2026-11-22T07:30:03Z portcullis[auth]: result=failure reason=store_unavailable user=bob@example.com ip=198.51.100.1 mechanism=PLAIN credential=- session=ab12cd37 listener=submission tls=-
2026-11-22T07:30:04Z portcullis[auth]: result=failure reason=banned user=- ip=192.0.2.9 mechanism=- credential=- session=ab12cd38 listener=submission tls=-
";

fn filter_file() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/fail2ban/filter.d/portcullis.conf")
}

/// Checks the fail2ban filter's regexes with Python (fail2ban is Python:
/// same regex dialect), expanding `<HOST>` the way fail2ban does, simplified.
#[test]
fn fail2ban_filter_matches_failures_only() {
    let script = r#"
import configparser, re, sys
cfg = configparser.RawConfigParser()
cfg.read(sys.argv[1])
fail = cfg.get("Definition", "failregex").strip()
ignore = cfg.get("Definition", "ignoreregex").strip()
host = r"(?:(?P<ip4>(?:\d{1,3}\.){3}\d{1,3})|(?P<ip6>[0-9A-Fa-f:]+:[0-9A-Fa-f:.]*))"
fail = re.compile(fail.replace("<HOST>", host))
ignore = re.compile(ignore)
date = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
for line in sys.stdin.read().splitlines():
    rest = date.sub("", line, count=1)
    assert rest != line, "no date: " + line
    if ignore.search(rest):
        print("ignored")
        continue
    m = fail.search(rest)
    print(m.group("ip4") or m.group("ip6") if m else "missed")
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(filter_file())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is needed to check the fail2ban filter");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(SAMPLE_LOG.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["192.0.2.7", "missed", "2001:db8::7", "ignored", "192.0.2.9"],
        "a crafted user name must not decide the banned IP"
    );
}

/// The same with the real `fail2ban-regex`, where it is installed.
#[test]
fn fail2ban_regex_accepts_the_filter() {
    let Ok(probe) = Command::new("fail2ban-regex").arg("--version").output() else {
        eprintln!("fail2ban-regex not installed: skipped");
        return;
    };
    if !probe.status.success() {
        eprintln!("fail2ban-regex not usable: skipped");
        return;
    }
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("mail.log");
    std::fs::write(&log, SAMPLE_LOG).unwrap();
    let out = Command::new("fail2ban-regex")
        .arg(&log)
        .arg(filter_file().canonicalize().unwrap())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("Lines: 5 lines, 1 ignored, 3 matched, 1 missed"),
        "{stdout}"
    );
}
