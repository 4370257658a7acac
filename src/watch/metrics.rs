//! The Prometheus endpoint of `quarry watch`.
//!
//! The exposition format comes from `prometheus-client` (the Prometheus
//! project's Rust client); the HTTP side is a few lines on a blocking
//! `TcpListener` in one thread, because one scrape every 15 s needs no async
//! runtime. Requests are capped in size and time; only `GET /metrics` (and `/`
//! with a pointer to it) is served.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
/// A client that sends nothing for this long is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

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
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for s in l.incoming().flatten() {
                    let _ = m.answer(s);
                }
            })?;
        Ok(bound)
    }

    fn answer(&self, mut s: TcpStream) -> io::Result<()> {
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < MAX_REQUEST {
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
        let (status, ctype, body) = match (method, path) {
            (b"GET", b"/metrics") => (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.encode(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
            "quarry_build_info{version=",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
    }
}
