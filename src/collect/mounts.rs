//! Mount table from `/proc/PID/mountinfo`.

use crate::host::Host;

/// One line of mountinfo (proc(5)): `id parent maj:min root mountpoint opts
/// [optional...] - fstype source superopts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The mount point, with the kernel's octal escapes (`\040`) decoded.
    pub mount_point: Vec<u8>,
    /// The mounted directory of the source filesystem.
    pub root: Vec<u8>,
    pub fs_type: String,
    pub source: Vec<u8>,
    pub super_options: String,
    /// The line as the kernel wrote it (escaped form), for evidence.
    pub line: String,
}

/// Reads `/proc/self/mountinfo` (or `/proc/1/mountinfo` when `pid` is 1).
pub fn read(host: &Host, pid: &str) -> Vec<Mount> {
    host.read_text(format!("/proc/{pid}/mountinfo"))
        .map(|t| parse(&t))
        .unwrap_or_default()
}

pub fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            Some(Mount {
                root: unescape(pre.get(3)?),
                mount_point: unescape(pre.get(4)?),
                fs_type: post.first()?.to_string(),
                source: unescape(post.get(1).unwrap_or(&"")),
                super_options: post.get(2).unwrap_or(&"").to_string(),
                line: line.to_string(),
            })
        })
        .collect()
}

/// Decodes `\NNN` octal escapes.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x"), 8)
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The PID a mount point covers, if it is exactly `/proc/PID` (or below it).
pub fn covered_pid(mount_point: &[u8]) -> Option<i32> {
    let rest = mount_point.strip_prefix(b"/proc/")?;
    let end = rest.iter().position(|b| *b == b'/').unwrap_or(rest.len());
    crate::host::parse_pid(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines() {
        let m = parse("36 35 98:0 /mnt1 /mnt\\040x rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n412 25 0:5 /tmp/empty /proc/4242 rw,relatime shared:1 - tmpfs tmpfs rw\n");
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, b"/mnt x");
        assert_eq!(m[0].fs_type, "ext3");
        assert_eq!(covered_pid(&m[1].mount_point), Some(4242));
        assert_eq!(covered_pid(b"/proc/sys/fs/binfmt_misc"), None);
    }
}
