"""The torture harness's own test: its check must be able to fail. A short
run with SABOTAGE=lose,dup expunges one owed copy behind the harness's back
and delivers another a second time over LMTP; the harness must then report
exactly those as LOST and DUPLICATED and exit 1. Bad parameters are refused.
`tern demo` runs to PASS and leaves nothing behind."""
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENV = dict(os.environ)


def run(*args, timeout=300):
    return subprocess.run([sys.executable, str(HERE / "torture.py"), *args], capture_output=True,
                          text=True, timeout=timeout, env=ENV)


def test_sabotage_is_caught():
    p = run("DURATION=8", "USERS=4", "CLIENTS=2", "RATE=30", "IMAP=1", "MOVERS=1",
            "KILLS=off", "RESTART=off", "DRAINS=off", "SABOTAGE=lose,dup", "SEED=7", "KEEP=off")
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    lost = set(re.findall(r"LOST: token ([0-9a-f]{32})", out))
    dup = set(re.findall(r"DUPLICATED: token ([0-9a-f]{32}) is 2 times", out))
    assert len(lost) == 1 and len(dup) == 1, out
    sab = dict(re.findall(r"sabotage: (lose|dup) of token ([0-9a-f]{32})", out))
    assert sab == {"lose": lost.pop(), "dup": dup.pop()}, out
    assert "work dir kept" not in out
    assert re.search(r"^\| LOST +\| 1 \|$", out, re.M), out
    assert re.search(r"^\| DUPLICATED +\| 1 \|$", out, re.M), out
    assert "FAIL" in out


def test_bad_parameters_are_refused():
    for arg, why in (("DURATION=abc", "not a number"), ("DURATION=1", "out of range"),
                     ("KILLS=maybe", "give on or off"), ("BOGUS=1", "unknown argument"),
                     ("SABOTAGE=burn", "give lose, dup")):
        p = run(arg, timeout=30)
        assert p.returncode != 0 and why in p.stderr, (arg, p.stderr)


TERN_BIN = os.environ.get("TERN_BIN", str(HERE.parents[1] / "build" / "tern"))


def test_demo_runs_and_cleans_up():
    p = subprocess.run([TERN_BIN, "demo"], capture_output=True, text=True, timeout=600)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert re.search(r"kill -9 store s1 \(pid \d+\), the source, during", out), out
    assert "moved alice@example.org from s1 to s2 (epoch 2)" in out, out
    assert re.search(r"^tern demo, 4 users: PASS$", out, re.M), out
    assert re.search(r"^\| LOST +\| 0 \|$", out, re.M), out
    root = re.search(r"stopped every process and removed (/\S+)", out).group(1)
    assert not os.path.exists(root)
    left = subprocess.run(["pgrep", "-f", root], capture_output=True, text=True)
    assert left.stdout == "", left.stdout


def test_demo_command_errors():
    p = subprocess.run([TERN_BIN, "demo", "now"], capture_output=True, text=True)
    assert p.returncode == 2 and "demo takes no arguments" in p.stderr
    env = dict(os.environ, TERN_DEMO_SCRIPT="/nonexistent/torture.py")
    p = subprocess.run([TERN_BIN, "demo"], capture_output=True, text=True, env=env)
    assert p.returncode == 1 and "/nonexistent/torture.py is not there" in p.stderr
    env = dict(os.environ, TERN_PYTHON="/nonexistent/python3")
    p = subprocess.run([TERN_BIN, "demo"], capture_output=True, text=True, env=env)
    assert p.returncode == 1 and "needs /nonexistent/python3" in p.stderr
