//! What a client connects with.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use petrel_codec::{Properties, Protocol, QoS, TopicName};
use rustls::ClientConfig;

use crate::error::ClientError;

/// How to reach the broker and what to tell it in CONNECT.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Broker host name or address (for TLS, also the name its certificate
    /// is checked against unless [`TlsOptions::server_name`] says
    /// otherwise).
    pub host: String,
    /// Broker port (by convention 1883, 8883 for TLS, 80 and 443 for
    /// WebSocket, 14567 for QUIC).
    pub port: u16,
    /// What carries the MQTT bytes: TCP (the default), WebSocket, QUIC or
    /// a Unix socket. TLS over TCP or WebSocket is `tls`.
    pub transport: Transport,
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
    /// TLS; `None` for plain TCP or WebSocket. Set, TCP becomes TLS
    /// (`mqtts`) and WebSocket secure WebSocket (`wss`). QUIC always runs
    /// TLS 1.3, with these settings or, if `None`, the defaults (the
    /// system's roots).
    pub tls: Option<TlsOptions>,
    /// Reconnect policy.
    pub reconnect: Reconnect,
    /// Whether [`crate::connect`] keeps trying when the first connection
    /// fails for a passing reason (nothing listening yet, a network error,
    /// a timeout, a broker that is busy or unavailable), waiting between
    /// attempts as `reconnect`'s `min_backoff` and `max_backoff` say,
    /// whether or not `reconnect.enabled`. A refusal that retrying can't
    /// fix (bad credentials, not authorized, banned, an unsupported
    /// protocol version, …), a TLS failure (an untrusted certificate, a
    /// missing file) or invalid options still fail at once. It tries
    /// until it connects: bound it with a timeout around `connect` (the
    /// attempts stop when that future is dropped). Default false: the
    /// first failure is returned.
    pub retry_first_connect: bool,
    /// Publishes (and subscription requests) held while disconnected or
    /// while the in-flight window is full; past it, `publish` waits and
    /// `try_publish` reports [`crate::ClientError::Full`]. Default 1000.
    pub max_pending: usize,
    /// Received messages held for the application while it is not
    /// reading the stream, in two places. First the [`crate::Messages`]
    /// stream's own buffer, of `max_incoming` messages but at most 256:
    /// a QoS 1 or 2 message is acknowledged (PUBACK, or PUBREC) as it
    /// enters that buffer, before the application reads it. Behind it,
    /// messages that found the buffer full wait in the connection task,
    /// unacknowledged, so the broker's in-flight window (in 5.0, the
    /// Receive Maximum this client announces) holds back the QoS 1 and 2
    /// ones; a QoS
    /// 0 message that arrives while `max_incoming` messages (of any QoS)
    /// wait there is dropped. A broker that overruns its window is not read
    /// further until the application catches up. At least 1; default 1000.
    pub max_incoming: usize,
    /// Largest packet accepted from the broker (told to a 5.0 broker as
    /// Maximum Packet Size). Default 1 MiB.
    pub max_packet_size: u32,
    /// How long to wait for the connection (TCP, TLS, WebSocket upgrade,
    /// QUIC handshake) and CONNACK, each attempt. Default 10 s.
    pub connect_timeout: Duration,
    /// The application acknowledges each received QoS 1 or 2 message
    /// itself, once it has taken care of it ([`crate::Messages::recv_ack`]
    /// gives the [`crate::AckToken`], [`crate::Client::ack`] sends the
    /// PUBACK or PUBREC), instead of the client acknowledging it as it
    /// enters the [`crate::Messages`] buffer: a message the process did not
    /// finish with is sent again by the broker. Default false.
    pub manual_acks: bool,
    /// Say in CONNECT that this client is a bridge (3.1 and 3.1.1 only: the
    /// protocol level with its high bit, Mosquitto's `try_private`), so a
    /// broker that knows the flag does not send back what it published.
    /// Default false.
    pub bridge: bool,
    /// More addresses (host, port) of the same service, tried in turn after
    /// `host:port` when a connection attempt fails (failover). Once a
    /// connection that was up is lost, trying starts again from `host:port`;
    /// while connected to one of these, `host:port` is checked every
    /// `primary_check` and the client moves back as soon as it answers.
    pub fallbacks: Vec<(String, u16)>,
    /// How often to check whether `host:port` is back while connected to a
    /// fallback address. Default 60 s.
    pub primary_check: Duration,
    /// Opens the byte stream itself instead of `transport` (an in-process
    /// pipe to a broker in the same program, say). Default none.
    pub connector: Option<Arc<dyn crate::stream::Connector>>,
}

/// What carries the MQTT byte stream to the broker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// TCP to `host:port`; TLS over it when [`ConnectOptions::tls`] is set.
    #[default]
    Tcp,
    /// WebSocket (RFC 6455) to `host:port`, subprotocol `mqtt`, each write
    /// sent as a binary frame; secure WebSocket (TLS, ALPN `http/1.1`)
    /// when [`ConnectOptions::tls`] is set.
    WebSocket {
        /// The HTTP path of the upgrade request, such as `/mqtt` (and any
        /// query string).
        path: String,
    },
    /// One bidirectional stream of a QUIC connection to `host:port` (UDP),
    /// TLS 1.3 with ALPN `mqtt`, as EMQX and NanoMQ serve it.
    Quic,
    /// A Unix-domain stream socket (`host` and `port` are not used, except
    /// `host` as the TLS server name if `tls` is set).
    Unix {
        /// The socket file.
        path: PathBuf,
    },
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

/// TLS settings (rustls, with the *ring* crypto provider).
///
/// Either these fields describe the configuration, or [`TlsOptions::config`]
/// hands over one the caller built.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// CA certificates (PEM) to trust. With neither this nor `ca_dir`, the
    /// system's roots are trusted.
    pub ca_file: Option<PathBuf>,
    /// A directory whose every PEM certificate is trusted (files that hold
    /// none are skipped), besides `ca_file`'s.
    pub ca_dir: Option<PathBuf>,
    /// Client certificate chain and private key (PEM), for brokers that
    /// authenticate clients by certificate.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Name to verify the server certificate against; default: `host`.
    pub server_name: Option<String>,
    /// Accept a server certificate issued for another host name (the chain
    /// is still verified), as `mosquitto_pub --insecure`. For testing only.
    pub insecure: bool,
    /// The TLS versions offered; empty offers both 1.2 and 1.3. QUIC needs
    /// 1.3.
    pub versions: Vec<TlsVersion>,
    /// The cipher suites offered, in order of preference; empty offers all
    /// that *ring* provides. A suite it does not provide is an error.
    pub cipher_suites: Vec<rustls::CipherSuite>,
    /// The caller's own rustls configuration, used as it is: `ca_file`,
    /// `ca_dir`, `client_cert`, `insecure`, `versions` and
    /// `cipher_suites` are then not looked at (`server_name` still is).
    /// If it names no ALPN protocols, WebSocket offers `http/1.1` and QUIC
    /// `mqtt` (on a copy; the caller's stays as it is).
    pub config: Option<Arc<ClientConfig>>,
}

/// A TLS protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
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

impl Reconnect {
    /// The wait after `failures` failed attempts: exponential backoff with
    /// equal jitter, a wait in [cap/2, cap] where the cap is `min_backoff`
    /// doubled with each failure, at most `max_backoff`; `random` picks the
    /// point in that range.
    pub fn backoff(&self, failures: u32, random: u64) -> Duration {
        let cap = self
            .min_backoff
            .saturating_mul(1u32 << failures.min(20))
            .min(self.max_backoff)
            .max(Duration::from_millis(1));
        let half = cap / 2;
        half + Duration::from_nanos(random % (half.as_nanos().max(1) as u64))
    }
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
            transport: Transport::Tcp,
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
            retry_first_connect: false,
            max_pending: 1000,
            max_incoming: 1000,
            max_packet_size: 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            manual_acks: false,
            bridge: false,
            fallbacks: Vec::new(),
            primary_check: Duration::from_secs(60),
            connector: None,
        }
    }

    /// The same, speaking `protocol`.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// The same, over TLS with the caller's own rustls configuration
    /// (trust anchors, client certificate, versions, suites, a custom
    /// verifier…; see [`TlsOptions::config`]). Other TLS settings already
    /// made are kept but unused, except the server name. Build it with
    /// the *ring* provider, or any: [`crate::rustls`] is the version this
    /// crate uses.
    pub fn tls_config(mut self, config: Arc<ClientConfig>) -> Self {
        let mut tls = self.tls.take().unwrap_or_default();
        tls.config = Some(config);
        self.tls = Some(tls);
        self
    }

    /// The same, with [`ConnectOptions::retry_first_connect`] set to `retry`.
    pub fn retry_first_connect(mut self, retry: bool) -> Self {
        self.retry_first_connect = retry;
        self
    }

    /// Options from a connection URL, otherwise as [`ConnectOptions::new`]:
    ///
    /// | URL | transport | default port |
    /// |-----|-----------|--------------|
    /// | `mqtt://host[:port]` (also `tcp://`) | TCP | 1883 |
    /// | `mqtts://host[:port]` (also `ssl://`, `tls://`) | TLS | 8883 |
    /// | `ws://host[:port][/path]` | WebSocket, path default `/mqtt` | 80 |
    /// | `wss://host[:port][/path]` | WebSocket over TLS | 443 |
    /// | `quic://host[:port]` | QUIC | 14567 |
    /// | `unix:///path/to/socket` | Unix socket | — |
    ///
    /// A user name and password may come before the host
    /// (`mqtt://user:pass@host`), percent-encoded where they hold `:`,
    /// `@` or `/`; an IPv6 address is written in brackets
    /// (`mqtt://[::1]:1883`). TLS schemes trust the system's roots; change
    /// [`ConnectOptions::tls`] afterwards for more. Only WebSocket URLs
    /// have a path (or query); a fragment is never allowed.
    pub fn from_url(url: &str, client_id: impl Into<String>) -> Result<Self, ClientError> {
        let bad = |why: &str| ClientError::Invalid(format!("URL {url:?}: {why}"));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("no scheme (mqtt://, mqtts://, ws://, wss://, quic://, unix://)"))?;
        let scheme = scheme.to_ascii_lowercase();
        if rest.contains('#') {
            return Err(bad("a fragment (#) has no meaning here"));
        }
        if scheme == "unix" {
            // unix:///path: an empty authority, then the absolute path.
            if !rest.starts_with('/') {
                return Err(bad("write unix:///absolute/path/to/socket"));
            }
            if rest.contains('?') {
                return Err(bad("a unix URL has no query"));
            }
            let path = percent_decode(rest).map_err(|e| bad(&e))?;
            let path = String::from_utf8(path).map_err(|_| bad("the path is not UTF-8"))?;
            let mut o = Self::new("localhost", 0, client_id);
            o.transport = Transport::Unix {
                path: PathBuf::from(path),
            };
            return Ok(o);
        }
        let (default_port, tls, transport) = match scheme.as_str() {
            "mqtt" | "tcp" => (1883, false, Transport::Tcp),
            "mqtts" | "ssl" | "tls" => (8883, true, Transport::Tcp),
            "ws" => (
                80,
                false,
                Transport::WebSocket {
                    path: String::new(),
                },
            ),
            "wss" => (
                443,
                true,
                Transport::WebSocket {
                    path: String::new(),
                },
            ),
            "quic" => (14567, false, Transport::Quic),
            other => {
                return Err(bad(&format!(
                    "unknown scheme {other}: use mqtt, mqtts, ws, wss, quic or unix"
                )))
            }
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address needs its closing ]"))?;
            match after {
                "" => (host, None),
                p => (
                    host,
                    Some(
                        p.strip_prefix(':')
                            .ok_or_else(|| bad("a port follows the address after :"))?,
                    ),
                ),
            }
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => default_port,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(bad(&format!("port {p:?} is not 1 to 65535"))),
            },
        };
        let mut o = Self::new(host, port, client_id);
        if let Some(userinfo) = userinfo {
            let (user, pass) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            let user = percent_decode(user).map_err(|e| bad(&e))?;
            o.username =
                Some(String::from_utf8(user).map_err(|_| bad("the user name is not UTF-8"))?);
            o.password = pass
                .map(percent_decode)
                .transpose()
                .map_err(|e| bad(&e))?
                .map(Bytes::from);
        }
        o.transport = match transport {
            Transport::WebSocket { .. } => Transport::WebSocket {
                path: match path {
                    "" => "/mqtt".to_string(),
                    p if p.starts_with('?') => format!("/mqtt{p}"),
                    p => p.to_string(),
                },
            },
            other if path.is_empty() || path == "/" => other,
            _ => {
                return Err(bad(&format!(
                    "only ws:// and wss:// URLs have a path, not {path:?}"
                )))
            }
        };
        if tls {
            o.tls = Some(TlsOptions::default());
        }
        Ok(o)
    }
}

/// `%XX` escapes decoded (RFC 3986 2.1).
fn percent_decode(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b != b'%' {
            out.push(b);
            continue;
        }
        let hex = |c: Option<u8>| match c {
            Some(c @ b'0'..=b'9') => Some(c - b'0'),
            Some(c @ b'a'..=b'f') => Some(c - b'a' + 10),
            Some(c @ b'A'..=b'F') => Some(c - b'A' + 10),
            _ => None,
        };
        match (hex(bytes.next()), hex(bytes.next())) {
            (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
            _ => return Err("a % not followed by two hex digits".into()),
        }
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn url(u: &str) -> ConnectOptions {
        ConnectOptions::from_url(u, "id").unwrap_or_else(|e| panic!("{u}: {e}"))
    }

    fn bad(u: &str) -> String {
        match ConnectOptions::from_url(u, "id") {
            Err(ClientError::Invalid(why)) => why,
            Err(e) => panic!("{u}: not Invalid but {e:?}"),
            Ok(o) => panic!("{u}: accepted as {o:?}"),
        }
    }

    #[test]
    fn schemes_give_their_transport_tls_and_default_port() {
        for (u, port, tls, transport) in [
            ("mqtt://broker", 1883, false, Transport::Tcp),
            ("tcp://broker", 1883, false, Transport::Tcp),
            ("MQTT://broker", 1883, false, Transport::Tcp),
            ("mqtts://broker", 8883, true, Transport::Tcp),
            ("ssl://broker", 8883, true, Transport::Tcp),
            (
                "ws://broker",
                80,
                false,
                Transport::WebSocket {
                    path: "/mqtt".into(),
                },
            ),
            (
                "wss://broker",
                443,
                true,
                Transport::WebSocket {
                    path: "/mqtt".into(),
                },
            ),
            ("quic://broker", 14567, false, Transport::Quic),
        ] {
            let o = url(u);
            assert_eq!(o.host, "broker", "{u}");
            assert_eq!(o.port, port, "{u}");
            assert_eq!(o.tls.is_some(), tls, "{u}");
            assert_eq!(o.transport, transport, "{u}");
            assert_eq!(o.client_id, "id");
            assert!(o.username.is_none() && o.password.is_none());
        }
    }

    #[test]
    fn ports_paths_addresses_and_credentials() {
        let o = url("mqtt://10.0.0.1:1884/");
        assert_eq!((o.host.as_str(), o.port), ("10.0.0.1", 1884));
        let o = url("mqtts://[::1]:8884");
        assert_eq!((o.host.as_str(), o.port), ("::1", 8884));
        let o = url("ws://[fe80::1]");
        assert_eq!((o.host.as_str(), o.port), ("fe80::1", 80));
        let o = url("wss://example.com:8443/ws/mqtt?token=x");
        assert_eq!(o.port, 8443);
        assert_eq!(
            o.transport,
            Transport::WebSocket {
                path: "/ws/mqtt?token=x".into()
            }
        );
        let o = url("ws://h?token=x");
        assert_eq!(
            o.transport,
            Transport::WebSocket {
                path: "/mqtt?token=x".into()
            }
        );
        let o = url("mqtt://alice:s%3Acret%40@broker:1999");
        assert_eq!(o.username.as_deref(), Some("alice"));
        assert_eq!(o.password.as_deref(), Some(&b"s:cret@"[..]));
        assert_eq!((o.host.as_str(), o.port), ("broker", 1999));
        // An unescaped @ in the password: the last @ ends the user info.
        let o = url("mqtt://bob:p@ss@broker");
        assert_eq!(o.password.as_deref(), Some(&b"p@ss"[..]));
        assert_eq!(o.host, "broker");
        let o = url("mqtt://carol@broker");
        assert_eq!(o.username.as_deref(), Some("carol"));
        assert!(o.password.is_none());
        let o = url("mqtt://:@broker");
        assert_eq!(o.username.as_deref(), Some(""));
        assert_eq!(o.password.as_deref(), Some(&b""[..]));
        let o = url("unix:///run/petrel/mqtt%20sock");
        assert_eq!(
            o.transport,
            Transport::Unix {
                path: PathBuf::from("/run/petrel/mqtt sock")
            }
        );
        assert!(o.tls.is_none());
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        assert!(bad("broker:1883").contains("no scheme"));
        assert!(bad("http://broker").contains("unknown scheme http"));
        assert!(bad("mqtt://").contains("no host"));
        assert!(bad("mqtt://:1883").contains("no host"));
        assert!(bad("mqtt://user@").contains("no host"));
        assert!(bad("mqtt://broker:").contains("port"));
        assert!(bad("mqtt://broker:0").contains("port"));
        assert!(bad("mqtt://broker:65536").contains("port"));
        assert!(bad("mqtt://broker:x1").contains("port"));
        assert!(bad("mqtt://broker:1:2").contains("port"));
        assert!(bad("mqtt://::1").contains("no host"));
        assert!(bad("mqtt://[::1").contains("]"));
        assert!(bad("mqtt://[::1]1883").contains("port"));
        assert!(bad("mqtt://broker/topic").contains("only ws:// and wss://"));
        assert!(bad("quic://broker/x").contains("only ws:// and wss://"));
        assert!(bad("mqtts://broker?x").contains("only ws:// and wss://"));
        assert!(bad("ws://broker/mqtt#frag").contains("fragment"));
        assert!(bad("unix://relative/sock").contains("unix:///"));
        assert!(bad("unix:///sock?x").contains("query"));
        assert!(bad("mqtt://us%2er:p%zz@broker").contains("hex"));
        assert!(bad("mqtt://%ff@broker").contains("UTF-8"));
    }

    #[test]
    fn tls_config_and_retry_setters() {
        let config = ClientConfig::builder_with_provider(Arc::new(
            #[allow(deprecated)]
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let config = Arc::new(config);
        let mut o = ConnectOptions::new("h", 1, "id");
        o.tls = Some(TlsOptions {
            server_name: Some("named".into()),
            ..TlsOptions::default()
        });
        let o = o.tls_config(config.clone()).retry_first_connect(true);
        let tls = o.tls.as_ref().unwrap();
        assert!(Arc::ptr_eq(tls.config.as_ref().unwrap(), &config));
        assert_eq!(tls.server_name.as_deref(), Some("named"));
        assert!(o.retry_first_connect);
        assert!(!ConnectOptions::new("h", 1, "id").retry_first_connect);
    }
}
