//! The DNS resolver of mail authentication and `domain check`: hickory 0.26,
//! pointed at `[delivery] dns_servers` when set (tests use crates/testdns),
//! else the system configuration.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

/// The resolver configuration for `servers` (empty = resolv.conf).
pub fn resolver_config(servers: &[SocketAddr]) -> Result<(ResolverConfig, ResolverOpts), String> {
    let (config, mut opts) = if servers.is_empty() {
        hickory_resolver::system_conf::read_system_conf().map_err(|e| e.to_string())?
    } else {
        let mut config = ResolverConfig::from_name_servers(Vec::new());
        for s in servers {
            let mut ns = NameServerConfig::udp_and_tcp(s.ip());
            for c in &mut ns.connections {
                c.port = s.port();
            }
            config.add_name_server(ns);
        }
        (config, ResolverOpts::default())
    };
    opts.timeout = Duration::from_secs(5);
    opts.attempts = 2;
    opts.ndots = 0;
    Ok((config, opts))
}

/// A plain resolver (for `domain check`).
pub fn resolver(servers: &[SocketAddr]) -> Result<TokioResolver, String> {
    let (config, opts) = resolver_config(servers)?;
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .map_err(|e| e.to_string())
}

/// mail-auth's authenticator on the same configuration.
pub fn authenticator(servers: &[SocketAddr]) -> Result<mail_auth::MessageAuthenticator, String> {
    let (config, opts) = resolver_config(servers)?;
    mail_auth::MessageAuthenticator::new(config, opts).map_err(|e| e.to_string())
}
