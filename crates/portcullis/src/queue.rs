//! `portcullis queue ...`: what is waiting for delivery.

use clap::{Args, Subcommand};
use portcullis_server::config::Config;
use portcullis_store::Store;

use crate::common::{format_time, open_store, plural, print_table, store_error};

#[derive(Debug, Args)]
pub struct QueueArgs {
    #[command(subcommand)]
    command: QueueCommand,
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// List queued messages, oldest first.
    List,
}

pub async fn run(args: QueueArgs, config: &Config) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    let result = match args.command {
        QueueCommand::List => store
            .list_queue()
            .await
            .map_err(|e| store_error("message", e)),
    };
    store.close().await;
    let messages = result?;
    if messages.is_empty() {
        println!("Queue is empty");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = messages
        .iter()
        .map(|m| {
            vec![
                m.id.clone(),
                format_time(m.received_at),
                m.size.to_string(),
                if m.sender.is_empty() {
                    "<>".to_owned()
                } else {
                    m.sender.clone()
                },
                m.recipients.join(","),
                m.auth_user.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "RECEIVED",
            "SIZE",
            "SENDER",
            "RECIPIENTS",
            "AUTH USER",
        ],
        &rows,
    );
    println!("{} queued", plural(messages.len(), "message"));
    Ok(())
}
