//! The durable store as an operator meets it: retained messages that
//! survive SIGKILL, a data directory two brokers can't share, and `petrel
//! store check` / `salvage` on a store with a damaged entry.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::{free_port, petrel, start_on_data};
use petrel_broker::{DiskStore, Durability, Op, Store, Table};
use petrel_client::{connect, ConnectOptions, Message, Protocol, QoS, TopicName};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("petrel-cli-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn options(port: u16, id: &str) -> ConnectOptions {
    let mut o = ConnectOptions::new("127.0.0.1", port, id).protocol(Protocol::V5);
    o.reconnect.enabled = false;
    o.connect_timeout = Duration::from_secs(3);
    o
}

async fn retain(port: u16, topic: &str, payload: &'static [u8]) {
    let (c, _) = connect(options(port, "retainer")).await.unwrap();
    let mut m = Message::new(
        TopicName::try_from(topic).unwrap(),
        Bytes::from_static(payload),
        QoS::AtLeastOnce,
    );
    m.retain = true;
    // Returns once the PUBACK is in: from here on it is a promise.
    c.publish(m).await.unwrap();
}

/// The retained messages a new subscriber to `#` gets, by topic.
async fn retained(port: u16) -> Vec<(String, Vec<u8>)> {
    let (c, mut inbox) = connect(options(port, "reader")).await.unwrap();
    c.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    let mut got = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), inbox.recv()).await {
        got.push((m.topic.as_str().to_string(), m.payload.to_vec()));
    }
    got.sort();
    got
}

#[tokio::test]
async fn retained_messages_survive_sigkill() {
    let data = dir("kill");
    let port = free_port();
    let mut broker = start_on_data(&data, port);
    retain(port, "site/1/temp", b"21.5").await;
    retain(port, "site/2/temp", b"19.0").await;
    retain(port, "site/1/temp", b"22.0").await;
    retain(port, "site/2/temp", b"").await;
    // Killed the moment the last PUBACK came: nothing saved at shutdown.
    broker.0.kill().unwrap();
    broker.0.wait().unwrap();
    let _broker = start_on_data(&data, port);
    assert_eq!(
        retained(port).await,
        vec![("site/1/temp".to_string(), b"22.0".to_vec())]
    );
    drop(_broker);
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test]
async fn a_data_directory_in_use_is_refused_naming_it_and_the_other_broker() {
    let data = dir("inuse");
    let first = start_on_data(&data, free_port());
    let out = petrel()
        .args(["broker", "-p", &free_port().to_string(), "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a second broker started on the same store"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&data.display().to_string()), "{err}");
    assert!(err.contains(&first.0.id().to_string()), "{err}");
    // Positive control: once the first is gone, the directory can be used.
    drop(first);
    let port = free_port();
    let _again = start_on_data(&data, port);
    let _ = std::fs::remove_dir_all(&data);
}

/// Start a broker on `data` expecting it to refuse: what it said.
fn refused_start(data: &Path) -> String {
    let out = petrel()
        .args(["broker", "-p", &free_port().to_string(), "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `petrel store check` on `data`: its exit status and report.
fn check(data: &Path) -> (Option<i32>, String) {
    let out = petrel()
        .args(["store", "check", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `petrel store salvage` from `data` into `into`, which must succeed.
fn salvage(data: &Path, into: &Path) {
    let out = petrel()
        .args(["store", "salvage", "--data-dir"])
        .arg(data)
        .arg("--into")
        .arg(into)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn check_reports_a_damaged_entry_and_salvage_keeps_the_rest() {
    let data = dir("damaged");
    let port = free_port();
    let broker = start_on_data(&data, port);
    retain(port, "good", b"kept").await;
    drop(broker);
    // Clean so far.
    let (code, report) = check(&data);
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("retained: 1 readable, 0 not"), "{report}");
    // A value no Petrel wrote.
    {
        let store = DiskStore::open(&data, Durability::Process, Duration::ZERO).unwrap();
        store
            .commit(vec![Op::Put {
                table: Table::Retained,
                key: b"bad".to_vec(),
                value: vec![1, 0, 0],
            }])
            .unwrap();
    }
    // The broker will not start on it, and says what to do.
    let err = refused_start(&data);
    assert!(err.contains("\"bad\""), "{err}");
    let (code, report) = check(&data);
    assert_eq!(code, Some(1), "{report}");
    assert!(report.contains("retained: 1 readable, 1 not"), "{report}");
    assert!(report.contains("unreadable retained \"bad\""), "{report}");
    // Salvage into a new directory; a broker there has the good one.
    let rescued = dir("rescued");
    salvage(&data, &rescued);
    let port = free_port();
    let _broker = start_on_data(&rescued, port);
    assert_eq!(
        retained(port).await,
        vec![("good".to_string(), b"kept".to_vec())]
    );
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(&rescued);
}

#[tokio::test]
async fn a_damaged_journal_is_refused_naming_the_file_and_salvage_keeps_what_precedes_it() {
    let data = dir("torn");
    let port = free_port();
    let broker = start_on_data(&data, port);
    retain(port, "one", b"1").await;
    retain(port, "two", b"2").await;
    retain(port, "three", b"3").await;
    drop(broker);
    // Flip a byte inside the second message's frame, before the end.
    let journal = data.join("journal");
    let segment = std::fs::read_dir(&journal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes.windows(3).position(|w| w == b"two").unwrap();
    bytes[at] ^= 0x20;
    std::fs::write(&segment, &bytes).unwrap();
    let err = refused_start(&data);
    assert!(err.contains(&segment.display().to_string()), "{err}");
    assert!(err.contains("petrel store check"), "{err}");
    let (code, report) = check(&data);
    assert_eq!(code, Some(1), "{report}");
    assert!(report.contains("damaged journal"), "{report}");
    assert!(report.contains("retained: 1 readable, 0 not"), "{report}");
    let rescued = dir("torn-rescued");
    salvage(&data, &rescued);
    let port = free_port();
    let _broker = start_on_data(&rescued, port);
    assert_eq!(
        retained(port).await,
        vec![("one".to_string(), b"1".to_vec())]
    );
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(&rescued);
}
