#!/usr/bin/env python3
"""Interoperability checks for an MQTT broker, driven by Eclipse Paho (paho-mqtt 2.x).

Usage: python3 .ci/interop_paho.py HOST PORT

The point is to talk to the broker under test with a client that its authors did
not write, so that a shared misreading of the specification between our own client
and our own broker cannot hide.  Every check runs for MQTT 3.1.1 and for MQTT 5.0,
prints one line (PASS/FAIL, its name, the normative statements it relies on) and
the script ends with "paho: N passed, M failed", exiting non-zero on any failure.

Nothing here waits without a bound: "must arrive" waits at most TIMEOUT seconds,
"must not arrive" listens for QUIET (or WILL_QUIET) seconds.  Topics and client
identifiers carry a per-run random prefix, so runs never see each other's traffic
or sessions, even on a shared broker.
"""

import argparse
import queue
import re
import socket
import sys
import threading
import time
import traceback
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

TIMEOUT = 5.0      # the longest we wait for something that must happen
QUIET = 0.5        # how long we listen for something that must not happen
WILL_QUIET = 1.0   # same, when the broker has to notice a closed connection first
BUDGET = 40.0      # seconds for the whole run; a conforming broker needs about 15
KEEPALIVE = 30

V311, V5 = mqtt.MQTTv311, mqtt.MQTTv5
VERSION_NAME = {V311: "3.1.1", V5: "5.0"}


class CheckFailed(Exception):
    """A check saw something other than what the specification requires."""


def expect(cond, what):
    if not cond:
        raise CheckFailed(what)


def props(packet_type, **values):
    """A paho Properties object for `packet_type` with the given properties set."""
    p = Properties(packet_type)
    for name, value in values.items():
        setattr(p, name, value)
    return p


def prop(msg, name):
    """A 5.0 property of a received message, or None when absent."""
    return getattr(msg.properties, name, None) if msg.properties is not None else None


class Peer:
    """One paho client on its own network-loop thread; what it receives is queued.

    Every wait is bounded: a CONNACK, SUBACK or acknowledgement that does not come
    within TIMEOUT fails the check instead of hanging the run, and so, at once,
    does the broker closing the connection while we wait on it.
    """

    def __init__(self, run, name, clean=True, session_expiry=None, will=None, client_id=None):
        self.run = run
        self.version = run.version
        self.client_id = client_id or run.client_id(name)
        self.clean = clean
        self.session_expiry = session_expiry
        extra = {} if self.version == V5 else {"clean_session": clean}
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=self.version, **extra)
        if will is not None:
            self.c.will_set(**will)
        self.messages = queue.Queue()
        self.connack = threading.Event()
        self.session_present = None
        self.connect_rc = None
        self.subacks = {}
        self.cond = threading.Condition()
        self.lost = None        # why the connection ended, when we did not end it
        self.leaving = False    # set once we send DISCONNECT ourselves
        self.looping = False
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, msg: self.messages.put(msg)
        self.c.on_subscribe = self._on_subscribe
        self.c.on_disconnect = self._on_disconnect

    # -- callbacks (run on paho's loop thread) --
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.session_present = bool(flags.session_present)
        self.connect_rc = reason_code
        self.connack.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self.cond:
            self.subacks[mid] = [rc.value for rc in reason_codes]
            self.cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        if not self.leaving and self.lost is None:
            self.lost = f"broker closed {self.client_id}'s connection ({reason_code})"
        # paho's loop thread would reconnect on its own; a check never wants that.
        self.leaving = True
        client.disconnect()

    def check_open(self):
        if self.lost:
            raise CheckFailed(self.lost)

    # -- actions --
    def connect_args(self):
        if self.version == V5:
            p = None
            if self.session_expiry is not None:
                p = props(PacketTypes.CONNECT, SessionExpiryInterval=self.session_expiry)
            return {"clean_start": self.clean, "properties": p}
        return {}

    def connect(self):
        self.c.connect(self.run.host, self.run.port, KEEPALIVE, **self.connect_args())
        self.c.loop_start()
        self.looping = True
        expect(self.connack.wait(TIMEOUT), f"{self.client_id}: no CONNACK within {TIMEOUT}s")
        expect(not self.connect_rc.is_failure, f"{self.client_id}: CONNACK refused: {self.connect_rc}")
        return self

    def subscribe(self, topic_filter, qos):
        """Subscribe and wait for the SUBACK; returns the granted QoS."""
        short = self.run.short(topic_filter)
        rc, mid = self.c.subscribe(topic_filter, qos)
        expect(rc == mqtt.MQTT_ERR_SUCCESS, f"SUBSCRIBE {short} not sent: {rc}")
        with self.cond:
            got = self.cond.wait_for(lambda: mid in self.subacks or self.lost, TIMEOUT)
        self.check_open()
        expect(got, f"no SUBACK for {short} within {TIMEOUT}s")
        granted = self.subacks[mid][0]
        expect(granted in (0, 1, 2), f"subscription to {short} refused: reason code {granted:#x}")
        return granted

    def publish(self, topic, payload, qos=0, retain=False, properties=None):
        """Publish and, for QoS 1 and 2, wait until the broker has acknowledged it
        (PUBACK, or PUBREC/PUBREL/PUBCOMP complete)."""
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        expect(info.rc == mqtt.MQTT_ERR_SUCCESS, f"PUBLISH {self.run.short(topic)} not sent: {info.rc}")
        deadline = time.monotonic() + TIMEOUT
        while qos > 0 and not info.is_published():
            self.check_open()
            expect(time.monotonic() < deadline,
                   f"QoS {qos} PUBLISH to {self.run.short(topic)} not acknowledged within {TIMEOUT}s")
            info.wait_for_publish(0.05)

    def receive(self, count, timeout=TIMEOUT):
        """Up to `count` messages, waiting at most `timeout` seconds in all (less if
        the connection is lost)."""
        got, deadline = [], time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            try:
                got.append(self.messages.get(timeout=min(0.05, max(0.0, deadline - time.monotonic()))))
            except queue.Empty:
                if self.lost:
                    break
        return got

    def expect_messages(self, count, what):
        got = self.receive(count)
        if len(got) < count:
            self.check_open()
        expect(len(got) == count, f"{what}: received {len(got)} of {count} within {TIMEOUT}s")
        return got

    def expect_nothing(self, what, quiet=QUIET):
        """Listen for `quiet` seconds; anything that arrives is a failure, and so is
        losing the connection (we would hear nothing for the wrong reason)."""
        got = self.receive(1, quiet)
        if got:
            raise CheckFailed(f"{what}: unexpected message on {self.run.short(got[0].topic)!r}: "
                              f"{got[0].payload!r}")
        self.check_open()

    def disconnect(self, properties=None):
        """A normal DISCONNECT (reason code 0 in 5.0), then stop the loop."""
        if self.looping:
            self.leaving = True
            self.c.disconnect(properties=properties)
            self.c.loop_stop()
            self.looping = False


class Run:
    """The checks for one protocol version, with the per-run topic prefix."""

    def __init__(self, host, port, version, prefix, deadline):
        self.host, self.port, self.version = host, port, version
        self.deadline = deadline
        self.vname = VERSION_NAME[version]
        self.prefix = f"{prefix}/v{self.vname}"
        # Client identifiers stay within what every server MUST accept: 1 to 23
        # characters from [0-9a-zA-Z] ([MQTT-3.1.3-5]).
        self.cid_prefix = f"{prefix.split('/')[1][:8]}{'5' if version == V5 else '3'}"
        self.peers = []
        self.passed = self.failed = 0

    def topic(self, *levels):
        return "/".join((self.prefix,) + levels)

    def short(self, topic):
        """A topic without the run's prefix, for messages."""
        return topic[len(self.prefix) + 1:] if topic.startswith(self.prefix + "/") else topic

    def client_id(self, name):
        return (self.cid_prefix + re.sub("[^0-9a-zA-Z]", "", name))[:23]

    def peer(self, name, **kw):
        p = Peer(self, name, **kw)
        self.peers.append(p)
        return p

    def cite(self, v311, v5):
        return v5 if self.version == V5 else v311

    def check(self, name, cite, fn):
        """Run one named check; every client it opened is closed afterwards."""
        label = f"[{self.vname}] {name}"
        try:
            # A broker that answers nothing would make every check wait out its
            # timeouts; past the run's time budget the rest fail without trying.
            expect(time.monotonic() < self.deadline, f"not run: the {BUDGET:.0f} s time budget is spent")
            fn()
            # Passing includes the broker not having dropped any of our clients.
            for p in self.peers:
                p.check_open()
        except CheckFailed as e:
            self.failed += 1
            print(f"FAIL  {label}  {cite}: {e}", flush=True)
        except Exception as e:  # a crash of the check is a failure too, with where
            self.failed += 1
            ours = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == __file__]
            where = f" (line {ours[-1].lineno})" if ours else ""
            print(f"FAIL  {label}  {cite}: {type(e).__name__}: {e}{where}", flush=True)
        else:
            self.passed += 1
            print(f"PASS  {label}  {cite}", flush=True)
        finally:
            for p in self.peers:
                try:
                    p.disconnect()
                except Exception:
                    pass
            self.peers = []

    # ------------------------------------------------------------------ QoS
    def qos_round_trip(self, pub_qos):
        """One subscriber holds three subscriptions, granted QoS 0, 1 and 2, each on
        its own topic; a QoS `pub_qos` message to each must arrive once, unchanged,
        at min(published QoS, granted QoS)."""
        sub = self.peer(f"q{pub_qos}-sub").connect()
        topics = [self.topic("qos", f"p{pub_qos}", f"s{q}") for q in (0, 1, 2)]
        granted = {t: sub.subscribe(t, q) for q, t in enumerate(topics)}
        pub = self.peer(f"q{pub_qos}-pub").connect()
        for t in topics:
            pub.publish(t, f"qos{pub_qos} to {t}".encode(), qos=pub_qos)
        got = sub.expect_messages(3, f"QoS {pub_qos} deliveries")
        by_topic = {m.topic: m for m in got}
        expect(sorted(by_topic) == sorted(topics), f"topics received {sorted(by_topic)}, expected {topics}")
        for t in topics:
            m = by_topic[t]
            short = self.short(t)
            expect(m.payload == f"qos{pub_qos} to {t}".encode(), f"{short}: payload {m.payload!r}")
            want = min(pub_qos, granted[t])
            expect(m.qos == want, f"{short}: delivered at QoS {m.qos}, expected min({pub_qos}, {granted[t]}) = {want}")
            expect(not m.retain, f"{short}: RETAIN set on a live, non-retained message")
        # Nothing else may arrive: a second copy breaks QoS 2's exactly-once
        # outright, and for QoS 0/1 on a connection that never dropped it could
        # only be a resend, which 5.0 allows only on reconnection ([MQTT-4.4.0-1]).
        sub.expect_nothing("duplicate delivery")

    # ------------------------------------------------------------- retained
    def retained_stored(self):
        t = self.topic("retain", "stored")
        pub = self.peer("rs-pub").connect()
        pub.publish(t, b"r1", qos=1, retain=True)
        sub = self.peer("rs-sub").connect()
        sub.subscribe(t, 1)
        (m,) = sub.expect_messages(1, "retained message for a new subscriber")
        expect((m.topic, m.payload) == (t, b"r1"), f"got {m.topic!r} {m.payload!r}")
        expect(m.retain, "RETAIN flag not set on a message sent because of a new subscription")
        expect(m.qos == 1, f"retained QoS 1 message delivered at QoS {m.qos} to a QoS 1 subscription")
        sub.expect_nothing("after the retained message")

    def retained_live_flag(self):
        t = self.topic("retain", "live")
        sub = self.peer("rl-sub").connect()
        sub.subscribe(t, 1)
        pub = self.peer("rl-pub").connect()
        pub.publish(t, b"live", qos=1, retain=True)
        (m,) = sub.expect_messages(1, "retained publish to an established subscription")
        expect(m.payload == b"live", f"payload {m.payload!r}")
        expect(not m.retain, "RETAIN set on a message forwarded to an established subscription")
        pub.publish(t, b"", qos=1, retain=True)  # leave no retained message behind

    def retained_replaced(self):
        t = self.topic("retain", "replaced")
        pub = self.peer("rr-pub").connect()
        pub.publish(t, b"old", qos=1, retain=True)
        pub.publish(t, b"new", qos=1, retain=True)
        sub = self.peer("rr-sub").connect()
        sub.subscribe(t, 1)
        (m,) = sub.expect_messages(1, "retained message")
        expect(m.payload == b"new" and m.retain, f"got {m.payload!r} retain={m.retain}, expected b'new' retained")
        sub.expect_nothing("a second retained message for one topic")

    def retained_deleted(self):
        t = self.topic("retain", "deleted")
        pub = self.peer("rd-pub").connect()
        pub.publish(t, b"doomed", qos=1, retain=True)
        pub.publish(t, b"", qos=1, retain=True)
        # A non-retained publish must not bring anything back either.
        pub.publish(t, b"not retained", qos=1, retain=False)
        sub = self.peer("rd-sub").connect()
        sub.subscribe(t, 1)
        sub.expect_nothing("retained message after an empty retained publish")

    # ---------------------------------------------------------------- wills
    def will_args(self, t):
        will = {"topic": t, "payload": b"gone", "qos": 1, "retain": False}
        if self.version == V5:
            will["properties"] = props(PacketTypes.WILLMESSAGE,
                                       UserProperty=[("why", "crash"), ("n", "1")])
        return will

    def will_on_abnormal_close(self):
        t = self.topic("will", "abnormal")
        watcher = self.peer("wa-watch").connect()
        watcher.subscribe(t, 1)
        # The will sender runs without a loop thread: we drive paho by hand until
        # CONNACK, then close its socket under it. No DISCONNECT is ever sent, so
        # the broker only sees the TCP connection end (FIN).
        victim = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id("wa-victim"),
                             protocol=self.version)
        victim.will_set(**self.will_args(t))
        up = threading.Event()
        victim.on_connect = lambda *a: up.set()
        victim.connect(self.host, self.port, KEEPALIVE)
        try:
            deadline = time.monotonic() + TIMEOUT
            while not up.is_set() and time.monotonic() < deadline:
                victim.loop(0.05)
            expect(up.is_set(), f"will sender: no CONNACK within {TIMEOUT}s")
        finally:
            sock = victim.socket()
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the broker
            sock.close()
        (m,) = watcher.expect_messages(1, "will message after the connection was closed")
        expect((m.topic, m.payload) == (t, b"gone"), f"got {m.topic!r} {m.payload!r}")
        expect(m.qos == 1, f"will (QoS 1) delivered at QoS {m.qos} to a QoS 1 subscription")
        expect(not m.retain, "RETAIN set on a non-retained will")
        if self.version == V5:
            got = prop(m, "UserProperty")
            expect(got == [("why", "crash"), ("n", "1")], f"will user properties {got}")

    def no_will_after_disconnect(self):
        t = self.topic("will", "normal")
        watcher = self.peer("wn-watch").connect()
        watcher.subscribe(t, 1)
        leaver = self.peer("wn-leaver", will=self.will_args(t)).connect()
        leaver.disconnect()
        watcher.expect_nothing("will published after a normal DISCONNECT", WILL_QUIET)

    # ------------------------------------------------------------ wildcards
    def wildcard(self, kind):
        base = self.topic("wild", "plus" if kind == "+" else "hash")
        published = ["sport/tennis/score", "sport//score", "sport/tennis/player/score",
                     "sport", "sports/tennis/score", "other/tennis/score"]
        if kind == "+":
            flt, want = f"{base}/sport/+/score", {"sport/tennis/score", "sport//score"}
        else:
            flt, want = f"{base}/sport/#", {"sport/tennis/score", "sport//score",
                                            "sport/tennis/player/score", "sport"}
        sub = self.peer(f"w{'p' if kind == '+' else 'h'}-sub").connect()
        sub.subscribe(flt, 1)
        pub = self.peer(f"w{'p' if kind == '+' else 'h'}-pub").connect()
        for level in published:
            pub.publish(f"{base}/{level}", level.encode(), qos=1)
        got = sub.expect_messages(len(want), f"messages matching {flt}")
        names = {m.topic[len(base) + 1:] for m in got}
        expect(names == want, f"{flt} received {sorted(names)}, expected {sorted(want)}")
        sub.expect_nothing(f"{flt} matched a topic it must not")

    # ---------------------------------------------------- persistent session
    def persistent_session(self):
        t = self.topic("session", "queued")
        cid = self.client_id("ps-sub")
        expiry = 300 if self.version == V5 else None
        sub = self.peer("ps-sub", clean=False, session_expiry=expiry, client_id=cid).connect()
        expect(sub.session_present is False, "Session Present set for a client id never seen before")
        sub.subscribe(t, 1)
        sub.disconnect()
        pub = self.peer("ps-pub").connect()
        for i in range(3):
            pub.publish(t, f"m{i}".encode(), qos=1)
        back = self.peer("ps-sub-again", clean=False, session_expiry=expiry, client_id=cid).connect()
        expect(back.session_present is True, "Session Present not set on resuming the session")
        got = back.expect_messages(3, "QoS 1 messages queued while offline")
        payloads = [m.payload for m in got]
        expect(payloads == [b"m0", b"m1", b"m2"], f"got {payloads}, expected m0 m1 m2 in order")
        expect(all(m.qos == 1 for m in got), f"delivered at QoS {[m.qos for m in got]}")
        back.expect_nothing("after the queued messages")
        self.end_session(back)

    def end_session(self, peer):
        """Leave no session behind on the broker: 5.0 sets its expiry to 0 on the way
        out; 3.1.1 reconnects with Clean Session 1, which discards it."""
        if self.version == V5:
            peer.disconnect(props(PacketTypes.DISCONNECT, SessionExpiryInterval=0))
        else:
            peer.disconnect()
            self.peer("cleanup", clean=True, client_id=peer.client_id).connect().disconnect()

    # --------------------------------------------------- 5.0 properties
    def v5_round_trip(self, name, publish_props):
        """Publish one QoS 1 message carrying `publish_props` to a QoS 1 subscriber;
        returns what arrived."""
        t = self.topic("props", name)
        sub = self.peer(f"{name}-sub").connect()
        sub.subscribe(t, 1)
        pub = self.peer(f"{name}-pub").connect()
        pub.publish(t, b"with properties", qos=1,
                    properties=props(PacketTypes.PUBLISH, **publish_props))
        (m,) = sub.expect_messages(1, "the message with properties")
        expect(m.payload == b"with properties", f"payload {m.payload!r}")
        return m

    def v5_user_properties(self):
        # A repeated key and a chosen order: both must survive as sent.
        sent = [("k1", "v1"), ("k2", "v2"), ("k1", "v3"), ("empty", "")]
        m = self.v5_round_trip("user", {"UserProperty": sent})
        got = prop(m, "UserProperty")
        expect(got == sent, f"user properties {got}, expected {sent}")

    def v5_content_type(self):
        m = self.v5_round_trip("ctype", {"ContentType": "application/json; charset=utf-8",
                                         "PayloadFormatIndicator": 1})
        expect(prop(m, "ContentType") == "application/json; charset=utf-8",
               f"content type {prop(m, 'ContentType')!r}")
        expect(prop(m, "PayloadFormatIndicator") == 1,
               f"payload format indicator {prop(m, 'PayloadFormatIndicator')!r}")

    def v5_request_response(self):
        corr = bytes([0, 255, 16, 1, 128])  # binary, not UTF-8: must pass byte for byte
        m = self.v5_round_trip("reqresp", {"ResponseTopic": self.topic("props", "reply", "to"),
                                           "CorrelationData": corr})
        expect(prop(m, "ResponseTopic") == self.topic("props", "reply", "to"),
               f"response topic {prop(m, 'ResponseTopic')!r}")
        expect(prop(m, "CorrelationData") == corr, f"correlation data {prop(m, 'CorrelationData')!r}")

    def v5_expiry_forwarded(self):
        m = self.v5_round_trip("expiry", {"MessageExpiryInterval": 60})
        left = prop(m, "MessageExpiryInterval")
        expect(left is not None, "Message Expiry Interval missing on delivery")
        expect(55 <= left <= 60, f"Message Expiry Interval {left}, expected 60 less the time waited")

    def v5_expired_not_delivered(self):
        """A subscriber is offline (its session kept) while two messages are queued
        for it: one that expires after 1 s, then one that never expires. Back after
        2.5 s, it must get the second only; the first would have come before it."""
        t = self.topic("props", "expired")
        cid = self.client_id("ex-sub")
        sub = self.peer("ex-sub", clean=False, session_expiry=300, client_id=cid).connect()
        sub.subscribe(t, 1)
        sub.disconnect()
        pub = self.peer("ex-pub").connect()
        pub.publish(t, b"short-lived", qos=1, properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=1))
        pub.publish(t, b"durable", qos=1)
        time.sleep(2.5)
        back = self.peer("ex-sub-again", clean=False, session_expiry=300, client_id=cid).connect()
        got = back.expect_messages(1, "the message without expiry")
        expect(got[0].payload == b"durable", f"first delivery {got[0].payload!r}: the expired message was sent")
        back.expect_nothing("after the message without expiry")
        self.end_session(back)

    # ----------------------------------------------------------------- all
    def all(self):
        c = self.cite
        min_qos = c("[MQTT-3.8.4-6]", "[MQTT-3.8.4-8]")
        self.check("QoS 0 publish, subscriptions at QoS 0/1/2", min_qos, lambda: self.qos_round_trip(0))
        self.check("QoS 1 publish, subscriptions at QoS 0/1/2", min_qos, lambda: self.qos_round_trip(1))
        self.check("QoS 2 publish, subscriptions at QoS 0/1/2, exactly once",
                   f"{min_qos} 4.3.3", lambda: self.qos_round_trip(2))
        self.check("retained message sent to a new subscriber, RETAIN=1",
                   c("[MQTT-3.3.1-5] [MQTT-3.3.1-6] [MQTT-3.3.1-8]", "[MQTT-3.3.1-5] [MQTT-3.3.1-9] 3.3.1.3"),
                   self.retained_stored)
        self.check("retained publish reaches an established subscription with RETAIN=0",
                   c("[MQTT-3.3.1-9]", "[MQTT-3.3.1-12]"), self.retained_live_flag)
        self.check("retained message replaced by the next retained publish", "[MQTT-3.3.1-5]",
                   self.retained_replaced)
        self.check("empty retained payload deletes the retained message",
                   c("[MQTT-3.3.1-10] [MQTT-3.3.1-11] [MQTT-3.3.1-12]", "[MQTT-3.3.1-6] [MQTT-3.3.1-7] [MQTT-3.3.1-8]"),
                   self.retained_deleted)
        self.check("will published when the connection closes without DISCONNECT",
                   c("[MQTT-3.1.2-8]", "[MQTT-3.1.2-8] [MQTT-3.1.3-10]"), self.will_on_abnormal_close)
        self.check("no will after a normal DISCONNECT", "[MQTT-3.1.2-8] [MQTT-3.14.4-3]",
                   self.no_will_after_disconnect)
        self.check("'+' matches exactly one level (empty included)", "[MQTT-3.3.2-3] 4.7.1.3",
                   lambda: self.wildcard("+"))
        self.check("'#' matches the parent and any number of levels", "[MQTT-3.3.2-3] 4.7.1.2",
                   lambda: self.wildcard("#"))
        self.check("persistent session keeps QoS 1 messages while offline, Session Present=1",
                   c("[MQTT-3.1.2-4] [MQTT-3.1.2-5] [MQTT-3.2.2-2] [MQTT-3.2.2-3]",
                     "[MQTT-3.1.2-5] [MQTT-3.1.2-6] [MQTT-3.2.2-3] 4.1"),
                   self.persistent_session)
        if self.version == V5:
            self.check("user properties forwarded unaltered, in order", "[MQTT-3.3.2-17] [MQTT-3.3.2-18]",
                       self.v5_user_properties)
            self.check("content type and payload format indicator forwarded",
                       "[MQTT-3.3.2-20] [MQTT-3.3.2-4]", self.v5_content_type)
            self.check("response topic and correlation data forwarded",
                       "[MQTT-3.3.2-15] [MQTT-3.3.2-16]", self.v5_request_response)
            self.check("message expiry interval present on delivery, counted down", "[MQTT-3.3.2-6]",
                       self.v5_expiry_forwarded)
            self.check("expired message not delivered to a returning subscriber", "[MQTT-3.3.2-5]",
                       self.v5_expired_not_delivered)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    args = ap.parse_args()
    prefix = f"interop/{uuid.uuid4().hex[:12]}/paho"
    deadline = time.monotonic() + BUDGET
    passed = failed = 0
    for version in (V311, V5):
        run = Run(args.host, args.port, version, prefix, deadline)
        run.all()
        passed += run.passed
        failed += run.failed
    print(f"paho: {passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
