"""The move fault matrix (issue 4): a fault at every phase boundary of a move
and at points inside copy and switch, while mail keeps coming through the mta
to the moving user and to users homed on each store. After recovery the user
has exactly one home, `tern doctor` is clean, every message the move started
with is there with its folder, UID, flags, keywords and date, every message
the mta acknowledged is in its recipient's mailbox exactly once, no DSN was
sent, and the job ended complete (or aborted/failed with the source as the
only home).

Points (TERN_FAULT=pause:POINT@mover stops the mover there, util.h):
  move.PHASE             before each persisted phase runs;
  move.batch             inside copy: a batch of appends is durable on the
                         destination, the checkpoint has not moved past it;
  move.switch.cas_done   after the directory compare-and-set, before the stores
                         change state; move.switch.dst_active after the
                         destination became active; move.switch.src_moved
                         after the source became moved(dst).
Faults, applied while the mover waits there:
  kill-mover, kill-src, kill-dst   kill -9 (the supervisor restarts it);
  fsync-src, fsync-dst             the store's next fsync fails (EIO);
  write-src, write-dst             the store's next body write fails (EIO);
  commit-src, commit-dst           the store dies inside its next commit,
                                   bodies synced and metadata not.
(The store faults are in every role's TERN_FAULT, scoped @store:NAME and
armed by creating TERN_FAULT_ARMED's file.)

CI runs SHORT, a cross-section of about two minutes; TERN_FULL_MATRIX=1 runs
every point with every fault (`bench/` is the other helper's; see
docs/testing.md)."""
import os
import signal
import time

import pytest

from conftest import Tern, wait_port
from movekit import (Load, check_acked, check_sanitizers, pause_env, serve_with, snapshot,
                     tokens)
from test_move import fill, home, job_phase, mbox_state, start_move, wait_for

POINTS = ["provision", "copy", "batch", "catchup", "fence", "final", "verify", "switch",
          "switch.cas_done", "switch.dst_active", "switch.src_moved", "retention"]
KINDS = ["kill-mover", "kill-src", "kill-dst", "fsync-src", "fsync-dst", "write-src",
         "write-dst", "commit-src", "commit-dst"]
# Every point and every fault at least once, the switch's insides twice.
SHORT = [("provision", "kill-dst"), ("copy", "fsync-dst"), ("batch", "kill-mover"),
         ("batch", "commit-dst"), ("catchup", "write-src"), ("fence", "kill-src"),
         ("final", "write-dst"), ("verify", "kill-dst"), ("switch", "fsync-src"),
         ("switch.cas_done", "kill-mover"), ("switch.cas_done", "kill-dst"),
         ("switch.dst_active", "kill-src"), ("switch.src_moved", "commit-src"),
         ("retention", "kill-src")]
FULL = os.environ.get("TERN_FULL_MATRIX", "0") not in ("", "0")
CASES = [(p, k) for p in POINTS for k in KINDS] if FULL else SHORT

MOVING, ON_SRC, ON_DST, SENDER = ("alice@example.org", "bob@example.org", "carol@example.org",
                                  "dave@example.org")
FILL = 260  # three batches of the copy (128 each): "batch" is mid-copy


def fault_env(tmp, point, kind):
    """The environment of `tern serve` (every role inherits it)."""
    faults = [f"pause:move.{point}@mover"]
    victim = {"src": "store:s1", "dst": "store:s2"}.get(kind.split("-")[1])
    if kind.startswith("fsync-"):
        faults.append(f"fsync:1@{victim}")
    elif kind.startswith("write-"):
        faults.append(f"write:1@{victim}")
    elif kind.startswith("commit-"):
        faults.append(f"crash:store.bodies_synced@{victim}")
    return pause_env(tmp, faults)


def faults_fired(t, victim):
    role = {"src": "store:s1", "dst": "store:s2"}[victim]
    return [l for l in t.log().splitlines()
            if f" {role}[" in l and ("TERN_FAULT: failing" in l or "simulated crash" in l)]


def run_case(tmp_path, point, kind):
    t = Tern(tmp_path, top_extra="restart_backoff_max = 200",
             queue_extra="retry_min = 1\nretry_max = 2\npark_min_ms = 20\npark_max_ms = 200",
             mover_extra="retention = 0\nlease_ms = 2000")
    t.cli("domain", "add", "example.org")
    for u, s in ((MOVING, "s1"), (ON_SRC, "s1"), (ON_DST, "s2"), (SENDER, "s1")):
        t.cli("user", "add", u, "--password", "x", "--store", s)
    pause, armed = tmp_path / "pause", tmp_path / "armed"
    serve_with(t, fault_env(tmp_path, point, kind))
    try:
        fill(t, MOVING, n=FILL)
        before = snapshot(t, MOVING, "s1")
        folders_before = {(k[0], k[1]) for k in before}
        with Load(t, (MOVING, ON_SRC, ON_DST), sender=SENDER) as load:
            job = start_move(t, MOVING, "s2")
            assert wait_for(lambda: pause.exists() or job_phase(t, job) in
                            ("done", "aborted", "failed"), 60), t.log(3000)
            assert pause.exists(), f"the move never reached move.{point}: {job_phase(t, job)}"
            victim = kind.split("-")[1]
            if kind.startswith("kill-"):
                pid = t.role_pid({"mover": "mover", "src": "s1", "dst": "s2"}[victim])
                os.kill(pid, signal.SIGKILL)
            else:
                armed.touch()
            pause.unlink()
            p = t.cli("move", "wait", str(job), check=False)
            if not kind.startswith("kill-"):
                # Mail to the user on each store makes every store write:
                # the armed fault fires, here if not in the move itself.
                assert wait_for(lambda: faults_fired(t, victim), 30), \
                    f"the {kind} fault never fired:\n{t.log(3000)}"
            time.sleep(0.3)
        assert t.wait_queue_empty(60), t.queue()
        for port in ("s1", "s2"):
            assert wait_port(t.ports[port])

        phase = job_phase(t, job)
        assert phase in ("retention", "done", "aborted", "failed"), phase
        moved = phase in ("retention", "done")
        assert (p.returncode == 0) == moved, p.stdout + p.stderr
        h, epoch, state = home(t, MOVING)
        assert (h, epoch, state) == (("s2", 2, "active") if moved else ("s1", 1, "active"))
        other = "s1" if h == "s2" else "s2"
        # Exactly one home: live there at the directory's epoch, not live
        # anywhere else (retention = 0: the old copy goes once it is safe).
        assert mbox_state(t, MOVING, h).startswith(f"+OK active {epoch} ")
        if moved:
            assert wait_for(lambda: job_phase(t, job) == "done", 30), t.cli("moves").stdout
            assert wait_for(lambda: "notfound" in mbox_state(t, MOVING, other), 30)
        else:
            st = mbox_state(t, MOVING, other)
            assert "notfound" in st or st.startswith("+OK moved") or \
                st.startswith("+OK deleting"), st
        d = t.cli("doctor", check=False)
        assert d.returncode == 0 and "everything is consistent" in d.stdout, d.stdout

        # Everything the move started with, unchanged; the rest of the mailbox
        # is mail that came through the mta into INBOX.
        after = snapshot(t, MOVING, h)
        for k, v in before.items():
            assert after.get(k) == v, f"{k}: {v} became {after.get(k)}"
        extra = [k for k in after if k not in before]
        assert all(k[0] == "INBOX" for k in extra), extra
        assert folders_before <= {(k[0], k[1]) for k in after}
        # Every acknowledged message exactly once, in every mailbox.
        check_acked(t, load)
        assert len(load.acked[MOVING]) > 0
        assert len(extra) == len(tokens(t, MOVING))
        assert t.export(SENDER) == "", "a DSN was sent"
        check_sanitizers(t)
        return phase
    except AssertionError:
        print(t.log(6000))
        raise
    finally:
        t.stop()


@pytest.mark.parametrize("point,kind", CASES, ids=[f"{p}-{k}" for p, k in CASES])
def test_move_fault(tmp_path, point, kind):
    run_case(tmp_path, point, kind)
