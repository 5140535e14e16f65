//! TOTP (RFC 6238) enrolment and verification: SHA-1, 6 digits, 30 s steps,
//! one step of skew either side (what every authenticator app expects).

use totp_rs::{Algorithm, Secret, TOTP};

/// The issuer shown in authenticator apps.
pub const ISSUER: &str = "Portcullis";

#[derive(Debug, thiserror::Error)]
pub enum TotpError {
    #[error("the stored TOTP secret is not valid base32")]
    BadSecret,
    #[error("cannot build the TOTP parameters: {0}")]
    Params(String),
}

/// A new random 160-bit secret, base32 (RFC 4648, no padding).
pub fn generate_secret() -> String {
    match Secret::generate_secret().to_encoded() {
        Secret::Encoded(s) => s,
        Secret::Raw(_) => String::new(),
    }
}

fn totp(secret_b32: &str, account: &str) -> Result<TOTP, TotpError> {
    let bytes = Secret::Encoded(secret_b32.trim().to_ascii_uppercase())
        .to_bytes()
        .map_err(|_| TotpError::BadSecret)?;
    TOTP::new(
        Algorithm::SHA1,
        6,
        1,
        30,
        bytes,
        Some(ISSUER.to_owned()),
        account.replace(':', ""),
    )
    .map_err(|e| TotpError::Params(e.to_string()))
}

/// The `otpauth://totp/...` URI to show as a QR code.
pub fn otpauth_uri(secret_b32: &str, account: &str) -> Result<String, TotpError> {
    Ok(totp(secret_b32, account)?.get_url())
}

/// The code for a unix time (for tests and enrolment confirmation).
pub fn code_at(secret_b32: &str, unix_secs: u64) -> Result<String, TotpError> {
    Ok(totp(secret_b32, "x")?.generate(unix_secs))
}

/// Whether `code` is valid at `unix_secs`, ±1 step (constant-time compare).
pub fn verify_code(secret_b32: &str, code: &str, unix_secs: u64) -> Result<bool, TotpError> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(false);
    }
    Ok(totp(secret_b32, "x")?.check(code, unix_secs))
}

/// [`verify_code`] at the current system time.
pub fn verify_code_now(secret_b32: &str, code: &str) -> Result<bool, TotpError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    verify_code(secret_b32, code, now)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_sha1_vector() {
        // RFC 6238 appendix B: secret "12345678901234567890", T=59 → 94287082 (8 digits);
        // the 6-digit code is the last six digits.
        let b32 = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
        assert_eq!(code_at(b32, 59).unwrap(), "287082");
        assert!(verify_code(b32, "287082", 59).unwrap());
        assert!(
            verify_code(b32, "287082", 59 + 30).unwrap(),
            "one step of skew"
        );
        assert!(!verify_code(b32, "287082", 59 + 90).unwrap());
        assert!(!verify_code(b32, "28708", 59).unwrap());
        assert!(!verify_code(b32, "abcdef", 59).unwrap());
    }

    #[test]
    fn generated_secret_round_trips_and_uri_names_issuer() {
        let s = generate_secret();
        assert!(s.len() >= 32);
        let code = code_at(&s, 1_000_000).unwrap();
        assert!(verify_code(&s, &code, 1_000_000).unwrap());
        let uri = otpauth_uri(&s, "alice@example.com").unwrap();
        assert!(uri.starts_with("otpauth://totp/"), "{uri}");
        assert!(uri.contains("issuer=Portcullis"), "{uri}");
        assert!(uri.contains(&format!("secret={s}")), "{uri}");
    }

    #[test]
    fn bad_secret_is_an_error() {
        assert!(matches!(
            verify_code("!!!", "123456", 0),
            Err(TotpError::BadSecret)
        ));
    }
}
