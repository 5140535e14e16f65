//! `portcullis serve`: bind the listeners and run until SIGINT or SIGTERM.
//! SIGHUP reloads the TLS certificate and key.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use clap::Args;
use portcullis_server::config::{Config, ListenerRole};
use portcullis_server::{Server, TlsReloader};
use portcullis_store::Store;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};

use crate::common::{database_path, open_store};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the smtp (MX) listener, e.g. 0.0.0.0:25; overrides and enables [listeners.smtp].
    #[arg(long, env = "PORTCULLIS_SMTP", value_name = "ADDR")]
    smtp: Option<SocketAddr>,
    /// Address of the submission (STARTTLS) listener, e.g. 0.0.0.0:587; overrides and enables [listeners.submission].
    #[arg(long, env = "PORTCULLIS_SUBMISSION", value_name = "ADDR")]
    submission: Option<SocketAddr>,
    /// Address of the submissions (implicit TLS) listener, e.g. 0.0.0.0:465; overrides and enables [listeners.submissions].
    #[arg(long, env = "PORTCULLIS_SUBMISSIONS", value_name = "ADDR")]
    submissions: Option<SocketAddr>,
}

pub async fn run(args: ServeArgs, mut config: Config) -> anyhow::Result<()> {
    for (role, address) in [
        (ListenerRole::Smtp, args.smtp),
        (ListenerRole::Submission, args.submission),
        (ListenerRole::Submissions, args.submissions),
    ] {
        if let Some(address) = address {
            let listener = config.listeners.get_mut(role);
            listener.address = address;
            listener.enabled = true;
        }
    }
    config.validate().map_err(|e| {
        anyhow!("invalid configuration with the --smtp/--submission/--submissions overrides: {e}")
    })?;
    let config = Arc::new(config);

    // Register the signal handlers first: a signal arriving during startup is not lost.
    let shutdown = shutdown_signal()?;
    let hangup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;

    let store = open_store(&config).await?;
    info!(
        hostname = %config.hostname,
        data_dir = %config.data_dir.display(),
        database = %database_path(&config.data_dir).display(),
        "starting portcullis {}",
        env!("CARGO_PKG_VERSION")
    );
    let shared_store: Arc<dyn Store> = Arc::new(store.clone());
    let server = Server::bind(Arc::clone(&config), shared_store).await?;
    for listener in config.listeners.iter() {
        if listener.enabled {
            let address = server.local_addr(listener.role).unwrap_or(listener.address);
            info!(listener = listener.role.name(), %address, "listener bound");
        } else {
            info!(listener = listener.role.name(), "listener disabled");
        }
    }

    tokio::spawn(reload_on_hangup(hangup, server.reloader()));
    let result = server.run(shutdown).await;
    store.close().await;
    result?;
    info!("stopped");
    Ok(())
}

/// Completes on the first SIGINT or SIGTERM.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    let mut interrupt =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => info!("SIGINT received, shutting down"),
            _ = terminate.recv() => info!("SIGTERM received, shutting down"),
        }
    })
}

async fn reload_on_hangup(mut hangup: tokio::signal::unix::Signal, reloader: TlsReloader) {
    while hangup.recv().await.is_some() {
        info!("SIGHUP received, reloading the TLS certificate");
        match reloader.reload() {
            Ok(()) => info!("TLS certificate reloaded"),
            Err(e) => error!(error = %e, "TLS certificate reload failed; keeping the previous one"),
        }
    }
}
