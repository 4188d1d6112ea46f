"""kill -9 of the mta role during load: every message acknowledged with 250
is delivered exactly once to every recipient (alternates included).

Each message goes to alice (whose alternate bob gets a copy too:
deliver-both) and to carol on the other store. Senders do not retry: a
message without a 250 may or may not arrive, but one with a 250 must arrive
exactly once in each of its three mailboxes, and nothing may arrive twice."""
import os
import random
import re
import signal
import smtplib
import threading
import time
import uuid

from conftest import SLOW, Tern, wait_port

KILLS = 10
CLIENTS = 4
RCPTS = ["alice@example.org", "carol@example.org"]
BOXES = ["alice@example.org", "bob@example.org", "carol@example.org"]


def test_kill9_mta_while_accepting_and_delivering(tmp_path):
    t = Tern(tmp_path, top_extra="restart_backoff_max = 200",
             queue_extra="retry_min = 1\nretry_max = 1")
    t.cli("domain", "add", "example.org")
    t.cli("user", "add", "alice@example.org", "--password", "x", "--store", "s1")
    t.cli("user", "add", "bob@example.org", "--password", "x", "--store", "s2")
    t.cli("user", "add", "carol@example.org", "--password", "x", "--store", "s2")
    t.cli("user", "set", "alice@example.org", "--alternate", "bob@example.org", "--deliver-both")
    t.serve()
    acked, lock, stop = [], threading.Lock(), threading.Event()

    def client():
        while not stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", t.ports["smtp"], timeout=10 * SLOW) as c:
                    for _ in range(5):
                        token = uuid.uuid4().hex
                        body = f"Subject: t\r\nX-Token: {token}\r\n\r\n{token}\r\n".encode()
                        c.sendmail("sender@example.org", RCPTS, body)
                        with lock:
                            acked.append(token)
            except (OSError, smtplib.SMTPException):
                time.sleep(0.02)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    try:
        for th in threads:
            th.start()
        for _ in range(KILLS):
            time.sleep(random.uniform(0.2, 0.6) * SLOW)
            pid = t.role_pid("mta")
            os.kill(pid, signal.SIGKILL)
            deadline = time.time() + 20 * SLOW
            while time.time() < deadline:
                try:
                    if t.role_pid("mta") != pid:
                        break
                except (FileNotFoundError, ValueError):
                    pass
                time.sleep(0.02)
            assert wait_port(t.ports["smtp"]), t.log(4000)
        stop.set()
        for th in threads:
            th.join(timeout=60)
        assert t.wait_queue_empty(60), t.queue()
        seen = {}
        for box in BOXES:
            for tok in re.findall(r"^X-Token: ([0-9a-f]{32})$", t.export(box), re.M):
                seen[(box, tok)] = seen.get((box, tok), 0) + 1
        lost = [(b, k) for k in acked for b in BOXES if seen.get((b, k), 0) == 0]
        dups = [key for key, n in seen.items() if n > 1]
        print(f"mta crash test: {KILLS} kills, {len(acked)} acked x {len(BOXES)} mailboxes, "
              f"{len(lost)} lost, {len(dups)} duplicated")
        assert len(acked) > 50
        assert not lost, lost[:5]
        assert not dups, dups[:5]
        assert t.log().count("mta (pid") >= KILLS
    finally:
        stop.set()
        t.stop()
