#!/usr/bin/env bash
# The whole test suite: unit tests, fixture tests and (as root) real scenario
# tests that start miner imitations. Scenario tests serialise themselves with a
# lock; run as root for full coverage (otherwise they print SKIPPED).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release "$@"
