//! Interoperability with a client no one here wrote: rumqttc (crates.io),
//! in MQTT 3.1.1 and 5.0, through the Petrel server over TCP.

mod support;

use std::time::Duration;

use support::*;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(5);

mod v311 {
    use super::*;
    use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, Publish, QoS};

    /// A rumqttc 3.1.1 client whose event loop runs in a task, forwarding
    /// PUBLISHes; dropping the task closes the socket without DISCONNECT.
    pub(super) fn client(
        addr: std::net::SocketAddr,
        id: &str,
        edit: impl FnOnce(&mut MqttOptions),
    ) -> (
        AsyncClient,
        mpsc::UnboundedReceiver<Publish>,
        JoinHandle<()>,
    ) {
        let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        opts.set_keep_alive(Duration::from_secs(30));
        edit(&mut opts);
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(p);
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        (client, rx, task)
    }

    pub(super) async fn next(rx: &mut mpsc::UnboundedReceiver<Publish>) -> Publish {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("a message in time")
            .expect("event loop alive")
    }

    #[tokio::test]
    async fn rumqttc_3_1_1_exchanges_every_qos_retained_and_will_messages() {
        let b = start().await;
        let (sub, mut inbox, _t1) = client(b.addr, "r-sub", |_| {});
        sub.subscribe("ri/#", QoS::ExactlyOnce).await.unwrap();
        let (publ, _, _t2) = client(b.addr, "r-pub", |_| {});
        // Give the SUBSCRIBE time to be acknowledged.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            publ.publish(format!("ri/{i}"), qos, false, vec![i as u8; 10])
                .await
                .unwrap();
            let p = next(&mut inbox).await;
            assert_eq!(p.topic, format!("ri/{i}"));
            assert_eq!(p.qos, qos);
            assert_eq!(&p.payload[..], &[i as u8; 10]);
        }

        // Retained: a later subscriber gets it with RETAIN set.
        publ.publish("rr/t", QoS::AtLeastOnce, true, "kept")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (late, mut late_inbox, _t3) = client(b.addr, "r-late", |_| {});
        late.subscribe("rr/t", QoS::AtLeastOnce).await.unwrap();
        let p = next(&mut late_inbox).await;
        assert!(p.retain);
        assert_eq!(&p.payload[..], b"kept");

        // Will: the connection is dropped without DISCONNECT.
        let (_dying, _, task) = client(b.addr, "r-dies", |o| {
            o.set_last_will(LastWill::new("ri/will", "bye", QoS::AtLeastOnce, false));
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        task.abort();
        let p = next(&mut inbox).await;
        assert_eq!(p.topic, "ri/will");
        assert_eq!(&p.payload[..], b"bye");
    }

    #[tokio::test]
    async fn rumqttc_3_1_1_persistent_session_gets_what_was_published_while_away() {
        let b = start().await;
        let persistent = |o: &mut MqttOptions| {
            o.set_clean_session(false);
        };
        let (sub, _, task) = client(b.addr, "r-persist", persistent);
        sub.subscribe("rp/t", QoS::AtLeastOnce).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        sub.disconnect().await.unwrap();
        let _ = tokio::time::timeout(WAIT, task).await;
        let (publ, _, _t) = client(b.addr, "r-pub2", |_| {});
        for i in 0..3u8 {
            publ.publish("rp/t", QoS::AtLeastOnce, false, vec![i])
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (_sub, mut inbox, _t2) = client(b.addr, "r-persist", persistent);
        for i in 0..3u8 {
            assert_eq!(&next(&mut inbox).await.payload[..], &[i]);
        }
    }
}

mod v5 {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    fn client(
        addr: std::net::SocketAddr,
        id: &str,
    ) -> (
        AsyncClient,
        mpsc::UnboundedReceiver<Publish>,
        JoinHandle<()>,
    ) {
        let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(p);
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        (client, rx, task)
    }

    #[tokio::test]
    async fn rumqttc_5_0_exchanges_every_qos_and_passes_properties_through() {
        let b = start().await;
        let (sub, mut inbox, _t1) = client(b.addr, "r5-sub");
        sub.subscribe("r5/#", QoS::ExactlyOnce).await.unwrap();
        let (publ, _, _t2) = client(b.addr, "r5-pub");
        tokio::time::sleep(Duration::from_millis(300)).await;
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            let props = PublishProperties {
                content_type: Some("text/plain".into()),
                response_topic: Some("r5/reply".into()),
                correlation_data: Some(bytes::Bytes::from_static(b"c-1")),
                user_properties: vec![("k".into(), format!("v{i}"))],
                message_expiry_interval: Some(60),
                ..PublishProperties::default()
            };
            publ.publish_with_properties(format!("r5/{i}"), qos, false, "hello", props)
                .await
                .unwrap();
            let p = tokio::time::timeout(WAIT, inbox.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&p.topic[..], format!("r5/{i}").as_bytes());
            assert_eq!(p.qos, qos);
            let props = p.properties.expect("properties");
            assert_eq!(props.content_type.as_deref(), Some("text/plain"));
            assert_eq!(props.response_topic.as_deref(), Some("r5/reply"));
            assert_eq!(props.correlation_data.as_deref(), Some(&b"c-1"[..]));
            assert_eq!(
                props.user_properties,
                vec![("k".to_string(), format!("v{i}"))]
            );
            assert!(props.message_expiry_interval.is_some_and(|e| e <= 60));
        }
    }
}
