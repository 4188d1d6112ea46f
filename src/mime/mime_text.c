/*
 * mime_text.c — decoded text for SEARCH, by GMime: RFC 2047 encoded words
 * (g_mime_utils_header_decode_text, which also takes raw 8-bit headers),
 * transfer encodings (g_mime_encoding_*), charsets (GMime's iconv cache and
 * charset aliases) and dates (g_mime_utils_header_decode_date). Output is
 * always valid UTF-8: what cannot be converted becomes U+FFFD, NUL octets
 * are dropped.
 */
#include "mime/mime_private.h"

#include <errno.h>
#include <string.h>

#include <gmime/gmime.h>

#define CHARSET_NAME_MAX 64
#define REPLACEMENT      "\xEF\xBF\xBD" /* U+FFFD */

static void put_valid_utf8(struct buf *out, const char *p, size_t n)
{
    const char *end = p + n;
    while (p < end) {
        const gchar *bad;
        if (g_utf8_validate(p, (gssize)(end - p), &bad)) {
            buf_append(out, p, (size_t)(end - p));
            return;
        }
        buf_append(out, p, (size_t)(bad - p));
        if (*bad != '\0')
            buf_append(out, REPLACEMENT, 3);
        p = bad + 1;
    }
}

/* Appends [p, p + n) in `charset` (NULL: US-ASCII) as UTF-8. */
static void put_utf8(struct buf *out, const char *charset, const char *p, size_t n)
{
    if (charset == NULL || g_ascii_strcasecmp(charset, "us-ascii") == 0 ||
        g_ascii_strcasecmp(charset, "utf-8") == 0 || g_ascii_strcasecmp(charset, "utf8") == 0) {
        put_valid_utf8(out, p, n);
        return;
    }
    iconv_t cd = g_mime_iconv_open("UTF-8", g_mime_charset_iconv_name(charset));
    if (cd == (iconv_t)-1) { /* unknown charset: keep what is UTF-8 already */
        put_valid_utf8(out, p, n);
        return;
    }
    char obuf[4096];
    char *in = (char *)p;
    size_t inleft = n;
    for (;;) {
        char *o = obuf;
        size_t oleft = sizeof(obuf);
        size_t r = inleft > 0 ? g_mime_iconv(cd, &in, &inleft, &o, &oleft)
                              : g_mime_iconv(cd, NULL, NULL, &o, &oleft);
        int err = errno;
        put_valid_utf8(out, obuf, (size_t)(o - obuf));
        if (inleft == 0 && r != (size_t)-1)
            break;
        if (r == (size_t)-1 && err == E2BIG)
            continue;
        if (r == (size_t)-1) { /* EILSEQ, EINVAL: one octet cannot be converted */
            buf_append(out, REPLACEMENT, 3);
            if (inleft > 0) {
                in++;
                inleft--;
            }
            g_mime_iconv(cd, NULL, NULL, NULL, NULL);
            if (inleft == 0)
                break;
        }
    }
    g_mime_iconv_close(cd);
}

size_t mime_header_text(struct mime_msg *m, const char *name, struct buf *out)
{
    size_t he, bs, pos = 0, count = 0;
    if (m->parsed)
        he = m->nodes[0].hdr_end;
    else
        mime_header_bounds(m->data, 0, m->len, &he, &bs);
    struct mime_field f;
    while (mime_field_next(m->data, &pos, he, &f)) {
        if (!mime_field_is(m->data, &f, name))
            continue;
        const char *v = mime_unfold(m->data + f.value, f.value_end - f.value, &m->tmp);
        char *dec = g_mime_utils_header_decode_text(NULL, v);
        if (count++ > 0)
            buf_append(out, "\n", 1);
        if (dec != NULL)
            put_valid_utf8(out, dec, strlen(dec));
        g_free(dec);
    }
    return count;
}

/* The first token of a field value into tok (NUL-terminated); false if
 * there is none or it does not fit. */
static bool first_token(const char *p, size_t len, char *tok, size_t cap)
{
    const char *end = p + len;
    p = mime_skip_cfws(p, end, NULL, NULL);
    const char *t = p;
    while (p < end && mime_is_token((unsigned char)*p))
        p++;
    size_t n = (size_t)(p - t);
    if (n == 0 || n >= cap)
        return false;
    memcpy(tok, t, n);
    tok[n] = '\0';
    return true;
}

static void put_part_text(struct mime_msg *m, const struct mime_node *n, const char *charset,
                          struct buf *out)
{
    const char *body = m->data + n->body_start;
    size_t len = n->body_end - n->body_start;
    char tok[32];
    GMimeContentEncoding enc = GMIME_CONTENT_ENCODING_DEFAULT;
    if (n->cte.set && first_token(m->data + n->cte.off, n->cte.len, tok, sizeof(tok)))
        enc = g_mime_content_encoding_from_string(tok);
    if (enc != GMIME_CONTENT_ENCODING_BASE64 && enc != GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE) {
        put_utf8(out, charset, body, len);
        return;
    }
    GMimeEncoding st;
    g_mime_encoding_init_decode(&st, enc);
    char *dec = xmalloc(g_mime_encoding_outlen(&st, len) + 1);
    size_t n_dec = g_mime_encoding_flush(&st, body, len, dec);
    put_utf8(out, charset, dec, n_dec);
    free(dec);
}

void mime_body_text(struct mime_msg *m, struct buf *out)
{
    mime_structure(m);
    bool first = true;
    for (uint32_t i = 0; i < m->n_nodes; i++) { /* the array is in document order */
        const struct mime_node *n = &m->nodes[i];
        if (n->kind != MIME_LEAF)
            continue;
        struct mime_ctype *ct = m->ct;
        ct->valid = false;
        ct->n_params = 0;
        buf_reset(&m->sb);
        if (n->ctype.set)
            mime_ctype_parse(m->data + n->ctype.off, n->ctype.len, ct, &m->sb);
        if (ct->valid && !mime_eq(ct->type, ct->type_len, "text"))
            continue;
        char charset[CHARSET_NAME_MAX];
        size_t cl;
        const char *cs = ct->valid ? mime_param_get(ct, &m->sb, "charset", &cl) : NULL;
        if (cs != NULL && cl > 0 && cl < sizeof(charset) && memchr(cs, '\0', cl) == NULL) {
            memcpy(charset, cs, cl);
            charset[cl] = '\0';
            cs = charset;
        } else {
            cs = NULL;
        }
        if (!first)
            buf_append(out, "\n", 1);
        first = false;
        put_part_text(m, n, cs, out);
    }
}

int64_t mime_date(struct mime_msg *m)
{
    size_t he, bs, pos = 0;
    if (m->parsed)
        he = m->nodes[0].hdr_end;
    else
        mime_header_bounds(m->data, 0, m->len, &he, &bs);
    struct mime_field f;
    while (mime_field_next(m->data, &pos, he, &f)) {
        if (!mime_field_is(m->data, &f, "date"))
            continue;
        const char *v = mime_unfold(m->data + f.value, f.value_end - f.value, &m->tmp);
        GDateTime *dt = g_mime_utils_header_decode_date(v);
        if (dt == NULL)
            return -1;
        int64_t t = (int64_t)g_date_time_to_unix(dt);
        g_date_time_unref(dt);
        return t;
    }
    return -1;
}
