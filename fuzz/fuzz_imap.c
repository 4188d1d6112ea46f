/*
 * fuzz_imap — libFuzzer target for the imap module. The first bytes pick
 * the limits (often tiny, so TOO_BIG, LINE_TOO_LONG, nesting and argument
 * caps are hit) and a chunking pattern; the rest is a client's byte stream,
 * driven as a server would: each command is parsed, each argument is also
 * tried as a sequence set and as a modified UTF-7 name. A second run over
 * the whole buffer at once must give the same events and commands. The
 * input itself goes through both mUTF-7 directions (a decoded name must
 * encode back to the same octets: only canonical forms are accepted) and
 * through imap_write_astring + reader + parser, which must give it back.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "imap/imap_private.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t mix(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3u;
    return h;
}

static void check_seqset(const char *s, uint32_t star)
{
    struct imap_range *r;
    size_t n;
    const char *error;
    if (imap_seqset_parse(s, star, &r, &n, &error) < 0) {
        ASSERT(error != NULL && r == NULL && n == 0);
        return;
    }
    ASSERT(n >= 1 && n <= IMAP_SEQSET_MAX);
    for (size_t i = 0; i < n; i++) {
        ASSERT(r[i].lo >= 1 && r[i].lo <= r[i].hi);
        ASSERT(i == 0 || (uint64_t)r[i].lo > (uint64_t)r[i - 1].hi + 1);
        ASSERT(imap_seqset_contains(r, n, r[i].lo) && imap_seqset_contains(r, n, r[i].hi));
        ASSERT(!imap_seqset_contains(r, n, r[i].lo - 1));
    }
    free(r);
}

/* A decoded name encodes back to the very same octets; an encoded one
 * decodes back to the input. */
static void check_mutf7(const char *s, size_t len)
{
    struct buf a, b;
    buf_init(&a, 0);
    buf_init(&b, 0);
    if (imap_mutf7_to_utf8(s, len, &a) == 0) {
        ASSERT(a.len == 0 || memchr(a.data, '\0', a.len) == NULL);
        ASSERT(imap_utf8_to_mutf7(a.data != NULL ? a.data : "", a.len, &b) == 0);
        ASSERT(b.len == len && (len == 0 || memcmp(b.data, s, len) == 0));
    }
    buf_reset(&a);
    buf_reset(&b);
    if (imap_utf8_to_mutf7(s, len, &a) == 0) {
        for (size_t i = 0; i < a.len; i++)
            ASSERT(a.data[i] >= 0x20 && a.data[i] <= 0x7e);
        ASSERT(imap_mutf7_to_utf8(a.data != NULL ? a.data : "", a.len, &b) == 0);
        ASSERT(b.len == len && (len == 0 || memcmp(b.data, s, len) == 0));
    }
    buf_free(&a);
    buf_free(&b);
}

struct walk {
    const struct imap_limits *lim;
    uint32_t star;
    size_t nodes;
    uint64_t h;
};

static void walk_args(struct walk *w, const struct imap_arg *a, size_t n, unsigned depth)
{
    ASSERT(depth <= w->lim->depth_max);
    for (size_t i = 0; i < n; i++) {
        w->nodes++;
        w->h = mix(w->h, &a[i].type, sizeof(a[i].type));
        if (a[i].type == IMAP_ARG_LIST) {
            ASSERT(a[i].n == 0 || a[i].list != NULL);
            walk_args(w, a[i].list, a[i].n, depth + 1);
            continue;
        }
        ASSERT(a[i].str != NULL && a[i].str[a[i].len] == '\0');
        w->h = mix(w->h, a[i].str, a[i].len);
        switch (a[i].type) {
        case IMAP_ARG_ATOM:
        case IMAP_ARG_NIL:
            ASSERT(a[i].len > 0 && strlen(a[i].str) == a[i].len);
            check_seqset(a[i].str, w->star);
            break;
        case IMAP_ARG_STRING:
            for (size_t k = 0; k < a[i].len; k++) {
                unsigned char c = (unsigned char)a[i].str[k];
                ASSERT(c != '\0' && c != '\r' && c != '\n' && c < 0x80);
            }
            break;
        case IMAP_ARG_LITERAL:
            ASSERT(a[i].len <= w->lim->literal_max);
            break;
        case IMAP_ARG_LIST:
            break;
        }
        const char *s;
        size_t sl;
        if (imap_arg_astring(&a[i], &s, &sl))
            check_mutf7(s, sl);
    }
}

static uint64_t check_command(struct imap_parser *p, const struct imap_framed *f,
                              const struct imap_limits *lim, uint32_t star)
{
    /* The reader's framing: literals in order, inside the command. */
    ASSERT(f->len <= lim->command_max);
    for (size_t i = 0; i < f->n_lits; i++) {
        const struct imap_lit *l = &f->lits[i];
        ASSERT(l->start < l->data && l->data + l->len <= f->len && l->len <= lim->literal_max);
        ASSERT(f->data[l->data - 1] == '\n');
        ASSERT(i == 0 || l->start >= f->lits[i - 1].data + f->lits[i - 1].len);
    }
    ASSERT(f->n_lits <= lim->args_max);
    struct imap_command cmd;
    const char *error = NULL;
    uint64_t h = 0;
    if (imap_parse(p, f, &cmd, &error) < 0) {
        ASSERT(error != NULL && error[0] != '\0' && cmd.name[0] == '\0');
        ASSERT(strlen(cmd.tag) <= IMAP_TAG_MAX);
        return mix(mix(h, cmd.tag, strlen(cmd.tag)), error, strlen(error));
    }
    size_t tl = strlen(cmd.tag), nl = strlen(cmd.name);
    ASSERT(tl >= 1 && tl <= IMAP_TAG_MAX);
    for (size_t i = 0; i < tl; i++)
        ASSERT(imap_is_tag_char((unsigned char)cmd.tag[i]));
    ASSERT(nl >= 1 && nl < sizeof(cmd.name));
    for (size_t i = 0; i < nl; i++)
        ASSERT(cmd.name[i] >= 'A' && cmd.name[i] <= 'Z');
    struct walk w = {.lim = lim, .star = star, .h = mix(h, cmd.tag, tl)};
    w.h = mix(w.h, cmd.name, nl);
    walk_args(&w, cmd.args, cmd.n_args, 0);
    ASSERT(w.nodes <= lim->args_max);
    return w.h;
}

static uint64_t run(const struct imap_limits *lim, uint32_t star, const uint8_t *pat, size_t npat,
                    const char *p, size_t n)
{
    struct imap_reader *r = imap_reader_new(lim);
    struct imap_parser *ps = imap_parser_new(lim);
    uint64_t h = 0xcbf29ce484222325u;
    size_t pos = 0, k = 0;
    while (pos < n) {
        size_t chunk = npat == 0 ? n - pos : 1 + pat[k++ % npat];
        if (chunk > n - pos)
            chunk = n - pos;
        size_t off = 0;
        for (;;) {
            size_t used = SIZE_MAX;
            enum imap_read ev = imap_reader_feed(r, p + pos + off, chunk - off, &used);
            ASSERT(used <= chunk - off);
            off += used;
            if (ev == IMAP_READ_MORE) {
                ASSERT(off == chunk);
                break;
            }
            h = mix(h, &ev, sizeof(ev));
            const char *tag = imap_reader_tag(r);
            ASSERT(strlen(tag) <= IMAP_TAG_MAX);
            h = mix(h, tag, strlen(tag));
            const struct imap_framed *f = imap_reader_command(r);
            ASSERT((ev == IMAP_READ_COMMAND) == (f != NULL));
            if (f != NULL)
                h = mix(h, &(uint64_t){check_command(ps, f, lim, star)}, sizeof(uint64_t));
        }
        pos += chunk;
    }
    imap_parser_free(&ps);
    imap_reader_free(&r);
    return h;
}

/* Whatever the octets, imap_write_astring + reader + parser give them back. */
static void check_write(const char *s, size_t n)
{
    struct imap_limits lim;
    imap_limits_default(&lim);
    struct buf line;
    buf_init(&line, 0);
    buf_puts(&line, "t X ");
    imap_write_astring(&line, s, n);
    buf_puts(&line, "\r\n");
    struct imap_reader *r = imap_reader_new(&lim);
    struct imap_parser *p = imap_parser_new(&lim);
    size_t off = 0, used;
    enum imap_read ev;
    while ((ev = imap_reader_feed(r, line.data + off, line.len - off, &used)) == IMAP_READ_CONTINUE)
        off += used;
    ASSERT(ev == IMAP_READ_COMMAND && off + used == line.len);
    struct imap_command cmd;
    const char *error;
    ASSERT(imap_parse(p, imap_reader_command(r), &cmd, &error) == 0);
    const char *v;
    size_t vl;
    ASSERT(cmd.n_args == 1 && imap_arg_astring(&cmd.args[0], &v, &vl));
    ASSERT(vl == n && (n == 0 || memcmp(v, s, n) == 0));
    imap_parser_free(&p);
    imap_reader_free(&r);
    buf_free(&line);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 5)
        return 0;
    /* Byte 0: which limits are small; bits 5..7: chunk pattern length. */
    struct imap_limits lim;
    imap_limits_default(&lim);
    lim.literal_max = 4096;
    lim.command_max = 16384;
    if (data[0] & 1)
        lim.line_max = 1 + data[1] % 64;
    if (data[0] & 2)
        lim.literal_max = 1 + data[2] % 32;
    if (data[0] & 4)
        lim.command_max = 1 + data[3] % 128;
    if (data[0] & 8)
        lim.depth_max = 1 + data[4] % 4;
    if (data[0] & 16)
        lim.args_max = 1 + data[4] % 16;
    uint32_t star = data[1] & 1 ? 0 : 1 + data[2];
    size_t npat = (size_t)(data[0] >> 5) & 7;
    if (npat > size - 5)
        npat = size - 5;
    const uint8_t *pat = data + 5;
    const char *p = (const char *)data + 5 + npat;
    size_t n = size - 5 - npat;
    uint64_t h1 = run(&lim, star, pat, npat, p, n);
    uint64_t h2 = run(&lim, star, NULL, 0, p, n);
    ASSERT(h1 == h2);
    check_mutf7(p, n);
    if (n <= 4096)
        check_write(p, n);
    /* The stream as one sequence set. */
    char *s = malloc(n + 1);
    memcpy(s, p, n);
    s[n] = '\0';
    check_seqset(s, star);
    free(s);
    return 0;
}
