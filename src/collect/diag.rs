//! TCP sockets as the kernel's socket diagnostics report them
//! (`NETLINK_SOCK_DIAG`, `inet_diag`), a second view beside `/proc/net/tcp`.
//!
//! Rootkits hide connections by hooking `tcp4_seq_show`/`tcp6_seq_show`, the
//! printers of `/proc/net/tcp{,6}` (netstat's source). `inet_diag` walks the
//! same hash tables through other code (`inet_diag_dump_icsk`), which `ss`
//! uses; a rootkit has to hook both. Each reply carries the socket's inode,
//! owner uid and, with `INET_DIAG_INFO`, its `tcp_info` byte counters: a live
//! pool connection sends and receives.
//!
//! Structures from include/uapi/linux/{netlink,sock_diag,inet_diag,tcp}.h.
//! Hand-written: the crates that wrap sock_diag (netlink-packet-sock-diag)
//! bring a whole netlink stack for four fixed structs.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// `SOCK_DIAG_BY_FAMILY`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
/// `INET_DIAG_INFO`: the reply carries `struct tcp_info`.
const INET_DIAG_INFO: u16 = 2;
/// Offsets in `struct tcp_info` of `tcpi_bytes_acked` and
/// `tcpi_bytes_received` (Linux 4.1+).
const TCPI_BYTES_ACKED: usize = 120;
const TCPI_BYTES_RECEIVED: usize = 128;
/// Most reply bytes read (a busy server's sockets at ~200 bytes each).
const MAX_REPLY: usize = 64 * 1024 * 1024;

/// One socket.
#[derive(Debug, Clone, PartialEq)]
pub struct DiagSocket {
    pub inode: u64,
    pub state: u8,
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    pub uid: u32,
    /// Bytes the peer acknowledged, and bytes received (tcp_info), if given.
    pub bytes_acked: Option<u64>,
    pub bytes_received: Option<u64>,
}

/// Dumps every TCP socket of one family (`AF_INET` or `AF_INET6`).
pub fn dump_tcp(family: u8) -> std::io::Result<Vec<DiagSocket>> {
    // SAFETY: plain socket creation; the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket().
    let fd = unsafe { <rustix::fd::OwnedFd as rustix::fd::FromRawFd>::from_raw_fd(fd) };
    use rustix::fd::AsRawFd;
    let mut req = Vec::with_capacity(72);
    let len: u32 = 16 + 56;
    req.extend(len.to_ne_bytes());
    req.extend(SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend((NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend(1u32.to_ne_bytes()); // seq
    req.extend(0u32.to_ne_bytes()); // pid
    req.push(family);
    req.push(libc::IPPROTO_TCP as u8);
    req.push(1 << (INET_DIAG_INFO - 1)); // ext
    req.push(0);
    req.extend(u32::MAX.to_ne_bytes()); // every state
    req.extend([0u8; 48]); // id: any
                           // SAFETY: sending our own buffer to the kernel (address: the kernel, pid 0).
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    loop {
        // SAFETY: receiving into our own buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        total += n as usize;
        match parse_messages(&buf[..n as usize], &mut out) {
            Parsed::More if total < MAX_REPLY => continue,
            Parsed::More => break,
            Parsed::Done => break,
            Parsed::Error(e) => return Err(std::io::Error::from_raw_os_error(e)),
        }
    }
    Ok(out)
}

/// How a batch of netlink messages ended.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    More,
    Done,
    Error(i32),
}

/// Parses one datagram of netlink messages into sockets.
pub fn parse_messages(mut b: &[u8], out: &mut Vec<DiagSocket>) -> Parsed {
    let u16_at = |b: &[u8], i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
    let u32_at = |b: &[u8], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    while b.len() >= 16 {
        let len = u32_at(b, 0) as usize;
        let kind = u16_at(b, 4);
        if len < 16 || len > b.len() {
            return Parsed::Done; // malformed: stop
        }
        let body = &b[16..len];
        match kind {
            NLMSG_DONE => return Parsed::Done,
            NLMSG_ERROR => {
                let e = if body.len() >= 4 {
                    -(i32::from_ne_bytes([body[0], body[1], body[2], body[3]]))
                } else {
                    libc::EIO
                };
                return if e == 0 {
                    Parsed::Done
                } else {
                    Parsed::Error(e)
                };
            }
            SOCK_DIAG_BY_FAMILY if body.len() >= 72 => {
                if let Some(s) = parse_diag_msg(body) {
                    out.push(s);
                }
            }
            _ => {}
        }
        let step = (len + 3) & !3;
        if step >= b.len() {
            break;
        }
        b = &b[step..];
    }
    Parsed::More
}

/// `struct inet_diag_msg` and its attributes.
fn parse_diag_msg(body: &[u8]) -> Option<DiagSocket> {
    let family = body[0];
    let state = body[1];
    let sport = u16::from_be_bytes([body[4], body[5]]);
    let dport = u16::from_be_bytes([body[6], body[7]]);
    let addr = |off: usize| -> Option<IpAddr> {
        let a = &body[off..off + 16];
        Some(match family as i32 {
            libc::AF_INET => IpAddr::from([a[0], a[1], a[2], a[3]]),
            libc::AF_INET6 => {
                let mut x = [0u8; 16];
                x.copy_from_slice(a);
                IpAddr::from(x)
            }
            _ => return None,
        })
    };
    let src = addr(8)?;
    let dst = addr(24)?;
    let uid = u32::from_ne_bytes(body[64..68].try_into().ok()?);
    let inode = u32::from_ne_bytes(body[68..72].try_into().ok()?) as u64;
    let mut s = DiagSocket {
        inode,
        state,
        local: (src, sport),
        remote: (dst, dport),
        uid,
        bytes_acked: None,
        bytes_received: None,
    };
    // Attributes (struct rtattr: u16 len, u16 type), 4-byte aligned.
    let mut a = &body[72..];
    while a.len() >= 4 {
        let len = u16::from_ne_bytes([a[0], a[1]]) as usize;
        let kind = u16::from_ne_bytes([a[2], a[3]]);
        if len < 4 || len > a.len() {
            break;
        }
        if kind == INET_DIAG_INFO {
            let info = &a[4..len];
            let u64_at = |i: usize| {
                info.get(i..i + 8)
                    .map(|x| u64::from_ne_bytes(x.try_into().unwrap()))
            };
            s.bytes_acked = u64_at(TCPI_BYTES_ACKED);
            s.bytes_received = u64_at(TCPI_BYTES_RECEIVED);
        }
        let step = (len + 3) & !3;
        if step >= a.len() {
            break;
        }
        a = &a[step..];
    }
    Some(s)
}

/// Every TCP socket (v4 and v6) by inode; sockets without an inode
/// (TIME_WAIT) are left out. `None` when netlink is unavailable.
pub fn tcp_by_inode() -> Option<BTreeMap<u64, DiagSocket>> {
    let mut out = BTreeMap::new();
    let mut any = false;
    for fam in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        if let Ok(v) = dump_tcp(fam) {
            any = true;
            for s in v.into_iter().filter(|s| s.inode != 0) {
                out.insert(s.inode, s);
            }
        }
    }
    any.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listening socket of this test is in both views, with its inode.
    #[test]
    fn live_dump_sees_a_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let _c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let Some(all) = tcp_by_inode() else {
            return; // no NETLINK_SOCK_DIAG here
        };
        let mine: Vec<_> = all.values().filter(|s| s.local.1 == port).collect();
        assert!(!mine.is_empty(), "listener on {port} not in inet_diag");
        assert!(mine.iter().all(|s| s.inode != 0));
        let established: Vec<_> = all.values().filter(|s| s.remote.1 == port).collect();
        assert_eq!(established.len(), 1);
        assert!(established[0].bytes_acked.is_some());
        // /proc/net/tcp lists the same inodes.
        let proc_tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
        for s in mine.iter().chain(established.iter()) {
            assert!(
                proc_tcp
                    .lines()
                    .any(|l| l.split_whitespace().nth(9) == Some(&s.inode.to_string())),
                "inode {} not in /proc/net/tcp",
                s.inode
            );
        }
    }

    /// A reply captured from kernel 6.18 (tests/fixtures/kernel/6.18, datagrams
    /// prefixed with their u32 length): a listener on 127.0.0.1:39999 and a
    /// connection to it that sent 1,000 bytes and received 500.
    #[test]
    fn captured_reply() {
        let raw: &[u8] = include_bytes!("../../tests/fixtures/kernel/6.18/inet_diag_tcp4.bin");
        let mut out = Vec::new();
        let mut rest = raw;
        let mut end = Parsed::More;
        while rest.len() >= 4 {
            let n = u32::from_ne_bytes(rest[..4].try_into().unwrap()) as usize;
            end = parse_messages(&rest[4..4 + n], &mut out);
            rest = &rest[4 + n..];
        }
        assert_eq!(end, Parsed::Done);
        let by = |inode: u64| out.iter().find(|s| s.inode == inode).expect("socket");
        let listener = by(682976);
        assert_eq!(listener.local, ("127.0.0.1".parse().unwrap(), 39999));
        assert_eq!(listener.state, 10); // LISTEN
        let client = by(682977);
        assert_eq!(client.remote.1, 39999);
        assert_eq!(client.state, 1); // ESTABLISHED
                                     // The kernel counts the SYN as one acknowledged byte.
        assert!(
            matches!(client.bytes_acked, Some(1000..=1001)),
            "{client:?}"
        );
        assert!(
            matches!(client.bytes_received, Some(500..=501)),
            "{client:?}"
        );
        assert_eq!(by(682978).local.1, 39999);
    }

    #[test]
    fn malformed_replies_stop_cleanly() {
        let mut v = Vec::new();
        assert_eq!(parse_messages(&[0xff; 10], &mut v), Parsed::More);
        let mut m = vec![0u8; 16];
        m[0..4].copy_from_slice(&200u32.to_ne_bytes()); // longer than the buffer
        assert_eq!(parse_messages(&m, &mut v), Parsed::Done);
        let mut err = vec![0u8; 20];
        err[0..4].copy_from_slice(&20u32.to_ne_bytes());
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert_eq!(parse_messages(&err, &mut v), Parsed::Error(libc::EPERM));
        assert!(v.is_empty());
    }
}
