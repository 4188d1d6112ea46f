"""`tern demo` (and `make demo`): a short show of what tern promises, on
the embedded default in a temporary directory with free ports.

It starts a cluster (`tern serve`: the mta, the imap role, the mover and
two stores, each its own process), creates users, fills one mailbox and
keeps mail flowing, moves that busy mailbox from s1 to s2 with the progress
bar of `tern move --wait` on the screen, kills the source store with
kill -9 in the middle of the copy, lets the supervisor restart it and the
move resume, and then checks every mailbox through IMAP exactly as the
torture run does (tests/torture/torture.py) and prints the same table. The
cluster is stopped and the directory removed at the end, also after an
error or Ctrl-C.

Run by torture.py (`torture.py demo`); its parameters: DEMO_FILL (messages
in the busy mailbox before the move, 3000), DEMO_SIZE (octets each, 8000),
RATE (steady mail, 20/s), KEEP (on keeps the directory)."""
import os
import random
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from torture import Torture


def fill(t, user, n, size, clients=4):
    """n messages to user over SMTP from a few sessions at once."""
    left = [n]
    lock = threading.Lock()

    def one(i):
        rnd = random.Random(t.cfg["seed"] * 31 + i)
        conn = None
        while True:
            with lock:
                if left[0] <= 0:
                    break
                left[0] -= 1
            for _ in range(20):
                try:
                    if conn is None:
                        conn = smtplib.SMTP("127.0.0.1", t.c.ports["smtp"], timeout=30)
                        conn.ehlo("demo.fill")
                    t.send_one(conn, rnd, rcpts=[user], size=size)
                    break
                except (OSError, smtplib.SMTPException):
                    conn = None
                    time.sleep(0.1)
        if conn is not None:
            conn.quit()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()


def job_progress(t, job):
    out = t.c.cli("move", "show", str(job)).stdout
    ph = re.search(r"phase:\s+(\S+)", out)
    mm = re.search(r"messages:\s+(\d+) of (\d+)", out)
    return (ph.group(1) if ph else "?", int(mm.group(1)) if mm else 0, int(mm.group(2)) if mm else 0)


def demo(cfg):
    cfg = dict(cfg)
    cfg.update(users=4, clients=2, imap=1, movers=0, kills=False, restart=False, drains=False,
               rate=float(os.environ.get("RATE", "20")))
    n_fill = int(os.environ.get("DEMO_FILL", "3000"))
    size = int(os.environ.get("DEMO_SIZE", "8000"))
    root = Path(tempfile.mkdtemp(prefix="tern-demo-"))
    t = Torture(cfg, root)
    t.title = "tern demo"
    tty = sys.stdout.isatty()
    bold = (lambda s: f"\033[1m{s}\033[0m") if tty else (lambda s: s)

    def step(text):
        print(f"\n{bold('==> ' + text)}", flush=True)

    def on_signal(sig, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    rc = 2
    mv = None
    try:
        c = t.c
        step(f"a temporary tern in {root}")
        print(f"    SMTP 127.0.0.1:{c.ports['smtp']}  IMAP 127.0.0.1:{c.ports['imap']}  "
              f"stores s1 (LMTP {c.ports['s1']}) and s2 (LMTP {c.ports['s2']})")
        t.setup(names=["alice", "bob", "carol", "dave"], alias_names=["info"])
        c.serve()
        specs = ("mta", "imap", "mover", "store:s1", "store:s2")
        deadline = time.time() + 10
        while time.time() < deadline and not all(c.role_pid(x) for x in specs):
            time.sleep(0.1)
        print("    tern serve runs each role as its own process:")
        for spec in specs:
            print(f"      {spec:9} pid {c.role_pid(spec)}")
        print("    users: alice (s1), bob (s2, alternate carol, deliver-both), carol (s1), "
              "dave (s2); info@ is an alias of alice")

        step(f"filling alice's mailbox: {n_fill} messages of {size // 1000} KB over SMTP")
        t0 = time.time()
        fill(t, t.hot, n_fill, size)
        print(f"    {n_fill} accepted in {time.time() - t0:.1f} s", end="", flush=True)
        while "queue is empty" not in c.cli("queue").stdout:
            time.sleep(0.2)
        print(f", all in her mailbox after {time.time() - t0:.1f} s")

        step(f"steady mail from now on: {cfg['rate']:g} messages/s to everyone, alice the most; "
             "an IMAP client flags and expunges")
        threads = [threading.Thread(target=t.smtp_client, args=(i,), daemon=True)
                   for i in range(cfg["clients"])]
        threads.append(threading.Thread(target=t.imap_client, args=(0,), daemon=True))
        for th in threads:
            th.start()
        time.sleep(3)

        step("moving alice from s1 to s2 while her mail keeps arriving: "
             "tern move alice@example.org --to s2 --wait")
        mv = subprocess.Popen([c.bin, "--data", str(c.data), "--config", str(c.config), "move",
                               t.hot, "--to", "s2", "--wait"])
        killed, restarted = None, None
        deadline = time.time() + 300
        while mv.poll() is None and time.time() < deadline and restarted is None:
            if killed is None:
                m = re.search(r"^(\d+)\s+move\s+" + re.escape(t.hot), c.cli("moves").stdout, re.M)
                phase, done, total = job_progress(t, int(m.group(1))) if m else ("?", 0, 0)
                if phase in ("retention", "done", "aborted", "failed"):
                    break
                pid = c.role_pid("store:s1")
                if pid and (phase in ("copy", "catchup") and done > 0 or phase in ("fence", "final")):
                    t_kill = time.time()
                    os.kill(pid, signal.SIGKILL)
                    t.led.kills["store:s1"] += 1
                    killed = (pid, phase, done, total)
                    print(f"\n    >>> kill -9 store s1 (pid {pid}), the source, during {phase} "
                          f"at {done}/{total} messages <<<", flush=True)
            elif c.role_pid("store:s1") not in (None, killed[0]):
                restarted = c.role_pid("store:s1")
                t.led.fault(t_kill, time.time())
            time.sleep(0.05)
        mv_rc = mv.wait(timeout=900)
        if killed is None:
            print("    (the move was over before the store could be killed)")
        else:
            print(f"    the supervisor restarted s1 as pid {restarted or c.role_pid('store:s1')}; "
                  "the mover resumed from its checkpoint")
        if mv_rc != 0:
            print(f"    tern move exited {mv_rc}")
        print("    " + "\n    ".join(c.cli("user", "show", t.hot).stdout.splitlines()[:4]))

        step("more mail for a few seconds, then the senders stop")
        time.sleep(4)
        t.stop.set()
        for th in threads:
            th.join(timeout=120)

        step("waiting for the queue to drain, then reading every mailbox through IMAP")
        rc = t.settle_and_check(t0)
        if rc == 0 and killed is None:
            rc = 1
            print("the demo did not get to kill the store in the middle of the move")
        if mv_rc != 0:
            rc = 1
    except KeyboardInterrupt:
        print("\ninterrupted")
        rc = 2
    except Exception:
        print("\ntern demo failed:")
        traceback.print_exc()
        rc = 2
    finally:
        t.stop.set()
        if mv is not None and mv.poll() is None:
            mv.kill()
            mv.wait()
        t.c.stop(crash=True)
        t.c.watch.stop.set()
        if cfg["keep"] == "on":
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
            print(f"\nstopped every process and removed {root}")
    return rc
