//! A cluster of `petrel broker` processes on 127.0.0.1, each with its own
//! MQTT port, node-to-node port and data directory, started and killed (by
//! process id, SIGKILL, SIGSTOP / SIGCONT) by the test, every wait bounded.
//!
//! What each node thinks of the cluster is read over MQTT, from its
//! `$SYS/broker/cluster/` topics.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, listening, petrel, Running};
use futures::stream::{FuturesUnordered, StreamExt};
use petrel_client::{connect, Client, ConnectOptions, Messages, Protocol, QoS};

const WAIT: Duration = Duration::from_secs(20);

struct Node {
    id: u64,
    mqtt: u16,
    /// Its admin API.
    http: u16,
    data: PathBuf,
    conf: PathBuf,
    log: PathBuf,
    process: Option<Running>,
}

struct Cluster {
    nodes: Vec<Node>,
    dir: PathBuf,
    /// The configured voters, as `peers` lists them.
    peers: Vec<String>,
    /// What every node's `[cluster]` table has besides.
    extra: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.process = None;
        }
        // A failed test shows the end of each node's log (where CI prints
        // only the test's output) and keeps the directory, PETREL_KEEP or
        // not (each failed run leaves one in the temporary directory).
        if std::thread::panicking() {
            for n in &self.nodes {
                let log = std::fs::read_to_string(&n.log).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                eprintln!(
                    "--- node {} ({}), its log's last lines:",
                    n.id,
                    n.log.display()
                );
                for l in &lines[lines.len().saturating_sub(25)..] {
                    eprintln!("{l}");
                }
            }
            return;
        }
        if std::env::var_os("PETREL_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Cluster {
    /// `n` nodes, started.
    fn start(test: &str, n: usize) -> Self {
        Self::start_with(test, n, "forward_timeout = 2\n")
    }

    /// `n` nodes with `extra` in their `[cluster]` tables, started.
    fn start_with(test: &str, n: usize, extra: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("petrel-cluster-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let binds: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let peers: Vec<String> = binds
            .iter()
            .enumerate()
            .map(|(i, p)| format!("\"{}@127.0.0.1:{p}\"", i + 1))
            .collect();
        let mut c = Self {
            nodes: Vec::new(),
            dir,
            peers,
            extra: extra.to_string(),
        };
        for bind in binds {
            c.add(bind);
        }
        for i in 0..n {
            c.up(i);
        }
        c
    }

    /// Write node `nodes.len() + 1`'s configuration, its cluster listener
    /// on `bind` (not started): its index.
    fn add(&mut self, bind: u16) -> usize {
        let id = self.nodes.len() as u64 + 1;
        let (mqtt, http) = (free_port(), free_port());
        let conf = self.dir.join(format!("node{id}.toml"));
        let data = self.dir.join(format!("data{id}"));
        std::fs::write(
            &conf,
            format!(
                "data_dir = \"{}\"\nsys_interval = 1\n\n[[listener]]\nbind = \"127.0.0.1:{mqtt}\"\n\n\
                 [http]\nbind = \"127.0.0.1:{http}\"\n\n\
                 [cluster]\nnode_id = {id}\nbind = \"127.0.0.1:{bind}\"\npeers = [{}]\n\
                 heartbeat_ms = 100\nelection_timeout_ms = 500\n{}",
                data.display(),
                self.peers.join(", "),
                self.extra
            ),
        )
        .unwrap();
        self.nodes.push(Node {
            id,
            mqtt,
            http,
            data,
            log: self.dir.join(format!("node{id}.log")),
            conf,
            process: None,
        });
        self.nodes.len() - 1
    }

    /// Start node `i` (index, not id) again.
    fn up(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .unwrap();
        let child = petrel()
            .args(["broker", "-c"])
            .arg(&n.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        n.process = Some(listening(child, n.mqtt));
        // Its admin API binds after the cluster has started: waited for
        // too, so a test that asks it right away is answered.
        let until = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", n.http)).is_err() {
            assert!(
                Instant::now() < until,
                "node {} never served its admin API",
                n.id
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL node `i`.
    fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].process.take() {
            p.0.kill().unwrap();
            p.0.wait().unwrap();
        }
    }

    /// Send `signal` (STOP, CONT) to node `i`'s process.
    fn signal(&self, i: usize, signal: &str) {
        let pid = self.nodes[i].process.as_ref().unwrap().0.id();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} {pid}");
    }

    fn port(&self, i: usize) -> u16 {
        self.nodes[i].mqtt
    }

    /// The leader every node in `alive` (indices) names, once they agree
    /// on one that is not `not`.
    async fn leader(&self, alive: &[usize], not: Option<u64>) -> u64 {
        let until = Instant::now() + WAIT;
        loop {
            let mut seen = BTreeSet::new();
            for &i in alive {
                seen.insert(sys(self.port(i), "leader").await);
            }
            if seen.len() == 1 {
                if let Some(Some(l)) = seen.first().map(|s| s.parse::<u64>().ok()) {
                    if Some(l) != not {
                        return l;
                    }
                }
            }
            assert!(
                Instant::now() < until,
                "no leader agreed by nodes {alive:?}: {seen:?}; logs in {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Node `i`'s `/metrics`, with the token it wrote in its data
    /// directory.
    fn scrape(&self, i: usize) -> String {
        use std::io::{Read, Write};
        let n = &self.nodes[i];
        let token = std::fs::read_to_string(n.data.join("http.token")).unwrap();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", n.http)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            token.trim()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        out
    }

    /// `petrel ctl` against node `i`'s admin API: whether it succeeded,
    /// and what it printed.
    fn ctl(&self, i: usize, args: &[&str]) -> (bool, String) {
        self.admin(i, "ctl", args)
    }

    /// `petrel cluster ARGS` (join, leave) through node `i`'s admin API.
    fn cluster(&self, i: usize, args: &[&str]) -> (bool, String) {
        self.admin(i, "cluster", args)
    }

    /// `petrel COMMAND ARGS` with node `i`'s admin API and token.
    fn admin(&self, i: usize, command: &str, args: &[&str]) -> (bool, String) {
        let n = &self.nodes[i];
        let out = petrel()
            .arg(command)
            .args(args)
            .args([
                "--url",
                &format!("http://127.0.0.1:{}", n.http),
                "--data-dir",
            ])
            .arg(&n.data)
            .env_remove("PETREL_TOKEN")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    fn index_of(&self, id: u64) -> usize {
        self.nodes.iter().position(|n| n.id == id).unwrap()
    }
}

/// What node at `port` publishes on `$SYS/broker/cluster/<what>` now.
async fn sys(port: u16, what: &str) -> String {
    sys_on("127.0.0.1", port, what).await
}

/// [`sys`] of a node at `host:port`.
async fn sys_on(host: &str, port: u16, what: &str) -> String {
    let o = ConnectOptions::new(host, port, "").protocol(Protocol::V3_1_1);
    let Ok(Ok((c, mut m))) = tokio::time::timeout(Duration::from_secs(2), connect(o)).await else {
        return "unreachable".into();
    };
    let _ = c
        .subscribe(&format!("$SYS/broker/cluster/{what}"), QoS::AtMostOnce)
        .await;
    let v = tokio::time::timeout(Duration::from_secs(1), m.recv())
        .await
        .ok()
        .flatten()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .unwrap_or_default();
    let _ = c.disconnect().await;
    v
}

/// `petrel cluster status` against the broker on `port`: its exit code and
/// what it printed.
fn cluster_status(port: u16) -> (Option<i32>, String) {
    let out = petrel()
        .args([
            "cluster",
            "status",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn options(port: u16, proto: Protocol, id: &str) -> ConnectOptions {
    let mut o = ConnectOptions::new("127.0.0.1", port, id).protocol(proto);
    o.connect_timeout = Duration::from_secs(3);
    o
}

/// A client whose session outlives its connection.
fn persistent(port: u16, proto: Protocol, id: &str) -> ConnectOptions {
    let mut o = options(port, proto, id);
    o.clean_start = false;
    o.session_expiry = 3600;
    o
}

async fn client(o: ConnectOptions) -> (Client, Messages) {
    tokio::time::timeout(WAIT, connect(o))
        .await
        .expect("connect in time")
        .expect("connected")
}

/// The next message's payload, within `WAIT`.
async fn next(m: &mut Messages) -> Option<String> {
    tokio::time::timeout(WAIT, m.recv())
        .await
        .ok()
        .flatten()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_nodes_in_both_versions() {
    let c = Cluster::start("cross", 3);
    c.leader(&[0, 1, 2], None).await;
    for proto in [Protocol::V3_1_1, Protocol::V5] {
        let (sub, mut inbox) = client(options(c.port(1), proto, "cross-sub")).await;
        let (publ, _) = client(options(c.port(0), proto, "cross-pub")).await;
        let (publ3, _) = client(options(c.port(2), proto, "cross-pub3")).await;
        let asked = Instant::now();
        let ack = sub
            .subscribe("cross/+/temp", QoS::AtLeastOnce)
            .await
            .unwrap();
        let commit = asked.elapsed();
        assert!(!ack.reason_codes[0].is_error(), "{ack:?}");
        eprintln!("{proto:?}: a new route committed and applied on 3 nodes (SUBSCRIBE to SUBACK): {commit:?}");
        publ.publish_to("cross/kitchen/temp", "from node 1", QoS::AtLeastOnce)
            .await
            .unwrap();
        assert_eq!(next(&mut inbox).await.as_deref(), Some("from node 1"));
        publ3
            .publish_to("cross/hall/temp", "from node 3", QoS::ExactlyOnce)
            .await
            .unwrap();
        assert_eq!(next(&mut inbox).await.as_deref(), Some("from node 3"));
        // A topic nobody wants is not delivered: the next one that is
        // shows it would have been seen.
        publ.publish_to("cross/kitchen/humidity", "not wanted", QoS::AtLeastOnce)
            .await
            .unwrap();
        publ.publish_to("cross/kitchen/temp", "wanted", QoS::AtLeastOnce)
            .await
            .unwrap();
        assert_eq!(next(&mut inbox).await.as_deref(), Some("wanted"));
        // A pipelined stream crosses in batches, and in order
        // ([MQTT-4.6.0-2] as the subscriber's node sends them): 500
        // messages queued at once.
        let mut acks = Vec::new();
        for i in 0..500 {
            let m = petrel_client::Message::new(
                petrel_client::TopicName::try_from("cross/stream/temp").unwrap(),
                bytes::Bytes::from(i.to_string()),
                QoS::AtLeastOnce,
            );
            acks.push(publ.publish_queued(m).await.unwrap());
        }
        for a in futures::future::join_all(acks).await {
            assert!(!a.unwrap().reason_code.is_error());
        }
        for i in 0..500 {
            assert_eq!(next(&mut inbox).await, Some(i.to_string()), "in order");
        }
        let _ = sub.unsubscribe(&["cross/+/temp"]).await;
    }
    // Each node's figures on its /metrics: the publishing nodes forwarded,
    // the subscriber's received, all agree on the leader.
    let leader = sys(c.port(0), "leader").await;
    let (m0, m1) = (c.scrape(0), c.scrape(1));
    let value = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    assert_eq!(value(&m0, "petrel_cluster_node"), 1);
    assert_eq!(value(&m1, "petrel_cluster_node"), 2);
    for m in [&m0, &m1] {
        assert_eq!(value(m, "petrel_cluster_leader").to_string(), leader);
        assert_eq!(value(m, "petrel_cluster_quorum"), 1);
        assert_eq!(value(m, "petrel_cluster_members"), 3);
    }
    assert!(value(&m0, "petrel_cluster_forwarded_total") >= 1000, "{m0}");
    assert!(value(&m1, "petrel_cluster_received_total") >= 1000, "{m1}");
    // The controls: node 2 published nothing, node 1 subscribed to nothing.
    assert_eq!(value(&m1, "petrel_cluster_forwarded_total"), 0);
    assert_eq!(value(&m0, "petrel_cluster_received_total"), 0);
    assert_eq!(value(&m0, "petrel_cluster_lost_total"), 0);
    // As its $SYS says.
    assert_eq!(
        value(&m0, "petrel_cluster_term").to_string(),
        sys(c.port(0), "term").await
    );
    assert!(value(&m0, "petrel_cluster_raft_applied_index") >= 1);
    assert!(
        value(&m0, "petrel_cluster_raft_last_log_index")
            >= value(&m0, "petrel_cluster_raft_applied_index")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_under_qos1_load_loses_nothing_acknowledged() {
    const MESSAGES: u32 = 600;
    let mut c = Cluster::start("leaderkill", 3);
    let leader = c.leader(&[0, 1, 2], None).await;
    let l = c.index_of(leader);
    let others: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    let (p, s) = (others[0], others[1]);
    let (sub, mut inbox) = client(options(c.port(s), Protocol::V5, "lk-sub")).await;
    let ack = sub.subscribe("load/#", QoS::AtLeastOnce).await.unwrap();
    assert!(!ack.reason_codes[0].is_error());
    let got: Arc<Mutex<BTreeSet<u32>>> = Arc::default();
    let reader = tokio::spawn({
        let got = got.clone();
        async move {
            while let Some(m) = inbox.recv().await {
                let i: u32 = String::from_utf8_lossy(&m.payload).parse().unwrap();
                got.lock().unwrap().insert(i);
            }
        }
    });
    let (publ, _) = client(options(c.port(p), Protocol::V5, "lk-pub")).await;
    let acked: Arc<Mutex<BTreeSet<u32>>> = Arc::default();
    let publisher = tokio::spawn({
        let acked = acked.clone();
        async move {
            let mut inflight = FuturesUnordered::new();
            for i in 0..MESSAGES {
                if inflight.len() >= 16 {
                    if let Some((i, Ok(a))) = inflight.next().await {
                        let a: petrel_client::Ack = a;
                        if !a.reason_code.is_error() {
                            acked.lock().unwrap().insert(i);
                        }
                    }
                }
                let publ = publ.clone();
                inflight.push(async move {
                    (
                        i,
                        publ.publish_to(
                            &format!("load/{}", i % 7),
                            i.to_string(),
                            QoS::AtLeastOnce,
                        )
                        .await,
                    )
                });
                if i % 8 == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            while let Some((i, r)) = inflight.next().await {
                if r.is_ok_and(|a| !a.reason_code.is_error()) {
                    acked.lock().unwrap().insert(i);
                }
            }
        }
    });
    // Under way: kill the leader.
    let until = Instant::now() + WAIT;
    while acked.lock().unwrap().len() < 150 {
        assert!(Instant::now() < until, "the load did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed = Instant::now();
    c.kill(l);
    let new = c.leader(&others, Some(leader)).await;
    let election = killed.elapsed();
    eprintln!("leader {leader} SIGKILLed: node {new} leads after {election:?} (election timeout 500-1000 ms, polled over MQTT)");
    tokio::time::timeout(WAIT, publisher)
        .await
        .unwrap()
        .unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() as u32 > MESSAGES / 2,
        "most were acknowledged: {}",
        acked.len()
    );
    let until = Instant::now() + WAIT;
    loop {
        let missing: Vec<u32> = acked.difference(&got.lock().unwrap()).copied().collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < until,
            "{} acknowledged messages never reached the subscriber on a surviving node: {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{} acknowledged QoS 1 messages, all delivered across nodes while the leader died",
        acked.len()
    );
    reader.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_lost_and_regained_then_the_whole_cluster_restarted() {
    let mut c = Cluster::start("restart", 3);
    c.leader(&[0, 1, 2], None).await;
    // A persistent subscriber on node 2, offline when the message comes.
    let (sub, _) = client(persistent(c.port(1), Protocol::V3_1_1, "keeper")).await;
    assert!(!sub
        .subscribe("keep/#", QoS::AtLeastOnce)
        .await
        .unwrap()
        .reason_codes[0]
        .is_error());
    sub.disconnect().await.unwrap();
    drop(sub);
    let (publ, _) = client(options(c.port(0), Protocol::V3_1_1, "kpub")).await;
    publ.publish_to("keep/1", "queued on node 2", QoS::AtLeastOnce)
        .await
        .unwrap();
    publ.disconnect().await.unwrap();
    // Clients whose sessions node 2 keeps (so it owns them), and clients
    // whose sessions node 1 keeps.
    for proto in [Protocol::V3_1_1, Protocol::V5] {
        let (c2, _) = client(persistent(c.port(1), proto, &format!("alone-{proto:?}"))).await;
        c2.disconnect().await.unwrap();
        let (c1, _) = client(persistent(c.port(0), proto, &format!("away-{proto:?}"))).await;
        c1.disconnect().await.unwrap();
    }

    // `petrel cluster status` on node 2: it follows or leads, with a
    // quorum (exit 0). Its view is looked at every heartbeat, and a leader
    // just elected may not have heard its peers yet: asked until then.
    let until = Instant::now() + WAIT;
    let text = loop {
        let (code, text) = cluster_status(c.port(1));
        if code == Some(0) {
            break text;
        }
        assert!(Instant::now() < until, "{code:?}: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        text.starts_with("node 2 (")
            && text.contains("quorum yes")
            && text.contains("members 1,2,3"),
        "{text}"
    );

    // Two of three killed: node 2 alone can't agree a new route.
    c.kill(0);
    c.kill(2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, text) = cluster_status(c.port(1));
    assert_eq!(code, Some(1), "no quorum now: {text}");
    assert!(text.contains("quorum no"), "{text}");
    for proto in [Protocol::V3_1_1, Protocol::V5] {
        // A client whose session node 1 has: node 2 can't take it over
        // without a majority (5.0 0x88, 3.1.1 return code 3).
        let stranger = connect(persistent(c.port(1), proto, &format!("away-{proto:?}"))).await;
        assert!(
            matches!(
                stranger,
                Err(petrel_client::ClientError::Refused(
                    petrel_client::ReasonCode::SERVER_UNAVAILABLE
                ))
            ),
            "{proto:?}: {:?}",
            stranger.map(|_| ())
        );
        // The control: one whose session node 2 owns is let in.
        let (alone, _) = client(persistent(c.port(1), proto, &format!("alone-{proto:?}"))).await;
        let refused = alone.subscribe("fresh/#", QoS::AtLeastOnce).await.unwrap();
        assert!(
            refused.reason_codes[0].is_error(),
            "{proto:?}: a new route without a majority: {refused:?}"
        );
        // The control: a filter node 2 routes already needs no agreement.
        let granted = alone.subscribe("keep/#", QoS::AtLeastOnce).await.unwrap();
        assert!(!granted.reason_codes[0].is_error(), "{granted:?}");
        alone.disconnect().await.unwrap();
    }
    // Back: the same subscription is granted.
    c.up(0);
    c.up(2);
    c.leader(&[0, 1, 2], None).await;
    let (again, _) = client(options(c.port(1), Protocol::V5, "again")).await;
    let until = Instant::now() + WAIT;
    loop {
        let r = again.subscribe("fresh/#", QoS::AtLeastOnce).await.unwrap();
        if !r.reason_codes[0].is_error() {
            break;
        }
        assert!(Instant::now() < until, "never granted again: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    again.disconnect().await.unwrap();

    // The whole cluster stopped (SIGKILL) and started again: the queued
    // message is still on node 2, and the route from its stored session
    // is agreed again, so a message published on node 3 reaches it.
    for i in 0..3 {
        c.kill(i);
    }
    for i in 0..3 {
        c.up(i);
    }
    c.leader(&[0, 1, 2], None).await;
    let (sub, mut inbox) = client(persistent(c.port(1), Protocol::V3_1_1, "keeper")).await;
    assert_eq!(next(&mut inbox).await.as_deref(), Some("queued on node 2"));
    let (publ3, _) = client(options(c.port(2), Protocol::V3_1_1, "kpub3")).await;
    publ3
        .publish_to("keep/2", "after the restart", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(next(&mut inbox).await.as_deref(), Some("after the restart"));
    drop(sub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_neither_stops_the_others_nor_misses_what_follows() {
    let c = Cluster::start("pause", 3);
    c.leader(&[0, 1, 2], None).await;
    // Node 3 wants `p/#` (and so gets everything published there).
    let (sub3, mut inbox3) = client(options(c.port(2), Protocol::V5, "p-sub3")).await;
    assert!(!sub3
        .subscribe("p/#", QoS::AtLeastOnce)
        .await
        .unwrap()
        .reason_codes[0]
        .is_error());
    c.signal(2, "STOP");
    // The other two go on: a new route is agreed (two of three) and
    // messages flow between them.
    let (sub2, mut inbox2) = client(options(c.port(1), Protocol::V5, "p-sub2")).await;
    let until = Instant::now() + WAIT;
    loop {
        let r = sub2.subscribe("q/#", QoS::AtLeastOnce).await.unwrap();
        if !r.reason_codes[0].is_error() {
            break;
        }
        // Refused while the survivors elect a leader (if node 3 led).
        assert!(Instant::now() < until, "{r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (publ, _) = client(options(c.port(0), Protocol::V5, "p-pub")).await;
    let sent = Instant::now();
    publ.publish_to("q/1", "while 3 sleeps", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(next(&mut inbox2).await.as_deref(), Some("while 3 sleeps"));
    eprintln!(
        "QoS 1 between two nodes while a third is stopped: acknowledged and delivered in {:?}",
        sent.elapsed()
    );
    c.signal(2, "CONT");
    // Awake, node 3 gets what is published after (its link is back).
    let until = Instant::now() + WAIT;
    let mut n = 0;
    loop {
        n += 1;
        publ.publish_to("p/1", format!("after {n}"), QoS::AtLeastOnce)
            .await
            .unwrap();
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), inbox3.recv()).await {
            let text = String::from_utf8_lossy(&m.payload).into_owned();
            assert!(text.starts_with("after "), "{text}");
            break;
        }
        assert!(Instant::now() < until, "node 3 never came back");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_peer_fills_its_bounded_queue_then_qos1_for_it_is_refused() {
    // 8 queued and 8 sent unanswered at most for one peer; an answer
    // not come in 3 s, the peer is given up on for that message.
    let c = Cluster::start_with("queue", 3, "peer_queue = 8\nforward_timeout = 3\n");
    c.leader(&[0, 1, 2], None).await;
    let (sub, _inbox) = client(options(c.port(2), Protocol::V5, "q-sub")).await;
    assert!(!sub
        .subscribe("full/#", QoS::AtLeastOnce)
        .await
        .unwrap()
        .reason_codes[0]
        .is_error());
    let (publ, _) = client(options(c.port(0), Protocol::V5, "q-pub")).await;
    // 40 messages, `window` of them in flight at a time: how many were
    // acknowledged and how many refused (within 10 s).
    let burst = |tag: &'static str, window: usize| {
        let publ = publ.clone();
        async move {
            let (mut ok, mut refused) = (0, 0);
            let mut count = |r: Result<petrel_client::Ack, petrel_client::ClientError>| match r {
                Ok(a) if !a.reason_code.is_error() => ok += 1,
                Ok(_) => refused += 1,
                Err(e) => panic!("{e}"),
            };
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let mut all = FuturesUnordered::new();
            for i in 0..40 {
                if all.len() >= window {
                    match tokio::time::timeout_at(deadline, all.next()).await {
                        Ok(Some(r)) => count(r),
                        _ => break,
                    }
                }
                let publ = publ.clone();
                all.push(async move {
                    publ.publish_to(&format!("full/{i}"), tag, QoS::AtLeastOnce)
                        .await
                });
            }
            while let Ok(Some(r)) = tokio::time::timeout_at(deadline, all.next()).await {
                count(r);
            }
            (ok, refused)
        }
    };
    // The control: node 3 awake, every one is taken.
    assert_eq!(burst("awake", 8).await, (40, 0));
    c.signal(2, "STOP");
    let (ok, refused) = burst("asleep", 40).await;
    c.signal(2, "CONT");
    eprintln!("a stopped peer, queue 8 + 8: {ok} acknowledged once given up on (after 3 s), {refused} refused");
    // Acknowledgements go in order: the refusals wait behind the first
    // message, which waits for node 3 (given up on after 3 s).
    assert_eq!(ok + refused, 40);
    assert!(
        ok <= 16 + 1,
        "no more than the bound waited for node 3: {ok}"
    );
    assert!(refused >= 40 - 16 - 1, "past the bound, refused: {refused}");
}

/// Three hosts: network namespaces of the test's own, each joined to a
/// bridge (in this namespace, where the test's clients are) by a veth
/// pair. A partition takes one host's pair down. Needs root and `ip`.
struct Hosts {
    ns: Vec<String>,
    veth: Vec<String>,
    bridge: String,
    subnet: String,
}

impl Hosts {
    fn create(n: usize) -> Option<Self> {
        let ip = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        let tag = std::process::id() % 100_000;
        let bridge = format!("pb{tag}");
        let subnet = format!("10.213.{}", tag % 250);
        if !ip(&["link", "add", &bridge, "type", "bridge"]) {
            assert!(
                std::env::var_os("PETREL_REQUIRE_NETNS").is_none(),
                "network namespaces are required (root and iproute2) but could not be made"
            );
            eprintln!("cannot make network namespaces here (root and iproute2 needed): skipped");
            return None;
        }
        let mut hosts = Self {
            ns: Vec::new(),
            veth: Vec::new(),
            bridge,
            subnet,
        };
        let ok = ip(&[
            "addr",
            "add",
            &format!("{}.254/24", hosts.subnet),
            "dev",
            &hosts.bridge,
        ]) && ip(&["link", "set", &hosts.bridge, "up"]);
        assert!(ok, "bridge");
        for i in 0..n {
            let ns = format!("pt{tag}n{i}");
            let (outer, inner) = (format!("pv{tag}h{i}"), format!("pv{tag}c{i}"));
            let ok = ip(&["netns", "add", &ns])
                && ip(&[
                    "link", "add", &outer, "type", "veth", "peer", "name", &inner,
                ])
                && ip(&["link", "set", &outer, "master", &hosts.bridge])
                && ip(&["link", "set", &outer, "up"])
                && ip(&["link", "set", &inner, "netns", &ns])
                && ip(&[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{}.{}/24", hosts.subnet, i + 1),
                    "dev",
                    &inner,
                ])
                && ip(&["-n", &ns, "link", "set", &inner, "up"])
                && ip(&["-n", &ns, "link", "set", "lo", "up"]);
            hosts.ns.push(ns);
            hosts.veth.push(outer);
            assert!(ok, "host {i}");
        }
        Some(hosts)
    }

    fn addr(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, i + 1)
    }

    /// Cut host `i` off from the others (and from the test), or join it
    /// back.
    fn link(&self, i: usize, up: bool) {
        let ok = std::process::Command::new("ip")
            .args(["link", "set", &self.veth[i], if up { "up" } else { "down" }])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// Run `petrel` with `args` inside host `i`: its exit status and output.
    fn petrel_in(&self, i: usize, args: &[&str]) -> (bool, String) {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns[i], env!("CARGO_BIN_EXE_petrel")])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in &self.ns {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

/// The leader hosts `of` agree on, once they do (and it is not `not`).
async fn agreed_leader(hosts: &Hosts, of: &[usize], not: Option<&str>) -> String {
    let until = Instant::now() + WAIT;
    loop {
        let mut seen = BTreeSet::new();
        for &i in of {
            seen.insert(sys_on(&hosts.addr(i), 1883, "leader").await);
        }
        if let [l] = seen.iter().collect::<Vec<_>>()[..] {
            if l.parse::<u64>().is_ok() && Some(l.as_str()) != not {
                return l.clone();
            }
        }
        assert!(
            Instant::now() < until,
            "hosts {of:?} agree on no leader: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_then_healed_has_one_side_that_decides_and_routes_converge() {
    let Some(hosts) = Hosts::create(3) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("petrel-partition-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let peers: Vec<String> = (0..3)
        .map(|i| format!("\"{}@{}:7883\"", i + 1, hosts.addr(i)))
        .collect();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let conf = dir.join(format!("node{}.toml", i + 1));
        std::fs::write(
            &conf,
            format!(
                "data_dir = \"{}\"\nsys_interval = 1\nallow_anonymous = true\n\n\
                 [[listener]]\nbind = \"{addr}:1883\"\n\n\
                 [cluster]\nnode_id = {id}\nbind = \"{addr}:7883\"\npeers = [{peers}]\n\
                 secret = \"the partition test's cluster secret\"\n\
                 heartbeat_ms = 100\nelection_timeout_ms = 500\nforward_timeout = 2\n",
                dir.join(format!("data{}", i + 1)).display(),
                addr = hosts.addr(i),
                id = i + 1,
                peers = peers.join(", "),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join(format!("node{}.log", i + 1))).unwrap();
        let child = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &hosts.ns[i],
                env!("CARGO_BIN_EXE_petrel"),
                "broker",
                "-c",
            ])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        // `ip netns exec` execs the broker: the id is the broker's.
        nodes.push(Running(child));
    }
    let leader = agreed_leader(&hosts, &[0, 1, 2], None).await;
    let cut: usize = leader.parse::<usize>().unwrap() - 1;
    let side: Vec<usize> = (0..3).filter(|i| *i != cut).collect();
    let (a, b) = (side[0], side[1]);
    // Before: a subscriber on the node to be cut off, one on the majority.
    let opts = |i: usize, id: &str| {
        let mut o = ConnectOptions::new(hosts.addr(i), 1883, id).protocol(Protocol::V5);
        o.connect_timeout = Duration::from_secs(3);
        o
    };
    let (iso_sub, mut iso_inbox) = client(opts(cut, "iso-sub")).await;
    assert!(!iso_sub
        .subscribe("iso/#", QoS::AtLeastOnce)
        .await
        .unwrap()
        .reason_codes[0]
        .is_error());

    // The leader cut off: the other two elect one of theirs.
    let t = Instant::now();
    hosts.link(cut, false);
    let new = agreed_leader(&hosts, &side, Some(&leader)).await;
    eprintln!(
        "leader {leader} cut off: {new} leads the majority after {:?}",
        t.elapsed()
    );
    // The majority decides: a new route is agreed, and messages flow.
    let (maj_sub, mut maj_inbox) = client(opts(a, "maj-sub")).await;
    let until = Instant::now() + WAIT;
    loop {
        let r = maj_sub
            .subscribe("during/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        if !r.reason_codes[0].is_error() {
            break;
        }
        assert!(Instant::now() < until, "{r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (maj_pub, _) = client(opts(b, "maj-pub")).await;
    maj_pub
        .publish_to("during/1", "majority", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(next(&mut maj_inbox).await.as_deref(), Some("majority"));
    // The side cut off decides nothing: a new route there is refused
    // (whatever it thinks of its leadership), while the same command on
    // the majority's side, the control, was granted above.
    let host = hosts.addr(cut);
    let (granted, text) = hosts.petrel_in(
        cut,
        &[
            "sub",
            "-h",
            &host,
            "-p",
            "1883",
            "-V",
            "5",
            "-q",
            "1",
            "-t",
            "minority/#",
            "-E",
        ],
    );
    assert!(!granted, "a new route on the side cut off: {text}");
    assert!(text.contains("refused"), "{text}");

    // Healed: one leader for all three, and the same routes everywhere.
    hosts.link(cut, true);
    let t = Instant::now();
    let all = agreed_leader(&hosts, &[0, 1, 2], None).await;
    // Two routes everywhere: iso/# (agreed before the cut) and during/#
    // (agreed without the node cut off, which has it once it caught up).
    // A node reports its count as it changes; a count alone that agrees
    // could be two stale ones, so the check is for the number expected.
    let until = Instant::now() + WAIT;
    let routes = loop {
        let mut seen = BTreeSet::new();
        for i in 0..3 {
            seen.insert(sys_on(&hosts.addr(i), 1883, "routes").await);
        }
        if seen.len() == 1 && seen.contains("2") {
            break seen.pop_first().unwrap();
        }
        assert!(Instant::now() < until, "routes never converged: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "healed: all three follow {all} and hold {routes} routes after {:?}",
        t.elapsed()
    );
    // The node that was cut off routes to the route made without it, and
    // gets what the majority publishes for its own subscriber.
    let (iso_pub, _) = client(opts(cut, "iso-pub")).await;
    iso_pub
        .publish_to("during/2", "from the healed node", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(
        next(&mut maj_inbox).await.as_deref(),
        Some("from the healed node")
    );
    let until = Instant::now() + WAIT;
    loop {
        maj_pub
            .publish_to("iso/1", "to the healed node", QoS::AtLeastOnce)
            .await
            .unwrap();
        match tokio::time::timeout(Duration::from_millis(500), iso_inbox.recv()).await {
            Ok(Some(m)) => {
                assert_eq!(&m.payload[..], b"to the healed node");
                break;
            }
            _ => assert!(
                Instant::now() < until,
                "the healed node's subscriber got nothing"
            ),
        }
    }
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_away_while_the_log_moved_on_catches_up_from_a_snapshot() {
    // A snapshot every 4 log entries, 2 kept behind it: a node away for
    // more than that gets the routes from a snapshot, not the log.
    let mut c = Cluster::start_with("snapshot", 3, "forward_timeout = 2\nsnapshot_logs = 4\n");
    let leader = c.leader(&[0, 1, 2], None).await;
    let l = c.index_of(leader);
    let others: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    let (away, stays) = (others[0], others[1]);
    c.kill(away);
    // 20 routes, one SUBSCRIBE (one log entry) each, on the node that stays.
    let (sub, mut inbox) = client(options(c.port(stays), Protocol::V3_1_1, "snap-sub")).await;
    for i in 0..20 {
        let r = sub
            .subscribe(&format!("snap/{i}"), QoS::AtLeastOnce)
            .await
            .unwrap();
        assert!(!r.reason_codes[0].is_error(), "{r:?}");
    }
    let want = "20";
    c.up(away);
    // Back: it holds the same routes (from the leader's snapshot), and
    // routes by them.
    let until = Instant::now() + WAIT;
    loop {
        let got = sys(c.port(away), "routes").await;
        if got == want && !got.is_empty() {
            break;
        }
        assert!(
            Instant::now() < until,
            "routes on the node back: {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (publ, _) = client(options(c.port(away), Protocol::V3_1_1, "snap-pub")).await;
    publ.publish_to("snap/17", "via the snapshot", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(next(&mut inbox).await.as_deref(), Some("via the snapshot"));
    // It kept what it learnt: killed and started again, it routes from
    // its own stored snapshot and log at once (the message is published
    // as soon as it listens).
    drop(publ);
    c.kill(away);
    c.up(away);
    let (publ, _) = client(options(c.port(away), Protocol::V3_1_1, "snap-pub2")).await;
    publ.publish_to("snap/3", "from what it stored", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(
        next(&mut inbox).await.as_deref(),
        Some("from what it stored")
    );
}

#[test]
fn cluster_status_on_a_broker_that_is_no_node_says_so() {
    let data = std::env::temp_dir().join(format!("petrel-nocluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let port = free_port();
    let _broker = common::start_on_data(&data, port);
    let (code, text) = cluster_status(port);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("not a node of a cluster"), "{text}");
    drop(_broker);
    let _ = std::fs::remove_dir_all(&data);
}

/// A persistent client that never reconnects on its own (the test moves it).
fn mover(port: u16, id: &str) -> ConnectOptions {
    let mut o = persistent(port, Protocol::V5, id);
    o.reconnect.enabled = false;
    o
}

fn session_present(c: &Client) -> bool {
    matches!(
        c.status(),
        petrel_client::Status::Connected {
            session_present: true
        }
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_follows_its_client_to_another_node() {
    let c = Cluster::start("move", 3);
    c.leader(&[0, 1, 2], None).await;
    let (publ, _) = client(options(c.port(2), Protocol::V5, "move-pub")).await;

    // Subscribed on node 1, then away: what is published meanwhile waits
    // in its session there.
    let (a, _) = client(mover(c.port(0), "move-c")).await;
    assert!(!session_present(&a));
    a.subscribe("move/#", QoS::AtLeastOnce).await.unwrap();
    a.disconnect().await.unwrap();
    for i in 0..5 {
        publ.publish_to("move/x", format!("queued {i}"), QoS::AtLeastOnce)
            .await
            .unwrap();
    }

    // Back on node 2: the session came along, queue and subscription.
    let asked = Instant::now();
    let (b, mut inbox) = client(mover(c.port(1), "move-c")).await;
    eprintln!("a takeover from another node took {:?}", asked.elapsed());
    assert!(session_present(&b), "{:?}", b.status());
    for i in 0..5 {
        assert_eq!(next(&mut inbox).await, Some(format!("queued {i}")));
    }
    // Routed to its new node: published anywhere, it arrives.
    publ.publish_to("move/x", "after", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(next(&mut inbox).await.as_deref(), Some("after"));

    // Taken over while connected: the old connection is closed (0x8E)
    // and the new one resumes.
    let (d, mut inbox3) = client(mover(c.port(2), "move-c")).await;
    assert!(session_present(&d));
    let closed =
        tokio::time::timeout(WAIT, b.wait_for(|s| *s == petrel_client::Status::Closed)).await;
    assert!(
        closed.is_ok(),
        "the node 2 connection stayed: {:?}",
        b.status()
    );
    publ.publish_to("move/x", "on node 3", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(next(&mut inbox3).await.as_deref(), Some("on node 3"));

    // With Clean Start elsewhere the session ends: nothing comes back.
    d.disconnect().await.unwrap();
    publ.publish_to("move/x", "dropped", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut o = mover(c.port(0), "move-c");
    o.clean_start = true;
    let (e, mut inbox4) = client(o).await;
    assert!(!session_present(&e));
    e.subscribe("move/#", QoS::AtLeastOnce).await.unwrap();
    publ.publish_to("move/x", "fresh", QoS::AtLeastOnce)
        .await
        .unwrap();
    // The control shows the inbox works; what the ended session held is
    // not in it.
    assert_eq!(next(&mut inbox4).await.as_deref(), Some("fresh"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_session_reaches_its_client_elsewhere_once_it_restarts() {
    let mut c = Cluster::start("dead-owner", 3);
    c.leader(&[0, 1, 2], None).await;
    // Subscribed on node 1 and away; three messages wait there, stored.
    let (a, _) = client(mover(c.port(0), "orphan")).await;
    a.subscribe("orphan/#", QoS::AtLeastOnce).await.unwrap();
    a.disconnect().await.unwrap();
    let (publ, _) = client(options(c.port(2), Protocol::V5, "orphan-pub")).await;
    for i in 0..3 {
        publ.publish_to("orphan/x", format!("kept {i}"), QoS::AtLeastOnce)
            .await
            .unwrap();
    }
    c.kill(0);
    // The client goes to node 2 meanwhile: accepted, without its session
    // (node 1 can't hand it on), and subscribes again.
    let asked = Instant::now();
    let (b, mut inbox) = client(mover(c.port(1), "orphan")).await;
    eprintln!(
        "a takeover from a dead node answered after {:?}",
        asked.elapsed()
    );
    assert!(!session_present(&b));
    b.subscribe("orphan/#", QoS::AtLeastOnce).await.unwrap();
    publ.publish_to("orphan/x", "meanwhile", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(next(&mut inbox).await.as_deref(), Some("meanwhile"));
    // Node 1 back: it hands the session on, and its messages reach the
    // client on node 2.
    c.up(0);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next(&mut inbox).await);
    }
    assert_eq!(
        got,
        (0..3)
            .map(|i| Some(format!("kept {i}")))
            .collect::<Vec<_>>()
    );
    // Handed on once: node 1 keeps nothing of it, nothing more arrives,
    // and a restart of node 1 brings nothing again.
    let (ok, out) = c.ctl(0, &["sessions", "--client-id", "orphan", "--json"]);
    assert!(ok && out.contains("\"count\": 0"), "{out}");
    c.kill(0);
    c.up(0);
    c.leader(&[0, 1, 2], None).await;
    publ.publish_to("orphan/x", "last", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(next(&mut inbox).await.as_deref(), Some("last"));
    let more = tokio::time::timeout(Duration::from_millis(1500), inbox.recv()).await;
    assert!(more.is_err(), "more came: {more:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_sends_its_clients_to_another_and_their_sessions_follow() {
    let c = Cluster::start("drain", 3);
    c.leader(&[0, 1, 2], None).await;
    let (a, mut before) = client(mover(c.port(0), "drained")).await;
    a.subscribe("dr/#", QoS::AtLeastOnce).await.unwrap();
    // Positive control: node 1 serves it before the drain.
    let (publ, _) = client(options(c.port(2), Protocol::V5, "dr-pub")).await;
    publ.publish_to("dr/x", "before", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(next(&mut before).await.as_deref(), Some("before"));
    // Drained through its admin API, sending clients to node 2.
    let target = format!("127.0.0.1:{}", c.port(1));
    let (ok, text) = c.ctl(0, &["drain", "--server-reference", &target]);
    assert!(ok && text.contains("\"draining\": true"), "{text}");
    let closed =
        tokio::time::timeout(WAIT, a.wait_for(|s| *s == petrel_client::Status::Closed)).await;
    assert!(closed.is_ok(), "still connected to the drained node");
    // What is published meanwhile waits in its session (still on node 1).
    publ.publish_to("dr/x", "while moving", QoS::AtLeastOnce)
        .await
        .unwrap();
    // Node 1 sends newcomers where it was told.
    match connect(mover(c.port(0), "drained")).await {
        Err(petrel_client::ClientError::Refused(rc)) => {
            assert_eq!(rc, petrel_client::ReasonCode::USE_ANOTHER_SERVER)
        }
        other => panic!("a drained node let a client in: {:?}", other.map(|_| ())),
    }
    // At the reference: the session, and what waited in it.
    let port: u16 = target.rsplit(':').next().unwrap().parse().unwrap();
    let (b, mut inbox) = client(mover(port, "drained")).await;
    assert!(session_present(&b));
    assert_eq!(next(&mut inbox).await.as_deref(), Some("while moving"));
    publ.publish_to("dr/x", "after", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(next(&mut inbox).await.as_deref(), Some("after"));
}

/// The retained messages `port`'s node holds under `filter`, as a new
/// subscriber there gets them (topic = payload), within a short wait.
async fn retained_on(port: u16, filter: &str) -> Vec<String> {
    let id = format!("look-{}", free_port());
    let (c, mut m) = client(options(port, Protocol::V5, &id)).await;
    c.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let mut got = Vec::new();
    while let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(700), m.recv()).await {
        got.push(format!(
            "{}={}",
            p.topic,
            String::from_utf8_lossy(&p.payload)
        ));
    }
    let _ = c.disconnect().await;
    got.sort();
    got
}

/// Wait until node `i` holds exactly `want` under `ret/#`.
async fn holds_in_time(c: &Cluster, i: usize, want: &[&str]) {
    let until = Instant::now() + WAIT;
    loop {
        let got = retained_on(c.port(i), "ret/#").await;
        if got == want {
            return;
        }
        assert!(Instant::now() < until, "node {} holds {got:?}", i + 1);
    }
}

/// Retained messages are agreed through the log: a node that was down
/// while one was set and another deleted finds both changes when it is
/// back, from the log and, once the log has moved past it, from a
/// snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_changed_while_a_node_was_down_reach_it() {
    let mut c = Cluster::start_with("retained", 3, "forward_timeout = 2\nsnapshot_logs = 8\n");
    c.leader(&[0, 1, 2], None).await;
    let (publ, _) = client(options(c.port(0), Protocol::V5, "ret-pub")).await;
    // Each returns once its PUBACK is in.
    let set = |topic: &'static str, payload: String| {
        let publ = publ.clone();
        async move {
            let mut m = petrel_client::Message::new(
                petrel_client::TopicName::try_from(topic).unwrap(),
                bytes::Bytes::from(payload),
                QoS::AtLeastOnce,
            );
            m.retain = true;
            publ.publish(m).await.unwrap();
        }
    };
    set("ret/old", "before".into()).await;
    // The control: node 3 holds it (it would show a message it holds).
    assert_eq!(retained_on(c.port(2), "ret/#").await, ["ret/old=before"]);
    c.kill(2);
    set("ret/new", "while away".into()).await;
    set("ret/old", String::new()).await;
    c.up(2);
    holds_in_time(&c, 2, &["ret/new=while away"]).await;
    // Away again while the log moves past a snapshot (8 entries): back,
    // it takes the retained messages from the snapshot.
    c.kill(2);
    set("ret/new", String::new()).await;
    for i in 0..12 {
        set("ret/snap", format!("v{i}")).await;
    }
    c.up(2);
    holds_in_time(&c, 2, &["ret/snap=v11"]).await;
    assert_eq!(retained_on(c.port(1), "ret/#").await, ["ret/snap=v11"]);
}

/// Wait until node `i` says `members` is `want`.
async fn members_are(c: &Cluster, i: usize, want: &str) {
    let until = Instant::now() + WAIT;
    loop {
        let got = sys(c.port(i), "members").await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < until,
            "node {} says members {got:?}, want {want:?}",
            i + 1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Nodes join at run time (a learner first, voters up to three, then
/// five), route and take part as any member; one leaves, and with it its
/// routes. A node the configured peers do not name forms no cluster of
/// its own: it waits to be added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_and_leave_at_run_time() {
    let mut c = Cluster::start("members", 3);
    c.leader(&[0, 1, 2], None).await;
    members_are(&c, 0, "1,2,3").await;
    // Node 4: configured with the three as peers, not itself.
    let four = c.add(free_port());
    c.up(four);
    // Alone it has no leader, and no cluster of its own.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sys(c.port(four), "leader").await, "none");
    // A node's cluster listener, from its `[cluster]` table.
    let bind = |c: &Cluster, i: usize| -> String {
        let conf = std::fs::read_to_string(&c.nodes[i].conf).unwrap();
        let cluster = conf.split("[cluster]").nth(1).unwrap().to_string();
        cluster
            .lines()
            .find_map(|l| l.strip_prefix("bind = \""))
            .unwrap()
            .trim_end_matches('"')
            .to_string()
    };
    let (ok, out) = c.cluster(1, &["join", &format!("4@{}", bind(&c, four))]);
    assert!(ok, "{out}");
    assert!(out.contains("members 1,2,3,4L"), "{out}");
    members_are(&c, four, "1,2,3,4L").await;
    // The learner routes: a subscriber there gets what node 1 publishes,
    // and one on node 2 what it publishes.
    let (sub4, mut inbox4) = client(options(c.port(four), Protocol::V5, "m-sub4")).await;
    sub4.subscribe("members/#", QoS::AtLeastOnce).await.unwrap();
    let (sub2, mut inbox2) = client(options(c.port(1), Protocol::V5, "m-sub2")).await;
    sub2.subscribe("members/#", QoS::AtLeastOnce).await.unwrap();
    let (pub1, _) = client(options(c.port(0), Protocol::V5, "m-pub1")).await;
    pub1.publish_to("members/a", "to the learner", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(next(&mut inbox4).await.as_deref(), Some("to the learner"));
    assert_eq!(next(&mut inbox2).await.as_deref(), Some("to the learner"));
    let (pub4, _) = client(options(c.port(four), Protocol::V5, "m-pub4")).await;
    pub4.publish_to("members/b", "from the learner", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(next(&mut inbox2).await.as_deref(), Some("from the learner"));
    assert_eq!(next(&mut inbox4).await.as_deref(), Some("from the learner"));
    // Node 5: five nodes, five voters.
    let five = c.add(free_port());
    c.up(five);
    let (ok, out) = c.cluster(0, &["join", &format!("5@{}", bind(&c, five))]);
    assert!(ok, "{out}");
    assert!(out.contains("members 1,2,3,4,5"), "{out}");
    members_are(&c, 2, "1,2,3,4,5").await;
    let (sub5, inbox5) = client(options(c.port(five), Protocol::V5, "m-sub5")).await;
    sub5.subscribe("five/#", QoS::AtLeastOnce).await.unwrap();
    // Routes on node 1: members/# on nodes 2 and 4, five/# on node 5.
    let port0 = c.port(0);
    let routes_are = move |want: &'static str| async move {
        let until = Instant::now() + WAIT;
        loop {
            let now = sys(port0, "routes").await;
            if now == want {
                return;
            }
            assert!(Instant::now() < until, "routes {now}, want {want}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    routes_are("3").await;
    // A member that is not the leader leaves; the leader can't.
    let leader = c.leader(&[0, 1, 2, 3, 4], None).await;
    let (ok, out) = c.cluster(0, &["leave", &leader.to_string()]);
    assert!(!ok && out.contains("leads"), "{out}");
    // Node 5 leaves (node 4 if 5 leads: either way a node with one of
    // the three routes).
    let gone = if leader == 5 { "4" } else { "5" };
    let (ok, out) = c.cluster(0, &["leave", gone]);
    assert!(ok, "{out}");
    // Four nodes: three voters and a learner.
    let after = out.trim().trim_start_matches("members ").to_string();
    assert_eq!(after.matches('L').count(), 1, "{after}");
    assert!(!after.contains(gone), "{after}");
    members_are(&c, 0, &after).await;
    // Its route is gone (the control above: it was there).
    routes_are("2").await;
    let (ok, out) = c.cluster(0, &["leave", gone]);
    assert!(!ok && out.contains("not a member"), "{out}");
    drop(inbox5);
}

/// The payloads that arrive until none has for half a second.
async fn drain(inbox: &mut Messages) -> Vec<String> {
    let mut got = Vec::new();
    while let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(500), inbox.recv()).await {
        got.push(String::from_utf8_lossy(&p.payload).into_owned());
    }
    got
}

/// A shared group with members on two nodes, one of which is killed: no
/// message acknowledged to its publisher is lost to the group. The node
/// that is down is passed over, and a message given to it before that was
/// known is refused to its publisher (which sends it again), never
/// acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_loses_nothing_acknowledged_when_a_members_node_dies() {
    let mut c = Cluster::start("shared-down", 3);
    c.leader(&[0, 1, 2], None).await;
    let (a, mut inbox_a) = client(options(c.port(1), Protocol::V5, "sh-a")).await;
    a.subscribe("$share/g/sh/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let (b, mut inbox_b) = client(options(c.port(2), Protocol::V5, "sh-b")).await;
    b.subscribe("$share/g/sh/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let (publ, _) = client(options(c.port(0), Protocol::V5, "sh-pub")).await;
    // The control: the group is served on both nodes.
    for i in 0..6 {
        let ack = publ
            .publish_to("sh/x", format!("before-{i}"), QoS::AtLeastOnce)
            .await
            .unwrap();
        assert!(!ack.reason_code.is_error(), "{ack:?}");
    }
    let (first_a, first_b) = (drain(&mut inbox_a).await, drain(&mut inbox_b).await);
    assert_eq!(first_a.len() + first_b.len(), 6, "{first_a:?} {first_b:?}");
    assert!(
        !first_a.is_empty() && !first_b.is_empty(),
        "{first_a:?} {first_b:?}"
    );
    drop((b, inbox_b));
    c.kill(2);
    // Each message sent until acknowledged.
    let mut acknowledged = BTreeSet::new();
    let mut refused = 0;
    for i in 0..30 {
        let payload = format!("after-{i}");
        let until = Instant::now() + WAIT;
        loop {
            let ack = publ
                .publish_to("sh/x", payload.clone(), QoS::AtLeastOnce)
                .await
                .unwrap();
            if !ack.reason_code.is_error() {
                break;
            }
            refused += 1;
            assert!(Instant::now() < until, "{payload} never acknowledged");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        acknowledged.insert(payload);
    }
    let mut got = BTreeSet::new();
    let until = Instant::now() + WAIT;
    while !acknowledged.is_subset(&got) && Instant::now() < until {
        if let Some(p) = next(&mut inbox_a).await {
            got.insert(p);
        }
    }
    let lost: Vec<_> = acknowledged.difference(&got).collect();
    assert!(
        lost.is_empty(),
        "acknowledged and lost: {lost:?} ({refused} refused first)"
    );
    eprintln!("{refused} publishes refused while node 3 was found down");
}
