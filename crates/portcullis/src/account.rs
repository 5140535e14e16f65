//! `portcullis account ...`: create, list, inspect, change and delete accounts.

use std::io::{BufRead, IsTerminal, Read};

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use portcullis_server::config::Config;
use portcullis_store::password::hash_password;
use portcullis_store::{Account, AccountStatus, SqliteStore, Store, validate};
use zeroize::Zeroizing;

use crate::account_security::{self, TwoFactorCommand, check_policy, generate_policy_password};
use crate::common::{
    format_time, known_plan, open_store, print_table, store_error, undefined_plan_warning,
};
use crate::usage;

/// Longest password accepted from stdin, in characters.
const MAX_PASSWORD_CHARS: usize = 1024;

#[derive(Debug, Args)]
pub struct AccountArgs {
    #[command(subcommand)]
    command: AccountCommand,
}

#[derive(Debug, Subcommand)]
enum AccountCommand {
    /// Create an account; its domain becomes a local domain if it is not one yet.
    ///
    /// Without --password-stdin a password is generated and printed once.
    Add {
        /// Login and sending address, e.g. user@example.com.
        email: String,
        /// Plan (sending limits) for the account, from `portcullis plan list`
        /// [default: the config's default_plan].
        #[arg(long, value_name = "NAME")]
        plan: Option<String>,
        /// Read the password from the first line of stdin instead of generating one.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List all accounts.
    List,
    /// Show one account.
    Show { email: String },
    /// Move an account to another plan; applies at once, also to open sessions.
    SetPlan {
        email: String,
        /// A plan from `portcullis plan list`.
        plan: String,
    },
    /// Emails sent in the last hour and 24 hours against the plan's limits,
    /// and when the next slot frees if a limit is reached.
    Usage { email: String },
    /// Set a new password, read from the first line of stdin.
    Passwd {
        email: String,
        /// Read the password from the first line of stdin (required).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Refuse logins for an account (its data is kept).
    Disable { email: String },
    /// Allow logins for a disabled account again.
    Enable { email: String },
    /// Delete an account (with its app passwords and allowed senders).
    Remove { email: String },
    /// Two-factor authentication (TOTP) for an account.
    #[command(name = "2fa", subcommand)]
    TwoFactor(TwoFactorCommand),
    /// Restrict logins to IP networks (IPv4 and IPv6); logins from elsewhere
    /// get 535 5.7.8 (reason ip_not_allowed).
    ///
    /// Networks given are added to the list (a bare IP is a /32 or /128);
    /// --remove takes them out, --clear empties the list (logins from any IP,
    /// the default).
    AllowIp {
        email: String,
        /// IP addresses or CIDR networks, e.g. 192.0.2.0/24 2001:db8::/48.
        #[arg(value_name = "CIDR", required_unless_present = "clear")]
        cidrs: Vec<String>,
        /// Remove these networks from the list instead of adding them.
        #[arg(long, conflicts_with = "clear")]
        remove: bool,
        /// Empty the list: logins from any IP.
        #[arg(long, conflicts_with = "cidrs")]
        clear: bool,
    },
    /// Let an account use another address, or any address of a domain
    /// (@example.org), as MAIL FROM and header From:. Its own address and
    /// aliases are always allowed.
    AllowSender {
        email: String,
        /// An address (bob@example.org) or a whole domain (@example.org).
        #[arg(value_name = "ADDRESS|@DOMAIN")]
        sender: String,
        /// Take the grant back instead.
        #[arg(long)]
        remove: bool,
    },
}

pub async fn run(args: AccountArgs, config: &Config) -> anyhow::Result<()> {
    if let AccountCommand::Passwd {
        password_stdin: false,
        email,
    } = &args.command
    {
        bail!(
            "account passwd {email}: --password-stdin is required (passwords are never taken as arguments); \
             e.g. `printf '%s\\n' \"$PASSWORD\" | portcullis account passwd {email} --password-stdin`"
        );
    }
    let store = open_store(config).await?;
    let result = dispatch(args.command, &store, config).await;
    store.close().await;
    result
}

async fn dispatch(
    command: AccountCommand,
    store: &SqliteStore,
    config: &Config,
) -> anyhow::Result<()> {
    match command {
        AccountCommand::Add {
            email,
            plan,
            password_stdin,
        } => {
            let plan = plan.as_deref().unwrap_or(&config.default_plan);
            let (plan, _) = known_plan(config, plan)?;
            add(store, config, &email, plan, password_stdin).await
        }
        AccountCommand::List => list(store).await,
        AccountCommand::Show { email } => show(store, config, &email).await,
        AccountCommand::SetPlan { email, plan } => set_plan(store, config, &email, &plan).await,
        AccountCommand::Usage { email } => usage::account_usage(store, config, &email).await,
        AccountCommand::Passwd { email, .. } => passwd(store, config, &email).await,
        AccountCommand::Disable { email } => {
            set_status(store, &email, AccountStatus::Disabled).await
        }
        AccountCommand::Enable { email } => set_status(store, &email, AccountStatus::Active).await,
        AccountCommand::Remove { email } => {
            let address = normalize(&email)?;
            store
                .remove_account(&address)
                .await
                .map_err(|e| store_error("account", e))?;
            println!("Removed account {address}");
            Ok(())
        }
        AccountCommand::TwoFactor(command) => account_security::two_factor(store, command).await,
        AccountCommand::AllowIp {
            email,
            cidrs,
            remove,
            clear,
        } => account_security::allow_ip(store, &email, &cidrs, remove, clear).await,
        AccountCommand::AllowSender {
            email,
            sender,
            remove,
        } => account_security::allow_sender(store, &email, &sender, remove).await,
    }
}

async fn add(
    store: &SqliteStore,
    config: &Config,
    email: &str,
    plan: &str,
    password_stdin: bool,
) -> anyhow::Result<()> {
    // Check everything cheap before reading stdin or spending time on hashing.
    let (address, domain) =
        validate::normalize_account_address(email).map_err(|e| store_error("account", e))?;
    if store
        .account(&address)
        .await
        .map_err(|e| store_error("account", e))?
        .is_some()
    {
        bail!("account {address} already exists");
    }
    let domain_was_local = store
        .is_local_domain(&domain)
        .await
        .map_err(|e| store_error("domain", e))?;

    let (password, generated) = if password_stdin {
        let password = read_password_stdin()?;
        check_policy(&address, &password, config)?;
        (password, false)
    } else {
        (generate_policy_password(&address, config)?, true)
    };
    let hash = hash(&password).await?;
    let account = store
        .add_account(&address, &hash, plan)
        .await
        .map_err(|e| store_error("account", e))?;
    portcullis_server::security::saslkeys::set_main_password_keys(
        store,
        &account.address,
        &password,
    )
    .await
    .map_err(|e| store_error("account", e))?;

    if !domain_was_local {
        println!("Added {domain} as a local domain");
    }
    println!(
        "Created account {} (plan {})",
        account.address, account.plan
    );
    if generated {
        println!("Password for {}: {}", account.address, password.as_str());
        println!("This password will not be shown again: store it now.");
    }
    Ok(())
}

async fn list(store: &SqliteStore) -> anyhow::Result<()> {
    let accounts = store
        .list_accounts()
        .await
        .map_err(|e| store_error("account", e))?;
    if accounts.is_empty() {
        println!("No accounts");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = accounts
        .iter()
        .map(|a| {
            vec![
                a.address.clone(),
                a.status.as_str().to_owned(),
                a.plan.clone(),
                format_time(a.created_at),
            ]
        })
        .collect();
    print_table(&["ADDRESS", "STATUS", "PLAN", "CREATED"], &rows);
    Ok(())
}

async fn show(store: &SqliteStore, config: &Config, email: &str) -> anyhow::Result<()> {
    let account = find(store, email).await?;
    println!("address: {}", account.address);
    println!("status:  {}", account.status.as_str());
    match config.plan(&account.plan) {
        Some(plan) => println!(
            "plan:    {} ({} emails/hour)",
            account.plan, plan.emails_per_hour
        ),
        None => println!(
            "plan:    {} (not defined in the configuration)",
            account.plan
        ),
    }
    println!("created: {}", format_time(account.created_at));
    println!("updated: {}", format_time(account.updated_at));
    for line in account_security::show_lines(store, &account.address).await? {
        println!("{line}");
    }
    // Issue 6: passwords set before SCRAM keys existed need setting again.
    let scram = store
        .scram_keys(&account.address)
        .await
        .map_err(|e| store_error("account", e))?;
    println!(
        "scram:   {}",
        if scram.iter().any(|k| k.app_password.is_none()) {
            "password ready for SCRAM-SHA-256"
        } else {
            "password has no SCRAM keys yet (set it again with `account passwd`)"
        }
    );
    if config.plan(&account.plan).is_none() {
        eprintln!("{}", undefined_plan_warning(config, &account.plan));
    }
    Ok(())
}

async fn set_plan(
    store: &SqliteStore,
    config: &Config,
    email: &str,
    plan: &str,
) -> anyhow::Result<()> {
    let address = normalize(email)?;
    let (name, plan) = known_plan(config, plan)?;
    store
        .set_account_plan(&address, name)
        .await
        .map_err(|e| store_error("account", e))?;
    println!(
        "Plan of {address} is now {name} ({} emails/hour)",
        plan.emails_per_hour
    );
    Ok(())
}

async fn passwd(store: &SqliteStore, config: &Config, email: &str) -> anyhow::Result<()> {
    let account = find(store, email).await?;
    let password = read_password_stdin()?;
    check_policy(&account.address, &password, config)?;
    let hash = hash(&password).await?;
    store
        .set_password_hash(&account.address, &hash)
        .await
        .map_err(|e| store_error("account", e))?;
    portcullis_server::security::saslkeys::set_main_password_keys(
        store,
        &account.address,
        &password,
    )
    .await
    .map_err(|e| store_error("account", e))?;
    println!("Password changed for {}", account.address);
    Ok(())
}

async fn set_status(store: &SqliteStore, email: &str, status: AccountStatus) -> anyhow::Result<()> {
    let address = normalize(email)?;
    store
        .set_account_status(&address, status)
        .await
        .map_err(|e| store_error("account", e))?;
    match status {
        AccountStatus::Active => println!("Enabled account {address}"),
        AccountStatus::Disabled => println!("Disabled account {address}"),
    }
    Ok(())
}

/// The account, or an error naming the address.
async fn find(store: &SqliteStore, email: &str) -> anyhow::Result<Account> {
    let address = normalize(email)?;
    store
        .account(&address)
        .await
        .map_err(|e| store_error("account", e))?
        .ok_or_else(|| anyhow!("account {address} not found"))
}

fn normalize(email: &str) -> anyhow::Result<String> {
    validate::normalize_address(email).map_err(|e| store_error("account", e))
}

/// Argon2id is deliberately slow: keep it off the async worker threads.
async fn hash(password: &Zeroizing<String>) -> anyhow::Result<String> {
    let password = password.clone();
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .context("password hashing task failed")?
        .map_err(|e| anyhow!("cannot hash password: {e}"))
}

/// One line from stdin without its line ending (the password policy is
/// checked by the caller). Never echoed or logged.
fn read_password_stdin() -> anyhow::Result<Zeroizing<String>> {
    if std::io::stdin().is_terminal() {
        eprintln!("Reading the password from stdin (it will be visible); end with Enter:");
    }
    let mut raw = Zeroizing::new(Vec::with_capacity(MAX_PASSWORD_CHARS * 4 + 2));
    let limit = (MAX_PASSWORD_CHARS * 4 + 2) as u64;
    std::io::stdin()
        .lock()
        .take(limit)
        .read_until(b'\n', &mut raw)
        .context("--password-stdin: cannot read stdin")?;
    if raw.last() == Some(&b'\n') {
        raw.pop();
        if raw.last() == Some(&b'\r') {
            raw.pop();
        }
    } else if raw.len() as u64 >= limit {
        bail!("--password-stdin: password is too long (at most {MAX_PASSWORD_CHARS} characters)");
    }
    let password = Zeroizing::new(
        std::str::from_utf8(&raw)
            .map_err(|_| anyhow!("--password-stdin: password is not valid UTF-8"))?
            .to_owned(),
    );
    let chars = password.chars().count();
    if chars == 0 {
        bail!("--password-stdin: no password given (stdin was empty)");
    }
    if chars > MAX_PASSWORD_CHARS {
        bail!("--password-stdin: password is too long (at most {MAX_PASSWORD_CHARS} characters)");
    }
    Ok(password)
}
