/*
 * imap — the helpers of imap.h part 3 (sequence sets, modified UTF-7,
 * strings in responses) and the default limits. The reader is in
 * imap_read.c, the argument parser in imap_parse.c.
 */
#include "imap/imap_private.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

void imap_limits_default(struct imap_limits *l)
{
    l->line_max = 65536;
    l->literal_max = 64 * 1024 * 1024;
    l->command_max = l->literal_max + 1024 * 1024;
    l->depth_max = 16;
    l->args_max = 4096;
}

/* ---- sequence sets ----------------------------------------------------- */

static int seq_number(const char **pp, uint32_t star, uint32_t *v_r, const char **error_r)
{
    const char *p = *pp;
    if (*p == '*') {
        if (star == 0) {
            *error_r = "no messages ('*' in an empty mailbox)";
            return -1;
        }
        *v_r = star;
        *pp = p + 1;
        return 0;
    }
    if (*p < '0' || *p > '9') {
        *error_r = *p == ',' || *p == ':' || *p == '\0' ? "empty element in sequence set"
                                                        : "invalid character in sequence set";
        return -1;
    }
    if (*p == '0') {
        *error_r = p[1] >= '0' && p[1] <= '9' ? "leading zero in sequence number"
                                              : "0 is not a valid sequence number";
        return -1;
    }
    uint64_t v = 0;
    while (*p >= '0' && *p <= '9') {
        v = v * 10 + (uint64_t)(*p - '0');
        if (v > UINT32_MAX) {
            *error_r = "sequence number over 4294967295";
            return -1;
        }
        p++;
    }
    *v_r = (uint32_t)v;
    *pp = p;
    return 0;
}

static int range_cmp(const void *a, const void *b)
{
    const struct imap_range *x = a, *y = b;
    if (x->lo != y->lo)
        return x->lo < y->lo ? -1 : 1;
    return x->hi < y->hi ? -1 : x->hi > y->hi;
}

int imap_seqset_parse(const char *s, uint32_t star_value, struct imap_range **ranges_r, size_t *n_r,
                      const char **error_r)
{
    *ranges_r = NULL;
    *n_r = 0;
    if (*s == '\0') {
        *error_r = "empty sequence set";
        return -1;
    }
    struct imap_range *r = NULL;
    size_t n = 0, cap = 0;
    const char *p = s;
    for (;;) {
        if (n == IMAP_SEQSET_MAX) {
            *error_r = "too many elements in sequence set";
            goto fail;
        }
        uint32_t a, b;
        if (seq_number(&p, star_value, &a, error_r) < 0)
            goto fail;
        b = a;
        if (*p == ':') {
            p++;
            if (*p == '\0' || *p == ',') {
                *error_r = "missing number after ':' in sequence set";
                goto fail;
            }
            if (seq_number(&p, star_value, &b, error_r) < 0)
                goto fail;
        }
        if (n == cap) {
            cap = cap == 0 ? 8 : cap * 2;
            r = xrealloc(r, cap * sizeof(*r));
        }
        r[n].lo = a < b ? a : b;
        r[n].hi = a < b ? b : a;
        n++;
        if (*p == '\0')
            break;
        if (*p != ',') {
            *error_r = "invalid character in sequence set";
            goto fail;
        }
        p++;
        if (*p == '\0') {
            *error_r = "trailing ',' in sequence set";
            goto fail;
        }
    }
    qsort(r, n, sizeof(*r), range_cmp);
    size_t m = 0;
    for (size_t i = 1; i < n; i++) {
        if ((uint64_t)r[i].lo <= (uint64_t)r[m].hi + 1) {
            if (r[i].hi > r[m].hi)
                r[m].hi = r[i].hi;
        } else {
            r[++m] = r[i];
        }
    }
    *n_r = m + 1;
    *ranges_r = xrealloc(r, *n_r * sizeof(*r));
    return 0;
fail:
    free(r);
    return -1;
}

bool imap_seqset_contains(const struct imap_range *r, size_t n, uint32_t v)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v < r[mid].lo)
            hi = mid;
        else if (v > r[mid].hi)
            lo = mid + 1;
        else
            return true;
    }
    return false;
}

/* ---- modified UTF-7 ---------------------------------------------------- */

static const char b64_chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == ',')
        return 63;
    return -1;
}

static int put_utf8(struct buf *out, uint32_t cp)
{
    unsigned char b[4];
    size_t n;
    if (cp < 0x80) {
        b[0] = (unsigned char)cp;
        n = 1;
    } else if (cp < 0x800) {
        b[0] = (unsigned char)(0xc0 | (cp >> 6));
        b[1] = (unsigned char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = (unsigned char)(0xe0 | (cp >> 12));
        b[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        b[2] = (unsigned char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        b[0] = (unsigned char)(0xf0 | (cp >> 18));
        b[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
        b[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        b[3] = (unsigned char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    return buf_append(out, b, n);
}

/* One shift "&" base64 "-" starting at in[*ip] (the "&"): its UTF-16
 * decoded into out. */
static int mutf7_shift(const char *in, size_t len, size_t *ip, struct buf *out)
{
    size_t i = *ip + 1;
    uint32_t bits = 0, high = 0;
    unsigned nbits = 0;
    for (; i < len && in[i] != '-'; i++) {
        int v = b64_value((unsigned char)in[i]);
        if (v < 0)
            return -1; /* not base64: "&" not closed by "-", or "&-" inside */
        bits = (bits << 6) | (uint32_t)v;
        nbits += 6;
        if (nbits < 16)
            continue;
        nbits -= 16;
        uint32_t u = (bits >> nbits) & 0xffff;
        bits &= (1u << nbits) - 1;
        if (high != 0) {
            if (u < 0xdc00 || u > 0xdfff)
                return -1; /* high surrogate without its low one */
            if (put_utf8(out, 0x10000 + ((high - 0xd800) << 10) + (u - 0xdc00)) < 0)
                return -1;
            high = 0;
        } else if (u >= 0xd800 && u <= 0xdbff) {
            high = u;
        } else if (u >= 0xdc00 && u <= 0xdfff) {
            return -1; /* low surrogate alone */
        } else if ((u >= 0x20 && u <= 0x7e) || u == 0) {
            return -1; /* printable ASCII must stand for itself; no NUL */
        } else if (put_utf8(out, u) < 0) {
            return -1;
        }
    }
    if (i >= len)
        return -1; /* not closed by "-" */
    /* Canonical: no character more than the 16-bit units need (fewer than
     * 6 bits left over), and those padding bits zero. This also refuses a
     * shift that decodes to nothing ("&AA-"). */
    if (nbits >= 6 || bits != 0 || high != 0)
        return -1;
    *ip = i + 1;
    return 0;
}

int imap_mutf7_to_utf8(const char *in, size_t len, struct buf *out)
{
    size_t start = out->len;
    bool after_shift = false;
    size_t i = 0;
    while (i < len) {
        unsigned char c = (unsigned char)in[i];
        if (c == '&') {
            if (i + 1 < len && in[i + 1] == '-') {
                if (buf_append(out, "&", 1) < 0)
                    goto fail;
                i += 2;
                after_shift = false;
                continue;
            }
            /* Two shifts in a row are one shift in canonical form. */
            if (after_shift || mutf7_shift(in, len, &i, out) < 0)
                goto fail;
            after_shift = true;
            continue;
        }
        if (c < 0x20 || c > 0x7e || buf_append(out, &in[i], 1) < 0)
            goto fail;
        after_shift = false;
        i++;
    }
    return 0;
fail:
    out->len = start;
    if (out->data != NULL)
        out->data[start] = '\0';
    return -1;
}

/* Decodes one UTF-8 sequence at in[*ip]: the code point, or -1 if it is
 * not well-formed (RFC 3629). */
static int32_t utf8_next(const unsigned char *in, size_t len, size_t *ip)
{
    size_t i = *ip;
    unsigned char c = in[i];
    uint32_t cp, min;
    size_t n;
    if (c < 0x80) {
        *ip = i + 1;
        return c;
    } else if (c >= 0xc2 && c <= 0xdf) {
        cp = c & 0x1f;
        n = 1;
        min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        cp = c & 0x0f;
        n = 2;
        min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        cp = c & 0x07;
        n = 3;
        min = 0x10000;
    } else {
        return -1;
    }
    if (len - i - 1 < n)
        return -1;
    for (size_t k = 1; k <= n; k++) {
        if ((in[i + k] & 0xc0) != 0x80)
            return -1;
        cp = (cp << 6) | (in[i + k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return -1;
    *ip = i + 1 + n;
    return (int32_t)cp;
}

struct b64_out {
    struct buf *out;
    uint32_t bits;
    unsigned nbits;
    bool open;
    int err;
};

static void b64_put(struct b64_out *b, char c)
{
    if (buf_append(b->out, &c, 1) < 0)
        b->err = -1;
}

static void b64_unit(struct b64_out *b, uint32_t u)
{
    if (!b->open) {
        b64_put(b, '&');
        b->open = true;
    }
    b->bits = (b->bits << 16) | u;
    b->nbits += 16;
    while (b->nbits >= 6) {
        b->nbits -= 6;
        b64_put(b, b64_chars[(b->bits >> b->nbits) & 0x3f]);
    }
    b->bits &= (1u << b->nbits) - 1;
}

static void b64_close(struct b64_out *b)
{
    if (!b->open)
        return;
    if (b->nbits > 0)
        b64_put(b, b64_chars[(b->bits << (6 - b->nbits)) & 0x3f]);
    b64_put(b, '-');
    b->bits = 0;
    b->nbits = 0;
    b->open = false;
}

int imap_utf8_to_mutf7(const char *in, size_t len, struct buf *out)
{
    size_t start = out->len;
    struct b64_out b = {.out = out};
    const unsigned char *u = (const unsigned char *)in;
    size_t i = 0;
    while (i < len && b.err == 0) {
        int32_t cp = utf8_next(u, len, &i);
        if (cp <= 0) /* invalid, or a NUL */
            goto fail;
        if (cp >= 0x20 && cp <= 0x7e) {
            b64_close(&b);
            if (cp == '&') {
                b64_put(&b, '&');
                b64_put(&b, '-');
            } else {
                b64_put(&b, (char)cp);
            }
        } else if (cp >= 0x10000) {
            uint32_t v = (uint32_t)cp - 0x10000;
            b64_unit(&b, 0xd800 + (v >> 10));
            b64_unit(&b, 0xdc00 + (v & 0x3ff));
        } else {
            b64_unit(&b, (uint32_t)cp);
        }
    }
    b64_close(&b);
    if (b.err == 0)
        return 0;
fail:
    out->len = start;
    if (out->data != NULL)
        out->data[start] = '\0';
    return -1;
}

/* ---- strings in responses ---------------------------------------------- */

static void put(struct buf *out, const void *p, size_t n)
{
    if (buf_append(out, p, n) < 0)
        panic("imap: response buffer refused %zu octets", n);
}

void imap_write_string(struct buf *out, const char *s, size_t len)
{
    bool quoted = len < IMAP_QUOTED_MAX;
    for (size_t i = 0; i < len && quoted; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c > 0x7e)
            quoted = false;
    }
    if (!quoted) {
        if (buf_printf(out, "{%zu}\r\n", len) < 0)
            panic("imap: response buffer refused a literal's length");
        put(out, s, len);
        return;
    }
    put(out, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '"' || s[i] == '\\') {
            put(out, s + run, i - run);
            put(out, "\\", 1);
            run = i;
        }
    }
    put(out, s + run, len - run);
    put(out, "\"", 1);
}

void imap_write_nstring(struct buf *out, const char *s, size_t len)
{
    if (s == NULL)
        put(out, "NIL", 3);
    else
        imap_write_string(out, s, len);
}

void imap_write_astring(struct buf *out, const char *s, size_t len)
{
    /* ATOM-CHARs but '[', which the parser (ours and others) takes as the
     * start of a section. */
    bool atom = len > 0 && !(len == 3 && strncasecmp(s, "NIL", 3) == 0);
    for (size_t i = 0; i < len && atom; i++)
        if (!imap_is_atom_char((unsigned char)s[i]) || s[i] == '[')
            atom = false;
    if (atom)
        put(out, s, len);
    else
        imap_write_string(out, s, len);
}
