"""tern's MIME answers against a real Dovecot (differential test).

The same corpus (tests/integration/mime_corpus/*.eml, plus a generated
message with a 1 MB attachment) is APPENDed to a Dovecot 2.3 on loopback and
to tern; then ENVELOPE, BODYSTRUCTURE, BODY, RFC822.SIZE and a set of
BODY.PEEK[section] (with partials) are fetched from both and compared value
by value.

What "equal" means: both responses are parsed into values (lists, strings,
NIL, atoms); a string is its octets whether it came quoted or as a literal
(RFC 3501 4.3: the two forms are the same string; Dovecot sends a literal
where tern quotes). Nothing else is normalised: where the two servers
differ, the difference is listed in EXPECTED with the RFC
reason and checked to be exactly that difference (so a fix in either server,
or a new mismatch, fails the test), and docs/imap.md lists it under
"Differences from Dovecot".

Corpus files named raw-*.eml are sent byte for byte (lone CR, LF-only lines,
NUL octets, no header/body separator); the others are stored with LF line
ends in git and sent with CRLF.
"""
import base64
import imaplib
import re
import time
from pathlib import Path

import pytest

from conftest import Tern
from dovecotkit import Dovecot

USER = "alice@example.org"
PW = "secret"
CORPUS = Path(__file__).resolve().parent / "mime_corpus"

SECTIONS = [
    "", "HEADER", "TEXT", "1", "1.MIME", "2", "2.1", "2.MIME", "2.HEADER", "2.TEXT",
    "2.1.MIME", "2.2", "3", "3.1", "3.MIME", "4.MIME", "5.MIME", "1.1", "4", "4.1", "2.1.1", "2.2.HEADER", "1.HEADER",
    "HEADER.FIELDS (From Subject To)", "HEADER.FIELDS.NOT (Subject Received From)",
    "HEADER.FIELDS (Content-Type X-Missing)", "2.HEADER.FIELDS (Subject)",
]
PARTIALS = ["[]<0.100>", "[1]<10.20>", "[TEXT]<5.1000000>", "[HEADER]<100000.5>", "[2]<0.3>"]


def corpus():
    """[(name, octets)] in name order, and the 1 MB attachment message."""
    out = []
    for p in sorted(CORPUS.glob("*.eml")):
        data = p.read_bytes()
        if not p.name.startswith("raw-"):
            data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        out.append((p.name, data))
    blob = bytes((i * 7 + i // 251) & 0xFF for i in range(1024 * 1024))
    b64 = base64.encodebytes(blob).replace(b"\n", b"\r\n")
    big = (b"From: big@example.org\r\nSubject: 1 MB attachment\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=\"big\"\r\n\r\n--big\r\n"
           b"Content-Type: text/plain\r\n\r\nsee the attachment\r\n--big\r\n"
           b"Content-Type: application/octet-stream; name=blob.bin\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + b64 + b"--big--\r\n")
    out.append(("generated-1mb.eml", big))
    return out


def corpus_pairs():
    """[(name, octets for tern, octets for Dovecot)]: the same octets to both."""
    return [(n, d, d) for n, d in corpus()]


# ---- an IMAP value parser ----------------------------------------------------------

class Atom(str):
    """An atom or number as sent (NIL is None, strings are bytes)."""


def parse_values(buf, pos=0, end_char=None):
    """Parses IMAP values from the wire form buf[pos:] until end_char (b')')
    or the end. Returns (list, pos after end_char)."""
    out = []
    n = len(buf)
    while pos < n:
        c = buf[pos:pos + 1]
        if c == b" ":
            pos += 1
        elif c == b")" and end_char == b")":
            return out, pos + 1
        elif c == b"(":
            v, pos = parse_values(buf, pos + 1, b")")
            out.append(v)
        elif c == b'"':
            s = bytearray()
            pos += 1
            while buf[pos:pos + 1] != b'"':
                if buf[pos:pos + 1] == b"\\":
                    pos += 1
                s += buf[pos:pos + 1]
                pos += 1
            out.append(bytes(s))
            pos += 1
        elif c == b"{":
            m = re.compile(rb"\{(\d+)\}\r\n").match(buf, pos)
            assert m, buf[pos:pos + 40]
            ln = int(m.group(1))
            out.append(bytes(buf[m.end():m.end() + ln]))
            pos = m.end() + ln
        else:
            start = pos
            depth = 0
            while pos < n:
                ch = buf[pos:pos + 1]
                if ch == b"[":
                    depth += 1
                elif ch == b"]":
                    depth -= 1
                elif depth == 0 and ch in b" ()":
                    break
                pos += 1
            a = buf[start:pos].decode("latin-1")
            out.append(None if a.upper() == "NIL" else Atom(a))
    assert end_char is None, "unterminated list"
    return out, pos


def fetch_responses(data):
    """imaplib's FETCH data -> {seq: {ITEM: value}}. A tuple is a line part
    ending in a literal (and the literal); a bytes element ends a line."""
    wire = []
    cur = b""
    for item in data:
        if isinstance(item, tuple):
            cur += item[0] + b"\r\n" + item[1]
        else:
            cur += item
            wire.append(cur)
            cur = b""
    assert cur == b"", cur
    out = {}
    for w in wire:
        vals, _ = parse_values(w)
        assert len(vals) == 2 and isinstance(vals[1], list), w[:200]
        kv = vals[1]
        out[int(vals[0])] = {kv[i].upper(): kv[i + 1] for i in range(0, len(kv), 2)}
    return out


# ---- the two servers --------------------------------------------------------------------

def append_raw(c, mailbox, data):
    """APPEND with the octets exactly as given (imaplib's append() would turn
    every line end into CRLF)."""
    c.literal = data
    typ, resp = c._command_complete("APPEND", c._command("APPEND", mailbox))
    assert typ == "OK", resp
    return typ


class Side:
    def __init__(self, name, client):
        self.name = name
        self.c = client

    def fetch(self, seq, items):
        """(status, {ITEM: value}) of one FETCH; a tagged NO/BAD is the status."""
        try:
            typ, data = self.c.fetch(str(seq), items)
        except imaplib.IMAP4.error as e:
            return ("BAD", str(e)[:0])
        if typ != "OK":
            return (typ, None)
        got = fetch_responses([d for d in data if d is not None])
        return ("OK", got.get(seq, {}))


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    d = Dovecot(needed_for="the Dovecot comparison")
    t = None
    try:
        t = Tern(tmp_path_factory.mktemp("vs-dovecot"))
        t.cli("domain", "add", "example.org")
        t.cli("user", "add", USER, "--password", PW, "--store", "s1")
        t.serve()
        tc = imaplib.IMAP4("127.0.0.1", t.ports["imap"])
        tc.login(USER, PW)
        dc = d.client()
        msgs = corpus_pairs()
        for _, to_tern, to_dovecot in msgs:
            append_raw(tc, "INBOX", to_tern)
            append_raw(dc, "INBOX", to_dovecot)
        for side in (tc, dc):
            typ, _ = side.select("INBOX")
            assert typ == "OK"
        yield msgs, Side("tern", tc), Side("dovecot", dc)
        for c in (tc, dc):
            try:
                c.logout()
            except (OSError, imaplib.IMAP4.error):
                pass
    finally:
        if t is not None:
            t.stop()
        d.stop()


# ---- what is compared how ----------------------------------------------------------------

def _fold(v):
    return v.lower() if isinstance(v, bytes) else v


def _fold_params(p):
    """Parameter names fold (RFC 2045 5.1), and charset values (RFC 2046
    4.1.2); every other value is compared as sent."""
    if not isinstance(p, list):
        return p
    out = []
    for i in range(0, len(p) - 1, 2):
        name = _fold(p[i])
        val = _fold(p[i + 1]) if name == b"charset" else p[i + 1]
        out += [name, val]
    return out


def fold_case(body):
    """BODYSTRUCTURE / BODY with the values that are case-insensitive by RFC
    folded to lower case: media type and subtype, parameter names (RFC 2045
    5.1), charset values (RFC 2046 4.1.2), the transfer encoding (RFC 2045
    6.1), the disposition type and its parameter names (RFC 2183 2.8). tern
    writes them upper-case (RFC 3501's examples), Dovecot as sent or
    lower-case; nothing else is folded."""
    if not isinstance(body, list) or not body:
        return body
    if isinstance(body[0], list):  # multipart: parts..., subtype, ext
        n = 0
        while n < len(body) and isinstance(body[n], list):
            n += 1
        out = [fold_case(p) for p in body[:n]]
        rest = list(body[n:])
        if rest:
            rest[0] = _fold(rest[0])
        if len(rest) > 1:
            rest[1] = _fold_params(rest[1])
        if len(rest) > 2:
            rest[2] = _fold_dsp(rest[2])
        return out + rest
    out = list(body)
    out[0], out[1] = _fold(out[0]), _fold(out[1])
    out[2] = _fold_params(out[2])
    out[5] = _fold(out[5])
    ext = 7
    if out[0] == b"message" and out[1] == b"rfc822" and len(out) > 9:
        out[8] = fold_case(out[8])
        ext = 10
    elif out[0] == b"text":
        ext = 8
    if len(out) > ext + 1:
        out[ext + 1] = _fold_dsp(out[ext + 1])
    return out


def _fold_dsp(d):
    if isinstance(d, list) and len(d) == 2:
        return [_fold(d[0]), _fold_params(d[1])]
    return d


def _multipart(node):
    return isinstance(node, list) and bool(node) and isinstance(node[0], list)


def _is_rfc822(node):
    return (isinstance(node, list) and len(node) > 9 and not _multipart(node)
            and _fold(node[0]) == b"message" and _fold(node[1]) == b"rfc822")


def _kids(node):
    """The numbered sub-parts of a part (RFC 3501 6.4.5)."""
    if _multipart(node):
        kids = []
        for p in node:
            if not isinstance(p, list):
                break
            kids.append(p)
        return kids
    if _is_rfc822(node):
        inner = node[8]
        return _kids(inner) if _multipart(inner) else [inner]
    return []


def part_of(body, spec):
    """The BODYSTRUCTURE node of part `spec` ("2.1") by RFC 3501 6.4.5's
    numbering (a non-multipart message has part 1, its body), or None."""
    kids = _kids(body) if _multipart(body) else [body]
    node = None
    for num in spec.split("."):
        k = int(num)
        if k > len(kids):
            return None
        node = kids[k - 1]
        kids = _kids(node)
    return node


# ---- expected differences ----------------------------------------------------------------

# Where tern and Dovecot 2.3 differ by design: message -> (why, the items that
# differ). Each listed item must differ (a change in either server fails the
# test and this list is updated); every item not listed must be equal.
# docs/imap.md "Differences from Dovecot" says the same.
RFC822_CRLF = ("The line end before a delimiter belongs to the delimiter (RFC 2046 5.1.1); "
               "Dovecot counts it into a message/rfc822 part (and its multipart body): "
               "2 octets and 1 line more.")
EXPECTED = {
    "05-nested-rfc822.eml": (RFC822_CRLF, {"BODYSTRUCTURE", "BODY", "BODY.PEEK[2]",
                                           "BODY.PEEK[2.1]", "BODY.PEEK[2.TEXT]"}),
    "27-delimiter-after-blank.eml": (RFC822_CRLF, {"BODYSTRUCTURE", "BODY", "BODY.PEEK[1]",
                                                   "BODY.PEEK[1]<10.20>"}),
    "09-encoded-names.eml": (
        'A lone quoted string ("only name") in an address list: tern reads it as a '
        "local-part without a domain (RFC 5322 3.4.1: local-part = dot-atom / quoted-string, "
        "as it reads a lone atom), Dovecot as a display name without an address.",
        {"ENVELOPE"}),
    "12-boundary-like.eml": (
        'A delimiter line is "--" boundary, optional blanks, CRLF (RFC 2046 5.1.1\'s '
        'grammar); Dovecot also ends a part at a line that only starts with it ("--bX").',
        {"BODYSTRUCTURE", "BODY", "BODY.PEEK[1]", "BODY.PEEK[2]", "BODY.PEEK[2.MIME]",
         "BODY.PEEK[2]<0.3>"}),
    "15-repeated-ct.eml": (
        "A repeated Content-Type / Content-Transfer-Encoding: no RFC says which counts; tern "
        "takes the last, as GMime does, so BODYSTRUCTURE agrees with the decoding SEARCH uses; "
        "Dovecot takes the first.",
        {"BODYSTRUCTURE", "BODY"}),
    "16-invalid-ct.eml": (
        'An invalid Content-Type ("garbage", "text/", "/plain") is text/plain; '
        "charset=us-ascii (RFC 2045 5.2); Dovecot writes the broken type (\"garbage\" \"\", "
        '"" "") without a line count.',
        {"BODYSTRUCTURE", "BODY"}),
    "26-message-encoded.eml": (
        "A message/rfc822 part in base64 is not allowed (RFC 2046 5.2.1: 7bit, 8bit or "
        "binary only); tern writes it as an opaque APPLICATION/OCTET-STREAM leaf, Dovecot as "
        "a message/rfc822 with an empty envelope and body.",
        {"BODYSTRUCTURE", "BODY", "BODY.PEEK[1]", "BODY.PEEK[1.HEADER]", "BODY.PEEK[1]<10.20>"}),
    "raw-17-lone-cr.eml": (
        "A lone CR is not a line end (RFC 5322 2.3, RFC 2046's delimiter needs CRLF): tern "
        "keeps \"--cr\\rContent-Type...\" as content and writes \"lone\\rCR\" in the "
        "subject without the CR; Dovecot ends a line there.",
        {"ENVELOPE", "BODYSTRUCTURE", "BODY", "BODY.PEEK[1]", "BODY.PEEK[2]", "BODY.PEEK[2.1]",
         "BODY.PEEK[2.MIME]", "BODY.PEEK[2.1.MIME]", "BODY.PEEK[1]<10.20>",
         "BODY.PEEK[2]<0.3>"}),
    "raw-20-no-separator.eml": (
        "HEADER.FIELDS[.NOT] of a header without its blank line: tern always ends the subset "
        "with the blank line (RFC 3501 6.4.5 HEADER.FIELDS is a header), Dovecot only when "
        "the message has one.",
        {"BODY.PEEK[HEADER.FIELDS.NOT (Subject Received From)]"}),
    "raw-21-no-separator-no-eol.eml": (
        "As raw-20 (HEADER.FIELDS always ends with the blank line).",
        {"BODY.PEEK[HEADER.FIELDS (From Subject To)]",
         "BODY.PEEK[HEADER.FIELDS.NOT (Subject Received From)]"}),
    "raw-24-nul.eml": (
        "A NUL in a header value: tern writes '?', Dovecot U+FFFD (RFC 3501 allows neither "
        "NUL in a string; both replace it).",
        {"ENVELOPE"}),
}

# APPEND turns bare LFs into CRLF (RFC 3501 2.3.4 sizes count CRLF lines, as
# Dovecot serves them), so the LF-only messages are compared like the rest;
# a stored NUL goes out as 0x80 in a literal (RFC 3501's CHAR8 excludes NUL),
# as Dovecot sends it: no answer of tern's may hold a NUL octet.


def has_nul(v):
    if isinstance(v, bytes):
        return b"\0" in v
    if isinstance(v, (list, tuple)):
        return any(has_nul(x) for x in v)
    return False


def show(v):
    return repr(v)[:3000]


def compare_item(msg, item, tv, dv, problems):
    if has_nul(tv):
        problems.append(f"{msg} {item}: a NUL octet in tern's answer: {show(tv)}")
    listed = item in EXPECTED.get(msg, ("", set()))[1]
    if listed and tv == dv:
        problems.append(f"{msg} {item}: listed as an expected difference but equal: {show(tv)}")
    elif not listed and tv != dv:
        problems.append(f"{msg} {item}:\n  tern    {show(tv)}\n  dovecot {show(dv)}")


def section_exists(body, spec):
    """False if section `spec` ("2.1.MIME", "[1]<10.20>") names a part tern's
    own BODYSTRUCTURE does not have (or HEADER/TEXT of a part that is not
    message/rfc822)."""
    spec = re.sub(r"^\[(.*)\](?:<.*>)?$", r"\1", spec)
    m = re.match(r"(\d+(?:\.\d+)*)(?:\.(MIME|HEADER|TEXT|HEADER\.FIELDS.*))?$", spec)
    if not m:
        return True
    node = part_of(body, m.group(1))
    if node is None:
        return False
    if m.group(2) and m.group(2) != "MIME":
        return _is_rfc822(node)
    return True


def dovecot_alias(body, spec):
    """Dovecot answers N.1 of a leaf part N of a multipart as N (and N.1.MIME
    as N.MIME), a numbering RFC 3501 6.4.5 does not have: that section, or
    None (then Dovecot's answer is an empty string)."""
    m = re.match(r"^\[?((?:\d+\.)*\d+)\.1(\.MIME)?(\](?:<.*>)?)?$", spec)
    if not m:
        return None
    node = part_of(body, m.group(1))
    if node is None or _multipart(node) or _is_rfc822(node):
        return None
    return m.group(1) + (m.group(2) or "")


def value_of(r):
    return list(r.values()) if isinstance(r, dict) else r


def test_fetch_matches_dovecot(servers):
    started = time.time()
    msgs, tern, dove = servers
    problems = []
    checked = 0
    for seq, (name, to_tern, _) in enumerate(msgs, 1):
        ts, tr = tern.fetch(seq, "(ENVELOPE BODYSTRUCTURE BODY RFC822.SIZE)")
        ds, dr = dove.fetch(seq, "(ENVELOPE BODYSTRUCTURE BODY RFC822.SIZE)")
        assert ts == "OK" and ds == "OK", (name, ts, ds)
        compare_item(name, "ENVELOPE", tr["ENVELOPE"], dr["ENVELOPE"], problems)
        compare_item(name, "RFC822.SIZE", tr["RFC822.SIZE"], dr["RFC822.SIZE"], problems)
        for item in ("BODYSTRUCTURE", "BODY"):
            compare_item(name, item, fold_case(tr[item]), fold_case(dr[item]), problems)
        structure = tr["BODYSTRUCTURE"]
        for sec in SECTIONS + PARTIALS:
            spec = sec if sec.startswith("[") else f"[{sec}]"
            item = f"BODY.PEEK{spec}"
            ts, tr = tern.fetch(seq, f"({item})")
            ds, dr = dove.fetch(seq, f"({item})")
            checked += 1
            listed = item in EXPECTED.get(name, ("", set()))[1]
            if not listed and not section_exists(structure, sec):
                # RFC 3501 does not say what a FETCH of a part that does not
                # exist returns: tern answers NO (src/mime: "well-formed, but
                # no such part"), Dovecot an empty string, or for N.1 of a
                # leaf N part N itself. Checked exactly.
                want = [("NO", "OK", [b""])]
                alias = dovecot_alias(structure, spec)
                if alias is not None:
                    part = spec[spec.index("]"):].replace("]", "", 1)
                    _, ar = dove.fetch(seq, f"(BODY.PEEK[{alias}]{part})")
                    want.append(("NO", "OK", value_of(ar)))
                got = (ts, ds, value_of(dr))
                if got not in want:
                    problems.append(f"{name} {item}: no such part: {got!r}, want {want!r}")
                continue
            tv = (ts, sorted(tr.items()) if isinstance(tr, dict) else tr)
            dv = (ds, sorted(dr.items()) if isinstance(dr, dict) else dr)
            compare_item(name, item, tv, dv, problems)
    assert not problems, f"{len(problems)} differences:\n" + "\n".join(problems)
    assert checked > 25 * len(SECTIONS)
    assert time.time() - started < 60
