//! End-to-end: hickory-resolver 0.26 against a running TestDns, over UDP and TCP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};
use portcullis_testdns::{TestDns, Zone};

fn resolver_with(dns: &TestDns, mut ns: NameServerConfig) -> TokioResolver {
    for conn in &mut ns.connections {
        conn.port = dns.addr().port();
    }
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(1);
    opts.attempts = 1;
    opts.cache_size = 0;
    Resolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![ns]),
        TokioRuntimeProvider::default(),
    )
    .with_options(opts)
    .build()
    .unwrap()
}

fn resolver(dns: &TestDns) -> TokioResolver {
    resolver_with(dns, NameServerConfig::udp_and_tcp(dns.addr().ip()))
}

/// The classification the delivery code needs, written exactly as documented in lib.rs.
#[derive(Debug, PartialEq)]
enum Kind {
    NxDomain,
    NoData,
    Timeout,
    Code(ResponseCode),
    Other(String),
}

fn classify(err: NetError) -> Kind {
    match err {
        NetError::Dns(DnsError::NoRecordsFound(NoRecords {
            response_code: ResponseCode::NXDomain,
            ..
        })) => Kind::NxDomain,
        NetError::Dns(DnsError::NoRecordsFound(NoRecords {
            response_code: ResponseCode::NoError,
            ..
        })) => Kind::NoData,
        NetError::Timeout => Kind::Timeout,
        NetError::Dns(DnsError::ResponseCode(code)) => Kind::Code(code),
        other => Kind::Other(other.to_string()),
    }
}

fn mxs(lookup: &hickory_resolver::lookup::Lookup) -> Vec<(u16, String)> {
    lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn mx_records_and_null_mx() {
    let zone = Zone::new()
        .mx("example.test", 20, "mx2.example.test")
        .mx("Example.Test.", 10, "mx1.example.test")
        .mx("nomail.test", 0, ".");
    let dns = TestDns::start(zone).await.unwrap();
    let r = resolver(&dns);

    let lookup = r.mx_lookup("example.test.").await.unwrap();
    let mut got = mxs(&lookup);
    got.sort();
    assert_eq!(
        got,
        vec![
            (10, "mx1.example.test.".to_string()),
            (20, "mx2.example.test.".to_string())
        ]
    );

    let lookup = r.mx_lookup("NOMAIL.test").await.unwrap();
    let null: Vec<_> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::MX(mx) => Some(mx.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(null.len(), 1);
    assert_eq!(null[0].preference, 0);
    assert!(null[0].exchange.is_root());
    assert!(dns.queries() >= 2);
}

#[tokio::test]
async fn nxdomain_and_nodata_are_distinguishable() {
    let zone = Zone::new().a("host.example.test", Ipv4Addr::new(192, 0, 2, 1));
    let dns = TestDns::start(zone).await.unwrap();
    let r = resolver(&dns);

    let err = r.mx_lookup("missing.example.test.").await.unwrap_err();
    assert!(err.is_nx_domain());
    assert_eq!(classify(err), Kind::NxDomain);

    let err = r.mx_lookup("host.example.test.").await.unwrap_err();
    assert!(!err.is_nx_domain());
    assert!(err.is_no_records_found());
    let soa = err
        .clone()
        .into_soa()
        .expect("negative answers carry an SOA");
    assert_eq!(soa.name.to_ascii(), "example.test.");
    assert_eq!(classify(err), Kind::NoData);

    // An empty non-terminal is NODATA too.
    let err = r.ipv4_lookup("example.test.").await.unwrap_err();
    assert_eq!(classify(err), Kind::NoData);
}

#[tokio::test]
async fn a_aaaa_cname_and_ptr() {
    let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    let zone = Zone::new()
        .a("mx.example.test", Ipv4Addr::new(192, 0, 2, 25))
        .aaaa("mx.example.test", v6)
        .cname("alias.example.test", "mx.example.test")
        .ptr(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 25)), "mx.example.test")
        .ptr(IpAddr::V6(v6), "mx.example.test");
    let dns = TestDns::start(zone).await.unwrap();
    let r = resolver(&dns);

    let ips = r.lookup_ip("alias.example.test.").await.unwrap();
    let mut ips: Vec<IpAddr> = ips.iter().collect();
    ips.sort();
    assert_eq!(
        ips,
        vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 25)), IpAddr::V6(v6)]
    );

    for ip in [IpAddr::V4(Ipv4Addr::new(192, 0, 2, 25)), IpAddr::V6(v6)] {
        let ptr = r.reverse_lookup(ip).await.unwrap();
        let names: Vec<String> = ptr
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::PTR(p) => Some(p.0.to_ascii()),
                _ => None,
            })
            .collect();
        assert_eq!(names, vec!["mx.example.test.".to_string()]);
    }
    let err = r
        .reverse_lookup(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 26)))
        .await
        .unwrap_err();
    assert!(err.is_nx_domain());
}

fn txt_strings(lookup: &hickory_resolver::lookup::Lookup) -> Vec<Vec<u8>> {
    lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(t.txt_data.concat()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn long_txt_is_reassembled_over_udp_and_truncation_falls_back_to_tcp() {
    let dkim = format!("v=DKIM1; k=rsa; p={}", "MIIBIjANBgkqhkiG9w0B".repeat(20));
    assert!(dkim.len() > 255);
    let mut zone = Zone::new()
        .txt("sel._domainkey.example.test", &dkim)
        .txt("_dmarc.example.test", "v=DMARC1; p=reject");
    // Too big for any UDP answer: forces TC=1 then a retry over TCP.
    let huge = "x".repeat(3000);
    for i in 0..3 {
        zone = zone.txt("huge.example.test", &format!("{i}{huge}"));
    }
    let dns = TestDns::start(zone).await.unwrap();
    let r = resolver(&dns);

    let lookup = r.txt_lookup("sel._domainkey.example.test.").await.unwrap();
    assert_eq!(txt_strings(&lookup), vec![dkim.into_bytes()]);
    let lookup = r.txt_lookup("_dmarc.example.test.").await.unwrap();
    assert_eq!(txt_strings(&lookup), vec![b"v=DMARC1; p=reject".to_vec()]);

    let lookup = r.txt_lookup("huge.example.test.").await.unwrap();
    let got = txt_strings(&lookup);
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|t| t.len() == 3001));
}

#[tokio::test]
async fn tcp_only_resolver_works() {
    let zone = Zone::new().mx("example.test", 5, "mx.example.test");
    let dns = TestDns::start(zone).await.unwrap();
    let mut ns = NameServerConfig::tcp(dns.addr().ip());
    ns.connections = vec![ConnectionConfig::tcp()];
    let r = resolver_with(&dns, ns);
    let lookup = r.mx_lookup("example.test.").await.unwrap();
    assert_eq!(mxs(&lookup), vec![(5, "mx.example.test.".to_string())]);
    // Several queries over the same connection.
    assert_eq!(
        classify(r.mx_lookup("nope.test.").await.unwrap_err()),
        Kind::NxDomain
    );
    let lookup = r.mx_lookup("example.test.").await.unwrap();
    assert_eq!(mxs(&lookup).len(), 1);
}

#[tokio::test]
async fn servfail_and_silent() {
    let zone = Zone::new()
        .servfail("broken.example.test")
        .silent("blackhole.example.test");
    let dns = TestDns::start(zone).await.unwrap();
    let r = resolver(&dns);

    let err = r.mx_lookup("broken.example.test.").await.unwrap_err();
    assert!(!err.is_no_records_found());
    assert_eq!(classify(err), Kind::Code(ResponseCode::ServFail));

    let before = dns.queries();
    let started = Instant::now();
    let err = r.mx_lookup("blackhole.example.test.").await.unwrap_err();
    assert_eq!(classify(err), Kind::Timeout);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        dns.queries() > before,
        "the silent query still reached the server"
    );
}

#[tokio::test]
async fn set_zone_replaces_records() {
    let dns = TestDns::start(Zone::new().mx("example.test", 10, "old.example.test"))
        .await
        .unwrap();
    let r = resolver(&dns);
    let lookup = r.mx_lookup("example.test.").await.unwrap();
    assert_eq!(mxs(&lookup), vec![(10, "old.example.test.".to_string())]);

    dns.set_zone(Zone::new().mx("example.test", 20, "new.example.test"));
    let lookup = r.mx_lookup("example.test.").await.unwrap();
    assert_eq!(mxs(&lookup), vec![(20, "new.example.test.".to_string())]);

    dns.set_zone(Zone::new());
    let err = r.mx_lookup("example.test.").await.unwrap_err();
    assert_eq!(classify(err), Kind::NxDomain);
}

#[tokio::test]
async fn raw_sockets_garbage_and_drop() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dns = TestDns::start(Zone::new().a("x.test", Ipv4Addr::LOCALHOST))
        .await
        .unwrap();
    let addr = dns.addr();

    // UDP garbage with a query header gets FORMERR; shorter garbage is dropped.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(b"\x00", addr).await.unwrap();
    sock.send_to(
        b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff",
        addr,
    )
    .await
    .unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(n >= 12);
    assert_eq!(&buf[..2], b"\xab\xcd");
    assert_eq!(buf[2] & 0x80, 0x80, "QR set");
    assert_eq!(buf[3] & 0x0f, 1, "FORMERR");

    // TCP: a garbage frame gets a FORMERR frame, then the connection keeps working.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"\x00\x0e\xab\xce\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff")
        .await
        .unwrap();
    let mut len = [0u8; 2];
    tcp.read_exact(&mut len).await.unwrap();
    let mut frame = vec![0u8; usize::from(u16::from_be_bytes(len))];
    tcp.read_exact(&mut frame).await.unwrap();
    assert_eq!(&frame[..2], b"\xab\xce");
    assert_eq!(frame[3] & 0x0f, 1);
    assert_eq!(dns.queries(), 0, "malformed packets are not counted");

    // After drop, the port stops answering.
    drop(dns);
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
