//! The client against Mosquitto (Debian's `mosquitto`, which `.ci/run`
//! installs), started here on a free loopback port, in 3.1.1 and 5.0 —
//! including a broker restart in the middle of a QoS 1 and a QoS 2 stream.
//!
//! Without a `mosquitto` binary these tests say so and pass, unless
//! `PETREL_REQUIRE_MOSQUITTO` is set (CI sets it), in which case they fail.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use petrel_client::rustls::{CertificateError, Error as CertError};
use petrel_client::{
    connect, ConnectOptions, LastWill, Message, Properties, QoS, ReasonCode, Status, TopicName,
};

struct Mosquitto {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Mosquitto {
    /// Mosquitto with persistence on a free port, or `None` if it is not
    /// installed (and not required).
    fn start(name: &str) -> Option<Self> {
        let found = Command::new("mosquitto").arg("-h").output().is_ok();
        if !found {
            assert!(
                std::env::var_os("PETREL_REQUIRE_MOSQUITTO").is_none(),
                "mosquitto is required but not installed"
            );
            eprintln!("mosquitto not installed: skipping (CI runs this)");
            return None;
        }
        let port = petrel_testkit::free_port();
        let dir = std::env::temp_dir().join(format!("petrel-mosq-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Run as root, Mosquitto drops to its own user: it must be able to
        // write its persistence file here.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        std::fs::write(
            dir.join("mosquitto.conf"),
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nmax_queued_messages 10000\n",
                dir.display()
            ),
        )
        .unwrap();
        let mut m = Self {
            child: None,
            port,
            dir,
        };
        m.run();
        Some(m)
    }

    fn run(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (Mosquitto saves its persistence file), then start again.
    fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .unwrap();
            c.wait().unwrap();
        }
        self.run();
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn every_qos_both_ways_retained_and_wills() {
    let Some(mosq) = Mosquitto::start("qos") else {
        return;
    };
    let addr = mosq.addr();
    for proto in BOTH {
        let (sub, mut inbox) = connect(options(addr, proto, &format!("s{proto:?}")))
            .await
            .unwrap();
        let (publ, _) = connect(options(addr, proto, &format!("p{proto:?}")))
            .await
            .unwrap();
        for sub_qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let t = format!("q/{proto:?}");
            let ack = sub.subscribe(&t, sub_qos).await.unwrap();
            assert_eq!(ack.reason_codes, vec![ReasonCode(sub_qos as u8)]);
            for pub_qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let payload = format!("{sub_qos:?}/{pub_qos:?}");
                let ack = publ.publish_to(&t, payload.clone(), pub_qos).await.unwrap();
                assert!(!ack.reason_code.is_error());
                let m = next(&mut inbox).await;
                assert_eq!(m.payload, payload.as_bytes());
                assert_eq!(m.qos.qos(), pub_qos.min(sub_qos));
            }
        }
        // Retained.
        let mut m = Message::new(
            TopicName::try_from(format!("ret/{proto:?}").as_str()).unwrap(),
            Bytes::from_static(b"kept"),
            QoS::AtLeastOnce,
        );
        m.retain = true;
        publ.publish(m).await.unwrap();
        sub.subscribe(&format!("ret/{proto:?}"), QoS::AtLeastOnce)
            .await
            .unwrap();
        let r = next(&mut inbox).await;
        assert!(r.retain);
        assert_eq!(&r.payload[..], b"kept");
        // A will, published when the connection is taken over.
        let wt = format!("will/{proto:?}");
        sub.subscribe(&wt, QoS::AtLeastOnce).await.unwrap();
        let mut o = options(addr, proto, &format!("mortal{proto:?}"));
        o.reconnect.enabled = false;
        o.will = Some(LastWill {
            topic: TopicName::try_from(wt.as_str()).unwrap(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::new(),
        });
        let (mortal, _) = connect(o).await.unwrap();
        let (_usurper, _) = connect(options(addr, proto, &format!("mortal{proto:?}")))
            .await
            .unwrap();
        let w = next(&mut inbox).await;
        assert_eq!(w.topic.as_str(), wt);
        assert_eq!(
            mortal.wait_for(|s| *s == Status::Closed).await,
            Status::Closed
        );
        sub.disconnect().await.unwrap();
        publ.disconnect().await.unwrap();
    }
}

#[tokio::test]
async fn a_persistent_session_gets_what_was_published_while_away() {
    let Some(mosq) = Mosquitto::start("persist") else {
        return;
    };
    away_and_back(mosq.addr(), "away/t").await;
}

/// A broker restarted in the middle of a QoS 1 and a QoS 2 stream: no
/// message is lost, and no QoS 2 message is delivered twice.
#[tokio::test]
async fn a_broker_restart_mid_stream_loses_nothing_and_duplicates_no_qos2() {
    let Some(mut mosq) = Mosquitto::start("restart") else {
        return;
    };
    let addr = mosq.addr();
    stream_across_restart(addr, &mut async || mosq.restart()).await;
}

/// A CA, a server certificate for `localhost` and a client certificate,
/// made with the `openssl` command in `dir`.
fn make_certs(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let ok = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=petrel-test-ca",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    for (name, ext) in [("server", true), ("client", false)] {
        let cn = format!("/CN={}", if ext { "localhost" } else { "petrel-client" });
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &cn,
        ]);
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        if ext {
            args.extend(["-extfile".to_string(), "san.ext".to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args);
    }
    for f in std::fs::read_dir(dir).unwrap() {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(f.unwrap().path(), std::fs::Permissions::from_mode(0o644));
    }
}

/// The rustls error under a [`petrel_client::ClientError::Tls`].
fn tls_cause(err: &petrel_client::ClientError) -> Option<&CertError> {
    use std::error::Error as _;
    match err {
        petrel_client::ClientError::Tls { .. } => err.source()?.downcast_ref::<CertError>(),
        _ => None,
    }
}

#[tokio::test]
async fn tls_with_a_ca_file_a_client_certificate_and_insecure() {
    let Some(mut mosq) = Mosquitto::start("tls") else {
        return;
    };
    let dir = mosq.dir.clone();
    make_certs(&dir);
    let free = petrel_testkit::free_port;
    let (tls_port, mtls_port) = (free(), free());
    let tls = |port: u16, require: bool| {
        format!(
            "listener {port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
             require_certificate {require}\n",
            d = dir.display()
        )
    };
    let conf = dir.join("mosquitto.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&tls(tls_port, false));
    text.push_str(&tls(mtls_port, true));
    std::fs::write(&conf, text).unwrap();
    mosq.restart();
    for port in [tls_port, mtls_port] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "TLS listener did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let opts = |host: &str, port: u16, tls: petrel_client::TlsOptions| {
        let mut o = ConnectOptions::new(host, port, "tls-client");
        o.tls = Some(tls);
        o.reconnect.enabled = false;
        o
    };
    let ca = petrel_client::TlsOptions {
        ca_file: Some(dir.join("ca.pem")),
        ..Default::default()
    };
    // The right CA and host name: a working connection.
    let (c, mut inbox) = connect(opts("localhost", tls_port, ca.clone()))
        .await
        .unwrap();
    c.subscribe("tls/t", QoS::AtLeastOnce).await.unwrap();
    c.publish_to("tls/t", "secret", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(&next(&mut inbox).await.payload[..], b"secret");
    c.disconnect().await.unwrap();
    // The system roots don't know this CA: the rustls error is the source.
    let err = connect(opts("localhost", tls_port, Default::default()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            tls_cause(&err),
            Some(CertError::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        ),
        "{err:?}"
    );
    // The certificate is for localhost, not 127.0.0.1 …
    let err = connect(opts("127.0.0.1", tls_port, ca.clone()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            tls_cause(&err),
            Some(CertError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ))
        ),
        "{err:?}"
    );
    // … which --insecure accepts (the chain is still checked).
    let insecure = petrel_client::TlsOptions {
        insecure: true,
        ..ca.clone()
    };
    connect(opts("127.0.0.1", tls_port, insecure))
        .await
        .unwrap()
        .0
        .disconnect()
        .await
        .unwrap();
    // A listener that requires a client certificate.
    assert!(connect(opts("localhost", mtls_port, ca.clone()))
        .await
        .is_err());
    let with_cert = petrel_client::TlsOptions {
        client_cert: Some((dir.join("client.pem"), dir.join("client.key"))),
        ..ca
    };
    connect(opts("localhost", mtls_port, with_cert))
        .await
        .unwrap()
        .0
        .disconnect()
        .await
        .unwrap();
}

#[tokio::test]
async fn user_name_and_password_are_sent_and_a_wrong_one_is_refused() {
    let Some(mut mosq) = Mosquitto::start("auth") else {
        return;
    };
    let dir = mosq.dir.clone();
    let passwd = dir.join("passwd");
    let ok = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwd)
        .args(["alice", "s3cret"])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let conf = dir.join("mosquitto.conf");
    let text = std::fs::read_to_string(&conf).unwrap().replace(
        "allow_anonymous true",
        &format!("allow_anonymous false\npassword_file {}", passwd.display()),
    );
    std::fs::write(&conf, text).unwrap();
    mosq.restart();
    let addr = mosq.addr();
    for proto in BOTH {
        let mut o = options(addr, proto, "alice-client");
        o.username = Some("alice".into());
        o.password = Some(Bytes::from_static(b"s3cret"));
        let (c, _) = connect(o.clone()).await.unwrap();
        c.disconnect().await.unwrap();
        o.password = Some(Bytes::from_static(b"wrong"));
        let err = connect(o).await.unwrap_err();
        // 3.1.1 return code 4 / 5.0 0x86, or 5 / 0x87 (not authorized).
        assert!(
            matches!(err, petrel_client::ClientError::Refused(rc) if rc.0 == 0x86 || rc.0 == 0x87),
            "{proto:?}: {err:?}"
        );
    }
}

#[tokio::test]
async fn websocket_and_secure_websocket() {
    let Some(mut mosq) = Mosquitto::start("ws") else {
        return;
    };
    let certs = common::certs::Certs::new("mosquitto-wss");
    let free = petrel_testkit::free_port;
    let (ws_port, wss_port) = (free(), free());
    let conf = mosq.dir.join("mosquitto.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!(
        "listener {ws_port} 127.0.0.1\nprotocol websockets\n\
         listener {wss_port} 127.0.0.1\nprotocol websockets\ncertfile {}\nkeyfile {}\n",
        certs.cert.display(),
        certs.key.display()
    ));
    std::fs::write(&conf, text).unwrap();
    mosq.restart();
    for port in [ws_port, wss_port] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "WebSocket listener did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let ws = |proto, id: &str| {
        ConnectOptions::from_url(&format!("ws://127.0.0.1:{ws_port}/mqtt"), id)
            .unwrap()
            .protocol(proto)
    };
    let wss = |proto, id: &str| {
        let mut o = ConnectOptions::from_url(&format!("wss://localhost:{wss_port}/mqtt"), id)
            .unwrap()
            .protocol(proto);
        o.tls = Some(petrel_client::TlsOptions {
            ca_file: Some(certs.ca.clone()),
            ..Default::default()
        });
        o
    };
    for proto in BOTH {
        // A subscriber over WebSocket, a publisher over secure WebSocket
        // and one over TCP: every message reaches it whole, the large one
        // across many frames.
        let (sub, mut inbox) = connect(ws(proto, "ws-sub")).await.unwrap();
        sub.subscribe("ws/#", QoS::ExactlyOnce).await.unwrap();
        let (secure, _) = connect(wss(proto, "wss-pub")).await.unwrap();
        let (plain, _) = connect(options(mosq.addr(), proto, "tcp-pub"))
            .await
            .unwrap();
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            secure.publish_to("ws/s", "secure", qos).await.unwrap();
            assert_eq!(&next(&mut inbox).await.payload[..], b"secure");
            plain.publish_to("ws/p", "plain", qos).await.unwrap();
            assert_eq!(&next(&mut inbox).await.payload[..], b"plain");
        }
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        secure
            .publish_to("ws/big", big.clone(), QoS::AtLeastOnce)
            .await
            .unwrap();
        assert!(next(&mut inbox).await.payload == big);
        for c in [sub, secure, plain] {
            c.disconnect().await.unwrap();
        }
    }
}
