"""A move keeps every per-message modseq exactly (docs/move.md "What clients
keep"): after a move, a move with changes during its catch-up and final
passes, and a move back onto the retained copy, an IMAP client with
CONDSTORE/QRESYNC sees on the new home exactly what it saw on the old one —
every message's MODSEQ and FLAGS, each folder's UIDVALIDITY, UIDNEXT and
HIGHESTMODSEQ, and the same QRESYNC / CHANGEDSINCE answers. The store's own
change log (TSYNC CHANGES, an independent client) agrees row by row."""
import imaplib
import re

from movekit import check_sanitizers, pause_env, serve_with
from test_imap import ALICE, PW, Raw, lmtp_deliver, msg
from test_move import home, job_phase, start_move, wait_for
from tsync import TSync, hx

from conftest import Tern


def tern(tmp_path, faults=()):
    t = Tern(tmp_path, mover_extra="retention = 3600\nlease_ms = 2000")
    t.setup_users(ALICE, "bob@example.org")
    if faults:
        serve_with(t, pause_env(tmp_path, list(faults)))
    else:
        t.serve()
    return t


def imap(t):
    c = imaplib.IMAP4("127.0.0.1", t.ports["imap"])
    c.login(ALICE, PW)
    return c


def ok(r):
    assert r[0] == "OK", r
    return r


def build(t, store):
    """Folders, deliveries, copies, flag and keyword changes, expunges, a
    renamed and a deleted folder — modseqs spread far apart."""
    for i in range(1, 13):
        lmtp_deliver(t, ALICE, msg(i), store=store)
    c = imap(t)
    for f in ("Work", "Old", "Tmp", "Sent Items"):
        ok(c.create(f'"{f}"'))
    ok(c.select("INBOX"))
    ok(c.copy("1:4", "Work"))
    ok(c.copy("5:6", "Old"))
    ok(c.copy("7", "Tmp"))
    ok(c.copy("8:9", '"Sent Items"'))
    for _ in range(7):  # churn: the mailbox modseq runs ahead of a plain copy
        ok(c.store("1", "+FLAGS.SILENT", "(\\Answered)"))
        ok(c.store("1", "-FLAGS.SILENT", "(\\Answered)"))
    ok(c.store("2", "+FLAGS", "(\\Seen $Label1 work)"))
    ok(c.store("4", "+FLAGS", "(\\Flagged)"))
    ok(c.store("3,6", "+FLAGS", "(\\Deleted)"))
    ok(c.expunge())
    ok(c.select("Work"))
    ok(c.store("2", "+FLAGS", "($Important)"))
    ok(c.store("3", "+FLAGS", "(\\Deleted)"))
    ok(c.expunge())
    ok(c.rename("Tmp", "Projects"))
    ok(c.delete("Old"))
    ok(c.select("INBOX"))
    ok(c.store("5", "+FLAGS", "(\\Seen)"))
    c.logout()


def change(t, store, n):
    """More of the same on the current home (during or between moves)."""
    lmtp_deliver(t, ALICE, msg(100 + n), store=store)
    c = imap(t)
    ok(c.select("INBOX"))
    ok(c.store("1", "+FLAGS", f"($Pass{n})"))
    ok(c.store("2", "-FLAGS", "(\\Seen)"))
    ok(c.store("3", "+FLAGS", "(\\Deleted)"))
    ok(c.expunge())
    ok(c.create(f"New{n}"))
    ok(c.copy("1", f"New{n}"))
    ok(c.select("Work"))
    ok(c.store("1", "+FLAGS", "(\\Seen)"))
    c.logout()


def folders(r):
    names = []
    for ln in r.cmd('l LIST "" "*"'):
        m = re.match(r'\* LIST \([^)]*\) "/" (.*)\r\n', ln)
        if m:
            names.append(m.group(1).strip('"'))
    return sorted(names)


def untagged(lines):
    return [ln for ln in lines if ln.startswith("* ")]


def record(t):
    """What a CONDSTORE/QRESYNC client sees of every folder."""
    r = Raw(t)
    assert any("OK" in ln for ln in r.cmd("e ENABLE QRESYNC"))
    out = {}
    for name in folders(r):
        q = f'"{name}"'
        sel = untagged(r.cmd(f"s SELECT {q} (CONDSTORE)"))
        text = "".join(sel)
        uv = int(re.search(r"UIDVALIDITY (\d+)", text).group(1))
        nxt = int(re.search(r"UIDNEXT (\d+)", text).group(1))
        hms = int(re.search(r"HIGHESTMODSEQ (\d+)", text).group(1))
        f = {
            "select": sorted(sel),
            "fetch": sorted(untagged(r.cmd("f UID FETCH 1:* (MODSEQ FLAGS)"))),
            "status": untagged(r.cmd(f"t STATUS {q} (MESSAGES UIDNEXT UIDVALIDITY "
                                     "HIGHESTMODSEQ)")),
            "changed": sorted(untagged(r.cmd("c UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 "
                                             "VANISHED)"))),
            "changed_half": sorted(untagged(r.cmd(f"h UID FETCH 1:* (FLAGS) (CHANGEDSINCE "
                                                  f"{hms // 2} VANISHED)"))),
        }
        r.cmd("u UNSELECT")
        qr = untagged(r.cmd(f"q SELECT {q} (QRESYNC ({uv} 1 1:{nxt}))"))
        f["qresync"] = sorted(ln for ln in qr if "CLOSED" not in ln)
        r.cmd("u UNSELECT")
        out[name] = f
    r.cmd("z LOGOUT")
    r.close()
    return out


def changes(t, store):
    """The store's change log from 0, through TSYNC: {live folder lines},
    {live message lines}, {(uidvalidity, uid): modseq of its tombstone}."""
    c = TSync(t.ports["sync-" + store])
    lines, end = c.lines(f"CHANGES {hx(ALICE)} 0")
    mb = c.mbox(ALICE)
    c.close()
    assert end.startswith("+OK"), end
    fl = {ln for ln in lines if ln.startswith("F ") and ln.split(" ")[4] == "0"}
    ml = {ln for ln in lines if ln.startswith("M ") and ln.split(" ")[9] == "0"}
    gone = {int(ln.split(" ")[1]) for ln in lines if ln.startswith("F ") and ln.split(" ")[4] == "1"}
    tombs = {(int(f[1]), int(f[2])): int(f[8]) for f in (ln.split(" ") for ln in lines)
             if f[0] == "M" and f[9] == "1" and int(f[1]) not in gone}
    return fl, ml, tombs, int(mb.split(" ")[4])


def assert_same(before, after):
    assert sorted(before) == sorted(after)
    for name in before:
        for k in before[name]:
            assert before[name][k] == after[name][k], (name, k)


def assert_log_same(t, src, dst):
    """Every live folder and message row equal, modseq included; every
    message tombstone (but those of deleted folders: docs/move.md) with the
    same modseq, also of messages expunged before the copy held them; the
    counters equal."""
    fs, ms, ts, cs = changes(t, src)
    fd, md, td, cd = changes(t, dst)
    assert fd == fs
    assert md == ms
    assert ts and td == ts
    assert cd == cs


def move(t, to, job=None):
    job = job or start_move(t, ALICE, to)
    p = t.cli("move", "wait", str(job), check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert wait_for(lambda: home(t, ALICE)[0] == to)
    return job


def test_move_keeps_every_modseq(tmp_path):
    t = tern(tmp_path)
    try:
        build(t, "s1")
        before = record(t)
        assert "Old" not in before and "Projects" in before
        move(t, "s2")
        after = record(t)
        assert_same(before, after)
        assert_log_same(t, "s1", "s2")
        check_sanitizers(t)
    finally:
        t.stop()


def test_changes_during_a_move_and_a_move_back_keep_every_modseq(tmp_path):
    """Changes while the move pauses before its catch-up and before its
    fence reach the new home through the catch-up and the final pass, each
    with its source modseq; then more changes, and a move back that reuses
    the copy retained on s1 (whose rows are stale: flags changed and
    messages expunged since) ends equal to s2 too."""
    pause = tmp_path / "pause"
    t = tern(tmp_path, ["pause:move.catchup@mover", "pause:move.fence@mover"])
    try:
        build(t, "s1")
        job = start_move(t, ALICE, "s2")
        for n in (1, 2):  # before catchup, then before the fence
            assert wait_for(lambda: pause.exists(), 60), job_phase(t, job)
            change(t, "s1", n)
            if n == 2:
                before = record(t)  # the source is still live here
            pause.unlink()
        assert "New1" in before and "New2" in before
        move(t, "s2", job)
        assert_same(before, record(t))
        assert_log_same(t, "s1", "s2")
        assert "pass since" in t.log()

        change(t, "s2", 3)
        before = record(t)
        back = move(t, "s1")
        assert "reusing the retained copy" in t.log()
        assert_same(before, record(t))
        assert_log_same(t, "s2", "s1")
        assert job_phase(t, back) in ("retention", "done")
        check_sanitizers(t)
    finally:
        t.stop()
