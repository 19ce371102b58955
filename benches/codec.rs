//! Petrel's codec side by side with [`mqttbytes`] 0.6 (the codec rumqtt
//! used), in one run, so what comes out is a ratio rather than an absolute.
//!
//! Each case is one packet, built once for both libraries with the same field
//! values, and is measured twice per library:
//!
//! * `decode/<case>`: from the encoded frame to the library's packet struct.
//!   Both sides copy the frame into a reused `BytesMut` and call their
//!   framing entry point (`Packet::decode` / `mqttbytes::v4::read` /
//!   `mqttbytes::v5::read`), which reads the fixed header, splits the frame off
//!   and parses it. The decoded packet is dropped inside the timed loop.
//! * `encode/<case>`: from the packet struct to bytes, into a reused `BytesMut`
//!   cleared before every iteration.
//!
//! The cases: PUBLISH (QoS 1) with a 64-byte and a 16 KiB payload, in 3.1.1 and
//! in 5.0 with properties (payload format indicator, message expiry, content
//! type, response topic, correlation data, two user properties); CONNECT with
//! client id, user name, password, Will and keep alive (5.0 adds session
//! expiry, receive maximum and a user property); SUBSCRIBE with three filters
//! (5.0 adds a subscription identifier and non-default options).
//!
//! Before anything is timed, every case is checked: both encoders must produce
//! a frame of the same size, and both decoders must decode both frames to the
//! same field values, consuming the whole frame, so no bench can measure an
//! error path.
//!
//! Run it with
//!
//! ```text
//! cargo bench -p petrel-benches --bench codec
//! cargo bench -p petrel-benches --bench codec -- publish_64B    # a filter
//! cargo bench -p petrel-benches --bench codec -- --quick        # a smoke run
//! ```
//!
//! Within a group, `mqttbytes` time / `petrel` time is the speed-up.
//!
//! A third set, `fanout/<publish case>`, is not like for like and says so:
//! what a broker writes per subscriber — Petrel's header with the payload
//! shared, against mqttbytes encoding the whole packet.

use std::num::NonZeroU16;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::measurement::WallTime;
use criterion::{black_box, BenchmarkGroup, Criterion, Throughput};
use mqttbytes::{v4, v5};
use petrel_codec::{
    Connect, Limits, MqttString, Packet, PacketId, Properties, Protocol, Publish, QoS, QosPid,
    RetainHandling, Subscribe, Subscription, SubscriptionId, SubscriptionOptions, TopicFilter,
    TopicName, UserProperty, Will,
};

/// Largest packet either decoder accepts: Petrel's default limit.
const MAX_PACKET: usize = 1024 * 1024;

const TOPIC: &str = "sensors/building-7/floor-3/temperature";
const RESPONSE_TOPIC: &str = "replies/gateway-42/temperature";
const CONTENT_TYPE: &str = "application/octet-stream";
const CLIENT_ID: &str = "gateway-42-building-7";
const USERNAME: &str = "gateway-42";
const PASSWORD: &str = "correct-horse-battery-staple";
const WILL_TOPIC: &str = "status/gateway-42";
const WILL_PAYLOAD: &[u8] = b"offline";
const USER_PROPERTIES: [(&str, &str); 2] = [
    ("source", "gateway-42"),
    ("trace-id", "4bf92f3577b34da6a3ce929d0e0e4736"),
];
const FILTERS: [(&str, u8); 3] = [
    ("sensors/+/floor-3/temperature", 1),
    ("alerts/building-7/#", 2),
    ("$SYS/broker/clients/connected", 0),
];

/// mqttbytes' version of a case's packet.
// Built once per case; boxing would only add a pointer chase to mqttbytes' side.
#[allow(clippy::large_enum_variant)]
enum Peer {
    V4(v4::Packet),
    V5(v5::Packet),
}

impl Peer {
    fn write(&self, buf: &mut BytesMut) -> Result<usize, mqttbytes::Error> {
        match self {
            Self::V4(v4::Packet::Publish(p)) => p.write(buf),
            Self::V4(v4::Packet::Connect(p)) => p.write(buf),
            Self::V4(v4::Packet::Subscribe(p)) => p.write(buf),
            Self::V5(v5::Packet::Publish(p)) => p.write(buf),
            Self::V5(v5::Packet::Connect(p)) => p.write(buf),
            Self::V5(v5::Packet::Subscribe(p)) => p.write(buf),
            _ => unreachable!("no case uses another packet"),
        }
    }

    /// Decode `frame` with the matching mqttbytes reader, checking it takes
    /// the whole frame.
    fn decode(&self, frame: &[u8]) -> Summary {
        let mut buf = BytesMut::from(frame);
        let summary = match self {
            Self::V4(_) => {
                Summary::of_v4(&v4::read(&mut buf, MAX_PACKET).expect("mqttbytes v4 decodes"))
            }
            Self::V5(_) => {
                Summary::of_v5(&v5::read(&mut buf, MAX_PACKET).expect("mqttbytes v5 decodes"))
            }
        };
        assert!(buf.is_empty(), "mqttbytes left {} bytes", buf.len());
        summary
    }
}

/// One packet, as each library builds it.
struct Case {
    name: &'static str,
    protocol: Protocol,
    petrel: Packet,
    peer: Peer,
}

impl Case {
    /// What Petrel's decoder is told about the connection: nothing yet for a
    /// CONNECT, as in a broker; the version otherwise.
    fn decode_protocol(&self) -> Option<Protocol> {
        match self.petrel {
            Packet::Connect(_) => None,
            _ => Some(self.protocol),
        }
    }

    /// Check both libraries agree on the case and return the frame the decode
    /// benches read (Petrel's encoding).
    fn check(&self) -> Bytes {
        let frame = self
            .petrel
            .to_bytes(self.protocol)
            .unwrap_or_else(|e| panic!("{}: petrel encode: {e}", self.name));
        let mut peer_frame = BytesMut::new();
        let n = self
            .peer
            .write(&mut peer_frame)
            .unwrap_or_else(|e| panic!("{}: mqttbytes encode: {e}", self.name));
        assert!(n > 0);
        assert_eq!(
            frame.len(),
            peer_frame.len(),
            "{}: the two encodings differ in size",
            self.name
        );
        let expected = Summary::of_petrel(&self.petrel);
        for f in [&frame[..], &peer_frame[..]] {
            let mut buf = BytesMut::from(f);
            let decoded = Packet::decode(&mut buf, self.decode_protocol(), &Limits::default())
                .unwrap_or_else(|e| panic!("{}: petrel decode: {e}", self.name))
                .unwrap_or_else(|| panic!("{}: petrel wants more bytes", self.name));
            assert!(
                buf.is_empty(),
                "{}: petrel left {} bytes",
                self.name,
                buf.len()
            );
            assert_eq!(decoded, self.petrel, "{}: petrel round trip", self.name);
            assert_eq!(Summary::of_petrel(&decoded), expected, "{}", self.name);
            assert_eq!(
                self.peer.decode(f),
                expected,
                "{}: mqttbytes decode",
                self.name
            );
        }
        frame
    }
}

/// The fields the cases set, in library-neutral form, to check that both
/// decoders read the same packet.
#[derive(Debug, PartialEq)]
enum Summary {
    Publish {
        topic: String,
        qos: u8,
        pkid: u16,
        payload: Bytes,
        format: Option<u8>,
        expiry: Option<u32>,
        content_type: Option<String>,
        response_topic: Option<String>,
        correlation: Option<Bytes>,
        user: Vec<(String, String)>,
    },
    Connect {
        level: u8,
        client_id: String,
        clean: bool,
        keep_alive: u16,
        username: Option<String>,
        password: Option<Vec<u8>>,
        will: Option<(String, Bytes, u8, bool)>,
        session_expiry: Option<u32>,
        receive_max: Option<u16>,
        user: Vec<(String, String)>,
    },
    Subscribe {
        pkid: u16,
        id: Option<usize>,
        /// Filter, QoS, no local, retain as published, retain handling.
        filters: Vec<(String, u8, bool, bool, u8)>,
    },
}

impl Summary {
    fn of_petrel(p: &Packet) -> Self {
        let user = |p: &Properties| -> Vec<(String, String)> {
            p.user_properties()
                .iter()
                .map(|u| (u.key.to_string(), u.value.to_string()))
                .collect()
        };
        match p {
            Packet::Publish(p) => Self::Publish {
                topic: p.topic.to_string(),
                qos: p.qos.qos() as u8,
                pkid: p.qos.packet_id().map_or(0, PacketId::get),
                payload: p.payload.clone(),
                format: p.properties.payload_format_indicator().map(u8::from),
                expiry: p.properties.message_expiry_interval(),
                content_type: p.properties.content_type().map(|s| s.to_string()),
                response_topic: p.properties.response_topic().map(|s| s.to_string()),
                correlation: p.properties.correlation_data(),
                user: user(&p.properties),
            },
            Packet::Connect(c) => Self::Connect {
                level: c.protocol.level(),
                client_id: c.client_id.to_string(),
                clean: c.clean_start,
                keep_alive: c.keep_alive,
                username: c.username.as_ref().map(|s| s.to_string()),
                password: c.password.as_ref().map(|b| b.to_vec()),
                will: c.will.as_ref().map(|w| {
                    (
                        w.topic.to_string(),
                        w.payload.clone(),
                        w.qos as u8,
                        w.retain,
                    )
                }),
                session_expiry: c.properties.session_expiry_interval(),
                receive_max: c.properties.receive_maximum().map(NonZeroU16::get),
                user: user(&c.properties),
            },
            Packet::Subscribe(s) => Self::Subscribe {
                pkid: s.packet_id.get(),
                id: s
                    .properties
                    .subscription_identifiers()
                    .first()
                    .map(|id| id.get() as usize),
                filters: s
                    .subscriptions
                    .iter()
                    .map(|s| {
                        let o = s.options;
                        (
                            s.filter.to_string(),
                            o.qos as u8,
                            o.no_local,
                            o.retain_as_published,
                            o.retain_handling as u8,
                        )
                    })
                    .collect(),
            },
            other => panic!("no case uses {:?}", other.packet_type()),
        }
    }

    fn of_v4(p: &v4::Packet) -> Self {
        match p {
            v4::Packet::Publish(p) => Self::Publish {
                topic: p.topic.clone(),
                qos: p.qos as u8,
                pkid: p.pkid,
                payload: p.payload.clone(),
                format: None,
                expiry: None,
                content_type: None,
                response_topic: None,
                correlation: None,
                user: Vec::new(),
            },
            v4::Packet::Connect(c) => Self::Connect {
                level: level(c.protocol),
                client_id: c.client_id.clone(),
                clean: c.clean_session,
                keep_alive: c.keep_alive,
                username: c.login.as_ref().map(|l| l.username.clone()),
                password: c.login.as_ref().map(|l| l.password.clone().into_bytes()),
                will: c
                    .last_will
                    .as_ref()
                    .map(|w| (w.topic.clone(), w.message.clone(), w.qos as u8, w.retain)),
                session_expiry: None,
                receive_max: None,
                user: Vec::new(),
            },
            v4::Packet::Subscribe(s) => Self::Subscribe {
                pkid: s.pkid,
                id: None,
                filters: s
                    .filters
                    .iter()
                    .map(|f| (f.path.clone(), f.qos as u8, false, false, 0))
                    .collect(),
            },
            other => panic!("no case uses {other:?}"),
        }
    }

    fn of_v5(p: &v5::Packet) -> Self {
        match p {
            v5::Packet::Publish(p) => {
                let props = p.properties.as_ref();
                Self::Publish {
                    topic: p.topic.clone(),
                    qos: p.qos as u8,
                    pkid: p.pkid,
                    payload: p.payload.clone(),
                    format: props.and_then(|p| p.payload_format_indicator),
                    expiry: props.and_then(|p| p.message_expiry_interval),
                    content_type: props.and_then(|p| p.content_type.clone()),
                    response_topic: props.and_then(|p| p.response_topic.clone()),
                    correlation: props.and_then(|p| p.correlation_data.clone()),
                    user: props.map_or_else(Vec::new, |p| p.user_properties.clone()),
                }
            }
            v5::Packet::Connect(c) => {
                let props = c.properties.as_ref();
                Self::Connect {
                    level: level(c.protocol),
                    client_id: c.client_id.clone(),
                    clean: c.clean_session,
                    keep_alive: c.keep_alive,
                    username: c.login.as_ref().map(|l| l.username.clone()),
                    password: c.login.as_ref().map(|l| l.password.clone().into_bytes()),
                    will: c
                        .last_will
                        .as_ref()
                        .map(|w| (w.topic.clone(), w.message.clone(), w.qos as u8, w.retain)),
                    session_expiry: props.and_then(|p| p.session_expiry_interval),
                    receive_max: props.and_then(|p| p.receive_maximum),
                    user: props.map_or_else(Vec::new, |p| p.user_properties.clone()),
                }
            }
            v5::Packet::Subscribe(s) => Self::Subscribe {
                pkid: s.pkid,
                id: s.properties.as_ref().and_then(|p| p.id),
                filters: s
                    .filters
                    .iter()
                    .map(|f| {
                        let rh = match f.retain_forward_rule {
                            v5::RetainForwardRule::OnEverySubscribe => 0,
                            v5::RetainForwardRule::OnNewSubscribe => 1,
                            v5::RetainForwardRule::Never => 2,
                        };
                        (
                            f.path.clone(),
                            f.qos as u8,
                            f.nolocal,
                            f.preserve_retain,
                            rh,
                        )
                    })
                    .collect(),
            },
            other => panic!("no case uses {other:?}"),
        }
    }
}

fn level(p: mqttbytes::Protocol) -> u8 {
    match p {
        mqttbytes::Protocol::V4 => 4,
        mqttbytes::Protocol::V5 => 5,
    }
}

fn mb_qos(q: u8) -> mqttbytes::QoS {
    mqttbytes::qos(q).expect("a valid QoS")
}

fn qos(q: u8) -> QoS {
    QoS::from_u8(q).expect("a valid QoS")
}

fn s(v: &'static str) -> MqttString {
    MqttString::from_static(v)
}

fn id(v: u16) -> PacketId {
    PacketId::new(v).expect("a non-zero packet id")
}

fn payload(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn publish_case(name: &'static str, protocol: Protocol, len: usize) -> Case {
    let payload = payload(len);
    let correlation = Bytes::from_static(b"req-0000000000000001");
    let v5 = protocol.is_v5();
    let mut properties = Properties::default();
    if v5 {
        properties
            .set_payload_format_indicator(Some(false))
            .set_message_expiry_interval(Some(3600))
            .set_content_type(Some(s(CONTENT_TYPE)))
            .set_response_topic(Some(TopicName::from_static(RESPONSE_TOPIC)))
            .set_correlation_data(Some(correlation.clone()))
            .set_user_properties(
                USER_PROPERTIES
                    .iter()
                    .map(|&(k, v)| UserProperty::new(s(k), s(v))),
            );
    }
    let petrel = Packet::Publish(Publish {
        dup: false,
        qos: QosPid::AtLeastOnce(id(42)),
        retain: false,
        topic: TopicName::from_static(TOPIC),
        properties,
        payload: payload.clone(),
    });
    let peer = if v5 {
        Peer::V5(v5::Packet::Publish(v5::Publish {
            dup: false,
            qos: mqttbytes::QoS::AtLeastOnce,
            retain: false,
            topic: TOPIC.into(),
            pkid: 42,
            properties: Some(v5::PublishProperties {
                payload_format_indicator: Some(0),
                message_expiry_interval: Some(3600),
                topic_alias: None,
                response_topic: Some(RESPONSE_TOPIC.into()),
                correlation_data: Some(correlation),
                user_properties: owned_pairs(&USER_PROPERTIES),
                subscription_identifiers: Vec::new(),
                content_type: Some(CONTENT_TYPE.into()),
            }),
            payload,
        }))
    } else {
        Peer::V4(v4::Packet::Publish(v4::Publish {
            dup: false,
            qos: mqttbytes::QoS::AtLeastOnce,
            retain: false,
            topic: TOPIC.into(),
            pkid: 42,
            payload,
        }))
    };
    Case {
        name,
        protocol,
        petrel,
        peer,
    }
}

fn owned_pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|&(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn connect_case(name: &'static str, protocol: Protocol) -> Case {
    let v5 = protocol.is_v5();
    let mut properties = Properties::default();
    if v5 {
        properties
            .set_session_expiry_interval(Some(3600))
            .set_receive_maximum(NonZeroU16::new(100))
            .push_user_property(UserProperty::new(s("region"), s("eu-west-1")));
    }
    let petrel = Packet::Connect(Box::new(Connect {
        protocol,
        clean_start: true,
        keep_alive: 30,
        properties,
        client_id: s(CLIENT_ID),
        will: Some(Will {
            topic: TopicName::from_static(WILL_TOPIC),
            payload: Bytes::from_static(WILL_PAYLOAD),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default(),
        }),
        username: Some(s(USERNAME)),
        password: Some(Bytes::from_static(PASSWORD.as_bytes())),
        bridge: false,
    }));
    let peer = if v5 {
        Peer::V5(v5::Packet::Connect(v5::Connect {
            protocol: mqttbytes::Protocol::V5,
            keep_alive: 30,
            client_id: CLIENT_ID.into(),
            clean_session: true,
            last_will: Some(v5::LastWill {
                topic: WILL_TOPIC.into(),
                message: Bytes::from_static(WILL_PAYLOAD),
                qos: mqttbytes::QoS::AtLeastOnce,
                retain: true,
                properties: None,
            }),
            login: Some(v5::Login::new(USERNAME, PASSWORD)),
            properties: Some(v5::ConnectProperties {
                session_expiry_interval: Some(3600),
                receive_maximum: Some(100),
                max_packet_size: None,
                topic_alias_max: None,
                request_response_info: None,
                request_problem_info: None,
                user_properties: owned_pairs(&[("region", "eu-west-1")]),
                authentication_method: None,
                authentication_data: None,
            }),
        }))
    } else {
        Peer::V4(v4::Packet::Connect(v4::Connect {
            protocol: mqttbytes::Protocol::V4,
            keep_alive: 30,
            client_id: CLIENT_ID.into(),
            clean_session: true,
            last_will: Some(v4::LastWill::new(
                WILL_TOPIC,
                WILL_PAYLOAD,
                mqttbytes::QoS::AtLeastOnce,
                true,
            )),
            login: Some(v4::Login::new(USERNAME, PASSWORD)),
        }))
    };
    Case {
        name,
        protocol,
        petrel,
        peer,
    }
}

fn subscribe_case(name: &'static str, protocol: Protocol) -> Case {
    let v5 = protocol.is_v5();
    // 5.0 options per filter: no local, retain as published, retain handling.
    let options = |i: usize| -> (bool, bool, u8) {
        if v5 {
            [(true, false, 1), (false, true, 0), (false, false, 2)][i]
        } else {
            (false, false, 0)
        }
    };
    let mut properties = Properties::default();
    if v5 {
        properties.push_subscription_identifier(SubscriptionId::new(7).expect("valid"));
    }
    let subscriptions = FILTERS
        .iter()
        .enumerate()
        .map(|(i, &(f, q))| {
            let (no_local, retain_as_published, rh) = options(i);
            Subscription {
                filter: TopicFilter::from_static(f),
                options: SubscriptionOptions {
                    qos: qos(q),
                    no_local,
                    retain_as_published,
                    retain_handling: match rh {
                        0 => RetainHandling::SendOnSubscribe,
                        1 => RetainHandling::SendIfNew,
                        _ => RetainHandling::DoNotSend,
                    },
                },
            }
        })
        .collect();
    let petrel = Packet::Subscribe(Subscribe {
        packet_id: id(7),
        properties,
        subscriptions,
    });
    let peer = if v5 {
        let filters = FILTERS
            .iter()
            .enumerate()
            .map(|(i, &(f, q))| {
                let (nolocal, preserve_retain, rh) = options(i);
                v5::SubscribeFilter {
                    path: f.into(),
                    qos: mb_qos(q),
                    nolocal,
                    preserve_retain,
                    retain_forward_rule: match rh {
                        0 => v5::RetainForwardRule::OnEverySubscribe,
                        1 => v5::RetainForwardRule::OnNewSubscribe,
                        _ => v5::RetainForwardRule::Never,
                    },
                }
            })
            .collect();
        Peer::V5(v5::Packet::Subscribe(v5::Subscribe {
            pkid: 7,
            filters,
            properties: Some(v5::SubscribeProperties {
                id: Some(7),
                user_properties: Vec::new(),
            }),
        }))
    } else {
        let filters = FILTERS
            .iter()
            .map(|&(f, q)| v4::SubscribeFilter::new(f.into(), mb_qos(q)))
            .collect();
        Peer::V4(v4::Packet::Subscribe(v4::Subscribe { pkid: 7, filters }))
    };
    Case {
        name,
        protocol,
        petrel,
        peer,
    }
}

fn cases() -> Vec<Case> {
    vec![
        publish_case("publish_64B_v311", Protocol::V3_1_1, 64),
        publish_case("publish_16KiB_v311", Protocol::V3_1_1, 16 * 1024),
        publish_case("publish_64B_v5", Protocol::V5, 64),
        publish_case("publish_16KiB_v5", Protocol::V5, 16 * 1024),
        connect_case("connect_v311", Protocol::V3_1_1),
        connect_case("connect_v5", Protocol::V5),
        subscribe_case("subscribe_v311", Protocol::V3_1_1),
        subscribe_case("subscribe_v5", Protocol::V5),
    ]
}

fn group<'c>(c: &'c mut Criterion, name: String) -> BenchmarkGroup<'c, WallTime> {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    group
}

fn bench_decode<R>(
    c: &mut Criterion,
    case: &Case,
    frame: &[u8],
    peer_read: impl Fn(&mut BytesMut, usize) -> R,
) {
    let mut group = group(c, format!("decode/{}", case.name));
    let limits = Limits::default();
    let protocol = case.decode_protocol();
    // The routines return their result: `iter` black-boxes and drops it. Don't
    // wrap it in another `black_box`: that adds a copy of the whole result,
    // which for Petrel's 488-byte `Packet` doubles the small-packet times.
    let mut buf = BytesMut::with_capacity(frame.len());
    group.bench_function("petrel", |b| {
        b.iter(|| {
            buf.extend_from_slice(black_box(frame));
            Packet::decode(&mut buf, protocol, &limits)
        });
    });
    let mut buf = BytesMut::with_capacity(frame.len());
    group.bench_function("mqttbytes", |b| {
        b.iter(|| {
            buf.extend_from_slice(black_box(frame));
            peer_read(&mut buf, black_box(MAX_PACKET))
        });
    });
    group.finish();
}

fn bench_encode(c: &mut Criterion, case: &Case, frame_len: usize) {
    let mut group = group(c, format!("encode/{}", case.name));
    let mut buf = BytesMut::with_capacity(frame_len);
    group.bench_function("petrel", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&case.petrel).encode(case.protocol, &mut buf)
        });
    });
    let mut buf = BytesMut::with_capacity(frame_len);
    group.bench_function("mqttbytes", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&case.peer).write(&mut buf)
        });
    });
    group.finish();
}

/// Per subscriber of a fan-out, a broker writes a PUBLISH whose payload it
/// already holds. Petrel encodes only the header and hands the payload (the
/// same `Bytes`) to a vectored write; mqttbytes has no such path and encodes
/// the whole packet. Not the same work, on purpose: this is the difference
/// the zero-copy design makes on a broker's hottest path.
fn bench_fanout(c: &mut Criterion, case: &Case, frame_len: usize) {
    let Packet::Publish(publish) = &case.petrel else {
        return;
    };
    let mut group = group(c, format!("fanout/{}", case.name));
    let mut buf = BytesMut::with_capacity(frame_len);
    group.bench_function("petrel_header_and_shared_payload", |b| {
        b.iter(|| {
            buf.clear();
            let p = black_box(publish);
            let n = p.encode_header(case.protocol, &mut buf);
            (n, p.payload.clone())
        });
    });
    let mut buf = BytesMut::with_capacity(frame_len);
    group.bench_function("mqttbytes_whole_packet", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&case.peer).write(&mut buf)
        });
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    let cases: Vec<(Case, Bytes)> = cases()
        .into_iter()
        .map(|case| {
            let frame = case.check();
            (case, frame)
        })
        .collect();
    for (case, frame) in &cases {
        match case.peer {
            Peer::V4(_) => bench_decode(c, case, frame, v4::read),
            Peer::V5(_) => bench_decode(c, case, frame, v5::read),
        }
    }
    for (case, frame) in &cases {
        bench_encode(c, case, frame.len());
    }
    for (case, frame) in &cases {
        bench_fanout(c, case, frame.len());
    }
}

fn main() {
    // What `criterion_group!` / `criterion_main!` expand to, without their
    // undocumented `pub fn`. Command-line options override this configuration.
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .configure_from_args();
    codec(&mut c);
    c.final_summary();
}
