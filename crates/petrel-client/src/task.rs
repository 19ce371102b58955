//! The connection task: owns the socket and a client-role session machine,
//! reconnects with backoff, and keeps every promise across connections.
//!
//! It never waits for the application: received messages go to a bounded
//! queue with `try_send`, and QoS 1/2 messages are acknowledged only as the
//! application takes them ([`petrel_session::Config::manual_acks`]), so the
//! socket is always read — the acknowledgements of the application's own
//! publishes arrive there — and the broker's flow control bounds what waits.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use petrel_codec::{
    Connect, MqttString, Packet, PacketId, Properties, Protocol, Publish, QoS, ReasonCode, SubAck,
    Subscription, TopicFilter, UnsubAck, Will,
};
use petrel_session::{CloseReason, Connection, Event, MessageId, SendError, SessionState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

use crate::client::{Ack, Command, Reply, Status};
use crate::error::ClientError;
use crate::options::ConnectOptions;
use crate::transport;

/// Most filters per SUBSCRIBE when restoring subscriptions.
const RESTORE_CHUNK: usize = 64;
/// How long the last packets (DISCONNECT) may take to write.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);

enum Request {
    Subscribe {
        subscriptions: Vec<Subscription>,
        properties: Properties,
        reply: Option<Reply<SubAck>>,
    },
    Unsubscribe {
        filters: Vec<TopicFilter>,
        properties: Properties,
        reply: Reply<UnsubAck>,
    },
}

/// How a connection ended.
enum Outcome {
    /// The application disconnected, or dropped every handle: stop.
    Closed,
    /// Lost or refused: reconnect, unless it was the first attempt.
    Lost(ClientError, bool),
}

pub(crate) struct Task {
    opts: ConnectOptions,
    config: petrel_session::Config,
    client_id: String,
    state: SessionState,
    commands: mpsc::Receiver<Command>,
    messages: mpsc::Sender<Publish>,
    status: watch::Sender<Status>,
    assigned: watch::Sender<Option<String>>,
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
    incoming: VecDeque<Publish>,
    /// QoS 1/2 messages handed over while no connection could acknowledge.
    acks_due: Vec<PacketId>,
    dropped_qos0: u64,
    connected_once: bool,
    closing: Option<oneshot::Sender<()>>,
    rng: u64,
}

impl Task {
    pub(crate) fn new(
        opts: ConnectOptions,
        commands: mpsc::Receiver<Command>,
        messages: mpsc::Sender<Publish>,
        status: watch::Sender<Status>,
        assigned: watch::Sender<Option<String>>,
    ) -> Result<Self, ClientError> {
        if opts.max_pending == 0 || opts.max_incoming == 0 {
            return Err(ClientError::Invalid(
                "max_pending and max_incoming must be at least 1".into(),
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
        if let Some(rm) = opts.properties.receive_maximum() {
            config.receive_maximum = rm;
        }
        if let Some(t) = opts.properties.topic_alias_maximum() {
            config.topic_alias_maximum = t;
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
            messages,
            status,
            assigned,
            publishes: HashMap::new(),
            requests: HashMap::new(),
            queued: VecDeque::new(),
            subscriptions: BTreeMap::new(),
            stalled: None,
            incoming: VecDeque::new(),
            acks_due: Vec::new(),
            dropped_qos0: 0,
            connected_once: false,
            closing: None,
            rng: seed,
        })
    }

    pub(crate) async fn run(mut self, first: oneshot::Sender<Result<(), ClientError>>) {
        let mut first = Some(first);
        let mut failures: u32 = 0;
        loop {
            match self.connection(&mut first).await {
                Outcome::Closed => break,
                Outcome::Lost(error, was_connected) => {
                    if let Some(f) = first.take() {
                        let _ = f.send(Err(error));
                        break;
                    }
                    if !self.opts.reconnect.enabled {
                        break;
                    }
                    failures = if was_connected {
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
            let _ = done.send(());
        }
    }

    /// Exponential backoff with jitter: a random wait in [cap/2, cap], cap
    /// doubling with each failure from `min_backoff` to `max_backoff`.
    fn backoff(&mut self, failures: u32) -> Duration {
        let r = &self.opts.reconnect;
        let cap = r
            .min_backoff
            .saturating_mul(1u32 << failures.min(20))
            .min(r.max_backoff)
            .max(Duration::from_millis(1));
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = cap / 2;
        half + Duration::from_nanos(self.rng % (half.as_nanos().max(1) as u64))
    }

    fn connect_packet(&self) -> Result<Connect, ClientError> {
        let o = &self.opts;
        let id = MqttString::try_from(self.client_id.as_str())
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        let mut c = Connect::new(o.protocol, id);
        // Reconnects resume the session; 3.1.1 only when one was asked for
        // (Clean Session 0), and never with an empty (new each time) id.
        c.clean_start = if !self.connected_once || self.client_id.is_empty() {
            o.clean_start
        } else {
            o.protocol != Protocol::V5 && o.clean_start
        };
        c.keep_alive = u16::try_from(o.keep_alive.as_secs()).unwrap_or(u16::MAX);
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
            Err(e) => return Outcome::Lost(e, false),
        };
        let io =
            match tokio::time::timeout(self.opts.connect_timeout, transport::connect(&self.opts))
                .await
            {
                Ok(Ok(io)) => io,
                Ok(Err(e)) => return Outcome::Lost(e, false),
                Err(_) => return Outcome::Lost(ClientError::Timeout, false),
            };
        let (mut reader, mut writer) = tokio::io::split(io);
        let now = Instant::now();
        let state = std::mem::take(&mut self.state);
        let mut conn = match Connection::client(self.config.clone(), connect, state, now) {
            Ok(c) => c,
            Err(e) => return Outcome::Lost(ClientError::Send(e), false),
        };
        let protocol = conn.protocol();
        let limits = self.config.codec_limits();
        let mut inbuf = BytesMut::with_capacity(16 * 1024);
        let mut out = BytesMut::new();
        let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
        let mut outcome = None;
        let mut was_connected = false;
        loop {
            let now = Instant::now();
            while let Some(event) = conn.poll_event() {
                if let Some(o) = self.on_event(&mut conn, now, event, first, &mut was_connected) {
                    outcome.get_or_insert(o);
                }
            }
            self.deliver(Some(&mut conn), now);
            if conn.is_connected() {
                self.pump_commands(&mut conn, now);
                if self.closing.is_some() && !conn.is_closed() {
                    let _ =
                        conn.disconnect(now, ReasonCode::NORMAL_DISCONNECTION, Properties::new());
                }
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
            let take_commands =
                conn.is_connected() && self.stalled.is_none() && self.closing.is_none();
            tokio::select! {
                r = reader.read_buf(&mut inbuf) => match r {
                    Ok(0) | Err(_) => {
                        outcome.get_or_insert(Outcome::Lost(ClientError::Io("connection closed by the broker".into()), was_connected));
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
                    if r.is_err() {
                        outcome.get_or_insert(Outcome::Lost(ClientError::Io("write failed".into()), was_connected));
                        break;
                    }
                }
                cmd = self.commands.recv(), if take_commands => match cmd {
                    Some(c) => self.stalled = Some(c),
                    None => {
                        // Every handle is gone: say goodbye.
                        let _ = conn.disconnect(Instant::now(), ReasonCode::NORMAL_DISCONNECTION, Properties::new());
                        outcome.get_or_insert(Outcome::Closed);
                    }
                },
                permit = self.messages.reserve(), if !self.incoming.is_empty() => {
                    // Room for one more: `deliver` uses it on the next turn.
                    drop(permit);
                }
                () = tokio::time::sleep_until(deadline) => conn.handle_timeout(Instant::now()),
            }
        }
        // Whatever the connection held stays with the session.
        self.state = conn.take_state();
        let mut back: Vec<Request> = self.requests.drain().map(|(_, r)| r).collect();
        back.retain(|r| !matches!(r, Request::Subscribe { reply: None, .. }));
        for r in back.into_iter().rev() {
            self.queued.push_front(r);
        }
        if self.closing.is_some() {
            return Outcome::Closed;
        }
        outcome.unwrap_or_else(|| {
            let why = match conn.close_reason() {
                Some(CloseReason::Disconnected { reason_code, .. }) => {
                    format!("disconnected by the broker: {reason_code}")
                }
                Some(other) => format!("{other:?}"),
                None => "connection lost".into(),
            };
            Outcome::Lost(ClientError::Io(why), was_connected)
        })
    }

    fn on_event(
        &mut self,
        conn: &mut Connection,
        now: Instant,
        event: Event,
        first: &mut Option<oneshot::Sender<Result<(), ClientError>>>,
        was_connected: &mut bool,
    ) -> Option<Outcome> {
        match event {
            Event::Connected {
                session_present,
                properties,
            } => {
                *was_connected = true;
                if let Some(id) = properties.assigned_client_identifier() {
                    self.client_id = id.as_str().to_string();
                    self.assigned.send_replace(Some(self.client_id.clone()));
                }
                let resumed_expected = self.connected_once;
                self.connected_once = true;
                self.status
                    .send_replace(Status::Connected { session_present });
                if let Some(f) = first.take() {
                    let _ = f.send(Ok(()));
                }
                if resumed_expected && !session_present {
                    self.restore_subscriptions();
                }
                // Acknowledgements owed from while we were away.
                for id in std::mem::take(&mut self.acks_due) {
                    let _ = conn.ack(now, id);
                }
                None
            }
            Event::ConnectRefused { reason_code, .. } => {
                Some(Outcome::Lost(ClientError::Refused(reason_code), false))
            }
            Event::Message(p) => {
                if p.qos.qos() == QoS::AtMostOnce && self.incoming.len() >= self.opts.max_incoming {
                    self.dropped_qos0 += 1;
                } else {
                    self.incoming.push_back(p);
                }
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
            Event::SubAck(ack) => {
                self.on_suback(ack);
                None
            }
            Event::UnsubAck(ack) => {
                if let Some(Request::Unsubscribe { filters, reply, .. }) =
                    self.requests.remove(&ack.packet_id.get())
                {
                    for (f, rc) in filters.iter().zip(&ack.reason_codes) {
                        if !rc.is_error() {
                            self.subscriptions.remove(f.as_str());
                        }
                    }
                    let _ = reply.send(Ok(ack));
                }
                None
            }
            _ => None,
        }
    }

    fn on_suback(&mut self, ack: SubAck) {
        let Some(Request::Subscribe {
            subscriptions,
            properties,
            reply,
        }) = self.requests.remove(&ack.packet_id.get())
        else {
            return;
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
    }

    /// The broker kept no session: subscribe again to what it had granted,
    /// ahead of anything else queued.
    fn restore_subscriptions(&mut self) {
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
    /// acknowledging each QoS 1/2 message as it is handed over.
    fn deliver(&mut self, mut conn: Option<&mut Connection>, now: Instant) {
        while let Some(p) = self.incoming.pop_front() {
            let id = p.qos.packet_id();
            match self.messages.try_send(p) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(p)) => {
                    self.incoming.push_front(p);
                    return;
                }
                // Nobody reads any more: acknowledge and discard.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
            if let Some(id) = id {
                match conn.as_deref_mut() {
                    Some(c) if c.is_connected() => {
                        let _ = c.ack(now, id);
                    }
                    _ => self.acks_due.push(id),
                }
            }
        }
    }

    /// Take the stalled command and any others while there is room.
    fn pump_commands(&mut self, conn: &mut Connection, now: Instant) {
        while let Some(r) = self.queued.pop_front() {
            if let Err(r) = self.send_request(conn, now, r) {
                self.queued.push_front(r);
                break;
            }
        }
        loop {
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
            if self.closing.is_some() {
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
                    Ok(id) if qos == QoS::AtMostOnce => {
                        let _ = id;
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
            Command::Disconnect {
                reason_code,
                properties,
                reply,
            } => {
                if let Some(c) = conn {
                    if c.disconnect(now, reason_code, properties).is_err() {
                        let _ =
                            c.disconnect(now, ReasonCode::NORMAL_DISCONNECTION, Properties::new());
                    }
                }
                self.closing = Some(reply);
                Ok(())
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
    /// with the error.
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
                        reply: Some(reply), ..
                    } => {
                        let _ = reply.send(Err(ClientError::Send(e)));
                    }
                    Request::Subscribe { reply: None, .. } => {}
                    Request::Unsubscribe { reply, .. } => {
                        let _ = reply.send(Err(ClientError::Send(e)));
                    }
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
                cmd = self.commands.recv(), if self.stalled.is_none() => match cmd {
                    Some(c) => self.stalled = Some(c),
                    None => return false,
                },
                permit = self.messages.reserve(), if !self.incoming.is_empty() => drop(permit),
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
            match r {
                Request::Subscribe {
                    reply: Some(reply), ..
                } => {
                    let _ = reply.send(Err(ClientError::Closed));
                }
                Request::Subscribe { reply: None, .. } => {}
                Request::Unsubscribe { reply, .. } => {
                    let _ = reply.send(Err(ClientError::Closed));
                }
            }
        }
        if let Some(cmd) = self.stalled.take() {
            cmd.fail();
        }
        self.commands.close();
        while let Ok(cmd) = self.commands.try_recv() {
            cmd.fail();
        }
    }
}

impl Request {
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
            Self::Disconnect { reply, .. } => {
                let _ = reply.send(());
            }
        }
    }
}
