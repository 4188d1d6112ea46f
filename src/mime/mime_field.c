/*
 * mime_field.c — header fields, the tokens of structured field values
 * (RFC 5322 3.2, RFC 2045 5.1), Content-Type / Content-Disposition
 * parameters, and IMAP strings. See mime_private.h.
 *
 * Everything here reads the caller's octets in place through [p, end)
 * pairs: NUL octets are ordinary bytes, and no scan goes past `end`.
 */
#include "mime/mime_private.h"

#include <string.h>
#include <strings.h>

#define IMAP_QUOTED_MAX 1024 /* longer strings are written as literals */

bool mime_eq(const char *p, size_t len, const char *word)
{
    size_t n = strlen(word);
    if (n != len)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char a = (unsigned char)p[i], b = (unsigned char)word[i];
        if (a >= 'A' && a <= 'Z')
            a = (unsigned char)(a - 'A' + 'a');
        if (b >= 'A' && b <= 'Z')
            b = (unsigned char)(b - 'A' + 'a');
        if (a != b)
            return false;
    }
    return true;
}

/* ---- header fields ------------------------------------------------------ */

static size_t line_after(const char *d, size_t pos, size_t end)
{
    const char *nl = memchr(d + pos, '\n', end - pos);
    return nl == NULL ? end : (size_t)(nl - d) + 1;
}

int mime_field_next(const char *d, size_t *pos, size_t end, struct mime_field *f)
{
    size_t s = *pos;
    if (s >= end)
        return 0;
    size_t first = line_after(d, s, end), e = first;
    while (e < end && (d[e] == ' ' || d[e] == '\t'))
        e = line_after(d, e, end);
    f->start = s;
    f->end = e;
    size_t ve = e;
    if (ve > s && d[ve - 1] == '\n') {
        ve--;
        if (ve > s && d[ve - 1] == '\r')
            ve--;
    }
    f->value_end = ve;
    const char *colon = memchr(d + s, ':', first - s);
    size_t ne;
    if (colon != NULL) {
        ne = (size_t)(colon - d);
        f->value = ne + 1;
    } else {
        ne = first < ve ? first : ve;
        f->value = ve;
    }
    while (ne > s &&
           (d[ne - 1] == ' ' || d[ne - 1] == '\t' || d[ne - 1] == '\r' || d[ne - 1] == '\n'))
        ne--;
    f->name_len = ne - s;
    *pos = e;
    return 1;
}

bool mime_field_is(const char *d, const struct mime_field *f, const char *name)
{
    return mime_eq(d + f->start, f->name_len, name);
}

const char *mime_unfold(const char *p, size_t len, struct buf *out)
{
    buf_reset(out);
    size_t i = 0;
    while (i < len && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n'))
        i++;
    while (len > i &&
           (p[len - 1] == ' ' || p[len - 1] == '\t' || p[len - 1] == '\r' || p[len - 1] == '\n'))
        len--;
    size_t run = i;
    for (; i < len; i++) {
        char c = p[i];
        if (c != '\r' && c != '\n' && c != '\0')
            continue;
        buf_append(out, p + run, i - run);
        if (c == '\0')
            buf_append(out, "?", 1);
        run = i + 1;
    }
    buf_append(out, p + run, len - run); /* allocates even when empty */
    return out->data;
}

/* ---- tokens ------------------------------------------------------------- */

const char *mime_skip_cfws(const char *p, const char *end, const char **comment_r,
                           size_t *comment_len_r)
{
    for (;;) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
            p++;
        if (p >= end || *p != '(')
            return p;
        const char *s = ++p;
        size_t depth = 1;
        while (p < end) {
            if (*p == '\\' && end - p >= 2) {
                p += 2;
                continue;
            }
            if (*p == '(')
                depth++;
            else if (*p == ')' && --depth == 0)
                break;
            p++;
        }
        if (comment_r != NULL) {
            *comment_r = s;
            *comment_len_r = (size_t)(p - s);
        }
        if (p < end)
            p++; /* the closing ')' */
    }
}

const char *mime_quoted(const char *p, const char *end, struct buf *out)
{
    p++; /* the opening quote */
    while (p < end && *p != '"') {
        const char *run = p;
        while (p < end && *p != '"' && *p != '\\' && *p != '\r' && *p != '\n')
            p++;
        buf_append(out, run, (size_t)(p - run));
        if (p >= end || *p == '"')
            break;
        if (*p == '\\' && end - p >= 2) {
            buf_append(out, p + 1, 1);
            p += 2;
        } else {
            p++; /* a CR or LF of a fold, or a final lone backslash */
        }
    }
    return p < end ? p + 1 : end;
}

bool mime_is_token(unsigned char c)
{
    if (c <= 0x20 || c >= 0x7f)
        return false;
    switch (c) { /* tspecials */
    case '(':
    case ')':
    case '<':
    case '>':
    case '@':
    case ',':
    case ';':
    case ':':
    case '\\':
    case '"':
    case '/':
    case '[':
    case ']':
    case '?':
    case '=':
        return false;
    default:
        return true;
    }
}

/* Skips to the next ';' (not inside a quoted string or comment). */
static const char *skip_to_semicolon(const char *p, const char *end)
{
    while (p < end && *p != ';') {
        if (*p == '"') {
            p++;
            while (p < end && *p != '"')
                p += (*p == '\\' && end - p >= 2) ? 2 : 1;
            if (p < end)
                p++;
        } else if (*p == '(') {
            p = mime_skip_cfws(p, end, NULL, NULL);
        } else {
            p++;
        }
    }
    return p;
}

/* True if the quoted string opening at q ends with its closing quote
 * before end (the scan of mime_quoted). */
static bool quoted_closed(const char *q, const char *end)
{
    for (const char *p = q + 1; p < end; p++) {
        if (*p == '"')
            return true;
        if (*p == '\\' && end - p >= 2)
            p++;
    }
    return false;
}

static void params_parse(const char *p, const char *end, struct mime_ctype *ct, struct buf *sb)
{
    ct->n_params = 0;
    for (;;) {
        p = mime_skip_cfws(p, end, NULL, NULL);
        if (p >= end)
            return;
        if (*p != ';') {
            p = skip_to_semicolon(p, end);
            continue;
        }
        p = mime_skip_cfws(p + 1, end, NULL, NULL);
        const char *name = p;
        while (p < end && mime_is_token((unsigned char)*p))
            p++;
        size_t name_len = (size_t)(p - name);
        p = mime_skip_cfws(p, end, NULL, NULL);
        if (name_len == 0 || p >= end || *p != '=') {
            p = skip_to_semicolon(p, end);
            continue;
        }
        p = mime_skip_cfws(p + 1, end, NULL, NULL);
        struct mime_param pa = {.name = sb->len, .name_len = name_len};
        buf_append(sb, name, name_len);
        pa.value = sb->len;
        if (p < end && *p == '"') {
            const char *q = p;
            p = mime_quoted(p, end, sb);
            if (!quoted_closed(q, end)) {
                /* an unterminated quoted string: not a parameter (RFC 2045
                 * 5.2: an invalid field is as if absent; Dovecot drops it) */
                sb->len = pa.name;
                sb->data[sb->len] = '\0';
                continue;
            }
        } else {
            /* A token, leniently: anything up to a blank, ';', quote or
             * comment (broken mailers write "name=a b/c.txt" halves). */
            const char *v = p;
            while (p < end && *p != ';' && *p != '"' && *p != '(' && (unsigned char)*p > 0x20 &&
                   *p != 0x7f)
                p++;
            buf_append(sb, v, (size_t)(p - v));
        }
        pa.value_len = sb->len - pa.value;
        if (ct->n_params < MIME_PARAMS_MAX)
            ct->params[ct->n_params++] = pa;
    }
}

void mime_ctype_parse(const char *p, size_t len, struct mime_ctype *ct, struct buf *sb)
{
    const char *end = p + len;
    ct->valid = false;
    ct->n_params = 0;
    p = mime_skip_cfws(p, end, NULL, NULL);
    const char *t = p;
    while (p < end && mime_is_token((unsigned char)*p))
        p++;
    size_t tl = (size_t)(p - t);
    p = mime_skip_cfws(p, end, NULL, NULL);
    if (tl == 0 || p >= end || *p != '/')
        return;
    p = mime_skip_cfws(p + 1, end, NULL, NULL);
    const char *s = p;
    while (p < end && mime_is_token((unsigned char)*p))
        p++;
    if (p == s)
        return;
    ct->valid = true;
    ct->type = t;
    ct->type_len = tl;
    ct->sub = s;
    ct->sub_len = (size_t)(p - s);
    if (sb != NULL)
        params_parse(p, end, ct, sb);
}

void mime_disp_parse(const char *p, size_t len, const char **type_r, size_t *type_len_r,
                     struct mime_ctype *params, struct buf *sb)
{
    const char *end = p + len;
    p = mime_skip_cfws(p, end, NULL, NULL);
    const char *t = p;
    while (p < end && mime_is_token((unsigned char)*p))
        p++;
    *type_r = t;
    *type_len_r = (size_t)(p - t);
    params_parse(p, end, params, sb);
}

const char *mime_param_get(const struct mime_ctype *ct, const struct buf *sb, const char *name,
                           size_t *len_r)
{
    for (size_t i = 0; i < ct->n_params; i++) {
        const struct mime_param *pa = &ct->params[i];
        if (mime_eq(sb->data + pa->name, pa->name_len, name)) {
            *len_r = pa->value_len;
            return sb->data + pa->value;
        }
    }
    return NULL;
}

/* ---- IMAP strings ------------------------------------------------------- */

static void put_string(struct buf *out, const char *s, size_t len, bool upper)
{
    bool quoted = len <= IMAP_QUOTED_MAX, plain = true; /* plain: copy as is */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 && c != '\t') || c >= 0x7f) /* printable (and TAB) only */
            quoted = false;
        if (c == 0 || c == '"' || c == '\\' || (upper && c >= 'a' && c <= 'z'))
            plain = false;
    }
    if (quoted)
        buf_append(out, "\"", 1);
    else
        buf_printf(out, "{%zu}\r\n", len);
    size_t run = 0;
    for (size_t i = 0; i < len && !plain; i++) {
        char c = s[i];
        bool lower = upper && c >= 'a' && c <= 'z';
        if (!lower && c != '\0' && !(quoted && (c == '"' || c == '\\')))
            continue;
        buf_append(out, s + run, i - run);
        if (lower) {
            char u = (char)(c - 'a' + 'A');
            buf_append(out, &u, 1);
        } else if (c == '\0') {
            buf_append(out, "?", 1);
        } else {
            buf_append(out, "\\", 1);
            buf_append(out, &c, 1);
        }
        run = i + 1;
    }
    buf_append(out, s + run, len - run);
    if (quoted)
        buf_append(out, "\"", 1);
}

void mime_put_string(struct buf *out, const char *s, size_t len)
{
    put_string(out, s, len, false);
}

void mime_put_upper(struct buf *out, const char *s, size_t len)
{
    put_string(out, s, len, true);
}

void mime_put_nstring(struct buf *out, const struct mime_range *r, const char *data,
                      struct buf *tmp)
{
    if (!r->set) {
        buf_puts(out, "NIL");
        return;
    }
    const char *v = mime_unfold(data + r->off, r->len, tmp);
    mime_put_string(out, v, tmp->len);
}
