//! The client side of AUTH PLAIN (RFC 4616) and LOGIN, and the password as
//! a type that cannot be printed by accident.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

/// A SASL mechanism `check` can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mech {
    Plain,
    Login,
}

impl Mech {
    pub fn name(self) -> &'static str {
        match self {
            Mech::Plain => "PLAIN",
            Mech::Login => "LOGIN",
        }
    }

    /// The mechanism to use: the forced one, else PLAIN, else LOGIN.
    /// `Err` names what was wanted when none fits.
    pub fn choose(forced: Option<Mech>, offered: &[String]) -> Result<Mech, String> {
        let offers = |m: Mech| offered.iter().any(|o| o.eq_ignore_ascii_case(m.name()));
        match forced {
            Some(m) if offers(m) => Ok(m),
            Some(m) => Err(m.name().to_owned()),
            None if offers(Mech::Plain) => Ok(Mech::Plain),
            None if offers(Mech::Login) => Ok(Mech::Login),
            None => Err("PLAIN or LOGIN".to_owned()),
        }
    }
}

/// The password. Its `Debug` prints nothing; it is wiped on drop.
pub struct Secret {
    password: Zeroizing<String>,
    /// The forms it may take on the wire, longest first, for redaction.
    encodings: Vec<Zeroizing<String>>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

const REDACTED: &str = "<redacted>";

impl Secret {
    pub fn new(password: String, user: &str) -> Secret {
        let password = Zeroizing::new(password);
        let mut encodings = vec![
            Zeroizing::new(plain_response(user, &password)),
            Zeroizing::new(STANDARD.encode(password.as_bytes())),
            Zeroizing::new(password.to_string()),
        ];
        encodings.retain(|e| !e.is_empty());
        encodings.sort_by_key(|e| std::cmp::Reverse(e.len()));
        Secret {
            password,
            encodings,
        }
    }

    pub fn expose(&self) -> &str {
        &self.password
    }

    /// `text` with every occurrence of the password (or its base64 forms)
    /// replaced by `<redacted>`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for encoding in &self.encodings {
            if out.contains(encoding.as_str()) {
                out = out.replace(encoding.as_str(), REDACTED);
            }
        }
        out
    }
}

/// The AUTH PLAIN initial response: base64 of `\0user\0password`.
pub fn plain_response(user: &str, password: &str) -> String {
    let mut raw = Zeroizing::new(Vec::with_capacity(user.len() + password.len() + 2));
    raw.push(0);
    raw.extend_from_slice(user.as_bytes());
    raw.push(0);
    raw.extend_from_slice(password.as_bytes());
    STANDARD.encode(raw.as_slice())
}

pub fn encode(text: &str) -> String {
    STANDARD.encode(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_matches_rfc_4616_example() {
        // RFC 4616 section 4: "\0tim\0tanstaaftanstaaf".
        assert_eq!(
            plain_response("tim", "tanstaaftanstaaf"),
            "AHRpbQB0YW5zdGFhZnRhbnN0YWFm"
        );
    }

    #[test]
    fn choose_prefers_plain_and_honours_force() {
        let both = vec!["LOGIN".to_owned(), "PLAIN".to_owned()];
        assert_eq!(Mech::choose(None, &both), Ok(Mech::Plain));
        assert_eq!(Mech::choose(Some(Mech::Login), &both), Ok(Mech::Login));
        let login = vec!["login".to_owned()];
        assert_eq!(Mech::choose(None, &login), Ok(Mech::Login));
        assert_eq!(
            Mech::choose(Some(Mech::Plain), &login),
            Err("PLAIN".to_owned())
        );
        assert!(Mech::choose(None, &["CRAM-MD5".to_owned()]).is_err());
    }

    #[test]
    fn redacts_every_form() {
        let secret = Secret::new("hunter2-long-pass".to_owned(), "alice@example.com");
        let b64 = encode("hunter2-long-pass");
        let plain = plain_response("alice@example.com", "hunter2-long-pass");
        let text = format!("501 bad: hunter2-long-pass {b64} {plain}");
        let clean = secret.redact(&text);
        assert!(!clean.contains("hunter2"), "{clean}");
        assert!(!clean.contains(&b64), "{clean}");
        assert!(!clean.contains(&plain), "{clean}");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
    }
}
