#!/usr/bin/env python3
"""Transports with clients no one here wrote.

Usage: python3 .ci/interop_transports.py [--petrel BIN] [--mqttjs DIR]

Certificates are made here with openssl (a CA, the server's, a client's whose
Common Name is `sensor-1`, and one from another CA), never committed. Petrel
gets a TLS listener, a mutual-TLS listener that takes the client
certificate's name as the user name (with an ACL on that name), a WebSocket
and a secure WebSocket listener. Then:
- mosquitto_pub / mosquitto_sub over TLS (--cafile) and mutual TLS (--cert,
  --key), in MQTT 3.1.1 and 5.0, with the ACL deciding what sensor-1 may do;
  no certificate, or one from another CA, is refused;
- Python paho-mqtt's websocket transport over ws and wss;
- MQTT.js from Node over ws (if --mqttjs names a folder with `mqtt`
  installed; .ci/run installs it);
- Python aioquic (another QUIC stack) exchanging MQTT packets with the QUIC
  listener over one stream; a client offering another ALPN is refused.
Every "refused" or "nothing arrived" has a positive control beside it. One
line per check, then "transport interop: N passed, M failed"; non-zero exit
on any failure. Every wait is bounded.
"""

import argparse
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time

import paho.mqtt.client as mqtt
from broker_process import TIMEOUT, BrokerProcess, free_port, run


def openssl(*args):
    r = run(["openssl", *args], timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)}: {r.stderr}")


def make_pki(work):
    """A CA, a server certificate for localhost, client certificates."""
    p = lambda name: os.path.join(work, name)  # noqa: E731
    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", p(f"{ca}.key"), "-out", p(f"{ca}.pem"), "-days", "2",
                "-subj", f"/CN=petrel interop {ca}")
    # Version 3 certificates (webpki, like most verifiers, refuses v1).
    ext = p("server.ext")
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
                "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    client_ext = p("client.ext")
    with open(client_ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")

    def issue(name, cn, ca, extfile=None):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", p(f"{name}.key"), "-out", p(f"{name}.csr"), "-subj", f"/CN={cn}")
        args = ["x509", "-req", "-in", p(f"{name}.csr"), "-CA", p(f"{ca}.pem"), "-CAkey",
                p(f"{ca}.key"), "-CAcreateserial", "-out", p(f"{name}.pem"), "-days", "2"]
        if extfile:
            args += ["-extfile", extfile]
        openssl(*args)

    issue("server", "localhost", "ca", ext)
    issue("sensor", "sensor-1", "ca", client_ext)
    issue("mallory", "sensor-1", "other-ca", client_ext)
    return p


class Petrel:
    def __init__(self, binary, work, p):
        self.ports = {k: free_port() for k in ("tcp", "tls", "mtls", "ws", "wss", "quic")}
        acl = p("acl")
        with open(acl, "w") as f:
            # Anonymous clients read every sensor; sensor-1 (a certificate's
            # name) writes only its own subtree; everyone uses open/#.
            f.write("topic read sensors/#\n\nuser sensor-1\ntopic readwrite sensors/1/#\n\n"
                    "pattern readwrite open/#\n")
        conf = p("petrel.toml")
        tls = f'certfile = "{p("server.pem")}"\nkeyfile = "{p("server.key")}"\n'
        with open(conf, "w") as f:
            f.write(
                f'allow_anonymous = true\nacl_file = "{acl}"\nsys_interval = 0\n'
                f'[[listener]]\nbind = "127.0.0.1:{self.ports["tcp"]}"\n'
                f'[[listener]]\ntransport = "tls"\nbind = "127.0.0.1:{self.ports["tls"]}"\n{tls}'
                f'[[listener]]\ntransport = "tls"\nbind = "127.0.0.1:{self.ports["mtls"]}"\n{tls}'
                f'cafile = "{p("ca.pem")}"\nrequire_certificate = true\nuse_identity_as_username = true\n'
                f'[[listener]]\ntransport = "ws"\nbind = "127.0.0.1:{self.ports["ws"]}"\n'
                f'[[listener]]\ntransport = "wss"\nbind = "127.0.0.1:{self.ports["wss"]}"\n{tls}'
                f'[[listener]]\ntransport = "quic"\nbind = "127.0.0.1:{self.ports["quic"]}"\n{tls}'
            )
        tcp = [port for name, port in self.ports.items() if name != "quic"]  # QUIC is UDP
        self.process = BrokerProcess("petrel", [binary, "broker", "--memory", "-c", conf],
                                     p("petrel.log"), tcp)

    def stop(self):
        self.process.stop()


def sub_then_pub(sub_args, pub_args, topic_pub, message, wait=4):
    """Start mosquitto_sub, publish once; what the subscriber printed."""
    sub = subprocess.Popen(["mosquitto_sub", *sub_args, "-v", "-W", str(wait), "-C", "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.8)
    pub = run(["mosquitto_pub", *pub_args, "-q", "1", "-t", topic_pub, "-m", message])
    try:
        out, err = sub.communicate(timeout=wait + 4)
    except subprocess.TimeoutExpired:
        sub.kill()
        out, err = sub.communicate()
    return out.strip(), pub, err


class PahoWs:
    def __init__(self, port, client_id, tls_ca=None):
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv311, transport="websockets")
        self.c.ws_set_options(path="/mqtt")
        if tls_ca:
            self.c.tls_set(ca_certs=tls_ca)
        self.messages = queue.Queue()
        self.subscribed = queue.Queue()
        self.c.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.c.on_subscribe = lambda *a: self.subscribed.put(True)
        connected = queue.Queue()
        self.c.on_connect = lambda c, u, f, rc, p: connected.put(rc.value)
        self.c.connect("localhost", port, keepalive=30)
        self.c.loop_start()
        rc = connected.get(timeout=TIMEOUT)
        if rc != 0:
            raise RuntimeError(f"CONNACK {rc:#x}")

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def aioquic_exchange(port, ca, alpn):
    """Over one QUIC stream: CONNECT, SUBSCRIBE, PUBLISH to ourselves; the
    packets that came back."""
    import asyncio

    from aioquic.asyncio import connect
    from aioquic.quic.configuration import QuicConfiguration

    def string(s):
        return len(s).to_bytes(2, "big") + s

    topic = b"open/quic"
    body = string(b"MQTT") + bytes([4, 2, 0, 30]) + string(b"aioquic")
    connect_packet = bytes([0x10, len(body)]) + body
    body = (1).to_bytes(2, "big") + string(topic) + bytes([1])
    subscribe = bytes([0x82, len(body)]) + body
    body = string(topic) + b"hello quic"
    publish = bytes([0x30, len(body)]) + body

    async def main():
        config = QuicConfiguration(is_client=True, alpn_protocols=[alpn])
        config.load_verify_locations(ca)
        async with connect("localhost", port, configuration=config) as client:
            reader, writer = await client.create_stream()
            got = []
            for packet, answer in ((connect_packet, 4), (subscribe, 5), (publish, len(publish))):
                writer.write(packet)
                got.append(await asyncio.wait_for(reader.readexactly(answer), TIMEOUT))
            return got

    return asyncio.run(asyncio.wait_for(main(), TIMEOUT * 2))


MQTTJS = r"""
const mqtt = require(process.argv[1]);
const url = process.argv[2];
const done = (code, why) => { console.log(why); process.exit(code); };
setTimeout(() => done(1, "timed out"), 8000);
const sub = mqtt.connect(url, { protocolVersion: 5, clientId: "mqttjs-sub" });
sub.on("error", (e) => done(1, "sub error " + e));
sub.on("connect", () => sub.subscribe("open/js", { qos: 1 }, (err) => {
  if (err) done(1, "subscribe " + err);
  const pub = mqtt.connect(url, { protocolVersion: 4, clientId: "mqttjs-pub" });
  pub.on("connect", () => pub.publish("open/js", "from node", { qos: 1 }));
}));
sub.on("message", (topic, payload) => done(0, topic + " " + payload.toString()));
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--petrel", default="target/debug/petrel")
    ap.add_argument("--mqttjs", default=None, help="a folder whose node_modules has mqtt")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="petrel-transport-interop-")
    p = make_pki(work)
    broker = Petrel(os.path.abspath(args.petrel), work, p)
    ports = broker.ports
    results = []

    def check(name, fn):
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
        for flag, n in (("mqttv311", "3.1.1"), ("mqttv5", "5.0")):
            tls = ["-h", "localhost", "-p", str(ports["tls"]), "-V", flag, "--cafile", p("ca.pem")]
            mtls = ["-h", "localhost", "-p", str(ports["mtls"]), "-V", flag, "--cafile", p("ca.pem")]
            sensor = ["--cert", p("sensor.pem"), "--key", p("sensor.key")]
            mallory = ["--cert", p("mallory.pem"), "--key", p("mallory.key")]

            def over_tls():
                out, pub, err = sub_then_pub([*tls, "-t", "open/tls"], tls, "open/tls", "hello")
                expect(pub.returncode == 0, pub.stderr)
                expect(out == "open/tls hello", f"got {out!r} {err}")
            check(f"{n} mosquitto_pub/sub over TLS with --cafile", over_tls)

            def mutual():
                # sensor-1 reads and writes its own subtree.
                out, pub, err = sub_then_pub([*mtls, *sensor, "-t", "sensors/1/#"],
                                             [*mtls, *sensor], "sensors/1/t", "mine")
                expect(pub.returncode == 0, pub.stderr)
                expect(out == "sensors/1/t mine", f"got {out!r} {err}")
                # An anonymous reader of every sensor (over plain TLS) gets
                # what sensor-1 may write, not what it may not.
                out, pub, err = sub_then_pub([*tls, "-t", "sensors/#"],
                                             [*mtls, *sensor], "sensors/1/t", "allowed")
                expect(out == "sensors/1/t allowed", f"the positive control got {out!r} {err}")
                out, pub, _ = sub_then_pub([*tls, "-t", "sensors/#"],
                                           [*mtls, *sensor], "sensors/2/t", "not mine", wait=2)
                expect(out == "", f"a denied publish arrived: {out!r}")
            check(f"{n} mosquitto_pub/sub over mutual TLS: the certificate's name under the ACL", mutual)

            def refused():
                for what, cert in (("no certificate", []), ("another CA's", mallory)):
                    r = run(["mosquitto_pub", *mtls, *cert, "-t", "sensors/1/t", "-m", "x"])
                    expect(r.returncode != 0, f"{what} was accepted")
                ok = run(["mosquitto_pub", *mtls, *sensor, "-t", "sensors/1/t", "-m", "x"])
                expect(ok.returncode == 0, f"the positive control failed: {ok.stderr}")
            check(f"{n} mosquitto_pub over mutual TLS: no certificate or a stranger's refused", refused)

        def paho_ws(port, ca, name):
            sub = PahoWs(port, f"paho-{name}-sub", ca)
            sub.c.subscribe("open/paho", qos=1)
            sub.subscribed.get(timeout=TIMEOUT)
            pub = PahoWs(port, f"paho-{name}-pub", ca)
            pub.c.publish("open/paho", b"over " + name.encode(), qos=1).wait_for_publish(TIMEOUT)
            got = sub.messages.get(timeout=TIMEOUT)
            expect(got == ("open/paho", b"over " + name.encode()), f"got {got}")
            sub.close()
            pub.close()

        check("paho-mqtt websocket transport over ws", lambda: paho_ws(ports["ws"], None, "ws"))
        check("paho-mqtt websocket transport over wss", lambda: paho_ws(ports["wss"], p("ca.pem"), "wss"))

        def aioquic():
            got = aioquic_exchange(ports["quic"], p("ca.pem"), "mqtt")
            expect(got[0] == bytes([0x20, 2, 0, 0]), f"CONNACK {got[0]!r}")
            expect(got[1] == bytes([0x90, 3, 0, 1, 1]), f"SUBACK {got[1]!r}")
            expect(got[2].endswith(b"open/quichello quic"), f"PUBLISH {got[2]!r}")
        check("aioquic: MQTT 3.1.1 over one QUIC stream (CONNECT, SUBSCRIBE, PUBLISH back)", aioquic)

        def aioquic_alpn():
            try:
                aioquic_exchange(ports["quic"], p("ca.pem"), "h3")
            except Exception:
                return
            raise AssertionError("a client offering h3 got through")
        check("aioquic: a client offering another ALPN is refused", aioquic_alpn)

        if args.mqttjs:
            def mqttjs():
                mod = os.path.join(os.path.abspath(args.mqttjs), "node_modules", "mqtt")
                r = run(["node", "-e", MQTTJS, mod, f"ws://127.0.0.1:{ports['ws']}/mqtt"], timeout=15)
                expect(r.returncode == 0 and r.stdout.strip() == "open/js from node",
                       f"{r.stdout} {r.stderr}")
            check("MQTT.js (Node) over ws, 5.0 subscriber and 3.1.1 publisher", mqttjs)
        else:
            print("SKIP MQTT.js: no --mqttjs folder")
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    passed = sum(results)
    failed = len(results) - passed
    print(f"transport interop: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
