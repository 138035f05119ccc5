#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 10) from its seeds, and prints the executions
# each one ran. A crash fails the run; libFuzzer leaves the input in fuzz/artifacts/<target>/,
# which becomes a regression seed in fuzz/seeds/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v claude-sso-gateway-fuzz)
(cd fuzz && cargo +nightly fuzz build --release $targets >/dev/null 2>&1 || cargo +nightly fuzz build --release)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
total=0
for t in $targets; do
  mkdir -p "$work/$t"
  log="$work/$t.log"
  if ! (cd fuzz && cargo +nightly fuzz run --release "$t" "$work/$t" "seeds/$t" -- \
          -max_total_time="$seconds" -rss_limit_mb=4096 -print_final_stats=1) >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz: $t FAILED (input in fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  total=$((total + ${runs:-0}))
  printf 'fuzz: %-16s %10s executions in %ss\n' "$t" "${runs:-?}" "$seconds"
done
printf 'fuzz: %-16s %10s executions\n' "all" "$total"
