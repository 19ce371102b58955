//! The byte stream under the session: TCP, or TLS over TCP (rustls).

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore,
    SignatureScheme,
};
use tokio_rustls::TlsConnector;

use crate::error::ClientError;
use crate::options::{ConnectOptions, TlsOptions};

/// A connected byte stream.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

pub(crate) async fn connect(opts: &ConnectOptions) -> Result<Box<dyn Io>, ClientError> {
    let tcp = TcpStream::connect((opts.host.as_str(), opts.port))
        .await
        .map_err(|e| ClientError::Io(format!("{}:{}: {e}", opts.host, opts.port)))?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = &opts.tls else {
        return Ok(Box::new(tcp));
    };
    let config = tls_config(tls)?;
    let name = tls.server_name.clone().unwrap_or_else(|| opts.host.clone());
    let name =
        ServerName::try_from(name).map_err(|e| ClientError::Tls(format!("server name: {e}")))?;
    let stream = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    Ok(Box::new(stream))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let file =
        File::open(path).map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?;
    rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, ClientError> {
    let file =
        File::open(path).map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?
        .ok_or_else(|| ClientError::Tls(format!("{}: no private key", path.display())))
}

/// The rustls client configuration: the given CA or the system's roots,
/// an optional client certificate, and `insecure` skipping only the
/// host name check (as `mosquitto_pub --insecure` does).
pub(crate) fn tls_config(tls: &TlsOptions) -> Result<ClientConfig, ClientError> {
    let mut roots = RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            for cert in certs(path)? {
                roots
                    .add(cert)
                    .map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs()
                .map_err(|e| ClientError::Tls(format!("system roots: {e}")))?;
            let (added, _) = roots.add_parsable_certificates(native);
            if added == 0 {
                return Err(ClientError::Tls(
                    "no usable system root certificates".into(),
                ));
            }
        }
    }
    let roots = Arc::new(roots);
    let builder = ClientConfig::builder().with_root_certificates(roots.clone());
    let mut config = match &tls.client_cert {
        Some((cert, key_path)) => builder
            .with_client_auth_cert(certs(cert)?, key(key_path)?)
            .map_err(|e| ClientError::Tls(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    if tls.insecure {
        let inner = WebPkiServerVerifier::builder(roots)
            .build()
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(AnyHostName(inner)));
    }
    Ok(config)
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
            Err(TlsError::InvalidCertificate(CertificateError::NotValidForName)) => {
                Ok(ServerCertVerified::assertion())
            }
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
