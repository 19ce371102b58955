//! A broker on a loopback port and a raw MQTT client that speaks packets
//! through `petrel-codec` over a real socket, so tests see exactly what
//! crosses the wire.
#![allow(dead_code, unreachable_pub)]

pub mod pki;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use petrel_broker::config::ListenerConfig;
use petrel_broker::{Broker, BrokerConfig, Server};
use petrel_codec::{
    Connect, Limits, MqttString, Packet, PacketId, Properties, Protocol, PubAck, Publish, QoS,
    QosPid, ReasonCode, SubAck, Subscribe, Subscription, SubscriptionOptions, TopicFilter,
    TopicName,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(5);

/// A running broker on 127.0.0.1 with an ephemeral port.
pub struct TestBroker {
    pub broker: Broker,
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

pub fn config() -> BrokerConfig {
    BrokerConfig {
        listeners: vec![ListenerConfig::tcp("127.0.0.1:0".parse().unwrap())],
        sys_interval: 0,
        ..BrokerConfig::default()
    }
}

/// A CONNECT for a session that outlives its connection: Clean Start 0
/// (3.1.1 Clean Session 0), and in 5.0 a Session Expiry Interval of 300 s.
pub fn persistent(proto: Protocol) -> impl FnOnce(&mut Connect) {
    move |c| {
        c.clean_start = false;
        if proto.is_v5() {
            c.properties.set_session_expiry_interval(Some(300));
        }
    }
}

pub async fn start() -> TestBroker {
    start_with(config()).await
}

pub async fn start_with(config: BrokerConfig) -> TestBroker {
    serve_broker(Broker::new(config).unwrap()).await
}

/// Serve a broker built by the test.
pub async fn serve_broker(broker: Broker) -> TestBroker {
    let server = Server::bind(broker.clone()).await.unwrap();
    let addr = server.local_addrs()[0];
    let task = tokio::spawn(server.run());
    TestBroker { broker, addr, task }
}

/// A file of this test process's own, written with `contents`; a new path
/// on each call.
pub fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!("petrel-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}-{name}", N.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&path, contents).unwrap();
    path
}

pub fn topic(s: &str) -> TopicName {
    TopicName::try_from(s).unwrap()
}

pub fn filter(s: &str) -> TopicFilter {
    TopicFilter::try_from(s).unwrap()
}

/// A SUBSCRIBE of one filter at QoS 1, as an engine test hands it to a
/// [`petrel_broker::Client`] (no wire in between).
pub fn subscribe_one(f: &str) -> Subscribe {
    Subscribe {
        packet_id: pid(1),
        properties: Default::default(),
        subscriptions: vec![Subscription {
            filter: filter(f),
            options: SubscriptionOptions::qos(QoS::AtLeastOnce),
        }],
    }
}

pub fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

/// A byte stream a test client runs on (TCP, TLS, WebSocket, ...).
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A client that sends and receives raw packets.
pub struct Raw {
    pub stream: Box<dyn Io>,
    pub buf: BytesMut,
    pub protocol: Protocol,
    next_pid: u16,
}

impl Raw {
    pub async fn open(addr: SocketAddr, protocol: Protocol) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Self::over(stream, protocol)
    }

    /// A client over a stream already open.
    pub fn over(stream: impl Io + 'static, protocol: Protocol) -> Self {
        Self {
            stream: Box::new(stream),
            buf: BytesMut::new(),
            protocol,
            next_pid: 0,
        }
    }

    /// Open and CONNECT with Clean Start and no properties; panics unless
    /// the CONNACK is a success.
    pub async fn connect(addr: SocketAddr, protocol: Protocol, id: &str) -> Self {
        Self::connect_with(addr, protocol, id, |_| {}).await.0
    }

    /// Open and send the CONNECT `edit` shapes; returns the CONNACK.
    pub async fn connect_with(
        addr: SocketAddr,
        protocol: Protocol,
        id: &str,
        edit: impl FnOnce(&mut Connect),
    ) -> (Self, petrel_codec::ConnAck) {
        let raw = Self::open(addr, protocol).await;
        raw.handshake(id, edit).await
    }

    /// Send the CONNECT `edit` shapes on an open stream; returns the CONNACK.
    pub async fn handshake(
        self,
        id: &str,
        edit: impl FnOnce(&mut Connect),
    ) -> (Self, petrel_codec::ConnAck) {
        let protocol = self.protocol;
        let mut raw = self;
        let mut c = Connect::new(protocol, MqttString::try_from(id).unwrap());
        c.keep_alive = 30;
        edit(&mut c);
        raw.send(Packet::Connect(Box::new(c))).await;
        match raw.recv().await {
            Some(Packet::ConnAck(ack)) => (raw, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub fn next_pid(&mut self) -> PacketId {
        self.next_pid = self.next_pid % 65_000 + 1;
        pid(self.next_pid)
    }

    pub async fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        p.encode(self.protocol, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next `n` bytes exactly as the broker wrote them (what was read
    /// but not decoded first); panics after [`WAIT`] or on a close.
    pub async fn recv_bytes(&mut self, n: usize) -> Vec<u8> {
        tokio::time::timeout(WAIT, async {
            while self.buf.len() < n {
                let read = self.stream.read_buf(&mut self.buf).await.unwrap();
                assert!(read > 0, "the connection closed after {:?}", &self.buf[..]);
            }
        })
        .await
        .expect("no bytes in time");
        self.buf.split_to(n).to_vec()
    }

    /// The next packet, or `None` when the broker closed the connection.
    /// Panics after [`WAIT`].
    pub async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, self.recv_inner())
            .await
            .expect("no packet in time")
    }

    /// The next packet within `d`, `None` if none came (or the connection closed).
    pub async fn try_recv(&mut self, d: Duration) -> Option<Packet> {
        tokio::time::timeout(d, self.recv_inner())
            .await
            .ok()
            .flatten()
    }

    async fn recv_inner(&mut self) -> Option<Packet> {
        let limits = Limits {
            max_packet_size: 64 * 1024 * 1024,
            ..Limits::default()
        };
        loop {
            match Packet::decode(&mut self.buf, Some(self.protocol), &limits) {
                Ok(Some(p)) => return Some(p),
                Ok(None) => {}
                Err(e) => panic!("the broker sent a malformed packet: {e}"),
            }
            let n = self.stream.read_buf(&mut self.buf).await.ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// The next PUBLISH, acknowledging it as its QoS asks (PUBACK; PUBREC,
    /// then PUBREL is answered with PUBCOMP when it comes).
    pub async fn recv_publish(&mut self) -> Publish {
        loop {
            match self.recv().await {
                Some(Packet::Publish(p)) => {
                    match p.qos {
                        QosPid::AtMostOnce => {}
                        QosPid::AtLeastOnce(id) => self.send(Packet::PubAck(PubAck::new(id))).await,
                        QosPid::ExactlyOnce(id) => self.send(Packet::PubRec(PubAck::new(id))).await,
                    }
                    return p;
                }
                Some(Packet::PubRel(r)) => {
                    self.send(Packet::PubComp(PubAck::new(r.packet_id))).await;
                }
                Some(Packet::PingResp) => {}
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
    }

    /// That no PUBLISH arrives within `d` (answering PUBRELs on the way),
    /// on a connection still open: silence is told from a closed socket,
    /// and the connection must then answer a PINGREQ (so the check could
    /// have seen a PUBLISH). Always true; it panics otherwise.
    pub async fn no_publish(&mut self, d: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.recv_inner()).await {
                Err(_) => break,
                Ok(None) => panic!("the connection closed: silence can't be told from that"),
                Ok(Some(Packet::PubRel(r))) => {
                    self.send(Packet::PubComp(PubAck::new(r.packet_id))).await;
                }
                Ok(Some(Packet::Publish(p))) => panic!("unexpected PUBLISH {p:?}"),
                Ok(Some(_)) => {}
            }
        }
        self.alive().await;
        true
    }

    /// That nothing arrives within `d` on a connection still open (a
    /// closed socket fails it, as any packet does): the test's next step
    /// shows what does arrive after.
    pub async fn silent(&mut self, d: Duration) {
        match tokio::time::timeout(d, self.recv_inner()).await {
            Err(_) => {}
            Ok(None) => panic!("the connection closed: silence can't be told from that"),
            Ok(Some(p)) => panic!("expected nothing, got {p:?}"),
        }
    }

    /// The connection answers a PINGREQ (a PUBLISH on the way fails it).
    pub async fn alive(&mut self) {
        self.send(Packet::PingReq).await;
        loop {
            match self.recv().await {
                Some(Packet::PingResp) => return,
                Some(Packet::PubRel(r)) => {
                    self.send(Packet::PubComp(PubAck::new(r.packet_id))).await;
                }
                Some(Packet::Publish(p)) => panic!("unexpected PUBLISH {p:?}"),
                None => panic!("the connection closed instead of answering PINGREQ"),
                Some(_) => {}
            }
        }
    }

    /// UNSUBSCRIBE from `f`; the UNSUBACK.
    pub async fn unsubscribe(&mut self, f: &str) -> petrel_codec::UnsubAck {
        let packet_id = self.next_pid();
        self.send(Packet::Unsubscribe(petrel_codec::Unsubscribe {
            packet_id,
            properties: Properties::new(),
            filters: vec![filter(f)],
        }))
        .await;
        loop {
            match self.recv().await {
                Some(Packet::UnsubAck(a)) => return a,
                Some(Packet::Publish(_)) | Some(Packet::PingResp) => {}
                other => panic!("expected UNSUBACK, got {other:?}"),
            }
        }
    }

    pub async fn subscribe(&mut self, f: &str, qos: QoS) -> SubAck {
        self.subscribe_with(f, SubscriptionOptions::qos(qos), Properties::new())
            .await
    }

    pub async fn subscribe_with(
        &mut self,
        f: &str,
        options: SubscriptionOptions,
        properties: Properties,
    ) -> SubAck {
        let packet_id = self.next_pid();
        let s = Subscribe {
            packet_id,
            properties,
            subscriptions: vec![Subscription {
                filter: filter(f),
                options,
            }],
        };
        self.send(Packet::Subscribe(s)).await;
        loop {
            match self.recv().await {
                Some(Packet::SubAck(a)) => {
                    assert_eq!(a.packet_id, packet_id);
                    return a;
                }
                Some(Packet::Publish(_)) | Some(Packet::PingResp) => continue,
                other => panic!("expected SUBACK, got {other:?}"),
            }
        }
    }

    /// Publish and complete the QoS flow; returns the final acknowledgement
    /// (PUBACK or PUBCOMP) for QoS 1/2.
    pub async fn publish(
        &mut self,
        t: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
    ) -> Option<PubAck> {
        self.publish_with(t, payload, qos, retain, Properties::new())
            .await
    }

    pub async fn publish_with(
        &mut self,
        t: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        properties: Properties,
    ) -> Option<PubAck> {
        let id = (qos != QoS::AtMostOnce).then(|| self.next_pid());
        let mut p = Publish::new(topic(t), Bytes::copy_from_slice(payload));
        p.qos = QosPid::from_parts(qos, id).unwrap();
        p.retain = retain;
        p.properties = properties;
        self.send(Packet::Publish(p)).await;
        match qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => match self.recv_skipping_publish().await {
                Some(Packet::PubAck(a)) => Some(a),
                other => panic!("expected PUBACK, got {other:?}"),
            },
            QoS::ExactlyOnce => {
                match self.recv_skipping_publish().await {
                    Some(Packet::PubRec(a)) => assert_eq!(Some(a.packet_id), id),
                    other => panic!("expected PUBREC, got {other:?}"),
                }
                self.send(Packet::PubRel(PubAck::new(id.unwrap()))).await;
                match self.recv_skipping_publish().await {
                    Some(Packet::PubComp(a)) => Some(a),
                    other => panic!("expected PUBCOMP, got {other:?}"),
                }
            }
        }
    }

    async fn recv_skipping_publish(&mut self) -> Option<Packet> {
        loop {
            match self.recv().await {
                Some(Packet::Publish(_)) | Some(Packet::PingResp) => continue,
                other => return other,
            }
        }
    }

    pub async fn disconnect(mut self) {
        self.send(Packet::Disconnect(petrel_codec::Disconnect::new(
            ReasonCode::NORMAL_DISCONNECTION,
        )))
        .await;
        let _ = self.stream.shutdown().await;
    }

    /// Wait for the broker to close the connection; returns the DISCONNECT
    /// it sent first, if any. Any other packet before the close fails the
    /// test (a "no CONNACK" check must be able to see one): a test that
    /// expects others uses [`Raw::closed_after`].
    pub async fn closed(&mut self) -> Option<petrel_codec::Disconnect> {
        let (others, disconnect) = self.closed_after().await;
        assert!(others.is_empty(), "packets before the close: {others:?}");
        disconnect
    }

    /// Wait for the broker to close the connection; the packets that came
    /// first, and its DISCONNECT if it sent one.
    pub async fn closed_after(&mut self) -> (Vec<Packet>, Option<petrel_codec::Disconnect>) {
        let mut others = Vec::new();
        let mut disconnect = None;
        loop {
            match self.recv().await {
                None => return (others, disconnect),
                Some(Packet::Disconnect(d)) => disconnect = Some(d),
                Some(p) => others.push(p),
            }
        }
    }
}

/// A bystander: proves the broker still serves others by a publish/subscribe
/// round trip on its own topic.
pub async fn still_serving(addr: SocketAddr) {
    let mut c = Raw::connect(addr, Protocol::V5, "bystander-check").await;
    c.subscribe("bystander/t", QoS::AtLeastOnce).await;
    c.publish("bystander/t", b"ok", QoS::AtLeastOnce, false)
        .await;
    let p = c.recv_publish().await;
    assert_eq!(&p.payload[..], b"ok");
    c.disconnect().await;
}
