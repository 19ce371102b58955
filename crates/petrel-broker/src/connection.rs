//! One task per network connection: read → decode → server session → broker
//! → subscribers' queues, and queue → session → encode → vectored write.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use petrel_codec::{
    Connect, MqttString, Packet, Properties, Protocol, Publish, QoS, ReasonCode, RetainHandling,
    SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use petrel_session::{Accept, CloseReason, Connection, DropReason, Event, Message, SendError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::broker::{Attach, Attached, Kick, KickSignal, Shared};
use crate::mailbox::{lock, SessionKey};
use crate::outq::OutQueue;
use crate::stats::Stats;
use crate::{ConnectionId, Subscription, NEVER};

/// Stop taking messages from the session's queue while this much waits to
/// be written: a slow subscriber's backlog stays in its bounded queue.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Stop reading from a peer that does not read what we send (its
/// acknowledgements pile up here otherwise).
const READ_STOP: usize = 1024 * 1024;
/// Read in chunks of about this much.
const READ_CHUNK: usize = 16 * 1024;
/// How long the last packets (DISCONNECT, …) may take to write at close.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);

static NEXT_ASSIGNED: AtomicU64 = AtomicU64::new(1);

/// A session this connection holds.
struct Held {
    key: SessionKey,
    connection: ConnectionId,
}

struct Task {
    shared: Arc<Shared>,
    conn: Connection,
    peer: SocketAddr,
    limits: petrel_codec::Limits,
    inbuf: BytesMut,
    out: OutQueue,
    kick: Arc<KickSignal>,
    held: Option<Held>,
    client_id: Option<Arc<str>>,
    /// Retained messages for new subscriptions, sent before live ones.
    backlog: VecDeque<Message>,
    will: Option<(Message, Duration)>,
    /// Session Expiry Interval in force.
    expiry: u32,
    got_connect: bool,
    /// Counted in `clients_connected`.
    counted: bool,
    /// The peer closed the socket or it failed.
    lost: bool,
}

/// Serve one connection until it closes.
pub(crate) async fn serve<R, W>(shared: Arc<Shared>, reader: R, writer: W, peer: SocketAddr)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let now = Instant::now();
    let conn = Connection::server(shared.session_config.clone(), now);
    let limits = shared.session_config.codec_limits();
    let mut task = Task {
        shared,
        conn,
        peer,
        limits,
        inbuf: BytesMut::with_capacity(READ_CHUNK),
        out: OutQueue::default(),
        kick: Arc::new(KickSignal::default()),
        held: None,
        client_id: None,
        backlog: VecDeque::new(),
        will: None,
        expiry: 0,
        got_connect: false,
        counted: false,
        lost: false,
    };
    task.run(reader, writer).await;
    task.finish();
}

impl Task {
    async fn run<R, W>(&mut self, mut reader: R, mut writer: W)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut shutdown = self.shared.shutdown.subscribe();
        let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
        loop {
            let now = Instant::now();
            loop {
                let more = self.decode(now);
                self.handle_events(now, &mut shutdown).await;
                if !more || self.conn.is_awaiting_accept() {
                    break;
                }
            }
            self.fill(now);
            self.drain_transmit();
            if self.conn.is_closed() || self.lost {
                break;
            }
            let deadline = self
                .conn
                .poll_timeout()
                .map_or(far, tokio::time::Instant::from_std);
            let key = self.held.as_ref().map(|h| h.key.clone());
            let can_read = self.out.len() < READ_STOP;
            tokio::select! {
                r = reader.read_buf(&mut self.inbuf), if can_read => match r {
                    Ok(0) | Err(_) => self.lost = true,
                    Ok(n) => {
                        Stats::add(&self.shared.stats.bytes_received, n as u64);
                        if self.inbuf.capacity() - self.inbuf.len() < 1024 {
                            self.inbuf.reserve(READ_CHUNK);
                        }
                    }
                },
                r = self.out.write_to(&mut writer), if !self.out.is_empty() => match r {
                    Ok(n) => Stats::add(&self.shared.stats.bytes_sent, n as u64),
                    Err(_) => self.lost = true,
                },
                () = notified(key.as_ref()), if key.is_some() => {}
                () = self.kick.notify.notified() => {
                    let reason = lock(&self.kick.reason).take();
                    if reason == Some(Kick::TakenOver) {
                        // [MQTT-3.1.4-3]: 5.0 DISCONNECT 0x8E, then close.
                        self.close(ReasonCode::SESSION_TAKEN_OVER);
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    self.conn.handle_timeout(Instant::now());
                }
                _ = shutdown.changed() => {
                    self.close(ReasonCode::SERVER_SHUTTING_DOWN);
                }
            }
        }
        if self.lost {
            return;
        }
        // Write what the session still has to say (DISCONNECT, CONNACK with
        // a refusal), briefly, then close the socket.
        let _ = tokio::time::timeout(CLOSE_FLUSH, async {
            while !self.out.is_empty() {
                self.out.write_to(&mut writer).await?;
            }
            writer.shutdown().await
        })
        .await;
    }

    fn close(&mut self, reason: ReasonCode) {
        let now = Instant::now();
        if self
            .conn
            .disconnect(now, reason, Properties::new())
            .is_err()
        {
            self.lost = true;
        }
    }

    fn protocol(&self) -> Option<Protocol> {
        self.got_connect.then(|| self.conn.protocol())
    }

    /// Decode the whole packets read so far and feed them to the session.
    /// Stops after a CONNECT, for the broker to answer it before what the
    /// client sent next; returns whether it stopped early that way.
    fn decode(&mut self, now: Instant) -> bool {
        while !self.conn.is_closed() {
            if self.conn.is_awaiting_accept() {
                return true;
            }
            let protocol = self.protocol();
            match Packet::decode(&mut self.inbuf, protocol, &self.limits) {
                Ok(Some(packet)) => {
                    self.got_connect = true;
                    Stats::add(&self.shared.stats.messages_received, 1);
                    if matches!(packet, Packet::Publish(_)) {
                        Stats::add(&self.shared.stats.publish_received, 1);
                    }
                    if let Err(e) = self.conn.handle_packet(now, packet) {
                        tracing::debug!(peer = %self.peer, error = %e, "protocol error");
                    }
                }
                Ok(None) => return false,
                Err(e) => {
                    tracing::debug!(peer = %self.peer, error = %e, "malformed packet");
                    // The session answers where the protocol lets it (a
                    // CONNACK for an unsupported version, a 5.0 DISCONNECT
                    // with the reason code) and closes.
                    self.conn.handle_decode_error(now, e);
                    return false;
                }
            }
        }
        false
    }

    fn drain_transmit(&mut self) {
        let protocol = self.conn.protocol();
        let stats = &self.shared.stats;
        while let Some(packet) = self.conn.poll_transmit() {
            Stats::add(&stats.messages_sent, 1);
            if matches!(packet, Packet::Publish(_)) {
                Stats::add(&stats.publish_sent, 1);
            }
            if let Err(e) = self.out.push(&packet, protocol) {
                tracing::warn!(peer = %self.peer, error = %e, "could not encode a packet");
            }
        }
    }

    async fn handle_events(&mut self, now: Instant, shutdown: &mut watch::Receiver<bool>) {
        while let Some(event) = self.conn.poll_event() {
            match event {
                Event::ConnectRequest(c) => self.on_connect(now, *c, shutdown).await,
                Event::Message(p) => self.on_publish(now, p),
                Event::Subscribe(s) => self.on_subscribe(now, s),
                Event::Unsubscribe(u) => self.on_unsubscribe(now, u),
                Event::Auth(_) => {
                    // Re-authentication needs a method, and CONNECT with one
                    // was refused; an AUTH now is a protocol error.
                    self.close(ReasonCode::PROTOCOL_ERROR);
                }
                Event::Dropped { reason, .. } => {
                    let stats = &self.shared.stats;
                    let counter = match reason {
                        DropReason::TooLarge => &stats.dropped_too_large,
                        DropReason::Expired => &stats.dropped_expired,
                        _ => &stats.dropped_queue_full,
                    };
                    Stats::add(counter, 1);
                }
                Event::Closed(reason) => self.log_close(&reason),
                _ => {}
            }
        }
    }

    fn log_close(&self, reason: &CloseReason) {
        let id = self.client_id.as_deref().unwrap_or("-");
        match reason {
            CloseReason::Disconnected { reason_code, .. } => {
                tracing::info!(client_id = id, peer = %self.peer, reason = %reason_code, "client disconnected");
            }
            other => {
                tracing::info!(client_id = id, peer = %self.peer, reason = ?other, "connection closed");
            }
        }
    }

    fn refuse(&mut self, now: Instant, reason: ReasonCode) {
        Stats::add(&self.shared.stats.connections_refused, 1);
        if self.conn.reject(now, reason, Properties::new()).is_err() {
            self.lost = true;
        }
    }

    async fn on_connect(&mut self, now: Instant, c: Connect, shutdown: &mut watch::Receiver<bool>) {
        let limits = &self.shared.config.limits;
        let v5 = c.protocol.is_v5();
        let max_qos = QoS::from_u8(limits.max_qos).unwrap_or(QoS::ExactlyOnce);
        if v5 && c.properties.authentication_method().is_some() {
            // No enhanced authentication method is configured.
            return self.refuse(now, ReasonCode::BAD_AUTHENTICATION_METHOD);
        }
        let mut props = Properties::new();
        let client_id: Arc<str> = if c.client_id.is_empty() {
            // [MQTT-3.1.3-8]: 3.1.1 allows a zero-length id only with Clean
            // Session 1; MQTT 3.1 needs one.
            if !v5 && (!c.clean_start || c.protocol == Protocol::V3_1) {
                return self.refuse(now, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
            }
            // [MQTT-3.1.3-6], [MQTT-3.2.2-16]: assign one, and tell a 5.0 client.
            let n = NEXT_ASSIGNED.fetch_add(1, Ordering::Relaxed);
            let id = format!(
                "petrel-{:x}-{n}",
                self.shared.started.elapsed().as_nanos() & 0xffff_ffff
            );
            if v5 {
                if let Ok(s) = MqttString::try_from(id.as_str()) {
                    props.set_assigned_client_identifier(Some(s));
                }
            }
            Arc::from(id)
        } else {
            Arc::from(c.client_id.as_str())
        };
        if client_id.len() > limits.max_client_id_length {
            return self.refuse(now, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
        }
        if let Some(w) = &c.will {
            if v5 && w.qos > max_qos {
                // [MQTT-3.2.2-12]
                return self.refuse(now, ReasonCode::QOS_NOT_SUPPORTED);
            }
        }
        // Session expiry: 5.0 asks; 3.1.x Clean Session 0 means "keep".
        let requested = if v5 {
            c.properties.session_expiry_interval().unwrap_or(0)
        } else if c.clean_start {
            0
        } else {
            NEVER
        };
        self.expiry = requested.min(limits.max_session_expiry);
        if v5 && self.expiry != requested {
            // [MQTT-3.2.2-?] the client learns the interval the server uses.
            props.set_session_expiry_interval(Some(self.expiry));
        }
        if v5
            && (c.keep_alive > limits.max_keepalive
                || (c.keep_alive == 0 && limits.max_keepalive < u16::MAX))
        {
            // [MQTT-3.2.2-21]: the client must use the Server Keep Alive.
            props.set_server_keep_alive(Some(limits.max_keepalive));
        }
        if v5 && max_qos != QoS::ExactlyOnce {
            props.set_maximum_qos(Some(max_qos));
        }
        self.will = c.will.map(|w| {
            let delay = if v5 {
                w.properties.will_delay_interval().unwrap_or(0)
            } else {
                0
            };
            let mut m = Message::new(w.topic, w.payload, w.qos);
            m.retain = w.retain;
            // Will properties go out as PUBLISH properties, less the delay
            // ([MQTT-3.1.3-10]).
            m.properties = w
                .properties
                .without(&[petrel_codec::properties::id::WILL_DELAY_INTERVAL]);
            (m, Duration::from_secs(u64::from(delay)))
        });

        let attached =
            match self
                .shared
                .attach(&client_id, c.clean_start, self.expiry, &self.kick, now)
            {
                Attach::Ready(a) => a,
                Attach::Wait(connection, rx) => {
                    let handover = tokio::select! {
                        r = rx => r.ok(),
                        _ = shutdown.changed() => None,
                    };
                    match handover {
                        Some(h) => {
                            self.shared
                                .take_handover(&client_id, h, &self.kick, Instant::now())
                        }
                        None => {
                            self.shared.abandon(&client_id, connection);
                            return self.refuse(now, ReasonCode::SERVER_UNAVAILABLE);
                        }
                    }
                }
            };
        let now = Instant::now();
        let Attached {
            key,
            connection,
            session_present,
            state,
        } = attached;
        self.held = Some(Held { key, connection });
        self.client_id = Some(client_id.clone());
        let accept = Accept {
            session_present,
            state,
            properties: props,
        };
        if let Err(e) = self.conn.accept(now, accept) {
            tracing::warn!(client_id = %client_id, error = %e, "could not accept");
            self.lost = true;
            return;
        }
        self.shared.stats.client_connected();
        self.counted = true;
        tracing::info!(
            client_id = %client_id,
            peer = %self.peer,
            protocol = c.protocol.name(),
            session_present,
            "client connected"
        );
    }

    fn key(&self) -> Option<SessionKey> {
        self.held.as_ref().map(|h| h.key.clone())
    }

    fn on_publish(&mut self, now: Instant, p: Publish) {
        let Some(key) = self.key() else { return };
        let max_qos = self.shared.config.limits.max_qos;
        if p.qos.qos() as u8 > max_qos {
            // [MQTT-3.2.2-11]: above the Maximum QoS we told the client.
            self.close(ReasonCode::QOS_NOT_SUPPORTED);
            return;
        }
        if p.topic.as_str().starts_with("$SYS") {
            // $SYS belongs to the broker: acknowledged (the session already
            // did) but not routed, as Mosquitto's default access rules do.
            return;
        }
        let mut message = Message::new(p.topic, p.payload, p.qos.qos());
        message.retain = p.retain;
        message.properties = p.properties;
        self.shared.publish(Some(&key), message, now);
    }

    fn on_subscribe(&mut self, now: Instant, s: Subscribe) {
        let Some(key) = self.key() else { return };
        let max_qos = QoS::from_u8(self.shared.config.limits.max_qos).unwrap_or(QoS::ExactlyOnce);
        let identifier = s.properties.subscription_identifiers().first();
        let retained_cap = self.shared.config.limits.max_retained_messages;
        let mut codes = Vec::with_capacity(s.subscriptions.len());
        for sub in &s.subscriptions {
            let mut options = sub.options;
            options.qos = options.qos.min(max_qos);
            let subscription = Subscription {
                options,
                identifier,
            };
            match self.shared.subscribe(&key, &sub.filter, subscription) {
                None => codes.push(ReasonCode::QUOTA_EXCEEDED),
                Some(existed) => {
                    // [MQTT-3.9.3-1]: the granted QoS, in order.
                    codes.push(ReasonCode(options.qos as u8));
                    let send = match options.retain_handling {
                        RetainHandling::SendOnSubscribe => true,
                        RetainHandling::SendIfNew => !existed,
                        RetainHandling::DoNotSend => false,
                    };
                    // Retained messages are not sent for a shared
                    // subscription (4.8.2).
                    if send && sub.filter.shared().is_none() && self.backlog.len() < retained_cap {
                        self.shared.retained_for(
                            &sub.filter,
                            options.qos,
                            identifier,
                            now,
                            &mut self.backlog,
                        );
                        self.backlog.truncate(retained_cap);
                    }
                }
            }
        }
        let suback = SubAck {
            packet_id: s.packet_id,
            properties: Properties::new(),
            reason_codes: codes,
        };
        if self.conn.suback(now, suback).is_err() {
            self.lost = true;
        }
    }

    fn on_unsubscribe(&mut self, now: Instant, u: Unsubscribe) {
        let Some(key) = self.key() else { return };
        let codes = u
            .filters
            .iter()
            .map(|f| {
                if self.shared.unsubscribe(&key, f) {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        let unsuback = UnsubAck {
            packet_id: u.packet_id,
            properties: Properties::new(),
            reason_codes: codes,
        };
        if self.conn.unsuback(now, unsuback).is_err() {
            self.lost = true;
        }
    }

    /// Move messages from the retained backlog and the session's queue into
    /// the session machine while the socket keeps up and the in-flight
    /// window has room.
    fn fill(&mut self, now: Instant) {
        let Some(key) = self.key() else { return };
        if !self.conn.is_connected() {
            return;
        }
        while self.out.len() < WRITE_HIGH_WATER {
            let Some(m) = self.backlog.front() else { break };
            if m.qos != QoS::AtMostOnce && self.conn.send_quota() == 0 {
                return;
            }
            let m = self.backlog.pop_front().unwrap_or_else(|| unreachable!());
            self.send(now, m);
        }
        if !self.backlog.is_empty() {
            return;
        }
        let mut mb = key.mailbox();
        while self.out.len() < WRITE_HIGH_WATER {
            let Some(q) = mb.pop() else { break };
            if q.message.qos != QoS::AtMostOnce && self.conn.send_quota() == 0 {
                mb.unpop(q);
                break;
            }
            let mut message = q.message;
            if let Some(interval) = message.properties.message_expiry_interval() {
                // [MQTT-3.3.2-5]: expired while queued, not sent;
                // [MQTT-3.3.2-6]: otherwise it carries what is left.
                let waited = now.saturating_duration_since(q.at).as_secs();
                if waited >= u64::from(interval) {
                    Stats::add(&self.shared.stats.dropped_expired, 1);
                    continue;
                }
                let left = u32::try_from(u64::from(interval) - waited).unwrap_or(interval);
                message.properties.set_message_expiry_interval(Some(left));
            }
            self.send(now, message);
        }
    }

    fn send(&mut self, now: Instant, message: Message) {
        match self.conn.publish(now, message) {
            Ok(_) => self.drain_transmit(),
            Err(SendError::PacketTooLarge { .. }) => {
                Stats::add(&self.shared.stats.dropped_too_large, 1);
            }
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "message not sent");
                Stats::add(&self.shared.stats.dropped_queue_full, 1);
            }
        }
    }

    /// The connection is over: hand the session back, with the will if the
    /// connection did not end normally.
    fn finish(mut self) {
        let Some(held) = self.held.take() else { return };
        let now = Instant::now();
        let state = self.conn.take_state();
        let max = self.shared.config.limits.max_session_expiry;
        let (expiry, will) = match self.conn.close_reason() {
            // [MQTT-3.1.2-10], [MQTT-3.14.4-3]: a normal DISCONNECT discards
            // the will; 5.0 reason 0x04 asks for it. A 5.0 DISCONNECT may
            // change the Session Expiry Interval (3.14.2.2.2).
            Some(CloseReason::Disconnected {
                reason_code,
                properties,
            }) => (
                properties
                    .session_expiry_interval()
                    .map_or(self.expiry, |e| e.min(max)),
                (*reason_code == ReasonCode::DISCONNECT_WITH_WILL_MESSAGE)
                    .then(|| self.will.take())
                    .flatten(),
            ),
            // A server shutting down is not the client's failure.
            Some(CloseReason::Local(rc)) if *rc == ReasonCode::SERVER_SHUTTING_DOWN => {
                (self.expiry, None)
            }
            _ => (self.expiry, self.will.take()),
        };
        self.shared
            .release(&held.key, held.connection, state, expiry, will, now);
        if self.counted {
            self.shared.stats.client_disconnected();
        }
    }
}

async fn notified(key: Option<&SessionKey>) {
    match key {
        Some(k) => k.0.notify.notified().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Broker, BrokerConfig};
    use petrel_codec::{PacketId, QosPid, TopicName};
    use tokio::io::AsyncWriteExt;

    /// A peer that sends QoS 1 PUBLISHes and never reads its PUBACKs: once
    /// the acknowledgements waiting to be written pass `READ_STOP`, the
    /// connection stops reading, so the peer's writes block rather than the
    /// broker buffering without bound.
    #[tokio::test]
    async fn a_peer_that_does_not_read_is_not_read_either() {
        let broker = Broker::new(BrokerConfig::default());
        let (client, server) = tokio::io::duplex(16 * 1024);
        let (r, w) = tokio::io::split(server);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        tokio::spawn(serve(broker.shared.clone(), r, w, peer));
        let (_client_r, mut client_w) = tokio::io::split(client);
        let mut burst = BytesMut::new();
        let connect = Connect::new(Protocol::V3_1_1, MqttString::from_static("noread"));
        Packet::Connect(Box::new(connect))
            .encode(Protocol::V3_1_1, &mut burst)
            .unwrap();
        // Each 7-byte PUBLISH earns a 4-byte PUBACK: twice READ_STOP of them.
        let count = 2 * READ_STOP / 4;
        for i in 0..count {
            let mut p = Publish::new(TopicName::from_static("t"), bytes::Bytes::new());
            let id = PacketId::new((i % 60_000 + 1) as u16).unwrap();
            p.qos = QosPid::AtLeastOnce(id);
            Packet::Publish(p)
                .encode(Protocol::V3_1_1, &mut burst)
                .unwrap();
        }
        let write = tokio::time::timeout(Duration::from_secs(3), client_w.write_all(&burst)).await;
        assert!(
            write.is_err(),
            "the whole burst was read: nothing held the peer back: {write:?} {:?}",
            broker.stats()
        );
        let received = broker.stats().publish_received;
        assert!(received < count as u64, "{received}");
    }
}
