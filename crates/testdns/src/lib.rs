//! A small authoritative DNS server on loopback, for tests.
//!
//! [`TestDns`] serves a [`Zone`] (MX, A, AAAA, TXT, CNAME, PTR, plus names that answer
//! SERVFAIL or never answer) over real UDP and TCP on one `127.0.0.1` port, so delivery code
//! can be tested with a real resolver: MX selection, null MX, NXDOMAIN vs NODATA, DNS
//! timeouts, DKIM/SPF/DMARC TXT records.
//!
//! ```
//! use std::net::{IpAddr, Ipv4Addr, SocketAddr};
//! use portcullis_testdns::{TestDns, Zone};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let zone = Zone::new()
//!     .mx("example.test", 10, "mx1.example.test")
//!     .a("mx1.example.test", Ipv4Addr::LOCALHOST)
//!     .txt("example.test", "v=spf1 -all");
//! let dns = TestDns::start(zone).await?;
//! let server: SocketAddr = dns.addr(); // point the resolver here (UDP and TCP)
//! dns.set_zone(Zone::new().mx("example.test", 0, ".")); // now a null MX
//! # let _ = (server, IpAddr::V4(Ipv4Addr::LOCALHOST));
//! # Ok(()) }
//! ```
//!
//! # Pointing hickory-resolver 0.26 at it
//!
//! ```ignore
//! use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
//! use hickory_resolver::net::runtime::TokioRuntimeProvider;
//! use hickory_resolver::{Resolver, TokioResolver};
//!
//! let mut ns = NameServerConfig::udp_and_tcp(dns.addr().ip());
//! for conn in &mut ns.connections {
//!     conn.port = dns.addr().port(); // ConnectionConfig::port defaults to 53
//! }
//! let mut opts = ResolverOpts::default(); // #[non_exhaustive]: mutate, don't construct
//! opts.timeout = std::time::Duration::from_secs(1);
//! opts.attempts = 1;
//! opts.cache_size = 0;
//! let resolver: TokioResolver = Resolver::builder_with_config(
//!     ResolverConfig::from_name_servers(vec![ns]),
//!     TokioRuntimeProvider::default(),
//! )
//! .with_options(opts)
//! .build()?;
//! ```
//!
//! # Telling NXDOMAIN, NODATA, SERVFAIL and timeouts apart (hickory-resolver 0.26)
//!
//! Lookups return `Result<Lookup, NetError>` (`hickory_resolver::net::NetError`); records are
//! in `lookup.answers()` (a CNAME chain comes first, so filter on the `RData` variant).
//! Every case below is exercised by `tests/resolver.rs`.
//!
//! ```ignore
//! use hickory_resolver::net::{DnsError, NetError, NoRecords};
//! use hickory_resolver::proto::op::ResponseCode;
//! use hickory_resolver::proto::rr::RData;
//!
//! match resolver.mx_lookup("example.test.").await {
//!     Ok(lookup) => {
//!         let mxs: Vec<_> = lookup.answers().iter()
//!             .filter_map(|r| match &r.data { RData::MX(mx) => Some(mx), _ => None })
//!             .collect(); // mx.preference, mx.exchange (Name::is_root() => null MX)
//!     }
//!     // The domain does not exist: permanent (RFC 5321 §5.1: no MX and no A => 5xx).
//!     Err(NetError::Dns(DnsError::NoRecordsFound(NoRecords {
//!         response_code: ResponseCode::NXDomain, ..
//!     }))) => { /* NXDOMAIN */ }
//!     // The name exists but has no MX: fall back to its A/AAAA (implicit MX).
//!     Err(NetError::Dns(DnsError::NoRecordsFound(NoRecords {
//!         response_code: ResponseCode::NoError, ..
//!     }))) => { /* NODATA */ }
//!     // No answer within ResolverOpts::timeout: transient.
//!     Err(NetError::Timeout) => { /* timeout */ }
//!     // The server answered SERVFAIL (or REFUSED, ...): transient.
//!     Err(NetError::Dns(DnsError::ResponseCode(code))) => { /* code == ResponseCode::ServFail */ }
//!     // Both enums are #[non_exhaustive]: treat anything else (I/O, NoConnections) as transient.
//!     Err(_other) => {}
//! }
//! ```
//!
//! `NetError::is_nx_domain()` is a shortcut for the first error arm, and
//! `NetError::is_no_records_found()` matches both NXDOMAIN and NODATA.
//!
//! # Zone semantics
//!
//! * Names are case-insensitive, with or without the trailing dot.
//! * A name with no records that is not a parent of a name with records is NXDOMAIN; a name
//!   that exists but lacks the asked type is NOERROR with no answers (NODATA). Both carry a
//!   synthetic SOA (apex = last two labels) in the authority section.
//! * Responses set AA, copy RD and the id, and clear RA. A UDP answer larger than the client's
//!   EDNS buffer (512 bytes without EDNS, never more than 4096) is sent truncated (TC), so the
//!   client retries over TCP.
//! * Malformed packets get FORMERR when they have a readable query header, and are otherwise
//!   dropped; responses are never answered.

mod server;
mod zone;

pub use server::TestDns;
pub use zone::Zone;
