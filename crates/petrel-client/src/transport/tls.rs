//! The rustls client configuration, from [`TlsOptions`] or the caller's own.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error as TlsError, InconsistentKeys,
    RootCertStore, SignatureScheme, SupportedProtocolVersion,
};

use crate::error::ClientError;
use crate::options::{TlsOptions, TlsVersion};

/// The *ring* provider, restricted to `suites` if any are named.
pub(crate) fn provider(suites: &[rustls::CipherSuite]) -> Result<CryptoProvider, ClientError> {
    // *ring* rather than aws-lc-rs: it builds with a C compiler alone, no
    // CMake or NASM. rustls deprecated the function only for lacking
    // post-quantum key exchange, which MQTT brokers don't offer either.
    #[allow(deprecated)]
    let mut provider = rustls::crypto::ring::default_provider();
    if !suites.is_empty() {
        let mut chosen = Vec::with_capacity(suites.len());
        for wanted in suites {
            let found = provider
                .cipher_suites
                .iter()
                .find(|s| s.suite() == *wanted)
                .ok_or_else(|| {
                    ClientError::tls_msg(format!("cipher suite {wanted:?} is not supported"))
                })?;
            chosen.push(*found);
        }
        provider.cipher_suites = chosen;
    }
    Ok(provider)
}

fn versions(versions: &[TlsVersion]) -> Vec<&'static SupportedProtocolVersion> {
    if versions.is_empty() {
        return rustls::DEFAULT_VERSIONS.to_vec();
    }
    let mut out = Vec::new();
    for v in [TlsVersion::Tls13, TlsVersion::Tls12] {
        if versions.contains(&v) {
            out.push(match v {
                TlsVersion::Tls12 => &rustls::version::TLS12,
                TlsVersion::Tls13 => &rustls::version::TLS13,
            });
        }
    }
    out
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let file = File::open(path).map_err(|e| ClientError::tls(path.display().to_string(), e))?;
    rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::tls(path.display().to_string(), e))
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, ClientError> {
    let file = File::open(path).map_err(|e| ClientError::tls(path.display().to_string(), e))?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(|e| ClientError::tls(path.display().to_string(), e))?
        .ok_or_else(|| ClientError::tls_msg(format!("{}: no private key", path.display())))
}

/// Every certificate in the PEM files of `dir` (files without one are
/// skipped, as OpenSSL's `-CApath` skips what it can't use).
fn dir_certs(dir: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| ClientError::tls(dir.display().to_string(), e))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ClientError::tls(dir.display().to_string(), e))?;
        if entry.path().is_file() {
            paths.push(entry.path());
        }
    }
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let Ok(file) = File::open(&path) else {
            continue;
        };
        out.extend(rustls_pemfile::certs(&mut BufReader::new(file)).filter_map(Result::ok));
    }
    Ok(out)
}

fn roots(tls: &TlsOptions) -> Result<RootCertStore, ClientError> {
    let mut roots = RootCertStore::empty();
    if let Some(path) = &tls.ca_file {
        for cert in certs(path)? {
            roots
                .add(cert)
                .map_err(|e| ClientError::tls(path.display().to_string(), e))?;
        }
    }
    if let Some(dir) = &tls.ca_dir {
        let (added, _) = roots.add_parsable_certificates(dir_certs(dir)?);
        if added == 0 {
            return Err(ClientError::tls_msg(format!(
                "{}: no usable CA certificate",
                dir.display()
            )));
        }
    }
    if tls.ca_file.is_none() && tls.ca_dir.is_none() {
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            let why = native
                .errors
                .first()
                .map_or_else(|| "none found".to_string(), ToString::to_string);
            return Err(ClientError::tls_msg(format!(
                "no usable system root certificates ({why})"
            )));
        }
    }
    Ok(roots)
}

/// A client certificate chain and its key. Like rustls's
/// `with_client_auth_cert`, a key that does not match the certificate is
/// refused; unlike it, a certificate webpki can't parse (an X.509 v1
/// certificate, as `openssl x509 -req` makes without extensions) is sent
/// anyway, for the broker to judge — as OpenSSL-based clients do.
fn certified_key(
    provider: &CryptoProvider,
    cert: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, ClientError> {
    let chain = certs(cert)?;
    if chain.is_empty() {
        return Err(ClientError::tls_msg(format!(
            "{}: no certificate",
            cert.display()
        )));
    }
    let key = provider
        .key_provider
        .load_private_key(key(key_path)?)
        .map_err(|e| ClientError::tls(key_path.display().to_string(), e))?;
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        Err(e @ TlsError::InconsistentKeys(InconsistentKeys::KeyMismatch)) => Err(
            ClientError::tls(format!("{} and {}", cert.display(), key_path.display()), e),
        ),
        _ => Ok(certified),
    }
}

/// The rustls client configuration: the caller's, or one built from the
/// options — the given CAs or the system's roots, an optional client
/// certificate, the versions and suites asked for, and `insecure`
/// skipping only the host name check (as `mosquitto_pub --insecure`
/// does). `alpn` is offered unless the caller's configuration names its
/// own.
pub(crate) fn client_config(
    tls: &TlsOptions,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, ClientError> {
    if let Some(config) = &tls.config {
        if alpn.is_empty() || !config.alpn_protocols.is_empty() {
            return Ok(config.clone());
        }
        let mut config = ClientConfig::clone(config);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        return Ok(Arc::new(config));
    }
    let provider = Arc::new(provider(&tls.cipher_suites)?);
    let roots = Arc::new(roots(tls)?);
    // Only versions some chosen suite can speak (TLS 1.2 suites named
    // alone mean TLS 1.2).
    let usable: Vec<_> = versions(&tls.versions)
        .into_iter()
        .filter(|v| {
            provider
                .cipher_suites
                .iter()
                .any(|s| s.version().version == v.version)
        })
        .collect();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&usable)
        .map_err(|e| ClientError::tls("the versions and cipher suites asked for", e))?
        .with_root_certificates(roots.clone());
    let mut config = match &tls.client_cert {
        Some((cert, key_path)) => {
            let certified = certified_key(&provider, cert, key_path)?;
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified)))
        }
        None => builder.with_no_client_auth(),
    };
    if tls.insecure {
        let inner = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| ClientError::tls("certificate verifier", e))?;
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(AnyHostName(inner)));
    }
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The name the server's certificate must carry: `server_name`, else the
/// host.
pub(crate) fn server_name(
    tls: &TlsOptions,
    host: &str,
) -> Result<ServerName<'static>, ClientError> {
    let name = tls.server_name.as_deref().unwrap_or(host);
    ServerName::try_from(name.to_string())
        .map_err(|e| ClientError::tls(format!("server name {name:?}"), e))
}

/// A failed TLS handshake: tokio-rustls reports rustls's refusals (an
/// untrusted certificate, no common version) as I/O errors that carry the
/// rustls error; those become [`ClientError::Tls`] with that error as the
/// source, the rest (the connection reset) stay I/O errors.
pub(crate) fn handshake_error(context: String, e: std::io::Error) -> ClientError {
    if e.get_ref().is_some_and(|inner| inner.is::<TlsError>()) {
        if let Some(inner) = e.into_inner() {
            return ClientError::tls(format!("{context}: handshake"), inner);
        }
        unreachable!("an error with an inner error has one");
    }
    ClientError::io(format!("{context}: TLS handshake"), e)
}

/// Verifies the chain like the default verifier, but accepts a certificate
/// issued for another host name.
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(TlsError::InvalidCertificate(CertificateError::NotValidForName))
            | Err(TlsError::InvalidCertificate(CertificateError::NotValidForNameContext {
                ..
            })) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
