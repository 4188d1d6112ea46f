/*
 * test_imap — unit tests for the imap module: the command reader (every
 * event class, limits at and one past each, resynchronization, the same
 * transcript fed whole, octet by octet and in random chunks), the argument
 * parser (RFC 3501 examples and the commands real clients send, every
 * error), sequence sets, modified UTF-7 (RFC examples, every non-canonical
 * form, random round trips) and the response string writers.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imap/imap.h"

#define IN(s) s, sizeof(s) - 1

/* ---- rendering ---------------------------------------------------------- */

/* Appends p with CR, LF, NUL and other non-printable octets made visible. */
static void esc(struct buf *o, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '\r')
            buf_puts(o, "\\r");
        else if (c == '\n')
            buf_puts(o, "\\n");
        else if (c == '\0')
            buf_puts(o, "\\0");
        else if (c < 0x20 || c >= 0x7f)
            buf_printf(o, "\\x%02x", c);
        else
            buf_append(o, &p[i], 1);
    }
}

/* ATOM as is, STRING in quotes, LITERAL as {n}octets (~{n} for literal8),
 * NIL as NIL, LIST in parentheses. */
static void render_args(struct buf *o, const struct imap_arg *a, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            buf_puts(o, " ");
        switch (a[i].type) {
        case IMAP_ARG_ATOM:
            assert_int_equal(strlen(a[i].str), a[i].len);
            esc(o, a[i].str, a[i].len);
            break;
        case IMAP_ARG_NIL:
            buf_puts(o, "NIL");
            break;
        case IMAP_ARG_STRING:
            assert_int_equal(a[i].str[a[i].len], '\0');
            buf_puts(o, "\"");
            esc(o, a[i].str, a[i].len);
            buf_puts(o, "\"");
            break;
        case IMAP_ARG_LITERAL:
            assert_int_equal(a[i].str[a[i].len], '\0');
            buf_printf(o, "%s{%zu}", a[i].literal8 ? "~" : "", a[i].len);
            esc(o, a[i].str, a[i].len);
            break;
        case IMAP_ARG_LIST:
            assert_true(a[i].n == 0 || a[i].list != NULL);
            buf_puts(o, "(");
            render_args(o, a[i].list, a[i].n);
            buf_puts(o, ")");
            break;
        }
    }
}

/* "TAG NAME args" or "BAD(tag):error". */
static void render_result(struct buf *o, int ret, const struct imap_command *cmd, const char *error)
{
    if (ret < 0) {
        assert_non_null(error);
        assert_string_equal(cmd->name, "");
        buf_printf(o, "BAD(%s):%s", cmd->tag, error);
        return;
    }
    assert_int_equal(ret, 0);
    buf_printf(o, "%s %s", cmd->tag, cmd->name);
    if (cmd->n_args > 0) {
        buf_puts(o, " ");
        render_args(o, cmd->args, cmd->n_args);
    }
}

/* ---- reader harness ------------------------------------------------------ */

struct lims {
    size_t line, literal, command;
    unsigned depth, args;
};

static struct imap_limits make_limits(const struct lims *l)
{
    struct imap_limits lim;
    imap_limits_default(&lim);
    if (l != NULL) {
        if (l->line)
            lim.line_max = l->line;
        if (l->literal)
            lim.literal_max = l->literal;
        if (l->command)
            lim.command_max = l->command;
        if (l->depth)
            lim.depth_max = l->depth;
        if (l->args)
            lim.args_max = l->args;
    }
    return lim;
}

/* Feeds input in chunks as a server would: each chunk offered until it is
 * all consumed, each event recorded as a line of the transcript ("+" for a
 * continuation, "C:" and the parse of a command, "BIG:tag", "LONG:tag",
 * "BADLIT:tag"). chunk 0: all at once; (size_t)-1: random sizes from seed.
 * Returns the malloc'd transcript. */
static char *run(const struct imap_limits *lim, const char *input, size_t len, size_t chunk,
                 unsigned seed)
{
    struct imap_reader *r = imap_reader_new(lim);
    struct imap_parser *p = imap_parser_new(lim);
    struct buf t;
    buf_init(&t, 0);
    buf_puts(&t, "");
    size_t pos = 0;
    srand(seed);
    while (pos < len) {
        size_t n = len - pos;
        if (chunk == (size_t)-1)
            n = 1 + (size_t)rand() % 17;
        else if (chunk > 0)
            n = chunk;
        if (n > len - pos)
            n = len - pos;
        size_t off = 0;
        for (;;) {
            size_t used = 0;
            enum imap_read ev = imap_reader_feed(r, input + pos + off, n - off, &used);
            assert_true(used <= n - off);
            off += used;
            if (ev == IMAP_READ_MORE) {
                assert_int_equal(off, n);
                assert_null(imap_reader_command(r));
                break;
            }
            switch (ev) {
            case IMAP_READ_COMMAND: {
                const struct imap_framed *f = imap_reader_command(r);
                assert_non_null(f);
                struct imap_command cmd;
                const char *error = NULL;
                int ret = imap_parse(p, f, &cmd, &error);
                buf_puts(&t, "C:");
                render_result(&t, ret, &cmd, error);
                break;
            }
            case IMAP_READ_CONTINUE:
                assert_null(imap_reader_command(r));
                buf_puts(&t, "+");
                break;
            case IMAP_READ_TOO_BIG:
                assert_null(imap_reader_command(r));
                buf_printf(&t, "BIG:%s", imap_reader_tag(r));
                break;
            case IMAP_READ_LINE_TOO_LONG:
                assert_null(imap_reader_command(r));
                buf_printf(&t, "LONG:%s", imap_reader_tag(r));
                break;
            case IMAP_READ_BAD_LITERAL:
                assert_null(imap_reader_command(r));
                buf_printf(&t, "BADLIT:%s", imap_reader_tag(r));
                break;
            case IMAP_READ_MORE:
                break;
            }
            buf_puts(&t, "\n");
        }
        pos += n;
    }
    imap_parser_free(&p);
    imap_reader_free(&r);
    assert_null(p);
    assert_null(r);
    return t.data;
}

struct read_case {
    const char *name;
    const char *input;
    size_t len;
    struct lims lim; /* 0: default */
    const char *expect;
};

static const struct read_case read_cases[] = {
    {"one command", IN("a NOOP\r\n"), {0}, "C:a NOOP\n"},
    {"bare LF ends a line", IN("a NOOP\n"), {0}, "C:a NOOP\n"},
    {"pipelined",
     IN("a NOOP\r\nb CHECK\r\nc LOGOUT\r\n"),
     {0},
     "C:a NOOP\nC:b CHECK\nC:c LOGOUT\n"},
    {"partial line waits", IN("a NOOP"), {0}, ""},
    {"partial CR waits", IN("a NOOP\r"), {0}, ""},
    {"empty line", IN("\r\nb NOOP\r\n"), {0}, "C:BAD():empty command\nC:b NOOP\n"},
    {"CR inside a line", IN("a X a\rX\r\n"), {0}, "C:BAD(a):CR or LF in command\n"},
    {"CR after the name", IN("a NOOP\rX\r\n"), {0}, "C:BAD(a):invalid command name\n"},
    {"two CRs before LF", IN("a NOOP x\r\r\n"), {0}, "C:BAD(a):CR or LF in command\n"},
    {"login with sync literals",
     IN("a LOGIN {5}\r\nalice {6}\r\nsecret\r\n"),
     {0},
     "+\n+\nC:a LOGIN {5}alice {6}secret\n"},
    {"login with LITERAL+",
     IN("a LOGIN {5+}\r\nalice {6+}\r\nsecret\r\nb NOOP\r\n"),
     {0},
     "C:a LOGIN {5}alice {6}secret\nC:b NOOP\n"},
    {"literal with LF only", IN("a LOGIN {5}\nalice x\n"), {0}, "+\nC:a LOGIN {5}alice x\n"},
    {"literal holding CRLF and an announcement",
     IN("a APPEND INBOX {12}\r\nx\r\n{3}\r\n\"q\r\n\r\n"),
     {0},
     "+\nC:a APPEND INBOX {12}x\\r\\n{3}\\r\\n\"q\\r\\n\n"},
    {"literal holding NUL and 8-bit",
     IN("a APPEND INBOX {4}\r\na\0b\xff\r\n"),
     {0},
     "+\nC:a APPEND INBOX {4}a\\0b\\xff\n"},
    {"literal8", IN("a APPEND INBOX ~{3}\r\nab\0\r\n"), {0}, "+\nC:a APPEND INBOX ~{3}ab\\0\n"},
    {"literal8 non-synchronizing",
     IN("a APPEND INBOX ~{3+}\r\nab\0\r\n"),
     {0},
     "C:a APPEND INBOX ~{3}ab\\0\n"},
    {"tilde atom is not literal8", IN("a SELECT ~peter/mail\r\n"), {0}, "C:a SELECT ~peter/mail\n"},
    {"empty literals", IN("a LOGIN {0}\r\n {0+}\r\n\r\n"), {0}, "+\nC:a LOGIN {0} {0}\n"},
    {"literal ending in CR, then LF only",
     IN("a LOGIN x {3+}\r\nyz\r\nb NOOP\r\n"),
     {0},
     "C:a LOGIN x {3}yz\\r\nC:b NOOP\n"},
    {"literal ending in CR, then CRLF",
     IN("a LOGIN x {1}\r\n\r\r\n"),
     {0},
     "+\nC:a LOGIN x {1}\\r\n"},
    {"literal in a list", IN("a X (a {1}\r\nb c)\r\n"), {0}, "+\nC:a X (a {1}b c)\n"},
    {"leading zeros in a length",
     IN("a LOGIN {005}\r\nalice x\r\n"),
     {0},
     "+\nC:a LOGIN {5}alice x\n"},
    {"announcement inside quotes is text",
     IN("a SEARCH SUBJECT \"{5}\"\r\n"),
     {0},
     "C:a SEARCH SUBJECT \"{5}\"\n"},
    {"escaped quote before announcement",
     IN("a X \"a\\\"\" {1}\r\nb\r\n"),
     {0},
     "+\nC:a X \"a\"\" {1}b\n"},
    {"announcement after open quote is text",
     IN("a X \"{5}\r\nb NOOP\r\n"),
     {0},
     "C:BAD(a):unterminated quoted string\nC:b NOOP\n"},
    {"announcement not at the end",
     IN("a X {5} y\r\n"),
     {0},
     "C:BAD(a):a literal must end its line\n"},
    {"literal8 not at the end",
     IN("a X ~{5} y\r\n"),
     {0},
     "C:BAD(a):a literal must end its line\n"},
    {"literal glued to an atom",
     IN("a LOGIN x{1}\r\ny z\r\n"),
     {0},
     "+\nC:BAD(a):missing space between arguments\n"},
    {"literal inside brackets",
     IN("a FETCH 1 BODY[HEADER.FIELDS ({4}\r\nFrom)]\r\n"),
     {0},
     "+\nC:BAD(a):literal inside [...] is not supported\n"},
    {"literal as tag", IN("{3}\r\nabc NOOP\r\n"), {0}, "+\nC:BAD():invalid tag\n"},
    {"literal as command name", IN("a {4}\r\nNOOP\r\n"), {0}, "+\nC:BAD(a):invalid command name\n"},
    {"RFC 3501 APPEND",
     IN("A003 APPEND saved-messages (\\Seen) {310}\r\n"
        "Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\n"
        "From: Fred Foobar <foobar@Blurdybloop.COM>\r\n"
        "Subject: afternoon meeting\r\n"
        "To: mooch@owatagu.siam.edu\r\n"
        "Message-Id: <B27397-0100000@Blurdybloop.COM>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n"
        "\r\n"
        "Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n"
        "\r\n"),
     {0},
     "+\nC:A003 APPEND saved-messages (\\Seen) {310}Date: Mon, 7 Feb 1994 21:52:25 -0800 "
     "(PST)\\r\\nFrom: Fred Foobar <foobar@Blurdybloop.COM>\\r\\nSubject: afternoon "
     "meeting\\r\\nTo: mooch@owatagu.siam.edu\\r\\nMessage-Id: "
     "<B27397-0100000@Blurdybloop.COM>\\r\\nMIME-Version: 1.0\\r\\nContent-Type: TEXT/PLAIN; "
     "CHARSET=US-ASCII\\r\\n\\r\\nHello Joe, do you think we can meet at 3:30 "
     "tomorrow?\\r\\n\n"},
    {"APPEND with flags, date and literal",
     IN("A004 APPEND \"Sent Items\" (\\Seen $Forwarded) \"07-Feb-1994 21:52:25 -0800\" "
        "{10}\r\n0123456789\r\n"),
     {0},
     "+\nC:A004 APPEND \"Sent Items\" (\\Seen $Forwarded) \"07-Feb-1994 21:52:25 -0800\" "
     "{10}0123456789\n"},
    {"MULTIAPPEND",
     IN("a APPEND INBOX {1+}\r\nx (\\Draft) {2+}\r\nyz\r\n"),
     {0},
     "C:a APPEND INBOX {1}x (\\Draft) {2}yz\n"},
    {"SEARCH with a charset literal",
     IN("A284 SEARCH CHARSET UTF-8 TEXT {6}\r\nXXXXXX\r\n"),
     {0},
     "+\nC:A284 SEARCH CHARSET UTF-8 TEXT {6}XXXXXX\n"},
    {"SEARCH with an 8-bit literal",
     IN("a UID SEARCH CHARSET UTF-8 SUBJECT {7}\r\nM\xc3\xbcller\r\n"),
     {0},
     "+\nC:a UID SEARCH CHARSET UTF-8 SUBJECT {7}M\\xc3\\xbcller\n"},
    /* malformed announcements */
    {"bad literal letters", IN("a LOGIN {5a}\r\nb NOOP\r\n"), {0}, "BADLIT:a\nC:b NOOP\n"},
    {"bad literal empty", IN("a LOGIN {}\r\nb NOOP\r\n"), {0}, "BADLIT:a\nC:b NOOP\n"},
    {"bad literal plus only", IN("a LOGIN {+}\r\nb NOOP\r\n"), {0}, "BADLIT:a\nC:b NOOP\n"},
    {"bad literal two plus", IN("a LOGIN {5++}\r\nb NOOP\r\n"), {0}, "BADLIT:a\nC:b NOOP\n"},
    {"bad literal negative", IN("a LOGIN {-1}\r\nb NOOP\r\n"), {0}, "BADLIT:a\nC:b NOOP\n"},
    {"bad literal space", IN("a LOGIN {5 }\r\nb NOOP\r\n"), {0}, "BADLIT:a\nC:b NOOP\n"},
    {"bad literal two braces", IN("a LOGIN {5}}\r\nb NOOP\r\n"), {0}, "BADLIT:a\nC:b NOOP\n"},
    {"bad literal 20 digits",
     IN("a LOGIN {99999999999999999999}\r\nb NOOP\r\n"),
     {0},
     "BADLIT:a\nC:b NOOP\n"},
    {"bad literal after a good one",
     IN("a LOGIN {1}\r\nx {y}\r\nb NOOP\r\n"),
     {0},
     "+\nBADLIT:a\nC:b NOOP\n"},
    {"19 digits is too big, not bad",
     IN("a LOGIN {9999999999999999999}\r\nb NOOP\r\n"),
     {0},
     "BIG:a\nC:b NOOP\n"},
    /* line_max */
    {"line at line_max", IN("a NOOP 123\r\nb NOOP\r\n"), {.line = 10}, "C:a NOOP 123\nC:b NOOP\n"},
    {"line at line_max, LF only",
     IN("a NOOP 123\nb NOOP\n"),
     {.line = 10},
     "C:a NOOP 123\nC:b NOOP\n"},
    {"line one over line_max", IN("a NOOP 1234\r\nb NOOP\r\n"), {.line = 10}, "LONG:a\nC:b NOOP\n"},
    {"line far over line_max, reported once",
     IN("a NOOP 12345678901234567890123456789012345678901234567890\r\nb NOOP\r\n"),
     {.line = 10},
     "LONG:a\nC:b NOOP\n"},
    {"line over by a CR", IN("a NOOP 123\r\r\nb NOOP\r\n"), {.line = 10}, "LONG:a\nC:b NOOP\n"},
    {"long line skipped over a LITERAL+ literal",
     IN("a APPEND INBOX {5+}\r\nab\ncd\r\nb NOOP\r\n"),
     {.line = 10},
     "LONG:a\nC:b NOOP\n"},
    {"long line skipped over two LITERAL+ literals",
     IN("a APPEND INBOX {3+}\r\na\nb {2+}\r\n\n\n\r\nb NOOP\r\n"),
     {.line = 10},
     "LONG:a\nC:b NOOP\n"},
    {"long line ending in a sync literal",
     IN("a APPEND INBOX {5}\r\nb NOOP\r\n"),
     {.line = 10},
     "LONG:a\nC:b NOOP\n"},
    {"long continuation line",
     IN("a LOGIN {3}\r\nabc 123456789012\r\nb NOOP\r\n"),
     {.line = 12},
     "+\nLONG:a\nC:b NOOP\n"},
    {"tag unknown when the line is too long in it",
     IN("abcdefghijklmn NOOP\r\nb NOOP\r\n"),
     {.line = 10},
     "LONG:\nC:b NOOP\n"},
    /* literal_max */
    {"literal at literal_max",
     IN("a APPEND INBOX {10}\r\n0123456789\r\n"),
     {.literal = 10},
     "+\nC:a APPEND INBOX {10}0123456789\n"},
    {"literal one over literal_max",
     IN("a APPEND INBOX {11}\r\nb NOOP\r\n"),
     {.literal = 10},
     "BIG:a\nC:b NOOP\n"},
    {"LITERAL+ over literal_max is skipped",
     IN("a APPEND INBOX {11+}\r\n0123456789\n more {2+}\r\nab\r\nb NOOP\r\n"),
     {.literal = 10},
     "BIG:a\nC:b NOOP\n"},
    {"LITERAL+ over literal_max, then a sync one",
     IN("a APPEND INBOX {11+}\r\n0123456789X {2}\r\nb NOOP\r\n"),
     {.literal = 10},
     "BIG:a\nC:b NOOP\n"},
    /* command_max = 30: "a X {10}\r\n" (10) + 10 octets + " {4}\r\n" (6) + 4 = 30 */
    {"command at command_max",
     IN("a X {10}\r\n0123456789 {4}\r\nabcd\r\nb NOOP\r\n"),
     {.literal = 10, .command = 30},
     "+\n+\nC:a X {10}0123456789 {4}abcd\nC:b NOOP\n"},
    {"command one over command_max by a literal",
     IN("a X {10}\r\n0123456789 {5}\r\nb NOOP\r\n"),
     {.literal = 10, .command = 30},
     "+\nBIG:a\nC:b NOOP\n"},
    {"command one over command_max by text",
     IN("a X {10}\r\n0123456789 {4}\r\nabcdX\r\nb NOOP\r\n"),
     {.literal = 10, .command = 30},
     "+\n+\nBIG:a\nC:b NOOP\n"},
    {"command over command_max in its first line",
     IN("a X 0123456789012345678901234567890123456789\r\nb NOOP\r\n"),
     {.command = 30},
     "BIG:a\nC:b NOOP\n"},
    {"command_max counts the literal's own line",
     IN("a XY {3}\r\nb NOOP\r\n"),
     {.command = 12},
     "BIG:a\nC:b NOOP\n"},
    {"literals capped by args_max",
     IN("a X {1+}\r\na {1+}\r\nb {1+}\r\nc\r\nb NOOP\r\n"),
     {.args = 2},
     "BIG:a\nC:b NOOP\n"},
    {"literals at args_max", IN("a X {1+}\r\na {1+}\r\nb\r\n"), {.args = 2}, "C:a X {1}a {1}b\n"},
};

static void check_case(const struct read_case *c, size_t chunk, unsigned seed)
{
    struct imap_limits lim = make_limits(&c->lim);
    char *got = run(&lim, c->input, c->len, chunk, seed);
    if (strcmp(got, c->expect) != 0)
        fail_msg("case '%s' (chunk %zu, seed %u):\n got: %s\nwant: %s", c->name, chunk, seed, got,
                 c->expect);
    free(got);
}

static void test_read_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_SIZE(read_cases); i++)
        check_case(&read_cases[i], 0, 0);
}

/* Property: how the octets are split never changes what comes out. */
static void test_read_chunking(void **state)
{
    (void)state;
    static const size_t chunks[] = {1, 2, 3, 5, 7, 13};
    for (size_t i = 0; i < ARRAY_SIZE(read_cases); i++) {
        for (size_t k = 0; k < ARRAY_SIZE(chunks); k++)
            check_case(&read_cases[i], chunks[k], 0);
        for (unsigned seed = 1; seed <= 20; seed++)
            check_case(&read_cases[i], (size_t)-1, seed);
    }
}

/* All cases with default limits as one pipelined session: the reader
 * resynchronizes after every kind of error, whatever came before. */
static void test_read_session(void **state)
{
    (void)state;
    struct buf in, want;
    buf_init(&in, 0);
    buf_init(&want, 0);
    buf_puts(&want, "");
    for (size_t i = 0; i < ARRAY_SIZE(read_cases); i++) {
        const struct read_case *c = &read_cases[i];
        const char *e = c->expect;
        size_t el = strlen(e);
        bool complete = el > 0 && e[el - 1] == '\n' && c->len > 0 && c->input[c->len - 1] == '\n';
        if (c->lim.line || c->lim.literal || c->lim.command || c->lim.args || !complete)
            continue;
        buf_append(&in, c->input, c->len);
        buf_puts(&want, e);
    }
    struct imap_limits lim = make_limits(NULL);
    for (unsigned seed = 0; seed < 10; seed++) {
        char *got = run(&lim, in.data, in.len, seed == 0 ? 0 : (size_t)-1, seed);
        assert_string_equal(got, want.data);
        free(got);
    }
    buf_free(&in);
    buf_free(&want);
}

/* The reader hands back the bytes after an event: a caller acts on the
 * event, then offers the rest again. */
static void test_read_consumed(void **state)
{
    (void)state;
    static const char s[] = "a LOGIN {5}\r\nalice bob\r\nb NOOP\r\n";
    struct imap_limits lim = make_limits(NULL);
    struct imap_reader *r = imap_reader_new(&lim);
    size_t used;
    assert_int_equal(imap_reader_feed(r, s, sizeof(s) - 1, &used), IMAP_READ_CONTINUE);
    assert_int_equal(used, 13);
    assert_string_equal(imap_reader_tag(r), "a");
    size_t off = used;
    assert_int_equal(imap_reader_feed(r, s + off, sizeof(s) - 1 - off, &used), IMAP_READ_COMMAND);
    off += used;
    assert_int_equal(off, 24);
    assert_non_null(imap_reader_command(r));
    assert_string_equal(imap_reader_tag(r), "a");
    assert_int_equal(imap_reader_feed(r, s + off, 0, &used), IMAP_READ_MORE);
    assert_int_equal(used, 0);
    assert_null(imap_reader_command(r));
    assert_string_equal(imap_reader_tag(r), "a");
    assert_int_equal(imap_reader_feed(r, s + off, 1, &used), IMAP_READ_MORE);
    assert_string_equal(imap_reader_tag(r), ""); /* "b" has no SP yet */
    off += used;
    assert_int_equal(imap_reader_feed(r, s + off, sizeof(s) - 1 - off, &used), IMAP_READ_COMMAND);
    assert_string_equal(imap_reader_tag(r), "b");
    imap_reader_free(&r);
    imap_reader_free(&r); /* NULL is fine */
}

/* A parsed command, literals included, survives further feeding. */
static void test_parse_owns_its_strings(void **state)
{
    (void)state;
    static const char s[] = "a LOGIN {5}\r\nalice \"pw\"\r\nb NOOP XXXXXXXXXXXXXXX\r\n";
    struct imap_limits lim = make_limits(NULL);
    struct imap_reader *r = imap_reader_new(&lim);
    struct imap_parser *p = imap_parser_new(&lim);
    size_t used, off = 0;
    assert_int_equal(imap_reader_feed(r, s, sizeof(s) - 1, &used), IMAP_READ_CONTINUE);
    off += used;
    assert_int_equal(imap_reader_feed(r, s + off, sizeof(s) - 1 - off, &used), IMAP_READ_COMMAND);
    off += used;
    struct imap_command cmd;
    const char *error;
    assert_int_equal(imap_parse(p, imap_reader_command(r), &cmd, &error), 0);
    assert_int_equal(imap_reader_feed(r, s + off, sizeof(s) - 1 - off, &used), IMAP_READ_COMMAND);
    assert_int_equal(cmd.n_args, 2);
    const char *v;
    size_t vl;
    assert_true(imap_arg_astring(&cmd.args[0], &v, &vl));
    assert_int_equal(vl, 5);
    assert_memory_equal(v, "alice", 6);
    assert_true(imap_arg_astring(&cmd.args[1], &v, &vl));
    assert_string_equal(v, "pw");
    imap_parser_free(&p);
    imap_reader_free(&r);
}

/* A huge non-synchronizing literal over the limit is skipped in constant
 * memory, and the reader is ready right after it. */
static void test_read_skip_huge_literal(void **state)
{
    (void)state;
    struct lims l = {.line = 1000, .literal = 1000, .command = 2000};
    struct imap_limits lim = make_limits(&l);
    struct imap_reader *r = imap_reader_new(&lim);
    static const char head[] = "a APPEND INBOX {104857600+}\r\n";
    size_t used;
    assert_int_equal(imap_reader_feed(r, head, sizeof(head) - 1, &used), IMAP_READ_TOO_BIG);
    assert_string_equal(imap_reader_tag(r), "a");
    size_t off = used;
    assert_int_equal(imap_reader_feed(r, head + off, sizeof(head) - 1 - off, &used),
                     IMAP_READ_MORE);
    size_t chunk = 1024 * 1024;
    char *junk = malloc(chunk);
    memset(junk, '\n', chunk);
    for (size_t i = 0; i < 100; i++) {
        assert_int_equal(imap_reader_feed(r, junk, chunk, &used), IMAP_READ_MORE);
        assert_int_equal(used, chunk);
    }
    static const char tail[] = "\r\nb NOOP\r\n";
    assert_int_equal(imap_reader_feed(r, tail, sizeof(tail) - 1, &used), IMAP_READ_COMMAND);
    assert_int_equal(used, sizeof(tail) - 1);
    const struct imap_framed *f = imap_reader_command(r);
    struct imap_parser *p = imap_parser_new(&lim);
    struct imap_command cmd;
    const char *error;
    assert_int_equal(imap_parse(p, f, &cmd, &error), 0);
    assert_string_equal(cmd.tag, "b");
    assert_string_equal(cmd.name, "NOOP");
    /* An endless line is refused once and skipped, also in constant memory. */
    memset(junk, 'x', chunk);
    assert_int_equal(imap_reader_feed(r, junk, chunk, &used), IMAP_READ_LINE_TOO_LONG);
    assert_int_equal(used, 1000);
    for (size_t i = 0; i < 20; i++) {
        size_t o = i == 0 ? used : 0;
        assert_int_equal(imap_reader_feed(r, junk + o, chunk - o, &used), IMAP_READ_MORE);
    }
    assert_int_equal(imap_reader_feed(r, tail, sizeof(tail) - 1, &used), IMAP_READ_COMMAND);
    assert_int_equal(used, sizeof(tail) - 1);
    free(junk);
    imap_parser_free(&p);
    imap_reader_free(&r);
}

/* ---- parser --------------------------------------------------------------- */

struct parse_case {
    const char *input; /* the name is the input */
    size_t len;
    const char *expect;
};

#define P(s, e)                                                                                    \
    {                                                                                              \
        s, sizeof(s) - 1, e                                                                        \
    }

static const struct parse_case parse_cases[] = {
    /* RFC 3501 examples */
    P("a001 login SMITH SESAME", "a001 LOGIN SMITH SESAME"),
    P("abcd CAPABILITY", "abcd CAPABILITY"),
    P("a047 NOOP", "a047 NOOP"),
    P("A023 LOGOUT", "A023 LOGOUT"),
    P("a002 STARTTLS", "a002 STARTTLS"),
    P("A142 SELECT INBOX", "A142 SELECT INBOX"),
    P("A932 EXAMINE blurdybloop", "A932 EXAMINE blurdybloop"),
    P("A003 CREATE owatagusiam/", "A003 CREATE owatagusiam/"),
    P("A683 RENAME blurdybloop sarasoop", "A683 RENAME blurdybloop sarasoop"),
    P("A682 LIST \"\" *", "A682 LIST \"\" *"),
    P("A101 LIST \"\" \"\"", "A101 LIST \"\" \"\""),
    P("A202 LIST ~/Mail/ %", "A202 LIST ~/Mail/ %"),
    P("A103 LIST /usr/staff/jones \"\"", "A103 LIST /usr/staff/jones \"\""),
    P("A042 STATUS blurdybloop (UIDNEXT MESSAGES)", "A042 STATUS blurdybloop (UIDNEXT MESSAGES)"),
    P("A282 SEARCH FLAGGED SINCE 1-Feb-1994 NOT FROM \"Smith\"",
      "A282 SEARCH FLAGGED SINCE 1-Feb-1994 NOT FROM \"Smith\""),
    P("A654 FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])",
      "A654 FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])"),
    P("A003 STORE 2:4 +FLAGS (\\Deleted)", "A003 STORE 2:4 +FLAGS (\\Deleted)"),
    P("A003 COPY 2:4 MEETING", "A003 COPY 2:4 MEETING"),
    P("A999 UID FETCH 4827313:4828442 FLAGS", "A999 UID FETCH 4827313:4828442 FLAGS"),
    P("a FETCH 12 (FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODY)",
      "a FETCH 12 (FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODY)"),
    P("a FETCH 1 BODY[1.2.MIME]", "a FETCH 1 BODY[1.2.MIME]"),
    P("a FETCH 1 (BODY[]<0.2048>)", "a FETCH 1 (BODY[]<0.2048>)"),
    /* Thunderbird */
    P("7 UID fetch 1:* (FLAGS)", "7 UID fetch 1:* (FLAGS)"),
    P("10 UID fetch 3 (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc Subject "
      "Date Message-ID Priority X-Priority References Newsgroups In-Reply-To Content-Type "
      "Reply-To)])",
      "10 UID fetch 3 (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc Subject "
      "Date Message-ID Priority X-Priority References Newsgroups In-Reply-To Content-Type "
      "Reply-To)])"),
    P("12 UID store 4 +FLAGS (\\Seen)", "12 UID store 4 +FLAGS (\\Seen)"),
    P("5 ID (\"name\" \"Thunderbird\" \"version\" \"115.3.1\")",
      "5 ID (\"name\" \"Thunderbird\" \"version\" \"115.3.1\")"),
    P("3 list (subscribed) \"\" \"*\" return (special-use)",
      "3 LIST (subscribed) \"\" \"*\" return (special-use)"),
    P("8 select \"INBOX\" (CONDSTORE)", "8 SELECT \"INBOX\" (CONDSTORE)"),
    P("9 UID fetch 1:* (FLAGS) (CHANGEDSINCE 12345)",
      "9 UID fetch 1:* (FLAGS) (CHANGEDSINCE 12345)"),
    P("4 IDLE", "4 IDLE"),
    /* mbsync */
    P("1 LOGIN \"user\" \"pa\\\"ss\\\\word\"", "1 LOGIN \"user\" \"pa\"ss\\word\""),
    P("2 SELECT \"INBOX\"", "2 SELECT \"INBOX\""),
    P("3 UID FETCH 1:1000000000 (UID FLAGS)", "3 UID FETCH 1:1000000000 (UID FLAGS)"),
    P("5 UID FETCH 12 (BODY.PEEK[])", "5 UID FETCH 12 (BODY.PEEK[])"),
    P("7 UID STORE 3,5:7,9 +FLAGS.SILENT (\\Deleted \\Seen)",
      "7 UID STORE 3,5:7,9 +FLAGS.SILENT (\\Deleted \\Seen)"),
    P("11 UID EXPUNGE 3", "11 UID EXPUNGE 3"),
    /* mutt */
    P("a0001 LIST \"\" \"%\"", "a0001 LIST \"\" \"%\""),
    P("a0003 STATUS \"INBOX\" (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)",
      "a0003 STATUS \"INBOX\" (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)"),
    P("a0005 UID SEARCH UNDELETED SUBJECT \"hello world\"",
      "a0005 UID SEARCH UNDELETED SUBJECT \"hello world\""),
    P("a0006 UID STORE 1:3 -FLAGS.SILENT (\\Flagged $Label1)",
      "a0006 UID STORE 1:3 -FLAGS.SILENT (\\Flagged $Label1)"),
    /* other shapes */
    P("a FETCH 1 BINARY[1]", "a FETCH 1 BINARY[1]"),
    P("a FETCH 1 BINARY.PEEK[1.2]<0.1024>", "a FETCH 1 BINARY.PEEK[1.2]<0.1024>"),
    P("a FETCH 1 (BODY.PEEK[HEADER.FIELDS (From To)]<0.100>)",
      "a FETCH 1 (BODY.PEEK[HEADER.FIELDS (From To)]<0.100>)"),
    P("a FETCH 1 BODY[HEADER.FIELDS (\"X]\")]", "a FETCH 1 BODY[HEADER.FIELDS (\"X]\")]"),
    P("a FETCH 1 BODY[HEADER.FIELDS.NOT (A)]", "a FETCH 1 BODY[HEADER.FIELDS.NOT (A)]"),
    P("a STORE 1 FLAGS ()", "a STORE 1 FLAGS ()"),
    P("a STORE 1 FLAGS (\\*)", "a STORE 1 FLAGS (\\*)"),
    P("a X ((a) (b (c)) ())", "a X ((a) (b (c)) ())"),
    P("a ID NIL", "a ID NIL"),
    P("a X nil Nil \"NIL\"", "a X NIL NIL \"NIL\""),
    P("a X NILS", "a X NILS"),
    P("a SELECT ~peter/mail/&U,BTFw-/&ZeVnLIqe-", "a SELECT ~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
    P("a X \"tab\tinside\"", "a X \"tab\\x09inside\""),
    P("a X a]b", "a X a]b"),
    P("a X \"\"", "a X \"\""),
    P("a  NOOP", "a NOOP"),
    P("a NOOP ", "a NOOP"),
    P("a X  a  ( b  c )  ", "a X a (b c)"),
    P("a X (a)", "a X (a)"),
    P("a X a}", "a X a}"),
    P("]tag NOOP", "]tag NOOP"),
    P("0123456789012345678901234567890123456789012345678901234567890123 NOOP",
      "0123456789012345678901234567890123456789012345678901234567890123 NOOP"),
    P("a ABCDEFGHIJKLMNOPQRSTUVWXYZabcde", "a ABCDEFGHIJKLMNOPQRSTUVWXYZABCDE"),
    /* errors */
    P("", "BAD():empty command"),
    P(" NOOP", "BAD():missing tag"),
    P("a+ NOOP", "BAD():invalid tag"),
    P("+ NOOP", "BAD():invalid tag"),
    P("a(b NOOP", "BAD():invalid tag"),
    P("a*b NOOP", "BAD():invalid tag"),
    P("a%b NOOP", "BAD():invalid tag"),
    P("a\"b NOOP", "BAD():invalid tag"),
    P("a\\b NOOP", "BAD():invalid tag"),
    P("a{b NOOP", "BAD():invalid tag"),
    P("\xc3\xa9 NOOP", "BAD():invalid tag"),
    P("01234567890123456789012345678901234567890123456789012345678901234 NOOP",
      "BAD():tag too long"),
    P("a", "BAD(a):missing command name"),
    P("a ", "BAD(a):missing command name"),
    P("a 123", "BAD(a):invalid command name"),
    P("a NO-OP", "BAD(a):invalid command name"),
    P("a NOOP(", "BAD(a):invalid command name"),
    P("a ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef", "BAD(a):command name too long"),
    P("a X (a b", "BAD(a):unbalanced parenthesis: missing ')'"),
    P("a X ((a) b", "BAD(a):unbalanced parenthesis: missing ')'"),
    P("a X a)", "BAD(a):unbalanced parenthesis: unexpected ')'"),
    P("a X (a))", "BAD(a):unbalanced parenthesis: unexpected ')'"),
    P("a X )", "BAD(a):unbalanced parenthesis: unexpected ')'"),
    P("a X \"abc", "BAD(a):unterminated quoted string"),
    P("a X \"abc\\\"", "BAD(a):unterminated quoted string"),
    P("a X \"abc\\", "BAD(a):unterminated quoted string"),
    P("a X (\"a)", "BAD(a):unterminated quoted string"),
    P("a X \"a\\b\"", "BAD(a):invalid escape in quoted string (only \\\\ and \\\")"),
    P("a X \"a\xc3\xa9\"", "BAD(a):8-bit octet in quoted string (use a literal)"),
    P("a X \"a\rb\"", "BAD(a):CR or LF in quoted string"),
    P("a X \"a\nb\"", "BAD(a):CR or LF in quoted string"),
    P("a X \"a\0b\"", "BAD(a):NUL in quoted string"),
    P("a X a\xc3\xa9", "BAD(a):8-bit octet in command (use a literal)"),
    P("a X a\tb", "BAD(a):control character in command"),
    P("a X a\x7f", "BAD(a):control character in command"),
    P("a X a\0b", "BAD(a):NUL in command"),
    P("a X (a)(b)", "BAD(a):missing space between arguments"),
    P("a X \"a\"b", "BAD(a):missing space between arguments"),
    P("a X a\"b\"", "BAD(a):missing space between arguments"),
    P("a X a(b)", "BAD(a):missing space between arguments"),
    P("a X \\", "BAD(a):'\\' must start a flag name"),
    P("a X \\ a", "BAD(a):'\\' must start a flag name"),
    P("a X \\(a)", "BAD(a):'\\' must start a flag name"),
    P("a X a\\b", "BAD(a):'\\' inside an atom"),
    P("a X \\\\Seen", "BAD(a):'\\' must start a flag name"),
    P("a X BODY[HEADER", "BAD(a):missing ']'"),
    P("a X BODY[a[b]]", "BAD(a):nested '[' in atom"),
    P("a X BODY[\"a]", "BAD(a):unterminated quoted string"),
    P("a X BODY[a\xc3\xa9]", "BAD(a):8-bit octet in command (use a literal)"),
    P("a X BODY[a\tb]", "BAD(a):control character in command"),
    P("a X {5}", "BAD(a):a literal must end its line"),
    P("a X ~{5}", "BAD(a):a literal must end its line"),
    P("a X {5+}", "BAD(a):a literal must end its line"),
};

static void test_parse_table(void **state)
{
    (void)state;
    struct imap_limits lim = make_limits(NULL);
    struct imap_parser *p = imap_parser_new(&lim);
    for (size_t i = 0; i < ARRAY_SIZE(parse_cases); i++) {
        const struct parse_case *c = &parse_cases[i];
        struct imap_command cmd;
        const char *error = NULL;
        int ret = imap_parse_text(p, c->input, c->len, &cmd, &error);
        struct buf got;
        buf_init(&got, 0);
        render_result(&got, ret, &cmd, error);
        if (strcmp(got.data, c->expect) != 0)
            fail_msg("case '%s':\n got: %s\nwant: %s", c->input, got.data, c->expect);
        buf_free(&got);
    }
    imap_parser_free(&p);
    assert_null(p);
}

/* Builds "a X " + n nested "(" + "x" + n ")" and parses it. */
static int parse_nested(struct imap_parser *p, unsigned n, const char **error_r)
{
    struct buf b;
    buf_init(&b, 0);
    buf_puts(&b, "a X ");
    for (unsigned i = 0; i < n; i++)
        buf_puts(&b, "(");
    buf_puts(&b, "x");
    for (unsigned i = 0; i < n; i++)
        buf_puts(&b, ")");
    struct imap_command cmd;
    int ret = imap_parse_text(p, b.data, b.len, &cmd, error_r);
    if (ret == 0) {
        /* Walk down: every level one list holding the next. */
        const struct imap_arg *a = cmd.args;
        for (unsigned i = 0; i < n; i++) {
            assert_int_equal(a->type, IMAP_ARG_LIST);
            assert_int_equal(a->n, 1);
            a = a->list;
        }
        assert_true(imap_arg_atom_is(a, "X"));
    }
    buf_free(&b);
    return ret;
}

static void test_parse_depth(void **state)
{
    (void)state;
    static const unsigned depths[] = {1, 3, 16};
    for (size_t k = 0; k < ARRAY_SIZE(depths); k++) {
        struct lims l = {.depth = depths[k]};
        struct imap_limits lim = make_limits(&l);
        struct imap_parser *p = imap_parser_new(&lim);
        const char *error;
        assert_int_equal(parse_nested(p, depths[k], &error), 0);
        assert_int_equal(parse_nested(p, depths[k] + 1, &error), -1);
        assert_string_equal(error, "nesting too deep");
        /* The parser is fine afterwards. */
        assert_int_equal(parse_nested(p, 0, &error), 0);
        imap_parser_free(&p);
    }
    /* The default is 16. */
    struct imap_limits lim = make_limits(NULL);
    struct imap_parser *p = imap_parser_new(&lim);
    const char *error;
    assert_int_equal(parse_nested(p, 16, &error), 0);
    assert_int_equal(parse_nested(p, 17, &error), -1);
    imap_parser_free(&p);
}

/* Every node counts: atoms, strings, literals, NILs and lists. */
static void test_parse_args_max(void **state)
{
    (void)state;
    struct lims l = {.args = 4};
    struct imap_limits lim = make_limits(&l);
    struct imap_parser *p = imap_parser_new(&lim);
    static const struct {
        const char *in;
        int ret;
    } cases[] = {
        {"a X a b c d", 0},        {"a X a b c d e", -1},        {"a X (a b c)", 0},
        {"a X (a b c d)", -1},     {"a X () () () ()", 0},       {"a X () () () () ()", -1},
        {"a X NIL \"s\" a ()", 0}, {"a X NIL \"s\" a () b", -1}, {"a X ((()))", 0},
        {"a X ((((()))))", -1},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        struct imap_command cmd;
        const char *error = NULL;
        int ret = imap_parse_text(p, cases[i].in, strlen(cases[i].in), &cmd, &error);
        if (ret != cases[i].ret)
            fail_msg("'%s': %d (%s)", cases[i].in, ret, ret < 0 ? error : "");
        if (ret < 0)
            assert_string_equal(error, "too many arguments");
    }
    imap_parser_free(&p);

    /* The default: 4096 arguments, one more refused. */
    lim = make_limits(NULL);
    p = imap_parser_new(&lim);
    struct buf b;
    buf_init(&b, 0);
    buf_puts(&b, "a X");
    for (unsigned i = 0; i < 4096; i++)
        buf_puts(&b, " 1");
    struct imap_command cmd;
    const char *error;
    assert_int_equal(imap_parse_text(p, b.data, b.len, &cmd, &error), 0);
    assert_int_equal(cmd.n_args, 4096);
    buf_puts(&b, " 1");
    assert_int_equal(imap_parse_text(p, b.data, b.len, &cmd, &error), -1);
    assert_string_equal(error, "too many arguments");
    buf_free(&b);
    imap_parser_free(&p);
}

static void test_parse_helpers(void **state)
{
    (void)state;
    struct imap_limits lim = make_limits(NULL);
    struct imap_parser *p = imap_parser_new(&lim);
    static const char s[] = "a X INBOX \"In Box\" NIL \\Seen a*b (x) BODY[1] a]b";
    struct imap_command cmd;
    const char *error;
    assert_int_equal(imap_parse_text(p, s, sizeof(s) - 1, &cmd, &error), 0);
    assert_int_equal(cmd.n_args, 8);
    static const struct {
        bool ok;
        const char *value;
    } want[] = {
        {true, "INBOX"}, {true, "In Box"}, {true, "NIL"},     {false, NULL},
        {false, NULL},   {false, NULL},    {true, "BODY[1]"}, {true, "a]b"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(want); i++) {
        const char *v = NULL;
        size_t vl = 0;
        bool ok = imap_arg_astring(&cmd.args[i], &v, &vl);
        if (ok != want[i].ok)
            fail_msg("arg %zu: astring %d", i, ok);
        if (ok) {
            assert_string_equal(v, want[i].value);
            assert_int_equal(vl, strlen(want[i].value));
        }
    }
    assert_true(imap_arg_atom_is(&cmd.args[0], "inbox"));
    assert_true(imap_arg_atom_is(&cmd.args[0], "INBOX"));
    assert_false(imap_arg_atom_is(&cmd.args[0], "INBOXX"));
    assert_false(imap_arg_atom_is(&cmd.args[0], "INBO"));
    assert_false(imap_arg_atom_is(&cmd.args[1], "In Box")); /* a string, not an atom */
    assert_true(imap_arg_atom_is(&cmd.args[2], "nil"));
    assert_true(imap_arg_atom_is(&cmd.args[3], "\\seen"));
    assert_false(imap_arg_atom_is(&cmd.args[5], "x"));
    assert_int_equal(cmd.args[5].type, IMAP_ARG_LIST);
    assert_true(imap_arg_atom_is(&cmd.args[5].list[0], "x"));
    imap_parser_free(&p);
}

/* ---- sequence sets --------------------------------------------------------- */

struct seq_case {
    const char *in;
    uint32_t star;
    const char *expect; /* ranges "lo:hi,..." or "ERR:text" */
};

static const struct seq_case seq_cases[] = {
    {"1", 10, "1:1"},
    {"1:*", 10, "1:10"},
    {"*", 10, "10:10"},
    {"*:1", 10, "1:10"},
    {"*:*", 7, "7:7"},
    {"3:1", 10, "1:3"},
    {"1,3:5", 10, "1:1,3:5"},
    {"5,1,2,3", 10, "1:3,5:5"},
    {"1:3,2:6", 10, "1:6"},
    {"1,2", 10, "1:2"},
    {"9,1,5", 10, "1:1,5:5,9:9"},
    {"2:4,1,5,7", 10, "1:5,7:7"},
    {"100:200,50:150", 10, "50:200"},
    {"15:*", 10, "10:15"},
    {"4294967295", 1, "4294967295:4294967295"},
    {"1:4294967295", 1, "1:4294967295"},
    {"4294967295:*", 5, "5:4294967295"},
    {"4294967294,4294967295,1", 5, "1:1,4294967294:4294967295"},
    {"1:5", 0, "1:5"},
    {"", 10, "ERR:empty sequence set"},
    {"0", 10, "ERR:0 is not a valid sequence number"},
    {"1:0", 10, "ERR:0 is not a valid sequence number"},
    {"0:5", 10, "ERR:0 is not a valid sequence number"},
    {"01", 10, "ERR:leading zero in sequence number"},
    {"4294967296", 10, "ERR:sequence number over 4294967295"},
    {"1:4294967296", 10, "ERR:sequence number over 4294967295"},
    {"99999999999999999999999", 10, "ERR:sequence number over 4294967295"},
    {"1,,2", 10, "ERR:empty element in sequence set"},
    {",1", 10, "ERR:empty element in sequence set"},
    {"1,", 10, "ERR:trailing ',' in sequence set"},
    {"1:", 10, "ERR:missing number after ':' in sequence set"},
    {"1:,2", 10, "ERR:missing number after ':' in sequence set"},
    {":1", 10, "ERR:empty element in sequence set"},
    {"1::2", 10, "ERR:empty element in sequence set"},
    {"1:2:3", 10, "ERR:invalid character in sequence set"},
    {"a", 10, "ERR:invalid character in sequence set"},
    {"1 2", 10, "ERR:invalid character in sequence set"},
    {"1a", 10, "ERR:invalid character in sequence set"},
    {"-1", 10, "ERR:invalid character in sequence set"},
    {"+1", 10, "ERR:invalid character in sequence set"},
    {"$", 10, "ERR:invalid character in sequence set"},
    {"*", 0, "ERR:no messages ('*' in an empty mailbox)"},
    {"1:*", 0, "ERR:no messages ('*' in an empty mailbox)"},
};

static void test_seqset_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_SIZE(seq_cases); i++) {
        const struct seq_case *c = &seq_cases[i];
        struct imap_range *r = NULL;
        size_t n = 99;
        const char *error = NULL;
        struct buf got;
        buf_init(&got, 0);
        if (imap_seqset_parse(c->in, c->star, &r, &n, &error) < 0) {
            assert_null(r);
            assert_int_equal(n, 0);
            buf_printf(&got, "ERR:%s", error);
        } else {
            for (size_t k = 0; k < n; k++)
                buf_printf(&got, "%s%u:%u", k > 0 ? "," : "", r[k].lo, r[k].hi);
        }
        if (strcmp(got.data, c->expect) != 0)
            fail_msg("'%s' (* = %u):\n got: %s\nwant: %s", c->in, c->star, got.data, c->expect);
        free(r);
        buf_free(&got);
    }
}

static void test_seqset_max(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 0);
    for (unsigned i = 0; i < IMAP_SEQSET_MAX; i++)
        buf_printf(&b, "%s%u", i > 0 ? "," : "", 2 * i + 1);
    struct imap_range *r;
    size_t n;
    const char *error;
    assert_int_equal(imap_seqset_parse(b.data, 1, &r, &n, &error), 0);
    assert_int_equal(n, IMAP_SEQSET_MAX);
    free(r);
    buf_puts(&b, ",100000");
    assert_int_equal(imap_seqset_parse(b.data, 1, &r, &n, &error), -1);
    assert_string_equal(error, "too many elements in sequence set");
    buf_free(&b);
}

/* Random sets against a brute-force membership map. */
static void test_seqset_random(void **state)
{
    (void)state;
    srand(7);
    for (int round = 0; round < 500; round++) {
        bool member[101] = {false};
        uint32_t star = 1 + (uint32_t)(rand() % 100);
        struct buf b;
        buf_init(&b, 0);
        int elems = 1 + rand() % 8;
        for (int e = 0; e < elems; e++) {
            uint32_t a = 1 + (uint32_t)(rand() % 100);
            bool sa = rand() % 8 == 0, range = rand() % 2, sz = rand() % 8 == 0;
            if (e > 0)
                buf_puts(&b, ",");
            if (sa) {
                a = star;
                buf_puts(&b, "*");
            } else {
                buf_printf(&b, "%u", a);
            }
            uint32_t z = a;
            if (range) {
                z = 1 + (uint32_t)(rand() % 100);
                if (sz) {
                    z = star;
                    buf_puts(&b, ":*");
                } else {
                    buf_printf(&b, ":%u", z);
                }
            }
            for (uint32_t v = a < z ? a : z; v <= (a < z ? z : a); v++)
                member[v] = true;
        }
        struct imap_range *r;
        size_t n;
        const char *error;
        assert_int_equal(imap_seqset_parse(b.data, star, &r, &n, &error), 0);
        for (size_t k = 0; k < n; k++) {
            assert_true(r[k].lo <= r[k].hi);
            if (k > 0)
                assert_true(r[k].lo > r[k - 1].hi + 1); /* sorted, merged */
        }
        for (uint32_t v = 0; v <= 101; v++)
            assert_int_equal(imap_seqset_contains(r, n, v), v <= 100 && member[v]);
        free(r);
        buf_free(&b);
    }
    assert_false(imap_seqset_contains(NULL, 0, 1));
}

/* ---- modified UTF-7 -------------------------------------------------------- */

static const struct {
    const char *mutf7;
    const char *utf8;
} mutf7_pairs[] = {
    {"", ""},
    {"INBOX", "INBOX"},
    {"&-", "&"},
    {"a&-b&-", "a&b&"},
    {"~peter/mail/&U,BTFw-/&ZeVnLIqe-", "~peter/mail/\xe5\x8f\xb0\xe5\x8c\x97/"
                                        "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e"},
    {"&AOk-", "\xc3\xa9"},
    {"Entw&APw-rfe", "Entw\xc3\xbc"
                     "rfe"},
    {"&AOkA6Q-", "\xc3\xa9\xc3\xa9"},
    {"&AOk--", "\xc3\xa9-"},
    {"&AOk-&-", "\xc3\xa9&"},
    {"&-&AOk-", "&\xc3\xa9"},
    {"&2D3eAA-", "\xf0\x9f\x98\x80"},
    {"&AAE-", "\x01"},
    {"&AH8-", "\x7f"},
    {"a&AAk-b", "a\tb"},
    {"&ZeVnLIqe-a&ZeVnLIqe-", "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e"
                              "a"
                              "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e"},
    {"&BB8EQAQ4BDIENQRC-", "\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82"},
    {"-+,./~", "-+,./~"},
};

static void test_mutf7_pairs(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_SIZE(mutf7_pairs); i++) {
        const char *m = mutf7_pairs[i].mutf7, *u = mutf7_pairs[i].utf8;
        struct buf out;
        buf_init(&out, 0);
        buf_puts(&out, "");
        if (imap_mutf7_to_utf8(m, strlen(m), &out) < 0)
            fail_msg("decode '%s' failed", m);
        assert_string_equal(out.data, u);
        buf_reset(&out);
        if (imap_utf8_to_mutf7(u, strlen(u), &out) < 0)
            fail_msg("encode of '%s' failed", m);
        assert_string_equal(out.data, m);
        buf_free(&out);
    }
}

static void test_mutf7_invalid(void **state)
{
    (void)state;
    static const char *bad[] = {
        "&",          /* alone */
        "a&",         /* at the end */
        "&AOk",       /* not closed */
        "&AOk-&AOk-", /* adjacent shifts: one is canonical */
        "&AGE-",      /* 'a' encoded */
        "&ACY-",      /* '&' encoded: that is "&-" */
        "&ACA-",      /* ' ' encoded */
        "&AH4-",      /* '~' encoded */
        "&AOl-",      /* non-zero padding bits */
        "&AOkA-",     /* superfluous character */
        "&AA-",       /* decodes to nothing */
        "&A-",        /* one character */
        "&AAA-",      /* U+0000 */
        "&2D0-",      /* high surrogate alone */
        "&3gA-",      /* low surrogate alone */
        "&2D0AYQ-",   /* high surrogate then not a low one */
        "&2D3e-",     /* pair cut short */
        "&AO k-",     /* space inside a shift */
        "&AOk/-",     /* '/' is not modified base64 */
        "&AOk=-",     /* no '=' padding */
        "&&-",        /* "&-" inside a shift */
        "&AOk&-",     /* "&-" inside a shift */
        "a\001b",     /* raw control */
        "a\x7f",      /* raw DEL */
        "a\xc3\xa9",  /* raw 8-bit */
        "a\tb",       /* raw tab */
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        struct buf out;
        buf_init(&out, 0);
        buf_puts(&out, "kept");
        if (imap_mutf7_to_utf8(bad[i], strlen(bad[i]), &out) == 0)
            fail_msg("'%s' decoded to '%s'", bad[i], out.data);
        assert_string_equal(out.data, "kept"); /* unchanged */
        buf_free(&out);
    }
    /* A NUL inside the input is not printable ASCII either. */
    struct buf out;
    buf_init(&out, 0);
    assert_int_equal(imap_mutf7_to_utf8("a\0b", 3, &out), -1);
    buf_free(&out);
}

static void test_utf8_invalid(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        size_t len;
    } bad[] = {
        {IN("\xff")},
        {IN("\x80")},
        {IN("a\xc3")},
        {IN("\xc0\x80")},
        {IN("\xc1\xbf")},
        {IN("\xe0\x80\xaf")},
        {IN("\xed\xa0\x80")},
        {IN("\xed\xbf\xbf")},
        {IN("\xf4\x90\x80\x80")},
        {IN("\xf0\x80\x80\xaf")},
        {IN("\xe6\x97")},
        {IN("\xf5\x80\x80\x80")},
        {IN("a\0b")},
        {IN("\xc3\x28")},
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        struct buf out;
        buf_init(&out, 0);
        buf_puts(&out, "kept");
        if (imap_utf8_to_mutf7(bad[i].s, bad[i].len, &out) == 0)
            fail_msg("case %zu encoded to '%s'", i, out.data);
        assert_string_equal(out.data, "kept");
        buf_free(&out);
    }
}

static size_t put_cp(char *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Random names: UTF-8 -> mUTF-7 -> UTF-8 is the identity, the mUTF-7 is
 * only printable ASCII, and it is canonical (decoding it and encoding again
 * gives the same octets, which the decoder's checks would refuse otherwise). */
static void test_mutf7_random(void **state)
{
    (void)state;
    srand(11);
    for (int round = 0; round < 5000; round++) {
        char u[200];
        size_t ul = 0;
        int n = rand() % 30;
        for (int k = 0; k < n; k++) {
            uint32_t cp;
            switch (rand() % 6) {
            case 0:
                cp = 0x20 + (uint32_t)(rand() % 0x5f);
                break;
            case 1:
                cp = '&';
                break;
            case 2:
                cp = 1 + (uint32_t)(rand() % 0x1f);
                break;
            case 3:
                cp = 0x80 + (uint32_t)(rand() % 0x780);
                break;
            case 4:
                do
                    cp = 0x800 + (uint32_t)(rand() % 0xf800);
                while (cp >= 0xd800 && cp <= 0xdfff);
                break;
            default:
                cp = 0x10000 + (uint32_t)(rand() % 0x100000);
                break;
            }
            ul += put_cp(u + ul, cp);
        }
        struct buf m, back, again;
        buf_init(&m, 0);
        buf_init(&back, 0);
        buf_init(&again, 0);
        buf_puts(&m, "");
        buf_puts(&back, "");
        buf_puts(&again, "");
        assert_int_equal(imap_utf8_to_mutf7(u, ul, &m), 0);
        for (size_t i = 0; i < m.len; i++)
            assert_true(m.data[i] >= 0x20 && m.data[i] <= 0x7e);
        assert_int_equal(imap_mutf7_to_utf8(m.data, m.len, &back), 0);
        assert_int_equal(back.len, ul);
        assert_memory_equal(back.data, u, ul);
        assert_int_equal(imap_utf8_to_mutf7(back.data, back.len, &again), 0);
        assert_string_equal(again.data, m.data);
        buf_free(&m);
        buf_free(&back);
        buf_free(&again);
    }
}

/* A buffer's max is respected: -1 and the buffer unchanged. */
static void test_mutf7_buffer_max(void **state)
{
    (void)state;
    struct buf out;
    buf_init(&out, 4);
    assert_int_equal(imap_utf8_to_mutf7("\xc3\xa9", 2, &out), -1);
    assert_int_equal(out.len, 0);
    assert_int_equal(imap_mutf7_to_utf8("abcde", 5, &out), -1);
    assert_int_equal(out.len, 0);
    assert_int_equal(imap_mutf7_to_utf8("abcd", 4, &out), 0);
    assert_string_equal(out.data, "abcd");
    buf_free(&out);
}

/* ---- writers ------------------------------------------------------------------ */

static void test_write(void **state)
{
    (void)state;
    static const struct {
        int kind; /* 0 string, 1 nstring, 2 astring */
        const char *s;
        size_t len;
        const char *expect;
        size_t elen;
    } cases[] = {
        {0, IN("abc"), IN("\"abc\"")},
        {0, IN(""), IN("\"\"")},
        {0, IN("a b"), IN("\"a b\"")},
        {0, IN("a\"b\\c"), IN("\"a\\\"b\\\\c\"")},
        {0, IN("a\r\nb"), IN("{4}\r\na\r\nb")},
        {0, IN("a\tb"), IN("{3}\r\na\tb")},
        {0, IN("\xc3\xa9"), IN("{2}\r\n\xc3\xa9")},
        {0, IN("a\0b"), IN("{3}\r\na\0b")},
        {1, NULL, 0, IN("NIL")},
        {1, IN("NIL"), IN("\"NIL\"")},
        {1, IN(""), IN("\"\"")},
        {2, IN("INBOX"), IN("INBOX")},
        {2, IN("~peter/mail/&U,BTFw-"), IN("~peter/mail/&U,BTFw-")},
        {2, IN("NIL"), IN("\"NIL\"")},
        {2, IN("nil"), IN("\"nil\"")},
        {2, IN("NILS"), IN("NILS")},
        {2, IN(""), IN("\"\"")},
        {2, IN("a b"), IN("\"a b\"")},
        {2, IN("a]"), IN("\"a]\"")},
        {2, IN("a%"), IN("\"a%\"")},
        {2, IN("a[b"), IN("\"a[b\"")},
        {2, IN("\\Seen"), IN("\"\\\\Seen\"")},
        {2, IN("a\r"), IN("{2}\r\na\r")},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        struct buf out;
        buf_init(&out, 0);
        if (cases[i].kind == 0)
            imap_write_string(&out, cases[i].s, cases[i].len);
        else if (cases[i].kind == 1)
            imap_write_nstring(&out, cases[i].s, cases[i].len);
        else
            imap_write_astring(&out, cases[i].s, cases[i].len);
        assert_int_equal(out.len, cases[i].elen);
        assert_memory_equal(out.data, cases[i].expect, cases[i].elen);
        buf_free(&out);
    }
    /* The quoted/literal boundary. */
    char big[IMAP_QUOTED_MAX];
    memset(big, 'x', sizeof(big));
    struct buf out;
    buf_init(&out, 0);
    imap_write_string(&out, big, IMAP_QUOTED_MAX - 1);
    assert_int_equal(out.len, IMAP_QUOTED_MAX + 1);
    assert_int_equal(out.data[0], '"');
    buf_reset(&out);
    imap_write_string(&out, big, IMAP_QUOTED_MAX);
    assert_memory_equal(out.data, "{1024}\r\n", 8);
    assert_int_equal(out.len, 8 + IMAP_QUOTED_MAX);
    buf_free(&out);
}

/* What the writers produce, the parser reads back as the same octets. */
static void test_write_parse_round_trip(void **state)
{
    (void)state;
    struct imap_limits lim = make_limits(NULL);
    struct imap_parser *p = imap_parser_new(&lim);
    struct imap_reader *r = imap_reader_new(&lim);
    srand(3);
    for (int round = 0; round < 2000; round++) {
        char s[1100];
        size_t len = (size_t)(rand() % 4 == 0 ? rand() % 1100 : rand() % 20);
        int kind = rand() % 3;
        for (size_t i = 0; i < len; i++) {
            int c;
            switch (kind) {
            case 0:
                c = 0x20 + rand() % 0x5f; /* printable */
                break;
            case 1:
                c = "aZ\"\\ ()*%]{}~"[rand() % 13];
                break;
            default:
                c = 1 + rand() % 255;
                break;
            }
            s[i] = (char)c;
        }
        struct buf line;
        buf_init(&line, 0);
        buf_puts(&line, "t X ");
        if (rand() % 2)
            imap_write_astring(&line, s, len);
        else
            imap_write_string(&line, s, len);
        buf_puts(&line, "\r\n");
        size_t off = 0, used;
        enum imap_read ev;
        while ((ev = imap_reader_feed(r, line.data + off, line.len - off, &used)) ==
               IMAP_READ_CONTINUE)
            off += used;
        assert_int_equal(ev, IMAP_READ_COMMAND);
        assert_int_equal(off + used, line.len);
        struct imap_command cmd;
        const char *error;
        if (imap_parse(p, imap_reader_command(r), &cmd, &error) < 0)
            fail_msg("round %d: %s", round, error);
        assert_int_equal(cmd.n_args, 1);
        const char *v;
        size_t vl;
        assert_true(imap_arg_astring(&cmd.args[0], &v, &vl));
        assert_int_equal(vl, len);
        assert_memory_equal(v, s, len);
        buf_free(&line);
    }
    imap_reader_free(&r);
    imap_parser_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_table),
        cmocka_unit_test(test_read_chunking),
        cmocka_unit_test(test_read_session),
        cmocka_unit_test(test_read_consumed),
        cmocka_unit_test(test_parse_owns_its_strings),
        cmocka_unit_test(test_read_skip_huge_literal),
        cmocka_unit_test(test_parse_table),
        cmocka_unit_test(test_parse_depth),
        cmocka_unit_test(test_parse_args_max),
        cmocka_unit_test(test_parse_helpers),
        cmocka_unit_test(test_seqset_table),
        cmocka_unit_test(test_seqset_max),
        cmocka_unit_test(test_seqset_random),
        cmocka_unit_test(test_mutf7_pairs),
        cmocka_unit_test(test_mutf7_invalid),
        cmocka_unit_test(test_utf8_invalid),
        cmocka_unit_test(test_mutf7_random),
        cmocka_unit_test(test_mutf7_buffer_max),
        cmocka_unit_test(test_write),
        cmocka_unit_test(test_write_parse_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
