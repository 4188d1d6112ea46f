"""IMAP4rev1 through the imap role, with Python's imaplib as an independent
client (and a raw socket for what imaplib will not send): every command and
extension, untagged updates, IDLE, bad input, limits, and sessions across a
move."""
import base64
import imaplib
import re
import smtplib
import socket
import threading
import time

import pytest

from conftest import SLOW, Tern

PW = "secret"
ALICE = "alice@example.org"

MSG = (
    "From: Carol Example <carol@example.net>\r\n"
    "To: Alice <alice@example.org>\r\n"
    "Cc: bob@example.org\r\n"
    "Subject: {subject}\r\n"
    "Date: Mon, 16 Nov 2026 10:00:00 +0000\r\n"
    "Message-ID: <{mid}@example.net>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=us-ascii\r\n"
    "\r\n"
    "{body}\r\n"
)

MULTI = (
    "From: dave@example.net\r\n"
    "To: alice@example.org\r\n"
    "Subject: parts\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: multipart/mixed; boundary=\"XYZ\"\r\n"
    "\r\n"
    "--XYZ\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "\r\n"
    "first part\r\n"
    "--XYZ\r\n"
    "Content-Type: application/octet-stream; name=\"a.bin\"\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "Content-Disposition: attachment; filename=\"a.bin\"\r\n"
    "\r\n"
    "AAECAw==\r\n"
    "--XYZ--\r\n"
)


def msg(i, subject=None, body=None):
    return MSG.format(subject=subject or f"message {i}", mid=f"m{i}",
                      body=body or f"body of message {i}")


def lmtp_deliver(t, rcpt, data, store="s1"):
    with smtplib.LMTP("127.0.0.1", t.ports[store]) as c:
        c.sendmail("carol@example.net", [rcpt], data.encode())


def wait_for(pred, timeout=10.0):
    deadline = time.time() + timeout * SLOW
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def assert_imap_role_clean(t):
    """After t.stop(): the imap role never crashed, exited 0 each time, and a
    sanitized build reported nothing about it (no ASan/LSan report from its
    pid, no UBSan runtime error anywhere)."""
    log = t.log()
    pids = set(re.findall(r"started imap \(pid (\d+)\)", log))
    assert pids, log[-2000:]
    problems = [ln for ln in log.splitlines()
                if re.search(r"serve: imap \(pid \d+\) (killed by signal|exited with status [1-9])",
                             ln) or "runtime error:" in ln or
                any(f"=={pid}==ERROR" in ln for pid in pids)]
    if problems:
        at = log.index(problems[0])
        raise AssertionError(f"imap role trouble: {problems}\n{log[at:at + 6000]}")


@pytest.fixture
def imap_tern(tmp_path):
    t = Tern(tmp_path)
    t.setup_users(ALICE, "bob@example.org")
    t.serve()
    for i in range(1, 4):
        lmtp_deliver(t, ALICE, msg(i))
    yield t
    t.stop()
    assert_imap_role_clean(t)


def connect(t, user=ALICE, pw=PW):
    c = imaplib.IMAP4("127.0.0.1", t.ports["imap"])
    if user is not None:
        c.login(user, pw)
    return c


class Raw:
    """A line-level IMAP client for input imaplib will not produce."""

    def __init__(self, t, login=True):
        self.s = socket.create_connection(("127.0.0.1", t.ports["imap"]), timeout=10 * SLOW)
        self.f = self.s.makefile("rb")
        self.greeting = self.line()
        if login:
            self.cmd(f"a0 LOGIN {ALICE} {PW}")

    def line(self):
        return self.f.readline().decode("latin-1")

    def send(self, data):
        self.s.sendall(data if isinstance(data, bytes) else data.encode("latin-1"))

    def cmd(self, text, tag=None):
        """Sends a line and reads up to the tagged reply; returns all lines."""
        tag = tag or text.split(" ", 1)[0]
        self.send(text + "\r\n")
        return self.until(tag)

    def until(self, tag):
        out = []
        while True:
            ln = self.line()
            if ln == "":
                out.append("<closed>")
                return out
            out.append(ln)
            if ln.startswith(tag + " ") or ln.startswith("* BYE"):
                if ln.startswith("* BYE") and not ln.startswith(tag):
                    # read the tagged reply if one follows
                    continue
                return out

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def bad(fn, *args):
    """imaplib raises on BAD; the reply text, to look at."""
    with pytest.raises(imaplib.IMAP4.error) as e:
        fn(*args)
    return str(e.value)


def tagged(lines, tag):
    for ln in lines:
        if ln.startswith(tag + " "):
            return ln
    return "".join(lines)


# ---- greeting, capabilities, login ------------------------------------------


def test_greeting_capability_and_login(imap_tern):
    c = imaplib.IMAP4("127.0.0.1", imap_tern.ports["imap"])
    assert "IMAP4REV1" in c.capabilities
    assert "AUTH=PLAIN" in c.capabilities
    typ, _ = c.login(ALICE, PW)
    assert typ == "OK"
    typ, data = c.capability()
    caps = data[0].decode().split()
    for cap in ("IDLE", "UIDPLUS", "MOVE", "NAMESPACE", "ID", "ENABLE", "CONDSTORE", "QRESYNC",
                "SPECIAL-USE", "LITERAL+"):
        assert cap in caps, cap
    typ, _ = c.noop()
    assert typ == "OK"
    typ, data = c.logout()
    assert typ == "BYE"


def test_wrong_password_is_delayed_counted_and_ends_the_session(imap_tern):
    r = Raw(imap_tern, login=False)
    t0 = time.time()
    out = r.cmd(f"a1 LOGIN {ALICE} wrong")
    assert "a1 NO [AUTHENTICATIONFAILED]" in tagged(out, "a1")
    assert time.time() - t0 >= 0.05  # auth_fail_delay_ms = 50 in the test config
    assert "NO" in tagged(r.cmd("a2 LOGIN nobody@example.org x"), "a2")
    out = r.cmd(f"a3 LOGIN {ALICE} wrong-again")
    assert "a3 NO" in tagged(out, "a3")
    assert r.line().startswith("* BYE")
    r.close()
    # The right password still works on a new connection.
    c = connect(imap_tern)
    c.logout()


def test_authenticate_plain_with_and_without_initial_response(imap_tern):
    c = imaplib.IMAP4("127.0.0.1", imap_tern.ports["imap"])
    typ, _ = c.authenticate("PLAIN", lambda _: f"\0{ALICE}\0{PW}".encode())
    assert typ == "OK"
    c.logout()
    r = Raw(imap_tern, login=False)
    ir = base64.b64encode(f"\0{ALICE}\0{PW}".encode()).decode()
    assert "a1 OK" in tagged(r.cmd(f"a1 AUTHENTICATE PLAIN {ir}"), "a1")
    r.close()
    r = Raw(imap_tern, login=False)
    bad = base64.b64encode(f"\0{ALICE}\0nope".encode()).decode()
    assert "a1 NO" in tagged(r.cmd(f"a1 AUTHENTICATE PLAIN {bad}"), "a1")
    assert "a2 BAD" in tagged(r.cmd("a2 AUTHENTICATE PLAIN !!!notbase64"), "a2")
    assert "a3 NO" in tagged(r.cmd("a3 AUTHENTICATE CRAM-MD5"), "a3")
    r.close()


def test_commands_in_the_wrong_state(imap_tern):
    r = Raw(imap_tern, login=False)
    assert "a1 BAD" in tagged(r.cmd("a1 SELECT INBOX"), "a1")
    assert "a2 BAD" in tagged(r.cmd("a2 FETCH 1 FLAGS"), "a2")
    r.cmd(f"a3 LOGIN {ALICE} {PW}")
    assert "a4 BAD" in tagged(r.cmd("a4 FETCH 1 FLAGS"), "a4")
    assert "a5 BAD" in tagged(r.cmd(f"a5 LOGIN {ALICE} {PW}"), "a5")
    assert "a6 BAD" in tagged(r.cmd("a6 EXPUNGE"), "a6")
    r.close()


# ---- mailboxes ---------------------------------------------------------------


def test_select_examine_status(imap_tern):
    c = connect(imap_tern)
    typ, data = c.select("INBOX")
    assert typ == "OK" and data[0] == b"3"
    uv = int(c.untagged_responses["UIDVALIDITY"][0])
    assert uv > 0
    assert int(c.untagged_responses["UIDNEXT"][0]) == 4
    assert int(c.untagged_responses["HIGHESTMODSEQ"][0]) > 0
    typ, data = c.status("INBOX", "(MESSAGES UNSEEN UIDNEXT UIDVALIDITY RECENT HIGHESTMODSEQ)")
    s = data[0].decode()
    assert "MESSAGES 3" in s and "UNSEEN 3" in s and f"UIDVALIDITY {uv}" in s
    typ, data = c.select("INBOX", readonly=True)
    assert typ == "OK"
    typ, _ = c.store("1", "+FLAGS", "\\Seen")
    assert typ == "NO"
    typ, data = c.select("Nonexistent")
    assert typ == "NO"
    c.logout()


def test_create_list_rename_delete_subscribe(imap_tern):
    c = connect(imap_tern)
    assert c.create("Work")[0] == "OK"
    assert c.create("Work/2026")[0] == "OK"
    assert c.create("Deep/er/still")[0] == "OK"  # superiors are created too
    assert c.create("Work")[0] == "NO"
    typ, data = c.list()
    names = [d.decode() for d in data]
    assert any(n.endswith('"/" Work') and "\\HasChildren" in n for n in names), names
    assert any(n.endswith("Work/2026") for n in names)
    assert any("INBOX" in n for n in names)
    assert any("\\Sent" in n and n.endswith("Sent") for n in names)
    assert any("\\Trash" in n for n in names)
    assert any("\\Drafts" in n for n in names) and any("\\Junk" in n for n in names)
    typ, data = c.list('""', "%")
    top = [d.decode() for d in data]
    assert not any("Work/2026" in n for n in top)
    assert any(n.endswith("Deep") for n in top)
    typ, data = c.list("Work/", "%")
    assert [d.decode() for d in data if d][0].endswith("Work/2026")
    typ, data = c.list('""', '""')
    assert data[0].decode().startswith("(\\Noselect)")
    assert c.rename("Work", "Job")[0] == "OK"
    typ, data = c.list('""', "*")
    names = [d.decode() for d in data]
    assert any(n.endswith("Job/2026") for n in names) and not any("Work" in n for n in names)
    assert c.rename("INBOX", "Old")[0] == "NO"
    assert c.rename("Job", "Job/inner")[0] == "NO"
    assert c.subscribe("Job")[0] == "OK"
    assert c.subscribe("Ghost")[0] == "OK"  # need not exist (RFC 3501 6.3.6)
    typ, data = c.lsub()
    subs = [d.decode() for d in data]
    assert any(s.endswith("Job") for s in subs) and any(s.endswith("Ghost") for s in subs)
    assert c.unsubscribe("Ghost")[0] == "OK"
    typ, data = c.lsub()
    assert not any(d.decode().endswith("Ghost") for d in data if d)
    assert c.delete("Job/2026")[0] == "OK"
    assert c.delete("INBOX")[0] == "NO"
    assert c.delete("Nope")[0] == "NO"
    c.logout()


def test_special_use_folders_subscribed_at_first_login(imap_tern):
    def subs(c):
        typ, data = c.lsub('""', "*")
        return sorted(d.decode().rsplit(" ", 1)[1].strip('"') for d in data if d)
    c = connect(imap_tern)
    assert subs(c) == ["Drafts", "INBOX", "Junk", "Sent", "Trash"]
    assert c.unsubscribe("Junk")[0] == "OK"
    c.logout()
    # The folders exist now: a later login creates and subscribes nothing.
    c = connect(imap_tern)
    assert subs(c) == ["Drafts", "INBOX", "Sent", "Trash"]
    c.logout()


def test_append_bare_lf_becomes_crlf_and_nul_goes_out_as_0x80(imap_tern):
    c = connect(imap_tern)
    unix = b"From: a@example.org\nSubject: unix\n\nline one\r\nline two\n"
    typ, data = c.append("INBOX", None, None, unix)
    assert typ == "OK", data
    uid = re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1).decode()
    c.select("INBOX")
    want = unix.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    typ, data = c.uid("FETCH", uid, "(RFC822.SIZE BODY.PEEK[])")
    assert data[0][1] == want and b"RFC822.SIZE %d" % len(want) in data[0][0], data
    # A NUL is kept as stored (an APPEND or an import may bring one; LMTP
    # refuses them); a literal cannot carry it (RFC 3501 CHAR8), so it goes
    # out as 0x80, as Dovecot sends it, and the size stays.
    typ, data = c.append("INBOX", None, None, b"Subject: nul\r\n\r\nbefore\x00after\r\n")
    assert typ == "OK", data
    c.select("INBOX")
    typ, data = c.search(None, "SUBJECT", "nul")
    seq = data[0].split()[-1].decode()
    typ, data = c.fetch(seq, "(RFC822.SIZE BODY.PEEK[TEXT])")
    assert data[0][1] == b"before\x80after\r\n", data
    assert b"RFC822.SIZE 30" in data[0][0], data
    c.logout()


def test_modified_utf7_names_and_path_tricks(imap_tern):
    c = connect(imap_tern)
    assert c.create('"&ZeVnLIqe-"')[0] == "OK"  # 日本語
    typ, data = c.list('""', "*")
    assert any(d.decode().endswith("&ZeVnLIqe-") for d in data)
    for bad in ['"&Jjo"', '"&AGE-"', '"a/../b"', '"../x"', '"a//b"', '"/abs"', '"a/./b"',
                '"bad&name"']:
        typ, data = c.create(bad)
        assert typ in ("NO", "BAD"), bad
    typ, data = c.list('""', "*")
    names = b" ".join(d for d in data if d).decode()
    assert ".." not in names and "//" not in names
    c.logout()


def test_namespace_id_enable(imap_tern):
    c = connect(imap_tern)
    typ, data = c.namespace()
    assert typ == "OK" and data[0] == b'(("" "/")) NIL NIL'
    typ, data = c.xatom("ID", '("name" "pytest")')
    assert typ == "OK"
    assert b"tern" in c.untagged_responses["ID"][0]
    typ, data = c.xatom("ENABLE", "CONDSTORE QRESYNC")
    assert typ == "OK"
    assert b"QRESYNC" in c.untagged_responses["ENABLED"][0]
    c.logout()


# ---- messages ----------------------------------------------------------------


def test_fetch_items(imap_tern):
    lmtp_deliver(imap_tern, ALICE, MULTI)
    c = connect(imap_tern)
    c.select("INBOX")
    typ, data = c.fetch("1", "(FLAGS INTERNALDATE RFC822.SIZE UID)")
    line = data[0].decode()
    assert "UID 1" in line and "FLAGS ()" in line and "INTERNALDATE" in line
    size = int(re.search(r"RFC822.SIZE (\d+)", line).group(1))
    typ, data = c.fetch("1", "(BODY.PEEK[])")
    assert len(data[0][1]) == size
    assert data[0][1].decode().startswith("Return-Path:") or b"Subject: message 1" in data[0][1]
    typ, data = c.fetch("1", "(ENVELOPE)")
    env = data[0].decode()
    assert '"message 1"' in env and '"carol" "example.net"' in env and "m1@example.net" in env
    typ, data = c.fetch("1", "(BODY.PEEK[HEADER.FIELDS (Subject From)])")
    hdr = data[0][1].decode()
    assert hdr.startswith("From:") or hdr.startswith("Subject:")
    assert "Subject: message 1" in hdr and "To:" not in hdr and hdr.endswith("\r\n\r\n")
    typ, data = c.fetch("1", "(BODY.PEEK[HEADER.FIELDS.NOT (Subject)])")
    assert "Subject:" not in data[0][1].decode() and "To: Alice" in data[0][1].decode()
    typ, data = c.fetch("1", "(BODY.PEEK[TEXT])")
    assert data[0][1] == b"body of message 1\r\n"
    typ, data = c.fetch("1", "(BODY.PEEK[]<0.10>)")
    assert len(data[0][1]) == 10 and "BODY[]<0>" in data[0][0].decode()
    typ, data = c.fetch("1", "(RFC822.HEADER)")
    assert b"Subject: message 1" in data[0][1]
    typ, data = c.fetch("1", "(FLAGS)")
    assert b"\\Seen" not in data[0]  # PEEK and RFC822.HEADER leave \Seen alone
    typ, data = c.fetch("1", "(BODY[TEXT])")
    assert b"\\Seen" in data[0][0]  # non-PEEK sets \Seen and reports it
    typ, data = c.fetch("4", "(BODYSTRUCTURE)")
    bs = data[0].decode()
    assert '"MIXED"' in bs.upper() and '"PLAIN"' in bs.upper() and '"OCTET-STREAM"' in bs.upper()
    typ, data = c.fetch("4", "(BODY.PEEK[1])")
    assert data[0][1] == b"first part"
    typ, data = c.fetch("4", "(BODY.PEEK[2.MIME])")
    assert b"Content-Disposition: attachment" in data[0][1]
    typ, data = c.fetch("4", "(BODY.PEEK[3])")
    assert typ == "NO"
    typ, data = c.fetch("1:2", "FAST")
    assert typ == "OK" and len(data) == 2
    typ, data = c.uid("FETCH", "2:*", "(FLAGS)")
    assert [re.search(rb"UID (\d+)", d).group(1) for d in data] == [b"2", b"3", b"4"]
    typ, data = c.fetch("1", "(RFC822)")
    assert len(data[0][1]) == size
    c.logout()


def test_header_only_fetch_answers_as_the_whole_message_does(imap_tern):
    """FETCHes of header items only read just the header from the store.
    Their answers must be those of the same items fetched with the whole
    message (BODY.PEEK[] in the same FETCH makes the session read it all),
    for headers of every shape; and a whole-body item after them still gets
    the whole body."""
    pad = "x" * 9000
    raws = [
        b"From: a@example.net\r\nSubject: plain\r\n\r\nbody\r\n" + b"y" * 50000 + b"\r\n",
        b"From: a@example.net\nSubject: bare LF\n\nbody\n",
        b"From: a@example.net\r\nSubject: no body at all\r\n",
        ("From: a@example.net\r\nX-Pad: %s\r\nSubject: folded\r\n  on two lines\r\n"
         "To: Bob <b@example.org>\r\n\r\nbody\r\n" % pad).encode(),
        b"\r\nSubject: not a header, the body\r\n",
        b"Subject: =?utf-8?q?caf=C3=A9?=\r\nFrom: \"Q, R\" <q@example.net>\r\n"
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\npart\r\n--b--\r\n",
    ]
    c = connect(imap_tern)
    c.create("Shapes")
    for r in raws:
        assert c.append("Shapes", None, None, r)[0] == "OK"
    c.logout()
    items = ["BODY.PEEK[HEADER]", "BODY.PEEK[HEADER.FIELDS (Subject To)]",
             "BODY.PEEK[HEADER.FIELDS.NOT (Subject)]", "ENVELOPE", "RFC822.HEADER",
             "BODY.PEEK[HEADER]<2.20>", "ENVELOPE RFC822.SIZE FLAGS"]
    n = len(raws)
    # What is stored (imaplib sends bare LFs as CRLF).
    ref = connect(imap_tern)
    ref.select("Shapes", readonly=True)
    typ, data = ref.uid("FETCH", "1:*", "(BODY.PEEK[])")
    stored = [d[1] for d in data if isinstance(d, tuple)]
    assert len(stored) == n

    # Header items alone: the session reads only headers (one window).
    head_only = connect(imap_tern)
    head_only.select("Shapes", readonly=True)
    got = {}
    for item in items:
        typ, data = head_only.uid("FETCH", "1:*", f"({item})")
        assert typ == "OK", data
        got[item] = data
    typ, data = head_only.uid("FETCH", "1:*", "(BODY.PEEK[HEADER])")
    for body, d in zip(stored, [d for d in data if isinstance(d, tuple)]):
        m = re.search(rb"^\r?\n|\n\r?\n", body)
        want = body[:m.end()] if m else body
        assert d[1] == want, (body[:40], d[1][:80])
    # After header-only reads, the whole message is the whole message.
    typ, data = head_only.uid("FETCH", "1:*", "(BODY.PEEK[])")
    assert [d[1] for d in data if isinstance(d, tuple)] == stored
    head_only.logout()

    # The same items answered from the whole message: the reference session
    # reads each message whole first (its cache then answers the items).
    for item in items:
        want = []
        for uid in range(1, n + 1):
            ref.uid("FETCH", str(uid), "(BODY.PEEK[])")
            typ, data = ref.uid("FETCH", str(uid), f"({item})")
            want += data
        assert got[item] == want, item
    ref.logout()


def uidset_list(text):
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition(":")
        out += range(int(lo), int(hi or lo) + 1)
    return out


def store_fsyncs(t):
    with smtplib.LMTP("127.0.0.1", t.ports["s1"]) as c:
        c.ehlo("x")
        code, text = c.docmd("XSTATS")
    return int(re.search(rb"fsyncs (\d+)", text).group(1))


def test_copy_move_expunge_of_many_messages_in_batches(imap_tern):
    """COPY, MOVE and EXPUNGE of more messages than one store batch holds
    (500): COPYUID maps every message to its copy, each copy is its
    original, the copy costs a few store fsyncs, not one per message, and
    EXPUNGE, UID EXPUNGE and MOVE remove exactly what they should."""
    n = 620
    c = connect(imap_tern)
    c.create("Big")
    c.create("Dest")
    c.logout()
    r = Raw(imap_tern)
    r.send("".join("p%d APPEND Big {%d+}\r\n%s\r\n" % (i, len(m), m)
                   for i in range(1, n + 1)
                   for m in ["Subject: big %d\r\n\r\nbody %d\r\n" % (i, i)]))
    for i in range(1, n + 1):
        assert "OK" in tagged(r.until(f"p{i}"), f"p{i}")
    r.cmd("a1 SELECT Big")
    f0 = store_fsyncs(imap_tern)
    out = r.cmd("a2 UID COPY 1:* Dest")
    f1 = store_fsyncs(imap_tern)
    m = re.search(r"\[COPYUID (\d+) (\S+) (\S+)\]", tagged(out, "a2"))
    assert m, out
    src, dst = uidset_list(m.group(2)), uidset_list(m.group(3))
    assert src == list(range(1, n + 1)) and len(dst) == n
    assert f1 - f0 < 20, (f0, f1)
    d = Raw(imap_tern)
    d.cmd("b1 EXAMINE Dest")
    for k in (0, 1, 498, 499, 500, 501, n - 1):
        got = d.cmd(f"b2 UID FETCH {dst[k]} (BODY.PEEK[HEADER.FIELDS (Subject)] BODY.PEEK[TEXT])")
        text = "".join(got)
        assert f"Subject: big {src[k]}\r\n" in text and f"body {src[k]}\r\n" in text, got
    d.close()
    # EXPUNGE of 550: every one reported, the rest kept.
    r.cmd("a3 STORE 1:550 +FLAGS.SILENT (\\Deleted)")
    out = r.cmd("a4 EXPUNGE")
    assert "a4 OK" in tagged(out, "a4")
    assert len([ln for ln in out if ln.endswith(" EXPUNGE\r\n")]) == 550
    out = r.cmd("a5 SELECT Big")
    assert "* 70 EXISTS\r\n" in out, out
    # UID EXPUNGE expunges only the UIDs named, among the \Deleted ones.
    r.cmd("a6 STORE 1:* +FLAGS.SILENT (\\Deleted)")
    out = r.cmd("a7 UID EXPUNGE 551:560,600")
    assert len([ln for ln in out if ln.endswith(" EXPUNGE\r\n")]) == 11, out
    r.cmd("a8 STORE 1:* -FLAGS.SILENT (\\Deleted)")
    # MOVE of the rest: COPYUID, then every one gone from Big.
    out = r.cmd("a9 UID MOVE 1:* Dest")
    m = re.search(r"\[COPYUID (\d+) (\S+) (\S+)\]", "".join(out))
    assert m, out
    moved = uidset_list(m.group(2))
    assert moved == [u for u in range(561, n + 1) if u != 600], moved
    assert len([ln for ln in out if ln.endswith(" EXPUNGE\r\n")]) == 59
    out = r.cmd("a10 STATUS Dest (MESSAGES)")
    assert "MESSAGES %d" % (n + 59) in "".join(out), out
    out = r.cmd("a11 STATUS Big (MESSAGES)")
    assert "MESSAGES 0" in "".join(out), out
    # CLOSE expunges in batches too.
    r.cmd("a12 SELECT Dest")
    r.cmd("a13 STORE 1:600 +FLAGS.SILENT (\\Deleted)")
    r.cmd("a14 CLOSE")
    out = r.cmd("a15 STATUS Dest (MESSAGES)")
    assert "MESSAGES %d" % (n + 59 - 600) in "".join(out), out
    r.close()


def test_store_flags_keywords_and_condstore(imap_tern):
    c = connect(imap_tern)
    c.select("INBOX")
    typ, data = c.store("1", "+FLAGS", "(\\Flagged $Important)")
    assert typ == "OK" and b"\\Flagged" in data[0] and b"$Important" in data[0]
    typ, data = c.store("1", "-FLAGS", "($Important)")
    assert b"$Important" not in data[0] and b"\\Flagged" in data[0]
    typ, data = c.store("1:2", "FLAGS", "(\\Seen)")
    assert all(b"FLAGS (\\Seen)" in d for d in data)
    typ, data = c.store("3", "+FLAGS.SILENT", "(\\Answered)")
    assert typ == "OK"
    typ, data = c.fetch("3", "(FLAGS)")
    assert b"\\Answered" in data[0]
    assert "flag" in bad(c.store, "1", "+FLAGS", "(\\Bogus)")
    # CONDSTORE: a modseq the message has moved past makes the store fail.
    typ, data = c.fetch("1", "(MODSEQ)")
    ms = int(re.search(rb"MODSEQ \((\d+)\)", data[0]).group(1))
    typ, data = c.uid("STORE", "1", "(UNCHANGEDSINCE %d) +FLAGS" % (ms - 1), "(\\Draft)")
    assert typ == "OK"
    assert c.untagged_responses.pop("MODIFIED", [None])[0] == b"1"
    typ, data = c.fetch("1", "(FLAGS)")
    assert b"\\Draft" not in data[0]
    typ, data = c.uid("STORE", "1", "(UNCHANGEDSINCE %d) +FLAGS" % ms, "(\\Draft)")
    assert typ == "OK"
    typ, data = c.fetch("1", "(FLAGS MODSEQ)")
    assert b"\\Draft" in data[0]
    assert int(re.search(rb"MODSEQ \((\d+)\)", data[0]).group(1)) > ms
    typ, data = c.fetch("1:*", "(MODSEQ)")
    top = max(int(m) for m in re.findall(rb"MODSEQ \((\d+)\)", b" ".join(data)))
    c.store("2", "+FLAGS", "(\\Flagged)")
    typ, data = c.fetch("1:*", "(UID) (CHANGEDSINCE %d)" % top)
    assert [d for d in data if d] and all(b"UID 2" in d for d in data if d), data
    c.logout()


def test_search(imap_tern):
    lmtp_deliver(imap_tern, ALICE, msg(4, subject="Quarterly report", body="the numbers"))
    c = connect(imap_tern)
    c.select("INBOX")
    c.store("2", "+FLAGS", "(\\Seen)")
    c.store("3", "+FLAGS", "(\\Flagged work)")

    def s(*crit, uid=False):
        typ, data = (c.uid("SEARCH", *crit) if uid else c.search(None, *crit))
        assert typ == "OK", (crit, data)
        return [int(x) for x in data[0].split()]

    assert s("ALL") == [1, 2, 3, 4]
    assert s("UNSEEN") == [1, 3, 4]
    assert s("SEEN") == [2]
    assert s("FLAGGED") == [3]
    assert s("KEYWORD", "work") == [3]
    assert s("UNKEYWORD", "work") == [1, 2, 4]
    assert s("SUBJECT", "quarterly") == [4]
    assert s("FROM", "carol") == [1, 2, 3, 4]
    assert s("TO", "alice@example.org") == [1, 2, 3, 4]
    assert s("BODY", "NUMBERS") == [4]
    assert s("TEXT", "Quarterly") == [4]
    assert s("HEADER", "Message-ID", "m2@") == [2]
    assert s("LARGER", "1") == [1, 2, 3, 4]
    assert s("SMALLER", "10") == []
    assert s("OR", "SEEN", "FLAGGED") == [2, 3]
    assert s("NOT", "SEEN") == [1, 3, 4]
    assert s("(SEEN)", "OR", "2", "3") == [2]
    assert s("2:3") == [2, 3]
    assert s("UID", "3:*") == [3, 4]
    assert s("SENTON", "16-Nov-2026") == [1, 2, 3, 4]
    assert s("SENTBEFORE", "1-Jan-2000") == []
    assert s("SINCE", "1-Jan-2000") == [1, 2, 3, 4]
    assert s("BEFORE", "1-Jan-2000") == []
    assert s("NEW") == [] and s("RECENT") == [] and s("OLD") == [1, 2, 3, 4]
    assert s("ANSWERED") == [] and s("UNDELETED") == [1, 2, 3, 4]
    assert s("FLAGGED", uid=True) == [3]
    assert s("CHARSET", "UTF-8", "SUBJECT", "report") == [4]
    typ, data = c.search("KOI8-R", "ALL")
    assert typ == "NO"
    assert "BAD" in bad(c.search, None, "BOGUSKEY")
    typ, data = c.search(None, "MODSEQ", "1")
    assert typ == "OK" and b"(MODSEQ" in data[0]
    c.logout()


def test_append_with_flags_date_and_uidplus(imap_tern):
    c = connect(imap_tern)
    typ, data = c.append("INBOX", "(\\Seen $Label)", '"05-Jan-2021 10:20:30 +0200"',
                         msg(9).encode())
    assert typ == "OK"
    m = re.search(rb"APPENDUID (\d+) (\d+)", data[0])
    assert m and int(m.group(2)) == 4
    c.select("INBOX")
    typ, data = c.fetch("4", "(FLAGS INTERNALDATE)")
    assert b"\\Seen" in data[0] and b"$Label" in data[0]
    assert b"05-Jan-2021 08:20:30 +0000" in data[0]
    typ, data = c.append("NoSuchBox", None, None, msg(10).encode())
    assert typ == "NO" and b"TRYCREATE" in data[0]
    assert "date" in bad(c.append, "INBOX", None, '"31-Feb-2021 10:20:30 +0000"',
                         msg(11).encode())
    c.logout()


def test_literal_plus_and_synchronizing_literals(imap_tern):
    r = Raw(imap_tern)
    body = msg(20).encode()
    r.send(b"a1 APPEND INBOX {%d+}\r\n" % len(body) + body + b"\r\n")
    out = r.until("a1")
    assert "a1 OK" in tagged(out, "a1") and "APPENDUID" in tagged(out, "a1")
    r.send(b"a2 APPEND INBOX {%d}\r\n" % len(body))
    assert r.line().startswith("+")
    r.send(body + b"\r\n")
    assert "a2 OK" in tagged(r.until("a2"), "a2")
    r.close()


def test_copy_move_expunge(imap_tern):
    c = connect(imap_tern)
    c.create("Archive")
    c.select("INBOX")
    typ, data = c.copy("1:2", "Archive")
    assert typ == "OK" and b"COPYUID" in data[0]
    typ, data = c.copy("1", "Nope")
    assert typ == "NO" and b"TRYCREATE" in data[0]
    typ, data = c.uid("MOVE", "3", "Archive")
    assert typ == "OK"
    typ, data = c.select("INBOX")
    assert data[0] == b"2"
    typ, data = c.status("Archive", "(MESSAGES)")
    assert b"MESSAGES 3" in data[0]
    c.select("INBOX")
    c.store("1", "+FLAGS", "(\\Deleted)")
    typ, data = c.expunge()
    assert typ == "OK" and data == [b"1"]
    typ, data = c.select("INBOX")
    assert data[0] == b"1"
    # UID EXPUNGE only touches the given UIDs.
    c.select("Archive")
    c.store("1:3", "+FLAGS", "(\\Deleted)")
    typ, data = c.uid("EXPUNGE", "1")
    assert typ == "OK"
    typ, data = c.search(None, "ALL")
    assert len(data[0].split()) == 2
    # CLOSE expunges silently.
    typ, _ = c.close()
    typ, data = c.status("Archive", "(MESSAGES)")
    assert b"MESSAGES 0" in data[0]
    c.logout()


def test_updates_from_other_sessions_and_deliveries(imap_tern):
    a = connect(imap_tern)
    b = connect(imap_tern)
    a.select("INBOX")
    b.select("INBOX")
    b.store("1", "+FLAGS", "(\\Flagged)")
    lmtp_deliver(imap_tern, ALICE, msg(5))
    typ, data = a.noop()
    assert b"4" in a.untagged_responses.get("EXISTS", [b""])[-1]
    fetches = a.untagged_responses.get("FETCH", [])
    assert any(b"\\Flagged" in f for f in fetches), fetches
    b.store("2", "+FLAGS", "(\\Deleted)")
    b.expunge()
    a.noop()
    assert a.untagged_responses.get("EXPUNGE") == [b"2"]
    a.logout()
    b.logout()


def test_idle_sees_a_delivery_within_a_second(imap_tern):
    r = Raw(imap_tern)
    r.cmd("a1 SELECT INBOX")
    r.send("a2 IDLE\r\n")
    assert r.line().startswith("+")
    t0 = time.time()
    lmtp_deliver(imap_tern, ALICE, msg(6))
    ln = r.line()
    elapsed = time.time() - t0
    assert re.match(r"\* 4 EXISTS", ln), ln
    assert elapsed < 1.0 * SLOW, elapsed
    r.send("DONE\r\n")
    assert "a2 OK" in tagged(r.until("a2"), "a2")
    r.close()


def test_idle_is_told_by_the_store_not_polled(tmp_path):
    """With polling made useless (idle_check_ms 60 s), a delivery and a flag
    change by another session still reach an IDLE session at once: the store
    answers its WAIT after the commit. DONE is answered at once too (the
    session's WAIT is cut short), and the store is left with no waiter."""
    t = Tern(tmp_path, imap_extra="idle_check_ms = 60000")
    t.setup_users(ALICE)
    t.serve()
    try:
        lmtp_deliver(t, ALICE, msg(1))
        r = Raw(t)
        r.cmd("a1 SELECT INBOX")
        r.send("a2 IDLE\r\n")
        assert r.line().startswith("+")
        lat = []
        for i in range(2, 7):
            t0 = time.time()
            lmtp_deliver(t, ALICE, msg(i))
            ln = r.line()
            lat.append(time.time() - t0)
            assert ln == f"* {i} EXISTS\r\n", ln
        assert max(lat) < 0.5 * SLOW, lat
        other = connect(t)
        other.select("INBOX")
        t0 = time.time()
        other.store("2", "+FLAGS", "(\\Flagged)")
        ln = r.line()
        assert re.match(r"\* 2 FETCH \(UID 2 FLAGS \(\\Flagged\)\)", ln), ln
        assert time.time() - t0 < 0.5 * SLOW
        other.logout()
        time.sleep(0.2)
        t0 = time.time()
        r.send("DONE\r\n")
        assert "a2 OK" in tagged(r.until("a2"), "a2")
        assert time.time() - t0 < 0.5 * SLOW
        # IDLE again, then the client goes away in the middle of it.
        r.send("a3 IDLE\r\n")
        assert r.line().startswith("+")
        r.close()
        lmtp_deliver(t, ALICE, msg(7))
        c = connect(t)
        c.select("INBOX")
        assert c.untagged_responses.get("EXISTS") == [b"7"]
        c.logout()
    finally:
        t.stop()
    assert_imap_role_clean(t)


def test_qresync_select_reports_vanished_and_changes(imap_tern):
    c = connect(imap_tern)
    c.select("INBOX")
    uv = int(c.untagged_responses["UIDVALIDITY"][0])
    hms = int(c.untagged_responses["HIGHESTMODSEQ"][0])
    c.store("1", "+FLAGS", "(\\Seen)")
    c.store("2", "+FLAGS", "(\\Deleted)")
    c.expunge()
    c.logout()
    r = Raw(imap_tern)
    r.cmd("a1 ENABLE QRESYNC")
    out = r.cmd(f"a2 SELECT INBOX (QRESYNC ({uv} {hms} 1:3))")
    text = "".join(out)
    assert "* VANISHED (EARLIER) 2" in text, text
    assert re.search(r"\* 1 FETCH \(UID 1 FLAGS \(\\Seen\) MODSEQ", text), text
    assert "a2 OK" in tagged(out, "a2")
    r.close()


# ---- bad input ----------------------------------------------------------------


def inbox_state(t):
    c = connect(t)
    typ, data = c.status("INBOX", "(MESSAGES UIDNEXT)")
    c.logout()
    return data[0]


@pytest.mark.parametrize("line,want", [
    ("", None),                                   # empty line
    ("+tag NOOP", "BAD"),                         # '+' is not a tag char
    ("a{1 NOOP", "BAD"),
    ("a1", "BAD"),                                # tag without a command
    ("a1 N0OP", "BAD"),                           # not a command name
    ("a1 FETCH 1 (FLAGS", "BAD"),                 # unbalanced parenthesis
    ("a1 FETCH 1 FLAGS)", "BAD"),
    ('a1 SELECT "INBOX', "BAD"),                  # unbalanced quote
    ("a1 FETCH 1:4294967296 FLAGS", "BAD"),       # UID beyond 32 bits
    ("a1 FETCH 0 FLAGS", "BAD"),
    ("a1 FETCH 99 FLAGS", "BAD"),
    ("a1 FETCH 1,,2 FLAGS", "BAD"),
    ("a1 FETCH 1 BODY[1.FOO]", "BAD"),
    ("a1 FETCH 1 (BODY[HEADER.FIELDS])", "BAD"),
    ("a1 FETCH 1 BODY[]<5>", "BAD"),
    ("a1 STORE 1 +FLAGS (\\Nonsense)", "BAD"),
    ("a1 STORE 1 FROB (\\Seen)", "BAD"),
    ("a1 SEARCH FROBNICATE", "BAD"),
    ("a1 SEARCH (((((((((((((((((((((((((((((((((((ALL)))))))))))))))))))))))))))))))))", "BAD"),
    ("a1 COPY 1", "BAD"),
    ("a1 CREATE", "BAD"),
    ("a1 XFOO", "BAD"),
    ("a1 APPEND INBOX {99999999999999999999999}", "BAD"),
])
def test_malformed_commands_change_nothing(imap_tern, line, want):
    before = inbox_state(imap_tern)
    r = Raw(imap_tern)
    r.cmd("a0 SELECT INBOX")
    r.send(line + "\r\n")
    r.send("zz NOOP\r\n")
    out = r.until("zz")
    text = "".join(out)
    if want:
        assert re.search(r"(^|\n)(a1|\*|\+tag|a\{1) (BAD|NO)", text), text
    assert "zz OK" in text, text
    r.close()
    assert inbox_state(imap_tern) == before


def test_star_on_an_empty_mailbox_and_missing_sections(imap_tern):
    c = connect(imap_tern)
    c.create("Empty")
    c.select("Empty")
    assert "BAD" in bad(c.fetch, "*:*", "(FLAGS)")
    typ, data = c.uid("FETCH", "1:*", "(FLAGS)")
    assert typ == "OK"
    c.select("INBOX")
    typ, _ = c.fetch("1", "(BODY[7.3])")
    assert typ == "NO"
    c.logout()


def test_literal_over_the_limit_is_refused_before_it_is_read(tmp_path):
    t = Tern(tmp_path, imap_extra="max_literal = 2048")
    t.setup_users(ALICE)
    t.serve()
    try:
        r = Raw(t)
        r.send(b"a1 APPEND INBOX {100000}\r\n")
        ln = r.line()
        assert ln.startswith("a1 NO") and "TOOBIG" in ln, ln
        assert "zz OK" in tagged(r.cmd("zz NOOP"), "zz")  # the connection is still in step
        # LITERAL+: the octets come anyway; they are skipped, not stored.
        r.send(b"a2 APPEND INBOX {100000+}\r\n" + b"x" * 100000 + b"\r\n")
        ln = r.line()
        assert ln.startswith("a2 NO") and "TOOBIG" in ln, ln
        assert "zz OK" in tagged(r.cmd("zz NOOP"), "zz")
        r.close()
        r = Raw(t)
        r.send(b"a3 NOOP " + b"x" * 70000 + b"\r\n")
        assert "BAD" in r.line()
        assert "zz OK" in tagged(r.cmd("zz NOOP"), "zz")
        r.close()
        assert b"MESSAGES 0" in inbox_state(t)
    finally:
        t.stop()
    assert_imap_role_clean(t)


def test_sessions_per_user_are_capped(tmp_path):
    t = Tern(tmp_path, imap_extra="max_sessions_per_user = 2")
    t.setup_users(ALICE)
    t.serve()
    try:
        a, b = connect(t), connect(t)
        c = imaplib.IMAP4("127.0.0.1", t.ports["imap"])
        with pytest.raises(imaplib.IMAP4.error, match="LIMIT|sessions"):
            c.login(ALICE, PW)
        a.logout()
        time.sleep(0.2)
        c = connect(t)
        c.logout()
        b.logout()
    finally:
        t.stop()
    assert_imap_role_clean(t)


def test_no_internal_detail_in_responses(imap_tern):
    r = Raw(imap_tern)
    text = "".join(r.cmd("a1 SELECT \"a/../../etc\"") + r.cmd("a2 FETCH 1 FLAGS") +
                   r.cmd("a3 STATUS Nope (MESSAGES)"))
    for leak in ("/", "sqlite", "SQL", ".db", "stores/"):
        for ln in text.splitlines():
            if ln.startswith("a"):
                assert leak not in ln.split(" ", 2)[2] or leak == "/" and "a/../" in ln, ln
    r.close()


# ---- moves ---------------------------------------------------------------------


def test_move_ends_sessions_and_keeps_uids(imap_tern):
    t = imap_tern
    c = connect(t)
    c.select("INBOX")
    uv = c.untagged_responses["UIDVALIDITY"][0]
    typ, data = c.uid("FETCH", "1:*", "(FLAGS)")
    uids_before = [re.search(rb"UID (\d+)", d).group(1) for d in data]
    r = Raw(t)
    r.cmd("a1 SELECT INBOX")
    r.send("a2 IDLE\r\n")
    assert r.line().startswith("+")
    p = t.cli("move", ALICE, "--to", "s2", "--wait")
    assert p.returncode == 0, p.stderr
    ln = r.line()
    while ln and not ln.startswith("* BYE"):
        ln = r.line()
    assert ln.startswith("* BYE") and "UNAVAILABLE" in ln, ln
    r.close()
    # The old session is over; a new login reaches the new home.
    assert wait_for(lambda: "s2" in t.cli("user", "show", ALICE).stdout)
    c2 = connect(t)
    c2.select("INBOX")
    assert c2.untagged_responses["UIDVALIDITY"][0] == uv
    typ, data = c2.uid("FETCH", "1:*", "(FLAGS)")
    assert [re.search(rb"UID (\d+)", d).group(1) for d in data] == uids_before
    c2.logout()
    try:
        c.noop()
        c.logout()
    except (imaplib.IMAP4.abort, OSError):
        pass


# ---- more of every command: corners the tests above do not reach -------------


def untagged(lines, word):
    """The untagged lines of `lines` whose second or third token is `word`."""
    return [ln.strip() for ln in lines if ln.startswith("* ") and
            word in ln.split(" ", 3)[1:3]]


def test_rename_of_the_selected_folder(imap_tern):
    c = connect(imap_tern)
    c.create("Work")
    for i in range(3):
        c.append("Work", None, None, msg(30 + i).encode())
    c.create("Work/Sub")
    for i in range(2):
        c.append("Work/Sub", None, None, msg(40 + i).encode())
    r = Raw(imap_tern)
    assert "s1 OK" in tagged(r.cmd("s1 SELECT Work/Sub"), "s1")
    assert c.select("Work")[0] == "OK"
    uv = int(c.untagged_responses["UIDVALIDITY"][0])
    # This session renames the folder it has selected and goes on with it:
    # CLOSE right after the rename expunges in the folder under its new name.
    assert c.store("1", "+FLAGS", "(\\Deleted)")[0] == "OK"
    assert c.rename("Work", "Job")[0] == "OK"
    assert c.close()[0] == "OK"
    typ, data = c.status("Job", "(MESSAGES UIDVALIDITY)")
    assert typ == "OK" and b"MESSAGES 2" in data[0] and f"UIDVALIDITY {uv}".encode() in data[0]
    assert c.status("Work", "(MESSAGES)")[0] == "NO"
    c.select("Job")
    typ, data = c.fetch("1", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK" and b"UID 2" in data[0][0] and b"message 31" in data[0][1], data
    # The other session had the inferior selected: its folder was renamed and
    # a message flagged \Deleted by someone else; its CLOSE sees both.
    c.select("Job/Sub")
    c.store("1", "+FLAGS", "(\\Deleted)")
    c.unselect()
    out = r.cmd("s2 CLOSE")
    assert "s2 OK" in tagged(out, "s2") and not untagged(out, "EXPUNGE"), out
    r.close()
    typ, data = c.status("Job/Sub", "(MESSAGES)")
    assert b"MESSAGES 1" in data[0], data
    # Renaming onto an existing name or a missing folder changes nothing.
    c.create("Other")
    typ, data = c.rename("Job", "Other")
    assert typ == "NO" and b"ALREADYEXISTS" in data[0], data
    typ, data = c.rename("Ghost", "Spirit")
    assert typ == "NO" and b"NONEXISTENT" in data[0], data
    assert b"MESSAGES 2" in c.status("Job", "(MESSAGES)")[1][0]
    c.logout()


def test_copy_and_move_into_the_selected_folder(imap_tern):
    r = Raw(imap_tern)
    r.cmd("a1 SELECT INBOX")
    out = r.cmd("a2 UID COPY 1:2 INBOX")
    # The new messages are announced before the tagged OK, with their UIDs.
    assert "* 5 EXISTS" in [ln.strip() for ln in out], out
    assert re.search(r"a2 OK \[COPYUID \d+ 1:2 4:5\]", tagged(out, "a2")), out
    out = r.cmd("a3 FETCH 4:5 (UID BODY.PEEK[TEXT])")
    text = "".join(out)
    assert "body of message 1" in text and "body of message 2" in text, out
    # MOVE into the same folder: a new UID, the old one expunged, in order.
    out = r.cmd("a4 UID MOVE 3 INBOX")
    lines = [ln.strip() for ln in out]
    ok = next(i for i, ln in enumerate(lines) if "[COPYUID" in ln and ln.startswith("* OK"))
    exp = lines.index("* 3 EXPUNGE")
    assert ok < exp < len(lines) - 1 and "a4 OK" in lines[-1], lines
    assert re.search(r"COPYUID \d+ 3 6\]", lines[ok]), lines
    out = r.cmd("a5 UID SEARCH ALL")
    assert "* SEARCH 1 2 4 5 6" in [ln.strip() for ln in out], out
    r.close()


def test_examine_never_sets_seen(imap_tern):
    c = connect(imap_tern)
    typ, data = c.select("INBOX", readonly=True)
    assert typ == "OK"
    for item in ("(BODY[])", "(BODY[TEXT])", "(RFC822)", "(RFC822.TEXT)", "(BODY[1])"):
        typ, data = c.fetch("1", item)
        assert typ == "OK", (item, data)
        assert b"\\Seen" not in data[0][0], (item, data)
    assert c.store("1", "+FLAGS", "(\\Seen)")[0] == "NO"
    assert c.expunge()[0] == "NO"
    assert c.uid("MOVE", "1", "Trash")[0] == "NO"
    typ, data = c.copy("1", "Trash")  # reading is allowed: COPY works
    assert typ == "OK"
    assert c.close()[0] == "OK"
    c.select("INBOX")
    typ, data = c.fetch("1:*", "(FLAGS)")
    assert all(b"\\Seen" not in d for d in data), data
    typ, data = c.status("INBOX", "(UNSEEN)")
    assert b"UNSEEN 3" in data[0]
    c.logout()


def test_idle_reports_changes_by_other_sessions(imap_tern):
    r = Raw(imap_tern)
    r.cmd("a1 SELECT INBOX")
    r.send("a2 IDLE\r\n")
    assert r.line().startswith("+")
    other = connect(imap_tern)
    other.select("INBOX")
    t0 = time.time()
    other.store("2", "+FLAGS", "(\\Flagged)")
    ln = r.line()
    assert re.match(r"\* 2 FETCH \(UID 2 FLAGS \(\\Flagged\)\)", ln), ln
    assert time.time() - t0 < 1.0 * SLOW
    other.store("3", "+FLAGS", "(\\Deleted)")
    other.expunge()
    lines = [r.line()]  # the \Deleted flag (unless both changes fall in one tick), the expunge
    if lines[0].startswith("* 3 FETCH"):
        lines.append(r.line())
    assert lines[-1] == "* 3 EXPUNGE\r\n", lines
    r.send("DONE\r\n")
    assert "a2 OK" in tagged(r.until("a2"), "a2")
    out = r.cmd("a3 FETCH 1:* (UID)")
    assert len(untagged(out, "FETCH")) == 2, out
    other.logout()
    r.close()


def test_qresync_reports_vanished_not_expunge(imap_tern):
    r = Raw(imap_tern)
    r.cmd("a1 ENABLE QRESYNC")
    r.cmd("a2 SELECT INBOX")
    other = connect(imap_tern)
    other.select("INBOX")
    other.store("2", "+FLAGS", "(\\Deleted)")
    other.expunge()
    out = r.cmd("a3 NOOP")
    assert "* VANISHED 2\r\n" in out and not untagged(out, "EXPUNGE"), out
    # Re-selecting says where the old mailbox's responses end.
    out = r.cmd("a4 SELECT INBOX")
    closed = [i for i, ln in enumerate(out) if "[CLOSED]" in ln]
    assert closed and closed[0] < out.index("* 2 EXISTS\r\n"), out
    other.logout()
    r.close()


def test_uid_fetch_changedsince_vanished(imap_tern):
    r = Raw(imap_tern)
    out = r.cmd("a1 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")
    assert "a1 BAD" in tagged(out, "a1"), out  # not selected yet
    out = r.cmd("a2 SELECT INBOX")
    hms = int(re.search(r"HIGHESTMODSEQ (\d+)", "".join(out)).group(1))
    out = r.cmd("a3 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")
    assert "a3 BAD" in tagged(out, "a3"), out  # QRESYNC not enabled
    # Meanwhile another client flags one message and expunges another.
    other = connect(imap_tern)
    other.select("INBOX")
    other.store("3", "+FLAGS", "(\\Seen)")
    other.store("1", "+FLAGS", "(\\Deleted)")
    other.uid("EXPUNGE", "1")
    other.logout()
    r.cmd("a4 UNSELECT")
    assert "a5 OK" in tagged(r.cmd("a5 ENABLE QRESYNC"), "a5")
    r.cmd("a6 SELECT INBOX")
    # What changed since the modseq the client knew: UID 1 vanished, UID 3 changed.
    out = r.cmd(f"a7 UID FETCH 1:* (FLAGS) (CHANGEDSINCE {hms} VANISHED)")
    assert [ln for ln in out if "VANISHED" in ln] == ["* VANISHED (EARLIER) 1\r\n"], out
    fetches = untagged(out, "FETCH")
    assert len(fetches) == 1 and "UID 3" in fetches[0] and "\\Seen" in fetches[0], out
    assert "MODSEQ" in fetches[0] and "a7 OK" in tagged(out, "a7"), out
    # Without VANISHED only the changes; nothing more to announce afterwards.
    out = r.cmd(f"a8 UID FETCH 1:* (FLAGS) (CHANGEDSINCE {hms})")
    assert not [ln for ln in out if "VANISHED" in ln] and len(untagged(out, "FETCH")) == 1, out
    out = r.cmd("a9 NOOP")
    assert len(out) == 1 and "a9 OK" in out[0], out
    for bad_line in ("b1 FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)",  # UID FETCH only
                     "b1 UID FETCH 1:* (FLAGS) (VANISHED)",               # needs CHANGEDSINCE
                     "b1 UID FETCH 1:* (FLAGS) (CHANGEDSINCE x)",
                     "b1 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 0)",
                     "b1 UID FETCH 1:* (FLAGS) ()"):
        assert "b1 BAD" in tagged(r.cmd(bad_line), "b1"), bad_line
    r.close()


def test_status_corners(imap_tern):
    c = connect(imap_tern)
    typ, data = c.status("Nonexistent", "(MESSAGES)")
    assert typ == "NO" and b"NONEXISTENT" in data[0], data
    assert "BAD" in bad(c.status, "INBOX", "(MESSAGES BOGUS)")
    assert "BAD" in bad(c.status, "INBOX", "()")
    c.select("INBOX")
    c.store("1", "+FLAGS", "(\\Seen)")
    lmtp_deliver(imap_tern, ALICE, msg(7))
    typ, data = c.status("INBOX", "(MESSAGES UNSEEN UIDNEXT)")  # of the selected folder
    assert typ == "OK" and b"MESSAGES 4" in data[0] and b"UNSEEN 3" in data[0], data
    assert b"UIDNEXT 5" in data[0], data
    typ, data = c.status('"&ZeVnLIqe-"', "(MESSAGES)")
    assert typ == "NO"
    c.logout()


def test_unselect_check_and_special_use_listing(imap_tern):
    c = connect(imap_tern)
    c.select("INBOX")
    c.store("1", "+FLAGS", "(\\Deleted)")
    assert c.check()[0] == "OK"
    typ, _ = c.unselect()
    assert typ == "OK"
    assert b"MESSAGES 3" in c.status("INBOX", "(MESSAGES)")[1][0]  # nothing expunged
    typ, data = c.list('(SPECIAL-USE) ""', "*")
    names = sorted(d.decode() for d in data if d)
    assert len(names) == 4 and all(re.search(r"\\(Sent|Drafts|Trash|Junk)\b", n)
                                   for n in names), names
    assert "BAD" in bad(c.list, '(BOGUS) ""', "*")
    c.logout()
    r = Raw(imap_tern)
    assert "a1 BAD" in tagged(r.cmd("a1 UNSELECT"), "a1")  # nothing selected
    assert "a2 BAD" in tagged(r.cmd("a2 CHECK"), "a2")
    r.close()


def test_append_to_the_selected_folder_announces_it(imap_tern):
    r = Raw(imap_tern)
    r.cmd("a1 SELECT INBOX")
    body = msg(50).encode()
    r.send(b"a2 APPEND INBOX (\\Flagged) {%d+}\r\n" % len(body) + body + b"\r\n")
    out = r.until("a2")
    assert "* 4 EXISTS\r\n" in out and re.search(r"APPENDUID \d+ 4\]", tagged(out, "a2")), out
    # Pipelined commands are answered in order, IDLE and DONE in one packet too.
    r.send("b1 NOOP\r\nb2 IDLE\r\nDONE\r\nb3 FETCH 4 (FLAGS)\r\n")
    out = r.until("b3")
    tags = [ln.split(" ", 1)[0] for ln in out if not ln.startswith(("*", "+"))]
    assert tags == ["b1", "b2", "b3"], out
    assert "\\Flagged" in "".join(out)
    r.close()


def test_star_is_the_last_message_and_partial_past_the_end(imap_tern):
    c = connect(imap_tern)
    c.select("INBOX")
    typ, data = c.fetch("*:*", "(UID)")
    assert typ == "OK" and data == [b"3 (UID 3)"], data
    typ, data = c.fetch("*:2", "(UID)")
    assert [d.split()[0] for d in data] == [b"2", b"3"], data
    typ, data = c.fetch("1", "(BODY.PEEK[]<100000.10>)")
    assert typ == "OK" and data[0][1] == b"", data
    typ, data = c.uid("FETCH", "4:*", "(UID)")  # no UID >= 4: '*' is the last one
    assert typ == "OK" and data == [b"3 (UID 3)"], data
    typ, data = c.uid("FETCH", "100:200", "(UID)")
    assert typ == "OK" and data == [None], data
    c.logout()


def test_authenticate_continuation_and_cancel(imap_tern):
    r = Raw(imap_tern, login=False)
    r.send("a1 AUTHENTICATE PLAIN\r\n")
    assert r.line().startswith("+")
    r.send("*\r\n")
    assert "a1 BAD" in tagged(r.until("a1"), "a1")
    r.send("a2 AUTHENTICATE PLAIN\r\n")
    assert r.line().startswith("+")
    r.send(base64.b64encode(f"bob@example.org\0{ALICE}\0{PW}".encode()) + b"\r\n")
    assert "a2 NO" in tagged(r.until("a2"), "a2")  # no acting as another user
    r.send("a3 AUTHENTICATE PLAIN\r\n")
    assert r.line().startswith("+")
    r.send(base64.b64encode(f"{ALICE}\0{ALICE}\0{PW}".encode()) + b"\r\n")
    assert "a3 OK" in tagged(r.until("a3"), "a3")
    assert "a4 OK" in tagged(r.cmd("a4 SELECT INBOX"), "a4")
    r.close()


def test_too_many_bad_commands_end_the_session(imap_tern):
    r = Raw(imap_tern)
    for i in range(19):
        assert f"b{i} BAD" in tagged(r.cmd(f"b{i} BOGUS"), f"b{i}")
    assert "c1 OK" in tagged(r.cmd("c1 NOOP"), "c1")  # still in service after 19
    assert "b19 BAD" in tagged(r.cmd("b19 BOGUS"), "b19")
    assert r.line().startswith("* BYE")
    assert r.line() == ""  # closed
    r.close()


def test_sessions_in_all_are_capped(tmp_path):
    t = Tern(tmp_path, imap_extra="max_sessions = 2")
    t.setup_users(ALICE)
    t.serve()
    try:
        def greeting():
            with socket.create_connection(("127.0.0.1", t.ports["imap"]),
                                          timeout=10 * SLOW) as s:
                return s.makefile("rb").readline()

        a, b = connect(t), connect(t, user=None)
        g = greeting()
        assert g.startswith(b"* BYE"), g
        a.logout()
        assert wait_for(lambda: greeting().startswith(b"* OK"))
        b.logout()
    finally:
        t.stop()
    assert_imap_role_clean(t)


def test_idle_timeout_is_at_least_30_minutes(tmp_path):
    # Shorter than RFC 3501's 30 minutes is refused with a clear error ...
    t = Tern(tmp_path, imap_extra="idle_timeout = 1799")
    p = t.cli("user", "list", check=False)
    assert p.returncode != 0 and "idle_timeout" in p.stderr, p.stderr
    # ... and the default is what the role runs with (it says so in its log).
    (tmp_path / "b").mkdir()
    t2 = Tern(tmp_path / "b")
    t2.setup_users(ALICE)
    t2.serve()
    try:
        assert wait_for(lambda: "idle timeout 1800 s" in t2.log()), t2.log(3000)
    finally:
        t2.stop()
    assert_imap_role_clean(t2)


def test_failed_logins_are_counted_in_the_log(imap_tern):
    t = imap_tern
    r = Raw(t, login=False)
    assert "a1 NO" in tagged(r.cmd(f"a1 LOGIN {ALICE} Wr0ngPa55"), "a1")
    assert "a2 NO" in tagged(r.cmd("a2 LOGIN nobody@example.org Wr0ngPa55"), "a2")
    r.close()
    r = Raw(t, login=False)
    assert "a1 NO" in tagged(r.cmd(f'a1 LOGIN "{ALICE}\\\\x" Wr0ngPa55'), "a1")
    r.close()
    c = connect(t)
    c.logout()
    t.stop()
    assert_imap_role_clean(t)
    log = t.log()
    fails = [ln for ln in log.splitlines() if "failed login for" in ln]
    assert len(fails) == 3, fails
    assert f"'{ALICE}'" in fails[0] and "127.0.0.1:" in fails[0], fails
    assert re.search(r"1 in this session, 1 from this address, 1 in all", fails[0]), fails
    assert re.search(r"2 in this session, 2 from this address, 2 in all", fails[1]), fails
    assert re.search(r"1 in this session, 3 from this address, 3 in all", fails[2]), fails
    assert wrong_password_never_logged(log)
    assert re.search(r"imap: \d+ sessions, 1 logins, 3 failed logins", log), log[-2000:]


def wrong_password_never_logged(log):
    return "Wr0ngPa55" not in log


def test_concurrent_sessions(imap_tern):
    """Eight sessions at once (threads in the role): each appends to its own
    folder, reads, flags and searches; nothing of one shows up in another,
    and every result is what that session did."""
    t = imap_tern
    errors = []

    def worker(k):
        try:
            c = connect(t)
            name = f"T{k}"
            assert c.create(name)[0] == "OK"
            for i in range(5):
                assert c.append(name, None, None, msg(100 * k + i, body=f"w{k} {i}").encode())[0] \
                    == "OK"
            c.select(name)
            for _ in range(3):
                typ, data = c.fetch("1:*", "(UID FLAGS BODYSTRUCTURE ENVELOPE BODY.PEEK[TEXT])")
                assert typ == "OK" and len([d for d in data if isinstance(d, tuple)]) == 5
                assert all(f"w{k} ".encode() in d[1] for d in data if isinstance(d, tuple))
            c.store("2:3", "+FLAGS", "(\\Flagged)")
            typ, data = c.search(None, "FLAGGED")
            assert data[0] == b"2 3", data
            typ, data = c.search(None, "BODY", f"w{k}")
            assert data[0] == b"1 2 3 4 5", data
            c.logout()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"{k}: {e!r}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60 * SLOW)
    assert not errors, errors
    c = connect(t)
    for k in range(8):
        assert b"MESSAGES 5" in c.status(f"T{k}", "(MESSAGES)")[1][0]
    c.logout()


def test_conditional_store_reports_every_modified_uid(imap_tern):
    """A [MODIFIED set] longer than any fixed reply buffer comes whole."""
    r = Raw(imap_tern)
    body = b"Subject: x\r\n\r\nx\r\n"
    r.send(b"".join(b"p%d APPEND INBOX {%d+}\r\n%s\r\n" % (i, len(body), body)
                    for i in range(300)))
    for i in range(300):
        assert f"p{i} OK" in tagged(r.until(f"p{i}"), f"p{i}")
    r.cmd("a1 SELECT INBOX")
    uids = list(range(1, 304, 2))  # 152 UIDs, none adjacent to the next
    out = r.cmd(f"a2 UID STORE {','.join(map(str, uids))} (UNCHANGEDSINCE 1) +FLAGS (\\Seen)")
    m = re.match(r"a2 OK \[MODIFIED ([0-9,:]+)\] ", tagged(out, "a2"))
    assert m, tagged(out, "a2")[:300]
    assert [int(u) for u in m.group(1).split(",")] == uids
    out = r.cmd("a3 SEARCH SEEN")
    assert "* SEARCH\r\n" in out, out  # nothing was changed
    r.close()


def test_stop_during_authenticate_says_bye(imap_tern):
    t = imap_tern
    r = Raw(t, login=False)
    r.send("a1 AUTHENTICATE PLAIN\r\n")
    assert r.line().startswith("+")
    t0 = time.time()
    t.stop()
    assert r.line().startswith("* BYE")
    assert time.time() - t0 < 4 * SLOW
    r.close()
    assert_imap_role_clean(t)


def test_keywords_are_case_insensitive_like_the_store(imap_tern):
    c = connect(imap_tern)
    c.select("INBOX")
    typ, data = c.store("1", "+FLAGS", "(Work $Label1 work)")
    assert typ == "OK" and data[0].count(b"ork") == 1, data
    typ, data = c.store("1", "-FLAGS", "(WORK)")  # the reply shows what the store holds
    assert b"FLAGS ($Label1)" in data[0], data
    typ, data = c.store("1", "+FLAGS", "($label1 Other)")
    assert b"FLAGS ($Label1 Other)" in data[0], data
    typ, data = c.store("1", "FLAGS", "(\\Seen A a B)")
    assert b"FLAGS (\\Seen A B)" in data[0], data
    other = connect(imap_tern)
    other.select("INBOX")
    typ, data = other.fetch("1", "(FLAGS)")
    assert b"FLAGS (\\Seen A B)" in data[0], data
    assert other.search(None, "KEYWORD", "b")[1][0] == b"1"
    other.logout()
    c.logout()


def test_syntax_corners_clients_use(imap_tern):
    r = Raw(imap_tern)
    r.cmd("a1 SELECT INBOX")
    # header-fld-name is an astring: quoted names work as atoms do.
    out = r.cmd('a2 FETCH 1 (BODY.PEEK[HEADER.FIELDS ("Subject" "Message-ID")])')
    assert "a2 OK" in tagged(out, "a2"), out
    text = "".join(out)
    assert "Subject: message 1" in text and "Message-ID: <m1@" in text and "From:" not in text
    for bad_spec in ('("")', '("Sub ject")', '("Subject)', '("Sub:ject")'):
        out = r.cmd(f"a3 FETCH 1 (BODY.PEEK[HEADER.FIELDS {bad_spec}])")
        assert "a3 BAD" in tagged(out, "a3"), (bad_spec, out)
    # Numbers: no overflow, no sign.
    for line in ("b1 SEARCH LARGER 99999999999999999999999",
                 "b1 SEARCH SMALLER 4294967296",
                 "b1 SEARCH MODSEQ -1",
                 "b1 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 99999999999999999999999)",
                 "b1 UID FETCH 1:* (FLAGS) (CHANGEDSINCE +5)",
                 "b1 STORE 1 (UNCHANGEDSINCE 18446744073709551616) +FLAGS (\\Seen)",
                 "b1 STORE 1 (UNCHANGEDSINCE -1) +FLAGS (\\Seen)"):
        assert "b1 BAD" in tagged(r.cmd(line), "b1"), line
    assert "* SEARCH\r\n" in r.cmd("b2 SEARCH SEEN")  # none of that stored anything
    # APPEND's date-time with a one-digit day, as some clients send it.
    body = b"Subject: d\r\n\r\nd\r\n"
    r.send(b'c1 APPEND INBOX "5-Jan-2021 10:20:30 +0200" {%d+}\r\n%s\r\n' % (len(body), body))
    assert "c1 OK" in tagged(r.until("c1"), "c1")
    out = r.cmd("c2 FETCH 4 (INTERNALDATE)")
    assert '"05-Jan-2021 08:20:30 +0000"' in "".join(out), out
    r.close()
    # Folder names that need quoting travel both ways.
    c = connect(imap_tern)
    for name in ('we"ird\\name', "with space", "#hash", "~tilde"):
        quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        assert c.create(quoted)[0] == "OK", name
        typ, data = c.list('""', quoted)
        assert typ == "OK" and len(data) == 1 and data[0] is not None, (name, data)
        assert data[0].endswith(b' "/" ' + quoted.encode()) or \
            data[0].endswith(b' "/" ' + name.encode()), (name, data)
        assert c.select(quoted)[0] == "OK", name
        assert c.append(quoted, None, None, msg(60).encode())[0] == "OK"
        assert b"MESSAGES 1" in c.status(quoted, "(MESSAGES)")[1][0]
    c.logout()


def test_folder_lifecycle_corners(imap_tern):
    c = connect(imap_tern)
    # A name deleted and created again gets a new, larger UIDVALIDITY.
    c.create("X")
    uv1 = int(re.search(rb"UIDVALIDITY (\d+)", c.status("X", "(UIDVALIDITY)")[1][0]).group(1))
    c.append("X", None, None, msg(70).encode())
    assert c.delete("X")[0] == "OK"
    assert c.status("X", "(MESSAGES)")[0] == "NO"
    c.create("X")
    typ, data = c.status("X", "(MESSAGES UIDVALIDITY UIDNEXT)")
    uv2 = int(re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1))
    assert uv2 > uv1 and b"MESSAGES 0" in data[0] and b"UIDNEXT 1" in data[0], data
    # LSUB with '%' shows the parent of a subscribed name as \Noselect.
    assert c.subscribe("Lists/tern/dev")[0] == "OK"
    typ, data = c.lsub('""', "%")
    # (INBOX and the special-use folders are subscribed at the first login.)
    assert [d for d in data if b"Lists" in d] == [b'(\\Noselect) "/" Lists'], data
    typ, data = c.lsub('""', "Lists/%")
    assert data == [b'(\\Noselect) "/" Lists/tern'], data
    typ, data = c.lsub('""', "*")
    assert [d for d in data if d.endswith(b"Lists/tern/dev")], data
    # A folder deleted under a session that has it selected: its messages go.
    c.select("X")
    c.append("X", None, None, msg(71).encode())
    c.noop()
    other = connect(imap_tern)
    assert other.delete("X")[0] == "OK"
    other.logout()
    typ, _ = c.noop()
    assert typ == "OK" and c.untagged_responses.get("EXPUNGE") == [b"1"], c.untagged_responses
    assert "BAD" in bad(c.fetch, "1", "(FLAGS)")
    c.logout()


def test_nesting_is_capped_at_max_nesting(tmp_path):
    t = Tern(tmp_path, imap_extra="max_nesting = 4")
    t.setup_users(ALICE)
    t.serve()
    try:
        lmtp_deliver(t, ALICE, msg(1))
        r = Raw(t)
        r.cmd("a1 SELECT INBOX")
        out = r.cmd("a2 SEARCH ((((ALL))))")  # 4 deep: the limit
        assert "* SEARCH 1\r\n" in out and "a2 OK" in tagged(out, "a2"), out
        out = r.cmd("a3 SEARCH (((((ALL)))))")  # 5 deep
        assert "a3 BAD" in tagged(out, "a3"), out
        out = r.cmd("a4 FETCH 1 (FLAGS (((((UID))))))")
        assert "a4 BAD" in tagged(out, "a4"), out
        assert "a5 OK" in tagged(r.cmd("a5 NOOP"), "a5")
        r.close()
    finally:
        t.stop()
    assert_imap_role_clean(t)


def test_failed_logins_from_one_address_slow_down_across_sessions(imap_tern):
    """auth_fail_delay_ms is 50 and auth_fail_max 3 in the test config: the
    first three failures from 127.0.0.1 take 50 ms each; reconnecting after
    the session's BYE does not reset that: the 4th takes 100 ms, the 5th
    200, the 6th 400."""
    t = imap_tern
    took = []
    for session in range(2):
        r = Raw(t, login=False)
        for i in range(3):
            t0 = time.time()
            assert "a NO" in tagged(r.cmd(f"a LOGIN {ALICE} Wr0ng{session}{i}"), "a")
            took.append(time.time() - t0)
        assert r.line().startswith("* BYE")
        r.close()
    assert all(d >= 0.05 for d in took[:3]), took
    assert took[3] >= 0.1 and took[4] >= 0.2 and took[5] >= 0.4, took
    # The right password still works at once (a delay, never a lockout).
    t0 = time.time()
    c = connect(t)
    c.logout()
    assert time.time() - t0 < 5 * SLOW
    fails = [ln for ln in t.log().splitlines() if "failed login for" in ln]
    assert "6 from this address" in fails[-1] and "answered after 400 ms" in fails[-1], fails


def test_condstore_state_survives_a_move(imap_tern):
    """A client's HIGHESTMODSEQ from before a move still finds, after it,
    every change it has not seen (CHANGEDSINCE / QRESYNC), and the new
    home's HIGHESTMODSEQ is not below it."""
    t = imap_tern
    for i in range(4, 31):
        lmtp_deliver(t, ALICE, msg(i))
    c = connect(t)
    c.select("INBOX")
    # Many changes on the source: its modseq runs far ahead of what a plain
    # copy of 30 messages would count up to on the destination.
    for _ in range(60):
        c.store("1", "+FLAGS.SILENT", "(\\Answered)")
        c.store("1", "-FLAGS.SILENT", "(\\Answered)")
    c.select("INBOX")
    uv = int(c.untagged_responses["UIDVALIDITY"][0])
    hms = int(c.untagged_responses["HIGHESTMODSEQ"][0])
    assert hms > 120
    c.store("5", "+FLAGS", "(\\Flagged)")   # a change after the client's state
    c.logout()
    p = t.cli("move", ALICE, "--to", "s2", "--wait")
    assert p.returncode == 0, p.stderr
    assert wait_for(lambda: "s2" in t.cli("user", "show", ALICE).stdout)
    r = Raw(t)
    r.cmd("a1 ENABLE QRESYNC")
    out = r.cmd(f"a2 SELECT INBOX (QRESYNC ({uv} {hms}))")
    text = "".join(out)
    assert "a2 OK" in tagged(out, "a2"), text
    after = int(re.search(r"HIGHESTMODSEQ (\d+)", text).group(1))
    assert after >= hms
    assert re.search(r"\* 5 FETCH \(UID 5 FLAGS \(\\Flagged\)", text), text
    out = r.cmd(f"a3 FETCH 1:* (FLAGS) (CHANGEDSINCE {hms})")
    assert any(ln.startswith("* 5 FETCH") and "\\Flagged" in ln for ln in out), out
    r.close()
