//! The kubelet's authentication: anonymous requests, the authorization mode
//! that decides what they may do, and the read-only port. Anonymous requests
//! with `AlwaysAllow` let anyone who reaches port 10250 run commands in every
//! pod (`/run/…`, `/exec/…`), the way TeamTNT-style miners spread.
//!
//! Command-line flags win over the `--config` file (KubeletConfiguration,
//! YAML or JSON, parsed with serde_yaml_ng). The defaults differ between the
//! two: the deprecated flags default to anonymous on, `AlwaysAllow` and port
//! 10255; the configuration file's (kubelet.config.k8s.io/v1beta1) to
//! anonymous off, `Webhook` and port 0.

use serde::Deserialize;

/// One setting and where it came from (`default`, `--flag`, `FILE (key)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<T> {
    pub value: T,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletConf {
    pub anonymous: Setting<bool>,
    pub authorization_mode: Setting<String>,
    pub read_only_port: Setting<u16>,
    /// The `--config` file, when given.
    pub config_file: Option<String>,
    pub errors: Vec<String>,
}

impl KubeletConf {
    fn defaults(
        anon: bool,
        mode: &str,
        port: u16,
        source: &str,
        config_file: Option<String>,
    ) -> KubeletConf {
        let set = |v| Setting {
            value: v,
            source: source.to_string(),
        };
        KubeletConf {
            anonymous: set(anon),
            authorization_mode: Setting {
                value: mode.to_string(),
                source: source.to_string(),
            },
            read_only_port: Setting {
                value: port,
                source: source.to_string(),
            },
            config_file,
            errors: Vec::new(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct FileConf {
    authentication: Option<Authn>,
    authorization: Option<Authz>,
    read_only_port: Option<u16>,
}
#[derive(Deserialize, Default)]
struct Authn {
    anonymous: Option<Anon>,
}
#[derive(Deserialize, Default)]
struct Anon {
    enabled: Option<bool>,
}
#[derive(Deserialize, Default)]
struct Authz {
    mode: Option<String>,
}

/// The `--config` path on a kubelet command line.
pub fn config_path(cmdline: &[Vec<u8>]) -> Option<String> {
    flags(cmdline).remove("config")
}

fn flags(cmdline: &[Vec<u8>]) -> std::collections::HashMap<String, String> {
    let args: Vec<String> = cmdline
        .iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let mut out = std::collections::HashMap::new();
    let mut i = 1;
    while i < args.len() {
        if let Some(f) = args[i].strip_prefix("--") {
            match f.split_once('=') {
                Some((k, v)) => {
                    out.insert(k.to_string(), v.to_string());
                }
                None => {
                    let v = args.get(i + 1).filter(|v| !v.starts_with("--"));
                    if let Some(v) = v {
                        out.insert(f.to_string(), v.clone());
                        i += 1;
                    } else {
                        out.insert(f.to_string(), "true".into());
                    }
                }
            }
        }
        i += 1;
    }
    out
}

/// Judges a kubelet from its command line and its `--config` file's text.
pub fn judge(cmdline: &[Vec<u8>], file: Option<(&str, &str)>) -> KubeletConf {
    let flags = flags(cmdline);
    let config_file = flags.get("config").cloned();
    let mut errors = Vec::new();
    let (mut c, fc) = if config_file.is_some() {
        let fc = match file {
            Some((path, text)) => match serde_yaml_ng::from_str::<FileConf>(text) {
                Ok(fc) => Some((path, fc)),
                Err(e) => {
                    let (l, col) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
                    errors.push(format!(
                        "{}:{l}:{col}: {e}",
                        crate::escape::escape_str(path)
                    ));
                    None
                }
            },
            None => None,
        };
        (
            KubeletConf::defaults(
                false,
                "Webhook",
                0,
                "default (config file)",
                config_file.clone(),
            ),
            fc,
        )
    } else {
        (
            KubeletConf::defaults(true, "AlwaysAllow", 10255, "default (no --config)", None),
            None,
        )
    };
    if let Some((path, fc)) = fc {
        let p = crate::escape::escape_str(path);
        if let Some(v) = fc
            .authentication
            .and_then(|a| a.anonymous)
            .and_then(|a| a.enabled)
        {
            c.anonymous = Setting {
                value: v,
                source: format!("{p} (authentication.anonymous.enabled)"),
            };
        }
        if let Some(m) = fc.authorization.and_then(|a| a.mode) {
            c.authorization_mode = Setting {
                value: crate::escape::escape_str(&m),
                source: format!("{p} (authorization.mode)"),
            };
        }
        if let Some(port) = fc.read_only_port {
            c.read_only_port = Setting {
                value: port,
                source: format!("{p} (readOnlyPort)"),
            };
        }
    }
    if let Some(v) = flags.get("anonymous-auth") {
        c.anonymous = Setting {
            value: v != "false",
            source: "kubelet argument --anonymous-auth".into(),
        };
    }
    if let Some(v) = flags.get("authorization-mode") {
        c.authorization_mode = Setting {
            value: crate::escape::escape_str(v),
            source: "kubelet argument --authorization-mode".into(),
        };
    }
    if let Some(v) = flags.get("read-only-port").and_then(|v| v.parse().ok()) {
        c.read_only_port = Setting {
            value: v,
            source: "kubelet argument --read-only-port".into(),
        };
    }
    c.errors = errors;
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<Vec<u8>> {
        s.split(' ').map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn kubeadm_config_is_closed() {
        let text = include_str!("../../../tests/fixtures/entry/kubelet-config.yaml");
        let c = judge(
            &argv("/usr/bin/kubelet --config=/var/lib/kubelet/config.yaml --container-runtime-endpoint=unix:///run/containerd/containerd.sock"),
            Some(("/var/lib/kubelet/config.yaml", text)),
        );
        assert!(!c.anonymous.value);
        assert_eq!(c.authorization_mode.value, "Webhook");
        assert_eq!(c.read_only_port.value, 0);
        assert!(c.errors.is_empty());
    }

    #[test]
    fn open_config_file_and_flags_win() {
        let text = include_str!("../../../tests/fixtures/entry/kubelet-config.open.yaml");
        let c = judge(
            &argv("kubelet --config /etc/kubernetes/kubelet.yaml"),
            Some(("/etc/kubernetes/kubelet.yaml", text)),
        );
        assert!(c.anonymous.value);
        assert_eq!(c.authorization_mode.value, "AlwaysAllow");
        assert_eq!(c.read_only_port.value, 10255);
        assert_eq!(
            c.anonymous.source,
            "/etc/kubernetes/kubelet.yaml (authentication.anonymous.enabled)"
        );
        let c = judge(
            &argv("kubelet --config /etc/kubernetes/kubelet.yaml --anonymous-auth=false"),
            Some(("/etc/kubernetes/kubelet.yaml", text)),
        );
        assert!(!c.anonymous.value);
    }

    #[test]
    fn flag_defaults_without_config() {
        let c = judge(
            &argv("kubelet --kubeconfig=/etc/kubernetes/kubelet.conf"),
            None,
        );
        assert!(c.anonymous.value);
        assert_eq!(c.authorization_mode.value, "AlwaysAllow");
    }

    #[test]
    fn bad_yaml_has_a_position() {
        let c = judge(
            &argv("kubelet --config=/k.yaml"),
            Some(("/k.yaml", "authentication:\n  anonymous:\n    enabled: [\n")),
        );
        assert!(c.errors[0].starts_with("/k.yaml:"), "{:?}", c.errors);
        assert!(
            c.errors[0]
                .split(':')
                .nth(1)
                .unwrap()
                .parse::<usize>()
                .unwrap()
                >= 3
        );
    }
}
