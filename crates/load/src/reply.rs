//! Sans-IO parser for SMTP server replies (RFC 5321 §4.2).
//!
//! Bytes go in with [`ReplyParser::feed`] as they arrive, in chunks of any
//! size; complete replies come out of [`ReplyParser::next_reply`]. Parsing is
//! strict: every line ends in CRLF, starts with the same three-digit code, and
//! has `-` (more lines follow), a space or nothing after the code.

use std::fmt;

/// Longest reply line accepted, CRLF included (RFC 5321 says 512; be lenient).
pub const MAX_LINE: usize = 4096;
/// Most lines accepted in one multi-line reply.
pub const MAX_LINES: usize = 256;

/// One complete reply: its code and the text of each line (after `NNN-`/`NNN `).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// The enhanced status code (RFC 3463) at the start of the first line, if any.
    pub fn enhanced(&self) -> Option<&str> {
        let first = self.lines.first()?;
        let word = first.split(' ').next()?;
        let mut parts = word.split('.');
        let class = parts.next()?;
        let ok = matches!(class, "2" | "4" | "5")
            && parts.clone().count() == 2
            && parts
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
        ok.then_some(word)
    }

    /// `"451 4.7.1"`, or just `"451"` without an enhanced code: the key errors are counted by.
    pub fn code_key(&self) -> String {
        match self.enhanced() {
            Some(e) => format!("{} {e}", self.code),
            None => self.code.to_string(),
        }
    }

    /// All lines joined with a space, for messages.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    /// Capability keywords of an EHLO reply (every line but the first), uppercased.
    pub fn ehlo_keywords(&self) -> impl Iterator<Item = String> + '_ {
        self.lines.iter().skip(1).map(|l| l.to_ascii_uppercase())
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text())
    }
}

/// Why the byte stream is not a valid sequence of replies. Fatal for the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("reply with more than {MAX_LINES} lines")]
    TooManyLines,
    #[error("reply line not terminated by CRLF (bare LF)")]
    BareLf,
    #[error("malformed reply line {0:?}")]
    Malformed(String),
    #[error("reply code changed within a multi-line reply ({0} then {1})")]
    CodeChanged(u16, u16),
}

/// Accumulates bytes and yields complete replies.
#[derive(Debug, Default)]
pub struct ReplyParser {
    buf: Vec<u8>,
    /// Where the next unparsed line starts in `buf`.
    start: usize,
    /// Code and lines of a multi-line reply in progress.
    code: Option<u16>,
    lines: Vec<String>,
}

impl ReplyParser {
    pub fn new() -> ReplyParser {
        ReplyParser::default()
    }

    /// Appends bytes read from the connection.
    pub fn feed(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Whether bytes are buffered that are not yet part of a returned reply.
    pub fn has_pending(&self) -> bool {
        self.start < self.buf.len() || self.code.is_some()
    }

    /// The next complete reply, `Ok(None)` if more bytes are needed.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        loop {
            let rest = &self.buf[self.start..];
            let Some(lf) = memchr::memchr(b'\n', rest) else {
                if rest.len() >= MAX_LINE {
                    return Err(ReplyError::LineTooLong);
                }
                self.compact();
                return Ok(None);
            };
            if lf + 1 > MAX_LINE {
                return Err(ReplyError::LineTooLong);
            }
            if lf == 0 || rest[lf - 1] != b'\r' {
                return Err(ReplyError::BareLf);
            }
            let line = &rest[..lf - 1];
            let (code, more, text) = parse_line(line)?;
            self.start += lf + 1;
            if let Some(prev) = self.code
                && prev != code
            {
                return Err(ReplyError::CodeChanged(prev, code));
            }
            if self.lines.len() >= MAX_LINES {
                return Err(ReplyError::TooManyLines);
            }
            self.lines.push(text);
            if more {
                self.code = Some(code);
                continue;
            }
            self.code = None;
            let lines = std::mem::take(&mut self.lines);
            return Ok(Some(Reply { code, lines }));
        }
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

/// Splits one line (without CRLF) into code, "more lines follow", text.
fn parse_line(line: &[u8]) -> Result<(u16, bool, String), ReplyError> {
    let bad = || ReplyError::Malformed(String::from_utf8_lossy(line).into_owned());
    if line.len() < 3 {
        return Err(bad());
    }
    let d = &line[..3];
    let valid =
        (b'2'..=b'5').contains(&d[0]) && (b'0'..=b'5').contains(&d[1]) && d[2].is_ascii_digit();
    if !valid {
        return Err(bad());
    }
    let code = u16::from(d[0] - b'0') * 100 + u16::from(d[1] - b'0') * 10 + u16::from(d[2] - b'0');
    let (more, text) = match line.get(3) {
        None => (false, &line[3..]),
        Some(b'-') => (true, &line[4..]),
        Some(b' ') => (false, &line[4..]),
        Some(_) => return Err(bad()),
    };
    if text.contains(&b'\r') {
        return Err(bad());
    }
    Ok((code, more, String::from_utf8_lossy(text).into_owned()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn all(input: &[u8]) -> Result<Vec<Reply>, ReplyError> {
        let mut p = ReplyParser::new();
        p.feed(input);
        let mut out = Vec::new();
        while let Some(r) = p.next_reply()? {
            out.push(r);
        }
        Ok(out)
    }

    #[test]
    fn single_line() {
        let r = all(b"250 2.1.0 Ok\r\n").unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].code, 250);
        assert_eq!(r[0].lines, vec!["2.1.0 Ok"]);
        assert_eq!(r[0].enhanced(), Some("2.1.0"));
        assert_eq!(r[0].code_key(), "250 2.1.0");
    }

    #[test]
    fn multi_line_ehlo() {
        let input = b"250-mx.example.org Hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 AUTH PLAIN LOGIN\r\n";
        let r = all(input).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].lines.len(), 4);
        let kw: Vec<String> = r[0].ehlo_keywords().collect();
        assert_eq!(kw, vec!["PIPELINING", "SIZE 1000", "AUTH PLAIN LOGIN"]);
        assert_eq!(r[0].enhanced(), None);
        assert_eq!(r[0].code_key(), "250");
    }

    #[test]
    fn split_reads_byte_by_byte() {
        let input = b"220 hi\r\n250-a\r\n250 b\r\n451 4.7.1 Slow down\r\n";
        let mut p = ReplyParser::new();
        let mut out = Vec::new();
        for b in input {
            p.feed(std::slice::from_ref(b));
            while let Some(r) = p.next_reply().unwrap() {
                out.push(r);
            }
        }
        assert_eq!(out.len(), 3);
        assert_eq!(out[1].lines, vec!["a", "b"]);
        assert_eq!(out[2].code_key(), "451 4.7.1");
        assert!(!p.has_pending());
    }

    #[test]
    fn partial_multiline_is_pending() {
        let mut p = ReplyParser::new();
        p.feed(b"250-first\r\n250-sec");
        assert_eq!(p.next_reply().unwrap(), None);
        assert!(p.has_pending());
        p.feed(b"ond\r\n250 last\r\n");
        let r = p.next_reply().unwrap().unwrap();
        assert_eq!(r.lines, vec!["first", "second", "last"]);
    }

    #[test]
    fn bare_code_and_empty_continuation() {
        let r = all(b"250-\r\n250\r\n").unwrap();
        assert_eq!(r[0].lines, vec!["", ""]);
    }

    #[test]
    fn strictness() {
        assert_eq!(all(b"250 ok\n"), Err(ReplyError::BareLf));
        assert_eq!(
            all(b"250-a\r\n251 b\r\n"),
            Err(ReplyError::CodeChanged(250, 251))
        );
        assert!(matches!(all(b"25 ok\r\n"), Err(ReplyError::Malformed(_))));
        assert!(matches!(all(b"2500ok\r\n"), Err(ReplyError::Malformed(_))));
        assert!(matches!(all(b"650 ok\r\n"), Err(ReplyError::Malformed(_))));
        assert!(matches!(all(b"abc ok\r\n"), Err(ReplyError::Malformed(_))));
        assert!(matches!(
            all(b"250 a\rb\r\n"),
            Err(ReplyError::Malformed(_))
        ));
        let long = format!("250 {}\r\n", "x".repeat(MAX_LINE));
        assert_eq!(all(long.as_bytes()), Err(ReplyError::LineTooLong));
        let mut p = ReplyParser::new();
        p.feed(&vec![b'2'; MAX_LINE + 1]);
        assert_eq!(p.next_reply(), Err(ReplyError::LineTooLong));
    }

    #[test]
    fn too_many_lines() {
        let mut s = String::new();
        for _ in 0..=MAX_LINES {
            s.push_str("250-x\r\n");
        }
        assert_eq!(all(s.as_bytes()), Err(ReplyError::TooManyLines));
    }

    #[test]
    fn enhanced_code_detection() {
        let r = |t: &str| Reply {
            code: 550,
            lines: vec![t.to_owned()],
        };
        assert_eq!(r("5.1.1 No such user").enhanced(), Some("5.1.1"));
        assert_eq!(r("No such user").enhanced(), None);
        assert_eq!(r("5.1 x").enhanced(), None);
        assert_eq!(r("3.1.1 x").enhanced(), None);
        assert_eq!(r("5.1.1234 x").enhanced(), None);
        assert!(!r("x").is_positive());
    }
}
