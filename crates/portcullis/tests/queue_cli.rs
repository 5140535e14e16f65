//! `portcullis queue ...` and `portcullis alias ...` against the real binary.
//!
//! Messages get into the queue without a server: the test opens the SQLite
//! store of the temporary data dir itself, enqueues messages (with a spool
//! file each) and records delivery attempts as the queue manager would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use common::{Run, run};
use portcullis_store::{DeliveryStatus, NewMessage, RecipientOutcome, SqliteStore, Store};
use tempfile::TempDir;
use tokio::runtime::Runtime;

const HOUR_MS: i64 = 3_600_000;

/// A data dir with a store the test writes to directly.
struct Queue {
    dir: TempDir,
    rt: Runtime,
    store: SqliteStore,
}

fn now_ms() -> i64 {
    let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1_000_000).unwrap()
}

impl Queue {
    fn new() -> Queue {
        let dir = TempDir::new().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // The file name the CLI uses (common::DATABASE_FILE).
        let store = rt
            .block_on(SqliteStore::open(&dir.path().join("portcullis.db")))
            .unwrap();
        Queue { dir, rt, store }
    }

    fn run(&self, args: &[&str]) -> Run {
        run(&self.dir, args)
    }

    fn spool_file(&self, id: &str) -> PathBuf {
        self.dir.path().join("spool").join(format!("{id}.eml"))
    }

    fn enqueue(&self, id: &str, sender: &str, recipients: &[&str], age_s: i64) {
        let body = format!("Subject: {id}\r\n\r\nhello\r\n");
        std::fs::create_dir_all(self.dir.path().join("spool")).unwrap();
        std::fs::write(self.spool_file(id), &body).unwrap();
        let message = NewMessage {
            id: id.to_owned(),
            sender: sender.to_owned(),
            recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
            size: body.len() as u64,
            spool_path: format!("spool/{id}.eml"),
            auth_user: None,
            client_ip: "192.0.2.7".to_owned(),
            received_at: now_ms() / 1000 - age_s,
            usage_ms: vec![],
        };
        self.rt.block_on(self.store.enqueue(&message)).unwrap();
    }

    /// Claims everything due and records `outcome(address)` for each
    /// recipient claimed.
    fn attempt(&self, outcome: impl Fn(&str) -> (DeliveryStatus, &'static str)) {
        let now = now_ms();
        let jobs = self.rt.block_on(self.store.claim_due(now, 100)).unwrap();
        let outcomes: Vec<RecipientOutcome> = jobs
            .iter()
            .flat_map(|job| {
                job.recipients.iter().map(|r| {
                    let (status, reply) = outcome(&r.address);
                    RecipientOutcome {
                        message_id: job.message_id.clone(),
                        position: r.position,
                        status,
                        next_attempt_ms: now + HOUR_MS,
                        reply: reply.to_owned(),
                        host: Some(format!("mx.{}", job.domain)),
                        warned: false,
                        new_address: None,
                    }
                })
            })
            .collect();
        self.rt
            .block_on(self.store.record_delivery(&outcomes, &[], now))
            .unwrap();
    }

    fn entry(&self, id: &str) -> Option<portcullis_store::QueueEntry> {
        self.rt.block_on(self.store.queue_entry(id)).unwrap()
    }

    /// Q1: one recipient, deferred. Q2: null sender, three recipients
    /// (delivered, bounced, deferred). Q3: delivered (finished). Q4: queued,
    /// never attempted.
    fn seeded() -> Queue {
        let q = Queue::new();
        q.enqueue("Q1", "alice@example.com", &["bob@example.net"], 300);
        q.enqueue(
            "Q2",
            "",
            &["x@example.org", "y@example.org", "z@example.net"],
            200,
        );
        q.enqueue("Q3", "carol@example.com", &["d@example.org"], 100);
        q.attempt(|address| match address {
            "bob@example.net" | "z@example.net" => (
                DeliveryStatus::Deferred,
                "451 4.7.1 Greylisted, please try again later (this reply is long enough to be cut in the list)",
            ),
            "y@example.org" => (DeliveryStatus::Bounced, "550 5.1.1 no such user"),
            _ => (DeliveryStatus::Delivered, "250 2.0.0 OK queued as 12345"),
        });
        q.enqueue("Q4", "dave@example.com", &["e@example.com"], 0);
        q
    }
}

/// The table row starting with `id`, split on runs of two or more spaces.
fn row(out: &Run, id: &str) -> Vec<String> {
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("{id} ")))
        .unwrap_or_else(|| panic!("no row {id} in\n{}", out.stdout));
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect()
}

fn ids(out: &Run) -> Vec<String> {
    out.stdout
        .lines()
        .skip(1)
        .filter(|l| l.starts_with('Q'))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect()
}

#[test]
fn list_empty() {
    let q = Queue::new();
    assert_eq!(
        q.run(&["queue", "list"]).ok().stdout.trim(),
        "Queue is empty"
    );
    assert!(
        q.run(&["queue", "list", "--all"])
            .ok()
            .stdout
            .starts_with("Queue is empty")
    );
    assert_eq!(q.run(&["queue", "list", "--json"]).ok().stdout, "");
    let out = q.run(&["queue", "list", "--status", "deferred"]).ok();
    assert!(out.stdout.contains("No pending message"), "{}", out.stdout);
}

#[test]
fn list_shows_each_message_and_filters_by_status() {
    let q = Queue::seeded();
    let out = q.run(&["queue", "list"]).ok();
    let header = out.stdout.lines().next().unwrap();
    for column in [
        "ID",
        "RECEIVED",
        "SENDER",
        "RECIPIENTS",
        "STATUS",
        "ATTEMPTS",
        "NEXT ATTEMPT",
        "LAST REPLY",
    ] {
        assert!(header.contains(column), "{header}");
    }
    // Oldest first; the finished Q3 only with --all.
    assert_eq!(ids(&out), ["Q1", "Q2", "Q4"]);
    assert!(out.stdout.contains("3 messages queued"), "{}", out.stdout);

    let q1 = row(&out, "Q1");
    assert_eq!(
        q1[2..6],
        ["alice@example.com", "bob@example.net", "deferred", "1"]
    );
    assert!(q1[1].ends_with('Z'), "{q1:?}");
    assert!(q1[6].ends_with('Z'), "next attempt in an hour: {q1:?}");
    assert!(q1[7].starts_with("451 4.7.1 Greylisted"), "{q1:?}");
    assert!(
        q1[7].ends_with('…') && q1[7].chars().count() == 60,
        "cut to 60 characters: {q1:?}"
    );

    let q2 = row(&out, "Q2");
    assert_eq!(
        q2[2..6],
        ["<>", "3", "1 delivered, 1 deferred, 1 bounced", "1"]
    );
    // The reply of the pending recipient, not of the final ones.
    assert!(q2[7].starts_with("451 4.7.1"), "{q2:?}");

    let q4 = row(&out, "Q4");
    assert_eq!(
        q4[2..],
        [
            "dave@example.com",
            "e@example.com",
            "queued",
            "0",
            "now",
            "-"
        ]
    );

    let all = q.run(&["queue", "list", "--all"]).ok();
    assert_eq!(ids(&all), ["Q1", "Q2", "Q3", "Q4"]);
    assert_eq!(row(&all, "Q3")[4..7], ["delivered", "1", "-"]);
    assert!(
        all.stdout.contains("4 messages (3 pending, 1 finished)"),
        "{}",
        all.stdout
    );

    let status = |args: &[&str]| {
        let mut full = vec!["queue", "list", "--status"];
        full.extend_from_slice(args);
        ids(&q.run(&full).ok())
    };
    assert_eq!(status(&["deferred"]), ["Q1", "Q2"]);
    assert_eq!(status(&["BOUNCED"]), ["Q2"]);
    assert_eq!(status(&["queued"]), ["Q4"]);
    assert_eq!(status(&["delivered"]), ["Q2"]);
    assert_eq!(status(&["delivered", "--all"]), ["Q2", "Q3"]);
    assert!(status(&["inflight"]).is_empty());

    q.run(&["queue", "list", "--status", "stuck"])
        .fails_naming("valid: queued, inflight, delivered, deferred, bounced");
}

#[test]
fn list_json() {
    let q = Queue::seeded();
    let out = q.run(&["queue", "list", "--json", "--all"]).ok();
    let entries: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 4);
    let q2 = &entries[1];
    assert_eq!(q2["id"], "Q2");
    assert_eq!(q2["sender"], "");
    assert_eq!(q2["status"], "1 delivered, 1 deferred, 1 bounced");
    assert_eq!(q2["attempts"], 1);
    let recipients = q2["recipients"].as_array().unwrap();
    assert_eq!(recipients.len(), 3);
    assert_eq!(recipients[1]["address"], "y@example.org");
    assert_eq!(recipients[1]["status"], "bounced");
    assert_eq!(recipients[1]["last_reply"], "550 5.1.1 no such user");
    assert_eq!(recipients[1]["last_host"], "mx.example.org");
    assert!(recipients[1]["next_attempt"].is_null());
    assert!(recipients[2]["next_attempt"].is_string());
    assert!(entries[2]["done_at"].is_i64(), "{}", entries[2]);
    assert!(entries[3]["done_at"].is_null());
}

#[test]
fn show_prints_recipients_and_history() {
    let q = Queue::seeded();
    let out = q.run(&["queue", "show", "Q2"]).ok();
    let text = &out.stdout;
    for needle in [
        "Message:     Q2",
        "Sender:      <>",
        "Spool file:  spool/Q2.eml",
        "Status:      1 delivered, 1 deferred, 1 bounced",
        "3 recipients:",
        "History (3 events):",
        "550 5.1.1 no such user",
        "250 2.0.0 OK queued as 12345",
        "mx.example.net",
    ] {
        assert!(text.contains(needle), "{needle:?} in\n{text}");
    }
    let recipient = |address: &str| -> String {
        text.lines()
            .find(|l| l.starts_with(address))
            .unwrap_or_else(|| panic!("{address} in {text}"))
            .to_owned()
    };
    let y = recipient("y@example.org");
    assert!(y.contains("bounced") && y.contains("mx.example.org"), "{y}");
    let z = recipient("z@example.net");
    assert!(
        z.contains("deferred") && z.contains("Z  mx.example.net"),
        "{z}"
    );
    // The reply is shown in full, not cut.
    assert!(z.contains("cut in the list)"), "{z}");
    // Events: time, recipient, outcome, host, reply.
    let history: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("History"))
        .skip(2)
        .collect();
    assert_eq!(history.len(), 3, "{text}");
    for (address, outcome, host) in [
        ("x@example.org", "delivered", "mx.example.org"),
        ("y@example.org", "bounced", "mx.example.org"),
        ("z@example.net", "deferred", "mx.example.net"),
    ] {
        let line = history
            .iter()
            .find(|l| l.contains(address))
            .unwrap_or_else(|| panic!("no event for {address} in {text}"));
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert!(cells[0].ends_with('Z'), "{line}");
        assert_eq!(cells[1..4], [address, outcome, host], "{line}");
    }

    let finished = q.run(&["queue", "show", "Q3"]).ok();
    assert!(
        finished
            .stdout
            .contains("Status:      delivered (finished "),
        "{}",
        finished.stdout
    );

    let fresh = q.run(&["queue", "show", "Q4"]).ok();
    assert!(
        fresh.stdout.contains("History: no delivery attempts yet"),
        "{}",
        fresh.stdout
    );

    q.run(&["queue", "show", "NOPE"])
        .fails_naming("no queued message with id NOPE");
}

#[test]
fn retry_one_or_all() {
    let q = Queue::seeded();
    let later = now_ms() + HOUR_MS / 2;
    let out = q.run(&["queue", "retry", "Q1"]).ok();
    assert!(
        out.stdout
            .contains("Scheduled 1 recipient of message Q1 for immediate delivery"),
        "{}",
        out.stdout
    );
    let q1 = q.entry("Q1").unwrap();
    assert!(q1.recipients[0].next_attempt_ms < later);
    assert_eq!(q1.recipients[0].status, DeliveryStatus::Deferred);
    // Q2's deferred recipient is still an hour away.
    assert!(q.entry("Q2").unwrap().recipients[2].next_attempt_ms > later);
    assert_eq!(row(&q.run(&["queue", "list"]).ok(), "Q1")[6], "now");

    let out = q.run(&["queue", "retry", "Q3"]).ok();
    assert!(out.stdout.contains("Nothing to retry"), "{}", out.stdout);

    // Q1, Q2's deferred recipient and Q4.
    let out = q.run(&["queue", "retry", "--all"]).ok();
    assert!(
        out.stdout
            .contains("Scheduled 3 recipients for immediate delivery"),
        "{}",
        out.stdout
    );
    assert!(q.entry("Q2").unwrap().recipients[2].next_attempt_ms < later);
    // Final recipients are untouched.
    assert_eq!(
        q.entry("Q2").unwrap().recipients[1].status,
        DeliveryStatus::Bounced
    );

    q.run(&["queue", "retry", "NOPE"])
        .fails_naming("no queued message with id NOPE");
    // Exactly one of ID and --all: a usage error.
    for args in [&["queue", "retry"][..], &["queue", "retry", "Q1", "--all"]] {
        let out = q.run(args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("<ID|--all>"), "{}", out.stderr);
    }
}

#[test]
fn delete_removes_the_message_and_its_spool_file() {
    let q = Queue::seeded();
    assert!(q.spool_file("Q2").is_file());
    let out = q.run(&["queue", "delete", "Q2"]).ok();
    assert!(
        out.stdout
            .contains("Deleted message Q2 (3 recipients from <>) from the queue"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("Removed spool file"), "{}", out.stdout);
    assert!(!q.spool_file("Q2").exists());
    assert!(q.entry("Q2").is_none());
    assert!(
        q.rt.block_on(q.store.delivery_events("Q2"))
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids(&q.run(&["queue", "list", "--all"]).ok()),
        ["Q1", "Q3", "Q4"]
    );
    // The others keep their files.
    assert!(q.spool_file("Q1").is_file());

    q.run(&["queue", "delete", "Q2"])
        .fails_naming("no queued message with id Q2");

    // A spool file already gone is reported, not an error.
    std::fs::remove_file(q.spool_file("Q4")).unwrap();
    let out = q.run(&["queue", "delete", "Q4"]).ok();
    assert!(out.stdout.contains("was already gone"), "{}", out.stdout);
    assert!(q.entry("Q4").is_none());
}

#[test]
fn bounce_flags_pending_recipients() {
    let q = Queue::seeded();
    let out = q.run(&["queue", "bounce", "Q1"]).ok();
    assert!(
        out.stdout
            .contains("Flagged 1 recipient of message Q1 for bouncing"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("next queue scan and sends a DSN to alice@example.com"),
        "{}",
        out.stdout
    );
    let q1 = q.entry("Q1").unwrap();
    assert!(q1.recipients[0].admin_bounce);
    assert!(q1.recipients[0].next_attempt_ms <= now_ms());

    // Only Q2's deferred recipient; no DSN for a null sender.
    let out = q.run(&["queue", "bounce", "Q2"]).ok();
    assert!(out.stdout.contains("Flagged 1 recipient"), "{}", out.stdout);
    assert!(out.stdout.contains("no DSN is sent"), "{}", out.stdout);
    let q2 = q.entry("Q2").unwrap();
    assert_eq!(
        q2.recipients
            .iter()
            .map(|r| r.admin_bounce)
            .collect::<Vec<_>>(),
        [false, false, true]
    );
    let show = q.run(&["queue", "show", "Q2"]).ok();
    assert!(
        show.stdout.contains("deferred (bounce requested)"),
        "{}",
        show.stdout
    );

    let out = q.run(&["queue", "bounce", "Q3"]).ok();
    assert!(out.stdout.contains("Nothing to bounce"), "{}", out.stdout);

    q.run(&["queue", "bounce", "NOPE"])
        .fails_naming("no queued message with id NOPE");
}

#[test]
fn aliases() {
    let q = Queue::new();
    assert_eq!(q.run(&["alias", "list"]).ok().stdout.trim(), "No aliases");

    // Only on local domains; the store's reason is shown.
    q.run(&["alias", "add", "sales@example.com", "bob@example.net"])
        .fails_naming("example.com is not a local domain");
    q.run(&["domain", "add", "example.com"]).ok();

    let out = q
        .run(&["alias", "add", "Sales@Example.com", "bob@example.net"])
        .ok();
    assert_eq!(
        out.stdout.trim(),
        "Added alias sales@example.com -> bob@example.net"
    );
    let out = q
        .run(&["alias", "add", "@example.com", "postmaster@example.net"])
        .ok();
    assert!(
        out.stdout
            .starts_with("Added catch-all alias @example.com -> postmaster@example.net"),
        "{}",
        out.stdout
    );
    q.run(&["alias", "add", "sales@example.com", "carol@example.net"])
        .fails_naming("alias sales@example.com already exists");
    q.run(&["alias", "add", "@example.com", "carol@example.net"])
        .fails_naming("alias @example.com already exists");
    q.run(&["alias", "add", "not an address", "carol@example.net"])
        .fails_naming("\"not an address\" contains whitespace");
    q.run(&["alias", "add", "info@example.com", "nobody"])
        .fails_naming("alias target");

    let list = q.run(&["alias", "list"]).ok();
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", list.stdout);
    for header in ["ALIAS", "TARGET", "CREATED"] {
        assert!(lines[0].contains(header), "{}", lines[0]);
    }
    let cells: Vec<Vec<&str>> = lines[1..3]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(cells[0][..2], ["@example.com", "postmaster@example.net"]);
    assert_eq!(cells[1][..2], ["sales@example.com", "bob@example.net"]);
    assert!(cells[0][2].ends_with('Z'), "{:?}", cells[0]);
    assert_eq!(lines[3], "2 aliases");

    // The store resolves them as the server would.
    let resolve = |a: &str| q.rt.block_on(q.store.resolve_alias(a)).unwrap();
    assert_eq!(
        resolve("SALES@example.com").as_deref(),
        Some("bob@example.net")
    );
    assert_eq!(
        resolve("anyone@example.com").as_deref(),
        Some("postmaster@example.net")
    );

    q.run(&["alias", "remove", "SALES@example.com"]).ok();
    q.run(&["alias", "remove", "sales@example.com"])
        .fails_naming("alias sales@example.com not found");
    q.run(&["alias", "remove", "@example.com"]).ok();
    assert_eq!(q.run(&["alias", "list"]).ok().stdout.trim(), "No aliases");
    assert_eq!(resolve("anyone@example.com"), None);
}

/// Issue 9: small messages share a segment file. `queue show` prints the
/// reference; `queue delete` drops the message but never the segment, which
/// still holds the other message (the server's sweeper removes segments).
#[test]
fn segment_messages_show_their_range_and_delete_keeps_the_segment() {
    let q = Queue::new();
    let seg_dir = q.dir.path().join("spool/seg");
    std::fs::create_dir_all(&seg_dir).unwrap();
    let segment = seg_dir.join("00000000000000aa.seg");
    let bodies = [
        "Subject: S1\r\n\r\nfirst\r\n",
        "Subject: S2\r\n\r\nsecond\r\n",
    ];
    std::fs::write(&segment, bodies.concat()).unwrap();
    let mut offset = 0;
    for (id, body) in ["S1", "S2"].iter().zip(bodies) {
        let message = NewMessage {
            id: (*id).to_owned(),
            sender: "alice@example.com".to_owned(),
            recipients: vec!["bob@example.net".to_owned()],
            size: body.len() as u64,
            spool_path: format!("spool/seg/00000000000000aa.seg#{offset}+{}", body.len()),
            auth_user: None,
            client_ip: "192.0.2.7".to_owned(),
            received_at: now_ms() / 1000,
            usage_ms: vec![],
        };
        offset += body.len();
        q.rt.block_on(q.store.enqueue(&message)).unwrap();
    }
    let out = q.run(&["queue", "show", "S2"]).ok();
    let len = bodies[1].len();
    let start = bodies[0].len();
    assert!(
        out.stdout.contains(&format!(
            "Spool file:  spool/seg/00000000000000aa.seg#{start}+{len} ({len} bytes at offset {start} of segment spool/seg/00000000000000aa.seg)"
        )),
        "{}",
        out.stdout
    );
    let out = q.run(&["queue", "delete", "S1"]).ok();
    assert!(
        out.stdout
            .contains("Left segment spool/seg/00000000000000aa.seg in place"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("Removed spool file"), "{}", out.stdout);
    assert!(q.entry("S1").is_none());
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        bodies.concat().as_bytes(),
        "segment untouched"
    );
    assert!(q.entry("S2").is_some());
}

/// A queue row whose spool path points outside the data dir (or is
/// malformed) is deleted, but nothing is removed from the disk.
#[test]
fn delete_leaves_a_path_outside_the_data_dir_alone() {
    let q = Queue::new();
    for (id, path) in [("B1", "../outside.eml"), ("B2", "spool/seg/x.seg#1+")] {
        let message = NewMessage {
            id: id.to_owned(),
            sender: String::new(),
            recipients: vec!["bob@example.net".to_owned()],
            size: 1,
            spool_path: path.to_owned(),
            auth_user: None,
            client_ip: "192.0.2.7".to_owned(),
            received_at: now_ms() / 1000,
            usage_ms: vec![],
        };
        q.rt.block_on(q.store.enqueue(&message)).unwrap();
        let out = q.run(&["queue", "delete", id]).ok();
        assert!(out.stdout.contains("alone"), "{}", out.stdout);
        assert!(q.entry(id).is_none());
    }
}
