#!/usr/bin/env bash
# Issue 10: what the kernel-rootkit views cost.
#
#   sudo bash bench/rootkit.sh [QUARRY]        (default: the release build)
#   BENCH_PID_MAX=1 sudo bash bench/rootkit.sh  also at pid_max 4,194,304
#
# 1. Every scan's added work on this (clean) machine: tracefs hooks, kprobes,
#    BPF programs and the inet_diag comparison (timing.rootkit_views_us), over
#    20 `scan --only hidden --interval 0` runs: median and maximum.
# 2. The PID-allocator probe over the whole PID range (`--deep`), at the
#    machine's pid_max; with BENCH_PID_MAX=1 also at 4,194,304 (pid_max is
#    raised for the run and put back on exit, whatever happens).
# 3. The peer that asks the allocator too: `unhide brute` (it forks and
#    creates threads through the PID space), same machine, same run.
# Prints markdown rows for BENCHMARKS.md §9.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
Q=$(realpath "${1:-$HERE/target/x86_64-unknown-linux-gnu/release/quarry}")
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }

json() { "$Q" scan --only hidden --interval 0 --format json "$@" 2>/dev/null || true; }
field() { python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"; }

echo "### Rootkit views on every scan (20 runs, --only hidden --interval 0)"
vals=()
for _ in $(seq 20); do
  vals+=("$(json | field "r['timing']['rootkit_views_us']")")
done
printf '%s\n' "${vals[@]}" | sort -n | awk '{a[NR]=$1} END {printf "| rootkit views per scan | median %.1f ms | max %.1f ms |\n", a[int((NR+1)/2)]/1000, a[NR]/1000}'
json | field "'| BPF programs %s, hooked functions %s, kprobes %s, inet_diag compared %s |' % (r['census'].get('bpf_programs'), r['census'].get('hooked_functions'), r['census'].get('kprobes'), r['census'].get('inet_diag_compared'))"

alloc_row() {
  json --deep | field "'| --deep at pid_max %d | allocator %.0f ms for %d PIDs (%.2f µs each), %d held unexplained; deep views %.0f ms |' % (r['census']['pid_max'], r['census']['allocator']['ms'], r['census']['allocator']['probed'], 1000*r['census']['allocator']['ms']/max(1,r['census']['allocator']['probed']), r['census']['allocator']['held_unexplained'], r['timing']['rootkit_deep_us']/1000)"
}
echo
echo "### PID allocator (clone3 set_tid), whole range"
alloc_row
alloc_row
old_max=$(cat /proc/sys/kernel/pid_max)
if [ "${BENCH_PID_MAX:-0}" = 1 ] && [ "$old_max" != 4194304 ]; then
  trap 'echo "$old_max" > /proc/sys/kernel/pid_max' EXIT
  echo 4194304 > /proc/sys/kernel/pid_max
  alloc_row
  echo "$old_max" > /proc/sys/kernel/pid_max
  trap - EXIT
fi

echo
echo "### Peer: unhide brute (same run)"
if command -v unhide >/dev/null; then
  t0=$(date +%s.%N)
  timeout 600 unhide brute >/dev/null 2>&1 || true
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" -v m="$(cat /proc/sys/kernel/pid_max)" 'BEGIN { printf "| unhide brute at pid_max %d | %.1f s |\n", m, b - a }'
else
  echo "| unhide brute | not installed |"
fi
