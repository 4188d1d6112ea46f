"""The CLI: domains, users, aliases, stores; bad input changes nothing."""
import os
import subprocess

import pytest

from conftest import TERN_BIN


def snapshot(t):
    return (t.cli("user", "list").stdout, t.cli("domain", "list").stdout,
            t.cli("alias", "list").stdout)


def test_domain_and_user_lifecycle(tern):
    assert "domain example.org added" in tern.cli("domain", "add", "Example.ORG").stdout
    assert tern.cli("domain", "list").stdout.split() == ["example.org"]
    out = tern.cli("user", "add", "Alice@Example.org", "--password", "pw1", "--store", "s2").stdout
    assert "alice@example.org" in out and "s2" in out
    show = tern.cli("user", "show", "alice@example.org").stdout
    assert "home:         s2" in show
    assert "state:        active" in show
    assert "epoch:        1" in show
    # Default store: the one with the fewest users (s1 now).
    assert "on store s1" in tern.cli("user", "add", "bob@example.org", "--password", "x").stdout
    lst = tern.cli("user", "list").stdout
    assert "alice@example.org" in lst and "bob@example.org" in lst
    set_out = tern.cli("user", "set", "alice@example.org", "--alternate", "bob@example.org",
                       "--deliver-both").stdout
    assert "alternate:    bob@example.org" in set_out and "deliver-both: yes" in set_out
    assert "version:      2" in set_out
    tern.cli("user", "delete", "bob@example.org")
    assert "bob@" not in tern.cli("user", "list").stdout


def test_password_is_yescrypt_hash(tern):
    import sqlite3
    tern.setup_users("alice@example.org")
    db = sqlite3.connect(tern.data / "directory.db")
    (h,) = db.execute("select password_hash from users").fetchone()
    db.close()
    assert h.startswith("$y$") and "secret" not in h


def test_password_file(tern, tmp_path):
    tern.cli("domain", "add", "example.org")
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    tern.cli("user", "add", "carol@example.org", "--password-file", str(pw))
    tern.cli("user", "add", "dave@example.org", "--password-file", "-", input="pw\n")
    assert "carol@" in tern.cli("user", "list").stdout


@pytest.mark.parametrize("args,needle", [
    (["user", "add", "not-an-address", "--password", "x"], "invalid address"),
    (["user", "add", "a..b@example.org", "--password", "x"], "invalid address"),
    (["user", "add", ("x" * 65) + "@example.org", "--password", "x"], "local part too long"),
    (["user", "add", "eve@unknown.org", "--password", "x"], "unknown domain"),
    (["user", "add", "eve@example.org", "--password", "x", "--store", "s9"], "unknown store"),
    (["user", "add", "eve@example.org", "--password", "x", "--store", "../x"], "invalid store"),
    (["user", "add", "alice@example.org", "--password", "x"], "already exists"),
    (["user", "add", "eve@example.org"], "needs --password"),
    (["user", "add", "eve@example.org", "--password", ""], "must not be empty"),
    (["user", "add", "eve@example.org", "--password"], "needs a value"),
    (["user", "add", "eve@example.org", "--password", "x", "--bogus"], "unknown option"),
    (["user", "show", "nobody@example.org"], "no such user"),
    (["user", "set", "nobody@example.org", "--deliver-both"], "no such user"),
    (["user", "set", "alice@example.org", "--deliver-both"], "needs an alternate"),
    (["user", "set", "alice@example.org", "--alternate", "alice@example.org"], "own alternate"),
    (["user", "delete", "nobody@example.org"], "no such user"),
    (["domain", "add", "bad_domain!"], "invalid domain"),
    (["domain", "add", "example.org"], "already exists"),
    (["alias", "add", "alice@example.org", "bob@example.org"], "already exists"),
    (["alias", "add", "x@elsewhere.net", "alice@example.org"], "not local"),
    (["frobnicate"], "unknown command"),
    (["user"], "user needs"),
])
def test_bad_input_changes_nothing(tern, args, needle):
    tern.setup_users("alice@example.org")
    before = snapshot(tern)
    p = tern.cli(*args, check=False)
    assert p.returncode != 0
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, p.stderr
    assert needle in lines[0], lines[0]
    assert snapshot(tern) == before


def test_data_option_anywhere_and_env(tern):
    base = [TERN_BIN, "--config", str(tern.config)]
    subprocess.run(base + ["domain", "add", "example.org", "--data", str(tern.data)], check=True,
                   capture_output=True)
    env = dict(os.environ, TERN_DATA=str(tern.data))
    out = subprocess.run(base + ["domain", "list"], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["example.org"]


def test_alias_resolves(tern):
    tern.setup_users("alice@example.org")
    tern.cli("alias", "add", "postmaster@example.org", "alice@example.org")
    assert "postmaster@example.org -> alice@example.org" in tern.cli("alias", "list").stdout
    p = tern.cli("user", "add", "postmaster@example.org", "--password", "x", check=False)
    assert p.returncode == 1 and "already exists" in p.stderr
    tern.cli("alias", "delete", "postmaster@example.org")
    assert tern.cli("alias", "list").stdout == ""


def test_store_list_from_config(tern):
    out = tern.cli("store", "list").stdout
    assert f"127.0.0.1:{tern.ports['s1']}" in out and f"127.0.0.1:{tern.ports['s2']}" in out


@pytest.mark.parametrize("text,needle", [
    ("[lmtp]\nmax_recipients = lots\n", "line 2: max_recipients must be a whole number"),
    ("[lmtp]\nbogus = 1\n", "line 2: unknown key 'bogus' in [lmtp]"),
    ("[nonsense]\n", "line 1: unknown section"),
    ("[store s1]\nlmtp = nowhere\n", "line 2: lmtp must be HOST:PORT"),
    ("[store s1]\nlmtp = 127.0.0.1:1\n[store s1]\n", "line 3: store 's1' is defined twice"),
    ("[store Bad]\n", "line 1: [store NAME] needs a name"),
    ("just words\n", "line 1: expected 'key = value'"),
    ("[store s1]\n", "store 's1' has no lmtp address"),
])
def test_config_errors_are_clear(tern, text, needle):
    tern.config.write_text(text)
    p = tern.cli("domain", "list", check=False)
    assert p.returncode == 1
    assert needle in p.stderr, p.stderr


def test_help_and_version(tern):
    assert "usage: tern" in tern.cli("help").stdout
    assert tern.cli("version").stdout.startswith("tern ")
