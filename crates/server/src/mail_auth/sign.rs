//! DKIM signing of a submitted message (RFC 6376, RFC 8463 dual signing)
//! and the RFC 6409 §8 fix-ups that come first.
//!
//! The message is read back in 64 KiB chunks (from memory for a small
//! message, from its unfinished spool file for a big one); the body goes
//! once through one body hash shared by every key's signature: for a
//! spilled message memory holds the header block and one chunk, never the
//! whole body.

use std::io::Read;

use crate::spool::Readable;

use mail_auth::common::crypto::{HashOutput, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner};

use super::canon::RelaxedBodyHash;
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

/// The header block and the relaxed body hash of a message, fed in pieces
/// of any size (issue 9): by [`sign_message`] from its read-back, and by a
/// spilled message's writer as its blocks are written, so that signing a
/// big message needs no read-back at all.
pub struct MessageHasher {
    /// The header block so far; once the blank line is found, exactly the
    /// fields (the last one's CRLF kept, the blank line dropped).
    headers: Vec<u8>,
    body: RelaxedBodyHash,
    in_body: bool,
}

/// A header block longer than this without its blank line is not hashed
/// as it streams ([`MessageHasher::feed_bounded`]): the message is then
/// signed from its read-back.
pub const STREAM_HEADER_LIMIT: usize = 256 * 1024;

impl MessageHasher {
    /// A hasher whose header block starts with `prefix` (fields added in
    /// front of the message; empty for none).
    pub fn new(prefix: &[u8]) -> MessageHasher {
        MessageHasher {
            headers: prefix.to_vec(),
            body: RelaxedBodyHash::new(),
            in_body: false,
        }
    }

    /// The next piece of the message.
    pub fn feed(&mut self, data: &[u8]) {
        if self.in_body {
            self.body.write(data);
            return;
        }
        // Still in the header block: look for the blank line, also across
        // piece boundaries.
        let scan_from = self.headers.len().saturating_sub(3);
        self.headers.extend_from_slice(data);
        if let Some(pos) = memchr::memmem::find(&self.headers[scan_from..], b"\r\n\r\n") {
            let body_start = scan_from + pos + 4;
            self.body.write(&self.headers[body_start..]);
            // Keep the last field's CRLF, drop the blank line.
            self.headers.truncate(body_start - 2);
            self.in_body = true;
        }
    }

    /// [`MessageHasher::feed`], but `false` (and the hasher is then of no
    /// use) once the header block is longer than [`STREAM_HEADER_LIMIT`]
    /// without its end: a writer must not hold an unbounded header block.
    pub fn feed_bounded(&mut self, data: &[u8]) -> bool {
        self.feed(data);
        self.in_body || self.headers.len() <= STREAM_HEADER_LIMIT
    }

    /// The header block (ending in CRLF) and the body hash.
    pub fn finish(mut self) -> (Vec<u8>, HashOutput) {
        if !self.headers.ends_with(b"\r\n") {
            self.headers.extend_from_slice(b"\r\n");
        }
        (self.headers, HashOutput::Digest(self.body.finish()))
    }
}

/// Signs `prefix` (the fix-up headers) followed by `message` with every
/// key; returns the DKIM-Signature fields in key order. Blocking: run it on
/// the blocking pool.
///
/// The header block is kept in memory; the body is streamed once through
/// one relaxed-canonical SHA-256 body hash that every signature shares
/// (issue 9: with one streaming signer per key, the body was canonicalised
/// and hashed once per key, two passes over a 1 MiB body, most of scenario
/// (c)'s CPU). Each signature then signs the header block with that `bh=`.
/// The body hash is ours ([`RelaxedBodyHash`]), not mail-auth's
/// `BodyHasher`: same bytes, a quarter of the canonicalisation time.
pub fn sign_message(
    message: Readable,
    prefix: &[u8],
    domain: &str,
    keys: Vec<SigningKey>,
) -> Result<Vec<u8>, SignError> {
    let mut hasher = MessageHasher::new(prefix);
    match message {
        // Already in memory: no read buffer to fill (a 256 KiB memset per
        // message showed in (a)'s profile).
        Readable::Memory(bytes) => hasher.feed(&bytes),
        file => {
            let mut file = file.open()?;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.feed(&buf[..n]);
            }
        }
    }
    let (headers, body_hash) = hasher.finish();
    sign_hashed(&headers, body_hash, domain, keys)
}

/// Signs a message whose header block (fix-ups in front, ending in CRLF)
/// and body hash are known, with every key; returns the DKIM-Signature
/// fields in key order. Blocking (RSA): run it on the blocking pool.
pub fn sign_hashed(
    headers: &[u8],
    body_hash: HashOutput,
    domain: &str,
    keys: Vec<SigningKey>,
) -> Result<Vec<u8>, SignError> {
    let mut out = Vec::new();
    for k in keys {
        let selector = k.selector.clone();
        let signer = DkimSigner::from_key(BodyHashed {
            key: k.key,
            body_hash: body_hash.clone(),
        })
        .domain(domain)
        .selector(k.selector)
        .headers(SIGNED_HEADERS.iter().copied())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed);
        // The header block and an empty body: the body hash is the shared
        // one (see `BodyHashed`).
        let signature = signer
            .sign_chained([headers, b"\r\n".as_slice()])
            .map_err(|error| SignError::Dkim { selector, error })?;
        out.extend_from_slice(signature.to_header().as_bytes());
    }
    Ok(out)
}

/// A signing key whose body hash was computed beforehand: mail-auth asks the
/// key to hash the canonical body (`SigningKey::hash`), and this key answers
/// with the hash of the real body, computed once for all signatures. Only
/// valid with `sign_chained` over the header block and an empty body, as in
/// [`sign_message`]; signing itself is the wrapped key's.
struct BodyHashed {
    key: super::keys::SharedKey,
    body_hash: HashOutput,
}

impl mail_auth::common::crypto::SigningKey for BodyHashed {
    type Hasher = Sha256;

    fn sign(&self, input: impl mail_auth::common::headers::Writable) -> mail_auth::Result<Vec<u8>> {
        self.key.sign(input)
    }

    fn hash(&self, _body: impl mail_auth::common::headers::Writable) -> HashOutput {
        self.body_hash.clone()
    }

    fn algorithm(&self) -> mail_auth::common::crypto::Algorithm {
        self.key.algorithm()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared body hash equals what mail-auth's own streaming signer
    /// computes, for a big body with trailing whitespace and blank lines
    /// and a header/body boundary split across two 64 KiB reads.
    #[test]
    fn shared_body_hash_matches_mail_auths_streaming_signer() {
        use base64::Engine;
        let prefix = b"Date: Wed, 02 Dec 2026 02:00:00 +0000\r\n".to_vec();
        let mut message = b"From: a@example.com\r\nSubject: big\r\nX-Pad: ".to_vec();
        // The blank line's CRLFCRLF starts 2 bytes before the first read ends.
        let pad = 262_144 - 2 - message.len();
        message.extend(std::iter::repeat_n(b'p', pad));
        message.extend_from_slice(b"\r\n\r\n");
        for i in 0..20_000 {
            message.extend_from_slice(format!("line {i}  with \t spaces   \r\n").as_bytes());
        }
        message.extend_from_slice(b"\r\n\r\n\r\n");
        let pair = match super::super::keys::generate_pair("pc202612") {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        let stored = portcullis_store::DkimKey {
            domain: "example.com".into(),
            selector: pair[0].selector.clone(),
            tag: pair[0].tag.clone(),
            algorithm: pair[0].algorithm,
            private_key: pair[0].private_key.clone(),
            public_key: pair[0].public_key.clone(),
            state: portcullis_store::DkimKeyState::Active,
            created_at: 0,
        };
        let Ok(key) = SigningKey::load(&stored) else {
            panic!("key loads")
        };
        let Ok(ours) = sign_message(
            Readable::Memory(message.clone()),
            &prefix,
            "example.com",
            vec![key.clone()],
        ) else {
            panic!("signs")
        };
        let ours = String::from_utf8_lossy(&ours).replace(['\r', '\n', '\t', ' '], "");
        let bh = |text: &str| {
            text.split(';')
                .find_map(|t| t.trim().strip_prefix("bh=").map(str::to_owned))
                .unwrap_or_default()
        };
        let reference = DkimSigner::from_key(key.key)
            .domain("example.com")
            .selector(key.selector)
            .headers(SIGNED_HEADERS.iter().copied())
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        let mut stream = reference.sign_streaming();
        stream.write(&prefix);
        stream.write(&message);
        let Ok(expected) = stream.finish() else {
            panic!("reference signs")
        };
        let expected = base64::engine::general_purpose::STANDARD.encode(&expected.bh);
        assert!(!expected.is_empty());
        assert_eq!(bh(&ours), expected, "{ours}");
    }

    /// Fed in pieces split anywhere, the hasher gives the header block and
    /// body hash it gives fed at once; the blank line may fall in any piece
    /// or across two.
    #[test]
    fn hasher_is_independent_of_how_the_message_is_split() {
        let mut message = b"From: a@example.com\r\nSubject: s\r\n\r\n".to_vec();
        for i in 0..300 {
            message.extend_from_slice(format!("l{i} \t {} \r\n", "y".repeat(i % 13)).as_bytes());
        }
        message.extend_from_slice(b"\r\n  \r\n");
        let whole = {
            let mut h = MessageHasher::new(b"X-Pre: 1\r\n");
            h.feed(&message);
            h.finish()
        };
        assert!(whole.0.starts_with(b"X-Pre: 1\r\nFrom: "));
        assert!(whole.0.ends_with(b"Subject: s\r\n"));
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..300 {
            let mut h = MessageHasher::new(b"X-Pre: 1\r\n");
            let mut rest = &message[..];
            while !rest.is_empty() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let n = (seed % 40) as usize + 1;
                let (piece, tail) = rest.split_at(n.min(rest.len()));
                assert!(h.feed_bounded(piece));
                rest = tail;
            }
            let (headers, hash) = h.finish();
            assert_eq!(headers, whole.0);
            assert_eq!(hash.as_ref(), whole.1.as_ref());
        }
    }

    #[test]
    fn an_endless_header_block_is_not_held() {
        let mut h = MessageHasher::new(b"");
        let line = b"X-Long: 0123456789012345678901234567890123456789\r\n";
        let mut fed = 0;
        while fed + line.len() <= STREAM_HEADER_LIMIT {
            assert!(h.feed_bounded(line));
            fed += line.len();
        }
        assert!(!h.feed_bounded(line), "past the bound without a blank line");
        // With the blank line in time, any body length is fine.
        let mut h = MessageHasher::new(b"");
        assert!(h.feed_bounded(b"Subject: s\r\n\r\n"));
        for _ in 0..10_000 {
            assert!(h.feed_bounded(line));
        }
    }

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
