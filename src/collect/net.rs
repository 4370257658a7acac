//! TCP/UDP sockets from `/proc/net/*` and their owners via `/proc/PID/fd`.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use crate::host::Host;

/// TCP state number for ESTABLISHED in `/proc/net/tcp` (include/net/tcp_states.h).
pub const TCP_ESTABLISHED: u8 = 0x01;
/// TCP state number for LISTEN.
pub const TCP_LISTEN: u8 = 0x0a;

/// One socket line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Socket {
    pub proto: &'static str,
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
    pub state: u8,
    pub uid: u32,
    pub inode: u64,
}

impl Socket {
    pub fn remote_str(&self) -> String {
        match self.remote {
            IpAddr::V6(a) => format!("[{a}]:{}", self.remote_port),
            IpAddr::V4(a) => format!("{a}:{}", self.remote_port),
        }
    }
}

/// Reads TCP and TCP6 sockets of Quarry's network namespace.
pub fn read_tcp(host: &Host) -> Vec<Socket> {
    let mut out = Vec::new();
    for (file, proto) in [("/proc/net/tcp", "tcp"), ("/proc/net/tcp6", "tcp6")] {
        if let Ok(text) = host.read_text(file) {
            out.extend(parse_sockets(&text, proto));
        }
    }
    out
}

/// TCP sockets of every network namespace the given processes live in.
///
/// `/proc/net/tcp` shows only the reader's namespace: a miner in a container
/// talks to its pool from the container's namespace. Each distinct namespace
/// (`/proc/PID/ns/net`) is read once, through one of its processes
/// (`/proc/PID/net/tcp`). Socket inodes are unique machine-wide, so the
/// lists merge without clashes.
pub fn read_tcp_all_namespaces(host: &Host, pids: &[i32]) -> Vec<Socket> {
    let mut out = read_tcp(host);
    let mut seen_ns: HashSet<Vec<u8>> = HashSet::new();
    if let Ok(own) = host.read_link("/proc/self/ns/net") {
        seen_ns.insert(own);
    }
    let mut inodes: HashSet<u64> = out.iter().map(|s| s.inode).collect();
    for &pid in pids {
        let Ok(ns) = host.read_link(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        if !seen_ns.insert(ns) {
            continue;
        }
        for (file, proto) in [("tcp", "tcp"), ("tcp6", "tcp6")] {
            if let Ok(text) = host.read_text(format!("/proc/{pid}/net/{file}")) {
                for s in parse_sockets(&text, proto) {
                    if inodes.insert(s.inode) {
                        out.push(s);
                    }
                }
            }
        }
    }
    out
}

/// Every socket inode in `tcp` (from [`read_tcp`]), `/proc/net/{udp,udp6}`
/// (with its line) and `/proc/net/unix` (inode only), for the census's
/// orphan-socket view.
pub fn read_all_inodes(host: &Host, tcp: Vec<Socket>) -> (Vec<Socket>, Vec<u64>) {
    let mut inet = tcp;
    for (file, proto) in [("/proc/net/udp", "udp"), ("/proc/net/udp6", "udp6")] {
        if let Ok(text) = host.read_text(file) {
            inet.extend(parse_sockets(&text, proto));
        }
    }
    // unix: `Num RefCount Protocol Flags Type St Inode Path`
    let unix = host
        .read_text("/proc/net/unix")
        .map(|t| {
            t.lines()
                .skip(1)
                .filter_map(|l| l.split_ascii_whitespace().nth(6)?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    (inet, unix)
}

/// All socket inodes held by the given processes: inode → PIDs.
pub fn all_socket_owners(host: &Host, pids: &[i32]) -> HashMap<u64, Vec<i32>> {
    scan_fds(host, pids, |_| true)
}

/// Parses the text of `/proc/net/{tcp,tcp6,udp,udp6}`.
///
/// Columns: `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout
/// inode ...`; addresses are hex in the kernel's byte order (each 32-bit word is
/// little-endian on x86), ports are hex big numbers.
pub fn parse_sockets(text: &str, proto: &'static str) -> Vec<Socket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_ascii_whitespace().collect();
            if f.len() < 10 {
                return None;
            }
            let (local, local_port) = parse_addr(f[1])?;
            let (remote, remote_port) = parse_addr(f[2])?;
            Some(Socket {
                proto,
                local,
                local_port,
                remote,
                remote_port,
                state: u8::from_str_radix(f[3], 16).ok()?,
                uid: f[7].parse().ok()?,
                inode: f[9].parse().ok()?,
            })
        })
        .collect()
}

fn parse_addr(s: &str) -> Option<(IpAddr, u16)> {
    let (ip, port) = s.split_once(':')?;
    // Hex digits only: slicing below is then on character boundaries.
    if !ip.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(ip, 16).ok()?.swap_bytes(),
        )),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let w = u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).ok()?;
                chunk.copy_from_slice(&w.to_le_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some((ip, port))
}

/// Finds which processes hold the given socket inodes.
pub fn socket_owners(host: &Host, pids: &[i32], wanted: &HashSet<u64>) -> HashMap<u64, Vec<i32>> {
    if wanted.is_empty() {
        return HashMap::new();
    }
    scan_fds(host, pids, |inode| wanted.contains(&inode))
}

/// Reads the `socket:[INODE]` links in `/proc/PID/fd` of each process and
/// keeps the inodes `keep` accepts: inode → PIDs.
fn scan_fds(host: &Host, pids: &[i32], keep: impl Fn(u64) -> bool) -> HashMap<u64, Vec<i32>> {
    let mut owners: HashMap<u64, Vec<i32>> = HashMap::new();
    for &pid in pids {
        let dir = format!("/proc/{pid}/fd");
        let Ok(entries) = host.list_dir(&dir) else {
            continue;
        };
        for e in entries {
            let Ok(link) = host.read_link(format!("{dir}/{}", String::from_utf8_lossy(&e.name)))
            else {
                continue;
            };
            match socket_inode(&link) {
                Some(inode) if keep(inode) => {
                    let v = owners.entry(inode).or_default();
                    if !v.contains(&pid) {
                        v.push(pid);
                    }
                }
                _ => {}
            }
        }
    }
    owners
}

/// The inode of a `socket:[INODE]` link target.
pub fn socket_inode(link: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(link).ok()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_lines() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:A1B2 0100007F:0D05 01 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 20 4 30 10 -1\n";
        let s = parse_sockets(text, "tcp");
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].remote, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(s[0].remote_port, 3333);
        assert_eq!(s[0].state, TCP_ESTABLISHED);
        assert_eq!(s[0].inode, 123456);
        assert_eq!(s[0].remote_str(), "127.0.0.1:3333");
    }

    #[test]
    fn parses_tcp6() {
        let text = "hdr\n   0: 00000000000000000000000001000000:0D05 00000000000000000000000001000000:C350 01 0:0 0:0 0 1000 0 77\n";
        let s = parse_sockets(text, "tcp6");
        assert_eq!(s[0].local, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(s[0].uid, 1000);
    }

    #[test]
    fn socket_links() {
        assert_eq!(socket_inode(b"socket:[42]"), Some(42));
        assert_eq!(socket_inode(b"pipe:[42]"), None);
    }
}
