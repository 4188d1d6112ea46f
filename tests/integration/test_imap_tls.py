"""TLS on the imap role: STARTTLS on the plaintext listener and implicit TLS
on [imap] tls_listen, with a self-signed certificate made here by the
`openssl` command and trusted by the clients as their only CA.

* imaplib over STARTTLS and over IMAP4_SSL: login, select, fetch, append
  and IDLE (a delivery shows up as EXISTS inside TLS).
* CAPABILITY says STARTTLS only before TLS; after STARTTLS it is asked again
  and has neither STARTTLS nor LOGINDISABLED.
* Command injection (CVE-2011-0411): "a STARTTLS\\r\\nb CAPABILITY\\r\\n" in
  one write; b is never answered, neither in the clear nor inside TLS.
* plaintext_login = no: LOGINDISABLED, and LOGIN / AUTHENTICATE get
  NO [PRIVACYREQUIRED] until STARTTLS; implicit TLS logs in at once.
* A missing, garbage or mismatched certificate/key: tern serve refuses to
  start and names the file.
* mbsync (isync) syncs a mailbox over STARTTLS and over IMAPS with
  CertificateFile.
"""
import imaplib
import socket
import ssl
import subprocess
import time

import pytest

from conftest import SLOW, Tern, free_port, sanitizer_reports, wait_port
from test_imap import assert_imap_role_clean, lmtp_deliver, msg
from test_imap_clients import maildir_files, mbsync, need

ALICE = "alice@example.org"
PW = "secret"


def make_cert(dirpath, name="server", cn="localhost"):
    """A self-signed EC certificate for localhost and 127.0.0.1: (cert, key)."""
    cert, key = dirpath / f"{name}.pem", dirpath / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec",
                    "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2",
                    "-subj", f"/CN={cn}",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def client_ctx(cert):
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class TlsTern(Tern):
    """A Tern with a certificate and, unless told otherwise, an implicit-TLS
    listener on ports["imaps"]."""

    def __init__(self, root, implicit=True, extra=""):
        self.cert, self.key = make_cert(root)
        self.imaps = free_port()
        conf = f"tls_cert = {self.cert}\ntls_key = {self.key}\n"
        if implicit:
            conf += f"tls_listen = 127.0.0.1:{self.imaps}\n"
        super().__init__(root, imap_extra=conf + extra)
        self.implicit = implicit

    def serve(self, *extra, wait=True):
        p = super().serve(*extra, wait=wait)
        if wait and self.implicit:
            assert wait_port(self.imaps), f"imaps did not come up:\n{self.log(4000)}"
        return p


@pytest.fixture
def tls_tern(tmp_path):
    t = TlsTern(tmp_path)
    t.setup_users(ALICE, "bob@example.org")
    t.serve()
    for i in range(1, 4):
        lmtp_deliver(t, ALICE, msg(i))
    yield t
    t.stop()
    assert_imap_role_clean(t)


def caps(c):
    typ, data = c.capability()
    assert typ == "OK"
    return data[0].decode().upper().split()


def connect(t, mode):
    """An imaplib session inside TLS: "starttls" on the plaintext port,
    "implicit" on tls_listen."""
    ctx = client_ctx(t.cert)
    if mode == "implicit":
        return imaplib.IMAP4_SSL("127.0.0.1", t.imaps, ssl_context=ctx, timeout=30 * SLOW)
    c = imaplib.IMAP4("127.0.0.1", t.ports["imap"], timeout=30 * SLOW)
    assert "STARTTLS" in c.capabilities
    typ, _ = c.starttls(ssl_context=ctx)
    assert typ == "OK"
    return c


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_login_select_fetch_append_idle_over_tls(tls_tern, mode):
    t = tls_tern
    c = connect(t, mode)
    assert isinstance(c.sock, ssl.SSLSocket)
    assert c.sock.version() in ("TLSv1.2", "TLSv1.3")
    have = caps(c)
    assert "STARTTLS" not in have and "LOGINDISABLED" not in have and "AUTH=PLAIN" in have
    typ, _ = c.login(ALICE, PW)
    assert typ == "OK"
    typ, data = c.select("INBOX")
    assert typ == "OK" and data[0] == b"3"
    typ, data = c.fetch("2", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK" and b"Subject: message 2" in data[0][1]
    typ, data = c.fetch("1:3", "(RFC822.SIZE BODY.PEEK[])")
    assert typ == "OK" and sum(1 for d in data if isinstance(d, tuple)) == 3
    # A large APPEND and FETCH cross many TLS records both ways.
    big = (b"From: carol@example.net\r\nSubject: big over tls\r\n\r\n" +
           b"".join(b"line %06d of a long body\r\n" % i for i in range(20000)))
    typ, data = c.append("INBOX", None, None, big)
    assert typ == "OK" and b"APPENDUID" in data[0]
    typ, data = c.fetch("4", "(BODY.PEEK[])")
    assert typ == "OK" and data[0][1] == big
    # IDLE inside TLS: a delivery arrives as EXISTS.
    tag = c._new_tag()
    c.send(tag + b" IDLE\r\n")
    assert c.readline().startswith(b"+ ")
    lmtp_deliver(t, ALICE, msg(5, subject="during idle"))
    line = c.readline()
    assert line == b"* 5 EXISTS\r\n", line
    c.send(b"DONE\r\n")
    assert c.readline().startswith(tag + b" OK")
    typ, data = c.fetch("5", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK" and b"during idle" in data[0][1]
    c.logout()
    assert f"TLS ({'STARTTLS' if mode == 'starttls' else 'implicit'}) TLSv1." in t.log()


def test_starttls_capabilities_and_wrong_states(tls_tern):
    t = tls_tern
    c = imaplib.IMAP4("127.0.0.1", t.ports["imap"], timeout=30 * SLOW)
    have = caps(c)
    assert "STARTTLS" in have and "AUTH=PLAIN" in have and "LOGINDISABLED" not in have
    # STARTTLS with an argument is BAD and changes nothing.
    tag = c._new_tag()
    c.send(tag + b" STARTTLS now\r\n")
    assert c.readline().startswith(tag + b" BAD")
    c.starttls(ssl_context=client_ctx(t.cert))
    # Inside TLS: STARTTLS again is BAD; the session goes on.
    tag = c._new_tag()
    c.send(tag + b" STARTTLS\r\n")
    assert c.readline().startswith(tag + b" BAD")
    assert c.noop()[0] == "OK"
    c.logout()
    # After a plaintext login (allowed by default): BAD.
    c = imaplib.IMAP4("127.0.0.1", t.ports["imap"], timeout=30 * SLOW)
    c.login(ALICE, PW)
    tag = c._new_tag()
    c.send(tag + b" STARTTLS\r\n")
    line = c.readline()
    assert line.startswith(tag + b" BAD") and b"after login" in line, line
    assert c.select("INBOX")[0] == "OK"
    c.logout()
    # Implicit TLS offers no STARTTLS.
    c = connect(t, "implicit")
    assert "STARTTLS" not in [x.upper() for x in c.capabilities]
    tag = c._new_tag()
    c.send(tag + b" STARTTLS\r\n")
    assert c.readline().startswith(tag + b" BAD")
    c.logout()


def read_line(sock, timeout=10):
    sock.settimeout(timeout * SLOW)
    out = b""
    while not out.endswith(b"\r\n"):
        ch = sock.recv(1)
        if not ch:
            break
        out += ch
    return out


def test_plaintext_pipelined_after_starttls_is_discarded(tls_tern):
    """The STARTTLS command-injection class (CVE-2011-0411): commands sent
    in the clear in the same packet as STARTTLS must not run inside TLS."""
    t = tls_tern
    raw = socket.create_connection(("127.0.0.1", t.ports["imap"]), timeout=10 * SLOW)
    assert read_line(raw).startswith(b"* OK")
    raw.sendall(b"a STARTTLS\r\nb CAPABILITY\r\n")
    assert read_line(raw).startswith(b"a OK")
    tls = client_ctx(t.cert).wrap_socket(raw, server_hostname="127.0.0.1")
    # Nothing may come: b was dropped, not queued for TLS.
    tls.settimeout(1.5 * SLOW)
    with pytest.raises(socket.timeout):
        data = tls.recv(4096)
        raise AssertionError(f"the server answered the injected command: {data!r}")
    tls.settimeout(10 * SLOW)
    tls.sendall(b"c CAPABILITY\r\n")
    got = b""
    while b"\r\nc " not in b"\r\n" + got or not got.endswith(b"\r\n"):
        chunk = tls.recv(4096)
        assert chunk, got
        got += chunk
    lines = got.split(b"\r\n")
    assert not any(ln.startswith(b"b ") for ln in lines), got
    assert lines[0].startswith(b"* CAPABILITY") and b"STARTTLS" not in lines[0]
    assert lines[1].startswith(b"c OK")
    tls.sendall(b"d LOGOUT\r\n")
    tls.close()
    assert "sent in the clear after STARTTLS discarded" in t.log()


def test_a_failed_handshake_ends_only_that_session(tls_tern):
    t = tls_tern
    # Not TLS at all on the implicit port: the session ends, nothing is sent.
    raw = socket.create_connection(("127.0.0.1", t.imaps), timeout=10 * SLOW)
    raw.sendall(b"a LOGIN alice@example.org secret\r\n" + b"x" * 600)
    raw.settimeout(10 * SLOW)
    try:
        data = raw.recv(4096)  # at most a TLS alert, then the close
    except ConnectionResetError:  # closed with our junk unread
        data = b""
    assert b"OK" not in data and b"alice" not in data and not data.startswith(b"*")
    raw.close()
    # A client that does not trust the certificate gives up; the server
    # goes on serving others.
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL("127.0.0.1", t.imaps, ssl_context=ssl.create_default_context(),
                          timeout=10 * SLOW)
    c = connect(t, "implicit")
    assert c.login(ALICE, PW)[0] == "OK"
    c.logout()
    log = t.log()
    assert "TLS (implicit) handshake failed" in log
    assert "secret" not in log


def test_plaintext_login_no(tmp_path):
    t = TlsTern(tmp_path, extra="plaintext_login = no\n")
    t.setup_users(ALICE)
    t.serve()
    try:
        c = imaplib.IMAP4("127.0.0.1", t.ports["imap"], timeout=30 * SLOW)
        have = caps(c)
        assert "LOGINDISABLED" in have and "STARTTLS" in have
        assert not any(x.startswith("AUTH=") for x in have)
        with pytest.raises(imaplib.IMAP4.error, match=r"PRIVACYREQUIRED"):
            c.login(ALICE, PW)
        tag = c._new_tag()
        c.send(tag + b" AUTHENTICATE PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHNlY3JldA==\r\n")
        line = c.readline()
        assert line.startswith(tag + b" NO [PRIVACYREQUIRED]"), line
        tag = c._new_tag()
        c.send(tag + b" AUTHENTICATE PLAIN\r\n")
        line = c.readline()
        assert line.startswith(tag + b" NO [PRIVACYREQUIRED]"), line
        c.starttls(ssl_context=client_ctx(t.cert))
        have = caps(c)
        assert "LOGINDISABLED" not in have and "STARTTLS" not in have and "AUTH=PLAIN" in have
        assert c.login(ALICE, PW)[0] == "OK"
        assert c.select("INBOX")[0] == "OK"
        c.logout()
        c = connect(t, "implicit")
        assert "LOGINDISABLED" not in [x.upper() for x in c.capabilities]
        assert c.login(ALICE, PW)[0] == "OK"
        c.logout()
        # No failed login was counted for the refused plaintext attempts.
        assert "failed login" not in t.log()
    finally:
        t.stop()
    assert_imap_role_clean(t)


def serve_refused(t):
    p = t.serve(wait=False)
    try:
        rc = p.wait(timeout=30 * SLOW)
    finally:
        t.serve_proc = None
        if p.poll() is None:
            p.kill()
            p.wait()
    log = t.log()
    assert not sanitizer_reports(log), log
    return rc, log


@pytest.mark.parametrize("case", ["missing cert", "missing key", "garbage cert",
                                  "garbage key", "mismatch"])
def test_a_bad_certificate_pair_is_refused_at_startup(tmp_path, case):
    t = TlsTern(tmp_path)
    other_cert, other_key = make_cert(tmp_path, name="other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    cert, key = t.cert, t.key
    if case == "missing cert":
        cert, want = tmp_path / "nope.pem", f"cannot read the certificate file {tmp_path}/nope.pem"
    elif case == "missing key":
        key, want = tmp_path / "nope.key", f"cannot read the private key file {tmp_path}/nope.key"
    elif case == "garbage cert":
        cert, want = garbage, f"no certificate in {garbage}"
    elif case == "garbage key":
        key, want = garbage, f"no private key in {garbage}"
    else:
        key = other_key
        want = f"the private key in {other_key} does not match the certificate in {t.cert}"
    t.imap_extra = f"tls_cert = {cert}\ntls_key = {key}\ntls_listen = 127.0.0.1:{t.imaps}\n"
    t.write_config()
    rc, log = serve_refused(t)
    assert rc == 1, log
    assert f"tern serve: [imap] TLS: {want}" in log, log
    # Nothing was started.
    assert "started" not in log


def test_half_a_pair_is_a_config_error(tmp_path):
    t = TlsTern(tmp_path, implicit=False)
    t.imap_extra = f"tls_cert = {t.cert}\n"
    t.write_config()
    rc, log = serve_refused(t)
    assert rc != 0
    assert "tls_cert and tls_key go together" in log, log


MBSYNCRC_TLS = """\
IMAPAccount tern
Host localhost
Port {port}
User {user}
Pass {pw}
SSLType {ssltype}
SSLVersions TLSv1.2 TLSv1.3
CertificateFile {cert}
AuthMechs {auth}
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


# mbsync checks the certificate's DNS names only (not IP addresses): it
# connects to "localhost", which the certificate names.
@pytest.mark.parametrize("ssltype", ["STARTTLS", "IMAPS"])
def test_mbsync_over_tls(tmp_path, ssltype):
    need("mbsync")
    t = TlsTern(tmp_path, extra="plaintext_login = no\n")
    t.setup_users(ALICE)
    t.serve()
    try:
        for i in range(1, 6):
            lmtp_deliver(t, ALICE, msg(i))
        c = connect(t, "implicit")
        c.login(ALICE, PW)
        assert c.create("Work")[0] == "OK"
        assert c.append("Work", None, None, msg(9, subject="in work").encode())[0] == "OK"
        c.logout()
        home = tmp_path / "home"
        maildir = home / "Mail"
        maildir.mkdir(parents=True)
        cfg = home / "mbsyncrc"
        port = t.ports["imap"] if ssltype == "STARTTLS" else t.imaps
        cfg.write_text(MBSYNCRC_TLS.format(port=port, user=ALICE, pw=PW, ssltype=ssltype,
                                           cert=t.cert, maildir=maildir,
                                           auth="PLAIN" if ssltype == "IMAPS" else "LOGIN"))
        rc, out, counters = mbsync(cfg, home)
        assert rc == 0, out
        files = maildir_files(maildir)
        inbox = [f for f in files if f.startswith("INBOX/")]
        work = [f for f in files if f.startswith("Work/")]
        assert len(inbox) == 5 and len(work) == 1, (files, out)
        assert counters is None or counters["near+"] == 6, out
        # A second sync is a no-op.
        rc, out, counters = mbsync(cfg, home)
        assert rc == 0, out
        assert maildir_files(maildir) == files
        # A new message arrives and only it comes down.
        lmtp_deliver(t, ALICE, msg(6))
        time.sleep(0.1)
        rc, out, counters = mbsync(cfg, home)
        assert rc == 0, out
        now = maildir_files(maildir)
        assert len(now) == len(files) + 1 and all(f in now for f in files)
        log = t.log()
        assert ("TLS (STARTTLS)" if ssltype == "STARTTLS" else "TLS (implicit)") in log
    finally:
        t.stop()
    assert_imap_role_clean(t)
