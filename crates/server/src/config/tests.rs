#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

fn invalid(text: &str) -> (String, String) {
    match Config::from_toml_str(text) {
        Err(ConfigError::Invalid { key, message }) => (key, message),
        other => panic!("expected Invalid for {text:?}, got {other:?}"),
    }
}

fn parse_error(text: &str) -> String {
    match Config::from_toml_str(text) {
        Err(ConfigError::Parse(message)) => message,
        other => panic!("expected Parse for {text:?}, got {other:?}"),
    }
}

#[test]
fn defaults() {
    let c = Config::default_config();
    assert!(!c.hostname.is_empty());
    assert!(hostname_problem(&c.hostname).is_none());
    assert_eq!(c.data_dir, PathBuf::from("./portcullis-data"));
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.log.level, "info");
    assert_eq!(
        c.tls,
        TlsConfig {
            cert: None,
            key: None
        }
    );
    assert_eq!(c.listeners.smtp.address, "0.0.0.0:2525".parse().unwrap());
    assert_eq!(
        c.listeners.submission.address,
        "0.0.0.0:2587".parse().unwrap()
    );
    assert_eq!(
        c.listeners.submissions.address,
        "0.0.0.0:2465".parse().unwrap()
    );
    let roles: Vec<_> = c.listeners.iter().map(|l| l.role).collect();
    assert_eq!(roles, ListenerRole::ALL);
    for l in c.listeners.iter() {
        assert!(l.enabled);
        assert_eq!(l.max_connections, 1000);
        assert_eq!(l.max_connections_per_ip, 20);
        assert_eq!(l.max_message_size, 25 * 1024 * 1024);
        assert_eq!(l.max_recipients, 100);
        assert_eq!(l.max_command_line, 512);
        assert_eq!(l.max_text_line, 1000);
        assert_eq!(l.idle_timeout, Duration::from_secs(300));
        assert_eq!(l.session_timeout, Duration::from_secs(1800));
        assert_eq!(l.max_errors, 10);
    }
    assert_eq!(c.security.auth_min_duration, Duration::from_millis(250));
    assert_eq!(c.security.max_auth_failures, 3);
    assert!(c.security.trusted_networks.is_empty());
    assert_eq!(
        c.throttle,
        ThrottleConfig {
            connections_per_minute: 600,
            smtp_messages_per_minute: 30,
            burst: 50
        }
    );
    assert_eq!(c.usage.warn_percent, 90);
    assert_eq!(c.default_plan, "standard");
    assert_eq!(c.plan_names(), "premium, professional, standard, trial");
    for (name, per_hour) in [
        ("trial", 1000),
        ("standard", 1500),
        ("premium", 3000),
        ("professional", 5000),
    ] {
        assert_eq!(
            c.plan(name),
            Some(&Plan {
                emails_per_hour: per_hour,
                emails_per_day: None,
                max_recipients: None,
                max_message_size: None
            }),
            "{name}"
        );
    }
    assert_eq!(c.plan("gold"), None);
    c.validate().unwrap();
    assert_eq!(ListenerRole::Smtp.name(), "smtp");
    assert_eq!(ListenerRole::Submission.name(), "submission");
    assert_eq!(ListenerRole::Submissions.name(), "submissions");
}

#[test]
fn empty_file_and_no_file_are_the_defaults() {
    let from_empty = Config::from_toml_str("").unwrap();
    assert_eq!(from_empty, Config::default_config());
    assert_eq!(Config::load(None).unwrap(), Config::default_config());
}

#[test]
fn every_key_parsed() {
    let text = r#"
hostname = "mail.example.com"
data_dir = "/var/lib/portcullis"

[log]
format = "json"
level = "portcullis_server=debug,info"

[tls]
cert = "/etc/portcullis/cert.pem"
key = "/etc/portcullis/key.pem"

[listeners.smtp]
enabled = false
address = "127.0.0.1:25"
max_connections = 10
max_connections_per_ip = 2
max_message_size = "10MB"
max_recipients = 50
max_command_line = 1024
max_text_line = 2000
idle_timeout = "30s"
session_timeout = "1h30m"
max_errors = 5

[listeners.submission]
address = "[::1]:587"
max_message_size = 1048576

[listeners.submissions]
address = "192.0.2.1:465"
max_message_size = "512KiB"

[security]
auth_min_duration = "1s500ms"
max_auth_failures = 7
trusted_networks = ["127.0.0.1", "10.0.0.0/8", "2001:db8::/32", "::1"]

[throttle]
connections_per_minute = 120
smtp_messages_per_minute = 0
burst = 3

[usage]
warn_percent = 75
"#;
    let c = Config::from_toml_str(text).unwrap();
    assert_eq!(c.hostname, "mail.example.com");
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/portcullis"));
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.log.level, "portcullis_server=debug,info");
    assert_eq!(c.tls.cert, Some(PathBuf::from("/etc/portcullis/cert.pem")));
    assert_eq!(c.tls.key, Some(PathBuf::from("/etc/portcullis/key.pem")));
    let smtp = &c.listeners.smtp;
    assert!(!smtp.enabled);
    assert_eq!(smtp.role, ListenerRole::Smtp);
    assert_eq!(smtp.address, "127.0.0.1:25".parse().unwrap());
    assert_eq!(smtp.max_connections, 10);
    assert_eq!(smtp.max_connections_per_ip, 2);
    assert_eq!(smtp.max_message_size, 10_000_000);
    assert_eq!(smtp.max_recipients, 50);
    assert_eq!(smtp.max_command_line, 1024);
    assert_eq!(smtp.max_text_line, 2000);
    assert_eq!(smtp.idle_timeout, Duration::from_secs(30));
    assert_eq!(smtp.session_timeout, Duration::from_secs(5400));
    assert_eq!(smtp.max_errors, 5);
    assert_eq!(c.listeners.submission.address, "[::1]:587".parse().unwrap());
    assert_eq!(c.listeners.submission.max_message_size, 1_048_576);
    assert_eq!(
        c.listeners.submission.max_recipients, 100,
        "unset keys keep their default"
    );
    assert_eq!(c.listeners.submissions.role, ListenerRole::Submissions);
    assert_eq!(c.listeners.submissions.max_message_size, 512 * 1024);
    assert_eq!(c.security.auth_min_duration, Duration::from_millis(1500));
    assert_eq!(c.security.max_auth_failures, 7);
    let nets: Vec<String> = c
        .security
        .trusted_networks
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        nets,
        ["127.0.0.1/32", "10.0.0.0/8", "2001:db8::/32", "::1/128"]
    );
    assert_eq!(
        c.throttle,
        ThrottleConfig {
            connections_per_minute: 120,
            smtp_messages_per_minute: 0,
            burst: 3
        }
    );
    assert_eq!(c.usage.warn_percent, 75);
}

#[test]
fn plans_override_shipped_ones_key_by_key() {
    let c = Config::from_toml_str(
        "[plans.standard]\nemails_per_day = 20000\nmax_message_size = \"10MiB\"\n\
         [plans.trial]\nemails_per_hour = 10\nmax_recipients = 5\n",
    )
    .unwrap();
    assert_eq!(
        c.plan("standard"),
        Some(&Plan {
            emails_per_hour: 1500,
            emails_per_day: Some(20_000),
            max_recipients: None,
            max_message_size: Some(10 * 1024 * 1024),
        }),
        "unset keys keep the shipped values"
    );
    assert_eq!(
        c.plan("trial"),
        Some(&Plan {
            emails_per_hour: 10,
            emails_per_day: None,
            max_recipients: Some(5),
            max_message_size: None,
        })
    );
    assert_eq!(c.plan("premium").unwrap().emails_per_hour, 3000);
    assert_eq!(c.plans.len(), 4);
}

#[test]
fn plans_can_be_added() {
    let c = Config::from_toml_str(
        "default_plan = \"bulk-2\"\n[plans.bulk-2]\nemails_per_hour = 10000\nemails_per_day = 100000\n\
         max_recipients = 1000\nmax_message_size = 2048\n",
    )
    .unwrap();
    assert_eq!(c.default_plan, "bulk-2");
    assert_eq!(
        c.plan("bulk-2"),
        Some(&Plan {
            emails_per_hour: 10_000,
            emails_per_day: Some(100_000),
            max_recipients: Some(1000),
            max_message_size: Some(2048),
        })
    );
    assert_eq!(
        c.plan_names(),
        "bulk-2, premium, professional, standard, trial"
    );
}

#[test]
fn new_plan_needs_emails_per_hour() {
    let (key, message) = invalid("[plans.gold]\nemails_per_day = 5000\n");
    assert_eq!(key, "plans.gold.emails_per_hour");
    assert!(message.contains("must be set"), "{message}");
    let (key, _) = invalid("[plans.gold]\n");
    assert_eq!(key, "plans.gold.emails_per_hour");
}

#[test]
fn plan_rules() {
    let err = Config::from_toml_str("[plans.trial]\nemails_per_hour = 0\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "plans.trial.emails_per_hour: must be at least 1"
    );
    let (key, message) = invalid("[plans.standard]\nemails_per_day = 1499\n");
    assert_eq!(key, "plans.standard.emails_per_day");
    assert!(message.contains("emails_per_hour (1500)"), "{message}");
    // Equal is fine.
    Config::from_toml_str("[plans.standard]\nemails_per_day = 1500\n").unwrap();
    let (key, _) = invalid("[plans.x]\nemails_per_hour = 10\nemails_per_day = 9\n");
    assert_eq!(key, "plans.x.emails_per_day");
    let (key, _) = invalid("[plans.premium]\nmax_recipients = 0\n");
    assert_eq!(key, "plans.premium.max_recipients");
    let (key, message) = invalid("[plans.premium]\nmax_message_size = 1023\n");
    assert_eq!(key, "plans.premium.max_message_size");
    assert!(message.contains("at least 1024"), "{message}");
    Config::from_toml_str("[plans.premium]\nmax_message_size = \"1KiB\"\n").unwrap();
    let (key, message) = invalid("[plans.premium]\nmax_message_size = \"lots\"\n");
    assert_eq!(key, "plans.premium.max_message_size");
    assert!(message.contains("invalid size \"lots\""), "{message}");

    let msg = parse_error("[plans.trial]\nemails_per_hour = -1\n");
    assert!(msg.starts_with("plans.trial.emails_per_hour: "), "{msg}");
    let msg = parse_error("[plans.trial]\nemails_per_hour = 5\nper_minute = 1\n");
    assert!(msg.contains("per_minute"), "{msg}");
    assert!(msg.contains("plans.trial"), "{msg}");
}

#[test]
fn plan_names_are_checked() {
    for bad in ["Gold", "gold plan", "g\u{e9}", "a.b"] {
        let text = format!("[plans.{bad:?}]\nemails_per_hour = 10\n");
        let (key, message) = invalid(&text);
        assert_eq!(key, format!("plans.{bad}"));
        assert!(message.contains("plan name"), "{message}");
    }
    let (key, _) = invalid("[plans.\"\"]\nemails_per_hour = 10\n");
    assert_eq!(key, "plans.");
    let long = "a".repeat(65);
    let (key, message) = invalid(&format!("[plans.{long}]\nemails_per_hour = 10\n"));
    assert_eq!(key, format!("plans.{long}"));
    assert!(message.contains("at most 64"), "{message}");
    let ok = "a".repeat(64);
    Config::from_toml_str(&format!("[plans.{ok}]\nemails_per_hour = 10\n")).unwrap();
    Config::from_toml_str("[plans.a_b-9]\nemails_per_hour = 10\n").unwrap();

    // Checked in validate() too, for configs built in code.
    let mut c = Config::default_config();
    c.plans.insert("Bad".into(), c.plans["trial"].clone());
    assert!(matches!(c.validate(), Err(ConfigError::Invalid { key, .. }) if key == "plans.Bad"));
}

#[test]
fn default_plan_must_exist() {
    let err = Config::from_toml_str("default_plan = \"gold\"\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "default_plan: unknown plan \"gold\" (known plans: premium, professional, standard, trial)"
    );
    let c = Config::from_toml_str("default_plan = \"trial\"\n").unwrap();
    assert_eq!(c.default_plan, "trial");
}

#[test]
fn trusted_networks() {
    let c = Config::from_toml_str(
        "[security]\ntrusted_networks = [\" 192.0.2.7 \", \"10.1.2.3/8\", \"2001:db8::/32\"]\n",
    )
    .unwrap();
    let s = &c.security;
    assert_eq!(
        s.trusted_networks[1].to_string(),
        "10.0.0.0/8",
        "host bits cleared"
    );
    let ip = |t: &str| t.parse::<IpAddr>().unwrap();
    assert!(s.is_trusted(ip("192.0.2.7")));
    assert!(!s.is_trusted(ip("192.0.2.8")));
    assert!(s.is_trusted(ip("10.255.0.1")));
    assert!(!s.is_trusted(ip("11.0.0.1")));
    assert!(s.is_trusted(ip("2001:db8:1::5")));
    assert!(!s.is_trusted(ip("2001:db9::1")));
    // IPv4 clients seen on an IPv6 socket.
    assert!(s.is_trusted(ip("::ffff:10.9.8.7")));
    assert!(!s.is_trusted(ip("::ffff:11.9.8.7")));
    assert!(
        !Config::default_config()
            .security
            .is_trusted(ip("127.0.0.1"))
    );

    let c = Config::from_toml_str("[security]\ntrusted_networks = [\"::ffff:0:0/96\"]\n").unwrap();
    assert!(c.security.is_trusted(ip("::ffff:1.2.3.4")));

    for bad in [
        "10.0.0.0/33",
        "example.com",
        "",
        "10.0.0/8",
        "::1/129",
        "1.2.3.4/",
    ] {
        let text = format!("[security]\ntrusted_networks = [\"127.0.0.1\", \"::1\", {bad:?}]\n");
        let (key, message) = invalid(&text);
        assert_eq!(key, "security.trusted_networks[2]", "{bad}");
        assert!(message.contains(&format!("{bad:?}")), "{message}");
    }
    let msg = parse_error("[security]\ntrusted_networks = \"10.0.0.0/8\"\n");
    assert!(msg.starts_with("security.trusted_networks: "), "{msg}");
}

#[test]
fn throttle_and_usage_rules() {
    let c = Config::from_toml_str(
        "[throttle]\nconnections_per_minute = 0\nsmtp_messages_per_minute = 0\n",
    )
    .unwrap();
    assert_eq!(c.throttle.connections_per_minute, 0, "0 disables");
    assert_eq!(c.throttle.smtp_messages_per_minute, 0, "0 disables");
    let (key, _) = invalid("[throttle]\nburst = 0\n");
    assert_eq!(key, "throttle.burst");
    let msg = parse_error("[throttle]\nconnections_per_minute = -1\n");
    assert!(
        msg.starts_with("throttle.connections_per_minute: "),
        "{msg}"
    );
    let msg = parse_error("[throttle]\nper_hour = 1\n");
    assert!(msg.contains("per_hour"), "{msg}");

    for bad in [0, 101] {
        let (key, message) = invalid(&format!("[usage]\nwarn_percent = {bad}\n"));
        assert_eq!(key, "usage.warn_percent");
        assert_eq!(message, "must be between 1 and 100");
    }
    for good in [1, 100] {
        let c = Config::from_toml_str(&format!("[usage]\nwarn_percent = {good}\n")).unwrap();
        assert_eq!(c.usage.warn_percent, good);
    }
}

#[test]
fn unknown_keys_rejected_naming_them() {
    let msg = parse_error("hostnme = \"x\"\n");
    assert!(msg.contains("hostnme"), "{msg}");
    assert!(msg.contains("line 1"), "{msg}");

    let msg = parse_error("[listeners.smtp]\nenabled = true\nmax_recipient = 5\n");
    assert!(msg.contains("max_recipient"), "{msg}");
    assert!(msg.contains("listeners.smtp"), "{msg}");
    assert!(msg.contains("line 3"), "{msg}");

    let msg = parse_error("[listeners.pop3]\nenabled = true\n");
    assert!(msg.contains("pop3"), "{msg}");

    let msg = parse_error("[logging]\nlevel = \"info\"\n");
    assert!(msg.contains("logging"), "{msg}");
}

#[test]
fn wrong_types_name_the_key() {
    let msg = parse_error("[listeners.submission]\nmax_recipients = \"many\"\n");
    assert!(
        msg.starts_with("listeners.submission.max_recipients: "),
        "{msg}"
    );
    assert!(msg.contains("line 2"), "{msg}");

    let msg = parse_error("[listeners.submission]\nidle_timeout = 30\n");
    assert!(
        msg.starts_with("listeners.submission.idle_timeout: "),
        "{msg}"
    );
    assert!(msg.contains("duration"), "{msg}");

    let msg = parse_error("[listeners.smtp]\nmax_message_size = -1\n");
    assert!(
        msg.starts_with("listeners.smtp.max_message_size: "),
        "{msg}"
    );

    let msg = parse_error("[log]\nformat = \"xml\"\n");
    assert!(msg.starts_with("log.format: "), "{msg}");

    let msg = parse_error("[security]\nmax_auth_failures = -3\n");
    assert!(msg.starts_with("security.max_auth_failures: "), "{msg}");

    assert!(!parse_error("hostname = \n").is_empty());
    assert!(!parse_error("this is not toml").contains('\n'));
}

#[test]
fn bad_durations_name_the_key() {
    let (key, message) = invalid("[listeners.submission]\nidle_timeout = \"5x\"\n");
    assert_eq!(key, "listeners.submission.idle_timeout");
    assert_eq!(message, "invalid duration \"5x\" (use e.g. 30s, 5m, 1h)");
    let err = Config::from_toml_str("[listeners.submission]\nidle_timeout = \"5x\"\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "listeners.submission.idle_timeout: invalid duration \"5x\" (use e.g. 30s, 5m, 1h)"
    );

    let (key, _) = invalid("[listeners.smtp]\nsession_timeout = \"\"\n");
    assert_eq!(key, "listeners.smtp.session_timeout");
    let (key, _) = invalid("[security]\nauth_min_duration = \"1.5s\"\n");
    assert_eq!(key, "security.auth_min_duration");
    let (key, message) = invalid("[listeners.submissions]\nidle_timeout = \"0s\"\n");
    assert_eq!(key, "listeners.submissions.idle_timeout");
    assert!(message.contains("longer than 0s"), "{message}");
}

#[test]
fn bad_sizes_name_the_key() {
    let (key, message) = invalid("[listeners.smtp]\nmax_message_size = \"10XB\"\n");
    assert_eq!(key, "listeners.smtp.max_message_size");
    assert!(message.contains("invalid size \"10XB\""), "{message}");
    let (key, _) = invalid("[listeners.smtp]\nmax_message_size = 0\n");
    assert_eq!(key, "listeners.smtp.max_message_size");
}

#[test]
fn range_rules() {
    let err = Config::from_toml_str("[listeners.smtp]\nmax_recipients = 0\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "listeners.smtp.max_recipients: must be at least 1"
    );

    let err =
        Config::from_toml_str("[listeners.submission]\nmax_command_line = 100\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "listeners.submission.max_command_line: must be at least 512 (RFC 5321 4.5.3.1.4)"
    );
    let (key, message) = invalid("[listeners.submission]\nmax_text_line = 999\n");
    assert_eq!(key, "listeners.submission.max_text_line");
    assert!(message.starts_with("must be at least 1000"), "{message}");

    for field in ["max_connections", "max_connections_per_ip", "max_errors"] {
        let (key, _) = invalid(&format!("[listeners.submissions]\n{field} = 0\n"));
        assert_eq!(key, format!("listeners.submissions.{field}"));
    }
    let (key, _) = invalid("[security]\nmax_auth_failures = 0\n");
    assert_eq!(key, "security.max_auth_failures");
}

#[test]
fn bad_values_name_the_key() {
    let (key, message) = invalid("[listeners.smtp]\naddress = \"localhost:25\"\n");
    assert_eq!(key, "listeners.smtp.address");
    assert!(message.contains("localhost:25"), "{message}");

    let (key, _) = invalid("hostname = \"bad host\"\n");
    assert_eq!(key, "hostname");
    let (key, _) = invalid("hostname = \"\"\n");
    assert_eq!(key, "hostname");
    let (key, _) = invalid("data_dir = \"\"\n");
    assert_eq!(key, "data_dir");
    let (key, _) = invalid("[log]\nlevel = \"\"\n");
    assert_eq!(key, "log.level");
    let (key, _) = invalid("[log]\nlevel = \"foo=bogus\"\n");
    assert_eq!(key, "log.level");
}

#[test]
fn tls_needs_both_or_neither() {
    let (key, _) = invalid("[tls]\ncert = \"cert.pem\"\n");
    assert_eq!(key, "tls.key");
    let (key, _) = invalid("[tls]\nkey = \"key.pem\"\n");
    assert_eq!(key, "tls.cert");
    Config::from_toml_str("[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n").unwrap();
}

#[test]
fn listener_address_conflicts() {
    let (key, message) = invalid("[listeners.submission]\naddress = \"0.0.0.0:2525\"\n");
    assert_eq!(key, "listeners.submission.address");
    assert!(message.contains("listeners.smtp.address"), "{message}");

    let (key, _) = invalid("[listeners.submissions]\naddress = \"127.0.0.1:2587\"\n");
    assert_eq!(key, "listeners.submissions.address");

    // A disabled listener does not conflict.
    Config::from_toml_str(
        "[listeners.smtp]\nenabled = false\n[listeners.submission]\naddress = \"0.0.0.0:2525\"\n",
    )
    .unwrap();
    // Port 0 (any free port) never conflicts.
    Config::from_toml_str(
        "[listeners.smtp]\naddress = \"127.0.0.1:0\"\n[listeners.submission]\naddress = \"127.0.0.1:0\"\n\
         [listeners.submissions]\naddress = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    // Different IPs of one family on the same port are fine.
    Config::from_toml_str(
        "[listeners.smtp]\naddress = \"127.0.0.1:25\"\n[listeners.submission]\naddress = \"127.0.0.2:25\"\n",
    )
    .unwrap();

    let (key, _) = invalid(
        "[listeners.smtp]\nenabled = false\n[listeners.submission]\nenabled = false\n\
         [listeners.submissions]\nenabled = false\n",
    );
    assert_eq!(key, "listeners");
}

#[test]
fn load_reports_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let err = Config::load(Some(&missing)).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }));
    assert!(err.to_string().contains("nope.toml"), "{err}");

    let file = dir.path().join("p.toml");
    std::fs::write(&file, "hostname = \"mx.example.org\"\n").unwrap();
    assert_eq!(
        Config::load(Some(&file)).unwrap().hostname,
        "mx.example.org"
    );
}

#[test]
fn to_toml_redacted_round_trips() {
    let default = Config::default_config();
    let text = default.to_toml_redacted();
    assert_eq!(Config::from_toml_str(&text).unwrap(), default, "{text}");
    assert!(text.contains("[listeners.submission]"), "{text}");
    assert!(text.contains("max_message_size = \"25MiB\""), "{text}");
    assert!(text.contains("idle_timeout = \"5m\""), "{text}");
    assert!(text.contains("auth_min_duration = \"250ms\""), "{text}");
    assert!(
        text.contains("[plans.standard]\nemails_per_hour = 1500\n"),
        "{text}"
    );
    assert!(text.contains("default_plan = \"standard\""), "{text}");
    assert!(
        text.find("hostname").unwrap() < text.find("[log]").unwrap(),
        "{text}"
    );

    let mut custom = Config::default_config();
    custom.hostname = "mx.example.net".into();
    custom.data_dir = "/srv/mail data".into();
    custom.log.format = LogFormat::Json;
    custom.log.level = "debug".into();
    custom.tls.cert = Some("/etc/c.pem".into());
    custom.tls.key = Some("/etc/k.pem".into());
    custom.listeners.smtp.enabled = false;
    custom.listeners.smtp.max_message_size = 12_345;
    custom.listeners.submission.address = "[::]:587".parse().unwrap();
    custom.listeners.submission.idle_timeout = Duration::from_millis(90_500);
    custom.listeners.submissions.session_timeout = Duration::from_secs(5400);
    custom.security.auth_min_duration = Duration::ZERO;
    custom.security.max_auth_failures = 9;
    custom.security.trusted_networks = vec![
        "127.0.0.1/32".parse().unwrap(),
        "10.0.0.0/8".parse().unwrap(),
        "2001:db8::/32".parse().unwrap(),
    ];
    custom.throttle = ThrottleConfig {
        connections_per_minute: 0,
        smtp_messages_per_minute: 7,
        burst: 1,
    };
    custom.usage.warn_percent = 50;
    custom.plans.insert(
        "bulk".into(),
        Plan {
            emails_per_hour: 10_000,
            emails_per_day: Some(50_000),
            max_recipients: Some(500),
            max_message_size: Some(10_000_000),
        },
    );
    if let Some(trial) = custom.plans.get_mut("trial") {
        trial.emails_per_hour = 10;
        trial.max_message_size = Some(5 * 1024 * 1024);
    }
    custom.default_plan = "bulk".into();
    custom.validate().unwrap();
    let text = custom.to_toml_redacted();
    assert_eq!(Config::from_toml_str(&text).unwrap(), custom, "{text}");
}

#[test]
fn secrets_are_redacted() {
    let mut table: toml::Table = toml::from_str(
        "plain = \"visible\"\napi_secret = \"hunter2\"\n[nested]\ntoken_secret = \"s3\"\n\
         [[items]]\nkey_secret = \"s4\"\n",
    )
    .unwrap();
    redact(&mut table);
    let text = toml::to_string(&table).unwrap();
    assert!(
        !text.contains("hunter2") && !text.contains("s3") && !text.contains("s4"),
        "{text}"
    );
    assert!(text.contains("visible"), "{text}");
    assert_eq!(text.matches(REDACTED).count(), 3, "{text}");
}

#[test]
fn example_file_is_accepted() {
    let text = include_str!("../../../../portcullis.example.toml");
    let config = Config::from_toml_str(text).unwrap();
    let mut expected = Config::default_config();
    expected.hostname = config.hostname.clone();
    assert_eq!(config, expected, "the example documents the defaults");
}

#[test]
fn example_file_documents_every_key() {
    let text = include_str!("../../../../portcullis.example.toml");
    let rendered: toml::Table =
        toml::from_str(&Config::default_config().to_toml_redacted()).unwrap();
    let mut keys = Vec::new();
    fn walk(prefix: &str, table: &toml::Table, keys: &mut Vec<String>) {
        for (k, v) in table {
            match v {
                toml::Value::Table(t) => walk(&format!("{prefix}{k}."), t, keys),
                _ => keys.push(format!("{prefix}{k}")),
            }
        }
    }
    walk("", &rendered, &mut keys);
    keys.extend(["tls.cert".to_owned(), "tls.key".to_owned()]);
    for key in keys {
        let leaf = key.rsplit('.').next().unwrap();
        assert!(text.contains(&format!("{leaf} =")), "example lacks {key}");
    }
}

#[test]
fn spool_sizes() {
    let c = Config::default_config();
    assert_eq!(c.spool.memory_threshold, 256 * 1024);
    assert_eq!(c.spool.memory_budget, 64 * 1024 * 1024);
    let c =
        Config::from_toml_str("[spool]\nmemory_threshold = \"64KiB\"\nmemory_budget = 1048576\n")
            .unwrap();
    assert_eq!(c.spool.memory_threshold, 64 * 1024);
    assert_eq!(c.spool.memory_budget, 1024 * 1024);
    let c = Config::from_toml_str("[spool]\nmemory_threshold = 0\n").unwrap();
    assert_eq!(
        c.spool.memory_threshold, 0,
        "0 writes every message to a file"
    );
    let (key, message) = invalid("[spool]\nmemory_threshold = \"lots\"\n");
    assert_eq!(key, "spool.memory_threshold");
    assert!(message.contains("\"lots\""), "{message}");
    let (key, _) = invalid("[spool]\nmemory_budget = \"1 parsec\"\n");
    assert_eq!(key, "spool.memory_budget");
    let (key, _) = invalid("[spool]\nmemory_threshold = \"32MiB\"\nmemory_budget = \"1GiB\"\n");
    assert_eq!(key, "spool.memory_threshold");
    let (key, message) =
        invalid("[spool]\nmemory_threshold = \"1MiB\"\nmemory_budget = \"512KiB\"\n");
    assert_eq!(key, "spool.memory_budget");
    assert_eq!(message, "must be at least spool.memory_threshold");
    let msg = parse_error("[spool]\nmemory_threshold = -1\n");
    assert!(msg.starts_with("spool.memory_threshold: "), "{msg}");
    let msg = parse_error("[spool]\nsegment_size = 1\n");
    assert!(msg.contains("segment_size"), "{msg}");
    // `config show` prints the section and reads back the same.
    let c = Config::from_toml_str("[spool]\nmemory_threshold = \"128KiB\"\n").unwrap();
    let shown = c.to_toml_redacted();
    assert!(shown.contains("[spool]"), "{shown}");
    assert!(shown.contains("memory_threshold = \"128KiB\""), "{shown}");
    assert_eq!(Config::from_toml_str(&shown).unwrap().spool, c.spool);
}
