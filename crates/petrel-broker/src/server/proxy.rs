//! The PROXY protocol (HAProxy's, versions 1 and 2): a load balancer in
//! front of the broker tells it, before anything else on the connection,
//! whom the connection is really from. The header is read exactly, byte
//! for byte, so nothing of what follows is consumed; one that is
//! malformed, lies about its lengths or never finishes ends the connection.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// Version 2's signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A version 1 line is at most this long, CRLF included.
const V1_MAX: usize = 107;
/// Most bytes of addresses and TLVs accepted in a version 2 header.
const V2_MAX: usize = 4096;

fn bad(why: impl Into<String>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("PROXY header: {}", why.into()),
    )
}

/// Read a PROXY header from `io`: the client's address it names, or `None`
/// for a connection the balancer made itself (`UNKNOWN`, `LOCAL`) or whose
/// address family is not IP.
pub(crate) async fn read_header<S: AsyncRead + Unpin>(
    io: &mut S,
) -> io::Result<Option<SocketAddr>> {
    let mut start = [0u8; 12];
    io.read_exact(&mut start[..6]).await?;
    if &start[..6] == b"PROXY " {
        let mut line = start[..6].to_vec();
        while !line.ends_with(b"\r\n") {
            if line.len() >= V1_MAX {
                return Err(bad("version 1 line too long"));
            }
            line.push(io.read_u8().await?);
        }
        return parse_v1(&line);
    }
    io.read_exact(&mut start[6..]).await?;
    if start != V2_SIGNATURE {
        return Err(bad("no PROXY header"));
    }
    let mut head = [0u8; 4];
    io.read_exact(&mut head).await?;
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    if len > V2_MAX {
        return Err(bad("version 2 header too long"));
    }
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    parse_v2(head[0], head[1], &body)
}

fn parse_v1(line: &[u8]) -> io::Result<Option<SocketAddr>> {
    let text = std::str::from_utf8(&line[..line.len() - 2]).map_err(|_| bad("not ASCII"))?;
    let fields: Vec<&str> = text.split(' ').collect();
    match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(None),
        ["PROXY", family, src, dst, sport, dport] => {
            let src: IpAddr = src.parse().map_err(|_| bad("bad source address"))?;
            let dst: IpAddr = dst.parse().map_err(|_| bad("bad destination address"))?;
            let ok = match *family {
                "TCP4" => src.is_ipv4() && dst.is_ipv4(),
                "TCP6" => src.is_ipv6() && dst.is_ipv6(),
                _ => return Err(bad("unknown family")),
            };
            if !ok {
                return Err(bad("addresses don't match their family"));
            }
            let port = |p: &str| {
                // No sign, no leading zero (the spec's format).
                if p.is_empty()
                    || (p.len() > 1 && p.starts_with('0'))
                    || !p.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(bad("bad port"));
                }
                p.parse::<u16>().map_err(|_| bad("bad port"))
            };
            let sport = port(sport)?;
            port(dport)?;
            Ok(Some(SocketAddr::new(src, sport)))
        }
        _ => Err(bad("malformed version 1 line")),
    }
}

fn parse_v2(version_command: u8, family: u8, body: &[u8]) -> io::Result<Option<SocketAddr>> {
    if version_command >> 4 != 2 {
        return Err(bad("unknown version"));
    }
    match version_command & 0x0f {
        // LOCAL: the balancer's own connection (a health check).
        0 => return Ok(None),
        1 => {}
        _ => return Err(bad("unknown command")),
    }
    match family {
        // TCP over IPv4.
        0x11 => {
            if body.len() < 12 {
                return Err(bad("IPv4 addresses cut short"));
            }
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let port = u16::from_be_bytes([body[8], body[9]]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port)))
        }
        // TCP over IPv6.
        0x21 => {
            if body.len() < 36 {
                return Err(bad("IPv6 addresses cut short"));
            }
            let mut b = [0u8; 16];
            b.copy_from_slice(&body[..16]);
            let port = u16::from_be_bytes([body[32], body[33]]);
            Ok(Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(b)), port)))
        }
        // UNSPEC, or a Unix socket: no IP address to take.
        0x00 | 0x31 | 0x32 => Ok(None),
        _ => Err(bad("unsupported address family")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> io::Result<Option<SocketAddr>> {
        let mut io = bytes;
        read_header(&mut io).await
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    #[tokio::test]
    async fn version_1_names_the_client() {
        let a = read(b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 1883\r\nMQTT").await;
        assert_eq!(a.unwrap(), Some("192.0.2.7:51234".parse().unwrap()));
        let a = read(b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 1883\r\n").await;
        assert_eq!(a.unwrap(), Some("[2001:db8::7]:4000".parse().unwrap()));
        assert_eq!(read(b"PROXY UNKNOWN\r\n").await.unwrap(), None);
    }

    #[tokio::test]
    async fn version_1_reads_no_further_than_its_line() {
        let mut io: &[u8] = b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 1883\r\n\x10\x0c";
        read_header(&mut io).await.unwrap();
        assert_eq!(io, b"\x10\x0c");
    }

    #[tokio::test]
    async fn lies_and_garbage_are_refused() {
        for bad in [
            &b"PROXY TCP4 2001:db8::7 198.51.100.1 1 2\r\n"[..],
            b"PROXY TCP4 192.0.2.7 198.51.100.1 051234 1883\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 70000 1883\r\n",
            b"PROXY TCP9 192.0.2.7 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            // A line that never ends within its limit.
            &[b'P', b'R', b'O', b'X', b'Y', b' ', b'A'].repeat(30)[..],
        ] {
            assert!(
                read(bad).await.is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Version 2 lengths that lie, and a header cut short.
        assert!(read(&v2(1, 0x11, &[192, 0, 2, 7])).await.is_err());
        assert!(read(&v2(1, 0x21, &[0; 20])).await.is_err());
        let mut cut = v2(1, 0x11, &[0; 12]);
        cut.truncate(20);
        assert!(read(&cut).await.is_err());
        assert!(read(&v2(1, 0x99, &[0; 12])).await.is_err());
        // A version 2 length past the bound is refused before reading on.
        let mut long = V2_SIGNATURE.to_vec();
        long.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(read(&long).await.is_err());
    }

    #[tokio::test]
    async fn version_2_names_the_client_and_reads_exactly() {
        let mut body = vec![192, 0, 2, 7, 198, 51, 100, 1];
        body.extend_from_slice(&51234u16.to_be_bytes());
        body.extend_from_slice(&1883u16.to_be_bytes());
        body.extend_from_slice(&[0x04, 0, 1, 9]); // a TLV, skipped
        let mut bytes = v2(1, 0x11, &body);
        bytes.extend_from_slice(b"\x10");
        let mut io = &bytes[..];
        let a = read_header(&mut io).await.unwrap();
        assert_eq!(a, Some("192.0.2.7:51234".parse().unwrap()));
        assert_eq!(io, b"\x10");
        assert_eq!(read(&v2(0, 0x00, &[])).await.unwrap(), None);
    }
}
