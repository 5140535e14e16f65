//! `portcullis plan ...`: the sending plans of the configuration.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use portcullis_server::config::{Config, format_size};
use portcullis_store::Store;

use crate::common::{open_store, plural, print_table, store_error, undefined_plan_warning};

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(subcommand)]
    command: PlanCommand,
}

#[derive(Debug, Subcommand)]
enum PlanCommand {
    /// List the plans (shipped and from the config file) with their limits and
    /// how many accounts are on each.
    ///
    /// A "-" for max recipients or max message size means the listener's limit applies.
    List,
}

pub async fn run(args: PlanArgs, config: &Config) -> anyhow::Result<()> {
    match args.command {
        PlanCommand::List => list(config).await,
    }
}

async fn list(config: &Config) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    let accounts = store.list_accounts().await;
    store.close().await;
    let accounts = accounts.map_err(|e| store_error("account", e))?;
    let mut per_plan: BTreeMap<&str, usize> = BTreeMap::new();
    for account in &accounts {
        *per_plan.entry(account.plan.as_str()).or_default() += 1;
    }

    let dash = || "-".to_owned();
    let rows: Vec<Vec<String>> = config
        .plans
        .iter()
        .map(|(name, plan)| {
            let accounts = per_plan.get(name.as_str()).copied().unwrap_or(0);
            let name = if *name == config.default_plan {
                format!("{name} (default)")
            } else {
                name.clone()
            };
            vec![
                name,
                plan.emails_per_hour.to_string(),
                plan.emails_per_day.map_or_else(dash, |d| d.to_string()),
                plan.max_recipients.map_or_else(dash, |r| r.to_string()),
                plan.max_message_size.map_or_else(dash, format_size),
                accounts.to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "PLAN",
            "EMAILS/HOUR",
            "EMAILS/DAY",
            "MAX RECIPIENTS",
            "MAX MESSAGE SIZE",
            "ACCOUNTS",
        ],
        &rows,
    );
    for (plan, count) in per_plan {
        if config.plan(plan).is_none() {
            eprintln!(
                "{} ({} on it)",
                undefined_plan_warning(config, plan),
                plural(count, "account")
            );
        }
    }
    Ok(())
}
