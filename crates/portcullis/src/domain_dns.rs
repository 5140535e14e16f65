//! Output of `portcullis domain add/dns/show/check` and `domain dkim rotate`:
//! the DNS records to publish (text or BIND zone), the key pairs, and the
//! check report. The records and checks themselves are
//! `portcullis_server::mail_auth`; only public keys are ever printed.

use portcullis_server::config::Config;
use portcullis_server::mail_auth::check;
use portcullis_server::mail_auth::records::{self, Record};
use portcullis_server::mail_auth::resolver;
use portcullis_store::{DkimKey, SqliteStore, Store};

use crate::common::{format_time, print_table, store_error};
use crate::domain::DnsFormat;

async fn keys_of(store: &SqliteStore, domain: &str) -> anyhow::Result<Vec<DkimKey>> {
    store
        .dkim_keys(domain)
        .await
        .map_err(|e| store_error("domain", e))
}

fn print_text(records: &[Record]) {
    for record in records {
        println!("; {}", record.label());
        println!("{}", record.line());
        println!();
    }
}

/// Every record of `domain`, as text (with advice) or a zone fragment.
pub async fn print_records(
    store: &SqliteStore,
    config: &Config,
    domain: &str,
    format: DnsFormat,
) -> anyhow::Result<()> {
    let keys = keys_of(store, domain).await?;
    let records = records::domain_records(config, domain, &keys);
    match format {
        DnsFormat::Zone => print!("{}", records::zone_fragment(domain, &records)),
        DnsFormat::Text => {
            println!("Publish these DNS records for {domain}:");
            println!();
            print_text(&records);
            if keys.is_empty() {
                println!("(No DKIM keys: `portcullis domain add {domain}` generates them.)");
            }
            println!("DMARC starts at p=none (monitoring only). Read the reports sent to");
            println!("postmaster@{domain}; once all your mail passes SPF or DKIM, move to");
            println!("p=quarantine, then p=reject.");
            if config.domains.public_ips.is_empty() {
                println!(
                    "SPF names {} by its address records; set [domains] public_ips to list",
                    config.hostname
                );
                println!("the sending addresses instead.");
            }
            println!("Check what is published with `portcullis domain check {domain}`.");
        }
    }
    Ok(())
}

/// The DKIM records of one pair.
pub async fn print_pair(store: &SqliteStore, domain: &str, tag: &str) -> anyhow::Result<()> {
    let keys: Vec<DkimKey> = keys_of(store, domain)
        .await?
        .into_iter()
        .filter(|k| k.tag == tag)
        .collect();
    let records: Vec<Record> = keys
        .iter()
        .map(|k| records::dkim_record(domain, k))
        .collect();
    print_text(&records);
    Ok(())
}

/// The key pairs of `domain` and their states.
pub async fn print_show(store: &SqliteStore, domain: &str) -> anyhow::Result<()> {
    let keys = keys_of(store, domain).await?;
    println!("Domain {domain}");
    if keys.is_empty() {
        println!(
            "No DKIM keys (mail from @{domain} is not signed); `portcullis domain add {domain}` generates them."
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.tag.clone(),
                k.selector.clone(),
                k.algorithm.as_str().to_owned(),
                k.state.as_str().to_owned(),
                format_time(k.created_at),
            ]
        })
        .collect();
    print_table(&["TAG", "SELECTOR", "ALGORITHM", "STATE", "CREATED"], &rows);
    Ok(())
}

/// `domain check`: one line per record; an error (exit 1) when any is
/// missing, wrong or could not be looked up.
pub async fn check(store: &SqliteStore, config: &Config, domain: &str) -> anyhow::Result<()> {
    let keys = keys_of(store, domain).await?;
    let resolver = resolver::resolver(&config.delivery.dns_servers)
        .map_err(|e| anyhow::anyhow!("cannot set up the DNS resolver: {e}"))?;
    let findings = check::check_domain(&resolver, config, domain, &keys).await;
    for f in &findings {
        println!("{:<9} {}: {}", f.status.word(), f.what, f.detail);
        if let Some(publish) = &f.publish {
            println!("          publish: {publish}");
        }
    }
    let problems = findings.iter().filter(|f| f.status.is_problem()).count();
    if problems > 0 {
        anyhow::bail!("{problems} DNS record(s) of {domain} need attention");
    }
    println!("All records of {domain} are correct.");
    Ok(())
}
