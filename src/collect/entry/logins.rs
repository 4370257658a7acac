//! Login records: successful and failed logins, with their source addresses,
//! from `/var/log/wtmp` and `/var/log/btmp` (utmp(5) records) and from the
//! syslog files sshd writes to (`/var/log/auth.log`, `/var/log/secure`).
//!
//! Hand-written: utmp is a fixed 384-byte record (glibc x86_64 layout,
//! bits/utmp.h), and the sshd lines are two fixed phrases. journald's binary
//! journal is not read (see docs/DETECTION.md: `journalctl -u ssh` shows
//! the same lines on a machine without a syslog file).

use crate::host::Host;

/// Size of one `struct utmp` on x86_64 glibc (bits/utmp.h).
pub const UTMP_SIZE: usize = 384;
/// `ut_type` of a login (utmp.h: USER_PROCESS).
const USER_PROCESS: i16 = 7;
/// Newest bytes of each record file or log read: a storm's btmp can be
/// gigabytes, and the logins that matter are the recent ones.
pub const TAIL_BYTES: usize = 16 << 20;

/// One login attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// Seconds since the epoch.
    pub time: i64,
    pub user: String,
    /// Source address or host (escaped).
    pub from: String,
    pub ok: bool,
    /// `publickey`, `password`, … when the log says.
    pub method: Option<String>,
    /// The file it was read from.
    pub file: &'static str,
    /// The line, in a text log.
    pub line: Option<usize>,
}

impl Login {
    /// True for a line of a syslog file: any user can send one
    /// (`logger -t sshd[1] ...`), so it is a claim, not a record. wtmp and
    /// btmp are written by sshd and login themselves (root's files).
    pub fn forgeable(&self) -> bool {
        self.line.is_some()
    }

    /// `/var/log/btmp`, `/var/log/auth.log:1234`.
    pub fn source(&self) -> String {
        match self.line {
            Some(n) => format!("{}:{n}", self.file),
            None => self.file.to_string(),
        }
    }
}

/// All login records found, oldest first.
#[derive(Debug, Clone, Default)]
pub struct Logins {
    pub records: Vec<Login>,
    /// Files read.
    pub files: Vec<String>,
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    crate::escape::escape(&b[..end])
}

/// Parses utmp records (`ok`: wtmp, where only USER_PROCESS is a login;
/// btmp holds failures of any type).
pub fn parse_utmp(buf: &[u8], ok: bool, file: &'static str) -> Vec<Login> {
    let mut out = Vec::new();
    for rec in buf.chunks_exact(UTMP_SIZE) {
        let ty = i16::from_le_bytes([rec[0], rec[1]]);
        if ok && ty != USER_PROCESS {
            continue;
        }
        let user = cstr(&rec[44..76]);
        let host = cstr(&rec[76..332]);
        let sec = i32::from_le_bytes(rec[340..344].try_into().unwrap()) as i64;
        if sec <= 0 || user.is_empty() {
            continue;
        }
        let from = if host.is_empty() {
            let a = &rec[348..364];
            if a[4..].iter().all(|&b| b == 0) && a[..4] != [0; 4] {
                std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string()
            } else {
                String::new()
            }
        } else {
            host
        };
        out.push(Login {
            time: sec,
            user,
            from,
            ok,
            method: None,
            file,
            line: None,
        });
    }
    out
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Days from 1970-01-01 to a civil date (proleptic Gregorian).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// A syslog timestamp at the start of a line: RFC 3339
/// (`2026-11-27T05:12:58.123+00:00`) or the traditional `Nov 27 05:12:58`
/// (no year: the one that puts it at or before `now`). Returns the time and
/// the rest of the line.
pub fn syslog_time(line: &str, now: i64) -> Option<(i64, &str)> {
    let b = line.as_bytes();
    if b.len() > 19 && b[4] == b'-' && b[10] == b'T' {
        let num = |r: std::ops::Range<usize>| line.get(r)?.parse::<i64>().ok();
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
        let mut t = days_from_civil(y, mo as u32, d as u32) * 86400 + h * 3600 + mi * 60 + s;
        let end = line.find(' ')?;
        let stamp = line.get(19..end)?;
        let tz = stamp.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
        if let Some(off) = tz.strip_prefix('+').or_else(|| tz.strip_prefix('-')) {
            let (oh, om) = off.split_once(':')?;
            let o = oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60;
            t += if tz.starts_with('+') { -o } else { o };
        }
        return Some((t, &line[end + 1..]));
    }
    let mon = MONTHS.iter().position(|m| line.starts_with(m))? as u32 + 1;
    let day: u32 = line.get(4..6)?.trim().parse().ok()?;
    let hms = line.get(7..15)?;
    let mut it = hms.split(':').map(|x| x.parse::<i64>());
    let (h, mi, s) = (it.next()?.ok()?, it.next()?.ok()?, it.next()?.ok()?);
    let year = 1970 + now.div_euclid(86400 * 365); // first guess, corrected below
    for y in [year + 1, year, year - 1, year - 2] {
        let t = days_from_civil(y, mon, day) * 86400 + h * 3600 + mi * 60 + s;
        if t <= now + 86400 {
            return Some((t, line.get(16..)?));
        }
    }
    None
}

/// Parses sshd's lines in a syslog file: `Accepted METHOD for USER from ADDR`,
/// `Failed METHOD for [invalid user] USER from ADDR`.
pub fn parse_auth_log(text: &str, file: &'static str, now: i64) -> Vec<Login> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        // `… sshd[PID]: MESSAGE` (or `sshd: MESSAGE`): one search per line,
        // these files hold hundreds of thousands of lines after a storm.
        let Some(i) = line
            .find("]: ")
            .map(|i| i + 3)
            .or_else(|| line.find(": ").map(|i| i + 2))
        else {
            continue;
        };
        let msg = &line[i..];
        if !(msg.starts_with("Accepted ") || msg.starts_with("Failed "))
            || !line[..i].contains("sshd")
        {
            continue;
        }
        let Some((time, _)) = syslog_time(line, now) else {
            continue;
        };
        let words: Vec<&str> = msg.split_whitespace().collect();
        if words.len() < 6 {
            continue;
        }
        let ok = words[0] == "Accepted";
        let mut k = 2; // after "for"
        if words.get(k) != Some(&"for") {
            continue;
        }
        k += 1;
        if words.get(k) == Some(&"invalid") && words.get(k + 1) == Some(&"user") {
            k += 2;
        }
        let (Some(user), Some(&"from"), Some(from)) =
            (words.get(k), words.get(k + 1), words.get(k + 2))
        else {
            continue;
        };
        out.push(Login {
            time,
            user: crate::escape::escape_str(user),
            from: crate::escape::escape_str(from),
            ok,
            method: Some(crate::escape::escape_str(words[1])),
            file,
            line: Some(n + 1),
        });
    }
    out
}

/// Reads every login record the machine keeps.
pub fn read(host: &Host, now: i64) -> Logins {
    let mut l = Logins::default();
    for (path, ok) in [("/var/log/wtmp", true), ("/var/log/btmp", false)] {
        if let Ok((buf, cut)) = host.read_tail(path, TAIL_BYTES) {
            // A cut tail starts mid-record: align on the record size.
            let skip = if cut { buf.len() % UTMP_SIZE } else { 0 };
            l.records.extend(parse_utmp(&buf[skip..], ok, path));
            l.files.push(path.into());
        }
    }
    for path in ["/var/log/auth.log", "/var/log/secure"] {
        if let Ok((buf, _)) = host.read_tail(path, TAIL_BYTES) {
            l.records
                .extend(parse_auth_log(&String::from_utf8_lossy(&buf), path, now));
            l.files.push(path.into());
        }
    }
    l.records.sort_by_key(|r| r.time);
    l
}

/// A run of failed logins: at least `min` within `window` seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Burst {
    pub start: i64,
    pub end: i64,
    pub failures: usize,
    /// The most frequent sources, with counts.
    pub top_sources: Vec<(String, usize)>,
}

impl Burst {
    /// `198.51.100.9 ×880, 192.0.2.1 ×3`.
    pub fn sources(&self) -> String {
        self.top_sources
            .iter()
            .map(|(a, n)| format!("{a} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Failed-login bursts: windows of `window` seconds holding at least `min`
/// failures, merged while they overlap.
pub fn bursts(records: &[Login], window: i64, min: usize) -> Vec<Burst> {
    let fails: Vec<&Login> = records.iter().filter(|r| !r.ok).collect();
    let mut out: Vec<Burst> = Vec::new();
    let mut j = 0;
    for i in 0..fails.len() {
        while fails[i].time - fails[j].time > window {
            j += 1;
        }
        if i + 1 - j >= min {
            let start = fails[j].time;
            match out.last_mut() {
                Some(b) if start <= b.end + window => b.end = fails[i].time,
                _ => out.push(Burst {
                    start,
                    end: fails[i].time,
                    failures: 0,
                    top_sources: Vec::new(),
                }),
            }
        }
    }
    for b in &mut out {
        let mut by: std::collections::HashMap<&str, usize> = Default::default();
        for f in fails
            .iter()
            .filter(|f| f.time >= b.start && f.time <= b.end)
        {
            b.failures += 1;
            *by.entry(f.from.as_str()).or_default() += 1;
        }
        let mut v: Vec<(String, usize)> = by.into_iter().map(|(k, n)| (k.to_string(), n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(3);
        b.top_sources = v;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utmp(ty: i16, user: &str, host: &str, sec: i32) -> Vec<u8> {
        let mut r = vec![0u8; UTMP_SIZE];
        r[0..2].copy_from_slice(&ty.to_le_bytes());
        r[44..44 + user.len()].copy_from_slice(user.as_bytes());
        r[76..76 + host.len()].copy_from_slice(host.as_bytes());
        r[340..344].copy_from_slice(&sec.to_le_bytes());
        r
    }

    #[test]
    fn utmp_records() {
        let mut buf = utmp(7, "root", "203.0.113.7", 1_800_000_000);
        buf.extend(utmp(8, "", "", 1_800_000_100)); // logout: not a login
        buf.extend(utmp(7, "ev\x1bil", "", 1_800_000_200));
        let l = parse_utmp(&buf, true, "/var/log/wtmp");
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].from, "203.0.113.7");
        assert_eq!(l[1].user, "ev\\x1bil");
        let f = parse_utmp(&utmp(6, "admin", "198.51.100.1", 5), false, "/var/log/btmp");
        assert!(!f[0].ok);
    }

    #[test]
    fn auth_log_lines_both_timestamp_forms() {
        let now = days_from_civil(2026, 11, 27) * 86400 + 12 * 3600;
        let text = include_str!("../../../tests/fixtures/entry/auth.log");
        let l = parse_auth_log(text, "/var/log/auth.log", now);
        assert_eq!(l.len(), 4, "{l:?}");
        assert_eq!(l[0].user, "admin");
        assert!(!l[0].ok);
        assert_eq!(l[1].user, "root");
        assert_eq!(l[2].from, "203.0.113.7");
        assert!(l[2].ok);
        assert_eq!(l[2].method.as_deref(), Some("password"));
        assert_eq!(
            l[2].time,
            days_from_civil(2026, 11, 27) * 86400 + 9 * 3600 + 14 * 60 + 2
        );
        assert_eq!(l[3].source(), "/var/log/auth.log:6");
        assert_eq!(
            l[3].time,
            days_from_civil(2026, 11, 27) * 86400 + 8 * 3600 + 59 * 60 + 59
        );
    }

    #[test]
    fn bursts_are_found_and_merged() {
        let mk = |t: i64, from: &str, ok: bool| Login {
            time: t,
            user: "root".into(),
            from: from.into(),
            ok,
            method: None,
            file: "",
            line: None,
        };
        let mut r: Vec<Login> = (0..30)
            .map(|i| mk(1000 + i * 10, "198.51.100.9", false))
            .collect();
        r.push(mk(5000, "192.0.2.1", false));
        r.push(mk(5001, "203.0.113.7", true));
        let b = bursts(&r, 600, 20);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].failures, 30);
        assert_eq!(b[0].top_sources[0], ("198.51.100.9".into(), 30));
        assert!(bursts(&r[..10], 600, 20).is_empty());
    }
}
