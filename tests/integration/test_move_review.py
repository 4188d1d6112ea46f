"""The move engine's review findings, each as a test that fails without its
fix: folder names swapped on the source during catch-up, a folder deleted
and created again under the same name, verify and internal dates, an aborted
move that had reused a retained copy, the mta's backoff after parks, a
mover stalled past its lease while another finishes the move, and a move
back onto a retained copy across three stores."""
import imaplib
import os
import re
import signal
import smtplib
import sqlite3
import subprocess
import time

from conftest import SLOW, TERN_BIN, free_port, sanitizer_reports, wait_port
from test_imap import lmtp_deliver, msg
from movekit import check_sanitizers, folders, listing, pause_env, serve_with, snapshot
from test_move import cluster, digest, fill, home, job_phase, mbox_state, start_move, wait_for
from tsync import TSync, hx

U = "alice@example.org"


def wait_pause(t, pause, job, timeout=30):
    assert wait_for(lambda: pause.exists() or job_phase(t, job) in ("done", "failed", "aborted"),
                    timeout), t.log(3000)
    assert pause.exists(), f"no pause; job is {job_phase(t, job)}:\n{t.log(3000)}"


def test_folder_swap_during_catchup(tmp_path):
    """A → tmp, B → A, tmp → B on the source while the move catches up: the
    destination applies it one folder record at a time, so a name is still
    held by the other folder; it makes way instead of failing the move."""
    t = cluster(tmp_path, mover_extra="retention = 3600\nlease_ms = 2000")
    pause = tmp_path / "pause"
    serve_with(t, pause_env(tmp_path, ["pause:move.ready@mover"]))
    try:
        fill(t, U, n=20)
        job = start_move(t, U, "s2", "--suspend-when-ready")
        wait_pause(t, pause, job)  # caught up, before the next pass
        assert folders(t, U, "s2") == folders(t, U, "s1")
        c = TSync(t.ports["sync-s1"])
        for uv, name in ((1111, "swap tmp"), (2222, "Archive/2026"), (1111, "Sent Items")):
            assert c.folder(U, name, uv, 1).startswith("+OK")
        c.close()
        pause.unlink()
        t.cli("move", "complete", str(job))
        p = t.cli("move", "wait", str(job), check=False)
        assert p.returncode == 0, p.stdout + p.stderr + t.cli("moves").stdout
        assert "makes way as .tern-move-swap-" in t.log()
        got = folders(t, U, "s2")
        assert got["Archive/2026"] == 2222 and got["Sent Items"] == 1111, got
        assert not any(n.startswith(".tern-move-swap-") for n in got), got
        assert digest(t, U, "s2") == digest(t, U, "s1")  # s1: the frozen source, kept
        check_sanitizers(t)
    finally:
        t.stop()


def test_same_name_folder_incarnations(tmp_path):
    """Folder Work (UIDVALIDITY 5000, UIDs 1-3) deleted, a new Work (6000,
    UIDs 1-3 again) created. The mover dies after the copy's batch is on the
    destination and resumes from its last saved checkpoint, so the listing
    comes again: the old Work's tombstones must not expunge the new Work's
    messages, which have the same name and UIDs."""
    t = cluster(tmp_path, top_extra="restart_backoff_max = 200",
                mover_extra="retention = 0\nlease_ms = 2000")
    pause = tmp_path / "pause"
    serve_with(t, pause_env(tmp_path, ["pause:move.batch@mover"]))
    try:
        # Built so that the copy's only batch holds the new Work's messages:
        # the old Work's tombstones come first in the listing, with nothing
        # to flush before them.
        c = TSync(t.ports["sync-s1"])
        assert c.cmd(f"CREATE {hx(U)} active 1").startswith("+OK")
        assert c.folder(U, "Work", 5000, 1).startswith("+OK")
        for uid in (1, 2, 3):
            assert c.append(U, "Work", uid, f"Subject: old {uid}\r\n\r\n.\r\n".encode(),
                            guid=f"{5000 + uid:032x}").startswith("+OK")
        assert c.cmd(f"FDELETE {hx(U)} 5000").startswith("+OK")
        assert c.folder(U, "Work", 6000, 1).startswith("+OK")
        for uid in (1, 2, 3):
            assert c.append(U, "Work", uid, f"Subject: new {uid}\r\n\r\n.\r\n".encode(),
                            flags=4, guid=f"{6000 + uid:032x}").startswith("+OK")
        for uid in (1, 2):
            assert c.append(U, "INBOX", uid, f"Subject: in {uid}\r\n\r\n.\r\n".encode(),
                            flags=1, keywords="$x").startswith("+OK")
        c.close()
        before = snapshot(t, U, "s1")
        assert {k[2] for k in before if k[0] == "Work"} == {1, 2, 3}
        job = start_move(t, U, "s2")
        wait_pause(t, pause, job)
        os.kill(t.role_pid("mover"), signal.SIGKILL)
        pause.unlink()
        p = t.cli("move", "wait", str(job), check=False)
        assert p.returncode == 0, p.stdout + p.stderr + t.cli("moves").stdout
        assert re.search(r"mover \(pid \d+\) killed by signal 9", t.log())
        assert home(t, U) == ("s2", 2, "active")
        assert snapshot(t, U, "s2") == before
        check_sanitizers(t)
    finally:
        t.stop()


def test_verify_compares_internal_dates(tmp_path):
    """A destination message equal in everything but its internal date: the
    move must not switch (and here cannot repair it: it fails, the source
    stays the only home)."""
    t = cluster(tmp_path, mover_extra="retention = 0\nlease_ms = 2000")
    pause = tmp_path / "pause"
    serve_with(t, pause_env(tmp_path, ["pause:move.ready@mover"]))
    try:
        fill(t, U, n=6)
        job = start_move(t, U, "s2", "--suspend-when-ready")
        wait_pause(t, pause, job)
        body = b"Subject: dated\r\n\r\nx\r\n"
        d = TSync(t.ports["sync-s2"])
        assert d.append(U, "INBOX", 500, body, date=1600000000).startswith("+OK")
        d.close()
        s = TSync(t.ports["sync-s1"])
        assert s.append(U, "INBOX", 500, body, date=1700000000).startswith("+OK")
        s.close()
        pause.unlink()
        t.cli("move", "complete", str(job))
        p = t.cli("move", "wait", str(job), check=False)
        assert p.returncode == 1, p.stdout + p.stderr
        assert job_phase(t, job) == "failed"
        assert "verify: folder INBOX differs" in t.cli("move", "show", str(job)).stdout
        assert home(t, U) == ("s1", 1, "active")
        assert mbox_state(t, U, "s1").startswith("+OK active 1")
        assert "notfound" in mbox_state(t, U, "s2")
        check_sanitizers(t)
    finally:
        t.stop()


def add_store_s3(t):
    t.ports["s3"], t.ports["sync-s3"] = free_port(), free_port()
    t.config.write_text(t.config.read_text() +
                        f"[store s3]\nlmtp = 127.0.0.1:{t.ports['s3']}\n"
                        f"sync = 127.0.0.1:{t.ports['sync-s3']}\n")


def test_aborted_reuse_restores_the_retained_copy(tmp_path):
    """s1 → s2 → s3, then s3 → s1 reuses the copy s1 kept (moved to s2 at
    epoch 2) and is aborted: the copy is moved(s2, 2) again — what the first
    move's retention purges by — not moved(s3, 3), which nothing would ever
    purge. While the copy is staged for the third move, the first move's
    retention waits instead of giving up on it."""
    t = cluster(tmp_path, mover_extra="retention = 3600\nlease_ms = 2000")
    add_store_s3(t)
    t.serve()
    try:
        assert wait_port(t.ports["sync-s3"])
        fill(t, U, n=10)
        before = digest(t, U, "s1")
        for to in ("s2", "s3"):
            assert t.cli("move", U, "--to", to, "--wait").returncode == 0
        assert mbox_state(t, U, "s1").startswith("+OK moved 2 s2")
        assert mbox_state(t, U, "s2").startswith("+OK moved 3 s3")
        job = start_move(t, U, "s1", "--suspend-when-ready")
        assert wait_for(lambda: job_phase(t, job) == "ready")
        assert mbox_state(t, U, "s1").startswith("+OK staged 4")
        # Retention over for both earlier moves (an operator's clock jump):
        # the first may purge now, but its copy is in use.
        db = sqlite3.connect(t.data / "directory.db")
        db.execute("UPDATE jobs SET retain_until = 0, version = version + 1 WHERE id IN (1, 2)")
        db.commit()
        db.close()
        assert wait_for(lambda: "staged for another move" in t.cli("move", "show", "1").stdout)
        assert job_phase(t, 1) == "retention"
        assert mbox_state(t, U, "s1").startswith("+OK staged 4")
        t.cli("move", "abort", str(job))
        assert wait_for(lambda: job_phase(t, job) == "aborted")
        # Back as the first move left it, so that move purges it now; the
        # second move purges its own copy on s2.
        assert wait_for(lambda: "notfound" in mbox_state(t, U, "s1")), \
            mbox_state(t, U, "s1") + t.cli("moves").stdout
        assert wait_for(lambda: job_phase(t, 1) == "done")
        assert "purged the old copy on s1" in t.log()
        assert wait_for(lambda: "notfound" in mbox_state(t, U, "s2"))
        assert home(t, U) == ("s3", 3, "active")
        assert digest(t, U, "s3") == before
        d = t.cli("doctor", check=False)
        assert d.returncode == 0, d.stdout
        check_sanitizers(t)
    finally:
        t.stop()


def test_parks_are_not_attempts(tmp_path):
    """Deliveries parked on "move in progress" do not count as attempts, so
    a real temporary failure afterwards is retried after retry_min, not
    retry_min << (number of parks)."""
    t = cluster(tmp_path, queue_extra="park_min_ms = 20\npark_max_ms = 50")
    t.serve()
    try:
        with smtplib.SMTP("127.0.0.1", t.ports["smtp"]) as c:
            c.sendmail("bob@example.org", [U], b"Subject: first\r\n\r\n.\r\n")
        assert wait_for(lambda: "Subject: first" in t.export(U))
        t.cli("mailbox", "fence", U)
        with smtplib.SMTP("127.0.0.1", t.ports["smtp"]) as c:
            c.sendmail("bob@example.org", [U], b"Subject: parked\r\n\r\n.\r\n")
        assert wait_for(lambda: "parked" in t.queue())
        time.sleep(1.0)  # about 20 parks
        q = t.queue()
        assert re.search(r"alice@example\.org\s+parked\s+attempts 0\b", q), q
        assert "move in progress" in q
        t.cli("mailbox", "unfence", U)
        assert wait_for(lambda: "Subject: parked" in t.export(U))
        assert t.wait_queue_empty()
        check_sanitizers(t)
    finally:
        t.stop()


def test_reuse_races_the_retention_purge(tmp_path):
    """A move back finds the copy the first move left on its destination
    (state moved) and is about to reuse it when that first move's retention
    purges it: the move provisions again, from a fresh staged copy, instead
    of failing (found by the torture run, seed 12)."""
    t = cluster(tmp_path, mover_extra="retention = 3\nlease_ms = 2000")
    pause = tmp_path / "pause"
    serve_with(t, pause_env(tmp_path, ["pause:move.provision.reuse@mover"]))
    try:
        fill(t, U, n=20)
        before = digest(t, U, "s1")
        first = start_move(t, U, "s2")
        assert wait_for(lambda: job_phase(t, first) in ("retention", "done"), 60), t.log(3000)
        assert mbox_state(t, U, "s1").startswith("+OK moved")
        back = start_move(t, U, "s1")
        wait_pause(t, pause, back)  # about to reuse the moved copy on s1
        # The first move's retention ends and purges that copy meanwhile.
        assert wait_for(lambda: mbox_state(t, U, "s1").startswith("-NO notfound"), 60), \
            mbox_state(t, U, "s1") + t.cli("moves").stdout
        pause.unlink()
        p = t.cli("move", "wait", str(back), check=False)
        assert p.returncode == 0, p.stdout + p.stderr + t.cli("moves").stdout
        assert "went away" in t.log()
        assert home(t, U)[0] == "s1"
        assert digest(t, U, "s1") == before
        check_sanitizers(t)
    finally:
        t.stop()


def imap_login(t):
    c = imaplib.IMAP4("127.0.0.1", t.ports["imap"])
    c.login(U, "x")  # cluster()'s password
    return c


def imap_flags(t, uid):
    """(sorted flags, MODSEQ) of INBOX/uid, as a client on the home sees it."""
    c = imap_login(t)
    try:
        assert c.select("INBOX")[0] == "OK"
        typ, data = c.uid("FETCH", str(uid), "(MODSEQ FLAGS)")
        assert typ == "OK", data
        text = b" ".join(d if isinstance(d, bytes) else d[0] for d in data if d).decode()
        m = re.search(rf"UID {uid}\b", text)
        assert m, text
        flags = re.search(r"FLAGS \(([^)]*)\)", text).group(1).split()
        return sorted(flags), int(re.search(r"MODSEQ \((\d+)\)", text).group(1))
    finally:
        c.logout()


def changes_row(t, store, folder, uid):
    """The store's own record of folder/uid (TSYNC CHANGES 0): (flags,
    keywords, modseq, expunged)."""
    for l in listing(t, U, store):
        f = l.split(" ")
        if f[0] == "M" and int(f[2]) == uid and bytes.fromhex(f[11]).decode() == folder:
            kw = "" if f[10] == "-" else bytes.fromhex(f[10]).decode()
            return int(f[4]), kw, int(f[8]), f[9]
    return None


def start_mover(t, logfile, faults=None):
    """A second mover process beside the supervisor's, with its own lease
    owner (mover@HOST:PID) and no fault injection but `faults` (env)."""
    env = t.env()
    for k in ("TERN_FAULT", "TERN_FAULT_PAUSE", "TERN_FAULT_ONCE", "TERN_FAULT_ARMED"):
        env.pop(k, None)
    env.update(faults or {})
    log = open(logfile, "ab")
    p = subprocess.Popen([TERN_BIN, "--data", str(t.data), "--config", str(t.config), "role",
                          "mover"], stdout=log, stderr=subprocess.STDOUT, env=env,
                         start_new_session=True)
    log.close()
    return p


def stop_mover(p):
    if p is None or p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=20 * SLOW)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def test_stalled_mover_past_its_lease(tmp_path):
    """Mover A stalls inside a catch-up pass with a flag change in hand (its
    lease checked, the write not yet sent). Its lease lapses; mover B claims
    the job, copies that change itself, switches the home to s2; a client
    then changes the message's flags on s2. A resumes and sends its old flag
    state, stamped with the source's modseq: s2 is no longer staged, so the
    store refuses it (explicit modseqs only on a staged mailbox), A says so
    and stops on the lost lease. The client's change stands."""
    t = cluster(tmp_path, mover_extra="retention = 3600\nlease_ms = 1500")
    pause = tmp_path / "pause"
    serve_with(t, pause_env(tmp_path, ["pause:move.catchup@mover",
                                       "pause:move.pass.flags@mover"]))
    b, blog = None, tmp_path / "mover-b.log"
    try:
        fill(t, U, n=12)  # INBOX holds UIDs 6, 9 and 12
        job = start_move(t, U, "s2")
        wait_pause(t, pause, job)  # copied; before the catch-up pass
        assert job_phase(t, job) == "catchup"
        c = imap_login(t)  # the home is still s1
        assert c.select("INBOX")[0] == "OK"
        assert c.uid("STORE", "6", "FLAGS", "($Before)")[0] == "OK"
        c.logout()
        a_flags, a_modseq = imap_flags(t, 6)
        assert a_flags == ["$Before"]
        pause.unlink()
        wait_pause(t, pause, job)  # A holds that change, about to write it
        a_owner = re.search(r"running as (\S+),", t.log()).group(1)
        assert re.search(r"lease:\s+" + re.escape(a_owner), t.cli("move", "show", str(job)).stdout)

        b = start_mover(t, blog)
        assert wait_for(lambda: job_phase(t, job) == "retention", 60), \
            t.cli("move", "show", str(job)).stdout + blog.read_text()
        show = t.cli("move", "show", str(job)).stdout
        b_owner = re.search(r"lease:\s+(\S+)", show).group(1)
        assert b_owner != a_owner and b_owner.startswith("mover@"), show
        assert home(t, U) == ("s2", 2, "active")
        assert mbox_state(t, U, "s2").startswith("+OK active 2")
        assert mbox_state(t, U, "s1").startswith("+OK moved 2 s2")
        # B copied A's pending change with its source modseq.
        assert imap_flags(t, 6) == (a_flags, a_modseq)

        # A client on the new home changes the flags.
        c = imap_login(t)
        assert c.select("INBOX")[0] == "OK"
        assert c.uid("STORE", "6", "FLAGS", "(\\Seen $After)")[0] == "OK"
        c.logout()
        want = imap_flags(t, 6)
        assert want[0] == ["$After", "\\Seen"] and want[1] > a_modseq, want
        row = changes_row(t, "s2", "INBOX", 6)

        pause.unlink()  # A wakes up with $Before in hand
        # A stops on the lost lease, or at once on B's fencing token.
        assert wait_for(lambda: "lease lost to " + b_owner in t.log() or
                        "flags on s2 refused: stale token" in t.log(), 30), t.log(3000)
        time.sleep(0.5)  # anything A might still send would be in by now

        assert imap_flags(t, 6) == want
        assert changes_row(t, "s2", "INBOX", 6) == row
        # A tried, was refused, and said why.
        log = t.log()
        # B presented a later fencing token to s2 (and the switch made it
        # active): A's write is refused for its stale token first.
        assert re.search(r"flags: alice@example\.org on s2 is no longer staged|"
                         r"alice@example\.org: flags on s2 refused: stale token", log), log[-3000:]
        assert job_phase(t, job) == "retention"
        assert home(t, U) == ("s2", 2, "active")
        # Nothing lost or duplicated: s2 holds exactly what the frozen source
        # holds, but for the client's change.
        src, dst = snapshot(t, U, "s1"), snapshot(t, U, "s2")
        assert set(src) == set(dst)
        assert len({v[0] for v in dst.values()}) == len(dst)  # one GUID each
        changed = [k for k in src if src[k] != dst[k]]
        assert [(k[0], k[2]) for k in changed] == [("INBOX", 6)], changed
        d = t.cli("doctor", check=False)
        assert d.returncode == 0, d.stdout + d.stderr
        check_sanitizers(t)
    finally:
        stop_mover(b)
        t.stop()
        if blog.exists():
            reports = sanitizer_reports(blog.read_text(errors="replace"))
            assert not reports, "\n".join(reports)


def rows(t, store):
    """Every message row the store lists (TSYNC CHANGES 0), live and
    tombstone: {(folder, uidvalidity, uid): (guid, flags, date, size,
    sha256, modseq, expunged, keywords)}."""
    out = {}
    for l in listing(t, U, store):
        f = l.split(" ")
        if f[0] == "M":
            kw = "" if f[10] == "-" else bytes.fromhex(f[10]).decode()
            out[(bytes.fromhex(f[11]).decode(), int(f[1]), int(f[2]))] = \
                (f[3], int(f[4]), f[5], f[6], f[7], int(f[8]), f[9], kw)
    return out


def mbox_modseq(t, store):
    return int(mbox_state(t, U, store).split(" ")[4])


def test_move_back_onto_retained_copy_across_three_stores(tmp_path):
    """s1 → s2, a message expunged on s2, s2 → s3, then s3 → s1 onto the
    copy s1 kept from the first move, which still holds that message live.
    s3 never held the message, but it has its tombstone (copied from s2's,
    store_msg_tombstone), so the move back expunges it on s1, with s3's
    modseq; every other message ends on s1 with s3's UID, flags and modseq,
    and the move switches."""
    t = cluster(tmp_path, mover_extra="retention = 3600\nlease_ms = 2000")
    add_store_s3(t)
    t.serve()
    try:
        assert wait_port(t.ports["sync-s3"])
        fill(t, U, n=12)  # INBOX: UIDs 6, 9, 12; Archive/2026: 1, 4, 7, 10
        assert t.cli("move", U, "--to", "s2", "--wait").returncode == 0
        gone = ("INBOX", 6)
        c = imap_login(t)  # on s2
        assert c.select("INBOX")[0] == "OK"
        assert c.uid("STORE", "6", "+FLAGS", "(\\Deleted)")[0] == "OK"
        assert c.uid("EXPUNGE", "6")[0] == "OK"
        assert c.uid("STORE", "9", "FLAGS", "($OnS2)")[0] == "OK"
        c.logout()
        lmtp_deliver(t, U, msg(1, subject="on s2"), store="s2")
        old = rows(t, "s1")  # the copy s1 keeps: the message live there
        k_gone = [k for k in old if (k[0], k[2]) == gone]
        assert len(k_gone) == 1 and old[k_gone[0]][6] == "0", old
        k_gone = k_gone[0]
        assert rows(t, "s2")[k_gone][6] == "1"

        assert t.cli("move", U, "--to", "s3", "--wait").returncode == 0
        c = imap_login(t)  # on s3
        assert c.select("Archive/2026")[0] == "OK"
        assert c.uid("STORE", "7", "+FLAGS", "($OnS3)")[0] == "OK"
        c.logout()
        lmtp_deliver(t, U, msg(2, subject="on s3"), store="s3")
        assert mbox_state(t, U, "s1").startswith("+OK moved 2 s2")

        p = t.cli("move", U, "--to", "s1", "--wait", check=False)
        assert p.returncode == 0, p.stdout + p.stderr + t.cli("moves").stdout
        assert "reusing the retained copy on s1" in t.log()
        assert home(t, U) == ("s1", 4, "active")
        assert mbox_state(t, U, "s1").startswith("+OK active 4")
        assert mbox_state(t, U, "s3").startswith("+OK moved 4 s1")
        src, dst = rows(t, "s3"), rows(t, "s1")  # s3: the frozen source, kept
        # s3 never held the message, yet lists its expunge.
        assert k_gone in src and src[k_gone][6] == "1", src
        # The expunged message is gone on s1, a tombstone with s3's modseq.
        assert dst[k_gone][6] == "1" and dst[k_gone][5] == src[k_gone][5]
        assert k_gone not in snapshot(t, U, "s1")
        # Every other message: s3's UID, GUID, flags, date, keywords, modseq.
        live = {k: v for k, v in src.items() if v[6] == "0"}
        assert {k: v for k, v in dst.items() if v[6] == "0"} == live
        assert len(live) == 12 - 2 + 2  # fill's expunge and ours, two deliveries
        assert mbox_modseq(t, "s1") == mbox_modseq(t, "s3")
        c = imap_login(t)  # on s1 now
        assert c.select("INBOX")[0] == "OK"
        typ, data = c.uid("SEARCH", "ALL")
        assert typ == "OK" and b"6" not in data[0].split(), data
        c.logout()
        d = t.cli("doctor", check=False)
        assert d.returncode == 0, d.stdout + d.stderr
        check_sanitizers(t)
    finally:
        t.stop()


def test_stale_mover_fenced_between_verify_and_switch(tmp_path):
    """The window the staged-only guard leaves open (docs/move.md "Leases"):
    mover A stalls in a catch-up pass holding an old flag state ($Before) of
    INBOX/6; a client then changes it on the still live source ($Later); A's
    lease lapses, mover B claims the job (a new fencing token), copies
    $Later, fences, verifies, and stops right before its switch (a pause
    point of B's process only). Now A wakes and writes $Before onto the
    staged copy, which verify would no longer see. The store refuses it:
    B's token is above A's. The switch happens and the new home equals the
    frozen source exactly: UIDs, flags, keywords, modseqs."""
    t = cluster(tmp_path, mover_extra="retention = 3600\nlease_ms = 1500")
    pause = tmp_path / "pause"
    serve_with(t, pause_env(tmp_path, ["pause:move.catchup@mover",
                                       "pause:move.pass.flags@mover"]))
    b, blog = None, tmp_path / "mover-b.log"
    pause_b = tmp_path / "pause-b"
    try:
        fill(t, U, n=12)  # INBOX holds UIDs 6, 9 and 12
        job = start_move(t, U, "s2")
        wait_pause(t, pause, job)  # copied; before the catch-up pass
        c = imap_login(t)  # the home is still s1
        assert c.select("INBOX")[0] == "OK"
        assert c.uid("STORE", "6", "FLAGS", "($Before)")[0] == "OK"
        c.logout()
        pause.unlink()
        wait_pause(t, pause, job)  # A holds $Before, about to write it
        a_owner = re.search(r"running as (\S+),", t.log()).group(1)
        c = imap_login(t)  # the source moves on while A sleeps
        assert c.select("INBOX")[0] == "OK"
        assert c.uid("STORE", "6", "FLAGS", "($Later)")[0] == "OK"
        c.logout()
        later = imap_flags(t, 6)
        assert later[0] == ["$Later"], later

        env = {"TERN_FAULT": "pause:move.switch@mover", "TERN_FAULT_PAUSE": str(pause_b)}
        b = start_mover(t, blog, env)
        assert wait_for(pause_b.exists, 60), t.cli("move", "show", str(job)).stdout + \
            blog.read_text()
        show = t.cli("move", "show", str(job)).stdout
        assert job_phase(t, job) == "switch", show
        b_owner = re.search(r"lease:\s+(\S+)", show).group(1)
        assert b_owner != a_owner, show
        assert re.search(rf"token:\s+{job}/2\b", show), show
        assert changes_row(t, "s2", "INBOX", 6)[0:2] == changes_row(t, "s1", "INBOX", 6)[0:2]
        assert mbox_state(t, U, "s2").startswith("+OK staged 2")
        before_a = rows(t, "s2")

        pause.unlink()  # A wakes up with $Before in hand; the copy is staged
        assert wait_for(lambda: "flags on s2 refused: stale token" in t.log(), 30), t.log(3000)
        time.sleep(0.5)  # anything A might still send would be in by now
        # (A's mover may claim the job again now, B's lease having lapsed
        # during its pause: with a new token, from the persisted "switch".)
        assert rows(t, "s2") == before_a

        pause_b.unlink()  # the switch (by B, or by A if it claimed the job again)
        assert wait_for(lambda: job_phase(t, job) == "retention", 60), \
            t.cli("move", "show", str(job)).stdout + blog.read_text() + t.log(3000)
        assert home(t, U) == ("s2", 2, "active")
        assert mbox_state(t, U, "s1").startswith("+OK moved 2 s2")
        assert imap_flags(t, 6) == later
        live = lambda rs: {k: v for k, v in rs.items() if v[6] == "0"}
        src, dst = rows(t, "s1"), rows(t, "s2")
        assert live(src) == live(dst)
        assert mbox_modseq(t, "s1") == mbox_modseq(t, "s2")
        d = t.cli("doctor", check=False)
        assert d.returncode == 0, d.stdout + d.stderr
        check_sanitizers(t)
    finally:
        stop_mover(b)
        t.stop()
        if blog.exists():
            reports = sanitizer_reports(blog.read_text(errors="replace"))
            assert not reports, "\n".join(reports)


def test_reused_mark_survives_a_cli_request_during_provision(tmp_path):
    """The mover marks a move that reuses a retained copy (REUSED) and saves
    it; if an operator's request changed the job row meanwhile, the save's
    compare-and-set fails and the mover takes the row's options in. It must
    keep its own mark: without it an abort purges the retained copy instead
    of giving it back to the earlier move's retention."""
    t = cluster(tmp_path, mover_extra="retention = 3600\nlease_ms = 2000")
    pause = tmp_path / "pause"
    serve_with(t, pause_env(tmp_path, ["pause:move.provision@mover"], once=False))
    try:
        fill(t, U, n=10)
        before = digest(t, U, "s1")
        first = start_move(t, U, "s2")
        wait_pause(t, pause, first)
        pause.unlink()
        assert wait_for(lambda: job_phase(t, first) in ("retention", "done"), 60), t.log(3000)
        assert mbox_state(t, U, "s1").startswith("+OK moved 2 s2")
        back = start_move(t, U, "s1", "--suspend-when-ready")
        wait_pause(t, pause, back)  # the run has read the job row
        # An operator's request lands now (any change of the row will do).
        db = sqlite3.connect(t.data / "directory.db")
        db.execute("UPDATE jobs SET version = version + 1 WHERE id = ?", (back,))
        db.commit()
        db.close()
        pause.unlink()
        assert wait_for(lambda: job_phase(t, back) == "ready", 60), t.log(3000)
        assert "reusing the retained copy on s1" in t.log()
        assert mbox_state(t, U, "s1").startswith("+OK staged 3")
        assert t.cli("move", "abort", str(back)).returncode == 0
        assert wait_for(lambda: job_phase(t, back) == "aborted", 60), t.log(3000)
        # Given back as the first move left it, not purged.
        assert mbox_state(t, U, "s1").startswith("+OK moved 2 s2"), mbox_state(t, U, "s1")
        assert home(t, U) == ("s2", 2, "active")
        assert digest(t, U, "s2") == before
        check_sanitizers(t)
    finally:
        t.stop()
