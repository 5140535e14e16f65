//! `portcullis domain ...`: the local domains (mail for them is accepted on
//! the smtp listener; accounts live in them).

use clap::{Args, Subcommand};
use portcullis_server::config::Config;
use portcullis_store::{SqliteStore, Store, StoreError, validate};

use crate::common::{open_store, store_error};

#[derive(Debug, Args)]
pub struct DomainArgs {
    #[command(subcommand)]
    command: DomainCommand,
}

#[derive(Debug, Subcommand)]
enum DomainCommand {
    /// Add a local domain.
    Add { domain: String },
    /// List the local domains.
    List,
    /// Remove a local domain (refused while accounts use it).
    Remove { domain: String },
}

pub async fn run(args: DomainArgs, config: &Config) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    let result = dispatch(args.command, &store).await;
    store.close().await;
    result
}

async fn dispatch(command: DomainCommand, store: &SqliteStore) -> anyhow::Result<()> {
    match command {
        DomainCommand::Add { domain } => {
            let domain =
                validate::normalize_domain(&domain).map_err(|e| store_error("domain", e))?;
            store
                .add_domain(&domain)
                .await
                .map_err(|e| store_error("domain", e))?;
            println!("Added local domain {domain}");
        }
        DomainCommand::List => {
            let domains = store
                .list_domains()
                .await
                .map_err(|e| store_error("domain", e))?;
            if domains.is_empty() {
                println!("No local domains");
            }
            for domain in domains {
                println!("{domain}");
            }
        }
        DomainCommand::Remove { domain } => {
            let domain =
                validate::normalize_domain(&domain).map_err(|e| store_error("domain", e))?;
            store.remove_domain(&domain).await.map_err(|e| match e {
                StoreError::Invalid(message) => {
                    anyhow::anyhow!(
                        "cannot remove {domain}: {message}; remove or move its accounts first"
                    )
                }
                other => store_error("domain", other),
            })?;
            println!("Removed local domain {domain}");
        }
    }
    Ok(())
}
