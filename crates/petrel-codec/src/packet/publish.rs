//! PUBLISH (3.3): a message, in either direction.

use bytes::{BufMut, Bytes, BytesMut};

use super::{packet_id, Cx};
use crate::error::{DecodeError, EncodeError};
use crate::properties::{Properties, PropertyContext};
use crate::string::TopicName;
use crate::types::{Protocol, QosPid};
use crate::wire::{fail, finish, put_string, string_len, PResult};

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
        (self.dup as u8) << 3 | (self.qos.qos() as u8) << 1 | self.retain as u8
    }

    pub(crate) fn decode(cx: &Cx<'_>, body: &[u8]) -> Result<Self, DecodeError> {
        finish(Self::parse(cx, body))
    }

    fn parse<'f>(cx: &Cx<'f>, input: &'f [u8]) -> PResult<'f, Self> {
        let dup = cx.flags & 0x08 != 0;
        let retain = cx.flags & 0x01 != 0;
        let qos = (cx.flags >> 1) & 0x03;
        let (input, topic) = cx.frame.string(input)?;
        let topic = match TopicName::new_allow_empty(topic) {
            Ok(t) => t,
            Err(e) => return fail(e),
        };
        let (input, qos) = match qos {
            0 if dup => return fail(DecodeError::DupOnQoS0),
            0 => (input, QosPid::AtMostOnce),
            1 => {
                let (i, id) = packet_id(input)?;
                (i, QosPid::AtLeastOnce(id))
            }
            2 => {
                let (i, id) = packet_id(input)?;
                (i, QosPid::ExactlyOnce(id))
            }
            _ => return fail(DecodeError::InvalidQoS),
        };
        let (input, properties) = if cx.protocol.is_v5() {
            Properties::decode(cx.frame, input, PropertyContext::PUBLISH, cx.limits)?
        } else {
            (input, Properties::default())
        };
        if topic.is_empty() && properties.topic_alias.is_none() {
            return fail(DecodeError::MissingTopic);
        }
        let payload = cx.frame.slice(input);
        Ok((
            &input[input.len()..],
            Self {
                dup,
                qos,
                retain,
                topic,
                properties,
                payload,
            },
        ))
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> Result<usize, EncodeError> {
        if self.topic.is_empty() && (!protocol.is_v5() || self.properties.topic_alias.is_none()) {
            return Err(EncodeError::MissingTopic);
        }
        let mut n = string_len(self.topic.as_mqtt_str()) + self.payload.len();
        if self.qos.packet_id().is_some() {
            n += 2;
        }
        if protocol.is_v5() {
            n += self.properties.encoded_len(PropertyContext::PUBLISH)?;
        }
        Ok(n)
    }

    pub(crate) fn encode_body(
        &self,
        protocol: Protocol,
        buf: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        put_string(buf, self.topic.as_mqtt_str());
        if let Some(id) = self.qos.packet_id() {
            buf.put_u16(id.get());
        }
        if protocol.is_v5() {
            let n = self.properties.body_len(PropertyContext::PUBLISH)?;
            self.properties.encode(buf, n);
        }
        buf.put_slice(&self.payload);
        Ok(())
    }
}
