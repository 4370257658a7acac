#!/usr/bin/env bash
# The whole test suite: unit tests, fixture tests, the fuzz corpus replay and
# (as root) real scenario tests that start miner imitations. Scenario tests
# that write anywhere run in their own mount+PID namespace (tests/common);
# they serialise themselves with a lock. Run as root for full coverage
# (otherwise they print SKIPPED).
#
# As root, the run is also a proof that the suite is hermetic: canary files
# an unscoped fix would act on are planted on the host first and must be
# byte-identical afterwards (tests/canaries.sh).
# Ends with one summary line: "tests: N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
canary_state=$(mktemp -d)
cleanup() {
  if [ "$(id -u)" = 0 ]; then bash tests/canaries.sh remove "$canary_state" || true; fi
  # The suite's own module cache (tests/common SUITE_CACHE).
  rm -rf "$log" "$canary_state" /tmp/quarry-suite-cache
}
trap cleanup EXIT
status=0
if [ "$(id -u)" = 0 ]; then bash tests/canaries.sh plant "$canary_state"; fi
cargo test --release --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
read -r passed failed < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { print p + 0, f + 0 }' "$log")
if [ "$(id -u)" = 0 ]; then
  if bash tests/canaries.sh check "$canary_state"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    status=1
  fi
fi
echo
echo "tests: $passed passed, $failed failed"
exit "$status"
