//! Segment files (issue 9): `spool/seg/<16 hex id>.seg`, each holding the
//! journal records (queue row and body, [`super::journal`]) of many small
//! messages back to back.
//!
//! - [`SegmentLog`] is owned by the committer task, the only writer. It
//!   appends a batch's records with one vectored write and one fdatasync, in
//!   one trip to the blocking pool, and fsyncs `spool/seg/` when it created
//!   the segment. It rolls over to a new segment at [`SEGMENT_SIZE`], at
//!   every start-up (ids only grow) and after any failed write or sync (the
//!   failed segment is never written again).
//! - [`Segments::recover`] replays, at start-up, the records after the
//!   store's journal mark.
//! - [`Sweeper`] deletes segments that are not being appended to and that no
//!   message that is not done refers to, and `spool/*.eml` files left by a
//!   crash between rename and commit.
//!
//! Why the sweeper cannot delete a segment still in use: the log publishes
//! a new segment's id in [`ActiveSegment`] *before* it creates the file, and
//! switches only between batches, after the previous batch's rows are
//! committed. The sweeper lists the directory first, then reads the active
//! id, then asks the store. So a listed segment older than the active id has
//! every row that will ever refer to it already committed, and the store
//! answer includes them.

use std::collections::HashSet;
use std::io::{IoSlice, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use portcullis_store::{JournalMark, Store, StoreError};

use super::spare::Spares;
use super::writer::blocking;
use crate::spool_ref::{SpoolRef, is_plain_relative};

/// A segment takes no more batches once it is this big.
pub const SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// How often the sweeper runs without being asked.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(300);

/// Least time between two sweeps asked for by delivery.
const SWEEP_MIN_GAP: Duration = Duration::from_secs(30);

/// A `spool/*.eml` file this old that no queue row names is an orphan.
const ORPHAN_AGE: Duration = Duration::from_secs(3600);

/// Where segments live, relative to the data dir.
const SEG_DIR: &str = crate::spool_ref::SEGMENT_DIR;

/// The id of the segment being appended to, shared by the log and the
/// sweeper.
#[derive(Debug, Default)]
pub struct ActiveSegment(Mutex<Option<u64>>);

impl ActiveSegment {
    fn get(&self) -> Option<u64> {
        self.0
            .lock()
            .map(|g| *g)
            .unwrap_or_else(|p| *p.into_inner())
    }

    fn set(&self, id: Option<u64>) {
        match self.0.lock() {
            Ok(mut g) => *g = id,
            Err(p) => *p.into_inner() = id,
        }
    }
}

/// The segment directory of one spool.
#[derive(Debug)]
pub struct Segments {
    data_dir: PathBuf,
    active: Arc<ActiveSegment>,
    /// No segment of this run has an id below this (larger than any found
    /// at start-up).
    first_id: u64,
    /// A segment takes no more batches once it is this big.
    size: u64,
    spares: Arc<Spares>,
    /// Tests: the next append writes its records, then fails as a failed
    /// fdatasync would, with this errno (0: none; -1: no errno).
    #[cfg(test)]
    pub(super) fail_next_sync: Arc<std::sync::atomic::AtomicI32>,
}

impl Segments {
    /// Creates `spool/seg/` (fsyncing `spool/` when it is new) and picks an
    /// id above every existing segment. Segments take no more batches once
    /// they are `size` octets ([`SEGMENT_SIZE`]; tests roll over sooner).
    pub(super) fn open_sized(data_dir: &Path, size: u64) -> std::io::Result<Segments> {
        let dir = data_dir.join(SEG_DIR);
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir)?;
            std::fs::File::open(data_dir.join("spool"))?.sync_all()?;
        }
        let newest = list(&dir)?.into_iter().map(|(id, _)| id).max();
        Ok(Segments {
            data_dir: data_dir.to_path_buf(),
            active: Arc::new(ActiveSegment::default()),
            first_id: newest.map_or(0, |id| id.saturating_add(1)),
            size,
            spares: Arc::new(Spares::open(&dir, size)?),
            #[cfg(test)]
            fail_next_sync: Arc::default(),
        })
    }

    /// The appender for the committer (call once).
    pub(crate) fn log(&self) -> SegmentLog {
        SegmentLog {
            dir: self.data_dir.join(SEG_DIR),
            active: None,
            shared: Arc::clone(&self.active),
            next_id: self.first_id,
            size: self.size,
            spares: Arc::clone(&self.spares),
            #[cfg(test)]
            fail_next_sync: Arc::clone(&self.fail_next_sync),
        }
    }

    pub(super) fn sweeper(&self) -> Sweeper {
        Sweeper {
            data_dir: self.data_dir.clone(),
            active: Arc::clone(&self.active),
        }
    }
}

/// Why start-up recovery failed.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("reading the segments: {0}")]
    Io(#[from] std::io::Error),
    #[error("recording their messages: {0}")]
    Store(#[from] StoreError),
}

impl Segments {
    /// Start-up recovery (issue 9, see [`super::journal`]): records the
    /// rows of the live records after the store's journal mark that the
    /// store does not hold, and moves the mark to this run's first segment,
    /// durably. Returns how many messages were recorded. Segments of a
    /// build without journal records are never read: with no mark yet,
    /// every row so far was committed synchronously.
    pub(super) async fn recover(&mut self, store: &dyn Store) -> Result<usize, RecoverError> {
        // The first segment of this run can then be a spare (spare.rs).
        self.spares.replenish();
        let mark = store.journal_mark().await?;
        // Never let this run's segments sort before the mark (a clock that
        // went back, or a mark moved past an abandoned segment).
        self.first_id = self
            .first_id
            .max(mark.map_or(0, |m| m.segment.saturating_add(1)));
        let done = JournalMark {
            segment: self.first_id,
            position: 0,
        };
        let Some(mark) = mark else {
            store.replay_journal(&[], done).await?;
            return Ok(0);
        };
        let dir = self.data_dir.join(SEG_DIR);
        let messages = blocking(move || {
            let mut segments = list(&dir)?;
            segments.retain(|(id, _)| *id >= mark.segment);
            segments.sort_unstable();
            let named = segments
                .into_iter()
                .map(|(id, path)| (id, path, Path::new(SEG_DIR).join(segment_name(id))))
                .collect();
            super::journal::replayable(named, mark)
        })
        .await??;
        let n = store.replay_journal(&messages, done).await?;
        if n > 0 {
            tracing::warn!(
                messages = n,
                "queued again from the spool journal: messages whose queue rows were lost in a crash"
            );
        }
        Ok(n)
    }
}

/// `<16 hex>.seg` -> id.
fn segment_id(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

fn segment_name(id: u64) -> String {
    format!("{id:016x}.seg")
}

/// The segment files in `dir`, by id.
fn list(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(id) = entry.file_name().to_str().and_then(segment_id)
            && entry.file_type().is_ok_and(|t| t.is_file())
        {
            out.push((id, entry.path()));
        }
    }
    Ok(out)
}

struct Active {
    id: u64,
    file: std::fs::File,
    len: u64,
}

/// The committer's appender.
pub(crate) struct SegmentLog {
    dir: PathBuf,
    active: Option<Active>,
    shared: Arc<ActiveSegment>,
    next_id: u64,
    size: u64,
    spares: Arc<Spares>,
    /// Tests: the next append writes its records, then fails as a failed
    /// fdatasync would, with this errno (0: none; -1: no errno).
    #[cfg(test)]
    pub(super) fail_next_sync: Arc<std::sync::atomic::AtomicI32>,
}

/// A record appended by [`SegmentLog::append`].
#[derive(Debug)]
pub(crate) struct Appended {
    /// Where the record starts in its segment.
    pub start: u64,
    /// Where its body is: the message's `spool_path`.
    pub body: SpoolRef,
    /// Where it ends: the journal mark once its row is committed.
    pub end: u64,
}

impl SegmentLog {
    /// Appends `records` (each a journal head and its body, see
    /// [`super::journal`]) to the active segment (a new one if there is
    /// none or it is full) and makes them durable: one vectored write, one
    /// fdatasync, and an fsync of `spool/seg/` if the segment was created.
    /// Returns the segment's id and each record's place, in order. On error
    /// nothing of the batch may be committed, and the segment is abandoned.
    pub(crate) async fn append(
        &mut self,
        records: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> std::io::Result<(u64, Vec<Appended>)> {
        let lens: Vec<(u64, u64)> = records
            .iter()
            .map(|(head, body)| (head.len() as u64, body.len() as u64))
            .collect();
        let total: u64 = lens.iter().map(|(h, b)| h + b).sum();
        let current = self.active.take();
        let roll = match &current {
            Some(a) => a.len > 0 && a.len.saturating_add(total) > self.size,
            None => true,
        };
        let (current, new_id) = if roll {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            let id = self.next_id.max(now);
            self.next_id = id.saturating_add(1);
            // Published before the file exists: see the module doc.
            self.shared.set(Some(id));
            drop(current);
            (None, Some(id))
        } else {
            (current, None)
        };
        let dir = self.dir.clone();
        let spares = Arc::clone(&self.spares);
        #[cfg(test)]
        let fail = self
            .fail_next_sync
            .swap(0, std::sync::atomic::Ordering::AcqRel);
        let result = blocking(move || -> std::io::Result<Active> {
            let mut active = match (current, new_id) {
                (Some(a), _) => a,
                (None, Some(id)) => {
                    let path = dir.join(segment_name(id));
                    // A pre-zeroed spare when one is ready (spare.rs).
                    let file = match spares.take(&path)? {
                        Some(file) => file,
                        None => std::fs::File::options()
                            .write(true)
                            .create_new(true)
                            .open(&path)?,
                    };
                    Active { id, file, len: 0 }
                }
                (None, None) => return Err(std::io::Error::other("no active segment")),
            };
            write_all_vectored(&mut active.file, &records)?;
            #[cfg(test)]
            match fail {
                0 => {}
                -1 => return Err(std::io::Error::other("injected fdatasync failure")),
                errno => return Err(std::io::Error::from_raw_os_error(errno)),
            }
            active.file.sync_data()?;
            if new_id.is_some() {
                std::fs::File::open(&dir)?.sync_all()?;
            }
            Ok(active)
        })
        .await
        .and_then(|r| r);
        let mut active = match result {
            Ok(a) => a,
            Err(e) => {
                self.abandon();
                return Err(e);
            }
        };
        if new_id.is_some() {
            self.spares.replenish();
        }
        let path = Path::new(SEG_DIR).join(segment_name(active.id));
        let mut appended = Vec::with_capacity(lens.len());
        let mut offset = active.len;
        for (head, len) in lens {
            let body = offset + head;
            appended.push(Appended {
                start: offset,
                body: SpoolRef::Segment {
                    path: path.clone(),
                    offset: body,
                    len,
                },
                end: body + len,
            });
            offset = body + len;
        }
        active.len = offset;
        let id = active.id;
        self.active = Some(active);
        Ok((id, appended))
    }

    /// Marks the records starting at `starts` in the active segment void
    /// (their rows were not committed: replay must skip them) and makes
    /// that durable. On error the segment is abandoned.
    pub(crate) async fn void(&mut self, starts: Vec<u64>) -> std::io::Result<()> {
        let Some(active) = self.active.take() else {
            return Err(std::io::Error::other("no active segment"));
        };
        let result = blocking(move || -> std::io::Result<Active> {
            use std::os::unix::fs::FileExt;
            for start in starts {
                active.file.write_all_at(
                    &super::journal::VOID_STATE,
                    start + super::journal::STATE_OFFSET,
                )?;
            }
            active.file.sync_data()?;
            Ok(active)
        })
        .await
        .and_then(|r| r);
        match result {
            Ok(active) => {
                self.active = Some(active);
                Ok(())
            }
            Err(e) => {
                self.abandon();
                Err(e)
            }
        }
    }

    /// The lowest id a segment appended to from now on can have.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Never writes to the current segment again (its write or sync
    /// failed).
    fn abandon(&mut self) {
        self.active = None;
        self.shared.set(None);
    }
}

fn write_all_vectored(
    file: &mut std::fs::File,
    records: &[(Vec<u8>, Vec<u8>)],
) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = records
        .iter()
        .flat_map(|(head, body)| [IoSlice::new(head), IoSlice::new(body)])
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Why a sweep stopped early (nothing was deleted after the error).
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("listing the spool: {0}")]
    Io(#[from] std::io::Error),
    #[error("asking the store which bodies are in use: {0}")]
    Store(#[from] StoreError),
}

/// What one sweep deleted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Segment files deleted.
    pub segments: usize,
    /// Orphan `spool/*.eml` files deleted.
    pub orphans: usize,
}

/// Deletes segments no live message refers to. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Sweeper {
    data_dir: PathBuf,
    active: Arc<ActiveSegment>,
}

impl Sweeper {
    /// One sweep: every segment in `spool/seg/` that is not the active one
    /// (nor newer) and is named by no message that is not done, and every
    /// `spool/*.eml` older than an hour named by none, is deleted.
    pub async fn sweep(&self, store: &dyn Store) -> Result<SweepReport, SweepError> {
        // Order matters (module doc): list, then read the active id, then
        // ask the store.
        let seg_dir = self.data_dir.join(SEG_DIR);
        let spool_dir = self.data_dir.join("spool");
        let (segments, emls) = blocking(move || -> std::io::Result<_> {
            Ok((list(&seg_dir)?, old_eml_files(&spool_dir)?))
        })
        .await??;
        let active = self.active.get();
        let live: HashSet<PathBuf> = store
            .live_spool_files()
            .await?
            .into_iter()
            .filter(|p| is_plain_relative(p))
            .map(|p| self.data_dir.join(p))
            .collect();
        let doomed_segments: Vec<PathBuf> = segments
            .into_iter()
            .filter(|(id, path)| active.is_none_or(|a| *id < a) && !live.contains(path))
            .map(|(_, path)| path)
            .collect();
        let doomed_emls: Vec<PathBuf> = emls.into_iter().filter(|p| !live.contains(p)).collect();
        // A segment no live row names may still hold the journal records
        // of file messages (their rows name their own files) whose unsynced
        // commits are not durable yet: make them durable before the records
        // go (issue 9, journal.rs).
        if !doomed_segments.is_empty() {
            store.sync_commits().await?;
        }
        let report = SweepReport {
            segments: doomed_segments.len(),
            orphans: doomed_emls.len(),
        };
        blocking(move || {
            for path in doomed_segments.iter().chain(&doomed_emls) {
                match std::fs::remove_file(path) {
                    Ok(()) => tracing::info!(path = %path.display(), "removed unused spool file"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(error = %e, path = %path.display(), "cannot remove unused spool file")
                    }
                }
            }
        })
        .await?;
        Ok(report)
    }

    /// Sweeps at start, then every [`SWEEP_INTERVAL`] or when `trigger` is
    /// notified (delivery finished segment messages), at most once per
    /// 30 seconds. Runs until aborted.
    pub async fn run(self, store: Arc<dyn Store>, trigger: Arc<tokio::sync::Notify>) {
        loop {
            match self.sweep(&*store).await {
                Ok(r) if r != SweepReport::default() => {
                    tracing::info!(segments = r.segments, orphans = r.orphans, "spool swept");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "spool sweep failed"),
            }
            tokio::time::sleep(SWEEP_MIN_GAP).await;
            let rest = SWEEP_INTERVAL.saturating_sub(SWEEP_MIN_GAP);
            tokio::select! {
                () = tokio::time::sleep(rest) => {}
                () = trigger.notified() => {}
            }
        }
    }
}

/// `spool/*.eml` files older than [`ORPHAN_AGE`].
fn old_eml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let now = SystemTime::now();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "eml") {
            continue;
        }
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let old = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age >= ORPHAN_AGE);
        if meta.is_file() && old {
            out.push(path);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_name(255), "00000000000000ff.seg");
        assert_eq!(segment_id("00000000000000ff.seg"), Some(255));
        assert_eq!(segment_id("ff.seg"), None);
        assert_eq!(segment_id("00000000000000ff.eml"), None);
        assert_eq!(segment_id("zzzzzzzzzzzzzzzz.seg"), None);
    }

    /// A journal record for `body` (the row does not matter here).
    fn rec(body: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let message = portcullis_store::NewMessage {
            id: "Q".into(),
            sender: String::new(),
            recipients: vec!["x@example.net".into()],
            size: body.len() as u64,
            spool_path: String::new(),
            auth_user: None,
            client_ip: "192.0.2.1".into(),
            received_at: 1,
            usage_ms: Vec::new(),
        };
        let head = super::super::journal::record_head(&message, body).unwrap();
        (head, body.to_vec())
    }

    #[tokio::test]
    async fn batches_append_to_one_segment_with_distinct_ranges() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("spool")).unwrap();
        let segments = Segments::open_sized(dir.path(), SEGMENT_SIZE).unwrap();
        let mut log = segments.log();
        let (id, first) = log
            .append(vec![rec(b"one\r\n"), rec(b"second\r\n")])
            .await
            .unwrap();
        let (same, second) = log.append(vec![rec(b"third\r\n")]).await.unwrap();
        assert_eq!(id, same);
        let all: Vec<_> = first.iter().chain(&second).collect();
        assert_eq!(all.len(), 3);
        assert!(all.iter().all(|a| a.body.file() == all[0].body.file()));
        let bodies: Vec<Vec<u8>> = all
            .iter()
            .map(|a| a.body.read_all(dir.path()).unwrap())
            .collect();
        assert_eq!(bodies, [&b"one\r\n"[..], b"second\r\n", b"third\r\n"]);
        // Records follow each other; the journal scan finds them all.
        assert_eq!(all[0].start, 0);
        assert_eq!(all[1].start, all[0].end);
        assert_eq!(second[0].start, first[1].end);
        let seg = std::fs::read(dir.path().join(all[0].body.file())).unwrap();
        let (records, end) = super::super::journal::scan(&seg, 0);
        assert_eq!(records.len(), 3);
        assert_eq!(end, second[0].end);
        // Voiding marks exactly that record, durably, and appends go on.
        log.void(vec![first[1].start]).await.unwrap();
        let seg = std::fs::read(dir.path().join(all[0].body.file())).unwrap();
        let voids: Vec<bool> = super::super::journal::scan(&seg, 0)
            .0
            .iter()
            .map(|r| r.void)
            .collect();
        assert_eq!(voids, [false, true, false]);
        log.append(vec![rec(b"fourth\r\n")]).await.unwrap();
        // A restart never appends to an old segment.
        drop(log);
        let mut log = Segments::open_sized(dir.path(), SEGMENT_SIZE)
            .unwrap()
            .log();
        let (_, after) = log.append(vec![rec(b"x")]).await.unwrap();
        assert_ne!(after[0].body.file(), all[0].body.file());
        assert!(after[0].body.file() > all[0].body.file(), "ids only grow");
    }
}
