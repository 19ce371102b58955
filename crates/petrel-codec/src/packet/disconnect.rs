//! DISCONNECT (3.14) and the shape it shares with AUTH: an optional reason code
//! followed by optional properties.

use bytes::{BufMut, BytesMut};
use nom::number::complete::be_u8;

use super::{Cx, PacketType};
use crate::error::{DecodeError, EncodeError};
use crate::properties::{Properties, PropertyContext};
use crate::reason::{ReasonCode, ReasonContext};
use crate::types::Protocol;
use crate::wire::{fail, finish, varint_len, PResult};

/// A DISCONNECT packet. In 3.1.x it has no body: the reason is always normal.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// 5.0 reason code.
    pub reason_code: ReasonCode,
    /// 5.0 properties.
    pub properties: Properties,
}

impl Disconnect {
    /// A DISCONNECT with this reason and no properties.
    pub fn new(reason_code: ReasonCode) -> Self {
        Self {
            reason_code,
            properties: Properties::default(),
        }
    }

    pub(crate) fn decode(cx: &Cx<'_>, body: &[u8]) -> Result<Self, DecodeError> {
        if !cx.protocol.is_v5() {
            if !body.is_empty() {
                return Err(DecodeError::TrailingBytes(body.len()));
            }
            return Ok(Self::default());
        }
        let (reason_code, properties) = finish(reason_and_properties(
            cx,
            body,
            PacketType::Disconnect,
            ReasonContext::Disconnect,
            PropertyContext::DISCONNECT,
        ))?;
        Ok(Self {
            reason_code,
            properties,
        })
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> Result<usize, EncodeError> {
        if !protocol.is_v5() {
            return Ok(0);
        }
        super::check_reason(
            self.reason_code,
            ReasonContext::Disconnect,
            PacketType::Disconnect,
            protocol,
        )?;
        reason_and_properties_len(
            self.reason_code,
            &self.properties,
            PropertyContext::DISCONNECT,
        )
    }

    pub(crate) fn encode_body(
        &self,
        protocol: Protocol,
        buf: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        if protocol.is_v5() {
            encode_reason_and_properties(
                self.reason_code,
                &self.properties,
                PropertyContext::DISCONNECT,
                buf,
            )?;
        }
        Ok(())
    }
}

/// Reason code (absent means success) then properties (absent means none).
pub(crate) fn reason_and_properties<'f>(
    cx: &Cx<'f>,
    input: &'f [u8],
    packet: PacketType,
    reasons: ReasonContext,
    props: PropertyContext,
) -> PResult<'f, (ReasonCode, Properties)> {
    if input.is_empty() {
        return Ok((input, (ReasonCode::SUCCESS, Properties::default())));
    }
    let (input, code) = be_u8(input)?;
    let code = ReasonCode(code);
    if !code.allowed_in(reasons) {
        return fail(DecodeError::InvalidReasonCode { packet, code });
    }
    if input.is_empty() {
        return Ok((input, (code, Properties::default())));
    }
    let (input, properties) = Properties::decode(cx.frame, input, props, cx.limits)?;
    Ok((input, (code, properties)))
}

pub(crate) fn reason_and_properties_len(
    code: ReasonCode,
    properties: &Properties,
    ctx: PropertyContext,
) -> Result<usize, EncodeError> {
    let n = properties.body_len(ctx)?;
    Ok(match (code, n) {
        (ReasonCode::SUCCESS, 0) => 0,
        (_, 0) => 1,
        (_, n) => 1 + varint_len(n as u32) + n,
    })
}

pub(crate) fn encode_reason_and_properties(
    code: ReasonCode,
    properties: &Properties,
    ctx: PropertyContext,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let n = properties.body_len(ctx)?;
    if code != ReasonCode::SUCCESS || n != 0 {
        buf.put_u8(code.0);
    }
    if n != 0 {
        properties.encode(buf, n);
    }
    Ok(())
}
