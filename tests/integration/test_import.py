"""Imports (issue 6): mbox files in each quoting style, a Maildir++ tree and a
real Dovecot IMAP server on loopback as foreign sources, through the real
binary (`tern import`, the mover role, the stores). An independent client
(imaplib) reads tern's IMAP side and the source and compares folders,
messages and flags. The Q190423 scenario: mail that reaches the source
during --watch and after `complete` arrives exactly once and the report
counts the stragglers. kill -9 of the mover during an import, and a crash
between an append and its record: nothing twice, nothing missing."""
import imaplib
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import SLOW, TERN_BIN, Tern

USER = "alice@example.org"
PW = "secret"


def wait_for(pred, timeout=30.0, step=0.1):
    deadline = time.time() + timeout * SLOW
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return None


@pytest.fixture
def t(tmp_path):
    t = Tern(tmp_path, mover_extra="retention = 0\nlease_ms = 2000")
    t.cli("domain", "add", "example.org")
    t.cli("user", "add", USER, "--password", PW, "--store", "s1")
    t.serve()
    yield t
    t.stop()


def start_import(t, source, *extra, user=USER, check=True, env=None):
    p = t.cli("import", user, "--from", source, *extra, check=check, env=env)
    if not check:
        return p
    m = re.search(r"import job (\d+)", p.stdout)
    assert m, p.stdout + p.stderr
    return int(m.group(1))


def report(t, job):
    return t.cli("import", "report", str(job)).stdout


def phase(t, job):
    return re.search(r"^phase: (\S+)", report(t, job), re.M).group(1)


def wait_phase(t, job, want, timeout=60):
    got = wait_for(lambda: phase(t, job) in want, timeout)
    assert got, f"job {job} in {phase(t, job)}, wanted {want}:\n{report(t, job)}\n{t.log(3000)}"


def report_row(t, job, folder):
    """(source, bytes, imported, already, dups, stragglers, failed) of a folder."""
    for line in report(t, job).splitlines():
        if line.startswith(folder + " ") or line.split("  ")[0].strip() == folder:
            nums = re.findall(r"\s(\d+)", line[len(folder):])
            if len(nums) >= 7:
                return tuple(int(x) for x in nums[:7])
    raise AssertionError(f"no row for {folder}:\n{report(t, job)}")


def tern_imap(t, user=USER, pw=PW):
    c = imaplib.IMAP4("127.0.0.1", t.ports["imap"])
    c.login(user, pw)
    return c


def inbox_exists(t):
    """The number of messages in the user's INBOX in tern (0 before the
    mailbox exists)."""
    try:
        c = tern_imap(t)
    except (imaplib.IMAP4.error, OSError):
        return 0
    typ, data = c.select("INBOX", readonly=True)
    c.logout()
    return int(data[0]) if typ == "OK" else 0


def folder_names(c):
    typ, data = c.list()
    assert typ == "OK"
    names = []
    for item in data:
        if isinstance(item, tuple):  # a literal name
            names.append(item[1].decode())
            continue
        m = re.match(rb'\((.*?)\) (?:"(?:\\.|[^"])*"|NIL) (.*)$', item)
        name = m.group(2).decode()
        if name.startswith('"'):
            name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        names.append(name)
    return names


def quote(name):
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def epoch(internaldate):
    return time.mktime(imaplib.Internaldate2tuple(b'INTERNALDATE "' + internaldate.encode() + b'"'))


def messages(c, folder):
    """{uid: (flags without \\Recent, body, internaldate)} of a folder."""
    typ, data = c.select(quote(folder), readonly=True)
    assert typ == "OK", folder
    if int(data[0]) == 0:
        return {}
    typ, data = c.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE BODY.PEEK[])")
    assert typ == "OK"
    out = {}
    for item in data:
        if not isinstance(item, tuple):
            continue
        meta = item[0].decode()
        uid = int(re.search(r"UID (\d+)", meta).group(1))
        flags = set(re.search(r"FLAGS \(([^)]*)\)", meta).group(1).split()) - {"\\Recent"}
        date = re.search(r'INTERNALDATE "([^"]+)"', meta).group(1)
        out[uid] = (flags, item[1], date)
    return out


def subjects(msgs):
    res = []
    for _, (flags, body, _) in sorted(msgs.items()):
        m = re.search(rb"^Subject: (.*?)\r$", body, re.M)
        res.append(m.group(1).decode() if m else None)
    return res


def old(path):
    """An mbox counts as written once it is a few seconds old."""
    past = time.time() - 60
    os.utime(path, (past, past))


# ---- mbox -------------------------------------------------------------------

MBOXRD = (b"From alice@example.org Sat Jan  3 01:05:34 1996\n"
          b"Subject: rd one\nStatus: RO\nX-Status: AF\nX-Keywords: $Label1 work\n\n"
          b">From the start\n>>From twice quoted\nend\n\n"
          b"From bob@example.org Sun Jan  4 02:00:00 1996\n"
          b"Subject: rd two\n\nplain\n\n")
MBOXO = (b"From alice@example.org Sat Jan  3 01:05:34 1996\n"
         b"Subject: o one\nStatus: O\n\n>From quoted\nend\n\n")
MBOXCL2 = (b"From alice@example.org Sat Jan  3 01:05:34 1996\n"
           b"Subject: cl2 one\nContent-Length: 29\n\n"
           b"From unquoted in the body\nx\n\n"
           b"From bob@example.org Sun Jan  4 02:00:00 1996\n"
           b"Subject: cl2 two\nContent-Length: 5\n\nhey!\n\n")


def write_mbox_tree(root):
    (root / "Archive.sbd").mkdir(parents=True)
    (root / "inbox").write_bytes(MBOXRD)
    (root / "Old O").write_bytes(MBOXO)
    (root / "Archive.sbd" / "2019").write_bytes(MBOXCL2)
    (root / "Archive").write_bytes(b"")
    (root / "Archive.msf").write_bytes(b"// thunderbird index, not a folder")
    for p in [root / "inbox", root / "Old O", root / "Archive.sbd" / "2019", root / "Archive"]:
        old(p)


def test_mbox_each_quoting_style_and_rerun(t, tmp_path):
    root = tmp_path / "mail"
    write_mbox_tree(root)
    job = start_import(t, f"mbox:{root}", "--wait", "--sweep", "0")
    wait_phase(t, job, ("done",))
    c = tern_imap(t)
    names = folder_names(c)
    for want in ("INBOX", "Old O", "Archive", "Archive/2019"):
        assert want in names, names
    assert "Archive.msf" not in names
    inbox = messages(c, "INBOX")
    assert subjects(inbox)[-2:] == ["rd one", "rd two"]
    one = list(inbox.values())[-2]
    assert {"\\Seen", "\\Answered", "\\Flagged", "$Label1", "work"} <= one[0]
    # mboxrd: one '>' less on each quoted From_ line; CRLF line endings.
    assert b"\r\nFrom the start\r\n>From twice quoted\r\n" in one[1]
    assert one[2].startswith("03-Jan-1996 01:05:34")
    o = list(messages(c, "Old O").values())
    assert b"\r\nFrom quoted\r\n" in o[0][1] and "\\Seen" not in o[0][0]
    cl2 = messages(c, "Archive/2019")
    assert subjects(cl2) == ["cl2 one", "cl2 two"]
    assert b"\r\nFrom unquoted in the body\r\n" in list(cl2.values())[0][1]
    assert messages(c, "Archive") == {}
    c.logout()
    assert report_row(t, job, "INBOX")[:3] == (2, report_row(t, job, "INBOX")[1], 2)
    assert "import" in t.cli("moves").stdout

    # A re-run imports nothing: everything is already there.
    before = {f: messages(tern_imap(t), f) for f in ("INBOX", "Old O", "Archive/2019")}
    job2 = start_import(t, f"mbox:{root}", "--wait", "--sweep", "0")
    wait_phase(t, job2, ("done",))
    row = report_row(t, job2, "INBOX")
    assert row[2] == 0 and row[3] == 2, report(t, job2)
    assert report_row(t, job2, "Archive/2019")[2:4] == (0, 2)
    after = {f: messages(tern_imap(t), f) for f in ("INBOX", "Old O", "Archive/2019")}
    assert after == before


def test_import_cli_errors(t, tmp_path):
    box = tmp_path / "box"
    box.write_bytes(MBOXRD)
    cases = [
        (["import", USER, "--from", "mbox:" + str(box), "--password", "x"], 2, "never given"),
        (["import", USER], 2, "--from"),
        (["import", USER, "--from", "pop3://x@y"], 1, "SOURCE is"),
        (["import", USER, "--from", "mbox:/nonexistent/x"], 1, "cannot be read"),
        (["import", "nobody@example.org", "--from", "mbox:" + str(box)], 1, "no such user"),
        (["import", USER, "--from", "imaps://u@127.0.0.1:1", "--ca-file", "/nonexistent.pem"], 1,
         "--ca-file"),
        (["import", USER, "--from", "mbox:" + str(box), "--ca-file", "/etc/hostname"], 2,
         "imaps"),
        (["import", USER, "--from", "imaps://u@127.0.0.1:1", "--ca-file", "/etc/hostname"], 1,
         "no PEM certificate"),
        (["import", USER, "--from", "imaps://u@127.0.0.1:1"], 2, "TERN_IMPORT_PASSWORD"),
        (["import", USER, "--from", "imap://u@127.0.0.1:1"], 2, "TERN_IMPORT_PASSWORD"),
        (["import", USER, "--from", "imap://127.0.0.1:1"], 1, "user"),
        (["import", USER, "--from", "mbox:" + str(box), "--poll", "0"], 2, "--poll"),
        (["import", "report", "999"], 1, "no such import"),
        (["import", "complete", "x"], 2, "not a job id"),
    ]
    env = t.env()
    env.pop("TERN_IMPORT_PASSWORD", None)
    for args, rc, text in cases:
        p = t.cli(*args, check=False, env=env)
        assert p.returncode == rc, (args, p.returncode, p.stderr)
        assert text in p.stderr, (args, p.stderr)
    assert "no jobs" in t.cli("moves").stdout
    # --create makes the user (and a relative path is the caller's).
    p = subprocess.run([TERN_BIN, "--data", str(t.data), "--config", str(t.config), "import",
                        "new@example.org", "--from", "mbox:box", "--create", "--wait",
                        "--sweep", "0"], cwd=tmp_path, capture_output=True, text=True,
                       env=t.env(), timeout=60 * SLOW)
    assert p.returncode == 0, p.stderr
    assert "created" in p.stdout
    assert "home:" in t.cli("user", "show", "new@example.org").stdout
    # One live job per user.
    job = start_import(t, f"mbox:{box}", "--watch")
    p = t.cli("import", USER, "--from", f"mbox:{box}", check=False)
    assert p.returncode == 1 and "in progress" in p.stderr
    t.cli("import", "complete", str(job))
    wait_phase(t, job, ("sweep",))
    p = t.cli("import", "complete", str(job), check=False)
    assert p.returncode == 1 and "past its cutover" in p.stderr


# ---- Maildir ------------------------------------------------------------------

def write_maildir(root):
    for d in ("", ".Sent Items", ".Work.2024", ".Entw&APw-rfe", ".a..b"):
        for sub in ("cur", "new", "tmp"):
            (root / d / sub).mkdir(parents=True, exist_ok=True)
    (root / "dovecot-keywords").write_text("0 $Label1\n1 work\n")
    (root / "cur" / "1700000001.M1P1.host,S=40:2,SRab").write_bytes(
        b"Subject: seen replied\n\nkeywords a and b\n")
    (root / "cur" / "1700000002.M2P1.host:2,F").write_bytes(b"Subject: flagged\n\nbody\n")
    (root / "new" / "1700000003.M3P1.host").write_bytes(b"Subject: new one\n\nbody\r\n")
    (root / ".Sent Items" / "cur" / "1700000004.M4P1.host:2,S").write_bytes(
        b"Subject: sent\n\nbody\n")
    (root / ".Work.2024" / "cur" / "1700000005.M5P1.host:2,T").write_bytes(
        b"Subject: trashed\n\nbody\n")
    (root / ".Entw&APw-rfe" / "new" / "1700000006.M6P1.host").write_bytes(
        b"Subject: draft \xc3\xa9\n\n8-bit body \xff\n")
    (root / ".a..b" / "new" / "1700000007.M7P1.host").write_bytes(b"Subject: lost?\n\nx\n")
    os.utime(root / "cur" / "1700000001.M1P1.host,S=40:2,SRab", (1700000001, 1700000001))


def test_maildir_tree_flags_keywords_and_rerun(t, tmp_path):
    root = tmp_path / "Maildir"
    write_maildir(root)
    job = start_import(t, f"maildir:{root}", "--wait", "--sweep", "0")
    wait_phase(t, job, ("done",))
    c = tern_imap(t)
    names = folder_names(c)
    for want in ("INBOX", "Sent Items", "Work/2024", "Entw&APw-rfe"):
        assert want in names, names
    inbox = messages(c, "INBOX")
    by_subj = {subjects({u: m})[0]: m for u, m in inbox.items()}
    assert by_subj["seen replied"][0] == {"\\Seen", "\\Answered", "$Label1", "work"}
    assert by_subj["seen replied"][2].startswith("14-Nov-2023")
    assert by_subj["flagged"][0] == {"\\Flagged"}
    assert by_subj["new one"][0] == set()
    assert by_subj["new one"][1] == b"Subject: new one\r\n\r\nbody\r\n"
    assert list(messages(c, "Work/2024").values())[0][0] == {"\\Deleted"}
    draft = list(messages(c, "Entw&APw-rfe").values())[0]
    assert b"8-bit body \xff\r\n" in draft[1]
    c.logout()
    rep = report(t, job)
    # The folder tern cannot hold is in the report with its reason.
    assert ".a..b" in rep and "empty hierarchy level" in rep, rep
    assert report_row(t, job, "INBOX")[:3] == (3, report_row(t, job, "INBOX")[1], 3)
    job2 = start_import(t, f"maildir:{root}", "--wait", "--sweep", "0")
    wait_phase(t, job2, ("done",))
    assert report_row(t, job2, "INBOX")[2:4] == (0, 3)
    c = tern_imap(t)
    assert len(messages(c, "INBOX")) == 3
    c.logout()


# ---- crashes --------------------------------------------------------------------

def big_mbox(path, n, start=0):
    with open(path, "ab") as f:
        for i in range(start, start + n):
            f.write(b"From x@example.org Sat Jan  3 01:05:34 2026\n"
                    b"Subject: bulk %d\nX-Seq: %d\n\n" % (i, i) + b"line of text\n" * 40 + b"\n")
    old(path)


def seqs(t, folder="INBOX"):
    c = tern_imap(t)
    typ, data = c.select(quote(folder), readonly=True)
    if int(data[0]) == 0:
        c.logout()
        return []
    typ, data = c.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (X-SEQ)])")
    c.logout()
    out = []
    for item in data:
        if isinstance(item, tuple):
            m = re.search(rb"X-Seq: (\d+)", item[1])
            out.append(int(m.group(1)))
    return out


def test_kill9_mover_during_import_then_resume(tmp_path):
    t = Tern(tmp_path, top_extra="restart_backoff_max = 200",
             mover_extra="retention = 0\nlease_ms = 2000")
    t.cli("domain", "add", "example.org")
    t.cli("user", "add", USER, "--password", PW, "--store", "s1")
    t.serve()
    try:
        n = 4000
        box = tmp_path / "big.mbox"
        big_mbox(box, n)
        job = start_import(t, f"mbox:{box}", "--sweep", "0")
        kills = 0
        at = []
        for _ in range(3):
            # The destination's count, not the job's progress: that is saved
            # once a second, and a few hundred messages take less. Each
            # restarted mover has to get on before it is killed again.
            last = at[-1] if at else 0
            assert wait_for(lambda: inbox_exists(t) > last + 300 or
                            phase(t, job) == "done", 60, step=0.02)
            if phase(t, job) == "done":
                break
            os.kill(t.role_pid("mover"), signal.SIGKILL)
            kills += 1
            at.append(inbox_exists(t))
            time.sleep(0.3)
        wait_phase(t, job, ("done",), 120)
        got = seqs(t)
        assert len(got) == n, (len(got), kills)
        assert sorted(got) == list(range(n))
        row = report_row(t, job, "INBOX")
        assert row[0] == n and row[2] + row[3] == n and row[2] >= 1, report(t, job)
        print(f"kill -9 of the mover {kills} times during the import, with {at} stored")
        assert kills >= 1 and at[0] < n, at
    finally:
        t.stop()


@pytest.mark.parametrize("point", ["import.appended", "import.recorded"])
def test_crash_between_append_and_record(tmp_path, point):
    """The mover dies (simulated kill -9) right after the store committed a
    batch and before the batch's records were written (import.appended);
    the restarted mover recognises the messages by their GUIDs: nothing
    twice. Or right after the batch's records were written and before the
    checkpoint that covers them was saved (import.recorded): the restarted
    mover reads them again and finds them recorded."""
    t = Tern(tmp_path, top_extra="restart_backoff_max = 200",
             mover_extra="retention = 0\nlease_ms = 2000")
    t.cli("domain", "add", "example.org")
    t.cli("user", "add", USER, "--password", PW, "--store", "s1")
    once = tmp_path / "fault-once"
    os.environ["TERN_FAULT"] = f"crash:{point}"
    os.environ["TERN_FAULT_ONCE"] = str(once)
    try:
        t.serve()
    finally:
        del os.environ["TERN_FAULT"]
        del os.environ["TERN_FAULT_ONCE"]
    try:
        box = tmp_path / "box.mbox"
        big_mbox(box, 300)
        job = start_import(t, f"mbox:{box}", "--sweep", "0")
        wait_phase(t, job, ("done",), 90)
        assert once.exists(), "the fault did not fire"
        got = seqs(t)
        assert sorted(got) == list(range(300)), len(got)
        assert report_row(t, job, "INBOX")[2] == 300, report(t, job)
    finally:
        t.stop()


# ---- Q190423: watch, complete, straggler sweep -------------------------------------

def test_q190423_watch_complete_and_straggler_sweep(t, tmp_path):
    """Mail that reaches the old system during the migration and after the
    cutover arrives exactly once, and the report counts the stragglers."""
    box = tmp_path / "box.mbox"
    big_mbox(box, 5)
    md = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True)
    job = start_import(t, f"mbox:{box}", "--watch", "--poll", "1s", "--sweep", "8s", "--wait")
    assert phase(t, job) == "watch"
    assert sorted(seqs(t)) == list(range(5))
    # New mail at the old system while watching.
    big_mbox(box, 3, start=5)
    assert wait_for(lambda: len(seqs(t)) == 8, 20), seqs(t)
    t.cli("import", "complete", str(job))
    wait_phase(t, job, ("sweep",), 20)
    # Stragglers: mail that still reaches the old system after the cutover.
    big_mbox(box, 2, start=8)
    assert wait_for(lambda: len(seqs(t)) == 10, 20), seqs(t)
    wait_phase(t, job, ("done",), 30)
    assert sorted(seqs(t)) == list(range(10))
    row = report_row(t, job, "INBOX")
    assert row[0] == 10 and row[2] == 10 and row[5] == 2, report(t, job)
    assert "straggler sweep ended" in report(t, job)
    # After the sweep nothing is imported any more (the job is done).
    big_mbox(box, 1, start=10)
    time.sleep(3)
    assert len(seqs(t)) == 10


def test_watch_maildir_picks_up_new_files(t, tmp_path):
    md = tmp_path / "Maildir"
    for d in ("", ".Lists"):
        for sub in ("cur", "new", "tmp"):
            (md / d / sub).mkdir(parents=True)
    (md / "new" / "1.a.h").write_bytes(b"Subject: first\nX-Seq: 0\n\nx\n")
    job = start_import(t, f"maildir:{md}", "--watch", "--poll", "1s", "--sweep", "3s", "--wait")
    (md / "new" / "2.b.h").write_bytes(b"Subject: second\nX-Seq: 1\n\nx\n")
    (md / ".Lists" / "new" / "3.c.h").write_bytes(b"Subject: list\nX-Seq: 2\n\nx\n")
    # A client reads the first: it moves to cur/ with new flags; still one.
    os.rename(md / "new" / "1.a.h", md / "cur" / "1.a.h:2,S")
    assert wait_for(lambda: len(seqs(t)) == 2 and seqs(t, "Lists") == [2], 20)
    t.cli("import", "complete", str(job))
    (md / "new" / "4.d.h").write_bytes(b"Subject: late\nX-Seq: 3\n\nx\n")
    wait_phase(t, job, ("done",), 30)
    assert sorted(seqs(t)) == [0, 1, 3]
    assert report_row(t, job, "INBOX")[5] in (0, 1)  # before or after the cutover pass


# ---- a real Dovecot IMAP server -------------------------------------------------------

from dovecotkit import Dovecot  # noqa: E402  (a real Dovecot on loopback)


@pytest.fixture
def dovecot():
    d = Dovecot()
    yield d
    d.stop()


SOURCE_FOLDERS = ["Sent Items", "Entw&APw-rfe", "Work", "Work.2024", 'we\\ird "q"', "Empty"]


def fill_source(dc):
    c = dc.client()
    for f in SOURCE_FOLDERS:
        assert c.create(quote(f))[0] == "OK", f
    date = imaplib.Time2Internaldate(time.mktime((2020, 5, 17, 10, 30, 0, 0, 0, -1)))
    msgs = [
        ("INBOX", r"(\Seen $Label1 work)", b"Subject: hello\r\nFrom: a@b\r\n\r\nhi\r\n"),
        ("INBOX", r"(\Answered \Flagged)", b"Subject: 8bit \xc3\xa9\r\n\r\nr\xc3\xa9sum\xc3\xa9 \xff\r\n"),
        ("INBOX", None, b"no header at all, just text\r\nand more\r\n"),
        ("INBOX", r"(\Draft)", b"Subject: bare lf\n\nline one\nline two\n"),
        ("INBOX", r"(\Deleted \Seen)", b"Subject: deleted but not expunged\r\n\r\nx\r\n"),
        ("Sent Items", r"(\Seen)", b"Subject: sent\r\n\r\nbody\r\n"),
        ("Entw&APw-rfe", r"(\Draft $Forwarded)", b"Subject: draft\r\n\r\nbody\r\n"),
        ("Work.2024", r"(\Flagged)", b"Subject: w1\r\n\r\nbody\r\n"),
        ("Work.2024", r"()", b"Subject: w2\r\n\r\n" + b"long line " * 2000 + b"\r\n"),
        ('we\\ird "q"', r"(\Seen)", b"Subject: odd\r\n\r\nbody\r\n"),
    ]
    for folder, flags, body in msgs:
        typ, _ = c.append(quote(folder), flags, date, body)
        assert typ == "OK", (folder, body)
    # A gap in the UIDs: something expunged at the source.
    c.select("INBOX")
    c.uid("STORE", "5", "+FLAGS", r"(\Deleted)")
    c.append("INBOX", r"(\Seen)", date, b"Subject: after the gap\r\n\r\nx\r\n")
    c.expunge()
    c.logout()


def compare(dc, t, folders=None):
    """Every source folder is in tern with the same UIDVALIDITY, and every
    message with the same UID, flags, internal date and octets (CRLF)."""
    src = dc.client()
    dst = tern_imap(t)
    names = [n.replace(".", "/") for n in folder_names(src)]
    tern_names = folder_names(dst)
    for n in names:
        assert n in tern_names, (n, tern_names)
    total = 0
    for sname in folder_names(src):
        tname = sname.replace(".", "/")
        if folders is not None and tname not in folders:
            continue
        s = messages(src, sname)
        uv_s = src.response("UIDVALIDITY")[1][0]
        d = messages(dst, tname)
        uv_d = dst.response("UIDVALIDITY")[1][0]
        assert uv_s == uv_d, (sname, uv_s, uv_d)
        assert sorted(s) == sorted(d), (sname, sorted(s), sorted(d))
        for uid in s:
            sf, sb, sd = s[uid]
            df, db, dd = d[uid]
            assert sf == df, (sname, uid, sf, df)
            assert epoch(sd) == epoch(dd), (sname, uid, sd, dd)
            assert sb.replace(b"\r\n", b"\n") == db.replace(b"\r\n", b"\n"), (sname, uid)
            assert b"\n" not in db.replace(b"\r\n", b""), (sname, uid)
        total += len(s)
    src.logout()
    dst.logout()
    return total


def test_imap_source_everything_arrives(t, dovecot, tmp_path):
    fill_source(dovecot)
    pw = tmp_path / "pw"
    pw.write_text("oldpass\n")
    src = f"imap://bob@127.0.0.1:{dovecot.port}"
    job = start_import(t, src, "--password-file", str(pw), "--wait", "--sweep", "0")
    wait_phase(t, job, ("done",))
    assert compare(dovecot, t) == 10
    rep = report(t, job)
    assert "kept" in rep
    assert report_row(t, job, "INBOX")[:3][::2] == (5, 5), rep
    # The password copy is gone once the job is done.
    assert not list((t.data / "imports").glob("*.password"))
    # A re-run (password from the environment) imports nothing.
    env = t.env()
    env["TERN_IMPORT_PASSWORD"] = "oldpass"
    job2 = start_import(t, src, "--wait", "--sweep", "0", env=env)
    wait_phase(t, job2, ("done",))
    assert report_row(t, job2, "INBOX")[2:4] == (0, 5), report(t, job2)
    assert compare(dovecot, t) == 10


def test_imap_wrong_password_waits_with_a_reason(t, dovecot, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("wrong\n")
    job = start_import(t, f"imap://bob@127.0.0.1:{dovecot.port}", "--password-file", str(pw))
    assert wait_for(lambda: "refused" in t.cli("moves").stdout, 20), t.cli("moves").stdout
    assert phase(t, job) in ("scan", "queued")


def test_q190423_imap_watch_and_stragglers(t, dovecot, tmp_path):
    fill_source(dovecot)
    pw = tmp_path / "pw"
    pw.write_text("oldpass")
    job = start_import(t, f"imap://bob@127.0.0.1:{dovecot.port}", "--password-file", str(pw),
                       "--watch", "--poll", "1s", "--sweep", "6s", "--wait")
    assert phase(t, job) == "watch"
    c = dovecot.client()
    c.append("INBOX", None, None, b"Subject: during watch\r\n\r\nx\r\n")
    c.append(quote("Sent Items"), r"(\Seen)", None, b"Subject: sent during watch\r\n\r\nx\r\n")
    # The user still reads mail at the old server: flags follow (CONDSTORE).
    c.select("INBOX")
    c.uid("STORE", "1", "+FLAGS", r"(\Flagged urgent)")
    c.uid("STORE", "2", "-FLAGS", r"(\Answered)")
    c.logout()
    assert wait_for(lambda: "during watch" in subjects(messages(tern_imap(t), "INBOX")), 20)
    assert wait_for(lambda: {"\\Flagged", "urgent"} <= messages(tern_imap(t), "INBOX")[1][0] and
                    "\\Answered" not in messages(tern_imap(t), "INBOX")[2][0], 20)
    t.cli("import", "complete", str(job))
    wait_phase(t, job, ("sweep",), 20)
    c = dovecot.client()
    c.append("INBOX", r"(\Flagged)", None, b"Subject: straggler\r\n\r\nlate\r\n")
    c.logout()
    wait_phase(t, job, ("done",), 40)
    assert compare(dovecot, t) == 13
    inbox = subjects(messages(tern_imap(t), "INBOX"))
    assert inbox.count("straggler") == 1 and inbox.count("during watch") == 1
    row = report_row(t, job, "INBOX")
    assert row[5] == 1 and row[2] == 7, report(t, job)
    assert report_row(t, job, "Sent Items")[5] == 0
    assert "flag changes at the source carried over before the cutover: 2" in report(t, job)


def test_imap_uidvalidity_change_falls_back_to_content(t, dovecot, tmp_path):
    """The source renumbers a folder (a new UIDVALIDITY, the same mail): a
    re-run links what is there by content and imports only what is new."""
    c = dovecot.client()
    c.create("Work")
    for i in range(3):
        c.append("Work", r"(\Seen)", None, b"Subject: w%d\r\n\r\nsame body %d\r\n" % (i, i))
    c.logout()
    pw = tmp_path / "pw"
    pw.write_text("oldpass")
    src = f"imap://bob@127.0.0.1:{dovecot.port}"
    job = start_import(t, src, "--password-file", str(pw), "--wait", "--sweep", "0")
    wait_phase(t, job, ("done",))
    assert subjects(messages(tern_imap(t), "Work")) == ["w0", "w1", "w2"]
    # Delete and recreate the folder at the source: new UIDVALIDITY.
    c = dovecot.client()
    assert c.delete("Work")[0] == "OK"
    c.create("Work")
    for i in (0, 1, 2, 2, 3):  # w2 twice now: the folder gets two copies
        c.append("Work", r"(\Seen)", None, b"Subject: w%d\r\n\r\nsame body %d\r\n" % (i, i))
    c.logout()
    job2 = start_import(t, src, "--password-file", str(pw), "--wait", "--sweep", "0")
    wait_phase(t, job2, ("done",))
    got = subjects(messages(tern_imap(t), "Work"))
    assert sorted(got) == ["w0", "w1", "w2", "w2", "w3"], got
    row = report_row(t, job2, "Work")
    assert row[2] == 2 and row[4] == 3, report(t, job2)  # imported w2 (second copy), w3; 3 dups
    assert "another UIDVALIDITY" in report(t, job2)


def test_imap_too_big_is_reported_not_imported(tmp_path):
    t = Tern(tmp_path, lmtp_extra="max_message_size = 100000",
             mover_extra="retention = 0\nlease_ms = 2000")
    t.cli("domain", "add", "example.org")
    t.cli("user", "add", USER, "--password", PW, "--store", "s1")
    t.serve()
    d = Dovecot()
    try:
        c = d.client()
        c.append("INBOX", None, None, b"Subject: small\r\n\r\nok\r\n")
        c.append("INBOX", None, None, b"Subject: big\r\n\r\n" + b"x" * 200000 + b"\r\n")
        c.append("INBOX", None, None, b"Subject: after\r\n\r\nok\r\n")
        c.logout()
        pw = tmp_path / "pw"
        pw.write_text("oldpass")
        job = start_import(t, f"imap://bob@127.0.0.1:{d.port}", "--password-file", str(pw),
                           "--wait", "--sweep", "0")
        wait_phase(t, job, ("done",))
        assert subjects(messages(tern_imap(t), "INBOX")) == ["small", "after"]
        rep = report(t, job)
        row = report_row(t, job, "INBOX")
        assert row[0] == 3 and row[2] == 2 and row[6] == 1, rep
        assert "UID 2: message over the size limit" in rep, rep
    finally:
        d.stop()
        t.stop()


# ---- imaps ------------------------------------------------------------------------------

def test_imaps_source_with_ca_file(t, tmp_path):
    """imaps:// against a Dovecot that requires TLS: with --ca-file (its
    self-signed certificate) everything arrives; without it the system's CAs
    do not know the certificate and nothing is imported, with a clear
    reason."""
    d = Dovecot(tls=True, cert_host="localhost")
    try:
        fill_source(d)
        pw = tmp_path / "pw"
        pw.write_text("oldpass\n")
        src = f"imaps://bob@localhost:{d.port}"
        # Not trusted (into another user): the job waits with the certificate
        # error and imports nothing.
        other = "carol@example.org"
        t.cli("user", "add", other, "--password", PW, "--store", "s1")
        bad = start_import(t, src, "--password-file", str(pw), "--sweep", "0", user=other)
        assert wait_for(lambda: "certificate verify failed" in t.cli("moves").stdout, 30), \
            t.cli("moves").stdout
        assert "self-signed certificate" in t.cli("moves").stdout, t.cli("moves").stdout
        # The CLI checks --ca-file at once.
        p = t.cli("import", USER, "--from", src, "--password-file", str(pw), "--ca-file",
                  str(tmp_path / "nope.pem"), check=False)
        assert p.returncode == 1 and "--ca-file" in p.stderr, p.stderr
        p = t.cli("import", USER, "--from", f"imap://bob@localhost:{d.port}", "--password-file",
                  str(pw), "--ca-file", d.ca, check=False)
        assert p.returncode == 2 and "imaps" in p.stderr, p.stderr
        # Trusted: everything arrives, checked with IMAP4_SSL at the source.
        job = start_import(t, src, "--password-file", str(pw), "--ca-file", d.ca, "--wait",
                           "--sweep", "0")
        wait_phase(t, job, ("done",))
        assert compare(d, t) == 10
        assert "kept" in report(t, job)
        assert phase(t, bad) in ("scan", "queued")
        rep = report(t, bad)
        assert "certificate verify failed" in rep and "\nINBOX " not in rep, rep
    finally:
        d.stop()


def test_imaps_certificate_for_another_host_fails(t, tmp_path):
    d = Dovecot(tls=True, cert_host="other.example")
    try:
        d.client().logout()  # the server itself works
        pw = tmp_path / "pw"
        pw.write_text("oldpass")
        job = start_import(t, f"imaps://bob@localhost:{d.port}", "--password-file", str(pw),
                           "--ca-file", d.ca, "--sweep", "0")
        assert wait_for(lambda: "hostname mismatch" in t.cli("moves").stdout, 30), \
            t.cli("moves").stdout
        assert "not for localhost" in t.cli("moves").stdout
        assert phase(t, job) in ("scan", "queued")
    finally:
        d.stop()


# ---- source UIDs from Maildir and mbox ----------------------------------------------------

def uids_note(t, job, folder):
    """The report's UIDS column of a folder."""
    for line in report(t, job).splitlines():
        if line.startswith(folder + " "):
            m = re.match(r"\s*(?:\d+\s+){7}(.*)$", line[len(folder):])
            if m:
                return m.group(1).strip()
    raise AssertionError(f"no row for {folder}:\n{report(t, job)}")


def uid_status(c, folder):
    typ, data = c.status(quote(folder), "(UIDVALIDITY UIDNEXT)")
    assert typ == "OK", data
    uv = int(re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1))
    nx = int(re.search(rb"UIDNEXT (\d+)", data[0]).group(1))
    return uv, nx


def test_maildir_made_by_dovecot_keeps_its_uids(t, dovecot, tmp_path):
    """A Maildir++ tree written by a real Dovecot (APPENDs, a UID gap from an
    expunge), imported as maildir:PATH: every folder has Dovecot's
    UIDVALIDITY and every message its UID, flags, date and octets; imaplib
    against both servers shows it. A later message Dovecot has not given a
    UID yet (not in dovecot-uidlist) gets a new one, and the report says so."""
    fill_source(dovecot)
    c = dovecot.client()
    for name in folder_names(c):  # Dovecot has seen every folder (uidlists written)
        c.status(quote(name), "(UIDNEXT)")
    c.logout()
    root = os.path.join(dovecot.dir, "mail", "bob", "Maildir")
    head = open(os.path.join(root, "dovecot-uidlist")).readline()
    assert re.match(r"3 V\d+ N\d+ G[0-9a-f]+", head), head  # the real format
    job = start_import(t, f"maildir:{root}", "--wait", "--sweep", "0")
    wait_phase(t, job, ("done",))
    assert compare(dovecot, t) == 10
    rep = report(t, job)
    assert uids_note(t, job, "INBOX") == "kept", rep
    assert uids_note(t, job, "Work/2024") == "kept", rep
    # The UID gap (5 expunged) is kept too, and UIDNEXT follows Dovecot's.
    c = dovecot.client()
    src_uv, src_next = uid_status(c, "INBOX")
    c.logout()
    d = tern_imap(t)
    assert uid_status(d, "INBOX") == (src_uv, src_next)
    assert 5 not in messages(d, "INBOX") and 6 in messages(d, "INBOX")
    d.logout()


def test_maildir_without_or_with_a_bad_uidlist_gets_new_uids(t, tmp_path):
    root = tmp_path / "Maildir"
    for d in ("", ".NoList", ".Bad", ".Good"):
        for sub in ("cur", "new", "tmp"):
            (root / d / sub).mkdir(parents=True)
    for d, names in (("", ["1.a.h", "2.b.h"]), (".NoList", ["3.c.h"]), (".Bad", ["4.d.h", "5.e.h"]),
                     (".Good", ["6.f.h,S=20", "7.g.h", "8.h.h"])):
        for i, n in enumerate(names):
            (root / d / "cur" / (n + ":2,S")).write_bytes(b"Subject: %s\n\nx %d\n" % (n.encode(), i))
    (root / "dovecot-uidlist").write_text("3 V4242 N100 Gabc\n10 :1.a.h\n20 W30 :2.b.h\n")
    (root / ".Bad" / "dovecot-uidlist").write_text("3 V5151 N100\n9 :4.d.h\n8 :5.e.h\n")
    # Dovecot's ,S= size field is not part of the identity; 8.h.h has no UID yet.
    (root / ".Good" / "dovecot-uidlist").write_text("3 V6161 N50 G1\n40 :6.f.h,S=20\n41 :7.g.h\n")
    job = start_import(t, f"maildir:{root}", "--wait", "--sweep", "0")
    wait_phase(t, job, ("done",))
    c = tern_imap(t)
    assert uid_status(c, "INBOX")[0] == 4242
    assert sorted(messages(c, "INBOX")) == [10, 20]
    assert uid_status(c, "Bad")[0] != 5151
    good = messages(c, "Good")
    assert uid_status(c, "Good")[0] == 6161 and sorted(good)[:2] == [40, 41], sorted(good)
    assert sorted(good)[2] >= 50  # the message without a UID: a new one above N
    assert len(messages(c, "NoList")) == 1
    c.logout()
    assert uids_note(t, job, "INBOX") == "kept"
    assert uids_note(t, job, "NoList") == "new: no dovecot-uidlist"
    assert uids_note(t, job, "Bad") == "new: dovecot-uidlist line 3: UIDs not ascending"
    assert uids_note(t, job, "Good") == "2 kept, 1 new: messages the source gave no UID"


MBOX_UIDS = (b"From alice@example.org Sat Jan  3 01:05:34 2026\n"
             b"X-IMAPbase: 1234567 10 $Label1\nX-UID: 3\nStatus: RO\nSubject: u3\n\nx\n\n"
             b"From alice@example.org Sat Jan  3 01:05:35 2026\n"
             b"X-UID: 5\nSubject: u5\n\nx\n\n"
             b"From alice@example.org Sat Jan  3 01:05:36 2026\n"
             b"X-UID: 9\nSubject: u9\n\nx\n\n")
MBOX_UIDS_2 = (b"From bob@example.org Sat Jan  3 01:05:34 2026\n"
               b"X-IMAPbase: 7654321 4\nX-UID: 1\nSubject: second 1\n\nx\n\n"
               b"From bob@example.org Sat Jan  3 01:05:35 2026\n"
               b"X-UID: 2\nSubject: second 2\n\nx\n\n")


def test_mbox_x_uid_kept_then_second_import_gets_new_uids(t, tmp_path):
    root = tmp_path / "mail"
    root.mkdir()
    (root / "inbox").write_bytes(MBOX_UIDS)
    (root / "Backwards").write_bytes(
        b"From a@b Sat Jan  3 01:05:34 2026\nX-IMAPbase: 777 20\nX-UID: 7\nSubject: b7\n\nx\n\n"
        b"From a@b Sat Jan  3 01:05:35 2026\nX-UID: 4\nSubject: b4\n\nx\n\n")
    (root / "Plain").write_bytes(b"From a@b Sat Jan  3 01:05:34 2026\nSubject: p\n\nx\n\n")
    (root / "Broken").write_bytes(
        b"From a@b Sat Jan  3 01:05:34 2026\nX-IMAPbase: 12x 3\nX-UID: 1\nSubject: k\n\nx\n\n")
    for p in root.iterdir():
        old(p)
    job = start_import(t, f"mbox:{root}", "--wait", "--sweep", "0")
    wait_phase(t, job, ("done",))
    c = tern_imap(t)
    assert uid_status(c, "INBOX") == (1234567, 10)
    inbox = messages(c, "INBOX")
    assert sorted(inbox) == [3, 5, 9] and subjects(inbox) == ["u3", "u5", "u9"]
    assert uid_status(c, "Backwards")[0] == 777
    assert sorted(messages(c, "Backwards"))[0] == 7
    assert uid_status(c, "Plain")[0] not in (0, 777, 1234567)
    c.logout()
    assert uids_note(t, job, "INBOX") == "kept"
    assert uids_note(t, job, "Backwards").startswith("1 kept, 1 new: UIDs below"), report(t, job)
    assert uids_note(t, job, "Plain") == "new: no X-IMAPbase header"
    assert uids_note(t, job, "Broken") == "new: a malformed X-IMAPbase header"
    # Another mbox into the INBOX that now holds mail: new UIDs, and why.
    box2 = tmp_path / "second.mbox"
    box2.write_bytes(MBOX_UIDS_2)
    old(box2)
    job2 = start_import(t, f"mbox:{box2}", "--wait", "--sweep", "0")
    wait_phase(t, job2, ("done",))
    note = uids_note(t, job2, "INBOX")
    assert note.startswith("new: the destination folder existed with another UIDVALIDITY "
                           "(1234567, source 7654321)"), report(t, job2)
    c = tern_imap(t)
    assert uid_status(c, "INBOX")[0] == 1234567
    inbox = messages(c, "INBOX")
    assert sorted(inbox)[:3] == [3, 5, 9] and min(sorted(inbox)[3:]) >= 10, sorted(inbox)
    assert subjects(inbox)[3:] == ["second 1", "second 2"]
    c.logout()


def test_watch_mbox_follows_flag_changes(t, tmp_path):
    """While watching, a client that rewrites the mbox to change a message's
    Status/X-Status/X-Keywords has the new flags carried over to tern, the
    message stays one; after the cutover tern's flags are the user's."""
    box = tmp_path / "box.mbox"
    one = b"From a@b Sat Jan  3 01:05:34 2026\nSubject: one\nStatus: O\n\nfirst\n\n"
    two = b"From a@b Sat Jan  3 01:05:35 2026\nSubject: two\nStatus: RO\n\nsecond\n\n"
    # "three" is larger than the 4 KiB tail the checkpoint's hash covers, so
    # a change in "two" that keeps the file's length is before that tail.
    three = (b"From a@b Sat Jan  3 01:05:36 2026\nSubject: three\n\nthird\n" +
             b"a line of the third message\n" * 300 + b"\n")
    box.write_bytes(one + two + three)
    old(box)
    job = start_import(t, f"mbox:{box}", "--watch", "--poll", "1s", "--sweep", "0", "--wait")
    assert phase(t, job) == "watch"

    def flags():
        return {subjects({u: m})[0]: m[0] for u, m in messages(tern_imap(t), "INBOX").items()}

    assert flags() == {"one": set(), "two": {"\\Seen"}, "three": set()}
    # A client reads "one", flags "three" with a keyword, un-reads "two": the
    # same length for "two" (a rewrite that changes nothing before it).
    one2 = one.replace(b"Status: O\n", b"Status: RO\nX-Status: A\n")
    two2 = two.replace(b"Status: RO\n", b"Status: O \n")
    three2 = three.replace(b"Subject: three\n", b"Subject: three\nX-Status: F\nX-Keywords: todo\n")
    box.write_bytes(one2 + two2 + three2)
    old(box)
    want = {"one": {"\\Seen", "\\Answered"}, "two": set(), "three": {"\\Flagged", "todo"}}
    assert wait_for(lambda: flags() == want, 20), flags()
    rep = report(t, job)
    assert "flag changes at the source carried over before the cutover: 3" in rep, rep
    row = report_row(t, job, "INBOX")
    assert row[2] == 3, rep  # still three messages imported, none twice
    # Only the flags of "two" change, in place (same offsets, same length).
    box.write_bytes(one2 + two + three2)
    old(box)
    want["two"] = {"\\Seen"}
    assert wait_for(lambda: flags() == want, 20), flags()
    t.cli("import", "complete", str(job))
    wait_phase(t, job, ("done",), 30)
    assert len(messages(tern_imap(t), "INBOX")) == 3
