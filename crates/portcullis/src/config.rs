//! `portcullis config ...`: validate or print the resolved configuration.
//! Loading and validation already happened in `main`, with the same rules
//! `serve` uses, so reaching these functions means the configuration is valid.

use clap::{Args, Subcommand};
use portcullis_server::config::Config;

use crate::common::GlobalArgs;

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Load and validate the configuration; exit 1 naming the key at fault if it is invalid.
    Check,
    /// Print the resolved configuration (defaults and overrides applied, secrets redacted) as TOML.
    Show,
}

pub fn run(args: ConfigArgs, global: &GlobalArgs, config: &Config) -> anyhow::Result<()> {
    match args.command {
        ConfigCommand::Check => match &global.config {
            Some(path) => println!("configuration OK: {}", path.display()),
            None => println!("configuration OK: built-in defaults"),
        },
        ConfigCommand::Show => print!("{}", config.to_toml_redacted()),
    }
    Ok(())
}
