/*
 * imapd_msg — the message commands of a session: FETCH, STORE, SEARCH,
 * COPY/MOVE, EXPUNGE (and their UID forms). See imapd.h.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "imapd/imapd_private.h"

/* ---- helpers -------------------------------------------------------------- */

static int month_of(const char *m)
{
    static const char *const mon[] = {"jan", "feb", "mar", "apr", "may", "jun",
                                      "jul", "aug", "sep", "oct", "nov", "dec"};
    for (int i = 0; i < 12; i++)
        if (strncasecmp(m, mon[i], 3) == 0)
            return i;
    return -1;
}

static int64_t days_from_civil(int y, int m, int d)
{
    /* Howard Hinnant's algorithm; m 1..12. */
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static bool valid_day(int y, int mon0, int d)
{
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (y < 1900 || y > 9999 || d < 1 || d > mdays[mon0])
        return false;
    if (mon0 == 1 && d == 29 && !((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
        return false;
    return true;
}

int64_t imapd_parse_date(const char *s)
{
    /* date-day "-" date-month "-" date-year, day 1 or 2 digits */
    int d = 0, i = 0;
    while (isdigit((unsigned char)s[i]) && i < 2)
        d = d * 10 + (s[i++] - '0');
    if (i == 0 || s[i] != '-')
        return -1;
    int m = month_of(s + i + 1);
    if (m < 0 || s[i + 4] != '-')
        return -1;
    const char *yp = s + i + 5;
    int y = 0, k = 0;
    for (; k < 4; k++) {
        if (!isdigit((unsigned char)yp[k]))
            return -1;
        y = y * 10 + (yp[k] - '0');
    }
    if (yp[4] != '\0' || !valid_day(y, m, d))
        return -1;
    return days_from_civil(y, m + 1, d) * 86400;
}

int64_t imapd_parse_datetime(const char *s)
{
    /* "dd-Mon-yyyy hh:mm:ss +zzzz", dd may be " d"; clients also send "d-" */
    char padded[27];
    if (strlen(s) == 25 && isdigit((unsigned char)s[0]) && s[1] == '-') {
        padded[0] = ' ';
        memcpy(padded + 1, s, 26);
        s = padded;
    }
    if (strlen(s) != 26)
        return -1;
    char day[3] = {s[0] == ' ' ? '0' : s[0], s[1], 0};
    if (!isdigit((unsigned char)day[0]) || !isdigit((unsigned char)day[1]) || s[2] != '-' ||
        s[6] != '-' || s[11] != ' ' || s[14] != ':' || s[17] != ':' || s[20] != ' ' ||
        (s[21] != '+' && s[21] != '-'))
        return -1;
    int m = month_of(s + 3);
    if (m < 0)
        return -1;
    int v[8];
    const int pos[] = {7, 12, 15, 18, 22, 24};
    const int len[] = {4, 2, 2, 2, 2, 2};
    for (int k = 0; k < 6; k++) {
        v[k] = 0;
        for (int j = 0; j < len[k]; j++) {
            char ch = s[pos[k] + j];
            if (!isdigit((unsigned char)ch))
                return -1;
            v[k] = v[k] * 10 + (ch - '0');
        }
    }
    int d = atoi(day);
    if (!valid_day(v[0], m, d) || v[1] > 23 || v[2] > 59 || v[3] > 60 || v[4] > 23 || v[5] > 59)
        return -1;
    int64_t t = days_from_civil(v[0], m + 1, d) * 86400 + v[1] * 3600 + v[2] * 60 + v[3];
    int64_t off = (v[4] * 60 + v[5]) * 60;
    return s[21] == '+' ? t - off : t + off;
}

int imapd_parse_number(const char *s, uint64_t max, uint64_t *out_r)
{
    uint64_t v = 0;
    if (*s == '\0' || strlen(s) > 20)
        return -1;
    for (; *s != '\0'; s++) {
        if (!isdigit((unsigned char)*s))
            return -1;
        unsigned d = (unsigned)(*s - '0');
        if (v > (max - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out_r = v;
    return 0;
}

int imapd_parse_flags(const struct imap_arg *a, size_t n, uint32_t *flags_r, struct buf *kw,
                      const char **why_r)
{
    static const struct {
        const char *name;
        uint32_t f;
    } sys[] = {{"\\Seen", STORE_F_SEEN},
               {"\\Answered", STORE_F_ANSWERED},
               {"\\Flagged", STORE_F_FLAGGED},
               {"\\Deleted", STORE_F_DELETED},
               {"\\Draft", STORE_F_DRAFT}};
    *flags_r = 0;
    for (size_t i = 0; i < n; i++) {
        if (a[i].type != IMAP_ARG_ATOM) {
            *why_r = "Flags must be atoms";
            return -1;
        }
        const char *f = a[i].str;
        if (f[0] == '\\') {
            size_t k;
            for (k = 0; k < ARRAY_SIZE(sys); k++)
                if (strcasecmp(f, sys[k].name) == 0)
                    break;
            if (k < ARRAY_SIZE(sys)) {
                *flags_r |= sys[k].f;
                continue;
            }
            if (strcasecmp(f, "\\Recent") == 0)
                continue; /* read-only; ignored */
            *why_r = "Unknown system flag";
            return -1;
        }
        for (const char *p = f; *p; p++) {
            unsigned char ch = (unsigned char)*p;
            if (ch <= 0x20 || ch >= 0x7f || strchr("(){%*\"\\]", ch) != NULL) {
                *why_r = "Invalid keyword";
                return -1;
            }
        }
        if ((kw->len > 0 && buf_puts(kw, " ") < 0) || buf_puts(kw, f) < 0) {
            *why_r = "Too many keywords";
            return -1;
        }
    }
    return 0;
}

int imapd_set_resolve(struct imapd_session *s, const char *set, bool uid, size_t **idx_r,
                      size_t *n_r, const char **error_r)
{
    uint32_t star;
    if (uid)
        star = s->n > 0 ? s->msgs[s->n - 1].uid : (s->uidnext > 1 ? s->uidnext - 1 : 1);
    else
        star = (uint32_t)s->n;
    struct imap_range *r = NULL;
    size_t nr = 0;
    *idx_r = NULL;
    *n_r = 0;
    if (imap_seqset_parse(set, star, &r, &nr, error_r) < 0)
        return -1;
    size_t *idx = NULL, n = 0, cap = 0;
    for (size_t k = 0; k < nr; k++) {
        if (!uid) {
            if (r[k].hi > s->n) {
                free(r);
                free(idx);
                *error_r = "Invalid message sequence number";
                return -1;
            }
            for (uint64_t q = r[k].lo; q <= r[k].hi; q++) {
                if (n == cap) {
                    cap = cap ? cap * 2 : 64;
                    idx = xrealloc(idx, cap * sizeof(*idx));
                }
                idx[n++] = (size_t)q - 1;
            }
        } else {
            /* the first message with uid >= lo, then on while <= hi */
            size_t lo = 0, hi = s->n;
            while (lo < hi) {
                size_t mid = (lo + hi) / 2;
                if (s->msgs[mid].uid < r[k].lo)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            for (size_t i = lo; i < s->n && s->msgs[i].uid <= r[k].hi; i++) {
                if (n == cap) {
                    cap = cap ? cap * 2 : 64;
                    idx = xrealloc(idx, cap * sizeof(*idx));
                }
                idx[n++] = i;
            }
        }
    }
    free(r);
    *idx_r = idx;
    *n_r = n;
    return 0;
}

int imapd_load(struct imapd_session *s, size_t i, const char **why_r, int *r_r)
{
    struct imapd_msg *m = &s->msgs[i];
    if (s->cache_uid == m->uid && s->cache_uid != 0 && !s->cache_header_only)
        return 0;
    mime_free(&s->cache_mime);
    buf_reset(&s->cache_body);
    s->cache_uid = 0;
    s->cache_header_only = false;
    int r = s->sy->ops->fetch(s->sy, s->user, s->folder, m->uid, &s->cache_body, why_r);
    *r_r = r;
    if (r != 0)
        return -1;
    s->cache_uid = m->uid;
    return 0;
}

/* Makes hdr (the header of message uid) the cached message, taking its
 * storage (hdr is left empty). */
static void cache_put_header(struct imapd_session *s, uint32_t uid, struct buf *hdr)
{
    mime_free(&s->cache_mime);
    struct buf old = s->cache_body;
    s->cache_body = *hdr;
    *hdr = old;
    buf_reset(hdr);
    s->cache_uid = uid;
    s->cache_header_only = true;
}

/* imapd_load for items that need only the header: a cached message of
 * either kind will do; else only its header is read. */
static int load_header(struct imapd_session *s, size_t i, const char **why_r, int *r_r)
{
    struct imapd_msg *m = &s->msgs[i];
    if (s->cache_uid == m->uid && s->cache_uid != 0)
        return 0;
    if (s->sy->ops->fetch_headers == NULL)
        return imapd_load(s, i, why_r, r_r);
    struct buf h;
    buf_init(&h, 0);
    int rc = 0;
    int r = s->sy->ops->fetch_headers(s->sy, s->user, s->folder, &m->uid, 1, &h, &rc, why_r);
    *r_r = r != 0 ? r : rc;
    if (*r_r == 0)
        cache_put_header(s, m->uid, &h);
    buf_free(&h);
    return *r_r == 0 ? 0 : -1;
}

static struct mime_msg *loaded_mime(struct imapd_session *s)
{
    if (s->cache_mime == NULL)
        s->cache_mime =
            mime_parse(s->cache_body.data != NULL ? s->cache_body.data : "", s->cache_body.len);
    return s->cache_mime;
}

/* ---- FETCH ---------------------------------------------------------------- */

enum fi_kind {
    FI_FLAGS,
    FI_INTERNALDATE,
    FI_SIZE,
    FI_ENVELOPE,
    FI_BODYSTRUCTURE,
    FI_BODY,
    FI_UID,
    FI_MODSEQ,
    FI_SECTION,
    FI_RFC822,
    FI_RFC822_HEADER,
    FI_RFC822_TEXT,
};

struct fitem {
    enum fi_kind k;
    bool peek;
    char spec[512]; /* FI_SECTION: between [ and ] */
    bool partial;
    uint64_t off, cnt;
};

/* Checks a section spec's grammar (RFC 3501 section-spec). */
static bool spec_valid(const char *p)
{
    if (*p == '\0')
        return true;
    bool had_part = false;
    while (isdigit((unsigned char)*p)) {
        if (*p == '0')
            return false;
        unsigned long v = 0;
        while (isdigit((unsigned char)*p)) {
            v = v * 10 + (unsigned)(*p - '0');
            if (v > 100000)
                return false;
            p++;
        }
        had_part = true;
        if (*p == '\0')
            return true;
        if (*p != '.')
            return false;
        p++;
    }
    if (strcasecmp(p, "HEADER") == 0 || strcasecmp(p, "TEXT") == 0)
        return true;
    if (had_part && strcasecmp(p, "MIME") == 0)
        return true;
    const char *rest = NULL;
    if (strncasecmp(p, "HEADER.FIELDS.NOT ", 18) == 0)
        rest = p + 18;
    else if (strncasecmp(p, "HEADER.FIELDS ", 14) == 0)
        rest = p + 14;
    if (rest == NULL || *rest != '(')
        return false;
    const char *close = strchr(rest, ')');
    if (close == NULL || close[1] != '\0' || close == rest + 1)
        return false;
    for (const char *q = rest + 1; q < close; q++) {
        unsigned char ch = (unsigned char)*q;
        if (ch != ' ' && (ch <= 0x20 || ch >= 0x7f || ch == ':' || ch == '(' || ch == '"'))
            return false;
    }
    return true;
}

/* header-fld-name is an astring (RFC 3501), so a HEADER.FIELDS list may
 * quote names: "HEADER.FIELDS (\"Subject\" From)" becomes
 * "HEADER.FIELDS (Subject From)". -1 for a quoted name that is empty, badly
 * quoted, or not a field name. */
static int spec_unquote(char *spec, size_t cap)
{
    char *open = strchr(spec, '(');
    if (open == NULL || strchr(open, '"') == NULL)
        return 0;
    char out[sizeof(((struct fitem *)0)->spec)];
    size_t o = (size_t)(open + 1 - spec);
    memcpy(out, spec, o);
    for (const char *p = open + 1; *p != '\0';) {
        if (*p != '"') {
            if (o + 1 >= sizeof(out))
                return -1;
            out[o++] = *p++;
            continue;
        }
        size_t start = o;
        for (p++; *p != '"'; p++) {
            if (*p == '\\')
                p++;
            unsigned char ch = (unsigned char)*p;
            if (ch <= 0x20 || ch >= 0x7f || ch == ':' || o + 1 >= sizeof(out))
                return -1; /* also the end of the string: unterminated */
            out[o++] = (char)ch;
        }
        if (o == start)
            return -1;
        p++;
    }
    if (o >= cap)
        return -1;
    out[o] = '\0';
    memcpy(spec, out, o + 1);
    return 0;
}

/* Parses one fetch-att atom into it. 0 or -1 (BAD). */
static int fitem_parse(const struct imap_arg *a, struct fitem *it)
{
    memset(it, 0, sizeof(*it));
    if (a->type != IMAP_ARG_ATOM)
        return -1;
    const char *s = a->str;
    static const struct {
        const char *name;
        enum fi_kind k;
    } simple[] = {{"FLAGS", FI_FLAGS},
                  {"INTERNALDATE", FI_INTERNALDATE},
                  {"RFC822.SIZE", FI_SIZE},
                  {"ENVELOPE", FI_ENVELOPE},
                  {"BODYSTRUCTURE", FI_BODYSTRUCTURE},
                  {"BODY", FI_BODY},
                  {"UID", FI_UID},
                  {"MODSEQ", FI_MODSEQ},
                  {"RFC822", FI_RFC822},
                  {"RFC822.HEADER", FI_RFC822_HEADER},
                  {"RFC822.TEXT", FI_RFC822_TEXT}};
    for (size_t i = 0; i < ARRAY_SIZE(simple); i++) {
        if (strcasecmp(s, simple[i].name) == 0) {
            it->k = simple[i].k;
            return 0;
        }
    }
    const char *br;
    if (strncasecmp(s, "BODY[", 5) == 0) {
        br = s + 4;
    } else if (strncasecmp(s, "BODY.PEEK[", 10) == 0) {
        br = s + 9;
        it->peek = true;
    } else {
        return -1;
    }
    const char *end = strrchr(br, ']');
    if (end == NULL || (size_t)(end - br - 1) >= sizeof(it->spec))
        return -1;
    memcpy(it->spec, br + 1, (size_t)(end - br - 1));
    it->spec[end - br - 1] = '\0';
    if (spec_unquote(it->spec, sizeof(it->spec)) < 0 || !spec_valid(it->spec))
        return -1;
    it->k = FI_SECTION;
    const char *p = end + 1;
    if (*p == '<') {
        char *e;
        if (!isdigit((unsigned char)p[1]))
            return -1;
        it->off = strtoull(p + 1, &e, 10);
        if (*e != '.' || !isdigit((unsigned char)e[1]))
            return -1;
        it->cnt = strtoull(e + 1, &e, 10);
        if (*e != '>' || e[1] != '\0' || it->cnt == 0 || it->off > UINT32_MAX ||
            it->cnt > UINT32_MAX)
            return -1;
        it->partial = true;
    } else if (*p != '\0') {
        return -1;
    }
    return 0;
}

static bool needs_body(const struct fitem *it)
{
    return it->k == FI_ENVELOPE || it->k == FI_BODYSTRUCTURE || it->k == FI_BODY ||
           it->k == FI_SECTION || it->k == FI_RFC822 || it->k == FI_RFC822_HEADER ||
           it->k == FI_RFC822_TEXT;
}

/* True if the item needs at most the message's header: what a FETCH of
 * only such items reads from the store (sync.h fetch_headers). */
static bool header_only(const struct fitem *it)
{
    switch (it->k) {
    case FI_FLAGS:
    case FI_INTERNALDATE:
    case FI_SIZE:
    case FI_UID:
    case FI_MODSEQ:
    case FI_ENVELOPE:
    case FI_RFC822_HEADER:
        return true;
    case FI_SECTION:
        return strcasecmp(it->spec, "HEADER") == 0 ||
               strncasecmp(it->spec, "HEADER.FIELDS", 13) == 0;
    default:
        return false;
    }
}

static bool sets_seen(const struct fitem *it)
{
    return (it->k == FI_SECTION && !it->peek) || it->k == FI_RFC822 || it->k == FI_RFC822_TEXT;
}

/* Writes the octets as a literal. A literal cannot hold NUL (RFC 3501's
 * CHAR8), but a stored message can (LMTP and imports keep the octets): each
 * NUL goes out as 0x80, as Dovecot does, so sizes and offsets still agree. */
static void write_literal(struct buf *b, const char *p, size_t n)
{
    buf_printf(b, "{%zu}\r\n", n);
    size_t at = b->len;
    buf_append(b, p, n);
    if (b->len != at + n || memchr(p, '\0', n) == NULL)
        return;
    for (char *q = b->data + at; (q = memchr(q, '\0', (size_t)(b->data + at + n - q))) != NULL;)
        *q++ = (char)0x80;
}

/* One message's FETCH response. 0, or -1 with the problem in *why_r / *r_r
 * (store failure) or *bad_r (a section that does not exist: NO). */
static int fetch_one(struct imapd_session *s, size_t i, const struct fitem *items, size_t ni,
                     bool uid_cmd, bool want_modseq, struct buf *b, const char **why_r, int *r_r,
                     bool *none_r)
{
    struct imapd_msg *m = &s->msgs[i];
    bool body = false, seen = false, hdr = true;
    for (size_t k = 0; k < ni; k++) {
        body |= needs_body(&items[k]);
        seen |= sets_seen(&items[k]);
        hdr &= header_only(&items[k]);
    }
    if (body && (hdr ? load_header(s, i, why_r, r_r) : imapd_load(s, i, why_r, r_r)) < 0)
        return -1;
    bool flags_changed = false;
    if (seen && !s->readonly && !(m->flags & STORE_F_SEEN)) {
        uint64_t ms = 0;
        int r = s->sy->ops->flags_ex(s->sy, s->user, s->folder, m->uid, STORE_FLAGS_ADD,
                                     STORE_F_SEEN, NULL, 0, &ms, why_r);
        if (r != 0) {
            *r_r = r;
            return -1;
        }
        m->flags |= STORE_F_SEEN;
        m->modseq = ms;
        flags_changed = true;
    }
    buf_printf(b, "* %zu FETCH (", i + 1);
    bool sp = false;
    bool have_uid = false, have_flags = false, have_modseq = false;
    for (size_t k = 0; k < ni; k++) {
        have_uid |= items[k].k == FI_UID;
        have_flags |= items[k].k == FI_FLAGS;
        have_modseq |= items[k].k == FI_MODSEQ;
    }
    if (uid_cmd && !have_uid) {
        buf_printf(b, "UID %u", m->uid);
        sp = true;
    }
    if (flags_changed && !have_flags) {
        buf_puts(b, sp ? " FLAGS " : "FLAGS ");
        imapd_write_flags(b, m->flags, m->keywords);
        sp = true;
    }
    if (want_modseq && !have_modseq) {
        buf_printf(b, "%sMODSEQ (%llu)", sp ? " " : "", (unsigned long long)m->modseq);
        sp = true;
    }
    for (size_t k = 0; k < ni; k++) {
        const struct fitem *it = &items[k];
        if (sp)
            buf_puts(b, " ");
        sp = true;
        const char *data = s->cache_body.data != NULL ? s->cache_body.data : "";
        size_t dlen = s->cache_body.len;
        switch (it->k) {
        case FI_FLAGS:
            buf_puts(b, "FLAGS ");
            imapd_write_flags(b, m->flags, m->keywords);
            break;
        case FI_INTERNALDATE:
            buf_puts(b, "INTERNALDATE ");
            imapd_write_date(b, m->internal_date);
            break;
        case FI_SIZE:
            buf_printf(b, "RFC822.SIZE %llu", (unsigned long long)m->size);
            break;
        case FI_UID:
            buf_printf(b, "UID %u", m->uid);
            break;
        case FI_MODSEQ:
            buf_printf(b, "MODSEQ (%llu)", (unsigned long long)m->modseq);
            break;
        case FI_ENVELOPE:
            buf_puts(b, "ENVELOPE ");
            mime_envelope(loaded_mime(s), b);
            break;
        case FI_BODYSTRUCTURE:
            buf_puts(b, "BODYSTRUCTURE ");
            mime_bodystructure(loaded_mime(s), true, b);
            break;
        case FI_BODY:
            buf_puts(b, "BODY ");
            mime_bodystructure(loaded_mime(s), false, b);
            break;
        case FI_RFC822:
            buf_puts(b, "RFC822 ");
            write_literal(b, data, dlen);
            break;
        case FI_RFC822_HEADER:
        case FI_RFC822_TEXT: {
            struct buf sec;
            buf_init(&sec, 0);
            const char *err = NULL;
            enum mime_section r = mime_section_get(
                loaded_mime(s), it->k == FI_RFC822_HEADER ? "HEADER" : "TEXT", &sec, &err);
            buf_puts(b, it->k == FI_RFC822_HEADER ? "RFC822.HEADER " : "RFC822.TEXT ");
            write_literal(b, r == MIME_SECTION_OK && sec.data != NULL ? sec.data : "",
                          r == MIME_SECTION_OK ? sec.len : 0);
            buf_free(&sec);
            break;
        }
        case FI_SECTION: {
            struct buf sec;
            buf_init(&sec, 0);
            const char *p = data;
            size_t l = dlen;
            if (it->spec[0] != '\0') {
                const char *err = NULL;
                enum mime_section r = mime_section_get(loaded_mime(s), it->spec, &sec, &err);
                if (r != MIME_SECTION_OK) {
                    buf_free(&sec);
                    *none_r = true;
                    *why_r = r == MIME_SECTION_BAD ? "Invalid section" : "No such body section";
                    return -1;
                }
                p = sec.data != NULL ? sec.data : "";
                l = sec.len;
            }
            buf_printf(b, "BODY[%s]", it->spec);
            if (it->partial) {
                buf_printf(b, "<%llu>", (unsigned long long)it->off);
                if (it->off >= l) {
                    l = 0;
                } else {
                    p += it->off;
                    l -= it->off;
                    if (l > it->cnt)
                        l = it->cnt;
                }
            }
            buf_puts(b, " ");
            write_literal(b, p, l);
            buf_free(&sec);
            break;
        }
        }
    }
    buf_puts(b, ")\r\n");
    return 0;
}

/* Headers read ahead for a header-only FETCH. */
#define HEADER_WINDOW 64
struct header_window {
    uint32_t uid[HEADER_WINDOW];
    struct buf b[HEADER_WINDOW];
    int rc[HEADER_WINDOW];
    const char *why[HEADER_WINDOW];
    size_t n, pos;
};

/* Reads the headers of the next HEADER_WINDOW messages the FETCH will
 * answer, from position k of idx on (the same filter as its loop). */
static int header_window_fill(struct imapd_session *s, struct header_window *hw, const size_t *idx,
                              size_t k, size_t nidx, uint64_t changedsince)
{
    hw->n = hw->pos = 0;
    for (; k < nidx && hw->n < HEADER_WINDOW; k++) {
        const struct imapd_msg *m = &s->msgs[idx[k]];
        if (m->gone || (changedsince > 0 && m->modseq <= changedsince))
            continue;
        buf_reset(&hw->b[hw->n]);
        hw->uid[hw->n++] = m->uid;
    }
    return s->sy->ops->fetch_headers(s->sy, s->user, s->folder, hw->uid, hw->n, hw->b, hw->rc,
                                     hw->why);
}

static void header_window_free(struct header_window **hwp)
{
    struct header_window *hw = *hwp;
    if (hw == NULL)
        return;
    for (size_t i = 0; i < HEADER_WINDOW; i++)
        buf_free(&hw->b[i]);
    xfree(hwp);
}

void imapd_cmd_fetch(struct imapd_session *s, const struct imap_command *c,
                     const struct imap_arg *a, size_t n, bool uid)
{
    if (n < 2 || n > 3 || a[0].type != IMAP_ARG_ATOM) {
        imapd_reply(s, c->tag, "BAD", "FETCH needs a message set and items");
        return;
    }
    struct fitem *items = NULL;
    size_t ni = 0;
    const struct imap_arg *list = &a[1];
    size_t nl = 1;
    if (a[1].type == IMAP_ARG_LIST) {
        list = a[1].list;
        nl = a[1].n;
    }
    if (nl == 0 || nl > 64) {
        imapd_reply(s, c->tag, "BAD", "Invalid FETCH item list");
        return;
    }
    items = xcalloc(nl + 8, sizeof(*items));
    for (size_t k = 0; k < nl; k++) {
        /* macros, only alone */
        if (a[1].type == IMAP_ARG_ATOM &&
            (imap_arg_atom_is(&list[k], "ALL") || imap_arg_atom_is(&list[k], "FAST") ||
             imap_arg_atom_is(&list[k], "FULL"))) {
            items[ni++].k = FI_FLAGS;
            items[ni++].k = FI_INTERNALDATE;
            items[ni++].k = FI_SIZE;
            if (!imap_arg_atom_is(&list[k], "FAST"))
                items[ni++].k = FI_ENVELOPE;
            if (imap_arg_atom_is(&list[k], "FULL"))
                items[ni++].k = FI_BODY;
            continue;
        }
        if (fitem_parse(&list[k], &items[ni]) < 0) {
            imapd_reply(s, c->tag, "BAD", "Invalid FETCH item");
            free(items);
            return;
        }
        ni++;
    }
    /* Modifiers: (CHANGEDSINCE n [VANISHED]) */
    uint64_t changedsince = 0;
    bool want_modseq = false, vanished = false;
    if (n == 3) {
        if (a[2].type != IMAP_ARG_LIST || a[2].n == 0) {
            imapd_reply(s, c->tag, "BAD", "Invalid FETCH modifiers");
            free(items);
            return;
        }
        for (size_t k = 0; k < a[2].n; k++) {
            const struct imap_arg *m = &a[2].list[k];
            if (imap_arg_atom_is(m, "CHANGEDSINCE") && k + 1 < a[2].n &&
                a[2].list[k + 1].type == IMAP_ARG_ATOM) {
                if (imapd_parse_number(a[2].list[++k].str, IMAPD_MODSEQ_MAX, &changedsince) < 0 ||
                    changedsince == 0) {
                    imapd_reply(s, c->tag, "BAD", "Invalid CHANGEDSINCE");
                    free(items);
                    return;
                }
                want_modseq = true;
            } else if (imap_arg_atom_is(m, "VANISHED") && uid && s->qresync) {
                vanished = true;
            } else {
                imapd_reply(s, c->tag, "BAD", "Unknown FETCH modifier");
                free(items);
                return;
            }
        }
        if (vanished && changedsince == 0) {
            imapd_reply(s, c->tag, "BAD", "VANISHED needs CHANGEDSINCE");
            free(items);
            return;
        }
    }
    for (size_t k = 0; k < ni; k++)
        if (items[k].k == FI_MODSEQ)
            s->condstore = true;
    if (want_modseq)
        s->condstore = true;
    imapd_sync_selected(s, false);
    size_t *idx = NULL, nidx = 0;
    const char *err = NULL;
    if (imapd_set_resolve(s, a[0].str, uid, &idx, &nidx, &err) < 0) {
        imapd_reply(s, c->tag, "BAD", "%s", err);
        free(items);
        return;
    }
    if (vanished) {
        struct imap_range *r = NULL;
        size_t nr = 0;
        uint32_t top = s->uidnext > 1 ? s->uidnext - 1 : 1;
        if (imap_seqset_parse(a[0].str, top, &r, &nr, &err) == 0) {
            uint32_t *gone = NULL;
            size_t ng = 0, capg = 0;
            for (size_t k = 0; k < nr; k++)
                for (uint64_t u = r[k].lo; u <= r[k].hi && u < s->uidnext && ng < 1000000; u++)
                    if (imapd_seq_of(s, (uint32_t)u) == 0) {
                        if (ng == capg) {
                            capg = capg ? capg * 2 : 256;
                            gone = xrealloc(gone, capg * sizeof(*gone));
                        }
                        gone[ng++] = (uint32_t)u;
                    }
            if (ng > 0) {
                struct buf v;
                buf_init(&v, 0);
                buf_puts(&v, "* VANISHED (EARLIER) ");
                imapd_write_uidset(&v, gone, ng);
                buf_puts(&v, "\r\n");
                buf_append(&s->out, v.data, v.len);
                buf_free(&v);
            }
            free(gone);
            free(r);
        }
    }
    bool failed = false, none = false, some_gone = false;
    int r = 0;
    const char *why = NULL;
    struct buf b;
    buf_init(&b, 0);
    /* Only headers wanted: read them from the store a window at a time,
     * pipelined (one round trip per window, not per message). */
    bool body = false, hdr = true;
    for (size_t k = 0; k < ni; k++) {
        body |= needs_body(&items[k]);
        hdr &= header_only(&items[k]);
    }
    struct header_window *hw =
        body && hdr && s->sy->ops->fetch_headers != NULL ? xcalloc(1, sizeof(*hw)) : NULL;
    for (size_t k = 0; k < nidx && !s->closing; k++) {
        size_t i = idx[k];
        if (s->msgs[i].gone) {
            some_gone = true;
            continue;
        }
        if (changedsince > 0 && s->msgs[i].modseq <= changedsince)
            continue;
        uint32_t u = s->msgs[i].uid;
        while (hw != NULL && hw->pos < hw->n && hw->uid[hw->pos] < u)
            hw->pos++;
        if (hw != NULL && s->cache_uid != u) {
            if (hw->pos == hw->n && header_window_fill(s, hw, idx, k, nidx, changedsince) < 0) {
                r = -1;
                why = "connection failed";
                failed = true;
                break;
            }
            if (hw->pos < hw->n && hw->uid[hw->pos] == u) {
                size_t p = hw->pos++;
                if (hw->rc[p] == SYNC_NO && strcmp(hw->why[p], "notfound") == 0) {
                    some_gone = true; /* expunged meanwhile by another session */
                    continue;
                }
                if (hw->rc[p] != 0) {
                    r = hw->rc[p];
                    why = hw->why[p];
                    failed = true;
                    break;
                }
                cache_put_header(s, hw->uid[p], &hw->b[p]);
            }
        }
        buf_reset(&b);
        if (fetch_one(s, i, items, ni, uid, want_modseq || s->condstore, &b, &why, &r, &none) < 0) {
            if (none)
                break;
            if (r == SYNC_NO && why != NULL && strcmp(why, "notfound") == 0) {
                some_gone = true; /* expunged meanwhile by another session */
                continue;
            }
            failed = true;
            break;
        }
        buf_append(&s->out, b.data, b.len);
        imapd_flush(s); /* one message at a time: memory stays flat */
    }
    buf_free(&b);
    header_window_free(&hw);
    free(idx);
    free(items);
    if (none) {
        imapd_reply(s, c->tag, "NO", "%s", why);
    } else if (failed) {
        imapd_store_failed(s, c->tag, r, why);
    } else if (some_gone) {
        imapd_reply(s, c->tag, "NO", "[EXPUNGEISSUED] Some messages were expunged meanwhile");
    } else {
        if (uid)
            imapd_sync_selected(s, true);
        imapd_reply(s, c->tag, "OK", "%sFETCH completed", uid ? "UID " : "");
    }
}

/* ---- STORE ------------------------------------------------------------------ */

/* True if the keyword [p, p+len) is in the space-separated list s (keywords
 * are atoms: case-insensitive, RFC 3501 9). */
static bool kw_has(const char *s, const char *p, size_t len)
{
    while (*s != '\0') {
        size_t l = strcspn(s, " ");
        if (l == len && strncasecmp(s, p, len) == 0)
            return true;
        s += l;
        s += *s == ' ';
    }
    return false;
}

/* Appends keyword [p, p+len) to out unless it is there (any case). */
static void kw_add(char out[STORE_KEYWORDS_MAX + 1], const char *p, size_t len)
{
    size_t ol = strlen(out);
    if (len == 0 || kw_has(out, p, len) || ol + (ol > 0) + len > STORE_KEYWORDS_MAX)
        return;
    if (ol > 0)
        out[ol++] = ' ';
    memcpy(out + ol, p, len);
    out[ol + len] = '\0';
}

/* The store's rule for a keyword change (so the session's copy matches what
 * the store now holds): SET replaces; ADD keeps the current ones and appends
 * the new; REMOVE drops matches; case-insensitive, no duplicates, the first
 * spelling wins. */
static void keywords_apply(const char *cur, enum store_flag_mode mode, const char *kw,
                           char out[STORE_KEYWORDS_MAX + 1])
{
    out[0] = '\0';
    if (mode != STORE_FLAGS_SET) {
        for (const char *p = cur; *p != '\0';) {
            size_t l = strcspn(p, " ");
            if (mode == STORE_FLAGS_ADD || !kw_has(kw, p, l))
                kw_add(out, p, l);
            p += l;
            p += *p == ' ';
        }
        if (mode == STORE_FLAGS_REMOVE)
            return;
    }
    for (const char *p = kw; *p != '\0';) {
        size_t l = strcspn(p, " ");
        kw_add(out, p, l);
        p += l;
        p += *p == ' ';
    }
}

void imapd_cmd_store(struct imapd_session *s, const struct imap_command *c,
                     const struct imap_arg *a, size_t n, bool uid)
{
    if (n < 3 || a[0].type != IMAP_ARG_ATOM) {
        imapd_reply(s, c->tag, "BAD", "STORE needs a message set, an item and flags");
        return;
    }
    size_t k = 1;
    uint64_t unchanged_since = 0;
    bool conditional = false;
    if (a[1].type == IMAP_ARG_LIST) {
        const struct imap_arg *m = &a[1];
        if (m->n != 2 || !imap_arg_atom_is(&m->list[0], "UNCHANGEDSINCE") ||
            m->list[1].type != IMAP_ARG_ATOM) {
            imapd_reply(s, c->tag, "BAD", "Invalid STORE modifier");
            return;
        }
        if (imapd_parse_number(m->list[1].str, IMAPD_MODSEQ_MAX, &unchanged_since) < 0) {
            imapd_reply(s, c->tag, "BAD", "Invalid UNCHANGEDSINCE");
            return;
        }
        conditional = true;
        s->condstore = true;
        k = 2;
    }
    if (k + 1 >= n + 0 && k >= n) {
        imapd_reply(s, c->tag, "BAD", "STORE needs an item and flags");
        return;
    }
    if (a[k].type != IMAP_ARG_ATOM) {
        imapd_reply(s, c->tag, "BAD", "Invalid STORE item");
        return;
    }
    const char *item = a[k].str;
    enum store_flag_mode mode;
    if (*item == '+') {
        mode = STORE_FLAGS_ADD;
        item++;
    } else if (*item == '-') {
        mode = STORE_FLAGS_REMOVE;
        item++;
    } else {
        mode = STORE_FLAGS_SET;
    }
    bool silent;
    if (strcasecmp(item, "FLAGS") == 0)
        silent = false;
    else if (strcasecmp(item, "FLAGS.SILENT") == 0)
        silent = true;
    else {
        imapd_reply(s, c->tag, "BAD", "Invalid STORE item");
        return;
    }
    k++;
    const struct imap_arg *fl = &a[k];
    size_t nfl = n - k;
    if (k < n && a[k].type == IMAP_ARG_LIST) {
        if (n != k + 1) {
            imapd_reply(s, c->tag, "BAD", "Unexpected arguments after the flag list");
            return;
        }
        fl = a[k].list;
        nfl = a[k].n;
    }
    uint32_t flags = 0;
    struct buf kw;
    buf_init(&kw, STORE_KEYWORDS_MAX);
    const char *why = NULL;
    if (imapd_parse_flags(fl, nfl, &flags, &kw, &why) < 0) {
        imapd_reply(s, c->tag, "BAD", "%s", why);
        buf_free(&kw);
        return;
    }
    if (s->readonly) {
        imapd_reply(s, c->tag, "NO", "Mailbox is read-only");
        buf_free(&kw);
        return;
    }
    imapd_sync_selected(s, false);
    size_t *idx = NULL, nidx = 0;
    if (imapd_set_resolve(s, a[0].str, uid, &idx, &nidx, &why) < 0) {
        imapd_reply(s, c->tag, "BAD", "%s", why);
        buf_free(&kw);
        return;
    }
    const char *kws = kw.len > 0 ? kw.data : (mode == STORE_FLAGS_SET ? "" : NULL);
    uint32_t *modified = NULL;
    size_t nmod = 0;
    int r = 0;
    bool failed = false;
    for (size_t q = 0; q < nidx && !s->closing; q++) {
        struct imapd_msg *m = &s->msgs[idx[q]];
        if (m->gone)
            continue;
        uint64_t ms = 0;
        /* UNCHANGEDSINCE 0 can never hold (RFC 7162 3.1.3): every modseq is > 0. */
        if (conditional && unchanged_since == 0) {
            modified = xrealloc(modified, (nmod + 1) * sizeof(*modified));
            modified[nmod++] = uid ? m->uid : (uint32_t)(idx[q] + 1);
            continue;
        }
        r = s->sy->ops->flags_ex(s->sy, s->user, s->folder, m->uid, mode, flags, kws,
                                 unchanged_since, &ms, &why);
        if (r == SYNC_NO && strcmp(why, "conflict") == 0) {
            modified = xrealloc(modified, (nmod + 1) * sizeof(*modified));
            modified[nmod++] = uid ? m->uid : (uint32_t)(idx[q] + 1);
            continue;
        }
        if (r == SYNC_NO && strcmp(why, "notfound") == 0)
            continue; /* expunged meanwhile */
        if (r != 0) {
            failed = true;
            break;
        }
        /* Apply the same change locally. */
        if (mode == STORE_FLAGS_SET)
            m->flags = flags;
        else if (mode == STORE_FLAGS_ADD)
            m->flags |= flags;
        else
            m->flags &= ~flags;
        if (kws != NULL) {
            char out[STORE_KEYWORDS_MAX + 1];
            keywords_apply(m->keywords, mode, kws, out);
            free(m->keywords);
            m->keywords = xstrdup(out);
        }
        m->modseq = ms;
        if (!silent || s->condstore) {
            struct buf b;
            buf_init(&b, 0);
            buf_printf(&b, "* %zu FETCH (", idx[q] + 1);
            bool sp = false;
            if (uid) {
                buf_printf(&b, "UID %u", m->uid);
                sp = true;
            }
            if (!silent) {
                buf_puts(&b, sp ? " FLAGS " : "FLAGS ");
                imapd_write_flags(&b, m->flags, m->keywords);
                sp = true;
            }
            if (s->condstore)
                buf_printf(&b, "%sMODSEQ (%llu)", sp ? " " : "", (unsigned long long)ms);
            buf_puts(&b, ")\r\n");
            buf_append(&s->out, b.data, b.len);
            buf_free(&b);
        }
    }
    buf_free(&kw);
    free(idx);
    if (failed) {
        free(modified);
        imapd_store_failed(s, c->tag, r, why);
        return;
    }
    if (uid)
        imapd_sync_selected(s, true);
    if (nmod > 0) {
        /* Not through imapd_reply: the set can be longer than its text. */
        struct buf b;
        buf_init(&b, 0);
        buf_printf(&b, "%s OK [MODIFIED ", c->tag);
        imapd_write_uidset(&b, modified, nmod);
        buf_puts(&b, "] Conditional STORE failed for some\r\n");
        buf_append(&s->out, b.data, b.len);
        buf_free(&b);
    } else {
        imapd_reply(s, c->tag, "OK", "%sSTORE completed", uid ? "UID " : "");
    }
    free(modified);
}

/* ---- SEARCH ------------------------------------------------------------------ */

enum sk_kind {
    SK_ALL,
    SK_NONE,
    SK_FLAG,    /* num = mask, want */
    SK_KEYWORD, /* str, want */
    SK_LARGER,
    SK_SMALLER,
    SK_BEFORE,
    SK_ON,
    SK_SINCE,
    SK_SENTBEFORE,
    SK_SENTON,
    SK_SENTSINCE,
    SK_HEADER, /* hdr, str */
    SK_BODY,
    SK_TEXT,
    SK_SEQ,
    SK_UID,
    SK_MODSEQ,
    SK_NOT,
    SK_OR,
    SK_AND,
};

struct sk {
    enum sk_kind k;
    bool want;
    uint64_t num;
    int64_t date;
    const char *str;
    size_t slen;
    const char *hdr;
    struct imap_range *set;
    size_t nset;
    struct sk **kids;
    size_t nkids;
};

static void sk_free(struct sk *k)
{
    if (k == NULL)
        return;
    for (size_t i = 0; i < k->nkids; i++)
        sk_free(k->kids[i]);
    free(k->kids);
    free(k->set);
    free(k);
}

static struct sk *sk_new(enum sk_kind kind)
{
    struct sk *k = xcalloc(1, sizeof(*k));
    k->k = kind;
    k->want = true;
    return k;
}

static void sk_add(struct sk *p, struct sk *kid)
{
    p->kids = xrealloc(p->kids, (p->nkids + 1) * sizeof(*p->kids));
    p->kids[p->nkids++] = kid;
}

struct sk_parse {
    struct imapd_session *s;
    const struct imap_arg *a;
    size_t n, pos;
    unsigned depth;
    const char *err;
    bool uses_modseq;
};

static struct sk *sk_key(struct sk_parse *p);

static bool sk_string(struct sk_parse *p, struct sk *k)
{
    if (p->pos >= p->n || !imap_arg_astring(&p->a[p->pos], &k->str, &k->slen)) {
        p->err = "Search key needs a string";
        return false;
    }
    p->pos++;
    return true;
}

static struct sk *sk_key(struct sk_parse *p)
{
    if (p->pos >= p->n) {
        p->err = "Missing search key";
        return NULL;
    }
    if (++p->depth > 32) {
        p->err = "Search program nested too deeply";
        return NULL;
    }
    const struct imap_arg *a = &p->a[p->pos++];
    struct sk *k = NULL;
    if (a->type == IMAP_ARG_LIST) {
        k = sk_new(SK_AND);
        struct sk_parse sub = *p;
        sub.a = a->list;
        sub.n = a->n;
        sub.pos = 0;
        if (a->n == 0) {
            p->err = "Empty search list";
            sk_free(k);
            return NULL;
        }
        while (sub.pos < sub.n) {
            struct sk *kid = sk_key(&sub);
            if (kid == NULL) {
                p->err = sub.err;
                sk_free(k);
                return NULL;
            }
            sk_add(k, kid);
        }
        p->uses_modseq |= sub.uses_modseq;
        p->depth--;
        return k;
    }
    if (a->type != IMAP_ARG_ATOM) {
        p->err = "Invalid search key";
        return NULL;
    }
    const char *w = a->str;
    static const struct {
        const char *name;
        uint32_t mask;
        bool want;
    } flagkeys[] = {{"ANSWERED", STORE_F_ANSWERED, true},  {"DELETED", STORE_F_DELETED, true},
                    {"DRAFT", STORE_F_DRAFT, true},        {"FLAGGED", STORE_F_FLAGGED, true},
                    {"SEEN", STORE_F_SEEN, true},          {"UNANSWERED", STORE_F_ANSWERED, false},
                    {"UNDELETED", STORE_F_DELETED, false}, {"UNDRAFT", STORE_F_DRAFT, false},
                    {"UNFLAGGED", STORE_F_FLAGGED, false}, {"UNSEEN", STORE_F_SEEN, false},
                    {"NEW", STORE_F_SEEN, false}};
    for (size_t i = 0; i < ARRAY_SIZE(flagkeys); i++) {
        if (strcasecmp(w, flagkeys[i].name) == 0) {
            /* NEW is RECENT UNSEEN; nothing is \Recent here (no session
             * claims it), so NEW and RECENT match nothing. */
            if (strcasecmp(w, "NEW") == 0) {
                k = sk_new(SK_NONE);
            } else {
                k = sk_new(SK_FLAG);
                k->num = flagkeys[i].mask;
                k->want = flagkeys[i].want;
            }
            p->depth--;
            return k;
        }
    }
    if (strcasecmp(w, "ALL") == 0 || strcasecmp(w, "OLD") == 0) {
        k = sk_new(SK_ALL);
    } else if (strcasecmp(w, "RECENT") == 0) {
        k = sk_new(SK_NONE);
    } else if (strcasecmp(w, "KEYWORD") == 0 || strcasecmp(w, "UNKEYWORD") == 0) {
        k = sk_new(SK_KEYWORD);
        k->want = strcasecmp(w, "KEYWORD") == 0;
        if (!sk_string(p, k))
            goto fail;
    } else if (strcasecmp(w, "LARGER") == 0 || strcasecmp(w, "SMALLER") == 0 ||
               strcasecmp(w, "MODSEQ") == 0) {
        k = sk_new(strcasecmp(w, "LARGER") == 0    ? SK_LARGER
                   : strcasecmp(w, "SMALLER") == 0 ? SK_SMALLER
                                                   : SK_MODSEQ);
        if (k->k == SK_MODSEQ) {
            /* optional entry-name and entry-type-req (RFC 7162) */
            if (p->pos + 2 < p->n && p->a[p->pos].type == IMAP_ARG_STRING)
                p->pos += 2;
            p->uses_modseq = true;
            p->s->condstore = true;
        }
        if (p->pos >= p->n || p->a[p->pos].type != IMAP_ARG_ATOM) {
            p->err = "Search key needs a number";
            goto fail;
        }
        if (imapd_parse_number(p->a[p->pos].str, k->k == SK_MODSEQ ? IMAPD_MODSEQ_MAX : UINT32_MAX,
                               &k->num) < 0) {
            p->err = "Invalid number";
            goto fail;
        }
        p->pos++;
    } else if (strcasecmp(w, "BEFORE") == 0 || strcasecmp(w, "ON") == 0 ||
               strcasecmp(w, "SINCE") == 0 || strcasecmp(w, "SENTBEFORE") == 0 ||
               strcasecmp(w, "SENTON") == 0 || strcasecmp(w, "SENTSINCE") == 0) {
        static const struct {
            const char *n;
            enum sk_kind k;
        } dk[] = {{"BEFORE", SK_BEFORE}, {"ON", SK_ON},
                  {"SINCE", SK_SINCE},   {"SENTBEFORE", SK_SENTBEFORE},
                  {"SENTON", SK_SENTON}, {"SENTSINCE", SK_SENTSINCE}};
        for (size_t i = 0; i < ARRAY_SIZE(dk); i++)
            if (strcasecmp(w, dk[i].n) == 0)
                k = sk_new(dk[i].k);
        const char *ds;
        size_t dl;
        if (p->pos >= p->n || !imap_arg_astring(&p->a[p->pos], &ds, &dl) ||
            (k->date = imapd_parse_date(ds)) < 0) {
            p->err = "Invalid date";
            goto fail;
        }
        p->pos++;
    } else if (strcasecmp(w, "FROM") == 0 || strcasecmp(w, "TO") == 0 || strcasecmp(w, "CC") == 0 ||
               strcasecmp(w, "BCC") == 0 || strcasecmp(w, "SUBJECT") == 0) {
        k = sk_new(SK_HEADER);
        k->hdr = strcasecmp(w, "FROM") == 0  ? "From"
                 : strcasecmp(w, "TO") == 0  ? "To"
                 : strcasecmp(w, "CC") == 0  ? "Cc"
                 : strcasecmp(w, "BCC") == 0 ? "Bcc"
                                             : "Subject";
        if (!sk_string(p, k))
            goto fail;
    } else if (strcasecmp(w, "HEADER") == 0) {
        k = sk_new(SK_HEADER);
        size_t hl;
        if (p->pos >= p->n || !imap_arg_astring(&p->a[p->pos], &k->hdr, &hl) || hl == 0 ||
            hl > 200) {
            p->err = "HEADER needs a field name";
            goto fail;
        }
        p->pos++;
        if (!sk_string(p, k))
            goto fail;
    } else if (strcasecmp(w, "BODY") == 0 || strcasecmp(w, "TEXT") == 0) {
        k = sk_new(strcasecmp(w, "BODY") == 0 ? SK_BODY : SK_TEXT);
        if (!sk_string(p, k))
            goto fail;
    } else if (strcasecmp(w, "NOT") == 0) {
        k = sk_new(SK_NOT);
        struct sk *kid = sk_key(p);
        if (kid == NULL)
            goto fail;
        sk_add(k, kid);
    } else if (strcasecmp(w, "OR") == 0) {
        k = sk_new(SK_OR);
        for (int i = 0; i < 2; i++) {
            struct sk *kid = sk_key(p);
            if (kid == NULL)
                goto fail;
            sk_add(k, kid);
        }
    } else if (strcasecmp(w, "UID") == 0) {
        k = sk_new(SK_UID);
        uint32_t star = p->s->n > 0 ? p->s->msgs[p->s->n - 1].uid : UINT32_MAX;
        if (p->pos >= p->n || p->a[p->pos].type != IMAP_ARG_ATOM ||
            imap_seqset_parse(p->a[p->pos].str, star, &k->set, &k->nset, &p->err) < 0) {
            if (p->err == NULL)
                p->err = "UID needs a UID set";
            goto fail;
        }
        p->pos++;
    } else if (isdigit((unsigned char)w[0]) || w[0] == '*') {
        k = sk_new(SK_SEQ);
        if (imap_seqset_parse(w, (uint32_t)p->s->n, &k->set, &k->nset, &p->err) < 0)
            goto fail;
    } else {
        p->err = "Unknown search key";
        return NULL;
    }
    p->depth--;
    return k;
fail:
    if (p->err == NULL)
        p->err = "Invalid search key";
    sk_free(k);
    return NULL;
}

static bool ci_contains(const char *hay, size_t hl, const char *needle, size_t nl)
{
    if (nl == 0)
        return true;
    if (nl > hl)
        return false;
    for (size_t i = 0; i + nl <= hl; i++) {
        size_t j = 0;
        while (j < nl && tolower((unsigned char)hay[i + j]) == tolower((unsigned char)needle[j]))
            j++;
        if (j == nl)
            return true;
    }
    return false;
}

struct sk_eval {
    struct imapd_session *s;
    size_t i;
    bool failed;
    int r;
    const char *why;
};

static bool sk_need_body(const struct sk *k)
{
    if (k->k == SK_HEADER || k->k == SK_BODY || k->k == SK_TEXT || k->k == SK_SENTBEFORE ||
        k->k == SK_SENTON || k->k == SK_SENTSINCE)
        return true;
    for (size_t i = 0; i < k->nkids; i++)
        if (sk_need_body(k->kids[i]))
            return true;
    return false;
}

static bool sk_match(struct sk_eval *e, const struct sk *k)
{
    struct imapd_msg *m = &e->s->msgs[e->i];
    int64_t day = m->internal_date >= 0 ? m->internal_date / 86400 * 86400
                                        : (m->internal_date - 86399) / 86400 * 86400;
    switch (k->k) {
    case SK_ALL:
        return true;
    case SK_NONE:
        return false;
    case SK_FLAG:
        return ((m->flags & (uint32_t)k->num) != 0) == k->want;
    case SK_KEYWORD: {
        bool have = false;
        const char *p = m->keywords;
        while (*p && !have) {
            const char *sp = strchr(p, ' ');
            size_t l = sp ? (size_t)(sp - p) : strlen(p);
            have = l == k->slen && strncasecmp(p, k->str, l) == 0;
            p += l + (sp ? 1 : 0);
        }
        return have == k->want;
    }
    case SK_LARGER:
        return m->size > k->num;
    case SK_SMALLER:
        return m->size < k->num;
    case SK_MODSEQ:
        return m->modseq >= k->num;
    case SK_BEFORE:
        return day < k->date;
    case SK_ON:
        return day == k->date;
    case SK_SINCE:
        return day >= k->date;
    case SK_SEQ:
        return imap_seqset_contains(k->set, k->nset, (uint32_t)(e->i + 1));
    case SK_UID:
        return imap_seqset_contains(k->set, k->nset, m->uid);
    case SK_NOT:
        return !sk_match(e, k->kids[0]);
    case SK_OR:
        return sk_match(e, k->kids[0]) || sk_match(e, k->kids[1]);
    case SK_AND:
        for (size_t i = 0; i < k->nkids; i++)
            if (!sk_match(e, k->kids[i]))
                return false;
        return true;
    default:
        break;
    }
    /* Content keys. */
    if (e->failed)
        return false;
    if (imapd_load(e->s, e->i, &e->why, &e->r) < 0) {
        e->failed = true;
        return false;
    }
    struct mime_msg *mm = loaded_mime(e->s);
    if (mm == NULL) {
        e->s->cache_mime = mime_parse(e->s->cache_body.data != NULL ? e->s->cache_body.data : "",
                                      e->s->cache_body.len);
        mm = e->s->cache_mime;
    }
    switch (k->k) {
    case SK_SENTBEFORE:
    case SK_SENTON:
    case SK_SENTSINCE: {
        int64_t d = mime_date(mm);
        if (d < 0)
            return false;
        d = d / 86400 * 86400;
        return k->k == SK_SENTBEFORE ? d < k->date
               : k->k == SK_SENTON   ? d == k->date
                                     : d >= k->date;
    }
    case SK_HEADER: {
        struct buf h;
        buf_init(&h, 0);
        size_t nf = mime_header_text(mm, k->hdr, &h);
        bool r = nf > 0 && ci_contains(h.data != NULL ? h.data : "", h.len, k->str, k->slen);
        buf_free(&h);
        return r;
    }
    case SK_BODY:
    case SK_TEXT: {
        struct buf t;
        buf_init(&t, 0);
        mime_body_text(mm, &t);
        bool r = ci_contains(t.data != NULL ? t.data : "", t.len, k->str, k->slen);
        if (!r && k->k == SK_TEXT) {
            struct buf h;
            buf_init(&h, 0);
            const char *err;
            if (mime_section_get(mm, "HEADER", &h, &err) == MIME_SECTION_OK)
                r = ci_contains(h.data != NULL ? h.data : "", h.len, k->str, k->slen);
            buf_free(&h);
        }
        buf_free(&t);
        return r;
    }
    default:
        return false;
    }
}

void imapd_cmd_search(struct imapd_session *s, const struct imap_command *c,
                      const struct imap_arg *a, size_t n, bool uid)
{
    size_t start = 0;
    if (n >= 2 && imap_arg_atom_is(&a[0], "CHARSET")) {
        const char *cs;
        size_t cl;
        if (!imap_arg_astring(&a[1], &cs, &cl)) {
            imapd_reply(s, c->tag, "BAD", "CHARSET needs a name");
            return;
        }
        if (strcasecmp(cs, "UTF-8") != 0 && strcasecmp(cs, "US-ASCII") != 0) {
            imapd_reply(s, c->tag, "NO", "[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset");
            return;
        }
        start = 2;
    }
    if (n <= start) {
        imapd_reply(s, c->tag, "BAD", "SEARCH needs search keys");
        return;
    }
    imapd_sync_selected(s, false);
    struct sk_parse p = {.s = s, .a = a + start, .n = n - start};
    struct sk *root = sk_new(SK_AND);
    while (p.pos < p.n) {
        struct sk *k = sk_key(&p);
        if (k == NULL) {
            imapd_reply(s, c->tag, "BAD", "%s", p.err != NULL ? p.err : "Invalid search");
            sk_free(root);
            return;
        }
        sk_add(root, k);
    }
    bool body = sk_need_body(root);
    struct buf b;
    buf_init(&b, 0);
    buf_puts(&b, "* SEARCH");
    uint64_t maxmod = 0;
    struct sk_eval e = {.s = s};
    for (size_t i = 0; i < s->n; i++) {
        if (s->msgs[i].gone)
            continue;
        e.i = i;
        (void)body;
        if (sk_match(&e, root)) {
            buf_printf(&b, " %u", uid ? s->msgs[i].uid : (uint32_t)(i + 1));
            if (s->msgs[i].modseq > maxmod)
                maxmod = s->msgs[i].modseq;
        }
        if (e.failed) {
            if (e.r == SYNC_NO) { /* expunged meanwhile */
                e.failed = false;
                continue;
            }
            break;
        }
    }
    sk_free(root);
    if (e.failed) {
        buf_free(&b);
        imapd_store_failed(s, c->tag, e.r, e.why);
        return;
    }
    if (p.uses_modseq && maxmod > 0)
        buf_printf(&b, " (MODSEQ %llu)", (unsigned long long)maxmod);
    buf_puts(&b, "\r\n");
    buf_append(&s->out, b.data, b.len);
    buf_free(&b);
    if (uid)
        imapd_sync_selected(s, true);
    imapd_reply(s, c->tag, "OK", "%sSEARCH completed", uid ? "UID " : "");
}

/* ---- COPY / MOVE / EXPUNGE ---------------------------------------------------- */

/* Expunges uids[0..n) (ascending) of folder: one store commit, or one per
 * message with a store that cannot batch. 0 or the failure (a folder gone
 * meanwhile: nothing to expunge, 0). */
static int expunge_uids(struct imapd_session *s, const char *folder, const uint32_t *uids, size_t n,
                        const char **why_r)
{
    if (n == 0)
        return 0;
    int rc;
    if (s->sy->ops->expunge_uids != NULL) {
        size_t done = 0;
        rc = s->sy->ops->expunge_uids(s->sy, s->user, folder, uids, n, &done, why_r);
    } else {
        rc = 0;
        for (size_t i = 0; i < n && rc == 0; i++)
            rc = s->sy->ops->expunge(s->sy, s->user, folder, uids[i], why_r);
    }
    if (rc == SYNC_NO && strcmp(*why_r, "notfound") == 0)
        rc = 0;
    return rc;
}

void imapd_cmd_copy(struct imapd_session *s, const struct imap_command *c, const struct imap_arg *a,
                    size_t n, bool uid, bool move)
{
    const char *what = move ? "MOVE" : "COPY";
    const char *fname;
    size_t fl;
    if (n != 2 || a[0].type != IMAP_ARG_ATOM || !imap_arg_astring(&a[1], &fname, &fl)) {
        imapd_reply(s, c->tag, "BAD", "%s needs a message set and a mailbox", what);
        return;
    }
    char target[STORE_FOLDER_MAX + 1];
    const char *why = NULL;
    if (imapd_folder_name(fname, fl, target, &why) < 0) {
        imapd_reply(s, c->tag, "NO", "%s", why);
        return;
    }
    if (move && s->readonly) {
        imapd_reply(s, c->tag, "NO", "Mailbox is read-only");
        return;
    }
    imapd_sync_selected(s, false);
    size_t *idx = NULL, nidx = 0;
    if (imapd_set_resolve(s, a[0].str, uid, &idx, &nidx, &why) < 0) {
        imapd_reply(s, c->tag, "BAD", "%s", why);
        return;
    }
    /* The target must exist (TRYCREATE tells the client to create it). */
    struct sync_folder *fls = NULL;
    size_t nf = 0;
    int r = s->sy->ops->folders(s->sy, s->user, &fls, &nf, &why);
    if (r != 0) {
        free(idx);
        imapd_store_failed(s, c->tag, r, why);
        return;
    }
    bool exists = false;
    for (size_t i = 0; i < nf; i++)
        exists |= strcmp(fls[i].name, target) == 0;
    free(fls);
    if (!exists) {
        free(idx);
        imapd_reply(s, c->tag, "NO", "[TRYCREATE] Mailbox doesn't exist: %s", target);
        return;
    }
    uint32_t *src = xcalloc(nidx + 1, sizeof(*src)), *dst = xcalloc(nidx + 1, sizeof(*dst));
    size_t nc = 0;
    uint32_t dst_validity = 0;
    bool failed = false;
    if (s->sy->ops->copy_uids != NULL) {
        /* The store copies SYNC_UIDS_MAX at a time, reading the bodies
         * itself, with one commit each (sync.h copy_uids). */
        uint32_t *ask = xcalloc(SYNC_UIDS_MAX, sizeof(*ask));
        uint32_t *got = xcalloc(SYNC_UIDS_MAX, sizeof(*got));
        size_t k = 0;
        for (size_t q = 0; q <= nidx && !failed; q++) {
            if (q < nidx) {
                if (s->msgs[idx[q]].gone)
                    continue;
                ask[k++] = s->msgs[idx[q]].uid;
                if (k < SYNC_UIDS_MAX)
                    continue;
            }
            if (k == 0)
                break;
            uint32_t uv = 0;
            r = s->sy->ops->copy_uids(s->sy, s->user, s->folder, target, ask, k, got, &uv, &why);
            if (r != 0) {
                failed = true;
                break;
            }
            for (size_t j = 0; j < k; j++)
                if (got[j] != 0) { /* 0: expunged meanwhile */
                    src[nc] = ask[j];
                    dst[nc++] = got[j];
                }
            dst_validity = uv;
            k = 0;
        }
        free(ask);
        free(got);
    } else {
        for (size_t q = 0; q < nidx; q++) {
            struct imapd_msg *m = &s->msgs[idx[q]];
            if (m->gone)
                continue;
            if (imapd_load(s, idx[q], &why, &r) < 0) {
                if (r == SYNC_NO)
                    continue; /* expunged meanwhile */
                failed = true;
                break;
            }
            uint32_t nu = 0, uv = 0;
            r = s->sy->ops->append_new(s->sy, s->user, target, m->flags, m->keywords,
                                       m->internal_date, s->cache_body.data, s->cache_body.len, &nu,
                                       &uv, &why);
            if (r != 0) {
                failed = true;
                break;
            }
            src[nc] = m->uid;
            dst[nc++] = nu;
            dst_validity = uv;
        }
    }
    if (failed) {
        /* All or nothing (RFC 3501 6.4.7): take back what was copied. */
        const char *w2;
        for (size_t q = 0; q < nc; q += SYNC_UIDS_MAX)
            (void)expunge_uids(s, target, dst + q, nc - q < SYNC_UIDS_MAX ? nc - q : SYNC_UIDS_MAX,
                               &w2);
        free(src);
        free(dst);
        free(idx);
        imapd_store_failed(s, c->tag, r, why);
        return;
    }
    struct buf cu;
    buf_init(&cu, 0);
    if (nc > 0) {
        buf_printf(&cu, "COPYUID %u ", dst_validity);
        imapd_write_uidset(&cu, src, nc);
        buf_puts(&cu, " ");
        imapd_write_uidset(&cu, dst, nc);
    }
    if (move) {
        if (nc > 0)
            imapd_out(s, "* OK [%s] Moved\r\n", cu.data);
        for (size_t q = 0; q < nc && !failed; q += SYNC_UIDS_MAX) {
            r = expunge_uids(s, s->folder, src + q, nc - q < SYNC_UIDS_MAX ? nc - q : SYNC_UIDS_MAX,
                             &why);
            failed = r != 0;
        }
        if (failed) {
            buf_free(&cu);
            free(src);
            free(dst);
            free(idx);
            imapd_store_failed(s, c->tag, r, why);
            return;
        }
        imapd_sync_selected(s, true);
        imapd_reply(s, c->tag, "OK", "%sMOVE completed", uid ? "UID " : "");
    } else {
        if (strcmp(target, s->folder) == 0)
            imapd_sync_selected(s, true);
        if (nc > 0)
            imapd_reply(s, c->tag, "OK", "[%s] %sCOPY completed", cu.data, uid ? "UID " : "");
        else
            imapd_reply(s, c->tag, "OK", "%sCOPY completed", uid ? "UID " : "");
    }
    buf_free(&cu);
    free(src);
    free(dst);
    free(idx);
}

void imapd_cmd_expunge(struct imapd_session *s, const char *tag, const char *uidset, bool silent)
{
    if (s->readonly) {
        if (tag != NULL)
            imapd_reply(s, tag, "NO", "Mailbox is read-only");
        return;
    }
    struct imap_range *r = NULL;
    size_t nr = 0;
    const char *why = NULL;
    if (uidset != NULL) {
        uint32_t star = s->n > 0 ? s->msgs[s->n - 1].uid : UINT32_MAX;
        if (imap_seqset_parse(uidset, star, &r, &nr, &why) < 0) {
            imapd_reply(s, tag, "BAD", "%s", why);
            return;
        }
    }
    if (!silent)
        imapd_sync_selected(s, true);
    int rc = 0;
    /* The store expunges SYNC_UIDS_MAX at a time with one commit each. */
    uint32_t *uids = xcalloc(SYNC_UIDS_MAX, sizeof(*uids));
    size_t k = 0;
    for (size_t i = 0; i <= s->n && rc == 0; i++) {
        if (i < s->n) {
            struct imapd_msg *m = &s->msgs[i];
            if (!(m->flags & STORE_F_DELETED) || m->gone)
                continue;
            if (r != NULL && !imap_seqset_contains(r, nr, m->uid))
                continue;
            uids[k++] = m->uid;
            if (k < SYNC_UIDS_MAX)
                continue;
        }
        rc = expunge_uids(s, s->folder, uids, k, &why);
        k = 0;
    }
    free(uids);
    free(r);
    if (silent)
        return;
    if (rc != 0) {
        imapd_store_failed(s, tag, rc, why);
        return;
    }
    imapd_sync_selected(s, true);
    imapd_reply(s, tag, "OK", "%sEXPUNGE completed", uidset != NULL ? "UID " : "");
}
