//! Golden dialog tests (chasquid style): every `tests/dialogs/*.dialog` file is
//! one SMTP conversation run against `Server::serve_stream` over an in-memory
//! duplex stream, with a fresh store per file. Adding a file needs no Rust
//! change; `all_dialogs` runs them all and names every file that failed.
//! Set `DIALOG=<substring>` to run only the matching files.
//!
//! # File format
//!
//! Header directives (lines before the first body line), `# key: value`:
//!
//! - `# role: smtp|submission|submissions` (required)
//! - `# tls: yes|no` — start the session as if TLS were up (default no)
//! - `# max_errors: N`, `# max_recipients: N`, `# max_message_size: N`
//!   (set on every listener), `# max_auth_failures: N`
//! - `# store: unavailable` — the server's store handle is closed, so every
//!   store call (AUTH, RCPT lookups, queueing) fails with `Unavailable`
//! - `# bug: <what is wrong>` — a known bug in src: the file states the
//!   correct behaviour, `all_dialogs` skips it, and an `#[ignore = "bug: ..."]`
//!   test in this file runs it (remove the directive once it is fixed)
//!
//! A header line `# word: ...` whose `word` is lowercase letters and
//! underscores must be a known directive (typos fail loudly); any other `#`
//! line, and blank lines, are comments.
//!
//! Body lines:
//!
//! - `c: <text>` — the client sends `<text>` followed by CRLF
//! - `raw: <text>` — the client sends `<text>` with the escapes `\r`, `\n`,
//!   `\t`, `\\` decoded and nothing appended (use it for pipelining, bare LF,
//!   BDAT chunks)
//! - `s: <prefix>` — the next server reply *line* must start with `<prefix>`
//!   (multi-line replies need one `s:` per line)
//! - `closed` — the server closes the stream: the next read returns EOF
//!
//! Every read is bounded by 5 s. After the last line, unless the script ended
//! with `closed`, the client closes its sending side and the server must not
//! send anything more (so a script lists every reply the server sends). After
//! every dialog, `incoming/` must be empty and the queue and `spool/` agree.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{Fixture, IO_TIMEOUT, LineClient, read_body};
use portcullis_server::Server;
use portcullis_server::config::{Config, ListenerRole};
use portcullis_server::spool_ref::SpoolRef;
use portcullis_store::Store;
use tokio::io::AsyncWriteExt;

/// How many dialogs run at once.
const PARALLEL: usize = 6;

#[derive(Debug)]
enum Step {
    Send { bytes: Vec<u8>, line: usize },
    Expect { prefix: String, line: usize },
    Closed { line: usize },
}

#[derive(Debug)]
struct Dialog {
    role: ListenerRole,
    tls: bool,
    max_errors: Option<u32>,
    max_recipients: Option<usize>,
    max_message_size: Option<u64>,
    max_auth_failures: Option<u32>,
    store_unavailable: bool,
    /// A known bug: skipped by `all_dialogs`.
    bug: Option<String>,
    steps: Vec<Step>,
}

fn unescape(text: &str, line: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut b = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            continue;
        }
        match chars.next() {
            Some('r') => out.push(b'\r'),
            Some('n') => out.push(b'\n'),
            Some('t') => out.push(b'\t'),
            Some('\\') => out.push(b'\\'),
            other => {
                return Err(format!(
                    "line {line}: unknown escape \\{}",
                    other.map(String::from).unwrap_or_default()
                ));
            }
        }
    }
    Ok(out)
}

fn parse_number<T: std::str::FromStr>(key: &str, value: &str, line: usize) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("line {line}: {key} must be a number, got {value:?}"))
}

fn parse_dialog(text: &str) -> Result<Dialog, String> {
    let mut role = None;
    let mut dialog = Dialog {
        role: ListenerRole::Smtp,
        tls: false,
        max_errors: None,
        max_recipients: None,
        max_message_size: None,
        max_auth_failures: None,
        store_unavailable: false,
        bug: None,
        steps: Vec::new(),
    };
    let mut in_header = true;
    for (i, raw_line) in text.lines().enumerate() {
        let line = i + 1;
        if raw_line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = raw_line.strip_prefix('#') {
            let directive = comment.trim_start().split_once(':').filter(|(k, _)| {
                !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            });
            let Some((key, value)) = directive else {
                continue;
            };
            if !in_header {
                return Err(format!(
                    "line {line}: directive {key:?} after the first body line"
                ));
            }
            let value = value.trim();
            match key {
                "role" => {
                    role = Some(match value {
                        "smtp" => ListenerRole::Smtp,
                        "submission" => ListenerRole::Submission,
                        "submissions" => ListenerRole::Submissions,
                        _ => return Err(format!("line {line}: unknown role {value:?}")),
                    });
                }
                "tls" => {
                    dialog.tls = match value {
                        "yes" => true,
                        "no" => false,
                        _ => return Err(format!("line {line}: tls must be yes or no")),
                    };
                }
                "max_errors" => dialog.max_errors = Some(parse_number(key, value, line)?),
                "max_recipients" => dialog.max_recipients = Some(parse_number(key, value, line)?),
                "max_message_size" => {
                    dialog.max_message_size = Some(parse_number(key, value, line)?)
                }
                "max_auth_failures" => {
                    dialog.max_auth_failures = Some(parse_number(key, value, line)?)
                }
                "store" => {
                    dialog.store_unavailable = match value {
                        "unavailable" => true,
                        "available" => false,
                        _ => {
                            return Err(format!(
                                "line {line}: store must be unavailable or available"
                            ));
                        }
                    };
                }
                "bug" => dialog.bug = Some(value.to_owned()),
                _ => return Err(format!("line {line}: unknown directive {key:?}")),
            }
            continue;
        }
        in_header = false;
        let step = if let Some(t) = raw_line.strip_prefix("c:") {
            let t = t.strip_prefix(' ').unwrap_or(t);
            Step::Send {
                bytes: format!("{t}\r\n").into_bytes(),
                line,
            }
        } else if let Some(t) = raw_line.strip_prefix("raw:") {
            let t = t.strip_prefix(' ').unwrap_or(t);
            Step::Send {
                bytes: unescape(t, line)?,
                line,
            }
        } else if let Some(t) = raw_line.strip_prefix("s:") {
            Step::Expect {
                prefix: t.strip_prefix(' ').unwrap_or(t).to_owned(),
                line,
            }
        } else if raw_line.trim_end() == "closed" {
            Step::Closed { line }
        } else {
            return Err(format!("line {line}: cannot parse {raw_line:?}"));
        };
        if matches!(dialog.steps.last(), Some(Step::Closed { .. })) {
            return Err(format!("line {line}: nothing may follow `closed`"));
        }
        dialog.steps.push(step);
    }
    dialog.role = role.ok_or("missing `# role:` directive")?;
    if dialog.steps.is_empty() {
        return Err("no steps".into());
    }
    Ok(dialog)
}

/// What a finished dialog leaves behind, for tests that look further.
struct DialogRun {
    fixture: Fixture,
    config: Config,
}

fn load_dialog(path: &Path) -> Result<Dialog, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    parse_dialog(&text)
}

/// Runs the dialog file at `path`; `Err` describes the first mismatch with
/// the transcript so far.
async fn run_dialog_file(path: &Path) -> Result<DialogRun, String> {
    run_dialog(&load_dialog(path)?).await
}

async fn run_dialog(dialog: &Dialog) -> Result<DialogRun, String> {
    let fixture = Fixture::new().await;
    // The store the server uses: the fixture's, or a second handle closed
    // once the server is bound (binding reads from the store).
    let second = if dialog.store_unavailable {
        Some(fixture.second_handle().await)
    } else {
        None
    };
    let store: Arc<dyn Store> = match &second {
        Some(s) => Arc::new(s.clone()),
        None => fixture.store_dyn(),
    };
    let mut config = fixture.config();
    for role in ListenerRole::ALL {
        let l = config.listeners.get_mut(role);
        if let Some(v) = dialog.max_errors {
            l.max_errors = v;
        }
        if let Some(v) = dialog.max_recipients {
            l.max_recipients = v;
        }
        if let Some(v) = dialog.max_message_size {
            l.max_message_size = v;
        }
    }
    if let Some(v) = dialog.max_auth_failures {
        config.security.max_auth_failures = v;
    }
    config
        .validate()
        .map_err(|e| format!("invalid dialog config: {e}"))?;

    let server = Arc::new(
        Server::bind(Arc::new(config.clone()), store)
            .await
            .map_err(|e| format!("Server::bind: {e}"))?,
    );
    if let Some(s) = &second {
        common::make_unavailable(s).await;
    }
    let (client_io, server_io) = tokio::io::duplex(256 * 1024);
    let peer: SocketAddr = "192.0.2.10:40000".parse().expect("peer");
    let (role, tls) = (dialog.role, dialog.tls);
    let mut session = tokio::spawn({
        let server = Arc::clone(&server);
        async move { server.serve_stream(server_io, role, peer, tls).await }
    });

    let mut client = LineClient::new(client_io);
    let mut transcript = String::new();
    let result = drive(&mut client, dialog, &mut transcript).await;
    let result = match result {
        Ok(()) => finish(&mut client, dialog, &mut transcript).await,
        Err(e) => Err(e),
    };
    drop(client);
    let ended = tokio::time::timeout(IO_TIMEOUT, &mut session).await;
    session.abort();
    let result = result.and_then(|()| match ended {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("the session task failed: {e}")),
        Err(_) => Err("the session did not end within 5s of the client closing".to_owned()),
    });
    if let Err(e) = result {
        return Err(format!("{e}\n--- transcript ---\n{transcript}"));
    }
    check_spool(&fixture).await?;
    Ok(DialogRun { fixture, config })
}

async fn drive(
    client: &mut LineClient<tokio::io::DuplexStream>,
    dialog: &Dialog,
    transcript: &mut String,
) -> Result<(), String> {
    for step in &dialog.steps {
        match step {
            Step::Send { bytes, line } => {
                let _ = writeln!(
                    transcript,
                    "C: {}",
                    String::from_utf8_lossy(bytes).escape_debug()
                );
                tokio::time::timeout(IO_TIMEOUT, async {
                    let io = client.get_mut();
                    io.write_all(bytes).await?;
                    io.flush().await
                })
                .await
                .map_err(|_| format!("line {line}: write timed out"))?
                .map_err(|e| format!("line {line}: write failed: {e}"))?;
            }
            Step::Expect { prefix, line } => match client.next_line(IO_TIMEOUT).await {
                Ok(Some(got)) => {
                    let _ = writeln!(transcript, "S: {got}");
                    if !got.starts_with(prefix.as_str()) {
                        return Err(format!(
                            "line {line}: expected a line starting with {prefix:?}, got {got:?}"
                        ));
                    }
                }
                Ok(None) => {
                    return Err(format!(
                        "line {line}: expected {prefix:?}, the server closed the stream"
                    ));
                }
                Err(e) => return Err(format!("line {line}: expected {prefix:?}: {e}")),
            },
            Step::Closed { line } => match client.next_line(IO_TIMEOUT).await {
                Ok(None) => {
                    let _ = writeln!(transcript, "S: <closed>");
                }
                Ok(Some(got)) => {
                    let _ = writeln!(transcript, "S: {got}");
                    return Err(format!(
                        "line {line}: expected the server to close, got {got:?}"
                    ));
                }
                Err(e) => return Err(format!("line {line}: expected the server to close: {e}")),
            },
        }
    }
    Ok(())
}

/// After the script: close our side; the server must send nothing more.
async fn finish(
    client: &mut LineClient<tokio::io::DuplexStream>,
    dialog: &Dialog,
    transcript: &mut String,
) -> Result<(), String> {
    if matches!(dialog.steps.last(), Some(Step::Closed { .. })) {
        return Ok(());
    }
    let _ = tokio::time::timeout(IO_TIMEOUT, client.get_mut().shutdown()).await;
    let _ = writeln!(transcript, "C: <end of input>");
    let mut extra = Vec::new();
    loop {
        match client.next_line(IO_TIMEOUT).await {
            Ok(None) => break,
            Ok(Some(l)) => {
                let _ = writeln!(transcript, "S: {l}");
                extra.push(l);
            }
            Err(e) => return Err(format!("after the script: {e}")),
        }
    }
    if extra.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the server sent lines the script does not expect: {extra:?}"
        ))
    }
}

/// Invariants after any session: no temporary spool file is left behind, and
/// every queued message has its spool file and vice versa.
async fn check_spool(fixture: &Fixture) -> Result<(), String> {
    let (spooled, incoming) = fixture.spool_files();
    if !incoming.is_empty() {
        return Err(format!("files left in incoming/: {incoming:?}"));
    }
    let queue = fixture
        .store
        .list_queue()
        .await
        .map_err(|e| format!("list_queue: {e}"))?;
    // Issue 9: a small message is a range of a segment (checked for its
    // size here); a big one has its own file in spool/.
    let mut expected: Vec<PathBuf> = Vec::new();
    for m in &queue {
        let body = SpoolRef::parse(&m.spool_path).map_err(|e| e.to_string())?;
        if body.is_segment() {
            let bytes = body
                .read_all(fixture.data_dir())
                .map_err(|e| format!("{}: {e}", m.spool_path))?;
            if bytes.len() as u64 != m.size {
                return Err(format!(
                    "{}: {} octets, size {}",
                    m.spool_path,
                    bytes.len(),
                    m.size
                ));
            }
        } else {
            expected.push(fixture.data_dir().join(body.file()));
        }
    }
    expected.sort();
    if expected != spooled {
        return Err(format!(
            "queue and spool/ disagree: queue {expected:?}, spool/ {spooled:?}"
        ));
    }
    Ok(())
}

fn dialog_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("dialogs")
}

fn dialog_path(name: &str) -> PathBuf {
    dialog_dir().join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_dialogs() {
    let filter = std::env::var("DIALOG").ok();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dialog_dir())
        .expect("tests/dialogs exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "dialog"))
        .filter(|p| {
            filter.as_deref().is_none_or(|f| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().contains(f))
            })
        })
        .collect();
    files.sort();
    if filter.is_none() {
        assert!(
            files.len() >= 40,
            "expected the dialog corpus, found {} files",
            files.len()
        );
    }
    let limit = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let mut tasks = tokio::task::JoinSet::new();
    for path in files.clone() {
        let limit = Arc::clone(&limit);
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("semaphore");
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let dialog = match load_dialog(&path) {
                Ok(d) => d,
                Err(e) => return (name, Err(e)),
            };
            if let Some(bug) = &dialog.bug {
                eprintln!("skipped {name}: known bug: {bug}");
                return (name, Ok(()));
            }
            let outcome = tokio::time::timeout(Duration::from_secs(120), run_dialog(&dialog)).await;
            let outcome = match outcome {
                Ok(r) => r.map(|_| ()),
                Err(_) => Err("the dialog did not finish within 120s".to_owned()),
            };
            (name, outcome)
        });
    }
    let mut failures = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((_, Ok(()))) => {}
            Ok((name, Err(e))) => failures.push(format!("{name}: {e}")),
            Err(e) => failures.push(format!("a dialog task panicked: {e}")),
        }
    }
    failures.sort();
    assert!(
        failures.is_empty(),
        "{} of {} dialogs failed:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}

#[test]
fn parser_rejects_typos_and_unknown_lines() {
    assert!(parse_dialog("# role: smtp\n# max_eror: 3\ns: 220\n").is_err());
    assert!(parse_dialog("# role: smtp\nS: 220\n").is_err());
    assert!(parse_dialog("s: 220\n").is_err(), "role is required");
    assert!(parse_dialog("# role: smtp\nclosed\ns: 220\n").is_err());
    assert!(parse_dialog("# role: smtp\nraw: \\q\n").is_err());
    let d = parse_dialog("# role: submission\n# tls: yes\n# Free text: a comment\nraw: a\\r\\n\\t\\\\\nc: NOOP\ns: 250\n")
        .expect("valid dialog");
    assert_eq!(d.role, ListenerRole::Submission);
    assert!(d.tls);
    assert!(matches!(&d.steps[0], Step::Send { bytes, .. } if bytes == b"a\r\n\t\\"));
    assert!(matches!(&d.steps[1], Step::Send { bytes, .. } if bytes == b"NOOP\r\n"));
}

/// A message queued by an authenticated TLS session is in the queue with its
/// envelope, and its spool file holds the trace header and the body.
#[tokio::test]
async fn authenticated_submission_is_queued_and_spooled() {
    let run = run_dialog_file(&dialog_path(
        "submission_tls_auth_plain_relay_queued.dialog",
    ))
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let queue = run.fixture.store.list_queue().await.expect("list_queue");
    assert_eq!(queue.len(), 1, "{queue:?}");
    let m = &queue[0];
    assert_eq!(m.sender, "alice@example.com");
    assert_eq!(
        m.recipients,
        vec![
            "friend@example.org".to_owned(),
            "bob@example.com".to_owned()
        ]
    );
    assert_eq!(m.auth_user.as_deref(), Some("alice@example.com"));
    assert_eq!(m.client_ip, "192.0.2.10");
    let spooled = read_body(&run.config.data_dir, &m.spool_path);
    assert!(
        spooled.starts_with("Received: from client.example ([192.0.2.10])"),
        "{spooled}"
    );
    assert!(
        spooled.contains("by mx.test (Portcullis) with ESMTPSA id "),
        "{spooled}"
    );
    assert!(spooled.contains("Subject: relay test\r\n"), "{spooled}");
    assert!(spooled.contains("\r\nHello from alice.\r\n"), "{spooled}");
    // Dot-stuffing undone.
    assert!(spooled.contains("\r\n.leading dot\r\n"), "{spooled}");
    assert!(spooled.ends_with("Bye.\r\n"), "{spooled}");
    assert_eq!(m.size, spooled.len() as u64);
}

/// MX delivery: a null sender and a local recipient; plain ESMTP, no auth.
#[tokio::test]
async fn mx_delivery_with_null_sender_is_queued() {
    let run = run_dialog_file(&dialog_path("smtp_data_null_sender_queued.dialog"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let queue = run.fixture.store.list_queue().await.expect("list_queue");
    assert_eq!(queue.len(), 1, "{queue:?}");
    let m = &queue[0];
    assert_eq!(m.sender, "");
    assert_eq!(m.recipients, vec!["alice@example.com".to_owned()]);
    assert_eq!(m.auth_user, None);
    let spooled = read_body(&run.config.data_dir, &m.spool_path);
    assert!(
        spooled.starts_with("Received: from sender.example.net ([192.0.2.10])"),
        "{spooled}"
    );
    assert!(spooled.contains(" with ESMTP id "), "{spooled}");
    assert!(spooled.contains("for <alice@example.com>"), "{spooled}");
    assert!(
        spooled.contains("\r\nDelivery status notification.\r\n"),
        "{spooled}"
    );
}

/// BDAT chunks are concatenated in order.
#[tokio::test]
async fn bdat_chunks_are_spooled_in_order() {
    let run = run_dialog_file(&dialog_path("bdat_two_chunks_then_last.dialog"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let queue = run.fixture.store.list_queue().await.expect("list_queue");
    assert_eq!(queue.len(), 1, "{queue:?}");
    let spooled = read_body(&run.config.data_dir, &queue[0].spool_path);
    assert!(
        spooled.ends_with("\r\nSubject: chunks\r\n\r\nfirst second third\r\n"),
        "{spooled:?}"
    );
}

/// RFC 5321 2.4: local parts are case-sensitive and a relay MUST preserve
/// their case; only the domain may be lowercased.
#[tokio::test]
async fn foreign_local_part_case_is_preserved() {
    let run = run_dialog_file(&dialog_path("submission_relay_mixed_case.dialog"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let queue = run.fixture.store.list_queue().await.expect("list_queue");
    assert_eq!(queue.len(), 1, "{queue:?}");
    assert_eq!(queue[0].recipients, vec!["John.Doe@example.org".to_owned()]);
    assert_eq!(queue[0].sender, "Alice@example.com");
}
