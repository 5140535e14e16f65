//! Local delivery into a Maildir per mailbox:
//! `<data_dir>/mail/<domain>/<local-part>/{tmp,new,cur}`. The message is
//! written to `tmp/`, fsynced, renamed into `new/`, and `new/` is fsynced, so
//! a delivered message survives power loss (the Maildir protocol).

use std::io::Write;
use std::path::{Path, PathBuf};

/// The mailbox directory of `address` (already known to be a local account),
/// or `None` when a part could escape the mail directory.
pub fn mailbox_dir(mail_root: &Path, address: &str) -> Option<PathBuf> {
    let (local, domain) = address.rsplit_once('@')?;
    let local = local.to_ascii_lowercase();
    let domain = domain.to_ascii_lowercase();
    let safe = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && !s.contains(['/', '\\', '\0'])
            && !s.chars().any(char::is_control)
    };
    (safe(&local) && safe(&domain)).then(|| mail_root.join(domain).join(local))
}

/// Copies `message` (with a `Delivered-To:` and `Return-Path:` header in
/// front) into the Maildir at `dir`. Blocking: run it on a blocking thread.
pub fn deliver(
    dir: &Path,
    message: &mut dyn std::io::Read,
    recipient: &str,
    sender: &str,
    hostname: &str,
) -> std::io::Result<PathBuf> {
    let tmp = dir.join("tmp");
    let new = dir.join("new");
    std::fs::create_dir_all(&tmp)?;
    std::fs::create_dir_all(&new)?;
    std::fs::create_dir_all(dir.join("cur"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let name = format!(
        "{}.M{}P{}R{:016x}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        rand::random::<u64>(),
        hostname.replace(['/', ':'], "_")
    );
    let tmp_path = tmp.join(&name);
    let result = (|| {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)?;
        let clean = |s: &str| s.chars().filter(|c| !c.is_control()).collect::<String>();
        write!(
            out,
            "Return-Path: <{}>\r\nDelivered-To: {}\r\n",
            clean(sender),
            clean(recipient)
        )?;
        std::io::copy(message, &mut out)?;
        out.sync_all()?;
        drop(out);
        let final_path = new.join(&name);
        std::fs::rename(&tmp_path, &final_path)?;
        std::fs::File::open(&new)?.sync_all()?;
        Ok(final_path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp_path);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_paths_cannot_escape() {
        let root = Path::new("/data/mail");
        assert_eq!(
            mailbox_dir(root, "Bob@Example.COM"),
            Some(PathBuf::from("/data/mail/example.com/bob"))
        );
        assert_eq!(mailbox_dir(root, "../x@example.com"), None);
        assert_eq!(mailbox_dir(root, "..@example.com"), None);
        assert_eq!(mailbox_dir(root, "a@.."), None);
        assert_eq!(mailbox_dir(root, "no-at-sign"), None);
    }

    #[test]
    fn delivers_into_new_with_trace_headers() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut msg = &b"Subject: hi\r\n\r\nbody\r\n"[..];
        let mbox = dir.path().join("mail/example.com/bob");
        let path = deliver(&mbox, &mut msg, "bob@example.com", "a@b.example", "mx.test")?;
        assert!(path.starts_with(mbox.join("new")));
        let text = std::fs::read_to_string(&path)?;
        assert!(text.starts_with(
            "Return-Path: <a@b.example>\r\nDelivered-To: bob@example.com\r\nSubject: hi"
        ));
        assert_eq!(std::fs::read_dir(mbox.join("tmp"))?.count(), 0);
        Ok(())
    }
}
