#!/usr/bin/env python3
"""Petrel side by side with Mosquitto and rumqttd.

Each broker runs pinned to CPU 0 (Petrel with one tokio worker), the load
generator (`petrel bench`) pinned to CPU 1. Every scenario runs RUNS times
per broker, brokers alternating within each round, in MQTT 3.1.1 and 5.0;
the table gives medians and Petrel/peer ratios (for latency and memory,
lower is better and the ratio is peer/Petrel, so above 1 means Petrel wins).

Usage: python3 benches/compare.py [--runs N] [--seconds S] [--only SCENARIO,...]
       [--brokers petrel,mosquitto,rumqttd] [--json FILE] [--baseline BIN]
       [--acl RULES] [--transport tcp|tls|ws|wss|quic]

--transport runs every broker on that transport with the same certificates
(made by openssl for the run) and the generator connecting over it:
Mosquitto with its TLS and websockets listeners; rumqttd only over TCP;
QUIC only Petrel (Mosquitto has none).
--baseline BIN adds a broker "before": another Petrel binary (an earlier
build) run exactly as Petrel is, so a change is measured side by side.
--brokers also takes petrel-process and petrel-fsync (this Petrel with its
durable store in a fresh data directory, in that durability mode; "petrel"
alone runs with --memory) and mosquitto-persist (Mosquitto with
persistence and autosave_on_changes).
--acl RULES adds a broker "acl": this Petrel with an ACL file of RULES
rules, the generator's own topics allowed by the last ones, so that every
check scans past the others; "vs acl" is then Petrel without the ACL over
Petrel with it (1.05 = the ACL costs 5%).
--chart FILE writes the ratios as an SVG chart (one panel per table row,
a bar per peer and protocol version, the line at 1 = level with the peer;
above it Petrel wins), with no plotting library.
Run `bash benches/compare.sh` to install what is missing first.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PETREL = os.path.join(ROOT, "target", "release", "petrel")
BASELINE = None
ACL_RULES = 0
TRANSPORT = "tcp"
PERSISTENT = False
CERTS = None  # (ca, cert, key) paths, for transports over TLS

# The generator runs, by name.
RUNS = {
    "pairs": ["pairs", "-n", "10"],
    "fanout": ["fanout", "-n", "10"],
    # One publisher to 1,000 subscribers: the per-delivery cost when every
    # message fans out wide (the window is per subscriber).
    "fanout1000": ["fanout", "-n", "1000"],
    "fanin": ["fanin", "-n", "10"],
    "qos1": ["qos1", "-n", "10", "--window", "64"],
    "latency": ["latency", "--rate", "2000"],
    "conns": ["conns", "--count", "10000"],
    "retained": ["retained", "--count", "100000"],
    # Many devices, each one message at a time at 10 msg/s, no batching,
    # to 10 wildcard subscribers: the broker's CPU per delivery, latency.
    "fleet0": ["fleet", "--count", "2000", "--rate", "20000", "-n", "10", "-q", "0"],
    "fleet1": ["fleet", "--count", "2000", "--rate", "20000", "-n", "10", "-q", "1"],
    # The same fleet at 2.5 msg/s a device, a rate every broker here
    # sustains: where the per-message wake-ups cost most.
    "fleet1low": ["fleet", "--count", "2000", "--rate", "5000", "-n", "10", "-q", "1"],
}

# Table rows: (label, run, figure, higher_is_better).
ROWS = [
    ("pairs msg/s", "pairs", "delivered_per_s", True),
    ("fanout msg/s", "fanout", "delivered_per_s", True),
    ("fanout 1000 msg/s", "fanout1000", "delivered_per_s", True),
    ("fanin msg/s", "fanin", "delivered_per_s", True),
    ("qos1 msg/s", "qos1", "delivered_per_s", True),
    ("latency p50 us", "latency", "p50_us", False),
    ("latency p99 us", "latency", "p99_us", False),
    ("latency p99.9 us", "latency", "p999_us", False),
    ("conns/s", "conns", "connections_per_s", True),
    ("KiB/conn connected", "conns", "kib_per_connection", False),
    ("KiB/conn idle 10 s", "conns", "kib_per_connection_after_idle", False),
    ("retained s", "retained", "seconds", False),
    ("fleet q0 us/deliv", "fleet0", "broker_cpu_us_per_delivered", False),
    ("fleet q0 p99 us", "fleet0", "p99_us", False),
    ("fleet q1 us/deliv", "fleet1", "broker_cpu_us_per_delivered", False),
    ("fleet q1 p50 us", "fleet1", "p50_us", False),
    ("fleet q1 p99 us", "fleet1", "p99_us", False),
    ("fleet q1 p99.9 us", "fleet1", "p999_us", False),
    ("fleet q1 2.5/s us/deliv", "fleet1low", "broker_cpu_us_per_delivered", False),
    ("fleet q1 2.5/s p50 us", "fleet1low", "p50_us", False),
    ("fleet q1 2.5/s p99 us", "fleet1low", "p99_us", False),
]


# Ports from outside the kernel's ephemeral range, never twice in one run
# (binding port 0 and letting go can hand the same port to the next bind or
# to an outgoing connection's local end): the CI scripts' allocator.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".ci"))
from broker_process import free_port  # noqa: E402


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"broker did not listen on {port}")


# Petrel in memory ("petrel"), with its durable store in each durability
# mode, an earlier build ("before", --baseline) and with an ACL ("acl").
PETRELS = ("petrel", "before", "acl", "petrel-process", "petrel-fsync")


class Broker:
    """One broker process pinned to CPU 0 with limits raised for the load."""

    def __init__(self, name, protocol, workdir):
        self.name = name
        self.protocol = protocol
        self.workdir = workdir
        self.port = free_port()
        self.proc = None

    def start(self):
        env = dict(os.environ)
        if self.name in PETRELS:
            conf = os.path.join(self.workdir, f"{self.name}.toml")
            acl = ""
            if self.name == "acl":
                path = os.path.join(self.workdir, "bench.acl")
                write_acl(path, ACL_RULES)
                acl = f'acl_file = "{path}"\n'
            listener = f'[[listener]]\nbind = "127.0.0.1:{self.port}"\n'
            if TRANSPORT != "tcp":
                # (Not written for TCP, the default: earlier builds don't know the key.)
                listener += f'transport = "{TRANSPORT}"\n'
            if CERTS:
                listener += f'certfile = "{CERTS[1]}"\nkeyfile = "{CERTS[2]}"\n'
            store = ""
            if self.name in ("petrel-process", "petrel-fsync"):
                # A fresh data directory each start.
                data = tempfile.mkdtemp(prefix=f"{self.name}-", dir=self.workdir)
                mode = self.name.split("-")[1]
                store = f'data_dir = "{data}"\ndurability = "{mode}"\n'
            with open(conf, "w") as f:
                f.write(
                    'log_level = "error"\nsys_interval = 0\n' + acl + store + listener +
                    "[limits]\nmax_connections = 30000\nmax_queued_messages = 10000\n"
                    "max_inflight = 128\nreceive_maximum = 128\n"
                )
            binary = BASELINE if self.name == "before" else PETREL
            # One core: one thread, no worker pool.
            cmd = [binary, "broker", "-c", conf, "--threads", "1"]
            if self.name in ("petrel", "acl"):
                # In memory, as before the durable store (which earlier
                # builds, "before", don't have nor know the flag of).
                cmd.append("--memory")
        elif self.name in ("mosquitto", "mosquitto-persist"):
            conf = os.path.join(self.workdir, "mosquitto.conf")
            with open(conf, "w") as f:
                f.write(
                    f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                    "max_connections -1\nmax_inflight_messages 128\n"
                    "max_queued_messages 10000\nset_tcp_nodelay true\n"
                )
                if TRANSPORT in ("ws", "wss"):
                    f.write("protocol websockets\n")
                if CERTS:
                    f.write(f"certfile {CERTS[1]}\nkeyfile {CERTS[2]}\n")
                if TRANSPORT in ("ws", "wss"):
                    # Mosquitto 2.0.11 starts no websockets listener unless
                    # another kind is also configured.
                    f.write(f"listener {free_port()} 127.0.0.1\n")
                if self.name == "mosquitto-persist":
                    # Its snapshot written on every change (the most
                    # durable Mosquitto gets; it still acknowledges first).
                    data = tempfile.mkdtemp(prefix="mosquitto-", dir=self.workdir)
                    os.chmod(data, 0o777)
                    f.write(
                        f"persistence true\npersistence_location {data}/\n"
                        "autosave_on_changes true\nautosave_interval 1\n"
                    )
            cmd = [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", conf]
        else:
            conf = os.path.join(self.workdir, "rumqttd.toml")
            other = free_port()
            v4, v5 = (self.port, other) if self.protocol == "311" else (other, self.port)
            with open(conf, "w") as f:
                f.write(
                    "id = 0\n[router]\nid = 0\nmax_connections = 30000\n"
                    "max_outgoing_packet_count = 200\nmax_segment_size = 104857600\n"
                    "max_segment_count = 10\n"
                    f'[v4.1]\nname = "v4-1"\nlisten = "127.0.0.1:{v4}"\nnext_connection_delay_ms = 0\n'
                    "[v4.1.connections]\nconnection_timeout_ms = 60000\nmax_payload_size = 1048576\n"
                    "max_inflight_count = 128\ndynamic_filters = true\n"
                    f'[v5.1]\nname = "v5-1"\nlisten = "127.0.0.1:{v5}"\nnext_connection_delay_ms = 0\n'
                    "[v5.1.connections]\nconnection_timeout_ms = 60000\nmax_payload_size = 1048576\n"
                    "max_inflight_count = 128\n"
                )
            cmd = [shutil.which("rumqttd") or os.path.expanduser("~/.cargo/bin/rumqttd"), "-c", conf]
        self.proc = subprocess.Popen(
            ["taskset", "-c", "0"] + cmd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=lambda: resource_limits(),
        )
        if TRANSPORT == "quic":
            time.sleep(0.5)  # UDP: nothing to probe
        else:
            wait_port(self.port)
        time.sleep(0.2)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def write_acl(path, rules):
    """An ACL file of `rules` rules for anonymous clients: rules - 2 that
    match nothing the generator does, then the two that allow its topics
    (every topic `petrel bench` uses starts with `bench/`)."""
    with open(path, "w") as f:
        f.write("# generated by benches/compare.py\n")
        for i in range(max(rules - 2, 0)):
            f.write(f"topic readwrite site/{i}/+/telemetry\n")
        f.write("topic write bench/#\ntopic read bench/#\n")


def make_certs(workdir):
    """A CA and a server certificate for localhost (P-256), for the run."""
    def openssl(*a):
        subprocess.run(["openssl", *a], check=True, capture_output=True)
    p = lambda n: os.path.join(workdir, n)  # noqa: E731
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", p("ca.key"), "-out", p("ca.pem"), "-days", "2", "-subj", "/CN=bench CA")
    with open(p("ext"), "w") as f:
        f.write("basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", p("server.key"), "-out", p("server.csr"), "-subj", "/CN=localhost")
    openssl("x509", "-req", "-in", p("server.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
            "-CAcreateserial", "-out", p("server.pem"), "-days", "2", "-extfile", p("ext"))
    for n in ("ca.pem", "server.pem", "server.key"):
        os.chmod(p(n), 0o644)
    return p("ca.pem"), p("server.pem"), p("server.key")


def resource_limits():
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except Exception:
        pass


# Idle connections are measured again after this long: an idle connection
# is one that has been idle a while (Petrel hibernates them after 5 s).
CONNS_IDLE_SECONDS = 10


def run_generator(broker, flags, seconds, protocol):
    if flags[0] == "conns":
        seconds = CONNS_IDLE_SECONDS
    cmd = ["taskset", "-c", "1", PETREL, "bench"] + flags + [
        "-p", str(broker.port), "-s", str(seconds), "-V", protocol, "--json",
    ]
    if flags[0] in ("conns", "fleet"):
        cmd += ["--broker-pid", str(broker.proc.pid)]
    if PERSISTENT:
        cmd += ["--persistent"]
    if TRANSPORT != "tcp":
        cmd += ["--transport", TRANSPORT, "--host", "localhost"]
    if CERTS:
        cmd += ["--cafile", CERTS[0]]
    env = dict(os.environ, TOKIO_WORKER_THREADS="1")
    out = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=300,
        preexec_fn=lambda: resource_limits(),
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip()[-300:] or "generator failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def svg_chart(table, peers):
    """The table's ratios as an SVG: one panel per row label, in a grid,
    each with a bar per (peer, protocol), a log scale from 1/8 to 16 and a
    line at 1 (level). Above the line Petrel does better, whichever way the
    figure counts (the ratios are oriented so)."""
    import math
    from xml.sax.saxutils import escape

    labels = []
    for row in table:
        if row["scenario"] not in labels:
            labels.append(row["scenario"])
    protocols = []
    for row in table:
        if row["protocol"] not in protocols:
            protocols.append(row["protocol"])
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    series = [(p, v) for p in peers for v in protocols]
    cols = 3
    pw, ph, pad = 260, 170, 40  # panel size, inner padding
    rows_n = max(1, math.ceil(len(labels) / cols))
    width, height = cols * pw + 20, rows_n * ph + 70
    lo, hi = math.log2(1 / 8), math.log2(16)

    def y_of(ratio, top, h):
        r = min(max(math.log2(max(ratio, 1e-9)), lo), hi)
        return top + h - (r - lo) / (hi - lo) * h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           '<text x="10" y="18" font-size="14">Petrel against each peer: ratio per scenario '
           '(above 1: Petrel better; log scale)</text>']
    for i, (peer, ver) in enumerate(series):
        x = 10 + i * 150
        out.append(f'<rect x="{x}" y="28" width="10" height="10" fill="{colours[i % len(colours)]}"/>')
        out.append(f'<text x="{x + 14}" y="37">vs {escape(peer)} {escape(ver)}</text>')
    for n, label in enumerate(labels):
        px, py = 10 + (n % cols) * pw, 50 + (n // cols) * ph
        top, h = py + 30, ph - pad - 10
        out.append(f'<text x="{px + 5}" y="{py + 14}" font-weight="bold">{escape(label)}</text>')
        out.append(f'<line x1="{px + 30}" x2="{px + pw - 10}" y1="{y_of(1, top, h):.1f}" '
                   f'y2="{y_of(1, top, h):.1f}" stroke="black" stroke-dasharray="3,2"/>')
        for tick in (0.25, 1, 4, 16):
            ty = y_of(tick, top, h)
            out.append(f'<text x="{px + 2}" y="{ty + 4:.1f}" fill="#666">{tick:g}</text>')
        bw = (pw - 50) / max(1, len(series))
        for i, (peer, ver) in enumerate(series):
            ratio = next((r["ratios"].get(peer) for r in table
                          if r["scenario"] == label and r["protocol"] == ver), None)
            if ratio is None:
                continue
            y1, y0 = y_of(ratio, top, h), y_of(1, top, h)
            x = px + 35 + i * bw
            out.append(f'<rect x="{x:.1f}" y="{min(y0, y1):.1f}" width="{bw - 4:.1f}" '
                       f'height="{abs(y0 - y1):.1f}" fill="{colours[i % len(colours)]}"/>')
            out.append(f'<text x="{x:.1f}" y="{min(y0, y1) - 2:.1f}" font-size="9">{ratio:.2f}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--only", default="")
    ap.add_argument("--brokers", default="petrel,mosquitto,rumqttd")
    ap.add_argument("--protocols", default="311,5")
    ap.add_argument("--json", default="")
    ap.add_argument("--chart", default="", help="write the ratios as an SVG chart to this file")
    ap.add_argument("--baseline", default="")
    ap.add_argument("--acl", type=int, default=0)
    ap.add_argument("--transport", default="tcp", choices=["tcp", "tls", "ws", "wss", "quic"])
    ap.add_argument("--persistent", action="store_true",
                    help="clients ask for sessions that outlive them (what a durable store keeps)")
    args = ap.parse_args()
    global BASELINE, ACL_RULES, TRANSPORT, CERTS, PERSISTENT
    ACL_RULES = args.acl
    TRANSPORT = args.transport
    PERSISTENT = args.persistent
    brokers = args.brokers.split(",")
    if TRANSPORT != "tcp":
        skipped = [b for b in brokers if b == "rumqttd" or (TRANSPORT == "quic" and b == "mosquitto")]
        for b in skipped:
            print(f"note: {b} is not run over {TRANSPORT}")
        brokers = [b for b in brokers if b not in skipped]
    if args.baseline:
        BASELINE = os.path.abspath(args.baseline)
        brokers.append("before")
    if ACL_RULES > 0:
        brokers.append("acl")
    only = set(filter(None, args.only.split(",")))
    results = {}  # (scenario flags name, protocol, broker) -> [reports]
    runs = [r for r in RUNS if not only or r in only]
    workdir = tempfile.mkdtemp(prefix="petrel-compare-")
    # Mosquitto started as root drops to its own user, which must read here.
    os.chmod(workdir, 0o755)
    if TRANSPORT in ("tls", "wss", "quic"):
        CERTS = make_certs(workdir)
    total = len(runs) * len(args.protocols.split(",")) * args.runs * len(brokers)
    done = 0
    for run in runs:
        flags = RUNS[run]
        for protocol in args.protocols.split(","):
            for r in range(args.runs):
                # Alternate the order each round so drift hits every broker.
                order = brokers if r % 2 == 0 else list(reversed(brokers))
                for b in order:
                    done += 1
                    broker = Broker(b, protocol, workdir)
                    try:
                        broker.start()
                        rep = run_generator(broker, flags, args.seconds, protocol)
                        results.setdefault((run, protocol, b), []).append(rep)
                        status = " ".join(
                            f"{k}={v}" for k, v in rep.items()
                            if k not in ("scenario", "protocol", "clients", "size")
                        )
                    except Exception as e:  # a broker that fails a scenario is reported, not fatal
                        status = f"FAILED: {e}"
                    finally:
                        broker.stop()
                    print(f"[{done}/{total}] {run:8} {protocol:3} {b:9} {status}", flush=True)
    print()
    header = f"{'scenario':17} {'ver':3} " + " ".join(f"{b:>12}" for b in brokers)
    peers = [b for b in brokers if b != "petrel"]
    header += "".join(f" {'vs ' + p:>13}" for p in peers) + "  generator CPU"
    print(header)
    table = []
    for name, key, figure, higher in ROWS:
        if only and key not in only:
            continue
        for protocol in args.protocols.split(","):
            med = {}
            cpu = {}
            for b in brokers:
                reps = results.get((key, protocol, b), [])
                vals = [r[figure] for r in reps if r.get(figure) is not None]
                med[b] = statistics.median(vals) if vals else None
                cpus = [r["generator_cpu_percent"] for r in reps if r.get("generator_cpu_percent") is not None]
                cpu[b] = statistics.median(cpus) if cpus else None
            row = f"{name:17} {protocol:3} " + " ".join(
                f"{med[b]:>12.1f}" if med[b] is not None else f"{'-':>12}" for b in brokers
            )
            ratios = {}
            for p in peers:
                if med.get("petrel") and med.get(p):
                    ratio = med["petrel"] / med[p] if higher else med[p] / med["petrel"]
                    ratios[p] = ratio
                    row += f" {ratio:>12.2f}x"
                else:
                    row += f" {'-':>13}"
            row += "  " + " ".join(f"{int(cpu[b])}%" if cpu[b] is not None else "-" for b in brokers)
            print(row)
            table.append({"scenario": name, "protocol": protocol, "figure": figure,
                          "higher_is_better": higher, "medians": med, "ratios": ratios,
                          "generator_cpu_percent": cpu})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(table, f, indent=1)
    if args.chart:
        with open(args.chart, "w") as f:
            f.write(svg_chart(table, peers))
        print(f"chart: {args.chart}")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
