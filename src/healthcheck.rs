//! `poold healthcheck`: a tiny HTTP client for container health checks (Docker's
//! `HEALTHCHECK`), so the image needs no curl. It sends `GET /readyz` to the address poold
//! serves on and succeeds only on `200`; any other status, a refused connection or the
//! deadline passing is a failure (exit code 1).
//!
//! Called by `main` only. Plain blocking `std::net`: one request, no runtime, no new
//! dependency. `/readyz` is outside `/v1`, so it never needs the API token.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::config::HealthcheckArgs;

/// The largest response head we read; the status line comes first and is all we need.
const MAX_HEAD_BYTES: usize = 1024;

/// Check readiness once; `Ok` means poold answered `200` before the deadline.
pub fn run(args: &HealthcheckArgs) -> anyhow::Result<()> {
    let addr = target(args.bind);
    let deadline = Instant::now() + args.timeout();
    let status = readyz_status(addr, deadline)
        .with_context(|| format!("GET http://{addr}/readyz failed"))?;
    if status != 200 {
        bail!("GET http://{addr}/readyz answered {status}");
    }
    println!("ready: http://{addr}/readyz answered 200");
    Ok(())
}

/// The address to connect to for a bind address: a wildcard bind (`0.0.0.0`, `::`) is reached
/// on loopback.
pub fn target(bind: SocketAddr) -> SocketAddr {
    let ip = match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bind.port())
}

fn readyz_status(addr: SocketAddr, deadline: Instant) -> anyhow::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, remaining(deadline)?)?;
    stream.set_write_timeout(Some(remaining(deadline)?))?;
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;

    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") {
        stream.set_read_timeout(Some(remaining(deadline)?))?;
        let n = stream.read(&mut buf)?;
        if n == 0 {
            bail!("connection closed before a status line");
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD_BYTES {
            bail!("status line longer than {MAX_HEAD_BYTES} bytes");
        }
    }
    parse_status_line(&head)
}

/// `HTTP/1.1 200 OK\r\n…` → 200.
fn parse_status_line(head: &[u8]) -> anyhow::Result<u16> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    match (words.next(), words.next().map(str::parse::<u16>)) {
        (Some(version), Some(Ok(status))) if version.starts_with("HTTP/") => Ok(status),
        _ => bail!("not an HTTP status line: {:?}", line.trim_end()),
    }
}

/// Time left before the deadline; an error once it has passed (so every step is bounded).
fn remaining(deadline: Instant) -> anyhow::Result<Duration> {
    match deadline.checked_duration_since(Instant::now()) {
        Some(left) if !left.is_zero() => Ok(left),
        _ => bail!("timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_binds_map_to_loopback() {
        let cases = [
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("[::]:9000", "[::1]:9000"),
            ("10.1.2.3:80", "10.1.2.3:80"),
            ("127.0.0.1:8080", "127.0.0.1:8080"),
        ];
        for (bind, want) in cases {
            assert_eq!(target(bind.parse().unwrap()).to_string(), want, "{bind}");
        }
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n").unwrap(), 200);
        assert_eq!(
            parse_status_line(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: x\r\n").unwrap(),
            503
        );
        assert!(parse_status_line(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_status_line(b"HTTP/1.1 abc\r\n").is_err());
    }
}
