//! The session's input buffer and CRLF line splitting. Only CRLF ends a line
//! (RFC 5321 2.3.8); a bare LF stays inside the line so the parser can refuse it.
//! Over-long lines are discarded up to their CRLF, then reported once.

/// Most memory a drained buffer keeps between commands: enough for a
/// pipelined group of commands, far less than a message's reads.
const IDLE_CAPACITY: usize = 1024;

#[derive(Debug, Default)]
pub(super) struct InputBuffer {
    buf: Vec<u8>,
    start: usize,
    /// Inside an over-long line: drop bytes until its CRLF.
    discarding: bool,
}

pub(super) enum LineEvent {
    Line(Vec<u8>),
    TooLong,
    NeedMore,
}

impl InputBuffer {
    pub(super) fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 65536 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Frees the buffer's memory when everything in it was consumed and it
    /// grew past [`IDLE_CAPACITY`]: called while the session waits for a
    /// command, so a session that sent a big message and then idles does
    /// not hold on to the room its last reads needed (issue 9).
    pub(super) fn release_if_drained(&mut self) {
        if self.start == self.buf.len() && self.buf.capacity() > IDLE_CAPACITY {
            self.buf = Vec::new();
            self.start = 0;
        }
    }

    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    pub(super) fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
        self.discarding = false;
    }

    pub(super) fn available(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    pub(super) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
    }

    /// Next CRLF-terminated line (without the CRLF) if it fits in `max`
    /// octets including the CRLF.
    pub(super) fn next_line(&mut self, max: usize) -> LineEvent {
        let avail = &self.buf[self.start..];
        if let Some(pos) = find_crlf(avail) {
            let too_long = self.discarding || pos + 2 > max;
            let line = if too_long {
                Vec::new()
            } else {
                avail[..pos].to_vec()
            };
            self.start += pos + 2;
            self.discarding = false;
            return if too_long {
                LineEvent::TooLong
            } else {
                LineEvent::Line(line)
            };
        }
        if avail.len() >= max {
            // Keep a trailing CR: its LF may be in the next read.
            let keep = usize::from(avail.last() == Some(&b'\r'));
            self.start = self.buf.len() - keep;
            self.discarding = true;
        }
        LineEvent::NeedMore
    }
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(off) = bytes[from..].iter().position(|b| *b == b'\n') {
        let i = from + off;
        if i > 0 && bytes[i - 1] == b'\r' {
            return Some(i - 1);
        }
        from = i + 1;
    }
    None
}
