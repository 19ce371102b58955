//! CONNECT (3.1): the first packet a client sends.

use bytes::{BufMut, Bytes, BytesMut};
use nom::number::complete::{be_u16, be_u8};

use super::Cx;
use crate::error::{DecodeError, EncodeError};
use crate::properties::{Properties, PropertyContext};
use crate::string::{MqttString, TopicName};
use crate::types::{Protocol, QoS};
use crate::wire::{
    binary_len, fail, finish, length_prefixed, put_binary, put_string, string_len, PResult,
};

/// A CONNECT packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    /// The version the client speaks (protocol name and level).
    pub protocol: Protocol,
    /// Clean Start (5.0) / Clean Session (3.1.x).
    pub clean_start: bool,
    /// Keep alive in seconds; 0 turns it off.
    pub keep_alive: u16,
    /// 5.0 CONNECT properties.
    pub properties: Properties,
    /// The client identifier; may be empty (the server then assigns one or refuses).
    pub client_id: MqttString,
    /// The Will, if any.
    pub will: Option<Will>,
    /// User name.
    pub username: Option<MqttString>,
    /// Password (binary data).
    pub password: Option<Bytes>,
    /// The bridge flag of MQTT 3.1 and 3.1.1: the protocol level with its
    /// high bit set (0x83, 0x84), which Mosquitto's bridges send
    /// (`try_private`) to say that the client is a bridge, so that the
    /// broker does not send it back what it published. Not part of either
    /// standard; 5.0 says the same with No Local, and a 5.0 level with the
    /// bit is refused as an unsupported version.
    pub bridge: bool,
}

/// The Will Message of a CONNECT (3.1.2.5, 3.1.3.2–4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    /// Will Topic.
    pub topic: TopicName,
    /// Will Payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will Retain.
    pub retain: bool,
    /// 5.0 Will Properties.
    pub properties: Properties,
}

impl Connect {
    /// A CONNECT with the given version and client id, clean start, keep alive
    /// 60 seconds and nothing else.
    pub fn new(protocol: Protocol, client_id: MqttString) -> Self {
        Self {
            protocol,
            clean_start: true,
            keep_alive: 60,
            properties: Properties::default(),
            client_id,
            will: None,
            username: None,
            password: None,
            bridge: false,
        }
    }

    pub(crate) fn decode(cx: &Cx<'_>, body: &[u8]) -> Result<Self, DecodeError> {
        finish(Self::parse(cx, body))
    }

    fn parse<'f>(cx: &Cx<'f>, input: &'f [u8]) -> PResult<'f, Self> {
        let (input, name) = length_prefixed(input)?;
        let (input, level) = be_u8(input)?;
        let bridged = Protocol::from_name_and_level(name, level & 0x7F)
            .filter(|p| level & 0x80 != 0 && !p.is_v5());
        let bridge = bridged.is_some();
        let Some(protocol) = bridged.or_else(|| Protocol::from_name_and_level(name, level)) else {
            return fail(if name == b"MQTT" || name == b"MQIsdp" {
                DecodeError::UnsupportedProtocolLevel { level }
            } else {
                DecodeError::InvalidProtocolName { level }
            });
        };
        let (input, flags) = be_u8(input)?;
        if flags & 0x01 != 0 {
            return fail(DecodeError::ReservedConnectFlag);
        }
        let clean_start = flags & 0x02 != 0;
        let will_flag = flags & 0x04 != 0;
        let will_qos = (flags >> 3) & 0x03;
        let will_retain = flags & 0x20 != 0;
        let has_password = flags & 0x40 != 0;
        let has_username = flags & 0x80 != 0;
        if !will_flag && (will_qos != 0 || will_retain) {
            return fail(DecodeError::InvalidWillFlags);
        }
        let Some(will_qos) = QoS::from_u8(will_qos) else {
            return fail(DecodeError::InvalidWillFlags);
        };
        if has_password && !has_username && !protocol.is_v5() {
            return fail(DecodeError::PasswordWithoutUsername);
        }
        let (input, keep_alive) = be_u16(input)?;
        let (input, properties) = if protocol.is_v5() {
            Properties::decode(cx.frame, input, PropertyContext::CONNECT, cx.limits)?
        } else {
            (input, Properties::default())
        };
        // [MQTT-3.1.3-1]: client id, will properties, will topic, will payload, user name, password.
        let (input, client_id) = cx.frame.string(input)?;
        let (input, will) = if will_flag {
            let (input, properties) = if protocol.is_v5() {
                Properties::decode(cx.frame, input, PropertyContext::WILL, cx.limits)?
            } else {
                (input, Properties::default())
            };
            let (input, topic) = cx.frame.string(input)?;
            let topic = match TopicName::new(topic) {
                Ok(t) => t,
                Err(e) => return fail(e),
            };
            let (input, payload) = cx.frame.binary(input)?;
            let will = Will {
                topic,
                payload,
                qos: will_qos,
                retain: will_retain,
                properties,
            };
            (input, Some(will))
        } else {
            (input, None)
        };
        let (input, username) = if has_username {
            let (i, u) = cx.frame.string(input)?;
            (i, Some(u))
        } else {
            (input, None)
        };
        let (input, password) = if has_password {
            let (i, p) = cx.frame.binary(input)?;
            (i, Some(p))
        } else {
            (input, None)
        };
        Ok((
            input,
            Self {
                protocol,
                clean_start,
                keep_alive,
                properties,
                client_id,
                will,
                username,
                password,
                bridge,
            },
        ))
    }

    pub(crate) fn body_len(&self) -> Result<usize, EncodeError> {
        let v5 = self.protocol.is_v5();
        let mut n = 2 + self.protocol.name().len() + 1 + 1 + 2;
        if v5 {
            n += self.properties.encoded_len(PropertyContext::CONNECT)?;
        }
        n += string_len(&self.client_id);
        if let Some(w) = &self.will {
            if w.topic.is_empty() {
                return Err(EncodeError::MissingTopic);
            }
            if v5 {
                n += w.properties.encoded_len(PropertyContext::WILL)?;
            }
            n += string_len(w.topic.as_mqtt_str()) + binary_len(&w.payload)?;
        }
        match (&self.username, &self.password) {
            (Some(u), _) => n += string_len(u),
            // [MQTT-3.1.2-22] (3.1.1): no password without a user name.
            (None, Some(_)) if !v5 => return Err(EncodeError::PasswordWithoutUsername),
            _ => {}
        }
        if let Some(p) = &self.password {
            n += binary_len(p)?;
        }
        Ok(n)
    }

    fn flags(&self) -> u8 {
        let mut f = (self.clean_start as u8) << 1;
        if let Some(w) = &self.will {
            f |= 0x04 | (w.qos as u8) << 3 | (w.retain as u8) << 5;
        }
        if self.username.is_some() {
            f |= 0x80;
        }
        if self.password.is_some() {
            f |= 0x40;
        }
        f
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let v5 = self.protocol.is_v5();
        put_binary(buf, self.protocol.name().as_bytes());
        let bridge = if self.bridge && !v5 { 0x80 } else { 0 };
        buf.put_u8(self.protocol.level() | bridge);
        buf.put_u8(self.flags());
        buf.put_u16(self.keep_alive);
        if v5 {
            let n = self.properties.body_len(PropertyContext::CONNECT)?;
            self.properties.encode(buf, n);
        }
        put_string(buf, &self.client_id);
        if let Some(w) = &self.will {
            if v5 {
                let n = w.properties.body_len(PropertyContext::WILL)?;
                w.properties.encode(buf, n);
            }
            put_string(buf, w.topic.as_mqtt_str());
            put_binary(buf, &w.payload);
        }
        if let Some(u) = &self.username {
            put_string(buf, u);
        }
        if let Some(p) = &self.password {
            put_binary(buf, p);
        }
        Ok(())
    }
}
