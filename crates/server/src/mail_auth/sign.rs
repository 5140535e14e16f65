//! DKIM signing of a submitted message (RFC 6376, RFC 8463 dual signing)
//! and the RFC 6409 §8 fix-ups that come first.
//!
//! The message is read back in 64 KiB chunks (from memory for a small
//! message, from its unfinished spool file for a big one) and streamed
//! through mail-auth's streaming signer, one per key: for a spilled message
//! memory holds the header block and one chunk, never the whole body.

use std::io::Read;

use crate::spool::Readable;

use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};

use super::keys::SigningKey;

/// Signed header fields, From twice: the second instance signs the absence
/// of another From, so none can be added (RFC 6376 8.15 "oversigning").
/// mail-auth also signs the absence of every other listed field the message
/// lacks, so e.g. a Reply-To cannot be added on the way either.
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-Disposition",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("reading the spooled message: {0}")]
    Io(#[from] std::io::Error),
    #[error("signing with {selector}: {error}")]
    Dkim {
        selector: String,
        error: mail_auth::Error,
    },
}

/// Whether the header block has a field called `name` (case-insensitive).
pub fn has_field(header_block: &[u8], name: &str) -> bool {
    header_block
        .split(|b| *b == b'\n')
        .take_while(|line| !line.is_empty() && *line != b"\r")
        .any(|line| {
            line.len() > name.len()
                && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
                && line[name.len()..]
                    .iter()
                    .find(|b| **b != b' ' && **b != b'\t')
                    .is_some_and(|b| *b == b':')
        })
}

/// RFC 6409 §8.3 and §8.4: the Message-ID and Date fields a submitted
/// message lacks, as complete header lines.
pub fn fixup_headers(header_block: &[u8], queue_id: &str, hostname: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if !has_field(header_block, "Message-ID") {
        out.extend_from_slice(format!("Message-ID: <{queue_id}@{hostname}>\r\n").as_bytes());
    }
    if !has_field(header_block, "Date") {
        let date = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc2822)
            .unwrap_or_default();
        out.extend_from_slice(format!("Date: {date}\r\n").as_bytes());
    }
    out
}

/// Signs `prefix` (the fix-up headers) followed by the client's `message`
/// (held in memory or in the unfinished spool file) with every key; returns
/// the DKIM-Signature fields in key order. Blocking: run it on the blocking
/// pool.
pub fn sign_message(
    message: Readable,
    prefix: &[u8],
    domain: &str,
    keys: Vec<SigningKey>,
) -> Result<Vec<u8>, SignError> {
    let selectors: Vec<String> = keys.iter().map(|k| k.selector.clone()).collect();
    let signers: Vec<DkimSigner<super::keys::SharedKey, Done>> = keys
        .into_iter()
        .map(|k| {
            DkimSigner::from_key(k.key)
                .domain(domain)
                .selector(k.selector)
                .headers(SIGNED_HEADERS.iter().copied())
                .header_canonicalization(Canonicalization::Relaxed)
                .body_canonicalization(Canonicalization::Relaxed)
        })
        .collect();
    let mut streams: Vec<_> = signers.iter().map(DkimSigner::sign_streaming).collect();
    for s in &mut streams {
        s.write(prefix);
    }
    let mut file = message.open()?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for s in &mut streams {
            s.write(&buf[..n]);
        }
    }
    let mut out = Vec::new();
    for (stream, selector) in streams.into_iter().zip(selectors) {
        let signature = stream
            .finish()
            .map_err(|error| SignError::Dkim { selector, error })?;
        out.extend_from_slice(signature.to_header().as_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_by_name_only_in_the_header_block() {
        let block =
            b"From: a@example.com\r\nmessage-id : <x@y>\r\nX-Date: no\r\n\r\nDate: body\r\n";
        assert!(has_field(block, "Message-ID"));
        assert!(!has_field(block, "Date"));
        let fix = fixup_headers(block, "ABC", "mail.example.net");
        let text = String::from_utf8_lossy(&fix);
        assert!(text.starts_with("Date: "), "{text}");
        assert!(!text.contains("Message-ID"), "{text}");
        let fix = fixup_headers(b"Subject: x\r\n\r\n", "ABC", "h.example");
        assert!(String::from_utf8_lossy(&fix).starts_with("Message-ID: <ABC@h.example>\r\nDate: "));
    }
}
