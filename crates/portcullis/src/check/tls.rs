//! TLS for the check: a handshake that never fails closed on the
//! certificate, followed by a separate evaluation of what a strict client
//! would say about it (untrusted, self-signed, expired, wrong name).
//!
//! Must not: refuse to connect because of the certificate. Whether the
//! certificate is good is a finding, not a reason to stop looking.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::ServerCertVerifier;
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::{CertificateError, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::reply::looks_like_smtp;
use super::smtp::{Recording, Tls};

/// Certificates expiring sooner than this get a warning.
const EXPIRY_WARNING_DAYS: i64 = 14;

/// Why the handshake did not complete.
#[derive(Debug)]
pub enum HandshakeError {
    /// The peer answered with plain text that looks like an SMTP greeting:
    /// this port speaks STARTTLS, not implicit TLS.
    PlainSmtp(String),
    TimedOut,
    /// The peer closed the connection without a word.
    Closed,
    /// Any other failure (alert from the peer, no common version or cipher).
    Failed(String),
}

/// What the handshake negotiated and what was presented.
#[derive(Debug, Clone, Serialize)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertInfo>,
    /// Problems a verifying client would have; empty when it would trust it.
    pub problems: Vec<CertProblem>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub names: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
    pub chain_length: usize,
}

/// A reason a verifying mail client would refuse the certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "problem")]
pub enum CertProblem {
    SelfSigned,
    Expired,
    NotYetValid,
    HostnameMismatch { name: String },
    UntrustedIssuer { issuer: String },
    ExpiresSoon { days: i64 },
    Unparsable,
    Other { detail: String },
}

impl CertProblem {
    pub fn describe(&self) -> String {
        match self {
            CertProblem::SelfSigned => {
                "the certificate is self-signed: mail clients that verify certificates will refuse it"
                    .to_owned()
            }
            CertProblem::Expired => "the certificate has expired".to_owned(),
            CertProblem::NotYetValid => {
                "the certificate is not valid yet (check the server's and this machine's clock)"
                    .to_owned()
            }
            CertProblem::HostnameMismatch { name } => {
                format!("hostname mismatch: the certificate is not valid for {name}")
            }
            CertProblem::UntrustedIssuer { issuer } => format!(
                "the certificate is issued by {issuer}, which is not a public CA (or the server does not send the intermediate certificate)"
            ),
            CertProblem::ExpiresSoon { days } => {
                format!("the certificate expires in {days} days")
            }
            CertProblem::Unparsable => "the certificate could not be parsed".to_owned(),
            CertProblem::Other { detail } => format!("certificate problem: {detail}"),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

fn connector() -> Result<TlsConnector, String> {
    let provider = provider();
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        // Trust in the chain is judged afterwards by [`evaluate`].
        .with_custom_certificate_verifier(Arc::new(portcullis_server::tls::AcceptAnyChain::new(
            provider,
        )))
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The name to send as SNI and to check the certificate against.
pub fn server_name(host: &str) -> Option<ServerName<'static>> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_owned()).ok()
}

/// Performs a TLS handshake on `stream`, bounded by `limit`.
pub async fn handshake(
    stream: TcpStream,
    name: ServerName<'static>,
    limit: Duration,
) -> Result<Box<Tls>, HandshakeError> {
    let connector = connector().map_err(HandshakeError::Failed)?;
    let connect = connector
        .connect(name, Recording::new(stream))
        .into_fallible();
    match tokio::time::timeout(limit, connect).await {
        Err(_) => Err(HandshakeError::TimedOut),
        Ok(Ok(tls)) => Ok(Box::new(tls)),
        Ok(Err((error, io))) => {
            let first = io.first_bytes();
            if looks_like_smtp(first) {
                let text = String::from_utf8_lossy(first);
                let line = text.lines().next().unwrap_or("").trim().to_owned();
                Err(HandshakeError::PlainSmtp(line))
            } else if first.is_empty()
                && matches!(
                    error.kind(),
                    std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::BrokenPipe
                )
            {
                Err(HandshakeError::Closed)
            } else {
                Err(HandshakeError::Failed(error.to_string()))
            }
        }
    }
}

/// Describes the negotiated session and judges the certificate.
pub fn inspect(tls: &Tls, name: &ServerName<'static>) -> TlsInfo {
    let (_, connection) = tls.get_ref();
    let version = connection
        .protocol_version()
        .and_then(|v| v.as_str())
        .map_or_else(|| "unknown".to_owned(), |v| v.replace('_', "."));
    let cipher = connection
        .negotiated_cipher_suite()
        .and_then(|s| s.suite().as_str())
        .unwrap_or("unknown")
        .to_owned();
    let chain: Vec<CertificateDer<'static>> = connection
        .peer_certificates()
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    let (certificate, problems) = evaluate(&chain, name, unix_now());
    TlsInfo {
        version,
        cipher,
        certificate,
        problems,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Parses the leaf and lists what a verifying client (public CA roots)
/// would object to. Pure apart from the bundled root list.
pub fn evaluate(
    chain: &[CertificateDer<'static>],
    name: &ServerName<'static>,
    now: i64,
) -> (Option<CertInfo>, Vec<CertProblem>) {
    let Some(leaf) = chain.first() else {
        return (None, vec![CertProblem::Unparsable]);
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return (None, vec![CertProblem::Unparsable]);
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for general in &san.value.general_names {
            match general {
                x509_parser::extensions::GeneralName::DNSName(dns) => names.push(dns.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                    names.push(ip_text(bytes));
                }
                _ => {}
            }
        }
    }
    let info = CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        names,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        chain_length: chain.len(),
    };
    let self_signed = cert.subject().as_raw() == cert.issuer().as_raw();
    let mut problems = Vec::new();
    if self_signed {
        problems.push(CertProblem::SelfSigned);
    }
    if now > info.not_after {
        problems.push(CertProblem::Expired);
    } else if now < info.not_before {
        problems.push(CertProblem::NotYetValid);
    } else {
        let days = (info.not_after - now) / 86_400;
        if days < EXPIRY_WARNING_DAYS {
            problems.push(CertProblem::ExpiresSoon { days });
        }
    }
    let name_ok = webpki::EndEntityCert::try_from(leaf)
        .map(|ee| ee.verify_is_valid_for_subject_name(name).is_ok())
        .unwrap_or(false);
    if !name_ok {
        problems.push(CertProblem::HostnameMismatch {
            name: name.to_str().into_owned(),
        });
    }
    if !self_signed && let Some(problem) = chain_trust(chain, name, &info) {
        problems.push(problem);
    }
    (Some(info), problems)
}

/// Verifies the chain against the public roots (webpki-roots). Name and
/// time problems are reported by [`evaluate`] already, so only issuer
/// problems are returned here.
fn chain_trust(
    chain: &[CertificateDer<'static>],
    name: &ServerName<'static>,
    info: &CertInfo,
) -> Option<CertProblem> {
    let roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let verifier =
        match WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build() {
            Ok(v) => v,
            Err(e) => {
                return Some(CertProblem::Other {
                    detail: e.to_string(),
                });
            }
        };
    let (leaf, intermediates) = chain.split_first()?;
    // Checked at a moment inside the validity period, so an expired
    // certificate is not also reported as untrusted.
    let seconds = u64::try_from(info.not_before.max(0)).unwrap_or(0) + 60;
    let at = UnixTime::since_unix_epoch(Duration::from_secs(seconds));
    match verifier.verify_server_cert(leaf, intermediates, name, &[], at) {
        Ok(_) => None,
        Err(rustls::Error::InvalidCertificate(error)) => match error {
            CertificateError::NotValidForName
            | CertificateError::NotValidForNameContext { .. }
            | CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => None,
            CertificateError::UnknownIssuer => Some(CertProblem::UntrustedIssuer {
                issuer: info.issuer.clone(),
            }),
            other => Some(CertProblem::Other {
                detail: format!("{other:?}"),
            }),
        },
        Err(other) => Some(CertProblem::Other {
            detail: other.to_string(),
        }),
    }
}

fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => {
            let octets: [u8; 4] = [bytes[0], bytes[1], bytes[2], bytes[3]];
            std::net::Ipv4Addr::from(octets).to_string()
        }
        16 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(bytes);
            std::net::Ipv6Addr::from(octets).to_string()
        }
        _ => format!("{bytes:?}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cert(names: &[&str]) -> CertificateDer<'static> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let generated = rcgen::generate_simple_self_signed(names).unwrap();
        generated.cert.der().clone()
    }

    #[test]
    fn self_signed_with_matching_name() {
        let chain = [cert(&["mail.example.com", "127.0.0.1"])];
        let name = server_name("mail.example.com").unwrap();
        let (info, problems) = evaluate(&chain, &name, unix_now());
        let info = info.unwrap();
        assert!(info.names.contains(&"mail.example.com".to_owned()));
        assert!(info.names.contains(&"127.0.0.1".to_owned()));
        assert_eq!(problems, [CertProblem::SelfSigned]);
        let ip = server_name("127.0.0.1").unwrap();
        assert_eq!(
            evaluate(&chain, &ip, unix_now()).1,
            [CertProblem::SelfSigned]
        );
    }

    #[test]
    fn hostname_mismatch_and_expiry() {
        let chain = [cert(&["mail.example.com"])];
        let name = server_name("smtp.example.org").unwrap();
        // rcgen certificates are valid until 4096; this is the year 5138.
        let far_future = 100_000_000_000;
        let (_, problems) = evaluate(&chain, &name, far_future);
        assert!(problems.contains(&CertProblem::Expired), "{problems:?}");
        assert!(
            problems.contains(&CertProblem::HostnameMismatch {
                name: "smtp.example.org".to_owned()
            }),
            "{problems:?}"
        );
    }

    #[test]
    fn garbage_is_unparsable() {
        let chain = [CertificateDer::from(vec![1u8, 2, 3])];
        let name = server_name("a.example").unwrap();
        assert_eq!(evaluate(&chain, &name, 0).1, [CertProblem::Unparsable]);
    }
}
