"""tern doctor: reports what the directory and the stores disagree on,
repairs stuck jobs by releasing them, and never deletes anything."""
import sqlite3
import time

from test_move import USERS, cluster, mbox_state, start_move, wait_for
from tsync import TSync, hx


def test_doctor_reports_and_repairs_without_deleting(tmp_path):
    t = cluster(tmp_path)
    t.serve("--roles", "store:s1,store:s2,mta,mover")
    try:
        job = start_move(t, "bob@example.org", "s2")
        assert t.cli("move", "wait", str(job)).returncode == 0
        ok = t.cli("doctor")
        assert ok.returncode == 0 and "everything is consistent" in ok.stdout, ok.stdout

        # A fenced mailbox with no job, a live mailbox on a second store, and
        # a mailbox nobody in the directory owns.
        c1, c2 = TSync(t.ports["sync-s1"]), TSync(t.ports["sync-s2"])
        assert c1.cmd(f"CREATE {hx('alice@example.org')} active 1").startswith("+OK")
        t.cli("mailbox", "fence", "alice@example.org")
        assert c2.cmd(f"CREATE {hx('carol@example.org')} active 1").startswith("+OK")
        assert c2.cmd(f"CREATE {hx('ghost@example.org')} active 1").startswith("+OK")
        c1.close()
        c2.close()
        p = t.cli("doctor", check=False)
        assert p.returncode == 1
        assert "alice@example.org on its home s1 is fenced and no job is running" in p.stdout
        assert "carol@example.org has a active mailbox on s2 but lives on s1" in p.stdout
        assert "ghost@example.org on s2 (active): not in the directory; kept" in p.stdout

        # A stuck job: its mover vanished two minutes ago. (Everything is
        # stopped first: a running mover would claim the job at once.)
        t.stop()
        db = sqlite3.connect(t.data / "directory.db")
        db.execute("insert into jobs(kind, user, source, dest, phase, msgs_total, msgs_done,"
                   " bytes_total, bytes_done, lease_owner, lease_expires, created, updated,"
                   " last_error, version, checkpoint, epoch, retain_until, options)"
                   " values(0, 'carol@example.org', 's1', 's2', 'retention', 0, 0, 0, 0,"
                   " 'mover@gone:1', ?, 0, 0, '', 1, 0, 1, 0, 0)",
                   (int(time.time() * 1000) - 120000,))
        db.commit()
        db.close()
        t.serve("--roles", "store:s1,store:s2")  # no mover to pick it up
        p = t.cli("doctor", "--repair", check=False)
        assert "is stuck: lease of mover@gone:1 expired" in p.stdout
        assert "released; a mover resumes it at retention" in p.stdout
        assert "nothing was deleted" in p.stdout
        # Every reported mailbox is still there.
        assert mbox_state(t, "ghost@example.org", "s2").startswith("+OK active")
        assert mbox_state(t, "carol@example.org", "s2").startswith("+OK active")
        assert mbox_state(t, "alice@example.org", "s1").startswith("+OK fenced")
        p = t.cli("doctor", check=False)
        assert "stuck" not in p.stdout
    finally:
        t.stop()
