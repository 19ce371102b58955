//! `petrel pub` and `petrel sub`: command-line clients with the Mosquitto
//! tools' flag letters wherever they mean the same thing.
//!
//! Exit codes: 0 success; 1 a usage or connection error; 27 `sub -W` ran
//! out of time (as `mosquitto_sub`).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use petrel_broker::SubscriptionTree;
use petrel_client::rustls::CipherSuite;
use petrel_client::{
    connect, Client, ConnectOptions, LastWill, Message, MqttString, Properties, Protocol, Publish,
    QoS, RetainHandling, ScramAuthenticator, ScramMechanism, Subscription, SubscriptionId,
    SubscriptionOptions, TlsOptions, TlsVersion, TopicFilter, TopicName, Transport, UserProperty,
};

/// Flags both tools share: where the broker is and how to connect.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Common {
    /// Broker host.
    #[arg(short = 'h', long = "host", default_value = "localhost")]
    host: String,
    /// Broker port (default 1883, or 8883 with TLS).
    #[arg(short = 'p', long = "port")]
    port: Option<u16>,
    /// The broker as a URL, as mosquitto's -L: mqtt://host:port/topic,
    /// mqtts://user:password@host:port/topic or quic://host:port/topic
    /// (user, password and port optional); also ws://host:port/path,
    /// wss://… and unix:///path/to/socket, whose path is no topic (give -t).
    #[arg(short = 'L', long = "url", value_name = "URL", conflicts_with_all = ["host", "port", "unix"])]
    url: Option<String>,
    /// Connect through this Unix socket instead of TCP.
    #[arg(long = "unix", value_name = "PATH", conflicts_with_all = ["host", "port"])]
    unix: Option<PathBuf>,
    /// Protocol version: 311 (mqttv311), 5 (mqttv5) or 31 (mqttv31).
    #[arg(short = 'V', long = "protocol-version", default_value = "311")]
    version: String,
    /// Client identifier (default: petrel_pub_/petrel_sub_ and the process id).
    #[arg(short = 'i', long = "id")]
    id: Option<String>,
    /// Keep alive in seconds.
    #[arg(short = 'k', long = "keepalive", default_value_t = 60)]
    keepalive: u16,
    /// User name.
    #[arg(short = 'u', long = "username")]
    username: Option<String>,
    /// Password.
    #[arg(short = 'P', long = "pw")]
    password: Option<String>,
    /// 5.0 enhanced authentication: SCRAM-SHA-256 or SCRAM-SHA-512, proving
    /// -u and -P without sending the password.
    #[arg(long = "auth-method", value_name = "METHOD")]
    auth_method: Option<String>,
    /// Persistent session: Clean Session 0 / Clean Start 0 (5.0 sessions
    /// then never expire unless -x says otherwise).
    #[arg(short = 'c', long = "disable-clean-session")]
    persistent: bool,
    /// 5.0 Session Expiry Interval in seconds (-1: never).
    #[arg(
        short = 'x',
        long = "session-expiry-interval",
        allow_hyphen_values = true
    )]
    session_expiry: Option<i64>,
    /// 5.0 properties: `-D COMMAND NAME VALUE` (e.g. `-D publish
    /// user-property key value`, `-D publish content-type text/plain`,
    /// `-D publish response-topic t`, `-D publish correlation-data d`,
    /// `-D publish message-expiry-interval 60`, `-D publish
    /// payload-format-indicator 1`, `-D connect user-property k v`,
    /// `-D connect receive-maximum 10`, `-D subscribe user-property k v`).
    #[arg(short = 'D', long = "property", num_args = 3..=4,
          value_names = ["COMMAND", "NAME", "VALUE"], action = clap::ArgAction::Append)]
    properties: Vec<String>,
    /// CA certificates (PEM) to trust; turns TLS on.
    #[arg(long = "cafile")]
    cafile: Option<PathBuf>,
    /// A directory of CA certificates (PEM files) to trust; turns TLS on.
    #[arg(long = "capath", value_name = "DIR")]
    capath: Option<PathBuf>,
    /// The oldest TLS version to use, as mosquitto's: tlsv1.3 (1.3 only)
    /// or tlsv1.2 (1.2 or 1.3). Default: either.
    #[arg(long = "tls-version", value_name = "VERSION")]
    tls_version: Option<String>,
    /// The cipher suites to offer, separated by colons: IANA names
    /// (TLS13_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    /// …) or OpenSSL's (TLS_AES_128_GCM_SHA256,
    /// ECDHE-ECDSA-AES128-GCM-SHA256, …). Default: all that are safe.
    #[arg(long = "ciphers", value_name = "LIST")]
    ciphers: Option<String>,
    /// Use TLS with the system's root certificates.
    #[arg(long = "tls-use-os-certs")]
    os_certs: bool,
    /// Client certificate (PEM), with --key.
    #[arg(long = "cert", requires = "key")]
    cert: Option<PathBuf>,
    /// Client private key (PEM), with --cert.
    #[arg(long = "key", requires = "cert")]
    key: Option<PathBuf>,
    /// Do not check that the server certificate's host name matches.
    #[arg(long = "insecure")]
    insecure: bool,
    /// Will topic.
    #[arg(long = "will-topic")]
    will_topic: Option<String>,
    /// Will payload.
    #[arg(long = "will-payload", requires = "will_topic")]
    will_payload: Option<String>,
    /// Will QoS.
    #[arg(long = "will-qos", default_value_t = 0, requires = "will_topic")]
    will_qos: u8,
    /// Retain the will.
    #[arg(long = "will-retain", requires = "will_topic")]
    will_retain: bool,
    /// Print no error messages.
    #[arg(long = "quiet")]
    quiet: bool,
    /// Print help.
    #[arg(long = "help", action = clap::ArgAction::Help)]
    help: Option<bool>,
}

/// `petrel pub` flags.
#[derive(clap::Args, Debug)]
pub(crate) struct PubArgs {
    #[command(flatten)]
    common: Common,
    /// Topic to publish to (or the path of an -L mqtt:// URL).
    #[arg(short = 't', long = "topic")]
    topic: Option<String>,
    /// Message payload.
    #[arg(short = 'm', long = "message", group = "source")]
    message: Option<String>,
    /// Send the contents of a file as the message.
    #[arg(short = 'f', long = "file", group = "source")]
    file: Option<PathBuf>,
    /// Send each line of standard input as a message.
    #[arg(short = 'l', long = "stdin-line", group = "source")]
    lines: bool,
    /// Send all of standard input as one message.
    #[arg(short = 's', long = "stdin-file", group = "source")]
    stdin: bool,
    /// Send a zero-length message.
    #[arg(short = 'n', long = "null-message", group = "source")]
    null: bool,
    /// QoS 0, 1 or 2.
    #[arg(short = 'q', long = "qos", default_value_t = 0)]
    qos: u8,
    /// Retain the message.
    #[arg(short = 'r', long = "retain")]
    retain: bool,
    /// Publish the message this many times.
    #[arg(long = "repeat", default_value_t = 1)]
    repeat: u64,
    /// Seconds between repeats (fractions allowed).
    #[arg(long = "repeat-delay", default_value_t = 0.0)]
    repeat_delay: f64,
}

/// `petrel sub` flags.
#[derive(clap::Args, Debug)]
pub(crate) struct SubArgs {
    #[command(flatten)]
    common: Common,
    /// Topic filter to subscribe to; may be repeated (and one may be the
    /// path of an -L mqtt:// URL).
    #[arg(short = 't', long = "topic")]
    topics: Vec<String>,
    /// Topic filter whose messages are not printed; may be repeated.
    #[arg(short = 'T', long = "filter-out")]
    filter_out: Vec<String>,
    /// QoS of the subscriptions.
    #[arg(short = 'q', long = "qos", default_value_t = 0)]
    qos: u8,
    /// Exit after this many messages.
    #[arg(short = 'C', long = "count")]
    count: Option<u64>,
    /// Exit after this many seconds (exit code 27).
    #[arg(short = 'W', long = "timeout")]
    timeout: Option<u64>,
    /// Print the topic before the payload.
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,
    /// Output format: %t topic, %p payload, %x payload in hex, %l length,
    /// %q QoS, %r retain, %m packet id, %I ISO 8601 time, %U Unix time,
    /// %P user properties, %C content type, %R response topic, %D
    /// correlation data, %E message expiry, %F payload format, %S
    /// subscription ids, %% a percent sign; \n, \t and \\ escapes.
    #[arg(short = 'F', long = "format")]
    format: Option<String>,
    /// Do not end each message with a newline.
    #[arg(short = 'N', long = "no-newline")]
    no_newline: bool,
    /// Only print retained messages; exit at the first live one.
    #[arg(long = "retained-only")]
    retained_only: bool,
    /// Do not print retained (stale) messages.
    #[arg(short = 'R', long = "no-retained")]
    no_retained: bool,
    /// Exit once the subscriptions are acknowledged.
    #[arg(short = 'E', long = "exit-after-subscribe")]
    exit_after_subscribe: bool,
    /// Unsubscribe from this filter (after subscribing); may be repeated.
    #[arg(short = 'U', long = "unsubscribe")]
    unsubscribe: Vec<String>,
    /// 5.0 No Local: do not receive our own messages.
    #[arg(long = "no-local")]
    no_local: bool,
    /// 5.0 Retain As Published.
    #[arg(long = "retain-as-published")]
    retain_as_published: bool,
    /// 5.0 Retain Handling: 0 send at subscribe, 1 only if new, 2 never.
    #[arg(long = "retain-handling", default_value_t = 0)]
    retain_handling: u8,
    /// 5.0 Subscription Identifier.
    #[arg(long = "subscription-id")]
    subscription_id: Option<u32>,
}

fn usage(msg: impl std::fmt::Display) -> String {
    format!("{msg}")
}

fn qos(n: u8) -> Result<QoS, String> {
    QoS::from_u8(n).ok_or_else(|| usage(format!("QoS must be 0, 1 or 2, not {n}")))
}

fn mstr(s: &str) -> Result<MqttString, String> {
    MqttString::try_from(s).map_err(|e| e.to_string())
}

/// The `-D` groups, from the flat list clap gives: each is a command, a
/// property name, and one value (two for `user-property`).
fn groups(flat: &[String]) -> Result<Vec<&[String]>, String> {
    let mut out = Vec::new();
    let mut rest = flat;
    while !rest.is_empty() {
        let n = if rest.get(1).map(String::as_str) == Some("user-property") {
            4
        } else {
            3
        };
        if rest.len() < n {
            return Err(format!("-D {}: missing value", rest.join(" ")));
        }
        out.push(&rest[..n]);
        rest = &rest[n..];
    }
    Ok(out)
}

/// The `-D` properties for one command.
fn properties(common: &Common, command: &str, protocol: Protocol) -> Result<Properties, String> {
    let mut p = Properties::new();
    for d in groups(&common.properties)?
        .into_iter()
        .filter(|d| d[0] == command)
    {
        if !protocol.is_v5() {
            return Err("-D properties need -V 5".into());
        }
        let name = d[1].as_str();
        let value = d.get(2).map(String::as_str).unwrap_or_default();
        let num = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| format!("{name}: not a number: {v}"))
        };
        match name {
            "user-property" => {
                let v = d.get(3).ok_or("user-property needs a name and a value")?;
                p.push_user_property(UserProperty::new(mstr(value)?, mstr(v)?));
            }
            "content-type" => {
                p.set_content_type(Some(mstr(value)?));
            }
            "response-topic" => {
                let t = TopicName::try_from(value).map_err(|e| e.to_string())?;
                p.set_response_topic(Some(t));
            }
            "correlation-data" => {
                p.set_correlation_data(Some(Bytes::copy_from_slice(value.as_bytes())));
            }
            "message-expiry-interval" => {
                p.set_message_expiry_interval(Some(num(value)?));
            }
            "payload-format-indicator" => {
                p.set_payload_format_indicator(Some(num(value)? != 0));
            }
            "receive-maximum" => {
                let n = u16::try_from(num(value)?)
                    .ok()
                    .and_then(std::num::NonZeroU16::new);
                p.set_receive_maximum(Some(n.ok_or("receive-maximum: 1 to 65535")?));
            }
            "maximum-packet-size" => {
                p.set_maximum_packet_size(std::num::NonZeroU32::new(num(value)?));
            }
            "topic-alias-maximum" => {
                p.set_topic_alias_maximum(Some(
                    u16::try_from(num(value)?).map_err(|_| "topic-alias-maximum: 0 to 65535")?,
                ));
            }
            "request-response-information" => {
                p.set_request_response_information(Some(num(value)? != 0));
            }
            "request-problem-information" => {
                p.set_request_problem_information(Some(num(value)? != 0));
            }
            "will-delay-interval" => {
                p.set_will_delay_interval(Some(num(value)?));
            }
            other => return Err(format!("unknown -D property {other} for {command}")),
        }
    }
    Ok(p)
}

/// The cipher suites `--ciphers` knows: rustls's (IANA) name, and
/// OpenSSL's where it differs. All are *ring*'s.
const CIPHERS: &[(&str, &str, CipherSuite)] = &[
    (
        "TLS13_AES_256_GCM_SHA384",
        "TLS_AES_256_GCM_SHA384",
        CipherSuite::TLS13_AES_256_GCM_SHA384,
    ),
    (
        "TLS13_AES_128_GCM_SHA256",
        "TLS_AES_128_GCM_SHA256",
        CipherSuite::TLS13_AES_128_GCM_SHA256,
    ),
    (
        "TLS13_CHACHA20_POLY1305_SHA256",
        "TLS_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        "ECDHE-RSA-CHACHA20-POLY1305",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// `--ciphers`: a colon-separated list of suite names, either spelling,
/// any case.
fn cipher_suites(list: &str) -> Result<Vec<CipherSuite>, String> {
    let mut out = Vec::new();
    for name in list.split(':').map(str::trim).filter(|n| !n.is_empty()) {
        let suite = CIPHERS
            .iter()
            .find(|(iana, openssl, _)| {
                name.eq_ignore_ascii_case(iana) || name.eq_ignore_ascii_case(openssl)
            })
            .map(|(_, _, suite)| *suite)
            .ok_or_else(|| {
                let known: Vec<String> = CIPHERS
                    .iter()
                    .map(|(iana, openssl, _)| format!("{iana} ({openssl})"))
                    .collect();
                format!(
                    "--ciphers: unknown cipher suite {name}; known: {}",
                    known.join(", ")
                )
            })?;
        if !out.contains(&suite) {
            out.push(suite);
        }
    }
    if out.is_empty() {
        return Err("--ciphers: no cipher suite named".into());
    }
    Ok(out)
}

/// `--tls-version`.
fn tls_versions(version: &str) -> Result<Vec<TlsVersion>, String> {
    match version.to_ascii_lowercase().as_str() {
        "tlsv1.3" => Ok(vec![TlsVersion::Tls13]),
        "tlsv1.2" => Ok(vec![TlsVersion::Tls12, TlsVersion::Tls13]),
        other => Err(format!("--tls-version {other}: use tlsv1.3 or tlsv1.2")),
    }
}

/// An `-L` URL split as mosquitto reads it: for mqtt, mqtts and quic
/// URLs the path is the topic, taken off the URL; other schemes keep
/// their path (a WebSocket path, a socket file).
fn split_url(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), None);
    };
    let topic_in_path = matches!(
        scheme.to_ascii_lowercase().as_str(),
        "mqtt" | "mqtts" | "tcp" | "ssl" | "tls" | "quic"
    );
    match rest.split_once('/') {
        Some((authority, topic)) if topic_in_path => (
            format!("{scheme}://{authority}"),
            (!topic.is_empty()).then(|| topic.to_string()),
        ),
        _ => (url.to_string(), None),
    }
}

/// The connection options, and the topic an `-L` URL names.
fn options(common: &Common, default_id: &str) -> Result<(ConnectOptions, Option<String>), String> {
    let protocol = match common.version.as_str() {
        "5" | "mqttv5" => Protocol::V5,
        "311" | "mqttv311" => Protocol::V3_1_1,
        "31" | "mqttv31" => Protocol::V3_1,
        v => return Err(format!("unknown protocol version {v}: use 311, 5 or 31")),
    };
    let wants_tls = common.cafile.is_some()
        || common.capath.is_some()
        || common.os_certs
        || common.cert.is_some();
    let tls = TlsOptions {
        ca_file: common.cafile.clone(),
        ca_dir: common.capath.clone(),
        client_cert: common.cert.clone().zip(common.key.clone()),
        insecure: common.insecure,
        versions: common
            .tls_version
            .as_deref()
            .map(tls_versions)
            .transpose()?
            .unwrap_or_default(),
        cipher_suites: common
            .ciphers
            .as_deref()
            .map(cipher_suites)
            .transpose()?
            .unwrap_or_default(),
        ..TlsOptions::default()
    };
    let id = common
        .id
        .clone()
        .unwrap_or_else(|| format!("{default_id}{}", std::process::id()));
    let (mut o, topic) = if let Some(url) = &common.url {
        let (url, topic) = split_url(url);
        let o = ConnectOptions::from_url(&url, id).map_err(|e| format!("-L: {e}"))?;
        (o, topic)
    } else if let Some(path) = &common.unix {
        let mut o = ConnectOptions::new("localhost", 0, id);
        o.transport = Transport::Unix { path: path.clone() };
        (o, None)
    } else {
        let port = common.port.unwrap_or(if wants_tls { 8883 } else { 1883 });
        (ConnectOptions::new(common.host.clone(), port, id), None)
    };
    // TLS where the URL's scheme or a flag asks for it; QUIC always has it.
    if wants_tls || o.tls.is_some() || o.transport == Transport::Quic {
        o.tls = Some(tls);
    }
    o.protocol = protocol;
    o.keep_alive = Duration::from_secs(u64::from(common.keepalive));
    // -u and -P win over the URL's.
    if let Some(u) = &common.username {
        o.username = Some(u.clone());
    }
    if let Some(p) = &common.password {
        o.password = Some(Bytes::from(p.clone()));
    }
    if let Some(method) = &common.auth_method {
        let mechanism = ScramMechanism::from_name(method)
            .ok_or_else(|| format!("--auth-method {method}: use SCRAM-SHA-256 or SCRAM-SHA-512"))?;
        if protocol != Protocol::V5 {
            return Err("--auth-method needs MQTT 5.0 (-V 5)".into());
        }
        let (Some(user), Some(pw)) = (o.username.clone(), o.password.take()) else {
            return Err("--auth-method needs -u and -P".into());
        };
        // The user name goes in CONNECT too: the broker checks it is the
        // one proven. The password never leaves.
        o.authenticator = Some(std::sync::Arc::new(ScramAuthenticator::new(
            mechanism,
            user,
            pw.to_vec(),
        )));
    }
    o.clean_start = !common.persistent;
    o.session_expiry = match common.session_expiry {
        Some(-1) => u32::MAX,
        Some(n) => u32::try_from(n).map_err(|_| "-x: 0 to 4294967295, or -1")?,
        None if common.persistent => u32::MAX,
        None => 0,
    };
    o.properties = properties(common, "connect", protocol)?;
    if let Some(t) = &common.will_topic {
        o.will = Some(LastWill {
            topic: TopicName::try_from(t.as_str()).map_err(|e| format!("will topic: {e}"))?,
            payload: Bytes::from(common.will_payload.clone().unwrap_or_default()),
            qos: qos(common.will_qos)?,
            retain: common.will_retain,
            properties: properties(common, "will", protocol)?,
        });
    }
    // A command-line tool reports a lost connection rather than hiding it.
    o.reconnect.enabled = false;
    Ok((o, topic))
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

fn finish(result: Result<ExitCode, String>, quiet: bool, tool: &str) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            if !quiet {
                eprintln!("{tool}: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `petrel cluster` flags.
#[derive(clap::Args, Debug)]
pub(crate) struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(clap::Subcommand, Debug)]
enum ClusterCommand {
    /// What a node says of the cluster (its `$SYS/broker/cluster/`
    /// topics): node, state, term, leader, members, routes, messages.
    /// Exits 0 when the node knows a leader and reaches a quorum (new
    /// routes can be agreed), 1 when not, 2 when the broker is not a node of a cluster, 3 when it can't
    /// be asked.
    #[command(disable_help_flag = true)]
    Status {
        #[command(flatten)]
        common: Box<Common>,
    },
    /// Add a node to the cluster, through any member's admin API
    /// (`--url`): as a learner with a copy of the log, then a voter while
    /// there are fewer than three voters (five once there are five
    /// nodes). Start the node first, with `peers` naming the members but
    /// not itself. Prints the membership after (learners marked `L`).
    Join {
        /// The node: `ID@HOST:PORT`, its node-to-node listener.
        node: String,
        #[command(flatten)]
        admin: crate::ctl::AdminArgs,
    },
    /// Take a node out of the cluster for good, through any member's
    /// admin API: its routes go and its sessions have no owner (drain it
    /// first: its clients' sessions follow them). The leader can't leave:
    /// stop it first. Prints the membership after.
    Leave {
        /// The node's number.
        id: u64,
        #[command(flatten)]
        admin: crate::ctl::AdminArgs,
    },
}

/// `petrel cluster`.
pub(crate) fn cluster(args: ClusterArgs) -> ExitCode {
    let (admin, method, path, body) = match args.command {
        ClusterCommand::Status { common } => return status(*common),
        ClusterCommand::Join { node, admin } => {
            let Some((id, addr)) = node
                .split_once('@')
                .and_then(|(id, addr)| Some((id.parse::<u64>().ok()?, addr)))
            else {
                eprintln!("petrel cluster join: `{node}` is not ID@HOST:PORT");
                return ExitCode::from(2);
            };
            let body = serde_json::json!({ "id": id, "addr": addr });
            (
                admin,
                "POST",
                "/api/v1/cluster/nodes".to_string(),
                Some(body),
            )
        }
        ClusterCommand::Leave { id, admin } => {
            (admin, "DELETE", format!("/api/v1/cluster/nodes/{id}"), None)
        }
    };
    let timeout = std::time::Duration::from_secs(70);
    match admin.call(timeout, method, &path, body) {
        Ok(v) => {
            println!("members {}", v["members"].as_str().unwrap_or("?"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("petrel cluster: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `petrel cluster status`.
fn status(common: Common) -> ExitCode {
    let quiet = common.quiet;
    let result = runtime().and_then(|rt| rt.block_on(cluster_status(common)));
    match result {
        Err(e) => {
            if !quiet {
                eprintln!("petrel cluster status: {e}");
            }
            ExitCode::from(3)
        }
        ok => finish(ok, quiet, "petrel cluster status"),
    }
}

async fn cluster_status(common: Common) -> Result<ExitCode, String> {
    const KEYS: [&str; 10] = [
        "node",
        "state",
        "term",
        "leader",
        "quorum",
        "members",
        "routes",
        "forwarded",
        "received",
        "lost",
    ];
    let (options, _) = options(&common, "petrel_cluster_")?;
    let (client, mut messages) = petrel_client::connect(options)
        .await
        .map_err(|e| e.to_string())?;
    client
        .subscribe("$SYS/broker/cluster/#", QoS::AtMostOnce)
        .await
        .map_err(|e| e.to_string())?;
    // The values are retained: they come at once, or not at all.
    let mut seen = std::collections::BTreeMap::new();
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    while seen.len() < KEYS.len() {
        match tokio::time::timeout_at(until, messages.recv()).await {
            Ok(Some(p)) => {
                let key = p.topic.as_str().trim_start_matches("$SYS/broker/cluster/");
                seen.insert(
                    key.to_string(),
                    String::from_utf8_lossy(&p.payload).into_owned(),
                );
            }
            _ => break,
        }
    }
    let _ = client.disconnect().await;
    let get = |k: &str| seen.get(k).map_or("?", String::as_str);
    if !seen.contains_key("node") {
        println!("not a node of a cluster (no $SYS/broker/cluster/node)");
        return Ok(ExitCode::from(2));
    }
    println!(
        "node {} ({}, term {}), leader {}, quorum {}",
        get("node"),
        get("state"),
        get("term"),
        get("leader"),
        get("quorum")
    );
    println!("members {}", get("members"));
    println!(
        "routes {}, messages forwarded {}, received {}, lost {}",
        get("routes"),
        get("forwarded"),
        get("received"),
        get("lost")
    );
    Ok(
        if get("leader").parse::<u64>().is_ok() && get("quorum") == "yes" {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        },
    )
}

/// `petrel pub`.
pub(crate) fn publish(args: PubArgs) -> ExitCode {
    let quiet = args.common.quiet;
    let result = runtime().and_then(|rt| rt.block_on(run_pub(args)));
    finish(result, quiet, "petrel pub")
}

async fn run_pub(args: PubArgs) -> Result<ExitCode, String> {
    let (options, url_topic) = options(&args.common, "petrel_pub_")?;
    let protocol = options.protocol;
    let qos = qos(args.qos)?;
    let topic = match (&args.topic, url_topic) {
        (Some(t), None) => t.clone(),
        (None, Some(t)) => t,
        (Some(_), Some(_)) => return Err("give the topic once: -t or the -L URL's path".into()),
        (None, None) => return Err("give a topic: -t, or the path of an -L URL".into()),
    };
    let topic = TopicName::try_from(topic.as_str()).map_err(|e| format!("topic: {e}"))?;
    let props = properties(&args.common, "publish", protocol)?;
    let (client, _messages) = connect(options).await.map_err(|e| e.to_string())?;
    let message = |payload: Bytes| {
        let mut m = Message::new(topic.clone(), payload, qos);
        m.retain = args.retain;
        m.properties = props.clone();
        m
    };
    let send = |client: &Client, m: Message| {
        let client = client.clone();
        async move {
            let ack = client.publish(m).await.map_err(|e| e.to_string())?;
            if ack.reason_code.is_error() {
                return Err(format!("refused by the broker: {}", ack.reason_code));
            }
            Ok::<(), String>(())
        }
    };
    if args.lines {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let line = line.map_err(|e| e.to_string())?;
            send(&client, message(Bytes::from(line))).await?;
        }
    } else {
        let payload = if let Some(m) = &args.message {
            Bytes::from(m.clone())
        } else if let Some(f) = &args.file {
            Bytes::from(std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?)
        } else if args.stdin {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                .map_err(|e| e.to_string())?;
            Bytes::from(buf)
        } else if args.null {
            Bytes::new()
        } else {
            return Err("give a message: -m, -f, -l, -s or -n".into());
        };
        for i in 0..args.repeat.max(1) {
            if i > 0 && args.repeat_delay > 0.0 {
                tokio::time::sleep(Duration::from_secs_f64(args.repeat_delay)).await;
            }
            send(&client, message(payload.clone())).await?;
        }
    }
    client.disconnect().await.map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

/// `petrel sub`.
pub(crate) fn subscribe(args: SubArgs) -> ExitCode {
    let quiet = args.common.quiet;
    let result = runtime().and_then(|rt| rt.block_on(run_sub(args)));
    finish(result, quiet, "petrel sub")
}

async fn run_sub(args: SubArgs) -> Result<ExitCode, String> {
    let (options, url_topic) = options(&args.common, "petrel_sub_")?;
    let protocol = options.protocol;
    let topics: Vec<String> = args.topics.iter().cloned().chain(url_topic).collect();
    if topics.is_empty() {
        return Err("give a topic filter: -t, or the path of an -L URL".into());
    }
    let q = qos(args.qos)?;
    let retain_handling = match args.retain_handling {
        0 => RetainHandling::SendOnSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        n => return Err(format!("--retain-handling must be 0, 1 or 2, not {n}")),
    };
    let mut subscriptions = Vec::new();
    for t in &topics {
        let mut o = SubscriptionOptions::qos(q);
        o.no_local = args.no_local;
        o.retain_as_published = args.retain_as_published;
        o.retain_handling = retain_handling;
        subscriptions.push(Subscription {
            filter: TopicFilter::try_from(t.as_str()).map_err(|e| format!("topic {t}: {e}"))?,
            options: o,
        });
    }
    // -T filters, matched by the broker's own subscription trie.
    let mut filter_out = SubscriptionTree::new();
    for f in &args.filter_out {
        let filter = TopicFilter::try_from(f.as_str()).map_err(|e| format!("filter {f}: {e}"))?;
        filter_out.insert(&filter, (), ());
    }
    let mut props = properties(&args.common, "subscribe", protocol)?;
    if let Some(id) = args.subscription_id {
        if !protocol.is_v5() {
            return Err("--subscription-id needs -V 5".into());
        }
        let id = SubscriptionId::new(id).ok_or("subscription id: 1 to 268435455")?;
        props.push_subscription_identifier(id);
    }
    let deadline = args
        .timeout
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let (client, mut messages) = connect(options).await.map_err(|e| e.to_string())?;
    let ack = client
        .subscribe_many(subscriptions, props)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(rc) = ack.reason_codes.iter().find(|rc| rc.is_error()) {
        return Err(format!("subscription refused: {rc}"));
    }
    if !args.unsubscribe.is_empty() {
        let filters: Vec<&str> = args.unsubscribe.iter().map(String::as_str).collect();
        client
            .unsubscribe(&filters)
            .await
            .map_err(|e| e.to_string())?;
    }
    if args.exit_after_subscribe {
        client.disconnect().await.map_err(|e| e.to_string())?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    let mut printed: u64 = 0;
    loop {
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d, messages.recv()).await {
                Ok(m) => m,
                Err(_) => {
                    let _ = client.disconnect().await;
                    if !args.common.quiet {
                        eprintln!("Timed out");
                    }
                    return Ok(ExitCode::from(27));
                }
            },
            None => messages.recv().await,
        };
        let Some(m) = next else {
            return Err("connection lost".into());
        };
        if args.retained_only && !m.retain {
            break;
        }
        if args.no_retained && m.retain {
            continue;
        }
        if filtered_out(&filter_out, m.topic.as_str()) {
            continue;
        }
        let text = render(&args, &m);
        out.write_all(&text).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
        printed += 1;
        if args.count.is_some_and(|c| printed >= c) {
            break;
        }
    }
    client.disconnect().await.map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

/// Whether `topic` matches one of the `-T` filters (4.7: `+` one level,
/// `#` the rest, no leading wildcard for `$` topics).
fn filtered_out(filters: &SubscriptionTree<(), ()>, topic: &str) -> bool {
    let mut found = false;
    filters.matches(topic, |_| found = true);
    found
}

fn render(args: &SubArgs, m: &Publish) -> Vec<u8> {
    let mut out = Vec::new();
    match &args.format {
        Some(f) => format_message(f, m, &mut out),
        None => {
            if args.verbose {
                out.extend_from_slice(m.topic.as_str().as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(&m.payload);
        }
    }
    if !args.no_newline {
        out.push(b'\n');
    }
    out
}

fn format_message(format: &str, m: &Publish, out: &mut Vec<u8>) {
    let p = &m.properties;
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => match chars.next() {
                Some('t') => out.extend_from_slice(m.topic.as_str().as_bytes()),
                Some('p') => out.extend_from_slice(&m.payload),
                Some('x') => {
                    for b in m.payload.iter() {
                        out.extend_from_slice(format!("{b:02x}").as_bytes());
                    }
                }
                Some('l') => out.extend_from_slice(m.payload.len().to_string().as_bytes()),
                Some('q') => out.extend_from_slice((m.qos.qos() as u8).to_string().as_bytes()),
                Some('r') => out.push(if m.retain { b'1' } else { b'0' }),
                Some('m') => {
                    let id = m.qos.packet_id().map_or(0, |p| p.get());
                    out.extend_from_slice(id.to_string().as_bytes());
                }
                Some('U') => {
                    let now = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default();
                    out.extend_from_slice(
                        format!("{}.{:09}", now.as_secs(), now.subsec_nanos()).as_bytes(),
                    );
                }
                Some('I') => out.extend_from_slice(iso8601(SystemTime::now()).as_bytes()),
                Some('P') => {
                    let users: Vec<String> = p
                        .user_properties()
                        .iter()
                        .map(|u| format!("{}:{}", u.key.as_str(), u.value.as_str()))
                        .collect();
                    out.extend_from_slice(users.join(" ").as_bytes());
                }
                Some('C') => {
                    if let Some(ct) = p.content_type() {
                        out.extend_from_slice(ct.as_str().as_bytes());
                    }
                }
                Some('R') => {
                    if let Some(rt) = p.response_topic() {
                        out.extend_from_slice(rt.as_str().as_bytes());
                    }
                }
                Some('D') => {
                    if let Some(cd) = p.correlation_data() {
                        out.extend_from_slice(&cd);
                    }
                }
                Some('E') => {
                    if let Some(e) = p.message_expiry_interval() {
                        out.extend_from_slice(e.to_string().as_bytes());
                    }
                }
                Some('F') => {
                    if let Some(f) = p.payload_format_indicator() {
                        out.push(if f { b'1' } else { b'0' });
                    }
                }
                Some('S') => {
                    let ids: Vec<String> = p
                        .subscription_identifiers()
                        .iter()
                        .map(|i| i.get().to_string())
                        .collect();
                    out.extend_from_slice(ids.join(",").as_bytes());
                }
                Some('%') => out.push(b'%'),
                Some(other) => {
                    out.push(b'%');
                    out.extend_from_slice(other.to_string().as_bytes());
                }
                None => out.push(b'%'),
            },
            '\\' => match chars.next() {
                Some('n') => out.push(b'\n'),
                Some('t') => out.push(b'\t'),
                Some('\\') => out.push(b'\\'),
                Some(other) => {
                    out.push(b'\\');
                    out.extend_from_slice(other.to_string().as_bytes());
                }
                None => out.push(b'\\'),
            },
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

/// UTC time as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
fn iso8601(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_as_4_7_says() {
        let matches = |f: &str, t: &str| {
            let mut tree = SubscriptionTree::new();
            tree.insert(&TopicFilter::try_from(f).unwrap(), (), ());
            filtered_out(&tree, t)
        };
        assert!(matches("a/+/c", "a/b/c"));
        assert!(matches("sport/#", "sport"));
        assert!(matches("#", "a/b"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("a/+", "a/b/c"));
    }

    #[test]
    fn cipher_names_in_either_spelling_map_to_ring_suites() {
        assert_eq!(
            cipher_suites("TLS13_AES_128_GCM_SHA256:ecdhe-ecdsa-aes128-gcm-sha256").unwrap(),
            vec![
                CipherSuite::TLS13_AES_128_GCM_SHA256,
                CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            ]
        );
        assert_eq!(
            cipher_suites("TLS_AES_256_GCM_SHA384::TLS13_AES_256_GCM_SHA384").unwrap(),
            vec![CipherSuite::TLS13_AES_256_GCM_SHA384]
        );
        let e = cipher_suites("TLS13_AES_128_GCM_SHA256:RC4-MD5").unwrap_err();
        assert!(e.contains("unknown cipher suite RC4-MD5"), "{e}");
        assert!(
            e.contains("ECDHE-RSA-AES128-GCM-SHA256"),
            "lists the known: {e}"
        );
        assert!(cipher_suites(":").is_err());
        // Every name the table knows is one the client's provider has.
        #[allow(deprecated)]
        let ring = petrel_client::rustls::crypto::ring::default_provider();
        for (_, _, suite) in CIPHERS {
            assert!(
                ring.cipher_suites.iter().any(|s| s.suite() == *suite),
                "{suite:?}"
            );
        }
        assert_eq!(CIPHERS.len(), ring.cipher_suites.len());
    }

    #[test]
    fn tls_versions_and_url_topics() {
        assert_eq!(tls_versions("tlsv1.3").unwrap(), vec![TlsVersion::Tls13]);
        assert_eq!(
            tls_versions("TLSv1.2").unwrap(),
            vec![TlsVersion::Tls12, TlsVersion::Tls13]
        );
        assert!(tls_versions("tlsv1.1").is_err());
        let split = |u: &str| split_url(u);
        assert_eq!(
            split("mqtt://u:p@h:1/a/b/#"),
            ("mqtt://u:p@h:1".into(), Some("a/b/#".into()))
        );
        assert_eq!(split("mqtts://h"), ("mqtts://h".into(), None));
        assert_eq!(split("mqtt://h/"), ("mqtt://h".into(), None));
        assert_eq!(split("quic://h/t"), ("quic://h".into(), Some("t".into())));
        assert_eq!(split("ws://h/mqtt"), ("ws://h/mqtt".into(), None));
        assert_eq!(split("unix:///run/s"), ("unix:///run/s".into(), None));
    }

    #[test]
    fn iso8601_renders_a_known_instant() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(iso8601(t), "2023-11-14T22:13:20.000000Z");
    }
}

/// A cluster node's membership on the admin API (`/api/v1/cluster`).
#[derive(Debug)]
pub(crate) struct ClusterMembership(pub(crate) petrel_cluster::Cluster);

impl petrel_admin::Membership for ClusterMembership {
    fn status(&self) -> serde_json::Value {
        let c = &self.0;
        let (voters, learners) = c.members();
        serde_json::json!({
            "node": c.node_id(),
            "leader": c.leader(),
            "quorum": c.has_quorum(),
            "voters": voters,
            "learners": learners,
        })
    }

    fn join(&self, id: u64, addr: String) -> petrel_admin::MembershipChange {
        let c = self.0.clone();
        Box::pin(async move { c.join(id, &addr).await })
    }

    fn leave(&self, id: u64) -> petrel_admin::MembershipChange {
        let c = self.0.clone();
        Box::pin(async move { c.leave(id).await })
    }
}

/// A cluster node's figures on `/metrics`, beside the broker's.
#[derive(Debug)]
pub(crate) struct ClusterMetrics(pub(crate) petrel_cluster::Cluster);

impl petrel_admin::ExtraMetrics for ClusterMetrics {
    fn families(&self) -> Vec<petrel_admin::Family> {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.0;
        let metrics = c.metrics();
        let (term, applied, last_log, members) = metrics.as_ref().map_or((0, 0, 0, 0), |m| {
            (
                m.current_term,
                m.last_applied.map_or(0, |l| l.index),
                m.last_log_index.unwrap_or(0),
                m.membership_config.membership().voter_ids().count() as u64,
            )
        });
        let k = c.counters();
        // Name, help, whether a counter, value.
        let rows: [(&str, &str, bool, u64); 15] = [
            ("node", "This node's number", false, c.node_id()),
            ("leader", "The leader this node knows (0: none)", false, c.leader().unwrap_or(0)),
            ("quorum", "1 while this node can agree new routes and takeovers", false, u64::from(c.has_quorum())),
            ("term", "The Raft term", false, term),
            ("members", "Voting members", false, members),
            ("raft_last_log_index", "The last entry of this node's Raft log", false, last_log),
            ("raft_applied_index", "The last entry this node applied", false, applied),
            ("routes", "Node-filter routes this node has applied", false, c.route_count() as u64),
            ("sessions_owned", "Client ids whose session has an owner node", false, c.owned_sessions() as u64),
            ("sessions_moving", "Sessions this node is handing on now", false, c.moving_sessions() as u64),
            ("forwarded", "Messages sent to other nodes (once per node)", true, k.forwarded.load(Relaxed)),
            ("received", "Messages taken from other nodes", true, k.received.load(Relaxed)),
            ("lost", "Messages for a node that was down, did not answer in time, or was past its queue (QoS 0)", true, k.lost.load(Relaxed)),
            ("refused", "QoS 1/2 messages refused to their publisher: a peer's queue was full", true, k.refused.load(Relaxed)),
            ("route_writes", "Route and ownership changes written (batches)", true, k.route_writes.load(Relaxed)),
        ];
        rows.into_iter()
            .map(|(name, help, counter, value)| petrel_admin::Family {
                name: format!("petrel_cluster_{name}"),
                help: help.to_string(),
                counter,
                samples: vec![(Vec::new(), value)],
            })
            .collect()
    }
}
