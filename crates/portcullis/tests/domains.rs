//! `portcullis domain add/dns/show/check` and `domain dkim rotate/activate/
//! retire` (issue 7), run as the real binary; `domain check` resolves
//! through a real DNS server on loopback (portcullis-testdns).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::run;
use portcullis_testdns::{TestDns, Zone};
use tempfile::TempDir;

/// A data dir with a config naming our public address, hostname and DNS server.
fn setup(dns: Option<std::net::SocketAddr>) -> (TempDir, String) {
    setup_with(dns, "[domains]\npublic_ips = [\"192.0.2.10\"]\n")
}

fn setup_with(dns: Option<std::net::SocketAddr>, domains: &str) -> (TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portcullis.toml");
    let dns_line = dns
        .map(|a| format!("dns_servers = [\"{a}\"]\n"))
        .unwrap_or_default();
    std::fs::write(
        &config,
        format!("hostname = \"mail.example.net\"\n\n[delivery]\n{dns_line}\n{domains}"),
    )
    .unwrap();
    let config = config.to_string_lossy().into_owned();
    (dir, config)
}

fn cli(dir: &TempDir, config: &str, args: &[&str]) -> common::Run {
    let mut all = vec!["--config", config];
    all.extend_from_slice(args);
    run(dir, &all)
}

/// The records of `domain dns` output: (name, type, value).
fn records(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .filter(|l| !l.starts_with(';'))
        .filter_map(|l| {
            let (name, rest) = l.split_once(". ")?;
            if let Some(value) = rest.strip_prefix("TXT \"") {
                Some((
                    name.to_owned(),
                    "TXT".to_owned(),
                    value.trim_end_matches('"').to_owned(),
                ))
            } else {
                rest.strip_prefix("MX ")
                    .map(|mx| (name.to_owned(), "MX".to_owned(), mx.to_owned()))
            }
        })
        .collect()
}

fn zone_of(records: &[(String, String, String)]) -> Zone {
    let mut zone = Zone::new();
    for (name, kind, value) in records {
        zone = match kind.as_str() {
            "TXT" => zone.txt(name, value),
            _ => {
                let (pref, host) = value.split_once(' ').unwrap();
                zone.mx(name, pref.parse().unwrap(), host.trim_end_matches('.'))
            }
        };
    }
    zone.ptr(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)), "mail.example.net")
}

#[test]
fn add_prints_the_records_and_dns_reprints_them() {
    let (dir, config) = setup(None);
    let added = cli(&dir, &config, &["domain", "add", "Example.COM"]).ok();
    assert!(
        added.stdout.starts_with("Added local domain example.com\n"),
        "{}",
        added.stdout
    );
    let printed = records(&added.stdout);
    let kinds: Vec<(&str, &str)> = printed
        .iter()
        .map(|(n, k, _)| (n.as_str(), k.as_str()))
        .collect();
    let (ed, rsa) = (&printed[0], &printed[1]);
    assert!(ed.0.ends_with("e._domainkey.example.com"), "{kinds:?}");
    assert!(ed.2.starts_with("v=DKIM1; k=ed25519; p="), "{ed:?}");
    assert!(rsa.0.ends_with("r._domainkey.example.com"), "{kinds:?}");
    assert!(rsa.2.starts_with("v=DKIM1; k=rsa; p=MIIB"), "{rsa:?}");
    assert_eq!(
        &printed[2..],
        &[
            (
                "example.com".into(),
                "TXT".into(),
                "v=spf1 ip4:192.0.2.10 ~all".into()
            ),
            (
                "_dmarc.example.com".into(),
                "TXT".into(),
                "v=DMARC1; p=none; rua=mailto:postmaster@example.com".into()
            ),
            (
                "example.com".into(),
                "MX".into(),
                "10 mail.example.net.".into()
            ),
        ]
    );
    assert!(added.stdout.contains("p=quarantine"), "DMARC advice");
    assert!(!added.stdout.contains("PRIVATE"), "no private key printed");

    let again = cli(&dir, &config, &["domain", "dns", "example.com"]).ok();
    assert_eq!(records(&again.stdout), printed);
    let zone = cli(
        &dir,
        &config,
        &["domain", "dns", "example.com", "--format", "zone"],
    )
    .ok();
    assert!(
        zone.stdout.starts_with("$ORIGIN example.com.\n"),
        "{}",
        zone.stdout
    );
    assert!(
        zone.stdout.contains("@\tIN\tMX\t10 mail.example.net.\n"),
        "{}",
        zone.stdout
    );
    for quoted in zone.stdout.split('"').skip(1).step_by(2) {
        assert!(
            quoted.len() <= 255,
            "TXT strings of at most 255 bytes: {quoted}"
        );
    }
    cli(&dir, &config, &["domain", "add", "example.com"]).fails_naming("example.com");
    cli(&dir, &config, &["domain", "dns", "nope.example"]).fails_naming("nope.example");
}

#[test]
fn rotation_keeps_signing_with_the_old_pair_until_activation() {
    let (dir, config) = setup(None);
    cli(&dir, &config, &["domain", "add", "example.com"]).ok();
    let show = cli(&dir, &config, &["domain", "show", "example.com"]).ok();
    let old_tag = show
        .stdout
        .lines()
        .nth(2)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(
        show.stdout.matches(" active ").count(),
        2,
        "{}",
        show.stdout
    );

    let rotated = cli(&dir, &config, &["domain", "dkim", "rotate", "example.com"]).ok();
    let new_tag = rotated
        .stdout
        .split("domain dkim activate example.com ")
        .nth(1)
        .unwrap()
        .split('`')
        .next()
        .unwrap()
        .to_owned();
    assert_ne!(new_tag, old_tag);
    assert_eq!(records(&rotated.stdout).len(), 2, "{}", rotated.stdout);
    let show = cli(&dir, &config, &["domain", "show", "example.com"]).ok();
    assert_eq!(
        show.stdout.matches(" pending ").count(),
        2,
        "{}",
        show.stdout
    );

    cli(
        &dir,
        &config,
        &["domain", "dkim", "retire", "example.com", &old_tag],
    )
    .fails_naming("active");
    cli(
        &dir,
        &config,
        &["domain", "dkim", "activate", "example.com", "nope"],
    )
    .fails_naming("nope");
    cli(
        &dir,
        &config,
        &["domain", "dkim", "activate", "example.com", &new_tag],
    )
    .ok();
    let show = cli(&dir, &config, &["domain", "show", "example.com"]).ok();
    assert_eq!(
        show.stdout.matches(" retired ").count(),
        2,
        "{}",
        show.stdout
    );
    let retired = cli(
        &dir,
        &config,
        &["domain", "dkim", "retire", "example.com", &old_tag],
    )
    .ok();
    assert!(
        retired
            .stdout
            .contains(&format!("{old_tag}e._domainkey.example.com"))
    );
    let show = cli(&dir, &config, &["domain", "show", "example.com"]).ok();
    assert!(
        !show.stdout.contains(&format!("{old_tag} ")),
        "{}",
        show.stdout
    );
    assert_eq!(
        show.stdout.matches(" active ").count(),
        2,
        "{}",
        show.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_then_points_at_exactly_the_wrong_record() {
    let dns = TestDns::start(Zone::new()).await.unwrap();
    let (dir, config) = setup(Some(dns.addr()));
    let added = cli(&dir, &config, &["domain", "add", "example.com"]).ok();
    let published = records(&added.stdout);

    // Nothing published yet: everything is missing.
    let missing = cli(&dir, &config, &["domain", "check", "example.com"]);
    assert_eq!(missing.code, 1, "{}", missing.stdout);
    assert!(
        missing
            .stdout
            .lines()
            .filter(|l| l.starts_with("MISSING"))
            .count()
            >= 5,
        "{}",
        missing.stdout
    );

    dns.set_zone(zone_of(&published));
    let ok = cli(&dir, &config, &["domain", "check", "example.com"]).ok();
    assert!(
        !ok.stdout.contains("WRONG") && !ok.stdout.contains("MISSING"),
        "{}",
        ok.stdout
    );
    assert_eq!(
        ok.stdout.lines().filter(|l| l.starts_with("OK ")).count(),
        6,
        "{}",
        ok.stdout
    );

    // One wrong record: SPF names another address.
    let mut wrong = published.clone();
    wrong[2].2 = "v=spf1 ip4:198.51.100.7 -all".into();
    dns.set_zone(zone_of(&wrong));
    let bad = cli(&dir, &config, &["domain", "check", "example.com"]);
    assert_eq!(bad.code, 1, "{}", bad.stdout);
    let not_ok: Vec<&str> = bad
        .stdout
        .lines()
        .filter(|l| !l.starts_with("OK ") && !l.starts_with("          "))
        .collect();
    assert_eq!(not_ok.len(), 1, "{}", bad.stdout);
    assert!(
        not_ok[0].starts_with("WRONG     SPF example.com"),
        "{}",
        bad.stdout
    );
    assert!(
        bad.stdout
            .contains("publish: example.com. TXT \"v=spf1 ip4:192.0.2.10 ~all\""),
        "{}",
        bad.stdout
    );

    // A DKIM key that is not ours.
    let mut wrong = published.clone();
    wrong[0].2 = "v=DKIM1; k=ed25519; p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into();
    dns.set_zone(zone_of(&wrong));
    let bad = cli(&dir, &config, &["domain", "check", "example.com"]);
    assert_eq!(bad.code, 1);
    let not_ok: Vec<&str> = bad
        .stdout
        .lines()
        .filter(|l| !l.starts_with("OK ") && !l.starts_with("          "))
        .collect();
    assert_eq!(not_ok.len(), 1, "{}", bad.stdout);
    assert!(
        not_ok[0].starts_with(&format!("WRONG     DKIM {}", published[0].0)),
        "{}",
        bad.stdout
    );
    assert!(
        bad.stderr
            .contains("1 DNS record(s) of example.com need attention"),
        "{}",
        bad.stderr
    );
}

/// Without `public_ips`, SPF names the hostname, and the check follows its
/// address records to their PTR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_without_public_ips_uses_the_hostname_addresses() {
    let dns = TestDns::start(Zone::new()).await.unwrap();
    let (dir, config) = setup_with(Some(dns.addr()), "");
    let added = cli(&dir, &config, &["domain", "add", "example.com"]).ok();
    let published = records(&added.stdout);
    assert_eq!(published[2].2, "v=spf1 a:mail.example.net ~all");

    dns.set_zone(zone_of(&published));
    let no_address = cli(&dir, &config, &["domain", "check", "example.com"]);
    assert_eq!(no_address.code, 1, "{}", no_address.stdout);
    assert!(
        no_address
            .stdout
            .contains("MISSING   A/AAAA mail.example.net"),
        "{}",
        no_address.stdout
    );

    let ip = Ipv4Addr::new(192, 0, 2, 20);
    dns.set_zone(
        zone_of(&published)
            .a("mail.example.net", ip)
            .ptr(IpAddr::V4(ip), "mail.example.net"),
    );
    let ok = cli(&dir, &config, &["domain", "check", "example.com"]).ok();
    assert!(
        ok.stdout
            .contains("OK        PTR 192.0.2.20: names the HELO host"),
        "{}",
        ok.stdout
    );
}
