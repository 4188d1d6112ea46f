/*
 * import — the IMAP source: a remote server read through the client in
 * import_imapc.c. Folders come from LIST (\Noselect ones are skipped), their
 * names with the server's hierarchy delimiter turned into tern's '/'; each
 * folder is EXAMINEd (read-only) for UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ
 * and its count, and read with one streamed UID FETCH of what lies above
 * the checkpoint. The identity of a message is UIDVALIDITY:UID; its UID is
 * offered to the engine to keep.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "imap/imap.h"
#include "import/import_private.h"
#include "mail/mail.h"

#define IMAP_TIMEOUT_MS 60000
#define IMAP_USER_MAX   255
#define IMAP_HOST_MAX   253

struct imap_src {
    struct import_src base;
    char user[IMAP_USER_MAX + 1];
    char host[IMAP_HOST_MAX + 1];
    int port;
    bool tls;                          /* imaps */
    char ca_file[IMPORT_PATH_MAX + 1]; /* "": the system's CAs */
    char password[IMPORT_SECRET_MAX + 1];
    struct imapc *c;
};

/* A message the listing found: what is needed to decide without its body. */
struct imap_meta {
    uint32_t uid;
    uint32_t flags;
    char *keywords;
    int64_t date;
    bool has_date;
    unsigned bad_keywords;
    uint64_t size;
};

#define IMAP_CHUNK_MAX 256 /* bodies asked for in one UID FETCH */

struct imap_iter;
static void import_iter_free_imap(struct imap_iter *it);

struct imap_iter {
    struct imap_src *s;
    struct import_sfolder f;
    uint64_t cp;
    struct imap_meta *list; /* the listing above cp, in UID order */
    size_t n, pos;
    struct imap_meta *chg; /* at or below cp: flags changed (CONDSTORE) */
    size_t n_chg, chg_pos;
    bool in_chunk;    /* a UID FETCH of bodies is being read */
    size_t chunk_end; /* ... for list[pos .. chunk_end) */
    struct imapc_msg m;
    struct buf data;
};

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int import_imap_url(const char *spec, char *user, size_t userlen, char *host, size_t hostlen,
                    int *port_r, bool *tls_r, const char **error_r)
{
    const char *p;
    if (strncmp(spec, "imap://", 7) == 0) {
        *tls_r = false;
        p = spec + 7;
    } else if (strncmp(spec, "imaps://", 8) == 0) {
        *tls_r = true;
        p = spec + 8;
    } else {
        *error_r = "an IMAP source is imap://USER@HOST[:PORT]";
        return -1;
    }
    const char *at = strrchr(p, '@');
    if (at == NULL || at == p) {
        *error_r = "an IMAP source needs the user: imap://USER@HOST[:PORT]";
        return -1;
    }
    /* The user, percent-decoded ("%40" for an '@' is accepted raw too). */
    size_t n = 0;
    for (const char *q = p; q < at; q++) {
        char ch = *q;
        if (ch == '%') {
            int a = q + 2 < at ? hexval(q[1]) : -1, b = a >= 0 ? hexval(q[2]) : -1;
            if (b < 0) {
                *error_r = "a bad %-escape in the IMAP user";
                return -1;
            }
            ch = (char)(a * 16 + b);
            q += 2;
        }
        if ((unsigned char)ch < 0x20 || ch == 0x7f || n + 1 >= userlen) {
            *error_r = n + 1 >= userlen ? "the IMAP user is too long"
                                        : "a control character in the IMAP user";
            return -1;
        }
        user[n++] = ch;
    }
    user[n] = '\0';
    /* HOST, [V6] or V4, then :PORT, then nothing (or one '/'). */
    const char *h = at + 1, *hend;
    if (*h == '[') {
        hend = strchr(h, ']');
        if (hend == NULL) {
            *error_r = "an unterminated [IPv6] host";
            return -1;
        }
        h++;
    } else {
        hend = h + strcspn(h, ":/");
    }
    size_t hl = (size_t)(hend - h);
    if (hl == 0 || hl >= hostlen) {
        *error_r = hl == 0 ? "an IMAP source needs a host" : "the IMAP host is too long";
        return -1;
    }
    for (size_t i = 0; i < hl; i++) {
        char ch = h[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '-' || ch == ':' || ch == '_')) {
            *error_r = "a bad character in the IMAP host";
            return -1;
        }
    }
    memcpy(host, h, hl);
    host[hl] = '\0';
    const char *rest = *hend == ']' ? hend + 1 : hend;
    *port_r = *tls_r ? 993 : 143;
    if (*rest == ':') {
        uint64_t port;
        char pb[8];
        size_t pl = strcspn(rest + 1, "/");
        if (pl == 0 || pl >= sizeof(pb)) {
            *error_r = "a bad IMAP port";
            return -1;
        }
        memcpy(pb, rest + 1, pl);
        pb[pl] = '\0';
        if (parse_u64(pb, 65535, &port) < 0 || port == 0) {
            *error_r = "a bad IMAP port";
            return -1;
        }
        *port_r = (int)port;
        rest += 1 + pl;
    }
    if (*rest != '\0' && strcmp(rest, "/") != 0) {
        *error_r = "an IMAP source takes no path: imap://USER@HOST[:PORT]";
        return -1;
    }
    return 0;
}

/* ---- folders ----------------------------------------------------------------- */

/* Source name → tern name: the delimiter becomes '/', INBOX is INBOX. */
static int map_name(const char *raw, size_t len, char delim, char out[STORE_FOLDER_MAX + 1],
                    const char **why_r)
{
    if (len == 0 || len > STORE_FOLDER_MAX) {
        *why_r = len == 0 ? "an empty folder name" : "folder name too long";
        return -1;
    }
    struct buf chk;
    buf_init(&chk, 4 * STORE_FOLDER_MAX);
    bool ok = imap_mutf7_to_utf8(raw, len, &chk) == 0;
    buf_free(&chk);
    if (!ok) {
        *why_r = "folder name is not valid modified UTF-7";
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        char ch = raw[i];
        if (ch == '/' && delim != '/') {
            *why_r = "a '/' inside a folder name level (tern's hierarchy separator)";
            return -1;
        }
        out[i] = delim != 0 && ch == delim ? '/' : ch;
    }
    out[len] = '\0';
    /* Empty levels ("a//b", a trailing delimiter) are not folders. */
    if (out[0] == '/' || out[len - 1] == '/' || strstr(out, "//") != NULL) {
        *why_r = "an empty level in the folder name";
        return -1;
    }
    size_t first = strcspn(out, "/");
    if (first == 5 && strncasecmp(out, "INBOX", 5) == 0)
        memcpy(out, "INBOX", 5);
    return 0;
}

struct list_acc {
    struct import_sfolder *l;
    size_t n;
    char delim;
};

static int list_one(void *ctx, const char *name, size_t len, char delim)
{
    struct list_acc *a = ctx;
    if (a->n >= IMPORT_FOLDERS_MAX)
        return -1;
    a->l = xrealloc(a->l, (a->n + 1) * sizeof(*a->l));
    struct import_sfolder *f = &a->l[a->n++];
    memset(f, 0, sizeof(*f));
    size_t k = len < IMPORT_SRC_KEY_MAX ? len : IMPORT_SRC_KEY_MAX;
    memcpy(f->src, name, k);
    f->src[k] = '\0';
    const char *why = NULL;
    if (memchr(name, '\0', len) != NULL || len > IMPORT_SRC_KEY_MAX ||
        map_name(name, len, delim, f->name, &why) < 0) {
        str_copy(f->name, f->src, sizeof(f->name));
        str_copy(f->error, why != NULL ? why : "a folder name tern cannot hold", sizeof(f->error));
    }
    return 0;
}

static int imap_connected(struct imap_src *s, const char **error_r)
{
    if (s->c != NULL)
        return 0;
    static __thread char err[300];
    s->c = imapc_connect(s->host, s->port, s->tls, s->ca_file, IMAP_TIMEOUT_MS, err, sizeof(err));
    if (s->c == NULL) {
        *error_r = err;
        return -1;
    }
    const char *why;
    int r = imapc_login(s->c, s->user, s->password, &why);
    if (r != 0) {
        snprintf(err, sizeof(err), "IMAP login as %s refused: %s", s->user, why);
        *error_r = err;
        imapc_logout(&s->c);
        return -1;
    }
    return 0;
}

static int imap_list(struct import_src *base, struct import_sfolder **list_r, size_t *n_r,
                     const char **error_r)
{
    struct imap_src *s = (struct imap_src *)base;
    if (imap_connected(s, error_r) < 0)
        return -1;
    struct list_acc a = {0};
    if (imapc_list(s->c, list_one, &a, error_r) < 0) {
        free(a.l);
        imapc_free(&s->c);
        return -1;
    }
    /* Two source names mapping to one name: the later are failures. */
    for (size_t i = 0; i < a.n; i++)
        for (size_t k = 0; k < i; k++)
            if (a.l[i].error[0] == '\0' && a.l[k].error[0] == '\0' &&
                strcmp(a.l[i].name, a.l[k].name) == 0)
                str_copy(a.l[i].error, "maps to the same folder name as another folder",
                         sizeof(a.l[i].error));
    for (size_t i = 0; i < a.n; i++) {
        struct import_sfolder *f = &a.l[i];
        if (f->error[0] != '\0')
            continue;
        struct imapc_box b;
        int r = imapc_examine(s->c, f->src, strlen(f->src), &b, error_r);
        if (r < 0) {
            free(a.l);
            imapc_free(&s->c);
            return -1;
        }
        if (r == 1) {
            str_copy(f->error, "the server refused to open the folder", sizeof(f->error));
            continue;
        }
        f->uidvalidity = b.uidvalidity;
        f->uidnext = b.uidnext;
        f->modseq = b.highestmodseq;
        f->count = b.exists;
        f->count_exact = true;
    }
    *list_r = a.l != NULL ? a.l : xmalloc(1);
    *n_r = a.n;
    return 0;
}

static int imap_open(struct import_src *base, const struct import_sfolder *f,
                     struct import_fstate *st, bool full, struct import_iter **iter_r,
                     const char **error_r)
{
    struct imap_src *s = (struct imap_src *)base;
    if (st->uidvalidity != f->uidvalidity) {
        /* A new folder, or the server renumbered it: every message is read
         * again; identities differ, content keys find what is there. */
        st->cp = 0;
        st->uidvalidity = f->uidvalidity;
        st->uidnext = 0;
        st->modseq = 0;
    }
    if (!full && st->uidnext == f->uidnext && st->modseq == f->modseq &&
        (uint64_t)f->uidnext <= st->cp + 1) {
        *iter_r = NULL;
        return 0;
    }
    if (imap_connected(s, error_r) < 0)
        return -1;
    struct imapc_box b;
    int r = imapc_examine(s->c, f->src, strlen(f->src), &b, error_r);
    if (r != 0) {
        if (r < 0)
            imapc_free(&s->c);
        else
            *error_r = "the server refused to open the folder";
        return -1;
    }
    if (b.uidvalidity != f->uidvalidity) {
        *error_r = "the folder's UIDVALIDITY changed during the pass";
        return -1;
    }
    if (full)
        st->cp = 0;
    uint64_t from = st->cp + 1;
    if (from > UINT32_MAX) {
        *iter_r = NULL;
        return 0;
    }
    /* First what is there (UIDs, flags, dates, sizes), then bodies only for
     * what is not imported yet: a re-run costs a listing, not a download. */
    if (imapc_fetch_meta_start(s->c, (uint32_t)from, error_r) < 0) {
        imapc_free(&s->c);
        return -1;
    }
    struct imap_iter *it = xmalloc(sizeof(*it));
    it->s = s;
    it->f = *f;
    it->cp = st->cp;
    imapc_msg_init(&it->m);
    buf_init(&it->data, 0);
    size_t cap = 0;
    while ((r = imapc_fetch_next(s->c, &it->m, error_r)) == 1) {
        if (it->n == cap) {
            cap = cap ? 2 * cap : 256;
            it->list = xrealloc(it->list, cap * sizeof(*it->list));
        }
        struct imap_meta *e = &it->list[it->n++];
        e->uid = it->m.uid;
        e->flags = it->m.flags;
        e->keywords = xstrdup(it->m.keywords.data != NULL ? it->m.keywords.data : "");
        e->date = it->m.internal_date;
        e->has_date = it->m.has_date;
        e->bad_keywords = it->m.bad_keywords;
        e->size = it->m.size;
    }
    /* While the source is the master, flag changes of what was imported
     * come along too: CONDSTORE tells which, since the last pass. */
    if (r == 0 && base->flag_changes && st->modseq != 0 && f->modseq != st->modseq && st->cp > 0 &&
        st->cp <= UINT32_MAX && imapc_has_cap(s->c, "CONDSTORE")) {
        r = imapc_fetch_changed_start(s->c, (uint32_t)st->cp, st->modseq, error_r);
        cap = 0;
        while (r >= 0 && (r = imapc_fetch_next(s->c, &it->m, error_r)) == 1) {
            if (it->m.uid > st->cp)
                continue;
            if (it->n_chg == cap) {
                cap = cap ? 2 * cap : 64;
                it->chg = xrealloc(it->chg, cap * sizeof(*it->chg));
            }
            struct imap_meta *e = &it->chg[it->n_chg++];
            memset(e, 0, sizeof(*e));
            e->uid = it->m.uid;
            e->flags = it->m.flags;
            e->keywords = xstrdup(it->m.keywords.data != NULL ? it->m.keywords.data : "");
        }
    }
    if (r < 0) {
        imapc_free(&s->c);
        it->s = NULL;
        import_iter_free_imap(it);
        return -1;
    }
    *iter_r = (struct import_iter *)it;
    return 0;
}

static void ident_of(const struct imap_iter *it, uint32_t uid, char *out, size_t n)
{
    snprintf(out, n, "%u:%u", it->f.uidvalidity, uid);
}

static bool is_known(const struct imap_iter *it, const struct imap_meta *e)
{
    const struct import_src *b = &it->s->base;
    char ident[IMPORT_IDENT_MAX + 1];
    ident_of(it, e->uid, ident, sizeof(ident));
    return b->known != NULL && b->known(b->known_ctx, it->f.name, ident);
}

/* Starts a UID FETCH of bodies for the run of unknown messages at pos. */
static int start_chunk(struct imap_iter *it, const char **error_r)
{
    struct buf set;
    buf_init(&set, 0);
    size_t k = it->pos;
    while (k < it->n && k - it->pos < IMAP_CHUNK_MAX && !is_known(it, &it->list[k]) &&
           it->list[k].size <= it->s->base.msg_max) {
        uint32_t lo = it->list[k].uid, hi = lo;
        while (k + 1 < it->n && k + 1 - it->pos < IMAP_CHUNK_MAX && it->list[k + 1].uid == hi + 1 &&
               !is_known(it, &it->list[k + 1]) && it->list[k + 1].size <= it->s->base.msg_max) {
            k++;
            hi++;
        }
        if (set.len > 0)
            buf_puts(&set, ",");
        if (lo == hi)
            buf_printf(&set, "%u", lo);
        else
            buf_printf(&set, "%u:%u", lo, hi);
        k++;
    }
    it->chunk_end = k;
    int r = imapc_fetch_set_start(it->s->c, set.data, it->s->base.msg_max, error_r);
    buf_free(&set);
    if (r < 0) {
        imapc_free(&it->s->c);
        return -1;
    }
    it->in_chunk = true;
    return 0;
}

static void item_head(const struct imap_iter *it, uint32_t uid, struct import_item *out)
{
    memset(out, 0, sizeof(*out));
    out->pos_before = uid - 1;
    out->pos_after = uid;
    snprintf(out->where, sizeof(out->where), "UID %u", uid);
    ident_of(it, uid, out->ident, sizeof(out->ident));
}

static int imap_next(struct import_iter *i, struct import_item *out, const char **error_r)
{
    struct imap_iter *it = (struct imap_iter *)i;
    for (;;) {
        if (it->in_chunk) {
            if (it->s->c == NULL) {
                *error_r = "IMAP source: connection lost";
                return -1;
            }
            int r = imapc_fetch_next(it->s->c, &it->m, error_r);
            if (r < 0) {
                imapc_free(&it->s->c);
                return -1;
            }
            if (r == 0) {
                it->in_chunk = false;
                it->pos = it->chunk_end; /* any not returned: expunged meanwhile */
                continue;
            }
            /* Listed ones the server did not return were expunged meanwhile. */
            while (it->pos < it->chunk_end && it->list[it->pos].uid < it->m.uid)
                it->pos++;
            if (it->pos == it->chunk_end || it->list[it->pos].uid != it->m.uid)
                continue; /* not asked for */
            it->pos++;
            break;
        }
        while (it->chg_pos < it->n_chg) {
            const struct imap_meta *e = &it->chg[it->chg_pos++];
            if (!is_known(it, e))
                continue;
            item_head(it, e->uid, out);
            out->kind = IMPORT_ITEM_MSG;
            out->known = true;
            out->flags_only = true;
            out->flags = e->flags;
            out->keywords = e->keywords;
            return 1;
        }
        if (it->pos == it->n)
            return 0;
        const struct imap_meta *e = &it->list[it->pos];
        if (e->size > it->s->base.msg_max) {
            item_head(it, e->uid, out);
            out->kind = IMPORT_ITEM_FAIL;
            snprintf(out->why, sizeof(out->why),
                     "message over the size limit (%llu octets, limit %zu)",
                     (unsigned long long)e->size, it->s->base.msg_max);
            it->pos++;
            return 1;
        }
        if (is_known(it, e)) {
            item_head(it, e->uid, out);
            out->kind = IMPORT_ITEM_MSG;
            out->known = true;
            out->uid = e->uid;
            out->flags = e->flags;
            out->keywords = e->keywords;
            out->internal_date = e->has_date ? e->date : 0;
            out->len = (size_t)e->size;
            it->pos++;
            return 1;
        }
        if (start_chunk(it, error_r) < 0)
            return -1;
    }
    const struct imapc_msg *m = &it->m;
    item_head(it, m->uid, out);
    if (m->too_big) {
        out->kind = IMPORT_ITEM_FAIL;
        snprintf(out->why, sizeof(out->why), "message over the size limit (%llu octets, limit %zu)",
                 (unsigned long long)m->size, it->s->base.msg_max);
        return 1;
    }
    out->kind = IMPORT_ITEM_MSG;
    out->uid = m->uid;
    out->flags = m->flags;
    out->keywords = m->keywords.data != NULL ? m->keywords.data : "";
    out->internal_date = m->has_date ? m->internal_date : 0;
    /* tern stores CRLF lines: a server that hands out bare LFs or CRs gets
     * them made line endings (counted as a problem, imported). */
    struct mail_crlf cr;
    mail_crlf_init(&cr);
    buf_reset(&it->data);
    mail_crlf_feed(&cr, &it->data, m->body.data != NULL ? m->body.data : "", m->body.len);
    mail_crlf_finish(&cr, &it->data);
    out->data = it->data.data != NULL ? it->data.data : "";
    out->len = it->data.len;
    sha256_buf(out->data, out->len, out->sha256);
    if (it->data.len != m->body.len || cr.nul > 0 || m->bad_keywords > 0 || !m->has_date) {
        out->malformed = true;
        snprintf(out->why, sizeof(out->why), "%s%s%s%s",
                 it->data.len != m->body.len ? "line endings repaired " : "",
                 cr.nul > 0 ? "NUL octets " : "", m->bad_keywords > 0 ? "keywords dropped " : "",
                 !m->has_date ? "no internal date " : "");
    }
    return 1;
}

static void imap_finish(struct import_iter *i, struct import_fstate *st, bool done)
{
    struct imap_iter *it = (struct imap_iter *)i;
    if (!done)
        return;
    st->uidvalidity = it->f.uidvalidity;
    st->uidnext = it->f.uidnext;
    st->modseq = it->f.modseq;
}

static void import_iter_free_imap(struct imap_iter *it)
{
    /* A fetch cut short leaves the connection mid-response: drop it (the
     * next pass connects again). */
    if (it->s != NULL && it->in_chunk)
        imapc_free(&it->s->c);
    for (size_t i = 0; i < it->n; i++)
        free(it->list[i].keywords);
    free(it->list);
    for (size_t i = 0; i < it->n_chg; i++)
        free(it->chg[i].keywords);
    free(it->chg);
    imapc_msg_free(&it->m);
    buf_free(&it->data);
    free(it);
}

static void imap_iter_free(struct import_iter **ip)
{
    struct imap_iter *it = (struct imap_iter *)*ip;
    if (it == NULL)
        return;
    import_iter_free_imap(it);
    *ip = NULL;
}

static void imap_close(struct import_src *base)
{
    struct imap_src *s = (struct imap_src *)base;
    imapc_logout(&s->c);
    memset(s->password, 0, sizeof(s->password));
    free(s);
}

static const struct import_src_ops imap_ops = {
    .kind = "imap",
    .list = imap_list,
    .open = imap_open,
    .next = imap_next,
    .finish = imap_finish,
    .iter_free = imap_iter_free,
    .close = imap_close,
};

int import_src_open_imap(const char *spec, const char *password, const char *ca_file,
                         size_t msg_max, struct import_src **s_r, char *err, size_t errlen)
{
    struct imap_src *s = xmalloc(sizeof(*s));
    bool tls;
    const char *e;
    if (import_imap_url(spec, s->user, sizeof(s->user), s->host, sizeof(s->host), &s->port, &tls,
                        &e) < 0) {
        snprintf(err, errlen, "%s", e);
        free(s);
        return -1;
    }
    s->tls = tls;
    if (ca_file != NULL &&
        str_copy(s->ca_file, ca_file, sizeof(s->ca_file)) >= sizeof(s->ca_file)) {
        snprintf(err, errlen, "the CA file's path is too long");
        free(s);
        return -1;
    }
    s->base.ops = &imap_ops;
    s->base.msg_max = msg_max;
    snprintf(s->base.scope, sizeof(s->base.scope), "%s@%s:%d", s->user, s->host, s->port);
    str_lower(s->base.scope);
    str_copy(s->password, password, sizeof(s->password));
    *s_r = &s->base;
    return 0;
}

/* ---- any source --------------------------------------------------------------- */

int import_src_open(const char *spec, const struct import_settings *set, size_t msg_max,
                    struct import_src **s_r, char *err, size_t errlen)
{
    if (strncmp(spec, "imap://", 7) == 0 || strncmp(spec, "imaps://", 8) == 0) {
        struct buf pw;
        const char *e;
        buf_init(&pw, IMPORT_SECRET_MAX + 2);
        if (set->secret[0] == '\0' ||
            file_read_all(set->secret, IMPORT_SECRET_MAX + 2, &pw, &e) < 0) {
            snprintf(err, errlen, "the IMAP password (%s) cannot be read",
                     set->secret[0] ? set->secret : "none given");
            buf_free(&pw);
            return -1;
        }
        while (pw.len > 0 && (pw.data[pw.len - 1] == '\n' || pw.data[pw.len - 1] == '\r'))
            pw.data[--pw.len] = '\0';
        int r = -1;
        if (pw.len == 0 || pw.len > IMPORT_SECRET_MAX || memchr(pw.data, '\0', pw.len) != NULL)
            snprintf(err, errlen, "the IMAP password file %s holds no usable password",
                     set->secret);
        else
            r = import_src_open_imap(spec, pw.data, set->ca_file, msg_max, s_r, err, errlen);
        if (pw.data != NULL)
            memset(pw.data, 0, pw.len);
        buf_free(&pw);
        return r;
    }
    return import_src_open_file(spec, msg_max, s_r, err, errlen);
}

void import_src_close(struct import_src **s)
{
    if (*s == NULL)
        return;
    (*s)->ops->close(*s);
    *s = NULL;
}
