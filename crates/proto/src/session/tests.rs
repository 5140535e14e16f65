//! Dialog tests of the session state machine, driven by the scripted driver
//! of `tests/common/harness.rs`. Every test checks reply codes and enhanced
//! codes exactly (as `"250 2.1.0"`; `"354"` when a reply has none).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
mod harness {
    use crate::address::{Domain, Mailbox};
    use crate::reply::Reply;
    use crate::sasl::{CredentialRef, Credentials, Mechanism, Secret, Verification, scram};
    use crate::session::{
        Action, AuthOutcome, EnqueueOutcome, Envelope, QuotaOutcome, RecipientStatus, Role,
        SaslSecrets, SenderVerdict, Session, SessionConfig,
    };

    include!("../../tests/common/harness.rs");
}

use harness::*;

use crate::address::{Domain, ForwardPath, Mailbox, ReversePath};
use crate::command::Body;
use crate::reply::Reply;
use crate::sasl::Mechanism;
use crate::session::QuotaOutcome;
use crate::session::{Action, AuthOutcome, EnqueueOutcome, Role, Session};

// ----- helpers -----

fn mx_ready() -> Driver {
    let mut d = Driver::mx();
    assert_eq!(d.say("EHLO client.example"), ["250"]);
    d
}

fn mx_in_transaction() -> Driver {
    let mut d = mx_ready();
    assert_eq!(d.say("MAIL FROM:<sender@example.net>"), ["250 2.1.0"]);
    d
}

/// Submissions (implicit TLS) after EHLO.
fn submissions_ready() -> Driver {
    let mut d = Driver::submissions();
    assert_eq!(d.say("EHLO client.example"), ["250"]);
    d
}

fn submissions_authed() -> Driver {
    let mut d = submissions_ready();
    let ir = plain("", ALICE, ALICE_PASSWORD);
    assert_eq!(d.say(&format!("AUTH PLAIN {ir}")), ["235 2.7.0"]);
    d
}

/// Submission (port 587) after EHLO, STARTTLS and EHLO again.
fn submission_after_starttls() -> Driver {
    let mut d = Driver::submission();
    assert_eq!(d.say("EHLO client.example"), ["250"]);
    assert_eq!(d.say("STARTTLS"), ["220 2.0.0"]);
    assert_eq!(d.starttls_at.len(), 1);
    assert_eq!(d.say("EHLO client.example"), ["250"]);
    d
}

fn mailbox(local: &str, domain: &str) -> Mailbox {
    Mailbox {
        local: local.into(),
        domain: Domain::Name(domain.into()),
    }
}

fn mx_with(f: impl FnOnce(&mut crate::session::SessionConfig)) -> Driver {
    let mut cfg = config(Role::Mx);
    f(&mut cfg);
    let mut d = Driver::new(cfg, false);
    assert_eq!(d.say("EHLO client.example"), ["250"]);
    d
}

// ----- greeting, EHLO and roles -----

#[test]
fn greeting_has_no_enhanced_code() {
    let d = Driver::mx();
    assert_eq!(d.replies, ["220 mx.example.com ESMTP Portcullis\r\n"]);
    assert_eq!(d.all_statuses(), ["220"]);
    assert!(!d.closed);
}

#[test]
fn ehlo_on_mx_offers_starttls_not_auth() {
    let mut d = Driver::mx();
    let r = d.push(b"EHLO client.example\r\n");
    assert_eq!(r.len(), 1);
    assert!(
        r[0].starts_with("250-mx.example.com greets client.example\r\n"),
        "{}",
        r[0]
    );
    let ext = ehlo_keywords(&r[0]);
    assert_eq!(
        ext,
        [
            "PIPELINING",
            "SIZE 10000",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
            "STARTTLS"
        ]
    );
    assert!(!ext.iter().any(|e| e.starts_with("AUTH")));
    // Every line of the EHLO response is without an enhanced code.
    assert_enhanced_codes(&d.replies);
}

#[test]
fn ehlo_on_mx_after_starttls_offers_neither() {
    let mut d = mx_ready();
    assert_eq!(d.say("STARTTLS"), ["220 2.0.0"]);
    assert!(d.session.is_tls());
    let r = d.push(b"EHLO client.example\r\n");
    let ext = ehlo_keywords(&r[0]);
    assert!(!ext.iter().any(|e| e == "STARTTLS"), "{ext:?}");
    assert!(!ext.iter().any(|e| e.starts_with("AUTH")), "{ext:?}");
    // A second STARTTLS inside TLS is a sequence error.
    assert_eq!(d.say("STARTTLS"), ["503 5.5.1"]);
}

#[test]
fn ehlo_on_mx_without_certificate_offers_no_starttls() {
    let mut d = Driver::new(
        crate::session::SessionConfig {
            starttls: false,
            ..config(Role::Mx)
        },
        false,
    );
    let r = d.push(b"EHLO client.example\r\n");
    assert!(!ehlo_keywords(&r[0]).iter().any(|e| e == "STARTTLS"));
    assert_eq!(d.say("STARTTLS"), ["502 5.5.1"]);
    assert!(d.starttls_at.is_empty());
}

#[test]
fn ehlo_on_submission_before_tls_offers_starttls_not_auth() {
    let mut d = Driver::submission();
    let r = d.push(b"EHLO client.example\r\n");
    let ext = ehlo_keywords(&r[0]);
    assert!(ext.iter().any(|e| e == "STARTTLS"), "{ext:?}");
    assert!(!ext.iter().any(|e| e.starts_with("AUTH")), "{ext:?}");
}

#[test]
fn ehlo_on_submission_after_starttls_offers_auth_not_starttls() {
    let mut d = submission_after_starttls();
    let ehlo = d.replies[d.replies.len() - 1].clone();
    let ext = ehlo_keywords(&ehlo);
    assert!(
        ext.iter()
            .any(|e| e == "AUTH PLAIN LOGIN SCRAM-SHA-256 XOAUTH2 OAUTHBEARER"),
        "{ext:?}"
    );
    assert!(!ext.iter().any(|e| e == "STARTTLS"), "{ext:?}");
    assert_eq!(d.say("STARTTLS"), ["503 5.5.1"]);
}

#[test]
fn ehlo_on_submissions_offers_auth_not_starttls() {
    let mut d = Driver::submissions();
    let r = d.push(b"EHLO client.example\r\n");
    let ext = ehlo_keywords(&r[0]);
    assert!(
        ext.iter()
            .any(|e| e == "AUTH PLAIN LOGIN SCRAM-SHA-256 XOAUTH2 OAUTHBEARER"),
        "{ext:?}"
    );
    assert!(!ext.iter().any(|e| e == "STARTTLS"), "{ext:?}");
    assert_eq!(d.say("STARTTLS"), ["503 5.5.1"]);
}

#[test]
fn ehlo_after_auth_no_longer_offers_auth() {
    let mut d = submissions_authed();
    let r = d.push(b"EHLO client.example\r\n");
    assert!(!ehlo_keywords(&r[0]).iter().any(|e| e.starts_with("AUTH")));
    // EHLO does not drop the authentication.
    assert_eq!(d.session.authenticated_user(), Some(ALICE));
    assert_eq!(d.say("MAIL FROM:<alice@example.com>"), ["250 2.1.0"]);
}

#[test]
fn helo_reply_has_no_enhanced_code() {
    let mut d = Driver::mx();
    assert_eq!(
        d.push(b"HELO client.example\r\n"),
        ["250 mx.example.com\r\n"]
    );
    assert_eq!(d.say("MAIL FROM:<a@example.net>"), ["250 2.1.0"]);
    assert_enhanced_codes(&d.replies);
}

#[test]
fn ehlo_without_argument_is_501() {
    let mut d = Driver::mx();
    assert_eq!(d.say("EHLO"), ["501 5.5.4"]);
    assert_eq!(d.say("MAIL FROM:<a@example.net>"), ["503 5.5.1"]);
}

#[test]
fn enhanced_codes_on_every_reply_of_a_long_dialog() {
    let mut d = Driver::submission();
    let mut script = String::new();
    for line in [
        "EHLO client.example",
        "NOOP",
        "AUTH PLAIN",
        "MAIL FROM:<alice@example.com>",
        "VRFY alice",
        "EXPN list",
        "HELP",
        "FOO",
        "STARTTLS",
    ] {
        script.push_str(line);
        script.push_str("\r\n");
    }
    d.push(script.as_bytes());
    let mut script = String::new();
    for line in [
        "MAIL FROM:<alice@example.com>".to_owned(),
        "EHLO client.example".to_owned(),
        "AUTH PLAIN".to_owned(),
        plain("", ALICE, "wrong"),
        "AUTH LOGIN".to_owned(),
        b64(ALICE.as_bytes()),
        b64(ALICE_PASSWORD.as_bytes()),
        "AUTH PLAIN =".to_owned(),
        "MAIL FROM:<alice@example.com> SIZE=20000".to_owned(),
        "MAIL FROM:<alice@example.com> FOO=BAR".to_owned(),
        "MAIL FROM:<alice@example.com> BODY=8BITMIME".to_owned(),
        "MAIL FROM:<alice@example.com>".to_owned(),
        "RCPT TO:<bob@example.com>".to_owned(),
        "RCPT TO:<carol@example.org>".to_owned(),
        "RCPT TO:<nobody@example.com>".to_owned(),
        "RCPT TO:<x@unavailable.example>".to_owned(),
        "RCPT TO:<bob@example.com> NOTIFY=NEVER".to_owned(),
        "RCPT TO:<bob@example.com.>".to_owned(),
        "DATA".to_owned(),
        "Subject: hi".to_owned(),
        String::new(),
        "..body".to_owned(),
        ".".to_owned(),
        "DATA".to_owned(),
        "MAIL FROM:<alice@example.com>".to_owned(),
        "RCPT TO:<bob@example.com>".to_owned(),
        "BDAT 3".to_owned(),
    ] {
        script.push_str(&line);
        script.push_str("\r\n");
    }
    script.push_str("abcBDAT 2 LAST\r\nde");
    script.push_str("MAIL FROM:<alice@example.com>\r\nRSET\r\nHELO x\r\nQUIT\r\n");
    d.push(script.as_bytes());
    assert!(d.closed);
    assert_eq!(
        d.all_statuses(),
        [
            "220", // greeting
            "250", // EHLO
            "250 2.0.0",
            "538 5.7.11",
            "530 5.7.0",
            "252 2.0.0",
            "502 5.5.1",
            "214 2.0.0",
            "500 5.5.2",
            "220 2.0.0",
            "503 5.5.1", // MAIL without EHLO in the TLS session
            "250",       // EHLO
            "334",
            "535 5.7.8",
            "334",
            "334",
            "235 2.7.0",
            "503 5.5.1", // AUTH after success
            "552 5.3.4",
            "555 5.5.4",
            "250 2.1.0",
            "503 5.5.1", // second MAIL
            "250 2.1.5",
            "250 2.1.5", // relay after AUTH
            "550 5.1.1",
            "451 4.3.0",
            "555 5.5.4",
            "501 5.1.3",
            "354",
            "250 2.0.0", // queued
            "503 5.5.1", // DATA without MAIL
            "250 2.1.0",
            "250 2.1.5",
            "250 2.0.0", // 3 octets received
            "250 2.0.0", // queued
            "250 2.1.0",
            "250 2.0.0", // RSET
            "250",       // HELO
            "221 2.0.0",
        ]
    );
    assert_enhanced_codes(&d.replies);
    assert_eq!(d.messages.len(), 2);
}

// ----- Submission (RFC 6409) -----

#[test]
fn submission_auth_before_tls_is_538() {
    let mut d = Driver::submission();
    assert_eq!(d.say("EHLO client.example"), ["250"]);
    let ir = plain("", ALICE, ALICE_PASSWORD);
    assert_eq!(d.say(&format!("AUTH PLAIN {ir}")), ["538 5.7.11"]);
    assert_eq!(d.say("AUTH LOGIN"), ["538 5.7.11"]);
    assert!(
        d.credentials.is_empty(),
        "credentials must never be checked over plaintext"
    );
    assert_eq!(d.session.authenticated_user(), None);
}

#[test]
fn submission_mail_before_auth_is_530() {
    let mut d = Driver::submission();
    assert_eq!(d.say("EHLO client.example"), ["250"]);
    assert_eq!(d.say("MAIL FROM:<alice@example.com>"), ["530 5.7.0"]);
    let mut d = submission_after_starttls();
    assert_eq!(d.say("MAIL FROM:<alice@example.com>"), ["530 5.7.0"]);
    let mut d = submissions_ready();
    assert_eq!(d.say("MAIL FROM:<alice@example.com>"), ["530 5.7.0"]);
    assert_eq!(d.say("RCPT TO:<bob@example.com>"), ["503 5.5.1"]);
}

#[test]
fn submission_after_auth_relays_to_foreign_domains() {
    let mut d = submission_after_starttls();
    let ir = plain("", ALICE, ALICE_PASSWORD);
    assert_eq!(d.say(&format!("AUTH PLAIN {ir}")), ["235 2.7.0"]);
    assert_eq!(d.session.authenticated_user(), Some(ALICE));
    assert_eq!(d.say("MAIL FROM:<alice@example.com>"), ["250 2.1.0"]);
    assert_eq!(d.say("RCPT TO:<carol@example.org>"), ["250 2.1.5"]);
    assert_eq!(d.say("RCPT TO:<dave@[192.0.2.1]>"), ["250 2.1.5"]);
    assert_eq!(d.say("RCPT TO:<bob@example.com>"), ["250 2.1.5"]);
    assert_eq!(d.say("RCPT TO:<nobody@example.com>"), ["550 5.1.1"]);
    assert_eq!(d.say("DATA"), ["354"]);
    assert_eq!(
        d.push(b"Subject: x\r\n\r\nhi\r\n.\r\n"),
        ["250 2.0.0 Ok: queued as Q1\r\n"]
    );
    let env = &d.messages[0].envelope;
    assert_eq!(env.auth_user.as_deref(), Some(ALICE));
    assert!(env.tls);
    assert!(env.esmtp);
    assert_eq!(env.protocol(), "ESMTPSA");
    assert_eq!(env.recipients.len(), 3);
    assert_eq!(
        env.recipients[0],
        ForwardPath::Mailbox(mailbox("carol", "example.org"))
    );
}

// ----- STARTTLS command injection (CVE-2011-0411) -----

#[test]
fn starttls_pipelined_plaintext_is_discarded() {
    let mut d = mx_ready();
    let r = d.push(b"STARTTLS\r\nMAIL FROM:<a@example.com>\r\n");
    // Only the 220 came before StartTls; nothing answered the injected MAIL.
    assert_eq!(statuses(&r), ["220 2.0.0"]);
    assert_eq!(d.starttls_at, [3]); // greeting, EHLO, 220
    let tail: Vec<_> = d.events.iter().rev().take(2).cloned().collect();
    assert_eq!(tail[0], Event::StartTls);
    assert_eq!(
        tail[1],
        Event::Reply("220 2.0.0 Ready to start TLS\r\n".into())
    );
    assert!(d.session.is_tls());
    assert!(!d.closed);
    // Fresh TLS session: EHLO is required again.
    assert_eq!(d.say("MAIL FROM:<a@example.com>"), ["503 5.5.1"]);
    assert_eq!(d.say("EHLO client.example"), ["250"]);
    assert_eq!(d.say("MAIL FROM:<a@example.com>"), ["250 2.1.0"]);
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    assert_eq!(d.say("DATA"), ["354"]);
    assert_eq!(d.push(b"x\r\n.\r\n"), ["250 2.0.0 Ok: queued as Q1\r\n"]);
    assert!(d.messages[0].envelope.tls);
    assert_eq!(d.messages[0].envelope.protocol(), "ESMTPS");
}

#[test]
fn starttls_pipelined_auth_is_not_executed() {
    let mut d = Driver::submission();
    assert_eq!(d.say("EHLO client.example"), ["250"]);
    let ir = plain("", ALICE, ALICE_PASSWORD);
    let r = d.push(
        format!("STARTTLS\r\nAUTH PLAIN {ir}\r\nMAIL FROM:<alice@example.com>\r\n").as_bytes(),
    );
    assert_eq!(statuses(&r), ["220 2.0.0"]);
    assert!(d.credentials.is_empty());
    assert_eq!(d.session.authenticated_user(), None);
    assert_eq!(d.say("EHLO client.example"), ["250"]);
    assert_eq!(d.say("MAIL FROM:<alice@example.com>"), ["530 5.7.0"]);
}

#[test]
fn starttls_resets_helo_transaction_and_auth_state() {
    let mut d = mx_in_transaction();
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    assert_eq!(d.say("STARTTLS"), ["220 2.0.0"]);
    assert_eq!(d.say("EHLO client.example"), ["250"]);
    // The transaction from before TLS is gone.
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["503 5.5.1"]);
    assert_eq!(d.say("DATA"), ["503 5.5.1"]);
}

#[test]
fn plaintext_arriving_before_tls_started_is_discarded() {
    // Raw session: the driver pushes more plaintext between StartTls and
    // tls_started (e.g. bytes already read); none of it may survive.
    let mut s = Session::new(config(Role::Mx), false);
    assert_eq!(s.poll(), Action::NeedInput);
    s.push(b"EHLO c\r\nSTARTTLS\r\n");
    assert!(matches!(s.poll(), Action::Send(r) if r.code == 250));
    assert_eq!(s.poll(), Action::Send(Reply::starttls_ready()));
    assert_eq!(s.poll(), Action::StartTls);
    s.push(b"MAIL FROM:<a@example.com>\r\n");
    s.tls_started();
    assert_eq!(s.poll(), Action::NeedInput);
    s.push(b"MAIL FROM:<a@example.com>\r\n");
    assert_eq!(
        s.poll(),
        Action::Send(Reply::bad_sequence("Send EHLO/HELO first"))
    );
}

// ----- AUTH (RFC 4954, 4616) -----

#[test]
fn auth_plain_with_initial_response() {
    let mut d = submissions_ready();
    let ir = plain("", ALICE, ALICE_PASSWORD);
    assert_eq!(
        d.push(format!("AUTH PLAIN {ir}\r\n").as_bytes()),
        ["235 2.7.0 Authentication successful\r\n"]
    );
    assert_eq!(d.credentials.len(), 1);
    let c = &d.credentials[0];
    assert_eq!(c.mechanism, Mechanism::Plain);
    assert_eq!(c.authzid, None);
    assert_eq!(c.username, ALICE);
    assert_eq!(c.password.expose(), ALICE_PASSWORD);
    assert_eq!(d.session.authenticated_user(), Some(ALICE));
}

#[test]
fn auth_plain_without_initial_response() {
    let mut d = submissions_ready();
    assert_eq!(d.push(b"AUTH PLAIN\r\n"), ["334 \r\n"]);
    assert!(d.credentials.is_empty());
    assert_eq!(d.say(&plain("", ALICE, ALICE_PASSWORD)), ["235 2.7.0"]);
    assert_eq!(d.session.authenticated_user(), Some(ALICE));
}

#[test]
fn auth_mechanism_name_is_case_insensitive() {
    let mut d = submissions_ready();
    assert_eq!(
        d.say(&format!("auth plain {}", plain("", ALICE, ALICE_PASSWORD))),
        ["235 2.7.0"]
    );
}

#[test]
fn auth_plain_pipelined_with_mail() {
    let mut d = submissions_ready();
    let ir = plain("", ALICE, ALICE_PASSWORD);
    let r = d.push(
        format!("AUTH PLAIN {ir}\r\nMAIL FROM:<alice@example.com>\r\nRCPT TO:<x@example.org>\r\n")
            .as_bytes(),
    );
    assert_eq!(statuses(&r), ["235 2.7.0", "250 2.1.0", "250 2.1.5"]);
}

#[test]
fn auth_plain_empty_initial_response_is_malformed() {
    // RFC 4954 4: "=" is an empty initial response; an empty PLAIN message
    // has no authcid/passwd (RFC 4616), so it is refused without a check.
    let mut d = submissions_ready();
    assert_eq!(d.say("AUTH PLAIN ="), ["501 5.5.2"]);
    assert!(d.credentials.is_empty());
    assert_eq!(d.session.authenticated_user(), None);
    assert_eq!(d.say("AUTH LOGIN ="), ["501 5.5.2"]);
    // The session is back in command mode.
    assert_eq!(d.say("NOOP"), ["250 2.0.0"]);
}

#[test]
fn auth_cancel_with_star() {
    let mut d = submissions_ready();
    assert_eq!(d.say("AUTH PLAIN"), ["334"]);
    assert_eq!(d.say("*"), ["501 5.0.0"]);
    assert!(d.credentials.is_empty());
    // A cancelled AUTH grants nothing.
    assert_eq!(d.say("MAIL FROM:<alice@example.com>"), ["530 5.7.0"]);
    // Cancelling in the middle of LOGIN.
    assert_eq!(d.say("AUTH LOGIN"), ["334"]);
    assert_eq!(d.say(&b64(ALICE.as_bytes())), ["334"]);
    assert_eq!(d.say("*"), ["501 5.0.0"]);
    assert!(d.credentials.is_empty());
    // AUTH can be retried afterwards.
    assert_eq!(
        d.say(&format!("AUTH PLAIN {}", plain("", ALICE, ALICE_PASSWORD))),
        ["235 2.7.0"]
    );
}

#[test]
fn auth_bad_base64() {
    let mut d = submissions_ready();
    assert_eq!(d.say("AUTH PLAIN !!!notbase64"), ["501 5.5.2"]);
    assert_eq!(d.say("AUTH PLAIN"), ["334"]);
    assert_eq!(d.say("%%%"), ["501 5.5.2"]);
    assert!(d.credentials.is_empty());
    assert_eq!(d.say("NOOP"), ["250 2.0.0"]);
}

#[test]
fn auth_unknown_mechanism() {
    let mut d = submissions_ready();
    assert_eq!(d.say("AUTH CRAM-MD5"), ["504 5.5.4"]);
    assert_eq!(d.say("AUTH GSSAPI dGVzdA=="), ["504 5.5.4"]);
    assert_eq!(d.say("AUTH"), ["501 5.5.4"]);
}

#[test]
fn auth_twice_is_503() {
    let mut d = submissions_authed();
    assert_eq!(
        d.say(&format!("AUTH PLAIN {}", plain("", ALICE, ALICE_PASSWORD))),
        ["503 5.5.1"]
    );
    assert_eq!(d.credentials.len(), 1);
}

#[test]
fn auth_during_transaction_is_503() {
    // On the submission roles MAIL requires AUTH, so a transaction always
    // belongs to an authenticated session; AUTH is refused either way.
    let mut d = submissions_authed();
    assert_eq!(d.say("MAIL FROM:<alice@example.com>"), ["250 2.1.0"]);
    assert_eq!(d.say("AUTH LOGIN"), ["503 5.5.1"]);
    assert_eq!(
        d.say(&format!(
            "AUTH PLAIN {}",
            plain("", TWOFA, TWOFA_APP_PASSWORD)
        )),
        ["503 5.5.1"]
    );
    assert_eq!(d.credentials.len(), 1);
    // The transaction is intact.
    assert_eq!(d.say("RCPT TO:<bob@example.com>"), ["250 2.1.5"]);
}

#[test]
fn auth_before_ehlo_is_503() {
    let mut d = Driver::submissions();
    let ir = plain("", ALICE, ALICE_PASSWORD);
    assert_eq!(d.say(&format!("AUTH PLAIN {ir}")), ["503 5.5.1"]);
    // HELO is not enough: AUTH is an ESMTP extension.
    assert_eq!(d.say("HELO client.example"), ["250"]);
    assert_eq!(d.say(&format!("AUTH PLAIN {ir}")), ["503 5.5.1"]);
    assert!(d.credentials.is_empty());
}

#[test]
fn auth_on_mx_is_502() {
    let mut d = mx_ready();
    assert_eq!(
        d.say(&format!("AUTH PLAIN {}", plain("", ALICE, ALICE_PASSWORD))),
        ["502 5.5.1"]
    );
    assert!(d.credentials.is_empty());
}

#[test]
fn auth_failure_is_535_and_grants_nothing() {
    let mut d = submissions_ready();
    assert_eq!(
        d.say(&format!("AUTH PLAIN {}", plain("", ALICE, "wrong"))),
        ["535 5.7.8"]
    );
    assert_eq!(d.session.authenticated_user(), None);
    assert_eq!(
        d.say(&format!(
            "AUTH PLAIN {}",
            plain("", "mallory@example.org", "x")
        )),
        ["535 5.7.8"]
    );
    assert_eq!(d.say("MAIL FROM:<alice@example.com>"), ["530 5.7.0"]);
    assert_eq!(d.say("RCPT TO:<carol@example.org>"), ["503 5.5.1"]);
}

#[test]
fn failed_auth_on_submission_does_not_grant_relay() {
    let mut d = submission_after_starttls();
    assert_eq!(
        d.say(&format!("AUTH PLAIN {}", plain("", ALICE, "wrong"))),
        ["535 5.7.8"]
    );
    assert_eq!(d.say("MAIL FROM:<alice@example.com>"), ["530 5.7.0"]);
    assert_eq!(d.say("RCPT TO:<carol@example.org>"), ["503 5.5.1"]);
    assert_eq!(d.say("AUTH PLAIN"), ["334"]);
    assert_eq!(d.say("*"), ["501 5.0.0"]);
    assert_eq!(d.say("MAIL FROM:<alice@example.com>"), ["530 5.7.0"]);
    assert!(d.lookups.is_empty());
}

#[test]
fn auth_app_password_required_is_534() {
    let mut d = submissions_ready();
    assert_eq!(
        d.say(&format!(
            "AUTH PLAIN {}",
            plain("", TWOFA, TWOFA_MAIN_PASSWORD)
        )),
        ["534 5.7.9"]
    );
    assert_eq!(d.session.authenticated_user(), None);
    assert_eq!(
        d.say(&format!(
            "AUTH PLAIN {}",
            plain("", TWOFA, TWOFA_APP_PASSWORD)
        )),
        ["235 2.7.0"]
    );
    assert_eq!(d.session.authenticated_user(), Some(TWOFA));
}

#[test]
fn auth_temporary_failure_is_454_and_not_counted() {
    let mut d = submissions_ready();
    for _ in 0..5 {
        assert_eq!(
            d.say(&format!("AUTH PLAIN {}", plain("", DOWN, "pw"))),
            ["454 4.7.0"]
        );
    }
    assert!(
        !d.closed,
        "temporary failures must not count against max_auth_failures"
    );
    assert_eq!(d.session.authenticated_user(), None);
    assert_eq!(
        d.say(&format!("AUTH PLAIN {}", plain("", ALICE, ALICE_PASSWORD))),
        ["235 2.7.0"]
    );
}

#[test]
fn auth_failures_reach_limit_then_421_and_close() {
    let mut d = submissions_ready();
    assert_eq!(d.session.config().max_auth_failures, 3);
    assert_eq!(
        d.say(&format!("AUTH PLAIN {}", plain("", ALICE, "a"))),
        ["535 5.7.8"]
    );
    assert_eq!(
        d.say(&format!(
            "AUTH PLAIN {}",
            plain("", TWOFA, TWOFA_MAIN_PASSWORD)
        )),
        ["534 5.7.9"]
    );
    assert!(!d.closed);
    let r = d.push(format!("AUTH PLAIN {}\r\nNOOP\r\n", plain("", ALICE, "c")).as_bytes());
    assert_eq!(statuses(&r), ["535 5.7.8", "421 4.7.0"]);
    assert!(d.closed);
    assert!(matches!(d.events.last(), Some(Event::ReplyAndClose(t)) if t.starts_with("421 4.7.0")));
    // Nothing more is read.
    assert!(d.push(b"NOOP\r\n").is_empty());
}

#[test]
fn auth_plain_passes_authzid_through() {
    let mut d = submissions_ready();
    let ir = plain("admin@example.com", ALICE, ALICE_PASSWORD);
    assert_eq!(d.say(&format!("AUTH PLAIN {ir}")), ["235 2.7.0"]);
    assert_eq!(
        d.credentials[0].authzid.as_deref(),
        Some("admin@example.com")
    );
    assert_eq!(d.credentials[0].username, ALICE);
}

#[test]
fn auth_login_without_initial_response() {
    let mut d = submissions_ready();
    assert_eq!(d.push(b"AUTH LOGIN\r\n"), ["334 VXNlcm5hbWU6\r\n"]);
    assert_eq!(
        d.push(format!("{}\r\n", b64(ALICE.as_bytes())).as_bytes()),
        ["334 UGFzc3dvcmQ6\r\n"]
    );
    assert_eq!(d.say(&b64(ALICE_PASSWORD.as_bytes())), ["235 2.7.0"]);
    let c = &d.credentials[0];
    assert_eq!(c.mechanism, Mechanism::Login);
    assert_eq!(c.authzid, None);
    assert_eq!(c.username, ALICE);
    assert_eq!(c.password.expose(), ALICE_PASSWORD);
    assert_eq!(d.session.authenticated_user(), Some(ALICE));
}

#[test]
fn auth_login_with_initial_response() {
    let mut d = submissions_ready();
    let r = d.push(format!("AUTH LOGIN {}\r\n", b64(ALICE.as_bytes())).as_bytes());
    assert_eq!(r, ["334 UGFzc3dvcmQ6\r\n"]);
    assert_eq!(d.say(&b64(b"wrong")), ["535 5.7.8"]);
    assert_eq!(d.credentials[0].username, ALICE);
    assert_eq!(d.credentials[0].mechanism, Mechanism::Login);
    assert_eq!(d.session.authenticated_user(), None);
}

#[test]
fn auth_plain_malformed_message() {
    let mut d = submissions_ready();
    // No NUL separators, empty password, too many fields.
    for msg in [&b"alice"[..], b"\0alice@example.com\0", b"a\0b\0c\0d"] {
        assert_eq!(d.say(&format!("AUTH PLAIN {}", b64(msg))), ["501 5.5.2"]);
    }
    assert!(d.credentials.is_empty());
}

#[test]
fn auth_response_line_too_long() {
    let mut d = submissions_ready();
    assert_eq!(d.say("AUTH PLAIN"), ["334"]);
    let long = "A".repeat(13_000);
    assert_eq!(d.say(&long), ["500 5.5.6"]);
    assert!(d.credentials.is_empty());
    assert_eq!(d.say("NOOP"), ["250 2.0.0"]);
}

// ----- MX relay rule -----

#[test]
fn mx_foreign_domain_is_relay_denied() {
    let mut d = mx_in_transaction();
    assert_eq!(d.say("RCPT TO:<carol@example.org>"), ["554 5.7.1"]);
    assert_eq!(d.say("RCPT TO:<postmaster@example.org>"), ["554 5.7.1"]);
}

#[test]
fn mx_local_recipients() {
    let mut d = mx_in_transaction();
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    assert_eq!(d.say("RCPT TO:<Bob@EXAMPLE.com>"), ["250 2.1.5"]);
    assert_eq!(d.say("RCPT TO:<nobody@example.com>"), ["550 5.1.1"]);
    assert_eq!(d.say("RCPT TO:<x@unavailable.example>"), ["451 4.3.0"]);
    assert_eq!(d.lookups[1], mailbox("Bob", "example.com"));
}

#[test]
fn mx_postmaster_is_always_accepted() {
    let mut d = mx_in_transaction();
    assert_eq!(d.say("RCPT TO:<Postmaster>"), ["250 2.1.5"]);
    assert_eq!(d.say("RCPT TO:<postmaster@example.com>"), ["250 2.1.5"]);
    assert_eq!(d.say("RCPT TO:<PostMaster@Example.Com>"), ["250 2.1.5"]);
    assert_eq!(d.say("DATA"), ["354"]);
    d.push(b"hi\r\n.\r\n");
    let rcpts = &d.messages[0].envelope.recipients;
    assert_eq!(rcpts[0], ForwardPath::Postmaster);
    assert_eq!(
        rcpts[1],
        ForwardPath::Mailbox(mailbox("postmaster", "example.com"))
    );
}

#[test]
fn mx_routing_hints_are_relay_denied() {
    let mut d = mx_in_transaction();
    assert_eq!(d.say("RCPT TO:<x%example.org@example.com>"), ["554 5.7.1"]);
    assert_eq!(d.say("RCPT TO:<example.org!x@example.com>"), ["554 5.7.1"]);
    assert_eq!(
        d.say("RCPT TO:<\"x@example.org\"@example.com>"),
        ["554 5.7.1"]
    );
    assert_eq!(
        d.say("RCPT TO:<\"x%example.org\"@example.com>"),
        ["554 5.7.1"]
    );
    assert!(
        d.lookups.is_empty(),
        "routing hints must be refused before any lookup"
    );
    assert_eq!(d.say("DATA"), ["554 5.5.1"]);
}

#[test]
fn mx_address_literal_is_relay_denied() {
    let mut d = mx_in_transaction();
    assert_eq!(d.say("RCPT TO:<x@[192.0.2.1]>"), ["554 5.7.1"]);
    assert_eq!(d.say("RCPT TO:<x@[IPv6:2001:db8::1]>"), ["554 5.7.1"]);
    assert!(d.lookups.is_empty());
}

#[test]
fn mx_trailing_dot_is_501() {
    let mut d = mx_in_transaction();
    assert_eq!(d.say("RCPT TO:<alice@example.com.>"), ["501 5.1.3"]);
    assert_eq!(d.say("RCPT TO:alice@example.com"), ["501 5.1.3"]);
    assert_eq!(d.say("RCPT TO:<>"), ["501 5.1.3"]);
    assert_eq!(d.say("RCPT TO:<alice>"), ["501 5.1.3"]);
    assert_eq!(d.say("RCPT alice@example.com"), ["501 5.5.4"]);
    assert_eq!(d.say("MAIL FROM:<a@example.net>"), ["503 5.5.1"]);
    let mut d = mx_ready();
    assert_eq!(d.say("MAIL FROM:<a@example.net.>"), ["501 5.1.7"]);
}

#[test]
fn mx_source_route_is_ignored() {
    let mut d = mx_in_transaction();
    assert_eq!(
        d.say("RCPT TO:<@relay.example.org:alice@example.com>"),
        ["250 2.1.5"]
    );
    assert_eq!(
        d.say("RCPT TO:<@relay.example.org,@b.example.org:carol@example.org>"),
        ["554 5.7.1"]
    );
    assert_eq!(d.lookups[0], mailbox("alice", "example.com"));
    assert_eq!(d.say("DATA"), ["354"]);
    d.push(b"x\r\n.\r\n");
    assert_eq!(
        d.messages[0].envelope.recipients,
        [ForwardPath::Mailbox(mailbox("alice", "example.com"))]
    );
}

#[test]
fn mx_mail_auth_parameter_does_not_grant_relay() {
    let mut d = mx_ready();
    assert_eq!(
        d.say("MAIL FROM:<x@example.com> AUTH=<x@example.com>"),
        ["250 2.1.0"]
    );
    assert_eq!(d.say("RCPT TO:<carol@example.org>"), ["554 5.7.1"]);
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    assert_eq!(d.say("DATA"), ["354"]);
    d.push(b"x\r\n.\r\n");
    let env = &d.messages[0].envelope;
    assert_eq!(env.params.auth.as_deref(), Some("<x@example.com>"));
    assert_eq!(env.auth_user, None);
}

#[test]
fn mx_local_sender_or_helo_does_not_grant_relay() {
    let mut d = Driver::mx();
    assert_eq!(d.say("EHLO example.com"), ["250"]);
    assert_eq!(d.say("MAIL FROM:<alice@example.com>"), ["250 2.1.0"]);
    assert_eq!(d.say("RCPT TO:<carol@example.org>"), ["554 5.7.1"]);
    assert_eq!(d.say("RCPT TO:<carol@mx.example.com>"), ["554 5.7.1"]);
}

#[test]
fn mx_null_sender() {
    let mut d = mx_ready();
    assert_eq!(d.say("MAIL FROM:<>"), ["250 2.1.0"]);
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    assert_eq!(d.say("DATA"), ["354"]);
    assert_eq!(statuses(&d.push(b"bounce\r\n.\r\n")), ["250 2.0.0"]);
    let env = &d.messages[0].envelope;
    assert_eq!(env.from, ReversePath::Null);
    assert_eq!(env.protocol(), "ESMTP");
    assert!(!env.tls);
}

#[test]
fn mail_sequence_errors() {
    let mut d = Driver::mx();
    assert_eq!(d.say("MAIL FROM:<a@example.net>"), ["503 5.5.1"]);
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["503 5.5.1"]);
    assert_eq!(d.say("EHLO client.example"), ["250"]);
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["503 5.5.1"]);
    assert_eq!(d.say("MAIL FROM:<a@example.net>"), ["250 2.1.0"]);
    assert_eq!(d.say("MAIL FROM:<a@example.net>"), ["503 5.5.1"]);
    assert_eq!(d.say("MAIL TO:<a@example.net>"), ["501 5.5.4"]);
    assert_eq!(d.say("MAIL FROM: <a@example.net>"), ["503 5.5.1"]);
}

// ----- MAIL parameters -----

#[test]
fn mail_size_over_limit_is_552() {
    let mut d = mx_ready();
    assert_eq!(d.say("MAIL FROM:<a@example.net> SIZE=10001"), ["552 5.3.4"]);
    assert_eq!(
        d.say("MAIL FROM:<a@example.net> SIZE=99999999999999999999"),
        ["552 5.3.4"]
    );
    assert_eq!(d.say("MAIL FROM:<a@example.net> SIZE=10000"), ["250 2.1.0"]);
}

#[test]
fn mail_parameter_errors() {
    let mut d = mx_ready();
    assert_eq!(d.say("MAIL FROM:<a@example.net> FOO=BAR"), ["555 5.5.4"]);
    assert_eq!(d.say("MAIL FROM:<a@example.net> SIZE=x"), ["501 5.5.4"]);
    assert_eq!(
        d.say("MAIL FROM:<a@example.net> BODY=BINARYMIME"),
        ["501 5.5.4"]
    );
    assert_eq!(
        d.say("MAIL FROM:<a@example.net> SIZE=1 SIZE=2"),
        ["501 5.5.4"]
    );
    assert_eq!(d.say("MAIL FROM:<a@example.net>garbage"), ["501 5.5.4"]);
    assert_eq!(
        d.say("MAIL FROM:<a@example.net> BODY=8BITMIME SIZE=100"),
        ["250 2.1.0"]
    );
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    assert_eq!(d.say("DATA"), ["354"]);
    d.push(b"x\r\n.\r\n");
    let params = &d.messages[0].envelope.params;
    assert_eq!(params.body, Body::EightBitMime);
    assert_eq!(params.size, Some(100));
}

#[test]
fn rcpt_parameters_are_555() {
    let mut d = mx_in_transaction();
    assert_eq!(
        d.say("RCPT TO:<alice@example.com> NOTIFY=NEVER"),
        ["555 5.5.4"]
    );
    assert_eq!(
        d.say("RCPT TO:<alice@example.com> ORCPT=rfc822;alice@example.com"),
        ["555 5.5.4"]
    );
    assert!(d.lookups.is_empty());
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
}

#[test]
fn non_ascii_addresses_need_smtputf8() {
    let mut d = mx_ready();
    assert_eq!(d.say("MAIL FROM:<jöran@example.net>"), ["553 5.6.7"]);
    assert_eq!(d.say("MAIL FROM:<a@exämple.net>"), ["553 5.6.7"]);
    assert_eq!(d.say("MAIL FROM:<a@example.net>"), ["250 2.1.0"]);
    assert_eq!(d.say("RCPT TO:<jöran@example.com>"), ["553 5.6.7"]);
    assert!(d.lookups.is_empty());
    assert_eq!(d.say("RSET"), ["250 2.0.0"]);
    assert_eq!(
        d.say("MAIL FROM:<jöran@example.net> SMTPUTF8"),
        ["250 2.1.0"]
    );
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    // Accepted by syntax, then refused by the store: unknown local user.
    assert_eq!(d.say("RCPT TO:<jöran@example.com>"), ["550 5.1.1"]);
    assert_eq!(d.say("DATA"), ["354"]);
    d.push("Subject: é\r\n.\r\n".as_bytes());
    let env = &d.messages[0].envelope;
    assert!(env.params.smtputf8);
    assert_eq!(env.protocol(), "UTF8SMTP");
}

#[test]
fn recipient_limit_is_452() {
    let mut d = mx_with(|c| c.max_recipients = 3);
    assert_eq!(d.say("MAIL FROM:<a@example.net>"), ["250 2.1.0"]);
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    // Refused recipients do not count.
    assert_eq!(d.say("RCPT TO:<nobody@example.com>"), ["550 5.1.1"]);
    assert_eq!(d.say("RCPT TO:<bob@example.com>"), ["250 2.1.5"]);
    assert_eq!(d.say("RCPT TO:<Postmaster>"), ["250 2.1.5"]);
    assert_eq!(d.say("RCPT TO:<postmaster@example.com>"), ["452 4.5.3"]);
    assert_eq!(d.say("RCPT TO:<Postmaster>"), ["452 4.5.3"]);
    assert_eq!(d.lookups.len(), 3, "no lookup once the limit is reached");
    assert_eq!(d.say("DATA"), ["354"]);
    assert_eq!(statuses(&d.push(b"x\r\n.\r\n")), ["250 2.0.0"]);
    assert_eq!(d.messages[0].envelope.recipients.len(), 3);
}

// ----- DATA -----

#[test]
fn data_normal_message_is_queued() {
    let mut d = mx_in_transaction();
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    assert_eq!(d.say("RCPT TO:<bob@example.com>"), ["250 2.1.5"]);
    assert_eq!(
        d.push(b"DATA\r\n"),
        ["354 End data with <CR><LF>.<CR><LF>\r\n"]
    );
    assert!(d.session.in_message());
    let body = b"Subject: test\r\n\r\n..leading dot\r\n.x\r\n...\r\nend\r\n.\r\n";
    assert_eq!(d.push(body), ["250 2.0.0 Ok: queued as Q1\r\n"]);
    assert!(!d.session.in_message());
    assert_eq!(d.messages.len(), 1);
    let m = &d.messages[0];
    assert_eq!(m.id, "Q1");
    assert_eq!(
        m.content,
        b"Subject: test\r\n\r\n.leading dot\r\nx\r\n..\r\nend\r\n"
    );
    assert_eq!(
        m.envelope.from,
        ReversePath::Mailbox(mailbox("sender", "example.net"))
    );
    assert_eq!(
        m.envelope.recipients,
        [
            ForwardPath::Mailbox(mailbox("alice", "example.com")),
            ForwardPath::Mailbox(mailbox("bob", "example.com"))
        ]
    );
    assert_eq!(m.envelope.helo, "client.example");
    assert!(m.envelope.esmtp);
    assert_eq!(d.begun, 1);
    assert_eq!(d.aborted, 0);
    // The transaction is over: a new one starts from MAIL.
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["503 5.5.1"]);
    assert_eq!(d.say("MAIL FROM:<>"), ["250 2.1.0"]);
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    assert_eq!(d.say("DATA"), ["354"]);
    assert_eq!(d.push(b".\r\n"), ["250 2.0.0 Ok: queued as Q2\r\n"]);
    assert_eq!(d.messages[1].content, b"");
}

/// Issue 9: a session that received a big message and then waits for its
/// next command holds no more input buffer than one that sent nothing.
#[test]
fn input_buffer_is_released_after_a_big_message() {
    let mut d = mx_ready();
    d.session.cfg.max_message_size = 1 << 20;
    assert_eq!(d.say("MAIL FROM:<sender@example.net>"), ["250 2.1.0"]);
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    assert_eq!(d.say("DATA"), ["354"]);
    let line = [b'x'; 998];
    let mut chunk = Vec::new();
    for _ in 0..16 {
        chunk.extend_from_slice(&line);
        chunk.extend_from_slice(b"\r\n");
    }
    for _ in 0..8 {
        assert!(d.push(&chunk).is_empty());
        assert!(
            d.session.input_capacity() >= chunk.len(),
            "a message's reads need room"
        );
    }
    assert_eq!(d.push(b".\r\n"), ["250 2.0.0 Ok: queued as Q1\r\n"]);
    assert_eq!(d.messages[0].content.len(), 8 * chunk.len());
    assert!(
        d.session.input_capacity() <= 1024,
        "idle after the message: {} bytes held",
        d.session.input_capacity()
    );
    // Pipelined commands still work from the small buffer, and a partial
    // line is kept until its end arrives.
    assert_eq!(
        d.push(b"MAIL FROM:<>\r\nRCPT TO:<alice@example.com>\r\nDA"),
        ["250 2.1.0 Sender ok\r\n", "250 2.1.5 Recipient ok\r\n"]
    );
    assert_eq!(
        d.push(b"TA\r\n"),
        ["354 End data with <CR><LF>.<CR><LF>\r\n"]
    );
}

#[test]
fn data_helo_session_is_smtp() {
    let mut d = Driver::mx();
    assert_eq!(d.say("HELO old.example"), ["250"]);
    assert_eq!(d.say("MAIL FROM:<a@example.net>"), ["250 2.1.0"]);
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    assert_eq!(d.say("DATA"), ["354"]);
    d.push(b"x\r\n.\r\n");
    let env = &d.messages[0].envelope;
    assert!(!env.esmtp);
    assert_eq!(env.helo, "old.example");
    assert_eq!(env.protocol(), "SMTP");
}

#[test]
fn data_pipelined_with_envelope() {
    let mut d = mx_ready();
    let r = d.push(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\nhello\r\n.\r\nQUIT\r\n");
    assert_eq!(
        statuses(&r),
        ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"]
    );
    assert_eq!(d.messages[0].content, b"hello\r\n");
    assert!(d.closed);
}

#[test]
fn data_bare_lf_is_554_and_stream_stays_in_sync() {
    let mut d = mx_in_transaction();
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    let r = d.push(b"DATA\r\nline one\nline two\r\n.\r\nNOOP\r\n");
    assert_eq!(statuses(&r), ["354", "554 5.6.0", "250 2.0.0"]);
    assert_eq!(d.begun, 1);
    assert_eq!(d.aborted, 1);
    assert!(d.messages.is_empty());
    assert!(!d.events.iter().any(|e| matches!(e, Event::EndMessage(_))));
    // The transaction was reset.
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["503 5.5.1"]);
}

#[test]
fn data_bare_cr_is_554() {
    let mut d = mx_in_transaction();
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    let r = d.push(b"DATA\r\na\rb\r\n.\r\nNOOP\r\n");
    assert_eq!(statuses(&r), ["354", "554 5.6.0", "250 2.0.0"]);
    assert_eq!(d.aborted, 1);
    assert!(d.messages.is_empty());
}

#[test]
fn data_smuggling_is_not_a_command() {
    for body in [
        &b"a\r\n.\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<x@example.org>\r\n.\r\n"[..],
        b"a\n.\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<x@example.org>\r\n.\r\n",
        b"a\n.\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<x@example.org>\r\n.\r\n",
        b"a\r\n.\rMAIL FROM:<evil@example.org>\r\nRCPT TO:<x@example.org>\r\n.\r\n",
        b"a\r.\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<x@example.org>\r\n.\r\n",
    ] {
        let mut d = mx_in_transaction();
        assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
        assert_eq!(d.say("DATA"), ["354"]);
        let r = d.push(body);
        assert_eq!(
            statuses(&r),
            ["554 5.6.0"],
            "body {:?}",
            String::from_utf8_lossy(body)
        );
        assert!(!d.all_statuses()[3..].iter().any(|s| s == "250 2.1.0"));
        assert!(
            d.lookups
                .iter()
                .all(|m| m.domain != Domain::Name("example.org".into()))
        );
        assert!(d.messages.is_empty());
        assert_eq!(d.aborted, 1);
        assert_eq!(d.say("NOOP"), ["250 2.0.0"]);
    }
}

#[test]
fn data_too_big_is_one_552_after_the_final_dot() {
    let mut d = mx_in_transaction();
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    assert_eq!(d.say("DATA"), ["354"]);
    let mut body = Vec::new();
    while body.len() <= 12_000 {
        body.extend_from_slice(b"MAIL FROM:<x@y.z>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n");
    }
    // Fed in pieces: nothing may be answered before the final dot.
    for piece in body.chunks(700) {
        assert!(d.push(piece).is_empty());
    }
    assert_eq!(
        statuses(&d.push(b".\r\nNOOP\r\n")),
        ["552 5.3.4", "250 2.0.0"]
    );
    assert_eq!(d.aborted, 1);
    assert!(d.messages.is_empty());
    assert_eq!(d.lookups.len(), 1);
}

#[test]
fn data_exactly_max_size_is_accepted() {
    let mut d = mx_with(|c| c.max_message_size = 100);
    assert_eq!(d.say("MAIL FROM:<a@example.net>"), ["250 2.1.0"]);
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    assert_eq!(d.say("DATA"), ["354"]);
    let mut body = vec![b'a'; 98];
    body.extend_from_slice(b"\r\n.\r\n");
    assert_eq!(statuses(&d.push(&body)), ["250 2.0.0"]);
    assert_eq!(d.messages[0].content.len(), 100);
    assert_eq!(d.say("MAIL FROM:<a@example.net>"), ["250 2.1.0"]);
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    assert_eq!(d.say("DATA"), ["354"]);
    let mut body = vec![b'a'; 99];
    body.extend_from_slice(b"\r\n.\r\n");
    assert_eq!(statuses(&d.push(&body)), ["552 5.3.4"]);
}

#[test]
fn data_line_too_long_is_554() {
    let mut d = mx_in_transaction();
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    assert_eq!(d.say("DATA"), ["354"]);
    // 998 octets + CRLF = 1000: the longest allowed line.
    let mut body = vec![b'a'; 998];
    body.extend_from_slice(b"\r\n.\r\n");
    assert_eq!(statuses(&d.push(&body)), ["250 2.0.0"]);
    assert_eq!(d.say("MAIL FROM:<a@example.net>"), ["250 2.1.0"]);
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    assert_eq!(d.say("DATA"), ["354"]);
    let mut body = vec![b'a'; 999];
    body.extend_from_slice(b"\r\nNOOP\r\n.\r\nNOOP\r\n");
    assert_eq!(statuses(&d.push(&body)), ["554 5.6.0", "250 2.0.0"]);
    assert_eq!(d.aborted, 1);
    assert_eq!(d.messages.len(), 1);
}

#[test]

fn data_line_limit_does_not_count_the_stuffed_dot() {
    // RFC 5321 4.5.3.1.6: 1000 octets including CRLF, "not counting the
    // leading dot duplicated for transparency". A 1000-octet line that starts
    // with '.' is sent as 1001 octets on the wire and must be accepted.
    let mut d = mx_in_transaction();
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    assert_eq!(d.say("DATA"), ["354"]);
    let mut body = b"..".to_vec();
    body.extend_from_slice(&[b'a'; 997]);
    body.extend_from_slice(b"\r\n.\r\n");
    assert_eq!(statuses(&d.push(&body)), ["250 2.0.0"]);
    let mut expected = b".".to_vec();
    expected.extend_from_slice(&[b'a'; 997]);
    expected.extend_from_slice(b"\r\n");
    assert_eq!(d.messages[0].content, expected);
}

#[test]

fn data_first_error_does_not_depend_on_read_boundaries() {
    // 36 octets, then a 20-octet run: the size limit (40) is crossed at its
    // 5th octet, the line limit (16 with CRLF) at its 15th. The first error
    // is the size, whichever way the bytes arrive: 552 5.3.4 both times.
    let body: &[u8] = b"aaaaaaaaaa\r\naaaaaaaaaa\r\naaaaaaaaaa\r\nbbbbbbbbbbbbbbbbbbbb\r\n.\r\n";
    let mut got = Vec::new();
    for bytewise in [false, true] {
        let mut d = mx_with(|c| {
            c.max_message_size = 40;
            c.max_text_line = 16;
        });
        assert_eq!(d.say("MAIL FROM:<a@example.net>"), ["250 2.1.0"]);
        assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
        assert_eq!(d.say("DATA"), ["354"]);
        let r = if bytewise {
            d.push_bytewise(body)
        } else {
            d.push(body)
        };
        got.push(statuses(&r));
    }
    assert_eq!(got, [["552 5.3.4"], ["552 5.3.4"]]);
}

#[test]
fn data_without_recipients_is_554() {
    let mut d = mx_in_transaction();
    assert_eq!(d.say("RCPT TO:<carol@example.org>"), ["554 5.7.1"]);
    // RFC 5321 3.3: no valid recipients → 554 (with 5.5.1).
    assert_eq!(d.push(b"DATA\r\n"), ["554 5.5.1 No valid recipients\r\n"]);
    assert_eq!(d.begun, 0);
    assert!(!d.session.in_message());
    // The transaction is still open: a valid RCPT makes DATA possible.
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    assert_eq!(d.say("DATA"), ["354"]);
}

#[test]
fn data_without_mail_is_503() {
    let mut d = mx_ready();
    assert_eq!(d.say("DATA"), ["503 5.5.1"]);
    assert_eq!(d.begun, 0);
    assert_eq!(d.say("DATA now"), ["501 5.5.4"]);
}

#[test]
fn data_enqueue_failures() {
    let mut d = mx_in_transaction();
    d.enqueue_outcome = Some(EnqueueOutcome::TemporaryFailure);
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    assert_eq!(d.say("DATA"), ["354"]);
    assert_eq!(statuses(&d.push(b"x\r\n.\r\n")), ["451 4.3.0"]);
    d.enqueue_outcome = Some(EnqueueOutcome::InsufficientStorage);
    assert_eq!(d.say("MAIL FROM:<a@example.net>"), ["250 2.1.0"]);
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    assert_eq!(d.say("DATA"), ["354"]);
    assert_eq!(statuses(&d.push(b"x\r\n.\r\n")), ["452 4.3.1"]);
    // The transaction ended either way.
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["503 5.5.1"]);
}

#[test]
fn data_eof_aborts_the_message() {
    let mut d = mx_in_transaction();
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    assert_eq!(d.say("DATA"), ["354"]);
    assert!(d.push(b"Subject: half\r\nbody").is_empty());
    assert!(d.eof().is_empty());
    assert!(d.closed);
    assert_eq!(d.aborted, 1);
    assert!(d.messages.is_empty());
    let tail: Vec<_> = d.events.iter().rev().take(2).cloned().collect();
    assert_eq!(tail, [Event::Close, Event::AbortMessage]);
}

// ----- BDAT (RFC 3030) -----

fn bdat_ready() -> Driver {
    let mut d = mx_in_transaction();
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    d
}

#[test]
fn bdat_two_chunks_and_last() {
    let mut d = bdat_ready();
    let r = d.push(b"BDAT 12\r\nSubject: x\r\nBDAT 8\r\n\r\nbody\r\nBDAT 3 LAST\r\nend");
    assert_eq!(
        r,
        [
            "250 2.0.0 12 octets received\r\n",
            "250 2.0.0 20 octets received\r\n",
            "250 2.0.0 Ok: queued as Q1\r\n"
        ]
    );
    // Content ending mid-line gets a CRLF.
    assert_eq!(d.messages[0].content, b"Subject: x\r\n\r\nbody\r\nend\r\n");
    assert_eq!(d.begun, 1);
    assert_eq!(d.aborted, 0);
    // Dots are not special in BDAT.
    assert_eq!(d.say("MAIL FROM:<a@example.net>"), ["250 2.1.0"]);
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    assert_eq!(
        statuses(&d.push(b"BDAT 10 LAST\r\n..a\r\n.\r\n\r\n")),
        ["250 2.0.0"]
    );
    assert_eq!(d.messages[1].content, b"..a\r\n.\r\n\r\n");
}

#[test]
fn bdat_zero_last() {
    let mut d = bdat_ready();
    assert_eq!(
        statuses(&d.push(b"BDAT 5\r\nabc\r\nBDAT 0 LAST\r\n")),
        ["250 2.0.0", "250 2.0.0"]
    );
    assert_eq!(d.messages[0].content, b"abc\r\n");
    assert_eq!(d.say("MAIL FROM:<a@example.net>"), ["250 2.1.0"]);
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    assert_eq!(
        d.push(b"BDAT 0 LAST\r\n"),
        ["250 2.0.0 Ok: queued as Q2\r\n"]
    );
    assert_eq!(d.messages[1].content, b"");
}

#[test]
fn bdat_without_mail_is_read_and_discarded() {
    let mut d = mx_ready();
    let r = d.push(b"BDAT 6\r\nQUIT\r\nNOOP\r\n");
    assert_eq!(statuses(&r), ["503 5.5.1", "250 2.0.0"]);
    assert!(!d.closed, "the chunk's QUIT must not be executed");
    assert_eq!(d.begun, 0);
    // Split: the discarded chunk arrives in pieces.
    let r = d.push_pieces([&b"BDAT 6 LAST\r\nQU"[..], b"IT", b"\r\nNOOP\r\n"]);
    assert_eq!(statuses(&r), ["503 5.5.1", "250 2.0.0"]);
    assert!(!d.closed);
}

#[test]
fn bdat_without_recipients_is_discarded() {
    let mut d = mx_in_transaction();
    let r = d.push(b"BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n");
    assert_eq!(statuses(&r), ["554 5.5.1", "250 2.0.0"]);
    assert!(!d.closed);
    assert_eq!(d.begun, 0);
}

#[test]
fn bdat_chunk_over_max_is_read_then_552() {
    let mut d = bdat_ready();
    let mut input = b"BDAT 10001\r\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', 9_995));
    input.extend_from_slice(b"QUIT\r\n");
    assert_eq!(input.len(), 12 + 10_001);
    let r = d.push(&input);
    assert_eq!(statuses(&r), ["552 5.3.4"]);
    assert!(!d.closed);
    assert_eq!(d.begun, 1);
    assert_eq!(d.aborted, 1);
    // The transaction failed: the next chunk is refused (and still read).
    assert_eq!(statuses(&d.push(b"BDAT 4 LAST\r\nQUIT")), ["503 5.5.1"]);
    assert!(!d.closed);
    assert!(d.messages.is_empty());
}

#[test]
fn bdat_chunks_over_max_in_total_are_552() {
    let mut d = bdat_ready();
    // Lines of 100 octets: only the total size is over the limit.
    let line = |c: u8| {
        let mut l = vec![c; 98];
        l.extend_from_slice(b"\r\n");
        l
    };
    let mut input = b"BDAT 6000\r\n".to_vec();
    input.extend(std::iter::repeat_n(line(b'x'), 60).flatten());
    input.extend_from_slice(b"BDAT 5000 LAST\r\n");
    input.extend(std::iter::repeat_n(line(b'y'), 50).flatten());
    let r = d.push(&input);
    assert_eq!(statuses(&r), ["250 2.0.0", "552 5.3.4"]);
    assert_eq!(d.aborted, 1);
    assert!(d.messages.is_empty());
}

#[test]
fn data_after_bdat_is_503() {
    let mut d = bdat_ready();
    assert_eq!(statuses(&d.push(b"BDAT 3\r\nabc")), ["250 2.0.0"]);
    assert_eq!(d.say("DATA"), ["503 5.5.1"]);
    assert!(!d.session.in_message());
    // RCPT is refused once content has started.
    assert_eq!(d.say("RCPT TO:<bob@example.com>"), ["503 5.5.1"]);
    // The transaction survives: it can still be finished.
    assert_eq!(statuses(&d.push(b"BDAT 2 LAST\r\nde")), ["250 2.0.0"]);
    assert_eq!(d.messages[0].content, b"abcde\r\n");
}

#[test]
fn bdat_bad_syntax_closes() {
    for line in [
        "BDAT x",
        "BDAT",
        "BDAT 1 FIRST",
        "BDAT -1",
        "BDAT 1 LAST extra",
    ] {
        let mut d = bdat_ready();
        let r = d.push(format!("{line}\r\nNOOP\r\n").as_bytes());
        assert_eq!(statuses(&r), ["501 5.5.4"], "{line}");
        assert!(d.closed, "{line}");
        assert!(matches!(d.events.last(), Some(Event::ReplyAndClose(_))));
    }
}

#[test]
fn bdat_bad_syntax_after_first_chunk_aborts() {
    let mut d = bdat_ready();
    let r = d.push(b"BDAT 3\r\nabcBDAT x\r\n");
    assert_eq!(statuses(&r), ["250 2.0.0", "501 5.5.4"]);
    assert!(d.closed);
    assert_eq!(d.aborted, 1);
}

#[test]
fn rset_between_chunks_aborts() {
    let mut d = bdat_ready();
    assert_eq!(statuses(&d.push(b"BDAT 3\r\nabc")), ["250 2.0.0"]);
    assert_eq!(d.say("RSET"), ["250 2.0.0"]);
    assert_eq!(d.aborted, 1);
    let tail: Vec<_> = d.events.iter().rev().take(2).cloned().collect();
    assert_eq!(tail[1], Event::AbortMessage);
    assert_eq!(statuses(&d.push(b"BDAT 2 LAST\r\nde")), ["503 5.5.1"]);
    assert!(d.messages.is_empty());
}

#[test]
fn ehlo_between_chunks_aborts() {
    let mut d = bdat_ready();
    assert_eq!(statuses(&d.push(b"BDAT 3\r\nabc")), ["250 2.0.0"]);
    assert_eq!(d.say("EHLO client.example"), ["250"]);
    assert_eq!(d.aborted, 1);
    assert_eq!(statuses(&d.push(b"BDAT 2 LAST\r\nde")), ["503 5.5.1"]);
}

#[test]
fn bdat_bare_lf_is_554() {
    let mut d = bdat_ready();
    let r = d.push(b"BDAT 5\r\na\nb\r\nNOOP\r\n");
    assert_eq!(statuses(&r), ["554 5.6.0", "250 2.0.0"]);
    assert_eq!(d.aborted, 1);
    assert_eq!(statuses(&d.push(b"BDAT 1 LAST\r\nx")), ["503 5.5.1"]);
}

#[test]
fn bdat_line_too_long_is_554() {
    let mut d = bdat_ready();
    let mut input = b"BDAT 1001 LAST\r\n".to_vec();
    input.extend(std::iter::repeat_n(b'a', 999));
    input.extend_from_slice(b"\r\n");
    assert_eq!(statuses(&d.push(&input)), ["554 5.6.0"]);
    assert_eq!(d.aborted, 1);
}

#[test]
fn bdat_eof_mid_chunk_aborts() {
    let mut d = bdat_ready();
    assert!(d.push(b"BDAT 100\r\nonly part").is_empty());
    assert!(d.session.in_message());
    assert!(d.eof().is_empty());
    assert!(d.closed);
    assert_eq!(d.aborted, 1);
}

#[test]

fn bdat_bare_cr_at_end_of_last_chunk() {
    // The last chunk ends with a bare CR that no LF can follow. RFC 5321
    // 2.3.8 (and this crate's policy, data.rs): CR only as part of CRLF; a
    // bare CR anywhere rejects the message rather than being normalised.
    let mut d = bdat_ready();
    let r = d.push(b"BDAT 4 LAST\r\nabc\r");
    assert_eq!(statuses(&r), ["554 5.6.0"], "queued: {:?}", d.messages);
    assert_eq!(d.aborted, 1);
    assert!(d.messages.is_empty());
}

// ----- miscellaneous commands -----

#[test]
fn simple_commands() {
    let mut d = mx_ready();
    assert_eq!(d.say("VRFY alice"), ["252 2.0.0"]);
    assert_eq!(d.say("EXPN staff"), ["502 5.5.1"]);
    assert_eq!(d.say("HELP"), ["214 2.0.0"]);
    assert_eq!(d.say("NOOP"), ["250 2.0.0"]);
    assert_eq!(d.say("NOOP with a string"), ["250 2.0.0"]);
    assert_eq!(d.say("noop"), ["250 2.0.0"]);
    assert_eq!(d.say("RSET"), ["250 2.0.0"]);
    assert_eq!(d.say("RSET now"), ["501 5.5.4"]);
    assert!(d.lookups.is_empty(), "VRFY must not look anything up");
    assert_eq!(d.push(b"QUIT\r\n"), ["221 2.0.0 Bye\r\n"]);
    assert!(d.closed);
    assert!(matches!(d.events.last(), Some(Event::ReplyAndClose(_))));
}

#[test]
fn quit_stops_reading() {
    let mut d = mx_ready();
    let r = d.push(b"QUIT\r\nNOOP\r\nMAIL FROM:<a@example.net>\r\n");
    assert_eq!(statuses(&r), ["221 2.0.0"]);
    assert!(d.closed);
    assert!(d.push(b"NOOP\r\n").is_empty());
    assert!(d.eof().is_empty());
}

#[test]
fn quit_with_argument_is_501() {
    let mut d = mx_ready();
    assert_eq!(d.say("QUIT now"), ["501 5.5.4"]);
    assert!(!d.closed);
}

#[test]
fn rset_clears_the_transaction() {
    let mut d = mx_in_transaction();
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    assert_eq!(d.say("RSET"), ["250 2.0.0"]);
    assert_eq!(d.say("DATA"), ["503 5.5.1"]);
    assert_eq!(d.say("MAIL FROM:<a@example.net>"), ["250 2.1.0"]);
    assert_eq!(d.aborted, 0, "no message was started");
}

#[test]
fn http_request_is_554_and_close() {
    for line in [
        "GET / HTTP/1.1",
        "POST /submit HTTP/1.0",
        "CONNECT example.org:25 HTTP/1.1",
    ] {
        let mut d = Driver::mx();
        let r = d.push(format!("{line}\r\nHost: example.com\r\n\r\n").as_bytes());
        assert_eq!(statuses(&r), ["554 5.7.0"], "{line}");
        assert!(d.closed);
    }
}

#[test]
fn unknown_command_is_500() {
    let mut d = mx_ready();
    assert_eq!(d.say("FOO"), ["500 5.5.2"]);
    assert_eq!(d.say(""), ["500 5.5.2"]);
    assert_eq!(d.say("GET"), ["500 5.5.2"]);
    assert_eq!(statuses(&d.push(b"NO\xffOP\r\n")), ["500 5.5.2"]);
    assert_eq!(d.say("NOOP"), ["250 2.0.0"]);
}

#[test]
fn command_line_too_long_is_500_and_next_line_works() {
    let mut d = mx_ready();
    let long = format!("NOOP {}\r\nNOOP\r\n", "x".repeat(600));
    assert_eq!(
        statuses(&d.push(long.as_bytes())),
        ["500 5.5.0", "250 2.0.0"]
    );
    // In pieces, with the CRLF split.
    let long = format!("MAIL FROM:<{}@example.net>\r", "x".repeat(600));
    let r = d.push_pieces([long.as_bytes(), b"\nNOOP\r\n"]);
    assert_eq!(statuses(&r), ["500 5.5.0", "250 2.0.0"]);
    // A long line is reported once.
    let r = d.push_bytewise(format!("{}\r\nNOOP\r\n", "y".repeat(2000)).as_bytes());
    assert_eq!(statuses(&r), ["500 5.5.0", "250 2.0.0"]);
}

#[test]
fn command_line_length_boundary() {
    let mut d = mx_ready();
    // 512 octets including CRLF is allowed (RFC 5321 4.5.3.1.4).
    let ok = format!("NOOP {}", "x".repeat(512 - 2 - 5));
    assert_eq!(ok.len() + 2, 512);
    assert_eq!(d.say(&ok), ["250 2.0.0"]);
    let too_long = format!("NOOP {}", "x".repeat(512 - 1 - 5));
    assert_eq!(d.say(&too_long), ["500 5.5.0"]);
    assert_eq!(
        statuses(&d.push_bytewise(format!("{ok}\r\n").as_bytes())),
        ["250 2.0.0"]
    );
    assert_eq!(
        statuses(&d.push_bytewise(format!("{too_long}\r\n").as_bytes())),
        ["500 5.5.0"]
    );
}

#[test]
fn bare_lf_in_command_line_is_500() {
    let mut d = mx_ready();
    let r = d.push(b"NOOP\nQUIT\r\n");
    assert_eq!(statuses(&r), ["500 5.5.2"]);
    assert!(!d.closed, "QUIT after a bare LF must not be executed");
    let r = d.push(b"NOOP\rQUIT\r\n");
    assert_eq!(statuses(&r), ["500 5.5.2"]);
    assert!(!d.closed);
    assert_eq!(d.say("NOOP"), ["250 2.0.0"]);
}

#[test]
fn error_budget_closes_with_421() {
    let mut d = mx_with(|c| c.max_errors = 3);
    assert_eq!(d.say("FOO"), ["500 5.5.2"]);
    assert_eq!(d.say("MAIL FROM:<a@example.net> FOO=1"), ["555 5.5.4"]);
    // 4xx and 2xx replies do not count.
    assert_eq!(d.say("MAIL FROM:<a@example.net>"), ["250 2.1.0"]);
    assert_eq!(d.say("RCPT TO:<x@unavailable.example>"), ["451 4.3.0"]);
    let r = d.push(b"RCPT TO:<carol@example.org>\r\nNOOP\r\n");
    assert_eq!(statuses(&r), ["554 5.7.1", "421 4.7.0"]);
    assert!(d.closed);
    assert!(matches!(d.events.last(), Some(Event::ReplyAndClose(t)) if t.starts_with("421 4.7.0")));
}

#[test]
fn error_budget_during_a_message_aborts_it() {
    let mut d = mx_with(|c| c.max_errors = 2);
    assert_eq!(d.say("FOO"), ["500 5.5.2"]);
    assert_eq!(d.say("MAIL FROM:<a@example.net>"), ["250 2.1.0"]);
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    assert_eq!(statuses(&d.push(b"BDAT 3\r\nabc")), ["250 2.0.0"]);
    assert_eq!(statuses(&d.push(b"DATA\r\n")), ["503 5.5.1", "421 4.7.0"]);
    assert!(d.closed);
    assert_eq!(d.aborted, 1);
}

#[test]
fn ehlo_resets_the_transaction() {
    let mut d = mx_in_transaction();
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    assert_eq!(d.say("EHLO client.example"), ["250"]);
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["503 5.5.1"]);
    assert_eq!(d.say("DATA"), ["503 5.5.1"]);
    assert_eq!(d.say("MAIL FROM:<a@example.net>"), ["250 2.1.0"]);
}

#[test]
fn eof_in_command_state_closes_after_pending_commands() {
    let mut d = mx_ready();
    d.session.push(b"NOOP\r\nNOOP");
    let r = d.eof();
    assert_eq!(statuses(&r), ["250 2.0.0"]);
    assert!(d.closed);
    assert_eq!(d.events.last(), Some(&Event::Close));
}

#[test]
fn eof_during_sasl_closes() {
    let mut d = submissions_ready();
    assert_eq!(d.say("AUTH PLAIN"), ["334"]);
    assert!(d.eof().is_empty());
    assert!(d.closed);
    assert!(d.credentials.is_empty());
}

// ----- driver contract -----

#[test]
fn polling_while_awaiting_a_result_fails_safe() {
    let mut s = Session::new(config(Role::Mx), false);
    s.push(b"EHLO c\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<alice@example.com>\r\n");
    assert!(matches!(s.poll(), Action::Send(_)));
    assert_eq!(s.poll(), Action::CheckMailRate);
    s.mail_rate_result(QuotaOutcome::Granted);
    assert!(matches!(s.poll(), Action::Send(_)));
    assert_eq!(
        s.poll(),
        Action::CheckRecipient(mailbox("alice", "example.com"))
    );
    // The driver forgot recipient_result.
    assert_eq!(s.poll(), Action::SendAndClose(Reply::internal_error()));
    assert_eq!(s.poll(), Action::Close);
}

#[test]
fn unexpected_results_are_ignored() {
    let mut s = Session::new(config(Role::Submissions), true);
    s.auth_result(AuthOutcome::Success { user: ALICE.into() });
    s.recipient_result(crate::session::RecipientStatus::LocalExists);
    s.message_result(EnqueueOutcome::Queued { id: "X".into() });
    assert_eq!(s.authenticated_user(), None);
    assert_eq!(s.poll(), Action::NeedInput);
    s.push(b"NOOP\r\n");
    assert_eq!(s.poll(), Action::Send(Reply::ok()));
    assert_eq!(s.poll(), Action::NeedInput);
}

#[test]
fn push_after_close_is_ignored() {
    let mut s = Session::new(config(Role::Mx), false);
    s.push(b"QUIT\r\n");
    assert_eq!(s.poll(), Action::SendAndClose(Reply::bye()));
    s.push(b"NOOP\r\n");
    assert_eq!(s.poll(), Action::Close);
    s.eof();
    assert_eq!(s.poll(), Action::Close);
}

#[test]
fn starttls_with_argument_is_501() {
    let mut d = mx_ready();
    assert_eq!(d.say("STARTTLS now"), ["501 5.5.4"]);
    assert!(d.starttls_at.is_empty());
    assert!(!d.session.is_tls());
}

#[test]
fn envelope_protocol_keywords() {
    use crate::command::MailParams;
    use crate::session::Envelope;
    let base = Envelope {
        from: ReversePath::Null,
        params: MailParams::default(),
        recipients: vec![ForwardPath::Postmaster],
        helo: "c".into(),
        esmtp: true,
        tls: false,
        auth_user: None,
    };
    let with = |esmtp: bool, tls: bool, auth: bool, utf8: bool| Envelope {
        esmtp,
        tls,
        auth_user: auth.then(|| ALICE.to_owned()),
        params: MailParams {
            smtputf8: utf8,
            ..MailParams::default()
        },
        ..base.clone()
    };
    assert_eq!(with(false, false, false, false).protocol(), "SMTP");
    assert_eq!(with(true, false, false, false).protocol(), "ESMTP");
    assert_eq!(with(true, true, false, false).protocol(), "ESMTPS");
    assert_eq!(with(true, false, true, false).protocol(), "ESMTPA");
    assert_eq!(with(true, true, true, false).protocol(), "ESMTPSA");
    assert_eq!(with(true, false, false, true).protocol(), "UTF8SMTP");
    assert_eq!(with(true, true, false, true).protocol(), "UTF8SMTPS");
    assert_eq!(with(true, false, true, true).protocol(), "UTF8SMTPA");
    assert_eq!(with(true, true, true, true).protocol(), "UTF8SMTPSA");
}

// ----- sending plans and rates (issue 5) -----

#[test]
fn plan_limit_refuses_the_recipient_that_would_exceed_it() {
    let mut d = submissions_authed();
    d.quota_limit = Some(2);
    assert_eq!(d.say("MAIL FROM:<alice@example.com>"), ["250 2.1.0"]);
    assert_eq!(d.say("RCPT TO:<a@example.org>"), ["250 2.1.5"]);
    assert_eq!(d.say("RCPT TO:<b@example.org>"), ["250 2.1.5"]);
    let r = d.push(b"RCPT TO:<c@example.org>\r\n");
    assert_eq!(statuses(&r), ["451 4.7.1"]);
    assert!(
        r[0].contains("Sending limit reached for plan test (2/hour); try again in 1m"),
        "{r:?}"
    );
    // The accepted ones go out normally and are committed with the message.
    assert_eq!(d.say("DATA"), ["354"]);
    assert_eq!(d.say("hi\r\n."), ["250 2.0.0"]);
    assert_eq!(d.quota_committed, 2);
    assert_eq!(d.quota_reserved, 0);
    assert_eq!(d.quota_releases, 0);
    assert_eq!(d.messages[0].envelope.recipients.len(), 2);
}

#[test]
fn reservations_are_released_when_no_message_is_queued() {
    let mut d = submissions_authed();
    for end in ["RSET", "EHLO again.example"] {
        assert_eq!(d.say("MAIL FROM:<alice@example.com>"), ["250 2.1.0"]);
        assert_eq!(d.say("RCPT TO:<a@example.org>"), ["250 2.1.5"]);
        assert_eq!(d.quota_reserved, 1);
        d.say(end);
        assert_eq!(d.quota_reserved, 0, "{end} must release");
    }
    assert_eq!(d.quota_releases, 2);
    // A rejected message releases too.
    d.enqueue_outcome = Some(EnqueueOutcome::TemporaryFailure);
    assert_eq!(d.say("MAIL FROM:<alice@example.com>"), ["250 2.1.0"]);
    assert_eq!(d.say("RCPT TO:<a@example.org>"), ["250 2.1.5"]);
    assert_eq!(d.say("DATA"), ["354"]);
    assert_eq!(d.say("x\r\n."), ["451 4.3.0"]);
    assert_eq!(d.quota_releases, 3);
    assert_eq!(d.quota_committed, 0);
    // And so does a disconnect in the middle of a transaction.
    d.enqueue_outcome = None;
    assert_eq!(d.say("MAIL FROM:<alice@example.com>"), ["250 2.1.0"]);
    assert_eq!(d.say("RCPT TO:<a@example.org>"), ["250 2.1.5"]);
    d.eof();
    assert_eq!(d.quota_releases, 4);
    assert_eq!(d.quota_reserved, 0);
}

#[test]
fn unauthenticated_mx_recipients_are_not_counted() {
    let mut d = Driver::mx();
    d.quota_limit = Some(0);
    assert_eq!(d.say("EHLO c.example")[0], "250");
    assert_eq!(d.say("MAIL FROM:<x@example.net>"), ["250 2.1.0"]);
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["250 2.1.5"]);
    assert_eq!(d.mail_rate_checks, 1);
    assert_eq!(d.quota_reserved, 0);
}

#[test]
fn mx_message_rate_refusal_is_451_at_mail() {
    let mut d = Driver::mx();
    d.refuse_mail_rate = true;
    d.say("EHLO c.example");
    let r = d.push(b"MAIL FROM:<x@example.net>\r\n");
    assert_eq!(statuses(&r), ["451 4.7.1"]);
    // No transaction was opened.
    assert_eq!(d.say("RCPT TO:<alice@example.com>"), ["503 5.5.1"]);
    d.refuse_mail_rate = false;
    assert_eq!(d.say("MAIL FROM:<x@example.net>"), ["250 2.1.0"]);
}

#[test]
fn plan_limits_tighten_listener_limits() {
    let mut d = submissions_authed();
    d.session.set_account_limits(Some(1), Some(100));
    assert_eq!(
        d.say("MAIL FROM:<alice@example.com> SIZE=101"),
        ["552 5.3.4"]
    );
    assert_eq!(
        d.say("MAIL FROM:<alice@example.com> SIZE=100"),
        ["250 2.1.0"]
    );
    assert_eq!(d.say("RCPT TO:<a@example.org>"), ["250 2.1.5"]);
    assert_eq!(d.say("RCPT TO:<b@example.org>"), ["452 4.5.3"]);
    assert_eq!(d.say("DATA"), ["354"]);
    let body = format!("{}\r\n.", "x".repeat(200));
    assert_eq!(d.say(&body), ["552 5.3.4"]);
    // A plan can only tighten: larger values fall back to the listener's.
    d.session.set_account_limits(Some(10_000), Some(u64::MAX));
    assert_eq!(d.say("MAIL FROM:<alice@example.com>"), ["250 2.1.0"]);
}

// ----- sender ownership (issue 4) -----

#[test]
fn authenticated_sender_is_checked_at_mail() {
    let mut d = submissions_authed();
    d.denied_senders.push("bob@example.com".into());
    assert_eq!(d.say("MAIL FROM:<bob@example.com>"), ["553 5.7.1"]);
    assert_eq!(d.say("RCPT TO:<x@example.org>"), ["503 5.5.1"]);
    assert_eq!(d.say("MAIL FROM:<alice@example.com>"), ["250 2.1.0"]);
    assert_eq!(
        d.sender_checks,
        [
            (ALICE.to_owned(), "bob@example.com".to_owned()),
            (ALICE.to_owned(), "alice@example.com".to_owned())
        ]
    );
    // The null sender needs no ownership.
    d.say("RSET");
    assert_eq!(d.say("MAIL FROM:<>"), ["250 2.1.0"]);
    assert_eq!(d.sender_checks.len(), 2);
}

#[test]
fn unauthenticated_mx_sender_is_not_checked() {
    let mut d = mx_ready();
    assert_eq!(d.say("MAIL FROM:<bob@example.com>"), ["250 2.1.0"]);
    assert!(d.sender_checks.is_empty());
}

#[test]
fn refused_after_content_releases_and_replies() {
    let mut d = submissions_authed();
    d.enqueue_outcome = Some(EnqueueOutcome::Refused(Reply::header_from_not_owned()));
    assert_eq!(d.say("MAIL FROM:<alice@example.com>"), ["250 2.1.0"]);
    assert_eq!(d.say("RCPT TO:<x@example.org>"), ["250 2.1.5"]);
    assert_eq!(d.say("DATA"), ["354"]);
    assert_eq!(d.say("From: bob@example.com\r\n\r\nhi\r\n."), ["550 5.7.1"]);
    assert_eq!(d.quota_releases, 1);
    assert_eq!(d.say("RCPT TO:<x@example.org>"), ["503 5.5.1"]);
}
