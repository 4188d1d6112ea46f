"""A small, independent TSYNC/1 client (docs/sync.md) for tests: it builds
mailboxes with folders, flags and keywords on a store, and reads digests."""
import hashlib
import socket


def hx(s):
    return s.encode().hex() if s else "-"


class TSync:
    def __init__(self, port, timeout=30):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.f = self.s.makefile("rb")
        ok = self.cmd("HELLO TSYNC/1")
        assert ok.startswith("+OK TSYNC/1"), ok

    def line(self):
        l = self.f.readline()
        if not l:
            raise EOFError("closed")
        return l.decode().rstrip("\r\n")

    def cmd(self, text, body=None):
        data = text.encode() + b"\r\n"
        if body is not None:
            data += body + b"\r\n"
        self.s.sendall(data)
        return self.line()

    def lines(self, text):
        self.s.sendall(text.encode() + b"\r\n")
        out = []
        while True:
            l = self.line()
            if l.startswith("+OK") or l.startswith("-"):
                return out, l
            out.append(l)

    def mbox(self, user):
        return self.cmd(f"MBOX {hx(user)}")

    def folder(self, user, name, uidvalidity, uidnext=1):
        return self.cmd(f"FOLDER {hx(user)} {uidvalidity} {uidnext} {hx(name)}")

    def append(self, user, folder, uid, body, flags=0, keywords="", date=1700000000, guid=None):
        guid = guid or hashlib.sha256(f"{user}/{folder}/{uid}".encode()).hexdigest()[:32]
        sha = hashlib.sha256(body).hexdigest()
        return self.cmd(f"APPEND {hx(user)} {hx(folder)} {uid} {guid} {flags} {date} "
                        f"{len(body)} {sha} {hx(keywords)}", body)

    def flags(self, user, folder, uid, flags, keywords=""):
        return self.cmd(f"FLAGS {hx(user)} {hx(folder)} {uid} {flags} {hx(keywords)}")

    def expunge(self, user, folder, uid):
        return self.cmd(f"EXPUNGE {hx(user)} {hx(folder)} {uid}")

    def digest(self, user):
        out, end = self.lines(f"DIGEST {hx(user)}")
        assert end.startswith("+OK"), end
        return sorted(out)

    def close(self):
        try:
            self.cmd("QUIT")
        except OSError:
            pass
        self.s.close()
