//! The security side of `portcullis account ...`: 2FA enrolment, IP
//! allowlists, granted sender addresses, the password policy and the
//! security lines of `account show`.

use anyhow::{anyhow, bail};
use clap::Subcommand;
use portcullis_server::config::Config;
use portcullis_server::security::policy::{PolicyViolation, check_password};
use portcullis_server::security::totp;
use portcullis_store::password::generate_password;
use portcullis_store::{AccountSecurity, SqliteStore, Store, StoreError, validate};
use qrcode::QrCode;
use qrcode::render::unicode::Dense1x2;
use zeroize::Zeroizing;

use crate::app_password::find_account;
use crate::common::{format_time, parse_network, plural, store_error};

/// Attempts at generating a password that passes the policy before giving up
/// (a random 24-character password passes at the first try in practice).
const GENERATE_ATTEMPTS: usize = 20;

#[derive(Debug, Subcommand)]
pub enum TwoFactorCommand {
    /// Enrol TOTP (RFC 6238): prints the otpauth URI and a QR code for an
    /// authenticator app. The main password is then refused on SMTP
    /// (534 5.7.9); mail clients need an app password.
    Enable { email: String },
    /// Turn 2FA off; the main password works on SMTP again.
    Disable { email: String },
}

/// Checks a password against the policy; the error names the rule broken.
pub fn check_policy(address: &str, password: &str, config: &Config) -> anyhow::Result<()> {
    check_password(address, password, config.security.password_min_length)
        .map_err(|violation| anyhow!("password refused: {}", policy_words(&violation)))
}

/// The rule a password broke, in plain words.
fn policy_words(violation: &PolicyViolation) -> String {
    match violation {
        PolicyViolation::TooShort { min } => format!("shorter than {min} characters"),
        PolicyViolation::TooWeak {
            score,
            min,
            feedback,
        } => {
            let mut text = format!(
                "too easy to guess (strength {score} of 4, at least {min} required; \
                 longer passphrases of unrelated words are stronger)"
            );
            if !feedback.trim().is_empty() {
                text.push_str(&format!(": {}", feedback.trim()));
            }
            text
        }
        PolicyViolation::ContainsLocalPart => {
            "contains the local part of the address (the name before the @)".to_owned()
        }
        PolicyViolation::Common => "in the list of common passwords".to_owned(),
    }
}

/// A random password for `address` that passes the policy.
pub fn generate_policy_password(
    address: &str,
    config: &Config,
) -> anyhow::Result<Zeroizing<String>> {
    let min = config.security.password_min_length;
    for _ in 0..GENERATE_ATTEMPTS {
        let mut password = Zeroizing::new(generate_password());
        while password.chars().count() < min {
            password.push_str(&generate_password());
        }
        if check_password(address, &password, min).is_ok() {
            return Ok(password);
        }
    }
    bail!("cannot generate a password that passes the password policy; use --password-stdin")
}

pub async fn two_factor(store: &SqliteStore, command: TwoFactorCommand) -> anyhow::Result<()> {
    match command {
        TwoFactorCommand::Enable { email } => enable_2fa(store, &email).await,
        TwoFactorCommand::Disable { email } => disable_2fa(store, &email).await,
    }
}

async fn security_of(store: &SqliteStore, address: &str) -> anyhow::Result<AccountSecurity> {
    store
        .account_security(address)
        .await
        .map_err(|e| store_error("account", e))?
        .ok_or_else(|| anyhow!("account {address} not found"))
}

async fn enable_2fa(store: &SqliteStore, email: &str) -> anyhow::Result<()> {
    let account = find_account(store, email).await?;
    let address = &account.address;
    if security_of(store, address).await?.totp_secret.is_some() {
        bail!(
            "2FA is already enabled for {address} (to enrol a new authenticator, run \
             `portcullis account 2fa disable {address}` first)"
        );
    }
    let secret = Zeroizing::new(totp::generate_secret());
    if secret.is_empty() {
        bail!("cannot generate a TOTP secret");
    }
    let uri = Zeroizing::new(
        totp::otpauth_uri(&secret, address)
            .map_err(|e| anyhow!("cannot build the otpauth URI: {e}"))?,
    );
    let qr = qr_text(&uri)?;
    store
        .set_totp_secret(address, Some(&secret))
        .await
        .map_err(|e| store_error("account", e))?;
    let app_passwords = store
        .list_app_passwords(address)
        .await
        .map_err(|e| store_error("account", e))?
        .len();

    println!("Enabled 2FA (TOTP) for {address}");
    println!("Scan this QR code with an authenticator app:");
    println!("{qr}");
    println!("Or add this URI (or the secret alone) by hand:");
    println!("{}", uri.as_str());
    println!("Secret: {}", secret.as_str());
    println!("They will not be shown again: enrol the authenticator now.");
    println!(
        "The main password of {address} is now refused on SMTP (534 5.7.9 Application-specific \
         password required); mail clients must use app passwords."
    );
    if app_passwords == 0 {
        println!(
            "{address} has no app password yet: create one per client with \
             `portcullis app-password add {address} --name NAME`."
        );
    }
    Ok(())
}

/// The QR code of `text` in Unicode half blocks, two modules per character
/// cell, drawn light-on-dark (as `qrencode -t UTF8`) so that it scans on a
/// terminal with a dark background.
fn qr_text(text: &str) -> anyhow::Result<String> {
    let code = QrCode::new(text.as_bytes()).map_err(|e| anyhow!("cannot draw the QR code: {e}"))?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

async fn disable_2fa(store: &SqliteStore, email: &str) -> anyhow::Result<()> {
    let account = find_account(store, email).await?;
    let address = &account.address;
    if security_of(store, address).await?.totp_secret.is_none() {
        bail!("2FA is not enabled for {address}");
    }
    store
        .set_totp_secret(address, None)
        .await
        .map_err(|e| store_error("account", e))?;
    println!("Disabled 2FA for {address}; its main password works on SMTP again");
    Ok(())
}

/// `account allow-ip EMAIL CIDR...`: adds networks to the account's allowlist;
/// `--remove` takes them out, `--clear` empties it (logins from any IP).
pub async fn allow_ip(
    store: &SqliteStore,
    email: &str,
    cidrs: &[String],
    remove: bool,
    clear: bool,
) -> anyhow::Result<()> {
    let networks = cidrs
        .iter()
        .map(|text| parse_network("account allow-ip", text).map(|net| net.to_string()))
        .collect::<anyhow::Result<Vec<String>>>()?;
    let account = find_account(store, email).await?;
    let address = &account.address;
    let current = security_of(store, address).await?.allowed_ips;
    let updated: Vec<String> = if clear {
        Vec::new()
    } else if remove {
        if let Some(missing) = networks.iter().find(|n| !current.contains(n)) {
            bail!(
                "{missing} is not in the IP allowlist of {address} (it has: {})",
                list_or(&current, "none")
            );
        }
        current
            .iter()
            .filter(|n| !networks.contains(n))
            .cloned()
            .collect()
    } else {
        let mut updated = current.clone();
        for network in networks {
            if !updated.contains(&network) {
                updated.push(network);
            }
        }
        updated
    };
    store
        .set_allowed_ips(address, &updated)
        .await
        .map_err(|e| store_error("account", e))?;
    if updated.is_empty() {
        println!("{address} may log in from any IP address");
    } else {
        println!(
            "{address} may log in only from: {} (other IPs get 535 5.7.8, reason ip_not_allowed)",
            updated.join(", ")
        );
    }
    Ok(())
}

/// `account allow-sender EMAIL ADDRESS|@DOMAIN [--remove]`.
pub async fn allow_sender(
    store: &SqliteStore,
    email: &str,
    sender: &str,
    remove: bool,
) -> anyhow::Result<()> {
    let sender = normalize_sender(sender)?;
    let account = find_account(store, email).await?;
    let address = &account.address;
    if remove {
        store
            .remove_allowed_sender(address, &sender)
            .await
            .map_err(|e| match e {
                StoreError::NotFound(_) => {
                    anyhow!("{sender} is not an allowed sender of {address}")
                }
                other => store_error("account", other),
            })?;
        println!(
            "{address} may no longer send as {}",
            describe_sender(&sender)
        );
    } else {
        store
            .add_allowed_sender(address, &sender)
            .await
            .map_err(|e| match e {
                StoreError::AlreadyExists(_) => {
                    anyhow!("{address} may already send as {}", describe_sender(&sender))
                }
                other => store_error("account", other),
            })?;
        println!("{address} may now send as {}", describe_sender(&sender));
    }
    Ok(())
}

/// `user@dom` (normalised address) or `@dom` (a whole domain).
fn normalize_sender(text: &str) -> anyhow::Result<String> {
    let trimmed = text.trim();
    if let Some(domain) = trimmed.strip_prefix('@') {
        let domain = validate::normalize_domain(domain).map_err(|e| {
            anyhow!(
                "account allow-sender: invalid domain in {trimmed:?}: {}",
                detail(e)
            )
        })?;
        Ok(format!("@{domain}"))
    } else {
        validate::normalize_address(trimmed).map_err(|e| {
            anyhow!(
                "account allow-sender: invalid sender {trimmed:?} (give an address or @domain): {}",
                detail(e)
            )
        })
    }
}

fn detail(error: StoreError) -> String {
    match error {
        StoreError::Invalid(message) | StoreError::Unavailable(message) => message,
        other => other.to_string(),
    }
}

fn describe_sender(sender: &str) -> String {
    if sender.starts_with('@') {
        format!("any address {sender}")
    } else {
        sender.to_owned()
    }
}

fn list_or(items: &[String], empty: &str) -> String {
    if items.is_empty() {
        empty.to_owned()
    } else {
        items.join(", ")
    }
}

/// The security lines of `account show`.
pub async fn show_lines(store: &SqliteStore, address: &str) -> anyhow::Result<Vec<String>> {
    let security = security_of(store, address).await?;
    let app_passwords = store
        .list_app_passwords(address)
        .await
        .map_err(|e| store_error("account", e))?
        .len();
    let mut lines = vec![
        format!(
            "2fa:     {}",
            if security.totp_secret.is_some() {
                "on (TOTP; main password refused on SMTP, use app passwords)"
            } else {
                "off"
            }
        ),
        format!(
            "app passwords: {}",
            if app_passwords == 0 {
                "none".to_owned()
            } else {
                format!(
                    "{} (`portcullis app-password list {address}`)",
                    plural(app_passwords, "app password")
                )
            }
        ),
        format!("allowed IPs: {}", list_or(&security.allowed_ips, "any")),
        format!(
            "allowed senders: {}",
            if security.allowed_senders.is_empty() {
                "own address and aliases only".to_owned()
            } else {
                format!(
                    "own address and aliases, {}",
                    security.allowed_senders.join(", ")
                )
            }
        ),
    ];
    lines.push(format!(
        "password changed: {}",
        format_time(security.password_changed_at)
    ));
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders() {
        assert_eq!(
            normalize_sender("@Example.ORG").ok().as_deref(),
            Some("@example.org")
        );
        assert_eq!(
            normalize_sender(" Bob@Example.org ").ok().as_deref(),
            Some("bob@example.org")
        );
        assert!(normalize_sender("@").is_err());
        assert!(normalize_sender("not an address").is_err());
    }

    #[test]
    fn qr_code_is_drawn_with_half_blocks() {
        let text =
            qr_text("otpauth://totp/Portcullis:a%40b.example?secret=ABC").unwrap_or_default();
        assert!(text.contains('▀') || text.contains('▄'), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() > 10);
    }

    #[test]
    fn generated_passwords_pass_the_policy() {
        let mut config = Config::default_config();
        for min in [12, 30, 50] {
            config.security.password_min_length = min;
            let password = generate_policy_password("alice@example.com", &config)
                .map(|p| p.to_string())
                .unwrap_or_default();
            assert!(password.chars().count() >= min, "{password}");
            assert!(check_policy("alice@example.com", &password, &config).is_ok());
        }
    }

    #[test]
    fn policy_messages_name_the_rule() {
        let config = Config::default_config();
        let message = |p: &str| {
            check_policy("alice@example.com", p, &config)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert_eq!(
            message("Xk9#q"),
            "password refused: shorter than 12 characters"
        );
        assert!(message("password1234").contains("common passwords"));
        assert!(message("zq!ALICE-rules-2041").contains("local part"));
        assert!(message("aaaaaaaaaaaaaaaa").contains("too easy to guess"));
    }
}
