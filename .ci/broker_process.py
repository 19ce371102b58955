"""What the interop scripts share: free ports, bounded commands, and a
broker process started, waited for and stopped (SIGTERM, then SIGKILL)
by its own process id."""

import signal
import socket
import subprocess
import time

TIMEOUT = 5.0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


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
