//! AUTH (3.15): enhanced authentication exchange, 5.0 only.

use bytes::BytesMut;

use super::disconnect::{
    encode_reason_and_properties, reason_and_properties, reason_and_properties_len,
};
use super::{Cx, PacketType};
use crate::error::{DecodeError, EncodeError};
use crate::properties::{Properties, PropertyContext};
use crate::reason::{ReasonCode, ReasonContext};
use crate::wire::finish;

/// An AUTH packet.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Auth {
    /// Success (0x00), Continue authentication (0x18) or Re-authenticate (0x19).
    pub reason_code: ReasonCode,
    /// Authentication method and data, reason string, user properties.
    pub properties: Properties,
}

impl Auth {
    pub(crate) fn decode(cx: &Cx<'_>, body: &[u8]) -> Result<Self, DecodeError> {
        let (reason_code, properties) = finish(reason_and_properties(
            cx,
            body,
            PacketType::Auth,
            ReasonContext::Auth,
            PropertyContext::AUTH,
        ))?;
        if !body.is_empty() && properties.authentication_method().is_none() {
            // 3.15.2.2.2: only the empty AUTH may leave the method out.
            return Err(DecodeError::MissingAuthenticationMethod);
        }
        Ok(Self {
            reason_code,
            properties,
        })
    }

    pub(crate) fn body_len(&self) -> Result<usize, EncodeError> {
        super::check_reason(
            self.reason_code,
            ReasonContext::Auth,
            PacketType::Auth,
            crate::Protocol::V5,
        )?;
        let len =
            reason_and_properties_len(self.reason_code, &self.properties, PropertyContext::AUTH)?;
        if len > 0 && self.properties.authentication_method().is_none() {
            return Err(EncodeError::InvalidPropertyValue(
                crate::properties::id::AUTHENTICATION_METHOD,
            ));
        }
        Ok(len)
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        encode_reason_and_properties(
            self.reason_code,
            &self.properties,
            PropertyContext::AUTH,
            buf,
        )
    }
}
