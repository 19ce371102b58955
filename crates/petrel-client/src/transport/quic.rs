//! MQTT over QUIC (quinn), as EMQX and NanoMQ serve it: TLS 1.3 with ALPN
//! `mqtt`, and one bidirectional stream per MQTT connection, joined into a
//! single `AsyncRead + AsyncWrite`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::tls;
use crate::error::ClientError;
use crate::options::{ConnectOptions, TlsOptions, TlsVersion};

/// The ALPN protocol of MQTT over QUIC.
const ALPN: &[u8] = b"mqtt";
/// QUIC pings this often, so that its idle timeout (30 s unless the
/// broker says otherwise) never ends a connection MQTT's keep alive
/// would keep.
const QUIC_KEEP_ALIVE: Duration = Duration::from_secs(10);
/// How long a closed stream may take to deliver its last bytes (the
/// DISCONNECT) before the connection is closed.
const LINGER: Duration = Duration::from_secs(2);

/// Open a QUIC connection to the broker and its one stream.
pub(crate) async fn connect(opts: &ConnectOptions) -> Result<QuicStream, ClientError> {
    let context = format!("{}:{}", opts.host, opts.port);
    let failed = |e: Box<dyn std::error::Error + Send + Sync>| ClientError::Quic {
        context: context.clone(),
        source: e,
    };
    let default_tls = TlsOptions::default();
    let tls_options = opts.tls.as_ref().unwrap_or(&default_tls);
    let name = tls::server_name(tls_options, &opts.host)?;
    // quinn panics on a configuration without TLS 1.3: find out first.
    let no_tls13 = || {
        ClientError::tls_msg(format!(
            "{context}: QUIC needs TLS 1.3, which the TLS configuration leaves out"
        ))
    };
    if !tls_options.versions.is_empty() && !tls_options.versions.contains(&TlsVersion::Tls13) {
        return Err(no_tls13());
    }
    let crypto = tls::client_config(tls_options, &[ALPN])?;
    if tls_options.config.is_some() {
        // The caller's own: try it as quinn will.
        rustls::quic::ClientConnection::new(
            crypto.clone(),
            rustls::quic::Version::V1,
            name.clone(),
            Vec::new(),
        )
        .map_err(|_| no_tls13())?;
    }
    let crypto = QuicClientConfig::try_from(crypto)
        .map_err(|e| ClientError::tls(format!("{context}: QUIC needs TLS 1.3"), e))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(QUIC_KEEP_ALIVE));
    config.transport_config(Arc::new(transport));
    let name = name.to_str().into_owned();

    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((opts.host.as_str(), opts.port))
        .await
        .map_err(|e| ClientError::io(context.clone(), e))?
        .collect();
    let mut last = None;
    for addr in addrs {
        let local: SocketAddr = if addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let endpoint =
            quinn::Endpoint::client(local).map_err(|e| ClientError::io(context.clone(), e))?;
        let connecting = match endpoint.connect_with(config.clone(), addr, &name) {
            Ok(c) => c,
            Err(e) => {
                last = Some(failed(Box::new(e)));
                continue;
            }
        };
        let conn = match connecting.await {
            Ok(c) => c,
            Err(e) => {
                last = Some(failed(Box::new(e)));
                continue;
            }
        };
        let (send, recv) = conn.open_bi().await.map_err(|e| failed(Box::new(e)))?;
        return Ok(QuicStream {
            send: Some(send),
            recv,
            conn,
            endpoint,
        });
    }
    Err(last.unwrap_or_else(|| {
        ClientError::io(
            context.clone(),
            io::Error::new(io::ErrorKind::NotFound, "the host name has no address"),
        )
    }))
}

/// One QUIC stream carrying MQTT; it holds the connection and the
/// endpoint, which live as long as it does.
pub(crate) struct QuicStream {
    /// `None` only while being dropped.
    send: Option<quinn::SendStream>,
    recv: quinn::RecvStream,
    conn: quinn::Connection,
    endpoint: quinn::Endpoint,
}

impl QuicStream {
    fn send(&mut self) -> Pin<&mut quinn::SendStream> {
        Pin::new(self.send.as_mut().expect("present until dropped"))
    }
}

impl Drop for QuicStream {
    fn drop(&mut self) {
        // Dropping the last handle of a connection closes it at once,
        // discarding what the broker has not acknowledged yet — such as
        // the DISCONNECT just written. Give that a moment to arrive first.
        let Some(send) = self.send.take() else {
            return;
        };
        let conn = self.conn.clone();
        let endpoint = self.endpoint.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Dropping the send stream finishes it; `stopped` resolves once the
        // broker has everything.
        let stopped = send.stopped();
        drop(send);
        runtime.spawn(async move {
            let _ = tokio::time::timeout(LINGER, stopped).await;
            conn.close(0u32.into(), b"");
            let _ = tokio::time::timeout(LINGER, endpoint.wait_idle()).await;
        });
    }
}

impl AsyncRead for QuicStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(self.get_mut().send(), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(self.get_mut().send(), cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(self.get_mut().send(), cx)
    }
}
