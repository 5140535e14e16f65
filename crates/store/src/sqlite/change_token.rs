//! The change token of directory data (issue 5 and 9): a cheap way for a
//! process to know whether accounts, domains, aliases, credentials, DKIM keys
//! or plans changed — in this process or in another one (the admin CLI) —
//! without a query.
//!
//! The token is a small file next to the database, `<db>-dirgen`, holding
//! 8 random bytes. Every directory write replaces it (write a temporary file
//! with new random bytes, rename over it; readers never see a partial file);
//! reading the token is reading those 8 bytes (inode numbers and coarse
//! timestamps could repeat, random contents do not in practice). An
//! in-process counter is part of the token too, so a write in this process
//! is seen even if replacing the file failed.
//!
//! The file is a hint, not data: it is never fsynced, and losing it (a
//! crash, a deleted file) only makes readers reload. When it cannot be read,
//! [`ChangeToken::read`] answers `None` and callers must not cache.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub(super) struct ChangeToken {
    path: PathBuf,
    local: AtomicU64,
}

impl ChangeToken {
    /// The token of the database at `db_path`; creates the file if missing.
    pub(super) fn open(db_path: &Path) -> ChangeToken {
        let mut name = db_path.file_name().unwrap_or_default().to_os_string();
        name.push("-dirgen");
        let token = ChangeToken {
            path: db_path.with_file_name(name),
            local: AtomicU64::new(0),
        };
        if !token.path.exists() {
            token.replace_file();
        }
        token
    }

    /// Records a change.
    pub(super) fn bump(&self) {
        self.local.fetch_add(1, Ordering::SeqCst);
        self.replace_file();
    }

    /// The current token; `None` if the file cannot be read (callers must
    /// then treat every lookup as changed).
    pub(super) fn read(&self) -> Option<u128> {
        let bytes = std::fs::read(&self.path).ok()?;
        let file: [u8; 8] = bytes.as_slice().try_into().ok()?;
        Some(
            u128::from(u64::from_le_bytes(file)) << 64
                | u128::from(self.local.load(Ordering::SeqCst)),
        )
    }

    fn replace_file(&self) {
        let tmp = self.path.with_extension(format!(
            "tmp{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let written = std::fs::write(&tmp, rand::random::<u64>().to_le_bytes())
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(error = %e, path = %self.path.display(), "cannot update the directory change token");
        }
    }
}
