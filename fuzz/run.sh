#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 600) each, two at a time, at low
# priority, then merges what each found into a minimal corpus under
# fuzz/corpus/<target> (which tests/fuzz_corpus.rs replays on every test run).
# Needs cargo-fuzz and a nightly toolchain (`cargo +nightly fuzz`), or
# RUSTC_BOOTSTRAP=1 with stable. Prints one line per target: executions, wall
# time, crashes (crash inputs stay in fuzz/artifacts/<target>/).
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(ls fuzz_targets | sed 's/\.rs$//')
nice -n 19 cargo +nightly fuzz build -O >/dev/null 2>&1
mkdir -p work logs
run_one() {
  local t=$1
  mkdir -p "work/$t" "artifacts/$t"
  local start=$(date +%s)
  nice -n 19 "target/x86_64-unknown-linux-gnu/release/$t" "work/$t" "corpus/$t" \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len=65536 \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"logs/$t.log" 2>&1 || true
  local execs=$(awk '/stat::number_of_executed_units/ {print $2}' "logs/$t.log")
  local crashes=$(ls "artifacts/$t" | wc -l)
  echo "$t: ${execs:-?} executions in $(( $(date +%s) - start )) s, $crashes crash input(s)"
}
export -f run_one
export secs
printf '%s\n' "${targets[@]}" | xargs -P 2 -I{} bash -c 'run_one {}'
# Keep a minimal corpus: the inputs that add coverage.
for t in "${targets[@]}"; do
  mkdir -p "min/$t"
  "target/x86_64-unknown-linux-gnu/release/$t" -merge=1 "min/$t" "corpus/$t" "work/$t" >/dev/null 2>&1 || true
  rm -rf "corpus/$t" && mv "min/$t" "corpus/$t"
done
rm -rf min
