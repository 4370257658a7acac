#!/usr/bin/env bash
# Resource use of `quarry watch` over a stretch of time, from its own cgroup
# (cgroup v2 cpu.stat, or v1 cpuacct) and its peak RSS (VmHWM), on a machine
# brought to about 200 processes with idle `sleep`s.
#
#   sudo bash bench/watch.sh QUARRY [SECONDS=600]
#
# The cgroup, the state folder and the sleeps are this script's own and are
# removed at the end. Metrics on 127.0.0.1 only.
set -euo pipefail
Q=$(realpath "$1"); SECS=${2:-600}
# cgroup v2 (cpu.stat usage_usec) or v1 (cpuacct.usage, ns).
if [ -e /sys/fs/cgroup/cgroup.controllers ]; then
  CG=/sys/fs/cgroup/quarry-bench-watch; usage() { awk '/usage_usec/ {print $2}' "$CG/cpu.stat"; }
else
  CG=/sys/fs/cgroup/cpuacct/quarry-bench-watch; usage() { echo $(( $(cat "$CG/cpuacct.usage") / 1000 )); }
fi
STATE=$(mktemp -d /var/tmp/quarry-watch-bench.XXXXXX)
chmod 700 "$STATE"
now=$(ls /proc | grep -c '^[0-9]')
extra=$(( now < 200 ? 200 - now : 0 ))
pids=()
for _ in $(seq "$extra"); do sleep $((SECS + 60)) & pids+=($!); done
mkdir "$CG"
cleanup() { kill "${pids[@]}" 2>/dev/null || true; kill "$W" 2>/dev/null || true; wait 2>/dev/null || true; rmdir "$CG" 2>/dev/null || true; rm -rf "$STATE"; }
trap cleanup EXIT
sh -c "echo \$\$ > $CG/cgroup.procs; exec $Q watch --metrics-addr 127.0.0.1:19746 --state-dir $STATE" > "$STATE.log" 2>&1 &
W=$!
sleep 1
echo "processes: $(ls /proc | grep -c '^[0-9]')"
u0=$(usage)
sleep "$SECS"
u1=$(usage)
pid=$(cat "$CG/cgroup.procs" | head -1)
hwm=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
scans=$(grep -c '"event":"scan"' "$STATE.log" || true)
echo "watch over ${SECS} s: cpu $(( (u1 - u0) / 1000 )) ms = $(awk -v u=$((u1 - u0)) -v s=$SECS 'BEGIN { printf "%.3f", u / (s * 1e6) * 100 }')% of one core; RSS ${rss} KiB, peak ${hwm} KiB; full scans: $scans"
rm -f "$STATE.log"
