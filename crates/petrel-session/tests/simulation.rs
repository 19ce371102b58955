//! Deterministic simulation: a client and a server machine over a link that
//! breaks at random points, reconnecting with session resumption, in
//! simulated time. For thousands of seeds, messages flow both ways and the
//! delivery guarantees of each QoS hold, in order, with bounded state.

use std::collections::{BTreeMap, VecDeque};
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use bytes::Bytes;
use petrel_codec::{Connect, Limits, MqttString, Packet, Protocol, QoS, TopicName};
use petrel_session::{Accept, Config, Connection, Event, Message, MessageId, SessionState};

/// xorshift64*: small, seedable, good enough to pick actions.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What one direction of traffic must show at the end.
#[derive(Default)]
struct Ledger {
    /// Message number → QoS, in publish order.
    published: Vec<(u32, QoS)>,
    /// Message numbers in the order the receiver got them (repeats included).
    received: Vec<u32>,
    /// Publisher's message ids → message number, and which completed.
    ids: BTreeMap<MessageId, u32>,
    completed: Vec<u32>,
}

impl Ledger {
    fn check(&self, seed: u64, what: &str) {
        let mut count: BTreeMap<u32, usize> = BTreeMap::new();
        for n in &self.received {
            *count.entry(*n).or_default() += 1;
        }
        for &(n, qos) in &self.published {
            let c = count.get(&n).copied().unwrap_or(0);
            match qos {
                QoS::AtMostOnce => assert!(
                    c <= 1,
                    "seed {seed} {what}: QoS 0 message {n} delivered {c} times"
                ),
                QoS::AtLeastOnce => assert!(c >= 1, "seed {seed} {what}: QoS 1 message {n} lost"),
                QoS::ExactlyOnce => assert_eq!(
                    c, 1,
                    "seed {seed} {what}: QoS 2 message {n} delivered {c} times"
                ),
            }
            if qos != QoS::AtMostOnce {
                assert!(
                    self.completed.contains(&n),
                    "seed {seed} {what}: publisher never saw message {n} acknowledged"
                );
            }
        }
        // [MQTT-4.6.0]: first deliveries keep publish order, per QoS and for
        // QoS 1 and 2 together (the link loses a suffix, never a hole).
        let mut seen = std::collections::BTreeSet::new();
        let firsts: Vec<u32> = self
            .received
            .iter()
            .copied()
            .filter(|n| seen.insert(*n))
            .collect();
        let qos_of: BTreeMap<u32, QoS> = self.published.iter().copied().collect();
        for filter in [|q: QoS| q == QoS::AtMostOnce, |q: QoS| q != QoS::AtMostOnce] {
            let order: Vec<u32> = firsts
                .iter()
                .copied()
                .filter(|n| filter(qos_of[n]))
                .collect();
            assert!(
                order.windows(2).all(|w| w[0] < w[1]),
                "seed {seed} {what}: out of order {order:?}"
            );
        }
    }
}

struct Sim {
    rng: Rng,
    seed: u64,
    now: Instant,
    protocol: Protocol,
    client: Connection,
    server: Connection,
    /// The broker's copy of the session while no connection holds it.
    server_session: Option<SessionState>,
    c2s: VecDeque<Packet>,
    s2c: VecDeque<Packet>,
    up: Ledger,
    down: Ledger,
    next_up: u32,
    next_down: u32,
    config: Config,
    /// A session exists once the first CONNECT was accepted; before that the
    /// broker has nowhere to queue a message.
    session_exists: bool,
    /// How often the link broke, and how many retransmissions crossed it.
    breaks: u64,
    resent: u64,
}

const MESSAGES: u32 = 40;

fn payload(n: u32) -> Bytes {
    Bytes::copy_from_slice(&n.to_be_bytes())
}

fn number(p: &[u8]) -> u32 {
    u32::from_be_bytes(p.try_into().expect("four-byte payload"))
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let protocol = if rng.chance(50) {
            Protocol::V5
        } else {
            Protocol::V3_1_1
        };
        let config = random_config(&mut rng);
        let now = Instant::now();
        let client = Connection::client(
            config.clone(),
            connect(protocol, true),
            SessionState::new(),
            now,
        )
        .unwrap();
        let server = Connection::server(server_config(&mut rng, protocol), now);
        Self {
            rng,
            seed,
            now,
            protocol,
            client,
            server,
            server_session: Some(SessionState::new()),
            c2s: VecDeque::new(),
            s2c: VecDeque::new(),
            up: Ledger::default(),
            down: Ledger::default(),
            next_up: 0,
            next_down: 0,
            config,
            session_exists: false,
            breaks: 0,
            resent: 0,
        }
    }

    fn qos(&mut self) -> QoS {
        [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][self.rng.below(3) as usize]
    }

    /// Move what each machine wants to send onto the wire and handle their
    /// events, until neither has anything more (an answer to an event may
    /// queue packets).
    fn settle(&mut self) {
        while self.settle_once() {}
        self.check_bounds();
    }

    fn settle_once(&mut self) -> bool {
        let mut busy = false;
        while let Some(p) = self.client.poll_transmit() {
            busy = true;
            self.c2s.push_back(p);
        }
        while let Some(p) = self.server.poll_transmit() {
            busy = true;
            self.s2c.push_back(p);
        }
        while let Some(e) = self.client.poll_event() {
            busy = true;
            match e {
                Event::Message(p) => self.down.received.push(number(&p.payload)),
                Event::Published { id, .. } => {
                    let n = self.up.ids[&id];
                    self.up.completed.push(n);
                }
                Event::Dropped { .. } => {
                    panic!("seed {}: nothing here is too large or expires", self.seed)
                }
                _ => {}
            }
        }
        while let Some(e) = self.server.poll_event() {
            busy = true;
            match e {
                Event::ConnectRequest(c) => {
                    // The broker resumes the session it kept, unless asked
                    // for a clean start.
                    let kept = self.server_session.take().unwrap_or_default();
                    let (state, present) = if c.clean_start {
                        (SessionState::new(), false)
                    } else {
                        (kept, true)
                    };
                    self.server
                        .accept(
                            self.now,
                            Accept {
                                session_present: present,
                                state,
                                ..Accept::default()
                            },
                        )
                        .unwrap();
                    self.session_exists = true;
                }
                Event::Message(p) => self.up.received.push(number(&p.payload)),
                Event::Published { id, .. } => {
                    let n = self.down.ids[&id];
                    self.down.completed.push(n);
                }
                Event::Closed(_) => {}
                Event::Dropped { .. } => {
                    panic!("seed {}: nothing here is too large or expires", self.seed)
                }
                _ => {}
            }
        }
        busy
    }

    fn check_bounds(&self) {
        // Bounded state, whatever happens.
        // Windows change across connections, so what is in flight is
        // bounded by the largest window any connection had.
        let limit = usize::from(MAX_WINDOW);
        for c in [&self.client, &self.server] {
            assert!(
                c.state().inflight() <= limit,
                "seed {}: in flight beyond the window",
                self.seed
            );
            assert!(
                c.state().incoming() <= limit,
                "seed {}: QoS 2 receive state beyond the peer's window",
                self.seed
            );
        }
        assert!(self.c2s.len() + self.s2c.len() < 8 * limit + 2 * MESSAGES as usize + 16);
    }

    /// One packet crosses the wire, through the codec.
    fn deliver(&mut self, to_server: bool) {
        let (wire, from_protocol) = if to_server {
            (&mut self.c2s, self.client.protocol())
        } else {
            (&mut self.s2c, self.server.protocol())
        };
        let Some(p) = wire.pop_front() else { return };
        let protocol = match &p {
            Packet::Connect(c) => c.protocol,
            _ => from_protocol,
        };
        let bytes = p
            .to_bytes(protocol)
            .expect("machines emit encodable packets");
        let mut buf = bytes::BytesMut::from(&bytes[..]);
        let p = Packet::decode(&mut buf, Some(protocol), &Limits::default())
            .unwrap()
            .unwrap();
        if std::env::var("SIM_TRACE").is_ok() {
            eprintln!("{} {:?}", if to_server { "->" } else { "<-" }, p);
        }
        if matches!(&p, Packet::Publish(p) if p.dup) {
            self.resent += 1;
        }
        let target = if to_server {
            &mut self.server
        } else {
            &mut self.client
        };
        if let Err(e) = target.handle_packet(self.now, p) {
            panic!("seed {}: a conforming peer was refused: {e}", self.seed);
        }
    }

    /// The network connection breaks: everything on the wire is lost; both
    /// sides keep their session and reconnect.
    fn break_link(&mut self) {
        self.breaks += 1;
        if std::env::var("SIM_TRACE").is_ok() {
            eprintln!("---- break");
        }
        self.c2s.clear();
        self.s2c.clear();
        let mut client_state = self.client.take_state();
        if self.rng.chance(20) {
            // Sometimes the client's session goes through storage.
            client_state = stored(client_state, self.now);
        }
        if self.server.is_connected()
            || self.server.is_awaiting_accept()
            || self.server_session.is_none()
        {
            let s = self.server.take_state();
            if self.server.is_connected() || self.server_session.is_none() {
                // Sometimes the broker's copy goes through storage too.
                let s = if self.rng.chance(20) {
                    stored(s, self.now)
                } else {
                    s
                };
                self.server_session = Some(s);
            }
        }
        self.client = Connection::client(
            self.config.clone(),
            connect(self.protocol, false),
            client_state,
            self.now,
        )
        .unwrap();
        // Each side may come back with other limits: a smaller window must
        // hold back resends, not break the session.
        self.config = random_config(&mut self.rng);
        let server_config = server_config(&mut self.rng, self.protocol);
        self.server = Connection::server(server_config, self.now);
    }

    fn step(&mut self, allow_breaks: bool) {
        match self.rng.below(100) {
            0..=14 if self.next_up >= MESSAGES => {}
            15..=29 if self.next_down >= MESSAGES => {}
            0..=14 => {
                let qos = self.qos();
                let n = self.next_up;
                let m = Message::new(TopicName::from_static("up/x"), payload(n), qos);
                if let Ok(id) = self.client.publish(self.now, m) {
                    self.up.published.push((n, qos));
                    self.up.ids.insert(id, n);
                    self.next_up += 1;
                }
            }
            15..=29 => {
                let qos = self.qos();
                let n = self.next_down;
                let m = Message::new(TopicName::from_static("down/y"), payload(n), qos);
                // Connected or not, the broker queues the message in the session.
                let r = if self.server.is_connected() {
                    self.server.publish(self.now, m)
                } else if let Some(s) = self.server_session.as_mut().filter(|_| self.session_exists)
                {
                    s.enqueue(self.now, m, 1000)
                } else {
                    return;
                };
                if let Ok(id) = r {
                    self.down.published.push((n, qos));
                    self.down.ids.insert(id, n);
                    self.next_down += 1;
                }
            }
            30..=62 => self.deliver(true),
            63..=95 => self.deliver(false),
            96..=97 => {
                self.now += Duration::from_millis(self.rng.below(2000));
                self.client.handle_timeout(self.now);
                self.server.handle_timeout(self.now);
            }
            _ if allow_breaks => self.break_link(),
            _ => {}
        }
        self.settle();
        if self.client.is_closed() && allow_breaks {
            self.break_link();
            self.settle();
        }
    }

    fn run(mut self) -> (u64, u64) {
        self.settle();
        for _ in 0..3000 {
            self.step(true);
        }
        // Publish what is left, then a quiet link until everything settles.
        while self.next_up < MESSAGES || self.next_down < MESSAGES {
            self.step(false);
        }
        if self.client.is_closed()
            || !self.client.is_connected() && self.c2s.is_empty() && self.s2c.is_empty()
        {
            self.break_link();
            self.settle();
        }
        for _ in 0..20_000 {
            if self.c2s.is_empty() && self.s2c.is_empty() {
                break;
            }
            let to_server = !self.c2s.is_empty() && (self.s2c.is_empty() || self.rng.chance(50));
            self.deliver(to_server);
            self.settle();
        }
        assert!(
            self.c2s.is_empty() && self.s2c.is_empty(),
            "seed {}: no quiescence",
            self.seed
        );
        assert!(
            self.client.is_connected(),
            "seed {}: not connected at the end: client {:?} server {:?}",
            self.seed,
            self.client.close_reason(),
            self.server.close_reason()
        );
        self.up.check(self.seed, "client to server");
        self.down.check(self.seed, "server to client");
        assert!(
            self.client.state().is_empty(),
            "seed {}: client state left {:?}",
            self.seed,
            self.client.state()
        );
        assert!(
            self.server.state().is_empty(),
            "seed {}: server state left",
            self.seed
        );
        (self.breaks, self.resent)
    }
}

/// A session written to storage (JSON) and read back.
fn stored(state: SessionState, now: Instant) -> SessionState {
    let json = serde_json::to_vec(&state.snapshot(now)).expect("serialise");
    let snapshot: petrel_session::Snapshot = serde_json::from_slice(&json).expect("deserialise");
    snapshot.restore(now).expect("restore")
}

/// Limits drawn for one connection of one side.
const MAX_WINDOW: u16 = 8;

/// A server's limits: a 3.1.x client can't be told the Receive Maximum it
/// is held to (QoS 2 awaiting PUBREL), so the server's covers every window
/// a client here may use, as an operator's must cover its clients'.
fn server_config(rng: &mut Rng, protocol: Protocol) -> Config {
    let mut c = random_config(rng);
    if !protocol.is_v5() {
        c.receive_maximum = c.receive_maximum.max(NonZeroU16::new(MAX_WINDOW).unwrap());
    }
    c
}

fn random_config(rng: &mut Rng) -> Config {
    Config {
        receive_maximum: NonZeroU16::new(1 + rng.below(6) as u16).unwrap(),
        max_inflight: NonZeroU16::new(1 + rng.below(u64::from(MAX_WINDOW)) as u16).unwrap(),
        max_pending: 1000,
        topic_alias_maximum: rng.below(4) as u16,
        ..Config::default()
    }
}

fn connect(protocol: Protocol, clean_start: bool) -> Connect {
    let mut c = Connect::new(protocol, MqttString::from_static("sim"));
    c.clean_start = clean_start;
    c.keep_alive = 60;
    if protocol.is_v5() {
        c.properties.set_session_expiry_interval(Some(u32::MAX));
    }
    c
}

#[test]
fn delivery_guarantees_hold_over_a_breaking_link() {
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    let (mut breaks, mut resent) = (0, 0);
    for seed in 0..seeds {
        let (b, r) = Sim::new(seed).run();
        breaks += b;
        resent += r;
    }
    // The link really broke, and messages really were resent.
    assert!(breaks > seeds * 10, "only {breaks} breaks in {seeds} runs");
    assert!(
        resent > seeds,
        "only {resent} retransmissions in {seeds} runs"
    );
    eprintln!("{seeds} seeds: {breaks} broken connections, {resent} retransmitted PUBLISH packets");
}
