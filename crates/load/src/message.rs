//! Test message generation: RFC 5322 messages of a requested size, CRLF line
//! endings, lines of at most 76 characters, and dot-stuffing for DATA.
//!
//! Bodies come from a [`BodyPool`] built once (deterministic pseudo-random
//! text with lines that start with `.` and lines that are a lone `.`, so the
//! server's DATA decoder is exercised), then sliced per message so that
//! headers + body add up to exactly the requested size when it is larger than
//! the headers.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Longest line content produced, excluding CRLF (RFC 5322 allows 78).
pub const MAX_LINE_CHARS: usize = 76;

/// Pre-generated body lines, CRLF-terminated, concatenated.
#[derive(Debug, Clone)]
pub struct BodyPool {
    text: Vec<u8>,
    /// End offset (exclusive) of each line in `text`.
    ends: Vec<usize>,
}

impl BodyPool {
    /// A pool holding at least `size` bytes of body lines.
    pub fn new(size: usize) -> BodyPool {
        let mut rng = StdRng::seed_from_u64(0x5eed_1e55);
        let target = size + 2 * (MAX_LINE_CHARS + 2);
        let mut text = Vec::with_capacity(target + MAX_LINE_CHARS + 2);
        let mut ends = Vec::new();
        let mut n = 0usize;
        while text.len() < target {
            n += 1;
            if n.is_multiple_of(50) {
                text.push(b'.');
            } else {
                let len = rng.random_range(8..=MAX_LINE_CHARS);
                let start = text.len();
                if n.is_multiple_of(8) {
                    text.push(b'.');
                }
                while text.len() - start < len {
                    let word = rng.random_range(1..=10);
                    for _ in 0..word {
                        if text.len() - start >= len {
                            break;
                        }
                        text.push(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)]);
                    }
                    if text.len() - start < len {
                        text.push(if rng.random_range(0..12) == 0 {
                            b'.'
                        } else {
                            b' '
                        });
                    }
                }
            }
            text.extend_from_slice(b"\r\n");
            ends.push(text.len());
        }
        BodyPool { text, ends }
    }

    /// Appends exactly `n` bytes of CRLF-terminated body lines to `out`
    /// (`n == 1` yields nothing: no line is one byte long).
    fn body(&self, n: usize, out: &mut Vec<u8>) {
        let k = self.ends.partition_point(|&e| e <= n);
        let mut taken = if k == 0 { 0 } else { self.ends[k - 1] };
        let mut rest = n - taken;
        if rest == 1 && k > 0 {
            // Give back the last whole line and refill it plus one byte as two lines.
            let prev = if k >= 2 { self.ends[k - 2] } else { 0 };
            rest += taken - prev;
            taken = prev;
        }
        out.extend_from_slice(&self.text[..taken]);
        if rest == 1 {
            return;
        }
        if (2..=MAX_LINE_CHARS + 2).contains(&rest) {
            filler(rest - 2, out);
        } else if rest > MAX_LINE_CHARS + 2 {
            // rest = previous line length + 1, at most 79: two lines.
            let a = (rest - 4) / 2;
            filler(a, out);
            filler(rest - 4 - a, out);
        }
    }
}

fn filler(chars: usize, out: &mut Vec<u8>) {
    out.extend(std::iter::repeat_n(b'x', chars));
    out.extend_from_slice(b"\r\n");
}

/// What varies from message to message.
#[derive(Debug, Clone)]
pub struct MessageSpec<'a> {
    pub from: &'a str,
    pub to: &'a [String],
    pub connection: usize,
    pub seq: u64,
    /// Desired total size in octets (before dot-stuffing).
    pub size: usize,
}

/// The RFC 5322 message (headers, blank line, body), CRLF throughout.
pub fn generate(pool: &BodyPool, spec: &MessageSpec<'_>) -> Vec<u8> {
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_else(|_| "Thu, 01 Jan 1970 00:00:00 +0000".to_owned());
    let domain = spec.from.rsplit('@').next().unwrap_or("localhost");
    let mut out = Vec::with_capacity(spec.size + 512);
    let first_to = spec
        .to
        .first()
        .map(String::as_str)
        .unwrap_or("undisclosed-recipients:;");
    let header = format!(
        "From: <{from}>\r\nTo: <{first_to}>\r\nSubject: portcullis-load c{c} m{s}\r\n\
         Date: {date}\r\nMessage-ID: <{c}.{s}.{rand:016x}@{domain}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\nX-Load-Recipients: {n}\r\n\r\n",
        from = spec.from,
        c = spec.connection,
        s = spec.seq,
        rand = rand::random::<u64>(),
        n = spec.to.len(),
    );
    out.extend_from_slice(header.as_bytes());
    let body = spec.size.saturating_sub(out.len()).max(3);
    pool.body(body, &mut out);
    out
}

/// Appends `raw` to `out` dot-stuffed (RFC 5321 §4.5.2), followed by the
/// terminating `.` line. `raw` must end with CRLF (a CRLF is added if not).
pub fn dot_stuff(raw: &[u8], out: &mut Vec<u8>) {
    out.reserve(raw.len() + raw.len() / 64 + 5);
    let mut at_line_start = true;
    let mut rest = raw;
    while !rest.is_empty() {
        if at_line_start && rest[0] == b'.' {
            out.push(b'.');
        }
        match memchr::memchr(b'\n', rest) {
            Some(i) => {
                out.extend_from_slice(&rest[..=i]);
                rest = &rest[i + 1..];
                at_line_start = true;
            }
            None => {
                out.extend_from_slice(rest);
                rest = &[];
                at_line_start = false;
            }
        }
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn spec(to: &[String], size: usize) -> MessageSpec<'_> {
        MessageSpec {
            from: "load@example.com",
            to,
            connection: 3,
            seq: 7,
            size,
        }
    }

    fn lines(msg: &[u8]) -> Vec<&[u8]> {
        assert!(msg.ends_with(b"\r\n"));
        msg[..msg.len() - 1]
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap())
            .collect()
    }

    #[test]
    fn exact_size_crlf_and_line_length() {
        let to = vec![
            "rcpt0@example.org".to_owned(),
            "rcpt1@example.org".to_owned(),
        ];
        let pool = BodyPool::new(20_000);
        for size in (600..3000).chain([10_000, 19_999, 20_000]) {
            let msg = generate(&pool, &spec(&to, size));
            assert_eq!(msg.len(), size, "size {size}");
            for line in lines(&msg) {
                assert!(line.len() <= MAX_LINE_CHARS, "line too long at size {size}");
                assert!(!line.contains(&b'\r'), "bare CR at size {size}");
            }
        }
    }

    #[test]
    fn small_size_still_valid() {
        let to = vec!["a@example.org".to_owned()];
        let pool = BodyPool::new(10);
        let msg = generate(&pool, &spec(&to, 10));
        let text = String::from_utf8(msg.clone()).unwrap();
        assert!(text.starts_with("From: <load@example.com>\r\nTo: <a@example.org>\r\n"));
        assert!(text.contains("\r\n\r\n"));
        assert!(text.contains("Message-ID: <3.7."));
        assert!(msg.ends_with(b"\r\n"));
        assert!(msg.len() < 400);
    }

    #[test]
    fn pool_has_dot_lines() {
        let pool = BodyPool::new(10_000);
        let body = &pool.text;
        assert!(body.windows(5).any(|w| w == b"\r\n.\r\n"), "lone dot line");
        assert!(lines(body).iter().any(|l| l.len() > 1 && l[0] == b'.'));
    }

    #[test]
    fn dot_stuffing() {
        let mut out = Vec::new();
        dot_stuff(b".start\r\nmid.dle\r\n.\r\n..two\r\nend\r\n", &mut out);
        assert_eq!(out, b"..start\r\nmid.dle\r\n..\r\n...two\r\nend\r\n.\r\n");
        let mut out = Vec::new();
        dot_stuff(b"no newline", &mut out);
        assert_eq!(out, b"no newline\r\n.\r\n");
    }

    #[test]
    fn stuffed_message_roundtrips() {
        let to = vec!["a@example.org".to_owned()];
        let pool = BodyPool::new(50_000);
        let msg = generate(&pool, &spec(&to, 50_000));
        let mut wire = Vec::new();
        dot_stuff(&msg, &mut wire);
        assert!(wire.ends_with(b"\r\n.\r\n"));
        // The terminator appears exactly once, at the end.
        let body = &wire[..wire.len() - 3];
        assert!(!body.windows(5).any(|w| w == b"\r\n.\r\n"));
        // Un-stuffing gives the original back.
        let mut back = Vec::new();
        for line in lines(body) {
            back.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
            back.extend_from_slice(b"\r\n");
        }
        assert_eq!(back, msg);
    }
}
