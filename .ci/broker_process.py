"""What the interop scripts share: free ports, bounded commands, and a
broker process started, waited for and stopped (SIGTERM, then SIGKILL)
by its own process id."""

import os
import signal
import socket
import subprocess
import time

TIMEOUT = 5.0


def _range():
    """[low, high): below the kernel's ephemeral range, or above it where it
    starts too low to leave room (as petrel-testkit chooses)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            first, last = (int(n) for n in f.read().split()[:2])
    except (OSError, ValueError):
        return 10000, 49152
    if first >= 11000:
        return 10000, first
    if last + 1 + 1000 <= 65536:
        return max(last, 10000) + 1, 65536
    return 10000, 49152


_LOW, _HIGH = _range()
_SPAN = _HIGH - _LOW
_next = [(os.getpid() * 7919) % _SPAN]


def _bindable(port):
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        s = socket.socket(socket.AF_INET, kind)
        try:
            if kind == socket.SOCK_STREAM:
                # As a broker's listener binds (and Rust's std does).
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def free_port():
    """A port for a broker's listener (TCP and UDP free now) from outside the
    kernel's ephemeral range, not the same twice in this process: a port
    got by binding 0 and letting go can be handed by the kernel to the next
    bind(0) or to an outgoing connection before the broker binds it (the
    Rust tests' petrel-testkit does the same)."""
    for _ in range(_SPAN):
        port = _LOW + _next[0] % _SPAN
        _next[0] += 1
        if _bindable(port):
            return port
    raise RuntimeError("no free port outside the ephemeral range")


def run(cmd, timeout=TIMEOUT + 5, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


class BrokerProcess:
    """`cmd` started with its output in `log_path`, once every TCP port in
    `ports` accepts connections (within 10 s, or RuntimeError)."""

    def __init__(self, name, cmd, log_path, ports):
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                for port in ports:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{name} did not start; see {log_path}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
