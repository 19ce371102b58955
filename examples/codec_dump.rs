//! Decode a captured MQTT byte stream and print every packet.
//!
//! Reads hex from the arguments or, without any, from standard input
//! (whitespace ignored), as a server would: the version comes from the
//! leading CONNECT unless `--v311`, `--v31` or `--v5` names it.
//!
//! ```sh
//! cargo run -p petrel-examples --example codec_dump -- --v311 30 07 00 03 61 2f 62 68 69
//! ```

use std::io::Read;
use std::process::ExitCode;

use bytes::BytesMut;
use petrel_codec::{Limits, Packet, Protocol};

fn main() -> ExitCode {
    let mut protocol = None;
    let mut hex = String::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--v31" => protocol = Some(Protocol::V3_1),
            "--v311" => protocol = Some(Protocol::V3_1_1),
            "--v5" => protocol = Some(Protocol::V5),
            _ => hex.push_str(&arg),
        }
    }
    if hex.is_empty() {
        if let Err(e) = std::io::stdin().read_to_string(&mut hex) {
            eprintln!("reading stdin: {e}");
            return ExitCode::from(2);
        }
    }
    let digits: Vec<u8> = hex.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let mut buf = BytesMut::with_capacity(digits.len() / 2);
    for pair in digits.chunks(2) {
        match std::str::from_utf8(pair)
            .ok()
            .and_then(|s| u8::from_str_radix(s, 16).ok())
        {
            Some(b) if pair.len() == 2 => buf.extend_from_slice(&[b]),
            _ => {
                eprintln!("not hex: {:?}", String::from_utf8_lossy(pair));
                return ExitCode::from(2);
            }
        }
    }
    let limits = Limits::default();
    loop {
        match Packet::decode(&mut buf, protocol, &limits) {
            Ok(Some(packet)) => {
                if let (None, Packet::Connect(c)) = (protocol, &packet) {
                    protocol = Some(c.protocol);
                }
                println!("{packet:#?}");
            }
            Ok(None) if buf.is_empty() => return ExitCode::SUCCESS,
            Ok(None) => {
                eprintln!("{} bytes left: an incomplete packet", buf.len());
                return ExitCode::FAILURE;
            }
            Err(e) => {
                let spec = e.spec().map(|s| format!(" [{s}]")).unwrap_or_default();
                eprintln!(
                    "malformed: {e}; a 5.0 server answers {}{spec}",
                    e.reason_code()
                );
                return ExitCode::FAILURE;
            }
        }
    }
}
