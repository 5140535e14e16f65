//! The steps of SCRAM-SHA-256 (RFC 5802/7677), CRAM-MD5 (RFC 2195) and the
//! bearer-token mechanisms XOAUTH2 and OAUTHBEARER (RFC 7628). Stored keys
//! come from `Action::LookupSecrets`; the verdict (account status, 2FA,
//! allowlists, brute force, audit) from `Action::Authenticate`, as for PLAIN.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{Action, Awaiting, SaslSecrets, Session, State};
use crate::reply::Reply;
use crate::sasl::scram::{self, ChannelBinding, ClientFirst, ScramKeys};
use crate::sasl::{
    CredentialRef, Credentials, Mechanism, SaslError, Secret, Verification, cram, oauth,
};

#[derive(Debug)]
pub(super) enum SaslStep {
    PlainResponse,
    LoginUsername,
    LoginPassword {
        username: String,
    },
    /// SCRAM: waiting for the client-first-message (no initial response);
    /// `plus` for SCRAM-SHA-256-PLUS.
    ScramFirst {
        plus: bool,
    },
    /// SCRAM: server-first sent, waiting for the client-final-message.
    ScramFinal(Box<ScramExchange>),
    /// CRAM-MD5: challenge sent, waiting for `user digest`.
    CramResponse {
        challenge: String,
    },
    /// XOAUTH2 / OAUTHBEARER without an initial response.
    BearerResponse(Mechanism),
    /// A server-final message with data was sent on success; the client
    /// answers with an empty response, then 235 (RFC 4954 4).
    SuccessAck {
        user: String,
    },
    /// Failure data was sent in a 334 (SCRAM `e=`, RFC 7628 JSON error); the
    /// client answers with a dummy response, then this reply.
    FailureAck(Reply),
}

/// The state of one SCRAM exchange between server-first and client-final.
#[derive(Debug)]
pub(super) struct ScramExchange {
    pub(super) plus: bool,
    pub(super) first: ClientFirst,
    pub(super) server_first: String,
    pub(super) server_nonce: String,
    pub(super) candidates: Vec<(CredentialRef, ScramKeys)>,
}

/// What the session does with the auth service's verdict for the
/// mechanism in progress.
#[derive(Debug, Default)]
pub(super) struct SaslAfter {
    /// Sent in a 334 before 235 (SCRAM server signature).
    pub(super) on_success: Option<String>,
    /// Sent in a 334 before the failure reply (SCRAM `e=`, OAuth JSON).
    pub(super) on_failure: Option<String>,
}

/// A lookup in flight for a challenge-response mechanism.
#[derive(Debug)]
pub(super) enum PendingSecrets {
    Scram {
        first: ClientFirst,
        plus: bool,
    },
    Cram {
        challenge: String,
        response: crate::sasl::cram::CramResponse,
    },
}

impl Session {
    /// A fresh nonce: 144 bits from HMAC-SHA-256(seed, counter), base64
    /// (no `,`, printable: RFC 5802 7). `None` when the driver gave no seed.
    fn next_nonce(&mut self) -> Option<String> {
        let seed = self.nonce_seed?;
        self.nonce_counter = self.nonce_counter.wrapping_add(1);
        let mut mac = Hmac::<Sha256>::new_from_slice(&seed).ok()?;
        mac.update(&self.nonce_counter.to_be_bytes());
        let out = mac.finalize().into_bytes();
        Some(STANDARD.encode(&out[..18]))
    }

    pub(super) fn scram_client_first(&mut self, message: &[u8], plus: bool) {
        let first = match scram::parse_client_first(message) {
            Ok(f) => f,
            Err(e) => return self.sasl_error(e),
        };
        // RFC 5802 6 / RFC 9266: -PLUS needs p=tls-exporter; plain SCRAM
        // takes n, or y when we do not offer -PLUS here (a "y" while we do
        // offer it means a downgrade: refused).
        let plus_offered = self
            .offered_mechanisms()
            .any(|m| m == Mechanism::ScramSha256Plus);
        let acceptable = match (&first.binding, plus) {
            (ChannelBinding::Required(name), true) => name == "tls-exporter",
            (_, true) => false,
            (ChannelBinding::None, false) => true,
            (ChannelBinding::ClientOnly, false) => !plus_offered,
            (ChannelBinding::Required(_), false) => false,
        };
        if !acceptable {
            return self.sasl_error(SaslError::Malformed);
        }
        if self.nonce_seed.is_none() {
            return self.reply(Reply::auth_temp_failure());
        }
        self.pending.push_back(Action::LookupSecrets {
            mechanism: Mechanism::ScramSha256,
            username: first.username.clone(),
        });
        self.state = State::Await(Awaiting::Secrets(Box::new(PendingSecrets::Scram {
            first,
            plus,
        })));
    }

    /// Result of `Action::LookupSecrets`.
    pub fn secrets_result(&mut self, secrets: SaslSecrets) {
        let State::Await(Awaiting::Secrets(_)) = &self.state else {
            return;
        };
        let State::Await(Awaiting::Secrets(pending)) =
            std::mem::replace(&mut self.state, State::Command)
        else {
            return;
        };
        match (*pending, secrets) {
            (
                PendingSecrets::Scram { first, plus },
                SaslSecrets::Scram {
                    salt,
                    iterations,
                    candidates,
                },
            ) => {
                let Some(server_nonce) = self.next_nonce() else {
                    return self.reply(Reply::auth_temp_failure());
                };
                let server_first =
                    scram::server_first(&first.client_nonce, &server_nonce, &salt, iterations);
                let challenge = STANDARD.encode(&server_first);
                let exchange = ScramExchange {
                    plus,
                    first,
                    server_first,
                    server_nonce,
                    candidates,
                };
                self.challenge(&challenge, SaslStep::ScramFinal(Box::new(exchange)));
            }
            (
                PendingSecrets::Cram {
                    challenge,
                    response,
                },
                SaslSecrets::Cram(secrets),
            ) => {
                let matched = secrets
                    .iter()
                    .find(|(_, secret)| {
                        cram::verify(secret.expose().as_bytes(), &challenge, &response)
                    })
                    .map(|(credential, _)| credential.clone());
                let hex: String = response.digest.iter().map(|b| format!("{b:02x}")).collect();
                self.authenticate(Credentials {
                    mechanism: Mechanism::CramMd5,
                    authzid: None,
                    username: response.username,
                    password: Secret::new(hex),
                    verification: Verification::Matched(matched),
                });
            }
            _ => self.reply(Reply::auth_temp_failure()),
        }
    }

    pub(super) fn scram_client_final(&mut self, exchange: ScramExchange, message: &[u8]) {
        let fin = match scram::parse_client_final(message) {
            Ok(f) => f,
            Err(e) => return self.sasl_error(e),
        };
        let expected_nonce = format!("{}{}", exchange.first.client_nonce, exchange.server_nonce);
        if fin.nonce != expected_nonce {
            let e = STANDARD.encode("e=other-error");
            return self.challenge(&e, SaslStep::FailureAck(Reply::malformed_sasl()));
        }
        // c= is the GS2 header, followed by the tls-exporter data for -PLUS.
        let mut expected = exchange.first.gs2_header.as_bytes().to_vec();
        if exchange.plus {
            match &self.channel_binding {
                Some(data) => expected.extend_from_slice(data),
                None => return self.reply(Reply::auth_temp_failure()),
            }
        }
        let matches: bool =
            subtle::ConstantTimeEq::ct_eq(&fin.channel_binding[..], &expected[..]).into();
        if !matches {
            let e = STANDARD.encode("e=channel-bindings-dont-match");
            return self.challenge(&e, SaslStep::FailureAck(Reply::malformed_sasl()));
        }
        let auth_message = scram::auth_message(
            &exchange.first.bare,
            &exchange.server_first,
            &fin.without_proof,
        );
        let matched = exchange
            .candidates
            .iter()
            .find(|(_, keys)| scram::verify_proof(keys, &auth_message, &fin.proof));
        self.sasl_after.on_failure = Some(STANDARD.encode("e=invalid-proof"));
        self.sasl_after.on_success =
            matched.map(|(_, keys)| STANDARD.encode(scram::server_final(keys, &auth_message)));
        let first = exchange.first;
        self.authenticate(Credentials {
            mechanism: if exchange.plus {
                Mechanism::ScramSha256Plus
            } else {
                Mechanism::ScramSha256
            },
            authzid: first.authzid,
            username: first.username,
            password: Secret::new(STANDARD.encode(fin.proof)),
            verification: Verification::Matched(matched.map(|(c, _)| c.clone())),
        });
    }

    pub(super) fn start_cram(&mut self) {
        let Some(token) = self.next_nonce() else {
            return self.reply(Reply::auth_temp_failure());
        };
        // Base64 digits only, so the msg-id stays well-formed.
        let token: String = token.chars().filter(char::is_ascii_alphanumeric).collect();
        let challenge = cram::challenge(&token, &self.cfg.hostname);
        let encoded = STANDARD.encode(&challenge);
        self.challenge(&encoded, SaslStep::CramResponse { challenge });
    }

    pub(super) fn cram_response(&mut self, challenge: String, message: &[u8]) {
        let response = match cram::parse_response(message) {
            Ok(r) => r,
            Err(e) => return self.sasl_error(e),
        };
        self.pending.push_back(Action::LookupSecrets {
            mechanism: Mechanism::CramMd5,
            username: response.username.clone(),
        });
        self.state = State::Await(Awaiting::Secrets(Box::new(PendingSecrets::Cram {
            challenge,
            response,
        })));
    }

    pub(super) fn bearer_response(&mut self, mechanism: Mechanism, message: &[u8]) {
        let (parsed, error) = if mechanism == Mechanism::OAuthBearer {
            (oauth::parse_oauthbearer(message), oauth::OAUTHBEARER_ERROR)
        } else {
            (oauth::parse_xoauth2(message), oauth::XOAUTH2_ERROR)
        };
        let response = match parsed {
            Ok(r) => r,
            Err(e) => return self.sasl_error(e),
        };
        // RFC 7628 3.2.2: the error goes in a 334; the client answers with a
        // dummy response; then the final failure reply.
        self.sasl_after.on_failure = Some(STANDARD.encode(error));
        self.authenticate(Credentials {
            mechanism,
            authzid: None,
            username: response.user,
            password: Secret::new(response.token),
            verification: Verification::Token,
        });
    }
}
