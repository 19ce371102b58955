//! What the command-line tests share: the binary, a process that is killed
//! when a test ends, and a free port.
#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::process::{Child, Command};

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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
