/*
 * test_mime — ENVELOPE, BODYSTRUCTURE / BODY and body sections of the mime
 * module against strings derived by hand from RFC 3501 7.4.2 and 6.4.5
 * (and cross-checked with Dovecot 2.3 at development time: the same
 * answers, but for the case of type names, which we upper-case), the
 * SEARCH helpers, and malformed messages (no blank line, missing close
 * delimiter, bare LF, NULs, 8-bit headers, deep nesting, many parts).
 *
 * Every output is also run through mime_grammar.h, an independent checker
 * of RFC 3501's ABNF, and every part it reports is fetched as a section:
 * its octets must have the size BODYSTRUCTURE announced.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mime/mime.h"
#include "mime_grammar.h"

/* ---- helpers ------------------------------------------------------------ */

/* Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF). */
static bool utf8_valid(const char *s, size_t n)
{
    if (n == 0)
        return true;
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    while (p < end) {
        unsigned c = *p++;
        size_t more = c < 0x80             ? 0
                      : (c & 0xe0) == 0xc0 ? 1
                      : (c & 0xf0) == 0xe0 ? 2
                      : (c & 0xf8) == 0xf0 ? 3
                                           : 9;
        if (more == 9 || (size_t)(end - p) < more)
            return false;
        unsigned cp = more == 0 ? c : c & (0x3f >> more);
        for (size_t i = 0; i < more; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (p[i] & 0x3f);
        }
        static const unsigned min[] = {0, 0x80, 0x800, 0x10000};
        if (c == 0 || cp < min[more] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        p += more;
    }
    return true;
}

static char *envelope_of(struct mime_msg *m)
{
    struct buf b;
    buf_init(&b, 0);
    mime_envelope(m, &b);
    assert_true(gram_check_envelope(b.data, b.len));
    return b.data;
}

struct parts {
    struct mime_msg *m;
    size_t n;
};

/* For each part the grammar checker reports: BODY[section] exists and has
 * the announced size; its MIME header ends where its body starts; a
 * message/rfc822 part's HEADER and TEXT are its body, split. */
static void check_part(void *ctx, const char *section, unsigned long size, bool multi, bool msg)
{
    struct parts *pc = ctx;
    struct buf out;
    buf_init(&out, 0);
    const char *error = NULL;
    size_t off, len, moff, mlen, hoff, hlen, toff, tlen;
    char spec[600];
    pc->n++;
    if (mime_section_locate(pc->m, section, &out, &off, &len, &error) != MIME_SECTION_OK)
        fail_msg("BODY[%s]: %s", section, error);
    if (!multi && len != size)
        fail_msg("BODY[%s] is %zu octets, BODYSTRUCTURE says %lu", section, len, size);
    snprintf(spec, sizeof(spec), "%s.MIME", section);
    assert_int_equal(mime_section_locate(pc->m, spec, &out, &moff, &mlen, &error), MIME_SECTION_OK);
    if (len > 0)
        assert_int_equal(moff + mlen, off);
    /* inside its parent's body (a top-level part: inside the message) */
    const char *dot = strrchr(section, '.');
    if (dot == NULL)
        spec[0] = '\0';
    else
        snprintf(spec, sizeof(spec), "%.*s", (int)(dot - section), section);
    size_t poff, plen;
    assert_int_equal(mime_section_locate(pc->m, spec, &out, &poff, &plen, &error), MIME_SECTION_OK);
    assert_true(moff >= poff && off + len <= poff + plen);
    if (msg) {
        snprintf(spec, sizeof(spec), "%s.HEADER", section);
        assert_int_equal(mime_section_locate(pc->m, spec, &out, &hoff, &hlen, &error),
                         MIME_SECTION_OK);
        snprintf(spec, sizeof(spec), "%s.TEXT", section);
        assert_int_equal(mime_section_locate(pc->m, spec, &out, &toff, &tlen, &error),
                         MIME_SECTION_OK);
        assert_int_equal(hoff, off);
        assert_int_equal(toff + tlen, off + len);
        assert_true(hoff + hlen == toff);
    }
    assert_int_equal(out.len, 0); /* no copy was made */
    buf_free(&out);
}

/* BODYSTRUCTURE (or BODY) as a malloc'd string, after the grammar and the
 * section checks. */
static char *structure_of(struct mime_msg *m, bool ext)
{
    struct buf b;
    buf_init(&b, 0);
    mime_bodystructure(m, ext, &b);
    struct parts pc = {.m = m};
    bool ext_seen;
    if (!gram_check_body(b.data, b.len, check_part, &pc, &ext_seen))
        fail_msg("not RFC 3501 grammar: %s", b.data);
    assert_true(ext_seen == ext);
    assert_true(pc.n >= 1);
    return b.data;
}

/* Every check that holds for any message. */
static void check_any(const char *data, size_t len)
{
    struct mime_msg *m = mime_parse(data, len);
    free(envelope_of(m));
    free(structure_of(m, false));
    free(structure_of(m, true));
    size_t off, hl, tl;
    const char *error;
    struct buf b;
    buf_init(&b, 0);
    assert_int_equal(mime_section_locate(m, "", &b, &off, &hl, &error), MIME_SECTION_OK);
    assert_int_equal(hl, len);
    assert_int_equal(mime_section_locate(m, "HEADER", &b, &off, &hl, &error), MIME_SECTION_OK);
    assert_int_equal(off, 0);
    assert_int_equal(mime_section_locate(m, "TEXT", &b, &off, &tl, &error), MIME_SECTION_OK);
    assert_int_equal(off, hl);
    assert_int_equal(hl + tl, len);
    mime_body_text(m, &b);
    mime_header_text(m, "subject", &b);
    assert_true(utf8_valid(b.data, b.len));
    mime_free(&m);
    assert_null(m);
    buf_free(&b);
}

/* ---- whole messages ----------------------------------------------------- */

#define TEXT_PLAIN_ASCII "\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\""

struct msg_case {
    const char *name;
    const char *msg;
    const char *envelope;
    const char *body;          /* BODY */
    const char *bodystructure; /* BODYSTRUCTURE */
};

struct section_case {
    const char *msg;
    const char *spec;
    enum mime_section want;
    const char *octets;
};

static const char MSG_SIMPLE[] = "Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\n"
                                 "From: Fred Foobar <foobar@Blurdybloop.COM>\r\n"
                                 "Subject: afternoon meeting\r\n"
                                 "To: mooch@owatagu.siam.edu\r\n"
                                 "Message-Id: <B27397-0100000@Blurdybloop.COM>\r\n"
                                 "MIME-Version: 1.0\r\n"
                                 "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n"
                                 "\r\n"
                                 "Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n";

static const char MSG_ALTERNATIVE[] = "From: a@example.org\r\n"
                                      "To: b@example.org\r\n"
                                      "Subject: alt\r\n"
                                      "MIME-Version: 1.0\r\n"
                                      "Content-Type: multipart/alternative; boundary=\"=_alt\"\r\n"
                                      "\r\n"
                                      "This is a MIME message.\r\n"
                                      "--=_alt\r\n"
                                      "Content-Type: text/plain; charset=utf-8\r\n"
                                      "Content-Transfer-Encoding: quoted-printable\r\n"
                                      "\r\n"
                                      "Gr=C3=BC=C3=9Fe\r\n"
                                      "line 2\r\n"
                                      "--=_alt\r\n"
                                      "Content-Type: text/html; charset=utf-8\r\n"
                                      "\r\n"
                                      "<p>Hi</p>\r\n"
                                      "--=_alt--\r\n";

static const char MSG_MIXED[] =
    "From: \"Ann Example\" <ann@example.org>\r\n"
    "To: bob@example.org\r\n"
    "Subject: report\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: multipart/mixed; boundary=XyZ\r\n"
    "\r\n"
    "--XyZ\r\n"
    "Content-Type: text/plain\r\n"
    "\r\n"
    "See attached.\r\n"
    "--XyZ\r\n"
    "Content-Type: application/pdf; name=\"report q3.pdf\"\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "Content-Disposition: attachment; filename=\"report q3.pdf\"; size=6\r\n"
    "Content-ID: <part2@example.org>\r\n"
    "Content-Description: The report\r\n"
    "Content-Language: en-GB, fr\r\n"
    "Content-Location: http://example.org/r.pdf\r\n"
    "\r\n"
    "JVBERi0x\r\n"
    "LjQK\r\n"
    "--XyZ--\r\n";

static const char MSG_NESTED[] = "Subject: outer\r\n"
                                 "Content-Type: multipart/mixed; boundary=\"outer b\"\r\n"
                                 "\r\n"
                                 "--outer b\r\n"
                                 "Content-Type: text/plain\r\n"
                                 "\r\n"
                                 "intro\r\n"
                                 "--outer b\r\n"
                                 "Content-Type: message/rfc822\r\n"
                                 "Content-Disposition: attachment; filename=\"fwd.eml\"\r\n"
                                 "\r\n"
                                 "From: A <a@b.c>\r\n"
                                 "Subject: inner\r\n"
                                 "Content-Type: multipart/alternative; boundary=in\r\n"
                                 "\r\n"
                                 "--in\r\n"
                                 "Content-Type: text/plain; charset=utf-8\r\n"
                                 "\r\n"
                                 "plain\r\n"
                                 "--in\r\n"
                                 "Content-Type: text/html\r\n"
                                 "\r\n"
                                 "<b>x</b>\r\n"
                                 "--in--\r\n"
                                 "\r\n"
                                 "--outer b\r\n"
                                 "Content-Type: application/octet-stream; name=a.bin\r\n"
                                 "Content-Transfer-Encoding: base64\r\n"
                                 "\r\n"
                                 "AAEC\r\n"
                                 "--outer b--\r\n";

static const char MSG_MSGROOT[] = "Content-Type: message/rfc822\r\n"
                                  "\r\n"
                                  "Subject: in\r\n"
                                  "\r\n"
                                  "body\r\n";

static const char MSG_DIGEST[] = "Content-Type: multipart/digest; boundary=x\r\n"
                                 "\r\n"
                                 "--x\r\n"
                                 "\r\n"
                                 "Subject: s\r\n"
                                 "\r\n"
                                 "body\r\n"
                                 "--x\r\n"
                                 "Content-Type: text/plain; name=\"a b\"\r\n"
                                 "Content-Language: en\r\n"
                                 "Content-Disposition: attachment\r\n"
                                 "\r\n"
                                 "x\r\n"
                                 "--x--\r\n";

static const char MSG_RFC2047[] = "From: =?ISO-8859-1?Q?Andr=E9?= Pirard <PIRARD@vm1.ulg.ac.be>\r\n"
                                  "To: =?utf-8?b?SsO2cmc=?= <j@example.org>\r\n"
                                  "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= aus\r\n"
                                  " =?iso-8859-1?q?K=F6ln?=\r\n"
                                  "Date: Tue, 1 Jul 2003 10:52:37 +0200\r\n"
                                  "\r\n"
                                  "x\r\n";

static const char MSG_GROUPS[] =
    "To: A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;\r\n"
    "Cc: Undisclosed recipients:;\r\n"
    "Bcc: <@a.test,@b.test:x@c.test> (route), \"a\\\"b\"@d.test, missing, @nolocal.test\r\n"
    "In-Reply-To: <parent@x.test>\r\n"
    "\r\n";

static const char MSG_RFC2231[] =
    "Content-Type: application/x-stuff;\r\n"
    " title*0*=us-ascii'en'This%20is%20even%20more%20;\r\n"
    " title*1*=%2A%2A%2Afun%2A%2A%2A%20;\r\n"
    " title*2=\"isn't it!\"; plain=1; Name*=utf-8''%E2%82%AC.txt\r\n"
    "Content-Disposition: attachment; filename*1=\"b.txt\"; filename*0=\"a \"\r\n"
    "\r\n"
    "x";

static const struct msg_case MSGS[] = {
    {"simple text", MSG_SIMPLE,
     "(\"Mon, 7 Feb 1994 21:52:25 -0800 (PST)\" \"afternoon meeting\" ((\"Fred Foobar\" NIL \""
     "foobar\" \"Blurdybloop.COM\")) ((\"Fred Foobar\" NIL \"foobar\" \"Blurdybloop.COM\")) (("
     "\"Fred Foobar\" NIL \"foobar\" \"Blurdybloop.COM\")) ((NIL NIL \"mooch\" \"owatagu.siam."
     "edu\")) NIL NIL NIL \"<B27397-0100000@Blurdybloop.COM>\")",
     "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 55 1)",
     "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 55 1 NIL NIL NIL NIL)"},
    {"multipart/alternative", MSG_ALTERNATIVE,
     "(NIL \"alt\" ((NIL NIL \"a\" \"example.org\")) ((NIL NIL \"a\" \"example.org\")) ((NIL N"
     "IL \"a\" \"example.org\")) ((NIL NIL \"b\" \"example.org\")) NIL NIL NIL NIL)",
     "((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"utf-8\") NIL NIL \"QUOTED-PRINTABLE\" 23 1)(\"TEXT\""
     " \"HTML\" (\"CHARSET\" \"utf-8\") NIL NIL \"7BIT\" 9 0) \"ALTERNATIVE\")",
     "((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"utf-8\") NIL NIL \"QUOTED-PRINTABLE\" 23 1 NIL NIL N"
     "IL NIL)(\"TEXT\" \"HTML\" (\"CHARSET\" \"utf-8\") NIL NIL \"7BIT\" 9 0 NIL NIL NIL NIL) "
     "\"ALTERNATIVE\" (\"BOUNDARY\" \"=_alt\") NIL NIL NIL)"},
    {"multipart/mixed with a base64 attachment", MSG_MIXED,
     "(NIL \"report\" ((\"Ann Example\" NIL \"ann\" \"example.org\")) ((\"Ann Example\" NIL \""
     "ann\" \"example.org\")) ((\"Ann Example\" NIL \"ann\" \"example.org\")) ((NIL NIL \"bob\""
     " \"example.org\")) NIL NIL NIL NIL)",
     "((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 13 0)(\"APPLICATION\" \""
     "PDF\" (\"NAME\" \"report q3.pdf\") \"<part2@example.org>\" \"The report\" \"BASE64\" 14)"
     " \"MIXED\")",
     "((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 13 0 NIL NIL NIL NIL)(\""
     "APPLICATION\" \"PDF\" (\"NAME\" \"report q3.pdf\") \"<part2@example.org>\" \"The report\""
     " \"BASE64\" 14 NIL (\"ATTACHMENT\" (\"FILENAME\" \"report q3.pdf\" \"SIZE\" \"6\")) (\"e"
     "n-GB\" \"fr\") \"http://example.org/r.pdf\") \"MIXED\" (\"BOUNDARY\" \"XyZ\") NIL NIL NI"
     "L)"},
    {"nested message/rfc822", MSG_NESTED, "(NIL \"outer\" NIL NIL NIL NIL NIL NIL NIL NIL)",
     "((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 5 0)(\"MESSAGE\" \"RFC8"
     "22\" NIL NIL NIL \"7BIT\" 192 (NIL \"inner\" ((\"A\" NIL \"a\" \"b.c\")) ((\"A\" NIL \"a"
     "\" \"b.c\")) ((\"A\" NIL \"a\" \"b.c\")) NIL NIL NIL NIL NIL) ((\"TEXT\" \"PLAIN\" (\"CH"
     "ARSET\" \"utf-8\") NIL NIL \"7BIT\" 5 0)(\"TEXT\" \"HTML\" (\"CHARSET\" \"US-ASCII\") NI"
     "L NIL \"7BIT\" 8 0) \"ALTERNATIVE\") 13)(\"APPLICATION\" \"OCTET-STREAM\" (\"NAME\" \"a."
     "bin\") NIL NIL \"BASE64\" 4) \"MIXED\")",
     "((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 5 0 NIL NIL NIL NIL)(\""
     "MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 192 (NIL \"inner\" ((\"A\" NIL \"a\" \"b.c\"))"
     " ((\"A\" NIL \"a\" \"b.c\")) ((\"A\" NIL \"a\" \"b.c\")) NIL NIL NIL NIL NIL) ((\"TEXT\""
     " \"PLAIN\" (\"CHARSET\" \"utf-8\") NIL NIL \"7BIT\" 5 0 NIL NIL NIL NIL)(\"TEXT\" \"HTML"
     "\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 8 0 NIL NIL NIL NIL) \"ALTERNATIVE\" (\"B"
     "OUNDARY\" \"in\") NIL NIL NIL) 13 NIL (\"ATTACHMENT\" (\"FILENAME\" \"fwd.eml\")) NIL NI"
     "L)(\"APPLICATION\" \"OCTET-STREAM\" (\"NAME\" \"a.bin\") NIL NIL \"BASE64\" 4 NIL NIL NI"
     "L NIL) \"MIXED\" (\"BOUNDARY\" \"outer b\") NIL NIL NIL)"},
    {"message/rfc822 at the top", MSG_MSGROOT, "(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)",
     "(\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 21 (NIL \"in\" NIL NIL NIL NIL NIL NIL NIL "
     "NIL) (\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 6 1) 3)",
     "(\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 21 (NIL \"in\" NIL NIL NIL NIL NIL NIL NIL "
     "NIL) (\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 6 1 NIL NIL NIL NIL"
     ") 3 NIL NIL NIL NIL)"},
    {"multipart/digest: parts default to message/rfc822", MSG_DIGEST,
     "(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)",
     "((\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 18 (NIL \"s\" NIL NIL NIL NIL NIL NIL NIL "
     "NIL) (\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 4 0) 2)(\"TEXT\" \""
     "PLAIN\" (\"NAME\" \"a b\" \"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 1 0) \"DIGEST\")",
     "((\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 18 (NIL \"s\" NIL NIL NIL NIL NIL NIL NIL "
     "NIL) (\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 4 0 NIL NIL NIL NIL"
     ") 2 NIL NIL NIL NIL)(\"TEXT\" \"PLAIN\" (\"NAME\" \"a b\" \"CHARSET\" \"US-ASCII\") NIL "
     "NIL \"7BIT\" 1 0 NIL (\"ATTACHMENT\" NIL) (\"en\") NIL) \"DIGEST\" (\"BOUNDARY\" \"x\") "
     "NIL NIL NIL)"},
    {"RFC 2047 words stay encoded in ENVELOPE", MSG_RFC2047,
     "(\"Tue, 1 Jul 2003 10:52:37 +0200\" \"=?utf-8?q?Gr=C3=BC=C3=9Fe?= aus =?iso-8859-1?q?K=F"
     "6ln?=\" ((\"=?ISO-8859-1?Q?Andr=E9?= Pirard\" NIL \"PIRARD\" \"vm1.ulg.ac.be\")) ((\"=?I"
     "SO-8859-1?Q?Andr=E9?= Pirard\" NIL \"PIRARD\" \"vm1.ulg.ac.be\")) ((\"=?ISO-8859-1?Q?And"
     "r=E9?= Pirard\" NIL \"PIRARD\" \"vm1.ulg.ac.be\")) ((\"=?utf-8?b?SsO2cmc=?=\" NIL \"j\" "
     "\"example.org\")) NIL NIL NIL NIL)",
     "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 3 1)",
     "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 3 1 NIL NIL NIL NIL)"},
    {"groups, routes and missing headers", MSG_GROUPS,
     "(NIL NIL NIL NIL NIL ((NIL NIL \"A Group\" NIL)(\"Ed Jones\" NIL \"c\" \"a.test\")(NIL N"
     "IL \"joe\" \"where.test\")(\"John\" NIL \"jdoe\" \"one.test\")(NIL NIL NIL NIL)) ((NIL N"
     "IL \"Undisclosed recipients\" NIL)(NIL NIL NIL NIL)) ((NIL \"@a.test,@b.test\" \"x\" \"c"
     ".test\")(NIL NIL \"a\\\"b\" \"d.test\")(NIL NIL \"missing\" \"MISSING_DOMAIN\")(NIL NIL "
     "\"MISSING_MAILBOX\" \"nolocal.test\")) \"<parent@x.test>\" NIL)",
     "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 0 0)",
     "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 0 0 NIL NIL NIL NIL)"},
    {"RFC 2231 continuations are merged", MSG_RFC2231, "(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)",
     "(\"APPLICATION\" \"X-STUFF\" (\"TITLE*\" \"us-ascii'en'This%20is%20even%20more%20%2A%2A%"
     "2Afun%2A%2A%2A%20isn%27t%20it!\" \"PLAIN\" \"1\" \"NAME*\" \"utf-8''%E2%82%AC.txt\") NIL"
     " NIL \"7BIT\" 1)",
     "(\"APPLICATION\" \"X-STUFF\" (\"TITLE*\" \"us-ascii'en'This%20is%20even%20more%20%2A%2A%"
     "2Afun%2A%2A%2A%20isn%27t%20it!\" \"PLAIN\" \"1\" \"NAME*\" \"utf-8''%E2%82%AC.txt\") NIL"
     " NIL \"7BIT\" 1 NIL (\"ATTACHMENT\" (\"FILENAME\" \"a b.txt\")) NIL NIL)"},
};

static const struct section_case SECTIONS[] = {
    {MSG_SIMPLE, "", MIME_SECTION_OK,
     "Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\n"
     "From: Fred Foobar <foobar@Blurdybloop.COM>\r\n"
     "Subject: afternoon meeting\r\n"
     "To: mooch@owatagu.siam.edu\r\n"
     "Message-Id: <B27397-0100000@Blurdybloop.COM>\r\n"
     "MIME-Version: 1.0\r\n"
     "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n"
     "\r\n"
     "Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n"},
    {MSG_SIMPLE, "HEADER", MIME_SECTION_OK,
     "Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\n"
     "From: Fred Foobar <foobar@Blurdybloop.COM>\r\n"
     "Subject: afternoon meeting\r\n"
     "To: mooch@owatagu.siam.edu\r\n"
     "Message-Id: <B27397-0100000@Blurdybloop.COM>\r\n"
     "MIME-Version: 1.0\r\n"
     "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n"
     "\r\n"},
    {MSG_SIMPLE, "TEXT", MIME_SECTION_OK,
     "Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n"},
    {MSG_SIMPLE, "1", MIME_SECTION_OK, "Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n"},
    {MSG_SIMPLE, "1.MIME", MIME_SECTION_OK,
     "Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\n"
     "From: Fred Foobar <foobar@Blurdybloop.COM>\r\n"
     "Subject: afternoon meeting\r\n"
     "To: mooch@owatagu.siam.edu\r\n"
     "Message-Id: <B27397-0100000@Blurdybloop.COM>\r\n"
     "MIME-Version: 1.0\r\n"
     "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n"
     "\r\n"},
    {MSG_SIMPLE, "HEADER.FIELDS (SUBJECT date)", MIME_SECTION_OK,
     "Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\n"
     "Subject: afternoon meeting\r\n"
     "\r\n"},
    {MSG_SIMPLE, "header.fields (\"Subject\" X-None)", MIME_SECTION_OK,
     "Subject: afternoon meeting\r\n"
     "\r\n"},
    {MSG_SIMPLE, "HEADER.FIELDS (X-None)", MIME_SECTION_OK, "\r\n"},
    {MSG_SIMPLE, "HEADER.FIELDS.NOT (Date From To Message-Id MIME-Version Content-Type)",
     MIME_SECTION_OK,
     "Subject: afternoon meeting\r\n"
     "\r\n"},
    {MSG_SIMPLE, "2", MIME_SECTION_NONE, ""},
    {MSG_SIMPLE, "1.1", MIME_SECTION_NONE, ""},
    {MSG_SIMPLE, "1.HEADER", MIME_SECTION_NONE, ""},
    {MSG_SIMPLE, "4294967295", MIME_SECTION_NONE, ""},
    {MSG_MIXED, "1", MIME_SECTION_OK, "See attached."},
    {MSG_MIXED, "1.MIME", MIME_SECTION_OK,
     "Content-Type: text/plain\r\n"
     "\r\n"},
    {MSG_MIXED, "2", MIME_SECTION_OK,
     "JVBERi0x\r\n"
     "LjQK"},
    {MSG_MIXED, "2.MIME", MIME_SECTION_OK,
     "Content-Type: application/pdf; name=\"report q3.pdf\"\r\n"
     "Content-Transfer-Encoding: base64\r\n"
     "Content-Disposition: attachment; filename=\"report q3.pdf\"; size=6\r\n"
     "Content-ID: <part2@example.org>\r\n"
     "Content-Description: The report\r\n"
     "Content-Language: en-GB, fr\r\n"
     "Content-Location: http://example.org/r.pdf\r\n"
     "\r\n"},
    {MSG_MIXED, "TEXT", MIME_SECTION_OK,
     "--XyZ\r\n"
     "Content-Type: text/plain\r\n"
     "\r\n"
     "See attached.\r\n"
     "--XyZ\r\n"
     "Content-Type: application/pdf; name=\"report q3.pdf\"\r\n"
     "Content-Transfer-Encoding: base64\r\n"
     "Content-Disposition: attachment; filename=\"report q3.pdf\"; size=6\r\n"
     "Content-ID: <part2@example.org>\r\n"
     "Content-Description: The report\r\n"
     "Content-Language: en-GB, fr\r\n"
     "Content-Location: http://example.org/r.pdf\r\n"
     "\r\n"
     "JVBERi0x\r\n"
     "LjQK\r\n"
     "--XyZ--\r\n"},
    {MSG_MIXED, "HEADER.FIELDS (Subject To)", MIME_SECTION_OK,
     "To: bob@example.org\r\n"
     "Subject: report\r\n"
     "\r\n"},
    {MSG_MIXED, "HEADER.FIELDS.NOT (From To Subject MIME-Version)", MIME_SECTION_OK,
     "Content-Type: multipart/mixed; boundary=XyZ\r\n"
     "\r\n"},
    {MSG_MIXED, "3", MIME_SECTION_NONE, ""},
    {MSG_MIXED, "2.1", MIME_SECTION_NONE, ""},
    {MSG_MIXED, "2.HEADER", MIME_SECTION_NONE, ""},
    {MSG_MIXED, "2.TEXT", MIME_SECTION_NONE, ""},
    {MSG_NESTED, "2.HEADER", MIME_SECTION_OK,
     "From: A <a@b.c>\r\n"
     "Subject: inner\r\n"
     "Content-Type: multipart/alternative; boundary=in\r\n"
     "\r\n"},
    {MSG_NESTED, "2.TEXT", MIME_SECTION_OK,
     "--in\r\n"
     "Content-Type: text/plain; charset=utf-8\r\n"
     "\r\n"
     "plain\r\n"
     "--in\r\n"
     "Content-Type: text/html\r\n"
     "\r\n"
     "<b>x</b>\r\n"
     "--in--\r\n"},
    {MSG_NESTED, "2.MIME", MIME_SECTION_OK,
     "Content-Type: message/rfc822\r\n"
     "Content-Disposition: attachment; filename=\"fwd.eml\"\r\n"
     "\r\n"},
    {MSG_NESTED, "2.HEADER.FIELDS (SUBJECT)", MIME_SECTION_OK,
     "Subject: inner\r\n"
     "\r\n"},
    {MSG_NESTED, "2.HEADER.FIELDS.NOT (SUBJECT Content-Type)", MIME_SECTION_OK,
     "From: A <a@b.c>\r\n"
     "\r\n"},
    {MSG_NESTED, "2.1", MIME_SECTION_OK, "plain"},
    {MSG_NESTED, "2.1.MIME", MIME_SECTION_OK,
     "Content-Type: text/plain; charset=utf-8\r\n"
     "\r\n"},
    {MSG_NESTED, "2.2", MIME_SECTION_OK, "<b>x</b>"},
    {MSG_NESTED, "2.2.MIME", MIME_SECTION_OK,
     "Content-Type: text/html\r\n"
     "\r\n"},
    {MSG_NESTED, "3", MIME_SECTION_OK, "AAEC"},
    {MSG_NESTED, "2.3", MIME_SECTION_NONE, ""},
    {MSG_NESTED, "2.1.1", MIME_SECTION_NONE, ""},
    {MSG_NESTED, "2.1.HEADER", MIME_SECTION_NONE, ""},
    {MSG_MSGROOT, "1", MIME_SECTION_OK,
     "Subject: in\r\n"
     "\r\n"
     "body\r\n"},
    {MSG_MSGROOT, "1.MIME", MIME_SECTION_OK,
     "Content-Type: message/rfc822\r\n"
     "\r\n"},
    {MSG_MSGROOT, "1.HEADER", MIME_SECTION_OK,
     "Subject: in\r\n"
     "\r\n"},
    {MSG_MSGROOT, "1.TEXT", MIME_SECTION_OK, "body\r\n"},
    {MSG_MSGROOT, "1.1", MIME_SECTION_OK, "body\r\n"},
    {MSG_MSGROOT, "1.1.MIME", MIME_SECTION_OK,
     "Subject: in\r\n"
     "\r\n"},
    {MSG_MSGROOT, "1.2", MIME_SECTION_NONE, ""},
    {MSG_DIGEST, "1.1", MIME_SECTION_OK, "body"},
    {MSG_DIGEST, "1.HEADER", MIME_SECTION_OK,
     "Subject: s\r\n"
     "\r\n"},
    {MSG_DIGEST, "1.MIME", MIME_SECTION_OK, "\r\n"},
    {MSG_DIGEST, "2.HEADER", MIME_SECTION_NONE, ""},
};

static const char *const BAD_SPECS[] = {
    "1..2",
    "0",
    "01",
    "1.0",
    "1.",
    ".1",
    ".",
    "1.FOO",
    "FOO",
    "MIME",
    "HEADER.FIELDS",
    "HEADER.FIELDS ()",
    "HEADER.FIELDS (A",
    "HEADER.FIELDS(A)",
    "HEADER.FIELDS (A) x",
    "HEADER.FIELDS (\"A)",
    "HEADER.FIELDS (A{3})",
    "HEADER.FIELDS (A*)",
    "HEADER.FIELDS (%)",
    "HEADER.FIELDS.NOT",
    "HEADERS",
    "TEXT.1",
    "HEADER.1",
    "1.TEXT.MIME",
    "1 ",
    " 1",
    "4294967296",
    "99999999999999999999",
    "1.-1",
    "TEXTX",
    "1.MIMEX",
};

static void test_messages(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_SIZE(MSGS); i++) {
        const struct msg_case *c = &MSGS[i];
        struct mime_msg *m = mime_parse(c->msg, strlen(c->msg));
        char *env = envelope_of(m);
        if (strcmp(env, c->envelope) != 0)
            fail_msg("%s: ENVELOPE\n got %s\nwant %s", c->name, env, c->envelope);
        char *body = structure_of(m, false);
        if (strcmp(body, c->body) != 0)
            fail_msg("%s: BODY\n got %s\nwant %s", c->name, body, c->body);
        char *bs = structure_of(m, true);
        if (strcmp(bs, c->bodystructure) != 0)
            fail_msg("%s: BODYSTRUCTURE\n got %s\nwant %s", c->name, bs, c->bodystructure);
        free(env);
        free(body);
        free(bs);
        mime_free(&m);
        check_any(c->msg, strlen(c->msg));
    }
}

/* The envelope after ENVELOPE is built once more: the answers do not depend
 * on the order of calls (the structure is built lazily). */
static void test_call_order(void **state)
{
    (void)state;
    struct mime_msg *m = mime_parse(MSG_NESTED, strlen(MSG_NESTED));
    struct buf a, b;
    buf_init(&a, 0);
    buf_init(&b, 0);
    const char *error;
    assert_int_equal(mime_section_get(m, "HEADER", &a, &error), MIME_SECTION_OK);
    mime_envelope(m, &a);
    mime_bodystructure(m, true, &a);
    mime_envelope(m, &a);
    mime_free(&m);
    m = mime_parse(MSG_NESTED, strlen(MSG_NESTED));
    mime_bodystructure(m, true, &b); /* the structure first this time */
    assert_int_equal(mime_section_get(m, "HEADER", &b, &error), MIME_SECTION_OK);
    mime_envelope(m, &b);
    mime_envelope(m, &b);
    char *x = strstr(a.data, "(NIL \"outer\""), *y = strstr(b.data, "(NIL \"outer\"");
    assert_non_null(x);
    assert_non_null(y);
    assert_int_equal(a.len, b.len);
    mime_free(&m);
    buf_free(&a);
    buf_free(&b);
}

static void test_sections(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_SIZE(SECTIONS); i++) {
        const struct section_case *c = &SECTIONS[i];
        struct mime_msg *m = mime_parse(c->msg, strlen(c->msg));
        struct buf out;
        buf_init(&out, 0);
        buf_puts(&out, "prefix:"); /* sections are appended */
        const char *error = NULL;
        enum mime_section r = mime_section_get(m, c->spec, &out, &error);
        if (r != c->want)
            fail_msg("BODY[%s] of case %zu: %d (%s), want %d", c->spec, i, r, error ? error : "",
                     c->want);
        if (r == MIME_SECTION_OK) {
            size_t n = strlen(c->octets);
            if (out.len != 7 + n || memcmp(out.data + 7, c->octets, n) != 0)
                fail_msg("BODY[%s] of case %zu:\n got [%s]\nwant [%s]", c->spec, i, out.data + 7,
                         c->octets);
        } else {
            assert_non_null(error);
            assert_true(error[0] != '\0');
            assert_int_equal(out.len, 7);
        }
        buf_free(&out);
        mime_free(&m);
    }
}

static void test_bad_sections(void **state)
{
    (void)state;
    struct mime_msg *m = mime_parse(MSG_NESTED, strlen(MSG_NESTED));
    for (size_t i = 0; i < ARRAY_SIZE(BAD_SPECS); i++) {
        struct buf out;
        buf_init(&out, 0);
        const char *error = NULL;
        enum mime_section r = mime_section_get(m, BAD_SPECS[i], &out, &error);
        if (r != MIME_SECTION_BAD)
            fail_msg("BODY[%s]: %d, want BAD", BAD_SPECS[i], r);
        assert_non_null(error);
        assert_int_equal(out.len, 0);
        buf_free(&out);
    }
    mime_free(&m);
}

/* The section for HEADER.FIELDS is built; every other one is located. */
static void test_section_locate(void **state)
{
    (void)state;
    struct mime_msg *m = mime_parse(MSG_MIXED, strlen(MSG_MIXED));
    struct buf out;
    buf_init(&out, 0);
    size_t off, len;
    const char *error;
    assert_int_equal(mime_section_locate(m, "2", &out, &off, &len, &error), MIME_SECTION_OK);
    assert_int_equal(out.len, 0);
    assert_memory_equal(MSG_MIXED + off, "JVBERi0x\r\nLjQK", len);
    assert_int_equal(mime_section_locate(m, "HEADER.FIELDS (TO)", &out, &off, &len, &error),
                     MIME_SECTION_OK);
    assert_true(off == SIZE_MAX);
    assert_string_equal(out.data, "To: bob@example.org\r\n\r\n");
    buf_free(&out);
    mime_free(&m);
}

/* One address field, as the only header: "To: <value>". */
struct addr_case {
    const char *value;
    const char *to; /* ENVELOPE's env-to */
};

static const struct addr_case ADDRS[] = {
    {"Joe Q. Public <john.q.public@example.com>",
     "((\"Joe Q. Public\" NIL \"john.q.public\" \"example.com\"))"},
    {"\"Joe \\\"Q\\\" Public\" <j@x>", "((\"Joe \\\"Q\\\" Public\" NIL \"j\" \"x\"))"},
    {"a@b (Ann (the) Author)", "((\"Ann (the) Author\" NIL \"a\" \"b\"))"},
    {"(lead) a@b", "((NIL NIL \"a\" \"b\"))"},
    {"A  (c)  B <x@y>", "((\"A B\" NIL \"x\" \"y\"))"},
    {"a . b @ c . d", "((NIL NIL \"a.b\" \"c.d\"))"},
    {"\"john doe\"@example.org", "((NIL NIL \"john doe\" \"example.org\"))"},
    {"x@[192.0.2.1]", "((NIL NIL \"x\" \"[192.0.2.1]\"))"},
    {"<@r1,@r2:u@d>", "((NIL \"@r1,@r2\" \"u\" \"d\"))"},
    {", ,a@b,,c@d,", "((NIL NIL \"a\" \"b\")(NIL NIL \"c\" \"d\"))"},
    {"<>", "((NIL NIL \"MISSING_MAILBOX\" \"MISSING_DOMAIN\"))"},
    {"undisclosed", "((NIL NIL \"undisclosed\" \"MISSING_DOMAIN\"))"},
    {"g: ;", "((NIL NIL \"g\" NIL)(NIL NIL NIL NIL))"},
    {"g: a@b", "((NIL NIL \"g\" NIL)(NIL NIL \"a\" \"b\")(NIL NIL NIL NIL))"},
    {"g: a@b; h: c@d;",
     "((NIL NIL \"g\" NIL)(NIL NIL \"a\" \"b\")(NIL NIL NIL NIL)(NIL NIL \"h\" NIL)"
     "(NIL NIL \"c\" \"d\")(NIL NIL NIL NIL))"},
    {"a@b;c@d, e@f", "((NIL NIL \"a\" \"b\")(NIL NIL \"e\" \"f\"))"},
    {"<<<, x@y", "((NIL NIL \"MISSING_MAILBOX\" \"MISSING_DOMAIN\")(NIL NIL \"x\" \"y\"))"},
    {"\"unterminated <a@b>", "((NIL NIL \"unterminated <a@b>\" \"MISSING_DOMAIN\"))"},
    {"(unterminated a@b", "NIL"},
    {"", "NIL"},
    {"   ", "NIL"},
    {"\xc3\x89lodie <e@x>", "(({7}\r\n\xc3\x89lodie NIL \"e\" \"x\"))"},
    {"=?utf-8?q?=C3=89lodie?= <e@x>", "((\"=?utf-8?q?=C3=89lodie?=\" NIL \"e\" \"x\"))"},
    {"\"tab\there\" <t@x>", "((\"tab\there\" NIL \"t\" \"x\"))"},
    {"\"bell\a\" <b@x>", "(({5}\r\nbell\a NIL \"b\" \"x\"))"},
};

static void test_addresses(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_SIZE(ADDRS); i++) {
        char *msg = xasprintf("To: %s\r\n\r\n", ADDRS[i].value);
        struct mime_msg *m = mime_parse(msg, strlen(msg));
        char *env = envelope_of(m);
        char *want = xasprintf("(NIL NIL NIL NIL NIL %s NIL NIL NIL NIL)", ADDRS[i].to);
        if (strcmp(env, want) != 0)
            fail_msg("To: %s\n got %s\nwant %s", ADDRS[i].value, env, want);
        free(want);
        free(env);
        mime_free(&m);
        free(msg);
    }
}

/* Sender and Reply-To are From when absent or empty (RFC 3501 7.4.2). */
static void test_sender_defaults(void **state)
{
    (void)state;
    static const char msg[] = "From: a@b\r\nSender:\r\nReply-To: (nobody)\r\nSubject:\r\n"
                              "Date:   x  \r\nMessage-ID: <m@x>\r\nSubject: second\r\n\r\n";
    struct mime_msg *m = mime_parse(msg, strlen(msg));
    char *env = envelope_of(m);
    assert_string_equal(env, "(\"x\" \"\" ((NIL NIL \"a\" \"b\")) ((NIL NIL \"a\" \"b\")) ((NIL "
                             "NIL \"a\" \"b\")) NIL NIL NIL NIL \"<m@x>\")");
    free(env);
    mime_free(&m);
}

/* ---- SEARCH helpers ------------------------------------------------------ */

static void test_header_text(void **state)
{
    (void)state;
    struct mime_msg *m = mime_parse(MSG_RFC2047, strlen(MSG_RFC2047));
    struct buf b;
    buf_init(&b, 0);
    assert_int_equal(mime_header_text(m, "SUBJECT", &b), 1);
    assert_string_equal(b.data, "Gr\xc3\xbc\xc3\x9f"
                                "e aus K\xc3\xb6ln");
    buf_reset(&b);
    assert_int_equal(mime_header_text(m, "from", &b), 1);
    assert_string_equal(b.data, "Andr\xc3\xa9 Pirard <PIRARD@vm1.ulg.ac.be>");
    buf_reset(&b);
    assert_int_equal(mime_header_text(m, "cc", &b), 0);
    assert_int_equal(b.len, 0);
    mime_free(&m);

    static const char two[] = "X-A: one\r\nX-B: no\r\nx-a: =?utf-8?b?dHdv?=\r\n\r\nX-A: body\r\n";
    m = mime_parse(two, strlen(two));
    assert_int_equal(mime_header_text(m, "X-A", &b), 2);
    assert_string_equal(b.data, "one\ntwo");
    mime_free(&m);

    /* raw 8-bit (Latin-1, not UTF-8) and NUL octets still give valid UTF-8 */
    static const char raw[] = "Subject: caf\xe9 \0x\r\n\r\n";
    m = mime_parse(raw, sizeof(raw) - 1);
    buf_reset(&b);
    assert_int_equal(mime_header_text(m, "subject", &b), 1);
    assert_true(utf8_valid(b.data, b.len));
    assert_non_null(strstr(b.data, "caf"));
    mime_free(&m);
    buf_free(&b);
}

static void test_body_text(void **state)
{
    (void)state;
    static const char msg[] =
        "Content-Type: multipart/mixed; boundary=b\r\n\r\n"
        "--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\nK=F6ln soft=\r\nbreak\r\n"
        "--b\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0K\r\n"
        "--b\r\nContent-Type: text/html; charset=\"UTF-8\"\r\n"
        "Content-Transfer-Encoding: BASE64\r\n\r\nPHA+R3LDvMOfZTwvcD4=\r\n"
        "--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\ninner text\r\n"
        "--b\r\nContent-Type: text/plain; charset=x-unknown-charset\r\n\r\nok \xff\r\n"
        "--b--\r\n";
    struct mime_msg *m = mime_parse(msg, strlen(msg));
    struct buf b;
    buf_init(&b, 0);
    mime_body_text(m, &b);
    assert_string_equal(b.data, "K\xc3\xb6ln softbreak\n<p>Gr\xc3\xbc\xc3\x9f"
                                "e</p>\ninner "
                                "text\nok \xef\xbf\xbd");
    mime_free(&m);

    /* a text part in a charset iconv knows, with an invalid octet */
    static const char sjis[] = "Content-Type: text/plain; charset=shift_jis\r\n\r\n\x82\xa0\x82";
    m = mime_parse(sjis, strlen(sjis));
    buf_reset(&b);
    mime_body_text(m, &b);
    assert_string_equal(b.data, "\xe3\x81\x82\xef\xbf\xbd");
    mime_free(&m);
    buf_free(&b);
}

static void test_date(void **state)
{
    (void)state;
    static const struct {
        const char *msg;
        int64_t want;
    } cases[] = {
        {"Date: Tue, 1 Jul 2003 10:52:37 +0200\r\n\r\n", 1057049557},
        {"Date: 1 Jul 2003 08:52:37 GMT\r\n\r\n", 1057049557},
        {"Subject: x\r\n\r\n", -1},
        {"Date: not a date at all\r\n\r\n", -1},
        {"", -1},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        struct mime_msg *m = mime_parse(cases[i].msg, strlen(cases[i].msg));
        assert_int_equal(mime_date(m), cases[i].want);
        mime_free(&m);
    }
}

/* ---- malformed messages -------------------------------------------------- */

static char *bodystructure_str(const char *msg, size_t len)
{
    struct mime_msg *m = mime_parse(msg, len);
    char *bs = structure_of(m, true);
    mime_free(&m);
    check_any(msg, len);
    return bs;
}

static void assert_section(const char *msg, size_t len, const char *spec, enum mime_section want,
                           const char *octets, size_t octets_len)
{
    struct mime_msg *m = mime_parse(msg, len);
    struct buf b;
    buf_init(&b, 0);
    const char *error;
    enum mime_section r = mime_section_get(m, spec, &b, &error);
    if (r != want)
        fail_msg("BODY[%s]: %d, want %d", spec, r, want);
    if (want == MIME_SECTION_OK && (b.len != octets_len || memcmp(b.data, octets, b.len) != 0))
        fail_msg("BODY[%s]: got [%.*s]", spec, (int)b.len, b.data);
    buf_free(&b);
    mime_free(&m);
}
#define SECTION_IS(msg, spec, octets)                                                              \
    assert_section(msg, sizeof(msg) - 1, spec, MIME_SECTION_OK, octets, sizeof(octets) - 1)

static void test_no_blank_line(void **state)
{
    (void)state;
    static const char msg[] = "Subject: a\r\nX: b";
    char *bs = bodystructure_str(msg, sizeof(msg) - 1);
    assert_string_equal(bs, "(" TEXT_PLAIN_ASCII " 0 0 NIL NIL NIL NIL)");
    free(bs);
    SECTION_IS(msg, "HEADER", "Subject: a\r\nX: b");
    SECTION_IS(msg, "TEXT", "");
    SECTION_IS(msg, "HEADER.FIELDS (X)", "X: b\r\n\r\n");
    static const char part[] = "Content-Type: multipart/mixed; boundary=q\r\n\r\n"
                               "--q\r\nContent-Type: text/plain\r\n--q\r\nX: y\r\n--q--\r\n";
    bs = bodystructure_str(part, sizeof(part) - 1);
    assert_string_equal(bs, "((" TEXT_PLAIN_ASCII " 0 0 NIL NIL NIL NIL)(" TEXT_PLAIN_ASCII
                            " 0 0 NIL NIL NIL NIL) \"MIXED\" (\"BOUNDARY\" \"q\") NIL NIL NIL)");
    free(bs);
    SECTION_IS(part, "1.MIME", "Content-Type: text/plain");
    SECTION_IS(part, "2", "");
}

static void test_missing_close_delimiter(void **state)
{
    (void)state;
    /* the inner multipart is never closed: the outer delimiter ends it; the
     * outer one is never closed either: the last part runs to the end */
    static const char msg[] = "Content-Type: multipart/mixed; boundary=a\r\n\r\n"
                              "--a\r\nContent-Type: multipart/alternative; boundary=ab\r\n\r\n"
                              "--ab\r\n\r\none\r\n"
                              "--a\r\n\r\ntwo\r\n\r\n";
    char *bs = bodystructure_str(msg, sizeof(msg) - 1);
    assert_string_equal(bs, "(((" TEXT_PLAIN_ASCII " 3 0 NIL NIL NIL NIL) \"ALTERNATIVE\" "
                            "(\"BOUNDARY\" \"ab\") NIL NIL NIL)(" TEXT_PLAIN_ASCII
                            " 7 2 NIL NIL NIL NIL) \"MIXED\" (\"BOUNDARY\" \"a\") NIL NIL NIL)");
    free(bs);
    SECTION_IS(msg, "1", "--ab\r\n\r\none");
    SECTION_IS(msg, "1.1", "one");
    SECTION_IS(msg, "2", "two\r\n\r\n");
}

static void test_bare_lf(void **state)
{
    (void)state;
    static const char msg[] = "Subject: lf\nContent-Type: multipart/mixed; boundary=\"b\"\n\n"
                              "--b\nContent-Type: text/plain\n\nline1\nline2\n--b\n\nx\n--b--\n";
    char *bs = bodystructure_str(msg, sizeof(msg) - 1);
    assert_string_equal(bs, "((" TEXT_PLAIN_ASCII " 11 1 NIL NIL NIL NIL)(" TEXT_PLAIN_ASCII
                            " 1 0 NIL NIL NIL NIL) \"MIXED\" (\"BOUNDARY\" \"b\") NIL NIL NIL)");
    free(bs);
    SECTION_IS(msg, "1", "line1\nline2");
    SECTION_IS(msg, "HEADER", "Subject: lf\nContent-Type: multipart/mixed; boundary=\"b\"\n\n");
    /* an unterminated field is given a CRLF; the list ends with CRLF */
    SECTION_IS(msg, "HEADER.FIELDS (subject)", "Subject: lf\n\r\n");
}

static void test_nul_bytes(void **state)
{
    (void)state;
    static const char msg[] = "Subject: a\0b\r\nFrom: x\0y@z\r\n\r\nbo\0dy\r\n";
    struct mime_msg *m = mime_parse(msg, sizeof(msg) - 1);
    char *env = envelope_of(m);
    assert_non_null(strstr(env, "\"a?b\""));
    free(env);
    mime_free(&m);
    char *bs = bodystructure_str(msg, sizeof(msg) - 1);
    assert_string_equal(bs, "(" TEXT_PLAIN_ASCII " 7 1 NIL NIL NIL NIL)");
    free(bs);
    SECTION_IS(msg, "TEXT", "bo\0dy\r\n");
    SECTION_IS(msg, "", "Subject: a\0b\r\nFrom: x\0y@z\r\n\r\nbo\0dy\r\n");
}

static void test_8bit_headers(void **state)
{
    (void)state;
    static const char msg[] = "Subject: \xc3\xa9t\xc3\xa9 \"q\"\r\n"
                              "From: \xe9ric <e@x>\r\n"
                              "Content-Type: text/plain; name=\"\xc3\xa9.txt\"\r\n\r\nx";
    struct mime_msg *m = mime_parse(msg, sizeof(msg) - 1);
    char *env = envelope_of(m);
    assert_string_equal(env, "(NIL {9}\r\n\xc3\xa9t\xc3\xa9 \"q\" (({4}\r\n\xe9ric NIL \"e\" "
                             "\"x\")) (({4}\r\n\xe9ric NIL \"e\" \"x\")) (({4}\r\n\xe9ric NIL "
                             "\"e\" \"x\")) NIL NIL NIL NIL NIL)");
    free(env);
    mime_free(&m);
    char *bs = bodystructure_str(msg, sizeof(msg) - 1);
    assert_string_equal(bs, "(\"TEXT\" \"PLAIN\" (\"NAME\" {6}\r\n\xc3\xa9.txt \"CHARSET\" "
                            "\"US-ASCII\") NIL NIL \"7BIT\" 1 0 NIL NIL NIL NIL)");
    free(bs);
}

/* Counts "(" that open a multipart body: "((" runs at the start. */
static size_t leading_parens(const char *s)
{
    size_t n = 0;
    while (s[n] == '(')
        n++;
    return n;
}

static void test_deep_nesting(void **state)
{
    (void)state;
    struct buf msg;
    buf_init(&msg, 0);
    for (int i = 0; i < 1000; i++)
        buf_printf(&msg, "Content-Type: multipart/mixed; boundary=\"=%d=\"\r\n\r\n--=%d=\r\n", i,
                   i);
    buf_puts(&msg, "Content-Type: text/plain\r\n\r\ndeep\r\n");
    char *bs = bodystructure_str(msg.data, msg.len);
    /* MIME_DEPTH_MAX multiparts, then the rest is one opaque leaf */
    assert_int_equal(leading_parens(bs), MIME_DEPTH_MAX + 1);
    assert_non_null(strstr(bs, "(\"APPLICATION\" \"OCTET-STREAM\" (\"BOUNDARY\" \"=32=\")"));
    free(bs);
    buf_reset(&msg);
    for (int i = 0; i < 1000; i++)
        buf_printf(&msg, "Subject: level %d\r\nContent-Type: message/rfc822\r\n\r\n", i);
    buf_puts(&msg, "deep\r\n");
    bs = bodystructure_str(msg.data, msg.len);
    size_t n = 0;
    for (const char *p = bs; (p = strstr(p, "\"MESSAGE\" \"RFC822\"")) != NULL; p++)
        n++;
    assert_int_equal(n, MIME_DEPTH_MAX);
    free(bs);
    /* a part number path through all of them */
    struct buf spec;
    buf_init(&spec, 0);
    buf_puts(&spec, "1");
    for (int i = 0; i < MIME_DEPTH_MAX; i++)
        buf_puts(&spec, ".1");
    struct mime_msg *m = mime_parse(msg.data, msg.len);
    struct buf out;
    buf_init(&out, 0);
    const char *error;
    assert_int_equal(mime_section_get(m, spec.data, &out, &error), MIME_SECTION_OK);
    assert_true(strncmp(out.data, "Subject: level 33", 17) == 0);
    buf_puts(&spec, ".1");
    assert_int_equal(mime_section_get(m, spec.data, &out, &error), MIME_SECTION_NONE);
    mime_free(&m);
    buf_free(&out);
    buf_free(&spec);
    buf_free(&msg);
}

static void test_many_parts(void **state)
{
    (void)state;
    struct buf msg;
    buf_init(&msg, 0);
    buf_puts(&msg, "Content-Type: multipart/mixed; boundary=b\r\n\r\n");
    for (int i = 1; i <= 5000; i++)
        buf_printf(&msg, "--b\r\nContent-Type: text/plain\r\n\r\npart %d\r\n", i);
    buf_puts(&msg, "--b--\r\n");
    char *bs = bodystructure_str(msg.data, msg.len);
    size_t n = 0;
    for (const char *p = bs; (p = strstr(p, "\"PLAIN\"")) != NULL; p++)
        n++;
    assert_int_equal(n, MIME_PARTS_MAX - 1); /* the message itself is one */
    free(bs);
    char spec[16];
    snprintf(spec, sizeof(spec), "%d", MIME_PARTS_MAX - 1);
    char want[32];
    int wn = snprintf(want, sizeof(want), "part %d", MIME_PARTS_MAX - 1);
    assert_section(msg.data, msg.len, spec, MIME_SECTION_OK, want, (size_t)wn);
    snprintf(spec, sizeof(spec), "%d", MIME_PARTS_MAX);
    assert_section(msg.data, msg.len, spec, MIME_SECTION_NONE, NULL, 0);
    buf_free(&msg);
}

static void test_unstructured_parts(void **state)
{
    (void)state;
    /* message/rfc822 with a transfer encoding cannot be parsed: opaque */
    static const char b64[] =
        "Content-Type: multipart/mixed; boundary=b\r\n\r\n"
        "--b\r\nContent-Type: message/rfc822\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\nU3ViamVjdDogeAoKYm9keQo=\r\n"
        "--b--\r\n";
    char *bs = bodystructure_str(b64, sizeof(b64) - 1);
    assert_string_equal(bs, "((\"APPLICATION\" \"OCTET-STREAM\" NIL NIL NIL \"BASE64\" 24 NIL NIL "
                            "NIL NIL) \"MIXED\" (\"BOUNDARY\" \"b\") NIL NIL NIL)");
    free(bs);
    assert_section(b64, sizeof(b64) - 1, "1.HEADER", MIME_SECTION_NONE, NULL, 0);
    /* a multipart without a boundary, and one whose boundary never comes:
     * one empty text part, which is its part 1 */
    static const char *const empty[] = {
        "Content-Type: multipart/mixed\r\n\r\nno boundary\r\n",
        "Content-Type: multipart/mixed; boundary=zz\r\n\r\nnever\r\n",
        "Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n",
    };
    for (size_t i = 0; i < ARRAY_SIZE(empty); i++) {
        bs = bodystructure_str(empty[i], strlen(empty[i]));
        static const char want[] = "((" TEXT_PLAIN_ASCII " 0 0 NIL NIL NIL NIL) \"MIXED\"";
        assert_true(strncmp(bs, want, sizeof(want) - 1) == 0);
        free(bs);
        assert_section(empty[i], strlen(empty[i]), "1", MIME_SECTION_OK, "", 0);
        assert_section(empty[i], strlen(empty[i]), "1.MIME", MIME_SECTION_OK, "", 0);
        assert_section(empty[i], strlen(empty[i]), "2", MIME_SECTION_NONE, NULL, 0);
        assert_section(empty[i], strlen(empty[i]), "1.1", MIME_SECTION_NONE, NULL, 0);
    }
    /* an invalid Content-Type is text/plain (RFC 2045 5.2) */
    static const char bad_ct[] = "Content-Type: text\r\n\r\nx";
    bs = bodystructure_str(bad_ct, sizeof(bad_ct) - 1);
    assert_string_equal(bs, "(" TEXT_PLAIN_ASCII " 1 0 NIL NIL NIL NIL)");
    free(bs);
}

/* A long header against a long list of names: every listed field and no
 * other, in message order (names hash into buckets: collisions abound). */
static void test_many_header_fields(void **state)
{
    (void)state;
    struct buf msg, spec, want, want_not, out;
    buf_init(&msg, 0);
    buf_init(&spec, 0);
    buf_init(&want, 0);
    buf_init(&want_not, 0);
    buf_init(&out, 0);
    for (int i = 0; i < 20000; i++) {
        char line[64];
        int n = snprintf(line, sizeof(line), "%s-%d: v%d\r\n", i % 3 ? "X" : "Y", i, i);
        buf_append(&msg, line, (size_t)n);
        buf_append(i % 3 != 0 && i % 40 == 1 ? &want : &want_not, line, (size_t)n);
    }
    buf_puts(&msg, "\r\nbody\r\n");
    buf_puts(&want, "\r\n");
    buf_puts(&want_not, "\r\n");
    for (int i = 1; i < 20000; i += 40)
        buf_printf(&spec, "%s\"x-%d\" x-%d", spec.len == 0 ? "HEADER.FIELDS (" : " ", i, i + 20000);
    buf_puts(&spec, ")");
    struct mime_msg *m = mime_parse(msg.data, msg.len);
    const char *error;
    assert_int_equal(mime_section_get(m, spec.data, &out, &error), MIME_SECTION_OK);
    assert_int_equal(out.len, want.len);
    assert_memory_equal(out.data, want.data, want.len);
    buf_reset(&out);
    char *not = xasprintf("HEADER.FIELDS.NOT%s", spec.data + strlen("HEADER.FIELDS"));
    assert_int_equal(mime_section_get(m, not, &out, &error), MIME_SECTION_OK);
    assert_int_equal(out.len, want_not.len);
    assert_memory_equal(out.data, want_not.data, want_not.len);
    free(not );
    mime_free(&m);
    buf_free(&msg);
    buf_free(&spec);
    buf_free(&want);
    buf_free(&want_not);
    buf_free(&out);
}

/* A delimiter right after a part's blank line: that line end is the
 * delimiter's (RFC 2046 5.1.1: the CRLF before a delimiter belongs to it),
 * so the part is its header fields only, without a blank line, and its
 * body is empty. Dovecot 2.3 agrees for the text part (2.MIME) and keeps
 * the line end in the message/rfc822 part (14 octets, 2 lines):
 * tests/integration/test_imap_vs_dovecot.py lists that difference. */
static void test_delimiter_after_blank_line(void **state)
{
    (void)state;
    static const char msg[] = "Content-Type: multipart/mixed; boundary=b\r\n\r\n"
                              "--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: s\r\n\r\n"
                              "--b\r\nContent-Type: text/plain\r\n\r\n"
                              "--b--";
    char *bs = bodystructure_str(msg, sizeof(msg) - 1);
    assert_string_equal(bs,
                        "((\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 12 (NIL \"s\" NIL NIL "
                        "NIL NIL NIL NIL NIL NIL) (" TEXT_PLAIN_ASCII " 0 0 NIL NIL NIL NIL) "
                        "1 NIL NIL NIL NIL)(" TEXT_PLAIN_ASCII " 0 0 NIL NIL NIL NIL) \"MIXED\" "
                        "(\"BOUNDARY\" \"b\") NIL NIL NIL)");
    free(bs);
    SECTION_IS(msg, "1", "Subject: s\r\n");
    SECTION_IS(msg, "1.HEADER", "Subject: s\r\n");
    SECTION_IS(msg, "1.TEXT", "");
    SECTION_IS(msg, "2", "");
    SECTION_IS(msg, "2.MIME", "Content-Type: text/plain\r\n");
}

/* Found against Dovecot (tests/integration/test_imap_vs_dovecot.py): a
 * parameter whose quoted string is never closed is dropped (RFC 2045 5.2:
 * an invalid field is as if absent); message/global (RFC 6532) is a basic
 * part, as RFC 3501's grammar gives only MESSAGE/RFC822 an envelope;
 * Content-MD5 is body-fld-md5 as sent. */
static void test_dovecot_cases(void **state)
{
    (void)state;
    static const char unterminated[] = "Content-Type: text/plain; foo=\"open\r\n\r\nx";
    char *bs = bodystructure_str(unterminated, sizeof(unterminated) - 1);
    assert_string_equal(bs, "(" TEXT_PLAIN_ASCII " 1 0 NIL NIL NIL NIL)");
    free(bs);
    static const char closed[] = "Content-Type: text/plain; foo=\"a\\\"b\"\r\n\r\nx";
    bs = bodystructure_str(closed, sizeof(closed) - 1);
    assert_string_equal(bs, "(\"TEXT\" \"PLAIN\" (\"FOO\" \"a\\\"b\" \"CHARSET\" \"US-ASCII\") "
                            "NIL NIL \"7BIT\" 1 0 NIL NIL NIL NIL)");
    free(bs);
    static const char global[] = "Content-Type: multipart/mixed; boundary=g\r\n\r\n"
                                 "--g\r\nContent-Type: message/global\r\n\r\n"
                                 "Subject: s\r\n\r\nbody\r\n--g--\r\n";
    bs = bodystructure_str(global, sizeof(global) - 1);
    assert_string_equal(bs, "((\"MESSAGE\" \"GLOBAL\" NIL NIL NIL \"7BIT\" 18 NIL NIL NIL NIL) "
                            "\"MIXED\" (\"BOUNDARY\" \"g\") NIL NIL NIL)");
    free(bs);
    SECTION_IS(global, "1", "Subject: s\r\n\r\nbody");
    static const char md5[] = "Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\r\n\r\nx";
    bs = bodystructure_str(md5, sizeof(md5) - 1);
    assert_string_equal(bs, "(" TEXT_PLAIN_ASCII " 1 0 \"Q2hlY2sgSW50ZWdyaXR5IQ==\" NIL NIL NIL)");
    free(bs);
    assert_section(global, sizeof(global) - 1, "1.HEADER", MIME_SECTION_NONE, "", 0);
}

/* Odd inputs: whatever they are, every general check holds. */
static void test_odd_inputs(void **state)
{
    (void)state;
    static const char *const odd[] = {
        "",
        "\r\n",
        "\n",
        "x",
        ":",
        " folded first line\r\n\r\n",
        "\r\n\r\n\r\n",
        "Content-Type: multipart/mixed; boundary=a\r\n\r\n--a",
        "Content-Type: multipart/mixed; boundary=a\r\n\r\n--a--",
        "Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\n--a\r\n--a\r\n",
        "Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\nContent-Type: multipart/mixed; "
        "boundary=a\r\n\r\n--a\r\n\r\nx\r\n--a--\r\n",
        "Content-Type: message/rfc822\r\n\r\n",
        "Content-Type: message/rfc822\r\n\r\nContent-Type: message/rfc822\r\n",
        "Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n--d\r\n\r\nSubject: s\r\n--d--",
        "Content-Type: (c) multipart (c) / (c) mixed (c) ; (c) boundary (c) = (c) \"x\"\r\n\r\n"
        "--x\r\n\r\n1\r\n--x--\r\n",
        "Content-Type: text/plain; a=\"unterminated\r\n\r\nx",
        "Content-Type: text/plain; ;;; =x; a; b==c; c=\"\\\r\n\r\nx",
        "Content-Disposition: ; filename=x\r\nContent-Language: ,,,\r\n\r\n",
        "Content-Transfer-Encoding: \r\nContent-ID:\r\n\r\n",
        "To: ((((((((((((((((((((\r\n\r\n",
        "To: \"\\\r\n\r\n",
        "To: <\r\nCc: @\r\nBcc: :;,<>@\r\n\r\n",
        "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: message/rfc822\r\n"
        "\r\nContent-Type: multipart/alternative\r\n\r\n--b--\r\n",
        "To: \"\"\"\" x@y, \"\"@z\r\n\r\n",
        "Content-Type: text/plain; a*0=\"\"; a*1=\"\"\r\n\r\nx",
    };
    for (size_t i = 0; i < ARRAY_SIZE(odd); i++)
        check_any(odd[i], strlen(odd[i]));
}

static void test_long_lines(void **state)
{
    (void)state;
    /* one 1 MiB header line without a line end, and 100k boundary-like
     * lines: linear, and every check holds */
    size_t n = 1 << 20;
    char *big = xmalloc(n + 16);
    memcpy(big, "Subject: ", 9);
    memset(big + 9, 'a', n - 9);
    check_any(big, n);
    free(big);
    struct buf msg;
    buf_init(&msg, 0);
    buf_puts(&msg, "Content-Type: multipart/mixed; boundary=abcdefgh\r\n\r\n");
    for (int i = 0; i < 100000; i++)
        buf_puts(&msg, "--abcdefg\r\n");
    check_any(msg.data, msg.len);
    buf_free(&msg);
}

/* ---- the structure from GMime: offsets and decided cases ---------------- */

/* Replaces every CRLF of s by LF (in place); returns the new length. */
static size_t to_lf(char *s, size_t len)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++)
        if (!(s[i] == '\r' && i + 1 < len && s[i + 1] == '\n'))
            s[o++] = s[i];
    s[o] = '\0';
    return o;
}

/* A multipart in a message/rfc822 in a multipart, assembled from pieces
 * so that every section's octets are known without parsing: each section
 * must be exactly its piece, on CRLF and on LF lines. */
static void test_section_offsets(void **state)
{
    (void)state;
    enum { TOP_H, PRE, P1_H, P1_B, P2_H, M_H, M_PRE, A1_H, A1_B, A2_H, A2_B, M_EPI, P3_H, P3_B, N };
    static const char *const piece[N] = {
        [TOP_H] = "From: a@example.org\r\nSubject: offsets\r\n"
                  "Content-Type: multipart/mixed; boundary=\"out\"\r\n\r\n",
        [PRE] = "preamble --out-not-a-delimiter\r\n",
        [P1_H] = "Content-Type: text/plain\r\n\r\n",
        [P1_B] = "first\r\n--outer is not the boundary\r\n-- out\r\n--out--x",
        [P2_H] = "Content-Type: message/rfc822\r\nContent-Description: fwd\r\n\r\n",
        [M_H] = "Subject: =?utf-8?q?inner_=C3=A9?=\r\nFrom: =?utf-8?b?w4lsb2RpZQ==?= <e@x.org>\r\n"
                "Content-Type: multipart/alternative;\r\n boundary=in\r\n\r\n",
        [M_PRE] = "",
        [A1_H] = "Content-Type: text/plain; charset=us-ascii\r\n\r\n",
        [A1_B] = "plain\r\n\r\n",
        [A2_H] = "Content-Type: text/html\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
        [A2_B] = "<p>html</p>",
        [M_EPI] = "epilogue of the inner message\r\n",
        [P3_H] = "Content-Type: application/octet-stream\r\n\r\n",
        [P3_B] = "AAEC",
    };
    for (int lf = 0; lf <= 1; lf++) {
        struct buf msg, want;
        buf_init(&msg, 0);
        buf_init(&want, 0);
        size_t at[N + 1];
#define PUT(i) (at[i] = msg.len, buf_puts(&msg, piece[i]))
        PUT(TOP_H);
        PUT(PRE);
        buf_puts(&msg, "--out\r\n");
        PUT(P1_H);
        PUT(P1_B);
        buf_puts(&msg, "\r\n--out\r\n");
        PUT(P2_H);
        PUT(M_H);
        PUT(M_PRE);
        buf_puts(&msg, "--in\r\n");
        PUT(A1_H);
        PUT(A1_B);
        buf_puts(&msg, "\r\n--in \t\r\n"); /* trailing blanks: still a delimiter */
        PUT(A2_H);
        PUT(A2_B);
        buf_puts(&msg, "\r\n--in--\r\n");
        PUT(M_EPI);
        size_t m_end = msg.len;
        buf_puts(&msg, "\r\n--out\r\n");
        PUT(P3_H);
        PUT(P3_B);
        size_t p3_end = msg.len;
        buf_puts(&msg, "\r\n--out--\r\n");
#undef PUT
        at[N] = msg.len;
        static const struct {
            const char *spec;
            int from, to; /* pieces [from, to), or -1: see below */
        } cases[] = {
            {"HEADER", TOP_H, PRE},   {"1.MIME", P1_H, P1_B},   {"1", P1_B, -1},
            {"2.MIME", P2_H, M_H},    {"2", M_H, -2},           {"2.HEADER", M_H, M_PRE},
            {"2.TEXT", M_PRE, -2},    {"2.1.MIME", A1_H, A1_B}, {"2.1", A1_B, -3},
            {"2.2.MIME", A2_H, A2_B}, {"2.2", A2_B, -4},        {"3.MIME", P3_H, P3_B},
            {"3", P3_B, -5},
        };
        /* ends that are not the next piece's start: a body ends before the
         * line end of the delimiter that follows it */
        size_t p1_end = at[P1_B] + strlen(piece[P1_B]);
        size_t a1_end = at[A1_B] + strlen(piece[A1_B]);
        size_t a2_end = at[A2_B] + strlen(piece[A2_B]);
        const size_t ends[] = {0, p1_end, m_end, a1_end, a2_end, p3_end};
        char *data = msg.data;
        size_t len = msg.len;
        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
            size_t s0 = at[cases[i].from];
            size_t e0 = cases[i].to >= 0 ? at[cases[i].to] : ends[-cases[i].to];
            buf_reset(&want);
            buf_append(&want, data + s0, e0 - s0);
            char *w = xstrndup(want.data, want.len);
            size_t wl = want.len;
            if (lf)
                wl = to_lf(w, wl);
            char *copy = xmalloc(len + 1);
            memcpy(copy, data, len);
            size_t cl = lf ? to_lf(copy, len) : len;
            struct mime_msg *m = mime_parse(copy, cl);
            struct buf out;
            buf_init(&out, 0);
            const char *error;
            if (mime_section_get(m, cases[i].spec, &out, &error) != MIME_SECTION_OK)
                fail_msg("%s BODY[%s]: %s", lf ? "LF" : "CRLF", cases[i].spec, error);
            if (out.len != wl || memcmp(out.data, w, wl) != 0)
                fail_msg("%s BODY[%s]:\n got [%s]\nwant [%s]", lf ? "LF" : "CRLF", cases[i].spec,
                         out.data, w);
            buf_free(&out);
            mime_free(&m);
            check_any(copy, cl);
            free(copy);
            free(w);
        }
        buf_free(&msg);
        buf_free(&want);
    }
}

/* The inner message's ENVELOPE (in BODYSTRUCTURE) keeps encoded words as
 * sent, while the SEARCH helper decodes them. */
static void test_encoded_words_in_nested_envelope(void **state)
{
    (void)state;
    static const char msg[] =
        "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        "Content-Type: message/rfc822\r\n\r\n"
        "From: =?utf-8?b?w4lsb2RpZQ==?= <e@x.org>\r\n"
        "To: \"=?iso-8859-1?q?J=F6rg?=\" <j@x.org>, =?utf-8?q?A_B?= <ab@x.org>\r\n"
        "Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\nbody\r\n--b--\r\n";
    char *bs = bodystructure_str(msg, sizeof(msg) - 1);
    assert_non_null(strstr(bs, "(NIL \"=?utf-8?q?caf=C3=A9?=\" ((\"=?utf-8?b?w4lsb2RpZQ==?=\" "
                               "NIL \"e\" \"x.org\"))"));
    assert_non_null(strstr(bs, "((\"=?iso-8859-1?q?J=F6rg?=\" NIL \"j\" \"x.org\")(\"=?utf-8?q?"
                               "A_B?=\" NIL \"ab\" \"x.org\"))"));
    free(bs);
    struct mime_msg *m = mime_parse(msg, sizeof(msg) - 1);
    struct buf b;
    buf_init(&b, 0);
    mime_body_text(m, &b);
    assert_string_equal(b.data, "body");
    mime_free(&m);
    buf_free(&b);
    SECTION_IS(msg, "1.HEADER.FIELDS (SUBJECT)", "Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\n");
}

/* Lines that look like delimiters but are not, by RFC 2046's grammar (and
 * GMime's rule): only "--b" or "--b--" followed by blanks end a part. */
static void test_boundary_like_lines(void **state)
{
    (void)state;
    static const char msg[] = "Content-Type: multipart/mixed; boundary=b\r\n\r\n"
                              "--b\r\n\r\n"
                              "--bx\r\n"
                              "--b--x\r\n"
                              "---b\r\n"
                              " --b\r\n"
                              "--B\r\n"
                              "x--b\r\n"
                              "--b \r\n"
                              "\r\ntwo\r\n"
                              "--b--\t\r\n";
    char *bs = bodystructure_str(msg, sizeof(msg) - 1);
    assert_string_equal(bs, "((" TEXT_PLAIN_ASCII " 35 5 NIL NIL NIL NIL)(" TEXT_PLAIN_ASCII
                            " 3 0 NIL NIL NIL NIL) \"MIXED\" (\"BOUNDARY\" \"b\") NIL NIL NIL)");
    free(bs);
    SECTION_IS(msg, "1", "--bx\r\n--b--x\r\n---b\r\n --b\r\n--B\r\nx--b");
    SECTION_IS(msg, "2", "two");
    SECTION_IS(msg, "2.MIME", "\r\n");
}

/* The final boundary never comes: the last part runs to the end of the
 * message, an inner multipart ends at the outer delimiter. */
static void test_missing_final_boundary(void **state)
{
    (void)state;
    static const char msg[] = "Content-Type: multipart/mixed; boundary=o\r\n\r\n"
                              "--o\r\nContent-Type: multipart/alternative; boundary=i\r\n\r\n"
                              "--i\r\nContent-Type: text/plain\r\n\r\nin one\r\n"
                              "--i\r\nContent-Type: text/html\r\n\r\n<p>in two</p>\r\n"
                              "--o\r\nContent-Type: text/plain\r\n\r\nlast\r\nline\r\n";
    char *bs = bodystructure_str(msg, sizeof(msg) - 1);
    assert_string_equal(bs, "(((" TEXT_PLAIN_ASCII " 6 0 NIL NIL NIL NIL)(\"TEXT\" \"HTML\" "
                            "(\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 13 0 NIL NIL NIL NIL) "
                            "\"ALTERNATIVE\" (\"BOUNDARY\" \"i\") NIL NIL NIL)(" TEXT_PLAIN_ASCII
                            " 12 2 NIL NIL NIL NIL) \"MIXED\" (\"BOUNDARY\" \"o\") NIL NIL NIL)");
    free(bs);
    SECTION_IS(msg, "1.2", "<p>in two</p>");
    SECTION_IS(msg, "2", "last\r\nline\r\n");
    SECTION_IS(msg, "2.MIME", "Content-Type: text/plain\r\n\r\n");
}

/* RFC 2231 continuations: GMime merges them to find the boundary (so the
 * parts are found, as Dovecot finds them); BODYSTRUCTURE writes the
 * parameters as sent, merged. */
static void test_rfc2231_boundary(void **state)
{
    (void)state;
    static const char msg[] = "Content-Type: multipart/mixed;\r\n boundary*0=\"ab\";\r\n"
                              " boundary*1=cd\r\n\r\n"
                              "--ab\r\n\r\nnot a delimiter above\r\n"
                              "--abcd\r\nContent-Type: text/plain;\r\n"
                              " name*0*=utf-8''%E2%82%AC; name*1=\" x.txt\"\r\n\r\none\r\n"
                              "--abcd--\r\n";
    char *bs = bodystructure_str(msg, sizeof(msg) - 1);
    assert_string_equal(bs, "((\"TEXT\" \"PLAIN\" (\"NAME*\" \"utf-8''%E2%82%AC%20x.txt\" "
                            "\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 3 0 NIL NIL NIL NIL) "
                            "\"MIXED\" (\"BOUNDARY\" \"abcd\") NIL NIL NIL)");
    free(bs);
    SECTION_IS(msg, "1", "one");
}

/* Parts with neither header nor content: GMime drops them; RFC 2046's
 * grammar allows them and Dovecot lists them, so they are listed as empty
 * parts (part numbers as Dovecot's). */
static void test_empty_parts(void **state)
{
    (void)state;
    static const char msg[] = "Content-Type: multipart/mixed; boundary=a\r\n\r\n"
                              "--a\r\n--a\r\n\r\n--a\r\nContent-Type: text/html\r\n\r\nx\r\n"
                              "--a\r\n--a--\r\n";
    char *bs = bodystructure_str(msg, sizeof(msg) - 1);
    assert_string_equal(bs, "((" TEXT_PLAIN_ASCII " 0 0 NIL NIL NIL NIL)(" TEXT_PLAIN_ASCII
                            " 0 0 NIL NIL NIL NIL)(\"TEXT\" \"HTML\" (\"CHARSET\" \"US-ASCII\") "
                            "NIL NIL \"7BIT\" 1 0 NIL NIL NIL NIL)(" TEXT_PLAIN_ASCII
                            " 0 0 NIL NIL NIL NIL) \"MIXED\" (\"BOUNDARY\" \"a\") NIL NIL NIL)");
    free(bs);
    SECTION_IS(msg, "3", "x");
    SECTION_IS(msg, "3.MIME", "Content-Type: text/html\r\n\r\n");
    SECTION_IS(msg, "2.MIME", ""); /* "\r\n--a": the line end is the delimiter's */
}

/* Under MIME_GMIME_NEST_MAX containers GMime parses, and the depth limit
 * holds the same way as for the line scanner (test_deep_nesting). */
static void test_depth_limit_gmime(void **state)
{
    (void)state;
    struct buf msg;
    buf_init(&msg, 0);
    for (int i = 0; i < MIME_DEPTH_MAX + 8; i++)
        buf_printf(&msg, "Content-Type: multipart/mixed; boundary=\"=%d=\"\r\n\r\n--=%d=\r\n", i,
                   i);
    buf_puts(&msg, "Content-Type: text/plain\r\n\r\ndeep\r\n");
    assert_true(MIME_DEPTH_MAX + 8 <= MIME_GMIME_NEST_MAX);
    char *bs = bodystructure_str(msg.data, msg.len);
    assert_int_equal(leading_parens(bs), MIME_DEPTH_MAX + 1);
    assert_non_null(strstr(bs, "(\"APPLICATION\" \"OCTET-STREAM\" (\"BOUNDARY\" \"=32=\")"));
    free(bs);
    buf_free(&msg);
}

/* A repeated Content-Type: the last one decides, as in GMime's objects
 * (the part is text/html, not a multipart without parts); a lone CR in a
 * part's last line does not move its end (found by fuzz_mime). */
static void test_repeated_content_type(void **state)
{
    (void)state;
    static const char msg[] = "Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\n"
                              "Content-Type: multipart/alternative; boundary=i\r\n"
                              "Content-Type: text/html\r\n\r\n<b>x</b>\r\n\r\xe9\xe9\n"
                              "--o--\r\n";
    char *bs = bodystructure_str(msg, sizeof(msg) - 1);
    assert_string_equal(bs, "((\"TEXT\" \"HTML\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 13 "
                            "1 NIL NIL NIL NIL) \"MIXED\" (\"BOUNDARY\" \"o\") NIL NIL NIL)");
    free(bs);
    SECTION_IS(msg, "1", "<b>x</b>\r\n\r\xe9\xe9");
}

/* HEADER.FIELDS.NOT of a message/rfc822 whose body is a leaf: the header
 * ends at its blank line (which is not a field), on CRLF and LF lines. */
static void test_inner_header_end(void **state)
{
    (void)state;
    static const char crlf[] =
        "Content-Type: message/rfc822\r\n\r\nSubject: s\r\nX-A: a\r\n\r\nbody";
    SECTION_IS(crlf, "1.HEADER.FIELDS.NOT (Subject)", "X-A: a\r\n\r\n");
    SECTION_IS(crlf, "1.HEADER", "Subject: s\r\nX-A: a\r\n\r\n");
    static const char lf[] = "Content-Type: message/rfc822\n\nSubject: s\nX-A: a\n\nbody";
    SECTION_IS(lf, "1.HEADER.FIELDS.NOT (Subject)", "X-A: a\n\r\n");
    SECTION_IS(lf, "1.TEXT", "body");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_messages),
        cmocka_unit_test(test_call_order),
        cmocka_unit_test(test_sections),
        cmocka_unit_test(test_bad_sections),
        cmocka_unit_test(test_section_locate),
        cmocka_unit_test(test_addresses),
        cmocka_unit_test(test_sender_defaults),
        cmocka_unit_test(test_header_text),
        cmocka_unit_test(test_body_text),
        cmocka_unit_test(test_date),
        cmocka_unit_test(test_no_blank_line),
        cmocka_unit_test(test_missing_close_delimiter),
        cmocka_unit_test(test_bare_lf),
        cmocka_unit_test(test_nul_bytes),
        cmocka_unit_test(test_8bit_headers),
        cmocka_unit_test(test_deep_nesting),
        cmocka_unit_test(test_many_parts),
        cmocka_unit_test(test_unstructured_parts),
        cmocka_unit_test(test_many_header_fields),
        cmocka_unit_test(test_delimiter_after_blank_line),
        cmocka_unit_test(test_dovecot_cases),
        cmocka_unit_test(test_odd_inputs),
        cmocka_unit_test(test_long_lines),
        cmocka_unit_test(test_section_offsets),
        cmocka_unit_test(test_encoded_words_in_nested_envelope),
        cmocka_unit_test(test_boundary_like_lines),
        cmocka_unit_test(test_missing_final_boundary),
        cmocka_unit_test(test_rfc2231_boundary),
        cmocka_unit_test(test_empty_parts),
        cmocka_unit_test(test_depth_limit_gmime),
        cmocka_unit_test(test_repeated_content_type),
        cmocka_unit_test(test_inner_header_end),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
