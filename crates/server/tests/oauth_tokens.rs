//! Issue 6: XOAUTH2 and OAUTHBEARER with JWTs on a running server. Tokens
//! from a configured issuer (JWKS file; RS256, ES256 and EdDSA keys made
//! here) and from the built-in issuer; every bad token (expired, wrong
//! audience, wrong issuer, unknown kid, bad signature, `alg: none`, HS256)
//! is refused with the RFC 7628 dance and `535 5.7.8`, its reason in the
//! audit. `curl --oauth2-bearer` logs in and sends a message.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis_server::config::{IssuerConfig, JwksSource, JwtAlgorithm};
use portcullis_server::oauth::issue_token;
use portcullis_store::AuthEventFilter;
use serde_json::{Value, json};

const ISSUER: &str = "https://idp.test/";
const AUDIENCE: &str = "smtp.test";

struct Keys {
    ec: Vec<u8>,
    rsa: Vec<u8>,
    ed: Vec<u8>,
    other_ec: Vec<u8>,
    jwks: Value,
}

/// The PKCS#1 RSAPrivateKey inside a PKCS#8 v1 document (what
/// jsonwebtoken's RSA signer wants).
fn pkcs1_of(pkcs8: &[u8]) -> Vec<u8> {
    const ALG_ID: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let at = pkcs8
        .windows(ALG_ID.len())
        .position(|w| w == ALG_ID)
        .unwrap()
        + ALG_ID.len();
    assert_eq!(pkcs8[at], 0x04, "OCTET STRING");
    let (len, skip) = match pkcs8[at + 1] {
        n if n < 0x80 => (n as usize, 2),
        0x81 => (pkcs8[at + 2] as usize, 3),
        0x82 => (((pkcs8[at + 2] as usize) << 8) | pkcs8[at + 3] as usize, 4),
        _ => panic!("unexpected length"),
    };
    pkcs8[at + skip..at + skip + len].to_vec()
}

fn make_keys() -> Keys {
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let ec = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let point = ec.public_key().as_ref().to_vec();
    let other_ec = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let rsa_pub = rsa.public_key();
    let ed = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let ed_pub = Ed25519KeyPair::from_pkcs8(ed.as_ref())
        .unwrap()
        .public_key()
        .as_ref()
        .to_vec();
    let jwks = json!({"keys": [
        {"kty": "EC", "crv": "P-256", "kid": "ec1", "alg": "ES256",
         "x": b64(&point[1..33]), "y": b64(&point[33..65])},
        {"kty": "RSA", "kid": "rsa1", "alg": "RS256",
         "n": b64(rsa_pub.modulus().big_endian_without_leading_zero()),
         "e": b64(rsa_pub.exponent().big_endian_without_leading_zero())},
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed1", "alg": "EdDSA", "x": b64(&ed_pub)},
    ]});
    let rsa_pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&rsa).unwrap();
    Keys {
        ec: ec.to_pkcs8v1().unwrap().as_ref().to_vec(),
        rsa: pkcs1_of(rsa_pkcs8.as_ref()),
        ed: ed.as_ref().to_vec(),
        other_ec: other_ec.to_pkcs8v1().unwrap().as_ref().to_vec(),
        jwks,
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(email: &str) -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "email": email, "sub": "123",
           "iat": now(), "exp": now() + 600})
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn es256(keys: &Keys, claims: &Value) -> String {
    sign(
        Algorithm::ES256,
        "ec1",
        &EncodingKey::from_ec_der(&keys.ec),
        claims,
    )
}

fn unsigned(header: Value, claims: &Value) -> String {
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    format!("{}.{}.", part(&header), part(claims))
}

fn oauthbearer(user: &str, token: &str) -> String {
    let msg = format!("n,a={user},\x01host=mx.test\x01port=465\x01auth=Bearer {token}\x01\x01");
    format!("AUTH OAUTHBEARER {}", STANDARD.encode(msg))
}

fn xoauth2(user: &str, token: &str) -> String {
    let msg = format!("user={user}\x01auth=Bearer {token}\x01\x01");
    format!("AUTH XOAUTH2 {}", STANDARD.encode(msg))
}

struct Setup {
    fixture: Fixture,
    running: Running,
    keys: Keys,
}

async fn start() -> Setup {
    start_with(|_| {}).await
}

async fn start_with(tweak: impl FnOnce(&mut portcullis_server::config::Config)) -> Setup {
    let fixture = Fixture::new().await;
    let keys = make_keys();
    let jwks_path = fixture.data_dir().join("idp-jwks.json");
    std::fs::write(&jwks_path, keys.jwks.to_string()).unwrap();
    let mut config = fixture.config();
    config.oauth.issuers.push(IssuerConfig {
        issuer: ISSUER.to_owned(),
        audience: AUDIENCE.to_owned(),
        algorithms: JwtAlgorithm::ALL.to_vec(),
        keys: JwksSource::File(jwks_path),
        claim: "email".to_owned(),
    });
    // Many failures from one IP on purpose: keep the brute-force delay short.
    config.security.bruteforce.delay = Duration::from_millis(5);
    tweak(&mut config);
    config.validate().unwrap();
    let running = Running::start(config, fixture.store_dyn()).await;
    Setup {
        fixture,
        running,
        keys,
    }
}

#[tokio::test]
async fn good_tokens_log_in_and_bad_ones_are_refused_with_a_reason() {
    let s = start().await;
    let store = s.fixture.store_dyn();
    let tls = client_config_trusting(&s.running.cert_path);
    let k = &s.keys;
    let mut c = connect_tls(s.running.submissions, Arc::clone(&tls)).await;
    let ehlo = c.command("EHLO client.example", "250").await;
    assert!(
        ehlo.last().unwrap().contains("XOAUTH2 OAUTHBEARER"),
        "{ehlo:?}"
    );

    let mut failures = 0;
    let mut refused = |c_reason: &'static str, token: String, user: &'static str| {
        failures += 1;
        (c_reason, token, user, failures)
    };
    let mut expired = claims(ALICE);
    expired["exp"] = json!(now() - 3600);
    let mut future = claims(ALICE);
    future["nbf"] = json!(now() + 3600);
    let mut wrong_aud = claims(ALICE);
    wrong_aud["aud"] = json!("someone-else");
    let mut wrong_iss = claims(ALICE);
    wrong_iss["iss"] = json!("https://evil.test/");
    let mut no_claim = claims(ALICE);
    no_claim.as_object_mut().unwrap().remove("email");
    let cases = vec![
        refused("token_expired", es256(k, &expired), ALICE),
        refused("token_not_yet_valid", es256(k, &future), ALICE),
        refused("token_wrong_audience", es256(k, &wrong_aud), ALICE),
        refused("token_unknown_issuer", es256(k, &wrong_iss), ALICE),
        refused(
            "token_unknown_kid",
            sign(
                Algorithm::ES256,
                "nokid",
                &EncodingKey::from_ec_der(&k.ec),
                &claims(ALICE),
            ),
            ALICE,
        ),
        refused(
            "token_bad_signature",
            sign(
                Algorithm::ES256,
                "ec1",
                &EncodingKey::from_ec_der(&k.other_ec),
                &claims(ALICE),
            ),
            ALICE,
        ),
        refused(
            "token_alg_refused",
            unsigned(json!({"alg": "none", "typ": "JWT"}), &claims(ALICE)),
            ALICE,
        ),
        refused(
            "token_alg_refused",
            sign(
                Algorithm::HS256,
                "ec1",
                &EncodingKey::from_secret(b"k").unwrap(),
                &claims(ALICE),
            ),
            ALICE,
        ),
        refused("token_no_claim", es256(k, &no_claim), ALICE),
        refused("authzid_mismatch", es256(k, &claims(ALICE)), BOB),
        refused("disabled", es256(k, &claims(CAROL)), CAROL),
    ];
    // A fresh connection per failure keeps clear of max_auth_failures.
    let mut seen = std::collections::HashMap::<&str, usize>::new();
    for (reason, token, user, _) in cases {
        let mut c = connect_tls(s.running.submissions, Arc::clone(&tls)).await;
        c.command("EHLO client.example", "250").await;
        let r = c.command(&oauthbearer(user, &token), "334 ").await;
        let json = STANDARD.decode(r[0].trim_start_matches("334 ")).unwrap();
        let json: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(json["status"], "invalid_token", "{reason}");
        c.command("AQ==", "535 5.7.8").await;
        let n = seen.entry(user).or_default();
        *n += 1;
        let ev = last_event(store.as_ref(), user, *n).await;
        assert_eq!(
            (ev.reason.as_str(), ev.mechanism.as_str(), ev.success),
            (reason, "OAUTHBEARER", false),
            "{ev:?}"
        );
    }

    // Good tokens: ES256 (OAUTHBEARER), RS256 and EdDSA (XOAUTH2), built-in.
    c.command(&oauthbearer(ALICE, &es256(k, &claims(ALICE))), "235 2.7.0")
        .await;
    let ev = last_event(store.as_ref(), ALICE, seen[ALICE] + 1).await;
    assert_eq!(ev.credential.as_deref(), Some("token:https://idp.test/"));
    let rsa = sign(
        Algorithm::RS256,
        "rsa1",
        &EncodingKey::from_rsa_der(&k.rsa),
        &claims(BOB),
    );
    let mut c = connect_tls(s.running.submissions, Arc::clone(&tls)).await;
    c.command("EHLO client.example", "250").await;
    c.command(&xoauth2(BOB, &rsa), "235 2.7.0").await;
    let ed = sign(
        Algorithm::EdDSA,
        "ed1",
        &EncodingKey::from_ed_der(&k.ed),
        &claims(ALICE),
    );
    let mut c = connect_tls(s.running.submissions, Arc::clone(&tls)).await;
    c.command("EHLO client.example", "250").await;
    c.command(&xoauth2(ALICE, &ed), "235 2.7.0").await;
    let builtin = issue_token(
        s.fixture.data_dir(),
        HOSTNAME,
        ALICE,
        Duration::from_secs(60),
    )
    .unwrap();
    let mut c = connect_tls(s.running.submissions, Arc::clone(&tls)).await;
    c.command("EHLO client.example", "250").await;
    // OAUTHBEARER without a= : the account comes from the token.
    let msg = format!("n,,\x01auth=Bearer {builtin}\x01\x01");
    c.command(
        &format!("AUTH OAUTHBEARER {}", STANDARD.encode(msg)),
        "235 2.7.0",
    )
    .await;
    c.command("MAIL FROM:<alice@example.com>", "250").await;
    s.running.stop().await;
}

#[tokio::test]
async fn curl_sends_with_oauth2_bearer() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("curl is needed (apt-get install curl; .ci/run installs it)");
    }
    // Port 587 offers only XOAUTH2 (curl prefers OAUTHBEARER when offered).
    let s = start_with(|c| {
        c.listeners
            .get_mut(portcullis_server::config::ListenerRole::Submission)
            .mechanisms = vec![portcullis_proto::Mechanism::XOAuth2];
    })
    .await;
    let token = issue_token(
        s.fixture.data_dir(),
        HOSTNAME,
        ALICE,
        Duration::from_secs(300),
    )
    .unwrap();
    let mail = s.fixture.data_dir().join("mail.txt");
    std::fs::write(
        &mail,
        "From: alice@example.com\r\nTo: bob@example.com\r\nSubject: curl\r\n\r\nhello\r\n",
    )
    .unwrap();
    let urls = [
        format!("smtps://127.0.0.1:{}", s.running.submissions.port()),
        format!("smtp://127.0.0.1:{}", s.running.submission.port()),
    ];
    for url in urls {
        let mech = url.clone();
        let out = tokio::process::Command::new("curl")
            .args([
                "--silent",
                "--show-error",
                "--insecure",
                "--ssl-reqd",
                "--max-time",
                "20",
            ])
            .arg(url)
            .args(["--user", &format!("{ALICE}:")])
            .args(["--oauth2-bearer", &token])
            .args(["--mail-from", ALICE, "--mail-rcpt", BOB, "--upload-file"])
            .arg(&mail)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(30), out)
            .await
            .expect("curl timed out")
            .expect("curl runs");
        assert!(
            out.status.success(),
            "curl {mech}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let filter = AuthEventFilter {
        user: Some(ALICE.to_owned()),
        ..AuthEventFilter::default()
    };
    let store = s.fixture.store_dyn();
    last_event(store.as_ref(), ALICE, 2).await;
    let events = store.auth_events(&filter).await.unwrap();
    let mechs: Vec<&str> = events.iter().map(|e| e.mechanism.as_str()).collect();
    assert!(
        mechs.contains(&"OAUTHBEARER") && mechs.contains(&"XOAUTH2"),
        "{mechs:?}"
    );
    // A bad token through curl: refused.
    let out = tokio::process::Command::new("curl")
        .args(["--silent", "--insecure", "--max-time", "20"])
        .arg(format!(
            "smtps://127.0.0.1:{}",
            s.running.submissions.port()
        ))
        .args([
            "--user",
            &format!("{ALICE}:"),
            "--oauth2-bearer",
            "not.a.token",
        ])
        .args(["--mail-from", ALICE, "--mail-rcpt", BOB, "--upload-file"])
        .arg(&mail)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("curl timed out")
        .expect("curl runs");
    assert_eq!(out.status.code(), Some(67), "curl: login denied");
    s.running.stop().await;
}

/// A one-route HTTP server for JWKS documents: serves what `doc` holds and
/// counts requests. Stops with the test's runtime.
async fn jwks_server(
    doc: Arc<std::sync::Mutex<String>>,
    hits: Arc<std::sync::atomic::AtomicUsize>,
) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let doc = Arc::clone(&doc);
            let hits = Arc::clone(&hits);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tokio::time::timeout(IO_TIMEOUT, sock.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = doc.lock().unwrap().clone();
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn jwks_url_is_fetched_cached_and_refreshed_on_unknown_kid() {
    let keys = make_keys();
    let first = json!({"keys": [keys.jwks["keys"][0].clone()]});
    let doc = Arc::new(std::sync::Mutex::new(first.to_string()));
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let http = jwks_server(Arc::clone(&doc), Arc::clone(&hits)).await;
    // A port with nothing listening: that IdP is down.
    let down = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down_addr = down.local_addr().unwrap();
    drop(down);

    let fixture = Fixture::new().await;
    let mut config = fixture.config();
    config.security.bruteforce.delay = Duration::from_millis(5);
    config.oauth.builtin_issuer = false;
    for (issuer, addr) in [(ISSUER, http), ("https://down.test/", down_addr)] {
        config.oauth.issuers.push(IssuerConfig {
            issuer: issuer.to_owned(),
            audience: AUDIENCE.to_owned(),
            algorithms: vec![JwtAlgorithm::Es256, JwtAlgorithm::EdDsa],
            keys: JwksSource::Url(format!("http://{addr}/jwks.json")),
            claim: "email".to_owned(),
        });
    }
    config.validate().unwrap();
    let running = Running::start(config, fixture.store_dyn()).await;
    let store = fixture.store_dyn();
    let tls = client_config_trusting(&running.cert_path);
    let login = |line: String, expect: &'static str| {
        let tls = Arc::clone(&tls);
        let addr = running.submissions;
        async move {
            let mut c = connect_tls(addr, tls).await;
            c.command("EHLO client.example", "250").await;
            c.send(&line).await;
            let r = c.reply().await;
            if r[0].starts_with("334 ") {
                c.command("AQ==", "535 5.7.8").await;
            }
            assert!(
                r[0].starts_with(expect),
                "{line}: expected {expect}, got {r:?}"
            );
            r
        }
    };
    let hits_now = || hits.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(hits_now(), 0, "fetched on first use, not at startup");

    login(
        oauthbearer(ALICE, &es256(&keys, &claims(ALICE))),
        "235 2.7.0",
    )
    .await;
    assert_eq!(hits_now(), 1);
    login(
        oauthbearer(ALICE, &es256(&keys, &claims(ALICE))),
        "235 2.7.0",
    )
    .await;
    assert_eq!(hits_now(), 1, "cached");

    // Key rotation: the IdP now also publishes the Ed25519 key.
    *doc.lock().unwrap() = keys.jwks.to_string();
    let ed = sign(
        Algorithm::EdDSA,
        "ed1",
        &EncodingKey::from_ed_der(&keys.ed),
        &claims(BOB),
    );
    login(oauthbearer(BOB, &ed), "235 2.7.0").await;
    assert_eq!(hits_now(), 2, "refreshed on an unknown kid");
    // Another unknown kid right away: no new fetch (at most one per 30 s).
    let unknown = sign(
        Algorithm::ES256,
        "zzz",
        &EncodingKey::from_ec_der(&keys.ec),
        &claims(ALICE),
    );
    login(oauthbearer(ALICE, &unknown), "334 ").await;
    assert_eq!(hits_now(), 2);
    assert_eq!(
        last_event(store.as_ref(), ALICE, 3).await.reason,
        "token_unknown_kid"
    );
    // An algorithm the issuer does not allow (RS256 here).
    let rsa = sign(
        Algorithm::RS256,
        "rsa1",
        &EncodingKey::from_rsa_der(&keys.rsa),
        &claims(ALICE),
    );
    login(oauthbearer(ALICE, &rsa), "334 ").await;
    assert_eq!(
        last_event(store.as_ref(), ALICE, 4).await.reason,
        "token_alg_refused"
    );

    // The other IdP is unreachable: 454 4.7.0, reason idp_unavailable.
    let mut down_claims = claims(BOB);
    down_claims["iss"] = json!("https://down.test/");
    login(oauthbearer(BOB, &es256(&keys, &down_claims)), "454 4.7.0").await;
    assert_eq!(
        last_event(store.as_ref(), BOB, 2).await.reason,
        "idp_unavailable"
    );
    running.stop().await;
}
