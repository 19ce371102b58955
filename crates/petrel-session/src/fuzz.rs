//! Entry point of the `session_server` cargo-fuzz target (built only with
//! `--cfg fuzzing`): arbitrary packets into a server-role machine whose
//! invariants are checked after every step.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use petrel_codec::{Limits, Packet, Properties, QoS, ReasonCode, SubAck, TopicName, UnsubAck};

use crate::{Accept, Config, Connection, Event, Message};

/// The first byte shapes the run (window sizes, how often the "broker"
/// publishes); the rest is decoded as the client's packet stream.
pub fn server(data: &[u8]) {
    let Some((&shape, rest)) = data.split_first() else {
        return;
    };
    let config = Config {
        receive_maximum: std::num::NonZeroU16::new(u16::from(shape & 0x07) + 1)
            .unwrap_or(std::num::NonZeroU16::MIN),
        max_inflight: std::num::NonZeroU16::new(u16::from((shape >> 3) & 0x07) + 1)
            .unwrap_or(std::num::NonZeroU16::MIN),
        max_pending: 16,
        topic_alias_maximum: 4,
        ..Config::default()
    };
    let publish_every = usize::from(shape >> 6) + 1;
    let mut now = Instant::now();
    let mut server = Connection::server(config.clone(), now);
    let mut buf = BytesMut::from(rest);
    let limits = Limits::default();
    let mut protocol = None;
    let mut step = 0usize;
    loop {
        let packet = match Packet::decode(&mut buf, protocol, &limits) {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) => {
                server.handle_decode_error(now, e);
                break;
            }
        };
        if let (None, Packet::Connect(c)) = (protocol, &packet) {
            protocol = Some(c.protocol);
        }
        step += 1;
        now += Duration::from_millis(250);
        let before: BTreeSet<u16> = server.state().inflight_ids().into_iter().collect();
        let _ = server.handle_packet(now, packet);
        server.handle_timeout(now);
        if step % publish_every == 0 && server.is_connected() {
            let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][step % 3];
            let topic = TopicName::from_static("fuzz/out");
            let _ = server.publish(now, Message::new(topic, Bytes::from_static(b"m"), qos));
        }
        while let Some(e) = server.poll_event() {
            match e {
                Event::ConnectRequest(_) => {
                    let _ = server.accept(now, Accept::default());
                }
                Event::Subscribe(s) => {
                    let codes = vec![ReasonCode::GRANTED_QOS_1; s.subscriptions.len()];
                    let ack = SubAck {
                        packet_id: s.packet_id,
                        properties: Properties::new(),
                        reason_codes: codes,
                    };
                    let _ = server.suback(now, ack);
                }
                Event::Unsubscribe(u) => {
                    let codes = vec![ReasonCode::SUCCESS; u.filters.len()];
                    let ack = UnsubAck {
                        packet_id: u.packet_id,
                        properties: Properties::new(),
                        reason_codes: codes,
                    };
                    let _ = server.unsuback(now, ack);
                }
                _ => {}
            }
        }
        let mut sent = 0;
        let proto = server.protocol();
        while let Some(p) = server.poll_transmit() {
            sent += 1;
            // Everything the machine sends can be encoded.
            assert!(
                p.to_bytes(proto).is_ok() || matches!(p, Packet::ConnAck(_)),
                "unencodable {p:?}"
            );
            if let Packet::Publish(p) = &p {
                if let Some(id) = p.qos.packet_id() {
                    // A new exchange never takes an identifier already in use.
                    assert!(
                        p.dup || !before.contains(&id.get()),
                        "identifier {id} reused"
                    );
                }
            }
        }
        assert!(
            sent <= 2 + usize::from(config.max_inflight.get()) + 16,
            "{sent} packets from one input"
        );
        let state = server.state();
        let window = usize::from(
            config
                .max_inflight
                .get()
                .min(server.peer_limits().receive_maximum),
        );
        assert!(
            state.inflight() <= window,
            "in flight {} over {window}",
            state.inflight()
        );
        if proto.is_v5() {
            assert!(state.incoming() <= usize::from(config.receive_maximum.get()));
        }
        assert!(state.pending() <= config.max_pending);
        if server.is_closed() {
            break;
        }
    }
}
