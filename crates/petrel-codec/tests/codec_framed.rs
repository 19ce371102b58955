//! The tokio-util codec over a real byte stream: partial frames, several
//! frames per read, a version learned from CONNECT, oversize and garbage.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use petrel_codec::*;
use tokio::io::AsyncWriteExt;
use tokio_util::codec::{Decoder, Framed, FramedRead};

fn connect(protocol: Protocol) -> Packet {
    Packet::Connect(Box::new(Connect::new(
        protocol,
        MqttString::from_static("framed"),
    )))
}

fn publish(n: u8) -> Packet {
    let mut p = Publish::new(TopicName::from_static("t/x"), Bytes::from(vec![n; 300]));
    p.qos = QosPid::AtLeastOnce(PacketId::new(u16::from(n) + 1).unwrap());
    Packet::Publish(p)
}

#[tokio::test]
async fn client_and_server_over_a_duplex_stream() {
    for protocol in [Protocol::V3_1, Protocol::V3_1_1, Protocol::V5] {
        let (a, b) = tokio::io::duplex(64);
        let mut client = Framed::new(a, MqttCodec::new());
        let mut server = Framed::new(b, MqttCodec::new());
        let sent: Vec<Packet> = std::iter::once(connect(protocol))
            .chain((0..20).map(publish))
            .collect();
        let to_send = sent.clone();
        let writer = tokio::spawn(async move {
            for p in to_send {
                client.send(p).await.unwrap();
            }
            client.send(Packet::PingReq).await.unwrap();
            client
        });
        let mut got = Vec::new();
        while got.len() < sent.len() + 1 {
            got.push(server.next().await.unwrap().unwrap());
        }
        assert_eq!(server.codec().protocol(), Some(protocol));
        assert_eq!(&got[..sent.len()], &sent[..]);
        assert_eq!(got[sent.len()], Packet::PingReq);
        let mut client = writer.await.unwrap();
        assert_eq!(client.codec().protocol(), Some(protocol));
        // And back the other way.
        server.send(Packet::PingResp).await.unwrap();
        assert_eq!(client.next().await.unwrap().unwrap(), Packet::PingResp);
    }
}

#[tokio::test]
async fn frames_arriving_byte_by_byte_and_many_per_read() {
    let mut wire = bytes::BytesMut::new();
    let mut enc = MqttCodec::new();
    let packets: Vec<Packet> = std::iter::once(connect(Protocol::V5))
        .chain((0..5).map(publish))
        .collect();
    for p in &packets {
        tokio_util::codec::Encoder::encode(&mut enc, p, &mut wire).unwrap();
    }
    // One byte per write.
    let (mut w, r) = tokio::io::duplex(1);
    let bytes = wire.clone().freeze();
    tokio::spawn(async move {
        for b in bytes.iter() {
            w.write_all(&[*b]).await.unwrap();
        }
    });
    let got: Vec<Packet> = FramedRead::new(r, MqttCodec::new())
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(got, packets);
    // Everything in one read.
    let mut dec = MqttCodec::new();
    let mut buf = wire.clone();
    let mut all = Vec::new();
    while let Some(p) = dec.decode(&mut buf).unwrap() {
        all.push(p);
    }
    assert_eq!(all, packets);
}

#[tokio::test]
async fn oversized_announcement_ends_the_stream_without_buffering() {
    let (mut w, r) = tokio::io::duplex(1024);
    let limits = Limits {
        max_packet_size: 4096,
        ..Limits::default()
    };
    let mut framed = FramedRead::new(r, MqttCodec::with_protocol(Protocol::V3_1_1, limits));
    // A PUBLISH announcing 256 MB, then nothing.
    w.write_all(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]).await.unwrap();
    match framed.next().await {
        Some(Err(CodecError::Decode(DecodeError::PacketTooLarge { size, max: 4096 }))) => {
            assert_eq!(size, 268_435_460)
        }
        other => panic!("{other:?}"),
    }
    assert!(framed.read_buffer().capacity() < 64 * 1024);
}

#[tokio::test]
async fn garbage_first_packet_is_refused() {
    let (mut w, r) = tokio::io::duplex(1024);
    let mut framed = FramedRead::new(r, MqttCodec::new());
    w.write_all(&[0x30, 0x03, 0x00, 0x01, b'a']).await.unwrap();
    let e = framed.next().await.unwrap().unwrap_err();
    assert!(
        matches!(e, CodecError::Decode(DecodeError::FirstPacketNotConnect(_))),
        "{e}"
    );
}

#[tokio::test]
async fn eof_in_the_middle_of_a_frame_is_an_error() {
    let (mut w, r) = tokio::io::duplex(1024);
    let mut framed = FramedRead::new(
        r,
        MqttCodec::with_protocol(Protocol::V3_1_1, Limits::default()),
    );
    w.write_all(&[0x30, 0x10, 0x00, 0x01]).await.unwrap();
    drop(w);
    let e = framed.next().await.unwrap().unwrap_err();
    assert!(matches!(e, CodecError::Io(_)), "{e}");
}
