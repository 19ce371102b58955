//! What the command-line tests share: the binary, a process that is killed
//! when a test ends, and a free port.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn petrel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_petrel"))
}

/// Kills the process if a test fails midway.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub use petrel_testkit::free_port;

/// A broker on `port` keeping its store in `data`, once it listens.
pub fn start_on_data(data: &Path, port: u16) -> Running {
    let child = petrel()
        .args(["broker", "-p", &port.to_string(), "--data-dir"])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    listening(child, port)
}

/// `child` (a broker), once it listens on `port`.
pub fn listening(child: Child, port: u16) -> Running {
    let mut running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        // One that exited (its port taken, its configuration refused) is
        // said at once, not after the wait.
        if let Ok(Some(status)) = running.0.try_wait() {
            panic!("broker exited before it listened on {port}: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "broker did not listen on {port} within 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    running
}
