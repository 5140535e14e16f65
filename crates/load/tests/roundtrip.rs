//! The sender against the sink on 127.0.0.1, port 0: plain, STARTTLS and
//! implicit TLS; pipelined and not; simulated 451s; duration mode; and
//! connection failures (refused, silent server). Every test is bounded by a timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use portcullis_load::conn::{Setup, TlsMode};
use portcullis_load::report::Report;
use portcullis_load::send::{SendOptions, run};
use portcullis_load::sink::{Sink, SinkOptions, SinkStats};
use portcullis_load::tls::{Trust, client_config, self_signed_server_config, server_name};

const LIMIT: Duration = Duration::from_secs(30);

struct RunningSink {
    addr: String,
    stats: Arc<SinkStats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for RunningSink {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn start_sink(opts: SinkOptions) -> RunningSink {
    let sink = Sink::bind("127.0.0.1:0", opts).await.unwrap();
    let addr = sink.local_addr().unwrap().to_string();
    let stats = sink.stats();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(sink.run_until(async move {
        let _ = rx.await;
    }));
    RunningSink {
        addr,
        stats,
        stop: Some(tx),
    }
}

fn options(addr: &str, tls: TlsMode, trust: Trust) -> SendOptions {
    let (tls_config, name) = match tls {
        TlsMode::None => (None, None),
        _ => (
            Some(client_config(&trust).unwrap()),
            Some(server_name(addr).unwrap()),
        ),
    };
    SendOptions {
        setup: Setup {
            addr: addr.to_owned(),
            tls,
            tls_config,
            server_name: name,
            ehlo_name: "test.localhost".into(),
            credentials: Some(("user@example.com".into(), "secret".into())),
            timeout: Duration::from_secs(5),
        },
        connections: 3,
        messages: 5,
        per_session: 0,
        duration: None,
        recipients: 2,
        size: 3000,
        from: "user@example.com".into(),
        to_domain: "example.org".into(),
    }
}

async fn send(opts: SendOptions) -> Report {
    tokio::time::timeout(LIMIT, run(opts, Arc::new(AtomicBool::new(false))))
        .await
        .expect("send run timed out")
}

fn sink_count(stats: &SinkStats) -> (u64, u64) {
    (
        stats.messages.load(Ordering::Relaxed),
        stats.recipients.load(Ordering::Relaxed),
    )
}

fn assert_all_delivered(report: &Report, sink: &RunningSink) {
    let s = &report.stats;
    assert!(report.all_ok(), "{}", report.text());
    assert_eq!(
        (s.messages_ok, s.recipients_ok),
        (15, 30),
        "{}",
        report.text()
    );
    assert_eq!(s.connections_ok, 3);
    assert_eq!(s.latencies_us.len(), 15);
    assert_eq!(sink_count(&sink.stats), (15, 30));
    // Sink counts DATA content on the wire (dot-stuffed): at least the message size.
    assert!(sink.stats.bytes.load(Ordering::Relaxed) >= 15 * 3000);
}

#[tokio::test]
async fn plain_pipelined() {
    let sink = start_sink(SinkOptions::default()).await;
    let report = send(options(&sink.addr, TlsMode::None, Trust::Insecure)).await;
    assert_all_delivered(&report, &sink);
    let j = report.json();
    assert_eq!(j["messages"], 15);
    assert_eq!(j["recipients"], 30);
    assert!(j["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn new_session_every_two_messages() {
    let (config, _) = self_signed_server_config().unwrap();
    let sink = start_sink(SinkOptions {
        tls: Some(config),
        implicit_tls: true,
        ..SinkOptions::default()
    })
    .await;
    let mut opts = options(&sink.addr, TlsMode::Implicit, Trust::Insecure);
    opts.per_session = 2;
    let report = send(opts).await;
    let s = &report.stats;
    assert!(report.all_ok(), "{}", report.text());
    assert_eq!(s.messages_ok, 15);
    // 5 messages per slot in sessions of 2, 2 and 1.
    assert_eq!(s.connections_ok, 9);
    assert_eq!(s.setup_us.len(), 9);
    assert_eq!(report.json()["sessions"], 9);
    assert_eq!(sink.stats.connections.load(Ordering::Relaxed), 9);
}

#[tokio::test]
async fn starttls_without_pipelining() {
    let (config, _) = self_signed_server_config().unwrap();
    let sink = start_sink(SinkOptions {
        tls: Some(config),
        pipelining: false,
        ..SinkOptions::default()
    })
    .await;
    let report = send(options(&sink.addr, TlsMode::StartTls, Trust::Insecure)).await;
    assert_all_delivered(&report, &sink);
}

#[tokio::test]
async fn implicit_tls_verified_with_ca_file() {
    let (config, pem) = self_signed_server_config().unwrap();
    let ca = std::env::temp_dir().join(format!(
        "portcullis-load-test-ca-{}.pem",
        std::process::id()
    ));
    std::fs::write(&ca, pem).unwrap();
    let sink = start_sink(SinkOptions {
        tls: Some(config),
        implicit_tls: true,
        ..SinkOptions::default()
    })
    .await;
    let mut opts = options(&sink.addr, TlsMode::Implicit, Trust::CaFile(ca.clone()));
    opts.size = 100_000;
    let report = send(opts).await;
    std::fs::remove_file(&ca).unwrap();
    assert_all_delivered(&report, &sink);
    assert!(report.stats.bytes >= 15 * 100_000);
}

#[tokio::test]
async fn untrusted_certificate_is_a_connection_error() {
    let (config, _) = self_signed_server_config().unwrap();
    let sink = start_sink(SinkOptions {
        tls: Some(config),
        implicit_tls: true,
        ..SinkOptions::default()
    })
    .await;
    let report = send(options(&sink.addr, TlsMode::Implicit, Trust::WebPki)).await;
    let s = &report.stats;
    assert_eq!((s.messages_ok, s.connections_failed), (0, 3));
    assert!(
        s.connection_errors
            .keys()
            .all(|k| k.starts_with("TLS handshake")),
        "{}",
        report.text()
    );
    assert!(!report.all_ok());
    assert_eq!(report.not_sent(), 15);
}

#[tokio::test]
async fn temporary_failures_counted_by_code() {
    for pipelining in [true, false] {
        let sink = start_sink(SinkOptions {
            reject_mail_every: 4,
            pipelining,
            ..SinkOptions::default()
        })
        .await;
        let report = send(options(&sink.addr, TlsMode::None, Trust::Insecure)).await;
        let s = &report.stats;
        assert_eq!(
            (s.messages_ok, s.messages_failed),
            (12, 3),
            "{}",
            report.text()
        );
        assert_eq!(s.errors["451 4.7.1"].count, 3);
        assert_eq!(s.errors["451 4.7.1"].stage, "MAIL");
        assert_eq!(s.recipients_ok, 24);
        assert_eq!(s.recipients_failed, 0);
        assert_eq!(s.connections_ok, 3);
        assert_eq!(sink_count(&sink.stats), (12, 24));
        assert!(report.text().contains("451 4.7.1"));
    }
}

#[tokio::test]
async fn duration_mode() {
    let sink = start_sink(SinkOptions::default()).await;
    let mut opts = options(&sink.addr, TlsMode::None, Trust::Insecure);
    opts.duration = Some(Duration::from_millis(300));
    opts.connections = 2;
    let report = send(opts).await;
    let s = &report.stats;
    assert!(s.messages_ok > 0);
    assert_eq!(s.messages_failed, 0);
    assert_eq!(sink_count(&sink.stats).0, s.messages_ok);
    assert!(report.elapsed >= Duration::from_millis(300));
    assert!(report.all_ok(), "{}", report.text());
}

#[tokio::test]
async fn stop_flag_ends_run() {
    let sink = start_sink(SinkOptions::default()).await;
    let mut opts = options(&sink.addr, TlsMode::None, Trust::Insecure);
    opts.duration = Some(Duration::from_secs(3600));
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        flag.store(true, Ordering::Relaxed);
    });
    let report = tokio::time::timeout(LIMIT, run(opts, stop)).await.unwrap();
    assert!(report.interrupted);
    assert_eq!(report.stats.connections_ok, 3);
}

#[tokio::test]
async fn refused_connections_do_not_hang() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let report = send(options(&addr, TlsMode::None, Trust::Insecure)).await;
    let s = &report.stats;
    assert_eq!((s.connections_failed, s.messages_ok), (3, 0));
    assert_eq!(s.connection_errors.values().sum::<u64>(), 3);
    assert!(
        s.connection_errors.keys().all(|k| k.starts_with("connect")),
        "{}",
        report.text()
    );
}

#[tokio::test]
async fn silent_server_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut opts = options(&addr, TlsMode::None, Trust::Insecure);
    opts.setup.timeout = Duration::from_millis(200);
    let report = send(opts).await;
    let s = &report.stats;
    assert_eq!(s.connections_failed, 3);
    assert_eq!(
        s.connection_errors
            .get("timeout waiting for reply to greeting"),
        Some(&3),
        "{}",
        report.text()
    );
}

#[tokio::test]
async fn idle_sessions_held_then_closed() {
    use portcullis_load::idle::{self, IdleOptions};
    let (config, _) = self_signed_server_config().unwrap();
    let sink = start_sink(SinkOptions {
        tls: Some(config),
        implicit_tls: true,
        ..SinkOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let opts = IdleOptions {
        setup: options(&sink.addr, TlsMode::Implicit, Trust::Insecure).setup,
        sessions: 6,
        parallel: 2,
        hold: Duration::from_millis(300),
        ready_file: Some(ready.clone()),
    };
    let report = tokio::time::timeout(LIMIT, idle::run(opts, Arc::new(AtomicBool::new(false))))
        .await
        .unwrap();
    assert!(report.all_ok(), "{}", report.text());
    assert_eq!(report.established, 6);
    assert!(report.held >= Duration::from_millis(300));
    assert_eq!(std::fs::read_to_string(&ready).unwrap().trim(), "6");
    assert_eq!(sink.stats.connections.load(Ordering::Relaxed), 6);
    assert_eq!(report.json()["established"], 6);
}
