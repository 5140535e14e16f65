//! Connection limits, timeouts and the STARTTLS injection defence, over real
//! sockets on 127.0.0.1 against a server running `run()`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{
    Fixture, LineClient, Running, client_config_trusting, connect, connect_no_greeting,
    tls_handshake,
};
use portcullis_server::config::ListenerRole;
use portcullis_store::Store;

/// Connects until the server greets with 220 (a slot freed by a closed
/// session is released just after the client sees the close), within 3 s.
async fn connect_when_free(addr: std::net::SocketAddr) -> LineClient<tokio::net::TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut c = connect_no_greeting(addr).await;
        let first = c.reply().await;
        if first[0].starts_with("220 ") {
            return c;
        }
        assert!(first[0].starts_with("421 4.7.0"), "unexpected {first:?}");
        assert!(
            Instant::now() < deadline,
            "the slot was not released within 3s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn max_connections_per_ip() {
    let fixture = Fixture::new().await;
    let mut config = fixture.config();
    config.listeners.smtp.max_connections_per_ip = 2;
    let server = Running::start(config, fixture.store_dyn()).await;

    let mut first = connect(server.smtp).await;
    let mut second = connect(server.smtp).await;
    let mut third = connect_no_greeting(server.smtp).await;
    third.expect("421 4.7.0").await;
    third.expect_closed().await;

    // The limit is per listener: other ports still accept.
    let mut other = connect(server.submission).await;
    other.command("QUIT", "221 2.0.0").await;

    // The two sessions are unaffected; closing one frees a slot.
    second.command("NOOP", "250 2.0.0").await;
    first.command("QUIT", "221 2.0.0").await;
    first.expect_closed().await;
    let mut again = connect_when_free(server.smtp).await;
    again.command("NOOP", "250 2.0.0").await;
    second.command("QUIT", "221 2.0.0").await;
    again.command("QUIT", "221 2.0.0").await;
    server.stop().await;
}

#[tokio::test]
async fn max_connections() {
    let fixture = Fixture::new().await;
    let mut config = fixture.config();
    config.listeners.submission.max_connections = 1;
    let server = Running::start(config, fixture.store_dyn()).await;

    let mut first = connect(server.submission).await;
    let mut second = connect_no_greeting(server.submission).await;
    let refused = second.expect("421 4.7.0").await;
    assert!(refused[0].contains("Too many connections"), "{refused:?}");
    second.expect_closed().await;

    first.command("NOOP", "250 2.0.0").await;
    first.command("QUIT", "221 2.0.0").await;
    first.expect_closed().await;
    let mut again = connect_when_free(server.submission).await;
    again.command("QUIT", "221 2.0.0").await;
    server.stop().await;
}

#[tokio::test]
async fn idle_timeout() {
    let fixture = Fixture::new().await;
    let mut config = fixture.config();
    config.listeners.smtp.idle_timeout = Duration::from_secs(1);
    let server = Running::start(config, fixture.store_dyn()).await;

    let mut c = connect(server.smtp).await;
    let started = Instant::now();
    c.expect("421 4.4.2").await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "timed out too early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(3),
        "timed out too late: {waited:?}"
    );
    c.expect_closed().await;

    // Activity resets the idle timer.
    let mut c = connect(server.smtp).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.command("NOOP", "250 2.0.0").await;
    }
    c.expect("421 4.4.2").await;
    c.expect_closed().await;
    server.stop().await;
}

#[tokio::test]
async fn idle_timeout_in_the_middle_of_data() {
    let fixture = Fixture::new().await;
    let mut config = fixture.config();
    config.listeners.smtp.idle_timeout = Duration::from_secs(1);
    let server = Running::start(config, fixture.store_dyn()).await;

    let mut c = connect(server.smtp).await;
    c.command("EHLO client.example", "250 STARTTLS").await;
    c.command("MAIL FROM:<someone@example.net>", "250 2.1.0")
        .await;
    c.command("RCPT TO:<alice@example.com>", "250 2.1.5").await;
    c.command("DATA", "354").await;
    c.send("Subject: stalled").await;
    c.expect("421 4.4.2").await;
    c.expect_closed().await;
    server.stop().await;
    assert!(
        fixture
            .store
            .list_queue()
            .await
            .expect("list_queue")
            .is_empty()
    );
    let (spooled, incoming) = fixture.spool_files();
    assert!(
        spooled.is_empty() && incoming.is_empty(),
        "{spooled:?} {incoming:?}"
    );
}

#[tokio::test]
async fn session_timeout_despite_activity() {
    let fixture = Fixture::new().await;
    let mut config = fixture.config();
    config.listeners.smtp.session_timeout = Duration::from_secs(2);
    let server = Running::start(config, fixture.store_dyn()).await;

    let mut c = connect(server.smtp).await;
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "no session timeout after 4s"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.send("NOOP").await;
        let reply = c.reply().await;
        if reply[0].starts_with("421 4.4.2") {
            break;
        }
        assert_eq!(reply, vec!["250 2.0.0 Ok".to_owned()]);
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1800),
        "session ended too early: {took:?}"
    );
    assert!(
        took <= Duration::from_secs(3),
        "session ended too late: {took:?}"
    );
    c.expect_closed().await;
    server.stop().await;
}

/// CVE-2011-0411 class: a command pipelined in plaintext right after STARTTLS
/// must not be executed inside the TLS session.
#[tokio::test]
async fn plaintext_pipelined_after_starttls_is_discarded() {
    let fixture = Fixture::new().await;
    let server = Running::start(fixture.config(), fixture.store_dyn()).await;
    let trust = client_config_trusting(&server.cert_path);

    for role in [ListenerRole::Smtp, ListenerRole::Submission] {
        let mut c = connect(server.addr(role)).await;
        c.command("EHLO client.example", "250 STARTTLS").await;
        c.write_raw(b"STARTTLS\r\nMAIL FROM:<a@example.com>\r\n")
            .await;
        c.expect("220 2.0.0").await;
        let tls = tls_handshake(c.into_inner(), trust.clone())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut c = LineClient::new(tls);
        c.send("EHLO client.example").await;
        let ehlo = c.reply().await;
        assert_eq!(
            ehlo[0], "250-mx.test greets client.example",
            "{role:?}: {ehlo:?}"
        );
        let expected_last = match role {
            ListenerRole::Smtp => "250 CHUNKING",
            _ => "250 AUTH PLAIN LOGIN SCRAM-SHA-256 XOAUTH2 OAUTHBEARER",
        };
        assert_eq!(
            ehlo.last().map(String::as_str),
            Some(expected_last),
            "{role:?}: {ehlo:?}"
        );
        // No transaction was opened by the injected MAIL.
        c.command("RCPT TO:<alice@example.com>", "503 5.5.1").await;
        c.command("NOOP", "250 2.0.0").await;
        c.command("QUIT", "221 2.0.0").await;
        c.expect_closed().await;
    }
    server.stop().await;
}

/// A client that never completes the STARTTLS handshake is dropped after the
/// idle timeout, and its slot is released.
#[tokio::test]
async fn stalled_tls_handshake_is_bounded() {
    let fixture = Fixture::new().await;
    let mut config = fixture.config();
    for role in [ListenerRole::Submission, ListenerRole::Submissions] {
        let l = config.listeners.get_mut(role);
        l.idle_timeout = Duration::from_secs(1);
        l.max_connections_per_ip = 1;
    }
    let server = Running::start(config, fixture.store_dyn()).await;

    let mut c = connect(server.submission).await;
    c.command("STARTTLS", "220 2.0.0").await;
    c.expect_closed_within(Duration::from_secs(3)).await;

    // Port 465: connect and say nothing.
    let mut c = connect_no_greeting(server.submissions).await;
    c.expect_closed_within(Duration::from_secs(3)).await;
    let tls = tls_handshake(
        tokio::net::TcpStream::connect(server.submissions)
            .await
            .expect("connect"),
        client_config_trusting(&server.cert_path),
    )
    .await;
    // Either the slot is already free, or the per-IP 421 arrives in place of a
    // ServerHello; retry briefly for the former.
    let mut ok = tls.is_ok();
    let deadline = Instant::now() + Duration::from_secs(3);
    while !ok && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let stream = tokio::net::TcpStream::connect(server.submissions)
            .await
            .expect("connect");
        ok = tls_handshake(stream, client_config_trusting(&server.cert_path))
            .await
            .is_ok();
    }
    assert!(ok, "the slot of the stalled handshake was not released");
    server.stop().await;
}

/// RFC 8314 3.3: on the implicit-TLS port everything after connect is TLS.
/// A client over the connection limit should get its 421 inside TLS (or at
/// least a clean close), not plaintext SMTP where it expects a ServerHello.
#[tokio::test]
async fn limit_reply_on_implicit_tls_port_is_sent_inside_tls() {
    let fixture = Fixture::new().await;
    let mut config = fixture.config();
    config.listeners.submissions.max_connections_per_ip = 1;
    let server = Running::start(config, fixture.store_dyn()).await;
    let trust = client_config_trusting(&server.cert_path);

    let mut first = common::connect_tls(server.submissions, trust.clone()).await;
    let tcp = tokio::time::timeout(
        common::IO_TIMEOUT,
        tokio::net::TcpStream::connect(server.submissions),
    )
    .await
    .expect("connect timed out")
    .expect("connect");
    let tls = tls_handshake(tcp, trust)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut second = LineClient::new(tls);
    second.expect("421 4.7.0").await;
    second.expect_closed().await;
    first.command("QUIT", "221 2.0.0").await;
    server.stop().await;
}
