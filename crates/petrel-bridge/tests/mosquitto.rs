//! Bridges between Petrel and a real Mosquitto started by each test, in
//! MQTT 3.1.1 and 5.0: both directions with prefixes, both ways without a
//! loop, Mosquitto restarted mid-stream, the remote away for a while, TLS,
//! wrong credentials, and Mosquitto bridging into Petrel.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use petrel_client::{connect, Protocol, QoS};
use support::*;

/// The host name, as the default bridge client id has it.
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "petrel".into())
}

fn version(p: Protocol) -> &'static str {
    if p == Protocol::V5 {
        "5.0"
    } else {
        "3.1.1"
    }
}

/// Out with prefixes (`edge/sensors/#` here is `site1/sensors/#` there)
/// and in with prefixes (`remote/cmd/#` there is `local/cmd/#` here), each
/// message once, with its payload, QoS and retain flag.
#[tokio::test]
async fn petrel_to_mosquitto_and_back_with_prefixes() {
    for proto in BOTH {
        let Some(mosq) = Mosquitto::start(&format!("prefix{}", proto.level()), "") else {
            return;
        };
        let petrel = Petrel::start(vec![bridge(&format!(
            "name = \"up\"\naddress = \"{}\"\nprotocol = \"{}\"\n\
             topic = [\"sensors/# out 1 edge/ site1/\", \"cmd/# in 1 local/ remote/\"]",
            mosq.addr(),
            version(proto)
        ))])
        .await;
        petrel.wait_up("up").await;
        let here = petrel.addr.to_string();
        let (there_sub, mut there_in) = client(&mosq.addr(), proto, "there-sub").await;
        there_sub
            .subscribe("site1/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        let (here_pub, _) = client(&here, proto, "here-pub").await;
        until_flowing(&here_pub, "edge/sensors/probe", &mut there_in).await;
        here_pub
            .publish_to("edge/sensors/kitchen", "21.5", QoS::AtLeastOnce)
            .await
            .unwrap();
        let m = next(&mut there_in).await;
        assert_eq!(m.topic.as_str(), "site1/sensors/kitchen");
        assert_eq!(&m.payload[..], b"21.5");
        assert_eq!(m.qos.qos(), QoS::AtLeastOnce);
        // Not under the rule: not forwarded (the control above shows the
        // path works).
        here_pub
            .publish_to("edge/other/x", "no", QoS::AtLeastOnce)
            .await
            .unwrap();
        // The other way.
        let (here_sub, mut here_in) = client(&here, proto, "here-sub").await;
        here_sub
            .subscribe("local/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        let (there_pub, _) = client(&mosq.addr(), proto, "there-pub").await;
        until_flowing(&there_pub, "remote/cmd/probe", &mut here_in).await;
        there_pub
            .publish_to("remote/cmd/open", "now", QoS::AtLeastOnce)
            .await
            .unwrap();
        let m = next(&mut here_in).await;
        assert_eq!(m.topic.as_str(), "local/cmd/open");
        assert_eq!(&m.payload[..], b"now");
        // A retained message stays retained on the other side.
        here_pub
            .publish({
                let mut r = petrel_client::Message::new(
                    petrel_client::TopicName::try_from("edge/sensors/door").unwrap(),
                    "closed".into(),
                    QoS::AtLeastOnce,
                );
                r.retain = true;
                r
            })
            .await
            .unwrap();
        let live = next(&mut there_in).await;
        assert_eq!(live.topic.as_str(), "site1/sensors/door");
        let (late, mut late_in) = client(&mosq.addr(), proto, "late").await;
        late.subscribe("site1/sensors/door", QoS::AtLeastOnce)
            .await
            .unwrap();
        let kept = next(&mut late_in).await;
        assert!(kept.retain, "retained at the remote");
        assert_eq!(&kept.payload[..], b"closed");
        let rest = drain(&mut there_in, Duration::from_millis(300)).await;
        assert!(
            rest.iter()
                .all(|m| m.topic.as_str() != "edge/other/x" && !m.topic.as_str().contains("other")),
            "{rest:?}"
        );
        let b = petrel.bridge("up");
        assert!(b.forwarded_out >= 3 && b.forwarded_in >= 2, "{b:?}");
        for b in petrel.bridges {
            b.stop().await;
        }
    }
}

/// `both` on one topic tree: a message published on either broker arrives
/// once on each, never echoed back (No Local at the remote for 5.0,
/// Mosquitto's bridge flag for 3.1.1, No Local locally).
#[tokio::test]
async fn a_bridge_both_ways_makes_no_loop() {
    for proto in BOTH {
        let Some(mosq) = Mosquitto::start(&format!("loop{}", proto.level()), "") else {
            return;
        };
        let petrel = Petrel::start(vec![bridge(&format!(
            "name = \"loop\"\naddress = \"{}\"\nprotocol = \"{}\"\ntopic = [\"shared/# both 1\"]",
            mosq.addr(),
            version(proto)
        ))])
        .await;
        petrel.wait_up("loop").await;
        let here = petrel.addr.to_string();
        let (hs, mut here_in) = client(&here, proto, "hs").await;
        hs.subscribe("shared/#", QoS::AtLeastOnce).await.unwrap();
        let (ts, mut there_in) = client(&mosq.addr(), proto, "ts").await;
        ts.subscribe("shared/#", QoS::AtLeastOnce).await.unwrap();
        let (hp, _) = client(&here, proto, "hp").await;
        let (tp, _) = client(&mosq.addr(), proto, "tp").await;
        until_flowing(&hp, "shared/probe-out", &mut there_in).await;
        until_flowing(&tp, "shared/probe-in", &mut here_in).await;
        drain(&mut here_in, Duration::from_millis(300)).await;
        drain(&mut there_in, Duration::from_millis(300)).await;
        hp.publish_to("shared/from-petrel", "p", QoS::AtLeastOnce)
            .await
            .unwrap();
        tp.publish_to("shared/from-mosquitto", "m", QoS::AtLeastOnce)
            .await
            .unwrap();
        let count = |ms: &[petrel_client::Publish]| {
            let mut c: HashMap<String, usize> = HashMap::new();
            for m in ms {
                *c.entry(m.topic.as_str().to_string()).or_default() += 1;
            }
            c
        };
        let here_got = count(&drain(&mut here_in, Duration::from_millis(800)).await);
        let there_got = count(&drain(&mut there_in, Duration::from_millis(800)).await);
        // Each arrives (so a second copy could have been seen), once.
        for got in [&here_got, &there_got] {
            assert_eq!(
                got.get("shared/from-petrel"),
                Some(&1),
                "{proto:?}: {got:?}"
            );
            assert_eq!(
                got.get("shared/from-mosquitto"),
                Some(&1),
                "{proto:?}: {got:?}"
            );
        }
        for b in petrel.bridges {
            b.stop().await;
        }
    }
}

/// Mosquitto restarted (SIGTERM, start) in the middle of a stream of 300
/// messages forwarded out: at QoS 1 every message arrives, at QoS 2 every
/// message arrives exactly once.
#[tokio::test]
async fn mosquitto_restarted_mid_stream_loses_nothing() {
    for proto in BOTH {
        for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let name = format!("restart{}{}", proto.level(), qos as u8);
            let Some(mut mosq) = Mosquitto::start(&name, "") else {
                return;
            };
            let petrel = Petrel::start(vec![bridge(&format!(
                "name = \"r\"\naddress = \"{}\"\nprotocol = \"{}\"\ntopic = [\"stream/# out {}\"]\n\
                 reconnect_min_ms = 50\nreconnect_max_s = 1\ninflight = 20",
                mosq.addr(),
                version(proto),
                qos as u8
            ))])
            .await;
            petrel.wait_up("r").await;
            // A persistent subscriber at Mosquitto that comes back after
            // the restart: mosquitto_sub (a client no one here wrote).
            let args = vec![
                "-h".to_string(),
                "127.0.0.1".into(),
                "-p".into(),
                mosq.port.to_string(),
                "-i".into(),
                "stream-sub".into(),
                "-c".into(),
                "-q".into(),
                (qos as u8).to_string(),
                "-t".into(),
                "stream/#".into(),
                // The observer speaks 3.1.1 whatever the bridge speaks:
                // Mosquitto 2.0.11 stops after its in-flight window when
                // it delivers a queue of QoS 2 messages to a 5.0
                // mosquitto_sub (seen here; not the bridge's doing: each
                // message was acknowledged to the bridge with PUBCOMP).
                "-V".into(),
                "311".into(),
            ];
            let mut sub = tokio::process::Command::new("mosquitto_sub")
                .args(&args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("mosquitto_sub (mosquitto-clients)");
            let (tx, mut got) = tokio::sync::mpsc::unbounded_channel::<String>();
            let stdout = sub.stdout.take().expect("piped");
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(stdout).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            });
            let (p, _) = client(&petrel.addr.to_string(), proto, "stream-pub").await;
            let flowing = Instant::now() + WAIT;
            loop {
                p.publish_to("stream/probe", "probe", QoS::AtLeastOnce)
                    .await
                    .unwrap();
                if let Ok(Some(_)) =
                    tokio::time::timeout(Duration::from_millis(300), got.recv()).await
                {
                    break;
                }
                assert!(Instant::now() < flowing, "nothing flowed");
            }
            // The subscriber goes away (its session stays at Mosquitto, and
            // gets the stream): the restart below concerns the bridge only.
            let _ = sub.kill().await;
            let total = 300u32;
            let publisher = tokio::spawn(async move {
                for i in 0..total {
                    p.publish_to(&format!("stream/{i}"), i.to_string(), qos)
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                p
            });
            let before = petrel.bridge("r").forwarded_out;
            let deadline = Instant::now() + Duration::from_secs(30);
            while petrel.bridge("r").forwarded_out < before + 100 {
                assert!(Instant::now() < deadline, "{:?}", petrel.bridge("r"));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            mosq.stop();
            tokio::time::sleep(Duration::from_millis(300)).await;
            mosq.run();
            let p = publisher.await.unwrap();
            while petrel.bridge("r").forwarded_out < before + u64::from(total) {
                assert!(
                    Instant::now() < deadline,
                    "{proto:?} {qos:?}: {:?}",
                    petrel.bridge("r")
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Every message forwarded is at Mosquitto, for the subscriber.
            let mut sub = tokio::process::Command::new("mosquitto_sub")
                .args(&args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let stdout = sub.stdout.take().unwrap();
            let (tx, mut got) = tokio::sync::mpsc::unbounded_channel::<String>();
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(stdout).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            });
            let mut seen: HashMap<u32, usize> = HashMap::new();
            while let Ok(Some(line)) =
                tokio::time::timeout(Duration::from_secs(2), got.recv()).await
            {
                if let Ok(i) = line.parse::<u32>() {
                    *seen.entry(i).or_default() += 1;
                }
            }
            let _ = sub.kill().await;
            let missing: Vec<u32> = (0..total).filter(|i| !seen.contains_key(i)).collect();
            assert!(missing.is_empty(), "{proto:?} {qos:?}: missing {missing:?}");
            if qos == QoS::ExactlyOnce {
                let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
                assert!(twice.is_empty(), "{proto:?}: QoS 2 duplicates {twice:?}");
            }
            drop(p);
            for b in petrel.bridges {
                b.stop().await;
            }
        }
    }
}

/// The remote away: messages for it wait in the bridge's queue, bounded by
/// `queue_max_messages` (the rest dropped and counted); back, the queue
/// drains in order.
#[tokio::test]
async fn while_the_remote_is_away_the_queue_waits_within_its_bound() {
    for proto in BOTH {
        let Some(mut mosq) = Mosquitto::start(&format!("away{}", proto.level()), "") else {
            return;
        };
        // A persistent subscriber at Mosquitto, then Mosquitto goes away.
        let mut so = options(&mosq.addr(), proto, "away-sub");
        so.clean_start = false;
        so.session_expiry = 3600;
        let (sub, _) = connect(so.clone()).await.unwrap();
        sub.subscribe("q/#", QoS::AtLeastOnce).await.unwrap();
        sub.disconnect().await.unwrap();
        mosq.stop();
        let petrel = Petrel::start(vec![bridge(&format!(
            "name = \"away\"\naddress = \"{}\"\nprotocol = \"{}\"\ntopic = [\"q/# out 1\"]\n\
             inflight = 10\nqueue_max_messages = 30\nreconnect_min_ms = 50\nreconnect_max_s = 1",
            mosq.addr(),
            version(proto)
        ))])
        .await;
        let (p, _) = client(&petrel.addr.to_string(), proto, "away-pub").await;
        // Until the bridge's local side subscribed (messages before that
        // have nowhere to go).
        let deadline = Instant::now() + WAIT;
        while !petrel
            .broker
            .subscriptions()
            .iter()
            .any(|s| s.client_id == "petrel-bridge.away")
        {
            assert!(Instant::now() < deadline, "no local subscription");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for i in 0..50u32 {
            p.publish_to(&format!("q/{i:02}"), i.to_string(), QoS::AtLeastOnce)
                .await
                .unwrap();
        }
        // 10 in flight to the bridge, 30 waiting, 10 dropped.
        let deadline = Instant::now() + WAIT;
        while petrel.bridge("away").dropped < 10 {
            assert!(Instant::now() < deadline, "{:?}", petrel.bridge("away"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let b = petrel.bridge("away");
        assert!(!b.up);
        assert_eq!(b.queued, 30, "{b:?}");
        assert_eq!(b.dropped, 10, "{b:?}");
        // The link's state, retained on Mosquitto's notification topic.
        let (watch, mut state) = client(&petrel.addr.to_string(), proto, "state").await;
        let topic = format!("$SYS/broker/connection/{}.away/state", host());
        watch.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
        let down = next(&mut state).await;
        assert_eq!((&down.payload[..], down.retain), (&b"0"[..], true));
        mosq.run();
        petrel.wait_up("away").await;
        let up = next(&mut state).await;
        assert_eq!(&up.payload[..], b"1", "announced when it came up");
        let (_sub, mut got) = connect(so).await.unwrap();
        let mut order = Vec::new();
        while order.len() < 40 {
            let m = next(&mut got).await;
            order.push(
                std::str::from_utf8(&m.payload)
                    .unwrap()
                    .parse::<u32>()
                    .unwrap(),
            );
        }
        assert_eq!(order, (0..40).collect::<Vec<u32>>(), "{proto:?}: in order");
        assert!(drain(&mut got, Duration::from_millis(300)).await.is_empty());
        assert_eq!(petrel.bridge("away").queued, 0);
        for b in petrel.bridges {
            b.stop().await;
        }
    }
}

/// A certificate authority and a server certificate for `localhost`.
fn certificates(dir: &Dir) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "bridge test CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.path("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.path("server.key"), key.serialize_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for f in ["ca.pem", "server.pem", "server.key"] {
        std::fs::set_permissions(dir.path(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

/// TLS to Mosquitto, its certificate checked against a CA file: messages
/// go both ways. Without the CA (the system's roots), the link does not
/// come up and each attempt is counted.
#[tokio::test]
async fn tls_to_mosquitto_with_a_ca() {
    let certs = Dir::new("tls-certs");
    certificates(&certs);
    let tls_port = free_port();
    let Some(_mosq) = Mosquitto::start(
        "tls",
        &format!(
            "listener {tls_port} 127.0.0.1\ncafile {c}/ca.pem\ncertfile {c}/server.pem\nkeyfile {c}/server.key\n",
            c = certs.0.display()
        ),
    ) else {
        return;
    };
    let petrel = Petrel::start(vec![
        bridge(&format!(
            "name = \"tls\"\naddress = \"localhost:{tls_port}\"\ntransport = \"tls\"\nca_file = \"{}\"\n\
             topic = [\"secure/# both 1\"]",
            path_str(&certs.path("ca.pem"))
        )),
        bridge(&format!(
            "name = \"untrusted\"\naddress = \"localhost:{tls_port}\"\ntransport = \"tls\"\n\
             topic = [\"never/# out 1\"]\nreconnect_min_ms = 50\nreconnect_max_s = 1"
        )),
    ])
    .await;
    petrel.wait_up("tls").await;
    let here = petrel.addr.to_string();
    let mut o = options(&format!("localhost:{tls_port}"), Protocol::V5, "tls-sub");
    o.tls = Some(petrel_client::TlsOptions {
        ca_file: Some(certs.path("ca.pem")),
        ..Default::default()
    });
    let (ts, mut there_in) = connect(o.clone()).await.unwrap();
    ts.subscribe("secure/#", QoS::AtLeastOnce).await.unwrap();
    let (hp, _) = client(&here, Protocol::V5, "tls-pub").await;
    until_flowing(&hp, "secure/probe", &mut there_in).await;
    let (hs, mut here_in) = client(&here, Protocol::V5, "tls-here-sub").await;
    hs.subscribe("secure/#", QoS::AtLeastOnce).await.unwrap();
    until_flowing(&ts, "secure/back", &mut here_in).await;
    let deadline = Instant::now() + WAIT;
    while petrel.bridge("untrusted").connect_failures < 2 {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            petrel.bridge("untrusted")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!petrel.bridge("untrusted").up);
    assert!(petrel.bridge("tls").up);
    for b in petrel.bridges {
        b.stop().await;
    }
}

/// A log line sink for the tests that read what the bridge logged.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Wrong credentials: the refusal is logged with its reason, counted in
/// the metrics, and retried with backoff (a few attempts, not a storm);
/// the right ones (the control) connect.
#[tokio::test]
async fn wrong_credentials_are_logged_counted_and_retried() {
    if !have_mosquitto() {
        return;
    }
    // A Mosquitto whose only listener needs a password.
    let dir = Dir::new("creds");
    let passwd = dir.path("passwd");
    let made = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwd)
        .args(["edge", "right"])
        .status()
        .unwrap();
    assert!(made.success());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o644)).unwrap();
    let port = free_port();
    let conf = dir.path("m.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n",
            passwd.display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let lines = Lines::default();
    let sink = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let petrel = Petrel::start(vec![
        bridge(&format!(
            "name = \"wrong\"\naddress = \"127.0.0.1:{port}\"\nusername = \"edge\"\npassword = \"wrong\"\n\
             topic = [\"x/# out 1\"]\nreconnect_min_ms = 200\nreconnect_max_s = 2"
        )),
        bridge(&format!(
            "name = \"right\"\naddress = \"127.0.0.1:{port}\"\nusername = \"edge\"\npassword = \"right\"\n\
             topic = [\"y/# out 1\"]"
        )),
    ])
    .await;
    petrel.wait_up("right").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let wrong = petrel.bridge("wrong");
    assert!(!wrong.up);
    // Backoff: 200 ms doubling (with jitter) to 2 s: a few attempts in
    // three seconds, not hundreds.
    assert!((2..=8).contains(&wrong.connect_failures), "{wrong:?}");
    let log = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("cannot connect to the remote broker") && l.contains("wrong"))
        .unwrap_or_else(|| panic!("no log line in:\n{log}"));
    assert!(
        line.to_lowercase().contains("not authorized")
            || line.to_lowercase().contains("bad user name or password"),
        "the reason in words: {line}"
    );
    for b in petrel.bridges {
        b.stop().await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Mosquitto bridging into Petrel with its own `connection` block (Petrel
/// as the bridge target, Mosquitto's bridge flag accepted in 3.1.1): its
/// messages arrive, and Petrel's come back to it without a loop.
#[tokio::test]
async fn mosquitto_bridges_into_petrel() {
    for (proto, mosq_version) in [(Protocol::V3_1_1, "mqttv311"), (Protocol::V5, "mqttv50")] {
        let petrel = Petrel::start(vec![]).await;
        let Some(mosq) = Mosquitto::start(
            &format!("into{}", proto.level()),
            &format!(
                "connection to-petrel\naddress 127.0.0.1:{}\nbridge_protocol_version {mosq_version}\n\
                 topic m2p/# out 1\ntopic both/# both 1\nrestart_timeout 1\n",
                petrel.addr.port()
            ),
        ) else {
            return;
        };
        let here = petrel.addr.to_string();
        let (hs, mut here_in) = client(&here, proto, "target-sub").await;
        hs.subscribe("#", QoS::AtLeastOnce).await.unwrap();
        let (tp, _) = client(&mosq.addr(), proto, "target-pub").await;
        until_flowing(&tp, "m2p/probe", &mut here_in).await;
        tp.publish_to("m2p/reading", "7", QoS::AtLeastOnce)
            .await
            .unwrap();
        let m = next(&mut here_in).await;
        assert_eq!(m.topic.as_str(), "m2p/reading");
        // both/#: a message from either side arrives once on each.
        let (ts, mut there_in) = client(&mosq.addr(), proto, "target-there").await;
        ts.subscribe("both/#", QoS::AtLeastOnce).await.unwrap();
        let (hp, _) = client(&here, proto, "target-here-pub").await;
        until_flowing(&hp, "both/probe", &mut there_in).await;
        drain(&mut here_in, Duration::from_millis(300)).await;
        hp.publish_to("both/from-petrel", "p", QoS::AtLeastOnce)
            .await
            .unwrap();
        tp.publish_to("both/from-mosquitto", "m", QoS::AtLeastOnce)
            .await
            .unwrap();
        let count = |ms: Vec<petrel_client::Publish>, t: &str| {
            ms.iter().filter(|m| m.topic.as_str() == t).count()
        };
        let here_got = drain(&mut here_in, Duration::from_millis(800)).await;
        let there_got = drain(&mut there_in, Duration::from_millis(800)).await;
        assert_eq!(
            count(here_got.clone(), "both/from-petrel"),
            1,
            "{proto:?} {here_got:?}"
        );
        assert_eq!(count(here_got, "both/from-mosquitto"), 1, "{proto:?}");
        assert_eq!(
            count(there_got.clone(), "both/from-petrel"),
            1,
            "{proto:?} {there_got:?}"
        );
        assert_eq!(count(there_got, "both/from-mosquitto"), 1, "{proto:?}");
    }
}

/// Over WebSocket to Mosquitto's websockets listener: messages go out.
#[tokio::test]
async fn websocket_to_mosquitto() {
    let ws_port = free_port();
    let Some(mosq) = Mosquitto::start(
        "ws",
        &format!("listener {ws_port} 127.0.0.1\nprotocol websockets\n"),
    ) else {
        return;
    };
    let petrel = Petrel::start(vec![bridge(&format!(
        "name = \"ws\"\naddress = \"127.0.0.1:{ws_port}\"\ntransport = \"ws\"\nws_path = \"/\"\n\
         topic = [\"web/# out 1\"]"
    ))])
    .await;
    petrel.wait_up("ws").await;
    let (ts, mut there_in) = client(&mosq.addr(), Protocol::V5, "ws-sub").await;
    ts.subscribe("web/#", QoS::AtLeastOnce).await.unwrap();
    let (hp, _) = client(&petrel.addr.to_string(), Protocol::V5, "ws-pub").await;
    until_flowing(&hp, "web/probe", &mut there_in).await;
    for b in petrel.bridges {
        b.stop().await;
    }
}

/// A broker that refuses its clients retained messages and wildcard
/// filters still lets its bridges work: the bridge's local side is the
/// operator's own. Out through a `sensors/#` rule (a wildcard filter on
/// the local side), in with a retained message that stays retained here;
/// the link stays up. The control: a client of the same broker is
/// refused the wildcard filter.
#[tokio::test]
async fn a_bridge_is_not_held_to_the_clients_switches() {
    let Some(mosq) = Mosquitto::start("switches", "") else {
        return;
    };
    let limits = petrel_broker::config::Limits {
        retain_available: false,
        wildcard_subscriptions: false,
        ..Default::default()
    };
    let petrel = Petrel::start_with(
        petrel_testkit::free_port(),
        vec![bridge(&format!(
            "name = \"up\"\naddress = \"{}\"\nprotocol = \"5.0\"\n\
             topic = [\"sensors/# out 1 edge/ site1/\", \"cmd/# in 1 local/ remote/\"]",
            mosq.addr()
        ))],
        limits,
    )
    .await;
    petrel.wait_up("up").await;
    let here = petrel.addr.to_string();
    let (there_sub, mut there_in) = client(&mosq.addr(), Protocol::V5, "there-sub").await;
    there_sub
        .subscribe("site1/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let (here_pub, _) = client(&here, Protocol::V5, "here-pub").await;
    until_flowing(&here_pub, "edge/sensors/probe", &mut there_in).await;
    let refused = here_pub
        .subscribe("edge/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(refused.reason_codes[0].0, 0xA2, "{refused:?}");
    let (there_pub, _) = client(&mosq.addr(), Protocol::V5, "there-pub").await;
    there_pub
        .publish({
            let mut r = petrel_client::Message::new(
                petrel_client::TopicName::try_from("remote/cmd/door").unwrap(),
                "shut".into(),
                QoS::AtLeastOnce,
            );
            r.retain = true;
            r
        })
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let kept = loop {
        let (late, mut late_in) = client(&here, Protocol::V5, "late").await;
        late.subscribe("local/cmd/door", QoS::AtLeastOnce)
            .await
            .unwrap();
        let got = drain(&mut late_in, Duration::from_millis(300)).await;
        late.disconnect().await.unwrap();
        if let Some(m) = got.into_iter().next() {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "the retained message never came in"
        );
    };
    assert!(kept.retain);
    assert_eq!(&kept.payload[..], b"shut");
    let b = petrel.bridge("up");
    assert_eq!(b.connects, 1, "the link stayed up: {b:?}");
    for b in petrel.bridges {
        b.stop().await;
    }
}
