//! The agent's certificate and how clients trust it.
//!
//! `vcb host init` makes a self-signed certificate (rcgen) and prints its SHA-256
//! thumbprint. Clients pin it as SSH pins host keys: the thumbprint a client accepted
//! for `host:port` is kept in its own trust file; a changed certificate is always
//! refused, an unknown one only with `--accept-new-host-cert`. A client may instead
//! trust a CA file, and then the usual WebPKI checks apply.

use crate::{Error, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The certificate's file in the agent's folder.
pub const CERT_FILE: &str = "cert.pem";
/// The private key's file (0600).
pub const KEY_FILE: &str = "key.pem";

/// The crypto provider every TLS configuration here uses: ring, as for the rest of the
/// workspace (aws-lc-rs would add a C and CMake build); rustls deprecates ring's
/// provider only because it lacks post-quantum key exchange.
///
/// AES-128-GCM comes first: disk data is the bulk of what the agent encrypts, and it is
/// about a third cheaper than AES-256-GCM per byte while still a 128-bit-secure suite.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::CipherSuite as C;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.sort_by_key(|s| {
        !matches!(
            s.suite(),
            C::TLS13_AES_128_GCM_SHA256
                | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    Arc::new(p)
}

/// Creates a self-signed certificate for `names` (DNS names or IP addresses) in `dir`
/// and returns its thumbprint. An existing certificate is kept unless `replace`.
///
/// # Errors
/// A certificate exists (and not `replace`); generation or write errors.
pub fn init_cert(dir: &Path, names: &[String], replace: bool) -> Result<String> {
    let cert_path = dir.join(CERT_FILE);
    if cert_path.exists() && !replace {
        return Err(Error::Invalid(format!(
            "{} exists (use --replace-cert to make a new one; clients will refuse it until they accept it again)",
            cert_path.display()
        )));
    }
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| Error::Tls(format!("certificate names: {e}")))?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(3600)).into();
    params.not_after = (now + std::time::Duration::from_secs(10 * 365 * 86400)).into();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Error::Tls(format!("key generation: {e}")))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| Error::Tls(format!("self-signing: {e}")))?;
    fsio::write_private(&dir.join(KEY_FILE), key.serialize_pem().as_bytes())?;
    fsio::write_atomic(&cert_path, cert.pem().as_bytes())?;
    Ok(thumbprint(cert.der()))
}

/// `SHA256:` and the hex of the certificate's SHA-256, colon-separated in pairs as
/// browsers and VMware print thumbprints.
pub fn thumbprint(der: &[u8]) -> String {
    let hex = hex::encode_upper(Sha256::digest(der));
    let pairs: Vec<&str> = (0..hex.len())
        .step_by(2)
        .filter_map(|i| hex.get(i..i + 2))
        .collect();
    pairs.join(":")
}

/// The certificate chain and key in `dir`.
///
/// # Errors
/// Missing or unreadable files ("run vcb host init").
pub fn load_identity(dir: &Path) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    use rustls::pki_types::pem::PemObject;
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    if !cert_path.exists() {
        return Err(Error::Invalid(format!(
            "{} is missing: run `vcb host init` first",
            cert_path.display()
        )));
    }
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|i| i.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| Error::Tls(format!("{}: {e}", cert_path.display())))?;
    fsio::check_private(&key_path)?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| Error::Tls(format!("{}: {e}", key_path.display())))?;
    Ok((certs, key))
}

/// The server's TLS configuration (HTTPS and NBD share the certificate).
///
/// # Errors
/// As for [`load_identity`]; a key that does not fit the certificate.
pub fn server_config(dir: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let (certs, key) = load_identity(dir)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(format!("certificate and key: {e}")))?;
    // The server's preference (AES-128-GCM first) wins over the client's.
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// How a client decides to trust the agent's certificate.
#[derive(Debug, Clone)]
pub enum TrustPolicy {
    /// Pin thumbprints in this trust file (one `host:port thumbprint` per line);
    /// `accept_new` records an unknown one instead of refusing it.
    Pinned {
        /// The trust file.
        file: PathBuf,
        /// Record an unknown certificate (`--accept-new-host-cert`).
        accept_new: bool,
    },
    /// Trust certificates issued by the CA in this PEM file.
    Ca(PathBuf),
}

/// Why the certificate check refused a server, once it did.
pub type Refusal = Arc<Mutex<Option<String>>>;

/// A client configuration for `host:port` under `policy`. The returned slot holds why
/// the certificate was refused, when it was (rustls wraps the reason in its own words).
///
/// # Errors
/// An unreadable trust or CA file.
pub fn client_config(
    endpoint: &str,
    policy: &TrustPolicy,
) -> Result<(Arc<rustls::ClientConfig>, Refusal)> {
    let seen = Arc::new(Mutex::new(None));
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let config = match policy {
        TrustPolicy::Ca(path) => {
            use rustls::pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| Error::Tls(format!("{}: {e}", path.display())))?
            {
                let cert = cert.map_err(|e| Error::Tls(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| Error::Tls(format!("{}: {e}", path.display())))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        TrustPolicy::Pinned { file, accept_new } => {
            let verifier = PinnedVerifier {
                endpoint: endpoint.to_owned(),
                file: file.clone(),
                accept_new: *accept_new,
                seen: Arc::clone(&seen),
                provider: provider(),
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        }
    };
    Ok((Arc::new(config), seen))
}

/// Checks the server's certificate against the thumbprint pinned for its endpoint.
#[derive(Debug)]
struct PinnedVerifier {
    endpoint: String,
    file: PathBuf,
    accept_new: bool,
    seen: Arc<Mutex<Option<String>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let got = thumbprint(end_entity);
        let reject = |text: String| {
            if let Ok(mut s) = self.seen.lock() {
                *s = Some(text.clone());
            }
            Err(rustls::Error::General(text))
        };
        match crate::trust::lookup(&self.file, &self.endpoint) {
            Ok(Some(pinned)) if pinned == got => Ok(ServerCertVerified::assertion()),
            Ok(Some(pinned)) => reject(format!(
                "the host certificate of {} CHANGED: it is {got}, {} pinned {pinned}; refusing (if the host was re-initialised, remove its line from {} and accept the new one)",
                self.endpoint,
                self.file.display(),
                self.file.display()
            )),
            Ok(None) if self.accept_new => match crate::trust::record(&self.file, &self.endpoint, &got) {
                Ok(()) => Ok(ServerCertVerified::assertion()),
                Err(e) => reject(format!("cannot record the host certificate: {e}")),
            },
            Ok(None) => reject(format!(
                "the host certificate of {} is unknown ({got}); compare it with what `vcb host cert` prints on the host and pass --accept-new-host-cert to trust it",
                self.endpoint
            )),
            Err(e) => reject(format!("trust file: {e}")),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
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
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
