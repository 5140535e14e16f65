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
        ConfigCommand::Check => {
            match &global.config {
                Some(path) => println!("configuration OK: {}", path.display()),
                None => println!("configuration OK: built-in defaults"),
            }
            // Issue 6: CRAM-MD5 needs a password-equivalent on the server.
            for l in config.listeners.iter().filter(|l| l.enabled) {
                if l.mechanisms.contains(&portcullis_proto::Mechanism::CramMd5) {
                    eprintln!(
                        "warning: listeners.{}.mechanisms enables CRAM-MD5: a legacy mechanism whose app password secrets are stored encrypted (recoverable with the secret key); prefer SCRAM-SHA-256",
                        l.role.name()
                    );
                }
            }
        }
        ConfigCommand::Show => print!("{}", config.to_toml_redacted()),
    }
    Ok(())
}
