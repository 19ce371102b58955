#!/usr/bin/env bash
# Does the broker scale with cores? Runs `petrel broker` pinned to 1, 2, 4
# and 8 cores (tokio workers to match) with `petrel bench` on 8 other cores,
# for QoS 0 and QoS 1 pairs and QoS 0 fan-in, and prints delivered msg/s.
# Needs a machine with at least 16 cores; loopback only; about a minute.
#   bash benches/scaling/cores.sh [path/to/petrel]
set -euo pipefail
B=${1:-target/release/petrel}
port=21883
nproc=$(nproc)
[ "$nproc" -ge 16 ] || { echo "needs 16 cores, this machine has $nproc"; exit 1; }
ulimit -n 65536 2>/dev/null || true
for scenario in "pairs -n 64 -q 0" "pairs -n 64 -q 1" "fanin -n 64 -q 0"; do
  for k in 1 2 4 8; do
    taskset -c 0-$((k - 1)) "$B" broker -p $port --threads $k 2>/dev/null &
    pid=$!
    sleep 0.5
    line=$(TOKIO_WORKER_THREADS=8 taskset -c 8-15 "$B" bench $scenario -p $port -s 4 2>/dev/null)
    echo "broker_cores=$k $line"
    kill -TERM $pid; wait $pid 2>/dev/null || true
  done
done
