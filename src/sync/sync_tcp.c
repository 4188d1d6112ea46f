/*
 * sync_tcp — the TSYNC/1 client transport of sync.h (docs/sync.md), a
 * blocking client in the manner of lmtpc.c.
 *
 * The socket stays non-blocking; every wait goes through poll() with the
 * connection's timeout. Each reply line, and each piece of progress of a
 * message body in either direction, must come within one timeout, so a
 * long listing or a big message over a slow but live link is not cut off.
 *
 * Any I/O error, timeout, "-ERR" or reply that does not parse leaves the
 * connection broken: every later operation returns -1 at once and
 * sync_close() sends no QUIT. Refusals ("-NO why") leave it usable.
 *
 * Arguments the store would refuse as too long, and delivery ids or store
 * names that cannot travel as one token, are refused here with SYNC_NO
 * "invalid", without a round trip and exactly as sync_local would answer.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sync/sync.h"

#define SYNC_TCP_LINE_MAX 16384        /* longest reply line accepted */
#define SYNC_TCP_BODY_MAX (1ull << 31) /* as SYNCD_BODY_MAX: the protocol's limit */
#define SYNC_TCP_TOKS     12

struct sync_tcp {
    struct sync base;
    struct sock *sock;
    unsigned timeout_ms;
    bool broken;
    bool no_wait; /* the server answered WAIT "-ERR unknown command" */
    char endpoint[300];
    char why[200]; /* the last failure, for the log */
    struct buf out;
    char line[SYNC_TCP_LINE_MAX + 1];
    /* An APPENDS sent by append_batch_start whose answers are unread: its
     * item count, which items travelled, and where their results go. */
    bool batch_pending;
    size_t batch_k;
    size_t batch_sent[SYNC_BATCH_MAX];
    int *batch_rc;
    const char **batch_why;
    struct sync_append_res *batch_res; /* NULL: not wanted */
    bool batch_ids;                    /* some record carries a delivery id */
    bool no_ids; /* the server refused APPENDS records with delivery ids (older) */
    bool ids_ok; /* ... or took them (the probe) */
};

/* The refusal reasons a server may give; *why_r points at these. */
static const char *const sync_tcp_reasons[] = {"notfound", "exists",  "conflict",   "notlive",
                                               "checksum", "invalid", "stale token"};

/* ---- low-level I/O ---- */

/* Marks the connection broken: -1 for this and every later operation. */
static int sync_tcp_broken(struct sync_tcp *c, const char **why_r, const char *fmt, ...)
    TERN_PRINTF(3, 4);
static int sync_tcp_broken(struct sync_tcp *c, const char **why_r, const char *fmt, ...)
{
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->why, sizeof(c->why), fmt, ap);
        va_end(ap);
    }
    if (!c->broken)
        log_warn("sync", "%s: %s", c->endpoint, c->why);
    c->broken = true;
    if (why_r != NULL)
        *why_r = "connection failed";
    return -1;
}

/* Copies the socket's last failure into c->why; -1. */
static int sync_tcp_io_failed(struct sync_tcp *c)
{
    str_copy(c->why, sock_why(c->sock), sizeof(c->why));
    return -1;
}

static int sync_tcp_send(struct sync_tcp *c, const void *p, size_t n)
{
    return sock_send(c->sock, p, n) < 0 ? sync_tcp_io_failed(c) : 0;
}

/* Sends and empties c->out. */
static int sync_tcp_send_out(struct sync_tcp *c)
{
    int r = sync_tcp_send(c, c->out.data, c->out.len);
    buf_reset(&c->out);
    return r;
}

/* Reads one line into c->line without its CRLF (within one timeout); *len_r
 * its length. */
static int sync_tcp_read_line(struct sync_tcp *c, size_t *len_r)
{
    int r = sock_read_line(c->sock, c->line, sizeof(c->line), len_r);
    if (r < 0)
        return sync_tcp_io_failed(c);
    if (r > 0) {
        str_copy(c->why, "reply line too long", sizeof(c->why));
        return -1;
    }
    return 0;
}

/* Reads exactly n octets, appended to out (if not NULL: its max is
 * respected) or else copied to raw. */
static int sync_tcp_read_exact(struct sync_tcp *c, size_t n, struct buf *out, char *raw)
{
    if (out != NULL && out->max != 0 && (out->len > out->max || n > out->max - out->len)) {
        str_copy(c->why, "message larger than the read buffer allows", sizeof(c->why));
        return -1;
    }
    int r = out != NULL ? sock_read_buf(c->sock, out, n) : sock_read_exact(c->sock, raw, n);
    return r < 0 ? sync_tcp_io_failed(c) : 0;
}

/* ---- tokens ---- */

struct sync_tcp_tok {
    char *p;
    size_t len;
};

/* Splits s (NUL-terminated, modified) at single spaces. Number of tokens, or
 * -1 if there are more than max or an empty one. */
static int sync_tcp_split(char *s, struct sync_tcp_tok *t, int max)
{
    int n = 0;
    for (char *p = s;;) {
        char *sp = strchr(p, ' ');
        size_t len = sp != NULL ? (size_t)(sp - p) : strlen(p);
        if (len == 0 || n == max)
            return -1;
        t[n].p = p;
        t[n++].len = len;
        if (sp == NULL)
            return n;
        *sp = '\0';
        p = sp + 1;
    }
}

static int sync_tcp_u64(const struct sync_tcp_tok *t, uint64_t max, uint64_t *out)
{
    return parse_u64(t->p, max, out);
}

static int sync_tcp_u32(const struct sync_tcp_tok *t, uint32_t *out)
{
    uint64_t v;
    if (parse_u64(t->p, UINT32_MAX, &v) < 0)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

static int sync_tcp_bool(const struct sync_tcp_tok *t, bool *out)
{
    if (t->len != 1 || (t->p[0] != '0' && t->p[0] != '1'))
        return -1;
    *out = t->p[0] == '1';
    return 0;
}

static int sync_tcp_date(const struct sync_tcp_tok *t, int64_t *out)
{
    bool neg = t->p[0] == '-';
    uint64_t v;
    if (parse_u64(t->p + neg, INT64_MAX, &v) < 0)
        return -1;
    *out = neg ? -(int64_t)v : (int64_t)v;
    return 0;
}

/* Hex-encoded string ("-" = empty) into out of cap octets (with the NUL). */
static int sync_tcp_str(const struct sync_tcp_tok *t, char *out, size_t cap)
{
    out[0] = '\0';
    if (t->len == 1 && t->p[0] == '-')
        return 0;
    size_t n = t->len / 2;
    if (t->len % 2 != 0 || n >= cap || hex_decode(t->p, out, n) < 0 || memchr(out, '\0', n))
        return -1;
    out[n] = '\0';
    return 0;
}

/* Appends the hex form of v ("-" if empty) and sep. */
static void sync_tcp_put_hex(struct buf *b, const char *v, const char *sep)
{
    size_t n = strlen(v);
    if (n == 0) {
        buf_puts(b, "-");
    } else {
        char *h = xmalloc(2 * n + 1);
        hex_encode(v, n, h);
        buf_append(b, h, 2 * n);
        free(h);
    }
    buf_puts(b, sep);
}

/* ---- replies ---- */

/* Classifies c->line as a final reply: 0 for "+OK[ rest]" (*rest_r the
 * rest, "" if none), SYNC_NO for "-NO why", -1 (broken) for anything else. */
static int sync_tcp_final(struct sync_tcp *c, const char **why_r, char **rest_r)
{
    char *l = c->line;
    if (strncmp(l, "+OK", 3) == 0 && (l[3] == '\0' || l[3] == ' ')) {
        if (rest_r != NULL)
            *rest_r = l[3] == ' ' ? l + 4 : l + 3;
        return 0;
    }
    if (strncmp(l, "-NO ", 4) == 0) {
        for (size_t i = 0; i < ARRAY_SIZE(sync_tcp_reasons); i++) {
            if (strcmp(l + 4, sync_tcp_reasons[i]) == 0) {
                *why_r = sync_tcp_reasons[i];
                return SYNC_NO;
            }
        }
        return sync_tcp_broken(c, why_r, "unknown refusal \"%.60s\"", l);
    }
    if (strncmp(l, "-ERR", 4) == 0)
        return sync_tcp_broken(c, why_r, "server: %.150s", l);
    return sync_tcp_broken(c, why_r, "unexpected reply \"%.60s\"", l);
}

/* Starts an operation: checks the connection and resets c->out. */
static int sync_tcp_begin(struct sync_tcp *c, const char **why_r)
{
    if (c->batch_pending)
        panic("sync: %s: an operation while an APPENDS awaits its answers", c->endpoint);
    buf_reset(&c->out);
    if (c->broken) {
        *why_r = "connection failed";
        return -1;
    }
    /* The server said something (or closed) while we were idle, e.g.
     * "-ERR idle timeout": the connection is no longer usable. */
    if (sock_readable_now(c->sock))
        return sync_tcp_broken(c, why_r, "the server spoke or closed while idle");
    return 0;
}

/* Sends c->out and reads the final reply. */
static int sync_tcp_call(struct sync_tcp *c, const char **why_r, char **rest_r)
{
    size_t len;
    if (sync_tcp_send_out(c) < 0 || sync_tcp_read_line(c, &len) < 0)
        return sync_tcp_broken(c, why_r, NULL);
    return sync_tcp_final(c, why_r, rest_r);
}

/* Starts a command line: "VERB <user-hex>". SYNC_NO if user cannot be a
 * mailbox (as the store would say). */
static int sync_tcp_cmd_user(struct sync_tcp *c, const char *verb, const char *user,
                             const char **why_r)
{
    int r = sync_tcp_begin(c, why_r);
    if (r != 0)
        return r;
    if (user == NULL || strlen(user) > MAIL_ADDR_MAX) {
        *why_r = "invalid";
        return SYNC_NO;
    }
    buf_printf(&c->out, "%s ", verb);
    sync_tcp_put_hex(&c->out, user, "");
    return 0;
}

static bool sync_tcp_folder_ok(const char *f)
{
    return f != NULL && strlen(f) <= STORE_FOLDER_MAX;
}

static bool sync_tcp_kw_ok(const char *k)
{
    return k == NULL || strlen(k) <= STORE_KEYWORDS_MAX;
}

/* A token of 1..max printable octets without space. */
static bool sync_tcp_atom_ok(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return false;
    return true;
}

static int sync_tcp_invalid(const char **why_r)
{
    *why_r = "invalid";
    return SYNC_NO;
}

/* ---- operations ---- */

static void sync_tcp_close(struct sync *s)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    if (!c->broken && !c->batch_pending) /* best effort, never waits */
        sock_send_nowait(c->sock, "QUIT\r\n", 6);
    sock_close(&c->sock);
    buf_free(&c->out);
    free(c);
}

static int sync_tcp_mailbox_get(struct sync *s, const char *user, struct store_mailbox *out,
                                const char **why_r)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    int r = sync_tcp_cmd_user(c, "MBOX", user, why_r);
    if (r != 0)
        return r;
    buf_puts(&c->out, "\r\n");
    char *rest;
    if ((r = sync_tcp_call(c, why_r, &rest)) != 0)
        return r;
    struct sync_tcp_tok t[SYNC_TCP_TOKS];
    memset(out, 0, sizeof(*out));
    if (sync_tcp_split(rest, t, SYNC_TCP_TOKS) != 6 ||
        store_mbox_state_parse(t[0].p, &out->state) < 0 ||
        sync_tcp_u64(&t[1], UINT64_MAX, &out->epoch) < 0 || t[2].len > MAIL_NAME_MAX ||
        sync_tcp_u64(&t[3], UINT64_MAX, &out->modseq) < 0 ||
        sync_tcp_u64(&t[4], UINT64_MAX, &out->messages) < 0 ||
        sync_tcp_u64(&t[5], UINT64_MAX, &out->bytes) < 0)
        return sync_tcp_broken(c, why_r, "malformed MBOX reply");
    if (strcmp(t[2].p, "-") != 0)
        memcpy(out->moved_to, t[2].p, t[2].len + 1);
    /* The wire carries no creation time (0 here), nor the user as the
     * store normalized it: the caller's spelling is kept. */
    str_copy(out->user, user, sizeof(out->user));
    return 0;
}

static int sync_tcp_mailbox_create(struct sync *s, const char *user, enum store_mbox_state state,
                                   uint64_t epoch, uint32_t inbox_uidvalidity, const char **why_r)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    int r = sync_tcp_cmd_user(c, "CREATE", user, why_r);
    if (r != 0)
        return r;
    if ((unsigned)state > STORE_MBOX_DELETING)
        return sync_tcp_invalid(why_r);
    buf_printf(&c->out, " %s %llu", store_mbox_state_str(state), (unsigned long long)epoch);
    /* Optional on the wire: without it (0) the store chooses, so a line
     * that does not need it stays what an older syncd understands. */
    if (inbox_uidvalidity != 0)
        buf_printf(&c->out, " %u", inbox_uidvalidity);
    buf_puts(&c->out, "\r\n");
    return sync_tcp_call(c, why_r, NULL);
}

static int sync_tcp_mailbox_state(struct sync *s, const char *user, enum store_mbox_state expect,
                                  enum store_mbox_state state, uint64_t epoch, const char *moved_to,
                                  const char **why_r)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    int r = sync_tcp_cmd_user(c, "STATE", user, why_r);
    if (r != 0)
        return r;
    if ((unsigned)expect > STORE_MBOX_DELETING || (unsigned)state > STORE_MBOX_DELETING)
        return sync_tcp_invalid(why_r);
    /* moved_to matters for MOVED only (the store ignores it otherwise). */
    if (state != STORE_MBOX_MOVED)
        moved_to = "-";
    else if (moved_to == NULL || !mail_store_name_valid(moved_to) || strcmp(moved_to, "-") == 0)
        return sync_tcp_invalid(why_r);
    buf_printf(&c->out, " %s %s %llu %s\r\n", store_mbox_state_str(expect),
               store_mbox_state_str(state), (unsigned long long)epoch, moved_to);
    return sync_tcp_call(c, why_r, NULL);
}

static int sync_tcp_mailbox_purge(struct sync *s, const char *user, const char **why_r)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    int r = sync_tcp_cmd_user(c, "PURGE", user, why_r);
    if (r != 0)
        return r;
    buf_puts(&c->out, "\r\n");
    return sync_tcp_call(c, why_r, NULL);
}

static int sync_tcp_parse_folder(struct sync_tcp_tok *t, int n, struct sync_folder *f)
{
    memset(f, 0, sizeof(*f));
    if (n != 6 || sync_tcp_u32(&t[1], &f->uidvalidity) < 0 ||
        sync_tcp_u32(&t[2], &f->uidnext) < 0 || sync_tcp_u64(&t[3], UINT64_MAX, &f->modseq) < 0 ||
        sync_tcp_bool(&t[4], &f->deleted) < 0 || sync_tcp_str(&t[5], f->name, sizeof(f->name)) < 0)
        return -1;
    return 0;
}

static int sync_tcp_parse_msg(struct sync_tcp_tok *t, int n, struct sync_msg *m)
{
    memset(m, 0, sizeof(*m));
    if (n != 12 || sync_tcp_u32(&t[1], &m->uidvalidity) < 0 || sync_tcp_u32(&t[2], &m->uid) < 0 ||
        t[3].len != 2 * STORE_GUID_LEN || hex_decode(t[3].p, m->guid, STORE_GUID_LEN) < 0 ||
        sync_tcp_u32(&t[4], &m->flags) < 0 || sync_tcp_date(&t[5], &m->internal_date) < 0 ||
        sync_tcp_u64(&t[6], UINT64_MAX, &m->size) < 0 || t[7].len != 2 * SHA256_LEN ||
        hex_decode(t[7].p, m->sha256, SHA256_LEN) < 0 ||
        sync_tcp_u64(&t[8], UINT64_MAX, &m->modseq) < 0 || sync_tcp_bool(&t[9], &m->expunged) < 0 ||
        sync_tcp_str(&t[10], m->keywords, sizeof(m->keywords)) < 0 ||
        sync_tcp_str(&t[11], m->folder, sizeof(m->folder)) < 0)
        return -1;
    return 0;
}

static int sync_tcp_changes(struct sync *s, const char *user, uint64_t since,
                            const struct sync_changes_cb *cb, uint64_t *modseq_r,
                            const char **why_r)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    int r = sync_tcp_cmd_user(c, "CHANGES", user, why_r);
    if (r != 0)
        return r;
    buf_printf(&c->out, " %llu\r\n", (unsigned long long)since);
    if (sync_tcp_send_out(c) < 0)
        return sync_tcp_broken(c, why_r, NULL);
    for (;;) {
        size_t len;
        if (sync_tcp_read_line(c, &len) < 0)
            return sync_tcp_broken(c, why_r, NULL);
        struct sync_tcp_tok t[SYNC_TCP_TOKS];
        if (c->line[0] == 'F' && c->line[1] == ' ') {
            struct sync_folder f;
            if (sync_tcp_parse_folder(t, sync_tcp_split(c->line, t, SYNC_TCP_TOKS), &f) < 0)
                return sync_tcp_broken(c, why_r, "malformed F record");
            /* The rest of the listing is not read: the connection cannot
             * be used again. */
            if (cb->folder != NULL && cb->folder(cb->ctx, &f) != 0)
                return sync_tcp_broken(c, why_r, "listing aborted by the caller");
            continue;
        }
        if (c->line[0] == 'M' && c->line[1] == ' ') {
            struct sync_msg m;
            if (sync_tcp_parse_msg(t, sync_tcp_split(c->line, t, SYNC_TCP_TOKS), &m) < 0)
                return sync_tcp_broken(c, why_r, "malformed M record");
            if (cb->msg != NULL && cb->msg(cb->ctx, &m) != 0)
                return sync_tcp_broken(c, why_r, "listing aborted by the caller");
            continue;
        }
        char *rest;
        if ((r = sync_tcp_final(c, why_r, &rest)) != 0)
            return r;
        if (parse_u64(rest, UINT64_MAX, modseq_r) < 0)
            return sync_tcp_broken(c, why_r, "malformed CHANGES reply");
        return 0;
    }
}

/* Appends "<verb> <user> <folder> <uid>" CRLF to c->out (FETCH, HEADER). */
static void sync_tcp_fetch_verb(struct sync_tcp *c, const char *verb, const char *user,
                                const char *folder, uint32_t uid)
{
    buf_printf(&c->out, "%s ", verb);
    sync_tcp_put_hex(&c->out, user, " ");
    sync_tcp_put_hex(&c->out, folder, "");
    buf_printf(&c->out, " %u\r\n", uid);
}

/* Appends "FETCH <user> <folder> <uid>" CRLF to c->out. */
static void sync_tcp_fetch_line(struct sync_tcp *c, const char *user, const char *folder,
                                uint32_t uid)
{
    buf_puts(&c->out, "FETCH ");
    sync_tcp_put_hex(&c->out, user, " ");
    sync_tcp_put_hex(&c->out, folder, "");
    buf_printf(&c->out, " %u\r\n", uid);
}

/* Reads one FETCH answer: "+DATA <len> <sha256>", the body (appended to
 * out and checked against the SHA-256) and CRLF; or a refusal. */
static int sync_tcp_fetch_reply(struct sync_tcp *c, struct buf *out, const char **why_r)
{
    size_t len;
    if (sync_tcp_read_line(c, &len) < 0)
        return sync_tcp_broken(c, why_r, NULL);
    if (strncmp(c->line, "+DATA ", 6) != 0) {
        int r = sync_tcp_final(c, why_r, NULL);
        return r == 0 ? sync_tcp_broken(c, why_r, "+OK where +DATA was due") : r;
    }
    struct sync_tcp_tok t[SYNC_TCP_TOKS];
    uint64_t n;
    uint8_t sha[SHA256_LEN], got[SHA256_LEN];
    if (sync_tcp_split(c->line + 6, t, SYNC_TCP_TOKS) != 2 ||
        sync_tcp_u64(&t[0], SYNC_TCP_BODY_MAX, &n) < 0 || t[1].len != 2 * SHA256_LEN ||
        hex_decode(t[1].p, sha, SHA256_LEN) < 0)
        return sync_tcp_broken(c, why_r, "malformed +DATA line");
    size_t start = out->len;
    char crlf[2];
    if (sync_tcp_read_exact(c, (size_t)n, out, NULL) < 0 ||
        sync_tcp_read_exact(c, 2, NULL, crlf) < 0) {
        out->len = start;
        if (out->data != NULL)
            out->data[start] = '\0';
        return sync_tcp_broken(c, why_r, NULL);
    }
    if (crlf[0] != '\r' || crlf[1] != '\n')
        return sync_tcp_broken(c, why_r, "message body not followed by CRLF");
    /* An empty body may have left an empty buffer without storage. */
    sha256_buf(out->data != NULL ? out->data + start : "", (size_t)n, got);
    if (memcmp(got, sha, SHA256_LEN) != 0) {
        out->len = start;
        if (out->data != NULL)
            out->data[start] = '\0';
        return sync_tcp_broken(c, why_r, "message body does not match its SHA-256");
    }
    return 0;
}

static int sync_tcp_fetch(struct sync *s, const char *user, const char *folder, uint32_t uid,
                          struct buf *out, const char **why_r)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    int r = sync_tcp_cmd_user(c, "FETCH", user, why_r);
    if (r != 0)
        return r;
    if (!sync_tcp_folder_ok(folder))
        return sync_tcp_invalid(why_r);
    buf_reset(&c->out);
    sync_tcp_fetch_line(c, user, folder, uid);
    if (sync_tcp_send_out(c) < 0)
        return sync_tcp_broken(c, why_r, NULL);
    return sync_tcp_fetch_reply(c, out, why_r);
}

/* FETCHes outstanding at once in a fetch_batch: the requests of a window
 * are small (a line each), so sending them never waits on the server,
 * which answers as it reads and pauses reading only while its output is
 * above its bound (docs/sync.md). */
#define SYNC_TCP_FETCH_WINDOW 64

static int sync_tcp_fetch_batch(struct sync *s, const char *user, const char *const *folders,
                                const uint32_t *uids, size_t n, struct buf *outs, int *rc_out,
                                const char **why_out)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    if (n > SYNC_BATCH_MAX) {
        log_warn("sync", "%s: fetch_batch of %zu messages: over the limit", c->endpoint, n);
        return -1;
    }
    const char *why = NULL;
    for (size_t i = 0; i < n; i++) {
        rc_out[i] = 0;
        why_out[i] = NULL;
    }
    if (n == 0)
        return 0;
    int r = sync_tcp_cmd_user(c, "FETCH", user, &why);
    if (r != 0) {
        for (size_t i = 0; i < n; i++) {
            rc_out[i] = r;
            why_out[i] = why;
        }
        return r < 0 ? -1 : 0;
    }
    /* Items refused here (as sync_tcp_fetch would) do not travel: sent[]
     * are the indexes that do, answered in order. */
    size_t sent[SYNC_BATCH_MAX], k = 0;
    for (size_t i = 0; i < n; i++) {
        if (!sync_tcp_folder_ok(folders[i]))
            rc_out[i] = sync_tcp_invalid(&why_out[i]);
        else
            sent[k++] = i;
    }
    size_t next = 0; /* the next request to send */
    for (size_t j = 0; j < k; j++) {
        buf_reset(&c->out);
        while (next < k && next < j + SYNC_TCP_FETCH_WINDOW) {
            sync_tcp_fetch_line(c, user, folders[sent[next]], uids[sent[next]]);
            next++;
        }
        if (c->out.len > 0 && sync_tcp_send_out(c) < 0)
            return sync_tcp_broken(c, NULL, NULL);
        size_t i = sent[j];
        r = sync_tcp_fetch_reply(c, &outs[i], &why_out[i]);
        if (r < 0)
            return -1;
        rc_out[i] = r;
    }
    return 0;
}

/* HEADERs pipelined as fetch_batch's FETCHes, one folder. */
static int sync_tcp_fetch_headers(struct sync *s, const char *user, const char *folder,
                                  const uint32_t *uids, size_t n, struct buf *outs, int *rc_out,
                                  const char **why_out)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    if (n > SYNC_BATCH_MAX) {
        log_warn("sync", "%s: fetch_headers of %zu messages: over the limit", c->endpoint, n);
        return -1;
    }
    const char *why = NULL;
    for (size_t i = 0; i < n; i++) {
        rc_out[i] = 0;
        why_out[i] = NULL;
    }
    if (n == 0)
        return 0;
    int r = sync_tcp_cmd_user(c, "HEADER", user, &why);
    if (r == 0 && !sync_tcp_folder_ok(folder))
        r = sync_tcp_invalid(&why);
    if (r != 0) {
        for (size_t i = 0; i < n; i++) {
            rc_out[i] = r;
            why_out[i] = why;
        }
        return r < 0 ? -1 : 0;
    }
    size_t next = 0;
    for (size_t j = 0; j < n; j++) {
        buf_reset(&c->out);
        while (next < n && next < j + SYNC_TCP_FETCH_WINDOW)
            sync_tcp_fetch_verb(c, "HEADER", user, folder, uids[next++]);
        if (c->out.len > 0 && sync_tcp_send_out(c) < 0)
            return sync_tcp_broken(c, NULL, NULL);
        r = sync_tcp_fetch_reply(c, &outs[j], &why_out[j]);
        if (r < 0)
            return -1;
        rc_out[j] = r;
    }
    return 0;
}

/* The optional trailing modseq of a change (docs/sync.md): sent only when
 * explicit, so a plain change reads as before; then the line's end. */
static void sync_tcp_put_modseq(struct sync_tcp *c, uint64_t modseq)
{
    if (modseq != 0)
        buf_printf(&c->out, " %llu", (unsigned long long)modseq);
    buf_puts(&c->out, "\r\n");
}

static int sync_tcp_append(struct sync *s, const char *user, const struct sync_msg *m,
                           const void *data, size_t len, const char **why_r)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    int r = sync_tcp_cmd_user(c, "APPEND", user, why_r);
    if (r != 0)
        return r;
    if (!sync_tcp_folder_ok(m->folder) || (uint64_t)len > SYNC_TCP_BODY_MAX ||
        (data == NULL && len > 0) || m->modseq > STORE_MODSEQ_MAX)
        return sync_tcp_invalid(why_r);
    char guid[2 * STORE_GUID_LEN + 1], sha[2 * SHA256_LEN + 1];
    hex_encode(m->guid, STORE_GUID_LEN, guid);
    hex_encode(m->sha256, SHA256_LEN, sha);
    buf_puts(&c->out, " ");
    sync_tcp_put_hex(&c->out, m->folder, "");
    buf_printf(&c->out, " %u %s %u %lld %zu %s ", m->uid, guid, m->flags,
               (long long)m->internal_date, len, sha);
    sync_tcp_put_hex(&c->out, m->keywords, "");
    sync_tcp_put_modseq(c, m->modseq);
    if (sync_tcp_send_out(c) < 0 || (len > 0 && sync_tcp_send(c, data, len) < 0) ||
        sync_tcp_send(c, "\r\n", 2) < 0)
        return sync_tcp_broken(c, why_r, NULL);
    size_t l;
    if (sync_tcp_read_line(c, &l) < 0)
        return sync_tcp_broken(c, why_r, NULL);
    return sync_tcp_final(c, why_r, NULL);
}

/* Bodies up to this size are copied into c->out with their record lines, so
 * a batch of small messages leaves in a few large sends; bigger ones are
 * sent from the caller's memory. */
#define SYNC_TCP_INLINE_BODY (64 * 1024)
#define SYNC_TCP_SEND_AT     (256 * 1024)

/* APPENDS, first half: the whole batch is sent in one go (the server
 * answers only after it has all of it); the answers are read by
 * sync_tcp_append_batch_end. */
/* Before the first APPENDS with delivery ids on a connection: does the
 * server take them? One record it refuses whatever it holds (UID 0, no
 * body): a server that knows the field answers "-NO invalid" and "+OK 1",
 * nothing stored; one from before answers "-ERR wrong number of fields in
 * an APPENDS record" and closes, having read all of it (a whole batch
 * refused that way might be cut off by a reset with its bodies unread).
 * 0 known (c->ids_ok or c->no_ids set), -1 the connection failed. */
static int sync_tcp_probe_ids(struct sync_tcp *c, const char *user)
{
    const char *why = NULL;
    if (sync_tcp_cmd_user(c, "APPENDS", user, &why) != 0)
        return -1;
    uint8_t d[SHA256_LEN];
    char sha[2 * SHA256_LEN + 1];
    sha256_buf("", 0, d);
    hex_encode(d, SHA256_LEN, sha);
    buf_printf(&c->out,
               " 1\r\n494e424f58 0 00000000000000000000000000000000 0 0 0 %s - - "
               "tern.probe\r\n\r\n",
               sha);
    size_t len;
    if (sync_tcp_send_out(c) < 0 || sync_tcp_read_line(c, &len) < 0)
        return sync_tcp_broken(c, NULL, NULL);
    if (strcmp(c->line, "-ERR wrong number of fields in an APPENDS record") == 0) {
        c->no_ids = true;
        sync_tcp_broken(c, NULL, "the store takes no delivery ids in APPENDS");
        return 0;
    }
    if (strcmp(c->line, "-NO invalid") != 0 || sync_tcp_read_line(c, &len) < 0 ||
        strcmp(c->line, "+OK 1") != 0)
        return sync_tcp_broken(c, NULL, "unexpected answer to the APPENDS probe \"%.60s\"",
                               c->line);
    c->ids_ok = true;
    return 0;
}

static int sync_tcp_batch_send(struct sync *s, const char *user, const struct sync_msg *const *msgs,
                               const void *const *data, const size_t *lens, size_t n, int *rc_out,
                               const char **why_out, struct sync_append_res *res_out)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    if (c->batch_pending)
        panic("sync: %s: a second APPENDS before the answers of the first", c->endpoint);
    if (!sync_batch_fits(lens, n)) {
        log_warn("sync", "%s: append_batch over its limits (%zu messages): not sent", c->endpoint,
                 n);
        return -1;
    }
    if (n == 0)
        return 0;
    bool any_id = false;
    for (size_t i = 0; i < n; i++)
        any_id = any_id || msgs[i]->delivery_id[0] != '\0';
    if (any_id && !c->ids_ok && !c->no_ids && user != NULL && strlen(user) <= MAIL_ADDR_MAX &&
        sync_tcp_probe_ids(c, user) < 0)
        return -1;
    if (any_id && c->no_ids) {
        /* Nothing of it is sent (the server closed the connection). */
        for (size_t i = 0; i < n; i++) {
            rc_out[i] = SYNC_NO;
            why_out[i] = "unsupported";
            if (res_out != NULL)
                memset(&res_out[i], 0, sizeof(res_out[i]));
        }
        return 0;
    }
    const char *why = NULL;
    int r = sync_tcp_cmd_user(c, "APPENDS", user, &why);
    if (r < 0)
        return -1;
    /* Items the server would refuse as invalid are answered here (as
     * sync_tcp_append does); the others travel. */
    size_t *sent = c->batch_sent, k = 0;
    bool ids = false;
    for (size_t i = 0; i < n; i++) {
        rc_out[i] = 0;
        why_out[i] = NULL;
        if (res_out != NULL)
            memset(&res_out[i], 0, sizeof(res_out[i]));
        const char *id = msgs[i]->delivery_id;
        bool has_id = id[0] != '\0';
        if (r == SYNC_NO || !sync_tcp_folder_ok(msgs[i]->folder) ||
            !sync_tcp_kw_ok(msgs[i]->keywords) || (data[i] == NULL && lens[i] > 0) ||
            msgs[i]->modseq > STORE_MODSEQ_MAX ||
            (has_id && (strnlen(id, STORE_DELIVERY_ID_MAX + 1) > STORE_DELIVERY_ID_MAX ||
                        !sync_tcp_atom_ok(id, STORE_DELIVERY_ID_MAX)))) {
            rc_out[i] = sync_tcp_invalid(&why_out[i]);
        } else {
            ids = ids || has_id;
            sent[k++] = i;
        }
    }
    if (k == 0) {
        buf_reset(&c->out);
        return 0;
    }
    buf_printf(&c->out, " %zu\r\n", k);
    for (size_t j = 0; j < k; j++) {
        size_t i = sent[j];
        const struct sync_msg *m = msgs[i];
        char guid[2 * STORE_GUID_LEN + 1], sha[2 * SHA256_LEN + 1];
        hex_encode(m->guid, STORE_GUID_LEN, guid);
        hex_encode(m->sha256, SHA256_LEN, sha);
        sync_tcp_put_hex(&c->out, m->folder, "");
        buf_printf(&c->out, " %u %s %u %lld %zu %s ", m->uid, guid, m->flags,
                   (long long)m->internal_date, lens[i], sha);
        sync_tcp_put_hex(&c->out, m->keywords, "");
        if (m->delivery_id[0] != '\0') {
            /* The optional fields in order: a modseq ("-": none), the id. */
            if (m->modseq != 0)
                buf_printf(&c->out, " %llu", (unsigned long long)m->modseq);
            else
                buf_puts(&c->out, " -");
            buf_printf(&c->out, " %s\r\n", m->delivery_id);
        } else {
            sync_tcp_put_modseq(c, m->modseq);
        }
        if (lens[i] <= SYNC_TCP_INLINE_BODY) {
            if (lens[i] > 0)
                buf_append(&c->out, data[i], lens[i]);
        } else if (sync_tcp_send_out(c) < 0 || sync_tcp_send(c, data[i], lens[i]) < 0) {
            return sync_tcp_broken(c, NULL, NULL);
        }
        buf_puts(&c->out, "\r\n");
        if (c->out.len >= SYNC_TCP_SEND_AT && sync_tcp_send_out(c) < 0)
            return sync_tcp_broken(c, NULL, NULL);
    }
    if (sync_tcp_send_out(c) < 0)
        return sync_tcp_broken(c, NULL, NULL);
    c->batch_pending = true;
    c->batch_k = k;
    c->batch_rc = rc_out;
    c->batch_why = why_out;
    c->batch_res = res_out;
    c->batch_ids = ids;
    return 0;
}

static int sync_tcp_append_batch_start(struct sync *s, const char *user,
                                       const struct sync_msg *const *msgs, const void *const *data,
                                       const size_t *lens, size_t n, int *rc_out,
                                       const char **why_out)
{
    return sync_tcp_batch_send(s, user, msgs, data, lens, n, rc_out, why_out, NULL);
}

/* An item's "+OK duplicate <uid> <uidvalidity>" (rest: after "+OK "):
 * 1 with it in *res, 0 for a plain "+OK", -1 for anything else. */
static int sync_tcp_dup_reply(char *rest, struct sync_append_res *res)
{
    if (rest[0] == '\0')
        return 0;
    struct sync_tcp_tok t[4];
    int n = sync_tcp_split(rest, t, 4);
    if (n != 3 || t[0].len != 9 || memcmp(t[0].p, "duplicate", 9) != 0 ||
        sync_tcp_u32(&t[1], &res->uid) < 0 || sync_tcp_u32(&t[2], &res->uidvalidity) < 0)
        return -1;
    res->duplicate = true;
    return 1;
}

/* APPENDS, second half: its n item lines and "+OK <n>". */
static int sync_tcp_append_batch_end(struct sync *s)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    if (!c->batch_pending)
        return c->broken ? -1 : 0;
    c->batch_pending = false;
    size_t k = c->batch_k;
    const size_t *sent = c->batch_sent;
    int r;
    for (size_t j = 0; j < k; j++) {
        size_t len;
        char *rest;
        if (sync_tcp_read_line(c, &len) < 0)
            return sync_tcp_broken(c, NULL, NULL);
        if (j == 0 && c->batch_ids &&
            strcmp(c->line, "-ERR wrong number of fields in an APPENDS record") == 0) {
            /* A store from before delivery ids in APPENDS: nothing of the
             * batch is stored, and it closes the connection. The caller
             * sends the batch again without ids (sync.h). */
            c->no_ids = true;
            for (size_t i = 0; i < k; i++) {
                c->batch_rc[sent[i]] = SYNC_NO;
                c->batch_why[sent[i]] = "unsupported";
            }
            sync_tcp_broken(c, NULL, "the store takes no delivery ids in APPENDS");
            return 0;
        }
        r = sync_tcp_final(c, &c->batch_why[sent[j]], &rest);
        if (r < 0)
            return -1;
        struct sync_append_res dup = {0};
        if (r == 0 && sync_tcp_dup_reply(rest, &dup) < 0)
            return sync_tcp_broken(c, NULL, "unexpected APPENDS item reply \"%.60s\"", c->line);
        if (r == 0 && c->batch_res != NULL)
            c->batch_res[sent[j]] = dup;
        c->batch_rc[sent[j]] = r;
    }
    size_t len;
    char *rest;
    uint64_t got;
    const char *why = NULL;
    if (sync_tcp_read_line(c, &len) < 0)
        return sync_tcp_broken(c, NULL, NULL);
    r = sync_tcp_final(c, &why, &rest);
    if (r == SYNC_NO || (r == 0 && (parse_u64(rest, SYNC_BATCH_MAX, &got) < 0 || got != k)))
        return sync_tcp_broken(c, NULL, "unexpected APPENDS reply \"%.60s\"", c->line);
    return r;
}

static int sync_tcp_append_batch(struct sync *s, const char *user,
                                 const struct sync_msg *const *msgs, const void *const *data,
                                 const size_t *lens, size_t n, int *rc_out, const char **why_out,
                                 struct sync_append_res *res_out)
{
    int r = sync_tcp_batch_send(s, user, msgs, data, lens, n, rc_out, why_out, res_out);
    /* Nothing sent (every item answered here): nothing to read. */
    if (r < 0 || !((struct sync_tcp *)s)->batch_pending)
        return r;
    return sync_tcp_append_batch_end(s);
}

static int sync_tcp_folder_ensure_at(struct sync *s, const char *user, const char *name,
                                     uint32_t uidvalidity, uint32_t uidnext, uint64_t modseq,
                                     const char **why_r)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    int r = sync_tcp_cmd_user(c, "FOLDER", user, why_r);
    if (r != 0)
        return r;
    if (!sync_tcp_folder_ok(name) || modseq > STORE_MODSEQ_MAX)
        return sync_tcp_invalid(why_r);
    buf_printf(&c->out, " %u %u ", uidvalidity, uidnext);
    sync_tcp_put_hex(&c->out, name, "");
    sync_tcp_put_modseq(c, modseq);
    return sync_tcp_call(c, why_r, NULL);
}

static int sync_tcp_folder_ensure(struct sync *s, const char *user, const char *name,
                                  uint32_t uidvalidity, uint32_t uidnext, const char **why_r)
{
    return sync_tcp_folder_ensure_at(s, user, name, uidvalidity, uidnext, 0, why_r);
}

static int sync_tcp_folder_delete_at(struct sync *s, const char *user, uint32_t uidvalidity,
                                     uint64_t modseq, const char **why_r)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    int r = sync_tcp_cmd_user(c, "FDELETE", user, why_r);
    if (r != 0)
        return r;
    if (modseq > STORE_MODSEQ_MAX)
        return sync_tcp_invalid(why_r);
    buf_printf(&c->out, " %u", uidvalidity);
    sync_tcp_put_modseq(c, modseq);
    return sync_tcp_call(c, why_r, NULL);
}

static int sync_tcp_folder_delete(struct sync *s, const char *user, uint32_t uidvalidity,
                                  const char **why_r)
{
    return sync_tcp_folder_delete_at(s, user, uidvalidity, 0, why_r);
}

static int sync_tcp_flags_at(struct sync *s, const char *user, const char *folder, uint32_t uid,
                             uint32_t flags, const char *keywords, uint64_t modseq,
                             const char **why_r)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    int r = sync_tcp_cmd_user(c, "FLAGS", user, why_r);
    if (r != 0)
        return r;
    if (!sync_tcp_folder_ok(folder) || !sync_tcp_kw_ok(keywords) || modseq > STORE_MODSEQ_MAX)
        return sync_tcp_invalid(why_r);
    buf_puts(&c->out, " ");
    sync_tcp_put_hex(&c->out, folder, "");
    buf_printf(&c->out, " %u %u ", uid, flags);
    sync_tcp_put_hex(&c->out, keywords != NULL ? keywords : "", "");
    sync_tcp_put_modseq(c, modseq);
    return sync_tcp_call(c, why_r, NULL);
}

static int sync_tcp_flags(struct sync *s, const char *user, const char *folder, uint32_t uid,
                          uint32_t flags, const char *keywords, const char **why_r)
{
    return sync_tcp_flags_at(s, user, folder, uid, flags, keywords, 0, why_r);
}

static int sync_tcp_expunge_at(struct sync *s, const char *user, const char *folder, uint32_t uid,
                               uint64_t modseq, const char **why_r)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    int r = sync_tcp_cmd_user(c, "EXPUNGE", user, why_r);
    if (r != 0)
        return r;
    if (!sync_tcp_folder_ok(folder) || modseq > STORE_MODSEQ_MAX)
        return sync_tcp_invalid(why_r);
    buf_puts(&c->out, " ");
    sync_tcp_put_hex(&c->out, folder, "");
    buf_printf(&c->out, " %u", uid);
    sync_tcp_put_modseq(c, modseq);
    return sync_tcp_call(c, why_r, NULL);
}

static int sync_tcp_tombstone(struct sync *s, const char *user, const struct sync_msg *m,
                              const char **why_r)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    int r = sync_tcp_cmd_user(c, "TOMB", user, why_r);
    if (r != 0)
        return r;
    if (!sync_tcp_folder_ok(m->folder) || !sync_tcp_kw_ok(m->keywords) || m->modseq == 0 ||
        m->modseq > STORE_MODSEQ_MAX || m->size > (uint64_t)INT64_MAX)
        return sync_tcp_invalid(why_r);
    char guid[2 * STORE_GUID_LEN + 1], sha[2 * SHA256_LEN + 1];
    hex_encode(m->guid, STORE_GUID_LEN, guid);
    hex_encode(m->sha256, SHA256_LEN, sha);
    buf_puts(&c->out, " ");
    sync_tcp_put_hex(&c->out, m->folder, "");
    buf_printf(&c->out, " %u %s %u %lld %llu %s ", m->uid, guid, m->flags,
               (long long)m->internal_date, (unsigned long long)m->size, sha);
    sync_tcp_put_hex(&c->out, m->keywords, "");
    sync_tcp_put_modseq(c, m->modseq);
    return sync_tcp_call(c, why_r, NULL);
}

static int sync_tcp_expunge(struct sync *s, const char *user, const char *folder, uint32_t uid,
                            const char **why_r)
{
    return sync_tcp_expunge_at(s, user, folder, uid, 0, why_r);
}

/* Reads "X ..." records until the final reply, handing each line's tokens
 * to rec (which returns -1 on a malformed record, -2 to stop: the rest of
 * the listing unread, the connection is broken either way). */
static int sync_tcp_records(struct sync_tcp *c, char tag, int ntok,
                            int (*rec)(void *ctx, struct sync_tcp_tok *t), void *ctx,
                            const char **why_r)
{
    if (sync_tcp_send_out(c) < 0)
        return sync_tcp_broken(c, why_r, NULL);
    for (;;) {
        size_t len;
        if (sync_tcp_read_line(c, &len) < 0)
            return sync_tcp_broken(c, why_r, NULL);
        if (c->line[0] != tag || c->line[1] != ' ')
            return sync_tcp_final(c, why_r, NULL);
        struct sync_tcp_tok t[SYNC_TCP_TOKS];
        int rr = sync_tcp_split(c->line, t, SYNC_TCP_TOKS) != ntok ? -1 : rec(ctx, t);
        if (rr == -2)
            return sync_tcp_broken(c, why_r, "listing aborted by the caller");
        if (rr < 0)
            return sync_tcp_broken(c, why_r, "malformed %c record", tag);
    }
}

struct sync_tcp_list {
    void *list;
    size_t n, cap, size;
};

static void *sync_tcp_list_add(struct sync_tcp_list *l)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        l->list = xrealloc(l->list, l->cap * l->size);
    }
    void *e = (char *)l->list + l->n++ * l->size;
    memset(e, 0, l->size);
    return e;
}

static int sync_tcp_digest_rec(void *ctx, struct sync_tcp_tok *t)
{
    struct sync_digest *d = sync_tcp_list_add(ctx);
    if (sync_tcp_u32(&t[1], &d->uidvalidity) < 0 || sync_tcp_u32(&t[2], &d->uidnext) < 0 ||
        sync_tcp_u64(&t[3], UINT64_MAX, &d->messages) < 0 || t[4].len != 2 * SHA256_LEN ||
        hex_decode(t[4].p, d->digest, SHA256_LEN) < 0 ||
        sync_tcp_str(&t[5], d->name, sizeof(d->name)) < 0)
        return -1;
    return 0;
}

/* A listing command answered by records then +OK: VERB <user-hex>, each
 * record line tagged `tag` with `ntok` tokens parsed by rec into an array
 * of `size`-byte elements. */
static int sync_tcp_list_cmd(struct sync_tcp *c, const char *verb, const char *user, char tag,
                             int ntok, size_t size, int (*rec)(void *, struct sync_tcp_tok *),
                             void **list_r, size_t *n_r, const char **why_r)
{
    *list_r = NULL;
    *n_r = 0;
    int r = sync_tcp_cmd_user(c, verb, user, why_r);
    if (r != 0)
        return r;
    buf_puts(&c->out, "\r\n");
    struct sync_tcp_list l = {.size = size};
    r = sync_tcp_records(c, tag, ntok, rec, &l, why_r);
    if (r != 0) {
        free(l.list);
        return r;
    }
    *list_r = l.list != NULL ? l.list : xmalloc(1);
    *n_r = l.n;
    return 0;
}

static int sync_tcp_digest(struct sync *s, const char *user, struct sync_digest **list_r,
                           size_t *n_r, const char **why_r)
{
    return sync_tcp_list_cmd((struct sync_tcp *)s, "DIGEST", user, 'D', 6,
                             sizeof(struct sync_digest), sync_tcp_digest_rec, (void **)list_r, n_r,
                             why_r);
}

static int sync_tcp_delivery_rec(void *ctx, struct sync_tcp_tok *t)
{
    struct sync_delivery *d = sync_tcp_list_add(ctx);
    if (!sync_tcp_atom_ok(t[1].p, STORE_DELIVERY_ID_MAX) || sync_tcp_u32(&t[2], &d->uid) < 0 ||
        sync_tcp_str(&t[3], d->folder, sizeof(d->folder)) < 0)
        return -1;
    memcpy(d->id, t[1].p, t[1].len + 1);
    return 0;
}

static int sync_tcp_deliveries(struct sync *s, const char *user, struct sync_delivery **list_r,
                               size_t *n_r, const char **why_r)
{
    return sync_tcp_list_cmd((struct sync_tcp *)s, "DELIVERIES", user, 'I', 4,
                             sizeof(struct sync_delivery), sync_tcp_delivery_rec, (void **)list_r,
                             n_r, why_r);
}

static int sync_tcp_delivery_add(struct sync *s, const char *user, const struct sync_delivery *d,
                                 const char **why_r)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    int r = sync_tcp_cmd_user(c, "DELIVERY", user, why_r);
    if (r != 0)
        return r;
    if (!sync_tcp_atom_ok(d->id, STORE_DELIVERY_ID_MAX) || !sync_tcp_folder_ok(d->folder))
        return sync_tcp_invalid(why_r);
    buf_printf(&c->out, " %s %u ", d->id, d->uid);
    sync_tcp_put_hex(&c->out, d->folder, "\r\n");
    return sync_tcp_call(c, why_r, NULL);
}

static int sync_tcp_modseq_raise(struct sync *s, const char *user, uint64_t modseq,
                                 const char **why_r)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    int r = sync_tcp_cmd_user(c, "MODSEQ", user, why_r);
    if (r != 0)
        return r;
    buf_printf(&c->out, " %llu\r\n", (unsigned long long)modseq);
    return sync_tcp_call(c, why_r, NULL);
}

/* ---- for IMAP sessions ---- */

static int sync_tcp_folders(struct sync *s, const char *user, struct sync_folder **list_r,
                            size_t *n_r, const char **why_r)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    *list_r = NULL;
    *n_r = 0;
    int r = sync_tcp_cmd_user(c, "FOLDERS", user, why_r);
    if (r != 0)
        return r;
    buf_puts(&c->out, "\r\n");
    if (sync_tcp_send_out(c) < 0)
        return sync_tcp_broken(c, why_r, NULL);
    struct sync_tcp_list l = {.size = sizeof(struct sync_folder)};
    for (;;) {
        size_t len;
        if (sync_tcp_read_line(c, &len) < 0) {
            free(l.list);
            return sync_tcp_broken(c, why_r, NULL);
        }
        if (c->line[0] == 'F' && c->line[1] == ' ') {
            struct sync_tcp_tok t[SYNC_TCP_TOKS];
            struct sync_folder f;
            if (sync_tcp_parse_folder(t, sync_tcp_split(c->line, t, SYNC_TCP_TOKS), &f) < 0) {
                free(l.list);
                return sync_tcp_broken(c, why_r, "malformed F record");
            }
            *(struct sync_folder *)sync_tcp_list_add(&l) = f;
            continue;
        }
        r = sync_tcp_final(c, why_r, NULL);
        if (r != 0) {
            free(l.list);
            return r;
        }
        *list_r = l.list != NULL ? l.list : xmalloc(1);
        *n_r = l.n;
        return 0;
    }
}

static int sync_tcp_msgs(struct sync *s, const char *user, const char *folder,
                         int (*cb)(void *ctx, const struct sync_msg *m), void *ctx,
                         uint64_t *modseq_r, const char **why_r)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    int r = sync_tcp_cmd_user(c, "MSGS", user, why_r);
    if (r != 0)
        return r;
    if (!sync_tcp_folder_ok(folder))
        return sync_tcp_invalid(why_r);
    buf_puts(&c->out, " ");
    sync_tcp_put_hex(&c->out, folder, "\r\n");
    if (sync_tcp_send_out(c) < 0)
        return sync_tcp_broken(c, why_r, NULL);
    for (;;) {
        size_t len;
        if (sync_tcp_read_line(c, &len) < 0)
            return sync_tcp_broken(c, why_r, NULL);
        if (c->line[0] == 'M' && c->line[1] == ' ') {
            struct sync_tcp_tok t[SYNC_TCP_TOKS];
            struct sync_msg m;
            if (sync_tcp_parse_msg(t, sync_tcp_split(c->line, t, SYNC_TCP_TOKS), &m) < 0)
                return sync_tcp_broken(c, why_r, "malformed M record");
            if (cb(ctx, &m) != 0)
                return sync_tcp_broken(c, why_r, "listing aborted by the caller");
            continue;
        }
        char *rest;
        if ((r = sync_tcp_final(c, why_r, &rest)) != 0)
            return r;
        if (parse_u64(rest, UINT64_MAX, modseq_r) < 0)
            return sync_tcp_broken(c, why_r, "malformed MSGS reply");
        return 0;
    }
}

static int sync_tcp_append_new(struct sync *s, const char *user, const char *folder, uint32_t flags,
                               const char *keywords, int64_t internal_date, const void *data,
                               size_t len, uint32_t *uid_r, uint32_t *uidvalidity_r,
                               const char **why_r)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    int r = sync_tcp_cmd_user(c, "ADD", user, why_r);
    if (r != 0)
        return r;
    if (!sync_tcp_folder_ok(folder) || !sync_tcp_kw_ok(keywords) ||
        (uint64_t)len > SYNC_TCP_BODY_MAX || (data == NULL && len > 0))
        return sync_tcp_invalid(why_r);
    uint8_t sha[SHA256_LEN];
    char hex[2 * SHA256_LEN + 1];
    sha256_buf(data, len, sha);
    hex_encode(sha, SHA256_LEN, hex);
    buf_puts(&c->out, " ");
    sync_tcp_put_hex(&c->out, folder, "");
    buf_printf(&c->out, " %u %lld %zu %s ", flags, (long long)internal_date, len, hex);
    sync_tcp_put_hex(&c->out, keywords != NULL ? keywords : "", "\r\n");
    if (sync_tcp_send_out(c) < 0 || (len > 0 && sync_tcp_send(c, data, len) < 0) ||
        sync_tcp_send(c, "\r\n", 2) < 0)
        return sync_tcp_broken(c, why_r, NULL);
    size_t l;
    if (sync_tcp_read_line(c, &l) < 0)
        return sync_tcp_broken(c, why_r, NULL);
    char *rest;
    if ((r = sync_tcp_final(c, why_r, &rest)) != 0)
        return r;
    struct sync_tcp_tok t[SYNC_TCP_TOKS];
    if (sync_tcp_split(rest, t, SYNC_TCP_TOKS) != 2 || sync_tcp_u32(&t[0], uid_r) < 0 ||
        sync_tcp_u32(&t[1], uidvalidity_r) < 0)
        return sync_tcp_broken(c, why_r, "malformed ADD reply");
    return 0;
}

static int sync_tcp_flags_ex(struct sync *s, const char *user, const char *folder, uint32_t uid,
                             enum store_flag_mode mode, uint32_t flags, const char *keywords,
                             uint64_t unchanged_since, uint64_t *modseq_r, const char **why_r)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    int r = sync_tcp_cmd_user(c, "SETFLAGS", user, why_r);
    if (r != 0)
        return r;
    if (!sync_tcp_folder_ok(folder) || !sync_tcp_kw_ok(keywords))
        return sync_tcp_invalid(why_r);
    buf_puts(&c->out, " ");
    sync_tcp_put_hex(&c->out, folder, "");
    buf_printf(&c->out, " %u %c %u ", uid,
               mode == STORE_FLAGS_SET   ? '='
               : mode == STORE_FLAGS_ADD ? '+'
                                         : '-',
               flags);
    /* "-" is both "no keywords" and, for ADD/REMOVE, "leave them": the same
     * thing for those modes. */
    sync_tcp_put_hex(&c->out, keywords != NULL ? keywords : "", "");
    buf_printf(&c->out, " %llu\r\n", (unsigned long long)unchanged_since);
    char *rest;
    if ((r = sync_tcp_call(c, why_r, &rest)) != 0)
        return r;
    uint64_t ms;
    if (parse_u64(rest, UINT64_MAX, &ms) < 0)
        return sync_tcp_broken(c, why_r, "malformed SETFLAGS reply");
    if (modseq_r != NULL)
        *modseq_r = ms;
    return 0;
}

static int sync_tcp_folder_create(struct sync *s, const char *user, const char *name,
                                  const char **why_r)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    int r = sync_tcp_cmd_user(c, "FCREATE", user, why_r);
    if (r != 0)
        return r;
    if (!sync_tcp_folder_ok(name) || name[0] == '\0')
        return sync_tcp_invalid(why_r);
    buf_puts(&c->out, " ");
    sync_tcp_put_hex(&c->out, name, "\r\n");
    return sync_tcp_call(c, why_r, NULL);
}

static int sync_tcp_folder_rename(struct sync *s, const char *user, const char *from,
                                  const char *to, const char **why_r)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    int r = sync_tcp_cmd_user(c, "FRENAME", user, why_r);
    if (r != 0)
        return r;
    if (!sync_tcp_folder_ok(from) || !sync_tcp_folder_ok(to) || from[0] == '\0' || to[0] == '\0')
        return sync_tcp_invalid(why_r);
    buf_puts(&c->out, " ");
    sync_tcp_put_hex(&c->out, from, " ");
    sync_tcp_put_hex(&c->out, to, "\r\n");
    return sync_tcp_call(c, why_r, NULL);
}

/* The I records of a DELIVERIES listing, one callback each. */
struct sync_tcp_each {
    int (*cb)(void *ctx, const struct sync_delivery *d);
    void *ctx;
};

static int sync_tcp_each_rec(void *ctx, struct sync_tcp_tok *t)
{
    struct sync_tcp_each *e = ctx;
    struct sync_delivery d;
    memset(&d, 0, sizeof(d));
    if (!sync_tcp_atom_ok(t[1].p, STORE_DELIVERY_ID_MAX) || sync_tcp_u32(&t[2], &d.uid) < 0 ||
        sync_tcp_str(&t[3], d.folder, sizeof(d.folder)) < 0)
        return -1;
    memcpy(d.id, t[1].p, t[1].len + 1);
    return e->cb(e->ctx, &d) != 0 ? -2 : 0;
}

static int sync_tcp_deliveries_each(struct sync *s, const char *user, uint64_t since, uint64_t upto,
                                    int (*cb)(void *ctx, const struct sync_delivery *d), void *ctx,
                                    const char **why_r)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    int r = sync_tcp_cmd_user(c, "DELIVERIES", user, why_r);
    if (r != 0)
        return r;
    /* The range only when it is one: the plain form lists every id. */
    if (since != 0 || upto != UINT64_MAX)
        buf_printf(&c->out, " %llu %llu", (unsigned long long)since, (unsigned long long)upto);
    buf_puts(&c->out, "\r\n");
    struct sync_tcp_each e = {.cb = cb, .ctx = ctx};
    return sync_tcp_records(c, 'I', 4, sync_tcp_each_rec, &e, why_r);
}

/* DELIVERED: n record lines sent at once, then n answers and "+OK <n>". */
static int sync_tcp_delivery_add_batch(struct sync *s, const char *user,
                                       const struct sync_delivery *ds, size_t n, int *rc_out,
                                       const char **why_out)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    if (n > SYNC_BATCH_MAX) {
        log_warn("sync", "%s: delivery_add_batch of %zu ids: over the limit", c->endpoint, n);
        return -1;
    }
    if (n == 0)
        return 0;
    const char *why = NULL;
    int r = sync_tcp_cmd_user(c, "DELIVERED", user, &why);
    if (r < 0)
        return -1;
    /* Items the server would refuse as invalid are answered here (as
     * sync_tcp_delivery_add does); the others travel. */
    size_t sent[SYNC_BATCH_MAX], k = 0;
    for (size_t i = 0; i < n; i++) {
        rc_out[i] = 0;
        why_out[i] = NULL;
        if (r == SYNC_NO || !sync_tcp_atom_ok(ds[i].id, STORE_DELIVERY_ID_MAX) ||
            !sync_tcp_folder_ok(ds[i].folder))
            rc_out[i] = sync_tcp_invalid(&why_out[i]);
        else
            sent[k++] = i;
    }
    if (k == 0) {
        buf_reset(&c->out);
        return 0;
    }
    buf_printf(&c->out, " %zu\r\n", k);
    for (size_t j = 0; j < k; j++) {
        const struct sync_delivery *d = &ds[sent[j]];
        buf_printf(&c->out, "%s %u ", d->id, d->uid);
        sync_tcp_put_hex(&c->out, d->folder, "\r\n");
    }
    if (sync_tcp_send_out(c) < 0)
        return sync_tcp_broken(c, NULL, NULL);
    for (size_t j = 0; j < k; j++) {
        size_t len;
        char *rest;
        if (sync_tcp_read_line(c, &len) < 0)
            return sync_tcp_broken(c, NULL, NULL);
        r = sync_tcp_final(c, &why_out[sent[j]], &rest);
        if (r < 0)
            return -1;
        if (r == 0 && rest[0] != '\0')
            return sync_tcp_broken(c, NULL, "unexpected DELIVERED item reply \"%.60s\"", c->line);
        rc_out[sent[j]] = r;
    }
    size_t len;
    char *rest;
    uint64_t got;
    if (sync_tcp_read_line(c, &len) < 0)
        return sync_tcp_broken(c, NULL, NULL);
    r = sync_tcp_final(c, &why, &rest);
    if (r == SYNC_NO || (r == 0 && (parse_u64(rest, SYNC_BATCH_MAX, &got) < 0 || got != k)))
        return sync_tcp_broken(c, NULL, "unexpected DELIVERED reply \"%.60s\"", c->line);
    return r;
}

/* WAIT (sync.h "wait"). The server answers once the mailbox changed or at
 * the timeout. If wake_fd speaks first, a NOOP ends the WAIT early (the
 * server answers a WAIT as soon as anything more arrives from its client),
 * and both answers are read, in order. */
static int sync_tcp_wait(struct sync *s, const char *user, uint64_t since, unsigned timeout_ms,
                         int wake_fd, struct store_mailbox *mb_r, const char **why_r)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    memset(mb_r, 0, sizeof(*mb_r));
    if (c->no_wait) {
        *why_r = "unsupported";
        return SYNC_NO;
    }
    int r = sync_tcp_cmd_user(c, "WAIT", user, why_r);
    if (r != 0)
        return r;
    if (timeout_ms > SYNC_WAIT_MAX_MS)
        timeout_ms = SYNC_WAIT_MAX_MS;
    buf_printf(&c->out, " %llu %u\r\n", (unsigned long long)since, timeout_ms);
    if (sync_tcp_send_out(c) < 0)
        return sync_tcp_broken(c, why_r, NULL);
    /* The server's answer is due by the timeout; allow the connection's
     * own timeout on top for a busy store. */
    int w = sock_wait_readable(c->sock, wake_fd, (int)(timeout_ms + c->timeout_ms));
    if (w < 0)
        return sync_tcp_broken(c, why_r, "WAIT: %s", sock_why(c->sock));
    if (w == 0)
        return sync_tcp_broken(c, why_r, "no answer to WAIT within %u ms",
                               timeout_ms + c->timeout_ms);
    bool noop = w == 2;
    if (noop && sync_tcp_send(c, "NOOP\r\n", 6) < 0)
        return sync_tcp_broken(c, why_r, NULL);
    size_t len;
    if (sync_tcp_read_line(c, &len) < 0)
        return sync_tcp_broken(c, why_r, NULL);
    if (strcmp(c->line, "-ERR unknown command") == 0) {
        /* A store from before WAIT: the caller polls instead. A NOOP sent
         * meanwhile is unknown to it as well. */
        c->no_wait = true;
        if (noop && (sync_tcp_read_line(c, &len) < 0 || strncmp(c->line, "-ERR", 4) != 0))
            return sync_tcp_broken(c, why_r, "unexpected reply to NOOP");
        *why_r = "unsupported";
        return SYNC_NO;
    }
    char *rest;
    r = sync_tcp_final(c, why_r, &rest);
    if (r < 0)
        return r;
    if (r == 0) {
        struct sync_tcp_tok t[SYNC_TCP_TOKS];
        if (sync_tcp_split(rest, t, SYNC_TCP_TOKS) != 2 ||
            sync_tcp_u64(&t[0], UINT64_MAX, &mb_r->modseq) < 0 ||
            store_mbox_state_parse(t[1].p, &mb_r->state) < 0)
            return sync_tcp_broken(c, why_r, "malformed WAIT reply");
        str_copy(mb_r->user, user, sizeof(mb_r->user));
    }
    if (noop && (sync_tcp_read_line(c, &len) < 0 || strcmp(c->line, "+OK") != 0))
        return sync_tcp_broken(c, why_r, "unexpected reply to NOOP");
    return r;
}

/* EXPUNGES: one line, one answer. */
static int sync_tcp_expunge_uids(struct sync *s, const char *user, const char *folder,
                                 const uint32_t *uids, size_t n, size_t *expunged_r,
                                 const char **why_r)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    *expunged_r = 0;
    int r = sync_tcp_cmd_user(c, "EXPUNGES", user, why_r);
    if (r != 0)
        return r;
    if (!sync_tcp_folder_ok(folder) || !sync_uids_ok(uids, n, SYNC_UIDS_MAX)) {
        buf_reset(&c->out);
        return sync_tcp_invalid(why_r);
    }
    buf_puts(&c->out, " ");
    sync_tcp_put_hex(&c->out, folder, " ");
    sync_uidset_write(&c->out, uids, n);
    buf_puts(&c->out, "\r\n");
    char *rest;
    if ((r = sync_tcp_call(c, why_r, &rest)) != 0)
        return r;
    uint64_t got;
    if (parse_u64(rest, n, &got) < 0)
        return sync_tcp_broken(c, why_r, "malformed EXPUNGES reply");
    *expunged_r = (size_t)got;
    return 0;
}

/* COPIES: the answer maps the source UIDs copied to their new UIDs. */
static int sync_tcp_copy_uids(struct sync *s, const char *user, const char *from, const char *to,
                              const uint32_t *uids, size_t n, uint32_t *uids_out,
                              uint32_t *uidvalidity_r, const char **why_r)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    for (size_t i = 0; i < n; i++)
        uids_out[i] = 0;
    *uidvalidity_r = 0;
    int r = sync_tcp_cmd_user(c, "COPIES", user, why_r);
    if (r != 0)
        return r;
    if (!sync_tcp_folder_ok(from) || !sync_tcp_folder_ok(to) ||
        !sync_uids_ok(uids, n, SYNC_UIDS_MAX)) {
        buf_reset(&c->out);
        return sync_tcp_invalid(why_r);
    }
    buf_puts(&c->out, " ");
    sync_tcp_put_hex(&c->out, from, " ");
    sync_tcp_put_hex(&c->out, to, " ");
    sync_uidset_write(&c->out, uids, n);
    buf_puts(&c->out, "\r\n");
    char *rest;
    if ((r = sync_tcp_call(c, why_r, &rest)) != 0)
        return r;
    struct sync_tcp_tok t[SYNC_TCP_TOKS];
    uint32_t *src = xcalloc(SYNC_UIDS_MAX, sizeof(*src));
    uint32_t *dst = xcalloc(SYNC_UIDS_MAX, sizeof(*dst));
    size_t ns = 0, nd = 0;
    const char *err = NULL;
    bool ok = sync_tcp_split(rest, t, SYNC_TCP_TOKS) == 3 &&
              sync_tcp_u32(&t[0], uidvalidity_r) == 0 &&
              sync_uidset_parse(t[1].p, t[1].len, src, SYNC_UIDS_MAX, &ns, &err) == 0 &&
              sync_uidset_parse(t[2].p, t[2].len, dst, SYNC_UIDS_MAX, &nd, &err) == 0 && ns == nd;
    /* Each source UID copied is one asked for (both ascending). */
    for (size_t i = 0, j = 0; ok && j < ns; i++) {
        if (i == n) {
            ok = false;
        } else if (uids[i] == src[j]) {
            uids_out[i] = dst[j++];
        }
    }
    free(src);
    free(dst);
    if (!ok) {
        for (size_t i = 0; i < n; i++)
            uids_out[i] = 0;
        return sync_tcp_broken(c, why_r, "malformed COPIES reply");
    }
    return 0;
}

/* TOKEN (sync.h "token"): the server keeps it for this connection. */
static int sync_tcp_token(struct sync *s, const char *user, uint64_t job, uint64_t claim,
                          const char **why_r)
{
    struct sync_tcp *c = (struct sync_tcp *)s;
    int r = sync_tcp_cmd_user(c, "TOKEN", user, why_r);
    if (r != 0)
        return r;
    buf_printf(&c->out, " %llu %llu\r\n", (unsigned long long)job, (unsigned long long)claim);
    if (sync_tcp_send_out(c) < 0)
        return sync_tcp_broken(c, why_r, NULL);
    size_t len;
    if (sync_tcp_read_line(c, &len) < 0)
        return sync_tcp_broken(c, why_r, NULL);
    if (strcmp(c->line, "-ERR unknown command") == 0) {
        *why_r = "unsupported"; /* a store from before TOKEN */
        return SYNC_NO;
    }
    char *rest;
    return sync_tcp_final(c, why_r, &rest);
}

static const struct sync_ops sync_tcp_ops = {
    .close = sync_tcp_close,
    .mailbox_get = sync_tcp_mailbox_get,
    .mailbox_create = sync_tcp_mailbox_create,
    .mailbox_state = sync_tcp_mailbox_state,
    .mailbox_purge = sync_tcp_mailbox_purge,
    .changes = sync_tcp_changes,
    .fetch = sync_tcp_fetch,
    .fetch_batch = sync_tcp_fetch_batch,
    .append = sync_tcp_append,
    .append_batch = sync_tcp_append_batch,
    .append_batch_start = sync_tcp_append_batch_start,
    .append_batch_end = sync_tcp_append_batch_end,
    .folder_ensure = sync_tcp_folder_ensure,
    .folder_delete = sync_tcp_folder_delete,
    .flags = sync_tcp_flags,
    .expunge = sync_tcp_expunge,
    .digest = sync_tcp_digest,
    .deliveries = sync_tcp_deliveries,
    .delivery_add = sync_tcp_delivery_add,
    .modseq_raise = sync_tcp_modseq_raise,
    .folder_ensure_at = sync_tcp_folder_ensure_at,
    .folder_delete_at = sync_tcp_folder_delete_at,
    .flags_at = sync_tcp_flags_at,
    .expunge_at = sync_tcp_expunge_at,
    .tombstone = sync_tcp_tombstone,
    .folders = sync_tcp_folders,
    .msgs = sync_tcp_msgs,
    .append_new = sync_tcp_append_new,
    .flags_ex = sync_tcp_flags_ex,
    .folder_create = sync_tcp_folder_create,
    .folder_rename = sync_tcp_folder_rename,
    .deliveries_each = sync_tcp_deliveries_each,
    .delivery_add_batch = sync_tcp_delivery_add_batch,
    .wait = sync_tcp_wait,
    .fetch_headers = sync_tcp_fetch_headers,
    .expunge_uids = sync_tcp_expunge_uids,
    .copy_uids = sync_tcp_copy_uids,
    .token = sync_tcp_token,
};

/* ---- connection ---- */

static void sync_tcp_set_err(char *err, size_t errlen, const char *fmt, ...) TERN_PRINTF(3, 4);
static void sync_tcp_set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

struct sync *sync_tcp_connect(const char *endpoint, unsigned timeout_ms, char *err, size_t errlen)
{
    if (timeout_ms == 0 || timeout_ms > 24u * 3600 * 1000) {
        sync_tcp_set_err(err, errlen, "%s: bad timeout %u ms", endpoint, timeout_ms);
        return NULL;
    }
    struct sock *sock = sock_connect(endpoint, timeout_ms, err, errlen);
    if (sock == NULL)
        return NULL;
    struct sync_tcp *c = xmalloc(sizeof(*c));
    c->base.ops = &sync_tcp_ops;
    c->sock = sock;
    c->timeout_ms = timeout_ms;
    c->no_wait = false;
    str_copy(c->endpoint, endpoint, sizeof(c->endpoint));
    buf_init(&c->out, 0);
    buf_puts(&c->out, "HELLO " SYNC_PROTO "\r\n");
    const char *why = NULL;
    char *rest;
    int r = sync_tcp_call(c, &why, &rest);
    if (r == 0 && (strncmp(rest, SYNC_PROTO " ", strlen(SYNC_PROTO) + 1) != 0 ||
                   !mail_store_name_valid(rest + strlen(SYNC_PROTO) + 1)))
        r = sync_tcp_broken(c, &why, "unexpected HELLO reply \"%.60s\"", c->line);
    if (r != 0) {
        sync_tcp_set_err(err, errlen, "%s: HELLO: %s", endpoint, r == SYNC_NO ? c->line : c->why);
        c->broken = true;
        struct sync *sc = &c->base;
        sync_close(&sc);
        return NULL;
    }
    log_debug("sync", "%s: connected to store %s", endpoint, rest + strlen(SYNC_PROTO) + 1);
    return &c->base;
}
