//! The scripted session driver, shared with the unit tests in
//! `src/session/tests.rs` (see `harness.rs`).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use portcullis_proto::address::{Domain, Mailbox};
use portcullis_proto::sasl::scram;
use portcullis_proto::{
    Action, AuthOutcome, CredentialRef, Credentials, EnqueueOutcome, Envelope, Mechanism,
    QuotaOutcome, RecipientStatus, Reply, Role, SaslSecrets, Secret, SenderVerdict, Session,
    SessionConfig, Verification,
};

include!("harness.rs");
