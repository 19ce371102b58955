//! Every transport through real sockets: TLS and mutual TLS, WebSocket
//! and secure WebSocket, Unix sockets and the PROXY protocol, per-listener
//! limits and rules, and each kind of bad input closing only its own
//! connection while a bystander keeps being served.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use petrel_broker::config::{ListenerConfig, ProtocolVersion, TransportKind};
use petrel_broker::{Broker, BrokerConfig, Server};
use petrel_codec::{Packet, Protocol, QoS, ReasonCode};
use support::pki::{client_config, connect_tls, write, Ca, Pem};
use support::{still_serving, Raw, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// A temporary directory of this test's own.
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("petrel-tr-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn local() -> Option<SocketAddr> {
    Some("127.0.0.1:0".parse().unwrap())
}

/// A server running in this test, and what the test needs of it.
struct Running {
    broker: Broker,
    /// Each TCP-based listener's address, the plain bystander one first.
    addrs: Vec<SocketAddr>,
    certificates: petrel_broker::Certificates,
    task: tokio::task::JoinHandle<()>,
}

/// Run a server with these listeners (a plain TCP one first, for
/// bystanders).
async fn serve(mut config: BrokerConfig, listeners: Vec<ListenerConfig>) -> Running {
    config
        .listeners
        .insert(0, ListenerConfig::tcp("127.0.0.1:0".parse().unwrap()));
    config.listeners.extend(listeners);
    config.sys_interval = 0;
    let broker = Broker::new(config).unwrap();
    let server = Server::bind(broker.clone()).await.unwrap();
    Running {
        broker,
        addrs: server.local_addrs(),
        certificates: server.certificates(),
        task: tokio::spawn(server.run()),
    }
}

fn base() -> BrokerConfig {
    BrokerConfig {
        listeners: vec![],
        ..BrokerConfig::default()
    }
}

/// TLS files for a listener: a CA, the server's certificate signed by it.
struct Tls {
    ca: Ca,
    dir: PathBuf,
    server: Pem,
}

impl Tls {
    fn new(name: &str) -> Self {
        let ca = Ca::new("petrel test CA");
        let dir = dir(name);
        let server = ca.server();
        write(&dir, "ca.pem", &ca.pem());
        write(&dir, "server.pem", &server.cert);
        write(&dir, "server.key", &server.key);
        Self { ca, dir, server }
    }

    fn listener(&self, transport: TransportKind) -> ListenerConfig {
        ListenerConfig {
            transport,
            bind: local(),
            certfile: Some(self.dir.join("server.pem")),
            keyfile: Some(self.dir.join("server.key")),
            ..ListenerConfig::default()
        }
    }

    fn mutual(&self, transport: TransportKind) -> ListenerConfig {
        ListenerConfig {
            cafile: Some(self.dir.join("ca.pem")),
            require_certificate: true,
            ..self.listener(transport)
        }
    }
}

/// Whether the connection ends (EOF or error) within `d` without a
/// CONNACK (a TLS alert may come first).
async fn refused_without_connack<S: tokio::io::AsyncRead + Unpin>(s: &mut S, d: Duration) -> bool {
    let mut got = Vec::new();
    let ended = tokio::time::timeout(d, async {
        let mut buf = [0u8; 64];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    assert!(got.first() != Some(&0x20), "a CONNACK came: {got:?}");
    ended
}

#[tokio::test]
async fn tls_serves_mqtt_in_both_versions() {
    let tls = Tls::new("tls");
    let server = serve(base(), vec![tls.listener(TransportKind::Tls)]).await;
    let addrs = &server.addrs;
    let (plain, tls_addr) = (addrs[0], addrs[1]);
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let s = connect_tls(tls_addr, client_config(&tls.ca.pem(), None, &[b"mqtt"]))
            .await
            .unwrap();
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"mqtt"[..]));
        let mut c = Raw::over(s, protocol).handshake("tls-c", |_| {}).await.0;
        c.subscribe("t/tls", QoS::AtLeastOnce).await;
        // From a plain TCP client to the TLS one.
        let mut p = Raw::connect(plain, Protocol::V5, "plain-pub").await;
        p.publish("t/tls", b"over tls", QoS::AtLeastOnce, false)
            .await;
        assert_eq!(&c.recv_publish().await.payload[..], b"over tls");
        c.disconnect().await;
        p.disconnect().await;
    }
}

#[tokio::test]
async fn mutual_tls_names_the_client_by_its_certificate() {
    let tls = Tls::new("mtls");
    let acl = write(
        &tls.dir,
        "acl",
        "user sensor-1\ntopic readwrite sensors/1/#\n",
    );
    let passwd = write(&tls.dir, "passwd", "");
    let config = BrokerConfig {
        acl_file: Some(acl),
        password_file: Some(passwd),
        allow_anonymous: Some(false),
        ..base()
    };
    let listener = ListenerConfig {
        use_identity_as_username: true,
        ..tls.mutual(TransportKind::Tls)
    };
    let server = serve(config, vec![listener]).await;
    let addr = server.addrs[1];
    let id = tls.ca.issue("sensor-1", &[], false);
    let s = connect_tls(addr, client_config(&tls.ca.pem(), Some(&id), &[]))
        .await
        .unwrap();
    // The certificate is the credential: no user name or password sent.
    let (mut c, ack) = Raw::over(s, Protocol::V5).handshake("s1", |_| {}).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    // The ACL applies to the certificate's name: its own subtree, and
    // nothing else.
    let granted = c.subscribe("sensors/1/#", QoS::AtLeastOnce).await;
    assert_eq!(granted.reason_codes, [ReasonCode::GRANTED_QOS_1]);
    let denied = c.subscribe("sensors/2/#", QoS::AtLeastOnce).await;
    assert_eq!(denied.reason_codes, [ReasonCode::NOT_AUTHORIZED]);
    c.publish("sensors/1/t", b"mine", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(&c.recv_publish().await.payload[..], b"mine");
}

#[tokio::test]
async fn bad_certificates_are_refused_and_others_served() {
    let tls = Tls::new("badcert");
    let server = serve(base(), vec![tls.mutual(TransportKind::Tls)]).await;
    let addrs = &server.addrs;
    let (plain, addr) = (addrs[0], addrs[1]);
    let other_ca = Ca::new("someone else");
    let cases = [
        ("no certificate", None),
        ("another CA's", Some(other_ca.issue("mallory", &[], false))),
        ("expired", Some(tls.ca.issue("old", &[], true))),
    ];
    for (what, id) in cases {
        let config = client_config(&tls.ca.pem(), id.as_ref(), &[]);
        // TLS 1.3 clients finish first; the server's verdict comes after.
        if let Ok(s) = connect_tls(addr, config).await {
            let (mut r, mut w) = tokio::io::split(s);
            let _ = w.write_all(&[0x10, 0x00]).await;
            assert!(
                refused_without_connack(&mut r, WAIT).await,
                "{what}: still open"
            );
        }
        still_serving(plain).await;
    }
    // Positive control: a good certificate gets through.
    let id = tls.ca.issue("good", &[], false);
    let s = connect_tls(addr, client_config(&tls.ca.pem(), Some(&id), &[]))
        .await
        .unwrap();
    let (_c, ack) = Raw::over(s, Protocol::V5).handshake("good", |_| {}).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
}

#[tokio::test]
async fn wrong_protocols_on_a_port_close_only_that_connection() {
    let tls = Tls::new("mixup");
    let mut config = base();
    config.limits.connect_timeout = 2;
    let server = serve(config, vec![tls.listener(TransportKind::Tls)]).await;
    let addrs = &server.addrs;
    let (plain, tls_addr) = (addrs[0], addrs[1]);
    // Plain MQTT to the TLS port.
    let mut s = TcpStream::connect(tls_addr).await.unwrap();
    s.write_all(&[0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 30, 0, 0])
        .await
        .unwrap();
    assert!(refused_without_connack(&mut s, WAIT).await);
    still_serving(plain).await;
    // TLS to the plain port.
    let r = connect_tls(plain, client_config(&tls.ca.pem(), None, &[])).await;
    assert!(
        r.is_err(),
        "a TLS handshake with a plain MQTT port succeeded"
    );
    still_serving(plain).await;
    // A handshake that stalls after its first byte ends at the deadline.
    let mut s = TcpStream::connect(tls_addr).await.unwrap();
    s.write_all(&[0x16]).await.unwrap();
    let started = std::time::Instant::now();
    assert!(refused_without_connack(&mut s, WAIT).await);
    assert!(started.elapsed() >= Duration::from_millis(1500));
    still_serving(plain).await;
    // Positive control: the TLS port does serve TLS.
    let s = connect_tls(tls_addr, client_config(&tls.ca.pem(), None, &[]))
        .await
        .unwrap();
    let (_c, ack) = Raw::over(s, Protocol::V5).handshake("ok", |_| {}).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
}

#[tokio::test]
async fn certificates_reload_without_dropping_connections() {
    let tls = Tls::new("reload");
    let server = serve(base(), vec![tls.listener(TransportKind::Tls)]).await;
    let addr = server.addrs[1];
    let certificates = server.certificates.clone();
    let s = connect_tls(addr, client_config(&tls.ca.pem(), None, &[]))
        .await
        .unwrap();
    let mut before = Raw::over(s, Protocol::V5)
        .handshake("before", |_| {})
        .await
        .0;
    before.subscribe("t/reload", QoS::AtLeastOnce).await;
    // A new CA and server certificate in place of the old.
    let new_ca = Ca::new("petrel test CA, renewed");
    let new = new_ca.server();
    write(&tls.dir, "server.pem", &new.cert);
    write(&tls.dir, "server.key", &new.key);
    assert_eq!(certificates.reload().unwrap(), 1);
    // New connections get the new certificate: the old CA no longer
    // vouches for it, the new one does.
    let old = connect_tls(addr, client_config(&tls.ca.pem(), None, &[])).await;
    assert!(old.is_err());
    let s = connect_tls(addr, client_config(&new_ca.pem(), None, &[]))
        .await
        .unwrap();
    let mut after = Raw::over(s, Protocol::V5)
        .handshake("after", |_| {})
        .await
        .0;
    // The connection made before the reload still works.
    after
        .publish("t/reload", b"still here", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(&before.recv_publish().await.payload[..], b"still here");
    // A broken file is refused and the certificate in force stays.
    write(&tls.dir, "server.key", "not a key");
    assert!(certificates.reload().is_err());
    let s = connect_tls(addr, client_config(&new_ca.pem(), None, &[])).await;
    assert!(s.is_ok());
    let _ = tls.server;
}

/// A WebSocket client request for `url` offering `protocols`.
fn ws_request(
    url: &str,
    protocols: Option<&str>,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = url.into_client_request().unwrap();
    if let Some(p) = protocols {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    req
}

fn encode(packet: Packet, protocol: Protocol) -> Vec<u8> {
    let mut b = bytes::BytesMut::new();
    packet.encode(protocol, &mut b).unwrap();
    b.to_vec()
}

fn connect_packet(id: &str) -> Packet {
    let mut c = petrel_codec::Connect::new(
        Protocol::V5,
        petrel_codec::MqttString::try_from(id).unwrap(),
    );
    c.keep_alive = 30;
    Packet::Connect(Box::new(c))
}

/// A WebSocket client of `url` speaking `protocol`, having offered the
/// subprotocol "mqtt" and been answered with it ([MQTT-6.0.0-4]).
async fn ws_open(
    url: &str,
    protocol: Protocol,
) -> Ws<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
    let (ws, response) = tokio_tungstenite::connect_async(ws_request(url, Some("mqtt")))
        .await
        .unwrap();
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "mqtt"
    );
    Ws::speaking(ws, protocol)
}

/// A WebSocket client and what it has read but not yet decoded.
struct Ws<S> {
    ws: tokio_tungstenite::WebSocketStream<S>,
    buf: bytes::BytesMut,
    protocol: Protocol,
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Ws<S> {
    fn new(ws: tokio_tungstenite::WebSocketStream<S>) -> Self {
        Self::speaking(ws, Protocol::V5)
    }

    fn speaking(ws: tokio_tungstenite::WebSocketStream<S>, protocol: Protocol) -> Self {
        Self {
            ws,
            buf: bytes::BytesMut::new(),
            protocol,
        }
    }

    async fn send(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }

    async fn send_packet(&mut self, p: Packet) {
        self.send(Message::binary(encode(p, self.protocol))).await;
    }

    /// The next packet, read from as many binary messages as it takes.
    async fn packet(&mut self) -> Option<Packet> {
        let limits = petrel_codec::Limits::default();
        loop {
            if let Ok(Some(p)) = Packet::decode(&mut self.buf, Some(self.protocol), &limits) {
                return Some(p);
            }
            match tokio::time::timeout(WAIT, self.ws.next()).await.ok()?? {
                Ok(Message::Binary(b)) => self.buf.extend_from_slice(&b),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// A CONNECT split over two frames (cut `at` bytes in), then a
    /// SUBSCRIBE to `filter` and a PINGREQ joined in one frame: each is
    /// answered (SUBACK and PINGRESP in either order: the PINGRESP needs
    /// no decision).
    async fn hello_split_and_joined(&mut self, connect: Packet, at: usize, filter: &str) {
        let connect = encode(connect, self.protocol);
        let (a, b) = connect.split_at(at);
        self.send(Message::binary(a.to_vec())).await;
        self.send(Message::binary(b.to_vec())).await;
        assert!(matches!(self.packet().await, Some(Packet::ConnAck(_))));
        let mut both = encode(subscribe(filter), self.protocol);
        both.extend(encode(Packet::PingReq, self.protocol));
        self.send(Message::binary(both)).await;
        let got = [self.packet().await, self.packet().await];
        assert!(
            got.iter().any(|p| matches!(p, Some(Packet::SubAck(_)))),
            "{got:?}"
        );
        assert!(
            got.iter().any(|p| matches!(p, Some(Packet::PingResp))),
            "{got:?}"
        );
    }

    /// CONNECT as `id` and subscribe to `filter`.
    async fn hello(&mut self, id: &str, filter: &str) {
        self.send_packet(connect_packet(id)).await;
        assert!(matches!(self.packet().await, Some(Packet::ConnAck(_))));
        self.send_packet(subscribe(filter)).await;
        assert!(matches!(self.packet().await, Some(Packet::SubAck(_))));
    }

    /// The close frame's status code, once it comes.
    async fn close_code(&mut self) -> Option<u16> {
        while let Ok(Some(m)) = tokio::time::timeout(WAIT, self.ws.next()).await {
            match m {
                Ok(Message::Close(f)) => return Some(f.map_or(1005, |f| u16::from(f.code))),
                Err(_) => return None,
                Ok(_) => {}
            }
        }
        None
    }
}

fn subscribe(f: &str) -> Packet {
    Packet::Subscribe(petrel_codec::Subscribe {
        packet_id: support::pid(1),
        properties: petrel_codec::Properties::new(),
        subscriptions: vec![petrel_codec::Subscription {
            filter: support::filter(f),
            options: petrel_codec::SubscriptionOptions::qos(QoS::AtMostOnce),
        }],
    })
}

/// A broker with a plain TCP listener and a WebSocket one, in that order.
async fn ws_server() -> Running {
    let ws = ListenerConfig {
        transport: TransportKind::Ws,
        bind: local(),
        ..ListenerConfig::default()
    };
    serve(base(), vec![ws]).await
}

/// Checks 5.0: [MQTT-6.0.0-4] (the server selects the subprotocol
/// "mqtt"), [MQTT-6.0.0-2] (a packet split over two frames, two packets
/// in one frame, are read as packets) and [MQTT-6.0.0-1] (packets travel
/// in binary frames both ways); the 3.1.1 client is
/// `websocket_serves_3_1_1_in_binary_frames`.
#[tokio::test]
async fn websocket_carries_packets_split_and_joined() {
    let server = ws_server().await;
    let addrs = &server.addrs;
    let (plain, ws_addr) = (addrs[0], addrs[1]);
    let url = format!("ws://{ws_addr}/mqtt");
    let mut ws = ws_open(&url, Protocol::V5).await;
    ws.hello_split_and_joined(connect_packet("ws-c"), 5, "t/ws")
        .await;
    // A WebSocket ping is answered with a pong.
    ws.send(Message::Ping(b"hi".to_vec().into())).await;
    let pong = tokio::time::timeout(WAIT, ws.ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pong, Message::Pong(b"hi".to_vec().into()));
    // A message from TCP reaches the WebSocket client.
    let mut p = Raw::connect(plain, Protocol::V5, "tcp-pub").await;
    p.publish("t/ws", b"to the browser", QoS::AtMostOnce, false)
        .await;
    match ws.packet().await {
        Some(Packet::Publish(m)) => assert_eq!(&m.payload[..], b"to the browser"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    // A close frame is echoed.
    ws.send(Message::Close(None)).await;
    assert!(ws.close_code().await.is_some());
}

/// Checks 5.0: [MQTT-6.0.0-1]: a frame that is not binary (text) makes
/// the server close the connection (1003), as an oversized one does
/// (1009); the others, and a plain TCP client, are still served.
#[tokio::test]
async fn websocket_bad_input_closes_only_that_connection() {
    let mut config = base();
    config.limits.max_packet_size = 1024;
    let server = serve(
        config,
        vec![ListenerConfig {
            transport: TransportKind::Ws,
            bind: local(),
            websocket_path: Some("/mqtt".into()),
            ..ListenerConfig::default()
        }],
    )
    .await;
    let addrs = &server.addrs;
    let (plain, ws_addr) = (addrs[0], addrs[1]);
    let url = format!("ws://{ws_addr}/mqtt");
    // Upgrades refused in HTTP: a wrong subprotocol, none, a wrong path.
    for (url, proto, status) in [
        (url.clone(), Some("chat"), 400),
        (url.clone(), None, 400),
        (format!("ws://{ws_addr}/other"), Some("mqtt"), 404),
    ] {
        match tokio_tungstenite::connect_async(ws_request(&url, proto)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status().as_u16(), status, "{url} {proto:?}")
            }
            other => panic!("{url} {proto:?}: {:?}", other.map(|_| ())),
        }
        still_serving(plain).await;
    }
    // Plain HTTP, no upgrade at all.
    let mut s = TcpStream::connect(ws_addr).await.unwrap();
    s.write_all(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 426"), "{answer}");
    still_serving(plain).await;
    // An upgrade request past 8 KiB: 431, never a buffer that grows.
    let mut s = TcpStream::connect(ws_addr).await.unwrap();
    let huge = format!(
        "GET /mqtt HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    let _ = s.write_all(huge.as_bytes()).await;
    let mut answer = Vec::new();
    // Answered and closed at once (the 431 may be lost to the reset that
    // closing with unread bytes sends); without the bound the broker would
    // wait for the rest until the connect timeout, past WAIT.
    let ended = tokio::time::timeout(WAIT, s.read_to_end(&mut answer)).await;
    assert!(ended.is_ok(), "the broker kept reading an endless request");
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 431"),
        "{answer:?}"
    );
    still_serving(plain).await;
    // Not HTTP at all.
    let mut s = TcpStream::connect(ws_addr).await.unwrap();
    s.write_all(&[
        0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 30, 0, 0, b'\r', b'\n', b'\r', b'\n',
    ])
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut answer))
        .await
        .unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 400"), "{answer:?}");
    still_serving(plain).await;
    // After the upgrade: a text frame (1003), a frame over the packet
    // limit (1009).
    for (bad, code) in [
        (Message::text("hello"), 1003),
        (Message::binary(vec![0u8; 4096]), 1009),
    ] {
        let (ws, _) = tokio_tungstenite::connect_async(ws_request(&url, Some("mqtt")))
            .await
            .unwrap();
        let mut ws = Ws::new(ws);
        ws.hello("ws-bad", "t/bad").await;
        ws.send(bad).await;
        assert_eq!(ws.close_code().await, Some(code));
        still_serving(plain).await;
    }
}

/// Checks 3.1.1: [MQTT-6.0.0-4] (the server answers the subprotocol
/// "mqtt"), [MQTT-6.0.0-2] (a CONNECT split over two frames; SUBSCRIBE
/// and PINGREQ joined in one) and [MQTT-6.0.0-1] (packets come back in
/// binary frames; a text frame closes the connection, 1003), with a 3.1.1
/// client; a message from TCP arrives, the control for the close.
#[tokio::test]
async fn websocket_serves_3_1_1_in_binary_frames() {
    let server = ws_server().await;
    let (plain, ws_addr) = (server.addrs[0], server.addrs[1]);
    let url = format!("ws://{ws_addr}/mqtt");
    let mut ws = ws_open(&url, Protocol::V3_1_1).await;
    let mut c = petrel_codec::Connect::new(
        Protocol::V3_1_1,
        petrel_codec::MqttString::from_static("ws-311"),
    );
    c.keep_alive = 30;
    ws.hello_split_and_joined(Packet::Connect(Box::new(c)), 3, "t/ws311")
        .await;
    let mut p = Raw::connect(plain, Protocol::V3_1_1, "tcp-pub").await;
    p.publish("t/ws311", b"framed", QoS::AtMostOnce, false)
        .await;
    // Read the frame itself: binary, holding the whole PUBLISH.
    let frame = tokio::time::timeout(WAIT, ws.ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Message::Binary(bytes) = frame else {
        panic!("not a binary frame: {frame:?}")
    };
    let mut buf = bytes::BytesMut::from(&bytes[..]);
    match Packet::decode(
        &mut buf,
        Some(Protocol::V3_1_1),
        &petrel_codec::Limits::default(),
    ) {
        Ok(Some(Packet::Publish(m))) => assert_eq!(&m.payload[..], b"framed"),
        other => panic!("{other:?}"),
    }
    ws.send(Message::text("not binary")).await;
    assert_eq!(ws.close_code().await, Some(1003));
    still_serving(plain).await;
}

#[tokio::test]
async fn secure_websocket_serves_mqtt() {
    let tls = Tls::new("wss");
    let server = serve(base(), vec![tls.listener(TransportKind::Wss)]).await;
    let addrs = &server.addrs;
    let (plain, addr) = (addrs[0], addrs[1]);
    let s = connect_tls(addr, client_config(&tls.ca.pem(), None, &[b"http/1.1"]))
        .await
        .unwrap();
    let url = format!("wss://localhost:{}/mqtt", addr.port());
    let (ws, _) = tokio_tungstenite::client_async(ws_request(&url, Some("mqtt")), s)
        .await
        .unwrap();
    let mut ws = Ws::new(ws);
    ws.hello("wss-c", "t/wss").await;
    let mut p = Raw::connect(plain, Protocol::V5, "tcp-pub").await;
    p.publish("t/wss", b"secure", QoS::AtMostOnce, false).await;
    match ws.packet().await {
        Some(Packet::Publish(m)) => assert_eq!(&m.payload[..], b"secure"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

#[tokio::test]
async fn unix_socket_serves_mqtt_with_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let path = dir("unix").join("petrel.sock");
    let server = serve(
        base(),
        vec![ListenerConfig {
            transport: TransportKind::Unix,
            path: Some(path.clone()),
            mode: Some("0600".into()),
            ..ListenerConfig::default()
        }],
    )
    .await;
    let plain = server.addrs[0];
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let s = tokio::net::UnixStream::connect(&path).await.unwrap();
    let mut c = Raw::over(s, Protocol::V3_1_1)
        .handshake("unix-c", |_| {})
        .await
        .0;
    c.subscribe("t/unix", QoS::AtLeastOnce).await;
    let mut p = Raw::connect(plain, Protocol::V5, "tcp-pub").await;
    p.publish("t/unix", b"local", QoS::AtLeastOnce, false).await;
    assert_eq!(&c.recv_publish().await.payload[..], b"local");
    server.task.abort();
}

#[tokio::test]
async fn proxy_protocol_names_the_client_and_bad_headers_close() {
    let d = dir("proxy");
    let passwd = write(&d, "passwd", "");
    let mut config = BrokerConfig {
        password_file: Some(passwd),
        allow_anonymous: Some(true),
        ..base()
    };
    // One failure from an address, then its attempts are refused (the
    // delay exceeds the connect timeout).
    config.limits.login_address_free_failures = 1;
    config.limits.login_free_failures = 1;
    config.limits.login_delay = 30;
    config.limits.login_delay_max = 30;
    config.limits.connect_timeout = 2;
    let server = serve(
        config,
        vec![ListenerConfig {
            bind: local(),
            proxy_protocol: true,
            ..ListenerConfig::default()
        }],
    )
    .await;
    let addrs = &server.addrs;
    let (plain, addr) = (addrs[0], addrs[1]);
    let login = |from: &'static str| async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("PROXY TCP4 {from} 10.0.0.1 40000 1883\r\n").as_bytes())
            .await
            .unwrap();
        let (_, ack) = Raw::over(s, Protocol::V5)
            .handshake("p", |c| {
                c.username = Some(petrel_codec::MqttString::try_from("u").unwrap());
                c.password = Some(bytes::Bytes::from_static(b"wrong"));
            })
            .await;
        ack.reason_code
    };
    assert_eq!(
        login("192.0.2.7").await,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD
    );
    // The same address again, past its free failures: throttled.
    let mut again = login("192.0.2.7").await;
    if again == ReasonCode::BAD_USER_NAME_OR_PASSWORD {
        again = login("192.0.2.7").await;
    }
    assert_eq!(again, ReasonCode::SERVER_BUSY);
    // Another address named by the header, over the same loopback socket
    // address: judged on its own.
    assert_eq!(
        login("192.0.2.8").await,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD
    );
    // A header that lies, one that is not there, one that never ends.
    for bad in [
        &b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n"[..],
        &[0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 30, 0, 0],
        b"PROXY TCP4 192.0.2.9 10.0",
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(bad).await.unwrap();
        assert!(refused_without_connack(&mut s, WAIT).await, "{bad:?}");
        still_serving(plain).await;
    }
}

#[tokio::test]
async fn listeners_limit_versions_methods_and_connections() {
    let d = dir("rules");
    // alice:secret, made by mosquitto_passwd's $7$ scheme elsewhere in the
    // suite; here the file is empty and anonymous access decides.
    let passwd = write(&d, "passwd", "");
    let config = BrokerConfig {
        password_file: Some(passwd),
        allow_anonymous: Some(true),
        ..base()
    };
    let server = serve(
        config,
        vec![
            ListenerConfig {
                bind: local(),
                protocols: Some(vec![ProtocolVersion::V5]),
                max_connections: Some(1),
                ..ListenerConfig::default()
            },
            ListenerConfig {
                bind: local(),
                auth_methods: Some(vec!["password_file".into()]),
                ..ListenerConfig::default()
            },
        ],
    )
    .await;
    let addrs = &server.addrs;
    let (plain, v5_only, no_anon) = (addrs[0], addrs[1], addrs[2]);
    // 3.1.1 refused where only 5.0 is allowed (return code 1), accepted
    // on the plain listener.
    let (_, ack) = Raw::connect_with(v5_only, Protocol::V3_1_1, "old", |_| {}).await;
    assert_eq!(ack.reason_code, ReasonCode::UNSUPPORTED_PROTOCOL_VERSION);
    let (_, ack) = Raw::connect_with(plain, Protocol::V3_1_1, "old", |_| {}).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    // One connection at a time on the 5.0 listener.
    let first = Raw::connect(v5_only, Protocol::V5, "first").await;
    let mut second = TcpStream::connect(v5_only).await.unwrap();
    assert!(refused_without_connack(&mut second, WAIT).await);
    drop(first);
    // Anonymous access is allowed on the broker, not on the listener that
    // allows only the password file.
    let (_, ack) = Raw::connect_with(no_anon, Protocol::V5, "anon", |_| {}).await;
    assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
    let (_, ack) = Raw::connect_with(plain, Protocol::V5, "anon", |_| {}).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
}

#[tokio::test]
async fn quiet_tls_websocket_and_quic_connections_hibernate_and_wake() {
    let tls = Tls::new("hib");
    let mut config = base();
    config.limits.hibernate_after = 1;
    let server = serve(
        config,
        vec![
            tls.listener(TransportKind::Tls),
            tls.listener(TransportKind::Wss),
            ListenerConfig {
                transport: TransportKind::Ws,
                bind: local(),
                ..ListenerConfig::default()
            },
            tls.listener(TransportKind::Quic),
        ],
    )
    .await;
    let addrs = &server.addrs;
    let endpoint = quic_client(&tls.ca.pem(), &[b"mqtt"]);
    let conn = endpoint
        .connect(addrs[4], "localhost")
        .unwrap()
        .await
        .unwrap();
    let (send, recv) = conn.open_bi().await.unwrap();
    let mut q = Raw::over(tokio::io::join(recv, send), Protocol::V5)
        .handshake("hib-quic", |_| {})
        .await
        .0;
    q.subscribe("t/hib", QoS::AtLeastOnce).await;
    let s = connect_tls(addrs[1], client_config(&tls.ca.pem(), None, &[]))
        .await
        .unwrap();
    let mut t = Raw::over(s, Protocol::V5)
        .handshake("hib-tls", |_| {})
        .await
        .0;
    t.subscribe("t/hib", QoS::AtLeastOnce).await;
    let s = connect_tls(addrs[2], client_config(&tls.ca.pem(), None, &[b"http/1.1"]))
        .await
        .unwrap();
    let url = format!("wss://localhost:{}/mqtt", addrs[2].port());
    let (wss, _) = tokio_tungstenite::client_async(ws_request(&url, Some("mqtt")), s)
        .await
        .unwrap();
    let mut wss = Ws::new(wss);
    wss.hello("hib-wss", "t/hib").await;
    let url = format!("ws://{}/mqtt", addrs[3]);
    let (ws, _) = tokio_tungstenite::connect_async(ws_request(&url, Some("mqtt")))
        .await
        .unwrap();
    let mut ws = Ws::new(ws);
    ws.hello("hib-ws", "t/hib").await;
    // All four fall asleep.
    let deadline = std::time::Instant::now() + WAIT;
    while server.broker.stats().hibernating < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            server.broker.stats()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A message wakes each, and arrives.
    let mut p = Raw::connect(addrs[0], Protocol::V5, "hib-pub").await;
    p.publish("t/hib", b"wake up", QoS::AtMostOnce, false).await;
    assert_eq!(&t.recv_publish().await.payload[..], b"wake up");
    assert_eq!(&q.recv_publish().await.payload[..], b"wake up");
    // Gone, so that only the four can sleep.
    p.disconnect().await;
    for got in [wss.packet().await, ws.packet().await] {
        match got {
            Some(Packet::Publish(m)) => assert_eq!(&m.payload[..], b"wake up"),
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    // And the peer's bytes wake them too: a ping after another nap.
    while server.broker.stats().hibernating < 4 {
        assert!(
            std::time::Instant::now() < deadline + WAIT,
            "{:?}",
            server.broker.stats()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.send(Packet::PingReq).await;
    assert!(matches!(t.recv().await, Some(Packet::PingResp)));
    ws.send_packet(Packet::PingReq).await;
    assert!(matches!(ws.packet().await, Some(Packet::PingResp)));
    wss.send_packet(Packet::PingReq).await;
    assert!(matches!(wss.packet().await, Some(Packet::PingResp)));
    q.send(Packet::PingReq).await;
    assert!(matches!(q.recv().await, Some(Packet::PingResp)));
    // A QUIC peer that goes away while its connection sleeps (no datagram
    // on a socket of its own to say so) is noticed: the connection wakes
    // and ends.
    while server.broker.stats().hibernating < 4 {
        assert!(
            std::time::Instant::now() < deadline + 2 * WAIT,
            "{:?}",
            server.broker.stats()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = server.broker.stats().clients_connected;
    conn.close(0u32.into(), b"bye");
    while server.broker.stats().clients_connected >= before {
        assert!(
            std::time::Instant::now() < deadline + 3 * WAIT,
            "{:?}",
            server.broker.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.broker.stats().hibernating, 3);
}

/// A QUIC client endpoint trusting `ca`, offering `alpn`.
fn quic_client(ca: &str, alpn: &[&[u8]]) -> quinn::Endpoint {
    let mut tls = client_config(ca, None, alpn);
    tls.enable_early_data = false;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
    endpoint
}

#[tokio::test]
async fn quic_serves_mqtt_on_one_stream_and_follows_a_moving_client() {
    let tls = Tls::new("quic");
    let server = serve(base(), vec![tls.listener(TransportKind::Quic)]).await;
    let addrs = &server.addrs;
    let (plain, quic) = (addrs[0], addrs[1]);
    let endpoint = quic_client(&tls.ca.pem(), &[b"mqtt"]);
    let conn = endpoint.connect(quic, "localhost").unwrap().await.unwrap();
    assert_eq!(
        conn.handshake_data()
            .unwrap()
            .downcast::<quinn::crypto::rustls::HandshakeData>()
            .unwrap()
            .protocol,
        Some(b"mqtt".to_vec())
    );
    let (send, recv) = conn.open_bi().await.unwrap();
    let mut c = Raw::over(tokio::io::join(recv, send), Protocol::V5)
        .handshake("quic-c", |_| {})
        .await
        .0;
    c.subscribe("t/quic", QoS::AtLeastOnce).await;
    let mut p = Raw::connect(plain, Protocol::V5, "tcp-pub").await;
    p.publish("t/quic", b"over quic", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(&c.recv_publish().await.payload[..], b"over quic");
    // The client moves to another address (a new socket, as a phone
    // changing networks): the connection and its session go on.
    let before = endpoint.local_addr().unwrap();
    endpoint
        .rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .unwrap();
    assert_ne!(endpoint.local_addr().unwrap(), before);
    c.send(Packet::PingReq).await;
    assert!(matches!(c.recv().await, Some(Packet::PingResp)));
    p.publish("t/quic", b"after moving", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(&c.recv_publish().await.payload[..], b"after moving");
}

#[tokio::test]
async fn quic_with_the_wrong_alpn_is_refused_and_others_served() {
    let tls = Tls::new("quic-alpn");
    let server = serve(base(), vec![tls.listener(TransportKind::Quic)]).await;
    let addrs = &server.addrs;
    let (plain, quic) = (addrs[0], addrs[1]);
    let wrong = quic_client(&tls.ca.pem(), &[b"h3"]);
    let r = tokio::time::timeout(WAIT, wrong.connect(quic, "localhost").unwrap()).await;
    assert!(matches!(r, Ok(Err(_))), "a QUIC client speaking h3 got in");
    still_serving(plain).await;
    // Positive control: the right ALPN gets through.
    let right = quic_client(&tls.ca.pem(), &[b"mqtt"]);
    let conn = right.connect(quic, "localhost").unwrap().await.unwrap();
    let (send, recv) = conn.open_bi().await.unwrap();
    let (c, ack) = Raw::over(tokio::io::join(recv, send), Protocol::V3_1_1)
        .handshake("quic-ok", |_| {})
        .await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    // When the MQTT connection ends, the broker closes the QUIC one (after
    // the peer has what was written), rather than leaving it to time out.
    assert!(conn.close_reason().is_none(), "open while MQTT runs");
    c.disconnect().await;
    let closed = tokio::time::timeout(WAIT, conn.closed()).await;
    assert!(closed.is_ok(), "the QUIC connection stayed open");
}

#[tokio::test]
async fn quic_endpoint_shrugs_off_garbage_datagrams() {
    let tls = Tls::new("quic-garbage");
    let server = serve(base(), vec![tls.listener(TransportKind::Quic)]).await;
    let (plain, quic) = (server.addrs[0], server.addrs[1]);
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // Empty, tiny, a long header that lies about its lengths, a padded
    // Initial-looking datagram of junk, a short header for no connection.
    let mut initial = vec![0xc0, 0, 0, 0, 1, 20];
    initial.resize(1200, 0xab);
    let junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x40],
        vec![0xc0, 0, 0, 0, 1, 255, 1, 2, 3],
        initial,
        vec![0x41; 40],
        (0..=255u8).collect(),
    ];
    for _ in 0..20 {
        for d in &junk {
            udp.send_to(d, quic).await.unwrap();
        }
    }
    still_serving(plain).await;
    // Positive control: the QUIC listener still takes a real client.
    let endpoint = quic_client(&tls.ca.pem(), &[b"mqtt"]);
    let conn = endpoint.connect(quic, "localhost").unwrap().await.unwrap();
    let (send, recv) = conn.open_bi().await.unwrap();
    let (_c, ack) = Raw::over(tokio::io::join(recv, send), Protocol::V5)
        .handshake("after-garbage", |_| {})
        .await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
}

#[tokio::test]
async fn listeners_bind_ipv6() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIP: this machine has no IPv6 loopback");
        return;
    }
    let server = serve(
        base(),
        vec![ListenerConfig::tcp("[::1]:0".parse().unwrap())],
    )
    .await;
    let v6 = server.addrs[1];
    assert!(v6.is_ipv6());
    let (_c, ack) = Raw::connect_with(v6, Protocol::V5, "v6", |_| {}).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
}
