//! A Mosquitto started by the test (Debian's `mosquitto`, which `.ci/run`
//! installs) on a free loopback port, killed by its pid; a Petrel broker
//! in this process with its bridges; clients.
//!
//! Without `mosquitto` (and `mosquitto_sub`, `mosquitto_passwd`) the tests say so and pass, unless
//! `PETREL_REQUIRE_MOSQUITTO` is set (CI sets it): then they fail.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use petrel_bridge::Bridge;
use petrel_broker::config::{BridgeConfig, Limits, ListenerConfig};
use petrel_broker::{Broker, BrokerConfig, Server};
use petrel_client::{connect, Client, ConnectOptions, Messages, Protocol, Publish, QoS};

pub const WAIT: Duration = Duration::from_secs(10);
pub const BOTH: [Protocol; 2] = [Protocol::V3_1_1, Protocol::V5];

pub use petrel_testkit::free_port;

/// A directory of the test's own, removed when dropped.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("petrel-bridge-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        // Run as root, Mosquitto drops to its own user: it must be able to
        // read and write here.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        Self(d)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    conf: PathBuf,
    pub dir: Dir,
}

/// Whether Mosquitto can run here (else the test is skipped, or fails
/// when it is required).
pub fn have_mosquitto() -> bool {
    // The broker, and the tools some tests use (mosquitto-clients).
    let found = ["mosquitto", "mosquitto_sub", "mosquitto_passwd"]
        .iter()
        .all(|tool| Command::new(tool).arg("--help").output().is_ok());
    if !found {
        assert!(
            std::env::var_os("PETREL_REQUIRE_MOSQUITTO").is_none(),
            "mosquitto, mosquitto_sub and mosquitto_passwd are required but not all installed"
        );
        eprintln!("mosquitto or mosquitto-clients not installed: skipping (CI runs this)");
    }
    found
}

impl Mosquitto {
    /// Mosquitto with persistence, anonymous clients and `extra` lines in
    /// its configuration (`{dir}` stands for its directory), on a free
    /// port; `None` if it is not installed (and not required).
    pub fn start(name: &str, extra: &str) -> Option<Self> {
        if !have_mosquitto() {
            return None;
        }
        let port = free_port();
        let dir = Dir::new(&format!("mosq-{name}"));
        let conf = dir.path("mosquitto.conf");
        let extra = extra.replace("{dir}", &dir.0.display().to_string());
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nmax_queued_messages 100000\n{extra}\n",
                dir.0.display()
            ),
        )
        .unwrap();
        let mut m = Self {
            child: None,
            port,
            conf,
            dir,
        };
        m.run();
        Some(m)
    }

    /// Start it (again).
    pub fn run(&mut self) {
        // Its log (`log_dest stdout` in a test's lines) goes to mosquitto.log.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path("mosquitto.log"))
            .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (it saves its persistence file) and wait for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .unwrap();
            c.wait().unwrap();
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A Petrel broker in this process (memory only) with `bridges`.
pub struct Petrel {
    pub broker: Broker,
    pub addr: SocketAddr,
    pub bridges: Vec<Bridge>,
}

impl Petrel {
    pub async fn start(bridges: Vec<BridgeConfig>) -> Self {
        Self::start_on(free_port(), bridges).await
    }

    pub async fn start_on(port: u16, bridges: Vec<BridgeConfig>) -> Self {
        Self::start_with(port, bridges, Limits::default()).await
    }

    /// A Petrel on `port` with these limits.
    pub async fn start_with(port: u16, bridges: Vec<BridgeConfig>, limits: Limits) -> Self {
        let config = BrokerConfig {
            listeners: vec![ListenerConfig::tcp(SocketAddr::from((
                [127, 0, 0, 1],
                port,
            )))],
            sys_interval: 0,
            bridges,
            limits,
            ..BrokerConfig::default()
        };
        config.validate().unwrap();
        let broker = Broker::new(config).unwrap();
        let server = Server::bind(broker.clone()).await.unwrap();
        let addr = server.local_addrs()[0];
        let bridges = petrel_bridge::start_all(&broker, &server.local()).unwrap();
        tokio::spawn(server.run());
        Self {
            broker,
            addr,
            bridges,
        }
    }

    /// The bridge `name`'s counters now.
    pub fn bridge(&self, name: &str) -> petrel_broker::BridgeSnapshot {
        self.broker
            .metrics()
            .bridges
            .into_iter()
            .find(|b| b.name == name)
            .expect("a bridge of that name")
    }

    /// Wait until the bridge is connected to its remote.
    pub async fn wait_up(&self, name: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.bridge(name).up {
            assert!(Instant::now() < deadline, "bridge {name} did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A bridge table from TOML lines (name, address and the rest).
pub fn bridge(text: &str) -> BridgeConfig {
    let config = BrokerConfig::from_toml(&format!("[[bridge]]\n{text}\n")).unwrap();
    config.bridges.into_iter().next().unwrap()
}

/// A client of `addr` (`host:port`).
pub async fn client(addr: &str, protocol: Protocol, id: &str) -> (Client, Messages) {
    connect(options(addr, protocol, id)).await.unwrap()
}

pub fn options(addr: &str, protocol: Protocol, id: &str) -> ConnectOptions {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut o = ConnectOptions::new(host, port.parse().unwrap(), id).protocol(protocol);
    o.reconnect.min_backoff = Duration::from_millis(20);
    o.reconnect.max_backoff = Duration::from_millis(200);
    o
}

pub async fn next(m: &mut Messages) -> Publish {
    tokio::time::timeout(WAIT, m.recv())
        .await
        .expect("a message in time")
        .expect("stream open")
}

/// Everything that arrives until `quiet` passes with nothing.
pub async fn drain(m: &mut Messages, quiet: Duration) -> Vec<Publish> {
    let mut out = Vec::new();
    while let Ok(Some(p)) = tokio::time::timeout(quiet, m.recv()).await {
        out.push(p);
    }
    out
}

/// Subscribe, and publish on `publisher` until the subscription sees a
/// message (the bridge's subscriptions are made: the path works), then
/// drain the probes.
pub async fn until_flowing(publisher: &Client, topic: &str, subscriber: &mut Messages) {
    let deadline = Instant::now() + WAIT;
    loop {
        publisher
            .publish_to(topic, "probe", QoS::AtLeastOnce)
            .await
            .unwrap();
        if let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(300), subscriber.recv()).await
        {
            break;
        }
        assert!(Instant::now() < deadline, "nothing flowed on {topic}");
    }
    drain(subscriber, Duration::from_millis(300)).await;
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
