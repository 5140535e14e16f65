//! The causes-and-fixes table: from the failure that stopped an attempt to
//! "what happened", "likely causes" and "what to do", in plain words.
//! Pure functions; every row is unit-tested below.

use serde::Serialize;

use super::probe::{At, Failure, StepKind, TlsUsed};

/// Facts about the attempt that change the advice.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub host: String,
    pub port: u16,
    pub tls: TlsUsed,
    pub user: Option<String>,
    pub from: Option<String>,
    /// The server's greeting or EHLO names Portcullis.
    pub portcullis: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnosis {
    /// Stable identifier of the cause, for scripts (`credentials_rejected`).
    pub cause: &'static str,
    pub what_happened: String,
    pub likely_causes: Vec<String>,
    pub what_to_do: Vec<String>,
}

fn d(cause: &'static str, what: String, causes: &[&str], todo: Vec<String>) -> Diagnosis {
    Diagnosis {
        cause,
        what_happened: what,
        likely_causes: causes.iter().map(|c| (*c).to_owned()).collect(),
        what_to_do: todo,
    }
}

fn s(text: &str) -> String {
    text.to_owned()
}

/// The line pointing at the server's own record of AUTH failures.
fn audit_hint(ctx: &Ctx) -> Option<String> {
    if !ctx.portcullis {
        return None;
    }
    let user = ctx.user.as_deref().unwrap_or("EMAIL");
    Some(format!(
        "This is a Portcullis server: its administrator can run `portcullis audit explain {user}` on the server to see the exact reason it recorded."
    ))
}

pub fn diagnose(failure: &Failure, ctx: &Ctx) -> Diagnosis {
    match failure {
        Failure::DnsNoAddress { mx } => dns_no_address(mx, ctx),
        Failure::DnsTimeout => dns_failed(None, ctx),
        Failure::DnsError { error } => dns_failed(Some(error), ctx),
        Failure::ConnectRefused => connect_refused(ctx),
        Failure::ConnectTimeout => connect_timeout(ctx),
        Failure::ConnectError { error } => connect_error(error, ctx),
        Failure::ImplicitTlsPort => implicit_tls_port(ctx),
        Failure::StarttlsPort { greeting } => starttls_port(greeting, ctx),
        Failure::TlsHandshake { error } => tls_handshake(error, ctx),
        Failure::NoGreeting => no_greeting(ctx),
        Failure::Timeout { at } => timeout(*at, ctx),
        Failure::Closed { at } => closed(*at, ctx),
        Failure::Protocol { at, error } => protocol_error(*at, error),
        Failure::Rejected { at, reply } => reply_rows::rejected(*at, reply, ctx),
        Failure::StarttlsNotOffered { requested } => starttls_not_offered(*requested, ctx),
        Failure::AuthNotOffered {
            tls,
            starttls_offered,
        } => auth_not_offered(*tls, *starttls_offered, ctx),
        Failure::MechNotOffered { mech, offered } => mech_not_offered(mech, offered),
    }
}

fn dns_failed(error: Option<&String>, ctx: &Ctx) -> Diagnosis {
    match error {
        None => d(
            "dns_timeout",
            format!("DNS lookup of {} timed out.", ctx.host),
            &[
                "no working DNS server is configured on this machine",
                "a network outage",
            ],
            vec![s(
                "Check /etc/resolv.conf and the network, or test with the server's IP address.",
            )],
        ),
        Some(error) => d(
            "dns_error",
            format!("DNS lookup of {} failed: {error}.", ctx.host),
            &["a typo in the host name", "no working DNS on this machine"],
            vec![s(
                "Check the spelling, or test with the server's IP address.",
            )],
        ),
    }
}

fn connect_error(error: &str, ctx: &Ctx) -> Diagnosis {
    d(
        "connect_error",
        format!("Could not connect to {}:{}: {error}.", ctx.host, ctx.port),
        &["no route to the server (wrong address, network down, IPv6 without connectivity)"],
        vec![s(
            "Check the address and this machine's network connection.",
        )],
    )
}

fn no_greeting(ctx: &Ctx) -> Diagnosis {
    d(
        "no_greeting",
        format!(
            "Port {} accepted the connection but the server never sent its greeting, and it does not speak TLS either.",
            ctx.port
        ),
        &[
            "the server is overloaded or stuck",
            "a firewall or antivirus proxy intercepts SMTP",
            "the port belongs to another service",
        ],
        vec![s(
            "Retry with a longer --timeout; check the server's logs; try port 587 or 465.",
        )],
    )
}

fn protocol_error(at: At, error: &str) -> Diagnosis {
    d(
        "protocol_error",
        format!(
            "The server's answer to {} is not valid SMTP: {error}.",
            at.label()
        ),
        &[
            "the port runs another protocol (HTTP, IMAP, POP3)",
            "a broken proxy in between",
        ],
        vec![s(
            "Check that this is the SMTP submission port (587 or 465).",
        )],
    )
}

fn mech_not_offered(mech: &str, offered: &[String]) -> Diagnosis {
    d(
        "mechanism_not_offered",
        format!(
            "The server does not offer AUTH {mech}; it offers: {}.",
            offered.join(" ")
        ),
        &["the client is configured for an authentication method the server does not support"],
        vec![format!(
            "Use one of the offered mechanisms ({}); in `portcullis check`, leave out --mech or pass one of them.",
            offered.join(", ")
        )],
    )
}

fn dns_no_address(mx: &[String], ctx: &Ctx) -> Diagnosis {
    let mut todo = vec![s("Check the spelling of the host name.")];
    if let Some(first) = mx.first() {
        todo.push(format!(
            "{} is a mail domain whose mail servers are {}; submission servers are usually named like smtp.{} — ask your provider for the exact name.",
            ctx.host,
            mx.join(", "),
            ctx.host
        ));
        todo.push(format!(
            "To test the first mail server: portcullis check {first}"
        ));
    }
    d(
        "dns_no_address",
        format!("{} has no address (no A or AAAA record).", ctx.host),
        &[
            "a typo in the host name",
            "the name is a mail domain, not a server name",
        ],
        todo,
    )
}

fn connect_refused(ctx: &Ctx) -> Diagnosis {
    let mut todo = vec![s(
        "Check the port number; try --port auto to find the ports that answer.",
    )];
    if ctx.port == 465 {
        todo.push(s(
            "Many servers offer only port 587 with STARTTLS; try --port 587.",
        ));
    }
    todo.push(s(
        "If you run the server: check that it is running and listens on this address and port (`ss -ltn`).",
    ));
    d(
        "connection_refused",
        format!(
            "Connection to {}:{} refused: the host answered, but nothing listens on port {}.",
            ctx.host, ctx.port, ctx.port
        ),
        &[
            "the server is not running",
            "the service listens on another port or address",
            "this port is not enabled on the server",
        ],
        todo,
    )
}

fn connect_timeout(ctx: &Ctx) -> Diagnosis {
    let mut causes = vec![
        "a firewall drops the packets (filtered)",
        "the host is down or the address is wrong",
    ];
    let mut todo = Vec::new();
    if ctx.port == 25 {
        causes.insert(
            0,
            "your ISP or cloud provider blocks outgoing port 25 (very common)",
        );
        todo.push(s(
            "Port 25 is for server-to-server mail: submit on port 587 (STARTTLS) or 465 (implicit TLS) instead.",
        ));
    }
    todo.push(s(
        "Try --port auto; check firewalls on both sides; confirm the address.",
    ));
    d(
        "connection_timeout",
        format!(
            "No answer from {}:{} within the timeout: the port is filtered (packets are dropped, not refused).",
            ctx.host, ctx.port
        ),
        &causes,
        todo,
    )
}

fn implicit_tls_port(ctx: &Ctx) -> Diagnosis {
    d(
        "implicit_tls_port",
        format!(
            "Port {} expects implicit TLS (465 style): it stays silent on a plain connection, but a TLS handshake works.",
            ctx.port
        ),
        &["the client is set to STARTTLS (or no encryption) on an implicit-TLS port"],
        vec![
            s(
                "Set the client's security to \"SSL/TLS\" (implicit TLS) for this port, or use STARTTLS on port 587.",
            ),
            format!("In `portcullis check`: --port {} --tls implicit.", ctx.port),
        ],
    )
}

fn starttls_port(greeting: &str, ctx: &Ctx) -> Diagnosis {
    d(
        "starttls_port",
        format!(
            "Port {} speaks STARTTLS (587 style): it answered the TLS handshake with a plain-text greeting ({greeting}).",
            ctx.port
        ),
        &["the client is set to implicit TLS (\"SSL/TLS\") on a STARTTLS port"],
        vec![
            s(
                "Set the client's security to \"STARTTLS\" for this port, or use implicit TLS on port 465.",
            ),
            format!("In `portcullis check`: --port {} --tls starttls.", ctx.port),
        ],
    )
}

fn tls_handshake(error: &str, ctx: &Ctx) -> Diagnosis {
    d(
        "tls_handshake_failed",
        format!("The TLS handshake with port {} failed: {error}.", ctx.port),
        &[
            "no TLS version or cipher in common (the server may only offer TLS 1.0/1.1, which current clients refuse)",
            "the server has no usable certificate configured",
            "a middlebox interferes with TLS",
        ],
        vec![
            s("Check the server's TLS configuration (certificate, key, TLS 1.2 or 1.3 enabled)."),
            s(
                "Test with: openssl s_client -connect HOST:PORT (add -starttls smtp for STARTTLS ports).",
            ),
        ],
    )
}

fn timeout(at: At, ctx: &Ctx) -> Diagnosis {
    d(
        "timeout",
        format!(
            "The server did not answer {} within the timeout.",
            at.label()
        ),
        &[
            "the server or its authentication backend is overloaded",
            "the server delays answers on purpose after failed logins (brute-force protection)",
            "a slow network",
        ],
        [s("Retry with a longer --timeout.")]
            .into_iter()
            .chain(audit_hint(ctx))
            .collect(),
    )
}

fn closed(at: At, ctx: &Ctx) -> Diagnosis {
    let mut causes = vec![
        "the server dropped the connection (crash, restart, or a policy such as too many errors)",
    ];
    if at == StepKind::Greeting {
        causes.insert(
            0,
            "the server refuses connections from this address (ban, blocklist, connection limit)",
        );
    }
    d(
        "connection_closed",
        format!("The server closed the connection during {}.", at.label()),
        &causes,
        [s(
            "Retry in a few minutes; if it persists, check the server's logs.",
        )]
        .into_iter()
        .chain(audit_hint(ctx))
        .collect(),
    )
}

fn starttls_not_offered(requested: bool, ctx: &Ctx) -> Diagnosis {
    let what = if requested {
        format!(
            "STARTTLS was requested but port {} does not offer it.",
            ctx.port
        )
    } else {
        format!(
            "Port {} does not offer STARTTLS, so the password would travel unencrypted; the check stopped before sending it.",
            ctx.port
        )
    };
    d(
        "starttls_not_offered",
        what,
        &[
            "TLS is not configured on this server or port",
            "a firewall or antivirus strips STARTTLS from the server's answer",
        ],
        vec![
            s("Use port 465 with implicit TLS, or enable TLS on the server."),
            s(
                "To test without encryption anyway: --tls none (never on a network you do not control).",
            ),
        ],
    )
}

fn auth_not_offered(tls: bool, starttls_offered: bool, ctx: &Ctx) -> Diagnosis {
    if !tls && starttls_offered {
        return d(
            "auth_requires_tls",
            format!(
                "Port {} offers AUTH only after STARTTLS; the connection is not encrypted.",
                ctx.port
            ),
            &["the client does not use STARTTLS (security set to \"none\")"],
            vec![s(
                "Set the client's security to STARTTLS on this port, or use port 465 with implicit TLS.",
            )],
        );
    }
    let mut todo = vec![s(
        "Submit mail on the submission port: 587 with STARTTLS or 465 with implicit TLS.",
    )];
    if ctx.port == 25 || ctx.port == 2525 {
        todo.insert(
            0,
            format!(
                "Port {} is for server-to-server mail and does not accept logins.",
                ctx.port
            ),
        );
    }
    d(
        "auth_not_offered",
        format!(
            "The server on port {} does not offer authentication (no AUTH in its EHLO answer).",
            ctx.port
        ),
        &[
            "this is an MX (inbound) port, not a submission port",
            "authentication is disabled on this server",
        ],
        todo,
    )
}

#[path = "diagnose_reply.rs"]
mod reply_rows;

#[cfg(test)]
#[path = "diagnose_tests.rs"]
mod tests;
