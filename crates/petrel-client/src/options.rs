//! What a client connects with.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use petrel_codec::{Properties, Protocol, QoS, TopicName};

/// How to reach the broker and what to tell it in CONNECT.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Broker host name or address.
    pub host: String,
    /// Broker port (1883, or 8883 for TLS, by convention).
    pub port: u16,
    /// MQTT 3.1.1 or 5.0 (3.1 also works).
    pub protocol: Protocol,
    /// Client identifier; empty asks the broker to assign one (5.0: the
    /// Assigned Client Identifier is then used on reconnects).
    pub client_id: String,
    /// Clean Start (5.0) / Clean Session (3.1.1) on the first connection.
    /// 5.0 reconnects resume (Clean Start 0) so the session lives on if it
    /// has an expiry; 3.1.1 reconnects ask for what this says.
    pub clean_start: bool,
    /// 5.0 Session Expiry Interval in seconds (0: the session ends with the
    /// connection). 3.1.1 keeps a session when `clean_start` is false.
    pub session_expiry: u32,
    /// Keep alive, in whole seconds; under a second turns it off.
    pub keep_alive: Duration,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Bytes>,
    /// Will message, published by the broker if the connection ends without
    /// a normal DISCONNECT.
    pub will: Option<LastWill>,
    /// Other 5.0 CONNECT properties: Receive Maximum, Maximum Packet Size,
    /// Topic Alias Maximum, Request Response Information, Request Problem
    /// Information, User Properties, Authentication Method and Data. (The
    /// Session Expiry Interval comes from `session_expiry`.) An
    /// Authentication Method needs an `authenticator`.
    pub properties: Properties,
    /// 5.0 enhanced authentication: answers the broker's AUTH challenges
    /// for the Authentication Method set in `properties` (4.12).
    pub authenticator: Option<Arc<dyn Authenticator>>,
    /// TLS; `None` for plain TCP.
    pub tls: Option<TlsOptions>,
    /// Reconnect policy.
    pub reconnect: Reconnect,
    /// Publishes (and subscription requests) held while disconnected or
    /// while the in-flight window is full; past it, `publish` waits and
    /// `try_publish` reports [`crate::ClientError::Full`]. Default 1000.
    pub max_pending: usize,
    /// Received messages held for the application while it is not reading
    /// the stream. QoS 1 and 2 messages are acknowledged only as the
    /// application is handed them, so the broker's own flow control bounds
    /// them; QoS 0 messages past this bound are dropped (counted). Default 1000.
    pub max_incoming: usize,
    /// Largest packet accepted from the broker (told to a 5.0 broker as
    /// Maximum Packet Size). Default 1 MiB.
    pub max_packet_size: u32,
    /// How long to wait for the TCP/TLS connection and CONNACK. Default 10 s.
    pub connect_timeout: Duration,
}

/// A will message.
#[derive(Clone, Debug)]
pub struct LastWill {
    /// Topic.
    pub topic: TopicName,
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: QoS,
    /// Retain.
    pub retain: bool,
    /// 5.0 will properties (Will Delay Interval, Message Expiry, Content
    /// Type, Response Topic, Correlation Data, User Properties, Payload
    /// Format Indicator).
    pub properties: Properties,
}

/// TLS settings (rustls).
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// CA certificates (PEM) to trust; `None` trusts the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and private key (PEM), for brokers that
    /// authenticate clients by certificate.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Name to verify the server certificate against; default: `host`.
    pub server_name: Option<String>,
    /// Accept a server certificate issued for another host name (the chain
    /// is still verified), as `mosquitto_pub --insecure`. For testing only.
    pub insecure: bool,
}

/// Automatic reconnection with exponential backoff and jitter (each wait
/// is random between half the current cap and the cap). A connection that
/// stayed up for ten seconds resets the cap; refusals retrying can't fix
/// (bad credentials, not authorized, banned, bad client id, unsupported
/// version, server moved) close the client.
#[derive(Clone, Copy, Debug)]
pub struct Reconnect {
    /// Whether to reconnect at all after the connection is lost.
    pub enabled: bool,
    /// The first wait; each failure doubles it.
    pub min_backoff: Duration,
    /// The longest wait.
    pub max_backoff: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self {
            enabled: true,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl ConnectOptions {
    /// Options for `host:port` with MQTT 5.0, a client id, Clean Start,
    /// keep alive 60 s, and the defaults above.
    pub fn new(host: impl Into<String>, port: u16, client_id: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port,
            protocol: Protocol::V5,
            client_id: client_id.into(),
            clean_start: true,
            session_expiry: 0,
            keep_alive: Duration::from_secs(60),
            username: None,
            password: None,
            will: None,
            properties: Properties::new(),
            authenticator: None,
            tls: None,
            reconnect: Reconnect::default(),
            max_pending: 1000,
            max_incoming: 1000,
            max_packet_size: 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// The same, speaking `protocol`.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }
}

/// The client's side of a 5.0 enhanced authentication exchange (4.12):
/// given the broker's challenge, the next Authentication Data. Called on
/// every connection, reconnects included, and for
/// [`crate::Client::reauthenticate`].
pub trait Authenticator: Send + Sync + std::fmt::Debug {
    /// The Authentication Method it speaks, used when `properties` name
    /// none. Default: none (then `properties` must).
    fn method(&self) -> Option<&str> {
        None
    }

    /// The Authentication Data sent in CONNECT (or in the AUTH that starts
    /// a re-authentication), if the method starts with one; an exchange
    /// begins here. Default: none.
    fn initial_data(&self) -> Option<Bytes> {
        None
    }

    /// Answer the broker's AUTH (Continue Authentication) carrying
    /// `challenge`; an error gives up (the client disconnects).
    fn respond(&self, challenge: Option<&Bytes>) -> Result<Bytes, String>;

    /// The broker accepted (CONNACK, or AUTH Success after a
    /// re-authentication) with this last Authentication Data: a method
    /// that authenticates the broker too checks it here; an error gives up
    /// (the client disconnects). Default: accept.
    fn finish(&self, data: Option<&Bytes>) -> Result<(), String> {
        let _ = data;
        Ok(())
    }
}
