//! Dialog tests of the issue 6 mechanisms through the scripted driver:
//! SCRAM-SHA-256, CRAM-MD5, XOAUTH2 and OAUTHBEARER, the per-listener
//! mechanism list and the RFC 4616 PLAIN examples.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::*;
use portcullis_proto::sasl::{cram, scram};
use portcullis_proto::{Mechanism, Role, SessionConfig};

fn ready(cfg: SessionConfig) -> Driver {
    let mut d = Driver::new(cfg, true);
    assert_eq!(d.say("EHLO client.example"), ["250"]);
    d
}

fn submissions() -> Driver {
    let mut cfg = config(Role::Submissions);
    cfg.mechanisms = Mechanism::ALL.to_vec();
    ready(cfg)
}

fn challenge_of(reply: &str) -> Vec<u8> {
    let text = reply.trim_end().strip_prefix("334 ").unwrap();
    STANDARD.decode(text).unwrap()
}

/// Runs a SCRAM exchange as a client would; returns the replies to the
/// client-final message and, on success, to the empty acknowledgement.
fn scram_login(d: &mut Driver, user: &str, password: &str) -> (Vec<String>, Option<String>) {
    scram_login_with(d, "SCRAM-SHA-256", "n,,", b"", user, password)
}

/// A SCRAM exchange with this GS2 header and channel-binding data.
fn scram_login_with(
    d: &mut Driver,
    mech: &str,
    gs2: &str,
    cb_data: &[u8],
    user: &str,
    password: &str,
) -> (Vec<String>, Option<String>) {
    let first_bare = format!("n={user},r=clientnonce123");
    let first = format!("{gs2}{first_bare}");
    let r = d.push(format!("AUTH {mech} {}\r\n", b64(first.as_bytes())).as_bytes());
    assert_eq!(r.len(), 1, "{r:?}");
    let server_first = String::from_utf8(challenge_of(&r[0])).unwrap();
    let mut fields = server_first.split(',');
    let nonce = fields
        .next()
        .unwrap()
        .strip_prefix("r=")
        .unwrap()
        .to_owned();
    assert!(nonce.starts_with("clientnonce123") && nonce.len() >= 14 + 24);
    let salt = STANDARD
        .decode(fields.next().unwrap().strip_prefix("s=").unwrap())
        .unwrap();
    let iterations: u32 = fields.next().unwrap()[2..].parse().unwrap();
    let mut cb = gs2.as_bytes().to_vec();
    cb.extend_from_slice(cb_data);
    let without_proof = format!("c={},r={nonce}", STANDARD.encode(&cb));
    let am = scram::auth_message(&first_bare, &server_first, &without_proof);
    let ck = scram::client_keys(password.as_bytes(), &salt, iterations);
    let proof = scram::client_proof(&ck, &am);
    let fin = format!("{without_proof},p={}", STANDARD.encode(proof));
    let r = d.push(format!("{}\r\n", b64(fin.as_bytes())).as_bytes());
    let server_final = r
        .first()
        .and_then(|s| s.strip_prefix("334 "))
        .map(|_| String::from_utf8(challenge_of(&r[0])).unwrap());
    (r, server_final)
}

#[test]
fn ehlo_lists_the_listener_mechanisms_in_order() {
    let mut cfg = config(Role::Submissions);
    cfg.mechanisms = vec![Mechanism::ScramSha256, Mechanism::Plain];
    let mut d = Driver::new(cfg, true);
    let r = d.push(b"EHLO c\r\n");
    assert!(r[0].contains("250 AUTH SCRAM-SHA-256 PLAIN\r\n"), "{r:?}");
    assert_eq!(d.say("AUTH LOGIN"), ["504 5.5.4"]);
    assert_eq!(d.say("AUTH CRAM-MD5"), ["504 5.5.4"]);
    assert_eq!(d.say("AUTH NOSUCH"), ["504 5.5.4"]);
    assert_eq!(
        d.say(&format!("AUTH plain {}", plain("", ALICE, ALICE_PASSWORD))),
        ["235 2.7.0"]
    );
}

#[test]
fn empty_mechanism_list_offers_no_auth() {
    let mut cfg = config(Role::Submissions);
    cfg.mechanisms = Vec::new();
    let mut d = Driver::new(cfg, true);
    let r = d.push(b"EHLO c\r\n");
    assert!(!r[0].contains("AUTH"), "{r:?}");
}

#[test]
fn no_mechanism_before_tls() {
    let mut d = Driver::submission();
    let r = d.push(b"EHLO c\r\n");
    assert!(!r[0].contains("AUTH"), "{r:?}");
    assert_eq!(d.say("AUTH SCRAM-SHA-256"), ["538 5.7.11"]);
    assert_eq!(d.say("AUTH OAUTHBEARER"), ["538 5.7.11"]);
}

#[test]
fn rfc4616_plain_examples() {
    // RFC 4616 4: "tim" / "tanstaaftanstaaf", with and without authzid.
    let c = portcullis_proto::sasl::decode_plain(b"\0tim\0tanstaaftanstaaf").unwrap();
    assert_eq!(
        (c.username.as_str(), c.password.expose()),
        ("tim", "tanstaaftanstaaf")
    );
    let c = portcullis_proto::sasl::decode_plain(b"Ursel\0Kurt\0xipj3plmq").unwrap();
    assert_eq!(c.authzid.as_deref(), Some("Ursel"));
    assert_eq!(c.username, "Kurt");
    assert_eq!(c.password.expose(), "xipj3plmq");
}

#[test]
fn scram_success_sends_server_signature_then_235() {
    let mut d = submissions();
    let (r, server_final) = scram_login(&mut d, ALICE, ALICE_PASSWORD);
    assert_eq!(statuses(&r), ["334"]);
    assert!(server_final.unwrap().starts_with("v="));
    assert_eq!(d.session.authenticated_user(), None, "not before the ack");
    assert_eq!(d.say(""), ["235 2.7.0"]);
    assert_eq!(d.session.authenticated_user(), Some(ALICE));
    let c = d.credentials.last().unwrap();
    assert_eq!(c.mechanism, Mechanism::ScramSha256);
    assert_eq!(
        c.verification,
        portcullis_proto::Verification::Matched(Some(portcullis_proto::CredentialRef::Main))
    );
}

#[test]
fn scram_wrong_password_gets_invalid_proof_then_535() {
    let mut d = submissions();
    let (r, server_final) = scram_login(&mut d, ALICE, "wrong");
    assert_eq!(statuses(&r), ["334"]);
    assert_eq!(server_final.as_deref(), Some("e=invalid-proof"));
    assert_eq!(d.say("*"), ["535 5.7.8"]);
    assert_eq!(d.session.authenticated_user(), None);
}

#[test]
fn scram_unknown_user_looks_like_a_wrong_password() {
    let mut d = submissions();
    let (_, server_final) = scram_login(&mut d, "nobody@example.com", "x");
    assert_eq!(server_final.as_deref(), Some("e=invalid-proof"));
    assert_eq!(d.say(""), ["535 5.7.8"]);
}

#[test]
fn scram_main_password_of_2fa_account_gets_534_app_password_matches() {
    let mut d = submissions();
    let (_, server_final) = scram_login(&mut d, TWOFA, TWOFA_MAIN_PASSWORD);
    assert_eq!(server_final.as_deref(), Some("e=invalid-proof"));
    assert_eq!(d.say(""), ["534 5.7.9"]);
    let (_, server_final) = scram_login(&mut d, TWOFA, TWOFA_APP_PASSWORD);
    assert!(server_final.unwrap().starts_with("v="));
    assert_eq!(d.say(""), ["235 2.7.0"]);
    assert_eq!(
        d.credentials.last().unwrap().verification,
        portcullis_proto::Verification::Matched(Some(portcullis_proto::CredentialRef::App(
            "phone".into()
        )))
    );
}

#[test]
fn scram_store_down_is_454() {
    let mut d = submissions();
    let first = format!("n,,n={DOWN},r=abc");
    assert_eq!(
        d.say(&format!("AUTH SCRAM-SHA-256 {}", b64(first.as_bytes()))),
        ["454 4.7.0"]
    );
}

#[test]
fn scram_protocol_errors() {
    let mut d = submissions();
    // Channel binding required but not offered.
    let first = b64(b"p=tls-exporter,,n=alice@example.com,r=abc");
    assert_eq!(d.say(&format!("AUTH SCRAM-SHA-256 {first}")), ["501 5.5.2"]);
    // Malformed first message.
    assert_eq!(
        d.say(&format!("AUTH SCRAM-SHA-256 {}", b64(b"n,,r=abc"))),
        ["501 5.5.2"]
    );
    // Without initial response: empty challenge first; cancel.
    assert_eq!(d.say("AUTH SCRAM-SHA-256"), ["334"]);
    assert_eq!(d.say("*"), ["501 5.0.0"]);
    // Wrong nonce in client-final.
    let first = format!("n,,n={ALICE},r=abc");
    assert_eq!(
        d.say(&format!("AUTH SCRAM-SHA-256 {}", b64(first.as_bytes()))),
        ["334"]
    );
    let fin = format!("c=biws,r=abcWRONG,p={}", STANDARD.encode([0u8; 32]));
    let r = d.push(format!("{}\r\n", b64(fin.as_bytes())).as_bytes());
    assert_eq!(challenge_of(&r[0]), b"e=other-error");
    assert_eq!(d.say(""), ["501 5.5.2"]);
    assert!(
        d.credentials.is_empty(),
        "no credential check for protocol errors"
    );
}

#[test]
fn scram_nonces_differ_between_exchanges() {
    let mut d = submissions();
    let first = b64(format!("n,,n={ALICE},r=abc").as_bytes());
    let a = d.push(format!("AUTH SCRAM-SHA-256 {first}\r\n").as_bytes());
    d.say("*");
    let b = d.push(format!("AUTH SCRAM-SHA-256 {first}\r\n").as_bytes());
    assert_ne!(a, b);
}

#[test]
fn scram_without_nonce_seed_fails_safe() {
    let mut s = portcullis_proto::Session::new(config(Role::Submissions), true);
    s.push(b"EHLO c\r\n");
    let first = b64(format!("n,,n={ALICE},r=abc").as_bytes());
    s.push(format!("AUTH SCRAM-SHA-256 {first}\r\n").as_bytes());
    let mut replies = Vec::new();
    loop {
        match s.poll() {
            portcullis_proto::Action::Send(r) => replies.push(r.code),
            portcullis_proto::Action::NeedInput => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(replies, [250, 454]);
}

#[test]
fn cram_md5_roundtrip() {
    let mut d = submissions();
    assert_eq!(d.say("AUTH CRAM-MD5 dGVzdA=="), ["501 5.5.2"]);
    let r = d.push(b"AUTH CRAM-MD5\r\n");
    let challenge = String::from_utf8(challenge_of(&r[0])).unwrap();
    assert!(challenge.starts_with('<') && challenge.ends_with("@mx.example.com>"));
    let hex = |d: [u8; 16]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let wrong = format!("{ALICE} {}", hex(cram::digest(b"nope", &challenge)));
    assert_eq!(d.say(&b64(wrong.as_bytes())), ["535 5.7.8"]);
    let r = d.push(b"AUTH CRAM-MD5\r\n");
    let challenge = String::from_utf8(challenge_of(&r[0])).unwrap();
    let good = format!(
        "{ALICE} {}",
        hex(cram::digest(ALICE_PASSWORD.as_bytes(), &challenge))
    );
    assert_eq!(d.say(&b64(good.as_bytes())), ["235 2.7.0"]);
}

fn oauthbearer(user: &str, token: &str) -> String {
    b64(format!("n,a={user},\x01host=mx\x01port=465\x01auth=Bearer {token}\x01\x01").as_bytes())
}

#[test]
fn oauthbearer_success_and_rfc7628_failure_dance() {
    let mut d = submissions();
    let r = d.push(format!("AUTH OAUTHBEARER {}\r\n", oauthbearer(ALICE, "bad")).as_bytes());
    let json = String::from_utf8(challenge_of(&r[0])).unwrap();
    assert!(json.contains("\"status\":\"invalid_token\""), "{json}");
    assert_eq!(d.say("AQ=="), ["535 5.7.8"]);
    assert_eq!(
        d.say(&format!(
            "AUTH OAUTHBEARER {}",
            oauthbearer(ALICE, ALICE_TOKEN)
        )),
        ["235 2.7.0"]
    );
    assert_eq!(d.session.authenticated_user(), Some(ALICE));
}

#[test]
fn xoauth2_with_and_without_initial_response() {
    let mut d = submissions();
    let msg = |tok: &str| b64(format!("user={ALICE}\x01auth=Bearer {tok}\x01\x01").as_bytes());
    assert_eq!(d.say("AUTH XOAUTH2"), ["334"]);
    let r = d.push(format!("{}\r\n", msg("bad")).as_bytes());
    assert_eq!(statuses(&r), ["334"]);
    assert_eq!(d.say(""), ["535 5.7.8"]);
    assert_eq!(
        d.say(&format!("AUTH XOAUTH2 {}", msg(ALICE_TOKEN))),
        ["235 2.7.0"]
    );
}

#[test]
fn failures_after_the_dance_count_towards_the_budget() {
    let mut d = submissions();
    for _ in 0..2 {
        d.push(format!("AUTH OAUTHBEARER {}\r\n", oauthbearer(ALICE, "bad")).as_bytes());
        assert_eq!(d.say("AQ=="), ["535 5.7.8"]);
    }
    d.push(format!("AUTH OAUTHBEARER {}\r\n", oauthbearer(ALICE, "bad")).as_bytes());
    assert_eq!(d.say("AQ=="), ["535 5.7.8", "421 4.7.0"]);
    assert!(d.closed);
}

#[test]
fn scram_plus_with_tls_exporter_channel_binding() {
    let mut cfg = config(Role::Submissions);
    cfg.mechanisms = vec![Mechanism::ScramSha256Plus, Mechanism::ScramSha256];
    let mut d = Driver::new(cfg.clone(), true);
    // Without channel-binding data, -PLUS is neither offered nor accepted.
    let r = d.push(b"EHLO c\r\n");
    assert!(r[0].contains("250 AUTH SCRAM-SHA-256\r\n"), "{r:?}");
    assert_eq!(d.say("AUTH SCRAM-SHA-256-PLUS"), ["504 5.5.4"]);
    // "y" is fine when -PLUS is not offered.
    let (_, fin) = scram_login_with(&mut d, "SCRAM-SHA-256", "y,,", b"", ALICE, ALICE_PASSWORD);
    assert!(fin.unwrap().starts_with("v="));
    assert_eq!(d.say(""), ["235 2.7.0"]);

    let exporter = [9u8; 32];
    let mut d = Driver::new(cfg, true);
    d.session.set_channel_binding(Some(exporter.to_vec()));
    let r = d.push(b"EHLO c\r\n");
    assert!(
        r[0].contains("250 AUTH SCRAM-SHA-256-PLUS SCRAM-SHA-256\r\n"),
        "{r:?}"
    );
    // Downgrade: the client supports binding, thinks we do not, but we do.
    let first = b64(format!("y,,n={ALICE},r=abc").as_bytes());
    assert_eq!(d.say(&format!("AUTH SCRAM-SHA-256 {first}")), ["501 5.5.2"]);
    // -PLUS needs p=tls-exporter.
    let first = b64(format!("p=tls-unique,,n={ALICE},r=abc").as_bytes());
    assert_eq!(
        d.say(&format!("AUTH SCRAM-SHA-256-PLUS {first}")),
        ["501 5.5.2"]
    );
    let first = b64(format!("n,,n={ALICE},r=abc").as_bytes());
    assert_eq!(
        d.say(&format!("AUTH SCRAM-SHA-256-PLUS {first}")),
        ["501 5.5.2"]
    );
    // Data from another TLS connection (a man in the middle): refused.
    let (_, fin) = scram_login_with(
        &mut d,
        "SCRAM-SHA-256-PLUS",
        "p=tls-exporter,,",
        &[8u8; 32],
        ALICE,
        ALICE_PASSWORD,
    );
    assert_eq!(fin.as_deref(), Some("e=channel-bindings-dont-match"));
    assert_eq!(d.say(""), ["501 5.5.2"]);
    let (_, fin) = scram_login_with(
        &mut d,
        "SCRAM-SHA-256-PLUS",
        "p=tls-exporter,,",
        &exporter,
        ALICE,
        ALICE_PASSWORD,
    );
    assert!(fin.unwrap().starts_with("v="));
    assert_eq!(d.say(""), ["235 2.7.0"]);
    assert_eq!(
        d.credentials.last().unwrap().mechanism,
        Mechanism::ScramSha256Plus
    );
}
