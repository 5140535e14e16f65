//! Inbound checks on the smtp listener: SPF (RFC 7208) for the client IP
//! and MAIL FROM (or HELO), DKIM verification (RFC 6376), DMARC (RFC 7489)
//! evaluation, and the Authentication-Results field (RFC 8601) recording
//! them. DNS errors give `temperror`, never a refusal.
//!
//! mail-auth's verifier needs the whole message in memory, so verification
//! holds one message at a time per session, bounded by the listener's
//! `max_message_size`.

use std::net::IpAddr;

use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{AuthenticatedMessage, DkimResult, DmarcResult, MessageAuthenticator, SpfResult};

/// The facts of the SMTP transaction the checks need.
pub struct Transaction<'a> {
    pub client_ip: IpAddr,
    pub helo: &'a str,
    /// The MAIL FROM address; empty for the null reverse-path.
    pub mail_from: &'a str,
    /// Our name: the authserv-id of the header.
    pub hostname: &'a str,
}

/// What the checks found.
#[derive(Debug)]
pub struct Verdict {
    /// The complete `Authentication-Results:` field, CRLF-terminated.
    pub header: String,
    pub spf: &'static str,
    pub dkim: &'static str,
    pub dmarc: &'static str,
    /// The From: domain's DMARC policy, when it failed under `p=reject`.
    pub dmarc_reject: bool,
    pub from_domain: String,
}

fn spf_word(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

fn dkim_word(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::Pass => "pass",
        // RFC 6376 6.1.3: a body hash mismatch is a failed signature
        // (mail-auth reports it as neutral).
        DkimResult::Neutral(mail_auth::Error::Dkim(
            mail_auth::dkim::DkimError::FailedBodyHashMatch,
        )) => "fail",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

fn dmarc_word(r: &DmarcResult) -> &'static str {
    match r {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    }
}

/// RFC 8601 2.2 pvalue: a value with anything but safe characters quoted.
fn pvalue(text: &str) -> String {
    let safe = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@.-_+=/".contains(c));
    if safe {
        text.to_owned()
    } else {
        let cleaned: String = text
            .chars()
            .filter(|c| !c.is_control() && *c != '"' && *c != '\\')
            .take(255)
            .collect();
        format!("\"{cleaned}\"")
    }
}

/// The overall DKIM word: the best result among the signatures.
fn best_dkim(results: &[mail_auth::DkimOutput<'_>]) -> &'static str {
    let rank = |w: &str| match w {
        "pass" => 0,
        "temperror" => 1,
        "fail" => 2,
        "permerror" => 3,
        "neutral" => 4,
        _ => 5,
    };
    results
        .iter()
        .map(|o| dkim_word(o.result()))
        .min_by_key(|w| rank(w))
        .unwrap_or("none")
}

/// A signature with relaxed body canonicalisation and no `l=` whose body
/// hash did not match.
fn relaxed_body_hash_failed(o: &mail_auth::DkimOutput<'_>) -> bool {
    matches!(
        o.result(),
        DkimResult::Neutral(mail_auth::Error::Dkim(
            mail_auth::dkim::DkimError::FailedBodyHashMatch
        ))
    ) && o
        .signature()
        .is_some_and(|s| s.cb == mail_auth::dkim::Canonicalization::Relaxed && s.l == 0)
}

/// `raw` with the lines of only whitespace and the empty lines at the end
/// of its body removed (the body then ends with its last line of content
/// and CRLF), when it has such a line with whitespace; else `None`.
///
/// RFC 6376 §3.4.4: in the relaxed body, whitespace at the end of a line
/// goes and so do empty lines at the end, so a last line of only
/// whitespace is dropped. mail-auth 0.13 keeps it as an empty line (its
/// issue #62, fixed in 0.15; our signer, `canon`, follows the RFC), so a
/// correct relaxed signature over such a body fails its check. Both bodies
/// have the same relaxed canonical form by the RFC, and mail-auth gets the
/// second one right: only relaxed signatures are checked against it.
fn relaxed_equivalent(raw: &[u8]) -> Option<Vec<u8>> {
    let body_start = memchr::memmem::find(raw, b"\r\n\r\n")? + 4;
    let body = &raw[body_start..];
    let content_end = body
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .map_or(0, |at| at + 1);
    let trailer = &body[content_end..];
    // Only whitespace on a line that holds nothing else matters here:
    // trailing whitespace on the last line of content is handled right.
    let blank_lines = if content_end == 0 {
        trailer
    } else {
        &trailer[trailer.iter().position(|b| *b == b'\n')?..]
    };
    if !blank_lines.iter().any(|b| matches!(b, b' ' | b'\t')) {
        return None;
    }
    let mut fixed = raw[..body_start + content_end].to_vec();
    if content_end > 0 {
        fixed.extend_from_slice(b"\r\n");
    }
    Some(fixed)
}

/// Runs SPF, DKIM and DMARC on `raw` (the message as received, without
/// our trace header).
pub async fn verify(auth: &MessageAuthenticator, raw: &[u8], tx: &Transaction<'_>) -> Verdict {
    let helo = if tx.helo.is_empty() {
        "unknown"
    } else {
        tx.helo
    };
    let spf = if tx.mail_from.is_empty() {
        auth.verify_spf(SpfParameters::verify_ehlo(tx.client_ip, helo, tx.hostname))
            .await
    } else {
        auth.verify_spf(SpfParameters::verify_mail_from(
            tx.client_ip,
            helo,
            tx.hostname,
            tx.mail_from,
        ))
        .await
    };
    let spf_result = spf_word(spf.result());
    let mail_from_domain = tx
        .mail_from
        .rsplit_once('@')
        .map_or(helo, |(_, d)| d)
        .to_owned();

    let mut header = format!("Authentication-Results: {}", tx.hostname);
    header.push_str(&format!(";\r\n\tspf={spf_result}"));
    if tx.mail_from.is_empty() {
        header.push_str(&format!(" smtp.helo={}", pvalue(helo)));
    } else {
        header.push_str(&format!(" smtp.mailfrom={}", pvalue(tx.mail_from)));
    }

    let Some(message) = AuthenticatedMessage::parse(raw) else {
        header.push_str(";\r\n\tdkim=permerror (unparseable message);\r\n\tdmarc=none\r\n");
        return Verdict {
            header,
            spf: spf_result,
            dkim: "permerror",
            dmarc: "none",
            dmarc_reject: false,
            from_domain: String::new(),
        };
    };
    let dkim = auth.verify_dkim(&message).await;
    // mail-auth 0.13's relaxed body is wrong for a body that ends in lines
    // of only whitespace (see `relaxed_equivalent`): check the signatures
    // that failed on their body hash again, against the same body without
    // those lines.
    let fixed_raw = if dkim.iter().any(relaxed_body_hash_failed) {
        relaxed_equivalent(raw)
    } else {
        None
    };
    let fixed = fixed_raw.as_deref().and_then(AuthenticatedMessage::parse);
    let retried = match &fixed {
        Some(m) => auth.verify_dkim(m).await,
        None => Vec::new(),
    };
    let dkim: Vec<mail_auth::DkimOutput<'_>> = dkim
        .into_iter()
        .map(|o| {
            if !relaxed_body_hash_failed(&o) {
                return o;
            }
            retried
                .iter()
                .find(|r| *r.result() == DkimResult::Pass && r.signature() == o.signature())
                .cloned()
                .unwrap_or(o)
        })
        .collect();
    let dkim_result = best_dkim(&dkim);
    if dkim.is_empty() {
        header.push_str(";\r\n\tdkim=none");
    }
    for output in &dkim {
        header.push_str(&format!(";\r\n\tdkim={}", dkim_word(output.result())));
        if let Some(sig) = output.signature() {
            header.push_str(&format!(
                " header.d={} header.s={} header.a={}",
                pvalue(&sig.d),
                pvalue(&sig.s),
                match sig.a {
                    mail_auth::common::crypto::Algorithm::Ed25519Sha256 => "ed25519-sha256",
                    mail_auth::common::crypto::Algorithm::RsaSha256 => "rsa-sha256",
                    mail_auth::common::crypto::Algorithm::RsaSha1 => "rsa-sha1",
                }
            ));
        }
    }

    let dmarc = auth
        .verify_dmarc(DmarcParameters::new(
            &message,
            &dkim,
            &mail_from_domain,
            &spf,
        ))
        .await;
    let dmarc_result = dmarc.result();
    let dmarc_text = dmarc_word(&dmarc_result);
    let from_domain = dmarc.domain().to_owned();
    header.push_str(&format!(";\r\n\tdmarc={dmarc_text}"));
    if !from_domain.is_empty() {
        header.push_str(&format!(" header.from={}", pvalue(&from_domain)));
    }
    let policy = dmarc.policy();
    if dmarc_text == "fail" {
        header.push_str(match policy {
            Policy::Reject => " policy.dmarc=reject",
            Policy::Quarantine => " policy.dmarc=quarantine",
            Policy::None | Policy::Unspecified => " policy.dmarc=none",
        });
    }
    header.push_str("\r\n");
    Verdict {
        header,
        spf: spf_result,
        dkim: dkim_result,
        dmarc: dmarc_text,
        dmarc_reject: matches!(dmarc_result, DmarcResult::Fail(_)) && policy == Policy::Reject,
        from_domain,
    }
}

/// RFC 8601 5: Authentication-Results fields that claim our authserv-id
/// came from the sender and must be obscured. Returns the message with
/// them renamed to `X-Forged-Authentication-Results`, or `None` when there
/// are none.
pub fn obscure_forged_results(raw: &[u8], hostname: &str) -> Option<Vec<u8>> {
    const NAME: &[u8] = b"authentication-results:";
    let mut out = Vec::with_capacity(raw.len() + 16);
    let mut changed = false;
    let mut rest = raw;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|b| *b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let line = &rest[..end];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        let ours = line.len() > NAME.len() && line[..NAME.len()].eq_ignore_ascii_case(NAME) && {
            let value = String::from_utf8_lossy(&line[NAME.len()..]);
            let id = value
                .trim_start()
                .split(|c: char| c == ';' || c.is_whitespace())
                .next()
                .unwrap_or("");
            id.eq_ignore_ascii_case(hostname)
        };
        if ours {
            out.extend_from_slice(b"X-Forged-");
            changed = true;
        }
        out.extend_from_slice(line);
        rest = &rest[end..];
    }
    out.extend_from_slice(rest);
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::{obscure_forged_results, pvalue, relaxed_equivalent};

    #[test]
    fn relaxed_equivalent_drops_only_blank_trailing_lines() {
        let h = "Subject: x\r\n\r\n";
        for (body, fixed) in [
            ("a\r\n  \r\n", Some("a\r\n")),
            ("a \r\n\t\r\n\r\n", Some("a\r\n")),
            ("  \r\n", Some("")),
            (" ", Some("")),
            ("a\r\n \r\nb\r\n", None),
            ("a  \r\n", None),
            ("a\r\n\r\n", None),
            ("a", None),
            ("", None),
        ] {
            let raw = format!("{h}{body}");
            let got = relaxed_equivalent(raw.as_bytes()).map(String::from_utf8);
            let want = fixed.map(|f| Ok(format!("{h}{f}")));
            assert_eq!(got, want, "{body:?}");
        }
        assert_eq!(relaxed_equivalent(b"Subject: no body \r\n"), None);
    }

    #[test]
    fn only_our_results_in_the_header_block_are_renamed() {
        let raw = b"Authentication-Results: MX.test; dkim=pass\r\n\
Authentication-Results: other.example; spf=pass\r\n\
Subject: x\r\n\r\nAuthentication-Results: mx.test; body\r\n";
        let out = obscure_forged_results(raw, "mx.test").unwrap_or_default();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("X-Forged-Authentication-Results: MX.test; dkim=pass\r\n"));
        assert!(text.contains("\r\nAuthentication-Results: other.example;"));
        assert!(text.ends_with("\r\n\r\nAuthentication-Results: mx.test; body\r\n"));
        assert_eq!(
            obscure_forged_results(b"Subject: x\r\n\r\n", "mx.test"),
            None
        );
    }

    #[test]
    fn pvalues_are_quoted_when_needed() {
        assert_eq!(pvalue("a@example.com"), "a@example.com");
        assert_eq!(pvalue("a b\"c\r\n"), "\"a bc\"");
        assert_eq!(pvalue(""), "\"\"");
    }
}
