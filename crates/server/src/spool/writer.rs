//! One message being received: held in memory while it is small, spilled to
//! its own file in `incoming/` when it grows past `[spool]
//! memory_threshold` or when the shared `memory_budget` is used up.
//!
//! Spilled writes are gathered into [`FLUSH_AT`]-octet blocks so that a big
//! message costs one blocking-pool trip per block, not per DATA chunk. This
//! module makes nothing durable: `Spool::commit` does (fdatasync + rename for
//! a file, the committer's segment append for memory).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use portcullis_proto::Envelope;

use super::Origin;
use crate::mail_auth::sign::MessageHasher;
use mail_auth::common::crypto::HashOutput;

/// Spilled data is written once this much has gathered, when the memory
/// budget grants a spilled writer that much ([`Lease`]): each write is a
/// trip to the blocking pool, two thread wake-ups, and at 64 KiB those were
/// the largest cost of receiving a 1 MiB message but for hashing it
/// (issue 9, scenario (c): 12% less server CPU per message with 256 KiB).
pub(super) const FLUSH_AT: usize = 256 * 1024;

/// Spilled data is written once this much has gathered when the budget is
/// used up (not counted against it, as before the budget grew to spilled
/// writers).
pub(super) const FLUSH_AT_UNBUDGETED: usize = 64 * 1024;

/// A message buffer's first allocation (our Received header and the start
/// of a small message fit).
const FIRST_ALLOCATION: usize = 4096;

/// A spilled message is written this far into its file. The hole before it
/// takes the header fields added at the end of DATA (DKIM signatures,
/// Message-ID, Authentication-Results: well under 4 KiB), so adding them is
/// one small write in front of the message instead of a copy of the whole
/// file (issue 9). The queue row names the range
/// (`spool/<id>.eml#<offset>+<len>`, [`crate::spool_ref::SpoolRef`]).
/// Fields that do not fit fall back to the copy.
pub(super) const HEADER_ROOM: u64 = 4096;

/// Octets of message bodies held in memory by every session together: the
/// capacity of each buffer, counted before it is allocated (a writer grows
/// its buffer itself, doubling, and only once the budget has granted it).
#[derive(Debug)]
pub(crate) struct MemoryBudget {
    used: AtomicU64,
    limit: u64,
}

impl MemoryBudget {
    pub(crate) fn new(limit: u64) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            used: AtomicU64::new(0),
            limit,
        })
    }

    /// Octets held now (for tests and metrics).
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

/// One writer's share of the [`MemoryBudget`]; given back on drop.
#[derive(Debug)]
pub(super) struct Lease {
    budget: Arc<MemoryBudget>,
    held: u64,
}

impl Lease {
    pub(super) fn new(budget: &Arc<MemoryBudget>) -> Lease {
        Lease {
            budget: Arc::clone(budget),
            held: 0,
        }
    }

    /// Grows the share to `total` octets if the budget has room.
    fn grow_to(&mut self, total: u64) -> bool {
        let Some(extra) = total.checked_sub(self.held) else {
            return true;
        };
        let limit = self.budget.limit;
        let granted = self
            .budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(extra).filter(|n| *n <= limit)
            })
            .is_ok();
        if granted {
            self.held = total;
        }
        granted
    }

    /// Grows the share to `total` even past the limit (a few header fields
    /// added to a message already in memory).
    fn force_to(&mut self, total: u64) {
        if let Some(extra) = total.checked_sub(self.held) {
            self.budget.used.fetch_add(extra, Ordering::AcqRel);
            self.held = total;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::AcqRel);
    }
}

/// Where the message is while it is received.
pub(super) enum Body {
    /// Our Received header and the client's data so far.
    Memory { buf: Vec<u8>, lease: Lease },
    /// Spilled to `incoming/<id>`; `pending` is not written yet, and is
    /// written once it holds `flush_at` octets (`lease` holds them in the
    /// budget, or nothing when the budget had no room). The message starts
    /// at `start` of the file (see [`HEADER_ROOM`]).
    File {
        path: PathBuf,
        file: Option<std::fs::File>,
        pending: Vec<u8>,
        flush_at: usize,
        lease: Lease,
        start: u64,
    },
}

/// One message being received. Writes never fail on the spot: the first
/// I/O error is kept and reported at commit (the client still gets to send
/// its final dot).
pub struct SpoolWriter {
    pub(super) id: String,
    pub(super) envelope: Envelope,
    pub(super) origin: Origin,
    /// Octets so far, our Received header included.
    pub(super) size: u64,
    /// Length of our Received header: the client's message starts here.
    pub(super) body_offset: u64,
    pub(super) body: Body,
    /// The first I/O error; reported at commit time.
    pub(super) failed: Option<std::io::Error>,
    /// Where a spilled message goes.
    pub(super) spill_path: PathBuf,
    /// Largest message kept in memory.
    pub(super) threshold: u64,
    /// Our Received header (the first `body_offset` octets), kept when the
    /// message spills (empty before): it is rewritten in front of the
    /// fields inserted into the file's header room.
    pub(super) received: Vec<u8>,
    /// A spilled submission's header block and DKIM body hash, fed as its
    /// blocks are written (issue 9), so signing reads nothing back. `None`
    /// in memory, for other messages, and once the header block grew past
    /// its bound.
    pub(super) hasher: Option<Box<MessageHasher>>,
    /// Whether a spill starts `hasher`: for submissions, until the session
    /// learns the message will not be signed ([`SpoolWriter::skip_stream_hash`]).
    pub(super) stream_hash: bool,
}

/// The client's message (after our Received header) as it is before
/// commit, to read back for DKIM signing and inbound verification.
pub enum Readable {
    /// A copy of the message held in memory.
    Memory(Vec<u8>),
    /// The unfinished spool file, from `offset`.
    File { path: PathBuf, offset: u64 },
}

impl Readable {
    /// A blocking reader over the message; run it on the blocking pool.
    pub fn open(self) -> std::io::Result<Box<dyn Read + Send>> {
        use std::io::{Seek, SeekFrom};
        match self {
            Readable::Memory(buf) => Ok(Box::new(std::io::Cursor::new(buf))),
            Readable::File { path, offset } => {
                let mut file = std::fs::File::open(path)?;
                file.seek(SeekFrom::Start(offset))?;
                Ok(Box::new(file))
            }
        }
    }

    /// The whole message.
    pub async fn read_all(self) -> std::io::Result<Vec<u8>> {
        match self {
            Readable::Memory(buf) => Ok(buf),
            file => blocking(move || {
                let mut raw = Vec::new();
                file.open()?.read_to_end(&mut raw)?;
                Ok(raw)
            })
            .await
            .and_then(|r| r),
        }
    }
}

/// Makes room for `total` octets in `buf`, the new capacity granted by the
/// budget first: doubling (from [`FIRST_ALLOCATION`]) like `Vec` would, but
/// never past `threshold`. `false` when the budget has no room.
fn reserve_counted(buf: &mut Vec<u8>, lease: &mut Lease, total: u64, threshold: u64) -> bool {
    let Ok(needed) = usize::try_from(total) else {
        return false;
    };
    if needed <= buf.capacity() {
        return true;
    }
    let cap = buf
        .capacity()
        .saturating_mul(2)
        .max(FIRST_ALLOCATION)
        .min(usize::try_from(threshold).unwrap_or(usize::MAX))
        .max(needed);
    if !lease.grow_to(cap as u64) {
        return false;
    }
    buf.reserve_exact(cap - buf.len());
    // `reserve_exact` may give more than asked: count what was given.
    lease.force_to(buf.capacity() as u64);
    true
}

/// Feeds `data` to `hasher`; `None` once its header block is past its
/// bound (the message is then signed from its read-back).
fn feed(mut hasher: Box<MessageHasher>, data: &[u8]) -> Option<Box<MessageHasher>> {
    hasher.feed_bounded(data).then_some(hasher)
}

/// Runs `f` on the blocking pool; a panicked task is an I/O error.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(std::io::Error::other)
}

impl SpoolWriter {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The envelope of the message being written.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// Whether the message is still held in memory (not spilled to a file).
    pub fn in_memory(&self) -> bool {
        matches!(self.body, Body::Memory { .. })
    }

    /// Whether writing `more` octets takes the message past the memory
    /// threshold, so that it spills to a file (it may also spill earlier,
    /// when the shared memory budget is used up).
    pub fn would_spill(&self, more: usize) -> bool {
        self.in_memory() && self.size.saturating_add(more as u64) > self.threshold
    }

    /// Whether a spill would hash the message for DKIM as it is written.
    pub fn stream_hash(&self) -> bool {
        self.stream_hash
    }

    /// The message will not be DKIM-signed (its From: domain has no active
    /// key): do not hash it as it is written. Hashing a spilled message
    /// costs about 1 ms of CPU per MiB (issue 9).
    pub fn skip_stream_hash(&mut self) {
        self.stream_hash = false;
        self.hasher = None;
    }

    /// Whether the message spilled with the streaming hash started (and
    /// not skipped since).
    pub(super) fn hashed_spill(&self) -> bool {
        self.stream_hash && !self.in_memory()
    }

    /// Appends content; the first error is kept and reported at commit.
    pub async fn write(&mut self, data: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        let total = self.size + data.len() as u64;
        let result = match &mut self.body {
            Body::Memory { buf, lease } => {
                if total <= self.threshold && reserve_counted(buf, lease, total, self.threshold) {
                    buf.extend_from_slice(data);
                    Ok(())
                } else {
                    let mut first = std::mem::take(buf);
                    first.extend_from_slice(data);
                    self.spill(first).await
                }
            }
            Body::File {
                pending, flush_at, ..
            } => {
                pending.extend_from_slice(data);
                if pending.len() >= *flush_at {
                    self.flush().await
                } else {
                    Ok(())
                }
            }
        };
        match result {
            Ok(()) => self.size = total,
            Err(e) => self.failed = Some(e),
        }
    }

    /// Moves the message to its own file: creates it and writes `data`
    /// (everything so far) in one trip to the blocking pool. The memory
    /// lease is given back.
    pub(super) async fn spill(&mut self, data: Vec<u8>) -> std::io::Result<()> {
        use std::io::{Seek, SeekFrom};
        let path = self.spill_path.clone();
        // `data` is the whole message so far: it starts with our header.
        let header_len = usize::try_from(self.body_offset).unwrap_or(usize::MAX);
        self.received = data.get(..header_len).unwrap_or_default().to_vec();
        // The memory lease of the in-memory body is given back here (the
        // old body is dropped); the write buffer takes a lease of its own.
        let budget = match &self.body {
            Body::Memory { lease, .. } | Body::File { lease, .. } => Arc::clone(&lease.budget),
        };
        let mut lease = Lease::new(&budget);
        self.body = Body::File {
            path: path.clone(),
            file: None,
            pending: Vec::new(),
            flush_at: 0,
            lease: Lease::new(&budget),
            start: HEADER_ROOM,
        };
        // Room for a block and a DATA chunk that completes it, allocated
        // once.
        let room = FLUSH_AT + FLUSH_AT_UNBUDGETED;
        let (flush_at, buffer) = if lease.grow_to(room as u64) {
            (FLUSH_AT, Vec::with_capacity(room))
        } else {
            (FLUSH_AT_UNBUDGETED, Vec::new())
        };
        if let Body::File {
            flush_at: f,
            lease: l,
            pending,
            ..
        } = &mut self.body
        {
            *f = flush_at;
            *l = lease;
            *pending = buffer;
        }
        // A submission will likely be signed: hash it as it is written.
        let hasher = self.stream_hash.then(|| Box::new(MessageHasher::new(b"")));
        let (file, hasher) = blocking(move || {
            let mut f = std::fs::File::create(&path)?;
            f.seek(SeekFrom::Start(HEADER_ROOM))?;
            f.write_all(&data)?;
            let hasher = hasher.and_then(|h| feed(h, data.get(header_len..).unwrap_or_default()));
            Ok::<_, std::io::Error>((f, hasher))
        })
        .await??;
        self.hasher = hasher;
        if let Body::File { file: slot, .. } = &mut self.body {
            *slot = Some(file);
        }
        Ok(())
    }

    /// For a spilled message whose blocks were hashed as they were
    /// written: the client's header block (ending in CRLF) and the DKIM
    /// relaxed body hash, after writing what is pending. `None` otherwise
    /// (read the message back with [`SpoolWriter::readable`]), and after a
    /// write error.
    pub async fn take_hashed(&mut self) -> Option<(Vec<u8>, HashOutput)> {
        if self.failed.is_some() || self.hasher.is_none() {
            return None;
        }
        if let Err(e) = self.flush().await {
            self.failed = Some(e);
            return None;
        }
        self.hasher.take().map(|h| h.finish())
    }

    /// Writes what is pending of a spilled message (one blocking trip).
    async fn flush(&mut self) -> std::io::Result<()> {
        let Body::File { file, pending, .. } = &mut self.body else {
            return Ok(());
        };
        if pending.is_empty() {
            return Ok(());
        }
        let Some(mut f) = file.take() else {
            return Err(std::io::Error::other("spool file is not open"));
        };
        let data = std::mem::take(pending);
        let hasher = self.hasher.take();
        let (f, data, result, hasher) = blocking(move || {
            let r = f.write_all(&data);
            let hasher = hasher.and_then(|h| feed(h, &data));
            (f, data, r, hasher)
        })
        .await?;
        self.hasher = hasher;
        if let Body::File { file, pending, .. } = &mut self.body {
            *file = Some(f);
            let mut data = data;
            data.clear();
            *pending = data;
        }
        result
    }

    /// Returns the client's message (after our Received header) for reading
    /// back before commit (DKIM signing, inbound verification). `None`
    /// after a write error (commit reports it).
    pub async fn readable(&mut self) -> Option<Readable> {
        if self.failed.is_some() {
            return None;
        }
        let offset = usize::try_from(self.body_offset).unwrap_or(usize::MAX);
        if let Body::Memory { buf, .. } = &self.body {
            return Some(Readable::Memory(
                buf.get(offset..).unwrap_or_default().to_vec(),
            ));
        }
        if let Err(e) = self.flush().await {
            self.failed = Some(e);
            return None;
        }
        match &self.body {
            Body::File { path, start, .. } => Some(Readable::File {
                path: path.clone(),
                offset: start + self.body_offset,
            }),
            Body::Memory { .. } => None,
        }
    }

    /// Inserts `headers` (complete CRLF-terminated fields) between our
    /// Received header and the client's message: a splice in memory; for a
    /// spilled file, our Received header and `headers` written into the
    /// hole before the message (or, when they do not fit, a copy of the file
    /// that replaces it). Commit makes it durable.
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
        let offset = usize::try_from(self.body_offset).map_err(std::io::Error::other)?;
        let new_size = self.body_offset
            + headers.len() as u64
            + match message {
                Some(m) => m.len() as u64,
                None => self.size - self.body_offset,
            };
        if let Body::Memory { buf, lease } = &mut self.body {
            match message {
                Some(m) => {
                    buf.truncate(offset);
                    buf.extend_from_slice(headers);
                    buf.extend_from_slice(m);
                }
                None => {
                    buf.splice(offset..offset, headers.iter().copied());
                }
            }
            lease.force_to(buf.capacity() as u64);
            self.size = new_size;
            return Ok(());
        }
        self.flush().await?;
        let Body::File {
            path, file, start, ..
        } = &mut self.body
        else {
            return Ok(());
        };
        let Some(old) = file.take() else {
            return Err(std::io::Error::other("spool file is not open"));
        };
        let room = *start;
        if message.is_none() && headers.len() as u64 <= room {
            // Received + headers end where the rest of the message starts.
            let mut front = Vec::with_capacity(self.received.len() + headers.len());
            front.extend_from_slice(&self.received);
            front.extend_from_slice(headers);
            let at = room - headers.len() as u64;
            let (f, result) = blocking(move || {
                let r = std::os::unix::fs::FileExt::write_all_at(&old, &front, at);
                (old, r)
            })
            .await?;
            *file = Some(f);
            result?;
            *start = at;
            self.size = new_size;
            return Ok(());
        }
        drop(old);
        let (tmp, copy) = (path.clone(), path.with_extension("hdr"));
        let (headers, message) = (headers.to_vec(), message.map(<[u8]>::to_vec));
        let body_offset = self.body_offset;
        let copied = blocking(move || {
            let result = (|| -> std::io::Result<std::fs::File> {
                use std::io::{Seek, SeekFrom};
                let mut src = std::fs::File::open(&tmp)?;
                src.seek(SeekFrom::Start(room))?;
                let mut dst = std::fs::File::create(&copy)?;
                std::io::copy(&mut (&mut src).take(body_offset), &mut dst)?;
                dst.write_all(&headers)?;
                match message {
                    Some(m) => dst.write_all(&m)?,
                    None => {
                        std::io::copy(&mut src, &mut dst)?;
                    }
                }
                std::fs::rename(&copy, &tmp)?;
                Ok(dst)
            })();
            if result.is_err() {
                let _ = std::fs::remove_file(&copy);
            }
            result
        })
        .await??;
        *file = Some(copied);
        *start = 0;
        self.size = new_size;
        Ok(())
    }
}
