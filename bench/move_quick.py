#!/usr/bin/env python3
"""bench/move_quick.py [N] — a quick move measurement, tern only.

Starts a private `tern serve` (free ports, temp data dir), fills one
mailbox on s1 with N x ~4 KB messages over TSYNC/1, then times
`tern move USER --to s2 --wait` (the whole job: provision, copy, catch-up,
fence, final sync, verify, switch). Prints messages/s and MB/s.

The issue's full benchmark (100k messages, doveadm backup and cp side by
side, RSS, catch-up cost, cutover pause) is bench/move: see docs/testing.md.
"""
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))
os.environ.setdefault("TERN_BIN", str(HERE.parent / "build" / "tern"))

from conftest import Tern  # noqa: E402
from tsync import TSync, hx  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
root = Path(tempfile.mkdtemp(prefix="tern-movebench."))
t = Tern(root)
t.cli("domain", "add", "example.org")
t.cli("user", "add", "bench@example.org", "--password", "x", "--store", "s1")
t.serve()
try:
    c = TSync(t.ports["sync-s1"])
    u = "bench@example.org"
    assert c.cmd(f"CREATE {hx(u)} active 1").startswith("+OK")
    body = (b"Subject: move bench\r\n\r\n" + b"y" * 76 + b"\r\n") * 45
    for i in range(1, N + 1):
        assert c.append(u, "INBOX", i, body).startswith("+OK")
    c.close()
    t0 = time.time()
    t.cli("move", u, "--to", "s2", "--wait")
    secs = time.time() - t0
    mb = N * len(body) / 1e6
    print(f"RESULT tern-move msgs={N} bytes_per_msg={len(body)} secs={secs:.2f} "
          f"msg_per_s={N / secs:.0f} MB_per_s={mb / secs:.1f}")
finally:
    t.stop()
    import shutil
    shutil.rmtree(root, ignore_errors=True)
