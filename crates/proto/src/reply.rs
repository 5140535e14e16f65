//! The one table of server replies (STYLE 3): every reply Portcullis sends is a
//! named constructor here; nobody formats `"250 ..."` at a call site.
//!
//! Enhanced status codes (RFC 2034, RFC 3463, RFC 5248) go on every 2xx/4xx/5xx
//! reply except the greeting and the EHLO/HELO response (RFC 2034 section 3),
//! and never on 3xx intermediate replies (354, 334).

use std::borrow::Cow;
use std::fmt;

/// An RFC 3463 enhanced status code `class.subject.detail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enhanced(pub u8, pub u16, pub u16);

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One SMTP reply, possibly multi-line (lines separated by `\n` in `text`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<Enhanced>,
    pub text: Cow<'static, str>,
}

/// The class of a reply, from its first digit (RFC 5321 4.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Positive,
    Intermediate,
    Transient,
    Permanent,
}

const fn r(code: u16, e: (u8, u16, u16), text: &'static str) -> Reply {
    Reply {
        code,
        enhanced: Some(Enhanced(e.0, e.1, e.2)),
        text: Cow::Borrowed(text),
    }
}

fn owned(code: u16, e: (u8, u16, u16), text: String) -> Reply {
    Reply {
        code,
        enhanced: Some(Enhanced(e.0, e.1, e.2)),
        text: Cow::Owned(text),
    }
}

impl Reply {
    pub fn severity(&self) -> Severity {
        match self.code / 100 {
            2 => Severity::Positive,
            3 => Severity::Intermediate,
            4 => Severity::Transient,
            _ => Severity::Permanent,
        }
    }

    pub fn is_permanent_failure(&self) -> bool {
        self.severity() == Severity::Permanent
    }

    /// Serialises to wire format, each line ending in CRLF (RFC 5321 4.2.1).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.text.len() + 16);
        self.write_to(&mut out);
        out
    }

    /// Appends the wire form to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let lines: Vec<&str> = self.text.split('\n').collect();
        let last = lines.len().saturating_sub(1);
        for (i, line) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let head = match self.enhanced {
                Some(e) => format!("{}{}{} ", self.code, sep, e),
                None => format!("{}{}", self.code, sep),
            };
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    // ----- connection -----

    /// 220 greeting; no enhanced code (RFC 2034 section 3).
    pub fn greeting(hostname: &str) -> Reply {
        Reply {
            code: 220,
            enhanced: None,
            text: Cow::Owned(format!("{hostname} ESMTP Portcullis")),
        }
    }

    /// 250 EHLO response: hostname line then one extension keyword per line.
    pub fn ehlo(hostname: &str, client: &str, extensions: &[String]) -> Reply {
        let mut text = format!("{hostname} greets {client}");
        for ext in extensions {
            text.push('\n');
            text.push_str(ext);
        }
        Reply {
            code: 250,
            enhanced: None,
            text: Cow::Owned(text),
        }
    }

    pub fn helo(hostname: &str) -> Reply {
        Reply {
            code: 250,
            enhanced: None,
            text: Cow::Owned(hostname.to_owned()),
        }
    }

    pub fn bye() -> Reply {
        r(221, (2, 0, 0), "Bye")
    }
    pub fn ok() -> Reply {
        r(250, (2, 0, 0), "Ok")
    }
    pub fn reset_ok() -> Reply {
        r(250, (2, 0, 0), "Ok: transaction reset")
    }
    pub fn vrfy() -> Reply {
        r(
            252,
            (2, 0, 0),
            "Cannot VRFY user, but will accept message and attempt delivery",
        )
    }
    pub fn help() -> Reply {
        r(
            214,
            (2, 0, 0),
            "Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT",
        )
    }
    pub fn starttls_ready() -> Reply {
        r(220, (2, 0, 0), "Ready to start TLS")
    }
    pub fn shutting_down() -> Reply {
        r(421, (4, 3, 2), "Service shutting down, try again later")
    }
    pub fn idle_timeout() -> Reply {
        r(
            421,
            (4, 4, 2),
            "Timeout: no command received, closing connection",
        )
    }
    pub fn session_timeout() -> Reply {
        r(
            421,
            (4, 4, 2),
            "Session time limit exceeded, closing connection",
        )
    }
    pub fn too_many_connections() -> Reply {
        r(421, (4, 7, 0), "Too many connections, try again later")
    }
    pub fn too_many_connections_from_ip() -> Reply {
        r(
            421,
            (4, 7, 0),
            "Too many connections from your address, try again later",
        )
    }
    pub fn too_many_errors() -> Reply {
        r(421, (4, 7, 0), "Too many errors, closing connection")
    }
    /// A banned network, at the greeting (issue 4).
    pub fn banned() -> Reply {
        r(
            421,
            (4, 7, 0),
            "Too many authentication failures from your network, try again later",
        )
    }
    pub fn too_many_auth_failures() -> Reply {
        r(
            421,
            (4, 7, 0),
            "Too many authentication failures, closing connection",
        )
    }
    pub fn http_rejected() -> Reply {
        r(
            554,
            (5, 7, 0),
            "This is an SMTP server, not HTTP; closing connection",
        )
    }

    // ----- syntax and sequence -----

    pub fn unrecognized() -> Reply {
        r(500, (5, 5, 2), "Syntax error, command unrecognized")
    }
    pub fn bare_line_ending_in_command() -> Reply {
        r(
            500,
            (5, 5, 2),
            "Syntax error: bare CR or LF in command; lines must end with CRLF",
        )
    }
    pub fn not_utf8() -> Reply {
        r(500, (5, 5, 2), "Syntax error: command is not valid UTF-8")
    }
    pub fn line_too_long() -> Reply {
        r(500, (5, 5, 0), "Line too long")
    }
    pub fn syntax(text: &'static str) -> Reply {
        r(501, (5, 5, 4), text)
    }
    pub fn bad_sender_syntax(detail: &str) -> Reply {
        owned(
            501,
            (5, 1, 7),
            format!("Bad sender address syntax: {detail}"),
        )
    }
    pub fn bad_recipient_syntax(detail: &str) -> Reply {
        owned(
            501,
            (5, 1, 3),
            format!("Bad recipient address syntax: {detail}"),
        )
    }
    pub fn not_implemented() -> Reply {
        r(502, (5, 5, 1), "Command not implemented")
    }
    pub fn auth_not_available() -> Reply {
        r(
            502,
            (5, 5, 1),
            "AUTH not available on this port; use the submission port (587 or 465)",
        )
    }
    pub fn bad_sequence(text: &'static str) -> Reply {
        r(503, (5, 5, 1), text)
    }
    pub fn unknown_parameter(name: &str) -> Reply {
        owned(
            555,
            (5, 5, 4),
            format!("Parameter {name} not recognized or not implemented"),
        )
    }
    pub fn bad_parameter(detail: &str) -> Reply {
        owned(501, (5, 5, 4), format!("Invalid parameter: {detail}"))
    }
    pub fn non_ascii_without_smtputf8() -> Reply {
        r(
            553,
            (5, 6, 7),
            "Non-ASCII address requires the SMTPUTF8 parameter",
        )
    }

    // ----- AUTH (RFC 4954) -----

    pub fn auth_challenge(base64: &str) -> Reply {
        Reply {
            code: 334,
            enhanced: None,
            text: Cow::Owned(base64.to_owned()),
        }
    }
    pub fn auth_ok() -> Reply {
        r(235, (2, 7, 0), "Authentication successful")
    }
    pub fn auth_failed() -> Reply {
        r(535, (5, 7, 8), "Authentication credentials invalid")
    }
    pub fn app_password_required() -> Reply {
        r(534, (5, 7, 9), "Application-specific password required")
    }
    pub fn auth_temp_failure() -> Reply {
        r(454, (4, 7, 0), "Temporary authentication failure")
    }
    pub fn auth_required() -> Reply {
        r(530, (5, 7, 0), "Authentication required")
    }
    pub fn encryption_required() -> Reply {
        r(
            538,
            (5, 7, 11),
            "Encryption required for requested authentication mechanism",
        )
    }
    pub fn unknown_mechanism() -> Reply {
        r(504, (5, 5, 4), "Unrecognized authentication mechanism")
    }
    pub fn bad_base64() -> Reply {
        r(501, (5, 5, 2), "Invalid base64 data")
    }
    pub fn malformed_sasl() -> Reply {
        r(501, (5, 5, 2), "Malformed authentication message")
    }
    pub fn auth_cancelled() -> Reply {
        r(501, (5, 0, 0), "Authentication cancelled")
    }
    pub fn auth_line_too_long() -> Reply {
        r(500, (5, 5, 6), "Authentication exchange line is too long")
    }

    // ----- envelope -----

    pub fn sender_ok() -> Reply {
        r(250, (2, 1, 0), "Sender ok")
    }
    pub fn recipient_ok() -> Reply {
        r(250, (2, 1, 5), "Recipient ok")
    }
    pub fn sender_not_owned() -> Reply {
        r(553, (5, 7, 1), "Sender address not owned by user")
    }
    pub fn header_from_not_owned() -> Reply {
        r(
            550,
            (5, 7, 1),
            "Message rejected: header From: address not owned by user",
        )
    }
    /// RFC 7489 6.6.3: the From: domain's DMARC policy is `p=reject` and
    /// the message failed it (issue 7, `[inbound] enforce_dmarc`).
    pub fn dmarc_reject() -> Reply {
        r(
            550,
            (5, 7, 1),
            "Message rejected: DMARC policy of the From: domain says reject",
        )
    }
    pub fn relay_denied() -> Reply {
        r(554, (5, 7, 1), "Relay access denied")
    }
    pub fn unknown_user() -> Reply {
        r(550, (5, 1, 1), "Recipient address rejected: user unknown")
    }
    /// Plan limit reached (issue 5): temporary, says when to retry.
    pub fn sending_limit(plan: &str, limit: u32, period: &str, retry_in: &str) -> Reply {
        owned(
            451,
            (4, 7, 1),
            format!(
                "Sending limit reached for plan {plan} ({limit}/{period}); try again in {retry_in}"
            ),
        )
    }
    /// Per-IP message rate on the MX listener exceeded.
    pub fn message_rate_limited(retry_in: &str) -> Reply {
        owned(
            451,
            (4, 7, 1),
            format!("Too many messages from your address; try again in {retry_in}"),
        )
    }
    pub fn connection_rate_limited() -> Reply {
        r(
            421,
            (4, 7, 0),
            "Too many connections from your address recently; try again later",
        )
    }
    pub fn too_many_recipients() -> Reply {
        r(452, (4, 5, 3), "Too many recipients")
    }
    pub fn size_exceeded_at_mail(limit: u64) -> Reply {
        owned(
            552,
            (5, 3, 4),
            format!("Message size exceeds fixed maximum message size of {limit} octets"),
        )
    }

    // ----- message -----

    pub fn start_data() -> Reply {
        Reply {
            code: 354,
            enhanced: None,
            text: Cow::Borrowed("End data with <CR><LF>.<CR><LF>"),
        }
    }
    pub fn chunk_received(octets: u64) -> Reply {
        owned(250, (2, 0, 0), format!("{octets} octets received"))
    }
    pub fn queued(id: &str) -> Reply {
        owned(250, (2, 0, 0), format!("Ok: queued as {id}"))
    }
    pub fn message_too_big() -> Reply {
        r(
            552,
            (5, 3, 4),
            "Message size exceeds fixed maximum message size",
        )
    }
    pub fn bare_line_ending_in_data() -> Reply {
        r(
            554,
            (5, 6, 0),
            "Message rejected: bare CR or LF in message; lines must end with CRLF",
        )
    }
    pub fn text_line_too_long() -> Reply {
        r(
            554,
            (5, 6, 0),
            "Message rejected: text line too long (RFC 5321 4.5.3.1.6)",
        )
    }
    pub fn internal_error() -> Reply {
        r(451, (4, 3, 0), "Internal error; try again later")
    }
    pub fn insufficient_storage() -> Reply {
        r(
            452,
            (4, 3, 1),
            "Insufficient system storage; try again later",
        )
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.to_bytes();
        f.write_str(String::from_utf8_lossy(&bytes).trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_has_enhanced_code() {
        assert_eq!(
            Reply::auth_failed().to_bytes(),
            b"535 5.7.8 Authentication credentials invalid\r\n"
        );
    }

    #[test]
    fn multi_line_uses_dash_continuation() {
        let r = Reply::ehlo("mx", "client", &["PIPELINING".into(), "SIZE 10".into()]);
        assert_eq!(
            r.to_bytes(),
            b"250-mx greets client\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
    }

    #[test]
    fn intermediate_replies_have_no_enhanced_code() {
        assert_eq!(
            Reply::start_data().to_bytes(),
            b"354 End data with <CR><LF>.<CR><LF>\r\n"
        );
        assert_eq!(Reply::auth_challenge("").to_bytes(), b"334 \r\n");
    }
}
