//! The auth audit trail (issue 4 item 7): every AUTH attempt becomes one
//! [`AuthEvent`]. Events go through a bounded channel to a background task
//! that writes them to the store in batches (every 200 ms or 100 events) and
//! appends one line per event to the mail log. Recording never waits: when
//! the channel is full the event is dropped with a warning, so the SMTP reply
//! is never held up by the audit.
//!
//! Mail log line format (stable; the fail2ban filter in `contrib/` matches
//! `result=failure .* ip=<HOST>`):
//!
//! ```text
//! 2026-11-22T07:30:00Z portcullis[auth]: result=failure reason=bad_password user=alice@example.com ip=192.0.2.7 mechanism=PLAIN credential=password session=ab12cd34 listener=submission tls=TLSv1.3
//! ```
//!
//! Values never contain spaces, `=` or control characters: anything outside
//! printable ASCII (and `%`, `=`) in the claimed user is percent-encoded, so a
//! crafted user name cannot forge an `ip=` field. A missing value is `-`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use portcullis_store::{AuthEvent, Store};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Events written to the store in one transaction at most.
pub const BATCH_MAX: usize = 100;
/// Longest time an event waits for its batch.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(200);
/// Events queued before new ones are dropped.
const CHANNEL_CAPACITY: usize = 10_000;
/// Longest claimed user kept (characters).
const MAX_USER_CHARS: usize = 255;

/// Longest a shutdown waits for queued events to be written.
const FLUSH_BOUND: Duration = Duration::from_secs(5);

enum Msg {
    Event(AuthEvent),
    /// Write what is queued now, then answer.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The sending side; cheap to clone.
#[derive(Clone, Debug)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Event(_) => f.write_str("Event"),
            Msg::Flush(_) => f.write_str("Flush"),
        }
    }
}

impl AuditLog {
    /// Starts the writer task. It ends when every [`AuditLog`] is dropped,
    /// after writing what is queued.
    pub fn start(store: Arc<dyn Store>, mail_log: Option<PathBuf>) -> (AuditLog, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let task = tokio::spawn(writer(rx, store, mail_log));
        (AuditLog { tx }, task)
    }

    /// Queues `event`; never waits.
    pub fn record(&self, mut event: AuthEvent) {
        if event.user.chars().count() > MAX_USER_CHARS {
            event.user = event.user.chars().take(MAX_USER_CHARS).collect();
        }
        if let Err(e) = self.tx.try_send(Msg::Event(event)) {
            tracing::warn!(error = %e, "auth audit queue full: event dropped");
        }
    }

    /// Waits (at most 5 s) until every event recorded before this call is
    /// written. The server calls it at shutdown, before the store closes,
    /// so the last logins' events are not lost.
    pub async fn flush(&self) {
        let (ack, done) = tokio::sync::oneshot::channel();
        let flushed = async {
            if self.tx.send(Msg::Flush(ack)).await.is_ok() {
                let _ = done.await;
            }
        };
        if tokio::time::timeout(FLUSH_BOUND, flushed).await.is_err() {
            tracing::warn!("auth audit events not written within {FLUSH_BOUND:?} of shutdown");
        }
    }
}

async fn writer(mut rx: mpsc::Receiver<Msg>, store: Arc<dyn Store>, mail_log: Option<PathBuf>) {
    let mut batch: Vec<AuthEvent> = Vec::with_capacity(BATCH_MAX);
    loop {
        let mut ack = None;
        match rx.recv().await {
            None => break,
            Some(Msg::Event(first)) => batch.push(first),
            Some(Msg::Flush(a)) => ack = Some(a),
        }
        let deadline = tokio::time::Instant::now() + BATCH_INTERVAL;
        while ack.is_none() && batch.len() < BATCH_MAX {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Msg::Event(ev))) => batch.push(ev),
                Ok(Some(Msg::Flush(a))) => ack = Some(a),
                Ok(None) | Err(_) => break,
            }
        }
        flush(&store, mail_log.as_deref(), &mut batch).await;
        if let Some(ack) = ack {
            let _ = ack.send(());
        }
    }
    flush(&store, mail_log.as_deref(), &mut batch).await;
}

async fn flush(store: &Arc<dyn Store>, mail_log: Option<&Path>, batch: &mut Vec<AuthEvent>) {
    if batch.is_empty() {
        return;
    }
    if let Some(path) = mail_log
        && let Err(e) = append_lines(path, batch).await
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the mail log");
    }
    if let Err(e) = store.record_auth_events(batch).await {
        tracing::error!(error = %e, events = batch.len(), "cannot record auth events");
    }
    batch.clear();
}

async fn append_lines(path: &Path, batch: &[AuthEvent]) -> std::io::Result<()> {
    let mut text = String::with_capacity(batch.len() * 200);
    for ev in batch {
        text.push_str(&mail_log_line(ev));
        text.push('\n');
    }
    let path = path.to_path_buf();
    // One trip to the blocking pool for the directory, the open and the
    // write (through `tokio::fs` they were three, issue 9).
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        // Opened per batch: log rotation (move + create) needs no signal.
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        file.write_all(text.as_bytes())
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Percent-encodes everything but printable ASCII other than `%` and `=`.
fn field(value: &str) -> String {
    if value.is_empty() {
        return "-".to_owned();
    }
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_graphic() && b != b'%' && b != b'=' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `2026-11-22T07:30:00Z` for unix milliseconds.
pub fn timestamp(at_ms: i64) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from_unix_timestamp(at_ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

/// One mail log line (no newline) for `ev`.
pub fn mail_log_line(ev: &AuthEvent) -> String {
    format!(
        "{} portcullis[auth]: result={} reason={} user={} ip={} mechanism={} credential={} session={} listener={} tls={}",
        timestamp(ev.at_ms),
        if ev.success { "success" } else { "failure" },
        field(&ev.reason),
        field(&ev.user),
        field(&ev.client_ip),
        field(&ev.mechanism),
        field(ev.credential.as_deref().unwrap_or("")),
        field(&ev.session_id),
        field(&ev.listener),
        field(ev.tls.as_deref().unwrap_or("")),
    )
}

/// The TLS version out of a connection's TLS description
/// (`using TLSv1.3 with cipher ...` → `TLSv1.3`).
pub fn tls_version(description: &str) -> String {
    description
        .split_whitespace()
        .find(|w| w.starts_with("TLS"))
        .unwrap_or(description)
        .to_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn event() -> AuthEvent {
        AuthEvent {
            at_ms: 1_795_332_600_000,
            session_id: "ab12cd34".into(),
            listener: "submission".into(),
            client_ip: "192.0.2.7".into(),
            tls: Some("TLSv1.3".into()),
            user: "alice@example.com".into(),
            mechanism: "PLAIN".into(),
            credential: Some("password".into()),
            success: false,
            reason: "bad_password".into(),
        }
    }

    #[test]
    fn line_format_is_stable() {
        assert_eq!(
            mail_log_line(&event()),
            "2026-11-22T07:30:00Z portcullis[auth]: result=failure reason=bad_password \
             user=alice@example.com ip=192.0.2.7 mechanism=PLAIN credential=password \
             session=ab12cd34 listener=submission tls=TLSv1.3"
        );
    }

    #[test]
    fn crafted_user_cannot_forge_fields() {
        let mut ev = event();
        ev.user = "x ip=203.0.113.9\r\nfoo%".into();
        ev.tls = None;
        ev.credential = None;
        let line = mail_log_line(&ev);
        assert!(
            line.contains("user=x%20ip%3D203.0.113.9%0D%0Afoo%25 ip=192.0.2.7"),
            "{line}"
        );
        assert_eq!(line.matches(" ip=").count(), 1);
        assert!(line.ends_with("credential=- session=ab12cd34 listener=submission tls=-"));
    }

    #[test]
    fn tls_version_extracts_the_version() {
        assert_eq!(
            tls_version("using TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384"),
            "TLSv1.3"
        );
        assert_eq!(tls_version("assumed TLS"), "TLS");
    }
}
