"""Shared fixtures: a tern data directory with its own free loopback ports,
the CLI, and a `tern serve` that every test stops again."""
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TERN_BIN = os.environ.get("TERN_BIN", str(ROOT / "build" / "tern"))
SANITIZED = os.environ.get("TERN_SANITIZED", "0") in ("1", "ON", "TRUE", "true")
# Sanitized binaries are several times slower: scale waits, not assertions.
SLOW = 4 if SANITIZED else 1


_ports_given = set()


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port():
    """A port for a test listener, below the kernel's ephemeral range: a port
    from bind(0) could meanwhile become the local port of some outgoing
    connection (the mta's pooled LMTP connections live long) and the
    listener would find it in use."""
    high = min(_ephemeral_low(), 32768) - 1
    for _ in range(2000):
        port = random.randint(10000, high)
        if port in _ports_given:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _ports_given.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")


def wait_port(port, timeout=10.0, up=True):
    deadline = time.time() + timeout * SLOW
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                if up:
                    return True
        except OSError:
            if not up:
                return True
        time.sleep(0.05)
    return False


SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


def sanitizer_reports(text):
    """The lines of `text` that start a sanitizer report."""
    return [l for l in text.splitlines() if any(m in l for m in SANITIZER_MARKS)]


class Tern:
    """One tern installation: data dir, config file, CLI, supervisor."""

    def __init__(self, root, lmtp_extra="", top_extra="", smtp_extra="", queue_extra="",
                 mover_extra="retention = 0\nlease_ms = 2000", imap_extra=""):
        self.data = root / "data"
        self.ports = {"s1": free_port(), "s2": free_port(), "smtp": free_port(),
                      "sync-s1": free_port(), "sync-s2": free_port(), "imap": free_port()}
        self.config = root / "tern.conf"
        self.imap_extra = imap_extra
        self.write_config(lmtp_extra, top_extra, smtp_extra, queue_extra, mover_extra)
        self.serve_proc = None
        self.serve_log = root / "serve.log"

    def write_config(self, lmtp_extra="", top_extra="", smtp_extra="", queue_extra="",
                     mover_extra=""):
        self.config.write_text(
            "# test configuration\n"
            f"hostname = mx.test\n{top_extra}\n"
            f"[store s1]\nlmtp = 127.0.0.1:{self.ports['s1']}\n"
            f"sync = 127.0.0.1:{self.ports['sync-s1']}\n"
            f"[store s2]\nlmtp = 127.0.0.1:{self.ports['s2']}\n"
            f"sync = 127.0.0.1:{self.ports['sync-s2']}\n"
            f"[lmtp]\n{lmtp_extra}\n"
            f"[smtp]\nlisten = 127.0.0.1:{self.ports['smtp']}\n{smtp_extra}\n"
            f"[queue]\n{queue_extra}\n"
            f"[mover]\n{mover_extra}\n"
            f"[imap]\nlisten = 127.0.0.1:{self.ports['imap']}\nauth_fail_delay_ms = 50\n"
            f"{self.imap_extra}\n"
        )

    def env(self):
        env = dict(os.environ)
        env.pop("TERN_DATA", None)
        env.pop("TERN_CONFIG", None)
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "detect_leaks=1")
        return env

    def cli(self, *args, check=True, input=None, env=None):
        cmd = [TERN_BIN, "--data", str(self.data), "--config", str(self.config), *args]
        p = subprocess.run(cmd, capture_output=True, text=True, input=input,
                           env=env or self.env(), timeout=60 * SLOW)
        if check and p.returncode != 0:
            raise AssertionError(f"{cmd} failed ({p.returncode}): {p.stderr}")
        return p

    def serve(self, *extra, wait=True):
        assert self.serve_proc is None
        log = open(self.serve_log, "ab")
        self.serve_proc = subprocess.Popen(
            [TERN_BIN, "--data", str(self.data), "--config", str(self.config), "serve", *extra],
            stdout=log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True)
        log.close()
        if wait:
            for name in self.role_ports(extra):
                assert wait_port(self.ports[name]), f"{name} did not come up:\n{self.log(4000)}"
        return self.serve_proc

    @staticmethod
    def role_ports(extra):
        if "--roles" in extra:
            spec = extra[list(extra).index("--roles") + 1].split(",")
            stores = [r.split(":", 1)[1] for r in spec if r.startswith("store:")]
            # A store listens for LMTP first, then for TSYNC: wait for both.
            return stores + [f"sync-{s}" for s in stores] + \
                (["smtp"] if "mta" in spec else []) + (["imap"] if "imap" in spec else [])
        return ["s1", "s2", "smtp", "sync-s1", "sync-s2", "imap"]

    def stop(self):
        p = self.serve_proc
        if p is None:
            return
        self.serve_proc = None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=20 * SLOW)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        # Whatever happened, nothing of ours may outlive the test.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        # Under ASan/UBSan, a role that leaked, overflowed or hit undefined
        # behaviour reports it in the log (at exit, for leaks): any report
        # fails the test that ran it.
        reports = sanitizer_reports(self.log())
        assert not reports, "sanitizer report in serve.log:\n" + "\n".join(reports)

    def log(self, tail=None):
        try:
            text = self.serve_log.read_text(errors="replace")
            return text[-tail:] if tail else text
        except FileNotFoundError:
            return ""

    def role_pid(self, store):
        """The pid of the process serving `store` (it holds the store's lock),
        or of the mta for "mta" (it holds the queue's lock)."""
        if store == "mover":
            for line in reversed(self.log().splitlines()):
                m = __import__("re").search(r"started mover \(pid (\d+)\)", line)
                if m:
                    return int(m.group(1))
            raise FileNotFoundError("no mover started")
        path = self.data / "queue" / "lock" if store == "mta" else \
            self.data / "stores" / store / "lock"
        for _ in range(100):
            try:
                return int(path.read_text().strip())
            except ValueError:  # a pid of more digits being written: read again
                time.sleep(0.01)
        return int(path.read_text().strip())

    def queue(self):
        return self.cli("queue").stdout

    def wait_queue_empty(self, timeout=10):
        deadline = time.time() + timeout * SLOW
        while time.time() < deadline:
            if "queue is empty" in self.queue():
                return True
            time.sleep(0.1)
        return False

    def setup_users(self, *users, domain="example.org", store="s1"):
        self.cli("domain", "add", domain)
        for u in users:
            self.cli("user", "add", u, "--password", "secret", "--store", store)

    def export(self, user, store=None):
        args = ["mailbox", "export", user]
        if store:
            args += ["--store", store]
        p = self.cli(*args, check=False)
        if p.returncode != 0 and "no mailbox" in p.stderr:
            return ""
        assert p.returncode == 0, p.stderr
        return p.stdout


@pytest.fixture
def tern(tmp_path):
    t = Tern(tmp_path)
    yield t
    t.stop()


@pytest.fixture
def served(tern):
    tern.setup_users("alice@example.org", "bob@example.org")
    tern.serve()
    return tern
