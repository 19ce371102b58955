//! `petrel pub` and `petrel sub` as a shell script uses them, against
//! `petrel broker`, in 3.1.1 and 5.0.

mod common;

use std::io::Read;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, petrel, Running};

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "broker did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `petrel broker` in memory on a free port, once it listens, and the port.
fn petrel_broker() -> (Running, String) {
    let port = free_port();
    let child = petrel()
        .args(["broker", "--memory", "-p", &port.to_string()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port);
    (Running(child), port.to_string())
}

/// The brokers every tool test runs against: `petrel broker`, and
/// Mosquitto where it is installed (CI installs it and sets
/// PETREL_REQUIRE_MOSQUITTO, which makes its absence an error).
fn brokers() -> Vec<(Running, String)> {
    let mut out = vec![petrel_broker()];
    match Command::new("mosquitto")
        .arg("-p")
        .arg("0")
        .arg("-h")
        .output()
    {
        Ok(_) => {
            let port = free_port();
            let child = Command::new("mosquitto")
                .args(["-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            wait_port(port);
            out.push((Running(child), port.to_string()));
        }
        Err(_) => assert!(
            std::env::var_os("PETREL_REQUIRE_MOSQUITTO").is_none(),
            "mosquitto is required but not installed"
        ),
    }
    out
}

fn run(args: &[&str]) -> Output {
    petrel().args(args).output().unwrap()
}

/// Start `petrel sub` and give it time to subscribe (-d is not needed: the
/// subscription is acknowledged before any message it should see).
fn sub(args: &[&str]) -> Running {
    let child = petrel()
        .arg("sub")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    Running(child)
}

fn finish(mut r: Running) -> (Option<i32>, String) {
    let status = r.0.wait().unwrap();
    let mut out = String::new();
    r.0.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    (status.code(), out)
}

#[test]
fn every_qos_both_versions_round_trips() {
    for (_b, port) in brokers() {
        for v in ["311", "5"] {
            for q in ["0", "1", "2"] {
                let s = sub(&[
                    "-p", &port, "-V", v, "-q", q, "-t", "t/+", "-v", "-C", "1", "-W", "5",
                ]);
                let o = run(&[
                    "pub", "-p", &port, "-V", v, "-q", q, "-t", "t/1", "-m", "hello",
                ]);
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                assert_eq!(
                    finish(s),
                    (Some(0), "t/1 hello\n".to_string()),
                    "-V {v} -q {q}"
                );
            }
        }
    }
}

#[test]
fn retained_null_message_and_retained_only() {
    for (_b, port) in brokers() {
        assert!(
            run(&["pub", "-p", &port, "-t", "r/t", "-m", "kept", "-r", "-q", "1"])
                .status
                .success()
        );
        let s = sub(&[
            "-p",
            &port,
            "-t",
            "r/t",
            "-C",
            "1",
            "-F",
            "%t=%p retain=%r",
            "-W",
            "5",
        ]);
        assert_eq!(finish(s), (Some(0), "r/t=kept retain=1\n".to_string()));
        // -R hides stale (retained) messages.
        let s = sub(&["-p", &port, "-t", "r/t", "-R", "-W", "1"]);
        assert_eq!(finish(s), (Some(27), String::new()));
        // -n -r deletes it.
        assert!(run(&["pub", "-p", &port, "-t", "r/t", "-n", "-r"])
            .status
            .success());
        let s = sub(&["-p", &port, "-t", "r/t", "--retained-only", "-W", "1"]);
        assert_eq!(finish(s), (Some(27), String::new()));
    }
}

#[test]
fn will_flags_publish_a_will_when_the_tool_is_killed() {
    for (_b, port) in brokers() {
        for v in ["311", "5"] {
            let watcher = sub(&["-p", &port, "-V", v, "-t", "w/t", "-C", "1", "-W", "5"]);
            let mut mortal = sub(&[
                "-p",
                &port,
                "-V",
                v,
                "-t",
                "nothing",
                "--will-topic",
                "w/t",
                "--will-payload",
                "bye",
                "--will-qos",
                "1",
            ]);
            mortal.0.kill().unwrap();
            assert_eq!(finish(watcher), (Some(0), "bye\n".to_string()), "-V {v}");
        }
    }
}

#[test]
fn a_persistent_session_keeps_messages_while_the_subscriber_is_away() {
    for (_b, port) in brokers() {
        for v in ["311", "5"] {
            let id = format!("persist{v}");
            // -E: subscribe and exit, leaving the session behind.
            let o = run(&[
                "sub", "-p", &port, "-V", v, "-c", "-i", &id, "-q", "1", "-t", "p/t", "-E",
            ]);
            assert!(o.status.success());
            for m in ["one", "two"] {
                assert!(
                    run(&["pub", "-p", &port, "-V", v, "-q", "1", "-t", "p/t", "-m", m])
                        .status
                        .success()
                );
            }
            let s = sub(&[
                "-p", &port, "-V", v, "-c", "-i", &id, "-q", "1", "-t", "p/t", "-C", "2", "-W", "5",
            ]);
            assert_eq!(finish(s), (Some(0), "one\ntwo\n".to_string()), "-V {v}");
        }
    }
}

#[test]
fn lines_repeat_filter_out_format_and_properties() {
    for (_b, port) in brokers() {
        let s = sub(&[
            "-p", &port, "-t", "l/#", "-T", "l/skip", "-C", "3", "-W", "5",
        ]);
        let mut p = petrel()
            .args(["pub", "-p", &port, "-t", "l/x", "-l"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        p.stdin.take().unwrap().write_all(b"a\nb\n").unwrap();
        assert!(p.wait().unwrap().success());
        assert!(run(&["pub", "-p", &port, "-t", "l/skip", "-m", "hidden"])
            .status
            .success());
        assert!(
            run(&["pub", "-p", &port, "-t", "l/y", "-m", "c", "--repeat", "1"])
                .status
                .success()
        );
        assert_eq!(finish(s), (Some(0), "a\nb\nc\n".to_string()));

        let s = sub(&[
            "-p",
            &port,
            "-V",
            "5",
            "-t",
            "f/t",
            "-C",
            "2",
            "-N",
            "-F",
            "%p|%P|%C|%R|%D;",
        ]);
        let o = run(&[
            "pub",
            "-p",
            &port,
            "-V",
            "5",
            "-t",
            "f/t",
            "-m",
            "m",
            "--repeat",
            "2",
            "--repeat-delay",
            "0.1",
            "-D",
            "publish",
            "user-property",
            "k",
            "v",
            "-D",
            "publish",
            "content-type",
            "text/x",
            "-D",
            "publish",
            "response-topic",
            "re/t",
            "-D",
            "publish",
            "correlation-data",
            "cd",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            finish(s),
            (
                Some(0),
                "m|k:v|text/x|re/t|cd;m|k:v|text/x|re/t|cd;".to_string()
            )
        );
    }
}

/// `petrel broker` with a TCP listener needing a password (alice/secret),
/// a WebSocket listener and a Unix socket, from a configuration file: the
/// TCP and WebSocket ports, and the socket's path.
fn transports_broker(dir: &std::path::Path) -> (Running, u16, u16, std::path::PathBuf) {
    let pw = dir.join("passwd");
    let out = petrel()
        .args([
            "passwd",
            "-c",
            "-b",
            pw.to_str().unwrap(),
            "alice",
            "secret",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let (tcp, ws) = (free_port(), free_port());
    let sock = dir.join("mqtt.sock");
    let conf = dir.join("petrel.toml");
    std::fs::write(
        &conf,
        format!(
            "sys_interval = 0\npassword_file = {pw:?}\nallow_anonymous = true\n\
             [[listener]]\nbind = \"127.0.0.1:{tcp}\"\nauth_methods = [\"password_file\"]\n\
             [[listener]]\ntransport = \"ws\"\nbind = \"127.0.0.1:{ws}\"\nauth_methods = [\"anonymous\"]\n\
             [[listener]]\ntransport = \"unix\"\npath = {sock:?}\nauth_methods = [\"anonymous\"]\n"
        ),
    )
    .unwrap();
    let child = petrel()
        .args(["broker", "--memory", "-c", conf.to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(tcp);
    wait_port(ws);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "the unix listener did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Running(child), tcp, ws, sock)
}

#[test]
fn url_and_unix_socket_flags() {
    let dir = std::env::temp_dir().join(format!("petrel-tools-url-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (_b, tcp, ws, sock) = transports_broker(&dir);
    let sock = sock.to_str().unwrap();
    // -L as mosquitto's: credentials, and the path as the topic, for both
    // tools; the message comes back through the Unix socket.
    let url = format!("mqtt://alice:secret@127.0.0.1:{tcp}/u/t");
    let unix_sub = sub(&["--unix", sock, "-t", "u/#", "-v", "-C", "2", "-W", "5"]);
    let url_sub = sub(&["-L", &url, "-v", "-C", "1", "-W", "5"]);
    let o = run(&["pub", "-L", &url, "-q", "1", "-m", "by url"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(finish(url_sub), (Some(0), "u/t by url\n".to_string()));
    // Through the Unix socket, by flag and by URL, with -t.
    let o = run(&[
        "pub",
        "-L",
        &format!("unix://{sock}"),
        "-t",
        "u/x",
        "-m",
        "by socket",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        finish(unix_sub),
        (Some(0), "u/t by url\nu/x by socket\n".to_string())
    );
    // WebSocket: the URL's path is the WebSocket path, the topic is -t.
    let ws_url = format!("ws://127.0.0.1:{ws}/mqtt");
    let ws_sub = sub(&["-L", &ws_url, "-t", "w/t", "-V", "5", "-C", "1", "-W", "5"]);
    let o = run(&["pub", "--unix", sock, "-t", "w/t", "-m", "over ws"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(finish(ws_sub), (Some(0), "over ws\n".to_string()));

    // The password in the URL is what lets it in: a wrong one is refused.
    let bad = format!("mqtt://alice:wrong@127.0.0.1:{tcp}/u/t");
    let o = run(&["pub", "-L", &bad, "-m", "x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("refused"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // No topic anywhere; a URL clients can't use; -L with -h.
    let o = run(&["pub", "-L", &format!("mqtt://127.0.0.1:{tcp}"), "-m", "x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("give a topic"));
    let o = run(&["sub", "-L", &format!("mqtt://127.0.0.1:{tcp}")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("give a topic"));
    let o = run(&["pub", "-L", "http://127.0.0.1/t", "-m", "x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown scheme http"));
    let o = run(&["pub", "-L", &url, "-h", "localhost", "-m", "x"]);
    assert_ne!(o.status.code(), Some(0), "-L and -h conflict");
    // A socket where none is: the error names it.
    let missing = dir.join("none.sock");
    let o = run(&[
        "pub",
        "--unix",
        missing.to_str().unwrap(),
        "-t",
        "t",
        "-m",
        "x",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("none.sock"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A CA and a server certificate for localhost (P-256 keys), made with
/// the `openssl` command in `dir`: `ca/ca.pem`, `server.pem`, `server.key`.
fn openssl_certs(dir: &std::path::Path) {
    std::fs::create_dir_all(dir.join("ca")).unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl command");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca/ca.pem",
                "-subj",
                "/CN=petrel test CA",
                "-days",
                "2",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca/ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
}

#[test]
fn tls_versions_suites_ca_directory_and_mqtts_urls() {
    let dir = std::env::temp_dir().join(format!("petrel-tools-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    openssl_certs(&dir);
    let port = free_port();
    let conf = dir.join("petrel.toml");
    std::fs::write(
        &conf,
        format!(
            "sys_interval = 0\n[[listener]]\ntransport = \"tls\"\nbind = \"127.0.0.1:{port}\"\n\
             certfile = {:?}\nkeyfile = {:?}\n",
            dir.join("server.pem"),
            dir.join("server.key")
        ),
    )
    .unwrap();
    let _b = Running(
        petrel()
            .args(["broker", "--memory", "-c", conf.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(port);
    let port = port.to_string();
    let capath = dir.join("ca");
    let capath = capath.to_str().unwrap();
    let cafile = dir.join("ca/ca.pem");
    let url = format!("mqtts://localhost:{port}/s/t");
    let s = sub(&[
        "-L",
        &url,
        "--cafile",
        cafile.to_str().unwrap(),
        "-C",
        "2",
        "-W",
        "5",
    ]);
    // TLS 1.2 with one named suite, trusting the CA directory.
    let o = run(&[
        "pub",
        "-h",
        "localhost",
        "-p",
        &port,
        "--capath",
        capath,
        "-t",
        "s/t",
        "-m",
        "one",
        "--tls-version",
        "tlsv1.2",
        "--ciphers",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // TLS 1.3, a suite by its rustls name.
    let o = run(&[
        "pub",
        "-L",
        &url,
        "--capath",
        capath,
        "-m",
        "two",
        "--tls-version",
        "tlsv1.3",
        "--ciphers",
        "TLS13_CHACHA20_POLY1305_SHA256",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(finish(s), (Some(0), "one\ntwo\n".to_string()));
    // TLS 1.3 with only TLS 1.2 suites can't work; nor can the system's
    // roots, which don't know this CA.
    let o = run(&[
        "pub",
        "-L",
        &url,
        "--capath",
        capath,
        "-m",
        "x",
        "--tls-version",
        "tlsv1.3",
        "--ciphers",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let o = run(&["pub", "-L", &url, "-m", "x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("TLS"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tls_flags_are_checked() {
    let o = run(&["pub", "-t", "t", "-m", "x", "--ciphers", "NULL-MD5"]);
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("unknown cipher suite NULL-MD5"), "{stderr}");
    assert!(
        stderr.contains("TLS13_AES_128_GCM_SHA256"),
        "lists the known: {stderr}"
    );
    let o = run(&["pub", "-t", "t", "-m", "x", "--tls-version", "tlsv1.1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("tlsv1.3 or tlsv1.2"));
    // A CA directory without certificates: refused before connecting.
    let empty = std::env::temp_dir().join(format!("petrel-tools-capath-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let o = run(&[
        "pub",
        "-p",
        "1",
        "-t",
        "t",
        "-m",
        "x",
        "--capath",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no usable CA"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let _ = std::fs::remove_dir_all(&empty);
}

#[test]
fn errors_give_a_message_and_a_nonzero_exit() {
    let o = run(&["pub", "-p", "1", "-t", "x", "-m", "a"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("connection failed"));
    let o = run(&["pub", "-t", "x", "-m", "a", "-q", "3"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("QoS"));
    let o = run(&["sub", "-p", "1"]);
    assert_ne!(o.status.code(), Some(0), "-t is required");
    for tool in ["pub", "sub"] {
        let o = run(&[tool, "--help"]);
        assert!(o.status.success());
        let help = String::from_utf8_lossy(&o.stdout).to_string();
        for flag in [
            "--host",
            "--port",
            "--qos",
            "--topic",
            "--protocol-version",
            "--cafile",
            "--capath",
            "--tls-version",
            "--ciphers",
            "--url",
            "--unix",
            "--will-topic",
        ] {
            assert!(help.contains(flag), "{tool} --help lacks {flag}");
        }
    }
}

use std::io::Write;

/// `petrel bench latency` sends each message at its own time: at 2,000
/// msg/s, 500 µs apart, not two at once every millisecond (the runtime's
/// timer counts whole milliseconds, and a generator that slept on it sent
/// pairs).
#[test]
fn bench_latency_spaces_its_messages_evenly() {
    bench_spaces_its_messages(
        "bench/+/latency",
        &["latency", "--rate", "2000", "-s", "1"],
        "2000 samples",
    );
}

/// `petrel bench fleet` spreads the fleet's messages evenly: 20 devices
/// together sending 2,000 msg/s send one every 500 µs, not the devices
/// whose turns fall in one millisecond at once (they slept on the
/// runtime's millisecond timer, and woke in bursts the broker read in one
/// go). At QoS 1, so its subscriber's acknowledgements (one write for
/// what one read brought) are needed for every delivery to arrive.
#[test]
fn bench_fleet_spreads_its_messages_evenly() {
    let stderr = bench_spaces_its_messages(
        "bench/+/fleet/+/data",
        &[
            "fleet", "--count", "20", "--rate", "2000", "-n", "1", "-s", "1", "-q", "1",
        ],
        // (Counted by when each was sent: one sent late at an edge of the
        // measured second falls on the other side, so no exact count.)
        "messages sent in the measured time",
    );
    // "N messages sent in the measured time, D of E deliveries arrived"
    let line = stderr
        .lines()
        .find(|l| l.contains("deliveries arrived"))
        .unwrap_or_else(|| panic!("{stderr}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "of").unwrap();
    let (delivered, expected) = (words[at - 1], words[at + 1]);
    assert!(
        expected.parse::<u64>().unwrap() >= 1_900,
        "the control: about 2,000 were measured: {line}"
    );
    assert_eq!(delivered, expected, "{line}");
}

/// Runs `petrel bench ARGS` (one second of warm-up and one measured at
/// 2,000 msg/s: 4,000 messages) while a third client subscribed to
/// `filter` reads the send time each payload starts with; the bench must
/// say `says`, and the messages must be sent at about 500 µs apart. What
/// the bench printed on standard error is returned.
fn bench_spaces_its_messages(filter: &str, args: &[&str], says: &str) -> String {
    // One at a time: two benches at once on a small machine would delay
    // each other's ticks and send in bursts.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (_broker, p) = petrel_broker();
    // A retained message first shows the watcher is subscribed.
    let ready = filter.replace('+', "ready");
    let o = run(&["pub", "-p", &p, "-t", &ready, "-m", "ready", "-r"]);
    assert!(o.status.success());
    let mut watcher = sub(&["-p", &p, "-t", filter, "-F", "%x", "-C", "4001", "-W", "60"]);
    // (Read as it comes: 4,000 lines would fill the pipe.)
    let stdout = watcher.0.stdout.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { return };
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    assert_eq!(
        lines.recv_timeout(Duration::from_secs(20)).as_deref(),
        Ok("7265616479"),
        "the watcher has the retained message, so it is subscribed"
    );
    let o = petrel()
        .arg("bench")
        .args(args)
        .args(["-p", &p, "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains(says), "{stderr}");
    let code = watcher.0.wait().unwrap().code();
    assert_eq!(code, Some(0), "the watcher saw all 4,000 messages");
    // In the order sent (from several connections they may arrive a
    // little out of it).
    let mut sent: Vec<u64> = lines
        .iter()
        .map(|l| u64::from_str_radix(&l[..16], 16).unwrap())
        .collect();
    sent.sort_unstable();
    assert_eq!(sent.len(), 4000);
    let gaps: Vec<u64> = sent.windows(2).map(|w| w[1] - w[0]).collect();
    // All of them spread over the two seconds (the control: the times are
    // the sender's, in nanoseconds)...
    let span = sent[sent.len() - 1] - sent[0];
    assert!(
        (1_900_000_000..3_000_000_000).contains(&span),
        "span {span} ns"
    );
    // ...and not in bursts: sent two at once, half the gaps would be a few
    // microseconds. A loaded machine can delay a tick and send the next at
    // once, hence the generous bound.
    let close = gaps.iter().filter(|g| **g < 100_000).count();
    assert!(
        close < gaps.len() / 4,
        "{close} of {} gaps under 100 µs",
        gaps.len()
    );
    stderr
}
