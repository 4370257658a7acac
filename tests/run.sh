#!/usr/bin/env bash
# The whole test suite: unit tests, fixture tests and (as root) real scenario
# tests that start miner imitations. Scenario tests serialise themselves with a
# lock; run as root for full coverage (otherwise they print SKIPPED).
# Ends with one summary line: "tests: N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
read -r passed failed < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { print p + 0, f + 0 }' "$log")
echo
echo "tests: $passed passed, $failed failed"
exit "$status"
