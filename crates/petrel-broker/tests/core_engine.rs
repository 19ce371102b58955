//! The engine's decisions, without sockets: who may connect, what a client
//! may publish, subscribe to and receive, session ownership, tokens,
//! certificates, the per-address throttle and reloading the rules. Each
//! test drives the engine exactly as the connection driver does: a
//! CONNECT to [`Broker::login`], then the [`Client`] it gives.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use petrel_broker::config::{CertificateConfig, JwtConfig, ListenerConfig};
use petrel_broker::core::auth::password::PasswordHash;
use petrel_broker::{
    Broker, BrokerConfig, BuildError, CertificateIdentity, Client, Kick, Peer, Step,
};
use petrel_codec::{Connect, MqttString, Protocol, Publish, QoS, QosPid, ReasonCode};
use petrel_session::Message;
use support::{filter, pid, temp_file, topic};

/// Written by mosquitto_passwd 2.0.11 (`-b`, password "secret").
const MOSQUITTO_ALICE: &str = "alice:$7$101$3zDI7hp/BWqxgpJB$65pLa3P2ZXy9RN570Xoywy5brtgJq/0x/MaqDKFKbeiZFxs8qRAOM0vvv6OCDFPo6hvrHrdoUza1FPblAsQUWg==";

fn password_file() -> std::path::PathBuf {
    let bob = PasswordHash::argon2id(b"b0b").unwrap().encode();
    temp_file(
        "passwd",
        &format!("# users\n{MOSQUITTO_ALICE}\nbob:{bob}\n"),
    )
}

fn config() -> BrokerConfig {
    BrokerConfig {
        sys_interval: 0,
        ..BrokerConfig::default()
    }
}

fn connect(id: &str, user: Option<&str>, password: Option<&str>) -> Connect {
    let mut c = Connect::new(Protocol::V5, MqttString::try_from(id).unwrap());
    c.username = user.map(|u| MqttString::try_from(u).unwrap());
    c.password = password.map(|p| Bytes::copy_from_slice(p.as_bytes()));
    c
}

fn peer(ip: [u8; 4]) -> Peer {
    Peer {
        addr: Some(SocketAddr::from((ip, 40000))),
        ..Peer::default()
    }
}

/// Log in from 10.0.0.1; the client, or the refusal's reason.
async fn login(b: &Broker, c: Connect) -> Result<Client, ReasonCode> {
    login_from(b, c, peer([10, 0, 0, 1])).await
}

async fn login_from(b: &Broker, c: Connect, peer: Peer) -> Result<Client, ReasonCode> {
    match b.login(c, peer).start().await {
        Step::Accept(a) => Ok(a.client),
        Step::Refuse(reason, _) => Err(reason),
        Step::Continue(p) => panic!("unexpected AUTH challenge {p:?}"),
    }
}

fn publish(c: &mut Client, t: &str, payload: &str) -> ReasonCode {
    let mut p = Publish::new(topic(t), Bytes::copy_from_slice(payload.as_bytes()));
    p.qos = QosPid::AtLeastOnce(pid(1));
    c.publish(p, Instant::now(), false)
}

fn subscribe(c: &mut Client, f: &str) -> ReasonCode {
    c.subscribe(support::subscribe_one(f), Instant::now())
        .reason_codes[0]
}

/// The topics of the messages waiting for `c`.
fn received(c: &mut Client) -> Vec<String> {
    let mut out: Vec<Message> = Vec::new();
    c.next_messages(1000, 1000, 1000, Instant::now(), &mut out);
    out.iter().map(|m| m.topic.as_str().to_string()).collect()
}

#[tokio::test]
async fn anonymous_access_is_the_default_only_on_loopback() {
    // No configuration: loopback, anonymous.
    let b = Broker::new(config()).unwrap();
    assert!(login(&b, connect("anon", None, None)).await.is_ok());
    // A listener others can reach, and no authentication: refused to start,
    // saying what to write.
    let open = BrokerConfig {
        listeners: vec![ListenerConfig::tcp("0.0.0.0:1883".parse().unwrap())],
        ..config()
    };
    let e = Broker::new(open.clone()).unwrap_err();
    assert!(matches!(e, BuildError::AnonymousNotLoopback(_)), "{e}");
    assert!(e.to_string().contains("allow_anonymous = true"), "{e}");
    // Asked for explicitly, it starts.
    let allowed = BrokerConfig {
        allow_anonymous: Some(true),
        ..open.clone()
    };
    let b = Broker::new(allowed).unwrap();
    assert!(login(&b, connect("anon", None, None)).await.is_ok());
    // With authentication configured, anonymous clients are refused (0x87)
    // and the broker starts on any address.
    let secured = BrokerConfig {
        password_file: Some(password_file()),
        ..open
    };
    let b = Broker::new(secured).unwrap();
    assert_eq!(
        login(&b, connect("anon", None, None)).await.unwrap_err(),
        ReasonCode::NOT_AUTHORIZED
    );
}

#[tokio::test]
async fn a_mosquitto_password_file_decides_who_connects() {
    let b = Broker::new(BrokerConfig {
        password_file: Some(password_file()),
        ..config()
    })
    .unwrap();
    // Positive controls first: the right passwords, both hash formats.
    let alice = login(&b, connect("a", Some("alice"), Some("secret"))).await;
    assert_eq!(alice.unwrap().username(), Some("alice"));
    assert!(login(&b, connect("b", Some("bob"), Some("b0b")))
        .await
        .is_ok());
    // Wrong password, unknown user, user name without password: 0x86.
    for (user, pw) in [
        (Some("alice"), Some("Secret")),
        (Some("mallory"), Some("secret")),
        (Some("bob"), None),
    ] {
        assert_eq!(
            login(&b, connect("x", user, pw)).await.unwrap_err(),
            ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            "{user:?} {pw:?}"
        );
    }
    // No credentials at all: 0x87.
    assert_eq!(
        login(&b, connect("x", None, None)).await.unwrap_err(),
        ReasonCode::NOT_AUTHORIZED
    );
    let s = b.stats();
    assert_eq!((s.auth_successes, s.auth_failures), (2, 4));
}

/// Failed logins from one address are spaced out, then refused without a
/// look at the credentials; other addresses are not slowed.
#[tokio::test(start_paused = true)]
async fn failed_logins_are_slowed_per_address() {
    let mut c = config();
    c.password_file = Some(password_file());
    c.limits.login_free_failures = 2;
    c.limits.login_delay = 1;
    c.limits.login_delay_max = 1;
    c.limits.connect_timeout = 3;
    let b = Broker::new(c).unwrap();
    let attacker = [10, 9, 9, 9];
    let wrong = || connect("x", Some("alice"), Some("guess"));
    let start = tokio::time::Instant::now();
    for _ in 0..2 {
        let r = login_from(&b, wrong(), peer(attacker)).await;
        assert_eq!(r.unwrap_err(), ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    }
    // The free failures went at once.
    assert!(start.elapsed() < Duration::from_millis(100));
    // Now the attempts queue a second apart (paused time jumps, the
    // engine's own clock does not: each waits its turn), then are refused
    // with 0x89 once the wait would pass the connect timeout.
    let mut refused = 0;
    for _ in 0..10 {
        match login_from(&b, wrong(), peer(attacker)).await {
            Err(ReasonCode::SERVER_BUSY) => refused += 1,
            Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD) => {}
            other => panic!("{:?}", other.map(|c| c.client_id().to_string())),
        }
    }
    assert!(refused >= 5, "{refused}");
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    // Another address logs in at once.
    let t = tokio::time::Instant::now();
    let ok = login_from(
        &b,
        connect("ok", Some("alice"), Some("secret")),
        peer([10, 1, 1, 1]),
    )
    .await;
    assert!(ok.is_ok());
    assert!(t.elapsed() < Duration::from_millis(100));
}

fn acl_broker(acl: &str) -> Broker {
    Broker::new(BrokerConfig {
        password_file: Some(password_file()),
        acl_file: Some(temp_file("acl", acl)),
        ..config()
    })
    .unwrap()
}

const ACL: &str = "\
user alice
topic readwrite home/#
topic deny home/secret
topic read $SYS/#
user bob
topic write home/kitchen
topic read public/#
pattern readwrite clients/%c/#
pattern read users/%u/#
";

#[tokio::test]
async fn the_acl_decides_publish_subscribe_and_every_delivery() {
    let b = acl_broker(ACL);
    let mut alice = login(&b, connect("alice-1", Some("alice"), Some("secret")))
        .await
        .unwrap();
    let mut bob = login(&b, connect("bob-1", Some("bob"), Some("b0b")))
        .await
        .unwrap();
    // Subscribe: covered by a read rule, or refused with 0x87.
    assert_eq!(subscribe(&mut alice, "home/#"), ReasonCode::GRANTED_QOS_1);
    assert_eq!(
        subscribe(&mut alice, "home/secret"),
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(subscribe(&mut alice, "#"), ReasonCode::NOT_AUTHORIZED);
    assert_eq!(subscribe(&mut bob, "home/#"), ReasonCode::NOT_AUTHORIZED);
    assert_eq!(
        subscribe(&mut bob, "users/bob/inbox"),
        ReasonCode::GRANTED_QOS_1
    );
    assert_eq!(
        subscribe(&mut bob, "users/alice/inbox"),
        ReasonCode::NOT_AUTHORIZED
    );
    // Publish: write access, or 0x87 and the message goes nowhere.
    assert_eq!(publish(&mut bob, "home/kitchen", "21"), ReasonCode::SUCCESS);
    assert_eq!(
        publish(&mut bob, "home/garage", "x"),
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(
        publish(&mut alice, "users/bob/inbox", "hi"),
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(
        publish(&mut bob, "clients/bob-1/x", "own"),
        ReasonCode::NO_MATCHING_SUBSCRIBERS
    );
    assert_eq!(
        publish(&mut bob, "clients/alice-1/x", "other's"),
        ReasonCode::NOT_AUTHORIZED
    );
    // Alice may not write what she may not read either.
    assert_eq!(
        publish(&mut alice, "home/secret", "s"),
        ReasonCode::NOT_AUTHORIZED
    );
    // What bob was allowed to publish reached her.
    assert_eq!(received(&mut alice), ["home/kitchen"]);
    assert_eq!(b.stats().denied_publish, 4);
}

#[tokio::test]
async fn a_delivery_the_subscriber_may_not_read_is_withheld() {
    let acl =
        "user alice\ntopic read home/#\ntopic deny home/secret\nuser bob\ntopic write home/#\n";
    let b = acl_broker(acl);
    let mut alice = login(&b, connect("alice-1", Some("alice"), Some("secret")))
        .await
        .unwrap();
    let mut bob = login(&b, connect("bob-1", Some("bob"), Some("b0b")))
        .await
        .unwrap();
    assert_eq!(subscribe(&mut alice, "home/#"), ReasonCode::GRANTED_QOS_1);
    assert_eq!(
        publish(&mut bob, "home/secret", "s"),
        ReasonCode::NO_MATCHING_SUBSCRIBERS
    );
    assert_eq!(publish(&mut bob, "home/hall", "h"), ReasonCode::SUCCESS);
    assert_eq!(received(&mut alice), ["home/hall"]);
    assert_eq!(b.stats().denied_delivery, 1);
}

/// A shared subscription is judged by its filter, and its deliveries by
/// their topics: `$share/g/#` is not a way around the rules.
#[tokio::test]
async fn a_shared_subscription_is_judged_by_its_filter() {
    let acl = "user alice\ntopic read $share/#\ntopic read public/#\ntopic deny public/secret\nuser bob\ntopic write #\n";
    let b = acl_broker(acl);
    let mut alice = login(&b, connect("a", Some("alice"), Some("secret")))
        .await
        .unwrap();
    let mut bob = login(&b, connect("b", Some("bob"), Some("b0b")))
        .await
        .unwrap();
    assert_eq!(
        subscribe(&mut alice, "$share/g/#"),
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(
        subscribe(&mut alice, "$share/g/public/#"),
        ReasonCode::GRANTED_QOS_1
    );
    publish(&mut bob, "public/secret", "s");
    publish(&mut bob, "private/x", "p");
    publish(&mut bob, "public/news", "n");
    assert_eq!(received(&mut alice), ["public/news"]);
}

#[tokio::test]
async fn sys_topics_are_read_by_the_same_rules() {
    let acl = "user alice\ntopic read $SYS/#\nuser bob\ntopic read #\n";
    let b = Broker::new(BrokerConfig {
        password_file: Some(password_file()),
        acl_file: Some(temp_file("acl", acl)),
        sys_interval: 1,
        ..config()
    })
    .unwrap();
    let mut alice = login(&b, connect("a", Some("alice"), Some("secret")))
        .await
        .unwrap();
    let mut bob = login(&b, connect("b", Some("bob"), Some("b0b")))
        .await
        .unwrap();
    assert_eq!(
        subscribe(&mut alice, "$SYS/broker/#"),
        ReasonCode::GRANTED_QOS_1
    );
    // `#` in an ACL rule does not open `$SYS`, as in a subscription.
    assert_eq!(
        subscribe(&mut bob, "$SYS/broker/#"),
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(subscribe(&mut bob, "#"), ReasonCode::GRANTED_QOS_1);
    b.tick(Instant::now());
    let seen = received(&mut alice);
    assert!(seen.iter().any(|t| t == "$SYS/broker/uptime"), "{seen:?}");
    assert!(received(&mut bob).is_empty());
    // Nobody writes `$SYS`, whatever the rules.
    let b = acl_broker("user alice\ntopic readwrite #\ntopic readwrite $SYS/#\n");
    let mut alice = login(&b, connect("a", Some("alice"), Some("secret")))
        .await
        .unwrap();
    assert_eq!(
        publish(&mut alice, "$SYS/broker/version", "x"),
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(
        publish(&mut alice, "any/thing", "x"),
        ReasonCode::NO_MATCHING_SUBSCRIBERS
    );
}

#[tokio::test]
async fn a_will_is_checked_like_a_publish() {
    let b = acl_broker("user alice\ntopic write status/alice\n");
    let with_will = |t: &str| {
        let mut c = connect("a", Some("alice"), Some("secret"));
        c.will = Some(petrel_codec::Will {
            topic: topic(t),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
        });
        c
    };
    assert!(login(&b, with_will("status/alice")).await.is_ok());
    assert_eq!(
        login(&b, with_will("status/bob")).await.unwrap_err(),
        ReasonCode::NOT_AUTHORIZED
    );
}

#[tokio::test]
async fn a_session_belongs_to_its_user() {
    let b = Broker::new(BrokerConfig {
        password_file: Some(password_file()),
        ..config()
    })
    .unwrap();
    let alice = login(&b, connect("shared-id", Some("alice"), Some("secret")))
        .await
        .unwrap();
    // Bob may not take alice's session over, nor start a clean one in its
    // place; alice is not kicked.
    let mut bob = connect("shared-id", Some("bob"), Some("b0b"));
    assert_eq!(
        login(&b, bob.clone()).await.unwrap_err(),
        ReasonCode::NOT_AUTHORIZED
    );
    bob.clean_start = false;
    assert_eq!(
        login(&b, bob).await.unwrap_err(),
        ReasonCode::NOT_AUTHORIZED
    );
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    assert!(
        alice.poll_kicked(&mut cx).is_pending(),
        "the owner was kicked"
    );
    // Alice herself takes it over (the positive control): the holder is
    // told to let go.
    let b2 = b.clone();
    let again = tokio::spawn(async move {
        login(&b2, connect("shared-id", Some("alice"), Some("secret"))).await
    });
    let kicked = std::future::poll_fn(|cx| alice.poll_kicked(cx));
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), kicked).await,
        Ok(Kick::TakenOver)
    );
    alice.close(Default::default(), None);
    assert!(again.await.unwrap().is_ok());
}

#[tokio::test]
async fn anonymous_sessions_are_nobody_s_when_no_authentication_is_on() {
    let b = Broker::new(config()).unwrap();
    let first = login(&b, connect("id", None, None)).await.unwrap();
    let b2 = b.clone();
    let second = tokio::spawn(async move { login(&b2, connect("id", None, None)).await });
    let kicked = std::future::poll_fn(|cx| first.poll_kicked(cx));
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), kicked).await,
        Ok(Kick::TakenOver)
    );
    first.close(Default::default(), None);
    assert!(second.await.unwrap().is_ok());
}

const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgbhYrsnVNfrOuJ4It
RQLNmiS7cascdPbW7Dv/qZAMZquhRANCAATQF4ZwQmttj6gyK5xLRieoxDmCX7Ig
JuD2n99KywXM860cyNaHjdIQYPiz4eC0kiZVxHb2Js1M5OwCytk/5++W
-----END PRIVATE KEY-----
";
const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE0BeGcEJrbY+oMiucS0YnqMQ5gl+y
ICbg9p/fSssFzPOtHMjWh43SEGD4s+HgtJImVcR29ibNTOTsAsrZP+fvlg==
-----END PUBLIC KEY-----
";

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn hs256(claims: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn jwt_broker() -> Broker {
    Broker::new(BrokerConfig {
        jwt: Some(JwtConfig {
            secret: Some("s3cret".into()),
            public_key: Some(temp_file("ec.pub", EC_PUBLIC)),
            audience: Some("petrel".into()),
            issuer: Some("https://auth.example".into()),
            username_claim: Some("sub".into()),
            ..JwtConfig::default()
        }),
        ..config()
    })
    .unwrap()
}

#[tokio::test]
async fn tokens_are_checked_for_signature_expiry_audience_and_issuer() {
    let b = jwt_broker();
    let good = serde_json::json!({
        "sub": "dev-7", "aud": "petrel", "iss": "https://auth.example", "exp": now_secs() + 600,
    });
    let token = hs256(good.clone(), "s3cret");
    // Valid: known by its `sub`.
    let c = login(&b, connect("c", None, Some(&token))).await.unwrap();
    assert_eq!(c.username(), Some("dev-7"));
    // Signed with an EC key (ES256) too.
    let es = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &good,
        &jsonwebtoken::EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
    )
    .unwrap();
    assert!(login(&b, connect("c2", Some("dev-7"), Some(&es)))
        .await
        .is_ok());
    let bad = ReasonCode::BAD_USER_NAME_OR_PASSWORD;
    let with = |patch: serde_json::Value| {
        let mut claims = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            claims[k] = v.clone();
        }
        claims
    };
    // Expired, not yet valid, wrong audience, wrong issuer, wrong signature,
    // a user name that is not the token's.
    let cases = [
        hs256(with(serde_json::json!({"exp": now_secs() - 60})), "s3cret"),
        hs256(with(serde_json::json!({"nbf": now_secs() + 600})), "s3cret"),
        hs256(with(serde_json::json!({"aud": "other"})), "s3cret"),
        hs256(
            with(serde_json::json!({"iss": "https://evil.example"})),
            "s3cret",
        ),
        hs256(good.clone(), "not-the-secret"),
    ];
    for t in &cases {
        assert_eq!(
            login(&b, connect("c", None, Some(t))).await.unwrap_err(),
            bad
        );
    }
    assert_eq!(
        login(&b, connect("c", Some("dev-8"), Some(&token)))
            .await
            .unwrap_err(),
        bad
    );
    // A token without `exp` is refused.
    let no_exp = hs256(
        serde_json::json!({"sub": "x", "aud": "petrel", "iss": "https://auth.example"}),
        "s3cret",
    );
    assert_eq!(
        login(&b, connect("c", None, Some(&no_exp)))
            .await
            .unwrap_err(),
        bad
    );
    // A password that is not a token is not this method's: with nothing
    // else configured, the credentials are unknown.
    assert_eq!(
        login(&b, connect("c", Some("u"), Some("plain")))
            .await
            .unwrap_err(),
        bad
    );
}

/// The EC key above as a JWK set, under key id "k1".
const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","use":"sig","alg":"ES256",
"x":"0BeGcEJrbY-oMiucS0YnqMQ5gl-yICbg9p_fSssFzPM","y":"rRzI1oeN0hBg-LPh4LSSJlXEdvYmzUzk7ALK2T_n75Y"}]}"#;

#[tokio::test]
async fn tokens_are_checked_against_a_jwk_set_by_key_id() {
    let b = Broker::new(BrokerConfig {
        jwt: Some(JwtConfig {
            jwks: Some(temp_file("jwks.json", JWKS)),
            ..JwtConfig::default()
        }),
        ..config()
    })
    .unwrap();
    let claims = serde_json::json!({"exp": now_secs() + 600});
    let key = jsonwebtoken::EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
    let sign = |kid: &str| {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, &claims, &key).unwrap()
    };
    assert!(login(&b, connect("c", Some("d"), Some(&sign("k1"))))
        .await
        .is_ok());
    // A key id the set does not hold finds no key.
    assert_eq!(
        login(&b, connect("c", Some("d"), Some(&sign("k2"))))
            .await
            .unwrap_err(),
        ReasonCode::BAD_USER_NAME_OR_PASSWORD
    );
}

/// Without `username_claim` a token names nobody: the user name the
/// client sent is not trusted (no `user` rules, no one's session).
#[tokio::test]
async fn a_token_without_a_user_claim_names_nobody() {
    let b = Broker::new(BrokerConfig {
        password_file: Some(password_file()),
        acl_file: Some(temp_file(
            "acl",
            "topic read public/#\nuser carol\ntopic read carol/#\n",
        )),
        jwt: Some(JwtConfig {
            secret: Some("s3cret".into()),
            ..JwtConfig::default()
        }),
        ..config()
    })
    .unwrap();
    let alice = login(&b, connect("alice-phone", Some("alice"), Some("secret")))
        .await
        .unwrap();
    let token = hs256(serde_json::json!({"exp": now_secs() + 600}), "s3cret");
    // The password file does not know carol, so the token decides; it names
    // nobody, so carol's rules are not hers to use.
    let mut c = login(&b, connect("c", Some("carol"), Some(&token)))
        .await
        .unwrap();
    assert_eq!(c.username(), None);
    assert_eq!(subscribe(&mut c, "carol/#"), ReasonCode::NOT_AUTHORIZED);
    assert_eq!(subscribe(&mut c, "public/#"), ReasonCode::GRANTED_QOS_1);
    // Nor may it take alice's session over.
    assert_eq!(
        login(&b, connect("alice-phone", None, Some(&token)))
            .await
            .unwrap_err(),
        ReasonCode::NOT_AUTHORIZED
    );
    drop(alice);
}

#[tokio::test]
async fn a_token_may_carry_the_client_s_permissions() {
    let b = jwt_broker();
    let claims = serde_json::json!({
        "sub": "dev-7", "aud": "petrel", "iss": "https://auth.example", "exp": now_secs() + 600,
        "acl": {"pub": ["devices/%u/telemetry"], "sub": ["devices/%u/commands/#"], "all": ["shared/%c"]},
    });
    let token = hs256(claims, "s3cret");
    let mut c = login(&b, connect("cid", None, Some(&token))).await.unwrap();
    assert_eq!(
        publish(&mut c, "devices/dev-7/telemetry", "1"),
        ReasonCode::NO_MATCHING_SUBSCRIBERS
    );
    assert_eq!(
        publish(&mut c, "devices/dev-8/telemetry", "1"),
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(
        subscribe(&mut c, "devices/dev-7/commands/#"),
        ReasonCode::GRANTED_QOS_1
    );
    assert_eq!(subscribe(&mut c, "devices/#"), ReasonCode::NOT_AUTHORIZED);
    assert_eq!(subscribe(&mut c, "shared/cid"), ReasonCode::GRANTED_QOS_1);
    assert_eq!(publish(&mut c, "shared/cid", "x"), ReasonCode::SUCCESS);
}

#[tokio::test]
async fn a_verified_certificate_names_its_holder() {
    let b = Broker::new(BrokerConfig {
        certificate: Some(CertificateConfig::default()),
        ..config()
    })
    .unwrap();
    let with_cert = Peer {
        addr: None,
        certificate: Some(CertificateIdentity {
            subject: "CN=sensor-1,O=Example".into(),
            common_name: Some("sensor-1".into()),
            ..CertificateIdentity::default()
        }),
        ..Peer::default()
    };
    let c = login_from(&b, connect("c", None, None), with_cert)
        .await
        .unwrap();
    assert_eq!(c.username(), Some("sensor-1"));
    // Without a certificate: no method knows the client, and anonymous
    // access is off once authentication is configured.
    assert_eq!(
        login(&b, connect("c2", None, None)).await.unwrap_err(),
        ReasonCode::NOT_AUTHORIZED
    );
}

/// An application's own authenticator, chained after the configured ones.
#[derive(Debug)]
struct Tokens;

impl petrel_broker::Authenticator for Tokens {
    fn name(&self) -> &str {
        "tokens"
    }

    fn authenticate<'a>(
        &'a self,
        c: &'a petrel_broker::Credentials,
    ) -> petrel_broker::BoxFuture<'a, petrel_broker::Verdict> {
        Box::pin(async move {
            // As slow as a database would be.
            tokio::time::sleep(Duration::from_millis(20)).await;
            match c.password.as_deref() {
                Some(b"open-sesame") => {
                    petrel_broker::Verdict::Allow(petrel_broker::Grant::named("app-user"))
                }
                Some(b"banned") => petrel_broker::Verdict::Deny(ReasonCode::BANNED),
                _ => petrel_broker::Verdict::Pass,
            }
        })
    }
}

#[tokio::test]
async fn an_application_authenticator_is_chained_after_the_configured_ones() {
    let b = Broker::builder(BrokerConfig {
        password_file: Some(password_file()),
        ..config()
    })
    .authenticator(Tokens)
    .build()
    .unwrap();
    // The password file decides its own users first.
    assert!(login(&b, connect("a", Some("alice"), Some("secret")))
        .await
        .is_ok());
    assert_eq!(
        login(&b, connect("a", Some("alice"), Some("open-sesame")))
            .await
            .unwrap_err(),
        ReasonCode::BAD_USER_NAME_OR_PASSWORD
    );
    // Users it does not know go on to the application's.
    let c = login(&b, connect("x", Some("svc"), Some("open-sesame")))
        .await
        .unwrap();
    assert_eq!(c.username(), Some("app-user"));
    assert_eq!(
        login(&b, connect("y", Some("svc"), Some("banned")))
            .await
            .unwrap_err(),
        ReasonCode::BANNED
    );
}

/// An application's own rules: each client may use only topics under its
/// own client id.
#[derive(Debug)]
struct OwnTree;

#[derive(Debug)]
struct Under(String);

impl petrel_broker::Permissions for Under {
    fn check(&self, _: petrel_broker::Action, topic: &str) -> petrel_broker::Decision {
        if topic.starts_with(&self.0) {
            petrel_broker::Decision::Allow
        } else {
            petrel_broker::Decision::Pass
        }
    }
}

impl petrel_broker::Authorizer for OwnTree {
    fn name(&self) -> &str {
        "own-tree"
    }

    fn permissions(
        &self,
        client: &petrel_broker::ClientInfo<'_>,
    ) -> std::sync::Arc<dyn petrel_broker::Permissions> {
        std::sync::Arc::new(Under(format!("tree/{}/", client.client_id)))
    }
}

#[tokio::test]
async fn an_application_authorizer_is_consulted_after_the_acl_file() {
    let b = Broker::builder(BrokerConfig {
        password_file: Some(password_file()),
        acl_file: Some(temp_file(
            "acl",
            "user alice\ntopic deny tree/#\ntopic write shared/#\n",
        )),
        ..config()
    })
    .authorizer(OwnTree)
    .build()
    .unwrap();
    let mut alice = login(&b, connect("c1", Some("alice"), Some("secret")))
        .await
        .unwrap();
    let mut bob = login(&b, connect("c2", Some("bob"), Some("b0b")))
        .await
        .unwrap();
    // The ACL file decides first: its deny wins, its allow too.
    assert_eq!(
        publish(&mut alice, "tree/c1/x", "1"),
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(
        publish(&mut alice, "shared/x", "1"),
        ReasonCode::NO_MATCHING_SUBSCRIBERS
    );
    // What it does not speak of goes to the application's rules, and what
    // nobody allows is denied.
    assert_eq!(
        publish(&mut bob, "tree/c2/x", "1"),
        ReasonCode::NO_MATCHING_SUBSCRIBERS
    );
    assert_eq!(
        publish(&mut bob, "tree/c1/x", "1"),
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(subscribe(&mut bob, "tree/c2/#"), ReasonCode::GRANTED_QOS_1);
}

#[tokio::test]
async fn reloaded_rules_apply_to_clients_already_connected() {
    let acl = temp_file("acl", "user alice\ntopic readwrite a/#\n");
    let b = Broker::new(BrokerConfig {
        password_file: Some(password_file()),
        acl_file: Some(acl.clone()),
        ..config()
    })
    .unwrap();
    let mut alice = login(&b, connect("a", Some("alice"), Some("secret")))
        .await
        .unwrap();
    assert_eq!(subscribe(&mut alice, "a/#"), ReasonCode::GRANTED_QOS_1);
    assert_eq!(publish(&mut alice, "a/1", "x"), ReasonCode::SUCCESS);
    assert_eq!(received(&mut alice), ["a/1"]);
    // The new rules take writing away, and part of the reading.
    std::fs::write(&acl, "user alice\ntopic read a/#\ntopic deny a/private\n").unwrap();
    assert_eq!(b.reload().unwrap().sessions, 1);
    assert_eq!(publish(&mut alice, "a/2", "x"), ReasonCode::NOT_AUTHORIZED);
    b.publish(
        topic("a/private"),
        Bytes::from_static(b"p"),
        QoS::AtMostOnce,
        false,
    );
    b.publish(
        topic("a/public"),
        Bytes::from_static(b"p"),
        QoS::AtMostOnce,
        false,
    );
    assert_eq!(received(&mut alice), ["a/public"]);
    // A broken file is refused with its line; the rules in force stay.
    std::fs::write(&acl, "user alice\ntopic readwrite a/#\nbogus line\n").unwrap();
    let e = b.reload().unwrap_err();
    assert!(
        e.to_string()
            .ends_with(":3: unknown keyword `bogus` (expected `topic`, `pattern` or `user`)"),
        "{e}"
    );
    assert_eq!(publish(&mut alice, "a/3", "x"), ReasonCode::NOT_AUTHORIZED);
}

#[tokio::test]
async fn a_malformed_file_stops_the_broker_from_starting() {
    let bad = temp_file("passwd", "alice:secret\n");
    let e = Broker::new(BrokerConfig {
        password_file: Some(bad.clone()),
        ..config()
    })
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}:1: the password is not hashed (run `petrel passwd -U` on the file)",
            bad.display()
        )
    );
    let e = Broker::new(BrokerConfig {
        acl_file: Some(temp_file("acl", "user a\ntopic read a/#/b\n")),
        ..config()
    })
    .unwrap_err();
    assert!(e.to_string().contains(":2: `a/#/b`"), "{e}");
}

#[tokio::test]
async fn listener_rules_limit_versions_and_methods() {
    use petrel_broker::ListenerRules;
    // A misspelt method in a listener's list stops the start, naming it.
    let misspelt = BrokerConfig {
        password_file: Some(password_file()),
        listeners: vec![ListenerConfig {
            auth_methods: Some(vec!["pasword_file".into()]),
            ..ListenerConfig::tcp("127.0.0.1:1883".parse().unwrap())
        }],
        ..config()
    };
    let e = Broker::new(misspelt).unwrap_err();
    assert!(matches!(e, BuildError::UnknownMethod { .. }), "{e}");
    assert!(e.to_string().contains("pasword_file"), "{e}");
    // Without sockets: a listener for 5.0 with passwords only.
    let b = Broker::new(BrokerConfig {
        password_file: Some(password_file()),
        allow_anonymous: Some(true),
        ..config()
    })
    .unwrap();
    let rules = std::sync::Arc::new(ListenerRules {
        protocols: vec![Protocol::V5],
        methods: Some(vec!["password_file".into()]),
        ..ListenerRules::default()
    });
    let here = || Peer {
        rules: rules.clone(),
        ..peer([127, 0, 0, 1])
    };
    let old = connect("old", None, None);
    let mut old311 = old.clone();
    old311.protocol = Protocol::V3_1_1;
    let refused = login_from(&b, old311, here()).await.unwrap_err();
    assert_eq!(refused, ReasonCode::UNSUPPORTED_PROTOCOL_VERSION);
    // Anonymous is allowed by the broker, not by this listener.
    let refused = login_from(&b, connect("anon", None, None), here())
        .await
        .unwrap_err();
    assert_eq!(refused, ReasonCode::NOT_AUTHORIZED);
    // Positive controls: the same anonymous client elsewhere, and a
    // password here.
    assert!(login(&b, connect("anon", None, None)).await.is_ok());
    assert!(
        login_from(&b, connect("alice", Some("alice"), Some("secret")), here())
            .await
            .is_ok()
    );
}

/// A store whose writes fail (a full or broken disk).
#[derive(Debug)]
struct BrokenStore;

impl petrel_broker::Store for BrokenStore {
    fn commit(&self, _: Vec<petrel_broker::Op>) -> std::io::Result<petrel_broker::Commit> {
        Err(std::io::Error::other("disk full"))
    }
    fn scan(&self, _: petrel_broker::Table) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(Vec::new())
    }
}

fn retain(c: &mut Client, t: &str, payload: &str) -> ReasonCode {
    let mut p = Publish::new(topic(t), Bytes::copy_from_slice(payload.as_bytes()));
    p.qos = QosPid::AtLeastOnce(pid(1));
    p.retain = true;
    c.publish(p, Instant::now(), false)
}

#[tokio::test]
async fn retained_messages_come_back_from_the_store_of_a_broker_gone() {
    let store = std::sync::Arc::new(petrel_broker::MemoryStore::new());
    let first = Broker::builder(config())
        .store(store.clone())
        .build()
        .unwrap();
    let mut p = login(&first, connect("p", None, None)).await.unwrap();
    retain(&mut p, "keep/a", "1");
    retain(&mut p, "keep/b", "2");
    retain(&mut p, "keep/a", "3");
    retain(&mut p, "gone", "x");
    retain(&mut p, "gone", "");
    drop(p);
    drop(first);
    // A new broker on the same store: what was retained, as last set.
    let second = Broker::builder(config()).store(store).build().unwrap();
    assert_eq!(second.stats().retained, 2);
    let mut s = login(&second, connect("s", None, None)).await.unwrap();
    assert_eq!(subscribe(&mut s, "#"), ReasonCode::GRANTED_QOS_1);
    let mut out: Vec<Message> = Vec::new();
    s.next_messages(100, 100, 100, Instant::now(), &mut out);
    let mut got: Vec<(String, String)> = out
        .iter()
        .map(|m| {
            (
                m.topic.as_str().to_string(),
                String::from_utf8_lossy(&m.payload).into_owned(),
            )
        })
        .collect();
    // (The retained tree's order is not the order they were set in.)
    got.sort();
    assert_eq!(
        got,
        vec![("keep/a".into(), "3".into()), ("keep/b".into(), "2".into())]
    );
}

#[tokio::test]
async fn a_retained_message_s_expiry_counts_the_time_the_broker_was_down() {
    use petrel_broker::core::store::encode_message;
    use petrel_broker::{Op, Store, Table};
    let store = std::sync::Arc::new(petrel_broker::MemoryStore::new());
    let stored_at = std::time::SystemTime::now() - Duration::from_secs(30);
    for (t, expiry) in [("short", 10), ("long", 600)] {
        let mut m = Message::new(topic(t), Bytes::from_static(b"v"), QoS::AtLeastOnce);
        m.retain = true;
        m.properties.set_message_expiry_interval(Some(expiry));
        store
            .commit(vec![Op::Put {
                table: Table::Retained,
                key: t.as_bytes().to_vec(),
                value: encode_message(&m, stored_at),
            }])
            .unwrap();
    }
    let b = Broker::builder(config())
        .store(store.clone())
        .build()
        .unwrap();
    // 30 s down: the 10 s one is gone (from the store too), the 600 s one
    // is back with 570 s or so left.
    assert_eq!(b.stats().retained, 1);
    let keys: Vec<Vec<u8>> = store
        .scan(Table::Retained)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, vec![b"long".to_vec()]);
    let mut s = login(&b, connect("s", None, None)).await.unwrap();
    subscribe(&mut s, "#");
    let mut out: Vec<Message> = Vec::new();
    s.next_messages(100, 100, 100, Instant::now(), &mut out);
    assert_eq!(out.len(), 1);
    let left = out[0].properties.message_expiry_interval().unwrap();
    assert!((560..=570).contains(&left), "{left}");
}

#[tokio::test]
async fn a_retained_message_the_store_refuses_is_not_acknowledged_as_taken() {
    let b = Broker::builder(config())
        .store(std::sync::Arc::new(BrokenStore))
        .build()
        .unwrap();
    let mut s = login(&b, connect("s", None, None)).await.unwrap();
    subscribe(&mut s, "t/#");
    let mut p = login(&b, connect("p", None, None)).await.unwrap();
    assert_eq!(
        retain(&mut p, "t/r", "v"),
        ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR
    );
    assert!(received(&mut s).is_empty(), "a refused message went out");
    assert_eq!(b.stats().store_errors, 1);
    // Positive control: what needs no storing goes through.
    assert_eq!(publish(&mut p, "t/plain", "v"), ReasonCode::SUCCESS);
    assert_eq!(received(&mut s), vec!["t/plain".to_string()]);
}

#[tokio::test]
async fn an_unreadable_stored_value_stops_the_broker_from_starting() {
    use petrel_broker::{Op, Store, Table};
    let store = std::sync::Arc::new(petrel_broker::MemoryStore::new());
    store
        .commit(vec![Op::Put {
            table: Table::Retained,
            key: b"bad/topic".to_vec(),
            value: vec![1, 2, 3],
        }])
        .unwrap();
    let e = Broker::builder(config()).store(store).build().unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, BuildError::Store(_)), "{msg}");
    assert!(msg.contains("bad/topic"), "{msg}");
}

/// Retained messages expire by an index of deadlines: the due ones go at
/// the next tick, a message replaced by one with a later (or no) expiry
/// stays, and a deleted one leaves no trace in the index.
#[tokio::test]
async fn retained_messages_expire_by_their_deadlines() {
    let b = Broker::new(BrokerConfig {
        sys_interval: 0,
        ..config()
    })
    .unwrap();
    let mut c = login(&b, connect("exp", None, None)).await.unwrap();
    let now = Instant::now();
    let retain = |c: &mut Client, t: &str, expiry: Option<u32>, payload: &'static str| {
        let mut p = Publish::new(topic(t), Bytes::from_static(payload.as_bytes()));
        p.retain = true;
        p.properties.set_message_expiry_interval(expiry);
        c.publish(p, now, false)
    };
    retain(&mut c, "exp/short", Some(1), "s");
    retain(&mut c, "exp/replaced", Some(1), "r");
    retain(&mut c, "exp/replaced", Some(1000), "r2");
    retain(&mut c, "exp/forever", Some(1), "f");
    retain(&mut c, "exp/forever", None, "f2");
    retain(&mut c, "exp/deleted", Some(1), "d");
    retain(&mut c, "exp/deleted", Some(1), "");
    assert_eq!(b.stats().retained, 3);
    b.tick(now + Duration::from_secs(2));
    let mut topics: Vec<String> = b
        .retained(&filter("exp/#"))
        .iter()
        .map(|m| m.topic.as_str().to_string())
        .collect();
    topics.sort();
    assert_eq!(topics, ["exp/forever", "exp/replaced"]);
    assert_eq!(b.stats().retained, 2);
}
