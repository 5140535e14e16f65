//! The reply-code rows of the table: a server reply that refused a step
//! (RFC 5321 4.2.3 codes, RFC 3463 enhanced codes, RFC 4954 AUTH codes).

use super::*;
use crate::check::reply::Reply;

/// A reply that refused a step: the heart of the table.
pub(super) fn rejected(at: At, reply: &Reply, ctx: &Ctx) -> Diagnosis {
    let what = format!(
        "The server answered {} with: {}",
        at.label(),
        reply.summary()
    );
    match reply.code {
        421 => service_unavailable(what, reply, ctx),
        535 => credentials_rejected(what, ctx),
        534 => app_password_required(what, reply, ctx),
        538 => encryption_required(what, ctx),
        530 if reply.mentions("tls") => encryption_required(what, ctx),
        530 => auth_required(what, ctx),
        454 => temporary_failure(what, at, ctx),
        554 | 550 if at == StepKind::Greeting => service_unavailable(what, reply, ctx),
        553 | 550 | 554 if at == StepKind::Mail || reply.has_enhanced("5.7.1") => {
            policy_rejection(what, at, reply, ctx)
        }
        504 if at == StepKind::Auth => d(
            "mechanism_not_offered",
            what,
            &["the server does not support this authentication mechanism"],
            vec![s(
                "Use a mechanism the server lists after AUTH in its EHLO answer (leave out --mech).",
            )],
        ),
        502 | 503 if at == StepKind::Auth => auth_not_offered(ctx.tls != TlsUsed::None, false, ctx),
        550 | 551 | 553 if at == StepKind::Rcpt => d(
            "recipient_rejected",
            what,
            &["the recipient address does not exist or is misspelt"],
            vec![s("Check the recipient address.")],
        ),
        451 | 452 if reply.mentions("limit") || reply.has_enhanced("4.7.1") => d(
            "rate_limited",
            what,
            &["the account or this address reached its sending limit"],
            vec![s(
                "Wait as the reply says, or ask for a higher sending plan.",
            )],
        ),
        500..=599 if at == StepKind::Ehlo || at == StepKind::EhloAfterTls => d(
            "ehlo_rejected",
            what,
            &["the server does not accept the name this client sends with EHLO"],
            vec![s(
                "Send a real host name: in `portcullis check`, --ehlo your.host.name; in a mail client, its \"local host name\" or \"HELO\" setting.",
            )],
        ),
        code if code >= 500 => generic(what, "permanent_rejection", true, ctx),
        _ => generic(what, "temporary_rejection", false, ctx),
    }
}

fn credentials_rejected(what: String, ctx: &Ctx) -> Diagnosis {
    let mut todo = Vec::new();
    let mut causes = vec![
        "wrong password (typo, old password, or a stray space or newline)",
        "the username is not the full email address",
        "the account uses two-factor authentication and needs an app password",
        "the account is disabled",
        "logins are not allowed from this IP address",
    ];
    match ctx.user.as_deref() {
        Some(user) if !user.contains('@') => {
            causes.swap(0, 1);
            todo.push(format!(
                "Use the full email address as the username, not \"{user}\"."
            ));
        }
        _ => todo.push(s("Check that the username is the full email address.")),
    }
    todo.push(s("Re-enter the password, or reset it (on Portcullis: `portcullis account passwd EMAIL --password-stdin`)."));
    todo.push(s(
        "If the account has two-factor authentication, create an app password and use it instead.",
    ));
    todo.extend(audit_hint(ctx));
    d("credentials_rejected", what, &causes, todo)
}

fn app_password_required(what: String, reply: &Reply, ctx: &Ctx) -> Diagnosis {
    let web_login = reply.mentions("web") || reply.has_enhanced("5.7.14");
    let mut todo = vec![s(
        "Create an app password for this mail client and use it instead of the account password (on Portcullis: `portcullis app-password add EMAIL --name CLIENT`).",
    )];
    if web_login {
        todo.push(s(
            "Log in once through the provider's web page to unlock the account.",
        ));
    }
    todo.extend(audit_hint(ctx));
    d(
        "app_password_required",
        what,
        &["the account has two-factor authentication, so its main password does not work for SMTP"],
        todo,
    )
}

fn encryption_required(what: String, ctx: &Ctx) -> Diagnosis {
    d(
        "encryption_required",
        what,
        &["the client tried to log in before starting TLS"],
        vec![
            format!(
                "Use STARTTLS on port {} (or port 587), or implicit TLS on port 465.",
                ctx.port
            ),
            s("In `portcullis check`: leave out --tls none."),
        ],
    )
}

fn auth_required(what: String, ctx: &Ctx) -> Diagnosis {
    d(
        "authentication_required",
        what,
        &["the client does not log in (\"my server requires authentication\" is off)"],
        [
            s("Enable SMTP authentication in the client, with the full email address as username."),
            s("In `portcullis check`: pass --user and --password-stdin or --password-env."),
        ]
        .into_iter()
        .chain(
            (ctx.port == 25)
                .then(|| s("Port 25 never accepts logins on most servers: use 587 or 465.")),
        )
        .collect(),
    )
}

fn temporary_failure(what: String, at: At, ctx: &Ctx) -> Diagnosis {
    let causes: &[&str] = if at == StepKind::Starttls {
        &["TLS is temporarily unavailable on the server (certificate or key problem)"]
    } else {
        &[
            "the server cannot check credentials right now (database or directory down)",
            "a temporary limit on the server",
        ]
    };
    d(
        "temporary_server_failure",
        what,
        causes,
        [s("This is a server-side problem: retry later; if it persists, tell the server's administrator.")]
            .into_iter()
            .chain(audit_hint(ctx))
            .collect(),
    )
}

fn service_unavailable(what: String, reply: &Reply, ctx: &Ctx) -> Diagnosis {
    let banned = reply.mentions("authentication failures") || reply.mentions("banned");
    let mut causes = vec![
        "too many failed logins from this IP address: the server blocks it for a while",
        "too many connections from this address",
        "the server is shutting down or overloaded",
    ];
    if !banned {
        causes.rotate_left(1);
    }
    let mut todo = vec![
        s("Wait before retrying; a temporary block usually lifts by itself."),
        s(
            "Look for a device or app on your network that keeps retrying with an old password, and fix or stop it.",
        ),
    ];
    if ctx.portcullis || banned {
        todo.push(s(
            "On a Portcullis server the administrator can run `portcullis ban list` and `portcullis ban remove IP`, and `portcullis audit summary` to see which failures caused it.",
        ));
    }
    d("service_unavailable", what, &causes, todo)
}

fn policy_rejection(what: String, at: At, reply: &Reply, ctx: &Ctx) -> Diagnosis {
    if reply.mentions("relay") {
        return d(
            "relay_denied",
            what,
            &["the client did not log in, so the server refuses to relay to other domains"],
            vec![s(
                "Enable SMTP authentication in the client (--user in `portcullis check`).",
            )],
        );
    }
    let from = ctx.from.as_deref().unwrap_or("the sender address");
    let mut todo = vec![format!(
        "Send as the address you logged in with, or have {from} granted to the account."
    )];
    if ctx.portcullis {
        let user = ctx.user.as_deref().unwrap_or("EMAIL");
        todo.push(format!(
            "On Portcullis: `portcullis account allow-sender {user} {from}` (or @DOMAIN for a whole domain)."
        ));
    }
    d(
        "sender_not_allowed",
        what,
        &[if at == StepKind::Data {
            "the From: header is an address the account may not use"
        } else {
            "the MAIL FROM address is not owned by the account that logged in"
        }],
        todo,
    )
}

fn generic(what: String, cause: &'static str, permanent: bool, ctx: &Ctx) -> Diagnosis {
    let todo = if permanent {
        s("The server refused permanently: the reply text says why; fix the cause before retrying.")
    } else {
        s("A temporary refusal: retry later.")
    };
    d(
        cause,
        what,
        &["a server policy; the reply text says which"],
        [todo].into_iter().chain(audit_hint(ctx)).collect(),
    )
}
