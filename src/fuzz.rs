//! Entry points for fuzzing every parser of input an attacker controls, shared
//! by the `cargo fuzz` targets (`fuzz/fuzz_targets/`) and the corpus replay in
//! the normal test run (`tests/fuzz_corpus.rs`). Each takes arbitrary bytes and
//! must neither panic, hang nor allocate without bound.

use crate::collect::persistence::{PersistFile, PersistKind};
use crate::host::FileMeta;

/// Every target, by name (the names of `fuzz/fuzz_targets/*.rs`).
pub const TARGETS: &[&str] = &[
    "proc_stat",
    "proc_status",
    "maps",
    "mountinfo",
    "net_tcp",
    "crontab",
    "unit_file",
    "ld_so_preload",
    "rules_toml",
    "allowlist_toml",
    "journal",
    "elf_modinfo",
    "decompress",
    "cgroup",
    "service_config",
    "login_records",
];

/// Runs one target on one input.
pub fn run(target: &str, data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match target {
        "proc_stat" => {
            let _ = crate::collect::process::parse_stat(data);
            let _ = crate::collect::cpu::parse_stat(&text);
        }
        "proc_status" => {
            for k in ["Tgid", "NSpid", "Uid", "Name"] {
                let _ = crate::collect::process::status_field(&text, k);
            }
            let _ = crate::collect::process::split_nul(data);
        }
        "maps" => {
            let _ = crate::collect::process::mapped_paths(data);
        }
        "mountinfo" => {
            for m in crate::collect::mounts::parse(&text) {
                let _ = crate::collect::mounts::covered_pid(&m.mount_point);
            }
        }
        "net_tcp" => {
            let _ = crate::collect::net::parse_sockets(&text, "tcp");
            let _ = crate::collect::net::socket_inode(data);
        }
        "crontab" | "unit_file" => {
            let kinds: &[(PersistKind, &str)] = if target == "crontab" {
                &[
                    (PersistKind::Crontab, "/etc/cron.d/x"),
                    (PersistKind::Crontab, "/var/spool/cron/crontabs/root"),
                    (PersistKind::ShellStartup, "/root/.bashrc"),
                    (PersistKind::InitScript, "/etc/rc.local"),
                ]
            } else {
                &[(PersistKind::SystemdUnit, "/etc/systemd/system/x.service")]
            };
            let files: Vec<PersistFile> = kinds
                .iter()
                .map(|(kind, path)| PersistFile {
                    path: path.as_bytes().to_vec(),
                    kind: *kind,
                    meta: FileMeta::default(),
                    content: data.to_vec(),
                    sha256: Some(crate::collect::modules::sha256_hex(data)),
                })
                .collect();
            let flagged = [crate::detect::persistence::Flagged {
                pid: 7,
                name: "minerd".into(),
                exe: Some(b"/tmp/minerd".to_vec()),
                malicious: true,
                ..Default::default()
            }];
            let _ = crate::detect::persistence::findings(
                &files,
                &flagged,
                &crate::rules::Rules::builtin(),
                &crate::detect::persistence::Lookup::none(),
            );
        }
        "ld_so_preload" => {
            let _ = crate::collect::preload::split_preload(data);
        }
        "rules_toml" => {
            let _ = crate::rules::Rules::builtin().add_str(&text, "fuzz.toml");
        }
        "allowlist_toml" => {
            let _ = crate::respond::Allowlist::parse(&text);
        }
        "journal" => {
            let _ = crate::respond::case::parse_journal(data);
        }
        "elf_modinfo" => {
            // Seeds are stored with "QELF" instead of "\x7fELF" (and the other
            // way round), so no file in the corpus is a module object that a
            // scan of the source tree would report.
            let mut v = data.to_vec();
            swap_elf_magic(&mut v);
            let data = &v[..];
            let _ = crate::collect::modules::identify(data);
            let _ = crate::collect::modules::modinfo(data);
            let _ = crate::collect::preload::elf_exports(data);
        }
        "decompress" => {
            let (kind, rest) = data.split_first().map_or((0, &[][..]), |(k, r)| (*k, r));
            let c = ["xz", "gzip", "zstd"][usize::from(kind) % 3];
            let _ = crate::collect::modules::decompress(rest, Some(c));
        }
        "cgroup" => {
            let _ = crate::collect::process::cgroup_context(data);
        }
        "service_config" => {
            // Includes are read from an empty root: only the text is hostile.
            let host = crate::host::Host::new("/nonexistent-quarry-fuzz-root");
            let c = crate::collect::entry::sshd::parse(&host, "/etc/ssh/sshd_config", &text);
            let _ = c.root_password_logins();
            let _ = crate::collect::entry::redis::parse(&host, "/etc/redis/redis.conf", &text);
            let argv: Vec<Vec<u8>> = data.split(|b| *b == 0).map(<[u8]>::to_vec).collect();
            let _ = crate::collect::entry::docker::judge(
                &argv,
                Some(("/etc/docker/daemon.json", &text)),
            );
            let _ = crate::collect::entry::kubelet::judge(
                &argv,
                Some(("/var/lib/kubelet/config.yaml", &text)),
            );
            let _ = crate::collect::entry::yarn::judge(
                Some(("core-site.xml", &text)),
                Some(("yarn-site.xml", &text)),
            );
        }
        "login_records" => {
            let mut r = crate::collect::entry::logins::parse_utmp(data, true, "/var/log/wtmp");
            r.extend(crate::collect::entry::logins::parse_utmp(
                data,
                false,
                "/var/log/btmp",
            ));
            r.extend(crate::collect::entry::logins::parse_auth_log(
                &text,
                "/var/log/auth.log",
                1_800_000_000,
            ));
            r.sort_by_key(|l| l.time);
            let _ = crate::collect::entry::logins::bursts(&r, 600, 2);
        }
        other => panic!("unknown fuzz target {other}"),
    }
}

/// Swaps the ELF magic `\x7fELF` with `QELF` (an involution).
pub fn swap_elf_magic(v: &mut [u8]) {
    if v.starts_with(b"\x7fELF") {
        v[0] = b'Q';
    } else if v.starts_with(b"QELF") {
        v[0] = 0x7f;
    }
}
