//! `petrel bench`: a load generator that speaks MQTT through `petrel-codec`
//! over loopback, bounded in time, reporting delivered messages per second.
//!
//! Scenarios, each bounded in time and count, over loopback:
//! * `pairs`: N publishers, each with its own subscriber on its own topic;
//! * `fanout`: one publisher, M subscribers on one topic;
//! * `fanin`: N publishers on distinct topics, one subscriber on a wildcard;
//! * `qos1`: `pairs` at QoS 1 both ways;
//! * `latency`: one publisher and one subscriber at `--rate` messages per
//!   second, evenly spaced (to within the system's timer slack, about
//!   50 µs), QoS 1: p50, p99 and p99.9 end-to-end latency;
//! * `conns`: `--count` idle connections, each subscribed to its own topic:
//!   connections accepted per second (with `--transport tls`, TLS
//!   handshakes) and, with `--broker-pid`, the broker's memory per
//!   connection (from its RSS), measured again after the idle period to
//!   show it does not grow;
//! * `retained`: store `--count` retained messages on distinct topics, then
//!   time a new subscriber to all of them receiving every one.
//!
//! Publishers write pre-encoded batches as fast as the broker delivers them:
//! each group of publishers and subscribers keeps at most `--window`
//! messages per publisher between sending and arrival, so a broker is never
//! asked to buffer (or drop) what it can't deliver; at QoS 1 PUBACKs also
//! bound what is unacknowledged. Subscribers count what arrives
//! (acknowledging QoS 1). Only whole seconds after a warm-up second are
//! measured.
//!
//! Every scenario runs over TCP, or over the transport `--transport` names
//! (tls, ws, wss, quic, unix), opened by `petrel-client`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use petrel_codec::{
    Connect, Limits, MqttString, Packet, PacketId, Protocol, PubAck, Publish, QoS, QosPid,
    Subscribe, Subscription, SubscriptionOptions, TopicFilter, TopicName,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};

/// The scenario to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Scenario {
    /// N publishers, each with its own subscriber on its own topic.
    Pairs,
    /// One publisher, M subscribers on one topic.
    Fanout,
    /// N publishers, one subscriber on a wildcard filter.
    Fanin,
    /// Pairs at QoS 1 both ways.
    Qos1,
    /// End-to-end latency at a fixed rate, QoS 1.
    Latency,
    /// Idle subscribed connections: rate and memory.
    Conns,
    /// A new subscriber receiving many retained messages.
    Retained,
    /// Many devices (`--count`), each publishing one message at a time at a
    /// fixed rate (`--rate` in all), no batching, to `-n` subscribers on a
    /// wildcard filter: the broker's CPU per delivered message and the
    /// latency, at that load (`--broker-pid` for the CPU).
    Fleet,
}

/// `petrel bench` options.
#[derive(clap::Args, Debug)]
pub(crate) struct BenchArgs {
    /// Scenario.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Broker host.
    #[arg(long = "host", default_value = "127.0.0.1")]
    host: String,
    /// Broker port.
    #[arg(short = 'p', long = "port", default_value_t = 1883)]
    port: u16,
    /// Subscribers connect to this port instead (pairs, qos1, fanout,
    /// fanin, fleet): another node of a cluster, so that every message
    /// crosses from one node to another.
    #[arg(long = "sub-port")]
    sub_port: Option<u16>,
    /// Publishers (pairs, fanin) or subscribers (fanout).
    #[arg(short = 'n', long = "clients", default_value_t = 10)]
    clients: usize,
    /// Seconds measured (after one second of warm-up), at most a day.
    #[arg(short = 's', long = "seconds", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    seconds: u64,
    /// Payload size in bytes.
    #[arg(long = "size", default_value_t = 64)]
    size: usize,
    /// QoS of publishes and subscriptions (0 or 1).
    #[arg(short = 'q', long = "qos", default_value_t = 0)]
    qos: u8,
    /// Messages per publisher sent but not yet delivered (and, at QoS 1,
    /// not yet acknowledged).
    #[arg(long = "window", default_value_t = 64)]
    window: usize,
    /// Protocol version: 311 or 5.
    #[arg(short = 'V', long = "protocol", default_value = "311")]
    protocol: String,
    /// Messages per second (latency; fleet: all devices together), at
    /// most ten million.
    #[arg(long = "rate", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    rate: u64,
    /// Connections (conns) or retained messages (retained).
    #[arg(long = "count", default_value_t = 10_000)]
    count: usize,
    /// The broker's process id, to read its memory (conns).
    #[arg(long = "broker-pid")]
    broker_pid: Option<u32>,
    /// Print the result as one JSON object.
    #[arg(long = "json")]
    json: bool,
    /// User name every connection presents.
    #[arg(short = 'u', long = "username")]
    username: Option<String>,
    /// Password every connection presents.
    #[arg(short = 'P', long = "password")]
    password: Option<String>,
    /// latency: after the quiet measurement, measure as long again while
    /// this many logins with a wrong password arrive from this machine's
    /// address (50 at a time), and report both.
    #[arg(long = "storm", default_value_t = 0)]
    storm: usize,
    /// How to reach the broker: tcp, tls, ws, wss, quic or unix.
    #[arg(long = "transport", default_value = "tcp")]
    transport: String,
    /// TLS (tls, wss, quic): the CA that signed the broker's certificate.
    #[arg(long = "cafile")]
    cafile: Option<std::path::PathBuf>,
    /// TLS: the name the broker's certificate must carry (default: --host).
    #[arg(long = "server-name")]
    server_name: Option<String>,
    /// Every connection asks for a session that outlives it (3.1.1 clean
    /// session 0, 5.0 a session expiry of 300 s): what a broker with a
    /// durable store keeps there.
    #[arg(long = "persistent")]
    persistent: bool,
    /// WebSocket path.
    #[arg(long = "ws-path", default_value = "/mqtt")]
    ws_path: String,
    /// The broker's Unix socket (--transport unix).
    #[arg(long = "unix")]
    unix: Option<std::path::PathBuf>,
    /// Filled from the above.
    #[arg(skip)]
    via: Option<Arc<petrel_client::ConnectOptions>>,
}

/// One scenario's result: named figures and the generator's own CPU use.
pub(crate) struct Report {
    scenario: &'static str,
    figures: Vec<(&'static str, f64)>,
    /// Percent of one core.
    generator_cpu: Option<f64>,
}

impl Report {
    fn print(&self, args: &BenchArgs) {
        let cpu = self.generator_cpu.unwrap_or(f64::NAN);
        if args.json {
            let mut out = format!(
                "{{\"scenario\":\"{}\",\"protocol\":\"{}\",\"clients\":{},\"size\":{}",
                self.scenario, args.protocol, args.clients, args.size
            );
            for (k, v) in &self.figures {
                out.push_str(&format!(",\"{k}\":{}", json_number(*v)));
            }
            out.push_str(&format!(
                ",\"generator_cpu_percent\":{}}}",
                json_number(cpu)
            ));
            println!("{out}");
        } else {
            let mut out = format!(
                "scenario={} protocol={} clients={} size={}",
                self.scenario, args.protocol, args.clients, args.size
            );
            for (k, v) in &self.figures {
                out.push_str(&format!(" {k}={v:.2}"));
            }
            out.push_str(&format!(" generator_cpu={cpu:.0}%"));
            // The generator has one core per tokio worker; near it, the
            // generator (not the broker) may be what limits the figure.
            let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            if cpu > 90.0 * workers {
                out.push_str(" (generator saturated)");
            }
            println!("{out}");
        }
    }
}

fn json_number(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "null".into()
    }
}

/// PUBLISHes per write.
const BATCH: usize = 64;

pub(crate) fn run(mut args: BenchArgs) -> Result<(), String> {
    args.via = args.transport()?.map(Arc::new);
    if args.sub_port.is_some() && args.via.is_some() {
        return Err("--sub-port is for --transport tcp".into());
    }
    let protocol = match args.protocol.as_str() {
        "311" | "mqttv311" => Protocol::V3_1_1,
        "5" | "mqttv5" => Protocol::V5,
        other => return Err(format!("unknown protocol version {other}: use 311 or 5")),
    };
    let qos = match (args.qos, args.scenario) {
        (_, Scenario::Qos1 | Scenario::Latency) => QoS::AtLeastOnce,
        (0, _) => QoS::AtMostOnce,
        (1, _) => QoS::AtLeastOnce,
        _ => return Err("--qos must be 0 or 1".into()),
    };
    // (--seconds is at least 1 as parsed.)
    if args.clients == 0 {
        return Err("--clients must be at least 1".into());
    }
    // Pinned to one core (as the comparison runs it): one thread, no
    // worker pool, so the generator spends its core on the load.
    let runtime = if std::thread::available_parallelism().map_or(1, |n| n.get()) == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    }
    .map_err(|e| e.to_string())?;
    let report = runtime.block_on(async {
        match args.scenario {
            Scenario::Latency => latency(&args, protocol).await,
            Scenario::Conns => conns(&args, protocol).await,
            Scenario::Retained => retained(&args, protocol).await,
            Scenario::Fleet => fleet(&args, protocol, qos).await,
            _ => bench(&args, protocol, qos).await,
        }
    })?;
    report.print(&args);
    Ok(())
}

struct Shared {
    delivered: AtomicU64,
    stop: AtomicBool,
}

/// A topic (or filter) and the group it belongs to.
type Member = (String, Arc<Group>);

/// Publishers and the subscribers that receive them: sent × copies −
/// received stays under window × publishers × copies.
struct Group {
    sent: AtomicU64,
    received: AtomicU64,
    /// Deliveries each message makes (subscribers per message).
    copies: u64,
    /// Publishers in the group.
    publishers: u64,
    window: u64,
    progress: Notify,
}

impl Group {
    fn new(copies: usize, publishers: usize, window: usize) -> Arc<Self> {
        Arc::new(Self {
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            copies: copies as u64,
            publishers: publishers as u64,
            window: window as u64,
            progress: Notify::new(),
        })
    }

    /// How many more messages one publisher may send now.
    fn room(&self) -> u64 {
        let outstanding = (self.sent.load(Ordering::Relaxed) * self.copies)
            .saturating_sub(self.received.load(Ordering::Relaxed))
            / self.copies;
        (self.window * self.publishers).saturating_sub(outstanding) / self.publishers
    }

    /// Wait until half the window is free (so publishers write in batches,
    /// not one message per wake-up), and return the room.
    async fn wait_for_room(&self, shared: &Shared) -> u64 {
        let enough = (self.window / 2).max(1);
        loop {
            let progress = self.progress.notified();
            let room = self.room();
            if room >= enough || shared.stop.load(Ordering::Relaxed) {
                return room;
            }
            // A lost count (a subscriber gone) must not hang the run.
            let _ = tokio::time::timeout(Duration::from_millis(100), progress).await;
        }
    }

    fn received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
        self.progress.notify_waiters();
    }
}

async fn address(args: &BenchArgs) -> Result<SocketAddr, String> {
    address_of(args, args.port).await
}

async fn address_of(args: &BenchArgs, port: u16) -> Result<SocketAddr, String> {
    tokio::net::lookup_host((args.host.as_str(), port))
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| "no address".to_string())
}

/// Where subscribers connect: `--sub-port`, else the publishers' address.
async fn subscriber_address(
    args: &BenchArgs,
    publishers: SocketAddr,
) -> Result<SocketAddr, String> {
    match args.sub_port {
        Some(p) => address_of(args, p).await,
        None => Ok(publishers),
    }
}

async fn bench(args: &BenchArgs, protocol: Protocol, qos: QoS) -> Result<Report, String> {
    let addr = address(args).await?;
    let sub_addr = subscriber_address(args, addr).await?;
    let shared = Arc::new(Shared {
        delivered: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let run = std::process::id();
    let window = args.window.max(1);
    // (topic, group) per publisher and (filter, group) per subscriber.
    let (publishers, subscribers): (Vec<Member>, Vec<Member>) = match args.scenario {
        Scenario::Pairs
        | Scenario::Qos1
        | Scenario::Latency
        | Scenario::Conns
        | Scenario::Fleet
        | Scenario::Retained => (0..args.clients)
            .map(|i| {
                let g = Group::new(1, 1, window);
                let t = format!("bench/{run}/{i}");
                ((t.clone(), g.clone()), (t, g))
            })
            .unzip(),
        Scenario::Fanout => {
            let g = Group::new(args.clients, 1, window);
            let t = format!("bench/{run}/all");
            (
                vec![(t.clone(), g.clone())],
                (0..args.clients).map(|_| (t.clone(), g.clone())).collect(),
            )
        }
        Scenario::Fanin => {
            let g = Group::new(1, args.clients, window);
            (
                (0..args.clients)
                    .map(|i| (format!("bench/{run}/{i}"), g.clone()))
                    .collect(),
                vec![(format!("bench/{run}/+"), g)],
            )
        }
    };
    let mut tasks = Vec::new();
    for (i, (filter, group)) in subscribers.iter().enumerate() {
        let conn = connect(sub_addr, protocol, &format!("bs-{run}-{i}"), &args.login()).await?;
        tasks.push(tokio::spawn(subscriber(
            conn,
            protocol,
            filter.clone(),
            qos,
            group.clone(),
            shared.clone(),
        )));
    }
    // Every subscription is acknowledged before anyone publishes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let payload = Bytes::from(vec![b'x'; args.size]);
    for (i, (topic, group)) in publishers.iter().enumerate() {
        let conn = connect(addr, protocol, &format!("bp-{run}-{i}"), &args.login()).await?;
        let topic = TopicName::try_from(topic.as_str()).map_err(|e| e.to_string())?;
        tasks.push(tokio::spawn(publisher(
            conn,
            protocol,
            topic,
            payload.clone(),
            qos,
            window,
            group.clone(),
            shared.clone(),
        )));
    }
    let cpu_start = cpu_seconds();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = (Instant::now(), shared.delivered.load(Ordering::Relaxed));
    let mut per_second = Vec::new();
    let mut last = start;
    for _ in 0..args.seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = (Instant::now(), shared.delivered.load(Ordering::Relaxed));
        let rate = (now.1 - last.1) as f64 / now.0.duration_since(last.0).as_secs_f64();
        eprintln!("  {:>12.0} msg/s", rate);
        per_second.push(rate);
        last = now;
    }
    let total = (last.1 - start.1) as f64 / last.0.duration_since(start.0).as_secs_f64();
    let cpu = cpu_seconds().zip(cpu_start).map(|(b, a)| b - a);
    shared.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    let elapsed = 1.0 + args.seconds as f64;
    Ok(Report {
        scenario: match args.scenario {
            Scenario::Fanout => "fanout",
            Scenario::Fanin => "fanin",
            Scenario::Qos1 => "qos1",
            _ => "pairs",
        },
        figures: vec![("qos", qos as u8 as f64), ("delivered_per_s", total)],
        generator_cpu: cpu.map(|c| 100.0 * c / elapsed),
    })
}

/// This process's user + system CPU seconds (Linux /proc).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// A connection's reading half, whatever the transport.
type Reader = Box<dyn AsyncRead + Unpin + Send>;
/// Its writing half.
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

struct Conn {
    read: Reader,
    write: Writer,
    buf: BytesMut,
    /// The broker's Receive Maximum (5.0 CONNACK; 65,535 if it set none).
    receive_maximum: u16,
}

/// How every connection of a run is made: the user name and password it
/// presents, and the transport (plain TCP to the address when none).
#[derive(Clone, Debug, Default)]
struct Login {
    username: Option<String>,
    password: Option<String>,
    via: Option<Arc<petrel_client::ConnectOptions>>,
    persistent: bool,
}

impl BenchArgs {
    fn login(&self) -> Login {
        Login {
            username: self.username.clone(),
            password: self.password.clone(),
            via: self.via.clone(),
            persistent: self.persistent,
        }
    }

    /// The transport options `--transport` and its companions describe.
    fn transport(&self) -> Result<Option<petrel_client::ConnectOptions>, String> {
        use petrel_client::{ConnectOptions, TlsOptions, Transport};
        let (transport, tls) = match self.transport.as_str() {
            "tcp" => return Ok(None),
            "tls" => (Transport::Tcp, true),
            "ws" => (
                Transport::WebSocket {
                    path: self.ws_path.clone(),
                },
                false,
            ),
            "wss" => (
                Transport::WebSocket {
                    path: self.ws_path.clone(),
                },
                true,
            ),
            "quic" => (Transport::Quic, true),
            "unix" => {
                let path = self
                    .unix
                    .clone()
                    .ok_or("--transport unix needs --unix PATH")?;
                (Transport::Unix { path }, false)
            }
            other => {
                return Err(format!(
                    "--transport {other}: tcp, tls, ws, wss, quic or unix"
                ))
            }
        };
        let mut o = ConnectOptions::new(self.host.clone(), self.port, "bench");
        o.transport = transport;
        if tls {
            o.tls = Some(TlsOptions {
                ca_file: self.cafile.clone(),
                server_name: self.server_name.clone(),
                ..TlsOptions::default()
            });
        }
        Ok(Some(o))
    }
}

/// A CONNECT with `login`'s credentials.
fn connect_packet(protocol: Protocol, id: &str, login: &Login) -> Result<Connect, String> {
    let mut c = Connect::new(
        protocol,
        MqttString::try_from(id).map_err(|e| e.to_string())?,
    );
    c.keep_alive = 60;
    c.username = login
        .username
        .as_deref()
        .map(MqttString::try_from)
        .transpose()
        .map_err(|e| e.to_string())?;
    c.password = login.password.clone().map(Bytes::from);
    if login.persistent {
        c.clean_start = false;
        if protocol.is_v5() {
            c.properties.set_session_expiry_interval(Some(300));
        }
    }
    Ok(c)
}

async fn connect(
    addr: SocketAddr,
    protocol: Protocol,
    id: &str,
    login: &Login,
) -> Result<Conn, String> {
    let (read, mut write): (Reader, Writer) = match &login.via {
        None => {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
            let _ = stream.set_nodelay(true);
            let (read, write) = stream.into_split();
            (Box::new(read), Box::new(write))
        }
        Some(options) => {
            let stream = petrel_client::open_stream(options)
                .await
                .map_err(|e| format!("cannot connect: {e}"))?;
            let (read, write) = tokio::io::split(stream);
            (Box::new(read), Box::new(write))
        }
    };
    let c = connect_packet(protocol, id, login)?;
    let mut out = BytesMut::new();
    Packet::Connect(Box::new(c))
        .encode(protocol, &mut out)
        .map_err(|e| e.to_string())?;
    send_all(&mut write, &out)
        .await
        .map_err(|e| e.to_string())?;
    let mut conn = Conn {
        read,
        write,
        buf: BytesMut::with_capacity(64 * 1024),
        receive_maximum: u16::MAX,
    };
    match conn.next(protocol).await {
        Some(Packet::ConnAck(a)) if !a.reason_code.is_error() => {
            conn.receive_maximum = a.properties.receive_maximum().map_or(u16::MAX, |m| m.get());
            Ok(conn)
        }
        other => Err(format!("connection refused: {other:?}")),
    }
}

/// Write all of `bytes` and flush: a TLS or WebSocket client may hold
/// what it was given until flushed (TCP sends it at once either way).
async fn send_all(w: &mut Writer, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

impl Conn {
    async fn next(&mut self, protocol: Protocol) -> Option<Packet> {
        next_packet(&mut self.read, &mut self.buf, protocol).await
    }
}

async fn next_packet(read: &mut Reader, buf: &mut BytesMut, protocol: Protocol) -> Option<Packet> {
    let limits = Limits {
        max_packet_size: 256 * 1024 * 1024,
        ..Limits::default()
    };
    loop {
        match Packet::decode(buf, Some(protocol), &limits) {
            Ok(Some(p)) => return Some(p),
            Ok(None) => {}
            Err(_) => return None,
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        match read.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn subscriber(
    mut c: Conn,
    protocol: Protocol,
    filter: String,
    qos: QoS,
    group: Arc<Group>,
    shared: Arc<Shared>,
) {
    if subscribe_and_wait(&mut c, protocol, &filter, qos)
        .await
        .is_err()
    {
        return;
    }
    let mut out = BytesMut::new();
    let mut count = 0u64;
    while let Some(p) = c.next(protocol).await {
        if let Packet::Publish(p) = p {
            count += 1;
            if let QosPid::AtLeastOnce(id) = p.qos {
                let _ = Packet::PubAck(PubAck::new(id)).encode(protocol, &mut out);
            }
        }
        // Flush acknowledgements and the tally once the read buffer is drained.
        if c.buf.is_empty() {
            shared.delivered.fetch_add(count, Ordering::Relaxed);
            group.received(count);
            count = 0;
            if !out.is_empty() {
                if send_all(&mut c.write, &out).await.is_err() {
                    return;
                }
                out.clear();
            }
        }
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn publisher(
    c: Conn,
    protocol: Protocol,
    topic: TopicName,
    payload: Bytes,
    qos: QoS,
    window: usize,
    group: Arc<Group>,
    shared: Arc<Shared>,
) {
    let Conn {
        mut read,
        mut write,
        mut buf,
        ..
    } = c;
    // At QoS 1 a semaphore holds the window; PUBACKs give permits back.
    let window = Arc::new(Semaphore::new(window));
    if qos == QoS::AtLeastOnce {
        let acks = window.clone();
        let stop = shared.clone();
        tokio::spawn(async move {
            while let Some(p) = next_packet(&mut read, &mut buf, protocol).await {
                if matches!(p, Packet::PubAck(_)) {
                    acks.add_permits(1);
                }
                if stop.stop.load(Ordering::Relaxed) {
                    return;
                }
            }
        });
    }
    let mut pid: u16 = 0;
    let mut out = BytesMut::with_capacity(BATCH * (payload.len() + 32));
    while !shared.stop.load(Ordering::Relaxed) {
        out.clear();
        let room = group.wait_for_room(&shared).await.min(BATCH as u64) as usize;
        if room == 0 {
            return;
        }
        let n = if qos == QoS::AtLeastOnce {
            let Ok(permits) = window.acquire_many(1).await else {
                return;
            };
            permits.forget();
            // Take whatever more the window allows, up to a batch.
            let extra = window.available_permits().min(room - 1);
            if extra > 0 {
                if let Ok(p) = window.try_acquire_many(extra as u32) {
                    p.forget();
                }
            }
            1 + extra
        } else {
            room
        };
        group.sent.fetch_add(n as u64, Ordering::Relaxed);
        for _ in 0..n {
            let mut p = Publish::new(topic.clone(), payload.clone());
            if qos == QoS::AtLeastOnce {
                pid = pid % u16::MAX + 1;
                let Some(id) = PacketId::new(pid) else { return };
                p.qos = QosPid::AtLeastOnce(id);
            }
            if p.encode(protocol, &mut out).is_err() {
                return;
            }
        }
        if send_all(&mut write, &out).await.is_err() {
            return;
        }
    }
}

/// The resident memory of a process, in bytes (Linux /proc).
/// A process's user + system CPU seconds (Linux /proc).
fn cpu_seconds_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The fleet: `--count` devices, each on a connection of its own sending
/// one message at a time (QoS 1: waiting for its PUBACK) on
/// `bench/RUN/fleet/D/data`, evenly spread so that all together send
/// `--rate` a second; `-n` subscribers on `bench/RUN/fleet/+/data` each
/// receive every message. After a second of warm-up, `--seconds` are
/// measured: messages sent then, their deliveries and latency (send to
/// receipt), and the broker's CPU over the same time.
async fn fleet(args: &BenchArgs, protocol: Protocol, qos: QoS) -> Result<Report, String> {
    let addr = address(args).await?;
    let sub_addr = subscriber_address(args, addr).await?;
    let run = std::process::id();
    let epoch = Instant::now();
    let devices = args.count.max(1);
    // (At least 1, as parsed.)
    let rate = args.rate;
    let filter = format!("bench/{run}/fleet/+/data");
    let mut subs = Vec::new();
    for s in 0..args.clients {
        let mut c = connect(sub_addr, protocol, &format!("bf-s{s}-{run}"), &args.login()).await?;
        subscribe_and_wait(&mut c, protocol, &filter, qos).await?;
        subs.push(c);
    }
    let mut devs = Vec::with_capacity(devices);
    for d in 0..devices {
        devs.push(connect(addr, protocol, &format!("bf-d{d}-{run}"), &args.login()).await?);
    }
    eprintln!(
        "  {devices} devices and {} subscribers connected",
        args.clients
    );
    let size = args.size.max(8);
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let from = start + Duration::from_secs(1);
    let end = from + Duration::from_secs(args.seconds);
    // Message k (of them all) is sent at start + k / rate by device
    // k mod devices: each device every devices / rate seconds, the fleet
    // evenly spread ([`pace`] says when).
    let total = rate * (1 + args.seconds);
    // A device's turns are counted, not merely flagged: one that is late
    // (waiting for a PUBACK, or not scheduled in time) sends the turns it
    // missed at once, as a device catching up would, and none is lost.
    let turns: Vec<Arc<tokio::sync::Semaphore>> = (0..devices)
        .map(|_| Arc::new(tokio::sync::Semaphore::new(0)))
        .collect();
    let nanos = |t: tokio::time::Instant| {
        t.duration_since(tokio::time::Instant::from_std(epoch))
            .as_nanos() as u64
    };
    let (from_ns, end_ns) = (nanos(from), nanos(end));
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (d, conn) in devs.into_iter().enumerate() {
        let topic = TopicName::try_from(format!("bench/{run}/fleet/{d}/data").as_str())
            .map_err(|e| e.to_string())?;
        // Its turns: d, d + devices, ... below total.
        let mine = (total + (devices - 1 - d) as u64) / devices as u64;
        let turn = turns[d].clone();
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let Conn {
                mut read,
                mut write,
                mut buf,
                ..
            } = conn;
            let mut out = BytesMut::new();
            let mut id: u16 = 0;
            for _ in 0..mine {
                match turn.acquire().await {
                    Ok(permit) => permit.forget(),
                    Err(_) => return,
                }
                let mut payload = vec![b'x'; size];
                let at = epoch.elapsed().as_nanos() as u64;
                payload[..8].copy_from_slice(&at.to_be_bytes());
                let mut p = Publish::new(topic.clone(), Bytes::from(payload));
                if qos == QoS::AtLeastOnce {
                    id = id % 65_535 + 1;
                    let Some(pid) = PacketId::new(id) else { return };
                    p.qos = QosPid::AtLeastOnce(pid);
                }
                out.clear();
                if p.encode(protocol, &mut out).is_err()
                    || send_all(&mut write, &out).await.is_err()
                {
                    return;
                }
                if at >= from_ns && at < end_ns {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                if qos == QoS::AtLeastOnce {
                    // One at a time: the next waits for this one's PUBACK.
                    loop {
                        match next_packet(&mut read, &mut buf, protocol).await {
                            Some(Packet::PubAck(_)) => break,
                            Some(_) => {}
                            None => return,
                        }
                    }
                }
            }
            // Stay connected while the others finish.
            tokio::time::sleep_until(end + Duration::from_secs(3)).await;
        }));
    }
    pace(start.into_std(), rate, total, move |k| {
        turns[(k % devices as u64) as usize].add_permits(1);
        true
    });
    let mut readers = Vec::new();
    for mut c in subs {
        readers.push(tokio::spawn(async move {
            let mut samples: Vec<u64> = Vec::new();
            let mut acks = BytesMut::new();
            let quiet = end + Duration::from_secs(2);
            while let Ok(Some(p)) = tokio::time::timeout_at(quiet, c.next(protocol)).await {
                if let Packet::Publish(p) = p {
                    let now = epoch.elapsed().as_nanos() as u64;
                    if p.payload.len() >= 8 {
                        let at = u64::from_be_bytes(p.payload[..8].try_into().unwrap_or([0; 8]));
                        if at >= from_ns && at < end_ns {
                            samples.push(now.saturating_sub(at));
                        }
                    }
                    if let QosPid::AtLeastOnce(id) = p.qos {
                        let _ = Packet::PubAck(PubAck::new(id)).encode(protocol, &mut acks);
                    }
                }
                // Acknowledged once what was read is handled, as the other
                // scenarios' subscribers do: one write for the deliveries
                // that came in one read, not one each (which at 200,000
                // deliveries a second saturated the generator's core).
                if c.buf.is_empty() && !acks.is_empty() {
                    if send_all(&mut c.write, &acks).await.is_err() {
                        break;
                    }
                    acks.clear();
                }
            }
            samples
        }));
    }
    tokio::time::sleep_until(from).await;
    let (broker0, own0) = (args.broker_pid.and_then(cpu_seconds_of), cpu_seconds());
    tokio::time::sleep_until(end).await;
    let (broker1, own1) = (args.broker_pid.and_then(cpu_seconds_of), cpu_seconds());
    let mut samples = Vec::new();
    for r in readers {
        samples.extend(r.await.map_err(|e| e.to_string())?);
    }
    for t in tasks {
        t.abort();
    }
    samples.sort_unstable();
    let sent = sent.load(Ordering::Relaxed);
    let delivered = samples.len() as u64;
    let expected = sent * args.clients as u64;
    eprintln!(
        "  {sent} messages sent in the measured time, {delivered} of {expected} deliveries arrived"
    );
    let seconds = args.seconds as f64;
    let us = |p: f64| percentile(&samples, p) / 1000.0;
    let mut figures = vec![
        ("qos", qos as u8 as f64),
        ("devices", devices as f64),
        ("rate", rate as f64),
        ("delivered_per_s", delivered as f64 / seconds),
        ("lost", expected.saturating_sub(delivered) as f64),
        ("p50_us", us(0.50)),
        ("p99_us", us(0.99)),
        ("p999_us", us(0.999)),
    ];
    if let Some(cpu) = broker1.zip(broker0).map(|(b, a)| b - a) {
        figures.push(("broker_cpu_percent", 100.0 * cpu / seconds));
        figures.push((
            "broker_cpu_us_per_delivered",
            1e6 * cpu / (delivered.max(1) as f64),
        ));
    }
    Ok(Report {
        scenario: "fleet",
        figures,
        generator_cpu: own1.zip(own0).map(|(b, a)| 100.0 * (b - a) / seconds),
    })
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

async fn send_packet(c: &mut Conn, protocol: Protocol, p: Packet) -> Result<(), String> {
    let mut out = BytesMut::new();
    p.encode(protocol, &mut out).map_err(|e| e.to_string())?;
    send_all(&mut c.write, &out)
        .await
        .map_err(|e| e.to_string())
}

async fn subscribe_and_wait(
    c: &mut Conn,
    protocol: Protocol,
    filter: &str,
    qos: QoS,
) -> Result<(), String> {
    let filter = TopicFilter::try_from(filter).map_err(|e| e.to_string())?;
    let packet_id = PacketId::new(1).ok_or("packet id")?;
    let sub = Subscribe {
        packet_id,
        properties: Default::default(),
        subscriptions: vec![Subscription {
            filter,
            options: SubscriptionOptions::qos(qos),
        }],
    };
    send_packet(c, protocol, Packet::Subscribe(sub)).await?;
    loop {
        match c.next(protocol).await {
            Some(Packet::SubAck(_)) => return Ok(()),
            Some(_) => {}
            None => return Err("connection closed before SUBACK".into()),
        }
    }
}

/// Calls `tick(i)` for `i` in `0..count`, each at `start + i / rate`
/// seconds, from a thread of its own, until `tick` says stop (false). The
/// runtime's timer counts whole milliseconds: tasks sleeping on it to
/// marks 200 µs apart would wake five at once every millisecond, a burst
/// the broker reads in one go, not the fixed rate asked for. A thread
/// sleeping to each mark keeps them apart to within the system's timer
/// slack (about 50 µs); one that falls behind catches up at once.
fn pace(
    start: std::time::Instant,
    rate: u64,
    count: u64,
    mut tick: impl FnMut(u64) -> bool + Send + 'static,
) {
    let rate = rate.max(1) as f64;
    std::thread::spawn(move || {
        for i in 0..count {
            let at = start + Duration::from_secs_f64(i as f64 / rate);
            let now = std::time::Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if !tick(i) {
                return;
            }
        }
    });
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64
}

/// One publisher at a fixed rate, one subscriber, QoS 1: the time from
/// just before each PUBLISH is written to when the subscriber has it.
async fn latency(args: &BenchArgs, protocol: Protocol) -> Result<Report, String> {
    let addr = address(args).await?;
    let run = std::process::id();
    let topic = format!("bench/{run}/latency");
    let epoch = Instant::now();
    let mut sub = connect(addr, protocol, &format!("bl-s-{run}"), &args.login()).await?;
    subscribe_and_wait(&mut sub, protocol, &topic, QoS::AtLeastOnce).await?;
    let publ = connect(addr, protocol, &format!("bl-p-{run}"), &args.login()).await?;
    let cpu_start = cpu_seconds();
    // One second of warm-up, the quiet measurement, and with a storm the
    // measurement during it.
    let phases = if args.storm > 0 { 2 } else { 1 };
    // (--rate and --seconds are at least 1, and bounded: no overflow.)
    let rate = args.rate;
    let total = rate * (phases * args.seconds + 1);
    let warmup = rate;
    let storm_from = warmup + rate * args.seconds;
    let topic = TopicName::try_from(topic.as_str()).map_err(|e| e.to_string())?;
    let size = args.size.max(8);
    let sender = tokio::spawn(async move {
        let Conn {
            mut read,
            mut write,
            mut buf,
            ..
        } = publ;
        // PUBACKs are read and discarded.
        tokio::spawn(
            async move { while next_packet(&mut read, &mut buf, protocol).await.is_some() {} },
        );
        // Each message at its own time, 1 / rate apart ([`pace`]).
        let (tick, mut ticks) = tokio::sync::mpsc::unbounded_channel::<()>();
        pace(std::time::Instant::now(), rate, total, move |_| {
            tick.send(()).is_ok()
        });
        let mut out = BytesMut::new();
        for i in 0..total {
            if ticks.recv().await.is_none() {
                return;
            }
            let mut payload = vec![b'x'; size];
            let at = epoch.elapsed().as_nanos() as u64;
            payload[..8].copy_from_slice(&at.to_be_bytes());
            let mut p = Publish::new(topic.clone(), Bytes::from(payload));
            let Some(id) = PacketId::new((i % 65_535 + 1) as u16) else {
                return;
            };
            p.qos = QosPid::AtLeastOnce(id);
            out.clear();
            if p.encode(protocol, &mut out).is_err() || send_all(&mut write, &out).await.is_err() {
                return;
            }
        }
    });
    let mut samples = Vec::with_capacity(total.min(1 << 20) as usize);
    let mut storm_samples = Vec::new();
    let mut storm = None;
    let mut seen = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(phases * args.seconds + 10);
    let mut acks = BytesMut::new();
    while seen < total {
        let p = tokio::time::timeout_at(deadline, sub.next(protocol))
            .await
            .map_err(|_| format!("only {seen} of {total} messages arrived"))?
            .ok_or("subscriber connection closed")?;
        if let Packet::Publish(p) = p {
            let now = epoch.elapsed().as_nanos() as u64;
            if p.payload.len() >= 8 {
                let at = u64::from_be_bytes(p.payload[..8].try_into().unwrap_or([0; 8]));
                if seen >= storm_from && args.storm > 0 {
                    storm_samples.push(now.saturating_sub(at));
                } else if seen >= warmup {
                    samples.push(now.saturating_sub(at));
                }
            }
            if seen == storm_from && args.storm > 0 && storm.is_none() {
                storm = Some(tokio::spawn(login_storm(
                    addr,
                    protocol,
                    args.storm,
                    args.login(),
                )));
            }
            seen += 1;
            if let QosPid::AtLeastOnce(id) = p.qos {
                acks.clear();
                let _ = Packet::PubAck(PubAck::new(id)).encode(protocol, &mut acks);
                send_all(&mut sub.write, &acks)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    sender.abort();
    let cpu = cpu_seconds().zip(cpu_start).map(|(b, a)| b - a);
    samples.sort_unstable();
    storm_samples.sort_unstable();
    let us = |s: &[u64], p: f64| percentile(s, p) / 1000.0;
    eprintln!("  {} samples after one second of warm-up", samples.len());
    let mut figures = vec![
        ("rate", rate as f64),
        ("p50_us", us(&samples, 0.50)),
        ("p99_us", us(&samples, 0.99)),
        ("p999_us", us(&samples, 0.999)),
    ];
    if let Some(storm) = storm {
        let s = storm.await.map_err(|e| e.to_string())??;
        eprintln!(
            "  {} samples during a storm of {} wrong logins: {} refused as bad credentials, {} as server busy, {} other, in {:.1} s",
            storm_samples.len(),
            s.attempts,
            s.bad_credentials,
            s.busy,
            s.other,
            s.seconds
        );
        figures.extend([
            ("storm_p50_us", us(&storm_samples, 0.50)),
            ("storm_p99_us", us(&storm_samples, 0.99)),
            ("storm_p999_us", us(&storm_samples, 0.999)),
            ("storm_logins", s.attempts as f64),
            ("storm_bad_credentials", s.bad_credentials as f64),
            ("storm_busy", s.busy as f64),
            ("storm_seconds", s.seconds),
        ]);
    }
    Ok(Report {
        scenario: "latency",
        figures,
        generator_cpu: cpu.map(|c| 100.0 * c / (phases * args.seconds + 1) as f64),
    })
}

/// What a login storm met.
struct Storm {
    attempts: usize,
    bad_credentials: usize,
    busy: usize,
    other: usize,
    seconds: f64,
}

/// `count` logins with a wrong password (the run's user name, or
/// `alice`), 50 at a time, each to its CONNACK or the connection's close.
async fn login_storm(
    addr: SocketAddr,
    protocol: Protocol,
    count: usize,
    login: Login,
) -> Result<Storm, String> {
    let start = Instant::now();
    let gate = Arc::new(Semaphore::new(50));
    let mut attempts = FuturesUnordered::new();
    for i in 0..count {
        let gate = gate.clone();
        let wrong = Login {
            username: Some(login.username.clone().unwrap_or_else(|| "alice".into())),
            password: Some(format!("wrong-{i}")),
            via: None,
            persistent: false,
        };
        attempts.push(async move {
            let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
            let mut stream = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("storm: cannot connect: {e}"))?;
            let mut out = BytesMut::new();
            let c = connect_packet(protocol, &format!("storm-{i}"), &wrong)?;
            Packet::Connect(Box::new(c))
                .encode(protocol, &mut out)
                .map_err(|e| e.to_string())?;
            stream.write_all(&out).await.map_err(|e| e.to_string())?;
            let (read, _write) = stream.into_split();
            let mut read: Reader = Box::new(read);
            let mut buf = BytesMut::new();
            Ok::<_, String>(match next_packet(&mut read, &mut buf, protocol).await {
                Some(Packet::ConnAck(a)) => Some(a.reason_code),
                _ => None,
            })
        });
    }
    let mut storm = Storm {
        attempts: count,
        bad_credentials: 0,
        busy: 0,
        other: 0,
        seconds: 0.0,
    };
    while let Some(r) = attempts.next().await {
        match r? {
            Some(petrel_codec::ReasonCode::BAD_USER_NAME_OR_PASSWORD) => storm.bad_credentials += 1,
            // 3.1.1 has no Server Busy: return code 3, Server Unavailable.
            Some(
                petrel_codec::ReasonCode::SERVER_BUSY
                | petrel_codec::ReasonCode::SERVER_UNAVAILABLE,
            ) => storm.busy += 1,
            Some(petrel_codec::ReasonCode::SUCCESS) => {
                return Err("storm: a wrong password was accepted".into())
            }
            _ => storm.other += 1,
        }
    }
    storm.seconds = start.elapsed().as_secs_f64();
    Ok(storm)
}

/// `--count` connections, each subscribed to its own topic, then idle.
async fn conns(args: &BenchArgs, protocol: Protocol) -> Result<Report, String> {
    let addr = address(args).await?;
    let run = std::process::id();
    let before = args.broker_pid.and_then(rss_bytes);
    let cpu_start = cpu_seconds();
    let started = Instant::now();
    let mut held = Vec::with_capacity(args.count);
    // 64 handshakes at a time, as a fleet of devices reconnecting would.
    let mut pending = FuturesUnordered::new();
    let mut next = 0usize;
    while held.len() < args.count {
        while next < args.count && pending.len() < 64 {
            let i = next;
            next += 1;
            pending.push(async move {
                let mut c =
                    connect(addr, protocol, &format!("bc-{run}-{i}"), &args.login()).await?;
                let topic = format!("bench/{run}/conn/{i}");
                subscribe_and_wait(&mut c, protocol, &topic, QoS::AtLeastOnce).await?;
                Ok::<Conn, String>(c)
            });
        }
        match pending.next().await {
            Some(Ok(c)) => {
                held.push(c);
                if held.len() % 1000 == 0 {
                    eprintln!("  {} connected", held.len());
                }
            }
            Some(Err(e)) => return Err(format!("after {} connections: {e}", held.len())),
            None => break,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let per_s = held.len() as f64 / elapsed;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = args.broker_pid.and_then(rss_bytes);
    // Held idle (keep alive 60 s is longer than the run), then measured again.
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let later = args.broker_pid.and_then(rss_bytes);
    let cpu = cpu_seconds().zip(cpu_start).map(|(b, a)| b - a);
    let n = held.len() as f64;
    let per_conn = |x: Option<u64>| match (before, x) {
        (Some(b), Some(a)) => a.saturating_sub(b) as f64 / n / 1024.0,
        _ => f64::NAN,
    };
    let kib = per_conn(after);
    Ok(Report {
        scenario: "conns",
        figures: vec![
            ("connections", n),
            ("connections_per_s", per_s),
            ("kib_per_connection", kib),
            ("kib_per_connection_after_idle", per_conn(later)),
            // A million idle connections: as they are once idle a while.
            (
                "projected_gib_per_million",
                per_conn(later) * 1_000_000.0 / 1024.0 / 1024.0,
            ),
        ],
        generator_cpu: cpu.map(|c| 100.0 * c / (elapsed + 1.0 + args.seconds as f64)),
    })
}

/// Store `--count` retained messages, then time a new subscriber to all of
/// them receiving every one.
async fn retained(args: &BenchArgs, protocol: Protocol) -> Result<Report, String> {
    let addr = address(args).await?;
    let run = std::process::id();
    let prefix = format!("bench/{run}/ret");
    let mut publ = connect(addr, protocol, &format!("br-p-{run}"), &args.login()).await?;
    let payload = Bytes::from(vec![b'r'; args.size]);
    // Stored at QoS 1, 256 unacknowledged at a time (fewer if the broker's
    // Receive Maximum says so), so all are stored before the subscriber
    // comes.
    let window = usize::from(publ.receive_maximum).min(256);
    let mut unacked = 0usize;
    let mut out = BytesMut::new();
    for i in 0..args.count {
        let topic =
            TopicName::try_from(format!("{prefix}/{i}").as_str()).map_err(|e| e.to_string())?;
        let mut p = Publish::new(topic, payload.clone());
        p.retain = true;
        p.qos = QosPid::AtLeastOnce(PacketId::new((i % 60_000 + 1) as u16).ok_or("packet id")?);
        p.encode(protocol, &mut out).map_err(|e| e.to_string())?;
        unacked += 1;
        if out.len() > 16 * 1024 || unacked >= window {
            send_all(&mut publ.write, &out)
                .await
                .map_err(|e| e.to_string())?;
            out.clear();
        }
        while unacked >= window {
            match publ.next(protocol).await {
                Some(Packet::PubAck(_)) => unacked -= 1,
                Some(_) => {}
                None => return Err("publisher connection closed".into()),
            }
        }
    }
    send_all(&mut publ.write, &out)
        .await
        .map_err(|e| e.to_string())?;
    while unacked > 0 {
        match publ.next(protocol).await {
            Some(Packet::PubAck(_)) => unacked -= 1,
            Some(_) => {}
            None => return Err("publisher connection closed".into()),
        }
    }
    eprintln!("  {} retained messages stored", args.count);
    let cpu_start = cpu_seconds();
    let started = Instant::now();
    let mut sub = connect(addr, protocol, &format!("br-s-{run}"), &args.login()).await?;
    subscribe_and_wait(&mut sub, protocol, &format!("{prefix}/#"), QoS::AtMostOnce).await?;
    let mut got = 0usize;
    while got < args.count {
        // Fails once nothing arrives for five seconds.
        match tokio::time::timeout(Duration::from_secs(5), sub.next(protocol)).await {
            Ok(Some(Packet::Publish(p))) if p.retain => got += 1,
            Ok(Some(_)) => {}
            Ok(None) => return Err(format!("subscriber closed after {got}")),
            Err(_) => {
                return Err(format!(
                    "only {got} of {} retained messages arrived",
                    args.count
                ))
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds().zip(cpu_start).map(|(b, a)| b - a);
    // Clean up: delete what was stored.
    out.clear();
    for i in 0..args.count {
        let topic =
            TopicName::try_from(format!("{prefix}/{i}").as_str()).map_err(|e| e.to_string())?;
        let mut p = Publish::new(topic, Bytes::new());
        p.retain = true;
        p.encode(protocol, &mut out).map_err(|e| e.to_string())?;
    }
    let _ = send_all(&mut publ.write, &out).await;
    Ok(Report {
        scenario: "retained",
        figures: vec![("messages", args.count as f64), ("seconds", secs)],
        generator_cpu: cpu.map(|c| 100.0 * c / secs.max(0.001)),
    })
}
