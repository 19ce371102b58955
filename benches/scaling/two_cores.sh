#!/usr/bin/env bash
# Throughput when the broker gets both cores of a 2-core machine: `petrel
# broker --threads 1` pinned to CPU 0 with the generator on CPU 1, against
# `--threads 2` on both CPUs, sharing them with the generator. Alternates
# the two, ROUNDS times, and prints the median delivered msg/s of each.
# Loopback only; about 20 s per round.
#   bash benches/scaling/two_cores.sh [path/to/petrel] [ROUNDS]
set -euo pipefail
B=${1:-target/release/petrel}
rounds=${2:-3}
port=21884
declare -A results
for ((r = 1; r <= rounds; r++)); do
  for mode in one both; do
    if [ "$mode" = one ]; then
      taskset -c 0 "$B" broker -p $port --threads 1 2>/dev/null &
      gen=(taskset -c 1)
    else
      "$B" broker -p $port --threads 2 2>/dev/null &
      gen=()
    fi
    pid=$!
    sleep 0.5
    for scenario in "pairs -n 10" "qos1 -n 10 --window 64"; do
      line=$(TOKIO_WORKER_THREADS=1 "${gen[@]}" "$B" bench $scenario -p $port -s 4 2>/dev/null)
      rate=$(grep -o 'delivered_per_s=[0-9.]*' <<<"$line" | cut -d= -f2)
      echo "round $r, broker on $mode core(s), $scenario: $rate msg/s" >&2
      results["$mode|$scenario"]+="$rate "
    done
    kill -TERM $pid
    wait $pid 2>/dev/null || true
  done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
for scenario in "pairs -n 10" "qos1 -n 10 --window 64"; do
  one=$(median <<<"${results["one|$scenario"]}")
  both=$(median <<<"${results["both|$scenario"]}")
  awk -v s="$scenario" -v a="$one" -v b="$both" \
    'BEGIN { printf "%-24s one core %10.0f  both cores %10.0f  %.2fx\n", s, a, b, b / a }'
done
