//! The HTTP listener over real sockets: metrics that move by exactly the
//! traffic sent, every API route with and without the token and with bad
//! input, and a kick the client sees as DISCONNECT 0x98.

#[path = "../../petrel-broker/tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use petrel_broker::config::HttpConfig;
use petrel_codec::{Protocol, QoS, ReasonCode};
use serde_json::Value;
use support::{Raw, TestBroker, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "a-test-token";

struct Http {
    addr: SocketAddr,
}

struct Answer {
    status: u16,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl Http {
    /// One request on its own connection; `token`: the bearer token sent.
    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> Answer {
        let mut s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
            .await
            .expect("answered in time")
            .unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, rest) = text.split_once("\r\n\r\n").unwrap();
        let status = head[9..12].parse().unwrap();
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(rest)
        } else {
            rest.to_string()
        };
        Answer { status, body }
    }

    async fn get(&self, path: &str) -> Answer {
        self.call("GET", path, Some(TOKEN), "").await
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

async fn start(http: HttpConfig) -> (TestBroker, Http) {
    let broker = support::start().await;
    let admin = petrel_admin::AdminServer::bind(broker.broker.clone(), &http)
        .await
        .unwrap();
    let addr = admin.local_addr().unwrap();
    tokio::spawn(admin.run());
    (broker, Http { addr })
}

fn with_token() -> HttpConfig {
    HttpConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        token_hash: Some(petrel_admin::token_hash(TOKEN)),
        ..HttpConfig::default()
    }
}

/// The value of one sample in Prometheus text: `name{labels} value`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn metrics_move_by_exactly_the_traffic_sent() {
    let (b, http) = start(with_token()).await;
    let mut sub = Raw::connect(b.addr, Protocol::V5, "m-sub").await;
    sub.subscribe("m/#", QoS::ExactlyOnce).await;
    let mut publisher = Raw::connect(b.addr, Protocol::V3_1_1, "m-pub").await;
    let before = http.get("/metrics").await;
    assert_eq!(before.status, 200);
    let before = before.body;

    // 3 QoS 0 of 5 bytes, 2 QoS 1 of 7 bytes, 1 QoS 2 of 11 bytes.
    for _ in 0..3 {
        publisher
            .publish("m/a", b"12345", QoS::AtMostOnce, false)
            .await;
    }
    for _ in 0..2 {
        publisher
            .publish("m/b", b"1234567", QoS::AtLeastOnce, false)
            .await;
    }
    publisher
        .publish("m/c", b"12345678901", QoS::ExactlyOnce, false)
        .await;
    for _ in 0..6 {
        let p = sub.recv_publish().await;
        if let Some(id) = p.qos.packet_id() {
            match p.qos.qos() {
                QoS::AtLeastOnce => {
                    sub.send(petrel_codec::Packet::PubAck(petrel_codec::PubAck::new(id)))
                        .await
                }
                _ => {
                    sub.send(petrel_codec::Packet::PubRec(petrel_codec::PubAck::new(id)))
                        .await;
                    assert!(matches!(
                        sub.recv().await,
                        Some(petrel_codec::Packet::PubRel(_))
                    ));
                    sub.send(petrel_codec::Packet::PubComp(petrel_codec::PubAck::new(id)))
                        .await;
                }
            }
        }
    }
    // The publisher's task reports what it counted when it next wakes:
    // one more round trip settles it.
    publisher
        .publish("other", b"x", QoS::AtLeastOnce, false)
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = http.get("/metrics").await.body;
    let moved = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(moved(r#"petrel_messages_received_total{qos="0"}"#), 3.0);
    assert_eq!(moved(r#"petrel_messages_received_total{qos="1"}"#), 3.0); // + "other"
    assert_eq!(moved(r#"petrel_messages_received_total{qos="2"}"#), 1.0);
    assert_eq!(
        moved(r#"petrel_payload_received_bytes_total{qos="0"}"#),
        15.0
    );
    assert_eq!(
        moved(r#"petrel_payload_received_bytes_total{qos="1"}"#),
        15.0
    );
    assert_eq!(
        moved(r#"petrel_payload_received_bytes_total{qos="2"}"#),
        11.0
    );
    assert_eq!(moved(r#"petrel_messages_sent_total{qos="0"}"#), 3.0);
    assert_eq!(moved(r#"petrel_messages_sent_total{qos="1"}"#), 2.0);
    assert_eq!(moved(r#"petrel_messages_sent_total{qos="2"}"#), 1.0);
    assert_eq!(moved(r#"petrel_payload_sent_bytes_total{qos="2"}"#), 11.0);
    assert_eq!(moved("petrel_delivery_latency_seconds_count"), 6.0);
    assert_eq!(
        sample(
            &after,
            r#"petrel_connections{listener="tcp 127.0.0.1:0",protocol="5.0"}"#
        ) + sample(
            &after,
            r#"petrel_connections{listener="tcp 127.0.0.1:0",protocol="3.1.1"}"#
        ),
        2.0
    );
    assert_eq!(sample(&after, "petrel_subscriptions"), 1.0);

    // Connects and disconnects by reason.
    let (_c, ack) = Raw::connect_with(b.addr, Protocol::V5, "m-bad", |c| {
        c.username = Some(petrel_codec::MqttString::from_static("x"));
    })
    .await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS); // anonymous broker: accepted
    publisher.disconnect().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let last = http.get("/metrics").await.body;
    let moved = |series: &str| sample(&last, series) - sample(&after, series);
    assert_eq!(moved(r#"petrel_connacks_total{reason="success"}"#), 1.0);
    assert_eq!(
        moved(r#"petrel_disconnects_total{reason="client_disconnect"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"petrel_disconnects_total{reason="administrative"}"#),
        0.0
    );
}

#[tokio::test]
async fn every_route_needs_the_token_and_refuses_bad_input_in_json() {
    let (b, http) = start(with_token()).await;
    let mut c = Raw::connect(b.addr, Protocol::V5, "route-client").await;
    c.subscribe("r/#", QoS::AtLeastOnce).await;
    c.publish("r/kept", b"retained!", QoS::AtMostOnce, true)
        .await;
    assert_eq!(&c.recv_publish().await.payload[..], b"retained!");
    let routes = [
        ("GET", "/metrics"),
        ("GET", "/api/v1/stats"),
        ("GET", "/api/v1/clients"),
        ("GET", "/api/v1/clients/route-client"),
        ("GET", "/api/v1/sessions"),
        ("GET", "/api/v1/subscriptions"),
        ("GET", "/api/v1/retained"),
        ("GET", "/api/v1/retained/r/kept"),
        ("GET", "/api/v1/config"),
        ("DELETE", "/api/v1/clients/nobody"),
        ("DELETE", "/api/v1/sessions/nobody"),
        ("DELETE", "/api/v1/retained/r/none"),
        ("POST", "/api/v1/publish"),
        ("GET", "/api/v1/drain"),
        ("POST", "/api/v1/drain"),
        ("DELETE", "/api/v1/drain"),
    ];
    for (method, path) in routes {
        for token in [None, Some("wrong")] {
            let a = http.call(method, path, token, "").await;
            assert_eq!(a.status, 401, "{method} {path} with {token:?}");
            assert_eq!(a.json()["error"]["code"], "unauthorized");
        }
    }
    // With the token (the positive control): answered.
    for (path, check) in [
        ("/api/v1/stats", "clients_connected"),
        ("/api/v1/config", "limits"),
    ] {
        let a = http.get(path).await;
        assert_eq!(a.status, 200, "{path}");
        assert!(a.json().get(check).is_some(), "{path}: {}", a.body);
    }
    let clients = http.get("/api/v1/clients?client_id=route").await.json();
    assert_eq!(clients["meta"]["count"], 1);
    assert_eq!(clients["data"][0]["client_id"], "route-client");
    assert_eq!(clients["data"][0]["protocol"], "5.0");
    // The client's own address (IPv4 as it came, not the IPv6-mapped form
    // the engine's record keeps it in), and the listener it came through.
    let address = clients["data"][0]["address"].as_str().unwrap_or("");
    let port: u16 = address
        .strip_prefix("127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    assert!(port != 0 && port != b.addr.port(), "{address}");
    assert_eq!(clients["data"][0]["listener"], "tcp 127.0.0.1:0");
    assert_eq!(
        http.get("/api/v1/clients?protocol=3.1.1").await.json()["meta"]["count"],
        0
    );
    let one = http.get("/api/v1/clients/route-client").await.json();
    assert_eq!(one["subscription_list"][0]["filter"], "r/#");
    let subs = http.get("/api/v1/subscriptions?filter=r/").await.json();
    assert_eq!(subs["data"][0]["qos"], 1);
    let kept = http.get("/api/v1/retained?filter=r/%2B").await.json();
    assert_eq!(kept["data"][0]["payload"], "retained!");
    assert_eq!(http.get("/api/v1/retained/r/kept").await.json()["size"], 9);
    assert_eq!(
        http.get("/api/v1/sessions").await.json()["data"][0]["connected"],
        true
    );
    // The configuration shows no secret.
    assert!(!http
        .get("/api/v1/config")
        .await
        .body
        .contains(&petrel_admin::token_hash(TOKEN)));

    // Publish, through the broker to the client.
    let a = http
        .call(
            "POST",
            "/api/v1/publish",
            Some(TOKEN),
            r#"{"topic":"r/api","payload":"from the API","qos":1}"#,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["delivered"], 1);
    assert_eq!(&c.recv_publish().await.payload[..], b"from the API");

    // Bad input: a JSON error, never a panic (the broker serves on).
    for (method, path, body, status) in [
        ("GET", "/api/v1/clients?page=0", "", 400),
        ("GET", "/api/v1/clients?limit=100000", "", 400),
        ("GET", "/api/v1/clients?page=abc", "", 400),
        ("GET", "/api/v1/clients?protocol=4", "", 400),
        ("GET", "/api/v1/clients?bogus=1", "", 400),
        ("GET", "/api/v1/retained?filter=a/%23/b", "", 400),
        ("GET", "/api/v1/retained/a/%2B", "", 400),
        ("DELETE", "/api/v1/retained/a/%23", "", 400),
        ("GET", "/api/v1/clients/nobody", "", 404),
        ("DELETE", "/api/v1/clients/nobody", "", 404),
        ("DELETE", "/api/v1/sessions/nobody", "", 404),
        ("DELETE", "/api/v1/retained/r/none", "", 404),
        ("GET", "/api/v1/nothing", "", 404),
        ("POST", "/api/v1/publish", "not json", 400),
        ("POST", "/api/v1/publish", r#"{"topic":"a/#"}"#, 400),
        ("POST", "/api/v1/publish", r#"{"topic":"a","qos":3}"#, 400),
        (
            "POST",
            "/api/v1/publish",
            r#"{"topic":"a","payload":"%%%","payload_encoding":"base64"}"#,
            400,
        ),
        (
            "POST",
            "/api/v1/publish",
            r#"{"topic":"a","payload_encoding":"rot13"}"#,
            400,
        ),
        ("POST", "/api/v1/publish", r#"{"topic":"$SYS/x"}"#, 403),
        ("POST", "/api/v1/publish", r#"{"topic":"a","extra":1}"#, 400),
    ] {
        let a = http.call(method, path, Some(TOKEN), body).await;
        assert_eq!(a.status, status, "{method} {path} {body}: {}", a.body);
        let msg = a.json()["error"]["message"].as_str().map(str::to_string);
        assert!(
            msg.is_some_and(|m| !m.is_empty()),
            "{method} {path}: {}",
            a.body
        );
    }
    support::still_serving(b.addr).await;

    // Deleting the retained message: gone, and not sent to the subscriber.
    assert_eq!(
        http.call("DELETE", "/api/v1/retained/r/kept", Some(TOKEN), "")
            .await
            .status,
        204
    );
    assert_eq!(http.get("/api/v1/retained/r/kept").await.status, 404);
    assert!(c.no_publish(Duration::from_millis(200)).await);
    // Health needs no token.
    assert_eq!(http.call("GET", "/healthz", None, "").await.status, 200);
    assert_eq!(http.call("GET", "/readyz", None, "").await.status, 200);
    b.broker.shutdown();
}

#[tokio::test]
async fn a_kick_is_a_disconnect_0x98_and_a_discarded_session_is_gone() {
    let (b, http) = start(with_token()).await;
    let mut v5 = Raw::connect(b.addr, Protocol::V5, "kick-me").await;
    // Positive control: connected and served before the kick.
    v5.subscribe("k/t", QoS::AtMostOnce).await;
    v5.publish("k/t", b"here", QoS::AtMostOnce, false).await;
    assert_eq!(&v5.recv_publish().await.payload[..], b"here");
    let a = http
        .call("DELETE", "/api/v1/clients/kick-me", Some(TOKEN), "")
        .await;
    assert_eq!(a.status, 204, "{}", a.body);
    let d = tokio::time::timeout(WAIT, v5.closed()).await.unwrap();
    assert_eq!(
        d.map(|d| d.reason_code),
        Some(ReasonCode::ADMINISTRATIVE_ACTION)
    );
    // 3.1.1 has no DISCONNECT from the server: the connection just closes.
    let mut v3 = Raw::connect(b.addr, Protocol::V3_1_1, "kick-me-too").await;
    assert_eq!(
        http.call("DELETE", "/api/v1/clients/kick-me-too", Some(TOKEN), "")
            .await
            .status,
        204
    );
    assert!(tokio::time::timeout(WAIT, v3.closed())
        .await
        .unwrap()
        .is_none());

    // A persistent session, offline: listed, then discarded.
    let (c, _) = Raw::connect_with(
        b.addr,
        Protocol::V5,
        "keep-me",
        support::persistent(Protocol::V5),
    )
    .await;
    c.disconnect().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = http.get("/api/v1/sessions?client_id=keep-me").await.json();
    assert_eq!(s["data"][0]["connected"], false);
    assert_eq!(s["data"][0]["expiry_interval"], 300);
    assert_eq!(
        http.call("DELETE", "/api/v1/sessions/keep-me", Some(TOKEN), "")
            .await
            .status,
        204
    );
    assert_eq!(
        http.get("/api/v1/sessions?client_id=keep-me").await.json()["meta"]["count"],
        0
    );
    let (_c, ack) = Raw::connect_with(
        b.addr,
        Protocol::V5,
        "keep-me",
        support::persistent(Protocol::V5),
    )
    .await;
    assert!(!ack.session_present, "the discarded session is gone");
    let m = http.get("/metrics").await.body;
    assert_eq!(
        sample(&m, r#"petrel_disconnects_total{reason="administrative"}"#),
        2.0
    );
}

#[tokio::test]
async fn without_a_configured_token_one_is_made_in_the_data_directory() {
    let dir = std::env::temp_dir().join(format!("petrel-admin-token-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = support::config();
    config.data_dir = Some(dir.clone());
    let broker = support::start_with(config).await;
    let http = HttpConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        ..HttpConfig::default()
    };
    let admin = petrel_admin::AdminServer::bind(broker.broker.clone(), &http)
        .await
        .unwrap();
    let path = admin.token_file().unwrap().to_path_buf();
    let client = Http {
        addr: admin.local_addr().unwrap(),
    };
    tokio::spawn(admin.run());
    let token = std::fs::read_to_string(&path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    assert_eq!(
        client
            .call("GET", "/api/v1/stats", Some(&token), "")
            .await
            .status,
        200
    );
    assert_eq!(
        client.call("GET", "/api/v1/stats", None, "").await.status,
        401
    );
    broker.broker.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn unauthenticated_only_where_configured_and_public_metrics_only_metrics() {
    let (_b, open) = start(HttpConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        allow_unauthenticated: true,
        ..HttpConfig::default()
    })
    .await;
    assert_eq!(
        open.call("GET", "/api/v1/stats", None, "").await.status,
        200
    );
    let (_b, public) = start(HttpConfig {
        public_metrics: true,
        ..with_token()
    })
    .await;
    assert_eq!(public.call("GET", "/metrics", None, "").await.status, 200);
    assert_eq!(
        public.call("GET", "/api/v1/stats", None, "").await.status,
        401
    );
    // And the configuration refuses it off loopback.
    let text = "[http]\nbind = \"0.0.0.0:8080\"\nallow_unauthenticated = true\n";
    let e = petrel_broker::BrokerConfig::from_toml(text)
        .unwrap_err()
        .to_string();
    assert!(e.contains("loopback"), "{e}");
}

#[tokio::test]
async fn the_configuration_is_shown_with_its_secrets_redacted() {
    let mut config = support::config();
    config.allow_anonymous = Some(true);
    config.jwt = Some(
        toml::from_str::<petrel_broker::config::JwtConfig>("secret = \"hunter2-jwt-secret\"")
            .unwrap(),
    );
    config.http = Some(with_token());
    config.bridges = petrel_broker::BrokerConfig::from_toml(
        "[[bridge]]\nname = \"b\"\naddress = \"127.0.0.1:1\"\npassword = \"hunter2-bridge\"\ntopic = [\"a/# out\"]\n",
    )
    .unwrap()
    .bridges;
    let b = support::start_with(config.clone()).await;
    let admin = petrel_admin::AdminServer::bind(b.broker.clone(), config.http.as_ref().unwrap())
        .await
        .unwrap();
    let http = Http {
        addr: admin.local_addr().unwrap(),
    };
    tokio::spawn(admin.run());
    let a = http.get("/api/v1/config").await;
    assert_eq!(a.status, 200);
    let v = a.json();
    // Positive control: the keys are there, with their values replaced.
    assert_eq!(v["jwt"]["secret"], "<redacted>");
    assert_eq!(v["http"]["token_hash"], "<redacted>");
    assert_eq!(v["bridge"][0]["password"], "<redacted>");
    assert_eq!(v["bridge"][0]["name"], "b");
    assert!(!a.body.contains("hunter2"), "{}", a.body);
    assert!(
        !a.body.contains(&petrel_admin::token_hash(TOKEN)[7..]),
        "{}",
        a.body
    );
    b.broker.shutdown();
}

/// A bridge's counters (registered by `petrel-bridge`) appear in
/// `/metrics` with its name, and move as the bridge counts.
#[tokio::test]
async fn bridge_metrics_appear_and_move() {
    let (b, http) = start(with_token()).await;
    let before = http.get("/metrics").await.body;
    assert!(!before.contains("petrel_bridge_up"), "no bridge, no family");
    let c = b.broker.bridge_counters(
        "central",
        "petrel-bridge.central",
        petrel_broker::QueueBound::new(10, 1000),
    );
    c.up.store(true, std::sync::atomic::Ordering::Relaxed);
    c.forwarded_out
        .fetch_add(7, std::sync::atomic::Ordering::Relaxed);
    let after = http.get("/metrics").await.body;
    for line in [
        "petrel_bridge_up{bridge=\"central\"} 1",
        "petrel_bridge_messages_total{bridge=\"central\",direction=\"out\"} 7",
        "petrel_bridge_messages_total{bridge=\"central\",direction=\"in\"} 0",
        "petrel_bridge_dropped_total{bridge=\"central\"} 0",
        "petrel_bridge_queued_messages{bridge=\"central\"} 0",
    ] {
        assert!(after.lines().any(|l| l == line), "{line} in:\n{after}");
    }
}

#[tokio::test]
async fn a_drained_broker_sends_clients_elsewhere_until_it_is_undrained() {
    let (b, http) = start(with_token()).await;
    // Each with a retained will: a client sent elsewhere has not failed,
    // so its will is not published; the control, a client kicked, has
    // its will published.
    let will = |name: &str| {
        let topic = support::topic(&format!("wills/{name}"));
        move |c: &mut petrel_codec::Connect| {
            c.will = Some(petrel_codec::Will {
                topic,
                payload: bytes::Bytes::from_static(b"gone"),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: petrel_codec::Properties::new(),
            });
        }
    };
    let (mut kicked, _) = Raw::connect_with(b.addr, Protocol::V5, "kicked", will("kicked")).await;
    let kick = http
        .call("DELETE", "/api/v1/clients/kicked", Some(TOKEN), "")
        .await;
    assert_eq!(kick.status, 204);
    tokio::time::timeout(WAIT, kicked.closed()).await.unwrap();
    let (mut v5, _) = Raw::connect_with(b.addr, Protocol::V5, "drain-5", will("drained")).await;
    let mut v3 = Raw::connect(b.addr, Protocol::V3_1_1, "drain-3").await;
    // Positive control: served before the drain.
    v5.subscribe("d/t", QoS::AtMostOnce).await;
    v5.publish("d/t", b"here", QoS::AtMostOnce, false).await;
    assert_eq!(&v5.recv_publish().await.payload[..], b"here");
    assert_eq!(http.get("/api/v1/drain").await.json()["draining"], false);

    let a = http
        .call(
            "POST",
            "/api/v1/drain",
            Some(TOKEN),
            r#"{"server_reference": "other.example:1883"}"#,
        )
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    // 5.0: DISCONNECT 0x9C Use another server, saying where.
    let d = tokio::time::timeout(WAIT, v5.closed())
        .await
        .unwrap()
        .expect("a DISCONNECT");
    assert_eq!(d.reason_code, ReasonCode::USE_ANOTHER_SERVER);
    assert_eq!(
        d.properties
            .server_reference()
            .map(|s| s.as_str().to_string()),
        Some("other.example:1883".to_string())
    );
    // 3.1.1 has no DISCONNECT from the server: the connection closes.
    assert!(tokio::time::timeout(WAIT, v3.closed())
        .await
        .unwrap()
        .is_none());
    // New connections are refused: 5.0 with 0x9C and the reference, 3.1.1
    // with return code 3 (Server unavailable).
    let (_, ack) = Raw::connect_with(b.addr, Protocol::V5, "late-5", |_| {}).await;
    assert_eq!(ack.reason_code, ReasonCode::USE_ANOTHER_SERVER);
    assert_eq!(
        ack.properties
            .server_reference()
            .map(|s| s.as_str().to_string()),
        Some("other.example:1883".to_string())
    );
    let (_, ack) = Raw::connect_with(b.addr, Protocol::V3_1_1, "late-3", |_| {}).await;
    assert_eq!(ack.reason_code, ReasonCode::SERVER_UNAVAILABLE);
    let status = http.get("/api/v1/drain").await.json();
    assert_eq!(status["draining"], true);
    assert_eq!(status["server_reference"], "other.example:1883");
    assert_eq!(status["connected"], 0);
    // A bad body changes nothing.
    let bad = http
        .call(
            "POST",
            "/api/v1/drain",
            Some(TOKEN),
            r#"{"per_second": -1}"#,
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    let status = http.get("/api/v1/drain").await.json();
    assert_eq!(status["draining"], true);
    assert_eq!(status["server_reference"], "other.example:1883");

    // Undrained: taken again.
    let a = http.call("DELETE", "/api/v1/drain", Some(TOKEN), "").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["draining"], false);
    let (mut back, ack) = Raw::connect_with(b.addr, Protocol::V5, "back", |_| {}).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    back.subscribe("wills/#", QoS::AtMostOnce).await;
    let p = back.recv_publish().await;
    assert_eq!(p.topic.as_str(), "wills/kicked");
    assert!(
        back.no_publish(Duration::from_millis(300)).await,
        "the drained client's will was published"
    );
}
