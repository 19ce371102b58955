//! The byte stream under the session: TCP, TLS (rustls), WebSocket,
//! secure WebSocket, QUIC or a Unix socket — each an `AsyncRead +
//! AsyncWrite` the connection task reads and writes alike.

mod quic;
pub(crate) mod tls;
mod ws;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error::ClientError;
use crate::options::{ConnectOptions, TlsOptions, Transport};

use crate::stream::Io;

/// ALPN for secure WebSocket: it starts as HTTP/1.1.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Open the transport `opts` describe, with nothing of MQTT sent yet (for
/// tools that speak MQTT themselves, such as `petrel bench`). The TLS
/// configuration is made first: a missing file or a bad name fails before
/// any connection.
pub async fn open_stream(opts: &ConnectOptions) -> Result<Box<dyn Io>, ClientError> {
    connect(opts).await
}

/// [`open_stream`], for the connection task.
pub(crate) async fn connect(opts: &ConnectOptions) -> Result<Box<dyn Io>, ClientError> {
    if let Some(c) = &opts.connector {
        return c
            .open()
            .await
            .map_err(|e| ClientError::io(format!("{c:?}"), e));
    }
    match &opts.transport {
        Transport::Tcp => {
            let tls = opts
                .tls
                .as_ref()
                .map(|t| Tls::new(opts, t, &[]))
                .transpose()?;
            let tcp = tcp(opts).await?;
            match tls {
                None => Ok(Box::new(tcp)),
                Some(tls) => Ok(Box::new(tls.over(tcp).await?)),
            }
        }
        Transport::WebSocket { path } => {
            let tls = opts
                .tls
                .as_ref()
                .map(|t| Tls::new(opts, t, &[ALPN_HTTP1]))
                .transpose()?;
            let tcp = tcp(opts).await?;
            let host = url_host(&opts.host);
            let max_in = ws_limit(opts.max_packet_size);
            match tls {
                None => {
                    let url = format!("ws://{host}:{}{path}", opts.port);
                    Ok(Box::new(ws::connect(tcp, &url, max_in).await?))
                }
                Some(tls) => {
                    let url = format!("wss://{host}:{}{path}", opts.port);
                    let tls = tls.over(tcp).await?;
                    Ok(Box::new(ws::connect(tls, &url, max_in).await?))
                }
            }
        }
        Transport::Quic => Ok(Box::new(quic::connect(opts).await?)),
        Transport::Unix { path } => unix(opts, path).await,
    }
}

async fn tcp(opts: &ConnectOptions) -> Result<TcpStream, ClientError> {
    let tcp = TcpStream::connect((opts.host.as_str(), opts.port))
        .await
        .map_err(|e| ClientError::io(format!("{}:{}", opts.host, opts.port), e))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

#[cfg(unix)]
async fn unix(opts: &ConnectOptions, path: &std::path::Path) -> Result<Box<dyn Io>, ClientError> {
    let tls = opts
        .tls
        .as_ref()
        .map(|t| Tls::new(opts, t, &[]))
        .transpose()?;
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|e| ClientError::io(path.display().to_string(), e))?;
    match tls {
        None => Ok(Box::new(stream)),
        Some(tls) => Ok(Box::new(tls.over(stream).await?)),
    }
}

#[cfg(not(unix))]
async fn unix(_: &ConnectOptions, path: &std::path::Path) -> Result<Box<dyn Io>, ClientError> {
    Err(ClientError::io(
        path.display().to_string(),
        std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "Unix sockets exist only on Unix",
        ),
    ))
}

/// TLS ready to run over a stream: the configuration (offering `alpn`),
/// the server name, and the broker for messages.
struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
    context: String,
}

impl Tls {
    fn new(opts: &ConnectOptions, tls: &TlsOptions, alpn: &[&[u8]]) -> Result<Self, ClientError> {
        Ok(Self {
            connector: TlsConnector::from(tls::client_config(tls, alpn)?),
            name: tls::server_name(tls, &opts.host)?,
            context: format!("{}:{}", opts.host, opts.port),
        })
    }

    async fn over<S>(self, stream: S) -> Result<tokio_rustls::client::TlsStream<S>, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.connector
            .connect(self.name, stream)
            .await
            .map_err(|e| tls::handshake_error(self.context, e))
    }
}

/// The host as a URL writes it: an IPv6 address in brackets.
fn url_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// The largest WebSocket frame or message accepted: room for the largest
/// packet accepted, and never less than tungstenite's 64 MiB default (a
/// broker may put several packets in one frame).
fn ws_limit(max_packet_size: u32) -> usize {
    let packet = usize::try_from(max_packet_size).unwrap_or(usize::MAX);
    packet.saturating_mul(2).max(64 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_are_bracketed_in_urls() {
        assert_eq!(url_host("::1"), "[::1]");
        assert_eq!(url_host("[::1]"), "[::1]");
        assert_eq!(url_host("broker.example"), "broker.example");
        assert_eq!(url_host("10.0.0.1"), "10.0.0.1");
    }

    #[test]
    fn websocket_limits_cover_the_largest_packet() {
        assert_eq!(ws_limit(1024), 64 << 20);
        assert_eq!(ws_limit(268_435_455), 2 * 268_435_455);
    }
}
