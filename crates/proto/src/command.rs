//! Command-line parser (RFC 5321 4.1.1): bytes of one line (CRLF removed) in,
//! a typed [`Command`] or the exact error reply out. No state, no I/O.

use crate::address::{
    AddressError, ForwardPath, ReversePath, parse_forward_path, parse_reverse_path,
};
use crate::reply::Reply;

/// BODY= values we advertise (RFC 6152). BINARYMIME is not offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Body {
    #[default]
    SevenBit,
    EightBitMime,
}

/// MAIL FROM parameters we understand.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MailParams {
    /// RFC 1870 declared size.
    pub size: Option<u64>,
    pub body: Body,
    /// RFC 6531.
    pub smtputf8: bool,
    /// RFC 4954 section 5 `AUTH=`: recorded only; it never grants anything.
    pub auth: Option<String>,
}

/// A parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    StartTls,
    /// Mechanism (uppercased) and optional initial response (still base64).
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
    Mail {
        from: ReversePath,
        params: MailParams,
    },
    Rcpt {
        to: ForwardPath,
    },
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Vrfy,
    Expn,
    Help,
    Quit,
    /// An HTTP request line sent to an SMTP port (cross-protocol attack).
    Http,
}

/// Why a line is not a valid command; each maps to one reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    Unrecognized,
    NotUtf8,
    BareLineEnding,
    Syntax(&'static str),
    BadSender(AddressError),
    BadRecipient(AddressError),
    UnknownParameter(String),
    BadParameter(String),
    /// BDAT whose size cannot be read: the stream cannot be resynchronised.
    BadBdat,
}

impl ParseError {
    pub fn reply(&self) -> Reply {
        match self {
            ParseError::Unrecognized => Reply::unrecognized(),
            ParseError::NotUtf8 => Reply::not_utf8(),
            ParseError::BareLineEnding => Reply::bare_line_ending_in_command(),
            ParseError::Syntax(t) => Reply::syntax(t),
            ParseError::BadSender(e) => Reply::bad_sender_syntax(&e.to_string()),
            ParseError::BadRecipient(e) => Reply::bad_recipient_syntax(&e.to_string()),
            ParseError::UnknownParameter(p) => Reply::unknown_parameter(p),
            ParseError::BadParameter(p) => Reply::bad_parameter(p),
            ParseError::BadBdat => Reply::syntax("Syntax: BDAT <size> [LAST]"),
        }
    }
}

const HTTP_VERBS: &[&str] = &[
    "GET", "POST", "HEAD", "PUT", "DELETE", "CONNECT", "OPTIONS", "PATCH", "TRACE",
];

/// Parses one command line (without its CRLF).
pub fn parse_command(line: &[u8]) -> Result<Command, ParseError> {
    if line.contains(&b'\r') || line.contains(&b'\n') {
        return Err(ParseError::BareLineEnding);
    }
    let line = std::str::from_utf8(line).map_err(|_| ParseError::NotUtf8)?;
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let upper = verb.to_ascii_uppercase();
    let no_args = |c: Command| {
        if rest.trim().is_empty() {
            Ok(c)
        } else {
            Err(ParseError::Syntax(
                "Syntax error: this command takes no arguments",
            ))
        }
    };
    match upper.as_str() {
        "EHLO" => domain_arg(rest).map(Command::Ehlo),
        "HELO" => domain_arg(rest).map(Command::Helo),
        "STARTTLS" => no_args(Command::StartTls),
        "AUTH" => parse_auth(rest),
        "MAIL" => parse_mail(rest),
        "RCPT" => parse_rcpt(rest),
        "DATA" => no_args(Command::Data),
        "BDAT" => parse_bdat(rest),
        "RSET" => no_args(Command::Rset),
        // RFC 5321 4.1.1.9: NOOP may carry a string, which is ignored.
        "NOOP" => Ok(Command::Noop),
        // RFC 5321 4.1.1.6: VRFY takes a string.
        "VRFY" if rest.trim().is_empty() => Err(ParseError::Syntax("Syntax: VRFY <address>")),
        "VRFY" => Ok(Command::Vrfy),
        "EXPN" => Ok(Command::Expn),
        "HELP" => Ok(Command::Help),
        "QUIT" => no_args(Command::Quit),
        v if HTTP_VERBS.contains(&v) && !rest.is_empty() => Ok(Command::Http),
        _ => Err(ParseError::Unrecognized),
    }
}

fn domain_arg(rest: &str) -> Result<String, ParseError> {
    let arg = rest.trim();
    if arg.is_empty() || arg.contains(' ') {
        return Err(ParseError::Syntax("Syntax: EHLO <hostname>"));
    }
    Ok(arg.to_owned())
}

fn parse_auth(rest: &str) -> Result<Command, ParseError> {
    let mut parts = rest.split(' ').filter(|p| !p.is_empty());
    let mechanism = parts
        .next()
        .ok_or(ParseError::Syntax(
            "Syntax: AUTH <mechanism> [initial-response]",
        ))?
        .to_ascii_uppercase();
    let initial = parts.next().map(str::to_owned);
    if parts.next().is_some() {
        return Err(ParseError::Syntax(
            "Syntax: AUTH <mechanism> [initial-response]",
        ));
    }
    Ok(Command::Auth { mechanism, initial })
}

/// Strips `FROM:`/`TO:` (case-insensitive), tolerating spaces around the colon
/// as most servers do, and returns what follows.
fn strip_keyword<'a>(rest: &'a str, keyword: &str) -> Option<&'a str> {
    let rest = rest.trim_start();
    let head = rest.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let after = rest[keyword.len()..].trim_start().strip_prefix(':')?;
    Some(after.trim_start())
}

fn parse_mail(rest: &str) -> Result<Command, ParseError> {
    let arg =
        strip_keyword(rest, "FROM").ok_or(ParseError::Syntax("Syntax: MAIL FROM:<address>"))?;
    let (from, params_text) = parse_reverse_path(arg).map_err(ParseError::BadSender)?;
    let mut params = MailParams::default();
    let mut seen: Vec<String> = Vec::new();
    for p in split_params(params_text)? {
        let (key, value) = match p.split_once('=') {
            Some((k, v)) => (k.to_ascii_uppercase(), Some(v)),
            None => (p.to_ascii_uppercase(), None),
        };
        if seen.contains(&key) {
            return Err(ParseError::BadParameter(format!("{key} given twice")));
        }
        seen.push(key.clone());
        match (key.as_str(), value) {
            ("SIZE", Some(v))
                if !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()) =>
            {
                params.size = Some(v.parse().unwrap_or(u64::MAX));
            }
            ("SIZE", _) => {
                return Err(ParseError::BadParameter(
                    "SIZE must be a number of octets".into(),
                ));
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => params.body = Body::SevenBit,
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                params.body = Body::EightBitMime
            }
            ("BODY", _) => {
                return Err(ParseError::BadParameter(
                    "BODY must be 7BIT or 8BITMIME".into(),
                ));
            }
            ("SMTPUTF8", None) => params.smtputf8 = true,
            ("SMTPUTF8", Some(_)) => {
                return Err(ParseError::BadParameter("SMTPUTF8 takes no value".into()));
            }
            ("AUTH", Some(v)) if !v.is_empty() => params.auth = Some(v.to_owned()),
            ("AUTH", _) => return Err(ParseError::BadParameter("AUTH needs a value".into())),
            _ => return Err(ParseError::UnknownParameter(key)),
        }
    }
    Ok(Command::Mail { from, params })
}

fn parse_rcpt(rest: &str) -> Result<Command, ParseError> {
    let arg = strip_keyword(rest, "TO").ok_or(ParseError::Syntax("Syntax: RCPT TO:<address>"))?;
    let (to, params_text) = parse_forward_path(arg).map_err(ParseError::BadRecipient)?;
    // No RCPT parameters are advertised (DSN comes later): RFC 5321 4.1.1.11 / 555.
    if let Some(p) = split_params(params_text)?.into_iter().next() {
        let key = p.split('=').next().unwrap_or(p).to_ascii_uppercase();
        return Err(ParseError::UnknownParameter(key));
    }
    Ok(Command::Rcpt { to })
}

fn split_params(text: &str) -> Result<Vec<&str>, ParseError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    if !text.starts_with(' ') {
        return Err(ParseError::Syntax("Syntax error: text after the address"));
    }
    Ok(text.split(' ').filter(|p| !p.is_empty()).collect())
}

fn parse_bdat(rest: &str) -> Result<Command, ParseError> {
    let mut parts = rest.split(' ').filter(|p| !p.is_empty());
    let size = parts
        .next()
        .filter(|s| !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or(ParseError::BadBdat)?;
    let last = match parts.next() {
        None => false,
        Some(l) if l.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(ParseError::BadBdat),
    };
    if parts.next().is_some() {
        return Err(ParseError::BadBdat);
    }
    Ok(Command::Bdat { size, last })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::{Domain, Mailbox};

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(
            parse_command(b"ehlo client.example"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(parse_command(b"QuIt"), Ok(Command::Quit));
    }

    #[test]
    fn mail_with_params() {
        let c = parse_command(b"MAIL FROM:<a@b.example> SIZE=1000 BODY=8BITMIME SMTPUTF8 AUTH=<>");
        assert_eq!(
            c,
            Ok(Command::Mail {
                from: ReversePath::Mailbox(Mailbox {
                    local: "a".into(),
                    domain: Domain::Name("b.example".into())
                }),
                params: MailParams {
                    size: Some(1000),
                    body: Body::EightBitMime,
                    smtputf8: true,
                    auth: Some("<>".into())
                },
            })
        );
    }

    #[test]
    fn space_after_colon_tolerated() {
        assert!(matches!(
            parse_command(b"MAIL FROM: <a@b.example>"),
            Ok(Command::Mail { .. })
        ));
    }

    #[test]
    fn unknown_params_are_555() {
        assert_eq!(
            parse_command(b"MAIL FROM:<a@b.c> FOO=1"),
            Err(ParseError::UnknownParameter("FOO".into()))
        );
        assert_eq!(
            parse_command(b"RCPT TO:<a@b.c> NOTIFY=NEVER"),
            Err(ParseError::UnknownParameter("NOTIFY".into()))
        );
        assert_eq!(ParseError::UnknownParameter("X".into()).reply().code, 555);
    }

    #[test]
    fn bad_size_and_duplicates() {
        assert!(matches!(
            parse_command(b"MAIL FROM:<a@b.c> SIZE=x"),
            Err(ParseError::BadParameter(_))
        ));
        assert!(matches!(
            parse_command(b"MAIL FROM:<a@b.c> SIZE=1 SIZE=2"),
            Err(ParseError::BadParameter(_))
        ));
        assert_eq!(
            parse_command(b"MAIL FROM:<a@b.c> SIZE=99999999999999999999"),
            Ok(Command::Mail {
                from: ReversePath::Mailbox(Mailbox {
                    local: "a".into(),
                    domain: Domain::Name("b.c".into())
                }),
                params: MailParams {
                    size: Some(u64::MAX),
                    ..MailParams::default()
                },
            })
        );
    }

    #[test]
    fn bare_lf_in_command() {
        assert_eq!(
            parse_command(b"NOOP\nQUIT"),
            Err(ParseError::BareLineEnding)
        );
    }

    #[test]
    fn bdat() {
        assert_eq!(
            parse_command(b"BDAT 10 LAST"),
            Ok(Command::Bdat {
                size: 10,
                last: true
            })
        );
        assert_eq!(
            parse_command(b"BDAT 0"),
            Ok(Command::Bdat {
                size: 0,
                last: false
            })
        );
        assert_eq!(parse_command(b"BDAT x"), Err(ParseError::BadBdat));
        assert_eq!(parse_command(b"BDAT 1 FIRST"), Err(ParseError::BadBdat));
    }

    #[test]
    fn vrfy_needs_an_argument() {
        assert_eq!(parse_command(b"VRFY bob"), Ok(Command::Vrfy));
        assert!(matches!(parse_command(b"VRFY"), Err(ParseError::Syntax(_))));
    }

    #[test]
    fn http() {
        assert_eq!(parse_command(b"GET / HTTP/1.1"), Ok(Command::Http));
        assert_eq!(
            parse_command(b"CONNECT example.com:25 HTTP/1.1"),
            Ok(Command::Http)
        );
    }

    #[test]
    fn auth() {
        assert_eq!(
            parse_command(b"AUTH plain AGEAYg=="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("AGEAYg==".into())
            })
        );
    }
}
