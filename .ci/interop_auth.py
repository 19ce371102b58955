#!/usr/bin/env python3
"""Authentication and authorisation with clients and tools no one here wrote.

Usage: python3 .ci/interop_auth.py [--broker petrel|mosquitto] [--petrel BIN]

A password file made by Mosquitto's own `mosquitto_passwd` and an ACL file in
Mosquitto's format are given to the broker; `mosquitto_pub` / `mosquitto_sub`
and Python paho-mqtt 2.x then connect with the right password, a wrong one and
none, in MQTT 3.1.1 and 5.0, and publish, subscribe and read `$SYS` within and
outside what the ACL allows. Every "refused" or "nothing arrived" check has a
positive control beside it. Run with `--broker mosquitto` the same checks run
against Mosquitto 2 itself, showing the script expects what a real broker
does; where Petrel deliberately differs, the check says so: Mosquitto 2.0
grants every SUBSCRIBE and only filters deliveries (skipped there), and
answers a wrong password with 0x87 / 5 where Petrel says 0x86 / 4.

One line per check, then "auth interop: N passed, M failed"; non-zero exit on
any failure. Every wait is bounded.
"""

import argparse
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import paho.mqtt.client as mqtt
from broker_process import TIMEOUT, BrokerProcess, free_port, run
QUIET = 1.0
V311, V5 = mqtt.MQTTv311, mqtt.MQTTv5
NAMES = {V311: "3.1.1", V5: "5.0"}
# paho reports 3.1.1 CONNACK return codes as the 5.0 reason codes they map to.
BAD_CREDENTIALS, NOT_AUTHORIZED = 0x86, 0x87

ACL = """\
user alice
topic readwrite home/#
topic read bob/#
topic read $SYS/#
user bob
topic write bob/#
pattern write clients/%c/#
"""


class Broker:
    def __init__(self, kind, petrel, work):
        self.kind = kind
        self.port = free_port()
        pw = os.path.join(work, "passwd")
        # The real mosquitto_passwd: $7$ (PBKDF2-SHA512) lines, and one
        # salted SHA-512 ($6$) for Mosquitto 1.x's format.
        run(["mosquitto_passwd", "-c", "-b", pw, "alice", "secret"])
        run(["mosquitto_passwd", "-b", pw, "bob", "b0b"])
        run(["mosquitto_passwd", "-H", "sha512", "-b", pw, "carol", "c4rol"])
        acl = os.path.join(work, "acl")
        with open(acl, "w") as f:
            f.write(ACL)
        if kind == "petrel":
            conf = os.path.join(work, "petrel.toml")
            with open(conf, "w") as f:
                f.write(f'sys_interval = 1\npassword_file = "{pw}"\nacl_file = "{acl}"\n'
                        f'[[listener]]\nbind = "127.0.0.1:{self.port}"\n')
            cmd = [petrel, "broker", "--memory", "-c", conf]
        else:
            conf = os.path.join(work, "mosquitto.conf")
            with open(conf, "w") as f:
                f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous false\n"
                        f"password_file {pw}\nacl_file {acl}\nsys_interval 1\n")
            cmd = [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", conf]
        self.process = BrokerProcess(kind, cmd, os.path.join(work, "broker.log"), [self.port])

    def stop(self):
        self.process.stop()


class Paho:
    """One paho client on its own loop thread; every wait bounded."""

    def __init__(self, port, version, client_id, user=None, password=None):
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=version)
        if user is not None:
            self.c.username_pw_set(user, password)
        self.connack = threading.Event()
        self.rc = None
        self.messages = queue.Queue()
        self.subacks = {}
        self.pubacks = {}
        self.cond = threading.Condition()
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_subscribe = self._on_subscribe
        self.c.on_publish = self._on_publish
        self.c.on_disconnect = lambda *a: None
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()
        if not self.connack.wait(TIMEOUT):
            raise RuntimeError("no CONNACK")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.rc = reason_code.value
        self.connack.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self.cond:
            self.subacks[mid] = [rc.value for rc in reason_codes]
            self.cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self.cond:
            self.pubacks[mid] = reason_code.value
            self.cond.notify_all()

    def _wait(self, table, mid):
        with self.cond:
            if not self.cond.wait_for(lambda: mid in table, TIMEOUT):
                raise RuntimeError("no acknowledgement")
            return table[mid]

    def subscribe(self, topic):
        _, mid = self.c.subscribe(topic, qos=1)
        return self._wait(self.subacks, mid)[0]

    def publish(self, topic, payload):
        info = self.c.publish(topic, payload, qos=1)
        return self._wait(self.pubacks, info.mid)

    def received(self, wait):
        """The topics that arrive within `wait` seconds."""
        got = []
        deadline = time.time() + wait
        while time.time() < deadline:
            try:
                got.append(self.messages.get(timeout=max(deadline - time.time(), 0.01)).topic)
            except queue.Empty:
                break
        return got

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", default="petrel", choices=["petrel", "mosquitto"])
    ap.add_argument("--petrel", default="target/debug/petrel")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="petrel-auth-interop-")
    # Mosquitto started as root drops to its own user, which must read here.
    os.chmod(work, 0o755)
    broker = Broker(args.broker, os.path.abspath(args.petrel), work)
    port = broker.port
    petrel = args.broker == "petrel"
    results = []

    def check(name, fn, petrel_only=False):
        if petrel_only and not petrel:
            print(f"SKIP {name} (Mosquitto 2.0 does not check SUBSCRIBE against its ACL)")
            return
        try:
            fn()
            results.append(True)
            print(f"PASS {name}")
        except Exception as e:  # each check reports and the run goes on
            results.append(False)
            print(f"FAIL {name}: {e!r}")

    def expect(cond, what):
        if not cond:
            raise AssertionError(what)

    try:
        for v, flag in ((V311, "mqttv311"), (V5, "mqttv5")):
            n = NAMES[v]
            base = ["-h", "127.0.0.1", "-p", str(port), "-V", flag]

            def tools_password():
                # Right password (both hash formats): published; wrong or
                # none: refused.
                for user, pw in (("alice", "secret"), ("carol", "c4rol")):
                    ok = run(["mosquitto_pub", *base, "-u", user, "-P", pw, "-t", "home/x", "-m", "1"])
                    expect(ok.returncode == 0, f"{user} with the right password: {ok.stderr}")
                wrong = run(["mosquitto_pub", *base, "-u", "alice", "-P", "nope", "-t", "home/x", "-m", "1"])
                expect(wrong.returncode != 0, "a wrong password was accepted")
                none = run(["mosquitto_pub", *base, "-t", "home/x", "-m", "1"])
                expect(none.returncode != 0, "no credentials were accepted")
            check(f"{n} mosquitto_pub: right password in, wrong or none refused", tools_password)

            def tools_acl():
                # alice reads home/# and bob/#; bob may write only bob/#.
                sub = subprocess.Popen(
                    ["mosquitto_sub", *base, "-u", "alice", "-P", "secret", "-t", "home/#", "-t", "bob/#",
                     "-v", "-W", "4", "-C", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                time.sleep(0.7)
                denied = run(["mosquitto_pub", *base, "-u", "bob", "-P", "b0b", "-q", "1", "-t", "home/x", "-m", "denied"])
                allowed = run(["mosquitto_pub", *base, "-u", "bob", "-P", "b0b", "-q", "1", "-t", "bob/status", "-m", "allowed"])
                expect(allowed.returncode == 0, allowed.stderr)
                out, _ = sub.communicate(timeout=8)
                expect(out.strip() == "bob/status allowed", f"alice read {out!r} (denied: {denied.returncode})")
            check(f"{n} mosquitto_sub/pub: a denied publish goes nowhere, an allowed one arrives", tools_acl)

            # Petrel says which: a wrong password is 0x86 / 4, no credentials
            # 0x87 / 5. Mosquitto 2.0 answers 0x87 / 5 to both.
            wrong = BAD_CREDENTIALS if petrel else NOT_AUTHORIZED

            def paho_connack():
                for user, pw, want in (("alice", "secret", 0), ("alice", "nope", wrong),
                                       ("mallory", "secret", wrong), (None, None, NOT_AUTHORIZED)):
                    p = Paho(port, v, f"paho-c-{n}", user, pw)
                    p.close()
                    expect(p.rc == want, f"{user}/{pw}: CONNACK {p.rc:#x}, wanted {want:#x}")
            check(f"{n} paho: CONNACK success, bad user name or password, not authorized", paho_connack)

            def paho_publish():
                alice = Paho(port, v, f"paho-a-{n}", "alice", "secret")
                bob = Paho(port, v, f"paho-b-{n}", "bob", "b0b")
                expect(alice.subscribe("home/#") == 1, "alice may read home/#")
                expect(alice.subscribe("bob/#") == 1, "alice may read bob/#")
                rc = bob.publish("home/door", "open")
                # 5.0: PUBACK 0x87; 3.1.1 has no reason codes: acknowledged, dropped.
                expect(rc == (NOT_AUTHORIZED if v == V5 else 0), f"PUBACK {rc:#x}")
                expect(bob.publish("bob/status", "ok") in (0, 0x10), "an allowed publish")
                got = alice.received(QUIET)
                expect(got == ["bob/status"], f"alice got {got}")
                # Patterns: %c is the client id.
                own = bob.publish(f"clients/paho-b-{n}/x", "mine")
                other = bob.publish("clients/someone/x", "theirs")
                expect(own in (0, 0x10) and other == (NOT_AUTHORIZED if v == V5 else 0), f"{own:#x} {other:#x}")
                alice.close()
                bob.close()
            check(f"{n} paho: a denied PUBLISH gets 0x87 in 5.0 and is dropped in 3.1.1", paho_publish)

            def paho_subscribe():
                bob = Paho(port, v, f"paho-s-{n}", "bob", "b0b")
                # bob may write bob/# but not read it.
                rc = bob.subscribe("bob/#")
                expect(rc == (NOT_AUTHORIZED if v == V5 else 0x80), f"SUBACK {rc:#x}")
                alice = Paho(port, v, f"paho-t-{n}", "alice", "secret")
                expect(alice.subscribe("home/#") == 1, "the positive control")
                alice.close()
                bob.close()
            check(f"{n} paho: a denied SUBSCRIBE gets 0x87 in 5.0, 0x80 in 3.1.1", paho_subscribe,
                  petrel_only=True)

            def paho_sys():
                alice = Paho(port, v, f"paho-y-{n}", "alice", "secret")
                bob = Paho(port, v, f"paho-z-{n}", "bob", "b0b")
                alice.subscribe("$SYS/broker/uptime")
                bob.subscribe("$SYS/broker/uptime")
                got = alice.received(2.5)
                expect("$SYS/broker/uptime" in got, f"alice got {got}")
                expect(bob.received(QUIET) == [], "bob read $SYS")
                alice.close()
                bob.close()
            check(f"{n} paho: $SYS is read by the ACL's rules", paho_sys)
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    passed = sum(results)
    failed = len(results) - passed
    print(f"auth interop ({args.broker}): {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
