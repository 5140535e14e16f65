//! portcullis-load: an SMTP load generator (`send`), a discard-everything
//! SMTP sink (`sink`) and an idle-session holder (`idle`) for benchmarking
//! Portcullis or any other SMTP server.
//!
//! The protocol pieces are sans-IO and unit-tested: [`reply`] parses server
//! replies, [`dataend`] finds the end of DATA, [`message`] builds test
//! messages. [`conn`] and [`send`] drive the client side, [`sink`] the server.

pub mod conn;
pub mod dataend;
pub mod idle;
pub mod message;
pub mod reply;
pub mod report;
pub mod send;
pub mod sink;
pub mod tls;
