//! The Prometheus endpoint of `quarry watch`.
//!
//! The exposition format comes from `prometheus-client` (the Prometheus
//! project's Rust client); the HTTP side is a few lines on a blocking
//! `TcpListener`, because one scrape every 15 s needs no async runtime, and
//! an HTTP server crate would bring one (hyper, axum) or a fixed pool that
//! idle clients fill (tiny_http). Each connection gets a thread of its own
//! and [`REQUEST_DEADLINE`] for its whole request, however slowly it drips;
//! at most [`MAX_CONNECTIONS`] are open at once, [`MAX_PER_PEER`] from one
//! address, so idle or dripping clients never keep a scrape from being
//! answered (measured before: one client sending a byte every 4 s, or 20
//! idle ones, and no scrape answered within 30 s). Requests are capped in
//! size; only `GET /metrics` (and `/` with a pointer to it) is served.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::detect::Finding;

/// Largest request read: a scrape's request is a few hundred bytes.
const MAX_REQUEST: usize = 8 * 1024;
/// The time a client has to send its whole request and read the answer
/// (Prometheus sends its request at once; its default scrape timeout is
/// 10 s).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(3);
/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 128;
/// Connections served at once from one address.
pub const MAX_PER_PEER: usize = 32;
/// Stack of a connection's thread (encoding the registry needs little).
const CONNECTION_STACK: usize = 256 * 1024;

/// Connections open now, by peer address.
#[derive(Default)]
struct Open {
    total: usize,
    by_peer: HashMap<IpAddr, usize>,
}

/// A connection's place among [`Open`] ones, given back on drop.
struct Slot {
    open: Arc<Mutex<Open>>,
    peer: IpAddr,
}

impl Slot {
    fn take(open: &Arc<Mutex<Open>>, peer: IpAddr) -> Option<Slot> {
        let mut o = open.lock().unwrap_or_else(|e| e.into_inner());
        let mine = o.by_peer.get(&peer).copied().unwrap_or(0);
        if o.total >= MAX_CONNECTIONS || mine >= MAX_PER_PEER {
            return None;
        }
        o.total += 1;
        *o.by_peer.entry(peer).or_default() += 1;
        Some(Slot {
            open: open.clone(),
            peer,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut o = self.open.lock().unwrap_or_else(|e| e.into_inner());
        o.total -= 1;
        if let Some(n) = o.by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                o.by_peer.remove(&self.peer);
            }
        }
    }
}

/// Labels of `quarry_findings`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingLabels {
    pub rule: String,
    pub severity: String,
}

/// Every metric `quarry watch` exposes.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    pub cpu_busy: Gauge<f64, AtomicU64>,
    pub cpu_unexplained: Gauge<f64, AtomicU64>,
    pub findings: Family<FindingLabels, Gauge>,
    pub hidden: Gauge,
    pub scan_duration: Histogram,
    pub last_scan: Gauge<f64, AtomicU64>,
    /// How long the scan running now has run (the longer of the two lanes).
    pub scan_running: Gauge<f64, AtomicU64>,
    /// Label sets ever set, so that a cleared one goes back to 0.
    known: Arc<Mutex<Vec<FindingLabels>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let m = Metrics {
            registry: Arc::new(Mutex::new(Registry::default())),
            cpu_busy: Gauge::default(),
            cpu_unexplained: Gauge::default(),
            findings: Family::default(),
            hidden: Gauge::default(),
            // 50 ms .. ~100 s: a light scan is about 1 s (its sample), a deep
            // one with the module walk several.
            scan_duration: Histogram::new(exponential_buckets(0.05, 2.0, 12)),
            last_scan: Gauge::default(),
            scan_running: Gauge::default(),
            known: Arc::default(),
        };
        r.register(
            "quarry_cpu_busy_ratio",
            "Share of all CPUs busy over the last sample (0..1)",
            m.cpu_busy.clone(),
        );
        r.register(
            "quarry_cpu_unexplained_ratio",
            "Share of all CPUs busy that no visible process accounts for (0..1)",
            m.cpu_unexplained.clone(),
        );
        r.register(
            "quarry_findings",
            "Current findings by rule and severity",
            m.findings.clone(),
        );
        r.register(
            "quarry_hidden_processes",
            "Processes hidden from /proc that the last scan found",
            m.hidden.clone(),
        );
        r.register(
            "quarry_scan_duration_seconds",
            "Wall time of full scans, sample included",
            m.scan_duration.clone(),
        );
        r.register(
            "quarry_last_scan_timestamp_seconds",
            "Unix time of the last full scan",
            m.last_scan.clone(),
        );
        r.register(
            "quarry_scan_running_seconds",
            "How long the scan running now has run (0: none runs)",
            m.scan_running.clone(),
        );
        r.register(
            "quarry_build",
            "Quarry's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        *m.registry.lock().unwrap_or_else(|e| e.into_inner()) = r;
        m
    }

    /// Sets `quarry_findings` from a scan: every label set seen before and
    /// absent now goes to 0.
    pub fn set_findings(&self, findings: &[Finding]) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        for l in known.iter() {
            self.findings.get_or_create(l).set(0);
        }
        for f in findings {
            let l = FindingLabels {
                rule: f.rule.clone(),
                severity: f.severity.as_str().into(),
            };
            self.findings.get_or_create(&l).inc();
            if !known.contains(&l) {
                known.push(l);
            }
        }
    }

    /// The exposition text (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing into a String cannot fail.
        let _ = encode(&mut s, &r);
        s
    }

    /// Binds `addr` and serves scrapes from a thread.
    pub fn serve(&self, addr: SocketAddr) -> io::Result<SocketAddr> {
        let l = TcpListener::bind(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("--metrics-addr {addr}: {e}")))?;
        let bound = l.local_addr()?;
        let m = self.clone();
        let open: Arc<Mutex<Open>> = Arc::default();
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for s in l.incoming().flatten() {
                    let Some(slot) = s.peer_addr().ok().and_then(|a| Slot::take(&open, a.ip()))
                    else {
                        continue; // too many open: closed at once
                    };
                    let m = m.clone();
                    // A thread that cannot be made: the connection closes.
                    let _ = std::thread::Builder::new()
                        .name("metrics-conn".into())
                        .stack_size(CONNECTION_STACK)
                        .spawn(move || {
                            let _slot = slot;
                            let _ = m.answer(s);
                        });
                }
            })?;
        Ok(bound)
    }

    fn answer(&self, mut s: TcpStream) -> io::Result<()> {
        let deadline = Instant::now() + REQUEST_DEADLINE;
        let left = || {
            deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "request deadline"))
        };
        s.set_write_timeout(Some(REQUEST_DEADLINE))?;
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < MAX_REQUEST {
            s.set_read_timeout(Some(left()?))?;
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            req.extend_from_slice(&buf[..n]);
        }
        let line = req.split(|b| *b == b'\n').next().unwrap_or(b"");
        let mut words = line.split(|b| *b == b' ');
        let (method, path) = (words.next().unwrap_or(b""), words.next().unwrap_or(b""));
        let path = path.split(|b| *b == b'?').next().unwrap_or(b"");
        // Prometheus asks for OpenMetrics in its Accept header; a client
        // that does not (promtool check metrics, curl) gets the text format
        // 0.0.4, which has no `info` type.
        let openmetrics = req
            .split(|b| *b == b'\n')
            .skip(1)
            .filter(|h| h.len() > 7 && h[..7].eq_ignore_ascii_case(b"accept:"))
            .any(|h| h.windows(24).any(|w| w == b"application/openmetrics-"));
        let (status, ctype, body) = match (method, path) {
            (b"GET", b"/metrics") if openmetrics => (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.encode(),
            ),
            (b"GET", b"/metrics") => (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                text_format(&self.encode()),
            ),
            (b"GET", b"/") => (
                "200 OK",
                "text/plain; charset=utf-8",
                "quarry watch: metrics at /metrics\n".to_string(),
            ),
            _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
        };
        write!(
            s,
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        s.flush()
    }
}

/// The Prometheus text format 0.0.4 of an OpenMetrics exposition: `info`
/// families become gauges named with their `_info` suffix, counters are
/// typed under their `_total` sample name, and the `# UNIT` and `# EOF`
/// lines go (prometheus-client writes OpenMetrics only).
pub fn text_format(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            match rest.rsplit_once(' ') {
                Some((name, "info")) => {
                    out.push_str(&format!("# TYPE {name}_info gauge\n"));
                    continue;
                }
                Some((name, "counter")) => {
                    out.push_str(&format!("# TYPE {name}_total counter\n"));
                    continue;
                }
                _ => {}
            }
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, help)) = rest.split_once(' ') {
                if openmetrics.contains(&format!("# TYPE {name} info")) {
                    out.push_str(&format!("# HELP {name}_info {help}\n"));
                    continue;
                }
                if openmetrics.contains(&format!("# TYPE {name} counter")) {
                    out.push_str(&format!("# HELP {name}_total {help}\n"));
                    continue;
                }
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(addr: SocketAddr) -> io::Result<String> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    }

    #[test]
    fn idle_and_dripping_clients_do_not_hold_a_scrape() {
        let m = Metrics::new();
        let addr = m.serve("127.0.0.1:0".parse().unwrap()).unwrap();
        // 20 idle connections and one sending a byte a second, from the
        // scraper's own address.
        let idle: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let mut drip = TcpStream::connect(addr).unwrap();
        let dripper = std::thread::spawn(move || {
            for _ in 0..6 {
                if drip.write_all(b"G").is_err() {
                    return true; // closed by the server: its deadline
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            false
        });
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        let body = scrape(addr).unwrap();
        assert!(body.contains("quarry_cpu_busy_ratio"), "{body}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(
            dripper.join().unwrap(),
            "a dripping client was kept past the deadline"
        );
        drop(idle);
        // More connections from one address than it may hold: the rest are
        // closed at once (an end of file, no wait); once the held ones reach
        // their deadline, that address is served again.
        std::thread::sleep(Duration::from_millis(200));
        let crowd: Vec<TcpStream> = (0..MAX_PER_PEER)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut extra = TcpStream::connect(addr).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut b = [0u8; 1];
        assert_eq!(
            extra.read(&mut b).unwrap(),
            0,
            "an extra connection was held"
        );
        std::thread::sleep(REQUEST_DEADLINE + Duration::from_millis(500));
        let body = scrape(addr).unwrap();
        assert!(body.contains("quarry_cpu_busy_ratio"), "{body}");
        drop(crowd);
    }

    #[test]
    fn text_format_has_no_info_type() {
        let t = text_format(&Metrics::new().encode());
        assert!(t.contains("# TYPE quarry_build_info gauge\n"), "{t}");
        assert!(
            t.contains("# HELP quarry_build_info Quarry's version"),
            "{t}"
        );
        assert!(t.contains("quarry_build_info{version="), "{t}");
        assert!(!t.contains("# EOF") && !t.contains(" info\n"), "{t}");
    }

    #[test]
    fn exposition_names() {
        let m = Metrics::new();
        m.cpu_busy.set(0.5);
        let text = m.encode();
        for name in [
            "quarry_cpu_busy_ratio 0.5",
            "quarry_cpu_unexplained_ratio",
            "quarry_hidden_processes",
            "quarry_scan_duration_seconds_bucket",
            "quarry_last_scan_timestamp_seconds",
            "quarry_scan_running_seconds",
            "quarry_build_info{version=",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
    }
}
