#!/usr/bin/env bash
# Issue 9 detection table: each miner imitation and each ordinary busy
# workload, judged by an OLD and a NEW quarry binary in the same run.
#
#   sudo bash bench/behaviour.sh OLD_QUARRY NEW_QUARRY
#
# Runs itself in a private mount+PID namespace with tmpfs over every place it
# writes (/tmp, /etc/cron.d, /usr/local/bin): nothing on the machine changes,
# and the scans see only the workloads started here. The fake pool listens on
# 127.0.0.1 only. Prints one markdown row per workload: the miner.process
# verdict of each binary (severity and signals) for the workload's processes.
set -euo pipefail
OLD=$(realpath "$1"); NEW=$(realpath "$2")
HERE=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${QUARRY_BENCH_NS:-}" ]; then
  exec unshare --mount --pid --fork --mount-proc --propagation private \
    env QUARRY_BENCH_NS=1 bash "$0" "$OLD" "$NEW"
fi
# The binaries may live under /tmp: keep copies on a private tmpfs first.
mount -t tmpfs tmpfs /mnt
cp "$OLD" /mnt/quarry-old; cp "$NEW" /mnt/quarry-new
OLD_NAME=$OLD; OLD=/mnt/quarry-old; NEW=/mnt/quarry-new
for d in /tmp /etc/cron.d /usr/local/bin; do mkdir -p "$d"; mount -t tmpfs tmpfs "$d"; done
W=/tmp/qb; mkdir -p $W
cc -O1 -pthread -o $W/fakeminer "$HERE/tests/c/fakeminer.c"
cc -O1 -pthread -o $W/burner "$HERE/tests/c/burner.c"
WALLET=4$(python3 -c "print(('QuarryTestWa11et'*6)[:94])")
python3 - <<'PY' &
import socket, threading
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", 39555)); l.listen()
def h(c):
    for line in c.makefile("rb"):
        if b"login" in line:
            c.sendall(('{"id":1,"result":{"job":{"blob":"%s","job_id":"j1","target":"b88d0600","seed_hash":"%s"}}}\n' % ("07" * 76, "ab" * 32)).encode())
while True:
    c, _ = l.accept(); threading.Thread(target=h, args=(c,), daemon=True).start()
PY
sleep 0.3
CFG="{\"pools\":[{\"url\":\"127.0.0.1:39555\",\"user\":\"$WALLET\",\"pass\":\"x\",\"algo\":\"rx/0\"}]}"

verdict() { # binary -> "severity (signals)" of the worst miner.process finding
  "$1" scan --interval 1 --only miner,persistence --format json 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
m = [f for f in d["findings"] if f["rule"] == "miner.process"]
order = ["info", "low", "medium", "high", "critical"]
m.sort(key=lambda f: order.index(f["severity"]), reverse=True)
p = [f for f in d["findings"] if f["rule"].startswith("persistence")]
s = m[0]["severity"].upper() + " (" + ", ".join(sorted({x["id"] for x in m[0]["signals"]})) + ")" if m else "nothing"
if p: s += "; start-up line " + max((f["severity"] for f in p), key=order.index).upper()
print(s)'
}
row() { # name, then the workload is running
  sleep 1.2
  printf '| %s | %s | %s |\n' "$1" "$(verdict "$OLD")" "$(verdict "$NEW")"
}
stop() { pkill -9 -f "$W/" 2>/dev/null || true; pkill -9 -P $$ sh 2>/dev/null || true; rm -f /etc/cron.d/*; sleep 0.3; }

echo "| workload | before ($OLD_NAME) | after |"
echo "|---|---|---|"
# 1. Renamed miner, pool in config.json beside it, watchdog, cron line.
cp $W/fakeminer /usr/local/bin/systemd-helper; echo "$CFG" > /usr/local/bin/config.json
echo "* * * * * root pgrep -x systemd-helper >/dev/null || /usr/local/bin/systemd-helper" > /etc/cron.d/helper
sh -c 'while true; do /usr/local/bin/systemd-helper >/dev/null; sleep 1; done' & WD=$!
row "fakeminer as /usr/local/bin/systemd-helper, config.json beside it, watchdog + cron"
kill -9 $WD; pkill -9 -f systemd-helper || true; stop
# 2. Busy loop as /tmp/.ice-unix-minerd, watchdog + cron line.
cp $W/burner /tmp/.ice-unix-minerd
echo "* * * * * root /tmp/.ice-unix-minerd" > /etc/cron.d/ice
sh -c 'while true; do /tmp/.ice-unix-minerd >/dev/null; sleep 1; done' & WD=$!
row "busy loop as /tmp/.ice-unix-minerd, watchdog + cron"
kill -9 $WD; pkill -9 -f ice-unix || true; stop
# 3. Fileless: fakeminer fexecve'd from an unsealed memfd, config via -c.
echo "$CFG" > $W/c.json
(exec -a kthelper $W/fakeminer --memfd x -c $W/c.json >/dev/null) & P=$!
row "fakeminer from an unsealed memfd (argv[0] kthelper), config via -c"
kill -9 $P; stop
# 4. CPU burner fexecve'd from an unsealed memfd.
$W/burner --memfd y >/dev/null & P=$!
row "busy loop fexecve'd from an unsealed memfd"
kill -9 $P; stop
# 5-10. Ordinary busy work.
mkdir -p $W/b && python3 -c "
print('// mining.subscribe mining.authorize mining.submit \"seed_hash\" rx/0 rx/wow cn/r cn/half argon2/chukwa')
for i in range(4000): print(f'template<int N> struct S{i} {{ static int f() {{ return N*{i} + S{i}<N-1>::f(); }} }}; template<> struct S{i}<0> {{ static int f() {{ return 0; }} }}; int g{i}() {{ return S{i}<40>::f(); }}')" > $W/b/randomx.cpp
(cd $W/b && g++ -O2 -DXMRIG_ALGO_RANDOMX -c randomx.cpp -o /dev/null) & P=$!
row "g++ -DXMRIG_ALGO_RANDOMX of miner-like source"; kill -9 $P 2>/dev/null || true; pkill -9 cc1plus || true
mkdir -p $W/crate/src && printf '[package]\nname="busy"\nversion="0.1.0"\nedition="2021"\n' > $W/crate/Cargo.toml
python3 -c "
print('fn main() { println!(\"{}\", f0()); }')
for i in range(3000): print(f'#[inline(never)] fn f{i}() -> u64 {{ (0..{i}u64).map(|x| x.wrapping_mul(31)).sum::<u64>() + {\"f%d()\" % (i+1) if i < 2999 else \"0\"} }}')" > $W/crate/src/main.rs
(cd $W/crate && cargo build --release --offline -q >/dev/null 2>&1) & P=$!
row "cargo build --release in /tmp"; kill -9 $P 2>/dev/null || true; pkill -9 rustc || true
(head -c 300000000 /dev/urandom | xz -9 >/dev/null) & P=$!
row "xz -9"; pkill -9 xz || true
python3 -c 'while True: pass' & P=$!; row "python busy loop"; kill -9 $P
node -e 'for(;;){}' & P=$!; row "node busy loop"; kill -9 $P
echo 'public class Busy { public static void main(String[] a) { long x = 0; while (true) { x++; } } }' > $W/Busy.java
java -Xmx64m $W/Busy.java & P=$!; sleep 2; row "java busy loop"; kill -9 $P
