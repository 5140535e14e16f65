//! Split invariance: a whole dialog gives the same replies, the same action
//! trace and the same message contents whether it arrives in one push, in two
//! pushes split at every byte position, or one byte per push.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use portcullis_proto::{ForwardPath, Role, SessionConfig};

/// Everything observable about a finished dialog.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    replies: Vec<String>,
    events: Vec<Event>,
    messages: Vec<Message>,
    usernames: Vec<String>,
    lookups: Vec<String>,
    closed: bool,
}

fn run(cfg: &SessionConfig, tls: bool, pieces: &[&[u8]]) -> Outcome {
    let mut d = Driver::new(cfg.clone(), tls);
    d.push_pieces(pieces.iter().copied());
    if !d.closed {
        d.eof();
    }
    Outcome {
        replies: d.replies,
        events: d.events,
        messages: d.messages,
        usernames: d.credentials.iter().map(|c| c.username.clone()).collect(),
        lookups: d.lookups.iter().map(|m| m.to_string()).collect(),
        closed: d.closed,
    }
}

/// Checks one push against every two-piece split and a byte-per-push feed.
fn assert_split_invariant(cfg: &SessionConfig, tls: bool, input: &[u8]) -> Outcome {
    let whole = run(cfg, tls, &[input]);
    for cut in 0..=input.len() {
        let split = run(cfg, tls, &[&input[..cut], &input[cut..]]);
        assert_eq!(split, whole, "input split at byte {cut}");
    }
    let pieces: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(run(cfg, tls, &pieces), whole, "input fed one byte per push");
    for size in [2, 3, 7, 64] {
        let pieces: Vec<&[u8]> = input.chunks(size).collect();
        assert_eq!(
            run(cfg, tls, &pieces),
            whole,
            "input fed in pieces of {size}"
        );
    }
    whole
}

fn submission_dialog() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let data_body =
        b"Subject: split test\r\n\r\n..dot-stuffed line\r\n.another\r\n...\r\nbody line\r\n";
    let chunk1 = b"Subject: chunked\r\n";
    let chunk2 = b"\r\nsecond chunk\r\n";
    let mut s = String::new();
    s.push_str("EHLO client.example\r\n");
    s.push_str(&format!(
        "AUTH PLAIN {}\r\n",
        plain("", ALICE, ALICE_PASSWORD)
    ));
    s.push_str("MAIL FROM:<alice@example.com>\r\n");
    s.push_str("RCPT TO:<bob@example.com>\r\n");
    s.push_str("RCPT TO:<carol@example.org>\r\n");
    s.push_str("DATA\r\n");
    let mut input = s.into_bytes();
    input.extend_from_slice(data_body);
    input.extend_from_slice(b".\r\n");
    input.extend_from_slice(b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<bob@example.com>\r\n");
    input.extend_from_slice(format!("BDAT {}\r\n", chunk1.len()).as_bytes());
    input.extend_from_slice(chunk1);
    input.extend_from_slice(format!("BDAT {} LAST\r\n", chunk2.len()).as_bytes());
    input.extend_from_slice(chunk2);
    input.extend_from_slice(b"MAIL FROM:<alice@example.com>\r\nRSET\r\nQUIT\r\n");
    let expected_data =
        b"Subject: split test\r\n\r\n.dot-stuffed line\r\nanother\r\n..\r\nbody line\r\n".to_vec();
    let mut expected_bdat = chunk1.to_vec();
    expected_bdat.extend_from_slice(chunk2);
    (input, expected_data, expected_bdat)
}

#[test]
fn submission_dialog_is_split_invariant() {
    let (input, expected_data, expected_bdat) = submission_dialog();
    let cfg = config(Role::Submissions);
    let whole = assert_split_invariant(&cfg, true, &input);
    assert_eq!(
        statuses(&whole.replies),
        [
            "220",
            "250",
            "235 2.7.0",
            "250 2.1.0",
            "250 2.1.5",
            "250 2.1.5",
            "354",
            "250 2.0.0",
            "250 2.1.0",
            "250 2.1.5",
            "250 2.0.0",
            "250 2.0.0",
            "250 2.1.0",
            "250 2.0.0",
            "221 2.0.0",
        ]
    );
    assert!(whole.replies[7].contains("queued as Q1"));
    assert!(whole.replies[11].contains("queued as Q2"));
    assert!(whole.closed);
    assert_eq!(whole.messages.len(), 2);
    assert_eq!(whole.messages[0].content, expected_data);
    assert_eq!(whole.messages[1].content, expected_bdat);
    assert_eq!(whole.messages[0].envelope.recipients.len(), 2);
    assert!(
        matches!(&whole.messages[0].envelope.recipients[1], ForwardPath::Mailbox(m) if m.to_string() == "carol@example.org")
    );
    assert_eq!(whole.messages[0].envelope.auth_user.as_deref(), Some(ALICE));
    assert_eq!(whole.usernames, [ALICE]);
    // RSET after a MAIL with no content started: nothing to abort.
    assert!(!whole.events.contains(&Event::AbortMessage));
    assert_enhanced_codes(&whole.replies);
}

/// A dialog full of refusals: every one must leave the stream in sync however
/// the bytes arrive.
#[test]
fn hostile_mx_dialog_is_split_invariant() {
    let mut input = Vec::new();
    input.extend_from_slice(b"EHLO client.example\r\n");
    input.extend_from_slice(format!("NOOP {}\r\n", "x".repeat(600)).as_bytes());
    input.extend_from_slice(b"NOOP\nQUIT\r\n");
    input.extend_from_slice(b"BDAT 6\r\nQUIT\r\n");
    input.extend_from_slice(b"MAIL FROM:<a@example.net>\r\n");
    input.extend_from_slice(b"RCPT TO:<x%example.org@example.com>\r\n");
    input.extend_from_slice(b"RCPT TO:<alice@example.com>\r\n");
    input.extend_from_slice(
        b"DATA\r\na\r\n.\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<x@example.org>\r\n.\r\n",
    );
    input.extend_from_slice(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<bob@example.com>\r\n");
    input.extend_from_slice(b"DATA\r\n..x\r\n.\r\n");
    input.extend_from_slice(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<bob@example.com>\r\n");
    input.extend_from_slice(b"BDAT 3\r\nabcRSET\r\n");
    input.extend_from_slice(b"\r\nFOO\r\nQUIT\r\n");
    let cfg = config(Role::Mx);
    let whole = assert_split_invariant(&cfg, false, &input);
    assert_eq!(
        statuses(&whole.replies),
        [
            "220",
            "250",
            "500 5.5.0",
            "500 5.5.2",
            "503 5.5.1",
            "250 2.1.0",
            "554 5.7.1",
            "250 2.1.5",
            "354",
            "554 5.6.0",
            "250 2.1.0",
            "250 2.1.5",
            "354",
            "250 2.0.0",
            "250 2.1.0",
            "250 2.1.5",
            "250 2.0.0",
            "250 2.0.0",
            "500 5.5.2",
            "500 5.5.2",
            "221 2.0.0",
        ]
    );
    assert_eq!(whole.messages.len(), 1);
    assert_eq!(whole.messages[0].content, b".x\r\n");
    assert_eq!(
        whole
            .events
            .iter()
            .filter(|e| **e == Event::AbortMessage)
            .count(),
        2
    );
    assert!(!whole.lookups.iter().any(|l| l.contains("example.org")));
    assert_enhanced_codes(&whole.replies);
}

/// Pieces cut exactly around the DATA terminator and CRLFs.
#[test]
fn data_terminator_split_everywhere() {
    let mut cfg = config(Role::Mx);
    cfg.max_message_size = 1000;
    let input: &[u8] =
        b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n.\r\r\n.\r\n\
MAIL FROM:<>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n\r\n..\r\n.\r\nNOOP\r\n";
    let whole = assert_split_invariant(&cfg, false, input);
    assert_eq!(
        statuses(&whole.replies),
        [
            "220",
            "250",
            "250 2.1.0",
            "250 2.1.5",
            "354",
            "554 5.6.0",
            "250 2.1.0",
            "250 2.1.5",
            "354",
            "250 2.0.0",
            "250 2.0.0"
        ]
    );
    assert_eq!(whole.messages.len(), 1);
    assert_eq!(whole.messages[0].content, b"\r\n.\r\n");
}
