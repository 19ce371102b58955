//! PUBLISH (3.3): a message, in either direction.

use bytes::{BufMut, Bytes, BytesMut};

use super::packet_id;
use crate::error::{DecodeError, EncodeError};
use std::num::NonZeroU16;

use crate::properties::{id as prop, Properties, PropertyContext};
use crate::string::TopicName;
use crate::types::{Protocol, QosPid};
use crate::wire::{
    into_error, length_prefixed, packet_len, string_len, varint_len, write_varint, Frame,
    MAX_VARINT,
};
use crate::Limits;

/// A PUBLISH packet. Topic, properties and payload are views of the frame it
/// was decoded from; cloning shares them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    /// DUP: this is a redelivery ([MQTT-3.3.1-1]); always false for QoS 0.
    pub dup: bool,
    /// QoS and, for QoS 1 and 2, the packet identifier.
    pub qos: QosPid,
    /// RETAIN.
    pub retain: bool,
    /// Topic name; empty only in a 5.0 PUBLISH that carries a Topic Alias.
    pub topic: TopicName,
    /// 5.0 PUBLISH properties.
    pub properties: Properties,
    /// The application message.
    pub payload: Bytes,
}

impl Publish {
    /// A QoS 0, non-retained PUBLISH.
    pub fn new(topic: TopicName, payload: Bytes) -> Self {
        Self {
            dup: false,
            qos: QosPid::AtMostOnce,
            retain: false,
            topic,
            properties: Properties::default(),
            payload,
        }
    }

    pub(crate) fn header_flags(&self) -> u8 {
        self.view().header_flags()
    }

    /// The packet as a [`PublishView`] of its fields.
    pub fn view(&self) -> PublishView<'_> {
        PublishView {
            dup: self.dup,
            qos: self.qos,
            retain: self.retain,
            topic: &self.topic,
            properties: &self.properties,
            topic_alias: None,
            payload: &self.payload,
        }
    }

    /// Decode from a whole frame (`header_len` bytes of fixed header, then the
    /// body). Plain control flow rather than one parser returning the packet:
    /// the packet is built once, after every check has passed.
    #[inline(always)]
    pub(crate) fn decode(
        protocol: Protocol,
        flags: u8,
        limits: &Limits,
        frame: &Bytes,
        header_len: usize,
    ) -> Result<Self, DecodeError> {
        let dup = flags & 0x08 != 0;
        let retain = flags & 0x01 != 0;
        let level = match (flags >> 1) & 0x03 {
            0 if dup => return Err(DecodeError::DupOnQoS0),
            3 => return Err(DecodeError::InvalidQoS),
            level => level,
        };
        let body = frame.get(header_len..).ok_or(DecodeError::Truncated)?;
        let (rest, topic) = length_prefixed(body).map_err(into_error)?;
        let (rest, qos) = match level {
            0 => (rest, QosPid::AtMostOnce),
            1 => {
                let (rest, id) = packet_id(rest).map_err(into_error)?;
                (rest, QosPid::AtLeastOnce(id))
            }
            _ => {
                let (rest, id) = packet_id(rest).map_err(into_error)?;
                (rest, QosPid::ExactlyOnce(id))
            }
        };
        let (payload, properties) = if protocol.is_v5() {
            let f = Frame { bytes: frame };
            Properties::decode(f, rest, PropertyContext::PUBLISH, limits).map_err(into_error)?
        } else {
            (rest, Properties::default())
        };
        let topic = TopicName::from_wire(frame.slice_ref(topic))?;
        if topic.is_empty() && properties.topic_alias().is_none() {
            return Err(DecodeError::MissingTopic);
        }
        Ok(Self {
            dup,
            qos,
            retain,
            topic,
            properties,
            payload: frame.slice_ref(payload),
        })
    }

    /// The size of the whole encoded packet, as [`Packet::encoded_len`]
    /// would give for it, without making a packet of it.
    ///
    /// [`Packet::encoded_len`]: crate::Packet::encoded_len
    pub fn encoded_len(&self, protocol: Protocol) -> Result<usize, EncodeError> {
        self.view().encoded_len(protocol)
    }

    /// Encode the whole packet into `buf` with one reservation; returns its size.
    #[inline]
    pub fn encode(&self, protocol: Protocol, buf: &mut BytesMut) -> Result<usize, EncodeError> {
        self.view().write(protocol, buf, true)
    }

    /// Encode everything but the payload — fixed header, topic, packet
    /// identifier, properties — and return the size of the whole packet.
    ///
    /// For fan-out without copying: the header goes into the connection's
    /// write buffer and the payload, the same `Bytes` for every subscriber,
    /// follows it in a vectored write.
    pub fn encode_header(
        &self,
        protocol: Protocol,
        buf: &mut BytesMut,
    ) -> Result<usize, EncodeError> {
        self.view().write(protocol, buf, false)
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> Result<usize, EncodeError> {
        self.view().body_len(protocol)
    }
}

/// A PUBLISH made of borrowed parts, encoded as [`Publish`] would be.
///
/// For a message many connections send, each with its own flags: every
/// one encodes it from the same topic, properties and payload without
/// taking a count on any of them.
#[derive(Clone, Copy, Debug)]
pub struct PublishView<'a> {
    /// DUP: this is a redelivery; ignored for QoS 0 ([MQTT-3.3.1-2]).
    pub dup: bool,
    /// QoS and, for QoS 1 and 2, the packet identifier.
    pub qos: QosPid,
    /// RETAIN.
    pub retain: bool,
    /// Topic name; empty only in a 5.0 PUBLISH that carries a Topic Alias.
    pub topic: &'a TopicName,
    /// 5.0 PUBLISH properties (not written for 3.1.1).
    pub properties: &'a Properties,
    /// 5.0: a Topic Alias written ahead of `properties` (the one
    /// connection's alias for a message shared with others); encoding
    /// fails if `properties` carry one too.
    pub topic_alias: Option<NonZeroU16>,
    /// The application message.
    pub payload: &'a Bytes,
}

impl PublishView<'_> {
    fn header_flags(&self) -> u8 {
        // [MQTT-3.3.1-2]: never DUP on QoS 0.
        let dup = self.dup && self.qos != QosPid::AtMostOnce;
        (dup as u8) << 3 | (self.qos.qos() as u8) << 1 | self.retain as u8
    }

    /// The size of the whole encoded packet.
    pub fn encoded_len(&self, protocol: Protocol) -> Result<usize, EncodeError> {
        Ok(packet_len(self.body_len(protocol)?))
    }

    /// Encode the whole packet into `buf` with one reservation; returns its size.
    #[inline]
    pub fn encode(&self, protocol: Protocol, buf: &mut BytesMut) -> Result<usize, EncodeError> {
        self.write(protocol, buf, true)
    }

    /// Encode everything but the payload, as [`Publish::encode_header`].
    pub fn encode_header(
        &self,
        protocol: Protocol,
        buf: &mut BytesMut,
    ) -> Result<usize, EncodeError> {
        self.write(protocol, buf, false)
    }

    #[inline]
    fn write(
        &self,
        protocol: Protocol,
        buf: &mut BytesMut,
        with_payload: bool,
    ) -> Result<usize, EncodeError> {
        // The same rules as `body_len`, computed inline: calling it here
        // measured about 4 ns slower on a 64-byte PUBLISH.
        let alias = self.alias(protocol)?;
        let props = if protocol.is_v5() {
            Some(self.properties.body_len(PropertyContext::PUBLISH)? + alias.map_or(0, |_| 3))
        } else {
            None
        };
        if self.topic.is_empty()
            && props.is_none_or(|_| alias.is_none() && self.properties.topic_alias().is_none())
        {
            return Err(EncodeError::MissingTopic);
        }
        let topic = self.topic.as_bytes();
        let id = self.qos.packet_id();
        let props_field = props.map_or(0, |n| varint_len(n as u32) + n);
        let remaining =
            2 + topic.len() + if id.is_some() { 2 } else { 0 } + props_field + self.payload.len();
        if remaining > MAX_VARINT as usize {
            return Err(EncodeError::PacketTooLarge {
                size: remaining,
                max: MAX_VARINT as usize,
            });
        }
        let total = packet_len(remaining);
        buf.reserve(if with_payload {
            total
        } else {
            total - self.payload.len()
        });
        // The small fields go through stack arrays: two short copies instead
        // of a bounds-checked write per byte.
        let mut head = [0u8; 7];
        head[0] = 0x30 | self.header_flags();
        let mut n = 1 + write_varint(&mut head[1..], remaining as u32);
        head[n..n + 2].copy_from_slice(&(topic.len() as u16).to_be_bytes());
        n += 2;
        buf.put_slice(&head[..n]);
        buf.put_slice(topic);
        let mut mid = [0u8; 9];
        let mut m = 0;
        if let Some(id) = id {
            mid[..2].copy_from_slice(&id.get().to_be_bytes());
            m = 2;
        }
        if let Some(len) = props {
            m += write_varint(&mut mid[m..], len as u32);
        }
        if let Some(a) = alias {
            mid[m] = prop::TOPIC_ALIAS;
            mid[m + 1..m + 3].copy_from_slice(&a.get().to_be_bytes());
            m += 3;
        }
        buf.put_slice(&mid[..m]);
        if !self.properties.as_wire().is_empty() && props.is_some() {
            buf.put_slice(self.properties.as_wire());
        }
        if with_payload {
            buf.put_slice(self.payload);
        }
        Ok(total)
    }

    /// The view's own Topic Alias, written for 5.0: an error if the
    /// properties carry one too (a packet may carry only one).
    fn alias(&self, protocol: Protocol) -> Result<Option<NonZeroU16>, EncodeError> {
        match self.topic_alias.filter(|_| protocol.is_v5()) {
            Some(_) if self.properties.topic_alias().is_some() => {
                Err(EncodeError::InvalidPropertyValue(prop::TOPIC_ALIAS))
            }
            alias => Ok(alias),
        }
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> Result<usize, EncodeError> {
        let alias = self.alias(protocol)?;
        if self.topic.is_empty()
            && (!protocol.is_v5() || (alias.is_none() && self.properties.topic_alias().is_none()))
        {
            return Err(EncodeError::MissingTopic);
        }
        let mut n = string_len(self.topic.as_mqtt_str()) + self.payload.len();
        if self.qos.packet_id().is_some() {
            n += 2;
        }
        if protocol.is_v5() {
            let props =
                self.properties.body_len(PropertyContext::PUBLISH)? + alias.map_or(0, |_| 3);
            n += varint_len(props as u32) + props;
        }
        Ok(n)
    }
}
