//! 5.0 properties (2.2.2): one struct for every packet, with the set each
//! packet may carry checked on decode and on encode.
//!
//! User properties and subscription identifiers may repeat. Decoded, they are
//! not collected into a `Vec`: the list keeps a view of the property block and
//! walks it on demand, so decoding allocates nothing for them however many a
//! peer sends.

use std::fmt;
use std::num::{NonZeroU16, NonZeroU32};

use bytes::{BufMut, Bytes, BytesMut};
use nom::bytes::complete::take;
use nom::number::complete::{be_u16, be_u32, be_u8};

use crate::error::{DecodeError, EncodeError};
use crate::string::{MqttString, TopicName};
use crate::types::QoS;
use crate::wire::{
    binary_len, fail, length_prefixed, put_binary, put_string, put_varint, string_len, varint,
    varint_len, Frame, PResult, MAX_VARINT,
};
use crate::Limits;

/// Property identifiers (2.2.2.2).
pub mod id {
    /// Payload Format Indicator (byte).
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    /// Message Expiry Interval (four-byte integer).
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    /// Content Type (string).
    pub const CONTENT_TYPE: u8 = 0x03;
    /// Response Topic (string).
    pub const RESPONSE_TOPIC: u8 = 0x08;
    /// Correlation Data (binary).
    pub const CORRELATION_DATA: u8 = 0x09;
    /// Subscription Identifier (variable byte integer).
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    /// Session Expiry Interval (four-byte integer).
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    /// Assigned Client Identifier (string).
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    /// Server Keep Alive (two-byte integer).
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    /// Authentication Method (string).
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    /// Authentication Data (binary).
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    /// Request Problem Information (byte).
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    /// Will Delay Interval (four-byte integer).
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    /// Request Response Information (byte).
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    /// Response Information (string).
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    /// Server Reference (string).
    pub const SERVER_REFERENCE: u8 = 0x1C;
    /// Reason String (string).
    pub const REASON_STRING: u8 = 0x1F;
    /// Receive Maximum (two-byte integer).
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    /// Topic Alias Maximum (two-byte integer).
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    /// Topic Alias (two-byte integer).
    pub const TOPIC_ALIAS: u8 = 0x23;
    /// Maximum QoS (byte).
    pub const MAXIMUM_QOS: u8 = 0x24;
    /// Retain Available (byte).
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    /// User Property (string pair).
    pub const USER_PROPERTY: u8 = 0x26;
    /// Maximum Packet Size (four-byte integer).
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    /// Wildcard Subscription Available (byte).
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    /// Subscription Identifier Available (byte).
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    /// Shared Subscription Available (byte).
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// Which packet (or the Will inside CONNECT) a property block belongs to, and
/// so which properties it may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PropertyContext {
    name: &'static str,
    mask: u64,
}

const fn mask(ids: &[u8]) -> u64 {
    let mut m = 0u64;
    let mut i = 0;
    while i < ids.len() {
        m |= 1 << ids[i];
        i += 1;
    }
    m
}

impl PropertyContext {
    /// CONNECT (3.1.2.11).
    pub const CONNECT: Self = Self {
        name: "CONNECT",
        mask: mask(&[0x11, 0x15, 0x16, 0x17, 0x19, 0x21, 0x22, 0x26, 0x27]),
    };
    /// The Will Properties in the CONNECT payload (3.1.3.2).
    pub const WILL: Self = Self {
        name: "Will Properties",
        mask: mask(&[0x01, 0x02, 0x03, 0x08, 0x09, 0x18, 0x26]),
    };
    /// CONNACK (3.2.2.3).
    pub const CONNACK: Self = Self {
        name: "CONNACK",
        mask: mask(&[
            0x11, 0x12, 0x13, 0x15, 0x16, 0x1A, 0x1C, 0x1F, 0x21, 0x22, 0x24, 0x25, 0x26, 0x27,
            0x28, 0x29, 0x2A,
        ]),
    };
    /// PUBLISH (3.3.2.3).
    pub const PUBLISH: Self = Self {
        name: "PUBLISH",
        mask: mask(&[0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x23, 0x26]),
    };
    /// PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK: a reason string and user properties.
    pub const ACK: Self = Self {
        name: "an acknowledgement",
        mask: mask(&[0x1F, 0x26]),
    };
    /// SUBSCRIBE (3.8.2.1).
    pub const SUBSCRIBE: Self = Self {
        name: "SUBSCRIBE",
        mask: mask(&[0x0B, 0x26]),
    };
    /// UNSUBSCRIBE (3.10.2.1).
    pub const UNSUBSCRIBE: Self = Self {
        name: "UNSUBSCRIBE",
        mask: mask(&[0x26]),
    };
    /// DISCONNECT (3.14.2.2).
    pub const DISCONNECT: Self = Self {
        name: "DISCONNECT",
        mask: mask(&[0x11, 0x1C, 0x1F, 0x26]),
    };
    /// AUTH (3.15.2.2).
    pub const AUTH: Self = Self {
        name: "AUTH",
        mask: mask(&[0x15, 0x16, 0x1F, 0x26]),
    };

    /// Whether this packet may carry the property.
    pub fn allows(self, id: u8) -> bool {
        id < 64 && self.mask & (1 << id) != 0
    }

    /// The packet's name, for messages.
    pub fn name(self) -> &'static str {
        self.name
    }
}

/// The properties of a 5.0 packet. Fields a packet may not carry stay `None`
/// (or empty); encoding refuses them ([`EncodeError::PropertyNotAllowed`]), and
/// encoding for 3.1.x leaves properties out altogether.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Properties {
    /// 0x01: the payload is UTF-8 (`true`) or unspecified bytes (`false`).
    pub payload_format_indicator: Option<bool>,
    /// 0x02: lifetime of the message in seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x03: content type of the payload.
    pub content_type: Option<MqttString>,
    /// 0x08: topic for a response; no wildcards ([MQTT-3.3.2-14]).
    pub response_topic: Option<TopicName>,
    /// 0x09: correlation data of a request/response.
    pub correlation_data: Option<Bytes>,
    /// 0x0B: subscription identifiers (several on a PUBLISH to a client, one on SUBSCRIBE).
    pub subscription_identifiers: SubscriptionIds,
    /// 0x11: session expiry interval in seconds.
    pub session_expiry_interval: Option<u32>,
    /// 0x12: client identifier assigned by the server.
    pub assigned_client_identifier: Option<MqttString>,
    /// 0x13: keep alive the server imposes.
    pub server_keep_alive: Option<u16>,
    /// 0x15: enhanced authentication method.
    pub authentication_method: Option<MqttString>,
    /// 0x16: enhanced authentication data.
    pub authentication_data: Option<Bytes>,
    /// 0x17: whether the client wants reason strings and user properties on errors.
    pub request_problem_information: Option<bool>,
    /// 0x18: delay before the Will is published, in seconds.
    pub will_delay_interval: Option<u32>,
    /// 0x19: whether the client wants Response Information in CONNACK.
    pub request_response_information: Option<bool>,
    /// 0x1A: basis for response topics.
    pub response_information: Option<MqttString>,
    /// 0x1C: another server to use.
    pub server_reference: Option<MqttString>,
    /// 0x1F: human-readable reason.
    pub reason_string: Option<MqttString>,
    /// 0x21: most unacknowledged QoS 1 and 2 PUBLISHes the sender accepts (0 is a protocol error).
    pub receive_maximum: Option<NonZeroU16>,
    /// 0x22: highest topic alias the sender accepts.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23: topic alias (0 is a protocol error, [MQTT-3.3.2-8]).
    pub topic_alias: Option<NonZeroU16>,
    /// 0x24: highest QoS the server supports (0 or 1; absent means 2).
    pub maximum_qos: Option<QoS>,
    /// 0x25: whether the server supports retained messages.
    pub retain_available: Option<bool>,
    /// 0x26: user properties, in order.
    pub user_properties: UserProperties,
    /// 0x27: largest packet the sender accepts (0 is a protocol error).
    pub maximum_packet_size: Option<NonZeroU32>,
    /// 0x28: whether the server supports wildcard subscriptions.
    pub wildcard_subscription_available: Option<bool>,
    /// 0x29: whether the server supports subscription identifiers.
    pub subscription_identifier_available: Option<bool>,
    /// 0x2A: whether the server supports shared subscriptions.
    pub shared_subscription_available: Option<bool>,
}

/// The wire type of a property.
#[derive(Clone, Copy)]
enum Kind {
    Byte,
    U16,
    U32,
    VarInt,
    Str,
    Bin,
    Pair,
}

fn kind(id: u8) -> Option<Kind> {
    use id::*;
    Some(match id {
        PAYLOAD_FORMAT_INDICATOR
        | REQUEST_PROBLEM_INFORMATION
        | REQUEST_RESPONSE_INFORMATION
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => Kind::Byte,
        SERVER_KEEP_ALIVE | RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | TOPIC_ALIAS => Kind::U16,
        MESSAGE_EXPIRY_INTERVAL
        | SESSION_EXPIRY_INTERVAL
        | WILL_DELAY_INTERVAL
        | MAXIMUM_PACKET_SIZE => Kind::U32,
        SUBSCRIPTION_IDENTIFIER => Kind::VarInt,
        CONTENT_TYPE
        | RESPONSE_TOPIC
        | ASSIGNED_CLIENT_IDENTIFIER
        | AUTHENTICATION_METHOD
        | RESPONSE_INFORMATION
        | SERVER_REFERENCE
        | REASON_STRING => Kind::Str,
        CORRELATION_DATA | AUTHENTICATION_DATA => Kind::Bin,
        USER_PROPERTY => Kind::Pair,
        _ => return None,
    })
}

/// One property as it lies on the wire (an implementation detail of [`PropertyItem`]).
#[derive(Clone, Copy)]
#[doc(hidden)]
pub enum Raw<'a> {
    Int(u32),
    Data(&'a [u8]),
    Pair(&'a [u8], &'a [u8]),
}

/// One property: its identifier and raw value. Strings are not validated here.
fn raw_property(input: &[u8]) -> PResult<'_, (u8, Raw<'_>)> {
    // The identifier is a Variable Byte Integer; every defined one fits in a byte.
    let (input, id) = varint(input)?;
    let id = u8::try_from(id).unwrap_or(0);
    let Some(k) = kind(id) else {
        return fail(DecodeError::UnknownProperty(id));
    };
    let (input, raw) = match k {
        Kind::Byte => {
            let (i, v) = be_u8(input)?;
            (i, Raw::Int(v.into()))
        }
        Kind::U16 => {
            let (i, v) = be_u16(input)?;
            (i, Raw::Int(v.into()))
        }
        Kind::U32 => {
            let (i, v) = be_u32(input)?;
            (i, Raw::Int(v))
        }
        Kind::VarInt => {
            let (i, v) = varint(input)?;
            (i, Raw::Int(v))
        }
        Kind::Str | Kind::Bin => {
            let (i, v) = length_prefixed(input)?;
            (i, Raw::Data(v))
        }
        Kind::Pair => {
            let (i, k) = length_prefixed(input)?;
            let (i, v) = length_prefixed(i)?;
            (i, Raw::Pair(k, v))
        }
    };
    Ok((input, (id, raw)))
}

fn flag(id: u8, v: u32) -> Result<bool, DecodeError> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::InvalidPropertyValue(id)),
    }
}

impl Properties {
    /// Whether no property is set.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// Parse a property block (length, then properties) for a packet.
    pub(crate) fn decode<'f>(
        frame: Frame<'f>,
        input: &'f [u8],
        ctx: PropertyContext,
        limits: &Limits,
    ) -> PResult<'f, Self> {
        let (input, len) = varint(input)?;
        let (rest, block) = take(len)(input)?;
        match Self::decode_block(frame, block, ctx, limits) {
            Ok(p) => Ok((rest, p)),
            Err(nom::Err::Error(e) | nom::Err::Failure(e)) => Err(nom::Err::Failure(e)),
            Err(e) => Err(e),
        }
    }

    fn decode_block<'f>(
        frame: Frame<'f>,
        block: &'f [u8],
        ctx: PropertyContext,
        limits: &Limits,
    ) -> Result<Self, nom::Err<crate::wire::PErr>> {
        use id::*;
        let mut p = Self::default();
        let mut seen = 0u64;
        let (mut users, mut sub_ids) = (0usize, 0usize);
        let mut cur = block;
        let string = |d: &[u8]| MqttString::from_bytes(frame.slice(d));
        while !cur.is_empty() {
            let (next, (id, raw)) = raw_property(cur)?;
            cur = next;
            if !ctx.allows(id) {
                return Err(bad(DecodeError::PropertyNotAllowed {
                    property: id,
                    packet: ctx.name,
                }));
            }
            let repeatable = id == USER_PROPERTY
                || (id == SUBSCRIPTION_IDENTIFIER && ctx == PropertyContext::PUBLISH);
            if !repeatable {
                if seen & (1 << id) != 0 {
                    return Err(bad(DecodeError::DuplicateProperty(id)));
                }
                seen |= 1 << id;
            }
            let r: Result<(), DecodeError> = (|| {
                match (id, raw) {
                    (USER_PROPERTY, Raw::Pair(k, v)) => {
                        string(k)?;
                        string(v)?;
                        users += 1;
                        if users > limits.max_user_properties {
                            return Err(DecodeError::TooManyUserProperties {
                                max: limits.max_user_properties,
                            });
                        }
                    }
                    (SUBSCRIPTION_IDENTIFIER, Raw::Int(v)) => {
                        if v == 0 {
                            return Err(DecodeError::InvalidPropertyValue(id));
                        }
                        sub_ids += 1;
                    }
                    (PAYLOAD_FORMAT_INDICATOR, Raw::Int(v)) => {
                        p.payload_format_indicator = Some(flag(id, v)?)
                    }
                    (MESSAGE_EXPIRY_INTERVAL, Raw::Int(v)) => p.message_expiry_interval = Some(v),
                    (CONTENT_TYPE, Raw::Data(d)) => p.content_type = Some(string(d)?),
                    (RESPONSE_TOPIC, Raw::Data(d)) => {
                        p.response_topic = Some(TopicName::new(string(d)?)?)
                    }
                    (CORRELATION_DATA, Raw::Data(d)) => p.correlation_data = Some(frame.slice(d)),
                    (SESSION_EXPIRY_INTERVAL, Raw::Int(v)) => p.session_expiry_interval = Some(v),
                    (ASSIGNED_CLIENT_IDENTIFIER, Raw::Data(d)) => {
                        p.assigned_client_identifier = Some(string(d)?)
                    }
                    (SERVER_KEEP_ALIVE, Raw::Int(v)) => p.server_keep_alive = Some(v as u16),
                    (AUTHENTICATION_METHOD, Raw::Data(d)) => {
                        p.authentication_method = Some(string(d)?)
                    }
                    (AUTHENTICATION_DATA, Raw::Data(d)) => {
                        p.authentication_data = Some(frame.slice(d))
                    }
                    (REQUEST_PROBLEM_INFORMATION, Raw::Int(v)) => {
                        p.request_problem_information = Some(flag(id, v)?)
                    }
                    (WILL_DELAY_INTERVAL, Raw::Int(v)) => p.will_delay_interval = Some(v),
                    (REQUEST_RESPONSE_INFORMATION, Raw::Int(v)) => {
                        p.request_response_information = Some(flag(id, v)?)
                    }
                    (RESPONSE_INFORMATION, Raw::Data(d)) => {
                        p.response_information = Some(string(d)?)
                    }
                    (SERVER_REFERENCE, Raw::Data(d)) => p.server_reference = Some(string(d)?),
                    (REASON_STRING, Raw::Data(d)) => p.reason_string = Some(string(d)?),
                    (RECEIVE_MAXIMUM, Raw::Int(v)) => {
                        p.receive_maximum = Some(
                            NonZeroU16::new(v as u16)
                                .ok_or(DecodeError::InvalidPropertyValue(id))?,
                        )
                    }
                    (TOPIC_ALIAS_MAXIMUM, Raw::Int(v)) => p.topic_alias_maximum = Some(v as u16),
                    (TOPIC_ALIAS, Raw::Int(v)) => {
                        p.topic_alias =
                            Some(NonZeroU16::new(v as u16).ok_or(DecodeError::ZeroTopicAlias)?)
                    }
                    (MAXIMUM_QOS, Raw::Int(v)) => {
                        p.maximum_qos = Some(match v {
                            0 => QoS::AtMostOnce,
                            1 => QoS::AtLeastOnce,
                            _ => return Err(DecodeError::InvalidPropertyValue(id)),
                        })
                    }
                    (RETAIN_AVAILABLE, Raw::Int(v)) => p.retain_available = Some(flag(id, v)?),
                    (MAXIMUM_PACKET_SIZE, Raw::Int(v)) => {
                        p.maximum_packet_size =
                            Some(NonZeroU32::new(v).ok_or(DecodeError::InvalidPropertyValue(id))?)
                    }
                    (WILDCARD_SUBSCRIPTION_AVAILABLE, Raw::Int(v)) => {
                        p.wildcard_subscription_available = Some(flag(id, v)?)
                    }
                    (SUBSCRIPTION_IDENTIFIER_AVAILABLE, Raw::Int(v)) => {
                        p.subscription_identifier_available = Some(flag(id, v)?)
                    }
                    (SHARED_SUBSCRIPTION_AVAILABLE, Raw::Int(v)) => {
                        p.shared_subscription_available = Some(flag(id, v)?)
                    }
                    // `kind` and the table above agree; nothing else reaches here.
                    _ => return Err(DecodeError::UnknownProperty(id)),
                }
                Ok(())
            })();
            r.map_err(bad)?;
        }
        if users > 0 || sub_ids > 0 {
            let block = frame.slice(block);
            if users > 0 {
                p.user_properties = PropertyList::wire(block.clone(), users);
            }
            if sub_ids > 0 {
                p.subscription_identifiers = PropertyList::wire(block, sub_ids);
            }
        }
        Ok(p)
    }

    /// Bytes the properties take, without the property-length prefix; checks
    /// every set property is allowed on the packet.
    pub(crate) fn body_len(&self, ctx: PropertyContext) -> Result<usize, EncodeError> {
        use id::*;
        let mut n = 0usize;
        let mut add = |id: u8, len: usize| -> Result<(), EncodeError> {
            if !ctx.allows(id) {
                return Err(EncodeError::PropertyNotAllowed {
                    property: id,
                    packet: ctx.name,
                });
            }
            n += 1 + len;
            Ok(())
        };
        let p = self;
        if p.payload_format_indicator.is_some() {
            add(PAYLOAD_FORMAT_INDICATOR, 1)?;
        }
        if p.message_expiry_interval.is_some() {
            add(MESSAGE_EXPIRY_INTERVAL, 4)?;
        }
        if let Some(s) = &p.content_type {
            add(CONTENT_TYPE, string_len(s))?;
        }
        if let Some(s) = &p.response_topic {
            add(RESPONSE_TOPIC, string_len(s.as_mqtt_str()))?;
        }
        if let Some(d) = &p.correlation_data {
            add(CORRELATION_DATA, binary_len(d)?)?;
        }
        for sid in p.subscription_identifiers.iter() {
            if sid.get() > MAX_VARINT {
                return Err(EncodeError::InvalidPropertyValue(SUBSCRIPTION_IDENTIFIER));
            }
            add(SUBSCRIPTION_IDENTIFIER, varint_len(sid.get()))?;
        }
        if p.session_expiry_interval.is_some() {
            add(SESSION_EXPIRY_INTERVAL, 4)?;
        }
        if let Some(s) = &p.assigned_client_identifier {
            add(ASSIGNED_CLIENT_IDENTIFIER, string_len(s))?;
        }
        if p.server_keep_alive.is_some() {
            add(SERVER_KEEP_ALIVE, 2)?;
        }
        if let Some(s) = &p.authentication_method {
            add(AUTHENTICATION_METHOD, string_len(s))?;
        }
        if let Some(d) = &p.authentication_data {
            add(AUTHENTICATION_DATA, binary_len(d)?)?;
        }
        if p.request_problem_information.is_some() {
            add(REQUEST_PROBLEM_INFORMATION, 1)?;
        }
        if p.will_delay_interval.is_some() {
            add(WILL_DELAY_INTERVAL, 4)?;
        }
        if p.request_response_information.is_some() {
            add(REQUEST_RESPONSE_INFORMATION, 1)?;
        }
        if let Some(s) = &p.response_information {
            add(RESPONSE_INFORMATION, string_len(s))?;
        }
        if let Some(s) = &p.server_reference {
            add(SERVER_REFERENCE, string_len(s))?;
        }
        if let Some(s) = &p.reason_string {
            add(REASON_STRING, string_len(s))?;
        }
        if p.receive_maximum.is_some() {
            add(RECEIVE_MAXIMUM, 2)?;
        }
        if p.topic_alias_maximum.is_some() {
            add(TOPIC_ALIAS_MAXIMUM, 2)?;
        }
        if p.topic_alias.is_some() {
            add(TOPIC_ALIAS, 2)?;
        }
        if let Some(q) = p.maximum_qos {
            if q == QoS::ExactlyOnce {
                return Err(EncodeError::InvalidPropertyValue(MAXIMUM_QOS));
            }
            add(MAXIMUM_QOS, 1)?;
        }
        if p.retain_available.is_some() {
            add(RETAIN_AVAILABLE, 1)?;
        }
        for u in p.user_properties.iter() {
            add(USER_PROPERTY, string_len(&u.key) + string_len(&u.value))?;
        }
        if p.maximum_packet_size.is_some() {
            add(MAXIMUM_PACKET_SIZE, 4)?;
        }
        if p.wildcard_subscription_available.is_some() {
            add(WILDCARD_SUBSCRIPTION_AVAILABLE, 1)?;
        }
        if p.subscription_identifier_available.is_some() {
            add(SUBSCRIPTION_IDENTIFIER_AVAILABLE, 1)?;
        }
        if p.shared_subscription_available.is_some() {
            add(SHARED_SUBSCRIPTION_AVAILABLE, 1)?;
        }
        if n > MAX_VARINT as usize {
            return Err(EncodeError::PacketTooLarge {
                size: n,
                max: MAX_VARINT as usize,
            });
        }
        Ok(n)
    }

    /// Bytes the property block takes, length prefix included.
    pub(crate) fn encoded_len(&self, ctx: PropertyContext) -> Result<usize, EncodeError> {
        let n = self.body_len(ctx)?;
        Ok(varint_len(n as u32) + n)
    }

    /// Write the block: `body_len` must be what [`Self::body_len`] returned.
    pub(crate) fn encode(&self, buf: &mut BytesMut, body_len: usize) {
        use id::*;
        put_varint(buf, body_len as u32);
        let p = self;
        let byte = |buf: &mut BytesMut, id: u8, v: u8| {
            buf.put_u8(id);
            buf.put_u8(v);
        };
        let u16p = |buf: &mut BytesMut, id: u8, v: u16| {
            buf.put_u8(id);
            buf.put_u16(v);
        };
        let u32p = |buf: &mut BytesMut, id: u8, v: u32| {
            buf.put_u8(id);
            buf.put_u32(v);
        };
        let strp = |buf: &mut BytesMut, id: u8, v: &MqttString| {
            buf.put_u8(id);
            put_string(buf, v);
        };
        let binp = |buf: &mut BytesMut, id: u8, v: &[u8]| {
            buf.put_u8(id);
            put_binary(buf, v);
        };
        if let Some(v) = p.payload_format_indicator {
            byte(buf, PAYLOAD_FORMAT_INDICATOR, v.into());
        }
        if let Some(v) = p.message_expiry_interval {
            u32p(buf, MESSAGE_EXPIRY_INTERVAL, v);
        }
        if let Some(v) = &p.content_type {
            strp(buf, CONTENT_TYPE, v);
        }
        if let Some(v) = &p.response_topic {
            strp(buf, RESPONSE_TOPIC, v.as_mqtt_str());
        }
        if let Some(v) = &p.correlation_data {
            binp(buf, CORRELATION_DATA, v);
        }
        for sid in p.subscription_identifiers.iter() {
            buf.put_u8(SUBSCRIPTION_IDENTIFIER);
            put_varint(buf, sid.get());
        }
        if let Some(v) = p.session_expiry_interval {
            u32p(buf, SESSION_EXPIRY_INTERVAL, v);
        }
        if let Some(v) = &p.assigned_client_identifier {
            strp(buf, ASSIGNED_CLIENT_IDENTIFIER, v);
        }
        if let Some(v) = p.server_keep_alive {
            u16p(buf, SERVER_KEEP_ALIVE, v);
        }
        if let Some(v) = &p.authentication_method {
            strp(buf, AUTHENTICATION_METHOD, v);
        }
        if let Some(v) = &p.authentication_data {
            binp(buf, AUTHENTICATION_DATA, v);
        }
        if let Some(v) = p.request_problem_information {
            byte(buf, REQUEST_PROBLEM_INFORMATION, v.into());
        }
        if let Some(v) = p.will_delay_interval {
            u32p(buf, WILL_DELAY_INTERVAL, v);
        }
        if let Some(v) = p.request_response_information {
            byte(buf, REQUEST_RESPONSE_INFORMATION, v.into());
        }
        if let Some(v) = &p.response_information {
            strp(buf, RESPONSE_INFORMATION, v);
        }
        if let Some(v) = &p.server_reference {
            strp(buf, SERVER_REFERENCE, v);
        }
        if let Some(v) = &p.reason_string {
            strp(buf, REASON_STRING, v);
        }
        if let Some(v) = p.receive_maximum {
            u16p(buf, RECEIVE_MAXIMUM, v.get());
        }
        if let Some(v) = p.topic_alias_maximum {
            u16p(buf, TOPIC_ALIAS_MAXIMUM, v);
        }
        if let Some(v) = p.topic_alias {
            u16p(buf, TOPIC_ALIAS, v.get());
        }
        if let Some(v) = p.maximum_qos {
            byte(buf, MAXIMUM_QOS, v as u8);
        }
        if let Some(v) = p.retain_available {
            byte(buf, RETAIN_AVAILABLE, v.into());
        }
        for u in p.user_properties.iter() {
            buf.put_u8(USER_PROPERTY);
            put_string(buf, &u.key);
            put_string(buf, &u.value);
        }
        if let Some(v) = p.maximum_packet_size {
            u32p(buf, MAXIMUM_PACKET_SIZE, v.get());
        }
        if let Some(v) = p.wildcard_subscription_available {
            byte(buf, WILDCARD_SUBSCRIPTION_AVAILABLE, v.into());
        }
        if let Some(v) = p.subscription_identifier_available {
            byte(buf, SUBSCRIPTION_IDENTIFIER_AVAILABLE, v.into());
        }
        if let Some(v) = p.shared_subscription_available {
            byte(buf, SHARED_SUBSCRIPTION_AVAILABLE, v.into());
        }
    }
}

fn bad(e: impl Into<DecodeError>) -> nom::Err<crate::wire::PErr> {
    nom::Err::Failure(crate::wire::PErr(e.into()))
}

/// A user property (0x26): a name/value string pair.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UserProperty {
    /// The name.
    pub key: MqttString,
    /// The value.
    pub value: MqttString,
}

impl UserProperty {
    /// A pair from two strings.
    pub fn new(key: MqttString, value: MqttString) -> Self {
        Self { key, value }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::UserProperty {}
    impl Sealed for std::num::NonZeroU32 {}
}

/// An item of a repeatable property ([`UserProperty`], or a subscription
/// identifier as `NonZeroU32`).
pub trait PropertyItem: sealed::Sealed + Clone {
    #[doc(hidden)]
    const ID: u8;
    #[doc(hidden)]
    fn from_raw(block: &Bytes, raw: Raw<'_>) -> Option<Self>;
}

impl PropertyItem for UserProperty {
    const ID: u8 = id::USER_PROPERTY;
    fn from_raw(block: &Bytes, raw: Raw<'_>) -> Option<Self> {
        match raw {
            Raw::Pair(k, v) => Some(Self {
                key: MqttString::from_bytes(block.slice_ref(k)).ok()?,
                value: MqttString::from_bytes(block.slice_ref(v)).ok()?,
            }),
            _ => None,
        }
    }
}

impl PropertyItem for NonZeroU32 {
    const ID: u8 = id::SUBSCRIPTION_IDENTIFIER;
    fn from_raw(_: &Bytes, raw: Raw<'_>) -> Option<Self> {
        match raw {
            Raw::Int(v) => Self::new(v),
            _ => None,
        }
    }
}

/// A property that may occur several times, in order.
///
/// Built by hand it is a `Vec`; decoded, it is a view of the packet's property
/// block walked on demand, so decoding allocates nothing for it.
#[derive(Clone)]
pub struct PropertyList<T> {
    repr: Repr<T>,
}

#[derive(Clone)]
enum Repr<T> {
    List(Vec<T>),
    Wire { block: Bytes, len: usize },
}

/// User properties (0x26), in order.
pub type UserProperties = PropertyList<UserProperty>;
/// Subscription identifiers (0x0B), 1 to 268,435,455.
pub type SubscriptionIds = PropertyList<NonZeroU32>;

impl<T> Default for PropertyList<T> {
    fn default() -> Self {
        Self {
            repr: Repr::List(Vec::new()),
        }
    }
}

impl<T: PropertyItem> PropertyList<T> {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    fn wire(block: Bytes, len: usize) -> Self {
        Self {
            repr: Repr::Wire { block, len },
        }
    }

    /// How many items there are.
    pub fn len(&self) -> usize {
        match &self.repr {
            Repr::List(v) => v.len(),
            Repr::Wire { len, .. } => *len,
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The items, in wire order.
    pub fn iter(&self) -> Iter<'_, T> {
        match &self.repr {
            Repr::List(v) => Iter::List(v.iter()),
            Repr::Wire { block, .. } => Iter::Wire { block, rest: block },
        }
    }

    /// The first item.
    pub fn first(&self) -> Option<T> {
        self.iter().next()
    }

    /// Append an item (a decoded list is copied into a `Vec` first).
    pub fn push(&mut self, item: T) {
        if let Repr::Wire { .. } = self.repr {
            let v: Vec<T> = self.iter().collect();
            self.repr = Repr::List(v);
        }
        if let Repr::List(v) = &mut self.repr {
            v.push(item);
        }
    }

    /// Remove every item.
    pub fn clear(&mut self) {
        self.repr = Repr::List(Vec::new());
    }
}

impl<T: PropertyItem> FromIterator<T> for PropertyList<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        Self {
            repr: Repr::List(iter.into_iter().collect()),
        }
    }
}

impl<T: PropertyItem> From<Vec<T>> for PropertyList<T> {
    fn from(v: Vec<T>) -> Self {
        Self {
            repr: Repr::List(v),
        }
    }
}

impl<T: PropertyItem + PartialEq> PartialEq for PropertyList<T> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<T: PropertyItem + Eq> Eq for PropertyList<T> {}

impl<T: PropertyItem + fmt::Debug> fmt::Debug for PropertyList<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Iterator over a [`PropertyList`].
#[derive(Clone)]
pub enum Iter<'a, T> {
    #[doc(hidden)]
    List(std::slice::Iter<'a, T>),
    #[doc(hidden)]
    Wire { block: &'a Bytes, rest: &'a [u8] },
}

impl<T: PropertyItem> Iterator for Iter<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        match self {
            Self::List(it) => it.next().cloned(),
            Self::Wire { block, rest } => {
                // The block was validated when it was decoded.
                while let Ok((next, (id, raw))) = raw_property(rest) {
                    *rest = next;
                    if id == T::ID {
                        return T::from_raw(block, raw);
                    }
                }
                None
            }
        }
    }
}
