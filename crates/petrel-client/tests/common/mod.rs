//! What the client's tests against Petrel and against Mosquitto share.
#![allow(dead_code, unreachable_pub)]

pub mod certs;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use petrel_client::{
    connect, Ack, ClientError, ConnectOptions, Message, Messages, Protocol, Publish, QoS, Status,
    TopicName,
};

/// How long any single wait may take.
pub const WAIT: Duration = Duration::from_secs(5);
pub const BOTH: [Protocol; 2] = [Protocol::V3_1_1, Protocol::V5];

/// A loopback address with a port that is free and that no other call in
/// this process gets ([`petrel_testkit::free_port`]).
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], petrel_testkit::free_port()))
}

/// Options for `id` at `addr`, reconnecting quickly.
pub fn options(addr: SocketAddr, protocol: Protocol, id: &str) -> ConnectOptions {
    let mut o = ConnectOptions::new(addr.ip().to_string(), addr.port(), id).protocol(protocol);
    o.reconnect.min_backoff = Duration::from_millis(20);
    o.reconnect.max_backoff = Duration::from_millis(200);
    o
}

/// The same, asking for a session that outlives the connection.
pub fn persistent(mut o: ConnectOptions) -> ConnectOptions {
    o.clean_start = false;
    o.session_expiry = 3600;
    o
}

pub async fn next(m: &mut Messages) -> Publish {
    tokio::time::timeout(WAIT, m.recv())
        .await
        .expect("a message in time")
        .expect("stream open")
}

/// Whether nothing arrives for a short while.
pub async fn nothing(m: &mut Messages) -> bool {
    tokio::time::timeout(Duration::from_millis(300), m.recv())
        .await
        .is_err()
}

/// A persistent session, in 3.1.1 and 5.0, gets the five QoS 2 messages
/// published while its client was away, in order, once, with Session
/// Present on its return.
pub async fn away_and_back(addr: SocketAddr, topic: &str) {
    for proto in BOTH {
        let id = format!("away-{proto:?}");
        let (sub, _) = connect(persistent(options(addr, proto, &id)))
            .await
            .unwrap();
        sub.subscribe(topic, QoS::ExactlyOnce).await.unwrap();
        sub.disconnect().await.unwrap();
        let (publ, _) = connect(options(addr, proto, "away-pub")).await.unwrap();
        for i in 0..5u8 {
            publ.publish_to(topic, vec![i], QoS::ExactlyOnce)
                .await
                .unwrap();
        }
        let (sub, mut inbox) = connect(persistent(options(addr, proto, &id)))
            .await
            .unwrap();
        assert_eq!(
            sub.status(),
            Status::Connected {
                session_present: true
            }
        );
        for i in 0..5u8 {
            assert_eq!(&next(&mut inbox).await.payload[..], &[i]);
        }
        assert!(nothing(&mut inbox).await);
        sub.disconnect().await.unwrap();
        publ.disconnect().await.unwrap();
    }
}

/// A broker restarted in the middle of QoS 1 and QoS 2 streams, in 3.1.1
/// and 5.0: 400 messages with 16 publishes in flight, `restart` called a
/// third of the way through. Every publish is acknowledged, every message
/// arrives, no QoS 2 message arrives twice, anything late is a QoS 1
/// repeat, and the subscriber's session survived.
pub async fn stream_across_restart(addr: SocketAddr, restart: &mut impl AsyncFnMut()) {
    for (proto, qos) in [
        (Protocol::V3_1_1, QoS::AtLeastOnce),
        (Protocol::V3_1_1, QoS::ExactlyOnce),
        (Protocol::V5, QoS::AtLeastOnce),
        (Protocol::V5, QoS::ExactlyOnce),
    ] {
        let tag = format!("{proto:?}{qos:?}");
        let topic = format!("stream/{tag}");
        let (sub, mut inbox) = connect(persistent(options(addr, proto, &format!("rsub{tag}"))))
            .await
            .unwrap();
        sub.subscribe(&topic, qos).await.unwrap();
        let (publ, _) = connect(persistent(options(addr, proto, &format!("rpub{tag}"))))
            .await
            .unwrap();
        const N: u32 = 400;
        let publisher = tokio::spawn({
            let topic = topic.clone();
            async move {
                let mut inflight = FuturesUnordered::new();
                for i in 0..N {
                    if inflight.len() >= 16 {
                        let r: Result<Ack, ClientError> = inflight.next().await.unwrap();
                        assert!(!r.unwrap().reason_code.is_error());
                    }
                    let m = Message::new(
                        TopicName::try_from(topic.as_str()).unwrap(),
                        Bytes::from(i.to_be_bytes().to_vec()),
                        qos,
                    );
                    let publ = publ.clone();
                    inflight.push(async move { publ.publish(m).await });
                }
                while let Some(r) = inflight.next().await {
                    assert!(!r.unwrap().reason_code.is_error());
                }
            }
        });
        let mut seen: BTreeMap<u32, u32> = BTreeMap::new();
        let mut restarted = false;
        while seen.len() < N as usize {
            let m = tokio::time::timeout(Duration::from_secs(15), inbox.recv())
                .await
                .unwrap_or_else(|_| {
                    let missing: Vec<_> =
                        (0..N).filter(|i| !seen.contains_key(i)).take(20).collect();
                    panic!(
                        "{tag}: stalled at {} of {N}; subscriber {:?}; missing {missing:?}",
                        seen.len(),
                        sub.status()
                    )
                })
                .unwrap();
            let i = u32::from_be_bytes(m.payload[..4].try_into().unwrap());
            *seen.entry(i).or_default() += 1;
            if !restarted && seen.len() >= N as usize / 3 {
                restarted = true;
                restart().await;
            }
        }
        tokio::time::timeout(Duration::from_secs(15), publisher)
            .await
            .expect("every publish acknowledged")
            .unwrap();
        assert!(restarted);
        if qos == QoS::ExactlyOnce {
            let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
            assert!(twice.is_empty(), "{tag}: delivered twice: {twice:?}");
        }
        // Anything still arriving must be a QoS 1 repeat.
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), inbox.recv()).await
        {
            assert_eq!(qos, QoS::AtLeastOnce, "{tag}: extra message {m:?}");
        }
        assert_eq!(
            sub.status(),
            Status::Connected {
                session_present: true
            },
            "{tag}: the session survived the restart"
        );
        sub.disconnect().await.unwrap();
    }
}
