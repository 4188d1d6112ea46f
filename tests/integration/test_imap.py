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


@pytest.fixture
def imap_tern(tmp_path):
    t = Tern(tmp_path)
    t.setup_users(ALICE, "bob@example.org")
    t.serve()
    for i in range(1, 4):
        lmtp_deliver(t, ALICE, msg(i))
    yield t
    t.stop()


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
