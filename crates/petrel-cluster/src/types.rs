//! What the nodes agree on through openraft: the commands of the log and
//! the state they build.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Cursor;
use std::sync::atomic::{AtomicUsize, Ordering};

use petrel_broker::SubscriptionTree;
use petrel_codec::TopicFilter;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// A node's number, unique in its cluster (`node_id` in `[cluster]`).
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The cluster's Raft types: the commands below (each with where it
    /// came from), nodes known by an address (`host:port` of their
    /// node-to-node listener).
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = NodeId,
        Node = openraft::BasicNode,
);

/// A change the cluster agrees on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Node `node` now wants messages matching `add`, and no longer those
    /// matching `remove` (a batch of its subscriptions' first arrivals and
    /// last departures, in the order they happened).
    Routes {
        /// The node.
        node: NodeId,
        /// Filters it wants now.
        add: Vec<String>,
        /// Filters it no longer wants.
        remove: Vec<String>,
    },
    /// Node `node` wants exactly `filters`: what it writes when it starts
    /// (or finds its routes out of date), replacing whatever the cluster
    /// held for it. It holds the sessions of `clients`: those the cluster
    /// gives no owner become its own, and a session it owned and holds
    /// no longer (it ended while the node was down) has no owner.
    Reset {
        /// The node.
        node: NodeId,
        /// Every filter it wants.
        filters: Vec<String>,
        /// The client ids of the sessions it holds.
        clients: Vec<String>,
    },
    /// Retained messages published on node `node`, in order: each
    /// becomes its topic's retained message on every node (one with an
    /// empty payload deletes the topic's). Each is a message in the
    /// broker's stored form, its expiry as a wall-clock time.
    Retain {
        /// The node.
        node: NodeId,
        /// The messages.
        messages: Vec<Vec<u8>>,
    },
    /// Session ownership on node `node`, in the order it happened: each a
    /// client id with `Some` claim for a CONNECT there (the node now owns
    /// the session: the one that had it hands it on, or ends it with
    /// Clean Start), or `None` for a session that ended there (no longer
    /// its own, if it still was).
    Owners {
        /// The node.
        node: NodeId,
        /// Claims and releases, in order.
        ops: Vec<(String, Option<Claimed>)>,
    },
}

/// A command as written to the log: with where it came from, so that one
/// written twice (sent again after its answer was lost, or arriving late)
/// is applied once, and never after a later one from the same place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Where it came from (`None`: applied as it comes).
    pub origin: Option<Origin>,
    /// The command.
    pub command: Command,
}

/// Where a [`Proposal`] came from: one node's run (`incarnation`, drawn
/// when it starts) and one of its streams of writes, each write with the
/// next number of its stream. A stream's writes are made one at a time,
/// so a number at or below the last applied is a repeat (or a late copy
/// of a write given up on, whose changes were written again since).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Origin {
    /// The node.
    pub node: NodeId,
    /// Its stream (0: routes and sessions, 1: retained messages).
    pub stream: u8,
    /// Its run.
    pub incarnation: u64,
    /// The write's number in the stream.
    pub seq: u64,
}

/// A node's stream of writes: the node, and the stream's number.
pub(crate) type Stream = (NodeId, u8);

/// The last write applied from a stream: its run, its number, and what it
/// answered.
pub(crate) type LastWrite = (u64, u64, Applied);

/// A CONNECT's claim of its session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claimed {
    /// With Clean Start: the session ends where it was.
    pub clean: bool,
    /// Who connected (a session that belongs to another user is not
    /// taken).
    pub user: Option<String>,
}

/// What applying a command answers: for [`Command::Owners`], each
/// operation's previous owner, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The owner before each operation.
    pub previous: Vec<Option<NodeId>>,
}

/// A session to hand on: node `to` took over `client`'s session from
/// this node, at log index `index`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    /// The client id.
    pub client: String,
    /// Its new node.
    pub to: NodeId,
    /// How it was claimed (with Clean Start the session ends here).
    pub claim: Claimed,
    /// The log index of the claim (0: not from the log).
    pub index: u64,
}

/// The routes: which node wants which filter. Kept as the filters by node
/// (what snapshots hold) and as a subscription tree, to find the nodes a
/// topic goes to in one walk.
/// Beside them, each session's owner, and what this node must hand on.
#[derive(Debug, Default)]
pub struct Routes {
    by_node: BTreeMap<NodeId, BTreeSet<String>>,
    tree: SubscriptionTree<NodeId, ()>,
    /// Each session's owner, with how it claimed the session (a node back
    /// from the dead that still has it ends it if that was with Clean
    /// Start).
    owners: HashMap<String, (NodeId, Claimed)>,
    /// This node, and where it hears of sessions taken from it.
    moves: Option<(NodeId, mpsc::UnboundedSender<Move>)>,
    /// Whose turn it is in shared groups with members on several nodes.
    turn: AtomicUsize,
    /// The last write applied from each node's stream: its run, its
    /// number, and what it answered (a repeat answers the same).
    last: HashMap<Stream, LastWrite>,
}

impl Routes {
    /// Routes for node `me`, which hears on `moves` of sessions other
    /// nodes take from it.
    pub fn new(me: NodeId, moves: mpsc::UnboundedSender<Move>) -> Self {
        Self {
            moves: Some((me, moves)),
            ..Self::default()
        }
    }

    /// The node that owns `client`'s session, if one does.
    pub fn owner(&self, client: &str) -> Option<NodeId> {
        self.owners.get(client).map(|(n, _)| *n)
    }

    /// The owner of `client`'s session and how it claimed it.
    pub fn owner_claim(&self, client: &str) -> Option<(NodeId, Claimed)> {
        self.owners.get(client).cloned()
    }

    /// How many sessions have an owner.
    pub fn owned(&self) -> usize {
        self.owners.len()
    }

    /// Whether `proposal` repeats a write applied already: what that
    /// answered, if so.
    pub fn repeated(&self, proposal: &Proposal) -> Option<Applied> {
        let o = proposal.origin?;
        let (run, seq, answer) = self.last.get(&(o.node, o.stream))?;
        // From an earlier run of the node (which started again since), or
        // at or before the last of this run.
        let stale = o.incarnation < *run || (o.incarnation == *run && o.seq <= *seq);
        stale.then(|| {
            if o.incarnation == *run && o.seq == *seq {
                answer.clone()
            } else {
                Applied::default()
            }
        })
    }

    /// Apply `proposal`, the log's entry `index`, unless it repeats one
    /// applied already ([`Routes::repeated`]): what it answers.
    pub fn apply_proposal(&mut self, proposal: &Proposal, index: u64) -> Applied {
        if let Some(answer) = self.repeated(proposal) {
            return answer;
        }
        let applied = self.apply(&proposal.command, index);
        if let Some(o) = proposal.origin {
            self.last
                .insert((o.node, o.stream), (o.incarnation, o.seq, applied.clone()));
        }
        applied
    }

    /// Apply one command, the log's entry `index`: what it answers.
    pub fn apply(&mut self, command: &Command, index: u64) -> Applied {
        let mut applied = Applied::default();
        match command {
            Command::Owners { node, ops } => {
                for (client, claim) in ops {
                    let previous = match claim {
                        Some(claim) => {
                            let previous = self
                                .owners
                                .insert(client.clone(), (*node, claim.clone()))
                                .map(|(n, _)| n);
                            if let Some((me, tx)) = &self.moves {
                                if previous == Some(*me) && *node != *me {
                                    let _ = tx.send(Move {
                                        client: client.clone(),
                                        to: *node,
                                        claim: claim.clone(),
                                        index,
                                    });
                                }
                            }
                            previous
                        }
                        None => {
                            let previous = self.owner(client);
                            if previous == Some(*node) {
                                self.owners.remove(client);
                            }
                            previous
                        }
                    };
                    applied.previous.push(previous);
                }
                return applied;
            }
            Command::Reset { node, clients, .. } => {
                let holds: HashSet<&str> = clients.iter().map(String::as_str).collect();
                self.owners
                    .retain(|c, (n, _)| *n != *node || holds.contains(c.as_str()));
                for c in clients {
                    self.owners
                        .entry(c.clone())
                        .or_insert_with(|| (*node, Claimed::default()));
                }
            }
            Command::Routes { .. } | Command::Retain { .. } => {}
        }
        self.apply_routes(command);
        applied
    }

    fn apply_routes(&mut self, command: &Command) {
        match command {
            Command::Routes { node, add, remove } => {
                for f in add {
                    self.add(*node, f);
                }
                for f in remove {
                    self.remove(*node, f);
                }
            }
            Command::Reset { node, filters, .. } => {
                let old: Vec<String> = self
                    .by_node
                    .get(node)
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default();
                for f in &old {
                    self.remove(*node, f);
                }
                for f in filters {
                    self.add(*node, f);
                }
            }
            Command::Owners { .. } | Command::Retain { .. } => {}
        }
    }

    fn add(&mut self, node: NodeId, filter: &str) {
        let Some(tf) = route_filter(filter) else {
            return;
        };
        if self
            .by_node
            .entry(node)
            .or_default()
            .insert(filter.to_string())
        {
            self.tree.insert(&tf, node, ());
        }
    }

    fn remove(&mut self, node: NodeId, filter: &str) {
        let Some(set) = self.by_node.get_mut(&node) else {
            return;
        };
        if set.remove(filter) {
            if let Some(tf) = route_filter(filter) {
                self.tree.remove(&tf, &node);
            }
            if set.is_empty() {
                self.by_node.remove(&node);
            }
        }
    }

    /// Where a message on `topic` published on node `me` goes: each other
    /// node that wants it, with the shared groups it serves, and the
    /// groups other nodes serve (which `me` does not). Each shared group
    /// the topic matches is served by one of the nodes with a member:
    /// `me` if it has one and `prefer_local`, else each in turn.
    pub fn plan(
        &self,
        topic: &str,
        me: NodeId,
        prefer_local: bool,
        up: impl Fn(NodeId) -> bool,
    ) -> Plan {
        let mut plan = Plan::default();
        // One turn a message; each group starts from its own place in it,
        // so two groups on the same nodes do not go in step.
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        self.tree.matches(topic, |m| match m {
            petrel_broker::Matched::Direct { key, .. } => {
                if *key != me {
                    plan.node(*key);
                }
            }
            petrel_broker::Matched::Shared { share, members, .. } => {
                // The nodes with a member that can take it now (this one,
                // and the others not down).
                // (None can: one that is down is picked anyway, and a QoS
                // 1/2 publisher is refused when it does not take it.)
                let all = members.iter().map(|(n, _)| *n);
                let mut able: Vec<NodeId> = all.clone().filter(|n| *n == me || up(*n)).collect();
                if able.is_empty() {
                    able = all.collect();
                }
                let to = if prefer_local && able.contains(&me) {
                    me
                } else {
                    let offset = share.bytes().fold(0usize, |h, b| {
                        h.wrapping_mul(31).wrapping_add(usize::from(b))
                    });
                    able[turn.wrapping_add(offset) % able.len()]
                };
                if to != me {
                    plan.node(to).push(share.to_string());
                    plan.elsewhere.push(share.to_string());
                }
            }
        });
        plan
    }

    /// The nodes other than `me` that want `topic`, each once (for one
    /// of its filters, or a shared group with a member there).
    pub fn nodes_for(&self, topic: &str, me: NodeId) -> Vec<NodeId> {
        let mut nodes = Vec::new();
        self.tree.matches(topic, |m| {
            let mut add = |key: &NodeId| {
                if *key != me && !nodes.contains(key) {
                    nodes.push(*key);
                }
            };
            match m {
                petrel_broker::Matched::Direct { key, .. } => add(key),
                petrel_broker::Matched::Shared { members, .. } => {
                    members.iter().for_each(|(n, _)| add(n));
                }
            }
        });
        nodes
    }

    /// The filters node `node` is known to want.
    pub fn of(&self, node: NodeId) -> Vec<String> {
        self.by_node
            .get(&node)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// How many (node, filter) routes there are.
    pub fn len(&self) -> usize {
        self.by_node.values().map(BTreeSet::len).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }

    /// The routes and owners as a snapshot holds them.
    pub(crate) fn to_snapshot(&self) -> SnapshotData {
        SnapshotData {
            routes: self.by_node.clone(),
            owners: self
                .owners
                .iter()
                .map(|(c, o)| (c.clone(), o.clone()))
                .collect(),
            retained: Vec::new(),
            last: self.last.iter().map(|(k, v)| (*k, v.clone())).collect(),
        }
    }

    /// Replace the routes and owners with what a snapshot held (this node,
    /// and where it hears of moves, stay).
    pub(crate) fn load_snapshot(&mut self, data: SnapshotData) {
        let moves = self.moves.take();
        *self = Self {
            moves,
            owners: data.owners.into_iter().collect(),
            last: data.last.into_iter().collect(),
            ..Self::default()
        };
        for (node, filters) in data.routes {
            for f in filters {
                self.add(node, &f);
            }
        }
    }
}

/// The filter a route matches with: a shared subscription's stays
/// shared (the tree holds, for each group, the nodes with a member).
/// `None` for what is not a filter (never written by a node of ours).
fn route_filter(filter: &str) -> Option<TopicFilter> {
    TopicFilter::try_from(filter).ok()
}

/// Where a message goes in the cluster ([`Routes::plan`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Each other node it goes to, with the shared groups (whole filters)
    /// picked for it.
    pub nodes: Vec<(NodeId, Vec<String>)>,
    /// The groups picked for other nodes: the publishing node skips them.
    pub elsewhere: Vec<String>,
}

impl Plan {
    /// Node `n`'s groups, with `n` added if it was not there.
    fn node(&mut self, n: NodeId) -> &mut Vec<String> {
        let at = match self.nodes.iter().position(|(x, _)| *x == n) {
            Some(at) => at,
            None => {
                self.nodes.push((n, Vec::new()));
                self.nodes.len() - 1
            }
        };
        &mut self.nodes[at].1
    }
}

/// A snapshot's content: what the state machine had applied.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct SnapshotData {
    pub(crate) routes: BTreeMap<NodeId, BTreeSet<String>>,
    pub(crate) owners: BTreeMap<String, (NodeId, Claimed)>,
    /// Every retained message, in the broker's stored form.
    pub(crate) retained: Vec<Vec<u8>>,
    /// The last write applied from each node's stream.
    pub(crate) last: Vec<(Stream, LastWrite)>,
}

/// The data type openraft moves snapshots in.
pub(crate) type SnapshotBytes = Cursor<Vec<u8>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(node: NodeId, add: &[&str], remove: &[&str]) -> Command {
        Command::Routes {
            node,
            add: add.iter().map(|s| s.to_string()).collect(),
            remove: remove.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_topic_goes_to_each_node_whose_filters_match_once_and_never_back() {
        let mut r = Routes::default();
        r.apply(&routes(2, &["a/+", "a/#"], &[]), 1);
        r.apply(&routes(3, &["a/b"], &[]), 2);
        r.apply(&routes(1, &["a/#"], &[]), 3);
        let mut n = r.nodes_for("a/b", 1);
        n.sort_unstable();
        assert_eq!(n, [2, 3]);
        assert_eq!(r.nodes_for("a/c", 1), [2]);
        assert!(r.nodes_for("b", 1).is_empty());
        // `$` topics are not matched by a leading wildcard.
        r.apply(&routes(4, &["#"], &[]), 4);
        assert!(r.nodes_for("$internal/x", 1).is_empty());
        assert_eq!(r.nodes_for("z", 1), [4]);
    }

    #[test]
    fn a_shared_subscription_routes_by_its_filter_and_goes_with_its_last_form() {
        let mut r = Routes::default();
        r.apply(&routes(2, &["$share/g/s/+", "s/+"], &[]), 1);
        assert_eq!(r.nodes_for("s/1", 1), [2]);
        r.apply(&routes(2, &[], &["s/+"]), 2);
        assert_eq!(r.nodes_for("s/1", 1), [2], "the shared form still wants it");
        r.apply(&routes(2, &[], &["$share/g/s/+"]), 3);
        assert!(r.nodes_for("s/1", 1).is_empty());
        assert!(r.is_empty());
        // The other way round, and two groups: the route stays while any
        // form of it does.
        r.apply(&routes(2, &["s/+", "$share/a/s/+", "$share/b/s/+"], &[]), 4);
        r.apply(&routes(2, &[], &["$share/a/s/+", "s/+"]), 5);
        assert_eq!(r.nodes_for("s/1", 1), [2], "group b still wants it");
        r.apply(&routes(2, &[], &["$share/b/s/+"]), 6);
        assert!(r.nodes_for("s/1", 1).is_empty());
    }

    #[test]
    fn each_shared_group_is_served_by_one_node_in_turn() {
        let mut r = Routes::default();
        // Group g has members on nodes 1, 2 and 3; group h on node 2 only;
        // node 3 also subscribes directly.
        r.apply(&routes(1, &["$share/g/s/+"], &[]), 1);
        r.apply(&routes(2, &["$share/g/s/+", "$share/h/s/#"], &[]), 2);
        r.apply(&routes(3, &["$share/g/s/+", "s/#"], &[]), 3);
        let mut served = BTreeMap::<NodeId, usize>::new();
        for _ in 0..30 {
            let plan = r.plan("s/1", 1, false, |_| true);
            // Group h is node 2's, always; node 3 gets every message.
            let two = plan.nodes.iter().find(|(n, _)| *n == 2).unwrap();
            assert!(two.1.contains(&"$share/h/s/#".to_string()));
            assert!(plan.nodes.iter().any(|(n, _)| *n == 3));
            assert!(plan.elsewhere.contains(&"$share/h/s/#".to_string()));
            // Group g: exactly one node.
            let g = "$share/g/s/+".to_string();
            let picked: Vec<NodeId> = plan
                .nodes
                .iter()
                .filter(|(_, gs)| gs.contains(&g))
                .map(|(n, _)| *n)
                .collect();
            let here = !plan.elsewhere.contains(&g);
            assert_eq!(picked.len() + usize::from(here), 1, "{plan:?}");
            *served
                .entry(picked.first().copied().unwrap_or(1))
                .or_default() += 1;
        }
        assert_eq!(served.into_values().collect::<Vec<_>>(), [10, 10, 10]);
        // A node with no match and no group is not sent it.
        assert!(r.plan("t", 1, false, |_| true).nodes.is_empty());
        // With shared_local, node 1 keeps group g's messages.
        for _ in 0..5 {
            let plan = r.plan("s/1", 1, true, |_| true);
            assert_eq!(plan.elsewhere, ["$share/h/s/#"]);
        }
        // Node 3 down: group g goes to nodes 1 and 2 only, and group h
        // (whose only member is on node 2, down too) still to node 2.
        let mut to = BTreeSet::new();
        for _ in 0..6 {
            let plan = r.plan("s/1", 1, false, |n| n != 3 && n != 2);
            assert!(plan
                .nodes
                .iter()
                .any(|(n, gs)| *n == 2 && gs.contains(&"$share/h/s/#".to_string())));
            for (n, gs) in plan.nodes {
                if gs.contains(&"$share/g/s/+".to_string()) {
                    to.insert(n);
                }
            }
        }
        assert!(to.is_empty(), "only node 1 can take group g: {to:?}");
        // Node 4 (no member) spreads group g over the three.
        let mut to = BTreeSet::new();
        for _ in 0..3 {
            for (n, gs) in r.plan("s/1", 4, true, |_| true).nodes {
                if gs.contains(&"$share/g/s/+".to_string()) {
                    to.insert(n);
                }
            }
        }
        assert_eq!(to.into_iter().collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[test]
    fn a_write_applied_twice_answers_the_same_and_a_late_one_is_dropped() {
        let mut r = Routes::default();
        let from = |seq, command| Proposal {
            origin: Some(Origin {
                node: 2,
                stream: 0,
                incarnation: 9,
                seq,
            }),
            command,
        };
        let claim = from(1, owners(2, &[("c", Some(false))]));
        assert_eq!(r.apply_proposal(&claim, 1).previous, [None]);
        r.apply(&owners(3, &[("c", Some(false))]), 2);
        // Written again (its answer was lost): applied once, the same
        // answer; node 3 keeps the session.
        assert_eq!(r.apply_proposal(&claim, 3).previous, [None]);
        assert_eq!(r.owner("c"), Some(3));
        // A route change, then a late copy of an earlier one: dropped.
        r.apply_proposal(&from(2, routes(2, &["x"], &[])), 4);
        r.apply_proposal(&from(3, routes(2, &[], &["x"])), 5);
        r.apply_proposal(&from(2, routes(2, &["x"], &[])), 6);
        assert!(r.of(2).is_empty(), "the late add is not applied");
        // The control: the next number is; so is a later run's first.
        r.apply_proposal(&from(4, routes(2, &["y"], &[])), 7);
        assert_eq!(r.of(2), ["y"]);
        let mut other = from(1, routes(2, &["z"], &[]));
        other.origin.as_mut().unwrap().incarnation = 10;
        r.apply_proposal(&other, 8);
        assert_eq!(r.of(2), ["y", "z"]);
        // A late write of the earlier run, after the later run's first: dropped.
        r.apply_proposal(&from(5, routes(2, &["late"], &[])), 9);
        assert_eq!(r.of(2), ["y", "z"]);
        // Snapshots keep what was applied last.
        let mut back = Routes::default();
        back.load_snapshot(r.to_snapshot());
        assert!(back.repeated(&other).is_some());
    }

    #[test]
    fn a_reset_replaces_what_a_node_wanted_and_a_snapshot_keeps_it() {
        let mut r = Routes::default();
        r.apply(&routes(2, &["old/#", "keep"], &[]), 1);
        r.apply(&routes(3, &["other"], &[]), 2);
        r.apply(
            &Command::Reset {
                node: 2,
                filters: vec!["keep".into(), "new/+".into()],
                clients: vec![],
            },
            3,
        );
        assert_eq!(r.of(2), ["keep", "new/+"]);
        assert!(r.nodes_for("old/x", 1).is_empty());
        assert_eq!(r.nodes_for("new/x", 1), [2]);
        assert_eq!(r.len(), 3);
        let mut back = Routes::default();
        back.load_snapshot(r.to_snapshot());
        assert_eq!(back.of(2), r.of(2));
        assert_eq!(back.of(3), ["other"]);
        assert_eq!(back.nodes_for("new/x", 1), [2]);
    }

    fn owners(node: NodeId, ops: &[(&str, Option<bool>)]) -> Command {
        Command::Owners {
            node,
            ops: ops
                .iter()
                .map(|(c, o)| {
                    let claim = o.map(|clean| Claimed { clean, user: None });
                    (c.to_string(), claim)
                })
                .collect(),
        }
    }

    #[test]
    fn a_claim_answers_the_previous_owner_and_tells_it_to_hand_the_session_on() {
        let (tx, mut moves) = mpsc::unbounded_channel();
        // Node 1's view.
        let mut r = Routes::new(1, tx);
        let a = r.apply(&owners(1, &[("c1", Some(false)), ("c2", Some(false))]), 1);
        assert_eq!(a.previous, [None, None]);
        assert!(moves.try_recv().is_err(), "its own claims move nothing");
        // Node 2 takes c1 over (keeping it), node 3 takes c2 with Clean Start.
        let a = r.apply(&owners(2, &[("c1", Some(false))]), 2);
        assert_eq!(a.previous, [Some(1)]);
        let a = r.apply(&owners(3, &[("c2", Some(true))]), 3);
        assert_eq!(a.previous, [Some(1)]);
        let got: Vec<Move> = std::iter::from_fn(|| moves.try_recv().ok()).collect();
        assert_eq!(
            got,
            [
                Move {
                    client: "c1".into(),
                    to: 2,
                    claim: Claimed::default(),
                    index: 2,
                },
                Move {
                    client: "c2".into(),
                    to: 3,
                    claim: Claimed {
                        clean: true,
                        user: None
                    },
                    index: 3,
                }
            ]
        );
        // Between two others: nothing for node 1 to do.
        r.apply(&owners(3, &[("c1", Some(false))]), 4);
        assert!(moves.try_recv().is_err());
        assert_eq!(r.owner("c1"), Some(3));
    }

    #[test]
    fn a_release_frees_only_a_session_the_node_still_owns() {
        let mut r = Routes::default();
        r.apply(&owners(1, &[("c", Some(false))]), 1);
        r.apply(&owners(2, &[("c", Some(false))]), 2);
        // Node 1's release, written after node 2's claim: not node 1's now.
        let a = r.apply(&owners(1, &[("c", None)]), 3);
        assert_eq!(a.previous, [Some(2)]);
        assert_eq!(r.owner("c"), Some(2));
        // The control: node 2's own release frees it.
        r.apply(&owners(2, &[("c", None)]), 4);
        assert_eq!(r.owner("c"), None);
        assert_eq!(r.owned(), 0);
        // A claim and a release in one batch apply in order.
        r.apply(
            &owners(
                1,
                &[
                    ("d", Some(false)),
                    ("d", None),
                    ("e", None),
                    ("e", Some(true)),
                ],
            ),
            5,
        );
        assert_eq!((r.owner("d"), r.owner("e")), (None, Some(1)));
    }

    #[test]
    fn a_reset_keeps_the_sessions_a_node_holds_and_a_snapshot_keeps_owners() {
        let mut r = Routes::default();
        r.apply(
            &owners(1, &[("gone", Some(false)), ("kept", Some(false))]),
            1,
        );
        r.apply(&owners(2, &[("theirs", Some(false))]), 2);
        // Node 1 restarted holding `kept`, `theirs` (taken over while it was
        // down) and `unowned`.
        r.apply(
            &Command::Reset {
                node: 1,
                filters: vec![],
                clients: vec!["kept".into(), "theirs".into(), "unowned".into()],
            },
            3,
        );
        assert_eq!(r.owner("gone"), None, "it ended with the node");
        assert_eq!(r.owner("kept"), Some(1));
        assert_eq!(r.owner("theirs"), Some(2), "a reset claims nothing taken");
        assert_eq!(r.owner("unowned"), Some(1));
        let mut back = Routes::default();
        back.load_snapshot(r.to_snapshot());
        assert_eq!(back.owner("theirs"), Some(2));
        assert_eq!(back.owned(), 3);
    }
}
