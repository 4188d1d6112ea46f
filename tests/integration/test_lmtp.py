"""LMTP delivery into a store: Python's smtplib.LMTP as an independent
client for the normal path, a raw socket for protocol abuse."""
import smtplib
import socket
import sqlite3
import time
import uuid

import pytest

from conftest import SLOW, Tern, wait_port

MSG = b"From: carol@example.net\r\nTo: alice@example.org\r\nSubject: hi\r\n\r\nhello\r\n"


class Raw:
    """A deliberately dumb LMTP client: we choose every byte."""

    def __init__(self, port, timeout=10):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout * SLOW)
        self.f = self.s.makefile("rb")
        self.greeting = self.reply()

    def send(self, data):
        self.s.sendall(data)

    def reply(self):
        lines = []
        while True:
            line = self.f.readline()
            if not line:
                raise EOFError("connection closed")
            lines.append(line.decode(errors="replace").rstrip("\r\n"))
            if len(line) >= 4 and line[3:4] == b" ":
                return int(line[:3]), "\n".join(lines)

    def cmd(self, line):
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def closed(self):
        try:
            return self.f.readline() == b""
        except (ConnectionResetError, socket.timeout):
            return True

    def close(self):
        self.s.close()


def lmtp(t, store="s1"):
    return smtplib.LMTP("127.0.0.1", t.ports[store])


def count(t, user, needle, store=None):
    return t.export(user, store).count(needle)


def test_deliver_with_smtplib(served):
    with lmtp(served) as c:
        code, caps = c.ehlo("client.example.net")
        assert code == 250
        for ext in ("pipelining", "enhancedstatuscodes", "8bitmime", "size", "xdeliveryid"):
            assert c.has_extn(ext), ext
        refused = c.sendmail("carol@example.net", ["alice@example.org"], MSG)
        assert refused == {}
    box = served.export("alice@example.org")
    assert "Subject: hi" in box and "hello" in box
    assert "Return-Path: <carol@example.net>" in box
    assert "messages: 1" in served.cli("mailbox", "show", "alice@example.org").stdout


def test_several_recipients_one_reply_each(served):
    r = Raw(served.ports["s1"])
    assert r.cmd("LHLO x")[0] == 250
    assert r.cmd("MAIL FROM:<carol@example.net>")[0] == 250
    assert r.cmd("RCPT TO:<alice@example.org>")[0] == 250
    assert r.cmd("RCPT TO:<nobody@example.org>")[0] == 550
    assert r.cmd("RCPT TO:<bob@example.org>")[0] == 250
    assert r.cmd("DATA")[0] == 354
    r.send(b"Subject: two\r\n\r\nbody\r\n.\r\n")
    first, second = r.reply(), r.reply()
    assert first[0] == 250 and "<alice@example.org>" in first[1]
    assert second[0] == 250 and "<bob@example.org>" in second[1]
    assert r.cmd("QUIT")[0] == 221
    assert count(served, "alice@example.org", "Subject: two") == 1
    assert count(served, "bob@example.org", "Subject: two") == 1


def test_pipelined_transactions(served):
    # PIPELINING: two whole transactions in one write; replies in order.
    r = Raw(served.ports["s1"])
    r.send(b"LHLO x\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<alice@example.org>\r\n"
           b"RCPT TO:<bob@example.org>\r\nDATA\r\nSubject: p1\r\n\r\n.\r\n"
           b"MAIL FROM:<a@example.net>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
           b"Subject: p2\r\n\r\n.\r\nQUIT\r\n")
    codes = [r.reply()[0] for _ in range(12)]
    assert codes == [250, 250, 250, 250, 354, 250, 250, 250, 250, 354, 250, 221]
    assert count(served, "alice@example.org", "Subject: p1") == 1
    assert count(served, "bob@example.org", "Subject: p1") == 1
    assert count(served, "bob@example.org", "Subject: p2") == 1


def test_duplicate_rcpt_and_alias_store_once(served):
    served.cli("alias", "add", "al@example.org", "alice@example.org")
    r = Raw(served.ports["s1"])
    r.cmd("LHLO x")
    r.cmd("MAIL FROM:<>")
    assert r.cmd("RCPT TO:<alice@example.org>")[0] == 250
    assert r.cmd("RCPT TO:<al@example.org>")[0] == 250
    r.cmd("DATA")
    r.send(b"Subject: once\r\n\r\n.\r\n")
    assert r.reply()[0] == 250 and r.reply()[0] == 250
    assert count(served, "alice@example.org", "Subject: once") == 1


def test_unknown_user_550(served):
    with lmtp(served) as c:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
            c.sendmail("carol@example.net", ["nobody@example.org"], MSG)
        code, text = e.value.recipients["nobody@example.org"]
        assert code == 550 and b"5.1.1" in text


def test_user_homed_elsewhere_gets_redirect_hint(served):
    # Re-home bob in the directory behind the store's back (as a move's
    # switch would): s1 must answer with a parseable hint, not accept.
    db = sqlite3.connect(served.data / "directory.db")
    db.execute("update users set home='s2', epoch=7, version=version+1 "
               "where address='bob@example.org'")
    db.commit()
    db.close()
    with lmtp(served) as c:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
            c.sendmail("carol@example.net", ["bob@example.org"], MSG)
        code, text = e.value.recipients["bob@example.org"]
        assert code == 451
        assert text.decode() == "4.2.1 <bob@example.org> moved to s2 epoch 7"


def test_fenced_mailbox_move_in_progress(served):
    with lmtp(served) as c:
        c.sendmail("carol@example.net", ["alice@example.org"], MSG)  # creates the mailbox
    served.cli("mailbox", "fence", "alice@example.org")
    with lmtp(served) as c:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
            c.sendmail("carol@example.net", ["alice@example.org"], MSG)
        code, text = e.value.recipients["alice@example.org"]
        assert code == 451
        assert text.decode() == "4.2.1 <alice@example.org> move in progress"
    served.cli("mailbox", "unfence", "alice@example.org")
    with lmtp(served) as c:
        assert c.sendmail("carol@example.net", ["alice@example.org"], MSG) == {}
    assert count(served, "alice@example.org", "Subject: hi") == 2


def test_fence_between_rcpt_and_data_is_seen_at_commit(served):
    with lmtp(served) as c:
        c.sendmail("carol@example.net", ["alice@example.org"], MSG)
    r = Raw(served.ports["s1"])
    r.cmd("LHLO x")
    r.cmd("MAIL FROM:<carol@example.net>")
    assert r.cmd("RCPT TO:<alice@example.org>")[0] == 250
    served.cli("mailbox", "fence", "alice@example.org")
    assert r.cmd("DATA")[0] == 354
    r.send(b"Subject: late\r\n\r\n.\r\n")
    code, text = r.reply()
    assert code == 451 and "move in progress" in text
    served.cli("mailbox", "unfence", "alice@example.org")
    assert count(served, "alice@example.org", "Subject: late") == 0


def test_moved_mailbox_state_hint(served):
    with lmtp(served) as c:
        c.sendmail("carol@example.net", ["alice@example.org"], MSG)
    # The store's own record says the mailbox moved (the directory not yet).
    db = sqlite3.connect(served.data / "stores" / "s1" / "store.db")
    db.execute("update mailboxes set state=3, moved_to='s2', epoch=2 "
               "where user='alice@example.org'")
    db.commit()
    db.close()
    r = Raw(served.ports["s1"])
    r.cmd("LHLO x")
    r.cmd("MAIL FROM:<>")
    code, text = r.cmd("RCPT TO:<alice@example.org>")
    assert code == 451 and text.endswith("4.2.1 <alice@example.org> moved to s2 epoch 2")


def test_delivery_id_makes_retry_idempotent(served):
    did = "XDELIVERYID=" + uuid.uuid4().hex
    for attempt in range(3):
        with lmtp(served) as c:
            c.ehlo("client.test")
            c.mail("carol@example.net", [did])
            assert c.rcpt("alice@example.org")[0] == 250
            code, text = c.data(MSG)
            assert code == 250
            if attempt > 0:
                assert b"already delivered" in text
    assert count(served, "alice@example.org", "Subject: hi") == 1


def test_directory_unavailable_is_temporary(tern, monkeypatch):
    # TERN_FAULT=fail:dir_resolve makes every directory lookup of the roles
    # fail as an unreachable backend would (docs/testing.md).
    tern.setup_users("alice@example.org")
    monkeypatch.setenv("TERN_FAULT", "fail:dir_resolve")
    tern.serve()
    r = Raw(tern.ports["s1"])
    r.cmd("LHLO x")
    r.cmd("MAIL FROM:<>")
    for addr in ("alice@example.org", "nobody@example.org"):
        code, text = r.cmd(f"RCPT TO:<{addr}>")
        assert code == 451 and "4.4.3" in text, text


# ---- bad input: each gets the RFC reply class and changes nothing -------

def session(t, *cmds):
    r = Raw(t.ports["s1"])
    for c in cmds:
        assert r.cmd(c)[0] in (250,), c
    return r


@pytest.mark.parametrize("line,code,enh", [
    (b"NOOP " + b"x" * 600, 500, "5.5.2"),
    (b"NOOP\n", 500, "5.5.2"),
    (b"NO\rOP", 500, "5.5.2"),
    (b"NO\x00OP", 500, "5.5.2"),
    (b"FROB", 500, "5.5.1"),
    (b"MAIL FROM:alice@example.org", 501, "5.1.7"),
    (b"DATA extra", 501, "5.5.4"),
    (b"HELO x", 500, "5.5.1"),
])
def test_bad_command_lines(served, line, code, enh):
    r = session(served, "LHLO x")
    r.send(line + (b"\r\n" if not line.endswith(b"\n") else b""))
    got, text = r.reply()
    assert got == code and enh in text, text
    assert r.cmd("NOOP")[0] == 250  # the session goes on


def test_huge_line_without_newline(served):
    r = session(served, "LHLO x")
    r.send(b"A" * (4 * 1024 * 1024))
    r.send(b"\r\n")
    code, text = r.reply()
    assert code == 500 and "5.5.2" in text
    assert r.cmd("NOOP")[0] == 250


@pytest.mark.parametrize("cmds,code", [
    (["MAIL FROM:<a@example.net>"], 503),                          # before LHLO
    (["LHLO x", "RCPT TO:<alice@example.org>"], 503),              # RCPT before MAIL
    (["LHLO x", "DATA"], 503),                                     # DATA before MAIL
    (["LHLO x", "MAIL FROM:<>", "DATA"], 503),                     # DATA before RCPT
    (["LHLO x", "MAIL FROM:<>", "MAIL FROM:<>"], 503),             # nested MAIL
    (["LHLO x", "MAIL FROM:<a@@example.net>"], 501),               # malformed address
    (["LHLO x", "MAIL FROM:<>", "RCPT TO:<" + "a" * 65 + "@example.org>"], 501),
    (["LHLO x", "MAIL FROM:<>", "RCPT TO:<>"], 501),
    (["LHLO x", "MAIL FROM:<> FOO=BAR"], 555),
    (["LHLO x", "MAIL FROM:<> SIZE=99999999999"], 552),
    (["LHLO x", "MAIL FROM:<> BODY=9BIT"], 501),
    (["LHLO x", "MAIL FROM:<> XDELIVERYID=a/b"], 501),
])
def test_commands_out_of_order_and_malformed(served, cmds, code):
    r = Raw(served.ports["s1"])
    for c in cmds[:-1]:
        assert r.cmd(c)[0] == 250
    got, text = r.cmd(cmds[-1])
    assert got == code, text
    assert served.export("alice@example.org") == ""


def test_too_many_recipients(tmp_path):
    t = Tern(tmp_path, lmtp_extra="max_recipients = 3\n")
    try:
        t.setup_users("alice@example.org", "bob@example.org")
        t.serve()
        r = session(t, "LHLO x", "MAIL FROM:<>")
        for _ in range(3):
            assert r.cmd("RCPT TO:<alice@example.org>")[0] == 250
        code, text = r.cmd("RCPT TO:<bob@example.org>")
        assert code == 452 and "4.5.3" in text
    finally:
        t.stop()


def test_message_over_size(tmp_path):
    t = Tern(tmp_path, lmtp_extra="max_message_size = 2048\n")
    try:
        t.setup_users("alice@example.org")
        t.serve()
        r = session(t, "LHLO x", "MAIL FROM:<>", "RCPT TO:<alice@example.org>")
        assert r.cmd("DATA")[0] == 354
        r.send(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 100 + b".\r\n")
        code, text = r.reply()
        assert code == 552 and "5.3.4" in text
        assert r.cmd("NOOP")[0] == 250
        assert t.export("alice@example.org") == ""
        # Exactly at the limit (as received, before Return-Path) is fine.
        r = session(t, "LHLO x", "MAIL FROM:<>", "RCPT TO:<alice@example.org>")
        r.cmd("DATA")
        body = b"Subject: fits\r\n\r\n"
        while len(body) + 100 < 2048:
            body += b"y" * 98 + b"\r\n"
        body += b"y" * (2048 - len(body) - 2) + b"\r\n"
        assert len(body) == 2048
        r.send(body + b".\r\n")
        assert r.reply()[0] == 250
        assert "Subject: fits" in t.export("alice@example.org")
        r = session(t, "LHLO x", "MAIL FROM:<>", "RCPT TO:<alice@example.org>")
        r.cmd("DATA")
        r.send(body[:-2] + b"y\r\n.\r\n")
        assert r.reply()[0] == 552
    finally:
        t.stop()


@pytest.mark.parametrize("body,why", [
    (b"Subject: x\r\n\r\nbare\nlf\r\n", "bare CR or LF"),
    (b"Subject: x\r\n\r\nbare\rcr\r\n", "bare CR or LF"),
    (b"Subject: x\r\n\r\nnul\x00here\r\n", "NUL"),
    (b"Subject: x\r\n\r\n" + b"z" * 1200 + b"\r\n", "longer than 998"),
])
def test_bad_message_refused_whole(served, body, why):
    r = session(served, "LHLO x", "MAIL FROM:<>", "RCPT TO:<alice@example.org>")
    r.cmd("DATA")
    r.send(body + b".\r\n")
    code, text = r.reply()
    assert code == 554 and why in text, text
    assert served.export("alice@example.org") == ""


def test_smuggled_terminator_does_not_end_data(served):
    r = session(served, "LHLO x", "MAIL FROM:<>", "RCPT TO:<alice@example.org>")
    r.cmd("DATA")
    # "\n.\n" is not the end of data; what follows is still message text.
    r.send(b"Subject: smuggle\r\n\r\nx\n.\nMAIL FROM:<evil@example.net>\r\n.\r\n")
    code, text = r.reply()
    assert code == 554  # the bare LF makes the whole message refused
    assert r.cmd("NOOP")[0] == 250
    assert served.export("alice@example.org") == ""


def test_dot_stuffing_round_trip(served):
    r = session(served, "LHLO x", "MAIL FROM:<>", "RCPT TO:<alice@example.org>")
    r.cmd("DATA")
    r.send(b"Subject: dots\r\n\r\n..leading dot\r\n...two\r\n.\r\n")
    assert r.reply()[0] == 250
    box = served.export("alice@example.org")
    assert "\n.leading dot\n" in box and "\n..two\n" in box


def test_client_stops_mid_data_stores_nothing(served):
    r = session(served, "LHLO x", "MAIL FROM:<>", "RCPT TO:<alice@example.org>")
    r.cmd("DATA")
    r.send(b"Subject: cut\r\n\r\nhalf a message\r\n")
    r.close()
    time.sleep(0.3)
    with lmtp(served) as c:
        c.sendmail("carol@example.net", ["alice@example.org"], MSG)
    box = served.export("alice@example.org")
    assert "Subject: cut" not in box and "Subject: hi" in box


def test_slow_drip_hits_deadline(tmp_path):
    t = Tern(tmp_path, lmtp_extra="session_deadline = 2\nidle_timeout = 60\n")
    try:
        t.setup_users("alice@example.org")
        t.serve()
        r = Raw(t.ports["s1"])
        start = time.time()
        closed = False
        # One byte every 0.2 s never trips the idle timeout.
        for ch in b"NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP":
            try:
                r.send(bytes([ch]))
            except OSError:
                closed = True
                break
            time.sleep(0.2)
            if time.time() - start > 6 * SLOW:
                break
        code, text = r.reply()
        assert code == 421 and "deadline" in text
        assert r.closed() or closed
        assert time.time() - start < 6 * SLOW
    finally:
        t.stop()


def test_too_many_errors_close_session(served):
    r = session(served, "LHLO x")
    for _ in range(9):
        assert r.cmd("FROB")[0] == 500
    code, _ = r.cmd("FROB")
    assert code == 500
    assert r.reply()[0] == 421
    assert r.closed()


def test_refused_recipients_then_data_are_not_client_errors(served):
    """A pipelining client (the mta) sends DATA before it reads its RCPT
    replies. While a mailbox is fenced every RCPT gets 451 and DATA 503;
    that must not count toward the error limit, or the store would close the
    mta's pooled connection with 421 after a few parked deliveries."""
    with lmtp(served) as c:
        c.sendmail("carol@example.net", ["alice@example.org"], MSG)
    served.cli("mailbox", "fence", "alice@example.org")
    r = session(served, "LHLO x")
    for _ in range(25):
        r.send(b"MAIL FROM:<carol@example.net>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n")
        assert r.reply()[0] == 250
        assert r.reply()[0] == 451
        assert r.reply()[0] == 503
        assert r.cmd("RSET")[0] == 250
    served.cli("mailbox", "unfence", "alice@example.org")
    assert r.cmd("MAIL FROM:<carol@example.net>")[0] == 250
    assert r.cmd("RCPT TO:<alice@example.org>")[0] == 250
    assert r.cmd("DATA")[0] == 354
    r.send(MSG + b".\r\n")
    assert r.reply()[0] == 250
    r.close()
    assert count(served, "alice@example.org", "Subject: hi") == 2
    # DATA with no RCPT at all is still a client error.
    r = session(served, "LHLO x")
    for _ in range(9):
        assert r.cmd("MAIL FROM:<>")[0] == 250
        assert r.cmd("DATA")[0] == 503
        assert r.cmd("RSET")[0] == 250
    assert r.cmd("MAIL FROM:<>")[0] == 250
    assert r.cmd("DATA")[0] == 503
    assert r.reply()[0] == 421
    assert r.closed()


def test_vrfy_help_noop_rset(served):
    r = session(served, "LHLO x")
    assert r.cmd("VRFY alice")[0] == 252
    assert r.cmd("HELP")[0] == 214
    assert r.cmd("RSET")[0] == 250
    assert r.cmd("XSTATS")[0] == 250
    assert r.cmd("QUIT")[0] == 221
