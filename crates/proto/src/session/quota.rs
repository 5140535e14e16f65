//! Sending-plan and rate checks (issue 5): the session asks, the driver's
//! quota service answers. Plan limits apply per accepted recipient at RCPT;
//! the per-IP message rate of the MX listener applies at MAIL.

use super::{Action, Awaiting, QuotaOutcome, Session, State, Transaction};
use crate::address::{ForwardPath, ReversePath};
use crate::command::MailParams;
use crate::reply::Reply;

impl Session {
    /// Effective recipient limit: the listener's, tightened by the plan.
    pub(super) fn max_recipients(&self) -> usize {
        self.account_max_recipients
            .map_or(self.cfg.max_recipients, |m| m.min(self.cfg.max_recipients))
    }

    /// Effective message size limit: the listener's, tightened by the plan.
    pub(super) fn max_message_size(&self) -> u64 {
        self.account_max_message_size
            .map_or(self.cfg.max_message_size, |m| {
                m.min(self.cfg.max_message_size)
            })
    }

    /// Per-account limits from the sending plan; the driver calls this after a
    /// successful AUTH and whenever it re-reads the plan (a plan change
    /// applies to open sessions at their next command).
    pub fn set_account_limits(
        &mut self,
        max_recipients: Option<usize>,
        max_message_size: Option<u64>,
    ) {
        self.account_max_recipients = max_recipients;
        self.account_max_message_size = max_message_size;
    }

    /// A recipient passed every other check: count it against the plan when
    /// authenticated, otherwise accept it.
    pub(super) fn accept_recipient(&mut self, to: ForwardPath) {
        match self.auth_user.clone() {
            Some(user) => {
                self.pending.push_back(Action::ReserveQuota { user });
                self.state = State::Await(Awaiting::Quota(to));
            }
            None => self.add_recipient(to),
        }
    }

    fn add_recipient(&mut self, to: ForwardPath) {
        if let Some(tx) = &mut self.tx {
            tx.rcpts.push(to);
        }
        self.reply(Reply::recipient_ok());
    }

    /// Result of `Action::ReserveQuota`.
    pub fn quota_result(&mut self, outcome: QuotaOutcome) {
        let to = match std::mem::replace(&mut self.state, State::Command) {
            State::Await(Awaiting::Quota(to)) => to,
            other => {
                self.state = other;
                return;
            }
        };
        match outcome {
            QuotaOutcome::Granted => {
                if let Some(tx) = &mut self.tx {
                    tx.quota_reserved += 1;
                }
                self.add_recipient(to);
            }
            QuotaOutcome::Refused(reply) => self.reply(reply),
            QuotaOutcome::TemporaryFailure => self.reply(Reply::internal_error()),
        }
    }

    /// MAIL passed its own checks: on the MX listener, ask for the per-IP
    /// message rate first.
    pub(super) fn open_transaction(
        &mut self,
        from: ReversePath,
        params: MailParams,
        rate_checked: bool,
    ) {
        if !rate_checked && self.auth_user.is_none() && self.cfg.role == super::Role::Mx {
            self.pending.push_back(Action::CheckMailRate);
            self.state = State::Await(Awaiting::MailRate(Box::new((from, params))));
            return;
        }
        self.tx = Some(Transaction {
            from,
            params,
            rcpts: Vec::new(),
            bdat: None,
            message_started: false,
            quota_reserved: 0,
        });
        self.reply(Reply::sender_ok());
    }

    /// Result of `Action::CheckMailRate`.
    pub fn mail_rate_result(&mut self, outcome: QuotaOutcome) {
        let pending = match std::mem::replace(&mut self.state, State::Command) {
            State::Await(Awaiting::MailRate(p)) => p,
            other => {
                self.state = other;
                return;
            }
        };
        match outcome {
            QuotaOutcome::Granted => {
                let (from, params) = *pending;
                self.open_transaction(from, params, true);
            }
            QuotaOutcome::Refused(reply) => self.reply(reply),
            QuotaOutcome::TemporaryFailure => self.reply(Reply::internal_error()),
        }
    }
}
