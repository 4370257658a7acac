#!/usr/bin/env bash
# End-to-end test against a real kernel: boots Debian's kernel in QEMU (TCG,
# no KVM needed) with a busybox initramfs holding the static `quarry`
# binary, two test modules, a CPU burner (tests/c/burner.c) and a PID probe
# (tests/vm/pidprobe.c):
#
#   hidden  (qtest=load):    /init loads qtest_hider.ko (it hides itself from
#                            the module list); `quarry scan` must report a
#                            `module.hidden` finding for qtest_hider.
#   ftrace1 (qtest=ftrace1): /init starts the burner (PID > 1000) and loads
#                            qtest_ftrace.ko mode=1 (ftrace hooks on syscalls,
#                            the /proc lookup, getdents64, cgroup.procs and
#                            vmallocinfo hide it); quarry must report
#                            hidden.process, kernel.hook (__x64_sys_kill),
#                            module.hidden and hidden.cpu.
#   ftrace2 (qtest=ftrace2): the burner (PID < 300) and the module's kernel
#                            thread hidden by find_pid_ns hooks (mode=2); the
#                            same findings, kernel.hook naming find_pid_ns.
#   clean   (no module):     no `module.*`, `kernel.hook*` or `hidden.*` finding.
#
# Usage: bash tests/vm/run.sh          (from anywhere; needs root for apt-get)
# Environment:
#   QUARRY           quarry binary to test (default: the release build;
#                    built with `cargo build --release` when missing)
#   VM_BOOT_TIMEOUT  seconds allowed per boot (default 240)
#   VM_SMP           guest CPUs (default 1)
#   VM_PID_MAX       the guests' kernel.pid_max (default 4194304, systemd's
#                    default on 64-bit machines and every new PID
#                    namespace's since Linux 6.14)
#   VM_KEEP_LOGS     a directory to copy the console logs to (default: none)
#   VM_CASES         the cases to run, e.g. "ftrace1 clean" (default: all)
#   VM_FIXTURES      a directory: instead of the test cases, boot clean,
#                    ftrace1 and ftrace2 with qtest_dump=1 and save the raw
#                    kernel files the guest prints there (how
#                    tests/fixtures/kernel/6.1/ was made)
# Prints `vm: N passed, M failed` and exits 1 when anything failed.
# See tests/vm/README.md.
set -euo pipefail

orig_pwd=$PWD
cd "$(dirname "$0")/../.."
vm_dir=tests/vm

boot_timeout=${VM_BOOT_TIMEOUT:-240}
smp=${VM_SMP:-1}
pid_max=${VM_PID_MAX:-4194304}

say() { echo "vm: $*"; }
die() {
    echo "vm: error: $*" >&2
    echo "vm: 0 passed, 1 failed"
    exit 1
}
now_ms() { date +%s%3N; }
# Seconds (one decimal) between two now_ms values.
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 1000 }'; }

t_start=$(now_ms)

# --- Step 1: packages -------------------------------------------------------
# QEMU, Debian's kernel and its headers (to build the module against), a
# static busybox for the initramfs, and the build/packing tools.
export DEBIAN_FRONTEND=noninteractive
need=()
for pkg in qemu-system-x86 linux-image-amd64 linux-headers-amd64 busybox-static; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        need+=("$pkg")
    fi
done
command -v make >/dev/null || need+=(make)
command -v gcc >/dev/null || need+=(gcc)
# libc.a for the static burner and pidprobe.
[ -e "$(gcc -print-file-name=libc.a 2>/dev/null)" ] || need+=(libc6-dev)
command -v cpio >/dev/null || need+=(cpio)
command -v readelf >/dev/null || need+=(binutils)
command -v python3 >/dev/null || need+=(python3)
if [ "${#need[@]}" -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || die "missing packages (${need[*]}) and not root to install them"
    say "installing: ${need[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
t_packages=$(now_ms)

# The newest Debian kernel in /boot whose headers are installed. (The host's
# own kernel is irrelevant: it only runs QEMU.)
kver=$(
    for k in /boot/vmlinuz-*; do
        [ -e "$k" ] || continue
        v=${k#/boot/vmlinuz-}
        if [ -e "/lib/modules/$v/build/Makefile" ]; then echo "$v"; fi
    done | sort -V | tail -n 1
)
[ -n "$kver" ] || die "no /boot/vmlinuz-<ver> with headers in /lib/modules/<ver>/build"
kernel=/boot/vmlinuz-$kver
say "guest kernel: $kernel"

# The quarry binary under test. It must be static: the initramfs has no libc.
if [ -n "${QUARRY:-}" ]; then
    case "$QUARRY" in
        /*) quarry=$QUARRY ;;
        *) quarry=$orig_pwd/$QUARRY ;;
    esac
    [ -x "$quarry" ] || die "QUARRY=$QUARRY is not an executable file"
else
    quarry=target/x86_64-unknown-linux-gnu/release/quarry
    if [ ! -x "$quarry" ]; then
        say "no $quarry: cargo build --release"
        cargo build --release
    fi
fi
if LC_ALL=C readelf -lW "$quarry" | grep -q 'program interpreter'; then
    die "$quarry is dynamically linked; the initramfs needs a static binary"
fi
say "quarry binary: $quarry"

# Everything built from here on lives in one temporary directory, removed on
# exit; a QEMU still running then (interrupted run) is stopped first.
work=$(mktemp -d "${TMPDIR:-/tmp}/quarry-vm.XXXXXX")
qemu_pid=
cleanup() {
    if [ -n "$qemu_pid" ]; then kill "$qemu_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- Step 2: the test modules and the guest's helper programs --------------
mkdir "$work/module"
cp "$vm_dir/module/qtest_hider.c" "$vm_dir/module/qtest_ftrace.c" "$vm_dir/module/Makefile" \
    "$work/module/"
if ! make -C "/lib/modules/$kver/build" M="$work/module" modules >"$work/module.log" 2>&1; then
    cat "$work/module.log"
    die "building qtest_hider.ko and qtest_ftrace.ko failed"
fi
# Static: the initramfs has no libc.
if ! gcc -O2 -static -pthread -o "$work/burner" tests/c/burner.c >"$work/cc.log" 2>&1 ||
    ! gcc -O2 -static -o "$work/pidprobe" "$vm_dir/pidprobe.c" >>"$work/cc.log" 2>&1 ||
    ! gcc -O2 -static -o "$work/bpfload" tests/c/bpfload.c >>"$work/cc.log" 2>&1; then
    cat "$work/cc.log"
    die "building the static burner and pidprobe failed (libc6-dev has libc.a)"
fi
t_module=$(now_ms)
say "built qtest_hider.ko, qtest_ftrace.ko, burner, pidprobe in $(elapsed "$t_packages" "$t_module") s"

# --- Step 3: the initramfs --------------------------------------------------
# busybox with a symlink per applet, /init, /quarry, the modules, /burner,
# /pidprobe.
root=$work/initramfs
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,etc,root}
cp /bin/busybox "$root/bin/busybox"
if LC_ALL=C readelf -lW "$root/bin/busybox" | grep -q 'program interpreter'; then
    die "/bin/busybox is not static (install busybox-static)"
fi
for applet in $("$root/bin/busybox" --list-full); do
    if [ ! -e "$root/$applet" ] && [ ! -L "$root/$applet" ]; then
        ln -s /bin/busybox "$root/$applet"
    fi
done
# The kernel opens /dev/console before /init runs; /init re-opens it from
# devtmpfs anyway, so a failing mknod (no CAP_MKNOD) is harmless.
mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || true
install -m 755 "$vm_dir/init" "$root/init"
install -m 755 "$quarry" "$root/quarry"
install -m 644 "$work/module/qtest_hider.ko" "$root/qtest_hider.ko"
install -m 644 "$work/module/qtest_ftrace.ko" "$root/qtest_ftrace.ko"
install -m 755 "$work/burner" "$root/burner"
install -m 755 "$work/pidprobe" "$root/pidprobe"
install -m 755 "$work/bpfload" "$root/bpfload"
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"
(cd "$root" && find . -print0 | cpio --null -o -H newc -R 0:0 --quiet) | gzip -1 >"$work/initrd.gz"
t_initrd=$(now_ms)
say "initramfs: $(du -h "$work/initrd.gz" | cut -f1) in $(elapsed "$t_module" "$t_initrd") s"

# --- Step 4: the boots ------------------------------------------------------
# boot NAME KERNEL-PARAM: boots once, console to $work/NAME.log, sets boot_secs.
boot() {
    local name=$1 param=$2 log=$work/$1.log t0 t1 rc=0
    say "boot '$name' (${param:-no extra parameter})..."
    t0=$(now_ms)
    timeout "$boot_timeout" qemu-system-x86_64 \
        -accel tcg -smp "$smp" -m 1024 \
        -nographic -nic none -no-reboot \
        -kernel "$kernel" -initrd "$work/initrd.gz" \
        -append "console=ttyS0 panic=-1 qtest_pidmax=$pid_max $param" \
        </dev/null >"$log" 2>&1 &
    qemu_pid=$!
    wait "$qemu_pid" || rc=$?
    qemu_pid=
    t1=$(now_ms)
    boot_secs=$(elapsed "$t0" "$t1")
    if [ "$rc" -eq 124 ]; then
        say "boot '$name' TIMED OUT after ${boot_timeout} s"
    elif [ "$rc" -ne 0 ]; then
        say "boot '$name': qemu exited with $rc after $boot_secs s"
    else
        say "boot '$name' took $boot_secs s"
    fi
    if [ -n "${VM_KEEP_LOGS:-}" ]; then
        mkdir -p "$VM_KEEP_LOGS"
        cp "$log" "$VM_KEEP_LOGS/$name.log"
    fi
}

# --- Step 5: the assertions (tests/vm/check.py reads the console log) --------
passed=0
failed=0
declare -A boot_time
# run_case NAME KERNEL-PARAM EXPECTATION
run_case() {
    local name=$1 param=$2 expect=$3
    boot "$name" "$param"
    if python3 "$vm_dir/check.py" "$expect" "$work/$name.log"; then
        say "PASS $name ($boot_secs s)"
        passed=$((passed + 1))
    else
        say "FAIL $name ($boot_secs s)"
        failed=$((failed + 1))
    fi
    boot_time[$name]=$boot_secs
}

# VM_FIXTURES: raw kernel files instead of the test cases.
if [ -n "${VM_FIXTURES:-}" ]; then
    case "$VM_FIXTURES" in
        /*) fixtures=$VM_FIXTURES ;;
        *) fixtures=$orig_pwd/$VM_FIXTURES ;;
    esac
    for c in clean:"" ftrace1:"qtest=ftrace1" ftrace2:"qtest=ftrace2"; do
        name=${c%%:*}
        boot "dump-$name" "${c#*:} qtest_dump=1"
        if python3 "$vm_dir/check.py" --extract-files "$work/dump-$name.log" "$fixtures"; then
            passed=$((passed + 1))
        else
            tail -n 40 "$work/dump-$name.log"
            say "FAIL dump-$name: no complete file dump"
            failed=$((failed + 1))
        fi
    done
    echo "vm: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
fi

cases=${VM_CASES:-hidden ftrace1 ftrace2 bpf clean}
for c in $cases; do
    case "$c" in
        hidden) run_case hidden "qtest=load" hidden ;;
        ftrace1) run_case ftrace1 "qtest=ftrace1" ftrace1 ;;
        ftrace2) run_case ftrace2 "qtest=ftrace2" ftrace2 ;;
        bpf) run_case bpf "qtest=bpf" bpf ;;
        clean) run_case clean "" clean ;;
        *) die "unknown case '$c' in VM_CASES (hidden ftrace1 ftrace2 bpf clean)" ;;
    esac
done

t_end=$(now_ms)
boots=
for c in $cases; do boots="$boots, boot $c ${boot_time[$c]} s"; done
say "times: packages $(elapsed "$t_start" "$t_packages") s, build $(elapsed "$t_packages" "$t_module") s," \
    "initramfs $(elapsed "$t_module" "$t_initrd") s$boots, total $(elapsed "$t_start" "$t_end") s"
echo "vm: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
