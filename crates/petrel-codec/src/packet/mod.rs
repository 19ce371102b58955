//! The control packets, one file each, behind one [`Packet`] enum shared by all
//! protocol versions.

mod ack;
mod auth;
mod connack;
mod connect;
mod disconnect;
mod publish;
mod suback;
mod subscribe;
mod unsuback;
mod unsubscribe;

pub use ack::PubAck;
pub use auth::Auth;
pub use connack::ConnAck;
pub use connect::{Connect, Will};
pub use disconnect::Disconnect;
pub use publish::{Publish, PublishView};
pub use suback::SubAck;
pub use subscribe::{Subscribe, Subscription};
pub use unsuback::UnsubAck;
pub use unsubscribe::Unsubscribe;

use bytes::{BufMut, Bytes, BytesMut};
use nom::number::complete::be_u16;

use crate::error::{DecodeError, EncodeError};
pub use crate::types::PacketType;
use crate::types::{PacketId, Protocol};
use crate::wire::{fail, packet_len, put_varint, Frame, PResult, MAX_VARINT};
use crate::Limits;

/// Most a decoder reserves ahead of the bytes that have arrived.
pub const RESERVE_STEP: usize = 64 * 1024;

/// A control packet of any protocol version.
///
/// Decoded packets hold views of the frame they came from; 5.0-only fields are
/// empty when decoded from 3.1.x and left out when encoded for 3.1.x.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Packet {
    /// CONNECT.
    Connect(Box<Connect>),
    /// CONNACK.
    ConnAck(ConnAck),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK.
    PubAck(PubAck),
    /// PUBREC.
    PubRec(PubAck),
    /// PUBREL.
    PubRel(PubAck),
    /// PUBCOMP.
    PubComp(PubAck),
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// SUBACK.
    SubAck(SubAck),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe),
    /// UNSUBACK.
    UnsubAck(UnsubAck),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect(Disconnect),
    /// AUTH (5.0).
    Auth(Auth),
}

/// A parsed fixed header (2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedHeader {
    /// The packet type.
    pub packet_type: PacketType,
    /// The four flag bits.
    pub flags: u8,
    /// The remaining length: bytes after the fixed header.
    pub remaining_len: usize,
    /// Bytes the fixed header itself takes (2 to 5).
    pub header_len: usize,
}

impl FixedHeader {
    /// Size of the whole packet.
    pub fn packet_len(&self) -> usize {
        self.header_len + self.remaining_len
    }

    /// Parse a fixed header from the start of `buf`: `Ok(None)` if more bytes
    /// are needed. The type and its fixed flags are checked here, so garbage is
    /// refused after one byte and an oversized packet after five.
    pub fn parse(buf: &[u8], protocol: Option<Protocol>) -> Result<Option<Self>, DecodeError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let packet_type = match PacketType::from_u8(first >> 4) {
            Some(PacketType::Auth) if protocol.is_some_and(|p| !p.is_v5()) => None,
            t => t,
        }
        .ok_or(DecodeError::ReservedPacketType(first >> 4))?;
        let flags = first & 0x0F;
        if let Some(fixed) = packet_type.fixed_flags() {
            // MQTT 3.1 sets DUP on a resent PUBREL, SUBSCRIBE or UNSUBSCRIBE.
            let dup_allowed = fixed == 0b0010 && protocol == Some(Protocol::V3_1);
            let flags_seen = if dup_allowed { flags & 0b0111 } else { flags };
            if flags_seen != fixed {
                return Err(DecodeError::InvalidHeaderFlags {
                    packet: packet_type,
                    flags,
                });
            }
        }
        let mut remaining_len = 0usize;
        for i in 0..4 {
            let Some(&b) = buf.get(1 + i) else {
                return Ok(None);
            };
            remaining_len |= usize::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return Err(DecodeError::NonMinimalVarint);
                }
                return Ok(Some(Self {
                    packet_type,
                    flags,
                    remaining_len,
                    header_len: 2 + i,
                }));
            }
        }
        Err(DecodeError::MalformedRemainingLength)
    }
}

/// What a body parser needs besides its bytes.
pub(crate) struct Cx<'f> {
    pub(crate) frame: Frame<'f>,
    pub(crate) protocol: Protocol,
    pub(crate) limits: &'f Limits,
}

/// Encoding: a 5.0 reason code must come from the packet's table.
pub(crate) fn check_reason(
    code: crate::ReasonCode,
    context: crate::ReasonContext,
    packet: PacketType,
    protocol: Protocol,
) -> Result<(), EncodeError> {
    if protocol.is_v5() && !code.allowed_in(context) {
        return Err(EncodeError::InvalidReasonCode { packet, code });
    }
    Ok(())
}

/// A packet identifier that must not be zero.
pub(crate) fn packet_id(input: &[u8]) -> PResult<'_, PacketId> {
    let (input, v) = be_u16(input)?;
    match PacketId::new(v) {
        Some(id) => Ok((input, id)),
        None => fail(DecodeError::ZeroPacketId),
    }
}

impl Packet {
    /// Decode one packet from the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` does not yet hold a whole packet, having
    /// reserved room for the rest (at most [`RESERVE_STEP`] ahead); a packet larger than
    /// `limits.max_packet_size` is refused from its fixed header, before any
    /// of its body is buffered. On success the packet's bytes are split off
    /// `buf` and frozen once; every field of the packet is a view of them.
    ///
    /// `protocol` is the connection's version, `None` until CONNECT has been
    /// seen: then only CONNECT is accepted, and it carries its own version.
    pub fn decode(
        buf: &mut BytesMut,
        protocol: Option<Protocol>,
        limits: &Limits,
    ) -> Result<Option<Self>, DecodeError> {
        let Some(header) = FixedHeader::parse(buf, protocol)? else {
            return Ok(None);
        };
        let size = header.packet_len();
        if size > limits.max_packet_size as usize {
            return Err(DecodeError::PacketTooLarge {
                size,
                max: limits.max_packet_size,
            });
        }
        if buf.len() < size {
            // Room for what is missing, but never more than a step ahead of
            // what has arrived: a peer announcing a large packet and sending
            // nothing more must not make every connection hold that much.
            buf.reserve((size - buf.len()).min(RESERVE_STEP));
            return Ok(None);
        }
        let frame = buf.split_to(size).freeze();
        Self::decode_frame(header, &frame, protocol, limits).map(Some)
    }

    /// Decode a whole frame (fixed header included) whose header was parsed.
    #[inline]
    pub(crate) fn decode_frame(
        header: FixedHeader,
        frame: &Bytes,
        protocol: Option<Protocol>,
        limits: &Limits,
    ) -> Result<Self, DecodeError> {
        let body = frame
            .get(header.header_len..header.packet_len())
            .ok_or(DecodeError::Truncated)?;
        if frame.len() != header.packet_len() {
            return Err(DecodeError::TrailingBytes(
                frame.len() - header.packet_len(),
            ));
        }
        let protocol = match (header.packet_type, protocol) {
            // A CONNECT carries its own version; this one is only a placeholder.
            (PacketType::Connect, p) => p.unwrap_or(Protocol::V5),
            (_, Some(p)) => p,
            (t, None) => return Err(DecodeError::FirstPacketNotConnect(t)),
        };
        let cx = Cx {
            frame: Frame { bytes: frame },
            protocol,
            limits,
        };
        use PacketType as T;
        Ok(match header.packet_type {
            T::Connect => Self::Connect(Box::new(Connect::decode(&cx, body)?)),
            T::ConnAck => Self::ConnAck(ConnAck::decode(&cx, body)?),
            T::Publish => Self::Publish(Publish::decode(
                protocol,
                header.flags,
                limits,
                frame,
                header.header_len,
            )?),
            T::PubAck => Self::PubAck(PubAck::decode(&cx, body, T::PubAck)?),
            T::PubRec => Self::PubRec(PubAck::decode(&cx, body, T::PubRec)?),
            T::PubRel => Self::PubRel(PubAck::decode(&cx, body, T::PubRel)?),
            T::PubComp => Self::PubComp(PubAck::decode(&cx, body, T::PubComp)?),
            T::Subscribe => Self::Subscribe(Subscribe::decode(&cx, body)?),
            T::SubAck => Self::SubAck(SubAck::decode(&cx, body)?),
            T::Unsubscribe => Self::Unsubscribe(Unsubscribe::decode(&cx, body)?),
            T::UnsubAck => Self::UnsubAck(UnsubAck::decode(&cx, body)?),
            T::PingReq | T::PingResp => {
                if !body.is_empty() {
                    return Err(DecodeError::TrailingBytes(body.len()));
                }
                if header.packet_type == T::PingReq {
                    Self::PingReq
                } else {
                    Self::PingResp
                }
            }
            T::Disconnect => Self::Disconnect(Disconnect::decode(&cx, body)?),
            T::Auth => Self::Auth(Auth::decode(&cx, body)?),
        })
    }

    /// The packet's type.
    pub fn packet_type(&self) -> PacketType {
        use PacketType as T;
        match self {
            Self::Connect(_) => T::Connect,
            Self::ConnAck(_) => T::ConnAck,
            Self::Publish(_) => T::Publish,
            Self::PubAck(_) => T::PubAck,
            Self::PubRec(_) => T::PubRec,
            Self::PubRel(_) => T::PubRel,
            Self::PubComp(_) => T::PubComp,
            Self::Subscribe(_) => T::Subscribe,
            Self::SubAck(_) => T::SubAck,
            Self::Unsubscribe(_) => T::Unsubscribe,
            Self::UnsubAck(_) => T::UnsubAck,
            Self::PingReq => T::PingReq,
            Self::PingResp => T::PingResp,
            Self::Disconnect(_) => T::Disconnect,
            Self::Auth(_) => T::Auth,
        }
    }

    fn first_byte(&self) -> u8 {
        let t = self.packet_type();
        let flags = match self {
            Self::Publish(p) => p.header_flags(),
            _ => t.fixed_flags().unwrap_or(0),
        };
        (t as u8) << 4 | flags
    }

    /// The remaining length this packet has when encoded for `protocol`.
    pub fn remaining_len(&self, protocol: Protocol) -> Result<usize, EncodeError> {
        let n = match self {
            Self::Connect(c) => c.body_len()?,
            Self::ConnAck(c) => c.body_len(protocol)?,
            Self::Publish(p) => p.body_len(protocol)?,
            Self::PubAck(a) | Self::PubRec(a) => a.body_len(protocol, self.packet_type())?,
            Self::PubRel(a) | Self::PubComp(a) => a.body_len(protocol, self.packet_type())?,
            Self::Subscribe(s) => s.body_len(protocol)?,
            Self::SubAck(s) => s.body_len(protocol)?,
            Self::Unsubscribe(u) => u.body_len(protocol)?,
            Self::UnsubAck(u) => u.body_len(protocol)?,
            Self::PingReq | Self::PingResp => 0,
            Self::Disconnect(d) => d.body_len(protocol)?,
            Self::Auth(a) => {
                if !protocol.is_v5() {
                    return Err(EncodeError::NotInProtocol {
                        packet: PacketType::Auth,
                        protocol,
                    });
                }
                a.body_len()?
            }
        };
        if n > MAX_VARINT as usize {
            return Err(EncodeError::PacketTooLarge {
                size: n,
                max: MAX_VARINT as usize,
            });
        }
        Ok(n)
    }

    /// The size of the whole encoded packet, so a sender can compare it with
    /// the peer's Maximum Packet Size before sending ([MQTT-3.1.2-24]).
    pub fn encoded_len(&self, protocol: Protocol) -> Result<usize, EncodeError> {
        Ok(packet_len(self.remaining_len(protocol)?))
    }

    /// Append the encoded packet to `buf`, reserving its exact size once.
    /// Returns the number of bytes written.
    ///
    /// A CONNECT is encoded in its own protocol version whatever `protocol` says.
    pub fn encode(&self, protocol: Protocol, buf: &mut BytesMut) -> Result<usize, EncodeError> {
        if let Self::Publish(p) = self {
            return p.encode(protocol, buf);
        }
        let remaining = self.remaining_len(protocol)?;
        let total = packet_len(remaining);
        buf.reserve(total);
        let start = buf.len();
        buf.put_u8(self.first_byte());
        put_varint(buf, remaining as u32);
        match self {
            Self::Connect(c) => c.encode_body(buf)?,
            Self::ConnAck(c) => c.encode_body(protocol, buf)?,
            // Written whole by `Publish::encode` above.
            Self::Publish(_) => {}
            Self::PubAck(a) | Self::PubRec(a) | Self::PubRel(a) | Self::PubComp(a) => {
                a.encode_body(protocol, buf)?
            }
            Self::Subscribe(s) => s.encode_body(protocol, buf)?,
            Self::SubAck(s) => s.encode_body(protocol, buf)?,
            Self::Unsubscribe(u) => u.encode_body(protocol, buf)?,
            Self::UnsubAck(u) => u.encode_body(protocol, buf)?,
            Self::PingReq | Self::PingResp => {}
            Self::Disconnect(d) => d.encode_body(protocol, buf)?,
            Self::Auth(a) => a.encode_body(buf)?,
        }
        debug_assert_eq!(buf.len() - start, total, "encoded length mismatch");
        Ok(total)
    }

    /// Encode into a new buffer of exactly the packet's size.
    pub fn to_bytes(&self, protocol: Protocol) -> Result<Bytes, EncodeError> {
        let mut buf = BytesMut::new();
        self.encode(protocol, &mut buf)?;
        Ok(buf.freeze())
    }
}
