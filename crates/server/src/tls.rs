//! TLS for the listeners: rustls, TLS 1.2 and 1.3 only, a certificate that can
//! be swapped at runtime (SIGHUP) without touching established connections.
//!
//! With no certificate configured, a self-signed one is generated into
//! `<data_dir>/tls/` on first start (and reused after), with a warning.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// TLS setup failures; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate file {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("cannot read private key file {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("certificate {cert} and key {key} do not form a usable pair: {reason}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("cannot generate self-signed certificate in {dir}: {reason}")]
    Generate { dir: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Serves whatever certificate was loaded last.
#[derive(Debug)]
struct ReloadableCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().map(|k| Arc::clone(&k))
    }
}

/// The loaded certificate, where it came from, and the rustls config using it.
pub struct TlsManager {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Arc<ReloadableCert>,
    config: Arc<ServerConfig>,
    /// Whether the certificate is our generated self-signed one.
    pub self_signed: bool,
}

impl TlsManager {
    /// Loads the configured pair, or generates/reuses a self-signed one.
    pub fn load(
        cert: Option<&Path>,
        key: Option<&Path>,
        data_dir: &Path,
        hostname: &str,
    ) -> Result<TlsManager, TlsError> {
        let (cert_path, key_path, self_signed) = match (cert, key) {
            (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf(), false),
            _ => {
                let (c, k) = ensure_self_signed(&data_dir.join("tls"), hostname)?;
                (c, k, true)
            }
        };
        let provider = Arc::new(server_provider());
        warm_up_rng(&provider);
        let key = load_pair(&cert_path, &key_path, &provider)?;
        let current = Arc::new(ReloadableCert(RwLock::new(Arc::new(key))));
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = Vec::new();
        // Our order (see `server_provider`), not the client's.
        config.ignore_client_order = true;
        Ok(TlsManager {
            cert_path,
            key_path,
            provider,
            current,
            config: Arc::new(config),
            self_signed,
        })
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.config))
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// Re-reads the certificate and key. On error the old pair stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = load_pair(&self.cert_path, &self.key_path, &self.provider)?;
        if let Ok(mut guard) = self.current.0.write() {
            *guard = Arc::new(key);
        }
        Ok(())
    }
}

fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert_path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert_path.to_path_buf(),
            reason: "no CERTIFICATE block found".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsError::Key {
        path: key_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    CertifiedKey::from_der(certs, key, provider).map_err(|e| TlsError::Pair {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Returns the paths of the self-signed pair in `dir`, generating it if absent.
fn ensure_self_signed(dir: &Path, hostname: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.exists() && key_path.exists() {
        tracing::warn!(cert = %cert_path.display(), "using the self-signed certificate generated earlier; configure [tls] cert and key for production");
        return Ok((cert_path, key_path));
    }
    let err = |reason: String| TlsError::Generate {
        dir: dir.to_path_buf(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let mut names = vec![hostname.to_owned()];
    // Loopback names and addresses, so local clients that verify (Python's
    // ssl with cafile=cert.pem) can connect by name or IP.
    for extra in ["localhost", "127.0.0.1", "::1"] {
        if hostname != extra {
            names.push(extra.to_owned());
        }
    }
    let generated = rcgen::generate_simple_self_signed(names).map_err(|e| err(e.to_string()))?;
    write_private(&key_path, generated.signing_key.serialize_pem().as_bytes())
        .map_err(|e| err(e.to_string()))?;
    std::fs::write(&cert_path, generated.cert.pem()).map_err(|e| err(e.to_string()))?;
    tracing::warn!(cert = %cert_path.display(), "no [tls] certificate configured: generated a self-signed certificate; clients will not trust it");
    Ok((cert_path, key_path))
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// A client-side verifier that accepts any certificate chain. The handshake
/// signatures are still checked, so the session really is with the holder
/// of the presented key; whether the chain deserves trust is left to the
/// caller (opportunistic delivery, RFC 7435; `portcullis check`, which
/// reports on the chain afterwards).
#[derive(Debug)]
pub struct AcceptAnyChain {
    provider: Arc<CryptoProvider>,
}

impl AcceptAnyChain {
    pub fn new(provider: Arc<CryptoProvider>) -> AcceptAnyChain {
        AcceptAnyChain { provider }
    }
}

impl rustls::client::danger::ServerCertVerifier for AcceptAnyChain {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// aws-lc-rs with the AES-128-GCM suites first (issue 9). rustls clients,
/// like many others, list AES-256-GCM-SHA384 first; its transcript hash
/// and key schedule use SHA-384, which has no instructions on the x86 CPUs
/// we run on while SHA-256 does, and AES-128 is 10 rounds to AES-256's 14.
/// Measured: 3.7% of the server's CPU in scenario (b) was SHA-512 blocks.
/// AES-128-GCM is in every current recommendation (Mozilla "modern" and
/// "intermediate", RFC 8446's mandatory suite). The set of suites is
/// unchanged; only the order.
fn server_provider() -> CryptoProvider {
    use rustls::CipherSuite as S;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    let rank = |suite: S| match suite {
        S::TLS13_AES_128_GCM_SHA256 => 0,
        S::TLS13_CHACHA20_POLY1305_SHA256 => 1,
        S::TLS13_AES_256_GCM_SHA384 => 2,
        S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 3,
        _ => 4,
    };
    provider.cipher_suites.sort_by_key(|s| rank(s.suite()));
    provider
}

/// Seeds aws-lc's random generator now, at start-up. Its first use runs
/// the jitter entropy source (about 0.4 billion instructions, 0.15–0.3 s of
/// CPU on the benchmark machine): left to the first TLS handshake, the
/// first client after every start waited that long, and the benchmark
/// counted it as per-message CPU (issue 9).
fn warm_up_rng(provider: &rustls::crypto::CryptoProvider) {
    let mut seed = [0u8; 16];
    if provider.secure_random.fill(&mut seed).is_err() {
        tracing::warn!("the TLS random generator failed its first use at start-up");
    }
}
