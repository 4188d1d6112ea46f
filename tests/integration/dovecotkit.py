"""A real Dovecot IMAP server on loopback for tests that compare with one or
read from one (test_import.py, test_imap_vs_dovecot.py): a private config,
mail and state directory under /tmp, a static password, stopped by stop().
Needs the dovecot binary (dovecot-imapd) and root; otherwise the test is
skipped."""
import imaplib
import os
import shutil
import signal
import ssl
import subprocess
import tempfile

import pytest

from conftest import free_port, wait_port

DOVECOT_CONF = """
base_dir = {d}/run
instance_name = tern-import-test-{port}
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = imap
listen = 127.0.0.1
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 8
first_valid_gid = 8
default_internal_user = dovecot
default_login_user = dovenull
mail_uid = mail
mail_gid = mail
mail_location = maildir:{d}/mail/%n/Maildir
passdb {{
  driver = static
  args = password=oldpass
}}
userdb {{
  driver = static
  args = uid=mail gid=mail home={d}/mail/%n
}}
service imap-login {{
{listeners}
}}
"""

PLAIN_LISTENERS = """
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
"""

# imaps only: TLS is required, the plain port is closed.
TLS_LISTENERS = """
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {port}
    ssl = yes
  }}
"""


def make_cert(d, name, cn):
    """A self-signed certificate (and key) for host cn, made with the openssl
    command: d/name.pem and d/name.key."""
    cert, key = os.path.join(d, name + ".pem"), os.path.join(d, name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=" + cn,
                    "-addext", "subjectAltName=DNS:" + cn, "-keyout", key, "-out", cert],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class Dovecot:
    """A Dovecot IMAP server on loopback; with tls=True it speaks imaps only
    (ssl = required) with a self-signed certificate for cert_host (self.ca:
    the certificate, which is its own CA)."""

    def __init__(self, tls=False, cert_host="localhost", needed_for="the IMAP source tests"):
        if shutil.which("dovecot") is None or os.geteuid() != 0:
            pytest.skip(f"Dovecot (dovecot-imapd) and root are needed for {needed_for}")
        if tls and shutil.which("openssl") is None:
            pytest.skip("the openssl command is needed for the imaps tests")
        self.dir = tempfile.mkdtemp(prefix="tern-dovecot-", dir="/tmp")
        os.chmod(self.dir, 0o755)
        for sub in ("run", "state", "mail"):
            os.mkdir(os.path.join(self.dir, sub))
        shutil.chown(os.path.join(self.dir, "mail"), "mail", "mail")
        self.port = free_port()
        self.tls = tls
        self.ca = None
        ssl_conf = "ssl = no"
        listeners = PLAIN_LISTENERS
        if tls:
            self.ca, key = make_cert(self.dir, "server", cert_host)
            ssl_conf = f"ssl = required\nssl_cert = <{self.ca}\nssl_key = <{key}"
            listeners = TLS_LISTENERS
        self.conf = os.path.join(self.dir, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(DOVECOT_CONF.format(d=self.dir, port=self.port, ssl=ssl_conf,
                                        listeners=listeners.format(port=self.port)))
        self.proc = subprocess.Popen(["dovecot", "-F", "-c", self.conf],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        if not wait_port(self.port, 15):
            self.stop()
            raise AssertionError("dovecot did not start")

    def client(self, user="bob"):
        if self.tls:
            ctx = ssl.create_default_context(cafile=self.ca)
            ctx.check_hostname = False  # the test of names is tern's, not this client's
            c = imaplib.IMAP4_SSL("127.0.0.1", self.port, ssl_context=ctx)
        else:
            c = imaplib.IMAP4("127.0.0.1", self.port)
        c.login(user, "oldpass")
        return c

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
