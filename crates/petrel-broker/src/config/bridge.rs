//! `[[bridge]]`: a connection to another broker that forwards topics both
//! ways (the `petrel-bridge` crate runs it). The topic rules are written
//! as Mosquitto's `topic` lines, so they can be copied over.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One `[[bridge]]` table.
///
/// ```toml
/// [[bridge]]
/// name = "central"
/// address = "central.example.com:8883"   # or addresses = ["a:1883", "b:1883"]
/// transport = "tls"
/// ca_file = "/etc/petrel/central-ca.pem"
/// protocol = "5.0"
/// username = "edge-7"
/// password = "secret"
/// topic = ["sensors/# out 1", "cmd/# in 1 local/ remote/"]
/// ```
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// Its name: in logs, metrics, the notification topic and the local
    /// session's client id. Letters, digits, `-`, `_` and `.`.
    pub name: String,
    /// The remote broker, `host:port`.
    #[serde(default)]
    pub address: Option<String>,
    /// Several addresses of the remote, tried in turn when one fails; while
    /// connected to a later one, the first is checked every
    /// `primary_check` seconds and the bridge moves back when it answers.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// `tcp` (default), `tls`, `ws`, `wss` or `quic` (not `unix`).
    #[serde(default)]
    pub transport: super::TransportKind,
    /// The WebSocket path (`ws`, `wss`). Default `/mqtt`.
    #[serde(default = "default_ws_path")]
    pub ws_path: String,
    /// MQTT version spoken to the remote: `3.1.1` or `5.0` (default).
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// Client identifier at the remote. Default `<host name>.<name>`, as
    /// Mosquitto's.
    #[serde(default)]
    pub client_id: Option<String>,
    /// User name at the remote.
    #[serde(default)]
    pub username: Option<String>,
    /// Password at the remote.
    #[serde(default)]
    pub password: Option<String>,
    /// Keep alive with the remote, in seconds. Default 60.
    #[serde(default = "default_keep_alive")]
    pub keep_alive: u64,
    /// Start a new session at the remote on every connection. Default
    /// false: the remote keeps the bridge's subscriptions and, for QoS 1/2,
    /// its messages while the link is down, and QoS 2 stays exactly once
    /// across a reconnect.
    #[serde(default)]
    pub clean_start: bool,
    /// 5.0 Session Expiry Interval asked of the remote (seconds) when not
    /// `clean_start`. Default 86400.
    #[serde(default = "default_session_expiry")]
    pub session_expiry: u32,
    /// Topic rules, Mosquitto's `topic` syntax:
    /// `"pattern [out|in|both [qos [local-prefix remote-prefix]]]"`. The
    /// local topic is `local-prefix` + the part matched by `pattern`, the
    /// remote one `remote-prefix` + that part; `""` stands for an empty
    /// pattern or prefix. Direction defaults to `out`, QoS to 0.
    pub topic: Vec<String>,
    /// Keep the retain flag of forwarded messages (retained messages stay
    /// retained on the other side). Default true.
    #[serde(default = "yes")]
    pub forward_retained: bool,
    /// Publish the link's state, retained, on `notification_topic` in the
    /// local broker: `1` when connected, `0` when not. Default true.
    #[serde(default = "yes")]
    pub notifications: bool,
    /// Where the state goes. Default
    /// `$SYS/broker/connection/<client id>/state`, as Mosquitto's.
    #[serde(default)]
    pub notification_topic: Option<String>,
    /// CA certificates (PEM) the remote's certificate is checked against
    /// (`tls`, `wss`, `quic`); default the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Client certificate's private key (PEM).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name the remote's certificate must carry, if not its host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Messages waiting to go to the remote, at most (the bridge's local
    /// session queue). Past it, new messages for the remote are dropped and
    /// counted (`petrel_bridge_dropped_total`); messages already taken
    /// (in flight to the remote) are never dropped. Default 100,000.
    #[serde(default = "default_queue_messages")]
    pub queue_max_messages: usize,
    /// Bytes waiting to go to the remote, at most; as `queue_max_messages`.
    /// Default 256 MiB.
    #[serde(default = "default_queue_bytes")]
    pub queue_max_bytes: usize,
    /// QoS 1/2 messages in flight each way at once. Default 100.
    #[serde(default = "default_inflight")]
    pub inflight: u16,
    /// First wait before reconnecting, in milliseconds; it doubles with
    /// each failure (with jitter) up to `reconnect_max`. Default 500.
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_ms: u64,
    /// Longest wait before reconnecting, in seconds. Default 60.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_s: u64,
    /// Seconds between checks of the first address while connected to a
    /// later one. Default 60.
    #[serde(default = "default_primary_check")]
    pub primary_check: u64,
}

/// Which way a topic rule forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Local to remote.
    Out,
    /// Remote to local.
    In,
    /// Both.
    Both,
}

impl Direction {
    /// Whether it forwards local messages to the remote.
    pub fn out(self) -> bool {
        matches!(self, Self::Out | Self::Both)
    }

    /// Whether it forwards remote messages to the local broker.
    pub fn r#in(self) -> bool {
        matches!(self, Self::In | Self::Both)
    }
}

/// One parsed `topic` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicRule {
    /// The pattern (a topic filter, possibly empty).
    pub pattern: String,
    /// Which way it forwards.
    pub direction: Direction,
    /// The QoS of the subscriptions it makes (the most messages keep).
    pub qos: u8,
    /// Prefix of the topics on the local side.
    pub local_prefix: String,
    /// Prefix of the topics on the remote side.
    pub remote_prefix: String,
}

impl TopicRule {
    /// Parse one Mosquitto `topic` line (without the word `topic`).
    pub fn parse(line: &str) -> Result<Self, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let unquote = |w: &str| {
            if w == "\"\"" {
                String::new()
            } else {
                w.to_string()
            }
        };
        let Some(pattern) = words.first().map(|w| unquote(w)) else {
            return Err("an empty topic rule".into());
        };
        let direction = match words.get(1).copied() {
            None | Some("out") => Direction::Out,
            Some("in") => Direction::In,
            Some("both") => Direction::Both,
            Some(other) => return Err(format!("`{other}` is not a direction (out, in, both)")),
        };
        let qos = match words.get(2).copied() {
            None => 0,
            Some(q @ ("0" | "1" | "2")) => q.parse().unwrap_or(0),
            Some(other) => return Err(format!("`{other}` is not a QoS (0, 1, 2)")),
        };
        let (local_prefix, remote_prefix) = match &words[words.len().min(3)..] {
            [] => (String::new(), String::new()),
            [l, r] => (unquote(l), unquote(r)),
            _ => {
                return Err(
                    "after the QoS come two prefixes, local then remote (\"\" for none)".into(),
                )
            }
        };
        if pattern.is_empty() && local_prefix.is_empty() && remote_prefix.is_empty() {
            return Err("an empty pattern needs a prefix".into());
        }
        for p in [&local_prefix, &remote_prefix] {
            if p.contains(['+', '#']) {
                return Err(format!("the prefix `{p}` holds a wildcard"));
            }
        }
        let rule = Self {
            pattern,
            direction,
            qos,
            local_prefix,
            remote_prefix,
        };
        for (side, f) in [
            ("local", rule.local_filter()),
            ("remote", rule.remote_filter()),
        ] {
            petrel_codec::TopicFilter::try_from(f.as_str())
                .map_err(|e| format!("the {side} filter `{f}` is not valid: {e}"))?;
        }
        Ok(rule)
    }

    /// The filter subscribed to on the local side.
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.pattern)
    }

    /// The filter subscribed to on the remote side.
    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.pattern)
    }
}

impl BridgeConfig {
    /// The remote's addresses, in the order they are tried.
    pub fn all_addresses(&self) -> Vec<String> {
        self.address
            .iter()
            .chain(self.addresses.iter())
            .cloned()
            .collect()
    }

    /// Its topic rules, parsed.
    pub fn rules(&self) -> Result<Vec<TopicRule>, String> {
        self.topic
            .iter()
            .map(|t| TopicRule::parse(t).map_err(|e| format!("`{t}`: {e}")))
            .collect()
    }

    /// Check every value; the error names the bridge.
    pub fn validate(&self) -> Result<(), String> {
        let ok_name = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok_name {
            return Err(format!(
                "bridge name `{}`: use letters, digits, `-`, `_` and `.`",
                self.name
            ));
        }
        let at = |e: String| format!("bridge `{}`: {e}", self.name);
        let addresses = self.all_addresses();
        if addresses.is_empty() {
            return Err(at("needs `address` or `addresses`".into()));
        }
        if self.address.is_some() && !self.addresses.is_empty() {
            return Err(at("give `address` or `addresses`, not both".into()));
        }
        for a in &addresses {
            split_address(a).map_err(at)?;
        }
        if !matches!(self.protocol.as_str(), "3.1.1" | "5.0") {
            return Err(at(format!(
                "protocol `{}`: `3.1.1` or `5.0`",
                self.protocol
            )));
        }
        if self.topic.is_empty() {
            return Err(at("needs at least one `topic` rule".into()));
        }
        self.rules().map_err(at)?;
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(at("`cert_file` and `key_file` go together".into()));
        }
        if self.transport == super::TransportKind::Unix {
            return Err(at(
                "transport `unix`: a bridge reaches its remote over tcp, tls, ws, wss or quic"
                    .into(),
            ));
        }
        if !self.transport.is_tls() && (self.ca_file.is_some() || self.cert_file.is_some()) {
            return Err(at(
                "certificates need `transport = \"tls\"`, `\"wss\"` or `\"quic\"`".into(),
            ));
        }
        if self.queue_max_messages == 0 || self.queue_max_bytes == 0 {
            return Err(at(
                "`queue_max_messages` and `queue_max_bytes` must be at least 1".into(),
            ));
        }
        if self.inflight == 0 {
            return Err(at("`inflight` must be at least 1".into()));
        }
        if self.keep_alive > u64::from(u16::MAX) {
            return Err(at("`keep_alive` is at most 65535 seconds".into()));
        }
        if self.reconnect_min_ms == 0 || self.reconnect_max_s * 1000 < self.reconnect_min_ms {
            return Err(at(
                "`reconnect_min_ms` must be at least 1 and at most `reconnect_max_s`".into(),
            ));
        }
        if let Some(t) = &self.notification_topic {
            petrel_codec::TopicName::try_from(t.as_str())
                .map_err(|e| at(format!("notification_topic `{t}`: {e}")))?;
        }
        Ok(())
    }
}

/// `host:port` (a bracketed IPv6 address too) as its host and port.
pub fn split_address(address: &str) -> Result<(String, u16), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("address `{address}` needs a port (`host:port`)"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("address `{address}`: `{port}` is not a port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(format!("address `{address}` needs a host and a port"));
    }
    Ok((host.to_string(), port))
}

fn default_ws_path() -> String {
    "/mqtt".into()
}

fn default_protocol() -> String {
    "5.0".into()
}

fn default_keep_alive() -> u64 {
    60
}

fn default_session_expiry() -> u32 {
    86_400
}

fn yes() -> bool {
    true
}

fn default_queue_messages() -> usize {
    100_000
}

fn default_queue_bytes() -> usize {
    256 * 1024 * 1024
}

fn default_inflight() -> u16 {
    100
}

fn default_reconnect_min() -> u64 {
    500
}

fn default_reconnect_max() -> u64 {
    60
}

fn default_primary_check() -> u64 {
    60
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mosquitto_topic_lines() {
        let r = TopicRule::parse("sensors/# out 1").unwrap();
        assert_eq!(r.direction, Direction::Out);
        assert_eq!(r.qos, 1);
        assert_eq!(r.local_filter(), "sensors/#");
        assert_eq!(r.remote_filter(), "sensors/#");
        let r = TopicRule::parse("cmd/# in 2 local/ remote/").unwrap();
        assert_eq!(r.direction, Direction::In);
        assert_eq!(r.local_filter(), "local/cmd/#");
        assert_eq!(r.remote_filter(), "remote/cmd/#");
        let r = TopicRule::parse("\"\" both 0 here/state there/state").unwrap();
        assert_eq!(r.local_filter(), "here/state");
        let r = TopicRule::parse("a/b").unwrap();
        assert_eq!((r.direction, r.qos), (Direction::Out, 0));
        for bad in [
            "",
            "a/# sideways",
            "a/# out 3",
            "a/# out 1 onlyone/",
            "a/# out 1 l/+ r/",
            "\"\" out 1 \"\" \"\"",
            "a/#/b",
        ] {
            assert!(TopicRule::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bridge_tables_are_checked() {
        let parse = |t: &str| crate::BrokerConfig::from_toml(&format!("[[bridge]]\n{t}\n"));
        let ok = parse("name = \"c\"\naddress = \"h:1883\"\ntopic = [\"a/# both 2\"]").unwrap();
        let b = &ok.bridges[0];
        assert_eq!(b.protocol, "5.0");
        assert!(!b.clean_start && b.forward_retained && b.notifications);
        for (bad, says) in [
            ("name = \"c\"\naddress = \"h\"\ntopic = [\"a\"]", "port"),
            ("name = \"c\"\ntopic = [\"a\"]", "address"),
            (
                "name = \"c d\"\naddress = \"h:1\"\ntopic = [\"a\"]",
                "letters",
            ),
            (
                "name = \"c\"\naddress = \"h:1\"\ntopic = [\"a up\"]",
                "direction",
            ),
            ("name = \"c\"\naddress = \"h:1\"\ntopic = []", "topic"),
            (
                "name = \"c\"\naddress = \"h:1\"\nprotocol = \"4\"\ntopic = [\"a\"]",
                "3.1.1",
            ),
            (
                "name = \"c\"\naddress = \"h:1\"\nca_file = \"x\"\ntopic = [\"a\"]",
                "tls",
            ),
            (
                "name = \"c\"\naddress = \"h:1\"\nqueue_max_messages = 0\ntopic = [\"a\"]",
                "queue",
            ),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let two = crate::BrokerConfig::from_toml(
            "[[bridge]]\nname = \"c\"\naddress = \"h:1\"\ntopic = [\"a\"]\n\
             [[bridge]]\nname = \"c\"\naddress = \"h:2\"\ntopic = [\"b\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(two.contains("two bridges"), "{two}");
    }

    #[test]
    fn addresses() {
        assert_eq!(
            split_address("h.example:1883").unwrap(),
            ("h.example".to_string(), 1883)
        );
        assert_eq!(
            split_address("[::1]:8883").unwrap(),
            ("::1".to_string(), 8883)
        );
        assert!(split_address("nohost").is_err());
        assert!(split_address("h:notaport").is_err());
        assert!(split_address(":1883").is_err());
    }
}
