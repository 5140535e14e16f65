//! `portcullis audit ...`: the stored AUTH attempts (one event each), a
//! plain-words diagnosis per user (`audit explain`) and an overview with
//! anomalies (`audit summary`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use ipnet::IpNet;
use portcullis_server::config::{Config, format_duration};
use portcullis_store::{
    AccountStatus, AuthEvent, AuthEventFilter, Ban, SqliteStore, Store, validate,
};
use serde_json::json;

use crate::common::{
    duration_ms, format_time, now_ms, open_store, parse_positive_duration, plural, print_table,
    store_error,
};

/// `audit explain` looks this far back.
const EXPLAIN_WINDOW_MS: i64 = 24 * 3_600_000;
/// `audit summary`: how far before the window a login IP counts as known.
const HISTORY_MS: i64 = 30 * 24 * 3_600_000;
/// A burst: at least this many failures from one IP ...
const BURST_FAILURES: usize = 10;
/// ... within this span.
const BURST_SPAN_MS: i64 = 10 * 60_000;
/// A leak signal: one credential used successfully from at least this many IPs ...
const LEAK_IPS: usize = 3;
/// ... within this span.
const LEAK_SPAN_MS: i64 = 3_600_000;
/// Rows in the top lists of `audit summary`.
const TOP: usize = 10;
/// Example IPs named per line.
const MAX_IPS_SHOWN: usize = 5;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: Option<AuditCommand>,
    #[command(flatten)]
    list: ListArgs,
}

/// `portcullis audit` without a subcommand: the events, newest first.
#[derive(Debug, Args)]
struct ListArgs {
    /// Only attempts for this user (as the client gave it; case-insensitive).
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// Only attempts from this client IP.
    #[arg(long, value_name = "IP")]
    ip: Option<String>,
    /// Only failed attempts.
    #[arg(long)]
    failed: bool,
    /// Only attempts in the last DURATION, e.g. 30m, 1h, 7d.
    #[arg(long, value_name = "DURATION")]
    since: Option<String>,
    /// Show at most N events (the newest).
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    limit: u32,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Why did this user's logins fail in the last 24 hours, and what to do.
    Explain {
        /// The account (login name), e.g. user@example.com.
        email: String,
    },
    /// Top failing IPs and users, and anomalies: a login from an IP new for
    /// the account, bursts of failures, one credential used from many IPs.
    ///
    /// A login IP counts as new when the account logged in before (in the 30
    /// days before the window, or earlier in it) but never from that IP.
    Summary {
        /// The window to summarise, e.g. 1h, 24h, 7d.
        #[arg(long, value_name = "DURATION", default_value = "24h")]
        since: String,
    },
}

pub async fn run(args: AuditArgs, config: &Config) -> anyhow::Result<()> {
    match args.command {
        None => {
            let filter = list_filter(&args.list)?;
            let store = open_store(config).await?;
            let result = list(&store, filter, &args.list).await;
            store.close().await;
            result
        }
        Some(AuditCommand::Explain { email }) => {
            let user = email.trim().to_owned();
            if user.is_empty() {
                anyhow::bail!("audit explain: give the account's address");
            }
            let store = open_store(config).await?;
            let result = explain(&store, &user).await;
            store.close().await;
            result
        }
        Some(AuditCommand::Summary { since }) => {
            let window = parse_positive_duration("--since", &since)?;
            let store = open_store(config).await?;
            let result = summary(&store, window).await;
            store.close().await;
            result
        }
    }
}

fn list_filter(args: &ListArgs) -> anyhow::Result<AuthEventFilter> {
    let ip = args
        .ip
        .as_deref()
        .map(|text| {
            text.trim()
                .parse::<IpAddr>()
                .map(|ip| ip.to_string())
                .map_err(|_| anyhow!("--ip: invalid IP address {text:?}"))
        })
        .transpose()?;
    let since_ms = args
        .since
        .as_deref()
        .map(|text| parse_positive_duration("--since", text))
        .transpose()?
        .map(|window| now_ms().saturating_sub(duration_ms(window)));
    let user = args
        .user
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned);
    Ok(AuthEventFilter {
        user,
        ip,
        failed_only: args.failed,
        since_ms,
        limit: Some(usize::try_from(args.limit).unwrap_or(usize::MAX)),
    })
}

/// Events matching `filter`, newest first (the store matches the user
/// case-insensitively).
async fn events(store: &SqliteStore, filter: AuthEventFilter) -> anyhow::Result<Vec<AuthEvent>> {
    store
        .auth_events(&filter)
        .await
        .map_err(|e| store_error("audit", e))
}

async fn list(store: &SqliteStore, filter: AuthEventFilter, args: &ListArgs) -> anyhow::Result<()> {
    let limit = filter.limit;
    let events = events(store, filter).await?;
    if args.json {
        for event in &events {
            println!("{}", event_json(event));
        }
        return Ok(());
    }
    if events.is_empty() {
        println!("No authentication attempts match");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = events.iter().map(event_row).collect();
    print_table(
        &[
            "TIME",
            "RESULT",
            "REASON",
            "USER",
            "IP",
            "MECHANISM",
            "CREDENTIAL",
            "LISTENER",
            "SESSION",
        ],
        &rows,
    );
    if limit == Some(events.len()) {
        eprintln!(
            "(the newest {}; use --limit to see more)",
            plural(events.len(), "event")
        );
    }
    Ok(())
}

fn event_row(event: &AuthEvent) -> Vec<String> {
    vec![
        format_time(event.at_ms.div_euclid(1000)),
        result_word(event).to_owned(),
        event.reason.clone(),
        printable(&event.user),
        event.client_ip.clone(),
        printable(&event.mechanism),
        event.credential.clone().unwrap_or_else(|| "-".to_owned()),
        event.listener.clone(),
        event.session_id.clone(),
    ]
}

fn event_json(event: &AuthEvent) -> serde_json::Value {
    json!({
        "time": format_time_millis(event.at_ms),
        "at_ms": event.at_ms,
        "result": result_word(event),
        "reason": event.reason,
        "user": event.user,
        "ip": event.client_ip,
        "mechanism": event.mechanism,
        "credential": event.credential,
        "listener": event.listener,
        "tls": event.tls,
        "session": event.session_id,
    })
}

fn result_word(event: &AuthEvent) -> &'static str {
    if event.success { "success" } else { "failure" }
}

/// A claimed user or mechanism for a table cell: control characters and
/// spaces escaped so that a client cannot forge columns or lines; empty as `-`.
fn printable(text: &str) -> String {
    if text.is_empty() {
        return "-".to_owned();
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || c.is_whitespace() => {
                out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds.
fn format_time_millis(at_ms: i64) -> String {
    let nanos = i128::from(at_ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| at_ms.to_string())
}

/// How a credential is named to the admin.
fn credential_words(credential: Option<&str>) -> String {
    match credential {
        None => "no credential".to_owned(),
        Some("password") => "the main password".to_owned(),
        Some(other) => match other.strip_prefix("app:") {
            Some(name) => format!("app password {name}"),
            None => other.to_owned(),
        },
    }
}

/// Distinct values in first-seen order, at most `max` shown, with "and N more".
fn some_of(values: &[String], max: usize) -> String {
    let mut distinct: Vec<&String> = Vec::new();
    for value in values {
        if !distinct.contains(&value) {
            distinct.push(value);
        }
    }
    let shown: Vec<&str> = distinct.iter().take(max).map(|s| s.as_str()).collect();
    let mut text = shown.join(", ");
    if distinct.len() > max {
        text.push_str(&format!(" and {} more", distinct.len() - max));
    }
    text
}

// ---------------------------------------------------------------- explain

/// What `audit explain` knows about the account besides the events.
struct AccountFacts {
    address: String,
    exists: bool,
    disabled: bool,
    two_factor: bool,
    app_passwords: usize,
    allowed_ips: Vec<String>,
    /// Allowlists of app passwords, by name.
    app_allowlists: HashMap<String, Vec<String>>,
    bans: Vec<Ban>,
}

async fn explain(store: &SqliteStore, user: &str) -> anyhow::Result<()> {
    let address = validate::normalize_address(user).unwrap_or_else(|_| user.to_lowercase());
    let account = store
        .account(&address)
        .await
        .map_err(|e| store_error("account", e))?;
    let security = match &account {
        Some(_) => store
            .account_security(&address)
            .await
            .map_err(|e| store_error("account", e))?,
        None => None,
    };
    let app_passwords = match &account {
        Some(_) => store
            .list_app_passwords(&address)
            .await
            .map_err(|e| store_error("account", e))?,
        None => Vec::new(),
    };
    let now = now_ms();
    let bans = store
        .list_bans(now)
        .await
        .map_err(|e| store_error("ban", e))?;
    let filter = AuthEventFilter {
        user: Some(address.clone()),
        since_ms: Some(now.saturating_sub(EXPLAIN_WINDOW_MS)),
        ..AuthEventFilter::default()
    };
    let events = events(store, filter).await?;
    let facts = AccountFacts {
        exists: account.is_some(),
        disabled: account
            .as_ref()
            .is_some_and(|a| a.status == AccountStatus::Disabled),
        two_factor: security.as_ref().is_some_and(|s| s.totp_secret.is_some()),
        app_passwords: app_passwords.len(),
        allowed_ips: security.map(|s| s.allowed_ips).unwrap_or_default(),
        app_allowlists: app_passwords
            .into_iter()
            .map(|p| (p.name, p.allowed_ips))
            .collect(),
        bans,
        address,
    };
    for line in explanation(&facts, &events) {
        println!("{line}");
    }
    Ok(())
}

/// The lines of `audit explain` (events newest first, all of one user).
fn explanation(facts: &AccountFacts, events: &[AuthEvent]) -> Vec<String> {
    let address = &facts.address;
    let mut out = Vec::new();
    if !facts.exists {
        out.push(format!(
            "There is no account {address}: logins with this user name fail with reason unknown_user \
             (check for a typo; the user name is the full address, see `portcullis account list`)."
        ));
    } else {
        let mut state = Vec::new();
        if facts.disabled {
            state.push("disabled".to_owned());
        }
        if facts.two_factor {
            state.push("2FA on".to_owned());
        }
        state.push(plural(facts.app_passwords, "app password"));
        if !facts.allowed_ips.is_empty() {
            state.push(format!("logins only from {}", facts.allowed_ips.join(", ")));
        }
        out.push(format!("Account {address}: {}.", state.join(", ")));
    }

    if events.is_empty() {
        out.push(format!(
            "No login attempts for {address} in the last 24 hours. If a mail client reports a \
             login failure, it does not reach this server or does not authenticate: clients must \
             connect to port 587 (STARTTLS) or 465 (TLS) and log in (AUTH) with the full address \
             as the user name."
        ));
        return out;
    }

    let failures: Vec<&AuthEvent> = events.iter().filter(|e| !e.success).collect();
    let successes: Vec<&AuthEvent> = events.iter().filter(|e| e.success).collect();
    out.push(format!(
        "In the last 24 hours: {} failed {}, {} succeeded.",
        failures.len(),
        if failures.len() == 1 {
            "login"
        } else {
            "logins"
        },
        successes.len()
    ));
    if let Some(last) = successes.first() {
        out.push(format!(
            "Last successful login: {} from {} with {} ({} on {}).",
            format_time(last.at_ms.div_euclid(1000)),
            last.client_ip,
            credential_words(last.credential.as_deref()),
            printable(&last.mechanism),
            last.listener
        ));
    }
    if failures.is_empty() {
        out.push("No failed logins: nothing to fix.".to_owned());
        return out;
    }

    // Group by reason, most frequent first.
    let mut by_reason: BTreeMap<&str, Vec<&AuthEvent>> = BTreeMap::new();
    for event in &failures {
        by_reason
            .entry(event.reason.as_str())
            .or_default()
            .push(event);
    }
    let mut groups: Vec<(&str, Vec<&AuthEvent>)> = by_reason.into_iter().collect();
    groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
    for (reason, group) in groups {
        let ips: Vec<String> = group.iter().map(|e| e.client_ip.clone()).collect();
        let last = group
            .first()
            .map(|e| format_time(e.at_ms.div_euclid(1000)))
            .unwrap_or_default();
        out.push(String::new());
        out.push(format!(
            "{reason}: {} (last {last}) from {}",
            plural(group.len(), "failure"),
            some_of(&ips, MAX_IPS_SHOWN)
        ));
        out.push(format!("  {}", advice(facts, reason, &group)));
    }
    out
}

/// What a failure reason means and what to do, in plain words.
fn advice(facts: &AccountFacts, reason: &str, group: &[&AuthEvent]) -> String {
    let address = &facts.address;
    let ips: Vec<String> = group.iter().map(|e| e.client_ip.clone()).collect();
    let distinct_ips = ips.iter().collect::<BTreeSet<_>>().len();
    match reason {
        "bad_password" => {
            let mut text = format!(
                "The password is wrong. If the user forgot it, reset it with \
                 `portcullis account passwd {address} --password-stdin` and update the mail client."
            );
            if group.iter().any(|e| e.credential.is_none()) && facts.app_passwords > 0 {
                text.push_str(" App passwords must be entered as shown when they were created (dashes and case do not matter).");
            }
            if distinct_ips >= 3 || group.len() >= BURST_FAILURES {
                text.push_str(&format!(
                    " {} from {}: if the user did not make them, someone is guessing the password \
                     (the server bans such IPs, see `portcullis ban list`).",
                    plural(group.len(), "failure"),
                    plural(distinct_ips, "IP")
                ));
            }
            text
        }
        "app_password_required" => {
            let mut text = format!(
                "This account has 2FA: its main password is refused on SMTP (534 5.7.9). Create an \
                 app password with `portcullis app-password add {address} --name NAME` and use it \
                 in the mail client instead."
            );
            if facts.exists && !facts.two_factor {
                text.push_str(" (2FA has been turned off since then.)");
            }
            text
        }
        "ip_not_allowed" => {
            let apps: BTreeSet<&str> = group
                .iter()
                .filter_map(|e| e.credential.as_deref()?.strip_prefix("app:"))
                .collect();
            let mut text = format!(
                "Logins came from {} which is outside the allowlist",
                some_of(&ips, MAX_IPS_SHOWN)
            );
            if facts.allowed_ips.is_empty() {
                text.push_str(" (the account now allows any IP)");
            } else {
                text.push_str(&format!(
                    " of the account ({})",
                    facts.allowed_ips.join(", ")
                ));
            }
            for app in &apps {
                match facts.app_allowlists.get(*app) {
                    Some(list) if !list.is_empty() => {
                        text.push_str(&format!("; app password {app} allows only {}", list.join(", ")));
                    }
                    _ => {}
                }
            }
            let first_ip = ips.first().cloned().unwrap_or_default();
            text.push_str(&format!(
                ". If that is the user, allow the network with `portcullis account allow-ip {address} {first_ip}` \
                 (or `--clear` to allow any IP)"
            ));
            if !apps.is_empty() {
                text.push_str(
                    "; an app password's own allowlist is set when it is created: revoke it and \
                     add it again with a wider --allow-ip",
                );
            }
            text.push('.');
            text
        }
        "disabled" | "account_disabled" => {
            if facts.disabled {
                format!(
                    "The account is disabled. Enable it with `portcullis account enable {address}`."
                )
            } else {
                "The account was disabled then; it is enabled now, so new logins should work."
                    .to_owned()
            }
        }
        "password_expired" => format!(
            "The password is older than [security] password_max_age. Set a new one with \
             `portcullis account passwd {address} --password-stdin` (app passwords are not affected)."
        ),
        "rate_limited" | "banned" => {
            let mut text = format!(
                "The IP {} was blocked after repeated failed logins.",
                some_of(&ips, MAX_IPS_SHOWN)
            );
            let active: Vec<&str> = facts
                .bans
                .iter()
                .filter(|ban| ips.iter().any(|ip| ban_covers(ban, ip)))
                .map(|ban| ban.network.as_str())
                .collect();
            if active.is_empty() {
                text.push_str(
                    " No ban covers it any more; fix the password in the mail client, or it will be blocked again.",
                );
            } else {
                text.push_str(&format!(
                    " Fix the password in the mail client, then lift the ban with `portcullis ban remove {}`.",
                    active.join(" ")
                ));
            }
            text
        }
        "unknown_user" => {
            if facts.exists {
                "There was no such account at the time (it exists now).".to_owned()
            } else {
                "No such account (typo in the username?). The user name is the full address."
                    .to_owned()
            }
        }
        "mechanism_not_allowed" => "The client used an AUTH mechanism the server does not accept there \
             (e.g. before STARTTLS). Set the client to \"normal password\" with STARTTLS on port 587 \
             or SSL/TLS on port 465."
            .to_owned(),
        "authzid_mismatch" => "The client asked to act as another user (authorization identity). \
             Leave that setting empty in the client."
            .to_owned(),
        "store_unavailable" => "The server could not read its database at the time: check the \
             server log and the data directory's disk and permissions. The user did nothing wrong."
            .to_owned(),
        // Issue 6 mechanisms.
        "no_scram_keys" => format!(
            "The client used SCRAM-SHA-256, but the account's password was set before Portcullis \
             stored SCRAM keys. Set the password again (`portcullis account passwd {address} \
             --password-stdin`) or use PLAIN/LOGIN."
        ),
        "no_cram_secret" => format!(
            "The client used CRAM-MD5, which works only with an app password created with \
             `portcullis app-password add {address} --name NAME --allow-cram-md5`. Prefer SCRAM-SHA-256 \
             or PLAIN over TLS in the client."
        ),
        "idp_unavailable" => "The identity provider's keys (jwks_url) could not be fetched: check \
             the server log and the network. The user did nothing wrong."
            .to_owned(),
        token if token.starts_with("token_") => format!(
            "The OAuth bearer token was refused ({}): the client must get a fresh token from its \
             identity provider, configured under [[oauth.issuer]] (or `portcullis token issue {address}`).",
            token.trim_start_matches("token_").replace('_', " ")
        ),
        other => format!("Reason code {other}: see the server log for the sessions listed by `portcullis audit --user {address}`."),
    }
}

fn ban_covers(ban: &Ban, ip: &str) -> bool {
    match (ban.network.parse::<IpNet>(), ip.parse::<IpAddr>()) {
        (Ok(net), Ok(ip)) => net.contains(&ip),
        _ => ban.network == ip,
    }
}

// ---------------------------------------------------------------- summary

async fn summary(store: &SqliteStore, window: Duration) -> anyhow::Result<()> {
    let now = now_ms();
    let start = now.saturating_sub(duration_ms(window));
    let filter = AuthEventFilter {
        since_ms: Some(start.saturating_sub(HISTORY_MS)),
        ..AuthEventFilter::default()
    };
    let mut events = store
        .auth_events(&filter)
        .await
        .map_err(|e| store_error("audit", e))?;
    events.sort_by_key(|e| e.at_ms);
    for line in summary_lines(&events, start, &format_duration(window)) {
        println!("{line}");
    }
    Ok(())
}

/// A lower-cased user name for grouping.
fn user_key(event: &AuthEvent) -> String {
    event.user.trim().to_lowercase()
}

#[derive(Debug, PartialEq, Eq)]
enum Anomaly {
    NewIp {
        at_ms: i64,
        user: String,
        ip: String,
        known: Vec<String>,
    },
    Burst {
        ip: String,
        failures: usize,
        from_ms: i64,
        users: Vec<String>,
    },
    Leak {
        user: String,
        credential: Option<String>,
        ips: Vec<String>,
        from_ms: i64,
    },
}

/// Anomalies among `events` (sorted oldest first) at or after `start`;
/// earlier events are history only.
fn anomalies(events: &[AuthEvent], start: i64) -> Vec<Anomaly> {
    let mut found = Vec::new();

    // A success from an IP the account never logged in from before.
    let mut known: HashMap<String, Vec<String>> = HashMap::new();
    for event in events.iter().filter(|e| e.success) {
        let ips = known.entry(user_key(event)).or_default();
        if !ips.contains(&event.client_ip) {
            if event.at_ms >= start && !ips.is_empty() {
                found.push(Anomaly::NewIp {
                    at_ms: event.at_ms,
                    user: user_key(event),
                    ip: event.client_ip.clone(),
                    known: ips.clone(),
                });
            }
            ips.push(event.client_ip.clone());
        }
    }

    let in_window: Vec<&AuthEvent> = events.iter().filter(|e| e.at_ms >= start).collect();

    // Bursts of failures from one IP: the busiest 10 minutes per IP.
    let mut failures_by_ip: BTreeMap<&str, Vec<&AuthEvent>> = BTreeMap::new();
    for event in in_window.iter().filter(|e| !e.success) {
        failures_by_ip
            .entry(event.client_ip.as_str())
            .or_default()
            .push(event);
    }
    for (ip, failures) in failures_by_ip {
        let mut best: Option<(usize, usize)> = None; // (count, first index)
        let mut first = 0;
        for (last, event) in failures.iter().enumerate() {
            while event.at_ms - failures[first].at_ms >= BURST_SPAN_MS {
                first += 1;
            }
            let count = last + 1 - first;
            if best.is_none_or(|(c, _)| count > c) {
                best = Some((count, first));
            }
        }
        if let Some((count, first)) = best.filter(|(c, _)| *c >= BURST_FAILURES) {
            let mut users: Vec<String> = Vec::new();
            for event in &failures[first..first + count] {
                let user = printable(&user_key(event));
                if !users.contains(&user) {
                    users.push(user);
                }
            }
            found.push(Anomaly::Burst {
                ip: ip.to_owned(),
                failures: count,
                from_ms: failures[first].at_ms,
                users,
            });
        }
    }

    // One credential used successfully from many IPs within an hour.
    let mut by_credential: BTreeMap<(String, Option<String>), Vec<&AuthEvent>> = BTreeMap::new();
    for event in in_window.iter().filter(|e| e.success) {
        by_credential
            .entry((user_key(event), event.credential.clone()))
            .or_default()
            .push(event);
    }
    for ((user, credential), uses) in by_credential {
        let mut best: Option<(Vec<String>, i64)> = None;
        let mut first = 0;
        for (last, event) in uses.iter().enumerate() {
            while event.at_ms - uses[first].at_ms >= LEAK_SPAN_MS {
                first += 1;
            }
            let mut ips: Vec<String> = Vec::new();
            for used in &uses[first..=last] {
                if !ips.contains(&used.client_ip) {
                    ips.push(used.client_ip.clone());
                }
            }
            if best.as_ref().is_none_or(|(b, _)| ips.len() > b.len()) {
                best = Some((ips, uses[first].at_ms));
            }
        }
        if let Some((ips, from_ms)) = best.filter(|(ips, _)| ips.len() >= LEAK_IPS) {
            found.push(Anomaly::Leak {
                user,
                credential,
                ips,
                from_ms,
            });
        }
    }
    found
}

fn anomaly_line(anomaly: &Anomaly) -> String {
    match anomaly {
        Anomaly::NewIp {
            at_ms,
            user,
            ip,
            known,
        } => format!(
            "new IP: {} logged in from {ip} at {}, an IP not seen for it before (earlier logins from {})",
            printable(user),
            format_time(at_ms.div_euclid(1000)),
            some_of(known, MAX_IPS_SHOWN)
        ),
        Anomaly::Burst {
            ip,
            failures,
            from_ms,
            users,
        } => format!(
            "burst: {} from {ip} within 10 minutes from {} (users: {})",
            plural(*failures, "failed login"),
            format_time(from_ms.div_euclid(1000)),
            some_of(users, MAX_IPS_SHOWN)
        ),
        Anomaly::Leak {
            user,
            credential,
            ips,
            from_ms,
        } => {
            let fix = match credential.as_deref().and_then(|c| c.strip_prefix("app:")) {
                Some(name) => format!("`portcullis app-password revoke {user} {name}`"),
                None => format!("`portcullis account passwd {user} --password-stdin`"),
            };
            format!(
                "possible leak: {} of {} was used from {} within an hour from {} ({}); if that is \
                 not the user, replace it with {fix}",
                credential_words(credential.as_deref()),
                printable(user),
                plural(ips.len(), "IP"),
                format_time(from_ms.div_euclid(1000)),
                some_of(ips, MAX_IPS_SHOWN)
            )
        }
    }
}

/// The lines of `audit summary` (events sorted oldest first).
fn summary_lines(events: &[AuthEvent], start: i64, window: &str) -> Vec<String> {
    let in_window: Vec<&AuthEvent> = events.iter().filter(|e| e.at_ms >= start).collect();
    let failures: Vec<&&AuthEvent> = in_window.iter().filter(|e| !e.success).collect();
    let mut out = vec![format!(
        "Authentication in the last {window}: {}, {} failed, {} succeeded",
        plural(in_window.len(), "attempt"),
        failures.len(),
        in_window.len() - failures.len()
    )];

    if !failures.is_empty() {
        out.push(String::new());
        out.push("Top failing IPs:".to_owned());
        out.extend(top_table(
            &failures,
            |e| e.client_ip.clone(),
            "IP",
            "USERS",
            |e| printable(&user_key(e)),
        ));
        out.push(String::new());
        out.push("Top failing users:".to_owned());
        out.extend(top_table(
            &failures,
            |e| printable(&user_key(e)),
            "USER",
            "IPS",
            |e| e.client_ip.clone(),
        ));
    }

    let found = anomalies(events, start);
    out.push(String::new());
    if found.is_empty() {
        out.push("Anomalies: none".to_owned());
    } else {
        out.push(format!("Anomalies ({}):", found.len()));
        out.extend(found.iter().map(|a| format!("  {}", anomaly_line(a))));
    }
    out
}

/// Rows `KEY FAILURES <OTHER> REASONS` for the most frequent keys.
fn top_table(
    failures: &[&&AuthEvent],
    key: impl Fn(&AuthEvent) -> String,
    key_header: &str,
    other_header: &str,
    other: impl Fn(&AuthEvent) -> String,
) -> Vec<String> {
    struct Tally {
        count: usize,
        others: Vec<String>,
        reasons: BTreeMap<String, usize>,
    }
    let mut tallies: HashMap<String, Tally> = HashMap::new();
    for event in failures {
        let tally = tallies.entry(key(event)).or_insert_with(|| Tally {
            count: 0,
            others: Vec::new(),
            reasons: BTreeMap::new(),
        });
        tally.count += 1;
        let other = other(event);
        if !tally.others.contains(&other) {
            tally.others.push(other);
        }
        *tally.reasons.entry(event.reason.clone()).or_default() += 1;
    }
    let mut ranked: Vec<(String, Tally)> = tallies.into_iter().collect();
    ranked.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(&b.0)));
    ranked.truncate(TOP);
    let rows: Vec<Vec<String>> = ranked
        .into_iter()
        .map(|(key, tally)| {
            let mut reasons: Vec<(String, usize)> = tally.reasons.into_iter().collect();
            reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            vec![
                key,
                tally.count.to_string(),
                some_of(&tally.others, 3),
                reasons
                    .iter()
                    .map(|(reason, n)| format!("{reason} ({n})"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ]
        })
        .collect();
    table_lines(&[key_header, "FAILURES", other_header, "REASONS"], &rows)
}

/// Like [`crate::common::print_table`], indented by two spaces, as lines.
fn table_lines(headers: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::from("  ");
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = vec![line(headers.to_vec())];
    out.extend(
        rows.iter()
            .map(|row| line(row.iter().map(String::as_str).collect())),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000;

    fn event(at_ms: i64, user: &str, ip: &str, success: bool, reason: &str) -> AuthEvent {
        AuthEvent {
            at_ms,
            session_id: "s1".to_owned(),
            listener: "submission".to_owned(),
            client_ip: ip.to_owned(),
            tls: Some("TLSv1.3".to_owned()),
            user: user.to_owned(),
            mechanism: "PLAIN".to_owned(),
            credential: success.then(|| "password".to_owned()),
            success,
            reason: reason.to_owned(),
        }
    }

    fn facts() -> AccountFacts {
        AccountFacts {
            address: "alice@example.com".to_owned(),
            exists: true,
            disabled: false,
            two_factor: false,
            app_passwords: 0,
            allowed_ips: Vec::new(),
            app_allowlists: HashMap::new(),
            bans: Vec::new(),
        }
    }

    #[test]
    fn new_ip_needs_history() {
        let events = vec![
            event(T0, "alice@example.com", "192.0.2.1", true, "ok"),
            event(T0 + 1000, "bob@example.com", "192.0.2.9", true, "ok"),
            event(T0 + 2000, "Alice@Example.com", "192.0.2.1", true, "ok"),
            event(T0 + 3000, "alice@example.com", "203.0.113.5", true, "ok"),
            event(T0 + 4000, "alice@example.com", "203.0.113.5", true, "ok"),
        ];
        let found = anomalies(&events, T0 + 500);
        assert_eq!(
            found,
            vec![Anomaly::NewIp {
                at_ms: T0 + 3000,
                user: "alice@example.com".to_owned(),
                ip: "203.0.113.5".to_owned(),
                known: vec!["192.0.2.1".to_owned()],
            }]
        );
        // Before the window: history only.
        assert!(anomalies(&events, T0 + 10_000).is_empty());
    }

    #[test]
    fn bursts_need_ten_failures_in_ten_minutes() {
        let nine: Vec<AuthEvent> = (0..9)
            .map(|i| {
                event(
                    T0 + i * 60_000,
                    "x@example.com",
                    "192.0.2.7",
                    false,
                    "unknown_user",
                )
            })
            .collect();
        assert!(anomalies(&nine, T0).is_empty());
        let mut ten = nine.clone();
        ten.push(event(
            T0 + 599_999,
            "y@example.com",
            "192.0.2.7",
            false,
            "bad_password",
        ));
        let found = anomalies(&ten, T0);
        assert!(
            matches!(&found[..], [Anomaly::Burst { failures: 10, users, .. }] if users.len() == 2),
            "{found:?}"
        );
        // Spread over more than 10 minutes: no burst.
        let mut spread = nine;
        spread.push(event(
            T0 + 600_000,
            "y@example.com",
            "192.0.2.7",
            false,
            "bad_password",
        ));
        assert!(anomalies(&spread, T0).is_empty());
    }

    #[test]
    fn one_credential_from_three_ips_within_an_hour_is_a_leak_signal() {
        let mut events = vec![
            event(T0, "alice@example.com", "192.0.2.1", true, "ok"),
            event(T0 + 60_000, "alice@example.com", "198.51.100.2", true, "ok"),
            event(
                T0 + 3_599_000,
                "alice@example.com",
                "203.0.113.3",
                true,
                "ok",
            ),
        ];
        let leaks = |events: &[AuthEvent]| {
            anomalies(events, T0)
                .into_iter()
                .filter(|a| matches!(a, Anomaly::Leak { .. }))
                .count()
        };
        assert_eq!(leaks(&events), 1);
        events[2].at_ms = T0 + 3_600_000;
        assert_eq!(leaks(&events), 0);
        // A different credential does not add up.
        events[2].at_ms = T0 + 120_000;
        events[2].credential = Some("app:phone".to_owned());
        assert_eq!(leaks(&events), 0);
    }

    #[test]
    fn explanations_say_what_to_do() {
        let now = T0;
        let events = vec![
            event(now, "alice@example.com", "192.0.2.7", false, "bad_password"),
            event(
                now - 1,
                "alice@example.com",
                "192.0.2.7",
                false,
                "bad_password",
            ),
            event(
                now - 2,
                "alice@example.com",
                "198.51.100.4",
                false,
                "ip_not_allowed",
            ),
        ];
        let mut facts = facts();
        facts.allowed_ips = vec!["192.0.2.0/24".to_owned()];
        let text = explanation(&facts, &events).join("\n");
        assert!(text.contains("bad_password: 2 failures"), "{text}");
        assert!(text.contains("portcullis account passwd"), "{text}");
        assert!(
            text.contains("Logins came from 198.51.100.4 which is outside the allowlist of the account (192.0.2.0/24)"),
            "{text}"
        );
        // bad_password is listed first (most frequent).
        assert!(
            text.find("bad_password").unwrap_or(usize::MAX)
                < text.find("ip_not_allowed:").unwrap_or(0)
        );

        let none = explanation(&facts, &[]).join("\n");
        assert!(none.contains("No login attempts"), "{none}");
        assert!(none.contains("587") && none.contains("465"), "{none}");

        let mut missing = self::facts();
        missing.exists = false;
        let text = explanation(
            &missing,
            &[event(
                now,
                "alice@example.com",
                "192.0.2.7",
                false,
                "unknown_user",
            )],
        )
        .join("\n");
        assert!(text.contains("typo in the username"), "{text}");
    }

    #[test]
    fn banned_advice_names_the_ban() {
        let mut facts = facts();
        facts.bans = vec![Ban {
            network: "192.0.2.0/24".to_owned(),
            until_ms: T0 + 3_600_000,
            reason: "auth failures".to_owned(),
            created_ms: T0,
            strikes: 1,
        }];
        let text = explanation(
            &facts,
            &[event(T0, "alice@example.com", "192.0.2.7", false, "banned")],
        )
        .join("\n");
        assert!(
            text.contains("was blocked after repeated failed logins"),
            "{text}"
        );
        assert!(
            text.contains("portcullis ban remove 192.0.2.0/24"),
            "{text}"
        );
    }

    #[test]
    fn printable_escapes_controls() {
        assert_eq!(printable("a b\r\nc"), "a\\u{20}b\\r\\nc");
        assert_eq!(printable(""), "-");
        assert_eq!(printable("alice@example.com"), "alice@example.com");
    }

    #[test]
    fn millis() {
        assert_eq!(format_time_millis(1_500), "1970-01-01T00:00:01.500Z");
    }
}
