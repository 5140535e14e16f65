//! `portcullis queue ...`: the delivery queue. Lists and shows messages with
//! the state of each recipient and the history of delivery attempts, and lets
//! the admin retry, delete or bounce them.
//!
//! These commands only change the database: the running server's queue
//! manager picks the changes up at its next queue scan (within seconds).

use std::path::Path;

use anyhow::anyhow;
use clap::{ArgGroup, Args, Subcommand};
use portcullis_server::config::Config;
use portcullis_server::spool_ref::SpoolRef;
use portcullis_store::{
    DeliveryRecipient, DeliveryStatus, QueueEntry, SqliteStore, Store, StoreError,
};
use serde_json::json;

use crate::common::{
    format_time, format_time_ms, now_ms, open_store, plural, print_table, store_error,
};

/// LAST REPLY column width in `queue list`, in characters.
const REPLY_COLUMN_CHARS: usize = 60;

#[derive(Debug, Args)]
pub struct QueueArgs {
    #[command(subcommand)]
    command: QueueCommand,
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// List the messages waiting for delivery, oldest first.
    List {
        /// Only messages with at least one recipient in this status:
        /// queued, inflight, deferred, delivered or bounced.
        #[arg(long, value_name = "STATUS")]
        status: Option<String>,
        /// Include finished messages (every recipient delivered or bounced)
        /// whose history is still kept.
        #[arg(long)]
        all: bool,
        /// Print one JSON object per message instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a message: its recipients and every delivery attempt.
    Show {
        /// The queue id (as `queue list` shows it).
        id: String,
    },
    /// Make deferred recipients due now (one message, or every one with --all).
    #[command(group(ArgGroup::new("which").required(true).args(["id", "all"])))]
    Retry {
        /// The queue id.
        id: Option<String>,
        /// Retry every queued and deferred recipient of every message.
        #[arg(long)]
        all: bool,
    },
    /// Delete a message from the queue, with its spool file, without a bounce.
    Delete {
        /// The queue id.
        id: String,
    },
    /// Give up on a message: the server bounces its pending recipients (a
    /// DSN to the sender) at its next queue scan.
    Bounce {
        /// The queue id.
        id: String,
    },
}

pub async fn run(args: QueueArgs, config: &Config) -> anyhow::Result<()> {
    // Check arguments before touching the database.
    let status = match &args.command {
        QueueCommand::List {
            status: Some(text), ..
        } => Some(parse_status(text)?),
        _ => None,
    };
    let store = open_store(config).await?;
    let result = match args.command {
        QueueCommand::List { all, json, .. } => list(&store, status, all, json).await,
        QueueCommand::Show { id } => show(&store, &id).await,
        QueueCommand::Retry { id, .. } => retry(&store, id.as_deref()).await,
        QueueCommand::Delete { id } => delete(&store, &config.data_dir, &id).await,
        QueueCommand::Bounce { id } => bounce(&store, &id).await,
    };
    store.close().await;
    result
}

fn parse_status(text: &str) -> anyhow::Result<DeliveryStatus> {
    DeliveryStatus::parse(text).ok_or_else(|| {
        let valid: Vec<&str> = DeliveryStatus::ALL.iter().map(|s| s.as_str()).collect();
        anyhow!(
            "--status: unknown status {text:?} (valid: {})",
            valid.join(", ")
        )
    })
}

/// The error for an unknown queue id; other store errors as usual.
fn queue_error(id: &str, error: StoreError) -> anyhow::Error {
    match error {
        StoreError::NotFound(_) => not_found(id),
        other => store_error("message", other),
    }
}

fn not_found(id: &str) -> anyhow::Error {
    anyhow!(
        "no queued message with id {} (see `portcullis queue list --all`)",
        id.trim()
    )
}

async fn entry(store: &SqliteStore, id: &str) -> anyhow::Result<QueueEntry> {
    store
        .queue_entry(id)
        .await
        .map_err(|e| queue_error(id, e))?
        .ok_or_else(|| not_found(id))
}

async fn list(
    store: &SqliteStore,
    status: Option<DeliveryStatus>,
    all: bool,
    json: bool,
) -> anyhow::Result<()> {
    let entries = store
        .queue_entries(status, all)
        .await
        .map_err(|e| store_error("message", e))?;
    let now = now_ms();
    if json {
        for entry in &entries {
            println!("{}", entry_json(entry));
        }
        return Ok(());
    }
    if entries.is_empty() {
        match (status, all) {
            (None, false) => println!("Queue is empty"),
            (None, true) => println!("Queue is empty (no pending or finished messages)"),
            (Some(s), false) => println!(
                "No pending message has a {s} recipient (finished messages are listed with --all)"
            ),
            (Some(s), true) => println!("No message has a {s} recipient"),
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.id.clone(),
                format_time(e.received_at),
                sender_text(&e.sender),
                recipients_text(&e.recipients),
                status_summary(&e.recipients),
                max_attempts(&e.recipients).to_string(),
                next_attempt(&e.recipients).map_or_else(|| "-".to_owned(), |t| when(t, now)),
                last_reply(&e.recipients).map_or_else(
                    || "-".to_owned(),
                    |r| truncate(&one_line(r), REPLY_COLUMN_CHARS),
                ),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "RECEIVED",
            "SENDER",
            "RECIPIENTS",
            "STATUS",
            "ATTEMPTS",
            "NEXT ATTEMPT",
            "LAST REPLY",
        ],
        &rows,
    );
    let pending = entries.iter().filter(|e| e.done_at.is_none()).count();
    if all {
        println!(
            "{} ({} pending, {} finished)",
            plural(entries.len(), "message"),
            pending,
            entries.len() - pending
        );
    } else {
        println!("{} queued", plural(entries.len(), "message"));
    }
    Ok(())
}

async fn show(store: &SqliteStore, id: &str) -> anyhow::Result<()> {
    let e = entry(store, id).await?;
    let events = store
        .delivery_events(&e.id)
        .await
        .map_err(|err| queue_error(id, err))?;
    let now = now_ms();
    println!("Message:     {}", e.id);
    println!("Received:    {}", format_time(e.received_at));
    println!("Sender:      {}", sender_text(&e.sender));
    println!("Size:        {} bytes", e.size);
    println!("Auth user:   {}", e.auth_user.as_deref().unwrap_or("-"));
    println!("Client IP:   {}", e.client_ip);
    match SpoolRef::parse(&e.spool_path) {
        Ok(SpoolRef::Segment { path, offset, len }) => println!(
            "Spool file:  {} ({len} bytes at offset {offset} of segment {})",
            e.spool_path,
            path.display()
        ),
        _ => println!("Spool file:  {}", e.spool_path),
    }
    match e.done_at {
        Some(done) => println!(
            "Status:      {} (finished {})",
            status_summary(&e.recipients),
            format_time(done)
        ),
        None => println!("Status:      {}", status_summary(&e.recipients)),
    }
    println!();
    println!("{}:", plural(e.recipients.len(), "recipient"));
    let rows: Vec<Vec<String>> = e
        .recipients
        .iter()
        .map(|r| {
            let mut status = r.status.to_string();
            if r.admin_bounce && !r.status.is_final() {
                status.push_str(" (bounce requested)");
            }
            if r.warned && !r.status.is_final() {
                status.push_str(" (delay warning sent)");
            }
            vec![
                r.address.clone(),
                status,
                r.attempts.to_string(),
                if is_pending(r) {
                    when(r.next_attempt_ms, now)
                } else {
                    "-".to_owned()
                },
                r.last_host.clone().unwrap_or_else(|| "-".to_owned()),
                r.last_reply
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), one_line),
            ]
        })
        .collect();
    print_table(
        &[
            "RECIPIENT",
            "STATUS",
            "ATTEMPTS",
            "NEXT ATTEMPT",
            "LAST HOST",
            "LAST REPLY",
        ],
        &rows,
    );
    println!();
    if events.is_empty() {
        println!("History: no delivery attempts yet");
        return Ok(());
    }
    println!("History ({}):", plural(events.len(), "event"));
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|ev| {
            vec![
                format_time(ev.at_ms.div_euclid(1000)),
                ev.recipient.clone(),
                ev.outcome.clone(),
                ev.host.clone().unwrap_or_else(|| "-".to_owned()),
                one_line(&ev.reply),
            ]
        })
        .collect();
    print_table(&["TIME", "RECIPIENT", "OUTCOME", "HOST", "REPLY"], &rows);
    Ok(())
}

async fn retry(store: &SqliteStore, id: Option<&str>) -> anyhow::Result<()> {
    let count = store
        .retry_now(id, now_ms())
        .await
        .map_err(|e| queue_error(id.unwrap_or_default(), e))?;
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    match (id, count) {
        (Some(id), 0) => println!(
            "Nothing to retry: message {} has no queued or deferred recipient",
            id.trim()
        ),
        (None, 0) => println!("Nothing to retry: no queued or deferred recipient"),
        (Some(id), n) => println!(
            "Scheduled {} of message {} for immediate delivery",
            plural(n, "recipient"),
            id.trim()
        ),
        (None, n) => println!(
            "Scheduled {} for immediate delivery",
            plural(n, "recipient")
        ),
    }
    if count > 0 {
        println!("The running server attempts them at its next queue scan.");
    }
    Ok(())
}

async fn delete(store: &SqliteStore, data_dir: &Path, id: &str) -> anyhow::Result<()> {
    let e = entry(store, id).await?;
    let spool_path = store
        .delete_message(&e.id)
        .await
        .map_err(|err| queue_error(id, err))?;
    println!(
        "Deleted message {} ({} from {}) from the queue",
        e.id,
        plural(e.recipients.len(), "recipient"),
        sender_text(&e.sender)
    );
    if e.recipients
        .iter()
        .any(|r| r.status == DeliveryStatus::InFlight)
    {
        println!("Note: a delivery attempt was under way; it may still complete.");
    }
    let file = match SpoolRef::parse(&spool_path) {
        Ok(SpoolRef::File(file) | SpoolRef::FileRange { path: file, .. }) => data_dir.join(file),
        Ok(SpoolRef::Segment { path, .. }) => {
            // Issue 9: the segment holds other messages; the server's
            // sweeper deletes it once none of them is needed.
            println!(
                "Left segment {} in place (shared with other messages; the server removes it when unused)",
                path.display()
            );
            return Ok(());
        }
        Err(_) => {
            println!("Left spool file {spool_path} alone (not a path inside the data dir)");
            return Ok(());
        }
    };
    match std::fs::remove_file(&file) {
        Ok(()) => println!("Removed spool file {}", file.display()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            println!("Spool file {} was already gone", file.display());
        }
        Err(err) => {
            return Err(anyhow!(
                "message {} deleted from the queue, but its spool file {} could not be removed: {err}",
                e.id,
                file.display()
            ));
        }
    }
    Ok(())
}

async fn bounce(store: &SqliteStore, id: &str) -> anyhow::Result<()> {
    let e = entry(store, id).await?;
    let count = store
        .request_bounce(&e.id, now_ms())
        .await
        .map_err(|err| queue_error(id, err))?;
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    if count == 0 {
        println!(
            "Nothing to bounce: every recipient of message {} is already delivered or bounced",
            e.id
        );
        return Ok(());
    }
    println!(
        "Flagged {} of message {} for bouncing",
        plural(count, "recipient"),
        e.id
    );
    let them = if count == 1 { "it" } else { "them" };
    if e.sender.is_empty() {
        println!(
            "The running server bounces {them} at its next queue scan; no DSN is sent \
             (the message has a null sender <>)."
        );
    } else {
        println!(
            "The running server bounces {them} at its next queue scan and sends a DSN to {}.",
            e.sender
        );
    }
    if e.recipients
        .iter()
        .any(|r| r.status == DeliveryStatus::InFlight)
    {
        println!("(A recipient being delivered right now is bounced only if that attempt fails.)");
    }
    Ok(())
}

// --- Presentation -----------------------------------------------------------

fn sender_text(sender: &str) -> String {
    if sender.is_empty() {
        "<>".to_owned()
    } else {
        sender.to_owned()
    }
}

/// The address if there is one recipient, else the count.
fn recipients_text(recipients: &[DeliveryRecipient]) -> String {
    match recipients {
        [one] => one.address.clone(),
        many => many.len().to_string(),
    }
}

/// `deferred` when every recipient shares one status, else the counts, e.g.
/// `2 delivered, 1 deferred`.
fn status_summary(recipients: &[DeliveryRecipient]) -> String {
    let counts: Vec<(DeliveryStatus, usize)> = DeliveryStatus::ALL
        .iter()
        .map(|s| (*s, recipients.iter().filter(|r| r.status == *s).count()))
        .filter(|(_, n)| *n > 0)
        .collect();
    match counts.as_slice() {
        [] => "-".to_owned(),
        [(status, _)] => status.to_string(),
        many => many
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn max_attempts(recipients: &[DeliveryRecipient]) -> u32 {
    recipients.iter().map(|r| r.attempts).max().unwrap_or(0)
}

fn is_pending(r: &DeliveryRecipient) -> bool {
    matches!(r.status, DeliveryStatus::Queued | DeliveryStatus::Deferred)
}

/// The earliest next attempt among queued and deferred recipients.
fn next_attempt(recipients: &[DeliveryRecipient]) -> Option<i64> {
    recipients
        .iter()
        .filter(|r| is_pending(r))
        .map(|r| r.next_attempt_ms)
        .min()
}

/// A due time: `now` when already due, else RFC 3339.
fn when(at_ms: i64, now_ms: i64) -> String {
    if at_ms <= now_ms {
        "now".to_owned()
    } else {
        format_time_ms(at_ms)
    }
}

/// The reply most worth showing: that of a recipient still pending, else any.
fn last_reply(recipients: &[DeliveryRecipient]) -> Option<&str> {
    let pending = recipients
        .iter()
        .filter(|r| !r.status.is_final())
        .find_map(|r| r.last_reply.as_deref());
    pending.or_else(|| recipients.iter().find_map(|r| r.last_reply.as_deref()))
}

/// Remote text on one line: control characters and runs of whitespace
/// become one space, so a reply cannot break the table.
fn one_line(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let joined = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.is_empty() {
        "-".to_owned()
    } else {
        joined
    }
}

/// At most `max` characters, the last being `…` when cut.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn entry_json(e: &QueueEntry) -> serde_json::Value {
    let recipients: Vec<serde_json::Value> = e
        .recipients
        .iter()
        .map(|r| {
            json!({
                "address": r.address,
                "domain": r.domain,
                "status": r.status.as_str(),
                "attempts": r.attempts,
                "next_attempt": is_pending(r).then(|| format_time_ms(r.next_attempt_ms)),
                "next_attempt_ms": r.next_attempt_ms,
                "last_host": r.last_host,
                "last_reply": r.last_reply,
                "warned": r.warned,
                "bounce_requested": r.admin_bounce,
            })
        })
        .collect();
    json!({
        "id": e.id,
        "received": format_time(e.received_at),
        "received_at": e.received_at,
        "sender": e.sender,
        "size": e.size,
        "auth_user": e.auth_user,
        "client_ip": e.client_ip,
        "spool_path": e.spool_path,
        "status": status_summary(&e.recipients),
        "attempts": max_attempts(&e.recipients),
        "next_attempt_ms": next_attempt(&e.recipients),
        "done_at": e.done_at,
        "recipients": recipients,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipient(status: DeliveryStatus, attempts: u32, next: i64) -> DeliveryRecipient {
        DeliveryRecipient {
            position: 0,
            address: "a@example.net".into(),
            domain: "example.net".into(),
            status,
            attempts,
            next_attempt_ms: next,
            last_reply: None,
            last_host: None,
            warned: false,
            admin_bounce: false,
        }
    }

    #[test]
    fn summaries() {
        use DeliveryStatus::*;
        let one = [recipient(Deferred, 2, 5)];
        assert_eq!(status_summary(&one), "deferred");
        let mixed = [
            recipient(Delivered, 1, 0),
            recipient(Deferred, 3, 9),
            recipient(Delivered, 1, 0),
            recipient(Queued, 0, 7),
        ];
        assert_eq!(status_summary(&mixed), "1 queued, 2 delivered, 1 deferred");
        assert_eq!(max_attempts(&mixed), 3);
        assert_eq!(next_attempt(&mixed), Some(7));
        assert_eq!(next_attempt(&[recipient(Bounced, 1, 3)]), None);
    }

    #[test]
    fn text_cells() {
        assert_eq!(
            one_line("451 4.7.1\r\n  try\tlater "),
            "451 4.7.1 try later"
        );
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
        assert_eq!(
            parse_status(" Deferred ").ok(),
            Some(DeliveryStatus::Deferred)
        );
        let err = parse_status("stuck").err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "--status: unknown status \"stuck\" \
                 (valid: queued, inflight, delivered, deferred, bounced)"
            )
        );
        assert!(SpoolRef::parse("spool/ab/X.eml").is_ok());
        assert!(SpoolRef::parse("/etc/passwd").is_err());
        assert!(SpoolRef::parse("spool/../../x").is_err());
    }
}
