//! Issue 4 on the wire: app passwords and 2FA (534 5.7.9), IP allowlists,
//! expiry, password maximum age, the brute-force defence (421, subnet ban,
//! usual IPs spared), sender ownership, and the auth audit (store events and
//! the mail log). A real SMTP client over implicit TLS; loopback sources
//! 127.0.0.2/3 model other clients (see throttle.rs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use common::*;
use portcullis_server::config::Config;
use portcullis_server::security::{apppass, totp};
use portcullis_store::{AuthEvent, AuthEventFilter, Ban, Store};
use rustls::ClientConfig;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

type Client = LineClient<TlsStream<TcpStream>>;

/// Connects to `addr` from `from` over TLS. `Ok` after a 220 greeting,
/// `Err(greeting)` when the server refused with something else.
async fn connect_from(
    addr: SocketAddr,
    from: Ipv4Addr,
    tls: Arc<ClientConfig>,
) -> Result<Client, String> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0)).unwrap();
    let tcp = tokio::time::timeout(IO_TIMEOUT, socket.connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect failed");
    let stream = tls_handshake(tcp, tls)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut c = LineClient::new(stream);
    let greeting = c.reply().await;
    let last = greeting.last().cloned().unwrap_or_default();
    if last.starts_with("220 ") {
        c.command("EHLO client.example", "250").await;
        Ok(c)
    } else {
        Err(last)
    }
}

fn plain(user: &str, password: &str) -> String {
    let raw = format!("\0{user}\0{password}");
    format!(
        "AUTH PLAIN {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// The last line of the reply to AUTH PLAIN.
async fn auth(c: &mut Client, user: &str, password: &str) -> String {
    c.send(&plain(user, password)).await;
    c.reply().await.last().cloned().unwrap_or_default()
}

/// One connection from `from`, one AUTH: the reply (or the refusing greeting).
async fn login(s: &Setup, from: Ipv4Addr, user: &str, password: &str) -> String {
    match connect_from(s.running.submissions, from, Arc::clone(&s.tls)).await {
        Ok(mut c) => auth(&mut c, user, password).await,
        Err(greeting) => greeting,
    }
}

struct Setup {
    fixture: Fixture,
    running: Running,
    tls: Arc<ClientConfig>,
}

async fn start(tweak: impl FnOnce(&mut Config)) -> Setup {
    let fixture = Fixture::new().await;
    let mut config = fixture.config();
    config.security.bruteforce.delay = Duration::from_millis(5);
    tweak(&mut config);
    config.validate().expect("valid test config");
    let running = Running::start(config, fixture.store_dyn()).await;
    let tls = client_config_trusting(&running.cert_path);
    Setup {
        fixture,
        running,
        tls,
    }
}

const HOME: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const OTHER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const THIRD: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

fn reasons(events: &[AuthEvent]) -> Vec<&str> {
    events.iter().map(|e| e.reason.as_str()).collect()
}

async fn add_app(
    store: &dyn Store,
    account: &str,
    name: &str,
    expires: Option<i64>,
    ips: &[&str],
) -> String {
    let (secret, digest) = apppass::generate_app_password();
    let ips: Vec<String> = ips.iter().map(|s| (*s).to_owned()).collect();
    store
        .add_app_password(account, name, &digest, expires, &ips)
        .await
        .expect("add_app_password");
    secret
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn app_password_logs_in_and_2fa_main_password_gets_534() {
    let s = start(|_| {}).await;
    let store = s.fixture.store_dyn();
    let secret = add_app(&*store, ALICE, "phone", None, &[]).await;
    store
        .set_totp_secret(ALICE, Some(&totp::generate_secret()))
        .await
        .unwrap();

    let reply = login(&s, HOME, ALICE, ALICE_PASSWORD).await;
    assert_eq!(reply, "534 5.7.9 Application-specific password required");
    let reply = login(&s, HOME, ALICE, &secret).await;
    assert!(reply.starts_with("235 2.7.0"), "{reply}");
    // Typed without dashes and in capitals: still the same secret.
    let typed = secret.replace('-', "").to_uppercase();
    assert!(login(&s, HOME, ALICE, &typed).await.starts_with("235 "));
    // A wrong password is the usual 535.
    let reply = login(&s, HOME, ALICE, "not-the-password").await;
    assert_eq!(reply, "535 5.7.8 Authentication credentials invalid");
    // Bob has no 2FA: his main password works.
    assert!(login(&s, HOME, BOB, BOB_PASSWORD).await.starts_with("235 "));

    let events = events_for(&*store, ALICE, 4).await;
    assert_eq!(
        reasons(&events),
        ["app_password_required", "ok", "ok", "bad_password"]
    );
    let first = &events[0];
    assert_eq!(first.credential.as_deref(), Some("password"));
    assert!(!first.success);
    assert_eq!(first.listener, "submissions");
    assert_eq!(first.client_ip, "127.0.0.1");
    assert_eq!(first.mechanism, "PLAIN");
    assert!(
        first
            .tls
            .as_deref()
            .is_some_and(|t| t.starts_with("TLSv1.")),
        "{first:?}"
    );
    assert_eq!(first.session_id.len(), 8);
    assert_eq!(events[1].credential.as_deref(), Some("app:phone"));
    assert!(events[1].success);
    assert_eq!(events[3].credential, None);

    // Last use recorded (asynchronously).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let list = store.list_app_passwords(ALICE).await.unwrap();
        if list[0].last_used_at.is_some() {
            assert_eq!(list[0].last_used_ip.as_deref(), Some("127.0.0.1"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "last use not recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The mail log: one stable line per attempt, never the secret.
    let log = std::fs::read_to_string(s.fixture.data_dir().join("log/mail.log")).unwrap();
    assert!(
        log.lines().any(|l| l.contains(
            "portcullis[auth]: result=failure reason=app_password_required user=alice@example.com ip=127.0.0.1 mechanism=PLAIN credential=password session="
        )),
        "{log}"
    );
    assert!(log.contains("result=success reason=ok user=alice@example.com ip=127.0.0.1 mechanism=PLAIN credential=app:phone"));
    assert!(!log.contains(&secret) && !log.contains(ALICE_PASSWORD));
    s.running.stop().await;
}

#[tokio::test]
async fn allowlists_expiry_and_disabled() {
    let s = start(|_| {}).await;
    let store = s.fixture.store_dyn();
    let elsewhere = add_app(&*store, ALICE, "office", None, &["192.0.2.0/24"]).await;
    let here = add_app(
        &*store,
        ALICE,
        "laptop",
        None,
        &["127.0.0.1", "2001:db8::/32"],
    )
    .await;
    let expired = add_app(&*store, ALICE, "old", Some(unix_now() - 10), &[]).await;

    assert_eq!(
        login(&s, HOME, ALICE, &elsewhere).await,
        "535 5.7.8 Authentication credentials invalid"
    );
    assert!(login(&s, HOME, ALICE, &here).await.starts_with("235 "));
    assert!(
        login(&s, OTHER, ALICE, &here)
            .await
            .starts_with("535 5.7.8")
    );
    assert!(
        login(&s, HOME, ALICE, &expired)
            .await
            .starts_with("535 5.7.8")
    );

    // Account allowlist: applies to the main password and to app passwords.
    store
        .set_allowed_ips(BOB, &["127.0.0.2/32".to_owned()])
        .await
        .unwrap();
    let bob_app = add_app(&*store, BOB, "phone", None, &[]).await;
    assert!(
        login(&s, HOME, BOB, BOB_PASSWORD)
            .await
            .starts_with("535 5.7.8")
    );
    assert!(
        login(&s, HOME, BOB, &bob_app)
            .await
            .starts_with("535 5.7.8")
    );
    assert!(
        login(&s, OTHER, BOB, BOB_PASSWORD)
            .await
            .starts_with("235 ")
    );

    // Disabled account with the right password.
    assert!(
        login(&s, HOME, CAROL, CAROL_PASSWORD)
            .await
            .starts_with("535 5.7.8")
    );
    // Unknown user.
    assert!(
        login(&s, HOME, "nobody@example.com", "x")
            .await
            .starts_with("535 5.7.8")
    );

    let alice = events_for(&*store, ALICE, 4).await;
    assert_eq!(
        reasons(&alice),
        [
            "ip_not_allowed",
            "ok",
            "ip_not_allowed",
            "app_password_expired"
        ]
    );
    assert_eq!(alice[0].credential.as_deref(), Some("app:office"));
    assert_eq!(alice[2].client_ip, "127.0.0.2");
    assert_eq!(alice[3].credential.as_deref(), Some("app:old"));
    let bob = events_for(&*store, BOB, 3).await;
    assert_eq!(reasons(&bob), ["ip_not_allowed", "ip_not_allowed", "ok"]);
    assert_eq!(bob[0].credential.as_deref(), Some("password"));
    assert_eq!(bob[1].credential.as_deref(), Some("app:phone"));
    assert_eq!(reasons(&events_for(&*store, CAROL, 1).await), ["disabled"]);
    assert_eq!(
        reasons(&events_for(&*store, "nobody@example.com", 1).await),
        ["unknown_user"]
    );
    s.running.stop().await;
}

#[tokio::test]
async fn password_max_age_expires_the_main_password_only() {
    let s = start(|c| c.security.password_max_age = Some(Duration::from_secs(1))).await;
    let store = s.fixture.store_dyn();
    let app = add_app(&*store, ALICE, "phone", None, &[]).await;
    // password_changed_at has a one-second resolution.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(
        login(&s, HOME, ALICE, ALICE_PASSWORD)
            .await
            .starts_with("535 5.7.8")
    );
    assert!(login(&s, HOME, ALICE, &app).await.starts_with("235 "));
    let events = events_for(&*store, ALICE, 2).await;
    assert_eq!(reasons(&events), ["password_expired", "ok"]);
    s.running.stop().await;
}

#[tokio::test]
async fn thirty_wrong_passwords_end_in_421_and_a_ban_but_the_user_still_logs_in() {
    let s = start(|c| {
        // One connection may try many times: the brute-force defence, not
        // the per-connection limit, is under test.
        c.security.max_auth_failures = 100;
        c.listeners.submissions.max_errors = 1000;
    })
    .await;
    let store = s.fixture.store_dyn();
    // Alice's usual IP.
    assert!(
        login(&s, OTHER, ALICE, ALICE_PASSWORD)
            .await
            .starts_with("235 ")
    );

    let mut replies = Vec::new();
    let mut client: Option<Client> = None;
    for i in 0..30 {
        if client.is_none() {
            client = Some(
                connect_from(s.running.submissions, HOME, Arc::clone(&s.tls))
                    .await
                    .expect("not banned yet"),
            );
        }
        let c = client.as_mut().unwrap();
        let reply = auth(c, ALICE, &format!("guess-{i}")).await;
        if reply.starts_with("421 ") {
            c.expect_closed().await;
            client = None;
        }
        replies.push(reply);
    }
    // Ten plain failures, then 421 4.7.0 and close for every further try.
    for r in &replies[..10] {
        assert_eq!(r, "535 5.7.8 Authentication credentials invalid");
    }
    for r in &replies[10..] {
        assert!(
            r.starts_with("421 4.7.0 Too many authentication failures"),
            "{r}"
        );
    }
    // The subnet is banned: 421 at the greeting...
    let refused = login(&s, HOME, ALICE, ALICE_PASSWORD).await;
    assert!(refused.starts_with("421 4.7.0"), "{refused}");
    let refused = login(&s, THIRD, BOB, BOB_PASSWORD).await;
    assert!(refused.starts_with("421 4.7.0"), "{refused}");
    // ...but alice from her usual IP still logs in.
    assert!(
        login(&s, OTHER, ALICE, ALICE_PASSWORD)
            .await
            .starts_with("235 ")
    );

    // Persisted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let ban = loop {
        let bans = store.list_bans(0).await.unwrap();
        if let Some(b) = bans.into_iter().find(|b| b.network == "127.0.0.0/24") {
            break b;
        }
        assert!(tokio::time::Instant::now() < deadline, "ban not persisted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ban.strikes, 1);
    assert!(ban.reason.starts_with("bruteforce"), "{ban:?}");
    let hour = ban.until_ms - ban.created_ms;
    assert!((3_590_000..=3_610_000).contains(&hour), "{ban:?}");

    let events = events_for(&*store, ALICE, 32).await;
    let r = reasons(&events);
    assert_eq!(r[0], "ok");
    assert!(r[1..11].iter().all(|x| *x == "bad_password"), "{r:?}");
    assert!(r[11..31].iter().all(|x| *x == "rate_limited"), "{r:?}");
    assert_eq!(r[31], "ok");
    let log = std::fs::read_to_string(s.fixture.data_dir().join("log/mail.log")).unwrap();
    assert!(
        log.contains("result=failure reason=rate_limited user=alice@example.com ip=127.0.0.1 ")
    );
    s.running.stop().await;
}

#[tokio::test]
async fn repeated_same_password_and_unknown_users_and_trusted_networks() {
    let s = start(|c| {
        c.security.max_auth_failures = 100;
        c.listeners.submissions.max_errors = 1000;
        c.security.trusted_networks = vec!["127.0.0.3/32".parse().unwrap()];
    })
    .await;
    // The same wrong password twenty times counts once: never blocked.
    let mut c = connect_from(s.running.submissions, HOME, Arc::clone(&s.tls))
        .await
        .unwrap();
    for _ in 0..20 {
        assert!(auth(&mut c, ALICE, "same-guess").await.starts_with("535 "));
    }
    // Unknown users are counted like real ones.
    let mut c = connect_from(s.running.submissions, OTHER, Arc::clone(&s.tls))
        .await
        .unwrap();
    let mut last = String::new();
    for i in 0..11 {
        last = auth(&mut c, "ghost@example.com", &format!("g{i}")).await;
    }
    assert!(last.starts_with("421 4.7.0"), "{last}");
    // A trusted network is exempt.
    let mut c = connect_from(s.running.submissions, THIRD, Arc::clone(&s.tls))
        .await
        .unwrap();
    for i in 0..15 {
        let r = auth(&mut c, BOB, &format!("t{i}")).await;
        assert!(r.starts_with("535 "), "{i}: {r}");
    }
    assert!(auth(&mut c, BOB, BOB_PASSWORD).await.starts_with("235 "));
    s.running.stop().await;
}

#[tokio::test]
async fn stored_bans_are_loaded_at_startup_and_trusted_networks_are_exempt() {
    let fixture = Fixture::new().await;
    let now_ms = unix_now() * 1000;
    fixture
        .store
        .upsert_ban(&Ban {
            network: "127.0.0.2".to_owned(),
            until_ms: now_ms + 3_600_000,
            reason: "manual".to_owned(),
            created_ms: now_ms,
            strikes: 1,
        })
        .await
        .unwrap();
    let mut config = fixture.config();
    config.security.trusted_networks = vec!["127.0.0.3/32".parse().unwrap()];
    fixture
        .store
        .upsert_ban(&Ban {
            network: "127.0.0.3".to_owned(),
            until_ms: now_ms + 3_600_000,
            reason: "manual".to_owned(),
            created_ms: now_ms,
            strikes: 1,
        })
        .await
        .unwrap();
    let running = Running::start(config, fixture.store_dyn()).await;
    let tls = client_config_trusting(&running.cert_path);
    let refused = connect_from(running.submissions, OTHER, Arc::clone(&tls)).await;
    assert!(
        refused
            .as_ref()
            .err()
            .is_some_and(|g| g.starts_with("421 4.7.0")),
        "{:?}",
        refused.err()
    );
    assert!(
        connect_from(running.submissions, HOME, Arc::clone(&tls))
            .await
            .is_ok()
    );
    assert!(
        connect_from(running.submissions, THIRD, Arc::clone(&tls))
            .await
            .is_ok()
    );
    // Plain listeners refuse at the greeting too.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(OTHER), 0)).unwrap();
    let tcp = socket.connect(running.submission).await.unwrap();
    let mut c = LineClient::new(tcp);
    c.expect("421 4.7.0").await;
    running.stop().await;
}

#[tokio::test]
async fn sender_must_be_owned() {
    let s = start(|_| {}).await;
    let store = s.fixture.store_dyn();
    store
        .add_allowed_sender(ALICE, "@example.org")
        .await
        .unwrap();
    store
        .add_allowed_sender(ALICE, "team@example.net")
        .await
        .unwrap();
    let mut c = connect_from(s.running.submissions, HOME, Arc::clone(&s.tls))
        .await
        .unwrap();
    assert!(
        auth(&mut c, ALICE, ALICE_PASSWORD)
            .await
            .starts_with("235 ")
    );
    c.command(
        "MAIL FROM:<bob@example.com>",
        "553 5.7.1 Sender address not owned by user",
    )
    .await;
    c.command("MAIL FROM:<Alice@Example.com>", "250").await;
    c.command("RSET", "250").await;
    c.command("MAIL FROM:<anyone@EXAMPLE.org>", "250").await;
    c.command("RSET", "250").await;
    c.command("MAIL FROM:<team@example.net>", "250").await;
    c.command("RSET", "250").await;
    c.command("MAIL FROM:<other@example.net>", "553 5.7.1")
        .await;
    s.running.stop().await;
}

#[tokio::test]
async fn audit_writer_batches_into_the_store_and_the_mail_log() {
    use portcullis_server::security::audit::AuditLog;
    let fixture = Fixture::new().await;
    let log_path = fixture.data_dir().join("elsewhere/mail.log");
    let (audit, task) = AuditLog::start(fixture.store_dyn(), Some(log_path.clone()));
    for i in 0..250 {
        audit.record(AuthEvent {
            at_ms: 1_795_332_600_000 + i,
            session_id: format!("{i:08x}"),
            listener: "submission".into(),
            client_ip: "192.0.2.7".into(),
            tls: Some("TLSv1.3".into()),
            user: "x".repeat(300),
            mechanism: "LOGIN".into(),
            credential: None,
            success: false,
            reason: "unknown_user".into(),
        });
    }
    drop(audit);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("writer ends when the senders are gone")
        .unwrap();
    let events = fixture
        .store
        .auth_events(&AuthEventFilter::default())
        .await
        .unwrap();
    assert_eq!(events.len(), 250);
    assert!(events.iter().all(|e| e.user.len() == 255));
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(log.lines().count(), 250);
    assert!(
        log.lines().all(|l| l.starts_with(
            "2026-11-22T07:30:00Z portcullis[auth]: result=failure reason=unknown_user user=xxx"
        )),
        "{log}"
    );
}

#[tokio::test]
async fn app_password_works_with_auth_login_too() {
    let s = start(|_| {}).await;
    let store = s.fixture.store_dyn();
    let secret = add_app(&*store, ALICE, "mail-app", None, &[]).await;
    let b64 = |t: &str| base64::engine::general_purpose::STANDARD.encode(t);
    let mut c = connect_from(s.running.submissions, HOME, Arc::clone(&s.tls))
        .await
        .unwrap();
    c.command("AUTH LOGIN", "334 ").await;
    c.command(&b64(ALICE), "334 ").await;
    c.command(&b64(&secret), "235 2.7.0").await;
    let events = events_for(&*store, ALICE, 1).await;
    assert_eq!(events[0].mechanism, "LOGIN");
    assert_eq!(events[0].credential.as_deref(), Some("app:mail-app"));
    s.running.stop().await;
}

#[tokio::test]
async fn after_a_restart_usual_ips_still_pass_an_automatic_ban() {
    let fixture = Fixture::new().await;
    let now_ms = unix_now() * 1000;
    fixture
        .store
        .record_auth_events(&[AuthEvent {
            at_ms: now_ms - 86_400_000,
            session_id: "00000001".into(),
            listener: "submissions".into(),
            client_ip: "127.0.0.2".into(),
            tls: Some("TLSv1.3".into()),
            user: ALICE.into(),
            mechanism: "PLAIN".into(),
            credential: Some("password".into()),
            success: true,
            reason: "ok".into(),
        }])
        .await
        .unwrap();
    fixture
        .store
        .upsert_ban(&Ban {
            network: "127.0.0.0/24".to_owned(),
            until_ms: now_ms + 3_600_000,
            reason: "bruteforce: 30 failed logins".to_owned(),
            created_ms: now_ms,
            strikes: 1,
        })
        .await
        .unwrap();
    let running = Running::start(fixture.config(), fixture.store_dyn()).await;
    let tls = client_config_trusting(&running.cert_path);
    assert!(
        connect_from(running.submissions, HOME, Arc::clone(&tls))
            .await
            .is_err()
    );
    let mut c = connect_from(running.submissions, OTHER, Arc::clone(&tls))
        .await
        .expect("usual IP passes the greeting");
    // Only the account that uses this address gets through AUTH.
    assert!(
        auth(&mut c, ALICE, ALICE_PASSWORD)
            .await
            .starts_with("235 ")
    );
    let mut c = connect_from(running.submissions, OTHER, Arc::clone(&tls))
        .await
        .unwrap();
    let r = auth(&mut c, BOB, BOB_PASSWORD).await;
    assert!(r.starts_with("421 4.7.0"), "{r}");
    running.stop().await;
}

#[tokio::test]
async fn audit_events_of_the_last_logins_are_written_before_shutdown_returns() {
    let s = start(|_| {}).await;
    let store = s.fixture.store_dyn();
    let mut c = connect_from(s.running.submissions, HOME, Arc::clone(&s.tls))
        .await
        .unwrap();
    c.command(&plain(ALICE, "wrong password"), "535 ").await;
    drop(c);
    // Stop at once: the event is still waiting for its 200 ms batch.
    s.running.stop().await;
    let filter = AuthEventFilter {
        user: Some(ALICE.to_owned()),
        ..AuthEventFilter::default()
    };
    let events = store.auth_events(&filter).await.unwrap();
    assert_eq!(events.len(), 1, "written before run() returned: {events:?}");
    assert_eq!(events[0].reason, "bad_password");
}
