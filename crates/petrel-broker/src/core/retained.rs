//! Retained messages by topic, looked up with topic filters.

use std::collections::BTreeMap;
use std::ops::Bound;

use petrel_codec::{TopicFilter, TopicName};

/// Retained messages, one per topic ([MQTT-3.3.1-5]), in a per-level trie.
///
/// A subscription's filter is walked down the trie: a literal level follows
/// one child, `+` every child of that level, `#` the whole branch below (and
/// the level itself, 4.7.1.2). Topics outside the filter's prefix are never
/// visited, so a new subscription does not scan every retained message.
///
/// Walks go in *topic order*: a topic before the topics below it, siblings
/// in byte order of their level. So a walk can stop and later go on after
/// the last topic it visited ([`RetainedTree::matching_after`]), which is
/// how a subscription's retained messages are sent a batch at a time.
#[derive(Debug)]
pub struct RetainedTree<V> {
    root: Node<V>,
    len: usize,
}

#[derive(Debug)]
struct Node<V> {
    children: BTreeMap<Box<str>, Self>,
    value: Option<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Self {
            children: BTreeMap::new(),
            value: None,
        }
    }
}

impl<V> Default for RetainedTree<V> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<V> RetainedTree<V> {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many topics hold a retained message.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none does.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Retain `value` for `topic`, replacing what was there ([MQTT-3.3.1-5]).
    pub fn insert(&mut self, topic: &TopicName, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in super::levels(topic.as_str()) {
            node = node.children.entry(level.into()).or_default();
        }
        let previous = node.value.replace(value);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// The message retained for `topic`.
    pub fn get(&self, topic: &TopicName) -> Option<&V> {
        let mut node = &self.root;
        for level in super::levels(topic.as_str()) {
            node = node.children.get(level)?;
        }
        node.value.as_ref()
    }

    /// Delete the message retained for `topic` (a retained PUBLISH with an
    /// empty payload, [MQTT-3.3.1-6]); empty branches are pruned.
    pub fn remove(&mut self, topic: &TopicName) -> Option<V> {
        let removed = Self::remove_at(&mut self.root, Some(topic.as_str()));
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    fn remove_at(node: &mut Node<V>, rest: Option<&str>) -> Option<V> {
        let Some(rest) = rest else {
            return node.value.take();
        };
        let (level, tail) = super::split_level(rest);
        let child = node.children.get_mut(level)?;
        let removed = Self::remove_at(child, tail);
        if child.value.is_none() && child.children.is_empty() {
            node.children.remove(level);
        }
        removed
    }

    /// Remove every retained message `keep` refuses (for example those whose
    /// Message Expiry Interval has passed); returns how many went.
    pub fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) -> usize {
        let before = self.len;
        let removed = Self::retain_at(&mut self.root, &mut keep);
        self.len -= removed;
        before - self.len
    }

    fn retain_at(node: &mut Node<V>, keep: &mut impl FnMut(&V) -> bool) -> usize {
        let mut removed = 0;
        if node.value.as_ref().is_some_and(|v| !keep(v)) {
            node.value = None;
            removed += 1;
        }
        node.children.retain(|_, child| {
            removed += Self::retain_at(child, keep);
            child.value.is_some() || !child.children.is_empty()
        });
        removed
    }

    /// Every retained message, `$` topics included (to store them).
    pub fn for_each<'a>(&'a self, mut visit: impl FnMut(&'a V)) {
        Self::all(&self.root, &mut visit);
    }

    /// Every retained message whose topic matches `filter` (the filter part
    /// of a shared subscription is used as is). Topics starting with `$` are
    /// not matched by a leading wildcard ([MQTT-4.7.2-1]).
    pub fn matching<'a>(&'a self, filter: &TopicFilter, mut visit: impl FnMut(&'a V)) {
        self.matching_while(filter, |v| {
            visit(v);
            true
        });
    }

    /// As [`RetainedTree::matching`], stopping as soon as `visit` returns
    /// false (the rest is not walked); whether it went to the end.
    pub fn matching_while<'a>(
        &'a self,
        filter: &TopicFilter,
        visit: impl FnMut(&'a V) -> bool,
    ) -> bool {
        self.matching_after(filter, None, visit)
    }

    /// As [`RetainedTree::matching_while`], visiting only topics that come
    /// after `after` in topic order (all of them if `None`): a walk that
    /// stopped goes on from the last topic it visited, whatever was retained
    /// or deleted meanwhile. The cost of going back to `after` is its depth,
    /// not the number of topics already visited.
    pub fn matching_after<'a>(
        &'a self,
        filter: &TopicFilter,
        after: Option<&str>,
        mut visit: impl FnMut(&'a V) -> bool,
    ) -> bool {
        let f = filter.shared().map_or(filter.as_str(), |(_, f)| f);
        let cursor = after.map_or(Cursor::All, Cursor::Below);
        Self::walk(&self.root, Some(f), true, cursor, &mut visit)
    }

    /// Whether the walk went to the end (`visit` never said stop).
    fn walk<'a>(
        node: &'a Node<V>,
        rest: Option<&str>,
        first: bool,
        cursor: Cursor<'_>,
        visit: &mut impl FnMut(&'a V) -> bool,
    ) -> bool {
        let mine = matches!(cursor, Cursor::All);
        let Some(rest) = rest else {
            return !mine || node.value.as_ref().is_none_or(&mut *visit);
        };
        let (level, tail) = super::split_level(rest);
        let eligible = |name: &str| !(first && name.starts_with('$'));
        match level {
            "#" => {
                // The level itself (`sport/#` matches `sport`), then all below.
                if let Some(v) = node.value.as_ref().filter(|_| mine && !first) {
                    if !visit(v) {
                        return false;
                    }
                }
                Self::children(node, cursor)
                    .filter(|(name, _, _)| eligible(name))
                    .all(|(_, child, c)| Self::all_while(child, c, visit))
            }
            "+" => Self::children(node, cursor)
                .filter(|(name, _, _)| eligible(name))
                .all(|(_, child, c)| Self::walk(child, tail, false, c, visit)),
            lit => {
                let Some(child) = node.children.get(lit) else {
                    return true;
                };
                match cursor {
                    Cursor::All | Cursor::Here => {
                        Self::walk(child, tail, false, Cursor::All, visit)
                    }
                    Cursor::Below(c) => match super::split_level(c) {
                        (l, _) if lit < l => true,
                        (l, after) if lit == l => {
                            Self::walk(child, tail, false, Cursor::after(after), visit)
                        }
                        _ => Self::walk(child, tail, false, Cursor::All, visit),
                    },
                }
            }
        }
    }

    /// `node`'s children that hold topics after `cursor`, in order, each
    /// with what is left of the cursor below it.
    fn children<'n, 'c>(
        node: &'n Node<V>,
        cursor: Cursor<'c>,
    ) -> impl Iterator<Item = (&'n str, &'n Node<V>, Cursor<'c>)> {
        let (from, rest) = match cursor {
            Cursor::All | Cursor::Here => (Bound::Unbounded, None),
            Cursor::Below(c) => {
                let (level, rest) = super::split_level(c);
                (Bound::Included(level), Some((level, rest)))
            }
        };
        node.children
            .range::<str, _>((from, Bound::Unbounded))
            .map(move |(name, child)| {
                let c = match rest {
                    Some((level, after)) if &**name == level => Cursor::after(after),
                    _ => Cursor::All,
                };
                (&**name, child, c)
            })
    }

    fn all<'a>(node: &'a Node<V>, visit: &mut impl FnMut(&'a V)) {
        if let Some(v) = &node.value {
            visit(v);
        }
        for child in node.children.values() {
            Self::all(child, visit);
        }
    }

    fn all_while<'a>(
        node: &'a Node<V>,
        cursor: Cursor<'_>,
        visit: &mut impl FnMut(&'a V) -> bool,
    ) -> bool {
        (!matches!(cursor, Cursor::All) || node.value.as_ref().is_none_or(&mut *visit))
            && Self::children(node, cursor).all(|(_, c, cur)| Self::all_while(c, cur, visit))
    }
}

/// Where a resumed walk stands relative to a node: which of the topics at
/// and below it come after the last one visited.
#[derive(Clone, Copy)]
enum Cursor<'a> {
    /// Every one (the last visited topic sorts before this node).
    All,
    /// All below it, not the node's own (the last visited topic is this one).
    Here,
    /// Those after these remaining levels of the last visited topic, below
    /// this node.
    Below(&'a str),
}

impl<'a> Cursor<'a> {
    /// The cursor for the child named by the first of the remaining levels.
    fn after(rest: Option<&'a str>) -> Self {
        rest.map_or(Self::Here, Self::Below)
    }
}
