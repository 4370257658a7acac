#!/usr/bin/env bash
# Builds the Debian package (deploy/debian/build.sh), installs it, checks what
# an administrator would look for (binary, man page, completions, the unit
# verified by systemd-analyze, alert rules by promtool), and removes it again.
# Run as root on a CI machine (it installs and removes the `quarry` package;
# it refuses if a `quarry` package was installed before it).
# Ends with one line: "package: N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."
pass=0; fail=0
check() { if "${@:2}" >/dev/null 2>&1; then pass=$((pass + 1)); echo "ok: $1"; else fail=$((fail + 1)); echo "FAILED: $1"; fi; }
if dpkg -s quarry >/dev/null 2>&1; then
  echo "a quarry package is already installed here: not touching it"
  echo "package: 0 passed, 1 failed"; exit 1
fi
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --quiet
deb=$(bash deploy/debian/build.sh | tail -1)
check "cargo deb builds $deb" test -s "$deb"
check "dpkg-deb lists the unit" sh -c "dpkg-deb -c '$deb' | grep -q lib/systemd/system/quarry-watch.service"
check "dpkg -i installs it" dpkg -i "$deb"
check "quarry watch --help" /usr/bin/quarry watch --help
check "man page installed" test -s /usr/share/man/man1/quarry.1.gz
check "bash completions installed" test -s /usr/share/bash-completion/completions/quarry
if command -v systemd-analyze >/dev/null; then
  check "systemd-analyze verify (installed unit)" systemd-analyze verify /lib/systemd/system/quarry-watch.service
fi
if command -v promtool >/dev/null; then
  check "promtool check rules" promtool check rules /usr/share/quarry/quarry-alerts.yml
fi
check "dpkg -r removes it" dpkg -r quarry
check "nothing left in /usr/bin" test ! -e /usr/bin/quarry
echo "package: $pass passed, $fail failed"
[ "$fail" = 0 ]
