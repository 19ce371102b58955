//! One node: its Raft, its listener for the other nodes, its links to
//! them, and the broker seam ([`Peers`]) through which the broker tells it
//! of subscriptions and messages.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use openraft::error::{NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use petrel_broker::config::ClusterConfig;
use petrel_broker::core::store::{decode_message, encode_message};
use petrel_broker::{Broker, Commit, Forwarded, Peers, SharedGroups, Store, Ticket};
use petrel_codec::QoS;
use petrel_session::Message;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Notify};

mod members;
mod owners;

use crate::net::{self, Frame, Link, Request, Response};
use crate::store::{LogStore, StateMachine};
use crate::sync::{lock, read};
use crate::types::{Applied, Command, Move, NodeId, Origin, Proposal, Routes, TypeConfig};
use owners::{adopt, claim_session, hand_on, hand_on_held};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `[cluster]` is not usable.
    #[error("cluster: {0}")]
    Config(String),
    /// Its store or listener failed.
    #[error("cluster: {0}")]
    Io(#[from] io::Error),
    /// Raft would not start.
    #[error("cluster: raft: {0}")]
    Raft(String),
}

/// Counters of a node's traffic with the others.
#[derive(Debug, Default)]
pub struct ClusterCounters {
    /// Messages sent to other nodes (once per node).
    pub forwarded: AtomicU64,
    /// Messages taken from other nodes.
    pub received: AtomicU64,
    /// Messages for a node that was down, not taken in time, or past its
    /// queue (QoS 0), so not delivered there.
    pub lost: AtomicU64,
    /// QoS 1/2 messages refused to their publisher: a peer's queue was
    /// full.
    pub refused: AtomicU64,
    /// Route changes written (batches).
    pub route_writes: AtomicU64,
}

/// A node of a cluster. Made before the broker (whose builder takes its
/// [`Cluster::peers`]), started once the broker is built.
#[derive(Clone, Debug)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    me: NodeId,
    config: ClusterConfig,
    secret: Arc<Vec<u8>>,
    /// The voters `peers` names: the cluster is formed of them the first
    /// time they start (if this node is one of them).
    configured: BTreeMap<NodeId, String>,
    routes: Arc<RwLock<Routes>>,
    /// The other nodes: those `peers` names, then every node of the
    /// membership (voters and learners) as it changes.
    links: RwLock<BTreeMap<NodeId, Arc<PeerLinks>>>,
    /// Message queues made before the node started, whose senders start
    /// with it (`None` once started).
    parked: Mutex<Option<Vec<Parked>>>,
    raft: OnceLock<Raft<TypeConfig>>,
    broker: OnceLock<Broker>,
    changes: Mutex<Changes>,
    wake: Notify,
    counters: ClusterCounters,
    /// The address the listener got (for a `bind` with port 0).
    local_addr: OnceLock<std::net::SocketAddr>,
    /// When each peer last answered this node's consensus messages or
    /// sent it its own.
    heard: Mutex<HashMap<NodeId, Instant>>,
    /// CONNECTs here waiting for their session from the node that had it.
    /// Each with its claim's own number, so a claim removes only its own.
    arrivals: Mutex<HashMap<String, (u64, oneshot::Sender<owners::Arrival>)>>,
    /// Numbers claims' places in `arrivals`.
    next_arrival: AtomicU64,
    /// The ids of the last sessions brought in (a resent one is taken once).
    adopted: Mutex<std::collections::VecDeque<u64>>,
    /// Sessions being handed on from here.
    moving: Mutex<std::collections::HashSet<String>>,
    /// Sessions other nodes took from this one, to hand on.
    moves_rx: Mutex<Option<mpsc::UnboundedReceiver<Move>>>,
    /// This run of the node, above its earlier runs' (set when it
    /// starts): with the numbers of its writes, what makes a write sent
    /// twice applied once, and one of an earlier run never.
    incarnation: AtomicU64,
    /// The last number given to a write, by stream.
    seqs: [AtomicU64; 2],
    /// Retained messages published here, to write.
    retains: Mutex<RetainWrites>,
    /// Wakes [`write_retained`].
    retain_wake: Notify,
    /// The log index of this node's first Reset since it started, once it
    /// has applied it (0 until then): claims at or before it are replays,
    /// which [`owners::hand_on_held`] covers.
    caught_up: AtomicU64,
}

/// A peer's message queue waiting for the node to start: its number,
/// its address, the queue's receiving end, and until when it is down.
type Parked = (
    NodeId,
    String,
    mpsc::Receiver<Outgoing>,
    Arc<Mutex<Option<Instant>>>,
);

/// This node's links to another.
#[derive(Debug)]
struct PeerLinks {
    addr: String,
    /// For consensus (and hand-ons), answered in turn.
    control: Arc<Link>,
    /// Its message queue.
    data: mpsc::Sender<Outgoing>,
    /// Until when it is taken to be down: its link failed, or it left a
    /// frame unanswered for `forward_timeout` (stopped, or cut off with
    /// the connection still open). Meanwhile what is sent to it is given
    /// up on at once, and no shared group's message is given to it.
    down: Arc<Mutex<Option<Instant>>>,
}

impl PeerLinks {
    /// Whether it is not taken to be down now.
    fn up(&self) -> bool {
        lock(&self.down).is_none_or(|t| Instant::now() >= t)
    }
}

impl Inner {
    /// Link to node `id` at `addr` (a new address replaces the old
    /// links): its consensus link, and its message queue with the task
    /// that sends what is queued.
    fn connect(self: &Arc<Self>, id: NodeId, addr: &str) {
        if id == self.me {
            return;
        }
        let mut links = crate::sync::write(&self.links);
        if links.get(&id).is_some_and(|p| p.addr == addr) {
            return;
        }
        let control = Arc::new(Link::new(
            self.me,
            addr.to_string(),
            self.secret.clone(),
            self.config.max_frame_bytes,
        ));
        let (tx, rx) = mpsc::channel(self.config.peer_queue);
        let down = Arc::new(Mutex::new(None));
        links.insert(
            id,
            Arc::new(PeerLinks {
                addr: addr.to_string(),
                control,
                data: tx,
                down: down.clone(),
            }),
        );
        drop(links);
        let parked = (id, addr.to_string(), rx, down);
        match lock(&self.parked).as_mut() {
            Some(waiting) => waiting.push(parked),
            None => {
                tokio::spawn(send_to(self.clone(), parked));
            }
        }
    }

    /// Drop the links to the nodes not in `keep` (what was queued for
    /// one is dropped with its queue).
    fn disconnect_all_but(&self, keep: &BTreeSet<NodeId>) {
        crate::sync::write(&self.links).retain(|id, _| keep.contains(id));
    }

    /// Node `id`'s consensus link.
    fn link(&self, id: NodeId) -> Option<Arc<Link>> {
        read(&self.links).get(&id).map(|p| p.control.clone())
    }

    /// Every other node's consensus link.
    fn all_links(&self) -> Vec<Arc<Link>> {
        read(&self.links)
            .values()
            .map(|p| p.control.clone())
            .collect()
    }

    /// The voters, as this node last applied them (the configured peers
    /// before it knows any).
    fn voters(&self) -> BTreeSet<NodeId> {
        let voters: BTreeSet<NodeId> = self
            .raft
            .get()
            .map(|r| {
                r.metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .collect()
            })
            .unwrap_or_default();
        if voters.is_empty() {
            self.configured.keys().copied().collect()
        } else {
            voters
        }
    }

    fn heard_from(&self, node: NodeId) {
        lock(&self.heard).insert(node, Instant::now());
    }

    /// Whether a route can be agreed now: this node leads and a majority
    /// (itself included) answered it lately, or it follows a leader it
    /// heard from lately.
    fn available(&self) -> bool {
        let recent = Duration::from_millis(self.config.election_timeout_ms * 2);
        let Some(leader) = self
            .raft
            .get()
            .and_then(|r| r.metrics().borrow().current_leader)
        else {
            return false;
        };
        let voters = self.voters();
        let heard = lock(&self.heard);
        if leader == self.me {
            let reached = voters
                .iter()
                .filter(|v| **v == self.me || heard.get(v).is_some_and(|t| t.elapsed() < recent))
                .count();
            reached * 2 > voters.len()
        } else {
            heard.get(&leader).is_some_and(|t| t.elapsed() < recent)
        }
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("me", &self.me)
            .field("configured", &self.configured)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// Route and ownership changes not yet written, and who waits for them.
#[derive(Debug, Default)]
struct Changes {
    add: Vec<String>,
    remove: Vec<String>,
    ticket: Option<Arc<Ticket>>,
    /// The node has (re)started: write all its routes first.
    reset: bool,
    /// Sessions claimed and released (`None`), in order.
    owners: Vec<(String, Option<crate::types::Claimed>)>,
    /// Each awaited claim's place in `owners`, and who waits for its
    /// previous owner.
    claims: Vec<(usize, ClaimAnswer)>,
    /// Client ids of the ownership changes being written: until they are,
    /// a claim of one of them goes through the log too (ordered after
    /// them), and a release of one is written (it may be this node's by
    /// then).
    in_flight: std::collections::HashSet<String>,
}

/// Retained messages to write: each topic with its message (stored form)
/// and the ticket of those who wait for that topic's write.
type RetainBatch = Vec<(String, Vec<u8>, Arc<Ticket>)>;

/// Retained messages not yet written, each topic's last, in order.
#[derive(Debug, Default)]
struct RetainWrites {
    pending: RetainBatch,
    /// Where each topic is in `pending`.
    at: HashMap<String, usize>,
}

impl RetainWrites {
    /// Put `topic`'s message in (replacing the one waiting, whose waiters
    /// wait for this one now), unless that would make more than `max`
    /// topics wait: the ticket of its write, if it went in.
    fn put(&mut self, topic: &str, bytes: Vec<u8>, max: usize) -> Option<Arc<Ticket>> {
        if let Some(&i) = self.at.get(topic) {
            self.pending[i].1 = bytes;
            return Some(self.pending[i].2.clone());
        }
        if self.pending.len() >= max {
            return None;
        }
        let ticket = Arc::new(Ticket::default());
        self.insert((topic.to_string(), bytes, ticket.clone()));
        Some(ticket)
    }

    /// Put `slot` in: in its topic's place if that waits already (which it
    /// replaces), else last.
    fn insert(&mut self, slot: (String, Vec<u8>, Arc<Ticket>)) {
        match self.at.get(&slot.0) {
            Some(&i) => self.pending[i] = slot,
            None => {
                self.at.insert(slot.0.clone(), self.pending.len());
                self.pending.push(slot);
            }
        }
    }

    /// Put `batch`, whose write failed (its waiters told), back before
    /// what came since, which replaces its topics' messages and keeps its
    /// own waiters; at most `max` topics, the oldest dropped past it: how
    /// many were.
    fn put_back(&mut self, batch: RetainBatch, max: usize) -> usize {
        let since = self.take(usize::MAX);
        let keep = max.saturating_sub(since.len()).min(batch.len());
        let dropped = batch.len() - keep;
        for (topic, bytes, _) in batch.into_iter().skip(dropped) {
            self.insert((topic, bytes, Arc::default()));
        }
        for slot in since {
            self.insert(slot);
        }
        dropped
    }

    /// Take what waits, in order, up to about `max_bytes` (one at least).
    fn take(&mut self, max_bytes: usize) -> RetainBatch {
        let mut bytes = 0;
        let n = self
            .pending
            .iter()
            .take_while(|(_, b, _)| {
                let first = bytes == 0;
                bytes += b.len();
                first || bytes <= max_bytes
            })
            .count();
        let batch: RetainBatch = self.pending.drain(..n).collect();
        self.at = self
            .pending
            .iter()
            .enumerate()
            .map(|(i, (t, _, _))| (t.clone(), i))
            .collect();
        batch
    }
}

/// Where a claim's previous owner goes.
type ClaimAnswer = oneshot::Sender<Result<Option<NodeId>, String>>;

/// A message for one peer.
#[derive(Debug)]
struct Outgoing {
    bytes: Arc<Vec<u8>>,
    /// The shared groups the peer serves for it.
    groups: Vec<String>,
    gather: Option<Arc<Gather>>,
}

/// A forwarded QoS 1/2 message's acknowledgement: done when every node it
/// went to has answered (or is given up on).
#[derive(Debug)]
struct Gather {
    left: AtomicUsize,
    ticket: Arc<Ticket>,
}

impl Gather {
    fn one_done(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.ticket.complete(Ok(()));
        }
    }
}

/// How long a forwarded message waits after a peer's link failed before
/// that peer is tried again.
const DOWN_FOR: Duration = Duration::from_secs(1);

impl Cluster {
    /// A node as `config` describes it (not started).
    pub fn new(config: ClusterConfig) -> Result<Self, ClusterError> {
        config.validate().map_err(ClusterError::Config)?;
        let secret = Arc::new(config.load_secret().map_err(ClusterError::Config)?);
        let me = config.node_id;
        let configured: BTreeMap<NodeId, String> = config
            .peer_list()
            .map_err(ClusterError::Config)?
            .into_iter()
            .collect();
        let (moves, moves_rx) = mpsc::unbounded_channel();
        let cluster = Self {
            inner: Arc::new(Inner {
                me,
                secret,
                configured,
                routes: Arc::new(RwLock::new(Routes::new(me, moves))),
                links: RwLock::default(),
                parked: Mutex::new(Some(Vec::new())),
                raft: OnceLock::new(),
                broker: OnceLock::new(),
                changes: Mutex::new(Changes {
                    reset: true,
                    ..Changes::default()
                }),
                wake: Notify::new(),
                counters: ClusterCounters::default(),
                local_addr: OnceLock::new(),
                heard: Mutex::default(),
                arrivals: Mutex::default(),
                next_arrival: AtomicU64::new(1),
                adopted: Mutex::default(),
                moving: Mutex::default(),
                moves_rx: Mutex::new(Some(moves_rx)),
                caught_up: AtomicU64::new(0),
                retains: Mutex::default(),
                retain_wake: Notify::new(),
                incarnation: AtomicU64::new(0),
                seqs: Default::default(),
                config,
            }),
        };
        let inner = &cluster.inner;
        for (id, addr) in &inner.configured {
            inner.connect(*id, addr);
        }
        Ok(cluster)
    }

    /// What the broker's builder takes ([`petrel_broker::BrokerBuilder::peers`]).
    pub fn peers(&self) -> Arc<dyn Peers> {
        Arc::new(Seam(self.inner.clone()))
    }

    /// Start: Raft (from the consensus state in `broker`'s durable store,
    /// which it must have), the listener for the other nodes, and the
    /// tasks that write routes and forward messages. The first time the
    /// members start, the cluster is formed of them.
    pub async fn start(&self, broker: Broker) -> Result<(), ClusterError> {
        let inner = &self.inner;
        // A node that forgets its vote can vote twice in a term.
        let store: Arc<dyn Store> = broker.store().ok_or_else(|| {
            ClusterError::Config(
                "a node of a cluster keeps its consensus state in the broker's durable store: give the broker one (data_dir)".into(),
            )
        })?;
        let _ = inner.broker.set(broker);
        let run = crate::store::next_run(&*store).await?;
        inner.incarnation.store(run, Ordering::Relaxed);
        let log = LogStore::open(store.clone())?;
        let sm = StateMachine::open(store, inner.routes.clone(), inner.broker.get().cloned())?;
        let c = &inner.config;
        let config = openraft::Config {
            cluster_name: "petrel".into(),
            heartbeat_interval: c.heartbeat_ms,
            election_timeout_min: c.election_timeout_ms,
            election_timeout_max: c.election_timeout_ms * 2,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(c.snapshot_logs),
            max_in_snapshot_log_to_keep: c.snapshot_logs / 2,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let network = Network {
            inner: inner.clone(),
        };
        let raft = Raft::new(inner.me, Arc::new(config), network, log, sm)
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let listener = TcpListener::bind(&c.bind).await?;
        let _ = inner.local_addr.set(listener.local_addr()?);
        let _ = inner.raft.set(raft.clone());
        tokio::spawn(serve(inner.clone(), listener));
        for parked in lock(&inner.parked).take().unwrap_or_default() {
            tokio::spawn(send_to(inner.clone(), parked));
        }
        tokio::spawn(write_routes(inner.clone()));
        tokio::spawn(write_retained(inner.clone()));
        if let Some(rx) = lock(&inner.moves_rx).take() {
            tokio::spawn(hand_on(inner.clone(), rx));
        }
        tokio::spawn(report(inner.clone(), raft.clone()));
        tokio::spawn(follow_members(inner.clone(), raft.clone()));
        tokio::spawn(members::keep_voters(inner.clone(), raft.clone()));
        // Formed of the configured voters the first time they start; a
        // node they do not name waits to be added
        // ([`Cluster::join`]).
        if inner.configured.contains_key(&inner.me)
            && !raft
                .is_initialized()
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?
        {
            let nodes: BTreeMap<NodeId, BasicNode> = inner
                .configured
                .iter()
                .map(|(id, addr)| (*id, BasicNode::new(addr)))
                .collect();
            // Every member does this with the same members: safe (the
            // first vote decides), and whoever starts first forms it.
            if let Err(e) = raft.initialize(nodes).await {
                tracing::debug!(error = %e, "cluster already formed");
            }
        }
        inner.wake.notify_one();
        tracing::info!(node = inner.me, bind = %c.bind, peers = inner.configured.len(), "cluster node started");
        Ok(())
    }

    /// Stop Raft (the links close when the process ends).
    pub async fn shutdown(&self) {
        if let Some(r) = self.inner.raft.get() {
            let _ = r.shutdown().await;
        }
    }

    /// This node's number.
    pub fn node_id(&self) -> NodeId {
        self.inner.me
    }

    /// The address the node-to-node listener is bound to, once started.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.local_addr.get().copied()
    }

    /// The leader, if this node knows one.
    pub fn leader(&self) -> Option<NodeId> {
        self.inner
            .raft
            .get()
            .and_then(|r| r.metrics().borrow().current_leader)
    }

    /// Raft's view of this node (state, term, leader, log, members).
    pub fn metrics(&self) -> Option<openraft::RaftMetrics<NodeId, BasicNode>> {
        self.inner.raft.get().map(|r| r.metrics().borrow().clone())
    }

    /// The filters node `node` is known to want.
    pub fn routes_of(&self, node: NodeId) -> Vec<String> {
        read(&self.inner.routes).of(node)
    }

    /// How many (node, filter) routes the cluster holds.
    pub fn route_count(&self) -> usize {
        read(&self.inner.routes).len()
    }

    /// The node that owns `client`'s session, as this node knows.
    pub fn owner(&self, client: &str) -> Option<NodeId> {
        read(&self.inner.routes).owner(client)
    }

    /// The node's counters.
    pub fn counters(&self) -> &ClusterCounters {
        &self.inner.counters
    }

    /// Whether this node can agree new routes and takeovers now (it leads
    /// a majority that answered lately, or follows a leader it heard from
    /// lately).
    pub fn has_quorum(&self) -> bool {
        self.inner.available()
    }

    /// How many client ids' sessions have an owner, as this node knows.
    pub fn owned_sessions(&self) -> usize {
        read(&self.inner.routes).owned()
    }

    /// Add node `id`, whose node-to-node listener is `addr`, to the
    /// cluster: as a learner, answered once it has a copy of the log,
    /// then as a voter while the cluster has fewer than three voters (five
    /// once it has five nodes). The node starts with a `[cluster]` table
    /// whose `peers` name the members but not itself, and waits to be
    /// added. Asked of any node; the leader makes it. The membership
    /// after (`1,2,3,4L`: voters, then learners marked `L`).
    pub async fn join(&self, id: NodeId, addr: &str) -> Result<String, String> {
        members::change(
            &self.inner,
            net::Change::Join {
                id,
                addr: addr.to_string(),
            },
        )
        .await
    }

    /// Take node `id` out of the cluster, for good: its routes go, and
    /// the sessions it owned have no owner (drain it first, and its
    /// clients' sessions follow them to the nodes they reconnect to). A
    /// learner takes a leaving voter's place. The leader can't leave:
    /// stop it first (another node takes the lead). The membership after.
    pub async fn leave(&self, id: NodeId) -> Result<String, String> {
        members::change(&self.inner, net::Change::Leave { id }).await
    }

    /// The voters and the learners, as this node last applied them.
    pub fn members(&self) -> (Vec<NodeId>, Vec<NodeId>) {
        self.inner
            .raft
            .get()
            .map(|r| {
                let m = r.metrics().borrow().membership_config.membership().clone();
                (m.voter_ids().collect(), m.learner_ids().collect())
            })
            .unwrap_or_default()
    }

    /// How many sessions this node is handing on now.
    pub fn moving_sessions(&self) -> usize {
        lock(&self.inner.moving).len()
    }
}

/// The broker's view of the node.
#[derive(Debug)]
struct Seam(Arc<Inner>);

impl Peers for Seam {
    fn interest(&self, filter: &str, wanted: bool) -> Commit {
        let mut guard = lock(&self.0.changes);
        let c = &mut *guard;
        let (to, from) = if wanted {
            (&mut c.add, &mut c.remove)
        } else {
            (&mut c.remove, &mut c.add)
        };
        // A change undone before it was written is no change.
        if let Some(i) = from.iter().position(|f| f == filter) {
            from.remove(i);
        } else {
            to.push(filter.to_string());
        }
        let commit = if wanted {
            let t = c.ticket.get_or_insert_with(Arc::default).clone();
            Commit::waiting(t)
        } else {
            Commit::done()
        };
        drop(guard);
        self.0.wake.notify_one();
        commit
    }

    fn available(&self) -> bool {
        self.0.available()
    }

    fn agrees_retained(&self) -> bool {
        true
    }

    fn retain(&self, message: &Message) -> Commit {
        let bytes = encode_message(message, SystemTime::now());
        let put =
            lock(&self.0.retains).put(message.topic.as_str(), bytes, self.0.config.peer_queue);
        let Some(t) = put else {
            self.0.counters.refused.fetch_add(1, Ordering::Relaxed);
            let t = Arc::new(Ticket::default());
            t.complete(Err("too many retained messages wait for the cluster".into()));
            return Commit::waiting(t);
        };
        self.0.retain_wake.notify_one();
        Commit::waiting(t)
    }

    fn claim(
        &self,
        client_id: &str,
        clean_start: bool,
        username: Option<&str>,
    ) -> petrel_broker::Claim {
        let inner = self.0.clone();
        let client = client_id.to_string();
        let claim = crate::types::Claimed {
            clean: clean_start,
            user: username.map(str::to_string),
        };
        Box::pin(async move { claim_session(inner, client, claim).await })
    }

    fn released(&self, client_id: &str) {
        let mut c = lock(&self.0.changes);
        // Only what is (or may be about to be) this node's: a session it
        // never claimed (a client id the broker assigned) writes nothing.
        let mine = c.in_flight.contains(client_id)
            || c.owners.iter().any(|(x, _)| x == client_id)
            || read(&self.0.routes).owner(client_id) == Some(self.0.me);
        if !mine {
            return;
        }
        c.owners.push((client_id.to_string(), None));
        drop(c);
        self.0.wake.notify_one();
    }

    fn forward(&self, message: &Message) -> Forwarded {
        let inner = &self.0;
        // A shared group goes to a node that is up.
        let links = read(&inner.links);
        let up = |n: NodeId| links.get(&n).is_some_and(|p| p.up());
        let plan = read(&inner.routes).plan(
            message.topic.as_str(),
            inner.me,
            inner.config.shared_local,
            up,
        );
        let here = SharedGroups::Except(plan.elsewhere);
        // A retained message reaches the other nodes' retained messages
        // through the log ([`Peers::retain`]): here only its subscribers.
        let nodes = plan.nodes;
        if nodes.is_empty() {
            return Forwarded {
                here,
                ..Forwarded::default()
            };
        }
        drop(links);
        let bytes = Arc::new(encode_message(message, SystemTime::now()));
        let qos = message.qos;
        let inner = inner.clone();
        // Sent once this node has taken it.
        let send = move || send_out(&inner, bytes, qos, nodes);
        Forwarded {
            here,
            send: Some(petrel_broker::Deferred(Box::new(send))),
            ..Forwarded::default()
        }
    }
}

/// Queue a message (`bytes`, its `qos`) for each of `nodes`, with the
/// shared groups each serves: how many took it in their queue, and when
/// they have all taken it.
fn send_out(
    inner: &Inner,
    bytes: Arc<Vec<u8>>,
    qos: QoS,
    nodes: Vec<(NodeId, Vec<String>)>,
) -> (usize, Commit) {
    let links = read(&inner.links);
    let gather = (qos != QoS::AtMostOnce).then(|| {
        Arc::new(Gather {
            left: AtomicUsize::new(nodes.len()),
            ticket: Arc::default(),
        })
    });
    let mut sent = 0;
    for (n, groups) in nodes {
        let Some(tx) = links.get(&n).map(|p| &p.data) else {
            if let Some(g) = &gather {
                given_up(&[(g.clone(), !groups.is_empty())], n);
            }
            continue;
        };
        match tx.try_send(Outgoing {
            bytes: bytes.clone(),
            groups,
            gather: gather.clone(),
        }) {
            Ok(()) => sent += 1,
            Err(mpsc::error::TrySendError::Full(o)) => match o.gather {
                Some(g) => {
                    inner.counters.refused.fetch_add(1, Ordering::Relaxed);
                    g.ticket.complete(Err(format!("node {n}'s queue is full")));
                }
                None => {
                    inner.counters.lost.fetch_add(1, Ordering::Relaxed);
                }
            },
            Err(mpsc::error::TrySendError::Closed(o)) => {
                inner.counters.lost.fetch_add(1, Ordering::Relaxed);
                if let Some(g) = o.gather {
                    given_up(&[(g, !o.groups.is_empty())], n);
                }
            }
        }
    }
    (
        sent,
        gather.map_or_else(Commit::done, |g| Commit::waiting(g.ticket.clone())),
    )
}

/// The most messages one forwarding frame carries.
const MAX_BATCH: usize = 256;

/// The most bytes one forwarding frame carries (beyond one message).
const MAX_BATCH_BYTES: usize = 1 << 20;

/// Send what is queued for peer `id`, in order: what waits when a frame
/// goes is sent in that frame (up to [`MAX_BATCH`] messages), and each
/// frame is answered once, when the peer has taken all of it, so a busy
/// link costs a write and an answer per batch, not per message. Many
/// frames are in flight at once.
async fn send_to(inner: Arc<Inner>, (id, addr, mut rx, down_until): Parked) {
    let link = Arc::new(Link::new(
        inner.me,
        addr,
        inner.secret.clone(),
        inner.config.max_frame_bytes,
    ));
    let timeout = Duration::from_secs(inner.config.forward_timeout);
    // Messages sent and not yet answered: at most a queue's worth, so a
    // peer that is slow (or stopped) fills the queue, and the queue's
    // bound refuses what follows, instead of memory growing.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(inner.config.peer_queue));
    let max = MAX_BATCH.min(inner.config.peer_queue);
    loop {
        // A message leaves the queue only with a place among those in
        // flight: what waits for one stays in the queue, where its bound
        // counts it.
        let Ok(mut permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        let mut bytes = batch[0].bytes.len();
        while batch.len() < max && bytes < MAX_BATCH_BYTES {
            let Ok(more) = in_flight.clone().try_acquire_owned() else {
                break;
            };
            match rx.try_recv() {
                Ok(o) => {
                    permit.merge(more);
                    bytes += o.bytes.len();
                    batch.push(o);
                }
                Err(_) => break,
            }
        }
        let n = batch.len();
        // Each QoS 1/2 message's acknowledgement, and whether the peer
        // was to serve a shared group with it.
        let gathers: Vec<(Arc<Gather>, bool)> = batch
            .iter()
            .filter_map(|o| o.gather.clone().map(|g| (g, !o.groups.is_empty())))
            .collect();
        if lock(&down_until).is_some_and(|t| Instant::now() < t) {
            inner.counters.lost.fetch_add(n as u64, Ordering::Relaxed);
            given_up(&gathers, id);
            continue;
        }
        let mut frame = Vec::with_capacity(bytes + 8 * n);
        for o in &batch {
            put_message(&mut frame, &o.bytes, &o.groups);
        }
        drop(batch);
        match link.send(Request::Forward(frame)).await {
            Ok(answer) => {
                inner
                    .counters
                    .forwarded
                    .fetch_add(n as u64, Ordering::Relaxed);
                let counters = inner.clone();
                let (down_until, link) = (down_until.clone(), link.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let answer = tokio::time::timeout(timeout, answer).await;
                    match answer {
                        Ok(Ok(Response::Done)) => gathers.iter().for_each(|(g, _)| g.one_done()),
                        // The peer could not take them (its store failed):
                        // their publishers are told.
                        Ok(Ok(Response::Failed(e))) => {
                            counters
                                .counters
                                .lost
                                .fetch_add(n as u64, Ordering::Relaxed);
                            let e = format!("node {id}: {e}");
                            gathers
                                .iter()
                                .for_each(|(g, _)| g.ticket.complete(Err(e.clone())));
                        }
                        other => {
                            if other.is_err() {
                                tracing::warn!(
                                    peer = id,
                                    "a peer left messages unanswered: taken as down for a while"
                                );
                                // As long as it left them: a peer that is
                                // stopped or cut off is not picked for a
                                // shared group for most of the time.
                                *lock(&down_until) = Some(Instant::now() + timeout.max(DOWN_FOR));
                                // Connected again when it is tried again.
                                link.reset().await;
                            }
                            counters
                                .counters
                                .lost
                                .fetch_add(n as u64, Ordering::Relaxed);
                            given_up(&gathers, id);
                        }
                    }
                });
            }
            Err(e) => {
                tracing::debug!(peer = id, error = %e, "peer down: messages for it are dropped for a while");
                *lock(&down_until) = Some(Instant::now() + DOWN_FOR);
                inner.counters.lost.fetch_add(n as u64, Ordering::Relaxed);
                given_up(&gathers, id);
            }
        }
    }
}

/// Messages peer `id` did not take in time (it is down, or cut off): a
/// subscriber there misses it, and the publisher is acknowledged (a node
/// that is down must not hold up the others); but a shared group served
/// there missed it as a whole, so that message's publisher is refused
/// (and sends it again, when the group is served elsewhere).
fn given_up(gathers: &[(Arc<Gather>, bool)], id: NodeId) {
    for (g, group) in gathers {
        if *group {
            g.ticket.complete(Err(format!(
                "node {id}, which was to serve a shared group, did not take it"
            )));
        } else {
            g.one_done();
        }
    }
}

/// Write route changes as they come, in batches: one write carries every
/// change made while the one before was being agreed.
async fn write_routes(inner: Arc<Inner>) {
    loop {
        let pending = {
            let c = lock(&inner.changes);
            c.reset
                || !c.add.is_empty()
                || !c.remove.is_empty()
                || c.ticket.is_some()
                || !c.owners.is_empty()
        };
        if !pending {
            inner.wake.notified().await;
            continue;
        }
        let Some(raft) = inner.raft.get() else {
            inner.wake.notified().await;
            continue;
        };
        // What the broker holds is read before the changes are taken (the
        // broker holds its router's lock while it records one), so a
        // change made meanwhile is in both: applied twice, to the same
        // result.
        let reset = lock(&inner.changes).reset;
        let all = reset
            .then(|| inner.broker.get().map(|b| (b.interests(), b.session_ids())))
            .flatten();
        let (add, remove, ticket, owners, mut claims) = {
            let mut c = lock(&inner.changes);
            if all.is_some() {
                c.reset = false;
            }
            let owners = std::mem::take(&mut c.owners);
            c.in_flight = owners.iter().map(|(client, _)| client.clone()).collect();
            (
                std::mem::take(&mut c.add),
                std::mem::take(&mut c.remove),
                c.ticket.take(),
                owners,
                std::mem::take(&mut c.claims),
            )
        };
        let was_reset = all.is_some();
        let mut commands = Vec::new();
        if let Some((filters, clients)) = all {
            commands.push(Command::Reset {
                node: inner.me,
                filters,
                clients,
            });
        }
        if !add.is_empty() || !remove.is_empty() {
            commands.push(Command::Routes {
                node: inner.me,
                add,
                remove,
            });
        }
        // Until the Owners command is written, its operations are this
        // batch's to put back.
        let mut unwritten = (!owners.is_empty()).then(|| owners.clone());
        if !owners.is_empty() {
            commands.push(Command::Owners {
                node: inner.me,
                ops: owners,
            });
        }
        let deadline = Instant::now() + Duration::from_secs(inner.config.route_timeout);
        let mut result = Ok(());
        let mut answered = None;
        let mut reset_at = None;
        for command in commands {
            let owners = match &command {
                Command::Owners { ops, .. } => Some(ops.clone()),
                _ => None,
            };
            let is_reset = matches!(command, Command::Reset { .. });
            match propose(&inner, raft, command, deadline).await {
                Ok((index, applied)) => {
                    inner.counters.route_writes.fetch_add(1, Ordering::Relaxed);
                    if owners.is_some() {
                        // Claims wait for no other node (the node they
                        // take a session from hears of it as it applies),
                        // but for this one: until it has applied them, its
                        // own view of who owns what is behind.
                        let wait = Duration::from_secs(inner.config.route_timeout);
                        let _ = raft
                            .wait(Some(wait))
                            .applied_index_at_least(Some(index), "owners")
                            .await;
                        answered = Some(applied);
                        unwritten = None;
                    } else {
                        everyone_applied(&inner, raft, index).await;
                        if is_reset {
                            reset_at = Some(index);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "route change not agreed");
                    result = Err(e);
                    // Written again, whole, when the cluster answers.
                    lock(&inner.changes).reset = true;
                    break;
                }
            }
        }
        // Releases and the claims nobody waits for are written when the
        // cluster answers, before what came since (the claims a CONNECT
        // waits for are refused). A claim for a session this node no longer
        // holds would only take it from whoever has it now. (The broker is
        // asked before the changes' lock is taken: its lock comes first.)
        let again: Vec<_> = unwritten
            .map(|ops| {
                let waited: std::collections::HashSet<usize> =
                    claims.iter().map(|(i, _)| *i).collect();
                let holds =
                    |client: &str| inner.broker.get().is_some_and(|b| b.has_session(client));
                ops.into_iter()
                    .enumerate()
                    .filter(|(i, (client, claim))| {
                        !waited.contains(i) && (claim.is_none() || holds(client))
                    })
                    .map(|(_, op)| op)
                    .collect()
            })
            .unwrap_or_default();
        {
            let mut c = lock(&inner.changes);
            c.in_flight.clear();
            if !again.is_empty() {
                // The waiters' places shift by what goes in front.
                let shift = again.len();
                let mut again = again;
                again.append(&mut c.owners);
                for (i, _) in &mut c.claims {
                    *i += shift;
                }
                c.owners = again;
            }
        }
        for (i, tx) in claims.drain(..) {
            let _ = tx.send(match (&result, &answered) {
                (Ok(()), Some(a)) => Ok(a.previous.get(i).copied().flatten()),
                (Err(e), _) => Err(e.clone()),
                (Ok(()), None) => Err("the claim was not written".into()),
            });
        }
        if let (true, Some(index)) = (was_reset && result.is_ok(), reset_at) {
            // Caught up to the log's end: sessions this node kept while
            // another took them over go to their owners now.
            tokio::spawn(hand_on_held(inner.clone(), index));
        }
        if let Some(t) = ticket {
            t.complete(result.clone());
        }
        if result.is_err() {
            // Not at once again: the cluster is without a leader.
            tokio::time::sleep(Duration::from_millis(inner.config.election_timeout_ms)).await;
        }
    }
}

/// Write retained messages as they come, in batches (only a topic's last
/// one), each agreed once every node that answers has applied it: from
/// then on a subscription anywhere finds it. A batch the cluster did not
/// agree in time fails its publishers' acknowledgements and is written
/// again when the cluster answers (unless a later message of its topic
/// came meanwhile).
async fn write_retained(inner: Arc<Inner>) {
    // One write well inside a frame (and a log entry a node can take).
    let max_bytes = (inner.config.max_frame_bytes / 8).max(1);
    loop {
        // Started after Raft was.
        let Some(raft) = inner.raft.get() else {
            return;
        };
        let batch = lock(&inner.retains).take(max_bytes);
        if batch.is_empty() {
            inner.retain_wake.notified().await;
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(inner.config.route_timeout);
        let command = Command::Retain {
            node: inner.me,
            messages: batch.iter().map(|(_, b, _)| b.clone()).collect(),
        };
        match propose(&inner, raft, command, deadline).await {
            Ok((index, _)) => {
                everyone_applied(&inner, raft, index).await;
                for (_, _, t) in &batch {
                    t.complete(Ok(()));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "retained messages not agreed: written again later");
                // Their publishers are refused; the messages go again
                // before what came since (which replaces its topics'),
                // within the bound (the oldest dropped past it).
                for (_, _, t) in &batch {
                    t.complete(Err(e.clone()));
                }
                let dropped = lock(&inner.retains).put_back(batch, inner.config.peer_queue);
                if dropped > 0 {
                    tracing::warn!(dropped, "retained messages waiting for the cluster past peer_queue: the oldest dropped");
                }
                tokio::time::sleep(Duration::from_millis(inner.config.election_timeout_ms)).await;
            }
        }
    }
}

/// The membership as `$SYS/broker/cluster/members` says it: the voters'
/// numbers, then each learner's with `L` after it (`1,2,3,4L`).
fn members_line(m: &openraft::Membership<NodeId, BasicNode>) -> String {
    let voters: BTreeSet<NodeId> = m.voter_ids().collect();
    m.nodes()
        .map(|(id, _)| {
            if voters.contains(id) {
                id.to_string()
            } else {
                format!("{id}L")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Keep the links to the membership's nodes as it changes: link to each
/// node added, drop those removed.
async fn follow_members(inner: Arc<Inner>, raft: Raft<TypeConfig>) {
    let mut metrics = raft.metrics();
    let mut last = None;
    loop {
        let nodes: BTreeMap<NodeId, String> = metrics
            .borrow_and_update()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        // Before this node knows a membership, its configured peers.
        if !nodes.is_empty() && last.as_ref() != Some(&nodes) {
            for (id, addr) in &nodes {
                inner.connect(*id, addr);
            }
            inner.disconnect_all_but(&nodes.keys().copied().collect());
            last = Some(nodes);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Publish the node's view of the cluster under `$SYS/broker/cluster/`
/// (retained, this node only): `node`, `leader` (a number, or `none`),
/// `state` (leader, follower, candidate, learner), `term` and `members`
/// when they change; `quorum` (`yes` when new routes can be agreed: see
/// [`Inner::available`]) when it changes, looked at twice a heartbeat
/// timeout; `routes` (how many node-filter pairs this node has applied)
/// when it changes, looked at as often; `forwarded`, `received` and
/// `lost` every `sys_interval`.
async fn report(inner: Arc<Inner>, raft: Raft<TypeConfig>) {
    let Some(broker) = inner.broker.get().cloned() else {
        return;
    };
    let publish = |topic: &str, value: String| {
        if let Ok(t) =
            petrel_codec::TopicName::try_from(format!("$SYS/broker/cluster/{topic}").as_str())
        {
            broker.publish(t, bytes::Bytes::from(value), QoS::AtMostOnce, true);
        }
    };
    publish("node", inner.me.to_string());
    let mut last_members = String::new();
    let mut metrics = raft.metrics();
    let every = Duration::from_secs(broker.config().sys_interval.max(1));
    let mut tick = tokio::time::interval(every);
    let mut last: Option<(Option<NodeId>, String, u64)> = None;
    let mut quorum_tick =
        tokio::time::interval(Duration::from_millis(inner.config.heartbeat_ms.max(50)));
    let mut last_quorum: Option<bool> = None;
    let mut last_routes: Option<usize> = None;
    loop {
        let members = {
            let m = metrics.borrow();
            members_line(m.membership_config.membership())
        };
        if members != last_members {
            publish("members", members.clone());
            last_members = members;
        }
        let now = {
            let m = metrics.borrow_and_update();
            (
                m.current_leader,
                format!("{:?}", m.state).to_lowercase(),
                m.current_term,
            )
        };
        if last.as_ref() != Some(&now) {
            if last.as_ref().map(|l| l.0) != Some(now.0) {
                tracing::info!(node = inner.me, leader = ?now.0, term = now.2, "cluster leader");
            }
            publish(
                "leader",
                now.0.map_or_else(|| "none".into(), |l| l.to_string()),
            );
            publish("state", now.1.clone());
            publish("term", now.2.to_string());
            last = Some(now);
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = quorum_tick.tick() => {
                let q = inner.available();
                if last_quorum != Some(q) {
                    publish("quorum", if q { "yes" } else { "no" }.into());
                    last_quorum = Some(q);
                }
                // The route count as soon as it changes, so whoever watches
                // a node catch up sees when it has.
                let routes = read(&inner.routes).len();
                if last_routes != Some(routes) {
                    publish("routes", routes.to_string());
                    last_routes = Some(routes);
                }
            }
            _ = tick.tick() => {
                let c = &inner.counters;
                publish("forwarded", c.forwarded.load(Ordering::Relaxed).to_string());
                publish("received", c.received.load(Ordering::Relaxed).to_string());
                publish("lost", c.lost.load(Ordering::Relaxed).to_string());
            }
        }
    }
}

/// Have `command` committed, through the leader: its log index. Sent
/// again until then, with the same number in its stream (retained
/// messages, or the rest), so that it is applied once.
async fn propose(
    inner: &Inner,
    raft: &Raft<TypeConfig>,
    command: Command,
    deadline: Instant,
) -> Result<(u64, Applied), String> {
    let stream = u8::from(matches!(command, Command::Retain { .. }));
    let command = Proposal {
        origin: Some(Origin {
            node: inner.me,
            stream,
            incarnation: inner.incarnation.load(Ordering::Relaxed),
            seq: inner.seqs[usize::from(stream)].fetch_add(1, Ordering::Relaxed) + 1,
        }),
        command,
    };
    let pause = Duration::from_millis(inner.config.heartbeat_ms.min(100));
    loop {
        if Instant::now() >= deadline {
            return Err("no leader agreed in time (is a majority of the nodes up?)".into());
        }
        let leader = raft.metrics().borrow().current_leader;
        match leader {
            Some(l) if l == inner.me => {
                // A leader cut off from the majority commits nothing: not
                // waited for past the deadline.
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, raft.client_write(command.clone())).await {
                    Ok(Ok(r)) => return Ok((r.log_id.index, r.data)),
                    Ok(Err(e)) => tracing::debug!(error = %e, "write: not leader now"),
                    Err(_) => {}
                }
            }
            Some(l) => {
                if let Some(link) = inner.link(l) {
                    // Not longer than an election: a leader that does not
                    // answer may have been replaced meanwhile.
                    let left = deadline
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(inner.config.election_timeout_ms));
                    if let Ok(Ok(Response::Written(i, applied))) =
                        tokio::time::timeout(left, link.call(Request::Write(command.clone()), left))
                            .await
                    {
                        return Ok((i, applied));
                    }
                }
            }
            None => {}
        }
        tokio::time::sleep(pause).await;
    }
}

/// Wait until every node that answers has applied the log up to `index`:
/// from then on, whichever node a message is published on routes by it.
/// A node that does not answer in time is not waited for (it is down, or
/// cut off; it applies the log when it is back).
async fn everyone_applied(inner: &Inner, raft: &Raft<TypeConfig>, index: u64) {
    let wait = Duration::from_millis(inner.config.election_timeout_ms);
    let waiter = raft.wait(Some(wait));
    let mine = waiter.applied_index_at_least(Some(index), "route");
    let links = inner.all_links();
    let others = futures::future::join_all(
        links
            .iter()
            .map(|l| tokio::time::timeout(wait, l.call(Request::Applied(index), wait))),
    );
    let _ = tokio::join!(mine, others);
}

/// Accept the other nodes' links.
async fn serve(inner: Arc<Inner>, listener: TcpListener) {
    // Links that have not proved the secret yet, at most: past it a new
    // connection is closed at once (each proof takes 2 s at most).
    let unproven = Arc::new(tokio::sync::Semaphore::new(inner.config.max_pending_links));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = unproven.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many node links proving the secret at once: closed");
            continue;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let proven = net::accept(
                stream,
                inner.me,
                &inner.secret,
                inner.config.max_frame_bytes,
            )
            .await;
            drop(permit);
            match proven {
                // Any node that proved the secret: one joining is not a
                // member yet.
                Ok((from, wire, _)) if from != inner.me => {
                    handle(inner, from, wire).await;
                }
                Ok((from, _, peer)) => {
                    tracing::warn!(%peer, node = from, "a node with this node's own number: closed");
                }
                Err(e) => tracing::warn!(error = %e, "node link refused"),
            }
        });
    }
}

/// Answer one link's requests.
async fn handle(inner: Arc<Inner>, from: NodeId, wire: net::Wire) {
    let (mut sink, mut stream) = wire.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame<Response>>();
    let writer = tokio::spawn(async move { net::write_frames(&mut sink, &mut rx).await });
    let Some(raft) = inner.raft.get().cloned() else {
        return;
    };
    while let Some(Ok(b)) = stream.next().await {
        let Ok(f) = net::decode::<Frame<Request>>(&b) else {
            tracing::warn!("undecodable node frame: link closed");
            break;
        };
        let id = f.id;
        let tx = tx.clone();
        let answer = move |body: Response| {
            let _ = tx.send(Frame { id, body });
        };
        match f.body {
            // Delivered here, in the order sent; answered when what it
            // promises is durable.
            Request::Forward(frame) => {
                let commit = match (split_batch(&frame), inner.broker.get()) {
                    (Ok(messages), Some(b)) => {
                        inner
                            .counters
                            .received
                            .fetch_add(messages.len() as u64, Ordering::Relaxed);
                        b.deliver_forwarded_all(messages).map_err(|e| e.to_string())
                    }
                    (Err(e), _) => Err(e.to_string()),
                    (_, None) => Err("not started".into()),
                };
                match commit {
                    Ok(c) if c.succeeded() => answer(flushed(&inner)),
                    Ok(c) => {
                        let inner = inner.clone();
                        tokio::spawn(async move {
                            match futures::future::poll_fn(|cx| c.poll(cx)).await {
                                Ok(()) => answer(flushed(&inner)),
                                Err(e) => answer(Response::Failed(e.to_string())),
                            }
                        });
                    }
                    Err(e) => answer(Response::Failed(e)),
                }
            }
            Request::Adopt {
                client,
                session,
                id,
                not_yours,
            } => {
                let inner = inner.clone();
                tokio::spawn(async move {
                    answer(adopt(&inner, from, client, session, id, not_yours).await)
                });
            }
            request => {
                if matches!(request, Request::Append(_) | Request::Vote(_)) {
                    inner.heard_from(from);
                }
                let raft = raft.clone();
                tokio::spawn(async move { answer(consensus(&raft, request).await) });
            }
        }
    }
    writer.abort();
}

/// `Done` once what was committed to the broker's store is handed to the
/// operating system (a store may keep commits in the process until
/// then, as it does for its own clients until it sends them anything):
/// the other node's acknowledgement then survives this one being killed.
fn flushed(inner: &Inner) -> Response {
    match inner
        .broker
        .get()
        .and_then(Broker::store)
        .map(|s| s.flush())
    {
        Some(Err(e)) => {
            tracing::error!(error = %e, "the durable store could not be flushed");
            Response::Failed(e.to_string())
        }
        _ => Response::Done,
    }
}

/// One message of a forwarding frame: its length (4 bytes, big-endian),
/// the message, then how many shared groups the peer serves for it (4
/// bytes) and each group's whole filter, with its length (2 bytes) first.
fn put_message(frame: &mut Vec<u8>, message: &[u8], groups: &[String]) {
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame.extend_from_slice(&(groups.len() as u32).to_be_bytes());
    for g in groups {
        frame.extend_from_slice(&(g.len() as u16).to_be_bytes());
        frame.extend_from_slice(g.as_bytes());
    }
}

/// The messages of a forwarding frame, each with the shared groups this
/// node serves for it.
fn split_batch(mut frame: &[u8]) -> io::Result<Vec<(Message, SharedGroups)>> {
    let (now, wall) = (Instant::now(), SystemTime::now());
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "truncated forwarding frame");
    fn take<'a>(frame: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = frame.split_at_checked(n)?;
        *frame = rest;
        Some(head)
    }
    let mut out = Vec::new();
    while !frame.is_empty() {
        let len = take(&mut frame, 4).ok_or_else(bad)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let body = take(&mut frame, len).ok_or_else(bad)?;
        let message = decode_message(body, now, wall)?.0;
        let count = take(&mut frame, 4).ok_or_else(bad)?;
        let count = u32::from_be_bytes([count[0], count[1], count[2], count[3]]);
        let mut groups = Vec::new();
        for _ in 0..count {
            let len = take(&mut frame, 2).ok_or_else(bad)?;
            let len = u16::from_be_bytes([len[0], len[1]]) as usize;
            let g = take(&mut frame, len).ok_or_else(bad)?;
            let g = std::str::from_utf8(g).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, "a group that is not UTF-8")
            })?;
            groups.push(g.to_string());
        }
        out.push((message, SharedGroups::Only(groups)));
    }
    Ok(out)
}

/// Answer a consensus request.
async fn consensus(raft: &Raft<TypeConfig>, request: Request) -> Response {
    match request {
        Request::Append(r) => raft
            .append_entries(r)
            .await
            .map_or_else(|e| Response::Failed(e.to_string()), Response::Append),
        Request::Vote(r) => raft
            .vote(r)
            .await
            .map_or_else(|e| Response::Failed(e.to_string()), Response::Vote),
        Request::Snapshot(r) => raft
            .install_snapshot(r)
            .await
            .map_or_else(|e| Response::Failed(e.to_string()), Response::Snapshot),
        Request::Write(command) => match raft.client_write(command).await {
            Ok(r) => Response::Written(r.log_id.index, r.data),
            Err(e) => match e.forward_to_leader() {
                Some(f) => Response::NotLeader(f.leader_id),
                None => Response::Failed(e.to_string()),
            },
        },
        Request::Applied(index) => {
            let wait = Duration::from_secs(5);
            match raft
                .wait(Some(wait))
                .applied_index_at_least(Some(index), "route")
                .await
            {
                Ok(_) => Response::Done,
                Err(e) => Response::Failed(e.to_string()),
            }
        }
        Request::Change(change) => {
            let metrics = raft.metrics();
            let (me, leader) = {
                let m = metrics.borrow();
                (m.id, m.current_leader)
            };
            if leader != Some(me) {
                return Response::NotLeader(leader);
            }
            match members::make(raft, change).await {
                Ok(m) => Response::Changed(m),
                Err(e) => Response::Failed(e),
            }
        }
        Request::Forward(_) | Request::Adopt { .. } => {
            Response::Failed("not a consensus request".into())
        }
    }
}

/// Raft's network: the consensus links.
struct Network {
    inner: Arc<Inner>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Client;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Client {
        // A node just added (a learner) is linked to at once.
        self.inner.connect(target, &node.addr);
        Client {
            addr: node.addr.clone(),
            target,
            inner: self.inner.clone(),
        }
    }
}

/// Raft's client of one peer.
struct Client {
    addr: String,
    target: NodeId,
    inner: Arc<Inner>,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl Client {
    async fn call(&self, request: Request, option: &RPCOption) -> RpcResult<Response> {
        // Looked up at each call: the links follow the membership.
        let Some(link) = &self.inner.link(self.target) else {
            let e = io::Error::other(format!("{} is not a configured peer", self.addr));
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        };
        match link.call(request, option.hard_ttl()).await {
            Ok(Response::Failed(e)) => {
                Err(RPCError::Network(NetworkError::new(&io::Error::other(e))))
            }
            Ok(r) => {
                self.inner.heard_from(self.target);
                Ok(r)
            }
            Err(e) => Err(RPCError::Unreachable(Unreachable::new(&e))),
        }
    }
}

fn unexpected<E: std::error::Error>() -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
    RPCError::Network(NetworkError::new(&io::Error::other("unexpected answer")))
}

impl RaftNetwork<TypeConfig> for Client {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        // Well inside a frame: past it, openraft is told to send fewer
        // entries (a retained write is at most an eighth of a frame).
        let budget = (self.inner.config.max_frame_bytes / 2) as u64;
        if rpc.entries.len() > 1 && bincode::serialized_size(&rpc).unwrap_or(0) > budget {
            let mut size = 0;
            let fit = rpc
                .entries
                .iter()
                .take_while(|e| {
                    size += bincode::serialized_size(e).unwrap_or(0);
                    size <= budget
                })
                .count()
                .max(1);
            return Err(openraft::error::PayloadTooLarge::new_entries_hint(fit as u64).into());
        }
        match self.call(Request::Append(rpc), &option).await? {
            Response::Append(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, openraft::error::InstallSnapshotError> {
        let r = match self.call(Request::Snapshot(rpc), &option).await {
            Ok(r) => r,
            Err(RPCError::Unreachable(u)) => return Err(RPCError::Unreachable(u)),
            Err(_) => return Err(unexpected()),
        };
        match r {
            Response::Snapshot(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        match self.call(Request::Vote(rpc), &option).await? {
            Response::Vote(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RetainWrites;

    fn order(q: &RetainWrites) -> Vec<(String, Vec<u8>)> {
        q.pending
            .iter()
            .map(|(t, b, _)| (t.clone(), b.clone()))
            .collect()
    }

    #[test]
    fn a_failed_retained_batch_goes_back_before_what_came_since() {
        let mut q = RetainWrites::default();
        q.put("a", b"1".to_vec(), 10).unwrap();
        q.put("b", b"1".to_vec(), 10).unwrap();
        let batch = q.take(usize::MAX);
        // Since: a new message for b (its waiters keep their ticket) and c.
        let waiting = q.put("b", b"2".to_vec(), 10).unwrap();
        q.put("c", b"1".to_vec(), 10).unwrap();
        assert_eq!(q.put_back(batch, 10), 0);
        let want = [("a", "1"), ("b", "2"), ("c", "1")]
            .map(|(t, b)| (t.to_string(), b.as_bytes().to_vec()));
        assert_eq!(order(&q), want);
        assert!(std::sync::Arc::ptr_eq(&q.pending[1].2, &waiting));
        // Past the bound the oldest of the batch go.
        let batch = q.take(usize::MAX);
        q.put("d", b"1".to_vec(), 10).unwrap();
        assert_eq!(q.put_back(batch, 3), 1);
        let topics: Vec<String> = q.pending.iter().map(|s| s.0.clone()).collect();
        assert_eq!(topics, ["b", "c", "d"]);
        assert_eq!(q.at.len(), 3);
    }
}
