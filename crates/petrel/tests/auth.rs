//! Authentication and authorisation as an operator meets them: secure
//! defaults at start, malformed files refused, `petrel passwd` files used
//! by the broker and by `petrel pub` (password and SCRAM), and SIGHUP
//! reloading the rules during traffic without dropping anything.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, petrel, Running};
use petrel_client::{connect, ConnectOptions, Protocol, QoS, ReasonCode, Status};

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("petrel-cli-auth-{}", std::process::id()));
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

fn passwd(args: &[&str]) {
    let out = petrel().arg("passwd").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A broker with a password file (alice/secret, bob/b0b), a SCRAM file
/// (alice/secret) and `acl`; its port.
fn broker(name: &str, acl: &str) -> (Running, u16, PathBuf) {
    let d = dir();
    let pw = d.join(format!("{name}.passwd"));
    passwd(&["-c", "-b", pw.to_str().unwrap(), "alice", "secret"]);
    passwd(&[
        "-b",
        "-H",
        "sha512-pbkdf2",
        pw.to_str().unwrap(),
        "bob",
        "b0b",
    ]);
    let scram = d.join(format!("{name}.scram"));
    passwd(&[
        "--scram",
        "-c",
        "-b",
        scram.to_str().unwrap(),
        "alice",
        "secret",
    ]);
    let acl_path = d.join(format!("{name}.acl"));
    std::fs::write(&acl_path, acl).unwrap();
    let port = free_port();
    let conf = d.join(format!("{name}.toml"));
    std::fs::write(
        &conf,
        format!(
            "sys_interval = 0\npassword_file = {pw:?}\nacl_file = {acl_path:?}\n\
             [scram]\nfile = {scram:?}\n[[listener]]\nbind = \"127.0.0.1:{port}\"\n"
        ),
    )
    .unwrap();
    let child = petrel()
        .args(["broker", "--memory", "-c", conf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port);
    (Running(child), port, acl_path)
}

#[test]
fn a_listener_off_loopback_without_authentication_does_not_start() {
    let port = free_port().to_string();
    let out = petrel()
        .args(["broker", "--memory", "--bind", "0.0.0.0", "-p", &port])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("allow_anonymous = true"), "{stderr}");
    assert!(stderr.contains("0.0.0.0"), "{stderr}");
    // Saying so explicitly starts it (the positive control).
    let conf = dir().join("open.toml");
    std::fs::write(
        &conf,
        format!("allow_anonymous = true\n[[listener]]\nbind = \"0.0.0.0:{port}\"\n"),
    )
    .unwrap();
    let running = Running(
        petrel()
            .args(["broker", "--memory", "-c", conf.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(port.parse().unwrap());
    drop(running);
}

#[test]
fn a_malformed_password_or_acl_line_stops_the_start_and_names_the_line() {
    let d = dir();
    let pw = d.join("bad.passwd");
    std::fs::write(&pw, "# users\nalice:not-hashed\n").unwrap();
    let acl = d.join("bad.acl");
    std::fs::write(&acl, "user a\ntopic read ok/#\ntopik read x\n").unwrap();
    for (key, path, line) in [("password_file", &pw, 2), ("acl_file", &acl, 3)] {
        let conf = d.join(format!("bad-{key}.toml"));
        std::fs::write(&conf, format!("{key} = {path:?}\n")).unwrap();
        let out = petrel()
            .args([
                "broker",
                "--memory",
                "-c",
                conf.to_str().unwrap(),
                "-p",
                &free_port().to_string(),
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{key}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("{}:{line}:", path.display())),
            "{key}: {stderr}"
        );
    }
}

fn pub_args(port: u16) -> Vec<String> {
    [
        "pub",
        "-p",
        &port.to_string(),
        "-q",
        "1",
        "-t",
        "home/x",
        "-m",
        "hi",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn petrel_passwd_files_work_with_the_broker_and_petrel_pub() {
    let (_b, port, _) = broker("files", "user alice\ntopic readwrite home/#\n");
    let run = |extra: &[&str]| petrel().args(pub_args(port)).args(extra).output().unwrap();
    for v in ["311", "5"] {
        assert!(
            run(&["-V", v, "-u", "alice", "-P", "secret"])
                .status
                .success(),
            "{v}"
        );
        for wrong in [&["-u", "alice", "-P", "nope"][..], &[]] {
            let out = run(&[&["-V", v][..], wrong].concat());
            assert_eq!(out.status.code(), Some(1), "{v} {wrong:?}");
        }
    }
    // SCRAM: the password proven, never sent.
    for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let ok = run(&[
            "-V",
            "5",
            "--auth-method",
            mechanism,
            "-u",
            "alice",
            "-P",
            "secret",
        ]);
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
    }
    let bad = run(&[
        "-V",
        "5",
        "--auth-method",
        "SCRAM-SHA-256",
        "-u",
        "alice",
        "-P",
        "wrong",
    ]);
    assert_eq!(bad.status.code(), Some(1));
}

fn options(port: u16, id: &str) -> ConnectOptions {
    let mut o = ConnectOptions::new("127.0.0.1", port, id).protocol(Protocol::V5);
    o.username = Some("alice".into());
    o.password = Some("secret".into());
    o.reconnect.enabled = false;
    o
}

fn hangup(pid: u32) {
    let ok = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Publish until the ACL file's new rule lets `probe/x` through (0x87
/// before: the rule is not yet in force).
async fn until_allowed(client: &petrel_client::Client) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        let ack = client
            .publish_to("probe/x", "p", QoS::AtLeastOnce)
            .await
            .unwrap();
        if !ack.reason_code.is_error() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn sighup_reloads_the_rules_during_traffic_without_dropping_anything() {
    const N: usize = 2000;
    let (mut broker, port, acl) = broker("reload", "user alice\ntopic readwrite home/#\n");
    let (sub, mut inbox) = connect(options(port, "sub")).await.unwrap();
    sub.subscribe("home/#", QoS::AtLeastOnce).await.unwrap();
    // The subscriber reads as the messages come, in its own task.
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < N {
            let m = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
                .await
                .expect("a message went missing")
                .unwrap();
            assert_eq!(m.topic.as_str(), format!("home/{got}"), "in order");
            got += 1;
        }
        got
    });
    let (publ, _) = connect(options(port, "pub")).await.unwrap();
    // Before: probe/x is denied.
    let ack = publ
        .publish_to("probe/x", "p", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
    // Traffic in its own task, QoS 1, every PUBACK checked.
    let p = publ.clone();
    let traffic = tokio::spawn(async move {
        for i in 0..N {
            let ack = p
                .publish_to(&format!("home/{i}"), i.to_string(), QoS::AtLeastOnce)
                .await
                .unwrap();
            assert!(!ack.reason_code.is_error(), "{i}: {ack:?}");
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::write(
        &acl,
        "user alice\ntopic readwrite home/#\ntopic write probe/#\n",
    )
    .unwrap();
    hangup(broker.0.id());
    assert!(
        until_allowed(&publ).await,
        "the new rule never came into force"
    );
    traffic.await.unwrap();
    assert_eq!(reader.await.unwrap(), N);
    // Nobody was disconnected.
    assert!(matches!(sub.status(), Status::Connected { .. }));
    assert!(matches!(publ.status(), Status::Connected { .. }));
    // A broken file is refused: the broker stays up, the rules in force
    // stay (probe/ is still writable, home/ too).
    std::fs::write(&acl, "user alice\ntopic readwrite home/#\nbroken\n").unwrap();
    hangup(broker.0.id());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ack = publ
        .publish_to("probe/y", "p", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert!(!ack.reason_code.is_error(), "{ack:?}");
    assert!(matches!(publ.status(), Status::Connected { .. }));
    assert!(
        broker.0.try_wait().unwrap().is_none(),
        "SIGHUP stopped the broker"
    );
}
