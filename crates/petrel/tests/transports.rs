//! The broker binary's TLS listener as an operator meets it: SIGHUP
//! swaps its certificate while clients stay connected.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, petrel, Running};
use petrel_client::{connect, ConnectOptions, Protocol, QoS, TlsOptions};

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("petrel-cli-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA `name`.pem and a server certificate it signs, for localhost, as
/// `name`-server.pem / .key.
fn pki(d: &Path, name: &str) {
    let p = |f: &str| d.join(f).to_str().unwrap().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &p(&format!("{name}.key")),
        "-out",
        &p(&format!("{name}.pem")),
        "-days",
        "2",
        "-subj",
        &format!("/CN={name}"),
    ]);
    std::fs::write(
        d.join("ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost\n",
    )
    .unwrap();
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &p(&format!("{name}-server.key")),
        "-out",
        &p("server.csr"),
        "-subj",
        "/CN=localhost",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p("server.csr"),
        "-CA",
        &p(&format!("{name}.pem")),
        "-CAkey",
        &p(&format!("{name}.key")),
        "-CAcreateserial",
        "-out",
        &p(&format!("{name}-server.pem")),
        "-days",
        "2",
        "-extfile",
        &p("ext"),
    ]);
}

fn trusting(port: u16, ca: &Path, id: &str) -> ConnectOptions {
    let mut o = ConnectOptions::new("localhost", port, id).protocol(Protocol::V5);
    o.tls = Some(TlsOptions {
        ca_file: Some(ca.to_path_buf()),
        ..TlsOptions::default()
    });
    o.reconnect.enabled = false;
    o.connect_timeout = Duration::from_secs(3);
    o
}

#[tokio::test]
async fn sighup_swaps_the_certificate_and_keeps_connected_clients() {
    let d = dir();
    pki(&d, "old");
    pki(&d, "new");
    let (cert, key) = (d.join("server.pem"), d.join("server.key"));
    std::fs::copy(d.join("old-server.pem"), &cert).unwrap();
    std::fs::copy(d.join("old-server.key"), &key).unwrap();
    let (port, tls_port) = (free_port(), free_port());
    let conf = d.join("petrel.toml");
    std::fs::write(
        &conf,
        format!(
            "sys_interval = 0\n[[listener]]\nbind = \"127.0.0.1:{port}\"\n\
             [[listener]]\ntransport = \"tls\"\nbind = \"127.0.0.1:{tls_port}\"\n\
             certfile = {cert:?}\nkeyfile = {key:?}\n"
        ),
    )
    .unwrap();
    let child = petrel()
        .args(["broker", "--memory", "-c", conf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let _broker = Running(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_err() {
        assert!(Instant::now() < deadline, "broker did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let old_ca = d.join("old.pem");
    let new_ca = d.join("new.pem");
    // Connected before: trusts the old CA.
    let (before, mut inbox) = connect(trusting(tls_port, &old_ca, "before"))
        .await
        .unwrap();
    before.subscribe("t/hup", QoS::AtLeastOnce).await.unwrap();
    // Positive control: the new CA does not vouch for the old certificate.
    assert!(connect(trusting(tls_port, &new_ca, "early")).await.is_err());
    std::fs::copy(d.join("new-server.pem"), &cert).unwrap();
    std::fs::copy(d.join("new-server.key"), &key).unwrap();
    let ok = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    // New connections get the new certificate once the signal is handled.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        if let Ok((c, _)) = connect(trusting(tls_port, &new_ca, "after")).await {
            break c;
        }
        assert!(Instant::now() < deadline, "the new certificate never came");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(connect(trusting(tls_port, &old_ca, "stale")).await.is_err());
    // The connection made before still works, both ways.
    after
        .publish_to("t/hup", "across the reload", QoS::AtLeastOnce)
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"across the reload");
    before
        .publish_to("t/other", "still sending", QoS::AtLeastOnce)
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&d);
}
