//! The client over every transport — TCP, TLS, WebSocket, secure
//! WebSocket, a Unix socket, QUIC — against the Petrel broker in this
//! process, with certificates made here; WebSocket framing and TLS
//! versions and suites against small servers that show what arrived; and
//! a first connection that waits for its broker.

mod common;

use std::error::Error as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::certs::Certs;
use common::*;
use futures::{SinkExt, StreamExt};
use petrel_broker::config::{ListenerConfig, ProtocolVersion, TransportKind};
use petrel_broker::{Broker, BrokerConfig, Server};
use petrel_client::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use petrel_client::rustls::{self, CipherSuite, ClientConfig, RootCertStore};
use petrel_client::{
    connect, ClientError, ConnectOptions, LastWill, Properties, Protocol, QoS, ReasonCode,
    TlsOptions, TlsVersion, TopicName, Transport,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A broker with these listeners; their bound addresses (`None` for a
/// Unix socket), or the error binding gave.
async fn broker(
    listeners: Vec<ListenerConfig>,
) -> std::io::Result<(Broker, Vec<Option<SocketAddr>>)> {
    let broker = Broker::new(BrokerConfig {
        listeners,
        sys_interval: 0,
        ..BrokerConfig::default()
    })
    .unwrap();
    let server = Server::bind(broker.clone()).await?;
    let addrs = server.listener_addrs();
    tokio::spawn(server.run());
    Ok((broker, addrs))
}

fn listener(transport: TransportKind, certs: Option<&Certs>) -> ListenerConfig {
    ListenerConfig {
        transport,
        bind: Some("127.0.0.1:0".parse().unwrap()),
        certfile: certs.map(|c| c.cert.clone()),
        keyfile: certs.map(|c| c.key.clone()),
        ..ListenerConfig::default()
    }
}

fn trust(certs: &Certs) -> TlsOptions {
    TlsOptions {
        ca_file: Some(certs.ca.clone()),
        ..TlsOptions::default()
    }
}

/// Subscribe, publish to ourselves at every QoS and both versions —
/// including a message far larger than one WebSocket frame or TLS record
/// — and check each arrives whole.
async fn round_trip(make: impl Fn(Protocol, &str) -> ConnectOptions) {
    for proto in BOTH {
        let (c, mut inbox) = connect(make(proto, "rt")).await.unwrap();
        c.subscribe("rt/#", QoS::ExactlyOnce).await.unwrap();
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let payload = format!("{proto:?} {qos:?}");
            c.publish_to("rt/small", payload.clone(), qos)
                .await
                .unwrap();
            let m = next(&mut inbox).await;
            assert_eq!(m.payload, payload.as_bytes());
            assert_eq!(m.qos.qos(), qos);
        }
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        c.publish_to("rt/big", big.clone(), QoS::AtLeastOnce)
            .await
            .unwrap();
        let m = next(&mut inbox).await;
        assert_eq!(m.topic.as_str(), "rt/big");
        assert!(m.payload == big, "the large message arrived whole");
        c.disconnect().await.unwrap();
    }
}

fn quick(mut o: ConnectOptions) -> ConnectOptions {
    o.reconnect.enabled = false;
    o
}

#[tokio::test]
async fn websocket_to_petrel() {
    let (_b, addrs) = broker(vec![listener(TransportKind::Ws, None)])
        .await
        .unwrap();
    let addr = addrs[0].unwrap();
    round_trip(|proto, id| {
        ConnectOptions::from_url(&format!("ws://127.0.0.1:{}", addr.port()), id)
            .unwrap()
            .protocol(proto)
    })
    .await;
    // The path matters: the broker serves /mqtt only …
    let o =
        ConnectOptions::from_url(&format!("ws://127.0.0.1:{}/other", addr.port()), "x").unwrap();
    let err = connect(quick(o)).await.unwrap_err();
    assert!(matches!(err, ClientError::WebSocket { .. }), "{err:?}");
    assert!(err.source().is_some(), "the WebSocket error is kept");
    // … and a WebSocket client can't talk to a plain MQTT listener.
    let (_b2, tcp) = broker(vec![listener(TransportKind::Tcp, None)])
        .await
        .unwrap();
    let o = ConnectOptions::from_url(&format!("ws://127.0.0.1:{}", tcp[0].unwrap().port()), "x")
        .unwrap();
    assert!(connect(quick(o)).await.is_err());
}

#[tokio::test]
async fn secure_websocket_to_petrel() {
    let certs = Certs::new("wss");
    let (_b, addrs) = broker(vec![listener(TransportKind::Wss, Some(&certs))])
        .await
        .unwrap();
    let port = addrs[0].unwrap().port();
    round_trip(|proto, id| {
        let mut o = ConnectOptions::from_url(&format!("wss://localhost:{port}/mqtt"), id)
            .unwrap()
            .protocol(proto);
        o.tls = Some(trust(&certs));
        o
    })
    .await;
    // The CA matters: the system's roots don't know it.
    let o = ConnectOptions::from_url(&format!("wss://localhost:{port}"), "x").unwrap();
    let err = connect(quick(o)).await.unwrap_err();
    assert!(matches!(err, ClientError::Tls { .. }), "{err:?}");
    // Plain WebSocket to the TLS port fails too.
    let o = ConnectOptions::from_url(&format!("ws://localhost:{port}"), "x").unwrap();
    assert!(connect(quick(o)).await.is_err());
}

#[tokio::test]
async fn tls_to_petrel_with_options_or_an_own_config() {
    let certs = Certs::new("tls");
    let (_b, addrs) = broker(vec![listener(TransportKind::Tls, Some(&certs))])
        .await
        .unwrap();
    let port = addrs[0].unwrap().port();
    let url = format!("mqtts://localhost:{port}");
    round_trip(|proto, id| {
        let mut o = ConnectOptions::from_url(&url, id).unwrap().protocol(proto);
        o.tls = Some(trust(&certs));
        o
    })
    .await;
    // The caller's own rustls configuration, trusting the CA it was given.
    let own = |roots: RootCertStore| {
        #[allow(deprecated)]
        let provider = rustls::crypto::ring::default_provider();
        Arc::new(
            ClientConfig::builder_with_provider(Arc::new(provider))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    };
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(certs.ca_der.clone()))
        .unwrap();
    round_trip(|proto, id| {
        ConnectOptions::new("localhost", port, id)
            .protocol(proto)
            .tls_config(own(roots.clone()))
    })
    .await;
    // The same without the CA: refused, the rustls error kept as the source.
    let o = ConnectOptions::new("localhost", port, "x").tls_config(own(RootCertStore::empty()));
    let err = connect(quick(o)).await.unwrap_err();
    let cause = err.source().and_then(|s| s.downcast_ref::<rustls::Error>());
    assert!(
        matches!(
            cause,
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&format!("localhost:{port}")),
        "{err}"
    );
    // A client certificate whose key is another's is refused before
    // connecting.
    let mut o = ConnectOptions::new("localhost", port, "mismatch");
    o.tls = Some(TlsOptions {
        client_cert: Some((certs.ca.clone(), certs.key.clone())),
        ..trust(&certs)
    });
    let err = connect(quick(o)).await.unwrap_err();
    assert!(
        matches!(
            err.source().and_then(|s| s.downcast_ref::<rustls::Error>()),
            Some(rustls::Error::InconsistentKeys(_))
        ),
        "{err:?}"
    );
    // A directory of CA files works as the CA file does; one without any
    // certificate is refused before connecting.
    let ca_dir = certs.dir().join("cas");
    std::fs::create_dir_all(&ca_dir).unwrap();
    std::fs::write(ca_dir.join("README"), "not a certificate").unwrap();
    let mut o = ConnectOptions::new("localhost", port, "dir");
    o.tls = Some(TlsOptions {
        ca_dir: Some(ca_dir.clone()),
        ..TlsOptions::default()
    });
    let err = connect(quick(o.clone())).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Tls { context, .. } if context.contains("no usable CA")),
        "{err:?}"
    );
    std::fs::copy(&certs.ca, ca_dir.join("ca.pem")).unwrap();
    let (c, _) = connect(quick(o)).await.unwrap();
    c.disconnect().await.unwrap();
}

#[tokio::test]
async fn unix_socket_to_petrel() {
    let dir = std::env::temp_dir().join(format!("petrel-unix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mqtt.sock");
    let (_b, _) = broker(vec![ListenerConfig {
        transport: TransportKind::Unix,
        path: Some(path.clone()),
        ..ListenerConfig::default()
    }])
    .await
    .unwrap();
    let url = format!("unix://{}", path.display());
    round_trip(|proto, id| ConnectOptions::from_url(&url, id).unwrap().protocol(proto)).await;
    // Another path: nothing there, and the error says where.
    let missing = dir.join("none.sock");
    let mut o = ConnectOptions::new("localhost", 0, "x");
    o.transport = Transport::Unix {
        path: missing.clone(),
    };
    let err = connect(quick(o)).await.unwrap_err();
    assert_eq!(err.io_kind(), Some(std::io::ErrorKind::NotFound), "{err:?}");
    assert!(err.to_string().contains(&missing.display().to_string()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn quic_to_petrel() {
    let certs = Certs::new("quic");
    let bound = broker(vec![listener(TransportKind::Quic, Some(&certs))]).await;
    let (_b, addrs) = match bound {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
            panic!("the broker has no QUIC listener yet: {e}")
        }
        Err(e) => panic!("{e}"),
    };
    let port = addrs[0].unwrap().port();
    round_trip(|proto, id| {
        let mut o = ConnectOptions::from_url(&format!("quic://localhost:{port}"), id)
            .unwrap()
            .protocol(proto);
        o.tls = Some(trust(&certs));
        o
    })
    .await;
    // QUIC is TLS 1.3 only.
    let mut o = ConnectOptions::from_url(&format!("quic://localhost:{port}"), "x").unwrap();
    o.tls = Some(TlsOptions {
        versions: vec![TlsVersion::Tls12],
        ..trust(&certs)
    });
    let err = connect(quick(o)).await.unwrap_err();
    assert!(matches!(err, ClientError::Tls { .. }), "{err:?}");
    // So is a configuration of the caller's that leaves TLS 1.3 out.
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let tls12 = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    let o = ConnectOptions::from_url(&format!("quic://localhost:{port}"), "x")
        .unwrap()
        .tls_config(Arc::new(tls12));
    let err = connect(quick(o)).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Tls { context, .. } if context.contains("TLS 1.3")),
        "{err:?}"
    );
    // A normal DISCONNECT reaches the broker before the connection
    // closes: no will. (The control: asking for the will publishes it.)
    let quic = |id: &str| {
        let mut o = ConnectOptions::from_url(&format!("quic://localhost:{port}"), id).unwrap();
        o.tls = Some(trust(&certs));
        o
    };
    let (watcher, mut wills) = connect(quic("watcher")).await.unwrap();
    watcher.subscribe("will/#", QoS::AtLeastOnce).await.unwrap();
    for (reason, expect_will) in [
        (ReasonCode::NORMAL_DISCONNECTION, false),
        (ReasonCode::DISCONNECT_WITH_WILL_MESSAGE, true),
    ] {
        let mut o = quic("mortal");
        o.will = Some(LastWill {
            topic: TopicName::from_static("will/t"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::new(),
        });
        let (c, _) = connect(o).await.unwrap();
        c.disconnect_with(reason, Properties::new()).await.unwrap();
        drop(c);
        if expect_will {
            assert_eq!(&next(&mut wills).await.payload[..], b"gone");
        } else {
            assert!(nothing(&mut wills).await, "no will after {reason}");
        }
    }
    watcher.disconnect().await.unwrap();
    // An untrusted certificate ends the handshake.
    let mut o = ConnectOptions::from_url(&format!("quic://localhost:{port}"), "x").unwrap();
    o.connect_timeout = Duration::from_secs(3);
    let err = connect(quick(o)).await.unwrap_err();
    assert!(matches!(err, ClientError::Quic { .. }), "{err:?}");
}

/// What the WebSocket server of `websocket_frames_are_one_byte_stream`
/// saw of the client's upgrade request.
#[derive(Debug, Default)]
struct Upgrade {
    path: String,
    subprotocols: Option<String>,
}

/// Checks 3.1.1: [MQTT-6.0.0-3], [MQTT-6.0.0-1] and [MQTT-6.0.0-2];
/// 5.0: [MQTT-6.0.0-3], [MQTT-6.0.0-1] and [MQTT-6.0.0-2]: the client
/// offers the subprotocol "mqtt", sends its packets in binary frames,
/// reads packets whatever the frames' boundaries (a CONNACK split over
/// two, two PUBLISHes in one with the second's end in the next), and
/// closes the connection on a text frame, in each version, against a
/// WebSocket server written here.
#[tokio::test]
async fn websocket_frames_are_one_byte_stream() {
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        websocket_frames(protocol).await;
    }
}

async fn websocket_frames(protocol: Protocol) {
    let v5 = protocol == Protocol::V5;
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(async move {
        let (stream, _) = tcp.accept().await.unwrap();
        let mut upgrade = Upgrade::default();
        let mut ws =
            tokio_tungstenite::accept_hdr_async(stream, |req: &Request, mut resp: Response| {
                upgrade.path = req.uri().path().to_string();
                upgrade.subprotocols = req
                    .headers()
                    .get("Sec-WebSocket-Protocol")
                    .map(|v| v.to_str().unwrap().to_string());
                resp.headers_mut()
                    .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
                Ok(resp)
            })
            .await
            .unwrap();
        // CONNECT, in a binary frame.
        let connect = match ws.next().await.unwrap().unwrap() {
            WsMessage::Binary(b) => b,
            other => panic!("CONNECT came as {other:?}"),
        };
        assert_eq!(connect[0], 0x10, "a CONNECT");
        // CONNACK (accepted) split across two frames …
        let (head, rest): (&'static [u8], &'static [u8]) = if v5 {
            (&[0x20, 0x03], &[0x00, 0x00, 0x00])
        } else {
            (&[0x20, 0x02], &[0x00, 0x00])
        };
        ws.send(WsMessage::Binary(Bytes::from_static(head)))
            .await
            .unwrap();
        ws.send(WsMessage::Binary(Bytes::from_static(rest)))
            .await
            .unwrap();
        // … then two QoS 0 PUBLISHes in one frame, the second cut short,
        // its end in the next frame.
        let publish = |topic: &str, payload: &str| {
            let props = usize::from(v5);
            let mut p = vec![0x30, (2 + topic.len() + props + payload.len()) as u8];
            p.extend_from_slice(&(topic.len() as u16).to_be_bytes());
            p.extend_from_slice(topic.as_bytes());
            if v5 {
                p.push(0); // no properties
            }
            p.extend_from_slice(payload.as_bytes());
            p
        };
        let mut both = publish("a/1", "first");
        both.extend(publish("a/2", "second"));
        let cut = both.len() - 3;
        ws.send(WsMessage::Binary(Bytes::copy_from_slice(&both[..cut])))
            .await
            .unwrap();
        ws.send(WsMessage::Binary(Bytes::copy_from_slice(&both[cut..])))
            .await
            .unwrap();
        // The client's own PUBLISH arrives as a binary frame.
        let mut frames = Vec::new();
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Binary(b))) => {
                    let done = b[0] == 0x30;
                    frames.push(b);
                    if done {
                        break;
                    }
                }
                Some(Ok(WsMessage::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("{e}"),
            }
        }
        let _ = seen_tx.send((upgrade, frames));
        // A text frame: the client must close the connection (what it
        // sends first, if anything, is not MQTT's business), where the
        // binary frames before kept it open.
        ws.send(WsMessage::text("not binary")).await.unwrap();
        let closed = tokio::time::timeout(WAIT, async {
            loop {
                match ws.next().await {
                    Some(Ok(m)) if !m.is_close() => {}
                    _ => return,
                }
            }
        })
        .await;
        closed.is_ok()
    });
    let o = ConnectOptions::from_url(&format!("ws://127.0.0.1:{port}"), "frames")
        .unwrap()
        .protocol(protocol);
    let (c, mut inbox) = connect(quick(o)).await.unwrap();
    let m = next(&mut inbox).await;
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("a/1", &b"first"[..]));
    let m = next(&mut inbox).await;
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("a/2", &b"second"[..]));
    c.publish_to("b", "up", QoS::AtMostOnce).await.unwrap();
    let (upgrade, frames) = tokio::time::timeout(WAIT, seen_rx).await.unwrap().unwrap();
    assert_eq!(upgrade.path, "/mqtt");
    assert_eq!(upgrade.subprotocols.as_deref(), Some("mqtt"));
    let last = frames.last().unwrap();
    if v5 {
        assert_eq!(&last[..], &[0x30, 6, 0, 1, b'b', 0, b'u', b'p']);
    } else {
        assert_eq!(&last[..], &[0x30, 5, 0, 1, b'b', b'u', b'p']);
    }
    let closed = tokio::time::timeout(WAIT * 2, server)
        .await
        .unwrap()
        .unwrap();
    assert!(
        closed,
        "{protocol:?}: a text frame did not close the connection"
    );
    let _ = c.disconnect().await;
}

/// A TLS server that answers CONNECT with a 3.1.1 CONNACK and reports the
/// version and suite each handshake chose.
async fn tls_server(
    certs: &Certs,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> (
    u16,
    tokio::sync::mpsc::UnboundedReceiver<(rustls::ProtocolVersion, CipherSuite)>,
) {
    let read = |p: &PathBuf| std::io::BufReader::new(std::fs::File::open(p).unwrap());
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut read(&certs.cert))
        .collect::<Result<_, _>>()
        .unwrap();
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut read(&certs.key))
        .unwrap()
        .unwrap();
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tcp.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let (_, conn) = tls.get_ref();
                let chosen = (
                    conn.protocol_version().unwrap(),
                    conn.negotiated_cipher_suite().unwrap().suite(),
                );
                let _ = tx.send(chosen);
                let mut buf = [0u8; 256];
                if tls.read(&mut buf).await.unwrap_or(0) > 0 {
                    let _ = tls.write_all(&[0x20, 0x02, 0x00, 0x00]).await;
                }
                // Hold the connection until the client goes.
                while tls.read(&mut buf).await.unwrap_or(0) > 0 {}
            });
        }
    });
    (port, rx)
}

#[tokio::test]
async fn tls_versions_and_cipher_suites_are_what_was_asked() {
    let certs = Certs::new("versions");
    let (both, mut chosen) = tls_server(&certs, rustls::ALL_VERSIONS).await;
    let (only13, mut chosen13) = tls_server(&certs, &[&rustls::version::TLS13]).await;
    let opts = |port: u16, versions: Vec<TlsVersion>, suites: Vec<CipherSuite>| {
        let mut o = ConnectOptions::new("localhost", port, "v").protocol(Protocol::V3_1_1);
        o.tls = Some(TlsOptions {
            versions,
            cipher_suites: suites,
            ..trust(&certs)
        });
        quick(o)
    };
    // Connect, and what the server saw chosen.
    async fn check(
        o: ConnectOptions,
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<(rustls::ProtocolVersion, CipherSuite)>,
    ) -> (rustls::ProtocolVersion, CipherSuite) {
        let (c, _) = connect(o).await.unwrap();
        c.disconnect().await.unwrap();
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap()
    }
    // By default the newest version.
    let (v, _) = check(opts(both, vec![], vec![]), &mut chosen).await;
    assert_eq!(v, rustls::ProtocolVersion::TLSv1_3);
    // TLS 1.2 alone, with the one suite named (rcgen's keys are ECDSA).
    let suite = CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256;
    let got = check(
        opts(both, vec![TlsVersion::Tls12], vec![suite]),
        &mut chosen,
    )
    .await;
    assert_eq!(got, (rustls::ProtocolVersion::TLSv1_2, suite));
    // TLS 1.3 with a suite the server would not pick first.
    let suite = CipherSuite::TLS13_CHACHA20_POLY1305_SHA256;
    let got = check(
        opts(both, vec![TlsVersion::Tls13], vec![suite]),
        &mut chosen,
    )
    .await;
    assert_eq!(got, (rustls::ProtocolVersion::TLSv1_3, suite));
    // A server of TLS 1.3 only: asking for 1.3 works, 1.2 alone does not.
    let got = check(opts(only13, vec![TlsVersion::Tls13], vec![]), &mut chosen13).await;
    assert_eq!(got.0, rustls::ProtocolVersion::TLSv1_3);
    let err = connect(opts(only13, vec![TlsVersion::Tls12], vec![]))
        .await
        .unwrap_err();
    assert!(
        err.source()
            .is_some_and(|s| s.downcast_ref::<rustls::Error>().is_some()),
        "{err:?}"
    );
    // A suite *ring* lacks is refused before connecting.
    let err = connect(opts(
        both,
        vec![],
        vec![CipherSuite::TLS_RSA_WITH_AES_128_CBC_SHA],
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(&err, ClientError::Tls { context, .. } if context.contains("not supported")),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_first_connect_waits_for_the_broker_if_asked() {
    // Without retrying: refused at once, the I/O error kept.
    let addr = free_addr();
    let err = connect(quick(options(addr, Protocol::V5, "early")))
        .await
        .unwrap_err();
    assert_eq!(
        err.io_kind(),
        Some(std::io::ErrorKind::ConnectionRefused),
        "{err:?}"
    );
    let io = err
        .source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .expect("the io::Error is the source");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(err.to_string().contains(&addr.to_string()), "{err}");

    // With it: the client starts first, the broker a second later.
    let started = Instant::now();
    let client = tokio::spawn(connect(
        options(addr, Protocol::V5, "early").retry_first_connect(true),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!client.is_finished(), "still trying");
    let (_b, _) = broker(vec![ListenerConfig::tcp(addr)]).await.unwrap();
    let (c, mut inbox) = tokio::time::timeout(WAIT, client)
        .await
        .expect("connected once the broker came")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    c.subscribe("w/t", QoS::AtLeastOnce).await.unwrap();
    c.publish_to("w/t", "here", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(&next(&mut inbox).await.payload[..], b"here");
    c.disconnect().await.unwrap();
}

#[tokio::test]
async fn a_refusal_is_not_retried() {
    let (_b, addrs) = broker(vec![ListenerConfig {
        protocols: Some(vec![ProtocolVersion::V5]),
        ..listener(TransportKind::Tcp, None)
    }])
    .await
    .unwrap();
    let addr = addrs[0].unwrap();
    // The listener takes 5.0: with retrying on, that connects …
    let (c, _) = connect(options(addr, Protocol::V5, "v5").retry_first_connect(true))
        .await
        .unwrap();
    c.disconnect().await.unwrap();
    // … and refuses 3.1.1, which retrying can't change: the answer comes
    // at once.
    let started = Instant::now();
    let err = tokio::time::timeout(
        WAIT,
        connect(options(addr, Protocol::V3_1_1, "v311").retry_first_connect(true)),
    )
    .await
    .expect("not retried")
    .unwrap_err();
    assert!(
        matches!(err, ClientError::Refused(rc) if rc.0 == 0x84),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}
