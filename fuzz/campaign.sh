#!/usr/bin/env bash
# A long fuzzing campaign: every target (or those named) for SECONDS of CPU
# time each, then the corpus each found is minimised into fuzz/seeds/<target>/
# (committed; the CI smoke run starts from it). Run from anywhere:
#
#   fuzz/campaign.sh [SECONDS] [TARGET...]       # default 3600, every target
#
# The budget is CPU time, not wall time: on a machine with fewer free cores
# than targets a wall-clock hour is only a share of one. JOBS (default: every
# target at once) bounds how many run together; NICE (default 10) keeps the
# machine usable. Never pause a fuzzer (SIGSTOP): libFuzzer's per-input
# timeout is wall time, so the paused input is reported as a hang. To keep a
# campaign out of other work's way, give it the idle scheduling class and a
# core of its own, which every process it starts inherits:
#
#   JOBS=1 taskset -c 1 chrt --idle 0 fuzz/campaign.sh
#
# Build: no sanitizer (plain stable), optimised, with debug assertions on, so
# an arithmetic overflow panics instead of wrapping. Every libFuzzer run stops
# on its first failure (a crash, over 2 GiB, one input over 10 s); the script
# then exits non-zero naming the target, and the input is in
# fuzz/artifacts/<target>/. Per target it writes
# fuzz/campaign-logs/<target>.log and prints libFuzzer's last status line
# (runs, coverage, corpus size) and the CPU and wall seconds used. Each
# target's seeds are minimised as soon as it finishes.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-3600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
jobs=${JOBS:-${#targets[@]}}
flags=(-s none -O -a)
cargo fuzz build "${flags[@]}"
triple=$(rustc -vV | sed -n 's/^host: //p')
bindir=target/$triple/release
ticks=$(getconf CLK_TCK)
mkdir -p campaign-logs

# CPU seconds (user + system) a live process has used.
cpu_of() {
  awk -v t="$ticks" '{ print int(($14 + $15) / t) }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# One target: run it until it has used `seconds` of CPU, then interrupt it
# (libFuzzer prints its final stats and exits 72), then minimise.
run_target() {
  local t=$1 log="campaign-logs/$1.log" start pid cpu=0 rc=0 interrupted=0
  mkdir -p "corpus/$t" "seeds/$t" "artifacts/$t"
  start=$(date +%s)
  # The committed seeds are read; new inputs go to corpus/<t>.
  nice -n "${NICE:-10}" "$bindir/$t" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" "corpus/$t" "seeds/$t" >"$log" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    cpu=$(cpu_of "$pid")
    if [ "$cpu" -ge "$seconds" ] && [ "$interrupted" = 0 ]; then
      interrupted=1
      kill -INT "$pid" 2>/dev/null || true
    fi
    sleep 5
  done
  wait "$pid" || rc=$?
  echo "cpu_seconds_at_stop $cpu" >>"$log"
  echo "wall_seconds $(($(date +%s) - start))" >>"$log"
  if [ "$interrupted" = 1 ] && [ "$rc" = 72 ]; then
    rc=0
  elif [ "$rc" = 0 ]; then
    rc=1 # libFuzzer ended on its own before the budget: not a full run
  fi
  echo "== $t (exit $rc)"
  grep -E '^#[0-9]+' "$log" | tail -1 || true
  grep -E '^(stat::number_of_executed_units|cpu_seconds_at_stop|wall_seconds)' "$log" || true
  if [ "$rc" != 0 ]; then
    echo "fuzz target $t FAILED: see fuzz/$log and fuzz/artifacts/$t/"
    return 1
  fi
  # Minimise what this run and earlier ones found into the seeds.
  local merged
  merged=$(mktemp -d)
  cp corpus/"$t"/* "$merged"/ 2>/dev/null || true
  cp seeds/"$t"/* "$merged"/ 2>/dev/null || true
  rm -rf "seeds/$t" && mkdir -p "seeds/$t"
  "$bindir/$t" -merge=1 "seeds/$t" "$merged" >/dev/null 2>&1
  rm -rf "$merged"
  echo "seeds: $(find "seeds/$t" -type f | wc -l) files, $(du -sh --apparent-size "seeds/$t" | cut -f1)"
}

failed=0
running=0
for t in "${targets[@]}"; do
  if [ "$running" -ge "$jobs" ]; then
    wait -n || failed=1
    running=$((running - 1))
  fi
  run_target "$t" &
  running=$((running + 1))
done
while [ "$running" -gt 0 ]; do
  wait -n || failed=1
  running=$((running - 1))
done
exit $failed
