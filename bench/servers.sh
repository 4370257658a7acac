#!/usr/bin/env bash
# Issue 22 figures: what a scan costs on a real server's shape. pid_max
# 32,768 beside 4,194,304 (systemd's default), 1,000 and 10,000 idle
# processes, a second (extracted, unowned) kernel module tree beside the
# installed one, and a container (a child PID namespace with its own /proc);
# `unhide quick` and `unhide brute` in the same run.
#
#   sudo bash bench/servers.sh QUARRY [RUNS=5]
#
# Environment: BENCH_PROCS="1000 10000" (idle processes per point),
# BENCH_TREE=1 (copy /lib/modules/$(uname -r or the newest) to
# /opt/quarry-bench-ktree first; removed at the end), BENCH_UNHIDE=1.
# kernel.pid_max is restored on exit. Warm module cache: Quarry's own cache
# folder for this run (QUARRY_CACHE_DIR), warmed by one scan per point.
# Prints Markdown table rows.
set -euo pipefail
Q=$(realpath "$1"); RUNS=${2:-5}
HERE=$(cd "$(dirname "$0")/.." && pwd)
PROCS=${BENCH_PROCS:-"1000 10000"}
WORK=$(mktemp -d /tmp/quarry-bench-servers.XXXXXX)
export QUARRY_CACHE_DIR="$WORK/cache"
mkdir -m 700 -p "$QUARRY_CACHE_DIR" # root's alone, or Quarry ignores it
old_max=$(cat /proc/sys/kernel/pid_max)
TREE=/opt/quarry-bench-ktree
spawner=
cleanup() {
  echo "$old_max" > /proc/sys/kernel/pid_max
  [ -n "$spawner" ] && kill "$spawner" 2>/dev/null && wait "$spawner" 2>/dev/null || true
  rm -rf "$WORK" "$TREE"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# One scan's figures: work ms, census ms, sweep ms, walk ms, files walked.
figures() {
  "$Q" scan --format json "$@" 2>/dev/null | python3 -c "
import json,sys
r=json.load(sys.stdin); c=r.get('census') or {}; t=r['timing']; w=(r.get('modules') or {}).get('walk') or {}
print(round(t['work_us']/1000,1), round(c.get('census_ms',0),1), round(c.get('probe_ms',0),1), round(w.get('elapsed_ms',0),1), w.get('files',0), c.get('pid_space',{}).get('upto',0), 1 if c.get('probed') else 0)"
}
# Median of each column over RUNS scans.
medians() {
  for i in $(seq "$RUNS"); do figures "$@"; done > "$WORK/rows"
  for col in 1 2 3 4; do awk -v c=$col '{print $c}' "$WORK/rows" | median; done | paste -sd' '
}
wall() {
  python3 -c "import sys,time,subprocess; t=time.monotonic(); subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900); print(round(time.monotonic()-t,2))" "$@"
}

if [ "${BENCH_TREE:-1}" = 1 ]; then
  src=$(ls -d /lib/modules/*/kernel 2>/dev/null | head -n 1 | xargs -r dirname)
  if [ -n "$src" ]; then
    mkdir -p "$TREE/lib/modules"
    cp -a "$src" "$TREE/lib/modules/"
    echo "<!-- second kernel tree: $(find "$TREE" -name '*.ko*' | wc -l) modules copied from $src to $TREE -->"
  fi
fi

echo "| pid_max | idle processes | work ms (median of $RUNS, --interval 0) | census ms | sweep ms | module walk ms | default scan wall s | unhide quick s | unhide brute s |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for pmax in 32768 4194304; do
  echo "$pmax" > /proc/sys/kernel/pid_max
  for n in 0 $PROCS; do
    if [ "$n" -gt 0 ]; then
      python3 "$HERE/bench/spawn_idle.py" "$n" "$WORK/ready" 900 &
      spawner=$!
      while [ ! -s "$WORK/ready" ]; do sleep 0.2; done
    fi
    figures --interval 0 > /dev/null # warm the cache
    read -r work cen swp walk < <(medians --interval 0)
    dwall=$(wall "$Q" scan --format json)
    uq=-; ub=-
    if [ "${BENCH_UNHIDE:-1}" = 1 ] && command -v unhide > /dev/null; then
      # unhide quick reads each PID through several tools: 34 s with 1,000
      # idle processes here, so it runs up to BENCH_UNHIDE_MAX processes.
      if [ "$n" -le "${BENCH_UNHIDE_MAX:-1000}" ]; then uq=$(wall unhide quick); fi
      if [ "$n" -eq 0 ]; then ub=$(wall unhide brute); fi
    fi
    echo "| $pmax | $n | $work | $cen | $swp | $walk | $dwall | $uq | $ub |"
    if [ "$n" -gt 0 ]; then
      kill "$spawner"; wait "$spawner" 2>/dev/null || true; spawner=; rm -f "$WORK/ready"
    fi
  done
  # Forced sweeps at this pid_max: --deep (the whole range, and the
  # allocator over the PIDs in use then the rest).
  "$Q" scan --only hidden --interval 0 --deep --timeout 0 --format json 2>/dev/null | python3 -c "
import json,sys
r=json.load(sys.stdin); c=r['census']; a=c.get('allocator') or {}
print('| %d | --deep | sweep of 1-%d: %.0f ms | allocator: %d PIDs in %.0f ms | PIDs in use: 1-%d |' % (c['pid_max'], c['swept_upto'], c['probe_ms'], a.get('probed',0), a.get('ms',0), c['pid_space']['upto']))"
done
echo "$old_max" > /proc/sys/kernel/pid_max

# A container: a child PID namespace with its own /proc (its pid_max is
# 4,194,304 since Linux 6.14), both CPUs busy outside it.
cc -O1 -pthread -o "$WORK/burner" "$HERE/tests/c/burner.c"
"$WORK/burner" > /dev/null & b1=$!
"$WORK/burner" > /dev/null & b2=$!
unshare --pid --fork --mount-proc -- "$Q" scan --interval 1 --format json 2>/dev/null | python3 -c "
import json,sys
r=json.load(sys.stdin); c=r['census']
hid=[f['rule'] for f in r['findings'] if f['rule'].startswith('hidden.')]
print('| container (child PID namespace, own /proc), both CPUs busy outside | pid_max %d | census %.0f ms, swept: %s | hidden findings: %s | work %.0f ms |' % (c['pid_max'], c['census_ms'], 'yes' if c['probed'] else 'no', hid or 'none', r['timing']['work_us']/1000))"
kill "$b1" "$b2"
