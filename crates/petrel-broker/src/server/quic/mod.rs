//! MQTT over QUIC, as EMQX and NanoMQ offer it: TLS 1.3 with ALPN `mqtt`,
//! one bidirectional stream per MQTT connection, the client free to move
//! between addresses (connection migration). The stream reaches the
//! connection driver like any other transport, and a quiet connection
//! hibernates like the others: its task and buffers go, its protocol state
//! stays with the endpoint, which goes on answering the peer.
//!
//! The protocol is quinn's (quinn-proto); the endpoint around it is ours
//! ([`endpoint`]), so that a connection costs only its protocol state.

mod conn;
mod endpoint;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use quinn_proto::crypto::rustls::QuicServerConfig;

pub(crate) use conn::{Held, QuicStream};
pub(crate) use endpoint::Endpoint;

/// Build the QUIC server configuration around a listener's TLS one.
/// `keep_alive` is the longest keep alive the broker allows: a connection
/// silent for half as long again is gone, as MQTT's keep alive says, so
/// QUIC's idle timeout is that (MQTT's own check closes it first when the
/// client asked for less).
pub(crate) fn server_config(
    tls: Arc<rustls::ServerConfig>,
    keep_alive: Duration,
) -> io::Result<quinn_proto::ServerConfig> {
    let crypto = QuicServerConfig::try_from(tls).map_err(io::Error::other)?;
    let mut config = quinn_proto::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn_proto::TransportConfig::default();
    // One stream carries the MQTT connection; nothing else is opened.
    transport.max_concurrent_bidi_streams(1u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    let idle = keep_alive.saturating_mul(3) / 2;
    let idle = quinn_proto::IdleTimeout::try_from(idle.min(Duration::from_secs(86_400 * 7)))
        .map_err(io::Error::other)?;
    transport.max_idle_timeout(Some(idle));
    // MQTT uses no unreliable datagrams.
    transport.datagram_receive_buffer_size(None);
    transport.datagram_send_buffer_size(0);
    config.transport_config(Arc::new(transport));
    config.migration(true);
    Ok(config)
}
