//! The state that outlives one network connection: what is in flight both
//! ways and what waits to be sent. It can be taken out of one connection,
//! put into the next (resumption, takeover), and stored.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use petrel_codec::{DecodeError, Limits, Properties, PropertyContext, QoS, StringError, TopicName};
use serde::{Deserialize, Serialize};

/// An application message to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Where it goes.
    pub topic: TopicName,
    /// The payload, shared.
    pub payload: Bytes,
    /// Its QoS.
    pub qos: QoS,
    /// RETAIN.
    pub retain: bool,
    /// 5.0 PUBLISH properties. A Topic Alias set here is ignored: the
    /// connection assigns aliases itself.
    pub properties: Properties,
}

impl Message {
    /// A message with no properties, not retained.
    pub fn new(topic: TopicName, payload: Bytes, qos: QoS) -> Self {
        Self {
            topic,
            payload,
            qos,
            retain: false,
            properties: Properties::new(),
        }
    }
}

/// Identifies a message given to [`crate::Connection::publish`] in the events
/// that report what became of it. Unique within a session, kept across
/// resumption.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId(pub u64);

/// A message accepted for sending but not yet sent.
#[derive(Clone, Debug)]
pub(crate) struct Queued {
    pub(crate) id: MessageId,
    pub(crate) message: Message,
    /// When its Message Expiry Interval runs out.
    pub(crate) expires_at: Option<Instant>,
}

/// A QoS 1 or 2 exchange we started and the peer has not finished.
#[derive(Clone, Debug)]
pub(crate) enum Outgoing {
    /// PUBLISH sent, awaiting PUBACK (QoS 1) or PUBREC (QoS 2).
    Publish {
        id: MessageId,
        message: Message,
        /// When its Message Expiry Interval runs out: a resend carries what
        /// is left ([MQTT-3.3.2-6]).
        expires_at: Option<Instant>,
    },
    /// PUBREC received and PUBREL sent, awaiting PUBCOMP. The message itself
    /// is never sent again ([MQTT-4.3.3-6]).
    Release { id: MessageId },
}

impl Outgoing {
    pub(crate) fn id(&self) -> MessageId {
        match self {
            Self::Publish { id, .. } | Self::Release { id } => *id,
        }
    }
}

/// Session state that survives the network connection.
///
/// Take it out of a closed [`crate::Connection`] with
/// [`crate::Connection::take_state`], give it to the next one, or store it with
/// [`SessionState::snapshot`].
#[derive(Clone, Debug, Default)]
pub struct SessionState {
    pub(crate) next_packet_id: u16,
    pub(crate) next_message_id: u64,
    /// Our QoS 1/2 exchanges in flight, by packet identifier.
    pub(crate) outgoing: BTreeMap<u16, Outgoing>,
    /// QoS 2 packet identifiers received and not yet released by PUBREL.
    pub(crate) incoming: BTreeSet<u16>,
    /// With manual acknowledgements: QoS 2 identifiers whose PUBREC waits for
    /// the application's [`crate::Connection::ack`].
    pub(crate) deferred: BTreeSet<u16>,
    /// Accepted for sending, waiting for room in the in-flight window.
    pub(crate) pending: VecDeque<Queued>,
}

impl SessionState {
    /// An empty session.
    pub fn new() -> Self {
        Self::default()
    }

    /// Our QoS 1/2 exchanges the peer has not completed.
    pub fn inflight(&self) -> usize {
        self.outgoing.len()
    }

    /// QoS 2 messages received whose PUBREL has not arrived.
    pub fn incoming(&self) -> usize {
        self.incoming.len()
    }

    /// Messages waiting to be sent.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is in flight or waiting.
    pub fn is_empty(&self) -> bool {
        self.outgoing.is_empty() && self.incoming.is_empty() && self.pending.is_empty()
    }

    /// Visit every message the state holds (in flight, and waiting for the
    /// window), to change how their bytes are held: a broker that keeps a
    /// session for an absent client gives them allocations of their own,
    /// so they stop sharing the read buffers they arrived in. What a
    /// message says must not change.
    pub fn for_each_message_mut(&mut self, mut f: impl FnMut(&mut Message)) {
        for o in self.outgoing.values_mut() {
            if let Outgoing::Publish { message, .. } = o {
                f(message);
            }
        }
        for q in &mut self.pending {
            f(&mut q.message);
        }
    }

    /// Our exchanges in flight, in the order they were first sent: each
    /// packet identifier with its message and when that expires, or `None`
    /// once its PUBREC came (only PUBREL remains). For a store that keeps
    /// a session its own way.
    #[allow(clippy::type_complexity)] // a plain list of what is held
    pub fn outgoing_in_order(&self) -> Vec<(u16, Option<(&Message, Option<Instant>)>)> {
        let mut v: Vec<(MessageId, u16, Option<(&Message, Option<Instant>)>)> = self
            .outgoing
            .iter()
            .map(|(pid, o)| match o {
                Outgoing::Publish {
                    id,
                    message,
                    expires_at,
                } => (*id, *pid, Some((message, *expires_at))),
                Outgoing::Release { id } => (*id, *pid, None),
            })
            .collect();
        v.sort_unstable_by_key(|(id, ..)| *id);
        v.into_iter().map(|(_, pid, m)| (pid, m)).collect()
    }

    /// Messages waiting for room in the window, in order, each with when
    /// it expires.
    pub fn pending_messages(&self) -> impl Iterator<Item = (&Message, Option<Instant>)> {
        self.pending.iter().map(|q| (&q.message, q.expires_at))
    }

    /// QoS 2 packet identifiers received whose PUBREL has not come.
    pub fn incoming_ids(&self) -> impl Iterator<Item = u16> + '_ {
        self.incoming.iter().copied()
    }

    /// Packet identifiers in use by our exchanges, in send order.
    pub fn inflight_ids(&self) -> Vec<u16> {
        let mut v: Vec<(MessageId, u16)> = self
            .outgoing
            .iter()
            .map(|(pid, o)| (o.id(), *pid))
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, pid)| pid).collect()
    }

    /// Queue a message for a peer that is not connected (a broker's offline
    /// queue): it goes out, in order, when a connection resumes this session.
    /// Refused past `max_pending` queued messages.
    pub fn enqueue(
        &mut self,
        now: Instant,
        message: Message,
        max_pending: usize,
    ) -> Result<MessageId, crate::SendError> {
        if self.pending.len() >= max_pending {
            return Err(crate::SendError::QueueFull);
        }
        let id = self.next_message_id();
        let expires_at = message
            .properties
            .message_expiry_interval()
            .map(|s| now + Duration::from_secs(u64::from(s)));
        self.pending.push_back(Queued {
            id,
            message,
            expires_at,
        });
        Ok(id)
    }

    /// Put back an outgoing exchange a durable store recorded (see
    /// [`crate::Change`]): a QoS 1/2 message sent with `packet_id` (resent,
    /// with DUP, when a connection resumes the session), or, `released`,
    /// one whose PUBREC came (PUBREL is resent). Restore them in the order
    /// they were first sent. `None` if the identifier is 0 or in use, or
    /// the message is QoS 0.
    pub fn restore_outgoing(
        &mut self,
        now: Instant,
        packet_id: u16,
        message: Message,
        released: bool,
    ) -> Option<MessageId> {
        if packet_id == 0
            || message.qos == QoS::AtMostOnce
            || self.outgoing.contains_key(&packet_id)
        {
            return None;
        }
        let id = self.next_message_id();
        let entry = if released {
            Outgoing::Release { id }
        } else {
            let expires_at = message
                .properties
                .message_expiry_interval()
                .map(|s| now + Duration::from_secs(u64::from(s)));
            Outgoing::Publish {
                id,
                message,
                expires_at,
            }
        };
        self.outgoing.insert(packet_id, entry);
        Some(id)
    }

    /// Put back a received QoS 2 identifier whose PUBREL has not come: a
    /// repeated PUBLISH with it is not delivered again ([MQTT-4.3.3-9]).
    pub fn restore_incoming(&mut self, packet_id: u16) {
        if packet_id != 0 {
            self.incoming.insert(packet_id);
        }
    }

    pub(crate) fn next_message_id(&mut self) -> MessageId {
        self.next_message_id += 1;
        MessageId(self.next_message_id)
    }

    /// A serialisable copy, with message expiry measured from `now`.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let mut outgoing: Vec<(MessageId, u16, &Outgoing)> = self
            .outgoing
            .iter()
            .map(|(pid, o)| (o.id(), *pid, o))
            .collect();
        outgoing.sort_unstable_by_key(|(id, _, _)| *id);
        Snapshot {
            next_packet_id: self.next_packet_id,
            next_message_id: self.next_message_id,
            outgoing: outgoing
                .into_iter()
                .map(|(id, pid, o)| match o {
                    Outgoing::Publish {
                        message,
                        expires_at,
                        ..
                    } => StoredOutgoing::Publish {
                        packet_id: pid,
                        id,
                        message: StoredMessage::from_message(message, *expires_at, now),
                    },
                    Outgoing::Release { .. } => StoredOutgoing::Release { packet_id: pid, id },
                })
                .collect(),
            incoming: self.incoming.iter().copied().collect(),
            deferred: self.deferred.iter().copied().collect(),
            pending: self
                .pending
                .iter()
                .map(|q| {
                    (
                        q.id,
                        StoredMessage::from_message(&q.message, q.expires_at, now),
                    )
                })
                .collect(),
        }
    }
}

/// [`SessionState`] in a form serde can store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    next_packet_id: u16,
    next_message_id: u64,
    outgoing: Vec<StoredOutgoing>,
    incoming: Vec<u16>,
    #[serde(default)]
    deferred: Vec<u16>,
    pending: Vec<(MessageId, StoredMessage)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum StoredOutgoing {
    Publish {
        packet_id: u16,
        id: MessageId,
        message: StoredMessage,
    },
    Release {
        packet_id: u16,
        id: MessageId,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct StoredMessage {
    topic: String,
    payload: Bytes,
    qos: u8,
    retain: bool,
    /// 5.0 properties as they lie on the wire.
    properties: Bytes,
    /// Milliseconds left before the message expires.
    expires_in_ms: Option<u64>,
}

impl StoredMessage {
    fn from_message(m: &Message, expires_at: Option<Instant>, now: Instant) -> Self {
        Self {
            topic: m.topic.to_string(),
            // Copied into exact-size storage: a stored message must not pin the
            // read buffer it arrived in.
            payload: Bytes::copy_from_slice(&m.payload),
            qos: m.qos as u8,
            retain: m.retain,
            properties: Bytes::copy_from_slice(m.properties.as_wire()),
            expires_in_ms: expires_at
                .map(|at| at.saturating_duration_since(now).as_millis() as u64),
        }
    }

    fn into_message(self, now: Instant) -> Result<(Message, Option<Instant>), DecodeError> {
        let topic = TopicName::try_from(self.topic)?;
        let qos = QoS::from_u8(self.qos).ok_or(DecodeError::InvalidQoS)?;
        // What we stored ourselves: only the packet's own size bounds it.
        let limits = Limits {
            max_user_properties: usize::MAX,
            ..Limits::default()
        };
        let properties = Properties::from_wire(self.properties, PropertyContext::PUBLISH, &limits)?;
        let expires_at = self.expires_in_ms.map(|ms| now + Duration::from_millis(ms));
        Ok((
            Message {
                topic,
                payload: self.payload,
                qos,
                retain: self.retain,
                properties,
            },
            expires_at,
        ))
    }
}

impl Snapshot {
    /// The session again, with expiry measured from `now`. Stored data is
    /// validated as if it came from a peer.
    pub fn restore(self, now: Instant) -> Result<SessionState, DecodeError> {
        let mut state = SessionState {
            next_packet_id: self.next_packet_id,
            next_message_id: self.next_message_id,
            ..SessionState::default()
        };
        for o in self.outgoing {
            match o {
                StoredOutgoing::Publish {
                    packet_id,
                    id,
                    message,
                } => {
                    let (message, expires_at) = message.into_message(now)?;
                    if packet_id == 0 || message.qos == QoS::AtMostOnce {
                        return Err(DecodeError::ZeroPacketId);
                    }
                    state.outgoing.insert(
                        packet_id,
                        Outgoing::Publish {
                            id,
                            message,
                            expires_at,
                        },
                    );
                }
                StoredOutgoing::Release { packet_id, id } => {
                    if packet_id == 0 {
                        return Err(DecodeError::ZeroPacketId);
                    }
                    state.outgoing.insert(packet_id, Outgoing::Release { id });
                }
            }
        }
        state.incoming = self.incoming.into_iter().filter(|&i| i != 0).collect();
        state.deferred = self
            .deferred
            .into_iter()
            .filter(|i| state.incoming.contains(i))
            .collect();
        // Never hand out an identifier a stored message already has.
        let highest = state
            .outgoing
            .values()
            .map(Outgoing::id)
            .chain(self.pending.iter().map(|(id, _)| *id))
            .max()
            .map_or(0, |id| id.0);
        state.next_message_id = state.next_message_id.max(highest);
        for (id, m) in self.pending {
            let (message, expires_at) = m.into_message(now)?;
            state.pending.push_back(Queued {
                id,
                message,
                expires_at,
            });
        }
        Ok(state)
    }
}

impl From<StringError> for crate::ProtocolError {
    fn from(e: StringError) -> Self {
        Self::Malformed(e.into())
    }
}
