//! UNSUBACK (3.11).

use bytes::{BufMut, BytesMut};

use super::suback::reason_codes;
use super::{packet_id, Cx, PacketType};
use crate::error::{DecodeError, EncodeError};
use crate::properties::{Properties, PropertyContext};
use crate::reason::{ReasonCode, ReasonContext};
use crate::types::{PacketId, Protocol};
use crate::wire::{fail, finish, PResult};

/// An UNSUBACK packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsubAck {
    /// The UNSUBSCRIBE's packet identifier ([MQTT-2.2.1-6]).
    pub packet_id: PacketId,
    /// 5.0 properties: reason string and user properties.
    pub properties: Properties,
    /// 5.0: one result per filter, in order. Always empty in 3.1.x, which has none.
    pub reason_codes: Vec<ReasonCode>,
}

impl UnsubAck {
    pub(crate) fn decode(cx: &Cx<'_>, body: &[u8]) -> Result<Self, DecodeError> {
        finish(Self::parse(cx, body))
    }

    fn parse<'f>(cx: &Cx<'f>, input: &'f [u8]) -> PResult<'f, Self> {
        let (input, packet_id) = packet_id(input)?;
        if !cx.protocol.is_v5() {
            return Ok((
                input,
                Self {
                    packet_id,
                    properties: Properties::default(),
                    reason_codes: Vec::new(),
                },
            ));
        }
        let (input, properties) =
            Properties::decode(cx.frame, input, PropertyContext::ACK, cx.limits)?;
        if input.is_empty() {
            return fail(DecodeError::NoTopicFilters(PacketType::UnsubAck));
        }
        let (input, reason_codes) = reason_codes(cx, input, PacketType::UnsubAck, |c| {
            c.allowed_in(ReasonContext::UnsubAck)
        })?;
        Ok((
            input,
            Self {
                packet_id,
                properties,
                reason_codes,
            },
        ))
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> Result<usize, EncodeError> {
        if !protocol.is_v5() {
            return Ok(2);
        }
        if self.reason_codes.is_empty() {
            return Err(EncodeError::NoTopicFilters(PacketType::UnsubAck));
        }
        for &c in &self.reason_codes {
            super::check_reason(c, ReasonContext::UnsubAck, PacketType::UnsubAck, protocol)?;
        }
        Ok(2 + self.properties.encoded_len(PropertyContext::ACK)? + self.reason_codes.len())
    }

    pub(crate) fn encode_body(
        &self,
        protocol: Protocol,
        buf: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        buf.put_u16(self.packet_id.get());
        if protocol.is_v5() {
            let n = self.properties.body_len(PropertyContext::ACK)?;
            self.properties.encode(buf, n);
            for c in &self.reason_codes {
                buf.put_u8(c.0);
            }
        }
        Ok(())
    }
}
