"""Helpers shared by the move tests that inject faults or run under load:
starting `tern serve` with a fault environment, SMTP load that remembers
what was acknowledged, and independent views of a mailbox (TSYNC, export)."""
import os
import re
import smtplib
import threading
import time
import uuid

from conftest import SLOW
from tsync import TSync, hx


def serve_with(t, env, *extra):
    """`tern serve` with env added to its environment (every role inherits
    it; TERN_FAULT entries are scoped to a role with @ROLE)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        t.serve(*extra)
    finally:
        for k, v in saved.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


def pause_env(tmp, faults, once=True):
    """TERN_FAULT with the pause/once/armed files in tmp."""
    env = {"TERN_FAULT": ",".join(faults), "TERN_FAULT_PAUSE": str(tmp / "pause"),
           "TERN_FAULT_ARMED": str(tmp / "armed")}
    if once:
        env["TERN_FAULT_ONCE"] = str(tmp / "once")
    return env


class Load:
    """SMTP through the mta, one message per session, round robin to rcpts;
    `acked[rcpt]` lists the tokens of the messages that got a 250."""

    def __init__(self, t, rcpts, sender="dave@example.org", pause=0.02):
        self.t, self.sender, self.pause = t, sender, pause
        self.stop = threading.Event()
        self.acked = {r: [] for r in rcpts}
        self.th = threading.Thread(target=self.run, daemon=True)

    def send(self, rcpt):
        tok = uuid.uuid4().hex
        with smtplib.SMTP("127.0.0.1", self.t.ports["smtp"], timeout=10 * SLOW) as c:
            c.sendmail(self.sender, [rcpt],
                       f"Subject: load\r\nX-Token: {tok}\r\n\r\n.\r\n".encode())
        self.acked[rcpt].append(tok)
        return tok

    def run(self):
        rcpts = list(self.acked)
        i = 0
        while not self.stop.is_set():
            try:
                self.send(rcpts[i % len(rcpts)])
            except (OSError, smtplib.SMTPException):
                pass  # not acknowledged: nothing promised
            i += 1
            time.sleep(self.pause)

    def __enter__(self):
        self.th.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.th.join()


def unhex(x):
    return "" if x == "-" else bytes.fromhex(x).decode()


def listing(t, user, store, since=0):
    c = TSync(t.ports["sync-" + store])
    lines, end = c.lines(f"CHANGES {hx(user)} {since}")
    c.close()
    assert end.startswith("+OK"), end
    return lines


def snapshot(t, user, store):
    """Every live message as {(folder, uidvalidity, uid): (guid, flags, date,
    size, sha256, keywords)}, from CHANGES 0 (an independent TSYNC client)."""
    out = {}
    for l in listing(t, user, store):
        f = l.split(" ")
        if f[0] == "M" and f[9] == "0":
            out[(unhex(f[11]), int(f[1]), int(f[2]))] = (f[3], f[4], f[5], f[6], f[7],
                                                       unhex(f[10]))
    return out


def folders(t, user, store):
    """{name: uidvalidity} of the live folders."""
    return {unhex(l.split(" ")[5]): int(l.split(" ")[1]) for l in listing(t, user, store)
            if l.startswith("F ") and l.split(" ")[4] == "0"}


def tokens(t, user):
    """The X-Token of every message in the user's INBOX on the home store."""
    return re.findall(r"^X-Token: ([0-9a-f]{32})$", t.export(user), re.M)


def check_acked(t, load):
    """Every acknowledged message exactly once in its recipient's mailbox."""
    for user, acked in load.acked.items():
        seen = tokens(t, user)
        assert len(seen) == len(set(seen)), f"{user}: a message was duplicated"
        missing = set(acked) - set(seen)
        assert not missing, f"{user}: {len(missing)} acknowledged message(s) lost"


def check_sanitizers(t):
    """No role hit an AddressSanitizer or UBSan error (a role that aborts on
    one is restarted by the supervisor, so the test could pass without)."""
    bad = [l for l in t.log().splitlines()
           if "ERROR: AddressSanitizer" in l or "runtime error:" in l]
    assert not bad, "\n".join(bad[:5])
