"""Online mailbox moves: the mover role, its phases and the CLI, with the
background reports as tests. An independent TSYNC/1 client (tsync.py)
builds mailboxes with folders, flags and keywords, and compares digests."""
import os
import re
import signal
import smtplib
import sqlite3
import subprocess
import threading
import time
import uuid

import pytest

from conftest import SLOW, TERN_BIN, Tern, wait_port
from tsync import TSync, hx

USERS = ("alice@example.org", "bob@example.org", "carol@example.org")


def wait_for(pred, timeout=20.0):
    deadline = time.time() + timeout * SLOW
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def cluster(tmp_path, **kw):
    t = Tern(tmp_path, **kw)
    t.cli("domain", "add", "example.org")
    for u in USERS:
        t.cli("user", "add", u, "--password", "x", "--store", "s1")
    return t


def fill(t, user, store="s1", n=30):
    """A mailbox with three folders, flags, keywords and an expunge."""
    c = TSync(t.ports["sync-" + store])
    r = c.cmd(f"CREATE {hx(user)} active 1")
    assert r.startswith("+OK") or "exists" in r, r
    inbox = [l for l in c.digest(user) if l.split()[-1] == hx("INBOX")][0]
    uv_inbox = int(inbox.split()[1])
    assert c.folder(user, "Archive/2026", 1111, 1).startswith("+OK")
    assert c.folder(user, "Sent Items", 2222, 1).startswith("+OK")
    for i in range(1, n + 1):
        folder = ("INBOX", "Archive/2026", "Sent Items")[i % 3]
        body = f"Subject: m{i}\r\nX-N: {i}\r\n\r\nbody {i}\r\n".encode()
        r = c.append(user, folder, i, body, flags=i % 32, keywords="$Label1 work" if i % 4 else "")
        assert r.startswith("+OK"), r
    assert c.expunge(user, "INBOX", 3).startswith("+OK")
    assert c.flags(user, "Archive/2026", 4, 1, "$Important").startswith("+OK")
    c.close()
    return uv_inbox


def digest(t, user, store):
    c = TSync(t.ports["sync-" + store])
    d = c.digest(user)
    c.close()
    return d


def home(t, user):
    out = t.cli("user", "show", user).stdout
    return (re.search(r"home:\s+(\S+)", out).group(1), int(re.search(r"epoch:\s+(\d+)", out).group(1)),
            re.search(r"state:\s+(\S+)", out).group(1))


def mbox_state(t, user, store):
    c = TSync(t.ports["sync-" + store])
    r = c.mbox(user)
    c.close()
    return r


def job_phase(t, job):
    return re.search(r"phase:\s+(\S+)", t.cli("move", "show", str(job)).stdout).group(1)


def start_move(t, user, to, *extra):
    out = t.cli("move", user, "--to", to, *extra).stdout
    return int(re.search(r"move job (\d+)", out).group(1))


@pytest.fixture
def c3(tmp_path):
    t = cluster(tmp_path)
    t.serve()
    yield t
    t.stop()


def test_move_preserves_everything(c3):
    fill(c3, "alice@example.org")
    before = digest(c3, "alice@example.org", "s1")
    p = c3.cli("move", "alice@example.org", "--to", "s2", "--wait")
    assert "moved alice@example.org from s1 to s2 (epoch 2)" in p.stdout
    assert home(c3, "alice@example.org") == ("s2", 2, "active")
    # Same folders, UIDVALIDITY, UIDNEXT, and per folder the same set of
    # (UID, GUID, flags, size, SHA-256, keywords).
    assert digest(c3, "alice@example.org", "s2") == before
    assert mbox_state(c3, "alice@example.org", "s2").startswith("+OK active 2")
    # retention = 0 in tests: the old copy is purged once it is safe.
    assert wait_for(lambda: "notfound" in mbox_state(c3, "alice@example.org", "s1"))
    assert wait_for(lambda: job_phase(c3, 1) == "done")
    jobs = c3.cli("moves").stdout
    assert re.search(r"^1\s+move\s+alice@example\.org\s+s1\s+s2\s+done", jobs, re.M), jobs


def test_move_cli_errors(c3):
    for args, needle in [
        (["move", "nobody@example.org", "--to", "s2"], "no such user"),
        (["move", "alice@example.org", "--to", "s9"], "unknown store"),
        (["move", "alice@example.org", "--to", "s1"], "already lives on s1"),
        (["move", "alice@example.org"], "needs --to"),
        (["move", "show", "999"], "no job 999"),
        (["move", "abort", "x"], "not a job id"),
    ]:
        p = c3.cli(*args, check=False)
        assert p.returncode != 0 and needle in p.stderr, (args, p.stderr)
    start_move(c3, "alice@example.org", "s2", "--suspend-when-ready")
    p = c3.cli("move", "alice@example.org", "--to", "s2", check=False)
    assert p.returncode == 1 and "already has a move" in p.stderr


def test_q277911_staged_destination_refuses_delivery(c3):
    """A delivery racing the provision step is never lost: the staged copy
    refuses it (451), the source keeps taking mail until the fence."""
    fill(c3, "alice@example.org", n=6)
    job = start_move(c3, "alice@example.org", "s2", "--suspend-when-ready")
    assert wait_for(lambda: job_phase(c3, job) == "ready")
    assert mbox_state(c3, "alice@example.org", "s2").startswith("+OK staged 2")
    with smtplib.LMTP("127.0.0.1", c3.ports["s2"]) as c:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
            c.sendmail("x@example.org", ["alice@example.org"], b"Subject: early\r\n\r\n.\r\n")
        code, text = e.value.recipients["alice@example.org"]
        assert code == 451 and text.startswith(b"4.2.1")
    # Meanwhile mail through the mta lands on the source, and is carried over.
    with smtplib.SMTP("127.0.0.1", c3.ports["smtp"]) as c:
        c.sendmail("x@example.org", ["alice@example.org"], b"Subject: during\r\n\r\n.\r\n")
    assert wait_for(lambda: "Subject: during" in c3.export("alice@example.org"))
    c3.cli("move", "complete", str(job))
    assert c3.cli("move", "wait", str(job)).returncode == 0
    box = c3.export("alice@example.org")  # now from s2
    assert box.count("Subject: during") == 1 and "Subject: early" not in box


def test_abort_before_switch_leaves_source_the_only_home(c3):
    fill(c3, "alice@example.org", n=6)
    before = digest(c3, "alice@example.org", "s1")
    job = start_move(c3, "alice@example.org", "s2", "--suspend-when-ready")
    assert wait_for(lambda: job_phase(c3, job) == "ready")
    assert "abort requested" in c3.cli("move", "abort", str(job)).stdout
    assert wait_for(lambda: job_phase(c3, job) == "aborted")
    assert home(c3, "alice@example.org") == ("s1", 1, "active")
    assert "notfound" in mbox_state(c3, "alice@example.org", "s2")
    assert mbox_state(c3, "alice@example.org", "s1").startswith("+OK active 1")
    assert digest(c3, "alice@example.org", "s1") == before
    with smtplib.SMTP("127.0.0.1", c3.ports["smtp"]) as c:
        c.sendmail("x@example.org", ["alice@example.org"], b"Subject: after\r\n\r\n.\r\n")
    assert wait_for(lambda: "Subject: after" in c3.export("alice@example.org"))
    p = c3.cli("move", "wait", str(job), check=False)
    assert p.returncode == 1 and "aborted" in p.stderr


def test_abort_after_switch_is_refused(c3):
    job = start_move(c3, "alice@example.org", "s2")
    assert c3.cli("move", "wait", str(job)).returncode == 0
    p = c3.cli("move", "abort", str(job), check=False)
    assert p.returncode == 1 and "cannot be aborted" in p.stderr


@pytest.mark.parametrize("phase", ["copy", "verify", "switch", "retention"])
def test_q252869_mover_crash_then_second_move(tmp_path, phase):
    """The mover dies at a phase boundary (kill -9 equivalent) and is
    restarted by the supervisor; the move completes with exactly one home,
    and a second move back loses nothing."""
    t = cluster(tmp_path)
    marker = tmp_path / "crashed"
    os.environ["TERN_FAULT"] = f"crash:move.{phase}"
    os.environ["TERN_FAULT_ONCE"] = str(marker)
    try:
        t.serve()
    finally:
        del os.environ["TERN_FAULT"], os.environ["TERN_FAULT_ONCE"]
    try:
        fill(t, "alice@example.org", n=12)
        before = digest(t, "alice@example.org", "s1")
        job = start_move(t, "alice@example.org", "s2")
        assert t.cli("move", "wait", str(job)).returncode == 0
        assert marker.exists()
        assert "mover (pid" in t.log() and "exited with status 137" in t.log()
        assert home(t, "alice@example.org") == ("s2", 2, "active")
        assert digest(t, "alice@example.org", "s2") == before
        job2 = start_move(t, "alice@example.org", "s1")
        assert t.cli("move", "wait", str(job2)).returncode == 0
        assert home(t, "alice@example.org") == ("s1", 3, "active")
        assert digest(t, "alice@example.org", "s1") == before
    finally:
        t.stop()


def test_mover_kill9_mid_copy_and_wait_survives(tmp_path):
    t = cluster(tmp_path, top_extra="restart_backoff_max = 200")
    t.serve()
    try:
        fill(t, "alice@example.org", n=1500)
        before = digest(t, "alice@example.org", "s1")
        waiter = subprocess.Popen([TERN_BIN, "--data", str(t.data), "--config", str(t.config),
                                   "move", "alice@example.org", "--to", "s2", "--wait"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert wait_for(lambda: "copy" in t.cli("moves").stdout, 20)
        os.kill(t.role_pid("mover"), signal.SIGKILL)
        out, err = waiter.communicate(timeout=120 * SLOW)
        assert waiter.returncode == 0, err
        assert digest(t, "alice@example.org", "s2") == before
        assert home(t, "alice@example.org") == ("s2", 2, "active")
    finally:
        t.stop()


def test_move_back_and_forth_under_load(tmp_path):
    """Mail keeps coming through the mta while alice moves back and forth:
    every accepted message ends in her final home exactly once, UIDVALIDITY
    never changes, and no DSN is produced."""
    t = cluster(tmp_path, queue_extra="park_max_ms = 200")
    t.serve()
    rounds = int(os.environ.get("TERN_MOVE_ROUNDS", "20"))
    acked, stop = [], threading.Event()

    def sender():
        while not stop.is_set():
            tok = uuid.uuid4().hex
            try:
                with smtplib.SMTP("127.0.0.1", t.ports["smtp"], timeout=10 * SLOW) as c:
                    c.sendmail("bob@example.org", ["alice@example.org"],
                               f"Subject: load\r\nX-Token: {tok}\r\n\r\n.\r\n".encode())
                acked.append(tok)
            except (OSError, smtplib.SMTPException):
                pass
            time.sleep(0.01)

    try:
        fill(t, "alice@example.org", n=20)
        uv = [l for l in digest(t, "alice@example.org", "s1")]
        th = threading.Thread(target=sender)
        th.start()
        stores = ["s2", "s1"]
        for i in range(rounds):
            job = start_move(t, "alice@example.org", stores[i % 2])
            assert t.cli("move", "wait", str(job)).returncode == 0, t.cli("moves").stdout
        stop.set()
        th.join()
        assert t.wait_queue_empty(30), t.queue()
        final, epoch, _ = home(t, "alice@example.org")
        assert epoch == rounds + 1
        box = t.export("alice@example.org")
        seen = re.findall(r"^X-Token: ([0-9a-f]{32})$", box, re.M)
        assert len(acked) > 10
        assert sorted(seen) == sorted(set(seen)), "a message was duplicated"
        assert set(acked) <= set(seen), "an accepted message was lost"
        # Folders keep their UIDVALIDITY through every move.
        now = digest(t, "alice@example.org", final)
        uv_now = {l.split()[-1]: l.split()[1] for l in now}
        assert {l.split()[-1]: l.split()[1] for l in uv} == uv_now
        assert "Undelivered" not in t.export("bob@example.org")
    finally:
        stop.set()
        t.stop()


def test_drain_moves_every_mailbox(c3):
    for u in USERS:
        fill(c3, u, n=8)
    before = {u: digest(c3, u, "s1") for u in USERS}
    p = c3.cli("drain", "s1", "--to", "s2", "--parallel", "2")
    assert "drain: 3 mailbox(es) moved from s1 to s2" in p.stdout, p.stdout + p.stderr
    for u in USERS:
        assert home(c3, u)[0] == "s2"
        assert digest(c3, u, "s2") == before[u]
    assert "s1         " in c3.cli("store", "list").stdout
    assert re.search(r"^s1\s+\S+\s+0$", c3.cli("store", "list").stdout, re.M)


def test_changes_during_catchup_equal_at_switch(tmp_path):
    """Flag changes, expunges, folder operations and new mail on the source
    while the move catches up: at the switch the destination equals the
    (then frozen) source, which retention keeps for the comparison."""
    t = cluster(tmp_path, mover_extra="retention = 3600\nlease_ms = 2000")
    t.serve()
    try:
        fill(t, "alice@example.org", n=30)
        job = start_move(t, "alice@example.org", "s2", "--suspend-when-ready")
        assert wait_for(lambda: job_phase(t, job) == "ready")
        c = TSync(t.ports["sync-s1"])
        u = "alice@example.org"
        assert c.flags(u, "Archive/2026", 7, 3, "$Junk").startswith("+OK")
        assert c.expunge(u, "Sent Items", 5).startswith("+OK")
        assert c.folder(u, "Projects", 3333, 1).startswith("+OK")
        assert c.append(u, "Projects", 1, b"Subject: new\r\n\r\nx\r\n", flags=1).startswith("+OK")
        assert c.folder(u, "Archive/2027", 1111, 1).startswith("+OK")  # a rename
        c.close()
        with smtplib.SMTP("127.0.0.1", t.ports["smtp"]) as s:
            s.sendmail("bob@example.org", [u], b"Subject: live\r\n\r\n.\r\n")
        assert wait_for(lambda: "Subject: live" in t.export(u))
        t.cli("move", "complete", str(job))
        assert t.cli("move", "wait", str(job)).returncode == 0
        assert mbox_state(t, u, "s1").startswith("+OK moved 2 s2")
        frozen = digest(t, u, "s1")
        assert any(l.endswith(hx("Archive/2027")) for l in frozen)
        assert digest(t, u, "s2") == frozen
    finally:
        t.stop()


@pytest.mark.parametrize("victim", ["s1", "s2"])
def test_store_kill9_during_move(tmp_path, victim):
    t = cluster(tmp_path, top_extra="restart_backoff_max = 200")
    t.serve()
    try:
        fill(t, "alice@example.org", n=800)
        before = digest(t, "alice@example.org", "s1")
        job = start_move(t, "alice@example.org", "s2")
        assert wait_for(lambda: job_phase(t, job) in ("copy", "catchup", "final", "verify",
                                                     "switch", "retention", "done"), 20)
        os.kill(t.role_pid(victim), signal.SIGKILL)
        assert t.cli("move", "wait", str(job)).returncode == 0
        assert home(t, "alice@example.org") == ("s2", 2, "active")
        # The move may have finished before the kill: the victim may still be
        # coming back up.
        assert wait_port(t.ports["sync-" + victim])
        assert digest(t, "alice@example.org", "s2") == before
    finally:
        t.stop()
