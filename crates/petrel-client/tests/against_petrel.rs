//! The client against the Petrel broker over loopback, in 3.1.1 and 5.0.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use petrel_broker::config::ListenerConfig;
use petrel_broker::{Broker, BrokerConfig, Server};
use petrel_client::{
    connect, ClientError, LastWill, Message, Properties, Protocol, QoS, ReasonCode, Status,
    TopicName,
};

fn config(bind: SocketAddr, persistence: Option<&Path>) -> BrokerConfig {
    BrokerConfig {
        listeners: vec![ListenerConfig::tcp(bind)],
        sys_interval: 0,
        persistence: persistence.map(Path::to_path_buf),
        ..BrokerConfig::default()
    }
}

/// A broker on `addr`, keeping its sessions in `persistence` if given.
async fn broker_on(
    addr: SocketAddr,
    persistence: Option<&Path>,
) -> (Broker, tokio::task::JoinHandle<()>) {
    let broker = Broker::new(config(addr, persistence)).unwrap();
    let server = Server::bind(broker.clone()).await.unwrap();
    (broker, tokio::spawn(server.run()))
}

/// A broker on an ephemeral port.
async fn start() -> (Broker, SocketAddr) {
    let broker = Broker::new(config("127.0.0.1:0".parse().unwrap(), None)).unwrap();
    let server = Server::bind(broker.clone()).await.unwrap();
    let addr = server.local_addrs()[0];
    tokio::spawn(server.run());
    (broker, addr)
}

/// A fresh persistence file for one test.
fn store(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("petrel-{name}-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// Every QoS pairing in each version, each message acknowledged and
/// delivered at the lower QoS, over TCP (3.1.1: [MQTT-7.1.2-1]: the client
/// runs on an ordered, lossless, two-way byte stream; every message sent
/// arrives, and none after the unsubscribe).
#[tokio::test]
async fn every_qos_both_ways_with_acknowledgements() {
    let (_b, addr) = start().await;
    for proto in BOTH {
        let (sub, mut inbox) = connect(options(addr, proto, "sub")).await.unwrap();
        let (publ, _) = connect(options(addr, proto, "pub")).await.unwrap();
        for sub_qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let ack = sub.subscribe("c/t", sub_qos).await.unwrap();
            assert_eq!(ack.reason_codes, vec![ReasonCode(sub_qos as u8)]);
            for pub_qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let payload = format!("{proto:?}/{sub_qos:?}/{pub_qos:?}");
                let ack = publ
                    .publish_to("c/t", payload.clone(), pub_qos)
                    .await
                    .unwrap();
                assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
                let m = next(&mut inbox).await;
                assert_eq!(m.payload, payload.as_bytes());
                assert_eq!(m.qos.qos(), pub_qos.min(sub_qos));
            }
        }
        let un = sub.unsubscribe(&["c/t", "never"]).await.unwrap();
        if proto.is_v5() {
            assert_eq!(
                un.reason_codes,
                vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]
            );
        }
        publ.publish_to("c/t", "after", QoS::AtLeastOnce)
            .await
            .unwrap();
        assert!(nothing(&mut inbox).await);
        sub.disconnect().await.unwrap();
        publ.disconnect().await.unwrap();
        assert_eq!(sub.status(), Status::Closed);
        assert!(matches!(
            publ.publish_to("c/t", "x", QoS::AtMostOnce).await,
            Err(ClientError::Closed)
        ));
    }
}

#[tokio::test]
async fn retained_messages_and_wills() {
    let (_b, addr) = start().await;
    for proto in BOTH {
        let (publ, _) = connect(options(addr, proto, "rp")).await.unwrap();
        let mut m = Message::new(
            TopicName::from_static("r/t"),
            Bytes::from_static(b"kept"),
            QoS::AtLeastOnce,
        );
        m.retain = true;
        publ.publish(m).await.unwrap();
        let (sub, mut inbox) = connect(options(addr, proto, "rs")).await.unwrap();
        sub.subscribe("r/#", QoS::AtLeastOnce).await.unwrap();
        let got = next(&mut inbox).await;
        assert!(got.retain);
        assert_eq!(&got.payload[..], b"kept");

        // A will, published when the connection is taken over (it ended
        // without a normal DISCONNECT).
        let mut o = options(addr, proto, "mortal");
        o.will = Some(LastWill {
            topic: TopicName::from_static("r/will"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::new(),
        });
        o.reconnect.enabled = false;
        let (mortal, _) = connect(o).await.unwrap();
        let (_usurper, _) = connect(options(addr, proto, "mortal")).await.unwrap();
        let w = next(&mut inbox).await;
        assert_eq!(w.topic.as_str(), "r/will");
        assert_eq!(&w.payload[..], b"gone");
        // Reconnect is off: the taken-over client closes.
        assert_eq!(
            mortal.wait_for(|s| *s == Status::Closed).await,
            Status::Closed
        );
        sub.disconnect().await.unwrap();
    }
}

#[tokio::test]
async fn a_persistent_session_receives_what_was_published_while_away() {
    let (_b, addr) = start().await;
    away_and_back(addr, "p/t").await;
}

#[tokio::test]
async fn publishing_from_the_message_loop_under_load_never_deadlocks() {
    let (_b, addr) = start().await;
    let mut o = options(addr, Protocol::V5, "echo");
    // A small window and queues make the pressure real: the broker may
    // have 4 unacknowledged messages out to us, we hold at most 8 pending.
    o.max_incoming = 8;
    o.max_pending = 8;
    o.properties
        .set_receive_maximum(std::num::NonZeroU16::new(4));
    let (echo, mut inbox) = connect(o).await.unwrap();
    echo.subscribe("load/in", QoS::AtLeastOnce).await.unwrap();
    let (sink, mut sunk) = connect(options(addr, Protocol::V5, "sink")).await.unwrap();
    sink.subscribe("load/out", QoS::AtLeastOnce).await.unwrap();
    const N: usize = 2000;
    // The handler publishes (and awaits the PUBACK of) one message per
    // message it reads, from inside its own loop.
    let handler = {
        let echo = echo.clone();
        tokio::spawn(async move {
            for _ in 0..N {
                let m = inbox.recv().await.unwrap();
                echo.publish(Message::new(
                    TopicName::from_static("load/out"),
                    m.payload,
                    QoS::AtLeastOnce,
                ))
                .await
                .unwrap();
            }
        })
    };
    let (publ, _) = connect(options(addr, Protocol::V5, "flood")).await.unwrap();
    let flood = tokio::spawn(async move {
        for i in 0..N as u32 {
            publ.publish_to("load/in", i.to_be_bytes().to_vec(), QoS::AtLeastOnce)
                .await
                .unwrap();
        }
    });
    let mut seen = 0;
    while seen < N {
        tokio::time::timeout(Duration::from_secs(20), sunk.recv())
            .await
            .expect("no deadlock")
            .unwrap();
        seen += 1;
    }
    tokio::time::timeout(WAIT, handler).await.unwrap().unwrap();
    tokio::time::timeout(WAIT, flood).await.unwrap().unwrap();
}

#[tokio::test]
async fn publishes_wait_while_disconnected_and_try_publish_reports_full() {
    let addr = free_addr();
    let (broker, task) = broker_on(addr, None).await;
    let mut o = options(addr, Protocol::V5, "patient");
    o.max_pending = 4;
    o.clean_start = false;
    o.session_expiry = 300;
    let (client, _) = connect(o).await.unwrap();
    broker.shutdown();
    task.await.unwrap();
    client.wait_for(|s| *s == Status::Connecting).await;
    // Offline: publishes queue up to the bound …
    let mut pending = Vec::new();
    let mut full = false;
    for i in 0..200u32 {
        let m = Message::new(
            TopicName::from_static("w/t"),
            Bytes::from(i.to_string()),
            QoS::AtLeastOnce,
        );
        match client.try_publish(m) {
            Ok(f) => pending.push(tokio::spawn(f)),
            Err(ClientError::Full) => {
                full = true;
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(full, "a bounded queue reports full");
    // … and are delivered once the broker is back.
    let (_broker, _task) = broker_on(addr, None).await;
    let (sub, inbox) = connect(options(addr, Protocol::V5, "watcher"))
        .await
        .unwrap();
    sub.subscribe("w/t", QoS::AtLeastOnce).await.unwrap();
    // The subscription may come after the first resends; what matters is
    // that every publish future completes with the broker's ack.
    for p in pending {
        let ack = tokio::time::timeout(Duration::from_secs(10), p)
            .await
            .expect("acknowledged after reconnect")
            .unwrap()
            .unwrap();
        assert!(!ack.reason_code.is_error());
    }
    drop(inbox);
}

#[tokio::test]
async fn after_a_broker_restart_the_client_restores_its_subscriptions_but_not_removed_ones() {
    for proto in BOTH {
        let addr = free_addr();
        let (broker, task) = broker_on(addr, None).await;
        let mut o = options(addr, proto, "restorer");
        o.clean_start = false;
        o.session_expiry = 300;
        let (client, mut inbox) = connect(o).await.unwrap();
        client.subscribe("rs/#", QoS::AtLeastOnce).await.unwrap();
        client.subscribe("gone/#", QoS::AtLeastOnce).await.unwrap();
        let un = client.unsubscribe(&["gone/#"]).await.unwrap();
        // 3.1.1 UNSUBACK has no codes; the client reports success per filter.
        assert_eq!(un.reason_codes, vec![ReasonCode::SUCCESS]);
        broker.shutdown();
        task.await.unwrap();
        client.wait_for(|s| *s == Status::Connecting).await;
        // The new broker (no persistence) knows nothing of the session.
        let (_broker, _task) = broker_on(addr, None).await;
        client
            .wait_for(|s| matches!(s, Status::Connected { .. }))
            .await;
        assert_eq!(
            client.status(),
            Status::Connected {
                session_present: false
            }
        );
        let (publ, _) = connect(options(addr, proto, "pub")).await.unwrap();
        // The restored SUBSCRIBE is in flight; retry until it has landed.
        let mut got = None;
        for _ in 0..50 {
            publ.publish_to("rs/t", "back", QoS::AtLeastOnce)
                .await
                .unwrap();
            if let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_millis(100), inbox.recv()).await
            {
                got = Some(m);
                break;
            }
        }
        assert_eq!(&got.expect("subscription restored").payload[..], b"back");
        // Drain repeats, then check the unsubscribed filter stayed gone.
        while tokio::time::timeout(Duration::from_millis(200), inbox.recv())
            .await
            .is_ok()
        {}
        publ.publish_to("gone/t", "x", QoS::AtLeastOnce)
            .await
            .unwrap();
        assert!(
            nothing(&mut inbox).await,
            "{proto:?}: an unsubscribed filter came back"
        );
    }
}

#[tokio::test]
async fn disconnect_is_heard_while_offline_and_a_publish_waits_for_room() {
    let addr = free_addr();
    let (broker, task) = broker_on(addr, None).await;
    let mut o = options(addr, Protocol::V5, "stuck");
    o.max_pending = 2;
    let (client, _) = connect(o).await.unwrap();
    broker.shutdown();
    task.await.unwrap();
    client.wait_for(|s| *s == Status::Connecting).await;
    // Fill the offline queue, then one more publish waits for room.
    let mut waiting = Vec::new();
    for i in 0..3u8 {
        let c = client.clone();
        waiting.push(tokio::spawn(async move {
            c.publish_to("s/t", vec![i], QoS::AtLeastOnce).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::time::timeout(WAIT, client.disconnect())
        .await
        .expect("disconnect is not stuck behind the waiting publish")
        .unwrap();
    for w in waiting {
        let r = tokio::time::timeout(WAIT, w).await.unwrap().unwrap();
        assert!(matches!(r, Err(ClientError::Closed)), "{r:?}");
    }
    assert_eq!(client.status(), Status::Closed);
}

#[tokio::test]
async fn an_assigned_client_id_is_used_to_resume_after_a_restart() {
    let addr = free_addr();
    let store = store("assigned");
    let (broker, task) = broker_on(addr, Some(&store)).await;
    let mut o = options(addr, Protocol::V5, "");
    o.session_expiry = 300;
    let (client, _) = connect(o).await.unwrap();
    let id = client
        .assigned_client_id()
        .expect("the broker assigned an id");
    broker.shutdown();
    task.await.unwrap();
    client.wait_for(|s| *s == Status::Connecting).await;
    let (_broker, _task) = broker_on(addr, Some(&store)).await;
    // Reconnecting with the assigned id and Clean Start 0 finds the session.
    assert_eq!(
        client
            .wait_for(|s| matches!(s, Status::Connected { .. }))
            .await,
        Status::Connected {
            session_present: true
        }
    );
    assert_eq!(client.assigned_client_id(), Some(id));
    let _ = std::fs::remove_file(&store);
}

#[tokio::test]
async fn topic_aliases_and_receive_maximum_are_honoured() {
    let (_b, addr) = start().await;
    let mut o = options(addr, Protocol::V5, "aliases");
    o.properties.set_topic_alias_maximum(Some(8));
    o.properties
        .set_receive_maximum(std::num::NonZeroU16::new(2));
    let (sub, mut inbox) = connect(o).await.unwrap();
    sub.subscribe("alias/#", QoS::AtLeastOnce).await.unwrap();
    let (publ, _) = connect(options(addr, Protocol::V5, "ap")).await.unwrap();
    for i in 0..20u8 {
        publ.publish_to("alias/a/long/topic/name", vec![i], QoS::AtLeastOnce)
            .await
            .unwrap();
    }
    // The broker sends aliases (the client allowed 8) and never more than
    // two unacknowledged messages; the application sees whole topics.
    for i in 0..20u8 {
        let m = next(&mut inbox).await;
        assert_eq!(m.topic.as_str(), "alias/a/long/topic/name");
        assert_eq!(&m.payload[..], &[i]);
    }
}

/// A Petrel broker with a persistence file, restarted (gracefully) in the
/// middle of a QoS 1 and a QoS 2 stream: no message lost, no QoS 2 message
/// delivered twice.
#[tokio::test]
async fn a_petrel_restart_mid_stream_loses_nothing_and_duplicates_no_qos2() {
    let addr = free_addr();
    let store = store("restart");
    let mut running = broker_on(addr, Some(&store)).await;
    stream_across_restart(addr, &mut async || {
        running.0.shutdown();
        (&mut running.1).await.unwrap();
        running = broker_on(addr, Some(&store)).await;
    })
    .await;
    let _ = std::fs::remove_file(&store);
}
