#!/usr/bin/env bash
# Benchmark Quarry against peer tools (chkrootkit, rkhunter, unhide) on this machine.
#
# Usage: bench/run.sh            (run as root; callable from any directory)
#
# Environment:
#   QUARRY=path          Quarry binary (default target/x86_64-unknown-linux-gnu/release/quarry,
#                        relative to the repo root; built with `cargo build --release` if missing)
#   BENCH_SKIP_SLOW=1    skip rkhunter (~1.5-2 min here) and chkrootkit (~10 s here)
#   BENCH_RUNS=20        number of `quarry scan --interval 0` runs for the median
#   BENCH_SPAWN=5000     extra idle processes for the scale test (0 skips the scale test)
#   BENCH_SCALE_RUNS=5   quarry runs before/after spawning, for the median
#   BENCH_TIMEOUT=600    per-tool timeout in seconds
#   BENCH_TRIAGE_PROCS=200  process count for the `--only cpu,miner` target (idle processes are
#                        added to reach it; 0 skips that step)
#   BENCH_PROBE_RUNS=5   `quarry scan --only hidden` runs per pid_max for the PID-space probe test
#   BENCH_PID_MAX_HIGH=4194304  pid_max for the probe test's second point (0 skips it); the
#                        original kernel.pid_max is always restored (trap on exit/interrupt)
#   BENCH_HIDDEN=1       hidden-process scenarios (clean / bind mount over /proc/PID /
#                        ld.so.preload readdir hider) for quarry and unhide quick/sys/brute (0 skips)
#   BENCH_HIDE_TIMEOUT=120  per-tool timeout in the hidden-process scenarios
#
# The hidden-process scenarios temporarily cover /proc/PID with a bind mount and add a test
# library to /etc/ld.so.preload; the EXIT/INT/TERM/HUP trap restores /etc/ld.so.preload (or its
# absence) before deleting the library, unmounts, kills the test processes and restores pid_max.
# Only a SIGKILL of this script can skip that; then see "Manual clean-up" in BENCHMARKS.md.
#
# Output: markdown on stdout, also written to bench/last-run.md; each tool's
# stdout/stderr goes to bench/logs/ (and rkhunter's own log is copied there too).
# Wall time is measured with a nanosecond clock around the run (GNU time's %e has only
# 10 ms resolution); CPU is GNU time's %U+%S; peak RSS is GNU time's %M, which is the
# peak of the single largest process in the tree (getrusage semantics), not a sum.
set -euo pipefail

ORIG_PWD=$PWD
cd "$(dirname "$0")/.."
REPO=$PWD
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

QUARRY=${QUARRY:-target/x86_64-unknown-linux-gnu/release/quarry}
if [[ $QUARRY != /* && ! -e $QUARRY && -e $ORIG_PWD/$QUARRY ]]; then
    QUARRY=$ORIG_PWD/$QUARRY
fi
SKIP_SLOW=${BENCH_SKIP_SLOW:-0}
RUNS=${BENCH_RUNS:-20}
SPAWN=${BENCH_SPAWN:-5000}
SCALE_RUNS=${BENCH_SCALE_RUNS:-5}
TIMEOUT=${BENCH_TIMEOUT:-600}
TRIAGE_PROCS=${BENCH_TRIAGE_PROCS:-200}
PROBE_RUNS=${BENCH_PROBE_RUNS:-5}
PID_MAX_HIGH=${BENCH_PID_MAX_HIGH:-4194304}
HIDDEN=${BENCH_HIDDEN:-1}
HIDE_TIMEOUT=${BENCH_HIDE_TIMEOUT:-120}
BENCH_DIR=$REPO/bench
LOGDIR=$BENCH_DIR/logs
OUT=$BENCH_DIR/last-run.md
mkdir -p "$LOGDIR"
WORK=$(mktemp -d)
PID_MAX_FILE=/proc/sys/kernel/pid_max
ORIG_PID_MAX=$(cat "$PID_MAX_FILE")
PRELOAD=/etc/ld.so.preload

log() { printf '[bench] %s\n' "$*" >&2; }

# One run at a time: runs share kernel.pid_max, /etc/ld.so.preload and the logs.
exec 9>"${TMPDIR:-/tmp}/quarry-bench.lock"
if ! flock -n 9; then
    log "another bench/run.sh is running (lock ${TMPDIR:-/tmp}/quarry-bench.lock)"
    rmdir "$WORK" 2>/dev/null || true
    exit 2
fi
if grep -qs 'libqbench\.so' "$PRELOAD"; then
    log "ERROR: $PRELOAD names a libqbench.so left by an earlier run that was killed:"
    cat "$PRELOAD" >&2
    log "remove that line (or the file, if the line is all it holds) and run again"
    rmdir "$WORK" 2>/dev/null || true
    exit 2
fi

# ---------------------------------------------------------------- cleanup
# Restores kernel.pid_max to its value at start (the scale and probe tests change it).
restore_pid_max() {
    local cur
    cur=$(cat "$PID_MAX_FILE" 2>/dev/null) || return 0
    [[ $cur == "$ORIG_PID_MAX" ]] && return 0
    if echo "$ORIG_PID_MAX" >"$PID_MAX_FILE"; then
        log "restored kernel.pid_max $cur -> $ORIG_PID_MAX"
    else
        log "ERROR: could not restore kernel.pid_max to $ORIG_PID_MAX (now $cur)"
        return 1
    fi
}

# /etc/ld.so.preload: PRELOAD_SAVED is "" (untouched), "absent" (there was none) or the
# path of a copy of the original. Restored before the test library is deleted.
PRELOAD_SAVED=""
save_preload() {
    if [[ -e $PRELOAD || -L $PRELOAD ]]; then
        cp -a "$PRELOAD" "$WORK/ld.so.preload.orig"
        PRELOAD_SAVED=$WORK/ld.so.preload.orig
    else
        PRELOAD_SAVED=absent
    fi
}
restore_preload() {
    [[ -n $PRELOAD_SAVED ]] || return 0
    if [[ $PRELOAD_SAVED == absent ]]; then
        rm -f "$PRELOAD" || { log "ERROR: could not remove $PRELOAD"; return 1; }
    else
        cp -a "$PRELOAD_SAVED" "$PRELOAD.qbench-tmp" && mv -f "$PRELOAD.qbench-tmp" "$PRELOAD" ||
            { log "ERROR: could not restore $PRELOAD from $PRELOAD_SAVED"; return 1; }
    fi
    PRELOAD_SAVED=""
    log "restored $PRELOAD"
}

# Test processes (CPU burners) and bind mounts over /proc/PID made by the hidden scenarios.
BURNERS=()
MOUNTS=()
cleanup_hidden() {
    local m p
    for m in ${MOUNTS[@]+"${MOUNTS[@]}"}; do
        if mountpoint -q "$m" 2>/dev/null; then
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "ERROR: could not unmount $m"
        fi
    done
    MOUNTS=()
    for p in ${BURNERS[@]+"${BURNERS[@]}"}; do
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    BURNERS=()
}

SPAWNER_PID=""
cleanup_spawn() {
    [[ -n $SPAWNER_PID ]] || return 0
    local pid=$SPAWNER_PID
    SPAWNER_PID=""
    if kill -0 "$pid" 2>/dev/null; then
        log "stopping idle processes (spawner pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        local i
        for ((i = 0; i < 300; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "spawner did not stop in 30 s; killing its process group $pid"
            kill -KILL -- "-$pid" 2>/dev/null || true
        fi
    fi
    # the group may still hold children if the spawner died early
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    trap '' INT TERM HUP   # finish the clean-up even if interrupted again
    local preload_ok=1
    restore_preload || preload_ok=0
    cleanup_hidden
    cleanup_spawn
    restore_pid_max || true
    if ((preload_ok)); then
        rm -rf "$WORK"
    else
        log "ERROR: $PRELOAD still names a library in $WORK; keeping $WORK. Fix $PRELOAD by hand."
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# ---------------------------------------------------------------- install
need=()
command -v unhide >/dev/null 2>&1 || need+=(unhide)
command -v chkrootkit >/dev/null 2>&1 || need+=(chkrootkit)
command -v rkhunter >/dev/null 2>&1 || need+=(rkhunter)
[[ -x /usr/bin/time ]] || need+=(time)
if [[ $HIDDEN == 1 ]] && ! command -v cc >/dev/null 2>&1; then need+=(gcc libc6-dev); fi
if ((${#need[@]})); then
    [[ $EUID -eq 0 ]] || { log "need root to install: ${need[*]}"; exit 2; }
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
[[ $EUID -eq 0 ]] || log "warning: not root; unhide/rkhunter/chkrootkit and Quarry will see less"

# ---------------------------------------------------------------- quarry binary
if [[ ! -x $QUARRY ]]; then
    log "$QUARRY missing; running cargo build --release"
    cargo build --release >&2
fi
[[ -x $QUARRY ]] || { log "Quarry binary not found at $QUARRY"; exit 2; }

# ---------------------------------------------------------------- helpers
# median of the numeric arguments ("n/a" if none)
median() {
    python3 - "$@" <<'EOF'
import statistics, sys
v = [float(x) for x in sys.argv[1:] if x not in ("", "n/a")]
if not v:
    print("n/a")
else:
    m = statistics.median(v)
    print(int(m) if m == int(m) else round(m, 6))
EOF
}

# "work_us interval_us" from a Quarry JSON report, or "n/a n/a"
quarry_timing() {
    python3 - "$1" <<'EOF' 2>/dev/null || echo "n/a n/a"
import json, sys
t = json.load(open(sys.argv[1]))["timing"]
print(t["work_us"], t["interval_us"])
EOF
}

# "work_us census_us module_walk_us probe_ms census_ms pid_max hidden" from a Quarry JSON
# report ("n/a" for what is missing, e.g. the census fields when --only leaves out hidden)
quarry_fields() {
    python3 - "$1" <<'EOF' 2>/dev/null || echo "n/a n/a n/a n/a n/a n/a n/a"
import json, sys
r = json.load(open(sys.argv[1]))
t, c = r["timing"], r.get("census") or {}
def g(d, k):
    v = d.get(k)
    return "n/a" if v is None else (round(v, 3) if isinstance(v, float) else v)
print(*(g(t, k) for k in ("work_us", "census_us", "module_walk_us")),
      *(g(c, k) for k in ("probe_ms", "census_ms", "pid_max", "hidden")))
EOF
}

# quarry_pid FILE PID -> "found pid_rules hidden_pids rules": found is yes/no (any finding
# whose subject.pid is PID; "n/a" without PID), pid_rules the rules of those findings,
# hidden_pids the subject PIDs of hidden.process findings, rules all distinct rules
# (comma-separated, "-" when empty)
quarry_pid() {
    python3 - "$1" "${2:-}" <<'EOF' 2>/dev/null || echo "n/a - - unreadable-report"
import json, sys
r = json.load(open(sys.argv[1]))
pid = int(sys.argv[2]) if sys.argv[2] else None
fs = r.get("findings", [])
def uniq(xs):
    out = []
    for x in xs:
        if x not in out:
            out.append(x)
    return ",".join(out) or "-"
mine = [f["rule"] for f in fs if pid is not None and f.get("subject", {}).get("pid") == pid]
hidden = [str(f["subject"]["pid"]) for f in fs
          if f["rule"] == "hidden.process" and f.get("subject", {}).get("pid") is not None]
found = "n/a" if pid is None else ("yes" if mine else "no")
print(found, uniq(mine), uniq(hidden), uniq(f["rule"] for f in fs))
EOF
}

# unhide_pids FILE... -> distinct PIDs that unhide reported as hidden, comma-separated ("-")
unhide_pids() {
    { cat "$@" 2>/dev/null | grep -oiE '(hidden|fake) pid: *[0-9]+' | grep -oE '[0-9]+$' || true; } |
        sort -un | paste -sd, - | sed 's/^$/-/'
}

count_procs() {
    local p
    shopt -s nullglob
    p=(/proc/[0-9]*)
    shopt -u nullglob
    echo "${#p[@]}"
}

# measure NAME CMD...  -> M_WALL (s) M_CPU (s) M_KB M_RC; stdout/stderr to $LOGDIR/NAME.{out,err}
measure() {
    local name=$1
    shift
    local tf=$WORK/$name.time t0 t1 e u s m
    M_RC=0
    t0=$(date +%s%N)
    /usr/bin/time -f '%e %U %S %M' -o "$tf" timeout "$TIMEOUT" "$@" \
        <"/dev/null" >"$LOGDIR/$name.out" 2>"$LOGDIR/$name.err" || M_RC=$?
    t1=$(date +%s%N)
    M_WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
    if read -r e u s m < <(tail -n1 "$tf" 2>/dev/null) && [[ $m =~ ^[0-9]+$ ]]; then
        M_CPU=$(awk -v u="$u" -v s="$s" 'BEGIN { printf "%.2f", u + s }')
        M_KB=$m
    else
        M_CPU=n/a
        M_KB=n/a
    fi
    if ((M_RC == 124)); then log "$name: timed out after ${TIMEOUT}s"; fi
}

mib() { [[ $1 == n/a ]] && echo n/a || awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
ratio() { # ratio A B -> "A/B x"
    [[ $1 == n/a || $2 == n/a ]] && { echo n/a; return; }
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (b <= 0) { print "n/a"; exit }
        r = a / b
        if (r < 1) printf "%.3fx", r; else if (r < 100) printf "%.1fx", r; else printf "%.0fx", r
    }'
}
fmt2() { [[ $1 == n/a ]] && echo n/a || awk -v x="$1" 'BEGIN { printf "%.2f", x }'; }
fmt3() { [[ $1 == n/a ]] && echo n/a || awk -v x="$1" 'BEGIN { printf "%.3f", x }'; }
ms() { [[ $1 == n/a ]] && echo n/a || awk -v u="$1" 'BEGIN { printf "%.1f", u / 1000 }'; }

# precise_cpu N CMD... -> "median_cpu_s max_rss_kb" over N runs, from wait4() rusage
# (microsecond precision; GNU time's %U/%S round to 10 ms, which is most of a Quarry scan)
precise_cpu() {
    python3 - "$@" <<'EOF' 2>/dev/null || echo "n/a n/a"
import os, statistics, sys
n, cmd = int(sys.argv[1]), sys.argv[2:]
null = [(os.POSIX_SPAWN_OPEN, fd, "/dev/null", os.O_RDONLY if fd == 0 else os.O_WRONLY, 0) for fd in (0, 1, 2)]
cpu, rss = [], 0
for _ in range(n):
    pid = os.posix_spawn(cmd[0], cmd, os.environ, file_actions=null)
    _, _, ru = os.wait4(pid, 0)
    cpu.append(ru.ru_utime + ru.ru_stime)
    rss = max(rss, ru.ru_maxrss)
print(f"{statistics.median(cpu):.4f} {rss}")
EOF
}

START_UTC=$(date -u +%Y-%m-%dT%H:%M:%SZ)
START_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
START_PROCS=$(count_procs)

ROWS=()   # "tool|wall|cpu|kb|rc"
add_row() { ROWS+=("$1|$2|$3|$4|$5"); }

# ---------------------------------------------------------------- quarry
log "quarry: $QUARRY"
"$QUARRY" scan --interval 0 --format json >/dev/null 2>&1 </dev/null || true   # warm the page cache

log "quarry scan --interval 1 --format json"
measure quarry "$QUARRY" scan --interval 1 --format json
Q_WALL=$M_WALL
((M_RC <= 1)) || log "quarry exited $M_RC (expected 0 or 1); see $LOGDIR/quarry.err"
read -r Q_WORK Q_INTERVAL < <(quarry_timing "$LOGDIR/quarry.out")
read -r Q_PCPU _ < <(precise_cpu 1 "$QUARRY" scan --interval 1 --format json)
add_row "quarry scan --interval 1" "$M_WALL" "$(fmt3 "$Q_PCPU")*" "$M_KB" "$M_RC"

log "quarry scan --interval 0 x$RUNS"
Q0_PROCS=$(count_procs)
walls=() cpus=() kbs=() works=() rcs=() q0walks=() q0cens=() q0probes=()
for ((i = 1; i <= RUNS; i++)); do
    measure quarry0 "$QUARRY" scan --interval 0 --format json
    walls+=("$M_WALL") cpus+=("$M_CPU") kbs+=("$M_KB") rcs+=("$M_RC")
    read -r w _ wk p cm _ < <(quarry_fields "$LOGDIR/quarry0.out")
    works+=("$w") q0walks+=("$wk") q0probes+=("$p") q0cens+=("$cm")
done
Q0_WALL=$(median "${walls[@]}")
Q0_WORK=$(median "${works[@]}")
Q0_RCS=$(printf '%s\n' "${rcs[@]}" | sort -un | paste -sd, -)
read -r Q0_PCPU _ < <(precise_cpu "$RUNS" "$QUARRY" scan --interval 0 --format json)
add_row "quarry scan --interval 0 (median of $RUNS)" "$(fmt3 "$Q0_WALL")" \
    "$(fmt3 "$Q0_PCPU")*" "$(median "${kbs[@]}")" "$Q0_RCS"
OWN_ROWS=()   # "checks|processes|wall s|work_us|census_ms|probe_ms|walk_us|target_ms|exit codes"
OWN_ROWS+=("full scan (all checks)|$Q0_PROCS|$(fmt3 "$Q0_WALL")|$Q0_WORK|$(median "${q0cens[@]}")|$(median "${q0probes[@]}")|$(median "${q0walks[@]}")||$Q0_RCS")

# quarry_own NAME N ARGS... : N runs of `quarry scan ARGS --interval 0 --format json`; sets
# the medians OW_WALL OW_WORK (us) OW_CENSUS OW_PROBE (ms) OW_WALK (us), OW_HIDDEN (largest
# .census.hidden seen), OW_RCS (distinct exit codes) and OW_PROCS (processes before the runs)
quarry_own() {
    local name=$1 n=$2
    shift 2
    local walls=() works=() cens=() probes=() walks=() hs=() rcs=() i w wk p cm h
    OW_PROCS=$(count_procs)
    for ((i = 1; i <= n; i++)); do
        measure "$name" "$QUARRY" scan "$@" --interval 0 --format json
        ((M_RC <= 1)) || log "quarry $* exited $M_RC; see $LOGDIR/$name.err"
        read -r w _ wk p cm _ h < <(quarry_fields "$LOGDIR/$name.out")
        walls+=("$M_WALL") works+=("$w") walks+=("$wk") probes+=("$p") cens+=("$cm") hs+=("$h") rcs+=("$M_RC")
    done
    OW_WALL=$(fmt3 "$(median "${walls[@]}")")
    OW_WORK=$(median "${works[@]}")
    OW_CENSUS=$(median "${cens[@]}")
    OW_PROBE=$(median "${probes[@]}")
    OW_WALK=$(median "${walks[@]}")
    OW_HIDDEN=$(printf '%s\n' "${hs[@]}" | grep -E '^[0-9]+$' | sort -n | tail -n1 || true)
    OW_HIDDEN=${OW_HIDDEN:-n/a}
    OW_RCS=$(printf '%s\n' "${rcs[@]}" | sort -un | paste -sd, -)
}
own_row() { # LABEL TARGET_MS
    OWN_ROWS+=("$1|$OW_PROCS|$OW_WALL|$OW_WORK|$OW_CENSUS|$OW_PROBE|$OW_WALK|$2|$OW_RCS")
}

# spawn_idle COUNT : starts COUNT idle `sleep` processes (bench/spawn_idle.py) held until
# cleanup_spawn; sets S_SPAWNED to the number started
spawn_idle() {
    local count=$1 ready=$WORK/spawn.ready i
    rm -f "$ready"
    log "spawning $count idle processes"
    python3 "$BENCH_DIR/spawn_idle.py" "$count" "$ready" 600 </dev/null >/dev/null 2>>"$LOGDIR/spawn.err" &
    SPAWNER_PID=$!
    for ((i = 0; i < 1200; i++)); do
        [[ -e $ready ]] && break
        kill -0 "$SPAWNER_PID" 2>/dev/null || break
        sleep 0.1
    done
    S_SPAWNED=$(cat "$ready" 2>/dev/null || echo 0)
    ((S_SPAWNED == count)) || log "only $S_SPAWNED of $count processes started (see $LOGDIR/spawn.err)"
}
: >"$LOGDIR/spawn.err"

log "quarry scan --only cpu,miner --interval 0 x$RUNS"
quarry_own quarry-cpu-miner "$RUNS" --only cpu,miner
own_row "--only cpu,miner" 50
if ((TRIAGE_PROCS > 0)) && (($(count_procs) < TRIAGE_PROCS)); then
    spawn_idle $((TRIAGE_PROCS - $(count_procs)))
    log "quarry scan --only cpu,miner --interval 0 x$RUNS at $(count_procs) processes"
    quarry_own quarry-cpu-miner-200 "$RUNS" --only cpu,miner
    own_row "--only cpu,miner (+$S_SPAWNED idle processes)" 50
    cleanup_spawn
fi

log "quarry scan --only hidden --interval 0 x$RUNS"
quarry_own quarry-hidden "$RUNS" --only hidden
own_row "--only hidden" 100

# The module-file walk (its own thread) dominates a full scan: time it alone, and without
# /root (on a development machine /root holds toolchains with hundreds of thousands of files).
log "quarry scan --only modules --interval 0 x$RUNS"
quarry_own quarry-modules "$RUNS" --only modules
own_row "--only modules" ""
MOD_ROOTS=$(python3 -c 'import json,sys; w=json.load(open(sys.argv[1]))["modules"]["walk"]; print(" ".join(w["roots"])); print(w["dirs"], w["files"], w["sniffed"])' \
    "$LOGDIR/quarry-modules.out" 2>/dev/null || true)
MOD_COUNTS=$(sed -n 2p <<<"$MOD_ROOTS")
MOD_ROOTS=$(sed -n 1p <<<"$MOD_ROOTS")
if [[ " $MOD_ROOTS " == *" /root "* ]]; then
    mp=()
    for r in $MOD_ROOTS; do [[ $r == /root ]] || mp+=(--module-path "$r"); done
    log "quarry scan --only modules (default roots without /root) --interval 0 x$RUNS"
    quarry_own quarry-modules-noroot "$RUNS" --only modules "${mp[@]}"
    own_row "--only modules, default roots without /root" ""
    MOD_COUNTS_NOROOT=$(python3 -c 'import json,sys; w=json.load(open(sys.argv[1]))["modules"]["walk"]; print(w["dirs"], w["files"], w["sniffed"])' \
        "$LOGDIR/quarry-modules-noroot.out" 2>/dev/null || true)
fi

# ---------------------------------------------------------------- peers
if [[ $SKIP_SLOW == 1 ]]; then
    add_row "chkrootkit -q" skipped n/a n/a n/a
    add_row "rkhunter --check --sk --nocolors" skipped n/a n/a n/a
else
    log "chkrootkit -q (about 10 s)"
    measure chkrootkit chkrootkit -q
    add_row "chkrootkit -q" "$M_WALL" "$M_CPU" "$M_KB" "$M_RC"

    log "rkhunter --check --sk --nocolors (about 2 minutes)"
    measure rkhunter rkhunter --check --sk --nocolors
    add_row "rkhunter --check --sk --nocolors" "$M_WALL" "$M_CPU" "$M_KB" "$M_RC"
    cp -f /var/log/rkhunter.log "$LOGDIR/rkhunter.log" 2>/dev/null || true
fi

log "unhide quick"
measure unhide unhide quick
add_row "unhide quick" "$M_WALL" "$M_CPU" "$M_KB" "$M_RC"

# ---------------------------------------------------------------- scale test
S_BEFORE_N=n/a S_AFTER_N=n/a S_BEFORE_WORK=n/a S_AFTER_WORK=n/a S_BEFORE_WALL=n/a S_AFTER_WALL=n/a
S_BEFORE_TRIAGE=n/a S_AFTER_TRIAGE=n/a S_BEFORE_HIDDEN=n/a S_AFTER_HIDDEN=n/a
S_SPAWNED=0
quarry_median_runs() { # -> QM_WORK QM_WALL (full scan), QM_TRIAGE (cpu,miner), QM_HIDDEN (hidden) work_us
    local ws=() ts=() i w
    for ((i = 1; i <= SCALE_RUNS; i++)); do
        measure quarry-scale "$QUARRY" scan --interval 0 --format json
        read -r w _ < <(quarry_timing "$LOGDIR/quarry-scale.out")
        ws+=("$w") ts+=("$M_WALL")
    done
    QM_WORK=$(median "${ws[@]}")
    QM_WALL=$(median "${ts[@]}")
    quarry_own quarry-scale-cpu-miner "$SCALE_RUNS" --only cpu,miner
    QM_TRIAGE=$OW_WORK
    quarry_own quarry-scale-hidden "$SCALE_RUNS" --only hidden
    QM_HIDDEN=$OW_WORK
}
if ((SPAWN > 0)); then
    S_BEFORE_N=$(count_procs)
    quarry_median_runs
    S_BEFORE_WORK=$QM_WORK S_BEFORE_WALL=$QM_WALL S_BEFORE_TRIAGE=$QM_TRIAGE S_BEFORE_HIDDEN=$QM_HIDDEN

    want=$((S_BEFORE_N + SPAWN + 1000))
    pid_max=$(cat "$PID_MAX_FILE")
    if ((pid_max < want)); then
        log "raising kernel.pid_max $pid_max -> 32768 (restored afterwards)"
        echo 32768 >"$PID_MAX_FILE" || log "could not raise pid_max"
    fi
    if [[ $(ulimit -u) != unlimited ]] && (($(ulimit -u) < want)); then
        ulimit -u "$want" 2>/dev/null || ulimit -u "$(ulimit -Hu)" || true
    fi

    spawn_idle "$SPAWN"
    S_AFTER_N=$(count_procs)
    quarry_median_runs
    S_AFTER_WORK=$QM_WORK S_AFTER_WALL=$QM_WALL S_AFTER_TRIAGE=$QM_TRIAGE S_AFTER_HIDDEN=$QM_HIDDEN
    cleanup_spawn
    restore_pid_max
fi

# ---------------------------------------------------------------- PID-space probes
# `quarry scan --only hidden` probes every PID up to pid_max with system calls; measure it at
# the machine's pid_max and at PID_MAX_HIGH (set temporarily; restore_pid_max runs on exit).
PROBE_ROWS=()   # "pid_max|probe_ms|census_ms|work_us|wall s|hidden (max)|target_ms|exit codes"
probe_point() { # TARGET_MS
    local pm
    pm=$(cat "$PID_MAX_FILE")
    log "quarry scan --only hidden --interval 0 x$PROBE_RUNS at pid_max $pm"
    quarry_own "quarry-probe-$pm" "$PROBE_RUNS" --only hidden
    PROBE_ROWS+=("$pm|$OW_PROBE|$OW_CENSUS|$OW_WORK|$OW_WALL|$OW_HIDDEN|$1|$OW_RCS")
}
if ((PROBE_RUNS > 0)); then
    probe_point 100
    if ((PID_MAX_HIGH > 0 && PID_MAX_HIGH != ORIG_PID_MAX)); then
        log "setting kernel.pid_max $ORIG_PID_MAX -> $PID_MAX_HIGH (restored afterwards, also on failure)"
        if echo "$PID_MAX_HIGH" >"$PID_MAX_FILE"; then
            probe_point 1000
        else
            log "could not set pid_max to $PID_MAX_HIGH; skipping that point"
        fi
        restore_pid_max
    fi
fi

# ---------------------------------------------------------------- hidden-process scenarios
# For each scenario, quarry (--only hidden,miner,preload, 1 s interval) and unhide quick, sys and
# brute, each under `timeout $HIDE_TIMEOUT`: wall time, and whether the hidden PID was reported.
HROWS=()          # "scenario|tool|wall s|exit|found|reported hidden PIDs|notes"
SCEN_DESC=()      # "scenario|description"
declare -A HQ_WALL=()
HIDDEN_SKIPPED=""

# start_burner BIN : starts BIN (tests/c/burner.c) in the background; B_PID is its PID
start_burner() {
    local bin=$1 out i pid
    out=$WORK/$(basename "$bin").out
    "$bin" </dev/null >"$out" 2>&1 &
    pid=$!
    BURNERS+=("$pid")
    for ((i = 0; i < 50; i++)); do
        grep -q '^ready' "$out" 2>/dev/null && break
        sleep 0.1
    done
    B_PID=$(awk '$1 == "ready" { print $2; exit }' "$out")
    if [[ $B_PID != "$pid" ]]; then
        log "burner $bin: started as $pid but says '$B_PID'"
        B_PID=$pid
    fi
}
ps_shows() { ps -e -o pid= | awk -v p="$1" '$1 == p { f = 1 } END { exit !f }'; }

unhide_note() { # LOGNAME -> crash/timeout note and the last phase reached
    local name=$1 note="" phase err sig
    phase=$({ grep -h '^\[\*\]' "$LOGDIR/$name.out" 2>/dev/null || true; } | tail -n1 | sed 's/^\[\*\] *//; s/  */ /g')
    err=$({ grep -hiE 'free\(\)|abort|fault|error|corrupt' "$LOGDIR/$name.err" "$LOGDIR/$name.out" 2>/dev/null || true; } | head -n1)
    if ((M_RC == 124)); then
        note="timed out after ${HIDE_TIMEOUT}s"
    elif ((M_RC > 128)); then
        sig=$((M_RC - 128))
        case $sig in 6) sig="$sig (SIGABRT)" ;; 11) sig="$sig (SIGSEGV)" ;; 9) sig="$sig (SIGKILL)" ;; esac
        note="crashed: exit $M_RC, killed by signal $sig"
        if [[ -n $err ]]; then note+=", \"$err\""; fi
    fi
    if [[ -n $note && -n $phase ]]; then
        note+="; last phase: $phase"
    fi
    echo "${note:--}"
}

run_hidden_tools() { # SCENARIO [PID]
    local scen=$1 pid=${2:-} name found pidrules hp rules note mode got
    name=hid-$scen-quarry
    log "[$scen] quarry scan --only hidden,miner,preload --interval 1"
    TIMEOUT=$HIDE_TIMEOUT measure "$name" "$QUARRY" scan --only hidden,miner,preload --interval 1 --format json
    read -r found pidrules hp rules < <(quarry_pid "$LOGDIR/$name.out" "$pid")
    HQ_WALL[$scen]=$M_WALL
    case $scen in
        bind) [[ ,$pidrules, == *,hidden.process,* ]] && found="yes ($pidrules)" || found="no${pidrules:+ ($pidrules)}" ;;
        preload)
            got=""
            [[ $pidrules != - ]] && got="$pidrules on the PID"
            [[ ,$rules, == *,rootkit.preload,* ]] && got+="${got:+; }rootkit.preload"
            found=$([[ -n $got ]] && echo "yes ($got)" || echo no) ;;
        *) found=n/a ;;
    esac
    note="rules: $rules"
    ((M_RC <= 1)) || note="exit $M_RC; $note"
    HROWS+=("$scen|quarry --only hidden,miner,preload --interval 1|$M_WALL|$M_RC|$found|$hp|$note")
    for mode in quick sys brute; do
        name=hid-$scen-unhide-$mode
        log "[$scen] unhide $mode"
        TIMEOUT=$HIDE_TIMEOUT measure "$name" unhide "$mode"
        hp=$(unhide_pids "$LOGDIR/$name.out" "$LOGDIR/$name.err")
        if [[ -z $pid ]]; then
            found=n/a
        elif [[ ,$hp, == *,$pid,* ]]; then
            found=yes
        else
            found=no
        fi
        HROWS+=("$scen|unhide $mode|$M_WALL|$M_RC|$found|$hp|$(unhide_note "$name")")
    done
}

if [[ $HIDDEN == 1 ]]; then
    if [[ $EUID -ne 0 ]]; then
        HIDDEN_SKIPPED="not root"
    elif ! cc -O1 -o "$WORK/qbench-burner" "$REPO/tests/c/burner.c" 2>"$LOGDIR/cc-burner.err"; then
        HIDDEN_SKIPPED="could not compile tests/c/burner.c (see bench/logs/cc-burner.err)"
    fi
fi
if [[ $HIDDEN == 1 && -z $HIDDEN_SKIPPED ]]; then
    # a) clean machine
    SCEN_DESC+=("clean|nothing hidden; any PID reported as hidden is a false positive")
    run_hidden_tools clean

    # b) a CPU burner whose /proc/PID is covered by an empty bind mount
    mkdir -p "$WORK/empty"
    start_burner "$WORK/qbench-burner"
    if mount --bind "$WORK/empty" "/proc/$B_PID"; then
        MOUNTS+=("/proc/$B_PID")
        ps_shows "$B_PID" && vis="still shows it" || vis="no longer shows it"
        SCEN_DESC+=("bind|CPU burner PID $B_PID (qbench-burner), \`mount --bind <empty dir> /proc/$B_PID\`; \`ps -e\` $vis")
        run_hidden_tools bind "$B_PID"
    else
        SCEN_DESC+=("bind|skipped: mount --bind over /proc/$B_PID failed")
    fi
    cleanup_hidden

    # c) a burner named minerd hidden by a readdir() hider in /etc/ld.so.preload
    hide=$WORK/hide
    mkdir -p "$hide"
    chmod 755 "$WORK" "$hide"   # every program loads the library while it is listed
    cp "$WORK/qbench-burner" "$hide/minerd"
    if cc -shared -fPIC -O1 -DHIDE='"minerd"' -o "$hide/libqbench.so" "$REPO/tests/c/hider.c" -ldl \
        2>"$LOGDIR/cc-hider.err"; then
        start_burner "$hide/minerd"
        comm=$(cat "/proc/$B_PID/comm" 2>/dev/null || echo '?')
        save_preload
        {
            [[ $PRELOAD_SAVED != absent ]] && cat "$PRELOAD_SAVED"
            printf '\n%s\n' "$hide/libqbench.so"
        } >"$PRELOAD.qbench-tmp"
        mv -f "$PRELOAD.qbench-tmp" "$PRELOAD"
        ps_shows "$B_PID" && vis="still shows it" || vis="no longer shows it"
        SCEN_DESC+=("preload|CPU burner PID $B_PID named \`$comm\` (a copy of the burner at $hide/minerd), hidden by tests/c/hider.c (readdir/readdir64 hook, -DHIDE='\"minerd\"') listed in $PRELOAD; \`ps -e\` $vis")
        run_hidden_tools preload "$B_PID"
        restore_preload
    else
        SCEN_DESC+=("preload|skipped: could not compile tests/c/hider.c (see bench/logs/cc-hider.err)")
    fi
    cleanup_hidden
fi

# ---------------------------------------------------------------- report
report() {
    local q_ver kernel
    q_ver=$("$QUARRY" --version 2>/dev/null || echo quarry)
    kernel=$(uname -r)
    echo "# Quarry benchmark, $START_UTC"
    echo
    echo "Host: $(hostname), kernel $kernel, $(nproc) CPUs; at start: $START_PROCS processes, loadavg $START_LOAD."
    echo "Versions: $q_ver ($QUARRY); $(dpkg-query -W -f='${Package} ${Version}; ' chkrootkit rkhunter unhide 2>/dev/null)"
    echo "Quarry binary: sha256 $(sha256sum "$QUARRY" 2>/dev/null | cut -c1-16)…, modified $(date -u -r "$QUARRY" +%Y-%m-%dT%H:%M:%SZ 2>/dev/null); source tree: $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown)."
    if [[ $QUARRY == */debug/* ]] || ! grep -q 'release' <<<"$QUARRY"; then
        echo
        echo "**Note:** \`$QUARRY\` may not be a release build; Quarry's figures from a debug build are several times slower."
    fi
    echo
    echo "| tool | wall s | cpu s | peak MiB | wall ratio to quarry | exit code |"
    echo "|---|---:|---:|---:|---:|---:|"
    local r tool wall cpu kb rc
    for r in "${ROWS[@]}"; do
        IFS='|' read -r tool wall cpu kb rc <<<"$r"
        if [[ $wall == skipped ]]; then
            echo "| $tool | skipped | | | | |"
            continue
        fi
        echo "| $tool | $wall | $cpu | $(mib "$kb") | $(ratio "$wall" "$Q_WALL") | $rc |"
    done
    echo
    echo "Wall ratio is against \`quarry scan --interval 1\` (which includes its 1 s CPU sample)."
    echo "Wall: nanosecond clock around each run. CPU: GNU time %U+%S; * = Quarry's CPU from wait4() rusage"
    echo "(separate runs, median), since GNU time rounds to 10 ms. Peak MiB: GNU time %M, the largest single"
    echo "process in the tool's tree (chkrootkit and rkhunter are shell scripts running many small programs)."
    echo
    echo "Quarry's own work (from \`.timing\` in its JSON):"
    echo
    echo "- \`--interval 1\`: work $(ms "$Q_WORK") ms (work_us $Q_WORK), sampling interval $(ms "$Q_INTERVAL") ms (interval_us $Q_INTERVAL), wall $Q_WALL s"
    echo "- \`--interval 0\`, median of $RUNS: wall $(fmt3 "$Q0_WALL") s, work $(ms "$Q0_WORK") ms (work_us $Q0_WORK), CPU $(ms "$(awk -v c="$Q0_PCPU" 'BEGIN { if (c == "n/a") print "n/a"; else print c * 1e6 }')") ms"
    for r in "${ROWS[@]}"; do
        IFS='|' read -r tool wall cpu kb rc <<<"$r"
        [[ $tool == quarry* || $wall == skipped ]] && continue
        echo "- $tool: $(ratio "$wall" "$Q0_WALL") the wall time of \`quarry --interval 0\`"
    done
    if ((SPAWN > 0)); then
        echo
        echo "Scale test (+$S_SPAWNED idle \`sleep\` processes; median of $SCALE_RUNS \`--interval 0\` runs each):"
        echo
        echo "| | processes | work ms | wall s | \`--only cpu,miner\` work ms | \`--only hidden\` work ms |"
        echo "|---|---:|---:|---:|---:|---:|"
        echo "| before | $S_BEFORE_N | $(ms "$S_BEFORE_WORK") | $S_BEFORE_WALL | $(ms "$S_BEFORE_TRIAGE") | $(ms "$S_BEFORE_HIDDEN") |"
        echo "| after | $S_AFTER_N | $(ms "$S_AFTER_WORK") | $S_AFTER_WALL | $(ms "$S_AFTER_TRIAGE") | $(ms "$S_AFTER_HIDDEN") |"
        if [[ $S_BEFORE_WORK != n/a && $S_AFTER_WORK != n/a && $S_AFTER_N != n/a ]] && ((S_AFTER_N > S_BEFORE_N)); then
            echo
            awk -v a="$S_BEFORE_WORK" -v b="$S_AFTER_WORK" -v n="$((S_AFTER_N - S_BEFORE_N))" \
                'BEGIN { printf "Marginal cost: %.1f us of Quarry work per extra process (%.1fx the work).\n", (b - a) / n, b / a }'
            local lbl a b
            for lbl in "--only cpu,miner|$S_BEFORE_TRIAGE|$S_AFTER_TRIAGE" "--only hidden|$S_BEFORE_HIDDEN|$S_AFTER_HIDDEN"; do
                IFS='|' read -r lbl a b <<<"$lbl"
                [[ $a == n/a || $b == n/a ]] && continue
                awk -v l="$lbl" -v a="$a" -v b="$b" -v n="$((S_AFTER_N - S_BEFORE_N))" \
                    'BEGIN { printf "`%s`: %.1f us per extra process (%.1fx the work).\n", l, (b - a) / n, b / a }'
            done
            echo
            echo "(The full scan's work includes waiting for the module-file walk thread, so it hides part"
            echo "of the per-process cost; the \`--only\` columns show it without the walk.)"
        fi
    fi
    echo
    echo "## What the peer tools reported"
    echo
    echo "Full output in bench/logs/. Lines flagged on this machine:"
    echo
    echo '```'
    if [[ $SKIP_SLOW != 1 ]]; then
        echo "== chkrootkit -q (in quiet mode every line it prints is a finding; long sections cut)"
        awk '/^WARNING/ { if (extra) printf "  ... (%d more lines)\n", extra; print; n = 0; extra = 0; next }
             /^[[:space:]]*$/ { next }
             { if (++n <= 8) print "  " $0; else extra++ }
             END { if (extra) printf "  ... (%d more lines)\n", extra }' "$LOGDIR/chkrootkit.out" 2>/dev/null || true
        sort "$LOGDIR/chkrootkit.err" 2>/dev/null | uniq -c | sed 's/^ */  stderr x/' | head -n 10 || true
        echo "== rkhunter (warnings from its log, then its summary)"
        awk '/ Warning: /{p=1; print; next} p && /^\[[0-9:]+\]         /{print; next} {p=0}' \
            "$LOGDIR/rkhunter.log" 2>/dev/null | sed 's/^\[[0-9:]*\] /  /' | head -n 60 || true
        grep -E 'Suspect files|Possible rootkits|took:' "$LOGDIR/rkhunter.out" 2>/dev/null | sed 's/^ */  /' || true
        grep -v '^[[:space:]]*$' "$LOGDIR/rkhunter.err" 2>/dev/null | sed 's/^/  stderr: /' | head -n 20 || true
    fi
    echo "== unhide quick"
    { cat "$LOGDIR/unhide.out" "$LOGDIR/unhide.err" 2>/dev/null | grep -v '^\[\*\]' |
        grep -iE -A3 'hidden|found|fake|suspicious' || echo "  (nothing reported)"; } | head -n 60
    echo '```'
}

# Quarry's own work per check set, the PID-space probes and the hidden-process scenarios
report_more() {
    local r label procs wall work cens probe walk target rcs met pm hid
    echo
    echo "## Quarry's own work per check set"
    echo
    echo "Median of $RUNS runs of \`quarry scan [--only ...] --interval 0 --format json\`. Work is"
    echo "\`.timing.work_us\` (Quarry's own work; with \`--interval 0\` there is no sampling sleep, and the"
    echo "hidden-CPU accounting is skipped below 0.2 s); census and probe are \`.census.census_ms\` /"
    echo "\`.census.probe_ms\`; module walk is \`.timing.module_walk_us\` (a separate thread; the full"
    echo "scan's work includes waiting for it)."
    echo
    echo "| checks | processes | wall s | work ms | census ms | probe ms | module walk ms | target | met | exit codes |"
    echo "|---|---:|---:|---:|---:|---:|---:|---|---|---|"
    for r in "${OWN_ROWS[@]}"; do
        IFS='|' read -r label procs wall work cens probe walk target rcs <<<"$r"
        met=""
        if [[ -n $target && $work != n/a ]]; then
            met=$(awk -v w="$work" -v t="$target" 'BEGIN { print (w / 1000 < t) ? "yes" : "**no**" }')
        fi
        echo "| \`$label\` | $procs | $wall | $(ms "$work") | $(fmt2 "$cens") | $(fmt2 "$probe") | $(ms "$walk") | ${target:+< $target ms} | $met | $rcs |"
    done
    echo
    echo "Target for \`--only cpu,miner\`: < 50 ms with ~200 processes (BENCH_TRIAGE_PROCS=$TRIAGE_PROCS: idle"
    echo "\`sleep\` processes are added up to that count); for \`--only hidden\`: < 100 ms at pid_max 32768."
    if [[ -n ${MOD_ROOTS:-} ]]; then
        echo
        echo "Module-file walk roots (default): \`$MOD_ROOTS\`; it visited $(awk '{ printf "%d directories and %d files, and read the start of %d", $1, $2, $3 }' <<<"$MOD_COUNTS") files."
        if [[ -n ${MOD_COUNTS_NOROOT:-} ]]; then
            echo "Without /root: $(awk '{ printf "%d directories and %d files, %d read", $1, $2, $3 }' <<<"$MOD_COUNTS_NOROOT")."
        fi
    fi

    if ((${#PROBE_ROWS[@]})); then
        echo
        echo "## PID-space probes (\`quarry scan --only hidden --interval 0\`, median of $PROBE_RUNS)"
        echo
        echo "| pid_max | probe ms | ns per PID | census ms | whole hidden check (work) ms | wall s | hidden reported | target | met |"
        echo "|---:|---:|---:|---:|---:|---:|---:|---|---|"
        for r in "${PROBE_ROWS[@]}"; do
            IFS='|' read -r pm probe cens work wall hid target rcs <<<"$r"
            met=$(awk -v w="$work" -v t="$target" 'BEGIN { if (w == "n/a") print "n/a"; else print (w / 1000 < t) ? "yes" : "**no**" }')
            echo "| $pm | $(fmt2 "$probe") | $(awk -v p="$probe" -v m="$pm" 'BEGIN { if (p == "n/a") print "n/a"; else printf "%.0f", p * 1e6 / m }') | $(fmt2 "$cens") | $(ms "$work") | $wall | $hid | < $target ms | $met |"
        done
        echo
        echo "kernel.pid_max was $ORIG_PID_MAX at start and is restored by the script (also on failure)."
    fi

    echo
    echo "## Hidden-process scenarios"
    echo
    if [[ $HIDDEN != 1 ]]; then
        echo "Skipped (BENCH_HIDDEN=$HIDDEN)."
        return
    elif [[ -n $HIDDEN_SKIPPED ]]; then
        echo "Skipped: $HIDDEN_SKIPPED."
        return
    fi
    echo "Each tool under \`timeout $HIDE_TIMEOUT\`; quarry runs \`scan --only hidden,miner,preload --interval 1 --format json\`."
    echo "\"Found\" for quarry: (bind) a \`hidden.process\` finding with subject.pid = PID; (preload) any"
    echo "finding naming the PID or a \`rootkit.preload\` finding. For unhide: a \"Found HIDDEN PID: PID\" line."
    echo "\"PIDs reported hidden\" lists every PID reported as hidden (quarry: \`hidden.process\` findings)."
    echo
    local d scen desc
    for d in "${SCEN_DESC[@]}"; do
        IFS='|' read -r scen desc <<<"$d"
        echo "- **$scen**: $desc"
    done
    echo
    echo "| scenario | tool | wall s | wall ratio to quarry | exit | found the hidden PID | PIDs reported hidden | notes |"
    echo "|---|---|---:|---:|---:|---|---|---|"
    local tool rc found hp note
    for r in "${HROWS[@]}"; do
        IFS='|' read -r scen tool wall rc found hp note <<<"$r"
        echo "| $scen | \`$tool\` | $wall | $(ratio "$wall" "${HQ_WALL[$scen]:-n/a}") | $rc | $found | $hp | $note |"
    done
    echo
    echo "Wall ratio: tool wall time / quarry's wall time in the same scenario. The burner keeps one of"
    echo "the CPUs busy in the bind and preload scenarios. Logs: bench/logs/hid-SCENARIO-TOOL.{out,err}."
}

{
    report
    report_more
} >"$WORK/report.md"
cp "$WORK/report.md" "$OUT"
cat "$OUT"
log "written to ${OUT#"$REPO"/}"
