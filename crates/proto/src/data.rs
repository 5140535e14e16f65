//! Message-content decoders: the DATA dot-stream (RFC 5321 4.5.2) and the
//! line checks shared with BDAT chunks (RFC 3030).
//!
//! Strictness (STYLE 6): only CRLF ends a line; a bare CR or LF anywhere marks
//! the message as rejected but is never treated as a line end, so end of data
//! is recognised only on `CRLF.CRLF` (defeats SMTP smuggling, CVE-2023-51764
//! class). After any error the decoder keeps consuming to the final dot so the
//! rest of the message is never read as commands. Byte-at-a-time state machine:
//! input may be split anywhere.

/// Why a message body is refused. First error wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyError {
    TooBig,
    BareLineEnding,
    LineTooLong,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    LineStart,
    Mid,
    Cr,
    /// Saw a '.' at line start (DATA only).
    Dot,
    /// Saw ".\r" at line start (DATA only).
    DotCr,
}

/// Result of feeding bytes to the decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    /// All input consumed; more is needed.
    NeedMore,
    /// The terminating `.CRLF` was found after `consumed` bytes of this input.
    End { consumed: usize },
}

/// Streaming body decoder. With `dot_stuffing` it decodes DATA; without, it only
/// checks lines of a BDAT chunk stream.
#[derive(Clone, Debug)]
pub struct BodyDecoder {
    st: St,
    dot_stuffing: bool,
    line_len: usize,
    max_line: usize,
    max_size: u64,
    size: u64,
    error: Option<BodyError>,
}

impl BodyDecoder {
    /// `max_line` counts the CRLF (RFC 5321 4.5.3.1.6: 1000).
    pub fn data(max_size: u64, max_line: usize) -> Self {
        Self::new(true, max_size, max_line)
    }

    pub fn chunks(max_size: u64, max_line: usize) -> Self {
        Self::new(false, max_size, max_line)
    }

    fn new(dot_stuffing: bool, max_size: u64, max_line: usize) -> Self {
        BodyDecoder {
            st: St::LineStart,
            dot_stuffing,
            line_len: 0,
            max_line,
            max_size,
            size: 0,
            error: None,
        }
    }

    /// The first error seen, if any.
    pub fn error(&self) -> Option<BodyError> {
        self.error
    }

    /// Octets of message content accepted so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether a chunk stream ended in the middle of a line (BDAT LAST).
    pub fn ends_mid_line(&self) -> bool {
        self.st != St::LineStart
    }

    /// Marks the content as oversized without reading it (BDAT size known up front).
    pub fn set_error(&mut self, e: BodyError) {
        self.error.get_or_insert(e);
    }

    fn fail(&mut self, e: BodyError) {
        self.error.get_or_insert(e);
    }

    fn emit(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        self.size += bytes.len() as u64;
        if self.size > self.max_size {
            self.fail(BodyError::TooBig);
            return;
        }
        out.extend_from_slice(bytes);
    }

    /// A run of bytes that are neither CR nor LF. Errors are attributed to
    /// the first offending byte exactly as if the run came one byte at a
    /// time (line limit checked before size for the same byte), so the reply
    /// never depends on how the input was split into reads.
    fn ordinary_run(&mut self, out: &mut Vec<u8>, run: &[u8]) {
        let n = run.len();
        if self.error.is_none() {
            let room_line = self.max_line.saturating_sub(self.line_len);
            let room_size = self.max_size.saturating_sub(self.size);
            if room_line < n && (room_line as u64) <= room_size {
                self.fail(BodyError::LineTooLong);
            } else if room_size < n as u64 {
                self.fail(BodyError::TooBig);
            } else {
                self.size += n as u64;
                out.extend_from_slice(run);
            }
        }
        self.line_len += n;
    }

    /// End of a BDAT chunk stream (LAST): a trailing bare CR is refused; a
    /// final line without CRLF gets one, within the size limit.
    pub fn finish_chunks(&mut self, out: &mut Vec<u8>) {
        match self.st {
            St::Cr => self.fail(BodyError::BareLineEnding),
            St::Mid | St::Dot | St::DotCr => self.emit(out, b"\r\n"),
            St::LineStart => {}
        }
        self.st = St::LineStart;
        self.line_len = 0;
    }

    /// Whole lines from `input[start..]` (state `LineStart` or `Mid`) that
    /// need no decoding: CRLF-terminated, no bare CR or LF, no dot at the
    /// start of a DATA line, within both limits. They go to `out` in one
    /// copy (issue 9: line by line, the state machine cost ~50 ns a line,
    /// two copies and three trips round the loop). Returns where the first
    /// line that needs the byte-by-byte path starts (`start` when none was
    /// taken). Taking a line here or byte by byte gives the same output,
    /// state and size, so results never depend on how input was split.
    fn whole_lines(&mut self, input: &[u8], start: usize, out: &mut Vec<u8>) -> usize {
        if self.error.is_some() {
            return start;
        }
        let mut pos = start;
        let mut line_start = self.st == St::LineStart;
        let mut line_len = self.line_len;
        let mut size = self.size;
        loop {
            if line_start && self.dot_stuffing && input.get(pos) == Some(&b'.') {
                break;
            }
            let Some(rest) = input.get(pos..) else {
                break;
            };
            let Some(at) = memchr::memchr2(b'\r', b'\n', rest) else {
                break;
            };
            let cr = pos + at;
            if input[cr] != b'\r' || input.get(cr + 1) != Some(&b'\n') {
                break;
            }
            let len = line_len + at + 2;
            let new_size = size + (at as u64) + 2;
            if len > self.max_line || new_size > self.max_size {
                break;
            }
            pos = cr + 2;
            line_len = 0;
            line_start = true;
            size = new_size;
        }
        if pos > start {
            out.extend_from_slice(&input[start..pos]);
            self.size = size;
            self.line_len = 0;
            self.st = St::LineStart;
        }
        pos
    }

    fn count(&mut self, n: usize) {
        self.line_len += n;
        if self.line_len > self.max_line {
            self.fail(BodyError::LineTooLong);
        }
    }

    /// Consumes `input`, appending decoded content to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Feed {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            i += 1;
            match self.st {
                St::LineStart | St::Mid => {
                    let next = self.whole_lines(input, i - 1, out);
                    if next >= i {
                        i = next;
                        continue;
                    }
                    if self.st == St::LineStart && b == b'.' && self.dot_stuffing {
                        // The transparency dot is not content: it does not
                        // count toward the line limit (RFC 5321 4.5.3.1.6).
                        self.st = St::Dot;
                        continue;
                    }
                    // Fast path: copy a run of ordinary bytes at once,
                    // found with a vectorised search (issue 9: the byte
                    // loop was ~11 instructions per body byte).
                    let start = i - 1;
                    let end = memchr::memchr2(b'\r', b'\n', &input[start..])
                        .map_or(input.len(), |p| start + p);
                    if end > start {
                        self.ordinary_run(out, &input[start..end]);
                        i = end;
                        self.st = St::Mid;
                        continue;
                    }
                    self.count(1);
                    if b == b'\r' {
                        self.st = St::Cr;
                    } else {
                        self.fail(BodyError::BareLineEnding);
                        self.emit(out, b"\n");
                        self.st = St::Mid;
                    }
                }
                St::Cr => {
                    if b == b'\n' {
                        self.count(1);
                        self.emit(out, b"\r\n");
                        self.line_len = 0;
                        self.st = St::LineStart;
                    } else {
                        // Bare CR: not a line end. Reprocess `b` as ordinary input.
                        self.fail(BodyError::BareLineEnding);
                        self.emit(out, b"\r");
                        self.st = St::Mid;
                        i -= 1;
                    }
                }
                St::Dot => {
                    if b == b'\r' {
                        self.count(1);
                        self.st = St::DotCr;
                    } else {
                        // Dot-stuffed line: the leading dot is dropped (4.5.2).
                        self.st = St::Mid;
                        i -= 1;
                        if b == b'.' {
                            self.count(1);
                            self.emit(out, b".");
                            i += 1;
                        }
                    }
                }
                St::DotCr => {
                    if b == b'\n' {
                        self.st = St::LineStart;
                        self.line_len = 0;
                        return Feed::End { consumed: i };
                    }
                    // ".\r" followed by something else: bare CR inside a line.
                    self.fail(BodyError::BareLineEnding);
                    self.st = St::Mid;
                    i -= 1;
                }
            }
        }
        Feed::NeedMore
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> (Vec<u8>, Option<usize>, Option<BodyError>) {
        let mut d = BodyDecoder::data(1 << 20, 1000);
        let mut out = Vec::new();
        match d.feed(input, &mut out) {
            Feed::End { consumed } => (out, Some(consumed), d.error()),
            Feed::NeedMore => (out, None, d.error()),
        }
    }

    /// Same input split at every position, byte by byte and in two halves.
    fn decode_split(input: &[u8]) -> Vec<(Vec<u8>, Option<usize>, Option<BodyError>)> {
        let mut results = Vec::new();
        for cut in 0..=input.len() {
            let mut d = BodyDecoder::data(1 << 20, 1000);
            let mut out = Vec::new();
            let mut end = None;
            for (offset, part) in [(0, &input[..cut]), (cut, &input[cut..])] {
                if end.is_some() {
                    break;
                }
                if let Feed::End { consumed } = d.feed(part, &mut out) {
                    end = Some(offset + consumed);
                }
            }
            results.push((out, end, d.error()));
        }
        results
    }

    /// Everything a decoder has to say after `pieces`. After an error the
    /// content is refused and never used, so only the error, where the
    /// data ended and the final state count then.
    fn run_pieces(
        mut d: BodyDecoder,
        pieces: &[&[u8]],
    ) -> (Vec<u8>, Option<usize>, Option<BodyError>, u64, bool) {
        let mut out = Vec::new();
        let mut offset = 0;
        for part in pieces {
            if let Feed::End { consumed } = d.feed(part, &mut out) {
                return refused(out, Some(offset + consumed), d.error(), d.size(), false);
            }
            offset += part.len();
        }
        let mid = d.ends_mid_line();
        refused(out, None, d.error(), d.size(), mid)
    }

    fn refused(
        out: Vec<u8>,
        end: Option<usize>,
        error: Option<BodyError>,
        size: u64,
        mid: bool,
    ) -> (Vec<u8>, Option<usize>, Option<BodyError>, u64, bool) {
        match error {
            Some(_) => (Vec::new(), end, error, 0, mid),
            None => (out, end, error, size, mid),
        }
    }

    /// The whole-line fast path changes nothing: random bodies (dots at
    /// line starts, bare CR and LF, long lines, limits hit at every
    /// place) decode the same whole, in random pieces, and byte by byte
    /// (one byte never holds a whole line, so that is the byte-at-a-time
    /// state machine alone), for DATA and for BDAT chunks.
    #[test]
    fn whole_lines_match_byte_by_byte() {
        let mut state = 0x2545_F491_4F6C_DD1D_u64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let atoms: [&[u8]; 9] = [
            b"a", b"bc", b"word ", b".", b"\r\n", b"\r\n", b"\r\n.", b"\r", b"\n",
        ];
        for case in 0..3000 {
            let mut body = Vec::new();
            for _ in 0..next(120) {
                let pick = if case % 3 == 0 { next(9) } else { next(7) };
                body.extend_from_slice(atoms[pick as usize]);
            }
            if case % 2 == 0 {
                body.extend_from_slice(b"\r\n.\r\nNOOP\r\n");
            }
            let max_line = [1000, 8, 12, 3][case % 4];
            let max_size = [1 << 20, 40, 100, 7][(case / 4) % 4];
            let dots = case % 5 != 0;
            let make = || {
                if dots {
                    BodyDecoder::data(max_size, max_line)
                } else {
                    BodyDecoder::chunks(max_size, max_line)
                }
            };
            let bytes: Vec<&[u8]> = body.chunks(1).collect();
            let expected = run_pieces(make(), &bytes);
            assert_eq!(run_pieces(make(), &[&body]), expected, "case {case} whole");
            let mut pieces = Vec::new();
            let mut rest = body.as_slice();
            while !rest.is_empty() {
                let take = (next(40) as usize + 1).min(rest.len());
                pieces.push(&rest[..take]);
                rest = &rest[take..];
            }
            assert_eq!(run_pieces(make(), &pieces), expected, "case {case} pieces");
        }
    }

    #[test]
    fn simple_message() {
        let input = b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n";
        let (out, end, err) = decode_all(input);
        assert_eq!(out, b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(end, Some(input.len() - 6));
        assert_eq!(err, None);
        for r in decode_split(input) {
            assert_eq!(r, (out.clone(), end, None));
        }
    }

    #[test]
    fn dot_unstuffing() {
        let (out, _, err) = decode_all(b"..leading\r\n.x\r\n...\r\n.\r\n");
        assert_eq!(out, b".leading\r\nx\r\n..\r\n");
        assert_eq!(err, None);
    }

    #[test]
    fn empty_message() {
        assert_eq!(decode_all(b".\r\n"), (Vec::new(), Some(3), None));
    }

    #[test]
    fn bare_lf_dot_is_not_end_of_data() {
        // Smuggling attempt: "\n.\n" and "\r\n.\n" must not end the data.
        let input = b"hello\n.\nMAIL FROM:<evil@x>\r\n.\r\n";
        let (_, end, err) = decode_all(input);
        assert_eq!(end, Some(input.len()));
        assert_eq!(err, Some(BodyError::BareLineEnding));
        let input = b"hello\r\n.\nRCPT TO:<x@y>\r\n.\r\n";
        let (_, end, err) = decode_all(input);
        assert_eq!(end, Some(input.len()));
        assert_eq!(err, Some(BodyError::BareLineEnding));
        let input = b"hello\r.\r\nmore\r\n.\r\n";
        let (_, end, err) = decode_all(input);
        assert_eq!(end, Some(input.len()));
        assert_eq!(err, Some(BodyError::BareLineEnding));
        for r in decode_split(input) {
            assert_eq!(r.1, Some(input.len()));
            assert_eq!(r.2, Some(BodyError::BareLineEnding));
        }
    }

    #[test]
    fn too_big_keeps_reading_to_the_dot() {
        let mut d = BodyDecoder::data(10, 1000);
        let mut out = Vec::new();
        let input = b"0123456789abcdef\r\nMAIL FROM:<x@y>\r\n.\r\n";
        assert_eq!(
            d.feed(input, &mut out),
            Feed::End {
                consumed: input.len()
            }
        );
        assert_eq!(d.error(), Some(BodyError::TooBig));
    }

    #[test]
    fn long_line() {
        let mut input = vec![b'a'; 999];
        input.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(decode_all(&input).2, Some(BodyError::LineTooLong));
        let mut input = vec![b'a'; 998];
        input.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(decode_all(&input).2, None);
    }

    #[test]
    fn chunks_mode_checks_lines_without_dots() {
        let mut d = BodyDecoder::chunks(1 << 20, 1000);
        let mut out = Vec::new();
        assert_eq!(d.feed(b"a\r\n.\r\nb\r", &mut out), Feed::NeedMore);
        assert_eq!(d.feed(b"\n", &mut out), Feed::NeedMore);
        assert_eq!(out, b"a\r\n.\r\nb\r\n");
        assert_eq!(d.error(), None);
        assert!(!d.ends_mid_line());
        d.feed(b"x\ny", &mut out);
        assert_eq!(d.error(), Some(BodyError::BareLineEnding));
    }
}
