//! Each flow and timer of the session machine against the specifications'
//! normative statements, both roles, through the codec.

#![allow(clippy::field_reassign_with_default)] // configs read better as edits of the default

mod support;

use std::num::NonZeroU16;
use std::time::Duration;

use bytes::Bytes;
use petrel_codec::{
    Auth, Disconnect, MqttString, Packet, PacketId, Properties, Protocol, PubAck, Publish,
    PublishView, QoS, QosPid, ReasonCode, SubAck, Subscription, SubscriptionId,
    SubscriptionOptions, TopicFilter, TopicName, UserProperty,
};
use petrel_session::{
    Accept, CloseReason, Config, Connection, DropReason, Event, ProtocolError, SessionState,
    Snapshot,
};
use support::{connect, msg, Dir, Pair};

const V311: Protocol = Protocol::V3_1_1;
const V5: Protocol = Protocol::V5;

fn pid(v: u16) -> PacketId {
    PacketId::new(v).unwrap()
}

fn messages(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message(p) => Some(String::from_utf8_lossy(&p.payload).into_owned()),
            _ => None,
        })
        .collect()
}

fn closed(events: &[Event]) -> Option<&CloseReason> {
    events.iter().find_map(|e| match e {
        Event::Closed(r) => Some(r),
        _ => None,
    })
}

// ------------------------------------------------------------ connect

#[test]
fn connect_and_connack_exchange_limits_v5() {
    let mut server_cfg = Config::default();
    server_cfg.receive_maximum = NonZeroU16::new(7).unwrap();
    server_cfg.topic_alias_maximum = 3;
    let pair = Pair::connected_with(V5, Config::default(), server_cfg, |_| {});
    assert!(pair.client.is_connected() && pair.server.is_connected());
    // The client learned the server's limits from CONNACK.
    assert_eq!(pair.client.peer_limits().receive_maximum, 7);
    assert_eq!(pair.client.peer_limits().topic_alias_maximum, 3);
    // And the server the client's, from CONNECT.
    assert_eq!(pair.server.peer_limits().receive_maximum, 128);
    assert_eq!(pair.server.peer_limits().maximum_packet_size, 1024 * 1024);
}

/// Checks 5.0: [MQTT-3.1.4-6], [MQTT-3.2.2-6]; 3.1.1: [MQTT-3.2.2-4], [MQTT-3.2.2-5].
#[test]
fn reject_sends_connack_and_processes_nothing_more_mqtt_3_1_4_6() {
    for protocol in [V311, V5] {
        let now = std::time::Instant::now();
        let mut server = Connection::server(Config::default(), now);
        server
            .handle_packet(now, Packet::Connect(Box::new(connect(protocol, "x"))))
            .unwrap();
        assert!(matches!(
            server.poll_event(),
            Some(Event::ConnectRequest(_))
        ));
        server
            .reject(
                now,
                ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                Properties::new(),
            )
            .unwrap();
        let Some(Packet::ConnAck(c)) = server.poll_transmit() else {
            panic!()
        };
        assert_eq!(c.reason_code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
        assert!(!c.session_present);
        assert!(server.is_closed());
        // Anything afterwards is ignored.
        server.handle_packet(now, Packet::PingReq).unwrap();
        assert!(server.poll_transmit().is_none());
        assert!(matches!(
            server.poll_event(),
            Some(Event::Closed(CloseReason::Refused(_)))
        ));
    }
}

#[test]
fn client_sees_a_refusal() {
    let now = std::time::Instant::now();
    let mut client = Connection::client(
        Config::default(),
        connect(V5, "c"),
        SessionState::new(),
        now,
    )
    .unwrap();
    assert!(matches!(client.poll_transmit(), Some(Packet::Connect(_))));
    let refusal = petrel_codec::ConnAck::new(ReasonCode::NOT_AUTHORIZED, false);
    client.handle_packet(now, Packet::ConnAck(refusal)).unwrap();
    assert!(matches!(
        client.poll_event(),
        Some(Event::ConnectRefused {
            reason_code: ReasonCode::NOT_AUTHORIZED,
            ..
        })
    ));
    assert!(client.is_closed());
}

/// Checks [MQTT-3.1.0-2].
#[test]
fn second_connect_is_a_protocol_error_mqtt_3_1_0_2() {
    let mut pair = Pair::connected(V5);
    let e = pair
        .server
        .handle_packet(pair.now, Packet::Connect(Box::new(connect(V5, "again"))))
        .unwrap_err();
    assert_eq!(e, ProtocolError::SecondConnect);
    assert_eq!(e.spec(), Some("MQTT-3.1.0-2"));
    let Some(Packet::Disconnect(d)) = pair.server.poll_transmit() else {
        panic!()
    };
    assert_eq!(d.reason_code, ReasonCode::PROTOCOL_ERROR);
    assert!(pair.server.is_closed());
}

/// A server whose first packet is not CONNECT (the client's duty, section 3.1)
/// closes the connection without answering. Checks 3.1.1: [MQTT-4.8.0-1];
/// 5.0: [MQTT-4.13.1-1], [MQTT-3.14.0-1].
#[test]
fn first_packet_must_be_connect() {
    let now = std::time::Instant::now();
    let mut server = Connection::server(Config::default(), now);
    assert!(server.handle_packet(now, Packet::PingReq).is_err());
    // No CONNACK was sent, so no DISCONNECT either ([MQTT-3.14.0-1]).
    assert!(server.poll_transmit().is_none());
    assert!(server.is_closed());
}

#[test]
fn connect_timeout() {
    let now = std::time::Instant::now();
    let mut server = Connection::server(Config::default(), now);
    assert_eq!(server.poll_timeout(), Some(now + Duration::from_secs(10)));
    server.handle_timeout(now + Duration::from_secs(9));
    assert!(!server.is_closed());
    server.handle_timeout(now + Duration::from_secs(10));
    assert!(matches!(
        server.close_reason(),
        Some(CloseReason::ConnectTimeout)
    ));
}

#[test]
fn enhanced_authentication_is_the_applications_decision() {
    let now = std::time::Instant::now();
    let mut c = connect(V5, "auth");
    c.properties
        .set_authentication_method(Some(MqttString::from_static("SCRAM-SHA-256")));
    let mut client = Connection::client(Config::default(), c, SessionState::new(), now).unwrap();
    let mut server = Connection::server(Config::default(), now);
    let method = || {
        let mut p = Properties::new();
        p.set_authentication_method(Some(MqttString::from_static("SCRAM-SHA-256")));
        p
    };
    server
        .handle_packet(now, client.poll_transmit().unwrap())
        .unwrap();
    assert!(matches!(
        server.poll_event(),
        Some(Event::ConnectRequest(_))
    ));
    // Server challenges; client answers; server accepts.
    server
        .auth(
            now,
            Auth {
                reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
                properties: method(),
            },
        )
        .unwrap();
    client
        .handle_packet(now, server.poll_transmit().unwrap())
        .unwrap();
    assert!(matches!(client.poll_event(), Some(Event::Auth(_))));
    client
        .auth(
            now,
            Auth {
                reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
                properties: method(),
            },
        )
        .unwrap();
    server
        .handle_packet(now, client.poll_transmit().unwrap())
        .unwrap();
    assert!(matches!(server.poll_event(), Some(Event::Auth(_))));
    server.accept(now, Accept::default()).unwrap();
    client
        .handle_packet(now, server.poll_transmit().unwrap())
        .unwrap();
    assert!(client.is_connected());
    // An AUTH with another method is refused (4.12).
    let mut other = Properties::new();
    other.set_authentication_method(Some(MqttString::from_static("PLAIN")));
    let e = server
        .handle_packet(
            now,
            Packet::Auth(Auth {
                reason_code: ReasonCode::RE_AUTHENTICATE,
                properties: other,
            }),
        )
        .unwrap_err();
    assert_eq!(e.reason_code(), ReasonCode::BAD_AUTHENTICATION_METHOD);
}

// ------------------------------------------------------------ keep alive

/// Checks 5.0: [MQTT-3.1.2-20]; 3.1.1: [MQTT-3.1.2-23]; [MQTT-3.12.4-1].
#[test]
fn client_pings_after_a_silent_keep_alive_mqtt_3_1_2_20() {
    let mut pair = Pair::connected(V311);
    pair.advance(Duration::from_secs(29));
    assert!(pair.sent(Dir::ToServer).is_empty());
    pair.advance(Duration::from_secs(1));
    assert_eq!(pair.sent(Dir::ToServer), vec![&Packet::PingReq]);
    assert_eq!(pair.sent(Dir::ToClient), vec![&Packet::PingResp]);
    // Sending anything resets the keep-alive clock.
    pair.log.clear();
    pair.advance(Duration::from_secs(20));
    pair.client
        .publish(pair.now, msg("t", "x", QoS::AtMostOnce))
        .unwrap();
    pair.run();
    pair.log.clear();
    pair.advance(Duration::from_secs(20));
    assert!(pair.sent(Dir::ToServer).is_empty(), "{:?}", pair.log);
    pair.advance(Duration::from_secs(10));
    assert_eq!(pair.sent(Dir::ToServer), vec![&Packet::PingReq]);
}

#[test]
fn client_declares_the_link_dead_without_pingresp() {
    let mut pair = Pair::connected(V311);
    pair.now += Duration::from_secs(30);
    pair.client.handle_timeout(pair.now);
    assert_eq!(pair.client.poll_transmit(), Some(Packet::PingReq));
    // The PINGREQ is lost: no PINGRESP within the response timeout.
    pair.now += Duration::from_secs(10);
    pair.client.handle_timeout(pair.now);
    assert!(matches!(
        pair.client.close_reason(),
        Some(CloseReason::ResponseTimeout)
    ));
}

/// Checks 5.0: [MQTT-3.1.2-22]; 3.1.1: [MQTT-3.1.2-24].
#[test]
fn server_closes_after_one_and_a_half_keep_alives_mqtt_3_1_2_22() {
    let mut pair = Pair::connected(V5);
    // The client goes silent (its machine is not driven).
    pair.now += Duration::from_secs(44);
    pair.server.handle_timeout(pair.now);
    assert!(pair.server.is_connected());
    pair.now += Duration::from_secs(1);
    pair.server.handle_timeout(pair.now);
    assert!(matches!(
        pair.server.close_reason(),
        Some(CloseReason::KeepAliveTimeout)
    ));
    let Some(Packet::Disconnect(d)) = pair.server.poll_transmit() else {
        panic!()
    };
    assert_eq!(d.reason_code, ReasonCode::KEEP_ALIVE_TIMEOUT);
}

/// Checks [MQTT-3.1.2-21], [MQTT-3.2.2-21].
#[test]
fn server_keep_alive_replaces_the_clients_mqtt_3_1_2_21() {
    let now = std::time::Instant::now();
    let mut client = Connection::client(
        Config::default(),
        connect(V5, "k"),
        SessionState::new(),
        now,
    )
    .unwrap();
    let mut server = Connection::server(Config::default(), now);
    server
        .handle_packet(now, client.poll_transmit().unwrap())
        .unwrap();
    let mut props = Properties::new();
    props.set_server_keep_alive(Some(5));
    server
        .accept(
            now,
            Accept {
                properties: props,
                ..Accept::default()
            },
        )
        .unwrap();
    client
        .handle_packet(now, server.poll_transmit().unwrap())
        .unwrap();
    assert_eq!(client.keep_alive(), Some(Duration::from_secs(5)));
    assert_eq!(server.keep_alive(), Some(Duration::from_secs(5)));
    assert_eq!(client.poll_timeout(), Some(now + Duration::from_secs(5)));
}

// ------------------------------------------------------------ QoS flows

/// Checks 5.0: [MQTT-4.3.2-1], [MQTT-4.3.2-2], [MQTT-4.3.2-3], [MQTT-4.3.2-4], [MQTT-3.3.4-1]; 3.1.1: [MQTT-4.3.2-1], [MQTT-4.3.2-2].
#[test]
fn qos1_flow_mqtt_4_3_2() {
    for protocol in [V311, V5] {
        let mut pair = Pair::connected(protocol);
        let id = pair
            .client
            .publish(pair.now, msg("a/b", "one", QoS::AtLeastOnce))
            .unwrap();
        pair.run();
        let sent = pair.sent(Dir::ToServer);
        // A packet identifier, QoS 1, DUP 0 ([MQTT-4.3.2-1 (3.1.1)],
        // [MQTT-4.3.2-2 (5.0)]).
        let Packet::Publish(p) = sent[0] else {
            panic!()
        };
        assert!(matches!(p.qos, QosPid::AtLeastOnce(_)) && !p.dup);
        // PUBACK with the same identifier ([MQTT-4.3.2-4 (5.0)],
        // [MQTT-4.3.2-2 (3.1.1)]).
        let Packet::PubAck(a) = pair.sent(Dir::ToClient)[0] else {
            panic!()
        };
        assert_eq!(Some(a.packet_id), p.qos.packet_id());
        assert_eq!(messages(&pair.server_events), ["one"]);
        assert!(pair.client_events.contains(&Event::Published {
            id,
            reason_code: ReasonCode::SUCCESS,
            properties: Properties::new()
        }));
        assert_eq!(pair.client.state().inflight(), 0);
    }
}

/// Checks 5.0: [MQTT-4.3.3-1], [MQTT-4.3.3-2], [MQTT-4.3.3-3], [MQTT-4.3.3-4], [MQTT-4.3.3-5], [MQTT-4.3.3-8], [MQTT-4.3.3-11]; 3.1.1: [MQTT-4.3.3-1], [MQTT-4.3.3-2].
#[test]
fn qos2_flow_mqtt_4_3_3() {
    for protocol in [V311, V5] {
        let mut pair = Pair::connected(protocol);
        let id = pair
            .client
            .publish(pair.now, msg("a/b", "two", QoS::ExactlyOnce))
            .unwrap();
        pair.run();
        let kinds: Vec<_> = pair
            .log
            .iter()
            .map(|(d, p)| (*d, p.packet_type()))
            .collect();
        use petrel_codec::packet::PacketType as T;
        assert_eq!(
            kinds,
            [
                (Dir::ToServer, T::Publish),
                (Dir::ToClient, T::PubRec),
                (Dir::ToServer, T::PubRel),
                (Dir::ToClient, T::PubComp)
            ]
        );
        assert_eq!(messages(&pair.server_events), ["two"]);
        assert!(
            matches!(pair.client_events.last(), Some(Event::Published { id: done, .. }) if *done == id)
        );
        assert_eq!(pair.server.state().incoming(), 0);
    }
}

/// Checks 5.0: [MQTT-4.3.3-10], [MQTT-4.3.3-11], [MQTT-4.3.3-12]; 3.1.1: [MQTT-4.3.3-2].
#[test]
fn qos2_repeat_before_pubrel_is_not_delivered_again_mqtt_4_3_3_10() {
    let mut pair = Pair::connected(V5);
    let mut p = Publish::new(TopicName::from_static("t"), Bytes::from_static(b"x"));
    p.qos = QosPid::ExactlyOnce(pid(9));
    pair.server
        .handle_packet(pair.now, Packet::Publish(p.clone()))
        .unwrap();
    p.dup = true;
    pair.server
        .handle_packet(pair.now, Packet::Publish(p.clone()))
        .unwrap();
    let mut delivered = 0;
    while let Some(e) = pair.server.poll_event() {
        delivered += usize::from(matches!(e, Event::Message(_)));
    }
    assert_eq!(delivered, 1);
    // Both got a PUBREC.
    assert_eq!(
        pair.server.poll_transmit(),
        Some(Packet::PubRec(PubAck::new(pid(9))))
    );
    assert_eq!(
        pair.server.poll_transmit(),
        Some(Packet::PubRec(PubAck::new(pid(9))))
    );
    // [MQTT-4.3.3-11], [MQTT-4.3.3-12]: PUBREL → PUBCOMP, then the id is new again.
    pair.server
        .handle_packet(pair.now, Packet::PubRel(PubAck::new(pid(9))))
        .unwrap();
    assert_eq!(
        pair.server.poll_transmit(),
        Some(Packet::PubComp(PubAck::new(pid(9))))
    );
    p.dup = false;
    pair.server
        .handle_packet(pair.now, Packet::Publish(p))
        .unwrap();
    assert!(matches!(pair.server.poll_event(), Some(Event::Message(_))));
}

/// Checks [MQTT-4.4.0-2], [MQTT-4.3.3-9].
#[test]
fn pubrec_with_an_error_ends_the_exchange_mqtt_4_4_0_2() {
    let mut pair = Pair::connected(V5);
    let id = pair
        .client
        .publish(pair.now, msg("t", "x", QoS::ExactlyOnce))
        .unwrap();
    let Some(Packet::Publish(p)) = pair.client.poll_transmit() else {
        panic!()
    };
    let pid = p.qos.packet_id().unwrap();
    pair.client
        .handle_packet(
            pair.now,
            Packet::PubRec(PubAck::with_reason(pid, ReasonCode::QUOTA_EXCEEDED)),
        )
        .unwrap();
    // No PUBREL, and the message is finished.
    assert_eq!(pair.client.poll_transmit(), None);
    assert!(matches!(
        pair.client.poll_event(),
        Some(Event::Published { id: done, reason_code: ReasonCode::QUOTA_EXCEEDED, .. }) if done == id
    ));
    assert_eq!(pair.client.state().inflight(), 0);
}

#[test]
fn unknown_pubrel_gets_pubcomp_packet_identifier_not_found() {
    let mut pair = Pair::connected(V5);
    pair.server
        .handle_packet(pair.now, Packet::PubRel(PubAck::new(pid(77))))
        .unwrap();
    let Some(Packet::PubComp(c)) = pair.server.poll_transmit() else {
        panic!("no PUBCOMP")
    };
    assert_eq!(c.packet_id, pid(77));
    assert_eq!(c.reason_code, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND);
    // Said in words too: the client asked for problem information.
    assert!(c.properties.reason_string().is_some());
}

/// Checks [MQTT-4.6.0-2], [MQTT-4.6.0-3].
#[test]
fn acknowledgements_go_out_in_arrival_order_mqtt_4_6_0_2_and_3() {
    let mut pair = Pair::connected(V311);
    for (i, qos) in [(1u16, 1), (2, 2), (3, 1), (4, 2)] {
        let mut p = Publish::new(TopicName::from_static("t"), Bytes::new());
        p.qos = QosPid::from_parts(QoS::from_u8(qos).unwrap(), Some(pid(i))).unwrap();
        pair.server
            .handle_packet(pair.now, Packet::Publish(p))
            .unwrap();
    }
    let acks: Vec<u16> = std::iter::from_fn(|| pair.server.poll_transmit())
        .map(|p| match p {
            Packet::PubAck(a) | Packet::PubRec(a) => a.packet_id.get(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(acks, [1, 2, 3, 4]);
}

/// Checks 5.0: [MQTT-2.2.1-3], [MQTT-2.2.1-4]; 3.1.1: [MQTT-2.3.1-2], [MQTT-2.3.1-4].
#[test]
fn packet_ids_are_unique_and_never_zero_mqtt_2_2_1_3() {
    let mut pair = Pair::connected(V311);
    let mut ids = std::collections::BTreeSet::new();
    for i in 0..100 {
        pair.client
            .publish(pair.now, msg("t", &i.to_string(), QoS::AtLeastOnce))
            .unwrap();
    }
    while let Some(p) = pair.client.poll_transmit() {
        let Packet::Publish(p) = p else { panic!() };
        let id = p.qos.packet_id().unwrap().get();
        assert_ne!(id, 0);
        assert!(ids.insert(id), "identifier {id} reused while in flight");
    }
    assert_eq!(ids.len(), 100);
}

// ------------------------------------------------------------ resumption

/// Checks [MQTT-4.4.0-1], [MQTT-4.6.0-1], [MQTT-4.3.3-6], [MQTT-3.3.1-1]; 3.1.1: [MQTT-2.3.1-3].
#[test]
fn resumed_session_resends_in_order_with_dup_mqtt_4_4_0_1_and_4_6_0_1() {
    let mut pair = Pair::connected(V5);
    let a = pair
        .client
        .publish(pair.now, msg("t", "a", QoS::AtLeastOnce))
        .unwrap();
    let b = pair
        .client
        .publish(pair.now, msg("t", "b", QoS::ExactlyOnce))
        .unwrap();
    let c = pair
        .client
        .publish(pair.now, msg("t", "c", QoS::ExactlyOnce))
        .unwrap();
    // Deliver everything, but the connection breaks before PUBACK, and after
    // c's PUBREC reached the client (so c is in its PUBREL stage).
    let mut to_server = Vec::new();
    while let Some(p) = pair.client.poll_transmit() {
        to_server.push(p);
    }
    for p in to_server {
        pair.server.handle_packet(pair.now, p).unwrap();
    }
    let mut acks = Vec::new();
    while let Some(p) = pair.server.poll_transmit() {
        acks.push(p);
    }
    // Only the last PUBREC arrives.
    pair.client
        .handle_packet(pair.now, acks.pop().unwrap())
        .unwrap();
    let Some(Packet::PubRel(_)) = pair.client.poll_transmit() else {
        panic!()
    };
    let client_state = pair.client.take_state();
    let server_state = pair.server.take_state();
    assert_eq!(client_state.inflight(), 3);
    assert_eq!(server_state.incoming(), 2, "b and c await PUBREL");

    // A new connection resumes both sides.
    let now = pair.now;
    let (mut client, mut server) =
        support::resume(now, V5, client_state, server_state, Config::default());
    let Some(Packet::ConnAck(ack)) = server.poll_transmit() else {
        panic!()
    };
    assert!(ack.session_present);
    client.handle_packet(now, Packet::ConnAck(ack)).unwrap();
    let resent: Vec<Packet> = std::iter::from_fn(|| client.poll_transmit()).collect();
    // c's PUBREL only ([MQTT-4.3.3-6]: a PUBLISH is never resent after its
    // PUBREL), then a and b again, with DUP, in their original order.
    assert_eq!(resent.len(), 3, "{resent:?}");
    assert!(matches!(resent[0], Packet::PubRel(_)));
    let Packet::Publish(pa) = &resent[1] else {
        panic!()
    };
    let Packet::Publish(pb) = &resent[2] else {
        panic!()
    };
    assert!(pa.dup && pb.dup);
    assert_eq!((&pa.payload[..], &pb.payload[..]), (&b"a"[..], &b"b"[..]));
    for p in resent {
        server.handle_packet(now, p).unwrap();
    }
    // The server already had b: it is not delivered twice.
    let delivered: Vec<Event> = std::iter::from_fn(|| server.poll_event()).collect();
    assert_eq!(messages(&delivered), ["a"]);
    let answers: Vec<Packet> = std::iter::from_fn(|| server.poll_transmit()).collect();
    for p in answers {
        client.handle_packet(now, p).unwrap();
    }
    let more: Vec<Packet> = std::iter::from_fn(|| client.poll_transmit()).collect();
    for p in more {
        server.handle_packet(now, p).unwrap();
    }
    for p in std::iter::from_fn(|| server.poll_transmit()).collect::<Vec<_>>() {
        client.handle_packet(now, p).unwrap();
    }
    let done: Vec<_> = std::iter::from_fn(|| client.poll_event())
        .filter_map(|e| match e {
            Event::Published { id, .. } => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!(done.len(), 3);
    for id in [a, b, c] {
        assert!(done.contains(&id));
    }
    assert!(client.state().is_empty() && server.state().is_empty());
}

#[test]
fn server_without_session_makes_the_client_resend_as_new() {
    let mut pair = Pair::connected(V5);
    pair.client
        .publish(pair.now, msg("t", "lost", QoS::AtLeastOnce))
        .unwrap();
    let _ = pair.client.poll_transmit();
    let state = pair.client.take_state();
    let now = pair.now;
    let mut c2 = connect(V5, "client-1");
    c2.clean_start = false;
    let mut client = Connection::client(Config::default(), c2, state, now).unwrap();
    let _ = client.poll_transmit();
    client
        .handle_packet(
            now,
            Packet::ConnAck(petrel_codec::ConnAck::new(ReasonCode::SUCCESS, false)),
        )
        .unwrap();
    let Some(Packet::Publish(p)) = client.poll_transmit() else {
        panic!()
    };
    assert!(!p.dup, "a new message on a new session");
    assert_eq!(&p.payload[..], b"lost");
}

#[test]
fn snapshot_survives_serialisation() {
    let mut pair = Pair::connected(V5);
    let mut m = msg("t/1", "kept", QoS::ExactlyOnce);
    m.properties.set_message_expiry_interval(Some(100));
    m.properties.push_user_property(UserProperty::new(
        MqttString::from_static("k"),
        MqttString::from_static("v"),
    ));
    pair.client.publish(pair.now, m).unwrap();
    let _ = pair.client.poll_transmit();
    let mut state = pair.client.take_state();
    state
        .enqueue(pair.now, msg("t/2", "queued", QoS::AtLeastOnce), 10)
        .unwrap();
    let json = serde_json::to_string(&state.snapshot(pair.now)).unwrap();
    let back: Snapshot = serde_json::from_str(&json).unwrap();
    let restored = back.restore(pair.now).unwrap();
    assert_eq!(restored.inflight(), 1);
    assert_eq!(restored.pending(), 1);
    assert_eq!(restored.snapshot(pair.now), state.snapshot(pair.now));
    // Stored data is validated like a peer's.
    let bad = json.replace("t/1", "t/#");
    let bad: Snapshot = serde_json::from_str(&bad).unwrap();
    assert!(bad.restore(pair.now).is_err());
}

// ------------------------------------------------------------ 5.0 flow control

/// Checks [MQTT-3.3.4-7], [MQTT-3.3.4-8].
#[test]
fn receive_maximum_limits_what_is_in_flight() {
    let mut server_cfg = Config::default();
    server_cfg.receive_maximum = NonZeroU16::new(2).unwrap();
    let mut pair = Pair::connected_with(V5, Config::default(), server_cfg, |_| {});
    for i in 0..5 {
        pair.client
            .publish(pair.now, msg("t", &i.to_string(), QoS::AtLeastOnce))
            .unwrap();
    }
    let first: Vec<Packet> = std::iter::from_fn(|| pair.client.poll_transmit()).collect();
    assert_eq!(first.len(), 2, "no more than the server's Receive Maximum");
    assert_eq!(pair.client.state().pending(), 3);
    assert_eq!(pair.client.send_quota(), 0);
    for p in first {
        pair.server.handle_packet(pair.now, p).unwrap();
    }
    pair.run();
    assert_eq!(messages(&pair.server_events), ["0", "1", "2", "3", "4"]);
}

#[test]
fn exceeding_our_receive_maximum_is_0x93() {
    let mut server_cfg = Config::default();
    server_cfg.receive_maximum = NonZeroU16::new(2).unwrap();
    let mut pair = Pair::connected_with(V5, Config::default(), server_cfg, |_| {});
    for i in 1..=3u16 {
        let mut p = Publish::new(TopicName::from_static("t"), Bytes::new());
        p.qos = QosPid::ExactlyOnce(pid(i));
        let r = pair.server.handle_packet(pair.now, Packet::Publish(p));
        if i == 3 {
            assert_eq!(r, Err(ProtocolError::ReceiveMaximumExceeded { max: 2 }));
        }
    }
    let out: Vec<Packet> = std::iter::from_fn(|| pair.server.poll_transmit()).collect();
    assert!(
        matches!(out.last(), Some(Packet::Disconnect(d)) if d.reason_code == ReasonCode::RECEIVE_MAXIMUM_EXCEEDED)
    );
}

/// Checks [MQTT-3.1.2-24], [MQTT-3.1.2-25].
#[test]
fn never_send_above_the_peers_maximum_packet_size_mqtt_3_1_2_24_25() {
    let mut pair = Pair::connected_with(V5, Config::default(), Config::default(), |c| {
        c.properties
            .set_maximum_packet_size(std::num::NonZeroU32::new(100));
    });
    let big = pair
        .server
        .publish(pair.now, msg("t", &"x".repeat(200), QoS::AtLeastOnce))
        .unwrap();
    let small = pair
        .server
        .publish(pair.now, msg("t", "ok", QoS::AtLeastOnce))
        .unwrap();
    pair.run();
    assert!(pair.server_events.contains(&Event::Dropped {
        id: big,
        reason: DropReason::TooLarge
    }));
    assert_eq!(
        messages(&pair.client_events),
        ["ok"],
        "{:?} {:?}",
        pair.client_events,
        pair.log
    );
    assert!(pair
        .server_events
        .iter()
        .any(|e| matches!(e, Event::Published { id, .. } if *id == small)));
    assert_eq!(
        pair.server.state().inflight(),
        0,
        "the dropped one is treated as delivered"
    );
}

/// Checks [MQTT-3.3.2-9], [MQTT-3.2.2-17], [MQTT-3.3.2-12].
#[test]
fn topic_aliases_out_within_the_peers_maximum_mqtt_3_3_2_9() {
    let mut server_cfg = Config::default();
    server_cfg.topic_alias_maximum = 2;
    let mut pair = Pair::connected_with(V5, Config::default(), server_cfg, |_| {});
    for t in ["a/1", "a/2", "a/3", "a/1", "a/2", "a/3"] {
        pair.client
            .publish(pair.now, msg(t, t, QoS::AtMostOnce))
            .unwrap();
    }
    pair.run();
    let sent: Vec<(String, Option<u16>)> = pair
        .sent(Dir::ToServer)
        .into_iter()
        .map(|p| match p {
            Packet::Publish(p) => (
                p.topic.to_string(),
                p.properties.topic_alias().map(|a| a.get()),
            ),
            _ => panic!(),
        })
        .collect();
    assert_eq!(
        sent,
        [
            ("a/1".into(), Some(1)),
            ("a/2".into(), Some(2)),
            ("a/3".into(), None),
            ("".into(), Some(1)),
            ("".into(), Some(2)),
            ("a/3".into(), None)
        ]
    );
    // The receiver resolves them; the application never sees an alias.
    let topics: Vec<String> = pair
        .server_events
        .iter()
        .filter_map(|e| match e {
            Event::Message(p) => {
                assert!(p.properties.topic_alias().is_none());
                Some(p.topic.to_string())
            }
            _ => None,
        })
        .collect();
    assert_eq!(topics, ["a/1", "a/2", "a/3", "a/1", "a/2", "a/3"]);
}

/// Checks [MQTT-3.1.2-26], [MQTT-3.1.2-27].
#[test]
fn no_topic_aliases_to_a_peer_that_accepts_none_mqtt_3_1_2_27() {
    let mut pair = Pair::connected_with(V5, Config::default(), Config::default(), |c| {
        c.properties.set_topic_alias_maximum(Some(0));
    });
    for _ in 0..3 {
        pair.server
            .publish(pair.now, msg("x/y", "p", QoS::AtMostOnce))
            .unwrap();
    }
    pair.run();
    for p in pair.sent(Dir::ToClient) {
        let Packet::Publish(p) = p else { panic!() };
        assert!(p.properties.topic_alias().is_none());
        assert_eq!(p.topic, "x/y");
    }
}

/// Checks [MQTT-3.3.2-7], [MQTT-3.3.2-12].
#[test]
fn inbound_topic_alias_rules() {
    let mut pair = Pair::connected(V5);
    let with_alias = |topic: &str, alias: u16| {
        let mut p = Publish::new(
            TopicName::try_from(topic).unwrap_or(TopicName::alias_only()),
            Bytes::new(),
        );
        if topic.is_empty() {
            p.topic = TopicName::alias_only();
        }
        p.properties.set_topic_alias(NonZeroU16::new(alias));
        Packet::Publish(p)
    };
    // Unknown alias with an empty topic.
    let e = pair
        .server
        .handle_packet(pair.now, with_alias("", 3))
        .unwrap_err();
    assert_eq!(e, ProtocolError::UnknownTopicAlias(3));
    // Above our maximum: 0x94.
    let mut pair = Pair::connected(V5);
    let e = pair
        .server
        .handle_packet(pair.now, with_alias("t", 17))
        .unwrap_err();
    assert_eq!(e.reason_code(), ReasonCode::TOPIC_ALIAS_INVALID);
    // Aliases do not survive the connection ([MQTT-3.3.2-7]).
    let mut pair = Pair::connected(V5);
    pair.server
        .handle_packet(pair.now, with_alias("t/x", 1))
        .unwrap();
    let state = pair.server.take_state();
    let now = pair.now;
    let mut server = Connection::server(Config::default(), now);
    server
        .handle_packet(now, Packet::Connect(Box::new(connect(V5, "client-1"))))
        .unwrap();
    server
        .accept(
            now,
            Accept {
                session_present: true,
                state,
                ..Accept::default()
            },
        )
        .unwrap();
    assert!(server.handle_packet(now, with_alias("", 1)).is_err());
}

/// Checks [MQTT-3.3.2-5], [MQTT-3.3.2-6].
#[test]
fn message_expiry_counts_the_wait_mqtt_3_3_2_5_and_6() {
    let mut server_cfg = Config::default();
    server_cfg.receive_maximum = NonZeroU16::new(1).unwrap();
    let mut pair = Pair::connected_with(V5, Config::default(), server_cfg, |_| {});
    let hold = pair
        .client
        .publish(pair.now, msg("t", "hold", QoS::AtLeastOnce))
        .unwrap();
    let mut short = msg("t", "short", QoS::AtLeastOnce);
    short.properties.set_message_expiry_interval(Some(5));
    let short = pair.client.publish(pair.now, short).unwrap();
    let mut long = msg("t", "long", QoS::AtLeastOnce);
    long.properties.set_message_expiry_interval(Some(60));
    pair.client.publish(pair.now, long).unwrap();
    // "hold" occupies the window for 10 seconds: "short" expires waiting.
    let Some(first) = pair.client.poll_transmit() else {
        panic!()
    };
    pair.now += Duration::from_secs(10);
    pair.client.handle_timeout(pair.now);
    pair.server.handle_packet(pair.now, first).unwrap();
    pair.run();
    assert!(pair.client_events.contains(&Event::Dropped {
        id: short,
        reason: DropReason::Expired
    }));
    assert!(pair
        .client_events
        .iter()
        .any(|e| matches!(e, Event::Published { id, .. } if *id == hold)));
    let long = pair
        .server_events
        .iter()
        .find_map(|e| match e {
            Event::Message(p) if &p.payload[..] == b"long" => Some(p.clone()),
            _ => None,
        })
        .unwrap();
    // Forwarded with what is left of its interval.
    assert_eq!(long.properties.message_expiry_interval(), Some(50));
    assert_eq!(messages(&pair.server_events), ["hold", "long"]);
}

/// Checks [MQTT-3.1.2-29].
#[test]
fn no_problem_information_when_not_requested_mqtt_3_1_2_29() {
    let mut pair = Pair::connected_with(V5, Config::default(), Config::default(), |c| {
        c.properties.set_request_problem_information(Some(false));
    });
    pair.run();
    let mut p = Publish::new(TopicName::from_static("t"), Bytes::new());
    p.qos = QosPid::AtLeastOnce(pid(1));
    pair.server
        .handle_packet(pair.now, Packet::Publish(p))
        .unwrap();
    let _ = pair.server.poll_event();
    // The application asks for a reason string on the SUBACK; it is left out.
    let mut props = Properties::new();
    props.set_reason_string(Some(MqttString::from_static("because")));
    pair.server
        .handle_packet(
            pair.now,
            Packet::Subscribe(petrel_codec::Subscribe {
                packet_id: pid(2),
                properties: Properties::new(),
                subscriptions: vec![Subscription {
                    filter: TopicFilter::from_static("a"),
                    options: SubscriptionOptions::default(),
                }],
            }),
        )
        .unwrap();
    pair.server
        .suback(
            pair.now,
            SubAck {
                packet_id: pid(2),
                properties: props,
                reason_codes: vec![ReasonCode::GRANTED_QOS_0],
            },
        )
        .unwrap();
    let out: Vec<Packet> = std::iter::from_fn(|| pair.server.poll_transmit()).collect();
    let Packet::SubAck(s) = &out[1] else {
        panic!("{out:?}")
    };
    assert!(s.properties.reason_string().is_none());
}

/// Checks [MQTT-3.1.2-28].
#[test]
fn response_information_only_when_requested_mqtt_3_1_2_28() {
    let now = std::time::Instant::now();
    let mut server = Connection::server(Config::default(), now);
    server
        .handle_packet(now, Packet::Connect(Box::new(connect(V5, "r"))))
        .unwrap();
    let mut props = Properties::new();
    props.set_response_information(Some(MqttString::from_static("resp/")));
    server
        .accept(
            now,
            Accept {
                properties: props,
                ..Accept::default()
            },
        )
        .unwrap();
    let Some(Packet::ConnAck(c)) = server.poll_transmit() else {
        panic!()
    };
    assert!(c.properties.response_information().is_none());
}

/// Checks [MQTT-3.3.4-6].
#[test]
fn client_may_not_send_subscription_identifiers_mqtt_3_3_4_6() {
    let mut pair = Pair::connected(V5);
    let mut p = Publish::new(TopicName::from_static("t"), Bytes::new());
    p.properties
        .push_subscription_identifier(SubscriptionId::new(4).unwrap());
    let e = pair
        .server
        .handle_packet(pair.now, Packet::Publish(p))
        .unwrap_err();
    assert_eq!(e, ProtocolError::SubscriptionIdentifierFromClient);
}

#[test]
fn pending_queue_is_bounded() {
    let mut cfg = Config::default();
    cfg.max_pending = 3;
    let mut server_cfg = Config::default();
    server_cfg.receive_maximum = NonZeroU16::new(1).unwrap();
    let mut pair = Pair::connected_with(V5, cfg, server_cfg, |_| {});
    for i in 0..4 {
        pair.client
            .publish(pair.now, msg("t", &i.to_string(), QoS::AtLeastOnce))
            .unwrap();
    }
    assert_eq!(
        pair.client
            .publish(pair.now, msg("t", "x", QoS::AtLeastOnce)),
        Err(petrel_session::SendError::QueueFull)
    );
}

// ------------------------------------------------------------ subscribe, disconnect

/// Checks [MQTT-3.8.4-2]; 3.1.1: [MQTT-2.3.1-7].
#[test]
fn subscribe_and_unsubscribe_round_trip() {
    let mut pair = Pair::connected(V5);
    let id = pair
        .client
        .subscribe(
            pair.now,
            vec![Subscription {
                filter: TopicFilter::from_static("a/#"),
                options: SubscriptionOptions::qos(QoS::AtLeastOnce),
            }],
            Properties::new(),
        )
        .unwrap();
    pair.run();
    let Some(Event::Subscribe(s)) = pair.server_events.pop() else {
        panic!()
    };
    assert_eq!(s.packet_id, id);
    pair.server
        .suback(
            pair.now,
            SubAck {
                packet_id: id,
                properties: Properties::new(),
                reason_codes: vec![ReasonCode::GRANTED_QOS_1],
            },
        )
        .unwrap();
    pair.run();
    assert!(matches!(pair.client_events.pop(), Some(Event::SubAck(a)) if a.packet_id == id));
    let id = pair
        .client
        .unsubscribe(
            pair.now,
            vec![TopicFilter::from_static("a/#")],
            Properties::new(),
        )
        .unwrap();
    pair.run();
    let Some(Event::Unsubscribe(u)) = pair.server_events.pop() else {
        panic!()
    };
    pair.server
        .unsuback(
            pair.now,
            petrel_codec::UnsubAck {
                packet_id: u.packet_id,
                properties: Properties::new(),
                reason_codes: vec![ReasonCode::SUCCESS],
            },
        )
        .unwrap();
    pair.run();
    assert!(matches!(pair.client_events.pop(), Some(Event::UnsubAck(a)) if a.packet_id == id));
}

/// Checks [MQTT-3.14.2-2].
#[test]
fn disconnect_both_ways() {
    let mut pair = Pair::connected(V5);
    pair.client
        .disconnect(
            pair.now,
            ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
            Properties::new(),
        )
        .unwrap();
    pair.run();
    assert!(matches!(
        closed(&pair.server_events),
        Some(CloseReason::Disconnected {
            reason_code: ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
            ..
        })
    ));
    // A server's DISCONNECT never carries a Session Expiry Interval ([MQTT-3.14.2-2]).
    let mut pair = Pair::connected(V5);
    let mut props = Properties::new();
    props.set_session_expiry_interval(Some(10));
    pair.server
        .disconnect(pair.now, ReasonCode::SERVER_SHUTTING_DOWN, props)
        .unwrap();
    let Some(Packet::Disconnect(d)) = pair.server.poll_transmit() else {
        panic!()
    };
    assert!(d.properties.session_expiry_interval().is_none());
    // A 3.1.1 server has no DISCONNECT: it just closes.
    let mut pair = Pair::connected(V311);
    pair.server
        .disconnect(
            pair.now,
            ReasonCode::SERVER_SHUTTING_DOWN,
            Properties::new(),
        )
        .unwrap();
    assert!(pair.server.poll_transmit().is_none());
    assert!(pair.server.is_closed());
    // Raising a zero Session Expiry Interval at DISCONNECT is a protocol error (3.14.2.2.2).
    let mut pair = Pair::connected(V5);
    let mut d = Disconnect::new(ReasonCode::NORMAL_DISCONNECTION);
    d.properties.set_session_expiry_interval(Some(60));
    assert!(pair
        .server
        .handle_packet(pair.now, Packet::Disconnect(d))
        .is_err());
}

/// Checks [MQTT-3.2.2-11], [MQTT-3.2.2-14].
#[test]
fn client_respects_maximum_qos_and_retain_available_mqtt_3_2_2_11_and_14() {
    let now = std::time::Instant::now();
    let mut client = Connection::client(
        Config::default(),
        connect(V5, "q"),
        SessionState::new(),
        now,
    )
    .unwrap();
    let _ = client.poll_transmit();
    // Queued before CONNACK, then refused by what CONNACK says.
    let early = client
        .publish(now, msg("t", "two", QoS::ExactlyOnce))
        .unwrap();
    let mut ack = petrel_codec::ConnAck::new(ReasonCode::SUCCESS, false);
    ack.properties
        .set_maximum_qos(Some(QoS::AtLeastOnce))
        .set_retain_available(Some(false));
    client.handle_packet(now, Packet::ConnAck(ack)).unwrap();
    let events: Vec<Event> = std::iter::from_fn(|| client.poll_event()).collect();
    assert!(events.contains(&Event::Dropped {
        id: early,
        reason: DropReason::NotSupported
    }));
    assert_eq!(
        client.publish(now, msg("t", "x", QoS::ExactlyOnce)),
        Err(petrel_session::SendError::NotSupported)
    );
    let mut retained = msg("t", "r", QoS::AtMostOnce);
    retained.retain = true;
    assert_eq!(
        client.publish(now, retained),
        Err(petrel_session::SendError::NotSupported)
    );
    assert!(client
        .publish(now, msg("t", "ok", QoS::AtLeastOnce))
        .is_ok());
}

#[test]
fn packets_sent_before_connack_are_processed_after_accept() {
    let now = std::time::Instant::now();
    let mut server = Connection::server(Config::default(), now);
    server
        .handle_packet(now, Packet::Connect(Box::new(connect(V311, "eager"))))
        .unwrap();
    let mut p = Publish::new(TopicName::from_static("t"), Bytes::from_static(b"early"));
    p.qos = QosPid::AtLeastOnce(pid(1));
    server.handle_packet(now, Packet::Publish(p)).unwrap();
    assert!(matches!(
        server.poll_event(),
        Some(Event::ConnectRequest(_))
    ));
    assert!(
        server.poll_event().is_none(),
        "nothing is processed before the answer to CONNECT"
    );
    server.accept(now, Accept::default()).unwrap();
    assert!(matches!(server.poll_transmit(), Some(Packet::ConnAck(_))));
    assert_eq!(
        server.poll_transmit(),
        Some(Packet::PubAck(PubAck::new(pid(1))))
    );
    assert!(matches!(server.poll_event(), Some(Event::Message(m)) if &m.payload[..] == b"early"));
}

/// Checks [MQTT-3.3.4-7], [MQTT-4.4.0-1].
#[test]
fn resends_respect_a_smaller_receive_maximum_on_the_new_connection() {
    // Five messages in flight; the server comes back accepting two at a time.
    let mut pair = Pair::connected(V5);
    for i in 0..5 {
        pair.client
            .publish(pair.now, msg("t", &i.to_string(), QoS::AtLeastOnce))
            .unwrap();
    }
    while pair.client.poll_transmit().is_some() {}
    let state = pair.client.take_state();
    assert_eq!(state.inflight(), 5);
    let now = pair.now;
    let mut server_cfg = Config::default();
    server_cfg.receive_maximum = NonZeroU16::new(2).unwrap();
    let (mut client, mut server) = support::resume(now, V5, state, SessionState::new(), server_cfg);
    client
        .handle_packet(now, server.poll_transmit().unwrap())
        .unwrap();
    let first: Vec<Packet> = std::iter::from_fn(|| client.poll_transmit()).collect();
    assert_eq!(
        first.len(),
        2,
        "at most the new Receive Maximum ([MQTT-3.3.4-7])"
    );
    // Each acknowledgement lets the next resend out, in order.
    let mut seen = Vec::new();
    let mut wire = first;
    while !wire.is_empty() {
        for p in std::mem::take(&mut wire) {
            let Packet::Publish(p) = p else { panic!() };
            assert!(p.dup);
            seen.push(String::from_utf8_lossy(&p.payload).into_owned());
            client
                .handle_packet(now, Packet::PubAck(PubAck::new(p.qos.packet_id().unwrap())))
                .unwrap();
        }
        wire = std::iter::from_fn(|| client.poll_transmit()).collect();
        assert!(wire.len() <= 2);
    }
    assert_eq!(seen, ["0", "1", "2", "3", "4"]);
}

/// Checks 5.0: [MQTT-3.2.2-2], [MQTT-3.1.2-4], [MQTT-3.2.2-4]; 3.1.1: [MQTT-3.2.2-1].
#[test]
fn clean_start_means_no_session_mqtt_3_2_2_2() {
    let now = std::time::Instant::now();
    let mut server = Connection::server(Config::default(), now);
    server
        .handle_packet(now, Packet::Connect(Box::new(connect(V5, "fresh"))))
        .unwrap();
    let mut old = SessionState::new();
    old.enqueue(now, msg("t", "old", QoS::AtLeastOnce), 10)
        .unwrap();
    server
        .accept(
            now,
            Accept {
                session_present: true,
                state: old,
                ..Accept::default()
            },
        )
        .unwrap();
    let Some(Packet::ConnAck(c)) = server.poll_transmit() else {
        panic!()
    };
    assert!(!c.session_present);
    // The offered session was discarded, and the application is told.
    assert!(std::iter::from_fn(|| server.poll_event()).any(|e| matches!(
        e,
        Event::Dropped {
            reason: DropReason::SessionDiscarded,
            ..
        }
    )));
    assert!(server.state().is_empty());
    // A client that asked for Clean Start and hears Session Present closes.
    let mut client = Connection::client(
        Config::default(),
        connect(V5, "c"),
        SessionState::new(),
        now,
    )
    .unwrap();
    let _ = client.poll_transmit();
    let r = client.handle_packet(
        now,
        Packet::ConnAck(petrel_codec::ConnAck::new(ReasonCode::SUCCESS, true)),
    );
    assert!(r.is_err());
    assert!(client.is_closed());
}

#[test]
fn mqtt_3_1_client_resumes_without_a_session_present_flag() {
    let now = std::time::Instant::now();
    let mut c = connect(Protocol::V3_1, "c31");
    c.clean_start = false;
    let mut state = SessionState::new();
    state
        .enqueue(now, msg("t", "x", QoS::ExactlyOnce), 10)
        .unwrap();
    let mut client = Connection::client(Config::default(), c.clone(), state, now).unwrap();
    let _ = client.poll_transmit();
    client
        .handle_packet(
            now,
            Packet::ConnAck(petrel_codec::ConnAck::new(ReasonCode::SUCCESS, false)),
        )
        .unwrap();
    let Some(Packet::Publish(p)) = client.poll_transmit() else {
        panic!()
    };
    let state = client.take_state();
    // Reconnect: 3.1's CONNACK has no flag, yet the in-flight QoS 2 message is
    // resent with its identifier rather than re-queued as new.
    let mut client = Connection::client(Config::default(), c, state, now).unwrap();
    let _ = client.poll_transmit();
    client
        .handle_packet(
            now,
            Packet::ConnAck(petrel_codec::ConnAck::new(ReasonCode::SUCCESS, false)),
        )
        .unwrap();
    let Some(Packet::Publish(again)) = client.poll_transmit() else {
        panic!()
    };
    assert!(again.dup);
    assert_eq!(again.qos, p.qos);
}

#[test]
fn deferred_packets_stop_at_a_disconnect_and_are_bounded() {
    let now = std::time::Instant::now();
    let mut server = Connection::server(Config::default(), now);
    server
        .handle_packet(now, Packet::Connect(Box::new(connect(V5, "d"))))
        .unwrap();
    server
        .handle_packet(
            now,
            Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION)),
        )
        .unwrap();
    server.handle_packet(now, Packet::PingReq).unwrap();
    server.accept(now, Accept::default()).unwrap();
    let events: Vec<Event> = std::iter::from_fn(|| server.poll_event()).collect();
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Closed(_)))
            .count(),
        1
    );
    let out: Vec<Packet> = std::iter::from_fn(|| server.poll_transmit()).collect();
    assert!(
        !out.contains(&Packet::PingResp),
        "nothing after the DISCONNECT: {out:?}"
    );
    // A flood before CONNACK is cut off with Quota exceeded.
    let mut server = Connection::server(Config::default(), now);
    server
        .handle_packet(now, Packet::Connect(Box::new(connect(V5, "e"))))
        .unwrap();
    let mut r = Ok(());
    for _ in 0..100 {
        r = server.handle_packet(now, Packet::PingReq);
        if r.is_err() {
            break;
        }
    }
    assert!(r.is_err());
    let Some(Packet::ConnAck(c)) = server.poll_transmit() else {
        panic!()
    };
    assert_eq!(c.reason_code, ReasonCode::QUOTA_EXCEEDED);
}

/// Checks [MQTT-3.1.2-2].
#[test]
fn unsupported_protocol_level_gets_return_code_1_mqtt_3_1_2_2() {
    let now = std::time::Instant::now();
    let mut server = Connection::server(Config::default(), now);
    server.handle_decode_error(
        now,
        petrel_codec::DecodeError::UnsupportedProtocolLevel { level: 6 },
    );
    let Some(Packet::ConnAck(c)) = server.poll_transmit() else {
        panic!()
    };
    assert_eq!(c.reason_code, ReasonCode::UNSUPPORTED_PROTOCOL_VERSION);
    assert_eq!(server.protocol(), V311);
    assert_eq!(
        &Packet::ConnAck(c).to_bytes(V311).unwrap()[..],
        &[0x20, 0x02, 0x00, 0x01]
    );
    assert!(server.is_closed());
}

/// The refusal's format follows what the client can read: an unknown
/// protocol name before level 5 gets a 5.0 CONNACK 0x84 (5.0
/// [MQTT-3.1.2-1]); before level 4, or an unknown level after a known
/// name, "MQIsdp" with level 5 included, gets the 3.1.1 return code 1;
/// each closes.
#[test]
fn a_refused_protocol_is_answered_in_a_format_the_client_reads() {
    use petrel_codec::DecodeError::{InvalidProtocolName, UnsupportedProtocolLevel};
    let cases: [(petrel_codec::DecodeError, Protocol, &[u8]); 4] = [
        (
            InvalidProtocolName { level: 5 },
            V5,
            &[0x20, 0x03, 0x00, 0x84, 0x00],
        ),
        (
            InvalidProtocolName { level: 4 },
            V311,
            &[0x20, 0x02, 0x00, 0x01],
        ),
        (
            UnsupportedProtocolLevel { level: 5 },
            V311,
            &[0x20, 0x02, 0x00, 0x01],
        ),
        (
            UnsupportedProtocolLevel { level: 7 },
            V311,
            &[0x20, 0x02, 0x00, 0x01],
        ),
    ];
    for (error, protocol, bytes) in cases {
        let now = std::time::Instant::now();
        let mut server = Connection::server(Config::default(), now);
        server.handle_decode_error(now, error.clone());
        let Some(Packet::ConnAck(c)) = server.poll_transmit() else {
            panic!("{error:?}")
        };
        assert_eq!(server.protocol(), protocol, "{error:?}");
        assert_eq!(
            &Packet::ConnAck(c).to_bytes(protocol).unwrap()[..],
            bytes,
            "{error:?}"
        );
        assert!(server.is_closed());
    }
}

/// Checks [MQTT-3.3.2-12].
#[test]
fn the_limits_enforced_are_the_limits_advertised() {
    // The application advertises a larger Topic Alias Maximum than the config's.
    let now = std::time::Instant::now();
    let mut server = Connection::server(Config::default(), now);
    server
        .handle_packet(now, Packet::Connect(Box::new(connect(V5, "a"))))
        .unwrap();
    let mut props = Properties::new();
    props.set_topic_alias_maximum(Some(100));
    server
        .accept(
            now,
            Accept {
                properties: props,
                ..Accept::default()
            },
        )
        .unwrap();
    let mut p = Publish::new(TopicName::from_static("t"), Bytes::new());
    p.properties.set_topic_alias(NonZeroU16::new(50));
    assert!(server.handle_packet(now, Packet::Publish(p)).is_ok());
}

#[test]
fn disconnect_reason_codes_are_checked() {
    let mut pair = Pair::connected(V5);
    assert!(pair
        .server
        .disconnect(
            pair.now,
            ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
            Properties::new()
        )
        .is_err());
    assert!(pair
        .client
        .disconnect(pair.now, ReasonCode::GRANTED_QOS_1, Properties::new())
        .is_err());
    let mut raise = Properties::new();
    raise.set_session_expiry_interval(Some(60));
    assert!(pair
        .client
        .disconnect(pair.now, ReasonCode::NORMAL_DISCONNECTION, raise)
        .is_err());
    assert!(
        pair.client.is_connected(),
        "a refused command changes nothing"
    );
    assert_eq!(
        Config::default().codec_limits().max_packet_size,
        1024 * 1024
    );
}

#[test]
fn a_server_publishes_only_once_it_has_accepted() {
    let now = std::time::Instant::now();
    let mut server = Connection::server(Config::default(), now);
    server
        .handle_packet(now, Packet::Connect(Box::new(connect(V5, "p"))))
        .unwrap();
    assert_eq!(
        server.publish(now, msg("t", "early", QoS::AtLeastOnce)),
        Err(petrel_session::SendError::NotConnected)
    );
}

/// Checks [MQTT-3.14.4-1], [MQTT-3.14.4-2] (5.0); 3.1.1: [MQTT-3.14.4-1], [MQTT-3.14.4-2].
#[test]
fn nothing_is_sent_after_disconnect() {
    for protocol in [V311, V5] {
        let mut pair = Pair::connected(protocol);
        pair.client
            .disconnect(
                pair.now,
                ReasonCode::NORMAL_DISCONNECTION,
                Properties::new(),
            )
            .unwrap();
        assert!(matches!(
            pair.client.poll_transmit(),
            Some(Packet::Disconnect(_))
        ));
        assert!(
            pair.client.is_closed(),
            "the caller closes the network connection now"
        );
        assert_eq!(
            pair.client
                .publish(pair.now, msg("t", "late", QoS::AtMostOnce)),
            Err(petrel_session::SendError::NotConnected)
        );
        pair.client
            .handle_timeout(pair.now + Duration::from_secs(3600));
        pair.client
            .handle_packet(pair.now, Packet::PingResp)
            .unwrap();
        assert!(pair.client.poll_transmit().is_none());
    }
}

// ------------------------------------------------------------ manual acknowledgements

/// With `manual_acks`, PUBACK and PUBREC wait for `ack`, go out in the order
/// the application acknowledges ([MQTT-4.6.0-2]), count against the
/// Receive Maximum until sent ([MQTT-3.3.4-9]), and a QoS 2 repeat is not
/// acknowledged before the application has acknowledged the original.
#[test]
fn manual_acks_wait_for_the_application() {
    let mut client_cfg = Config::default();
    client_cfg.manual_acks = true;
    client_cfg.receive_maximum = NonZeroU16::new(2).unwrap();
    let mut p = Pair::connected_with(V5, client_cfg, Config::default(), |_| {});
    p.server
        .publish(p.now, msg("t", "one", QoS::AtLeastOnce))
        .unwrap();
    p.server
        .publish(p.now, msg("t", "two", QoS::ExactlyOnce))
        .unwrap();
    p.run();
    assert_eq!(messages(&p.client_events), ["one", "two"]);
    // Nothing acknowledged yet.
    assert!(
        p.sent(Dir::ToServer).is_empty(),
        "{:?}",
        p.sent(Dir::ToServer)
    );
    // A QoS 2 repeat before the application acknowledged: no PUBREC.
    let mut again = Publish::new(TopicName::from_static("t"), Bytes::from_static(b"two"));
    again.qos = QosPid::ExactlyOnce(pid(2));
    again.dup = true;
    p.client
        .handle_packet(p.now, Packet::Publish(again.clone()))
        .unwrap();
    assert!(p.client.poll_transmit().is_none());
    p.client.ack(p.now, pid(1)).unwrap();
    p.client.ack(p.now, pid(2)).unwrap();
    assert!(p.client.ack(p.now, pid(2)).is_err(), "acknowledged once");
    p.run();
    let sent: Vec<_> = p
        .sent(Dir::ToServer)
        .into_iter()
        .map(|p| match p {
            Packet::PubAck(a) => ("PUBACK", a.packet_id.get()),
            Packet::PubRec(a) => ("PUBREC", a.packet_id.get()),
            Packet::PubComp(a) => ("PUBCOMP", a.packet_id.get()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(sent, [("PUBACK", 1), ("PUBREC", 2), ("PUBCOMP", 2)]);
    // Now acknowledged, a repeat is answered at once ([MQTT-4.3.3-10]).
    let mut late = again;
    late.qos = QosPid::ExactlyOnce(pid(3));
    p.client
        .handle_packet(p.now, Packet::Publish(late.clone()))
        .unwrap();
    p.client.ack(p.now, pid(3)).unwrap();
    p.client
        .handle_packet(p.now, Packet::Publish(late))
        .unwrap();
    let mut recs = 0;
    while let Some(pk) = p.client.poll_transmit() {
        recs += usize::from(matches!(pk, Packet::PubRec(_)));
    }
    assert_eq!(recs, 2);
}

/// Checks [MQTT-3.3.4-9].
#[test]
fn unacknowledged_messages_count_against_the_receive_maximum_mqtt_3_3_4_9() {
    let mut client_cfg = Config::default();
    client_cfg.manual_acks = true;
    client_cfg.receive_maximum = NonZeroU16::new(1).unwrap();
    let mut p = Pair::connected_with(V5, client_cfg, Config::default(), |_| {});
    for (n, id) in [(1u16, "a"), (2, "b")] {
        let mut m = Publish::new(TopicName::from_static("t"), Bytes::from(id));
        m.qos = QosPid::AtLeastOnce(pid(n));
        let r = p.client.handle_packet(p.now, Packet::Publish(m));
        if n == 2 {
            assert!(matches!(
                r,
                Err(ProtocolError::ReceiveMaximumExceeded { max: 1 })
            ));
        }
    }
}

/// A PUBREC with an error code ends the QoS 2 exchange on the receiver too
/// ([MQTT-4.3.3-9]): the identifier is free for a new message at once.
#[test]
fn an_error_pubrec_from_ack_with_frees_the_identifier() {
    let mut server_cfg = Config::default();
    server_cfg.manual_acks = true;
    let mut p = Pair::connected_with(V5, Config::default(), server_cfg, |_| {});
    let mut m = Publish::new(TopicName::from_static("t"), Bytes::from_static(b"a"));
    m.qos = QosPid::ExactlyOnce(pid(5));
    p.server
        .handle_packet(p.now, Packet::Publish(m.clone()))
        .unwrap();
    assert!(
        p.server.poll_transmit().is_none(),
        "no PUBREC before ack_with"
    );
    p.server
        .ack_with(p.now, pid(5), ReasonCode::NOT_AUTHORIZED)
        .unwrap();
    match p.server.poll_transmit() {
        Some(Packet::PubRec(a)) => assert_eq!(a.reason_code, ReasonCode::NOT_AUTHORIZED),
        other => panic!("{other:?}"),
    }
    // The same identifier again is a new message, delivered.
    p.server.handle_packet(p.now, Packet::Publish(m)).unwrap();
    let delivered = std::iter::from_fn(|| p.server.poll_event())
        .filter(|e| matches!(e, Event::Message(_)))
        .count();
    assert_eq!(delivered, 2);
    assert!(
        p.server.ack_with(p.now, pid(5), ReasonCode(0x8E)).is_err(),
        "0x8E is no PUBREC code"
    );
}

/// A QoS 2 message acknowledged by the application after its connection
/// closed: the acknowledgement is kept in the session, and the sender's
/// repeat on the next connection is answered with PUBREC at once, not
/// delivered again ([MQTT-4.3.3-10]).
#[test]
fn a_qos2_ack_made_after_the_connection_closed_answers_the_repeat() {
    let mut server_cfg = Config::default();
    server_cfg.manual_acks = true;
    let mut p = Pair::connected_with(V5, Config::default(), server_cfg.clone(), |_| {});
    let mut m = Publish::new(TopicName::from_static("t"), Bytes::from_static(b"a"));
    m.qos = QosPid::ExactlyOnce(pid(9));
    p.server
        .handle_packet(p.now, Packet::Publish(m.clone()))
        .unwrap();
    p.server
        .disconnect(p.now, ReasonCode::NORMAL_DISCONNECTION, Properties::new())
        .unwrap();
    // The application acknowledges after the close.
    p.server.ack(p.now, pid(9)).unwrap();
    let state = p.server.take_state();
    let (_client, mut server) = support::resume(p.now, V5, SessionState::new(), state, server_cfg);
    while server.poll_transmit().is_some() {}
    while server.poll_event().is_some() {}
    m.dup = true;
    server.handle_packet(p.now, Packet::Publish(m)).unwrap();
    assert!(matches!(server.poll_transmit(), Some(Packet::PubRec(_))));
    assert!(!std::iter::from_fn(|| server.poll_event()).any(|e| matches!(e, Event::Message(_))));
}

/// What a durable store needs: the journal names each packet identifier an
/// outgoing QoS 2 message is sent with, each PUBREC that moves one to PUBREL,
/// and each received QoS 2 identifier freed; a state rebuilt from that
/// resumes with the same identifiers, so the peer sees nothing twice.
#[test]
fn the_journal_records_what_a_store_needs_and_a_state_rebuilt_from_it_resumes() {
    use petrel_session::Change;
    let mut pair = Pair::connected(V5);
    pair.server.journal(true);
    let now = pair.now;
    let x = pair
        .server
        .publish(now, msg("t", "x", QoS::ExactlyOnce))
        .unwrap();
    pair.server
        .publish(now, msg("t", "y", QoS::AtLeastOnce))
        .unwrap();
    // Only the QoS 2 message's identifier matters after a crash (a QoS 1
    // message may go again with another).
    let sent = pair.server.take_changes();
    let px = match sent[..] {
        [Change::Sent { id: a, packet_id }] if a == x => packet_id,
        _ => panic!("{sent:?}"),
    };
    // To the client; it answers PUBREC for x (PUBACK for y is lost).
    let mut py = 0;
    for p in std::iter::from_fn(|| pair.server.poll_transmit()).collect::<Vec<_>>() {
        if let Packet::Publish(m) = &p {
            if m.qos.qos() == QoS::AtLeastOnce {
                py = m.qos.packet_id().unwrap().get();
            }
        }
        pair.client.handle_packet(now, p).unwrap();
    }
    assert_ne!(py, 0, "y was sent");
    let answers: Vec<Packet> = std::iter::from_fn(|| pair.client.poll_transmit()).collect();
    let pubrec = answers
        .into_iter()
        .find(|p| matches!(p, Packet::PubRec(_)))
        .unwrap();
    pair.server.handle_packet(now, pubrec).unwrap();
    assert_eq!(
        pair.server.take_changes(),
        [Change::Released {
            id: x,
            packet_id: px
        }]
    );
    // A QoS 2 message from the client: its identifier is freed at PUBREL.
    pair.client
        .publish(now, msg("in", "z", QoS::ExactlyOnce))
        .unwrap();
    for _ in 0..3 {
        for p in std::iter::from_fn(|| pair.client.poll_transmit()).collect::<Vec<_>>() {
            if !matches!(
                p,
                Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_)
            ) {
                pair.server.handle_packet(now, p).unwrap();
            }
        }
        for p in std::iter::from_fn(|| pair.server.poll_transmit()).collect::<Vec<_>>() {
            pair.client.handle_packet(now, p).unwrap();
        }
    }
    let freed = pair.server.take_changes();
    assert!(matches!(freed[..], [Change::Freed { .. }]), "{freed:?}");
    // The broker "crashes": a state is rebuilt from the journal alone.
    let mut rebuilt = SessionState::new();
    assert!(rebuilt
        .restore_outgoing(now, px, msg("t", "x", QoS::ExactlyOnce), true)
        .is_some());
    assert!(rebuilt
        .restore_outgoing(now, py, msg("t", "y", QoS::AtLeastOnce), false)
        .is_some());
    assert!(
        rebuilt
            .restore_outgoing(now, py, msg("t", "w", QoS::AtLeastOnce), false)
            .is_none(),
        "an identifier in use"
    );
    let client_state = pair.client.take_state();
    let (mut client, mut server) =
        support::resume(now, V5, client_state, rebuilt, Config::default());
    let Some(Packet::ConnAck(ack)) = server.poll_transmit() else {
        panic!()
    };
    client.handle_packet(now, Packet::ConnAck(ack)).unwrap();
    let resent: Vec<Packet> = std::iter::from_fn(|| server.poll_transmit()).collect();
    // x: PUBREL with its identifier, never the message; y: again, with DUP
    // and the identifier it had.
    assert!(
        matches!(&resent[0], Packet::PubRel(r) if r.packet_id.get() == px),
        "{resent:?}"
    );
    let Packet::Publish(p) = &resent[1] else {
        panic!("{resent:?}")
    };
    assert!(p.dup && p.qos.packet_id().map(|i| i.get()) == Some(py));
    for p in resent {
        client.handle_packet(now, p).unwrap();
    }
    // The client had x already: it delivers only y, once.
    let delivered: Vec<Event> = std::iter::from_fn(|| client.poll_event()).collect();
    assert_eq!(messages(&delivered), ["y"]);
}

/// A server may write a QoS 0 message straight to the wire only where
/// `publish` would have sent it at once and unchanged but for its Topic
/// Alias; each refusal here has its control in the same connection state
/// without the one cause.
#[test]
fn a_qos0_message_passes_straight_through_only_when_nothing_is_ahead_of_it() {
    let topic = TopicName::from_static("t");
    let none = Properties::default();
    let payload = Bytes::from_static(b"0123456789");
    let view = PublishView {
        dup: false,
        qos: QosPid::AtMostOnce,
        retain: false,
        topic: &topic,
        properties: &none,
        topic_alias: None,
        payload: &payload,
    };
    // Connected, nothing queued, 3.1.1: passes as it is.
    let mut pair = Pair::connected(V311);
    let passed = pair.server.pass_at_most_once(pair.now, view).unwrap();
    assert_eq!((passed.topic, passed.topic_alias), (&topic, None));
    // Something to transmit first (a PUBLISH the machine queued): not before it.
    pair.server
        .publish(pair.now, msg("t", "x", QoS::AtMostOnce))
        .unwrap();
    assert!(pair.server.pass_at_most_once(pair.now, view).is_none());
    pair.run();
    assert!(pair.server.pass_at_most_once(pair.now, view).is_some());
    // QoS 1 never passes.
    let qos1 = PublishView {
        qos: QosPid::AtLeastOnce(pid(1)),
        ..view
    };
    assert!(pair.server.pass_at_most_once(pair.now, qos1).is_none());
    // Nor one with a Topic Alias already, its own or in its properties:
    // the alias is this connection's to give.
    let own = PublishView {
        topic_alias: NonZeroU16::new(1),
        ..view
    };
    assert!(pair.server.pass_at_most_once(pair.now, own).is_none());
    let mut aliased = Properties::default();
    aliased.set_topic_alias(NonZeroU16::new(1));
    let carried = PublishView {
        properties: &aliased,
        ..view
    };
    assert!(pair.server.pass_at_most_once(pair.now, carried).is_none());
    // Messages waiting for the window: not ahead of them.
    let mut client_cfg = Config::default();
    client_cfg.receive_maximum = NonZeroU16::new(1).unwrap();
    client_cfg.topic_alias_maximum = 0;
    let mut pair = Pair::connected_with(V5, client_cfg.clone(), Config::default(), |_| {});
    for i in 0..2 {
        pair.server
            .publish(pair.now, msg("t", &i.to_string(), QoS::AtLeastOnce))
            .unwrap();
    }
    let sent: Vec<Packet> = std::iter::from_fn(|| pair.server.poll_transmit()).collect();
    assert_eq!(pair.server.state().pending(), 1);
    assert!(pair.server.pass_at_most_once(pair.now, view).is_none());
    for p in sent {
        pair.client.handle_packet(pair.now, p).unwrap();
    }
    pair.run();
    assert_eq!(pair.server.state().pending(), 0);
    assert!(pair.server.pass_at_most_once(pair.now, view).is_some());
    // Larger than the peer's Maximum Packet Size (this one is 106 bytes
    // in 5.0): no.
    let hundred = Bytes::from(vec![b'x'; 100]);
    let view = PublishView {
        payload: &hundred,
        ..view
    };
    assert_eq!(view.encoded_len(V5).unwrap(), 106);
    for (max, passes) in [(105, false), (106, true)] {
        let mut pair = Pair::connected_with(V5, client_cfg.clone(), Config::default(), |c| {
            c.properties
                .set_maximum_packet_size(std::num::NonZeroU32::new(max));
        });
        assert_eq!(
            pair.server.pass_at_most_once(pair.now, view).is_some(),
            passes
        );
    }
    // A peer that takes Topic Aliases (the default client's 16): the
    // first message names the topic and sets alias 1, the next uses it
    // alone; a message that does not fit sets no alias.
    let mut pair = Pair::connected(V5);
    let first = pair.server.pass_at_most_once(pair.now, view).unwrap();
    assert_eq!(
        (first.topic, first.topic_alias),
        (&topic, NonZeroU16::new(1))
    );
    let next = pair.server.pass_at_most_once(pair.now, view).unwrap();
    assert_eq!(next.topic.as_str(), "");
    assert_eq!(next.topic_alias, NonZeroU16::new(1));
    let mut small = Pair::connected_with(V5, Config::default(), Config::default(), |c| {
        c.properties
            .set_maximum_packet_size(std::num::NonZeroU32::new(109));
    });
    // 109 bytes with its alias; 113 with "other" and its alias.
    let other = TopicName::from_static("other");
    let too_big = PublishView {
        topic: &other,
        ..view
    };
    assert!(small.server.pass_at_most_once(small.now, too_big).is_none());
    let first = small.server.pass_at_most_once(small.now, view).unwrap();
    assert_eq!(
        first.topic_alias,
        NonZeroU16::new(1),
        "alias 1 is still free"
    );
    // Before CONNACK, and for a client: no.
    let mut server = Connection::server(Config::default(), pair.now);
    assert!(server.pass_at_most_once(pair.now, view).is_none());
    assert!(pair.client.pass_at_most_once(pair.now, view).is_none());
}
