//! Delivery (issue 3) against real peers on loopback: a real DNS server
//! (portcullis-testdns) answering MX/A queries, a scripted SMTP sink for
//! replies our own server never gives, and a second Portcullis server as the
//! MX host and as the smarthost. Messages are put in the queue the way the
//! spool does (durable file, then the queue row), then the running server's
//! queue manager delivers them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ALICE, ALICE_PASSWORD, BOB, Fixture, Running};
use portcullis_server::config::{Config, TlsPolicy};
use portcullis_store::{DeliveryStatus, NewMessage, QueueEntry, Store};
use portcullis_testdns::{TestDns, Zone};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

// ---------------------------------------------------------------------------
// A scripted SMTP sink: RCPT to a local part starting with "temp" gets 451,
// "bad" gets 550; everything else is accepted and recorded.

#[derive(Default)]
struct SinkState {
    connections: usize,
    /// (MAIL FROM, accepted RCPTs, data)
    messages: Vec<(String, Vec<String>, String)>,
    /// Answer 451 to every RCPT.
    all_temporary: bool,
    /// Speak LMTP: LHLO, and one reply per recipient after the data
    /// (452 for a local part starting with "full").
    lmtp: bool,
    /// Taken at the first message's final dot: the sink says so on the
    /// first channel and waits for the second before its 250.
    hold_first: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::sync::oneshot::Receiver<()>,
    )>,
}

struct Sink {
    addr: SocketAddr,
    state: Arc<Mutex<SinkState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sink {
    async fn start(eight_bit: bool) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(SinkState::default()));
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                st.lock().unwrap().connections += 1;
                let st = Arc::clone(&st);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(30),
                        sink_session(stream, st, eight_bit),
                    )
                    .await;
                });
            }
        });
        Sink { addr, state, task }
    }

    fn messages(&self) -> Vec<(String, Vec<String>, String)> {
        self.state.lock().unwrap().messages.clone()
    }
}

async fn sink_session(
    stream: tokio::net::TcpStream,
    st: Arc<Mutex<SinkState>>,
    eight_bit: bool,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 sink.test ESMTP\r\n").await?;
    let mut from = String::new();
    let mut rcpts: Vec<String> = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        let lmtp = st.lock().unwrap().lmtp;
        let reply: String = if upper.starts_with("EHLO") || (lmtp && upper.starts_with("LHLO")) {
            let eight = if eight_bit { "250-8BITMIME\r\n" } else { "" };
            format!("250-sink.test\r\n250-PIPELINING\r\n{eight}250 SIZE 10000000\r\n")
        } else if upper.starts_with("MAIL FROM:") {
            from = line[10..]
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_owned();
            rcpts.clear();
            "250 2.1.0 ok\r\n".into()
        } else if upper.starts_with("RCPT TO:") {
            let addr = line[8..].trim().trim_matches(['<', '>']).to_owned();
            if st.lock().unwrap().all_temporary || addr.starts_with("temp") {
                "451 4.2.0 mailbox busy, try later\r\n".into()
            } else if addr.starts_with("bad") {
                "550 5.1.1 no such user here\r\n".into()
            } else {
                rcpts.push(addr);
                "250 2.1.5 ok\r\n".into()
            }
        } else if upper.starts_with("DATA") {
            if rcpts.is_empty() {
                "554 5.5.1 no valid recipients\r\n".into()
            } else {
                w.write_all(b"354 go ahead\r\n").await?;
                let mut data = String::new();
                loop {
                    let mut l = String::new();
                    if r.read_line(&mut l).await? == 0 {
                        return Ok(());
                    }
                    if l == ".\r\n" {
                        break;
                    }
                    data.push_str(&l);
                }
                st.lock()
                    .unwrap()
                    .messages
                    .push((from.clone(), rcpts.clone(), data));
                let hold = st.lock().unwrap().hold_first.take();
                if let Some((arrived, go)) = hold {
                    let _ = arrived.send(());
                    let _ = go.await;
                }
                if lmtp {
                    rcpts
                        .iter()
                        .map(|r| {
                            if r.starts_with("full") {
                                format!("452 4.2.2 <{r}> mailbox full\r\n")
                            } else {
                                format!("250 2.0.0 <{r}> delivered\r\n")
                            }
                        })
                        .collect()
                } else {
                    "250 2.0.0 queued by sink\r\n".into()
                }
            }
        } else if upper.starts_with("RSET") || upper.starts_with("NOOP") {
            "250 2.0.0 ok\r\n".into()
        } else if upper.starts_with("QUIT") {
            w.write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else {
            "502 5.5.1 not implemented\r\n".into()
        };
        w.write_all(reply.as_bytes()).await?;
    }
}

// ---------------------------------------------------------------------------

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Queues a message the way the spool does: durable body, then the row.
async fn inject(
    store: &dyn Store,
    data_dir: &Path,
    id: &str,
    from: &str,
    to: &[&str],
    body: &str,
    received_at: i64,
) {
    let spool = data_dir.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let text = format!(
        "From: <{from}>\r\nTo: <{}>\r\nSubject: delivery test {id}\r\nMessage-ID: <{id}@test>\r\n\r\n{body}\r\n",
        to.join(">, <")
    );
    std::fs::write(spool.join(format!("{id}.eml")), &text).unwrap();
    store
        .enqueue(&NewMessage {
            id: id.to_owned(),
            sender: from.to_owned(),
            recipients: to.iter().map(|s| s.to_string()).collect(),
            size: text.len() as u64,
            spool_path: format!("spool/{id}.eml"),
            auth_user: None,
            client_ip: "127.0.0.1".into(),
            received_at,
            usage_ms: Vec::new(),
        })
        .await
        .unwrap();
}

/// Queues messages the way the committer does for small ones (issue 9):
/// their bodies back to back in one segment file, between bytes no message
/// refers to (a crashed batch before, a torn one after). Returns the bodies.
async fn inject_segment(
    store: &dyn Store,
    data_dir: &Path,
    messages: &[(&str, &str, &[&str])],
) -> Vec<String> {
    let seg = Path::new("spool/seg/0000000000000001.seg");
    std::fs::create_dir_all(data_dir.join("spool/seg")).unwrap();
    let mut file = b"Received: from a batch that never committed\r\n".to_vec();
    let mut rows = Vec::new();
    let mut bodies = Vec::new();
    for (id, from, to) in messages {
        let text = format!(
            "From: <{from}>\r\nTo: <{}>\r\nSubject: delivery test {id}\r\nMessage-ID: <{id}@test>\r\n\r\nbody of {id}\r\n",
            to.join(">, <")
        );
        rows.push(NewMessage {
            id: (*id).to_owned(),
            sender: (*from).to_owned(),
            recipients: to.iter().map(|s| s.to_string()).collect(),
            size: text.len() as u64,
            spool_path: format!("{}#{}+{}", seg.display(), file.len(), text.len()),
            auth_user: None,
            client_ip: "127.0.0.1".into(),
            received_at: now_s(),
            usage_ms: Vec::new(),
        });
        file.extend_from_slice(text.as_bytes());
        bodies.push(text);
    }
    file.extend_from_slice(b"Received: from a torn batch\r\nSubj");
    std::fs::write(data_dir.join(seg), &file).unwrap();
    store.enqueue_batch(&rows).await.unwrap();
    bodies
}

fn delivery_config(fx: &Fixture, dns: SocketAddr, mx_port: u16) -> Config {
    let mut config = fx.config();
    let d = &mut config.delivery;
    d.enabled = true;
    d.dns_servers = vec![dns];
    d.mx_port = mx_port;
    d.retry_schedule = vec![Duration::from_secs(60)];
    d.retry_jitter_percent = 0;
    d.connect_timeout = Duration::from_secs(2);
    d.command_timeout = Duration::from_secs(5);
    d.data_block_timeout = Duration::from_secs(5);
    d.data_done_timeout = Duration::from_secs(5);
    config
}

/// Waits (bounded) until `done` holds for the message's entry.
async fn wait_for(
    store: &dyn Store,
    id: &str,
    what: &str,
    done: impl Fn(&QueueEntry) -> bool,
) -> QueueEntry {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(e) = store.queue_entry(id).await.unwrap()
            && done(&e)
        {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "{id}: timed out waiting for {what}: {:#?}",
            store.queue_entry(id).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn settled(e: &QueueEntry) -> bool {
    e.recipients.iter().all(|r| {
        matches!(
            r.status,
            DeliveryStatus::Delivered | DeliveryStatus::Bounced | DeliveryStatus::Deferred
        )
    })
}

fn status_of(e: &QueueEntry, address: &str) -> DeliveryStatus {
    e.recipients
        .iter()
        .find(|r| r.address == address)
        .unwrap_or_else(|| panic!("no recipient {address} in {e:#?}"))
        .status
}

fn mailbox(data_dir: &Path, address: &str) -> Vec<String> {
    let (local, domain) = address.split_once('@').unwrap();
    let dir = data_dir.join("mail").join(domain).join(local).join("new");
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| std::fs::read_to_string(e.path()).unwrap())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

async fn wait_mailbox(data_dir: &Path, address: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = mailbox(data_dir, address);
        if m.len() >= n {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{address}: {} of {n} messages arrived",
            m.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn remote_zone() -> Zone {
    Zone::new()
        .mx("remote.test", 10, "mx.remote.test")
        .a("mx.remote.test", Ipv4Addr::LOCALHOST)
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_delivery_reports_each_recipient_reuses_the_connection_and_bounces_once() {
    let fx = Fixture::new().await;
    let dns = TestDns::start(remote_zone()).await.unwrap();
    let sink = Sink::start(true).await;
    let store = fx.store_dyn();
    let now = now_s();
    inject(
        &*store,
        fx.data_dir(),
        "M1",
        ALICE,
        &["ok1@remote.test", "temp@remote.test", "bad@remote.test"],
        "first",
        now,
    )
    .await;
    inject(
        &*store,
        fx.data_dir(),
        "M2",
        ALICE,
        &["ok2@remote.test"],
        "second",
        now,
    )
    .await;
    inject(
        &*store,
        fx.data_dir(),
        "M3",
        ALICE,
        &["ok3@remote.test"],
        ".leading dot",
        now,
    )
    .await;
    let server = Running::start(
        delivery_config(&fx, dns.addr(), sink.addr.port()),
        store.clone(),
    )
    .await;

    let m1 = wait_for(&*store, "M1", "M1 settled", settled).await;
    assert_eq!(status_of(&m1, "ok1@remote.test"), DeliveryStatus::Delivered);
    assert_eq!(status_of(&m1, "temp@remote.test"), DeliveryStatus::Deferred);
    assert_eq!(status_of(&m1, "bad@remote.test"), DeliveryStatus::Bounced);
    let temp = m1
        .recipients
        .iter()
        .find(|r| r.address.starts_with("temp"))
        .unwrap();
    assert_eq!(temp.attempts, 1);
    assert!(
        temp.last_reply.as_deref().unwrap().contains("451 4.2.0"),
        "{temp:?}"
    );
    let wait_ms = temp.next_attempt_ms - now * 1000;
    assert!(
        (55_000..=75_000).contains(&wait_ms),
        "retry in {wait_ms} ms"
    );
    assert_eq!(temp.last_host.as_deref(), Some("mx.remote.test"));
    wait_for(&*store, "M2", "M2 delivered", |e| e.done_at.is_some()).await;
    wait_for(&*store, "M3", "M3 delivered", |e| e.done_at.is_some()).await;

    let msgs = sink.messages();
    assert_eq!(msgs.len(), 3, "{msgs:#?}");
    assert!(
        msgs.iter()
            .all(|(from, _, _)| from == &format!("<{ALICE}>"))
    );
    let m3 = msgs
        .iter()
        .find(|(_, r, _)| r == &vec!["ok3@remote.test".to_owned()])
        .unwrap();
    assert!(
        m3.2.contains("\r\n..leading dot\r\n"),
        "dot-stuffed on the wire: {:?}",
        m3.2
    );
    assert_eq!(
        sink.state.lock().unwrap().connections,
        1,
        "one connection for all three"
    );

    // One DSN for the 5xx recipient, delivered to the (local) sender.
    let dsns = wait_mailbox(fx.data_dir(), ALICE, 1).await;
    assert_eq!(dsns.len(), 1);
    let dsn = &dsns[0];
    assert!(dsn.contains("Return-Path: <>"), "{dsn}");
    assert!(dsn.contains("multipart/report"), "{dsn}");
    assert!(dsn.contains("report-type=delivery-status"), "{dsn}");
    assert!(
        dsn.contains("Final-Recipient: rfc822; bad@remote.test"),
        "{dsn}"
    );
    assert!(dsn.contains("Status: 5.1.1"), "{dsn}");
    assert!(dsn.contains("550 5.1.1 no such user here"), "{dsn}");
    assert!(dsn.contains("Remote-MTA: dns; mx.remote.test"), "{dsn}");
    assert!(
        dsn.contains("Subject: delivery test M1"),
        "original headers: {dsn}"
    );
    assert!(
        !dsn.contains("temp@remote.test\r\nAction"),
        "no DSN for the deferred one"
    );
    let events = store.delivery_events("M1").await.unwrap();
    assert_eq!(events.len(), 3, "{events:#?}");
    // The spool file of a finished message is gone; the deferred one keeps its.
    assert!(!fx.data_dir().join("spool/M2.eml").exists());
    assert!(fx.data_dir().join("spool/M1.eml").exists());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_decide_between_bounce_defer_and_implicit_mx() {
    let fx = Fixture::new().await;
    let zone = Zone::new()
        .mx("nullmx.test", 0, ".")
        .a("implicit.test", Ipv4Addr::LOCALHOST)
        .servfail("broken.test")
        .a("other.test", Ipv4Addr::LOCALHOST);
    let dns = TestDns::start(zone).await.unwrap();
    let sink = Sink::start(true).await;
    let store = fx.store_dyn();
    let now = now_s();
    // A null sender: bounces are not bounced.
    for (id, to) in [
        ("N1", "u@nullmx.test"),
        ("N2", "u@missing.other.test"),
        ("N3", "u@broken.test"),
        ("N4", "u@implicit.test"),
    ] {
        inject(&*store, fx.data_dir(), id, "", &[to], "x", now).await;
    }
    let server = Running::start(
        delivery_config(&fx, dns.addr(), sink.addr.port()),
        store.clone(),
    )
    .await;
    let n1 = wait_for(&*store, "N1", "null MX", settled).await;
    assert_eq!(n1.recipients[0].status, DeliveryStatus::Bounced);
    assert!(
        n1.recipients[0]
            .last_reply
            .as_deref()
            .unwrap()
            .contains("null MX"),
        "{n1:?}"
    );
    let n2 = wait_for(&*store, "N2", "NXDOMAIN", settled).await;
    assert_eq!(n2.recipients[0].status, DeliveryStatus::Bounced);
    assert!(
        n2.recipients[0]
            .last_reply
            .as_deref()
            .unwrap()
            .contains("does not exist"),
        "{n2:?}"
    );
    let n3 = wait_for(&*store, "N3", "SERVFAIL", settled).await;
    assert_eq!(n3.recipients[0].status, DeliveryStatus::Deferred, "{n3:?}");
    let n4 = wait_for(&*store, "N4", "implicit MX", |e| e.done_at.is_some()).await;
    assert_eq!(n4.recipients[0].status, DeliveryStatus::Delivered);
    assert_eq!(sink.messages().len(), 1);
    // Nothing was sent back for the null-sender bounces.
    assert!(mailbox(fx.data_dir(), ALICE).is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_mail_is_retried_then_delivered_and_old_mail_expires() {
    let fx = Fixture::new().await;
    let dns = TestDns::start(remote_zone()).await.unwrap();
    let sink = Sink::start(true).await;
    sink.state.lock().unwrap().all_temporary = true;
    let store = fx.store_dyn();
    let now = now_s();
    inject(
        &*store,
        fx.data_dir(),
        "R1",
        BOB,
        &["later@remote.test"],
        "retry me",
        now,
    )
    .await;
    // Accepted six days ago: past max_age (5 days) at its next failure.
    inject(
        &*store,
        fx.data_dir(),
        "R2",
        BOB,
        &["old@remote.test"],
        "too old",
        now - 6 * 86400,
    )
    .await;
    let server = Running::start(
        delivery_config(&fx, dns.addr(), sink.addr.port()),
        store.clone(),
    )
    .await;
    let r1 = wait_for(&*store, "R1", "deferred", settled).await;
    assert_eq!(r1.recipients[0].status, DeliveryStatus::Deferred);
    let r2 = wait_for(&*store, "R2", "expired", settled).await;
    assert_eq!(r2.recipients[0].status, DeliveryStatus::Bounced);
    assert!(
        r2.recipients[0]
            .last_reply
            .as_deref()
            .unwrap()
            .contains("expired"),
        "{r2:?}"
    );
    let dsn = wait_mailbox(fx.data_dir(), BOB, 1).await;
    assert!(dsn[0].contains("Status: 4.4.7"), "{}", dsn[0]);
    // The peer recovers; `queue retry` makes it due now.
    sink.state.lock().unwrap().all_temporary = false;
    assert_eq!(
        store.retry_now(Some("R1"), now_s() * 1000).await.unwrap(),
        1
    );
    let r1 = wait_for(&*store, "R1", "delivered after retry", |e| {
        e.done_at.is_some()
    })
    .await;
    assert_eq!(r1.recipients[0].status, DeliveryStatus::Delivered);
    assert_eq!(r1.recipients[0].attempts, 2);
    assert_eq!(sink.messages().len(), 1, "delivered once");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mailboxes_aliases_catch_all_and_unknown_users() {
    let fx = Fixture::new().await;
    let dns = TestDns::start(remote_zone()).await.unwrap();
    let sink = Sink::start(true).await;
    let store = fx.store_dyn();
    store.add_alias("sales@example.com", BOB).await.unwrap();
    store.add_domain("example.net").await.unwrap();
    store.add_alias("@example.net", ALICE).await.unwrap();
    // An alias pointing outside: expanded, then relayed to the MX.
    store
        .add_alias("fwd@example.com", "ok@remote.test")
        .await
        .unwrap();
    inject(
        &*store,
        fx.data_dir(),
        "L1",
        "ext@remote.test",
        &[
            BOB,
            "sales@example.com",
            "anyone@example.net",
            "nobody@example.com",
            "fwd@example.com",
        ],
        "local",
        now_s(),
    )
    .await;
    let server = Running::start(
        delivery_config(&fx, dns.addr(), sink.addr.port()),
        store.clone(),
    )
    .await;
    let l1 = wait_for(&*store, "L1", "all local recipients", |e| {
        e.done_at.is_some()
    })
    .await;
    assert_eq!(
        status_of(&l1, "nobody@example.com"),
        DeliveryStatus::Bounced
    );
    let bob = wait_mailbox(fx.data_dir(), BOB, 2).await;
    assert_eq!(bob.len(), 2, "direct and via the alias");
    assert!(bob.iter().all(|m| m.contains("Subject: delivery test L1")));
    assert!(bob[0].starts_with("Return-Path: <ext@remote.test>\r\nDelivered-To: "));
    assert_eq!(
        wait_mailbox(fx.data_dir(), ALICE, 1).await.len(),
        1,
        "catch-all"
    );
    // The forward and the DSN for nobody@ both went to remote.test.
    let deadline = Instant::now() + Duration::from_secs(20);
    while sink.messages().len() < 2 {
        assert!(Instant::now() < deadline, "{:#?}", sink.messages());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let msgs = sink.messages();
    assert!(
        msgs.iter()
            .any(|(f, r, _)| f == "<ext@remote.test>" && r == &vec!["ok@remote.test".to_owned()])
    );
    let dsn = msgs
        .iter()
        .find(|(f, _, _)| f == "<>")
        .expect("a DSN with a null sender");
    assert_eq!(dsn.1, vec!["ext@remote.test".to_owned()]);
    assert!(dsn.2.contains("nobody@example.com"));
    let events = store.delivery_events("L1").await.unwrap();
    assert!(
        events.iter().any(|e| e.outcome == "expanded"),
        "{events:#?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_recipients_of_a_crashed_run_are_retried_once() {
    let fx = Fixture::new().await;
    let dns = TestDns::start(remote_zone()).await.unwrap();
    let sink = Sink::start(true).await;
    let store = fx.store_dyn();
    inject(
        &*store,
        fx.data_dir(),
        "C1",
        ALICE,
        &["ok@remote.test"],
        "crash",
        now_s(),
    )
    .await;
    // A previous run claimed it and died before recording anything.
    let claimed = store.claim_due(i64::MAX, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let e = store.queue_entry("C1").await.unwrap().unwrap();
    assert_eq!(e.recipients[0].status, DeliveryStatus::InFlight);
    let server = Running::start(
        delivery_config(&fx, dns.addr(), sink.addr.port()),
        store.clone(),
    )
    .await;
    wait_for(&*store, "C1", "delivered", |e| e.done_at.is_some()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.messages().len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_tls_defers_and_missing_8bitmime_bounces() {
    let fx = Fixture::new().await;
    let zone = remote_zone().mx("secure.test", 10, "mx.remote.test");
    let dns = TestDns::start(zone).await.unwrap();
    let sink = Sink::start(false).await;
    let store = fx.store_dyn();
    inject(
        &*store,
        fx.data_dir(),
        "T1",
        ALICE,
        &["u@secure.test"],
        "plain",
        now_s(),
    )
    .await;
    inject(
        &*store,
        fx.data_dir(),
        "E1",
        ALICE,
        &["u@remote.test"],
        "caf\u{e9} 8-bit",
        now_s(),
    )
    .await;
    let mut config = delivery_config(&fx, dns.addr(), sink.addr.port());
    config.delivery.domains.insert(
        "secure.test".into(),
        portcullis_server::config::DestinationConfig {
            tls: Some(TlsPolicy::Required),
            max_connections: None,
        },
    );
    let server = Running::start(config, store.clone()).await;
    let t1 = wait_for(&*store, "T1", "deferred", settled).await;
    assert_eq!(t1.recipients[0].status, DeliveryStatus::Deferred);
    assert!(
        t1.recipients[0]
            .last_reply
            .as_deref()
            .unwrap()
            .contains("STARTTLS"),
        "{t1:?}"
    );
    let e1 = wait_for(&*store, "E1", "bounced", settled).await;
    assert_eq!(e1.recipients[0].status, DeliveryStatus::Bounced);
    assert!(
        e1.recipients[0]
            .last_reply
            .as_deref()
            .unwrap()
            .contains("8BITMIME"),
        "{e1:?}"
    );
    assert!(sink.messages().is_empty());
    server.stop().await;
}

/// A second Portcullis as the recipient domain's MX: opportunistic STARTTLS
/// is used, the message lands in its Maildir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_to_another_portcullis_over_starttls() {
    let fx = Fixture::new().await;
    let peer = Fixture::new().await;
    let hash = portcullis_store::password::hash_password(ALICE_PASSWORD).unwrap();
    peer.store
        .add_account("zed@remote.test", &hash, "standard")
        .await
        .unwrap();
    let peer_server = Running::start(peer.config(), peer.store_dyn()).await;
    let dns = TestDns::start(remote_zone()).await.unwrap();
    let store = fx.store_dyn();
    inject(
        &*store,
        fx.data_dir(),
        "P1",
        ALICE,
        &["zed@remote.test"],
        "to the peer",
        now_s(),
    )
    .await;
    let server = Running::start(
        delivery_config(&fx, dns.addr(), peer_server.smtp.port()),
        store.clone(),
    )
    .await;
    let p1 = wait_for(&*store, "P1", "delivered", |e| e.done_at.is_some()).await;
    assert!(
        p1.recipients[0]
            .last_reply
            .as_deref()
            .unwrap()
            .starts_with("250 2.0.0"),
        "{p1:?}"
    );
    // The peer queued it (its own delivery is off in test_config).
    let queued = peer.store.queue_entries(None, false).await.unwrap();
    assert_eq!(queued.len(), 1);
    let body = common::read_body(peer.data_dir(), &queued[0].spool_path);
    assert!(body.contains("with ESMTPS"), "STARTTLS was used: {body}");
    assert!(body.contains("to the peer"));
    server.stop().await;
    peer_server.stop().await;
}

/// Smarthost mode: AUTH over verified TLS to an upstream (a second
/// Portcullis on its submission port), credentials from a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smarthost_relays_with_auth_over_verified_tls() {
    let fx = Fixture::new().await;
    let upstream = Fixture::new().await;
    let up = Running::start(upstream.config(), upstream.store_dyn()).await;
    let dns = TestDns::start(Zone::new()).await.unwrap();
    let store = fx.store_dyn();
    inject(
        &*store,
        fx.data_dir(),
        "S1",
        ALICE,
        &["friend@elsewhere.test"],
        "via relay",
        now_s(),
    )
    .await;
    let pw_file = fx.data_dir().join("relay-password");
    std::fs::write(&pw_file, format!("{ALICE_PASSWORD}\n")).unwrap();
    let mut config = delivery_config(&fx, dns.addr(), 1);
    config.delivery.relay = Some(portcullis_server::config::RelayConfig {
        host: "127.0.0.1".into(),
        port: up.submission.port(),
        implicit_tls: false,
        user: Some(ALICE.into()),
        password_file: Some(pw_file),
        ca_file: Some(up.cert_path.clone()),
    });
    let server = Running::start(config, store.clone()).await;
    let s1 = wait_for(&*store, "S1", "relayed", |e| e.done_at.is_some()).await;
    assert_eq!(s1.recipients[0].status, DeliveryStatus::Delivered, "{s1:?}");
    let queued = upstream.store.queue_entries(None, false).await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].auth_user.as_deref(), Some(ALICE));
    assert_eq!(queued[0].recipients[0].address, "friend@elsewhere.test");
    server.stop().await;

    // An upstream whose certificate we do not trust: deferred, never sent in clear.
    let fx2 = Fixture::new().await;
    let store2 = fx2.store_dyn();
    inject(
        &*store2,
        fx2.data_dir(),
        "S2",
        ALICE,
        &["friend@elsewhere.test"],
        "x",
        now_s(),
    )
    .await;
    let mut config = delivery_config(&fx2, dns.addr(), 1);
    config.delivery.relay = Some(portcullis_server::config::RelayConfig {
        host: "127.0.0.1".into(),
        port: up.submission.port(),
        implicit_tls: false,
        user: None,
        password_file: None,
        ca_file: None,
    });
    let server = Running::start(config, store2.clone()).await;
    let s2 = wait_for(&*store2, "S2", "deferred", settled).await;
    assert_eq!(s2.recipients[0].status, DeliveryStatus::Deferred);
    assert!(
        s2.recipients[0]
            .last_reply
            .as_deref()
            .unwrap()
            .contains("TLS"),
        "{s2:?}"
    );
    server.stop().await;
    up.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_delay_warning_after_the_configured_time() {
    let fx = Fixture::new().await;
    let dns = TestDns::start(remote_zone()).await.unwrap();
    let sink = Sink::start(true).await;
    let store = fx.store_dyn();
    // Accepted five hours ago: past delay_warning (4h), far from max_age.
    inject(
        &*store,
        fx.data_dir(),
        "W1",
        ALICE,
        &["temp@remote.test"],
        "slow",
        now_s() - 5 * 3600,
    )
    .await;
    let server = Running::start(
        delivery_config(&fx, dns.addr(), sink.addr.port()),
        store.clone(),
    )
    .await;
    let w1 = wait_for(&*store, "W1", "deferred", settled).await;
    assert_eq!(w1.recipients[0].status, DeliveryStatus::Deferred);
    assert!(w1.recipients[0].warned);
    let notes = wait_mailbox(fx.data_dir(), ALICE, 1).await;
    assert!(notes[0].contains("Action: delayed"), "{}", notes[0]);
    assert!(notes[0].contains("Will-Retry-Until:"), "{}", notes[0]);
    assert!(notes[0].contains("Status: 4.2.0"), "{}", notes[0]);
    // The next failure sends no second warning.
    store.retry_now(Some("W1"), now_s() * 1000).await.unwrap();
    wait_for(&*store, "W1", "second attempt", |e| {
        e.recipients[0].attempts == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mailbox(fx.data_dir(), ALICE).len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mail_can_go_to_an_lmtp_server_with_per_recipient_results() {
    let fx = Fixture::new().await;
    let dns = TestDns::start(Zone::new()).await.unwrap();
    let sink = Sink::start(true).await;
    sink.state.lock().unwrap().lmtp = true;
    let store = fx.store_dyn();
    let hash = portcullis_store::password::hash_password(ALICE_PASSWORD).unwrap();
    store
        .add_account("full@example.com", &hash, "standard")
        .await
        .unwrap();
    inject(
        &*store,
        fx.data_dir(),
        "D1",
        "ext@remote.test",
        &[BOB, "full@example.com"],
        "lmtp",
        now_s(),
    )
    .await;
    let mut config = delivery_config(&fx, dns.addr(), 1);
    config.delivery.local = portcullis_server::config::LocalTransport::Lmtp(sink.addr.to_string());
    let server = Running::start(config, store.clone()).await;
    let d1 = wait_for(&*store, "D1", "LMTP results", settled).await;
    assert_eq!(status_of(&d1, BOB), DeliveryStatus::Delivered);
    assert_eq!(status_of(&d1, "full@example.com"), DeliveryStatus::Deferred);
    let full = d1
        .recipients
        .iter()
        .find(|r| r.address.starts_with("full"))
        .unwrap();
    assert!(
        full.last_reply.as_deref().unwrap().contains("452 4.2.2"),
        "{full:?}"
    );
    assert_eq!(sink.messages().len(), 1, "one LMTP transaction for both");
    assert!(
        mailbox(fx.data_dir(), BOB).is_empty(),
        "not written to a Maildir"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ascii_addresses_need_smtputf8_at_the_peer() {
    let fx = Fixture::new().await;
    let dns = TestDns::start(remote_zone()).await.unwrap();
    let sink = Sink::start(true).await;
    let store = fx.store_dyn();
    inject(
        &*store,
        fx.data_dir(),
        "U1",
        ALICE,
        &["j\u{f6}rg@remote.test"],
        "utf8",
        now_s(),
    )
    .await;
    let server = Running::start(
        delivery_config(&fx, dns.addr(), sink.addr.port()),
        store.clone(),
    )
    .await;
    let u1 = wait_for(&*store, "U1", "bounced", settled).await;
    assert_eq!(u1.recipients[0].status, DeliveryStatus::Bounced);
    assert!(
        u1.recipients[0]
            .last_reply
            .as_deref()
            .unwrap()
            .contains("SMTPUTF8"),
        "{u1:?}"
    );
    let dsn = wait_mailbox(fx.data_dir(), ALICE, 1).await;
    assert!(dsn[0].contains("Status: 5.6.7"), "{}", dsn[0]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_answers_is_a_timeout_and_a_deferral() {
    let fx = Fixture::new().await;
    let dns = TestDns::start(remote_zone()).await.unwrap();
    // Accepts the connection and says nothing.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let store = fx.store_dyn();
    inject(
        &*store,
        fx.data_dir(),
        "Q1",
        ALICE,
        &["u@remote.test"],
        "x",
        now_s(),
    )
    .await;
    let mut config = delivery_config(&fx, dns.addr(), port);
    config.delivery.command_timeout = Duration::from_secs(1);
    let server = Running::start(config, store.clone()).await;
    let q1 = wait_for(&*store, "Q1", "deferred", settled).await;
    assert_eq!(q1.recipients[0].status, DeliveryStatus::Deferred);
    assert!(
        q1.recipients[0]
            .last_reply
            .as_deref()
            .unwrap()
            .contains("timeout"),
        "{q1:?}"
    );
    server.stop().await;
    holder.abort();
}

/// Issue 9: messages stored as segment ranges are delivered byte for byte
/// to a Maildir and to an MX, their bounce quotes their own header block,
/// and finishing them leaves the shared segment to the sweeper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_messages_are_delivered_byte_for_byte() {
    let fx = Fixture::new().await;
    let dns = TestDns::start(remote_zone()).await.unwrap();
    let sink = Sink::start(true).await;
    let store = fx.store_dyn();
    let bodies = inject_segment(
        &*store,
        fx.data_dir(),
        &[
            ("S1", "ext@remote.test", &[BOB, "bad@remote.test"]),
            ("S2", "ext@remote.test", &["ok@remote.test"]),
            // Deferred: keeps the segment live whenever the sweeper runs.
            ("S3", "ext@remote.test", &["temp@remote.test"]),
        ],
    )
    .await;
    let server = Running::start(
        delivery_config(&fx, dns.addr(), sink.addr.port()),
        store.clone(),
    )
    .await;
    for id in ["S1", "S2"] {
        wait_for(&*store, id, "done", |e| e.done_at.is_some()).await;
    }
    wait_for(&*store, "S3", "deferred", settled).await;
    let bob = wait_mailbox(fx.data_dir(), BOB, 1).await;
    assert_eq!(
        bob[0],
        format!(
            "Return-Path: <ext@remote.test>\r\nDelivered-To: {BOB}\r\n{}",
            bodies[0]
        )
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while sink.messages().len() < 2 {
        assert!(Instant::now() < deadline, "{:#?}", sink.messages());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let msgs = sink.messages();
    let relayed = msgs
        .iter()
        .find(|(_, r, _)| r == &vec!["ok@remote.test".to_owned()])
        .expect("S2 relayed");
    assert_eq!(relayed.2, bodies[1], "exact bytes of S2's range");
    let dsn = msgs
        .iter()
        .find(|(f, _, _)| f == "<>")
        .expect("a DSN for bad@remote.test");
    assert!(dsn.2.contains("Subject: delivery test S1"), "{}", dsn.2);
    assert!(!dsn.2.contains("delivery test S2"), "{}", dsn.2);
    assert!(!dsn.2.contains("never committed"), "{}", dsn.2);
    assert!(
        fx.data_dir()
            .join("spool/seg/0000000000000001.seg")
            .is_file(),
        "delivery never deletes a segment"
    );
    server.stop().await;
}

/// Issue 9: a big message's file starts with room for header fields; its
/// row names the range. Delivery sends exactly the range, and finishing the
/// message deletes its file (it is not shared).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_file_messages_are_delivered_and_their_file_removed() {
    let fx = Fixture::new().await;
    let dns = TestDns::start(remote_zone()).await.unwrap();
    let sink = Sink::start(true).await;
    let store = fx.store_dyn();
    let text = "From: <ext@remote.test>\r\nTo: <ok@remote.test>\r\nSubject: delivery test R1\r\n\
                Message-ID: <R1@test>\r\n\r\nbody of R1\r\n";
    let spool = fx.data_dir().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let mut file = vec![b'#'; 1000];
    file.extend_from_slice(text.as_bytes());
    std::fs::write(spool.join("R1.eml"), &file).unwrap();
    store
        .enqueue(&NewMessage {
            id: "R1".into(),
            sender: "ext@remote.test".into(),
            recipients: vec!["ok@remote.test".into()],
            size: text.len() as u64,
            spool_path: format!("spool/R1.eml#1000+{}", text.len()),
            auth_user: None,
            client_ip: "127.0.0.1".into(),
            received_at: now_s(),
            usage_ms: Vec::new(),
        })
        .await
        .unwrap();
    let server = Running::start(
        delivery_config(&fx, dns.addr(), sink.addr.port()),
        store.clone(),
    )
    .await;
    wait_for(&*store, "R1", "done", |e| e.done_at.is_some()).await;
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1, "{msgs:#?}");
    assert_eq!(msgs[0].2, text, "exact bytes of R1's range");
    let deadline = Instant::now() + Duration::from_secs(10);
    while spool.join("R1.eml").exists() {
        assert!(Instant::now() < deadline, "R1.eml not removed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

/// Issue 9: at start the server deletes segments no waiting message is in
/// (a crash can leave one behind) and keeps those that hold queued mail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_segments_are_swept_at_start() {
    let fx = Fixture::new().await;
    let store = fx.store_dyn();
    inject_segment(&*store, fx.data_dir(), &[("K1", "ext@remote.test", &[BOB])]).await;
    let kept = fx.data_dir().join("spool/seg/0000000000000001.seg");
    let unused = fx.data_dir().join("spool/seg/0000000000000002.seg");
    std::fs::write(&unused, b"Received: from a batch that never committed\r\n").unwrap();
    let mut config = fx.config();
    config.delivery.enabled = false;
    let server = Running::start(config, store.clone()).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while unused.exists() {
        assert!(Instant::now() < deadline, "unused segment not swept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(kept.is_file(), "a segment with a queued message is kept");
    assert_eq!(
        common::read_body(
            fx.data_dir(),
            &store.queue_entry("K1").await.unwrap().unwrap().spool_path
        )
        .lines()
        .nth(2),
        Some("Subject: delivery test K1")
    );
    server.stop().await;
}

/// Issue 9: a connection does not wait for each result's group commit
/// before it sends its next message. The sink takes SQLite's write lock
/// (a real second connection, `BEGIN IMMEDIATE`) before it accepts the
/// first message, so that result cannot be recorded; the other messages
/// still arrive on the same connection, and once the lock goes every
/// result is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_sends_on_while_earlier_results_wait_for_the_store() {
    use sqlx::Connection;
    let fx = Fixture::new().await;
    let dns = TestDns::start(remote_zone()).await.unwrap();
    let sink = Sink::start(true).await;
    let (arrived_tx, arrived) = tokio::sync::oneshot::channel();
    let (go, go_rx) = tokio::sync::oneshot::channel();
    sink.state.lock().unwrap().hold_first = Some((arrived_tx, go_rx));
    let store = fx.store_dyn();
    let ids = ["W1", "W2", "W3", "W4"];
    for id in ids {
        let to = format!("{}@remote.test", id.to_lowercase());
        inject(&*store, fx.data_dir(), id, ALICE, &[&to], "wait", now_s()).await;
    }
    let server = Running::start(
        delivery_config(&fx, dns.addr(), sink.addr.port()),
        store.clone(),
    )
    .await;
    tokio::time::timeout(Duration::from_secs(20), arrived)
        .await
        .expect("the first message reaches the sink")
        .unwrap();
    let url = format!("sqlite://{}", fx.data_dir().join("portcullis.db").display());
    let mut lock = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut lock)
        .await
        .unwrap();
    go.send(()).unwrap();
    // Well inside the store's 5 s busy timeout.
    let deadline = Instant::now() + Duration::from_secs(3);
    while sink.messages().len() < ids.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent_while_locked = sink.messages().len();
    let first = store.queue_entry("W1").await;
    sqlx::raw_sql("ROLLBACK").execute(&mut lock).await.unwrap();
    lock.close().await.unwrap();
    assert_eq!(
        sent_while_locked,
        ids.len(),
        "the connection stopped while the first result waited for the store"
    );
    assert!(
        first.is_err() || first.unwrap().unwrap().done_at.is_none(),
        "the first result was recorded while the store was locked"
    );
    for id in ids {
        let e = wait_for(&*store, id, "delivered", |e| e.done_at.is_some()).await;
        assert_eq!(e.recipients[0].status, DeliveryStatus::Delivered);
    }
    assert_eq!(sink.state.lock().unwrap().connections, 1);
    server.stop().await;
}

/// Delivery reads a small message whole and streams a big one (issue 9):
/// both are dot-stuffed exactly, and both are checked for 8-bit bytes, in
/// a big one also far past the first read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_and_big_messages_are_dot_stuffed_and_checked_for_8bit() {
    let fx = Fixture::new().await;
    let dns = TestDns::start(remote_zone()).await.unwrap();
    // No 8BITMIME at the peer.
    let sink = Sink::start(false).await;
    let store = fx.store_dyn();
    let dotted = |n: usize| -> String {
        (0..n)
            .map(|i| {
                if i % 7 == 0 {
                    format!(".line {i} starts with a dot\r\n")
                } else {
                    format!("line {i} of filler text for the body\r\n")
                }
            })
            .collect()
    };
    let small = dotted(20);
    let big = dotted(8000);
    assert!(big.len() > 256 * 1024, "{}", big.len());
    let big_8bit = format!("{big}caf\u{e9} at the very end");
    inject(
        &*store,
        fx.data_dir(),
        "D1",
        ALICE,
        &["s@remote.test"],
        &small,
        now_s(),
    )
    .await;
    inject(
        &*store,
        fx.data_dir(),
        "D2",
        ALICE,
        &["b@remote.test"],
        &big,
        now_s(),
    )
    .await;
    inject(
        &*store,
        fx.data_dir(),
        "D3",
        ALICE,
        &["e@remote.test"],
        &big_8bit,
        now_s(),
    )
    .await;
    let server = Running::start(
        delivery_config(&fx, dns.addr(), sink.addr.port()),
        store.clone(),
    )
    .await;
    for id in ["D1", "D2"] {
        let e = wait_for(&*store, id, "delivered", |e| e.done_at.is_some()).await;
        assert_eq!(e.recipients[0].status, DeliveryStatus::Delivered, "{e:?}");
    }
    let d3 = wait_for(&*store, "D3", "bounced", settled).await;
    assert_eq!(d3.recipients[0].status, DeliveryStatus::Bounced);
    assert!(
        d3.recipients[0]
            .last_reply
            .as_deref()
            .unwrap()
            .contains("8BITMIME"),
        "{d3:?}"
    );
    let msgs = sink.messages();
    for (id, to, body) in [
        ("D1", "s@remote.test", &small),
        ("D2", "b@remote.test", &big),
    ] {
        let (_, _, data) = msgs
            .iter()
            .find(|(_, r, _)| r == &vec![to.to_owned()])
            .unwrap_or_else(|| panic!("{id} not relayed"));
        // As `inject` spooled it (its file is gone once delivered).
        let spooled = format!(
            "From: <{ALICE}>\r\nTo: <{to}>\r\nSubject: delivery test {id}\r\nMessage-ID: <{id}@test>\r\n\r\n{body}\r\n"
        );
        let stuffed = spooled.replace("\r\n.", "\r\n..");
        assert_eq!(data.len(), stuffed.len(), "{id}");
        assert!(*data == stuffed, "{id}: the relayed bytes differ");
    }
    server.stop().await;
}
