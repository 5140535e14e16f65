//! `portcullis check HOST`: tests any SMTP submission server step by step
//! (DNS, TCP, greeting, EHLO, TLS, AUTH, MAIL/RCPT/DATA) and explains every
//! failure in plain words. This file owns the arguments and runs the
//! attempts; the steps are in `attempt.rs`, the advice in `diagnose.rs`.
//!
//! Must not: print, log or store the password (see `sasl::Secret`), read
//! without a bound, or wait on the network without a timeout.

mod attempt;
mod diagnose;
mod dns;
mod output;
mod probe;
mod reply;
mod sasl;
mod smtp;
mod tls;

use std::io::{IsTerminal, Read};
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use clap::ArgGroup;
use clap::error::ErrorKind;
use tokio::time::Instant;

use attempt::{Plan, Runner};
use diagnose::{Ctx, diagnose};
use output::{Observer, Quiet, Text};
use probe::{Attempt, Failure, Finding, Recommendation, Report, Status, Step, StepKind, TlsUsed};
use sasl::Secret;

pub use probe::TlsMode;

/// Ports tried by `--port auto`, best first.
const AUTO_PORTS: [u16; 4] = [587, 465, 25, 2525];
/// Longest password read from stdin or the environment.
const MAX_PASSWORD: usize = 1024;

const EXIT_HELP: &str = "\
Exit status:
  0  every requested step passed (with several ports: at least one port passed every step)
  1  the check failed: the last lines say what happened, the likely causes and what to do
  2  usage error: a bad or missing argument, or no password where one was asked for

The password is never printed, logged or put in the JSON output.";

/// Test an SMTP server and explain every failure in plain words.
#[derive(Debug, clap::Args)]
#[command(
    after_help = EXIT_HELP,
    group(ArgGroup::new("password").args(["password_stdin", "password_env"]).multiple(false)),
)]
pub struct CheckArgs {
    /// Server host name or IP address (e.g. smtp.example.com).
    #[arg(value_parser = parse_host)]
    host: String,
    /// Port to test, or `auto` to try 587, 465, 25 and 2525 and recommend the best.
    #[arg(long, value_name = "PORT|auto", value_parser = parse_port_arg, conflicts_with = "ports")]
    port: Option<PortArg>,
    /// Ports to try in order, like `auto` with your own list: --ports 587,465.
    #[arg(long, value_name = "PORT,...", value_delimiter = ',', value_parser = parse_port)]
    ports: Vec<u16>,
    /// TLS mode.
    #[arg(long, value_enum, default_value_t = TlsMode::Auto)]
    tls: TlsMode,
    /// Username to test AUTH with (usually the full email address).
    #[arg(long, value_parser = parse_user, requires = "password")]
    user: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long, requires = "user")]
    password_stdin: bool,
    /// Read the password from environment variable VAR.
    #[arg(long, value_name = "VAR", requires = "user")]
    password_env: Option<String>,
    /// SASL mechanism to use (default: PLAIN if offered, else LOGIN).
    #[arg(long, value_enum, requires = "user")]
    mech: Option<sasl::Mech>,
    /// Envelope sender to test with MAIL FROM.
    #[arg(long, value_name = "ADDRESS", value_parser = parse_address)]
    from: Option<String>,
    /// Recipient to test with RCPT TO (needs --from).
    #[arg(long, value_name = "ADDRESS", value_parser = parse_address, requires = "from")]
    to: Option<String>,
    /// Also send a short test message (needs --from and --to).
    #[arg(long, requires_all = ["from", "to"])]
    send: bool,
    /// Limit for each network step (connect, each reply, TLS handshake).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_timeout)]
    timeout: Duration,
    /// Name to send with EHLO.
    #[arg(long, value_name = "NAME", default_value = "localhost", value_parser = parse_host)]
    ehlo: String,
    /// Print one JSON document (steps, findings, diagnosis, ok) instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy)]
enum PortArg {
    Auto,
    One(u16),
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{text:?} is not a port number (1-65535)")),
        Ok(port) => Ok(port),
    }
}

fn parse_port_arg(text: &str) -> Result<PortArg, String> {
    if text.eq_ignore_ascii_case("auto") {
        return Ok(PortArg::Auto);
    }
    parse_port(text)
        .map(PortArg::One)
        .map_err(|e| format!("{e}, or `auto`"))
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    match portcullis_server::config::parse_duration(text) {
        Some(d) if d.is_zero() => Err("must be longer than 0s".to_owned()),
        Some(d) if d > Duration::from_secs(600) => Err("at most 10m".to_owned()),
        Some(d) => Ok(d),
        None => Err(format!(
            "{text:?} is not a duration (use e.g. 10s, 500ms, 1m)"
        )),
    }
}

fn printable(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| !c.is_control() && !c.is_whitespace())
}

fn parse_host(text: &str) -> Result<String, String> {
    if !printable(text) || text.len() > 255 {
        return Err(format!("{text:?} is not a host name or IP address"));
    }
    Ok(text.to_owned())
}

fn parse_user(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 512 || text.chars().any(char::is_control) {
        return Err("must be non-empty, without control characters".to_owned());
    }
    Ok(text.to_owned())
}

fn parse_address(text: &str) -> Result<String, String> {
    let ok = printable(text)
        && text.len() <= 320
        && !text.contains(['<', '>'])
        && text
            .rsplit_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty());
    if !ok {
        return Err(format!("{text:?} is not an email address (local@domain)"));
    }
    Ok(text.to_owned())
}

/// A usage problem found after parsing: clap's format and exit status 2.
fn usage_error(message: String) -> ! {
    clap::Error::raw(ErrorKind::ValueValidation, format!("{message}\n")).exit()
}

fn read_password(args: &CheckArgs) -> Option<String> {
    let user = args.user.as_ref()?;
    let password = if args.password_stdin && std::io::stdin().is_terminal() {
        // Typed by a person: prompt on stderr and do not echo.
        let term = console::Term::stderr();
        let _ = term.write_str(&format!("Password for {user}: "));
        match term.read_secure_line() {
            Ok(line) => line,
            Err(e) => usage_error(format!("--password-stdin: cannot read the terminal: {e}")),
        }
    } else if args.password_stdin {
        let mut raw = Vec::new();
        let limit = u64::try_from(MAX_PASSWORD + 2).unwrap_or(u64::MAX);
        if let Err(e) = std::io::stdin().take(limit).read_to_end(&mut raw) {
            usage_error(format!("--password-stdin: cannot read standard input: {e}"));
        }
        let Ok(text) = String::from_utf8(raw) else {
            usage_error("--password-stdin: the password is not valid UTF-8".to_owned());
        };
        text.lines().next().unwrap_or("").to_owned()
    } else if let Some(var) = &args.password_env {
        match std::env::var(var) {
            Ok(value) => value,
            Err(std::env::VarError::NotPresent) => usage_error(format!(
                "--password-env: environment variable {var} is not set"
            )),
            Err(std::env::VarError::NotUnicode(_)) => usage_error(format!(
                "--password-env: environment variable {var} is not valid UTF-8"
            )),
        }
    } else {
        usage_error(format!(
            "--user {user} needs --password-stdin or --password-env VAR"
        ));
    };
    if password.is_empty() {
        usage_error("the password is empty (--password-stdin or --password-env)".to_owned());
    }
    if password.len() > MAX_PASSWORD {
        usage_error(format!("the password is longer than {MAX_PASSWORD} bytes"));
    }
    Some(password)
}

pub async fn run(args: CheckArgs) -> anyhow::Result<()> {
    let password = read_password(&args);
    let secret = match (password, &args.user) {
        (Some(p), Some(user)) => Some(Arc::new(Secret::new(p, user))),
        _ => None,
    };
    let ports: Vec<u16> = match (args.port, args.ports.is_empty()) {
        (Some(PortArg::One(port)), _) => vec![port],
        (_, false) => args.ports.clone(),
        _ => AUTO_PORTS.to_vec(),
    };
    let mut plan = Plan {
        host: args.host.clone(),
        addresses: Vec::new(),
        tls: args.tls,
        user: args.user.clone(),
        password: secret,
        mech: args.mech,
        from: args.from.clone(),
        to: args.to.clone(),
        send: args.send,
        timeout: args.timeout,
        ehlo: args.ehlo.clone(),
    };
    let mut text = (!args.json).then(|| Text::new(plan.password.clone()));
    if let Some(t) = &mut text {
        t.header(&plan.host);
    }
    let (dns_step, resolved) = resolve(&plan.host, plan.timeout).await;
    if let Some(t) = &mut text {
        t.dns(&dns_step);
    }
    let report = match resolved {
        Err(failure) => dns_report(&plan, dns_step, failure, ports[0]),
        Ok((addresses, findings)) => {
            plan.addresses = addresses;
            if let Some(t) = &mut text {
                for f in &findings {
                    t.finding(f);
                }
            }
            let mut quiet = Quiet;
            let mut attempts = Vec::new();
            for port in &ports {
                let obs: &mut dyn Observer = match &mut text {
                    Some(t) => t,
                    None => &mut quiet,
                };
                attempts.push(Runner::new(&plan, obs, *port).run().await);
            }
            build_report(&plan, dns_step, attempts)
        }
    };
    match &mut text {
        Some(t) => t.summary(&report),
        None => println!("{}", output::json(&report, plan.password.as_deref())),
    }
    if report.ok {
        return Ok(());
    }
    let cause = report.diagnosis.as_ref().map_or("", |d| d.cause);
    Err(anyhow!("check of {} failed ({cause})", plan.host))
}

type Resolved = Result<(Vec<std::net::IpAddr>, Vec<Finding>), Failure>;

async fn resolve(host: &str, limit: Duration) -> (Step, Resolved) {
    let start = Instant::now();
    let step = |status, summary: String, details: Vec<String>| Step {
        step: StepKind::Dns,
        status,
        summary,
        details,
        reply: None,
        elapsed_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    if let Some(ip) = dns::literal(host) {
        let s = step(
            Status::Pass,
            format!("{ip} is an IP address: no lookup"),
            Vec::new(),
        );
        return (s, Ok((vec![ip], Vec::new())));
    }
    match dns::resolve(host, limit).await {
        Ok(found) => {
            let list: Vec<String> = found.addresses.iter().map(ToString::to_string).collect();
            let mut findings = Vec::new();
            let mut details = Vec::new();
            if !found.mx.is_empty() {
                details.push(format!("MX: {}", found.mx.join(", ")));
                findings.push(Finding {
                    severity: probe::Severity::Info,
                    text: format!(
                        "{host} is a mail domain (MX {}); MX hosts receive mail on port 25, submission is often on another host such as smtp.{host}",
                        found.mx.join(", ")
                    ),
                });
            }
            let s = step(
                Status::Pass,
                format!("{host} → {}", list.join(", ")),
                details,
            );
            (s, Ok((found.addresses, findings)))
        }
        Err(error) => {
            let (summary, failure) = match error {
                dns::DnsError::NoAddress { mx } => (
                    format!("{host} has no A or AAAA record"),
                    Failure::DnsNoAddress { mx },
                ),
                dns::DnsError::TimedOut => {
                    (format!("lookup of {host} timed out"), Failure::DnsTimeout)
                }
                dns::DnsError::Resolver(error) => (
                    format!("lookup of {host} failed: {error}"),
                    Failure::DnsError { error },
                ),
            };
            (step(Status::Fail, summary, Vec::new()), Err(failure))
        }
    }
}

fn dns_report(plan: &Plan, dns_step: Step, failure: Failure, port: u16) -> Report {
    let ctx = Ctx {
        host: plan.host.clone(),
        port,
        tls: TlsUsed::None,
        user: plan.user.clone(),
        from: plan.from.clone(),
        portcullis: false,
    };
    Report {
        host: plan.host.clone(),
        ok: false,
        exit_code: 1,
        dns: Some(dns_step),
        attempts: Vec::new(),
        recommendation: None,
        diagnosis: Some(diagnose(&failure, &ctx)),
        diagnosis_port: None,
    }
}

fn build_report(plan: &Plan, dns_step: Step, attempts: Vec<Attempt>) -> Report {
    let ok = attempts.iter().any(|a| a.ok);
    let recommendation = if attempts.len() > 1 {
        recommend(plan, &attempts)
    } else {
        None
    };
    // The diagnosis to act on: the one attempt's, or the furthest one's.
    let furthest = if ok {
        None
    } else {
        attempts
            .iter()
            .enumerate()
            .max_by_key(|(i, a)| (a.progress(), std::cmp::Reverse(*i)))
            .map(|(_, a)| a)
    };
    let diagnosis = furthest.and_then(|a| a.diagnosis.clone());
    let diagnosis_port = furthest.map(|a| a.port);
    Report {
        host: plan.host.clone(),
        ok,
        exit_code: if ok { 0 } else { 1 },
        dns: Some(dns_step),
        attempts,
        recommendation,
        diagnosis,
        diagnosis_port,
    }
}

/// The best working combination: TLS first, then AUTH tested, then the
/// submission ports, then implicit TLS, then the order tried.
fn recommend(plan: &Plan, attempts: &[Attempt]) -> Option<Recommendation> {
    let score = |a: &Attempt| {
        let tls = u8::from(a.tls_used != TlsUsed::None);
        let auth = u8::from(a.auth_passed());
        let submission = u8::from(matches!(a.port, 465 | 587));
        // RFC 8314 3.3: implicit TLS is preferred to STARTTLS.
        let implicit = u8::from(a.tls_used == TlsUsed::Implicit);
        (tls, auth, submission, implicit)
    };
    let best = attempts
        .iter()
        .enumerate()
        .filter(|(_, a)| a.ok)
        .max_by_key(|(i, a)| (score(a), std::cmp::Reverse(*i)))
        .map(|(_, a)| a)?;
    let how = match best.tls_used {
        TlsUsed::Implicit => "implicit TLS (\"SSL/TLS\" in mail clients)",
        TlsUsed::Starttls => "STARTTLS",
        TlsUsed::None => "no encryption",
    };
    let mechanism = best.server.auth_mechanism.clone();
    let mut text = format!("use {} port {} with {how}", plan.host, best.port);
    if let (Some(mech), Some(user)) = (&mechanism, &plan.user) {
        text.push_str(&format!(", AUTH {mech} as {user}"));
    }
    if best.tls_used == TlsUsed::None {
        text.push_str(" (no port with TLS worked)");
    }
    Some(Recommendation {
        port: best.port,
        tls: best.tls_used,
        mechanism,
        text,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn argument_parsers_name_the_problem() {
        assert_eq!(parse_port("587"), Ok(587));
        assert!(parse_port("0").is_err());
        assert!(parse_port("70000").is_err());
        assert!(matches!(parse_port_arg("AUTO"), Ok(PortArg::Auto)));
        assert!(parse_port_arg("x").unwrap_err().contains("auto"));
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("ten").is_err());
        assert!(parse_address("alice@example.com").is_ok());
        assert!(parse_address("alice").is_err());
        assert!(parse_address("<a@b>").is_err());
        assert!(parse_host("smtp example").is_err());
    }
}
