//! MAIL FROM (RFC 5321 4.1.1.2, RFC 1870 SIZE, RFC 6531 SMTPUTF8) and RCPT TO
//! (4.1.1.3) with the relay rule.
//!
//! Relay rule: permission to send to a non-local domain comes only from a
//! successful AUTH on this connection — never from the sender address, the
//! `AUTH=` MAIL parameter, the EHLO name, or a failed or cancelled AUTH. It is
//! decided on the parsed domain; routing hints in the local part (`%`, `!`,
//! quoted `@`) are refused for unauthenticated clients.

use super::{Action, Awaiting, RecipientStatus, Role, SenderVerdict, Session, State};
use crate::address::{Domain, ForwardPath, Mailbox, ReversePath};
use crate::command::MailParams;
use crate::reply::Reply;

impl Session {
    pub(super) fn handle_mail(&mut self, from: ReversePath, params: MailParams) {
        if self.helo.is_none() {
            return self.reply(Reply::bad_sequence("Send EHLO/HELO first"));
        }
        if self.tx.is_some() {
            return self.reply(Reply::bad_sequence("Sender already specified"));
        }
        if self.cfg.role != Role::Mx && self.auth_user.is_none() {
            // RFC 6409 4.3 / RFC 4954 6.
            return self.reply(Reply::auth_required());
        }
        if params.size.is_some_and(|s| s > self.max_message_size()) {
            // RFC 1870 6.
            return self.reply(Reply::size_exceeded_at_mail(self.max_message_size()));
        }
        if let ReversePath::Mailbox(m) = &from
            && m.is_utf8()
            && !params.smtputf8
        {
            return self.reply(Reply::non_ascii_without_smtputf8());
        }
        if let (Some(user), ReversePath::Mailbox(m)) = (&self.auth_user, &from) {
            // Sender ownership (issue 4): an account sends only as itself,
            // its aliases and what it was granted.
            self.pending.push_back(Action::CheckSender {
                user: user.clone(),
                sender: m.to_string(),
            });
            self.state = State::Await(Awaiting::Sender(Box::new((from, params))));
            return;
        }
        self.open_transaction(from, params, false);
    }

    /// Result of `Action::CheckSender`.
    pub fn sender_result(&mut self, verdict: SenderVerdict) {
        let pending = match std::mem::replace(&mut self.state, State::Command) {
            State::Await(Awaiting::Sender(p)) => p,
            other => {
                self.state = other;
                return;
            }
        };
        match verdict {
            SenderVerdict::Allowed => {
                let (from, params) = *pending;
                self.open_transaction(from, params, false);
            }
            SenderVerdict::NotOwned => self.reply(Reply::sender_not_owned()),
            SenderVerdict::TemporaryFailure => self.reply(Reply::internal_error()),
        }
    }

    pub(super) fn handle_rcpt(&mut self, to: ForwardPath) {
        let Some(tx) = &self.tx else {
            return self.reply(Reply::bad_sequence("Need MAIL command first"));
        };
        if tx.message_started {
            return self.reply(Reply::bad_sequence("RCPT not allowed after BDAT"));
        }
        if tx.rcpts.len() >= self.max_recipients() {
            // RFC 5321 4.5.3.1.10: 452 and the client retries the rest later.
            return self.reply(Reply::too_many_recipients());
        }
        let smtputf8 = tx.params.smtputf8;
        let mailbox = match to {
            // RFC 5321 4.5.1: Postmaster without a domain is always accepted.
            ForwardPath::Postmaster => return self.accept_recipient(ForwardPath::Postmaster),
            ForwardPath::Mailbox(m) => m,
        };
        if mailbox.is_utf8() && !smtputf8 {
            return self.reply(Reply::non_ascii_without_smtputf8());
        }
        let authenticated = self.auth_user.is_some();
        if !authenticated && mailbox.has_routing_hint() {
            return self.reply(Reply::relay_denied());
        }
        match mailbox.domain {
            // An address literal is never one of our domains.
            Domain::Literal(_) if authenticated => {
                self.accept_recipient(ForwardPath::Mailbox(mailbox))
            }
            Domain::Literal(_) => self.reply(Reply::relay_denied()),
            Domain::Name(_) => {
                self.pending
                    .push_back(Action::CheckRecipient(mailbox.clone()));
                self.state = State::Await(Awaiting::Recipient(mailbox));
            }
        }
    }

    /// Result of `Action::CheckRecipient`.
    pub fn recipient_result(&mut self, status: RecipientStatus) {
        let mailbox = match std::mem::replace(&mut self.state, State::Command) {
            State::Await(Awaiting::Recipient(m)) => m,
            other => {
                self.state = other;
                return;
            }
        };
        let authenticated = self.auth_user.is_some();
        match status {
            RecipientStatus::LocalExists => self.accept_recipient(ForwardPath::Mailbox(mailbox)),
            // RFC 5321 4.5.1: postmaster@ every local domain must work.
            RecipientStatus::LocalUnknown if is_postmaster(&mailbox) => {
                self.accept_recipient(ForwardPath::Mailbox(mailbox))
            }
            RecipientStatus::LocalUnknown => self.reply(Reply::unknown_user()),
            RecipientStatus::NotLocal if authenticated => {
                self.accept_recipient(ForwardPath::Mailbox(mailbox))
            }
            RecipientStatus::NotLocal => self.reply(Reply::relay_denied()),
            RecipientStatus::TemporaryFailure => self.reply(Reply::internal_error()),
        }
    }
}

fn is_postmaster(m: &Mailbox) -> bool {
    m.local.eq_ignore_ascii_case("postmaster")
}
