//! Portcullis protocol core: no sockets, no TLS, no storage, no async.
//!
//! Bytes go in, typed actions come out (STYLE 1–2). The crate has no tokio,
//! rustls or SQL dependency, so "no I/O here" is a build error rather than a
//! convention. Everything here is tested without sockets, including input split
//! at every byte position and arbitrary bytes (property tests).

pub mod address;
pub mod command;
pub mod data;
pub mod dsn;
pub mod header;
pub mod reply;
pub mod sasl;
pub mod session;

pub use address::{Domain, ForwardPath, Mailbox, ReversePath};
pub use reply::{Enhanced, Reply};
pub use sasl::{CredentialRef, Credentials, Mechanism, Secret, Verification};
pub use session::{
    Action, AuthOutcome, EnqueueOutcome, Envelope, QuotaOutcome, RecipientStatus, Role,
    SaslSecrets, SenderVerdict, Session, SessionConfig,
};
