//! The cluster's certificates: a cluster CA (`wcfs ca init`), node certificates signed by it
//! (`wcfs ca issue`), and the rustls configurations for mutual TLS between nodes.
//!
//! A node certificate carries exactly one DNS subject-alternative name: the node's name. A peer's
//! identity is taken from its certificate after the chain to the cluster CA has been verified, so
//! a node cannot claim a name the CA did not sign for it.
//!
//! Certificates have rcgen's default validity (no practical expiry): access is revoked by
//! rotating the cluster CA.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The ALPN protocol both ends require; a QUIC peer speaking anything else is refused. It
/// names the transport's framing: version 2 added the queued-at time to stream headers.
pub const ALPN: &[u8] = b"wcfs/2";

/// The longest node name accepted (one DNS label).
pub const MAX_NAME_LEN: usize = 63;

/// What can go wrong creating, loading or checking certificates.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A node name is not a lowercase DNS label.
    #[error(
        "invalid node name {0:?}: use 1-63 of [a-z0-9-], starting with a letter, not ending with '-'"
    )]
    BadName(String),
    /// A PEM file did not hold what was expected.
    #[error("{path}: {why}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// A certificate is not a valid node certificate (no or several DNS names, unparsable).
    #[error("not a node certificate: {0}")]
    BadCert(String),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// rustls refused the configuration (e.g. a key that does not match the certificate).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built (e.g. no usable CA certificate).
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Paths of a freshly written certificate and its key.
#[derive(Debug, Clone)]
pub struct Written {
    /// The PEM certificate.
    pub cert: PathBuf,
    /// The PEM private key (mode 0600).
    pub key: PathBuf,
}

/// Checks that `name` can be a node name: one lowercase DNS label starting with a letter, so it
/// is a valid certificate DNS name and never mistaken for an IP address.
pub fn validate_node_name(name: &str) -> Result<(), TlsError> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    if ok {
        Ok(())
    } else {
        Err(TlsError::BadName(name.to_string()))
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a new file (never overwriting one) with `mode`, fsynced.
fn write_new(path: &Path, data: &str, mode: u32) -> Result<(), TlsError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(data.as_bytes()).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Writes a key and its certificate; the key goes first so a cert never exists without it.
fn write_pair(dir: &Path, stem: &str, cert_pem: &str, key_pem: &str) -> Result<Written, TlsError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let key = dir.join(format!("{stem}.key"));
    let cert = dir.join(format!("{stem}.pem"));
    // Refuse before writing anything, so a collision leaves no half-written pair behind.
    for p in [&key, &cert] {
        if p.exists() {
            return Err(TlsError::Io {
                path: p.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists; refusing to overwrite",
                ),
            });
        }
    }
    write_new(&key, key_pem, 0o600)?;
    write_new(&cert, cert_pem, 0o644)?;
    Ok(Written { cert, key })
}

/// Creates a cluster CA in `out` (`out/ca.pem`, `out/ca.key` with mode 0600). Refuses to
/// overwrite an existing CA: replacing it would lock every issued node out.
pub fn init_ca(out: &Path) -> Result<Written, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, "WCFS cluster CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write_pair(out, "ca", &cert.pem(), &key.serialize_pem())
}

fn read_string(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(io_err(path))
}

fn bad_pem(path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::BadPem {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

/// Issues a node certificate for `name`, signed by the CA in `ca_dir`, into `out`
/// (`out/NAME.pem`, `out/NAME.key` with mode 0600). The certificate's only DNS name is `name`
/// and it is valid for both TLS client and server use (a node both dials and listens).
pub fn issue(name: &str, ca_dir: &Path, out: &Path) -> Result<Written, TlsError> {
    validate_node_name(name)?;
    let ca_cert_path = ca_dir.join("ca.pem");
    let ca_key_path = ca_dir.join("ca.key");
    let ca_key_pem = read_string(&ca_key_path)?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| bad_pem(&ca_key_path, e))?;
    let ca_cert_pem = read_string(&ca_cert_path)?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca_cert_pem, ca_key).map_err(|e| bad_pem(&ca_cert_path, e))?;

    let mut params = CertificateParams::new(vec![name.to_string()])?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_pair(out, name, &cert.pem(), &key.serialize_pem())
}

/// The node name a certificate was issued for: its single DNS subject-alternative name.
///
/// This only parses; call it on certificates whose chain has been verified (the rustls
/// configurations from [`NodeTls`] do so before any application data flows).
pub fn cert_node_name(der: &[u8]) -> Result<String, TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::BadCert(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::BadCert(e.to_string()))?
        .ok_or_else(|| TlsError::BadCert("no subject alternative name".into()))?;
    let mut names = san.value.general_names.iter().filter_map(|g| match g {
        x509_parser::extensions::GeneralName::DNSName(s) => Some(*s),
        _ => None,
    });
    match (names.next(), names.next()) {
        (Some(n), None) => {
            validate_node_name(n)?;
            Ok(n.to_string())
        }
        (None, _) => Err(TlsError::BadCert("no DNS name".into())),
        (Some(_), Some(_)) => Err(TlsError::BadCert("more than one DNS name".into())),
    }
}

/// The crypto provider every WCFS TLS configuration uses (ring: builds without cmake/NASM).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A node's TLS identity: the cluster CA, its own certificate and key, and its name.
#[derive(Debug)]
pub struct NodeTls {
    ca: CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    name: String,
}

impl Clone for NodeTls {
    fn clone(&self) -> Self {
        NodeTls {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone_key(),
            name: self.name.clone(),
        }
    }
}

fn load_cert(path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    let pem = fs::read(path).map_err(io_err(path))?;
    CertificateDer::from_pem_slice(&pem).map_err(|e| bad_pem(path, e))
}

impl NodeTls {
    /// Loads the cluster CA certificate, this node's certificate and its key (PEM files).
    /// The node's name is read from its certificate; the pair is checked to match.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<NodeTls, TlsError> {
        let ca_der = load_cert(ca)?;
        let cert_der = load_cert(cert)?;
        let key_pem = fs::read(key).map_err(io_err(key))?;
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad_pem(key, e))?;
        let name = cert_node_name(&cert_der)?;
        let tls = NodeTls {
            ca: ca_der,
            cert: cert_der,
            key: key_der,
            name,
        };
        // Building both configurations checks the key matches the cert and the CA parses.
        tls.server_config()?;
        tls.client_config()?;
        Ok(tls)
    }

    /// The node name in this node's certificate.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(Arc::new(roots))
    }

    /// The server side: TLS 1.3 only, ALPN [`ALPN`], and a client certificate chaining to the
    /// cluster CA is required (a client without one fails the handshake).
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots()?, provider()).build()?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }

    /// The client side: TLS 1.3 only, ALPN [`ALPN`], presents this node's certificate, and
    /// accepts a server whose certificate chains to the cluster CA and names a valid node (the
    /// dialer knows an address, not a name; the runtime matches the name to the member record).
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let inner = WebPkiServerVerifier::builder_with_provider(self.roots()?, provider())
            .build()
            .map_err(|e| TlsError::BadCert(e.to_string()))?;
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NodeServerVerifier { inner }))
            .with_client_auth_cert(vec![self.cert.clone()], self.key.clone_key())?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }
}

/// Verifies a server certificate against the cluster CA for the name the certificate itself
/// carries: the full webpki chain and usage check, with the node name taken from the
/// certificate rather than from the dialed address.
#[derive(Debug)]
struct NodeServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = cert_node_name(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        let server_name = ServerName::try_from(name).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        self.inner
            .verify_server_cert(end_entity, intermediates, &server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
