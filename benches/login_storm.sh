#!/usr/bin/env bash
# A login storm while a client keeps publishing: Petrel with a password
# file (argon2id, as `petrel passwd` writes it) pinned to CPU 0 with one
# thread, `petrel bench latency` pinned to CPU 1: 2,000 QoS 1 messages a
# second from an authenticated publisher to an authenticated subscriber,
# measured quiet for --seconds, then as long again while 1,000 logins with
# a wrong password arrive from the same address (50 at a time). Prints the
# p50/p99/p99.9 of both phases and how the storm was answered.
#   bash benches/login_storm.sh [--seconds 5] [-V 311|5]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p petrel
petrel=target/release/petrel
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
"$petrel" passwd -c -b "$work/passwd" alice secret
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
cat > "$work/petrel.toml" <<CONF
log_level = "error"
sys_interval = 0
password_file = "$work/passwd"
[[listener]]
bind = "127.0.0.1:$port"
CONF
taskset -c 0 "$petrel" broker --memory -c "$work/petrel.toml" --threads 1 &
pid=$!
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
taskset -c 1 "$petrel" bench latency -p "$port" -u alice -P secret --rate 2000 --storm 1000 "$@"
