#!/usr/bin/env python3
"""Bounded soak run of a Petrel broker on loopback, sampling its memory.

Usage: python3 benches/soak.py --petrel PATH [--minutes N] [--out DIR]
       [--sample-seconds 10] [--warmup-minutes W] [--rate R] [--cooldown-seconds C]

Starts ONE broker, `PATH broker --data-dir TMPDIR -p PORT` (a free port, a
fresh temporary data directory so the durable store is exercised), puts a
mixed load on it from this process for --minutes, and kills only that pid
at the end (SIGTERM, SIGKILL after 10 s), also on Ctrl-C or an exception.

The load (moderate: a few hundred messages a second through the broker at
--rate 1), MQTT 3.1.1 and 5.0 mixed, every client on 127.0.0.1:
  * steady publishers to busy/N/data at QoS 0, 1 and 2;
  * retained updates on ~1000 topics ret/G/N, some cleared (empty payload);
  * fan-out subscribers (busy/#, busy/+/data) and a shared group $share/g/busy/#;
  * subscription churn over changing wildcard and shared filters;
  * connect/disconnect churn: clean and persistent sessions, wills, and
    connections dropped without DISCONNECT (FIN or RST) so that wills fire;
  * takeovers: a second connection with a connected client's id;
  * persistent sessions that go offline for a while and come back;
  * slow subscribers (raw sockets that read a few KiB every few seconds, and
    a 5.0 client with Receive Maximum 5 whose loop runs one second in ten),
    so their queues fill and the broker drops by its bounds;
  * a monitor on $SYS/broker/# (connected clients, drops, retained, ...).

Every --sample-seconds it reads the broker's VmRSS (and RssAnon/RssFile) from
/proc/PID/status and its CPU time from /proc/PID/stat, writes a row to
OUT/soak.csv and prints it. At the end it prints a summary (RSS at the end of
warm-up and at the end, min/max after warm-up, least-squares slope in KiB per
hour) and a verdict: "flat" when every RSS sample after warm-up is within
±10% of their median and the slope is below 5% of the median per hour, else
"GROWING". OUT/soak.png is drawn only when matplotlib is importable.
"""

import argparse
import csv
import os
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

# paho-mqtt 2.x refuses a Maximum Packet Size above 268,435,455 in a CONNACK as a
# malformed packet, and closes the connection. Petrel's default limit (256 MiB,
# 268,435,456) is told to 5.0 clients as is, so no paho 5.0 client could connect to
# a broker on its defaults. MQTT 5.0 allows up to 268,435,460 (remaining length
# 268,435,455 plus a 5-byte fixed header): accept those here, so the soak runs the
# broker as configured by default.
_paho_setattr = Properties.__setattr__


def _lenient_setattr(self, name, value):
    if (name.replace(" ", "") == "MaximumPacketSize" and isinstance(value, int)
            and 268435455 < value <= 268435460):
        object.__setattr__(self, "MaximumPacketSize", value)
    else:
        _paho_setattr(self, name, value)


Properties.__setattr__ = _lenient_setattr

HOST = "127.0.0.1"
V2 = mqtt.CallbackAPIVersion.VERSION2
STOP = threading.Event()
PORT = 0
RATE = 1.0

# ---------------------------------------------------------------- counters


class Counters:
    """Load-side counters, shared by every thread."""

    FIELDS = ("connects", "published", "received", "errors", "drops", "takeovers",
              "wills_rx", "sub_ops", "retained_updates", "offline_cycles")

    def __init__(self):
        self.lock = threading.Lock()
        self.v = dict.fromkeys(self.FIELDS, 0)
        self.err_kinds = {}

    def add(self, field, n=1):
        with self.lock:
            self.v[field] += n

    def err(self, kind, detail=None):
        if STOP.is_set():  # clients closing at the end of the run are not errors
            return
        with self.lock:
            self.v["errors"] += 1
            n = self.err_kinds.get(kind, 0) + 1
            self.err_kinds[kind] = n
        if n <= 3:  # the first few of each kind, for the log
            print(f"  [error {kind}#{n}] {detail if detail is not None else ''}",
                  file=sys.stderr, flush=True)

    def snapshot(self):
        with self.lock:
            return dict(self.v)


C = Counters()
SYS = {}  # latest numeric $SYS/broker/... values
SYS_LOCK = threading.Lock()


def guarded(name, body):
    """Run body() until STOP; an exception is counted and the body restarts."""
    def run():
        while not STOP.is_set():
            try:
                body()
            except Exception as e:  # never let one client end the soak
                C.err(f"{name}:{type(e).__name__}", f"{e!r}\n{traceback.format_exc(limit=3)}")
                STOP.wait(1.0)
    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    return t


def payload(lo=16, hi=256):
    if random.random() < 0.02:
        return random.randbytes(random.randint(1024, 4096))
    return random.randbytes(random.randint(lo, hi))


def pick_qos():
    r = random.random()
    return 0 if r < 0.5 else (1 if r < 0.85 else 2)


# ---------------------------------------------------------------- paho helpers


def make_client(cid, proto, clean=True, will=None, role="", kind="", receive_max=None,
                expiry=None):
    """A paho client with counting callbacks. Its state is in c.user_data_get()."""
    st = {"connected": False, "failed": None, "closed": False, "expect_close": False,
          "session_present": False, "role": role, "kind": kind, "on_conn": None,
          "received": 0}
    if proto == 5:
        c = mqtt.Client(V2, client_id=cid, protocol=mqtt.MQTTv5, userdata=st)
    else:
        c = mqtt.Client(V2, client_id=cid, protocol=mqtt.MQTTv311, clean_session=clean,
                        userdata=st)
    c.max_inflight_messages_set(50)
    c.max_queued_messages_set(2000)
    c.reconnect_delay_set(1, 5)
    if will is not None:
        topic, wq, delay = will
        wp = None
        if proto == 5 and delay:
            wp = Properties(PacketTypes.WILLMESSAGE)
            wp.WillDelayInterval = delay
        c.will_set(topic, payload=f"gone {cid}".encode(), qos=wq, retain=False,
                   properties=wp)

    def on_connect(client, ud, flags, rc, props):
        if rc.is_failure:
            ud["failed"] = str(rc)
            C.err(f"connack:{ud['role']}", f"{client._client_id!r}: {rc}")
            return
        ud["connected"] = True
        ud["closed"] = False
        ud["session_present"] = bool(getattr(flags, "session_present", False))
        C.add("connects")
        if ud["on_conn"] is not None:
            try:
                ud["on_conn"](client, ud)
            except Exception as e:
                C.err(f"on_connect:{ud['role']}", repr(e))

    def on_disconnect(client, ud, flags, rc, props):
        was = ud["connected"]
        ud["connected"] = False
        ud["closed"] = True
        if not ud["expect_close"] and was and (rc.is_failure or rc.value != 0):
            C.err(f"disconnected:{ud['role']}", f"{client._client_id!r}: {rc}")

    def on_message(client, ud, msg):
        C.add("received")
        ud["received"] += 1
        if ud["kind"] == "will":
            C.add("wills_rx")

    def on_subscribe(client, ud, mid, rcs, props):
        for rc in rcs:
            if rc.is_failure:
                C.err(f"suback:{ud['role']}", f"{client._client_id!r}: {rc}")

    c.on_connect = on_connect
    c.on_disconnect = on_disconnect
    c.on_message = on_message
    c.on_subscribe = on_subscribe
    c._soak_proto = proto
    c._soak_clean = clean
    c._soak_expiry = expiry
    c._soak_receive_max = receive_max
    return c


def conn_props(c):
    if c._soak_proto != 5:
        return None
    p = Properties(PacketTypes.CONNECT)
    if c._soak_expiry:
        p.SessionExpiryInterval = c._soak_expiry
    if c._soak_receive_max:
        p.ReceiveMaximum = c._soak_receive_max
    return p


def connect_kwargs(c):
    kw = {"keepalive": 30}
    if c._soak_proto == 5:
        kw["clean_start"] = c._soak_clean
        kw["properties"] = conn_props(c)
    return kw


def start_async(c):
    """Connect in paho's own thread, which reconnects after errors."""
    c.connect_async(HOST, PORT, **connect_kwargs(c))
    c.loop_start()


def stop_async(c):
    st = c.user_data_get()
    st["expect_close"] = True
    try:
        if st["connected"]:
            c.disconnect()
    except Exception:
        pass
    c.loop_stop()


def pump(c, cond, timeout):
    """Manual network loop until cond() or timeout; False on timeout or a closed socket."""
    end = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() >= end or STOP.is_set():
            return False
        if c.loop(0.05) != mqtt.MQTT_ERR_SUCCESS:
            return cond()


def connect_sync(c, role):
    """Connect a manual-loop client; True when CONNACK accepted it."""
    st = c.user_data_get()
    try:
        c.connect(HOST, PORT, **connect_kwargs(c))
    except OSError as e:
        C.err(f"connect:{role}", repr(e))
        return False
    if not pump(c, lambda: st["connected"] or st["failed"], 5.0):
        if not STOP.is_set():
            C.err(f"connack_timeout:{role}", c._client_id)
        return False
    return st["connected"]


def publish(c, topic, data, qos, retain=False):
    info = c.publish(topic, data, qos=qos, retain=retain)
    if info.rc != mqtt.MQTT_ERR_SUCCESS:
        if not STOP.is_set():
            C.err(f"publish_rc:{c.user_data_get()['role']}", mqtt.error_string(info.rc))
        return None
    C.add("published")
    return info


def close_sync(c, graceful=True):
    st = c.user_data_get()
    st["expect_close"] = True
    sock = c.socket()
    if graceful:
        try:
            c.disconnect()
            pump(c, lambda: st["closed"], 1.0)
        except Exception:
            pass
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass


def drop_tcp(c, rst):
    """Drop the connection without DISCONNECT (the will fires)."""
    st = c.user_data_get()
    st["expect_close"] = True
    sock = c.socket()
    if sock is None:
        return
    try:
        if rst:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass
    C.add("drops")


def paced(rate, batch_every=0.1):
    """Yield the number of messages to send at each tick for `rate` per second."""
    owed = 0.0
    last = time.monotonic()
    while not STOP.is_set():
        STOP.wait(batch_every)
        now = time.monotonic()
        owed += (now - last) * rate
        last = now
        n = int(owed)
        owed -= n
        yield n


# ---------------------------------------------------------------- load roles


def steady_publisher(proto, idx, rate):
    c = make_client(f"soak-pub-{proto}-{idx}", proto, role="publisher")
    start_async(c)
    try:
        i = 0
        for n in paced(rate):
            if not c.user_data_get()["connected"]:
                continue
            for _ in range(n):
                publish(c, f"busy/{i % 20}/data", payload(), pick_qos())
                i += 1
    finally:
        stop_async(c)


def retained_updater(proto, topics, rate):
    c = make_client(f"soak-ret-{proto}", proto, role="retained")
    start_async(c)
    try:
        order = list(topics)
        i = 0
        for n in paced(rate):
            if not c.user_data_get()["connected"]:
                continue
            for _ in range(n):
                t = order[i % len(order)]
                i += 1
                if i % len(order) == 0:
                    random.shuffle(order)
                data = b"" if random.random() < 0.1 else payload(8, 400)
                if publish(c, t, data, random.choice((0, 1)), retain=True):
                    C.add("retained_updates")
    finally:
        stop_async(c)


def subscriber(cid, proto, filters):
    """A steady subscriber (re-subscribes at each connect)."""
    c = make_client(cid, proto, role="subscriber")
    c.user_data_get()["on_conn"] = lambda cl, ud: cl.subscribe(filters)
    start_async(c)
    try:
        STOP.wait()
    finally:
        stop_async(c)


def will_listener():
    c = make_client("soak-wills", 3, role="wills", kind="will")
    c.user_data_get()["on_conn"] = lambda cl, ud: cl.subscribe("will/#", 1)
    start_async(c)
    try:
        STOP.wait()
    finally:
        stop_async(c)


def sys_monitor():
    c = make_client("soak-sys", 5, role="sys")

    def on_message(client, ud, msg):
        try:
            v = float(msg.payload.decode())
        except (UnicodeDecodeError, ValueError):
            return
        with SYS_LOCK:
            SYS[msg.topic[len("$SYS/broker/"):]] = v

    c.on_message = on_message
    c.user_data_get()["on_conn"] = lambda cl, ud: cl.subscribe("$SYS/broker/#", 0)
    start_async(c)
    try:
        STOP.wait()
    finally:
        stop_async(c)


SUB_FILTERS = (
    [f"busy/{n}/#" for n in range(20)]
    + ["busy/+/data", "busy/#", "+/+/data", "churn/+/m", "will/#", "takeover/#"]
    + [f"ret/{g}/+" for g in range(10)] + ["ret/#", "ret/+/7"]
    + [f"$share/g{k}/busy/{n}/+" for k in range(3) for n in range(0, 20, 5)]
    + ["$share/g/busy/#", "$share/h/ret/+/+", "$share/c/churn/#"]
)


def subscription_churn(proto, idx):
    c = make_client(f"soak-subchurn-{proto}-{idx}", proto, role="subchurn")
    current = set()

    def resub(cl, ud):
        current.clear()

    c.user_data_get()["on_conn"] = resub
    start_async(c)
    try:
        while not STOP.wait(random.uniform(0.5, 2.0) / RATE):
            if not c.user_data_get()["connected"]:
                continue
            f = random.choice(SUB_FILTERS)
            if f == "ret/#" and random.random() < 0.7:  # 1000 retained: not too often
                f = "ret/+/7"
            if f not in current:
                rc, _ = c.subscribe(f, random.choice((0, 1, 2)))
                if rc == mqtt.MQTT_ERR_SUCCESS:
                    current.add(f)
                    C.add("sub_ops")
            while len(current) > random.randint(2, 6):
                g = random.choice(sorted(current))
                rc, _ = c.unsubscribe(g)
                if rc == mqtt.MQTT_ERR_SUCCESS:
                    current.discard(g)
                    C.add("sub_ops")
                else:
                    break
    finally:
        stop_async(c)


def connect_churn(tid):
    """Connect, maybe subscribe, publish a few, then DISCONNECT or drop the socket."""
    n = 0
    while not STOP.is_set():
        n += 1
        proto = random.choice((3, 5))
        persistent = random.random() < 0.4
        if persistent:
            cid = f"soak-cp-{tid}-{random.randrange(20)}"
            clean = random.random() < 0.1  # now and then start the session anew
        else:
            cid = f"soak-cc-{tid}-{n}"
            clean = True
        will = None
        if random.random() < 0.5:
            delay = 1 if (proto == 5 and random.random() < 0.3) else 0
            will = (f"will/{cid}", random.choice((0, 1, 2)), delay)
        c = make_client(cid, proto, clean=clean, will=will, role="churn",
                        expiry=(120 if persistent else None))
        st = c.user_data_get()
        try:
            if not connect_sync(c, "churn"):
                close_sync(c, graceful=False)
                STOP.wait(1.0)
                continue
            if persistent and random.random() < 0.5:
                c.subscribe("churn/+/m", 1)
                C.add("sub_ops")
            infos = []
            for _ in range(random.randint(1, 5)):
                info = publish(c, f"churn/{cid}/m", payload(), pick_qos())
                if info is not None and info.mid and info.rc == 0:
                    infos.append(info)
            # complete the acknowledgement flows, and read what a session had queued
            pump(c, lambda: all(i.is_published() for i in infos) or st["closed"], 5.0)
            if not st["closed"] and not all(i.is_published() for i in infos):
                C.err("churn_ack_timeout", cid)
            if persistent:
                pump(c, lambda: False, random.uniform(0.1, 0.5))
            if st["closed"]:
                if not STOP.is_set():
                    C.err("churn_closed_early", cid)
            elif random.random() < 0.6:
                close_sync(c, graceful=True)
            else:
                drop_tcp(c, rst=random.random() < 0.5)
        finally:
            close_sync(c, graceful=False)
        STOP.wait(random.uniform(0.2, 0.6) / RATE)


def takeovers():
    n = 0
    while not STOP.is_set():
        n += 1
        cid = f"soak-tk-{n % 10}"
        pa, pb = random.choice((3, 5)), random.choice((3, 5))
        a_persist = random.random() < 0.5
        a = make_client(cid, pa, clean=not a_persist, role="takeover-a",
                        expiry=(60 if a_persist else None),
                        will=(f"will/{cid}", 0, 0) if random.random() < 0.3 else None)
        b = make_client(cid, pb, clean=random.random() < 0.5, role="takeover-b",
                        expiry=(60 if random.random() < 0.5 else None))
        sa, sb = a.user_data_get(), b.user_data_get()
        try:
            if not connect_sync(a, "takeover-a"):
                STOP.wait(1.0)
                continue
            a.subscribe(f"takeover/{cid}", 1)
            pump(a, lambda: False, 0.2)
            sa["expect_close"] = True
            if not connect_sync(b, "takeover-b"):
                STOP.wait(1.0)
                continue
            if pump(a, lambda: sa["closed"], 3.0):
                C.add("takeovers")
            elif not STOP.is_set():
                C.err("takeover_not_closed", cid)
            info = publish(b, f"takeover/{cid}", b"after", 1)
            if info is not None:
                pump(b, info.is_published, 3.0)
            close_sync(b, graceful=True)
        finally:
            for c in (a, b):
                close_sync(c, graceful=False)
        STOP.wait(random.uniform(1.0, 2.0) / RATE)


def offline_session(idx):
    """A persistent session online for a while, then offline (its queue fills), then back."""
    proto = 3 if idx % 2 == 0 else 5
    cid = f"soak-off-{idx}"
    filters = [("busy/#", 1), (f"off/{idx}/#", 2)] if idx < 2 else [(f"busy/{idx}/#", 1)]
    first = True
    while not STOP.is_set():
        # 3.1.1: always a persistent session; 5.0: a fresh one first, then resumed
        c = make_client(cid, proto, clean=(first and proto == 5), role="offline", expiry=600)
        c.user_data_get()["on_conn"] = lambda cl, ud: cl.subscribe(filters)
        start_async(c)
        STOP.wait(random.uniform(20, 40))
        got = c.user_data_get()["received"]
        stop_async(c)
        if not first:
            C.add("offline_cycles")
        first = False
        if got == 0 and not STOP.is_set():
            C.err("offline_nothing_received", cid)
        STOP.wait(random.uniform(30, 90))


def slow_paho():
    """5.0, Receive Maximum 5, QoS 2 on busy/#; the loop runs one second in ten."""
    while not STOP.is_set():
        c = make_client("soak-slow-paho", 5, clean=True, role="slow", receive_max=5)
        st = c.user_data_get()
        if not connect_sync(c, "slow"):
            STOP.wait(2.0)
            continue
        c.subscribe("busy/#", 2)
        try:
            while not STOP.is_set() and not st["closed"]:
                pump(c, lambda: st["closed"], 1.0)
                STOP.wait(random.uniform(6, 10))
            if st["closed"] and not STOP.is_set():
                C.err("slow_paho_closed", "")
        finally:
            close_sync(c, graceful=True)


# ---------------------------------------------------------------- raw slow reader


def _varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _s(text):
    b = text.encode()
    return struct.pack("!H", len(b)) + b


def _packet(first, body):
    return bytes([first]) + _varint(len(body)) + body


def raw_slow_reader(proto, idx, budget, period):
    """A raw-socket subscriber that reads `budget` bytes every `period` seconds."""
    cid = f"soak-slow-raw-{proto}-{idx}"
    while not STOP.is_set():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            s.settimeout(5.0)
            s.connect((HOST, PORT))
            props = b"\x00" if proto == 5 else b""
            level = 5 if proto == 5 else 4
            s.sendall(_packet(0x10, _s("MQTT") + bytes([level, 0x02]) + struct.pack("!H", 60)
                              + props + _s(cid)))
            s.sendall(_packet(0x82, struct.pack("!H", 1) + props + _s("busy/#") + b"\x01"))
            buf = bytearray()
            connacked = False
            while not STOP.is_set():
                # read at most `budget` bytes, then sleep: the broker's queue for us fills
                s.settimeout(0.2)
                got = 0
                while got < budget:
                    try:
                        chunk = s.recv(min(4096, budget - got))
                    except socket.timeout:
                        break
                    if not chunk:
                        raise ConnectionError("broker closed the connection")
                    got += len(chunk)
                    buf += chunk
                acks = bytearray()
                while True:  # parse complete packets
                    if len(buf) < 2:
                        break
                    ln, mul, pos = 0, 1, 1
                    while pos < len(buf):
                        b = buf[pos]
                        ln += (b & 0x7F) * mul
                        mul *= 128
                        pos += 1
                        if not b & 0x80:
                            break
                    else:
                        break
                    if len(buf) < pos + ln:
                        break
                    first, body = buf[0], bytes(buf[pos:pos + ln])
                    del buf[:pos + ln]
                    kind = first >> 4
                    if kind == 2:
                        if body[1] != 0:
                            raise ConnectionError(f"CONNACK refused {body[1]}")
                        connacked = True
                        C.add("connects")
                    elif kind == 3:
                        C.add("received")
                        if (first >> 1) & 3:
                            tl = struct.unpack("!H", body[:2])[0]
                            acks += _packet(0x40, body[2 + tl:4 + tl])
                    elif kind == 9:
                        C.add("sub_ops")
                        if any(b >= 0x80 for b in body[3 if proto == 5 else 2:]):
                            C.err("suback:slow-raw", body.hex())
                    elif kind == 14:
                        raise ConnectionError("broker sent DISCONNECT")
                s.settimeout(5.0)
                s.sendall(bytes(acks) + b"\xc0\x00")  # PUBACKs and a PINGREQ
                if not connacked and len(buf) == 0 and got == 0:
                    pass
                STOP.wait(random.uniform(period * 0.5, period * 1.5))
            try:
                s.sendall(b"\xe0\x00")
            except OSError:
                pass
        except (OSError, ConnectionError) as e:
            if not STOP.is_set():
                C.err(f"slow_raw:{type(e).__name__}", repr(e))
                STOP.wait(2.0)
        finally:
            s.close()


# ---------------------------------------------------------------- broker and sampling


# A port from outside the kernel's ephemeral range: the CI scripts'
# allocator (binding port 0 and letting go can hand the port on).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".ci"))
from broker_process import free_port  # noqa: E402


def wait_listening(port, proc, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode} while starting")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"broker not listening on {port} after {timeout}s")


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_sample(pid):
    rss = anon = filek = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("RssAnon:"):
                anon = int(line.split()[1])
            elif line.startswith("RssFile:"):
                filek = int(line.split()[1])
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    threads = int(fields[17])
    return rss, anon, filek, cpu, threads


def dir_kib(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total // 1024


COLUMNS = ["elapsed_s", "rss_kib", "cpu_s", "connects", "published", "received", "errors",
           "rss_anon_kib", "rss_file_kib", "broker_threads", "store_kib", "drops",
           "takeovers", "wills_rx", "sub_ops", "retained_updates", "offline_cycles",
           "sys_clients_connected", "sys_clients_total", "sys_dropped", "sys_retained",
           "sys_subscriptions", "phase"]
SYS_KEYS = {"sys_clients_connected": "clients/connected", "sys_clients_total": "clients/total",
            "sys_dropped": "publish/messages/dropped",
            "sys_retained": "retained messages/count",
            "sys_subscriptions": "subscriptions/count"}


def least_squares(xs, ys):
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def summarize(rows, warmup_s, out):
    load = [r for r in rows if r["phase"] == "load"]
    after = [r for r in load if r["elapsed_s"] >= warmup_s]
    print("\n==== summary ====")
    if len(after) < 3:
        print("too few samples after warm-up for a verdict")
        return
    first, last = after[0], load[-1]
    rss = [r["rss_kib"] for r in after]
    med = statistics.median(rss)
    slope = least_squares([r["elapsed_s"] / 3600 for r in after], rss)  # KiB per hour
    lo, hi = min(rss), max(rss)
    span = load[-1]["elapsed_s"] - load[0]["elapsed_s"]
    cpu = load[-1]["cpu_s"] - load[0]["cpu_s"]
    print(f"samples: {len(load)} under load, {len(after)} after warm-up ({warmup_s:.0f} s)")
    print(f"RSS at warm-up end ({first['elapsed_s']:.0f} s): {first['rss_kib']} KiB")
    print(f"RSS at end ({last['elapsed_s']:.0f} s): {last['rss_kib']} KiB")
    print(f"RSS after warm-up: min {lo} KiB, max {hi} KiB, median {med:.0f} KiB "
          f"(-{100 * (med - lo) / med:.1f}% / +{100 * (hi - med) / med:.1f}%)")
    print(f"RSS slope after warm-up: {slope:+.0f} KiB/hour "
          f"({100 * slope / med:+.1f}% of median per hour)")
    every = max(1, round(300 / max(1, rows[1]["elapsed_s"] - rows[0]["elapsed_s"]))) \
        if len(rows) > 1 else 1
    marks = [r for i, r in enumerate(load) if i % every == 0]
    if marks[-1] is not load[-1]:
        marks.append(load[-1])
    print("RSS every ~5 min: " + ", ".join(f"{r['elapsed_s'] / 60:.0f}m {r['rss_kib']}"
                                            for r in marks))
    print(f"broker CPU: {cpu:.1f} s over {span:.0f} s ({100 * cpu / max(span, 1):.1f}% of a core)")
    snap = {k: last[k] for k in Counters.FIELDS}
    print("load: " + ", ".join(f"{k} {v}" for k, v in snap.items()))
    print("broker $SYS at end: " + ", ".join(
        f"{k[4:]} {last[k]}" for k in SYS_KEYS if last[k] != ""))
    if C.err_kinds:
        print("errors by kind: " + ", ".join(f"{k} {v}" for k, v in
                                             sorted(C.err_kinds.items(), key=lambda kv: -kv[1])))
    cool = [r for r in rows if r["phase"] == "cooldown"]
    if cool:
        print(f"after the load stopped: RSS {cool[-1]['rss_kib']} KiB "
              f"at {cool[-1]['elapsed_s']:.0f} s")
    within = all(abs(x - med) <= 0.10 * med for x in rss)
    if within and slope < 0.05 * med:
        print(f"verdict: flat (RSS within ±10% of median {med:.0f} KiB, slope "
              f"{slope:+.0f} KiB/h = {100 * slope / med:+.1f}%/h)")
    else:
        print(f"verdict: GROWING (RSS {lo}..{hi} KiB around median {med:.0f} KiB, "
              f"{'within' if within else 'outside'} ±10%; slope {slope:+.0f} KiB/h = "
              f"{100 * slope / med:+.1f}% of median per hour)")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not importable: no soak.png)")
        return
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot([r["elapsed_s"] / 60 for r in rows], [r["rss_kib"] / 1024 for r in rows],
            label="VmRSS")
    ax.plot([r["elapsed_s"] / 60 for r in rows], [r["rss_anon_kib"] / 1024 for r in rows],
            label="RssAnon")
    ax.axvline(warmup_s / 60, color="grey", linestyle="--", label="warm-up end")
    ax.set_xlabel("minutes")
    ax.set_ylabel("MiB")
    ax.legend()
    fig.savefig(os.path.join(out, "soak.png"), dpi=100, bbox_inches="tight")
    print(f"wrote {os.path.join(out, 'soak.png')}")


def start_load():
    threads = []
    retained = [f"ret/{i // 100}/{i}" for i in range(1000)]
    threads.append(guarded("sys", sys_monitor))
    threads.append(guarded("wills", will_listener))
    threads.append(guarded("sub-3", lambda: subscriber("soak-sub-3", 3, [("busy/#", 1)])))
    threads.append(guarded("sub-5", lambda: subscriber("soak-sub-5", 5, [("busy/+/data", 2)])))
    threads.append(guarded("share-3", lambda: subscriber(
        "soak-share-3", 3, [("$share/g/busy/#", 1)])))
    threads.append(guarded("share-5", lambda: subscriber(
        "soak-share-5", 5, [("$share/g/busy/#", 2)])))
    time.sleep(0.5)
    threads.append(guarded("pub-3", lambda: steady_publisher(3, 0, 50 * RATE)))
    threads.append(guarded("pub-5", lambda: steady_publisher(5, 0, 50 * RATE)))
    threads.append(guarded("ret-3", lambda: retained_updater(3, retained[:500], 20 * RATE)))
    threads.append(guarded("ret-5", lambda: retained_updater(5, retained[500:], 20 * RATE)))
    for proto in (3, 5):
        threads.append(guarded(f"subchurn-{proto}", lambda p=proto: subscription_churn(p, 0)))
    for tid in range(3):
        threads.append(guarded(f"churn-{tid}", lambda t=tid: connect_churn(t)))
    threads.append(guarded("takeover", takeovers))
    for idx in range(4):
        threads.append(guarded(f"offline-{idx}", lambda i=idx: offline_session(i)))
    threads.append(guarded("slow-paho", slow_paho))
    threads.append(guarded("slow-raw-3", lambda: raw_slow_reader(3, 0, 16384, 8)))
    threads.append(guarded("slow-raw-5", lambda: raw_slow_reader(5, 0, 8192, 12)))
    return threads


def main():
    global PORT, RATE
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--petrel", required=True, help="the petrel binary")
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--out", default="soak-out")
    ap.add_argument("--sample-seconds", type=float, default=10.0)
    ap.add_argument("--warmup-minutes", type=float, default=None,
                    help="default: 5, or 1/6 of the run if shorter")
    ap.add_argument("--rate", type=float, default=1.0, help="scale every load rate")
    ap.add_argument("--cooldown-seconds", type=float, default=20.0,
                    help="keep sampling this long after the load stops (not in the verdict)")
    ap.add_argument("--keep-data", action="store_true", help="keep the broker's data dir")
    args = ap.parse_args()
    RATE = args.rate
    warmup_s = 60 * (args.warmup_minutes if args.warmup_minutes is not None
                     else min(5.0, args.minutes / 6))
    os.makedirs(args.out, exist_ok=True)
    data_dir = tempfile.mkdtemp(prefix="petrel-soak-")
    PORT = free_port()

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    log = open(os.path.join(args.out, "broker.log"), "wb")
    cmd = [args.petrel, "broker", "--data-dir", data_dir, "-p", str(PORT)]
    print("starting: " + " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)  # Ctrl-C reaches us, not the broker
    rows = []
    threads = []
    try:
        wait_listening(PORT, proc)
        print(f"broker pid {proc.pid} on {HOST}:{PORT}, data dir {data_dir}; "
              f"{args.minutes:g} min, warm-up {warmup_s / 60:g} min", flush=True)
        with open(os.path.join(args.out, "soak.csv"), "w", newline="") as fcsv:
            w = csv.writer(fcsv)
            w.writerow(COLUMNS)
            t0 = time.monotonic()
            last_cpu = None

            def sample(phase):
                nonlocal last_cpu
                rss, anon, filek, cpu, nthreads = proc_sample(proc.pid)
                snap = C.snapshot()
                with SYS_LOCK:
                    sysv = {k: (int(SYS[v]) if v in SYS else "") for k, v in SYS_KEYS.items()}
                el = time.monotonic() - t0
                row = {"elapsed_s": round(el, 1), "rss_kib": rss, "cpu_s": round(cpu, 2),
                       **snap, "rss_anon_kib": anon, "rss_file_kib": filek,
                       "broker_threads": nthreads, "store_kib": dir_kib(data_dir),
                       **sysv, "phase": phase}
                rows.append(row)
                w.writerow([row[k] for k in COLUMNS])
                fcsv.flush()
                share = ""
                if last_cpu is not None and len(rows) > 1:
                    dt = el - rows[-2]["elapsed_s"]
                    share = f" ({100 * (cpu - last_cpu) / max(dt, 0.001):4.1f}%)"
                last_cpu = cpu
                print(f"{el:7.0f}s {phase:8s} rss {rss:7d} KiB anon {anon:7d} cpu {cpu:8.2f}s"
                      f"{share} conn {snap['connects']} pub {snap['published']} "
                      f"recv {snap['received']} err {snap['errors']} "
                      f"store {row['store_kib']} KiB sys: conn {sysv['sys_clients_connected']} "
                      f"dropped {sysv['sys_dropped']} retained {sysv['sys_retained']} "
                      f"subs {sysv['sys_subscriptions']}", flush=True)

            sample("load")
            threads = start_load()
            end = t0 + 60 * args.minutes
            nxt = t0 + args.sample_seconds
            while True:
                now = time.monotonic()
                if proc.poll() is not None:
                    raise RuntimeError(f"BROKER EXITED with {proc.returncode} at "
                                       f"{now - t0:.0f} s; see broker.log")
                if now >= end:
                    break
                time.sleep(max(0.0, min(nxt, end) - now))
                if time.monotonic() >= nxt - 0.01:
                    sample("load")
                    nxt += args.sample_seconds
            if rows[-1]["elapsed_s"] < 60 * args.minutes - 1:
                sample("load")
            STOP.set()
            for t in threads:
                t.join(timeout=max(0.1, 15 - (time.monotonic() - end)))
            cool_end = time.monotonic() + args.cooldown_seconds
            while time.monotonic() < cool_end and proc.poll() is None:
                time.sleep(min(args.sample_seconds, max(0.0, cool_end - time.monotonic())))
                sample("cooldown")
        summarize(rows, warmup_s, args.out)
        alive = sum(t.is_alive() for t in threads)
        if alive:
            print(f"({alive} load threads still winding down at exit)")
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
        if len(rows) > 3:
            summarize(rows, warmup_s, args.out)
    finally:
        STOP.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        print(f"broker pid {proc.pid} stopped (exit {proc.returncode})", flush=True)
        log.close()
        if args.keep_data:
            print(f"data dir kept: {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
