//! SUBACK (3.9).

use bytes::{BufMut, BytesMut};
use nom::number::complete::be_u8;

use super::{packet_id, Cx, PacketType};
use crate::error::{DecodeError, EncodeError};
use crate::properties::{Properties, PropertyContext};
use crate::reason::{ReasonCode, ReasonContext};
use crate::types::{PacketId, Protocol};
use crate::wire::{fail, finish, PResult};

/// A SUBACK packet: one result per filter of the SUBSCRIBE, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubAck {
    /// The SUBSCRIBE's packet identifier ([MQTT-2.2.1-6]).
    pub packet_id: PacketId,
    /// 5.0 properties: reason string and user properties.
    pub properties: Properties,
    /// Granted QoS (0x00–0x02) or a failure (0x80 and above; 3.1.x has only 0x80).
    pub reason_codes: Vec<ReasonCode>,
}

/// The list of one-byte reason codes that ends SUBACK and UNSUBACK.
pub(crate) fn reason_codes<'f>(
    cx: &Cx<'f>,
    mut input: &'f [u8],
    packet: PacketType,
    allowed: impl Fn(ReasonCode) -> bool,
) -> PResult<'f, Vec<ReasonCode>> {
    if input.len() > cx.limits.max_topic_filters {
        return fail(DecodeError::TooManyTopicFilters {
            max: cx.limits.max_topic_filters,
        });
    }
    let mut codes = Vec::with_capacity(input.len());
    while !input.is_empty() {
        let (i, code) = be_u8(input)?;
        input = i;
        let code = ReasonCode(code);
        if !allowed(code) {
            return fail(DecodeError::InvalidReasonCode { packet, code });
        }
        codes.push(code);
    }
    Ok((input, codes))
}

impl SubAck {
    pub(crate) fn decode(cx: &Cx<'_>, body: &[u8]) -> Result<Self, DecodeError> {
        finish(Self::parse(cx, body))
    }

    fn parse<'f>(cx: &Cx<'f>, input: &'f [u8]) -> PResult<'f, Self> {
        let (input, packet_id) = packet_id(input)?;
        let v5 = cx.protocol.is_v5();
        let (input, properties) = if v5 {
            Properties::decode(cx.frame, input, PropertyContext::ACK, cx.limits)?
        } else {
            (input, Properties::default())
        };
        if input.is_empty() {
            // One code per filter of a SUBSCRIBE, which has at least one.
            return fail(DecodeError::NoTopicFilters(PacketType::SubAck));
        }
        let (input, reason_codes) = reason_codes(cx, input, PacketType::SubAck, |c| {
            if v5 {
                c.allowed_in(ReasonContext::SubAck)
            } else {
                matches!(c.0, 0x00 | 0x01 | 0x02 | 0x80)
            }
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
        if self.reason_codes.is_empty() {
            return Err(EncodeError::NoTopicFilters(PacketType::SubAck));
        }
        for &c in &self.reason_codes {
            super::check_reason(c, ReasonContext::SubAck, PacketType::SubAck, protocol)?;
        }
        let props = if protocol.is_v5() {
            self.properties.encoded_len(PropertyContext::ACK)?
        } else {
            0
        };
        Ok(2 + props + self.reason_codes.len())
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
        } else {
            // 3.1.1 knows the granted QoS and one failure code, 0x80.
            for c in &self.reason_codes {
                buf.put_u8(if c.0 <= 2 { c.0 } else { 0x80 });
            }
        }
        Ok(())
    }
}
