//! CONNACK (3.2): the server's answer to CONNECT.

use bytes::{BufMut, BytesMut};
use nom::number::complete::be_u8;

use super::check_reason;
use super::{Cx, PacketType};
use crate::error::{DecodeError, EncodeError};
use crate::properties::{Properties, PropertyContext};
use crate::reason::{ReasonCode, ReasonContext};
use crate::types::Protocol;
use crate::wire::{fail, finish, PResult};

/// A CONNACK packet.
///
/// The result is a 5.0 reason code in every version; for 3.1.x it is mapped to
/// and from the six return codes ([`ReasonCode::to_v3_connack`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present (always false in 3.1, which has no such flag).
    pub session_present: bool,
    /// The result of the CONNECT.
    pub reason_code: ReasonCode,
    /// 5.0 CONNACK properties.
    pub properties: Properties,
}

impl ConnAck {
    /// A CONNACK with this result and no properties.
    pub fn new(reason_code: ReasonCode, session_present: bool) -> Self {
        Self {
            session_present,
            reason_code,
            properties: Properties::default(),
        }
    }

    pub(crate) fn decode(cx: &Cx<'_>, body: &[u8]) -> Result<Self, DecodeError> {
        finish(Self::parse(cx, body))
    }

    fn parse<'f>(cx: &Cx<'f>, input: &'f [u8]) -> PResult<'f, Self> {
        let (input, flags) = be_u8(input)?;
        // 3.1 reserves the whole first byte (unused); 3.1.1 and 5.0 bits 7-1
        // ([MQTT-3.2.2-1] in 3.1.1).
        let session_present = match cx.protocol {
            Protocol::V3_1 => false,
            _ if flags & 0xFE != 0 => return fail(DecodeError::InvalidConnAckFlags),
            _ => flags & 1 != 0,
        };
        let (input, code) = be_u8(input)?;
        let reason_code = if cx.protocol.is_v5() {
            let rc = ReasonCode(code);
            if !rc.allowed_in(ReasonContext::ConnAck) {
                return fail(DecodeError::InvalidReasonCode {
                    packet: PacketType::ConnAck,
                    code: rc,
                });
            }
            rc
        } else {
            match ReasonCode::from_v3_connack(code) {
                Some(rc) => rc,
                None => {
                    return fail(DecodeError::InvalidReasonCode {
                        packet: PacketType::ConnAck,
                        code: ReasonCode(code),
                    })
                }
            }
        };
        if session_present && reason_code.is_error() {
            // [MQTT-3.2.2-6] (5.0), [MQTT-3.2.2-4] (3.1.1).
            return fail(DecodeError::InvalidConnAckFlags);
        }
        let (input, properties) = if cx.protocol.is_v5() {
            Properties::decode(cx.frame, input, PropertyContext::CONNACK, cx.limits)?
        } else {
            (input, Properties::default())
        };
        Ok((
            input,
            Self {
                session_present,
                reason_code,
                properties,
            },
        ))
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> Result<usize, EncodeError> {
        check_reason(
            self.reason_code,
            ReasonContext::ConnAck,
            PacketType::ConnAck,
            protocol,
        )?;
        Ok(2 + if protocol.is_v5() {
            self.properties.encoded_len(PropertyContext::CONNACK)?
        } else {
            0
        })
    }

    pub(crate) fn encode_body(
        &self,
        protocol: Protocol,
        buf: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        // 3.1 has no Session Present flag; a refusal never has a session
        // ([MQTT-3.2.2-6] in 5.0, [MQTT-3.2.2-4] in 3.1.1).
        let present =
            self.session_present && protocol != Protocol::V3_1 && !self.reason_code.is_error();
        buf.put_u8(present.into());
        if protocol.is_v5() {
            buf.put_u8(self.reason_code.0);
            let n = self.properties.body_len(PropertyContext::CONNACK)?;
            self.properties.encode(buf, n);
        } else {
            buf.put_u8(self.reason_code.to_v3_connack());
        }
        Ok(())
    }
}
