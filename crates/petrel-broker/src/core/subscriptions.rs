//! The subscription index: topic filters in a per-level trie.

use std::collections::HashMap;
use std::hash::Hash;

use petrel_codec::TopicFilter;

use super::small::SmallMap;

/// Topic filters, each with the subscribers (keys) that hold it, matched
/// against topic names by the rules of 4.7 and 4.8.2.
///
/// A filter is a path in the trie, one node per level; `+` has its own edge
/// and `#` subscriptions hang off the node of the level before it. Matching a
/// topic follows at each level only the literal child of that level and the
/// `+` edge, so it touches the branches the topic can reach and nothing else.
///
/// A shared subscription `$share/{group}/{filter}` is stored at `{filter}`'s
/// node in its group; a match reports the whole group, from which the broker
/// delivers to one member ([`Matched::Shared`]).
#[derive(Debug)]
pub struct SubscriptionTree<K, V> {
    root: Node<K, V>,
    len: usize,
}

/// One level. Most nodes are leaves with one subscriber, so everything a
/// leaf doesn't use is behind one pointer that stays empty: a leaf costs
/// its map entry (40 bytes and a name), and its one subscriber.
#[derive(Debug)]
struct Node<K, V> {
    /// Filters that end here.
    exact: Subscribers<K, V>,
    more: Option<Box<More<K, V>>>,
}

/// What a node has beyond its own subscribers: the levels below it.
#[derive(Debug)]
struct More<K, V> {
    children: HashMap<Box<str>, Node<K, V>>,
    plus: Option<Box<Node<K, V>>>,
    /// Filters that end here with `/#` (or are `#`, at the root).
    hash: Option<Box<Subscribers<K, V>>>,
}

impl<K, V> Default for More<K, V> {
    fn default() -> Self {
        Self {
            children: HashMap::new(),
            plus: None,
            hash: None,
        }
    }
}

impl<K, V> More<K, V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.plus.is_none() && self.hash.is_none()
    }
}

/// Shared subscriptions' groups by their whole filter (`$share/{group}/{filter}`:
/// a group is its share name with its filter), members in joining order.
type Groups<K, V> = HashMap<Box<str>, Vec<(K, V)>>;

#[derive(Debug)]
struct Subscribers<K, V> {
    direct: SmallMap<K, V>,
    shared: Option<Box<Groups<K, V>>>,
}

/// One subscription (or shared group) a topic matched.
#[derive(Debug)]
pub enum Matched<'a, K, V> {
    /// A subscriber's own subscription.
    Direct {
        /// The subscriber.
        key: &'a K,
        /// What it attached to the subscription (its options).
        value: &'a V,
    },
    /// A shared subscription's group: the message goes to one member.
    Shared {
        /// The share name.
        group: &'a str,
        /// The group's whole filter, `$share/{group}/{filter}`: what names
        /// the group (two groups of one share name with different
        /// filters are two groups).
        share: &'a str,
        /// Its members, in the order they joined.
        members: &'a [(K, V)],
    },
}

impl<K, V> Default for Subscribers<K, V> {
    fn default() -> Self {
        Self {
            direct: SmallMap::new(),
            shared: None,
        }
    }
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Self {
            exact: Subscribers::default(),
            more: None,
        }
    }
}

impl<K, V> Subscribers<K, V> {
    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.shared.is_none()
    }
}

impl<K, V> Node<K, V> {
    fn more(&mut self) -> &mut More<K, V> {
        self.more.get_or_insert_with(Box::default)
    }

    /// Drop `more` once nothing is left in it.
    fn prune(&mut self) {
        if self.more.as_ref().is_some_and(|m| m.is_empty()) {
            self.more = None;
        }
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.more.is_none()
    }
}

impl<K, V> Default for SubscriptionTree<K, V> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

/// Split a filter into (the whole filter if it is a shared one, the
/// filter proper).
fn split_shared(filter: &TopicFilter) -> (Option<&str>, &str) {
    match filter.shared() {
        Some((_, f)) => (Some(filter.as_str()), f),
        None => (None, filter.as_str()),
    }
}

/// The share name of a shared filter (`g` of `$share/g/f`).
fn share_name(share: &str) -> &str {
    share
        .get(SHARE_PREFIX.len()..)
        .and_then(|s| s.split_once('/'))
        .map_or(share, |(g, _)| g)
}

/// What a shared filter begins with.
const SHARE_PREFIX: &str = "$share/";

impl<K: Eq + Hash + Clone, V> SubscriptionTree<K, V> {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many subscriptions (filter and subscriber pairs) it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn slot<'t>(node: &'t mut Node<K, V>, filter: &str) -> &'t mut Subscribers<K, V> {
        let mut node = node;
        for level in super::levels(filter) {
            match level {
                "#" => return node.more().hash.get_or_insert_with(Box::default),
                "+" => node = node.more().plus.get_or_insert_with(Box::default),
                lit => node = node.more().children.entry(lit.into()).or_default(),
            }
        }
        &mut node.exact
    }

    /// Add `key`'s subscription to `filter`, or replace its value: a
    /// subscriber holds a filter once ([MQTT-3.8.4-3]). Returns the value it
    /// replaced.
    pub fn insert(&mut self, filter: &TopicFilter, key: K, value: V) -> Option<V> {
        let (group, f) = split_shared(filter);
        let slot = Self::slot(&mut self.root, f);
        let previous = match group {
            None => slot.direct.insert(key, value),
            Some(g) => {
                let groups = slot.shared.get_or_insert_with(Box::default);
                let members = groups.entry(g.into()).or_default();
                match members.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, v)) => Some(std::mem::replace(v, value)),
                    None => {
                        members.push((key, value));
                        None
                    }
                }
            }
        };
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Remove `key`'s subscription to `filter` (compared character by
    /// character, [MQTT-3.10.4-1]); branches left empty are pruned.
    pub fn remove(&mut self, filter: &TopicFilter, key: &K) -> Option<V> {
        let (group, f) = split_shared(filter);
        let removed = Self::remove_at(&mut self.root, Some(f), group, key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    fn remove_at(
        node: &mut Node<K, V>,
        rest: Option<&str>,
        group: Option<&str>,
        key: &K,
    ) -> Option<V> {
        let (level, tail) = match rest {
            None => return Self::remove_from(&mut node.exact, group, key),
            Some(r) => super::split_level(r),
        };
        let more = node.more.as_deref_mut()?;
        let removed = match level {
            "#" => {
                let slot = more.hash.as_deref_mut()?;
                let removed = Self::remove_from(slot, group, key);
                if slot.is_empty() {
                    more.hash = None;
                }
                removed
            }
            "+" => {
                let child = more.plus.as_deref_mut()?;
                let removed = Self::remove_at(child, tail, group, key);
                if child.is_empty() {
                    more.plus = None;
                }
                removed
            }
            lit => {
                let children = &mut more.children;
                let child = children.get_mut(lit)?;
                let removed = Self::remove_at(child, tail, group, key);
                if child.is_empty() {
                    children.remove(lit);
                    if children.capacity() > 4 * children.len() {
                        children.shrink_to_fit();
                    }
                }
                removed
            }
        };
        node.prune();
        removed
    }

    fn remove_from(slot: &mut Subscribers<K, V>, group: Option<&str>, key: &K) -> Option<V> {
        match group {
            None => slot.direct.remove(key),
            Some(g) => {
                let groups = slot.shared.as_deref_mut()?;
                let members = groups.get_mut(g)?;
                let at = members.iter().position(|(k, _)| k == key)?;
                let (_, v) = members.remove(at);
                if members.is_empty() {
                    groups.remove(g);
                    if groups.is_empty() {
                        slot.shared = None;
                    }
                }
                Some(v)
            }
        }
    }

    /// Every subscription (or shared group) whose filter matches `topic`, a
    /// topic name. A subscriber with several matching filters is reported once
    /// per filter; 3.3.4 leaves to the broker how to combine them.
    pub fn matches<'a>(&'a self, topic: &str, mut visit: impl FnMut(Matched<'a, K, V>)) {
        // [MQTT-4.7.2-1]: a topic starting with `$` is not matched by a filter
        // starting with a wildcard.
        let dollar = topic.starts_with('$');
        Self::walk(&self.root, Some(topic), true, dollar, &mut visit);
    }

    fn walk<'a>(
        node: &'a Node<K, V>,
        rest: Option<&str>,
        first: bool,
        dollar: bool,
        visit: &mut impl FnMut(Matched<'a, K, V>),
    ) {
        let wildcards = !(first && dollar);
        let Some(rest) = rest else {
            // The topic ends here: filters that end here, and `x/#` matching
            // its parent level `x` (4.7.1.2).
            Self::report(&node.exact, visit);
            if let Some(hash) = node.more.as_ref().and_then(|m| m.hash.as_deref()) {
                Self::report(hash, visit);
            }
            return;
        };
        let Some(more) = node.more.as_deref() else {
            return;
        };
        if wildcards {
            if let Some(hash) = &more.hash {
                Self::report(hash, visit);
            }
        }
        let (level, tail) = super::split_level(rest);
        if let Some(child) = more.children.get(level) {
            Self::walk(child, tail, false, dollar, visit);
        }
        if wildcards {
            if let Some(plus) = &more.plus {
                Self::walk(plus, tail, false, dollar, visit);
            }
        }
    }

    fn report<'a>(slot: &'a Subscribers<K, V>, visit: &mut impl FnMut(Matched<'a, K, V>)) {
        for (key, value) in slot.direct.iter() {
            visit(Matched::Direct { key, value });
        }
        for (share, members) in slot.shared.iter().flat_map(|g| g.iter()) {
            visit(Matched::Shared {
                group: share_name(share),
                share,
                members,
            });
        }
    }
}
