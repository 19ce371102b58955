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

/// The brokers every tool test runs against: `petrel broker`, and
/// Mosquitto where it is installed (CI installs it and sets
/// PETREL_REQUIRE_MOSQUITTO, which makes its absence an error).
fn brokers() -> Vec<(Running, String)> {
    let port = free_port();
    let child = petrel()
        .args(["broker", "-p", &port.to_string()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port);
    let mut out = vec![(Running(child), port.to_string())];
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
            "--will-topic",
        ] {
            assert!(help.contains(flag), "{tool} --help lacks {flag}");
        }
    }
}

use std::io::Write;
