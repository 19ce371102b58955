//! A map for the many small collections a broker keeps per client: a
//! trie node's subscribers, a session's filters. Almost all hold one or a
//! few entries, so they are a short list (24 bytes and one exactly sized
//! allocation) and become a hash map only once they grow past [`FEW`].

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

/// Entries kept as a list; more are hashed.
pub(crate) const FEW: usize = 16;

#[derive(Debug)]
pub(crate) enum SmallMap<K, V> {
    Few(Vec<(K, V)>),
    // Boxed on purpose: the list is what nearly every map is, and the
    // enum stays the size of a `Vec`.
    #[allow(clippy::box_collection)]
    Many(Box<HashMap<K, V>>),
}

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> SmallMap<K, V> {
    pub(crate) const fn new() -> Self {
        Self::Few(Vec::new())
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Few(list) => list.len(),
            Self::Many(map) => map.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries, in no particular order (no allocation: this is on the
    /// routing path).
    pub(crate) fn iter(&self) -> Iter<'_, K, V> {
        match self {
            Self::Few(list) => Iter::Few(list.iter()),
            Self::Many(map) => Iter::Many(map.iter()),
        }
    }

    /// Visit every entry with its value mutable.
    pub(crate) fn for_each_mut(&mut self, mut f: impl FnMut(&K, &mut V)) {
        match self {
            Self::Few(list) => list.iter_mut().for_each(|(k, v)| f(k, v)),
            Self::Many(map) => map.iter_mut().for_each(|(k, v)| f(k, v)),
        }
    }

    /// Take every entry out, leaving it empty.
    pub(crate) fn drain(&mut self) -> Vec<(K, V)> {
        match std::mem::take(self) {
            Self::Few(list) => list,
            Self::Many(map) => map.into_iter().collect(),
        }
    }
}

/// Iterator over a [`SmallMap`].
pub(crate) enum Iter<'a, K, V> {
    Few(std::slice::Iter<'a, (K, V)>),
    Many(std::collections::hash_map::Iter<'a, K, V>),
}

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Few(it) => it.next().map(|(k, v)| (k, v)),
            Self::Many(it) => it.next(),
        }
    }
}

impl<K: Eq + Hash, V> SmallMap<K, V> {
    pub(crate) fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self {
            Self::Few(list) => list.iter().any(|(k, _)| k.borrow() == key),
            Self::Many(map) => map.contains_key(key),
        }
    }

    /// Add or replace; returns the value replaced.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self {
            Self::Few(list) => {
                if let Some((_, v)) = list.iter_mut().find(|(k, _)| *k == key) {
                    return Some(std::mem::replace(v, value));
                }
                if list.len() == FEW {
                    let mut map: HashMap<K, V> = list.drain(..).collect();
                    map.insert(key, value);
                    *self = Self::Many(Box::new(map));
                } else {
                    if list.len() == list.capacity() {
                        // Grow by half, from one: most hold what they need.
                        list.reserve_exact((list.len() / 2).max(1));
                    }
                    list.push((key, value));
                }
                None
            }
            Self::Many(map) => map.insert(key, value),
        }
    }

    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self {
            Self::Few(list) => {
                let at = list.iter().position(|(k, _)| k.borrow() == key)?;
                let (_, v) = list.swap_remove(at);
                if list.is_empty() {
                    *list = Vec::new();
                }
                Some(v)
            }
            Self::Many(map) => {
                let v = map.remove(key);
                if map.is_empty() {
                    *self = Self::new();
                }
                v
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_then_a_map_with_the_same_answers() {
        let mut m = SmallMap::new();
        for i in 0..40u32 {
            assert_eq!(m.insert(i, i * 10), None);
            assert!(matches!(m, SmallMap::Few(_)) == (i < FEW as u32));
        }
        assert_eq!(m.insert(3, 0), Some(30));
        assert_eq!(m.len(), 40);
        assert!(m.contains_key(&39) && !m.contains_key(&40));
        let mut all: Vec<(u32, u32)> = m.iter().map(|(k, v)| (*k, *v)).collect();
        all.sort_unstable();
        assert_eq!(all[3], (3, 0));
        for i in 0..40 {
            assert!(m.remove(&i).is_some());
            assert!(m.remove(&i).is_none());
        }
        assert!(m.is_empty());
        m.insert(1, 1);
        assert_eq!(m.drain(), vec![(1, 1)]);
        assert!(m.is_empty());
    }
}
