//! Mount table from `/proc/PID/mountinfo` (parsed in [`crate::host::mount`],
//! which also says who serves each file system).

pub use crate::host::mount::{parse, read, Mount};

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
    fn covered_pids() {
        let m = parse("412 25 0:5 /tmp/empty /proc/4242 rw,relatime shared:1 - tmpfs tmpfs rw\n");
        assert_eq!(covered_pid(&m[0].mount_point), Some(4242));
        assert_eq!(covered_pid(b"/proc/sys/fs/binfmt_misc"), None);
    }
}
