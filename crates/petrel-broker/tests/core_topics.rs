//! The subscription trie and the retained store against the matching rules
//! of 4.7 and 4.8.2, with the specification's examples and a reference
//! matcher compared on arbitrary filters and topics.

use std::collections::BTreeSet;

use petrel_broker::{Matched, RetainedTree, SubscriptionTree};
use petrel_codec::{TopicFilter, TopicName};
use proptest::prelude::*;

fn f(s: &str) -> TopicFilter {
    TopicFilter::try_from(s).unwrap()
}

fn t(s: &str) -> TopicName {
    TopicName::try_from(s).unwrap()
}

/// The rules as 4.7 words them, level by level.
fn reference(filter: &str, topic: &str) -> bool {
    let filter = filter
        .strip_prefix("$share/")
        .map_or(filter, |r| r.split_once('/').unwrap().1);
    // [MQTT-4.7.2-1]
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let fl: Vec<&str> = filter.split('/').collect();
    let tl: Vec<&str> = topic.split('/').collect();
    for (i, level) in fl.iter().enumerate() {
        match *level {
            "#" => return true,
            "+" if i < tl.len() => {}
            lit if i < tl.len() && tl[i] == lit => {}
            _ => return false,
        }
    }
    fl.len() == tl.len()
}

fn matched(tree: &SubscriptionTree<String, u8>, topic: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    tree.matches(topic, |m| match m {
        Matched::Direct { key, .. } => {
            out.insert(key.clone());
        }
        Matched::Shared { group, members, .. } => {
            for (k, _) in members {
                out.insert(format!("{group}:{k}"));
            }
        }
    });
    out
}

fn tree(filters: &[&str]) -> SubscriptionTree<String, u8> {
    let mut tree = SubscriptionTree::new();
    for filter in filters {
        tree.insert(&f(filter), filter.to_string(), 0);
    }
    tree
}

/// Checks [MQTT-3.3.2-3]; 5.0: [MQTT-4.7.1-1]; 3.1.1: [MQTT-4.7.1-2].
#[test]
fn multi_level_wildcard_examples_4_7_1_2() {
    let tree = tree(&["sport/tennis/player1/#", "sport/#", "#"]);
    for topic in [
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport/tennis/player1/score/wimbledon",
    ] {
        assert!(
            matched(&tree, topic).contains("sport/tennis/player1/#"),
            "{topic}"
        );
    }
    // "sport/#" also matches "sport": # includes the parent level.
    assert_eq!(
        matched(&tree, "sport"),
        ["#", "sport/#"].map(String::from).into()
    );
}

/// Checks 5.0: [MQTT-4.7.1-2]; 3.1.1: [MQTT-4.7.1-3].
#[test]
fn single_level_wildcard_examples_4_7_1_3() {
    let tree = tree(&["sport/tennis/+", "sport/+", "+/+", "/+", "+"]);
    assert!(matched(&tree, "sport/tennis/player1").contains("sport/tennis/+"));
    assert!(matched(&tree, "sport/tennis/player2").contains("sport/tennis/+"));
    assert!(!matched(&tree, "sport/tennis/player1/ranking").contains("sport/tennis/+"));
    assert!(!matched(&tree, "sport").contains("sport/+"));
    assert!(matched(&tree, "sport/").contains("sport/+"));
    assert_eq!(
        matched(&tree, "/finance"),
        ["+/+", "/+"].map(String::from).into()
    );
    assert!(!matched(&tree, "/finance").contains("+"));
}

/// Checks [MQTT-4.7.2-1].
#[test]
fn dollar_topics_and_leading_wildcards_mqtt_4_7_2_1() {
    let tree = tree(&["#", "+/monitor/Clients", "$SYS/#", "$SYS/monitor/+"]);
    assert_eq!(
        matched(&tree, "$SYS/monitor/Clients"),
        ["$SYS/#", "$SYS/monitor/+"].map(String::from).into()
    );
    assert_eq!(
        matched(&tree, "x/monitor/Clients"),
        ["#", "+/monitor/Clients"].map(String::from).into()
    );
}

/// Checks [MQTT-4.7.3-4].
#[test]
fn no_normalisation_mqtt_4_7_3_4() {
    // Case and trailing slashes matter; nothing is rewritten.
    let tree = tree(&["ACCOUNTS", "a/b/"]);
    assert!(matched(&tree, "Accounts").is_empty());
    assert!(matched(&tree, "a/b").is_empty());
    assert!(matched(&tree, "a/b/").contains("a/b/"));
}

/// Shared filters are grouped by their share name.
#[test]
fn shared_subscriptions_report_the_group() {
    let mut tree = SubscriptionTree::new();
    tree.insert(&f("$share/g1/a/+"), "c1".to_string(), 1u8);
    tree.insert(&f("$share/g1/a/+"), "c2".to_string(), 1);
    tree.insert(&f("$share/g2/a/+"), "c3".to_string(), 1);
    tree.insert(&f("a/+"), "c1".to_string(), 2);
    let mut groups = Vec::new();
    let mut direct = Vec::new();
    tree.matches("a/b", |m| match m {
        Matched::Shared { group, members, .. } => groups.push((
            group.to_string(),
            members.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        )),
        Matched::Direct { key, value } => direct.push((key.clone(), *value)),
    });
    groups.sort();
    assert_eq!(
        groups,
        [
            ("g1".into(), vec!["c1".to_string(), "c2".into()]),
            ("g2".into(), vec!["c3".to_string()])
        ]
    );
    assert_eq!(direct, [("c1".to_string(), 2)]);
    assert_eq!(tree.len(), 4);
}

/// A group is its share name with its filter: `$share/g/a/+` and
/// `$share/g/#` are two groups, each reported with its whole filter (what
/// the nodes of a cluster name a group by).
#[test]
fn shared_groups_of_one_name_with_two_filters_are_two_groups() {
    let mut tree = SubscriptionTree::new();
    tree.insert(&f("$share/g/a/+"), "c1".to_string(), 1u8);
    tree.insert(&f("$share/g/#"), "c2".to_string(), 1);
    let mut seen = Vec::new();
    tree.matches("a/b", |m| {
        if let Matched::Shared {
            group,
            share,
            members,
        } = m
        {
            seen.push((group.to_string(), share.to_string(), members.len()));
        }
    });
    seen.sort();
    assert_eq!(
        seen,
        [
            ("g".into(), "$share/g/#".into(), 1),
            ("g".into(), "$share/g/a/+".into(), 1)
        ]
    );
    // Removing one leaves the other.
    assert_eq!(tree.remove(&f("$share/g/#"), &"c2".to_string()), Some(1));
    let mut left = Vec::new();
    tree.matches("a/b", |m| {
        if let Matched::Shared { share, .. } = m {
            left.push(share.to_string());
        }
    });
    assert_eq!(left, ["$share/g/a/+"]);
}

/// Checks 5.0: [MQTT-3.8.4-3]; [MQTT-3.10.4-1].
#[test]
fn insert_replaces_and_remove_prunes() {
    let mut tree = SubscriptionTree::new();
    // [MQTT-3.8.4-3 (5.0)]: the same filter again replaces the subscription.
    assert_eq!(tree.insert(&f("a/+/c"), "k".to_string(), 1u8), None);
    assert_eq!(tree.insert(&f("a/+/c"), "k".to_string(), 2), Some(1));
    assert_eq!(tree.len(), 1);
    tree.insert(&f("a/#"), "k".to_string(), 3);
    tree.insert(&f("$share/g/a/b"), "k".to_string(), 4);
    // [MQTT-3.10.4-1]: compared character by character.
    assert_eq!(tree.remove(&f("a/+/d"), &"k".to_string()), None);
    assert_eq!(tree.remove(&f("a/+/c"), &"k".to_string()), Some(2));
    assert_eq!(tree.remove(&f("a/#"), &"k".to_string()), Some(3));
    assert_eq!(tree.remove(&f("$share/g/a/b"), &"k".to_string()), Some(4));
    assert!(tree.is_empty());
    let mut after = false;
    tree.matches("a/b/c", |_| after = true);
    assert!(!after);
}

/// Checks [MQTT-3.3.1-5]; 3.1.1: [MQTT-3.3.1-6].
#[test]
fn retained_lookup_examples() {
    let mut store = RetainedTree::new();
    for topic in [
        "sport",
        "sport/tennis/player1",
        "sport/tennis/player2",
        "sport/golf",
        "$SYS/uptime",
        "/finance",
    ] {
        store.insert(&t(topic), topic.to_string());
    }
    let get = |filter: &str| {
        let mut v: Vec<String> = Vec::new();
        store.matching(&f(filter), |m| v.push(m.clone()));
        v.sort();
        v
    };
    assert_eq!(
        get("sport/#"),
        [
            "sport",
            "sport/golf",
            "sport/tennis/player1",
            "sport/tennis/player2"
        ]
    );
    assert_eq!(
        get("sport/tennis/+"),
        ["sport/tennis/player1", "sport/tennis/player2"]
    );
    assert_eq!(get("#").len(), 5, "no $SYS for a leading wildcard");
    assert_eq!(get("$SYS/#"), ["$SYS/uptime"]);
    assert_eq!(get("+/+"), ["/finance", "sport/golf"]);
    assert_eq!(get("$share/g/sport/golf"), ["sport/golf"]);
    // Replace ([MQTT-3.3.1-5]), delete, prune.
    assert_eq!(
        store.insert(&t("sport/golf"), "new".into()),
        Some("sport/golf".into())
    );
    assert_eq!(store.remove(&t("sport/golf")), Some("new".into()));
    assert_eq!(store.get(&t("sport/golf")), None);
    assert_eq!(store.len(), 5);
    assert_eq!(store.retain(|v| !v.starts_with("sport")), 3);
    assert_eq!(store.len(), 2);
}

fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just(String::new()),
        Just("$x".to_string())
    ]
}

fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(level(), 1..5).prop_map(|l| {
        let t = l.join("/");
        if t.is_empty() {
            "a".to_string()
        } else {
            t
        }
    })
}

fn filter() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop_oneof![3 => level(), 1 => Just("+".to_string())], 1..5),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(levels, hash, shared)| {
            let mut s = levels.join("/");
            if hash {
                s.push_str("/#");
            }
            if s.is_empty() || s == "$share" {
                s = "#".into();
            }
            if shared {
                s = format!("$share/g/{s}");
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// The trie matches exactly what the rules match, and removing every
    /// filter leaves it empty.
    #[test]
    fn trie_agrees_with_the_rules(filters in prop::collection::vec(filter(), 0..30), topics in prop::collection::vec(topic(), 1..20)) {
        let mut tree = SubscriptionTree::new();
        let mut distinct = BTreeSet::new();
        for (i, fl) in filters.iter().enumerate() {
            let Ok(filter) = TopicFilter::try_from(fl.as_str()) else { continue };
            tree.insert(&filter, i, ());
            distinct.insert((fl.clone(), i));
        }
        for topic in &topics {
            let mut got: Vec<usize> = Vec::new();
            tree.matches(topic, |m| match m {
                Matched::Direct { key, .. } => got.push(*key),
                Matched::Shared { members, .. } => got.extend(members.iter().map(|(k, _)| *k)),
            });
            got.sort_unstable();
            let mut want: Vec<usize> = distinct.iter().filter(|(fl, _)| reference(fl, topic)).map(|(_, i)| *i).collect();
            want.sort_unstable();
            prop_assert_eq!(got, want, "topic {:?}", topic);
        }
        for (fl, i) in &distinct {
            prop_assert!(tree.remove(&f(fl), i).is_some());
        }
        prop_assert!(tree.is_empty());
    }

    /// Retained lookups by filter find exactly the topics the rules match.
    #[test]
    fn retained_agrees_with_the_rules(topics in prop::collection::vec(topic(), 0..30), filters in prop::collection::vec(filter(), 1..10)) {
        let mut store = RetainedTree::new();
        let mut all = BTreeSet::new();
        for topic in &topics {
            store.insert(&t(topic), topic.clone());
            all.insert(topic.clone());
        }
        prop_assert_eq!(store.len(), all.len());
        for fl in &filters {
            let Ok(filter) = TopicFilter::try_from(fl.as_str()) else { continue };
            let mut got: Vec<String> = Vec::new();
            store.matching(&filter, |v| got.push(v.clone()));
            got.sort();
            let want: Vec<String> = all.iter().filter(|tp| reference(fl, tp)).cloned().collect();
            prop_assert_eq!(got, want, "filter {:?}", fl);
        }
        for topic in &all {
            prop_assert!(store.remove(&t(topic)).is_some());
        }
        prop_assert!(store.is_empty());
    }

    /// A walk taken a few topics at a time, going on after the last one it
    /// visited, visits exactly what one whole walk does, in the same order,
    /// each once; a topic retained meanwhile is visited only if it sorts
    /// after the last visited one, and a deleted one never again.
    #[test]
    fn a_walk_goes_on_where_it_stopped(
        topics in prop::collection::vec(topic(), 0..40),
        later in prop::collection::vec(topic(), 0..10),
        filters in prop::collection::vec(filter(), 1..8),
        step in 1usize..5,
    ) {
        let mut base = RetainedTree::new();
        for topic in &topics {
            base.insert(&t(topic), topic.clone());
        }
        for fl in &filters {
            let Ok(filter) = TopicFilter::try_from(fl.as_str()) else { continue };
            let mut whole: Vec<String> = Vec::new();
            let complete = base.matching_while(&filter, |v| {
                whole.push(v.clone());
                true
            });
            prop_assert!(complete);
            // In batches of `step`.
            let mut got: Vec<String> = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let mut batch: Vec<String> = Vec::new();
                let done = base.matching_after(&filter, after.as_deref(), |v| {
                    if batch.len() == step {
                        return false;
                    }
                    batch.push(v.clone());
                    true
                });
                after = batch.last().cloned().or(after);
                got.extend(batch);
                if done {
                    break;
                }
            }
            prop_assert_eq!(&got, &whole, "filter {:?}", fl);
            // Changes between two batches.
            let mut store = RetainedTree::new();
            for topic in &topics {
                store.insert(&t(topic), topic.clone());
            }
            let mut first: Vec<String> = Vec::new();
            store.matching_while(&filter, |v| { first.push(v.clone()); first.len() < step });
            let cut = first.last().cloned();
            for topic in &later {
                store.insert(&t(topic), topic.clone());
            }
            if let Some(gone) = whole.get(first.len()) {
                store.remove(&t(gone));
            }
            let mut rest: Vec<String> = Vec::new();
            store.matching_after(&filter, cut.as_deref(), |v| { rest.push(v.clone()); true });
            let mut now: Vec<String> = Vec::new();
            store.matching_while(&filter, |v| { now.push(v.clone()); true });
            let position = |tp: &String| now.iter().position(|n| n == tp);
            let from = cut.as_ref().and_then(position).map_or(0, |i| i + 1);
            prop_assert_eq!(&rest, &now[from..].to_vec(), "filter {:?} after {:?}", fl, cut);
            for tp in &first {
                prop_assert!(!rest.contains(tp), "{:?} visited twice", tp);
            }
        }
    }
}

/// A filter held by many subscribers (past the short list a node keeps
/// before it hashes them): each is matched once, a second SUBSCRIBE
/// replaces its options ([MQTT-3.8.4-3 (5.0)]), and removals leave the tree empty.
#[test]
fn many_subscribers_of_one_filter() {
    let mut tree = SubscriptionTree::new();
    let filter = f("a/+/c");
    for i in 0..40usize {
        assert_eq!(tree.insert(&filter, i, 0u8), None);
    }
    assert_eq!(tree.insert(&filter, 7, 1u8), Some(0), "replaced, not added");
    assert_eq!(tree.len(), 40);
    let matched = |tree: &SubscriptionTree<usize, u8>| {
        let mut got = Vec::new();
        tree.matches("a/b/c", |m| {
            if let Matched::Direct { key, value } = m {
                got.push((*key, *value));
            }
        });
        got.sort_unstable();
        got
    };
    let got = matched(&tree);
    assert_eq!(got.len(), 40);
    assert!(got.contains(&(7, 1)));
    for i in (0..40).step_by(2) {
        assert!(tree.remove(&filter, &i).is_some());
    }
    assert!(tree.remove(&filter, &0).is_none(), "removed once");
    let odd: Vec<usize> = matched(&tree).into_iter().map(|(k, _)| k).collect();
    assert_eq!(odd, (1..40).step_by(2).collect::<Vec<_>>());
    for i in (1..40).step_by(2) {
        assert!(tree.remove(&filter, &i).is_some());
    }
    assert!(tree.is_empty());
    assert!(matched(&tree).is_empty());
}
