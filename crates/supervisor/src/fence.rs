//! Fencing on loopback (STONITH before a standby takes a failed node's address): find every process
//! that holds a LISTEN socket on the node's address at one of its ports, SIGKILL it (that works on a
//! stopped process too), and wait until the ports are free.
//!
//! Sockets come from `/proc/net/tcp` (local address and port in hex, state `0A` = LISTEN, the socket's
//! inode); owners from the `socket:[INODE]` links under `/proc/PID/fd`.

use std::collections::{BTreeSet, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The kernel's code for a listening TCP socket in `/proc/net/tcp`.
const TCP_LISTEN: u8 = 0x0A;

/// Why fencing failed.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("reading {path}: {source}")]
    Proc {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("sending SIGKILL to pid {pid}: {source}")]
    Kill {
        pid: u32,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("{addrs} still held by a listener {waited:?} after SIGKILL")]
    StillHeld { addrs: String, waited: Duration },
}

/// One line of `/proc/net/tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSocket {
    pub local: SocketAddrV4,
    pub state: u8,
    pub inode: u64,
}

impl TcpSocket {
    pub fn is_listening(&self) -> bool {
        self.state == TCP_LISTEN
    }
}

/// Parses the text of `/proc/net/tcp`; lines that do not parse (the header) are skipped.
pub fn parse_proc_net_tcp(text: &str) -> Vec<TcpSocket> {
    text.lines().filter_map(parse_line).collect()
}

/// `  0: 0200017F:1C84 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 123456 1 ...`
fn parse_line(line: &str) -> Option<TcpSocket> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 10 || !fields[0].ends_with(':') {
        return None;
    }
    let local = parse_hex_addr(fields[1])?;
    let state = u8::from_str_radix(fields[3], 16).ok()?;
    let inode = fields[9].parse().ok()?;
    Some(TcpSocket {
        local,
        state,
        inode,
    })
}

/// `0200017F:1C84` -> 127.1.0.2:7300. The address is the raw network-order word printed as a number in
/// the host's byte order; the port is printed as a plain number.
fn parse_hex_addr(field: &str) -> Option<SocketAddrV4> {
    let (addr, port) = field.split_once(':')?;
    if addr.len() != 8 {
        return None;
    }
    let raw = u32::from_str_radix(addr, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddrV4::new(Ipv4Addr::from(raw.to_ne_bytes()), port))
}

/// The inodes of the LISTEN sockets bound to one of `targets`.
pub fn listening_inodes(sockets: &[TcpSocket], targets: &[SocketAddrV4]) -> HashSet<u64> {
    sockets
        .iter()
        .filter(|s| s.is_listening() && targets.contains(&s.local))
        .map(|s| s.inode)
        .collect()
}

/// Parses a `/proc/PID/fd/N` link target: `socket:[12345]` -> 12345.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn read_sockets() -> Result<Vec<TcpSocket>, FenceError> {
    let path = "/proc/net/tcp";
    let text = std::fs::read_to_string(path).map_err(|source| FenceError::Proc {
        path: path.to_string(),
        source,
    })?;
    Ok(parse_proc_net_tcp(&text))
}

/// The pids whose open files include one of `inodes` (processes we may not look into are skipped).
fn owners(inodes: &HashSet<u64>) -> Result<BTreeSet<u32>, FenceError> {
    let mut pids = BTreeSet::new();
    if inodes.is_empty() {
        return Ok(pids);
    }
    let proc = std::fs::read_dir("/proc").map_err(|source| FenceError::Proc {
        path: "/proc".to_string(),
        source,
    })?;
    for entry in proc.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path())
                && let Some(inode) = link.to_str().and_then(socket_inode)
                && inodes.contains(&inode)
            {
                pids.insert(pid);
                break;
            }
        }
    }
    Ok(pids)
}

/// The pids holding a LISTEN socket on one of `targets`.
#[cfg(test)]
pub fn holders(targets: &[SocketAddrV4]) -> Result<BTreeSet<u32>, FenceError> {
    let inodes = listening_inodes(&read_sockets()?, targets);
    owners(&inodes)
}

/// SIGKILLs every process (never this one) that listens on one of `targets`, then waits up to
/// `timeout` until no socket listens there. Returns the pids killed.
pub async fn fence(targets: &[SocketAddrV4], timeout: Duration) -> Result<Vec<u32>, FenceError> {
    let me = std::process::id();
    let mut killed = Vec::new();
    let start = Instant::now();
    loop {
        let sockets = read_sockets()?;
        let inodes = listening_inodes(&sockets, targets);
        if inodes.is_empty() {
            return Ok(killed);
        }
        for pid in owners(&inodes)? {
            if pid == me || killed.contains(&pid) {
                continue;
            }
            let raw = i32::try_from(pid).unwrap_or(i32::MAX);
            match kill(Pid::from_raw(raw), Signal::SIGKILL) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => killed.push(pid),
                Err(source) => return Err(FenceError::Kill { pid, source }),
            }
        }
        if start.elapsed() > timeout {
            let addrs: Vec<String> = targets.iter().map(|a| a.to_string()).collect();
            return Err(FenceError::StillHeld {
                addrs: addrs.join(", "),
                waited: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0200017F:1C84 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0B01147F:045F 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4243 1 0000000000000000 100 0 0 10 0
   2: 0B01147F:045F 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 4244 1 0000000000000000 20 4 30 10 -1
   3: garbage line
";

    #[test]
    #[cfg(target_endian = "little")]
    fn parses_addresses_states_and_inodes() {
        let sockets = parse_proc_net_tcp(SAMPLE);
        assert_eq!(sockets.len(), 3, "{sockets:?}");
        assert_eq!(
            sockets[0].local,
            "127.1.0.2:7300"
                .parse::<SocketAddrV4>()
                .unwrap_or_else(|e| panic!("{e}"))
        );
        assert!(sockets[0].is_listening());
        assert_eq!(sockets[0].inode, 4242);
        assert_eq!(sockets[1].local.to_string(), "127.20.1.11:1119");
        assert!(!sockets[2].is_listening());
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn only_listeners_on_the_targets_count() {
        let sockets = parse_proc_net_tcp(SAMPLE);
        let target: SocketAddrV4 = "127.20.1.11:1119".parse().unwrap_or_else(|e| panic!("{e}"));
        let inodes = listening_inodes(&sockets, &[target]);
        assert_eq!(inodes, HashSet::from([4243]));
        let other: SocketAddrV4 = "127.20.1.12:1119".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(listening_inodes(&sockets, &[other]).is_empty());
    }

    #[test]
    fn socket_links() {
        assert_eq!(socket_inode("socket:[12345]"), Some(12345));
        assert_eq!(socket_inode("pipe:[12345]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
        assert_eq!(socket_inode("socket:[x]"), None);
    }

    #[tokio::test]
    async fn finds_and_frees_a_listener_of_this_process() {
        // Our own listener is found (holders) but never killed (fence skips this pid).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = match listener.local_addr() {
            Ok(std::net::SocketAddr::V4(a)) => a,
            other => panic!("{other:?}"),
        };
        let pids = holders(&[addr]).unwrap_or_else(|e| panic!("{e}"));
        assert!(pids.contains(&std::process::id()), "{pids:?}");
        drop(listener);
        let killed = fence(&[addr], Duration::from_secs(1))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(killed.is_empty());
    }
}
