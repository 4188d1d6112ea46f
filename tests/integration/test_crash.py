"""kill -9 of a store role at random moments while several clients deliver:
every delivery acknowledged with 250 is present exactly once afterwards.

Clients behave like an MTA: a message that got no 250 (connection refused or
reset, a 4xx) is retried with the same XDELIVERYID until it gets one, so a
commit whose reply was lost to the kill must not become a second copy."""
import os
import random
import re
import signal
import smtplib
import threading
import time
import uuid

from conftest import SLOW, Tern, wait_port

CYCLES = 20
CLIENTS = 4
USERS = ["alice@example.org", "bob@example.org", "carol@example.org"]


def deliver_until_acked(port, user, token, stop):
    body = (f"Subject: crash {token}\r\nX-Token: {token}\r\n\r\n"
            f"token {token}\r\n" + "filler line\r\n" * random.randint(1, 200)).encode()
    attempts = 0
    while not stop.is_set():
        attempts += 1
        try:
            with smtplib.LMTP("127.0.0.1", port, timeout=10 * SLOW) as c:
                c.ehlo("crash.test")
                c.mail("sender@example.net", ["XDELIVERYID=" + token])
                code, _ = c.rcpt(user)
                if code != 250:
                    raise smtplib.SMTPException(f"rcpt {code}")
                code, _ = c.data(body)
                if code == 250:
                    return attempts
        except (OSError, smtplib.SMTPException):
            pass
        time.sleep(0.02)
    return None


def test_kill9_store_while_delivering(tmp_path):
    t = Tern(tmp_path, top_extra="restart_backoff_max = 200")
    try:
        t.setup_users(*USERS)
        t.serve()
        acked = []  # (user, token)
        lock = threading.Lock()
        stop = threading.Event()
        retried = [0]

        def client():
            rng = random.Random()
            while not stop.is_set():
                user, token = rng.choice(USERS), uuid.uuid4().hex
                n = deliver_until_acked(t.ports["s1"], user, token, stop)
                if n is not None:
                    with lock:
                        acked.append((user, token))
                        retried[0] += n > 1

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for th in threads:
            th.start()
        kills = 0
        try:
            for _ in range(CYCLES):
                time.sleep(random.uniform(0.1, 0.5) * SLOW)
                pid = t.role_pid("s1")
                os.kill(pid, signal.SIGKILL)
                kills += 1
                deadline = time.time() + 20 * SLOW
                while time.time() < deadline:
                    try:
                        if t.role_pid("s1") != pid:
                            break
                    except (FileNotFoundError, ValueError):
                        pass
                    time.sleep(0.02)
                assert wait_port(t.ports["s1"]), t.log(4000)
        finally:
            # Let in-flight messages finish (they retry until acked).
            time.sleep(1.0 * SLOW)
            stop.set()
            for th in threads:
                th.join(timeout=60)

        assert kills == CYCLES
        assert len(acked) > 50, f"only {len(acked)} deliveries acknowledged"
        lost = dup = 0
        seen = {}
        for user in USERS:
            box = t.export(user)
            for tok in re.findall(r"^X-Token: ([0-9a-f]{32})$", box, re.M):
                seen[(user, tok)] = seen.get((user, tok), 0) + 1
        for key in acked:
            n = seen.get(key, 0)
            lost += n == 0
            dup += n > 1
        extra_dups = sum(1 for v in seen.values() if v > 1)
        print(f"crash test: {kills} kills, {len(acked)} acked, {retried[0]} retried, "
              f"{lost} lost, {dup} duplicated")
        assert lost == 0 and dup == 0 and extra_dups == 0
        assert t.log().count("killed by signal 9") == CYCLES
    finally:
        t.stop()
