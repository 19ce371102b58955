//! MQTT over QUIC (quinn), as EMQX and NanoMQ offer it: TLS 1.3 with ALPN
//! `mqtt`, one bidirectional stream per MQTT connection, the client free to
//! move between addresses (connection migration). The stream reaches the
//! connection driver like any other transport.
//!
//! A QUIC connection does not hibernate: quinn drives every connection of
//! an endpoint from one socket and keeps its state, so there is no socket
//! of its own to hand to the hibernation thread.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;

use super::transport::Transport;

/// Build quinn's server configuration around a listener's TLS one.
/// `keep_alive` is the longest keep alive the broker allows: a connection
/// silent for half as long again is gone, as MQTT's keep alive says, so
/// QUIC's idle timeout is that (MQTT's own check closes it first when the
/// client asked for less).
pub(crate) fn server_config(
    tls: Arc<rustls::ServerConfig>,
    keep_alive: Duration,
) -> io::Result<quinn::ServerConfig> {
    let crypto = QuicServerConfig::try_from(tls).map_err(io::Error::other)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // One stream carries the MQTT connection; nothing else is opened.
    transport.max_concurrent_bidi_streams(1u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    let idle = keep_alive.saturating_mul(3) / 2;
    let idle = quinn::IdleTimeout::try_from(idle.min(Duration::from_secs(86_400 * 7)))
        .map_err(io::Error::other)?;
    transport.max_idle_timeout(Some(idle));
    // MQTT uses no unreliable datagrams.
    transport.datagram_receive_buffer_size(None);
    transport.datagram_send_buffer_size(0);
    config.transport_config(Arc::new(transport));
    config.migration(true);
    Ok(config)
}

/// Open a QUIC endpoint on `addr`.
pub(crate) fn bind(config: quinn::ServerConfig, addr: SocketAddr) -> io::Result<quinn::Endpoint> {
    quinn::Endpoint::server(config, addr)
}

/// The certificate chain the client presented, if any.
pub(crate) fn peer_certificate(conn: &quinn::Connection) -> Option<Vec<u8>> {
    let identity = conn.peer_identity()?;
    let chain = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    chain.first().map(|c| c.to_vec())
}

/// An MQTT connection's stream.
pub(crate) struct QuicStream {
    pub(crate) send: quinn::SendStream,
    pub(crate) recv: quinn::RecvStream,
    /// Held so the connection lives as long as the stream.
    pub(crate) _conn: quinn::Connection,
}

impl Transport for QuicStream {
    type Reader<'a> = &'a mut quinn::RecvStream;
    type Writer<'a> = &'a mut quinn::SendStream;
    // Never used: QUIC connections don't hibernate.
    type Hibernating = mio::net::TcpStream;

    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        (&mut self.recv, &mut self.send)
    }

    fn can_hibernate(&self) -> bool {
        false
    }

    fn peer(&self) -> Option<SocketAddr> {
        // Where the client is now (it may have moved).
        Some(self._conn.remote_address())
    }

    fn hibernate(self) -> io::Result<Self::Hibernating> {
        Err(io::Error::other("QUIC connections don't hibernate"))
    }

    fn resume(_: Self::Hibernating) -> io::Result<Self> {
        Err(io::Error::other("QUIC connections don't hibernate"))
    }
}
