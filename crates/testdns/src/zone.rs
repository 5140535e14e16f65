//! The zone data and the pure query → response logic (no sockets here).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, PTR, SOA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

/// Largest UDP response we ever send, whatever the client's EDNS buffer says.
pub(crate) const MAX_UDP_PAYLOAD: usize = 4096;
/// UDP response limit for clients that send no EDNS OPT record (RFC 1035 §4.2.1).
const CLASSIC_UDP_PAYLOAD: usize = 512;
/// Longest CNAME chain we follow inside the zone before answering SERVFAIL.
const MAX_CNAME_CHAIN: usize = 8;

/// A set of DNS records served by [`crate::TestDns`].
///
/// Build it with the chaining methods, e.g.
/// `Zone::new().mx("example.test", 10, "mx.example.test").a("mx.example.test", ip)`.
///
/// * Names are case-insensitive and may be written with or without the trailing dot.
/// * Several records of the same type on one name are all answered, in insertion order.
/// * A name carrying a CNAME answers the CNAME for every query type (its other records are
///   ignored), and the chain is followed inside the zone (up to 8 links).
/// * Every record has the zone TTL, 0 by default (so a caching resolver never serves stale
///   data after [`crate::TestDns::set_zone`]); change it with [`Zone::ttl`].
///
/// # Panics
///
/// The builder methods panic when given a string that is not a valid DNS name: a zone is
/// written by a test author, and a typo should fail the test at once.
#[derive(Clone, Debug, Default)]
pub struct Zone {
    /// Records by lower-case, fully qualified owner name (`"example.test."`).
    records: BTreeMap<String, Vec<RData>>,
    servfail: BTreeSet<String>,
    silent: BTreeSet<String>,
    ttl: u32,
}

impl Zone {
    /// An empty zone: every name is NXDOMAIN.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The TTL of every record and of the negative-caching SOA (default 0).
    #[must_use]
    pub fn ttl(mut self, seconds: u32) -> Self {
        self.ttl = seconds;
        self
    }

    /// Adds an MX record. An `exchange` of `"."` makes it a null MX (RFC 7505).
    #[must_use]
    pub fn mx(self, name: &str, preference: u16, exchange: &str) -> Self {
        let exchange = parse_name(exchange);
        self.add(name, RData::MX(MX::new(preference, exchange)))
    }

    /// Adds an A record.
    #[must_use]
    pub fn a(self, name: &str, ip: Ipv4Addr) -> Self {
        self.add(name, RData::A(A(ip)))
    }

    /// Adds an AAAA record.
    #[must_use]
    pub fn aaaa(self, name: &str, ip: Ipv6Addr) -> Self {
        self.add(name, RData::AAAA(AAAA(ip)))
    }

    /// Adds a TXT record holding `text`. Text longer than 255 bytes is split into several
    /// character-strings of at most 255 bytes (as DKIM keys are published); a reader
    /// concatenates them to get `text` back. An empty `text` gives one empty string.
    #[must_use]
    pub fn txt(self, name: &str, text: &str) -> Self {
        let bytes = text.as_bytes();
        let chunks: Vec<&[u8]> = if bytes.is_empty() {
            vec![bytes]
        } else {
            bytes.chunks(255).collect()
        };
        self.add(name, RData::TXT(TXT::from_bytes(chunks)))
    }

    /// Adds a CNAME record from `name` to `target`.
    #[must_use]
    pub fn cname(self, name: &str, target: &str) -> Self {
        let target = parse_name(target);
        self.add(name, RData::CNAME(CNAME(target)))
    }

    /// Adds a PTR record for `ip` (at its `in-addr.arpa.` or `ip6.arpa.` name) pointing to
    /// `name`.
    #[must_use]
    pub fn ptr(mut self, ip: IpAddr, name: &str) -> Self {
        let target = parse_name(name);
        let owner = key_of(&Name::from(ip));
        self.records
            .entry(owner)
            .or_default()
            .push(RData::PTR(PTR(target)));
        self
    }

    /// Makes every query for exactly `name` (any type) answer SERVFAIL.
    #[must_use]
    pub fn servfail(mut self, name: &str) -> Self {
        self.servfail.insert(key_of(&parse_name(name)));
        self
    }

    /// Makes every query for exactly `name` (any type) go unanswered, so the client times out.
    #[must_use]
    pub fn silent(mut self, name: &str) -> Self {
        self.silent.insert(key_of(&parse_name(name)));
        self
    }

    fn add(mut self, name: &str, rdata: RData) -> Self {
        self.records
            .entry(key_of(&parse_name(name)))
            .or_default()
            .push(rdata);
        self
    }

    /// True if some record lives strictly below `key` (an "empty non-terminal").
    fn has_descendants(&self, key: &str) -> bool {
        if key == "." {
            return !self.records.is_empty();
        }
        let suffix = format!(".{key}");
        self.records.keys().any(|k| k.ends_with(&suffix))
    }

    /// A synthetic SOA for the negative answer about `name`: the apex is the last two labels.
    fn soa_for(&self, name: &Name) -> Record {
        let mut apex = name.to_lowercase();
        while apex.num_labels() > 2 {
            apex = apex.base_name();
        }
        apex.set_fqdn(true);
        let mname = Name::from_ascii("ns.testdns.invalid.").unwrap_or_else(|_| Name::root());
        let rname =
            Name::from_ascii("hostmaster.testdns.invalid.").unwrap_or_else(|_| Name::root());
        let soa = SOA::new(mname, rname, 1, 3600, 600, 86_400, self.ttl);
        Record::from_rdata(apex, self.ttl, RData::SOA(soa))
    }

    /// Resolves one question against the zone: response code, answers, authority records.
    fn resolve(&self, qname: &Name, qtype: RecordType) -> (ResponseCode, Vec<Record>, Vec<Record>) {
        let mut answers = Vec::new();
        let mut owner = qname.clone();
        let mut visited = BTreeSet::new();
        for _ in 0..=MAX_CNAME_CHAIN {
            let key = key_of(&owner);
            if !visited.insert(key.clone()) {
                // CNAME loop.
                return (ResponseCode::ServFail, Vec::new(), Vec::new());
            }
            let Some(rdatas) = self.records.get(&key) else {
                let code = if self.has_descendants(&key) {
                    ResponseCode::NoError
                } else {
                    ResponseCode::NXDomain
                };
                return (code, answers, vec![self.soa_for(&owner)]);
            };
            if qtype != RecordType::CNAME {
                let cname = rdatas.iter().find_map(|r| match r {
                    RData::CNAME(c) => Some(c.0.clone()),
                    _ => None,
                });
                if let Some(target) = cname {
                    answers.push(Record::from_rdata(
                        owner.clone(),
                        self.ttl,
                        RData::CNAME(CNAME(target.clone())),
                    ));
                    owner = target;
                    continue;
                }
            }
            let before = answers.len();
            answers.extend(
                rdatas
                    .iter()
                    .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
                    .map(|r| Record::from_rdata(owner.clone(), self.ttl, r.clone())),
            );
            if answers.len() == before {
                // NODATA: the name exists but has no record of this type.
                return (ResponseCode::NoError, answers, vec![self.soa_for(&owner)]);
            }
            return (ResponseCode::NoError, answers, Vec::new());
        }
        (ResponseCode::ServFail, Vec::new(), Vec::new())
    }
}

/// Which transport a packet came in on, which bounds the response size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Udp,
    Tcp,
}

/// What to do with one received packet.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// A well-formed query: send these bytes back.
    Answer(Vec<u8>),
    /// A well-formed query for a `silent` name: send nothing.
    Silent,
    /// A packet that is not a valid query: send FORMERR (if we could read an id) or nothing.
    Malformed(Option<Vec<u8>>),
    /// A response or other packet we must not answer.
    Ignore,
}

/// Answers one packet against `zone`. Never panics, whatever the bytes.
pub(crate) fn handle(zone: &Zone, packet: &[u8], transport: Transport) -> Disposition {
    let request = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(_) => return malformed(packet),
    };
    if request.metadata.message_type != MessageType::Query {
        return Disposition::Ignore;
    }
    let limit = match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => match &request.edns {
            Some(edns) => {
                usize::from(edns.max_payload()).clamp(CLASSIC_UDP_PAYLOAD, MAX_UDP_PAYLOAD)
            }
            None => CLASSIC_UDP_PAYLOAD,
        },
    };

    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = false;
    response.metadata.checking_disabled = request.metadata.checking_disabled;
    response.add_queries(request.queries.iter().cloned());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD as u16);
        response.set_edns(edns);
    }

    let query: &Query = match request.queries.as_slice() {
        [q] => q,
        _ => {
            response.metadata.response_code = ResponseCode::FormErr;
            return Disposition::Answer(encode(&response, limit));
        }
    };
    if request.metadata.op_code != OpCode::Query {
        response.metadata.response_code = ResponseCode::NotImp;
        return Disposition::Answer(encode(&response, limit));
    }
    if query.query_class() != DNSClass::IN {
        response.metadata.response_code = ResponseCode::Refused;
        return Disposition::Answer(encode(&response, limit));
    }

    let key = key_of(query.name());
    if zone.silent.contains(&key) {
        return Disposition::Silent;
    }
    if zone.servfail.contains(&key) {
        response.metadata.response_code = ResponseCode::ServFail;
        return Disposition::Answer(encode(&response, limit));
    }

    let (code, answers, authorities) = zone.resolve(query.name(), query.query_type());
    response.metadata.response_code = code;
    response.add_answers(answers);
    response.add_authorities(authorities);
    Disposition::Answer(encode(&response, limit))
}

/// Serialises `response`; if it exceeds `limit`, sends the question only with TC set.
fn encode(response: &Message, limit: usize) -> Vec<u8> {
    if let Ok(bytes) = response.to_vec()
        && bytes.len() <= limit
    {
        return bytes;
    }
    let truncated = response.truncate();
    if let Ok(bytes) = truncated.to_vec() {
        return bytes;
    }
    // Cannot even encode the question: SERVFAIL with no question.
    let mut bare = Message::error_msg(
        response.metadata.id,
        response.metadata.op_code,
        ResponseCode::ServFail,
    );
    bare.metadata.authoritative = true;
    bare.to_vec().unwrap_or_default()
}

/// FORMERR for an undecodable packet that still has a query header; nothing otherwise.
fn malformed(packet: &[u8]) -> Disposition {
    let (Some(&id_hi), Some(&id_lo), Some(&flags)) = (packet.first(), packet.get(1), packet.get(2))
    else {
        return Disposition::Malformed(None);
    };
    if packet.len() < 12 || flags & 0x80 != 0 {
        // Too short for a header, or a response: never answer.
        return Disposition::Malformed(None);
    }
    let id = u16::from_be_bytes([id_hi, id_lo]);
    let msg = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
    Disposition::Malformed(msg.to_vec().ok())
}

/// Lower-case, fully qualified text form of `name`, the zone's map key.
fn key_of(name: &Name) -> String {
    let mut key = name.to_lowercase().to_ascii();
    if !key.ends_with('.') {
        key.push('.');
    }
    key
}

/// Parses a name from a test's zone description.
fn parse_name(name: &str) -> Name {
    match Name::from_ascii(name) {
        Ok(mut n) => {
            n.set_fqdn(true);
            n
        }
        Err(e) => panic!("testdns: invalid DNS name {name:?} in zone: {e}"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn ask(zone: &Zone, name: &str, qtype: RecordType) -> Message {
        let mut q = Message::query();
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        match handle(zone, &q.to_vec().unwrap(), Transport::Tcp) {
            Disposition::Answer(bytes) => {
                let r = Message::from_vec(&bytes).unwrap();
                assert_eq!(r.metadata.id, q.metadata.id);
                assert_eq!(r.metadata.message_type, MessageType::Response);
                assert!(r.metadata.authoritative);
                assert!(r.metadata.recursion_desired);
                assert!(!r.metadata.recursion_available);
                r
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn names_are_case_insensitive_and_dot_optional() {
        let zone = Zone::new().a("Mail.Example.TEST", Ipv4Addr::LOCALHOST);
        for name in [
            "mail.example.test",
            "MAIL.EXAMPLE.TEST.",
            "mail.example.test.",
        ] {
            let r = ask(&zone, name, RecordType::A);
            assert_eq!(r.metadata.response_code, ResponseCode::NoError);
            assert_eq!(r.answers.len(), 1);
            // The owner name echoes the question as asked.
            assert_eq!(
                r.answers[0].name.to_ascii().trim_end_matches('.'),
                name.trim_end_matches('.')
            );
        }
    }

    #[test]
    fn nxdomain_nodata_and_empty_non_terminal() {
        let zone = Zone::new().a("a.b.example.test", Ipv4Addr::LOCALHOST);
        let r = ask(&zone, "nope.example.test", RecordType::A);
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert!(r.answers.is_empty());
        assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
        assert_eq!(r.authorities[0].name.to_ascii(), "example.test.");

        let r = ask(&zone, "a.b.example.test", RecordType::MX);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        assert_eq!(r.authorities[0].record_type(), RecordType::SOA);

        let r = ask(&zone, "b.example.test", RecordType::A);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
    }

    #[test]
    fn cname_is_chased_and_loops_fail() {
        let zone = Zone::new()
            .cname("www.example.test", "host.example.test")
            .a("host.example.test", Ipv4Addr::new(192, 0, 2, 1))
            .cname("loop1.example.test", "loop2.example.test")
            .cname("loop2.example.test", "loop1.example.test")
            .cname("dangling.example.test", "gone.example.test");
        let r = ask(&zone, "www.example.test", RecordType::A);
        assert_eq!(r.answers.len(), 2);
        assert_eq!(r.answers[0].record_type(), RecordType::CNAME);
        assert_eq!(r.answers[1].data, RData::A(A(Ipv4Addr::new(192, 0, 2, 1))));

        let r = ask(&zone, "www.example.test", RecordType::CNAME);
        assert_eq!(r.answers.len(), 1);

        let r = ask(&zone, "www.example.test", RecordType::MX);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(r.answers.len(), 1);

        let r = ask(&zone, "dangling.example.test", RecordType::A);
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(r.answers.len(), 1);

        let r = ask(&zone, "loop1.example.test", RecordType::A);
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    }

    #[test]
    fn txt_is_split_into_255_byte_strings() {
        let long = "v=DKIM1; k=rsa; p=".to_string() + &"A".repeat(600);
        let zone = Zone::new().txt("sel._domainkey.example.test", &long);
        let r = ask(&zone, "sel._domainkey.example.test", RecordType::TXT);
        let RData::TXT(txt) = &r.answers[0].data else {
            panic!("not TXT")
        };
        assert_eq!(txt.txt_data.len(), 3);
        assert!(txt.txt_data.iter().all(|s| s.len() <= 255));
        assert_eq!(txt.txt_data.concat(), long.as_bytes());
    }

    #[test]
    fn udp_truncates_oversized_answers() {
        let mut zone = Zone::new();
        for i in 0..40 {
            zone = zone.txt("big.example.test", &format!("{i:0>200}"));
        }
        let mut q = Message::query();
        q.add_query(Query::query(
            Name::from_ascii("big.example.test.").unwrap(),
            RecordType::TXT,
        ));
        let Disposition::Answer(bytes) = handle(&zone, &q.to_vec().unwrap(), Transport::Udp) else {
            panic!()
        };
        assert!(bytes.len() <= CLASSIC_UDP_PAYLOAD);
        let r = Message::from_vec(&bytes).unwrap();
        assert!(r.metadata.truncation);
        assert!(r.answers.is_empty());
    }

    #[test]
    fn garbage_never_panics() {
        let zone = Zone::new().a("x.test", Ipv4Addr::LOCALHOST);
        assert_eq!(
            handle(&zone, b"", Transport::Udp),
            Disposition::Malformed(None)
        );
        assert_eq!(
            handle(&zone, b"\x12", Transport::Udp),
            Disposition::Malformed(None)
        );
        let Disposition::Malformed(Some(bytes)) = handle(
            &zone,
            b"\x12\x34\x01\x00\x00\x05\x00\x00\x00\x00\x00\x00\xff",
            Transport::Udp,
        ) else {
            panic!()
        };
        let r = Message::from_vec(&bytes).unwrap();
        assert_eq!(r.metadata.id, 0x1234);
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
        // Every prefix and a pseudo-random byte soup.
        let mut q = Message::query();
        q.add_query(Query::query(
            Name::from_ascii("x.test.").unwrap(),
            RecordType::A,
        ));
        let good = q.to_vec().unwrap();
        for n in 0..good.len() {
            let _ = handle(&zone, &good[..n], Transport::Udp);
        }
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..2000 {
            let mut pkt = good.clone();
            for b in pkt.iter_mut().skip(2) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                if seed.is_multiple_of(5) {
                    *b = (seed >> 32) as u8;
                }
            }
            let _ = handle(&zone, &pkt, Transport::Udp);
        }
    }

    #[test]
    fn responses_are_ignored() {
        let zone = Zone::new();
        let mut m = Message::response(7, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii("x.test.").unwrap(),
            RecordType::A,
        ));
        assert_eq!(
            handle(&zone, &m.to_vec().unwrap(), Transport::Udp),
            Disposition::Ignore
        );
    }

    #[test]
    fn null_mx_and_ptr() {
        let zone = Zone::new()
            .mx("nomail.test", 0, ".")
            .ptr(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)), "host.example.test")
            .ptr(IpAddr::V6(Ipv6Addr::LOCALHOST), "v6.example.test");
        let r = ask(&zone, "nomail.test", RecordType::MX);
        assert_eq!(r.answers[0].data, RData::MX(MX::new(0, Name::root())));
        let r = ask(&zone, "7.2.0.192.in-addr.arpa", RecordType::PTR);
        assert_eq!(r.answers.len(), 1);
        let r = ask(
            &zone,
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.",
            RecordType::PTR,
        );
        assert_eq!(r.answers.len(), 1);
    }
}
