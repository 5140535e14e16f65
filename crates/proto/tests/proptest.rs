//! Property tests: arbitrary bytes and arbitrary sequences of plausible
//! command lines, cut at arbitrary points, never panic the session; every
//! poll loop ends within a budget proportional to the pushed bytes; after a
//! close the session only says `Close`; after EOF it always closes. These
//! invariants are checked by the scripted driver (`tests/common/harness.rs`)
//! on every push. Each property also runs under a watchdog, so a `poll` call
//! that never returns fails the test instead of hanging it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::Duration;

use common::*;
use portcullis_proto::{Role, SessionConfig};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const CASES: u32 = 256;
/// Wider search for the property whose failing shapes are rare.
const WIDE_CASES: u32 = 5_000;
const WATCHDOG: Duration = Duration::from_secs(300);

/// Runs `property` over `cases` inputs of `strategy` in a thread; fails if it panics, finds a
/// counterexample, or does not finish within the watchdog time.
fn check<S>(
    name: &'static str,
    cases: u32,
    strategy: fn() -> S,
    property: fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy + 'static,
    S::Value: std::fmt::Debug + 'static,
{
    let (done, finished) = channel();
    let worker = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let mut runner = TestRunner::new(Config {
                // PROPTEST_CASES raises the count for a longer hunt.
                cases: std::env::var("PROPTEST_CASES")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(cases),
                failure_persistence: None,
                ..Config::default()
            });
            let result = runner.run(&strategy(), property);
            let _ = done.send(result.map_err(|e| e.to_string()));
        })
        .unwrap();
    match finished.recv_timeout(WATCHDOG) {
        Ok(Ok(())) => worker.join().unwrap(),
        Ok(Err(e)) => panic!("{name}: {e}"),
        Err(RecvTimeoutError::Timeout) => {
            panic!("{name}: did not finish in {WATCHDOG:?}; a poll() call may loop forever")
        }
        Err(RecvTimeoutError::Disconnected) => {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
            panic!("{name}: worker ended without a result");
        }
    }
}

/// Role and whether the connection starts in TLS (Submissions always does).
fn role_and_tls() -> impl Strategy<Value = (Role, bool)> {
    prop_oneof![
        Just((Role::Mx, false)),
        Just((Role::Mx, true)),
        Just((Role::Submission, false)),
        Just((Role::Submission, true)),
        Just((Role::Submissions, true)),
    ]
}

/// Mostly ordinary limits, sometimes tiny ones so short inputs reach every
/// limit path.
fn session_config() -> impl Strategy<Value = (SessionConfig, bool)> {
    (
        role_and_tls(),
        prop_oneof![1 => Just(64usize), 3 => Just(512)],
        prop_oneof![1 => Just(16usize), 3 => Just(1000)],
        prop_oneof![1 => Just(40u64), 3 => Just(10_000)],
        prop_oneof![1 => Just(2usize), 3 => Just(100)],
        prop_oneof![1 => Just(3u32), 3 => Just(20)],
        prop_oneof![1 => Just(1u32), 3 => Just(3)],
        prop_oneof![1 => Just(false), 3 => Just(true)],
    )
        .prop_map(
            |(
                (role, tls),
                command_line,
                text_line,
                size,
                rcpts,
                errors,
                auth_failures,
                starttls,
            )| {
                let cfg = SessionConfig {
                    max_command_line: command_line,
                    max_text_line: text_line,
                    max_message_size: size,
                    max_recipients: rcpts,
                    max_errors: errors,
                    max_auth_failures: auth_failures,
                    starttls,
                    ..config(role)
                };
                (cfg, tls)
            },
        )
}

/// Lines a client (or an attacker) plausibly sends.
fn plausible_line() -> impl Strategy<Value = Vec<u8>> {
    let fixed: Vec<String> = vec![
        "EHLO client.example".into(),
        "HELO client.example".into(),
        "STARTTLS".into(),
        "AUTH PLAIN".into(),
        "AUTH LOGIN".into(),
        format!("AUTH PLAIN {}", plain("", ALICE, ALICE_PASSWORD)),
        format!("AUTH PLAIN {}", plain("", ALICE, "wrong")),
        format!("AUTH PLAIN {}", plain("", DOWN, "x")),
        format!("AUTH PLAIN {}", plain("", TWOFA, TWOFA_MAIN_PASSWORD)),
        format!("AUTH LOGIN {}", b64(ALICE.as_bytes())),
        "AUTH PLAIN =".into(),
        "AUTH CRAM-MD5".into(),
        plain("", ALICE, ALICE_PASSWORD),
        b64(ALICE.as_bytes()),
        b64(ALICE_PASSWORD.as_bytes()),
        "*".into(),
        "=".into(),
        "MAIL FROM:<alice@example.com>".into(),
        "MAIL FROM:<>".into(),
        "MAIL FROM:<a@example.net> SIZE=30 BODY=8BITMIME".into(),
        "MAIL FROM:<a@example.net> SIZE=99999999".into(),
        "MAIL FROM:<jöran@example.net> SMTPUTF8".into(),
        "MAIL FROM:<x@example.com> AUTH=<x@example.com>".into(),
        "MAIL FROM:<a@example.net> FOO=1".into(),
        "RCPT TO:<alice@example.com>".into(),
        "RCPT TO:<bob@example.com>".into(),
        "RCPT TO:<nobody@example.com>".into(),
        "RCPT TO:<carol@example.org>".into(),
        "RCPT TO:<Postmaster>".into(),
        "RCPT TO:<x%example.org@example.com>".into(),
        "RCPT TO:<\"x@example.org\"@example.com>".into(),
        "RCPT TO:<@relay.example.org:alice@example.com>".into(),
        "RCPT TO:<x@[192.0.2.1]>".into(),
        "RCPT TO:<x@unavailable.example>".into(),
        "RCPT TO:<alice@example.com.>".into(),
        "RCPT TO:<alice@example.com> NOTIFY=NEVER".into(),
        "DATA".into(),
        ".".into(),
        "..".into(),
        ".x".into(),
        "Subject: hello".into(),
        "BDAT 0 LAST".into(),
        "BDAT x".into(),
        "RSET".into(),
        "NOOP".into(),
        "VRFY alice".into(),
        "EXPN staff".into(),
        "HELP".into(),
        String::new(),
    ];
    prop_oneof![
        30 => proptest::sample::select(fixed).prop_map(String::into_bytes),
        6 => (0u64..48, any::<bool>()).prop_map(|(n, last)| {
            format!("BDAT {n}{}", if last { " LAST" } else { "" }).into_bytes()
        }),
        4 => "[ -~]{0,80}".prop_map(String::into_bytes),
        3 => vec(any::<u8>(), 0..40),
        1 => Just(b"QUIT".to_vec()),
        1 => Just(b"GET / HTTP/1.1".to_vec()),
    ]
}

fn terminator() -> impl Strategy<Value = &'static [u8]> {
    prop_oneof![
        12 => Just(&b"\r\n"[..]),
        1 => Just(&b"\n"[..]),
        1 => Just(&b"\r"[..]),
        1 => Just(&b""[..]),
        1 => Just(&b"\r\n.\r\n"[..]),
    ]
}

fn script() -> impl Strategy<Value = Vec<u8>> {
    vec((plausible_line(), terminator()), 0..40).prop_map(|lines| {
        let mut out = Vec::new();
        for (line, end) in lines {
            out.extend_from_slice(&line);
            out.extend_from_slice(end);
        }
        out
    })
}

/// Cuts `input` at the given points (as indices into its length).
fn pieces<'a>(input: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
    at.sort_unstable();
    at.dedup();
    let mut out = Vec::new();
    let mut start = 0;
    for cut in at {
        out.push(&input[start..cut]);
        start = cut;
    }
    out.push(&input[start..]);
    out
}

/// A line of message content (CRLF included), mostly valid.
fn body_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => proptest::sample::select(vec![
            &b"Subject: hello\r\n"[..],
            b"\r\n",
            b"..leading dot\r\n",
            b".x\r\n",
            b"...\r\n",
            b"MAIL FROM:<evil@example.org>\r\n",
            b"QUIT\r\n",
            b"plain text\r\n",
        ])
        .prop_map(<[u8]>::to_vec),
        3 => "[ -~]{0,30}".prop_map(|l| format!("{l}\r\n").into_bytes()),
        1 => proptest::sample::select(vec![
            &b"bare\nlf\r\n"[..],
            b"bare\rcr\r\n",
            b".\n",
            b".\r",
            b"\n.\n",
        ])
        .prop_map(<[u8]>::to_vec),
        1 => vec(any::<u8>(), 0..20),
    ]
}

/// `DATA` and its content up to the final dot (usually).
fn data_block() -> impl Strategy<Value = Vec<u8>> {
    (
        vec(body_line(), 0..6),
        prop_oneof![8 => Just(true), 1 => Just(false)],
    )
        .prop_map(|(lines, end)| {
            let mut out = b"DATA\r\n".to_vec();
            for line in lines {
                out.extend_from_slice(&line);
            }
            if end {
                out.extend_from_slice(b".\r\n");
            }
            out
        })
}

/// BDAT chunks with matching sizes (sometimes off by a few octets).
fn bdat_block() -> impl Strategy<Value = Vec<u8>> {
    (
        vec(vec(body_line(), 0..3), 1..4),
        prop_oneof![8 => Just(0i64), 1 => -3i64..3],
        prop_oneof![6 => Just(true), 1 => Just(false)],
    )
        .prop_map(|(chunks, skew, last)| {
            let mut out = Vec::new();
            let n = chunks.len();
            for (i, lines) in chunks.into_iter().enumerate() {
                let content = lines.concat();
                let size = (content.len() as i64 + skew).max(0);
                let is_last = last && i + 1 == n;
                let tag = if is_last { " LAST" } else { "" };
                out.extend_from_slice(format!("BDAT {size}{tag}\r\n").as_bytes());
                out.extend_from_slice(&content);
            }
            out
        })
}

fn envelope_block() -> impl Strategy<Value = Vec<u8>> {
    let senders = vec![
        "MAIL FROM:<alice@example.com>",
        "MAIL FROM:<>",
        "MAIL FROM:<a@example.net> BODY=8BITMIME",
        "MAIL FROM:<a@example.net> SIZE=20",
        "MAIL FROM:<jöran@example.net> SMTPUTF8",
    ];
    let rcpts = vec![
        "RCPT TO:<alice@example.com>",
        "RCPT TO:<bob@example.com>",
        "RCPT TO:<Postmaster>",
        "RCPT TO:<nobody@example.com>",
        "RCPT TO:<carol@example.org>",
        "RCPT TO:<x%example.org@example.com>",
        "RCPT TO:<x@unavailable.example>",
    ];
    (
        proptest::sample::select(senders),
        vec(proptest::sample::select(rcpts), 0..4),
        prop_oneof![3 => data_block(), 2 => bdat_block(), 1 => Just(Vec::new())],
    )
        .prop_map(|(mail, rcpts, content)| {
            let mut out = format!("{mail}\r\n").into_bytes();
            for r in rcpts {
                out.extend_from_slice(format!("{r}\r\n").as_bytes());
            }
            out.extend_from_slice(&content);
            out
        })
}

/// A dialog-shaped input: transactions mixed with other commands and noise.
fn dialog() -> impl Strategy<Value = Vec<u8>> {
    let block = prop_oneof![
        5 => envelope_block(),
        2 => (plausible_line(), terminator()).prop_map(|(l, t)| [l, t.to_vec()].concat()),
        1 => Just(b"RSET\r\n".to_vec()),
        1 => Just(b"EHLO client.example\r\n".to_vec()),
        1 => vec(any::<u8>(), 0..24),
    ];
    vec(block, 0..8).prop_map(|blocks| blocks.concat())
}

/// The opening pushes: EHLO, maybe STARTTLS (the rest goes in the next push,
/// as after a real handshake), and AUTH where the role allows it.
fn opening(cfg: &SessionConfig, tls: bool, use_starttls: bool, auth: bool) -> Vec<Vec<u8>> {
    let ehlo = b"EHLO client.example\r\n".to_vec();
    let mut pieces = Vec::new();
    let mut tls = tls;
    if !tls && cfg.starttls && use_starttls && cfg.role != Role::Submissions {
        pieces.push([ehlo.clone(), b"STARTTLS\r\n".to_vec()].concat());
        tls = true;
    }
    let mut last = ehlo;
    if auth && tls && cfg.role != Role::Mx {
        last.extend_from_slice(
            format!("AUTH PLAIN {}\r\n", plain("", ALICE, ALICE_PASSWORD)).as_bytes(),
        );
    }
    pieces.push(last);
    pieces
}

/// Feeds the pieces, then EOF; the driver checks the per-push invariants.
fn drive(cfg: &SessionConfig, tls: bool, parts: &[&[u8]]) -> Driver {
    let mut d = Driver::new(cfg.clone(), tls);
    for part in parts {
        d.push(part);
    }
    d.eof();
    d
}

fn after_close_only_close(d: &mut Driver) -> Result<(), TestCaseError> {
    prop_assert!(d.closed, "the session must close after EOF");
    d.session.push(b"NOOP\r\nQUIT\r\n");
    for _ in 0..3 {
        prop_assert_eq!(d.session.poll(), portcullis_proto::Action::Close);
    }
    Ok(())
}

#[test]
fn arbitrary_bytes_never_panic() {
    check(
        "arbitrary_bytes_never_panic",
        CASES,
        || {
            (
                session_config(),
                vec(any::<u8>(), 0..2048),
                vec(any::<Index>(), 0..6),
            )
        },
        |((cfg, tls), bytes, cuts)| {
            let mut d = drive(&cfg, tls, &pieces(&bytes, &cuts));
            after_close_only_close(&mut d)
        },
    );
}

#[test]
fn plausible_commands_never_panic() {
    check(
        "plausible_commands_never_panic",
        CASES,
        || (session_config(), script(), vec(any::<Index>(), 0..8)),
        |((cfg, tls), input, cuts)| {
            let mut d = drive(&cfg, tls, &pieces(&input, &cuts));
            prop_assert!(!d.replies.is_empty());
            after_close_only_close(&mut d)
        },
    );
}

#[test]
fn plausible_commands_mixed_with_random_bytes_never_panic() {
    check(
        "plausible_commands_mixed_with_random_bytes_never_panic",
        CASES,
        || {
            let chunk = prop_oneof![3 => script(), 1 => vec(any::<u8>(), 0..64)];
            (
                session_config(),
                vec(chunk, 1..6),
                vec(any::<Index>(), 0..8),
            )
        },
        |((cfg, tls), chunks, cuts)| {
            let input = chunks.concat();
            let mut d = drive(&cfg, tls, &pieces(&input, &cuts));
            after_close_only_close(&mut d)
        },
    );
}

/// Where STARTTLS cannot happen (the session starts in TLS, so STARTTLS is a
/// 503), the outcome does not depend on how the bytes are cut: one push,
/// arbitrary cuts and one byte per push all give the same replies, trace and
/// message contents.
#[test]
fn outcome_does_not_depend_on_split_points() {
    check(
        "outcome_does_not_depend_on_split_points",
        CASES,
        || {
            let tls_config = session_config().prop_map(|(cfg, _)| cfg);
            (tls_config, script(), vec(any::<Index>(), 1..8))
        },
        |(cfg, input, cuts)| {
            let whole = drive(&cfg, true, &[&input]);
            let split = drive(&cfg, true, &pieces(&input, &cuts));
            let bytewise: Vec<&[u8]> = input.chunks(1).collect();
            let bytewise = drive(&cfg, true, &bytewise);
            for other in [&split, &bytewise] {
                prop_assert_eq!(&other.replies, &whole.replies);
                prop_assert_eq!(&other.events, &whole.events);
                prop_assert_eq!(&other.messages, &whole.messages);
                prop_assert_eq!(other.credentials.len(), whole.credentials.len());
            }
            prop_assert!(whole.starttls_at.is_empty());
            Ok(())
        },
    );
}

/// Every reply of every session is well formed and carries an enhanced code
/// unless it is the greeting, the EHLO/HELO response or a 3xx reply.
#[test]
fn every_reply_has_the_right_enhanced_code() {
    check(
        "every_reply_has_the_right_enhanced_code",
        CASES,
        || (session_config(), script()),
        |((cfg, tls), input)| {
            let d = drive(&cfg, tls, &[&input]);
            assert_enhanced_codes(&d.replies);
            Ok(())
        },
    );
}

/// Dialog-shaped inputs (valid transactions with perturbations) after a
/// proper opening, cut at arbitrary points: no panic, bounded polls, close
/// after EOF, and the driver-side contract (messages begun before data,
/// aborted or queued, never left open).
#[test]
fn dialogs_never_panic() {
    check(
        "dialogs_never_panic",
        CASES,
        || {
            (
                session_config(),
                any::<bool>(),
                prop_oneof![3 => Just(true), 1 => Just(false)],
                dialog(),
                vec(any::<Index>(), 0..8),
            )
        },
        |((cfg, tls), use_starttls, auth, input, cuts)| {
            let mut parts = opening(&cfg, tls, use_starttls, auth);
            parts.extend(pieces(&input, &cuts).into_iter().map(<[u8]>::to_vec));
            let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            let mut d = drive(&cfg, tls, &parts);
            prop_assert_eq!(d.messages.len() + d.aborted, d.begun);
            assert_enhanced_codes(&d.replies);
            after_close_only_close(&mut d)
        },
    );
}

/// Split invariance for dialog-shaped inputs (sessions that start in TLS, so
/// no STARTTLS boundary exists), with ordinary size limits when the text-line
/// limit is tiny; the next property covers every combination.
#[test]
fn dialog_outcome_does_not_depend_on_split_points() {
    check(
        "dialog_outcome_does_not_depend_on_split_points",
        CASES,
        || {
            let tls_config = session_config().prop_map(|(mut cfg, _)| {
                if cfg.max_text_line < 1000 {
                    cfg.max_message_size = 10_000;
                }
                cfg
            });
            (
                tls_config,
                any::<bool>(),
                dialog(),
                vec(any::<Index>(), 1..8),
            )
        },
        dialog_split_property,
    );
}

/// The same property over every configuration, including a size limit and a
/// line limit both crossed by one run of content bytes.
#[test]
fn dialog_outcome_does_not_depend_on_split_points_any_limits() {
    check(
        "dialog_outcome_does_not_depend_on_split_points_any_limits",
        WIDE_CASES,
        || {
            let tls_config = session_config().prop_map(|(cfg, _)| cfg);
            (
                tls_config,
                any::<bool>(),
                dialog(),
                vec(any::<Index>(), 1..8),
            )
        },
        dialog_split_property,
    );
}

fn dialog_split_property(
    (cfg, auth, input, cuts): (SessionConfig, bool, Vec<u8>, Vec<Index>),
) -> Result<(), TestCaseError> {
    let mut full = opening(&cfg, true, false, auth).concat();
    full.extend_from_slice(&input);
    let whole = drive(&cfg, true, &[&full]);
    let split = drive(&cfg, true, &pieces(&full, &cuts));
    let bytewise: Vec<&[u8]> = full.chunks(1).collect();
    let bytewise = drive(&cfg, true, &bytewise);
    for other in [&split, &bytewise] {
        prop_assert_eq!(&other.replies, &whole.replies);
        prop_assert_eq!(&other.events, &whole.events);
        prop_assert_eq!(&other.messages, &whole.messages);
    }
    Ok(())
}
