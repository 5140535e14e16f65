//! `portcullis app-password ...`: per-device passwords for mail clients.
//!
//! An app password is a random secret of 130 bits generated here and shown
//! once; the store keeps only its SHA-256 digest. It works with every AUTH
//! mechanism that sends a password, also for accounts with 2FA on (whose main
//! password the server then refuses).

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use portcullis_server::config::{Config, format_duration};
use portcullis_server::security::apppass::generate_app_password;
use portcullis_store::{Account, AppPassword, SqliteStore, Store, StoreError, validate};

use crate::common::{
    format_time, now_secs, open_store, parse_network, parse_positive_duration, plural, print_table,
    store_error,
};

/// Longest app password name, in characters.
const MAX_NAME_CHARS: usize = 64;

#[derive(Debug, Args)]
pub struct AppPasswordArgs {
    #[command(subcommand)]
    command: AppPasswordCommand,
}

#[derive(Debug, Subcommand)]
enum AppPasswordCommand {
    /// Create an app password for a mail client; it is printed once.
    ///
    /// Use it instead of the account password in the client (any AUTH
    /// mechanism). Accounts with 2FA need one: their main password is refused.
    Add {
        /// The account, e.g. user@example.com.
        email: String,
        /// A name for the device or client, e.g. phone or thunderbird
        /// (1-64 characters: letters, digits, '.', '_', '-').
        #[arg(long, value_name = "NAME")]
        name: String,
        /// Accept this app password only from this network (IP or CIDR;
        /// repeat for several). Default: from anywhere the account allows.
        #[arg(long = "allow-ip", value_name = "CIDR")]
        allow_ip: Vec<String>,
        /// Stop accepting it after this long, e.g. 30d or 90d. Default: never.
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        /// Also allow this app password with CRAM-MD5 (legacy clients). Its
        /// secret is then kept encrypted with the secret key
        /// (PORTCULLIS_SECRET_KEY or secret_key_file), which must be set.
        #[arg(long)]
        allow_cram_md5: bool,
    },
    /// List an account's app passwords (never the secrets).
    List { email: String },
    /// Delete an app password; clients using it can no longer log in.
    Revoke {
        email: String,
        /// The name given to `app-password add`.
        name: String,
    },
}

pub async fn run(args: AppPasswordArgs, config: &Config) -> anyhow::Result<()> {
    // Check the arguments before touching the database.
    let request = match args.command {
        AppPasswordCommand::Add {
            email,
            name,
            allow_ip,
            expires,
            allow_cram_md5,
        } => {
            let name = check_name(&name)?;
            let cram = if allow_cram_md5 {
                Some(
                    portcullis_server::secretbox::SecretBox::load(
                        config.secret_key_file.as_deref(),
                    )
                    .map_err(|e| anyhow!("--allow-cram-md5: {e}"))?,
                )
            } else {
                None
            };
            let allowed_ips = allow_ip
                .iter()
                .map(|text| parse_network("--allow-ip", text).map(|net| net.to_string()))
                .collect::<anyhow::Result<Vec<String>>>()?;
            let lifetime = expires
                .as_deref()
                .map(|text| parse_positive_duration("--expires", text))
                .transpose()?;
            Request::Add {
                email,
                name,
                allowed_ips: dedup(allowed_ips),
                lifetime,
                cram,
            }
        }
        AppPasswordCommand::List { email } => Request::List { email },
        AppPasswordCommand::Revoke { email, name } => Request::Revoke { email, name },
    };
    let store = open_store(config).await?;
    let result = match request {
        Request::Add {
            email,
            name,
            allowed_ips,
            lifetime,
            cram,
        } => add(&store, &email, &name, &allowed_ips, lifetime, cram.as_ref()).await,
        Request::List { email } => list(&store, &email).await,
        Request::Revoke { email, name } => revoke(&store, &email, &name).await,
    };
    store.close().await;
    result
}

enum Request {
    Add {
        email: String,
        name: String,
        allowed_ips: Vec<String>,
        lifetime: Option<std::time::Duration>,
        cram: Option<portcullis_server::secretbox::SecretBox>,
    },
    List {
        email: String,
    },
    Revoke {
        email: String,
        name: String,
    },
}

/// `--name`: 1-64 characters of `[A-Za-z0-9._-]`.
fn check_name(name: &str) -> anyhow::Result<String> {
    let name = name.trim();
    if name.is_empty() {
        bail!("--name: must not be empty");
    }
    if name.chars().count() > MAX_NAME_CHARS {
        bail!("--name: {name:?} is too long (at most {MAX_NAME_CHARS} characters)");
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        bail!(
            "--name: {name:?} contains {bad:?} (use letters, digits, '.', '_' and '-', e.g. phone or thunderbird-laptop)"
        );
    }
    Ok(name.to_owned())
}

/// `90d` for whole days, else as in the config file (`36h` stays `36h`).
fn format_lifetime(lifetime: std::time::Duration) -> String {
    let secs = lifetime.as_secs();
    if secs >= 86_400 && secs.is_multiple_of(86_400) && lifetime.subsec_nanos() == 0 {
        format!("{}d", secs / 86_400)
    } else {
        format_duration(lifetime)
    }
}

fn dedup(mut items: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    items.retain(|item| seen.insert(item.clone()));
    items
}

async fn add(
    store: &SqliteStore,
    email: &str,
    name: &str,
    allowed_ips: &[String],
    lifetime: Option<std::time::Duration>,
    cram: Option<&portcullis_server::secretbox::SecretBox>,
) -> anyhow::Result<()> {
    let account = find_account(store, email).await?;
    let expires_at = lifetime
        .map(|d| now_secs().saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2)));
    let (secret, digest) = generate_app_password();
    store
        .add_app_password(&account.address, name, &digest, expires_at, allowed_ips)
        .await
        .map_err(|e| match e {
            StoreError::AlreadyExists(_) => anyhow!(
                "app password {name} already exists for {} (revoke it first or choose another --name)",
                account.address
            ),
            other => store_error("account", other),
        })?;
    portcullis_server::security::saslkeys::set_app_password_keys(
        store,
        &account.address,
        name,
        &secret,
        cram,
    )
    .await
    .map_err(|e| store_error("account", e))?;

    println!("Created app password {name} for {}", account.address);
    if cram.is_some() {
        println!("CRAM-MD5: allowed (secret kept encrypted with the secret key)");
    }
    match (expires_at, lifetime) {
        (Some(at), Some(lifetime)) => println!(
            "Expires: {} (in {})",
            format_time(at),
            format_lifetime(lifetime)
        ),
        _ => println!("Expires: never"),
    }
    if !allowed_ips.is_empty() {
        println!("Accepted only from: {}", allowed_ips.join(", "));
    }
    println!("App password: {secret}");
    println!(
        "Use it instead of the account password in the mail client (user name {}). \
         It will not be shown again: store it now.",
        account.address
    );
    Ok(())
}

async fn list(store: &SqliteStore, email: &str) -> anyhow::Result<()> {
    let account = find_account(store, email).await?;
    let passwords = store
        .list_app_passwords(&account.address)
        .await
        .map_err(|e| store_error("account", e))?;
    if passwords.is_empty() {
        println!(
            "No app passwords for {} (create one with `portcullis app-password add {} --name NAME`)",
            account.address, account.address
        );
        return Ok(());
    }
    let now = now_secs();
    let rows: Vec<Vec<String>> = passwords.iter().map(|p| row(p, now)).collect();
    println!(
        "{} for {}:",
        plural(passwords.len(), "app password"),
        account.address
    );
    print_table(
        &[
            "NAME",
            "CREATED",
            "LAST USED",
            "LAST IP",
            "EXPIRES",
            "ALLOWED IPS",
        ],
        &rows,
    );
    Ok(())
}

fn row(password: &AppPassword, now: i64) -> Vec<String> {
    let dash = || "-".to_owned();
    vec![
        password.name.clone(),
        format_time(password.created_at),
        password
            .last_used_at
            .map_or_else(|| "never".to_owned(), format_time),
        password.last_used_ip.clone().unwrap_or_else(dash),
        match password.expires_at {
            None => "never".to_owned(),
            Some(at) if at <= now => format!("{} (expired)", format_time(at)),
            Some(at) => format_time(at),
        },
        if password.allowed_ips.is_empty() {
            "any".to_owned()
        } else {
            password.allowed_ips.join(",")
        },
    ]
}

async fn revoke(store: &SqliteStore, email: &str, name: &str) -> anyhow::Result<()> {
    let account = find_account(store, email).await?;
    let name = name.trim();
    store
        .revoke_app_password(&account.address, name)
        .await
        .map_err(|e| match e {
            StoreError::NotFound(_) => anyhow!(
                "app password {name} not found for {} (see `portcullis app-password list {}`)",
                account.address,
                account.address
            ),
            other => store_error("account", other),
        })?;
    println!("Revoked app password {name} of {}", account.address);
    Ok(())
}

/// The account, or an error naming the address.
pub async fn find_account(store: &SqliteStore, email: &str) -> anyhow::Result<Account> {
    let address = validate::normalize_address(email).map_err(|e| store_error("account", e))?;
    store
        .account(&address)
        .await
        .map_err(|e| store_error("account", e))?
        .ok_or_else(|| anyhow!("account {address} not found"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes() {
        use std::time::Duration;
        assert_eq!(format_lifetime(Duration::from_secs(90 * 86_400)), "90d");
        assert_eq!(format_lifetime(Duration::from_secs(36 * 3600)), "36h");
        assert_eq!(format_lifetime(Duration::from_secs(90)), "1m30s");
    }

    #[test]
    fn names() {
        assert_eq!(check_name(" phone ").ok().as_deref(), Some("phone"));
        assert!(check_name("thunderbird-laptop_2.0").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("my phone").is_err());
        assert!(check_name(&"x".repeat(65)).is_err());
        assert!(check_name(&"x".repeat(64)).is_ok());
    }
}
