//! RFC 3464 delivery status notifications ("bounces"), built as bytes.
//!
//! Pure: no I/O and no clock. The caller formats the dates (RFC 5322 `date-time`), picks
//! the Message-ID and the MIME boundary, and sends the result from the null reverse-path
//! (`MAIL FROM:<>`, RFC 5321 §6.1 and RFC 3461 §6.2). Never build a DSN for a message whose
//! own reverse-path was null.
//!
//! The output is a `multipart/report; report-type=delivery-status` message (RFC 6522) with
//! three parts: a `text/plain` explanation for people, the `message/delivery-status` fields
//! for programs, and the original message's header section as `text/rfc822-headers`. It
//! carries `Auto-Submitted: auto-replied` (RFC 3834) so that well-behaved software does not
//! answer it.
//!
//! Every interpolated value is untrusted (remote replies, envelope addresses, the original
//! headers): control characters, CR and LF are replaced by spaces, long values are folded,
//! and no physical line exceeds 998 octets (RFC 5322 §2.1.1) except lines copied from the
//! original header section. All line endings are CRLF.

use std::fmt::Write as _;

/// What happened to one recipient (RFC 3464 §2.3.3; only the two we report).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DsnAction {
    /// Delivery failed for good; the message will not be retried for this recipient.
    Failed,
    /// Delivery has not succeeded yet and is still being retried.
    Delayed,
}

impl DsnAction {
    fn as_str(self) -> &'static str {
        match self {
            DsnAction::Failed => "failed",
            DsnAction::Delayed => "delayed",
        }
    }
}

/// One recipient's entry in the report.
#[derive(Clone, Copy, Debug)]
pub struct DsnRecipient<'a> {
    /// The address we tried to deliver to (`Final-Recipient: rfc822; ...`).
    pub final_recipient: &'a str,
    /// The ORCPT value if the client gave one: a bare address, or already typed
    /// (`rfc822;a@b`, as the ORCPT parameter carries it after xtext decoding).
    pub original_recipient: Option<&'a str>,
    pub action: DsnAction,
    /// RFC 3463 status `class.subject.detail`, e.g. `"5.1.1"`. An invalid value is replaced
    /// by `5.0.0` (failed) or `4.0.0` (delayed).
    pub status: &'a str,
    /// The remote MTA's host name, if we reached one (`Remote-MTA: dns; ...`).
    pub remote_mta: Option<&'a str>,
    /// The remote server's full reply, e.g. `"550 5.1.1 <x@y>: user unknown"`; multi-line
    /// replies (CRLF or LF separated) are kept line by line, folded into one field.
    pub diagnostic: Option<&'a str>,
    pub last_attempt_date: Option<&'a str>,
    /// Reported for [`DsnAction::Delayed`] recipients only.
    pub will_retry_until: Option<&'a str>,
}

/// Everything a DSN says. Dates are preformatted RFC 5322 `date-time` strings.
#[derive(Clone, Copy, Debug)]
pub struct DsnReport<'a> {
    /// Our host name: `Reporting-MTA: dns; ...` and `MAILER-DAEMON@...`.
    pub reporting_mta: &'a str,
    /// The original message's reverse-path, without angle brackets; the DSN goes there.
    pub original_sender: &'a str,
    /// The ENVID parameter of the original MAIL FROM, if any (xtext-decoded).
    pub original_envelope_id: Option<&'a str>,
    pub arrival_date: &'a str,
    /// This report's `Date:`.
    pub date: &'a str,
    /// This report's Message-ID, without angle brackets.
    pub message_id: &'a str,
    /// The MIME boundary: should be random. Characters outside RFC 2046 `bchars` are dropped
    /// and it is cut to 70 characters.
    pub boundary: &'a str,
    pub recipients: &'a [DsnRecipient<'a>],
    /// The original message's header section, e.g. from [`header_block`]. Capped at 64 KiB.
    pub original_headers: &'a [u8],
}

/// Cap for [`header_block`] and for the copied original headers.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Soft line length when folding (RFC 5322 §2.1.1 "SHOULD be no more than 78").
const SOFT_LINE: usize = 78;
/// Wrap width for quoted remote reply lines in the text part.
const QUOTE_LINE: usize = 200;
/// Longest run of non-space characters put on one line before a forced break.
const HARD_CHUNK: usize = 900;
/// The most of one remote reply we quote (bytes before cleaning).
const MAX_DIAGNOSTIC: usize = 4096;
/// The most lines of one remote reply we quote.
const MAX_DIAGNOSTIC_LINES: usize = 32;
/// Used when the caller's boundary has no usable character.
const FALLBACK_BOUNDARY: &str = "=_portcullis-dsn_=";

/// The header section of `message`: everything up to, not including, the first empty line
/// (`CRLF CRLF` or `LF LF`), or the whole input if it has none.
///
/// Capped at [`MAX_HEADER_BLOCK`] bytes, cut after the last line break within the cap (or at
/// the cap if there is none).
pub fn header_block(message: &[u8]) -> &[u8] {
    let mut start = 0;
    while start < message.len() && start < MAX_HEADER_BLOCK {
        let rest = message.get(start..).unwrap_or_default();
        if rest.starts_with(b"\r\n") || rest.starts_with(b"\n") {
            return message.get(..start).unwrap_or_default();
        }
        match rest.iter().position(|b| *b == b'\n') {
            Some(p) => start += p + 1,
            None => start = message.len(),
        }
    }
    if start <= MAX_HEADER_BLOCK {
        return message.get(..start).unwrap_or_default();
    }
    // Over the cap: end at the last line break inside it.
    let capped = message.get(..MAX_HEADER_BLOCK).unwrap_or_default();
    match capped.iter().rposition(|b| *b == b'\n') {
        Some(p) => capped.get(..=p).unwrap_or_default(),
        None => capped,
    }
}

/// Builds the complete DSN message (header and body), CRLF line endings.
pub fn build_dsn(r: &DsnReport<'_>) -> Vec<u8> {
    let boundary = clean_boundary(r.boundary);
    let host = clean_token(r.reporting_mta);
    let any_failed = r.recipients.iter().any(|x| x.action == DsnAction::Failed);
    let subject = if any_failed || r.recipients.is_empty() {
        "Undelivered Mail Returned to Sender"
    } else {
        "Delayed Mail (still being retried)"
    };

    let text = text_part(r, &host, any_failed);
    let status = status_part(r, &host);
    let headers = headers_part(r.original_headers, &boundary);
    let eight_bit = !text.is_ascii() || !headers.is_ascii();

    let mut out = Vec::with_capacity(text.len() + status.len() + headers.len() + 1024);
    let mut h = String::new();
    push_field(
        &mut h,
        "From",
        &[&format!("\"Mail Delivery System\" <MAILER-DAEMON@{host}>")],
    );
    push_field(
        &mut h,
        "To",
        &[&format!("<{}>", clean_address(r.original_sender))],
    );
    push_field(&mut h, "Subject", &[subject]);
    push_field(&mut h, "Date", &[&clean(r.date)]);
    push_field(
        &mut h,
        "Message-ID",
        &[&format!("<{}>", clean_message_id(r.message_id))],
    );
    push_field(&mut h, "Auto-Submitted", &["auto-replied"]);
    push_field(&mut h, "MIME-Version", &["1.0"]);
    push_field(
        &mut h,
        "Content-Type",
        &[
            "multipart/report; report-type=delivery-status;",
            &format!("boundary=\"{boundary}\""),
        ],
    );
    if eight_bit {
        push_field(&mut h, "Content-Transfer-Encoding", &["8bit"]);
    }
    h.push_str("\r\nThis is a MIME-encapsulated message.\r\n");

    // Part 1: for people.
    let _ = write!(h, "\r\n--{boundary}\r\n");
    push_field(&mut h, "Content-Type", &["text/plain; charset=utf-8"]);
    let cte = if text.is_ascii() { "7bit" } else { "8bit" };
    push_field(&mut h, "Content-Transfer-Encoding", &[cte]);
    push_field(&mut h, "Content-Description", &["Notification"]);
    h.push_str("\r\n");
    h.push_str(&text);

    // Part 2: for programs.
    let _ = write!(h, "\r\n--{boundary}\r\n");
    push_field(&mut h, "Content-Type", &["message/delivery-status"]);
    push_field(&mut h, "Content-Description", &["Delivery report"]);
    h.push_str("\r\n");
    h.push_str(&status);

    // Part 3: what was sent.
    let _ = write!(h, "\r\n--{boundary}\r\n");
    push_field(&mut h, "Content-Type", &["text/rfc822-headers"]);
    if !headers.is_ascii() {
        push_field(&mut h, "Content-Transfer-Encoding", &["8bit"]);
    }
    push_field(
        &mut h,
        "Content-Description",
        &["Undelivered message headers"],
    );
    h.push_str("\r\n");
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(&headers);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// The human-readable explanation (part 1).
fn text_part(r: &DsnReport<'_>, host: &str, any_failed: bool) -> String {
    let mut t = String::new();
    let _ = write!(t, "This is the mail system at host {host}.\r\n\r\n");
    if any_failed {
        push_wrapped(
            &mut t,
            "",
            "Your message could not be delivered to one or more recipients. \
             Its headers are attached below.",
        );
    } else {
        push_wrapped(
            &mut t,
            "",
            "Your message has not been delivered yet to the recipients below. \
             No action is needed: delivery is still being retried, and you will be \
             told if it finally fails.",
        );
    }
    for rcpt in r.recipients {
        t.push_str("\r\n");
        let addr = clean_address(rcpt.final_recipient);
        let status = valid_status(rcpt.status, rcpt.action);
        let what = match rcpt.action {
            DsnAction::Failed => {
                format!("<{addr}>: delivery failed permanently; the message will not be retried.")
            }
            DsnAction::Delayed => match rcpt.will_retry_until {
                Some(until) => format!(
                    "<{addr}>: delivery is delayed; still retrying until {}.",
                    clean(until)
                ),
                None => format!("<{addr}>: delivery is delayed; still retrying."),
            },
        };
        push_wrapped(&mut t, "", &what);
        push_wrapped(
            &mut t,
            "    ",
            &format!("Status {status}: {}.", status_meaning(&status)),
        );
        if let Some(when) = rcpt.last_attempt_date {
            push_wrapped(&mut t, "    ", &format!("Last attempt: {}", clean(when)));
        }
        if let Some(reply) = rcpt.diagnostic {
            let said = match rcpt.remote_mta {
                Some(mta) => format!("The remote server {} said:", clean_token(mta)),
                None => "The remote server said:".to_owned(),
            };
            push_wrapped(&mut t, "    ", &said);
            // Quoted as received, one reply line per body line (wrapped only if huge).
            for line in diagnostic_lines(reply) {
                push_wrapped_at(&mut t, "        ", &line, QUOTE_LINE);
            }
        } else if let Some(mta) = rcpt.remote_mta {
            push_wrapped(
                &mut t,
                "    ",
                &format!("Remote server: {}", clean_token(mta)),
            );
        }
    }
    t
}

/// The `message/delivery-status` body (part 2), RFC 3464 §2.2 and §2.3.
fn status_part(r: &DsnReport<'_>, host: &str) -> String {
    let mut s = String::new();
    push_field(&mut s, "Reporting-MTA", &[&format!("dns; {host}")]);
    if let Some(envid) = r.original_envelope_id {
        push_field(&mut s, "Original-Envelope-Id", &[&ascii(&clean(envid))]);
    }
    push_field(&mut s, "Arrival-Date", &[&ascii(&clean(r.arrival_date))]);
    for rcpt in r.recipients {
        s.push_str("\r\n");
        if let Some(orcpt) = rcpt.original_recipient {
            push_field(&mut s, "Original-Recipient", &[&typed_address(orcpt)]);
        }
        push_field(
            &mut s,
            "Final-Recipient",
            &[&format!(
                "rfc822; {}",
                ascii(&clean_address(rcpt.final_recipient))
            )],
        );
        push_field(&mut s, "Action", &[rcpt.action.as_str()]);
        push_field(&mut s, "Status", &[&valid_status(rcpt.status, rcpt.action)]);
        if let Some(mta) = rcpt.remote_mta {
            push_field(
                &mut s,
                "Remote-MTA",
                &[&format!("dns; {}", ascii(&clean_token(mta)))],
            );
        }
        if let Some(reply) = rcpt.diagnostic {
            let lines: Vec<String> = diagnostic_lines(reply).iter().map(|l| ascii(l)).collect();
            if let Some((first, rest)) = lines.split_first() {
                let mut segments = vec![format!("smtp; {first}")];
                segments.extend(rest.iter().cloned());
                let refs: Vec<&str> = segments.iter().map(String::as_str).collect();
                push_field(&mut s, "Diagnostic-Code", &refs);
            }
        }
        if let Some(when) = rcpt.last_attempt_date {
            push_field(&mut s, "Last-Attempt-Date", &[&ascii(&clean(when))]);
        }
        if rcpt.action == DsnAction::Delayed
            && let Some(until) = rcpt.will_retry_until
        {
            push_field(&mut s, "Will-Retry-Until", &[&ascii(&clean(until))]);
        }
    }
    s
}

/// The original header section (part 3): CRLF line endings, no NUL or bare CR, no empty
/// line (which would end the part's headers early), and no line that could be read as our
/// boundary. Always ends with CRLF when non-empty.
fn headers_part(original: &[u8], boundary: &str) -> Vec<u8> {
    let block = header_block(original);
    let delimiter = format!("--{boundary}");
    let mut out = Vec::with_capacity(block.len() + 64);
    for line in block.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line: Vec<u8> = line
            .iter()
            .map(|&b| if b == b'\r' || b == 0 { b' ' } else { b })
            .collect();
        if line.iter().all(|b| *b == b' ' || *b == b'\t') {
            continue;
        }
        if line.starts_with(delimiter.as_bytes()) {
            out.push(b' ');
        }
        out.extend_from_slice(&line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A remote reply split into cleaned, non-empty lines, bounded in size and count.
fn diagnostic_lines(reply: &str) -> Vec<String> {
    let mut end = reply.len().min(MAX_DIAGNOSTIC);
    while !reply.is_char_boundary(end) {
        end -= 1;
    }
    reply
        .get(..end)
        .unwrap_or_default()
        .split('\n')
        .map(clean)
        .filter(|l| !l.is_empty())
        .take(MAX_DIAGNOSTIC_LINES)
        .collect()
}

/// `status` if it is a well-formed RFC 3463 code (`[245].d{1,3}.d{1,3}`), else a generic one.
fn valid_status(status: &str, action: DsnAction) -> String {
    let s = status.trim();
    let parts: Vec<&str> = s.split('.').collect();
    let ok = matches!(parts.as_slice(), [class, subject, detail]
    if matches!(*class, "2" | "4" | "5")
        && [subject, detail].iter().all(|p| {
            (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit())
        }));
    if ok {
        return s.to_owned();
    }
    match action {
        DsnAction::Failed => "5.0.0".to_owned(),
        DsnAction::Delayed => "4.0.0".to_owned(),
    }
}

/// A short plain-English reading of an RFC 3463 status (the common ones).
fn status_meaning(status: &str) -> &'static str {
    let (class, rest) = status.split_once('.').unwrap_or((status, ""));
    let specific = match rest {
        "1.1" => "the mailbox does not exist",
        "1.2" => "the recipient's domain does not exist or does not accept mail",
        "1.3" => "the recipient address is malformed",
        "1.6" => "the mailbox has moved",
        "1.10" => "the recipient's domain accepts no mail (null MX)",
        "2.1" => "the mailbox is disabled",
        "2.2" => "the mailbox is full",
        "2.3" => "the message is larger than the recipient accepts",
        "3.4" => "the message is too big for the receiving system",
        "4.1" => "the receiving server did not answer",
        "4.2" => "the connection was dropped",
        "4.3" => "a DNS lookup for the recipient's domain failed",
        "4.4" => "no route to the recipient's mail server",
        "4.7" => "the message has been in the queue too long",
        "7.1" => "delivery was refused by policy",
        "7.26" | "7.27" => "the receiving server rejected the sender's authentication",
        _ => "",
    };
    if !specific.is_empty() {
        return specific;
    }
    match class {
        "5" => "permanent failure",
        "4" => "temporary failure",
        _ => "delivery status",
    }
}

/// `Original-Recipient` value: keeps an existing `type;` prefix, else adds `rfc822;`.
fn typed_address(orcpt: &str) -> String {
    let v = ascii(&clean(orcpt));
    if let Some((kind, addr)) = v.split_once(';')
        && !kind.is_empty()
        && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return format!("{}; {}", kind.to_ascii_lowercase(), addr.trim());
    }
    format!("rfc822; {}", clean_address(&v))
}

/// Writes `Name: seg1 CRLF SP seg2 ...`: each segment after the first starts a continuation
/// line; inside a segment, words are folded at `SOFT_LINE` and runs longer than `HARD_CHUNK`
/// are broken. Segments must already be cleaned (no CR/LF).
fn push_field(out: &mut String, name: &str, segments: &[&str]) {
    out.push_str(name);
    out.push(':');
    let mut line_len = name.len() + 1;
    let mut wrote_segment = false;
    for segment in segments {
        let mut words = segment.split(' ').filter(|w| !w.is_empty()).peekable();
        if words.peek().is_none() {
            continue; // an empty continuation line would end the header section
        }
        if wrote_segment {
            out.push_str("\r\n");
            line_len = 0;
        }
        wrote_segment = true;
        let mut first = true;
        for word in words {
            for chunk in chunks(word, HARD_CHUNK) {
                // Always at least one space before a word: after the colon, or as the
                // folding white space of a continuation line.
                if !first && line_len + 1 + chunk.len() > SOFT_LINE {
                    out.push_str("\r\n");
                    line_len = 0;
                }
                out.push(' ');
                out.push_str(chunk);
                line_len += 1 + chunk.len();
                first = false;
            }
        }
    }
    out.push_str("\r\n");
}

/// Writes `text` as body lines prefixed with `indent`, wrapped at `SOFT_LINE`.
fn push_wrapped(out: &mut String, indent: &str, text: &str) {
    push_wrapped_at(out, indent, text, SOFT_LINE);
}

/// Writes `text` as body lines prefixed with `indent`, wrapped at `width`.
fn push_wrapped_at(out: &mut String, indent: &str, text: &str, width: usize) {
    let mut line_len = 0;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        for chunk in chunks(word, HARD_CHUNK) {
            if line_len > 0 && line_len + 1 + chunk.len() > width {
                out.push_str("\r\n");
                line_len = 0;
            }
            if line_len == 0 {
                out.push_str(indent);
                line_len = indent.len();
                if indent.is_empty() && chunk.starts_with("--") {
                    // Never let a body line look like a MIME delimiter.
                    out.push(' ');
                    line_len += 1;
                }
            } else {
                out.push(' ');
                line_len += 1;
            }
            out.push_str(chunk);
            line_len += chunk.len();
        }
    }
    out.push_str("\r\n");
}

/// Splits `word` into pieces of at most `max` bytes on character boundaries.
fn chunks(word: &str, max: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = word;
    while rest.len() > max {
        let mut cut = max;
        while cut > 0 && !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        if cut == 0 {
            break;
        }
        let (head, tail) = rest.split_at(cut);
        pieces.push(head);
        rest = tail;
    }
    pieces.push(rest);
    pieces
}

/// Replaces every control character (CR, LF, TAB, NUL, DEL, C1) with a space and trims.
fn clean(s: &str) -> String {
    let replaced: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    replaced.trim().to_owned()
}

/// An address for `<...>`: cleaned, without angle brackets or spaces around it.
fn clean_address(s: &str) -> String {
    clean(s)
        .chars()
        .filter(|c| *c != '<' && *c != '>')
        .collect::<String>()
        .trim()
        .to_owned()
}

/// A host name or similar token: cleaned, with no white space, quotes or brackets.
fn clean_token(s: &str) -> String {
    clean(s)
        .chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '<' | '>' | '"' | ';' | ','))
        .collect()
}

/// A Message-ID body: a token without angle brackets or `@`-breaking spaces.
fn clean_message_id(s: &str) -> String {
    let id = clean_token(s);
    if id.is_empty() {
        "dsn@invalid".to_owned()
    } else {
        id
    }
}

/// RFC 2046 boundary: only `bchars` (no space, to keep quoting trivial), 1 to 70 long.
fn clean_boundary(s: &str) -> String {
    let b: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "'()+_,-./:=?".contains(*c))
        .take(70)
        .collect();
    if b.is_empty() {
        FALLBACK_BOUNDARY.to_owned()
    } else {
        b
    }
}

/// 7-bit form for the delivery-status fields: non-ASCII characters become `\x{HEX}`
/// (the RFC 6533 §3 `embedded-unicode-char` notation).
fn ascii(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let _ = write!(out, "\\x{{{:X}}}", u32::from(c));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const HEADERS: &[u8] = b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: hello\r\nMessage-ID: <m1@example.org>\r\n";

    fn failed<'a>() -> DsnRecipient<'a> {
        DsnRecipient {
            final_recipient: "bob@example.net",
            original_recipient: Some("rfc822;Bob@Example.NET"),
            action: DsnAction::Failed,
            status: "5.1.1",
            remote_mta: Some("mx.example.net"),
            diagnostic: Some("550 5.1.1 <bob@example.net>: user unknown"),
            last_attempt_date: Some("Tue, 1 Dec 2026 21:00:00 +0000"),
            will_retry_until: None,
        }
    }

    fn delayed<'a>() -> DsnRecipient<'a> {
        DsnRecipient {
            final_recipient: "carol@example.com",
            original_recipient: None,
            action: DsnAction::Delayed,
            status: "4.4.1",
            remote_mta: None,
            diagnostic: Some("421-4.4.1 busy\r\n421 4.4.1 try later"),
            last_attempt_date: Some("Tue, 1 Dec 2026 21:30:00 +0000"),
            will_retry_until: Some("Sat, 5 Dec 2026 21:00:00 +0000"),
        }
    }

    fn report<'a>(recipients: &'a [DsnRecipient<'a>]) -> DsnReport<'a> {
        DsnReport {
            reporting_mta: "mail.example.org",
            original_sender: "alice@example.org",
            original_envelope_id: Some("QQ314159"),
            arrival_date: "Tue, 1 Dec 2026 20:59:58 +0000",
            date: "Tue, 1 Dec 2026 21:00:01 +0000",
            message_id: "dsn.1234@mail.example.org",
            boundary: "b0und4ry.XYZ",
            recipients,
            original_headers: HEADERS,
        }
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// Every line ends in CRLF, no bare CR or LF, no line over 998 octets.
    fn assert_wire_clean(out: &[u8]) {
        assert!(out.ends_with(b"\r\n"));
        for (i, b) in out.iter().enumerate() {
            if *b == b'\n' {
                assert_eq!(out[i - 1], b'\r', "bare LF at {i}");
            }
            if *b == b'\r' {
                assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR at {i}");
            }
        }
        for line in out.split(|b| *b == b'\n') {
            assert!(line.len() <= 999, "line too long: {}", line.len());
        }
    }

    /// (top-level headers, [part1, part2, part3]) split on the boundary.
    fn split(out: &str, boundary: &str) -> (String, Vec<String>) {
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        let delim = format!("\r\n--{boundary}");
        let mut pieces: Vec<&str> = body.split(&delim).collect();
        assert_eq!(pieces.pop().unwrap(), "--\r\n", "closing delimiter");
        pieces.remove(0); // preamble
        (
            head.to_owned(),
            pieces
                .into_iter()
                .map(|p| p.strip_prefix("\r\n").unwrap().to_owned())
                .collect(),
        )
    }

    #[test]
    fn failed_structure_and_fields() {
        let rcpts = [failed()];
        let out = build_dsn(&report(&rcpts));
        assert_wire_clean(&out);
        let out = text(&out);
        let (head, parts) = split(&out, "b0und4ry.XYZ");
        assert_eq!(
            head,
            "From: \"Mail Delivery System\" <MAILER-DAEMON@mail.example.org>\r\n\
             To: <alice@example.org>\r\n\
             Subject: Undelivered Mail Returned to Sender\r\n\
             Date: Tue, 1 Dec 2026 21:00:01 +0000\r\n\
             Message-ID: <dsn.1234@mail.example.org>\r\n\
             Auto-Submitted: auto-replied\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=delivery-status;\r\n \
             boundary=\"b0und4ry.XYZ\""
        );
        assert_eq!(parts.len(), 3);
        assert!(parts[0].starts_with("Content-Type: text/plain; charset=utf-8\r\n"));
        assert!(parts[0].contains("<bob@example.net>: delivery failed permanently"));
        assert!(parts[0].contains("The remote server mx.example.net said:"));
        assert!(parts[0].contains("        550 5.1.1 <bob@example.net>: user unknown\r\n"));
        assert!(parts[0].contains("Status 5.1.1: the mailbox does not exist."));

        assert_eq!(
            parts[1],
            "Content-Type: message/delivery-status\r\n\
             Content-Description: Delivery report\r\n\
             \r\n\
             Reporting-MTA: dns; mail.example.org\r\n\
             Original-Envelope-Id: QQ314159\r\n\
             Arrival-Date: Tue, 1 Dec 2026 20:59:58 +0000\r\n\
             \r\n\
             Original-Recipient: rfc822; Bob@Example.NET\r\n\
             Final-Recipient: rfc822; bob@example.net\r\n\
             Action: failed\r\n\
             Status: 5.1.1\r\n\
             Remote-MTA: dns; mx.example.net\r\n\
             Diagnostic-Code: smtp; 550 5.1.1 <bob@example.net>: user unknown\r\n\
             Last-Attempt-Date: Tue, 1 Dec 2026 21:00:00 +0000\r\n"
        );
        assert_eq!(
            parts[2],
            format!(
                "Content-Type: text/rfc822-headers\r\n\
                 Content-Description: Undelivered message headers\r\n\r\n{}",
                text(HEADERS)
            )
        );
    }

    #[test]
    fn delayed_only_subject_and_fields() {
        let rcpts = [delayed()];
        let out = text(&build_dsn(&report(&rcpts)));
        assert!(out.contains("\r\nSubject: Delayed Mail (still being retried)\r\n"));
        let (_, parts) = split(&out, "b0und4ry.XYZ");
        assert!(
            parts[0]
                .replace("\r\n", " ")
                .contains("still retrying until Sat, 5 Dec 2026 21:00:00 +0000.")
        );
        assert!(parts[0].contains("        421-4.4.1 busy\r\n        421 4.4.1 try later\r\n"));
        assert!(parts[1].contains(
            "\r\n\r\nFinal-Recipient: rfc822; carol@example.com\r\n\
             Action: delayed\r\n\
             Status: 4.4.1\r\n\
             Diagnostic-Code: smtp; 421-4.4.1 busy\r\n 421 4.4.1 try later\r\n\
             Last-Attempt-Date: Tue, 1 Dec 2026 21:30:00 +0000\r\n\
             Will-Retry-Until: Sat, 5 Dec 2026 21:00:00 +0000\r\n"
        ));
        assert!(!parts[1].contains("Original-Recipient"));
        assert!(!parts[1].contains("Remote-MTA"));
    }

    #[test]
    fn mixed_report_is_a_failure_and_keeps_recipient_order() {
        let rcpts = [delayed(), failed()];
        let out = text(&build_dsn(&report(&rcpts)));
        assert!(out.contains("\r\nSubject: Undelivered Mail Returned to Sender\r\n"));
        let (_, parts) = split(&out, "b0und4ry.XYZ");
        let carol = parts[1].find("carol@").unwrap();
        let bob = parts[1].find("Final-Recipient: rfc822; bob@").unwrap();
        assert!(carol < bob);
        // Will-Retry-Until only on the delayed recipient.
        assert_eq!(parts[1].matches("Will-Retry-Until").count(), 1);
    }

    #[test]
    fn failed_recipient_never_gets_will_retry_until() {
        let mut r = failed();
        r.will_retry_until = Some("Sat, 5 Dec 2026 21:00:00 +0000");
        let rcpts = [r];
        let out = text(&build_dsn(&report(&rcpts)));
        assert!(!out.contains("Will-Retry-Until"));
    }

    #[test]
    fn header_injection_is_neutralised() {
        let evil = DsnRecipient {
            final_recipient: "bob@example.net\r\nBcc: victim@example.com",
            original_recipient: Some("x@y\nX-Evil: 1"),
            action: DsnAction::Failed,
            status: "5.1.1\r\nX-Evil: 2",
            remote_mta: Some("mx.example.net\r\n\r\n--b0und4ry.XYZ\r\nX-Evil: 3"),
            diagnostic: Some("550 no\r\nX-Evil: 4\r\n\r\n--b0und4ry.XYZ--\x00\x1b[31m"),
            last_attempt_date: Some("today\rX-Evil: 5"),
            will_retry_until: None,
        };
        let rcpts = [evil];
        let r = DsnReport {
            reporting_mta: "mail.example.org\r\nX-Evil: 6",
            original_sender: "alice@example.org>\r\nBcc: <victim@example.com",
            original_envelope_id: Some("id\r\nX-Evil: 7"),
            arrival_date: "now\nX-Evil: 8",
            date: "now\r\nX-Evil: 9",
            message_id: "id@x>\r\nX-Evil: 10",
            boundary: "b0und4ry.XYZ\r\nX-Evil: 11",
            recipients: &rcpts,
            original_headers: b"Subject: hi\n\r\n--b0und4ry.XYZ--\r\nX-Orig: 1\r\n",
        };
        let out = build_dsn(&r);
        assert_wire_clean(&out);
        let out = text(&out);
        // No line of the output starts with an injected field, and no NUL/ESC survives.
        for line in out.split("\r\n") {
            assert!(!line.starts_with("X-Evil"), "injected line: {line:?}");
            assert!(!line.starts_with("Bcc"), "injected line: {line:?}");
        }
        assert!(!out.contains('\0') && !out.contains('\x1b'));
        // The boundary lost its CR/LF (and the space that followed), so the structure holds.
        let boundary = "b0und4ry.XYZX-Evil:11";
        assert!(out.contains(&format!("boundary=\"{boundary}\"")));
        let (_, parts) = split(&out, boundary);
        assert_eq!(parts.len(), 3);
        // Remote text cannot fake a delimiter: it is folded into one logical field.
        assert!(
            parts[1].contains("Diagnostic-Code: smtp; 550 no\r\n X-Evil: 4\r\n --b0und4ry.XYZ--")
        );
        assert!(parts[1].contains("Status: 5.0.0\r\n"));
        assert!(parts[1].contains("Remote-MTA: dns; mx.example.net--b0und4ry.XYZX-Evil:3\r\n"));
        assert!(out.contains("\r\nTo: <alice@example.org Bcc: victim@example.com>\r\n"));
        // Original headers: the blank line and the LF-only break are normalised.
        assert!(parts[2].ends_with("\r\n\r\nSubject: hi\r\n"));
    }

    #[test]
    fn original_headers_cannot_forge_the_boundary() {
        let rcpts = [failed()];
        let mut r = report(&rcpts);
        r.original_headers = b"X-A: 1\r\n--b0und4ry.XYZ--\r\nX-B: 2\r\n";
        let out = text(&build_dsn(&r));
        assert!(out.contains("\r\nX-A: 1\r\n --b0und4ry.XYZ--\r\nX-B: 2\r\n"));
        let (_, parts) = split(&out, "b0und4ry.XYZ");
        assert_eq!(parts.len(), 3);
    }

    #[test]
    fn long_and_multiline_diagnostics_are_folded() {
        let long = format!("550 5.7.1 {}", "word ".repeat(400));
        let mut rcpt = failed();
        rcpt.diagnostic = Some(&long);
        let unbroken = "x".repeat(3000);
        rcpt.remote_mta = Some(&unbroken);
        let rcpts = [rcpt];
        let out = build_dsn(&report(&rcpts));
        assert_wire_clean(&out);
        let out = text(&out);
        let (_, parts) = split(&out, "b0und4ry.XYZ");
        let field = parts[1]
            .split("\r\nDiagnostic-Code: ")
            .nth(1)
            .unwrap()
            .split("\r\nLast-Attempt-Date")
            .next()
            .unwrap();
        // Continuation lines only; each folded line within the soft limit.
        for (i, line) in field.split("\r\n").enumerate() {
            if i > 0 {
                assert!(line.starts_with(' '));
            }
            assert!(line.len() <= SOFT_LINE);
        }
        assert_eq!(
            field.replace("\r\n", ""),
            format!("smtp; {}", long.trim_end())
        );
    }

    #[test]
    fn non_ascii_is_escaped_in_status_and_kept_in_text() {
        let mut rcpt = failed();
        rcpt.final_recipient = "jörg@example.de";
        rcpt.diagnostic = Some("550 Benutzer unbekannt ✗");
        let rcpts = [rcpt];
        let out = text(&build_dsn(&report(&rcpts)));
        let (head, parts) = split(&out, "b0und4ry.XYZ");
        assert!(head.contains("Content-Transfer-Encoding: 8bit"));
        assert!(parts[0].contains("Content-Transfer-Encoding: 8bit"));
        assert!(parts[0].contains("<jörg@example.de>"));
        assert!(parts[1].is_ascii());
        assert!(parts[1].contains("Final-Recipient: rfc822; j\\x{F6}rg@example.de\r\n"));
        assert!(parts[1].contains("unbekannt \\x{2717}"));
    }

    #[test]
    fn status_is_validated() {
        assert_eq!(valid_status("5.1.1", DsnAction::Failed), "5.1.1");
        assert_eq!(valid_status(" 4.7.26 ", DsnAction::Delayed), "4.7.26");
        assert_eq!(valid_status("4.4.7", DsnAction::Failed), "4.4.7");
        for bad in [
            "", "5", "5.1", "6.1.1", "5.1.1.1", "5.1.1234", "5.a.1", "5..1",
        ] {
            assert_eq!(valid_status(bad, DsnAction::Failed), "5.0.0", "{bad:?}");
            assert_eq!(valid_status(bad, DsnAction::Delayed), "4.0.0", "{bad:?}");
        }
    }

    #[test]
    fn boundary_and_ids_are_sanitised() {
        assert_eq!(clean_boundary("a b\"c"), "abc");
        assert_eq!(clean_boundary("\r\n"), FALLBACK_BOUNDARY);
        assert_eq!(clean_boundary(&"z".repeat(100)).len(), 70);
        assert_eq!(clean_message_id("<x@y>"), "x@y");
        assert_eq!(clean_message_id(" "), "dsn@invalid");
        assert_eq!(typed_address("a@b"), "rfc822; a@b");
        assert_eq!(typed_address("RFC822;a@b"), "rfc822; a@b");
        assert_eq!(typed_address("<a@b>"), "rfc822; a@b");
    }

    #[test]
    fn header_block_variants() {
        assert_eq!(
            header_block(b"A: 1\r\nB: 2\r\n\r\nbody\r\n"),
            b"A: 1\r\nB: 2\r\n"
        );
        assert_eq!(header_block(b"A: 1\nB: 2\n\nbody\n"), b"A: 1\nB: 2\n");
        assert_eq!(header_block(b"A: 1\r\nB: 2\n\r\nbody"), b"A: 1\r\nB: 2\n");
        assert_eq!(header_block(b"A: 1\r\nB: 2\r\n"), b"A: 1\r\nB: 2\r\n");
        assert_eq!(header_block(b"A: 1\r\nB: 2"), b"A: 1\r\nB: 2");
        assert_eq!(header_block(b"\r\nbody"), b"");
        assert_eq!(header_block(b"\nbody"), b"");
        assert_eq!(header_block(b""), b"");
        // A folded header is one header; a line of spaces is not the empty line.
        assert_eq!(
            header_block(b"A: 1\r\n  cont\r\n \r\nB: 2\r\n\r\nx"),
            b"A: 1\r\n  cont\r\n \r\nB: 2\r\n"
        );
    }

    #[test]
    fn header_block_is_capped_at_a_line_boundary() {
        let line = b"X-Filler: 0123456789012345678901234567890123456789\r\n";
        let mut msg = Vec::new();
        while msg.len() < 2 * MAX_HEADER_BLOCK {
            msg.extend_from_slice(line);
        }
        msg.extend_from_slice(b"\r\nbody");
        let h = header_block(&msg);
        assert!(h.len() <= MAX_HEADER_BLOCK);
        assert!(h.len() > MAX_HEADER_BLOCK - line.len());
        assert!(h.ends_with(b"\r\n"));
        // No line break at all: cut at the cap.
        let blob = vec![b'a'; MAX_HEADER_BLOCK + 10];
        assert_eq!(header_block(&blob).len(), MAX_HEADER_BLOCK);
        // Exactly at the cap with the empty line right after: complete block.
        let mut exact = vec![b'a'; MAX_HEADER_BLOCK - 2];
        exact.extend_from_slice(b"\r\n\r\nbody");
        assert_eq!(header_block(&exact).len(), MAX_HEADER_BLOCK);
    }

    proptest::proptest! {
        /// Whatever the inputs, the output keeps its shape: CRLF only, bounded lines, the
        /// three parts, and one Final-Recipient field per recipient.
        #[test]
        fn arbitrary_inputs_keep_the_structure(
            fields in proptest::collection::vec(proptest::prelude::any::<String>(), 9),
            headers in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ) {
            let rcpt = DsnRecipient {
                final_recipient: &fields[0],
                original_recipient: Some(&fields[1]),
                action: DsnAction::Delayed,
                status: &fields[2],
                remote_mta: Some(&fields[3]),
                diagnostic: Some(&fields[4]),
                last_attempt_date: Some(&fields[5]),
                will_retry_until: Some(&fields[6]),
            };
            let rcpts = [rcpt, failed()];
            let mut r = report(&rcpts);
            r.original_sender = &fields[7];
            r.date = &fields[8];
            r.original_headers = &headers;
            let out = build_dsn(&r);
            assert_wire_clean(&out);
            let out = String::from_utf8_lossy(&out).into_owned();
            let (head, parts) = split(&out, "b0und4ry.XYZ");
            proptest::prop_assert_eq!(head.lines().filter(|l| l.starts_with("To:")).count(), 1);
            proptest::prop_assert_eq!(parts.len(), 3);
            proptest::prop_assert_eq!(parts[1].matches("\r\nFinal-Recipient:").count(), 2);
        }
    }

    #[test]
    fn python_email_parser_accepts_it() {
        use std::io::Write as _;
        use std::process::{Command, Stdio};

        let rcpts = [failed(), delayed()];
        let out = build_dsn(&report(&rcpts));
        let script = r#"
import sys, email
from email import policy
msg = email.message_from_bytes(sys.stdin.buffer.read(), policy=policy.compat32)
assert msg.get_content_type() == 'multipart/report', msg.get_content_type()
assert msg.get_param('report-type') == 'delivery-status', msg.get_param('report-type')
assert msg['Auto-Submitted'] == 'auto-replied'
parts = msg.get_payload()
assert [p.get_content_type() for p in parts] == ['text/plain', 'message/delivery-status', 'text/rfc822-headers'], [p.get_content_type() for p in parts]
assert 'user unknown' in parts[0].get_payload(decode=True).decode('utf-8')
blocks = parts[1].get_payload()
assert len(blocks) == 3, len(blocks)
assert blocks[0]['Reporting-MTA'] == 'dns; mail.example.org'
assert blocks[1]['Final-Recipient'] == 'rfc822; bob@example.net', blocks[1]['Final-Recipient']
assert blocks[1]['Action'] == 'failed'
assert blocks[1]['Status'] == '5.1.1'
assert blocks[2]['Final-Recipient'] == 'rfc822; carol@example.com'
assert blocks[2]['Action'] == 'delayed'
assert blocks[2]['Status'] == '4.4.1'
assert 'try later' in blocks[2]['Diagnostic-Code']
assert 'Subject: hello' in parts[2].get_payload()
print('ok')
"#;
        let child = Command::new("python3")
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                println!("note: python3 not available ({e}); skipping the email-parser check");
                return;
            }
        };
        child.stdin.take().unwrap().write_all(&out).unwrap();
        let result = child.wait_with_output().unwrap();
        assert!(
            result.status.success(),
            "python email parser rejected the DSN:\n{}\n---\n{}",
            String::from_utf8_lossy(&result.stderr),
            String::from_utf8_lossy(&out)
        );
        assert_eq!(String::from_utf8_lossy(&result.stdout).trim(), "ok");
    }
}
