//! One network connection's protocol state machine, client or server role.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::{Duration, Instant};

use petrel_codec::packet::PacketType;
use petrel_codec::properties::id as prop;
use petrel_codec::{
    Auth, ConnAck, Connect, DecodeError, Disconnect, MqttString, Packet, PacketId, Properties,
    Protocol, PubAck, Publish, PublishView, QoS, QosPid, ReasonCode, ReasonContext, SubAck,
    Subscribe, Subscription, TopicFilter, TopicName, UnsubAck, Unsubscribe,
};

use crate::config::Config;
use crate::error::{ProtocolError, SendError};
use crate::state::{Message, MessageId, Outgoing, Queued, SessionState};

/// Which end of the connection this machine plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The client: sends CONNECT.
    Client,
    /// The server: answers CONNECT.
    Server,
}

/// What the application must know.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Server: a CONNECT arrived. Answer with [`Connection::accept`] or
    /// [`Connection::reject`] (after any AUTH exchange); the machine never
    /// decides authentication itself.
    ConnectRequest(Box<Connect>),
    /// 5.0 enhanced authentication: the peer sent AUTH. Answer with
    /// [`Connection::auth`] (or, on the server, accept or reject).
    Auth(Auth),
    /// Client: the server accepted the connection.
    Connected {
        /// Whether the server resumed a session.
        session_present: bool,
        /// CONNACK properties (assigned client identifier, limits, …).
        properties: Properties,
    },
    /// Client: the server refused the connection.
    ConnectRefused {
        /// Why (3.1.x return codes mapped to 5.0 reason codes).
        reason_code: ReasonCode,
        /// CONNACK properties (reason string, server reference, …).
        properties: Properties,
    },
    /// An application message from the peer, topic alias resolved, each QoS 2
    /// message once.
    Message(Publish),
    /// One of our QoS 1/2 messages is finished: PUBACK, PUBCOMP, or a PUBREC
    /// with an error. QoS 0 messages report nothing.
    Published {
        /// The message, as [`Connection::publish`] named it.
        id: MessageId,
        /// The peer's reason code.
        reason_code: ReasonCode,
        /// The peer's properties (reason string, user properties).
        properties: Properties,
    },
    /// One of our messages was not sent and never will be.
    Dropped {
        /// The message.
        id: MessageId,
        /// Why.
        reason: DropReason,
    },
    /// Server: a SUBSCRIBE to answer with [`Connection::suback`].
    Subscribe(Subscribe),
    /// Server: an UNSUBSCRIBE to answer with [`Connection::unsuback`].
    Unsubscribe(Unsubscribe),
    /// Client: the answer to a SUBSCRIBE.
    SubAck(SubAck),
    /// Client: the answer to an UNSUBSCRIBE.
    UnsubAck(UnsubAck),
    /// The connection is closed; close the network connection once what
    /// [`Connection::poll_transmit`] still returns has been written.
    Closed(CloseReason),
}

/// Why one of our messages was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Larger than the peer's Maximum Packet Size ([MQTT-3.1.2-25]).
    TooLarge,
    /// Its Message Expiry Interval ran out before it could be sent.
    Expired,
    /// Client: the server does not support its QoS or RETAIN (CONNACK
    /// Maximum QoS, Retain Available; [MQTT-3.2.2-11], [MQTT-3.2.2-14]).
    NotSupported,
    /// Server: the client started a new session, so the state the
    /// application offered was discarded ([MQTT-3.1.2-4]).
    SessionDiscarded,
}

/// Why the connection closed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer sent DISCONNECT.
    Disconnected {
        /// Its reason (normal disconnection for 3.1.x).
        reason_code: ReasonCode,
        /// Its properties.
        properties: Properties,
    },
    /// We disconnected ([`Connection::disconnect`]).
    Local(ReasonCode),
    /// The server refused the CONNECT (either role reports it).
    Refused(ReasonCode),
    /// The peer broke the protocol.
    ProtocolError(ProtocolError),
    /// Server: nothing heard for 1.5 times the keep alive ([MQTT-3.1.2-22]).
    KeepAliveTimeout,
    /// Server: no CONNECT in time.
    ConnectTimeout,
    /// Client: no CONNACK or PINGRESP in time.
    ResponseTimeout,
}

impl std::fmt::Display for CloseReason {
    /// In words, for logs: `peer disconnected: Normal disconnection`,
    /// `protocol error: …`, `keep alive timed out`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Disconnected { reason_code, .. } => {
                write!(f, "peer disconnected: {reason_code}")
            }
            Self::Local(rc) => write!(f, "closed by us: {rc}"),
            Self::Refused(rc) => write!(f, "connection refused: {rc}"),
            Self::ProtocolError(e) => write!(f, "protocol error: {e}"),
            Self::KeepAliveTimeout => f.write_str("nothing heard within 1.5 times the keep alive"),
            Self::ConnectTimeout => f.write_str("no CONNECT in time"),
            Self::ResponseTimeout => f.write_str("no CONNACK or PINGRESP in time"),
        }
    }
}

/// What the peer told us it accepts (5.0 CONNECT or CONNACK properties; 3.1.x
/// peers get the protocol's defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerLimits {
    /// Its Receive Maximum.
    pub receive_maximum: u16,
    /// Its Maximum Packet Size.
    pub maximum_packet_size: u32,
    /// Its Topic Alias Maximum.
    pub topic_alias_maximum: u16,
    /// Server's Maximum QoS (client role).
    pub maximum_qos: QoS,
    /// Server's Retain Available (client role).
    pub retain_available: bool,
    /// Client's Request Problem Information (server role).
    pub request_problem_information: bool,
    /// Client's Request Response Information (server role).
    pub request_response_information: bool,
}

impl Default for PeerLimits {
    fn default() -> Self {
        Self {
            receive_maximum: u16::MAX,
            maximum_packet_size: petrel_codec::MAX_VARINT + 5,
            topic_alias_maximum: 0,
            maximum_qos: QoS::ExactlyOnce,
            retain_available: true,
            request_problem_information: true,
            request_response_information: false,
        }
    }
}

/// How the server accepts a CONNECT.
#[derive(Clone, Debug, Default)]
pub struct Accept {
    /// Session Present: whether `state` is a resumed session.
    pub session_present: bool,
    /// The session to continue (empty for a new one).
    pub state: SessionState,
    /// CONNACK properties the application sets (assigned client identifier,
    /// server keep alive, maximum QoS, …). Receive Maximum, Maximum Packet
    /// Size and Topic Alias Maximum are filled in from [`Config`] unless set.
    pub properties: Properties,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitConnect,
    AwaitAccept,
    AwaitConnAck,
    Connected,
    Closed,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            Self::AwaitConnect => "awaiting CONNECT",
            Self::AwaitAccept => "awaiting the application's answer to CONNECT",
            Self::AwaitConnAck => "awaiting CONNACK",
            Self::Connected => "connected",
            Self::Closed => "closed",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timer {
    /// Server: CONNECT must arrive.
    Connect = 0,
    /// Client: CONNACK or PINGRESP must arrive.
    Response = 1,
    /// Client: send PINGREQ if nothing else was sent.
    KeepAlive = 2,
    /// Server: the peer has been silent too long.
    Idle = 3,
}

/// A connection's protocol state machine. No I/O, no clock: the caller passes
/// the time into every call that needs it.
///
/// See the crate documentation for how to drive it.
#[derive(Debug)]
pub struct Connection {
    role: Role,
    state: State,
    protocol: Protocol,
    /// Shared: a server's connections all have the same.
    config: Arc<Config>,
    session: SessionState,
    peer: PeerLimits,
    /// In seconds, as the protocol has it (0: none).
    keep_alive: u16,
    timers: [Option<Instant>; 4],
    last_sent: Instant,
    last_received: Instant,
    transmit: VecDeque<Packet>,
    /// What the application is to hear, boxed while there is any (a
    /// connection between packets carries one pointer for it).
    #[allow(clippy::box_collection)]
    events: Option<Box<VecDeque<Event>>>,
    /// What few connections use, in one box taken when first needed.
    rare: Option<Box<Rare>>,
    /// What we told the peer we accept (CONNECT or CONNACK), and enforce.
    our_receive_maximum: u16,
    our_topic_alias_maximum: u16,
    /// Clean Start as the CONNECT had it.
    clean_start: bool,
    /// Server: whether CONNECT asked for a zero Session Expiry Interval.
    connect_session_expiry_zero: bool,
    /// With [`Connection::journal`] on: the changes not yet taken, boxed
    /// while there are any (8 bytes of every connection instead of 24).
    #[allow(clippy::box_collection)]
    journal: Option<Box<Vec<Change>>>,
    /// [`Connection::journal`] is on.
    journaling: bool,
}

/// The parts of a [`Connection`] that few connections use or that are
/// used briefly: a connection holds one pointer for all of them (a server
/// holds thousands of connections, most with none of these), and gives the
/// box back when they are empty again ([`Connection::shrink`]).
#[derive(Debug, Default)]
struct Rare {
    /// Server, awaiting accept: packets a pipelining client sent after
    /// CONNECT, and their size on the wire.
    deferred: VecDeque<Packet>,
    deferred_bytes: usize,
    /// Outgoing exchanges of a resumed session not yet resent on this
    /// connection, in their original order: they go out as the window allows
    /// ([MQTT-4.4.0-1] with the send quota of 4.9).
    to_resend: VecDeque<u16>,
    alias_out: HashMap<TopicName, NonZeroU16>,
    alias_in: HashMap<u16, TopicName>,
    /// Client: SUBSCRIBE/UNSUBSCRIBE identifiers awaiting their acknowledgement.
    pending_subscriptions: BTreeSet<u16>,
    auth_method: Option<MqttString>,
    /// With manual acknowledgements: QoS 1 identifiers received on this
    /// connection whose PUBACK waits for [`Connection::ack`].
    unacked: BTreeSet<u16>,
    close_reason: Option<CloseReason>,
}

impl Rare {
    /// Nothing in it: the box may go.
    fn is_unused(&self) -> bool {
        self.deferred.is_empty()
            && self.to_resend.is_empty()
            && self.alias_out.is_empty()
            && self.alias_in.is_empty()
            && self.pending_subscriptions.is_empty()
            && self.auth_method.is_none()
            && self.unacked.is_empty()
            && self.close_reason.is_none()
    }
}

/// A change to the session state that a durable store records before
/// anything it causes goes out (see [`Connection::journal`]): after a crash
/// the session resumes from what was recorded, and the peer sees no QoS 2
/// message twice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// An outgoing QoS 2 message got its packet identifier and is about to
    /// be sent: a resend after a crash must use the same one (a QoS 1
    /// message may go again with another).
    Sent {
        /// The message.
        id: MessageId,
        /// Its packet identifier.
        packet_id: u16,
    },
    /// PUBREC came for an outgoing QoS 2 message: from now on PUBREL is
    /// sent, never the message again ([MQTT-4.3.3-6]).
    Released {
        /// The message.
        id: MessageId,
        /// Its packet identifier.
        packet_id: u16,
    },
    /// A received QoS 2 identifier is free again (PUBREL came, or the
    /// message was refused): a new message may use it.
    Freed {
        /// The identifier.
        packet_id: u16,
    },
}

/// An idle [`Connection`] in the compact form [`Connection::hibernate`] gives it: a fraction of its
/// size, for drivers that hold many quiet connections. Give it back to
/// [`Connection::resume`] when the peer sends something, a message is to be
/// sent, or [`Hibernated::deadline`] passes.
#[derive(Debug)]
pub struct Hibernated {
    role: Role,
    protocol: Protocol,
    clean_start: bool,
    connect_session_expiry_zero: bool,
    our_receive_maximum: u16,
    our_topic_alias_maximum: u16,
    next_packet_id: u16,
    next_message_id: u64,
    peer: PeerLimits,
    /// Seconds; 0 for none. The timers follow from it and `last`.
    keep_alive: u16,
    /// What the keep alive counts from: a client's last packet sent, a
    /// server's last packet received (neither role times the other).
    last: Instant,
    /// Topic aliases and the Authentication Method, where there are any.
    rare: Option<Box<HibernatedRare>>,
    journal: bool,
}

/// What few hibernated connections keep beyond the common part.
#[derive(Debug)]
struct HibernatedRare {
    alias_out: HashMap<TopicName, NonZeroU16>,
    alias_in: HashMap<u16, TopicName>,
    auth_method: Option<MqttString>,
}

impl Hibernated {
    /// When the connection must be resumed for its timers (a client's
    /// PINGREQ, a server's keep-alive timeout), if ever.
    pub fn deadline(&self) -> Option<Instant> {
        let ka = secs(self.keep_alive);
        (self.keep_alive > 0).then(|| match self.role {
            // The PINGREQ after a silent keep alive ([MQTT-3.1.2-20]).
            Role::Client => self.last + ka,
            // One and a half keep alives without a packet ([MQTT-3.1.2-22]).
            Role::Server => self.last + ka + ka / 2,
        })
    }

    /// The protocol version the connection speaks.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }
}

impl Connection {
    fn new(role: Role, protocol: Protocol, config: Arc<Config>, now: Instant) -> Self {
        Self {
            role,
            state: State::Closed,
            protocol,
            config,
            session: SessionState::default(),
            peer: PeerLimits::default(),
            keep_alive: 0,
            timers: [None; 4],
            last_sent: now,
            last_received: now,
            transmit: VecDeque::new(),
            events: None,
            rare: None,
            our_receive_maximum: u16::MAX,
            our_topic_alias_maximum: 0,
            clean_start: true,
            connect_session_expiry_zero: true,
            journal: None,
            journaling: false,
        }
    }

    /// A server-role machine for a new network connection: it waits for
    /// CONNECT, for at most [`Config::connect_timeout`].
    pub fn server(config: impl Into<Arc<Config>>, now: Instant) -> Self {
        let mut c = Self::new(Role::Server, Protocol::V5, config.into(), now);
        c.state = State::AwaitConnect;
        c.timers[Timer::Connect as usize] = Some(now + c.config.connect_timeout);
        c
    }

    /// A client-role machine that sends `connect` and continues `state` (an
    /// empty [`SessionState`] for a new session). Messages given to
    /// [`Connection::publish`] before CONNACK wait for it. Fails if the
    /// CONNECT can't be encoded.
    pub fn client(
        config: impl Into<Arc<Config>>,
        mut connect: Connect,
        state: SessionState,
        now: Instant,
    ) -> Result<Self, SendError> {
        let mut c = Self::new(Role::Client, connect.protocol, config.into(), now);
        c.session = state;
        c.keep_alive = connect.keep_alive;
        if connect.protocol.is_v5() {
            let p = &mut connect.properties;
            if p.receive_maximum().is_none() {
                p.set_receive_maximum(Some(c.config.receive_maximum));
            }
            if p.maximum_packet_size().is_none() {
                p.set_maximum_packet_size(std::num::NonZeroU32::new(c.config.maximum_packet_size));
            }
            if p.topic_alias_maximum().is_none() && c.config.topic_alias_maximum > 0 {
                p.set_topic_alias_maximum(Some(c.config.topic_alias_maximum));
            }
            c.set_auth_method(p.authentication_method());
            c.connect_session_expiry_zero = p.session_expiry_interval().unwrap_or(0) == 0;
            c.our_receive_maximum = p.receive_maximum().map_or(u16::MAX, NonZeroU16::get);
            c.our_topic_alias_maximum = p.topic_alias_maximum().unwrap_or(0);
        }
        c.clean_start = connect.clean_start;
        c.state = State::AwaitConnAck;
        c.timers[Timer::Response as usize] = Some(now + c.config.response_timeout);
        c.queue(now, Packet::Connect(Box::new(connect)))?;
        Ok(c)
    }

    // ------------------------------------------------------------ getters

    /// The role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The protocol version (for a server, known once CONNECT arrived).
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Whether CONNECT/CONNACK completed and the connection is open.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// Whether the connection is closed (nothing more is processed).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Server: whether a CONNECT awaits [`Connection::accept`] or [`Connection::reject`].
    pub fn is_awaiting_accept(&self) -> bool {
        self.state == State::AwaitAccept
    }

    /// Why the connection closed, once it has.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.rare.as_ref()?.close_reason.as_ref()
    }

    /// What the peer accepts.
    pub fn peer_limits(&self) -> &PeerLimits {
        &self.peer
    }

    /// The keep alive in force (after CONNACK's Server Keep Alive, if any).
    pub fn keep_alive(&self) -> Option<Duration> {
        (self.keep_alive > 0).then(|| secs(self.keep_alive))
    }

    /// The session state (read only).
    pub fn state(&self) -> &SessionState {
        &self.session
    }

    /// Take the session state out, leaving an empty one: for the next
    /// connection of the same session, for a takeover, or to store it.
    pub fn take_state(&mut self) -> SessionState {
        // What was still to be resent is in the state's own in-flight list.
        self.clear_resends();
        std::mem::take(&mut self.session)
    }

    /// How many more QoS 1/2 messages may be sent now.
    pub fn send_quota(&self) -> usize {
        let active = self.session.outgoing.len().saturating_sub(self.resends());
        self.window().saturating_sub(active)
    }

    /// The rare parts, boxed when first needed.
    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// The Authentication Method the CONNECT named, if any.
    fn auth_method(&self) -> Option<&MqttString> {
        self.rare.as_ref()?.auth_method.as_ref()
    }

    /// Set the Authentication Method (none takes no box).
    fn set_auth_method(&mut self, method: Option<MqttString>) {
        match method {
            Some(m) => self.rare().auth_method = Some(m),
            None => {
                if let Some(r) = &mut self.rare {
                    r.auth_method = None;
                }
            }
        }
    }

    /// Outgoing exchanges of a resumed session still to be resent.
    fn resends(&self) -> usize {
        self.rare.as_ref().map_or(0, |r| r.to_resend.len())
    }

    /// Nothing is to be resent.
    fn clear_resends(&mut self) {
        if let Some(r) = &mut self.rare {
            r.to_resend.clear();
        }
    }

    /// An exchange is no longer to be resent.
    fn forget_resend(&mut self, pid: u16) {
        if let Some(r) = &mut self.rare {
            r.to_resend.retain(|p| *p != pid);
        }
    }

    /// Client: a SUBSCRIBE or UNSUBSCRIBE got its acknowledgement; whether
    /// it was awaited.
    fn end_request(&mut self, pid: u16) -> bool {
        self.rare
            .as_mut()
            .is_some_and(|r| r.pending_subscriptions.remove(&pid))
    }

    /// QoS 1 messages whose manual acknowledgement is awaited.
    fn unacked(&self) -> usize {
        self.rare.as_ref().map_or(0, |r| r.unacked.len())
    }

    fn window(&self) -> usize {
        usize::from(
            self.peer
                .receive_maximum
                .min(self.config.max_inflight.get()),
        )
    }

    // ------------------------------------------------------------ outputs

    /// Give back the memory of internal queues that are empty (a driver
    /// calls it when its connection goes quiet, so that many idle
    /// connections hold little).
    pub fn shrink(&mut self) {
        if self.transmit.is_empty() {
            self.transmit = VecDeque::new();
        }
        if self.events.as_ref().is_some_and(|e| e.is_empty()) {
            self.events = None;
        }
        if let Some(r) = &mut self.rare {
            if r.is_unused() {
                self.rare = None;
            } else {
                if r.deferred.is_empty() {
                    r.deferred = VecDeque::new();
                }
                if r.to_resend.is_empty() {
                    r.to_resend = VecDeque::new();
                }
            }
        }
        if self.session.pending.is_empty() {
            self.session.pending = VecDeque::new();
        }
    }

    /// Hibernate an idle connection: turn it into its compact [`Hibernated`] form, for a
    /// driver that holds many quiet connections: it keeps what the
    /// connection needs to go on (protocol, negotiated limits, keep-alive
    /// timers, packet identifier counters, topic aliases) and drops the rest.
    ///
    /// Only a connected machine with nothing in flight or waiting (no
    /// packet to send, no event, no QoS exchange, no pending message or
    /// acknowledgement, no response awaited) hibernates; otherwise it comes back
    /// unchanged as the error.
    pub fn hibernate(self) -> Result<Hibernated, Box<Self>> {
        let s = &self.session;
        let idle = self.state == State::Connected
            && self.transmit.is_empty()
            && !self.has_events()
            && s.is_empty()
            && s.deferred.is_empty()
            && self.rare.as_ref().is_none_or(|r| {
                r.deferred.is_empty()
                    && r.to_resend.is_empty()
                    && r.pending_subscriptions.is_empty()
                    && r.unacked.is_empty()
                    && r.close_reason.is_none()
            })
            && self.timers[Timer::Connect as usize].is_none()
            && self.timers[Timer::Response as usize].is_none()
            && self.journal.as_deref().is_none_or(Vec::is_empty);
        if !idle {
            return Err(Box::new(self));
        }
        let rare = self.rare.and_then(|r| {
            let Rare {
                alias_out,
                alias_in,
                auth_method,
                ..
            } = *r;
            (!alias_out.is_empty() || !alias_in.is_empty() || auth_method.is_some()).then(|| {
                Box::new(HibernatedRare {
                    alias_out,
                    alias_in,
                    auth_method,
                })
            })
        });
        Ok(Hibernated {
            role: self.role,
            protocol: self.protocol,
            clean_start: self.clean_start,
            connect_session_expiry_zero: self.connect_session_expiry_zero,
            our_receive_maximum: self.our_receive_maximum,
            our_topic_alias_maximum: self.our_topic_alias_maximum,
            next_packet_id: s.next_packet_id,
            next_message_id: s.next_message_id,
            peer: self.peer,
            keep_alive: self.keep_alive,
            last: match self.role {
                Role::Client => self.last_sent,
                Role::Server => self.last_received,
            },
            rare,
            journal: self.journaling,
        })
    }

    /// Resume a [`Hibernated`] connection: it goes on as if it had never
    /// hibernated. `config` is the one it was created with.
    pub fn resume(hibernated: Hibernated, config: impl Into<Arc<Config>>) -> Self {
        let mut c = Self::new(
            hibernated.role,
            hibernated.protocol,
            config.into(),
            hibernated.last,
        );
        c.state = State::Connected;
        c.clean_start = hibernated.clean_start;
        c.connect_session_expiry_zero = hibernated.connect_session_expiry_zero;
        c.our_receive_maximum = hibernated.our_receive_maximum;
        c.our_topic_alias_maximum = hibernated.our_topic_alias_maximum;
        c.session.next_packet_id = hibernated.next_packet_id;
        c.session.next_message_id = hibernated.next_message_id;
        c.peer = hibernated.peer;
        c.keep_alive = hibernated.keep_alive;
        // `new` set both instants to `last`: each role reads only its own.
        c.arm_keep_alive();
        c.arm_idle();
        if let Some(h) = hibernated.rare {
            let r = c.rare();
            (r.alias_out, r.alias_in, r.auth_method) = (h.alias_out, h.alias_in, h.auth_method);
        }
        c.journaling = hibernated.journal;
        c
    }

    /// Record every [`Change`] to the session state from now on (off by
    /// default), for the caller to store before it writes what
    /// [`Connection::poll_transmit`] returns. Kept through hibernation.
    pub fn journal(&mut self, on: bool) {
        self.journaling = on;
        if !on {
            self.journal = None;
        }
    }

    /// The changes recorded since the last call, in order.
    pub fn take_changes(&mut self) -> Vec<Change> {
        self.journal.take().map(|j| *j).unwrap_or_default()
    }

    fn record(&mut self, change: Change) {
        if self.journaling {
            self.journal.get_or_insert_with(Box::default).push(change);
        }
    }

    /// The next packet to encode and send, in order.
    pub fn poll_transmit(&mut self) -> Option<Packet> {
        self.transmit.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.as_mut()?.pop_front()
    }

    /// Whether [`Connection::poll_event`] has more to give (a broker can
    /// hold a message back to handle it with those that follow).
    pub fn has_events(&self) -> bool {
        self.events.as_ref().is_some_and(|e| !e.is_empty())
    }

    /// Queue an event for the application.
    fn event(&mut self, event: Event) {
        self.events
            .get_or_insert_with(Box::default)
            .push_back(event);
    }

    /// When [`Connection::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let expiry = if self.state == State::Closed {
            None
        } else {
            self.session
                .pending
                .iter()
                .filter_map(|q| q.expires_at)
                .min()
        };
        self.timers.iter().flatten().copied().chain(expiry).min()
    }

    // ------------------------------------------------------------ inputs

    /// Time has passed: fire the timers that are due. Calling it early, or
    /// twice, does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        if due(self.timers[Timer::Connect as usize]) {
            self.close(CloseReason::ConnectTimeout);
            return;
        }
        if due(self.timers[Timer::Response as usize]) {
            self.close(CloseReason::ResponseTimeout);
            return;
        }
        if due(self.timers[Timer::Idle as usize]) {
            // [MQTT-3.1.2-22]: silent for 1.5 times the keep alive.
            self.send_disconnect(now, ReasonCode::KEEP_ALIVE_TIMEOUT);
            self.close(CloseReason::KeepAliveTimeout);
            return;
        }
        if due(self.timers[Timer::KeepAlive as usize]) {
            // [MQTT-3.1.2-20]: nothing sent for the keep alive: PINGREQ.
            let _ = self.queue(now, Packet::PingReq);
            // Re-armed even if the PINGREQ could not be sent.
            self.timers[Timer::KeepAlive as usize] = self.keep_alive().map(|ka| now + ka);
            if self.timers[Timer::Response as usize].is_none() {
                self.timers[Timer::Response as usize] = Some(now + self.config.response_timeout);
            }
        }
        // Expired messages waiting for the window are dropped here too.
        self.expire_pending(now);
    }

    /// A packet arrived from the peer. A protocol violation closes the
    /// connection (with a 5.0 DISCONNECT where one may be sent) and is also
    /// returned.
    pub fn handle_packet(&mut self, now: Instant, packet: Packet) -> Result<(), ProtocolError> {
        if self.state == State::Closed {
            return Ok(());
        }
        self.last_received = now;
        self.arm_idle();
        match self.dispatch(now, packet) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.fail(now, e.clone());
                Err(e)
            }
        }
    }

    /// The codec refused the peer's bytes: close as the specification asks.
    pub fn handle_decode_error(&mut self, now: Instant, error: petrel_codec::DecodeError) {
        if self.state != State::Closed {
            self.fail(now, ProtocolError::Malformed(error));
        }
    }

    fn dispatch(&mut self, now: Instant, packet: Packet) -> Result<(), ProtocolError> {
        let unexpected = |state: State, p: &Packet| ProtocolError::UnexpectedPacket {
            packet: p.packet_type(),
            state: state.name(),
        };
        match (self.role, self.state, packet) {
            (Role::Server, State::AwaitConnect, Packet::Connect(c)) => self.on_connect(c),
            (Role::Server, State::AwaitConnect, p) => Err(unexpected(self.state, &p)),
            (_, _, Packet::Connect(_)) => Err(ProtocolError::SecondConnect),
            (Role::Server, State::AwaitAccept, Packet::Auth(a)) => self.on_auth(a),
            (Role::Server, State::AwaitAccept, p) => {
                // A client may send before CONNACK; hold a little. (A driver
                // should stop reading while the application decides.)
                let size = p.encoded_len(self.protocol).unwrap_or(usize::MAX);
                let r = self.rare();
                r.deferred_bytes = r.deferred_bytes.saturating_add(size);
                if r.deferred.len() >= MAX_DEFERRED || r.deferred_bytes > MAX_DEFERRED_BYTES {
                    return Err(ProtocolError::TooMuchBeforeConnAck);
                }
                r.deferred.push_back(p);
                Ok(())
            }
            (Role::Client, State::AwaitConnAck, Packet::ConnAck(c)) => self.on_connack(now, c),
            (Role::Client, State::AwaitConnAck, Packet::Auth(a)) => self.on_auth(a),
            (Role::Client, State::AwaitConnAck, p) => Err(unexpected(self.state, &p)),
            (_, State::Connected, p) => self.on_connected(now, p),
            (_, state, p) => Err(unexpected(state, &p)),
        }
    }

    fn on_connected(&mut self, now: Instant, packet: Packet) -> Result<(), ProtocolError> {
        let unexpected = |p: PacketType| ProtocolError::UnexpectedPacket {
            packet: p,
            state: "connected",
        };
        match (self.role, packet) {
            (_, Packet::Publish(p)) => self.on_publish(now, p),
            (_, Packet::PubAck(a)) => self.on_puback(now, a),
            (_, Packet::PubRec(a)) => self.on_pubrec(now, a),
            (_, Packet::PubRel(a)) => {
                // [MQTT-4.3.3-11]: PUBCOMP with the same identifier.
                let known = self.session.incoming.remove(&a.packet_id.get());
                self.session.deferred.remove(&a.packet_id.get());
                if known {
                    self.record(Change::Freed {
                        packet_id: a.packet_id.get(),
                    });
                }
                let mut comp = PubAck::new(a.packet_id);
                if !known && self.protocol.is_v5() {
                    comp.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                    comp.properties = said("no QoS 2 message awaits release under that identifier");
                }
                let _ = self.queue(now, Packet::PubComp(comp));
                Ok(())
            }
            (_, Packet::PubComp(a)) => self.on_pubcomp(now, a),
            // A 3.1.x server has no DISCONNECT to send.
            (Role::Client, Packet::Disconnect(_)) if !self.protocol.is_v5() => {
                Err(unexpected(PacketType::Disconnect))
            }
            (_, Packet::Disconnect(d)) => self.on_disconnect(d),
            (_, Packet::Auth(a)) => self.on_auth(a),
            (Role::Server, Packet::Subscribe(s)) => {
                self.event(Event::Subscribe(s));
                Ok(())
            }
            (Role::Server, Packet::Unsubscribe(u)) => {
                self.event(Event::Unsubscribe(u));
                Ok(())
            }
            (Role::Server, Packet::PingReq) => {
                let _ = self.queue(now, Packet::PingResp);
                Ok(())
            }
            (Role::Client, Packet::SubAck(a)) => {
                if self.end_request(a.packet_id.get()) {
                    self.event(Event::SubAck(a));
                }
                Ok(())
            }
            (Role::Client, Packet::UnsubAck(a)) => {
                if self.end_request(a.packet_id.get()) {
                    self.event(Event::UnsubAck(a));
                }
                Ok(())
            }
            (Role::Client, Packet::PingResp) => {
                self.timers[Timer::Response as usize] = None;
                Ok(())
            }
            (_, p) => Err(unexpected(p.packet_type())),
        }
    }

    // ------------------------------------------------------------ connect

    fn on_connect(&mut self, c: Box<Connect>) -> Result<(), ProtocolError> {
        self.protocol = c.protocol;
        // The connect timer keeps running until the application answers
        // (an AUTH exchange must also finish in time).
        self.clean_start = c.clean_start;
        self.keep_alive = c.keep_alive;
        if c.protocol.is_v5() {
            let p = &c.properties;
            self.peer.receive_maximum = p.receive_maximum().map_or(u16::MAX, NonZeroU16::get);
            self.peer.maximum_packet_size = p
                .maximum_packet_size()
                .map_or(self.peer.maximum_packet_size, |m| m.get());
            self.peer.topic_alias_maximum = p.topic_alias_maximum().unwrap_or(0);
            self.peer.request_problem_information = p.request_problem_information().unwrap_or(true);
            self.peer.request_response_information =
                p.request_response_information().unwrap_or(false);
            self.set_auth_method(p.authentication_method());
            self.connect_session_expiry_zero = p.session_expiry_interval().unwrap_or(0) == 0;
        }
        self.state = State::AwaitAccept;
        self.event(Event::ConnectRequest(c));
        Ok(())
    }

    /// Server: accept the CONNECT. Sends CONNACK, resends what was in flight
    /// when the session is resumed ([MQTT-4.4.0-1]), and processes packets the
    /// client sent before CONNACK.
    pub fn accept(&mut self, now: Instant, accept: Accept) -> Result<(), SendError> {
        if self.role != Role::Server || self.state != State::AwaitAccept {
            return Err(SendError::Invalid("accept needs a server awaiting CONNECT"));
        }
        let mut props = accept.properties;
        if self.protocol.is_v5() {
            if props.receive_maximum().is_none() {
                props.set_receive_maximum(Some(self.config.receive_maximum));
            }
            if props.maximum_packet_size().is_none() {
                props.set_maximum_packet_size(std::num::NonZeroU32::new(
                    self.config.maximum_packet_size,
                ));
            }
            if props.topic_alias_maximum().is_none() && self.config.topic_alias_maximum > 0 {
                props.set_topic_alias_maximum(Some(self.config.topic_alias_maximum));
            }
            if let Some(ka) = props.server_keep_alive() {
                // [MQTT-3.2.2-21]: the client adopts it; so do we.
                self.keep_alive = ka;
            }
            if !self.peer.request_response_information {
                // [MQTT-3.1.2-28]: not asked for, not sent.
                props.set_response_information(None);
            }
        }
        // [MQTT-3.1.2-4], [MQTT-3.2.2-2]: Clean Start means no session.
        let session_present = accept.session_present && !self.clean_start;
        let mut connack = ConnAck::new(ReasonCode::SUCCESS, session_present);
        connack.properties = props;
        let mut connack = Packet::ConnAck(connack);
        self.trim_for_peer(&mut connack);
        self.check_sendable(&connack)?;
        if self.protocol.is_v5() {
            // Enforce exactly what the CONNACK tells the client.
            if let Packet::ConnAck(c) = &connack {
                self.our_receive_maximum = c
                    .properties
                    .receive_maximum()
                    .map_or(u16::MAX, NonZeroU16::get);
                self.our_topic_alias_maximum = c.properties.topic_alias_maximum().unwrap_or(0);
            }
        }
        self.timers[Timer::Connect as usize] = None;
        self.state = State::Connected;
        let mut state = accept.state;
        if !session_present {
            // A new session: whatever the state held is discarded
            // ([MQTT-3.1.2-4]), and the application hears of each message.
            let mut dropped: Vec<MessageId> = state
                .outgoing
                .values()
                .filter_map(|o| match o {
                    Outgoing::Publish { id, .. } => Some(*id),
                    Outgoing::Release { .. } => None,
                })
                .collect();
            dropped.extend(state.pending.iter().map(|q| q.id));
            dropped.sort_unstable();
            for id in dropped {
                self.event(Event::Dropped {
                    id,
                    reason: DropReason::SessionDiscarded,
                });
            }
            // Identifiers stay unique for the application that holds them.
            state = SessionState {
                next_message_id: state.next_message_id,
                ..SessionState::default()
            };
        }
        self.session = state;
        let _ = self.queue(now, connack);
        self.arm_idle();
        self.resume_inflight(now);
        self.flush_pending(now);
        while self.state == State::Connected {
            let Some(p) = self.rare.as_mut().and_then(|r| r.deferred.pop_front()) else {
                break;
            };
            if let Err(e) = self.on_connected(now, p) {
                self.fail(now, e);
            }
        }
        if let Some(r) = &mut self.rare {
            r.deferred.clear();
            r.deferred_bytes = 0;
        }
        Ok(())
    }

    /// Whether the peer could be sent this packet as it is.
    fn check_sendable(&self, packet: &Packet) -> Result<(), SendError> {
        let size = packet.encoded_len(self.protocol)?;
        if size > self.peer.maximum_packet_size as usize {
            return Err(SendError::PacketTooLarge {
                size,
                max: self.peer.maximum_packet_size,
            });
        }
        Ok(())
    }

    /// Server: refuse the CONNECT with this reason (mapped to a 3.1.x return
    /// code for older clients) and close. Nothing further is processed
    /// ([MQTT-3.1.4-6]).
    pub fn reject(
        &mut self,
        now: Instant,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> Result<(), SendError> {
        if self.role != Role::Server || self.state != State::AwaitAccept {
            return Err(SendError::Invalid("reject needs a server awaiting CONNECT"));
        }
        if !reason_code.is_error() {
            return Err(SendError::Invalid(
                "a refusal needs a reason code of 0x80 or above",
            ));
        }
        let mut connack = ConnAck::new(reason_code, false);
        connack.properties = properties;
        let mut connack = Packet::ConnAck(connack);
        self.trim_for_peer(&mut connack);
        self.check_sendable(&connack)?;
        let _ = self.queue(now, connack);
        self.close(CloseReason::Refused(reason_code));
        Ok(())
    }

    /// Send an AUTH packet (5.0 enhanced authentication, either role). It
    /// carries the Authentication Method of the CONNECT: filled in when
    /// `auth` has none, refused when it names another ([MQTT-4.12.1-1]).
    pub fn auth(&mut self, now: Instant, mut auth: Auth) -> Result<(), SendError> {
        if !self.protocol.is_v5() || matches!(self.state, State::Closed | State::AwaitConnect) {
            return Err(SendError::Invalid("AUTH needs an open 5.0 connection"));
        }
        if !may_send_auth(auth.reason_code, self.role == Role::Client) {
            return Err(SendError::Invalid(
                "0x19 starts a re-authentication from a client, 0x00 ends an exchange from a server",
            ));
        }
        let Some(ours) = self.auth_method() else {
            // [MQTT-4.12.0-7]: no AUTH unless CONNECT named a method.
            return Err(SendError::Invalid(
                "AUTH needs an Authentication Method in CONNECT",
            ));
        };
        match auth.properties.authentication_method() {
            None => {
                let ours = ours.clone();
                auth.properties.set_authentication_method(Some(ours));
            }
            Some(m) if &m == ours => {}
            Some(_) => {
                return Err(SendError::Invalid(
                    "AUTH must name the Authentication Method of CONNECT",
                ))
            }
        }
        self.queue(now, Packet::Auth(auth))
    }

    fn on_auth(&mut self, a: Auth) -> Result<(), ProtocolError> {
        // 4.12: AUTH only within an exchange started by CONNECT's method, and
        // with the same method.
        let method = a.properties.authentication_method();
        let ours = self.auth_method();
        if !self.protocol.is_v5() || ours.is_none() || method.as_ref() != ours {
            return Err(ProtocolError::BadAuthentication);
        }
        // The peer's side: the opposite of ours.
        if !may_send_auth(a.reason_code, self.role != Role::Client) {
            return Err(ProtocolError::AuthReasonFromWrongSide(a.reason_code));
        }
        self.event(Event::Auth(a));
        Ok(())
    }

    fn on_connack(&mut self, now: Instant, c: ConnAck) -> Result<(), ProtocolError> {
        self.timers[Timer::Response as usize] = None;
        if c.reason_code.is_error() {
            self.event(Event::ConnectRefused {
                reason_code: c.reason_code,
                properties: c.properties,
            });
            self.close(CloseReason::Refused(c.reason_code));
            return Ok(());
        }
        if self.protocol.is_v5() {
            let p = &c.properties;
            self.peer.receive_maximum = p.receive_maximum().map_or(u16::MAX, NonZeroU16::get);
            if let Some(m) = p.maximum_packet_size() {
                self.peer.maximum_packet_size = m.get();
            }
            self.peer.topic_alias_maximum = p.topic_alias_maximum().unwrap_or(0);
            self.peer.maximum_qos = p.maximum_qos().unwrap_or(QoS::ExactlyOnce);
            self.peer.retain_available = p.retain_available().unwrap_or(true);
            if let Some(ka) = p.server_keep_alive() {
                // [MQTT-3.1.2-21]
                self.keep_alive = ka;
            }
        }
        // 3.1 has no Session Present flag: a server keeps the session
        // exactly when Clean Session was 0.
        let session_present = match self.protocol {
            Protocol::V3_1 => !self.clean_start,
            _ => c.session_present,
        };
        if session_present && self.clean_start {
            // [MQTT-3.2.2-4] (5.0): a session we asked to drop; close.
            return Err(ProtocolError::UnexpectedPacket {
                packet: PacketType::ConnAck,
                state: "Session Present after Clean Start",
            });
        }
        self.state = State::Connected;
        if !session_present {
            // The server has no session: ours is discarded ([MQTT-3.2.2-5]
            // in 5.0). Messages it never acknowledged go out again as new.
            self.requeue_unacknowledged();
        }
        self.event(Event::Connected {
            session_present,
            properties: c.properties,
        });
        self.arm_keep_alive();
        self.resume_inflight(now);
        self.flush_pending(now);
        Ok(())
    }

    fn requeue_unacknowledged(&mut self) {
        let mut unacked: Vec<(MessageId, Message, Option<Instant>)> = Vec::new();
        for (_, o) in std::mem::take(&mut self.session.outgoing) {
            match o {
                Outgoing::Publish {
                    id,
                    message,
                    expires_at,
                } => unacked.push((id, message, expires_at)),
                // PUBREC arrived: the server had the message. Done.
                Outgoing::Release { id } => self.event(Event::Published {
                    id,
                    reason_code: ReasonCode::SUCCESS,
                    properties: Properties::new(),
                }),
            }
        }
        unacked.sort_by_key(|(id, _, _)| *id);
        for (id, message, expires_at) in unacked.into_iter().rev() {
            self.session.pending.push_front(Queued {
                id,
                message,
                expires_at,
            });
        }
        self.session.incoming.clear();
        self.session.deferred.clear();
    }

    /// [MQTT-4.4.0-1], [MQTT-4.6.0-1]: on a resumed session, resend every
    /// PUBREL now and every unacknowledged PUBLISH (DUP set, same identifier)
    /// in its original order, as the new connection's send quota allows.
    fn resume_inflight(&mut self, now: Instant) {
        let mut order: Vec<(MessageId, u16)> = self
            .session
            .outgoing
            .iter()
            .map(|(pid, o)| (o.id(), *pid))
            .collect();
        order.sort_unstable();
        self.clear_resends();
        for (_, pid) in order {
            match self.session.outgoing.get(&pid) {
                Some(Outgoing::Publish { .. }) => self.rare().to_resend.push_back(pid),
                Some(Outgoing::Release { .. }) => {
                    if let Some(packet_id) = PacketId::new(pid) {
                        let _ = self.queue(now, Packet::PubRel(PubAck::new(packet_id)));
                    }
                }
                None => {}
            }
        }
    }

    /// Resend what the window allows of a resumed session's PUBLISHes.
    fn flush_resends(&mut self, now: Instant) {
        while self.state == State::Connected && self.send_quota() > 0 {
            let Some(pid) = self.rare.as_mut().and_then(|r| r.to_resend.pop_front()) else {
                return;
            };
            let Some(Outgoing::Publish {
                id,
                message,
                expires_at,
            }) = self.session.outgoing.get(&pid)
            else {
                continue;
            };
            let (id, mut message, expires_at) = (*id, message.clone(), *expires_at);
            if self.role == Role::Client && !self.supported(&message) {
                // The server came back supporting less ([MQTT-3.2.2-11]).
                self.finish_exchange(pid);
                self.event(Event::Dropped {
                    id,
                    reason: DropReason::NotSupported,
                });
                continue;
            }
            if let Some(at) = expires_at {
                // Delivery has started, so it is not dropped; it carries what
                // is left of its interval, at least a second.
                let left = remaining_secs(at, now).max(1);
                message.properties.set_message_expiry_interval(Some(left));
            }
            self.send_publish(now, id, message, PacketId::new(pid), true);
        }
    }

    // ------------------------------------------------------------ publish

    /// Publish a message. QoS 1 and 2 messages take a packet identifier and
    /// go out while the in-flight window (the peer's Receive Maximum and
    /// [`Config::max_inflight`]) has room; otherwise they wait in order, up to
    /// [`Config::max_pending`]. The returned id names the message in
    /// [`Event::Published`] and [`Event::Dropped`].
    pub fn publish(&mut self, now: Instant, message: Message) -> Result<MessageId, SendError> {
        // A server's session is the one it accepts: until then there is
        // nowhere to put a message (queue it in that state with
        // `SessionState::enqueue`).
        if matches!(
            self.state,
            State::Closed | State::AwaitConnect | State::AwaitAccept
        ) {
            return Err(SendError::NotConnected);
        }
        if self.role == Role::Client && self.state == State::Connected && !self.supported(&message)
        {
            return Err(SendError::NotSupported);
        }
        let id = self
            .session
            .enqueue(now, message, self.config.max_pending)?;
        if self.state == State::Connected {
            self.flush_pending(now);
        }
        Ok(id)
    }

    /// Server: a QoS 0 PUBLISH (`publish`, without a Topic Alias of its
    /// own: one is refused) the caller may write straight to the wire instead of
    /// giving it to [`Connection::publish`], as it is to be written (with
    /// this connection's Topic Alias, if it gets one); it then counts as
    /// sent. `None`: give it to `publish`, which does all the rest.
    ///
    /// It passes only where `publish` would send it at once and unchanged
    /// but for the alias: connected, nothing queued before it (packets to
    /// transmit, resends, messages waiting for the window), and within the
    /// peer's Maximum Packet Size. A broker's fan-out uses it to encode one
    /// shared message for each subscriber without building a packet of its
    /// own for every one.
    pub fn pass_at_most_once<'a>(
        &mut self,
        now: Instant,
        mut publish: PublishView<'a>,
    ) -> Option<PublishView<'a>> {
        let clear = self.role == Role::Server
            && self.state == State::Connected
            && publish.qos == QosPid::AtMostOnce
            && publish.topic_alias.is_none()
            && (publish.properties.is_empty() || publish.properties.topic_alias().is_none())
            && self.transmit.is_empty()
            && self.session.pending.is_empty()
            && self.resends() == 0
            // (`publish` would refuse every message.)
            && self.config.max_pending > 0;
        if !clear {
            return None;
        }
        let mut new_alias = false;
        if self.protocol.is_v5() && self.peer.topic_alias_maximum > 0 {
            match self.alias_out(publish.topic) {
                Some((alias, known)) => {
                    publish.topic_alias = Some(alias);
                    new_alias = !known;
                    if known {
                        publish.topic = &ALIAS_ONLY;
                    }
                }
                None => publish.topic_alias = None,
            }
        }
        let fits = publish
            .encoded_len(self.protocol)
            .is_ok_and(|size| size <= self.peer.maximum_packet_size as usize);
        if !fits {
            // `publish` drops it; the alias it would have set was never set.
            if let Some(r) = self.rare.as_mut().filter(|_| new_alias) {
                r.alias_out.remove(publish.topic);
            }
            return None;
        }
        self.last_sent = now;
        Some(publish)
    }

    /// Client: whether the server accepts this QoS and RETAIN.
    fn supported(&self, m: &Message) -> bool {
        m.qos <= self.peer.maximum_qos && (!m.retain || self.peer.retain_available)
    }

    /// Send what waits, while the window has room: first the resumed
    /// session's resends, then new messages.
    fn flush_pending(&mut self, now: Instant) {
        self.flush_resends(now);
        if self.resends() > 0 {
            return;
        }
        while self.state == State::Connected {
            let Some(front) = self.session.pending.front() else {
                return;
            };
            if front.message.qos != QoS::AtMostOnce && self.send_quota() == 0 {
                return;
            }
            let Some(q) = self.session.pending.pop_front() else {
                return;
            };
            if q.expires_at.is_some_and(|at| at <= now) {
                self.event(Event::Dropped {
                    id: q.id,
                    reason: DropReason::Expired,
                });
                continue;
            }
            if self.role == Role::Client && !self.supported(&q.message) {
                // Queued before CONNACK told us what the server supports.
                self.event(Event::Dropped {
                    id: q.id,
                    reason: DropReason::NotSupported,
                });
                continue;
            }
            let mut message = q.message;
            if let Some(at) = q.expires_at {
                // The interval forwarded is what is left ([MQTT-3.3.2-6]).
                message
                    .properties
                    .set_message_expiry_interval(Some(remaining_secs(at, now)));
            }
            if message.qos == QoS::AtMostOnce {
                self.send_publish(now, q.id, message, None, false);
                continue;
            }
            let Some(pid) = self.allocate_packet_id() else {
                self.session.pending.push_front(Queued {
                    id: q.id,
                    message,
                    expires_at: q.expires_at,
                });
                return;
            };
            self.session.outgoing.insert(
                pid.get(),
                Outgoing::Publish {
                    id: q.id,
                    message: message.clone(),
                    expires_at: q.expires_at,
                },
            );
            if message.qos == QoS::ExactlyOnce {
                self.record(Change::Sent {
                    id: q.id,
                    packet_id: pid.get(),
                });
            }
            self.send_publish(now, q.id, message, Some(pid), false);
        }
    }

    fn expire_pending(&mut self, now: Instant) {
        let events = &mut self.events;
        self.session.pending.retain(|q| {
            let expired = q.expires_at.is_some_and(|at| at <= now);
            if expired {
                events
                    .get_or_insert_with(Box::default)
                    .push_back(Event::Dropped {
                        id: q.id,
                        reason: DropReason::Expired,
                    });
            }
            !expired
        });
    }

    /// An identifier no exchange of ours uses ([MQTT-2.2.1-3], [MQTT-2.2.1-4]).
    fn allocate_packet_id(&mut self) -> Option<PacketId> {
        for _ in 0..=u16::MAX {
            self.session.next_packet_id = self.session.next_packet_id.wrapping_add(1);
            let candidate = self.session.next_packet_id;
            if candidate != 0
                && !self.session.outgoing.contains_key(&candidate)
                && !self
                    .rare
                    .as_ref()
                    .is_some_and(|r| r.pending_subscriptions.contains(&candidate))
            {
                return PacketId::new(candidate);
            }
        }
        None
    }

    /// Build and queue one PUBLISH: topic alias, size check.
    fn send_publish(
        &mut self,
        now: Instant,
        id: MessageId,
        message: Message,
        packet_id: Option<PacketId>,
        dup: bool,
    ) {
        let Some(qos) = QosPid::from_parts(message.qos, packet_id) else {
            return;
        };
        let mut properties = message.properties;
        if self.role == Role::Client {
            // [MQTT-3.3.4-6]: a client's PUBLISH carries none.
            properties.remove(&[prop::TOPIC_ALIAS, prop::SUBSCRIPTION_IDENTIFIER]);
        } else {
            properties.remove(&[prop::TOPIC_ALIAS]);
        }
        let mut publish = Publish {
            dup: dup && packet_id.is_some(),
            qos,
            retain: message.retain,
            topic: message.topic,
            properties,
            payload: message.payload,
        };
        // The message is moved, not copied, on its way to the wire (each
        // copy of a shared buffer is an atomic count up and down again, per
        // subscriber): the topic is kept aside only where an alias may
        // replace it.
        let aliasing = self.protocol.is_v5() && self.peer.topic_alias_maximum > 0;
        let topic = aliasing.then(|| publish.topic.clone());
        let new_alias = aliasing && self.apply_alias_out(&mut publish);
        let size = publish.encoded_len(self.protocol);
        if size.map_or(true, |s| s > self.peer.maximum_packet_size as usize) {
            // [MQTT-3.1.2-24], [MQTT-3.1.2-25]: never sent; as if delivered.
            // An alias it would have set was never set.
            if let Some((topic, r)) = topic.filter(|_| new_alias).zip(self.rare.as_mut()) {
                r.alias_out.remove(&topic);
            }
            if let Some(pid) = packet_id {
                self.finish_exchange(pid.get());
            }
            self.event(Event::Dropped {
                id,
                reason: DropReason::TooLarge,
            });
            return;
        }
        self.queue_unchecked(now, Packet::Publish(publish));
    }

    /// Assign an alias to a topic while the peer's maximum allows; later
    /// messages to that topic carry the alias and an empty name. Returns
    /// whether a new alias was set by this message.
    fn apply_alias_out(&mut self, publish: &mut Publish) -> bool {
        match self.alias_out(&publish.topic) {
            Some((alias, known)) => {
                publish.properties.set_topic_alias(Some(alias));
                if known {
                    publish.topic = TopicName::alias_only();
                }
                !known
            }
            None => false,
        }
    }

    /// The Topic Alias for `topic` and whether the peer knows it already:
    /// a new one is given while the peer's maximum allows.
    fn alias_out(&mut self, topic: &TopicName) -> Option<(NonZeroU16, bool)> {
        let max = self.peer.topic_alias_maximum.min(1024);
        let known = self.rare.as_ref().and_then(|r| r.alias_out.get(topic));
        if let Some(&alias) = known {
            return Some((alias, true));
        }
        // Aliases are handed out 1, 2, 3, … and never reused for another
        // topic on this connection ([MQTT-3.3.2-9], [MQTT-3.3.2-11]).
        let next = self.rare.as_ref().map_or(0, |r| r.alias_out.len()) as u16 + 1;
        let alias = NonZeroU16::new(next).filter(|_| next <= max)?;
        self.rare().alias_out.insert(topic.clone(), alias);
        Some((alias, false))
    }

    fn on_publish(&mut self, now: Instant, mut p: Publish) -> Result<(), ProtocolError> {
        if self.protocol.is_v5() {
            if self.role == Role::Server && !p.properties.subscription_identifiers().is_empty() {
                return Err(ProtocolError::SubscriptionIdentifierFromClient);
            }
            if let Some(alias) = p.properties.topic_alias() {
                let max = self.our_topic_alias_maximum;
                if alias.get() > max {
                    return Err(ProtocolError::TopicAliasInvalid {
                        alias: alias.get(),
                        max,
                    });
                }
                if p.topic.is_empty() {
                    p.topic = self
                        .rare
                        .as_ref()
                        .and_then(|r| r.alias_in.get(&alias.get()))
                        .cloned()
                        .ok_or(ProtocolError::UnknownTopicAlias(alias.get()))?;
                } else {
                    // Its own allocation: a view would keep the whole frame
                    // alive for as long as the alias lives.
                    let topic = TopicName::try_from(p.topic.as_str())?;
                    self.rare().alias_in.insert(alias.get(), topic);
                }
                p.properties = p.properties.without(&[prop::TOPIC_ALIAS]);
            }
        }
        match p.qos {
            QosPid::AtMostOnce => {
                self.event(Event::Message(p));
            }
            QosPid::AtLeastOnce(pid) if self.config.manual_acks => {
                // The peer counts it against our Receive Maximum until the
                // PUBACK ([MQTT-3.3.4-9]).
                if self
                    .rare
                    .as_ref()
                    .is_some_and(|r| r.unacked.contains(&pid.get()))
                {
                    // A repeat of a message the application has and has
                    // not acknowledged yet: delivered once per connection.
                    return Ok(());
                }
                let max = self.our_receive_maximum;
                let held = self.unacked() + self.session.incoming.len();
                if self.protocol.is_v5() && held >= usize::from(max) {
                    return Err(ProtocolError::ReceiveMaximumExceeded { max });
                }
                self.rare().unacked.insert(pid.get());
                self.event(Event::Message(p));
            }
            QosPid::ExactlyOnce(pid) if self.config.manual_acks => {
                if self.session.incoming.contains(&pid.get()) {
                    // A repeat: acknowledged if the application already
                    // acknowledged it; otherwise its PUBREC is still to come.
                    if !self.session.deferred.contains(&pid.get()) {
                        let _ = self.queue(now, Packet::PubRec(PubAck::new(pid)));
                    }
                    return Ok(());
                }
                let held = self.unacked() + self.session.incoming.len();
                if let Some(max) = self.qos2_limit().filter(|m| held >= usize::from(*m)) {
                    return Err(ProtocolError::ReceiveMaximumExceeded { max });
                }
                self.session.incoming.insert(pid.get());
                self.session.deferred.insert(pid.get());
                self.event(Event::Message(p));
            }
            QosPid::AtLeastOnce(pid) => {
                if self.session.incoming.contains(&pid.get()) {
                    if !self.protocol.is_v5() {
                        return Err(ProtocolError::PacketIdInUse(pid.get()));
                    }
                    let ack = PubAck::with_reason(pid, ReasonCode::PACKET_IDENTIFIER_IN_USE);
                    let _ = self.queue(now, Packet::PubAck(ack));
                    return Ok(());
                }
                // [MQTT-4.3.2-4]: own it, then PUBACK; in arrival order ([MQTT-4.6.0-2]).
                self.event(Event::Message(p));
                let _ = self.queue(now, Packet::PubAck(PubAck::new(pid)));
            }
            QosPid::ExactlyOnce(pid) => {
                if self.session.incoming.contains(&pid.get()) {
                    // [MQTT-4.3.3-10]: a repeat before PUBREL is acknowledged, not delivered.
                    let _ = self.queue(now, Packet::PubRec(PubAck::new(pid)));
                    return Ok(());
                }
                let held = self.session.incoming.len();
                if let Some(max) = self.qos2_limit().filter(|m| held >= usize::from(*m)) {
                    return Err(ProtocolError::ReceiveMaximumExceeded { max });
                }
                self.session.incoming.insert(pid.get());
                // [MQTT-4.3.3-8]
                self.event(Event::Message(p));
                let _ = self.queue(now, Packet::PubRec(PubAck::new(pid)));
            }
        }
        Ok(())
    }

    /// How many QoS 2 messages the peer may leave awaiting PUBREL. A 5.0
    /// peer was told our Receive Maximum ([MQTT-3.3.4-9]). A 3.1.x client
    /// can't be told, but a server holds it to the configured one all the
    /// same: each id is state kept for it, and 65,535 of them per client is
    /// too many. A client keeps what its broker sends (brokers bound their
    /// own windows).
    fn qos2_limit(&self) -> Option<u16> {
        if self.protocol.is_v5() {
            Some(self.our_receive_maximum)
        } else {
            (self.role == Role::Server).then(|| self.config.receive_maximum.get())
        }
    }

    fn on_puback(&mut self, now: Instant, a: PubAck) -> Result<(), ProtocolError> {
        let pid = a.packet_id.get();
        match self.session.outgoing.get(&pid) {
            Some(Outgoing::Publish { message, .. }) if message.qos == QoS::AtLeastOnce => {}
            // An acknowledgement for nothing we sent on this session: ignore.
            None => return Ok(()),
            Some(_) => {
                return Err(ProtocolError::UnexpectedPacket {
                    packet: PacketType::PubAck,
                    state: "a QoS 2 exchange holds that packet identifier",
                })
            }
        }
        if let Some(o) = self.finish_exchange(pid) {
            self.event(Event::Published {
                id: o.id(),
                reason_code: a.reason_code,
                properties: a.properties,
            });
        }
        self.flush_pending(now);
        Ok(())
    }

    /// An exchange of ours is over: its identifier is free again.
    fn finish_exchange(&mut self, pid: u16) -> Option<Outgoing> {
        self.forget_resend(pid);
        self.session.outgoing.remove(&pid)
    }

    fn on_pubrec(&mut self, now: Instant, a: PubAck) -> Result<(), ProtocolError> {
        let pid = a.packet_id.get();
        match self.session.outgoing.get(&pid) {
            Some(Outgoing::Publish { id, message, .. }) if message.qos == QoS::ExactlyOnce => {
                let id = *id;
                if a.reason_code.is_error() {
                    // [MQTT-4.4.0-2]: acknowledged, not retransmitted.
                    self.finish_exchange(pid);
                    self.event(Event::Published {
                        id,
                        reason_code: a.reason_code,
                        properties: a.properties,
                    });
                    self.flush_pending(now);
                    return Ok(());
                }
                // [MQTT-4.3.3-4]: PUBREL with the same identifier.
                self.forget_resend(pid);
                self.session.outgoing.insert(pid, Outgoing::Release { id });
                self.record(Change::Released { id, packet_id: pid });
                let _ = self.queue(now, Packet::PubRel(PubAck::new(a.packet_id)));
                Ok(())
            }
            Some(Outgoing::Release { .. }) => {
                let _ = self.queue(now, Packet::PubRel(PubAck::new(a.packet_id)));
                Ok(())
            }
            Some(Outgoing::Publish { .. }) => Err(ProtocolError::UnexpectedPacket {
                packet: PacketType::PubRec,
                state: "a QoS 1 exchange holds that packet identifier",
            }),
            // An error PUBREC ends the exchange: nothing follows it.
            None if a.reason_code.is_error() => Ok(()),
            None => {
                let mut rel = PubAck::new(a.packet_id);
                if self.protocol.is_v5() {
                    rel.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                    rel.properties = said("no QoS 2 message was sent under that identifier");
                }
                let _ = self.queue(now, Packet::PubRel(rel));
                Ok(())
            }
        }
    }

    fn on_pubcomp(&mut self, now: Instant, a: PubAck) -> Result<(), ProtocolError> {
        let pid = a.packet_id.get();
        match self.session.outgoing.get(&pid) {
            Some(Outgoing::Release { id }) => {
                let id = *id;
                self.finish_exchange(pid);
                self.event(Event::Published {
                    id,
                    reason_code: a.reason_code,
                    properties: a.properties,
                });
                self.flush_pending(now);
                Ok(())
            }
            // PUBCOMP before PUBREC: out of order.
            Some(Outgoing::Publish { .. }) => Err(ProtocolError::UnexpectedPacket {
                packet: PacketType::PubComp,
                state: "the exchange awaits PUBACK or PUBREC",
            }),
            None => Ok(()),
        }
    }

    // ------------------------------------------------------------ subscribe

    /// Client: send SUBSCRIBE. The answer comes as [`Event::SubAck`].
    pub fn subscribe(
        &mut self,
        now: Instant,
        subscriptions: Vec<Subscription>,
        properties: Properties,
    ) -> Result<PacketId, SendError> {
        let packet_id = self.subscription_id()?;
        let packet = Packet::Subscribe(Subscribe {
            packet_id,
            properties,
            subscriptions,
        });
        self.send_request(now, packet_id, packet)
    }

    /// Client: send UNSUBSCRIBE. The answer comes as [`Event::UnsubAck`].
    pub fn unsubscribe(
        &mut self,
        now: Instant,
        filters: Vec<TopicFilter>,
        properties: Properties,
    ) -> Result<PacketId, SendError> {
        let packet_id = self.subscription_id()?;
        let packet = Packet::Unsubscribe(Unsubscribe {
            packet_id,
            properties,
            filters,
        });
        self.send_request(now, packet_id, packet)
    }

    fn subscription_id(&mut self) -> Result<PacketId, SendError> {
        if self.role != Role::Client {
            return Err(SendError::Invalid("only a client subscribes"));
        }
        if self.state != State::Connected {
            return Err(SendError::NotConnected);
        }
        let pending = self
            .rare
            .as_ref()
            .map_or(0, |r| r.pending_subscriptions.len());
        if pending >= self.config.max_pending_subscriptions {
            return Err(SendError::TooManyPendingSubscriptions);
        }
        self.allocate_packet_id()
            .ok_or(SendError::TooManyPendingSubscriptions)
    }

    fn send_request(
        &mut self,
        now: Instant,
        packet_id: PacketId,
        packet: Packet,
    ) -> Result<PacketId, SendError> {
        let size = packet.encoded_len(self.protocol)?;
        if size > self.peer.maximum_packet_size as usize {
            return Err(SendError::PacketTooLarge {
                size,
                max: self.peer.maximum_packet_size,
            });
        }
        self.rare().pending_subscriptions.insert(packet_id.get());
        self.queue_unchecked(now, packet);
        Ok(packet_id)
    }

    /// Server: answer a SUBSCRIBE.
    pub fn suback(&mut self, now: Instant, suback: SubAck) -> Result<(), SendError> {
        self.server_reply(now, Packet::SubAck(suback))
    }

    /// Server: answer an UNSUBSCRIBE.
    pub fn unsuback(&mut self, now: Instant, unsuback: UnsubAck) -> Result<(), SendError> {
        self.server_reply(now, Packet::UnsubAck(unsuback))
    }

    fn server_reply(&mut self, now: Instant, packet: Packet) -> Result<(), SendError> {
        if self.role != Role::Server {
            return Err(SendError::Invalid(
                "only a server acknowledges subscriptions",
            ));
        }
        if self.state != State::Connected {
            return Err(SendError::NotConnected);
        }
        self.queue(now, packet)
    }

    /// With [`Config::manual_acks`]: acknowledge a received QoS 1 or 2
    /// message (PUBACK, or PUBREC for QoS 2). Call it in the order the
    /// messages were received ([MQTT-4.6.0-2]). A QoS 2 acknowledgement
    /// is part of the [`SessionState`]: made after the connection closed, it
    /// is recorded and the PUBREC answers the sender's repeat on the next
    /// connection. A QoS 1 message received on an earlier connection is not
    /// acknowledged here — the peer resends it, and it is delivered again.
    pub fn ack(&mut self, now: Instant, packet_id: PacketId) -> Result<(), SendError> {
        self.ack_with(now, packet_id, ReasonCode::SUCCESS)
    }

    /// [`Connection::ack`] with a 5.0 reason code (3.1.x sends none): 0x10
    /// No matching subscribers, or an error such as 0x87 Not authorized. A
    /// PUBREC with an error ends the QoS 2 exchange: no PUBREL follows
    /// ([MQTT-4.3.3-4] with 4.3.3's note on reason codes).
    pub fn ack_with(
        &mut self,
        now: Instant,
        packet_id: PacketId,
        reason_code: ReasonCode,
    ) -> Result<(), SendError> {
        self.ack_with_properties(now, packet_id, reason_code, Properties::new())
    }

    /// [`Connection::ack_with`] with 5.0 properties (3.1.x sends none): a
    /// Reason String and User Properties, which go only to a client that
    /// asked for problem information ([MQTT-3.1.2-29]) and are left out
    /// where they would take the acknowledgement past the peer's Maximum
    /// Packet Size ([MQTT-3.4.2-2], [MQTT-3.4.2-3], [MQTT-3.5.2-2],
    /// [MQTT-3.5.2-3]). Any other property is refused.
    pub fn ack_with_properties(
        &mut self,
        now: Instant,
        packet_id: PacketId,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> Result<(), SendError> {
        // Everything is checked before anything changes: a refused call
        // leaves the message to be acknowledged again.
        if !properties.is_empty()
            && !properties
                .without(&[prop::REASON_STRING, prop::USER_PROPERTY])
                .is_empty()
        {
            return Err(SendError::Invalid(
                "a PUBACK/PUBREC carries only a Reason String and User Properties",
            ));
        }
        let (reason_code, properties) = if self.protocol.is_v5() {
            (reason_code, properties)
        } else {
            (ReasonCode::SUCCESS, Properties::new())
        };
        if !reason_code.allowed_in(ReasonContext::PubAck) {
            return Err(SendError::Invalid("not a PUBACK/PUBREC reason code"));
        }
        let id = packet_id.get();
        let qos2 = self.session.deferred.contains(&id);
        if !qos2 && !self.rare.as_ref().is_some_and(|r| r.unacked.contains(&id)) {
            return Err(SendError::Invalid(
                "no message with that packet identifier awaits acknowledgement",
            ));
        }
        let ack = PubAck {
            packet_id,
            reason_code,
            properties,
        };
        let mut packet = if qos2 {
            Packet::PubRec(ack)
        } else {
            Packet::PubAck(ack)
        };
        let sends = !qos2 || self.state == State::Connected;
        if sends {
            self.trim_for_peer(&mut packet);
            self.check_sendable(&packet)?;
        }
        if qos2 {
            self.session.deferred.remove(&id);
            if reason_code.is_error() && self.session.incoming.remove(&id) {
                self.record(Change::Freed { packet_id: id });
            }
            // Disconnected: recorded in the session; when the sender
            // repeats the PUBLISH on its next connection, the PUBREC goes
            // out at once ([MQTT-4.3.3-10]), without these properties.
        } else if let Some(r) = self.rare.as_mut() {
            r.unacked.remove(&id);
        }
        if sends {
            self.queue_unchecked(now, packet);
        }
        Ok(())
    }

    // ------------------------------------------------------------ disconnect

    /// Close the connection, sending DISCONNECT where the protocol has one
    /// (a 3.1.x server just closes). Refused, with nothing changed, for a
    /// reason code the DISCONNECT table lacks ([MQTT-3.14.2-1]), for 0x04 from
    /// a server (only a client asks for its Will), and for a client raising a
    /// zero Session Expiry Interval (3.14.2.2.2).
    pub fn disconnect(
        &mut self,
        now: Instant,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> Result<(), SendError> {
        if self.state == State::Closed {
            return Ok(());
        }
        if self.protocol.is_v5() {
            if !reason_code.allowed_in(ReasonContext::Disconnect) {
                return Err(SendError::Invalid("not a DISCONNECT reason code"));
            }
            if self.role == Role::Server && reason_code == ReasonCode::DISCONNECT_WITH_WILL_MESSAGE
            {
                return Err(SendError::Invalid("0x04 is the client's to send"));
            }
            if self.role == Role::Client
                && self.connect_session_expiry_zero
                && properties.session_expiry_interval().is_some_and(|s| s > 0)
            {
                return Err(SendError::Invalid(
                    "a zero Session Expiry Interval can't be raised at DISCONNECT",
                ));
            }
        }
        let may_send = match self.role {
            Role::Client => true,
            // [MQTT-3.14.0-1]: only after a successful CONNACK, and only in 5.0.
            Role::Server => self.state == State::Connected && self.protocol.is_v5(),
        };
        if may_send {
            let mut d = Disconnect::new(reason_code);
            if self.protocol.is_v5() {
                d.properties = properties;
                if self.role == Role::Server {
                    // [MQTT-3.14.2-2]
                    d.properties.set_session_expiry_interval(None);
                }
            }
            let _ = self.queue(now, Packet::Disconnect(d));
        }
        self.close(CloseReason::Local(reason_code));
        Ok(())
    }

    fn on_disconnect(&mut self, d: Disconnect) -> Result<(), ProtocolError> {
        if self.role == Role::Server
            && self.connect_session_expiry_zero
            && d.properties
                .session_expiry_interval()
                .is_some_and(|s| s > 0)
        {
            // 3.14.2.2.2: a zero interval in CONNECT can't be raised at DISCONNECT.
            return Err(ProtocolError::UnexpectedPacket {
                packet: PacketType::Disconnect,
                state: "CONNECT set a zero Session Expiry Interval",
            });
        }
        self.close(CloseReason::Disconnected {
            reason_code: d.reason_code,
            properties: d.properties,
        });
        Ok(())
    }

    fn fail(&mut self, now: Instant, e: ProtocolError) {
        if self.state == State::Closed {
            return;
        }
        let reason = e.reason_code();
        match (self.role, self.state) {
            (Role::Server, State::AwaitConnect) => {
                if let ProtocolError::Malformed(
                    DecodeError::UnsupportedProtocolLevel { level }
                    | DecodeError::InvalidProtocolName { level },
                ) = e
                {
                    // [MQTT-3.1.2-1] and [MQTT-3.1.2-2]: refuse, then close.
                    // An unknown name before level 5 is a 5.0 client's
                    // (CONNACK 0x84); otherwise the format every earlier
                    // version reads (3.1.1 return code 1): "MQIsdp" is 3.1's
                    // name whatever level follows it.
                    let named = matches!(
                        e,
                        ProtocolError::Malformed(DecodeError::InvalidProtocolName { .. })
                    );
                    self.protocol = if named && level == 5 {
                        Protocol::V5
                    } else {
                        Protocol::V3_1_1
                    };
                    let refusal = ConnAck::new(ReasonCode::UNSUPPORTED_PROTOCOL_VERSION, false);
                    let _ = self.queue(now, Packet::ConnAck(refusal));
                }
            }
            (Role::Server, State::AwaitAccept) if self.protocol.is_v5() => {
                // Before CONNACK a server refuses through CONNACK.
                let reason = fit(reason, ReasonContext::ConnAck);
                let _ = self.queue(now, Packet::ConnAck(ConnAck::new(reason, false)));
            }
            (Role::Server, State::Connected) | (Role::Client, _) => {
                self.send_disconnect(now, reason)
            }
            _ => {}
        }
        self.close(CloseReason::ProtocolError(e));
    }

    fn send_disconnect(&mut self, now: Instant, reason: ReasonCode) {
        let may = self.protocol.is_v5()
            && match self.role {
                Role::Client => true,
                Role::Server => self.state == State::Connected,
            };
        if may {
            let reason = fit(reason, ReasonContext::Disconnect);
            let _ = self.queue(now, Packet::Disconnect(Disconnect::new(reason)));
        }
    }

    fn close(&mut self, reason: CloseReason) {
        self.state = State::Closed;
        self.timers = [None; 4];
        let r = self.rare();
        r.deferred.clear();
        r.deferred_bytes = 0;
        r.to_resend.clear();
        r.alias_in.clear();
        r.alias_out.clear();
        r.pending_subscriptions.clear();
        r.close_reason = Some(reason.clone());
        self.event(Event::Closed(reason));
    }

    // ------------------------------------------------------------ sending

    /// Queue a non-PUBLISH packet, trimmed to what the peer accepts. A
    /// packet that can't be encoded or trimmed to fit is not sent.
    fn queue(&mut self, now: Instant, mut packet: Packet) -> Result<(), SendError> {
        self.trim_for_peer(&mut packet);
        self.check_sendable(&packet)?;
        self.queue_unchecked(now, packet);
        Ok(())
    }

    /// Leave out what the peer did not ask for or has no room for.
    fn trim_for_peer(&self, packet: &mut Packet) {
        let v5 = self.protocol.is_v5();
        if v5 && self.role == Role::Server && !self.peer.request_problem_information {
            // [MQTT-3.1.2-29]: no reason string or user properties except on
            // PUBLISH, CONNACK and DISCONNECT.
            if let Some(p) = ack_properties(packet) {
                *p = p.without(&[prop::REASON_STRING, prop::USER_PROPERTY]);
            }
        }
        if v5 {
            let max = self.peer.maximum_packet_size as usize;
            if packet.encoded_len(self.protocol).is_ok_and(|n| n > max) {
                // [MQTT-3.2.2-19], [MQTT-3.2.2-20], [MQTT-3.14.2-3], …: drop the
                // reason string and user properties first.
                if let Some(p) = any_properties(packet) {
                    *p = p.without(&[prop::REASON_STRING, prop::USER_PROPERTY]);
                }
            }
        }
    }

    fn queue_unchecked(&mut self, now: Instant, packet: Packet) {
        self.last_sent = now;
        self.transmit.push_back(packet);
        self.arm_keep_alive();
    }

    fn arm_keep_alive(&mut self) {
        if self.role == Role::Client && self.state == State::Connected {
            self.timers[Timer::KeepAlive as usize] =
                self.keep_alive().map(|ka| self.last_sent + ka);
        }
    }

    fn arm_idle(&mut self) {
        if self.role == Role::Server && self.state == State::Connected {
            // [MQTT-3.1.2-22]: one and a half keep alives.
            self.timers[Timer::Idle as usize] =
                self.keep_alive().map(|ka| self.last_received + ka + ka / 2);
        }
    }
}

fn secs(s: u16) -> Duration {
    Duration::from_secs(u64::from(s))
}

/// The topic of a PUBLISH that carries a Topic Alias the peer knows.
static ALIAS_ONLY: TopicName = TopicName::alias_only();

/// The reason code itself if the packet may carry it, else the nearest one it
/// may: Quota exceeded for an overrun limit, Protocol Error for the rest.
fn fit(reason: ReasonCode, context: ReasonContext) -> ReasonCode {
    if reason.allowed_in(context) {
        reason
    } else if reason == ReasonCode::RECEIVE_MAXIMUM_EXCEEDED {
        ReasonCode::QUOTA_EXCEEDED
    } else if reason == ReasonCode::BAD_AUTHENTICATION_METHOD {
        ReasonCode::NOT_AUTHORIZED
    } else {
        ReasonCode::PROTOCOL_ERROR
    }
}

/// Whole seconds left until `at`, rounded up.
fn remaining_secs(at: Instant, now: Instant) -> u32 {
    let left = at.saturating_duration_since(now);
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    secs.min(u64::from(u32::MAX)) as u32
}

/// Most packets, and bytes, a server holds from a client that sends before
/// its CONNECT is answered.
const MAX_DEFERRED: usize = 32;
const MAX_DEFERRED_BYTES: usize = 256 * 1024;

/// Whether a client (or a server) may send an AUTH with `reason`
/// (3.15.2.1): 0x18 either; 0x19 Re-authenticate only a client, 0x00
/// Success only a server.
fn may_send_auth(reason: ReasonCode, client: bool) -> bool {
    match reason {
        ReasonCode::RE_AUTHENTICATE => client,
        ReasonCode::SUCCESS => !client,
        _ => true,
    }
}

/// Properties holding a Reason String: what an error acknowledgement
/// says in words. `queue` leaves it out where the peer did not ask for it
/// or has no room ([MQTT-3.1.2-29], [MQTT-3.6.2-2], [MQTT-3.7.2-2]).
fn said(text: &'static str) -> Properties {
    let mut p = Properties::new();
    p.set_reason_string(Some(MqttString::from_static(text)));
    p
}

/// Properties of the packets [MQTT-3.1.2-29] restricts.
fn ack_properties(packet: &mut Packet) -> Option<&mut Properties> {
    match packet {
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            Some(&mut a.properties)
        }
        Packet::SubAck(a) => Some(&mut a.properties),
        Packet::UnsubAck(a) => Some(&mut a.properties),
        Packet::Auth(a) => Some(&mut a.properties),
        _ => None,
    }
}

fn any_properties(packet: &mut Packet) -> Option<&mut Properties> {
    match packet {
        Packet::ConnAck(c) => Some(&mut c.properties),
        Packet::Disconnect(d) => Some(&mut d.properties),
        p => ack_properties(p),
    }
}
