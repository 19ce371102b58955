//! The rules a client (and, for the Sender rules, either side) must keep,
//! checked on the session machine in its client role: acknowledgement and
//! resend order, DUP, the server's limits from CONNACK (Maximum Packet
//! Size, Topic Alias Maximum), enhanced authentication, and what is left
//! out of a packet that would not fit the receiver's Maximum Packet Size.
//!
//! Every packet crosses through the codec ([`support::reencode`]) as it
//! would on a real connection; what a machine emitted is checked as it
//! emitted it and, where the wire matters (flags), as encoded.

#![allow(clippy::field_reassign_with_default)] // configs read better as edits of the default

mod support;

use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use bytes::Bytes;
use petrel_codec::{
    Auth, ConnAck, Connect, MqttString, Packet, PacketId, Properties, Protocol, PubAck, Publish,
    QoS, QosPid, ReasonCode, Subscription, SubscriptionOptions, TopicFilter, TopicName,
    UserProperty,
};
use petrel_session::{
    Accept, Config, Connection, DropReason, Event, ProtocolError, SendError, SessionState,
};
use support::{connect, msg, reencode, Dir, Pair};

const V311: Protocol = Protocol::V3_1_1;
const V5: Protocol = Protocol::V5;

fn pid(v: u16) -> PacketId {
    PacketId::new(v).unwrap()
}

/// Everything the machine has queued for the wire, in order.
fn drain(c: &mut Connection) -> Vec<Packet> {
    std::iter::from_fn(|| c.poll_transmit()).collect()
}

/// Everything the machine has for the application, in order.
fn events(c: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

/// A PUBLISH as a peer would send it.
fn publish(topic: &str, payload: &str, qos: QoS, packet_id: Option<u16>) -> Packet {
    let mut p = Publish::new(
        TopicName::try_from(topic).unwrap(),
        Bytes::copy_from_slice(payload.as_bytes()),
    );
    p.qos = QosPid::from_parts(qos, packet_id.map(pid)).unwrap();
    Packet::Publish(p)
}

/// A 5.0 PUBLISH from the server carrying a Topic Alias (an empty topic:
/// the alias alone names it).
fn aliased(topic: &str, alias: u16, payload: &str) -> Packet {
    let topic = if topic.is_empty() {
        TopicName::alias_only()
    } else {
        TopicName::try_from(topic).unwrap()
    };
    let mut p = Publish::new(topic, Bytes::copy_from_slice(payload.as_bytes()));
    p.properties.set_topic_alias(NonZeroU16::new(alias));
    Packet::Publish(p)
}

/// The first byte of the packet as encoded: type and flags.
fn fixed_header(p: &Packet, protocol: Protocol) -> u8 {
    p.to_bytes(protocol).unwrap()[0]
}

fn size(p: &Packet, protocol: Protocol) -> usize {
    p.encoded_len(protocol).unwrap()
}

/// A short description of an acknowledgement: kind and identifier.
fn ack(p: &Packet) -> (&'static str, u16) {
    match p {
        Packet::PubAck(a) => ("PUBACK", a.packet_id.get()),
        Packet::PubRec(a) => ("PUBREC", a.packet_id.get()),
        Packet::PubRel(a) => ("PUBREL", a.packet_id.get()),
        Packet::PubComp(a) => ("PUBCOMP", a.packet_id.get()),
        other => panic!("not an acknowledgement: {other:?}"),
    }
}

fn method(name: &'static str) -> Properties {
    let mut p = Properties::new();
    p.set_authentication_method(Some(MqttString::from_static(name)));
    p
}

fn long_string(n: usize) -> MqttString {
    MqttString::try_from("r".repeat(n)).unwrap()
}

/// `n` user properties of about 20 bytes each.
fn user_properties(props: &mut Properties, n: usize) {
    for i in 0..n {
        props.push_user_property(UserProperty::new(
            MqttString::try_from(format!("key-{i:04}")).unwrap(),
            MqttString::try_from(format!("value-{i:06}")).unwrap(),
        ));
    }
}

/// A pair connected as given, with the CONNECT and the CONNACK that
/// crossed. `before_connack` acts on the client once its CONNECT is queued
/// and before anything crosses. The log keeps every packet, CONNECT and
/// CONNACK included; the client's `Connected` event is taken out.
fn open(
    protocol: Protocol,
    client_cfg: Config,
    server_cfg: Config,
    edit: impl FnOnce(&mut Connect),
    before_connack: impl FnOnce(&mut Connection, Instant),
) -> (Pair, Connect, ConnAck) {
    let mut pair = Pair::opened(protocol, client_cfg, server_cfg, edit, before_connack);
    let at = pair
        .client_events
        .iter()
        .position(|e| matches!(e, Event::Connected { .. }))
        .expect("connected");
    pair.client_events.remove(at);
    let connect = pair
        .log
        .iter()
        .find_map(|(_, p)| match p {
            Packet::Connect(c) => Some((**c).clone()),
            _ => None,
        })
        .unwrap();
    let connack = pair
        .log
        .iter()
        .find_map(|(_, p)| match p {
            Packet::ConnAck(c) => Some(c.clone()),
            _ => None,
        })
        .unwrap();
    (pair, connect, connack)
}

// ------------------------------------------------------------ acknowledgements

/// The client acknowledges every PUBLISH the server sends as its QoS asks,
/// on receipt and whether or not it subscribed to the topic or the
/// application ever reads the message: PUBACK for QoS 1, PUBREC (and
/// PUBCOMP after PUBREL) for QoS 2, nothing for QoS 0. A 5.0 application
/// that declines a message it acknowledges by hand still sends the
/// acknowledgement, with its reason code. Checks [MQTT-4.5.0-2].
#[test]
fn client_acknowledges_every_publish_per_its_qos_mqtt_4_5_0_2() {
    for proto in [V311, V5] {
        let mut pair = Pair::connected(proto);
        let now = pair.now;
        // No SUBSCRIBE was ever sent: these match nothing the client asked for.
        for p in [
            publish("never/subscribed/0", "zero", QoS::AtMostOnce, None),
            publish("never/subscribed/1", "one", QoS::AtLeastOnce, Some(7)),
            publish("never/subscribed/2", "two", QoS::ExactlyOnce, Some(8)),
        ] {
            pair.client
                .handle_packet(now, reencode(p, &pair.server))
                .unwrap();
        }
        // The application has not looked at anything yet.
        let acks = drain(&mut pair.client);
        assert_eq!(
            acks.iter().map(ack).collect::<Vec<_>>(),
            [("PUBACK", 7), ("PUBREC", 8)],
            "{proto:?}: QoS 1 and 2 acknowledged, QoS 0 not"
        );
        for a in &acks {
            let (Packet::PubAck(a) | Packet::PubRec(a)) = a else {
                unreachable!()
            };
            assert_eq!(a.reason_code, ReasonCode::SUCCESS);
        }
        pair.client
            .handle_packet(now, Packet::PubRel(PubAck::new(pid(8))))
            .unwrap();
        assert_eq!(
            drain(&mut pair.client).iter().map(ack).collect::<Vec<_>>(),
            [("PUBCOMP", 8)]
        );
        // Each was handed over once.
        let delivered = events(&mut pair.client)
            .into_iter()
            .filter(|e| matches!(e, Event::Message(_)))
            .count();
        assert_eq!(delivered, 3);

        if proto == V5 {
            // Acknowledged by the application, which declines both.
            let mut cfg = Config::default();
            cfg.manual_acks = true;
            let mut pair = Pair::connected_with(V5, cfg, Config::default(), |_| {});
            let now = pair.now;
            for p in [
                publish("declined/1", "one", QoS::AtLeastOnce, Some(3)),
                publish("declined/2", "two", QoS::ExactlyOnce, Some(4)),
            ] {
                pair.client
                    .handle_packet(now, reencode(p, &pair.server))
                    .unwrap();
            }
            for id in [3, 4] {
                pair.client
                    .ack_with(now, pid(id), ReasonCode::NOT_AUTHORIZED)
                    .unwrap();
            }
            let acks = drain(&mut pair.client);
            assert_eq!(
                acks.iter().map(ack).collect::<Vec<_>>(),
                [("PUBACK", 3), ("PUBREC", 4)]
            );
            for a in &acks {
                let (Packet::PubAck(a) | Packet::PubRec(a)) = a else {
                    unreachable!()
                };
                assert_eq!(a.reason_code, ReasonCode::NOT_AUTHORIZED);
            }
        }
    }
}

/// The client's PUBRECs (and PUBACKs) go out in the order the server's
/// PUBLISHes arrived, not in packet identifier order. Checks [MQTT-4.6.0-3],
/// [MQTT-4.6.0-2].
#[test]
fn client_acknowledges_in_arrival_order_mqtt_4_6_0_3() {
    for proto in [V311, V5] {
        let mut pair = Pair::connected(proto);
        let now = pair.now;
        let arrivals = [
            (QoS::ExactlyOnce, 9),
            (QoS::AtLeastOnce, 4),
            (QoS::ExactlyOnce, 2),
            (QoS::ExactlyOnce, 7),
            (QoS::AtLeastOnce, 1),
        ];
        for (qos, id) in arrivals {
            let p = publish("t", &id.to_string(), qos, Some(id));
            pair.client
                .handle_packet(now, reencode(p, &pair.server))
                .unwrap();
        }
        assert_eq!(
            drain(&mut pair.client).iter().map(ack).collect::<Vec<_>>(),
            [
                ("PUBREC", 9),
                ("PUBACK", 4),
                ("PUBREC", 2),
                ("PUBREC", 7),
                ("PUBACK", 1)
            ],
            "{proto:?}"
        );
    }
}

/// The client's PUBRELs go out in the order the server's PUBRECs arrived,
/// even when that is neither the order of the PUBLISHes nor of their
/// identifiers. Checks [MQTT-4.6.0-4].
#[test]
fn pubrels_follow_the_order_of_the_pubrecs_mqtt_4_6_0_4() {
    for proto in [V311, V5] {
        let mut pair = Pair::connected(proto);
        let now = pair.now;
        let mut ids = Vec::new();
        for payload in ["a", "b", "c", "d"] {
            pair.client
                .publish(now, msg("t", payload, QoS::ExactlyOnce))
                .unwrap();
        }
        for p in drain(&mut pair.client) {
            let Packet::Publish(p) = p else { panic!() };
            ids.push(p.qos.packet_id().unwrap().get());
        }
        assert_eq!(ids, [1, 2, 3, 4]);
        for id in [3, 1, 4, 2] {
            pair.client
                .handle_packet(now, Packet::PubRec(PubAck::new(pid(id))))
                .unwrap();
        }
        assert_eq!(
            drain(&mut pair.client).iter().map(ack).collect::<Vec<_>>(),
            [("PUBREL", 3), ("PUBREL", 1), ("PUBREL", 4), ("PUBREL", 2)],
            "{proto:?}"
        );
        // The exchanges then finish as usual.
        for id in [3, 1, 4, 2] {
            pair.client
                .handle_packet(now, Packet::PubComp(PubAck::new(pid(id))))
                .unwrap();
        }
        assert!(pair.client.state().is_empty());
    }
}

// ------------------------------------------------------------ resending

/// When the session resumes, the client resends its unacknowledged QoS 1
/// and 2 PUBLISHes in the order it first sent them, even where their
/// packet identifiers wrapped round (65534, 65535, 1, 2), and each resend
/// carries DUP 1, on the packet and on the wire, where the first send
/// carried DUP 0. Checks [MQTT-4.6.0-1], [MQTT-3.3.1-1].
#[test]
fn resends_keep_the_original_order_across_identifier_wrap_mqtt_4_6_0_1() {
    for proto in [V311, V5] {
        let mut pair = Pair::connected(proto);
        let now = pair.now;
        // 65,533 finished QoS 1 exchanges bring the identifiers to the end
        // of their range.
        for _ in 0..65_533u32 {
            pair.client
                .publish(now, msg("w", "", QoS::AtLeastOnce))
                .unwrap();
            let Some(Packet::Publish(p)) = pair.client.poll_transmit() else {
                panic!()
            };
            let id = p.qos.packet_id().unwrap();
            pair.client
                .handle_packet(now, Packet::PubAck(PubAck::new(id)))
                .unwrap();
            while pair.client.poll_event().is_some() {}
        }
        let order = [
            ("a", QoS::AtLeastOnce),
            ("b", QoS::ExactlyOnce),
            ("c", QoS::AtLeastOnce),
            ("d", QoS::ExactlyOnce),
        ];
        for (payload, qos) in order {
            pair.client.publish(now, msg("t", payload, qos)).unwrap();
        }
        let first: Vec<(u16, bool, Bytes)> = drain(&mut pair.client)
            .into_iter()
            .map(|p| {
                let h = fixed_header(&p, proto);
                let Packet::Publish(p) = p else { panic!() };
                assert_eq!(h & 0x08, 0, "first send: DUP 0 on the wire");
                (p.qos.packet_id().unwrap().get(), p.dup, p.payload)
            })
            .collect();
        let expected_ids = [65534, 65535, 1, 2];
        assert_eq!(
            first.iter().map(|(id, ..)| *id).collect::<Vec<_>>(),
            expected_ids
        );
        assert!(first.iter().all(|(_, dup, _)| !dup));

        // The connection breaks before any acknowledgement; the next one
        // resumes the session.
        let state = pair.client.take_state();
        let (mut client, mut server) =
            support::resume(now, proto, state, SessionState::new(), Config::default());
        let Some(Packet::ConnAck(connack)) = server.poll_transmit() else {
            panic!()
        };
        assert!(connack.session_present);
        client.handle_packet(now, Packet::ConnAck(connack)).unwrap();
        let resent = drain(&mut client);
        assert_eq!(resent.len(), 4, "{proto:?}: {resent:?}");
        let mut seen = Vec::new();
        for (p, (payload, qos)) in resent.iter().zip(order) {
            let h = fixed_header(p, proto);
            let Packet::Publish(p) = p else { panic!() };
            assert!(p.dup, "{proto:?}: resend carries DUP 1");
            assert_eq!(h & 0x08, 0x08, "{proto:?}: DUP 1 on the wire");
            assert_eq!(p.qos.qos(), qos);
            assert_eq!(&p.payload[..], payload.as_bytes());
            seen.push(p.qos.packet_id().unwrap().get());
        }
        assert_eq!(
            seen, expected_ids,
            "{proto:?}: same identifiers, same order"
        );
    }
}

/// A QoS 0 PUBLISH goes out with QoS 0 and DUP 0 (on the packet and in
/// the encoded flags) from either side, also when it waited for the
/// window through a reconnection on which a QoS 1 message is resent with
/// DUP 1. Checks [MQTT-4.3.1-1], [MQTT-3.3.1-2].
#[test]
fn qos0_publishes_carry_qos0_and_dup0_mqtt_4_3_1_1() {
    let is_qos0_dup0 = |p: &Packet, proto: Protocol| {
        let h = fixed_header(p, proto);
        let Packet::Publish(p) = p else {
            panic!("{p:?}")
        };
        p.qos == QosPid::AtMostOnce && !p.dup && h & 0x0E == 0
    };
    for proto in [V311, V5] {
        // A window of one: the QoS 0 message waits behind a QoS 1 one.
        let mut cfg = Config::default();
        cfg.max_inflight = NonZeroU16::new(1).unwrap();
        let mut pair = Pair::connected_with(proto, cfg, Config::default(), |_| {});
        let now = pair.now;
        pair.client
            .publish(now, msg("t", "zero-1", QoS::AtMostOnce))
            .unwrap();
        pair.client
            .publish(now, msg("t", "first", QoS::AtLeastOnce))
            .unwrap();
        pair.client
            .publish(now, msg("t", "second", QoS::AtLeastOnce))
            .unwrap();
        pair.client
            .publish(now, msg("t", "zero-2", QoS::AtMostOnce))
            .unwrap();
        let sent = drain(&mut pair.client);
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert!(is_qos0_dup0(&sent[0], proto));
        assert!(!is_qos0_dup0(&sent[1], proto));

        // Reconnect: "first" is resent with DUP 1, then the two that waited.
        let state = pair.client.take_state();
        assert_eq!(state.pending(), 2);
        let (mut client, mut server) =
            support::resume(now, proto, state, SessionState::new(), Config::default());
        let connack = server.poll_transmit().unwrap();
        client.handle_packet(now, connack).unwrap();
        let sent = drain(&mut client);
        let described: Vec<(String, bool)> = sent
            .iter()
            .map(|p| {
                let Packet::Publish(q) = p else { panic!() };
                (String::from_utf8_lossy(&q.payload).into_owned(), q.dup)
            })
            .collect();
        assert_eq!(
            described,
            [
                ("first".into(), true),
                ("second".into(), false),
                ("zero-2".into(), false)
            ],
            "{proto:?}"
        );
        assert_eq!(fixed_header(&sent[0], proto) & 0x08, 0x08, "DUP 1 visible");
        assert!(is_qos0_dup0(&sent[2], proto));

        // The server as sender.
        let mut pair = Pair::connected(proto);
        pair.server
            .publish(pair.now, msg("t", "from-server", QoS::AtMostOnce))
            .unwrap();
        let sent = drain(&mut pair.server);
        assert_eq!(sent.len(), 1);
        assert!(is_qos0_dup0(&sent[0], proto));
    }
}

// ------------------------------------------------------------ 5.0 CONNECT / CONNACK limits

/// Between a CONNECT that names an Authentication Method and the CONNACK,
/// the client sends only AUTH (or DISCONNECT): messages published meanwhile
/// wait, SUBSCRIBE and UNSUBSCRIBE are refused, no PINGREQ goes out however
/// long it waits, and a packet from the server other than AUTH or CONNACK
/// gets a DISCONNECT, not an acknowledgement. Once the CONNACK is in, the
/// waiting messages and the PINGREQ do go out. Checks 5.0: [MQTT-3.1.2-30].
#[test]
fn only_auth_or_disconnect_before_connack_mqtt_3_1_2_30() {
    let now = Instant::now();
    let mut cfg = Config::default();
    cfg.response_timeout = Duration::from_secs(600);
    let with_method = || {
        let mut c = connect(V5, "auth-client");
        c.properties = method("SCRAM-SHA-256");
        c
    };
    let mut client =
        Connection::client(cfg.clone(), with_method(), SessionState::new(), now).unwrap();
    let mut server = Connection::server(Config::default(), now);
    let mut wire = drain(&mut client);
    server.handle_packet(now, wire[0].clone()).unwrap();
    assert!(matches!(
        server.poll_event(),
        Some(Event::ConnectRequest(_))
    ));

    // The application tries everything while the CONNACK is awaited.
    for (payload, qos) in [
        ("zero", QoS::AtMostOnce),
        ("one", QoS::AtLeastOnce),
        ("two", QoS::ExactlyOnce),
    ] {
        client.publish(now, msg("t", payload, qos)).unwrap();
    }
    let sub = vec![Subscription {
        filter: TopicFilter::from_static("t/#"),
        options: SubscriptionOptions::qos(QoS::AtLeastOnce),
    }];
    assert_eq!(
        client.subscribe(now, sub.clone(), Properties::new()),
        Err(SendError::NotConnected)
    );
    assert_eq!(
        client.unsubscribe(
            now,
            vec![TopicFilter::from_static("t/#")],
            Properties::new()
        ),
        Err(SendError::NotConnected)
    );
    // Three keep alives (30 s each) pass without a CONNACK.
    for s in [30, 60, 90] {
        client.handle_timeout(now + Duration::from_secs(s));
        wire.extend(drain(&mut client));
    }
    let t = now + Duration::from_secs(90);
    // The server's challenge, the client's answer.
    server
        .auth(
            t,
            Auth {
                reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
                properties: method("SCRAM-SHA-256"),
            },
        )
        .unwrap();
    client
        .handle_packet(t, server.poll_transmit().unwrap())
        .unwrap();
    assert!(matches!(client.poll_event(), Some(Event::Auth(_))));
    client
        .auth(
            t,
            Auth {
                reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
                properties: method("SCRAM-SHA-256"),
            },
        )
        .unwrap();
    wire.extend(drain(&mut client));
    assert_eq!(wire.len(), 2, "{wire:?}");
    assert!(matches!(wire[0], Packet::Connect(_)));
    assert!(matches!(wire[1], Packet::Auth(_)));

    // Positive control: with the CONNACK, what waited goes out, in order,
    // and the keep alive brings a PINGREQ.
    server.handle_packet(t, wire[1].clone()).unwrap();
    assert!(matches!(server.poll_event(), Some(Event::Auth(_))));
    server.accept(t, Accept::default()).unwrap();
    client
        .handle_packet(t, server.poll_transmit().unwrap())
        .unwrap();
    assert!(client.is_connected());
    let after: Vec<String> = drain(&mut client)
        .into_iter()
        .map(|p| match p {
            Packet::Publish(p) => String::from_utf8_lossy(&p.payload).into_owned(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(after, ["zero", "one", "two"]);
    client.handle_timeout(t + Duration::from_secs(30));
    assert_eq!(drain(&mut client), [Packet::PingReq]);
    assert!(client.subscribe(t, sub, Properties::new()).is_ok());

    // DISCONNECT may go before the CONNACK.
    let mut client =
        Connection::client(cfg.clone(), with_method(), SessionState::new(), now).unwrap();
    client
        .disconnect(now, ReasonCode::NORMAL_DISCONNECTION, Properties::new())
        .unwrap();
    let wire = drain(&mut client);
    assert!(matches!(
        wire[..],
        [Packet::Connect(_), Packet::Disconnect(_)]
    ));

    // A PUBLISH before the CONNACK is not acknowledged: the client disconnects.
    let mut client = Connection::client(cfg, with_method(), SessionState::new(), now).unwrap();
    let _connect = client.poll_transmit();
    let e = client
        .handle_packet(now, publish("t", "early", QoS::AtLeastOnce, Some(1)))
        .unwrap_err();
    assert!(matches!(e, ProtocolError::UnexpectedPacket { .. }));
    let wire = drain(&mut client);
    assert!(
        matches!(&wire[..], [Packet::Disconnect(d)] if d.reason_code == ReasonCode::PROTOCOL_ERROR),
        "{wire:?}"
    );
}

/// The client keeps every packet within the Maximum Packet Size of the
/// server's CONNACK: a PUBLISH of exactly that size goes, one byte more is
/// dropped unsent (QoS 0, QoS 1 and a message queued before the CONNACK
/// told the limit), and a SUBSCRIBE or UNSUBSCRIBE that would exceed it is
/// refused while a small one goes. Checks 5.0: [MQTT-3.2.2-15].
#[test]
fn client_never_sends_above_the_servers_maximum_packet_size_mqtt_3_2_2_15() {
    const MAX: u32 = 128;
    let mut server_cfg = Config::default();
    server_cfg.maximum_packet_size = MAX;
    server_cfg.topic_alias_maximum = 0; // sizes without aliases
    let mut early = None;
    let (mut pair, _, connack) = open(
        V5,
        Config::default(),
        server_cfg,
        |_| {},
        |client, now| {
            early = Some(
                client
                    .publish(now, msg("t", &"x".repeat(300), QoS::AtLeastOnce))
                    .unwrap(),
            );
        },
    );
    assert_eq!(
        connack.properties.maximum_packet_size().map(|m| m.get()),
        Some(MAX)
    );
    let now = pair.now;
    assert!(pair.client_events.contains(&Event::Dropped {
        id: early.unwrap(),
        reason: DropReason::TooLarge
    }));

    // The payload that makes a QoS 0 PUBLISH to "t" exactly MAX bytes.
    let len_with = |n: usize| size(&publish("t", &"x".repeat(n), QoS::AtMostOnce, None), V5);
    let fits = (0..MAX as usize)
        .find(|&n| len_with(n) == MAX as usize)
        .unwrap();
    let exact = pair
        .client
        .publish(now, msg("t", &"x".repeat(fits), QoS::AtMostOnce))
        .unwrap();
    let over = pair
        .client
        .publish(now, msg("t", &"y".repeat(fits + 1), QoS::AtMostOnce))
        .unwrap();
    let over_qos1 = pair
        .client
        .publish(now, msg("t", &"z".repeat(fits), QoS::AtLeastOnce))
        .unwrap();
    let small_qos1 = pair
        .client
        .publish(now, msg("t", "ok", QoS::AtLeastOnce))
        .unwrap();
    let long_filter = TopicFilter::try_from(format!("{}/#", "f".repeat(200)).as_str()).unwrap();
    let subscribe = |filter: &TopicFilter| {
        vec![Subscription {
            filter: filter.clone(),
            options: SubscriptionOptions::qos(QoS::AtMostOnce),
        }]
    };
    assert!(matches!(
        pair.client
            .subscribe(now, subscribe(&long_filter), Properties::new()),
        Err(SendError::PacketTooLarge { max: MAX, .. })
    ));
    assert!(matches!(
        pair.client
            .unsubscribe(now, vec![long_filter], Properties::new()),
        Err(SendError::PacketTooLarge { max: MAX, .. })
    ));
    let short = TopicFilter::from_static("s/#");
    pair.client
        .subscribe(now, subscribe(&short), Properties::new())
        .unwrap();
    pair.client
        .unsubscribe(now, vec![short], Properties::new())
        .unwrap();
    pair.run();

    for id in [over, over_qos1] {
        assert!(pair.client_events.contains(&Event::Dropped {
            id,
            reason: DropReason::TooLarge
        }));
    }
    assert!(pair
        .client_events
        .iter()
        .any(|e| matches!(e, Event::Published { id, .. } if *id == small_qos1)));
    assert!(!pair
        .client_events
        .iter()
        .any(|e| matches!(e, Event::Dropped { id, .. } if *id == exact)));
    assert_eq!(pair.client.state().inflight(), 0);

    // What did cross: every packet after CONNECT within MAX, the exact one
    // among them, and nothing of the dropped ones.
    let sent: Vec<&Packet> = pair
        .sent(Dir::ToServer)
        .into_iter()
        .filter(|p| !matches!(p, Packet::Connect(_)))
        .collect();
    let sizes: Vec<usize> = sent.iter().map(|p| size(p, V5)).collect();
    assert!(sizes.iter().all(|&s| s <= MAX as usize), "{sizes:?}");
    assert!(sizes.contains(&(MAX as usize)));
    let payloads: Vec<&[u8]> = sent
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(&p.payload[..]),
            _ => None,
        })
        .collect();
    assert_eq!(payloads, ["x".repeat(fits).as_bytes(), b"ok"]);
    assert!(sent.iter().any(|p| matches!(p, Packet::Subscribe(_))));
    assert!(sent.iter().any(|p| matches!(p, Packet::Unsubscribe(_))));
}

/// A CONNACK without Topic Alias Maximum: the client sends no Topic Alias,
/// not even one the application put in the message's properties; with a
/// Topic Alias Maximum in the CONNACK the same messages do carry aliases.
/// Checks 5.0: [MQTT-3.2.2-18].
#[test]
fn no_topic_alias_without_the_servers_maximum_mqtt_3_2_2_18() {
    for maximum in [0u16, 4] {
        let mut server_cfg = Config::default();
        server_cfg.topic_alias_maximum = maximum;
        let (mut pair, _, connack) = open(V5, Config::default(), server_cfg, |_| {}, |_, _| {});
        assert_eq!(
            connack.properties.topic_alias_maximum(),
            (maximum > 0).then_some(maximum)
        );
        let now = pair.now;
        for _ in 0..3 {
            pair.client
                .publish(now, msg("a/b", "p", QoS::AtMostOnce))
                .unwrap();
        }
        let mut own_alias = msg("c/d", "p", QoS::AtLeastOnce);
        own_alias.properties.set_topic_alias(NonZeroU16::new(1));
        pair.client.publish(now, own_alias).unwrap();
        pair.run();
        let sent: Vec<(String, Option<u16>)> = pair
            .sent(Dir::ToServer)
            .into_iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some((
                    p.topic.to_string(),
                    p.properties.topic_alias().map(NonZeroU16::get),
                )),
                _ => None,
            })
            .collect();
        if maximum == 0 {
            assert_eq!(
                sent,
                [
                    ("a/b".into(), None),
                    ("a/b".into(), None),
                    ("a/b".into(), None),
                    ("c/d".into(), None)
                ]
            );
        } else {
            // Positive control: the same messages with aliases allowed.
            assert_eq!(
                sent,
                [
                    ("a/b".into(), Some(1)),
                    ("".into(), Some(1)),
                    ("".into(), Some(1)),
                    ("c/d".into(), Some(2))
                ]
            );
        }
    }
}

/// The client accepts from the server every Topic Alias from 1 up to the
/// Topic Alias Maximum its CONNECT sent (from its configuration, or set in
/// the CONNECT itself), in any order, and resolves each; one above it is
/// refused with DISCONNECT 0x94. Checks 5.0: [MQTT-3.3.2-10].
#[test]
fn client_accepts_every_alias_up_to_its_maximum_mqtt_3_3_2_10() {
    // The maximum from the configuration.
    let mut client_cfg = Config::default();
    client_cfg.topic_alias_maximum = 5;
    let (mut pair, connect, _) = open(V5, client_cfg, Config::default(), |_| {}, |_, _| {});
    assert_eq!(connect.properties.topic_alias_maximum(), Some(5));
    let now = pair.now;
    for alias in [5u16, 1, 3, 2, 4] {
        let p = aliased(&format!("t/{alias}"), alias, "set");
        pair.client
            .handle_packet(now, reencode(p, &pair.server))
            .unwrap();
    }
    for alias in [2u16, 5, 4, 1, 3] {
        let p = aliased("", alias, "use");
        pair.client
            .handle_packet(now, reencode(p, &pair.server))
            .unwrap();
    }
    let topics: Vec<String> = events(&mut pair.client)
        .into_iter()
        .filter_map(|e| match e {
            Event::Message(p) => Some(format!(
                "{} {}",
                p.topic,
                String::from_utf8_lossy(&p.payload)
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        topics,
        [
            "t/5 set", "t/1 set", "t/3 set", "t/2 set", "t/4 set", "t/2 use", "t/5 use", "t/4 use",
            "t/1 use", "t/3 use"
        ]
    );
    assert!(drain(&mut pair.client).is_empty(), "nothing refused");
    // One above is refused: the check is there.
    let e = pair
        .client
        .handle_packet(now, reencode(aliased("t/6", 6, "x"), &pair.server))
        .unwrap_err();
    assert_eq!(e, ProtocolError::TopicAliasInvalid { alias: 6, max: 5 });
    assert!(matches!(
        &drain(&mut pair.client)[..],
        [Packet::Disconnect(d)] if d.reason_code == ReasonCode::TOPIC_ALIAS_INVALID
    ));

    // The maximum set in the CONNECT itself wins over the configuration's 16.
    let (mut pair, connect, _) = open(
        V5,
        Config::default(),
        Config::default(),
        |c| {
            c.properties.set_topic_alias_maximum(Some(2));
        },
        |_, _| {},
    );
    assert_eq!(connect.properties.topic_alias_maximum(), Some(2));
    let now = pair.now;
    for alias in [2u16, 1] {
        let p = aliased("u", alias, "x");
        pair.client
            .handle_packet(now, reencode(p, &pair.server))
            .unwrap();
    }
    assert_eq!(
        pair.client
            .handle_packet(now, reencode(aliased("u", 3, "x"), &pair.server))
            .unwrap_err(),
        ProtocolError::TopicAliasInvalid { alias: 3, max: 2 }
    );
}

// ------------------------------------------------------------ 5.0 authentication

/// A client whose CONNECT named no Authentication Method sends no AUTH:
/// `auth` is refused before and after the CONNACK with nothing sent, and
/// an AUTH from the server is answered with a DISCONNECT, not with
/// AUTH. The same calls with a method in CONNECT do send AUTH. Checks 5.0:
/// [MQTT-4.12.0-7].
#[test]
fn no_auth_without_an_authentication_method_mqtt_4_12_0_7() {
    let challenge = || Auth {
        reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
        properties: method("SCRAM-SHA-256"),
    };
    let reauth = || Auth {
        reason_code: ReasonCode::RE_AUTHENTICATE,
        properties: method("SCRAM-SHA-256"),
    };
    for with_method in [false, true] {
        let edit = |c: &mut Connect| {
            if with_method {
                c.properties = method("SCRAM-SHA-256");
            }
        };
        // Before the CONNACK.
        let now = Instant::now();
        let mut c = connect(V5, "client-1");
        edit(&mut c);
        let mut lone = Connection::client(Config::default(), c, SessionState::new(), now).unwrap();
        let r = lone.auth(now, challenge());
        assert_eq!(r.is_ok(), with_method, "{r:?}");
        let wire = drain(&mut lone);
        assert!(matches!(wire[0], Packet::Connect(_)));
        let mut sent_auth = wire[1..]
            .iter()
            .filter(|p| matches!(p, Packet::Auth(_)))
            .count();
        assert_eq!(wire.len(), 1 + sent_auth, "{wire:?}");

        // After the CONNACK: re-authentication.
        let (mut pair, connect, _) =
            open(V5, Config::default(), Config::default(), edit, |_, _| {});
        assert_eq!(
            connect.properties.authentication_method().is_some(),
            with_method
        );
        let now = pair.now;
        let r = pair.client.auth(now, reauth());
        assert_eq!(r.is_ok(), with_method, "{r:?}");
        let wire = drain(&mut pair.client);
        assert!(
            wire.iter().all(|p| matches!(p, Packet::Auth(_))),
            "{wire:?}"
        );
        sent_auth += wire.len();
        // An AUTH from the server.
        let r = pair.client.handle_packet(now, Packet::Auth(challenge()));
        let wire = drain(&mut pair.client);
        if with_method {
            assert!(r.is_ok());
            assert!(matches!(pair.client.poll_event(), Some(Event::Auth(_))));
            assert!(wire.is_empty());
            assert_eq!(sent_auth, 2, "AUTH before and after the CONNACK");
        } else {
            assert_eq!(r, Err(ProtocolError::BadAuthentication));
            assert!(
                matches!(&wire[..], [Packet::Disconnect(d)] if d.reason_code.is_error()),
                "{wire:?}"
            );
            assert_eq!(sent_auth, 0);
        }
    }
}

/// Checks 5.0: [MQTT-4.12.1-1]: a re-authentication uses the
/// Authentication Method of the CONNECT: an AUTH naming another method is
/// refused with nothing sent; one naming none goes out with the CONNECT's
/// method filled in; one naming the same goes out as it is (the control).
#[test]
fn reauthentication_keeps_the_connects_method_mqtt_4_12_1_1() {
    let (mut pair, _, _) = open(
        V5,
        Config::default(),
        Config::default(),
        |c: &mut Connect| c.properties = method("SCRAM-SHA-256"),
        |_, _| {},
    );
    let now = pair.now;
    let reauth = |props: Properties| Auth {
        reason_code: ReasonCode::RE_AUTHENTICATE,
        properties: props,
    };
    let r = pair.client.auth(now, reauth(method("PLAIN")));
    assert!(r.is_err(), "{r:?}");
    assert!(drain(&mut pair.client).is_empty());
    for props in [Properties::new(), method("SCRAM-SHA-256")] {
        pair.client.auth(now, reauth(props)).unwrap();
        match &drain(&mut pair.client)[..] {
            [Packet::Auth(a)] => assert_eq!(
                a.properties.authentication_method().unwrap().as_str(),
                "SCRAM-SHA-256"
            ),
            other => panic!("{other:?}"),
        }
    }
}

/// Checks 5.0: [MQTT-3.2.2-5]: a client holding session state that is
/// told Session Present 0 and goes on drops that state: no PUBREL for the
/// exchange the old session had reached PUBREC in, its unacknowledged QoS 1
/// message goes out as a new one (DUP 0), and the server's PUBREL for the
/// old inbound QoS 2 message finds no identifier (PUBCOMP 0x92). The
/// control, Session Present 1 on the same state: PUBREL resent, the QoS 1
/// message resent with DUP 1, PUBCOMP 0x00.
#[test]
fn session_present_0_discards_the_clients_state_mqtt_3_2_2_5() {
    let now = Instant::now();
    let hello = || {
        let mut c = connect(V5, "client-1");
        c.clean_start = false;
        c.properties.set_session_expiry_interval(Some(300));
        c
    };
    let mut first =
        Connection::client(Config::default(), hello(), SessionState::new(), now).unwrap();
    first
        .handle_packet(
            now,
            Packet::ConnAck(ConnAck::new(ReasonCode::SUCCESS, false)),
        )
        .unwrap();
    first
        .publish(now, msg("t/1", "one", QoS::AtLeastOnce))
        .unwrap();
    first
        .publish(now, msg("t/2", "two", QoS::ExactlyOnce))
        .unwrap();
    let sent = drain(&mut first);
    let id_of = |payload: &[u8]| {
        sent.iter()
            .find_map(|p| match p {
                Packet::Publish(m) if &m.payload[..] == payload => m.qos.packet_id(),
                _ => None,
            })
            .unwrap()
    };
    let (one, two) = (id_of(b"one"), id_of(b"two"));
    first
        .handle_packet(now, Packet::PubRec(PubAck::new(two)))
        .unwrap();
    first
        .handle_packet(now, publish("in/t", "in", QoS::ExactlyOnce, Some(7)))
        .unwrap();
    let wire = drain(&mut first);
    assert!(wire.contains(&Packet::PubRel(PubAck::new(two))), "{wire:?}");
    assert!(
        wire.contains(&Packet::PubRec(PubAck::new(pid(7)))),
        "{wire:?}"
    );
    let state = first.take_state();
    for present in [true, false] {
        let mut c = Connection::client(Config::default(), hello(), state.clone(), now).unwrap();
        assert!(matches!(drain(&mut c)[..], [Packet::Connect(_)]));
        c.handle_packet(
            now,
            Packet::ConnAck(ConnAck::new(ReasonCode::SUCCESS, present)),
        )
        .unwrap();
        let wire = drain(&mut c);
        let pubrel = wire.contains(&Packet::PubRel(PubAck::new(two)));
        assert_eq!(pubrel, present, "{wire:?}");
        let again: Vec<&Publish> = wire
            .iter()
            .filter_map(|p| match p {
                Packet::Publish(m) => Some(m),
                _ => None,
            })
            .collect();
        assert_eq!(again.len(), 1, "{wire:?}");
        assert_eq!(&again[0].payload[..], b"one");
        assert_eq!(again[0].dup, present, "DUP only on the resumed session");
        if present {
            assert_eq!(again[0].qos.packet_id(), Some(one));
        }
        c.handle_packet(now, Packet::PubRel(PubAck::new(pid(7))))
            .unwrap();
        let want = if present {
            ReasonCode::SUCCESS
        } else {
            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
        };
        match &drain(&mut c)[..] {
            [Packet::PubComp(a)] => assert_eq!(a.reason_code, want, "present {present}"),
            other => panic!("{other:?}"),
        }
    }
}

// ------------------------------------------------------------ 5.0 fitting the receiver's Maximum Packet Size

/// What [`Connection::disconnect`] sends, from `role`, with the peer
/// accepting at most 64 bytes.
fn disconnect_sent(from_client: bool, reason_code: ReasonCode, props: Properties) -> Packet {
    let mut small = Config::default();
    small.maximum_packet_size = 64;
    let (client_cfg, server_cfg) = if from_client {
        (Config::default(), small)
    } else {
        (small, Config::default())
    };
    let (mut pair, _, _) = open(V5, client_cfg, server_cfg, |_| {}, |_, _| {});
    let now = pair.now;
    let side = if from_client {
        &mut pair.client
    } else {
        &mut pair.server
    };
    side.disconnect(now, reason_code, props).unwrap();
    let mut wire = drain(side);
    assert_eq!(wire.len(), 1, "{wire:?}");
    wire.remove(0)
}

/// A DISCONNECT whose Reason String or User Properties would take it past
/// the receiver's Maximum Packet Size goes without them (reason code
/// kept), from either side; small enough, they are sent. Checks 5.0:
/// [MQTT-3.14.2-3], [MQTT-3.14.2-4].
#[test]
fn disconnect_leaves_out_what_would_not_fit_mqtt_3_14_2_3_and_4() {
    for from_client in [true, false] {
        let rc = if from_client {
            ReasonCode::UNSPECIFIED_ERROR
        } else {
            ReasonCode::SERVER_SHUTTING_DOWN
        };
        // Too long a reason string.
        let mut props = Properties::new();
        props.set_reason_string(Some(long_string(100)));
        let p = disconnect_sent(from_client, rc, props);
        assert!(size(&p, V5) <= 64);
        let Packet::Disconnect(d) = p else { panic!() };
        assert_eq!(d.reason_code, rc);
        assert!(d.properties.reason_string().is_none());
        // Too many user properties.
        let mut props = Properties::new();
        user_properties(&mut props, 5);
        let p = disconnect_sent(from_client, rc, props);
        assert!(size(&p, V5) <= 64);
        let Packet::Disconnect(d) = p else { panic!() };
        assert_eq!(d.reason_code, rc);
        assert_eq!(d.properties.user_properties().len(), 0);
        // Positive control: both fit, both go.
        let mut props = Properties::new();
        props.set_reason_string(Some(MqttString::from_static("bye")));
        user_properties(&mut props, 1);
        let p = disconnect_sent(from_client, rc, props);
        assert!(size(&p, V5) <= 64);
        let Packet::Disconnect(d) = p else { panic!() };
        assert_eq!(d.reason_code, rc);
        assert_eq!(d.properties.reason_string().as_deref(), Some("bye"));
        assert_eq!(d.properties.user_properties().len(), 1);
    }
}

/// What [`Connection::auth`] sends with the peer accepting at most 64
/// bytes: the client re-authenticating after the CONNACK, or the server
/// challenging before it. `Err` if it refused to send.
fn auth_sent(from_client: bool, mut props: Properties) -> Result<Auth, SendError> {
    let mut small = Config::default();
    small.maximum_packet_size = 64;
    props.set_authentication_method(Some(MqttString::from_static("M")));
    if from_client {
        let (mut pair, _, _) = open(
            V5,
            Config::default(),
            small,
            |c| c.properties = method("M"),
            |_, _| {},
        );
        let now = pair.now;
        let sent = pair.client.auth(
            now,
            Auth {
                reason_code: ReasonCode::RE_AUTHENTICATE,
                properties: props,
            },
        );
        if let Err(e) = sent {
            assert!(drain(&mut pair.client).is_empty(), "refused: nothing sent");
            return Err(e);
        }
        let wire = drain(&mut pair.client);
        let [Packet::Auth(a)] = &wire[..] else {
            panic!("{wire:?}")
        };
        assert!(size(&wire[0], V5) <= 64);
        // The server takes it as the re-authentication it is.
        pair.server.handle_packet(now, wire[0].clone()).unwrap();
        assert!(matches!(pair.server.poll_event(), Some(Event::Auth(_))));
        Ok(a.clone())
    } else {
        let now = Instant::now();
        let mut c = connect(V5, "client-1");
        c.properties = method("M");
        let mut client = Connection::client(small, c, SessionState::new(), now).unwrap();
        let mut server = Connection::server(Config::default(), now);
        server
            .handle_packet(now, client.poll_transmit().unwrap())
            .unwrap();
        assert!(matches!(
            server.poll_event(),
            Some(Event::ConnectRequest(_))
        ));
        let sent = server.auth(
            now,
            Auth {
                reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
                properties: props,
            },
        );
        if let Err(e) = sent {
            assert!(drain(&mut server).is_empty(), "refused: nothing sent");
            return Err(e);
        }
        let wire = drain(&mut server);
        let [Packet::Auth(a)] = &wire[..] else {
            panic!("{wire:?}")
        };
        assert!(size(&wire[0], V5) <= 64);
        client.handle_packet(now, wire[0].clone()).unwrap();
        assert!(matches!(client.poll_event(), Some(Event::Auth(_))));
        Ok(a.clone())
    }
}

/// An AUTH whose Reason String or User Properties would take it past the
/// receiver's Maximum Packet Size goes without them (method kept), from
/// either side; small enough, they are sent. An AUTH too large even
/// without them is not sent at all. Checks 5.0: [MQTT-3.15.2-2],
/// [MQTT-3.15.2-3], [MQTT-3.2.2-15].
#[test]
fn auth_leaves_out_what_would_not_fit_mqtt_3_15_2_2_and_3() {
    for from_client in [true, false] {
        let mut props = Properties::new();
        props.set_reason_string(Some(long_string(100)));
        let a = auth_sent(from_client, props).unwrap();
        assert_eq!(a.properties.authentication_method().as_deref(), Some("M"));
        assert!(a.properties.reason_string().is_none());

        let mut props = Properties::new();
        user_properties(&mut props, 5);
        let a = auth_sent(from_client, props).unwrap();
        assert_eq!(a.properties.authentication_method().as_deref(), Some("M"));
        assert_eq!(a.properties.user_properties().len(), 0);

        // Positive control: both fit, both go.
        let mut props = Properties::new();
        props.set_reason_string(Some(MqttString::from_static("why")));
        user_properties(&mut props, 1);
        let a = auth_sent(from_client, props).unwrap();
        assert_eq!(a.properties.reason_string().as_deref(), Some("why"));
        assert_eq!(a.properties.user_properties().len(), 1);

        // Authentication Data alone too large: refused, nothing sent.
        let mut props = Properties::new();
        props.set_authentication_data(Some(Bytes::from(vec![0u8; 100])));
        assert!(matches!(
            auth_sent(from_client, props),
            Err(SendError::PacketTooLarge { max: 64, .. })
        ));
    }
}

/// What a server sends as `reply` with the client accepting at most 64
/// bytes ("connack", "refusal", "suback" or "unsuback"), `props` on it.
fn server_reply_sent(reply: &str, props: Properties) -> (Packet, ReasonCode) {
    let now = Instant::now();
    let mut server = Connection::server(Config::default(), now);
    let mut c = connect(V5, "client-1");
    c.properties
        .set_maximum_packet_size(std::num::NonZeroU32::new(64));
    server
        .handle_packet(now, Packet::Connect(Box::new(c)))
        .unwrap();
    let code = match reply {
        "refusal" => {
            server
                .reject(now, ReasonCode::NOT_AUTHORIZED, props)
                .unwrap();
            ReasonCode::NOT_AUTHORIZED
        }
        _ if reply == "connack" => {
            let accept = Accept {
                properties: props,
                ..Accept::default()
            };
            server.accept(now, accept).unwrap();
            ReasonCode::SUCCESS
        }
        _ => {
            server.accept(now, Accept::default()).unwrap();
            drain(&mut server);
            if reply == "suback" {
                let suback = petrel_codec::SubAck {
                    packet_id: pid(5),
                    properties: props,
                    reason_codes: vec![ReasonCode::GRANTED_QOS_1],
                };
                server.suback(now, suback).unwrap();
                ReasonCode::GRANTED_QOS_1
            } else {
                let unsuback = petrel_codec::UnsubAck {
                    packet_id: pid(5),
                    properties: props,
                    reason_codes: vec![ReasonCode::SUCCESS],
                };
                server.unsuback(now, unsuback).unwrap();
                ReasonCode::SUCCESS
            }
        }
    };
    let mut wire = drain(&mut server);
    assert_eq!(wire.len(), 1, "{wire:?}");
    (wire.remove(0), code)
}

/// A CONNACK (accepting or refusing), SUBACK or UNSUBACK whose Reason
/// String or User Properties would take it past the client's Maximum
/// Packet Size goes without them, its reason codes kept; small enough,
/// they are sent (the control). Checks 5.0: [MQTT-3.2.2-19],
/// [MQTT-3.2.2-20], [MQTT-3.9.2-1], [MQTT-3.9.2-2], [MQTT-3.11.2-1],
/// [MQTT-3.11.2-2].
#[test]
fn server_replies_leave_out_what_would_not_fit() {
    let props_of = |p: &Packet| -> (ReasonCode, Properties) {
        match p {
            Packet::ConnAck(a) => (a.reason_code, a.properties.clone()),
            Packet::SubAck(a) => (a.reason_codes[0], a.properties.clone()),
            Packet::UnsubAck(a) => (a.reason_codes[0], a.properties.clone()),
            other => panic!("{other:?}"),
        }
    };
    for reply in ["connack", "refusal", "suback", "unsuback"] {
        let mut long = Properties::new();
        long.set_reason_string(Some(long_string(100)));
        let mut many = Properties::new();
        user_properties(&mut many, 5);
        for props in [long, many] {
            let (p, code) = server_reply_sent(reply, props);
            assert!(size(&p, V5) <= 64, "{reply}: {p:?}");
            let (got, props) = props_of(&p);
            assert_eq!(got, code, "{reply}");
            assert!(props.reason_string().is_none(), "{reply}");
            assert_eq!(props.user_properties().len(), 0, "{reply}");
        }
        let mut fits = Properties::new();
        fits.set_reason_string(Some(MqttString::from_static("ok")));
        user_properties(&mut fits, 1);
        let (p, _) = server_reply_sent(reply, fits);
        let (_, props) = props_of(&p);
        assert_eq!(props.reason_string().as_deref(), Some("ok"), "{reply}");
        assert_eq!(props.user_properties().len(), 1, "{reply}");
    }
}

/// A server with manual acknowledgements, speaking `protocol`, that has
/// received a QoS `qos` PUBLISH with packet identifier 3 from a client
/// accepting at most 32 bytes.
fn awaiting_ack(protocol: Protocol, qos: QoS) -> (Connection, Instant) {
    let now = Instant::now();
    let mut cfg = Config::default();
    cfg.manual_acks = true;
    let mut server = Connection::server(cfg, now);
    let mut c = connect(protocol, "client-1");
    if protocol == V5 {
        c.properties
            .set_maximum_packet_size(std::num::NonZeroU32::new(32));
    }
    server
        .handle_packet(now, Packet::Connect(Box::new(c)))
        .unwrap();
    server.accept(now, Accept::default()).unwrap();
    drain(&mut server);
    server
        .handle_packet(now, publish("t", "x", qos, Some(3)))
        .unwrap();
    (server, now)
}

/// What a 5.0 server with manual acknowledgements sends for a QoS `qos`
/// PUBLISH when it acknowledges it with `props`, the client accepting at
/// most 32 bytes; `Err` if it refused to send.
fn ack_sent(qos: QoS, props: Properties) -> Result<PubAck, SendError> {
    let (mut server, now) = awaiting_ack(V5, qos);
    let sent = server.ack_with_properties(now, pid(3), ReasonCode::NOT_AUTHORIZED, props);
    let wire = drain(&mut server);
    sent?;
    match &wire[..] {
        [Packet::PubAck(a)] if qos == QoS::AtLeastOnce => Ok(a.clone()),
        [Packet::PubRec(a)] if qos == QoS::ExactlyOnce => Ok(a.clone()),
        other => panic!("{other:?}"),
    }
}

/// A PUBACK or PUBREC whose Reason String or User Properties would take it
/// past the client's Maximum Packet Size goes without them, its reason
/// code kept; small enough, they go (the control). Checks 5.0:
/// [MQTT-3.4.2-2], [MQTT-3.4.2-3], [MQTT-3.5.2-2], [MQTT-3.5.2-3].
#[test]
fn acknowledgements_leave_out_what_would_not_fit() {
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let mut long = Properties::new();
        long.set_reason_string(Some(long_string(40)));
        let mut many = Properties::new();
        user_properties(&mut many, 2);
        for props in [long, many] {
            let a = ack_sent(qos, props).unwrap();
            assert!(size(&Packet::PubAck(a.clone()), V5) <= 32, "{a:?}");
            assert_eq!(a.reason_code, ReasonCode::NOT_AUTHORIZED);
            assert!(a.properties.reason_string().is_none(), "{qos:?}");
            assert_eq!(a.properties.user_properties().len(), 0, "{qos:?}");
        }
        let mut fits = Properties::new();
        fits.set_reason_string(Some(MqttString::from_static("no")));
        let a = ack_sent(qos, fits).unwrap();
        assert_eq!(a.properties.reason_string().as_deref(), Some("no"));
        let mut one = Properties::new();
        user_properties(&mut one, 1);
        let a = ack_sent(qos, one).unwrap();
        assert_eq!(a.properties.user_properties().len(), 1, "{qos:?}");
    }
}

/// An acknowledgement with a property it cannot carry is refused, in
/// either version, and nothing changes: the message is still there to be
/// acknowledged, and a plain acknowledgement then goes out.
#[test]
fn a_refused_acknowledgement_leaves_the_message_to_acknowledge() {
    for protocol in [V311, V5] {
        for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let (mut server, now) = awaiting_ack(protocol, qos);
            let mut wrong = Properties::new();
            wrong.set_content_type(Some(MqttString::from_static("text/plain")));
            let r = server.ack_with_properties(now, pid(3), ReasonCode::SUCCESS, wrong);
            assert!(r.is_err(), "{protocol:?} {qos:?}");
            assert!(drain(&mut server).is_empty());
            server.ack(now, pid(3)).unwrap();
            assert_eq!(
                drain(&mut server).iter().map(ack).collect::<Vec<_>>(),
                [(
                    if qos == QoS::AtLeastOnce {
                        "PUBACK"
                    } else {
                        "PUBREC"
                    },
                    3
                )],
                "{protocol:?}"
            );
        }
    }
}

/// AUTH reason codes belong to a side (3.15.2.1): 0x19 Re-authenticate
/// only a client sends, 0x00 Success only a server. Sending the other
/// side's code is refused with nothing sent; receiving it closes the
/// connection with DISCONNECT 0x82. The controls: each side's own codes
/// are sent and taken.
#[test]
fn auth_reason_codes_belong_to_a_side() {
    let auth = |reason_code| Auth {
        reason_code,
        properties: method("M"),
    };
    let opened = || {
        open(
            V5,
            Config::default(),
            Config::default(),
            |c| c.properties = method("M"),
            |_, _| {},
        )
        .0
    };
    let mut pair = opened();
    let now = pair.now;
    assert!(pair
        .server
        .auth(now, auth(ReasonCode::RE_AUTHENTICATE))
        .is_err());
    assert!(pair.client.auth(now, auth(ReasonCode::SUCCESS)).is_err());
    assert!(drain(&mut pair.server).is_empty() && drain(&mut pair.client).is_empty());
    pair.client
        .auth(now, auth(ReasonCode::RE_AUTHENTICATE))
        .unwrap();
    pair.server.auth(now, auth(ReasonCode::SUCCESS)).unwrap();
    assert_eq!(drain(&mut pair.client).len(), 1);
    assert_eq!(drain(&mut pair.server).len(), 1);
    pair.server
        .handle_packet(now, Packet::Auth(auth(ReasonCode::RE_AUTHENTICATE)))
        .unwrap();
    pair.client
        .handle_packet(now, Packet::Auth(auth(ReasonCode::SUCCESS)))
        .unwrap();
    for (mut pair, to_client) in [(opened(), true), (opened(), false)] {
        let now = pair.now;
        let (side, wrong) = if to_client {
            (&mut pair.client, ReasonCode::RE_AUTHENTICATE)
        } else {
            (&mut pair.server, ReasonCode::SUCCESS)
        };
        let r = side.handle_packet(now, Packet::Auth(auth(wrong)));
        assert_eq!(r, Err(ProtocolError::AuthReasonFromWrongSide(wrong)));
        match &drain(side)[..] {
            [Packet::Disconnect(d)] => assert_eq!(d.reason_code, ReasonCode::PROTOCOL_ERROR),
            other => panic!("{other:?}"),
        }
        assert!(side.is_closed());
    }
}

/// A PUBREL or PUBCOMP 0x92 (Packet Identifier not found) says so in a
/// Reason String where the peer has room; where it would pass the peer's
/// Maximum Packet Size (40 bytes) the Reason String is left out and the
/// reason code kept. Checks 5.0: [MQTT-3.6.2-2], [MQTT-3.7.2-2].
#[test]
fn unknown_identifiers_are_said_in_words_only_where_they_fit() {
    for small in [false, true] {
        let mut tight = Config::default();
        if small {
            tight.maximum_packet_size = 40;
        }
        // PUBREC for an identifier the client never used: PUBREL 0x92.
        let (mut pair, _, _) = open(V5, Config::default(), tight.clone(), |_| {}, |_, _| {});
        let now = pair.now;
        pair.client
            .handle_packet(now, Packet::PubRec(PubAck::new(pid(7))))
            .unwrap();
        // PUBREL for an identifier the server holds nothing under: PUBCOMP 0x92.
        let (mut other, _, _) = open(V5, tight, Config::default(), |_| {}, |_, _| {});
        other
            .server
            .handle_packet(now, Packet::PubRel(PubAck::new(pid(8))))
            .unwrap();
        let sent = [
            drain(&mut pair.client).pop(),
            drain(&mut other.server).pop(),
        ];
        for p in sent {
            let (Some(Packet::PubRel(a)) | Some(Packet::PubComp(a))) = p.clone() else {
                panic!("{p:?}")
            };
            assert_eq!(a.reason_code, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND);
            assert_eq!(a.properties.reason_string().is_none(), small, "{p:?}");
            if small {
                assert!(size(&p.unwrap(), V5) <= 40);
            }
        }
    }
}
