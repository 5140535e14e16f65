//! Password policy (issue 4 item 3), applied by every command that sets a
//! password: minimum length, zxcvbn strength, no local part of the address,
//! not in the bundled list of common passwords. Pure functions.

use std::collections::HashSet;
use std::sync::OnceLock;

/// The bundled list of common passwords, one per line, lowercase.
const COMMON_PASSWORDS: &str = include_str!("../../data/common-passwords.txt");

/// The default minimum length (`[security] password_min_length`).
pub const DEFAULT_MIN_LENGTH: usize = 12;

/// The lowest zxcvbn score (0..=4) a password must reach.
pub const MIN_SCORE: u8 = 3;

/// The rule a password breaks; `Display` names the rule in plain words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyViolation {
    #[error("password too short: at least {min} characters are required")]
    TooShort { min: usize },
    #[error(
        "password too weak: strength score {score} of 4, at least {min} is required{}",
        feedback_suffix(.feedback)
    )]
    TooWeak {
        score: u8,
        min: u8,
        feedback: String,
    },
    #[error("password must not contain the local part of the address")]
    ContainsLocalPart,
    #[error("password is in the list of common passwords")]
    Common,
}

fn feedback_suffix(feedback: &str) -> String {
    if feedback.is_empty() {
        String::new()
    } else {
        format!(" ({feedback})")
    }
}

fn common_set() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        COMMON_PASSWORDS
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    })
}

/// Whether `password` (case-insensitively) is in the bundled common list.
pub fn is_common(password: &str) -> bool {
    common_set().contains(password.to_lowercase().as_str())
}

/// Checks `password` for `address` against the policy; the first rule
/// broken is returned (length, common list, local part, strength).
pub fn check_password(
    address: &str,
    password: &str,
    min_len: usize,
) -> Result<(), PolicyViolation> {
    if password.chars().count() < min_len {
        return Err(PolicyViolation::TooShort { min: min_len });
    }
    if is_common(password) {
        return Err(PolicyViolation::Common);
    }
    let local = address
        .rsplit_once('@')
        .map(|(l, _)| l)
        .unwrap_or(address)
        .to_lowercase();
    // Local parts of one or two characters would forbid too much by accident.
    if local.chars().count() >= 3 && password.to_lowercase().contains(&local) {
        return Err(PolicyViolation::ContainsLocalPart);
    }
    let mut inputs: Vec<&str> = vec![address];
    if !local.is_empty() {
        inputs.push(&local);
    }
    let entropy = zxcvbn::zxcvbn(password, &inputs);
    let score = u8::from(entropy.score());
    if score < MIN_SCORE {
        let feedback = entropy
            .feedback()
            .map(|f| {
                let mut parts: Vec<String> = Vec::new();
                if let Some(w) = f.warning() {
                    parts.push(w.to_string());
                }
                parts.extend(f.suggestions().iter().map(|s| s.to_string()));
                parts.join(" ")
            })
            .unwrap_or_default();
        return Err(PolicyViolation::TooWeak {
            score,
            min: MIN_SCORE,
            feedback,
        });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const ADDR: &str = "alice@example.com";

    #[test]
    fn accepts_a_strong_password() {
        assert_eq!(
            check_password(ADDR, "correct-horse-battery-staple-91", 12),
            Ok(())
        );
        assert_eq!(check_password(ADDR, "vN7#qL2!xR9@tW4$", 12), Ok(()));
    }

    #[test]
    fn too_short_names_the_minimum() {
        let e = check_password(ADDR, "Xk9#q", 12).unwrap_err();
        assert_eq!(e, PolicyViolation::TooShort { min: 12 });
        assert!(e.to_string().contains("at least 12 characters"));
    }

    #[test]
    fn common_passwords_are_refused_case_insensitively() {
        assert!(is_common("password"));
        assert!(is_common("Password123"));
        assert_eq!(
            check_password(ADDR, "Password1234", 12),
            Err(PolicyViolation::Common)
        );
        assert!(common_set().len() >= 900, "list has {}", common_set().len());
    }

    #[test]
    fn local_part_is_refused() {
        assert_eq!(
            check_password(ADDR, "zq!ALICE-rules-2041", 12),
            Err(PolicyViolation::ContainsLocalPart)
        );
    }

    #[test]
    fn weak_passwords_get_a_score() {
        let e = check_password(ADDR, "aaaaaaaaaaaaaaaa", 12).unwrap_err();
        assert!(
            matches!(e, PolicyViolation::TooWeak { score, .. } if score < 3),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("password too weak"));
    }
}
