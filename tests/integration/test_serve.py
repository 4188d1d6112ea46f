"""The supervisor: roles as processes, restart with backoff, clean stop,
subsets of roles, one supervisor per data directory."""
import os
import signal
import subprocess
import time

from conftest import SLOW, TERN_BIN, wait_port


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not alive for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def wait_for(pred, timeout):
    deadline = time.time() + timeout * SLOW
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_roles_are_separate_processes(served):
    p1, p2 = served.role_pid("s1"), served.role_pid("s2")
    sup = served.serve_proc.pid
    assert len({p1, p2, sup}) == 3
    for pid in (p1, p2):
        with open(f"/proc/{pid}/stat") as f:
            assert int(f.read().split()[3]) == sup  # parent is the supervisor


def test_second_serve_refuses(served):
    p = subprocess.run([TERN_BIN, "--data", str(served.data), "--config", str(served.config),
                        "serve"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1
    assert "already running" in p.stderr
    assert str(served.serve_proc.pid) in p.stderr


def test_killed_role_is_restarted(served):
    old = served.role_pid("s1")
    os.kill(old, signal.SIGKILL)
    assert wait_for(lambda: served.role_pid("s1") != old and alive(served.role_pid("s1")), 10)
    assert wait_port(served.ports["s1"])
    assert alive(served.role_pid("s2"))
    assert "killed by signal 9" in served.log()


def test_restart_backoff_grows(served):
    # Kill the same role repeatedly: the supervisor's delays double.
    for _ in range(4):
        old = served.role_pid("s2")
        os.kill(old, signal.SIGKILL)
        assert wait_for(lambda: served.role_pid("s2") != old, 15)
        assert wait_port(served.ports["s2"])
    log = served.log()
    delays = [int(l.split(" in ")[1].split()[0]) for l in log.splitlines()
              if "restarting store:s2 in" in l]
    assert delays[:4] == [100, 200, 400, 800], delays


def test_sigterm_stops_everything(served):
    pids = [served.role_pid("s1"), served.role_pid("s2")]
    served.serve_proc.send_signal(signal.SIGTERM)
    assert served.serve_proc.wait(timeout=20 * SLOW) == 0
    assert wait_for(lambda: not any(alive(p) for p in pids), 5)
    assert wait_port(served.ports["s1"], up=False, timeout=2)


def test_supervisor_kill9_takes_roles_down(served):
    pids = [served.role_pid("s1"), served.role_pid("s2")]
    served.serve_proc.send_signal(signal.SIGKILL)
    served.serve_proc.wait()
    assert wait_for(lambda: not any(alive(p) for p in pids), 10)


def test_subset_of_roles(tern):
    tern.setup_users("alice@example.org")
    tern.serve("--roles", "store:s2")
    assert wait_port(tern.ports["s2"])
    assert not wait_port(tern.ports["s1"], timeout=1)


def test_unknown_role_is_refused(tern):
    p = tern.cli("serve", "--roles", "store:s7", check=False)
    assert p.returncode == 2 and "no store named 's7'" in p.stderr
    p = tern.cli("serve", "--roles", "teapot", check=False)
    assert p.returncode == 2 and "unknown role" in p.stderr
