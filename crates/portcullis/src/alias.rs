//! `portcullis alias ...`: aliases of local addresses. Mail for an alias
//! (`local@domain`, or `@domain` for the domain's catch-all) is accepted at
//! RCPT time and delivered to its target instead.

use anyhow::anyhow;
use clap::{Args, Subcommand};
use portcullis_server::config::Config;
use portcullis_store::{SqliteStore, Store, StoreError};

use crate::common::{format_time, open_store, print_table, store_error};

#[derive(Debug, Args)]
pub struct AliasArgs {
    #[command(subcommand)]
    command: AliasCommand,
}

#[derive(Debug, Subcommand)]
enum AliasCommand {
    /// Add an alias: mail for ALIAS goes to TARGET.
    Add {
        /// `local@domain`, or `@domain` for a catch-all (every address of the
        /// domain that is neither an account nor its own alias); the domain
        /// must be local.
        alias: String,
        /// The address that receives the mail (local or remote).
        target: String,
    },
    /// Remove an alias (as `alias list` shows it).
    Remove { alias: String },
    /// List the aliases.
    List,
}

pub async fn run(args: AliasArgs, config: &Config) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    let result = dispatch(args.command, &store).await;
    store.close().await;
    result
}

async fn dispatch(command: AliasCommand, store: &SqliteStore) -> anyhow::Result<()> {
    match command {
        AliasCommand::Add { alias, target } => {
            store
                .add_alias(&alias, &target)
                .await
                .map_err(|e| store_error("alias", e))?;
            let (alias, target) = (alias.trim().to_ascii_lowercase(), target.trim());
            match alias.strip_prefix('@') {
                Some(domain) => println!(
                    "Added catch-all alias {alias} -> {target} (mail for any address at \
                     {domain} that is neither an account nor its own alias)"
                ),
                None => {
                    println!("Added alias {alias} -> {target}");
                    if let Ok(Some(account)) = store.account(&alias).await {
                        eprintln!(
                            "warning: {} is an account: its mail goes to its own mailbox, \
                             not to this alias, until the account is removed",
                            account.address
                        );
                    }
                }
            }
        }
        AliasCommand::Remove { alias } => {
            store.remove_alias(&alias).await.map_err(|e| match e {
                StoreError::NotFound(name) => {
                    anyhow!("alias {name} not found (see `portcullis alias list`)")
                }
                other => store_error("alias", other),
            })?;
            println!("Removed alias {}", alias.trim().to_ascii_lowercase());
        }
        AliasCommand::List => {
            let aliases = store
                .list_aliases()
                .await
                .map_err(|e| store_error("alias", e))?;
            if aliases.is_empty() {
                println!("No aliases");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = aliases
                .iter()
                .map(|a| vec![a.alias.clone(), a.target.clone(), format_time(a.created_at)])
                .collect();
            print_table(&["ALIAS", "TARGET", "CREATED"], &rows);
            match aliases.len() {
                1 => println!("1 alias"),
                n => println!("{n} aliases"),
            }
        }
    }
    Ok(())
}
