//! What a forwarder (a bridge) needs of the client, against the Petrel
//! broker over loopback: acknowledging received messages only once they
//! are taken care of, many publishes in flight in their order, and
//! failover between addresses with a return to the first.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use petrel_broker::config::ListenerConfig;
use petrel_broker::{Broker, BrokerConfig, Server};
use petrel_client::{connect, Message, QoS, Status, TopicName};

async fn broker_on(addr: SocketAddr) -> Broker {
    let broker = Broker::new(BrokerConfig {
        listeners: vec![ListenerConfig::tcp(addr)],
        sys_interval: 0,
        ..BrokerConfig::default()
    })
    .unwrap();
    let server = Server::bind(broker.clone()).await.unwrap();
    tokio::spawn(server.run());
    broker
}

/// With manual acknowledgements a QoS 1 or 2 message that was received but
/// not acknowledged comes again on the session's next connection; once
/// acknowledged, it does not. Without them (the control), a received
/// message is acknowledged as it is handed over and does not come again.
#[tokio::test]
async fn a_message_is_acknowledged_when_the_application_says_so() {
    let addr = free_addr();
    let _b = broker_on(addr).await;
    for proto in BOTH {
        for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let id = format!("manual-{}-{}", proto.version(), qos as u8);
            let manual = || {
                let mut o = persistent(options(addr, proto, &id));
                o.manual_acks = true;
                o
            };
            let (c, mut m) = connect(manual()).await.unwrap();
            c.subscribe("manual/t", qos).await.unwrap();
            let (p, _) = connect(options(addr, proto, "manual-pub")).await.unwrap();
            p.publish_to("manual/t", "one", qos).await.unwrap();
            let (first, token) = tokio::time::timeout(WAIT, m.recv_ack())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&first.payload[..], b"one");
            assert!(token.is_some(), "QoS {qos:?} has a token");
            c.disconnect().await.unwrap();
            // Not acknowledged: sent again.
            let (c, mut m) = connect(manual()).await.unwrap();
            let (again, token) = tokio::time::timeout(WAIT, m.recv_ack())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&again.payload[..], b"one", "{proto:?} {qos:?}");
            c.ack(token.unwrap()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            c.disconnect().await.unwrap();
            // Acknowledged: not again; a new message shows the stream works.
            let (c, mut m) = connect(manual()).await.unwrap();
            p.publish_to("manual/t", "two", qos).await.unwrap();
            let (next, token) = tokio::time::timeout(WAIT, m.recv_ack())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&next.payload[..], b"two", "{proto:?} {qos:?}");
            c.ack(token.unwrap()).await.unwrap();
            c.disconnect().await.unwrap();
            // The control: acknowledged as handed over.
            let auto = format!("{id}-auto");
            let (c, mut m) = connect(persistent(options(addr, proto, &auto)))
                .await
                .unwrap();
            c.subscribe("manual/t", qos).await.unwrap();
            p.publish_to("manual/t", "three", qos).await.unwrap();
            assert_eq!(&next_of(&mut m).await.payload[..], b"three");
            tokio::time::sleep(Duration::from_millis(200)).await;
            c.disconnect().await.unwrap();
            let (c, mut m) = connect(persistent(options(addr, proto, &auto)))
                .await
                .unwrap();
            p.publish_to("manual/t", "four", qos).await.unwrap();
            assert_eq!(&next_of(&mut m).await.payload[..], b"four");
            c.disconnect().await.unwrap();
            p.disconnect().await.unwrap();
        }
    }
}

async fn next_of(m: &mut petrel_client::Messages) -> petrel_client::Publish {
    next(m).await
}

/// Publishes queued one after another keep their order however their
/// acknowledgements are awaited (here: all at the end).
#[tokio::test]
async fn queued_publishes_keep_their_order() {
    let addr = free_addr();
    let _b = broker_on(addr).await;
    for proto in BOTH {
        let (s, mut m) = connect(options(addr, proto, "order-sub")).await.unwrap();
        s.subscribe("order/t", QoS::AtLeastOnce).await.unwrap();
        let (p, _) = connect(options(addr, proto, "order-pub")).await.unwrap();
        let mut acks = Vec::new();
        for i in 0..300u32 {
            let message = Message::new(
                TopicName::try_from("order/t").unwrap(),
                i.to_string().into(),
                QoS::AtLeastOnce,
            );
            acks.push(p.publish_queued(message).await.unwrap());
        }
        for a in futures::future::join_all(acks).await {
            assert!(!a.unwrap().reason_code.is_error());
        }
        for i in 0..300u32 {
            assert_eq!(next(&mut m).await.payload, i.to_string().as_bytes());
        }
        s.disconnect().await.unwrap();
        p.disconnect().await.unwrap();
    }
}

/// With the first address down, the client connects to a fallback; when
/// the first comes back it moves there, and its subscription with it.
#[tokio::test]
async fn failover_to_a_fallback_and_back_to_the_first() {
    let primary = free_addr();
    let fallback = free_addr();
    let b = broker_on(fallback).await;
    let mut o = options(primary, petrel_client::Protocol::V5, "failover");
    o.fallbacks = vec![(fallback.ip().to_string(), fallback.port())];
    o.primary_check = Duration::from_millis(200);
    let (c, mut m) = connect(o).await.expect("connected through the fallback");
    c.subscribe("fo/t", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(b.stats().clients_connected, 1);
    let a = broker_on(primary).await;
    let moved = async {
        while a.stats().clients_connected == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(WAIT, moved)
        .await
        .expect("moved back to the first address");
    c.wait_for(|s| matches!(s, Status::Connected { .. })).await;
    // Its subscription came along: a message published on the first arrives.
    let (p, _) = connect(options(primary, petrel_client::Protocol::V5, "fo-pub"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        p.publish_to("fo/t", "here", QoS::AtLeastOnce)
            .await
            .unwrap();
        if let Ok(Some(got)) = tokio::time::timeout(Duration::from_millis(200), m.recv()).await {
            assert_eq!(&got.payload[..], b"here");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing arrived");
    }
    let gone = async {
        while b.stats().clients_connected != 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(WAIT, gone)
        .await
        .expect("left the fallback");
}
