//! `portcullis token issue EMAIL [--ttl 1h]`: mints a bearer token from the
//! built-in issuer (issue 6) for AUTH XOAUTH2 / OAUTHBEARER, e.g.
//! `curl --oauth2-bearer "$(portcullis token issue me@example.com)"`.
//! Prints only the token on stdout, so scripts can capture it.

use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use portcullis_server::config::Config;
use portcullis_server::oauth::issue_token;
use portcullis_store::{Store, validate};

use crate::common::{open_store, parse_positive_duration, store_error};

/// Longest token lifetime `token issue` accepts.
const MAX_TTL: Duration = Duration::from_secs(366 * 86_400);

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a token for an account, signed with this server's own key.
    ///
    /// Use it as the bearer token of AUTH XOAUTH2 or OAUTHBEARER. Anyone with
    /// the token can send as the account until it expires: treat it like a
    /// password and keep the lifetime short.
    Issue {
        /// The account, e.g. user@example.com.
        email: String,
        /// How long the token is valid, e.g. 15m, 1h, 30d.
        #[arg(long, value_name = "DURATION", default_value = "1h")]
        ttl: String,
    },
}

pub async fn run(args: TokenArgs, config: &Config) -> anyhow::Result<()> {
    let TokenCommand::Issue { email, ttl } = args.command;
    let ttl = parse_positive_duration("--ttl", &ttl)?;
    if ttl > MAX_TTL {
        bail!("--ttl: at most 366d");
    }
    if !config.oauth.builtin_issuer {
        bail!("the built-in token issuer is off ([oauth] builtin_issuer = false)");
    }
    let address = validate::normalize_address(&email).map_err(|e| anyhow!("{email:?}: {e}"))?;
    let store = open_store(config).await?;
    let account = store.account(&address).await;
    store.close().await;
    if account.map_err(|e| store_error("account", e))?.is_none() {
        bail!("no account {address} (create it with `portcullis account add {address}`)");
    }
    let token = issue_token(&config.data_dir, &config.hostname, &address, ttl)?;
    println!("{token}");
    Ok(())
}
