//! Routing rules: which subscribers get a message, with what QoS, RETAIN
//! and Subscription Identifiers.

use petrel_broker::{Delivery, Routed, Router, SharedGroups, Subscription};
use petrel_codec::{QoS, RetainHandling, SubscriptionId, SubscriptionOptions, TopicFilter};

fn f(s: &str) -> TopicFilter {
    TopicFilter::try_from(s).unwrap()
}

fn sub(qos: QoS) -> Subscription {
    Subscription {
        options: SubscriptionOptions::qos(qos),
        identifier: None,
        authorize: false,
    }
}

fn route(
    router: &mut Router<&'static str>,
    topic: &str,
    qos: QoS,
    retain: bool,
    publisher: &'static str,
) -> Vec<Delivery<&'static str>> {
    let mut out = Vec::new();
    router.route(
        Routed {
            topic,
            qos,
            retain,
            publisher: Some(&publisher),
            groups: &SharedGroups::All,
        },
        |d| out.push(d),
    );
    out.sort_by(|a, b| a.client.cmp(b.client));
    out
}

/// Checks 5.0: [MQTT-3.8.4-8]; 3.1.1: [MQTT-3.8.4-6].
#[test]
fn qos_is_lowered_to_what_was_granted() {
    let mut r = Router::new();
    r.subscribe("a", &f("t"), sub(QoS::AtMostOnce));
    r.subscribe("b", &f("t"), sub(QoS::ExactlyOnce));
    let out = route(&mut r, "t", QoS::AtLeastOnce, false, "p");
    assert_eq!(
        out.iter().map(|d| (d.client, d.qos)).collect::<Vec<_>>(),
        [("a", QoS::AtMostOnce), ("b", QoS::AtLeastOnce)]
    );
}

/// Checks 5.0: [MQTT-3.3.4-2], [MQTT-3.3.4-3], [MQTT-3.3.4-4]; 3.1.1: [MQTT-3.3.5-1].
#[test]
fn overlapping_subscriptions_give_one_copy_at_the_highest_qos_mqtt_3_3_4_2() {
    // 5.0 [MQTT-3.3.4-2]; 3.1.1 [MQTT-3.3.5-1]; identifiers [MQTT-3.3.4-4].
    let mut r = Router::new();
    r.subscribe(
        "c",
        &f("a/+"),
        Subscription {
            options: SubscriptionOptions::qos(QoS::AtMostOnce),
            identifier: SubscriptionId::new(1),
            authorize: false,
        },
    );
    r.subscribe(
        "c",
        &f("a/#"),
        Subscription {
            options: SubscriptionOptions::qos(QoS::ExactlyOnce),
            identifier: SubscriptionId::new(2),
            authorize: false,
        },
    );
    r.subscribe("c", &f("a/b"), sub(QoS::AtLeastOnce));
    let out = route(&mut r, "a/b", QoS::ExactlyOnce, false, "p");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].qos, QoS::ExactlyOnce);
    let mut ids: Vec<u32> = out[0].identifiers.iter().map(|i| i.get()).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2]);
}

/// Checks 5.0: [MQTT-3.8.3-3] (No Local).
#[test]
fn no_local_skips_the_publisher_mqtt_3_8_3_3() {
    let mut r = Router::new();
    let no_local = Subscription {
        options: SubscriptionOptions {
            no_local: true,
            ..SubscriptionOptions::qos(QoS::AtLeastOnce)
        },
        identifier: None,
        authorize: false,
    };
    r.subscribe("me", &f("chat"), no_local.clone());
    r.subscribe("you", &f("chat"), no_local);
    let out = route(&mut r, "chat", QoS::AtLeastOnce, false, "me");
    assert_eq!(out.iter().map(|d| d.client).collect::<Vec<_>>(), ["you"]);
}

/// Checks 5.0: [MQTT-3.3.1-12], [MQTT-3.3.1-13].
#[test]
fn retain_flag_follows_retain_as_published_mqtt_3_3_1_12_and_13() {
    let mut r = Router::new();
    r.subscribe("plain", &f("t"), sub(QoS::AtMostOnce));
    r.subscribe(
        "rap",
        &f("t"),
        Subscription {
            options: SubscriptionOptions {
                retain_as_published: true,
                ..SubscriptionOptions::default()
            },
            identifier: None,
            authorize: false,
        },
    );
    let out = route(&mut r, "t", QoS::AtMostOnce, true, "p");
    assert_eq!(
        out.iter().map(|d| (d.client, d.retain)).collect::<Vec<_>>(),
        [("plain", false), ("rap", true)]
    );
}

#[test]
fn a_shared_group_gets_one_copy_in_turn_4_8_2() {
    let mut r = Router::new();
    for member in ["m1", "m2", "m3"] {
        r.subscribe(member, &f("$share/workers/jobs/+"), sub(QoS::AtLeastOnce));
    }
    r.subscribe("m1", &f("$share/audit/jobs/#"), sub(QoS::AtMostOnce));
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..30 {
        let out = route(&mut r, "jobs/1", QoS::AtLeastOnce, false, "p");
        // One copy per group.
        assert_eq!(out.len(), 2);
        for d in out {
            *counts.entry(d.client).or_insert(0) += 1;
        }
    }
    // Every worker took turns; the audit group's only member got all 30.
    assert!(counts["m2"] >= 5 && counts["m3"] >= 5, "{counts:?}");
    assert_eq!(counts.values().sum::<i32>(), 60);
}

#[test]
fn subscribe_reports_an_existing_subscription_for_retain_handling() {
    let mut r = Router::new();
    let opts = Subscription {
        options: SubscriptionOptions {
            retain_handling: RetainHandling::SendIfNew,
            ..SubscriptionOptions::default()
        },
        identifier: None,
        authorize: false,
    };
    assert!(!r.subscribe("c", &f("x/#"), opts.clone()));
    assert!(r.subscribe("c", &f("x/#"), opts));
    assert_eq!(r.len(), 1);
    assert!(r.unsubscribe(&"c", &f("x/#")));
    assert!(!r.unsubscribe(&"c", &f("x/#")));
    assert!(r.is_empty());
    assert!(route(&mut r, "x/y", QoS::AtMostOnce, false, "p").is_empty());
}
