//! EHLO/HELO (RFC 5321 4.1.1.1) and STARTTLS (RFC 3207).

use super::{Action, Awaiting, Helo, Role, Session, State};
use crate::reply::Reply;

impl Session {
    /// Whether AUTH is offered now: never on the MX role, only over TLS.
    pub(super) fn auth_offered(&self) -> bool {
        self.cfg.role != Role::Mx && self.tls
    }

    /// The listener's mechanisms that work on this connection: -PLUS only
    /// with channel-binding data.
    pub(super) fn offered_mechanisms(&self) -> impl Iterator<Item = crate::sasl::Mechanism> + '_ {
        self.cfg.mechanisms.iter().copied().filter(|m| {
            *m != crate::sasl::Mechanism::ScramSha256Plus || self.channel_binding.is_some()
        })
    }

    fn starttls_offered(&self) -> bool {
        self.cfg.starttls && !self.tls && self.cfg.role != Role::Submissions
    }

    pub(super) fn handle_ehlo(&mut self, name: String, esmtp: bool) {
        // RFC 5321 4.1.4: EHLO/HELO resets any transaction.
        self.reset_transaction();
        let reply = if esmtp {
            let mut ext = vec![
                "PIPELINING".to_owned(),
                format!("SIZE {}", self.cfg.max_message_size),
                "8BITMIME".to_owned(),
                "SMTPUTF8".to_owned(),
                "ENHANCEDSTATUSCODES".to_owned(),
                "CHUNKING".to_owned(),
            ];
            if self.starttls_offered() {
                ext.push("STARTTLS".to_owned());
            }
            let names: Vec<&str> = self.offered_mechanisms().map(|m| m.name()).collect();
            if self.auth_offered() && self.auth_user.is_none() && !names.is_empty() {
                ext.push(format!("AUTH {}", names.join(" ")));
            }
            Reply::ehlo(&self.cfg.hostname, &name, &ext)
        } else {
            Reply::helo(&self.cfg.hostname)
        };
        self.helo = Some(Helo { name, esmtp });
        self.reply(reply);
    }

    pub(super) fn handle_starttls(&mut self) {
        if self.tls {
            return self.reply(Reply::bad_sequence("TLS already active"));
        }
        if !self.starttls_offered() {
            return self.reply(Reply::not_implemented());
        }
        self.reset_transaction();
        // CVE-2011-0411: anything pipelined after STARTTLS is plaintext that
        // must never be read as commands of the TLS session.
        self.input.clear();
        self.pending
            .push_back(Action::Send(Reply::starttls_ready()));
        self.pending.push_back(Action::StartTls);
        self.state = State::Await(Awaiting::Tls);
    }
}
