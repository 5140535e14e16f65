//! `portcullis ban ...`: networks refused at the greeting (`421 4.7.0`).
//!
//! The server bans a subnet by itself after repeated authentication
//! failures; these commands show those bans and add or lift one by hand.

use std::time::Duration;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use portcullis_server::config::{Config, format_duration};
use portcullis_store::{Ban, SqliteStore, Store, StoreError, validate};

use crate::common::{
    duration_ms, format_time_ms, format_wait, now_ms, open_store, parse_network,
    parse_positive_duration, plural, print_table, store_error,
};

/// `ban add` without `--reason`.
const DEFAULT_REASON: &str = "manual";

#[derive(Debug, Args)]
pub struct BanArgs {
    #[command(subcommand)]
    command: BanCommand,
}

#[derive(Debug, Subcommand)]
enum BanCommand {
    /// List the active bans (automatic and manual).
    List,
    /// Ban an IP address or network: its connections get 421 at the greeting.
    Add {
        /// An IP address (banned alone) or a CIDR network, e.g. 192.0.2.0/24.
        network: String,
        /// How long the ban lasts, e.g. 30m, 1h, 7d
        /// [default: [security] ban_duration, 1h unless set].
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
        /// Why, shown by `ban list`.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Lift a ban (give the network exactly as `ban list` shows it, or the IP).
    Remove {
        /// An IP address or CIDR network.
        network: String,
    },
}

pub async fn run(args: BanArgs, config: &Config) -> anyhow::Result<()> {
    match args.command {
        BanCommand::List => {
            let store = open_store(config).await?;
            let result = list(&store).await;
            store.close().await;
            result
        }
        BanCommand::Add {
            network,
            duration,
            reason,
        } => {
            let network = ban_network("ban add", &network)?;
            let duration = match duration {
                Some(text) => parse_positive_duration("--for", &text)?,
                None => config.security.bruteforce.ban_duration,
            };
            let reason = reason
                .map(|r| r.split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| DEFAULT_REASON.to_owned());
            let store = open_store(config).await?;
            let result = add(&store, &network, duration, &reason).await;
            store.close().await;
            result
        }
        BanCommand::Remove { network } => {
            let network = ban_network("ban remove", &network)?;
            let store = open_store(config).await?;
            let result = remove(&store, &network).await;
            store.close().await;
            result
        }
    }
}

/// A network as the store keys bans: CIDR with host bits cleared, a single
/// host as its bare address (`192.0.2.7`, `192.0.2.0/24`).
fn ban_network(what: &str, text: &str) -> anyhow::Result<String> {
    let net = parse_network(what, text)?;
    validate::normalize_network(&net.to_string()).map_err(|e| store_error("ban", e))
}

async fn list(store: &SqliteStore) -> anyhow::Result<()> {
    let now = now_ms();
    let mut bans = store
        .list_bans(now)
        .await
        .map_err(|e| store_error("ban", e))?;
    if bans.is_empty() {
        println!("No active bans");
        return Ok(());
    }
    bans.sort_by(|a, b| a.until_ms.cmp(&b.until_ms).then(a.network.cmp(&b.network)));
    let rows: Vec<Vec<String>> = bans
        .iter()
        .map(|ban| {
            vec![
                ban.network.clone(),
                format_time_ms(ban.until_ms),
                format_wait(ban.until_ms.saturating_sub(now)),
                ban.strikes.to_string(),
                format_time_ms(ban.created_ms),
                ban.reason.clone(),
            ]
        })
        .collect();
    println!("{}:", plural(bans.len(), "active ban"));
    print_table(
        &["NETWORK", "UNTIL", "LEFT", "STRIKES", "CREATED", "REASON"],
        &rows,
    );
    Ok(())
}

async fn add(
    store: &SqliteStore,
    network: &str,
    duration: Duration,
    reason: &str,
) -> anyhow::Result<()> {
    let now = now_ms();
    let existing = store
        .list_bans(now)
        .await
        .map_err(|e| store_error("ban", e))?
        .into_iter()
        .find(|ban| ban.network == network);
    let ban = Ban {
        network: network.to_owned(),
        until_ms: now.saturating_add(duration_ms(duration)),
        reason: reason.to_owned(),
        created_ms: existing.as_ref().map_or(now, |b| b.created_ms),
        strikes: existing.as_ref().map_or(1, |b| b.strikes.max(1)),
    };
    store
        .upsert_ban(&ban)
        .await
        .map_err(|e| store_error("ban", e))?;
    let verb = if existing.is_some() {
        "Extended ban of"
    } else {
        "Banned"
    };
    println!(
        "{verb} {network} for {} (until {}): {reason}",
        format_duration(duration),
        format_time_ms(ban.until_ms)
    );
    Ok(())
}

async fn remove(store: &SqliteStore, network: &str) -> anyhow::Result<()> {
    store.remove_ban(network).await.map_err(|e| match e {
        StoreError::NotFound(_) => {
            anyhow!("ban {network} not found (see `portcullis ban list`)")
        }
        other => store_error("ban", other),
    })?;
    println!("Removed ban of {network}");
    Ok(())
}
