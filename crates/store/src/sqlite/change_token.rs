//! The change token of directory data (issues 5 and 9): a cheap way for a
//! process to know whether accounts, domains, aliases, credentials, DKIM keys
//! or plans changed — in this process or in another one (the admin CLI) —
//! without a query.
//!
//! The token is a small file next to the database, `<db>-dirgen`, holding 8
//! random bytes. Every directory write, after its transaction commits,
//! overwrites those bytes in place with new random ones. A reader keeps the
//! file open and reads the 8 bytes with one `pread`: no query, no thread
//! hand-off, one system call. (A read that races a write may see a mix of
//! old and new bytes; that only differs from the old token too, so it only
//! empties a cache once more.) Readers reopen the file once a second, so
//! even a file deleted and recreated behind their back is followed within a
//! second. An in-process counter is part of the token too, so a write in
//! this process is seen even if writing the file failed.
//!
//! The file is a hint, not data: it is never fsynced, and losing it only
//! makes readers reload. When it cannot be read, [`ChangeToken::read`]
//! answers `None` and callers must not cache.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a reader keeps one open file before reopening the path.
const REOPEN_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(super) struct ChangeToken {
    path: PathBuf,
    local: AtomicU64,
    reader: Mutex<Option<(File, Instant)>>,
}

impl ChangeToken {
    /// The token of the database at `db_path`; creates the file if missing.
    pub(super) fn open(db_path: &Path) -> ChangeToken {
        let mut name = db_path.file_name().unwrap_or_default().to_os_string();
        name.push("-dirgen");
        let token = ChangeToken {
            path: db_path.with_file_name(name),
            local: AtomicU64::new(0),
            reader: Mutex::new(None),
        };
        if std::fs::metadata(&token.path).map_or(true, |m| m.len() < 8) {
            token.write_file();
        }
        token
    }

    /// Records a change (after it is committed).
    pub(super) fn bump(&self) {
        self.local.fetch_add(1, Ordering::SeqCst);
        self.write_file();
    }

    /// The current token; `None` if the file cannot be read (callers must
    /// then treat every lookup as changed).
    pub(super) fn read(&self) -> Option<u128> {
        let mut reader = self.reader.lock().ok()?;
        if reader
            .as_ref()
            .is_none_or(|(_, opened)| opened.elapsed() >= REOPEN_AFTER)
        {
            *reader = File::open(&self.path).ok().map(|f| (f, Instant::now()));
        }
        let (file, _) = reader.as_ref()?;
        let mut bytes = [0u8; 8];
        if file.read_exact_at(&mut bytes, 0).is_err() {
            *reader = None;
            return None;
        }
        Some(
            u128::from(u64::from_le_bytes(bytes)) << 64
                | u128::from(self.local.load(Ordering::SeqCst)),
        )
    }

    fn write_file(&self) {
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)
            .and_then(|f| f.write_all_at(&rand::random::<u64>().to_le_bytes(), 0));
        if let Err(e) = written {
            tracing::warn!(error = %e, path = %self.path.display(), "cannot update the directory change token");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn another_writer_is_seen_and_a_missing_file_disables_caching() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("p.db");
        let reader = ChangeToken::open(&db);
        let writer = ChangeToken::open(&db);
        let first = reader.read().unwrap();
        assert_eq!(reader.read(), Some(first));
        writer.bump();
        let second = reader.read().unwrap();
        assert_ne!(second, first);
        std::fs::remove_file(dir.path().join("p.db-dirgen")).unwrap();
        // The open file still reads until the reader reopens the path.
        *reader.reader.lock().unwrap() = None;
        assert_eq!(reader.read(), None, "no file: nothing may be cached");
        writer.bump();
        assert!(reader.read().is_some());
    }
}
