#!/usr/bin/env bash
# A long fuzzing campaign: every target (or those named) for SECONDS each,
# all at once, each on its own core share, then the corpus each found is
# minimised into fuzz/seeds/<target>/ (committed; the CI smoke run starts
# from it). Run from anywhere:
#
#   fuzz/campaign.sh [SECONDS] [TARGET...]       # default 3600, every target
#
# Build: no sanitizer (plain stable), optimised, with debug assertions on, so
# an arithmetic overflow panics instead of wrapping. Every libFuzzer run stops
# on its first failure (a crash, over 2 GiB, one input over 10 s); the script
# then exits non-zero naming the target, and the input is in
# fuzz/artifacts/<target>/. NICE (default 10) keeps the machine usable.
# Per target it writes fuzz/campaign-logs/<target>.log and prints libFuzzer's
# last status line (runs, coverage, corpus size) and the CPU seconds used.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-3600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
flags=(-s none -O -a)
cargo fuzz build "${flags[@]}"
mkdir -p campaign-logs
pids=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "seeds/$t"
  # The committed seeds are read; new inputs go to corpus/<t>.
  nice -n "${NICE:-10}" bash -c 'start=$(date +%s); /usr/bin/time -f "cpu_seconds %U+%S" \
      cargo fuzz run "$@" -- -max_total_time='"$seconds"' -rss_limit_mb=2048 -timeout=10 \
      -print_final_stats=1; rc=$?; echo "wall_seconds $(( $(date +%s) - start ))"; exit $rc' \
    _ "${flags[@]}" "$t" "corpus/$t" "seeds/$t" >"campaign-logs/$t.log" 2>&1 &
  pids+=("$!")
done
failed=0
for i in "${!targets[@]}"; do
  t=${targets[$i]}
  if ! wait "${pids[$i]}"; then
    echo "fuzz target $t FAILED: see fuzz/campaign-logs/$t.log and fuzz/artifacts/$t/"
    failed=1
  fi
done
for t in "${targets[@]}"; do
  echo "== $t"
  grep -E '^#[0-9]+' "campaign-logs/$t.log" | tail -1 || true
  grep -E '^(stat::number_of_executed_units|cpu_seconds|wall_seconds)' "campaign-logs/$t.log" || true
  # Minimise what this run and earlier ones found into the seeds.
  merged=$(mktemp -d)
  cp corpus/"$t"/* "$merged"/ 2>/dev/null || true
  cp seeds/"$t"/* "$merged"/ 2>/dev/null || true
  rm -rf "seeds/$t" && mkdir -p "seeds/$t"
  cargo fuzz run "${flags[@]}" "$t" "seeds/$t" "$merged" -- -merge=1 >/dev/null 2>&1
  rm -rf "$merged"
  echo "seeds: $(find "seeds/$t" -type f | wc -l) files, $(du -sh "seeds/$t" | cut -f1)"
done
exit $failed
