//! The rolling-window arithmetic of plan enforcement, driven with explicit
//! (synthetic) clock values: exactly at the limit, the first slot freeing at
//! exactly t + 60 min, reservations given back, the daily window, and a
//! restart in the middle of a window (state reloaded from SQLite).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use portcullis_proto::QuotaOutcome;
use portcullis_server::config::{Config, Plan};
use portcullis_server::quota::{DAY_MS, HOUR_MS, QuotaService};
use portcullis_store::{NewMessage, SqliteStore, Store, password};

const T0: i64 = 1_800_000_000_000;

async fn setup(plan: Plan) -> (tempfile::TempDir, Arc<dyn Store>, Arc<Config>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("p.db")).await.unwrap();
    let hash = password::hash_password("correct horse battery").unwrap();
    store
        .add_account("u@example.com", &hash, "p")
        .await
        .unwrap();
    store
        .add_account("v@example.com", &hash, "p")
        .await
        .unwrap();
    let mut config = Config::default_config();
    // Mail stays queued: these tests are not about delivery.
    config.delivery.enabled = false;
    config.plans.insert("p".into(), plan);
    (dir, Arc::new(store), Arc::new(config))
}

fn plan(per_hour: u32, per_day: Option<u32>) -> Plan {
    Plan {
        emails_per_hour: per_hour,
        emails_per_day: per_day,
        max_recipients: None,
        max_message_size: None,
    }
}

fn refused_text(o: &QuotaOutcome) -> String {
    match o {
        QuotaOutcome::Refused(r) => r.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn exactly_at_the_limit_and_first_slot_freeing() {
    let (_d, store, config) = setup(plan(3, None)).await;
    let q = QuotaService::load(store, config).await.unwrap();
    for i in 0..3 {
        let (o, g) = q.reserve("u@example.com", T0 + i * 1000).await;
        assert_eq!(o, QuotaOutcome::Granted);
        assert_eq!(g.unwrap().at_ms, T0 + i * 1000);
    }
    // The 4th within the hour is refused; the reply says when the first slot frees.
    let (o, g) = q.reserve("u@example.com", T0 + 10_000).await;
    assert!(g.is_none());
    let text = refused_text(&o);
    assert!(
        text.starts_with(
            "451 4.7.1 Sending limit reached for plan p (3/hour); try again in 59m50s"
        ),
        "{text}"
    );
    // One millisecond before the first email leaves the window: still refused.
    let (o, _) = q.reserve("u@example.com", T0 + HOUR_MS - 1).await;
    assert!(matches!(o, QuotaOutcome::Refused(_)));
    // At exactly T0 + 60 min the first email no longer counts (t > now - window).
    let (o, _) = q.reserve("u@example.com", T0 + HOUR_MS).await;
    assert_eq!(o, QuotaOutcome::Granted);
    let (o, _) = q.reserve("u@example.com", T0 + HOUR_MS).await;
    assert!(matches!(o, QuotaOutcome::Refused(_)));
    // Another account is independent.
    let (o, _) = q.reserve("v@example.com", T0 + 10_000).await;
    assert_eq!(o, QuotaOutcome::Granted);
}

#[tokio::test]
async fn released_reservations_free_their_slot() {
    let (_d, store, config) = setup(plan(2, None)).await;
    let q = QuotaService::load(store, config).await.unwrap();
    let (_, a) = q.reserve("u@example.com", T0).await;
    let (_, b) = q.reserve("u@example.com", T0 + 1).await;
    assert!(matches!(
        q.reserve("u@example.com", T0 + 2).await.0,
        QuotaOutcome::Refused(_)
    ));
    q.release("u@example.com", &[a.unwrap().at_ms, b.unwrap().at_ms]);
    assert_eq!(q.hourly_count("u@example.com", T0 + 3), 0);
    assert_eq!(
        q.reserve("u@example.com", T0 + 3).await.0,
        QuotaOutcome::Granted
    );
}

#[tokio::test]
async fn daily_limit_uses_its_own_window() {
    let (_d, store, config) = setup(plan(2, Some(3))).await;
    let q = QuotaService::load(store, config).await.unwrap();
    assert_eq!(
        q.reserve("u@example.com", T0).await.0,
        QuotaOutcome::Granted
    );
    assert_eq!(
        q.reserve("u@example.com", T0 + 1).await.0,
        QuotaOutcome::Granted
    );
    assert_eq!(
        q.reserve("u@example.com", T0 + HOUR_MS + 1).await.0,
        QuotaOutcome::Granted
    );
    let text = refused_text(&q.reserve("u@example.com", T0 + 2 * HOUR_MS + 2).await.0);
    assert!(text.contains("(3/day)"), "{text}");
    assert_eq!(
        q.reserve("u@example.com", T0 + DAY_MS).await.0,
        QuotaOutcome::Granted
    );
}

#[tokio::test]
async fn restart_in_the_middle_of_a_window_keeps_the_count() {
    let (_d, store, config) = setup(plan(3, None)).await;
    let now = portcullis_server::quota::now_ms();
    // Two emails 30 minutes ago were queued (durable), one reservation was not.
    store
        .enqueue(&NewMessage {
            id: "Q1".into(),
            sender: "u@example.com".into(),
            recipients: vec!["a@example.org".into(), "b@example.org".into()],
            size: 1,
            spool_path: "spool/Q1.eml".into(),
            auth_user: Some("u@example.com".into()),
            client_ip: "192.0.2.1".into(),
            received_at: (now - HOUR_MS / 2) / 1000,
            usage_ms: vec![now - HOUR_MS / 2; 2],
        })
        .await
        .unwrap();
    let q = QuotaService::load(Arc::clone(&store), Arc::clone(&config))
        .await
        .unwrap();
    assert_eq!(
        q.reserve("u@example.com", now).await.0,
        QuotaOutcome::Granted
    );
    drop(q);
    // "Restart": the unqueued reservation is gone, the two durable ones remain.
    let q = QuotaService::load(store, config).await.unwrap();
    assert_eq!(q.hourly_count("u@example.com", now), 2);
    assert_eq!(
        q.reserve("u@example.com", now).await.0,
        QuotaOutcome::Granted
    );
    let text = refused_text(&q.reserve("u@example.com", now).await.0);
    assert!(text.contains("try again in 30m"), "{text}");
}

#[tokio::test]
async fn unknown_plan_is_a_temporary_failure() {
    let (_d, store, config) = setup(plan(3, None)).await;
    store
        .set_account_plan("u@example.com", "gold")
        .await
        .unwrap();
    let q = QuotaService::load(store, config).await.unwrap();
    assert_eq!(
        q.reserve("u@example.com", T0).await.0,
        QuotaOutcome::TemporaryFailure
    );
}

#[tokio::test]
async fn enforcement_can_be_switched_off() {
    let (_d, store, config) = setup(plan(1, None)).await;
    let mut config = (*config).clone();
    config.usage.enforce = false;
    let q = QuotaService::load(store, Arc::new(config)).await.unwrap();
    for i in 0..5 {
        let (o, g) = q.reserve("u@example.com", T0 + i).await;
        assert_eq!(o, QuotaOutcome::Granted);
        assert!(g.is_none(), "nothing is recorded when enforcement is off");
    }
}
