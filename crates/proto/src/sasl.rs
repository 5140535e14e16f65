//! SASL message decoders for PLAIN (RFC 4616) and LOGIN, and the response-line
//! rules of RFC 4954 (`*` cancels, `=` is an empty initial response). No I/O,
//! no credential checks: the decoded identity goes to the auth service.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::fmt;
use zeroize::Zeroizing;

/// Mechanisms the session knows how to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

impl Mechanism {
    pub fn parse(name: &str) -> Option<Mechanism> {
        match name {
            "PLAIN" => Some(Mechanism::Plain),
            "LOGIN" => Some(Mechanism::Login),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }
}

/// A password that never prints and is wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(Zeroizing::new(s))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What the client claims; checked by the auth service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub mechanism: Mechanism,
    /// RFC 4616 authorization identity, when given and non-empty.
    pub authzid: Option<String>,
    pub username: String,
    pub password: Secret,
}

/// Why a SASL response was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslError {
    Cancelled,
    BadBase64,
    Malformed,
}

/// Decodes one client response (RFC 4954 section 4): `*` cancels; `=` is an
/// empty response. Secrets are wiped on drop.
pub fn decode_response(text: &str) -> Result<Zeroizing<Vec<u8>>, SaslError> {
    let text = text.trim_end_matches(' ');
    if text == "*" {
        return Err(SaslError::Cancelled);
    }
    if text == "=" {
        return Ok(Zeroizing::new(Vec::new()));
    }
    STANDARD
        .decode(text)
        .map(Zeroizing::new)
        .map_err(|_| SaslError::BadBase64)
}

fn utf8(bytes: &[u8]) -> Result<String, SaslError> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| SaslError::Malformed)
}

/// RFC 4616: `[authzid] NUL authcid NUL passwd`, authcid and passwd non-empty,
/// no NUL inside fields.
pub fn decode_plain(message: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = message.split(|b| *b == 0);
    let (Some(authzid), Some(authcid), Some(passwd), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    if authcid.is_empty() || passwd.is_empty() || authcid.len() > 255 || passwd.len() > 255 {
        return Err(SaslError::Malformed);
    }
    let authzid = utf8(authzid)?;
    Ok(Credentials {
        mechanism: Mechanism::Plain,
        authzid: (!authzid.is_empty()).then_some(authzid),
        username: utf8(authcid)?,
        password: Secret::new(utf8(passwd)?),
    })
}

/// LOGIN: a field (username or password) as one decoded response.
pub fn decode_login_field(message: &[u8]) -> Result<String, SaslError> {
    if message.is_empty() || message.contains(&0) || message.len() > 255 {
        return Err(SaslError::Malformed);
    }
    utf8(message)
}

/// Base64 of the LOGIN prompts ("Username:", "Password:").
pub const LOGIN_USERNAME_PROMPT: &str = "VXNlcm5hbWU6";
pub const LOGIN_PASSWORD_PROMPT: &str = "UGFzc3dvcmQ6";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_roundtrip() {
        let c = decode_plain(b"\0alice@example.com\0s3cret").map_err(|e| format!("{e:?}"));
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.username, "alice@example.com");
        assert_eq!(c.password.expose(), "s3cret");
        assert_eq!(c.authzid, None);
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn plain_with_authzid() {
        let c = decode_plain(b"bob\0alice\0pw");
        assert_eq!(c.map(|c| c.authzid), Ok(Some("bob".into())));
    }

    #[test]
    fn plain_malformed() {
        assert_eq!(decode_plain(b"alice\0pw"), Err(SaslError::Malformed));
        assert_eq!(decode_plain(b"\0\0pw"), Err(SaslError::Malformed));
        assert_eq!(decode_plain(b"\0a\0"), Err(SaslError::Malformed));
        assert_eq!(decode_plain(b"\0a\0b\0c"), Err(SaslError::Malformed));
        assert_eq!(decode_plain(b""), Err(SaslError::Malformed));
    }

    #[test]
    fn responses() {
        assert_eq!(decode_response("*"), Err(SaslError::Cancelled));
        assert_eq!(decode_response("=").map(|v| v.len()), Ok(0));
        assert_eq!(decode_response("!!notbase64"), Err(SaslError::BadBase64));
        assert_eq!(
            decode_response("YWJj").map(|v| v.to_vec()),
            Ok(b"abc".to_vec())
        );
    }
}
