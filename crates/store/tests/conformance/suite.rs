//! The backend-independent conformance suite for [`Store`].
//!
//! Owns the contract checks. Every `suite_*` function takes `Arc<dyn Store>`
//! handles to an empty store and knows nothing about the backend, so another
//! backend's test target can include this file (`#[path = ...] mod suite;`)
//! and run the same functions.

use std::sync::Arc;

use portcullis_store::password::hash_password;
use portcullis_store::{
    AccountStatus, AppPassword, AuthEvent, AuthEventFilter, Ban, DeliveryEvent, DeliveryStatus,
    NewMessage, QueueEntry, QueuedMessage, RecipientOutcome, ScramCredential, Store, StoreError,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

pub fn hash(password: &str) -> String {
    hash_password(password).expect("hashing")
}

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[track_caller]
pub fn assert_invalid<T: std::fmt::Debug>(result: portcullis_store::Result<T>, what: &str) {
    match result {
        Err(StoreError::Invalid(_)) => {}
        other => panic!("{what}: expected Invalid, got {other:?}"),
    }
}

#[track_caller]
pub fn assert_not_found<T: std::fmt::Debug>(result: portcullis_store::Result<T>, name: &str) {
    match result {
        Err(StoreError::NotFound(n)) => assert_eq!(n, name),
        other => panic!("expected NotFound({name}), got {other:?}"),
    }
}

#[track_caller]
pub fn assert_exists<T: std::fmt::Debug>(result: portcullis_store::Result<T>, name: &str) {
    match result {
        Err(StoreError::AlreadyExists(n)) => assert_eq!(n, name),
        other => panic!("expected AlreadyExists({name}), got {other:?}"),
    }
}

pub fn message(id: &str, sender: &str, recipients: &[&str], received_at: i64) -> NewMessage {
    NewMessage {
        id: id.to_owned(),
        sender: sender.to_owned(),
        recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
        size: 1234,
        spool_path: format!("spool/{id}.eml"),
        auth_user: Some("alice@example.com".to_owned()),
        client_ip: "192.0.2.7".to_owned(),
        received_at,
        usage_ms: vec![],
    }
}

/// Like [`message`], submitted by `auth_user` with the given usage events.
pub fn message_with_usage(
    id: &str,
    auth_user: &str,
    recipients: &[&str],
    usage_ms: &[i64],
) -> NewMessage {
    let mut m = message(id, auth_user, recipients, 1_700_000_000);
    m.auth_user = Some(auth_user.to_owned());
    m.usage_ms = usage_ms.to_vec();
    m
}

/// Every usage event in the store, as `usage_all_since` lists them.
pub async fn all_usage(store: &Arc<dyn Store>) -> Vec<(String, i64)> {
    store.usage_all_since(i64::MIN).await.unwrap()
}

pub fn pairs(expected: &[(&str, i64)]) -> Vec<(String, i64)> {
    expected
        .iter()
        .map(|(a, t)| ((*a).to_owned(), *t))
        .collect()
}

const BAD_ADDRESSES: &[&str] = &[
    "",
    "   ",
    "alice",
    "@example.com",
    "alice@",
    "a@b@example.com",
    "al ice@example.com",
    "alice@exa\tmple.com",
    "alice\u{0}@example.com",
];

const BAD_DOMAINS: &[&str] = &[
    "",
    "exa mple.com",
    "example..com",
    ".example.com",
    "example.com.",
    "-example.com",
    "example-.com",
    "exa_mple.com",
    "bücher.example",
    "[192.0.2.1]",
];

// ---------------------------------------------------------------------------
// The backend-independent suite
// ---------------------------------------------------------------------------

/// add_account / account / list_accounts / credential, with normalisation.
pub async fn suite_accounts(store: Arc<dyn Store>) {
    let h = hash("secret one");
    let before = now();
    let added = store
        .add_account("  Alice@Example.COM ", &h, "basic")
        .await
        .unwrap();
    assert_eq!(added.address, "alice@example.com");
    assert_eq!(added.status, AccountStatus::Active);
    assert_eq!(added.plan, "basic");
    assert!(added.created_at >= before && added.created_at <= now());
    assert_eq!(added.created_at, added.updated_at);

    let found = store.account("ALICE@example.com").await.unwrap();
    assert_eq!(found.as_ref(), Some(&added));
    let found = store.account(" alice@EXAMPLE.com\n").await.unwrap();
    assert_eq!(found.as_ref(), Some(&added));

    let cred = store
        .credential("aLiCe@ExAmPlE.cOm")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cred.address, "alice@example.com");
    assert_eq!(cred.status, AccountStatus::Active);
    assert_eq!(cred.password_hash, h);

    store
        .add_account("bob@example.com", &hash("secret two"), "pro")
        .await
        .unwrap();
    store
        .add_account("aaron@other.example", &h, "basic")
        .await
        .unwrap();
    let list = store.list_accounts().await.unwrap();
    let addresses: Vec<&str> = list.iter().map(|a| a.address.as_str()).collect();
    assert_eq!(
        addresses,
        [
            "aaron@other.example",
            "alice@example.com",
            "bob@example.com"
        ]
    );
    assert_eq!(list[1], added);
    assert_eq!(list[2].plan, "pro");

    assert_eq!(store.account("nobody@example.com").await.unwrap(), None);
    assert!(
        store
            .credential("nobody@example.com")
            .await
            .unwrap()
            .is_none()
    );
    // Lookups of things that cannot exist answer None rather than an error.
    for bad in BAD_ADDRESSES {
        assert_eq!(store.account(bad).await.unwrap(), None, "{bad:?}");
        assert!(store.credential(bad).await.unwrap().is_none(), "{bad:?}");
    }
}

/// Duplicates and invalid input to add_account leave the store unchanged.
pub async fn suite_account_errors(store: Arc<dyn Store>) {
    let h = hash("pw");
    store
        .add_account("carol@example.com", &h, "basic")
        .await
        .unwrap();
    assert_exists(
        store.add_account("Carol@EXAMPLE.com", &h, "pro").await,
        "carol@example.com",
    );
    assert_eq!(
        store
            .account("carol@example.com")
            .await
            .unwrap()
            .unwrap()
            .plan,
        "basic",
        "duplicate must not overwrite"
    );

    for bad in BAD_ADDRESSES {
        assert_invalid(store.add_account(bad, &h, "basic").await, bad);
    }
    let too_long = format!("{}@example.com", "a".repeat(250));
    assert_invalid(store.add_account(&too_long, &h, "basic").await, "too long");
    // A login's domain becomes a local domain, so it must be a DNS name.
    for bad in BAD_DOMAINS.iter().filter(|d| !d.is_empty()) {
        let address = format!("dave@{bad}");
        assert_invalid(store.add_account(&address, &h, "basic").await, &address);
    }

    // Something that is not a PHC hash is refused and never echoed back.
    let plain = "Tr0ub4dor&3-plaintext";
    match store.add_account("erin@example.com", plain, "basic").await {
        Err(e @ StoreError::Invalid(_)) => assert!(!e.to_string().contains(plain), "{e}"),
        other => panic!("plain password accepted: {other:?}"),
    }
    assert_invalid(
        store.add_account("erin@example.com", "", "basic").await,
        "empty hash",
    );
    assert_invalid(
        store.add_account("erin@example.com", &h, "  ").await,
        "empty plan",
    );

    let accounts = store.list_accounts().await.unwrap();
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    assert_eq!(store.list_domains().await.unwrap(), ["example.com"]);
}

/// set_password_hash, set_account_status, remove_account.
pub async fn suite_account_changes(store: Arc<dyn Store>) {
    let old = hash("old");
    let new = hash("new");
    let added = store
        .add_account("frank@example.com", &old, "basic")
        .await
        .unwrap();

    store
        .set_password_hash("FRANK@example.com ", &new)
        .await
        .unwrap();
    let cred = store
        .credential("frank@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cred.password_hash, new);
    let account = store.account("frank@example.com").await.unwrap().unwrap();
    assert!(account.updated_at >= added.updated_at);
    assert_eq!(account.created_at, added.created_at);
    assert_invalid(
        store.set_password_hash("frank@example.com", "plain").await,
        "plain hash",
    );
    assert_eq!(
        store
            .credential("frank@example.com")
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        new
    );
    assert_not_found(
        store.set_password_hash("ghost@example.com", &new).await,
        "ghost@example.com",
    );
    assert_invalid(store.set_password_hash("ghost", &new).await, "bad address");

    store
        .set_account_status("Frank@Example.com", AccountStatus::Disabled)
        .await
        .unwrap();
    let cred = store
        .credential("frank@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cred.status, AccountStatus::Disabled);
    assert_eq!(cred.password_hash, new, "disabling keeps the hash");
    assert_eq!(
        store
            .account("frank@example.com")
            .await
            .unwrap()
            .unwrap()
            .status,
        AccountStatus::Disabled
    );
    assert_eq!(
        store.list_accounts().await.unwrap()[0].status,
        AccountStatus::Disabled
    );
    store
        .set_account_status("frank@example.com", AccountStatus::Active)
        .await
        .unwrap();
    assert_eq!(
        store
            .credential("frank@example.com")
            .await
            .unwrap()
            .unwrap()
            .status,
        AccountStatus::Active
    );
    assert_not_found(
        store
            .set_account_status("ghost@example.com", AccountStatus::Disabled)
            .await,
        "ghost@example.com",
    );

    store.remove_account(" FRANK@example.COM").await.unwrap();
    assert_eq!(store.account("frank@example.com").await.unwrap(), None);
    assert!(
        store
            .credential("frank@example.com")
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.list_accounts().await.unwrap().is_empty());
    assert_not_found(
        store.remove_account("frank@example.com").await,
        "frank@example.com",
    );
    assert_invalid(store.remove_account("not an address").await, "bad address");
    // The domain outlives its last account.
    assert!(store.is_local_domain("example.com").await.unwrap());
}

/// add_domain / list_domains / remove_domain / is_local_domain.
pub async fn suite_domains(store: Arc<dyn Store>) {
    assert!(store.list_domains().await.unwrap().is_empty());
    store.add_domain(" Example.ORG ").await.unwrap();
    store.add_domain("localhost").await.unwrap();
    store.add_domain("a-1.example.com").await.unwrap();
    assert_exists(store.add_domain("EXAMPLE.org").await, "example.org");
    assert_eq!(
        store.list_domains().await.unwrap(),
        ["a-1.example.com", "example.org", "localhost"]
    );
    assert!(store.is_local_domain("example.ORG").await.unwrap());
    assert!(store.is_local_domain(" LOCALHOST ").await.unwrap());
    assert!(!store.is_local_domain("example.com").await.unwrap());
    assert!(!store.is_local_domain("sub.example.org").await.unwrap());

    for bad in BAD_DOMAINS {
        assert_invalid(store.add_domain(bad).await, bad);
        assert!(!store.is_local_domain(bad).await.unwrap(), "{bad:?}");
        assert_invalid(store.remove_domain(bad).await, bad);
    }
    let label64 = format!("{}.example", "a".repeat(64));
    assert_invalid(store.add_domain(&label64).await, "64-octet label");
    let long = vec!["abcdefghi"; 26].join(".");
    assert_invalid(store.add_domain(&long).await, "254-octet name");
    assert_eq!(store.list_domains().await.unwrap().len(), 3);

    store.remove_domain("Example.Org").await.unwrap();
    assert!(!store.is_local_domain("example.org").await.unwrap());
    assert_not_found(store.remove_domain("example.org").await, "example.org");
    assert_eq!(
        store.list_domains().await.unwrap(),
        ["a-1.example.com", "localhost"]
    );
}

/// add_account adds its domain; remove_domain refuses while accounts use it.
pub async fn suite_domain_accounts(store: Arc<dyn Store>) {
    let h = hash("pw");
    store
        .add_account("a@Example.com", &h, "basic")
        .await
        .unwrap();
    assert_eq!(store.list_domains().await.unwrap(), ["example.com"]);
    assert!(store.is_local_domain("EXAMPLE.COM").await.unwrap());
    // A second account on the same domain does not add it twice.
    store
        .add_account("b@example.com", &h, "basic")
        .await
        .unwrap();
    // An existing domain is reused.
    store.add_domain("example.net").await.unwrap();
    store
        .add_account("c@example.net", &h, "basic")
        .await
        .unwrap();
    assert_eq!(
        store.list_domains().await.unwrap(),
        ["example.com", "example.net"]
    );
    // Accounts on a subdomain or a longer name do not count for example.com.
    store
        .add_account("d@sub.example.com", &h, "basic")
        .await
        .unwrap();
    store
        .add_account("e@notexample.com", &h, "basic")
        .await
        .unwrap();

    match store.remove_domain("EXAMPLE.com").await {
        Err(StoreError::Invalid(msg)) => {
            assert_eq!(msg, "domain example.com still has 2 accounts")
        }
        other => panic!("expected refusal, got {other:?}"),
    }
    assert!(store.is_local_domain("example.com").await.unwrap());

    store.remove_account("a@example.com").await.unwrap();
    match store.remove_domain("example.com").await {
        Err(StoreError::Invalid(msg)) => {
            assert!(msg.starts_with("domain example.com still has 1 "), "{msg}")
        }
        other => panic!("expected refusal, got {other:?}"),
    }
    store.remove_account("b@example.com").await.unwrap();
    store.remove_domain("example.com").await.unwrap();
    assert_eq!(
        store.list_domains().await.unwrap(),
        ["example.net", "notexample.com", "sub.example.com"]
    );
    assert_eq!(store.list_accounts().await.unwrap().len(), 3);
}

/// enqueue / list_queue: content, normalisation, order, errors, atomicity.
pub async fn suite_queue(store: Arc<dyn Store>) {
    assert!(store.list_queue().await.unwrap().is_empty());

    let first = message(
        "Q1",
        "Alice@Example.com",
        &["Bob@Example.NET", "carol@example.org", "bob@example.net"],
        1_700_000_100,
    );
    // Received earlier, enqueued later: listed first.
    let mut bounce = message("Q0", "", &["postmaster@example.com"], 1_700_000_000);
    bounce.auth_user = None;
    bounce.size = 0;
    // Same timestamp as Q1, enqueued after it: listed after it.
    let mut tie = message(
        "Q2",
        "dave@example.com",
        &["erin@example.com"],
        1_700_000_100,
    );
    tie.size = u64::from(u32::MAX) + 1;
    tie.auth_user = Some("Dave@Example.COM".into());

    store.enqueue(&first).await.unwrap();
    store.enqueue(&bounce).await.unwrap();
    store.enqueue(&tie).await.unwrap();

    let queue = store.list_queue().await.unwrap();
    let expected = vec![
        QueuedMessage {
            id: "Q0".into(),
            sender: String::new(),
            recipients: vec!["postmaster@example.com".into()],
            size: 0,
            spool_path: "spool/Q0.eml".into(),
            auth_user: None,
            client_ip: "192.0.2.7".into(),
            received_at: 1_700_000_000,
        },
        QueuedMessage {
            id: "Q1".into(),
            sender: "Alice@Example.com".into(),
            recipients: vec![
                "Bob@Example.NET".into(),
                "carol@example.org".into(),
                "bob@example.net".into(),
            ],
            size: 1234,
            spool_path: "spool/Q1.eml".into(),
            auth_user: Some("alice@example.com".into()),
            client_ip: "192.0.2.7".into(),
            received_at: 1_700_000_100,
        },
        QueuedMessage {
            id: "Q2".into(),
            sender: "dave@example.com".into(),
            recipients: vec!["erin@example.com".into()],
            size: u64::from(u32::MAX) + 1,
            spool_path: "spool/Q2.eml".into(),
            auth_user: Some("dave@example.com".into()),
            client_ip: "192.0.2.7".into(),
            received_at: 1_700_000_100,
        },
    ];
    assert_eq!(queue, expected);

    // Duplicate id: refused, the original untouched.
    let dup = message("Q1", "mallory@example.com", &["x@example.com"], 1);
    assert_exists(store.enqueue(&dup).await, "Q1");

    // Invalid messages are refused and leave nothing behind.
    let mut none = message("Q3", "a@example.com", &[], 1);
    assert_invalid(store.enqueue(&none).await, "no recipients");
    none.recipients = vec!["ok@example.com".into(), "not-an-address".into()];
    assert_invalid(store.enqueue(&none).await, "bad recipient");
    assert_invalid(
        store
            .enqueue(&message("Q3", "bad sender@x", &["ok@example.com"], 1))
            .await,
        "bad sender",
    );
    assert_invalid(
        store
            .enqueue(&message("", "a@example.com", &["ok@example.com"], 1))
            .await,
        "empty id",
    );
    let mut no_spool = message("Q3", "a@example.com", &["ok@example.com"], 1);
    no_spool.spool_path = String::new();
    assert_invalid(store.enqueue(&no_spool).await, "empty spool path");
    let mut huge = message("Q3", "a@example.com", &["ok@example.com"], 1);
    huge.size = u64::MAX;
    assert_invalid(store.enqueue(&huge).await, "size beyond i64");

    assert_eq!(store.list_queue().await.unwrap(), expected);
}

/// Two handles on the same storage (the server and the admin CLI) see each
/// other's writes.
pub async fn suite_shared(server: Arc<dyn Store>, cli: Arc<dyn Store>) {
    let h = hash("pw");
    cli.add_account("Grace@Example.com", &h, "basic")
        .await
        .unwrap();
    let cred = server
        .credential("grace@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cred.status, AccountStatus::Active);
    assert!(server.is_local_domain("example.com").await.unwrap());

    cli.set_account_status("grace@example.com", AccountStatus::Disabled)
        .await
        .unwrap();
    let cred = server
        .credential("grace@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cred.status, AccountStatus::Disabled);

    server
        .enqueue(&message(
            "S1",
            "grace@example.com",
            &["x@example.net"],
            now(),
        ))
        .await
        .unwrap();
    let queue = cli.list_queue().await.unwrap();
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0].id, "S1");

    // Usage written by one handle is seen by the other, both ways.
    server
        .enqueue(&message_with_usage(
            "S2",
            "Grace@Example.com",
            &["x@example.net", "y@example.net"],
            &[5_000, 6_000],
        ))
        .await
        .unwrap();
    assert_eq!(
        cli.usage_since("grace@example.com", 0).await.unwrap(),
        [5_000, 6_000]
    );
    cli.enqueue(&message_with_usage(
        "S3",
        "grace@example.com",
        &["z@example.net"],
        &[7_000],
    ))
    .await
    .unwrap();
    assert_eq!(
        server.usage_all_since(5_000).await.unwrap(),
        pairs(&[("grace@example.com", 6_000), ("grace@example.com", 7_000)])
    );
    assert_eq!(cli.prune_usage(5_000).await.unwrap(), 1);
    assert_eq!(
        server.usage_since("grace@example.com", 0).await.unwrap(),
        [6_000, 7_000]
    );
    cli.set_account_plan("grace@example.com", "pro")
        .await
        .unwrap();
    assert_eq!(
        server
            .account("grace@example.com")
            .await
            .unwrap()
            .unwrap()
            .plan,
        "pro"
    );

    assert_exists(
        server.add_account("grace@example.com", &h, "basic").await,
        "grace@example.com",
    );
    cli.remove_account("grace@example.com").await.unwrap();
    assert!(
        server
            .credential("grace@example.com")
            .await
            .unwrap()
            .is_none()
    );
    assert!(all_usage(&server).await.is_empty());
    server.remove_domain("example.com").await.unwrap();
    assert!(cli.list_domains().await.unwrap().is_empty());
}

/// Concurrent writers on two handles: every enqueue that returned Ok is listed.
pub async fn suite_concurrent_writes(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        for (name, store) in [("a", a.clone()), ("b", b.clone())] {
            tasks.spawn(async move {
                let id = format!("C{name}{i:02}");
                let mut m = message(&id, "x@example.com", &["y@example.com", "z@example.com"], i);
                m.usage_ms = vec![i, i + 1000];
                store.enqueue(&m).await
            });
        }
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap().unwrap();
    }
    let queue = a.list_queue().await.unwrap();
    assert_eq!(queue.len(), 40);
    assert!(
        queue
            .windows(2)
            .all(|w| w[0].received_at <= w[1].received_at)
    );
    assert!(queue.iter().all(|m| m.recipients.len() == 2));
    assert_eq!(b.list_queue().await.unwrap(), queue);
    let usage = a.usage_since("alice@example.com", i64::MIN).await.unwrap();
    assert_eq!(usage.len(), 80);
    assert!(usage.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(all_usage(&b).await.len(), 80);
}

/// set_account_plan: normalisation, validation, NotFound.
pub async fn suite_account_plan(store: Arc<dyn Store>) {
    let h = hash("pw");
    let added = store
        .add_account("ivan@example.com", &h, "basic")
        .await
        .unwrap();

    store
        .set_account_plan(" IVAN@Example.com ", "  Pro Plus ")
        .await
        .unwrap();
    let account = store.account("ivan@example.com").await.unwrap().unwrap();
    assert_eq!(account.plan, "Pro Plus", "trimmed, case kept");
    assert_eq!(account.created_at, added.created_at);
    assert!(account.updated_at >= added.updated_at);
    assert_eq!(account.status, AccountStatus::Active);
    assert_eq!(store.list_accounts().await.unwrap()[0].plan, "Pro Plus");
    assert_eq!(
        store
            .credential("ivan@example.com")
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        h,
        "a plan change keeps the hash"
    );

    for bad in ["", "   ", "a\nb", &"p".repeat(65)] {
        assert_invalid(store.set_account_plan("ivan@example.com", bad).await, bad);
    }
    assert_eq!(
        store
            .account("ivan@example.com")
            .await
            .unwrap()
            .unwrap()
            .plan,
        "Pro Plus",
        "a refused plan changes nothing"
    );
    assert_not_found(
        store.set_account_plan("Ghost@Example.com", "pro").await,
        "ghost@example.com",
    );
    assert_invalid(
        store.set_account_plan("not an address", "pro").await,
        "bad address",
    );
    assert_eq!(store.list_accounts().await.unwrap().len(), 1);
}

/// enqueue records usage in the same transaction; usage_since /
/// usage_all_since (strictly after, ordering, duplicates); prune_usage.
pub async fn suite_usage(store: Arc<dyn Store>) {
    assert!(all_usage(&store).await.is_empty());
    assert!(store.usage_all_since(0).await.unwrap().is_empty());
    assert_eq!(store.prune_usage(i64::MAX).await.unwrap(), 0);
    let h = hash("pw");
    store
        .add_account("alice@example.com", &h, "basic")
        .await
        .unwrap();
    store
        .add_account("bob@example.com", &h, "basic")
        .await
        .unwrap();

    // Given out of order; listed ascending, keyed by the normalised auth user.
    store
        .enqueue(&message_with_usage(
            "U1",
            " Alice@Example.COM ",
            &["x@example.net", "y@example.net", "z@example.net"],
            &[3_000, 1_000, 2_000],
        ))
        .await
        .unwrap();
    store
        .enqueue(&message_with_usage(
            "U2",
            "bob@example.com",
            &["x@example.net"],
            &[2_500],
        ))
        .await
        .unwrap();
    // Fewer events than recipients (some not counted), and duplicates kept.
    store
        .enqueue(&message_with_usage(
            "U3",
            "alice@example.com",
            &["x@example.net", "y@example.net", "local@example.com"],
            &[3_000, 3_000],
        ))
        .await
        .unwrap();
    // No usage: nothing recorded, with or without an auth user.
    store
        .enqueue(&message_with_usage(
            "U4",
            "alice@example.com",
            &["x@example.net"],
            &[],
        ))
        .await
        .unwrap();
    let mut anonymous = message("U5", "", &["postmaster@example.com"], 1);
    anonymous.auth_user = None;
    store.enqueue(&anonymous).await.unwrap();
    // Usage is keyed by the auth user whether or not it is an account.
    store
        .enqueue(&message_with_usage(
            "U6",
            "zed@example.net",
            &["x@example.net"],
            &[-5],
        ))
        .await
        .unwrap();
    assert_eq!(store.list_queue().await.unwrap().len(), 6);

    assert_eq!(
        store.usage_since("alice@example.com", 0).await.unwrap(),
        [1_000, 2_000, 3_000, 3_000, 3_000]
    );
    assert_eq!(
        store.usage_since("ALICE@example.com ", 0).await.unwrap(),
        [1_000, 2_000, 3_000, 3_000, 3_000]
    );
    // Strictly after since_ms.
    assert_eq!(
        store.usage_since("alice@example.com", 999).await.unwrap(),
        [1_000, 2_000, 3_000, 3_000, 3_000]
    );
    assert_eq!(
        store.usage_since("alice@example.com", 1_000).await.unwrap(),
        [2_000, 3_000, 3_000, 3_000]
    );
    assert_eq!(
        store.usage_since("alice@example.com", 2_999).await.unwrap(),
        [3_000, 3_000, 3_000]
    );
    assert!(
        store
            .usage_since("alice@example.com", 3_000)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.usage_since("bob@example.com", 2_499).await.unwrap(),
        [2_500]
    );
    assert!(
        store
            .usage_since("bob@example.com", 2_500)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.usage_since("zed@example.net", -6).await.unwrap(),
        [-5]
    );
    assert!(
        store
            .usage_since("zed@example.net", -5)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .usage_since("nobody@example.com", i64::MIN)
            .await
            .unwrap()
            .is_empty()
    );
    for bad in BAD_ADDRESSES {
        assert!(
            store.usage_since(bad, i64::MIN).await.unwrap().is_empty(),
            "{bad:?}"
        );
    }

    let everything = pairs(&[
        ("alice@example.com", 1_000),
        ("alice@example.com", 2_000),
        ("alice@example.com", 3_000),
        ("alice@example.com", 3_000),
        ("alice@example.com", 3_000),
        ("bob@example.com", 2_500),
        ("zed@example.net", -5),
    ]);
    assert_eq!(all_usage(&store).await, everything);
    assert_eq!(store.usage_all_since(-6).await.unwrap(), everything);
    assert_eq!(store.usage_all_since(-5).await.unwrap(), everything[..6]);
    assert_eq!(
        store.usage_all_since(2_000).await.unwrap(),
        pairs(&[
            ("alice@example.com", 3_000),
            ("alice@example.com", 3_000),
            ("alice@example.com", 3_000),
            ("bob@example.com", 2_500),
        ])
    );
    assert_eq!(
        store.usage_all_since(2_500).await.unwrap(),
        pairs(&[
            ("alice@example.com", 3_000),
            ("alice@example.com", 3_000),
            ("alice@example.com", 3_000),
        ])
    );
    assert!(store.usage_all_since(3_000).await.unwrap().is_empty());

    // A refused enqueue records neither the message nor its usage.
    let queue = store.list_queue().await.unwrap();
    let mut no_auth = message_with_usage("V1", "alice@example.com", &["x@example.net"], &[9_000]);
    no_auth.auth_user = None;
    assert_invalid(store.enqueue(&no_auth).await, "usage without auth user");
    let mut bad_rcpt = message_with_usage(
        "V2",
        "alice@example.com",
        &["x@example.net", "not-an-address"],
        &[9_000, 9_001],
    );
    assert_invalid(store.enqueue(&bad_rcpt).await, "bad recipient");
    bad_rcpt.recipients = vec![];
    assert_invalid(store.enqueue(&bad_rcpt).await, "no recipients");
    let mut bad_auth = message_with_usage("V3", "alice@example.com", &["x@example.net"], &[9_000]);
    bad_auth.auth_user = Some("not an address".into());
    assert_invalid(store.enqueue(&bad_auth).await, "bad auth user");
    let mut huge = message_with_usage("V4", "alice@example.com", &["x@example.net"], &[9_000]);
    huge.size = u64::MAX;
    assert_invalid(store.enqueue(&huge).await, "size beyond i64");
    // A duplicate id is refused inside the transaction; its usage is rolled back.
    assert_exists(
        store
            .enqueue(&message_with_usage(
                "U1",
                "alice@example.com",
                &["x@example.net"],
                &[9_000],
            ))
            .await,
        "U1",
    );
    assert_eq!(all_usage(&store).await, everything);
    assert_eq!(store.list_queue().await.unwrap(), queue);

    // prune_usage deletes events at or before the cutoff, and nothing else.
    assert_eq!(store.prune_usage(-6).await.unwrap(), 0);
    assert_eq!(store.prune_usage(1_999).await.unwrap(), 2);
    assert_eq!(
        all_usage(&store).await,
        pairs(&[
            ("alice@example.com", 2_000),
            ("alice@example.com", 3_000),
            ("alice@example.com", 3_000),
            ("alice@example.com", 3_000),
            ("bob@example.com", 2_500),
        ])
    );
    assert_eq!(store.prune_usage(2_000).await.unwrap(), 1);
    assert_eq!(store.prune_usage(2_000).await.unwrap(), 0);
    assert_eq!(store.prune_usage(3_000).await.unwrap(), 4);
    assert!(all_usage(&store).await.is_empty());
    assert_eq!(
        store.list_queue().await.unwrap(),
        queue,
        "pruning usage leaves the queue alone"
    );
    assert_eq!(store.list_accounts().await.unwrap().len(), 2);
}

/// remove_account deletes the account's usage, and only that.
pub async fn suite_remove_account_usage(store: Arc<dyn Store>) {
    let h = hash("pw");
    store
        .add_account("judy@example.com", &h, "basic")
        .await
        .unwrap();
    store
        .add_account("karl@example.com", &h, "basic")
        .await
        .unwrap();
    for (id, user, at) in [
        ("W1", "judy@example.com", 10),
        ("W2", "karl@example.com", 20),
        ("W3", "judy@example.com", 30),
        ("W4", "nobody@example.com", 40),
    ] {
        store
            .enqueue(&message_with_usage(id, user, &["x@example.net"], &[at]))
            .await
            .unwrap();
    }

    store.remove_account("JUDY@example.com").await.unwrap();
    assert!(
        store
            .usage_since("judy@example.com", i64::MIN)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        all_usage(&store).await,
        pairs(&[("karl@example.com", 20), ("nobody@example.com", 40)])
    );
    // Queued messages are not usage: they stay.
    assert_eq!(store.list_queue().await.unwrap().len(), 4);

    // Re-creating the account does not bring its old usage back.
    store
        .add_account("judy@example.com", &h, "basic")
        .await
        .unwrap();
    assert!(
        store
            .usage_since("judy@example.com", i64::MIN)
            .await
            .unwrap()
            .is_empty()
    );

    // A refused removal changes nothing.
    assert_not_found(
        store.remove_account("nobody@example.com").await,
        "nobody@example.com",
    );
    assert_eq!(
        store.usage_since("nobody@example.com", 0).await.unwrap(),
        [40]
    );
    assert_eq!(
        store.usage_since("karl@example.com", 0).await.unwrap(),
        [20]
    );
}

// ---------------------------------------------------------------------------
// Account security (schema version 3)
// ---------------------------------------------------------------------------

/// A fake SHA-256 digest: 32 bytes of `byte`.
pub fn digest(byte: u8) -> Vec<u8> {
    vec![byte; 32]
}

pub fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// An auth event with the given time, user, IP and outcome.
pub fn auth_event(at_ms: i64, user: &str, ip: &str, success: bool, reason: &str) -> AuthEvent {
    AuthEvent {
        at_ms,
        session_id: format!("S{at_ms}"),
        listener: "submission".to_owned(),
        client_ip: ip.to_owned(),
        tls: Some("TLSv1.3".to_owned()),
        user: user.to_owned(),
        mechanism: "PLAIN".to_owned(),
        credential: success.then(|| "password".to_owned()),
        success,
        reason: reason.to_owned(),
    }
}

/// The `at_ms` of each event, in the order given.
pub fn times(events: &[AuthEvent]) -> Vec<i64> {
    events.iter().map(|e| e.at_ms).collect()
}

/// add/list/revoke/secrets/touch of app passwords: normalisation, errors,
/// ordering, and listing never exposing digests.
pub async fn suite_app_passwords(store: Arc<dyn Store>) {
    let h = hash("pw");
    store
        .add_account("lena@example.com", &h, "basic")
        .await
        .unwrap();
    let before = now();
    store
        .add_app_password(
            " LENA@Example.com ",
            " phone ",
            &digest(1),
            None,
            &strings(&[" 192.0.2.0/24 ", "2001:db8::/32", "192.0.2.0/24"]),
        )
        .await
        .unwrap();
    store
        .add_app_password(
            "lena@example.com",
            "Laptop.Work_2-x",
            &digest(2),
            Some(1_900_000_000),
            &[],
        )
        .await
        .unwrap();

    let list = store.list_app_passwords("Lena@EXAMPLE.com").await.unwrap();
    let names: Vec<&str> = list.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["Laptop.Work_2-x", "phone"], "ordered by name");
    let phone = &list[1];
    assert_eq!(phone.account, "lena@example.com");
    assert!(phone.created_at >= before && phone.created_at <= now());
    assert_eq!(phone.last_used_at, None);
    assert_eq!(phone.last_used_ip, None);
    assert_eq!(phone.expires_at, None);
    assert_eq!(
        phone.allowed_ips,
        ["192.0.2.0/24", "2001:db8::/32"],
        "trimmed, order kept, duplicates dropped"
    );
    assert_eq!(list[0].expires_at, Some(1_900_000_000));
    assert!(list[0].allowed_ips.is_empty());
    // The listed type has no digest field at all; its Debug output does not
    // carry the digest bytes either.
    let shown = format!("{list:?}");
    assert!(!shown.contains("[1, 1, 1"), "{shown}");

    let secrets = store
        .app_password_secrets("LENA@example.com")
        .await
        .unwrap();
    assert_eq!(secrets.len(), 2);
    assert_eq!(secrets[0].name, "Laptop.Work_2-x");
    assert_eq!(secrets[0].digest, digest(2));
    assert_eq!(secrets[0].expires_at, Some(1_900_000_000));
    assert_eq!(secrets[1].name, "phone");
    assert_eq!(secrets[1].digest, digest(1));
    assert_eq!(secrets[1].allowed_ips, ["192.0.2.0/24", "2001:db8::/32"]);
    let shown = format!("{secrets:?}");
    assert!(
        !shown.contains("[1, 1, 1"),
        "secrets' Debug shows the digest: {shown}"
    );

    // Unknown or malformed accounts have none.
    assert!(
        store
            .app_password_secrets("nobody@example.com")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .app_password_secrets("garbage")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .list_app_passwords("nobody@example.com")
            .await
            .unwrap()
            .is_empty()
    );

    // Errors.
    assert_exists(
        store
            .add_app_password("lena@example.com", "phone", &digest(3), None, &[])
            .await,
        "phone",
    );
    assert_exists(
        store
            .add_app_password("lena@example.com", "PHONE", &digest(3), None, &[])
            .await,
        "PHONE",
    );
    assert_not_found(
        store
            .add_app_password("nobody@example.com", "phone", &digest(3), None, &[])
            .await,
        "nobody@example.com",
    );
    for bad in [
        "",
        "  ",
        "my phone",
        "phone!",
        "tél",
        "a/b",
        &"x".repeat(65),
    ] {
        assert_invalid(
            store
                .add_app_password("lena@example.com", bad, &digest(3), None, &[])
                .await,
            &format!("name {bad:?}"),
        );
    }
    assert!(
        store
            .add_app_password("lena@example.com", &"x".repeat(64), &digest(3), None, &[])
            .await
            .is_ok()
    );
    store
        .revoke_app_password("lena@example.com", &"x".repeat(64))
        .await
        .unwrap();
    for bad in [vec![], vec![0_u8; 31], vec![0_u8; 33], vec![0_u8; 64]] {
        assert_invalid(
            store
                .add_app_password("lena@example.com", "tablet", &bad, None, &[])
                .await,
            &format!("digest of {} bytes", bad.len()),
        );
    }
    for bad in [
        strings(&[""]),
        strings(&["  "]),
        strings(&["192.0.2.0/24\u{0}"]),
        strings(&["192.0.2.0/\u{7}24"]),
        strings(&["192.0.2.0 /24"]),
        vec!["1".repeat(65)],
    ] {
        assert_invalid(
            store
                .add_app_password("lena@example.com", "tablet", &digest(3), None, &bad)
                .await,
            &format!("allowed IPs {bad:?}"),
        );
    }
    assert_invalid(
        store
            .add_app_password("bad address", "tablet", &digest(3), None, &[])
            .await,
        "account",
    );
    assert_eq!(
        store.list_app_passwords("lena@example.com").await.unwrap(),
        list,
        "refused adds change nothing"
    );

    // touch records the last use.
    store
        .touch_app_password("Lena@example.com", "PHONE", 1_800_000_000, "192.0.2.9")
        .await
        .unwrap();
    let list = store.list_app_passwords("lena@example.com").await.unwrap();
    assert_eq!(list[1].last_used_at, Some(1_800_000_000));
    assert_eq!(list[1].last_used_ip.as_deref(), Some("192.0.2.9"));
    assert_eq!(list[0].last_used_at, None, "only the named one");
    store
        .touch_app_password("lena@example.com", "phone", 1_800_000_100, "2001:db8::7")
        .await
        .unwrap();
    let list = store.list_app_passwords("lena@example.com").await.unwrap();
    assert_eq!(list[1].last_used_at, Some(1_800_000_100));
    assert_eq!(list[1].last_used_ip.as_deref(), Some("2001:db8::7"));
    assert_not_found(
        store
            .touch_app_password("lena@example.com", "tablet", 1, "192.0.2.9")
            .await,
        "tablet",
    );
    for bad in ["", "192.0.2.9\r\n1", "a\u{0}b", &"1".repeat(65)] {
        assert_invalid(
            store
                .touch_app_password("lena@example.com", "phone", 1, bad)
                .await,
            &format!("client IP {bad:?}"),
        );
    }
    assert_eq!(
        store.list_app_passwords("lena@example.com").await.unwrap()[1].last_used_at,
        Some(1_800_000_100),
        "refused touches change nothing"
    );

    // revoke.
    assert_not_found(
        store
            .revoke_app_password("lena@example.com", "tablet")
            .await,
        "tablet",
    );
    assert_not_found(
        store
            .revoke_app_password("nobody@example.com", "phone")
            .await,
        "nobody@example.com",
    );
    assert_invalid(
        store
            .revoke_app_password("lena@example.com", "bad name")
            .await,
        "revoke name",
    );
    store
        .revoke_app_password(" LENA@example.com", "Phone")
        .await
        .unwrap();
    let names: Vec<String> = store
        .list_app_passwords("lena@example.com")
        .await
        .unwrap()
        .into_iter()
        .map(|p: AppPassword| p.name)
        .collect();
    assert_eq!(names, ["Laptop.Work_2-x"]);
    assert_eq!(
        store
            .app_password_secrets("lena@example.com")
            .await
            .unwrap()
            .len(),
        1
    );
    // A revoked name can be used again.
    store
        .add_app_password("lena@example.com", "phone", &digest(4), None, &[])
        .await
        .unwrap();
    let secrets = store
        .app_password_secrets("lena@example.com")
        .await
        .unwrap();
    assert_eq!(secrets[1].digest, digest(4));
}

/// account_security and its setters: defaults, TOTP, IP allowlists, granted
/// senders, password_changed_at.
pub async fn suite_account_security(store: Arc<dyn Store>) {
    let h = hash("pw");
    let before = now();
    store
        .add_account("mona@example.com", &h, "basic")
        .await
        .unwrap();
    let security = store
        .account_security(" MONA@example.com ")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(security.totp_secret, None, "2FA is off by default");
    assert!(security.allowed_ips.is_empty());
    assert!(security.allowed_senders.is_empty());
    assert!(security.password_changed_at >= before && security.password_changed_at <= now());
    assert_eq!(
        store.account_security("nobody@example.com").await.unwrap(),
        None
    );
    for bad in BAD_ADDRESSES {
        assert_eq!(store.account_security(bad).await.unwrap(), None, "{bad:?}");
    }

    // set_password_hash moves password_changed_at (seconds: wait for the
    // next one so the change is visible).
    let first = security.password_changed_at;
    while now() <= first {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    store
        .set_password_hash("mona@example.com", &h)
        .await
        .unwrap();
    let changed = store
        .account_security("mona@example.com")
        .await
        .unwrap()
        .unwrap()
        .password_changed_at;
    assert!(changed > first && changed <= now());
    // Other changes leave it alone.
    store
        .set_account_plan("mona@example.com", "pro")
        .await
        .unwrap();
    store
        .set_account_status("mona@example.com", AccountStatus::Disabled)
        .await
        .unwrap();

    // TOTP.
    store
        .set_totp_secret("Mona@Example.com", Some(" JBSWY3DPEHPK3PXP "))
        .await
        .unwrap();
    let security = store
        .account_security("mona@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(security.totp_secret.as_deref(), Some("JBSWY3DPEHPK3PXP"));
    assert_eq!(security.password_changed_at, changed);
    assert!(
        !format!("{security:?}").contains("JBSWY3DPEHPK3PXP"),
        "Debug shows the TOTP secret"
    );
    for bad in [
        "",
        "   ",
        "JBSWY3DP EHPK3PXP",
        "JBSWY3DPEHPK3PX1",
        "JBSW\u{0}Y3DP",
    ] {
        match store.set_totp_secret("mona@example.com", Some(bad)).await {
            Err(StoreError::Invalid(msg)) => {
                assert!(
                    bad.trim().len() < 4 || !msg.contains(bad.trim()),
                    "error echoes the secret: {msg}"
                );
            }
            other => panic!("TOTP secret {bad:?}: expected Invalid, got {other:?}"),
        }
    }
    assert_invalid(
        store
            .set_totp_secret("mona@example.com", Some(&"A".repeat(257)))
            .await,
        "long TOTP secret",
    );
    assert_not_found(
        store
            .set_totp_secret("nobody@example.com", Some("JBSWY3DPEHPK3PXP"))
            .await,
        "nobody@example.com",
    );
    assert_eq!(
        store
            .account_security("mona@example.com")
            .await
            .unwrap()
            .unwrap()
            .totp_secret
            .as_deref(),
        Some("JBSWY3DPEHPK3PXP"),
        "refused changes keep the secret"
    );
    store
        .set_totp_secret("mona@example.com", None)
        .await
        .unwrap();
    assert_eq!(
        store
            .account_security("mona@example.com")
            .await
            .unwrap()
            .unwrap()
            .totp_secret,
        None
    );

    // IP allowlist: replaced as a whole.
    store
        .set_allowed_ips(
            "mona@example.com",
            &strings(&["192.0.2.0/24", " 2001:db8::/48 "]),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .account_security("mona@example.com")
            .await
            .unwrap()
            .unwrap()
            .allowed_ips,
        ["192.0.2.0/24", "2001:db8::/48"]
    );
    store
        .set_allowed_ips("mona@example.com", &strings(&["198.51.100.7"]))
        .await
        .unwrap();
    assert_eq!(
        store
            .account_security("mona@example.com")
            .await
            .unwrap()
            .unwrap()
            .allowed_ips,
        ["198.51.100.7"]
    );
    for bad in [
        strings(&["198.51.100.7", ""]),
        strings(&["198.51.100.7\n192.0.2.1"]),
        vec!["9".repeat(65)],
    ] {
        assert_invalid(
            store.set_allowed_ips("mona@example.com", &bad).await,
            &format!("{bad:?}"),
        );
    }
    assert_not_found(
        store
            .set_allowed_ips("nobody@example.com", &strings(&["192.0.2.1"]))
            .await,
        "nobody@example.com",
    );
    assert_eq!(
        store
            .account_security("mona@example.com")
            .await
            .unwrap()
            .unwrap()
            .allowed_ips,
        ["198.51.100.7"],
        "refused changes keep the list"
    );
    store
        .set_allowed_ips("mona@example.com", &[])
        .await
        .unwrap();
    assert!(
        store
            .account_security("mona@example.com")
            .await
            .unwrap()
            .unwrap()
            .allowed_ips
            .is_empty()
    );

    // Granted senders.
    store
        .add_allowed_sender("mona@example.com", " Sales@Example.COM ")
        .await
        .unwrap();
    store
        .add_allowed_sender("MONA@example.com", "@Example.ORG")
        .await
        .unwrap();
    store
        .add_allowed_sender("mona@example.com", "info@[192.0.2.1]")
        .await
        .unwrap();
    assert_eq!(
        store
            .account_security("mona@example.com")
            .await
            .unwrap()
            .unwrap()
            .allowed_senders,
        ["@example.org", "info@[192.0.2.1]", "sales@example.com"],
        "normalised and sorted"
    );
    assert_exists(
        store
            .add_allowed_sender("mona@example.com", "SALES@example.com")
            .await,
        "sales@example.com",
    );
    assert_exists(
        store
            .add_allowed_sender("mona@example.com", "@example.org")
            .await,
        "@example.org",
    );
    for bad in [
        "",
        "@",
        "sales",
        "@exa mple.org",
        "@-bad.example",
        "@[192.0.2.1]",
        "a@b@example.com",
        "sa les@example.com",
        "sales@",
    ] {
        assert_invalid(
            store.add_allowed_sender("mona@example.com", bad).await,
            &format!("sender {bad:?}"),
        );
    }
    assert_not_found(
        store
            .add_allowed_sender("nobody@example.com", "x@example.com")
            .await,
        "nobody@example.com",
    );
    store
        .remove_allowed_sender("mona@example.com", "Sales@example.com ")
        .await
        .unwrap();
    assert_not_found(
        store
            .remove_allowed_sender("mona@example.com", "sales@example.com")
            .await,
        "sales@example.com",
    );
    assert_not_found(
        store
            .remove_allowed_sender("mona@example.com", "@EXAMPLE.net")
            .await,
        "@example.net",
    );
    assert_not_found(
        store
            .remove_allowed_sender("nobody@example.com", "@example.org")
            .await,
        "nobody@example.com",
    );
    assert_invalid(
        store.remove_allowed_sender("mona@example.com", "@").await,
        "remove malformed sender",
    );
    let security = store
        .account_security("mona@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        security.allowed_senders,
        ["@example.org", "info@[192.0.2.1]"]
    );
    assert_eq!(security.password_changed_at, changed);

    // Senders are per account.
    store
        .add_account("nina@example.com", &h, "basic")
        .await
        .unwrap();
    store
        .add_allowed_sender("nina@example.com", "@example.org")
        .await
        .unwrap();
    assert_eq!(
        store
            .account_security("nina@example.com")
            .await
            .unwrap()
            .unwrap()
            .allowed_senders,
        ["@example.org"]
    );
}

/// A batch bigger than one INSERT statement's rows (the SQLite store sends
/// 100 rows a statement): every event is recorded, in order, field by field.
pub async fn suite_auth_events_big_batch(store: Arc<dyn Store>) {
    let events: Vec<AuthEvent> = (0..250)
        .map(|i| {
            let mut e = auth_event(
                10_000 + i / 2,
                &format!("user{i}@example.com"),
                "192.0.2.1",
                i % 3 == 0,
                "ok",
            );
            e.credential = (i % 2 == 0).then(|| format!("app:{i}"));
            e
        })
        .collect();
    store.record_auth_events(&events).await.unwrap();
    let all = store
        .auth_events(&AuthEventFilter::default())
        .await
        .unwrap();
    // Newest first; within a millisecond the later recorded first.
    let expected: Vec<AuthEvent> = events.iter().rev().cloned().collect();
    assert_eq!(all, expected);
}

/// record_auth_events / auth_events / prune_auth_events: filters, order,
/// limits, stored-as-given user, pruning.
pub async fn suite_auth_events(store: Arc<dyn Store>) {
    assert!(
        store
            .auth_events(&AuthEventFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    store.record_auth_events(&[]).await.unwrap();

    let mut unknown = auth_event(
        1_000,
        "Nobody@Example.com",
        "192.0.2.66",
        false,
        "unknown_user",
    );
    unknown.tls = None;
    unknown.mechanism = "LOGIN".to_owned();
    let mut app = auth_event(4_000, "olga@example.com", "2001:db8::5", true, "ok");
    app.credential = Some("app:phone".to_owned());
    let events = [
        unknown.clone(),
        auth_event(
            2_000,
            "olga@example.com",
            "192.0.2.66",
            false,
            "bad_password",
        ),
        auth_event(3_000, "OLGA@example.com", "192.0.2.10", true, "ok"),
        app.clone(),
        // Same millisecond as the previous: recorded later, listed first.
        auth_event(
            4_000,
            "olga@example.com",
            "192.0.2.66",
            false,
            "ip_not_allowed",
        ),
    ];
    store.record_auth_events(&events[..2]).await.unwrap();
    store.record_auth_events(&events[2..]).await.unwrap();

    let all = store
        .auth_events(&AuthEventFilter::default())
        .await
        .unwrap();
    assert_eq!(
        times(&all),
        [4_000, 4_000, 3_000, 2_000, 1_000],
        "newest first"
    );
    assert_eq!(all[0], events[4]);
    assert_eq!(all[1], app);
    assert_eq!(all[4], unknown, "stored as given, round trip");
    assert_eq!(all[4].user, "Nobody@Example.com");

    // By user (case-insensitive, trimmed filter).
    let olga = store
        .auth_events(&AuthEventFilter {
            user: Some(" Olga@EXAMPLE.com ".to_owned()),
            ..AuthEventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(times(&olga), [4_000, 4_000, 3_000, 2_000]);
    // By IP.
    let ip = store
        .auth_events(&AuthEventFilter {
            ip: Some("192.0.2.66".to_owned()),
            ..AuthEventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(times(&ip), [4_000, 2_000, 1_000]);
    assert!(ip.iter().all(|e| e.client_ip == "192.0.2.66"));
    // Failed only.
    let failed = store
        .auth_events(&AuthEventFilter {
            failed_only: true,
            ..AuthEventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        failed.iter().map(|e| e.reason.as_str()).collect::<Vec<_>>(),
        ["ip_not_allowed", "bad_password", "unknown_user"]
    );
    // Since (inclusive).
    let since = store
        .auth_events(&AuthEventFilter {
            since_ms: Some(3_000),
            ..AuthEventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(times(&since), [4_000, 4_000, 3_000]);
    // Limit keeps the newest.
    let limited = store
        .auth_events(&AuthEventFilter {
            limit: Some(2),
            ..AuthEventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(limited, all[..2]);
    let none = store
        .auth_events(&AuthEventFilter {
            limit: Some(0),
            ..AuthEventFilter::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
    let huge = store
        .auth_events(&AuthEventFilter {
            limit: Some(usize::MAX),
            ..AuthEventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(huge, all);
    // Combined.
    let combined = store
        .auth_events(&AuthEventFilter {
            user: Some("olga@example.com".to_owned()),
            ip: Some("192.0.2.66".to_owned()),
            failed_only: true,
            since_ms: Some(1_500),
            limit: Some(1),
        })
        .await
        .unwrap();
    assert_eq!(combined, [events[4].clone()]);
    let nothing = store
        .auth_events(&AuthEventFilter {
            user: Some("nobody@example.com".to_owned()),
            ip: Some("192.0.2.10".to_owned()),
            ..AuthEventFilter::default()
        })
        .await
        .unwrap();
    assert!(nothing.is_empty());

    // Garbage claimed users are stored (cut to 255 characters).
    let mut garbage = auth_event(5_000, &"é".repeat(300), "192.0.2.99", false, "unknown_user");
    garbage.mechanism = "X".repeat(1_000);
    store
        .record_auth_events(std::slice::from_ref(&garbage))
        .await
        .unwrap();
    let latest = store
        .auth_events(&AuthEventFilter {
            limit: Some(1),
            ..AuthEventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(latest[0].user, "é".repeat(255));
    assert_eq!(latest[0].mechanism, "X".repeat(255));
    let odd = auth_event(5_001, "a b\tc\u{0}", "192.0.2.99", false, "unknown_user");
    store
        .record_auth_events(std::slice::from_ref(&odd))
        .await
        .unwrap();
    let latest = store
        .auth_events(&AuthEventFilter {
            limit: Some(1),
            ..AuthEventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(latest, [odd]);

    // Pruning: at or before the cutoff.
    assert_eq!(store.prune_auth_events(2_000).await.unwrap(), 2);
    assert_eq!(store.prune_auth_events(2_000).await.unwrap(), 0);
    let left = store
        .auth_events(&AuthEventFilter::default())
        .await
        .unwrap();
    assert_eq!(times(&left), [5_001, 5_000, 4_000, 4_000, 3_000]);
    assert_eq!(store.prune_auth_events(i64::MAX).await.unwrap(), 5);
    assert!(
        store
            .auth_events(&AuthEventFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
}

/// upsert_ban / list_bans / remove_ban: normalisation, upsert, activity.
pub async fn suite_bans(store: Arc<dyn Store>) {
    assert!(store.list_bans(0).await.unwrap().is_empty());
    let ban = Ban {
        network: " 192.0.2.77/24 ".to_owned(),
        until_ms: 10_000,
        reason: "too many authentication failures".to_owned(),
        created_ms: 1_000,
        strikes: 1,
    };
    store.upsert_ban(&ban).await.unwrap();
    store
        .upsert_ban(&Ban {
            network: "2001:DB8:0:0:1::5/64".to_owned(),
            until_ms: 20_000,
            reason: "manual".to_owned(),
            created_ms: 2_000,
            strikes: 0,
        })
        .await
        .unwrap();
    store
        .upsert_ban(&Ban {
            network: "198.51.100.9/32".to_owned(),
            until_ms: 5_000,
            reason: String::new(),
            created_ms: 2_000,
            strikes: 2,
        })
        .await
        .unwrap();

    let bans = store.list_bans(0).await.unwrap();
    let networks: Vec<&str> = bans.iter().map(|b| b.network.as_str()).collect();
    assert_eq!(
        networks,
        ["192.0.2.0/24", "198.51.100.9", "2001:db8::/64"],
        "normalised and sorted"
    );
    assert_eq!(
        bans[0],
        Ban {
            network: "192.0.2.0/24".to_owned(),
            ..ban.clone()
        }
    );
    assert_eq!(bans[1].strikes, 2);

    // Active means until_ms > now_ms.
    let networks =
        |bans: Vec<Ban>| -> Vec<String> { bans.into_iter().map(|b| b.network).collect() };
    assert_eq!(
        networks(store.list_bans(5_000).await.unwrap()),
        ["192.0.2.0/24", "2001:db8::/64"]
    );
    assert_eq!(
        networks(store.list_bans(10_000).await.unwrap()),
        ["2001:db8::/64"]
    );
    assert!(store.list_bans(20_000).await.unwrap().is_empty());

    // Upsert by (normalised) network replaces every field.
    store
        .upsert_ban(&Ban {
            network: "192.0.2.0/24".to_owned(),
            until_ms: 50_000,
            reason: "repeat".to_owned(),
            created_ms: 30_000,
            strikes: 2,
        })
        .await
        .unwrap();
    let bans = store.list_bans(20_000).await.unwrap();
    assert_eq!(
        bans,
        [Ban {
            network: "192.0.2.0/24".to_owned(),
            until_ms: 50_000,
            reason: "repeat".to_owned(),
            created_ms: 30_000,
            strikes: 2,
        }]
    );
    // An expired ban can be renewed too.
    store
        .upsert_ban(&Ban {
            network: "198.51.100.9".to_owned(),
            until_ms: 60_000,
            reason: "again".to_owned(),
            created_ms: 40_000,
            strikes: u32::MAX,
        })
        .await
        .unwrap();
    let bans = store.list_bans(20_000).await.unwrap();
    assert_eq!(bans.len(), 2);
    assert_eq!(bans[1].network, "198.51.100.9");
    assert_eq!(bans[1].strikes, u32::MAX);

    // Invalid input.
    for bad in [
        "",
        "example.com",
        "192.0.2.1/33",
        "192.0.2.1/",
        "192.0.2.1/+8",
        "2001:db8::/129",
        "192.0.2.256",
        "192.0.2.1/24/8",
        "fe80::1%eth0",
    ] {
        assert_invalid(
            store
                .upsert_ban(&Ban {
                    network: bad.to_owned(),
                    ..ban.clone()
                })
                .await,
            &format!("network {bad:?}"),
        );
    }
    assert_invalid(
        store
            .upsert_ban(&Ban {
                reason: "a\nb".to_owned(),
                ..ban.clone()
            })
            .await,
        "reason with a newline",
    );
    assert_invalid(
        store
            .upsert_ban(&Ban {
                reason: "r".repeat(256),
                ..ban.clone()
            })
            .await,
        "long reason",
    );

    // Remove: normalised, expired ones too, NotFound naming the network.
    store.remove_ban("192.0.2.200/24").await.unwrap();
    assert_not_found(store.remove_ban("192.0.2.0/24").await, "192.0.2.0/24");
    assert_not_found(store.remove_ban("203.0.113.1/32").await, "203.0.113.1");
    store.remove_ban("2001:db8:0::/64").await.unwrap();
    assert_invalid(store.remove_ban("nonsense").await, "remove nonsense");
    assert_eq!(
        networks(store.list_bans(i64::MIN).await.unwrap()),
        ["198.51.100.9"]
    );
    store.remove_ban("198.51.100.9").await.unwrap();
    assert!(store.list_bans(i64::MIN).await.unwrap().is_empty());
}

/// remove_account deletes the account's app passwords and granted senders,
/// and only those; auth events and bans stay.
pub async fn suite_remove_account_security(store: Arc<dyn Store>) {
    let h = hash("pw");
    for who in ["pia@example.com", "quinn@example.com"] {
        store.add_account(who, &h, "basic").await.unwrap();
        store
            .add_app_password(who, "phone", &digest(9), None, &[])
            .await
            .unwrap();
        store.add_allowed_sender(who, "@example.org").await.unwrap();
        store
            .set_totp_secret(who, Some("JBSWY3DPEHPK3PXP"))
            .await
            .unwrap();
        store
            .set_allowed_ips(who, &strings(&["192.0.2.0/24"]))
            .await
            .unwrap();
    }
    store
        .record_auth_events(&[auth_event(1, "pia@example.com", "192.0.2.1", true, "ok")])
        .await
        .unwrap();
    store
        .upsert_ban(&Ban {
            network: "203.0.113.0/24".to_owned(),
            until_ms: i64::MAX,
            reason: String::new(),
            created_ms: 0,
            strikes: 1,
        })
        .await
        .unwrap();

    store.remove_account("PIA@example.com").await.unwrap();
    assert_eq!(
        store.account_security("pia@example.com").await.unwrap(),
        None
    );
    assert!(
        store
            .list_app_passwords("pia@example.com")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .app_password_secrets("pia@example.com")
            .await
            .unwrap()
            .is_empty()
    );
    // The other account keeps everything.
    assert_eq!(
        store
            .app_password_secrets("quinn@example.com")
            .await
            .unwrap()
            .len(),
        1
    );
    let quinn = store
        .account_security("quinn@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(quinn.allowed_senders, ["@example.org"]);
    assert_eq!(quinn.allowed_ips, ["192.0.2.0/24"]);
    assert!(quinn.totp_secret.is_some());
    // The audit and bans are not the account's.
    assert_eq!(
        store
            .auth_events(&AuthEventFilter::default())
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.list_bans(0).await.unwrap().len(), 1);

    // Re-creating the account starts clean.
    store
        .add_account("pia@example.com", &h, "basic")
        .await
        .unwrap();
    let pia = store
        .account_security("pia@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pia.totp_secret, None);
    assert!(pia.allowed_ips.is_empty());
    assert!(pia.allowed_senders.is_empty());
    assert!(
        store
            .list_app_passwords("pia@example.com")
            .await
            .unwrap()
            .is_empty()
    );
    store
        .add_app_password("pia@example.com", "phone", &digest(1), None, &[])
        .await
        .unwrap();
}

/// Two handles (server and admin CLI) see each other's security writes.
pub async fn suite_shared_security(server: Arc<dyn Store>, cli: Arc<dyn Store>) {
    let h = hash("pw");
    cli.add_account("rita@example.com", &h, "basic")
        .await
        .unwrap();
    cli.add_app_password(
        "rita@example.com",
        "phone",
        &digest(5),
        Some(2_000_000_000),
        &strings(&["192.0.2.0/24"]),
    )
    .await
    .unwrap();
    let secrets = server
        .app_password_secrets("rita@example.com")
        .await
        .unwrap();
    assert_eq!(secrets.len(), 1);
    assert_eq!(secrets[0].digest, digest(5));
    server
        .touch_app_password("rita@example.com", "phone", 1_800_000_000, "192.0.2.3")
        .await
        .unwrap();
    let listed = cli.list_app_passwords("rita@example.com").await.unwrap();
    assert_eq!(listed[0].last_used_ip.as_deref(), Some("192.0.2.3"));

    cli.set_totp_secret("rita@example.com", Some("JBSWY3DPEHPK3PXP"))
        .await
        .unwrap();
    cli.set_allowed_ips("rita@example.com", &strings(&["2001:db8::/32"]))
        .await
        .unwrap();
    cli.add_allowed_sender("rita@example.com", "@example.org")
        .await
        .unwrap();
    let security = server
        .account_security("rita@example.com")
        .await
        .unwrap()
        .unwrap();
    assert!(security.totp_secret.is_some());
    assert_eq!(security.allowed_ips, ["2001:db8::/32"]);
    assert_eq!(security.allowed_senders, ["@example.org"]);

    server
        .record_auth_events(&[
            auth_event(10, "rita@example.com", "192.0.2.3", true, "ok"),
            auth_event(11, "rita@example.com", "192.0.2.4", false, "bad_password"),
        ])
        .await
        .unwrap();
    let events = cli
        .auth_events(&AuthEventFilter {
            user: Some("rita@example.com".to_owned()),
            ..AuthEventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(times(&events), [11, 10]);
    assert_eq!(cli.prune_auth_events(10).await.unwrap(), 1);
    assert_eq!(
        times(
            &server
                .auth_events(&AuthEventFilter::default())
                .await
                .unwrap()
        ),
        [11]
    );

    server
        .upsert_ban(&Ban {
            network: "192.0.2.4".to_owned(),
            until_ms: 100,
            reason: "brute force".to_owned(),
            created_ms: 1,
            strikes: 1,
        })
        .await
        .unwrap();
    assert_eq!(cli.list_bans(0).await.unwrap().len(), 1);
    cli.remove_ban("192.0.2.4/32").await.unwrap();
    assert!(server.list_bans(0).await.unwrap().is_empty());

    cli.revoke_app_password("rita@example.com", "phone")
        .await
        .unwrap();
    assert!(
        server
            .app_password_secrets("rita@example.com")
            .await
            .unwrap()
            .is_empty()
    );
    assert_not_found(
        server
            .touch_app_password("rita@example.com", "phone", 1, "192.0.2.3")
            .await,
        "phone",
    );
}

/// Two messages of one account counted in the same millisecond (concurrent
/// sessions) both count: no usage is lost to storage grouping.
pub async fn suite_usage_same_millisecond(store: Arc<dyn Store>) {
    let h = hash("pw");
    store
        .add_account("carol@example.com", &h, "basic")
        .await
        .unwrap();
    for id in ["S1", "S2"] {
        store
            .enqueue(&message_with_usage(
                id,
                "carol@example.com",
                &["a@example.net", "b@example.net"],
                &[7_000, 7_000],
            ))
            .await
            .unwrap();
    }
    assert_eq!(
        store.usage_since("carol@example.com", 0).await.unwrap(),
        vec![7_000; 4]
    );
    assert_eq!(store.prune_usage(7_000).await.unwrap(), 4);
    assert!(
        store
            .usage_since("carol@example.com", 0)
            .await
            .unwrap()
            .is_empty()
    );
}

// ---------------------------------------------------------------------------
// Delivery (schema version 5)
// ---------------------------------------------------------------------------

/// An attempt result for recipient `position` of message `id`.
pub fn outcome(
    id: &str,
    position: i64,
    status: DeliveryStatus,
    next_attempt_ms: i64,
    reply: &str,
) -> RecipientOutcome {
    RecipientOutcome {
        message_id: id.to_owned(),
        position,
        status,
        next_attempt_ms,
        reply: reply.to_owned(),
        host: Some("mx.example.net".to_owned()),
        warned: false,
        new_address: None,
    }
}

/// The status of each recipient of message `id`, in RCPT order.
pub async fn statuses(store: &Arc<dyn Store>, id: &str) -> Vec<DeliveryStatus> {
    entry(store, id)
        .await
        .recipients
        .iter()
        .map(|r| r.status)
        .collect()
}

pub async fn entry(store: &Arc<dyn Store>, id: &str) -> QueueEntry {
    store
        .queue_entry(id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("message {id} should be queued"))
}

/// `(message, domain, [positions])` of claimed jobs, sorted.
pub fn job_keys(jobs: &[portcullis_store::DeliveryJob]) -> Vec<(String, String, Vec<i64>)> {
    let mut keys: Vec<_> = jobs
        .iter()
        .map(|j| {
            (
                j.message_id.clone(),
                j.domain.clone(),
                j.recipients.iter().map(|r| r.position).collect::<Vec<_>>(),
            )
        })
        .collect();
    keys.sort();
    keys
}

fn key(id: &str, domain: &str, positions: &[i64]) -> (String, String, Vec<i64>) {
    (id.to_owned(), domain.to_owned(), positions.to_vec())
}

pub fn ids_of(entries: Vec<QueueEntry>) -> Vec<String> {
    entries.into_iter().map(|e| e.id).collect()
}

/// enqueue starts every recipient queued and due; claim_due marks the due
/// ones in flight and groups them by (message, domain); it honours
/// `next_attempt_ms` (earliest first) and `limit`; next_due_ms follows.
pub async fn suite_claim_due(store: Arc<dyn Store>) {
    assert!(store.claim_due(i64::MAX, 100).await.unwrap().is_empty());
    assert_eq!(store.next_due_ms().await.unwrap(), None);

    store
        .enqueue(&message(
            "M1",
            "Alice@Example.com",
            &["a@one.test", "b@Two.TEST", "C@ONE.test"],
            100,
        ))
        .await
        .unwrap();
    let mut m2 = message("M2", "", &["d@one.test"], 200);
    m2.auth_user = None;
    store.enqueue(&m2).await.unwrap();

    let fresh = entry(&store, "M1").await;
    assert_eq!(fresh.done_at, None);
    let domains: Vec<&str> = fresh.recipients.iter().map(|r| r.domain.as_str()).collect();
    assert_eq!(domains, ["one.test", "two.test", "one.test"]);
    for (i, r) in fresh.recipients.iter().enumerate() {
        assert_eq!(r.position, i as i64);
        assert_eq!(r.status, DeliveryStatus::Queued);
        assert_eq!(r.attempts, 0);
        assert_eq!(
            (r.last_reply.as_deref(), r.last_host.as_deref()),
            (None, None)
        );
        assert!(!r.warned && !r.admin_bounce);
    }
    let due = store
        .next_due_ms()
        .await
        .unwrap()
        .expect("something is due");
    assert!(due <= now() * 1000, "new recipients are due at once: {due}");

    let now_ms = now() * 1000 + 1000;
    let jobs = store.claim_due(now_ms, 100).await.unwrap();
    assert_eq!(
        job_keys(&jobs),
        [
            key("M1", "one.test", &[0, 2]),
            key("M1", "two.test", &[1]),
            key("M2", "one.test", &[0]),
        ]
    );
    let m1_one = jobs
        .iter()
        .find(|j| j.message_id == "M1" && j.domain == "one.test")
        .unwrap();
    assert_eq!(m1_one.sender, "Alice@Example.com");
    assert_eq!(m1_one.spool_path, "spool/M1.eml");
    assert_eq!(m1_one.size, 1234);
    assert_eq!(m1_one.received_at, 100);
    assert_eq!(m1_one.auth_user.as_deref(), Some("alice@example.com"));
    assert!(
        m1_one
            .recipients
            .iter()
            .all(|r| r.status == DeliveryStatus::InFlight && r.attempts == 0)
    );
    let m2_job = jobs.iter().find(|j| j.message_id == "M2").unwrap();
    assert_eq!(
        (m2_job.sender.as_str(), m2_job.auth_user.as_ref()),
        ("", None)
    );

    // Claimed recipients are in flight, not claimable again, not due.
    assert_eq!(statuses(&store, "M1").await, [DeliveryStatus::InFlight; 3]);
    assert!(store.claim_due(i64::MAX, 100).await.unwrap().is_empty());
    assert_eq!(store.next_due_ms().await.unwrap(), None);

    // Defer them to different times.
    let times = [
        ("M1", 0, 5_000),
        ("M1", 1, 7_000),
        ("M1", 2, 6_000),
        ("M2", 0, 6_000),
    ];
    let outcomes: Vec<RecipientOutcome> = times
        .iter()
        .map(|(id, pos, at)| outcome(id, *pos, DeliveryStatus::Deferred, *at, "451 later"))
        .collect();
    assert!(
        store
            .record_delivery(&outcomes, &[], 1_000)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.next_due_ms().await.unwrap(), Some(5_000));

    // Not yet due: nothing. Due exactly at next_attempt_ms: claimed.
    assert!(store.claim_due(4_999, 100).await.unwrap().is_empty());
    let jobs = store.claim_due(5_000, 100).await.unwrap();
    assert_eq!(job_keys(&jobs), [key("M1", "one.test", &[0])]);
    assert_eq!(jobs[0].recipients[0].attempts, 1);
    assert_eq!(store.next_due_ms().await.unwrap(), Some(6_000));

    // The limit counts recipients, earliest first.
    let jobs = store.claim_due(i64::MAX, 2).await.unwrap();
    assert_eq!(
        job_keys(&jobs),
        [key("M1", "one.test", &[2]), key("M2", "one.test", &[0])]
    );
    assert_eq!(store.next_due_ms().await.unwrap(), Some(7_000));
    let jobs = store.claim_due(i64::MAX, 1).await.unwrap();
    assert_eq!(job_keys(&jobs), [key("M1", "two.test", &[1])]);
    assert_eq!(store.next_due_ms().await.unwrap(), None);
    assert!(store.claim_due(i64::MAX, 100).await.unwrap().is_empty());
}

/// release_in_flight puts claimed recipients back to queued (a restart
/// after a crash) without counting an attempt; they are claimable again.
pub async fn suite_release_in_flight(store: Arc<dyn Store>) {
    assert_eq!(store.release_in_flight().await.unwrap(), 0);
    store
        .enqueue(&message(
            "R1",
            "a@example.com",
            &["x@one.test", "y@two.test"],
            1,
        ))
        .await
        .unwrap();
    store
        .enqueue(&message("R2", "a@example.com", &["z@one.test"], 2))
        .await
        .unwrap();
    let now_ms = now() * 1000 + 1000;
    assert_eq!(store.claim_due(now_ms, 100).await.unwrap().len(), 3);
    // One is finished before the "crash": it stays delivered.
    store
        .record_delivery(
            &[outcome("R2", 0, DeliveryStatus::Delivered, 0, "250 ok")],
            &[],
            now_ms,
        )
        .await
        .unwrap();

    assert_eq!(store.release_in_flight().await.unwrap(), 2);
    assert_eq!(statuses(&store, "R1").await, [DeliveryStatus::Queued; 2]);
    assert_eq!(statuses(&store, "R2").await, [DeliveryStatus::Delivered]);
    assert!(
        entry(&store, "R1")
            .await
            .recipients
            .iter()
            .all(|r| r.attempts == 0)
    );
    assert_eq!(store.release_in_flight().await.unwrap(), 0);

    let jobs = store.claim_due(now_ms, 100).await.unwrap();
    assert_eq!(
        job_keys(&jobs),
        [key("R1", "one.test", &[0]), key("R1", "two.test", &[1])]
    );
}

/// record_delivery: each outcome updates its recipient and appends an event;
/// `done_at` is set (and the spool path returned) only once every recipient
/// is delivered or bounced.
pub async fn suite_record_delivery(store: Arc<dyn Store>) {
    store
        .enqueue(&message(
            "D1",
            "a@example.com",
            &["x@one.test", "y@one.test", "z@one.test"],
            1,
        ))
        .await
        .unwrap();
    store
        .enqueue(&message("D2", "a@example.com", &["w@two.test"], 2))
        .await
        .unwrap();
    assert!(store.delivery_events("D1").await.unwrap().is_empty());
    store.claim_due(i64::MAX, 100).await.unwrap();

    let mut deferred = outcome(
        "D1",
        1,
        DeliveryStatus::Deferred,
        90_000,
        "451 4.7.1 greylisted",
    );
    deferred.host = Some("mx2.one.test".into());
    let mut bounced = outcome(
        "D1",
        2,
        DeliveryStatus::Bounced,
        0,
        "550 5.1.1 no such user",
    );
    bounced.host = None;
    let done = store
        .record_delivery(
            &[
                outcome("D1", 0, DeliveryStatus::Delivered, 0, "250 2.0.0 ok"),
                deferred,
                bounced,
            ],
            &[],
            10_000,
        )
        .await
        .unwrap();
    assert!(done.is_empty(), "one recipient is still deferred: {done:?}");

    let d1 = entry(&store, "D1").await;
    assert_eq!(d1.done_at, None);
    let [x, y, z] = &d1.recipients[..] else {
        panic!("three recipients: {d1:?}");
    };
    assert_eq!(x.status, DeliveryStatus::Delivered);
    assert_eq!(x.last_reply.as_deref(), Some("250 2.0.0 ok"));
    assert_eq!(x.last_host.as_deref(), Some("mx.example.net"));
    assert_eq!(y.status, DeliveryStatus::Deferred);
    assert_eq!(y.next_attempt_ms, 90_000);
    assert_eq!(y.last_reply.as_deref(), Some("451 4.7.1 greylisted"));
    assert_eq!(y.last_host.as_deref(), Some("mx2.one.test"));
    assert_eq!(z.status, DeliveryStatus::Bounced);
    assert_eq!(z.last_host, None);
    assert!([x, y, z].iter().all(|r| r.attempts == 1));

    let events = store.delivery_events("D1").await.unwrap();
    let event = |recipient: &str, outcome: &str, host: Option<&str>, reply: &str| DeliveryEvent {
        message_id: "D1".into(),
        recipient: recipient.into(),
        at_ms: 10_000,
        outcome: outcome.into(),
        host: host.map(str::to_owned),
        reply: reply.into(),
    };
    assert_eq!(
        events,
        [
            event(
                "x@one.test",
                "delivered",
                Some("mx.example.net"),
                "250 2.0.0 ok"
            ),
            event(
                "y@one.test",
                "deferred",
                Some("mx2.one.test"),
                "451 4.7.1 greylisted"
            ),
            event("z@one.test", "bounced", None, "550 5.1.1 no such user"),
        ]
    );
    assert!(store.delivery_events("D2").await.unwrap().is_empty());
    assert!(store.delivery_events("nope").await.unwrap().is_empty());

    // Not-final messages are listed; the partly delivered one too.
    assert_eq!(
        ids_of(store.queue_entries(None, false).await.unwrap()),
        ["D1", "D2"]
    );

    // A second deferral counts a second attempt; a warning flag sticks.
    store.claim_due(90_000, 100).await.unwrap();
    let mut again = outcome("D1", 1, DeliveryStatus::Deferred, 200_000, "421 busy");
    again.warned = true;
    store.record_delivery(&[again], &[], 95_000).await.unwrap();
    let y = &entry(&store, "D1").await.recipients[1];
    assert_eq!(
        (y.attempts, y.warned, y.next_attempt_ms),
        (2, true, 200_000)
    );
    store.claim_due(200_000, 100).await.unwrap();
    // A release (status queued) counts no attempt and keeps the warning.
    store
        .record_delivery(
            &[outcome(
                "D1",
                1,
                DeliveryStatus::Queued,
                250_000,
                "shutting down",
            )],
            &[],
            210_000,
        )
        .await
        .unwrap();
    let y = &entry(&store, "D1").await.recipients[1];
    assert_eq!(y.status, DeliveryStatus::Queued);
    assert_eq!(
        (y.attempts, y.warned, y.next_attempt_ms),
        (2, true, 250_000)
    );
    assert_eq!(store.next_due_ms().await.unwrap(), Some(250_000));

    // The last recipient delivered: the message is done, its spool path returned.
    store.claim_due(250_000, 100).await.unwrap();
    let done = store
        .record_delivery(
            &[outcome("D1", 1, DeliveryStatus::Delivered, 0, "250 ok")],
            &[],
            300_500,
        )
        .await
        .unwrap();
    assert_eq!(done, [("D1".to_owned(), "spool/D1.eml".to_owned())]);
    let d1 = entry(&store, "D1").await;
    assert_eq!(d1.done_at, Some(300));
    let outcomes: Vec<(String, i64)> = store
        .delivery_events("D1")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.outcome, e.at_ms))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("delivered".to_owned(), 10_000),
            ("deferred".to_owned(), 10_000),
            ("bounced".to_owned(), 10_000),
            ("deferred".to_owned(), 95_000),
            ("released".to_owned(), 210_000),
            ("delivered".to_owned(), 300_500),
        ]
    );
    assert_eq!(
        ids_of(store.queue_entries(None, false).await.unwrap()),
        ["D2"]
    );
    assert_eq!(
        ids_of(store.queue_entries(None, true).await.unwrap()),
        ["D1", "D2"]
    );

    // A bounce finishes a message as well; recording on a finished message
    // does not return it again.
    let done = store
        .record_delivery(
            &[outcome("D2", 0, DeliveryStatus::Bounced, 0, "550 no")],
            &[],
            400_000,
        )
        .await
        .unwrap();
    assert_eq!(done, [("D2".to_owned(), "spool/D2.eml".to_owned())]);
    assert_eq!(entry(&store, "D2").await.done_at, Some(400));

    // An outcome for a message deleted meanwhile (by an admin) is ignored.
    store
        .enqueue(&message("D3", "a@example.com", &["v@one.test"], 3))
        .await
        .unwrap();
    store.claim_due(i64::MAX, 100).await.unwrap();
    store.delete_message("D3").await.unwrap();
    let done = store
        .record_delivery(
            &[outcome("D3", 0, DeliveryStatus::Delivered, 0, "250 ok")],
            &[],
            500_000,
        )
        .await
        .unwrap();
    assert!(done.is_empty(), "{done:?}");
    assert!(store.queue_entry("D3").await.unwrap().is_none());
    assert!(store.delivery_events("D3").await.unwrap().is_empty());
}

/// Notices (DSNs) are enqueued in the same transaction as the outcomes: a
/// notice that cannot be recorded leaves the outcomes unrecorded too.
pub async fn suite_delivery_notices(store: Arc<dyn Store>) {
    store
        .enqueue(&message("N1", "alice@example.com", &["x@one.test"], 1))
        .await
        .unwrap();
    store.claim_due(i64::MAX, 100).await.unwrap();

    let mut dsn = message("DSN1", "", &["alice@example.com"], 5);
    dsn.auth_user = None;
    let bounce = outcome("N1", 0, DeliveryStatus::Bounced, 0, "550 5.1.1 unknown");

    // The notice's id is taken: nothing is recorded.
    let taken = message("N1", "", &["alice@example.com"], 5);
    let mut taken = taken;
    taken.auth_user = None;
    assert_exists(
        store
            .record_delivery(std::slice::from_ref(&bounce), &[dsn.clone(), taken], 1_000)
            .await,
        "N1",
    );
    assert_eq!(statuses(&store, "N1").await, [DeliveryStatus::InFlight]);
    assert!(store.delivery_events("N1").await.unwrap().is_empty());
    assert!(store.queue_entry("DSN1").await.unwrap().is_none());

    // A malformed notice: refused, nothing recorded either.
    let mut bad = dsn.clone();
    bad.id = "DSN2".into();
    bad.recipients.clear();
    assert_invalid(
        store
            .record_delivery(std::slice::from_ref(&bounce), &[bad], 1_000)
            .await,
        "notice without recipients",
    );
    assert_eq!(statuses(&store, "N1").await, [DeliveryStatus::InFlight]);
    assert!(store.delivery_events("N1").await.unwrap().is_empty());

    // Both together.
    let done = store
        .record_delivery(
            std::slice::from_ref(&bounce),
            std::slice::from_ref(&dsn),
            1_000,
        )
        .await
        .unwrap();
    assert_eq!(done, [("N1".to_owned(), "spool/N1.eml".to_owned())]);
    assert_eq!(statuses(&store, "N1").await, [DeliveryStatus::Bounced]);
    let notice = entry(&store, "DSN1").await;
    assert_eq!(notice.sender, "");
    assert_eq!(notice.done_at, None);
    assert_eq!(notice.recipients[0].address, "alice@example.com");
    assert_eq!(notice.recipients[0].domain, "example.com");
    assert_eq!(notice.recipients[0].status, DeliveryStatus::Queued);
    // It is due for delivery like any new message.
    let jobs = store.claim_due(i64::MAX, 100).await.unwrap();
    assert_eq!(job_keys(&jobs), [key("DSN1", "example.com", &[0])]);
}

/// An outcome with `new_address` (alias expansion) rewrites the recipient
/// and its domain and requeues it.
pub async fn suite_delivery_rewrite(store: Arc<dyn Store>) {
    store
        .enqueue(&message(
            "A1",
            "a@example.com",
            &["info@local.test", "x@one.test"],
            1,
        ))
        .await
        .unwrap();
    store.claim_due(i64::MAX, 100).await.unwrap();
    let mut expand = outcome("A1", 0, DeliveryStatus::Queued, 2_000, "expanded to bob");
    expand.host = None;
    expand.new_address = Some("Bob@Remote.TEST".into());
    let done = store
        .record_delivery(
            &[
                expand,
                outcome("A1", 1, DeliveryStatus::Delivered, 0, "250 ok"),
            ],
            &[],
            2_000,
        )
        .await
        .unwrap();
    assert!(done.is_empty());
    let r = &entry(&store, "A1").await.recipients[0];
    assert_eq!(r.position, 0);
    assert!(r.address.eq_ignore_ascii_case("bob@remote.test"), "{r:?}");
    assert_eq!(r.domain, "remote.test");
    assert_eq!(r.status, DeliveryStatus::Queued);
    assert_eq!(r.next_attempt_ms, 2_000);
    let events = store.delivery_events("A1").await.unwrap();
    assert_eq!(events[0].outcome, "expanded");

    // Claimed for the new domain.
    let jobs = store.claim_due(2_000, 100).await.unwrap();
    assert_eq!(job_keys(&jobs), [key("A1", "remote.test", &[0])]);
    let done = store
        .record_delivery(
            &[outcome("A1", 0, DeliveryStatus::Delivered, 0, "250 ok")],
            &[],
            3_000,
        )
        .await
        .unwrap();
    assert_eq!(done.len(), 1);
}

/// Admin operations: retry_now, request_bounce, delete_message, prune_done,
/// and the status filter of queue_entries.
pub async fn suite_queue_admin(store: Arc<dyn Store>) {
    for (id, received) in [("E1", 1), ("E2", 2), ("E3", 3)] {
        store
            .enqueue(&message(
                id,
                "a@example.com",
                &["x@one.test", "y@two.test"],
                received,
            ))
            .await
            .unwrap();
    }
    store.claim_due(i64::MAX, 100).await.unwrap();
    // E1: both deferred. E2: delivered + deferred. E3: delivered + bounced (done).
    store
        .record_delivery(
            &[
                outcome("E1", 0, DeliveryStatus::Deferred, 50_000, "451"),
                outcome("E1", 1, DeliveryStatus::Deferred, 60_000, "451"),
                outcome("E2", 0, DeliveryStatus::Delivered, 0, "250"),
                outcome("E2", 1, DeliveryStatus::Deferred, 70_000, "451"),
                outcome("E3", 0, DeliveryStatus::Delivered, 0, "250"),
                outcome("E3", 1, DeliveryStatus::Bounced, 0, "550"),
            ],
            &[],
            10_000,
        )
        .await
        .unwrap();
    store
        .enqueue(&message("E4", "a@example.com", &["z@one.test"], 4))
        .await
        .unwrap();
    // Only E4 is due (the deferred ones wait until 50_000 and later).
    let jobs = store.claim_due(1_000, 100).await.unwrap();
    assert_eq!(job_keys(&jobs), [key("E4", "one.test", &[0])]);
    // E4 is in flight.

    // queue_entries: status filter, include_done, oldest first.
    let list = |status: Option<DeliveryStatus>, all: bool| {
        let store = Arc::clone(&store);
        async move { ids_of(store.queue_entries(status, all).await.unwrap()) }
    };
    assert_eq!(list(None, false).await, ["E1", "E2", "E4"]);
    assert_eq!(list(None, true).await, ["E1", "E2", "E3", "E4"]);
    assert_eq!(
        list(Some(DeliveryStatus::Deferred), false).await,
        ["E1", "E2"]
    );
    assert_eq!(list(Some(DeliveryStatus::Delivered), false).await, ["E2"]);
    assert_eq!(
        list(Some(DeliveryStatus::Delivered), true).await,
        ["E2", "E3"]
    );
    assert_eq!(
        list(Some(DeliveryStatus::Bounced), false).await,
        Vec::<String>::new()
    );
    assert_eq!(list(Some(DeliveryStatus::Bounced), true).await, ["E3"]);
    assert_eq!(list(Some(DeliveryStatus::InFlight), false).await, ["E4"]);
    assert_eq!(
        list(Some(DeliveryStatus::Queued), true).await,
        Vec::<String>::new()
    );
    let entries = store.queue_entries(None, true).await.unwrap();
    assert_eq!(
        entries[2].recipients.len(),
        2,
        "entries carry every recipient"
    );
    assert_eq!(entries[2], entry(&store, "E3").await);
    assert!(store.queue_entry("nope").await.unwrap().is_none());

    // retry_now: one message's queued/deferred recipients, or everyone's.
    assert_eq!(store.retry_now(Some("E1"), 20_000).await.unwrap(), 2);
    let e1 = entry(&store, "E1").await;
    assert!(e1.recipients.iter().all(|r| r.next_attempt_ms == 20_000));
    assert!(
        e1.recipients
            .iter()
            .all(|r| r.status == DeliveryStatus::Deferred)
    );
    assert_eq!(
        entry(&store, "E2").await.recipients[1].next_attempt_ms,
        70_000
    );
    assert_eq!(store.next_due_ms().await.unwrap(), Some(20_000));
    assert_eq!(store.retry_now(Some("E3"), 20_000).await.unwrap(), 0);
    assert_eq!(
        store.retry_now(Some("E4"), 20_000).await.unwrap(),
        0,
        "in flight"
    );
    assert_not_found(store.retry_now(Some("nope"), 20_000).await, "nope");
    assert_eq!(store.retry_now(None, 15_000).await.unwrap(), 3);
    assert_eq!(
        entry(&store, "E2").await.recipients[1].next_attempt_ms,
        15_000
    );
    assert_eq!(
        entry(&store, "E2").await.recipients[0].status,
        DeliveryStatus::Delivered
    );

    // request_bounce: flags the not-final recipients, due now unless in flight.
    assert_eq!(store.request_bounce("E2", 30_000).await.unwrap(), 1);
    let e2 = entry(&store, "E2").await;
    assert!(!e2.recipients[0].admin_bounce);
    assert!(e2.recipients[1].admin_bounce);
    assert_eq!(e2.recipients[1].next_attempt_ms, 30_000);
    assert_eq!(store.request_bounce("E3", 30_000).await.unwrap(), 0);
    assert_eq!(store.request_bounce("E4", 30_000).await.unwrap(), 1);
    let e4 = &entry(&store, "E4").await.recipients[0];
    assert!(e4.admin_bounce);
    assert_eq!(e4.status, DeliveryStatus::InFlight);
    assert_not_found(store.request_bounce("nope", 1).await, "nope");
    // The flag travels with the claim, and a deferral keeps it.
    let jobs = store.claim_due(30_000, 100).await.unwrap();
    let flagged: Vec<bool> = jobs
        .iter()
        .filter(|j| j.message_id == "E2")
        .flat_map(|j| j.recipients.iter().map(|r| r.admin_bounce))
        .collect();
    assert_eq!(flagged, [true]);
    store
        .record_delivery(
            &[outcome("E4", 0, DeliveryStatus::Deferred, 40_000, "451")],
            &[],
            31_000,
        )
        .await
        .unwrap();
    assert!(entry(&store, "E4").await.recipients[0].admin_bounce);

    // delete_message: the message, its recipients and events go.
    assert_eq!(store.delete_message("E1").await.unwrap(), "spool/E1.eml");
    assert!(store.queue_entry("E1").await.unwrap().is_none());
    assert!(store.delivery_events("E1").await.unwrap().is_empty());
    assert_not_found(store.delete_message("E1").await, "E1");
    assert!(
        store
            .claim_due(i64::MAX, 100)
            .await
            .unwrap()
            .iter()
            .all(|j| j.message_id != "E1")
    );
    assert_eq!(list(None, true).await, ["E2", "E3", "E4"]);

    // prune_done: finished messages done strictly before the cut, with events.
    assert_eq!(entry(&store, "E3").await.done_at, Some(10));
    assert_eq!(store.prune_done(10).await.unwrap(), 0);
    assert_eq!(store.prune_done(11).await.unwrap(), 1);
    assert!(store.queue_entry("E3").await.unwrap().is_none());
    assert!(store.delivery_events("E3").await.unwrap().is_empty());
    assert_eq!(
        store.prune_done(i64::MAX).await.unwrap(),
        0,
        "the rest are not done"
    );
    assert_eq!(list(None, true).await, ["E2", "E4"]);
    assert!(!store.delivery_events("E2").await.unwrap().is_empty());
}

/// Aliases: only on local domains, exact aliases before the catch-all,
/// normalised, listed sorted, removable.
pub async fn suite_aliases(store: Arc<dyn Store>) {
    assert!(store.list_aliases().await.unwrap().is_empty());
    assert_eq!(store.resolve_alias("info@local.test").await.unwrap(), None);

    // Not a local domain (yet).
    assert_invalid(
        store.add_alias("info@local.test", "bob@example.net").await,
        "non-local domain",
    );
    assert_invalid(
        store.add_alias("@local.test", "bob@example.net").await,
        "non-local catch-all",
    );
    store.add_domain("local.test").await.unwrap();

    for bad in [
        "",
        "info",
        "info@",
        "@",
        "@bad..domain",
        "in fo@local.test",
        "a@b@local.test",
    ] {
        assert_invalid(store.add_alias(bad, "bob@example.net").await, bad);
    }
    for bad in ["", "bob", "@example.net", "bob@", "b ob@example.net"] {
        assert_invalid(store.add_alias("info@local.test", bad).await, bad);
    }
    assert_invalid(
        store.add_alias("info@local.test", "INFO@local.test").await,
        "an alias to itself",
    );

    let before = now();
    store
        .add_alias(" Info@Local.TEST ", "Bob@Example.NET")
        .await
        .unwrap();
    store
        .add_alias("@LOCAL.test", "catchall@example.net")
        .await
        .unwrap();
    store
        .add_alias("sales@local.test", "carol@local.test")
        .await
        .unwrap();
    assert_exists(
        store.add_alias("INFO@local.test", "x@example.net").await,
        "info@local.test",
    );
    assert_exists(
        store.add_alias("@local.test", "x@example.net").await,
        "@local.test",
    );

    let aliases = store.list_aliases().await.unwrap();
    let pairs: Vec<(&str, &str)> = aliases
        .iter()
        .map(|a| (a.alias.as_str(), a.target.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("@local.test", "catchall@example.net"),
            ("info@local.test", "bob@example.net"),
            ("sales@local.test", "carol@local.test"),
        ]
    );
    assert!(
        aliases
            .iter()
            .all(|a| a.created_at >= before && a.created_at <= now())
    );

    // Exact beats catch-all; lookups are case-insensitive.
    let resolve = |a: &'static str| {
        let store = Arc::clone(&store);
        async move { store.resolve_alias(a).await.unwrap() }
    };
    assert_eq!(
        resolve("INFO@local.test").await.as_deref(),
        Some("bob@example.net")
    );
    assert_eq!(
        resolve("sales@local.test").await.as_deref(),
        Some("carol@local.test")
    );
    assert_eq!(
        resolve("anyone@Local.Test").await.as_deref(),
        Some("catchall@example.net")
    );
    assert_eq!(resolve("info@other.test").await, None);
    assert_eq!(resolve("not an address").await, None);

    // Removal, then the catch-all takes over.
    store.remove_alias("Info@LOCAL.test").await.unwrap();
    assert_not_found(
        store.remove_alias("info@local.test").await,
        "info@local.test",
    );
    assert_eq!(
        resolve("info@local.test").await.as_deref(),
        Some("catchall@example.net")
    );
    store.remove_alias("@local.test").await.unwrap();
    assert_not_found(store.remove_alias("@Local.test").await, "@local.test");
    assert_eq!(resolve("info@local.test").await, None);
    assert_eq!(
        resolve("sales@local.test").await.as_deref(),
        Some("carol@local.test")
    );
    assert_invalid(store.remove_alias("not an alias").await, "malformed alias");
    assert_eq!(store.list_aliases().await.unwrap().len(), 1);
}

// ---------------------------------------------------------------------------
// issue 6: SCRAM-SHA-256 keys and sealed CRAM-MD5 secrets
// ---------------------------------------------------------------------------

pub fn scram(byte: u8) -> ScramCredential {
    ScramCredential {
        salt: vec![byte; 16],
        iterations: 4096,
        stored_key: vec![byte; 32],
        server_key: vec![byte.wrapping_add(1); 32],
    }
}

pub async fn suite_scram_and_cram_keys(store: Arc<dyn Store>) {
    store
        .add_account("sam@example.com", &hash("pw one"), "default")
        .await
        .unwrap();
    // A new account has no SCRAM keys (nothing to log in with by SCRAM).
    assert!(
        store
            .scram_keys("sam@example.com")
            .await
            .unwrap()
            .is_empty()
    );
    store
        .set_scram_keys("SAM@example.com", Some(&scram(1)))
        .await
        .unwrap();
    store
        .add_app_password("sam@example.com", "zeta", &digest(2), None, &[])
        .await
        .unwrap();
    store
        .add_app_password("sam@example.com", "alpha", &digest(3), None, &[])
        .await
        .unwrap();
    store
        .set_app_password_keys("sam@example.com", "ZETA", Some(&scram(2)), None)
        .await
        .unwrap();
    store
        .set_app_password_keys("sam@example.com", "alpha", Some(&scram(3)), Some(b"sealed"))
        .await
        .unwrap();
    let keys = store.scram_keys("sam@example.com").await.unwrap();
    let names: Vec<Option<&str>> = keys.iter().map(|k| k.app_password.as_deref()).collect();
    assert_eq!(
        names,
        [None, Some("alpha"), Some("zeta")],
        "main first, then by name"
    );
    assert_eq!(keys[0].keys, scram(1));
    assert_eq!(keys[2].keys, scram(2));
    assert!(!format!("{keys:?}").contains("[1, 1"), "keys never print");

    let cram = store.cram_secrets("sam@example.com").await.unwrap();
    assert_eq!(cram.len(), 1);
    assert_eq!(cram[0].app_password, "alpha");
    assert_eq!(cram[0].sealed, b"sealed");
    // Re-keying SCRAM keeps the CRAM secret unless a new one is given.
    store
        .set_app_password_keys("sam@example.com", "alpha", Some(&scram(4)), None)
        .await
        .unwrap();
    assert_eq!(
        store.cram_secrets("sam@example.com").await.unwrap().len(),
        1
    );

    // A password change clears the main password's SCRAM keys.
    store
        .set_password_hash("sam@example.com", &hash("pw two"))
        .await
        .unwrap();
    let keys = store.scram_keys("sam@example.com").await.unwrap();
    assert!(keys.iter().all(|k| k.app_password.is_some()), "{keys:?}");
    store.set_scram_keys("sam@example.com", None).await.unwrap();

    // Revoking an app password drops its keys.
    store
        .revoke_app_password("sam@example.com", "alpha")
        .await
        .unwrap();
    assert!(
        store
            .cram_secrets("sam@example.com")
            .await
            .unwrap()
            .is_empty()
    );

    // Errors.
    let mut bad = scram(5);
    bad.iterations = 100;
    assert_invalid(
        store.set_scram_keys("sam@example.com", Some(&bad)).await,
        "few iterations",
    );
    let mut bad = scram(5);
    bad.stored_key.pop();
    assert_invalid(
        store.set_scram_keys("sam@example.com", Some(&bad)).await,
        "short key",
    );
    assert_invalid(
        store
            .set_app_password_keys("sam@example.com", "zeta", None, Some(b""))
            .await,
        "empty sealed secret",
    );
    assert_not_found(
        store
            .set_scram_keys("nobody@example.com", Some(&scram(1)))
            .await,
        "nobody@example.com",
    );
    assert_not_found(
        store
            .set_app_password_keys("sam@example.com", "nosuch", Some(&scram(1)), None)
            .await,
        "nosuch",
    );
    assert_not_found(
        store
            .set_app_password_keys("nobody@example.com", "zeta", Some(&scram(1)), None)
            .await,
        "nobody@example.com",
    );
    assert!(
        store
            .scram_keys("nobody@example.com")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.scram_keys("garbage").await.unwrap().is_empty());
    assert!(store.cram_secrets("garbage").await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------
// Sending domains (issue 7)
// ---------------------------------------------------------------------------

pub fn dkim_pair(tag: &str) -> Vec<portcullis_store::NewDkimKey> {
    use portcullis_store::{DkimAlgorithm, NewDkimKey};
    [("e", DkimAlgorithm::Ed25519), ("r", DkimAlgorithm::Rsa)]
        .into_iter()
        .map(|(suffix, algorithm)| NewDkimKey {
            selector: format!("{tag}{suffix}"),
            tag: tag.to_owned(),
            algorithm,
            private_key: format!("private {tag}{suffix}").into_bytes(),
            public_key: format!("public {tag}{suffix}").into_bytes(),
        })
        .collect()
}

pub async fn dkim_states(store: &Arc<dyn Store>, domain: &str) -> Vec<(String, &'static str)> {
    store
        .dkim_keys(domain)
        .await
        .unwrap()
        .into_iter()
        .map(|k| (k.selector, k.state.as_str()))
        .collect()
}

/// DKIM key pairs: first pair active, later ones pending; activation retires
/// the old pair; the active pair cannot be removed; keys go with the domain.
pub async fn suite_dkim_keys(store: Arc<dyn Store>) {
    use portcullis_store::{DkimAlgorithm, DkimKeyState};
    assert_not_found(
        store
            .add_dkim_keys("example.org", &dkim_pair("pc202612"))
            .await,
        "example.org",
    );
    store.add_domain("example.org").await.unwrap();
    assert_eq!(
        store
            .add_dkim_keys("Example.ORG", &dkim_pair("pc202612"))
            .await
            .unwrap(),
        DkimKeyState::Active
    );
    let keys = store.dkim_keys("example.org").await.unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].selector, "pc202612e");
    assert_eq!(keys[0].algorithm, DkimAlgorithm::Ed25519);
    assert_eq!(keys[0].private_key, b"private pc202612e");
    assert_eq!(keys[1].public_key, b"public pc202612r");
    assert_eq!(keys[1].tag, "pc202612");
    assert!(
        !format!("{:?}", keys[0]).contains("private"),
        "Debug hides the key"
    );
    assert_exists(
        store
            .add_dkim_keys("example.org", &dkim_pair("pc202612"))
            .await,
        "pc202612e",
    );
    assert_invalid(store.add_dkim_keys("example.org", &[]).await, "no keys");
    assert_invalid(
        store
            .add_dkim_keys("example.org", &dkim_pair("bad.tag"))
            .await,
        "dotted selector",
    );
    let mut mixed = dkim_pair("pc1");
    mixed[1].tag = "pc2".into();
    assert_invalid(
        store.add_dkim_keys("example.org", &mixed).await,
        "mixed tags",
    );

    assert_eq!(
        store
            .add_dkim_keys("example.org", &dkim_pair("pc202701"))
            .await
            .unwrap(),
        DkimKeyState::Pending
    );
    assert_eq!(
        dkim_states(&store, "example.org").await,
        [
            ("pc202612e".to_owned(), "active"),
            ("pc202612r".to_owned(), "active"),
            ("pc202701e".to_owned(), "pending"),
            ("pc202701r".to_owned(), "pending"),
        ]
    );
    assert_not_found(store.activate_dkim_tag("example.org", "nope").await, "nope");
    store
        .activate_dkim_tag("example.org", "pc202701")
        .await
        .unwrap();
    assert_eq!(
        dkim_states(&store, "example.org").await,
        [
            ("pc202612e".to_owned(), "retired"),
            ("pc202612r".to_owned(), "retired"),
            ("pc202701e".to_owned(), "active"),
            ("pc202701r".to_owned(), "active"),
        ]
    );
    assert_invalid(
        store.remove_dkim_tag("example.org", "pc202701").await,
        "active pair",
    );
    store
        .remove_dkim_tag("example.org", "pc202612")
        .await
        .unwrap();
    assert_not_found(
        store.remove_dkim_tag("example.org", "pc202612").await,
        "pc202612",
    );
    assert_eq!(store.dkim_keys("example.org").await.unwrap().len(), 2);
    assert!(store.dkim_keys("other.example").await.unwrap().is_empty());
    assert!(store.dkim_keys("not a domain").await.unwrap().is_empty());

    store.remove_domain("example.org").await.unwrap();
    assert!(store.dkim_keys("example.org").await.unwrap().is_empty());
    store.add_domain("example.org").await.unwrap();
    assert_eq!(
        store
            .add_dkim_keys("example.org", &dkim_pair("pc202701"))
            .await
            .unwrap(),
        DkimKeyState::Active,
        "keys of a removed domain do not come back"
    );
}

/// enqueue_batch (issue 9): many messages and their usage in one
/// transaction; all or nothing on any error, including a duplicate id inside
/// the batch or one already queued.
pub async fn suite_enqueue_batch(store: Arc<dyn Store>) {
    store.enqueue_batch(&[]).await.unwrap();
    assert!(store.list_queue().await.unwrap().is_empty());

    let batch = vec![
        message_with_usage("B1", "Alice@Example.com", &["x@example.net"], &[10]),
        message("B2", "", &["Y@Example.org", "z@example.org"], 1_700_000_001),
        message_with_usage("B3", "bob@example.com", &["w@example.net"], &[20, 20]),
    ];
    store.enqueue_batch(&batch).await.unwrap();
    let queue = store.list_queue().await.unwrap();
    let ids: Vec<&str> = queue.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(
        ids,
        ["B1", "B3", "B2"],
        "ordered by received_at, then insertion"
    );
    let b2 = &queue[2];
    assert_eq!(b2.sender, "");
    assert_eq!(b2.recipients, ["Y@Example.org", "z@example.org"]);
    assert_eq!(
        all_usage(&store).await,
        pairs(&[
            ("alice@example.com", 10),
            ("bob@example.com", 20),
            ("bob@example.com", 20)
        ])
    );

    // One invalid message fails the whole batch; nothing of it is written.
    let bad = vec![
        message_with_usage("B4", "carol@example.com", &["x@example.net"], &[30]),
        message("B5", "a@example.com", &["not-an-address"], 1),
    ];
    assert_invalid(store.enqueue_batch(&bad).await, "bad recipient in batch");
    // A duplicate of a queued id, after a good message: rolled back too.
    let dup = vec![
        message_with_usage("B6", "carol@example.com", &["x@example.net"], &[40]),
        message("B1", "a@example.com", &["x@example.net"], 1),
    ];
    assert_exists(store.enqueue_batch(&dup).await, "B1");
    // A duplicate id inside the batch.
    let twice = vec![
        message("B7", "a@example.com", &["x@example.net"], 1),
        message("B7", "a@example.com", &["x@example.net"], 1),
    ];
    assert_exists(store.enqueue_batch(&twice).await, "B7");
    assert_eq!(store.list_queue().await.unwrap(), queue);
    assert_eq!(all_usage(&store).await.len(), 3);
    // A failed batch leaves nothing open: the next one commits.
    let after = vec![message("B8", "a@example.com", &["x@example.net"], 1)];
    store.enqueue_batch(&after).await.unwrap();
    store.delete_message("B8").await.unwrap();

    // Batched messages are delivery jobs like any other.
    let jobs = store.claim_due(i64::MAX, 100).await.unwrap();
    let mut claimed: Vec<&str> = jobs.iter().map(|j| j.message_id.as_str()).collect();
    claimed.sort_unstable();
    assert_eq!(claimed, ["B1", "B2", "B3"]);
}

/// The directory change token (issues 5 and 9): every directory write made
/// through `writer` changes the token that `reader` (another handle on the
/// same data, as the admin CLI and the server are) reads, so a cache keyed by
/// it can never serve stale accounts, plans, domains, aliases, credentials or
/// keys. Backends without a token (`None`) pass trivially: nothing may be
/// cached for them.
pub async fn suite_directory_token(reader: Arc<dyn Store>, writer: Arc<dyn Store>) {
    let Some(mut last) = reader.directory_token() else {
        return;
    };
    assert_eq!(
        reader.directory_token(),
        Some(last),
        "stable while nothing changes"
    );
    let mut expect_change = |what: &str, reader: &Arc<dyn Store>| {
        let now = reader.directory_token().expect("token");
        assert_ne!(now, last, "{what} must change the directory token");
        last = now;
    };
    let w = &writer;
    w.add_account("tok@example.com", &hash("pw"), "standard")
        .await
        .unwrap();
    expect_change("add_account", &reader);
    w.set_password_hash("tok@example.com", &hash("pw2"))
        .await
        .unwrap();
    expect_change("set_password_hash", &reader);
    w.set_account_status("tok@example.com", portcullis_store::AccountStatus::Disabled)
        .await
        .unwrap();
    expect_change("set_account_status", &reader);
    w.set_account_plan("tok@example.com", "premium")
        .await
        .unwrap();
    expect_change("set_account_plan", &reader);
    w.add_domain("tok.example.org").await.unwrap();
    expect_change("add_domain", &reader);
    w.add_app_password("tok@example.com", "phone", &digest(7), None, &[])
        .await
        .unwrap();
    expect_change("add_app_password", &reader);
    w.set_app_password_keys("tok@example.com", "phone", Some(&scram(1)), None)
        .await
        .unwrap();
    expect_change("set_app_password_keys", &reader);
    w.revoke_app_password("tok@example.com", "phone")
        .await
        .unwrap();
    expect_change("revoke_app_password", &reader);
    w.set_totp_secret("tok@example.com", Some("JBSWY3DPEHPK3PXP"))
        .await
        .unwrap();
    expect_change("set_totp_secret", &reader);
    w.set_allowed_ips("tok@example.com", &["192.0.2.0/24".to_owned()])
        .await
        .unwrap();
    expect_change("set_allowed_ips", &reader);
    w.add_allowed_sender("tok@example.com", "@tok.example.org")
        .await
        .unwrap();
    expect_change("add_allowed_sender", &reader);
    w.remove_allowed_sender("tok@example.com", "@tok.example.org")
        .await
        .unwrap();
    expect_change("remove_allowed_sender", &reader);
    w.set_scram_keys("tok@example.com", Some(&scram(2)))
        .await
        .unwrap();
    expect_change("set_scram_keys", &reader);
    w.add_alias("info@tok.example.org", "tok@example.com")
        .await
        .unwrap();
    expect_change("add_alias", &reader);
    w.remove_alias("info@tok.example.org").await.unwrap();
    expect_change("remove_alias", &reader);
    w.add_dkim_keys("tok.example.org", &dkim_pair("pc202612"))
        .await
        .unwrap();
    w.add_dkim_keys("tok.example.org", &dkim_pair("pc202701"))
        .await
        .unwrap();
    expect_change("add_dkim_keys", &reader);
    w.activate_dkim_tag("tok.example.org", "pc202701")
        .await
        .unwrap();
    expect_change("activate_dkim_tag", &reader);
    w.remove_dkim_tag("tok.example.org", "pc202612")
        .await
        .unwrap();
    expect_change("remove_dkim_tag", &reader);
    w.remove_domain("tok.example.org").await.unwrap();
    expect_change("remove_domain", &reader);
    w.remove_account("tok@example.com").await.unwrap();
    expect_change("remove_account", &reader);
    // A refused write may bump the token too (harmless); a read never does.
    let before = reader.directory_token();
    let _ = w.account("tok@example.com").await.unwrap();
    let _ = w.is_local_domain("example.com").await.unwrap();
    assert_eq!(
        reader.directory_token(),
        before,
        "reads leave the token alone"
    );
}

// ---------------------------------------------------------------------------
// Segment spool (issue 9)
// ---------------------------------------------------------------------------

pub async fn suite_live_spool_files(store: Arc<dyn Store>) {
    let sorted = async |store: &Arc<dyn Store>| {
        let mut files = store.live_spool_files().await.unwrap();
        files.sort();
        files
    };
    assert!(sorted(&store).await.is_empty(), "empty queue");
    let in_segment = |id: &str, seg: &str, offset: u64| {
        let mut m = message(id, "a@example.com", &["x@one.test"], 1);
        m.spool_path = format!("spool/seg/{seg}.seg#{offset}+100");
        m
    };
    store
        .enqueue_batch(&[
            in_segment("S1", "000000000000000a", 0),
            in_segment("S2", "000000000000000a", 100),
            in_segment("S3", "000000000000000b", 0),
            message("F1", "a@example.com", &["x@one.test"], 1),
        ])
        .await
        .unwrap();
    assert_eq!(
        sorted(&store).await,
        [
            "spool/F1.eml",
            "spool/seg/000000000000000a.seg",
            "spool/seg/000000000000000b.seg"
        ],
        "distinct files, ranges cut off"
    );
    // Finishing S3 frees segment b; segment a keeps S2 after S1 is done.
    store.claim_due(i64::MAX, 100).await.unwrap();
    let delivered = |id: &str| outcome(id, 0, DeliveryStatus::Delivered, 0, "250 2.0.0 ok");
    let done = store
        .record_delivery(&[delivered("S1"), delivered("S3")], &[], 10_000)
        .await
        .unwrap();
    assert_eq!(done.len(), 2, "{done:?}");
    assert_eq!(
        sorted(&store).await,
        ["spool/F1.eml", "spool/seg/000000000000000a.seg"]
    );
    // A deleted message no longer holds its file.
    store.delete_message("F1").await.unwrap();
    store
        .record_delivery(&[delivered("S2")], &[], 11_000)
        .await
        .unwrap();
    assert!(sorted(&store).await.is_empty());
}

/// The journal mark (issue 9): recorded with its rows, never without them,
/// and replay records only what is missing.
pub async fn suite_journal(store: Arc<dyn Store>) {
    use portcullis_store::JournalMark;
    let mark = |segment, position| JournalMark { segment, position };
    assert_eq!(store.journal_mark().await.unwrap(), None);
    store.sync_commits().await.unwrap();
    assert_eq!(
        store.journal_mark().await.unwrap(),
        None,
        "sync adds no mark"
    );

    // Unsynced and synced journaled batches record rows and mark together.
    let first = vec![
        message_with_usage("J1", "alice@example.com", &["x@example.net"], &[10]),
        message("J2", "", &["y@example.org"], 1_700_000_001),
    ];
    store
        .enqueue_journaled(&first, mark(7, 100), false)
        .await
        .unwrap();
    assert_eq!(store.journal_mark().await.unwrap(), Some(mark(7, 100)));
    store.sync_commits().await.unwrap();
    assert_eq!(
        store.journal_mark().await.unwrap(),
        Some(mark(7, 100)),
        "unchanged"
    );
    assert_eq!(store.list_queue().await.unwrap().len(), 2);
    let second = vec![message("J3", "a@example.com", &["z@example.net"], 2)];
    store
        .enqueue_journaled(&second, mark(7, 200), true)
        .await
        .unwrap();
    assert_eq!(store.journal_mark().await.unwrap(), Some(mark(7, 200)));
    let queue = store.list_queue().await.unwrap();
    assert_eq!(queue.len(), 3);
    assert_eq!(all_usage(&store).await, pairs(&[("alice@example.com", 10)]));

    // A failed batch records neither its rows nor its mark, and the next
    // one (synced or not) still commits.
    let dup = vec![
        message("J4", "a@example.com", &["x@example.net"], 1),
        message("J1", "a@example.com", &["x@example.net"], 1),
    ];
    assert_exists(
        store.enqueue_journaled(&dup, mark(7, 300), false).await,
        "J1",
    );
    let bad = vec![message("J5", "a@example.com", &["not-an-address"], 1)];
    assert_invalid(
        store.enqueue_journaled(&bad, mark(7, 400), false).await,
        "bad recipient",
    );
    assert_eq!(store.journal_mark().await.unwrap(), Some(mark(7, 200)));
    assert_eq!(store.list_queue().await.unwrap(), queue);
    store
        .enqueue_journaled(&[], mark(8, 0), false)
        .await
        .unwrap();
    assert_eq!(store.journal_mark().await.unwrap(), Some(mark(8, 0)));
    store
        .enqueue_batch(&[message("J6", "a@example.com", &["x@example.net"], 3)])
        .await
        .unwrap();

    // Replay: J1 is queued and J3 is done and pruned-like (deleted); only
    // the missing J7 is recorded, with its recipients and usage, and J1 is
    // left exactly as it was.
    store.delete_message("J3").await.unwrap();
    let replayed = vec![
        message_with_usage("J1", "mallory@example.com", &["evil@example.net"], &[99]),
        message_with_usage(
            "J7",
            "bob@example.com",
            &["w@example.net", "v@example.net"],
            &[20, 20],
        ),
    ];
    let n = store.replay_journal(&replayed, mark(9, 50)).await.unwrap();
    assert_eq!(n, 1);
    assert_eq!(store.journal_mark().await.unwrap(), Some(mark(9, 50)));
    let after = store.list_queue().await.unwrap();
    let j1 = after.iter().find(|m| m.id == "J1").unwrap();
    assert_eq!(j1.recipients, ["x@example.net"]);
    let j7 = after.iter().find(|m| m.id == "J7").unwrap();
    assert_eq!(j7.recipients, ["w@example.net", "v@example.net"]);
    assert_eq!(
        all_usage(&store).await,
        pairs(&[
            ("alice@example.com", 10),
            ("bob@example.com", 20),
            ("bob@example.com", 20)
        ])
    );
    // Replaying again records nothing; an empty replay only moves the mark.
    assert_eq!(
        store.replay_journal(&replayed, mark(9, 50)).await.unwrap(),
        0
    );
    assert_eq!(store.replay_journal(&[], mark(10, 0)).await.unwrap(), 0);
    assert_eq!(store.journal_mark().await.unwrap(), Some(mark(10, 0)));
    assert_invalid(store.replay_journal(&bad, mark(11, 0)).await, "bad replay");
    assert_eq!(store.journal_mark().await.unwrap(), Some(mark(10, 0)));
    // A mark beyond SQLite's INTEGER is refused, not wrapped.
    assert_invalid(
        store.enqueue_journaled(&[], mark(u64::MAX, 0), false).await,
        "mark out of range",
    );
}
