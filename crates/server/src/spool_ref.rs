//! Where a queued message's body is: the parsed form of a queue row's
//! `spool_path`, and the one way to read a body back.
//!
//! Three forms (issue 9), all relative to the data dir:
//! - `spool/<id>.eml`: the body is the whole file (DSNs, and everything
//!   queued before the forms below existed);
//! - `spool/<id>.eml#<offset>+<len>`: the body is `len` octets at `offset`
//!   of a file that belongs to this message alone (a large message: the
//!   file starts with a hole kept for the header fields added at the end of
//!   DATA, so DKIM signing never copies the message);
//! - `spool/seg/<16 hex>.seg#<offset>+<len>`: the body is `len` octets at
//!   `offset` of a segment file that holds the bodies of many small
//!   messages, appended by the committer (`commit.rs`).
//!
//! Every reader of a body (delivery, DSNs, `portcullis queue`) goes through
//! [`SpoolRef::parse`] and [`SpoolRef::open`] / [`SpoolRef::open_async`], so
//! no one reads past a message's range or deletes a shared segment. This
//! module only parses and reads; it never writes or removes anything.

use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

/// Separates a segment's path from the range of one message in it.
pub const RANGE_MARK: char = '#';

/// Where the shared segment files are, relative to the data dir; a ranged
/// path anywhere else is a [`SpoolRef::FileRange`].
pub const SEGMENT_DIR: &str = "spool/seg";

/// A parsed `spool_path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpoolRef {
    /// The body is the whole file.
    File(PathBuf),
    /// The body is `len` octets at `offset` of a file of this message
    /// alone (deleted with the message).
    FileRange {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
    /// The body is `len` octets at `offset` of a shared segment file.
    Segment {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
}

/// Why a `spool_path` is not a usable reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpoolRefError {
    #[error("empty spool path")]
    Empty,
    /// Absolute, `..` or otherwise not a plain path inside the data dir.
    #[error("spool path {0:?} is not a plain relative path inside the data dir")]
    NotInDataDir(String),
    #[error("spool path {0:?} has a malformed range (expected #<offset>+<length>)")]
    BadRange(String),
}

impl SpoolRef {
    /// Parses a queue row's `spool_path`. Never panics; anything but a plain
    /// relative path (optionally with a well-formed range) is an error.
    pub fn parse(text: &str) -> Result<SpoolRef, SpoolRefError> {
        if text.is_empty() {
            return Err(SpoolRefError::Empty);
        }
        let (path, range) = match text.split_once(RANGE_MARK) {
            Some((path, range)) => (path, Some(range)),
            None => (text, None),
        };
        if !is_plain_relative(path) {
            return Err(SpoolRefError::NotInDataDir(text.to_owned()));
        }
        let path = PathBuf::from(path);
        let Some(range) = range else {
            return Ok(SpoolRef::File(path));
        };
        let bad = || SpoolRefError::BadRange(text.to_owned());
        let (offset, len) = range.split_once('+').ok_or_else(bad)?;
        let number = |s: &str| {
            if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse::<u64>().ok()
        };
        let (Some(offset), Some(len)) = (number(offset), number(len)) else {
            return Err(bad());
        };
        if offset.checked_add(len).is_none() {
            return Err(bad());
        }
        if path.starts_with(SEGMENT_DIR) {
            Ok(SpoolRef::Segment { path, offset, len })
        } else {
            Ok(SpoolRef::FileRange { path, offset, len })
        }
    }

    /// The file that holds the body, relative to the data dir.
    pub fn file(&self) -> &Path {
        match self {
            SpoolRef::File(path)
            | SpoolRef::FileRange { path, .. }
            | SpoolRef::Segment { path, .. } => path,
        }
    }

    /// Whether the file is shared with other messages (never delete it for
    /// one message; the segment sweeper does).
    pub fn is_segment(&self) -> bool {
        matches!(self, SpoolRef::Segment { .. })
    }

    /// Opens the body for reading (blocking). A segment reader is limited to
    /// the message's range; a segment shorter than the range is an
    /// `UnexpectedEof` error, not a short message.
    pub fn open(&self, data_dir: &Path) -> std::io::Result<std::io::Take<std::fs::File>> {
        let mut file = std::fs::File::open(data_dir.join(self.file()))?;
        match self {
            SpoolRef::File(_) => Ok(file.take(u64::MAX)),
            SpoolRef::FileRange { offset, len, .. } | SpoolRef::Segment { offset, len, .. } => {
                check_covers(file.metadata()?.len(), *offset, *len)?;
                file.seek(SeekFrom::Start(*offset))?;
                Ok(file.take(*len))
            }
        }
    }

    /// [`SpoolRef::open`] for async readers.
    pub async fn open_async(
        &self,
        data_dir: &Path,
    ) -> std::io::Result<tokio::io::Take<tokio::fs::File>> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut file = tokio::fs::File::open(data_dir.join(self.file())).await?;
        match self {
            SpoolRef::File(_) => Ok(file.take(u64::MAX)),
            SpoolRef::FileRange { offset, len, .. } | SpoolRef::Segment { offset, len, .. } => {
                check_covers(file.metadata().await?.len(), *offset, *len)?;
                file.seek(SeekFrom::Start(*offset)).await?;
                Ok(file.take(*len))
            }
        }
    }

    /// The whole body (blocking). Delivery uses it for small messages and
    /// streams big ones.
    pub fn read_all(&self, data_dir: &Path) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open(data_dir)?.read_to_end(&mut out)?;
        Ok(out)
    }
}

impl fmt::Display for SpoolRef {
    /// The `spool_path` text that [`SpoolRef::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpoolRef::File(path) => write!(f, "{}", path.display()),
            SpoolRef::FileRange { path, offset, len } | SpoolRef::Segment { path, offset, len } => {
                write!(f, "{}{RANGE_MARK}{offset}+{len}", path.display())
            }
        }
    }
}

fn check_covers(file_len: u64, offset: u64, len: u64) -> std::io::Result<()> {
    if offset.saturating_add(len) > file_len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("segment of {file_len} octets does not hold {len} octets at {offset}"),
        ));
    }
    Ok(())
}

/// A relative path that stays inside its base: normal components (and `.`)
/// only, no root, `..` or prefix, and no control characters.
pub fn is_plain_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.chars().any(char::is_control)
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_files_and_segments() {
        assert_eq!(
            SpoolRef::parse("spool/0123.eml"),
            Ok(SpoolRef::File("spool/0123.eml".into()))
        );
        let seg = SpoolRef::parse("spool/seg/00000000000000ff.seg#4096+2048").unwrap();
        assert_eq!(
            seg,
            SpoolRef::Segment {
                path: "spool/seg/00000000000000ff.seg".into(),
                offset: 4096,
                len: 2048
            }
        );
        assert!(seg.is_segment());
        assert_eq!(seg.file(), Path::new("spool/seg/00000000000000ff.seg"));
        assert_eq!(seg.to_string(), "spool/seg/00000000000000ff.seg#4096+2048");
        assert_eq!(SpoolRef::parse(&seg.to_string()), Ok(seg));
        assert_eq!(
            SpoolRef::parse("spool/seg/a.seg#0+0"),
            Ok(SpoolRef::Segment {
                path: "spool/seg/a.seg".into(),
                offset: 0,
                len: 0
            })
        );
        // A range of a message's own file: not shared, deleted with it.
        let own = SpoolRef::parse("spool/0123.eml#4000+1048576").unwrap();
        assert_eq!(
            own,
            SpoolRef::FileRange {
                path: "spool/0123.eml".into(),
                offset: 4000,
                len: 1048576
            }
        );
        assert!(!own.is_segment());
        assert_eq!(own.file(), Path::new("spool/0123.eml"));
        assert_eq!(SpoolRef::parse(&own.to_string()), Ok(own));
        // `spool/segment/` is not the segment directory.
        assert!(!SpoolRef::parse("spool/segment/x#0+1").unwrap().is_segment());
    }

    #[test]
    fn malformed_refs_are_errors() {
        assert_eq!(SpoolRef::parse(""), Err(SpoolRefError::Empty));
        for bad in [
            "spool/seg/a.seg#",
            "spool/seg/a.seg#12",
            "spool/seg/a.seg#+5",
            "spool/seg/a.seg#5+",
            "spool/seg/a.seg#-1+5",
            "spool/seg/a.seg#1+-5",
            "spool/seg/a.seg#+1+5",
            "spool/seg/a.seg#1+5#2+3",
            "spool/seg/a.seg#0x10+5",
            "spool/seg/a.seg# 1+5",
            "spool/seg/a.seg#18446744073709551615+1",
            "spool/seg/a.seg#99999999999999999999999+1",
        ] {
            assert!(
                matches!(SpoolRef::parse(bad), Err(SpoolRefError::BadRange(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn paths_outside_the_data_dir_are_refused() {
        for bad in [
            "../etc/passwd",
            "spool/../../x.eml",
            "/etc/passwd",
            "/spool/seg/a.seg#0+1",
            "spool/seg/../../../a.seg#0+1",
            "#0+1",
            "spool/a\n.eml",
        ] {
            assert!(
                matches!(SpoolRef::parse(bad), Err(SpoolRefError::NotInDataDir(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn segment_reader_reads_exactly_its_range() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("spool/seg")).unwrap();
        std::fs::write(dir.path().join("spool/seg/1.seg"), b"aaaaBODYzzzz").unwrap();
        let r = SpoolRef::parse("spool/seg/1.seg#4+4").unwrap();
        assert_eq!(r.read_all(dir.path()).unwrap(), b"BODY");
        let past = SpoolRef::parse("spool/seg/1.seg#10+4").unwrap();
        let err = past.read_all(dir.path()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        let whole = SpoolRef::parse("spool/seg/1.seg").unwrap();
        assert_eq!(whole.read_all(dir.path()).unwrap(), b"aaaaBODYzzzz");
    }

    #[tokio::test]
    async fn async_reader_matches_the_blocking_one() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("spool/seg")).unwrap();
        std::fs::write(dir.path().join("spool/seg/1.seg"), b"aaaaBODYzzzz").unwrap();
        let r = SpoolRef::parse("spool/seg/1.seg#4+4").unwrap();
        let mut got = Vec::new();
        r.open_async(dir.path())
            .await
            .unwrap()
            .read_to_end(&mut got)
            .await
            .unwrap();
        assert_eq!(got, b"BODY");
    }
}
