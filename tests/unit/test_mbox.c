/*
 * test_mbox — the mbox reader: a table of files in every variant with
 * their tricky cases, each read with every read size from 1 octet up and
 * with short reads (the results must not change), the items checked to
 * cover the file without gaps; auto-detection; From_ line dates; limits;
 * read errors; the start offset; and memory that stays flat while a large
 * generated file streams through.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mbox/mbox.h"
#include "util/util.h"

/* ---- harness ------------------------------------------------------------ */

struct memsrc {
    const char *p;
    size_t n;
    size_t max_per_read; /* 0: as asked (else short reads) */
    uint64_t fail_at;    /* a read touching this offset fails (0: never) */
    unsigned reads;
};

static ssize_t mem_read_at(void *ctx, void *p, size_t n, uint64_t off)
{
    struct memsrc *m = ctx;
    m->reads++;
    if (m->fail_at != 0 && off + n > m->fail_at) {
        errno = EIO;
        return -1;
    }
    if (off >= m->n)
        return 0;
    size_t k = m->n - (size_t)off;
    if (k > n)
        k = n;
    if (m->max_per_read != 0 && k > m->max_per_read)
        k = m->max_per_read;
    memcpy(p, m->p + off, k);
    return (ssize_t)k;
}

struct got {
    enum mbox_kind kind;
    enum mbox_skip skip;
    uint64_t offset, raw_len;
    bool at_eof;
    char *data;
    size_t len;
    uint8_t sha[SHA256_LEN];
    char sender[MBOX_SENDER_MAX + 1];
    bool has_date;
    int64_t date;
    uint32_t flags;
    bool old;
    uint32_t uid;
    char *keywords;
    unsigned problems;
};

struct run {
    struct got *items;
    size_t n;
    int rc; /* the last mbox_next() result */
    enum mbox_format format;
};

static void run_free(struct run *r)
{
    for (size_t i = 0; i < r->n; i++) {
        free(r->items[i].data);
        free(r->items[i].keywords);
    }
    free(r->items);
    memset(r, 0, sizeof(*r));
}

static struct run run_mbox(struct memsrc *m, const struct mbox_options *o)
{
    struct run run = {0};
    struct mbox_source src = {.read_at = mem_read_at, .ctx = m};
    struct mbox_reader *r = NULL;
    const char *error = NULL;
    if (mbox_reader_new(&src, o, &r, &error) < 0) {
        run.rc = -2;
        return run;
    }
    run.format = mbox_reader_format(r);
    struct mbox_item it;
    while ((run.rc = mbox_next(r, &it, &error)) == 1) {
        run.items = xrealloc(run.items, (run.n + 1) * sizeof(*run.items));
        struct got *g = &run.items[run.n++];
        memset(g, 0, sizeof(*g));
        g->kind = it.kind;
        g->skip = it.skip;
        g->offset = it.offset;
        g->raw_len = it.raw_len;
        g->at_eof = it.at_eof;
        g->len = it.len;
        if (it.kind == MBOX_MESSAGE) {
            assert_non_null(it.data);
            g->data = xmalloc(it.len + 1);
            memcpy(g->data, it.data, it.len);
            memcpy(g->sha, it.sha256, SHA256_LEN);
        } else {
            assert_null(it.data);
        }
        memcpy(g->sender, it.sender, sizeof(g->sender));
        g->has_date = it.has_date;
        g->date = it.internal_date;
        g->flags = it.flags;
        g->old = it.old;
        g->uid = it.uid;
        assert_non_null(it.keywords);
        g->keywords = xstrdup(it.keywords);
        g->problems = it.problems;
        assert_true(run.n < 10000);
    }
    if (run.rc < 0)
        assert_non_null(error);
    mbox_reader_free(&r);
    assert_null(r);
    return run;
}

static void runs_equal(const char *name, size_t read_size, const struct run *a, const struct run *b)
{
    if (a->n != b->n || a->rc != b->rc || a->format != b->format)
        fail_msg("case '%s', read size %zu: %zu items rc %d, want %zu rc %d", name, read_size, b->n,
                 b->rc, a->n, a->rc);
    for (size_t i = 0; i < a->n; i++) {
        const struct got *x = &a->items[i], *y = &b->items[i];
        bool same = x->kind == y->kind && x->skip == y->skip && x->offset == y->offset &&
                    x->raw_len == y->raw_len && x->at_eof == y->at_eof && x->len == y->len &&
                    memcmp(x->sha, y->sha, SHA256_LEN) == 0 && strcmp(x->sender, y->sender) == 0 &&
                    x->has_date == y->has_date && x->date == y->date && x->flags == y->flags &&
                    x->old == y->old && strcmp(x->keywords, y->keywords) == 0 &&
                    x->problems == y->problems && (x->data == NULL) == (y->data == NULL) &&
                    (x->data == NULL || memcmp(x->data, y->data, x->len) == 0);
        if (!same)
            fail_msg("case '%s', read size %zu: item %zu differs", name, read_size, i);
    }
}

/* Items cover [start, file end) without gaps; hashes are of the octets. */
static void check_cover(const char *name, const struct run *r, uint64_t start, size_t file_len)
{
    uint64_t at = start;
    for (size_t i = 0; i < r->n; i++) {
        const struct got *g = &r->items[i];
        if (g->offset != at)
            fail_msg("case '%s': item %zu at %llu, want %llu", name, i,
                     (unsigned long long)g->offset, (unsigned long long)at);
        assert_true(g->raw_len > 0);
        at += g->raw_len;
        if (g->kind == MBOX_MESSAGE) {
            uint8_t h[SHA256_LEN];
            sha256_buf(g->data, g->len, h);
            assert_memory_equal(h, g->sha, SHA256_LEN);
            /* CRLF only: no bare CR, no bare LF. */
            for (size_t k = 0; k < g->len; k++) {
                if (g->data[k] == '\n' && (k == 0 || g->data[k - 1] != '\r'))
                    fail_msg("case '%s': item %zu has a bare LF at %zu", name, i, k);
                if (g->data[k] == '\r' && (k + 1 == g->len || g->data[k + 1] != '\n'))
                    fail_msg("case '%s': item %zu has a bare CR at %zu", name, i, k);
            }
        }
    }
    if (r->rc == 0 && at != file_len)
        fail_msg("case '%s': items end at %llu, file at %zu", name, (unsigned long long)at,
                 file_len);
}

/* ---- the table ----------------------------------------------------------- */

#define F1 "From alice@example.org Sat Jan  3 01:05:34 1996\n"
#define F2 "From bob@example.org Mon Jan  1 00:00:00 2001\n"
#define F3 "From - Thu Feb 29 23:59:59 2024\n"

struct exp_item {
    enum mbox_kind kind;
    enum mbox_skip skip;
    const char *data; /* MESSAGE: the octets */
    unsigned problems;
    int64_t offset; /* -1: not checked (contiguity still is) */
    uint32_t flags;
    const char *keywords; /* NULL: "" */
    const char *sender;   /* NULL: not checked */
    int64_t date;         /* 0: not checked; -1: no date */
};

struct mcase {
    const char *name;
    const char *in;
    size_t in_len; /* 0: strlen */
    enum mbox_format format;
    enum mbox_format want_format; /* AUTO: same as format */
    size_t line_max, msg_max;
    size_t n;
    struct exp_item items[6];
};

#define MSG(d, p)                                                                                  \
    {                                                                                              \
        MBOX_MESSAGE, MBOX_SKIP_NONE, d, p, -1, 0, NULL, NULL, 0                                   \
    }
#define SKIP(s, o)                                                                                 \
    {                                                                                              \
        MBOX_SKIPPED, s, NULL, 0, o, 0, NULL, NULL, 0                                              \
    }

static const struct mcase file_cases[] = {
    {"empty file", "", 0, MBOX_FORMAT_AUTO, MBOX_FORMAT_RD, 0, 0, 0, {{0}}},
    {"one message",
     F1 "Subject: hi\n\nbody\n",
     0,
     MBOX_FORMAT_RD,
     0,
     0,
     0,
     1,
     {{MBOX_MESSAGE, 0, "Subject: hi\r\n\r\nbody\r\n", 0, 0, 0, NULL, "alice@example.org",
       820631134}}},
    {"two messages, separator blank lines dropped",
     F1 "A: 1\n\nbody one\n\n" F2 "A: 2\n\nbody two\n\n",
     0,
     MBOX_FORMAT_RD,
     0,
     0,
     0,
     2,
     {MSG("A: 1\r\n\r\nbody one\r\n", 0),
      {MBOX_MESSAGE, 0, "A: 2\r\n\r\nbody two\r\n", 0, 64, 0, NULL, "bob@example.org", 978307200}}},
    {"CRLF file reads like LF",
     "From alice@example.org Sat Jan  3 01:05:34 1996\r\nA: 1\r\n\r\nbody one\r\n\r\n"
     "From bob@example.org Mon Jan  1 00:00:00 2001\r\nA: 2\r\n\r\nbody two\r\n",
     0,
     MBOX_FORMAT_RD,
     0,
     0,
     0,
     2,
     {MSG("A: 1\r\n\r\nbody one\r\n", 0), MSG("A: 2\r\n\r\nbody two\r\n", 0)}},
    {"body ending in empty lines keeps all but the separator",
     F1 "A: 1\n\nbody\n\n\n\n" F2 "A: 2\n\nx\n",
     0,
     MBOX_FORMAT_RD,
     0,
     0,
     0,
     2,
     {MSG("A: 1\r\n\r\nbody\r\n\r\n\r\n", 0), MSG("A: 2\r\n\r\nx\r\n", 0)}},
    {"From_ in a body without an empty line before it does not split",
     F1 "A: 1\n\nline\nFrom here on, it is a body line\n\n" F2 "A: 2\n\nx\n",
     0,
     MBOX_FORMAT_RD,
     0,
     0,
     0,
     2,
     {MSG("A: 1\r\n\r\nline\r\nFrom here on, it is a body line\r\n", 0),
      MSG("A: 2\r\n\r\nx\r\n", 0)}},
    {"loose rule: an unquoted From after an empty line splits (odd date too)",
     F1 "A: 1\n\nbody\n\nFrom the desk of nobody\nX: y\n",
     0,
     MBOX_FORMAT_RD,
     0,
     0,
     0,
     2,
     {MSG("A: 1\r\n\r\nbody\r\n", 0),
      {MBOX_MESSAGE, 0, "X: y\r\n", MBOX_P_NO_DATE, -1, 0, NULL, "the", -1}}},
    {"mboxrd unquoting",
     F1 "A: 1\n\n>From x\n>>From y\n>>>From z\n> From not\n>Fromage\n>From\nFrom\n",
     0,
     MBOX_FORMAT_RD,
     0,
     0,
     0,
     1,
     {MSG("A: 1\r\n\r\nFrom x\r\n>From y\r\n>>From z\r\n> From not\r\n>Fromage\r\n>From\r\n"
          "From\r\n",
          0)}},
    {"mboxo unquoting: only one level",
     F1 "A: 1\n\n>From x\n>>From y\n>>>From z\n",
     0,
     MBOX_FORMAT_O,
     0,
     0,
     0,
     1,
     {MSG("A: 1\r\n\r\nFrom x\r\n>>From y\r\n>>>From z\r\n", 0)}},
    {"quoted From in headers is unquoted too",
     F1 ">From x\nA: 1\n\nb\n",
     0,
     MBOX_FORMAT_RD,
     0,
     0,
     0,
     1,
     {MSG("From x\r\nA: 1\r\n\r\nb\r\n", 0)}},
    {"mboxcl2: Content-Length protects an unquoted From_ after an empty line",
     F1 "Content-Length: 33\n\nbody\n\nFrom evil Sat Jan  3\n>From\n\n" F2
        "Content-Length: 2\n\nx\n",
     0,
     MBOX_FORMAT_CL2,
     0,
     0,
     0,
     2,
     {MSG("Content-Length: 33\r\n\r\nbody\r\n\r\nFrom evil Sat Jan  3\r\n>From\r\n", 0),
      MSG("Content-Length: 2\r\n\r\nx\r\n", 0)}},
    {"auto-detects mboxcl2 (bare From in a body)",
     F1 "Content-Length: 33\n\nbody\n\nFrom evil Sat Jan  3\n>From\n\n" F2
        "Content-Length: 2\n\nx\n",
     0,
     MBOX_FORMAT_AUTO,
     MBOX_FORMAT_CL2,
     0,
     0,
     2,
     {MSG("Content-Length: 33\r\n\r\nbody\r\n\r\nFrom evil Sat Jan  3\r\n>From\r\n", 0),
      MSG("Content-Length: 2\r\n\r\nx\r\n", 0)}},
    {"mboxcl: Content-Length counts the quoted body, >From is unquoted",
     F1 "Content-Length: 14\n\n>From me\n\nend\n\n" F2 "Content-Length: 0\n\n",
     0,
     MBOX_FORMAT_CL,
     0,
     0,
     0,
     2,
     {MSG("Content-Length: 14\r\n\r\nFrom me\r\n\r\nend\r\n", 0),
      MSG("Content-Length: 0\r\n\r\n", 0)}},
    {"auto-detects mboxcl (>From, every Content-Length right)",
     F1 "Content-Length: 14\n\n>From me\n\nend\n\n" F2 "Content-Length: 0\n\n",
     0,
     MBOX_FORMAT_AUTO,
     MBOX_FORMAT_CL,
     0,
     0,
     2,
     {MSG("Content-Length: 14\r\n\r\nFrom me\r\n\r\nend\r\n", 0),
      MSG("Content-Length: 0\r\n\r\n", 0)}},
    {"mboxcl2: body ending in an empty line, CL exact, last without separator",
     F1 "Content-Length: 6\n\nbody\n\n\n" F2 "Content-Length: 4\n\nend\n",
     0,
     MBOX_FORMAT_CL2,
     0,
     0,
     0,
     2,
     {MSG("Content-Length: 6\r\n\r\nbody\r\n\r\n", 0), MSG("Content-Length: 4\r\n\r\nend\r\n", 0)}},
    {"mboxcl2: Content-Length missing: separator rule",
     F1 "A: 1\n\nbody\n\n" F2 "Content-Length: 4\n\nend\n",
     0,
     MBOX_FORMAT_CL2,
     0,
     0,
     0,
     2,
     {MSG("A: 1\r\n\r\nbody\r\n", 0), MSG("Content-Length: 4\r\n\r\nend\r\n", 0)}},
    {"Content-Length too large: back to the From_ line passed over",
     F1 "Content-Length: 40\n\nbody\n\n" F2 "A: 2\n\nsecond\n",
     0,
     MBOX_FORMAT_CL2,
     0,
     0,
     0,
     2,
     {{MBOX_MESSAGE, 0, "Content-Length: 40\r\n\r\nbody\r\n", MBOX_P_CL_WRONG, 0, 0, NULL, NULL, 0},
      {MBOX_MESSAGE, 0, "A: 2\r\n\r\nsecond\r\n", 0, 74, 0, NULL, "bob@example.org", 0}}},
    {"Content-Length too large, ends inside a later line",
     F1 "Content-Length: 30\n\nbody\n\n" F2 "A: 2\n\nsecond\n\n" F3 "A: 3\n\nthird\n",
     0,
     MBOX_FORMAT_CL2,
     0,
     0,
     0,
     3,
     {MSG("Content-Length: 30\r\n\r\nbody\r\n", MBOX_P_CL_WRONG), MSG("A: 2\r\n\r\nsecond\r\n", 0),
      MSG("A: 3\r\n\r\nthird\r\n", 0)}},
    {"Content-Length too small: on by the separator rule",
     F1 "Content-Length: 3\n\nbody line\nmore\n\n" F2 "A: 2\n\nx\n",
     0,
     MBOX_FORMAT_CL2,
     0,
     0,
     0,
     2,
     {MSG("Content-Length: 3\r\n\r\nbody line\r\nmore\r\n", MBOX_P_CL_WRONG),
      MSG("A: 2\r\n\r\nx\r\n", 0)}},
    {"Content-Length ends at a line end but trailing garbage follows",
     F1 "Content-Length: 5\n\nbody\ngarbage here\n\n" F2 "A: 2\n\nx\n",
     0,
     MBOX_FORMAT_CL2,
     0,
     0,
     0,
     2,
     {MSG("Content-Length: 5\r\n\r\nbody\r\ngarbage here\r\n", MBOX_P_CL_WRONG),
      MSG("A: 2\r\n\r\nx\r\n", 0)}},
    {"Content-Length past the end of the file: truncated",
     F1 "Content-Length: 500\n\nbody\n",
     0,
     MBOX_FORMAT_CL2,
     0,
     0,
     0,
     1,
     {MSG("Content-Length: 500\r\n\r\nbody\r\n", MBOX_P_CL_WRONG | MBOX_P_TRUNCATED)}},
    {"Content-Length malformed or repeated",
     F1 "Content-Length: 12a\n\nbody\n\n" F2 "Content-Length: 2\nContent-Length: 2\n\nx\n",
     0,
     MBOX_FORMAT_CL2,
     0,
     0,
     0,
     2,
     {MSG("Content-Length: 12a\r\n\r\nbody\r\n", MBOX_P_CL_WRONG),
      MSG("Content-Length: 2\r\nContent-Length: 2\r\n\r\nx\r\n", MBOX_P_CL_WRONG)}},
    {"mboxrd ignores Content-Length",
     F1 "Content-Length: 3\n\nbody\n\nFrom x Sat Jan  3 01:05:34 1996\n\nb\n",
     0,
     MBOX_FORMAT_RD,
     0,
     0,
     0,
     2,
     {MSG("Content-Length: 3\r\n\r\nbody\r\n", 0), MSG("\r\nb\r\n", 0)}},
    {"Content-Length with CRLF counts file octets",
     "From a Sat Jan  3 01:05:34 1996\r\nContent-Length: 11\r\n\r\nline\r\n\r\nx\r\n\r\n"
     "From b Sat Jan  3 01:05:34 1996\r\nContent-Length: 4\r\n\r\nab\r\n",
     0,
     MBOX_FORMAT_AUTO,
     MBOX_FORMAT_CL2,
     0,
     0,
     2,
     {MSG("Content-Length: 11\r\n\r\nline\r\n\r\nx\r\n", 0),
      MSG("Content-Length: 4\r\n\r\nab\r\n", 0)}},
    {"message without a trailing newline",
     F1 "A: 1\n\nno newline",
     0,
     MBOX_FORMAT_RD,
     0,
     0,
     0,
     1,
     {MSG("A: 1\r\n\r\nno newline", MBOX_P_NO_NEWLINE)}},
    {"garbage before the first From_ line",
     "\x01\x02garbage\n\nmore\nFrom x Sat Jan  3 01:05:34 1996\nA: 1\n\nb\n",
     0,
     MBOX_FORMAT_RD,
     0,
     0,
     0,
     2,
     {SKIP(MBOX_SKIP_GARBAGE, 0), MSG("A: 1\r\n\r\nb\r\n", 0)}},
    {"not an mbox at all",
     "Subject: hello\n\nthis is a message, not an mbox\n",
     0,
     MBOX_FORMAT_AUTO,
     MBOX_FORMAT_RD,
     0,
     0,
     1,
     {SKIP(MBOX_SKIP_GARBAGE, 0)}},
    {"binary, no newline at all",
     "\x7f"
     "ELF\x02\x01\x01\x00\x00\x00\x00",
     12,
     MBOX_FORMAT_AUTO,
     MBOX_FORMAT_RD,
     0,
     0,
     1,
     {SKIP(MBOX_SKIP_GARBAGE, 0)}},
    {"NUL octets in a body",
     F1 "A: 1\n\nnul\0here\n",
     sizeof(F1 "A: 1\n\nnul\0here\n") - 1,
     MBOX_FORMAT_RD,
     0,
     0,
     0,
     1,
     {MSG("A: 1\r\n\r\nnul\0here\r\n", MBOX_P_NUL)}},
    {"NUL padding at the end of the file",
     F1 "A: 1\n\nbody\n\0\0\0\0\0\0\0\0",
     sizeof(F1 "A: 1\n\nbody\n") - 1 + 8,
     MBOX_FORMAT_RD,
     0,
     0,
     0,
     2,
     {MSG("A: 1\r\n\r\nbody\r\n", 0), SKIP(MBOX_SKIP_NUL_PADDING, 59)}},
    {"NUL padding after the separator line",
     F1 "A: 1\n\nbody\n\n\0\0\0\0",
     sizeof(F1 "A: 1\n\nbody\n\n") - 1 + 4,
     MBOX_FORMAT_CL2,
     0,
     0,
     0,
     2,
     {MSG("A: 1\r\n\r\nbody\r\n", 0), SKIP(MBOX_SKIP_NUL_PADDING, 60)}},
    {"empty message",
     F1 "\n" F2 "A: 2\n\nx\n",
     0,
     MBOX_FORMAT_RD,
     0,
     0,
     0,
     2,
     {SKIP(MBOX_SKIP_EMPTY, 0), MSG("A: 2\r\n\r\nx\r\n", 0)}},
    {"From_ line alone at the end",
     F1 "A: 1\n\nx\n\n" F2,
     0,
     MBOX_FORMAT_RD,
     0,
     0,
     0,
     2,
     {MSG("A: 1\r\n\r\nx\r\n", 0), SKIP(MBOX_SKIP_EMPTY, 57)}},
    {"message over the size limit is skipped with its offset",
     F1 "A: 1\n\nshort\n\n" F2 "A: 2\n\n0123456789012345678901234567890123456789\n\n" F3
        "A: 3\n\nshort\n",
     0,
     MBOX_FORMAT_RD,
     0,
     0,
     40,
     3,
     {MSG("A: 1\r\n\r\nshort\r\n", 0), SKIP(MBOX_SKIP_TOO_BIG, 61),
      MSG("A: 3\r\n\r\nshort\r\n", 0)}},
    {"message exactly at the size limit",
     F1 "A: 1\n\n0123456789\n",
     0,
     MBOX_FORMAT_RD,
     0,
     0,
     20,
     1,
     {MSG("A: 1\r\n\r\n0123456789\r\n", 0)}},
    {"line over the length limit",
     "From a Sat Jan  3 01:05:34 1996\nA: "
     "1\n\n01234567890123456789012345678901234567890123456789\n\n"
     "From b Sat Jan  3 01:05:34 1996\nA: 2\n\nshort\n",
     0,
     MBOX_FORMAT_RD,
     0,
     40,
     0,
     2,
     {SKIP(MBOX_SKIP_LINE_TOO_LONG, 0), MSG("A: 2\r\n\r\nshort\r\n", 0)}},
    {"line exactly at the length limit",
     "From a Sat Jan  3 01:05:34 1996\nA: 1\n\n0123456789012345678901234567890123456789\n",
     0,
     MBOX_FORMAT_RD,
     0,
     40,
     0,
     1,
     {MSG("A: 1\r\n\r\n0123456789012345678901234567890123456789\r\n", 0)}},
    {"going back undoes an overflow: the first message fits, the second does not",
     "From a Sat Jan  3 01:05:34 1996\nContent-Length: 200\n\nbody\n\n"
     "From b Sat Jan  3 01:05:34 1996\nA: 2\n\n0123456789012345678901234567890123456789\n",
     0,
     MBOX_FORMAT_CL2,
     0,
     0,
     40,
     2,
     {MSG("Content-Length: 200\r\n\r\nbody\r\n", MBOX_P_CL_WRONG), SKIP(MBOX_SKIP_TOO_BIG, 59)}},
    {"going back undoes a long line",
     "From a Sat Jan  3 01:05:34 1996\nContent-Length: 200\n\nbody\n\n"
     "From b Sat Jan  3 01:05:34 1996\nA: "
     "2\n\n01234567890123456789012345678901234567890123456789\n",
     0,
     MBOX_FORMAT_CL2,
     0,
     40,
     0,
     2,
     {MSG("Content-Length: 200\r\n\r\nbody\r\n", MBOX_P_CL_WRONG),
      SKIP(MBOX_SKIP_LINE_TOO_LONG, 59)}},
    {"Content-Length 0 followed by garbage",
     "From a Sat Jan  3 01:05:34 1996\nContent-Length: 0\n\nnot empty\n",
     0,
     MBOX_FORMAT_CL2,
     0,
     0,
     0,
     1,
     {MSG("Content-Length: 0\r\n\r\nnot empty\r\n", MBOX_P_CL_WRONG)}},
    {"Content-Length ok, From_ right after the body without an empty line",
     "From a Sat Jan  3 01:05:34 1996\nContent-Length: 3\n\nab\n"
     "From b Sat Jan  3 01:05:34 1996\nContent-Length: 3\n\ncd\n",
     0,
     MBOX_FORMAT_CL2,
     0,
     0,
     0,
     2,
     {MSG("Content-Length: 3\r\n\r\nab\r\n", 0), MSG("Content-Length: 3\r\n\r\ncd\r\n", 0)}},
    {"flags and keywords",
     F1 "Status: RO\nX-Status: AFDT\nX-Keywords: $Label1, Junk junk,bad(kw\n"
        "\t NonJunk\nSubject: s\n\nb\n",
     0,
     MBOX_FORMAT_RD,
     0,
     0,
     0,
     1,
     {{MBOX_MESSAGE, 0,
       "Status: RO\r\nX-Status: AFDT\r\nX-Keywords: $Label1, Junk junk,bad(kw\r\n"
       "\t NonJunk\r\nSubject: s\r\n\r\nb\r\n",
       MBOX_P_BAD_KEYWORD, 0,
       MAIL_F_SEEN | MAIL_F_ANSWERED | MAIL_F_FLAGGED | MAIL_F_DELETED | MAIL_F_DRAFT,
       "$Label1 Junk NonJunk", NULL, 0}}},
    {"Status in the body is not a flag",
     F1 "Subject: s\n\nStatus: R\nX-Status: F\n",
     0,
     MBOX_FORMAT_RD,
     0,
     0,
     0,
     1,
     {{MBOX_MESSAGE, 0, "Subject: s\r\n\r\nStatus: R\r\nX-Status: F\r\n", 0, 0, 0, NULL, NULL, 0}}},
    {"UW-IMAP pseudo message first",
     "From MAILER-DAEMON Sat Jan  3 01:05:34 1996\nSubject: DON'T DELETE THIS MESSAGE -- "
     "FOLDER INTERNAL DATA\nX-IMAP: 1234 0000000001\n\nThis text is part of the internal "
     "format of your mail folder.\n\n" F2 "A: 2\n\nx\n",
     0,
     MBOX_FORMAT_RD,
     0,
     0,
     0,
     2,
     {SKIP(MBOX_SKIP_PSEUDO, 0), MSG("A: 2\r\n\r\nx\r\n", 0)}},
    {"X-IMAP in a later message is a message",
     F2 "A: 2\n\nx\n\n" F1 "X-IMAP: 1 2\n\nb\n",
     0,
     MBOX_FORMAT_RD,
     0,
     0,
     0,
     2,
     {MSG("A: 2\r\n\r\nx\r\n", 0), MSG("X-IMAP: 1 2\r\n\r\nb\r\n", 0)}},
    {"byte order mark at the start",
     "\xef\xbb\xbf" F1 "A: 1\n\nb\n",
     0,
     MBOX_FORMAT_RD,
     0,
     0,
     0,
     1,
     {{MBOX_MESSAGE, 0, "A: 1\r\n\r\nb\r\n", 0, 3, 0, NULL, "alice@example.org", 820631134}}},
    {"bare CR and CR CR LF",
     F1 "A: 1\n\none\rtwo\nthree\r\r\n",
     0,
     MBOX_FORMAT_RD,
     0,
     0,
     0,
     1,
     {MSG("A: 1\r\n\r\none\r\ntwo\r\nthree\r\n", MBOX_P_BARE_CR)}},
    {"From_ line without a date",
     "From someone\nA: 1\n\nb\n",
     0,
     MBOX_FORMAT_RD,
     0,
     0,
     0,
     1,
     {{MBOX_MESSAGE, 0, "A: 1\r\n\r\nb\r\n", MBOX_P_NO_DATE, 0, 0, NULL, "someone", -1}}},
    {"header only, no body, at the end",
     F1 "A: 1\nB: 2",
     0,
     MBOX_FORMAT_RD,
     0,
     0,
     0,
     1,
     {MSG("A: 1\r\nB: 2", MBOX_P_NO_NEWLINE)}},
};

static void check_case(const struct mcase *c)
{
    size_t len = c->in_len != 0 ? c->in_len : strlen(c->in);
    struct mbox_options o = {.format = c->format, .line_max = c->line_max, .msg_max = c->msg_max};
    struct memsrc m = {.p = c->in, .n = len};
    struct run ref = run_mbox(&m, &o);
    assert_int_equal(ref.rc, 0);
    enum mbox_format want = c->want_format != MBOX_FORMAT_AUTO ? c->want_format : c->format;
    if (ref.format != want)
        fail_msg("case '%s': format %s, want %s", c->name, mbox_format_name(ref.format),
                 mbox_format_name(want));
    if (ref.n != c->n)
        fail_msg("case '%s': %zu items, want %zu", c->name, ref.n, c->n);
    check_cover(c->name, &ref, len >= 3 && memcmp(c->in, "\xef\xbb\xbf", 3) == 0 ? 3 : 0, len);
    for (size_t i = 0; i < c->n; i++) {
        const struct exp_item *e = &c->items[i];
        const struct got *g = &ref.items[i];
        if (g->kind != e->kind || g->skip != e->skip)
            fail_msg("case '%s' item %zu: kind %d skip %s, want %d %s", c->name, i, g->kind,
                     mbox_skip_str(g->skip), e->kind, mbox_skip_str(e->skip));
        if (e->offset >= 0 && g->offset != (uint64_t)e->offset)
            fail_msg("case '%s' item %zu: offset %llu, want %lld", c->name, i,
                     (unsigned long long)g->offset, (long long)e->offset);
        if (e->kind == MBOX_MESSAGE) {
            /* The expected octets may hold a NUL: compare by length of
             * the table string including what follows a NUL. */
            size_t elen = strlen(e->data);
            if (e->problems & MBOX_P_NUL)
                elen += 1 + strlen(e->data + elen + 1);
            if (g->len != elen || memcmp(g->data, e->data, elen) != 0)
                fail_msg("case '%s' item %zu: got '%.*s' want '%s'", c->name, i, (int)g->len,
                         g->data, e->data);
            uint8_t h[SHA256_LEN];
            sha256_buf(e->data, elen, h);
            assert_memory_equal(h, g->sha, SHA256_LEN);
        }
        if (g->problems != e->problems) {
            struct buf b;
            buf_init(&b, 0);
            mbox_problems_str(g->problems, &b);
            fail_msg("case '%s' item %zu: problems '%s' (0x%x), want 0x%x", c->name, i,
                     b.data ? b.data : "", g->problems, e->problems);
        }
        if (g->flags != e->flags)
            fail_msg("case '%s' item %zu: flags 0x%x want 0x%x", c->name, i, g->flags, e->flags);
        if (strcmp(g->keywords, e->keywords ? e->keywords : "") != 0)
            fail_msg("case '%s' item %zu: keywords '%s'", c->name, i, g->keywords);
        if (e->sender != NULL)
            assert_string_equal(g->sender, e->sender);
        if (e->date == -1)
            assert_false(g->has_date);
        else if (e->date != 0) {
            assert_true(g->has_date);
            assert_int_equal(g->date, e->date);
        }
    }
    /* The same items whatever the read size, and with short reads. */
    size_t sizes[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 16, 17, 31, 32, 33, 64, 100, 4096};
    for (size_t s = 0; s < ARRAY_SIZE(sizes) + len + 2; s++) {
        size_t rs = s < ARRAY_SIZE(sizes) ? sizes[s] : s - ARRAY_SIZE(sizes) + 1;
        struct mbox_options o2 = o;
        o2.read_size = rs;
        struct memsrc m2 = {.p = c->in, .n = len};
        struct run r2 = run_mbox(&m2, &o2);
        runs_equal(c->name, rs, &ref, &r2);
        run_free(&r2);
        /* Short reads: the source gives fewer octets than asked. */
        struct memsrc m3 = {.p = c->in, .n = len, .max_per_read = rs};
        struct run r3 = run_mbox(&m3, &o);
        runs_equal(c->name, rs, &ref, &r3);
        run_free(&r3);
    }
    run_free(&ref);
}

static void test_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_SIZE(file_cases); i++)
        check_case(&file_cases[i]);
}

/* ---- From_ line dates ------------------------------------------------------ */

static void test_from_line(void **state)
{
    (void)state;
    static const struct {
        const char *in, *sender;
        int64_t date; /* -1: none */
    } cases[] = {
        {"alice@example.org Sat Jan  3 01:05:34 1996", "alice@example.org", 820631134},
        {"alice@example.org  Sat Jan 3 01:05:34 1996", "alice@example.org", 820631134},
        {"MAILER-DAEMON Mon Jan  1 00:00:00 2001 +0100", "MAILER-DAEMON", 978303600},
        {"x Mon Jan  1 00:00:00 +0100 2001", "x", 978303600},
        {"x Fri Dec 31 23:59:00 EST 1999 -0500", "x", 946702740},
        {"x Fri Dec 31 23:59 1999 -0500", "x", 946702740},
        {"x Thu Feb 29 23:59:59 2024", "x", 1709251199},
        {"x Feb 29 23:59:59 2024", "x", 1709251199},
        {"x Thu, 29 Feb 2024 23:59:59 +0000", "x", 1709251199},
        {"x Sat Jan  3 01:05:34 96", "x", 820631134},
        {"x Sat Jan  3 01:05:34 CET DST 1996 remote from uucphost", "x", 820631134},
        {"x Thu Jan  1 00:00:00 1970", "x", 0},
        {"x Wed Dec 31 00:00:00 69", "x", 3155673600},
        {"Sat Jan  3 01:05:34 1996", "", 820631134},
        {"- Sat Jan  3 01:05:34 1996", "-", 820631134},
        {"x Thu Feb 30 00:00:00 2024", "x", -1},
        {"x Thu Feb 29 00:00:00 2023", "x", -1},
        {"x Sat Jan  3 24:05:34 1996", "x", -1},
        {"x Sat Jan  3 01:60:34 1996", "x", -1},
        {"x Sat Jan  3 01:05:34", "x", -1},
        {"x Sat Jan 1996", "x", -1},
        {"x Sat Foo  3 01:05:34 1996", "x", -1},
        {"x Sat Jan  3 01:05:34 1996 +9999", "x", 820631134}, /* trailing text */
        {"x Sat Jan  3 1:5:34 1996", "x", -1},
        {"x", "x", -1},
        {"", "", -1},
        {"   ", "", -1},
        {"the desk of nobody", "the", -1},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char sender[MBOX_SENDER_MAX + 1];
        int64_t date = 12345;
        bool ok = mbox_parse_from_line(cases[i].in, strlen(cases[i].in), sender, &date);
        if (ok != (cases[i].date != -1) || (ok && date != cases[i].date))
            fail_msg("'%s': ok %d date %lld, want %lld", cases[i].in, ok, (long long)date,
                     (long long)cases[i].date);
        if (strcmp(sender, cases[i].sender) != 0)
            fail_msg("'%s': sender '%s'", cases[i].in, sender);
    }
    /* A long sender is cut; control characters are made printable. */
    char longer[600];
    memset(longer, 'a', 400);
    memcpy(longer + 400, "\x01 Sat Jan  3 01:05:34 1996", 27);
    char sender[MBOX_SENDER_MAX + 1];
    int64_t date;
    assert_true(mbox_parse_from_line(longer, 400 + 26, sender, &date));
    assert_int_equal(strlen(sender), MBOX_SENDER_MAX);
    assert_true(mbox_parse_from_line("a\x01z Sat Jan  3 01:05:34 1996", 28, sender, &date));
    assert_string_equal(sender, "a?z");
}

/* ---- names, flags ------------------------------------------------------------- */

static void test_names(void **state)
{
    (void)state;
    enum mbox_format f;
    for (int i = MBOX_FORMAT_AUTO; i <= MBOX_FORMAT_CL2; i++) {
        assert_int_equal(mbox_format_parse(mbox_format_name((enum mbox_format)i), &f), 0);
        assert_int_equal(f, i);
    }
    assert_int_equal(mbox_format_parse("CL2", &f), 0);
    assert_int_equal(f, MBOX_FORMAT_CL2);
    assert_int_equal(mbox_format_parse("mboxcl3", &f), -1);
    assert_int_equal(mbox_format_parse("", &f), -1);
    for (int i = MBOX_SKIP_NONE; i <= MBOX_SKIP_PSEUDO; i++)
        assert_true(strlen(mbox_skip_str((enum mbox_skip)i)) > 3);
    struct buf b;
    buf_init(&b, 0);
    mbox_problems_str(MBOX_P_NUL | MBOX_P_TRUNCATED, &b);
    assert_string_equal(b.data, "NUL octets, Content-Length past the end of the file");
    buf_free(&b);
}

static struct run run_text(const char *text, enum mbox_format f)
{
    struct memsrc m = {.p = text, .n = strlen(text)};
    struct mbox_options o = {.format = f};
    return run_mbox(&m, &o);
}

static void test_status_old(void **state)
{
    (void)state;
    struct run r = run_text(F1 "Status: O\n\nb\n\n" F2 "Status: R\n\nb\n\n" F3
                               "status: ro\nx-status: a\n\nb\n",
                            MBOX_FORMAT_RD);
    assert_int_equal(r.n, 3);
    assert_true(r.items[0].old);
    assert_int_equal(r.items[0].flags, 0);
    assert_false(r.items[1].old);
    assert_int_equal(r.items[1].flags, MAIL_F_SEEN);
    /* Header names are case-insensitive, flag letters are not. */
    assert_false(r.items[2].old);
    assert_int_equal(r.items[2].flags, 0);
    run_free(&r);
}

/* ---- detection ------------------------------------------------------------------ */

static void test_detect(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        enum mbox_format want;
    } cases[] = {
        {"", MBOX_FORMAT_RD},
        {"garbage only\n", MBOX_FORMAT_RD},
        {F1 "A: 1\n\nb\n", MBOX_FORMAT_RD},
        {F1 "A: 1\n\n>From x\n", MBOX_FORMAT_RD},
        {F1 "A: 1\n\n>>From x\n", MBOX_FORMAT_RD},
        /* One message without Content-Length: not the CL family. */
        {F1 "Content-Length: 2\n\nb\n\n" F2 "A: 1\n\nb\n", MBOX_FORMAT_RD},
        /* One Content-Length that does not check out. */
        {F1 "Content-Length: 2\n\nb\n\n" F2 "Content-Length: 9\n\nb\n", MBOX_FORMAT_RD},
        {F1 "Content-Length: 2\n\nb\n\n" F2 "Content-Length: 2\n\nb\n", MBOX_FORMAT_CL2},
        {F1 "Content-Length: 8\n\n>From x\n", MBOX_FORMAT_CL},
        {F1 "Content-Length: 15\n\n>From x\nFrom y\n", MBOX_FORMAT_CL2},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        struct run r = run_text(cases[i].in, MBOX_FORMAT_AUTO);
        if (r.format != cases[i].want)
            fail_msg("case %zu: %s, want %s", i, mbox_format_name(r.format),
                     mbox_format_name(cases[i].want));
        run_free(&r);
    }
}

/* Appends n messages "From ... / Content-Length (if cl) / body" to b. */
static void gen_messages(struct buf *b, size_t n, bool cl, const char *body)
{
    for (size_t i = 0; i < n; i++) {
        buf_printf(b, "From gen%zu@example.org Sat Jan  3 01:05:34 1996\n", i);
        if (cl)
            buf_printf(b, "Content-Length: %zu\n", strlen(body));
        buf_printf(b, "Subject: %zu\n\n%s\n", i, body);
    }
}

static void test_detect_sample_end(void **state)
{
    (void)state;
    /* Over 1 MiB of messages with a right Content-Length, then one without:
     * the sample only sees the first ones, so the file is mboxcl2; a
     * message cut by the sample's end does not count against it. */
    struct buf b;
    buf_init(&b, 0);
    while (b.len < MBOX_DETECT_BYTES + 5000)
        gen_messages(&b, 1, true, "0123456789 body line\nsecond line\n");
    gen_messages(&b, 1, false, "no Content-Length here\n");
    struct memsrc m = {.p = b.data, .n = b.len};
    struct mbox_options o = {.format = MBOX_FORMAT_AUTO};
    struct run r = run_mbox(&m, &o);
    assert_int_equal(r.format, MBOX_FORMAT_CL2);
    check_cover("sample end", &r, 0, b.len);
    run_free(&r);

    /* A message cut at the sample's end whose Content-Length reaches past
     * it: still mboxcl2 (the cut one proves nothing). */
    buf_reset(&b);
    gen_messages(&b, 1, true, "short\n");
    char *big = xmalloc(MBOX_DETECT_BYTES + 1);
    memset(big, 'x', MBOX_DETECT_BYTES);
    for (size_t k = 100; k < MBOX_DETECT_BYTES; k += 100)
        big[k] = '\n';
    gen_messages(&b, 1, true, big);
    m = (struct memsrc){.p = b.data, .n = b.len};
    r = run_mbox(&m, &o);
    assert_int_equal(r.format, MBOX_FORMAT_CL2);
    assert_int_equal(r.n, 2);
    run_free(&r);

    /* The same, but a From_ line hides inside the sample after a message
     * without a Content-Length: mboxrd. */
    buf_reset(&b);
    gen_messages(&b, 1, false, "short\n");
    gen_messages(&b, 1, true, big);
    m = (struct memsrc){.p = b.data, .n = b.len};
    r = run_mbox(&m, &o);
    assert_int_equal(r.format, MBOX_FORMAT_RD);
    run_free(&r);
    xfree(&big);
    buf_free(&b);
}

/* ---- start offset, re-reads, growth ------------------------------------------------ */

static void test_start_and_growth(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 0);
    gen_messages(&b, 5, false, ">From quoted\nbody\n");
    b.len--; /* the last message without the separator blank line */
    b.data[b.len] = '\0';
    struct memsrc m = {.p = b.data, .n = b.len};
    struct mbox_options o = {.format = MBOX_FORMAT_AUTO};
    struct run first = run_mbox(&m, &o);
    assert_int_equal(first.n, 5);
    assert_true(first.items[4].at_eof);
    assert_false(first.items[3].at_eof);
    check_cover("growth", &first, 0, b.len);

    /* The same file read again: the same identities. */
    struct memsrc m1 = {.p = b.data, .n = b.len};
    struct run again = run_mbox(&m1, &o);
    runs_equal("again", 0, &first, &again);
    run_free(&again);

    /* The file grows as a writer appends (with its separator blank line):
     * every message read before keeps its offset and hash. */
    size_t old_len = b.len;
    buf_puts(&b, "\n");
    gen_messages(&b, 3, false, "new\n");
    struct memsrc m2 = {.p = b.data, .n = b.len};
    struct run grown = run_mbox(&m2, &o);
    assert_int_equal(grown.n, 8);
    for (size_t i = 0; i < 5; i++) {
        assert_int_equal(grown.items[i].offset, first.items[i].offset);
        assert_memory_equal(grown.items[i].sha, first.items[i].sha, SHA256_LEN);
    }
    assert_false(grown.items[4].at_eof);

    /* Starting at the offset of the fourth message reads the rest only,
     * with the same identities. */
    struct mbox_options o2 = {.format = MBOX_FORMAT_RD, .start = first.items[3].offset};
    struct memsrc m3 = {.p = b.data, .n = b.len};
    struct run tail = run_mbox(&m3, &o2);
    assert_int_equal(tail.n, 5);
    check_cover("tail", &tail, first.items[3].offset, b.len);
    for (size_t i = 0; i < 5; i++) {
        assert_int_equal(tail.items[i].offset, grown.items[i + 3].offset);
        assert_memory_equal(tail.items[i].sha, grown.items[i + 3].sha, SHA256_LEN);
    }
    /* A start offset that is not a From_ line: reported, not guessed. */
    struct mbox_options o3 = {.format = MBOX_FORMAT_RD, .start = first.items[3].offset + 1};
    struct memsrc m4 = {.p = b.data, .n = b.len};
    struct run off = run_mbox(&m4, &o3);
    assert_int_equal(off.items[0].kind, MBOX_SKIPPED);
    assert_int_equal(off.items[0].skip, MBOX_SKIP_GARBAGE);
    assert_int_equal(off.n, 5);
    (void)old_len;
    run_free(&off);
    run_free(&tail);
    run_free(&grown);
    run_free(&first);
    buf_free(&b);
}

/* ---- errors -------------------------------------------------------------------- */

static void test_read_error(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 0);
    gen_messages(&b, 50, false, "body\n");
    /* Fails inside the detection sample: mbox_reader_new reports it. */
    struct memsrc m = {.p = b.data, .n = b.len, .fail_at = 1000};
    struct mbox_options o = {.format = MBOX_FORMAT_AUTO, .read_size = 256};
    struct run r = run_mbox(&m, &o);
    assert_int_equal(r.rc, -2);
    run_free(&r);
    /* Fails later: the messages before come, then -1, then nothing. */
    struct mbox_source src = {.read_at = mem_read_at, .ctx = &m};
    o.format = MBOX_FORMAT_RD;
    struct mbox_reader *rd;
    const char *error = NULL;
    assert_int_equal(mbox_reader_new(&src, &o, &rd, &error), 0);
    struct mbox_item it;
    int rc, n = 0;
    while ((rc = mbox_next(rd, &it, &error)) == 1)
        n++;
    assert_int_equal(rc, -1);
    assert_int_equal(errno, EIO);
    assert_string_equal(error, "read error");
    assert_true(n > 5 && n < 50);
    assert_int_equal(mbox_next(rd, &it, &error), 0);
    mbox_reader_free(&rd);
    buf_free(&b);
}

static void test_open(void **state)
{
    (void)state;
    char dir[] = "/tmp/test_mbox.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *path = xasprintf("%s/mbox", dir);
    struct buf b;
    buf_init(&b, 0);
    gen_messages(&b, 100, false, ">>From x\nbody\n");
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write_full(fd, b.data, b.len), 0);
    close(fd);

    struct mbox_reader *r;
    const char *error;
    struct mbox_item it;
    uint8_t first_hash[2][SHA256_LEN];
    for (int pass = 0; pass < 2; pass++) {
        assert_int_equal(mbox_reader_open(path, NULL, &r, &error), 0);
        assert_int_equal(mbox_reader_format(r), MBOX_FORMAT_RD);
        int n = 0, rc;
        while ((rc = mbox_next(r, &it, &error)) == 1) {
            assert_int_equal(it.kind, MBOX_MESSAGE);
            if (n == 0)
                memcpy(first_hash[pass], it.sha256, SHA256_LEN);
            assert_non_null(memmem(it.data, it.len, "\r\n\r\n>From x\r\n", 13));
            n++;
        }
        assert_int_equal(rc, 0);
        assert_int_equal(n, 100);
        mbox_reader_free(&r);
    }
    assert_memory_equal(first_hash[0], first_hash[1], SHA256_LEN);

    assert_int_equal(mbox_reader_open(dir, NULL, &r, &error), -1);
    assert_string_equal(error, "not a regular file");
    char *missing = xasprintf("%s/missing", dir);
    assert_int_equal(mbox_reader_open(missing, NULL, &r, &error), -1);
    assert_int_equal(errno, ENOENT);
    assert_string_equal(error, "cannot open the mbox file");
    unlink(path);
    rmdir(dir);
    xfree(&missing);
    xfree(&path);
    buf_free(&b);
}

/* ---- memory is flat in the file's size ------------------------------------------ */

/* A virtual file: the same 4 KiB message over and over. */
struct gensrc {
    const char *msg;
    size_t msg_len;
    uint64_t size;
};

static ssize_t gen_read_at(void *ctx, void *p, size_t n, uint64_t off)
{
    struct gensrc *g = ctx;
    if (off >= g->size)
        return 0;
    if (n > g->size - off)
        n = (size_t)(g->size - off);
    size_t done = 0;
    while (done < n) {
        size_t at = (size_t)((off + done) % g->msg_len);
        size_t k = g->msg_len - at;
        if (k > n - done)
            k = n - done;
        memcpy((char *)p + done, g->msg + at, k);
        done += k;
    }
    return (ssize_t)n;
}

/* Resident set size now, in KiB (the high-water mark would carry what
 * earlier tests used). */
static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, resident = 0;
    assert_non_null(f);
    assert_int_equal(fscanf(f, "%ld %ld", &size, &resident), 2);
    fclose(f);
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

#if defined(__SANITIZE_ADDRESS__)
#define TERN_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TERN_ASAN 1
#endif
#endif

static void test_memory_flat(void **state)
{
    (void)state;
    struct buf m;
    buf_init(&m, 0);
    buf_puts(&m, "From gen@example.org Sat Jan  3 01:05:34 1996\nSubject: generated\n\n");
    while (m.len < 4096 - 80)
        buf_puts(&m, "A body line of a generated message, with From here in it.\n");
    buf_puts(&m, "From the middle of a line\n>From a quoted one\n\n");
#ifdef TERN_ASAN
    uint64_t size = 32ull * 1024 * 1024;
#else
    uint64_t size = 256ull * 1024 * 1024;
#endif
    struct gensrc g = {.msg = m.data, .msg_len = m.len, .size = size / m.len * m.len};
    struct mbox_source src = {.read_at = gen_read_at, .ctx = &g};
    struct mbox_options o = {.format = MBOX_FORMAT_AUTO};
    struct mbox_reader *r;
    const char *error;
    long rss0 = rss_kb(), grew = 0;
    int64_t t0 = time_mono_ms();
    assert_int_equal(mbox_reader_new(&src, &o, &r, &error), 0);
    struct mbox_item it;
    uint64_t n = 0, bytes = 0;
    uint8_t h0[SHA256_LEN];
    int rc;
    while ((rc = mbox_next(r, &it, &error)) == 1) {
        assert_int_equal(it.kind, MBOX_MESSAGE);
        if (n == 0)
            memcpy(h0, it.sha256, SHA256_LEN);
        else if (memcmp(h0, it.sha256, SHA256_LEN) != 0)
            fail_msg("message %llu differs", (unsigned long long)n);
        n++;
        bytes += it.raw_len;
        if (n % 4096 == 0 && rss_kb() - rss0 > grew)
            grew = rss_kb() - rss0;
    }
    assert_int_equal(rc, 0);
    int64_t ms = time_mono_ms() - t0;
    mbox_reader_free(&r);
    assert_int_equal(n, g.size / m.len);
    assert_int_equal(bytes, g.size);
    printf("mbox: %llu messages, %llu MiB in %lld ms (%.0f MiB/s), RSS grew at most %ld KiB\n",
           (unsigned long long)n, (unsigned long long)(g.size >> 20), (long long)ms,
           ms > 0 ? (double)g.size / 1048576.0 / ((double)ms / 1000.0) : 0.0, grew);
#ifndef TERN_ASAN
    /* One message, one chunk, one line: far under 4 MiB whatever the size. */
    assert_true(grew < 4096);
#endif
    buf_free(&m);
}

/* ---- UIDs: X-IMAPbase, X-IMAP, X-UID --------------------------------------------- */

static void test_uids(void **state)
{
    (void)state;
    struct run r = run_text(F1 "X-IMAPbase: 1234 10 $Label1\nX-UID: 3\n\nb\n\n" F2
                               "x-uid:  5 \n\nb\n\n" F3 "X-UID: 7\nX-UID: 8\n\nb\n\n" F1
                               "X-UID: 12x\n\nb\n\n" F2 "X-UID: 0\n\nb\n\n" F3 "A: 1\n\nb\n",
                            MBOX_FORMAT_RD);
    assert_int_equal(r.n, 6);
    static const uint32_t want[] = {3, 5, 0, 0, 0, 0}; /* twice, malformed, zero, none */
    for (size_t i = 0; i < 6; i++)
        if (r.items[i].uid != want[i])
            fail_msg("message %zu: uid %u, want %u", i, r.items[i].uid, want[i]);
    run_free(&r);

    static const struct {
        const char *head;
        int rc;
        uint32_t uv, next;
        const char *why;
    } cases[] = {
        {F1 "Subject: x\nX-IMAPbase: 1234 10 $Label1 work\n\nb\n", 1, 1234, 10, NULL},
        {F1 "X-IMAP: 99 3\n\nfolder internal data\n", 1, 99, 3, NULL},
        {F1 "x-imapbase:\t5\t6\r\n\r\nb\n", 1, 5, 6, NULL},
        {F1 "Subject: x\n\nX-IMAPbase: 1 2\n", 0, 0, 0, "no X-IMAPbase header"},
        {F1 "Subject: x\n", 0, 0, 0, "no X-IMAPbase header"},
        {"garbage\n" F1 "X-IMAPbase: 1 2\n\n", 0, 0, 0, "the file does not start with a From_"},
        {"", 0, 0, 0, "the file does not start with a From_"},
        {F1 "X-IMAPbase: 12x 3\n\n", -1, 0, 0, "a malformed X-IMAPbase header"},
        {F1 "X-IMAPbase: 12\n\n", -1, 0, 0, "a malformed X-IMAPbase header"},
        {F1 "X-IMAPbase: 0 3\n\n", -1, 0, 0, "a malformed X-IMAPbase header"},
        {F1 "X-IMAPbase: 4294967296 3\n\n", -1, 0, 0, "a malformed X-IMAPbase header"},
        {F1 "X-IMAPbase: 4294967295 4294967295\n\n", 1, 4294967295u, 4294967295u, NULL},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        uint32_t uv = 7, next = 7;
        const char *why = NULL;
        int rc = mbox_uid_base(cases[i].head, strlen(cases[i].head), &uv, &next, &why);
        if (rc != cases[i].rc || uv != cases[i].uv || next != cases[i].next)
            fail_msg("case %zu: rc %d uv %u next %u", i, rc, uv, next);
        if (cases[i].why != NULL && strncmp(why, cases[i].why, strlen(cases[i].why)) != 0)
            fail_msg("case %zu: why \"%s\"", i, why);
    }
    /* Only the first MBOX_UID_BASE_SCAN octets are looked at. */
    struct buf b;
    buf_init(&b, 0);
    buf_puts(&b, F1);
    while (b.len < MBOX_UID_BASE_SCAN)
        buf_puts(&b, "X-Filler: a header line of no interest\n");
    buf_puts(&b, "X-IMAPbase: 1 2\n\n");
    uint32_t uv, next;
    const char *why;
    assert_int_equal(mbox_uid_base(b.data, b.len, &uv, &next, &why), 0);
    assert_int_equal(uv, 0);
    buf_free(&b);
    uint32_t uid;
    assert_int_equal(mbox_parse_uid(" 42\r\n", 5, &uid), 0);
    assert_int_equal(uid, 42);
    assert_int_equal(mbox_parse_uid(" 42 43", 6, &uid), -1);
    assert_int_equal(mbox_parse_uid("", 0, &uid), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_from_line),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_status_old),
        cmocka_unit_test(test_uids),
        cmocka_unit_test(test_detect),
        cmocka_unit_test(test_detect_sample_end),
        cmocka_unit_test(test_start_and_growth),
        cmocka_unit_test(test_read_error),
        cmocka_unit_test(test_open),
        cmocka_unit_test(test_memory_flat),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
