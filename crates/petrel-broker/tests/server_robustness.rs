//! Bad input over a socket closes that connection with the right reason and
//! leaves every other client served; limits hold; slow subscribers never
//! stall publishers; shutdown is graceful.

mod support;

use std::time::Duration;

use bytes::BytesMut;
use petrel_codec::{Connect, MqttString, Packet, Protocol, QoS, ReasonCode};
use support::*;
use tokio::io::AsyncReadExt;

const BOTH: [Protocol; 2] = [Protocol::V3_1_1, Protocol::V5];

/// Connect, send `bytes`, and return the DISCONNECT the broker sent before
/// closing (5.0) or `None` (3.1.1, which has none) — after checking that a
/// bystander connected the whole time is still served.
async fn send_bad(addr: std::net::SocketAddr, proto: Protocol, bytes: &[u8]) -> Option<ReasonCode> {
    let mut bystander = Raw::connect(addr, Protocol::V5, &format!("by-{}", bytes.len())).await;
    bystander.subscribe("by/t", QoS::AtLeastOnce).await;
    let mut c = Raw::connect(addr, proto, "bad").await;
    c.send_bytes(bytes).await;
    let d = c.closed().await.map(|d| d.reason_code);
    bystander
        .publish("by/t", b"alive", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(&bystander.recv_publish().await.payload[..], b"alive");
    still_serving(addr).await;
    d
}

#[tokio::test]
async fn a_remaining_length_over_four_bytes_is_malformed_mqtt_1_5_5() {
    let b = start().await;
    let bad = [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
    assert_eq!(send_bad(b.addr, Protocol::V3_1_1, &bad).await, None);
    assert_eq!(
        send_bad(b.addr, Protocol::V5, &bad).await,
        Some(ReasonCode::MALFORMED_PACKET)
    );
}

/// Checks [MQTT-2.1.3-1].
#[tokio::test]
async fn reserved_flag_bits_are_malformed_mqtt_2_1_3_1() {
    let b = start().await;
    // SUBSCRIBE must have flags 0010 ([MQTT-3.8.1-1]); these have 0000.
    let v311 = [0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00];
    assert_eq!(send_bad(b.addr, Protocol::V3_1_1, &v311).await, None);
    let v5 = [0x80, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x00];
    assert_eq!(
        send_bad(b.addr, Protocol::V5, &v5).await,
        Some(ReasonCode::MALFORMED_PACKET)
    );
}

/// Checks [MQTT-1.5.4-1].
#[tokio::test]
async fn invalid_utf8_in_a_topic_closes_the_connection_mqtt_1_5_4_1() {
    let b = start().await;
    let v311 = [0x30, 0x05, 0x00, 0x02, 0xC3, 0x28, b'x'];
    assert_eq!(send_bad(b.addr, Protocol::V3_1_1, &v311).await, None);
    let v5 = [0x30, 0x06, 0x00, 0x02, 0xC3, 0x28, 0x00, b'x'];
    let rc = send_bad(b.addr, Protocol::V5, &v5).await.unwrap();
    assert_eq!(rc, ReasonCode::MALFORMED_PACKET);
}

/// Checks [MQTT-3.1.0-2]; 5.0: [MQTT-3.2.0-2] (the second CONNECT gets no
/// second CONNACK: `closed()` fails on any packet but DISCONNECT).
#[tokio::test]
async fn a_second_connect_is_a_protocol_error_mqtt_3_1_0_2() {
    let b = start().await;
    for proto in BOTH {
        let mut again = BytesMut::new();
        Packet::Connect(Box::new(Connect::new(
            proto,
            MqttString::from_static("bad"),
        )))
        .encode(proto, &mut again)
        .unwrap();
        let rc = send_bad(b.addr, proto, &again).await;
        let want = proto.is_v5().then_some(ReasonCode::PROTOCOL_ERROR);
        assert_eq!(rc, want);
    }
}

#[tokio::test]
async fn a_packet_over_the_maximum_size_is_refused_from_its_header() {
    let mut config = config();
    config.limits.max_packet_size = 4096;
    let b = start_with(config).await;
    // Only the fixed header of a 1 MB PUBLISH is sent: refused before the body.
    let header = [0x30, 0x80, 0x80, 0x40];
    assert_eq!(send_bad(b.addr, Protocol::V3_1_1, &header).await, None);
    assert_eq!(
        send_bad(b.addr, Protocol::V5, &header).await,
        Some(ReasonCode::PACKET_TOO_LARGE)
    );
}

/// A PUBLISH before CONNECT: the connection is closed ([MQTT-4.13.1-1 (5.0)])
/// with no DISCONNECT before a CONNACK ([MQTT-3.14.0-1 (5.0)]).
#[tokio::test]
async fn publish_before_connect_closes_without_an_answer() {
    let b = start().await;
    let mut c = Raw::open(b.addr, Protocol::V5).await;
    c.send_bytes(&[0x30, 0x04, 0x00, 0x01, b'a', b'x']).await;
    assert!(c.closed().await.is_none());
    still_serving(b.addr).await;
}

/// Checks [MQTT-3.1.2-2].
#[tokio::test]
async fn an_unsupported_protocol_level_is_refused_with_connack_mqtt_3_1_2_2() {
    let b = start().await;
    let mut c = Raw::open(b.addr, Protocol::V3_1_1).await;
    // CONNECT "MQTT" level 6.
    c.send_bytes(&[
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x06, 0x02, 0x00, 0x3C, 0x00, 0x01, b'c',
    ])
    .await;
    match c.recv().await {
        // 3.1.1 return code 1 (unacceptable protocol version).
        Some(Packet::ConnAck(a)) => {
            assert_eq!(a.reason_code, ReasonCode::UNSUPPORTED_PROTOCOL_VERSION)
        }
        other => panic!("{other:?}"),
    }
    assert!(c.closed().await.is_none());
}

#[tokio::test]
async fn a_connect_that_never_finishes_is_closed_after_the_connect_timeout() {
    let mut config = config();
    config.limits.connect_timeout = 1;
    let b = start_with(config).await;
    let mut c = Raw::open(b.addr, Protocol::V5).await;
    c.send_bytes(&[0x10, 0x20, 0x00, 0x04, b'M']).await;
    let started = std::time::Instant::now();
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), c.stream.read(&mut byte))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() >= Duration::from_millis(800));
    // A silent connection that sends nothing at all is closed too.
    let mut idle = Raw::open(b.addr, Protocol::V5).await;
    let n = tokio::time::timeout(Duration::from_secs(5), idle.stream.read(&mut byte))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0);
    still_serving(b.addr).await;
}

#[tokio::test]
async fn connections_past_max_connections_are_closed_and_counted() {
    let mut config = config();
    config.limits.max_connections = 2;
    let b = start_with(config).await;
    let _a = Raw::connect(b.addr, Protocol::V5, "a").await;
    let _b = Raw::connect(b.addr, Protocol::V5, "b").await;
    let mut c = Raw::open(b.addr, Protocol::V5).await;
    assert!(c.closed().await.is_none());
    assert_eq!(b.broker.stats().connections_refused, 1);
}

#[tokio::test]
async fn a_slow_subscriber_never_stalls_the_publisher_or_other_subscribers() {
    let mut config = config();
    config.limits.max_queued_messages = 2000;
    let b = start_with(config).await;
    // A subscriber that never reads.
    let mut slow = Raw::connect(b.addr, Protocol::V3_1_1, "slow").await;
    slow.subscribe("load/t", QoS::AtMostOnce).await;
    let mut slow1 = Raw::connect(b.addr, Protocol::V5, "slow1").await;
    slow1.subscribe("load/t", QoS::AtLeastOnce).await;
    // A subscriber that keeps up, reading in its own task.
    let mut fast = Raw::connect(b.addr, Protocol::V5, "fast").await;
    fast.subscribe("load/t", QoS::AtLeastOnce).await;
    const N: usize = 10_000;
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < N {
            let p = fast.recv_publish().await;
            assert_eq!(p.payload.len(), 1024);
            n += 1;
        }
        n
    });
    let mut publ = Raw::connect(b.addr, Protocol::V5, "pub").await;
    let payload = vec![b'p'; 1024];
    for _ in 0..N {
        // Each PUBACK comes back whatever the slow subscribers do.
        publ.publish("load/t", &payload, QoS::AtLeastOnce, false)
            .await;
    }
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(20), reader)
            .await
            .unwrap()
            .unwrap(),
        N
    );
    let stats = b.broker.stats();
    // The slow ones lost what did not fit: QoS 0 and QoS 1 past their bound.
    assert!(stats.dropped_qos0 > 0, "{stats:?}");
    assert!(stats.dropped_queue_full > 0, "{stats:?}");
    drop((slow, slow1));
    still_serving(b.addr).await;
}

#[tokio::test]
async fn shutdown_tells_5_0_clients_and_stops_the_server() {
    let b = start().await;
    let mut v5 = Raw::connect(b.addr, Protocol::V5, "v5").await;
    let mut v3 = Raw::connect(b.addr, Protocol::V3_1_1, "v3").await;
    b.broker.shutdown();
    assert_eq!(
        v5.closed().await.unwrap().reason_code,
        ReasonCode::SERVER_SHUTTING_DOWN
    );
    assert!(v3.closed().await.is_none());
    tokio::time::timeout(Duration::from_secs(6), b.task)
        .await
        .expect("run returns")
        .unwrap();
    assert!(tokio::net::TcpStream::connect(b.addr).await.is_err());
}

#[tokio::test]
async fn shutdown_reaches_connections_after_the_servers_future_is_gone() {
    let b = start().await;
    let mut v5 = Raw::connect(b.addr, Protocol::V5, "v5").await;
    // An embedder drops the server's future; its connections live on in
    // tasks of their own.
    b.task.abort();
    assert!(b.task.await.unwrap_err().is_cancelled());
    // Control: the connection is still served.
    let ack = v5.subscribe("a/b", QoS::AtLeastOnce).await;
    assert_eq!(ack.reason_codes, vec![ReasonCode::GRANTED_QOS_1]);
    b.broker.shutdown();
    let closed = tokio::time::timeout(Duration::from_secs(5), v5.closed())
        .await
        .expect("told within 5 s");
    assert_eq!(
        closed.unwrap().reason_code,
        ReasonCode::SERVER_SHUTTING_DOWN
    );
}

#[tokio::test]
async fn topics_deeper_than_max_topic_levels_are_refused() {
    let mut config = config();
    config.limits.max_topic_levels = 8;
    let b = start_with(config).await;
    let deep = "a/".repeat(8) + "z";
    let mut c = Raw::connect(b.addr, Protocol::V5, "deep").await;
    let ack = c.subscribe(&deep, QoS::AtLeastOnce).await;
    assert_eq!(ack.reason_codes, vec![ReasonCode::TOPIC_FILTER_INVALID]);
    let ack = c.subscribe("a/b/c", QoS::AtLeastOnce).await;
    assert_eq!(ack.reason_codes, vec![ReasonCode::GRANTED_QOS_1]);
    let mut p = petrel_codec::Publish::new(topic(&deep), bytes::Bytes::from_static(b"x"));
    p.qos = petrel_codec::QosPid::AtLeastOnce(pid(1));
    c.send(Packet::Publish(p)).await;
    // Refused before any PUBACK.
    match c.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::TOPIC_NAME_INVALID),
        other => panic!("{other:?}"),
    }
    // A will that deep is refused at CONNECT.
    let (_c, ack) = Raw::connect_with(b.addr, Protocol::V5, "deepwill", |c| {
        c.will = Some(petrel_codec::Will {
            topic: topic(&deep),
            payload: bytes::Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: petrel_codec::Properties::new(),
        });
    })
    .await;
    assert_eq!(ack.reason_code, ReasonCode::TOPIC_NAME_INVALID);
    still_serving(b.addr).await;
}

#[tokio::test]
async fn no_client_writes_into_sys_not_even_through_a_will() {
    let b = start().await;
    let (_c, ack) = Raw::connect_with(b.addr, Protocol::V5, "forger", |c| {
        c.will = Some(petrel_codec::Will {
            topic: topic("$SYS/broker/version"),
            payload: bytes::Bytes::from_static(b"forged"),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: petrel_codec::Properties::new(),
        });
    })
    .await;
    assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
}

/// At `max_sessions`, a new session ends the one offline longest (its
/// will published, counted) instead of refusing everyone new; only when
/// every session is connected is the newcomer refused.
#[tokio::test]
async fn max_sessions_evicts_the_longest_offline_session_and_refuses_only_when_all_are_connected() {
    let mut config = config();
    config.limits.max_sessions = 3;
    let b = start_with(config).await;
    let keep = |c: &mut Connect| {
        c.clean_start = false;
        c.properties.set_session_expiry_interval(Some(300));
    };
    let mut watch = Raw::connect(b.addr, Protocol::V5, "watch").await;
    watch.subscribe("evicted/+", QoS::AtLeastOnce).await;
    // s1 offline first, with a will delayed past its session's end.
    let (c, _) = Raw::connect_with(b.addr, Protocol::V5, "s1", |c| {
        keep(c);
        let mut props = petrel_codec::Properties::new();
        props.set_will_delay_interval(Some(600));
        c.will = Some(petrel_codec::Will {
            topic: topic("evicted/s1"),
            payload: bytes::Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: props,
        });
    })
    .await;
    drop(c); // a lost connection: the will waits for its delay
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (c, _) = Raw::connect_with(b.addr, Protocol::V5, "s2", keep).await;
    c.disconnect().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Full (watch, s1, s2): s3 ends s1, the longest offline.
    let (_s3, ack) = Raw::connect_with(b.addr, Protocol::V5, "s3", keep).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert_eq!(&watch.recv_publish().await.payload[..], b"gone");
    assert_eq!(b.broker.stats().sessions_evicted, 1);
    // s2 is still there (the positive control)...
    let (_s2, ack) = Raw::connect_with(b.addr, Protocol::V5, "s2", keep).await;
    assert!(ack.session_present);
    // ...and with every session connected (watch, s2, s3), a fourth is
    // refused.
    let (_c, ack) = Raw::connect_with(b.addr, Protocol::V5, "s4", keep).await;
    assert_eq!(ack.reason_code, ReasonCode::QUOTA_EXCEEDED);
    assert_eq!(b.broker.stats().sessions_evicted, 1);
}

/// Client identifiers past `max_client_id_length` (256 by default) are
/// refused: a session's id is a key the broker keeps, not a payload.
#[tokio::test]
async fn long_client_ids_are_refused_by_default() {
    let b = start().await;
    let (_c, ack) = Raw::connect_with(b.addr, Protocol::V5, &"x".repeat(256), |_| {}).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let (_c, ack) = Raw::connect_with(b.addr, Protocol::V5, &"x".repeat(257), |_| {}).await;
    assert_eq!(ack.reason_code, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
}

#[tokio::test]
async fn the_retained_store_is_bounded_in_bytes() {
    let mut config = config();
    config.limits.max_retained_bytes = 3000;
    let b = start_with(config).await;
    let mut c = Raw::connect(b.addr, Protocol::V5, "r").await;
    c.publish("rb/1", &[1; 1000], QoS::AtLeastOnce, true).await;
    c.publish("rb/2", &[2; 1000], QoS::AtLeastOnce, true).await;
    c.publish("rb/3", &[3; 1000], QoS::AtLeastOnce, true).await;
    assert_eq!(b.broker.stats().retained, 2);
    // Replacing within the bound works, deleting frees room.
    c.publish("rb/1", b"", QoS::AtLeastOnce, true).await;
    c.publish("rb/3", &[3; 1000], QoS::AtLeastOnce, true).await;
    assert_eq!(b.broker.stats().retained, 2);
}

/// A DISCONNECT with an error reason code still publishes the will (only
/// 0x00 discards it).
#[tokio::test]
async fn a_disconnect_with_an_error_reason_still_publishes_the_will() {
    let b = start().await;
    let mut w = Raw::connect(b.addr, Protocol::V5, "watch").await;
    w.subscribe("err/will", QoS::AtLeastOnce).await;
    let (mut c, _) = Raw::connect_with(b.addr, Protocol::V5, "errs", |c| {
        c.will = Some(petrel_codec::Will {
            topic: topic("err/will"),
            payload: bytes::Bytes::from_static(b"w"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: petrel_codec::Properties::new(),
        });
    })
    .await;
    c.send(Packet::Disconnect(petrel_codec::Disconnect::new(
        ReasonCode::UNSPECIFIED_ERROR,
    )))
    .await;
    assert_eq!(&w.recv_publish().await.payload[..], b"w");
}

/// A 5.0 client past Receive Maximum with QoS 2 that goes on writing (it
/// answers each PUBREC with a PUBREL, as real clients do) still reads the
/// DISCONNECT 0x93: the broker half-closes and drains what the client
/// sends, rather than closing on unread data (which the kernel answers
/// with a reset that can destroy the DISCONNECT before it is read).
#[tokio::test]
async fn a_client_past_receive_maximum_reads_the_0x93_while_it_keeps_writing() {
    use petrel_codec::{Limits, PacketId, PubAck, Publish, QosPid, TopicName};
    use tokio::io::AsyncWriteExt;
    let mut config = config();
    config.limits.receive_maximum = 2;
    let b = start_with(config).await;
    let stream = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let encode = |p: Packet| {
        let mut buf = BytesMut::new();
        p.encode(Protocol::V5, &mut buf).unwrap();
        buf
    };
    wr.write_all(&encode(Packet::Connect(Box::new(Connect::new(
        Protocol::V5,
        MqttString::from_static("past-rm"),
    )))))
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PacketId>();
    // The writer: QoS 2 PUBLISHes without waiting, a PUBREL for every
    // PUBREC, and on for a while after the broker's DISCONNECT. A write
    // that fails (the broken pipe or reset of a broker closing on unread
    // data) ends it with the error: a real client would give up there,
    // without reading the reason.
    let writer = tokio::spawn(async move {
        for i in 1..=400u16 {
            let mut p = Publish::new(
                TopicName::try_from("rm/t").unwrap(),
                bytes::Bytes::from_static(b"x"),
            );
            p.qos = QosPid::from_parts(QoS::ExactlyOnce, PacketId::new(i)).unwrap();
            wr.write_all(&encode(Packet::Publish(p))).await?;
            while let Ok(id) = rx.try_recv() {
                wr.write_all(&encode(Packet::PubRel(PubAck::new(id))))
                    .await?;
            }
            // Bursts of 8: more than Receive Maximum is outstanding.
            if i % 8 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        Ok::<_, std::io::Error>(wr)
    });
    // The reader, at the same time: a PUBREL asked for each PUBREC.
    let reader = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        let mut reason = None;
        let limits = Limits::default();
        loop {
            match Packet::decode(&mut buf, Some(Protocol::V5), &limits) {
                Ok(Some(Packet::PubRec(a))) => {
                    let _ = tx.send(a.packet_id);
                }
                Ok(Some(Packet::Disconnect(d))) => reason = Some(d.reason_code),
                Ok(Some(_)) => {}
                Ok(None) => match rd.read_buf(&mut buf).await {
                    Ok(0) => return Ok(reason),
                    Err(e) => return Err(e),
                    Ok(_) => {}
                },
                Err(e) => panic!("undecodable from the broker: {e}"),
            }
        }
    });
    let written = writer.await.unwrap();
    assert!(written.is_ok(), "the client's writes failed: {written:?}");
    let reason = tokio::time::timeout(WAIT, reader)
        .await
        .expect("the broker closed in time")
        .unwrap();
    assert_eq!(reason.unwrap(), Some(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED));
    still_serving(b.addr).await;
}

/// A peer that sends half a packet and stops is closed after
/// `packet_timeout`, its buffer freed; one whose packet goes on arriving,
/// however slowly, is not.
#[tokio::test]
async fn a_packet_that_stops_arriving_half_way_closes_the_connection() {
    use petrel_codec::{PacketId, Publish, QosPid, TopicName};
    let mut config = config();
    config.limits.packet_timeout = 1;
    let b = start_with(config).await;
    let mut stalled = Raw::connect(b.addr, Protocol::V3_1_1, "stalled").await;
    // A PUBLISH header announcing 16 bytes, and nothing more.
    stalled.send_bytes(&[0x30, 0x10, 0x00]).await;
    let mut slow = Raw::connect(b.addr, Protocol::V3_1_1, "slow").await;
    let mut p = Publish::new(
        TopicName::try_from("slow/t").unwrap(),
        bytes::Bytes::from_static(b"payload"),
    );
    p.qos = QosPid::from_parts(QoS::AtLeastOnce, PacketId::new(1)).unwrap();
    let mut bytes = BytesMut::new();
    Packet::Publish(p)
        .encode(Protocol::V3_1_1, &mut bytes)
        .unwrap();
    let started = std::time::Instant::now();
    // The slow one: a byte every 300 ms, 2.7 s for the whole packet.
    for b in bytes.iter() {
        slow.send_bytes(&[*b]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    match slow.try_recv(WAIT).await {
        Some(Packet::PubAck(a)) => assert_eq!(a.packet_id, PacketId::new(1).unwrap()),
        other => panic!("the slow packet was not taken: {other:?}"),
    }
    assert!(started.elapsed() > Duration::from_secs(2));
    // The stalled one was closed meanwhile.
    let closed = tokio::time::timeout(Duration::from_millis(500), stalled.closed()).await;
    assert!(closed.is_ok(), "the stalled connection is still open");
    still_serving(b.addr).await;
}

/// A 3.1.1 client can't be told a Receive Maximum, but its QoS 2 messages
/// awaiting PUBREL are capped by the configured one all the same: past it,
/// the connection closes (3.1.1 has no DISCONNECT from the server). One
/// that releases them as it goes is served without end.
#[tokio::test]
async fn qos2_awaiting_pubrel_is_capped_for_3_1_1_too() {
    let mut config = config();
    config.limits.receive_maximum = 4;
    let b = start_with(config).await;
    // Positive control: 20 QoS 2 exchanges completed one by one.
    let mut good = Raw::connect(b.addr, Protocol::V3_1_1, "releases").await;
    for _ in 0..20 {
        good.publish("q2/t", b"x", QoS::ExactlyOnce, false).await;
    }
    // Four held open: accepted (a PUBREC each).
    let mut hoarder = Raw::connect(b.addr, Protocol::V3_1_1, "hoards").await;
    for i in 1..=4u16 {
        let mut p = petrel_codec::Publish::new(topic("q2/t"), bytes::Bytes::from_static(b"x"));
        p.qos = petrel_codec::QosPid::from_parts(QoS::ExactlyOnce, petrel_codec::PacketId::new(i))
            .unwrap();
        hoarder.send(Packet::Publish(p)).await;
        assert!(
            matches!(hoarder.recv().await, Some(Packet::PubRec(_))),
            "{i}"
        );
    }
    // The fifth: the connection closes, without a PUBREC.
    let mut p = petrel_codec::Publish::new(topic("q2/t"), bytes::Bytes::from_static(b"x"));
    p.qos =
        petrel_codec::QosPid::from_parts(QoS::ExactlyOnce, petrel_codec::PacketId::new(5)).unwrap();
    hoarder.send(Packet::Publish(p)).await;
    assert_eq!(
        tokio::time::timeout(WAIT, hoarder.recv()).await.unwrap(),
        None
    );
    still_serving(b.addr).await;
}

/// Sockets that never send CONNECT can't lock others out: one address may
/// hold `max_pending_per_address` of them, and once their CONNECTs are
/// done it may open more (here loopback is held to the limits, as a remote
/// address is by default).
#[tokio::test]
async fn unfinished_connects_from_one_address_are_capped() {
    let mut config = config();
    config.limits.limit_loopback = true;
    config.limits.max_pending_per_address = 2;
    config.limits.connection_rate = 0;
    let b = start_with(config).await;
    let silent1 = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    let silent2 = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The third is closed at once: it reads end of stream.
    let mut third = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(WAIT, third.read(&mut byte))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert_eq!(b.broker.stats().connections_throttled, 1);
    // The silent ones go: room again, and MQTT clients are served.
    drop((silent1, silent2));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _c1 = Raw::connect(b.addr, Protocol::V5, "after-1").await;
    let _c2 = Raw::connect(b.addr, Protocol::V5, "after-2").await;
    // Connected clients don't count as unfinished: a third is fine.
    let _c3 = Raw::connect(b.addr, Protocol::V5, "after-3").await;
    assert_eq!(b.broker.stats().connections_throttled, 1);
}

/// `max_publish_rate` slows a client down by not reading it, and drops
/// nothing: 30 QoS 1 messages at 10 a second (after a burst of 10) take
/// about two seconds, and every one is acknowledged and delivered. Without
/// the limit (the positive control) they take a moment.
#[tokio::test]
async fn the_publish_rate_limit_holds_a_client_back_and_loses_nothing() {
    async fn thirty(b: &TestBroker, id: &str) -> Duration {
        let mut sub = Raw::connect(b.addr, Protocol::V5, &format!("{id}-sub")).await;
        sub.subscribe(&format!("{id}/t"), QoS::AtLeastOnce).await;
        let mut publ = Raw::connect(b.addr, Protocol::V5, id).await;
        let started = std::time::Instant::now();
        for i in 0..30u32 {
            publ.publish(
                &format!("{id}/t"),
                &i.to_be_bytes(),
                QoS::AtLeastOnce,
                false,
            )
            .await
            .expect("acknowledged");
        }
        for i in 0..30u32 {
            let p = sub.recv_publish().await;
            assert_eq!(&p.payload[..], &i.to_be_bytes(), "in order, none lost");
        }
        started.elapsed()
    }
    let unlimited = start().await;
    let fast = thirty(&unlimited, "free").await;
    assert!(fast < Duration::from_millis(1000), "{fast:?}");
    let mut config = config();
    config.limits.max_publish_rate = 10;
    let limited = start_with(config).await;
    let slow = thirty(&limited, "held").await;
    assert!(slow >= Duration::from_millis(1800), "{slow:?}");
    assert!(slow < Duration::from_secs(4), "{slow:?}");
}

/// One SUBSCRIBE repeating a filter 100 times: a reason code each
/// ([MQTT-3.9.3-1]), but the retained messages once (they are looked up at
/// the filter's last occurrence only).
#[tokio::test]
async fn a_filter_repeated_in_one_subscribe_gets_its_retained_messages_once() {
    use petrel_codec::{Properties, Subscribe, Subscription, SubscriptionOptions};
    let b = start().await;
    let mut p = Raw::connect(b.addr, Protocol::V5, "retainer").await;
    for i in 0..3 {
        p.publish(&format!("dup/{i}"), b"r", QoS::AtLeastOnce, true)
            .await;
    }
    let mut c = Raw::connect(b.addr, Protocol::V5, "repeater").await;
    let filters = (0..100)
        .map(|_| Subscription {
            filter: filter("dup/#"),
            options: SubscriptionOptions::qos(QoS::AtMostOnce),
        })
        .collect();
    let packet_id = c.next_pid();
    c.send(Packet::Subscribe(Subscribe {
        packet_id,
        properties: Properties::new(),
        subscriptions: filters,
    }))
    .await;
    let mut retained = 0;
    loop {
        match c.try_recv(Duration::from_millis(300)).await {
            Some(Packet::SubAck(a)) => assert_eq!(a.reason_codes.len(), 100),
            Some(Packet::Publish(_)) => retained += 1,
            None => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(retained, 3);
}

/// Past `max_retained_backlog`, a new subscription's walk of the retained
/// messages stops: it gets what fits, and the rest is not looked at.
#[tokio::test]
async fn the_retained_walk_stops_at_the_backlog_bound() {
    let mut config = config();
    config.limits.max_retained_backlog = 5;
    let b = start_with(config).await;
    for i in 0..200 {
        b.broker.publish(
            topic(&format!("many/{i}")),
            bytes::Bytes::from_static(b"r"),
            QoS::AtMostOnce,
            true,
        );
    }
    let mut c = Raw::connect(b.addr, Protocol::V5, "walker").await;
    c.subscribe("many/#", QoS::AtMostOnce).await;
    let mut got = 0;
    while c.try_recv(Duration::from_millis(300)).await.is_some() {
        got += 1;
    }
    assert_eq!(got, 5);
    assert_eq!(b.broker.stats().dropped_queue_full, 1);
}

/// A new subscription's retained messages are taken a batch at a time as
/// they are sent, so the broker-wide `max_retained_backlog` bounds what is
/// held, not what one subscription gets: with room for 100, a subscriber
/// of 1,000 retained messages gets all of them, each once, in topic order.
#[tokio::test]
async fn more_retained_messages_than_the_backlog_bound_arrive_in_batches() {
    let mut config = config();
    config.limits.max_retained_backlog = 100;
    let b = start_with(config).await;
    for i in 0..1000 {
        b.broker.publish(
            topic(&format!("batch/{i:04}")),
            bytes::Bytes::from_static(b"r"),
            QoS::AtMostOnce,
            true,
        );
    }
    let mut c = Raw::connect(b.addr, Protocol::V5, "batches").await;
    c.subscribe("batch/#", QoS::AtMostOnce).await;
    let mut got = Vec::new();
    while let Some(p) = c.try_recv(Duration::from_millis(500)).await {
        let Packet::Publish(p) = p else {
            panic!("{p:?}")
        };
        assert!(p.retain);
        got.push(p.topic.as_str().to_string());
    }
    let want: Vec<String> = (0..1000).map(|i| format!("batch/{i:04}")).collect();
    assert_eq!(got, want);
    assert_eq!(b.broker.stats().dropped_queue_full, 0);
}

/// A 10 MiB payload (a camera image, a firmware chunk) goes through with
/// the default limits, in 3.1.1 and 5.0.
#[tokio::test]
async fn a_ten_mib_message_goes_through_by_default() {
    let b = start().await;
    for proto in [Protocol::V3_1_1, Protocol::V5] {
        let mut sub = Raw::connect(b.addr, proto, "big-sub").await;
        sub.subscribe("big/t", QoS::AtLeastOnce).await;
        let mut publ = Raw::connect(b.addr, proto, "big-pub").await;
        let payload = vec![0x5a; 10 * 1024 * 1024];
        publ.publish("big/t", &payload, QoS::AtLeastOnce, false)
            .await
            .expect("acknowledged");
        let p = sub.recv_publish().await;
        assert_eq!(p.payload.len(), payload.len());
        assert!(p.payload.iter().all(|b| *b == 0x5a));
    }
}

/// `max_partial_bytes` bounds the bytes held in large packets being
/// received: a second large upload waits until the first is done (it is
/// not read meanwhile), then goes through. With room for both (the
/// positive control), the second, sent whole, arrives first.
#[tokio::test]
async fn large_packets_past_max_partial_bytes_wait_their_turn() {
    use petrel_codec::{PacketId, Publish, QosPid};
    async fn race(max_partial: usize) -> Vec<Vec<u8>> {
        let mut config = config();
        config.limits.max_partial_bytes = max_partial;
        let b = start_with(config).await;
        let mut sub = Raw::connect(b.addr, Protocol::V5, "race-sub").await;
        sub.subscribe("race/+", QoS::AtMostOnce).await;
        let packet = |tag: u8| {
            let mut p = Publish::new(topic("race/t"), bytes::Bytes::from(vec![tag; 400 * 1024]));
            p.qos = QosPid::from_parts(QoS::AtLeastOnce, PacketId::new(1)).unwrap();
            let mut buf = BytesMut::new();
            Packet::Publish(p).encode(Protocol::V5, &mut buf).unwrap();
            buf
        };
        let mut first = Raw::connect(b.addr, Protocol::V5, "first").await;
        let mut second = Raw::connect(b.addr, Protocol::V5, "second").await;
        let a = packet(b'a');
        first.send_bytes(&a[..200 * 1024]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sender = tokio::spawn(async move {
            second.send_bytes(&packet(b'b')).await;
            second
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        first.send_bytes(&a[200 * 1024..]).await;
        let order = vec![
            sub.recv_publish().await.payload[..1].to_vec(),
            sub.recv_publish().await.payload[..1].to_vec(),
        ];
        drop(sender.await.unwrap());
        order
    }
    assert_eq!(race(1024 * 1024).await, vec![b"b".to_vec(), b"a".to_vec()]);
    assert_eq!(race(600 * 1024).await, vec![b"a".to_vec(), b"b".to_vec()]);
}

/// A gateway holding 100,000 subscriptions on one session works with the
/// default limits (the 10,001st was refused before).
#[tokio::test]
async fn a_gateway_with_a_hundred_thousand_subscriptions_works_by_default() {
    use petrel_codec::{Properties, Subscribe, Subscription, SubscriptionOptions};
    let b = start().await;
    let mut gw = Raw::connect(b.addr, Protocol::V5, "gateway").await;
    // 250 filters a SUBSCRIBE (a packet may carry 256).
    for batch in 0..400 {
        let subscriptions = (0..250)
            .map(|i| Subscription {
                filter: filter(&format!("site/{batch}/dev{i}/cmd/#")),
                options: SubscriptionOptions::qos(QoS::AtLeastOnce),
            })
            .collect();
        let packet_id = gw.next_pid();
        gw.send(Packet::Subscribe(Subscribe {
            packet_id,
            properties: Properties::new(),
            subscriptions,
        }))
        .await;
        match gw.recv().await {
            Some(Packet::SubAck(a)) => assert!(
                a.reason_codes
                    .iter()
                    .all(|c| *c == ReasonCode::GRANTED_QOS_1),
                "batch {batch}: {:?}",
                a.reason_codes
                    .iter()
                    .find(|c| **c != ReasonCode::GRANTED_QOS_1)
            ),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(b.broker.stats().subscriptions, 100_000);
    let mut p = Raw::connect(b.addr, Protocol::V5, "cmd").await;
    p.publish(
        "site/399/dev249/cmd/reboot",
        b"now",
        QoS::AtLeastOnce,
        false,
    )
    .await;
    assert_eq!(&gw.recv_publish().await.payload[..], b"now");
}

/// Subscriptions are charged what they cost, per session and over all
/// sessions; past either budget a new one is refused (0x97), and what an
/// unsubscribe or an ended session gives back makes room again.
#[tokio::test]
async fn subscriptions_are_bounded_in_bytes_per_session_and_overall() {
    let cost = |f: &str| 128 + 2 * f.len() + 256 * f.split('/').count();
    let mut config = config();
    // Room for three "b/x/N" a session, five overall.
    config.limits.max_subscription_bytes_per_session = 3 * cost("b/x/0") + 10;
    config.limits.max_subscription_bytes = 5 * cost("b/x/0") + 10;
    let b = start_with(config).await;
    let mut one = Raw::connect(b.addr, Protocol::V5, "one").await;
    for i in 0..3 {
        let ack = one.subscribe(&format!("b/x/{i}"), QoS::AtMostOnce).await;
        assert_eq!(ack.reason_codes, vec![ReasonCode::GRANTED_QOS_0]);
    }
    let ack = one.subscribe("b/x/3", QoS::AtMostOnce).await;
    assert_eq!(
        ack.reason_codes,
        vec![ReasonCode::QUOTA_EXCEEDED],
        "per session"
    );
    // Replacing one it holds costs nothing more.
    let ack = one.subscribe("b/x/0", QoS::AtLeastOnce).await;
    assert_eq!(ack.reason_codes, vec![ReasonCode::GRANTED_QOS_1]);
    let mut two = Raw::connect(b.addr, Protocol::V3_1_1, "two").await;
    for i in 0..2 {
        let ack = two.subscribe(&format!("b/x/{i}"), QoS::AtMostOnce).await;
        assert_eq!(ack.reason_codes, vec![ReasonCode::GRANTED_QOS_0]);
    }
    let ack = two.subscribe("b/x/2", QoS::AtMostOnce).await;
    assert_eq!(
        ack.reason_codes,
        vec![ReasonCode(0x80)],
        "overall (3.1.1: 0x80 Failure)"
    );
    // An unsubscribe gives room back...
    let before = b.broker.stats().subscription_bytes;
    one.unsubscribe("b/x/1").await;
    assert_eq!(
        b.broker.stats().subscription_bytes,
        before - cost("b/x/1") as u64
    );
    let ack = two.subscribe("b/x/2", QoS::AtMostOnce).await;
    assert_eq!(ack.reason_codes, vec![ReasonCode::GRANTED_QOS_0]);
    // ...and so does a session that ends: full now (one 2, two 3), a third
    // session's subscription is refused until `one` goes.
    let mut three = Raw::connect(b.addr, Protocol::V5, "three").await;
    let ack = three.subscribe("b/x/9", QoS::AtMostOnce).await;
    assert_eq!(ack.reason_codes, vec![ReasonCode::QUOTA_EXCEEDED]);
    one.disconnect().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ack = three.subscribe("b/x/9", QoS::AtMostOnce).await;
    assert_eq!(ack.reason_codes, vec![ReasonCode::GRANTED_QOS_0]);
    assert_eq!(
        b.broker.stats().subscription_bytes as usize,
        4 * cost("b/x/0")
    );
}

/// One connection's flood of tiny packets doesn't hold the others up: its
/// task lets others run after a bounded number of packets. Here (one
/// thread for everything) a probe's PINGREQ sent in the middle of a flood
/// of 200,000 PUBLISHes is answered after a few hundred more of them are
/// handled (512 here); without the bound, after everything the flood's
/// task had read (4,915 here).
#[tokio::test]
async fn a_flood_of_tiny_packets_does_not_hold_up_another_connection() {
    use petrel_codec::Publish;
    use tokio::io::AsyncWriteExt;
    const FLOOD: u64 = 200_000;
    let b = start().await;
    let flood = Raw::connect(b.addr, Protocol::V3_1_1, "flood").await;
    let mut probe = Raw::connect(b.addr, Protocol::V3_1_1, "probe").await;
    let mut bytes = BytesMut::new();
    for _ in 0..FLOOD {
        Packet::Publish(Publish::new(topic("f"), bytes::Bytes::new()))
            .encode(Protocol::V3_1_1, &mut bytes)
            .unwrap();
    }
    let mut stream = flood.stream;
    let writer = tokio::spawn(async move {
        stream.write_all(&bytes).await.unwrap();
        stream
    });
    // Mid-flood: some handled, most not.
    let deadline = tokio::time::Instant::now() + WAIT;
    while b.broker.stats().publish_received < 1000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the flood did not start"
        );
        tokio::task::yield_now().await;
    }
    let before = b.broker.stats().publish_received;
    assert!(
        before < FLOOD / 2,
        "the flood was handled before the probe could ask"
    );
    probe.send(Packet::PingReq).await;
    assert_eq!(probe.recv().await, Some(Packet::PingResp));
    let during = b.broker.stats().publish_received - before;
    // Two turns of 256 with the bound; a whole read (thousands) without.
    assert!(
        during < 2_000,
        "{during} flood packets were handled before the PINGREQ"
    );
    // Positive control: the flood is handled in full all the same.
    let _stream = writer.await.unwrap();
    while b.broker.stats().publish_received < FLOOD {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the flood was not all handled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The connections' deadlines are kept by one timer task per server. If the
/// first connection comes through a `LocalConnector` from a runtime that
/// then ends, the timer task ends with it; the server's own runtime must
/// start another, or no keep alive would ever be enforced again
/// ([MQTT-3.1.2-22]: the server closes a client silent for one and a half
/// keep alives).
#[test]
fn the_keep_alive_holds_after_the_runtime_of_the_first_connection_ended() {
    let main = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let broker = petrel_broker::Broker::new(config()).unwrap();
    let server = main
        .block_on(petrel_broker::Server::bind(broker.clone()))
        .unwrap();
    let addr = server.local_addrs()[0];
    let local = server.local();
    // The first connection, on a runtime of its own that then ends.
    let short = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    short.block_on(async {
        let _stream = local.connect(petrel_broker::Internal {
            user: "first".into(),
            queue: None,
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    drop(short);
    main.block_on(async move {
        let _task = tokio::spawn(server.run());
        let (mut c, ack) =
            Raw::connect_with(addr, Protocol::V3_1_1, "ka", |c| c.keep_alive = 1).await;
        assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
        // Control: the connection is served (and so could have stayed open).
        c.alive().await;
        let started = tokio::time::Instant::now();
        let closed = tokio::time::timeout(Duration::from_secs(5), c.closed()).await;
        assert!(closed.is_ok(), "not closed 5 s after a 1 s keep alive");
        assert!(
            started.elapsed() >= Duration::from_millis(1000),
            "closed after {:?}, before one keep alive",
            started.elapsed()
        );
        broker.shutdown();
    });
}
