//! Shared test harness: a client and a server machine and the wire between them.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use petrel_codec::{Connect, MqttString, Packet, Protocol, QoS, TopicName};
use petrel_session::{Accept, Config, Connection, Event, Message, ProtocolError, SessionState};

pub(crate) struct Pair {
    pub(crate) now: Instant,
    pub(crate) client: Connection,
    pub(crate) server: Connection,
    pub(crate) client_events: Vec<Event>,
    pub(crate) server_events: Vec<Event>,
    /// Every packet that crossed, in order, with its direction.
    pub(crate) log: Vec<(Dir, Packet)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dir {
    ToServer,
    ToClient,
}

pub(crate) fn connect(protocol: Protocol, id: &str) -> Connect {
    let mut c = Connect::new(protocol, MqttString::try_from(id).unwrap());
    c.keep_alive = 30;
    c
}

pub(crate) fn msg(topic: &str, payload: &str, qos: QoS) -> Message {
    Message::new(
        TopicName::try_from(topic).unwrap(),
        Bytes::copy_from_slice(payload.as_bytes()),
        qos,
    )
}

impl Pair {
    /// A connected pair: CONNECT, accept, CONNACK.
    pub(crate) fn connected(protocol: Protocol) -> Self {
        Self::connected_with(protocol, Config::default(), Config::default(), |_| {})
    }

    pub(crate) fn connected_with(
        protocol: Protocol,
        client_cfg: Config,
        server_cfg: Config,
        edit: impl FnOnce(&mut Connect),
    ) -> Self {
        let mut pair = Self::opened(protocol, client_cfg, server_cfg, edit, |_, _| {});
        assert!(
            matches!(pair.client_events.pop(), Some(Event::Connected { .. })),
            "{:?}",
            pair.client_events
        );
        pair.log.clear();
        pair
    }

    /// A pair through CONNECT, accept and CONNACK, `edit` shaping the
    /// CONNECT and `before_connack` acting on the client once its CONNECT
    /// is queued and before anything crosses. Its log and events keep all
    /// that happened, CONNECT, CONNACK and the client's `Connected`
    /// included.
    pub(crate) fn opened(
        protocol: Protocol,
        client_cfg: Config,
        server_cfg: Config,
        edit: impl FnOnce(&mut Connect),
        before_connack: impl FnOnce(&mut Connection, Instant),
    ) -> Self {
        let now = Instant::now();
        let mut c = connect(protocol, "client-1");
        edit(&mut c);
        let mut client = Connection::client(client_cfg, c, SessionState::new(), now).unwrap();
        before_connack(&mut client, now);
        let mut pair = Self {
            now,
            client,
            server: Connection::server(server_cfg, now),
            client_events: Vec::new(),
            server_events: Vec::new(),
            log: Vec::new(),
        };
        pair.run();
        assert!(matches!(
            pair.server_events.pop(),
            Some(Event::ConnectRequest(_))
        ));
        pair.server.accept(now, Accept::default()).unwrap();
        pair.run();
        pair
    }

    /// Ferry packets both ways until both machines are quiet. A protocol
    /// error either side raises fails the test: a flow that expects one
    /// uses [`Pair::run_expecting_errors`].
    pub(crate) fn run(&mut self) {
        let errors = self.run_expecting_errors();
        assert!(errors.is_empty(), "protocol errors mid-run: {errors:?}");
    }

    /// [`Pair::run`], returning the protocol errors raised (by the side the
    /// packet went to) instead of failing on them.
    pub(crate) fn run_expecting_errors(&mut self) -> Vec<(Dir, ProtocolError)> {
        let mut errors = Vec::new();
        loop {
            let mut moved = false;
            while let Some(p) = self.client.poll_transmit() {
                moved = true;
                self.log.push((Dir::ToServer, p.clone()));
                if let Err(e) = self
                    .server
                    .handle_packet(self.now, reencode(p, &self.client))
                {
                    errors.push((Dir::ToServer, e));
                }
            }
            while let Some(p) = self.server.poll_transmit() {
                moved = true;
                self.log.push((Dir::ToClient, p.clone()));
                if let Err(e) = self
                    .client
                    .handle_packet(self.now, reencode(p, &self.server))
                {
                    errors.push((Dir::ToClient, e));
                }
            }
            while let Some(e) = self.client.poll_event() {
                self.client_events.push(e);
            }
            while let Some(e) = self.server.poll_event() {
                self.server_events.push(e);
            }
            if !moved {
                return errors;
            }
        }
    }

    pub(crate) fn advance(&mut self, d: Duration) {
        self.now += d;
        self.client.handle_timeout(self.now);
        self.server.handle_timeout(self.now);
        self.run();
    }

    pub(crate) fn sent(&self, dir: Dir) -> Vec<&Packet> {
        self.log
            .iter()
            .filter(|(d, _)| *d == dir)
            .map(|(_, p)| p)
            .collect()
    }
}

/// A new connection resuming both sides' sessions: the client's CONNECT
/// (Clean Start 0) reaches the server, which accepts with Session Present.
/// The CONNACK is left in the server's transmit queue.
pub(crate) fn resume(
    now: Instant,
    protocol: Protocol,
    client_state: SessionState,
    server_state: SessionState,
    server_config: Config,
) -> (Connection, Connection) {
    let mut c = connect(protocol, "client-1");
    c.clean_start = false;
    let mut client = Connection::client(Config::default(), c, client_state, now).unwrap();
    let mut server = Connection::server(server_config, now);
    server
        .handle_packet(now, client.poll_transmit().unwrap())
        .unwrap();
    assert!(matches!(
        server.poll_event(),
        Some(Event::ConnectRequest(_))
    ));
    let accept = Accept {
        session_present: true,
        state: server_state,
        ..Accept::default()
    };
    server.accept(now, accept).unwrap();
    (client, server)
}

/// Every packet goes through the codec, as on a real connection.
pub(crate) fn reencode(p: Packet, from: &Connection) -> Packet {
    let protocol = match &p {
        Packet::Connect(c) => c.protocol,
        _ => from.protocol(),
    };
    let bytes = p
        .to_bytes(protocol)
        .expect("the machine only emits encodable packets");
    let mut buf = bytes::BytesMut::from(&bytes[..]);
    Packet::decode(&mut buf, Some(protocol), &petrel_codec::Limits::default())
        .expect("what we send decodes")
        .expect("whole packet")
}
