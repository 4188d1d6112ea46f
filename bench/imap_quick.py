#!/usr/bin/env python3
"""bench/imap_quick.py [--tls] [N] — quick IMAP figures, tern only.

Starts a private `tern serve` (free ports, temp data dir) and, with one
IMAP session over the imap role (TSYNC/1 to the home store), times: the
delay from a delivery's LMTP 250 to the EXISTS an IDLE session gets (20
deliveries), N pipelined APPENDs (LITERAL+), FETCH/SEARCH/STORE over all N,
COPY and STORE+EXPUNGE of half, and a SELECT. Prints one line per figure.
docs/imap.md keeps the last figures. With --tls every session runs over
implicit TLS ([imap] tls_listen, a self-signed P-256 certificate made with
the openssl command) instead of plaintext.
"""
import imaplib
import os
import shutil
import smtplib
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))
os.environ.setdefault("TERN_BIN", str(HERE.parent / "build" / "tern"))

from conftest import Tern, free_port, wait_port  # noqa: E402

args = [a for a in sys.argv[1:] if a != "--tls"]
TLS = "--tls" in sys.argv[1:]
N = int(args[0]) if args else 1000
USER = "bench@example.org"
root = Path(tempfile.mkdtemp(prefix="tern-imapbench."))
imap_extra = ""
if TLS:
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    TLS_PORT = free_port()
    imap_extra = f"tls_cert = {cert}\ntls_key = {key}\ntls_listen = 127.0.0.1:{TLS_PORT}\n"
    CTX = ssl.create_default_context(cafile=str(cert))
t = Tern(root, imap_extra=imap_extra)
t.setup_users(USER)
t.serve()
if TLS:
    assert wait_port(TLS_PORT)


def connect_raw(timeout):
    if TLS:
        raw = socket.create_connection(("127.0.0.1", TLS_PORT), timeout=timeout)
        return CTX.wrap_socket(raw, server_hostname="127.0.0.1")
    return socket.create_connection(("127.0.0.1", t.ports["imap"]), timeout=timeout)


def connect_imap():
    if TLS:
        return imaplib.IMAP4_SSL("127.0.0.1", TLS_PORT, ssl_context=CTX)
    return imaplib.IMAP4("127.0.0.1", t.ports["imap"])


try:
    print("sessions over %s" % ("implicit TLS" if TLS else "plaintext"))
    s = connect_raw(30)
    f = s.makefile("rb")
    f.readline()
    s.sendall(f"a LOGIN {USER} secret\r\nb SELECT INBOX\r\n".encode())
    while not f.readline().startswith(b"b OK"):
        pass
    s.sendall(b"c IDLE\r\n")
    f.readline()
    lat = []
    for i in range(20):
        with smtplib.LMTP("127.0.0.1", t.ports["s1"]) as c:
            c.sendmail("x@example.net", [USER], b"Subject: x\r\n\r\nx\r\n")
        t1 = time.time()
        ln = f.readline()
        assert b"EXISTS" in ln, ln
        lat.append((time.time() - t1) * 1000)
    s.sendall(b"DONE\r\n")
    f.readline()
    print("IDLE: LMTP 250 -> EXISTS: median %.0f ms, max %.0f ms (20 deliveries)"
          % (statistics.median(lat), max(lat)))
    body = b"Subject: y\r\n\r\n" + b"y" * 4000 + b"\r\n"
    t0 = time.time()
    s.sendall(b"".join(b"p%d APPEND INBOX {%d+}\r\n%s\r\n" % (i, len(body), body)
                       for i in range(N)))
    done = 0
    while done < N:
        if f.readline().startswith(b"p"):
            done += 1
    print("%d pipelined APPENDs of 4 KB: %.2f s" % (N, time.time() - t0))
    s.close()
    c = connect_imap()
    c.login(USER, "secret")
    c.select("INBOX")
    half = (N + 20) // 2
    steps = [
        ("FETCH 1:* (FLAGS)", lambda: c.fetch("1:*", "(FLAGS)")),
        ("FETCH 1:* (BODY.PEEK[HEADER])", lambda: c.fetch("1:*", "(BODY.PEEK[HEADER])")),
        ("FETCH 1:* (BODY.PEEK[]), about 4 MB", lambda: c.fetch("1:*", "(BODY.PEEK[])")),
        ("SEARCH BODY yyyy", lambda: c.search(None, "BODY", "yyyy")),
        ("STORE 1:* +FLAGS.SILENT (\\Seen)", lambda: c.store("1:*", "+FLAGS.SILENT", "(\\Seen)")),
        (f"COPY 1:{half} Trash", lambda: c.copy(f"1:{half}", "Trash")),
        (f"STORE 1:{half} +FLAGS.SILENT (\\Deleted) and EXPUNGE",
         lambda: (c.store(f"1:{half}", "+FLAGS.SILENT", "(\\Deleted)"), c.expunge())),
        ("SELECT INBOX", lambda: c.select("INBOX")),
    ]
    for what, fn in steps:
        t0 = time.time()
        fn()
        print("%s: %.2f s" % (what, time.time() - t0))

    # Header-only FETCHes on folders of 2 KB and of 100 KB messages, then
    # COPY and EXPUNGE of N messages (one command each).
    def fill(folder, n, size):
        c.create(folder)
        s = connect_raw(60)
        f = s.makefile("rb")
        f.readline()
        s.sendall(f"a LOGIN {USER} secret\r\n".encode())
        while not f.readline().startswith(b"a "):
            pass
        def one(i):
            head = (b"From: Sender %d <s%d@example.net>\r\nTo: <%s>\r\n"
                    b"Subject: message %d of the bench\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n"
                    b"Message-ID: <%d.bench@example.net>\r\n\r\n"
                    % (i, i, USER.encode(), i, i))
            return head + b"z" * (size - len(head) - 2) + b"\r\n"
        for lo in range(0, n, 200):
            hi = min(n, lo + 200)
            s.sendall(b"".join(b"f%d APPEND %s {%d+}\r\n%s\r\n"
                               % (i, folder.encode(), len(one(i)), one(i)) for i in range(lo, hi)))
            done = lo
            while done < hi:
                if f.readline().startswith(b"f"):
                    done += 1
        s.close()

    big = max(N // 4, 1)
    fill("H2", N, 2048)
    fill("H100", big, 100 * 1024)
    for folder, n, what in (("H2", N, "2 KB"), ("H100", big, "100 KB")):
        c.select(folder)
        for items in ("(BODY.PEEK[HEADER.FIELDS (From Subject Date)])", "(ENVELOPE)",
                      "(BODY.PEEK[HEADER])"):
            t0 = time.time()
            typ, data = c.uid("FETCH", "1:*", items)
            el = time.time() - t0
            assert typ == "OK" and len([d for d in data if isinstance(d, tuple) or
                                        (d and b"ENVELOPE" in d)]) == n, (typ, len(data))
            print("UID FETCH 1:* %s, %d messages of %s: %.2f s (%.0f msg/s)"
                  % (items, n, what, el, n / el))
    c.select("H2")
    t0 = time.time()
    typ, _ = c.copy("1:*", "Trash")
    assert typ == "OK"
    print("COPY of %d messages: %.2f s" % (N, time.time() - t0))
    c.store("1:*", "+FLAGS.SILENT", "(\\Deleted)")
    t0 = time.time()
    typ, _ = c.expunge()
    assert typ == "OK"
    print("EXPUNGE of %d messages: %.2f s" % (N, time.time() - t0))
    c.logout()
finally:
    t.stop()
    shutil.rmtree(root, ignore_errors=True)
