//! `portcullis-load`: command-line shell around the library — `send` (load
//! generator) and `sink` (discarding SMTP server). Errors surface here with
//! anyhow; exit status 0 when every planned message was accepted, 2 when some
//! were not, 1 on usage or setup errors.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

use portcullis_load::conn::{Setup, TlsMode};
use portcullis_load::idle::{self, IdleOptions};
use portcullis_load::send::{self, SendOptions};
use portcullis_load::sink::{Sink, SinkOptions, SinkStats};
use portcullis_load::tls::{self, Trust};

#[derive(Parser)]
#[command(
    name = "portcullis-load",
    version,
    about = "SMTP load generator and sink for benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send mail over C concurrent connections and report throughput and latency.
    Send(SendArgs),
    /// Accept and discard any mail; print a summary on SIGINT/SIGTERM.
    Sink(SinkArgs),
    /// Open N sessions (TLS, EHLO, AUTH if given), hold them idle, then QUIT.
    Idle(IdleArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum TlsArg {
    Implicit,
    Starttls,
    None,
}

#[derive(clap::Args)]
struct TargetArgs {
    /// Server address, host:port.
    #[arg(long, default_value = "127.0.0.1:2465")]
    addr: String,
    #[arg(long, value_enum, default_value = "implicit")]
    tls: TlsArg,
    /// PEM file of the CA (or self-signed certificate) to trust; default: webpki roots.
    #[arg(long, conflicts_with = "insecure")]
    ca: Option<PathBuf>,
    /// Do not verify the server certificate.
    #[arg(long)]
    insecure: bool,
    /// Name to verify the certificate against; default: host part of --addr.
    #[arg(long)]
    server_name: Option<String>,
    /// AUTH PLAIN user; no AUTH without it.
    #[arg(long, env = "PORTCULLIS_LOAD_USER")]
    user: Option<String>,
    #[arg(
        long,
        env = "PORTCULLIS_LOAD_PASSWORD",
        hide_env_values = true,
        requires = "user"
    )]
    password: Option<String>,
    /// Read the password from this file (trailing newline removed).
    #[arg(long, conflicts_with = "password", requires = "user")]
    password_file: Option<PathBuf>,
    #[arg(long, default_value = "portcullis-load.localhost")]
    ehlo_name: String,
    /// Timeout for each reply, connect, handshake and write.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(clap::Args)]
struct SendArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Concurrent connections.
    #[arg(long, short = 'c', default_value_t = 1)]
    connections: usize,
    /// Messages per connection.
    #[arg(long, short = 'n', default_value_t = 10, conflicts_with = "duration")]
    messages: u64,
    /// Messages per session: after K messages, QUIT and open a new
    /// connection (TCP + TLS + AUTH). 0: one session per connection slot.
    #[arg(long, default_value_t = 0)]
    per_conn: u64,
    /// Send for this long instead of a fixed count (e.g. 30s, 2m, 500ms).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Recipients per message.
    #[arg(long, short = 'r', default_value_t = 1)]
    recipients: usize,
    /// Approximate message size in octets (suffix k or m for KiB/MiB).
    #[arg(long, default_value = "10k", value_parser = parse_size)]
    size: usize,
    /// Envelope and header sender; default: --user if it is an address.
    #[arg(long)]
    from: Option<String>,
    /// Domain of the generated recipients rcpt<k>@DOMAIN.
    #[arg(long, default_value = "example.org")]
    to_domain: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct IdleArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Sessions to open and hold.
    #[arg(long, default_value_t = 100)]
    conns: usize,
    /// Session setups in flight at once.
    #[arg(long, default_value_t = 64)]
    parallel: usize,
    /// How long to hold the sessions once all are set up (e.g. 30s).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    hold: Duration,
    /// Write the number of sessions up to this file once setup is done.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct SinkArgs {
    #[arg(long, default_value = "127.0.0.1:2525")]
    listen: String,
    /// Generate a self-signed certificate and offer STARTTLS.
    #[arg(long)]
    tls_self_signed: bool,
    /// With --tls-self-signed: implicit TLS instead of STARTTLS.
    #[arg(long, requires = "tls_self_signed")]
    implicit_tls: bool,
    /// Write the generated certificate here (for `send --ca`).
    #[arg(long, requires = "tls_self_signed")]
    cert_out: Option<PathBuf>,
    #[arg(long, default_value = "sink.portcullis-load.localhost")]
    hostname: String,
    /// Advertised SIZE limit in octets (suffix k or m).
    #[arg(long, default_value = "64m", value_parser = parse_size)]
    max_size: usize,
    /// Answer every Nth MAIL with 451 4.7.1 (to test error accounting); 0 never.
    #[arg(long, default_value_t = 0)]
    reject_mail_every: u64,
    /// Stop (and print the summary) once this many messages were accepted.
    #[arg(long)]
    exit_after: Option<u64>,
    /// Stop after this long in any case (e.g. 10m).
    #[arg(long, value_parser = parse_duration)]
    max_time: Option<Duration>,
    /// Do not advertise PIPELINING.
    #[arg(long)]
    no_pipelining: bool,
    /// Read/write timeout per operation.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
    #[arg(long)]
    json: bool,
}

/// `30s`, `500ms`, `2m`, `1h`, or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration unit in {s:?} (use ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// `10240`, `10k`, `1m` (KiB/MiB).
fn parse_size(s: &str) -> Result<usize, String> {
    let lower = s.trim().to_ascii_lowercase();
    let (num, mult) = match lower.strip_suffix('k') {
        Some(n) => (n, 1024),
        None => match lower.strip_suffix('m') {
            Some(n) => (n, 1024 * 1024),
            None => (lower.as_str(), 1),
        },
    };
    let n: usize = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} too large"))
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Connection setup from the target arguments.
fn setup(args: &TargetArgs) -> anyhow::Result<Setup> {
    let tls_mode = match args.tls {
        TlsArg::Implicit => TlsMode::Implicit,
        TlsArg::Starttls => TlsMode::StartTls,
        TlsArg::None => TlsMode::None,
    };
    let password = match (&args.password, &args.password_file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(f)) => {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            Some(text.trim_end_matches(['\r', '\n']).to_owned())
        }
        (None, None) => None,
    };
    let credentials = match (&args.user, password) {
        (Some(u), Some(p)) => Some((u.clone(), p)),
        (Some(_), None) => {
            bail!("--user needs --password, --password-file or PORTCULLIS_LOAD_PASSWORD")
        }
        _ => None,
    };
    let (tls_config, server_name) = if tls_mode == TlsMode::None {
        (None, None)
    } else {
        let trust = match (&args.ca, args.insecure) {
            (Some(ca), _) => Trust::CaFile(ca.clone()),
            (None, true) => Trust::Insecure,
            (None, false) => Trust::WebPki,
        };
        let name = tls::server_name(args.server_name.as_deref().unwrap_or(&args.addr))?;
        (Some(tls::client_config(&trust)?), Some(name))
    };
    Ok(Setup {
        addr: args.addr.clone(),
        tls: tls_mode,
        tls_config,
        server_name,
        ehlo_name: args.ehlo_name.clone(),
        credentials,
        timeout: args.timeout,
    })
}

/// A flag set on SIGINT/SIGTERM.
fn stop_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    tokio::spawn(async move {
        shutdown_signal().await;
        flag.store(true, Ordering::Relaxed);
    });
    stop
}

async fn run_send(args: SendArgs) -> anyhow::Result<ExitCode> {
    if args.connections == 0 || args.recipients == 0 {
        bail!("--connections and --recipients must be at least 1");
    }
    let from = match (&args.from, &args.target.user) {
        (Some(f), _) => f.clone(),
        (None, Some(u)) if u.contains('@') => u.clone(),
        _ => "portcullis-load@localhost".to_owned(),
    };
    let opts = SendOptions {
        setup: setup(&args.target)?,
        connections: args.connections,
        messages: args.messages,
        per_session: args.per_conn,
        duration: args.duration,
        recipients: args.recipients,
        size: args.size,
        from,
        to_domain: args.to_domain,
    };
    let report = send::run(opts, stop_flag()).await;
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    Ok(if report.all_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

async fn run_idle(args: IdleArgs) -> anyhow::Result<ExitCode> {
    if args.conns == 0 {
        bail!("--conns must be at least 1");
    }
    let opts = IdleOptions {
        setup: setup(&args.target)?,
        sessions: args.conns,
        parallel: args.parallel,
        hold: args.hold,
        ready_file: args.ready_file,
    };
    let report = idle::run(opts, stop_flag()).await;
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    Ok(if report.all_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// Completes when `stats` counts `n` messages, or never.
async fn reached(stats: Arc<SinkStats>, n: Option<u64>) {
    let Some(n) = n else {
        return std::future::pending().await;
    };
    while stats.messages.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn run_sink(args: SinkArgs) -> anyhow::Result<ExitCode> {
    let mut opts = SinkOptions {
        implicit_tls: args.implicit_tls,
        hostname: args.hostname,
        max_size: args.max_size as u64,
        timeout: args.timeout,
        reject_mail_every: args.reject_mail_every,
        pipelining: !args.no_pipelining,
        ..SinkOptions::default()
    };
    if args.tls_self_signed {
        let (config, pem) = tls::self_signed_server_config()?;
        if let Some(path) = &args.cert_out {
            std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
        }
        opts.tls = Some(config);
    }
    let sink = Sink::bind(&args.listen, opts)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    eprintln!("portcullis-load sink listening on {}", sink.local_addr()?);
    let stats = sink.stats();
    let max_time = args.max_time.unwrap_or(Duration::MAX);
    let stop = async move {
        tokio::select! {
            () = shutdown_signal() => {}
            () = reached(stats, args.exit_after) => {}
            () = tokio::time::sleep(max_time) => {}
        }
    };
    let summary = sink.run_until(stop).await;
    if args.json {
        println!("{}", summary.json());
    } else {
        print!("{}", summary.text());
    }
    Ok(ExitCode::SUCCESS)
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Send(args) => run_send(args).await,
        Command::Sink(args) => run_sink(args).await,
        Command::Idle(args) => run_idle(args).await,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("3d").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10240"), Ok(10240));
        assert_eq!(parse_size("10k"), Ok(10240));
        assert_eq!(parse_size("1M"), Ok(1024 * 1024));
        assert!(parse_size("k").is_err());
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "portcullis-load",
            "send",
            "--addr",
            "127.0.0.1:2465",
            "--tls",
            "implicit",
            "--insecure",
            "--user",
            "u@example.com",
            "--password",
            "p",
            "-c",
            "4",
            "-n",
            "5",
            "-r",
            "2",
            "--size",
            "2k",
        ])
        .unwrap();
        assert!(
            matches!(cli.command, Command::Send(ref a) if a.connections == 4 && a.size == 2048)
        );
        assert!(
            Cli::try_parse_from(["portcullis-load", "send", "--ca", "x", "--insecure"]).is_err()
        );
        assert!(
            Cli::try_parse_from(["portcullis-load", "send", "-n", "3", "--duration", "1s"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["portcullis-load", "sink", "--implicit-tls"]).is_err());
    }
}
