//! 5.0 properties (2.2.2): one struct for every packet, with the set each
//! packet may carry checked on decode and on encode.
//!
//! User properties and subscription identifiers may repeat. Decoded, they are
//! not collected into a `Vec`: the list keeps a view of the property block and
//! walks it on demand, so decoding allocates nothing for them however many a
//! peer sends.

use std::fmt;
use std::marker::PhantomData;
use std::num::{NonZeroU16, NonZeroU32};

use bytes::{BufMut, Bytes, BytesMut};
use nom::bytes::complete::take;
use nom::number::complete::{be_u16, be_u32, be_u8};

use crate::error::{DecodeError, EncodeError};
use crate::string::{MqttString, TopicName};
use crate::types::QoS;
use crate::wire::{
    fail, length_prefixed, put_binary, put_string, put_varint, string_len, varint, varint_len,
    Frame, PResult, MAX_VARINT,
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

/// The properties of a 5.0 packet, kept in wire form.
///
/// A decoded packet's properties are a view of its property block, validated
/// once on decode: nothing is copied or allocated, the struct is small (so
/// packets are cheap to move), and encoding writes the block back as it is —
/// a broker forwarding a PUBLISH neither re-validates nor re-encodes the
/// properties it passes on unchanged ([MQTT-3.3.2-4], [MQTT-3.3.2-15..20]).
///
/// Getters walk the block (property blocks are short; strings are checked
/// again as they are handed out, which costs one UTF-8 pass). Setters rebuild
/// the block: properties are built once and read or forwarded many times.
/// Which properties a packet may carry is checked on decode and on encode
/// ([`EncodeError::PropertyNotAllowed`]); encoding for 3.1.x leaves them out.
///
/// Equality compares properties, not bytes: the same properties in another
/// order are equal, except that repeated ones (user properties, subscription
/// identifiers) must be in the same order.
#[derive(Clone, Default)]
pub struct Properties {
    /// The properties as they lie on the wire, without the length prefix.
    block: Bytes,
    /// One bit per property identifier present in `block`.
    present: u64,
    user_count: u32,
    sub_id_count: u32,
}

/// A bit of `Properties::present` no identifier uses: a setter was given a
/// value that can't be sent (binary data over 65,535 bytes, an empty
/// Response Topic). Bits 48 to 55 hold which property it was.
const INVALID: u64 = 1 << 63;
const INVALID_ID_SHIFT: u32 = 48;
const FLAG_BITS: u64 = INVALID | (0xFF << INVALID_ID_SHIFT);

/// A value of a single-valued property, as typed in Rust and as written on the wire.
trait Value: Sized {
    fn from_raw(block: &Bytes, raw: Raw<'_>) -> Option<Self>;
    fn fits(&self) -> bool {
        true
    }
    fn wire_len(&self) -> usize;
    fn put(&self, buf: &mut BytesMut);
}

impl Value for bool {
    fn from_raw(_: &Bytes, raw: Raw<'_>) -> Option<Self> {
        match raw {
            Raw::Int(v) => Some(v != 0),
            _ => None,
        }
    }
    fn wire_len(&self) -> usize {
        1
    }
    fn put(&self, buf: &mut BytesMut) {
        buf.put_u8((*self).into());
    }
}

impl Value for QoS {
    fn from_raw(_: &Bytes, raw: Raw<'_>) -> Option<Self> {
        match raw {
            Raw::Int(v) => Self::from_u8(v as u8),
            _ => None,
        }
    }
    fn wire_len(&self) -> usize {
        1
    }
    fn put(&self, buf: &mut BytesMut) {
        buf.put_u8(*self as u8);
    }
}

impl Value for u16 {
    fn from_raw(_: &Bytes, raw: Raw<'_>) -> Option<Self> {
        match raw {
            Raw::Int(v) => Some(v as Self),
            _ => None,
        }
    }
    fn wire_len(&self) -> usize {
        2
    }
    fn put(&self, buf: &mut BytesMut) {
        buf.put_u16(*self);
    }
}

impl Value for NonZeroU16 {
    fn from_raw(_: &Bytes, raw: Raw<'_>) -> Option<Self> {
        match raw {
            Raw::Int(v) => Self::new(v as u16),
            _ => None,
        }
    }
    fn wire_len(&self) -> usize {
        2
    }
    fn put(&self, buf: &mut BytesMut) {
        buf.put_u16(self.get());
    }
}

impl Value for u32 {
    fn from_raw(_: &Bytes, raw: Raw<'_>) -> Option<Self> {
        match raw {
            Raw::Int(v) => Some(v),
            _ => None,
        }
    }
    fn wire_len(&self) -> usize {
        4
    }
    fn put(&self, buf: &mut BytesMut) {
        buf.put_u32(*self);
    }
}

impl Value for NonZeroU32 {
    fn from_raw(_: &Bytes, raw: Raw<'_>) -> Option<Self> {
        match raw {
            Raw::Int(v) => Self::new(v),
            _ => None,
        }
    }
    fn wire_len(&self) -> usize {
        4
    }
    fn put(&self, buf: &mut BytesMut) {
        buf.put_u32(self.get());
    }
}

impl Value for MqttString {
    fn from_raw(block: &Bytes, raw: Raw<'_>) -> Option<Self> {
        match raw {
            Raw::Data(d) => Self::from_bytes(block.slice_ref(d)).ok(),
            _ => None,
        }
    }
    fn wire_len(&self) -> usize {
        string_len(self)
    }
    fn put(&self, buf: &mut BytesMut) {
        put_string(buf, self);
    }
}

impl Value for TopicName {
    fn from_raw(block: &Bytes, raw: Raw<'_>) -> Option<Self> {
        Self::new(MqttString::from_raw(block, raw)?).ok()
    }
    fn fits(&self) -> bool {
        !self.is_empty()
    }
    fn wire_len(&self) -> usize {
        string_len(self.as_mqtt_str())
    }
    fn put(&self, buf: &mut BytesMut) {
        put_string(buf, self.as_mqtt_str());
    }
}

impl Value for Bytes {
    fn from_raw(block: &Bytes, raw: Raw<'_>) -> Option<Self> {
        match raw {
            Raw::Data(d) => Some(block.slice_ref(d)),
            _ => None,
        }
    }
    fn fits(&self) -> bool {
        self.len() <= usize::from(u16::MAX)
    }
    fn wire_len(&self) -> usize {
        2 + self.len()
    }
    fn put(&self, buf: &mut BytesMut) {
        put_binary(buf, self);
    }
}

macro_rules! accessors {
    ($( $(#[$doc:meta])* $get:ident, $set:ident, $id:ident: $ty:ty; )*) => {
        impl Properties {
            $(
                $(#[$doc])*
                pub fn $get(&self) -> Option<$ty> {
                    self.get(id::$id)
                }

                #[doc = concat!("Set or clear [`Properties::", stringify!($get), "`].")]
                pub fn $set(&mut self, value: Option<$ty>) -> &mut Self {
                    self.set(id::$id, value)
                }
            )*
        }

        impl fmt::Debug for Properties {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut m = f.debug_map();
                $(
                    if let Some(v) = self.$get() {
                        m.entry(&stringify!($get), &v);
                    }
                )*
                if let Some(v) = self.maximum_qos() {
                    m.entry(&"maximum_qos", &v);
                }
                if !self.user_properties().is_empty() {
                    m.entry(&"user_properties", &self.user_properties());
                }
                if !self.subscription_identifiers().is_empty() {
                    m.entry(&"subscription_identifiers", &self.subscription_identifiers());
                }
                m.finish()
            }
        }
    };
}

accessors! {
    /// 0x01 Payload Format Indicator: the payload is UTF-8 (`true`) or unspecified bytes.
    payload_format_indicator, set_payload_format_indicator, PAYLOAD_FORMAT_INDICATOR: bool;
    /// 0x02 Message Expiry Interval, seconds.
    message_expiry_interval, set_message_expiry_interval, MESSAGE_EXPIRY_INTERVAL: u32;
    /// 0x03 Content Type of the payload.
    content_type, set_content_type, CONTENT_TYPE: MqttString;
    /// 0x08 Response Topic; no wildcards ([MQTT-3.3.2-14]).
    response_topic, set_response_topic, RESPONSE_TOPIC: TopicName;
    /// 0x09 Correlation Data.
    correlation_data, set_correlation_data, CORRELATION_DATA: Bytes;
    /// 0x11 Session Expiry Interval, seconds.
    session_expiry_interval, set_session_expiry_interval, SESSION_EXPIRY_INTERVAL: u32;
    /// 0x12 Assigned Client Identifier.
    assigned_client_identifier, set_assigned_client_identifier, ASSIGNED_CLIENT_IDENTIFIER: MqttString;
    /// 0x13 Server Keep Alive, seconds.
    server_keep_alive, set_server_keep_alive, SERVER_KEEP_ALIVE: u16;
    /// 0x15 Authentication Method.
    authentication_method, set_authentication_method, AUTHENTICATION_METHOD: MqttString;
    /// 0x16 Authentication Data.
    authentication_data, set_authentication_data, AUTHENTICATION_DATA: Bytes;
    /// 0x17 Request Problem Information.
    request_problem_information, set_request_problem_information, REQUEST_PROBLEM_INFORMATION: bool;
    /// 0x18 Will Delay Interval, seconds.
    will_delay_interval, set_will_delay_interval, WILL_DELAY_INTERVAL: u32;
    /// 0x19 Request Response Information.
    request_response_information, set_request_response_information, REQUEST_RESPONSE_INFORMATION: bool;
    /// 0x1A Response Information: basis for response topics.
    response_information, set_response_information, RESPONSE_INFORMATION: MqttString;
    /// 0x1C Server Reference: another server to use.
    server_reference, set_server_reference, SERVER_REFERENCE: MqttString;
    /// 0x1F Reason String.
    reason_string, set_reason_string, REASON_STRING: MqttString;
    /// 0x21 Receive Maximum: most unacknowledged QoS 1 and 2 PUBLISHes the sender accepts.
    receive_maximum, set_receive_maximum, RECEIVE_MAXIMUM: NonZeroU16;
    /// 0x22 Topic Alias Maximum.
    topic_alias_maximum, set_topic_alias_maximum, TOPIC_ALIAS_MAXIMUM: u16;
    /// 0x23 Topic Alias (never 0, [MQTT-3.3.2-8]).
    topic_alias, set_topic_alias, TOPIC_ALIAS: NonZeroU16;
    /// 0x25 Retain Available.
    retain_available, set_retain_available, RETAIN_AVAILABLE: bool;
    /// 0x27 Maximum Packet Size the sender accepts.
    maximum_packet_size, set_maximum_packet_size, MAXIMUM_PACKET_SIZE: NonZeroU32;
    /// 0x28 Wildcard Subscription Available.
    wildcard_subscription_available, set_wildcard_subscription_available, WILDCARD_SUBSCRIPTION_AVAILABLE: bool;
    /// 0x29 Subscription Identifier Available.
    subscription_identifier_available, set_subscription_identifier_available, SUBSCRIPTION_IDENTIFIER_AVAILABLE: bool;
    /// 0x2A Shared Subscription Available.
    shared_subscription_available, set_shared_subscription_available, SHARED_SUBSCRIPTION_AVAILABLE: bool;
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
    // The identifier is a Variable Byte Integer, but every defined one is
    // below 0x80: one byte (2.2.2.2).
    let (input, id) = nom::number::complete::be_u8(input)?;
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

fn bad(e: impl Into<DecodeError>) -> nom::Err<crate::wire::PErr> {
    nom::Err::Failure(crate::wire::PErr(e.into()))
}

/// Each property of a block with its identifier, raw value and wire bytes.
fn items(block: &[u8]) -> impl Iterator<Item = (u8, Raw<'_>, &[u8])> {
    let mut rest = block;
    std::iter::from_fn(move || {
        let (next, (id, raw)) = raw_property(rest).ok()?;
        let whole = &rest[..rest.len() - next.len()];
        rest = next;
        Some((id, raw, whole))
    })
}

impl Properties {
    /// No properties.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether no property is set.
    pub fn is_empty(&self) -> bool {
        self.present & !FLAG_BITS == 0
    }

    /// Whether the property with this identifier is present.
    pub fn contains(&self, id: u8) -> bool {
        id < 64 && self.present & (1 << id) != 0
    }

    /// The properties as they lie on the wire, without the length prefix.
    pub fn as_wire(&self) -> &Bytes {
        &self.block
    }

    /// The same properties in an allocation of their own: decoded, the
    /// block is a slice of the packet's frame and keeps the whole read
    /// buffer it came in alive; what is kept long after the packet (a
    /// retained message, a will) should be detached.
    pub fn detached(&self) -> Self {
        Self {
            block: Bytes::copy_from_slice(&self.block),
            present: self.present,
            user_count: self.user_count,
            sub_id_count: self.sub_id_count,
        }
    }

    /// Properties from wire bytes (as [`Properties::as_wire`] gave them),
    /// validated for the packet `ctx` — for state that was stored and is
    /// being restored.
    pub fn from_wire(
        block: Bytes,
        ctx: PropertyContext,
        limits: &Limits,
    ) -> Result<Self, DecodeError> {
        if block.is_empty() {
            return Ok(Self::default());
        }
        let (present, user_count, sub_id_count) = Self::validate(&block, ctx, limits)?;
        Ok(Self {
            block,
            present,
            user_count,
            sub_id_count,
        })
    }

    fn get<T: Value>(&self, id: u8) -> Option<T> {
        if !self.contains(id) {
            return None;
        }
        let (_, raw, _) = items(&self.block).find(|(i, _, _)| *i == id)?;
        T::from_raw(&self.block, raw)
    }

    /// 0x24 Maximum QoS the server supports: 0 or 1.
    pub fn maximum_qos(&self) -> Option<QoS> {
        self.get(id::MAXIMUM_QOS)
    }

    /// Set or clear [`Properties::maximum_qos`]. An absent Maximum QoS means
    /// QoS 2 is supported, so setting QoS 2 clears the property.
    pub fn set_maximum_qos(&mut self, value: Option<QoS>) -> &mut Self {
        self.set(id::MAXIMUM_QOS, value.filter(|q| *q != QoS::ExactlyOnce))
    }

    fn set<T: Value>(&mut self, id: u8, value: Option<T>) -> &mut Self {
        if self.present & INVALID != 0 && (self.present >> INVALID_ID_SHIFT) as u8 == id {
            // The unsendable value is being replaced or cleared.
            self.present &= !FLAG_BITS;
        }
        if value.as_ref().is_some_and(|v| !v.fits()) {
            // Refused when encoding ([`EncodeError::InvalidPropertyValue`]).
            self.present &= !FLAG_BITS;
            self.present |= INVALID | (u64::from(id) << INVALID_ID_SHIFT);
            return self;
        }
        if value.is_none() && !self.contains(id) {
            return self;
        }
        let extra = value.as_ref().map_or(0, |v| 1 + v.wire_len());
        let mut buf = self.copy_without(1 << id, extra);
        self.present &= !(1u64 << id);
        if let Some(v) = value {
            buf.put_u8(id);
            v.put(&mut buf);
            self.present |= 1 << id;
        }
        self.block = buf.freeze();
        self
    }

    /// User properties (0x26), in order.
    pub fn user_properties(&self) -> UserProperties {
        PropertyList::view(&self.block, self.user_count)
    }

    /// Subscription identifiers (0x0B), in order: several on a PUBLISH to a
    /// client, at most one on SUBSCRIBE.
    pub fn subscription_identifiers(&self) -> SubscriptionIds {
        PropertyList::view(&self.block, self.sub_id_count)
    }

    /// Append a user property; order and duplicates are kept ([MQTT-3.3.2-18]).
    pub fn push_user_property(&mut self, property: UserProperty) -> &mut Self {
        self.append(&property);
        self.user_count += 1;
        self
    }

    /// Append a subscription identifier.
    pub fn push_subscription_identifier(&mut self, id: SubscriptionId) -> &mut Self {
        self.append(&id);
        self.sub_id_count += 1;
        self
    }

    /// Replace the user properties.
    pub fn set_user_properties(
        &mut self,
        list: impl IntoIterator<Item = UserProperty>,
    ) -> &mut Self {
        self.remove_all(id::USER_PROPERTY);
        for p in list {
            self.push_user_property(p);
        }
        self
    }

    /// Replace the subscription identifiers.
    pub fn set_subscription_identifiers(
        &mut self,
        list: impl IntoIterator<Item = SubscriptionId>,
    ) -> &mut Self {
        self.remove_all(id::SUBSCRIPTION_IDENTIFIER);
        // The block is copied once for all of them, not once each (a
        // subscriber with many overlapping subscriptions would otherwise
        // cost a copy per identifier per delivery).
        let list: Vec<SubscriptionId> = list.into_iter().collect();
        if list.is_empty() {
            return self;
        }
        let extra: usize = list.iter().map(PropertyItem::wire_len).sum();
        let mut buf = BytesMut::with_capacity(self.block.len() + extra);
        buf.put_slice(&self.block);
        for i in &list {
            i.put(&mut buf);
        }
        self.block = buf.freeze();
        self.present |= 1 << SubscriptionId::ID;
        self.sub_id_count += u32::try_from(list.len()).unwrap_or(u32::MAX);
        self
    }

    fn append<T: PropertyItem>(&mut self, item: &T) {
        let mut buf = BytesMut::with_capacity(self.block.len() + item.wire_len());
        buf.put_slice(&self.block);
        item.put(&mut buf);
        self.block = buf.freeze();
        self.present |= 1 << T::ID;
    }

    fn remove_all(&mut self, id: u8) {
        self.remove_mask(1 << id);
    }

    /// Drop every property whose identifier is in `mask`, in one pass.
    fn remove_mask(&mut self, mask: u64) {
        let mask = mask & self.present & !FLAG_BITS;
        if mask == 0 {
            return;
        }
        self.block = self.copy_without(mask, 0).freeze();
        self.present &= !mask;
        if mask & (1 << id::USER_PROPERTY) != 0 {
            self.user_count = 0;
        }
        if mask & (1 << id::SUBSCRIPTION_IDENTIFIER) != 0 {
            self.sub_id_count = 0;
        }
    }

    /// The block without the properties in `mask`, with room for `extra` bytes.
    fn copy_without(&self, mask: u64, extra: usize) -> BytesMut {
        let mut buf = BytesMut::with_capacity(self.block.len() + extra);
        for (i, _, whole) in items(&self.block) {
            if mask & (1 << i) == 0 {
                buf.put_slice(whole);
            }
        }
        buf
    }

    /// These properties without the ones named: what a broker forwards after
    /// dropping, say, the Topic Alias and Subscription Identifiers of an
    /// incoming PUBLISH. Shares the block when none of them is present.
    pub fn without(&self, ids: &[u8]) -> Self {
        let mut out = self.clone();
        out.remove(ids);
        out
    }

    /// Drop the properties named, in place: [`Properties::without`] for
    /// properties the caller owns (no copy of the block, nor of its share,
    /// when none of them is present).
    pub fn remove(&mut self, ids: &[u8]) {
        self.remove_mask(
            ids.iter()
                .filter(|&&id| id < 64)
                .fold(0, |m, &id| m | 1 << id),
        );
    }

    /// Parse a property block (length, then properties) for a packet.
    #[inline]
    pub(crate) fn decode<'f>(
        frame: Frame<'f>,
        input: &'f [u8],
        ctx: PropertyContext,
        limits: &Limits,
    ) -> PResult<'f, Self> {
        let (input, len) = varint(input)?;
        let (rest, block) = take(len)(input)?;
        if block.is_empty() {
            return Ok((rest, Self::default()));
        }
        match Self::validate(block, ctx, limits) {
            Ok((present, user_count, sub_id_count)) => Ok((
                rest,
                Self {
                    block: frame.slice(block),
                    present,
                    user_count,
                    sub_id_count,
                },
            )),
            Err(e) => Err(bad(e)),
        }
    }

    /// Check every property of a block; return the presence bits and counts.
    fn validate(
        block: &[u8],
        ctx: PropertyContext,
        limits: &Limits,
    ) -> Result<(u64, u32, u32), DecodeError> {
        use id::*;
        let mut present = 0u64;
        let (mut users, mut sub_ids) = (0u32, 0u32);
        let mut cur = block;
        while !cur.is_empty() {
            let (next, (id, raw)) = match raw_property(cur) {
                Ok(v) => v,
                Err(nom::Err::Error(e) | nom::Err::Failure(e)) => return Err(e.0),
                Err(nom::Err::Incomplete(_)) => return Err(DecodeError::Truncated),
            };
            cur = next;
            if !ctx.allows(id) {
                return Err(DecodeError::PropertyNotAllowed {
                    property: id,
                    packet: ctx.name,
                });
            }
            let repeatable = id == USER_PROPERTY
                || (id == SUBSCRIPTION_IDENTIFIER && ctx == PropertyContext::PUBLISH);
            if !repeatable && present & (1 << id) != 0 {
                return Err(DecodeError::DuplicateProperty(id));
            }
            present |= 1 << id;
            let invalid = DecodeError::InvalidPropertyValue(id);
            match (id, raw) {
                (USER_PROPERTY, Raw::Pair(k, v)) => {
                    // Both halves are strings ([MQTT-1.5.7-1]).
                    crate::string::validate(k)?;
                    crate::string::validate(v)?;
                    users += 1;
                    if users as usize > limits.max_user_properties {
                        return Err(DecodeError::TooManyUserProperties {
                            max: limits.max_user_properties,
                        });
                    }
                }
                (SUBSCRIPTION_IDENTIFIER, Raw::Int(v)) => {
                    if v == 0 {
                        return Err(invalid);
                    }
                    sub_ids += 1;
                }
                (RESPONSE_TOPIC, Raw::Data(d)) => {
                    if d.is_empty() {
                        // A Response Topic is a Topic Name ([MQTT-4.7.3-1]).
                        return Err(crate::string::StringError::EmptyTopic.into());
                    }
                    crate::string::validate(d)?;
                    if d.contains(&b'+') || d.contains(&b'#') {
                        return Err(crate::string::StringError::WildcardInTopicName.into());
                    }
                }
                (_, Raw::Data(d)) if kind(id).is_some_and(|k| matches!(k, Kind::Str)) => {
                    crate::string::validate(d)?;
                }
                (
                    PAYLOAD_FORMAT_INDICATOR
                    | REQUEST_PROBLEM_INFORMATION
                    | REQUEST_RESPONSE_INFORMATION
                    | RETAIN_AVAILABLE
                    | WILDCARD_SUBSCRIPTION_AVAILABLE
                    | SUBSCRIPTION_IDENTIFIER_AVAILABLE
                    | SHARED_SUBSCRIPTION_AVAILABLE,
                    Raw::Int(v),
                ) => {
                    flag(id, v)?;
                }
                (MAXIMUM_QOS, Raw::Int(v)) if v > 1 => return Err(invalid),
                (RECEIVE_MAXIMUM | MAXIMUM_PACKET_SIZE, Raw::Int(0)) => return Err(invalid),
                (TOPIC_ALIAS, Raw::Int(0)) => return Err(DecodeError::ZeroTopicAlias),
                _ => {}
            }
        }
        if present & (1 << AUTHENTICATION_DATA) != 0 && present & (1 << AUTHENTICATION_METHOD) == 0
        {
            // 3.1.2.11.10, 3.2.2.3.18: data without a method is a Protocol Error.
            return Err(DecodeError::AuthenticationDataWithoutMethod);
        }
        Ok((present, users, sub_ids))
    }

    /// Bytes the properties take, without the property-length prefix; checks
    /// every property present is allowed on the packet.
    #[inline]
    pub(crate) fn body_len(&self, ctx: PropertyContext) -> Result<usize, EncodeError> {
        if self.present & INVALID != 0 {
            return Err(EncodeError::InvalidPropertyValue(
                (self.present >> INVALID_ID_SHIFT) as u8,
            ));
        }
        let present = self.present & !FLAG_BITS;
        let refused = present & !ctx.mask;
        if refused != 0 {
            return Err(EncodeError::PropertyNotAllowed {
                property: refused.trailing_zeros() as u8,
                packet: ctx.name,
            });
        }
        if ctx != PropertyContext::PUBLISH && self.sub_id_count > 1 {
            // 3.8.2.1.2: one Subscription Identifier on SUBSCRIBE.
            return Err(EncodeError::InvalidPropertyValue(
                id::SUBSCRIPTION_IDENTIFIER,
            ));
        }
        if present & (1 << id::AUTHENTICATION_DATA) != 0
            && present & (1 << id::AUTHENTICATION_METHOD) == 0
        {
            return Err(EncodeError::InvalidPropertyValue(id::AUTHENTICATION_DATA));
        }
        if self.block.len() > MAX_VARINT as usize {
            return Err(EncodeError::PacketTooLarge {
                size: self.block.len(),
                max: MAX_VARINT as usize,
            });
        }
        Ok(self.block.len())
    }

    /// Bytes the property block takes, length prefix included.
    #[inline]
    pub(crate) fn encoded_len(&self, ctx: PropertyContext) -> Result<usize, EncodeError> {
        let n = self.body_len(ctx)?;
        Ok(varint_len(n as u32) + n)
    }

    /// Write the block: `body_len` must be what [`Self::body_len`] returned.
    #[inline]
    pub(crate) fn encode(&self, buf: &mut BytesMut, body_len: usize) {
        put_varint(buf, body_len as u32);
        buf.put_slice(&self.block);
    }

    /// The single-valued properties as (identifier, wire bytes), sorted by
    /// identifier, and the repeated ones in order: what equality compares.
    fn canonical(&self) -> Vec<(u8, &[u8])> {
        let mut v: Vec<(u8, &[u8])> = items(&self.block).map(|(i, _, w)| (i, w)).collect();
        v.sort_by_key(|(i, _)| *i);
        v
    }
}

impl PartialEq for Properties {
    fn eq(&self, other: &Self) -> bool {
        self.present == other.present
            && (self.block == other.block || self.canonical() == other.canonical())
    }
}

impl Eq for Properties {}

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
    impl Sealed for super::SubscriptionId {}
}

/// A subscription identifier (0x0B): 1 to 268,435,455 ([`MAX_VARINT`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(NonZeroU32);

impl SubscriptionId {
    /// The identifier, or `None` for 0 or a value above 268,435,455.
    pub fn new(value: u32) -> Option<Self> {
        if value > MAX_VARINT {
            return None;
        }
        NonZeroU32::new(value).map(Self)
    }

    /// The numeric value.
    pub fn get(self) -> u32 {
        self.0.get()
    }
}

/// An item of a repeatable property: [`UserProperty`] or [`SubscriptionId`].
pub trait PropertyItem: sealed::Sealed + Clone {
    #[doc(hidden)]
    const ID: u8;
    #[doc(hidden)]
    fn from_raw(block: &Bytes, raw: Raw<'_>) -> Option<Self>;
    /// Bytes the item takes on the wire, identifier included.
    #[doc(hidden)]
    fn wire_len(&self) -> usize;
    /// Write the item, identifier included.
    #[doc(hidden)]
    fn put(&self, buf: &mut BytesMut);
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
    fn wire_len(&self) -> usize {
        1 + string_len(&self.key) + string_len(&self.value)
    }
    fn put(&self, buf: &mut BytesMut) {
        buf.put_u8(Self::ID);
        put_string(buf, &self.key);
        put_string(buf, &self.value);
    }
}

impl PropertyItem for SubscriptionId {
    const ID: u8 = id::SUBSCRIPTION_IDENTIFIER;
    fn from_raw(_: &Bytes, raw: Raw<'_>) -> Option<Self> {
        match raw {
            Raw::Int(v) => Self::new(v),
            _ => None,
        }
    }
    fn wire_len(&self) -> usize {
        1 + varint_len(self.get())
    }
    fn put(&self, buf: &mut BytesMut) {
        buf.put_u8(Self::ID);
        put_varint(buf, self.get());
    }
}

/// A property that may occur several times (user properties, subscription
/// identifiers), in order: a view of the wire bytes, walked on demand.
#[derive(Clone)]
pub struct PropertyList<T> {
    block: Bytes,
    count: u32,
    _item: PhantomData<fn() -> T>,
}

/// User properties (0x26), in order.
pub type UserProperties = PropertyList<UserProperty>;
/// Subscription identifiers (0x0B).
pub type SubscriptionIds = PropertyList<SubscriptionId>;

impl<T> Default for PropertyList<T> {
    fn default() -> Self {
        Self {
            block: Bytes::new(),
            count: 0,
            _item: PhantomData,
        }
    }
}

impl<T: PropertyItem> PropertyList<T> {
    fn view(block: &Bytes, count: u32) -> Self {
        Self {
            block: if count == 0 {
                Bytes::new()
            } else {
                block.clone()
            },
            count,
            _item: PhantomData,
        }
    }

    /// How many items there are.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The items, in wire order.
    pub fn iter(&self) -> Iter<'_, T> {
        Iter {
            block: &self.block,
            rest: &self.block,
            left: self.count,
            _item: PhantomData,
        }
    }

    /// The first item.
    pub fn first(&self) -> Option<T> {
        self.iter().next()
    }
}

impl<T: PropertyItem> FromIterator<T> for PropertyList<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut buf = BytesMut::new();
        let mut count = 0;
        for item in iter {
            buf.reserve(item.wire_len());
            item.put(&mut buf);
            count += 1;
        }
        Self {
            block: buf.freeze(),
            count,
            _item: PhantomData,
        }
    }
}

impl<T: PropertyItem + PartialEq> PartialEq for PropertyList<T> {
    fn eq(&self, other: &Self) -> bool {
        self.count == other.count && self.iter().eq(other.iter())
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
pub struct Iter<'a, T> {
    block: &'a Bytes,
    rest: &'a [u8],
    left: u32,
    _item: PhantomData<fn() -> T>,
}

impl<T: PropertyItem> Iterator for Iter<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        if self.left == 0 {
            return None;
        }
        // The block was validated when it was decoded or built.
        while let Ok((next, (id, raw))) = raw_property(self.rest) {
            self.rest = next;
            if id == T::ID {
                self.left -= 1;
                return T::from_raw(self.block, raw);
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left as usize))
    }
}
