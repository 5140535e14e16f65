//! End-to-end tests of the real binary with independent SMTP clients:
//! Python `smtplib`, `swaks`, and a SIGKILL right after a 250.
//!
//! These need `python3` and `swaks` on PATH (README and `.ci/run` install
//! them); a missing tool fails the test with a message saying what to install.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "e2e correct horse battery";
const USER: &str = "alice@example.com";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn cli(data_dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .env("PORTCULLIS_DATA_DIR", data_dir)
        .env_remove("PORTCULLIS_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "portcullis {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A running `portcullis serve`, killed on drop.
struct Running {
    child: Child,
    smtp: u16,
    submission: u16,
    submissions: u16,
}

impl Running {
    fn start(data_dir: &Path) -> Running {
        let (smtp, submission, submissions) = (free_port(), free_port(), free_port());
        let log = std::fs::File::create(data_dir.join("serve.log")).unwrap();
        let child = Command::new(bin())
            .args(["serve", "--smtp", &format!("127.0.0.1:{smtp}")])
            .args(["--submission", &format!("127.0.0.1:{submission}")])
            .args(["--submissions", &format!("127.0.0.1:{submissions}")])
            .env("PORTCULLIS_DATA_DIR", data_dir)
            .env_remove("PORTCULLIS_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut running = Running {
            child,
            smtp,
            submission,
            submissions,
        };
        running.wait_ready(data_dir);
        running
    }

    fn wait_ready(&mut self, data_dir: &Path) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for port in [self.smtp, self.submission, self.submissions] {
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    let log =
                        std::fs::read_to_string(data_dir.join("serve.log")).unwrap_or_default();
                    panic!("server exited early ({status}):\n{log}");
                }
                let addr: SocketAddr = ([127, 0, 0, 1], port).into();
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "server did not listen on {port} within 30s"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn kill9(&mut self) {
        // Child::kill sends SIGKILL on Unix: no chance to flush or clean up.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    cli(
        &data,
        &["account", "add", USER, "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );
    (dir, data)
}

fn require_tool(name: &str, install: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(found, "`{name}` is required for this test: {install}");
}

fn queue_list(data: &Path) -> String {
    String::from_utf8(cli(data, &["queue", "list", "--all"], None).stdout).unwrap()
}

#[test]
fn python_smtplib_end_to_end() {
    require_tool("python3", "apt-get install python3");
    let (_dir, data) = setup();
    let server = Running::start(&data);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/smtplib_e2e.py");
    let cert = data.join("tls/cert.pem");
    let out = Command::new("python3")
        .arg(&script)
        .args([
            "127.0.0.1",
            &server.smtp.to_string(),
            &server.submission.to_string(),
        ])
        .args([&server.submissions.to_string(), USER, PASSWORD])
        .arg(&cert)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "smtplib checks failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let queue = queue_list(&data);
    let ids: Vec<String> = stdout
        .trim()
        .trim_matches(|c| c == '{' || c == '}')
        .split(',')
        .map(|kv| {
            kv.split(':')
                .nth(1)
                .unwrap()
                .trim()
                .trim_matches('"')
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 4, "expected four queue ids in {stdout}");
    for id in ids {
        assert!(queue.contains(&id), "queue list lacks {id}:\n{queue}");
    }
}

#[test]
fn swaks_end_to_end() {
    require_tool("swaks", "apt-get install swaks");
    let (_dir, data) = setup();
    let server = Running::start(&data);
    let run = |extra: &[&str]| {
        Command::new("swaks")
            .args([
                "--server",
                "127.0.0.1",
                "--from",
                USER,
                "--to",
                "friend@example.org",
            ])
            .args([
                "--auth",
                "PLAIN",
                "--auth-user",
                USER,
                "--auth-password",
                PASSWORD,
            ])
            .args(["--timeout", "20", "--helo", "swaks.test"])
            .args(extra)
            .output()
            .unwrap()
    };
    // STARTTLS on the submission port.
    let out = run(&["--port", &server.submission.to_string(), "--tls"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "swaks STARTTLS failed:\n{text}");
    assert!(text.contains("235 2.7.0"), "{text}");
    let id = text
        .lines()
        .find_map(|l| l.split("queued as ").nth(1))
        .unwrap_or_else(|| panic!("no queue id:\n{text}"))
        .trim()
        .to_owned();
    assert!(queue_list(&data).contains(&id));
    // Implicit TLS on the submissions port.
    let out = run(&[
        "--port",
        &server.submissions.to_string(),
        "--tls-on-connect",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "swaks implicit TLS failed:\n{text}");
    assert!(text.contains("queued as"), "{text}");
    // Wrong password: swaks exits non-zero and shows 535 5.7.8.
    let out = Command::new("swaks")
        .args([
            "--server",
            "127.0.0.1",
            "--port",
            &server.submission.to_string(),
            "--tls",
        ])
        .args([
            "--from",
            USER,
            "--to",
            "friend@example.org",
            "--auth",
            "LOGIN",
        ])
        .args([
            "--auth-user",
            USER,
            "--auth-password",
            "wrong password here",
            "--timeout",
            "20",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains("535 5.7.8"), "{text}");
}

/// Sends one message over plain SMTP to a local account; returns the 250 line.
fn send_raw(port: u16) -> String {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut read_reply = || {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    };
    assert!(read_reply().starts_with("220"));
    for (cmd, code) in [
        ("EHLO kill.test\r\n", "250"),
        ("MAIL FROM:<sender@example.net>\r\n", "250"),
        (&format!("RCPT TO:<{USER}>\r\n") as &str, "250"),
        ("DATA\r\n", "354"),
    ] {
        writer.write_all(cmd.as_bytes()).unwrap();
        let reply = read_reply();
        assert!(reply.starts_with(code), "{cmd:?} got {reply}");
    }
    writer
        .write_all(b"Subject: durability\r\n\r\nmust survive SIGKILL\r\n.\r\n")
        .unwrap();
    let reply = read_reply();
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    reply
}

/// The Maildir files of USER holding `needle`.
fn delivered_copies(data: &Path, needle: &str) -> usize {
    let (local, domain) = USER.split_once('@').unwrap();
    let new = data.join("mail").join(domain).join(local).join("new");
    std::fs::read_dir(new)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(needle)))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn acknowledged_message_survives_sigkill() {
    let (_dir, data) = setup();
    let mut server = Running::start(&data);
    let reply = send_raw(server.smtp);
    server.kill9();
    let id = reply.trim().rsplit(' ').next().unwrap().to_owned();
    // Acknowledged means durable: either still queued with its body, or
    // already delivered to the local mailbox before the kill.
    // The queue row names its body: a segment range for a small message
    // (issue 9), read through the same parser the server uses.
    let listed = cli(&data, &["queue", "list", "--all", "--json"], None);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let queued = listed
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["id"] == id.as_str() && e["done_at"].is_null())
        .filter_map(|e| e["spool_path"].as_str().map(str::to_owned))
        .any(|p| {
            portcullis_server::spool_ref::SpoolRef::parse(&p)
                .ok()
                .and_then(|r| r.read_all(&data).ok())
                .is_some_and(|b| String::from_utf8_lossy(&b).contains("must survive SIGKILL"))
        });
    assert!(
        queued || delivered_copies(&data, "must survive SIGKILL") == 1,
        "{id} lost after SIGKILL"
    );
    // The server restarts on the same data and delivers it, once.
    let mut again = Running::start(&data);
    let deadline = Instant::now() + Duration::from_secs(20);
    while delivered_copies(&data, "must survive SIGKILL") == 0 {
        assert!(
            Instant::now() < deadline,
            "{id} not delivered after restart"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut s = TcpStream::connect(("127.0.0.1", again.smtp)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut greeting = [0u8; 3];
    s.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"220");
    again.kill9();
    assert_eq!(delivered_copies(&data, "must survive SIGKILL"), 1);
}

#[test]
fn sighup_reloads_the_certificate_without_dropping_connections() {
    let (_dir, data) = setup();
    let server = Running::start(&data);
    // An open session survives the reload.
    let stream = TcpStream::connect(("127.0.0.1", server.smtp)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("220"), "{line}");
    let status = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let log_path = data.join("serve.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("TLS certificate reloaded")
    {
        assert!(Instant::now() < deadline, "no reload in the log");
        std::thread::sleep(Duration::from_millis(50));
    }
    writer.write_all(b"NOOP\r\n").unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("250 2.0.0"), "{line}");
    // New connections still work.
    let mut again = TcpStream::connect(("127.0.0.1", server.submission)).unwrap();
    again
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut greeting = [0u8; 3];
    again.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"220");
}

/// Issue 6 as a new user would try it: an account made with the CLI logs in
/// with SCRAM-SHA-256 (Python scramp) on the real binary, and a token from
/// `portcullis token issue` sends a message with curl (OAUTHBEARER).
#[test]
fn scram_and_bearer_tokens_on_the_real_binary() {
    require_tool("python3", "apt-get install python3");
    require_tool("curl", "apt-get install curl");
    let (_dir, data) = setup();
    let server = Running::start(&data);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../server/tests/py/sasl_client.py");
    let run = |secret: &str| -> String {
        let out = Command::new("timeout")
            .args(["30", "python3"])
            .arg(&script)
            .args([
                "SCRAM-SHA-256",
                "127.0.0.1",
                &server.submissions.to_string(),
                USER,
                secret,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(run(PASSWORD), "ok");
    assert!(run("wrong").starts_with("fail 535"));

    let token =
        String::from_utf8(cli(&data, &["token", "issue", USER, "--ttl", "10m"], None).stdout)
            .unwrap();
    let mail = data.join("curl.eml");
    std::fs::write(
        &mail,
        "From: alice@example.com\r\nTo: bob@example.org\r\nSubject: t\r\n\r\nhi\r\n",
    )
    .unwrap();
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--insecure", "--max-time", "20"])
        .arg(format!("smtps://127.0.0.1:{}", server.submissions))
        .args([
            "--user",
            &format!("{USER}:"),
            "--oauth2-bearer",
            token.trim(),
        ])
        .args([
            "--mail-from",
            USER,
            "--mail-rcpt",
            "bob@example.org",
            "--upload-file",
        ])
        .arg(&mail)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(queue_list(&data).contains("bob@example.org"));
}
