//! SMTP client side of the reply grammar (RFC 5321 4.2): bytes pushed in,
//! whole replies out. No I/O here; `smtp.rs` feeds it from the socket.
//!
//! Bounded: a line longer than [`MAX_LINE`] or a reply with more than
//! [`MAX_LINES`] lines is an error, so a hostile peer cannot make us buffer
//! without limit.

use serde::Serialize;

/// Longest reply line we accept, CRLF included. RFC 5321 4.5.3.1.5 says
/// 512; real servers send longer EHLO lines, so allow some slack.
pub const MAX_LINE: usize = 2048;
/// Most lines in one multiline reply (an EHLO response has ~10-20).
pub const MAX_LINES: usize = 128;

/// One server reply: code, the enhanced status code when the first line
/// carries one (RFC 2034), and the text of each line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reply {
    pub code: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enhanced: Option<String>,
    pub lines: Vec<String>,
}

impl Reply {
    /// All lines joined by a space, without the enhanced code.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    /// `535 5.7.8 Authentication credentials invalid` (first line only).
    pub fn summary(&self) -> String {
        let first = self.lines.first().map(String::as_str).unwrap_or("");
        match &self.enhanced {
            Some(enhanced) => format!("{} {enhanced} {first}", self.code),
            None => format!("{} {first}", self.code),
        }
        .trim_end()
        .to_owned()
    }

    pub fn has_enhanced(&self, enhanced: &str) -> bool {
        self.enhanced.as_deref() == Some(enhanced)
    }

    /// Case-insensitive search in the reply text.
    pub fn mentions(&self, needle: &str) -> bool {
        self.text()
            .to_ascii_lowercase()
            .contains(&needle.to_ascii_lowercase())
    }
}

/// Why the bytes from the server are not a valid reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("reply with more than {MAX_LINES} lines")]
    TooManyLines,
    #[error("not an SMTP reply: {0:?}")]
    Malformed(String),
    #[error("reply lines with different codes ({0} then {1})")]
    CodeChanged(u16, u16),
}

/// Push parser: [`ReplyReader::push`] bytes, then take replies with
/// [`ReplyReader::next_reply`] until it returns `Ok(None)`.
#[derive(Debug, Default)]
pub struct ReplyReader {
    buf: Vec<u8>,
    code: Option<u16>,
    lines: Vec<String>,
    /// Total bytes seen, so callers can tell "silent" from "sent garbage".
    seen: usize,
}

impl ReplyReader {
    pub fn push(&mut self, bytes: &[u8]) {
        self.seen = self.seen.saturating_add(bytes.len());
        self.buf.extend_from_slice(bytes);
    }

    /// Whether the server sent anything at all.
    pub fn seen_any(&self) -> bool {
        self.seen > 0
    }

    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        loop {
            let Some(end) = self.buf.iter().position(|b| *b == b'\n') else {
                if self.buf.len() > MAX_LINE {
                    return Err(ReplyError::LineTooLong);
                }
                return Ok(None);
            };
            if end + 1 > MAX_LINE {
                return Err(ReplyError::LineTooLong);
            }
            let raw: Vec<u8> = self.buf.drain(..=end).collect();
            // Accept a bare LF from sloppy servers; we are the lenient side.
            let line = raw
                .strip_suffix(b"\r\n")
                .or_else(|| raw.strip_suffix(b"\n"))
                .unwrap_or(&raw);
            if let Some(reply) = self.take_line(line)? {
                return Ok(Some(reply));
            }
        }
    }

    fn take_line(&mut self, line: &[u8]) -> Result<Option<Reply>, ReplyError> {
        let text = String::from_utf8_lossy(line);
        let malformed = || ReplyError::Malformed(text.chars().take(80).collect());
        let bytes = line;
        if bytes.len() < 3 || !bytes[..3].iter().all(u8::is_ascii_digit) {
            return Err(malformed());
        }
        let code: u16 = text[..3].parse().map_err(|_| malformed())?;
        if !(200..600).contains(&code) {
            return Err(malformed());
        }
        let last = match bytes.get(3) {
            None | Some(b' ') => true,
            Some(b'-') => false,
            Some(_) => return Err(malformed()),
        };
        if let Some(previous) = self.code
            && previous != code
        {
            return Err(ReplyError::CodeChanged(previous, code));
        }
        if self.lines.len() >= MAX_LINES {
            return Err(ReplyError::TooManyLines);
        }
        self.code = Some(code);
        self.lines
            .push(text.get(4..).unwrap_or("").trim_end().to_owned());
        if !last {
            return Ok(None);
        }
        let mut lines = std::mem::take(&mut self.lines);
        self.code = None;
        let enhanced = split_enhanced(code, &mut lines);
        Ok(Some(Reply {
            code,
            enhanced,
            lines,
        }))
    }
}

/// Takes a leading `x.y.z` enhanced code (RFC 3463) off every line when the
/// first line has one whose class matches the reply code.
fn split_enhanced(code: u16, lines: &mut [String]) -> Option<String> {
    let first = lines.first()?;
    let candidate = first.split(' ').next()?;
    let parts: Vec<&str> = candidate.split('.').collect();
    let valid = parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
        && parts[0].parse::<u16>().ok() == Some(code / 100);
    if !valid {
        return None;
    }
    let enhanced = candidate.to_owned();
    for line in lines.iter_mut() {
        if let Some(rest) = line.strip_prefix(&enhanced) {
            *line = rest.trim_start().to_owned();
        }
    }
    Some(enhanced)
}

/// Whether bytes received where a TLS record was expected look like an SMTP
/// greeting (`220 ` or `220-`): the sign of a STARTTLS port.
pub fn looks_like_smtp(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && bytes[..3].iter().all(u8::is_ascii_digit) && matches!(bytes[3], b' ' | b'-')
}

/// The EHLO keywords (RFC 5321 4.1.1.1): every line after the first,
/// upper-cased keyword plus its parameters.
pub fn ehlo_keywords(reply: &Reply) -> Vec<String> {
    reply
        .lines
        .iter()
        .skip(1)
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The SASL mechanisms of an `AUTH` keyword (also the old `AUTH=` form).
pub fn auth_mechanisms(keywords: &[String]) -> Vec<String> {
    let mut mechs = Vec::new();
    for keyword in keywords {
        let upper = keyword.to_ascii_uppercase();
        let rest = upper
            .strip_prefix("AUTH ")
            .or_else(|| upper.strip_prefix("AUTH="));
        if let Some(rest) = rest {
            for mech in rest.split_whitespace() {
                if !mechs.iter().any(|m| m == mech) {
                    mechs.push(mech.to_owned());
                }
            }
        }
    }
    mechs
}

pub fn has_keyword(keywords: &[String], name: &str) -> bool {
    keywords.iter().any(|k| {
        k.split_whitespace()
            .next()
            .is_some_and(|first| first.eq_ignore_ascii_case(name))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn all(input: &[u8]) -> Result<Vec<Reply>, ReplyError> {
        let mut reader = ReplyReader::default();
        reader.push(input);
        let mut out = Vec::new();
        while let Some(reply) = reader.next_reply()? {
            out.push(reply);
        }
        Ok(out)
    }

    #[test]
    fn parses_single_and_multiline_replies_split_anywhere() {
        let input: &[u8] = b"220 mx.example.com ESMTP Portcullis\r\n250-mx greets x\r\n250-AUTH PLAIN LOGIN\r\n250 STARTTLS\r\n535 5.7.8 Authentication credentials invalid\r\n";
        let whole = all(input).unwrap();
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[0].code, 220);
        assert_eq!(
            whole[1].lines,
            ["mx greets x", "AUTH PLAIN LOGIN", "STARTTLS"]
        );
        assert_eq!(whole[2].enhanced.as_deref(), Some("5.7.8"));
        assert_eq!(
            whole[2].summary(),
            "535 5.7.8 Authentication credentials invalid"
        );
        for split in 0..input.len() {
            let mut reader = ReplyReader::default();
            let mut out = Vec::new();
            for part in [&input[..split], &input[split..]] {
                reader.push(part);
                while let Some(reply) = reader.next_reply().unwrap() {
                    out.push(reply);
                }
            }
            assert_eq!(out, whole, "split at {split}");
        }
    }

    #[test]
    fn enhanced_code_only_when_class_matches() {
        let r = all(b"250 2.0.0 Ok\r\n").unwrap();
        assert_eq!(r[0].enhanced.as_deref(), Some("2.0.0"));
        let r = all(b"250 mx.example.com\r\n").unwrap();
        assert_eq!(r[0].enhanced, None);
        let r = all(b"421 5.7.0 odd\r\n").unwrap();
        assert_eq!(r[0].enhanced, None);
    }

    #[test]
    fn rejects_garbage_and_bounds() {
        assert!(matches!(
            all(b"HTTP/1.1 400 Bad\r\n"),
            Err(ReplyError::Malformed(_))
        ));
        assert!(matches!(
            all(b"250-a\r\n251 b\r\n"),
            Err(ReplyError::CodeChanged(250, 251))
        ));
        let long = vec![b'2'; MAX_LINE + 10];
        assert_eq!(all(&long), Err(ReplyError::LineTooLong));
        let many = "250-x\r\n".repeat(MAX_LINES + 1);
        assert_eq!(all(many.as_bytes()), Err(ReplyError::TooManyLines));
    }

    #[test]
    fn auth_keywords() {
        let keywords = vec![
            "PIPELINING".to_owned(),
            "AUTH PLAIN LOGIN".to_owned(),
            "AUTH=LOGIN".to_owned(),
            "STARTTLS".to_owned(),
        ];
        assert_eq!(auth_mechanisms(&keywords), ["PLAIN", "LOGIN"]);
        assert!(has_keyword(&keywords, "starttls"));
        assert!(!has_keyword(&keywords, "SMTPUTF8"));
    }

    #[test]
    fn smtp_signature() {
        assert!(looks_like_smtp(b"220 mx ESMTP\r\n"));
        assert!(looks_like_smtp(b"220-hello"));
        assert!(!looks_like_smtp(&[0x16, 0x03, 0x03, 0x00]));
    }
}
