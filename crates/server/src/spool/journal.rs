//! Segment records as a journal (issue 9): every small message appended to a
//! segment carries its queue row, so the row's SQLite commit need not be
//! synced on its own. One fdatasync per batch (the segment's) makes the
//! message durable; the rows become durable with the next synced commit of
//! any writer, and a crash before that is repaired at start-up by
//! re-recording the rows of the records the database does not hold.
//!
//! A record, all integers little-endian:
//!
//! | octets | field |
//! |---|---|
//! | 4 | magic `PCJ1` |
//! | 1 | state: `L` live, `V` void (its commit failed; never replay) |
//! | 3 | zero |
//! | 4 | CRC-32 of the rest of the header and everything after it |
//! | 4 | row length |
//! | 8 | body length |
//! | row length | the queue row as JSON ([`Row`]) |
//! | body length | the message, byte for byte (what `spool_path` names); empty for a message with its own file, whose path the row then carries |
//!
//! How much of the journal the database holds is its journal mark
//! ([`portcullis_store::JournalMark`], the end of the last record whose row
//! was committed), written in the same transaction as the rows. So after a
//! crash the database is a prefix of the committed batches (SQLite's WAL is
//! replayed in order) and the mark says exactly where that prefix ends:
//! replay re-records the live records after it. A message that was
//! delivered, deleted or pruned was changed by a synced commit that made
//! its row, and the mark past it, durable first, so it is never replayed.
//!
//! The state byte is outside the CRC so that a failed commit can void its
//! records in place with a one-octet write. Replay of a segment stops at the
//! first record that is short, has a bad magic or CRC, or an unreadable row:
//! that is a torn tail of a batch that was never acknowledged.

use portcullis_store::{JournalMark, NewMessage};
use serde::{Deserialize, Serialize};

use crate::spool_ref::SpoolRef;

const MAGIC: &[u8; 4] = b"PCJ1";
const LIVE: u8 = b'L';
const VOID: u8 = b'V';

/// Octets before the row.
pub(crate) const HEADER_LEN: usize = 24;

/// Where the state byte is, from the start of a record.
pub(crate) const STATE_OFFSET: u64 = 4;

/// The state byte of a voided record.
pub(crate) const VOID_STATE: [u8; 1] = [VOID];

/// A queue row as a record carries it: [`NewMessage`] without the
/// `spool_path`, which is where the record's body is.
#[derive(Serialize, Deserialize)]
struct Row {
    id: String,
    sender: String,
    recipients: Vec<String>,
    size: u64,
    auth_user: Option<String>,
    client_ip: String,
    received_at: i64,
    usage_ms: Vec<i64>,
    /// A message with its own file (spilled: its body is not in the
    /// record, which is empty): where that file is. Absent for a message
    /// whose body is the record's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<String>,
}

/// The header and row of `message`'s record; its body follows it.
pub(crate) fn record_head(message: &NewMessage, body: &[u8]) -> std::io::Result<Vec<u8>> {
    encode_head(message, body, None)
}

/// The record of a message whose body is its own file, already durable at
/// `message.spool_path`: the row alone, with an empty body.
pub(crate) fn file_record_head(message: &NewMessage) -> std::io::Result<Vec<u8>> {
    encode_head(message, b"", Some(message.spool_path.clone()))
}

fn encode_head(
    message: &NewMessage,
    body: &[u8],
    file: Option<String>,
) -> std::io::Result<Vec<u8>> {
    let row = serde_json::to_vec(&Row {
        file,
        id: message.id.clone(),
        sender: message.sender.clone(),
        recipients: message.recipients.clone(),
        size: message.size,
        auth_user: message.auth_user.clone(),
        client_ip: message.client_ip.clone(),
        received_at: message.received_at,
        usage_ms: message.usage_ms.clone(),
    })
    .map_err(std::io::Error::other)?;
    let row_len = u32::try_from(row.len())
        .map_err(|_| std::io::Error::other("queue row too large for a journal record"))?;
    let mut head = Vec::with_capacity(HEADER_LEN + row.len());
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&[LIVE, 0, 0, 0]);
    head.extend_from_slice(&[0; 4]); // CRC, below
    head.extend_from_slice(&row_len.to_le_bytes());
    head.extend_from_slice(&(body.len() as u64).to_le_bytes());
    head.extend_from_slice(&row);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head[12..]);
    crc.update(body);
    head[8..12].copy_from_slice(&crc.finalize().to_le_bytes());
    Ok(head)
}

/// A record found by [`scan`].
#[derive(Debug)]
pub(crate) struct Record {
    /// The row; `spool_path` is the message's own file, or empty when the
    /// body is the record's (the caller names it).
    pub message: NewMessage,
    /// Where the body starts in the segment, and its length.
    pub body_offset: u64,
    pub body_len: u64,
    /// Where the record ends in the segment.
    pub end: u64,
    /// Its commit failed: not to be replayed.
    pub void: bool,
}

/// The records of `segment` from `start` on, up to the first one that is
/// not whole and intact (a torn tail), and where the intact ones end.
pub(crate) fn scan(segment: &[u8], start: u64) -> (Vec<Record>, u64) {
    let mut records = Vec::new();
    let mut at = start;
    while let Some(record) = usize::try_from(at)
        .ok()
        .and_then(|i| segment.get(i..))
        .and_then(|rest| parse(rest, at))
    {
        at = record.end;
        records.push(record);
    }
    (records, at)
}

/// One record at the start of `bytes`, which start at `offset` in the
/// segment.
fn parse(bytes: &[u8], offset: u64) -> Option<Record> {
    let header = bytes.get(..HEADER_LEN)?;
    if &header[..4] != MAGIC || header[5..8] != [0, 0, 0] {
        return None;
    }
    let void = match header[4] {
        LIVE => false,
        VOID => true,
        _ => return None,
    };
    let crc = u32::from_le_bytes(header[8..12].try_into().ok()?);
    let row_len = usize::try_from(u32::from_le_bytes(header[12..16].try_into().ok()?)).ok()?;
    let body_len = u64::from_le_bytes(header[16..24].try_into().ok()?);
    let total = HEADER_LEN
        .checked_add(row_len)?
        .checked_add(usize::try_from(body_len).ok()?)?;
    let record = bytes.get(..total)?;
    if crc32fast::hash(&record[12..]) != crc {
        return None;
    }
    let row: Row = serde_json::from_slice(&record[HEADER_LEN..HEADER_LEN + row_len]).ok()?;
    let body_offset = offset.checked_add((HEADER_LEN + row_len) as u64)?;
    Some(Record {
        message: NewMessage {
            id: row.id,
            sender: row.sender,
            recipients: row.recipients,
            size: row.size,
            spool_path: row.file.unwrap_or_default(),
            auth_user: row.auth_user,
            client_ip: row.client_ip,
            received_at: row.received_at,
            usage_ms: row.usage_ms,
        },
        body_offset,
        body_len,
        end: body_offset.checked_add(body_len)?,
        void,
    })
}

/// The live records after `mark` in `segments` (id, file, and the name a
/// queue row uses, oldest first), as queue rows naming their bodies.
pub(crate) fn replayable(
    segments: Vec<(u64, std::path::PathBuf, std::path::PathBuf)>,
    mark: JournalMark,
) -> std::io::Result<Vec<NewMessage>> {
    let mut out = Vec::new();
    for (id, path, name) in segments {
        let start = if id == mark.segment { mark.position } else { 0 };
        let bytes = std::fs::read(&path)?;
        let (records, end) = scan(&bytes, start);
        // Zeros after the last record are a spare's (spare.rs).
        let rest = usize::try_from(end)
            .ok()
            .and_then(|end| bytes.get(end..))
            .unwrap_or_default();
        if !rest.iter().all(|b| *b == 0) {
            tracing::warn!(
                path = %path.display(),
                at = end,
                "ignoring the end of a spool segment: not a whole record (a write cut short by a crash)"
            );
        }
        for record in records.into_iter().filter(|r| !r.void) {
            let mut message = record.message;
            if message.spool_path.is_empty() {
                message.spool_path = SpoolRef::Segment {
                    path: name.clone(),
                    offset: record.body_offset,
                    len: record.body_len,
                }
                .to_string();
            }
            out.push(message);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn message(id: &str) -> NewMessage {
        NewMessage {
            id: id.into(),
            sender: "a@example.com".into(),
            recipients: vec!["x@example.net".into(), "y@example.org".into()],
            size: 7,
            spool_path: String::new(),
            auth_user: Some("a@example.com".into()),
            client_ip: "192.0.2.1".into(),
            received_at: 1_700_000_000,
            usage_ms: vec![5, 5],
        }
    }

    fn record(id: &str, body: &[u8]) -> Vec<u8> {
        let mut r = record_head(&message(id), body).unwrap();
        r.extend_from_slice(body);
        r
    }

    #[test]
    fn records_round_trip_from_any_start() {
        let mut seg = b"old bytes before the mark".to_vec();
        let start = seg.len() as u64;
        seg.extend(record("A", b"first\r\n"));
        seg.extend(record("B", b""));
        seg.extend(record("C", &[b'x'; 3000]));
        let (records, end) = scan(&seg, start);
        assert_eq!(end, seg.len() as u64);
        let ids: Vec<&str> = records.iter().map(|r| r.message.id.as_str()).collect();
        assert_eq!(ids, ["A", "B", "C"]);
        let a = &records[0];
        assert_eq!(a.message.recipients, ["x@example.net", "y@example.org"]);
        assert_eq!(a.message.usage_ms, [5, 5]);
        assert_eq!(a.message.auth_user.as_deref(), Some("a@example.com"));
        let body = &seg[a.body_offset as usize..(a.body_offset + a.body_len) as usize];
        assert_eq!(body, b"first\r\n");
        assert!(records.iter().all(|r| !r.void));
        // From the middle: only what follows.
        let (rest, _) = scan(&seg, records[0].end);
        assert_eq!(rest.len(), 2);
    }

    #[test]
    fn a_file_record_carries_its_path_and_no_body() {
        let mut m = message("F");
        m.spool_path = "spool/F.eml#4096+7".into();
        let mut seg = file_record_head(&m).unwrap();
        seg.extend(record("S", b"seg body\r\n"));
        let (records, end) = scan(&seg, 0);
        assert_eq!(end, seg.len() as u64);
        assert_eq!(records[0].message.spool_path, "spool/F.eml#4096+7");
        assert_eq!(records[0].body_len, 0);
        assert_eq!(
            records[1].message.spool_path, "",
            "the body is the record's"
        );
        // A record written before file records existed reads the same.
        assert!(!String::from_utf8_lossy(&record("S", b"x")).contains("\"file\""));
    }

    #[test]
    fn every_torn_tail_stops_the_scan() {
        let mut seg = record("A", b"kept\r\n");
        let whole = seg.len();
        seg.extend(record("B", b"torn body\r\n"));
        for cut in whole..seg.len() {
            let (records, end) = scan(&seg[..cut], 0);
            assert_eq!(records.len(), 1, "cut at {cut}");
            assert_eq!(end, whole as u64);
        }
        // Zeros (a file extended but not written) are not a record either.
        let mut zeros = record("A", b"kept\r\n");
        zeros.extend([0u8; 100]);
        assert_eq!(scan(&zeros, 0).0.len(), 1);
    }

    #[test]
    fn a_flipped_bit_anywhere_but_the_state_is_caught() {
        let seg = record("A", b"body\r\n");
        for i in 0..seg.len() {
            if i as u64 == STATE_OFFSET {
                continue;
            }
            let mut bad = seg.clone();
            bad[i] ^= 0x10;
            assert!(scan(&bad, 0).0.is_empty(), "flip at {i}");
        }
    }

    #[test]
    fn a_voided_record_is_still_skipped_over() {
        let mut seg = record("A", b"failed\r\n");
        seg[STATE_OFFSET as usize] = VOID_STATE[0];
        seg.extend(record("B", b"next\r\n"));
        let (records, end) = scan(&seg, 0);
        assert_eq!(end, seg.len() as u64);
        assert!(records[0].void);
        assert!(!records[1].void);
    }
}
