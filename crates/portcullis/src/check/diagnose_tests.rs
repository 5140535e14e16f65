//! One test per row of the table: the cause and the key advice.

use super::*;
use crate::check::reply::Reply;

fn ctx() -> Ctx {
    Ctx {
        host: "mail.example.com".to_owned(),
        port: 587,
        tls: TlsUsed::Starttls,
        user: Some("alice@example.com".to_owned()),
        from: Some("alice@example.com".to_owned()),
        portcullis: false,
    }
}

fn reply(code: u16, enhanced: Option<&str>, text: &str) -> Reply {
    Reply {
        code,
        enhanced: enhanced.map(str::to_owned),
        lines: vec![text.to_owned()],
    }
}

fn rejected_at(at: StepKind, r: Reply, ctx: &Ctx) -> Diagnosis {
    diagnose(&Failure::Rejected { at, reply: r }, ctx)
}

fn all_text(d: &Diagnosis) -> String {
    let mut text = d.what_happened.clone();
    for line in d.likely_causes.iter().chain(&d.what_to_do) {
        text.push('\n');
        text.push_str(line);
    }
    text
}

#[test]
fn wrong_credentials() {
    let d = rejected_at(
        StepKind::Auth,
        reply(535, Some("5.7.8"), "Authentication credentials invalid"),
        &ctx(),
    );
    assert_eq!(d.cause, "credentials_rejected");
    let text = all_text(&d);
    assert!(text.contains("full email address"), "{text}");
    assert!(text.contains("app password"), "{text}");
    assert!(text.contains("disabled"), "{text}");
    assert!(
        !text.contains("audit explain"),
        "not a Portcullis server: {text}"
    );
}

#[test]
fn short_username_comes_first_and_portcullis_gets_audit_hint() {
    let mut c = ctx();
    c.user = Some("alice".to_owned());
    c.portcullis = true;
    let d = rejected_at(StepKind::Auth, reply(535, Some("5.7.8"), "x"), &c);
    assert!(d.likely_causes[0].contains("full email address"), "{d:?}");
    assert!(d.what_to_do[0].contains("\"alice\""), "{d:?}");
    assert!(
        all_text(&d).contains("portcullis audit explain alice"),
        "{d:?}"
    );
}

#[test]
fn app_password() {
    let d = rejected_at(
        StepKind::Auth,
        reply(534, Some("5.7.9"), "Application-specific password required"),
        &ctx(),
    );
    assert_eq!(d.cause, "app_password_required");
    assert!(all_text(&d).contains("two-factor"));
}

#[test]
fn authentication_and_encryption_required() {
    let d = rejected_at(
        StepKind::Mail,
        reply(530, Some("5.7.0"), "Authentication required"),
        &ctx(),
    );
    assert_eq!(d.cause, "authentication_required");
    assert!(all_text(&d).contains("Enable SMTP authentication"));
    let d = rejected_at(
        StepKind::Mail,
        reply(530, Some("5.7.0"), "Must issue a STARTTLS command first"),
        &ctx(),
    );
    assert_eq!(d.cause, "encryption_required");
    let d = rejected_at(
        StepKind::Auth,
        reply(538, Some("5.7.11"), "Encryption required"),
        &ctx(),
    );
    assert_eq!(d.cause, "encryption_required");
    assert!(all_text(&d).contains("465"));
}

#[test]
fn temporary_and_throttled() {
    let d = rejected_at(
        StepKind::Auth,
        reply(454, Some("4.7.0"), "Temporary authentication failure"),
        &ctx(),
    );
    assert_eq!(d.cause, "temporary_server_failure");
    assert!(all_text(&d).contains("retry later"));
    let d = rejected_at(
        StepKind::Greeting,
        reply(
            421,
            Some("4.7.0"),
            "Too many authentication failures from your network, try again later",
        ),
        &ctx(),
    );
    assert_eq!(d.cause, "service_unavailable");
    assert!(d.likely_causes[0].contains("failed logins"), "{d:?}");
    assert!(all_text(&d).contains("portcullis ban remove"));
    let d = rejected_at(
        StepKind::Greeting,
        reply(421, Some("4.7.0"), "Too many connections"),
        &ctx(),
    );
    assert!(d.likely_causes[0].contains("too many connections"), "{d:?}");
}

#[test]
fn sender_and_relay() {
    let mut c = ctx();
    c.portcullis = true;
    c.from = Some("boss@example.org".to_owned());
    let d = rejected_at(
        StepKind::Mail,
        reply(553, Some("5.7.1"), "Sender address not owned by user"),
        &c,
    );
    assert_eq!(d.cause, "sender_not_allowed");
    assert!(all_text(&d).contains("allow-sender alice@example.com boss@example.org"));
    let d = rejected_at(
        StepKind::Data,
        reply(550, Some("5.7.1"), "header From: not owned"),
        &c,
    );
    assert_eq!(d.cause, "sender_not_allowed");
    let d = rejected_at(
        StepKind::Rcpt,
        reply(554, Some("5.7.1"), "Relay access denied"),
        &c,
    );
    assert_eq!(d.cause, "relay_denied");
    let d = rejected_at(
        StepKind::Rcpt,
        reply(550, Some("5.1.1"), "user unknown"),
        &c,
    );
    assert_eq!(d.cause, "recipient_rejected");
}

#[test]
fn connection_level() {
    let mut c = ctx();
    c.port = 25;
    let d = diagnose(&Failure::ConnectTimeout, &c);
    assert_eq!(d.cause, "connection_timeout");
    assert!(all_text(&d).contains("filtered"));
    assert!(d.likely_causes[0].contains("ISP"), "{d:?}");
    assert!(all_text(&d).contains("587"));
    let d = diagnose(&Failure::ConnectRefused, &c);
    assert_eq!(d.cause, "connection_refused");
    assert!(all_text(&d).contains("nothing listens"));
}

#[test]
fn tls_mixups() {
    let d = diagnose(&Failure::ImplicitTlsPort, &ctx());
    assert_eq!(d.cause, "implicit_tls_port");
    assert!(d.what_happened.contains("implicit TLS (465 style)"));
    let d = diagnose(
        &Failure::StarttlsPort {
            greeting: "220 mx ESMTP".to_owned(),
        },
        &ctx(),
    );
    assert_eq!(d.cause, "starttls_port");
    assert!(d.what_happened.contains("STARTTLS (587 style)"));
    let d = diagnose(
        &Failure::TlsHandshake {
            error: "peer is incompatible".to_owned(),
        },
        &ctx(),
    );
    assert_eq!(d.cause, "tls_handshake_failed");
    assert!(all_text(&d).contains("version or cipher"));
}

#[test]
fn auth_offers() {
    let d = diagnose(
        &Failure::AuthNotOffered {
            tls: false,
            starttls_offered: true,
        },
        &ctx(),
    );
    assert_eq!(d.cause, "auth_requires_tls");
    let mut c = ctx();
    c.port = 25;
    let d = diagnose(
        &Failure::AuthNotOffered {
            tls: true,
            starttls_offered: false,
        },
        &c,
    );
    assert_eq!(d.cause, "auth_not_offered");
    assert!(d.what_to_do[0].contains("server-to-server"));
    let d = diagnose(
        &Failure::MechNotOffered {
            mech: "LOGIN".to_owned(),
            offered: vec!["PLAIN".to_owned()],
        },
        &ctx(),
    );
    assert_eq!(d.cause, "mechanism_not_offered");
}

#[test]
fn ehlo_refused() {
    let d = rejected_at(
        StepKind::Ehlo,
        reply(501, Some("5.5.4"), "Invalid EHLO name"),
        &ctx(),
    );
    assert_eq!(d.cause, "ehlo_rejected");
    assert!(all_text(&d).contains("--ehlo"));
}

#[test]
fn every_failure_has_all_three_parts() {
    let failures = [
        Failure::DnsNoAddress {
            mx: vec!["mx.example.com".to_owned()],
        },
        Failure::DnsTimeout,
        Failure::DnsError {
            error: "x".to_owned(),
        },
        Failure::ConnectRefused,
        Failure::ConnectTimeout,
        Failure::ConnectError {
            error: "x".to_owned(),
        },
        Failure::ImplicitTlsPort,
        Failure::StarttlsPort {
            greeting: "220".to_owned(),
        },
        Failure::TlsHandshake {
            error: "x".to_owned(),
        },
        Failure::NoGreeting,
        Failure::Timeout { at: StepKind::Auth },
        Failure::Closed {
            at: StepKind::Greeting,
        },
        Failure::Protocol {
            at: StepKind::Ehlo,
            error: "x".to_owned(),
        },
        Failure::StarttlsNotOffered { requested: true },
        Failure::StarttlsNotOffered { requested: false },
        Failure::AuthNotOffered {
            tls: true,
            starttls_offered: false,
        },
        Failure::MechNotOffered {
            mech: "X".to_owned(),
            offered: vec![],
        },
        Failure::Rejected {
            at: StepKind::Ehlo,
            reply: reply(500, None, "x"),
        },
        Failure::Rejected {
            at: StepKind::Mail,
            reply: reply(451, None, "x"),
        },
    ];
    for failure in &failures {
        let d = diagnose(failure, &ctx());
        assert!(!d.what_happened.is_empty(), "{failure:?}");
        assert!(!d.likely_causes.is_empty(), "{failure:?}");
        assert!(!d.what_to_do.is_empty(), "{failure:?}");
    }
}
