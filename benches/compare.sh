#!/usr/bin/env bash
# Install what the side-by-side comparison needs, build Petrel, and run
# benches/compare.py with the arguments given (see its --help).
#   bash benches/compare.sh --runs 3
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  apt-get install -y -qq mosquitto >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && apt-get install -y -qq mosquitto >/dev/null; }
fi
export PATH="$PATH:/usr/sbin:$HOME/.cargo/bin"
if ! command -v rumqttd >/dev/null 2>&1; then
  # Unlocked: the lock file rumqttd publishes pins a crate today's compiler rejects.
  cargo install rumqttd
fi
command -v taskset >/dev/null || apt-get install -y -qq util-linux >/dev/null
cargo build --release -q -p petrel
exec python3 benches/compare.py "$@"
