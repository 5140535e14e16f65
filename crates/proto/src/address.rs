//! RFC 5321 4.1.2 paths and mailboxes, with the special cases as types (STYLE 5).
//!
//! Strict grammar: angle brackets required, Domain per RFC 5321 (no trailing dot),
//! address literals, quoted local parts, source routes accepted and ignored
//! (RFC 5321 4.1.2 / appendix C). UTF-8 in local part and domain is allowed by
//! the parser and flagged, so the session can require SMTPUTF8 (RFC 6531).
//! Owns syntax only: whether a domain is local is decided elsewhere.

use std::fmt;
use std::net::IpAddr;

/// Maximum lengths from RFC 5321 4.5.3.1.
pub const MAX_LOCAL_PART: usize = 64;
pub const MAX_DOMAIN: usize = 255;
pub const MAX_PATH: usize = 256;

/// The domain part of a mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Domain {
    /// A DNS name, lowercased (ASCII) for comparison.
    Name(String),
    /// `[192.0.2.1]`, `[IPv6:2001:db8::1]`.
    Literal(IpAddr),
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Name(n) => f.write_str(n),
            Domain::Literal(IpAddr::V4(a)) => write!(f, "[{a}]"),
            Domain::Literal(IpAddr::V6(a)) => write!(f, "[IPv6:{a}]"),
        }
    }
}

/// `local-part@domain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mailbox {
    /// As sent, without quotes' escaping undone (quoted form kept verbatim).
    pub local: String,
    pub domain: Domain,
}

impl Mailbox {
    /// Whether the address needs SMTPUTF8 (RFC 6531).
    pub fn is_utf8(&self) -> bool {
        !self.local.is_ascii() || matches!(&self.domain, Domain::Name(n) if !n.is_ascii())
    }

    /// Whether the local part carries an old-style routing hint: `%` (percent
    /// hack), `!` (UUCP bang path) or a quoted `@`. Relays that honoured these
    /// were open relays; we never route on them.
    pub fn has_routing_hint(&self) -> bool {
        self.local.contains(['%', '!', '@'])
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// MAIL FROM argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReversePath {
    /// `<>`: bounces and other notifications (RFC 5321 4.5.5).
    Null,
    Mailbox(Mailbox),
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => Ok(()),
            ReversePath::Mailbox(m) => m.fmt(f),
        }
    }
}

/// RCPT TO argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForwardPath {
    /// `<Postmaster>` without a domain (RFC 5321 4.5.1): always accepted.
    Postmaster,
    Mailbox(Mailbox),
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster => f.write_str("Postmaster"),
            ForwardPath::Mailbox(m) => m.fmt(f),
        }
    }
}

/// Why an address did not parse; the text goes into the 501 reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address must be enclosed in <>")]
    MissingBrackets,
    #[error("address is empty")]
    Empty,
    #[error("address has no domain")]
    MissingDomain,
    #[error("invalid local part")]
    BadLocalPart,
    #[error("invalid domain")]
    BadDomain,
    #[error("invalid address literal")]
    BadLiteral,
    #[error("invalid source route")]
    BadRoute,
    #[error("address too long")]
    TooLong,
}

/// Parses `<...>` at the start of `s`; returns the path contents and the rest.
fn split_bracketed(s: &str) -> Result<(&str, &str), AddressError> {
    let s = s.strip_prefix('<').ok_or(AddressError::MissingBrackets)?;
    // A '>' may appear inside a quoted local part; scan honouring quotes.
    let bytes = s.as_bytes();
    let mut in_quote = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_quote => i += 1,
            b'"' => in_quote = !in_quote,
            b'>' if !in_quote => return Ok((&s[..i], &s[i + 1..])),
            _ => {}
        }
        i += 1;
    }
    Err(AddressError::MissingBrackets)
}

/// Parses a reverse-path; returns it and the remaining text (parameters).
pub fn parse_reverse_path(s: &str) -> Result<(ReversePath, &str), AddressError> {
    let (inner, rest) = split_bracketed(s)?;
    if inner.is_empty() {
        return Ok((ReversePath::Null, rest));
    }
    check_path_len(inner)?;
    Ok((ReversePath::Mailbox(parse_path_inner(inner)?), rest))
}

/// Parses a forward-path; returns it and the remaining text (parameters).
pub fn parse_forward_path(s: &str) -> Result<(ForwardPath, &str), AddressError> {
    let (inner, rest) = split_bracketed(s)?;
    if inner.is_empty() {
        return Err(AddressError::Empty);
    }
    if inner.eq_ignore_ascii_case("postmaster") {
        return Ok((ForwardPath::Postmaster, rest));
    }
    check_path_len(inner)?;
    Ok((ForwardPath::Mailbox(parse_path_inner(inner)?), rest))
}

fn check_path_len(inner: &str) -> Result<(), AddressError> {
    // RFC 5321 4.5.3.1.3: path including the brackets.
    if inner.len() + 2 > MAX_PATH {
        return Err(AddressError::TooLong);
    }
    Ok(())
}

/// `[A-d-l ":"] Mailbox`; the source route is validated and dropped.
fn parse_path_inner(inner: &str) -> Result<Mailbox, AddressError> {
    let mailbox = if inner.starts_with('@') {
        let colon = inner.find(':').ok_or(AddressError::BadRoute)?;
        for hop in inner[..colon].split(',') {
            let d = hop.strip_prefix('@').ok_or(AddressError::BadRoute)?;
            parse_domain(d).map_err(|_| AddressError::BadRoute)?;
        }
        &inner[colon + 1..]
    } else {
        inner
    };
    parse_mailbox(mailbox)
}

/// `Local-part "@" ( Domain / address-literal )`.
pub fn parse_mailbox(s: &str) -> Result<Mailbox, AddressError> {
    let at = local_part_end(s)?;
    let local = &s[..at];
    let domain_text = s.get(at + 1..).ok_or(AddressError::MissingDomain)?;
    if at >= s.len() || domain_text.is_empty() {
        return Err(AddressError::MissingDomain);
    }
    if local.len() > MAX_LOCAL_PART {
        return Err(AddressError::TooLong);
    }
    let domain = if domain_text.starts_with('[') {
        Domain::Literal(parse_literal(domain_text)?)
    } else {
        Domain::Name(parse_domain(domain_text)?)
    };
    Ok(Mailbox {
        local: local.to_owned(),
        domain,
    })
}

/// Index of the '@' ending the local part (Dot-string or Quoted-string).
fn local_part_end(s: &str) -> Result<usize, AddressError> {
    let bytes = s.as_bytes();
    if bytes.first() == Some(&b'"') {
        let mut i = 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => {
                    // quoted-pairSMTP = %d92 %d32-126
                    match bytes.get(i + 1) {
                        Some(c) if (32..=126).contains(c) => i += 2,
                        _ => return Err(AddressError::BadLocalPart),
                    }
                }
                b'"' => {
                    return match bytes.get(i + 1) {
                        Some(b'@') => Ok(i + 1),
                        None => Err(AddressError::MissingDomain),
                        _ => Err(AddressError::BadLocalPart),
                    };
                }
                c if c < 32 || c == 127 => return Err(AddressError::BadLocalPart),
                _ => i += 1,
            }
        }
        return Err(AddressError::BadLocalPart);
    }
    let at = s.rfind('@').ok_or(AddressError::MissingDomain)?;
    let local = &s[..at];
    if local.is_empty() {
        return Err(AddressError::BadLocalPart);
    }
    for atom in local.split('.') {
        if atom.is_empty() || !atom.chars().all(is_atext) {
            return Err(AddressError::BadLocalPart);
        }
    }
    Ok(at)
}

/// RFC 5322 atext, extended with non-ASCII UTF-8 (RFC 6531 3.3).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || (!c.is_ascii() && !c.is_control())
}

/// RFC 5321 Domain: dot-separated sub-domains of letters, digits and hyphens
/// (U-labels allowed for SMTPUTF8). No trailing dot. Returns it lowercased.
pub fn parse_domain(s: &str) -> Result<String, AddressError> {
    if s.is_empty() || s.len() > MAX_DOMAIN {
        return Err(AddressError::BadDomain);
    }
    for label in s.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| {
                c.is_ascii_alphanumeric() || c == '-' || (!c.is_ascii() && c.is_alphanumeric())
            });
        if !ok {
            return Err(AddressError::BadDomain);
        }
    }
    Ok(s.to_ascii_lowercase())
}

/// `[IPv4]` or `[IPv6:...]`. General address literals are refused.
fn parse_literal(s: &str) -> Result<IpAddr, AddressError> {
    let inner = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .ok_or(AddressError::BadLiteral)?;
    if let Some(v6) = inner
        .strip_prefix("IPv6:")
        .or_else(|| inner.strip_prefix("ipv6:"))
    {
        return v6
            .parse::<std::net::Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| AddressError::BadLiteral);
    }
    inner
        .parse::<std::net::Ipv4Addr>()
        .map(IpAddr::V4)
        .map_err(|_| AddressError::BadLiteral)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(s: &str) -> Result<ForwardPath, AddressError> {
        parse_forward_path(s).map(|(p, _)| p)
    }

    fn mb(local: &str, domain: &str) -> ForwardPath {
        ForwardPath::Mailbox(Mailbox {
            local: local.into(),
            domain: Domain::Name(domain.into()),
        })
    }

    #[test]
    fn plain_and_case() {
        assert_eq!(fwd("<Bob@Example.COM>"), Ok(mb("Bob", "example.com")));
    }

    #[test]
    fn postmaster_without_domain() {
        assert_eq!(fwd("<Postmaster>"), Ok(ForwardPath::Postmaster));
        assert_eq!(fwd("<POSTMASTER>"), Ok(ForwardPath::Postmaster));
        assert_eq!(fwd("<bob>"), Err(AddressError::MissingDomain));
    }

    #[test]
    fn null_reverse_path() {
        assert_eq!(parse_reverse_path("<>").map(|p| p.0), Ok(ReversePath::Null));
        assert_eq!(fwd("<>"), Err(AddressError::Empty));
    }

    #[test]
    fn source_route_is_ignored() {
        assert_eq!(
            fwd("<@relay.example,@b.example:bob@local.test>"),
            Ok(mb("bob", "local.test"))
        );
        assert_eq!(fwd("<@:bob@local.test>"), Err(AddressError::BadRoute));
    }

    #[test]
    fn routing_hints_parse_to_the_final_domain() {
        let p = fwd("<victim%foreign.example@local.test>").unwrap_or(ForwardPath::Postmaster);
        match p {
            ForwardPath::Mailbox(m) => {
                assert_eq!(m.domain, Domain::Name("local.test".into()));
                assert!(m.has_routing_hint());
            }
            ForwardPath::Postmaster => panic!("expected mailbox"),
        }
        match fwd("<\"victim@foreign.example\"@local.test>") {
            Ok(ForwardPath::Mailbox(m)) => {
                assert_eq!(m.domain, Domain::Name("local.test".into()));
                assert!(m.has_routing_hint());
            }
            other => panic!("unexpected {other:?}"),
        }
        match fwd("<foreign.example!victim@local.test>") {
            Ok(ForwardPath::Mailbox(m)) => assert!(m.has_routing_hint()),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn trailing_dot_and_bad_domains_rejected() {
        assert_eq!(fwd("<bob@example.com.>"), Err(AddressError::BadDomain));
        assert_eq!(fwd("<bob@-x.com>"), Err(AddressError::BadDomain));
        assert_eq!(fwd("<bob@exa_mple.com>"), Err(AddressError::BadDomain));
        assert_eq!(fwd("<bob@>"), Err(AddressError::MissingDomain));
        assert_eq!(fwd("bob@example.com"), Err(AddressError::MissingBrackets));
        assert_eq!(fwd("<bob..x@example.com>"), Err(AddressError::BadLocalPart));
    }

    #[test]
    fn address_literals() {
        match fwd("<bob@[192.0.2.1]>") {
            Ok(ForwardPath::Mailbox(m)) => assert_eq!(
                m.domain,
                Domain::Literal("192.0.2.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])))
            ),
            other => panic!("unexpected {other:?}"),
        }
        assert!(fwd("<bob@[IPv6:2001:db8::1]>").is_ok());
        assert_eq!(fwd("<bob@[300.1.1.1]>"), Err(AddressError::BadLiteral));
    }

    #[test]
    fn quoted_local_part_with_bracket() {
        let (p, rest) = parse_forward_path("<\"a>b\"@example.com> NOTIFY=NEVER")
            .unwrap_or((ForwardPath::Postmaster, ""));
        assert_eq!(p, mb("\"a>b\"", "example.com"));
        assert_eq!(rest, " NOTIFY=NEVER");
    }

    #[test]
    fn utf8_flagged() {
        match fwd("<jöran@exämple.com>") {
            Ok(ForwardPath::Mailbox(m)) => assert!(m.is_utf8()),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn too_long() {
        let long = format!("<{}@example.com>", "a".repeat(65));
        assert_eq!(fwd(&long), Err(AddressError::TooLong));
    }
}
