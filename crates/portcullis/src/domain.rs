//! `portcullis domain ...`: the local domains (mail for them is accepted on
//! the smtp listener; accounts live in them) and, since issue 7, their
//! sending setup: DKIM keys, the DNS records to publish, key rotation and
//! `domain check`. Output lives in `domain_dns.rs`.

use clap::{Args, Subcommand, ValueEnum};
use portcullis_server::config::Config;
use portcullis_store::{SqliteStore, Store, StoreError, validate};

use portcullis_server::mail_auth::keys;

use crate::common::{open_store, store_error};
use crate::domain_dns;

#[derive(Debug, Args)]
pub struct DomainArgs {
    #[command(subcommand)]
    command: DomainCommand,
}

#[derive(Debug, Subcommand)]
enum DomainCommand {
    /// Add a local domain, generate its DKIM keys and print the DNS records to publish.
    Add { domain: String },
    /// Print the DNS records a domain should publish.
    Dns {
        domain: String,
        /// `text` (ready to paste) or `zone` (a BIND zone-file fragment).
        #[arg(long, value_enum, default_value = "text")]
        format: DnsFormat,
    },
    /// Show a domain's DKIM key pairs and their states.
    Show { domain: String },
    /// Look up the published records and report what is right, missing or wrong.
    Check { domain: String },
    /// Rotate DKIM keys: rotate, activate, retire.
    Dkim {
        #[command(subcommand)]
        command: DkimCommand,
    },
    /// List the local domains.
    List,
    /// Remove a local domain (refused while accounts use it).
    Remove { domain: String },
}

#[derive(Debug, Subcommand)]
enum DkimCommand {
    /// Generate a new pending key pair (new tag) and print its records.
    Rotate { domain: String },
    /// Sign with the pair TAG from now on; the active pair becomes retired.
    Activate { domain: String, tag: String },
    /// Remove the retired or pending pair TAG (never the active one).
    Retire { domain: String, tag: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DnsFormat {
    Text,
    Zone,
}

pub async fn run(args: DomainArgs, config: &Config) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    let result = dispatch(args.command, &store, config).await;
    store.close().await;
    result
}

async fn dispatch(
    command: DomainCommand,
    store: &SqliteStore,
    config: &Config,
) -> anyhow::Result<()> {
    match command {
        DomainCommand::Add { domain } => {
            let domain =
                validate::normalize_domain(&domain).map_err(|e| store_error("domain", e))?;
            match store.add_domain(&domain).await {
                Ok(()) => println!("Added local domain {domain}"),
                // `account add` creates its domain: give it keys now.
                Err(StoreError::AlreadyExists(_))
                    if store
                        .dkim_keys(&domain)
                        .await
                        .map_err(|e| store_error("domain", e))?
                        .is_empty() =>
                {
                    println!("Local domain {domain} exists; generating its DKIM keys");
                }
                Err(e) => return Err(store_error("domain", e)),
            }
            let tag = new_key_pair(store, &domain).await?;
            println!(
                "Generated DKIM key pair {tag} (Ed25519 + RSA-2048); it signs mail from @{domain}."
            );
            println!();
            domain_dns::print_records(store, config, &domain, DnsFormat::Text).await?;
        }
        DomainCommand::Dns { domain, format } => {
            let domain = known_domain(store, &domain).await?;
            domain_dns::print_records(store, config, &domain, format).await?;
        }
        DomainCommand::Show { domain } => {
            let domain = known_domain(store, &domain).await?;
            domain_dns::print_show(store, &domain).await?;
        }
        DomainCommand::Check { domain } => {
            let domain = known_domain(store, &domain).await?;
            domain_dns::check(store, config, &domain).await?;
        }
        DomainCommand::Dkim { command } => dkim(command, store).await?,
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

/// The normalised domain, which must be a local domain.
async fn known_domain(store: &SqliteStore, domain: &str) -> anyhow::Result<String> {
    let domain = validate::normalize_domain(domain).map_err(|e| store_error("domain", e))?;
    if !store
        .is_local_domain(&domain)
        .await
        .map_err(|e| store_error("domain", e))?
    {
        anyhow::bail!(
            "{domain} is not a local domain (add it with `portcullis domain add {domain}`)"
        );
    }
    Ok(domain)
}

/// Generates and stores a key pair with a fresh dated tag; returns the tag.
async fn new_key_pair(store: &SqliteStore, domain: &str) -> anyhow::Result<String> {
    let taken: Vec<String> = store
        .dkim_keys(domain)
        .await
        .map_err(|e| store_error("domain", e))?
        .into_iter()
        .map(|k| k.tag)
        .collect();
    let tag = keys::new_tag(time::OffsetDateTime::now_utc(), &taken);
    let tag_for_task = tag.clone();
    let pair = tokio::task::spawn_blocking(move || keys::generate_pair(&tag_for_task)).await??;
    store
        .add_dkim_keys(domain, &pair)
        .await
        .map_err(|e| store_error("DKIM key", e))?;
    Ok(tag)
}

async fn dkim(command: DkimCommand, store: &SqliteStore) -> anyhow::Result<()> {
    match command {
        DkimCommand::Rotate { domain } => {
            let domain = known_domain(store, &domain).await?;
            let tag = new_key_pair(store, &domain).await?;
            println!("Generated DKIM key pair {tag} for {domain} (pending).");
            println!(
                "Publish its records, wait for them to propagate (`portcullis domain check {domain}`),"
            );
            println!("then run `portcullis domain dkim activate {domain} {tag}`.");
            println!();
            domain_dns::print_pair(store, &domain, &tag).await?;
        }
        DkimCommand::Activate { domain, tag } => {
            let domain = known_domain(store, &domain).await?;
            store
                .activate_dkim_tag(&domain, &tag)
                .await
                .map_err(|e| store_error("DKIM key pair", e))?;
            println!("Mail from @{domain} is now signed with the pair {tag}.");
            println!(
                "Keep the old pair's records published for a few days (mail in transit), then"
            );
            println!("run `portcullis domain dkim retire {domain} <old tag>` and delete them.");
        }
        DkimCommand::Retire { domain, tag } => {
            let domain = known_domain(store, &domain).await?;
            let names: Vec<String> = store
                .dkim_keys(&domain)
                .await
                .map_err(|e| store_error("domain", e))?
                .into_iter()
                .filter(|k| k.tag == tag)
                .map(|k| format!("{}._domainkey.{domain}", k.selector))
                .collect();
            store
                .remove_dkim_tag(&domain, &tag)
                .await
                .map_err(|e| store_error("DKIM key pair", e))?;
            println!("Removed the DKIM key pair {tag} of {domain}.");
            println!(
                "Its records can now be deleted from DNS: {}",
                names.join(", ")
            );
        }
    }
    Ok(())
}
