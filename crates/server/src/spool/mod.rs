//! Durable acceptance: message bodies go to the spool, then into the queue.
//!
//! Two ways in (issue 9), with the same guarantee: a session answers 250
//! only after the message's bytes and its queue row are durable. A crash
//! before that leaves at most unreferenced bytes, never an acknowledged
//! message without its body.
//!
//! - **Small messages** (up to `[spool] memory_threshold`, within the
//!   shared `memory_budget`) are held in memory during DATA ([`writer`])
//!   and handed to the committer with their bytes. The committer appends
//!   every such message of a batch, as a journal record carrying its queue
//!   row ([`journal`]), to the active segment `spool/seg/<id>.seg`,
//!   fdatasyncs it once (and fsyncs `spool/seg/` when the segment is new),
//!   then commits the batch's rows without a second sync; a row's
//!   `spool_path` is `spool/seg/<id>.seg#<offset>+<len>`
//!   ([`crate::spool_ref`]). [`Spool::recover`] re-records at start-up the
//!   rows a crash lost.
//! - **Big messages** are written to `incoming/<id>` (from offset
//!   [`writer::HEADER_ROOM`], the room for the header fields added at the
//!   end of DATA), fdatasynced and renamed to `spool/<id>.eml` by the
//!   session; the committer fsyncs `spool/` once per batch before the rows
//!   are committed. The row names the range: `spool/<id>.eml#<start>+<len>`.
//!
//! Segments are never appended to after a restart or a failed write, and are
//! deleted by the [`segment::Sweeper`] once no message that is not done
//! refers to them.

pub(crate) mod journal;
#[cfg(test)]
mod recovery_tests;
pub mod segment;
mod spare;
#[cfg(test)]
mod tests;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use portcullis_proto::{EnqueueOutcome, Envelope, ForwardPath, ReversePath};

use crate::commit::{CommitError, Committer, Payload};
use crate::config::SpoolConfig;
use crate::spool_ref::SpoolRef;
use portcullis_store::{NewMessage, Store, StoreError};
use tokio::io::AsyncWriteExt;
use writer::{Body, Lease, MemoryBudget, blocking};

pub use writer::{Readable, SpoolWriter};

/// Where spool files live.
#[derive(Debug)]
pub struct Spool {
    data_dir: PathBuf,
    /// Told when a message is queued, so the queue manager starts at once.
    wake: Arc<tokio::sync::Notify>,
    incoming: PathBuf,
    spool: PathBuf,
    /// Segment files and which one is being appended to.
    segments: segment::Segments,
    /// Bodies held in memory by all sessions (`[spool] memory_budget`).
    budget: Arc<MemoryBudget>,
    /// `[spool] memory_threshold`.
    threshold: u64,
    /// Group commit of segment appends, directory fsyncs and queue rows
    /// (issue 9), started with the store of the first commit.
    committer: std::sync::OnceLock<Committer>,
    /// Committed spilled messages that were hashed for DKIM as they were
    /// written (see [`Spool::hashed_spills`]).
    hashed_spills: std::sync::atomic::AtomicU64,
}

/// Facts about the connection recorded with the message.
#[derive(Clone, Debug)]
pub struct Origin {
    pub client_ip: std::net::IpAddr,
    pub hostname: String,
    /// TLS version and cipher, when TLS is up.
    pub tls: Option<String>,
}

fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) || e.raw_os_error() == Some(28)
}

impl Spool {
    /// Creates the spool directories, drops what a crash left in
    /// `incoming/` and picks the id of this run's first segment.
    pub fn open(data_dir: &Path, config: &SpoolConfig) -> std::io::Result<Spool> {
        Spool::open_sized(data_dir, config, segment::SEGMENT_SIZE)
    }

    /// A spool with the default config whose segments roll over at `size`
    /// octets (tests).
    #[cfg(test)]
    pub(crate) fn open_with_segment_size(data_dir: &Path, size: u64) -> Spool {
        match Spool::open_sized(data_dir, &SpoolConfig::defaults(), size) {
            Ok(spool) => spool,
            Err(e) => panic!("opening the spool: {e}"),
        }
    }

    fn open_sized(data_dir: &Path, config: &SpoolConfig, size: u64) -> std::io::Result<Spool> {
        let incoming = data_dir.join("incoming");
        let spool = data_dir.join("spool");
        std::fs::create_dir_all(&incoming)?;
        std::fs::create_dir_all(&spool)?;
        // Files left in incoming/ by a crash were never acknowledged: drop them.
        for entry in std::fs::read_dir(&incoming)?.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                tracing::info!(path = %entry.path().display(), "removing unacknowledged partial message");
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let segments = segment::Segments::open_sized(data_dir, size)?;
        Ok(Spool {
            data_dir: data_dir.to_path_buf(),
            wake: Arc::new(tokio::sync::Notify::new()),
            incoming,
            spool,
            segments,
            budget: MemoryBudget::new(config.memory_budget),
            threshold: config.memory_threshold,
            committer: std::sync::OnceLock::new(),
            hashed_spills: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Start-up recovery (issue 9): queues again every message of the
    /// segment journal whose row a crash lost (see [`journal`]). Call once,
    /// after [`Spool::open`] and before the first commit or sweep. Returns
    /// how many messages were queued again.
    pub async fn recover(&mut self, store: &dyn Store) -> Result<usize, segment::RecoverError> {
        self.segments.recover(store).await
    }

    /// Tests: the next segment append writes its records, then fails as a
    /// failed fdatasync would, with `errno` (`None`: an error without one).
    #[cfg(test)]
    pub(crate) fn fail_next_segment_sync(&self, errno: Option<i32>) {
        self.segments
            .fail_next_sync
            .store(errno.unwrap_or(-1), std::sync::atomic::Ordering::Release);
    }

    /// Starts a message with our Received header. Nothing touches the disk
    /// until the message outgrows memory (or `memory_threshold` is 0).
    pub async fn begin(&self, envelope: Envelope, origin: Origin) -> SpoolWriter {
        let id = new_queue_id();
        let header = received_header(&id, &envelope, &origin);
        let envelope_is_submission = envelope.auth_user.is_some();
        let mut writer = SpoolWriter {
            spill_path: self.incoming.join(&id),
            id,
            envelope,
            origin,
            size: 0,
            body_offset: header.len() as u64,
            body: Body::Memory {
                // Allocated by the first write, once the budget grants it.
                buf: Vec::new(),
                lease: Lease::new(&self.budget),
            },
            failed: None,
            threshold: self.threshold,
            received: Vec::new(),
            hasher: None,
            stream_hash: envelope_is_submission,
        };
        writer.write(header.as_bytes()).await;
        writer
    }

    /// Makes the message durable and records it in the queue.
    /// `usage_ms`: plan reservations to persist with the message (issue 5).
    pub async fn commit(
        &self,
        mut w: SpoolWriter,
        store: &Arc<dyn Store>,
        usage_ms: Vec<i64>,
    ) -> EnqueueOutcome {
        if w.hashed_spill() {
            self.hashed_spills
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(e) = w.failed.take() {
            tracing::error!(error = %e, "spool write failed");
            self.discard_body(&w.body).await;
            return io_outcome(&e);
        }
        let mut message = NewMessage {
            id: w.id.clone(),
            sender: match &w.envelope.from {
                ReversePath::Null => String::new(),
                ReversePath::Mailbox(m) => m.to_string(),
            },
            recipients: w
                .envelope
                .recipients
                .iter()
                .map(|r| recipient_text(r, &w.origin.hostname))
                .collect(),
            size: w.size,
            // Set by the committer for a segment message.
            spool_path: String::new(),
            auth_user: w.envelope.auth_user.clone(),
            client_ip: w.origin.client_ip.to_string(),
            received_at: time::OffsetDateTime::now_utc().unix_timestamp(),
            usage_ms,
        };
        // `_lease` keeps the body counted until the committer has it on disk.
        let (payload, final_path, _lease) = match w.body {
            Body::Memory { buf, lease } => (Payload::Segment(buf), None, Some(lease)),
            Body::File {
                path,
                file,
                pending,
                start,
                ..
            } => {
                let final_name = format!("{}.eml", w.id);
                let final_path = self.spool.join(&final_name);
                if let Err(e) = finish_file(file, pending, &path, &final_path).await {
                    tracing::error!(error = %e, "spool fsync/rename failed");
                    self.discard(&path).await;
                    self.discard(&final_path).await;
                    return io_outcome(&e);
                }
                let file_ref = Path::new("spool").join(&final_name);
                message.spool_path = if start == 0 {
                    SpoolRef::File(file_ref)
                } else {
                    SpoolRef::FileRange {
                        path: file_ref,
                        offset: start,
                        len: w.size,
                    }
                }
                .to_string();
                (Payload::File, Some(final_path), None)
            }
        };
        let committer = self.committer.get_or_init(|| {
            Committer::start(Arc::clone(store), self.spool.clone(), self.segments.log())
        });
        match committer.commit(message, payload).await {
            (Some(message), Ok(())) => {
                tracing::info!(
                    target: "portcullis::mail",
                    event = "queued",
                    queue_id = %message.id,
                    from = %message.sender,
                    nrcpt = message.recipients.len(),
                    size = message.size,
                    auth_user = message.auth_user.as_deref().unwrap_or(""),
                    "message queued"
                );
                self.wake.notify_one();
                EnqueueOutcome::Queued { id: w.id }
            }
            (_, Ok(())) => {
                self.wake.notify_one();
                EnqueueOutcome::Queued { id: w.id }
            }
            (_, Err(e)) => {
                tracing::error!(error = %e, queue_id = %w.id, "queue commit failed");
                if let Some(path) = &final_path {
                    self.discard(path).await;
                }
                match e {
                    CommitError::Directory(e) | CommitError::Segment(e) => io_outcome(&e),
                    CommitError::Store(StoreError::Unavailable(m)) if m.contains("full") => {
                        EnqueueOutcome::InsufficientStorage
                    }
                    _ => EnqueueOutcome::TemporaryFailure,
                }
            }
        }
    }

    /// Drops an unfinished message.
    pub async fn abort(&self, w: SpoolWriter) {
        self.discard_body(&w.body).await;
    }

    async fn discard_body(&self, body: &Body) {
        if let Body::File { path, .. } = body {
            self.discard(path).await;
        }
    }

    async fn discard(&self, path: &Path) {
        if let Err(e) = tokio::fs::remove_file(path).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, path = %path.display(), "cannot remove spool file");
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The notifier the queue manager waits on.
    pub fn wake_handle(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.wake)
    }

    /// The segment sweeper of this spool (run it with the store).
    pub fn sweeper(&self) -> segment::Sweeper {
        self.segments.sweeper()
    }

    /// Spilled submissions committed since start that were hashed for DKIM
    /// as they were written (issue 9): those whose From: domain has an
    /// active key, and those that spilled before their header block ended.
    pub fn hashed_spills(&self) -> u64 {
        self.hashed_spills
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Octets of message bodies held in memory now, by all sessions.
    pub fn memory_in_use(&self) -> u64 {
        self.budget.used()
    }
}

/// Writes what is left of a spilled message, fdatasyncs it and renames it
/// into `spool/`, in one trip to the blocking pool. The directory fsync is
/// the committer's, once per batch, so fdatasync is enough here.
async fn finish_file(
    file: Option<std::fs::File>,
    pending: Vec<u8>,
    tmp: &Path,
    dest: &Path,
) -> std::io::Result<()> {
    use std::io::Write;
    let Some(mut file) = file else {
        return Err(std::io::Error::other("spool file is not open"));
    };
    let (tmp, dest) = (tmp.to_path_buf(), dest.to_path_buf());
    blocking(move || {
        file.write_all(&pending)?;
        file.sync_data()?;
        drop(file);
        std::fs::rename(tmp, dest)
    })
    .await?
}

/// Writes a message we generate (a DSN) durably as `spool/<id>.eml`, in the
/// same order as accepted mail (file fsync, rename, directory fsync), and
/// returns its path relative to the data dir.
pub async fn write_generated(data_dir: &Path, id: &str, body: &[u8]) -> std::io::Result<String> {
    let tmp = data_dir.join("incoming").join(id);
    let name = format!("{id}.eml");
    let spool = data_dir.join("spool");
    let final_path = spool.join(&name);
    let result = async {
        let mut f = tokio::fs::File::create(&tmp).await?;
        f.write_all(body).await?;
        f.flush().await?;
        f.sync_all().await?;
        drop(f);
        tokio::fs::rename(&tmp, &final_path).await?;
        tokio::task::spawn_blocking(move || std::fs::File::open(spool)?.sync_all())
            .await
            .map_err(std::io::Error::other)?
    }
    .await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&tmp).await;
        let _ = tokio::fs::remove_file(&final_path).await;
        return Err(e);
    }
    Ok(Path::new("spool").join(name).to_string_lossy().into_owned())
}

fn io_outcome(e: &std::io::Error) -> EnqueueOutcome {
    if is_disk_full(e) {
        EnqueueOutcome::InsufficientStorage
    } else {
        EnqueueOutcome::TemporaryFailure
    }
}

/// `<Postmaster>` without a domain means this host's postmaster (RFC 5321 4.5.1).
fn recipient_text(r: &ForwardPath, hostname: &str) -> String {
    match r {
        ForwardPath::Postmaster => format!("postmaster@{hostname}"),
        ForwardPath::Mailbox(m) => m.to_string(),
    }
}

/// A sortable, unique queue id: 11 hex digits of Unix milliseconds, 5 random.
pub fn new_queue_id() -> String {
    let ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    let r: u32 = rand::random::<u32>() & 0xF_FFFF;
    format!("{ms:011X}{r:05X}")
}

/// RFC 5321 4.4 trace header; protocol keyword per RFC 3848.
pub fn received_header(id: &str, env: &Envelope, origin: &Origin) -> String {
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    let helo: String = env
        .helo
        .chars()
        .filter(|c| !c.is_control())
        .take(255)
        .collect();
    let mut h = format!(
        "Received: from {helo} ([{ip}])\r\n\tby {host} (Portcullis) with {proto} id {id}",
        ip = origin.client_ip,
        host = origin.hostname,
        proto = env.protocol(),
    );
    if let Some(tls) = &origin.tls {
        h.push_str(&format!("\r\n\t({tls})"));
    }
    if let [only] = env.recipients.as_slice() {
        h.push_str(&format!(
            "\r\n\tfor <{}>",
            recipient_text(only, &origin.hostname)
        ));
    }
    h.push_str(&format!(";\r\n\t{date}\r\n"));
    h
}
