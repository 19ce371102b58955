//! PUBACK, PUBREC, PUBREL and PUBCOMP (3.4–3.7): one shape for four packets.

use bytes::{BufMut, BytesMut};
use nom::number::complete::be_u8;

use super::{packet_id, Cx, PacketType};
use crate::error::{DecodeError, EncodeError};
use crate::properties::{Properties, PropertyContext};
use crate::reason::{ReasonCode, ReasonContext};
use crate::types::{PacketId, Protocol};
use crate::wire::{fail, finish, PResult};

/// The body of PUBACK, PUBREC, PUBREL and PUBCOMP: the packet identifier of the
/// PUBLISH it answers ([MQTT-2.2.1-5]), and in 5.0 a reason code and properties.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PubAck {
    /// The PUBLISH's packet identifier.
    pub packet_id: PacketId,
    /// 5.0 reason code (always success in 3.1.x).
    pub reason_code: ReasonCode,
    /// 5.0 properties: reason string and user properties.
    pub properties: Properties,
}

impl PubAck {
    /// A successful acknowledgement of `packet_id`.
    pub fn new(packet_id: PacketId) -> Self {
        Self::with_reason(packet_id, ReasonCode::SUCCESS)
    }

    /// An acknowledgement with a reason code.
    pub fn with_reason(packet_id: PacketId, reason_code: ReasonCode) -> Self {
        Self {
            packet_id,
            reason_code,
            properties: Properties::default(),
        }
    }

    pub(crate) fn decode(
        cx: &Cx<'_>,
        body: &[u8],
        packet: PacketType,
    ) -> Result<Self, DecodeError> {
        finish(Self::parse(cx, body, packet))
    }

    fn parse<'f>(cx: &Cx<'f>, input: &'f [u8], packet: PacketType) -> PResult<'f, Self> {
        let (input, packet_id) = packet_id(input)?;
        let mut ack = Self::new(packet_id);
        if !cx.protocol.is_v5() || input.is_empty() {
            return Ok((input, ack));
        }
        // 5.0: the reason code may be left out when it is 0x00 and there are no
        // properties; the property length when there are none (3.4.2.1).
        let (input, code) = be_u8(input)?;
        let context = match packet {
            PacketType::PubAck | PacketType::PubRec => ReasonContext::PubAck,
            _ => ReasonContext::PubRel,
        };
        ack.reason_code = ReasonCode(code);
        if !ack.reason_code.allowed_in(context) {
            return fail(DecodeError::InvalidReasonCode {
                packet,
                code: ack.reason_code,
            });
        }
        if input.is_empty() {
            return Ok((input, ack));
        }
        let (input, properties) =
            Properties::decode(cx.frame, input, PropertyContext::ACK, cx.limits)?;
        ack.properties = properties;
        Ok((input, ack))
    }

    pub(crate) fn body_len(
        &self,
        protocol: Protocol,
        packet: PacketType,
    ) -> Result<usize, EncodeError> {
        if !protocol.is_v5() {
            return Ok(2);
        }
        let context = match packet {
            PacketType::PubAck | PacketType::PubRec => ReasonContext::PubAck,
            _ => ReasonContext::PubRel,
        };
        super::check_reason(self.reason_code, context, packet, protocol)?;
        let props = self.properties.body_len(PropertyContext::ACK)?;
        Ok(match (self.reason_code, props) {
            (ReasonCode::SUCCESS, 0) => 2,
            (_, 0) => 3,
            (_, n) => 3 + crate::wire::varint_len(n as u32) + n,
        })
    }

    pub(crate) fn encode_body(
        &self,
        protocol: Protocol,
        buf: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        buf.put_u16(self.packet_id.get());
        if !protocol.is_v5() {
            return Ok(());
        }
        let props = self.properties.body_len(PropertyContext::ACK)?;
        if self.reason_code != ReasonCode::SUCCESS || props != 0 {
            buf.put_u8(self.reason_code.0);
        }
        if props != 0 {
            self.properties.encode(buf, props);
        }
        Ok(())
    }
}
