#!/usr/bin/env bash
# Issue 21 and 22 figures: a scan beside a FUSE trap against the same scan
# without it; the census with and without the PID sweep (initial namespace
# and a child PID namespace at pid_max 4,194,304); a scrape of `watch`'s
# metrics with 20 idle and one dripping connection.
#
#   sudo bash bench/finishes.sh QUARRY [RUNS=3]
#
# Everything runs in a private mount namespace (the trap, its miner and the
# plain miner are this script's own and are killed at the end); metrics on
# 127.0.0.1 only. Prints Markdown table rows.
set -euo pipefail
Q=$(realpath "$1"); RUNS=${2:-3}
HERE=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/quarry-bench-finishes.XXXXXX)
cc -O1 -o "$WORK/fusetrap" "$HERE/tests/c/fusetrap.c"
cc -O1 -pthread -o "$WORK/burner" "$HERE/tests/c/burner.c"
export QUARRY_CACHE_DIR=""

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
field() { "$Q" scan --format json "$@" 2>/dev/null | python3 -c "import json,sys; r=json.load(sys.stdin); c=r.get('census') or {}; print(round(c.get('census_ms',0)), round(c.get('probe_ms',0)), c.get('probed'), c.get('pid_max'))"; }

cat > "$WORK/inner.sh" <<EOF
set -euo pipefail
mkdir -p /tmp/quarry-bench-trap /tmp/quarry-bench-plain
cp "$WORK/burner" /tmp/quarry-bench-plain/xmrig
/tmp/quarry-bench-plain/xmrig -o stratum+tcp://127.0.0.1:3333 > /dev/null &
PLAIN=\$!
# The trap's miner burns a CPU too: the run without it has a second burner,
# so both runs see the same load.
"$WORK/burner" > /dev/null &
LOAD=\$!
for i in \$(seq $RUNS); do
  python3 -c "import sys,time,subprocess; t=time.monotonic(); subprocess.run(['$Q','scan','--format','json'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600); print(round((time.monotonic()-t)*1000))"
done > "$WORK/without"
kill \$LOAD
"$WORK/fusetrap" /tmp/quarry-bench-trap 4242 > "$WORK/srv.out" &
SRV=\$!
sleep 0.3
(cd /tmp/quarry-bench-trap && exec setpriv --reuid=4242 --regid=4242 --clear-groups /tmp/quarry-bench-trap/xmrig -c /tmp/quarry-bench-trap/config.json > /dev/null) &
TRAPPED=\$!
sleep 0.5
kill -USR1 \$SRV
for i in \$(seq $RUNS); do
  python3 -c "import sys,time,subprocess; t=time.monotonic(); subprocess.run(['$Q','scan','--format','json'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600); print(round((time.monotonic()-t)*1000))"
done > "$WORK/with"
kill -9 \$SRV \$TRAPPED \$PLAIN 2>/dev/null || true
umount -l /tmp/quarry-bench-trap 2>/dev/null || true
EOF
unshare --mount --propagation private bash "$WORK/inner.sh"
echo "| default scan (no module cache), a plain miner and a second busy process | without a trap: $(median < "$WORK/without") ms | the second one is the FUSE trap's miner (exe, private mapping, -c config, cwd): $(median < "$WORK/with") ms |"

# The census: initial namespace (this machine's pid_max), counts agree.
read -r cms pms probed pmax < <(field --only hidden --interval 0.3)
read -r dcms dpms dprobed _ < <(field --only hidden --interval 0.3 --deep)
echo "| census, initial namespace, pid_max $pmax | default: ${cms} ms (swept: $probed) | --deep: ${dcms} ms (sweep ${dpms} ms) |"
# A child PID namespace with its own /proc (pid_max 4,194,304 since 6.14).
nested() { unshare --pid --fork --mount-proc -- "$Q" scan --format json "$@" 2>/dev/null | python3 -c "import json,sys; r=json.load(sys.stdin); c=r.get('census') or {}; print(round(c.get('census_ms',0)), round(c.get('probe_ms',0)), c.get('probed'), c.get('pid_max'), any(f['rule']=='hidden.cpu' for f in r['findings']))"; }
"$WORK/burner" > /dev/null & B1=$!
"$WORK/burner" > /dev/null & B2=$!
sleep 0.3
read -r ncms npms nprobed npmax nhid < <(nested --only cpu,hidden --interval 0.5)
read -r ndcms ndpms _ _ _ < <(nested --only hidden --interval 0.3 --deep)
kill "$B1" "$B2"
echo "| census in a child PID namespace, pid_max $npmax, both CPUs busy outside | default: ${ncms} ms (swept: $nprobed; hidden.cpu: $nhid) | --deep: ${ndcms} ms (sweep ${ndpms} ms) |"

# Metrics: a scrape with 20 idle and one dripping connection.
STATE=$(mktemp -d /var/tmp/quarry-bench-state.XXXXXX); chmod 700 "$STATE"
"$Q" watch --metrics-addr 127.0.0.1:19747 --state-dir "$STATE" > /dev/null 2>&1 & W=$!
sleep 2
python3 - <<'PY'
import socket, time, threading
idle = [socket.create_connection(("127.0.0.1", 19747)) for _ in range(20)]
drip = socket.create_connection(("127.0.0.1", 19747))
def dripper():
    try:
        for _ in range(30):
            drip.send(b"G"); time.sleep(1)
    except OSError:
        pass
threading.Thread(target=dripper, daemon=True).start()
time.sleep(0.5)
t = time.monotonic()
s = socket.create_connection(("127.0.0.1", 19747)); s.settimeout(30)
s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
body = b""
while True:
    b = s.recv(65536)
    if not b: break
    body += b
ok = b"quarry_cpu_busy_ratio" in body
print(f"| metrics scrape with 20 idle + 1 dripping connection | answered: {ok} | {round((time.monotonic()-t)*1000)} ms |")
PY
kill "$W"; wait "$W" 2>/dev/null || true
rm -rf "$STATE" "$WORK"
