//! What the nodes agree on through openraft: the commands of the log and
//! the state they build.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;

use petrel_broker::SubscriptionTree;
use petrel_codec::TopicFilter;
use serde::{Deserialize, Serialize};

/// A node's number, unique in its cluster (`node_id` in `[cluster]`).
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The cluster's Raft types: the commands below, nodes known by an
    /// address (`host:port` of their node-to-node listener).
    pub TypeConfig:
        D = Command,
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
    /// held for it.
    Reset {
        /// The node.
        node: NodeId,
        /// Every filter it wants.
        filters: Vec<String>,
    },
}

/// What applying a command answers: nothing beyond its being applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied;

/// The routes: which node wants which filter. Kept as the filters by node
/// (what snapshots hold) and as a subscription tree, to find the nodes a
/// topic goes to in one walk.
#[derive(Debug, Default)]
pub struct Routes {
    by_node: BTreeMap<NodeId, BTreeSet<String>>,
    tree: SubscriptionTree<NodeId, ()>,
}

impl Routes {
    /// Apply one command.
    pub fn apply(&mut self, command: &Command) {
        match command {
            Command::Routes { node, add, remove } => {
                for f in add {
                    self.add(*node, f);
                }
                for f in remove {
                    self.remove(*node, f);
                }
            }
            Command::Reset { node, filters } => {
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
                // Another filter of the node's may map to the same route
                // (`$share/a/x` and `x`): keep it while one does. Only the
                // plain filter and the shared ones (sorted together, by
                // their prefix) can: a removal costs a lookup and a look
                // at the node's shared filters, not at all its filters.
                let shared = (
                    std::ops::Bound::Included(SHARE_PREFIX),
                    std::ops::Bound::Excluded(SHARE_END),
                );
                let still = set.contains(tf.as_str())
                    || set
                        .range::<str, _>(shared)
                        .any(|f| route_filter(f).is_some_and(|o| o.as_str() == tf.as_str()));
                if !still {
                    self.tree.remove(&tf, &node);
                }
            }
            if set.is_empty() {
                self.by_node.remove(&node);
            }
        }
    }

    /// The nodes other than `me` that want `topic`, each once.
    pub fn nodes_for(&self, topic: &str, me: NodeId) -> Vec<NodeId> {
        let mut nodes = Vec::new();
        self.tree.matches(topic, |m| {
            if let petrel_broker::Matched::Direct { key, .. } = m {
                if *key != me && !nodes.contains(key) {
                    nodes.push(*key);
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

    /// The routes as a snapshot holds them.
    pub fn to_snapshot(&self) -> BTreeMap<NodeId, BTreeSet<String>> {
        self.by_node.clone()
    }

    /// The routes a snapshot held.
    pub fn from_snapshot(by_node: BTreeMap<NodeId, BTreeSet<String>>) -> Self {
        let mut r = Self::default();
        for (node, filters) in by_node {
            for f in filters {
                r.add(node, &f);
            }
        }
        r
    }
}

/// Where shared subscriptions' filters begin, and the first string past
/// them in order (`0` follows `/`).
const SHARE_PREFIX: &str = "$share/";
const SHARE_END: &str = "$share0";

/// The filter a route matches with: a shared subscription's
/// `$share/GROUP/` prefix taken off (a node with a member of the group
/// wants what the group's filter matches). `None` for what is not a
/// filter (never written by a node of ours).
fn route_filter(filter: &str) -> Option<TopicFilter> {
    let tf = TopicFilter::try_from(filter).ok()?;
    match tf.shared() {
        Some((_, inner)) => TopicFilter::try_from(inner).ok(),
        None => Some(tf),
    }
}

/// A snapshot's content: what the state machine had applied.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct SnapshotData {
    pub(crate) routes: BTreeMap<NodeId, BTreeSet<String>>,
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
        r.apply(&routes(2, &["a/+", "a/#"], &[]));
        r.apply(&routes(3, &["a/b"], &[]));
        r.apply(&routes(1, &["a/#"], &[]));
        let mut n = r.nodes_for("a/b", 1);
        n.sort_unstable();
        assert_eq!(n, [2, 3]);
        assert_eq!(r.nodes_for("a/c", 1), [2]);
        assert!(r.nodes_for("b", 1).is_empty());
        // `$` topics are not matched by a leading wildcard.
        r.apply(&routes(4, &["#"], &[]));
        assert!(r.nodes_for("$internal/x", 1).is_empty());
        assert_eq!(r.nodes_for("z", 1), [4]);
    }

    #[test]
    fn a_shared_subscription_routes_by_its_filter_and_goes_with_its_last_form() {
        let mut r = Routes::default();
        r.apply(&routes(2, &["$share/g/s/+", "s/+"], &[]));
        assert_eq!(r.nodes_for("s/1", 1), [2]);
        r.apply(&routes(2, &[], &["s/+"]));
        assert_eq!(r.nodes_for("s/1", 1), [2], "the shared form still wants it");
        r.apply(&routes(2, &[], &["$share/g/s/+"]));
        assert!(r.nodes_for("s/1", 1).is_empty());
        assert!(r.is_empty());
        // The other way round, and two groups: the route stays while any
        // form of it does.
        r.apply(&routes(2, &["s/+", "$share/a/s/+", "$share/b/s/+"], &[]));
        r.apply(&routes(2, &[], &["$share/a/s/+", "s/+"]));
        assert_eq!(r.nodes_for("s/1", 1), [2], "group b still wants it");
        r.apply(&routes(2, &[], &["$share/b/s/+"]));
        assert!(r.nodes_for("s/1", 1).is_empty());
    }

    #[test]
    fn a_reset_replaces_what_a_node_wanted_and_a_snapshot_keeps_it() {
        let mut r = Routes::default();
        r.apply(&routes(2, &["old/#", "keep"], &[]));
        r.apply(&routes(3, &["other"], &[]));
        r.apply(&Command::Reset {
            node: 2,
            filters: vec!["keep".into(), "new/+".into()],
        });
        assert_eq!(r.of(2), ["keep", "new/+"]);
        assert!(r.nodes_for("old/x", 1).is_empty());
        assert_eq!(r.nodes_for("new/x", 1), [2]);
        assert_eq!(r.len(), 3);
        let back = Routes::from_snapshot(r.to_snapshot());
        assert_eq!(back.of(2), r.of(2));
        assert_eq!(back.of(3), ["other"]);
        assert_eq!(back.nodes_for("new/x", 1), [2]);
    }
}
