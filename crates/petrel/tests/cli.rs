//! The `petrel broker` command as a user runs it: default listener, `-p`,
//! `--config`, configuration errors, and SIGTERM.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, petrel, Running};

const CONNECT_3_1_1: [u8; 15] = [
    0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x01, b'c',
];

fn spawn(args: &[&str]) -> Running {
    Running(
        petrel()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// CONNECT over a fresh socket, retrying while the broker starts; the
/// CONNACK must accept.
fn mqtt_handshake(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("broker not listening on {port}: {e}"),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&CONNECT_3_1_1).unwrap();
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
}

fn terminate(mut running: Running) -> std::process::ExitStatus {
    let pid = running.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = running.0.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn dash_p_overrides_the_port_and_sigterm_stops_gracefully() {
    let port = free_port();
    let broker = spawn(&["broker", "--memory", "-p", &port.to_string()]);
    mqtt_handshake(port);
    assert!(terminate(broker).success());
}

#[test]
fn with_no_configuration_it_listens_on_127_0_0_1_1883() {
    if TcpListener::bind("127.0.0.1:1883").is_err() {
        eprintln!("port 1883 is taken on this machine; skipping the default-port check");
        return;
    }
    // Durable by default, in the per-user data directory.
    let data = std::env::temp_dir().join(format!("petrel-cli-xdg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let broker = Running(
        petrel()
            .arg("broker")
            .env("XDG_DATA_HOME", &data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    mqtt_handshake(1883);
    assert!(
        data.join("petrel").join("FORMAT").exists(),
        "no store in $XDG_DATA_HOME/petrel"
    );
    assert!(terminate(broker).success());
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn a_config_file_sets_the_listeners() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("petrel-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("petrel.toml");
    std::fs::write(
        &path,
        format!(
            "log_level = \"warn\"\nsys_interval = 5\n[[listener]]\nbind = \"127.0.0.1:{port}\"\n[limits]\nmax_connections = 10\n"
        ),
    )
    .unwrap();
    let broker = spawn(&["broker", "--memory", "--config", path.to_str().unwrap()]);
    mqtt_handshake(port);
    assert!(terminate(broker).success());
}

#[test]
fn a_wrong_config_names_the_key_and_the_broker_does_not_start() {
    let dir = std::env::temp_dir().join(format!("petrel-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (text, key) in [
        ("[limits]\nmax_conections = 10\n", "max_conections"),
        ("[limits]\nmax_qos = 3\n", "limits.max_qos"),
        ("[limits]\nmax_packet_size = \"big\"\n", "max_packet_size"),
        ("[[listener]]\nbind = \"nowhere\"\n", "bind"),
        ("log_level = \"loud\"\n", "log_level"),
    ] {
        let path = dir.join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = petrel()
            .args(["broker", "--memory", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{key} not named in: {stderr}");
    }
}

#[test]
fn help_describes_the_broker_flags() {
    let out = petrel()
        .args(["broker", "--memory", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--config", "--port", "--bind"] {
        assert!(help.contains(flag), "{flag} missing from {help}");
    }
}

/// A broker on `port` in memory, its standard error piped.
fn spawn_logged(port: u16) -> Running {
    Running(
        petrel()
            .args(["broker", "--memory", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// Stop a broker from [`spawn_logged`] with SIGTERM: all it logged.
fn log_after(mut running: Running) -> String {
    let mut stderr = running.0.stderr.take().unwrap();
    let _ = terminate(running);
    let mut log = String::new();
    stderr.read_to_string(&mut log).unwrap();
    log
}

#[test]
fn logs_to_a_pipe_carry_no_terminal_colours() {
    let port = free_port();
    let broker = spawn_logged(port);
    mqtt_handshake(port);
    let log = log_after(broker);
    // Positive control: the log is there, its level names readable.
    assert!(log.contains(" INFO "), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI codes in a piped log: {log:?}"
    );
}

#[test]
fn log_format_json_to_a_log_file_writes_one_object_a_line() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("petrel-cli-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("petrel.log");
    let _ = std::fs::remove_file(&log);
    let config = dir.join("petrel.toml");
    std::fs::write(
        &config,
        format!(
            "log_format = \"json\"\nlog_file = \"{}\"\n[[listener]]\nbind = \"127.0.0.1:{port}\"\n",
            log.display()
        ),
    )
    .unwrap();
    let broker = spawn(&["broker", "--memory", "--config", config.to_str().unwrap()]);
    mqtt_handshake(port);
    assert!(terminate(broker).success());
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "{text}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            v.get("level").is_some() && v.get("fields").is_some(),
            "{line}"
        );
    }
    assert!(!text.contains('\u{1b}'));
    // A log file that can't be opened stops the broker, naming it.
    let out = petrel()
        .args(["broker", "--memory", "-p", &free_port().to_string()])
        .arg("--config")
        .arg({
            let bad = dir.join("bad.toml");
            std::fs::write(&bad, "log_file = \"/nonexistent-dir/petrel.log\"\n").unwrap();
            bad
        })
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent-dir/petrel.log"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_close_is_logged_in_words() {
    let port = free_port();
    let broker = spawn_logged(port);
    mqtt_handshake(port);
    // A client with a keep alive of 1 s that then says nothing.
    let mut connect = CONNECT_3_1_1;
    connect[11] = 1;
    connect[14] = b'k';
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&connect).unwrap();
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).unwrap();
    // The broker closes it after 1.5 keep alives: end of stream.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let log = log_after(broker);
    let line = log
        .lines()
        .find(|l| l.contains("connection closed") && l.contains("client_id=k"))
        .unwrap_or_else(|| panic!("no close logged: {log}"));
    assert!(
        line.contains("nothing heard within 1.5 times the keep alive"),
        "{line}"
    );
    assert!(!line.contains("KeepAliveTimeout"), "{line}");
}
