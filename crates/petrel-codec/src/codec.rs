//! A tokio-util `Decoder`/`Encoder` over the packet codec.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::{DecodeError, EncodeError, Limits, Packet, Protocol};

/// Errors of [`MqttCodec`]: the transport's, or the codec's. Any of them ends
/// the stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The underlying transport failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something that is not valid MQTT.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A packet could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// MQTT framing for `tokio_util::codec::Framed`.
///
/// The protocol version is learned from the first CONNECT that passes through,
/// decoded (server side) or encoded (client side); until then only a CONNECT
/// can be decoded. Partial frames wait for more bytes; several frames in one
/// read come out one by one; a frame over the size limit is refused from its
/// fixed header.
#[derive(Clone, Debug, Default)]
pub struct MqttCodec {
    protocol: Option<Protocol>,
    limits: Limits,
}

impl MqttCodec {
    /// A codec that learns its version from CONNECT, with default limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// A codec with the given limits.
    pub fn with_limits(limits: Limits) -> Self {
        Self {
            protocol: None,
            limits,
        }
    }

    /// A codec for a connection whose version is already known.
    pub fn with_protocol(protocol: Protocol, limits: Limits) -> Self {
        Self {
            protocol: Some(protocol),
            limits,
        }
    }

    /// The connection's version, once known.
    pub fn protocol(&self) -> Option<Protocol> {
        self.protocol
    }

    /// Set the connection's version.
    pub fn set_protocol(&mut self, protocol: Protocol) {
        self.protocol = Some(protocol);
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Change the limits (for example the maximum packet size once CONNECT
    /// has been accepted).
    pub fn limits_mut(&mut self) -> &mut Limits {
        &mut self.limits
    }
}

impl Decoder for MqttCodec {
    type Item = Packet;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, CodecError> {
        let packet = Packet::decode(src, self.protocol, &self.limits)?;
        if let (None, Some(Packet::Connect(c))) = (self.protocol, &packet) {
            self.protocol = Some(c.protocol);
        }
        Ok(packet)
    }
}

impl Encoder<&Packet> for MqttCodec {
    type Error = CodecError;

    fn encode(&mut self, item: &Packet, dst: &mut BytesMut) -> Result<(), CodecError> {
        let protocol = match (self.protocol, item) {
            (Some(p), _) => p,
            (None, Packet::Connect(c)) => {
                self.protocol = Some(c.protocol);
                c.protocol
            }
            // Before any CONNECT the only sensible answer is a CONNACK refusing
            // an unknown version; 3.1.1's format is the one every client reads.
            (None, _) => Protocol::V3_1_1,
        };
        item.encode(protocol, dst)?;
        Ok(())
    }
}

impl Encoder<Packet> for MqttCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Packet, dst: &mut BytesMut) -> Result<(), CodecError> {
        Encoder::<&Packet>::encode(self, &item, dst)
    }
}
