//! Just enough RFC 5322 header parsing to read the author addresses of a
//! message (the `From:` field, section 3.6.2), for sender enforcement.
//! Bytes in, addresses out; unfolds continuation lines, skips comments and
//! quoted display names.

/// The header block: everything before the first empty line (or all of it).
pub fn header_block(message: &[u8]) -> &[u8] {
    let mut start = 0;
    while start < message.len() {
        let end = message[start..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(message.len(), |p| start + p + 1);
        let line = &message[start..end];
        if line == b"\r\n" || line == b"\n" {
            return &message[..start];
        }
        start = end;
    }
    message
}

/// The addr-specs of every `From:` field, lowercased domain, in order.
pub fn from_addresses(message: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(header_block(message));
    let mut fields: Vec<String> = Vec::new();
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
        } else {
            fields.push(line.to_owned());
        }
    }
    let mut out = Vec::new();
    for field in fields {
        let Some((name, value)) = field.split_once(':') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("from") {
            out.extend(addresses_in(value));
        }
    }
    out
}

/// Splits a mailbox-list and extracts each addr-spec.
fn addresses_in(value: &str) -> Vec<String> {
    let cleaned = strip_comments_and_quotes(value);
    let mut out = Vec::new();
    for mailbox in cleaned.split(',') {
        let mailbox = mailbox.trim();
        let spec = match (mailbox.rfind('<'), mailbox.rfind('>')) {
            (Some(open), Some(close)) if open < close => &mailbox[open + 1..close],
            _ => mailbox,
        };
        let spec = spec.trim();
        if let Some((local, domain)) = spec.rsplit_once('@')
            && !local.is_empty()
            && !domain.is_empty()
        {
            out.push(format!("{local}@{}", domain.to_ascii_lowercase()));
        }
    }
    out
}

/// Removes `(comments)` and the contents of quoted display names, which may
/// contain commas, `<` or `@`.
fn strip_comments_and_quotes(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut depth = 0usize;
    let mut quoted = false;
    let mut escaped = false;
    for c in value.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted || depth > 0 => escaped = true,
            '"' if depth == 0 => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            _ if quoted || depth > 0 => {}
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_and_display_names() {
        assert_eq!(
            from_addresses(b"From: alice@Example.COM\r\n\r\nbody"),
            ["alice@example.com"]
        );
        assert_eq!(
            from_addresses(
                b"Subject: x\r\nFROM: \"Smith, Bob <boss@evil.example>\" <bob@example.com>\r\n\r\n"
            ),
            ["bob@example.com"]
        );
        assert_eq!(
            from_addresses(b"From: Bob (the <boss@evil.example>) <bob@example.com>\r\n\r\n"),
            ["bob@example.com"]
        );
    }

    #[test]
    fn folded_and_multiple() {
        let m = b"From: A <a@example.com>,\r\n B <b@example.org>\r\nTo: x@y\r\n\r\nFrom: not@header.example\r\n";
        assert_eq!(from_addresses(m), ["a@example.com", "b@example.org"]);
    }

    #[test]
    fn body_is_not_headers() {
        assert!(from_addresses(b"Subject: hi\r\n\r\nFrom: someone@example.com\r\n").is_empty());
    }
}
