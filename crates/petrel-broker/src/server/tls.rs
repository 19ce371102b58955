//! TLS over any stream, with rustls: the listener's certificates (reloaded
//! on demand without touching open connections), optional or required
//! client certificates checked against a CA, and the client certificate's
//! identity for the engine.
//!
//! The stream adapter is ours rather than tokio-rustls's so that a
//! hibernating connection can fold its socket and its TLS state apart and
//! put them back together ([`Fold`]).

use std::io::{self, Read, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::transport::{Fold, Folded};
use crate::config::{ListenerConfig, TransportKind};
use crate::core::auth::CertificateIdentity;

/// Hands a reloaded configuration on.
type Installer = Box<dyn Fn(Arc<ServerConfig>) + Send + Sync>;

/// A listener's TLS settings, as last loaded.
pub(crate) struct TlsAcceptor {
    listener: ListenerConfig,
    config: RwLock<Arc<ServerConfig>>,
    /// Who else takes a reloaded configuration (a QUIC endpoint).
    also: std::sync::OnceLock<Installer>,
}

/// Why a listener's TLS files can't be used.
fn file_error(path: &Path, what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{} ({what}): {e}", path.display()),
    )
}

fn read_certs(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).map_err(|e| file_error(path, "certificates", e))?;
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, "certificates", e))?;
    if certs.is_empty() {
        return Err(file_error(path, "certificates", "no PEM certificate in it"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> io::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).map_err(|e| file_error(path, "private key", e))?;
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| file_error(path, "private key", e))?
        .ok_or_else(|| file_error(path, "private key", "no PEM private key in it"))
}

/// The crypto provider: ring, which builds with nothing but a C compiler
/// (aws-lc-rs, rustls's default, needs CMake and minutes more to build).
/// rustls marks it deprecated for lacking post-quantum key exchange; the
/// classical groups it offers are what MQTT clients use today.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Build the rustls configuration of a listener from its files.
fn server_config(l: &ListenerConfig) -> io::Result<ServerConfig> {
    let (Some(certfile), Some(keyfile)) = (&l.certfile, &l.keyfile) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a TLS listener needs certfile and keyfile",
        ));
    };
    let certs = read_certs(certfile)?;
    let key = read_key(keyfile)?;
    // QUIC is TLS 1.3 only.
    let versions: &[&rustls::SupportedProtocolVersion] = match l.transport {
        TransportKind::Quic => &[&rustls::version::TLS13],
        _ => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(io::Error::other)?;
    let builder = match &l.cafile {
        Some(cafile) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(cafile)? {
                roots
                    .add(cert)
                    .map_err(|e| file_error(cafile, "certificate authority", e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = if l.require_certificate {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| file_error(cafile, "certificate authority", e))?,
            )
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| file_error(keyfile, "does not match the certificate", e))?;
    config.alpn_protocols = match l.transport {
        // Browsers and WebSocket clients speak HTTP/1.1 over TLS first.
        TransportKind::Wss => vec![b"http/1.1".to_vec()],
        _ => vec![b"mqtt".to_vec()],
    };
    // Sessions resumed by ticket: a reconnect storm costs no full handshake.
    config.send_tls13_tickets = 2;
    Ok(config)
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("listener", &self.listener.describe())
            .finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// Load a listener's certificates and keys.
    pub(crate) fn new(listener: &ListenerConfig) -> io::Result<Self> {
        Ok(Self {
            config: RwLock::new(Arc::new(server_config(listener)?)),
            listener: listener.clone(),
            also: std::sync::OnceLock::new(),
        })
    }

    /// Read the files again, to [`TlsAcceptor::install`].
    pub(crate) fn prepare(&self) -> io::Result<Arc<ServerConfig>> {
        let config = Arc::new(server_config(&self.listener)?);
        if self.listener.transport == TransportKind::Quic {
            // Checked here, before any listener changes, so that a reload
            // stays all or nothing.
            quinn_proto::crypto::rustls::QuicServerConfig::try_from(config.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        }
        Ok(config)
    }

    /// New connections use `config`; open ones keep theirs.
    pub(crate) fn install(&self, config: Arc<ServerConfig>) {
        if let Some(also) = self.also.get() {
            also(config.clone());
        }
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
    }

    /// The configuration new connections get.
    pub(crate) fn current(&self) -> Arc<ServerConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Also give every configuration installed from now on to `f` (a
    /// QUIC endpoint, which holds its own).
    pub(crate) fn also_install(&self, f: impl Fn(Arc<ServerConfig>) + Send + Sync + 'static) {
        let _ = self.also.set(Box::new(f));
    }

    /// Run the server side of a handshake over `io` (the caller bounds it
    /// in time).
    pub(crate) async fn accept<S: Fold>(&self, io: S) -> io::Result<TlsIo<S>> {
        let conn = ServerConnection::new(self.current()).map_err(io::Error::other)?;
        let mut tls = TlsIo {
            io,
            state: Box::new(conn),
            eof: false,
        };
        std::future::poll_fn(|cx| tls.poll_handshake(cx)).await?;
        Ok(tls)
    }
}

/// A TLS session over a stream.
pub(crate) struct TlsIo<S> {
    io: S,
    state: Box<ServerConnection>,
    /// The peer closed its side.
    eof: bool,
}

/// A stream borrowed as [`Read`] / [`Write`] for rustls: `WouldBlock`
/// where the stream is not ready (and the task is woken when it is).
struct Polled<'a, 'b, S> {
    io: &'a mut S,
    cx: &'a mut Context<'b>,
}

impl<S: AsyncRead + Unpin> Read for Polled<'_, '_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut buf) {
            Poll::Ready(Ok(())) => Ok(buf.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<S: AsyncWrite + Unpin> Write for Polled<'_, '_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match Pin::new(&mut *self.io).poll_flush(self.cx) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

fn would_block<T>(r: io::Result<T>) -> Poll<io::Result<T>> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
        r => Poll::Ready(r),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsIo<S> {
    /// Write what rustls has to send; Ready once all of it is written.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.state.wants_write() {
            let mut io = Polled {
                io: &mut self.io,
                cx,
            };
            match would_block(self.state.write_tls(&mut io)) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Read and process more records: Ready(Ok(false)) at the end of the
    /// peer's stream.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let mut io = Polled {
            io: &mut self.io,
            cx,
        };
        let n = match would_block(self.state.read_tls(&mut io)) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        if n == 0 {
            self.eof = true;
            return Poll::Ready(Ok(false));
        }
        if let Err(e) = self.state.process_new_packets() {
            // Tell the peer why (its alert is queued), as far as it goes.
            let _ = self.poll_send(cx);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
        Poll::Ready(Ok(true))
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.state.is_handshaking() {
            if self.state.wants_write() {
                match self.poll_send(cx) {
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            match self.poll_receive(cx) {
                Poll::Ready(Ok(true)) => {}
                Poll::Ready(Ok(false)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer left during the TLS handshake",
                    )))
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // The server's last flight (and session tickets).
        self.poll_send(cx)
    }

    /// The verified client certificate's identity, if one was presented.
    pub(crate) fn identity(&self) -> Option<CertificateIdentity> {
        let cert = self.state.peer_certificates()?.first()?;
        identity(cert)
    }
}

/// What a certificate says about its holder.
pub(crate) fn identity(der: &[u8]) -> Option<CertificateIdentity> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let subject = cert.subject();
    let common_name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    let mut dns_names = Vec::new();
    let mut emails = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                GeneralName::RFC822Name(e) => emails.push(e.to_string()),
                _ => {}
            }
        }
    }
    Some(CertificateIdentity {
        subject: subject.to_string(),
        common_name,
        dns_names,
        emails,
    })
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.state.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    // 0: the peer's close_notify.
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer left without close_notify: an end all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Poll::Ready(Ok(()));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            // Key updates and the like want an answer.
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            match this.poll_receive(cx) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // What was encrypted before goes first: nothing more is taken while
        // the socket is full.
        match this.poll_send(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other.map_ok(|()| 0),
        }
        let n = this.state.writer().write_vectored(bufs)?;
        // Send it now if the socket takes it; otherwise the next write or
        // flush does.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_send(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.state.send_close_notify();
        match this.poll_send(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_shutdown(cx),
            other => other,
        }
    }
}

impl<S: Fold> Fold for TlsIo<S> {
    type Folded = Folded<S::Folded, (Box<ServerConnection>, bool)>;

    fn settled(&self) -> bool {
        !self.state.wants_write() && self.io.settled()
    }

    fn peer(&self) -> Option<std::net::SocketAddr> {
        self.io.peer()
    }

    fn fold(self) -> io::Result<Self::Folded> {
        Ok(Folded {
            io: self.io.fold()?,
            state: (self.state, self.eof),
        })
    }

    fn unfold(folded: Self::Folded) -> io::Result<Self> {
        let (state, eof) = folded.state;
        Ok(Self {
            io: S::unfold(folded.io)?,
            state,
            eof,
        })
    }
}
