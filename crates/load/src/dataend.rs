//! Sans-IO search for the end of DATA, `CRLF . CRLF`, across chunk boundaries.
//!
//! DATA content starts at the beginning of a line, so the scanner starts as if
//! a CRLF had just been seen (an immediate `.\r\n` ends an empty message).

/// Progress through the terminator `\r\n.\r\n`: how many of its bytes the
/// input seen so far ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataEnd {
    matched: u8,
}

impl Default for DataEnd {
    fn default() -> DataEnd {
        DataEnd::new()
    }
}

impl DataEnd {
    pub fn new() -> DataEnd {
        DataEnd { matched: 2 }
    }

    /// Scans `chunk`; returns the offset just past the terminator if it ends
    /// inside this chunk (the content is everything before it), else `None`.
    pub fn scan(&mut self, chunk: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < chunk.len() {
            if self.matched == 0 {
                // Fast path: nothing matched, skip to the next CR.
                match memchr::memchr(b'\r', &chunk[i..]) {
                    Some(off) => i += off,
                    None => return None,
                }
            }
            let b = chunk[i];
            self.matched = match (self.matched, b) {
                (_, b'\r') if self.matched != 3 => 1,
                (1, b'\n') => 2,
                (2, b'.') => 3,
                (3, b'\r') => 4,
                (4, b'\n') => {
                    self.matched = 2;
                    return Some(i + 1);
                }
                _ => 0,
            };
            i += 1;
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn find_chunked(input: &[u8], chunk: usize) -> Option<usize> {
        let mut scan = DataEnd::new();
        let mut base = 0;
        for c in input.chunks(chunk) {
            if let Some(n) = scan.scan(c) {
                return Some(base + n);
            }
            base += c.len();
        }
        None
    }

    #[test]
    fn finds_terminator_in_any_chunking() {
        let cases: &[(&[u8], Option<usize>)] = &[
            (b".\r\n", Some(3)),
            (b"a\r\n.\r\nQUIT\r\n", Some(6)),
            (b"..\r\n.x\r\nb\r\n.\r\n", Some(14)),
            (b"a\r\n..\r\n", None),
            (b"a\n.\n", None),
            (b"a\r\r\n.\r\n", Some(7)),
            (b"a\r\n.\r\r\n.\r\n", Some(10)),
            (b"a\r\n.\r", None),
            (b"", None),
        ];
        for (input, want) in cases {
            for chunk in 1..=input.len().max(1) {
                assert_eq!(find_chunked(input, chunk), *want, "{input:?} chunk {chunk}");
            }
        }
    }

    #[test]
    fn resets_for_next_message() {
        let mut scan = DataEnd::new();
        assert_eq!(scan.scan(b"x\r\n.\r\n"), Some(6));
        assert_eq!(scan, DataEnd::new());
    }
}
