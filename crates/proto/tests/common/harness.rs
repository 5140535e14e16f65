// Scripted driver for the sans-IO SMTP session.
//
// Shared by the unit tests (`src/session/tests.rs`) and the integration tests
// (`tests/*.rs`) through `include!`, so it uses only the public API and names
// the crate's types unqualified: the including module imports `Action`,
// `AuthOutcome`, `Credentials`, `Domain`, `EnqueueOutcome`, `Envelope`,
// `Mailbox`, `QuotaOutcome`, `RecipientStatus`, `Reply`, `Role`, `SenderVerdict`,
// `Session`, `SessionConfig`, `SaslSecrets`, `CredentialRef`, `Mechanism`,
// `Secret`, `Verification` and the module `scram`.
//
// The driver follows the contract of `session/mod.rs`: push bytes, poll until
// `NeedInput` / `Close` / `SendAndClose`, answering `Authenticate`,
// `CheckRecipient`, `EndMessage` and `StartTls` on the spot. It also checks the
// contract from the session's side: every poll loop ends within a budget
// proportional to the pushed bytes, `MessageData` / `EndMessage` /
// `AbortMessage` only follow a `BeginMessage`, a message never stays open
// across a close, and after a close `poll` returns only `Close`.

/// The server's hostname in every test configuration.
pub const HOSTNAME: &str = "mx.example.com";
/// The local domain; its mailboxes are `alice` and `bob`.
pub const LOCAL_DOMAIN: &str = "example.com";
/// A domain whose recipient lookups fail temporarily.
pub const UNAVAILABLE_DOMAIN: &str = "unavailable.example";

pub const ALICE: &str = "alice@example.com";
pub const ALICE_PASSWORD: &str = "correct horse";
/// An account whose credential store is down (454 4.7.0).
pub const DOWN: &str = "down@example.com";
/// A 2FA account: its main password needs an app password (534 5.7.9).
pub const TWOFA: &str = "twofa@example.com";
pub const TWOFA_MAIN_PASSWORD: &str = "main password";
pub const TWOFA_APP_PASSWORD: &str = "app password";

/// The configuration the tests start from; tests change single fields.
pub fn config(role: Role) -> SessionConfig {
    SessionConfig {
        role,
        hostname: HOSTNAME.to_owned(),
        max_message_size: 10_000,
        max_recipients: 100,
        max_command_line: 512,
        max_text_line: 1000,
        max_errors: 20,
        max_auth_failures: 3,
        starttls: true,
        mechanisms: Mechanism::DEFAULTS.to_vec(),
    }
}

/// SCRAM iterations in the scripted store (low: tests stay fast).
pub const SCRAM_ITERATIONS: u32 = 16;
pub const SCRAM_SALT: &[u8] = b"scripted-salt";
/// The bearer token the scripted auth service accepts for ALICE.
pub const ALICE_TOKEN: &str = "alice-token";

/// What the scripted store answers to `LookupSecrets`.
pub fn sasl_secrets(mechanism: Mechanism, username: &str) -> SaslSecrets {
    let keys = |pw: &str| scram::derive_keys(pw.as_bytes(), SCRAM_SALT, SCRAM_ITERATIONS);
    match (mechanism, username) {
        (_, DOWN) => SaslSecrets::TemporaryFailure,
        (Mechanism::CramMd5, ALICE) => SaslSecrets::Cram(vec![(
            CredentialRef::App("legacy".into()),
            Secret::new(ALICE_PASSWORD.into()),
        )]),
        (Mechanism::CramMd5, _) => SaslSecrets::Cram(Vec::new()),
        (_, user) => SaslSecrets::Scram {
            salt: SCRAM_SALT.to_vec(),
            iterations: SCRAM_ITERATIONS,
            candidates: match user {
                ALICE => vec![(CredentialRef::Main, keys(ALICE_PASSWORD))],
                TWOFA => vec![
                    (CredentialRef::Main, keys(TWOFA_MAIN_PASSWORD)),
                    (CredentialRef::App("phone".into()), keys(TWOFA_APP_PASSWORD)),
                ],
                _ => Vec::new(),
            },
        },
    }
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An RFC 4616 PLAIN message, base64-encoded.
pub fn plain(authzid: &str, user: &str, password: &str) -> String {
    b64(format!("{authzid}\0{user}\0{password}").as_bytes())
}

/// What the scripted auth service answers.
pub fn auth_outcome(creds: &Credentials) -> AuthOutcome {
    let password = creds.password.expose();
    let success = |user: &str| AuthOutcome::Success {
        user: user.to_owned(),
    };
    match (&creds.verification, creds.username.as_str()) {
        (Verification::Password, _) => {}
        (_, DOWN) => return AuthOutcome::TemporaryFailure,
        (Verification::Token, ALICE | "") if password == ALICE_TOKEN => return success(ALICE),
        (Verification::Token, _) => return AuthOutcome::Failed,
        (Verification::Matched(Some(CredentialRef::Main)), TWOFA) => {
            return AuthOutcome::AppPasswordRequired;
        }
        (Verification::Matched(Some(_)), user) => return success(user),
        (Verification::Matched(None), _) => return AuthOutcome::Failed,
    }
    match creds.username.as_str() {
        ALICE if password == ALICE_PASSWORD => AuthOutcome::Success {
            user: ALICE.to_owned(),
        },
        DOWN => AuthOutcome::TemporaryFailure,
        TWOFA if password == TWOFA_MAIN_PASSWORD => AuthOutcome::AppPasswordRequired,
        TWOFA if password == TWOFA_APP_PASSWORD => AuthOutcome::Success {
            user: TWOFA.to_owned(),
        },
        _ => AuthOutcome::Failed,
    }
}

/// What the scripted store knows about a recipient.
pub fn recipient_status(mailbox: &Mailbox) -> RecipientStatus {
    match &mailbox.domain {
        Domain::Name(d) if d == LOCAL_DOMAIN => match mailbox.local.to_ascii_lowercase().as_str() {
            "alice" | "bob" => RecipientStatus::LocalExists,
            _ => RecipientStatus::LocalUnknown,
        },
        Domain::Name(d) if d == UNAVAILABLE_DOMAIN => RecipientStatus::TemporaryFailure,
        _ => RecipientStatus::NotLocal,
    }
}

/// One observable step of a session, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A reply, as wire text.
    Reply(String),
    /// A reply sent before closing (`SendAndClose`).
    ReplyAndClose(String),
    /// `Close` without a reply.
    Close,
    /// `StartTls`; the driver called `tls_started` right away.
    StartTls,
    /// `Authenticate` with this username.
    Authenticate(String),
    /// `LookupSecrets` for this username.
    LookupSecrets(String),
    /// `CheckRecipient` for this address.
    CheckRecipient(String),
    BeginMessage,
    /// `EndMessage`, answered with `Queued` under this id (or the override).
    EndMessage(String),
    AbortMessage,
}

/// A message the driver made "durable".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub id: String,
    pub envelope: Envelope,
    pub content: Vec<u8>,
}

/// The scripted driver.
#[derive(Debug)]
pub struct Driver {
    pub session: Session,
    /// Every reply as wire text; index 0 is the greeting.
    pub replies: Vec<String>,
    pub events: Vec<Event>,
    /// Queued messages, in order.
    pub messages: Vec<Message>,
    /// Every `Authenticate` request, in order.
    pub credentials: Vec<Credentials>,
    /// Every `CheckRecipient` request, in order.
    pub lookups: Vec<Mailbox>,
    pub begun: usize,
    pub aborted: usize,
    /// `Close` or `SendAndClose` was seen.
    pub closed: bool,
    /// For each `StartTls`: how many replies (greeting included) came before it.
    pub starttls_at: Vec<usize>,
    /// How `EndMessage` is answered; `None` → `Queued { id: "Q<n>" }`.
    pub enqueue_outcome: Option<EnqueueOutcome>,
    /// Plan limit on emails (committed + reserved); `None` = unlimited.
    pub quota_limit: Option<usize>,
    /// Reservations of the open transaction.
    pub quota_reserved: usize,
    /// Reservations made durable with a queued message.
    pub quota_committed: usize,
    /// `ReleaseQuota` actions seen.
    pub quota_releases: usize,
    /// Answer `CheckMailRate` with a refusal.
    pub refuse_mail_rate: bool,
    /// `CheckMailRate` actions seen.
    pub mail_rate_checks: usize,
    /// `CheckSender` requests (user, sender), in order.
    pub sender_checks: Vec<(String, String)>,
    /// Senders answered with `NotOwned` (everything else is `Allowed`).
    pub denied_senders: Vec<String>,
    open: Option<(Envelope, Vec<u8>)>,
    queued: usize,
}

impl Driver {
    pub fn new(cfg: SessionConfig, tls: bool) -> Driver {
        let mut session = Session::new(cfg, tls);
        session.seed_nonces([7; 32]);
        let greeting = String::from_utf8(session.greeting().to_bytes()).unwrap_or_default();
        let mut d = Driver {
            session,
            replies: vec![greeting],
            events: Vec::new(),
            messages: Vec::new(),
            credentials: Vec::new(),
            lookups: Vec::new(),
            begun: 0,
            aborted: 0,
            closed: false,
            starttls_at: Vec::new(),
            enqueue_outcome: None,
            open: None,
            queued: 0,
            quota_limit: None,
            quota_reserved: 0,
            quota_committed: 0,
            quota_releases: 0,
            refuse_mail_rate: false,
            mail_rate_checks: 0,
            sender_checks: Vec::new(),
            denied_senders: Vec::new(),
        };
        d.run(64);
        d
    }

    pub fn mx() -> Driver {
        Driver::new(config(Role::Mx), false)
    }

    pub fn submission() -> Driver {
        Driver::new(config(Role::Submission), false)
    }

    pub fn submissions() -> Driver {
        Driver::new(config(Role::Submissions), true)
    }

    /// Pushes `bytes` in one piece and runs; returns the replies it produced.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let before = self.replies.len();
        self.session.push(bytes);
        self.run(64 + 8 * bytes.len());
        self.replies[before..].to_vec()
    }

    /// Pushes each piece in turn, running after each.
    pub fn push_pieces<'a>(&mut self, pieces: impl IntoIterator<Item = &'a [u8]>) -> Vec<String> {
        let before = self.replies.len();
        for piece in pieces {
            self.push(piece);
        }
        self.replies[before..].to_vec()
    }

    /// Pushes one byte at a time.
    pub fn push_bytewise(&mut self, bytes: &[u8]) -> Vec<String> {
        self.push_pieces(bytes.chunks(1))
    }

    /// Sends `line` + CRLF; returns the statuses (`"250 2.1.0"`, `"354"`) of
    /// the replies it produced.
    pub fn say(&mut self, line: &str) -> Vec<String> {
        statuses(&self.push(format!("{line}\r\n").as_bytes()))
    }

    /// Reports EOF and runs; returns the replies it produced.
    pub fn eof(&mut self) -> Vec<String> {
        let before = self.replies.len();
        self.session.eof();
        self.run(64);
        self.replies[before..].to_vec()
    }

    /// Statuses of all replies so far (greeting included).
    pub fn all_statuses(&self) -> Vec<String> {
        statuses(&self.replies)
    }

    fn record(&mut self, wire: Vec<u8>, close: bool) {
        let text = String::from_utf8(wire).unwrap_or_else(|e| panic!("reply is not UTF-8: {e}"));
        assert!(text.ends_with("\r\n"), "reply without CRLF: {text:?}");
        self.replies.push(text.clone());
        self.events.push(if close {
            Event::ReplyAndClose(text)
        } else {
            Event::Reply(text)
        });
    }

    /// Polls until `NeedInput` or a close, answering requests; panics if the
    /// session produces more than `budget` actions.
    fn run(&mut self, budget: usize) {
        if self.closed {
            self.assert_only_close();
            return;
        }
        for _ in 0..budget {
            match self.session.poll() {
                Action::NeedInput => return,
                Action::Send(reply) => self.record(reply.to_bytes(), false),
                Action::SendAndClose(reply) => {
                    self.record(reply.to_bytes(), true);
                    self.closed = true;
                }
                Action::Close => {
                    self.events.push(Event::Close);
                    self.closed = true;
                }
                Action::StartTls => {
                    self.events.push(Event::StartTls);
                    self.starttls_at.push(self.replies.len());
                    self.session.tls_started();
                }
                Action::Authenticate(creds) => {
                    self.events
                        .push(Event::Authenticate(creds.username.clone()));
                    let outcome = auth_outcome(&creds);
                    self.credentials.push(creds);
                    self.session.auth_result(outcome);
                }
                Action::LookupSecrets {
                    mechanism,
                    username,
                } => {
                    self.events.push(Event::LookupSecrets(username.clone()));
                    self.session
                        .secrets_result(sasl_secrets(mechanism, &username));
                }
                Action::CheckRecipient(mailbox) => {
                    self.events.push(Event::CheckRecipient(mailbox.to_string()));
                    let status = recipient_status(&mailbox);
                    self.lookups.push(mailbox);
                    self.session.recipient_result(status);
                }
                Action::BeginMessage(envelope) => {
                    assert!(self.open.is_none(), "BeginMessage while a message is open");
                    self.events.push(Event::BeginMessage);
                    self.begun += 1;
                    self.open = Some((envelope, Vec::new()));
                }
                Action::MessageData(data) => {
                    let Some((_, content)) = &mut self.open else {
                        panic!("MessageData without BeginMessage");
                    };
                    content.extend_from_slice(&data);
                }
                Action::EndMessage => {
                    let Some((envelope, content)) = self.open.take() else {
                        panic!("EndMessage without BeginMessage");
                    };
                    self.queued += 1;
                    let id = format!("Q{}", self.queued);
                    self.events.push(Event::EndMessage(id.clone()));
                    let outcome = match &self.enqueue_outcome {
                        Some(o) => o.clone(),
                        None => {
                            self.quota_committed += std::mem::take(&mut self.quota_reserved);
                            self.messages.push(Message {
                                id: id.clone(),
                                envelope,
                                content,
                            });
                            EnqueueOutcome::Queued { id }
                        }
                    };
                    self.session.message_result(outcome);
                }
                Action::ReserveQuota { user } => {
                    assert!(self.session.authenticated_user() == Some(user.as_str()));
                    let used = self.quota_committed + self.quota_reserved;
                    let outcome = match self.quota_limit {
                        Some(limit) if used >= limit => QuotaOutcome::Refused(Reply::sending_limit(
                            "test",
                            u32::try_from(limit).unwrap_or(u32::MAX),
                            "hour",
                            "1m",
                        )),
                        _ => {
                            self.quota_reserved += 1;
                            QuotaOutcome::Granted
                        }
                    };
                    self.session.quota_result(outcome);
                }
                Action::ReleaseQuota => {
                    assert!(self.quota_reserved > 0, "ReleaseQuota without reservations");
                    self.quota_reserved = 0;
                    self.quota_releases += 1;
                }
                Action::CheckSender { user, sender } => {
                    let verdict = if self.denied_senders.contains(&sender) {
                        SenderVerdict::NotOwned
                    } else {
                        SenderVerdict::Allowed
                    };
                    self.sender_checks.push((user, sender));
                    self.session.sender_result(verdict);
                }
                Action::CheckMailRate => {
                    self.mail_rate_checks += 1;
                    let outcome = if self.refuse_mail_rate {
                        QuotaOutcome::Refused(Reply::message_rate_limited("1m"))
                    } else {
                        QuotaOutcome::Granted
                    };
                    self.session.mail_rate_result(outcome);
                }
                Action::AbortMessage => {
                    assert!(
                        self.open.take().is_some(),
                        "AbortMessage without BeginMessage"
                    );
                    self.events.push(Event::AbortMessage);
                    self.aborted += 1;
                }
            }
            if self.closed {
                assert!(
                    self.open.is_none(),
                    "session closed with a message still open"
                );
                self.assert_only_close();
                return;
            }
        }
        panic!("poll did not reach NeedInput or a close within {budget} actions");
    }

    fn assert_only_close(&mut self) {
        for _ in 0..3 {
            let action = self.session.poll();
            assert_eq!(
                action,
                Action::Close,
                "after a close the session must only return Close"
            );
        }
    }
}

/// Whether `s` looks like an RFC 3463 enhanced code `d.ddd.ddd`.
pub fn is_enhanced(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts[0].len() == 1
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `"250 2.1.0"` for `"250 2.1.0 Sender ok\r\n"`, `"354"` for a reply without
/// an enhanced code. Multi-line replies: the status of the last line.
pub fn status(reply: &str) -> String {
    let last = reply
        .trim_end_matches("\r\n")
        .rsplit("\r\n")
        .next()
        .unwrap_or("");
    let code = last.get(..3).unwrap_or(last);
    let first_word = last.get(4..).unwrap_or("").split(' ').next().unwrap_or("");
    if is_enhanced(first_word) {
        format!("{code} {first_word}")
    } else {
        code.to_owned()
    }
}

pub fn statuses(replies: &[String]) -> Vec<String> {
    replies.iter().map(|r| status(r)).collect()
}

/// The extension keywords of an EHLO reply (lines after the first).
pub fn ehlo_keywords(reply: &str) -> Vec<String> {
    reply
        .trim_end_matches("\r\n")
        .split("\r\n")
        .skip(1)
        .map(|l| l.get(4..).unwrap_or("").to_owned())
        .collect()
}

/// Whether `reply` is the EHLO or HELO response (it starts with our hostname).
pub fn is_helo_reply(reply: &str) -> bool {
    reply.get(4..).is_some_and(|t| t.starts_with(HOSTNAME)) && reply.starts_with("250")
}

/// RFC 2034 3: the greeting and the EHLO/HELO response carry no enhanced code;
/// 3xx replies carry none; every other line of every reply has `d.d.d` after
/// the code, whose class matches the code's first digit. `replies[0]` is the
/// greeting.
pub fn assert_enhanced_codes(replies: &[String]) {
    for (i, reply) in replies.iter().enumerate() {
        let exempt = i == 0 || is_helo_reply(reply) || reply.starts_with('3');
        for line in reply.trim_end_matches("\r\n").split("\r\n") {
            let bytes = line.as_bytes();
            assert!(
                bytes.len() >= 4 && bytes[..3].iter().all(u8::is_ascii_digit),
                "malformed reply line {line:?}"
            );
            assert!(
                bytes[3] == b' ' || bytes[3] == b'-',
                "bad separator in {line:?}"
            );
            let first_word = line[4..].split(' ').next().unwrap_or("");
            if exempt {
                assert!(
                    !is_enhanced(first_word),
                    "unexpected enhanced code in {line:?}"
                );
            } else {
                assert!(is_enhanced(first_word), "missing enhanced code in {line:?}");
                assert_eq!(
                    first_word.as_bytes()[0],
                    bytes[0],
                    "class mismatch in {line:?}"
                );
            }
        }
    }
}
