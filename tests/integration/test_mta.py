"""The mta role: SMTP in, durable queue, routing, delivery over LMTP,
retries, parking, DSNs and alternate recipients. Python's smtplib (and
swaks, when installed) are the independent clients."""
import re
import shutil
import smtplib
import sqlite3
import subprocess
import time

import pytest

from conftest import SLOW, TERN_BIN, Tern
from test_lmtp import Raw

MSG = b"From: carol@example.org\r\nSubject: hi\r\n\r\nhello\r\n"


def smtp(t):
    return smtplib.SMTP("127.0.0.1", t.ports["smtp"], timeout=30 * SLOW)


def wait_for(pred, timeout=10.0):
    deadline = time.time() + timeout * SLOW
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def count(t, user, needle):
    return t.export(user).count(needle)


def mta(tmp_path, users=("alice@example.org", "bob@example.org", "carol@example.org"),
        homes=None, **kw):
    t = Tern(tmp_path, **kw)
    t.cli("domain", "add", "example.org")
    for u in users:
        store = (homes or {}).get(u, "s1")
        t.cli("user", "add", u, "--password", "secret", "--store", store)
    return t


@pytest.fixture
def m(tmp_path):
    t = mta(tmp_path, homes={"bob@example.org": "s2"})
    t.serve()
    yield t
    t.stop()


# ---- SMTP server ----------------------------------------------------------

def test_ehlo_and_deliver(m):
    with smtp(m) as c:
        code, text = c.ehlo("client.example.net")
        assert code == 250
        for ext in ("pipelining", "size", "8bitmime", "enhancedstatuscodes"):
            assert c.has_extn(ext), ext
        assert c.esmtp_features["size"] == str(25 * 1024 * 1024)
        assert c.sendmail("carol@example.org", ["alice@example.org", "bob@example.org"],
                          MSG) == {}
    assert wait_for(lambda: count(m, "alice@example.org", "Subject: hi") == 1)
    assert wait_for(lambda: count(m, "bob@example.org", "Subject: hi") == 1)
    box = m.export("alice@example.org")
    assert re.search(r"Received: from client\.example\.net \(127\.0\.0\.1:\d+\)\n\tby mx\.test "
                     r"\(tern\) with ESMTP;", box), box[:400]
    assert "Return-Path: <carol@example.org>" in box
    assert m.wait_queue_empty()


def test_helo_vrfy_help_noop_rset(m):
    r = Raw(m.ports["smtp"])
    assert r.greeting[0] == 220 and "ESMTP" in r.greeting[1]
    assert r.cmd("HELO x")[0] == 250
    assert r.cmd("VRFY alice")[0] == 252
    assert r.cmd("HELP")[0] == 214
    assert r.cmd("NOOP")[0] == 250
    assert r.cmd("MAIL FROM:<a@example.org>")[0] == 250
    assert r.cmd("RSET")[0] == 250
    assert r.cmd("RCPT TO:<alice@example.org>")[0] == 503
    assert r.cmd("LHLO x")[0] == 500
    assert r.cmd("QUIT")[0] == 221


def test_unknown_user_and_relaying(m):
    with smtp(m) as c:
        c.ehlo("x")
        c.mail("carol@example.org")
        code, text = c.rcpt("nobody@example.org")
        assert code == 550 and text.startswith(b"5.1.1")
        code, text = c.rcpt("someone@elsewhere.net")
        assert code == 550 and text.startswith(b"5.7.1") and b"relaying denied" in text


def test_pipelining(m):
    r = Raw(m.ports["smtp"])
    r.send(b"EHLO x\r\nMAIL FROM:<carol@example.org>\r\nRCPT TO:<alice@example.org>\r\n"
           b"RCPT TO:<nobody@example.org>\r\nDATA\r\nSubject: piped\r\n\r\n.\r\n"
           b"MAIL FROM:<>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\nSubject: piped2\r\n\r\n.\r\n"
           b"QUIT\r\n")
    codes = [r.reply()[0] for _ in range(11)]
    assert codes == [250, 250, 250, 550, 354, 250, 250, 250, 354, 250, 221]
    assert wait_for(lambda: count(m, "alice@example.org", "Subject: piped") == 1)
    assert wait_for(lambda: count(m, "bob@example.org", "Subject: piped2") == 1)


def test_recipient_limit(m):
    r = Raw(m.ports["smtp"])
    r.cmd("EHLO x")
    r.cmd("MAIL FROM:<carol@example.org>")
    # 1000 accepted RCPTs (duplicates count: it is the command that counts).
    r.send(b"RCPT TO:<alice@example.org>\r\n" * 1000)
    codes = [r.reply()[0] for _ in range(1000)]
    assert set(codes) == {250}
    code, text = r.cmd("RCPT TO:<bob@example.org>")
    assert code == 452 and "4.5.3" in text
    assert r.cmd("DATA")[0] == 354
    r.send(b"Subject: many\r\n\r\n.\r\n")
    assert r.reply()[0] == 250
    assert wait_for(lambda: count(m, "alice@example.org", "Subject: many") == 1)


@pytest.mark.parametrize("cmds,code,enh", [
    (["EHLO x", "RCPT TO:<alice@example.org>"], 503, "5.5.1"),
    (["EHLO x", "MAIL FROM:<carol@example.org>", "DATA"], 503, "5.5.1"),
    (["MAIL FROM:<carol@example.org>"], 503, "5.5.1"),
    (["EHLO x", "MAIL FROM:carol@example.org"], 501, "5.1.7"),
    (["EHLO x", "MAIL FROM:<carol@@example.org>"], 501, "5.1.7"),
    (["EHLO x", "MAIL FROM:<carol@example.org> FROB=1"], 555, "5.5.4"),
    (["EHLO x", "MAIL FROM:<carol@example.org> BODY=BINARYMIME"], 501, "5.5.4"),
    (["EHLO x", "MAIL FROM:<carol@example.org> SIZE=999999999999"], 552, "5.3.4"),
    (["EHLO x", "MAIL FROM:<>", "RCPT TO:<alice@example.org> NOTIFY=NEVER"], 555, "5.5.4"),
    (["EHLO x", "NOOP " + "x" * 600], 500, "5.5.2"),
    (["EHLO x", "FROB"], 500, "5.5.1"),
    (["EHLO x", "STARTTLS"], 502, "5.5.1"),
])
def test_bad_commands(m, cmds, code, enh):
    r = Raw(m.ports["smtp"])
    for c in cmds[:-1]:
        assert r.cmd(c)[0] == 250, c
    got, text = r.cmd(cmds[-1])
    assert got == code and enh in text, text
    assert r.cmd("NOOP")[0] == 250
    assert "queue is empty" in m.queue()


@pytest.mark.parametrize("line", [b"NO\nOP", b"NO\rOP", b"NO\x00OP"])
def test_bad_bytes_in_commands(m, line):
    r = Raw(m.ports["smtp"])
    r.cmd("EHLO x")
    r.send(line + b"\r\n")
    code, text = r.reply()
    assert code == 500 and "5.5.2" in text


@pytest.mark.parametrize("body,code", [
    (b"Subject: x\r\n\r\nbare\nlf\r\n", 554),
    (b"Subject: x\r\n\r\nbare\rcr\r\n", 554),
    (b"Subject: x\r\n\r\nnul\x00\r\n", 554),
    (b"Subject: x\r\n\r\n" + b"z" * 1001 + b"\r\n", 554),
    # "\n.\n" is not the end of data: no smuggled second message.
    (b"Subject: x\r\n\r\nx\n.\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<bob@example.org>\r\n",
     554),
])
def test_bad_message_refused_whole(m, body, code):
    r = Raw(m.ports["smtp"])
    for c in ("EHLO x", "MAIL FROM:<carol@example.org>", "RCPT TO:<alice@example.org>"):
        assert r.cmd(c)[0] == 250
    assert r.cmd("DATA")[0] == 354
    r.send(body + b".\r\n")
    got, text = r.reply()
    assert got == code, text
    assert r.cmd("NOOP")[0] == 250
    assert "queue is empty" in m.queue()
    assert m.export("alice@example.org") == ""


def test_disconnect_mid_data_queues_nothing(m):
    r = Raw(m.ports["smtp"])
    for c in ("EHLO x", "MAIL FROM:<carol@example.org>", "RCPT TO:<alice@example.org>"):
        r.cmd(c)
    r.cmd("DATA")
    r.send(b"Subject: cut\r\n\r\nhalf")
    r.close()
    time.sleep(0.3 * SLOW)
    assert "queue is empty" in m.queue()
    assert m.export("alice@example.org") == ""


def test_size_limit_exact_and_one_over(tmp_path):
    t = mta(tmp_path, smtp_extra="max_message_size = 4096")
    t.serve()
    try:
        def body(n):
            b = b"Subject: sz\r\n\r\n"
            while len(b) + 100 < n:
                b += b"x" * 78 + b"\r\n"
            return b + b"y" * (n - len(b) - 2) + b"\r\n"
        with smtp(t) as c:
            assert c.sendmail("carol@example.org", ["alice@example.org"], body(4096)) == {}
            # smtplib declares SIZE=: refused at MAIL.
            with pytest.raises(smtplib.SMTPSenderRefused) as e:
                c.sendmail("carol@example.org", ["alice@example.org"], body(4097))
            assert e.value.smtp_code == 552
        # Undeclared: the excess is found in DATA and the message refused whole.
        r = Raw(t.ports["smtp"])
        for cmd in ("EHLO x", "MAIL FROM:<carol@example.org>", "RCPT TO:<alice@example.org>"):
            assert r.cmd(cmd)[0] == 250
        assert r.cmd("DATA")[0] == 354
        r.send(body(4097).replace(b"Subject: sz", b"Subject: s2") + b".\r\n")
        code, text = r.reply()
        assert code == 552 and "5.3.4" in text
        assert wait_for(lambda: count(t, "alice@example.org", "Subject: sz") == 1)
        assert t.wait_queue_empty()
        assert count(t, "alice@example.org", "Subject: s2") == 0
    finally:
        t.stop()


def test_slow_client_deadline(tmp_path):
    t = mta(tmp_path, smtp_extra="session_deadline = 2")
    t.serve()
    try:
        r = Raw(t.ports["smtp"])
        start = time.time()
        with pytest.raises((EOFError, OSError)):
            for _ in range(100):
                r.send(b"N")
                time.sleep(0.1)
                if time.time() - start > 8 * SLOW:
                    break
            r.reply()
            r.reply()
        assert time.time() - start < 8 * SLOW
    finally:
        t.stop()


def test_directory_outage_is_temporary(tmp_path, monkeypatch):
    t = mta(tmp_path)
    monkeypatch.setenv("TERN_FAULT", "fail:dir_resolve")
    t.serve()
    try:
        r = Raw(t.ports["smtp"])
        r.cmd("EHLO x")
        r.cmd("MAIL FROM:<carol@example.org>")
        code, text = r.cmd("RCPT TO:<alice@example.org>")
        assert code == 451 and "4.4.3" in text
    finally:
        t.stop()


# ---- routing: aliases, alternates, duplicates ----------------------------

def test_alias_and_duplicates_delivered_once(m):
    m.cli("alias", "add", "al@example.org", "alice@example.org")
    with smtp(m) as c:
        c.sendmail("carol@example.org",
                   ["alice@example.org", "al@example.org", "ALICE@example.org"], MSG)
    assert wait_for(lambda: m.wait_queue_empty(1))
    assert count(m, "alice@example.org", "Subject: hi") == 1


def test_alternate_only(m):
    m.cli("user", "set", "alice@example.org", "--alternate", "bob@example.org")
    with smtp(m) as c:
        c.sendmail("carol@example.org", ["alice@example.org"], MSG)
    assert wait_for(lambda: count(m, "bob@example.org", "Subject: hi") == 1)
    assert m.wait_queue_empty()
    assert count(m, "alice@example.org", "Subject: hi") == 0


def test_alternate_deliver_both(m):
    m.cli("user", "set", "alice@example.org", "--alternate", "bob@example.org",
          "--deliver-both")
    with smtp(m) as c:
        c.sendmail("carol@example.org", ["alice@example.org", "bob@example.org"], MSG)
    assert wait_for(lambda: m.wait_queue_empty(1))
    assert count(m, "alice@example.org", "Subject: hi") == 1
    assert count(m, "bob@example.org", "Subject: hi") == 1  # bob once, not twice


# ---- the background reports ---------------------------------------------

def test_q248839_primary_parked_then_delivered(tmp_path):
    """Alternate + deliver-both; the primary's store is fenced while the
    alternate is delivered: the primary copy arrives after the fence lifts."""
    t = mta(tmp_path, homes={"bob@example.org": "s2"}, queue_extra="park_max_ms = 200")
    t.serve()
    try:
        t.cli("user", "set", "alice@example.org", "--alternate", "bob@example.org",
              "--deliver-both")
        with smtp(t) as c:  # creates alice's mailbox
            c.sendmail("carol@example.org", ["alice@example.org"], b"Subject: first\r\n\r\n.\r\n")
        assert t.wait_queue_empty()
        t.cli("mailbox", "fence", "alice@example.org")
        with smtp(t) as c:
            c.sendmail("carol@example.org", ["alice@example.org"], MSG)
        assert wait_for(lambda: count(t, "bob@example.org", "Subject: hi") == 1)
        assert wait_for(lambda: "parked" in t.queue())
        q = t.queue()
        assert re.search(r"alice@example\.org\s+parked", q), q
        assert "move in progress" in q
        time.sleep(1.0)
        assert count(t, "alice@example.org", "Subject: hi") == 0
        t.cli("mailbox", "unfence", "alice@example.org")
        assert wait_for(lambda: count(t, "alice@example.org", "Subject: hi") == 1, 3)
        assert t.wait_queue_empty()
        assert count(t, "bob@example.org", "Subject: hi") == 1
        assert "Undelivered" not in t.export("carol@example.org")
    finally:
        t.stop()


def test_q248839_primary_never_unfenced_gets_dsn(tmp_path):
    """...or, if it cannot within the lifetime, the sender gets a DSN naming
    the primary (and the alternate has exactly one copy)."""
    t = mta(tmp_path, homes={"bob@example.org": "s2"},
            queue_extra="park_max_ms = 200\nlifetime = 3")
    t.serve()
    try:
        t.cli("user", "set", "alice@example.org", "--alternate", "bob@example.org",
              "--deliver-both")
        with smtp(t) as c:
            c.sendmail("carol@example.org", ["alice@example.org"], b"Subject: first\r\n\r\n.\r\n")
        assert t.wait_queue_empty()
        t.cli("mailbox", "fence", "alice@example.org")
        with smtp(t) as c:
            c.sendmail("carol@example.org", ["alice@example.org"], MSG)
        assert wait_for(lambda: "Undelivered" in t.export("carol@example.org"), 10)
        dsn = t.export("carol@example.org")
        assert "Content-Type: multipart/report; report-type=delivery-status" in dsn.replace(
            "\n\t", " ").replace("\n ", " ")
        assert "Final-Recipient: rfc822; alice@example.org" in dsn
        assert "Action: failed" in dsn
        assert "Status: 4.4.7" in dsn
        assert "Return-Path: <>" in dsn
        assert "Subject: hi" in dsn  # the original's headers
        assert "bob@example.org" not in dsn.split("Final-Recipient")[1].split("\n")[0]
        assert count(t, "bob@example.org", "Subject: hi") == 1
        assert t.wait_queue_empty()
    finally:
        t.stop()


def test_q172364_stale_cache_follows_redirect(m):
    # Warm the mta's cache (TTL 60 s) with alice on s1.
    with smtp(m) as c:
        c.sendmail("carol@example.org", ["alice@example.org"], b"Subject: warm\r\n\r\n.\r\n")
    assert wait_for(lambda: count(m, "alice@example.org", "Subject: warm") == 1)
    # Re-home alice behind the mta's back.
    db = sqlite3.connect(m.data / "directory.db")
    db.execute("update users set home='s2', version=version+1 where address='alice@example.org'")
    db.commit()
    db.close()
    start = time.time()
    with smtp(m) as c:
        c.sendmail("carol@example.org", ["alice@example.org"], MSG)
    assert wait_for(lambda: count(m, "alice@example.org", "Subject: hi") == 1, 1)
    assert time.time() - start < 1.0 * SLOW
    assert "moved from s1 to s2" in m.log()
    assert m.wait_queue_empty()
    assert "Undelivered" not in m.export("carol@example.org")
    assert count(m, "alice@example.org", "Subject: hi") == 1


# ---- retries, lifetime, DSNs ------------------------------------------------

def test_store_down_retried_on_schedule(tmp_path):
    t = mta(tmp_path, homes={"bob@example.org": "s2"},
            queue_extra="retry_min = 1\nretry_max = 1")
    t.serve("--roles", "mta,store:s1")
    try:
        with smtp(t) as c:
            c.sendmail("carol@example.org", ["bob@example.org"], MSG)
        assert wait_for(lambda: re.search(r"attempts [2-9]", t.queue()) is not None, 10)
        q = t.queue()
        assert "unreachable" in q and "pending" in q
        # Bring s2 up by hand: the next retry delivers.
        s2 = subprocess.Popen([TERN_BIN, "--data", str(t.data), "--config", str(t.config),
                               "role", "store", "s2"], stderr=subprocess.DEVNULL)
        try:
            assert wait_for(lambda: t.wait_queue_empty(1), 10)
            assert count(t, "bob@example.org", "Subject: hi") == 1
        finally:
            s2.terminate()
            s2.wait()
    finally:
        t.stop()


def test_failure_dsn_and_null_sender_no_loop(tmp_path):
    t = mta(tmp_path, queue_extra="lifetime = 2\npark_max_ms = 200")
    t.serve()
    try:
        with smtp(t) as c:
            c.sendmail("carol@example.org", ["alice@example.org"], b"Subject: first\r\n\r\n.\r\n")
        assert t.wait_queue_empty()
        t.cli("mailbox", "fence", "alice@example.org")
        with smtp(t) as c:
            # A spoofed null sender with a real message: accepted...
            c.sendmail("", ["alice@example.org"], b"Subject: from-null\r\n\r\nbody\r\n")
            c.sendmail("carol@example.org", ["alice@example.org"], b"Subject: from-carol\r\n\r\n.\r\n")
        # ...and its failure produces no DSN; carol's produces one.
        assert wait_for(lambda: t.wait_queue_empty(1), 15)
        carol = t.export("carol@example.org")
        assert carol.count("Undelivered Mail") == 1
        assert "Subject: from-carol" in carol and "Subject: from-null" not in carol
        assert "no DSN for a null sender" in t.log()
        t.cli("mailbox", "unfence", "alice@example.org")
        # A null-sender message that can be delivered is delivered.
        with smtp(t) as c:
            c.sendmail("", ["alice@example.org"], b"Subject: null-ok\r\n\r\n.\r\n")
        assert wait_for(lambda: count(t, "alice@example.org", "Subject: null-ok") == 1)
    finally:
        t.stop()


def test_dsn_to_remote_sender_is_dropped_not_looped(tmp_path):
    t = mta(tmp_path, queue_extra="lifetime = 1\npark_max_ms = 100")
    t.serve()
    try:
        with smtp(t) as c:
            c.sendmail("x@example.org", ["alice@example.org"], b"Subject: first\r\n\r\n.\r\n")
        assert t.wait_queue_empty()
        t.cli("mailbox", "fence", "alice@example.org")
        with smtp(t) as c:
            c.sendmail("someone@remote.example", ["alice@example.org"], MSG)
        assert wait_for(lambda: t.wait_queue_empty(1), 15)
        assert "DSN" in t.log() and "no DSN for a null sender" in t.log()
    finally:
        t.stop()


# ---- the queue: CLI, flush, quarantine, restart ------------------------------

def test_queue_show_and_flush(tmp_path):
    t = mta(tmp_path, homes={"bob@example.org": "s2"},
            queue_extra="retry_min = 3600\nretry_max = 3600")
    t.serve("--roles", "mta,store:s1")
    try:
        with smtp(t) as c:
            c.sendmail("carol@example.org", ["bob@example.org", "alice@example.org"], MSG)
        assert wait_for(lambda: "attempts 1" in t.queue())
        q = t.queue()
        qid = re.search(r"^([0-9a-f]{16})\s", q, re.M).group(1)
        show = t.cli("queue", "show", qid).stdout
        assert re.search(r"bob@example\.org\s+pending\s+attempts 1\s+next 20", show), show
        assert re.search(r"alice@example\.org\s+delivered", show), show
        assert "expires:" in show
        assert t.cli("queue", "show", "0" * 16, check=False).returncode == 1
        assert "1 recipient(s) due now" in t.cli("queue", "flush").stdout
        assert wait_for(lambda: "attempts 2" in t.queue())
    finally:
        t.stop()


def test_queue_survives_restart(tmp_path):
    t = mta(tmp_path, homes={"bob@example.org": "s2"}, queue_extra="retry_min = 1\nretry_max = 1")
    t.serve("--roles", "mta,store:s1")
    with smtp(t) as c:
        c.sendmail("carol@example.org", ["bob@example.org"], MSG)
    assert wait_for(lambda: "attempts" in t.queue())
    t.stop()
    t.serve()
    try:
        assert wait_for(lambda: count(t, "bob@example.org", "Subject: hi") == 1, 10)
        assert t.wait_queue_empty()
    finally:
        t.stop()


def test_damaged_entry_quarantined(tmp_path):
    t = mta(tmp_path, homes={"bob@example.org": "s2"}, queue_extra="retry_min = 1\nretry_max = 1")
    t.serve("--roles", "mta,store:s1")
    with smtp(t) as c:
        c.sendmail("carol@example.org", ["bob@example.org"], b"Subject: damaged\r\n\r\nx\r\n")
    assert wait_for(lambda: "attempts" in t.queue())
    t.stop()
    db = sqlite3.connect(t.data / "queue" / "queue.db")
    db.execute("update messages set body = cast('Subject: forged' as blob), "
               "size = length(cast('Subject: forged' as blob))")
    db.commit()
    db.close()
    t.serve()
    try:
        assert wait_for(lambda: "QUARANTINED" in t.queue(), 10)
        assert "self-validation" in t.queue()
        time.sleep(1.5)
        assert count(t, "bob@example.org", "forged") == 0
        assert count(t, "bob@example.org", "damaged") == 0
    finally:
        t.stop()


def test_swaks_as_second_client(m):
    swaks = shutil.which("swaks")
    if swaks is None:
        pytest.skip("swaks is not installed (.ci/run installs it)")
    p = subprocess.run([swaks, "--server", f"127.0.0.1:{m.ports['smtp']}", "--from",
                        "carol@example.org", "--to", "alice@example.org", "--header",
                        "Subject: via swaks", "--body", "hello from swaks"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert wait_for(lambda: count(m, "alice@example.org", "Subject: via swaks") == 1)
    p = subprocess.run([swaks, "--server", f"127.0.0.1:{m.ports['smtp']}", "--from",
                        "carol@example.org", "--to", "nobody@example.org"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "550 5.1.1" in p.stdout
