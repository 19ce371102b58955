//! Operating the broker binary: SIGHUP reloads the configuration file
//! during traffic (limits, log level; a broken file is refused), and
//! mistakes in how the broker is started get errors that say what to write.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, petrel, Running};
use petrel_client::{connect, ConnectOptions, Protocol, QoS, ReasonCode, Status};

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("petrel-cli-ops-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "broker did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn hangup(pid: u32) {
    let ok = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

fn options(port: u16, id: &str) -> ConnectOptions {
    let mut o = ConnectOptions::new("127.0.0.1", port, id).protocol(Protocol::V5);
    o.reconnect.enabled = false;
    o
}

fn config(port: u16, log: &std::path::Path, level: &str, max_subs: usize) -> String {
    format!(
        "log_level = \"{level}\"\nlog_file = {log:?}\n\n[[listener]]\nbind = \"127.0.0.1:{port}\"\n\n[limits]\nmax_subscriptions_per_session = {max_subs}\n"
    )
}

/// Wait until the log file has a line containing `needle`.
async fn logged(log: &std::path::Path, needle: &str) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if std::fs::read_to_string(log).is_ok_and(|t| t.contains(needle)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn sighup_reloads_limits_and_the_log_level_during_traffic_and_refuses_a_broken_file() {
    const N: usize = 1500;
    let d = dir();
    let (file, log) = (d.join("reload.toml"), d.join("reload.log"));
    let _ = std::fs::remove_file(&log);
    let port = free_port();
    std::fs::write(&file, config(port, &log, "info", 2)).unwrap();
    let mut broker = Running(
        petrel()
            .args(["broker", "--memory", "-c"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(port);
    let (sub, mut inbox) = connect(options(port, "sub")).await.unwrap();
    sub.subscribe("t/1", QoS::AtLeastOnce).await.unwrap();
    sub.subscribe("t/2", QoS::AtLeastOnce).await.unwrap();
    // The limit in force: a third subscription is refused.
    let third = sub.subscribe("t/3", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(third.reason_codes, vec![ReasonCode::QUOTA_EXCEEDED]);
    let reader = tokio::spawn(async move {
        for i in 0..N {
            let m = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
                .await
                .expect("a message went missing")
                .unwrap();
            assert_eq!(&m.payload[..], i.to_string().as_bytes(), "in order");
        }
    });
    let (publ, _) = connect(options(port, "pub")).await.unwrap();
    let p = publ.clone();
    let traffic = tokio::spawn(async move {
        for i in 0..N {
            let ack = p
                .publish_to("t/1", i.to_string(), QoS::AtLeastOnce)
                .await
                .unwrap();
            assert!(!ack.reason_code.is_error(), "{i}: {ack:?}");
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // At info, no per-packet trace.
    assert!(!std::fs::read_to_string(&log)
        .unwrap()
        .contains("received PUBLISH"));
    // A new limit, the debug level, and a listener change that needs a
    // restart.
    let other = free_port();
    std::fs::write(&file, config(other, &log, "debug", 5)).unwrap();
    hangup(broker.0.id());
    assert!(logged(&log, "configuration reloaded").await);
    assert!(logged(&log, "keep their running values until a restart").await);
    let granted = sub.subscribe("t/3", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(granted.reason_codes, vec![ReasonCode::GRANTED_QOS_1]);
    // Debug: every packet traced, as Mosquitto's `log_type all`.
    assert!(logged(&log, "received PUBLISH (d0, q1, r0").await);
    assert!(logged(&log, "sent PUBACK").await);
    // The listener stayed where it was.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    // A broken file: refused, the broker up, the configuration in force
    // kept (the limit of 5 still lets a fourth subscription through).
    std::fs::write(&file, "[limits\nmax_subscriptions_per_session = 1\n").unwrap();
    hangup(broker.0.id());
    assert!(logged(&log, "reload refused").await);
    let fourth = sub.subscribe("t/4", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(fourth.reason_codes, vec![ReasonCode::GRANTED_QOS_1]);
    traffic.await.unwrap();
    reader.await.unwrap();
    assert!(matches!(sub.status(), Status::Connected { .. }));
    assert!(matches!(publ.status(), Status::Connected { .. }));
    assert!(
        broker.0.try_wait().unwrap().is_none(),
        "SIGHUP stopped the broker"
    );
}

/// `petrel broker` with these arguments fails at once: exit code and
/// standard error.
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let out = petrel().args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn a_mosquitto_conf_by_mistake_gets_its_petrel_translation() {
    let file = dir().join("mosquitto.conf");
    std::fs::write(
        &file,
        "# a Mosquitto file\nlistener 1883 0.0.0.0\nallow_anonymous true\npassword_file /etc/mosquitto/passwd\npersistence_location /var/lib/mosquitto/\nretain_available false\n",
    )
    .unwrap();
    let (code, err) = refused(&["broker", "--memory", "-c", file.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("looks like a mosquitto.conf"), "{err}");
    assert!(
        err.contains("[[listener]]\nbind = \"0.0.0.0:1883\""),
        "{err}"
    );
    assert!(err.contains("allow_anonymous = true"), "{err}");
    assert!(
        err.contains("password_file = \"/etc/mosquitto/passwd\""),
        "{err}"
    );
    assert!(err.contains("data_dir = \"/var/lib/mosquitto/\""), "{err}");
    assert!(err.contains("retain_available = false"), "{err}");
    // Positive control: a TOML error stays a TOML error.
    std::fs::write(&file, "log_level = \n").unwrap();
    let (_, err) = refused(&["broker", "--memory", "-c", file.to_str().unwrap()]);
    assert!(!err.contains("looks like a mosquitto.conf"), "{err}");
    assert!(err.contains("TOML parse error"), "{err}");
}

#[test]
fn a_bind_without_a_port_or_with_a_host_name_says_what_to_write() {
    let file = dir().join("noport.toml");
    std::fs::write(
        &file,
        "allow_anonymous = true\n[[listener]]\nbind = \"0.0.0.0\"\n",
    )
    .unwrap();
    let (code, err) = refused(&["broker", "--memory", "-c", file.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("write \"0.0.0.0:1883\""), "{err}");
    std::fs::write(
        &file,
        "[[listener]]\ntransport = \"tls\"\nbind = \"localhost:8883\"\n",
    )
    .unwrap();
    let (_, err) = refused(&["broker", "--memory", "-c", file.to_str().unwrap()]);
    assert!(err.contains("\"127.0.0.1:8883\""), "{err}");
    let (code, err) = refused(&["broker", "--memory", "--bind", "localhost"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--bind 127.0.0.1"), "{err}");
    let (code, err) = refused(&["broker", "--memory", "--http", "127.0.0.1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("\"127.0.0.1:8080\""), "{err}");
}

#[test]
fn bind_with_a_port_is_taken_as_both() {
    let port = free_port();
    let _broker = Running(
        petrel()
            .args(["broker", "--memory", "--bind", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(port);
}

#[tokio::test]
async fn ctl_lists_and_kicks_through_the_api_with_the_token_the_broker_wrote() {
    let d = dir().join("ctl-data");
    let _ = std::fs::remove_dir_all(&d);
    let (port, http) = (free_port(), free_port());
    let _broker = Running(
        petrel()
            .args([
                "broker",
                "-p",
                &port.to_string(),
                "--http",
                &format!("127.0.0.1:{http}"),
                "--data-dir",
            ])
            .arg(&d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(port);
    wait_port(http);
    let (c, _) = connect(options(port, "ctl-victim")).await.unwrap();
    let ctl = |args: &[&str]| {
        let out = petrel()
            .arg("ctl")
            .args(["--url", &format!("http://127.0.0.1:{http}"), "--data-dir"])
            .arg(&d)
            .args(args)
            .env_remove("PETREL_TOKEN")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = ctl(&["clients"]);
    assert!(
        ok && out.contains("ctl-victim") && out.contains("5.0"),
        "{out}"
    );
    let (ok, out) = ctl(&["stats", "--json"]);
    assert!(ok && out.contains("\"clients_connected\": 1"), "{out}");
    let (ok, out) = ctl(&["kick", "ctl-victim"]);
    assert!(ok, "{out}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while matches!(c.status(), Status::Connected { .. }) {
        assert!(Instant::now() < deadline, "not kicked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (ok, out) = ctl(&["kick", "ctl-victim"]);
    assert!(!ok && out.contains("404"), "{out}");
    // Without the token file: refused, with a hint.
    let out = petrel()
        .args([
            "ctl",
            "--url",
            &format!("http://127.0.0.1:{http}"),
            "--data-dir",
            "/nonexistent",
            "clients",
        ])
        .env_remove("PETREL_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    let (ok, out) = ctl(&["health"]);
    assert!(ok && out.contains("ok"), "{out}");
}

#[tokio::test]
async fn dropped_messages_are_reported_at_warn_once_per_interval_with_counts() {
    let d = dir();
    let (file, log) = (d.join("drops.toml"), d.join("drops.log"));
    let _ = std::fs::remove_file(&log);
    let port = free_port();
    std::fs::write(
        &file,
        format!(
            "log_file = {log:?}\n[[listener]]\nbind = \"127.0.0.1:{port}\"\n[limits]\nmax_queued_messages = 2\n"
        ),
    )
    .unwrap();
    let _broker = Running(
        petrel()
            .args(["broker", "--memory", "-c"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(port);
    // A persistent session, away: its queue holds 2 messages.
    let mut o = options(port, "away");
    o.clean_start = false;
    o.session_expiry = 300;
    let (away, _inbox) = connect(o).await.unwrap();
    away.subscribe("d/#", QoS::AtLeastOnce).await.unwrap();
    away.disconnect().await.unwrap();
    let (publ, _) = connect(options(port, "pub")).await.unwrap();
    for i in 0..12 {
        publ.publish_to("d/x", i.to_string(), QoS::AtLeastOnce)
            .await
            .unwrap();
    }
    assert!(logged(&log, "messages dropped").await, "no warning");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("queue_full=10"), "{text}");
    // More drops within the interval: no second line yet.
    for i in 0..5 {
        publ.publish_to("d/x", i.to_string(), QoS::AtLeastOnce)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("messages dropped").count(), 1, "{text}");
}
