//! `portcullis`: the one binary. Parses the command line, loads the
//! configuration, starts logging and hands over to one module per subcommand.

mod account;
mod account_security;
mod alias;
mod app_password;
mod audit;
mod ban;
mod check;
mod common;
mod config;
mod domain;
mod domain_dns;
mod logging;
mod plan;
mod queue;
mod serve;
mod token;
mod usage;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use common::GlobalArgs;

/// Authenticated SMTP submission and relay server.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the SMTP server until SIGINT or SIGTERM (SIGHUP reloads the TLS certificate).
    Serve(serve::ServeArgs),
    /// Manage accounts (logins that may submit mail).
    Account(account::AccountArgs),
    /// Manage app passwords (per-client passwords, also for 2FA accounts).
    AppPassword(app_password::AppPasswordArgs),
    /// Show, add or lift bans of client networks (refused at the greeting).
    Ban(ban::BanArgs),
    /// Show AUTH attempts, explain a user's failures, summarise anomalies.
    Audit(audit::AuditArgs),
    /// Manage local domains (mail for them is accepted on the smtp listener).
    Domain(domain::DomainArgs),
    /// Manage aliases of local addresses, including per-domain catch-alls.
    Alias(alias::AliasArgs),
    /// Show the sending plans (limits per account).
    Plan(plan::PlanArgs),
    /// Report sending usage across accounts.
    Usage(usage::UsageArgs),
    /// Inspect the delivery queue: list, show, retry, delete or bounce messages.
    Queue(queue::QueueArgs),
    /// Validate or print the configuration.
    Config(config::ConfigArgs),
    /// Test an SMTP server (ours or any) and explain every failure in plain words.
    Check(check::CheckArgs),
    /// Mint bearer tokens for AUTH XOAUTH2 / OAUTHBEARER (built-in issuer).
    Token(token::TokenArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    // Usage errors exit here with clap's own message and code 2.
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let text = format!("{error:#}");
            // One line, whatever the error text contains.
            let line: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!("error: {}", line.join(" "));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.global.load_config()?;
    logging::init(&config.log)?;
    match cli.command {
        Command::Serve(args) => serve::run(args, config).await,
        Command::Account(args) => account::run(args, &config).await,
        Command::AppPassword(args) => app_password::run(args, &config).await,
        Command::Ban(args) => ban::run(args, &config).await,
        Command::Audit(args) => audit::run(args, &config).await,
        Command::Domain(args) => domain::run(args, &config).await,
        Command::Alias(args) => alias::run(args, &config).await,
        Command::Plan(args) => plan::run(args, &config).await,
        Command::Usage(args) => usage::run(args, &config).await,
        Command::Queue(args) => queue::run(args, &config).await,
        Command::Config(args) => config::run(args, &cli.global, &config),
        Command::Check(args) => check::run(args).await,
        Command::Token(args) => token::run(args, &config).await,
    }
}
