//! The SMTP session state machine (STYLE 2): `push` bytes, `poll` actions,
//! feed back the results of the actions that need I/O. Never awaits.
//!
//! Driver contract: call [`Session::poll`] in a loop and perform each action.
//! `NeedInput`: flush pending replies, read, `push` (or `eof`). `StartTls`:
//! handshake, then `tls_started`. `Authenticate` → `auth_result`;
//! `CheckRecipient` → `recipient_result`; `EndMessage` → `message_result`.
//! The submodules hold one SMTP stage each.

mod auth;
mod data;
mod ehlo;
mod envelope;
mod input;
mod quota;
mod sasl_mechs;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use crate::address::{ForwardPath, Mailbox, ReversePath};
use crate::command::{Command, MailParams, parse_command};
use crate::data::BodyDecoder;
use crate::reply::Reply;
use crate::sasl::scram::ScramKeys;
use crate::sasl::{CredentialRef, Credentials, Mechanism, Secret};
use sasl_mechs::{PendingSecrets, SaslAfter, SaslStep};

/// Which listener the session serves; decides what is offered and required.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Port 25: mail for local domains only; no AUTH; STARTTLS offered.
    Mx,
    /// Port 587 (RFC 6409): STARTTLS, AUTH only after TLS, AUTH required.
    Submission,
    /// Port 465 (RFC 8314): implicit TLS, AUTH required.
    Submissions,
}

/// Limits and identity of a session; all from configuration.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub role: Role,
    pub hostname: String,
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// Including CRLF (RFC 5321 4.5.3.1.4: at least 512).
    pub max_command_line: usize,
    /// Including CRLF (RFC 5321 4.5.3.1.6: at least 1000).
    pub max_text_line: usize,
    /// 5xx replies tolerated before `421` and close.
    pub max_errors: u32,
    /// Failed AUTH attempts tolerated before `421` and close.
    pub max_auth_failures: u32,
    /// Whether STARTTLS can be offered (a certificate is loaded).
    pub starttls: bool,
    /// SASL mechanisms offered after TLS, in EHLO order (issue 6); others
    /// get `504 5.5.4`.
    pub mechanisms: Vec<Mechanism>,
}

/// RFC 4954 4: the longest SASL response line we accept (12288 + CRLF).
const MAX_SASL_LINE: usize = 12290;

/// Whether a command line is `AUTH <mechanism> <initial response>`.
fn is_auth_command(line: &[u8]) -> bool {
    line.len() > 5 && line[..5].eq_ignore_ascii_case(b"AUTH ")
}

/// Something the driver must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Flush pending replies, then read more bytes (or report EOF).
    NeedInput,
    /// Queue this reply (flush before the next read: RFC 2920 pipelining).
    Send(Reply),
    /// Send this reply, flush, close.
    SendAndClose(Reply),
    /// Close without a reply (the peer went away).
    Close,
    /// Flush, run the TLS handshake, then call [`Session::tls_started`].
    StartTls,
    /// Check these credentials, then call [`Session::auth_result`].
    Authenticate(Credentials),
    /// A challenge-response mechanism (SCRAM-SHA-256, CRAM-MD5) needs the
    /// stored keys of `username`: call [`Session::secrets_result`]. Unknown
    /// users must get plausible fake keys (same shape), not an error.
    LookupSecrets {
        mechanism: Mechanism,
        username: String,
    },
    /// Look up this recipient, then call [`Session::recipient_result`].
    CheckRecipient(Mailbox),
    /// Open a spool file for this envelope; message bytes follow.
    BeginMessage(Envelope),
    /// Append decoded message content to the spool file.
    MessageData(Vec<u8>),
    /// Make the message durable and queue it, then call [`Session::message_result`].
    EndMessage,
    /// Discard the spool file opened by `BeginMessage`.
    AbortMessage,
    /// Count one more email (an accepted recipient) against this account's
    /// sending plan, then call [`Session::quota_result`]. The reservation
    /// belongs to the current transaction: it is made durable with the
    /// message at `EndMessage`, or given back on `ReleaseQuota`.
    ReserveQuota { user: String },
    /// The transaction ended without a queued message: give back every
    /// reservation made for it.
    ReleaseQuota,
    /// An authenticated client gave this MAIL FROM: check that the account
    /// may use it, then call [`Session::sender_result`].
    CheckSender { user: String, sender: String },
    /// An unauthenticated sender starts a transaction on the MX listener:
    /// check the per-IP message rate, then call [`Session::mail_rate_result`].
    CheckMailRate,
}

/// Result of a credential check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    Success {
        user: String,
    },
    /// Any credential failure; the real reason goes only to the audit log.
    Failed,
    /// A 2FA account used its main password (534 5.7.9).
    AppPasswordRequired,
    /// The store is unavailable (454 4.7.0).
    TemporaryFailure,
}

/// Result of `Action::LookupSecrets`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SaslSecrets {
    /// SCRAM: the salt and iteration count to send, and every credential of
    /// the account whose keys were derived with them (none for an unknown
    /// user: the exchange then fails at the proof, as for a wrong password).
    Scram {
        salt: Vec<u8>,
        iterations: u32,
        candidates: Vec<(CredentialRef, ScramKeys)>,
    },
    /// CRAM-MD5: the shared secrets of the credentials that allow it.
    Cram(Vec<(CredentialRef, Secret)>),
    /// The store is unavailable (454 4.7.0).
    TemporaryFailure,
}

/// What the store knows about a recipient address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecipientStatus {
    /// The domain is local and the mailbox exists.
    LocalExists,
    /// The domain is local but no such mailbox.
    LocalUnknown,
    /// The domain is not one of ours.
    NotLocal,
    TemporaryFailure,
}

/// Whether an authenticated account may use a sender address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SenderVerdict {
    Allowed,
    /// 553 5.7.1 Sender address not owned by user.
    NotOwned,
    /// The check could not be made (451 4.3.0).
    TemporaryFailure,
}

/// Result of a plan or rate check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuotaOutcome {
    Granted,
    /// Over a limit: the reply says which and when to retry (451 4.7.1 or 452 4.5.3).
    Refused(Reply),
    /// The limit could not be checked (451 4.3.0).
    TemporaryFailure,
}

/// Result of making a message durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnqueueOutcome {
    Queued {
        id: String,
    },
    /// Store or I/O failure (451 4.3.0).
    TemporaryFailure,
    /// Disk full (452 4.3.1).
    InsufficientStorage,
    /// Refused by policy after the content was seen (e.g. a header From:
    /// the account does not own: 550 5.7.1).
    Refused(Reply),
}

/// The envelope of a message, handed to the driver with `BeginMessage`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub from: ReversePath,
    pub params: MailParams,
    pub recipients: Vec<ForwardPath>,
    pub helo: String,
    pub esmtp: bool,
    pub tls: bool,
    pub auth_user: Option<String>,
}

impl Envelope {
    /// The RFC 3848 / RFC 6531 "with" protocol keyword for the Received header.
    pub fn protocol(&self) -> &'static str {
        let utf8 = self.params.smtputf8;
        match (utf8, self.esmtp, self.tls, self.auth_user.is_some()) {
            (true, _, true, true) => "UTF8SMTPSA",
            (true, _, true, false) => "UTF8SMTPS",
            (true, _, false, true) => "UTF8SMTPA",
            (true, _, false, false) => "UTF8SMTP",
            (false, true, true, true) => "ESMTPSA",
            (false, true, true, false) => "ESMTPS",
            (false, true, false, true) => "ESMTPA",
            (false, true, false, false) => "ESMTP",
            (false, false, _, _) => "SMTP",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Helo {
    name: String,
    esmtp: bool,
}

#[derive(Debug)]
struct Transaction {
    from: ReversePath,
    params: MailParams,
    rcpts: Vec<ForwardPath>,
    /// BDAT content decoder once the first chunk arrived.
    bdat: Option<BodyDecoder>,
    /// `BeginMessage` was emitted (an abort must be emitted on reset).
    message_started: bool,
    /// Plan reservations made for this transaction (released on reset).
    quota_reserved: usize,
}

#[derive(Debug)]
enum BdatSink {
    Message,
    /// Read and drop the chunk, then send this reply (RFC 3030: a rejected
    /// chunk is still read so the stream stays in sync).
    Discard(Reply),
}

#[derive(Debug)]
enum Awaiting {
    Tls,
    Auth,
    Secrets(Box<PendingSecrets>),
    Recipient(Mailbox),
    Quota(ForwardPath),
    Sender(Box<(ReversePath, MailParams)>),
    MailRate(Box<(ReversePath, MailParams)>),
    Enqueue,
}

/// What input the session expects now.
#[derive(Debug)]
enum State {
    Command,
    Sasl(SaslStep),
    Data(BodyDecoder),
    Bdat {
        remaining: u64,
        last: bool,
        sink: BdatSink,
    },
    Await(Awaiting),
    Closed,
}

/// One SMTP session, from greeting to close.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    tls: bool,
    input: input::InputBuffer,
    eof: bool,
    helo: Option<Helo>,
    auth_user: Option<String>,
    tx: Option<Transaction>,
    state: State,
    pending: VecDeque<Action>,
    errors: u32,
    auth_failures: u32,
    /// Per-account overrides from the sending plan (tighter wins).
    account_max_recipients: Option<usize>,
    account_max_message_size: Option<u64>,
    /// Entropy for SCRAM nonces and CRAM-MD5 challenges (from the driver).
    nonce_seed: Option<[u8; 32]>,
    nonce_counter: u64,
    sasl_after: SaslAfter,
    /// RFC 9266 `tls-exporter` data of this connection's TLS (TLS 1.3).
    channel_binding: Option<Vec<u8>>,
}

impl Session {
    /// A new session; `tls` is true for implicit TLS (port 465).
    pub fn new(cfg: SessionConfig, tls: bool) -> Session {
        Session {
            cfg,
            tls,
            input: input::InputBuffer::default(),
            eof: false,
            helo: None,
            auth_user: None,
            tx: None,
            state: State::Command,
            pending: VecDeque::new(),
            errors: 0,
            auth_failures: 0,
            account_max_recipients: None,
            account_max_message_size: None,
            nonce_seed: None,
            nonce_counter: 0,
            sasl_after: SaslAfter::default(),
            channel_binding: None,
        }
    }

    /// The `tls-exporter` channel binding of the TLS connection (call after
    /// `tls_started`, or at the start for implicit TLS). Enables
    /// SCRAM-SHA-256-PLUS when it is in the mechanism list.
    pub fn set_channel_binding(&mut self, data: Option<Vec<u8>>) {
        self.channel_binding = data;
    }

    /// Gives the session 32 random bytes from which it derives SCRAM server
    /// nonces and CRAM-MD5 challenges. Without it those mechanisms answer
    /// `454 4.7.0` (fail safe rather than use a guessable nonce).
    pub fn seed_nonces(&mut self, seed: [u8; 32]) {
        self.nonce_seed = Some(seed);
    }

    /// The 220 greeting the driver sends first.
    pub fn greeting(&self) -> Reply {
        Reply::greeting(&self.cfg.hostname)
    }

    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// The authenticated user, if AUTH succeeded on this connection.
    pub fn authenticated_user(&self) -> Option<&str> {
        self.auth_user.as_deref()
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Whether a message is being received (for the driver's timeouts/logging).
    pub fn in_message(&self) -> bool {
        matches!(self.state, State::Data(_) | State::Bdat { .. })
    }

    /// Appends bytes read from the peer.
    pub fn push(&mut self, bytes: &[u8]) {
        if !matches!(self.state, State::Closed) {
            self.input.push(bytes);
        }
    }

    /// The peer closed its side.
    pub fn eof(&mut self) {
        self.eof = true;
    }

    /// Next thing to do.
    pub fn poll(&mut self) -> Action {
        loop {
            if let Some(action) = self.pending.pop_front() {
                return action;
            }
            if let Some(action) = self.step() {
                return action;
            }
        }
    }

    /// Processes one unit of input; `Some` when the driver must act with no
    /// queued action (need input, close).
    fn step(&mut self) -> Option<Action> {
        match &mut self.state {
            State::Closed => Some(Action::Close),
            State::Await(_) => {
                // Contract violation by the driver: fail safe.
                self.state = State::Closed;
                Some(Action::SendAndClose(Reply::internal_error()))
            }
            // RFC 4954 4: an AUTH command with an initial response (a bearer
            // token, say) may be as long as a SASL response line.
            State::Command => match self
                .input
                .next_line(self.cfg.max_command_line.max(MAX_SASL_LINE))
            {
                input::LineEvent::Line(line)
                    if line.len() + 2 > self.cfg.max_command_line && !is_auth_command(&line) =>
                {
                    self.reply(Reply::line_too_long());
                    None
                }
                input::LineEvent::Line(line) => {
                    self.handle_command_line(&line);
                    None
                }
                input::LineEvent::TooLong => {
                    self.reply(Reply::line_too_long());
                    None
                }
                input::LineEvent::NeedMore => Some(self.need_input()),
            },
            State::Sasl(_) => match self.input.next_line(MAX_SASL_LINE) {
                input::LineEvent::Line(line) => {
                    self.handle_sasl_line(&line);
                    None
                }
                input::LineEvent::TooLong => {
                    self.state = State::Command;
                    self.reply(Reply::auth_line_too_long());
                    None
                }
                input::LineEvent::NeedMore => Some(self.need_input()),
            },
            State::Data(_) => self.step_data(),
            State::Bdat { .. } => self.step_bdat(),
        }
    }

    fn need_input(&mut self) -> Action {
        if self.eof {
            self.reset_transaction();
            self.state = State::Closed;
            if let Some(a) = self.pending.pop_front() {
                return a;
            }
            return Action::Close;
        }
        if !self.in_message() {
            self.input.release_if_drained();
        }
        Action::NeedInput
    }

    /// The input buffer's allocated size, for tests of its release.
    #[cfg(test)]
    fn input_capacity(&self) -> usize {
        self.input.capacity()
    }

    /// Queues a reply, counting failures against the error budget.
    fn reply(&mut self, reply: Reply) {
        let permanent = reply.is_permanent_failure();
        self.pending.push_back(Action::Send(reply));
        if permanent {
            self.errors += 1;
            if self.errors >= self.cfg.max_errors {
                self.close_with(Reply::too_many_errors());
            }
        }
    }

    fn close_with(&mut self, reply: Reply) {
        self.reset_transaction();
        self.pending.push_back(Action::SendAndClose(reply));
        self.state = State::Closed;
    }

    /// Emits `ReleaseQuota` if the transaction holds plan reservations.
    fn release_quota(&mut self) {
        if let Some(tx) = &mut self.tx
            && tx.quota_reserved > 0
        {
            tx.quota_reserved = 0;
            self.pending.push_back(Action::ReleaseQuota);
        }
    }

    /// Emits `AbortMessage` if a spool file is open.
    fn abort_message(&mut self) {
        if let Some(tx) = &mut self.tx
            && tx.message_started
        {
            tx.message_started = false;
            self.pending.push_back(Action::AbortMessage);
        }
    }

    /// Ends the transaction without a queued message.
    fn reset_transaction(&mut self) {
        self.abort_message();
        self.release_quota();
        self.tx = None;
    }

    fn handle_command_line(&mut self, line: &[u8]) {
        let command = match parse_command(line) {
            Ok(c) => c,
            Err(crate::command::ParseError::BadBdat) => {
                // The chunk size is unknown: the stream cannot be resynchronised.
                let reply = crate::command::ParseError::BadBdat.reply();
                self.close_with(reply);
                return;
            }
            Err(e) => {
                self.reply(e.reply());
                return;
            }
        };
        match command {
            Command::Ehlo(name) => self.handle_ehlo(name, true),
            Command::Helo(name) => self.handle_ehlo(name, false),
            Command::StartTls => self.handle_starttls(),
            Command::Auth { mechanism, initial } => self.handle_auth(&mechanism, initial),
            Command::Mail { from, params } => self.handle_mail(from, params),
            Command::Rcpt { to } => self.handle_rcpt(to),
            Command::Data => self.handle_data(),
            Command::Bdat { size, last } => self.handle_bdat(size, last),
            Command::Rset => {
                self.reset_transaction();
                self.reply(Reply::reset_ok());
            }
            Command::Noop => self.reply(Reply::ok()),
            // RFC 5321 3.5.3: 252 without verifying; never enumerate accounts.
            Command::Vrfy => self.reply(Reply::vrfy()),
            Command::Expn => self.reply(Reply::not_implemented()),
            Command::Help => self.reply(Reply::help()),
            Command::Quit => self.close_with(Reply::bye()),
            Command::Http => self.close_with(Reply::http_rejected()),
        }
    }

    /// Call after the TLS handshake that followed `StartTls` succeeded.
    /// RFC 3207 4.2: forget everything learned before TLS.
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.channel_binding = None;
        self.helo = None;
        self.auth_user = None;
        self.account_max_recipients = None;
        self.account_max_message_size = None;
        self.tx = None;
        self.input.clear();
        self.state = State::Command;
    }
}
