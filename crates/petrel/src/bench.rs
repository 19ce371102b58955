//! `petrel bench`: a load generator that speaks MQTT through `petrel-codec`
//! over loopback, bounded in time, reporting delivered messages per second.
//!
//! Scenarios (each N publisher connections and M subscriber connections):
//! * `pairs`: N publishers, each with its own subscriber on its own topic;
//! * `fanout`: one publisher, M subscribers on one topic;
//! * `fanin`: N publishers on distinct topics, one subscriber on a wildcard.
//!
//! Publishers write pre-encoded batches as fast as the broker delivers them:
//! each group of publishers and subscribers keeps at most `--window`
//! messages per publisher between sending and arrival, so a broker is never
//! asked to buffer (or drop) what it can't deliver; at QoS 1 PUBACKs also
//! bound what is unacknowledged. Subscribers count what arrives
//! (acknowledging QoS 1). Only whole seconds after a warm-up second are
//! measured.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use petrel_codec::{
    Connect, Limits, MqttString, Packet, PacketId, Protocol, PubAck, Publish, QoS, QosPid,
    Subscribe, Subscription, SubscriptionOptions, TopicFilter, TopicName,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
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
    /// Publishers (pairs, fanin) or subscribers (fanout).
    #[arg(short = 'n', long = "clients", default_value_t = 10)]
    clients: usize,
    /// Seconds measured (after one second of warm-up).
    #[arg(short = 's', long = "seconds", default_value_t = 5)]
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
}

/// PUBLISHes per write.
const BATCH: usize = 64;

pub(crate) fn run(args: BenchArgs) -> Result<(), String> {
    let protocol = match args.protocol.as_str() {
        "311" | "mqttv311" => Protocol::V3_1_1,
        "5" | "mqttv5" => Protocol::V5,
        other => return Err(format!("unknown protocol version {other}: use 311 or 5")),
    };
    let qos = match args.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => return Err("--qos must be 0 or 1".into()),
    };
    if args.clients == 0 || args.seconds == 0 {
        return Err("--clients and --seconds must be at least 1".into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(bench(args, protocol, qos))
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

    async fn wait_for_room(&self, shared: &Shared) -> u64 {
        loop {
            let progress = self.progress.notified();
            let room = self.room();
            if room > 0 || shared.stop.load(Ordering::Relaxed) {
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

async fn bench(args: BenchArgs, protocol: Protocol, qos: QoS) -> Result<(), String> {
    let addr: SocketAddr = tokio::net::lookup_host((args.host.as_str(), args.port))
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let shared = Arc::new(Shared {
        delivered: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let run = std::process::id();
    let window = args.window.max(1);
    // (topic, group) per publisher and (filter, group) per subscriber.
    let (publishers, subscribers): (Vec<Member>, Vec<Member>) = match args.scenario {
        Scenario::Pairs => (0..args.clients)
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
        let conn = connect(addr, protocol, &format!("bs-{run}-{i}")).await?;
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
        let conn = connect(addr, protocol, &format!("bp-{run}-{i}")).await?;
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
    println!(
        "scenario={:?} protocol={} qos={} clients={} size={} delivered_per_s={:.0} generator_cpu={}",
        args.scenario,
        args.protocol,
        args.qos,
        args.clients,
        args.size,
        total,
        cpu.map_or("n/a".to_string(), |c| format!("{:.0}%", 100.0 * c / elapsed)),
    );
    Ok(())
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

struct Conn {
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    buf: BytesMut,
}

async fn connect(addr: SocketAddr, protocol: Protocol, id: &str) -> Result<Conn, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut c = Connect::new(
        protocol,
        MqttString::try_from(id).map_err(|e| e.to_string())?,
    );
    c.keep_alive = 60;
    let mut out = BytesMut::new();
    Packet::Connect(Box::new(c))
        .encode(protocol, &mut out)
        .map_err(|e| e.to_string())?;
    write.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut conn = Conn {
        read,
        write,
        buf: BytesMut::with_capacity(64 * 1024),
    };
    match conn.next(protocol).await {
        Some(Packet::ConnAck(a)) if !a.reason_code.is_error() => Ok(conn),
        other => Err(format!("connection refused: {other:?}")),
    }
}

impl Conn {
    async fn next(&mut self, protocol: Protocol) -> Option<Packet> {
        next_packet(&mut self.read, &mut self.buf, protocol).await
    }
}

async fn next_packet(
    read: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    protocol: Protocol,
) -> Option<Packet> {
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
    let Ok(filter) = TopicFilter::try_from(filter.as_str()) else {
        return;
    };
    let Some(packet_id) = PacketId::new(1) else {
        return;
    };
    let sub = Subscribe {
        packet_id,
        properties: Default::default(),
        subscriptions: vec![Subscription {
            filter,
            options: SubscriptionOptions::qos(qos),
        }],
    };
    let mut out = BytesMut::new();
    if Packet::Subscribe(sub).encode(protocol, &mut out).is_err() {
        return;
    }
    if c.write.write_all(&out).await.is_err() {
        return;
    }
    out.clear();
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
                if c.write.write_all(&out).await.is_err() {
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
        if write.write_all(&out).await.is_err() {
            return;
        }
    }
}
