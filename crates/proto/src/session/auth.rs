//! AUTH (RFC 4954) with PLAIN (RFC 4616) and LOGIN. Decodes what the client
//! sends; the credential check happens outside, via `Action::Authenticate`.
//! The other mechanisms' steps are in `sasl_mechs.rs`; the per-listener
//! mechanism list (issue 6) is enforced here.

use super::{Action, AuthOutcome, Awaiting, Role, SaslAfter, SaslStep, Session, State};
use crate::reply::Reply;
use crate::sasl::{
    self, Credentials, LOGIN_PASSWORD_PROMPT, LOGIN_USERNAME_PROMPT, Mechanism, SaslError, Secret,
    Verification,
};

impl Session {
    pub(super) fn handle_auth(&mut self, mechanism: &str, initial: Option<String>) {
        if self.cfg.role == Role::Mx {
            return self.reply(Reply::auth_not_available());
        }
        if !self.tls {
            // RFC 4954 4 / RFC 3207: no credentials over plaintext.
            return self.reply(Reply::encryption_required());
        }
        if !self.helo.as_ref().is_some_and(|h| h.esmtp) {
            return self.reply(Reply::bad_sequence("Send EHLO first"));
        }
        if self.auth_user.is_some() {
            return self.reply(Reply::bad_sequence("Already authenticated"));
        }
        if self.tx.is_some() {
            return self.reply(Reply::bad_sequence(
                "AUTH not allowed during a mail transaction",
            ));
        }
        let Some(mech) =
            Mechanism::parse(mechanism).filter(|m| self.offered_mechanisms().any(|o| o == *m))
        else {
            return self.reply(Reply::unknown_mechanism());
        };
        self.sasl_after = SaslAfter::default();
        match (mech, initial) {
            (Mechanism::Plain, None) => self.challenge("", SaslStep::PlainResponse),
            (Mechanism::Login, None) => {
                self.challenge(LOGIN_USERNAME_PROMPT, SaslStep::LoginUsername)
            }
            (Mechanism::Plain, Some(ir)) => self.continue_sasl(SaslStep::PlainResponse, &ir),
            (Mechanism::Login, Some(ir)) => self.continue_sasl(SaslStep::LoginUsername, &ir),
            (m @ (Mechanism::ScramSha256 | Mechanism::ScramSha256Plus), None) => {
                let plus = m == Mechanism::ScramSha256Plus;
                self.challenge("", SaslStep::ScramFirst { plus })
            }
            (m @ (Mechanism::ScramSha256 | Mechanism::ScramSha256Plus), Some(ir)) => {
                let plus = m == Mechanism::ScramSha256Plus;
                self.continue_sasl(SaslStep::ScramFirst { plus }, &ir)
            }
            // RFC 2195: the server speaks first; no initial response.
            (Mechanism::CramMd5, Some(_)) => self.sasl_error(SaslError::Malformed),
            (Mechanism::CramMd5, None) => self.start_cram(),
            (m @ (Mechanism::XOAuth2 | Mechanism::OAuthBearer), None) => {
                self.challenge("", SaslStep::BearerResponse(m))
            }
            (m @ (Mechanism::XOAuth2 | Mechanism::OAuthBearer), Some(ir)) => {
                self.continue_sasl(SaslStep::BearerResponse(m), &ir)
            }
        }
    }

    pub(super) fn challenge(&mut self, prompt: &str, step: SaslStep) {
        self.pending
            .push_back(Action::Send(Reply::auth_challenge(prompt)));
        self.state = State::Sasl(step);
    }

    pub(super) fn handle_sasl_line(&mut self, line: &[u8]) {
        let step = match std::mem::replace(&mut self.state, State::Command) {
            State::Sasl(step) => step,
            other => {
                self.state = other;
                return;
            }
        };
        match std::str::from_utf8(line) {
            Ok(text) => self.continue_sasl(step, text),
            Err(_) => self.sasl_error(SaslError::BadBase64),
        }
    }

    fn continue_sasl(&mut self, step: SaslStep, response: &str) {
        self.state = State::Command;
        let decoded = match (step, sasl::decode_response(response)) {
            (SaslStep::FailureAck(reply), _) => return self.finish_failure(reply),
            (SaslStep::SuccessAck { .. }, Err(e)) => return self.sasl_error(e),
            (SaslStep::SuccessAck { user }, Ok(_)) => {
                self.auth_user = Some(user);
                return self.reply(Reply::auth_ok());
            }
            (step, Ok(d)) => (step, d),
            (_, Err(e)) => return self.sasl_error(e),
        };
        let (step, decoded) = decoded;
        match step {
            SaslStep::PlainResponse => match sasl::decode_plain(&decoded) {
                Ok(creds) => self.authenticate(creds),
                Err(e) => self.sasl_error(e),
            },
            SaslStep::LoginUsername => match sasl::decode_login_field(&decoded) {
                Ok(username) => {
                    self.challenge(LOGIN_PASSWORD_PROMPT, SaslStep::LoginPassword { username })
                }
                Err(e) => self.sasl_error(e),
            },
            SaslStep::LoginPassword { username } => match sasl::decode_login_field(&decoded) {
                Ok(password) => self.authenticate(Credentials {
                    mechanism: Mechanism::Login,
                    authzid: None,
                    username,
                    password: Secret::new(password),
                    verification: Verification::Password,
                }),
                Err(e) => self.sasl_error(e),
            },
            SaslStep::ScramFirst { plus } => self.scram_client_first(&decoded, plus),
            SaslStep::ScramFinal(exchange) => self.scram_client_final(*exchange, &decoded),
            SaslStep::CramResponse { challenge } => self.cram_response(challenge, &decoded),
            SaslStep::BearerResponse(mech) => self.bearer_response(mech, &decoded),
            SaslStep::SuccessAck { .. } | SaslStep::FailureAck(_) => {}
        }
    }

    pub(super) fn sasl_error(&mut self, e: SaslError) {
        self.state = State::Command;
        self.reply(match e {
            SaslError::Cancelled => Reply::auth_cancelled(),
            SaslError::BadBase64 => Reply::bad_base64(),
            SaslError::Malformed => Reply::malformed_sasl(),
        });
    }

    pub(super) fn authenticate(&mut self, creds: Credentials) {
        self.pending.push_back(Action::Authenticate(creds));
        self.state = State::Await(Awaiting::Auth);
    }

    /// Result of `Action::Authenticate`.
    pub fn auth_result(&mut self, outcome: AuthOutcome) {
        if !matches!(self.state, State::Await(Awaiting::Auth)) {
            return;
        }
        self.state = State::Command;
        let after = std::mem::take(&mut self.sasl_after);
        match outcome {
            AuthOutcome::Success { user } => match after.on_success {
                Some(data) => self.challenge(&data, SaslStep::SuccessAck { user }),
                None => {
                    self.auth_user = Some(user);
                    self.reply(Reply::auth_ok());
                }
            },
            AuthOutcome::TemporaryFailure => self.reply(Reply::auth_temp_failure()),
            AuthOutcome::Failed | AuthOutcome::AppPasswordRequired => {
                let reply = if outcome == AuthOutcome::Failed {
                    Reply::auth_failed()
                } else {
                    Reply::app_password_required()
                };
                match after.on_failure {
                    Some(data) => self.challenge(&data, SaslStep::FailureAck(reply)),
                    None => self.finish_failure(reply),
                }
            }
        }
    }

    /// Sends the failure reply of an AUTH attempt and enforces the budget.
    pub(super) fn finish_failure(&mut self, reply: Reply) {
        self.auth_failures += 1;
        self.reply(reply);
        if self.auth_failures >= self.cfg.max_auth_failures && !matches!(self.state, State::Closed)
        {
            self.close_with(Reply::too_many_auth_failures());
        }
    }
}
