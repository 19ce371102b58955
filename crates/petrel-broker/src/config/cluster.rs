//! `[cluster]`: this broker as one node of a cluster (the `petrel-cluster`
//! crate runs it).

use serde::{Deserialize, Serialize};

/// The `[cluster]` table.
///
/// ```toml
/// [cluster]
/// node_id = 1
/// bind = "10.0.0.1:7883"                  # node-to-node traffic
/// peers = ["1@10.0.0.1:7883", "2@10.0.0.2:7883", "3@10.0.0.3:7883"]
/// secret = "a long random string"          # or secret_file = "/etc/petrel/cluster.key"
/// ```
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's number, unique in the cluster (not 0).
    pub node_id: u64,
    /// Where this node listens for the other nodes, `host:port`.
    pub bind: String,
    /// The voting nodes, `ID@HOST:PORT`, this node among them or not. The
    /// cluster is formed of them the first time they start. A node they
    /// do not name forms nothing: it links to them and waits to be added
    /// (`petrel cluster join`).
    pub peers: Vec<String>,
    /// The secret every node proves it knows before another node reads
    /// anything from it. Required unless `bind` is a loopback address.
    #[serde(default)]
    pub secret: Option<String>,
    /// A file holding the secret (its whitespace trimmed).
    #[serde(default)]
    pub secret_file: Option<std::path::PathBuf>,
    /// Messages waiting for one peer at most, and as many more sent to it
    /// and not yet answered; past that a QoS 0 message for that peer is
    /// dropped (and counted) and a QoS 1/2 one refused to its publisher
    /// (5.0: 0x83 Implementation specific error; 3.1.1: not acknowledged,
    /// the connection closes and the client sends it again).
    #[serde(default = "default_peer_queue")]
    pub peer_queue: usize,
    /// Milliseconds between the leader's heartbeats.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_ms: u64,
    /// Milliseconds without a heartbeat before a node stands for leader
    /// (each waits a random time between this and twice it).
    #[serde(default = "default_election")]
    pub election_timeout_ms: u64,
    /// Seconds a route change (a new subscription's) may wait for the
    /// cluster to agree. Past it the SUBACK goes anyway (the subscription
    /// works on this node) and the node writes all its routes again once
    /// the cluster answers. (A node that can't reach a majority refuses
    /// such a subscription at once instead.)
    #[serde(default = "default_route_timeout")]
    pub route_timeout: u64,
    /// Seconds a node waits for a peer to take a forwarded message before
    /// counting it as lost to that peer (its publisher is acknowledged).
    #[serde(default = "default_forward_timeout")]
    pub forward_timeout: u64,
    /// The largest node-to-node frame, bytes.
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: usize,
    /// Raft log entries between snapshots of the routes; the log before a
    /// snapshot (but the last half of this many entries) is dropped, and a
    /// node that was away longer catches up from the snapshot.
    #[serde(default = "default_snapshot_logs")]
    pub snapshot_logs: u64,
    /// Connections to `bind` still proving the secret, at most (each
    /// has 2 s); past it a new one is closed at once.
    #[serde(default = "default_pending_links")]
    pub max_pending_links: usize,
    /// Where a shared subscription group has members on several nodes, a
    /// message published on one of them goes to a member there (no hop
    /// between nodes), rather than to each node with members in turn
    /// (the default, which spreads the group's load evenly across its
    /// nodes).
    #[serde(default)]
    pub shared_local: bool,
}

fn default_peer_queue() -> usize {
    100_000
}
fn default_heartbeat() -> u64 {
    200
}
fn default_election() -> u64 {
    1_000
}
fn default_route_timeout() -> u64 {
    10
}
fn default_forward_timeout() -> u64 {
    5
}
fn default_pending_links() -> usize {
    64
}
fn default_snapshot_logs() -> u64 {
    5_000
}
fn default_max_frame() -> usize {
    300 * 1024 * 1024
}

impl ClusterConfig {
    /// The peers as (id, address), or what is wrong with one.
    pub fn peer_list(&self) -> Result<Vec<(u64, String)>, String> {
        let mut out: Vec<(u64, String)> = Vec::new();
        for p in &self.peers {
            let (id, addr) = p
                .split_once('@')
                .ok_or_else(|| format!("peer `{p}` is not ID@HOST:PORT"))?;
            let id: u64 = id
                .parse()
                .map_err(|_| format!("peer `{p}`: `{id}` is not a node number"))?;
            if id == 0 {
                return Err(format!("peer `{p}`: node numbers start at 1"));
            }
            if out.iter().any(|(i, _)| *i == id) {
                return Err(format!("node {id} is named twice in peers"));
            }
            out.push((id, addr.to_string()));
        }
        Ok(out)
    }

    /// Whether `bind` is on a loopback address.
    pub fn is_local(&self) -> bool {
        self.bind
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback())
    }

    /// The secret: from `secret`, or read from `secret_file`; empty where
    /// neither is given (allowed on loopback only).
    pub fn load_secret(&self) -> Result<Vec<u8>, String> {
        match (&self.secret, &self.secret_file) {
            (Some(_), Some(_)) => Err("give secret or secret_file, not both".into()),
            (Some(s), None) => Ok(s.as_bytes().to_vec()),
            (None, Some(f)) => std::fs::read_to_string(f)
                .map(|s| s.trim().as_bytes().to_vec())
                .map_err(|e| format!("secret_file {}: {e}", f.display())),
            (None, None) => Ok(Vec::new()),
        }
    }

    /// Check the table.
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id == 0 {
            return Err("node_id: node numbers start at 1".into());
        }
        // A node the peers do not name joins a cluster they form: it
        // needs one of them to link to.
        if self.peer_list()?.is_empty() {
            return Err("peers must name the cluster's voters".into());
        }
        let secret = self.load_secret()?;
        if secret.is_empty() && !self.is_local() {
            return Err(format!(
                "bind {} can be reached from other machines: set secret or secret_file",
                self.bind
            ));
        }
        if !secret.is_empty() && secret.len() < 16 {
            return Err("secret: at least 16 bytes".into());
        }
        if self.heartbeat_ms == 0 || self.election_timeout_ms <= self.heartbeat_ms {
            return Err("election_timeout_ms must be more than heartbeat_ms (not 0)".into());
        }
        if self.max_pending_links == 0 {
            return Err("max_pending_links: at least 1".into());
        }
        if self.snapshot_logs < 2 {
            return Err("snapshot_logs: at least 2".into());
        }
        if self.peer_queue == 0 {
            return Err("peer_queue: at least 1".into());
        }
        Ok(())
    }
}
