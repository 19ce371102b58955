//! The connection task: owns the socket and a client-role session machine,
//! reconnects with backoff, and keeps every promise across connections.
//!
//! It never waits for the application: received messages go to the
//! [`crate::Messages`] channel (at most 256 slots) with `try_send`, and a
//! QoS 1/2 message is acknowledged ([`petrel_session::Config::manual_acks`])
//! when it enters that channel, not before: what finds it full waits here
//! unacknowledged, so the socket is still read — the acknowledgements of the
//! application's own publishes arrive there — and the broker's flow control
//! bounds what waits.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use petrel_codec::{
    Connect, MqttString, Packet, PacketId, Properties, Protocol, Publish, QoS, ReasonCode, SubAck,
    Subscription, TopicFilter, UnsubAck, Will,
};
use petrel_session::{CloseReason, Connection, Event, MessageId, SendError, SessionState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{is_final_refusal, ClientError};
use crate::options::ConnectOptions;
use crate::request::{Ack, AckToken, Command, Control, Reply, Status};
use crate::transport;

/// Most filters per SUBSCRIBE when restoring subscriptions.
const RESTORE_CHUNK: usize = 64;
/// How long the last packets (DISCONNECT) may take to write.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);
/// Stop reading the socket and taking commands while this much waits to be
/// written (a peer that does not read can't make us buffer without end).
const OUT_HIGH: usize = 256 * 1024;
/// Commands taken per turn of the loop, so reading and writing go on.
const COMMANDS_PER_TURN: usize = 256;
/// A connection that lasted this long resets the backoff.
const STABLE: Duration = Duration::from_secs(10);

enum Request {
    Subscribe {
        subscriptions: Vec<Subscription>,
        properties: Properties,
        /// `None` for a restore the client makes on its own.
        reply: Option<Reply<SubAck>>,
    },
    Unsubscribe {
        filters: Vec<TopicFilter>,
        properties: Properties,
        reply: Reply<UnsubAck>,
    },
}

/// A received message the application has not been handed yet.
struct Held {
    publish: Publish,
    /// The connection it arrived on, while it is still to be acknowledged
    /// there (or, for QoS 2, in the session that continues).
    ack: Option<(u64, PacketId)>,
}

/// How a connection ended.
enum Outcome {
    /// The application disconnected, or dropped every handle: stop.
    Closed,
    /// Refused for a reason retrying won't change: stop.
    Fatal(ClientError),
    /// Lost or refused: reconnect; on the first attempt, only with
    /// `retry_first_connect` and an error that may pass.
    Lost(ClientError),
}

pub(crate) struct Task {
    opts: ConnectOptions,
    config: petrel_session::Config,
    client_id: String,
    state: SessionState,
    commands: mpsc::Receiver<Command>,
    control: mpsc::Receiver<Control>,
    messages: mpsc::Sender<(Publish, Option<AckToken>)>,
    status: watch::Sender<Status>,
    assigned: watch::Sender<Option<String>>,
    /// Which address the next connection goes to: 0 is `host:port`, the
    /// others `fallbacks`.
    address: usize,
    /// Leaving a fallback for `host:port`, which answered again: reconnect
    /// at once.
    returning: bool,
    /// QoS 1/2 publishes awaiting their acknowledgement, across connections.
    publishes: HashMap<MessageId, Reply<Ack>>,
    /// SUBSCRIBE/UNSUBSCRIBE sent on this connection, by packet identifier.
    requests: HashMap<u16, Request>,
    /// Requests waiting for a connection.
    queued: VecDeque<Request>,
    /// What the broker granted, to restore when it keeps no session.
    subscriptions: BTreeMap<String, (Subscription, Properties)>,
    /// A command that found no room; no other is taken until it fits.
    stalled: Option<Command>,
    /// Received messages the application has not taken yet.
    incoming: VecDeque<Held>,
    /// QoS 2 messages handed over while no connection could acknowledge
    /// them; their PUBREC goes out on the next connection of the session.
    acks_due: Vec<PacketId>,
    /// Counts connections, to tell which one a held message came on.
    generation: u64,
    /// Counts sessions (a connection whose session did not continue starts
    /// a new one): a QoS 2 acknowledgement is valid within its session.
    epoch: u64,
    connected_once: bool,
    connected_at: Option<Instant>,
    closing: Option<Reply<()>>,
    /// A re-authentication under way on this connection.
    reauth: Option<Reply<()>>,
    rng: u64,
}

impl Task {
    pub(crate) fn new(
        opts: ConnectOptions,
        commands: mpsc::Receiver<Command>,
        control: mpsc::Receiver<Control>,
        messages: mpsc::Sender<(Publish, Option<AckToken>)>,
        status: watch::Sender<Status>,
        assigned: watch::Sender<Option<String>>,
    ) -> Result<Self, ClientError> {
        if opts.max_pending == 0 || opts.max_incoming == 0 {
            return Err(ClientError::Invalid(
                "max_pending and max_incoming must be at least 1".into(),
            ));
        }
        let mut opts = opts;
        if let Some(method) = opts.authenticator.as_ref().and_then(|a| a.method()) {
            if opts.properties.authentication_method().is_none() {
                let method = MqttString::try_from(method)
                    .map_err(|e| ClientError::Invalid(format!("authentication method: {e}")))?;
                opts.properties.set_authentication_method(Some(method));
            }
        }
        if opts.properties.authentication_method().is_some() != opts.authenticator.is_some() {
            return Err(ClientError::Invalid(
                "an Authentication Method and an authenticator go together".into(),
            ));
        }
        if opts.client_id.is_empty() && !opts.clean_start && opts.protocol != Protocol::V5 {
            // [MQTT-3.1.3-7]: a 3.1.1 server refuses it anyway.
            return Err(ClientError::Invalid(
                "a persistent 3.1.x session needs a client id".into(),
            ));
        }
        MqttString::try_from(opts.client_id.as_str())
            .map_err(|e| ClientError::Invalid(format!("client id: {e}")))?;
        let mut config = petrel_session::Config {
            max_pending: opts.max_pending,
            maximum_packet_size: opts.max_packet_size,
            response_timeout: opts.connect_timeout,
            manual_acks: true,
            ..petrel_session::Config::default()
        };
        // What CONNECT advertises is what the decoder enforces.
        if let Some(rm) = opts.properties.receive_maximum() {
            config.receive_maximum = rm;
        }
        if let Some(t) = opts.properties.topic_alias_maximum() {
            config.topic_alias_maximum = t;
        }
        if let Some(m) = opts.properties.maximum_packet_size() {
            config.maximum_packet_size = m.get();
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9E37_79B9_7F4A_7C15, |d| d.as_nanos() as u64)
            | 1;
        Ok(Self {
            client_id: opts.client_id.clone(),
            opts,
            config,
            state: SessionState::new(),
            commands,
            control,
            messages,
            status,
            assigned,
            address: 0,
            returning: false,
            publishes: HashMap::new(),
            requests: HashMap::new(),
            queued: VecDeque::new(),
            subscriptions: BTreeMap::new(),
            stalled: None,
            incoming: VecDeque::new(),
            acks_due: Vec::new(),
            generation: 0,
            epoch: 0,
            connected_once: false,
            connected_at: None,
            closing: None,
            reauth: None,
            rng: seed,
        })
    }

    pub(crate) async fn run(mut self, first: oneshot::Sender<Result<(), ClientError>>) {
        let mut first = Some(first);
        let mut failures: u32 = 0;
        loop {
            match self.connection(&mut first).await {
                Outcome::Closed => break,
                Outcome::Fatal(error) => {
                    if let Some(f) = first.take() {
                        let _ = f.send(Err(error));
                    }
                    break;
                }
                Outcome::Lost(error) => {
                    let was_up = self.connected_at.is_some();
                    let addresses = 1 + self.opts.fallbacks.len();
                    // A connection that was up starts again from the first
                    // address; a failed attempt tries the next.
                    self.address = if was_up || self.returning {
                        0
                    } else {
                        (self.address + 1) % addresses
                    };
                    // Moving back to the first address, or on to the next
                    // after a failed attempt: at once.
                    if std::mem::take(&mut self.returning) || (!was_up && self.address != 0) {
                        self.connected_at = None;
                        self.status.send_replace(Status::Connecting);
                        continue;
                    }
                    if first.is_some() {
                        // The first connection: retried only if asked, and
                        // only for what may pass.
                        if !self.opts.retry_first_connect || !error.is_transient() {
                            if let Some(f) = first.take() {
                                let _ = f.send(Err(error));
                            }
                            break;
                        }
                    } else if !self.opts.reconnect.enabled {
                        break;
                    }
                    // Only a connection that stayed up resets the backoff:
                    // one dropped right after CONNACK must not spin.
                    let stable = self
                        .connected_at
                        .take()
                        .is_some_and(|at| at.elapsed() >= STABLE);
                    failures = if stable {
                        0
                    } else {
                        failures.saturating_add(1)
                    };
                    self.status.send_replace(Status::Connecting);
                    let wait = self.backoff(failures);
                    if !self.wait_offline(wait).await {
                        break;
                    }
                }
            }
        }
        self.fail_all();
        self.status.send_replace(Status::Closed);
        if let Some(done) = self.closing.take() {
            let _ = done.send(Ok(()));
        }
    }

    /// The reconnect policy's wait after `failures` failures, its jitter
    /// from the task's own generator.
    fn backoff(&mut self, failures: u32) -> Duration {
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.opts.reconnect.backoff(failures, self.rng)
    }

    fn connect_packet(&self) -> Result<Connect, ClientError> {
        let o = &self.opts;
        let id = MqttString::try_from(self.client_id.as_str())
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        let mut c = Connect::new(o.protocol, id);
        // Reconnects resume the session in 5.0 (it ended already if its
        // expiry was 0); 3.1.x keeps asking for what the options said.
        c.clean_start = if !self.connected_once || self.client_id.is_empty() {
            o.clean_start
        } else {
            o.protocol != Protocol::V5 && o.clean_start
        };
        c.keep_alive = u16::try_from(o.keep_alive.as_secs()).unwrap_or(u16::MAX);
        c.bridge = o.bridge && !o.protocol.is_v5();
        c.username = o
            .username
            .as_deref()
            .map(MqttString::try_from)
            .transpose()
            .map_err(|e| ClientError::Invalid(format!("user name: {e}")))?;
        c.password = o.password.clone();
        c.will = o.will.as_ref().map(|w| Will {
            topic: w.topic.clone(),
            payload: w.payload.clone(),
            qos: w.qos,
            retain: w.retain,
            properties: w.properties.clone(),
        });
        if o.protocol.is_v5() {
            c.properties = o.properties.clone();
            c.properties
                .set_session_expiry_interval((o.session_expiry > 0).then_some(o.session_expiry));
            if let Some(a) = &o.authenticator {
                c.properties.set_authentication_data(a.initial_data());
            }
        }
        Ok(c)
    }

    /// One network connection, from TCP connect to close.
    async fn connection(
        &mut self,
        first: &mut Option<oneshot::Sender<Result<(), ClientError>>>,
    ) -> Outcome {
        let connect = match self.connect_packet() {
            Ok(c) => c,
            Err(e) => return Outcome::Fatal(e),
        };
        // Its own copy of the options: a re-authentication request may be
        // answered while the connection opens.
        let mut opts = self.opts.clone();
        if let Some((host, port)) = self
            .address
            .checked_sub(1)
            .and_then(|i| opts.fallbacks.get(i))
        {
            opts.host = host.clone();
            opts.port = *port;
        }
        let opening = tokio::time::timeout(opts.connect_timeout, transport::connect(&opts));
        tokio::pin!(opening);
        let io = loop {
            tokio::select! {
                r = &mut opening => match r {
                    Ok(Ok(io)) => break io,
                    Ok(Err(e)) => return Outcome::Lost(e),
                    Err(_) => return Outcome::Lost(ClientError::Timeout),
                },
                c = self.control.recv() => {
                    if self.on_control(None, c) {
                        return Outcome::Closed;
                    }
                }
            }
        };
        let (mut reader, mut writer) = tokio::io::split(io);
        let now = Instant::now();
        // Kept in case the machine can't be built: the session must not
        // lose what it holds.
        let kept = self.state.clone();
        let state = std::mem::take(&mut self.state);
        let mut conn = match Connection::client(self.config.clone(), connect, state, now) {
            Ok(c) => c,
            Err(e) => {
                self.state = kept;
                return Outcome::Fatal(ClientError::Send(e));
            }
        };
        drop(kept);
        self.generation += 1;
        let protocol = conn.protocol();
        let limits = self.config.codec_limits();
        let mut inbuf = BytesMut::with_capacity(16 * 1024);
        let mut out = BytesMut::new();
        let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
        let mut outcome = None;
        // On a fallback address: when to check whether the first is back,
        // and the check under way.
        let mut check_at =
            (self.address != 0).then(|| tokio::time::Instant::now() + self.opts.primary_check);
        let mut checking: Option<
            std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>,
        > = None;
        loop {
            let now = Instant::now();
            while let Some(event) = conn.poll_event() {
                if let Some(o) = self.on_event(&mut conn, now, event, first) {
                    outcome.get_or_insert(o);
                }
            }
            self.deliver(Some(&mut conn), now);
            if conn.is_connected() && out.len() < OUT_HIGH && self.closing.is_none() {
                self.pump_commands(&mut conn, now);
            }
            while let Some(p) = conn.poll_transmit() {
                let _ = p.encode(protocol, &mut out);
            }
            if conn.is_closed() {
                let _ = tokio::time::timeout(CLOSE_FLUSH, async {
                    writer.write_all(&out).await?;
                    writer.shutdown().await
                })
                .await;
                break;
            }
            let deadline = conn
                .poll_timeout()
                .map_or(far, tokio::time::Instant::from_std);
            let held_acks = self.incoming.iter().filter(|h| h.ack.is_some()).count();
            // A broker that overruns its own in-flight window is not read
            // further until the application catches up.
            let can_read = out.len() < OUT_HIGH && held_acks < self.opts.max_incoming + 65_535;
            let take_commands = conn.is_connected()
                && self.stalled.is_none()
                && self.closing.is_none()
                && out.len() < OUT_HIGH;
            tokio::select! {
                r = reader.read_buf(&mut inbuf), if can_read => match r {
                    Ok(0) => {
                        outcome.get_or_insert(Outcome::Lost(ClientError::from(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed by the broker",
                        ))));
                        break;
                    }
                    Err(e) => {
                        outcome.get_or_insert(Outcome::Lost(ClientError::io("reading", e)));
                        break;
                    }
                    Ok(_) => {
                        let now = Instant::now();
                        loop {
                            match Packet::decode(&mut inbuf, Some(protocol), &limits) {
                                Ok(Some(p)) => {
                                    let _ = conn.handle_packet(now, p);
                                }
                                Ok(None) => break,
                                Err(e) => {
                                    conn.handle_decode_error(now, e);
                                    break;
                                }
                            }
                        }
                        if inbuf.capacity() - inbuf.len() < 1024 {
                            inbuf.reserve(16 * 1024);
                        }
                    }
                },
                r = writer.write_buf(&mut out), if !out.is_empty() => {
                    let failed = match r {
                        Ok(0) => Some(io::Error::from(io::ErrorKind::WriteZero)),
                        Ok(_) => None,
                        Err(e) => Some(e),
                    };
                    if let Some(e) = failed {
                        outcome.get_or_insert(Outcome::Lost(ClientError::io("writing", e)));
                        break;
                    }
                }
                cmd = self.commands.recv(), if take_commands => {
                    if let Some(c) = cmd {
                        self.stalled = Some(c);
                    }
                }
                c = self.control.recv() => {
                    // Closing shows in `self.closing`.
                    let _ = self.on_control(Some(&mut conn), c);
                }
                _room = room(&self.messages), if !self.incoming.is_empty() => {
                    // Room for one more: `deliver` uses it on the next turn.
                }
                () = tokio::time::sleep_until(deadline) => conn.handle_timeout(Instant::now()),
                () = tokio::time::sleep_until(check_at.unwrap_or(far)), if check_at.is_some() && checking.is_none() => {
                    let mut primary = self.opts.clone();
                    primary.fallbacks.clear();
                    let timeout = primary.connect_timeout;
                    checking = Some(Box::pin(async move {
                        matches!(
                            tokio::time::timeout(timeout, transport::connect(&primary)).await,
                            Ok(Ok(_))
                        )
                    }));
                }
                back = async { checking.as_mut().expect("checked").await }, if checking.is_some() => {
                    checking = None;
                    check_at = Some(tokio::time::Instant::now() + self.opts.primary_check);
                    if back && conn.is_connected() && self.closing.is_none() {
                        self.returning = true;
                        check_at = None;
                        let _ = conn.disconnect(Instant::now(), ReasonCode::NORMAL_DISCONNECTION, Properties::new());
                    }
                }
            }
        }
        // Whatever the connection held stays with the session.
        self.state = conn.take_state();
        if let Some(reply) = self.reauth.take() {
            let _ = reply.send(Err(ClientError::from(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the connection closed during re-authentication",
            ))));
        }
        let back: Vec<Request> = self.requests.drain().map(|(_, r)| r).collect();
        for r in back.into_iter().rev() {
            self.queued.push_front(r);
        }
        if self.closing.is_some() {
            return Outcome::Closed;
        }
        outcome.unwrap_or_else(|| match conn.close_reason() {
            Some(CloseReason::ResponseTimeout) => Outcome::Lost(ClientError::Timeout),
            Some(CloseReason::Disconnected { reason_code, .. }) => {
                Outcome::Lost(ClientError::from(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    format!("disconnected by the broker: {reason_code}"),
                )))
            }
            Some(other) => Outcome::Lost(ClientError::from(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("{other:?}"),
            ))),
            None => Outcome::Lost(ClientError::from(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection lost",
            ))),
        })
    }

    /// Disconnect or re-authentication requested, or every handle dropped
    /// (`None`). Returns whether the client is closing.
    fn on_control(&mut self, conn: Option<&mut Connection>, control: Option<Control>) -> bool {
        let now = Instant::now();
        let (reason_code, properties, reply) = match control {
            Some(Control::Ack(token)) => {
                self.ack(conn, now, token);
                return false;
            }
            Some(Control::Disconnect {
                reason_code,
                properties,
                reply,
            }) => (reason_code, properties, Some(reply)),
            Some(Control::Reauthenticate { reply }) => {
                self.reauthenticate(conn, now, reply);
                return false;
            }
            None => (ReasonCode::NORMAL_DISCONNECTION, Properties::new(), None),
        };
        if let Some(c) = conn {
            if let Err(e) = c.disconnect(now, reason_code, properties) {
                if let Some(reply) = reply {
                    // Refused as asked (say, a reason code DISCONNECT lacks):
                    // nothing changed, the caller learns why.
                    let _ = reply.send(Err(ClientError::Send(e)));
                }
                return false;
            }
        }
        self.closing = Some(reply.unwrap_or_else(|| oneshot::channel().0));
        true
    }

    /// Start a re-authentication (AUTH 0x19, 4.12.1) with the method the
    /// connection began with.
    fn reauthenticate(&mut self, conn: Option<&mut Connection>, now: Instant, reply: Reply<()>) {
        let Some(conn) = conn.filter(|c| c.is_connected()) else {
            let _ = reply.send(Err(ClientError::from(io::Error::from(
                io::ErrorKind::NotConnected,
            ))));
            return;
        };
        let (Some(a), Some(method)) = (
            self.opts.authenticator.as_ref(),
            self.opts.properties.authentication_method(),
        ) else {
            let _ = reply.send(Err(ClientError::Invalid(
                "re-authentication needs an authenticator".into(),
            )));
            return;
        };
        if self.reauth.is_some() {
            let _ = reply.send(Err(ClientError::Invalid(
                "a re-authentication is under way".into(),
            )));
            return;
        }
        let mut props = Properties::new();
        props.set_authentication_method(Some(method));
        props.set_authentication_data(a.initial_data());
        let auth = petrel_codec::Auth {
            reason_code: ReasonCode::RE_AUTHENTICATE,
            properties: props,
        };
        match conn.auth(now, auth) {
            Ok(()) => self.reauth = Some(reply),
            Err(e) => {
                let _ = reply.send(Err(ClientError::Send(e)));
            }
        }
    }

    fn on_event(
        &mut self,
        conn: &mut Connection,
        now: Instant,
        event: Event,
        first: &mut Option<oneshot::Sender<Result<(), ClientError>>>,
    ) -> Option<Outcome> {
        match event {
            Event::Connected {
                session_present,
                properties,
            } => {
                if let Some(a) = &self.opts.authenticator {
                    // A method that authenticates the broker too checks its
                    // last word ([MQTT-4.12.0-5]: the CONNACK carries it).
                    if let Err(e) = a.finish(properties.authentication_data().as_ref()) {
                        let _ = conn.disconnect(now, ReasonCode::NOT_AUTHORIZED, Properties::new());
                        // `run` tells the first caller, if it waits.
                        return Some(Outcome::Fatal(ClientError::Invalid(format!(
                            "authentication: {e}"
                        ))));
                    }
                }
                self.connected_at = Some(now);
                if let Some(id) = properties.assigned_client_identifier() {
                    self.client_id = id.as_str().to_string();
                    self.assigned.send_replace(Some(self.client_id.clone()));
                }
                let reconnect = self.connected_once;
                self.connected_once = true;
                self.status
                    .send_replace(Status::Connected { session_present });
                if let Some(f) = first.take() {
                    let _ = f.send(Ok(()));
                }
                self.resumed(conn, now, reconnect && session_present);
                if reconnect && !session_present {
                    self.restore_subscriptions();
                }
                None
            }
            Event::ConnectRefused { reason_code, .. } => {
                let e = ClientError::Refused(reason_code);
                // Retrying won't change these.
                Some(if is_final_refusal(reason_code) {
                    Outcome::Fatal(e)
                } else {
                    Outcome::Lost(e)
                })
            }
            Event::Message(p) => {
                let qos = p.qos;
                if qos.qos() == QoS::AtMostOnce && self.incoming.len() >= self.opts.max_incoming {
                    return None;
                }
                // A message that waits here must not pin the whole read
                // buffer it was decoded from.
                let publish = if self.incoming.is_empty() {
                    p
                } else {
                    detach(p)
                };
                self.incoming.push_back(Held {
                    publish,
                    ack: qos.packet_id().map(|id| (self.generation, id)),
                });
                None
            }
            Event::Published {
                id,
                reason_code,
                properties,
            } => {
                if let Some(reply) = self.publishes.remove(&id) {
                    let _ = reply.send(Ok(Ack {
                        reason_code,
                        properties,
                    }));
                }
                None
            }
            Event::Dropped { id, reason } => {
                if let Some(reply) = self.publishes.remove(&id) {
                    let _ = reply.send(Err(ClientError::Dropped(reason)));
                }
                None
            }
            Event::Auth(challenge) if challenge.reason_code == ReasonCode::SUCCESS => {
                // A re-authentication succeeded; the method may check the
                // broker's last word.
                let data = challenge.properties.authentication_data();
                let finished = self
                    .opts
                    .authenticator
                    .as_ref()
                    .map_or(Ok(()), |a| a.finish(data.as_ref()));
                let reply = self.reauth.take();
                match finished {
                    Ok(()) => {
                        if let Some(r) = reply {
                            let _ = r.send(Ok(()));
                        }
                        None
                    }
                    Err(e) => {
                        let _ = conn.disconnect(now, ReasonCode::NOT_AUTHORIZED, Properties::new());
                        let e = format!("authentication: {e}");
                        if let Some(r) = reply {
                            let _ = r.send(Err(ClientError::Invalid(e.clone())));
                        }
                        Some(Outcome::Fatal(ClientError::Invalid(e)))
                    }
                }
            }
            Event::Auth(challenge) => {
                let method = self.opts.properties.authentication_method();
                let answer = self
                    .opts
                    .authenticator
                    .as_ref()
                    .map(|a| a.respond(challenge.properties.authentication_data().as_ref()));
                match answer {
                    Some(Ok(data)) => {
                        let mut props = Properties::new();
                        props.set_authentication_method(method);
                        props.set_authentication_data(Some(data));
                        let auth = petrel_codec::Auth {
                            reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
                            properties: props,
                        };
                        if let Err(e) = conn.auth(now, auth) {
                            return Some(Outcome::Fatal(ClientError::Send(e)));
                        }
                        None
                    }
                    Some(Err(e)) => {
                        let _ = conn.disconnect(now, ReasonCode::NOT_AUTHORIZED, Properties::new());
                        Some(Outcome::Fatal(ClientError::Invalid(format!(
                            "authentication: {e}"
                        ))))
                    }
                    None => None,
                }
            }
            Event::SubAck(ack) => self.on_suback(conn, now, ack),
            Event::UnsubAck(ack) => self.on_unsuback(conn, now, ack),
            _ => None,
        }
    }

    /// A new connection: settle what is held from the previous one. If the
    /// session continues, QoS 1 messages not yet handed over are dropped
    /// (the broker sends them again) and QoS 2 ones are acknowledged here
    /// later (their PUBREC is part of the session); owed PUBRECs go out. If
    /// it does not, nothing old is acknowledged any more.
    fn resumed(&mut self, conn: &mut Connection, now: Instant, continues: bool) {
        let generation = self.generation;
        if continues {
            self.incoming
                .retain_mut(|h| match (h.ack, h.publish.qos.qos()) {
                    (Some((g, _)), QoS::AtLeastOnce) if g != generation => false,
                    (Some((g, id)), _) if g != generation => {
                        h.ack = Some((generation, id));
                        true
                    }
                    _ => true,
                });
            for id in std::mem::take(&mut self.acks_due) {
                let _ = conn.ack(now, id);
            }
        } else {
            for h in &mut self.incoming {
                if h.ack.is_some_and(|(g, _)| g != generation) {
                    h.ack = None;
                }
            }
            self.acks_due.clear();
            self.epoch += 1;
        }
    }

    fn on_suback(&mut self, conn: &mut Connection, now: Instant, ack: SubAck) -> Option<Outcome> {
        let id = ack.packet_id.get();
        let request = self.requests.remove(&id)?;
        let Request::Subscribe {
            subscriptions,
            properties,
            reply,
        } = request
        else {
            // A SUBACK answering an UNSUBSCRIBE: the broker broke the protocol.
            self.requests.insert(id, request);
            let _ = conn.disconnect(now, ReasonCode::PROTOCOL_ERROR, Properties::new());
            return None;
        };
        for (s, rc) in subscriptions.iter().zip(&ack.reason_codes) {
            if !rc.is_error() {
                self.subscriptions.insert(
                    s.filter.as_str().to_string(),
                    (s.clone(), properties.clone()),
                );
            }
        }
        if let Some(reply) = reply {
            let _ = reply.send(Ok(ack));
        }
        None
    }

    fn on_unsuback(
        &mut self,
        conn: &mut Connection,
        now: Instant,
        mut ack: UnsubAck,
    ) -> Option<Outcome> {
        let id = ack.packet_id.get();
        let request = self.requests.remove(&id)?;
        let Request::Unsubscribe { filters, reply, .. } = request else {
            self.requests.insert(id, request);
            let _ = conn.disconnect(now, ReasonCode::PROTOCOL_ERROR, Properties::new());
            return None;
        };
        if ack.reason_codes.is_empty() {
            // 3.1.x UNSUBACK carries no codes: every filter was removed.
            ack.reason_codes = vec![ReasonCode::SUCCESS; filters.len()];
        }
        for (f, rc) in filters.iter().zip(&ack.reason_codes) {
            if !rc.is_error() {
                self.subscriptions.remove(f.as_str());
            }
        }
        let _ = reply.send(Ok(ack));
        None
    }

    /// The broker kept no session: subscribe again to what it had granted,
    /// ahead of anything else queued, replacing restores still waiting.
    fn restore_subscriptions(&mut self) {
        self.queued
            .retain(|r| !matches!(r, Request::Subscribe { reply: None, .. }));
        let mut by_props: Vec<(Properties, Vec<Subscription>)> = Vec::new();
        for (sub, props) in self.subscriptions.values() {
            match by_props
                .iter_mut()
                .find(|(p, v)| p == props && v.len() < RESTORE_CHUNK)
            {
                Some((_, v)) => v.push(sub.clone()),
                None => by_props.push((props.clone(), vec![sub.clone()])),
            }
        }
        for (properties, subscriptions) in by_props.into_iter().rev() {
            self.queued.push_front(Request::Subscribe {
                subscriptions,
                properties,
                reply: None,
            });
        }
    }

    /// Hand received messages to the application while its queue has room,
    /// acknowledging each QoS 1/2 message as it is handed over (unless the
    /// application acknowledges them itself).
    fn deliver(&mut self, mut conn: Option<&mut Connection>, now: Instant) {
        while let Some(h) = self.incoming.pop_front() {
            let Held { publish, ack } = h;
            let token = ack.map(|(generation, id)| AckToken {
                generation,
                epoch: self.epoch,
                id,
                exactly_once: publish.qos.qos() == QoS::ExactlyOnce,
            });
            let manual = self.opts.manual_acks;
            match self.messages.try_send((publish, token.filter(|_| manual))) {
                Ok(()) if manual => continue,
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full((publish, _))) => {
                    self.incoming.push_front(Held { publish, ack });
                    return;
                }
                // Nobody reads any more: acknowledge and discard.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
            if let Some(t) = token {
                self.ack(conn.as_deref_mut(), now, t);
            }
        }
    }

    /// Acknowledge a received QoS 1/2 message: on its own connection if
    /// that is still up; a QoS 2 one otherwise on the session's next
    /// connection; a QoS 1 one not at all (the broker sends it again).
    fn ack(&mut self, conn: Option<&mut Connection>, now: Instant, t: AckToken) {
        let current = if t.exactly_once {
            t.epoch == self.epoch
        } else {
            t.generation == self.generation
        };
        if !current {
            return;
        }
        match conn {
            Some(c) if c.is_connected() => {
                let _ = c.ack(now, t.id);
            }
            _ if t.exactly_once => self.acks_due.push(t.id),
            _ => {}
        }
    }

    /// Take the stalled command and others while there is room, a bounded
    /// number per turn.
    fn pump_commands(&mut self, conn: &mut Connection, now: Instant) {
        while let Some(r) = self.queued.pop_front() {
            if let Err(r) = self.send_request(conn, now, r) {
                self.queued.push_front(r);
                break;
            }
        }
        for _ in 0..COMMANDS_PER_TURN {
            let cmd = match self.stalled.take() {
                Some(c) => c,
                None => match self.commands.try_recv() {
                    Ok(c) => c,
                    Err(_) => return,
                },
            };
            if let Err(cmd) = self.command(Some(conn), now, cmd) {
                self.stalled = Some(cmd);
                return;
            }
        }
    }

    /// Handle a command, on the connection if there is one, else into the
    /// session state. Gives the command back if there is no room yet.
    // The "error" is the command itself, handed back to wait for room.
    #[allow(clippy::result_large_err)]
    fn command(
        &mut self,
        conn: Option<&mut Connection>,
        now: Instant,
        cmd: Command,
    ) -> Result<(), Command> {
        match cmd {
            Command::Publish { message, reply } => {
                let qos = message.qos;
                let result = match conn {
                    Some(c) => {
                        if c.state().pending() >= self.opts.max_pending {
                            return Err(Command::Publish { message, reply });
                        }
                        c.publish(now, message.clone())
                    }
                    None => self
                        .state
                        .enqueue(now, message.clone(), self.opts.max_pending),
                };
                match result {
                    Ok(_) if qos == QoS::AtMostOnce => {
                        let _ = reply.send(Ok(Ack::success()));
                    }
                    Ok(id) => {
                        self.publishes.insert(id, reply);
                    }
                    Err(SendError::QueueFull) => return Err(Command::Publish { message, reply }),
                    Err(e) => {
                        let _ = reply.send(Err(ClientError::Send(e)));
                    }
                }
                Ok(())
            }
            Command::Subscribe {
                subscriptions,
                properties,
                reply,
            } => {
                let r = Request::Subscribe {
                    subscriptions,
                    properties,
                    reply: Some(reply),
                };
                self.request(conn, now, r)
            }
            Command::Unsubscribe {
                filters,
                properties,
                reply,
            } => {
                let r = Request::Unsubscribe {
                    filters,
                    properties,
                    reply,
                };
                self.request(conn, now, r)
            }
        }
    }

    #[allow(clippy::result_large_err)]
    fn request(
        &mut self,
        conn: Option<&mut Connection>,
        now: Instant,
        r: Request,
    ) -> Result<(), Command> {
        let room = self.queued.len() < self.opts.max_pending;
        match conn {
            Some(c) if self.queued.is_empty() => match self.send_request(c, now, r) {
                Ok(()) => Ok(()),
                Err(r) if room => {
                    self.queued.push_back(r);
                    Ok(())
                }
                Err(r) => Err(r.into_command()),
            },
            _ if room => {
                self.queued.push_back(r);
                Ok(())
            }
            _ => Err(r.into_command()),
        }
    }

    /// Send a SUBSCRIBE/UNSUBSCRIBE; gives it back while too many await
    /// their acknowledgement. A request the machine refuses is answered
    /// with the error; a restore too large for the broker is split.
    fn send_request(
        &mut self,
        conn: &mut Connection,
        now: Instant,
        r: Request,
    ) -> Result<(), Request> {
        let sent = match &r {
            Request::Subscribe {
                subscriptions,
                properties,
                ..
            } => conn.subscribe(now, subscriptions.clone(), properties.clone()),
            Request::Unsubscribe {
                filters,
                properties,
                ..
            } => conn.unsubscribe(now, filters.clone(), properties.clone()),
        };
        match sent {
            Ok(pid) => {
                self.requests.insert(pid.get(), r);
                Ok(())
            }
            Err(SendError::TooManyPendingSubscriptions) | Err(SendError::NotConnected) => Err(r),
            Err(e) => {
                match r {
                    Request::Subscribe {
                        subscriptions,
                        properties,
                        reply: None,
                    } if subscriptions.len() > 1
                        && matches!(e, SendError::PacketTooLarge { .. }) =>
                    {
                        for s in subscriptions.into_iter().rev() {
                            self.queued.push_front(Request::Subscribe {
                                subscriptions: vec![s],
                                properties: properties.clone(),
                                reply: None,
                            });
                        }
                    }
                    other => other.fail(ClientError::Send(e)),
                }
                Ok(())
            }
        }
    }

    /// Between connections: keep taking commands (into the session state,
    /// bounded) and handing over received messages, until `wait` passes.
    /// Returns false if the client was closed meanwhile.
    async fn wait_offline(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let now = Instant::now();
            self.deliver(None, now);
            if let Some(cmd) = self.stalled.take() {
                if let Err(cmd) = self.command(None, now, cmd) {
                    self.stalled = Some(cmd);
                }
            }
            if self.closing.is_some() {
                return false;
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return true,
                cmd = self.commands.recv(), if self.stalled.is_none() => {
                    if let Some(c) = cmd {
                        self.stalled = Some(c);
                    }
                }
                c = self.control.recv() => {
                    if self.on_control(None, c) {
                        return false;
                    }
                }
                _room = room(&self.messages), if !self.incoming.is_empty() => {}
            }
        }
    }

    /// The client is closing: every waiting caller learns it.
    fn fail_all(&mut self) {
        for (_, reply) in self.publishes.drain() {
            let _ = reply.send(Err(ClientError::Closed));
        }
        for r in self
            .queued
            .drain(..)
            .chain(self.requests.drain().map(|(_, r)| r))
        {
            r.fail(ClientError::Closed);
        }
        if let Some(cmd) = self.stalled.take() {
            cmd.fail();
        }
        self.commands.close();
        while let Ok(cmd) = self.commands.try_recv() {
            cmd.fail();
        }
        self.control.close();
        while let Ok(Control::Disconnect { reply, .. }) = self.control.try_recv() {
            let _ = reply.send(Ok(()));
        }
    }
}

/// Resolves when the application's queue has room (or is gone).
async fn room(messages: &mpsc::Sender<(Publish, Option<AckToken>)>) -> bool {
    messages.reserve().await.is_ok()
}

/// A copy of the message that owns its bytes.
fn detach(mut p: Publish) -> Publish {
    p.payload = Bytes::copy_from_slice(&p.payload);
    if let Ok(topic) = petrel_codec::TopicName::try_from(p.topic.as_str()) {
        p.topic = topic;
    }
    if let Ok(props) = Properties::from_wire(
        Bytes::copy_from_slice(p.properties.as_wire()),
        petrel_codec::PropertyContext::PUBLISH,
        &petrel_codec::Limits::default(),
    ) {
        p.properties = props;
    }
    p
}

impl Request {
    /// Answer the application's request with `error` (a restore the client
    /// made on its own has nobody to answer).
    fn fail(self, error: ClientError) {
        match self {
            Self::Subscribe {
                reply: Some(reply), ..
            } => {
                let _ = reply.send(Err(error));
            }
            Self::Subscribe { reply: None, .. } => {}
            Self::Unsubscribe { reply, .. } => {
                let _ = reply.send(Err(error));
            }
        }
    }

    fn into_command(self) -> Command {
        match self {
            Self::Subscribe {
                subscriptions,
                properties,
                reply,
            } => Command::Subscribe {
                subscriptions,
                properties,
                // Only application requests are ever given back.
                reply: reply.unwrap_or_else(|| oneshot::channel().0),
            },
            Self::Unsubscribe {
                filters,
                properties,
                reply,
            } => Command::Unsubscribe {
                filters,
                properties,
                reply,
            },
        }
    }
}

impl Command {
    fn fail(self) {
        match self {
            Self::Publish { reply, .. } => {
                let _ = reply.send(Err(ClientError::Closed));
            }
            Self::Subscribe { reply, .. } => {
                let _ = reply.send(Err(ClientError::Closed));
            }
            Self::Unsubscribe { reply, .. } => {
                let _ = reply.send(Err(ClientError::Closed));
            }
        }
    }
}
