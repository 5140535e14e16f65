//! Sending plans (issue 5) with a real SMTP client (lettre over implicit TLS)
//! against the real server and a real SQLite file: a 10/hour plan accepts 10
//! emails and refuses the 11th with 451 4.7.1 saying when to retry; the limit
//! holds across a restart and frees up when the window slides; another
//! account is unaffected; a plan change applies to an open session at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use portcullis_server::Server;
use portcullis_server::config::{Config, ListenerRole, Plan};
use portcullis_store::{NewMessage, SqliteStore, Store, password};
use tokio::sync::oneshot;

const PW: &str = "correct horse battery";

fn config(data_dir: &Path) -> Config {
    let mut config = Config::default_config();
    // Mail stays queued: these tests are not about delivery.
    config.delivery.enabled = false;
    config.data_dir = data_dir.to_path_buf();
    config.hostname = "mx.test".into();
    config.security.auth_min_duration = Duration::from_millis(5);
    for role in ListenerRole::ALL {
        config.listeners.get_mut(role).address = "127.0.0.1:0".parse().unwrap();
    }
    // These tests are about plans; the per-IP throttles have their own tests.
    config.throttle.connections_per_minute = 0;
    config.plans.insert(
        "ten".into(),
        Plan {
            emails_per_hour: 10,
            emails_per_day: None,
            max_recipients: None,
            max_message_size: None,
        },
    );
    config
}

struct Running {
    addr: SocketAddr,
    cert: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(config: Config, store: &SqliteStore) -> Running {
    let server = Server::bind(Arc::new(config), Arc::new(store.clone()))
        .await
        .unwrap();
    let addr = server.local_addr(ListenerRole::Submissions).unwrap();
    let cert = std::fs::read_to_string(server.certificate_path()).unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .run(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    Running {
        addr,
        cert,
        stop: Some(tx),
        task,
    }
}

impl Running {
    fn transport(&self, user: &str) -> AsyncSmtpTransport<Tokio1Executor> {
        let tls = TlsParameters::builder("localhost".into())
            .certificate_store(CertificateStore::None)
            .add_root_certificate(Certificate::from_pem(self.cert.as_bytes()).unwrap())
            .build_rustls()
            .unwrap();
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(self.addr.port())
            .tls(Tls::Wrapper(tls))
            .credentials(Credentials::new(user.into(), PW.into()))
            .authentication(vec![Mechanism::Plain])
            .timeout(Some(Duration::from_secs(10)))
            .build()
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(40), self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

fn email(from: &str, to: &str, n: usize) -> Message {
    Message::builder()
        .from(from.parse().unwrap())
        .to(to.parse().unwrap())
        .subject(format!("plan test {n}"))
        .body(String::from("hello"))
        .unwrap()
}

async fn fixture(dir: &Path) -> SqliteStore {
    let store = SqliteStore::open(&dir.join("portcullis.db")).await.unwrap();
    let hash = password::hash_password(PW).unwrap();
    store
        .add_account("ten@example.com", &hash, "ten")
        .await
        .unwrap();
    store
        .add_account("other@example.com", &hash, "ten")
        .await
        .unwrap();
    store
}

/// Sends one email; returns the server's reply code on refusal.
async fn send(
    t: &AsyncSmtpTransport<Tokio1Executor>,
    from: &str,
    n: usize,
) -> Result<(), (u16, String)> {
    match t.send(email(from, "friend@example.org", n)).await {
        Ok(_) => Ok(()),
        Err(e) => {
            let code = e.status().map(u16::from).unwrap_or(0);
            Err((code, e.to_string()))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_per_hour_plan_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let store = fixture(dir.path()).await;
    let server = start(config(dir.path()), &store).await;
    let t = server.transport("ten@example.com");
    for n in 0..10 {
        send(&t, "ten@example.com", n)
            .await
            .unwrap_or_else(|e| panic!("email {n} refused: {e:?}"));
    }
    let (code, text) = send(&t, "ten@example.com", 10).await.unwrap_err();
    assert_eq!(code, 451, "{text}");
    assert!(text.contains("4.7.1"), "{text}");
    assert!(
        text.contains("Sending limit reached for plan ten (10/hour); try again in"),
        "{text}"
    );
    // Another account on the same plan is unaffected.
    let other = server.transport("other@example.com");
    send(&other, "other@example.com", 0).await.unwrap();
    // The counts are durable: ten rows for the account.
    let since = portcullis_server::quota::now_ms() - 3_600_000;
    assert_eq!(
        store
            .usage_since("ten@example.com", since)
            .await
            .unwrap()
            .len(),
        10
    );
    server.stop().await;

    // Still refused after a restart.
    let server = start(config(dir.path()), &store).await;
    let t = server.transport("ten@example.com");
    let (code, _) = send(&t, "ten@example.com", 11).await.unwrap_err();
    assert_eq!(code, 451);
    // A plan change applies at once: the next transaction re-reads the plan.
    store
        .set_account_plan("ten@example.com", "standard")
        .await
        .unwrap();
    send(&t, "ten@example.com", 12).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_slides_and_refused_recipients_are_not_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = fixture(dir.path()).await;
    // Ten emails sent 59m58s ago: the window frees in about 2 seconds.
    let old = portcullis_server::quota::now_ms() - 3_600_000 + 2_000;
    store
        .enqueue(&NewMessage {
            id: "OLD0000000000001".into(),
            sender: "ten@example.com".into(),
            recipients: (0..10).map(|i| format!("r{i}@example.org")).collect(),
            size: 10,
            spool_path: "spool/OLD0000000000001.eml".into(),
            auth_user: Some("ten@example.com".into()),
            client_ip: "192.0.2.1".into(),
            received_at: old / 1000,
            usage_ms: vec![old; 10],
        })
        .await
        .unwrap();
    let server = start(config(dir.path()), &store).await;
    let t = server.transport("ten@example.com");
    let (code, text) = send(&t, "ten@example.com", 0).await.unwrap_err();
    assert_eq!(code, 451, "{text}");
    assert!(
        text.contains("try again in 1s") || text.contains("try again in 2s"),
        "{text}"
    );
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    send(&t, "ten@example.com", 1).await.unwrap();
    // Refused attempts were never counted: exactly 11 rows exist.
    assert_eq!(
        store.usage_since("ten@example.com", 0).await.unwrap().len(),
        11
    );
    server.stop().await;
}
