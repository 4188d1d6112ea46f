#!/usr/bin/python3
"""tern torture: concurrent mail, moves back and forth, IMAP changes and
kill -9 at random, then an independent check that nothing acknowledged was
lost or duplicated (brief: "Zero"; issue #7).

    /usr/bin/python3 tests/torture/torture.py [KEY=VALUE ...]
    /usr/bin/python3 tests/torture/torture.py demo        # what `tern demo` runs

Parameters, as KEY=VALUE arguments or in the environment (arguments win):

    DURATION=180     seconds of load (mail, moves, IMAP changes, kills)
    USERS=10         users, homed alternately on s1 and s2
    CLIENTS=4        concurrent SMTP clients
    RATE=40          messages per second over all clients (a target)
    IMAP=2           concurrent IMAP clients changing flags and expunging
    MOVERS=2         concurrent `tern move` drivers
    ABORTS=0.15      share of moves that are aborted at a random moment
    DRAINS=on        `tern drain` s1 -> s2 at 35 % and back at 70 % of the run
    KILLS=on         kill -9 a random role (mta, a store, mover, imap)
    KILL_EVERY=6     mean seconds between kills
    RESTART=on       stop the whole `tern serve` now and then and start it again
                     (alternately SIGTERM and SIGKILL of every process)
    RESTART_EVERY=   seconds between those (default: a third of DURATION, >= 45)
    SEED=            the random seed (default: from the clock; printed)
    TERN_BIN=        the binary (default: build/tern of this tree)
    KEEP=failed      keep the work directory (data, config, serve.log): on,
                     off, or failed (only when the run fails)
    SABOTAGE=        for the harness's own test (test_selftest.py): before the
                     check, "lose" expunges one owed copy behind the harness's
                     back, "dup" delivers one a second time over LMTP; the
                     check must then fail

Each message carries a unique token (X-Token). The harness records which
messages got a 250 after DATA and for which recipients. At the end it waits
for the queue to drain and every job to end, then reads every mailbox
through IMAP as an independent reader and checks: every acknowledged token
is in each of its recipients' mailboxes exactly once (alternates included)
or the sender holds a DSN for that recipient; every confirmed expunge stayed
expunged and every confirmed \\Flagged stayed set; every user has exactly one
live mailbox, on its home at its epoch; no job is stuck; `tern doctor` finds
nothing. It prints a summary table and exits 1 on any violation, 2 on a
harness failure (the cluster could not be started, say).
"""
import imaplib
import os
import random
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = "example.org"
PASSWORD = "torture-pw"
STORES = ("s1", "s2")
VICTIMS = ("mta", "store:s1", "store:s2", "mover", "imap")
TOKEN_RE = re.compile(rb"^X-Token: ([0-9a-f]{32})\r?$", re.M | re.I)

DEFAULTS = {
    "DURATION": "180", "USERS": "10", "CLIENTS": "4", "RATE": "40", "IMAP": "2",
    "MOVERS": "2", "ABORTS": "0.15", "DRAINS": "on", "KILLS": "on", "KILL_EVERY": "6",
    "RESTART": "on", "RESTART_EVERY": "", "SEED": "", "TERN_BIN": "", "KEEP": "failed",
    "SABOTAGE": "",
}


def params(argv):
    p = {k: os.environ.get(k, v) for k, v in DEFAULTS.items()}
    mode = "torture"
    for a in argv:
        if a == "demo":
            mode = "demo"
            continue
        if a in ("-h", "--help"):
            print(__doc__)
            sys.exit(0)
        k, eq, v = a.partition("=")
        if not eq or k not in DEFAULTS:
            sys.exit(f"torture: unknown argument '{a}' (KEY=VALUE with KEY one of "
                     f"{', '.join(DEFAULTS)})")
        p[k] = v

    def num(k, lo, hi, cast=int):
        try:
            v = cast(p[k])
        except ValueError:
            sys.exit(f"torture: {k}={p[k]} is not a number")
        if not lo <= v <= hi:
            sys.exit(f"torture: {k}={p[k]} is out of range ({lo}..{hi})")
        return v

    def onoff(k):
        v = p[k].lower()
        if v not in ("on", "off", "1", "0", "yes", "no", "true", "false"):
            sys.exit(f"torture: {k}={p[k]}: give on or off")
        return v in ("on", "1", "yes", "true")

    cfg = {
        "mode": mode,
        "duration": num("DURATION", 5, 86400),
        "users": num("USERS", 4, 500),
        "clients": num("CLIENTS", 1, 64),
        "rate": num("RATE", 1, 5000, float),
        "imap": num("IMAP", 0, 32),
        "movers": num("MOVERS", 0, 16),
        "aborts": num("ABORTS", 0, 1, float),
        "drains": onoff("DRAINS"),
        "kills": onoff("KILLS"),
        "kill_every": num("KILL_EVERY", 0.5, 3600, float),
        "restart": onoff("RESTART"),
        "keep": "failed" if p["KEEP"] == "failed" else ("on" if onoff("KEEP") else "off"),
        "seed": num("SEED", 0, 2**63) if p["SEED"] else int(time.time() * 1000) % 1000000,
        "bin": p["TERN_BIN"] or os.environ.get("TERN_BIN") or str(ROOT / "build" / "tern"),
    }
    cfg["sabotage"] = [x for x in p["SABOTAGE"].split(",") if x]
    for x in cfg["sabotage"]:
        if x not in ("lose", "dup"):
            sys.exit(f"torture: SABOTAGE={p['SABOTAGE']}: give lose, dup or both")
    cfg["restart_every"] = (num("RESTART_EVERY", 5, 86400) if p["RESTART_EVERY"]
                            else max(45, cfg["duration"] // 3))
    if not os.access(cfg["bin"], os.X_OK):
        sys.exit(f"torture: no tern binary at {cfg['bin']} (run make, or give TERN_BIN=)")
    return cfg


def say(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# ---- the cluster ----------------------------------------------------------

def ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(n, rnd):
    """n loopback ports below the kernel's ephemeral range (as conftest.py:
    a port from bind(0) could become the local port of an outgoing
    connection meanwhile)."""
    high, got = min(ephemeral_low(), 32768) - 1, []
    for _ in range(5000):
        port = rnd.randint(10000, high)
        if port in got:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        got.append(port)
        if len(got) == n:
            return got
    raise RuntimeError("no free ports below the ephemeral range")


def port_up(port, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def parse_ts(s):
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


class LogWatch(threading.Thread):
    """Follows serve.log: role pids, when each queued message was done, the
    phases of every move job, and roles that died by themselves."""
    LINE = re.compile(r"^(\S+Z) (\S+)\[(\d+)\] (\w+) (\S+): (.*)$")

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path, self.pos, self.partial = path, 0, b""
        self.lock = threading.Lock()
        self.pids = {}         # role spec -> pid of its latest start
        self.done = {}         # queue id -> time its last recipient became final
        self.phases = {}       # job id -> [(time, phase)]
        self.deaths = []       # (spec, pid, how) of roles that died
        self.errors = []       # log lines at level error
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.poll()
            time.sleep(0.1)

    def poll(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                chunk = f.read()
        except FileNotFoundError:
            return
        self.pos += len(chunk)
        data = self.partial + chunk
        lines = data.split(b"\n")
        self.partial = lines.pop()
        with self.lock:
            for raw in lines:
                self.line(raw.decode("utf-8", "replace"))

    def line(self, text):
        m = self.LINE.match(text)
        if not m:
            return
        ts, role, _pid, level, ctx, msg = m.groups()
        if level == "error":
            self.errors.append(text)
        if role == "serve":
            s = re.match(r"started (\S+) \(pid (\d+)\)$", msg)
            if s:
                self.pids[s.group(1)] = int(s.group(2))
            d = re.match(r"(\S+) \(pid (\d+)\) (killed by signal \d+|exited with status \d+)$", msg)
            if d:
                self.deaths.append((d.group(1), int(d.group(2)), d.group(3), parse_ts(ts)))
        elif role == "mta" and ctx == "mta":
            d = re.match(r"([0-9a-f]{16}): done$", msg)
            if d and d.group(1) not in self.done:
                self.done[d.group(1)] = parse_ts(ts)
        elif role == "mover" and ctx.startswith("move:"):
            p = re.match(r"\S+: phase (\w+)$", msg)
            if p:
                self.phases.setdefault(int(ctx[5:]), []).append((parse_ts(ts), p.group(1)))

    def pid(self, spec):
        with self.lock:
            return self.pids.get(spec)


class Cluster:
    """A private tern installation: data dir, config with free ports, the
    CLI, and one `tern serve` at a time."""

    def __init__(self, root, binary, rnd, retention=3):
        self.root, self.bin = root, binary
        self.data = root / "data"
        self.config = root / "tern.conf"
        self.log_path = root / "serve.log"
        names = ["s1", "s2", "sync-s1", "sync-s2", "smtp", "imap"]
        self.ports = dict(zip(names, free_ports(len(names), rnd)))
        self.config.write_text(
            "# written by tests/torture/torture.py\n"
            "hostname = torture.test\n"
            "restart_backoff_max = 500\n"
            f"[store s1]\nlmtp = 127.0.0.1:{self.ports['s1']}\n"
            f"sync = 127.0.0.1:{self.ports['sync-s1']}\n"
            f"[store s2]\nlmtp = 127.0.0.1:{self.ports['s2']}\n"
            f"sync = 127.0.0.1:{self.ports['sync-s2']}\n"
            f"[smtp]\nlisten = 127.0.0.1:{self.ports['smtp']}\n"
            # The stores take less than the mta: the largest messages the
            # clients send are refused for good at delivery (552), so DSNs
            # flow through the queue, the moves and the kills too.
            "[lmtp]\nmax_message_size = 65536\n"
            # Retries after a killed store come within seconds, not minutes.
            "[queue]\nretry_min = 1\nretry_max = 2\npark_max_ms = 500\n"
            # A short retention: moving back soon reuses the retained copy,
            # later the old copy is purged; both paths get exercised.
            f"[mover]\nretention = {retention}\nlease_ms = 2000\n"
            f"[imap]\nlisten = 127.0.0.1:{self.ports['imap']}\nauth_fail_delay_ms = 50\n")
        self.proc = None
        self.watch = LogWatch(self.log_path)
        self.watch.start()

    def cli(self, *args, timeout=120, check=False):
        cmd = [self.bin, "--data", str(self.data), "--config", str(self.config), *args]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            p = subprocess.CompletedProcess(cmd, 124, "", f"timed out after {timeout} s")
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {p.returncode}: {p.stderr.strip()}")
        return p

    def serve(self):
        assert self.proc is None
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.bin, "--data", str(self.data), "--config", str(self.config), "serve"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        for name in ("s1", "s2", "sync-s1", "sync-s2", "smtp", "imap"):
            if not port_up(self.ports[name], 60):
                raise RuntimeError(f"{name} did not come up; see {self.log_path}")

    def _gone(self, pgid, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.05)
        return False

    def stop(self, crash=False):
        """SIGTERM to the supervisor (it stops its roles), or with crash
        SIGKILL to every process of the installation at once."""
        p, self.proc = self.proc, None
        if p is None:
            return True
        clean = True
        if crash:
            os.killpg(p.pid, signal.SIGKILL)
        else:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                clean = False
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
        self._gone(p.pid, 30)
        return clean

    def role_pid(self, spec):
        """The pid of a role, if the process with it is that role."""
        pid = self.watch.pid(spec)
        if pid is None:
            return None
        kind, _, arg = spec.partition(":")
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        want = [b"role", kind.encode()] + ([arg.encode()] if arg else [])
        tail = [a for a in args if a][-len(want):]
        return pid if tail == want else None

    def home(self, user):
        out = self.cli("user", "show", user).stdout
        m = re.search(r"home:\s+(\S+)", out)
        return m.group(1) if m else None


# ---- what the harness records ----------------------------------------------

class Ledger:
    def __init__(self):
        self.lock = threading.Lock()
        self.msgs = {}            # token -> {"boxes": set, "t250": t, "qid": id, "sender": addr}
        self.sent = 0             # DATA attempted
        self.unacked = 0          # DATA without a 250 (an error or a dropped connection)
        self.rcpt_temp = 0        # RCPT answered 4xx (directory outage at a restart, say)
        self.problems = []        # violations found while running
        self.expunged = set()     # (box, token): UID EXPUNGE answered OK
        self.expunge_unsure = set()  # (box, token): the session died during the expunge
        self.flagged = set()      # (box, token): STORE +FLAGS (\Flagged) answered OK
        self.imap_sessions = 0
        self.imap_aborted = 0     # sessions ended by the server (BYE at a move) or a kill
        self.kills = {v: 0 for v in VICTIMS}
        self.faults = []          # (from, to): a role or the whole serve was down
        self.kill_misses = 0
        self.restarts = {"graceful": 0, "crash": 0}
        self.jobs = []            # job ids the harness started
        self.abort_asked = 0
        self.abort_refused = 0    # the job was past the switch
        self.move_refused = 0     # `tern move` refused (the user had a job, say)
        self.drains = 0

    def fault(self, t0, t1):
        with self.lock:
            self.faults.append((t0, t1))

    def near_fault(self, a, b, slack=3.0):
        """Whether [a, b] overlaps a fault or the few seconds after one
        (lease takeover, retry backoff)."""
        return any(f0 <= b and f1 + slack >= a for f0, f1 in self.faults)

    def problem(self, text):
        with self.lock:
            self.problems.append(text)
        say("PROBLEM:", text)


def pct(values, q):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def fmt_ms(v):
    return "-" if v is None else f"{v * 1000:.0f} ms"


def spread(values):
    if not values:
        return "-"
    return (f"{fmt_ms(pct(values, .5))} / {fmt_ms(pct(values, .99))} / {fmt_ms(max(values))} "
            f"(n={len(values)})")


# ---- the load ----------------------------------------------------------------

class Torture:
    def __init__(self, cfg, root):
        self.cfg = cfg
        self.rnd = random.Random(cfg["seed"])
        self.c = Cluster(root, cfg["bin"], self.rnd)
        self.led = Ledger()
        self.stop = threading.Event()        # end of the load phase
        self.serve_lock = threading.Lock()   # kills and whole restarts, one at a time
        self.busy = set()                    # users with a job the harness started
        self.busy_lock = threading.Lock()
        self.no_dest = set()                 # stores being drained: no moves into them
        self.users, self.aliases, self.expand = [], {}, {}
        self.title = f"tern torture, seed {cfg['seed']}, {cfg['duration']} s of load"

    # -- setup
    def setup(self, names=None, alias_names=None):
        """Users homed alternately on s1 and s2: with i % 5 == 1 a user has
        the next one as alternate with deliver-both, with i % 5 == 3 as its
        only alternate (alternates have none of their own); every third
        user has an alias. The first user is the busy one."""
        n = len(names) if names else self.cfg["users"]
        c = self.c
        c.cli("domain", "add", DOMAIN, check=True)
        self.users = [f"{names[i] if names else f'u{i:02d}'}@{DOMAIN}" for i in range(n)]
        for i, u in enumerate(self.users):
            c.cli("user", "add", u, "--password", PASSWORD, "--store", STORES[i % 2], check=True)
        alt = {}
        for i, u in enumerate(self.users):
            if i + 1 < n and i % 5 in (1, 3):
                args = ["--alternate", self.users[i + 1]] + (["--deliver-both"] if i % 5 == 1 else [])
                c.cli("user", "set", u, *args, check=True)
                alt[u] = (self.users[i + 1], i % 5 == 1)
        for k, i in enumerate(range(0, n, 3)):
            a = f"{alias_names[k] if alias_names and k < len(alias_names) else f'alias{i:02d}'}@{DOMAIN}"
            c.cli("alias", "add", a, self.users[i], check=True)
            self.aliases[a] = self.users[i]
        for addr in self.users + list(self.aliases):
            u = self.aliases.get(addr, addr)
            if u in alt:
                a, both = alt[u]
                self.expand[addr] = {u, a} if both else {a}
            else:
                self.expand[addr] = {u}
        self.addresses = self.users + list(self.aliases)
        self.alternates = alt
        # One busy mailbox: it gets about a third of the mail.
        self.hot = self.users[0]

    # -- SMTP clients
    def smtp_client(self, i):
        rnd = random.Random(self.cfg["seed"] * 1000 + i)
        per_client = self.cfg["rate"] / self.cfg["clients"]
        conn, in_session, next_t = None, 0, time.time()
        while not self.stop.is_set():
            next_t = max(next_t + rnd.expovariate(per_client), time.time() - 1)
            delay = next_t - time.time()
            if delay > 0:
                time.sleep(delay)
            try:
                if conn is None:
                    conn = smtplib.SMTP("127.0.0.1", self.c.ports["smtp"], timeout=30)
                    conn.ehlo("torture.client")
                    in_session = rnd.randint(1, 20)
                self.send_one(conn, rnd)
                in_session -= 1
                if in_session <= 0:
                    conn.quit()
                    conn = None
            except (OSError, smtplib.SMTPException):
                if conn is not None:
                    try:
                        conn.close()
                    except OSError:
                        pass
                conn = None
                time.sleep(0.05)
        if conn is not None:
            try:
                conn.quit()
            except (OSError, smtplib.SMTPException):
                pass

    def send_one(self, conn, rnd, rcpts=None, size=None):
        """One message with a fresh token, recorded in the ledger; raises
        on a broken connection (the message may then have been kept)."""
        sender = rnd.choice(self.users)
        if rcpts is None:
            k = rnd.choice((1, 1, 1, 2, 2, 3))
            rcpts = set(rnd.sample(self.addresses, k))
            if rnd.random() < 0.3:
                rcpts.add(self.hot)
        token = uuid.uuid4().hex
        if size is None:
            size = rnd.randint(20000, 70000) if rnd.random() < 0.05 else rnd.randint(100, 2500)
        line = ("torture " * 9 + "\r\n")
        body = (f"From: <{sender}>\r\nTo: torture\r\nSubject: torture {token[:8]}\r\n"
                f"Message-ID: <{token}@torture.test>\r\nX-Token: {token}\r\n\r\n"
                + line * (size // len(line) + 1)).encode()
        code, resp = conn.mail(sender)
        if code != 250:
            conn.rset()
            return
        ok = []
        for r in sorted(rcpts):
            code, resp = conn.rcpt(r)
            if code == 250:
                ok.append(r)
            elif 400 <= code < 500:
                with self.led.lock:
                    self.led.rcpt_temp += 1
            else:
                self.led.problem(f"RCPT {r}: {code} {resp!r} (a permanent refusal of a valid user)")
        if not ok:
            conn.rset()
            return
        boxes = set().union(*(self.expand[r] for r in ok))
        with self.led.lock:
            self.led.sent += 1
            # Recorded before DATA: a message without a 250 may still arrive
            # (0 or 1 times), and then it must be ours.
            self.led.msgs[token] = {"boxes": boxes, "t250": None, "qid": None, "sender": sender}
        try:
            code, resp = conn.data(body)
        except (OSError, smtplib.SMTPException):
            with self.led.lock:
                self.led.unacked += 1
            raise
        now = time.time()
        with self.led.lock:
            if code == 250:
                m = re.search(rb"queued as ([0-9a-f]+)", resp)
                self.led.msgs[token]["t250"] = now
                self.led.msgs[token]["qid"] = m.group(1).decode() if m else None
            else:
                self.led.unacked += 1

    # -- IMAP clients: flags and expunges on mailboxes that may be moving
    def imap_client(self, i):
        rnd = random.Random(self.cfg["seed"] * 1000 + 500 + i)
        while not self.stop.is_set():
            box = self.hot if rnd.random() < 0.3 else rnd.choice(self.users)
            M = None
            try:
                M = imaplib.IMAP4("127.0.0.1", self.c.ports["imap"], timeout=30)
                with self.led.lock:
                    self.led.imap_sessions += 1
                self.imap_session(M, box, rnd)
                M.logout()
                M = None
            except (OSError, imaplib.IMAP4.abort, imaplib.IMAP4.error, EOFError):
                with self.led.lock:
                    self.led.imap_aborted += 1
            finally:
                if M is not None:
                    try:
                        M.shutdown()
                    except (OSError, imaplib.IMAP4.error):
                        pass
            time.sleep(rnd.uniform(0.1, 0.8))

    def imap_session(self, M, box, rnd):
        """Flags a few random messages \\Flagged and expunges one or two,
        recording what the server confirmed (and what it may have done:
        an expunge whose answer was lost)."""
        M.login(box, PASSWORD)
        if M.select("INBOX")[0] != "OK":
            return
        # A few random messages, not the whole folder: a busy mailbox holds
        # thousands, and the run must stop on time.
        typ, data = M.uid("SEARCH", "ALL")
        uids = data[0].split() if typ == "OK" and data and data[0] else []
        pick = rnd.sample(uids, min(len(uids), 8))
        msgs = fetch_tokens(M, b",".join(pick).decode()) if pick else None
        cand = [(uid, tok) for uid, (tok, flags) in (msgs or {}).items() if tok]
        rnd.shuffle(cand)
        for uid, tok in cand[:rnd.randint(1, 4)]:
            typ, _ = M.uid("STORE", str(uid), "+FLAGS.SILENT", r"(\Flagged)")
            if typ == "OK":
                with self.led.lock:
                    self.led.flagged.add((box, tok))
        for uid, tok in cand[4:4 + rnd.choice((0, 1, 1, 2))]:
            key = (box, tok)
            with self.led.lock:
                self.led.expunge_unsure.add(key)
            typ, _ = M.uid("STORE", str(uid), "+FLAGS.SILENT", r"(\Deleted)")
            typ2 = M.uid("EXPUNGE", str(uid))[0] if typ == "OK" else "NO"
            with self.led.lock:
                # Answered: done (OK) or not done (NO); no answer leaves it unsure.
                self.led.expunge_unsure.discard(key)
                if typ2 == "OK":
                    self.led.expunged.add(key)

    # -- moves
    def mover(self, i):
        rnd = random.Random(self.cfg["seed"] * 1000 + 800 + i)
        while not self.stop.is_set():
            time.sleep(rnd.uniform(0.1, 1.5))
            with self.busy_lock:
                free = [u for u in self.users if u not in self.busy]
                if not free:
                    continue
                user = self.hot if self.hot in free and rnd.random() < 0.25 else rnd.choice(free)
                self.busy.add(user)
            try:
                self.one_move(user, rnd)
            finally:
                with self.busy_lock:
                    self.busy.discard(user)

    def one_move(self, user, rnd):
        home = self.c.home(user)
        if home not in STORES:
            return
        dest = STORES[1 - STORES.index(home)]
        if dest in self.no_dest:
            return
        abort = rnd.random() < self.cfg["aborts"]
        # Some moves stop before the cutover (--suspend-when-ready) and are
        # then aborted or completed; the other aborts land at a random moment.
        suspend = rnd.random() < (0.5 if abort else 0.1)
        p = self.c.cli("move", user, "--to", dest, *(["--suspend-when-ready"] if suspend else []))
        m = re.search(r"move job (\d+)", p.stdout)
        if p.returncode != 0 or not m:
            with self.led.lock:
                self.led.move_refused += 1
            return
        job = int(m.group(1))
        with self.led.lock:
            self.led.jobs.append(job)
        if suspend:
            deadline = time.time() + 120
            while time.time() < deadline and self.job_phase(job) not in (
                    "ready", "aborted", "failed", "done", None):
                time.sleep(0.2)
            time.sleep(rnd.uniform(0, 2))
        else:
            time.sleep(rnd.uniform(0, 0.5))
        if abort:
            a = self.c.cli("move", "abort", str(job))
            for _ in range(20):
                # Refused past the switch is an answer; refused for any other
                # reason (a busy directory) is retried, or a suspended job
                # would wait in "ready" for ever.
                if a.returncode == 0 or "past the switch" in a.stderr:
                    break
                say(f"move abort {job}: {a.returncode}: {a.stderr.strip()} (again)")
                time.sleep(0.5)
                a = self.c.cli("move", "abort", str(job))
            with self.led.lock:
                self.led.abort_asked += 1
                if a.returncode != 0:
                    self.led.abort_refused += 1
        elif suspend:
            # A refused request is the client's to retry (a directory busy
            # under load, say); one that was accepted must be acted on.
            for _ in range(20):
                cp = self.c.cli("move", "complete", str(job))
                if cp.returncode == 0 or "has ended" in cp.stderr:
                    break
                say(f"move complete {job}: {cp.returncode}: {cp.stderr.strip()} (again)")
                time.sleep(0.5)
            else:
                self.led.problem(f"move complete {job} refused 20 times: {cp.stderr.strip()}")
        w = self.c.cli("move", "wait", str(job), timeout=600)
        if w.returncode == 124:
            self.led.problem(f"job {job} ({user} to {dest}) did not end within 600 s")

    def job_phase(self, job):
        m = re.search(r"phase:\s+(\S+)", self.c.cli("move", "show", str(job)).stdout)
        return m.group(1) if m else None

    def drainer(self):
        marks = [(0.35, "s1", "s2"), (0.70, "s2", "s1")]
        t0 = time.time()
        for frac, src, dst in marks:
            if self.stop.wait(max(0, t0 + frac * self.cfg["duration"] - time.time())):
                return
            self.no_dest.add(src)
            say(f"drain {src} -> {dst}")
            p = self.c.cli("drain", src, "--to", dst, "--parallel", "2", timeout=900)
            self.no_dest.discard(src)
            with self.led.lock:
                self.led.drains += 1
                self.led.jobs.extend(int(j) for j in re.findall(r"drain: job (\d+) moves", p.stdout))
            if p.returncode != 0:
                self.led.problem(f"drain {src} -> {dst} ended {p.returncode}: {p.stderr.strip()}")
            else:
                say(p.stdout.strip().splitlines()[-1])

    # -- faults
    def killer(self):
        rnd = random.Random(self.cfg["seed"] * 1000 + 900)
        every = self.cfg["kill_every"]
        while not self.stop.wait(min(3 * every, max(0.3, rnd.expovariate(1 / every)))):
            with self.serve_lock:
                victim = rnd.choice(VICTIMS)
                pid = self.c.role_pid(victim)
                if pid is None:
                    with self.led.lock:
                        self.led.kill_misses += 1
                    continue
                t_kill = time.time()
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    with self.led.lock:
                        self.led.kill_misses += 1
                    continue
                with self.led.lock:
                    self.led.kills[victim] += 1
                # The supervisor restarts it; wait for that before the next.
                deadline = time.time() + 60
                while self.c.role_pid(victim) in (None, pid):
                    if time.time() > deadline:
                        self.led.problem(f"{victim} was not restarted within 60 s of kill -9")
                        break
                    time.sleep(0.05)
                self.led.fault(t_kill, time.time())

    def restarter(self):
        rnd = random.Random(self.cfg["seed"] * 1000 + 950)
        crash = rnd.random() < 0.5
        while not self.stop.wait(self.cfg["restart_every"] * rnd.uniform(0.7, 1.3)):
            with self.serve_lock:
                kind = "crash" if crash else "graceful"
                t_stop = time.time()
                say(f"stopping the whole tern serve ({'SIGKILL to every process' if crash else 'SIGTERM'})")
                clean = self.c.stop(crash=crash)
                if not clean:
                    self.led.problem("tern serve did not stop within 60 s of SIGTERM")
                time.sleep(rnd.uniform(0.2, 2.0))
                try:
                    self.c.serve()
                except RuntimeError as e:
                    self.led.problem(f"restart: {e}")
                self.led.fault(t_stop, time.time())
                with self.led.lock:
                    self.led.restarts[kind] += 1
                crash = not crash

    # -- the run
    def run(self):
        cfg = self.cfg
        say(f"torture: seed {cfg['seed']}, {cfg['duration']} s, {cfg['users']} users, "
            f"{cfg['clients']} SMTP clients at {cfg['rate']:g} msg/s, {cfg['imap']} IMAP clients, "
            f"{cfg['movers']} movers, kills {'on' if cfg['kills'] else 'off'}, "
            f"restarts {'on' if cfg['restart'] else 'off'}; work dir {self.c.root}")
        self.setup()
        self.c.serve()
        threads = [threading.Thread(target=self.smtp_client, args=(i,)) for i in range(cfg["clients"])]
        threads += [threading.Thread(target=self.imap_client, args=(i,)) for i in range(cfg["imap"])]
        threads += [threading.Thread(target=self.mover, args=(i,)) for i in range(cfg["movers"])]
        if cfg["drains"]:
            threads.append(threading.Thread(target=self.drainer))
        if cfg["kills"]:
            threads.append(threading.Thread(target=self.killer))
        if cfg["restart"]:
            threads.append(threading.Thread(target=self.restarter))
        t0 = time.time()
        for th in threads:
            th.daemon = True
            th.start()
        while time.time() - t0 < cfg["duration"]:
            time.sleep(min(15, max(0.1, cfg["duration"] - (time.time() - t0))))
            with self.led.lock:
                acked = sum(1 for m in self.led.msgs.values() if m["t250"])
                kills = sum(self.led.kills.values())
                jobs = len(self.led.jobs)
            say(f"{time.time() - t0:5.0f} s: {acked} accepted, {jobs} jobs, {kills} kills")
        say("load over: stopping clients, movers and faults")
        self.stop.set()
        for th in threads:
            th.join(timeout=900)
            if th.is_alive():
                self.led.problem(f"thread {th.name} did not finish")
        if self.c.proc is None:
            self.c.serve()
        return self.settle_and_check(t0)

    def settle_and_check(self, t0):
        c = self.c
        # Every queued recipient final, every job ended.
        deadline = time.time() + 600
        queue_empty = False
        while time.time() < deadline:
            c.cli("queue", "flush")
            if "queue is empty" in c.cli("queue").stdout:
                queue_empty = True
                break
            time.sleep(1)
        if not queue_empty:
            self.led.problem("the queue did not drain within 600 s:\n" + c.cli("queue").stdout[-3000:])
        jobs_final, stuck, rows = False, [], []
        while time.time() < deadline + 120:
            rows = parse_moves(c.cli("moves").stdout)
            stuck = [r for r in rows if r["phase"] not in ("done", "aborted", "failed")]
            if not stuck:
                jobs_final = True
                break
            time.sleep(1)
        time.sleep(0.5)
        c.watch.poll()
        for how in self.cfg["sabotage"]:
            self.sabotage(how)
        return self.check(rows, stuck, jobs_final, queue_empty, time.time() - t0)

    def sabotage(self, how):
        """Breaks one owed copy behind the harness's back, so that a run
        shows the check can fail (SABOTAGE=lose|dup)."""
        box = self.hot
        M = imaplib.IMAP4("127.0.0.1", self.c.ports["imap"], timeout=60)
        M.login(box, PASSWORD)
        M.select("INBOX")
        msgs = fetch_tokens(M)
        with self.led.lock:
            owed = {t for t, m in self.led.msgs.items() if m["t250"] and box in m["boxes"]}
            untouched = owed - {t for b, t in self.led.expunged | self.led.expunge_unsure if b == box}
        uid, tok = next((u, t) for u, (t, _) in sorted(msgs.items()) if t in untouched)
        if how == "lose":
            M.uid("STORE", str(uid), "+FLAGS.SILENT", r"(\Deleted)")
            M.uid("EXPUNGE", str(uid))
        else:
            data = M.uid("FETCH", str(uid), "(BODY.PEEK[])")[1]
            raw = b"".join(x[1] for x in data if isinstance(x, tuple))
            home = self.c.home(box)
            with smtplib.LMTP("127.0.0.1", self.c.ports[home]) as lm:
                lm.sendmail("sabotage@torture.test", [box], raw)
        M.logout()
        say(f"sabotage: {how} of token {tok} in {box}")

    # -- the independent check
    def check(self, rows, stuck, jobs_final, queue_empty, wall):
        c, led = self.c, self.led
        seen, flags, dsns = {}, {}, set()
        for box in self.users:
            got = read_box(c.ports["imap"], box)
            if got is None:
                led.problem(f"IMAP: cannot read the mailbox of {box}")
                continue
            for tok, fl in got["tokens"]:
                seen[(box, tok)] = seen.get((box, tok), 0) + 1
                flags.setdefault((box, tok), set()).update(fl)
            dsns |= got["dsns"]
        expected = {(b, t) for t, m in led.msgs.items() if m["t250"] for b in m["boxes"]}
        possible = {(b, t) for t, m in led.msgs.items() for b in m["boxes"]}
        delivered = lost = dsned = resurrected = 0
        lost_list, dup_list = [], []
        for key in expected:
            n = seen.get(key, 0)
            if key in led.expunged:
                if n:
                    resurrected += 1
                    led.problem(f"expunged message {key[1]} is back in {key[0]}")
                continue
            if key in led.expunge_unsure and n == 0:
                continue
            if n >= 1:
                delivered += 1
            elif (key[1], key[0]) in dsns:
                dsned += 1
            else:
                lost += 1
                lost_list.append(key)
        dups = {k: n for k, n in seen.items() if n > 1}
        dup_list = sorted(dups)
        stray = sorted(k for k in seen if k not in possible)
        flags_lost = sorted(k for k in led.flagged
                            if seen.get(k) and k not in led.expunge_unsure
                            and "\\Flagged" not in flags.get(k, ()))
        for key in lost_list[:20]:
            m = led.msgs[key[1]]
            led.problem(f"LOST: token {key[1]} (queue id {m['qid']}, from {m['sender']}) "
                        f"is not in {key[0]} and no DSN came for it")
        for key in dup_list[:20]:
            led.problem(f"DUPLICATED: token {key[1]} is {dups[key]} times in {key[0]}")
        for key in stray[:20]:
            led.problem(f"STRAY: token {key[1]} in {key[0]}, which it was not sent to")
        for key in flags_lost[:20]:
            led.problem(f"FLAG LOST: \\Flagged of {key[1]} in {key[0]} was set and is gone")

        # Homes: exactly one live mailbox per user, on its home at its epoch.
        home_bad = 0
        for u in self.users:
            out = c.cli("user", "show", u).stdout
            h = re.search(r"home:\s+(\S+)", out)
            st = re.search(r"state:\s+(\S+)", out)
            ep = re.search(r"epoch:\s+(\d+)", out)
            if not (h and st and ep) or st.group(1) != "active":
                home_bad += 1
                led.problem(f"HOME: {u} is not active in the directory: {out.strip()}")
                continue
            live = []
            for s in STORES:
                mb = c.cli("mailbox", "show", u, "--store", s).stdout
                ms = re.search(r"state:\s+(\S+)", mb)
                me = re.search(r"epoch:\s+(\d+)", mb)
                if ms and ms.group(1) in ("active", "staged", "fenced"):
                    live.append((s, ms.group(1), int(me.group(1)) if me else -1))
            want = (h.group(1), "active", int(ep.group(1)))
            if len(live) > 1 or (live and live[0] != want):
                home_bad += 1
                led.problem(f"HOME: {u} lives on {h.group(1)} at epoch {ep.group(1)} but the "
                            f"stores hold live mailboxes {live}")
        doc = c.cli("doctor")
        if doc.returncode != 0:
            led.problem("tern doctor: " + doc.stdout.strip()[-2000:])
        if "QUARANTINED" in c.cli("queue").stdout:
            led.problem("the queue holds a quarantined entry")
        clean_stop = c.stop()
        if not clean_stop:
            led.problem("tern serve did not stop within 60 s of SIGTERM at the end")
        c.watch.poll()
        c.watch.stop.set()

        # Roles that died by themselves (not by our SIGKILL or a stop).
        crashes = [d for d in c.watch.deaths
                   if ("signal" in d[2] and not d[2].endswith(" 9") and not d[2].endswith(" 15"))]
        for d in crashes:
            led.problem(f"ROLE CRASH: {d[0]} (pid {d[1]}) {d[2]}")

        # Timings from the log: 250 -> every recipient final; fence -> switched.
        delays, delays_calm = [], []
        for t, m in led.msgs.items():
            if m["t250"] and m["qid"] in c.watch.done:
                d = max(0.0, c.watch.done[m["qid"]] - m["t250"])
                delays.append(d)
                if not led.near_fault(m["t250"], m["t250"] + d):
                    delays_calm.append(d)
        pauses, pauses_calm, slow = [], [], []
        for job, ph in c.watch.phases.items():
            fence = None
            for k, (ts, name) in enumerate(ph):
                if name == "fence":
                    fence = k
                elif name == "retention" and fence is not None:
                    pause = ts - ph[fence][0]
                    pauses.append(pause)
                    if not led.near_fault(ph[fence][0], ts):
                        pauses_calm.append(pause)
                        # Where the time went: each phase until the next one.
                        steps = ", ".join(f"{ph[j][1]} {1000 * (ph[j + 1][0] - ph[j][0]):.0f} ms"
                                          for j in range(fence, k))
                        slow.append((pause, job, steps))
                    break
        user_of = {r["id"]: r["user"] for r in rows}
        phases = {}
        for r in rows:
            phases[r["phase"]] = phases.get(r["phase"], 0) + 1
        completed = phases.get("done", 0) + phases.get("retention", 0)
        # A failed move leaves the user on the source, which the checks
        # above cover; it is a violation only when the copies differed
        # (verify), otherwise a note (a move an operator has to start again).
        failed = phases.get("failed", 0)
        notes = []
        for r in rows:
            if r["phase"] != "failed":
                continue
            text = f"job {r['id']} {r['user']} {r['from']}->{r['to']}: {r['note']}"
            if "verify" in r["note"]:
                led.problem("MOVE FAILED VERIFY: " + text)
            else:
                notes.append("move failed: " + text)
        for r in stuck:
            led.problem(f"STUCK: job {r['id']} {r['user']} in phase {r['phase']}")

        acked = len({t for t, m in led.msgs.items() if m["t250"]})
        rows_out = [
            ("messages sent (DATA)", led.sent),
            ("messages accepted (250)", acked),
            ("recipient copies owed", len(expected)),
            ("delivered exactly once", delivered),
            ("DSN'd", dsned),
            ("expunged through IMAP (confirmed / unsure)",
             f"{len(led.expunged & expected)} / {len(led.expunge_unsure & expected)}"),
            ("LOST", lost),
            ("DUPLICATED", len(dup_list)),
            ("expunges undone", resurrected),
            ("\\Flagged set / lost", f"{len(led.flagged)} / {len(flags_lost)}"),
            ("stray copies", len(stray)),
            ("moves started / completed / aborted / failed",
             f"{len(rows)} / {completed} / {phases.get('aborted', 0)} / {failed}"),
            ("aborts asked / refused (past the switch)", f"{led.abort_asked} / {led.abort_refused}"),
            ("drains", led.drains),
            ("kill -9 (mta/s1/s2/mover/imap)",
             f"{sum(led.kills.values())} ({'/'.join(str(led.kills[v]) for v in VICTIMS)})"),
            ("whole restarts (SIGTERM / SIGKILL all)",
             f"{led.restarts['graceful']} / {led.restarts['crash']}"),
            ("role crashes (not ours)", len(crashes)),
            ("IMAP sessions (ended by the server or a kill)",
             f"{led.imap_sessions} ({led.imap_aborted})"),
            ("delivery delay p50 / p99 / max (250 -> all final)", spread(delays)),
            ("  the same, no fault within 3 s", spread(delays_calm)),
            ("cutover pause p50 / p99 / max (fence -> switched)", spread(pauses)),
            ("  the same, no fault within 3 s", spread(pauses_calm)),
            ("users with one home / stuck jobs",
             f"{len(self.users) - home_bad} of {len(self.users)} / {len(stuck)}"),
            ("tern doctor", "consistent" if doc.returncode == 0 else "PROBLEMS"),
            ("wall time", f"{wall:.0f} s"),
        ]
        ok = not led.problems
        if slow:
            print("\nslowest cutovers with no fault near (phase: time until the next phase):")
            for pause, job, steps in sorted(slow, reverse=True)[:3]:
                print(f"  job {job} ({user_of.get(job, '?')}): {1000 * pause:.0f} ms = {steps}")
        print()
        print(f"{self.title}, {len(self.users)} users: {'PASS' if ok else 'FAIL'}")
        w = max(len(r[0]) for r in rows_out)
        print(f"| {'measure':<{w}} | value |")
        print(f"|{'-' * (w + 2)}|-------|")
        for name, value in rows_out:
            print(f"| {name:<{w}} | {value} |")
        for n in notes:
            print("note:", n)
        if not ok:
            print(f"\n{len(led.problems)} problem(s); rerun with SEED={self.cfg['seed']} "
                  f"KEEP=on to keep the data:")
            for p in led.problems[:50]:
                print("  -", p)
        return 0 if ok else 1


def parse_moves(out):
    rows = []
    for line in out.splitlines()[1:]:
        f = line.split(None, 7)
        if len(f) >= 7 and f[0].isdigit():
            rows.append({"id": int(f[0]), "user": f[2], "from": f[3], "to": f[4], "phase": f[5],
                         "note": f[7] if len(f) > 7 else ""})
    return rows


def fetch_tokens(M, uids="1:*"):
    """uid -> (token or None, set of flags) of the selected folder, or None
    if the FETCH did not answer OK. An untagged FETCH the server sends on
    its own (a flag change by another session) only updates the flags."""
    typ, data = M.uid("FETCH", uids, "(UID FLAGS BODY.PEEK[HEADER.FIELDS (X-TOKEN)])")
    if typ != "OK":
        return None
    out = {}
    i = 0
    while i < len(data):
        item = data[i]
        meta, lit = (item[0], item[1]) if isinstance(item, tuple) else (item, None)
        if isinstance(item, tuple) and i + 1 < len(data) and isinstance(data[i + 1], bytes):
            meta += data[i + 1]
            i += 1
        i += 1
        if not meta:
            continue
        u = re.search(rb"UID (\d+)", meta)
        f = re.search(rb"FLAGS \(([^)]*)\)", meta)
        if not u:
            continue
        uid = int(u.group(1))
        tok, flags = out.get(uid, (None, set()))
        if lit is not None:
            t = TOKEN_RE.search(lit)
            tok = tok or (t.group(1).decode().lower() if t else None)
        if f:
            flags = set(f.group(1).decode().split())
        out[uid] = (tok, flags)
    return out


def read_box(port, box, tries=10):
    """Every token in box's INBOX (with flags) and the DSNs it holds, as
    (token, final recipient) pairs; None if it cannot be read."""
    for attempt in range(tries):
        try:
            M = imaplib.IMAP4("127.0.0.1", port, timeout=120)
            try:
                M.login(box, PASSWORD)
                typ, _ = M.select("INBOX", readonly=True)
                if typ != "OK":
                    raise imaplib.IMAP4.error("SELECT failed")
                msgs = fetch_tokens(M)
                if msgs is None:
                    raise imaplib.IMAP4.error("FETCH failed")
                tokens = [(t, fl) for t, fl in msgs.values() if t]
                dsns = set()
                for uid in [u for u, (t, _) in msgs.items() if t is None]:
                    typ, data = M.uid("FETCH", str(uid), "(BODY.PEEK[])")
                    raw = b"".join(x[1] for x in data if isinstance(x, tuple))
                    if b"multipart/report" not in raw:
                        continue
                    toks = {t.decode().lower() for t in TOKEN_RE.findall(raw)}
                    finals = {a.decode().lower() for a in
                              re.findall(rb"^Final-Recipient: *rfc822; *<?([^\s>]+)>?", raw, re.M | re.I)}
                    dsns |= {(t, f) for t in toks for f in finals}
                M.logout()
                return {"tokens": tokens, "dsns": dsns}
            finally:
                try:
                    M.shutdown()
                except (OSError, imaplib.IMAP4.error):
                    pass
        except (OSError, imaplib.IMAP4.abort, imaplib.IMAP4.error, EOFError):
            time.sleep(1 + attempt)
    return None


def main(argv):
    cfg = params(argv)
    if cfg["mode"] == "demo":
        from demo import demo  # tests/torture/demo.py
        return demo(cfg)
    root = Path(tempfile.mkdtemp(prefix="tern-torture-"))
    t = Torture(cfg, root)

    def on_signal(sig, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    rc = 2
    try:
        rc = t.run()
    except KeyboardInterrupt:
        say("interrupted")
        rc = 2
    except Exception:  # the harness itself failed: say where, clean up
        say("torture: harness failure:")
        traceback.print_exc()
        rc = 2
    finally:
        t.stop.set()
        t.c.stop(crash=True)
        t.c.watch.stop.set()
        if cfg["keep"] == "on" or (cfg["keep"] == "failed" and rc != 0):
            print(f"work dir kept: {root} (serve.log, data, tern.conf)")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main(sys.argv[1:]))
