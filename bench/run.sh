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
#
# Output: a markdown table on stdout, also written to bench/last-run.md; each tool's
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
BENCH_DIR=$REPO/bench
LOGDIR=$BENCH_DIR/logs
OUT=$BENCH_DIR/last-run.md
mkdir -p "$LOGDIR"
WORK=$(mktemp -d)

log() { printf '[bench] %s\n' "$*" >&2; }

# ---------------------------------------------------------------- cleanup
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
    cleanup_spawn
    rm -rf "$WORK"
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
walls=() cpus=() kbs=() works=() rcs=()
for ((i = 1; i <= RUNS; i++)); do
    measure quarry0 "$QUARRY" scan --interval 0 --format json
    walls+=("$M_WALL") cpus+=("$M_CPU") kbs+=("$M_KB") rcs+=("$M_RC")
    read -r w _ < <(quarry_timing "$LOGDIR/quarry0.out")
    works+=("$w")
done
Q0_WALL=$(median "${walls[@]}")
Q0_WORK=$(median "${works[@]}")
Q0_RCS=$(printf '%s\n' "${rcs[@]}" | sort -un | paste -sd, -)
read -r Q0_PCPU _ < <(precise_cpu "$RUNS" "$QUARRY" scan --interval 0 --format json)
add_row "quarry scan --interval 0 (median of $RUNS)" "$(fmt3 "$Q0_WALL")" \
    "$(fmt3 "$Q0_PCPU")*" "$(median "${kbs[@]}")" "$Q0_RCS"

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
S_SPAWNED=0
quarry_median_runs() { # -> QM_WORK QM_WALL
    local ws=() ts=() i w
    for ((i = 1; i <= SCALE_RUNS; i++)); do
        measure quarry-scale "$QUARRY" scan --interval 0 --format json
        read -r w _ < <(quarry_timing "$LOGDIR/quarry-scale.out")
        ws+=("$w") ts+=("$M_WALL")
    done
    QM_WORK=$(median "${ws[@]}")
    QM_WALL=$(median "${ts[@]}")
}
if ((SPAWN > 0)); then
    S_BEFORE_N=$(count_procs)
    quarry_median_runs
    S_BEFORE_WORK=$QM_WORK S_BEFORE_WALL=$QM_WALL

    want=$((S_BEFORE_N + SPAWN + 1000))
    pid_max=$(cat /proc/sys/kernel/pid_max)
    if ((pid_max < want)); then
        log "raising kernel.pid_max $pid_max -> 32768"
        echo 32768 >/proc/sys/kernel/pid_max || log "could not raise pid_max"
    fi
    if [[ $(ulimit -u) != unlimited ]] && (($(ulimit -u) < want)); then
        ulimit -u "$want" 2>/dev/null || ulimit -u "$(ulimit -Hu)" || true
    fi

    log "spawning $SPAWN idle processes"
    ready=$WORK/spawn.ready
    python3 "$BENCH_DIR/spawn_idle.py" "$SPAWN" "$ready" 600 </dev/null >/dev/null 2>"$LOGDIR/spawn.err" &
    SPAWNER_PID=$!
    for ((i = 0; i < 1200; i++)); do
        [[ -e $ready ]] && break
        kill -0 "$SPAWNER_PID" 2>/dev/null || break
        sleep 0.1
    done
    S_SPAWNED=$(cat "$ready" 2>/dev/null || echo 0)
    ((S_SPAWNED == SPAWN)) || log "only $S_SPAWNED of $SPAWN processes started (see $LOGDIR/spawn.err)"
    S_AFTER_N=$(count_procs)
    quarry_median_runs
    S_AFTER_WORK=$QM_WORK S_AFTER_WALL=$QM_WALL
    cleanup_spawn
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
        echo "| | processes | work ms | wall s |"
        echo "|---|---:|---:|---:|"
        echo "| before | $S_BEFORE_N | $(ms "$S_BEFORE_WORK") | $S_BEFORE_WALL |"
        echo "| after | $S_AFTER_N | $(ms "$S_AFTER_WORK") | $S_AFTER_WALL |"
        if [[ $S_BEFORE_WORK != n/a && $S_AFTER_WORK != n/a && $S_AFTER_N != n/a ]] && ((S_AFTER_N > S_BEFORE_N)); then
            echo
            awk -v a="$S_BEFORE_WORK" -v b="$S_AFTER_WORK" -v n="$((S_AFTER_N - S_BEFORE_N))" \
                'BEGIN { printf "Marginal cost: %.1f us of Quarry work per extra process (%.1fx the work).\n", (b - a) / n, b / a }'
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

report >"$WORK/report.md"
cp "$WORK/report.md" "$OUT"
cat "$OUT"
log "written to ${OUT#"$REPO"/}"
