//! Normalisation and validation of the names the store keeps: account and
//! envelope addresses, local domain names, password hash strings and plans.
//!
//! Every backend runs its inputs through these functions so that all of them
//! agree on what is accepted and how it is spelled once stored. Messages in the
//! returned errors name the offending value for addresses and domains (they are
//! not secret) but never echo a password hash.

use crate::{NewMessage, Result, StoreError};

/// Longest accepted address in octets (RFC 5321 path limit minus the brackets).
pub const MAX_ADDRESS_LEN: usize = 254;

/// Longest accepted domain name in octets (textual form, no trailing dot).
pub const MAX_DOMAIN_LEN: usize = 253;

/// Longest accepted DNS label in octets.
pub const MAX_LABEL_LEN: usize = 63;

/// Longest accepted plan name in octets.
pub const MAX_PLAN_LEN: usize = 64;

/// Trims surrounding whitespace and lowercases ASCII letters. Non-ASCII
/// characters are kept as they are.
pub fn normalize(input: &str) -> String {
    input.trim().to_ascii_lowercase()
}

/// Normalises and validates an address: exactly one `@` splitting a non-empty
/// local part from a non-empty domain, no whitespace or control characters,
/// at most [`MAX_ADDRESS_LEN`] octets. The domain part is not required to be a
/// DNS name here (envelope recipients may be address literals); see
/// [`normalize_account_address`] for logins.
pub fn normalize_address(input: &str) -> Result<String> {
    let address = normalize(input);
    if address.is_empty() {
        return Err(StoreError::Invalid("address is empty".into()));
    }
    if address.len() > MAX_ADDRESS_LEN {
        return Err(StoreError::Invalid(format!(
            "address is longer than {MAX_ADDRESS_LEN} octets"
        )));
    }
    if address.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(StoreError::Invalid(format!(
            "address {:?} contains whitespace or control characters",
            address
        )));
    }
    let mut parts = address.split('@');
    let (local, domain) = match (parts.next(), parts.next(), parts.next()) {
        (Some(local), Some(domain), None) => (local, domain),
        _ => {
            return Err(StoreError::Invalid(format!(
                "address {address} must contain exactly one '@'"
            )));
        }
    };
    if local.is_empty() {
        return Err(StoreError::Invalid(format!(
            "address {address} has an empty local part"
        )));
    }
    if domain.is_empty() {
        return Err(StoreError::Invalid(format!(
            "address {address} has an empty domain"
        )));
    }
    Ok(address)
}

/// Normalises and validates an account login: an address (as
/// [`normalize_address`]) whose domain part is also a valid DNS name (as
/// [`normalize_domain`]), because that domain becomes a local domain. Returns
/// the address and its domain.
pub fn normalize_account_address(input: &str) -> Result<(String, String)> {
    let address = normalize_address(input)?;
    let domain = match address.split_once('@') {
        Some((_, domain)) => domain,
        None => {
            return Err(StoreError::Invalid(format!(
                "address {address} must contain exactly one '@'"
            )));
        }
    };
    let domain = normalize_domain(domain)
        .map_err(|e| StoreError::Invalid(format!("address {address}: {}", invalid_text(e))))?;
    Ok((address, domain))
}

/// Normalises and validates a domain name: labels of 1 to [`MAX_LABEL_LEN`]
/// characters from `[a-z0-9-]`, not starting or ending with `-`, separated by
/// dots, at most [`MAX_DOMAIN_LEN`] octets in total. A single label such as
/// `localhost` is accepted; a trailing dot is not.
pub fn normalize_domain(input: &str) -> Result<String> {
    let domain = normalize(input);
    if domain.is_empty() {
        return Err(StoreError::Invalid("domain is empty".into()));
    }
    if domain.len() > MAX_DOMAIN_LEN {
        return Err(StoreError::Invalid(format!(
            "domain is longer than {MAX_DOMAIN_LEN} octets"
        )));
    }
    for label in domain.split('.') {
        if label.is_empty() {
            return Err(StoreError::Invalid(format!(
                "domain {domain:?} has an empty label"
            )));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(StoreError::Invalid(format!(
                "domain {domain:?} has a label longer than {MAX_LABEL_LEN} octets"
            )));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(StoreError::Invalid(format!(
                "domain {domain:?} may only contain letters, digits, '-' and '.'"
            )));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(StoreError::Invalid(format!(
                "domain {domain:?} has a label starting or ending with '-'"
            )));
        }
    }
    Ok(domain)
}

/// Checks that `hash` is a PHC string (`$alg$...`) such as
/// [`crate::password::hash_password`] produces. Storing anything else would
/// lock the account out, or worse store a plain password, so backends refuse
/// it. The error never contains the input.
pub fn check_password_hash(hash: &str) -> Result<()> {
    if hash.is_empty() {
        return Err(StoreError::Invalid("password hash is empty".into()));
    }
    match argon2::PasswordHash::new(hash) {
        Ok(_) => Ok(()),
        Err(_) => Err(StoreError::Invalid(
            "password hash is not a PHC string".into(),
        )),
    }
}

/// Trims and checks a plan name: non-empty, at most [`MAX_PLAN_LEN`] octets,
/// no control characters. Case is preserved.
pub fn normalize_plan(input: &str) -> Result<String> {
    let plan = input.trim();
    if plan.is_empty() {
        return Err(StoreError::Invalid("plan is empty".into()));
    }
    if plan.len() > MAX_PLAN_LEN {
        return Err(StoreError::Invalid(format!(
            "plan is longer than {MAX_PLAN_LEN} octets"
        )));
    }
    if plan.chars().any(char::is_control) {
        return Err(StoreError::Invalid(
            "plan contains control characters".into(),
        ));
    }
    Ok(plan.to_owned())
}

/// Checks a message before it is queued and returns it normalised: the id
/// must be non-empty without whitespace or control characters, the spool path
/// non-empty without control characters, there must be at least one
/// recipient, and the size must fit a signed 64-bit integer. The sender is
/// either empty (the null reverse-path; whitespace-only counts as empty) or an
/// address, and is normalised like the recipients and `auth_user` (as
/// [`normalize_address`]; recipient order and duplicates are kept). Usage
/// timestamps require an `auth_user`. The id, spool path, client IP,
/// timestamp and usage timestamps are kept as given.
/// An envelope address as the protocol layer parsed it (RFC 5321 4.1.2).
/// Unlike account addresses it is kept as given: the local part is
/// case-sensitive (RFC 5321 2.4) and may be a quoted string with spaces or
/// `@`. Only what could corrupt storage or later SMTP commands is refused.
fn envelope_address(address: &str) -> std::result::Result<String, &'static str> {
    let address = address.trim();
    if address.len() > 512 {
        return Err("address is too long");
    }
    if address.chars().any(|c| c.is_control()) {
        return Err("address contains control characters");
    }
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Err("address has no domain");
    };
    if local.is_empty() || domain.is_empty() || domain.contains(char::is_whitespace) {
        return Err("address must be local-part@domain");
    }
    let quoted = local.len() >= 2 && local.starts_with('"') && local.ends_with('"');
    if !quoted && (local.contains(char::is_whitespace) || local.contains('@')) {
        return Err("unquoted local part with whitespace or '@'");
    }
    Ok(address.to_owned())
}

pub fn normalize_new_message(message: &NewMessage) -> Result<NewMessage> {
    let id = &message.id;
    if id.is_empty() || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(StoreError::Invalid(
            "message id must be non-empty, without whitespace or control characters".into(),
        ));
    }
    if message.spool_path.trim().is_empty() || message.spool_path.chars().any(char::is_control) {
        return Err(StoreError::Invalid(format!(
            "message {id}: spool path must be non-empty, without control characters"
        )));
    }
    if message.recipients.is_empty() {
        return Err(StoreError::Invalid(format!(
            "message {id} has no recipients"
        )));
    }
    if i64::try_from(message.size).is_err() {
        return Err(StoreError::Invalid(format!(
            "message {id}: size is too large"
        )));
    }
    let sender = if message.sender.trim().is_empty() {
        String::new()
    } else {
        envelope_address(&message.sender)
            .map_err(|e| StoreError::Invalid(format!("message {id}: sender: {e}")))?
    };
    let recipients = message
        .recipients
        .iter()
        .map(|r| {
            envelope_address(r)
                .map_err(|e| StoreError::Invalid(format!("message {id}: recipient: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let auth_user = match &message.auth_user {
        Some(user) => Some(normalize_address(user).map_err(|e| {
            StoreError::Invalid(format!("message {id}: auth user: {}", invalid_text(e)))
        })?),
        None => None,
    };
    if auth_user.is_none() && !message.usage_ms.is_empty() {
        return Err(StoreError::Invalid(format!(
            "message {id}: usage needs an auth user"
        )));
    }
    Ok(NewMessage {
        id: id.clone(),
        sender,
        recipients,
        size: message.size,
        spool_path: message.spool_path.clone(),
        auth_user,
        client_ip: message.client_ip.clone(),
        received_at: message.received_at,
        usage_ms: message.usage_ms.clone(),
    })
}

/// The text of an `Invalid` error, or the whole message for other kinds.
fn invalid_text(error: StoreError) -> String {
    match error {
        StoreError::Invalid(text) => text,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid<T: std::fmt::Debug>(result: Result<T>) -> bool {
        matches!(result, Err(StoreError::Invalid(_)))
    }

    #[test]
    fn addresses_are_normalised() {
        assert_eq!(
            normalize_address("  Alice@Example.COM\t").ok().as_deref(),
            Some("alice@example.com")
        );
        assert_eq!(
            normalize_address("bob@[192.0.2.1]").ok().as_deref(),
            Some("bob@[192.0.2.1]")
        );
    }

    #[test]
    fn bad_addresses_are_refused() {
        for bad in [
            "",
            "   ",
            "alice",
            "@example.com",
            "alice@",
            "a@b@example.com",
            "al ice@example.com",
            "alice@exa\u{7}mple.com",
            "alice@exam\u{a0}ple.com",
        ] {
            assert!(invalid(normalize_address(bad)), "{bad:?} accepted");
        }
        let long = format!("{}@example.com", "a".repeat(MAX_ADDRESS_LEN));
        assert!(invalid(normalize_address(&long)));
    }

    #[test]
    fn account_addresses_need_a_dns_domain() {
        assert_eq!(
            normalize_account_address("Alice@Example.com").ok(),
            Some(("alice@example.com".into(), "example.com".into()))
        );
        assert!(invalid(normalize_account_address("bob@[192.0.2.1]")));
        assert!(invalid(normalize_account_address("bob@-bad.example")));
    }

    #[test]
    fn domains() {
        assert_eq!(
            normalize_domain(" Mail.Example.COM ").ok().as_deref(),
            Some("mail.example.com")
        );
        assert_eq!(
            normalize_domain("localhost").ok().as_deref(),
            Some("localhost")
        );
        assert_eq!(
            normalize_domain("xn--bcher-kva.example").ok().as_deref(),
            Some("xn--bcher-kva.example")
        );
        let label63 = "a".repeat(63);
        assert!(normalize_domain(&format!("{label63}.example")).is_ok());
        for bad in [
            "",
            "example.com.",
            ".example.com",
            "exa..mple.com",
            "-example.com",
            "example-.com",
            "exa_mple.com",
            "exa mple.com",
            "bücher.example",
            "[192.0.2.1]",
        ] {
            assert!(invalid(normalize_domain(bad)), "{bad:?} accepted");
        }
        assert!(invalid(normalize_domain(&format!(
            "{}.example",
            "a".repeat(64)
        ))));
        let long = vec!["abcdefghi"; 26].join(".");
        assert!(long.len() > MAX_DOMAIN_LEN);
        assert!(invalid(normalize_domain(&long)));
    }

    #[test]
    fn password_hashes_and_plans() {
        assert!(
            check_password_hash(
                "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
            )
            .is_ok()
        );
        assert!(invalid(check_password_hash("")));
        assert!(invalid(check_password_hash("hunter2")));
        match check_password_hash("hunter2") {
            Err(e) => assert!(!e.to_string().contains("hunter2")),
            Ok(()) => panic!("accepted a plain password"),
        }
        assert_eq!(normalize_plan(" Pro ").ok().as_deref(), Some("Pro"));
        assert!(invalid(normalize_plan(" ")));
        assert!(invalid(normalize_plan("a\nb")));
    }

    fn new_message(auth_user: Option<&str>, usage_ms: Vec<i64>) -> NewMessage {
        NewMessage {
            id: "M1".into(),
            sender: "Alice@Example.com".into(),
            recipients: vec!["Bob@Example.net".into(), "carol@example.org".into()],
            size: 10,
            spool_path: "spool/M1.eml".into(),
            auth_user: auth_user.map(str::to_owned),
            client_ip: "192.0.2.1".into(),
            received_at: 1_700_000_000,
            usage_ms,
        }
    }

    #[test]
    fn usage_needs_an_auth_user() {
        let normalised = normalize_new_message(&new_message(
            Some(" Alice@Example.COM "),
            vec![1_700_000_000_500, 1_700_000_000_000],
        ));
        match normalised {
            Ok(m) => {
                assert_eq!(m.auth_user.as_deref(), Some("alice@example.com"));
                assert_eq!(m.usage_ms, [1_700_000_000_500, 1_700_000_000_000]);
                // Envelope addresses are kept as given (RFC 5321 2.4).
                assert_eq!(m.recipients, ["Bob@Example.net", "carol@example.org"]);
            }
            Err(e) => panic!("refused: {e}"),
        }
        assert!(normalize_new_message(&new_message(None, vec![])).is_ok());
        assert!(normalize_new_message(&new_message(Some("a@example.com"), vec![])).is_ok());
        assert!(invalid(normalize_new_message(&new_message(None, vec![1]))));
    }
}
