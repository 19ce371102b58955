//! UNSUBSCRIBE (3.10).

use bytes::{BufMut, BytesMut};

use super::{packet_id, Cx, PacketType};
use crate::error::{DecodeError, EncodeError};
use crate::properties::{Properties, PropertyContext};
use crate::string::TopicFilter;
use crate::types::{PacketId, Protocol};
use crate::wire::{fail, finish, put_string, string_len, PResult};

/// An UNSUBSCRIBE packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// 5.0 properties: user properties.
    pub properties: Properties,
    /// The filters, at least one ([MQTT-3.10.3-2]).
    pub filters: Vec<TopicFilter>,
}

impl Unsubscribe {
    pub(crate) fn decode(cx: &Cx<'_>, body: &[u8]) -> Result<Self, DecodeError> {
        finish(Self::parse(cx, body))
    }

    fn parse<'f>(cx: &Cx<'f>, input: &'f [u8]) -> PResult<'f, Self> {
        let (input, packet_id) = packet_id(input)?;
        let (mut input, properties) = if cx.protocol.is_v5() {
            Properties::decode(cx.frame, input, PropertyContext::UNSUBSCRIBE, cx.limits)?
        } else {
            (input, Properties::default())
        };
        let mut filters = Vec::new();
        while !input.is_empty() {
            if filters.len() == cx.limits.max_topic_filters {
                return fail(DecodeError::TooManyTopicFilters {
                    max: cx.limits.max_topic_filters,
                });
            }
            let (i, filter) = cx.frame.topic_filter(input)?;
            input = i;
            filters.push(filter);
        }
        if filters.is_empty() {
            return fail(DecodeError::NoTopicFilters(PacketType::Unsubscribe));
        }
        Ok((
            input,
            Self {
                packet_id,
                properties,
                filters,
            },
        ))
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> Result<usize, EncodeError> {
        if self.filters.is_empty() {
            return Err(EncodeError::NoTopicFilters(PacketType::Unsubscribe));
        }
        let mut n = 2;
        if protocol.is_v5() {
            n += self.properties.encoded_len(PropertyContext::UNSUBSCRIBE)?;
        }
        Ok(n + self
            .filters
            .iter()
            .map(|f| string_len(f.as_mqtt_str()))
            .sum::<usize>())
    }

    pub(crate) fn encode_body(
        &self,
        protocol: Protocol,
        buf: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        buf.put_u16(self.packet_id.get());
        if protocol.is_v5() {
            let n = self.properties.body_len(PropertyContext::UNSUBSCRIBE)?;
            self.properties.encode(buf, n);
        }
        for f in &self.filters {
            put_string(buf, f.as_mqtt_str());
        }
        Ok(())
    }
}
