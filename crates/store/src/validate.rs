//! Normalisation and validation of the names the store keeps: account and
//! envelope addresses, local domain names, password hash strings, plans, and
//! the account-security texts (app password names and digests, allowlist
//! entries, granted senders, TOTP secrets, ban networks and reasons).
//!
//! Every backend runs its inputs through these functions so that all of them
//! agree on what is accepted and how it is spelled once stored. Messages in the
//! returned errors name the offending value for addresses and domains (they are
//! not secret) but never echo a password hash, digest or TOTP secret.

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

/// Longest kept text field of an auth event, in characters; longer ones are cut.
pub const MAX_AUTH_TEXT_CHARS: usize = 255;

/// Longest accepted CIDR text (allowlist entry) or client IP text, in characters.
pub const MAX_CIDR_LEN: usize = 64;

/// Longest accepted app password name, in characters.
pub const MAX_APP_PASSWORD_NAME_LEN: usize = 64;

/// Length of an app password digest (SHA-256) in bytes.
pub const APP_PASSWORD_DIGEST_LEN: usize = 32;

/// Longest accepted TOTP secret (base32 text), in characters.
pub const MAX_TOTP_SECRET_LEN: usize = 256;

/// Longest accepted ban reason, in characters.
pub const MAX_BAN_REASON_CHARS: usize = 255;

/// Trims and checks an app password name: 1 to
/// [`MAX_APP_PASSWORD_NAME_LEN`] characters from `[A-Za-z0-9._-]`. Case is
/// preserved (backends compare names case-insensitively).
pub fn normalize_app_password_name(input: &str) -> Result<String> {
    let name = input.trim();
    if name.is_empty() {
        return Err(StoreError::Invalid("app password name is empty".into()));
    }
    if name.len() > MAX_APP_PASSWORD_NAME_LEN {
        return Err(StoreError::Invalid(format!(
            "app password name is longer than {MAX_APP_PASSWORD_NAME_LEN} characters"
        )));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(StoreError::Invalid(format!(
            "app password name {name:?} may only contain letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(name.to_owned())
}

/// Checks an app password digest: exactly [`APP_PASSWORD_DIGEST_LEN`] bytes.
/// The error never contains the digest.
pub fn check_app_password_digest(digest: &[u8]) -> Result<()> {
    if digest.len() != APP_PASSWORD_DIGEST_LEN {
        return Err(StoreError::Invalid(format!(
            "app password digest must be {APP_PASSWORD_DIGEST_LEN} bytes (SHA-256), not {}",
            digest.len()
        )));
    }
    Ok(())
}

/// Trims and checks one short network text (a CIDR allowlist entry or a
/// client IP): non-empty, at most [`MAX_CIDR_LEN`] characters, no whitespace
/// or control characters. Its syntax is the caller's business.
pub fn check_network_text(input: &str, what: &str) -> Result<String> {
    let text = input.trim();
    if text.is_empty() {
        return Err(StoreError::Invalid(format!("{what} is empty")));
    }
    if text.chars().count() > MAX_CIDR_LEN {
        return Err(StoreError::Invalid(format!(
            "{what} is longer than {MAX_CIDR_LEN} characters"
        )));
    }
    if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(StoreError::Invalid(format!(
            "{what} {text:?} contains whitespace or control characters"
        )));
    }
    Ok(text.to_owned())
}

/// Checks an allowlist of CIDR texts with [`check_network_text`] and returns
/// it trimmed, in the given order, without duplicates.
pub fn normalize_cidr_list(cidrs: &[String]) -> Result<Vec<String>> {
    let mut list: Vec<String> = Vec::with_capacity(cidrs.len());
    for cidr in cidrs {
        let cidr = check_network_text(cidr, "allowed IP network")?;
        if !list.contains(&cidr) {
            list.push(cidr);
        }
    }
    Ok(list)
}

/// Trims and checks a base32 TOTP secret (RFC 4648 alphabet in either case,
/// `=` padding allowed), at most [`MAX_TOTP_SECRET_LEN`] characters. Returns
/// it trimmed, case kept. The error never contains the secret.
pub fn check_totp_secret(input: &str) -> Result<String> {
    let secret = input.trim();
    if secret.is_empty() {
        return Err(StoreError::Invalid("TOTP secret is empty".into()));
    }
    if secret.len() > MAX_TOTP_SECRET_LEN {
        return Err(StoreError::Invalid(format!(
            "TOTP secret is longer than {MAX_TOTP_SECRET_LEN} characters"
        )));
    }
    if !secret
        .bytes()
        .all(|b| b.is_ascii_alphabetic() || matches!(b, b'2'..=b'7' | b'='))
    {
        return Err(StoreError::Invalid(
            "TOTP secret is not base32 (A-Z, 2-7)".into(),
        ));
    }
    Ok(secret.to_owned())
}

/// Normalises and checks a granted sender: either a whole domain `@dom`
/// (a DNS name, as [`normalize_domain`]) or an address `user@dom` (as
/// [`normalize_address`]).
pub fn normalize_sender(input: &str) -> Result<String> {
    let sender = normalize(input);
    match sender.strip_prefix('@') {
        Some(domain) => {
            let domain = normalize_domain(domain).map_err(|e| {
                StoreError::Invalid(format!("sender {sender:?}: {}", invalid_text(e)))
            })?;
            Ok(format!("@{domain}"))
        }
        None => normalize_address(&sender),
    }
}

/// Normalises an IP address or CIDR network (`addr/prefix`, IPv4 or IPv6):
/// the address is written in its canonical form (IPv6 lowercase and
/// compressed), host bits are cleared, and a single host (`/32`, `/128` or no
/// prefix) is written as the plain address. `Invalid` for anything else.
pub fn normalize_network(input: &str) -> Result<String> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    let text = input.trim();
    let invalid = || StoreError::Invalid(format!("{text:?} is not an IP address or network"));
    if text.is_empty() || text.len() > MAX_CIDR_LEN {
        return Err(invalid());
    }
    let (address, prefix) = match text.split_once('/') {
        Some((address, prefix)) => {
            if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(invalid());
            }
            let prefix: u32 = prefix.parse().map_err(|_| invalid())?;
            (address, Some(prefix))
        }
        None => (text, None),
    };
    let address: IpAddr = address.parse().map_err(|_| invalid())?;
    match address {
        IpAddr::V4(v4) => {
            let prefix = prefix.unwrap_or(32);
            if prefix > 32 {
                return Err(invalid());
            }
            let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
            let network = Ipv4Addr::from(u32::from(v4) & mask);
            Ok(if prefix == 32 {
                network.to_string()
            } else {
                format!("{network}/{prefix}")
            })
        }
        IpAddr::V6(v6) => {
            let prefix = prefix.unwrap_or(128);
            if prefix > 128 {
                return Err(invalid());
            }
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            let network = Ipv6Addr::from(u128::from(v6) & mask);
            Ok(if prefix == 128 {
                network.to_string()
            } else {
                format!("{network}/{prefix}")
            })
        }
    }
}

/// Trims and checks a ban reason: at most [`MAX_BAN_REASON_CHARS`]
/// characters, no control characters (it may be empty).
pub fn check_ban_reason(input: &str) -> Result<String> {
    let reason = input.trim();
    if reason.chars().count() > MAX_BAN_REASON_CHARS {
        return Err(StoreError::Invalid(format!(
            "ban reason is longer than {MAX_BAN_REASON_CHARS} characters"
        )));
    }
    if reason.chars().any(char::is_control) {
        return Err(StoreError::Invalid(
            "ban reason contains control characters".into(),
        ));
    }
    Ok(reason.to_owned())
}

/// The first `max` characters of `text` (all of it if shorter).
pub fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    }
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

    #[test]
    fn networks_are_normalised() {
        for (input, expected) in [
            ("192.0.2.7", "192.0.2.7"),
            (" 192.0.2.7/32 ", "192.0.2.7"),
            ("192.0.2.77/24", "192.0.2.0/24"),
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("192.0.2.1/0", "0.0.0.0/0"),
            ("2001:DB8::1", "2001:db8::1"),
            ("2001:db8:0:0:1::5/64", "2001:db8::/64"),
            ("2001:db8::1/128", "2001:db8::1"),
            ("::/0", "::/0"),
        ] {
            assert_eq!(
                normalize_network(input).ok().as_deref(),
                Some(expected),
                "{input:?}"
            );
        }
        for bad in [
            "",
            "192.0.2.1/33",
            "192.0.2.1/",
            "/24",
            "192.0.2.1/-1",
            "192.0.2.1/+8",
            "192.0.2.1/0008",
            "2001:db8::/129",
            "192.0.2",
            "host.example",
            "192.0.2.1 /24",
        ] {
            assert!(invalid(normalize_network(bad)), "{bad:?} accepted");
        }
    }

    #[test]
    fn security_texts() {
        assert_eq!(
            normalize_app_password_name(" Phone-2.x_Y ").ok().as_deref(),
            Some("Phone-2.x_Y")
        );
        for bad in ["", "a b", "ph/one", "é", &"x".repeat(65)] {
            assert!(invalid(normalize_app_password_name(bad)), "{bad:?}");
        }
        assert!(check_app_password_digest(&[0; 32]).is_ok());
        assert!(invalid(check_app_password_digest(&[0; 16])));
        assert_eq!(
            normalize_cidr_list(&[" a ".into(), "b".into(), "a".into()]).ok(),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        assert!(invalid(normalize_cidr_list(&["a\u{0}".into()])));
        assert!(invalid(normalize_cidr_list(&["1".repeat(65)])));
        assert!(normalize_cidr_list(&["1".repeat(64)]).is_ok());
        assert_eq!(
            check_totp_secret(" jbswy3dp= ").ok().as_deref(),
            Some("jbswy3dp=")
        );
        match check_totp_secret("SECRET18") {
            Err(StoreError::Invalid(msg)) => assert!(!msg.contains("SECRET18"), "{msg}"),
            other => panic!("accepted a non-base32 secret: {other:?}"),
        }
        assert_eq!(
            normalize_sender(" @Example.ORG ").ok().as_deref(),
            Some("@example.org")
        );
        assert_eq!(
            normalize_sender("Bob@Example.org").ok().as_deref(),
            Some("bob@example.org")
        );
        for bad in [
            "@",
            "@@example.org",
            "@[192.0.2.1]",
            "bob",
            "b ob@example.org",
        ] {
            assert!(invalid(normalize_sender(bad)), "{bad:?}");
        }
        assert_eq!(check_ban_reason(" x ").ok().as_deref(), Some("x"));
        assert!(invalid(check_ban_reason("a\tb")));
        assert_eq!(truncate_chars("héllo", 2), "hé");
        assert_eq!(truncate_chars("hé", 5), "hé");
        assert_eq!(truncate_chars("", 0), "");
    }
}
