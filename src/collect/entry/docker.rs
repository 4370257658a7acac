//! dockerd's listening addresses: `-H`/`--host` arguments and `hosts` in
//! `/etc/docker/daemon.json`. A `tcp://` address without `--tlsverify` gives
//! anyone who reaches it root on the machine (`docker run -v /:/host`).

use super::sshd::Source;

/// One TCP address the daemon serves its API on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpHost {
    /// As written (`tcp://0.0.0.0:2375`), escaped.
    pub uri: String,
    /// `dockerd argument` or `daemon.json:LINE`.
    pub source: String,
    /// Bound to loopback only.
    pub loopback: bool,
}

/// What the daemon's arguments and configuration say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerConf {
    pub tcp_hosts: Vec<TcpHost>,
    /// `tlsverify` and where it was set.
    pub tlsverify: Option<(bool, String)>,
    pub errors: Vec<String>,
}

/// Whether a `tcp://HOST:PORT` address is loopback only (an empty host means
/// every interface).
pub fn tcp_is_loopback(uri: &str) -> bool {
    let rest = uri.trim_start_matches("tcp://");
    let host = match rest.rsplit_once(':') {
        Some((h, _)) => h,
        None => rest,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

/// Reads the daemon's command line and `daemon.json` text (`json`: path and
/// content, when the file exists).
pub fn judge(cmdline: &[Vec<u8>], json: Option<(&str, &str)>) -> DockerConf {
    let mut c = DockerConf::default();
    let args: Vec<String> = cmdline
        .iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let mut i = 1;
    while i < args.len() {
        let a = &args[i];
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (a.as_str(), None),
        };
        match key {
            "-H" | "--host" => {
                let v = inline.or_else(|| {
                    i += 1;
                    args.get(i).cloned()
                });
                if let Some(v) = v.filter(|v| v.starts_with("tcp://")) {
                    c.tcp_hosts.push(TcpHost {
                        loopback: tcp_is_loopback(&v),
                        uri: crate::escape::escape_str(&v),
                        source: "dockerd argument".into(),
                    });
                }
            }
            "--tlsverify" => {
                let on = inline.as_deref().is_none_or(|v| v != "false");
                c.tlsverify = Some((on, "dockerd argument".into()));
            }
            _ => {}
        }
        i += 1;
    }
    if let Some((path, text)) = json {
        match serde_json::from_str::<serde_json::Value>(text) {
            Err(e) => c.errors.push(format!(
                "{}:{}:{}: {}",
                crate::escape::escape_str(path),
                e.line(),
                e.column(),
                e
            )),
            Ok(v) => {
                let line_of = |key: &str| {
                    let needle = format!("\"{key}\"");
                    text.lines()
                        .position(|l| l.contains(&needle))
                        .map_or(0, |n| n + 1)
                };
                let src = |key: &str| {
                    Source {
                        file: crate::escape::escape_str(path),
                        line: line_of(key),
                    }
                    .to_string()
                };
                if let Some(hosts) = v.get("hosts").and_then(|h| h.as_array()) {
                    for h in hosts.iter().filter_map(|h| h.as_str()) {
                        if h.starts_with("tcp://") {
                            c.tcp_hosts.push(TcpHost {
                                loopback: tcp_is_loopback(h),
                                uri: crate::escape::escape_str(h),
                                source: src("hosts"),
                            });
                        }
                    }
                }
                if c.tlsverify.is_none() {
                    if let Some(b) = v.get("tlsverify").and_then(|b| b.as_bool()) {
                        c.tlsverify = Some((b, src("tlsverify")));
                    }
                }
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<Vec<u8>> {
        s.split(' ').map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn tcp_without_tls_from_arguments() {
        let c = judge(
            &argv("/usr/bin/dockerd -H fd:// -H tcp://0.0.0.0:2375 --containerd=/run/containerd/containerd.sock"),
            None,
        );
        assert_eq!(c.tcp_hosts.len(), 1);
        assert!(!c.tcp_hosts[0].loopback);
        assert!(c.tlsverify.is_none());
    }

    #[test]
    fn daemon_json_hosts_and_tlsverify() {
        let text = include_str!("../../../tests/fixtures/entry/daemon.json");
        let c = judge(
            &argv("/usr/bin/dockerd"),
            Some(("/etc/docker/daemon.json", text)),
        );
        assert_eq!(c.tcp_hosts.len(), 2);
        assert_eq!(c.tcp_hosts[0].source, "/etc/docker/daemon.json:3");
        assert!(c.tcp_hosts[1].loopback);
        assert_eq!(
            c.tlsverify,
            Some((false, "/etc/docker/daemon.json:6".into()))
        );
    }

    #[test]
    fn tls_verified_and_unix_only() {
        let c = judge(&argv("dockerd --tlsverify -H=tcp://0.0.0.0:2376"), None);
        assert_eq!(c.tlsverify.as_ref().map(|t| t.0), Some(true));
        let c = judge(&argv("dockerd -H unix:///var/run/docker.sock"), None);
        assert!(c.tcp_hosts.is_empty());
    }

    #[test]
    fn bad_json_has_a_position() {
        let c = judge(
            &argv("dockerd"),
            Some(("/etc/docker/daemon.json", "{\n  \"hosts\": [,]\n}")),
        );
        assert!(
            c.errors[0].starts_with("/etc/docker/daemon.json:2:13: "),
            "{:?}",
            c.errors
        );
    }

    #[test]
    fn loopback_forms() {
        assert!(tcp_is_loopback("tcp://127.0.0.1:2375"));
        assert!(tcp_is_loopback("tcp://[::1]:2375"));
        assert!(tcp_is_loopback("tcp://localhost:2375"));
        assert!(!tcp_is_loopback("tcp://:2375"));
        assert!(!tcp_is_loopback("tcp://10.1.2.3:2375"));
    }
}
