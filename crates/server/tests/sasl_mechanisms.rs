//! Issue 6 on the wire, with independent clients: SCRAM-SHA-256 through
//! Python `scramp` + `smtplib`, CRAM-MD5 through `smtplib`; per-listener
//! mechanism lists and the audit trail (reason and mechanism name).
//!
//! Needs `python3` with `scramp` (`.ci/run` installs it). Every process and
//! socket is bounded by a timeout; servers are stopped at the end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use portcullis_proto::Mechanism;
use portcullis_server::config::{Config, ListenerRole};
use portcullis_server::secretbox::SecretBox;
use portcullis_server::security::{apppass, saslkeys, totp};
use portcullis_store::Store;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/sasl_client.py");

/// Runs the Python client; returns its one-line verdict.
async fn python(mech: &str, addr: SocketAddr, user: &str, secret: &str) -> String {
    let child = tokio::process::Command::new("python3")
        .arg(SCRIPT)
        .args([mech, "127.0.0.1", &addr.port().to_string(), user, secret])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), child)
        .await
        .expect("python client timed out")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success(),
        "python client failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

async fn add_app(store: &dyn Store, account: &str, name: &str, cram: Option<&SecretBox>) -> String {
    let (secret, digest) = apppass::generate_app_password();
    store
        .add_app_password(account, name, &digest, None, &[])
        .await
        .unwrap();
    saslkeys::set_app_password_keys(store, account, name, &secret, cram)
        .await
        .unwrap();
    secret
}

fn have_scramp() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import scramp"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn scramp_logs_in_and_every_failure_is_audited() {
    assert!(have_scramp(), "python3 -m pip install scramp (see .ci/run)");
    let fixture = Fixture::new().await;
    let store = fixture.store_dyn();
    saslkeys::set_main_password_keys(store.as_ref(), ALICE, ALICE_PASSWORD)
        .await
        .unwrap();
    saslkeys::set_main_password_keys(store.as_ref(), BOB, BOB_PASSWORD)
        .await
        .unwrap();
    let bob_app = add_app(store.as_ref(), BOB, "laptop", None).await;
    let running = Running::start(fixture.config(), Arc::clone(&store)).await;
    let addr = running.submissions;

    // The main password, with the server signature checked by scramp.
    assert_eq!(
        python("SCRAM-SHA-256", addr, ALICE, ALICE_PASSWORD).await,
        "ok"
    );
    let ev = last_event(store.as_ref(), ALICE, 1).await;
    assert_eq!(
        (
            ev.mechanism.as_str(),
            ev.reason.as_str(),
            ev.credential.as_deref()
        ),
        ("SCRAM-SHA-256", "ok", Some("password"))
    );
    // A wrong password: e=invalid-proof in the server-final, then 535.
    let r = python("SCRAM-SHA-256", addr, ALICE, "wrong password").await;
    assert!(r.starts_with("fail 535") && r.contains("invalid"), "{r}");
    let ev = last_event(store.as_ref(), ALICE, 2).await;
    assert_eq!((ev.reason.as_str(), ev.success), ("bad_password", false));

    // An app password (keys derived with the account's salt).
    assert_eq!(python("SCRAM-SHA-256", addr, BOB, &bob_app).await, "ok");
    let ev = last_event(store.as_ref(), BOB, 1).await;
    assert_eq!(ev.credential.as_deref(), Some("app:laptop"));
    assert_eq!(python("SCRAM-SHA-256", addr, BOB, BOB_PASSWORD).await, "ok");

    // 2FA: the main password gets 534 5.7.9 like PLAIN; the app password works.
    let secret = totp::generate_secret();
    store.set_totp_secret(BOB, Some(&secret)).await.unwrap();
    assert!(
        python("SCRAM-SHA-256", addr, BOB, BOB_PASSWORD)
            .await
            .starts_with("fail 534")
    );
    assert_eq!(python("SCRAM-SHA-256", addr, BOB, &bob_app).await, "ok");

    // Unknown user and an account whose password predates SCRAM keys.
    let r = python("SCRAM-SHA-256", addr, "nobody@example.com", "x").await;
    assert!(r.starts_with("fail 535"), "{r}");
    let ev = last_event(store.as_ref(), "nobody@example.com", 1).await;
    assert_eq!(ev.reason, "unknown_user");
    store
        .add_account(
            "dave@example.com",
            &store
                .credential(ALICE)
                .await
                .unwrap()
                .unwrap()
                .password_hash,
            "standard",
        )
        .await
        .unwrap();
    let r = python("SCRAM-SHA-256", addr, "dave@example.com", ALICE_PASSWORD).await;
    assert!(r.starts_with("fail 535"), "{r}");
    let ev = last_event(store.as_ref(), "dave@example.com", 1).await;
    assert_eq!(ev.reason, "no_scram_keys");
    // Disabled account with keys: refused after the proof.
    saslkeys::set_main_password_keys(store.as_ref(), CAROL, CAROL_PASSWORD)
        .await
        .unwrap();
    assert!(
        python("SCRAM-SHA-256", addr, CAROL, CAROL_PASSWORD)
            .await
            .starts_with("fail 535")
    );
    assert_eq!(
        last_event(store.as_ref(), CAROL, 1).await.reason,
        "disabled"
    );
    running.stop().await;
}

#[tokio::test]
async fn listener_mechanism_lists_limit_ehlo_and_auth() {
    let fixture = Fixture::new().await;
    let mut config = fixture.config();
    config
        .listeners
        .get_mut(ListenerRole::Submissions)
        .mechanisms = vec![Mechanism::ScramSha256, Mechanism::Plain];
    let running = Running::start(config, fixture.store_dyn()).await;
    let tls = client_config_trusting(&running.cert_path);

    let mut c = connect_tls(running.submissions, Arc::clone(&tls)).await;
    let ehlo = c.command("EHLO client.example", "250").await;
    assert!(
        ehlo.iter().any(|l| l == "250 AUTH SCRAM-SHA-256 PLAIN"),
        "{ehlo:?}"
    );
    c.command("AUTH LOGIN", "504 5.5.4").await;
    c.command("AUTH CRAM-MD5", "504 5.5.4").await;
    c.command("AUTH XOAUTH2", "504 5.5.4").await;

    // The default list on port 587, before and after STARTTLS.
    let mut c = connect(running.submission).await;
    let ehlo = c.command("EHLO client.example", "250").await;
    assert!(
        !ehlo.iter().any(|l| l.contains("AUTH")),
        "nothing before TLS: {ehlo:?}"
    );
    c.command("AUTH SCRAM-SHA-256", "538 5.7.11").await;
    running.stop().await;
}

#[tokio::test]
async fn cram_md5_with_smtplib_only_for_opted_in_app_passwords() {
    let fixture = Fixture::new().await;
    let key = [42u8; 32];
    let key_file = fixture.data_dir().join("secret.key");
    std::fs::write(&key_file, key).unwrap();
    let sealer = SecretBox::from_key(&key);
    let store = fixture.store_dyn();
    let legacy = add_app(store.as_ref(), ALICE, "legacy", Some(&sealer)).await;
    let modern = add_app(store.as_ref(), ALICE, "modern", None).await;
    let mut config: Config = fixture.config();
    config.secret_key_file = Some(key_file);
    config
        .listeners
        .get_mut(ListenerRole::Submissions)
        .mechanisms = vec![Mechanism::CramMd5];
    config.validate().unwrap();
    let running = Running::start(config, Arc::clone(&store)).await;
    let addr = running.submissions;

    assert_eq!(python("CRAM-MD5", addr, ALICE, &legacy).await, "ok");
    let ev = last_event(store.as_ref(), ALICE, 1).await;
    assert_eq!(
        (ev.mechanism.as_str(), ev.credential.as_deref()),
        ("CRAM-MD5", Some("app:legacy"))
    );
    assert_eq!(python("CRAM-MD5", addr, ALICE, &modern).await, "fail 535");
    assert_eq!(
        python("CRAM-MD5", addr, ALICE, ALICE_PASSWORD).await,
        "fail 535"
    );
    assert_eq!(
        last_event(store.as_ref(), ALICE, 3).await.reason,
        "bad_password"
    );
    assert_eq!(
        python("CRAM-MD5", addr, BOB, BOB_PASSWORD).await,
        "fail 535"
    );
    assert_eq!(
        last_event(store.as_ref(), BOB, 1).await.reason,
        "no_cram_secret"
    );
    running.stop().await;
}

#[test]
fn cram_md5_without_a_secret_key_is_a_config_error() {
    // SAFETY of the test: PORTCULLIS_SECRET_KEY is not set in CI's environment.
    if std::env::var_os("PORTCULLIS_SECRET_KEY").is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config
        .listeners
        .get_mut(ListenerRole::Submission)
        .mechanisms = vec![Mechanism::CramMd5];
    let e = config.validate().unwrap_err().to_string();
    assert!(
        e.contains("listeners.submission.mechanisms")
            && e.contains("secret_key_file")
            && e.contains("PORTCULLIS_SECRET_KEY"),
        "{e}"
    );
}

/// A SCRAM-SHA-256-PLUS exchange with our own client code: the
/// `tls-exporter` value comes from the client's side of the TLS connection.
async fn scram_plus<S>(
    c: &mut LineClient<tokio_rustls::client::TlsStream<S>>,
    user: &str,
    password: &str,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use portcullis_proto::sasl::scram;
    let mut exporter = [0u8; 32];
    c.get_ref()
        .get_ref()
        .1
        .export_keying_material(&mut exporter, b"EXPORTER-Channel-Binding", None)
        .unwrap();
    let gs2 = "p=tls-exporter,,";
    let bare = format!("n={user},r=rustclientnonce");
    let r = c
        .command(
            &format!(
                "AUTH SCRAM-SHA-256-PLUS {}",
                STANDARD.encode(format!("{gs2}{bare}"))
            ),
            "334 ",
        )
        .await;
    let server_first = String::from_utf8(STANDARD.decode(&r[0][4..]).unwrap()).unwrap();
    let mut fields = server_first.split(',');
    let nonce = &fields.next().unwrap()[2..];
    let salt = STANDARD.decode(&fields.next().unwrap()[2..]).unwrap();
    let iterations: u32 = fields.next().unwrap()[2..].parse().unwrap();
    let mut cb = gs2.as_bytes().to_vec();
    cb.extend_from_slice(&exporter);
    let without_proof = format!("c={},r={nonce}", STANDARD.encode(&cb));
    let am = scram::auth_message(&bare, &server_first, &without_proof);
    let proof = scram::client_proof(
        &scram::client_keys(password.as_bytes(), &salt, iterations),
        &am,
    );
    let fin = format!("{without_proof},p={}", STANDARD.encode(proof));
    let r = c.command(&STANDARD.encode(fin), "334 ").await;
    let server_final = String::from_utf8(STANDARD.decode(&r[0][4..]).unwrap()).unwrap();
    let expected = scram::server_final(
        &scram::derive_keys(password.as_bytes(), &salt, iterations),
        &am,
    );
    assert_eq!(server_final, expected, "server signature");
    c.command("", "235 2.7.0").await;
}

#[tokio::test]
async fn scram_plus_binds_to_the_tls_connection_on_465_and_587() {
    let fixture = Fixture::new().await;
    let store = fixture.store_dyn();
    saslkeys::set_main_password_keys(store.as_ref(), ALICE, ALICE_PASSWORD)
        .await
        .unwrap();
    let mut config = fixture.config();
    for role in [ListenerRole::Submission, ListenerRole::Submissions] {
        config.listeners.get_mut(role).mechanisms =
            vec![Mechanism::ScramSha256Plus, Mechanism::ScramSha256];
    }
    let running = Running::start(config, Arc::clone(&store)).await;
    let tls = client_config_trusting(&running.cert_path);

    let mut c = connect_tls(running.submissions, Arc::clone(&tls)).await;
    let ehlo = c.command("EHLO client.example", "250").await;
    assert_eq!(
        ehlo.last().unwrap(),
        "250 AUTH SCRAM-SHA-256-PLUS SCRAM-SHA-256"
    );
    scram_plus(&mut c, ALICE, ALICE_PASSWORD).await;
    let ev = last_event(store.as_ref(), ALICE, 1).await;
    assert_eq!(
        (ev.mechanism.as_str(), ev.reason.as_str()),
        ("SCRAM-SHA-256-PLUS", "ok")
    );

    let mut c = connect(running.submission).await;
    c.command("EHLO client.example", "250").await;
    c.command("STARTTLS", "220").await;
    let stream = tls_handshake(c.into_inner(), Arc::clone(&tls))
        .await
        .unwrap();
    let mut c = LineClient::new(stream);
    let ehlo = c.command("EHLO client.example", "250").await;
    assert_eq!(
        ehlo.last().unwrap(),
        "250 AUTH SCRAM-SHA-256-PLUS SCRAM-SHA-256"
    );
    scram_plus(&mut c, ALICE, ALICE_PASSWORD).await;
    running.stop().await;
}

/// The salt SCRAM sends for `user` (the exchange is then cancelled).
async fn scram_salt_of(running: &Running, user: &str) -> String {
    use base64::Engine;
    let tls = client_config_trusting(&running.cert_path);
    let mut c = connect_tls(running.submissions, tls).await;
    c.command("EHLO client.example", "250").await;
    let first = base64::engine::general_purpose::STANDARD.encode(format!("n,,n={user},r=abc"));
    let r = c
        .command(&format!("AUTH SCRAM-SHA-256 {first}"), "334 ")
        .await;
    c.command("*", "501 5.0.0").await;
    let server_first = base64::engine::general_purpose::STANDARD
        .decode(&r[0][4..])
        .unwrap();
    let text = String::from_utf8(server_first).unwrap();
    text.split(',').nth(1).unwrap().to_owned()
}

#[tokio::test]
async fn unknown_users_get_a_salt_that_survives_restarts() {
    let fixture = Fixture::new().await;
    let store = fixture.store_dyn();
    saslkeys::set_main_password_keys(store.as_ref(), ALICE, ALICE_PASSWORD)
        .await
        .unwrap();
    let running = Running::start(fixture.config(), Arc::clone(&store)).await;
    let alice = scram_salt_of(&running, ALICE).await;
    let ghost = scram_salt_of(&running, "ghost@example.com").await;
    assert_ne!(alice, ghost);
    assert_eq!(ghost, scram_salt_of(&running, "ghost@example.com").await);
    running.stop().await;
    let running = Running::start(fixture.config(), Arc::clone(&store)).await;
    assert_eq!(alice, scram_salt_of(&running, ALICE).await);
    assert_eq!(ghost, scram_salt_of(&running, "ghost@example.com").await);
    running.stop().await;
}
