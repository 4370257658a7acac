#!/usr/bin/env bash
# Proof that the test suite is hermetic: before the tests, plant files on the
# host that an unscoped `quarry fix --yes` would act on (an extracted kernel
# module tree and stray .ko files under /tmp, /opt and /var/tmp, a cron line
# running a program from /tmp, a .bashrc line doing the same); after the tests,
# check each is byte-identical with the same owner and mode, then remove them.
#
# Quarry's own state on the host is a canary too (issue 28): a foreign case
# under /var/lib/quarry/cases, a watch state and module-cache files are
# planted where none exist, and every file under /var/lib/quarry and
# /var/cache/quarry (planted or already there from earlier use) must be
# unchanged afterwards. The foreign case also proves the suite's verdicts do
# not read the host's cases: the fix tests count the cases they see.
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
state_dirs=(/var/lib/quarry /var/cache/quarry)
foreign_case=/var/lib/quarry/cases/20260101T000000Z-quarry-canary
snapshot() {
  for d in "${state_dirs[@]}"; do
    [ -d "$d" ] || continue
    find "$d" -xdev \( -type f -o -type d \) -printf '%p\n' | LC_ALL=C sort | while read -r f; do
      if [ -f "$f" ]; then
        printf '%s %s %s\n' "$(sha256sum <"$f" | cut -d' ' -f1)" "$(stat -c '%u:%g:%a:%F' "$f")" "$f"
      else
        printf 'dir %s %s\n' "$(stat -c '%u:%g:%a' "$f")" "$f"
      fi
    done
  done
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
  # Quarry's state: remember which folders existed, plant what is missing.
  for d in "${state_dirs[@]}" /var/lib/quarry/cases /var/lib/quarry/watch; do
    [ -e "$d" ] || echo "$d" >>"$state/made"
  done
  install -d -m 700 /var/lib/quarry /var/cache/quarry /var/lib/quarry/cases /var/lib/quarry/watch
  if [ ! -e "$foreign_case" ]; then
    install -d -m 700 "$foreign_case" "$foreign_case/files"
    printf '%s\n' '{"v":1,"kind":"begin","case":"20260101T000000Z-quarry-canary","note":"a foreign case planted by tests/canaries.sh"}' >"$foreign_case/journal.jsonl"
    echo '{"case":"20260101T000000Z-quarry-canary","files":[]}' >"$foreign_case/manifest.json"
    echo "$foreign_case" >>"$state/planted"
  fi
  if [ ! -e /var/lib/quarry/watch/state.json ]; then
    echo '{"version":1,"reported":{"miner.process|pid=1|/quarry-canary":{"severity":"high","signals":["miner-name"],"title":"a foreign watch state planted by tests/canaries.sh","first_seen":"2026-01-01T00:00:00Z"}}}' >/var/lib/quarry/watch/state.json
    chmod 600 /var/lib/quarry/watch/state.json
    echo /var/lib/quarry/watch/state.json >>"$state/planted"
  fi
  if [ ! -e /var/cache/quarry/quarry-canary ]; then
    echo 'a foreign cache file planted by tests/canaries.sh' >/var/cache/quarry/quarry-canary
    echo /var/cache/quarry/quarry-canary >>"$state/planted"
  fi
  snapshot >"$state/before"
  ;;
check)
  snapshot >"$state/after"
  # A line of before missing after is a changed or removed canary; a line of
  # after missing before is a changed or new file in Quarry's state places.
  lost=$(LC_ALL=C comm -23 <(LC_ALL=C sort "$state/before") <(LC_ALL=C sort "$state/after") | wc -l)
  new=$(LC_ALL=C comm -13 <(LC_ALL=C sort "$state/before") <(LC_ALL=C sort "$state/after") | wc -l)
  changed=$(( lost > new ? lost : new ))
  diff "$state/before" "$state/after" | sed -n 's/^> /canary CHANGED: /p' || true
  total=$(wc -l <"$state/before")
  echo "canaries: $(( total - changed )) intact, $changed changed"
  [ "$changed" -eq 0 ]
  ;;
remove)
  rm -rf /tmp/quarry-canary-tree /tmp/quarry-canary.ko /opt/quarry-canary /var/tmp/quarry-canary.ko /etc/cron.d/quarry-canary
  # Only what was planted here goes, and folders only if this script made them.
  [ -e "$state/planted" ] && while read -r f; do rm -rf "$f"; done <"$state/planted"
  [ -e "$state/made" ] && tac "$state/made" | while read -r d; do rmdir "$d" 2>/dev/null || true; done
  if [ -e "$state/bashrc.orig" ]; then cp -p "$state/bashrc.orig" /root/.bashrc; else rm -f /root/.bashrc; fi
  rm -rf "$state"
  ;;
esac
