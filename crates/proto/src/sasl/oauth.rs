//! OAUTHBEARER (RFC 7628) and XOAUTH2 initial client responses. Only parsing:
//! the bearer token is validated by the auth service.

use super::SaslError;

/// What the client sent: the user it claims (may be empty for OAUTHBEARER)
/// and the bearer token.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerResponse {
    pub user: String,
    pub token: String,
}

impl std::fmt::Debug for BearerResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerResponse")
            .field("user", &self.user)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// RFC 7628 3.2.2: the error the server sends in a 334 challenge on failure
/// (base64-encode it); the client answers with a dummy `%x01`.
pub const OAUTHBEARER_ERROR: &str = r#"{"status":"invalid_token","schemes":"bearer"}"#;
/// The XOAUTH2 equivalent (Google's format); the client answers empty.
pub const XOAUTH2_ERROR: &str = r#"{"status":"401","schemes":"bearer"}"#;

fn bearer_token(value: &str) -> Result<String, SaslError> {
    // RFC 6750 2.1: "Bearer" is case-insensitive; b64token charset.
    let (scheme, token) = value.split_once(' ').ok_or(SaslError::Malformed)?;
    let token = token.trim_start_matches(' ');
    let valid = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b);
    if !scheme.eq_ignore_ascii_case("bearer")
        || token.is_empty()
        || token.len() > 8192
        || !token.bytes().all(valid)
    {
        return Err(SaslError::Malformed);
    }
    Ok(token.to_owned())
}

/// RFC 7628 3.1: `gs2-header %x01 *(key=value %x01) %x01`.
pub fn parse_oauthbearer(message: &[u8]) -> Result<BearerResponse, SaslError> {
    let text = std::str::from_utf8(message).map_err(|_| SaslError::Malformed)?;
    let body = text.strip_suffix("\x01\x01").ok_or(SaslError::Malformed)?;
    let mut parts = body.split('\x01');
    let gs2 = parts.next().ok_or(SaslError::Malformed)?;
    let mut gs2_fields = gs2.split(',');
    // No channel binding for OAUTHBEARER (RFC 7628 3.1): "n" or "y".
    if !matches!(gs2_fields.next(), Some("n" | "y")) {
        return Err(SaslError::Malformed);
    }
    let user = match gs2_fields.next() {
        Some("") | None => String::new(),
        Some(a) => {
            let a = a.strip_prefix("a=").ok_or(SaslError::Malformed)?;
            a.replace("=2C", ",").replace("=3D", "=")
        }
    };
    let mut token = None;
    for kv in parts {
        let (key, value) = kv.split_once('=').ok_or(SaslError::Malformed)?;
        if key == "auth" {
            token = Some(bearer_token(value)?);
        }
    }
    Ok(BearerResponse {
        user,
        token: token.ok_or(SaslError::Malformed)?,
    })
}

/// XOAUTH2: `user=<user> %x01 auth=Bearer <token> %x01 %x01`.
pub fn parse_xoauth2(message: &[u8]) -> Result<BearerResponse, SaslError> {
    let text = std::str::from_utf8(message).map_err(|_| SaslError::Malformed)?;
    let body = text.strip_suffix("\x01\x01").ok_or(SaslError::Malformed)?;
    let mut user = None;
    let mut token = None;
    for kv in body.split('\x01') {
        let (key, value) = kv.split_once('=').ok_or(SaslError::Malformed)?;
        match key {
            "user" => user = Some(value.to_owned()),
            "auth" => token = Some(bearer_token(value)?),
            _ => {}
        }
    }
    match (user, token) {
        (Some(user), Some(token)) if !user.is_empty() && user.len() <= 255 => {
            Ok(BearerResponse { user, token })
        }
        _ => Err(SaslError::Malformed),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rfc7628_example() {
        // RFC 7628 4.1 (with the token shortened).
        let m = b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01";
        let r = parse_oauthbearer(m).unwrap();
        assert_eq!(r.user, "user@example.com");
        assert_eq!(r.token, "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==");
        assert!(!format!("{r:?}").contains("vF9d"));
        let r = parse_oauthbearer(b"n,,\x01auth=bearer abc\x01\x01").unwrap();
        assert_eq!(r.user, "");
    }

    #[test]
    fn xoauth2() {
        let r = parse_xoauth2(b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg\x01\x01").unwrap();
        assert_eq!(r.user, "someuser@example.com");
        assert_eq!(r.token, "ya29.vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg");
    }

    #[test]
    fn malformed() {
        for bad in [
            &b"n,,\x01auth=Bearer abc\x01"[..],
            b"p=tls-unique,,\x01auth=Bearer abc\x01\x01",
            b"n,,\x01host=x\x01\x01",
            b"n,,\x01auth=Basic abc\x01\x01",
            b"n,,\x01auth=Bearer a b\x01\x01",
        ] {
            assert_eq!(parse_oauthbearer(bad), Err(SaslError::Malformed), "{bad:?}");
        }
        assert!(parse_xoauth2(b"auth=Bearer abc\x01\x01").is_err());
        assert!(parse_xoauth2(b"user=\x01auth=Bearer abc\x01\x01").is_err());
    }
}
