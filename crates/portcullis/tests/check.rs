//! `portcullis check` against a real Portcullis on loopback in each failure
//! mode, and against a scripted fake server for replies ours never gives.
//! Every run asserts that the password appears nowhere in the output.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::Stdio;

use common::fake_smtp::{FakeSmtp, Script};
use common::server::{Server, free_port};
use common::{Run, finish, run, run_stdin};
use serde_json::Value;
use tempfile::TempDir;

const USER: &str = "alice@example.com";
const PASSWORD: &str = "Quartz-lantern-Orbit-8142";
const WRONG: &str = "Wrong-but-long-Passw0rd-77";

fn dir_with_alice() -> TempDir {
    let dir = TempDir::new().unwrap();
    run_stdin(
        &dir,
        &["account", "add", USER, "--password-stdin"],
        &format!("{PASSWORD}\n"),
    )
    .ok();
    dir
}

/// Runs `portcullis check ARGS` with `password` on stdin (when given) and
/// checks that neither it nor its base64 forms appear in the output.
fn check(dir: &TempDir, args: &[&str], password: Option<&str>) -> Run {
    let mut cmd = common::command(dir.path());
    cmd.arg("check").args(args);
    let out = match password {
        Some(password) => {
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(format!("{password}\n").as_bytes()).unwrap();
            drop(stdin);
            finish(child.wait_with_output().unwrap())
        }
        None => finish(cmd.stdin(Stdio::null()).output().unwrap()),
    };
    for secret in [PASSWORD, WRONG] {
        assert_no_secret(&out, secret);
    }
    out
}

fn assert_no_secret(out: &Run, secret: &str) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let plain = b64.encode(format!("\0{USER}\0{secret}"));
    for needle in [secret.to_owned(), b64.encode(secret), plain] {
        assert!(
            !out.stdout.contains(&needle) && !out.stderr.contains(&needle),
            "secret {needle:?} leaked:\n{}\n{}",
            out.stdout,
            out.stderr
        );
    }
}

fn auth_args(port: u16, tls: &str) -> Vec<String> {
    [
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--tls",
        tls,
        "--user",
        USER,
        "--password-stdin",
        "--timeout",
        "5s",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Exit 1, the cause in stderr's `error:` line, and `needles` in the last
/// lines of stdout (the diagnosis).
fn fails_with(out: &Run, cause: &str, needles: &[&str]) {
    assert_eq!(
        out.code, 1,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    assert!(
        out.stderr.contains(&format!("({cause})")),
        "cause {cause}: {}\n{}",
        out.stderr,
        out.stdout
    );
    let tail_start = out.stdout.find("What happened").unwrap_or_else(|| {
        panic!("no diagnosis in:\n{}", out.stdout);
    });
    let tail = &out.stdout[tail_start..];
    assert!(
        tail.contains("Likely causes") && tail.contains("What to do"),
        "{tail}"
    );
    for needle in needles {
        assert!(
            tail.contains(needle),
            "{needle:?} not in diagnosis:\n{tail}"
        );
    }
}

fn json(out: &Run) -> Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("invalid JSON ({e}):\n{}", out.stdout))
}

// ----- real server: success -----

#[test]
fn plain_over_starttls_sends_a_message() {
    let dir = dir_with_alice();
    let server = Server::start(dir.path());
    let mut args = auth_args(server.submission, "starttls");
    args.extend(
        [
            "--mech",
            "plain",
            "--from",
            USER,
            "--to",
            "friend@example.org",
            "--send",
        ]
        .map(str::to_owned),
    );
    let out = check(&dir, &strs(&args), Some(PASSWORD));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for needle in [
        "STARTTLS TLSv1.3",
        "self-signed",
        "authenticated as alice@example.com with PLAIN",
        "250 2.1.5",
        "test message accepted",
        "every requested step passed",
    ] {
        assert!(out.stdout.contains(needle), "{needle:?}:\n{}", out.stdout);
    }
    // --all: the server may already have tried (and finished) the message.
    let queue = run(&dir, &["queue", "list", "--all"]).ok();
    assert!(
        queue.stdout.contains("friend@example.org"),
        "{}",
        queue.stdout
    );
}

#[test]
fn login_over_implicit_tls_with_password_from_env() {
    let dir = dir_with_alice();
    let server = Server::start(dir.path());
    let port = server.submissions.to_string();
    let out = finish(
        common::command(dir.path())
            .args(["check", "127.0.0.1", "--port", &port, "--tls", "implicit"])
            .args([
                "--user",
                USER,
                "--password-env",
                "CHECK_PW",
                "--mech",
                "login",
                "--json",
            ])
            .env("CHECK_PW", PASSWORD)
            .stdin(Stdio::null())
            .output()
            .unwrap(),
    );
    assert_no_secret(&out, PASSWORD);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let report = json(&out);
    assert_eq!(report["ok"], true);
    assert_eq!(report["exit_code"], 0);
    let attempt = &report["attempts"][0];
    assert_eq!(attempt["tls_used"], "implicit");
    assert_eq!(attempt["server"]["portcullis"], true);
    assert_eq!(attempt["server"]["auth_mechanism"], "LOGIN");
    assert!(
        attempt["server"]["tls"]["version"]
            .as_str()
            .unwrap()
            .starts_with("TLSv1")
    );
    let problems = attempt["server"]["tls"]["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| p["problem"] == "self_signed"),
        "{problems:?}"
    );
    let steps: Vec<&str> = attempt["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["connect", "tls", "greeting", "ehlo", "auth"]);
}

// ----- real server: each failure mode -----

#[test]
fn wrong_password_is_535_with_audit_hint() {
    let dir = dir_with_alice();
    let server = Server::start(dir.path());
    let args = auth_args(server.submission, "starttls");
    let out = check(&dir, &strs(&args), Some(WRONG));
    assert!(out.stdout.contains("535 5.7.8"), "{}", out.stdout);
    assert!(
        !out.stdout.contains('\x1b'),
        "no colour when not a terminal"
    );
    fails_with(
        &out,
        "credentials_rejected",
        &[
            "wrong password",
            "full email address",
            "portcullis audit explain alice@example.com",
        ],
    );

    // --json on the same failure: one valid document, no password.
    let mut args = auth_args(server.submission, "starttls");
    args.push("--json".to_owned());
    let out = check(&dir, &strs(&args), Some(WRONG));
    assert_eq!(out.code, 1);
    let report = json(&out);
    assert_eq!(report["ok"], false);
    assert_eq!(report["exit_code"], 1);
    assert_eq!(report["diagnosis"]["cause"], "credentials_rejected");
    let auth = report["attempts"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "auth")
        .unwrap()
        .clone();
    assert_eq!(auth["status"], "fail");
    assert_eq!(auth["reply"]["code"], 535);
    assert_eq!(auth["reply"]["enhanced"], "5.7.8");
    assert!(
        !report["diagnosis"]["what_to_do"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn disabled_account_is_535_and_the_server_knows_why() {
    let dir = dir_with_alice();
    run(&dir, &["account", "disable", USER]).ok();
    let server = Server::start(dir.path());
    let args = auth_args(server.submissions, "implicit");
    let out = check(&dir, &strs(&args), Some(PASSWORD));
    fails_with(
        &out,
        "credentials_rejected",
        &[
            "the account is disabled",
            "portcullis audit explain alice@example.com",
        ],
    );
    // The complement on the server side names the real reason. Events are
    // written in batches, so poll for a bounded time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let explain = run(&dir, &["audit", "explain", USER]);
        if explain.stdout.contains("disabled") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", explain.stdout);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    drop(server);
}

#[test]
fn two_factor_account_needs_an_app_password() {
    let dir = dir_with_alice();
    run(&dir, &["account", "2fa", "enable", USER]).ok();
    let server = Server::start(dir.path());
    let args = auth_args(server.submission, "starttls");
    let out = check(&dir, &strs(&args), Some(PASSWORD));
    assert!(out.stdout.contains("534 5.7.9"), "{}", out.stdout);
    fails_with(
        &out,
        "app_password_required",
        &["two-factor", "app password", "portcullis app-password add"],
    );
}

#[test]
fn starttls_on_the_implicit_port_is_detected() {
    let dir = dir_with_alice();
    let server = Server::start(dir.path());
    let args = auth_args(server.submissions, "starttls");
    let out = check(&dir, &strs(&args), Some(PASSWORD));
    fails_with(
        &out,
        "implicit_tls_port",
        &["implicit TLS (465 style)", "--tls implicit"],
    );
}

#[test]
fn implicit_tls_on_the_starttls_port_is_detected() {
    let dir = dir_with_alice();
    let server = Server::start(dir.path());
    let args = auth_args(server.submission, "implicit");
    let out = check(&dir, &strs(&args), Some(PASSWORD));
    fails_with(
        &out,
        "starttls_port",
        &["STARTTLS (587 style)", "--tls starttls"],
    );
    assert!(out.stdout.contains("ESMTP Portcullis"), "{}", out.stdout);
}

#[test]
fn closed_port_is_refused_not_filtered() {
    let dir = TempDir::new().unwrap();
    let port = free_port().to_string();
    let out = check(&dir, &["127.0.0.1", "--port", &port], None);
    fails_with(
        &out,
        "connection_refused",
        &["nothing listens", "--port auto"],
    );
}

#[test]
fn banned_ip_gets_421_at_the_greeting() {
    let dir = dir_with_alice();
    run(&dir, &["ban", "add", "127.0.0.1", "--reason", "test"]).ok();
    let server = Server::start(dir.path());
    let args = auth_args(server.submission, "starttls");
    let out = check(&dir, &strs(&args), Some(PASSWORD));
    assert!(out.stdout.contains("421 4.7.0"), "{}", out.stdout);
    fails_with(
        &out,
        "service_unavailable",
        &[
            "too many failed logins from this IP",
            "portcullis ban remove",
        ],
    );
}

#[test]
fn foreign_sender_is_553_sender_not_allowed() {
    let dir = dir_with_alice();
    let server = Server::start(dir.path());
    let mut args = auth_args(server.submission, "auto");
    args.extend(["--from", "boss@example.org"].map(str::to_owned));
    let out = check(&dir, &strs(&args), Some(PASSWORD));
    assert!(out.stdout.contains("553 5.7.1"), "{}", out.stdout);
    fails_with(
        &out,
        "sender_not_allowed",
        &["portcullis account allow-sender alice@example.com boss@example.org"],
    );
}

#[test]
fn no_tls_on_the_submission_port_explains_auth_needs_starttls() {
    let dir = dir_with_alice();
    let server = Server::start(dir.path());
    let args = auth_args(server.submission, "none");
    let out = check(&dir, &strs(&args), Some(PASSWORD));
    fails_with(&out, "auth_requires_tls", &["STARTTLS"]);
}

#[test]
fn port_list_finds_and_recommends_the_working_combination() {
    let dir = dir_with_alice();
    let server = Server::start(dir.path());
    let closed = free_port();
    let ports = format!(
        "{closed},{},{},{}",
        server.smtp, server.submissions, server.submission
    );
    let out = check(
        &dir,
        &[
            "127.0.0.1",
            "--ports",
            &ports,
            "--user",
            USER,
            "--password-stdin",
            "--timeout",
            "2s",
            "--json",
        ],
        Some(PASSWORD),
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let report = json(&out);
    let attempts = report["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 4);
    assert_eq!(attempts[0]["failure"]["kind"], "connect_refused");
    assert_eq!(attempts[1]["diagnosis"]["cause"], "auth_not_offered");
    // Auto mode switched to implicit TLS on the silent port.
    assert_eq!(attempts[2]["ok"], true);
    assert_eq!(attempts[2]["tls_used"], "implicit");
    assert_eq!(attempts[3]["tls_used"], "starttls");
    assert_eq!(report["recommendation"]["port"], server.submissions);
    assert_eq!(report["recommendation"]["tls"], "implicit");
}

#[test]
fn trace_logs_and_server_logs_never_show_the_password() {
    let dir = dir_with_alice();
    let server = Server::start(dir.path());
    for (port, tls, mech, password) in [
        (server.submissions, "implicit", "plain", PASSWORD),
        (server.submission, "starttls", "login", WRONG),
    ] {
        let out = finish(
            common::command(dir.path())
                .args([
                    "check",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "--tls",
                    tls,
                ])
                .args(["--user", USER, "--password-env", "CHECK_PW", "--mech", mech])
                .env("CHECK_PW", password)
                .env("RUST_LOG", "trace")
                .stdin(Stdio::null())
                .output()
                .unwrap(),
        );
        assert_no_secret(&out, password);
        assert!(
            out.stderr.len() > 100,
            "trace logging is on: {}",
            out.stderr
        );
    }
    drop(server);
    for log in ["serve.log", "log/mail.log"] {
        let text = std::fs::read_to_string(dir.path().join(log)).unwrap_or_default();
        let run = Run {
            code: 0,
            stdout: text,
            stderr: String::new(),
        };
        assert_no_secret(&run, PASSWORD);
        assert_no_secret(&run, WRONG);
    }
}

// ----- usage errors -----

#[test]
fn bad_arguments_exit_2_naming_the_argument() {
    let dir = TempDir::new().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["h", "--port", "0"], "--port"),
        (&["h", "--port", "smtp"], "--port"),
        (&["h", "--ports", "587,x"], "--ports"),
        (&["h", "--timeout", "soon"], "--timeout"),
        (&["h", "--timeout", "0s"], "--timeout"),
        (&["h", "--tls", "ssl"], "--tls"),
        (
            &[
                "h",
                "--mech",
                "cram-md5",
                "--user",
                "a@b",
                "--password-stdin",
            ],
            "--mech",
        ),
        (&["h", "--user", "a@b"], "--password"),
        (&["h", "--password-stdin"], "--user"),
        (&["h", "--send"], "--from"),
        (&["h", "--from", "not-an-address"], "--from"),
        (
            &[
                "h",
                "--user",
                "a@b",
                "--password-env",
                "PORTCULLIS_NO_SUCH_VAR",
            ],
            "--password-env",
        ),
        (&["h", "--port", "587", "--ports", "465"], "--port"),
        (&["bad host"], "HOST"),
    ];
    for (args, needle) in cases {
        let out = check(&dir, args, None);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains(needle),
            "{args:?} should name {needle}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
    let help = run(&dir, &["check", "--help"]).ok();
    assert!(help.stdout.contains("Exit status"), "{}", help.stdout);
}

// ----- scripted fake server -----

const EHLO_AUTH: &str = "250-fake.example greets you\n250-AUTH PLAIN LOGIN\n250 8BITMIME";

fn fake_check(fake: &FakeSmtp, extra: &[&str], password: Option<&str>) -> Run {
    let dir = TempDir::new().unwrap();
    let port = fake.port.to_string();
    let mut args = vec![
        "127.0.0.1",
        "--port",
        &port,
        "--tls",
        "none",
        "--timeout",
        "2s",
    ];
    args.extend_from_slice(extra);
    check(&dir, &args, password)
}

const AUTH_ARGS: &[&str] = &["--user", USER, "--password-stdin"];

#[test]
fn fake_454_is_a_temporary_server_problem() {
    let fake = FakeSmtp::start(
        Script::new(Some("220 fake.example ESMTP"))
            .on("EHLO", EHLO_AUTH)
            .on("AUTH", "454 4.7.0 Temporary authentication failure"),
    );
    let out = fake_check(&fake, AUTH_ARGS, Some(PASSWORD));
    fails_with(
        &out,
        "temporary_server_failure",
        &["server-side problem", "retry later"],
    );
    assert!(out.stdout.contains("without encryption"), "{}", out.stdout);
    assert!(
        !out.stdout.contains("audit explain"),
        "not Portcullis: {}",
        out.stdout
    );
}

#[test]
fn fake_530_at_mail_means_enable_authentication() {
    let fake = FakeSmtp::start(
        Script::new(Some("220 fake.example ESMTP"))
            .on("EHLO", EHLO_AUTH)
            .on("MAIL", "530 5.7.0 Authentication required"),
    );
    let out = fake_check(&fake, &["--from", USER, "--to", "bob@example.org"], None);
    fails_with(
        &out,
        "authentication_required",
        &["Enable SMTP authentication"],
    );
}

#[test]
fn fake_without_auth_is_not_a_submission_port() {
    let fake = FakeSmtp::start(
        Script::new(Some("220 fake.example ESMTP")).on("EHLO", "250-fake.example\n250 8BITMIME"),
    );
    let out = fake_check(&fake, AUTH_ARGS, Some(PASSWORD));
    fails_with(&out, "auth_not_offered", &["587", "465"]);
}

#[test]
fn fake_without_starttls_keeps_the_password_back_in_auto_mode() {
    let fake = FakeSmtp::start(
        Script::new(Some("220 fake.example ESMTP"))
            .on("EHLO", EHLO_AUTH)
            .on("AUTH", "235 2.7.0 Authentication successful"),
    );
    let dir = TempDir::new().unwrap();
    let port = fake.port.to_string();
    let mut args = vec!["127.0.0.1", "--port", &port, "--timeout", "2s"];
    args.extend_from_slice(AUTH_ARGS);
    let out = check(&dir, &args, Some(PASSWORD));
    fails_with(&out, "starttls_not_offered", &["--tls none", "465"]);
    let lines = fake.lines.lock().unwrap().clone();
    assert!(
        !lines.iter().any(|l| l.starts_with("AUTH")),
        "no AUTH without TLS: {lines:?}"
    );
}

#[test]
fn fake_538_means_use_tls() {
    let fake = FakeSmtp::start(
        Script::new(Some("220 fake.example ESMTP"))
            .on("EHLO", EHLO_AUTH)
            .on(
                "AUTH",
                "538 5.7.11 Encryption required for requested authentication mechanism",
            ),
    );
    let out = fake_check(&fake, AUTH_ARGS, Some(PASSWORD));
    fails_with(&out, "encryption_required", &["STARTTLS", "465"]);
}

#[test]
fn fake_silent_server_times_out_without_greeting() {
    let fake = FakeSmtp::start(Script::new(None));
    let dir = TempDir::new().unwrap();
    let port = fake.port.to_string();
    let out = check(
        &dir,
        &[
            "127.0.0.1",
            "--port",
            &port,
            "--tls",
            "starttls",
            "--timeout",
            "1s",
        ],
        None,
    );
    fails_with(&out, "no_greeting", &["never sent its greeting"]);
}

#[test]
fn fake_echoing_the_credentials_never_shows_the_password() {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let fake = FakeSmtp::start(
        Script::new(Some("220 fake.example ESMTP"))
            .on("EHLO", EHLO_AUTH)
            .on("AUTH LOGIN", "334 VXNlcm5hbWU6")
            .on("AUTH PLAIN", "535 5.7.8 Bad credentials in {line}")
            .on(&b64(USER), "334 UGFzc3dvcmQ6")
            .on(&b64(PASSWORD), "535 5.7.8 Bad password {line}"),
    );
    let out = fake_check(&fake, AUTH_ARGS, Some(PASSWORD));
    fails_with(&out, "credentials_rejected", &["wrong password"]);
    assert!(out.stdout.contains("<redacted>"), "{}", out.stdout);
    let mut args = AUTH_ARGS.to_vec();
    args.push("--json");
    let out = fake_check(&fake, &args, Some(PASSWORD));
    let report = json(&out);
    assert_eq!(report["diagnosis"]["cause"], "credentials_rejected");
    let mut args = AUTH_ARGS.to_vec();
    args.extend(["--mech", "login"]);
    let out = fake_check(&fake, &args, Some(PASSWORD));
    fails_with(&out, "credentials_rejected", &["wrong password"]);
    assert!(
        out.stdout.contains("Bad password <redacted>"),
        "{}",
        out.stdout
    );
    let lines = fake.lines.lock().unwrap().clone();
    assert!(lines.iter().any(|l| l == "AUTH LOGIN"), "{lines:?}");
    assert!(
        lines.contains(&b64(PASSWORD)),
        "the password did go to the server: {lines:?}"
    );
}

#[test]
fn fake_tls_alert_is_a_handshake_failure() {
    // A fatal handshake_failure alert (TLS record 21, alert 40), as a server
    // with no TLS version or cipher in common sends.
    let fake = FakeSmtp::start(Script::raw(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]));
    let dir = TempDir::new().unwrap();
    let port = fake.port.to_string();
    let out = check(
        &dir,
        &[
            "127.0.0.1",
            "--port",
            &port,
            "--tls",
            "implicit",
            "--timeout",
            "2s",
        ],
        None,
    );
    fails_with(
        &out,
        "tls_handshake_failed",
        &["version or cipher", "openssl s_client"],
    );
}

#[test]
fn auto_tries_the_standard_ports_in_order() {
    let dir = TempDir::new().unwrap();
    let out = check(&dir, &["127.0.0.1", "--timeout", "2s", "--json"], None);
    assert_ne!(out.code, 2, "{}", out.stderr);
    let report = json(&out);
    let ports: Vec<u64> = report["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [587, 465, 25, 2525]);
    assert_eq!(report["ok"] == true, out.code == 0);
}
