//! Runs the real `portcullis` binary against a temporary data dir.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{command, finish, run, run_stdin};
use tempfile::TempDir;

#[test]
fn account_add_generates_a_password_and_adds_the_domain() {
    let dir = TempDir::new().unwrap();
    let out = run(&dir, &["account", "add", "Bob@Example.com"]).ok();
    assert!(
        out.stdout.contains("example.com as a local domain"),
        "{}",
        out.stdout
    );
    let password_line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("Password for bob@example.com: "))
        .unwrap_or_else(|| panic!("no password line in {}", out.stdout));
    let password = password_line.rsplit(' ').next().unwrap();
    assert!(password.len() >= 16, "{password}");
    assert!(out.stdout.contains("not be shown again"), "{}", out.stdout);
    assert!(
        !out.stderr.contains(password),
        "the password must not reach the logs"
    );

    let domains = run(&dir, &["domain", "list"]).ok();
    assert_eq!(domains.stdout.trim(), "example.com");

    // A second account in the same domain does not re-add it.
    let out = run(&dir, &["account", "add", "carol@example.com"]).ok();
    assert!(!out.stdout.contains("local domain"), "{}", out.stdout);

    run(&dir, &["account", "add", "bob@example.com"])
        .fails_naming("bob@example.com already exists");
}

#[test]
fn account_lifecycle() {
    let dir = TempDir::new().unwrap();
    let out = run_stdin(
        &dir,
        &[
            "account",
            "add",
            "alice@example.org",
            "--password-stdin",
            "--plan",
            "premium",
        ],
        "correct horse battery\n",
    )
    .ok();
    assert!(!out.stdout.contains("Password for"), "{}", out.stdout);
    assert!(!out.stdout.contains("correct horse") && !out.stderr.contains("correct horse"));

    let list = run(&dir, &["account", "list"]).ok();
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", list.stdout);
    for header in ["ADDRESS", "STATUS", "PLAN", "CREATED"] {
        assert!(lines[0].contains(header), "{}", lines[0]);
    }
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[..3], ["alice@example.org", "active", "premium"]);
    assert!(
        row[3].ends_with('Z') && row[3].contains('T'),
        "RFC 3339 UTC: {}",
        row[3]
    );

    let show = run(&dir, &["account", "show", "ALICE@example.org"]).ok();
    assert!(show.stdout.contains("alice@example.org"), "{}", show.stdout);
    assert!(
        show.stdout.contains("plan:    premium (3000 emails/hour)"),
        "{}",
        show.stdout
    );
    assert!(
        !show.stdout.contains("argon2"),
        "never print the hash: {}",
        show.stdout
    );
    assert!(
        show.stdout.contains("password ready for SCRAM-SHA-256"),
        "issue 6: account add stores SCRAM keys: {}",
        show.stdout
    );

    let out = run_stdin(
        &dir,
        &["account", "passwd", "alice@example.org", "--password-stdin"],
        "another secret\r\n",
    )
    .ok();
    assert!(out.stdout.contains("alice@example.org"), "{}", out.stdout);
    assert!(!out.stdout.contains("another secret"));

    run(&dir, &["account", "disable", "alice@example.org"]).ok();
    let show = run(&dir, &["account", "show", "alice@example.org"]).ok();
    assert!(show.stdout.contains("disabled"), "{}", show.stdout);
    run(&dir, &["account", "enable", "alice@example.org"]).ok();
    let show = run(&dir, &["account", "show", "alice@example.org"]).ok();
    assert!(show.stdout.contains("active"), "{}", show.stdout);

    run(&dir, &["account", "remove", "alice@example.org"]).ok();
    let list = run(&dir, &["account", "list"]).ok();
    assert!(
        !list.stdout.contains("alice@example.org"),
        "{}",
        list.stdout
    );
}

#[test]
fn account_errors_exit_1_and_name_the_thing() {
    let dir = TempDir::new().unwrap();
    run(&dir, &["account", "show", "bob@example.com"])
        .fails_naming("account bob@example.com not found");
    run(&dir, &["account", "disable", "bob@example.com"]).fails_naming("bob@example.com not found");
    run(&dir, &["account", "enable", "bob@example.com"]).fails_naming("bob@example.com not found");
    run(&dir, &["account", "remove", "bob@example.com"]).fails_naming("bob@example.com not found");
    run_stdin(
        &dir,
        &["account", "passwd", "bob@example.com", "--password-stdin"],
        "long enough\n",
    )
    .fails_naming("bob@example.com not found");
    run(&dir, &["account", "add", "not-an-address"]).fails_naming("not-an-address");

    run_stdin(
        &dir,
        &["account", "add", "bob@example.com", "--password-stdin"],
        "short\n",
    )
    .fails_naming("password refused: shorter than 12 characters");
    run_stdin(
        &dir,
        &["account", "add", "bob@example.com", "--password-stdin"],
        "\n",
    )
    .fails_naming("--password-stdin");
    run_stdin(
        &dir,
        &["account", "add", "bob@example.com", "--password-stdin"],
        "",
    )
    .fails_naming("--password-stdin");
    // Nothing was created by the failed attempts.
    assert!(
        run(&dir, &["account", "list"])
            .ok()
            .stdout
            .contains("No accounts")
    );

    run(&dir, &["account", "add", "bob@example.com"]).ok();
    run(&dir, &["account", "passwd", "bob@example.com"]).fails_naming("--password-stdin");
    run_stdin(
        &dir,
        &["account", "passwd", "bob@example.com", "--password-stdin"],
        "1234567\n",
    )
    .fails_naming("password refused: shorter than 12 characters");

    // Usage errors keep clap's exit code.
    assert_eq!(run(&dir, &["account", "frobnicate"]).code, 2);
    assert_eq!(run(&dir, &["account", "add"]).code, 2);
}

#[test]
fn domains() {
    let dir = TempDir::new().unwrap();
    assert!(
        run(&dir, &["domain", "list"])
            .ok()
            .stdout
            .contains("No local domains")
    );
    run(&dir, &["domain", "add", "Example.NET"]).ok();
    run(&dir, &["domain", "add", "example.org"]).ok();
    assert_eq!(
        run(&dir, &["domain", "list"]).ok().stdout,
        "example.net\nexample.org\n"
    );
    run(&dir, &["domain", "add", "example.net"]).fails_naming("example.net already exists");
    run(&dir, &["domain", "add", "bad domain"]).fails_naming("bad domain");

    run(&dir, &["account", "add", "ann@example.net"]).ok();
    run(&dir, &["domain", "remove", "example.net"]).fails_naming("example.net");
    assert!(
        run(&dir, &["domain", "list"])
            .ok()
            .stdout
            .contains("example.net")
    );

    run(&dir, &["account", "remove", "ann@example.net"]).ok();
    run(&dir, &["domain", "remove", "example.net"]).ok();
    assert_eq!(run(&dir, &["domain", "list"]).ok().stdout, "example.org\n");
    run(&dir, &["domain", "remove", "example.net"]).fails_naming("domain example.net not found");
}

#[test]
fn queue_list_empty() {
    let dir = TempDir::new().unwrap();
    let out = run(&dir, &["queue", "list"]).ok();
    assert_eq!(out.stdout.trim(), "Queue is empty");
}

#[test]
fn config_check_and_show() {
    let dir = TempDir::new().unwrap();
    let out = run(&dir, &["config", "check"]).ok();
    assert_eq!(out.stdout.trim(), "configuration OK: built-in defaults");

    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../portcullis.example.toml");
    let out = run(
        &dir,
        &["--config", example.to_str().unwrap(), "config", "check"],
    )
    .ok();
    assert!(
        out.stdout.starts_with("configuration OK: "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("portcullis.example.toml"),
        "{}",
        out.stdout
    );

    // config show reflects the overrides and round-trips through config check.
    let shown = run(&dir, &["--log-format", "json", "config", "show"])
        .ok()
        .stdout;
    assert!(shown.contains("format = \"json\""), "{shown}");
    assert!(
        shown.contains(&format!("data_dir = {:?}", dir.path().to_str().unwrap())),
        "{shown}"
    );
    let file = dir.path().join("shown.toml");
    std::fs::write(&file, &shown).unwrap();
    let other = TempDir::new().unwrap();
    let mut cmd = command(other.path());
    cmd.env("PORTCULLIS_CONFIG", &file)
        .args(["config", "check"]);
    let out = finish(cmd.output().unwrap()).ok();
    assert!(out.stdout.contains("shown.toml"), "{}", out.stdout);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.env_remove("PORTCULLIS_DATA_DIR").args([
        "--config",
        file.to_str().unwrap(),
        "config",
        "show",
    ]);
    let again = finish(cmd.output().unwrap()).ok().stdout;
    assert_eq!(again, shown);
}

#[test]
fn bad_config_files_name_the_key() {
    let dir = TempDir::new().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let unknown = write(
        "unknown.toml",
        "[listeners.smtp]\nenabled = true\nmax_recipient = 5\n",
    );
    let out = run(&dir, &["--config", &unknown, "config", "check"]).fails_naming("max_recipient");
    assert!(out.stderr.contains("listeners.smtp"), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout);

    let duration = write(
        "duration.toml",
        "[listeners.submission]\nidle_timeout = \"5x\"\n",
    );
    run(&dir, &["--config", &duration, "config", "check"])
        .fails_naming("listeners.submission.idle_timeout: invalid duration \"5x\"");

    let size = write(
        "size.toml",
        "[listeners.smtp]\nmax_message_size = \"lots\"\n",
    );
    run(&dir, &["--config", &size, "config", "check"])
        .fails_naming("listeners.smtp.max_message_size");

    let range = write(
        "range.toml",
        "[listeners.submission]\nmax_command_line = 100\n",
    );
    run(&dir, &["--config", &range, "config", "check"])
        .fails_naming("listeners.submission.max_command_line");

    let syntax = write("syntax.toml", "hostname = \n");
    run(&dir, &["--config", &syntax, "config", "check"]).fails_naming("line 1");

    let missing = dir.path().join("missing.toml");
    run(
        &dir,
        &["--config", missing.to_str().unwrap(), "config", "check"],
    )
    .fails_naming("missing.toml");

    // Admin commands refuse to run on a bad config too.
    run(&dir, &["--config", &duration, "account", "list"]).fails_naming("idle_timeout");
}

#[test]
fn serve_rejects_conflicting_addresses() {
    let dir = TempDir::new().unwrap();
    run(
        &dir,
        &[
            "serve",
            "--smtp",
            "127.0.0.1:2599",
            "--submission",
            "127.0.0.1:2599",
        ],
    )
    .fails_naming("listeners.submission.address");
    assert_eq!(run(&dir, &["serve", "--smtp", "not-an-address"]).code, 2);
}

#[cfg(unix)]
#[test]
fn serve_starts_and_stops_on_sigterm() {
    use std::time::{Duration, Instant};

    let dir = TempDir::new().unwrap();
    let child = command(dir.path())
        .args([
            "serve",
            "--smtp",
            "127.0.0.1:0",
            "--submission",
            "127.0.0.1:0",
            "--submissions",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the database to appear (the server has opened the store), then
    // give it a moment to bind.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.path().join("portcullis.db").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    // Admin commands work while the server runs.
    run(&dir, &["domain", "add", "example.com"]).ok();

    let pid = child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let out = finish(child.wait_with_output().unwrap());
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    for role in ["smtp", "submission", "submissions"] {
        assert!(
            out.stderr.contains(&format!("listener=\"{role}\"")),
            "{}",
            out.stderr
        );
    }
}

/// Issue 6: `token issue`, `app-password add --allow-cram-md5` and the
/// CRAM-MD5 warning of `config check`.
#[test]
fn tokens_and_cram_md5_app_passwords() {
    let dir = TempDir::new().unwrap();
    run(&dir, &["account", "add", "tok@example.com"]).ok();
    let out = run(&dir, &["token", "issue", "Tok@Example.com", "--ttl", "15m"]).ok();
    let token = out.stdout.trim();
    assert_eq!(token.split('.').count(), 3, "{token}");
    assert_eq!(out.stdout.lines().count(), 1, "only the token on stdout");
    let key = dir.path().join("oauth-ed25519.key");
    assert!(key.exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "key file readable by others: {mode:o}");
    }
    run(&dir, &["token", "issue", "nobody@example.com"]).fails_naming("nobody@example.com");
    run(
        &dir,
        &["token", "issue", "tok@example.com", "--ttl", "soon"],
    )
    .fails_naming("--ttl");

    run(
        &dir,
        &[
            "app-password",
            "add",
            "tok@example.com",
            "--name",
            "old",
            "--allow-cram-md5",
        ],
    )
    .fails_naming("PORTCULLIS_SECRET_KEY");
    let out = finish(
        command(dir.path())
            .args([
                "app-password",
                "add",
                "tok@example.com",
                "--name",
                "old",
                "--allow-cram-md5",
            ])
            .env("PORTCULLIS_SECRET_KEY", "ab".repeat(32))
            .stdin(Stdio::null())
            .output()
            .unwrap(),
    )
    .ok();
    assert!(out.stdout.contains("CRAM-MD5: allowed"), "{}", out.stdout);

    let config = dir.path().join("portcullis.toml");
    let key_file = dir.path().join("secret.key");
    std::fs::write(&key_file, "ab".repeat(32)).unwrap();
    std::fs::write(
        &config,
        format!(
            "secret_key_file = {:?}\n[listeners.submissions]\nmechanisms = [\"SCRAM-SHA-256\", \"CRAM-MD5\"]\n",
            key_file
        ),
    )
    .unwrap();
    let out = run(
        &dir,
        &["--config", config.to_str().unwrap(), "config", "check"],
    )
    .ok();
    assert!(out.stderr.contains("CRAM-MD5"), "{}", out.stderr);
    std::fs::write(
        &config,
        "[listeners.submissions]\nmechanisms = [\"PLAIN\", \"NTLM\"]\n",
    )
    .unwrap();
    run(
        &dir,
        &["--config", config.to_str().unwrap(), "config", "check"],
    )
    .fails_naming("listeners.submissions.mechanisms");
}
