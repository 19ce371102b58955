//! The broker's configuration: what `petrel broker --config petrel.toml`
//! reads, with a default for every key.
//!
//! ```toml
//! # Every key is optional; these are the defaults.
//! log_level = "info"            # error, warn, info, debug, trace
//! log_format = "text"           # or "json": one object a line
//! log_file = "/var/log/petrel.log"  # append the log there instead of standard error
//! sys_interval = 10             # seconds between $SYS updates; 0 turns them off
//! persistence = "petrel.db"     # keep sessions and retained messages across restarts (default: none)
//! data_dir = "/var/lib/petrel"   # durable store: sessions, queues, retained messages (default: none)
//! sync_interval = 1              # seconds between syncs of its journal to disk
//! durability = "process"         # or "fsync" (acknowledge only what is synced), or "none" (memory only)
//! max_store_bytes = 1073741824   # what the store may hold; beyond it QoS 1/2 messages to store are refused (0: no limit)
//!
//! # Who may connect (Mosquitto's names). With none of these, clients are
//! # anonymous, which is allowed only while every listener is on loopback.
//! allow_anonymous = false       # default: true only with no authentication and loopback listeners
//! password_file = "passwd"      # Mosquitto's format (mosquitto_passwd, petrel passwd)
//! acl_file = "acl"              # Mosquitto's format
//! session_ownership = true      # default: on whenever authentication is on
//!
//! [scram]                       # 5.0 enhanced authentication
//! file = "scram"                # petrel passwd --scram
//! mechanisms = ["SCRAM-SHA-256", "SCRAM-SHA-512"]
//!
//! [jwt]                         # a password that is a token
//! secret = "..."                # HMAC; or public_key = "key.pem", jwks = "keys.json"
//! audience = "petrel"
//! issuer = "https://auth.example"
//!
//! [certificate]                 # a client certificate's identity as user name
//! username = "cn"               # cn, subject, dns, email
//!
//! [http]                        # metrics, admin API, dashboard (petrel-admin); off unless present
//! bind = "127.0.0.1:8080"
//! token_hash = "sha256:..."     # `petrel token`; without it a token is written to <data_dir>/http.token
//! allow_unauthenticated = false # true only on a loopback bind
//! public_metrics = false        # /metrics without the token
//!
//! [[listener]]
//! bind = "127.0.0.1:1883"       # several [[listener]] tables, several sockets
//! transport = "tcp"             # tcp, tls, ws, wss, quic, unix (with path = "...")
//! # TLS (tls, wss, quic): certfile, keyfile, cafile, require_certificate,
//! # use_identity_as_username. Any: max_connections, protocols, auth_methods,
//! # proxy_protocol. WebSocket: websocket_path (default "/mqtt").
//!
//! [limits]
//! max_connections = 100000      # connections beyond this are closed at once
//! max_packet_size = 268435455   # bytes (256 MiB less one); told to 5.0 clients as Maximum Packet Size
//! max_partial_bytes = 536870912 # all connections' partly received large packets together (512 MiB); past it new ones wait
//! connect_timeout = 10          # seconds a new connection has to send CONNECT
//! max_keepalive = 65535         # seconds; longer (or 0) is answered with Server Keep Alive (5.0)
//! receive_maximum = 128         # unacknowledged QoS 1/2 PUBLISHes accepted per client (5.0; 3.1.x: QoS 2 awaiting PUBREL)
//! max_inflight = 128            # our QoS 1/2 PUBLISHes in flight per client
//! topic_alias_maximum = 16      # 5.0 topic aliases accepted per client
//! max_queued_messages = 1000    # per session, messages waiting to be sent (online or offline)
//! max_queued_bytes = 16777216   # per session, payload bytes waiting to be sent
//! queue_qos0_offline = false    # whether QoS 0 messages wait for an offline persistent session
//! max_session_expiry = 604800   # seconds a disconnected session is kept at most (also 3.1.1 persistent)
//! max_subscriptions_per_session = 1000000
//! max_subscription_bytes_per_session = 268435456  # subscriptions' estimated cost per session (256 B a level, 128 B each, the filter twice)
//! max_subscription_bytes = 1073741824              # ... over every session
//! max_retained_messages = 1000000
//! max_qos = 2                   # highest QoS granted and accepted
//! retain_available = true       # false: clients may not retain (a retained PUBLISH or will is refused, 0x9A)
//! wildcard_subscriptions = true # false: filters with + or # are refused (0xA2)
//! shared_subscriptions = true   # false: $share/ filters are refused (0x9E)
//! max_client_id_length = 256    # longer client identifiers are refused (0x85)
//! max_topic_levels = 200        # deeper topic names and filters are refused
//! max_sessions = 1000000        # sessions (connected or not); past it the one offline longest ends
//! max_queued_bytes_total = 1073741824   # all sessions' queues together
//! max_retained_bytes = 268435456        # all retained messages together
//! max_retained_backlog = 2000000        # retained messages taken for new subscriptions (64 at a time each) and not yet sent, all connections
//! hibernate_after = 5           # seconds of silence before an idle connection hibernates; 0 = never
//! tcp_keepalive = 120           # seconds of silence before TCP keepalive probes a peer; 0 = off
//! packet_timeout = 30           # seconds a partly received packet may go without a byte more
//! max_connections_per_address = 10000  # open connections from one address (0: no cap)
//! max_pending_per_address = 100 # connections from one address that have not finished CONNECT
//! max_pending_connections = 10000      # ... from every address together
//! connection_rate = 100         # new connections a second from one address, after a burst of
//! connection_burst = 1000       # ... this many (0 rate: none)
//! limit_loopback = false        # hold loopback addresses to the per-address limits too
//! max_publish_rate = 0          # PUBLISHes a second per client (0: none); past it the socket is not read
//! max_publish_bytes_rate = 0    # payload bytes a second per client, likewise
//! login_free_failures = 5       # failed logins of one user from one address before its attempts are spaced out
//! login_address_free_failures = 100   # failed logins from one address, any user, before all are spaced out
//! login_delay = 1               # seconds between them at first, doubling with each failure
//! login_delay_max = 30          # seconds between them at most
//!
//! [cluster]                     # this broker as one node of a cluster (petrel-cluster); off unless present
//! node_id = 1
//! bind = "10.0.0.1:7883"        # node-to-node traffic
//! peers = ["1@10.0.0.1:7883", "2@10.0.0.2:7883", "3@10.0.0.3:7883"]
//! secret_file = "/etc/petrel/cluster.key"   # or secret = "..."; required unless bind is loopback
//! peer_queue = 100000           # messages queued for one peer, and as many unanswered; past it QoS 1/2 is refused
//! heartbeat_ms = 200            # the leader's heartbeats
//! election_timeout_ms = 1000    # silence before a node stands for leader (randomised up to twice this)
//! route_timeout = 10            # seconds a new route may wait for the cluster to agree
//! forward_timeout = 5           # seconds a forwarded message waits for its node before it is given up on
//! max_frame_bytes = 314572800   # largest node-to-node frame
//! snapshot_logs = 5000          # Raft log entries between snapshots of the routes
//! max_pending_links = 64        # connections to bind still proving the secret; past it closed at once
//! shared_local = false          # a shared group's message goes to a member on the publisher's node when it has one
//! ```
//!
//! Methods of authentication are tried in the order they appear in the
//! file (`password_file`, `[jwt]`, `[certificate]`).
//!
//! Unknown keys are errors, so a misspelt limit never silently keeps its
//! default.

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod bridge;
mod cluster;
pub use bridge::{split_address, BridgeConfig, Direction, TopicRule};
pub use cluster::ClusterConfig;

/// Everything the broker can be told.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// The sockets to listen on. Default: one, 127.0.0.1:1883.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Limits and queue sizes.
    pub limits: Limits,
    /// Seconds between `$SYS` updates; 0 turns `$SYS` off. Default 10.
    pub sys_interval: u64,
    /// Log level (`error`, `warn`, `info`, `debug`, `trace`), for the binary
    /// that sets up logging. Default `info`.
    pub log_level: LogLevel,
    /// How log lines are written: `text` (default) or `json` (one object
    /// a line), for the binary that sets up logging.
    pub log_format: LogFormat,
    /// File the binary appends its log to, instead of standard error.
    /// Default none.
    pub log_file: Option<PathBuf>,
    /// File where sessions and retained messages are kept across a
    /// graceful restart (written at shutdown, read at start), without a
    /// durable store. Default none. With a durable store, a snapshot found
    /// there (an older Petrel's) is imported into the store if the store
    /// holds no session and no retained message yet, then renamed to
    /// `<file>.imported`.
    pub persistence: Option<PathBuf>,
    /// Directory of the durable store (locked while the broker runs):
    /// sessions that outlive their connections, their messages and
    /// retained messages are written there before they are acknowledged,
    /// so killing the broker loses nothing acknowledged. Default none here
    /// (memory only); the `petrel` binary uses the per-user data directory
    /// unless told `--memory`.
    pub data_dir: Option<PathBuf>,
    /// Seconds between syncs of the durable store's journal to disk (what
    /// a power loss, not a killed process, can take) with `process`
    /// durability; 0 leaves it to the operating system. Default 1.
    pub sync_interval: u64,
    /// When a write to the durable store is done: `process` (default) or
    /// `fsync`; `none` keeps no store even with a `data_dir`.
    pub durability: Durability,
    /// Bytes the durable store may hold (its live entries, as encoded).
    /// At the limit a QoS 1/2 message that would have to be stored (a
    /// stored session would get it) is refused as a whole: a 5.0
    /// publisher gets PUBACK or PUBREC 0x97 Quota exceeded, a 3.1.1 one
    /// (whose acknowledgement can't refuse) none, and its connection
    /// closes, so that its client sends it again later; nothing already
    /// stored is dropped. 0: no limit. Default 1 GiB.
    pub max_store_bytes: u64,
    /// Whether clients without credentials may connect. Default: yes only
    /// when no authentication is configured and every listener is on a
    /// loopback address; a configuration with a listener elsewhere and no
    /// authentication must say `allow_anonymous = true` to start.
    pub allow_anonymous: Option<bool>,
    /// Mosquitto's password file (`mosquitto_passwd`, `petrel passwd`).
    pub password_file: Option<PathBuf>,
    /// Mosquitto's ACL file.
    pub acl_file: Option<PathBuf>,
    /// 5.0 enhanced authentication with SCRAM.
    pub scram: Option<ScramConfig>,
    /// Passwords that are JSON Web Tokens.
    pub jwt: Option<JwtConfig>,
    /// A verified client certificate's identity as the user name.
    pub certificate: Option<CertificateConfig>,
    /// Whether a session belongs to the user that created it, so no other
    /// user can resume or take it over. Default: on whenever authentication
    /// is on.
    pub session_ownership: Option<bool>,
    /// The order of the authentication methods: as they appear in the
    /// configuration file; built in code, password file, then tokens, then
    /// certificates.
    #[serde(skip)]
    pub auth_order: Vec<AuthSource>,
    /// The HTTP listener for metrics, the admin API and the dashboard
    /// (`petrel-admin`); none unless configured.
    pub http: Option<HttpConfig>,
    /// Bridges to other brokers (`[[bridge]]`, run by `petrel-bridge`).
    #[serde(rename = "bridge")]
    pub bridges: Vec<BridgeConfig>,
    /// This broker as a node of a cluster (`[cluster]`, run by
    /// `petrel-cluster`).
    pub cluster: Option<ClusterConfig>,
}

/// `[http]`: where metrics, the admin API and the dashboard are served,
/// and who may use them.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address and port. Default `127.0.0.1:8080`.
    pub bind: SocketAddr,
    /// The SHA-256 of the bearer token requests must carry, as
    /// `sha256:<64 hex digits>` (`petrel token` makes a token and its
    /// hash). Without it, the token is one the broker makes at start and
    /// writes to `http.token` in the data directory (readable by its user
    /// only), where `petrel ctl` finds it.
    pub token_hash: Option<String>,
    /// Serve requests without a token. Allowed only on a loopback address.
    pub allow_unauthenticated: bool,
    /// Serve `/metrics` without a token (for a Prometheus that can't send
    /// one); the admin API still needs it.
    pub public_metrics: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token_hash: None,
            allow_unauthenticated: false,
            public_metrics: false,
        }
    }
}

impl HttpConfig {
    /// The token's hash as bytes, if it is well formed.
    pub fn token_digest(&self) -> Option<[u8; 32]> {
        let hex = self.token_hash.as_deref()?.strip_prefix("sha256:")?;
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(out)
    }
}

/// A method of authentication that reads the CONNECT's credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthSource {
    /// `password_file`.
    PasswordFile,
    /// `[jwt]`.
    Jwt,
    /// `[certificate]`.
    Certificate,
}

/// `[scram]`: 5.0 enhanced authentication by SCRAM (RFC 5802).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScramConfig {
    /// The credentials file (`petrel passwd --scram`).
    pub file: PathBuf,
    /// The mechanisms offered. Default both, `SCRAM-SHA-256` and
    /// `SCRAM-SHA-512`.
    #[serde(default = "ScramConfig::all_mechanisms")]
    pub mechanisms: Vec<String>,
}

impl ScramConfig {
    fn all_mechanisms() -> Vec<String> {
        vec!["SCRAM-SHA-256".into(), "SCRAM-SHA-512".into()]
    }
}

/// `[jwt]`: a password that is a JSON Web Token.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// HMAC secret (HS256, HS384, HS512).
    pub secret: Option<String>,
    /// An RSA, EC or Ed25519 public key in PEM.
    pub public_key: Option<PathBuf>,
    /// A JWK set file.
    pub jwks: Option<PathBuf>,
    /// The audience a token must name, if any.
    pub audience: Option<String>,
    /// The issuer a token must name, if any.
    pub issuer: Option<String>,
    /// A claim that names the user: a client's user name must match it.
    pub username_claim: Option<String>,
    /// The claim that may carry the client's permissions. Default `acl`.
    pub acl_claim: String,
    /// Seconds of clock skew allowed for `exp` and `nbf`. Default 0.
    pub leeway: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            secret: None,
            public_key: None,
            jwks: None,
            audience: None,
            issuer: None,
            username_claim: None,
            acl_claim: "acl".into(),
            leeway: 0,
        }
    }
}

/// `[certificate]`: a verified client certificate names its holder.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CertificateConfig {
    /// Which field is the user name. Default the Common Name.
    pub username: CertificateField,
}

/// A field of a client certificate.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CertificateField {
    /// The subject's Common Name.
    #[default]
    Cn,
    /// The whole subject (RFC 4514).
    Subject,
    /// The first DNS name of the Subject Alternative Name.
    Dns,
    /// The first e-mail address of the Subject Alternative Name.
    Email,
}

/// One listening socket: its transport, where it listens, and what it
/// allows.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// How clients reach it. Default `tcp`.
    pub transport: TransportKind,
    /// Address and port, e.g. `"0.0.0.0:1883"` or `"[::1]:1883"` (every
    /// transport but `unix`).
    pub bind: Option<SocketAddr>,
    /// The socket file of a `unix` listener.
    pub path: Option<PathBuf>,
    /// The socket file's permissions, in octal (`"0660"`). Default: the
    /// process's umask decides.
    pub mode: Option<String>,
    /// Connections held on this listener at once (within
    /// `limits.max_connections`). Default: no limit of its own.
    pub max_connections: Option<usize>,
    /// Protocol versions accepted here (`"3.1"`, `"3.1.1"`, `"5.0"`);
    /// others are refused (0x84 / return code 1). Default: all.
    pub protocols: Option<Vec<ProtocolVersion>>,
    /// Methods of authentication allowed here, by name: `password_file`,
    /// `jwt`, `certificate`, a 5.0 method (`SCRAM-SHA-256`), an
    /// application's authenticator, and `anonymous` (still only where
    /// anonymous access is allowed at all). Default: all.
    pub auth_methods: Option<Vec<String>>,
    /// Take the client's address from a PROXY protocol v1 or v2 header,
    /// which every connection must then send first (from a load balancer).
    pub proxy_protocol: bool,
    /// TLS (`tls`, `wss`, `quic`): the certificate chain, PEM.
    pub certfile: Option<PathBuf>,
    /// TLS: the private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub keyfile: Option<PathBuf>,
    /// TLS: the certificate authorities that client certificates are
    /// checked against, PEM. Without it, clients are not asked for one.
    pub cafile: Option<PathBuf>,
    /// TLS: refuse a client without a certificate signed by `cafile`.
    /// Default false: a certificate is checked if sent.
    pub require_certificate: bool,
    /// TLS: the client certificate's identity is the user name, and the
    /// certificate is how clients authenticate here (Mosquitto's option;
    /// `[certificate]` says which field, the Common Name by default).
    pub use_identity_as_username: bool,
    /// WebSocket (`ws`, `wss`): the HTTP path clients connect to. Default
    /// `/mqtt`.
    pub websocket_path: Option<String>,
}

impl ListenerConfig {
    /// A plain TCP listener on `bind`.
    pub fn tcp(bind: SocketAddr) -> Self {
        Self {
            bind: Some(bind),
            ..Self::default()
        }
    }

    /// Where it listens, for logs and errors.
    pub fn describe(&self) -> String {
        match (&self.bind, &self.path) {
            (Some(a), _) => format!("{} {a}", self.transport.name()),
            (None, Some(p)) => format!("{} {}", self.transport.name(), p.display()),
            (None, None) => self.transport.name().to_string(),
        }
    }

    /// Whether only this machine can reach it.
    pub fn is_local(&self) -> bool {
        match self.transport {
            TransportKind::Unix => true,
            _ => self.bind.is_some_and(|a| a.ip().is_loopback()),
        }
    }

    /// The WebSocket path (`websocket_path`, default `/mqtt`).
    pub fn ws_path(&self) -> &str {
        self.websocket_path.as_deref().unwrap_or("/mqtt")
    }

    /// The Unix socket file's mode, parsed.
    pub fn unix_mode(&self) -> Option<u32> {
        self.mode
            .as_deref()
            .and_then(|m| u32::from_str_radix(m.trim_start_matches("0o"), 8).ok())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |reason: String| {
            Err(ConfigError::Invalid {
                key: "listener",
                reason: format!("{}: {reason}", self.describe()),
            })
        };
        let t = self.transport;
        match (t, &self.bind, &self.path) {
            (TransportKind::Unix, None, Some(_)) => {}
            (TransportKind::Unix, _, _) => {
                return invalid("a unix listener needs `path` (and no `bind`)".into())
            }
            (_, Some(_), None) => {}
            _ => return invalid("needs `bind` (and no `path`)".into()),
        }
        if self.mode.is_some()
            && (t != TransportKind::Unix || self.unix_mode().is_none_or(|m| m > 0o7777))
        {
            return invalid(
                "`mode` is an octal file mode such as \"0660\", for unix listeners".into(),
            );
        }
        let tls = t.is_tls();
        if tls && (self.certfile.is_none() || self.keyfile.is_none()) {
            return invalid("needs `certfile` and `keyfile`".into());
        }
        let tls_keys = self.certfile.is_some()
            || self.keyfile.is_some()
            || self.cafile.is_some()
            || self.require_certificate
            || self.use_identity_as_username;
        if !tls && tls_keys {
            return invalid("TLS keys are for tls, wss and quic listeners".into());
        }
        if (self.require_certificate || self.use_identity_as_username) && self.cafile.is_none() {
            return invalid("client certificates are checked against `cafile`: name it".into());
        }
        if self.websocket_path.is_some() && !t.is_websocket() {
            return invalid("`websocket_path` is for ws and wss listeners".into());
        }
        if !self.ws_path().starts_with('/') {
            return invalid("`websocket_path` must start with /".into());
        }
        if self.proxy_protocol && t == TransportKind::Quic {
            return invalid("PROXY protocol headers come over TCP, not QUIC".into());
        }
        if self.max_connections == Some(0) {
            return invalid("`max_connections` must be at least 1".into());
        }
        if self.protocols.as_ref().is_some_and(Vec::is_empty) {
            return invalid("`protocols` must name at least one version".into());
        }
        if self.auth_methods.as_ref().is_some_and(Vec::is_empty) {
            return invalid("`auth_methods` must name at least one method".into());
        }
        Ok(())
    }
}

/// How clients reach a listener.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// MQTT over TCP.
    #[default]
    Tcp,
    /// MQTT over TLS over TCP.
    Tls,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
    /// MQTT over one QUIC stream.
    Quic,
    /// MQTT over a Unix-domain stream socket.
    Unix,
}

impl TransportKind {
    /// Its name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Tls => "tls",
            Self::Ws => "ws",
            Self::Wss => "wss",
            Self::Quic => "quic",
            Self::Unix => "unix",
        }
    }

    /// Whether it runs over TLS (and needs a certificate).
    pub fn is_tls(self) -> bool {
        matches!(self, Self::Tls | Self::Wss | Self::Quic)
    }

    /// Whether it carries MQTT in WebSocket frames.
    pub fn is_websocket(self) -> bool {
        matches!(self, Self::Ws | Self::Wss)
    }
}

/// A protocol version, as a listener's `protocols` names it.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum ProtocolVersion {
    /// MQTT 3.1.
    #[serde(rename = "3.1")]
    V3_1,
    /// MQTT 3.1.1.
    #[serde(rename = "3.1.1")]
    V3_1_1,
    /// MQTT 5.0.
    #[serde(rename = "5.0", alias = "5")]
    V5,
}

impl ProtocolVersion {
    /// The codec's name for it.
    pub fn protocol(self) -> petrel_codec::Protocol {
        match self {
            Self::V3_1 => petrel_codec::Protocol::V3_1,
            Self::V3_1_1 => petrel_codec::Protocol::V3_1_1,
            Self::V5 => petrel_codec::Protocol::V5,
        }
    }
}

/// When a write to the durable store counts as done (and what it
/// acknowledges may be acknowledged).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Once it reached the operating system: killing the broker loses
    /// nothing acknowledged; the journal is synced every `sync_interval`,
    /// which bounds what a power loss can take.
    #[default]
    Process,
    /// Once it is synced to disk; writes from every connection share one
    /// sync (group commit), so it costs latency, not a sync per message.
    Fsync,
    /// Nothing is stored: state lives in memory only, and a stop loses it
    /// (`data_dir` is not used).
    None,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text for people (colours only on a terminal).
    #[default]
    Text,
    /// One JSON object a line, for log collectors.
    Json,
}

/// Log verbosity.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Connections, disconnections and the above.
    #[default]
    Info,
    /// Protocol detail.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The level's name, as a tracing filter takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

/// Limits and queue sizes. Every one is finite and has a default.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Connections held at once; more are closed as they arrive. Default 100,000.
    pub max_connections: usize,
    /// Largest packet accepted, in bytes, told to 5.0 clients as Maximum
    /// Packet Size. Default 256 MiB (a camera image or a firmware chunk
    /// goes through; `max_partial_bytes` bounds what many of them cost).
    pub max_packet_size: u32,
    /// Seconds a new connection has to send CONNECT. Default 10.
    pub connect_timeout: u64,
    /// Longest keep alive allowed, in seconds. A 5.0 client asking for more,
    /// or for none, is told this as Server Keep Alive (as Mosquitto's
    /// `max_keepalive`). Default 65,535.
    pub max_keepalive: u16,
    /// Unacknowledged QoS 1/2 PUBLISHes accepted from one client (5.0
    /// Receive Maximum; past it, DISCONNECT 0x93). A 3.1.x client can't be
    /// told, but its QoS 2 messages awaiting PUBREL are held to it too, and
    /// past it its connection closes: set it at least as large as your
    /// 3.1.x clients' in-flight windows (Mosquitto's and paho's default to
    /// 20). Default 128.
    pub receive_maximum: u16,
    /// QoS 1/2 PUBLISHes the broker keeps in flight to one client (also
    /// bounded by the client's Receive Maximum). Default 128.
    pub max_inflight: u16,
    /// Topic aliases accepted from a 5.0 client. Default 16.
    pub topic_alias_maximum: u16,
    /// Messages waiting for one session, connected or not. Past it, new
    /// messages for that session are dropped and counted. Default 1,000.
    pub max_queued_messages: usize,
    /// Payload bytes waiting for one session. Default 16 MiB.
    pub max_queued_bytes: usize,
    /// Whether QoS 0 messages are queued for a disconnected persistent
    /// session (Mosquitto's `queue_qos0_messages`). Default false.
    pub queue_qos0_offline: bool,
    /// Most seconds a disconnected session is kept, whatever its client
    /// asked; also what a 3.1.x persistent session (Clean Session 0) gets.
    /// Default 7 days.
    pub max_session_expiry: u32,
    /// Subscriptions one session may hold (a gateway may hold a hundred
    /// thousand). Default 1,000,000.
    pub max_subscriptions_per_session: usize,
    /// What one session's subscriptions may cost, in bytes, each charged
    /// an estimate of what it takes with no prefix shared: 128 bytes, its
    /// filter twice, and 256 bytes a level (a node of the subscription
    /// trie). Past it a new subscription is refused (0x97; 3.1.1 0x80).
    /// Default 256 MiB (a gateway's 100,000 five-level filters cost about
    /// 150 MB).
    pub max_subscription_bytes_per_session: usize,
    /// What all sessions' subscriptions may cost together, charged alike:
    /// a storm of subscriptions stays bounded. Default 1 GiB.
    pub max_subscription_bytes: usize,
    /// Retained messages kept in all; a new retained topic past this is not
    /// stored (the message is still delivered). Default 1,000,000.
    pub max_retained_messages: usize,
    /// Highest QoS the broker grants and accepts (0, 1 or 2). Default 2.
    pub max_qos: u8,
    /// Whether clients may publish retained messages. Without, 5.0
    /// clients are told Retain Available 0; a CONNECT with a retained will
    /// is refused (0x9A, [MQTT-3.2.2-13]) and a PUBLISH with RETAIN 1
    /// closes the connection (DISCONNECT 0x9A in 5.0), as Mosquitto's
    /// `retain_available false` does. What the operator's own parts
    /// retain (bridges, the admin API, `$SYS`) and what was retained
    /// before are still kept and sent. Default true.
    pub retain_available: bool,
    /// Whether filters may hold `+` and `#`. Without, 5.0 clients are told
    /// Wildcard Subscription Available 0 and such a filter is refused in
    /// the SUBACK (0xA2; 3.1.1 0x80, [MQTT-3.8.3-2]); a bridge's local
    /// side and subscriptions kept from before are not. Default true.
    pub wildcard_subscriptions: bool,
    /// Whether `$share/` filters are shared subscriptions. Without, 5.0
    /// clients are told Shared Subscription Available 0 and such a filter
    /// is refused in the SUBACK (0x9E; 3.1.1 0x80); subscriptions kept
    /// from before are not. Default true.
    pub shared_subscriptions: bool,
    /// Longest client identifier accepted, in bytes: an id is a key the
    /// broker keeps (and stores) for each session, not a payload. Default
    /// 256.
    pub max_client_id_length: usize,
    /// Most levels in a topic name or filter (as Mosquitto's limit of 200):
    /// deeper ones are refused (5.0 reason 0x90 or 0x8F). Default 200.
    pub max_topic_levels: usize,
    /// Sessions held, connected or not. A CONNECT that would make a new one
    /// past this ends the session that has been offline longest (its
    /// waiting will is published; counted as `sessions_evicted`); only when
    /// every session is connected is it refused (5.0 0x97 Quota exceeded,
    /// 3.1.1 Server unavailable). Default 1,000,000.
    pub max_sessions: usize,
    /// Bytes waiting in all sessions' queues together; past it, messages
    /// for any session are dropped and counted. Default 1 GiB.
    pub max_queued_bytes_total: usize,
    /// Bytes of all retained messages together; a new retained message past
    /// it is not stored (still delivered). Default 256 MiB.
    pub max_retained_bytes: usize,
    /// Retained messages taken from the store for new subscriptions and not
    /// yet sent, over all connections. A new subscription's retained
    /// messages are taken 64 at a time as its connection sends them (a
    /// SUBSCRIBE walks nothing), so this bounds what is held, not what one
    /// subscription gets; if a batch finds it full, the rest of that walk is
    /// not sent (counted as dropped). Default 2,000,000.
    pub max_retained_backlog: usize,
    /// Seconds a connection with nothing in flight stays quiet before it
    /// hibernates: its task ends and it waits, folded to a few hundred
    /// bytes, for the peer, a message, a takeover or its keep-alive
    /// deadline (as EMQX hibernates idle connection processes). 0 keeps
    /// every connection awake. Default 5.
    pub hibernate_after: u64,
    /// Seconds a TCP connection may be silent before the kernel probes the
    /// peer (TCP keepalive, every 10 s, 3 times): a peer that vanished
    /// (powered off, unplugged) is found even by a client with MQTT keep
    /// alive 0. 0 turns it off. Default 120.
    pub tcp_keepalive: u64,
    /// Seconds a packet may stay partly received with no byte of it
    /// arriving: a peer that sends half a packet and stops is closed
    /// rather than holding its buffer forever (a slow upload that goes on
    /// arriving is not). Default 30.
    pub packet_timeout: u64,
    /// Bytes all connections together may hold in partly received packets
    /// larger than 64 KiB (each is counted at its full announced size from
    /// its header on). A connection whose large packet would pass it does
    /// not read on until others finish theirs: it waits, nothing is
    /// refused, and one at least always goes on. Default 512 MiB.
    pub max_partial_bytes: usize,
    /// Connections one source address may hold open (0: no cap). Default
    /// 10,000 (room for a NAT gateway's devices).
    pub max_connections_per_address: usize,
    /// Connections one address may hold that have not finished CONNECT
    /// (0: no cap). Default 100.
    pub max_pending_per_address: usize,
    /// Connections, over every address, that have not finished CONNECT
    /// (0: no cap): sockets that never speak MQTT can't fill
    /// `max_connections`. Default 10,000.
    pub max_pending_connections: usize,
    /// New connections a second one address may open, after a burst of
    /// `connection_burst` (0: no rate). Default 100.
    pub connection_rate: u32,
    /// The burst of `connection_rate`. Default 1,000.
    pub connection_burst: u32,
    /// Hold loopback addresses to the per-address limits too (by default
    /// they are exempt: this machine's processes, bridges and benchmarks).
    /// Listeners behind a PROXY header are never held to them (every
    /// connection comes from the load balancer). Default false.
    pub limit_loopback: bool,
    /// PUBLISH packets a second one client may send, after a burst of as
    /// many (0: no limit). Past it the broker stops reading the client's
    /// socket until it may go on: nothing is dropped, TCP slows the client
    /// down. Default 0.
    pub max_publish_rate: u32,
    /// Payload bytes a second one client may publish, likewise (0: no
    /// limit). Default 0.
    pub max_publish_bytes_rate: u64,
    /// Failed logins one user name may have from one address before its
    /// attempts from there are spaced out (its own success clears them).
    /// Default 5.
    pub login_free_failures: u32,
    /// Failed logins one address may have, whatever the user names, before
    /// all its attempts are spaced out (successes don't clear them; they
    /// age out after ten quiet minutes). Default 100.
    pub login_address_free_failures: u32,
    /// Seconds between an address's attempts once spaced out, doubling
    /// with each further failure. Default 1.
    pub login_delay: u64,
    /// Most seconds between an address's attempts. Default 30.
    pub login_delay_max: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            listeners: vec![ListenerConfig::tcp(SocketAddr::from((
                [127, 0, 0, 1],
                1883,
            )))],
            limits: Limits::default(),
            sys_interval: 10,
            log_level: LogLevel::default(),
            log_format: LogFormat::default(),
            log_file: None,
            persistence: None,
            data_dir: None,
            sync_interval: 1,
            durability: Durability::Process,
            max_store_bytes: 1 << 30,
            allow_anonymous: None,
            password_file: None,
            acl_file: None,
            scram: None,
            jwt: None,
            certificate: None,
            session_ownership: None,
            auth_order: Vec::new(),
            http: None,
            bridges: Vec::new(),
            cluster: None,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            // 256 MiB less a byte: clients (paho among them) refuse a
            // Maximum Packet Size above 268,435,455.
            max_packet_size: 268_435_455,
            connect_timeout: 10,
            max_keepalive: u16::MAX,
            receive_maximum: 128,
            max_inflight: 128,
            topic_alias_maximum: 16,
            max_queued_messages: 1000,
            max_queued_bytes: 16 * 1024 * 1024,
            queue_qos0_offline: false,
            max_session_expiry: 7 * 24 * 3600,
            max_subscriptions_per_session: 1_000_000,
            max_subscription_bytes_per_session: 256 * 1024 * 1024,
            max_subscription_bytes: 1024 * 1024 * 1024,
            max_retained_messages: 1_000_000,
            max_qos: 2,
            retain_available: true,
            wildcard_subscriptions: true,
            shared_subscriptions: true,
            max_client_id_length: 256,
            max_topic_levels: 200,
            max_sessions: 1_000_000,
            max_queued_bytes_total: 1024 * 1024 * 1024,
            max_retained_bytes: 256 * 1024 * 1024,
            max_retained_backlog: 2_000_000,
            hibernate_after: 5,
            tcp_keepalive: 120,
            packet_timeout: 30,
            max_partial_bytes: 512 * 1024 * 1024,
            max_connections_per_address: 10_000,
            max_pending_per_address: 100,
            max_pending_connections: 10_000,
            connection_rate: 100,
            connection_burst: 1000,
            limit_loopback: false,
            max_publish_rate: 0,
            max_publish_bytes_rate: 0,
            login_free_failures: 5,
            login_address_free_failures: 100,
            login_delay: 1,
            login_delay_max: 30,
        }
    }
}

/// A configuration that can't be used, with the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML is malformed, or a key is unknown or has the wrong type.
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    /// The file is a Mosquitto configuration: what to write instead.
    #[error(
        "this looks like a mosquitto.conf, but Petrel reads TOML; in Petrel's format it would be:\n\n{0}"
    )]
    Mosquitto(String),
    /// A value is out of range.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// The key, with its table (`limits.max_qos`).
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl BrokerConfig {
    /// Parse and check a TOML configuration.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = match toml::from_str(text) {
            Ok(t) => t,
            Err(e) => {
                return Err(match mosquitto_hint(text) {
                    Some(hint) => ConfigError::Mosquitto(hint),
                    None => ConfigError::Toml(e),
                })
            }
        };
        check_binds(&table)?;
        let mut config: Self = toml::from_str(text)?;
        // The order the methods appear in is the order they are tried.
        config.auth_order = table
            .keys()
            .filter_map(|k| match k.as_str() {
                "password_file" => Some(AuthSource::PasswordFile),
                "jwt" => Some(AuthSource::Jwt),
                "certificate" => Some(AuthSource::Certificate),
                _ => None,
            })
            .collect();
        config.validate()?;
        Ok(config)
    }

    /// The authentication methods configured, in the order they are tried.
    pub fn auth_sources(&self) -> Vec<AuthSource> {
        let configured = |s: &AuthSource| match s {
            AuthSource::PasswordFile => self.password_file.is_some(),
            AuthSource::Jwt => self.jwt.is_some(),
            AuthSource::Certificate => {
                self.certificate.is_some()
                    || self.listeners.iter().any(|l| l.use_identity_as_username)
            }
        };
        let mut order: Vec<AuthSource> =
            self.auth_order.iter().copied().filter(configured).collect();
        for s in [
            AuthSource::PasswordFile,
            AuthSource::Jwt,
            AuthSource::Certificate,
        ] {
            if configured(&s) && !order.contains(&s) {
                order.push(s);
            }
        }
        order
    }

    /// Whether any way to authenticate is configured.
    pub fn has_authentication(&self) -> bool {
        !self.auth_sources().is_empty() || self.scram.is_some()
    }

    /// Check every value is usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_string(),
            })
        };
        let l = &self.limits;
        if self.listeners.is_empty() {
            return invalid("listener", "at least one [[listener]] is needed");
        }
        for listener in &self.listeners {
            listener.validate()?;
        }
        if l.max_connections == 0 {
            return invalid("limits.max_connections", "must be at least 1");
        }
        // (The protocol allows 5 bytes more, but clients such as paho
        // refuse a Maximum Packet Size above 268,435,455.)
        if l.max_packet_size < 128 || l.max_packet_size > petrel_codec::MAX_VARINT {
            return invalid(
                "limits.max_packet_size",
                "must be between 128 and 268435455 bytes",
            );
        }
        if l.connect_timeout == 0 || l.connect_timeout > 3600 {
            return invalid(
                "limits.connect_timeout",
                "must be between 1 and 3600 seconds",
            );
        }
        if l.max_keepalive == 0 {
            return invalid("limits.max_keepalive", "must be at least 1 second");
        }
        if l.receive_maximum == 0 {
            return invalid("limits.receive_maximum", "must be at least 1");
        }
        if l.max_inflight == 0 {
            return invalid("limits.max_inflight", "must be at least 1");
        }
        if l.max_queued_messages == 0 {
            return invalid("limits.max_queued_messages", "must be at least 1");
        }
        if l.max_queued_bytes == 0 {
            return invalid("limits.max_queued_bytes", "must be at least 1");
        }
        if l.max_subscriptions_per_session == 0 {
            return invalid("limits.max_subscriptions_per_session", "must be at least 1");
        }
        if l.max_qos > 2 {
            return invalid("limits.max_qos", "must be 0, 1 or 2");
        }
        if l.max_client_id_length < 23 {
            // [MQTT-3.1.3-5]: ids of 1 to 23 characters must be accepted.
            return invalid("limits.max_client_id_length", "must be at least 23");
        }
        if l.max_topic_levels == 0 {
            return invalid("limits.max_topic_levels", "must be at least 1");
        }
        if l.max_sessions == 0 {
            return invalid("limits.max_sessions", "must be at least 1");
        }
        if let Some(scram) = &self.scram {
            if scram.mechanisms.is_empty() {
                return invalid("scram.mechanisms", "name at least one mechanism");
            }
            if let Some(m) = scram
                .mechanisms
                .iter()
                .find(|m| !matches!(m.as_str(), "SCRAM-SHA-256" | "SCRAM-SHA-512"))
            {
                return invalid(
                    "scram.mechanisms",
                    &format!("unknown mechanism `{m}` (SCRAM-SHA-256 or SCRAM-SHA-512)"),
                );
            }
        }
        if let Some(jwt) = &self.jwt {
            if jwt.secret.is_none() && jwt.public_key.is_none() && jwt.jwks.is_none() {
                return invalid("jwt", "needs a key: secret, public_key or jwks");
            }
        }
        if l.login_delay == 0 || l.login_delay_max < l.login_delay {
            return invalid(
                "limits.login_delay",
                "must be at least 1 second and at most limits.login_delay_max",
            );
        }
        if let Some(http) = &self.http {
            if http.token_hash.is_some() && http.token_digest().is_none() {
                return invalid(
                    "http.token_hash",
                    "must be `sha256:` and 64 hex digits (`petrel token` makes one)",
                );
            }
            if http.allow_unauthenticated && !http.bind.ip().is_loopback() {
                return invalid(
                    "http.allow_unauthenticated",
                    "only a listener on a loopback address may serve requests without a token",
                );
            }
        }
        let mut names = std::collections::HashSet::new();
        if let Some(c) = &self.cluster {
            c.validate().map_err(|reason| ConfigError::Invalid {
                key: "cluster",
                reason,
            })?;
            if self.durability == Durability::None {
                // A node that forgets its vote can vote twice in a term.
                return invalid(
                    "cluster",
                    "a node of a cluster must keep its consensus state: durability \"none\" (--memory) can't be used",
                );
            }
        }
        for b in &self.bridges {
            b.validate().map_err(|reason| ConfigError::Invalid {
                key: "bridge",
                reason,
            })?;
            if !names.insert(b.name.as_str()) {
                return invalid("bridge", &format!("two bridges named `{}`", b.name));
            }
        }
        if l.packet_timeout == 0 || l.packet_timeout > 3600 {
            return invalid(
                "limits.packet_timeout",
                "must be between 1 and 3600 seconds",
            );
        }
        if l.connection_rate > 0 && l.connection_burst == 0 {
            return invalid(
                "limits.connection_burst",
                "must be at least 1 when connection_rate is set",
            );
        }
        if l.tcp_keepalive > 7200 {
            return invalid(
                "limits.tcp_keepalive",
                "must be at most 7200 seconds (0 turns it off)",
            );
        }
        if l.hibernate_after > 86_400 {
            return invalid(
                "limits.hibernate_after",
                "must be at most 86400 seconds (0 turns it off)",
            );
        }
        Ok(())
    }

    /// The session machine's configuration for one client connection.
    pub(crate) fn session_config(&self) -> petrel_session::Config {
        let l = &self.limits;
        petrel_session::Config {
            receive_maximum: NonZeroU16::new(l.receive_maximum).unwrap_or(NonZeroU16::MIN),
            max_inflight: NonZeroU16::new(l.max_inflight).unwrap_or(NonZeroU16::MIN),
            maximum_packet_size: l.max_packet_size,
            topic_alias_maximum: l.topic_alias_maximum,
            connect_timeout: Duration::from_secs(l.connect_timeout),
            // The broker acknowledges a PUBLISH once it has routed it, with
            // what routing found (0x10 No matching subscribers in 5.0).
            manual_acks: true,
            ..petrel_session::Config::default()
        }
    }
}

/// What a `bind` that is not `IP:PORT` should have been, if it can tell.
pub fn bind_hint(value: &str, port: u16) -> Option<String> {
    if value.parse::<SocketAddr>().is_ok() {
        return None;
    }
    if let Ok(ip) = value.parse::<std::net::IpAddr>() {
        let addr = SocketAddr::new(ip, port);
        return Some(format!("`{value}` has no port: write \"{addr}\""));
    }
    let (host, port_text) = match value.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h, p.to_string()),
        _ => (value, port.to_string()),
    };
    if host.eq_ignore_ascii_case("localhost") {
        return Some(format!(
            "a bind address is an IP address, not a host name: write \"127.0.0.1:{port_text}\" (or \"[::1]:{port_text}\")"
        ));
    }
    if host == "*" || host.is_empty() {
        return Some(format!(
            "to listen on every address write \"0.0.0.0:{port_text}\" (or \"[::]:{port_text}\")"
        ));
    }
    Some(format!(
        "`{value}` is not an IP address and port: write one, such as \"0.0.0.0:{port_text}\" (every address) or \"127.0.0.1:{port_text}\" (this machine only)"
    ))
}

/// The usual port of a listener's transport.
fn usual_port(transport: Option<&str>) -> u16 {
    match transport {
        Some("tls") | Some("quic") => 8883,
        Some("ws") => 8080,
        Some("wss") => 8443,
        _ => 1883,
    }
}

/// Bind addresses that are not `IP:PORT`, with what to write instead
/// (serde's own message says only "invalid socket address syntax").
fn check_binds(table: &toml::Table) -> Result<(), ConfigError> {
    let bad = |key: &'static str, value: &toml::Value, port: u16| match value.as_str() {
        Some(v) => {
            bind_hint(v, port).map_or(Ok(()), |reason| Err(ConfigError::Invalid { key, reason }))
        }
        None => Ok(()),
    };
    if let Some(listeners) = table.get("listener").and_then(|l| l.as_array()) {
        for l in listeners.iter().filter_map(|l| l.as_table()) {
            let port = usual_port(l.get("transport").and_then(|t| t.as_str()));
            if let Some(v) = l.get("bind") {
                bad("listener.bind", v, port)?;
            }
        }
    }
    if let Some(v) = table
        .get("http")
        .and_then(|h| h.as_table())
        .and_then(|h| h.get("bind"))
    {
        bad("http.bind", v, 8080)?;
    }
    Ok(())
}

/// If `text` is a Mosquitto configuration (`key value` lines), the Petrel
/// configuration it corresponds to, as far as the common keys go.
fn mosquitto_hint(text: &str) -> Option<String> {
    // Each line to its place, so the result is one valid file: keys of the
    // top level first, then the listeners with theirs, then one [limits]
    // table.
    let (mut top, mut listeners, mut limits) = (Vec::new(), Vec::new(), Vec::new());
    let mut unknown = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(key), rest) = (words.next(), words.collect::<Vec<_>>()) else {
            continue;
        };
        if key.contains('=') || rest.first().is_some_and(|w| w.starts_with('=')) {
            // A TOML line, not Mosquitto's.
            return None;
        }
        let value = rest.join(" ");
        let quoted = |v: &str| format!("{v:?}");
        let limit = |name: &str| format!("{name} = {value}");
        let (place, line) = match key {
            "listener" => {
                let port = rest.first().copied().unwrap_or("1883");
                let ip = rest.get(1).copied().unwrap_or("0.0.0.0");
                (
                    &mut listeners,
                    format!("[[listener]]\nbind = \"{ip}:{port}\""),
                )
            }
            "port" => (
                &mut listeners,
                format!("[[listener]]\nbind = \"0.0.0.0:{value}\""),
            ),
            "allow_anonymous" => (&mut top, format!("allow_anonymous = {value}")),
            "password_file" => (&mut top, format!("password_file = {}", quoted(&value))),
            "acl_file" => (&mut top, format!("acl_file = {}", quoted(&value))),
            "persistence_location" => (&mut top, format!("data_dir = {}", quoted(&value))),
            "persistence" => (
                &mut top,
                "# persistence: Petrel keeps its state in data_dir by default".into(),
            ),
            "log_dest" if rest.first() == Some(&"file") => (
                &mut top,
                format!("log_file = {}", quoted(&rest[1..].join(" "))),
            ),
            "log_dest" | "log_type" | "connection_messages" | "log_timestamp" => (
                &mut top,
                format!("# {key}: see log_level, log_format and log_file"),
            ),
            "max_connections" => (&mut limits, limit("max_connections")),
            "max_packet_size" => (&mut limits, limit("max_packet_size")),
            "max_inflight_messages" => (&mut limits, limit("max_inflight")),
            "max_queued_messages" => (&mut limits, limit("max_queued_messages")),
            "max_keepalive" => (&mut limits, limit("max_keepalive")),
            "max_qos" => (&mut limits, limit("max_qos")),
            "retain_available" => (&mut limits, limit("retain_available")),
            "sys_interval" => (&mut top, format!("sys_interval = {value}")),
            "certfile"
            | "keyfile"
            | "cafile"
            | "require_certificate"
            | "use_identity_as_username" => (
                &mut listeners,
                format!(
                    "# in the [[listener]] above: transport = \"tls\"\n{key} = {}",
                    if matches!(value.as_str(), "true" | "false") {
                        value.clone()
                    } else {
                        quoted(&value)
                    }
                ),
            ),
            "protocol" if value == "websockets" => (
                &mut listeners,
                "# in the [[listener]] above: transport = \"ws\"".into(),
            ),
            _ => {
                unknown.push(key.to_string());
                continue;
            }
        };
        place.push(line);
    }
    if top.is_empty() && listeners.is_empty() && limits.is_empty() {
        return None;
    }
    if !unknown.is_empty() {
        top.push(format!(
            "# not translated here: {} (see the README's configuration section)",
            unknown.join(", ")
        ));
    }
    top.extend(listeners);
    if !limits.is_empty() {
        top.push("[limits]".into());
        top.extend(limits);
    }
    Some(top.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mosquitto_conf_translates_to_one_valid_file() {
        let hint = mosquitto_hint(
            "listener 8883 0.0.0.0\ncertfile /c.pem\nmax_qos 1\nallow_anonymous false\n\
             retain_available false\nmax_keepalive 60\nbogus_key 1\n",
        )
        .unwrap();
        let v: toml::Value = toml::from_str(&hint).unwrap_or_else(|e| panic!("{e}\n{hint}"));
        assert_eq!(v["allow_anonymous"].as_bool(), Some(false), "{hint}");
        let limits = &v["limits"];
        assert_eq!(limits["max_qos"].as_integer(), Some(1), "{hint}");
        assert_eq!(limits["retain_available"].as_bool(), Some(false), "{hint}");
        assert_eq!(limits["max_keepalive"].as_integer(), Some(60), "{hint}");
        let listener = &v["listener"][0];
        assert_eq!(listener["bind"].as_str(), Some("0.0.0.0:8883"), "{hint}");
        assert_eq!(listener["certfile"].as_str(), Some("/c.pem"), "{hint}");
        assert!(hint.contains("not translated here: bogus_key"), "{hint}");
        // A TOML file is not taken for one.
        assert!(mosquitto_hint("max_qos = 1\n").is_none());
    }

    #[test]
    fn authentication_methods_are_tried_in_the_order_they_appear() {
        let jwt_first = "[jwt]\nsecret = \"k\"\n";
        let c = BrokerConfig::from_toml(&format!("certificate = {{}}\n{jwt_first}")).unwrap();
        assert_eq!(c.auth_sources(), [AuthSource::Certificate, AuthSource::Jwt]);
        let c = BrokerConfig::from_toml(&format!("password_file = \"p\"\n{jwt_first}")).unwrap();
        assert_eq!(
            c.auth_sources(),
            [AuthSource::PasswordFile, AuthSource::Jwt]
        );
        let c = BrokerConfig::from_toml(&format!(
            "allow_anonymous = false\n{jwt_first}[limits]\nmax_qos = 1\n"
        ))
        .unwrap();
        assert_eq!(c.auth_sources(), [AuthSource::Jwt]);
        // Top-level keys come before tables in TOML: a password file
        // written after [jwt] belongs to a table. The order of tables
        // among themselves is the file's.
        let c = BrokerConfig::from_toml("[jwt]\nsecret = \"k\"\n[certificate]\n").unwrap();
        assert_eq!(c.auth_sources(), [AuthSource::Jwt, AuthSource::Certificate]);
        let c = BrokerConfig::from_toml("[certificate]\n[jwt]\nsecret = \"k\"\n").unwrap();
        assert_eq!(c.auth_sources(), [AuthSource::Certificate, AuthSource::Jwt]);
    }

    #[test]
    fn bad_authentication_tables_name_their_key() {
        let e = BrokerConfig::from_toml("[jwt]\naudience = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("jwt"), "{e}");
        let e = BrokerConfig::from_toml("[scram]\nfile = \"f\"\nmechanisms = [\"SCRAM-SHA-1\"]\n")
            .unwrap_err();
        assert!(e.to_string().contains("scram.mechanisms"), "{e}");
        let e = BrokerConfig::from_toml("[certificate]\nusername = \"serial\"\n").unwrap_err();
        assert!(e.to_string().contains("username"), "{e}");
    }

    #[test]
    fn listeners_are_checked_for_what_their_transport_needs() {
        let ok = |t: &str| BrokerConfig::from_toml(t).map(|c| c.listeners);
        let l = ok("[[listener]]\nbind = \"0.0.0.0:8883\"\ntransport = \"tls\"\ncertfile = \"c\"\nkeyfile = \"k\"\n").unwrap();
        assert_eq!(l[0].transport, TransportKind::Tls);
        let l = ok(
            "[[listener]]\ntransport = \"unix\"\npath = \"/run/petrel.sock\"\nmode = \"0660\"\n",
        )
        .unwrap();
        assert_eq!(l[0].unix_mode(), Some(0o660));
        assert!(l[0].is_local());
        let l = ok("[[listener]]\nbind = \"[::]:8080\"\ntransport = \"ws\"\nprotocols = [\"3.1.1\", \"5.0\"]\n").unwrap();
        assert_eq!(l[0].ws_path(), "/mqtt");
        assert!(!l[0].is_local());
        for (bad, says) in [
            ("transport = \"tls\"\nbind = \"0.0.0.0:8883\"", "certfile"),
            ("transport = \"unix\"\nbind = \"0.0.0.0:1\"", "path"),
            ("transport = \"tcp\"", "bind"),
            ("transport = \"unix\"\npath = \"s\"\nmode = \"rw\"", "mode"),
            ("bind = \"0.0.0.0:1\"\ncafile = \"ca\"", "TLS keys"),
            ("transport = \"tls\"\nbind = \"0.0.0.0:1\"\ncertfile = \"c\"\nkeyfile = \"k\"\nrequire_certificate = true", "cafile"),
            ("bind = \"0.0.0.0:1\"\nwebsocket_path = \"/x\"", "websocket_path"),
            ("bind = \"0.0.0.0:1\"\nmax_connections = 0", "max_connections"),
            ("bind = \"0.0.0.0:1\"\nprotocols = [\"4\"]", "protocols"),
            ("bind = \"0.0.0.0:1\"\nauth_methods = []", "auth_methods"),
        ] {
            let e = BrokerConfig::from_toml(&format!("[[listener]]\n{bad}\n")).unwrap_err();
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
    }
}
