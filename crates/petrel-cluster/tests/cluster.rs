//! Three nodes in this process, each a broker with its own MQTT port, data
//! directory and node-to-node port on 127.0.0.1, and clients no one here
//! wrote (rumqttc) connected to different nodes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use petrel_broker::config::{ClusterConfig, ListenerConfig};
use petrel_broker::{Broker, BrokerConfig, Server};
use petrel_cluster::Cluster;

const WAIT: Duration = Duration::from_secs(15);

use petrel_testkit::free_port;

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("petrel-cluster-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Node {
    cluster: Cluster,
    broker: Broker,
    mqtt: SocketAddr,
    _dir: Dir,
}

/// Start `n` nodes that know each other (with `secret`s by node).
async fn start(test: &str, secrets: &[&str]) -> Vec<Node> {
    let n = secrets.len();
    let binds: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let peers: Vec<String> = binds
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1))
        .collect();
    let mut nodes = Vec::new();
    for (i, secret) in secrets.iter().enumerate() {
        let dir = Dir::new(&format!("{test}-{}", i + 1));
        let config = BrokerConfig {
            listeners: vec![ListenerConfig::tcp(SocketAddr::from((
                [127, 0, 0, 1],
                free_port(),
            )))],
            sys_interval: 0,
            data_dir: Some(dir.0.clone()),
            cluster: Some(ClusterConfig {
                node_id: i as u64 + 1,
                bind: format!("127.0.0.1:{}", binds[i]),
                peers: peers.clone(),
                secret: Some(secret.to_string()),
                secret_file: None,
                peer_queue: 10_000,
                heartbeat_ms: 100,
                election_timeout_ms: 500,
                route_timeout: 10,
                forward_timeout: 5,
                max_frame_bytes: 16 << 20,
                snapshot_logs: 5000,
                max_pending_links: 4,
                shared_local: false,
            }),
            ..BrokerConfig::default()
        };
        config.validate().unwrap();
        let cluster = Cluster::new(config.cluster.clone().unwrap()).unwrap();
        let broker = Broker::builder(config)
            .peers(cluster.peers())
            .build()
            .unwrap();
        let server = Server::bind(broker.clone()).await.unwrap();
        let mqtt = server.local_addrs()[0];
        tokio::spawn(server.run());
        cluster.start(broker.clone()).await.unwrap();
        nodes.push(Node {
            cluster,
            broker,
            mqtt,
            _dir: dir,
        });
    }
    nodes
}

/// Wait until every node of `nodes` knows the same leader.
async fn leader(nodes: &[Node]) -> u64 {
    let until = Instant::now() + WAIT;
    loop {
        let leaders: Vec<Option<u64>> = nodes.iter().map(|n| n.cluster.leader()).collect();
        if let Some(Some(l)) = leaders.first() {
            if leaders.iter().all(|x| *x == Some(*l)) {
                return *l;
            }
        }
        assert!(Instant::now() < until, "no leader agreed: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const SECRET: &str = "a secret of the test cluster";

mod v311 {
    use super::*;
    use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet};

    pub(super) async fn client(id: &str, at: SocketAddr) -> (AsyncClient, EventLoop) {
        let mut o = MqttOptions::new(id, at.ip().to_string(), at.port());
        o.set_keep_alive(Duration::from_secs(30));
        let (c, mut ev) = AsyncClient::new(o, 100);
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) = ev.poll().await.unwrap() {
                break;
            }
        }
        (c, ev)
    }

    /// A client of `at` subscribed to `filter` (its SUBACK in).
    pub(super) async fn subscribed(
        id: &str,
        at: SocketAddr,
        filter: &str,
    ) -> (AsyncClient, EventLoop) {
        let (c, mut ev) = client(id, at).await;
        c.subscribe(filter, Q::AtLeastOnce).await.unwrap();
        until(&mut ev, |p| matches!(p, Packet::SubAck(_)).then_some(()))
            .await
            .expect("SUBACK");
        (c, ev)
    }

    /// Drive `ev` until `want` says yes to a packet (or `WAIT` passes).
    pub(super) async fn until<T>(
        ev: &mut EventLoop,
        mut want: impl FnMut(&Packet) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, ev.poll()).await {
                Err(_) => return None,
                Ok(Err(e)) => panic!("client failed: {e}"),
                Ok(Ok(Event::Incoming(p))) => {
                    if let Some(t) = want(&p) {
                        return Some(t);
                    }
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Drive `ev` for `d`, collecting the PUBLISHes' payloads.
    pub(super) async fn collect(ev: &mut EventLoop, d: Duration) -> Vec<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + d;
        let mut got = Vec::new();
        while let Ok(r) = tokio::time::timeout_at(deadline, ev.poll()).await {
            if let Event::Incoming(Packet::Publish(p)) = r.unwrap() {
                got.push(p.payload.to_vec());
            }
        }
        got
    }

    pub(super) use rumqttc::QoS as Q;
}

/// [`v311::until`] a PUBLISH: its payload.
fn publish_payload(p: &rumqttc::Packet) -> Option<Vec<u8>> {
    match p {
        rumqttc::Packet::Publish(p) => Some(p.payload.to_vec()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_on_one_node_publish_on_another_3_1_1() {
    let nodes = start("route311", &[SECRET; 3]).await;
    leader(&nodes).await;
    let (sub, mut sub_ev) = v311::client("sub", nodes[1].mqtt).await;
    let (publ, mut pub_ev) = v311::client("pub", nodes[0].mqtt).await;

    // Before anyone subscribes, no node wants the topic: a message
    // published (and acknowledged) now reaches nobody on node 2 (the
    // control below shows the same client would have seen one).
    publ.publish("home/kitchen/temp", v311::Q::AtLeastOnce, false, "early")
        .await
        .unwrap();
    v311::until(&mut pub_ev, |p| {
        matches!(p, rumqttc::Packet::PubAck(_)).then_some(())
    })
    .await
    .expect("PUBACK");
    tokio::spawn(async move { while pub_ev.poll().await.is_ok() {} });

    let asked = Instant::now();
    sub.subscribe("home/+/temp", v311::Q::AtLeastOnce)
        .await
        .unwrap();
    v311::until(&mut sub_ev, |p| {
        matches!(p, rumqttc::Packet::SubAck(_)).then_some(())
    })
    .await
    .expect("SUBACK");
    let route_commit = asked.elapsed();
    eprintln!("route commit (SUBSCRIBE to SUBACK, 3 nodes): {route_commit:?}");
    // The SUBACK came only once every node had the route.
    for n in &nodes {
        assert_eq!(n.cluster.routes_of(2), vec!["home/+/temp".to_string()]);
    }

    publ.publish("home/kitchen/temp", v311::Q::AtLeastOnce, false, "21.5")
        .await
        .unwrap();
    let got = v311::until(&mut sub_ev, publish_payload).await;
    assert_eq!(
        got.as_deref(),
        Some(&b"21.5"[..]),
        "the message crossed nodes"
    );

    // Unsubscribed: the route goes, and nothing more is sent to node 2.
    sub.unsubscribe("home/+/temp").await.unwrap();
    v311::until(&mut sub_ev, |p| {
        matches!(p, rumqttc::Packet::UnsubAck(_)).then_some(())
    })
    .await
    .unwrap();
    let until = Instant::now() + WAIT;
    while !nodes[0].cluster.routes_of(2).is_empty() {
        assert!(Instant::now() < until, "route not removed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = nodes[0]
        .cluster
        .counters()
        .forwarded
        .load(std::sync::atomic::Ordering::Relaxed);
    publ.publish("home/kitchen/temp", v311::Q::AtLeastOnce, false, "late")
        .await
        .unwrap();
    let late = v311::collect(&mut sub_ev, Duration::from_millis(500)).await;
    assert!(
        late.is_empty(),
        "after UNSUBSCRIBE nothing arrives: {late:?}"
    );
    assert_eq!(
        nodes[0]
            .cluster
            .counters()
            .forwarded
            .load(std::sync::atomic::Ordering::Relaxed),
        before,
        "and nothing is sent to the node"
    );
    // The early message (before the route) never arrived either: only
    // "21.5" did, which shows the subscriber would have seen it.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_on_one_node_publish_on_another_5_0() {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let nodes = start("route5", &[SECRET; 3]).await;
    leader(&nodes).await;
    let connect = |id: &str, at: SocketAddr| {
        let mut o = MqttOptions::new(id, at.ip().to_string(), at.port());
        o.set_keep_alive(Duration::from_secs(30));
        AsyncClient::new(o, 100)
    };
    let (sub, mut sub_ev) = connect("sub5", nodes[2].mqtt);
    let (publ, mut pub_ev) = connect("pub5", nodes[1].mqtt);
    tokio::spawn(async move { while pub_ev.poll().await.is_ok() {} });
    let deadline = tokio::time::Instant::now() + WAIT;
    sub.subscribe("sensors/#", QoS::ExactlyOnce).await.unwrap();
    loop {
        let e = tokio::time::timeout_at(deadline, sub_ev.poll())
            .await
            .expect("SUBACK in time")
            .unwrap();
        if let Event::Incoming(Packet::SubAck(_)) = e {
            break;
        }
    }
    // QoS 2 across nodes, with a user property kept.
    let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
        user_properties: vec![("site".into(), "north".into())],
        ..Default::default()
    };
    publ.publish_with_properties("sensors/a/b", QoS::ExactlyOnce, false, "x", props)
        .await
        .unwrap();
    let got = loop {
        let e = tokio::time::timeout_at(deadline, sub_ev.poll())
            .await
            .expect("the message in time")
            .unwrap();
        if let Event::Incoming(Packet::Publish(p)) = e {
            break p;
        }
    };
    assert_eq!(&got.payload[..], b"x");
    assert_eq!(got.qos, QoS::ExactlyOnce);
    let user = got
        .properties
        .map(|p| p.user_properties)
        .unwrap_or_default();
    assert_eq!(user, vec![("site".to_string(), "north".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_reach_every_node() {
    let nodes = start("retained", &[SECRET; 3]).await;
    leader(&nodes).await;
    let (publ, mut pub_ev) = v311::client("rpub", nodes[0].mqtt).await;
    publ.publish("status/door", v311::Q::AtLeastOnce, true, "open")
        .await
        .unwrap();
    v311::until(&mut pub_ev, |p| {
        matches!(p, rumqttc::Packet::PubAck(_)).then_some(())
    })
    .await
    .unwrap();
    tokio::spawn(async move { while pub_ev.poll().await.is_ok() {} });
    // The PUBACK came after every node took it: each holds it now.
    let filter = petrel_codec::TopicFilter::try_from("status/#").unwrap();
    for n in &nodes {
        let held = n.broker.retained(&filter);
        assert_eq!(held.len(), 1, "node {} holds it", n.cluster.node_id());
        assert_eq!(&held[0].payload[..], b"open");
    }
    // And a subscriber on node 3 gets it.
    let (sub, mut sub_ev) = v311::client("rsub", nodes[2].mqtt).await;
    sub.subscribe("status/#", v311::Q::AtLeastOnce)
        .await
        .unwrap();
    let got = v311::until(&mut sub_ev, publish_payload).await;
    assert_eq!(got.as_deref(), Some(&b"open"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_secret_is_refused() {
    // Node 3 has the wrong secret: nodes 1 and 2 form the cluster (a
    // majority) and refuse its links; it never learns a leader. The two
    // with the right secret agreeing is the control.
    let nodes = start("secret", &[SECRET, SECRET, "not the secret, but long"]).await;
    leader(&nodes[..2]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let m = nodes[2].cluster.metrics().unwrap();
    assert_ne!(m.current_leader, nodes[0].cluster.leader(), "{m:?}");
}

/// Read one length-delimited frame from a raw node link: its body, or
/// `None` if the link closed first.
async fn raw_frame(s: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut len))
        .await
        .ok()?
        .ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    tokio::time::timeout(WAIT, s.read_exact(&mut body))
        .await
        .ok()?
        .ok()?;
    Some(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_port_gives_little_to_whoever_has_not_proved_the_secret() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let nodes = start("unproven", &[SECRET; 3]).await;
    leader(&nodes).await;
    let addr = nodes[0].cluster.local_addr().unwrap();

    // A frame longer than any handshake's is refused as its length
    // arrives: the link closes without the rest being awaited (the
    // handshake itself may take 2 s).
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(raw_frame(&mut s).await.is_some(), "a challenge first");
    // (1 MB: less than the test's max_frame_bytes, so only the handshake's
    // bound can refuse it.)
    s.write_all(&1_000_000u32.to_be_bytes()).await.unwrap();
    s.write_all(&[0u8; 512]).await.unwrap();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_millis(1000), s.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "closed at once: {closed:?}"
    );

    // At most max_pending_links (4 here) links prove themselves at once:
    // four silent ones each get a challenge, a fifth is closed at once.
    let mut silent = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(raw_frame(&mut s).await.is_some(), "a challenge");
        silent.push(s);
    }
    let mut fifth = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(
        raw_frame(&mut fifth).await.is_none(),
        "the fifth gets nothing"
    );
    // Once they are gone, a link is answered again.
    drop(silent);
    let until = Instant::now() + WAIT;
    loop {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        if raw_frame(&mut s).await.is_some() {
            break;
        }
        assert!(Instant::now() < until, "never answered again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The nodes themselves were never disturbed.
    assert!(leader(&nodes).await > 0);
}

/// A shared subscription group with members on two nodes gets each
/// message once across the cluster, from whichever node it is published
/// on (a member's node included), and the nodes take turns; a direct
/// subscriber gets every message (the control: the messages all went
/// out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_across_nodes_gets_each_message_once() {
    use std::collections::BTreeSet;
    let nodes = start("shared", &[SECRET; 3]).await;
    leader(&nodes).await;
    let mut members = Vec::new();
    for (i, at) in [(1, nodes[1].mqtt), (2, nodes[2].mqtt)] {
        members.push(v311::subscribed(&format!("worker{i}"), at, "$share/work/jobs/#").await);
    }
    let (_direct, mut direct_ev) = v311::subscribed("watcher", nodes[2].mqtt, "jobs/#").await;
    // Published on node 1 (no member there), then on node 2 (a member's).
    let mut sent = BTreeSet::new();
    for (n, at) in [(0, nodes[0].mqtt), (1, nodes[1].mqtt)] {
        let (publ, mut pub_ev) = v311::client(&format!("boss{n}"), at).await;
        for i in 0..20 {
            let payload = format!("{n}-{i}");
            publ.publish("jobs/x", v311::Q::AtLeastOnce, false, payload.clone())
                .await
                .unwrap();
            sent.insert(payload.into_bytes());
        }
        let mut acks = 0;
        v311::until(&mut pub_ev, |p| {
            acks += usize::from(matches!(p, rumqttc::Packet::PubAck(_)));
            (acks == 20).then_some(())
        })
        .await
        .expect("every PUBACK");
    }
    let quiet = Duration::from_millis(1500);
    let mut got = Vec::new();
    for (_, ev) in &mut members {
        got.push(v311::collect(ev, quiet).await);
    }
    let watched: BTreeSet<Vec<u8>> = v311::collect(&mut direct_ev, quiet)
        .await
        .into_iter()
        .collect();
    assert_eq!(watched, sent, "the direct subscriber got every message");
    let all: Vec<&Vec<u8>> = got.iter().flatten().collect();
    let once: BTreeSet<&Vec<u8>> = all.iter().copied().collect();
    assert_eq!(all.len(), sent.len(), "each message once in the group");
    assert_eq!(once.len(), sent.len());
    // Each member had its share (the turns go round the nodes).
    for (i, g) in got.iter().enumerate() {
        assert!(g.len() >= 10, "member {i} got {} of 40", g.len());
    }
}
