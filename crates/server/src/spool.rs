//! Durable acceptance: message bodies go to spool files, then into the queue.
//!
//! Order (DESIGN "Storage"): write to `incoming/<id>`, fsync the file, rename
//! into `spool/<id>.eml`, fsync the directory, then commit the queue row. Only
//! then may the session answer 250. A crash before the commit leaves at most an
//! orphan file, never an acknowledged message without its body.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use portcullis_proto::{EnqueueOutcome, Envelope, ForwardPath, ReversePath};

use crate::commit::{CommitError, Committer};
use portcullis_store::{NewMessage, Store, StoreError};
use tokio::io::AsyncWriteExt;

/// Where spool files live.
#[derive(Debug)]
pub struct Spool {
    data_dir: PathBuf,
    /// Told when a message is queued, so the queue manager starts at once.
    wake: Arc<tokio::sync::Notify>,
    incoming: PathBuf,
    spool: PathBuf,
    /// Group commit of directory fsyncs and queue rows (issue 9), started
    /// with the store of the first commit.
    committer: std::sync::OnceLock<Committer>,
}

/// Facts about the connection recorded with the message.
#[derive(Clone, Debug)]
pub struct Origin {
    pub client_ip: std::net::IpAddr,
    pub hostname: String,
    /// TLS version and cipher, when TLS is up.
    pub tls: Option<String>,
}

/// An open spool file for one message.
pub struct SpoolWriter {
    id: String,
    tmp_path: PathBuf,
    file: Option<tokio::fs::File>,
    envelope: Envelope,
    origin: Origin,
    size: u64,
    /// Length of the Received header at the start of the file: the
    /// client's message starts here.
    body_offset: u64,
    /// The first I/O error; reported at commit time.
    failed: Option<std::io::Error>,
}

fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) || e.raw_os_error() == Some(28)
}

impl Spool {
    pub fn open(data_dir: &Path) -> std::io::Result<Spool> {
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
        Ok(Spool {
            data_dir: data_dir.to_path_buf(),
            wake: Arc::new(tokio::sync::Notify::new()),
            incoming,
            spool,
            committer: std::sync::OnceLock::new(),
        })
    }

    /// Opens a spool file and writes the Received header.
    pub async fn begin(&self, envelope: Envelope, origin: Origin) -> SpoolWriter {
        let id = new_queue_id();
        let tmp_path = self.incoming.join(&id);
        let mut writer = SpoolWriter {
            id,
            tmp_path,
            file: None,
            envelope,
            origin,
            size: 0,
            body_offset: 0,
            failed: None,
        };
        match tokio::fs::File::create(&writer.tmp_path).await {
            Ok(f) => writer.file = Some(f),
            Err(e) => writer.failed = Some(e),
        }
        let header = received_header(&writer.id, &writer.envelope, &writer.origin);
        writer.write(header.as_bytes()).await;
        writer.body_offset = writer.size;
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
        if let Some(e) = w.failed.take() {
            tracing::error!(error = %e, "spool write failed");
            self.discard(&w.tmp_path).await;
            return io_outcome(&e);
        }
        let Some(mut file) = w.file.take() else {
            return EnqueueOutcome::TemporaryFailure;
        };
        let final_name = format!("{}.eml", w.id);
        let final_path = self.spool.join(&final_name);
        let durable = async {
            file.flush().await?;
            // fsync and rename in one trip to the blocking pool, not two;
            // the directory fsync is the committer's, once per batch.
            let file = file.into_std().await;
            let (tmp, dest) = (w.tmp_path.clone(), final_path.clone());
            tokio::task::spawn_blocking(move || {
                file.sync_all()?;
                drop(file);
                std::fs::rename(tmp, dest)
            })
            .await
            .map_err(std::io::Error::other)?
        };
        if let Err(e) = durable.await {
            tracing::error!(error = %e, "spool fsync/rename failed");
            self.discard(&w.tmp_path).await;
            self.discard(&final_path).await;
            return io_outcome(&e);
        }
        let message = NewMessage {
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
            spool_path: Path::new("spool")
                .join(&final_name)
                .to_string_lossy()
                .into_owned(),
            auth_user: w.envelope.auth_user.clone(),
            client_ip: w.origin.client_ip.to_string(),
            received_at: time::OffsetDateTime::now_utc().unix_timestamp(),
            usage_ms,
        };
        let committer = self
            .committer
            .get_or_init(|| Committer::start(Arc::clone(store), self.spool.clone()));
        match committer.commit(message).await {
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
                self.discard(&final_path).await;
                match e {
                    CommitError::Directory(e) => io_outcome(&e),
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
        drop(w.file);
        self.discard(&w.tmp_path).await;
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

impl SpoolWriter {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Appends content; the first error is kept and reported at commit.
    pub async fn write(&mut self, data: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if let Some(f) = &mut self.file {
            match f.write_all(data).await {
                Ok(()) => self.size += data.len() as u64,
                Err(e) => self.failed = Some(e),
            }
        }
    }
}

impl SpoolWriter {
    /// The envelope of the message being written.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// Flushes what was written and returns the unfinished file's path and
    /// where the client's message starts in it (after our Received header),
    /// so the message can be read back before commit (DKIM signing, inbound
    /// verification). `None` after a write error (commit reports it).
    pub async fn readable(&mut self) -> Option<(PathBuf, u64)> {
        if self.failed.is_some() {
            return None;
        }
        let file = self.file.as_mut()?;
        if let Err(e) = file.flush().await {
            self.failed = Some(e);
            return None;
        }
        Some((self.tmp_path.clone(), self.body_offset))
    }

    /// Inserts `headers` (complete CRLF-terminated fields) between our
    /// Received header and the client's message, by copying the file; the
    /// copy replaces the unfinished file, and commit makes it durable. Used
    /// only for messages that get headers added, so other mail is not
    /// copied.
    pub async fn insert_headers(&mut self, headers: &[u8]) {
        if headers.is_empty() || self.failed.is_some() {
            return;
        }
        if let Err(e) = self.rewrite(headers, None).await {
            self.failed = Some(e);
        }
    }

    /// Like [`SpoolWriter::insert_headers`], but the client's message is
    /// replaced by `message` (inbound mail whose forged
    /// Authentication-Results fields were renamed).
    pub async fn replace_message(&mut self, headers: &[u8], message: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if let Err(e) = self.rewrite(headers, Some(message)).await {
            self.failed = Some(e);
        }
    }

    async fn rewrite(&mut self, headers: &[u8], message: Option<&[u8]>) -> std::io::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let Some(mut old) = self.file.take() else {
            return Err(std::io::Error::other("spool file is not open"));
        };
        old.flush().await?;
        drop(old);
        let copy_path = self.tmp_path.with_extension("hdr");
        let result = async {
            let mut src = tokio::fs::File::open(&self.tmp_path).await?;
            let mut dst = tokio::fs::File::create(&copy_path).await?;
            let mut received = vec![0u8; usize::try_from(self.body_offset).unwrap_or(0)];
            src.read_exact(&mut received).await?;
            dst.write_all(&received).await?;
            dst.write_all(headers).await?;
            match message {
                Some(m) => dst.write_all(m).await?,
                None => {
                    src.seek(std::io::SeekFrom::Start(self.body_offset)).await?;
                    tokio::io::copy(&mut src, &mut dst).await?;
                }
            }
            tokio::fs::rename(&copy_path, &self.tmp_path).await?;
            Ok::<_, std::io::Error>(dst)
        }
        .await;
        match result {
            Ok(dst) => {
                self.file = Some(dst);
                self.size = self.body_offset
                    + headers.len() as u64
                    + match message {
                        Some(m) => m.len() as u64,
                        None => self.size - self.body_offset,
                    };
                Ok(())
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&copy_path).await;
                Err(e)
            }
        }
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
