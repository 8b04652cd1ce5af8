//! `fabric-probe`: the one tool of the container image (a scratch image has no shell, no curl).
//!
//! - `fabric-probe URL` (`http://ADDR:PORT/path`): GET, exit 0 on a 2xx answer within 3 s (the
//!   compose file's health checks ask each node's admin `/health`).
//! - `fabric-probe connect [--expect open|refused|unreachable|blocked] ADDR:PORT...`: open a TCP
//!   connection to each and print `open`, `refused` (a reset), `unreachable` (no route), `timeout`
//!   (dropped on the way: no answer at all) or `error: ...`; with `--expect`, exit 1 unless every one
//!   is as expected (`blocked`: unreachable or timeout, i.e. the network gives it no path).
//!
//! Only the standard library: it must run anywhere the image runs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(3);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("connect") => connect_all(&args[1..]),
        Some(url) if url.starts_with("http://") => match http_get(url) {
            Ok(status) if (200..300).contains(&status) => ExitCode::SUCCESS,
            Ok(status) => {
                eprintln!("fabric-probe: {url}: HTTP {status}");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("fabric-probe: {url}: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!(
                "usage: fabric-probe http://ADDR:PORT/PATH\n       fabric-probe connect [--expect open|refused|unreachable|blocked] ADDR:PORT..."
            );
            ExitCode::from(2)
        }
    }
}

fn resolve(target: &str) -> std::io::Result<SocketAddr> {
    target
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))
}

/// GET `url`; the status code of the answer.
fn http_get(url: &str) -> std::io::Result<u16> {
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = TcpStream::connect_timeout(&resolve(host)?, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        match stream.read(&mut head[got..])? {
            0 => break,
            n => got += n,
        }
    }
    let line = String::from_utf8_lossy(&head[..got]);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {line:?}")))
}

/// What one connection attempt met.
fn outcome(target: &str) -> String {
    let addr = match resolve(target) {
        Ok(a) => a,
        Err(e) => return format!("error: {e}"),
    };
    match TcpStream::connect_timeout(&addr, TIMEOUT) {
        Ok(_) => "open".to_string(),
        Err(e) => match e.kind() {
            std::io::ErrorKind::ConnectionRefused => "refused".to_string(),
            std::io::ErrorKind::NetworkUnreachable | std::io::ErrorKind::HostUnreachable => {
                "unreachable".to_string()
            }
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "timeout".to_string(),
            _ => format!("error: {e}"),
        },
    }
}

fn connect_all(args: &[String]) -> ExitCode {
    let (expect, targets) = match args {
        [flag, want, rest @ ..] if flag == "--expect" => (Some(want.as_str()), rest),
        rest => (None, rest),
    };
    // All at once: a dropped connection costs the whole timeout, and there may be a hundred.
    let handles: Vec<_> = targets
        .iter()
        .map(|t| {
            let t = t.clone();
            std::thread::spawn(move || outcome(&t))
        })
        .collect();
    let mut ok = true;
    for (target, handle) in targets.iter().zip(handles) {
        let got = handle
            .join()
            .unwrap_or_else(|_| "error: probe thread panicked".to_string());
        let verdict = match expect {
            Some(want) if want == got => " ok",
            // No path through the network: no route here, or dropped on the way (no answer at all).
            Some("blocked") if got == "unreachable" || got == "timeout" => " ok",
            Some(_) => {
                ok = false;
                " UNEXPECTED"
            }
            None => "",
        };
        println!("{target}\t{got}{verdict}");
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
