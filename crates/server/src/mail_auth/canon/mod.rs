//! The DKIM "relaxed" body canonicalisation (RFC 6376 §3.4.4) and its
//! SHA-256, streaming, for signing: [`RelaxedBodyHash`].
//!
//! It exists for speed (issue 9): mail-auth's `BodyHasher` restarts its
//! scan at every space, about every six bytes of prose, and was the biggest
//! CPU cost of signing a 1 MiB message. Here 64 bytes at a time are
//! classified into bit masks (eight bytes per `u64`: SIMD intrinsics would
//! need `unsafe`), and a run whose only whitespace is single spaces between
//! words and CRLFs between lines goes to the hash untouched, in one slice.
//!
//! The output is byte-for-byte that of mail-auth 0.13 (whose streaming
//! signer this replaces; the tests feed both the same bodies) except for
//! one mail-auth bug, fixed here: mail-auth keeps a last line of only
//! whitespace as an empty line (`a\r\n \r\n` gives `a\r\n\r\n`, not
//! `a\r\n`, and a body of only whitespace gives `\r\n`, not nothing; fixed
//! in mail-auth 0.15, its issue #62: other verifiers reject that `bh=`).
//! Here, as RFC 6376 §3.4.4 says, such a line is empty and goes with the
//! other empty lines at the end. The rules, byte by byte (mail-auth's
//! handling of bare CR and LF, which the RFC leaves open and DATA refuses
//! anyway, marked *):
//! - a CR is deleted and an LF is a line break, written CRLF: CRLF and a
//!   bare LF are both line breaks, *a bare CR vanishes (`a\rb` gives `ab`);
//! - line breaks are held back and written before the next ordinary byte
//!   (not SP, HTAB, CR or LF), so empty lines at the end of the body go,
//!   also those of only whitespace;
//! - a run of SP/HTAB is held back and written as one SP before the next
//!   ordinary byte, so whitespace before a line break or at the end goes;
//!   *a CR after whitespace drops it too (`a \rb` gives `ab`);
//! - a body with an ordinary byte ends with CRLF; any other body (empty,
//!   or only whitespace and line breaks) is empty.
//!
//! This module owns no I/O and knows nothing of messages: the caller feeds
//! it the body, split anywhere.

use aws_lc_rs::digest;

/// Bytes written to the hash in one call once this many have gathered:
/// short pieces (a held-back CRLF or space, the line after it) are copied
/// here first, as each hash update has a fixed cost.
const STAGE: usize = 8 * 1024;
/// A passthrough run this long goes to the hash directly, not copied.
const DIRECT: usize = 1024;

const CRLF_RUN_MAX: usize = 32;
const CRLF_RUN: [u8; CRLF_RUN_MAX * 2] = {
    let mut run = [b'\r'; CRLF_RUN_MAX * 2];
    let mut pos = 1;
    while pos < run.len() {
        run[pos] = b'\n';
        pos += 2;
    }
    run
};

/// The streaming relaxed body hash: [`write`](Self::write) the body in any
/// pieces, then [`finish`](Self::finish).
pub struct RelaxedBodyHash {
    canon: Canon<digest::Context>,
}

impl RelaxedBodyHash {
    pub fn new() -> Self {
        Self {
            canon: Canon::new(digest::Context::new(&digest::SHA256)),
        }
    }

    /// Feeds the next piece of the body (the bytes after the blank line
    /// that ends the header block).
    pub fn write(&mut self, chunk: &[u8]) {
        self.canon.write(chunk);
    }

    /// The SHA-256 of the canonical body: the `bh=` tag, before base64.
    pub fn finish(self) -> digest::Digest {
        self.canon.finish().finish()
    }
}

impl Default for RelaxedBodyHash {
    fn default() -> Self {
        Self::new()
    }
}

/// Where the canonical bytes go: the hash, or (in tests) a `Vec` to compare.
trait Sink {
    fn update(&mut self, bytes: &[u8]);
}

impl Sink for digest::Context {
    fn update(&mut self, bytes: &[u8]) {
        digest::Context::update(self, bytes);
    }
}

#[cfg(test)]
impl Sink for Vec<u8> {
    fn update(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// The canonicaliser's state between pieces. Held-back output is counted,
/// not buffered: `crlfs` line breaks, then one SP if `wsp`.
struct Canon<S> {
    sink: S,
    stage: Vec<u8>,
    crlfs: u64,
    wsp: bool,
    nonempty: bool,
}

impl<S: Sink> Canon<S> {
    fn new(sink: S) -> Self {
        Self {
            sink,
            stage: Vec::with_capacity(STAGE + DIRECT),
            crlfs: 0,
            wsp: false,
            nonempty: false,
        }
    }

    fn write(&mut self, mut rest: &[u8]) {
        while let Some(&first) = rest.first() {
            let n = if matches!(first, b' ' | b'\t' | b'\r' | b'\n') {
                self.whitespace(rest)
            } else {
                let n = passthrough_len(rest);
                self.emit_held();
                self.emit(&rest[..n]);
                self.nonempty = true;
                n
            };
            rest = &rest[n..];
        }
    }

    /// Takes the SP, HTAB, CR and LF at the start of `bytes` (at least one);
    /// returns how many.
    fn whitespace(&mut self, bytes: &[u8]) -> usize {
        let mut taken = 0;
        for &b in bytes {
            match b {
                // Held back until an ordinary byte: a line of only
                // whitespace is an empty line (RFC 6376 §3.4.4).
                b' ' | b'\t' => self.wsp = true,
                b'\n' => {
                    self.crlfs += 1;
                    self.wsp = false;
                }
                b'\r' => self.wsp = false,
                _ => break,
            }
            taken += 1;
        }
        taken
    }

    /// Writes what was held back, before an ordinary byte.
    fn emit_held(&mut self) {
        self.emit_crlfs();
        if self.wsp {
            self.emit(b" ");
            self.wsp = false;
        }
    }

    fn emit_crlfs(&mut self) {
        while self.crlfs != 0 {
            let take = self.crlfs.min(CRLF_RUN_MAX as u64);
            self.crlfs -= take;
            // `take` is at most CRLF_RUN_MAX.
            self.emit(&CRLF_RUN[..take as usize * 2]);
        }
    }

    fn emit(&mut self, bytes: &[u8]) {
        if bytes.len() >= DIRECT {
            self.flush_stage();
            self.sink.update(bytes);
        } else {
            self.stage.extend_from_slice(bytes);
            if self.stage.len() >= STAGE {
                self.flush_stage();
            }
        }
    }

    fn flush_stage(&mut self) {
        if !self.stage.is_empty() {
            self.sink.update(&self.stage);
            self.stage.clear();
        }
    }

    fn finish(mut self) -> S {
        // The held-back line breaks and whitespace are dropped; a body with
        // content ends with one CRLF.
        if self.nonempty {
            self.emit(b"\r\n");
        }
        self.flush_stage();
        self.sink
    }
}

/// Bit masks of one 64-byte block, bit `i` for byte `i`.
#[cfg_attr(test, derive(Debug, PartialEq))]
struct Block {
    /// Bytes up to SP: whitespace, line breaks, and the control characters,
    /// which are ordinary bytes but rare enough to leave to the slow path.
    low: u64,
    sp: u64,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

impl Block {
    /// The first 64 bytes of `window`, eight at a time in a `u64`. Each
    /// test is exact per byte, with no carry between bytes.
    #[inline(always)]
    fn classify(window: &[u8; 66]) -> Self {
        let (words, _) = window.as_chunks::<8>();
        let mut block = Block { low: 0, sp: 0 };
        for (k, word) in words.iter().enumerate() {
            let w = u64::from_le_bytes(*word);
            // (b & 0x7f) + 0x5f reaches 0x80 exactly when b & 0x7f > SP.
            let low = !(((w & LOW7) + ONES * 0x5f) | w) & HIGH;
            let t = w ^ (ONES * u64::from(b' '));
            let sp = !(((t & LOW7) + LOW7) | t) & HIGH;
            block.low |= gather(low) << (8 * k);
            block.sp |= gather(sp) << (8 * k);
        }
        block
    }

    /// The same, a byte at a time: what the tests check `classify` against.
    #[cfg(test)]
    fn classify_bytes(window: &[u8; 66]) -> Self {
        let mut block = Block { low: 0, sp: 0 };
        for (i, &b) in window[..64].iter().enumerate() {
            block.low |= u64::from(b <= b' ') << i;
            block.sp |= u64::from(b == b' ') << i;
        }
        block
    }
}

/// The top bits of the eight bytes of `x` (nothing else set) as bits 0-7:
/// the multiplier moves byte k's bit to bit 56 + k, without carries.
#[inline(always)]
fn gather(x: u64) -> u64 {
    ((x >> 7).wrapping_mul(0x0102_0408_1020_4080)) >> 56
}

/// The length of the longest prefix of `bytes` that canonicalises to
/// itself, given that `bytes[0]` is not SP, HTAB, CR or LF and that nothing
/// is held back: ordinary bytes, each SP between two of them, each CRLF
/// between two of them. It ends before an ordinary byte's successor that
/// needs the byte-by-byte path, so it is at least 1. Bytes past the end of
/// `bytes` count as needing it, so the answer holds for any next piece.
fn passthrough_len(bytes: &[u8]) -> usize {
    let mut pos = 0;
    // Bit 0 when the block's first byte is known to pass: the run's first
    // byte (even a control character), or the LF of a CRLF whose CR ended
    // the previous block.
    let mut known = 1u64;
    loop {
        let first = match bytes.get(pos..pos + 66).map(<&[u8; 66]>::try_from) {
            Some(Ok(window)) => first_stop(window, known),
            _ => {
                // The last block: zeros past the end stop the run.
                let mut padded = [0u8; 66];
                let tail = bytes.get(pos..).unwrap_or_default();
                let len = tail.len().min(66);
                padded[..len].copy_from_slice(&tail[..len]);
                first_stop(&padded, known)
            }
        };
        match first {
            Ok(at) => return (pos + at).min(bytes.len()),
            Err(carry) => {
                pos += 64;
                known = carry;
            }
        }
    }
}

/// The first of the 64 bytes of `window` (the other two are lookahead) that
/// stops a passthrough run: a byte up to SP other than an SP before an
/// ordinary byte or a CRLF before one. `Err` if none, with bit 0 set if the
/// last byte is the CR of a passing CRLF. `known`: see [`passthrough_len`].
#[inline(always)]
fn first_stop(window: &[u8; 66], known: u64) -> Result<usize, u64> {
    let Block { low, sp } = Block::classify(window);
    // Bit i: byte i+1 is up to SP.
    let low_next = (low >> 1) | (u64::from(window[64] <= b' ') << 63);
    let bad_sp = sp & low_next;
    let limit = if bad_sp == 0 {
        64
    } else {
        bad_sp.trailing_zeros() as usize
    };
    // CR, LF, HTAB, control characters: about two a line in prose, each
    // looked at here.
    let mut others = low & !sp & !known;
    let mut carry = 0;
    while others != 0 {
        let at = others.trailing_zeros() as usize;
        if at >= limit {
            break;
        }
        let crlf = window[at] == b'\r' && window[at + 1] == b'\n' && window[at + 2] > b' ';
        if !crlf {
            return Ok(at);
        }
        if at == 63 {
            carry = 1;
        }
        others &= !(3u64 << at);
    }
    if limit < 64 { Ok(limit) } else { Err(carry) }
}

#[cfg(test)]
mod tests;
