//! SASL message decoders for PLAIN (RFC 4616) and LOGIN, and the response-line
//! rules of RFC 4954 (`*` cancels, `=` is an empty initial response). No I/O,
//! no credential checks: the decoded identity goes to the auth service.
//! The challenge-response mechanisms (SCRAM-SHA-256, CRAM-MD5) and the bearer
//! token mechanisms (OAUTHBEARER, XOAUTH2) are in the submodules.

pub mod cram;
pub mod oauth;
pub mod scram;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::fmt;
use zeroize::Zeroizing;

/// Mechanisms the session knows how to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
    ScramSha256,
    /// With `tls-exporter` channel binding (RFC 9266); TLS 1.3 only.
    ScramSha256Plus,
    CramMd5,
    XOAuth2,
    OAuthBearer,
}

impl Mechanism {
    /// Every mechanism, in the order EHLO lists them.
    pub const ALL: [Mechanism; 7] = [
        Mechanism::ScramSha256Plus,
        Mechanism::ScramSha256,
        Mechanism::Plain,
        Mechanism::Login,
        Mechanism::OAuthBearer,
        Mechanism::XOAuth2,
        Mechanism::CramMd5,
    ];

    /// What a submission listener offers unless configured otherwise.
    /// CRAM-MD5 is never on by default (it needs a password-equivalent).
    pub const DEFAULTS: [Mechanism; 5] = [
        Mechanism::Plain,
        Mechanism::Login,
        Mechanism::ScramSha256,
        Mechanism::XOAuth2,
        Mechanism::OAuthBearer,
    ];

    /// The IANA name; SASL mechanism names are case-insensitive (RFC 4422 3.1).
    pub fn parse(name: &str) -> Option<Mechanism> {
        Mechanism::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha256Plus => "SCRAM-SHA-256-PLUS",
            Mechanism::CramMd5 => "CRAM-MD5",
            Mechanism::XOAuth2 => "XOAUTH2",
            Mechanism::OAuthBearer => "OAUTHBEARER",
        }
    }

    /// Whether the client sends something an eavesdropper could reuse
    /// (a password or a bearer token): never offered without TLS.
    pub fn sends_reusable_secret(self) -> bool {
        !matches!(
            self,
            Mechanism::ScramSha256 | Mechanism::ScramSha256Plus | Mechanism::CramMd5
        )
    }

    pub fn is_scram(self) -> bool {
        matches!(self, Mechanism::ScramSha256 | Mechanism::ScramSha256Plus)
    }

    pub fn is_bearer(self) -> bool {
        matches!(self, Mechanism::XOAuth2 | Mechanism::OAuthBearer)
    }
}

/// Which of an account's credentials a challenge-response matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialRef {
    /// The account's main password.
    Main,
    /// The app password of this name.
    App(String),
}

/// How the auth service must treat `Credentials::password`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verification {
    /// A password to check (PLAIN, LOGIN).
    Password,
    /// A bearer token to validate (XOAUTH2, OAUTHBEARER).
    Token,
    /// The session checked a challenge-response (SCRAM, CRAM-MD5) against
    /// the keys the auth service gave it: the credential that matched, if
    /// any. `password` then holds the client's proof (a brute-force
    /// fingerprint only).
    Matched(Option<CredentialRef>),
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
    pub verification: Verification,
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
        verification: Verification::Password,
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
