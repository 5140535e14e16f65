//! The backend-independent conformance suite for [`Store`].
//!
//! Owns the contract checks. Every `suite_*` function takes `Arc<dyn Store>`
//! handles to an empty store and knows nothing about the backend, so another
//! backend's test target can include this file (`#[path = ...] mod suite;`)
//! and run the same functions.

use std::sync::Arc;

use portcullis_store::password::hash_password;
use portcullis_store::{AccountStatus, NewMessage, QueuedMessage, Store, StoreError};

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
