//! Real-network TLS tests: the server runs `run()` on 127.0.0.1 listeners
//! (port 0) and real clients talk to it — lettre for submission, raw
//! tokio-rustls for protocol versions and certificate reloads, and a
//! hand-made ClientHello for the TLS versions rustls clients cannot offer.
//! Every client trusts exactly the server's certificate (no verification
//! shortcuts).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{
    ALICE, ALICE_PASSWORD, Fixture, IO_TIMEOUT, LineClient, Running, cert_from_pem_file,
    client_config, client_config_trusting, connect, connect_tls, peer_certificate, tls_handshake,
};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use portcullis_store::Store;
use rustls::ProtocolVersion;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// lettre TLS parameters trusting only the certificate at `cert_path`.
fn lettre_tls(cert_path: &Path) -> TlsParameters {
    let pem = std::fs::read(cert_path).expect("read certificate");
    let cert = Certificate::from_pem(&pem).expect("Certificate::from_pem");
    TlsParameters::builder("localhost".into())
        .certificate_store(CertificateStore::None)
        .add_root_certificate(cert)
        .build()
        .expect("TlsParameters")
}

fn transport(
    port: u16,
    tls: Tls,
    password: &str,
    mechanism: Mechanism,
) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .tls(tls)
        .hello_name(ClientId::Domain("client.example".into()))
        .credentials(Credentials::new(ALICE.to_owned(), password.to_owned()))
        .authentication(vec![mechanism])
        .timeout(Some(Duration::from_secs(10)))
        .build()
}

fn message(subject: &str) -> Message {
    Message::builder()
        .from(ALICE.parse::<Mailbox>().expect("from"))
        .to("friend@example.org".parse::<Mailbox>().expect("to"))
        .subject(subject)
        .body(format!("Hello from lettre: {subject}\r\n"))
        .expect("message")
}

/// Sends one message and checks it reached the queue with alice as the
/// authenticated sender, and that the spool file records the TLS session.
async fn send_and_check(
    fixture: &Fixture,
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    subject: &str,
    protocol: &str,
) {
    let response = tokio::time::timeout(Duration::from_secs(20), transport.send(message(subject)))
        .await
        .expect("lettre send timed out")
        .unwrap_or_else(|e| panic!("lettre send failed: {e}"));
    assert_eq!(u16::from(response.code()), 250);
    let first = response.first_line().expect("response text").to_owned();
    let id = first
        .strip_prefix("2.0.0 Ok: queued as ")
        .unwrap_or_else(|| panic!("unexpected reply {first:?}"));
    let queue = fixture.store.list_queue().await.expect("list_queue");
    let m = queue
        .iter()
        .find(|m| m.id == id)
        .unwrap_or_else(|| panic!("{id} not in the queue: {queue:?}"));
    assert_eq!(m.sender, ALICE);
    assert_eq!(m.recipients, vec!["friend@example.org".to_owned()]);
    assert_eq!(m.auth_user.as_deref(), Some(ALICE));
    assert_eq!(m.client_ip, "127.0.0.1");
    let spooled = common::read_body(fixture.data_dir(), &m.spool_path);
    assert!(
        spooled.starts_with("Received: from client.example ([127.0.0.1])"),
        "{spooled}"
    );
    assert!(
        spooled.contains(&format!(" with {protocol} id {id}")),
        "{spooled}"
    );
    assert!(
        spooled.contains("(using TLSv1."),
        "TLS parameters recorded: {spooled}"
    );
    assert!(
        spooled.contains(&format!("Subject: {subject}\r\n")),
        "{spooled}"
    );
    assert!(
        spooled.contains(&format!("Hello from lettre: {subject}")),
        "{spooled}"
    );
}

/// (a) Port 587 with STARTTLS required and AUTH PLAIN.
#[tokio::test]
async fn lettre_submission_starttls_auth_plain() {
    let fixture = Fixture::new().await;
    let server = Running::start(fixture.config(), fixture.store_dyn()).await;
    let t = transport(
        server.submission.port(),
        Tls::Required(lettre_tls(&server.cert_path)),
        ALICE_PASSWORD,
        Mechanism::Plain,
    );
    send_and_check(&fixture, &t, "starttls plain", "ESMTPSA").await;
    server.stop().await;
}

/// (b) AUTH LOGIN over STARTTLS.
#[tokio::test]
async fn lettre_submission_starttls_auth_login() {
    let fixture = Fixture::new().await;
    let server = Running::start(fixture.config(), fixture.store_dyn()).await;
    let t = transport(
        server.submission.port(),
        Tls::Required(lettre_tls(&server.cert_path)),
        ALICE_PASSWORD,
        Mechanism::Login,
    );
    send_and_check(&fixture, &t, "starttls login", "ESMTPSA").await;
    server.stop().await;
}

/// (c) Implicit TLS on port 465.
#[tokio::test]
async fn lettre_submissions_implicit_tls() {
    let fixture = Fixture::new().await;
    let server = Running::start(fixture.config(), fixture.store_dyn()).await;
    let t = transport(
        server.submissions.port(),
        Tls::Wrapper(lettre_tls(&server.cert_path)),
        ALICE_PASSWORD,
        Mechanism::Plain,
    );
    send_and_check(&fixture, &t, "implicit tls", "ESMTPSA").await;
    server.stop().await;
}

/// (d) A wrong password: lettre reports 535 and nothing is queued.
#[tokio::test]
async fn lettre_wrong_password_is_535() {
    let fixture = Fixture::new().await;
    let server = Running::start(fixture.config(), fixture.store_dyn()).await;
    for (port, tls) in [
        (
            server.submission.port(),
            Tls::Required(lettre_tls(&server.cert_path)),
        ),
        (
            server.submissions.port(),
            Tls::Wrapper(lettre_tls(&server.cert_path)),
        ),
    ] {
        let t = transport(port, tls, "not the password", Mechanism::Plain);
        let err = tokio::time::timeout(Duration::from_secs(20), t.send(message("wrong password")))
            .await
            .expect("lettre send timed out")
            .expect_err("a wrong password must fail");
        let code = err.status().map(u16::from);
        assert_eq!(code, Some(535), "lettre error: {err}");
        assert!(err.is_permanent(), "{err}");
    }
    assert!(
        fixture
            .store
            .list_queue()
            .await
            .expect("list_queue")
            .is_empty()
    );
    server.stop().await;
}

/// lettre refuses a server whose certificate it does not trust (checks that
/// the tests above really verify the certificate).
#[tokio::test]
async fn lettre_rejects_an_untrusted_certificate() {
    let fixture = Fixture::new().await;
    let server = Running::start(fixture.config(), fixture.store_dyn()).await;
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    let params = TlsParameters::builder("localhost".into())
        .certificate_store(CertificateStore::None)
        .add_root_certificate(Certificate::from_pem(other.cert.pem().as_bytes()).expect("pem"))
        .build()
        .expect("TlsParameters");
    let t = transport(
        server.submissions.port(),
        Tls::Wrapper(params),
        ALICE_PASSWORD,
        Mechanism::Plain,
    );
    let result = tokio::time::timeout(Duration::from_secs(20), t.send(message("untrusted")))
        .await
        .expect("lettre send timed out");
    assert!(
        result.is_err(),
        "an untrusted certificate must fail the handshake"
    );
    assert!(
        fixture
            .store
            .list_queue()
            .await
            .expect("list_queue")
            .is_empty()
    );
    server.stop().await;
}

/// (e) TLS 1.2 and TLS 1.3 both negotiate, on 465 and via STARTTLS on 587.
///
/// rustls clients cannot offer TLS 1.0 or 1.1 at all, so the refusal of the
/// old versions is tested with a hand-made ClientHello in
/// `tls_1_0_and_1_1_client_hellos_are_refused`.
#[tokio::test]
async fn tls_1_2_and_1_3_are_negotiated() {
    let fixture = Fixture::new().await;
    let server = Running::start(fixture.config(), fixture.store_dyn()).await;
    let cert = cert_from_pem_file(&server.cert_path);
    let cases = [
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
    ];
    for (version, expected) in cases {
        let config = client_config(std::slice::from_ref(&cert), &[version]);

        // Implicit TLS.
        let mut c = connect_tls(server.submissions, config.clone()).await;
        let negotiated = c
            .get_ref()
            .get_ref()
            .1
            .protocol_version()
            .expect("negotiated version");
        assert_eq!(negotiated, expected);
        assert!(u16::from(negotiated) >= u16::from(ProtocolVersion::TLSv1_2));
        // rustls clients list AES-256-GCM first; the server picks AES-128-GCM
        // (SHA-256 key schedule: issue 9), and only from what was offered.
        let suite = c
            .get_ref()
            .get_ref()
            .1
            .negotiated_cipher_suite()
            .expect("negotiated suite")
            .suite();
        let want = if expected == ProtocolVersion::TLSv1_3 {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        } else {
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        };
        assert_eq!(suite, want);
        let ehlo = c.command("EHLO client.example", "250 ").await;
        assert_eq!(
            ehlo.last().map(String::as_str),
            Some("250 AUTH PLAIN LOGIN SCRAM-SHA-256 XOAUTH2 OAUTHBEARER")
        );
        c.command("QUIT", "221 2.0.0").await;

        // STARTTLS.
        let mut plain = connect(server.submission).await;
        plain.command("EHLO client.example", "250 STARTTLS").await;
        plain.command("STARTTLS", "220 2.0.0").await;
        let tls = tls_handshake(plain.into_inner(), config)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tls.get_ref().1.protocol_version(), Some(expected));
        // A client that offers only AES-256-GCM still gets it.
        let only = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::CryptoProvider {
                cipher_suites: rustls::crypto::aws_lc_rs::default_provider()
                    .cipher_suites
                    .into_iter()
                    .filter(|s| {
                        matches!(
                            s.suite(),
                            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
                                | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                        )
                    })
                    .collect(),
                ..rustls::crypto::aws_lc_rs::default_provider()
            },
        ))
        .with_protocol_versions(&[version])
        .expect("versions")
        .with_root_certificates({
            let mut roots = rustls::RootCertStore::empty();
            roots.add(cert.clone()).expect("root");
            roots
        })
        .with_no_client_auth();
        let c256 = connect_tls(server.submissions, std::sync::Arc::new(only)).await;
        let suite = c256.get_ref().get_ref().1.negotiated_cipher_suite();
        assert!(
            matches!(
                suite.map(|s| s.suite()),
                Some(
                    rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
                        | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                )
            ),
            "{suite:?}"
        );
        let mut c = LineClient::new(tls);
        c.command("NOOP", "250 2.0.0").await;
        c.command("QUIT", "221 2.0.0").await;
    }
    server.stop().await;
}

/// A minimal ClientHello with `legacy_version` and no supported_versions
/// extension, offering TLS 1.0-1.2 cipher suites (CBC and GCM, ECDHE with
/// ECDSA or RSA) and the usual extensions.
fn client_hello(legacy_version: [u8; 2]) -> Vec<u8> {
    fn u16be(n: usize) -> [u8; 2] {
        u16::try_from(n).expect("fits u16").to_be_bytes()
    }
    fn extension(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut e = kind.to_be_bytes().to_vec();
        e.extend_from_slice(&u16be(data.len()));
        e.extend_from_slice(data);
        e
    }
    let suites: [u16; 8] = [
        0xc02b, 0xc02f, 0xc009, 0xc013, 0xc00a, 0xc014, 0x002f, 0x0035,
    ];
    let mut body = legacy_version.to_vec();
    body.extend_from_slice(&[0x5a; 32]); // random
    body.push(0); // empty session id
    body.extend_from_slice(&u16be(suites.len() * 2));
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null
    let mut ext = Vec::new();
    let name = b"localhost";
    let mut sni = u16be(name.len() + 3).to_vec();
    sni.push(0);
    sni.extend_from_slice(&u16be(name.len()));
    sni.extend_from_slice(name);
    ext.extend(extension(0x0000, &sni)); // server_name
    ext.extend(extension(0x000a, &[0, 4, 0x00, 0x1d, 0x00, 0x17])); // supported_groups: x25519, P-256
    ext.extend(extension(0x000b, &[1, 0])); // ec_point_formats: uncompressed
    ext.extend(extension(
        0x000d,
        &[0, 6, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01],
    )); // signature_algorithms
    ext.extend(extension(0x0017, &[])); // extended_master_secret
    ext.extend(extension(0xff01, &[0])); // renegotiation_info
    body.extend_from_slice(&u16be(ext.len()));
    body.extend_from_slice(&ext);
    let len = u32::try_from(body.len()).expect("fits").to_be_bytes();
    let mut handshake = vec![1, len[1], len[2], len[3]]; // client_hello
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16be(handshake.len()));
    record.extend_from_slice(&handshake);
    record
}

/// Sends `hello` to the implicit-TLS port and returns the first TLS record
/// header byte and the bytes read (until EOF or 5 s).
async fn first_server_record(addr: std::net::SocketAddr, hello: &[u8]) -> Vec<u8> {
    let mut s = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    s.write_all(hello).await.expect("write hello");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // Enough for a record header and a few bytes, or EOF.
    while got.len() < 7 {
        match tokio::time::timeout(IO_TIMEOUT, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer to the ClientHello within {IO_TIMEOUT:?}"),
        }
    }
    got
}

/// (e, continued) TLS 1.0 and 1.1 cannot be negotiated: the same ClientHello
/// that gets a ServerHello as TLS 1.2 gets a fatal alert as 1.0 or 1.1.
#[tokio::test]
async fn tls_1_0_and_1_1_client_hellos_are_refused() {
    let fixture = Fixture::new().await;
    let server = Running::start(fixture.config(), fixture.store_dyn()).await;

    // Control: the hand-made hello is acceptable as TLS 1.2.
    let got = first_server_record(server.submissions, &client_hello([3, 3])).await;
    assert_eq!(
        got.first(),
        Some(&0x16),
        "TLS 1.2 hello must get a handshake record: {got:02x?}"
    );
    assert_eq!(
        got.get(5),
        Some(&2),
        "the handshake message must be a ServerHello: {got:02x?}"
    );

    for (name, version) in [("TLS 1.0", [3, 1]), ("TLS 1.1", [3, 2])] {
        let got = first_server_record(server.submissions, &client_hello(version)).await;
        assert_eq!(
            got.first(),
            Some(&0x15),
            "{name} hello must get an alert record: {got:02x?}"
        );
        assert_eq!(
            got.get(5),
            Some(&2),
            "{name}: the alert must be fatal: {got:02x?}"
        );
        assert_eq!(
            got.get(6),
            Some(&70),
            "{name}: the alert must be protocol_version: {got:02x?}"
        );
    }
    server.stop().await;
}

/// A self-signed certificate for "localhost" with its own subject name, so
/// that two of them in one trust store are told apart.
fn make_cert(common_name: &str) -> (String, String, CertificateDer<'static>) {
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "mx.test".to_owned()])
            .expect("certificate params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let key = rcgen::KeyPair::generate().expect("key pair");
    let cert = params.self_signed(&key).expect("self-signed");
    (cert.pem(), key.serialize_pem(), cert.der().clone())
}

/// (f) Reload (what SIGHUP does): new handshakes get the new certificate,
/// established sessions keep working; a broken key or a mismatched pair is
/// refused and the certificate in use stays.
#[tokio::test]
async fn certificate_reload() {
    let fixture = Fixture::new().await;
    let dir = fixture.data_dir().join("certs");
    std::fs::create_dir_all(&dir).expect("certs dir");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (a_pem, a_key, a_der) = make_cert("Portcullis test A");
    let (b_pem, b_key, b_der) = make_cert("Portcullis test B");
    let (c_pem, _, _) = make_cert("Portcullis test C");
    std::fs::write(&cert_path, &a_pem).expect("write cert A");
    std::fs::write(&key_path, &a_key).expect("write key A");

    let mut config = fixture.config();
    config.tls.cert = Some(cert_path.clone());
    config.tls.key = Some(key_path.clone());
    let server = Running::start(config, fixture.store_dyn()).await;
    assert_eq!(server.cert_path, cert_path);
    let trust = client_config(&[a_der.clone(), b_der.clone()], rustls::ALL_VERSIONS);

    let mut old = connect_tls(server.submissions, trust.clone()).await;
    assert_eq!(
        peer_certificate(&old),
        a_der,
        "serves the configured certificate"
    );
    old.command("EHLO client.example", "250 AUTH PLAIN LOGIN")
        .await;

    std::fs::write(&cert_path, &b_pem).expect("write cert B");
    std::fs::write(&key_path, &b_key).expect("write key B");
    server.reloader.reload().expect("reload with a valid pair");

    let mut new = connect_tls(server.submissions, trust.clone()).await;
    assert_eq!(
        peer_certificate(&new),
        b_der,
        "new handshakes use the reloaded certificate"
    );
    new.command("NOOP", "250 2.0.0").await;
    // STARTTLS handshakes too.
    let mut plain = connect(server.submission).await;
    plain.command("STARTTLS", "220 2.0.0").await;
    let tls = tls_handshake(plain.into_inner(), trust.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let starttls = LineClient::new(tls);
    assert_eq!(peer_certificate(&starttls), b_der);
    // The session opened before the reload goes on.
    old.command("NOOP", "250 2.0.0").await;
    assert_eq!(peer_certificate(&old), a_der);

    // A key file that is not a key: refused, B stays.
    std::fs::write(
        &key_path,
        "-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n",
    )
    .expect("write broken key");
    let err = server
        .reloader
        .reload()
        .expect_err("a broken key must be refused");
    assert!(
        err.to_string().contains("key.pem"),
        "the error names the file: {err}"
    );
    let mut after = connect_tls(server.submissions, trust.clone()).await;
    assert_eq!(
        peer_certificate(&after),
        b_der,
        "the old certificate keeps working"
    );
    after.command("NOOP", "250 2.0.0").await;

    // A certificate that does not match the key: refused, B stays.
    std::fs::write(&cert_path, &c_pem).expect("write cert C");
    std::fs::write(&key_path, &b_key).expect("write key B");
    let err = server
        .reloader
        .reload()
        .expect_err("a mismatched pair must be refused");
    assert!(
        err.to_string().contains("cert.pem"),
        "the error names the file: {err}"
    );
    let mut after = connect_tls(server.submissions, trust.clone()).await;
    assert_eq!(
        peer_certificate(&after),
        b_der,
        "the old certificate keeps working"
    );
    after.command("NOOP", "250 2.0.0").await;

    // An empty certificate file: refused, B stays.
    std::fs::write(&cert_path, "").expect("truncate cert");
    server
        .reloader
        .reload()
        .expect_err("an empty certificate file must be refused");
    let mut after = connect_tls(server.submissions, trust).await;
    assert_eq!(peer_certificate(&after), b_der);

    for c in [&mut old, &mut new, &mut after] {
        c.command("QUIT", "221 2.0.0").await;
    }
    server.stop().await;
}

/// The generated self-signed certificate names the hostname and localhost,
/// and is reused on the next start instead of being replaced.
#[tokio::test]
async fn generated_certificate_is_reused() {
    let fixture = Fixture::new().await;
    let server = Running::start(fixture.config(), fixture.store_dyn()).await;
    let first = std::fs::read(&server.cert_path).expect("generated certificate");
    let mut c = connect_tls(
        server.submissions,
        client_config_trusting(&server.cert_path),
    )
    .await;
    c.command("QUIT", "221 2.0.0").await;
    server.stop().await;

    let server = Running::start(fixture.config(), fixture.store_dyn()).await;
    assert_eq!(
        std::fs::read(&server.cert_path).expect("certificate"),
        first
    );
    let mut c = connect_tls(
        server.submissions,
        client_config_trusting(&server.cert_path),
    )
    .await;
    c.command("QUIT", "221 2.0.0").await;
    server.stop().await;
}

/// (g) Graceful shutdown: an idle session is told 421 4.3.2 and closed, and
/// run() returns promptly.
#[tokio::test]
async fn shutdown_tells_idle_sessions_and_returns() {
    let fixture = Fixture::new().await;
    let mut server = Running::start(fixture.config(), fixture.store_dyn()).await;
    let mut smtp = connect(server.smtp).await;
    smtp.command("EHLO client.example", "250 STARTTLS").await;
    let mut tls = connect_tls(
        server.submissions,
        client_config_trusting(&server.cert_path),
    )
    .await;
    tls.command("EHLO client.example", "250 AUTH").await;

    server.trigger_shutdown();
    smtp.expect("421 4.3.2").await;
    smtp.expect_closed().await;
    tls.expect("421 4.3.2").await;
    tls.expect_closed().await;
    let took = server.stop_within(Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(5), "run() took {took:?}");
}

/// Shutdown lets a message in progress finish, then says 421 4.3.2.
#[tokio::test]
async fn shutdown_lets_a_message_in_progress_finish() {
    let fixture = Fixture::new().await;
    let mut server = Running::start(fixture.config(), fixture.store_dyn()).await;
    let smtp_addr = server.smtp;
    let mut c = connect(smtp_addr).await;
    c.command("EHLO client.example", "250 STARTTLS").await;
    c.command("MAIL FROM:<someone@example.net>", "250 2.1.0")
        .await;
    c.command("RCPT TO:<alice@example.com>", "250 2.1.5").await;
    c.command("DATA", "354").await;
    c.send("Subject: during shutdown").await;
    c.send("").await;

    server.trigger_shutdown();
    // The listener closes; give it a moment, then check nothing new is accepted.
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.send("still being written").await;
    c.send(".").await;
    c.expect("250 2.0.0 Ok: queued as").await;
    c.expect("421 4.3.2").await;
    c.expect_closed().await;
    server.stop_within(Duration::from_secs(5)).await;

    let queue = fixture.store.list_queue().await.expect("list_queue");
    assert_eq!(queue.len(), 1);
    let refused = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(smtp_addr)).await;
    assert!(
        matches!(refused, Ok(Err(_))),
        "the listener must be closed after shutdown"
    );
}
