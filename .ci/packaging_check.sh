#!/usr/bin/env bash
# Checks the packaging: Dockerfile and .dockerignore, packaging/docker/ and
# packaging/systemd/, with a built petrel binary:
#
#   bash .ci/packaging_check.sh target/debug/petrel
#
# With a Docker daemon: builds the image, runs it with a password file made
# by the image itself, waits for its HEALTHCHECK to report healthy, then
# publishes and subscribes with a password.
#
# Without one (the usual case on CI here): checks the Dockerfile's steps
# against this repository (.ci/packaging_check.py: base images, the build
# context and .dockerignore, the builder's cargo command, the runtime
# stage), then reproduces the runtime stage on this machine with the given
# binary: the image's uid and gid, its configuration (paths moved under a
# temporary root, free ports for its listeners), its data directory, its
# ENTRYPOINT and CMD, and its HEALTHCHECK command.
#
# Then the systemd unit: its sandboxing and ExecStart, its example
# configuration, systemd-analyze (where installed), and the broker started
# as the unit starts it (an unprivileged uid, the credentials copy, the
# state directory).
#
# PETREL_PACKAGING_DOCKER=0 skips Docker even where a daemon answers.
set -euo pipefail
cd "$(dirname "$0")/.."
umask 022

fail() { echo "packaging: FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
note() { echo "note: $*"; }

[ $# -eq 1 ] || { echo "usage: bash .ci/packaging_check.sh PATH/TO/petrel" >&2; exit 2; }
if [ ! -f "$1" ] || [ ! -x "$1" ]; then
  fail "$1 is not an executable file (build it first: cargo build -p petrel)"
fi
BIN=$(realpath "$1")
command -v python3 >/dev/null || fail "python3 is needed"
python3 -c 'import tomllib' 2>/dev/null || fail "python3 3.11 or later is needed (tomllib)"
HELPER=.ci/packaging_check.py

WORK=$(mktemp -d "${TMPDIR:-/tmp}/petrel-packaging.XXXXXX")
chmod 0755 "$WORK"
BROKER_PID=""
CONTAINER=""
cleanup() {
  # Only what this script started: its broker (by pid) and its container (by id).
  if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
    kill -KILL "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
  fi
  if [ -n "$CONTAINER" ]; then
    docker rm -f -v "$CONTAINER" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# fact FILE KEY: a value of the helper's JSON; a list comes out NUL-separated.
fact() {
  python3 - "$1" "$2" <<'EOF'
import json, sys
v = json.load(open(sys.argv[1]))[sys.argv[2]]
if isinstance(v, list):
    sys.stdout.write("".join(str(x) + "\0" for x in v))
elif isinstance(v, dict):
    sys.stdout.write("".join(f"{k}={x}\0" for k, x in v.items()))
else:
    sys.stdout.write(str(v))
EOF
}

MQTT_USER=ci-user
MQTT_PASS=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
if command -v mosquitto_pub >/dev/null && command -v mosquitto_sub >/dev/null; then
  PUB=(mosquitto_pub) SUB=(mosquitto_sub) CLIENT="mosquitto_pub/mosquitto_sub"
else
  PUB=("$BIN" pub) SUB=("$BIN" sub) CLIENT="petrel pub/sub"
  note "mosquitto_pub is not installed: publishing with petrel pub instead"
fi

# mqtt_check WHERE PORT: publish (QoS 1, retained) as the password file's
# user and read it back; a wrong password and no credentials are refused.
mqtt_check() {
  local where=$1 port=$2 topic="petrel/packaging/$RANDOM" got
  "${PUB[@]}" -h 127.0.0.1 -p "$port" -u "$MQTT_USER" -P "$MQTT_PASS" -t "$topic" -m "hello from CI" -q 1 -r ||
    fail "$where: $CLIENT could not publish as $MQTT_USER on port $port"
  got=$("${SUB[@]}" -h 127.0.0.1 -p "$port" -u "$MQTT_USER" -P "$MQTT_PASS" -t "$topic" -C 1 -W 10) ||
    fail "$where: $CLIENT could not subscribe as $MQTT_USER on port $port"
  [ "$got" = "hello from CI" ] || fail "$where: the subscriber read '$got', not the message published"
  ok "$where: $MQTT_USER published (QoS 1, retained) and read it back with $CLIENT on port $port"
  if "${PUB[@]}" -h 127.0.0.1 -p "$port" -u "$MQTT_USER" -P "not-$MQTT_PASS" -t "$topic" -m x -q 1 >/dev/null 2>&1; then
    fail "$where: a wrong password was accepted"
  fi
  if "${PUB[@]}" -h 127.0.0.1 -p "$port" -t "$topic" -m x -q 1 >/dev/null 2>&1; then
    fail "$where: a client without credentials was accepted"
  fi
  ok "$where: a wrong password and a client without credentials are refused"
}

# as UID GID CMD...: run CMD as that user (root is needed to switch; not
# root, it runs as the current user, with a note said once).
AS_NOTE=""
as() {
  local uid=$1 gid=$2
  shift 2
  if [ "$(id -u)" -eq 0 ]; then
    setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$@"
  else
    if [ -z "$AS_NOTE" ]; then
      note "not root: the broker runs as $(id -u), not as the packaging's unprivileged uid"
      AS_NOTE=1
    fi
    "$@"
  fi
}

# with_root ROOT ARG: an absolute path moved under ROOT; anything else as is.
with_root() { case $2 in /*) printf '%s%s' "$1" "$2" ;; *) printf '%s' "$2" ;; esac; }

# start_broker LOG UID GID ENV_AND_ARGV...: in the background, as that user;
# setpriv and env exec, so BROKER_PID is the broker's own pid.
start_broker() {
  local log=$1 uid=$2 gid=$3
  shift 3
  local -a prefix=()
  as "$uid" "$gid" true # the note, if any, once
  [ "$(id -u)" -ne 0 ] || prefix=(setpriv --reuid="$uid" --regid="$gid" --clear-groups --)
  "${prefix[@]}" "$@" >"$log" 2>&1 &
  BROKER_PID=$!
}

broker_died() {
  echo "---- the broker's output:" >&2
  tail -n 30 "$1" >&2 || true
  fail "$2"
}

# wait_up LOG SECONDS CHECK...: run CHECK until it succeeds, while the broker lives.
wait_up() {
  local log=$1 limit=$2 start=$SECONDS
  shift 2
  while :; do
    kill -0 "$BROKER_PID" 2>/dev/null || broker_died "$log" "the broker exited before it was healthy"
    if "$@" >/dev/null 2>&1; then
      return 0
    fi
    [ $((SECONDS - start)) -lt "$limit" ] || broker_died "$log" "not healthy after ${limit}s: $*"
    sleep 0.5
  done
}

# stop_broker LOG SECONDS WHERE: SIGTERM, then it must exit 0 within SECONDS.
stop_broker() {
  local log=$1 limit=$2 where=$3 start=$SECONDS rc=0
  kill -TERM "$BROKER_PID"
  while kill -0 "$BROKER_PID" 2>/dev/null; do
    [ $((SECONDS - start)) -lt "$limit" ] || broker_died "$log" "$where: still running ${limit}s after SIGTERM"
    sleep 0.2
  done
  wait "$BROKER_PID" || rc=$?
  BROKER_PID=""
  [ "$rc" -eq 0 ] || broker_died "$log" "$where: exit status $rc after SIGTERM"
  ok "$where: SIGTERM shut the broker down gracefully (exit status 0, $((SECONDS - start))s)"
}

# ---------------------------------------------------------------- Dockerfile

echo "== Dockerfile and .dockerignore"
python3 "$HELPER" dockerfile "$WORK/image.json" || exit 1
IMG_UID=$(fact "$WORK/image.json" user | tr '\0' '\n' | sed -n 1p)
IMG_GID=$(fact "$WORK/image.json" user | tr '\0' '\n' | sed -n 2p)

docker_check() {
  echo "== docker: build the image, run it, wait for its health check, publish"
  DOCKER_BUILDKIT=1 docker build -t petrel-ci . || fail "docker build failed (BuildKit is needed for the cache mounts)"
  ok "docker build -t petrel-ci ."

  # The password file, made as packaging/README.md says: by the image, as
  # its own user, in a directory that user owns.
  local auth=$WORK/auth state port start=$SECONDS
  mkdir "$auth"
  chown "$IMG_UID:$IMG_GID" "$auth" 2>/dev/null || chmod 0777 "$auth"
  docker run --rm -v "$auth:/work" petrel-ci passwd -c -b /work/passwd "$MQTT_USER" "$MQTT_PASS" ||
    fail "the image could not make a password file (passwd -c -b)"
  ok "the image made the password file (petrel passwd -c -b) as uid $IMG_UID"

  local mqtt_port
  mqtt_port=$(fact "$WORK/image.json" listener_ports | tr '\0' '\n' | head -n1)
  CONTAINER=$(docker run -d -p "127.0.0.1::$mqtt_port" -v "$auth/passwd:/etc/petrel/passwd:ro" petrel-ci)
  while :; do
    state=$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$CONTAINER")
    case $state in
      "running healthy") break ;;
      running*) ;;
      *) docker logs "$CONTAINER" >&2 || true; fail "the container stopped: $state" ;;
    esac
    if [ $((SECONDS - start)) -ge 60 ] || [ "$state" = "running unhealthy" ]; then
      docker logs "$CONTAINER" >&2 || true
      fail "the container is not healthy after $((SECONDS - start))s ($state)"
    fi
    sleep 1
  done
  ok "docker: the container is healthy (HEALTHCHECK) after $((SECONDS - start))s"
  port=$(docker port "$CONTAINER" "$mqtt_port/tcp" | head -n1)
  mqtt_check "docker" "${port##*:}"
  docker kill -s HUP "$CONTAINER" >/dev/null
  sleep 1
  [ "$(docker inspect -f '{{.State.Running}}' "$CONTAINER")" = true ] || fail "docker: SIGHUP stopped the container"
  ok "docker: SIGHUP (reload) left the container running"
  docker stop -t 10 "$CONTAINER" >/dev/null
  [ "$(docker inspect -f '{{.State.ExitCode}}' "$CONTAINER")" = 0 ] || fail "docker stop: exit status not 0"
  ok "docker: docker stop (SIGTERM) ended the broker with exit status 0"
  docker rm -f -v "$CONTAINER" >/dev/null
  CONTAINER=""
}

reproduce_image() {
  echo "== runtime stage reproduced on this machine (no Docker daemon), with $BIN"
  local f=$WORK/image.json root=$WORK/image log=$WORK/image.log
  local binary config_path config_src data_dir password_file http_port timeout_s
  binary=$(fact "$f" binary)
  config_path=$(fact "$f" config_path)
  config_src=$(fact "$f" config_src)
  data_dir=$(fact "$f" data_dir)
  password_file=$(fact "$f" password_file)
  http_port=$(fact "$f" http_port)
  timeout_s=$(fact "$f" health_timeout)

  # Free ports for the configuration's listeners and its HTTP listener.
  local -a listener_ports
  mapfile -d '' -t listener_ports < <(fact "$f" listener_ports)
  local -a ports
  read -r -a ports < <(python3 "$HELPER" free-ports $((${#listener_ports[@]} + 1)))
  local map="{" i
  for i in "${!listener_ports[@]}"; do map+="\"${listener_ports[$i]}\": ${ports[$i]}, "; done
  local new_http=${ports[${#listener_ports[@]}]}
  map+="\"$http_port\": $new_http}"

  # The image's files: the binary, the configuration, the data directory
  # (the volume, owned by the image's user), and the mounted password file.
  install -D -m 0755 "$BIN" "$root$binary"
  mkdir -p "$root$(dirname "$config_path")"
  python3 "$HELPER" rewrite-config "$config_src" "$root$config_path" "$root" "$map" || exit 1
  install -d -m "$(fact "$f" data_dir_mode)" -o "$IMG_UID" -g "$IMG_GID" "$root$data_dir" 2>/dev/null ||
    install -d -m 0700 "$root$data_dir"
  mkdir -p "$root$(dirname "$password_file")"
  "$BIN" passwd -c -b "$root$password_file" "$MQTT_USER" "$MQTT_PASS" >/dev/null ||
    fail "petrel passwd -c -b could not make a password file"
  chown "$IMG_UID:$IMG_GID" "$root$password_file" 2>/dev/null || true
  ok "image root $root: $binary, $config_path (from $config_src; ports ${listener_ports[*]} $http_port -> ${ports[*]}), $data_dir owned by $IMG_UID:$IMG_GID, $password_file made by petrel passwd -c -b"

  # The container's environment: the image's PATH (under the root) and ENV.
  local path="" d
  IFS=: read -r -a dirs <<<"$(fact "$f" path)"
  for d in "${dirs[@]}"; do path+="${path:+:}$root$d"; done
  local -a envs image_env
  mapfile -d '' -t image_env < <(fact "$f" env)
  envs=(env -i "PATH=$path" HOME=/ "${image_env[@]}")

  local -a argv health a
  mapfile -d '' -t a < <(fact "$f" entrypoint)
  argv=("${a[@]}")
  mapfile -d '' -t a < <(fact "$f" cmd)
  for d in "${a[@]}"; do argv+=("$(with_root "$root" "$d")"); done
  mapfile -d '' -t a < <(fact "$f" health)
  for d in "${a[@]}"; do
    case $d in http://*|https://*) d=${d/:$http_port/:$new_http} ;; esac
    health+=("$d")
  done

  # The health check must fail while no broker answers, or it proves nothing.
  # (Docker enforces the HEALTHCHECK's --timeout from outside; so does this.)
  local rc=0
  as "$IMG_UID" "$IMG_GID" timeout "$timeout_s" "${envs[@]}" "${health[@]}" >"$WORK/health.out" 2>&1 || rc=$?
  case $rc in
    0) fail "the HEALTHCHECK command succeeds with no broker running: ${health[*]}" ;;
    126 | 127) cat "$WORK/health.out" >&2; fail "the HEALTHCHECK command cannot run in the image: ${health[*]}" ;;
  esac
  ok "HEALTHCHECK command runs in the image's PATH and fails (status $rc) while no broker runs: ${health[*]}"

  start_broker "$log" "$IMG_UID" "$IMG_GID" "${envs[@]}" "${argv[@]}"
  local start=$SECONDS
  wait_up "$log" 30 as "$IMG_UID" "$IMG_GID" timeout "$timeout_s" "${envs[@]}" "${health[@]}"
  ok "image: ENTRYPOINT+CMD (${argv[*]}) started as $IMG_UID:$IMG_GID; the HEALTHCHECK command succeeded after $((SECONDS - start))s"

  local written foreign
  written=$(find "$root$data_dir" -mindepth 1 | wc -l)
  foreign=$(find "$root$data_dir" -mindepth 1 ! -uid "$(stat -c %u "$root$data_dir")" | head -n3)
  [ "$written" -gt 0 ] || fail "the broker wrote nothing in its data directory $data_dir"
  [ -z "$foreign" ] || fail "files in the data directory not owned by the broker's user: $foreign"
  ok "image: the broker keeps its store in the volume $data_dir ($written entries, owned by its user)"

  mqtt_check "image" "${ports[0]}"
  kill -HUP "$BROKER_PID"
  sleep 1
  kill -0 "$BROKER_PID" 2>/dev/null || broker_died "$log" "SIGHUP stopped the broker"
  as "$IMG_UID" "$IMG_GID" timeout "$timeout_s" "${envs[@]}" "${health[@]}" >/dev/null 2>&1 ||
    broker_died "$log" "unhealthy after SIGHUP"
  ok "image: SIGHUP (reload) left the broker running and healthy"
  stop_broker "$log" 10 "image (STOPSIGNAL SIGTERM, docker stop's 10s)"
}

if [ "${PETREL_PACKAGING_DOCKER:-1}" != 0 ] && command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  docker_check
else
  if command -v docker >/dev/null; then
    note "docker info: no Docker daemon answers; checking the Dockerfile by script and reproducing its runtime stage"
  else
    note "docker is not installed; checking the Dockerfile by script and reproducing its runtime stage"
  fi
  reproduce_image
fi

# ------------------------------------------------------------ systemd unit

echo "== systemd unit"
UNIT=packaging/systemd/petrel.service
python3 "$HELPER" unit "$UNIT" "$WORK/unit.json" || exit 1

if command -v systemd-analyze >/dev/null; then
  # verify checks that ExecStart's binary exists: the one given here stands in.
  mkdir -p "$WORK/unit"
  unit_bin=$(fact "$WORK/unit.json" argv | tr '\0' '\n' | head -n1)
  sed "s#^ExecStart=$unit_bin #ExecStart=$BIN #" "$UNIT" >"$WORK/unit/petrel.service"
  rc=0
  out=$(cd "$WORK/unit" && systemd-analyze verify ./petrel.service 2>&1) || rc=$?
  if [ "$rc" -ne 0 ] || echo "$out" | grep -q 'petrel\.service'; then
    echo "$out" >&2
    fail "systemd-analyze verify $UNIT"
  fi
  [ -z "$out" ] || note "systemd-analyze verify said, of other units: $out"
  ok "systemd-analyze verify $UNIT (ExecStart's binary replaced by $BIN)"
  if out=$(cd "$WORK/unit" && systemd-analyze security --offline=yes --threshold=40 ./petrel.service 2>&1); then
    ok "systemd-analyze security --offline: $(echo "$out" | grep -o 'Overall exposure level.*' | tr -s ' ')"
  elif echo "$out" | grep -q 'Overall exposure level'; then
    echo "$out" | grep '✗' >&2 || true
    fail "systemd-analyze security: $(echo "$out" | grep -o 'Overall exposure level.*'), above 4.0"
  else
    note "systemd-analyze security --offline is not supported here (systemd older than 250): skipped"
  fi
else
  note "systemd-analyze is not installed: systemd-analyze verify skipped"
fi

reproduce_unit() {
  echo "== the unit's ExecStart reproduced on this machine, with $BIN"
  local f=$WORK/unit.json root=$WORK/systemd log=$WORK/systemd.log
  # A uid from the range systemd gives dynamic users.
  local uid=61184 gid=61184
  local config config_src data_dir cred_dir http_port
  config=$(fact "$f" config)
  config_src=$(fact "$f" config_src)
  data_dir=$(fact "$f" data_dir)
  cred_dir=$(fact "$f" credentials_dir)
  http_port=$(fact "$f" http_port)
  local -a listener_ports ports
  mapfile -d '' -t listener_ports < <(fact "$f" listener_ports)
  read -r -a ports < <(python3 "$HELPER" free-ports $((${#listener_ports[@]} + 1)))
  local map="{" i
  for i in "${!listener_ports[@]}"; do map+="\"${listener_ports[$i]}\": ${ports[$i]}, "; done
  local new_http=${ports[${#listener_ports[@]}]}
  map+="\"$http_port\": $new_http}"

  local -a argv creds a
  mapfile -d '' -t a < <(fact "$f" argv)
  install -D -m 0755 "$BIN" "$root${a[0]}"
  for i in "${a[@]}"; do
    # shellcheck disable=SC2016 # systemd's variable, written literally in ExecStart
    case $i in
      '${STATE_DIRECTORY}' | '$STATE_DIRECTORY') i=$data_dir ;;
    esac
    argv+=("$(with_root "$root" "$i")")
  done
  mkdir -p "$root$(dirname "$config")"
  python3 "$HELPER" rewrite-config "$config_src" "$root$config" "$root" "$map" || exit 1
  # StateDirectory=, StateDirectoryMode=0700: the dynamic user's.
  install -d -m 0700 -o "$uid" -g "$gid" "$root$data_dir" 2>/dev/null || install -d -m 0700 "$root$data_dir"
  # LoadCredential=ID:PATH: root's file, copied for the service's user only.
  mapfile -d '' -t creds < <(fact "$f" credentials)
  install -d -m 0700 -o "$uid" -g "$gid" "$root$cred_dir" 2>/dev/null || install -d -m 0700 "$root$cred_dir"
  for i in "${creds[@]}"; do
    local id=${i%%=*} src=${i#*=}
    [ "$id" = passwd ] || fail "credential $id: this check knows how to make only the password file"
    mkdir -p "$root$(dirname "$src")"
    "$BIN" passwd -c -b "$root$src" "$MQTT_USER" "$MQTT_PASS" >/dev/null ||
      fail "petrel passwd -c -b could not make $src"
    install -m 0400 -o "$uid" -g "$gid" "$root$src" "$root$cred_dir/$id" 2>/dev/null ||
      install -m 0400 "$root$src" "$root$cred_dir/$id"
  done
  ok "unit root $root: $config (from $config_src), state directory $data_dir, credentials ${creds[*]} copied to $cred_dir"

  local -a envs=(env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/ "STATE_DIRECTORY=$root$data_dir"
                 "CONFIGURATION_DIRECTORY=$root$(dirname "$config")" "CREDENTIALS_DIRECTORY=$root$cred_dir")
  local -a health=("$BIN" ctl --url "http://127.0.0.1:$new_http" health)
  start_broker "$log" "$uid" "$gid" "${envs[@]}" "${argv[@]}"
  local start=$SECONDS
  wait_up "$log" 30 timeout 3 "${health[@]}"
  ok "unit: ExecStart (${argv[*]}) started as uid $uid; petrel ctl health succeeded after $((SECONDS - start))s"
  mqtt_check "unit" "${ports[0]}"
  kill -HUP "$BROKER_PID" # ExecReload
  sleep 1
  kill -0 "$BROKER_PID" 2>/dev/null || broker_died "$log" "SIGHUP (ExecReload) stopped the broker"
  ok "unit: ExecReload's SIGHUP left the broker running"
  stop_broker "$log" 30 "unit (TimeoutStopSec)"
}
reproduce_unit

echo "packaging: ok"
