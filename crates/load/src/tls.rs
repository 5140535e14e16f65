//! TLS configuration: the sender's client config (a CA file, the webpki roots,
//! or no verification at all for self-signed test servers) and the sink's
//! self-signed server config.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// How the sender decides whether to trust the server's certificate.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The Mozilla root set (webpki-roots).
    WebPki,
    /// Certificates from this PEM file are the only roots.
    CaFile(std::path::PathBuf),
    /// Accept any certificate (signatures are still checked).
    Insecure,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The rustls client config for `trust`, TLS 1.2 and 1.3.
pub fn client_config(trust: &Trust) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let config = match trust {
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth(),
        Trust::WebPki => {
            let roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::CaFile(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(path)? {
                roots
                    .add(cert)
                    .map_err(|e| anyhow::anyhow!("CA certificate in {}: {e}", path.display()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("cannot read CA file {}: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no CERTIFICATE block in {}", path.display());
    }
    Ok(certs)
}

/// The name to verify the certificate against (and send as SNI): the host
/// part of `host:port`, as an IP address when it is one.
pub fn server_name(addr: &str) -> anyhow::Result<ServerName<'static>> {
    let host = match addr.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned())
        .map_err(|e| anyhow::anyhow!("invalid TLS server name {host:?}: {e}"))
}

/// Certificate verifier for `--insecure`: trusts any certificate, but still
/// checks the handshake signatures so the session keys are the server's.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A server config with a freshly generated self-signed certificate for
/// `localhost`, `127.0.0.1` and `::1`; returns the certificate PEM too.
pub fn self_signed_server_config() -> anyhow::Result<(Arc<ServerConfig>, String)> {
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let generated = rcgen::generate_simple_self_signed(names)?;
    let cert_pem = generated.cert.pem();
    let cert = generated.cert.der().clone();
    let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der())
        .map_err(|e| anyhow::anyhow!("generated key: {e}"))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    Ok((Arc::new(config), cert_pem))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        assert!(matches!(
            server_name("127.0.0.1:2465").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:2465").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("localhost:25").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(matches!(
            server_name("mx.example.org").unwrap(),
            ServerName::DnsName(_)
        ));
    }

    #[test]
    fn configs_build() {
        client_config(&Trust::Insecure).unwrap();
        client_config(&Trust::WebPki).unwrap();
        let (_, pem) = self_signed_server_config().unwrap();
        let dir = std::env::temp_dir().join(format!("portcullis-load-ca-{}", std::process::id()));
        std::fs::write(&dir, pem).unwrap();
        let r = client_config(&Trust::CaFile(dir.clone()));
        std::fs::remove_file(&dir).unwrap();
        r.unwrap();
    }
}
