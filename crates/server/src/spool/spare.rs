//! Pre-zeroed segment files (issue 9).
//!
//! An fdatasync after appending to a file must also write its inode (the
//! size changed): on the benchmark machine's ext4 that is a second
//! synchronous device write, 150–210 µs per fdatasync against 95–125 µs
//! for overwriting blocks already written. So a new segment is, when one
//! is ready, a file of [`super::segment::SEGMENT_SIZE`] zeros written and
//! synced in the background beforehand (`spool/seg/next.spare`), renamed to
//! the segment's name; its batches then overwrite zeros. Readers never see
//! the difference: a message's range names its bytes, and the journal scan
//! stops at the zeros after the last record as it does at a file's end.
//!
//! The spare's names are not segment names, so neither the sweeper nor
//! recovery ever lists them. When no spare is ready the segment is created
//! empty, as before.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A spare ready to be renamed into a segment.
const SPARE: &str = "next.spare";
/// A spare being written; never used.
const SPARE_TMP: &str = "next.spare.tmp";

/// Prepares spare segments in one directory, one at a time.
#[derive(Debug)]
pub(super) struct Spares {
    dir: PathBuf,
    size: u64,
    preparing: Arc<AtomicBool>,
}

impl Spares {
    /// Spares of `size` octets in `dir`. Removes a half-written spare left
    /// by a crash and a spare of another size (blocking; at start-up).
    pub(super) fn open(dir: &Path, size: u64) -> std::io::Result<Spares> {
        remove_if_present(&dir.join(SPARE_TMP))?;
        let spare = dir.join(SPARE);
        if std::fs::metadata(&spare).is_ok_and(|m| !m.is_file() || m.len() != size) {
            remove_if_present(&spare)?;
        }
        Ok(Spares {
            dir: dir.to_path_buf(),
            size,
            preparing: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Starts writing a spare on the blocking pool, unless one is ready or
    /// being written. A failure (a full disk) only means the next segment
    /// is created empty.
    pub(super) fn replenish(&self) {
        if self.dir.join(SPARE).exists() || self.preparing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (dir, size, preparing) = (self.dir.clone(), self.size, Arc::clone(&self.preparing));
        tokio::task::spawn_blocking(move || {
            if let Err(e) = prepare(&dir, size) {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot prepare a spare spool segment");
                let _ = std::fs::remove_file(dir.join(SPARE_TMP));
            }
            preparing.store(false, Ordering::Release);
        });
    }

    /// Blocking: renames the ready spare, if any, to `path` and opens it
    /// for writing from its start. `None` when no spare is ready.
    pub(super) fn take(&self, path: &Path) -> std::io::Result<Option<std::fs::File>> {
        match std::fs::rename(self.dir.join(SPARE), path) {
            Ok(()) => Ok(Some(std::fs::File::options().write(true).open(path)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Writes `size` zeros to the temporary name, syncs them, then renames:
/// a file named [`SPARE`] is always whole and durable.
fn prepare(dir: &Path, size: u64) -> std::io::Result<()> {
    let tmp = dir.join(SPARE_TMP);
    let mut file = std::fs::File::create(&tmp)?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left).map_or(zeros.len(), |l| l.min(zeros.len()));
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(SPARE))
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn wait_for_spare(dir: &Path) {
        for _ in 0..500 {
            if dir.join(SPARE).exists() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("no spare after 5 s");
    }

    #[tokio::test]
    async fn a_spare_is_zeros_of_the_size_and_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let spares = Spares::open(dir.path(), 3 << 20).unwrap();
        let target = dir.path().join("a.seg");
        assert!(spares.take(&target).unwrap().is_none(), "none ready yet");
        spares.replenish();
        spares.replenish(); // one at a time
        wait_for_spare(dir.path()).await;
        let mut file = spares.take(&target).unwrap().unwrap();
        file.write_all(b"record").unwrap();
        drop(file);
        let bytes = std::fs::read(&target).unwrap();
        assert_eq!(bytes.len(), 3 << 20);
        assert_eq!(&bytes[..6], b"record");
        assert!(bytes[6..].iter().all(|b| *b == 0));
        assert!(spares.take(&dir.path().join("b.seg")).unwrap().is_none());
    }

    #[tokio::test]
    async fn leftovers_of_a_crash_or_another_size_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SPARE_TMP), b"half").unwrap();
        std::fs::write(dir.path().join(SPARE), vec![0u8; 100]).unwrap();
        let spares = Spares::open(dir.path(), 200).unwrap();
        assert!(!dir.path().join(SPARE_TMP).exists());
        assert!(spares.take(&dir.path().join("x")).unwrap().is_none());
        // One of the right size is kept for use.
        std::fs::write(dir.path().join(SPARE), vec![0u8; 200]).unwrap();
        let spares = Spares::open(dir.path(), 200).unwrap();
        assert!(spares.take(&dir.path().join("x")).unwrap().is_some());
    }
}
