"""Real mail clients against the imap role, end to end.

* mbsync (isync) syncs a mailbox with several folders to a local Maildir;
  the mailbox then moves to the other store and two new messages arrive; the
  second sync downloads exactly those two (every old file keeps its name and
  inode, and mbsync's own counters say +2). Flag changes travel both ways.
* mutt, driven under tmux like a person at a terminal: open the mailbox,
  read one message, flag one, delete one, sync, quit; imaplib then checks
  what the server holds.

Both clients run with bounded waits and are killed in a finally, so a
client that hangs fails the test instead of hanging CI."""
import imaplib
import os
import pty
import re
import select
import shutil
import smtplib
import subprocess
import time

import pytest

from conftest import SLOW, Tern
from test_imap import assert_imap_role_clean

PW = "secret"
ALICE = "alice@example.org"


def need(tool):
    """Skips when a client is not installed, except in CI (.ci/run installs
    them), where a missing client must fail rather than hide the test."""
    if shutil.which(tool) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed (.ci/run installs it)")
        pytest.skip(f"{tool} is not installed")


def message(subject, body, date="Mon, 16 Nov 2026 10:00:00 +0000"):
    return (f"From: Carol <carol@example.net>\r\nTo: Alice <{ALICE}>\r\n"
            f"Subject: {subject}\r\nDate: {date}\r\n"
            f"Message-ID: <{re.sub(r'[^a-z0-9]', '-', subject.lower())}@example.net>\r\n"
            f"\r\n{body}\r\n")


def lmtp_deliver(t, data, store="s1"):
    with smtplib.LMTP("127.0.0.1", t.ports[store]) as c:
        c.sendmail("carol@example.net", [ALICE], data.encode())


def imap(t):
    c = imaplib.IMAP4("127.0.0.1", t.ports["imap"])
    c.login(ALICE, PW)
    return c


def uid_flags(t, folder="INBOX"):
    """{uid: set of flags} of a folder, as the server has them."""
    c = imap(t)
    try:
        typ, _ = c.select(folder, readonly=True)
        assert typ == "OK"
        typ, data = c.uid("FETCH", "1:*", "(FLAGS)")
        out = {}
        for d in data:
            if not d:
                continue
            m = re.search(rb"UID (\d+) FLAGS \(([^)]*)\)", d)
            assert m, d
            out[int(m.group(1))] = set(m.group(2).decode().split())
        return out
    finally:
        c.logout()


# ---- mbsync -------------------------------------------------------------------

MBSYNCRC = """\
IMAPAccount tern
Host 127.0.0.1
Port {port}
User {user}
Pass {pw}
SSLType None
AuthMechs LOGIN
Timeout 30

IMAPStore tern-remote
Account tern

MaildirStore local
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel tern
Far :tern-remote:
Near :local:
Patterns *
Create Near
SyncState *
"""

# mbsync prints its counters only on a terminal: "C: 1/1  B: 8/8  F: +0/0
# *0/0 #0/0  N: +2/2 *0/0 #0/0" (+ new messages, * flag changes, # trashed;
# F the far side, the server, N the near side, the Maildir).
COUNTERS = re.compile(r"C: (\d+)/(\d+)\s+B: (\d+)/(\d+)\s+"
                      r"F: \+(\d+)/(\d+) \*(\d+)/(\d+) #(\d+)/(\d+)(?: -\d+/\d+)?\s+"
                      r"N: \+(\d+)/(\d+) \*(\d+)/(\d+) #(\d+)/(\d+)")


def mbsync(cfg, home, timeout=60):
    """Runs `mbsync -a` on a pseudo-terminal (so it shows its counters);
    returns (exit code, output, counters of the last progress line as
    {"far+": n, "far*": n, "near+": n, "near*": n, ...})."""
    master, slave = pty.openpty()
    env = dict(os.environ, HOME=str(home))
    p = subprocess.Popen(["mbsync", "-c", str(cfg), "-a"], stdin=subprocess.DEVNULL,
                         stdout=slave, stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    out = b""
    deadline = time.time() + timeout * SLOW
    try:
        while True:
            if time.time() > deadline:
                raise AssertionError(f"mbsync did not finish in time:\n{out.decode('latin-1')}")
            r, _, _ = select.select([master], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed its side
                    chunk = b""
                if not chunk:
                    break
                out += chunk
            elif p.poll() is not None:
                continue  # drain what is left; EIO ends the loop
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)
    text = out.decode("utf-8", errors="replace").replace("\r", "\n")
    counters = None
    found = COUNTERS.findall(text)
    if found:
        v = [int(x) for x in found[-1]]
        counters = {"channels": v[0], "boxes": v[3],
                    "far+": v[4], "far*": v[6], "far#": v[8],
                    "near+": v[10], "near*": v[12], "near#": v[14]}
    return p.returncode, text, counters


def maildir_files(root):
    """{path relative to root: (inode, file name)} of every message file."""
    out = {}
    for dirpath, _, files in os.walk(root):
        if os.path.basename(dirpath) not in ("cur", "new"):
            continue
        for f in files:
            full = os.path.join(dirpath, f)
            out[os.path.relpath(full, root)] = os.stat(full).st_ino
    return out


def maildir_folder(rel):
    """'Work/2026/cur/123.U=1:2,S' -> 'Work/2026'."""
    return os.path.dirname(os.path.dirname(rel))


def uid_of(name):
    m = re.search(r",U=(\d+)", name)
    assert m, name
    return int(m.group(1))


def maildir_flags(name):
    return name.rsplit(":2,", 1)[1] if ":2," in name else ""


@pytest.fixture
def mail20(tmp_path):
    """A served tern where alice has 20 messages in four folders (and the
    special-use ones, empty), some of them flagged."""
    t = Tern(tmp_path)
    t.setup_users(ALICE)
    t.serve()
    for i in range(1, 13):
        lmtp_deliver(t, message(f"inbox {i}", f"inbox body {i}"))
    c = imap(t)
    folders = {"Work": 4, "Work/2026": 2, "Lists/tern": 2}
    for f, n in folders.items():
        assert c.create(f)[0] == "OK"
        for i in range(1, n + 1):
            flags = "(\\Seen)" if i % 2 else None
            typ, _ = c.append(f, flags, None, message(f"{f} {i}", f"{f} body {i}").encode())
            assert typ == "OK"
    c.select("INBOX")
    c.store("1:3", "+FLAGS", "(\\Seen)")
    c.store("5", "+FLAGS", "(\\Flagged)")
    c.logout()
    yield t, dict(folders, INBOX=12)
    t.stop()
    assert_imap_role_clean(t)


def test_mbsync_after_a_move_downloads_only_the_new_messages(mail20, tmp_path):
    need("mbsync")
    t, counts = mail20
    maildir = tmp_path / "Mail"
    maildir.mkdir()
    cfg = tmp_path / "mbsyncrc"
    cfg.write_text(MBSYNCRC.format(port=t.ports["imap"], user=ALICE, pw=PW, maildir=maildir))

    # First sync: everything comes down, flags included.
    rc, out, n = mbsync(cfg, tmp_path)
    assert rc == 0, out
    assert n is not None, f"no mbsync counters in:\n{out}"
    assert n["near+"] == 20 and n["far+"] == 0 and n["far*"] == 0, n
    files1 = maildir_files(maildir)
    assert len(files1) == 20, sorted(files1)
    per_folder = {}
    for rel in files1:
        per_folder[maildir_folder(rel)] = per_folder.get(maildir_folder(rel), 0) + 1
    assert per_folder == counts, per_folder
    inbox = {uid_of(rel): maildir_flags(rel) for rel in files1 if maildir_folder(rel) == "INBOX"}
    assert sorted(inbox) == list(range(1, 13))
    assert sorted(u for u, f in inbox.items() if "S" in f) == [1, 2, 3], inbox
    assert sorted(u for u, f in inbox.items() if "F" in f) == [5], inbox
    assert all("S" in maildir_flags(r) for r in files1 if r.startswith("Work/2026/") and
               uid_of(r) == 1)
    assert {d.name for d in maildir.iterdir()} >= {"INBOX", "Work", "Lists", "Sent", "Drafts",
                                                    "Trash", "Junk"}

    # The mailbox moves to the other store.
    p = t.cli("move", ALICE, "--to", "s2", "--wait")
    assert p.returncode == 0, p.stderr
    assert "home:         s2" in t.cli("user", "show", ALICE).stdout

    # Two new messages: one through the mta (SMTP, routed to the new home),
    # one by LMTP straight into the new home.
    with smtplib.SMTP("127.0.0.1", t.ports["smtp"]) as s:
        s.sendmail("carol@example.net", [ALICE],
                   message("after move 1", "new body 1").encode())
    assert t.wait_queue_empty(), t.queue()
    lmtp_deliver(t, message("after move 2", "new body 2"), store="s2")

    # Second sync: exactly the two new ones.
    rc, out, n = mbsync(cfg, tmp_path)
    assert rc == 0, out
    assert "UIDVALIDITY" not in out, out
    assert n is not None, out
    assert n["near+"] == 2 and n["near*"] == 0 and n["near#"] == 0, n
    assert n["far+"] == 0 and n["far*"] == 0 and n["far#"] == 0, n
    files2 = maildir_files(maildir)
    for rel, ino in files1.items():  # every old file: same name, same inode
        assert files2.get(rel) == ino, rel
    new = sorted(set(files2) - set(files1))
    assert len(new) == 2, new
    assert all(maildir_folder(r) == "INBOX" for r in new), new
    assert sorted(uid_of(r) for r in new) == [13, 14], new
    bodies = b"".join((maildir / r).read_bytes() for r in new)
    assert b"Subject: after move 1" in bodies and b"Subject: after move 2" in bodies

    # A flag set in the Maildir goes up to the server (at the new home).
    victim = next(r for r in files2 if maildir_folder(r) == "INBOX" and uid_of(r) == 7)
    name = os.path.basename(victim)
    flagged = os.path.join("INBOX", "cur", name.split(":2,")[0] + ":2,F")
    os.rename(maildir / victim, maildir / flagged)
    # ... and one set on the server comes down.
    c = imap(t)
    c.select("INBOX")
    assert c.uid("STORE", "9", "+FLAGS", "(\\Answered)")[0] == "OK"
    c.logout()
    rc, out, n = mbsync(cfg, tmp_path)
    assert rc == 0, out
    assert n is not None, out
    assert n["far*"] == 1 and n["near*"] == 1, n
    assert n["far+"] == 0 and n["near+"] == 0, n
    flags = uid_flags(t)
    assert "\\Flagged" in flags[7], flags
    assert flags[5] == {"\\Flagged"} and flags[1] == {"\\Seen"}, flags
    assert "\\Answered" in flags[9] and len(flags) == 14, flags
    files3 = maildir_files(maildir)
    assert len(files3) == 22
    nine = [r for r in files3 if maildir_folder(r) == "INBOX" and uid_of(r) == 9]
    assert len(nine) == 1 and "R" in maildir_flags(nine[0]), nine

    # Nothing left to do: a last sync changes nothing on either side.
    rc, out, n = mbsync(cfg, tmp_path)
    assert rc == 0, out
    assert n is not None and all(n[k] == 0 for k in ("far+", "far*", "far#", "near+",
                                                     "near*", "near#")), n
    assert maildir_files(maildir) == files3


# ---- mutt under tmux --------------------------------------------------------------

MUTTRC = """\
set imap_user = "{user}"
set imap_pass = "{pw}"
set folder = "imap://127.0.0.1:{port}/"
set spoolfile = "+INBOX"
set ssl_starttls = no
set ssl_force_tls = no
set header_cache = ""
set message_cachedir = ""
set imap_passive = yes
set mail_check = 3600
set timeout = 3600
set delete = yes
set quit = yes
set move = no
set mark_old = no
set wait_key = no
set pager_stop = yes
set sort = mailbox-order
set beep = no
set sleep_time = 0
set help = no
set record = ""
set index_format = "%4C %Z %s"
"""


class Screen:
    """A tmux server of our own (its own socket) running one program."""

    def __init__(self, sock, env):
        self.sock = str(sock)
        self.env = env

    def tmux(self, *args, check=True):
        return subprocess.run(["tmux", "-S", self.sock, *args], env=self.env,
                              capture_output=True, text=True, timeout=10 * SLOW, check=check)

    def start(self, cmd):
        self.tmux("-f", "/dev/null", "new-session", "-d", "-x", "132", "-y", "40", cmd)

    def text(self):
        p = self.tmux("capture-pane", "-p", check=False)
        return p.stdout if p.returncode == 0 else ""

    def alive(self):
        return self.tmux("has-session", check=False).returncode == 0

    def keys(self, *keys):
        self.tmux("send-keys", *keys)

    def wait(self, what, timeout=20.0):
        """Waits until the screen matches the regex `what`; returns the match."""
        deadline = time.time() + timeout * SLOW
        screen = ""
        while time.time() < deadline:
            screen = self.text()
            m = re.search(what, screen, re.M)
            if m:
                return m
            if not self.alive():
                break
            time.sleep(0.1)
        raise AssertionError(f"screen never showed {what!r}; it shows:\n{screen}")

    def kill(self):
        self.tmux("kill-server", check=False)


def test_mutt_reads_flags_and_deletes(tmp_path):
    need("mutt")
    need("tmux")
    t = Tern(tmp_path)
    t.setup_users(ALICE)
    t.serve()
    screen = None
    try:
        for i in range(1, 6):
            lmtp_deliver(t, message(f"mutt test {i}", f"the body of message {i}"))
        rc = tmp_path / "muttrc"
        rc.write_text(MUTTRC.format(user=ALICE, pw=PW, port=t.ports["imap"]))
        env = dict(os.environ, HOME=str(tmp_path), LC_ALL="C.UTF-8", TERM="xterm")
        env.pop("TMUX", None)
        screen = Screen(tmp_path / "tmux.sock", env)
        screen.start(f"mutt -n -F {rc}")
        screen.wait(r"Mutt: =INBOX \[Msgs:5 New:5")

        # Read message 2.
        screen.keys("2", "Enter")
        screen.keys("Enter")
        screen.wait(r"the body of message 2")
        screen.keys("i")
        screen.wait(r"Mutt: =INBOX")
        # Flag message 3, delete message 4.
        screen.keys("3", "Enter")
        screen.keys("F")
        screen.wait(r"^\s*3 [ A-Z]*! +mutt test 3")
        screen.keys("4", "Enter")
        screen.keys("d")
        screen.wait(r"^\s*4 [ A-Z!]*D[ A-Z!]* mutt test 4")
        # Sync: the deleted message is expunged on the server.
        screen.keys("$")
        screen.wait(r"Mutt: =INBOX \[Msgs:4 ")
        assert not re.search(r"mutt test 4", screen.text())
        screen.keys("q")
        deadline = time.time() + 20 * SLOW
        while screen.alive() and time.time() < deadline:
            time.sleep(0.1)
        assert not screen.alive(), screen.text()

        flags = uid_flags(t)
        assert sorted(flags) == [1, 2, 3, 5], flags  # 4 expunged
        assert "\\Seen" in flags[2], flags  # read
        assert "\\Flagged" in flags[3] and "\\Seen" not in flags[3], flags
        assert flags[1] == set() and flags[5] == set(), flags
        c = imap(t)
        c.select("INBOX")
        typ, data = c.search(None, "SUBJECT", "\"mutt test 4\"")
        assert typ == "OK" and data[0] == b"", data
        c.logout()
    finally:
        if screen is not None:
            screen.kill()
        t.stop()
    assert_imap_role_clean(t)
