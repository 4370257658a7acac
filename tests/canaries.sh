#!/usr/bin/env bash
# Proof that the test suite is hermetic: before the tests, plant files on the
# host that an unscoped `quarry fix --yes` would act on (an extracted kernel
# module tree and stray .ko files under /tmp, /opt and /var/tmp, a cron line
# running a program from /tmp, a .bashrc line doing the same); after the tests,
# check each is byte-identical with the same owner and mode, then remove them.
#
#   canaries.sh plant STATE_DIR    (prints nothing on success)
#   canaries.sh check STATE_DIR    (prints "canaries: N intact, M changed")
#   canaries.sh remove STATE_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=$1 state=$2
files=(
  /tmp/quarry-canary-tree/lib/modules/6.1.0-canary/kernel/drivers/canary_a.ko
  /tmp/quarry-canary-tree/lib/modules/6.1.0-canary/kernel/drivers/canary_b.ko
  /tmp/quarry-canary-tree/lib/modules/6.1.0-canary/modules.dep
  /tmp/quarry-canary.ko
  /opt/quarry-canary/canary.ko
  /var/tmp/quarry-canary.ko
  /etc/cron.d/quarry-canary
  /root/.bashrc
)
bashrc_line='[ -x /tmp/quarry-canary-up ] && /tmp/quarry-canary-up &  # quarry test canary'
snapshot() {
  for f in "${files[@]}"; do
    if [ -e "$f" ]; then
      printf '%s %s %s\n' "$(sha256sum <"$f" | cut -d' ' -f1)" "$(stat -c '%u:%g:%a:%F' "$f")" "$f"
    else
      printf 'missing - %s\n' "$f"
    fi
  done
}
case $cmd in
plant)
  mkdir -p "$state"
  [ -e /root/.bashrc ] && cp -p /root/.bashrc "$state/bashrc.orig" || true
  ko=/tmp/quarry-canary-tree/lib/modules/6.1.0-canary/kernel/drivers
  mkdir -p "$ko" /opt/quarry-canary
  cc -c -DMODNAME='"canary_a"' -o "$ko/canary_a.ko" tests/c/fakemod.c
  cc -c -DMODNAME='"canary_b"' -o "$ko/canary_b.ko" tests/c/fakemod.c
  echo "kernel/drivers/canary_a.ko:" >/tmp/quarry-canary-tree/lib/modules/6.1.0-canary/modules.dep
  for f in /tmp/quarry-canary.ko /opt/quarry-canary/canary.ko /var/tmp/quarry-canary.ko; do cp "$ko/canary_a.ko" "$f"; done
  echo '* * * * * root /tmp/quarry-canary-run >/dev/null 2>&1' >/etc/cron.d/quarry-canary
  echo "$bashrc_line" >>/root/.bashrc
  snapshot >"$state/before"
  ;;
check)
  snapshot >"$state/after"
  changed=$(diff "$state/before" "$state/after" | grep -c '^>' || true)
  diff "$state/before" "$state/after" | sed -n 's/^> /canary CHANGED: /p' || true
  echo "canaries: $(( ${#files[@]} - changed )) intact, $changed changed"
  [ "$changed" -eq 0 ]
  ;;
remove)
  rm -rf /tmp/quarry-canary-tree /tmp/quarry-canary.ko /opt/quarry-canary /var/tmp/quarry-canary.ko /etc/cron.d/quarry-canary
  if [ -e "$state/bashrc.orig" ]; then cp -p "$state/bashrc.orig" /root/.bashrc; else rm -f /root/.bashrc; fi
  rm -rf "$state"
  ;;
esac
