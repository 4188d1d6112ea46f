/*
 * mime_imap.c — ENVELOPE and BODYSTRUCTURE (RFC 3501 7.4.2); see mime.h.
 *
 * Field values are written as sent (unfolded; encoded words stay encoded).
 * Addresses are parsed by RFC 5322 3.4 with its obsolete forms (routes,
 * empty list elements, CFWS around dots); where the input is broken the
 * parser keeps what it understood and skips to the next ',' — it never
 * gives up the rest of the list. Like Dovecot, a missing local part or
 * domain is written as "MISSING_MAILBOX" / "MISSING_DOMAIN" (NIL would
 * mean a group marker), and an address without a display name takes its
 * trailing comment as the name ("a@b (Ann)").
 *
 * BODYSTRUCTURE writes media type, subtype, parameter names, encoding and
 * disposition type in upper case (as RFC 3501's examples do; they are
 * case-insensitive), values as sent. RFC 2231 continuations are merged
 * into one parameter ("NAME*" with the charset''value form when any part
 * is extended), as Dovecot does. A text part without a charset gets
 * ("CHARSET" "US-ASCII") (RFC 2045 5.2). A multipart without parts (no
 * boundary, or none found) gets one empty TEXT/PLAIN part so the grammar
 * (1*body) holds, as Dovecot does; mime_section_get agrees: its part 1 is
 * empty. A part not structured (MIME_OPAQUE) is APPLICATION/OCTET-STREAM.
 */
#include "mime/mime_private.h"

#include <string.h>
#include <strings.h>

enum { S_NAME, S_LOCAL, S_DOMAIN, S_ROUTE };

/* ---- addresses (RFC 5322 3.4) ------------------------------------------- */

struct addrp {
    const char *p, *end;
    struct buf *out;
    struct buf *s; /* m->scratch */
    size_t count;  /* addresses (and group markers) written */
};

static bool is_atext(unsigned char c)
{
    if (c <= 0x20 || c == 0x7f)
        return false;
    switch (c) { /* specials (RFC 5322 3.2.3) */
    case '(':
    case ')':
    case '<':
    case '>':
    case '[':
    case ']':
    case ':':
    case ';':
    case '@':
    case '\\':
    case ',':
    case '.':
    case '"':
        return false;
    default:
        return true; /* including 8-bit octets (RFC 6532) */
    }
}

static void put_addr(struct addrp *a, const struct buf *name, const struct buf *route,
                     const struct buf *mbox, const char *mbox_missing, const struct buf *host,
                     const char *host_missing)
{
    struct buf *out = a->out;
    buf_append(out, "(", 1);
    if (name != NULL && name->len > 0)
        mime_put_string(out, name->data, name->len);
    else
        buf_puts(out, "NIL");
    buf_append(out, " ", 1);
    if (route != NULL && route->len > 0)
        mime_put_string(out, route->data, route->len);
    else
        buf_puts(out, "NIL");
    buf_append(out, " ", 1);
    if (mbox != NULL && mbox->len > 0)
        mime_put_string(out, mbox->data, mbox->len);
    else if (mbox_missing != NULL)
        buf_printf(out, "\"%s\"", mbox_missing);
    else
        buf_puts(out, "NIL");
    buf_append(out, " ", 1);
    if (host != NULL && host->len > 0)
        mime_put_string(out, host->data, host->len);
    else if (host_missing != NULL)
        buf_printf(out, "\"%s\"", host_missing);
    else
        buf_puts(out, "NIL");
    buf_append(out, ")", 1);
    a->count++;
}

/* Words (atoms, quoted strings) and dots: into phrase (if not NULL) with
 * one blank where the input had white space or comments between them, and
 * into local concatenated. Returns how many were read. */
static size_t read_words(struct addrp *a, struct buf *phrase, struct buf *local)
{
    size_t n = 0;
    for (;;) {
        const char *before = a->p;
        a->p = mime_skip_cfws(a->p, a->end, NULL, NULL);
        if (a->p >= a->end)
            break;
        bool blank = a->p != before && phrase != NULL && phrase->len > 0;
        unsigned char c = (unsigned char)*a->p;
        const char *s = a->p;
        if (c != '"' && c != '.' && !is_atext(c))
            break;
        if (blank)
            buf_append(phrase, " ", 1);
        if (c == '"') {
            size_t mark = local->len;
            a->p = mime_quoted(a->p, a->end, local);
            if (phrase != NULL && local->len > mark)
                buf_append(phrase, local->data + mark, local->len - mark);
        } else {
            a->p++;
            while (c != '.' && a->p < a->end && is_atext((unsigned char)*a->p))
                a->p++;
            buf_append(local, s, (size_t)(a->p - s));
            if (phrase != NULL)
                buf_append(phrase, s, (size_t)(a->p - s));
        }
        n++;
    }
    return n;
}

/* A domain (dot-atom, domain literal or obsolete form) appended to dom. */
static void read_domain(struct addrp *a, struct buf *dom)
{
    for (;;) {
        a->p = mime_skip_cfws(a->p, a->end, NULL, NULL);
        const char *s = a->p;
        if (a->p < a->end && *a->p == '[') {
            while (a->p < a->end && *a->p != ']')
                a->p += (*a->p == '\\' && a->end - a->p >= 2) ? 2 : 1;
            if (a->p < a->end)
                a->p++;
        } else {
            while (a->p < a->end && is_atext((unsigned char)*a->p))
                a->p++;
        }
        if (a->p == s)
            return;
        buf_append(dom, s, (size_t)(a->p - s));
        const char *q = mime_skip_cfws(a->p, a->end, NULL, NULL);
        if (q >= a->end || *q != '.')
            return; /* a trailing comment is the caller's (a name) */
        buf_append(dom, ".", 1);
        a->p = q + 1;
    }
}

/* At '<': [obs-route] addr-spec '>'. */
static void read_angle(struct addrp *a, const struct buf *name)
{
    struct buf *route = &a->s[S_ROUTE], *local = &a->s[S_LOCAL], *dom = &a->s[S_DOMAIN];
    buf_reset(route);
    buf_reset(local);
    buf_reset(dom);
    a->p = mime_skip_cfws(a->p + 1, a->end, NULL, NULL);
    if (a->p < a->end && *a->p == '@') {
        while (a->p < a->end && *a->p == '@') {
            buf_append(route, "@", 1);
            a->p++;
            read_domain(a, route);
            a->p = mime_skip_cfws(a->p, a->end, NULL, NULL);
            if (a->p >= a->end || *a->p != ',')
                break;
            a->p = mime_skip_cfws(a->p + 1, a->end, NULL, NULL);
            if (a->p < a->end && *a->p == '@')
                buf_append(route, ",", 1);
        }
        if (a->p < a->end && *a->p == ':')
            a->p++;
    }
    read_words(a, NULL, local);
    if (a->p < a->end && *a->p == '@') {
        a->p++;
        read_domain(a, dom);
    }
    a->p = mime_skip_cfws(a->p, a->end, NULL, NULL);
    while (a->p < a->end && *a->p != '>' && *a->p != ',')
        a->p++;
    if (a->p < a->end && *a->p == '>')
        a->p++;
    put_addr(a, name, route, local, "MISSING_MAILBOX", dom, "MISSING_DOMAIN");
}

static void read_list(struct addrp *a, bool in_group);

/* One address or group; returns true for a group (after which a missing
 * ',' is forgiven: "g: a@b; h: c@d;"). */
static bool read_address(struct addrp *a, bool in_group)
{
    struct buf *name = &a->s[S_NAME], *local = &a->s[S_LOCAL], *dom = &a->s[S_DOMAIN];
    buf_reset(name);
    buf_reset(local);
    size_t n = read_words(a, name, local);
    char c = a->p < a->end ? *a->p : '\0';
    if (c == '<') {
        read_angle(a, name);
        return false;
    }
    if (c == ':' && !in_group && n > 0) {
        /* group: (NIL NIL "name" NIL) members... (NIL NIL NIL NIL) */
        put_addr(a, NULL, NULL, name, NULL, NULL, NULL);
        a->p++;
        read_list(a, true);
        if (a->p < a->end && *a->p == ';')
            a->p++;
        put_addr(a, NULL, NULL, NULL, NULL, NULL, NULL);
        return true;
    }
    if (n == 0 && c != '@')
        return false;
    buf_reset(dom);
    if (c == '@') {
        a->p++;
        read_domain(a, dom);
    }
    const char *comment = NULL;
    size_t comment_len = 0;
    a->p = mime_skip_cfws(a->p, a->end, &comment, &comment_len);
    buf_reset(name);
    for (size_t i = 0; comment != NULL && i < comment_len; i++) {
        if (comment[i] == '\\' && i + 1 < comment_len)
            i++;
        buf_append(name, comment + i, 1);
    }
    put_addr(a, name, NULL, local, "MISSING_MAILBOX", dom, "MISSING_DOMAIN");
    return false;
}

/* Skips what cannot be parsed, up to the next ',' (or ';' ending a group). */
static void skip_junk(struct addrp *a, bool in_group)
{
    while (a->p < a->end && *a->p != ',' && !(in_group && *a->p == ';')) {
        if (*a->p == '"') {
            a->p++;
            while (a->p < a->end && *a->p != '"')
                a->p += (*a->p == '\\' && a->end - a->p >= 2) ? 2 : 1;
            if (a->p < a->end)
                a->p++;
        } else if (*a->p == '(') {
            a->p = mime_skip_cfws(a->p, a->end, NULL, NULL);
        } else {
            a->p++;
        }
    }
}

static void read_list(struct addrp *a, bool in_group)
{
    for (;;) {
        a->p = mime_skip_cfws(a->p, a->end, NULL, NULL);
        if (a->p >= a->end || (in_group && *a->p == ';'))
            return;
        if (*a->p == ',') {
            a->p++;
            continue;
        }
        bool group = read_address(a, in_group);
        a->p = mime_skip_cfws(a->p, a->end, NULL, NULL);
        if (a->p >= a->end || (in_group && *a->p == ';'))
            return;
        if (*a->p != ',' && !group)
            skip_junk(a, in_group);
    }
}

/* Writes the address list of field r as "(" 1*address ")" and returns true,
 * or writes nothing and returns false if r is absent or has no address. */
static bool put_addr_list(struct mime_msg *m, const struct mime_range *r, struct buf *out)
{
    if (!r->set)
        return false;
    const char *v = mime_unfold(m->data + r->off, r->len, &m->tmp);
    size_t mark = out->len;
    struct addrp a = {.p = v, .end = v + m->tmp.len, .out = out, .s = m->scratch};
    buf_append(out, "(", 1);
    read_list(&a, false);
    if (a.count == 0) {
        out->len = mark;
        out->data[mark] = '\0';
        return false;
    }
    buf_append(out, ")", 1);
    return true;
}

/* ---- ENVELOPE ------------------------------------------------------------ */

enum {
    E_DATE,
    E_SUBJECT,
    E_FROM,
    E_SENDER,
    E_REPLY_TO,
    E_TO,
    E_CC,
    E_BCC,
    E_IN_REPLY_TO,
    E_MESSAGE_ID,
    E_N
};

static void put_envelope(struct mime_msg *m, size_t start, size_t end, struct buf *out)
{
    static const char *const names[E_N] = {"date", "subject", "from", "sender",      "reply-to",
                                           "to",   "cc",      "bcc",  "in-reply-to", "message-id"};
    struct mime_range r[E_N];
    memset(r, 0, sizeof(r));
    struct mime_field f;
    size_t pos = start;
    while (mime_field_next(m->data, &pos, end, &f)) {
        for (size_t k = 0; k < E_N; k++) {
            if (!r[k].set && mime_field_is(m->data, &f, names[k])) {
                r[k].off = f.value;
                r[k].len = f.value_end - f.value;
                r[k].set = true;
                break;
            }
        }
    }
    buf_append(out, "(", 1);
    mime_put_nstring(out, &r[E_DATE], m->data, &m->tmp);
    buf_append(out, " ", 1);
    mime_put_nstring(out, &r[E_SUBJECT], m->data, &m->tmp);
    for (size_t k = E_FROM; k <= E_BCC; k++) {
        buf_append(out, " ", 1);
        if (put_addr_list(m, &r[k], out))
            continue;
        /* RFC 3501: sender and reply-to absent or empty are from */
        if ((k == E_SENDER || k == E_REPLY_TO) && put_addr_list(m, &r[E_FROM], out))
            continue;
        buf_puts(out, "NIL");
    }
    buf_append(out, " ", 1);
    mime_put_nstring(out, &r[E_IN_REPLY_TO], m->data, &m->tmp);
    buf_append(out, " ", 1);
    mime_put_nstring(out, &r[E_MESSAGE_ID], m->data, &m->tmp);
    buf_append(out, ")", 1);
}

void mime_envelope(struct mime_msg *m, struct buf *out)
{
    size_t he, bs;
    if (m->parsed)
        he = m->nodes[0].hdr_end;
    else
        mime_header_bounds(m->data, 0, m->len, &he, &bs);
    put_envelope(m, 0, he, out);
}

/* ---- BODYSTRUCTURE ------------------------------------------------------- */

/* "name*", "name*N" or "name*N*" (RFC 2231 3, 4): the base name's length,
 * the section (-1 for none) and whether the value is extended. */
static bool split_2231(const char *n, size_t len, size_t *base_r, long *sec_r, bool *ext_r)
{
    const char *star = memchr(n, '*', len), *end = n + len;
    if (star == NULL || star == n)
        return false;
    *base_r = (size_t)(star - n);
    const char *q = star + 1, *ds = q;
    if (q == end) {
        *sec_r = -1;
        *ext_r = true;
        return true;
    }
    long v = 0;
    while (q < end && *q >= '0' && *q <= '9' && q - ds < 4)
        v = v * 10 + (*q++ - '0');
    if (q == ds || (q - ds > 1 && *ds == '0'))
        return false;
    *sec_r = v;
    *ext_r = q < end && *q == '*';
    return q + (*ext_r ? 1 : 0) == end;
}

/* Appends a plain (not extended) section to an extended value: %-encoded
 * where attribute-char does not allow the octet (RFC 2231 7). */
static void put_pct(struct buf *b, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (mime_is_token(c) && c != '*' && c != '\'' && c != '%')
            buf_append(b, s + i, 1);
        else
            buf_printf(b, "%%%02X", c);
    }
}

/* Section `sec` of base name [base, base + blen) among the parameters. */
static const struct mime_param *find_section(const struct mime_ctype *ct, const struct buf *sb,
                                             const char *base, size_t blen, long sec, bool *ext_r)
{
    for (size_t k = 0; k < ct->n_params; k++) {
        const struct mime_param *pa = &ct->params[k];
        const char *name = sb->data + pa->name;
        size_t kb;
        long ks;
        if (split_2231(name, pa->name_len, &kb, &ks, ext_r) && ks == sec && kb == blen &&
            strncasecmp(name, base, blen) == 0)
            return pa;
    }
    return NULL;
}

static void put_params(struct mime_msg *m, const struct mime_ctype *ct, bool text, struct buf *out)
{
    const struct buf *sb = &m->sb;
    bool any = false, charset = false;
    for (size_t i = 0; i < ct->n_params; i++) {
        const struct mime_param *pa = &ct->params[i];
        const char *name = sb->data + pa->name;
        const char *value = sb->data + pa->value;
        size_t name_len = pa->name_len, value_len = pa->value_len, base;
        long sec;
        bool ext;
        struct buf *nb = &m->scratch[S_NAME], *vb = &m->scratch[S_LOCAL];
        if (split_2231(name, name_len, &base, &sec, &ext) && sec >= 0) {
            /* continuations: written once, where section 0 is */
            bool ext0;
            const struct mime_param *first = find_section(ct, sb, name, base, 0, &ext0);
            if (first != pa)
                continue;
            buf_reset(nb);
            buf_reset(vb);
            buf_append(vb, "", 0); /* allocated even if every section is empty */
            buf_append(nb, name, base);
            if (ext0)
                buf_append(nb, "*", 1);
            for (long s = 0; s < 1000; s++) {
                bool e;
                const struct mime_param *q = find_section(ct, sb, name, base, s, &e);
                if (q == NULL)
                    break;
                if (ext0 && !e)
                    put_pct(vb, sb->data + q->value, q->value_len);
                else
                    buf_append(vb, sb->data + q->value, q->value_len);
            }
            name = nb->data;
            name_len = nb->len;
            value = vb->data;
            value_len = vb->len;
        }
        buf_puts(out, any ? " " : "(");
        any = true;
        mime_put_upper(out, name, name_len);
        buf_append(out, " ", 1);
        mime_put_string(out, value, value_len);
        charset = charset || mime_eq(name, name_len, "charset");
    }
    if (text && !charset) {
        buf_puts(out, any ? " " : "(");
        buf_puts(out, "\"CHARSET\" \"US-ASCII\"");
        any = true;
    }
    buf_puts(out, any ? ")" : "NIL");
}

static void put_disposition(struct mime_msg *m, const struct mime_node *n, struct buf *out)
{
    const char *t;
    size_t tl = 0;
    if (n->cdisp.set) {
        buf_reset(&m->sb);
        mime_disp_parse(m->data + n->cdisp.off, n->cdisp.len, &t, &tl, m->ct, &m->sb);
    }
    if (tl == 0) {
        buf_puts(out, "NIL");
        return;
    }
    buf_append(out, "(", 1);
    mime_put_upper(out, t, tl);
    buf_append(out, " ", 1);
    put_params(m, m->ct, false, out);
    buf_append(out, ")", 1);
}

static void put_language(struct mime_msg *m, const struct mime_node *n, struct buf *out)
{
    bool any = false;
    if (n->clang.set) {
        const char *p = m->data + n->clang.off, *end = p + n->clang.len;
        while (p < end) {
            p = mime_skip_cfws(p, end, NULL, NULL);
            const char *t = p;
            while (p < end && mime_is_token((unsigned char)*p))
                p++;
            if (p > t) {
                buf_puts(out, any ? " " : "(");
                any = true;
                mime_put_string(out, t, (size_t)(p - t));
            }
            while (p < end && *p != ',')
                p++;
            if (p < end)
                p++;
        }
    }
    buf_puts(out, any ? ")" : "NIL");
}

static void put_ext(struct mime_msg *m, const struct mime_node *n, struct buf *out)
{
    buf_append(out, " ", 1);
    put_disposition(m, n, out);
    buf_append(out, " ", 1);
    put_language(m, n, out);
    buf_append(out, " ", 1);
    mime_put_nstring(out, &n->cloc, m->data, &m->tmp);
}

static size_t count_lines(const char *p, size_t len)
{
    size_t n = 0;
    const char *end = p + len;
    while (p < end && (p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        n++;
        p++;
    }
    return n;
}

static void put_encoding(struct mime_msg *m, const struct mime_node *n, struct buf *out)
{
    const char *t = NULL;
    size_t tl = 0;
    if (n->cte.set) {
        const char *p = m->data + n->cte.off, *end = p + n->cte.len;
        t = p = mime_skip_cfws(p, end, NULL, NULL);
        while (p < end && mime_is_token((unsigned char)*p))
            p++;
        tl = (size_t)(p - t);
    }
    if (tl == 0)
        buf_puts(out, "\"7BIT\"");
    else
        mime_put_upper(out, t, tl);
}

static void put_body(struct mime_msg *m, uint32_t idx, bool ext, struct buf *out)
{
    const struct mime_node *n = &m->nodes[idx];
    struct mime_ctype *ct = m->ct;
    buf_append(out, "(", 1);
    if (n->kind == MIME_MULTIPART) {
        if (n->n_children == 0)
            buf_printf(out,
                       "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 0 0%s)",
                       ext ? " NIL NIL NIL NIL" : "");
        for (uint32_t c = n->first_child; c != MIME_NONE; c = m->nodes[c].next)
            put_body(m, c, ext, out);
        ct->valid = false;
        ct->n_params = 0;
        buf_reset(&m->sb);
        if (n->ctype.set)
            mime_ctype_parse(m->data + n->ctype.off, n->ctype.len, ct, &m->sb);
        buf_append(out, " ", 1);
        if (n->gsub_len > 0) /* GMime's subtype */
            mime_put_upper(out, m->strs.data + n->gsub, n->gsub_len);
        else if (ct->valid)
            mime_put_upper(out, ct->sub, ct->sub_len);
        else
            buf_puts(out, "\"MIXED\"");
        if (!ct->valid)
            ct->n_params = 0;
        if (ext) {
            buf_append(out, " ", 1);
            put_params(m, ct, false, out);
            put_ext(m, n, out);
        }
        buf_append(out, ")", 1);
        return;
    }
    ct->valid = false;
    ct->n_params = 0;
    if (n->ctype.set) {
        buf_reset(&m->sb);
        mime_ctype_parse(m->data + n->ctype.off, n->ctype.len, ct, &m->sb);
    }
    const char *type = "TEXT", *sub = "PLAIN";
    size_t tl = 4, sl = 5;
    if (n->kind == MIME_MESSAGE) {
        type = "MESSAGE", sub = "RFC822", tl = 7, sl = 6;
    } else if (n->kind == MIME_OPAQUE ||
               (ct->valid && (mime_eq(ct->type, ct->type_len, "multipart") ||
                              (mime_eq(ct->type, ct->type_len, "message") &&
                               mime_eq(ct->sub, ct->sub_len, "rfc822"))))) {
        type = "APPLICATION", sub = "OCTET-STREAM", tl = 11, sl = 12;
    } else if (ct->valid && n->gtype_len > 0) { /* GMime's media type */
        type = m->strs.data + n->gtype, sub = m->strs.data + n->gsub;
        tl = n->gtype_len, sl = n->gsub_len;
    } else if (ct->valid) {
        type = ct->type, sub = ct->sub, tl = ct->type_len, sl = ct->sub_len;
    }
    bool text = mime_eq(type, tl, "text");
    mime_put_upper(out, type, tl);
    buf_append(out, " ", 1);
    mime_put_upper(out, sub, sl);
    buf_append(out, " ", 1);
    if (!ct->valid)
        ct->n_params = 0;
    put_params(m, ct, text, out);
    buf_append(out, " ", 1);
    mime_put_nstring(out, &n->cid, m->data, &m->tmp);
    buf_append(out, " ", 1);
    mime_put_nstring(out, &n->cdesc, m->data, &m->tmp);
    buf_append(out, " ", 1);
    put_encoding(m, n, out);
    size_t size = n->body_end - n->body_start;
    buf_printf(out, " %zu", size);
    if (n->kind == MIME_MESSAGE) {
        const struct mime_node *e = &m->nodes[n->first_child];
        buf_append(out, " ", 1);
        put_envelope(m, e->hdr_start, e->hdr_end, out);
        buf_append(out, " ", 1);
        put_body(m, n->first_child, ext, out);
    }
    if (n->kind == MIME_MESSAGE || text)
        buf_printf(out, " %zu", count_lines(m->data + n->body_start, size));
    if (ext) {
        buf_append(out, " ", 1); /* body-fld-md5: Content-MD5 as sent (RFC 1864) */
        mime_put_nstring(out, &n->cmd5, m->data, &m->tmp);
        put_ext(m, n, out);
    }
    buf_append(out, ")", 1);
}

void mime_bodystructure(struct mime_msg *m, bool extensible, struct buf *out)
{
    mime_structure(m);
    put_body(m, 0, extensible, out);
}
