#!/usr/bin/env python3
"""A Petrel cluster side by side with one Petrel node, in one run.

Starts one broker alone and a cluster of three (`[cluster]`, on
127.0.0.1, each node with its own data directory, durability `process`
for all four), and measures with `petrel bench`:

* throughput: pairs (QoS 0) and qos1 pairs, 10 publishers, on the single
  node; on the cluster with publishers and subscribers on the same node
  (what the cluster costs a message that stays local: the route lookup);
  and with publishers on node 1 and subscribers on node 2, so that every
  message crosses between nodes;
* broker CPU per delivered message (every node's user + system CPU, from
  /proc, over the measured window), the same three ways: the cost of a
  forwarded message against a local delivery;
* route commit: SUBSCRIBE to SUBACK for a new filter on a follower
  (committed through the leader and applied on every node), median and
  p99 of 200;
* session takeover: CONNECT to CONNACK for a persistent session (with a
  subscription and a queued message) that moves to another node at each
  connection, median and p99 of 200 (--takeover-only: just this);
* retained publishes (--retained-only: just these): PUBLISH to PUBACK of
  a retained QoS 1 message on one broker and on a node of the cluster,
  where it is agreed through Raft;
* memory: --count idle connections, each subscribed to its own topic,
  spread over the three nodes (a third on each), against the same count
  on the single node: each node's resident memory grows by its own third
  of the connections plus every node's routes.

Usage: python3 benches/cluster.py [--seconds S] [--runs N] [--count N]
       [--json FILE]

This machine has 2 cores: the three nodes and the load generator share
them, so the cluster can't be faster here than one node; the figures are
costs (CPU per message, memory, latency), which do not depend on how many
cores there are, and throughput side by side for what it is.
"""

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PETREL = os.path.join(ROOT, "target", "release", "petrel")


# Ports from outside the kernel's ephemeral range, never twice in one run
# (binding port 0 and letting go can hand the same port to the next bind or
# to an outgoing connection's local end): the CI scripts' allocator.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".ci"))
from broker_process import free_port  # noqa: E402


def wait_port(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Broker:
    """A `petrel broker` process with its own configuration."""

    def __init__(self, workdir, name, mqtt, cluster=None):
        self.mqtt = mqtt
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir)
        conf = os.path.join(self.dir, "petrel.toml")
        with open(conf, "w") as f:
            f.write(f'data_dir = "{self.dir}/data"\nsys_interval = 1\n\n')
            f.write(f'[[listener]]\nbind = "127.0.0.1:{mqtt}"\n\n')
            if cluster:
                f.write(cluster)
        self.log = open(os.path.join(self.dir, "log"), "w")
        self.proc = subprocess.Popen(
            [PETREL, "broker", "-c", conf], stdout=subprocess.DEVNULL, stderr=self.log
        )
        wait_port(mqtt)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def start_cluster(workdir):
    binds = [free_port() for _ in range(3)]
    peers = ", ".join(f'"{i + 1}@127.0.0.1:{p}"' for i, p in enumerate(binds))
    nodes = []
    for i in range(3):
        cluster = (
            f"[cluster]\nnode_id = {i + 1}\nbind = \"127.0.0.1:{binds[i]}\"\n"
            f"peers = [{peers}]\n"
        )
        nodes.append(Broker(workdir, f"node{i + 1}", free_port(), cluster))
    # A leader agreed by all three.
    end = time.time() + 30
    while time.time() < end:
        leaders = {sys_value(n.mqtt, "leader") for n in nodes}
        if len(leaders) == 1 and leaders.pop() not in ("", "none"):
            return nodes
        time.sleep(0.1)
    raise RuntimeError("the cluster elected no leader")


def sys_value(port, what):
    out = subprocess.run(
        [PETREL, "sub", "-h", "127.0.0.1", "-p", str(port), "-C", "1", "-W", "2",
         "-t", f"$SYS/broker/cluster/{what}"],
        capture_output=True, text=True,
    )
    return out.stdout.strip()


def bench(args, port, sub_port, pids):
    cmd = [PETREL, "bench", *args, "-p", str(port), "--json"]
    if sub_port is not None:
        cmd += ["--sub-port", str(sub_port)]
    before = sum(cpu_seconds(p) for p in pids)
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    elapsed = time.time() - t0
    cpu = sum(cpu_seconds(p) for p in pids) - before
    if out.returncode != 0:
        raise RuntimeError(f"{cmd}: {out.stderr[-2000:]}")
    report = json.loads(out.stdout.strip().splitlines()[-1])
    return report, cpu, elapsed


def mqtt_string(s):
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def remaining(n):
    out = b""
    while True:
        byte = n % 128
        n //= 128
        if n:
            byte |= 0x80
        out += bytes([byte])
        if not n:
            return out


def connected(port, client_id):
    """A 3.1.1 connection (Clean Session) to `port`, CONNACK read, with
    Nagle off."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = mqtt_string("MQTT") + bytes([4, 2]) + struct.pack("!H", 60) + mqtt_string(client_id)
    s.sendall(bytes([0x10]) + remaining(len(body)) + body)
    assert s.recv(4)[0] == 0x20
    return s


def route_commit(port, count):
    """SUBSCRIBE to SUBACK for `count` new filters, one at a time (3.1.1,
    hand-written packets: no client library's own latency)."""
    s = connected(port, f"rc-{os.getpid()}")
    times = []
    for i in range(count):
        body = struct.pack("!H", i + 1) + mqtt_string(f"rc/{os.getpid()}/{i}/#") + bytes([1])
        t0 = time.perf_counter()
        s.sendall(bytes([0x82]) + remaining(len(body)) + body)
        got = s.recv(5)
        times.append(time.perf_counter() - t0)
        assert got[0] == 0x90 and got[4] < 0x80, got
    s.close()
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


def takeover(ports, count):
    """CONNECT to CONNACK for one persistent session (3.1.1, Clean
    Session 0) that moves to another node at each connection: the claim
    through Raft, the old node handing the session on (subscription and
    queue), the new node storing it. The session holds a subscription and
    a queued message each time. Median and p99 of `count`."""
    cid = mqtt_string(f"takeover-{os.getpid()}")

    def connect(port):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = mqtt_string("MQTT") + bytes([4, 0]) + struct.pack("!H", 60) + cid
        t0 = time.perf_counter()
        s.sendall(bytes([0x10]) + remaining(len(body)) + body)
        ack = s.recv(4)
        took = time.perf_counter() - t0
        assert ack[0] == 0x20 and ack[3] == 0, ack
        return s, took, ack[2] & 1

    def publish(port, i):
        s = socket.create_connection(("127.0.0.1", port))
        body = mqtt_string("MQTT") + bytes([4, 2]) + struct.pack("!H", 60) + mqtt_string(f"to-{os.getpid()}")
        s.sendall(bytes([0x10]) + remaining(len(body)) + body)
        assert s.recv(4)[0] == 0x20
        body = mqtt_string(f"takeover/{os.getpid()}") + struct.pack("!H", 1) + str(i).encode()
        s.sendall(bytes([0x32]) + remaining(len(body)) + body)
        assert s.recv(4)[0] == 0x40
        s.sendall(bytes([0xE0, 0]))
        s.close()

    s, _, _ = connect(ports[0])
    body = struct.pack("!H", 1) + mqtt_string(f"takeover/{os.getpid()}") + bytes([1])
    s.sendall(bytes([0x82]) + remaining(len(body)) + body)
    assert s.recv(5)[0] == 0x90
    s.sendall(bytes([0xE0, 0]))
    s.close()
    times = []
    for i in range(count):
        # A message waits in the session, published on the third node.
        publish(ports[2], i)
        port = ports[(i + 1) % 2]
        s, took, present = connect(port)
        assert present == 1, "the session did not come along"
        # Its queued message arrives (QoS 1: acknowledged).
        got = b""
        while len(got) < 2 or len(got) < 2 + got[1]:
            got += s.recv(256)
        assert got[0] & 0xF0 == 0x30, got
        pid = got[4 + struct.unpack("!H", got[2:4])[0]:][:2]
        s.sendall(bytes([0x40, 2]) + pid)
        s.sendall(bytes([0xE0, 0]))
        s.close()
        times.append(took)
    times.sort()
    return statistics.median(times), times[max(int(len(times) * 0.99) - 1, 0)]


def retained_publish(port, count):
    """PUBLISH to PUBACK for `count` retained QoS 1 messages, one at a
    time, each on a topic of its own (3.1.1, hand-written packets). In a
    cluster the PUBACK waits for the message to be agreed through Raft and
    applied on every node that answers. Median and p99."""
    s = connected(port, f"ret-{os.getpid()}-{port}")
    times = []
    for i in range(count):
        pid = i % 65535 + 1
        body = mqtt_string(f"ret/{os.getpid()}/{i}") + struct.pack("!H", pid) + b"retained value"
        t0 = time.perf_counter()
        s.sendall(bytes([0x33]) + remaining(len(body)) + body)
        got = s.recv(4)
        times.append(time.perf_counter() - t0)
        assert got[0] == 0x40 and struct.unpack("!H", got[2:4])[0] == pid, got
    # Cleared again, so the brokers hold no more than they did.
    for i in range(count):
        body = mqtt_string(f"ret/{os.getpid()}/{i}")
        s.sendall(bytes([0x31]) + remaining(len(body)) + body)
    s.sendall(bytes([0xE0, 0]))
    s.close()
    times.sort()
    return statistics.median(times), times[max(int(len(times) * 0.99) - 1, 0)]


def memory(nodes, count, seconds):
    """Idle subscribed connections, a share on each of `nodes`: each
    node's memory growth, and the routes each holds."""
    share = count // len(nodes)
    before = [rss_bytes(n.proc.pid) for n in nodes]
    procs = [
        subprocess.Popen(
            [PETREL, "bench", "conns", "--count", str(share), "-s", str(seconds),
             "-p", str(n.mqtt), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        for n in nodes
    ]
    # Sampled while every share is held (the generators hold them for
    # `seconds` after connecting).
    peak = [0] * len(nodes)
    routes = [0] * len(nodes)
    last_routes = 0.0
    while any(p.poll() is None for p in procs):
        for i, n in enumerate(nodes):
            peak[i] = max(peak[i], rss_bytes(n.proc.pid))
        if len(nodes) > 1 and time.time() - last_routes > 1:
            last_routes = time.time()
            for i, n in enumerate(nodes):
                v = sys_value(n.mqtt, "routes")
                routes[i] = max(routes[i], int(v) if v.isdigit() else 0)
        time.sleep(0.2)
    for p in procs:
        p.communicate()
    return [(peak[i] - before[i]) for i in range(len(nodes))], share, routes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--count", type=int, default=30000)
    ap.add_argument("--json")
    ap.add_argument("--takeover-only", action="store_true",
                    help="only the session takeover between nodes")
    ap.add_argument("--retained-only", action="store_true",
                    help="only retained publishes, one broker and a node of the cluster")
    a = ap.parse_args()
    if not os.path.exists(PETREL):
        sys.exit(f"build it first: cargo build --release -p petrel ({PETREL})")
    work = tempfile.mkdtemp(prefix="petrel-cluster-bench-")
    single = Broker(work, "single", free_port())
    nodes = start_cluster(work)
    all_pids = [n.proc.pid for n in nodes]
    results = {}
    try:
        if a.retained_only:
            for label, port in [("one broker", single.mqtt), ("cluster of three", nodes[0].mqtt)]:
                runs = [retained_publish(port, 500) for _ in range(a.runs)]
                median = statistics.median(r[0] for r in runs)
                p99 = statistics.median(r[1] for r in runs)
                results[f"retained_ms {label}"] = {"median": median * 1e3, "p99": p99 * 1e3}
                print(f"retained QoS 1 PUBLISH to PUBACK, {label}: median {median * 1e3:.2f} ms, "
                      f"p99 {p99 * 1e3:.2f} ms (medians of {a.runs} runs of 500)", flush=True)
            return
        median, p99 = takeover([n.mqtt for n in nodes], 200)
        results["takeover_ms"] = {"median": median * 1e3, "p99": p99 * 1e3}
        print(f"session takeover between nodes: median {median * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms",
              flush=True)
        if a.takeover_only:
            return
        scenarios = {
            "pairs": ["pairs", "-n", "10", "-s", str(a.seconds)],
            "qos1": ["qos1", "-n", "10", "-s", str(a.seconds)],
        }
        for name, args in scenarios.items():
            rows = {"single": [], "cluster, same node": [], "cluster, across nodes": []}
            for _ in range(a.runs):
                for label, port, sub, pids in [
                    ("single", single.mqtt, None, [single.proc.pid]),
                    ("cluster, same node", nodes[0].mqtt, None, all_pids),
                    ("cluster, across nodes", nodes[0].mqtt, nodes[1].mqtt, all_pids),
                ]:
                    report, cpu, elapsed = bench(args, port, sub, pids)
                    rate = report["delivered_per_s"]
                    # CPU over the whole run (warm-up included) per message
                    # delivered at the measured rate over that time.
                    us = 1e6 * cpu / (rate * elapsed)
                    rows[label].append((rate, us))
                    print(f"{name:6} {label:22} {rate:12.0f} msg/s  {us:6.2f} broker CPU-us/msg",
                          flush=True)
            results[name] = {
                k: {
                    "delivered_per_s": statistics.median(r[0] for r in v),
                    "cpu_us_per_msg": statistics.median(r[1] for r in v),
                }
                for k, v in rows.items()
            }
        median, p99 = route_commit(nodes[1].mqtt, 200)
        results["route_commit_ms"] = {"median": median * 1e3, "p99": p99 * 1e3}
        print(f"route commit on a node: median {median * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms")
        grown, share, routes = memory(nodes, a.count, 8)
        single_grown, _, _ = memory([single], a.count, 8)
        results["memory"] = {
            "connections": a.count,
            "per_node_bytes": grown,
            "routes_seen": routes,
            "single_bytes": single_grown[0],
        }
        for i, g in enumerate(grown):
            print(f"memory: node {i + 1} grew {g / 2**20:.1f} MiB for {share} connections, "
                  f"holding {routes[i]} routes at most")
        print(f"memory: one node alone grew {single_grown[0] / 2**20:.1f} MiB for {a.count} connections")
    finally:
        single.stop()
        for n in nodes:
            n.stop()
    print()
    print("| scenario | single node | cluster, same node | cluster, across nodes |")
    print("|---|---|---|---|")
    for name in ("pairs", "qos1"):
        r = results[name]
        cells = []
        for k in ("single", "cluster, same node", "cluster, across nodes"):
            x = r[k]
            ratio = x["delivered_per_s"] / r["single"]["delivered_per_s"]
            cells.append(f"{x['delivered_per_s']:,.0f} msg/s ({ratio:.2f}x), "
                         f"{x['cpu_us_per_msg']:.2f} CPU-us/msg")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
