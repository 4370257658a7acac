//! BPF programs loaded in the kernel, asked through the `bpf()` system call.
//!
//! An eBPF rootkit needs no kernel module: programs attached to system-call
//! tracepoints rewrite what `getdents64` returns with `bpf_probe_write_user`.
//! The kernel still lists every loaded program by ID
//! (`BPF_PROG_GET_NEXT_ID`), and `BPF_OBJ_GET_INFO_BY_FD` gives its type,
//! name, load time, owner and translated instructions. The helpers a program
//! calls are read from those instructions: for root, a helper call's
//! immediate is the helper's address minus `__bpf_call_base`
//! (kernel/bpf/syscall.c, `bpf_insn_prepare_dump()`), named through
//! `/proc/kallsyms`, as bpftool does.
//!
//! The processes holding a program (`anon_inode:bpf-prog` or
//! `anon_inode:bpf_link` descriptors, whose fdinfo names the `prog_id`) are
//! its loaders.
//!
//! No crate wraps these calls without also bringing libbpf (C) or an async
//! runtime (aya); the three commands used here are a few lines each.

use std::collections::BTreeMap;

use crate::host::Host;

/// `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// Most programs enumerated (a machine with more is not a normal one; the
/// rest are counted, not read).
const MAX_PROGRAMS: usize = 4096;

/// Helpers a rootkit needs, by kallsyms name.
pub const ROOTKIT_HELPERS: &[&str] = &[
    "bpf_probe_write_user",
    "bpf_override_return",
    "bpf_send_signal",
    "bpf_send_signal_thread",
];

/// One loaded program.
#[derive(Debug, Clone, Default)]
pub struct Program {
    pub id: u32,
    pub prog_type: u32,
    pub name: String,
    /// Nanoseconds since boot at load time.
    pub load_time_ns: u64,
    pub uid: u32,
    /// Rootkit helpers it calls (of [`ROOTKIT_HELPERS`]).
    pub helpers: Vec<String>,
    /// Whether the helpers could be read (root, kallsyms with addresses).
    pub helpers_known: bool,
}

impl Program {
    /// The program type's name (`enum bpf_prog_type`).
    pub fn type_name(&self) -> &'static str {
        const NAMES: &[&str] = &[
            "unspec",
            "socket_filter",
            "kprobe",
            "sched_cls",
            "sched_act",
            "tracepoint",
            "xdp",
            "perf_event",
            "cgroup_skb",
            "cgroup_sock",
            "lwt_in",
            "lwt_out",
            "lwt_xmit",
            "sock_ops",
            "sk_skb",
            "cgroup_device",
            "sk_msg",
            "raw_tracepoint",
            "cgroup_sock_addr",
            "lwt_seg6local",
            "lirc_mode2",
            "sk_reuseport",
            "flow_dissector",
            "cgroup_sysctl",
            "raw_tracepoint_writable",
            "cgroup_sockopt",
            "tracing",
            "struct_ops",
            "ext",
            "lsm",
            "sk_lookup",
            "syscall",
            "netfilter",
        ];
        NAMES
            .get(self.prog_type as usize)
            .copied()
            .unwrap_or("unknown")
    }

    /// Types that run on kernel events and may call the tracing helpers.
    pub fn is_tracing(&self) -> bool {
        matches!(self.prog_type, 2 | 5 | 7 | 17 | 24 | 26 | 29)
    }
}

/// What was enumerated.
#[derive(Debug, Clone, Default)]
pub struct Programs {
    pub programs: Vec<Program>,
    /// Why enumeration was not possible or partial.
    pub note: Option<String>,
}

/// `struct bpf_prog_info`, the first fields (the kernel accepts a shorter
/// struct and fills what fits).
#[repr(C)]
#[derive(Default)]
struct ProgInfo {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
}

fn bpf(cmd: libc::c_long, attr: &mut [u32]) -> libc::c_long {
    // SAFETY: attr is a valid, writable buffer of the size passed; the
    // commands used only read it and write into it (or into buffers it points at).
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    }
}

/// Enumerates loaded programs (live host, root). Helper names are resolved
/// only for tracing programs, and only if any exists (the kallsyms read is
/// the expensive part).
pub fn enumerate(host: &Host) -> Programs {
    let mut out = Programs::default();
    if !host.is_live() {
        out.note =
            Some("BPF programs are asked of the running kernel: not applicable offline".into());
        return out;
    }
    let mut xlated: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    let mut id = 0u32;
    loop {
        let mut attr = [0u32; 4];
        attr[0] = id;
        if bpf(BPF_PROG_GET_NEXT_ID, &mut attr) != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOENT) {
                out.note = Some(format!("bpf(BPF_PROG_GET_NEXT_ID): {e}"));
            }
            break;
        }
        id = attr[1];
        if out.programs.len() >= MAX_PROGRAMS {
            out.note = Some(format!(
                "more than {MAX_PROGRAMS} BPF programs: the rest were not read"
            ));
            break;
        }
        let mut attr = [0u32; 4];
        attr[0] = id;
        let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr);
        if fd < 0 {
            continue; // unloaded meanwhile
        }
        // SAFETY: the kernel just returned this descriptor to us.
        let fd = unsafe { <rustix::fd::OwnedFd as rustix::fd::FromRawFd>::from_raw_fd(fd as i32) };
        let Some((info, insns)) = prog_info(&fd) else {
            continue;
        };
        let name_end = info.name.iter().position(|b| *b == 0).unwrap_or(16);
        let p = Program {
            id: info.id,
            prog_type: info.prog_type,
            name: crate::escape::escape(&info.name[..name_end]),
            load_time_ns: info.load_time,
            uid: info.created_by_uid,
            helpers: Vec::new(),
            helpers_known: false,
        };
        if p.is_tracing() && !insns.is_empty() {
            xlated.insert(p.id, insns);
        }
        out.programs.push(p);
    }
    if !xlated.is_empty() {
        if let Some(syms) = helper_addresses(host) {
            for p in out.programs.iter_mut() {
                if let Some(insns) = xlated.get(&p.id) {
                    p.helpers = called_helpers(insns, &syms);
                    p.helpers_known = true;
                }
            }
        }
    }
    out
}

fn prog_info(fd: &rustix::fd::OwnedFd) -> Option<(ProgInfo, Vec<u8>)> {
    use rustix::fd::AsRawFd;
    let get = |info: &mut ProgInfo| -> bool {
        let mut attr = [0u32; 4];
        attr[0] = fd.as_raw_fd() as u32;
        attr[1] = std::mem::size_of::<ProgInfo>() as u32;
        let ptr = info as *mut ProgInfo as u64;
        attr[2] = ptr as u32;
        attr[3] = (ptr >> 32) as u32;
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) == 0
    };
    let mut info = ProgInfo::default();
    if !get(&mut info) {
        return None;
    }
    let len = info.xlated_prog_len as usize;
    let mut insns = vec![0u8; len.min(8 * 1_000_000)];
    if !insns.is_empty() {
        let mut again = ProgInfo {
            xlated_prog_len: insns.len() as u32,
            xlated_prog_insns: insns.as_mut_ptr() as u64,
            ..ProgInfo::default()
        };
        if !get(&mut again) {
            insns.clear();
        }
    }
    Some((info, insns))
}

/// `__bpf_call_base` and the addresses of [`ROOTKIT_HELPERS`], from kallsyms
/// (root sees real addresses; otherwise zeros, and `None`).
fn helper_addresses(host: &Host) -> Option<(u64, BTreeMap<u64, &'static str>)> {
    let (text, _) = host.read_kernel_text("/proc/kallsyms").ok()?;
    parse_helper_addresses(&text)
}

pub fn parse_helper_addresses(text: &str) -> Option<(u64, BTreeMap<u64, &'static str>)> {
    let mut base = None;
    let mut helpers = BTreeMap::new();
    for line in text.lines() {
        let mut w = line.split_ascii_whitespace();
        let (Some(addr), Some(_), Some(name)) = (w.next(), w.next(), w.next()) else {
            continue;
        };
        if w.next().is_some() {
            continue; // module symbols carry [module]
        }
        let wanted = name == "__bpf_call_base" || ROOTKIT_HELPERS.contains(&name);
        if !wanted {
            continue;
        }
        let a = u64::from_str_radix(addr, 16).ok().filter(|a| *a != 0)?;
        if name == "__bpf_call_base" {
            base = Some(a);
        } else if let Some(h) = ROOTKIT_HELPERS.iter().find(|h| **h == name) {
            helpers.insert(a, *h);
        }
    }
    Some((base?, helpers))
}

/// The rootkit helpers a program's translated instructions call.
pub fn called_helpers(insns: &[u8], syms: &(u64, BTreeMap<u64, &'static str>)) -> Vec<String> {
    const BPF_JMP_CALL: u8 = 0x85;
    let mut out: Vec<String> = Vec::new();
    for insn in insns.chunks_exact(8) {
        let src_reg = insn[1] >> 4;
        if insn[0] != BPF_JMP_CALL || src_reg != 0 {
            continue; // not a helper call (1: BPF-to-BPF, 2: kfunc)
        }
        let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]) as i64;
        let addr = (syms.0 as i64).wrapping_add(imm) as u64;
        if let Some(name) = syms.1.get(&addr) {
            if !out.iter().any(|x| x == name) {
                out.push(name.to_string());
            }
        }
    }
    out
}

/// Processes holding each program ID through a program or link descriptor:
/// prog_id → [(pid, fd)].
pub fn holders(host: &Host, pids: &[i32]) -> BTreeMap<u32, Vec<(i32, i32)>> {
    let mut out: BTreeMap<u32, Vec<(i32, i32)>> = BTreeMap::new();
    for &pid in pids {
        let Ok(fds) = host.list_pids(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds {
            let Ok(link) = host.read_link(format!("/proc/{pid}/fd/{fd}")) else {
                continue;
            };
            if link != b"anon_inode:bpf-prog" && link != b"anon_inode:bpf_link" {
                continue;
            }
            if let Ok(info) = host.read_text(format!("/proc/{pid}/fdinfo/{fd}")) {
                for line in info.lines() {
                    if let Some(v) = line.strip_prefix("prog_id:") {
                        if let Ok(id) = v.trim().parse::<u32>() {
                            out.entry(id).or_default().push((pid, fd));
                        }
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_calls_are_named() {
        let ks = "ffffffff81000000 T _stext\nffffffff81200000 T __bpf_call_base\nffffffff81234560 t bpf_probe_write_user\nffffffff81300000 t bpf_override_return\nffffffffc0000000 t foo\t[mod]\n";
        let syms = parse_helper_addresses(ks).unwrap();
        assert_eq!(syms.0, 0xffffffff81200000);
        let imm = (0xffffffff81234560u64 - 0xffffffff81200000u64) as i32;
        let mut insns = vec![0xb7, 0x01, 0, 0, 0, 0, 0, 0];
        insns.extend([0x85, 0x00, 0, 0]);
        insns.extend(imm.to_le_bytes());
        // A BPF-to-BPF call (src_reg 1) with the same immediate is not a helper.
        insns.extend([0x85, 0x10, 0, 0]);
        insns.extend(((0xffffffff81300000u64 - 0xffffffff81200000u64) as i32).to_le_bytes());
        insns.extend([0x95, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(called_helpers(&insns, &syms), vec!["bpf_probe_write_user"]);
        // Hidden addresses (not root): nothing to resolve.
        assert!(parse_helper_addresses("0000000000000000 T __bpf_call_base\n").is_none());
    }

    /// The running kernel's programs can be enumerated as root (this machine
    /// has systemd's); none of them is a tracing program with rootkit helpers.
    #[test]
    fn enumerates_live() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let p = enumerate(&Host::default());
        for prog in &p.programs {
            assert!(prog.id > 0);
            assert!(prog.helpers.is_empty(), "{prog:?}");
        }
    }
}
