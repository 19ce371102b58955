//! Hibernation: an idle connection turned into its compact form and resumed
//! goes on exactly as if it had never hibernated.

#![allow(clippy::field_reassign_with_default)] // configs read better as edits of the default

mod support;

use std::time::Duration;

use petrel_codec::{Packet, Protocol, QoS};
use petrel_session::{CloseReason, Config, Connection, Event};
use support::{msg, Dir, Pair};

fn hibernate_both(pair: &mut Pair, client_cfg: &Config, server_cfg: &Config) {
    let client = std::mem::replace(
        &mut pair.client,
        Connection::server(Config::default(), pair.now),
    );
    let server = std::mem::replace(
        &mut pair.server,
        Connection::server(Config::default(), pair.now),
    );
    let client = client.hibernate().expect("an idle client hibernates");
    let server = server.hibernate().expect("an idle server hibernates");
    pair.client = Connection::resume(client, client_cfg.clone());
    pair.server = Connection::resume(server, server_cfg.clone());
}

/// Topic aliases ([MQTT-3.3.2-12]: the receiver keeps the mapping for the
/// connection) and packet identifiers survive hibernation.
#[test]
fn a_hibernated_connection_keeps_its_aliases_and_packet_identifiers() {
    let client_cfg = Config::default();
    let mut server_cfg = Config::default();
    server_cfg.topic_alias_maximum = 2;
    let mut pair =
        Pair::connected_with(Protocol::V5, client_cfg.clone(), server_cfg.clone(), |_| {});
    // One QoS 1 message each way: "a/1" up, "b" down.
    let exchange = |pair: &mut Pair| {
        for (conn, topic) in [(&mut pair.client, "a/1"), (&mut pair.server, "b")] {
            conn.publish(pair.now, msg(topic, topic, QoS::AtLeastOnce))
                .unwrap();
        }
        pair.run();
    };
    exchange(&mut pair);
    hibernate_both(&mut pair, &client_cfg, &server_cfg);
    assert!(pair.client.is_connected() && pair.server.is_connected());
    pair.log.clear();
    exchange(&mut pair);
    let ids: Vec<(Dir, u16, String)> = pair
        .log
        .iter()
        .filter_map(|(d, p)| match p {
            Packet::Publish(p) => Some((
                *d,
                p.qos.packet_id().map_or(0, |i| i.get()),
                p.topic.to_string(),
            )),
            _ => None,
        })
        .collect();
    // Both second PUBLISHes go by alias alone, and each side's next
    // identifier follows the one used before hibernating.
    assert_eq!(
        ids,
        [
            (Dir::ToServer, 2, String::new()),
            (Dir::ToClient, 2, String::new())
        ]
    );
    let topics = |events: &[Event]| -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Message(p) => Some(p.topic.to_string()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        topics(&pair.server_events),
        ["a/1", "a/1"],
        "aliases resolved"
    );
    assert_eq!(topics(&pair.client_events), ["b", "b"], "aliases resolved");
    assert!(pair.server.state().inflight() == 0 && pair.client.state().inflight() == 0);
}

/// The keep-alive timers go on through hibernation: the client still pings
/// and the server still closes a silent client after one and a half keep
/// alives (3.1.1: [MQTT-3.1.2-23], [MQTT-3.1.2-24]).
#[test]
fn a_hibernated_connection_keeps_its_timers() {
    let cfg = Config::default();
    let mut pair = Pair::connected(Protocol::V3_1_1);
    let start = pair.now;
    pair.advance(Duration::from_secs(10));
    let client = std::mem::replace(&mut pair.client, Connection::server(cfg.clone(), pair.now));
    let hibernated = client.hibernate().unwrap();
    assert_eq!(hibernated.deadline(), Some(start + Duration::from_secs(30)));
    pair.client = Connection::resume(hibernated, cfg.clone());
    pair.advance(Duration::from_secs(20));
    assert_eq!(pair.sent(Dir::ToServer), vec![&Packet::PingReq]);

    let server = std::mem::replace(&mut pair.server, Connection::server(cfg.clone(), pair.now));
    let hibernated = server.hibernate().unwrap();
    // Last heard from at the PINGREQ, 30 s in.
    assert_eq!(
        hibernated.deadline(),
        Some(start + Duration::from_secs(30 + 45))
    );
    let mut server = Connection::resume(hibernated, cfg);
    server.handle_timeout(start + Duration::from_secs(74));
    assert!(server.is_connected());
    server.handle_timeout(start + Duration::from_secs(75));
    assert!(matches!(
        server.close_reason(),
        Some(CloseReason::KeepAliveTimeout)
    ));
}

/// A connection with anything in flight, waiting or unanswered refuses to
/// hibernate and comes back whole: nothing acknowledged is lost.
#[test]
fn a_busy_connection_does_not_hibernate() {
    let cfg = Config::default();
    let mut pair = Pair::connected(Protocol::V5);
    pair.server
        .publish(pair.now, msg("t", "in flight", QoS::ExactlyOnce))
        .unwrap();
    // Sent, not yet acknowledged.
    let publish = pair.server.poll_transmit().unwrap();
    let server = std::mem::replace(&mut pair.server, Connection::server(cfg.clone(), pair.now));
    let server = server
        .hibernate()
        .expect_err("a QoS 2 exchange is in flight");
    pair.server = *server;
    assert_eq!(pair.server.state().inflight(), 1);
    let _ = pair.client.handle_packet(pair.now, publish);
    pair.run();
    assert_eq!(pair.server.state().inflight(), 0);
    // A client waiting for its PINGRESP does not hibernate either.
    pair.now += Duration::from_secs(30);
    pair.client.handle_timeout(pair.now);
    assert_eq!(pair.client.poll_transmit(), Some(Packet::PingReq));
    let client = std::mem::replace(&mut pair.client, Connection::server(cfg.clone(), pair.now));
    assert!(client.hibernate().is_err());
    // A closed one has nothing to hibernate.
    let mut closed = Connection::server(cfg, pair.now);
    closed.handle_timeout(pair.now + Duration::from_secs(60));
    assert!(closed.hibernate().is_err());
}
