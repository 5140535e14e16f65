//! Sending domains (issue 7) end to end: DKIM signatures of submitted mail
//! checked by an independent verifier (Python dkimpy, fed the records that
//! `portcullis domain dns` prints), also after delivery to a second
//! Portcullis; inbound SPF/DKIM/DMARC against a real DNS server on loopback
//! (portcullis-testdns): pass, fail, none, forged signatures, DMARC
//! p=reject refusals and DNS errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{ALICE, ALICE_PASSWORD, Fixture, LineClient, Running};
use portcullis_server::config::Config;
use portcullis_server::mail_auth::{keys, records, sign};
use portcullis_store::{DkimKey, Store};
use portcullis_testdns::{TestDns, Zone};

/// Generates and stores a key pair for `domain` the way `domain add` does;
/// returns the stored keys.
async fn add_keys(store: &dyn Store, domain: &str) -> Vec<DkimKey> {
    if !store.is_local_domain(domain).await.unwrap() {
        store.add_domain(domain).await.unwrap();
    }
    let pair = tokio::task::spawn_blocking(|| keys::generate_pair("pc202612"))
        .await
        .unwrap()
        .unwrap();
    store.add_dkim_keys(domain, &pair).await.unwrap();
    store.dkim_keys(domain).await.unwrap()
}

/// The DKIM (name, TXT value) pairs as `domain dns` prints them.
fn dkim_txt(config: &Config, domain: &str, keys: &[DkimKey]) -> Vec<(String, String)> {
    records::domain_records(config, domain, keys)
        .into_iter()
        .filter(|r| matches!(r.purpose, records::Purpose::Dkim { .. }))
        .map(|r| match r.kind {
            records::RecordKind::Txt(t) => (r.name, t),
            records::RecordKind::Mx { .. } => unreachable!(),
        })
        .collect()
}

/// dkimpy's verdict on each DKIM-Signature of `message`: (a=, verified).
fn dkimpy(message: &[u8], txt: &[(String, String)]) -> Vec<(String, bool)> {
    let script = r#"
import json, os, sys
import dkim
records = json.loads(os.environ["DKIM_RECORDS"])
def dnsfunc(name, timeout=5):
    if isinstance(name, bytes):
        name = name.decode()
    return records.get(name.rstrip(".").lower(), "").encode()
msg = sys.stdin.buffer.read()
d = dkim.DKIM(msg)
sigs = [h for h in d.headers if h[0].lower() == b"dkim-signature"]
for i, (_, value) in enumerate(sigs):
    tags = dict(p.strip().split("=", 1) for p in value.decode().replace("\r\n", "").split(";") if "=" in p)
    try:
        ok = dkim.DKIM(msg).verify(idx=i, dnsfunc=dnsfunc)
    except dkim.ValidationError:
        ok = False
    print(tags.get("a", "?").strip(), ok)
"#;
    let records: serde_like::Map = txt.iter().cloned().collect();
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("DKIM_RECORDS", serde_like::to_json(&records))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (dkimpy and pynacl installed: see .ci/run)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(message).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "dkimpy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (a, ok) = l.rsplit_once(' ').unwrap();
            (a.to_owned(), ok == "True")
        })
        .collect()
}

/// A minimal JSON object writer (string keys and values only).
mod serde_like {
    pub type Map = std::collections::BTreeMap<String, String>;

    fn quote(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    pub fn to_json(map: &Map) -> String {
        let items: Vec<String> = map
            .iter()
            .map(|(k, v)| format!("{}: {}", quote(k), quote(v)))
            .collect();
        format!("{{{}}}", items.join(", "))
    }
}

fn plain(user: &str, password: &str) -> String {
    format!(
        "AUTH PLAIN {}",
        base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
    )
}

/// Sends one message through `c` (after the greeting); returns the last
/// line of the reply to the final dot.
async fn transaction<S>(
    c: &mut LineClient<S>,
    auth: bool,
    from: &str,
    to: &str,
    message: &str,
) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    c.command("EHLO client.example", "250").await;
    if auth {
        c.command(&plain(ALICE, ALICE_PASSWORD), "235").await;
    }
    c.command(&format!("MAIL FROM:<{from}>"), "250").await;
    c.command(&format!("RCPT TO:<{to}>"), "250").await;
    c.command("DATA", "354").await;
    c.write_raw(message.as_bytes()).await;
    c.send(".").await;
    c.reply().await.last().cloned().unwrap_or_default()
}

/// Submits `message` as alice on port 465; returns the queue id.
async fn submit(server: &Running, to: &str, message: &str) -> String {
    let tls = common::client_config_trusting(&server.cert_path);
    let mut c = common::connect_tls(server.submissions, tls).await;
    let reply = transaction(&mut c, true, ALICE, to, message).await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    reply.rsplit(' ').next().unwrap().to_owned()
}

async fn spooled(store: &dyn Store, data_dir: &std::path::Path, id: &str) -> String {
    let entry = store.queue_entry(id).await.unwrap().expect("queued");
    common::read_body(data_dir, &entry.spool_path)
}

/// The header block of a message, unfolded, one field per entry.
fn fields(message: &str) -> Vec<String> {
    let head = message.split("\r\n\r\n").next().unwrap();
    let mut out: Vec<String> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
        } else {
            out.push(line.to_owned());
        }
    }
    out
}

const NO_ID_NO_DATE: &str = "From: Alice <alice@example.com>\r\nTo: zed@remote.test\r\n\
Subject: Signed twice\r\n\r\nHello from Portcullis.\r\n\r\n-- \r\nAlice\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_mail_carries_ed25519_and_rsa_signatures_dkimpy_verifies() {
    let fx = Fixture::new().await;
    let store = fx.store_dyn();
    let keys = add_keys(&*store, "example.com").await;
    let config = fx.config();
    let txt = dkim_txt(&config, "example.com", &keys);
    let server = Running::start(config, Arc::clone(&store)).await;

    let id = submit(&server, "zed@remote.test", NO_ID_NO_DATE).await;
    let message = spooled(&*store, fx.data_dir(), &id).await;
    let f = fields(&message);
    assert!(f[0].starts_with("Received: from client.example"), "{f:#?}");
    let sigs: Vec<&String> = f
        .iter()
        .filter(|h| h.starts_with("DKIM-Signature:"))
        .collect();
    assert_eq!(sigs.len(), 2, "{f:#?}");
    for (sig, a, s) in [
        (sigs[0], "a=ed25519-sha256", "s=pc202612e"),
        (sigs[1], "a=rsa-sha256", "s=pc202612r"),
    ] {
        for part in [a, s, "d=example.com", "c=relaxed/relaxed", "t="] {
            assert!(sig.contains(part), "{part} in {sig}");
        }
        assert!(!sig.contains(" l="), "no body length tag: {sig}");
        let h = sig.split("h=").nth(1).unwrap().split(';').next().unwrap();
        let h: Vec<String> = h
            .split(':')
            .map(|x| x.trim().to_ascii_lowercase())
            .collect();
        assert_eq!(
            h.iter().filter(|x| *x == "from").count(),
            2,
            "From oversigned: {h:?}"
        );
        for name in ["to", "subject", "date", "message-id"] {
            assert!(h.contains(&name.to_owned()), "{name} signed: {h:?}");
        }
    }
    // RFC 6409 8: the fix-ups were added (and signed).
    assert!(
        f.iter()
            .any(|h| h == &format!("Message-ID: <{id}@mx.test>")),
        "{f:#?}"
    );
    assert!(f.iter().any(|h| h.starts_with("Date: ")), "{f:#?}");

    let verdicts = dkimpy(message.as_bytes(), &txt);
    assert_eq!(
        verdicts,
        [
            ("ed25519-sha256".to_owned(), true),
            ("rsa-sha256".to_owned(), true)
        ]
    );
    // A tampered body fails both.
    let tampered = message.replace("Hello from Portcullis.", "Hello from Mallory.");
    let verdicts = dkimpy(tampered.as_bytes(), &txt);
    assert_eq!(
        verdicts,
        [
            ("ed25519-sha256".to_owned(), false),
            ("rsa-sha256".to_owned(), false)
        ]
    );

    // Mail whose From: is not a sending domain with keys is not signed.
    store
        .add_allowed_sender(ALICE, "@example.org")
        .await
        .unwrap();
    let other = "From: alice@example.org\r\nMessage-ID: <x@example.org>\r\n\
        Date: Tue, 1 Dec 2026 10:00:00 +0000\r\nSubject: plain\r\n\r\nHi\r\n";
    let id = submit(&server, "zed@remote.test", other).await;
    let message = spooled(&*store, fx.data_dir(), &id).await;
    assert!(!message.contains("DKIM-Signature"), "{message}");
    assert_eq!(message.matches("Message-ID:").count(), 1, "{message}");
    server.stop().await;
}

/// A message bigger than `[spool] memory_threshold` is spilled, and its
/// body is hashed block by block as it is written (issue 9): the
/// signatures must verify exactly as for one read back, with trailing
/// whitespace, blank lines and lines split across blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spilled_message_hashed_as_it_is_written_verifies() {
    let fx = Fixture::new().await;
    let store = fx.store_dyn();
    let keys = add_keys(&*store, "example.com").await;
    let config = fx.config();
    let txt = dkim_txt(&config, "example.com", &keys);
    let server = Running::start(config, Arc::clone(&store)).await;
    let mut message =
        String::from("From: alice@example.com\r\nTo: zed@remote.test\r\nSubject: big\r\n\r\n");
    let mut i = 0;
    while message.len() < 900 * 1024 {
        // Lines of varying length so they straddle the 256 KiB blocks.
        message.push_str(&format!("line {i} {}  \t \r\n", "x".repeat(i % 97)));
        if i % 50 == 0 {
            message.push_str("\r\n  \r\n");
        }
        i += 1;
    }
    message.push_str("\r\n \r\n\r\n");
    let id = submit(&server, "zed@remote.test", &message).await;
    let entry = store.queue_entry(&id).await.unwrap().unwrap();
    assert!(
        entry.spool_path.ends_with(&format!("+{}", entry.size))
            && !entry.spool_path.contains("seg"),
        "spilled to its own file: {}",
        entry.spool_path
    );
    let spooled = spooled(&*store, fx.data_dir(), &id).await;
    assert_eq!(spooled.matches("DKIM-Signature:").count(), 2);
    let verdicts = dkimpy(spooled.as_bytes(), &txt);
    assert_eq!(
        verdicts,
        [
            ("ed25519-sha256".to_owned(), true),
            ("rsa-sha256".to_owned(), true)
        ]
    );
    let tampered = spooled.replacen("line 7000 ", "line 7001 ", 1);
    assert_ne!(tampered, spooled);
    let verdicts = dkimpy(tampered.as_bytes(), &txt);
    assert!(verdicts.iter().all(|(_, ok)| !ok), "{verdicts:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_switches_the_signing_selector() {
    let fx = Fixture::new().await;
    let store = fx.store_dyn();
    add_keys(&*store, "example.com").await;
    let pair = tokio::task::spawn_blocking(|| keys::generate_pair("pc202701"))
        .await
        .unwrap()
        .unwrap();
    store.add_dkim_keys("example.com", &pair).await.unwrap();
    let server = Running::start(fx.config(), Arc::clone(&store)).await;
    let id = submit(&server, "zed@remote.test", NO_ID_NO_DATE).await;
    let message = spooled(&*store, fx.data_dir(), &id).await;
    assert!(message.contains("s=pc202612e") && !message.contains("s=pc202701"));
    store
        .activate_dkim_tag("example.com", "pc202701")
        .await
        .unwrap();
    let id = submit(&server, "zed@remote.test", NO_ID_NO_DATE).await;
    let message = spooled(&*store, fx.data_dir(), &id).await;
    assert!(message.contains("s=pc202701e") && message.contains("s=pc202701r"));
    assert!(!message.contains("s=pc202612"), "{message}");
    let keys = store.dkim_keys("example.com").await.unwrap();
    assert_eq!(
        dkimpy(
            message.as_bytes(),
            &dkim_txt(&fx.config(), "example.com", &keys)
        )
        .len(),
        2
    );
    assert!(
        dkimpy(
            message.as_bytes(),
            &dkim_txt(&fx.config(), "example.com", &keys)
        )
        .iter()
        .all(|(_, ok)| *ok)
    );
    server.stop().await;
}

/// Waits until the message is done (delivered or bounced).
async fn wait_done(store: &dyn Store, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(e) = store.queue_entry(id).await.unwrap()
            && e.done_at.is_some()
        {
            return;
        }
        assert!(Instant::now() < deadline, "{id} not delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The signatures survive delivery to a second Portcullis (the recipient's
/// MX), which verifies them too: its Authentication-Results say pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_survive_delivery_and_the_receiver_verifies_them() {
    let fx = Fixture::new().await;
    let store = fx.store_dyn();
    let keys = add_keys(&*store, "example.com").await;
    let txt = dkim_txt(&fx.config(), "example.com", &keys);
    let mut zone = Zone::new()
        .mx("remote.test", 10, "mx.remote.test")
        .a("mx.remote.test", Ipv4Addr::LOCALHOST)
        .txt("example.com", "v=spf1 ip4:127.0.0.1 -all")
        .txt("_dmarc.example.com", "v=DMARC1; p=reject");
    for (name, value) in &txt {
        zone = zone.txt(name, value);
    }
    let dns = TestDns::start(zone).await.unwrap();

    let peer = Fixture::new().await;
    let hash = portcullis_store::password::hash_password(ALICE_PASSWORD).unwrap();
    peer.store
        .add_account("zed@remote.test", &hash, "standard")
        .await
        .unwrap();
    let mut peer_config = peer.config();
    peer_config.delivery.dns_servers = vec![dns.addr()];
    peer_config.inbound.verify = true;
    let peer_server = Running::start(peer_config, peer.store_dyn()).await;

    let mut config = fx.config();
    config.delivery.enabled = true;
    config.delivery.dns_servers = vec![dns.addr()];
    config.delivery.mx_port = peer_server.smtp.port();
    let server = Running::start(config, Arc::clone(&store)).await;
    let id = submit(&server, "zed@remote.test", NO_ID_NO_DATE).await;
    wait_done(&*store, &id).await;

    let queued = peer.store.queue_entries(None, false).await.unwrap();
    assert_eq!(queued.len(), 1);
    let received = common::read_body(peer.data_dir(), &queued[0].spool_path);
    let verdicts = dkimpy(received.as_bytes(), &txt);
    assert_eq!(verdicts.len(), 2, "{received}");
    assert!(
        verdicts.iter().all(|(_, ok)| *ok),
        "{verdicts:?}\n{received}"
    );
    let ar = fields(&received)
        .into_iter()
        .find(|h| h.starts_with("Authentication-Results:"))
        .unwrap_or_else(|| panic!("{received}"));
    for part in [
        "spf=pass",
        "dkim=pass",
        "header.s=pc202612e",
        "header.s=pc202612r",
        "dmarc=pass",
    ] {
        assert!(ar.contains(part), "{part} in {ar}");
    }
    server.stop().await;
    peer_server.stop().await;
}

// ---------------------------------------------------------------------------
// Inbound

/// A message signed with `key` for `domain` the way our signer does.
fn signed_message(domain: &str, key: &DkimKey, message: &str) -> String {
    let signing = keys::SigningKey::load(key).unwrap();
    let body = portcullis_server::spool::Readable::Memory(message.as_bytes().to_vec());
    let sig = sign::sign_message(body, b"", domain, vec![signing]).unwrap();
    format!("{}{message}", String::from_utf8(sig).unwrap())
}

struct Inbound {
    fx: Fixture,
    server: Running,
    _dns: TestDns,
    key: DkimKey,
}

/// Our server receiving on its smtp listener, resolving through testdns:
/// pass.test publishes SPF (127.0.0.1), a DKIM key and DMARC p=reject;
/// fail.test publishes SPF for another address and DMARC p=reject;
/// none.test publishes nothing; broken.test answers SERVFAIL.
async fn inbound(enforce: bool) -> Inbound {
    let fx = Fixture::new().await;
    // Keys generated for pass.test in another store: only DNS knows them.
    let other = Fixture::new().await;
    let key = add_keys(&*other.store_dyn(), "pass.test").await.remove(0);
    let mut zone = Zone::new()
        .txt("pass.test", "v=spf1 ip4:127.0.0.1 -all")
        .txt("_dmarc.pass.test", "v=DMARC1; p=reject")
        .txt("fail.test", "v=spf1 ip4:192.0.2.1 -all")
        .txt("_dmarc.fail.test", "v=DMARC1; p=reject")
        .servfail("broken.test")
        .servfail("_dmarc.broken.test");
    for (name, value) in dkim_txt(&other.config(), "pass.test", std::slice::from_ref(&key)) {
        zone = zone.txt(&name, &value);
    }
    let dns = TestDns::start(zone).await.unwrap();
    let mut config = fx.config();
    config.delivery.dns_servers = vec![dns.addr()];
    config.inbound.verify = true;
    config.inbound.enforce_dmarc = enforce;
    let server = Running::start(config, fx.store_dyn()).await;
    Inbound {
        fx,
        server,
        _dns: dns,
        key,
    }
}

impl Inbound {
    /// Sends from `from` to bob; returns the final reply and, when queued,
    /// the Authentication-Results field.
    async fn send(&self, from: &str, message: &str) -> (String, Option<String>) {
        let (reply, ar, _) = self.send_full(from, message).await;
        (reply, ar)
    }

    /// Like `send`, also returning the queued message.
    async fn send_full(&self, from: &str, message: &str) -> (String, Option<String>, String) {
        let mut c = common::connect(self.server.smtp).await;
        let reply = transaction(&mut c, false, from, common::BOB, message).await;
        if !reply.starts_with("250") {
            return (reply, None, String::new());
        }
        let id = reply.rsplit(' ').next().unwrap().to_owned();
        let body = spooled(&*self.fx.store_dyn(), self.fx.data_dir(), &id).await;
        let ar = fields(&body)
            .into_iter()
            .find(|h| h.starts_with("Authentication-Results: mx.test;"));
        (reply, ar, body)
    }
}

fn msg(from: &str, body: &str) -> String {
    format!(
        "From: <{from}>\r\nTo: bob@example.com\r\nSubject: inbound\r\n\
         Date: Tue, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@x>\r\n\r\n{body}\r\n"
    )
}

fn assert_parts(ar: &Option<String>, parts: &[&str]) {
    let ar = ar.as_deref().expect("Authentication-Results added");
    for part in parts {
        assert!(ar.contains(part), "{part} in {ar}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_pass_forged_none_and_dns_errors() {
    let ib = inbound(true).await;
    let signed = signed_message("pass.test", &ib.key, &msg("x@pass.test", "genuine"));
    let (reply, ar) = ib.send("x@pass.test", &signed).await;
    assert!(reply.starts_with("250"), "{reply}");
    assert_parts(
        &ar,
        &[
            "spf=pass smtp.mailfrom=x@pass.test",
            "dkim=pass header.d=pass.test header.s=pc202612e",
            "dmarc=pass header.from=pass.test",
        ],
    );

    // Forged: the signed body was changed. SPF still aligns, so DMARC passes.
    let forged = signed.replace("genuine", "forged!");
    let (reply, ar) = ib.send("x@pass.test", &forged).await;
    assert!(reply.starts_with("250"), "{reply}");
    assert_parts(&ar, &["spf=pass", "dkim=fail", "dmarc=pass"]);

    // Forged: signed by someone else's key under pass.test's selector.
    let attacker = tokio::task::spawn_blocking(|| keys::generate_pair("pc202612"))
        .await
        .unwrap()
        .unwrap();
    let mut fake = ib.key.clone();
    fake.private_key = attacker[0].private_key.clone();
    let forged = signed_message("pass.test", &fake, &msg("x@pass.test", "genuine"));
    let (reply, ar) = ib.send("x@pass.test", &forged).await;
    assert!(reply.starts_with("250"), "{reply}");
    assert_parts(&ar, &["dkim=fail header.d=pass.test header.s=pc202612e"]);

    // No records at all; a forged Authentication-Results claiming to be
    // ours is renamed (RFC 8601 5).
    let fake_ar = format!(
        "Authentication-Results: mx.test; dkim=pass header.d=none.test\r\n{}",
        msg("x@none.test", "hi")
    );
    let (reply, ar, body) = ib.send_full("x@none.test", &fake_ar).await;
    assert!(reply.starts_with("250"), "{reply}");
    assert_parts(&ar, &["spf=none", "dkim=none", "dmarc=none"]);
    let ours: Vec<String> = fields(&body)
        .into_iter()
        .filter(|h| h.starts_with("Authentication-Results:"))
        .collect();
    assert_eq!(ours.len(), 1, "{body}");
    assert!(
        body.contains("X-Forged-Authentication-Results: mx.test; dkim=pass"),
        "{body}"
    );

    // SERVFAIL: temperror, accepted, never a 5xx.
    let (reply, ar) = ib.send("x@broken.test", &msg("x@broken.test", "hi")).await;
    assert!(reply.starts_with("250"), "{reply}");
    assert_parts(&ar, &["spf=temperror", "dkim=none"]);

    // SPF fails and nothing is signed: DMARC p=reject refuses it.
    let (reply, ar) = ib.send("x@fail.test", &msg("x@fail.test", "hi")).await;
    assert!(reply.starts_with("550 5.7.1"), "{reply}");
    assert!(ar.is_none());
    ib.server.stop().await;
}

/// RFC 6376 3.4.4: a body that ends in lines of only whitespace, signed
/// with relaxed canonicalisation by a signer that follows the RFC (ours),
/// passes. mail-auth 0.13 alone calls it a body hash failure (its issue
/// #62), and with SPF not aligned DMARC p=reject would refuse the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaxed_signature_over_blank_trailing_lines_passes() {
    let ib = inbound(true).await;
    // `msg` ends the body with CRLF: "genuine", a line of two spaces, a tab.
    let signed = signed_message(
        "pass.test",
        &ib.key,
        &msg("x@pass.test", "genuine\r\n  \r\n\t"),
    );
    // The envelope is fail.test's: SPF fails and is not aligned, so DMARC
    // rests on the DKIM signature.
    let (reply, ar) = ib.send("x@fail.test", &signed).await;
    assert!(reply.starts_with("250"), "{reply}");
    assert_parts(
        &ar,
        &[
            "spf=fail",
            "dkim=pass header.d=pass.test",
            "dmarc=pass header.from=pass.test",
        ],
    );
    // Its content changed: still a failure, and DMARC refuses it.
    let forged = signed.replace("genuine", "forged!");
    let (reply, _) = ib.send("x@fail.test", &forged).await;
    assert!(reply.starts_with("550 5.7.1"), "{reply}");
    ib.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dmarc_failures_are_only_marked_when_enforcement_is_off() {
    let ib = inbound(false).await;
    let (reply, ar) = ib.send("x@fail.test", &msg("x@fail.test", "hi")).await;
    assert!(reply.starts_with("250"), "{reply}");
    assert_parts(
        &ar,
        &["spf=fail", "dkim=none", "dmarc=fail", "policy.dmarc=reject"],
    );
    ib.server.stop().await;
}
