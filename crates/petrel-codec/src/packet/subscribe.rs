//! SUBSCRIBE (3.8).

use bytes::{BufMut, BytesMut};
use nom::number::complete::be_u8;

use super::{packet_id, Cx, PacketType};
use crate::error::{DecodeError, EncodeError};
use crate::properties::{Properties, PropertyContext};
use crate::string::TopicFilter;
use crate::types::{PacketId, Protocol, QoS, RetainHandling, SubscriptionOptions};
use crate::wire::{fail, finish, put_string, string_len, PResult};

/// One topic filter of a SUBSCRIBE with its options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// The topic filter.
    pub filter: TopicFilter,
    /// Maximum QoS and the 5.0 options.
    pub options: SubscriptionOptions,
}

/// A SUBSCRIBE packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// 5.0 properties: subscription identifier and user properties.
    pub properties: Properties,
    /// The filters, at least one ([MQTT-3.8.3-2]).
    pub subscriptions: Vec<Subscription>,
}

impl Subscribe {
    pub(crate) fn decode(cx: &Cx<'_>, body: &[u8]) -> Result<Self, DecodeError> {
        finish(Self::parse(cx, body))
    }

    fn parse<'f>(cx: &Cx<'f>, input: &'f [u8]) -> PResult<'f, Self> {
        let (input, packet_id) = packet_id(input)?;
        let v5 = cx.protocol.is_v5();
        let (mut input, properties) = if v5 {
            Properties::decode(cx.frame, input, PropertyContext::SUBSCRIBE, cx.limits)?
        } else {
            (input, Properties::default())
        };
        let mut subscriptions = Vec::new();
        while !input.is_empty() {
            if subscriptions.len() == cx.limits.max_topic_filters {
                return fail(DecodeError::TooManyTopicFilters {
                    max: cx.limits.max_topic_filters,
                });
            }
            let (i, filter) = cx.frame.topic_filter(input)?;
            let (i, byte) = be_u8(i)?;
            input = i;
            // 3.1.1 reserves bits 2-7 ([MQTT-3-8.3-4]), 5.0 bits 6-7 ([MQTT-3.8.3-5]).
            let reserved = if v5 { 0xC0 } else { 0xFC };
            let Some(qos) = QoS::from_u8(byte & 0x03) else {
                return fail(DecodeError::InvalidSubscriptionOptions(byte));
            };
            if byte & reserved != 0 {
                return fail(DecodeError::InvalidSubscriptionOptions(byte));
            }
            let retain_handling = match (byte >> 4) & 0x03 {
                0 => RetainHandling::SendOnSubscribe,
                1 => RetainHandling::SendIfNew,
                2 => RetainHandling::DoNotSend,
                _ => return fail(DecodeError::InvalidRetainHandling),
            };
            let options = SubscriptionOptions {
                qos,
                no_local: byte & 0x04 != 0,
                retain_as_published: byte & 0x08 != 0,
                retain_handling,
            };
            if options.no_local && filter.shared().is_some() {
                return fail(DecodeError::NoLocalOnSharedSubscription);
            }
            subscriptions.push(Subscription { filter, options });
        }
        if subscriptions.is_empty() {
            return fail(DecodeError::NoTopicFilters(PacketType::Subscribe));
        }
        Ok((
            input,
            Self {
                packet_id,
                properties,
                subscriptions,
            },
        ))
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> Result<usize, EncodeError> {
        if self.subscriptions.is_empty() {
            return Err(EncodeError::NoTopicFilters(PacketType::Subscribe));
        }
        let mut n = 2;
        if protocol.is_v5() {
            n += self.properties.encoded_len(PropertyContext::SUBSCRIBE)?;
        }
        for s in &self.subscriptions {
            if protocol.is_v5() && s.options.no_local && s.filter.shared().is_some() {
                return Err(EncodeError::NoLocalOnSharedSubscription);
            }
            n += string_len(s.filter.as_mqtt_str()) + 1;
        }
        Ok(n)
    }

    pub(crate) fn encode_body(
        &self,
        protocol: Protocol,
        buf: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        buf.put_u16(self.packet_id.get());
        if protocol.is_v5() {
            let n = self.properties.body_len(PropertyContext::SUBSCRIBE)?;
            self.properties.encode(buf, n);
        }
        for s in &self.subscriptions {
            put_string(buf, s.filter.as_mqtt_str());
            // 3.1.x has only the QoS bits; the 5.0 options are left out.
            buf.put_u8(if protocol.is_v5() {
                s.options.to_byte()
            } else {
                s.options.qos as u8
            });
        }
        Ok(())
    }
}
