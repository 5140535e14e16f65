//! CRAM-MD5 (RFC 2195): the challenge and the check of the client's
//! `username SP hex(HMAC-MD5(secret, challenge))` response. The secret is a
//! password-equivalent: the auth service hands it over only for app passwords
//! that opted in.

use hmac::{Hmac, Mac};
use md5::Md5;
use subtle::ConstantTimeEq;

use super::SaslError;

/// A parsed CRAM-MD5 response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CramResponse {
    pub username: String,
    pub digest: [u8; 16],
}

/// The challenge: an RFC 2195 msg-id built from a random token.
pub fn challenge(token: &str, hostname: &str) -> String {
    format!("<{token}@{hostname}>")
}

/// Parses `username SP 32*LOWERHEX` (the username may contain spaces; the
/// digest is after the last one).
pub fn parse_response(message: &[u8]) -> Result<CramResponse, SaslError> {
    let text = std::str::from_utf8(message).map_err(|_| SaslError::Malformed)?;
    let (username, hex) = text.rsplit_once(' ').ok_or(SaslError::Malformed)?;
    if username.is_empty() || username.len() > 255 || hex.len() != 32 {
        return Err(SaslError::Malformed);
    }
    let mut digest = [0u8; 16];
    for (i, d) in digest.iter_mut().enumerate() {
        *d = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or(SaslError::Malformed)?, 16)
            .map_err(|_| SaslError::Malformed)?;
    }
    Ok(CramResponse {
        username: username.to_owned(),
        digest,
    })
}

/// HMAC-MD5(secret, challenge).
pub fn digest(secret: &[u8], challenge: &str) -> [u8; 16] {
    let Ok(mut mac) = Hmac::<Md5>::new_from_slice(secret) else {
        return [0; 16];
    };
    mac.update(challenge.as_bytes());
    mac.finalize().into_bytes().into()
}

/// Whether `response` was computed with `secret` (constant-time compare).
pub fn verify(secret: &[u8], challenge: &str, response: &CramResponse) -> bool {
    digest(secret, challenge).ct_eq(&response.digest).into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// RFC 2195 2: the example exchange.
    #[test]
    fn rfc2195_example() {
        let challenge = "<1896.697170952@postoffice.reston.mci.net>";
        let r = parse_response(b"tim b913a602c7eda7a495b4e6e7334d3890").unwrap();
        assert_eq!(r.username, "tim");
        assert!(verify(b"tanstaaftanstaaf", challenge, &r));
        assert!(!verify(b"tanstaaftanstaafX", challenge, &r));
    }

    #[test]
    fn malformed() {
        for bad in [
            &b"tim"[..],
            b" b913a602c7eda7a495b4e6e7334d3890",
            b"tim b913a602c7eda7a495b4e6e7334d389",
            b"tim b913a602c7eda7a495b4e6e7334d389z",
        ] {
            assert_eq!(parse_response(bad), Err(SaslError::Malformed), "{bad:?}");
        }
    }
}
