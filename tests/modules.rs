//! Issue 4: kernel module files and hidden loaded modules. This machine's
//! kernel has no loadable modules, so loaded-module disagreements are tested on
//! fixture trees through the same code (`--root`); module files are tested for
//! real. The real-kernel test is tests/vm/run.sh.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A fixture with a modular kernel, many ordinary modules and nothing wrong.
fn clean_fixture() -> tempfile::TempDir {
    let d = base_fixture();
    let r = d.path();
    let mut modules = String::new();
    let mut kallsyms =
        String::from("ffffffff81000000 T _stext\nffffffff81000100 t bpf_prog_x\t[bpf]\n");
    let mut ftrace = String::from("do_one_initcall\n");
    for (i, name) in [
        "ext4",
        "jbd2",
        "mbcache",
        "crc16",
        "virtio_net",
        "net_failover",
        "failover",
        "nf_tables",
        "libcrc32c",
        "xfs",
    ]
    .iter()
    .enumerate()
    {
        modules.push_str(&format!(
            "{name} {} 1 - Live 0xffffffffc0{i:03}000\n",
            16384 * (i + 1)
        ));
        put(r, &format!("sys/module/{name}/initstate"), "live\n");
        put(r, &format!("sys/module/{name}/taint"), "\n");
        kallsyms.push_str(&format!("ffffffffc0{i:03}010 t {name}_init\t[{name}]\n"));
        ftrace.push_str(&format!("{name}_fn [{name}]\n"));
    }
    // Built-in modules have no initstate.
    put(r, "sys/module/printk/parameters/time", "Y\n");
    put(r, "proc/modules", &modules);
    put(r, "proc/kallsyms", &kallsyms);
    put(r, "sys/kernel/tracing/available_filter_functions", &ftrace);
    put(
        r,
        "proc/vmallocinfo",
        "0xffffffffc0000000-0xffffffffc0002000 8192 load_module+0x1/0x2 pages=1 vmalloc\n",
    );
    put(r, "dev/kmsg", "6,1,100,-;Linux version 6.1.0-fixture\n");
    d
}

fn scan_root(r: &Path) -> Scan {
    scan(&[
        "--root",
        r.to_str().unwrap(),
        "--interval",
        "0",
        "--only",
        "modules",
    ])
}

fn by_rule<'a>(s: &'a Scan, rule: &str) -> Vec<&'a serde_json::Value> {
    s.findings().iter().filter(|f| f["rule"] == rule).collect()
}

#[test]
fn clean_modular_kernel_gives_no_finding() {
    let d = clean_fixture();
    let s = scan_root(d.path());
    assert!(s.findings().is_empty(), "{:#}", s.json["findings"]);
    assert_eq!(s.code, 0);
    assert_eq!(s.json["modules"]["loaded_checks_applicable"], true);
    assert_eq!(s.json["modules"]["listed"], 10);
}

#[test]
fn module_in_sys_module_but_not_proc_modules() {
    let d = clean_fixture();
    let r = d.path();
    put(r, "sys/module/diamorphine/initstate", "live\n");
    put(r, "sys/module/diamorphine/taint", "OE\n");
    put(r, "proc/sys/kernel/tainted", "12288\n");
    put(
        r,
        "dev/kmsg",
        "4,500,1000,-;diamorphine: loading out-of-tree module taints kernel.\n4,501,1001,-;diamorphine: module verification failed: signature and/or required key missing - tainting kernel\n",
    );
    let s = scan_root(r);
    let hidden = by_rule(&s, "module.hidden");
    assert_eq!(hidden.len(), 1, "{:#}", s.json["findings"]);
    let f = hidden[0];
    assert_eq!(f["subject"]["name"], "diamorphine");
    assert_eq!(f["severity"], "critical");
    let ev = f["evidence"].to_string();
    assert!(
        ev.contains("/sys/module/diamorphine") && ev.contains("kernel log"),
        "{ev}"
    );
    assert!(ev.contains("OE (/sys/module/diamorphine/taint)"), "{ev}");
    assert!(ev.contains("module verification failed"), "{ev}");
    // O and E taint with no listed module carrying them.
    let t = by_rule(&s, "module.taint-unexplained");
    assert_eq!(t.len(), 1);
    assert!(t[0]["title"].as_str().unwrap().contains("OE"));
    assert_eq!(s.code, 1);
}

#[test]
fn kallsyms_and_tracefs_tags_of_an_unlisted_module() {
    let d = clean_fixture();
    let r = d.path();
    let mut k = std::fs::read_to_string(r.join("proc/kallsyms")).unwrap();
    k.push_str("ffffffffc0900000 t hacked_getdents64\t[reptile]\n");
    put(r, "proc/kallsyms", &k);
    let mut t =
        std::fs::read_to_string(r.join("sys/kernel/tracing/available_filter_functions")).unwrap();
    t.push_str("hacked_kill [reptile]\n");
    put(r, "sys/kernel/tracing/available_filter_functions", &t);
    let s = scan_root(r);
    let hidden = by_rule(&s, "module.hidden");
    assert_eq!(hidden.len(), 1, "{:#}", s.json["findings"]);
    let seen = hidden[0]["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == "seen by")
        .unwrap();
    let seen = seen["value"].as_str().unwrap();
    assert!(
        seen.contains("/proc/kallsyms") && seen.contains("tracefs"),
        "{seen}"
    );
    let missed = hidden[0]["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == "missed by")
        .unwrap();
    assert!(missed["value"].as_str().unwrap().contains("/sys/module"));
}

#[test]
fn taint_without_a_listed_out_of_tree_module() {
    let d = clean_fixture();
    let r = d.path();
    put(r, "proc/sys/kernel/tainted", "12288\n");
    let s = scan_root(r);
    assert!(by_rule(&s, "module.hidden").is_empty());
    let t = by_rule(&s, "module.taint-unexplained");
    assert_eq!(t.len(), 1, "{:#}", s.json["findings"]);
    assert!(t[0]["evidence"].to_string().contains("externally-built"));
    // The same taint is explained when a listed module carries it.
    let mut m = std::fs::read_to_string(r.join("proc/modules")).unwrap();
    m.push_str("vboxdrv 16384 0 - Live 0xffffffffc0999000 (OE)\n");
    put(r, "proc/modules", &m);
    put(r, "sys/module/vboxdrv/initstate", "live\n");
    let s = scan_root(r);
    assert!(s.findings().is_empty(), "{:#}", s.json["findings"]);
}

#[test]
fn kernel_log_names_a_module_no_longer_listed() {
    let d = clean_fixture();
    let r = d.path();
    put(
        r,
        "dev/kmsg",
        "4,9,9,-;snd_pcs: loading out-of-tree module taints kernel.\n",
    );
    let s = scan_root(r);
    let l = by_rule(&s, "module.log-unlisted");
    assert_eq!(l.len(), 1, "{:#}", s.json["findings"]);
    assert_eq!(l[0]["subject"]["name"], "snd_pcs");
    assert_eq!(l[0]["severity"], "medium");
}

#[test]
fn no_module_support_is_not_applicable() {
    let d = clean_fixture();
    std::fs::remove_file(d.path().join("proc/modules")).unwrap();
    let s = scan_root(d.path());
    assert_eq!(s.json["modules"]["loaded_checks_applicable"], false);
    assert!(s.json["limitations"].to_string().contains("not applicable"));
    assert_eq!(s.code, 0);
}

#[test]
fn seed_module_files_are_identified() {
    sandboxed!("seed_module_files_are_identified");
    let dir = Path::new("/lib/udev/usb_control");
    assert!(!dir.exists(), "{} exists before the test", dir.display());
    let _d = PathGuard(dir.to_path_buf());
    std::fs::create_dir_all(dir).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/fakemod.c");
    let build = |name: &str, out: &Path| {
        let st = Command::new("cc")
            .arg("-c")
            .arg(format!("-DMODNAME=\"{name}\""))
            .arg("-o")
            .arg(out)
            .arg(&src)
            .status()
            .unwrap();
        assert!(st.success());
    };
    let seed = ["raid", "iptable_mac", "snd_pcs", "usb_pcs", "ipv6_kac"];
    for n in seed {
        build(n, &dir.join(format!("{n}.ko")));
    }
    // One renamed to look like a shared library elsewhere.
    let disguised = Path::new("/usr/local/lib/libsystemd-helper.so.2");
    let _g = PathGuard(disguised.to_path_buf());
    build("usb_pcs", disguised);
    // An ordinary object file (relocatable, but no .modinfo) is not a module.
    let plain = Path::new("/tmp/quarry-test-plain.o");
    let _p = PathGuard(plain.to_path_buf());
    std::fs::write("/tmp/quarry-test-plain.c", "int f(void){return 1;}\n").unwrap();
    let _pc = PathGuard("/tmp/quarry-test-plain.c".into());
    assert!(Command::new("cc")
        .args([
            "-c",
            "-o",
            "/tmp/quarry-test-plain.o",
            "/tmp/quarry-test-plain.c"
        ])
        .status()
        .unwrap()
        .success());

    let s = scan(&["--only", "modules", "--interval", "0"]);
    let files = by_rule(&s, "module.file");
    for n in seed {
        let path = format!("/lib/udev/usb_control/{n}.ko");
        let f = files
            .iter()
            .find(|f| f["subject"]["path"] == path.as_str())
            .unwrap_or_else(|| panic!("{path} not reported: {:#}", s.json["findings"]));
        assert_eq!(f["severity"], "critical");
        let ev = f["evidence"].to_string();
        assert!(ev.contains("ELF 64-bit LSB relocatable, x86-64"), "{ev}");
        assert!(
            ev.contains(&format!("\"value\":\"{n}\"")),
            "modinfo name missing: {ev}"
        );
        assert!(ev.contains("6.1.0-quarry-test"), "vermagic missing: {ev}");
    }
    let d = files
        .iter()
        .find(|f| f["subject"]["path"] == "/usr/local/lib/libsystemd-helper.so.2")
        .expect("disguised module not found");
    assert!(d["title"].as_str().unwrap().contains("disguised"), "{d:#}");
    assert!(!files
        .iter()
        .any(|f| f["subject"]["path"] == "/tmp/quarry-test-plain.o"));
    // This machine's kernel has no loadable modules: said, not an error.
    if !Path::new("/proc/modules").exists() {
        assert_eq!(s.json["modules"]["loaded_checks_applicable"], false);
        assert!(s.json["limitations"].to_string().contains("not applicable"));
    }
    assert_eq!(s.code, 1);
}

#[test]
fn compressed_module_files_are_decoded() {
    sandboxed_mounts!("compressed_module_files_are_decoded", false);
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/fakemod.c");
    let ko = dir.path().join("plain.o");
    let st = Command::new("cc")
        .args(["-c", "-DMODNAME=\"snd_pcs\"", "-o"])
        .arg(&ko)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success());
    let raw = std::fs::read(&ko).unwrap();
    std::fs::remove_file(&ko).unwrap();
    // gzip
    {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&raw).unwrap();
        std::fs::write(dir.path().join("a.ko.gz"), e.finish().unwrap()).unwrap();
    }
    // xz
    let mut xz = Vec::new();
    lzma_rs::xz_compress(&mut std::io::BufReader::new(&raw[..]), &mut xz).unwrap();
    std::fs::write(dir.path().join("b.ko.xz"), xz).unwrap();
    // zstd
    let zst =
        ruzstd::encoding::compress_to_vec(&raw[..], ruzstd::encoding::CompressionLevel::Fastest);
    std::fs::write(dir.path().join("c.ko.zst"), zst).unwrap();

    let s = scan(&[
        "--only",
        "modules",
        "--interval",
        "0",
        "--module-path",
        dir.path().to_str().unwrap(),
    ]);
    let files = by_rule(&s, "module.file");
    assert_eq!(files.len(), 3, "{:#}", s.json["findings"]);
    for (name, kind) in [("a.ko.gz", "gzip"), ("b.ko.xz", "xz"), ("c.ko.zst", "zstd")] {
        let f = files
            .iter()
            .find(|f| f["subject"]["path"].as_str().unwrap().ends_with(name))
            .unwrap();
        let ev = f["evidence"].to_string();
        assert!(
            ev.contains(&format!("{kind}-compressed ELF 64-bit LSB relocatable")),
            "{ev}"
        );
        assert_eq!(f["subject"]["name"], "snd_pcs");
        assert_eq!(f["severity"], "critical", "named like a seed module");
    }
}

fn running_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}

fn module_scan(root: &str) -> Scan {
    scan(&[
        "--only",
        "modules",
        "--interval",
        "0",
        "--module-path",
        root,
    ])
}

/// Issue 11: a real Debian kernel package's module tree (the installed
/// linux-image package's, bind-mounted under /tmp as if extracted there) is one
/// low finding with its signer, and `fix` would act on none of it.
#[test]
fn extracted_debian_module_tree_is_one_low_finding() {
    sandboxed_clean!("extracted_debian_module_tree_is_one_low_finding");
    let Some(ver) = std::fs::read_dir("/lib/modules")
        .ok()
        .and_then(|d| d.flatten().next())
        .map(|e| e.file_name().to_string_lossy().into_owned())
    else {
        eprintln!("SKIPPED: no /lib/modules (install linux-image-amd64; .ci/run does)");
        return;
    };
    let dst = PathBuf::from(format!("/tmp/x/lib/modules/{ver}"));
    std::fs::create_dir_all(&dst).unwrap();
    rustix::mount::mount_bind(format!("/lib/modules/{ver}"), &dst).unwrap();
    // One module of our own beside it, unsigned and built for this kernel.
    build_module("qown", &running_release(), Path::new("/tmp/x/qown.ko"));
    let s = module_scan("/tmp");
    let trees = by_rule(&s, "module.tree");
    assert_eq!(trees.len(), 1, "{:#}", s.json["findings"]);
    let t = trees[0];
    assert_eq!(t["severity"], "low");
    let title = t["title"].as_str().unwrap();
    assert!(
        title.contains(&ver) && title.contains("signed by"),
        "{title}"
    );
    assert!(!title.contains("unsigned"), "{title}");
    let loud: Vec<&serde_json::Value> = s
        .findings()
        .iter()
        .filter(|f| f["rule"] == "module.file" && f["severity"] != "low" && f["severity"] != "info")
        .collect();
    assert_eq!(loud.len(), 1, "{:#}", s.json["findings"]);
    assert_eq!(loud[0]["subject"]["path"], "/tmp/x/qown.ko");
    assert_eq!(loud[0]["severity"], "high");
    let n: usize = t["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == "modules")
        .unwrap()["value"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(n > 100, "{n} modules");
    let (_, out, _) = quarry(&["fix", "--interval", "0"]);
    let out = String::from_utf8_lossy(&out);
    assert!(!out.contains("quarantine /tmp/x"), "{out}");
}

/// Issue 11: an unsigned module built for the running kernel, owned by no
/// package, is high in /opt and in a hidden folder in /tmp; built for another
/// kernel it is medium; DKMS and build directories are low.
#[test]
fn module_severity_follows_evidence() {
    sandboxed_clean!("module_severity_follows_evidence");
    let rel = running_release();
    build_module("qtestmod", &rel, Path::new("/opt/x/qtestmod.ko"));
    build_module("qtestmod", &rel, Path::new("/tmp/.x/qtestmod.ko"));
    build_module("qother", "5.10.0-other", Path::new("/tmp/y/qother.ko"));
    let dkms = format!("/var/lib/dkms/qdkms/1.0/{rel}/x86_64/module/qdkms.ko");
    build_module("qdkms", &rel, Path::new(&dkms));
    build_module("qbuild", &rel, Path::new("/srv/src/qbuild/qbuild.ko"));
    std::fs::write("/srv/src/qbuild/Module.symvers", "").unwrap();
    // An unsigned module for this kernel slipped into a module tree is not
    // hidden by the tree's grouping.
    let tree = format!("/srv/t/lib/modules/{rel}");
    build_module("qin", &rel, Path::new(&format!("{tree}/kernel/qin.ko")));
    std::fs::write(format!("{tree}/modules.dep"), "kernel/qin.ko:\n").unwrap();
    let s = scan(&["--only", "modules", "--interval", "0"]);
    let sev = |p: &str| {
        s.findings()
            .iter()
            .find(|f| f["rule"] == "module.file" && f["subject"]["path"] == p)
            .unwrap_or_else(|| panic!("no finding for {p}: {:#}", s.json["findings"]))["severity"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(sev("/opt/x/qtestmod.ko"), "high");
    assert_eq!(sev("/tmp/.x/qtestmod.ko"), "high");
    assert_eq!(sev("/tmp/y/qother.ko"), "medium");
    assert_eq!(sev(&dkms), "low");
    assert_eq!(sev("/srv/src/qbuild/qbuild.ko"), "low");
    assert_eq!(sev(&format!("{tree}/kernel/qin.ko")), "high");
    // The verdict line names what was found, and agrees with the exit code.
    let (code, out, _) = quarry(&["scan", "--only", "modules", "--interval", "0"]);
    let out = String::from_utf8_lossy(&out);
    assert_eq!(code, 1);
    assert!(
        out.contains("VERDICT: no miner process named, but 3 module file(s) to examine"),
        "{out}"
    );
    assert!(!out.contains("score "), "{out}");
}

/// Issue 11: what was judged is remembered by inode and times: a second scan
/// reads no unchanged module file; a file changed in place (same size, new
/// content, ctime moved) is judged again.
#[test]
fn module_cache_skips_unchanged_files() {
    sandboxed_clean!("module_cache_skips_unchanged_files");
    let rel = running_release();
    for i in 0..5 {
        build_module(
            &format!("qc{i}"),
            &rel,
            Path::new(&format!("/srv/m/qc{i}.ko")),
        );
    }
    let walk = |s: &Scan, k: &str| s.json["modules"]["walk"][k].as_u64().unwrap();
    let first = module_scan("/srv/m");
    assert_eq!(walk(&first, "inspected"), 5, "{:#}", first.json["modules"]);
    let second = module_scan("/srv/m");
    assert_eq!(
        walk(&second, "inspected"),
        0,
        "{:#}",
        second.json["modules"]
    );
    assert_eq!(walk(&second, "cached"), 5);
    assert_eq!(by_rule(&second, "module.file").len(), 5);
    // Same size, new content: the name changes inside .modinfo.
    let p = Path::new("/srv/m/qc3.ko");
    let data = std::fs::read(p).unwrap();
    let at = data
        .windows(8)
        .position(|w| w == b"name=qc3")
        .expect("the name in .modinfo");
    let mut edited = data.clone();
    edited[at + 6] = b'x';
    assert_eq!(edited.len(), data.len());
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(p, &edited).unwrap();
    let third = module_scan("/srv/m");
    assert_eq!(walk(&third, "inspected"), 1, "{:#}", third.json["modules"]);
    assert!(
        by_rule(&third, "module.file")
            .iter()
            .any(|f| f["subject"]["name"] == "qx3"),
        "{:#}",
        third.json["findings"]
    );
}

/// Issue 11: a directory's listing is reused while its device, inode, mtime
/// and ctime are unchanged; a file added to it, or a file system mounted over
/// a subdirectory, is seen on the next scan.
#[test]
fn directory_listings_are_reused_until_a_directory_changes() {
    sandboxed_clean!("directory_listings_are_reused_until_a_directory_changes");
    let rel = running_release();
    build_module("qa", &rel, Path::new("/srv/d/a/qa.ko"));
    build_module("qb", &rel, Path::new("/srv/d/b/qb.ko"));
    // Listings whose times are within 2 s of the walk are never stored.
    std::thread::sleep(std::time::Duration::from_millis(2300));
    let walk = |s: &Scan, k: &str| s.json["modules"]["walk"][k].as_u64().unwrap();
    let first = module_scan("/srv/d");
    assert_eq!(walk(&first, "dirs"), 3, "{:#}", first.json["modules"]);
    assert_eq!(walk(&first, "dirs_cached"), 0);
    let second = module_scan("/srv/d");
    assert_eq!(
        walk(&second, "dirs_cached"),
        3,
        "{:#}",
        second.json["modules"]
    );
    assert_eq!(by_rule(&second, "module.file").len(), 2);
    // A new file: its directory is listed again, the others are reused.
    build_module("qc", &rel, Path::new("/srv/d/a/qc.ko"));
    let third = module_scan("/srv/d");
    assert_eq!(
        walk(&third, "dirs_cached"),
        2,
        "{:#}",
        third.json["modules"]
    );
    assert_eq!(by_rule(&third, "module.file").len(), 3);
    // A file system mounted over a cached subdirectory: another inode.
    rustix::mount::mount(
        "tmpfs",
        "/srv/d/b",
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .expect("tmpfs over /srv/d/b");
    let _m = MountGuard("/srv/d/b".into());
    build_module("qm", &rel, Path::new("/srv/d/b/qm.ko"));
    let fourth = module_scan("/srv/d");
    let names: Vec<String> = by_rule(&fourth, "module.file")
        .iter()
        .map(|f| f["subject"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(names.iter().any(|n| n == "qm"), "{names:?}");
    assert!(!names.iter().any(|n| n == "qb"), "{names:?}");
}

/// Issue 11: the text report shows a few findings of one rule and severity in
/// full and counts the rest; the JSON keeps every one.
#[test]
fn repeated_findings_are_grouped_in_text() {
    sandboxed_clean!("repeated_findings_are_grouped_in_text");
    for i in 0..8 {
        build_module(
            &format!("qg{i}"),
            "5.10.0-other",
            Path::new(&format!("/srv/g/qg{i}.ko")),
        );
    }
    let (_, out, _) = quarry(&[
        "scan",
        "--only",
        "modules",
        "--interval",
        "0",
        "--module-path",
        "/srv/g",
    ]);
    let out = String::from_utf8_lossy(&out);
    assert_eq!(out.matches("[module.file]").count(), 5, "{out}");
    assert!(out.contains("… and 3 more module.file finding(s)"), "{out}");
    assert_eq!(by_rule(&module_scan("/srv/g"), "module.file").len(), 8);
}
