"""The bounded cutover (docs/move.md): the source is fenced only for
`[mover] cutover_budget_ms`. A final sync that does not fit unfences the
source, catches up again and retries the cutover; a cutover that keeps
failing (a store unreachable) is unfenced once the persisted fence time is
past the budget; after CUTOVERS_MAX (10) cutovers over budget the job fails
and the source stays the only home. Mail keeps coming through the mta."""
import os
import re
import signal
import sqlite3
import time

from conftest import SLOW
from movekit import Load, check_acked, check_sanitizers, pause_env, serve_with, snapshot
from test_move import cluster, fill, home, job_phase, mbox_state, start_move, wait_for
from tsync import TSync

U = "alice@example.org"
QUEUE = "park_min_ms = 20\npark_max_ms = 100\nretry_min = 1\nretry_max = 2"


def cutovers(t, job):
    m = re.search(r"^cutovers:\s+(\d+)", t.cli("move", "show", str(job)).stdout, re.M)
    return int(m.group(1)) if m else 0


def wait_pause(t, pause, job, timeout=30):
    assert wait_for(lambda: pause.exists() or job_phase(t, job) in ("done", "failed", "aborted"),
                    timeout), t.log(3000)
    assert pause.exists(), f"no pause; job is {job_phase(t, job)}:\n{t.log(3000)}"


def test_final_sync_over_budget_retries_the_cutover(tmp_path):
    """The mover stops in the middle of the final sync (a slow final delta)
    until the fence is past the budget: the source is unfenced, mail parked
    meanwhile is delivered there, and the second cutover succeeds."""
    t = cluster(tmp_path, queue_extra=QUEUE,
                mover_extra="retention = 0\nlease_ms = 2000\ncutover_budget_ms = 300")
    pause = tmp_path / "pause"
    serve_with(t, pause_env(tmp_path, ["pause:move.fence@mover",
                                       "pause:move.final.record@mover"]))
    try:
        fill(t, U, n=40)
        before = snapshot(t, U, "s1")
        with Load(t, (U,), sender="bob@example.org") as load:
            job = start_move(t, U, "s2")
            # Before the fence: one more message on the (live) source, so the
            # final sync has a delta to be slow with.
            wait_pause(t, pause, job)
            c = TSync(t.ports["sync-s1"])
            assert c.append(U, "INBOX", 1000, b"Subject: delta\r\n\r\nx\r\n").startswith("+OK")
            c.close()
            pause.unlink()
            # In the final sync, with the source fenced: outlast the budget.
            wait_pause(t, pause, job)
            assert mbox_state(t, U, "s1").startswith("+OK fenced 1")
            assert cutovers(t, job) == 1
            time.sleep(0.9)
            pause.unlink()
            assert t.cli("move", "wait", str(job)).returncode == 0
        assert "cutover 1 exceeded its budget in the final sync" in t.log()
        assert cutovers(t, job) == 2
        assert home(t, U) == ("s2", 2, "active")
        assert t.wait_queue_empty(30), t.queue()
        after = snapshot(t, U, "s2")
        assert all(after.get(k) == v for k, v in before.items())
        assert any(k[0] == "INBOX" and k[2] == 1000 for k in after)
        check_acked(t, load)
        assert len(load.acked[U]) > 0
        d = t.cli("doctor", check=False)
        assert d.returncode == 0, d.stdout
        check_sanitizers(t)
    finally:
        t.stop()


def test_fence_is_bounded_while_the_destination_is_unreachable(tmp_path):
    """The destination stops answering (SIGSTOP) right after the fence: the
    final sync cannot run, and once the fence is past the budget the source
    is unfenced and takes mail again. When the destination is back the move
    completes with a new cutover."""
    t = cluster(tmp_path, queue_extra=QUEUE,
                mover_extra="retention = 0\nlease_ms = 2000\ncutover_budget_ms = 1000")
    pause = tmp_path / "pause"
    serve_with(t, pause_env(tmp_path, ["pause:move.final@mover"]))
    stopped = None
    try:
        fill(t, U, n=30)
        before = snapshot(t, U, "s1")
        with Load(t, (U,), sender="bob@example.org", pause=0.05) as load:
            job = start_move(t, U, "s2")
            wait_pause(t, pause, job)
            assert mbox_state(t, U, "s1").startswith("+OK fenced 1")
            stopped = t.role_pid("s2")
            os.kill(stopped, signal.SIGSTOP)
            fenced = time.time()
            pause.unlink()
            # Unfenced within the budget plus one failed attempt and a revisit.
            assert wait_for(lambda: mbox_state(t, U, "s1").startswith("+OK active 1"), 15)
            assert time.time() - fenced < 8 * SLOW
            assert job_phase(t, job) == "catchup"
            assert home(t, U) == ("s1", 1, "moving")  # not finalizing: mail flows
            # The source takes mail again while the destination is still down.
            tok = load.send(U)
            assert wait_for(lambda: tok in t.export(U), 15), t.queue()
            os.kill(stopped, signal.SIGCONT)
            stopped = None
            assert t.cli("move", "wait", str(job)).returncode == 0
        assert "was over budget" in t.log()
        assert cutovers(t, job) == 2
        assert home(t, U) == ("s2", 2, "active")
        assert t.wait_queue_empty(30), t.queue()
        after = snapshot(t, U, "s2")
        assert all(after.get(k) == v for k, v in before.items())
        check_acked(t, load)
        check_sanitizers(t)
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        t.stop()


def test_cutover_gives_up_after_ten_tries(tmp_path):
    """Every cutover is too slow: after ten the job fails, the source is the
    only home, live, with everything it had."""
    t = cluster(tmp_path, queue_extra=QUEUE,
                mover_extra="retention = 0\nlease_ms = 2000\ncutover_budget_ms = 50")
    pause = tmp_path / "pause"
    serve_with(t, pause_env(tmp_path, ["pause:move.final@mover"], once=False))
    try:
        fill(t, U, n=10)
        before = snapshot(t, U, "s1")
        job = start_move(t, U, "s2")
        for i in range(10):
            wait_pause(t, pause, job)
            time.sleep(0.1)
            pause.unlink()
        p = t.cli("move", "wait", str(job), check=False)
        assert p.returncode == 1
        assert job_phase(t, job) == "failed"
        show = t.cli("move", "show", str(job)).stdout
        assert "10 cutovers did not fit the 50 ms budget" in show, show
        assert cutovers(t, job) == 10
        assert home(t, U) == ("s1", 1, "active")
        assert mbox_state(t, U, "s1").startswith("+OK active 1")
        assert "notfound" in mbox_state(t, U, "s2")
        assert snapshot(t, U, "s1") == before
        d = t.cli("doctor", check=False)
        assert d.returncode == 0, d.stdout
        check_sanitizers(t)
    finally:
        t.stop()


def test_doctor_reports_a_fence_past_the_budget(tmp_path):
    """A job whose mover keeps the source fenced a minute past the budget
    (a mover that neither finishes nor lets go: its lease is still valid)
    is reported; nothing is changed."""
    t = cluster(tmp_path)
    t.serve("--roles", "store:s1,store:s2")  # no mover to resume anything
    try:
        fill(t, U, n=6)
        t.cli("mailbox", "fence", U)
        now = int(time.time() * 1000)
        db = sqlite3.connect(t.data / "directory.db")
        db.execute("insert into jobs(kind, user, source, dest, phase, msgs_total, msgs_done,"
                   " bytes_total, bytes_done, lease_owner, lease_expires, created, updated,"
                   " last_error, version, checkpoint, epoch, retain_until, options, fenced_at,"
                   " cutovers) values(0, ?, 's1', 's2', 'verify', 0, 0, 0, 0, 'mover@elsewhere:1',"
                   " ?, 0, 0, '', 1, 0, 1, 0, 0, ?, 1)", (U, now + 600000, now - 125000))
        db.commit()
        db.close()
        p = t.cli("doctor", check=False)
        assert p.returncode == 1, p.stdout
        assert re.search(r"job 1 \(alice@example\.org, phase verify\) has kept the source s1 "
                         r"fenced for 12\ds \(cutover budget 2000 ms\)", p.stdout), p.stdout
        assert "stuck" not in p.stdout
        assert mbox_state(t, U, "s1").startswith("+OK fenced 1")
        # Within the budget (plus a minute's grace) it is not a problem.
        db = sqlite3.connect(t.data / "directory.db")
        db.execute("update jobs set fenced_at = ?, version = version + 1", (now - 1000,))
        db.commit()
        db.close()
        assert "has kept the source" not in t.cli("doctor", check=False).stdout
    finally:
        t.stop()
