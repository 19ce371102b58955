//! A bridge's promise kept across SIGKILL: QoS 1 and 2 messages waiting
//! for a remote broker that is down are in the durable store; the broker
//! binary is killed, started again, and once the remote (a real Mosquitto,
//! started by the test) comes back every one of them arrives there, QoS 2
//! once.
//!
//! Without a `mosquitto` binary the test says so and passes, unless
//! `PETREL_REQUIRE_MOSQUITTO` is set (CI sets it).

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, listening, petrel, Running};
use petrel_client::{connect, ConnectOptions, Protocol, QoS};

/// Mosquitto with persistence in `dir`, on `port`, until dropped.
struct Mosquitto(Child);

impl Mosquitto {
    fn start(dir: &std::path::Path, port: u16) -> Self {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\n",
                dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(child)
    }

    /// SIGTERM (it saves its persistence file), and wait.
    fn stop(mut self) {
        Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn subscriber(port: u16) -> ConnectOptions {
    let mut o = ConnectOptions::new("127.0.0.1", port, "site-sub").protocol(Protocol::V3_1_1);
    o.clean_start = false;
    o
}

/// The broker binary with its data directory and a bridge to `remote`.
fn broker(dir: &std::path::Path, port: u16, remote: u16) -> Running {
    let conf = dir.join("petrel.toml");
    std::fs::write(
        &conf,
        format!(
            "[[listener]]\nbind = \"127.0.0.1:{port}\"\n\n[[bridge]]\nname = \"site\"\n\
             address = \"127.0.0.1:{remote}\"\ntopic = [\"data/# out 2 \\\"\\\" site/\"]\n\
             reconnect_min_ms = 100\nreconnect_max_s = 1\n"
        ),
    )
    .unwrap();
    let child = petrel()
        .args(["broker", "-c"])
        .arg(&conf)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    listening(child, port)
}

#[tokio::test]
async fn messages_waiting_for_the_remote_survive_sigkill() {
    if Command::new("mosquitto").arg("-h").output().is_err() {
        assert!(
            std::env::var_os("PETREL_REQUIRE_MOSQUITTO").is_none(),
            "mosquitto is required but not installed"
        );
        eprintln!("mosquitto not installed: skipping (CI runs this)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("petrel-bridge-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mosq_dir = dir.join("mosquitto");
    std::fs::create_dir_all(&mosq_dir).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&mosq_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let (port, remote) = (free_port(), free_port());
    // The subscriber's session at Mosquitto, kept while Mosquitto is down.
    let mosq = Mosquitto::start(&mosq_dir, remote);
    let (sub, _) = connect(subscriber(remote)).await.unwrap();
    sub.subscribe("site/#", QoS::ExactlyOnce).await.unwrap();
    sub.disconnect().await.unwrap();
    mosq.stop();

    // The remote is down: acknowledged messages wait in the bridge's queue.
    let mut running = broker(&dir, port, remote);
    let mut o = ConnectOptions::new("127.0.0.1", port, "edge-pub");
    o.reconnect.enabled = false;
    let (p, _) = connect(o).await.unwrap();
    // Until the bridge's local side subscribed (from then on its session
    // takes what the rule matches): an in-process connection, at once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut sent = 0u32;
    for i in 0..60u32 {
        let qos = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        let ack = p
            .publish_to(&format!("data/{i}"), i.to_string(), qos)
            .await
            .unwrap();
        assert!(!ack.reason_code.is_error());
        sent += 1;
    }
    // SIGKILL: nothing is written at exit.
    running.0.kill().unwrap();
    running.0.wait().unwrap();
    drop(running);

    // Started again, then the remote comes back.
    let _running = broker(&dir, port, remote);
    let _mosq = Mosquitto::start(&mosq_dir, remote);
    let (_sub, mut got) = connect(subscriber(remote)).await.unwrap();
    let mut seen: HashMap<u32, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < sent as usize {
        assert!(
            Instant::now() < deadline,
            "only {} of {sent} arrived",
            seen.len()
        );
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), got.recv()).await {
            assert!(m.topic.as_str().starts_with("site/data/"), "{m:?}");
            let i: u32 = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
            *seen.entry(i).or_default() += 1;
        }
    }
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), got.recv()).await {
        let i: u32 = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
        *seen.entry(i).or_default() += 1;
    }
    let twice: Vec<_> = seen
        .iter()
        .filter(|(i, n)| *i % 2 == 1 && **n > 1)
        .collect();
    assert!(twice.is_empty(), "QoS 2 messages twice: {twice:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
