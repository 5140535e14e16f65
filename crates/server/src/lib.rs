//! Portcullis server library: everything around the sans-IO protocol core.
//!
//! Owns configuration, listeners, TLS, the connection driver (the only module
//! that does socket I/O), the auth service and the spool. The binary is a thin
//! shell over [`Server`].

pub mod auth;
mod commit;
pub mod config;
mod conn;
pub mod delivery;
pub mod directory;
pub mod mail_auth;
pub mod oauth;
pub mod quota;
pub mod secretbox;
pub mod security;
mod server;
pub mod spool;
pub mod spool_ref;
pub mod throttle;
pub mod tls;
pub mod usage;

pub use conn::Io;
pub use server::{Server, ServerError, TlsReloader};
