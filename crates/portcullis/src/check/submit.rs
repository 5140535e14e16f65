//! The steps after EHLO: AUTH, then MAIL FROM, RCPT TO and DATA when asked.
//! A child of `attempt.rs`, sharing its step bookkeeping.

use super::*;
use crate::check::sasl::{self, Mech};

/// A server that keeps answering 334 gets this many rounds, then `*`.
const MAX_SASL_ROUNDS: usize = 4;

impl Runner<'_> {
    pub(super) async fn auth(&mut self, conn: &mut Conn) -> Flow<()> {
        let (Some(user), Some(secret)) = (self.plan.user.clone(), self.plan.password.as_ref())
        else {
            return Ok(());
        };
        let password = secret.expose().to_owned();
        let password = zeroize::Zeroizing::new(password);
        let server = &self.attempt.server;
        let tls = conn.is_tls();
        let offered = if tls {
            server.auth_after_tls.clone()
        } else {
            server.auth_before_tls.clone()
        };
        let starttls_offered = has_keyword(&server.extensions_before_tls, "STARTTLS");
        let step = self.begin(StepKind::Auth);
        if offered.is_empty() {
            return self.fail(
                step,
                "the server offers no AUTH here".to_owned(),
                None,
                Failure::AuthNotOffered {
                    tls,
                    starttls_offered,
                },
            );
        }
        let mech = match Mech::choose(self.plan.mech, &offered) {
            Ok(mech) => mech,
            Err(mech) => {
                let summary = format!(
                    "AUTH {mech} is not offered (offered: {})",
                    offered.join(" ")
                );
                return self.fail(
                    step,
                    summary,
                    None,
                    Failure::MechNotOffered { mech, offered },
                );
            }
        };
        if !tls {
            self.finding(
                Severity::Warning,
                "the password was sent without encryption (--tls none)".to_owned(),
            );
        }
        self.attempt.server.auth_mechanism = Some(mech.name().to_owned());
        let reply = self.exchange(conn, step, mech, &user, &password).await?;
        if reply.code == 235 {
            let summary = format!("authenticated as {user} with {}", mech.name());
            self.pass(step, summary, Some(reply));
            return Ok(());
        }
        let failure = Failure::Rejected {
            at: StepKind::Auth,
            reply: reply.clone(),
        };
        self.fail(
            step,
            format!("{} refused: {}", mech.name(), reply.summary()),
            Some(reply),
            failure,
        )
    }

    /// Runs the SASL exchange of `mech` and returns the final reply.
    async fn exchange(
        &mut self,
        conn: &mut Conn,
        step: (StepKind, Instant),
        mech: Mech,
        user: &str,
        password: &str,
    ) -> Flow<Reply> {
        match mech {
            Mech::Plain => {
                let response = zeroize::Zeroizing::new(sasl::plain_response(user, password));
                let line = zeroize::Zeroizing::new(format!("AUTH PLAIN {}", response.as_str()));
                let reply = self.command(conn, step, &line).await?;
                if reply.code == 334 {
                    return self.sasl_rounds(conn, step, &[response.as_str()]).await;
                }
                Ok(reply)
            }
            Mech::Login => {
                let reply = self.command(conn, step, "AUTH LOGIN").await?;
                if reply.code != 334 {
                    return Ok(reply);
                }
                let user64 = sasl::encode(user);
                let pass64 = zeroize::Zeroizing::new(sasl::encode(password));
                self.sasl_rounds(conn, step, &[&user64, pass64.as_str()])
                    .await
            }
        }
    }

    /// Answers 334 challenges with `answers` in order; returns the first
    /// reply that is not a 334. Bounded by [`MAX_SASL_ROUNDS`].
    async fn sasl_rounds(
        &mut self,
        conn: &mut Conn,
        step: (StepKind, Instant),
        answers: &[&str],
    ) -> Flow<Reply> {
        let mut reply = None;
        for (round, answer) in answers.iter().chain(std::iter::repeat(&"*")).enumerate() {
            if round >= MAX_SASL_ROUNDS {
                break;
            }
            let next = self.command(conn, step, answer).await?;
            if next.code != 334 {
                return Ok(next);
            }
            reply = Some(next);
        }
        let failure = Failure::Protocol {
            at: StepKind::Auth,
            error: "the server kept sending challenges".to_owned(),
        };
        self.fail(step, "endless AUTH challenges".to_owned(), reply, failure)
    }

    pub(super) async fn envelope(&mut self, conn: &mut Conn) -> Flow<()> {
        if let Some(from) = self.plan.from.clone() {
            self.simple(conn, StepKind::Mail, &format!("MAIL FROM:<{from}>"), &[250])
                .await?;
        }
        if let Some(to) = self.plan.to.clone() {
            self.simple(
                conn,
                StepKind::Rcpt,
                &format!("RCPT TO:<{to}>"),
                &[250, 251],
            )
            .await?;
        }
        if self.plan.send {
            self.data(conn).await?;
        } else if self.plan.from.is_some() {
            // Nothing is sent without --send: end the transaction.
            let _ = conn.command("RSET").await;
        }
        Ok(())
    }

    async fn simple(
        &mut self,
        conn: &mut Conn,
        kind: StepKind,
        line: &str,
        good: &[u16],
    ) -> Flow<()> {
        let step = self.begin(kind);
        let reply = self.command(conn, step, line).await?;
        if good.contains(&reply.code) {
            self.pass(step, reply.summary(), Some(reply));
            return Ok(());
        }
        let failure = Failure::Rejected {
            at: kind,
            reply: reply.clone(),
        };
        self.fail(step, reply.summary(), Some(reply), failure)
    }

    async fn data(&mut self, conn: &mut Conn) -> Flow<()> {
        let step = self.begin(StepKind::Data);
        let reply = self.command(conn, step, "DATA").await?;
        if reply.code != 354 {
            let failure = Failure::Rejected {
                at: StepKind::Data,
                reply: reply.clone(),
            };
            return self.fail(step, reply.summary(), Some(reply), failure);
        }
        let message = test_message(
            self.plan.from.as_deref().unwrap_or(""),
            self.plan.to.as_deref().unwrap_or(""),
            &self.plan.host,
        );
        if let Err(e) = conn.send_raw(message.as_bytes()).await {
            return self.io_failure(step, e);
        }
        let reply = self.read(conn, step).await?;
        if reply.code == 250 {
            self.pass(
                step,
                format!("test message accepted: {}", reply.summary()),
                Some(reply),
            );
            return Ok(());
        }
        let failure = Failure::Rejected {
            at: StepKind::Data,
            reply: reply.clone(),
        };
        self.fail(step, reply.summary(), Some(reply), failure)
    }
}

/// A small RFC 5322 message with CRLF line endings, ending in `.`.
fn test_message(from: &str, to: &str, host: &str) -> String {
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    let id: u64 = rand::random();
    [
        format!("From: <{from}>"),
        format!("To: <{to}>"),
        "Subject: portcullis check test message".to_owned(),
        format!("Date: {date}"),
        format!("Message-ID: <{id:016x}@portcullis-check.invalid>"),
        "MIME-Version: 1.0".to_owned(),
        "Content-Type: text/plain; charset=us-ascii".to_owned(),
        String::new(),
        format!("This message was sent by `portcullis check` to test submission through {host}."),
        "You can delete it.".to_owned(),
        ".".to_owned(),
        String::new(),
    ]
    .join("\r\n")
}
