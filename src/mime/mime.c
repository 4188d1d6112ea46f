/*
 * mime.c — the MIME structure of a message and its body sections; see
 * mime.h (what GMime decides and what not) and mime_private.h.
 *
 * The tree is GMime's: gm_structure() runs GMimeParser over the caller's
 * octets (no copy) and walks the objects it built, in document order,
 * with a cursor over the octets. GMime gives anchors: each header field's
 * offset, each leaf's content substream. The walk fills in what GMime
 * does not keep: a part starts after the delimiter line before its first
 * anchor; a header ends at its blank line (or is cut by a delimiter line:
 * then the part's body is empty); a multipart's or message/rfc822's body
 * ends before the line end of the delimiter that ends it (RFC 2046 5.1.1).
 * Delimiter lines are matched by GMime's rule (is_delimiter), innermost
 * boundary first; an outer boundary ends every inner part (a missing close
 * delimiter). The limits (MIME_DEPTH_MAX, MIME_PARTS_MAX) are applied in
 * the walk; GMime's objects are freed as soon as the node array is built.
 *
 * scan_structure() is the line scanner for messages GMime cannot parse in
 * linear time (more than MIME_GMIME_NEST_MAX containers): one pass over
 * the lines with the same delimiter rule, the same limits and the same
 * node array; its work is linear in the message size times the (bounded)
 * number of open boundaries.
 *
 * The structure is built lazily: ENVELOPE and HEADER-only fetches read the
 * top header only.
 */
#include "mime/mime_private.h"

#include <string.h>

#include <gmime/gmime.h>

#define SECTION_PATH_MAX  128  /* numbers in a section spec (deeper: no such part) */
#define SECTION_NAMES_MAX 1000 /* names in a HEADER.FIELDS list */

static bool mime_initialized;

void mime_init(void)
{
    if (mime_initialized)
        return;
    mime_initialized = true;
    g_mime_init();
}

struct mime_msg *mime_parse(const char *data, size_t len)
{
    mime_init();
    struct mime_msg *m = xmalloc(sizeof(*m));
    m->data = data != NULL ? data : "";
    m->len = data != NULL ? len : 0;
    buf_init(&m->tmp, 0);
    buf_init(&m->sb, 0);
    buf_init(&m->strs, 0);
    for (size_t i = 0; i < ARRAY_SIZE(m->scratch); i++)
        buf_init(&m->scratch[i], 0);
    m->ct = xmalloc(sizeof(*m->ct));
    return m;
}

void mime_free(struct mime_msg **mp)
{
    struct mime_msg *m = *mp;
    if (m == NULL)
        return;
    buf_free(&m->tmp);
    buf_free(&m->sb);
    buf_free(&m->strs);
    for (size_t i = 0; i < ARRAY_SIZE(m->scratch); i++)
        buf_free(&m->scratch[i]);
    free(m->ct);
    free(m->nodes);
    xfree(mp);
}

/* ---- lines and delimiters ----------------------------------------------- */

static size_t line_after(const char *d, size_t pos, size_t end)
{
    const char *nl = memchr(d + pos, '\n', end - pos);
    return nl == NULL ? end : (size_t)(nl - d) + 1;
}

static bool line_blank(const char *d, size_t pos, size_t end)
{
    return (pos < end && d[pos] == '\n') ||
           (end - pos >= 2 && d[pos] == '\r' && d[pos + 1] == '\n');
}

void mime_header_bounds(const char *d, size_t pos, size_t end, size_t *hdr_end_r,
                        size_t *body_start_r)
{
    while (pos < end && !line_blank(d, pos, end))
        pos = line_after(d, pos, end);
    *hdr_end_r = pos;
    *body_start_r = pos < end ? line_after(d, pos, end) : end;
}

/* Where a scan stopped: at the start of a delimiter line of open boundary
 * `which` (close: a "--b--" line), or nowhere (which < 0). */
struct stop {
    size_t at;
    int which;
    bool close;
};

struct parser {
    struct mime_msg *m;
    const char *d;
    size_t len;
    char *bnd[MIME_DEPTH_MAX + 1];
    size_t blen[MIME_DEPTH_MAX + 1];
    int nb;
    struct mime_ctype ct; /* scratch (line scanner): used before any recursion */
    struct buf sb;
};

static void push_boundary(struct parser *p, const char *b, size_t len)
{
    ASSERT(p->nb < (int)ARRAY_SIZE(p->bnd));
    p->bnd[p->nb] = xstrndup(b, len);
    p->blen[p->nb] = len;
    p->nb++;
}

static void pop_boundary(struct parser *p)
{
    p->nb--;
    xfree(&p->bnd[p->nb]);
}

static bool lwsp_only(const char *s, const char *end)
{
    for (; s < end; s++)
        if (*s != ' ' && *s != '\t' && *s != '\r')
            return false;
    return true;
}

/* GMime's rule (gmime-parser.c check_boundary, RFC 2046 5.1.1's grammar):
 * a delimiter line is "--" boundary, a close delimiter "--" boundary "--",
 * each followed by nothing but blanks to the line end; the open boundaries
 * are tried innermost first, the close form before the plain one. (Dovecot
 * matches a prefix instead: a line "--bX" ends a part there, not here.) */
static bool is_delimiter(const struct parser *p, size_t pos, struct stop *st)
{
    const char *d = p->d;
    if (p->nb == 0 || p->len - pos < 2 || d[pos] != '-' || d[pos + 1] != '-')
        return false;
    const char *nl = memchr(d + pos, '\n', p->len - pos);
    const char *eol = nl != NULL ? nl : d + p->len, *s = d + pos + 2;
    for (int i = p->nb - 1; i >= 0; i--) {
        size_t bl = p->blen[i];
        if ((size_t)(eol - s) < bl || memcmp(s, p->bnd[i], bl) != 0)
            continue;
        const char *q = s + bl;
        bool close = eol - q >= 2 && q[0] == '-' && q[1] == '-' && lwsp_only(q + 2, eol);
        if (close || lwsp_only(q, eol)) {
            st->at = pos;
            st->which = i;
            st->close = close;
            return true;
        }
    }
    return false;
}

/* From pos (a line start), the first delimiter line of an open boundary
 * that starts before limit. Only lines that start with '-' can be one:
 * memchr for '-' skips base64 and most text at memory speed. */
static struct stop scan_to_delimiter(const struct parser *p, size_t pos, size_t limit)
{
    struct stop st = {.at = p->len, .which = -1};
    if (limit > p->len)
        limit = p->len;
    if (p->nb == 0 || pos >= limit)
        return st;
    if (is_delimiter(p, pos, &st))
        return st;
    const char *d = p->d, *end = d + limit, *q = d + pos + 1;
    while (q < end && (q = memchr(q, '-', (size_t)(end - q))) != NULL) {
        if (q[-1] == '\n' && is_delimiter(p, (size_t)(q - d), &st))
            return st;
        q++;
    }
    st.at = p->len;
    st.which = -1;
    return st;
}

/* The end of a body that a delimiter line ends: without the line end
 * before it (it belongs to the delimiter, RFC 2046 5.1.1), never before
 * min. */
static size_t cut_eol(const struct parser *p, const struct stop *st, size_t min)
{
    if (st->which < 0)
        return p->len;
    size_t e = st->at;
    if (e > min && p->d[e - 1] == '\n') {
        e--;
        if (e > min && p->d[e - 1] == '\r')
            e--;
    }
    return e;
}

/* A part whose body is empty because the delimiter line follows its blank
 * line at once ("field CRLF CRLF --b"): that CRLF is the delimiter's (RFC
 * 2046 5.1.1), so the part is its header fields only, without a blank line
 * (body-part := MIME-part-headers [CRLF *OCTET]); its MIME header and its
 * empty body end where the delimiter's line end starts. */
static void header_only(const struct parser *p, struct mime_node *n, const struct stop *st)
{
    if (st->which >= 0 && st->at == n->body_start && n->body_start > n->hdr_end)
        n->body_start = n->body_end = cut_eol(p, st, n->hdr_end);
}

static uint32_t node_new(struct parser *p)
{
    struct mime_msg *m = p->m;
    if (m->n_nodes >= MIME_PARTS_MAX)
        return MIME_NONE;
    if ((m->n_nodes & (m->n_nodes - 1)) == 0) { /* 0, 1, 2, 4, ...: grow */
        size_t cap = m->n_nodes == 0 ? 4 : 2 * (size_t)m->n_nodes;
        m->nodes = xrealloc(m->nodes, cap * sizeof(*m->nodes));
    }
    uint32_t i = m->n_nodes++;
    struct mime_node *n = &m->nodes[i];
    memset(n, 0, sizeof(*n));
    n->first_child = n->next = MIME_NONE;
    return i;
}

static void link_child(struct mime_msg *m, uint32_t parent, uint32_t *last, uint32_t c)
{
    if (*last == MIME_NONE)
        m->nodes[parent].first_child = c;
    else
        m->nodes[*last].next = c;
    *last = c;
    m->nodes[parent].n_children++;
}

/* The Content-* field a header name (after "content-") is kept in. */
static struct mime_range *content_field(struct mime_node *n, const char *nm, size_t nl)
{
    return mime_eq(nm, nl, "type")                ? &n->ctype
           : mime_eq(nm, nl, "transfer-encoding") ? &n->cte
           : mime_eq(nm, nl, "id")                ? &n->cid
           : mime_eq(nm, nl, "description")       ? &n->cdesc
           : mime_eq(nm, nl, "disposition")       ? &n->cdisp
           : mime_eq(nm, nl, "language")          ? &n->clang
           : mime_eq(nm, nl, "location")          ? &n->cloc
           : mime_eq(nm, nl, "md5")               ? &n->cmd5
                                                  : NULL;
}

/* The header of node idx from `from` (its start, or past the fields
 * already known) to the blank line: sets hdr_end and body_start. Returns
 * true if a delimiter line (in *st) ended it first: then the header ends
 * before that line's line end and the body is empty. */
static bool header_end(struct parser *p, uint32_t idx, size_t from, struct stop *st)
{
    struct mime_node *n = &p->m->nodes[idx];
    const char *d = p->d;
    size_t pos = from;
    for (;;) {
        if (pos >= p->len) {
            n->hdr_end = n->body_start = p->len;
            return false;
        }
        if (line_blank(d, pos, p->len)) {
            n->hdr_end = pos;
            n->body_start = line_after(d, pos, p->len);
            return false;
        }
        if (p->nb > 0 && is_delimiter(p, pos, st)) {
            n->hdr_end = n->body_start = cut_eol(p, st, n->hdr_start);
            return true;
        }
        pos = line_after(d, pos, p->len);
    }
}

/* message/rfc822 can be parsed only if not transfer-encoded (RFC 2046
 * 5.2.1 allows 7bit, 8bit and binary). */
static bool cte_identity(const struct parser *p, const struct mime_node *n)
{
    if (!n->cte.set)
        return true;
    const char *s = p->d + n->cte.off, *end = s + n->cte.len;
    s = mime_skip_cfws(s, end, NULL, NULL);
    const char *t = s;
    while (s < end && mime_is_token((unsigned char)*s))
        s++;
    size_t tl = (size_t)(s - t);
    return tl == 0 || mime_eq(t, tl, "7bit") || mime_eq(t, tl, "8bit") || mime_eq(t, tl, "binary");
}

/* A multipart or message node whose last child's header ended at the line
 * end before the delimiter keeps that line end: the parent's body must
 * still contain the child. */
static void contain_last_child(struct mime_msg *m, uint32_t idx)
{
    struct mime_node *n = &m->nodes[idx];
    uint32_t last = n->first_child;
    while (last != MIME_NONE && m->nodes[last].next != MIME_NONE)
        last = m->nodes[last].next;
    if (last != MIME_NONE && m->nodes[last].body_end > n->body_end)
        n->body_end = m->nodes[last].body_end;
}

/* ---- the structure from GMime ------------------------------------------- */

static size_t gm_offset(GMimeHeader *h, size_t len)
{
    gint64 o = g_mime_header_get_offset(h);
    return o < 0 || (guint64)o >= len ? SIZE_MAX : (size_t)o;
}

/* The header fields GMime gave object o: the first and last field's
 * offsets (min/max into *first_r, *last_r), and for node idx (unless
 * MIME_NONE) the Content-* fields' values as sent, located by GMime's
 * offset and read from the octets. Of a repeated field the last one is
 * kept, as GMime's objects keep it (a second Content-Type decides the
 * part's type there, so it must decide it here). */
static void gm_fields(struct parser *p, uint32_t idx, GMimeObject *o, size_t *first_r,
                      size_t *last_r)
{
    GMimeHeaderList *hl = o != NULL ? g_mime_object_get_header_list(o) : NULL;
    int count = hl != NULL ? g_mime_header_list_get_count(hl) : 0;
    for (int i = 0; i < count; i++) {
        GMimeHeader *h = g_mime_header_list_get_header_at(hl, i);
        size_t off = gm_offset(h, p->len);
        if (off == SIZE_MAX)
            continue;
        if (*first_r == SIZE_MAX || off < *first_r)
            *first_r = off;
        if (*last_r == SIZE_MAX || off > *last_r)
            *last_r = off;
        const char *name = g_mime_header_get_name(h);
        if (idx == MIME_NONE || name == NULL || g_ascii_strncasecmp(name, "content-", 8) != 0)
            continue;
        struct mime_range *r = content_field(&p->m->nodes[idx], name + 8, strlen(name + 8));
        struct mime_field f;
        size_t pos = off;
        if (r == NULL || !mime_field_next(p->d, &pos, p->len, &f))
            continue;
        r->off = f.value;
        r->len = f.value_end - f.value;
        r->set = true;
    }
}

/* A leaf's content as GMime located it: a substream of the message
 * (the persistent stream), [*start_r, *end_r). */
static bool gm_content(GMimeObject *o, size_t len, size_t *start_r, size_t *end_r)
{
    if (o == NULL || !GMIME_IS_PART(o))
        return false;
    GMimeDataWrapper *w = g_mime_part_get_content(GMIME_PART(o));
    GMimeStream *s = w != NULL ? g_mime_data_wrapper_get_stream(w) : NULL;
    if (s == NULL || s->bound_start < 0 || (guint64)s->bound_start > len)
        return false;
    gint64 end = s->bound_end < 0 || (guint64)s->bound_end > len ? (gint64)len : s->bound_end;
    if (end < s->bound_start)
        return false;
    *start_r = (size_t)s->bound_start;
    *end_r = (size_t)end;
    return true;
}

/* Where object o's octets are known to start: its first header field or
 * its content; SIZE_MAX if GMime gave neither. */
static size_t gm_anchor(struct parser *p, GMimeObject *o)
{
    size_t first = SIZE_MAX, last = SIZE_MAX, cs, ce;
    while (o != NULL) {
        gm_fields(p, MIME_NONE, o, &first, &last);
        if (GMIME_IS_MESSAGE_PART(o))
            o = (GMimeObject *)g_mime_message_part_get_message(GMIME_MESSAGE_PART(o));
        else if (GMIME_IS_MESSAGE(o))
            o = g_mime_message_get_mime_part(GMIME_MESSAGE(o));
        else
            break;
    }
    if (gm_content(o, p->len, &cs, &ce) && cs < first)
        first = cs;
    return first;
}

static void gm_type(struct mime_msg *m, uint32_t idx, GMimeObject *o)
{
    GMimeContentType *ct = o != NULL ? g_mime_object_get_content_type(o) : NULL;
    const char *t = ct != NULL ? g_mime_content_type_get_media_type(ct) : NULL;
    const char *s = ct != NULL ? g_mime_content_type_get_media_subtype(ct) : NULL;
    if (t == NULL || s == NULL || *t == '\0' || *s == '\0')
        return;
    struct mime_node *n = &m->nodes[idx];
    n->gtype = m->strs.len;
    n->gtype_len = strlen(t);
    buf_append(&m->strs, t, n->gtype_len);
    n->gsub = m->strs.len;
    n->gsub_len = strlen(s);
    buf_append(&m->strs, s, n->gsub_len);
}

/* The blank line before a body at cs, if there is one: where the header
 * [start, ...) ends. */
static size_t blank_before(const char *d, size_t start, size_t cs)
{
    if (cs >= start + 2 && d[cs - 1] == '\n' && d[cs - 2] == '\r' &&
        (cs - 2 == start || d[cs - 3] == '\n'))
        return cs - 2;
    if (cs >= start + 1 && d[cs - 1] == '\n' && (cs - 1 == start || d[cs - 2] == '\n'))
        return cs - 1;
    return cs;
}

static struct stop gm_multipart(struct parser *p, uint32_t idx, GMimeMultipart *mp, int depth);

/* GMime makes a GMimeMessagePart of message/rfc822, message/news and
 * message/global; only the first (or a digest's default) is structured. */
static bool gm_rfc822(const struct mime_msg *m, const struct mime_node *n)
{
    return n->gsub_len == 0 || mime_eq(m->strs.data + n->gsub, n->gsub_len, "rfc822");
}

/* Node idx is GMime's object o (NULL: an empty part), with the header
 * fields of hdrs too (the GMimeMessage whose body o is), starting at
 * start. Returns where the scan for the end of its body stopped. */
static struct stop gm_part(struct parser *p, uint32_t idx, GMimeObject *o, GMimeObject *hdrs,
                           size_t start, int depth)
{
    struct mime_msg *m = p->m;
    struct stop st = {.at = p->len, .which = -1};
    size_t first = SIZE_MAX, last = SIZE_MAX, cs = 0, ce = 0;
    m->nodes[idx].hdr_start = start;
    gm_fields(p, idx, hdrs, &first, &last);
    gm_fields(p, idx, o, &first, &last);
    gm_type(m, idx, o);
    bool content = gm_content(o, p->len, &cs, &ce) && cs >= start, cut = false;
    struct mime_node *n = &m->nodes[idx];
    if (content) {
        n->body_start = cs;
        n->hdr_end = blank_before(p->d, start, cs);
    } else {
        size_t from = start;
        struct mime_field f;
        if (last != SIZE_MAX && last >= start && mime_field_next(p->d, &last, p->len, &f))
            from = last; /* past the last field GMime saw */
        cut = header_end(p, idx, from, &st);
    }
    if (o != NULL && GMIME_IS_MULTIPART(o))
        n->kind = depth >= MIME_DEPTH_MAX ? MIME_OPAQUE : MIME_MULTIPART;
    else if (o != NULL && GMIME_IS_MESSAGE_PART(o) && !gm_rfc822(m, n))
        n->kind = MIME_LEAF; /* message/global, message/news: RFC 3501's grammar
                                gives only MESSAGE/RFC822 an envelope and a body */
    else if (o != NULL && GMIME_IS_MESSAGE_PART(o))
        n->kind =
            depth >= MIME_DEPTH_MAX || cut || !cte_identity(p, n) ? MIME_OPAQUE : MIME_MESSAGE;
    else if (o != NULL && GMIME_IS_PART(o) && n->gtype_len > 0 &&
             (mime_eq(m->strs.data + n->gtype, n->gtype_len, "multipart") ||
              (mime_eq(m->strs.data + n->gtype, n->gtype_len, "message") &&
               mime_eq(m->strs.data + n->gsub, n->gsub_len, "rfc822"))))
        n->kind = MIME_OPAQUE; /* a container GMime kept whole (encoded, too deep) */
    if (cut) {
        n->body_end = n->body_start;
        return st;
    }
    if (n->kind == MIME_MULTIPART) {
        st = gm_multipart(p, idx, GMIME_MULTIPART(o), depth);
    } else if (n->kind == MIME_MESSAGE) {
        GMimeMessage *em = g_mime_message_part_get_message(GMIME_MESSAGE_PART(o));
        uint32_t c = node_new(p), lastc = MIME_NONE;
        n = &m->nodes[idx]; /* node_new may move the array */
        if (c == MIME_NONE) {
            n->kind = MIME_OPAQUE;
            st = scan_to_delimiter(p, n->body_start, p->len);
        } else {
            link_child(m, idx, &lastc, c);
            st = gm_part(p, c, em != NULL ? g_mime_message_get_mime_part(em) : NULL,
                         (GMimeObject *)em, n->body_start, depth + 1);
        }
    } else if (content) {
        /* GMime's content ends before the line end of the delimiter */
        size_t from = ce == 0 || p->d[ce - 1] == '\n' ? ce : line_after(p->d, ce, p->len);
        st = scan_to_delimiter(p, from, p->len);
        /* where the delimiter's line end starts (GMime's end can be an
         * octet short of it: a lone CR in the last line), so the part ends
         * where its parent's scan ends it */
        n->body_end = cut_eol(p, &st, n->body_start);
        header_only(p, n, &st);
        return st;
    } else {
        st = scan_to_delimiter(p, n->body_start, p->len);
    }
    n = &m->nodes[idx];
    n->body_end = cut_eol(p, &st, n->body_start);
    if (n->kind == MIME_LEAF)
        header_only(p, n, &st);
    contain_last_child(m, idx);
    return st;
}

static struct stop gm_multipart(struct parser *p, uint32_t idx, GMimeMultipart *mp, int depth)
{
    struct mime_msg *m = p->m;
    const char *b = g_mime_multipart_get_boundary(mp);
    if (b == NULL) /* no parts: written with one empty text part (mime_imap.c) */
        return scan_to_delimiter(p, m->nodes[idx].body_start, p->len);
    push_boundary(p, b, strlen(b));
    int mine = p->nb - 1, count = g_mime_multipart_get_count(mp);
    uint32_t last = MIME_NONE;
    struct stop st = scan_to_delimiter(p, m->nodes[idx].body_start, p->len); /* the preamble */
    for (int i = 0; st.which == mine && !st.close;) {
        size_t start = line_after(p->d, st.at, p->len);
        GMimeObject *child = i < count ? g_mime_multipart_get_part(mp, i) : NULL;
        /* GMime drops a part with neither header nor content
         * (GMIME_CRIT_PART_WITHOUT_HEADERS_OR_CONTENT): another delimiter
         * line before the next part it kept starts (or, past its last
         * part, any delimiter line does). RFC 2046's grammar allows such
         * a part and Dovecot lists it, so it is listed here too, as an
         * empty part: part numbers agree with Dovecot's. */
        bool dropped = child == NULL;
        if (!dropped) {
            size_t anchor = gm_anchor(p, child);
            if (anchor != SIZE_MAX && start < anchor) {
                struct stop nx = scan_to_delimiter(p, start, anchor);
                dropped = nx.which == mine && !nx.close;
            }
        }
        if (!dropped)
            i++;
        uint32_t c = node_new(p);
        if (c == MIME_NONE) { /* over MIME_PARTS_MAX: not listed */
            st = scan_to_delimiter(p, start, p->len);
            continue;
        }
        link_child(m, idx, &last, c);
        st = gm_part(p, c, dropped ? NULL : child, NULL, start, depth + 1);
    }
    pop_boundary(p);
    if (st.which == mine) /* the close delimiter: the epilogue follows */
        st = scan_to_delimiter(p, line_after(p->d, st.at, p->len), p->len);
    return st;
}

/* Runs GMime's parser over the message without copying it: a memory
 * stream over a GByteArray that borrows the caller's octets (the parser
 * only reads; the array is released without freeing them). With the
 * persistent stream (the default for a seekable stream) every leaf's
 * content is a substream, so its offsets are the message's. */
static void gm_structure(struct mime_msg *m)
{
    GByteArray *arr = g_byte_array_new();
    arr->data = (guint8 *)(uintptr_t)m->data;
    arr->len = (guint)m->len;
    GMimeStream *stream = g_mime_stream_mem_new_with_byte_array(arr);
    g_mime_stream_mem_set_owner(GMIME_STREAM_MEM(stream), FALSE);
    GMimeParser *gp = g_mime_parser_new_with_stream(stream);
    g_mime_parser_set_persist_stream(gp, TRUE);
    g_mime_parser_set_format(gp, GMIME_FORMAT_MESSAGE);
    GMimeMessage *msg = g_mime_parser_construct_message(gp, NULL);

    struct parser p = {.m = m, .d = m->data, .len = m->len};
    uint32_t root = node_new(&p);
    ASSERT(root == 0);
    GMimeObject *body = msg != NULL ? g_mime_message_get_mime_part(msg) : NULL;
    struct stop st = gm_part(&p, root, body, (GMimeObject *)msg, 0, 0);
    ASSERT(st.which < 0 && p.nb == 0);

    if (msg != NULL)
        g_object_unref(msg);
    g_object_unref(gp);
    g_object_unref(stream);
    g_byte_array_free(arr, FALSE); /* the array, not the borrowed octets */
}

/* ---- the line scanner (messages GMime cannot parse in linear time) ------ */

/* Reads the header of node idx at pos; records its Content-* fields.
 * Returns true if a delimiter line ended it (in *st) before an empty line. */
static bool parse_header(struct parser *p, uint32_t idx, size_t pos, struct stop *st)
{
    struct mime_node *n = &p->m->nodes[idx];
    const char *d = p->d;
    n->hdr_start = pos;
    bool cut = header_end(p, idx, pos, st);
    size_t fp = n->hdr_start;
    struct mime_field f;
    while (mime_field_next(d, &fp, n->hdr_end, &f)) {
        if (f.name_len < 9 || !mime_eq(d + f.start, 8, "content-"))
            continue;
        struct mime_range *r = content_field(n, d + f.start + 8, f.name_len - 8);
        if (r != NULL) { /* the last one, as in GMime's path */
            r->off = f.value;
            r->len = f.value_end - f.value;
            r->set = true;
        }
    }
    return cut;
}

static struct stop parse_part(struct parser *p, uint32_t idx, size_t pos, int depth);

static struct stop parse_multipart(struct parser *p, uint32_t idx, int depth, const char *bnd,
                                   size_t blen, bool digest)
{
    struct mime_msg *m = p->m;
    push_boundary(p, bnd, blen);
    int mine = p->nb - 1;
    uint32_t last = MIME_NONE;
    struct stop st = scan_to_delimiter(p, m->nodes[idx].body_start, p->len); /* the preamble */
    while (st.which == mine && !st.close) {
        size_t start = line_after(p->d, st.at, p->len);
        uint32_t c = node_new(p);
        if (c == MIME_NONE) { /* over MIME_PARTS_MAX: not listed */
            st = scan_to_delimiter(p, start, p->len);
            continue;
        }
        link_child(m, idx, &last, c);
        m->nodes[c].digest_child = digest;
        st = parse_part(p, c, start, depth + 1);
    }
    pop_boundary(p);
    if (st.which == mine) /* the close delimiter: the epilogue follows */
        st = scan_to_delimiter(p, line_after(p->d, st.at, p->len), p->len);
    return st;
}

static struct stop parse_part(struct parser *p, uint32_t idx, size_t pos, int depth)
{
    struct mime_msg *m = p->m;
    struct stop st;
    bool cut = parse_header(p, idx, pos, &st);
    struct mime_node *n = &m->nodes[idx];
    bool multi = false, msg = false, digest = false;
    const char *bnd = NULL;
    size_t blen = 0;
    if (n->ctype.set) {
        buf_reset(&p->sb);
        mime_ctype_parse(p->d + n->ctype.off, n->ctype.len, &p->ct, &p->sb);
        if (p->ct.valid && mime_eq(p->ct.type, p->ct.type_len, "multipart")) {
            multi = true;
            digest = mime_eq(p->ct.sub, p->ct.sub_len, "digest");
            bnd = mime_param_get(&p->ct, &p->sb, "boundary", &blen);
        } else if (p->ct.valid) {
            msg = mime_eq(p->ct.type, p->ct.type_len, "message") &&
                  mime_eq(p->ct.sub, p->ct.sub_len, "rfc822");
        }
    } else {
        msg = n->digest_child;
    }
    if (multi)
        n->kind = depth >= MIME_DEPTH_MAX ? MIME_OPAQUE : MIME_MULTIPART;
    else if (msg)
        n->kind =
            depth >= MIME_DEPTH_MAX || cut || !cte_identity(p, n) ? MIME_OPAQUE : MIME_MESSAGE;
    if (cut) {
        n->body_end = n->body_start;
        return st;
    }
    if (n->kind == MIME_MULTIPART && bnd != NULL) {
        st = parse_multipart(p, idx, depth, bnd, blen, digest);
    } else if (n->kind == MIME_MESSAGE) {
        uint32_t c = node_new(p);
        n = &m->nodes[idx]; /* node_new may move the array */
        if (c == MIME_NONE) {
            n->kind = MIME_OPAQUE;
            st = scan_to_delimiter(p, n->body_start, p->len);
        } else {
            uint32_t last = MIME_NONE;
            link_child(m, idx, &last, c);
            st = parse_part(p, c, n->body_start, depth + 1);
        }
    } else {
        /* a leaf, an opaque part, or a multipart without a boundary (no
         * parts: written with one empty text part, as Dovecot does) */
        st = scan_to_delimiter(p, n->body_start, p->len);
    }
    n = &m->nodes[idx];
    n->body_end = cut_eol(p, &st, n->body_start);
    if (n->kind == MIME_LEAF)
        header_only(p, n, &st);
    contain_last_child(m, idx);
    return st;
}

static void scan_structure(struct mime_msg *m)
{
    struct parser p = {.m = m, .d = m->data, .len = m->len};
    buf_init(&p.sb, 0);
    uint32_t root = node_new(&p);
    ASSERT(root == 0);
    struct stop st = parse_part(&p, root, 0, 0);
    ASSERT(st.which < 0 && p.nb == 0);
    buf_free(&p.sb);
}

/* How many Content-Type fields (anywhere: a line that starts with the
 * name) open a multipart or message part, counted up to max + 1. Each
 * level of nesting needs one, so this bounds the depth GMime would reach. */
static size_t count_containers(const char *d, size_t len, size_t max)
{
    size_t n = 0;
    for (size_t pos = 0; pos < len;) {
        size_t next = line_after(d, pos, len);
        if (next - pos > 12 && (d[pos] == 'c' || d[pos] == 'C') &&
            mime_eq(d + pos, 12, "content-type")) {
            const char *v = d + pos + 12, *end = d + (len - pos - 12 > 1024 ? pos + 1036 : len);
            while (v < end && (*v == ' ' || *v == '\t'))
                v++;
            if (v < end && *v == ':')
                v = mime_skip_cfws(v + 1, end, NULL, NULL);
            size_t rest = (size_t)(end - v);
            if ((rest >= 9 && mime_eq(v, 9, "multipart")) ||
                (rest >= 7 && mime_eq(v, 7, "message")))
                if (++n > max)
                    return n;
        }
        pos = next;
    }
    return n;
}

void mime_structure(struct mime_msg *m)
{
    if (m->parsed)
        return;
    m->by_gmime = m->len <= G_MAXUINT &&
                  count_containers(m->data, m->len, MIME_GMIME_NEST_MAX) <= MIME_GMIME_NEST_MAX;
    if (m->by_gmime)
        gm_structure(m);
    else
        scan_structure(m);
    m->parsed = true;
}

/* ---- sections (RFC 3501 6.4.5) ------------------------------------------ */

enum sec_kind { SEC_BODY, SEC_MIME, SEC_HEADER, SEC_TEXT, SEC_FIELDS, SEC_FIELDS_NOT };

struct section {
    enum sec_kind kind;
    uint32_t path[SECTION_PATH_MAX];
    size_t np;
    bool too_deep;
    struct buf names; /* HEADER.FIELDS: NUL-terminated names, one after another */
    size_t n_names;
    /* a hash of the names by length and first letter, so a long header
     * against a long list costs fields + names, not fields * names */
    uint32_t bucket[64];
    uint32_t *name_off, *name_len, *name_next;
};

static unsigned name_hash(const char *p, size_t len)
{
    unsigned char c = len > 0 ? (unsigned char)p[0] : 0;
    if (c >= 'A' && c <= 'Z')
        c = (unsigned char)(c - 'A' + 'a');
    return (unsigned)(len * 7 + c) % 64;
}

static void index_names(struct section *s)
{
    s->name_off = xcalloc(s->n_names, sizeof(uint32_t));
    s->name_len = xcalloc(s->n_names, sizeof(uint32_t));
    s->name_next = xcalloc(s->n_names, sizeof(uint32_t));
    for (size_t b = 0; b < ARRAY_SIZE(s->bucket); b++)
        s->bucket[b] = UINT32_MAX;
    size_t off = 0;
    for (uint32_t i = 0; i < s->n_names; i++) {
        const char *n = s->names.data + off;
        size_t len = strlen(n);
        unsigned h = name_hash(n, len);
        s->name_off[i] = (uint32_t)off;
        s->name_len[i] = (uint32_t)len;
        s->name_next[i] = s->bucket[h];
        s->bucket[h] = i;
        off += len + 1;
    }
}

static const char *keyword(const char *p, const char *word)
{
    size_t n = strlen(word);
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c >= 'a' && c <= 'z')
            c = (char)(c - 'a' + 'A');
        if (c != word[i])
            return NULL;
    }
    return p + n;
}

/* The list after HEADER.FIELDS[.NOT]: " (" astring *(SP astring) ")". */
static int parse_names(const char *p, struct section *s, const char **error_r)
{
    if (*p != ' ' || p[1] != '(') {
        *error_r = "Missing header field list";
        return -1;
    }
    p += 2;
    for (;;) {
        while (*p == ' ')
            p++;
        if (*p == ')') {
            if (s->n_names == 0) {
                *error_r = "Empty header field list";
                return -1;
            }
            p++;
            break;
        }
        if (++s->n_names > SECTION_NAMES_MAX) {
            *error_r = "Too many header field names";
            return -1;
        }
        if (*p == '"') {
            p++;
            while (*p != '"') {
                if (*p == '\\' && (p[1] == '"' || p[1] == '\\'))
                    p++;
                else if (*p == '\0' || *p == '\\' || *p == '\r' || *p == '\n') {
                    *error_r = "Invalid header field name";
                    return -1;
                }
                buf_append(&s->names, p++, 1);
            }
            p++;
        } else {
            const char *a = p;
            while ((unsigned char)*p > 0x20 && (unsigned char)*p < 0x7f &&
                   strchr("()\"{\\%*", *p) == NULL) /* ATOM-CHAR / "]" */
                p++;
            if (p == a) {
                *error_r = "Invalid header field name";
                return -1;
            }
            buf_append(&s->names, a, (size_t)(p - a));
        }
        buf_append(&s->names, "", 1); /* the NUL between names */
        if (*p != ' ' && *p != ')') {
            *error_r = "Invalid header field list";
            return -1;
        }
    }
    if (*p != '\0') {
        *error_r = "Junk after header field list";
        return -1;
    }
    return 0;
}

static int parse_spec(const char *p, struct section *s, const char **error_r)
{
    s->kind = SEC_BODY;
    if (*p == '\0')
        return 0;
    while (*p >= '0' && *p <= '9') {
        if (*p == '0') {
            *error_r = "Invalid part number";
            return -1;
        }
        uint64_t v = 0;
        while (*p >= '0' && *p <= '9') {
            v = v * 10 + (uint64_t)(*p++ - '0');
            if (v > UINT32_MAX) {
                *error_r = "Invalid part number";
                return -1;
            }
        }
        if (s->np < SECTION_PATH_MAX)
            s->path[s->np++] = (uint32_t)v;
        else
            s->too_deep = true;
        if (*p == '\0')
            return 0;
        if (*p != '.' || p[1] == '\0') {
            *error_r = "Invalid section";
            return -1;
        }
        p++;
    }
    const char *q;
    bool numbered = s->np > 0 || s->too_deep;
    if ((q = keyword(p, "HEADER.FIELDS.NOT")) != NULL) {
        s->kind = SEC_FIELDS_NOT;
        return parse_names(q, s, error_r);
    }
    if ((q = keyword(p, "HEADER.FIELDS")) != NULL) {
        s->kind = SEC_FIELDS;
        return parse_names(q, s, error_r);
    }
    if ((q = keyword(p, "HEADER")) != NULL)
        s->kind = SEC_HEADER;
    else if ((q = keyword(p, "TEXT")) != NULL)
        s->kind = SEC_TEXT;
    else if (numbered && (q = keyword(p, "MIME")) != NULL)
        s->kind = SEC_MIME;
    if (q == NULL || *q != '\0') {
        *error_r = "Invalid section";
        return -1;
    }
    return 0;
}

static bool name_listed(const struct section *s, const char *d, const struct mime_field *f)
{
    const char *name = d + f->start;
    for (uint32_t i = s->bucket[name_hash(name, f->name_len)]; i != UINT32_MAX; i = s->name_next[i])
        if (s->name_len[i] == f->name_len &&
            mime_eq(name, f->name_len, s->names.data + s->name_off[i]))
            return true;
    return false;
}

/* Follows the part numbers: *node_r is the part they name; *synth_r if it
 * is the empty part written for a multipart without parts. 0 or -1. */
static int resolve(struct mime_msg *m, const struct section *s, uint32_t *node_r, bool *synth_r)
{
    uint32_t cur = 0;
    bool in_msg = true; /* cur is a message, whose part 1 may be its body */
    *synth_r = false;
    for (size_t i = 0; i < s->np; i++) {
        if (*synth_r)
            return -1;
        struct mime_node *n = &m->nodes[cur];
        if (i > 0 && n->kind == MIME_MESSAGE) {
            cur = n->first_child;
            n = &m->nodes[cur];
            in_msg = true;
        }
        uint32_t want = s->path[i];
        if (n->kind == MIME_MULTIPART && n->n_children == 0) {
            if (want != 1)
                return -1;
            *synth_r = true;
        } else if (n->kind == MIME_MULTIPART) {
            if (want > n->n_children)
                return -1;
            uint32_t c = n->first_child;
            while (--want > 0)
                c = m->nodes[c].next;
            cur = c;
        } else if (!in_msg || want != 1) {
            return -1;
        }
        in_msg = false;
    }
    *node_r = cur;
    return 0;
}

/* Appends the header fields of [start, end) that are (or are not) listed,
 * then the empty line. */
static void put_fields(const struct mime_msg *m, const struct section *s, size_t start, size_t end,
                       struct buf *out)
{
    struct mime_field f;
    size_t pos = start;
    bool want = s->kind == SEC_FIELDS;
    while (mime_field_next(m->data, &pos, end, &f)) {
        if (name_listed(s, m->data, &f) != want)
            continue;
        buf_append(out, m->data + f.start, f.end - f.start);
        if (m->data[f.end - 1] != '\n')
            buf_append(out, "\r\n", 2);
    }
    buf_append(out, "\r\n", 2);
}

enum mime_section mime_section_locate(struct mime_msg *m, const char *spec, struct buf *out,
                                      size_t *off_r, size_t *len_r, const char **error_r)
{
    struct section s = {.np = 0, .name_off = NULL};
    enum mime_section ret = MIME_SECTION_OK;
    *off_r = 0;
    *len_r = 0;
    buf_init(&s.names, 0);
    if (parse_spec(spec, &s, error_r) < 0) {
        ret = MIME_SECTION_BAD;
        goto done;
    }
    if (s.kind == SEC_BODY && s.np == 0 && !s.too_deep) {
        *len_r = m->len;
        goto done;
    }
    /* the message whose header/text is wanted: [hs, he) header fields,
     * [bs, be) body */
    size_t hs = 0, he, bs, be = m->len;
    uint32_t node = 0;
    bool synth = false;
    if (s.np == 0 && !s.too_deep) {
        mime_header_bounds(m->data, 0, m->len, &he, &bs);
    } else {
        mime_structure(m);
        if (s.too_deep || resolve(m, &s, &node, &synth) < 0) {
            *error_r = "No such message part";
            ret = MIME_SECTION_NONE;
            goto done;
        }
        const struct mime_node *n = &m->nodes[node];
        if (synth) { /* the empty part: at the start of the multipart's body */
            *off_r = n->body_start;
            if (s.kind != SEC_BODY && s.kind != SEC_MIME) {
                *off_r = 0;
                *error_r = "Not a message/rfc822 part";
                ret = MIME_SECTION_NONE;
            }
            goto done;
        }
        if (s.kind == SEC_BODY || s.kind == SEC_MIME) {
            *off_r = s.kind == SEC_BODY ? n->body_start : n->hdr_start;
            *len_r =
                s.kind == SEC_BODY ? n->body_end - n->body_start : n->body_start - n->hdr_start;
            goto done;
        }
        if (n->kind != MIME_MESSAGE) {
            *error_r = "Not a message/rfc822 part";
            ret = MIME_SECTION_NONE;
            goto done;
        }
        n = &m->nodes[n->first_child];
        hs = n->hdr_start;
        he = n->hdr_end;
        bs = n->body_start;
        be = n->body_end;
    }
    if (s.kind == SEC_HEADER) {
        *off_r = hs;
        *len_r = bs - hs;
    } else if (s.kind == SEC_TEXT) {
        *off_r = bs;
        *len_r = be - bs;
    } else {
        *off_r = SIZE_MAX;
        index_names(&s);
        put_fields(m, &s, hs, he, out);
    }
done:
    buf_free(&s.names);
    free(s.name_off);
    free(s.name_len);
    free(s.name_next);
    return ret;
}

enum mime_section mime_section_get(struct mime_msg *m, const char *spec, struct buf *out,
                                   const char **error_r)
{
    size_t off, len;
    enum mime_section r = mime_section_locate(m, spec, out, &off, &len, error_r);
    if (r == MIME_SECTION_OK && off != SIZE_MAX)
        buf_append(out, m->data + off, len);
    return r;
}
