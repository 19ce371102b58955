//! The client's first packet on every network connection, the first and
//! each after a reconnect, is CONNECT, in 3.1.1 and 5.0. The test's server
//! decodes the first packet as a server does before it knows the version:
//! only a CONNECT decodes then.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use petrel_client::{connect, ConnectOptions, Protocol};
use petrel_codec::{DecodeError, Limits, Packet};
use petrel_session::{Accept, Config, Connection, Event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Accept one connection, read its first packet (which must decode as a
/// CONNECT with no version known) and answer CONNACK; return the socket
/// (to be dropped, ending the connection) and the CONNECT's version.
async fn first_packet(listener: &TcpListener) -> (tokio::net::TcpStream, Protocol) {
    let (mut sock, _) = listener.accept().await.unwrap();
    let mut buf = BytesMut::new();
    let packet = loop {
        assert_ne!(sock.read_buf(&mut buf).await.unwrap(), 0, "closed early");
        if let Some(p) = Packet::decode(&mut buf, None, &Limits::default())
            .unwrap_or_else(|e| panic!("first packet not a CONNECT: {e}"))
        {
            break p;
        }
    };
    let Packet::Connect(c) = &packet else {
        panic!("{packet:?}")
    };
    let protocol = c.protocol;
    let now = Instant::now();
    let mut conn = Connection::server(Config::default(), now);
    conn.handle_packet(now, packet).unwrap();
    while let Some(e) = conn.poll_event() {
        if let Event::ConnectRequest(_) = e {
            conn.accept(now, Accept::default()).unwrap();
        }
    }
    while let Some(p) = conn.poll_transmit() {
        let mut out = BytesMut::new();
        p.encode(protocol, &mut out).unwrap();
        sock.write_all(&out).await.unwrap();
    }
    (sock, protocol)
}

/// Checks [MQTT-3.1.0-1] (the client's side), for the first connection and
/// one made again after the server dropped it.
#[tokio::test]
async fn the_first_packet_of_every_connection_is_connect() {
    // The check can fail: a first packet other than CONNECT does not decode.
    let mut ping = BytesMut::from(&[0xC0u8, 0x00][..]);
    assert!(matches!(
        Packet::decode(&mut ping, None, &Limits::default()),
        Err(DecodeError::FirstPacketNotConnect(_))
    ));
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut o =
            ConnectOptions::new(addr.ip().to_string(), addr.port(), "first").protocol(protocol);
        o.reconnect.min_backoff = Duration::from_millis(20);
        let server = async {
            let (sock, seen) = first_packet(&listener).await;
            assert_eq!(seen, protocol);
            drop(sock);
            let (sock, seen) = first_packet(&listener).await;
            assert_eq!(seen, protocol);
            sock
        };
        let (client, sock) = tokio::time::timeout(Duration::from_secs(10), async {
            let (client, sock) = tokio::join!(connect(o), server);
            (client.unwrap().0, sock)
        })
        .await
        .expect("reconnected");
        drop(client);
        drop(sock);
    }
}
