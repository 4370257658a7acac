#!/usr/bin/env bash
# Issue 13: what "how did it get in" costs.
#
#   sudo bash bench/entry.sh [QUARRY]        (default: the release build)
#
# 1. Every scan's added work on this (clean) machine (timing.entry_us): the
#    doors (running services, sshd_config, root's PATH, cron places), over 20
#    `scan --interval 0` runs: median and maximum.
# 2. The worst case: an SSH daemon stand-in listening, an sshd_config that
#    lets root in with a password, and 16 MiB each of auth.log (a
#    password-guessing storm) and btmp, so login records are read, bursts
#    found and the entry.ssh finding built. In a private mount and network
#    namespace with tmpfs over /etc/ssh and /var/log: nothing on the machine
#    is touched.
# 3. The peer: rkhunter's SSH configuration test (`--enable
#    system_configs_ssh`), same namespace, same files, same run.
# Prints markdown rows for BENCHMARKS.md §10.
set -euo pipefail
if [ "${1:-}" = --inner ]; then
set -euo pipefail
  mount -t tmpfs tmpfs /etc/ssh
  mount -t tmpfs tmpfs /var/log
  mkdir -p /var/log/bench
  printf 'Include /etc/ssh/sshd_config.d/*.conf\nPermitRootLogin yes\nPasswordAuthentication yes\n' > /etc/ssh/sshd_config
  mkdir -p /etc/ssh/sshd_config.d
  python3 "$(dirname "$0")/fake_logins.py"
  # An "sshd" (python under that name) listening on 10.213.0.2:2222, an
  # address on the loopback of this network namespace: no port is opened
  # on the machine's network.
  ip link set lo up
  ip addr add 10.213.0.2/32 dev lo
  mkdir -p /var/log/bench/bin
  cp "$(readlink -f /usr/bin/python3)" /var/log/bench/bin/sshd
  /var/log/bench/bin/sshd -c 'import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("10.213.0.2", 2222)); s.listen(); time.sleep(600)' &
  SSHD=$!
  sleep 0.5
  vals=()
  for _ in $(seq 10); do
    vals+=("$({ "$Q" scan --interval 0 --format json 2>/dev/null || true; } | python3 -c "import json,sys; r=json.load(sys.stdin); f=[x for x in r['findings'] if x['rule']=='entry.ssh']; assert f, 'no entry.ssh'; print(r['timing']['entry_us'])")")
  done
  printf '%s\n' "${vals[@]}" | { printf '| entry stage, root-password SSH + 32 MiB of login records | '; sort -n | awk '{a[NR]=$1} END {printf "median %.2f ms | max %.2f ms", a[int((NR+1)/2)]/1000, a[NR]/1000}'; echo ' |'; }
  { "$Q" scan --interval 0 --format json 2>/dev/null || true; } | python3 -c "import json,sys; r=json.load(sys.stdin); f=[x for x in r['findings'] if x['rule']=='entry.ssh'][0]; print('| finding |', f['title'], '|', [e['value'] for e in f['evidence'] if e['key']=='password guessing'][0][:120], '|')"
  if command -v rkhunter >/dev/null; then
    s=$(date +%s%N)
    rkhunter --check --sk --nocolors --noappend-log --enable system_configs_ssh --logfile /var/log/bench/rk.log >/var/log/bench/rk.out 2>&1 || true
    e=$(date +%s%N)
    printf '| rkhunter --enable system_configs_ssh (same files) | %.0f ms | %s |\n' "$(( (e - s) / 1000 ))e-3" "$(grep -m1 -i 'root access' /var/log/bench/rk.out | tr -s ' ' | cut -c1-80)"
  fi
  kill "$SSHD" 2>/dev/null || true
  exit 0
fi
HERE=$(cd "$(dirname "$0")/.." && pwd)
Q=$(realpath "${1:-$HERE/target/x86_64-unknown-linux-gnu/release/quarry}")
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }

median() { sort -n | awk '{a[NR]=$1} END {printf "median %.2f ms | max %.2f ms", a[int((NR+1)/2)]/1000, a[NR]/1000}'; }
entry_us() { "$Q" scan --interval 0 --format json 2>/dev/null | python3 -c "import json,sys; r=json.load(sys.stdin); print(r['timing']['entry_us'])"; }

echo "### Doors on every scan (20 runs, scan --interval 0, clean machine)"
for _ in $(seq 20); do entry_us; done | { printf '| entry stage, clean machine | '; median; echo ' |'; }

echo
echo "### Worst case: SSH root-password door, 16 MiB auth.log and btmp"
export Q
unshare --mount --net --propagation private bash "$HERE/bench/entry.sh" --inner
