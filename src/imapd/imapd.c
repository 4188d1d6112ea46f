/*
 * imapd — the session: I/O, the command loop, authentication, mailbox
 * (folder) commands, SELECT and the change feed. Message commands (FETCH,
 * STORE, SEARCH, COPY/MOVE, EXPUNGE) are in imapd_msg.c. See imapd.h.
 */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "imapd/imapd_private.h"

static _Atomic uint64_t st_sessions, st_logins, st_login_failures, st_commands, st_bad;

void imapd_stats_get(struct imapd_stats *out)
{
    out->sessions = st_sessions;
    out->logins = st_logins;
    out->login_failures = st_login_failures;
    out->commands = st_commands;
    out->bad_commands = st_bad;
}

/* LOGIN and AUTHENTICATE are refused before TLS (plaintext_login = no). */
static bool login_disabled(const struct imapd_session *s)
{
    return s->env->login_needs_tls && s->tls == NULL;
}

/* Before login the capabilities depend on TLS: STARTTLS while it is
 * possible, LOGINDISABLED (and no AUTH=) while a plaintext login is
 * refused. After STARTTLS a client asks again (RFC 3501 6.2.1). */
static const char *caps_noauth(const struct imapd_session *s)
{
    bool starttls = s->env->tls != NULL && s->tls == NULL;
    bool disabled = login_disabled(s);
    if (starttls && disabled)
        return "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE STARTTLS LOGINDISABLED";
    if (starttls)
        return "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE STARTTLS AUTH=PLAIN";
    if (disabled)
        return "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE LOGINDISABLED";
    return "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE AUTH=PLAIN";
}

/* The server handshake on s->fd; a failure ends the session without a
 * word to the client (it is not speaking IMAP in the clear any more). */
static void start_tls(struct imapd_session *s, const char *how)
{
    char err[256];
    s->tls = tls_server_accept(s->env->tls, s->fd, s->env->tls_handshake_ms, err, sizeof(err));
    if (s->tls == NULL) {
        log_info("imap", "%s: TLS (%s) %s", s->peer, how, err);
        s->broken = s->closing = true;
        return;
    }
    s->last_input_ms = time_mono_ms();
    log_info("imap", "%s: TLS (%s) %s", s->peer, how, tls_conn_info(s->tls));
}

static const char caps_auth[] = "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UIDPLUS MOVE "
                                "CONDSTORE QRESYNC SPECIAL-USE UNSELECT CHILDREN";

/* ---- output ------------------------------------------------------------ */

void imapd_out(struct imapd_session *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char tmp[1024];
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof(tmp)) {
        buf_append(&s->out, tmp, (size_t)n);
    } else {
        char *big = xmalloc((size_t)n + 1);
        va_start(ap, fmt);
        vsnprintf(big, (size_t)n + 1, fmt, ap);
        va_end(ap);
        buf_append(&s->out, big, (size_t)n);
        free(big);
    }
}

void imapd_flush(struct imapd_session *s)
{
    if (s->tls != NULL) {
        /* Each bit of progress may take up to the idle timeout, as a
         * blocking send to a slow client would. */
        if (s->out.len > 0 && !s->broken &&
            tls_conn_write(s->tls, s->out.data, s->out.len, s->env->idle_timeout_ms) < 0) {
            log_info("imap", "%s: TLS write: %s", s->peer, tls_conn_why(s->tls));
            s->broken = s->closing = true;
        }
        buf_reset(&s->out);
        return;
    }
    size_t off = 0;
    while (off < s->out.len && !s->broken) {
        ssize_t w = send(s->fd, s->out.data + off, s->out.len - off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            s->broken = s->closing = true;
            break;
        }
        off += (size_t)w;
    }
    buf_reset(&s->out);
}

void imapd_reply(struct imapd_session *s, const char *tag, const char *status, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    imapd_out(s, "%s %s %s\r\n", tag[0] != '\0' ? tag : "*", status, text);
    if (strcmp(status, "BAD") == 0) {
        st_bad++;
        if (++s->n_bad >= IMAPD_BAD_MAX) {
            imapd_out(s, "* BYE Too many invalid commands\r\n");
            s->closing = true;
        }
    }
}

static void imapd_bye(struct imapd_session *s, const char *text)
{
    imapd_out(s, "* BYE %s\r\n", text);
    imapd_flush(s);
    s->closing = true;
}

void imapd_store_failed(struct imapd_session *s, const char *tag, int r, const char *why)
{
    if (r == SYNC_NO && why != NULL && strcmp(why, "notlive") == 0) {
        imapd_reply(s, tag, "NO", "[UNAVAILABLE] The mailbox is being moved; try again shortly");
        imapd_bye(s, "[UNAVAILABLE] Mailbox is moving to another server; please reconnect");
        return;
    }
    if (r == SYNC_NO && why != NULL && strcmp(why, "notfound") == 0) {
        imapd_reply(s, tag, "NO", "[NONEXISTENT] No such mailbox or message");
        return;
    }
    if (r == SYNC_NO && why != NULL && strcmp(why, "exists") == 0) {
        imapd_reply(s, tag, "NO", "[ALREADYEXISTS] Mailbox already exists");
        return;
    }
    if (r == SYNC_NO && why != NULL && strcmp(why, "invalid") == 0) {
        imapd_reply(s, tag, "NO", "Invalid name or argument");
        return;
    }
    /* -1: the channel to the store is gone: nothing more can be done here. */
    log_warn("imap", "%s %s: store failure: %s", s->peer, s->user, why != NULL ? why : "?");
    imapd_reply(s, tag, "NO", "[UNAVAILABLE] Internal error; try again later");
    if (r < 0)
        imapd_bye(s, "[UNAVAILABLE] Server unavailable; please reconnect");
}

void imapd_write_flags(struct buf *b, uint32_t flags, const char *keywords)
{
    static const struct {
        uint32_t f;
        const char *name;
    } names[] = {{STORE_F_ANSWERED, "\\Answered"},
                 {STORE_F_FLAGGED, "\\Flagged"},
                 {STORE_F_DELETED, "\\Deleted"},
                 {STORE_F_SEEN, "\\Seen"},
                 {STORE_F_DRAFT, "\\Draft"}};
    bool first = true;
    buf_puts(b, "(");
    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        if (flags & names[i].f) {
            if (!first)
                buf_puts(b, " ");
            buf_puts(b, names[i].name);
            first = false;
        }
    }
    if (keywords != NULL && keywords[0] != '\0') {
        if (!first)
            buf_puts(b, " ");
        buf_puts(b, keywords);
    }
    buf_puts(b, ")");
}

void imapd_write_date(struct buf *b, int64_t t)
{
    static const char *const mon[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                      "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    buf_printf(b, "\"%02d-%s-%04d %02d:%02d:%02d +0000\"", tm.tm_mday, mon[tm.tm_mon],
               tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

void imapd_write_uidset(struct buf *b, const uint32_t *uids, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j + 1 < n && uids[j + 1] == uids[j] + 1)
            j++;
        if (i > 0)
            buf_puts(b, ",");
        if (j > i)
            buf_printf(b, "%u:%u", uids[i], uids[j]);
        else
            buf_printf(b, "%u", uids[i]);
        i = j + 1;
    }
}

/* ---- folder names ------------------------------------------------------ */

int imapd_folder_name(const char *in, size_t len, char *out, const char **why_r)
{
    if (len > 0 && in[len - 1] == IMAPD_HIER)
        len--; /* "CREATE foo/" names foo (RFC 3501 6.3.3) */
    if (len == 0) {
        *why_r = "Empty mailbox name";
        return -1;
    }
    if (len > STORE_FOLDER_MAX) {
        *why_r = "Mailbox name too long";
        return -1;
    }
    if (memchr(in, '\0', len) != NULL) {
        *why_r = "Invalid mailbox name";
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)in[i];
        if (ch < 0x20 || ch >= 0x7f) {
            *why_r = "Mailbox name must be 7-bit (modified UTF-7)";
            return -1;
        }
        if (ch == '*' || ch == '%') {
            *why_r = "Mailbox name must not contain wildcards";
            return -1;
        }
    }
    /* Each hierarchy level must be a real name: no "", ".", ".." (a/../b,
     * /a, a//b), so no name can play path tricks anywhere. */
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || in[i] == IMAPD_HIER) {
            size_t l = i - start;
            if (l == 0 || (l == 1 && in[start] == '.') ||
                (l == 2 && in[start] == '.' && in[start + 1] == '.')) {
                *why_r = "Invalid hierarchy in mailbox name";
                return -1;
            }
            start = i + 1;
        }
    }
    struct buf u;
    buf_init(&u, 4 * STORE_FOLDER_MAX);
    int r = imap_mutf7_to_utf8(in, len, &u);
    buf_free(&u);
    if (r < 0) {
        *why_r = "Invalid modified UTF-7 in mailbox name";
        return -1;
    }
    memcpy(out, in, len);
    out[len] = '\0';
    if (strncasecmp(out, "INBOX", 5) == 0 && (out[5] == '\0' || out[5] == IMAPD_HIER))
        memcpy(out, "INBOX", 5);
    return 0;
}

static int folder_arg(struct imapd_session *s, const char *tag, const struct imap_arg *a, char *out)
{
    const char *p, *why;
    size_t l;
    if (!imap_arg_astring(a, &p, &l)) {
        imapd_reply(s, tag, "BAD", "Mailbox name expected");
        return -1;
    }
    if (imapd_folder_name(p, l, out, &why) < 0) {
        imapd_reply(s, tag, "NO", "%s", why);
        return -1;
    }
    return 0;
}

/* ---- the selected folder ---------------------------------------------- */

void imapd_unselect(struct imapd_session *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->msgs[i].keywords);
    s->n = 0;
    s->folder[0] = '\0';
    s->cache_uid = 0;
    mime_free(&s->cache_mime);
    buf_reset(&s->cache_body);
    if (s->state == ST_SELECTED)
        s->state = ST_AUTH;
}

size_t imapd_seq_of(const struct imapd_session *s, uint32_t uid)
{
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (s->msgs[mid].uid < uid)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < s->n && s->msgs[lo].uid == uid ? lo + 1 : 0;
}

static void msgs_push(struct imapd_session *s, const struct sync_msg *m)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 64;
        s->msgs = xrealloc(s->msgs, s->cap * sizeof(*s->msgs));
    }
    struct imapd_msg *x = &s->msgs[s->n++];
    memset(x, 0, sizeof(*x));
    x->uid = m->uid;
    x->flags = m->flags;
    x->keywords = xstrdup(m->keywords);
    x->modseq = m->modseq;
    x->size = m->size;
    x->internal_date = m->internal_date;
}

struct sel_changes {
    struct imapd_session *s;
    struct sync_msg *add;
    size_t n_add, cap_add;
    bool folder_gone;
};

static int sel_folder_cb(void *ctx, const struct sync_folder *f)
{
    struct sel_changes *c = ctx;
    if (f->uidvalidity != c->s->uidvalidity)
        return 0;
    if (f->deleted) {
        c->folder_gone = true;
    } else {
        str_copy(c->s->folder, f->name, sizeof(c->s->folder));
        if (f->uidnext > c->s->uidnext)
            c->s->uidnext = f->uidnext;
    }
    return 0;
}

static int sel_msg_cb(void *ctx, const struct sync_msg *m)
{
    struct sel_changes *c = ctx;
    struct imapd_session *s = c->s;
    if (m->uidvalidity != s->uidvalidity)
        return 0;
    if (m->uid >= s->uidnext)
        s->uidnext = m->uid + 1;
    size_t seq = imapd_seq_of(s, m->uid);
    if (seq != 0) {
        struct imapd_msg *x = &s->msgs[seq - 1];
        if (m->expunged) {
            x->gone = true;
        } else {
            if (x->flags != m->flags || strcmp(x->keywords, m->keywords) != 0) {
                x->flags = m->flags;
                free(x->keywords);
                x->keywords = xstrdup(m->keywords);
                x->changed = true;
            }
            if (x->modseq != m->modseq && s->condstore)
                x->changed = true;
            x->modseq = m->modseq;
        }
        return 0;
    }
    if (m->expunged)
        return 0;
    if (s->n > 0 && m->uid < s->msgs[s->n - 1].uid)
        return 0; /* never happens on a live mailbox: UIDs only grow */
    for (size_t i = 0; i < c->n_add; i++) {
        if (c->add[i].uid == m->uid) { /* reported twice: keep the newer */
            c->add[i] = *m;
            return 0;
        }
    }
    if (c->n_add == c->cap_add) {
        c->cap_add = c->cap_add ? c->cap_add * 2 : 16;
        c->add = xrealloc(c->add, c->cap_add * sizeof(*c->add));
    }
    c->add[c->n_add++] = *m;
    return 0;
}

static int sync_msg_cmp(const void *a, const void *b)
{
    const struct sync_msg *x = a, *y = b;
    return x->uid < y->uid ? -1 : x->uid > y->uid;
}

static void send_fetch_flags(struct imapd_session *s, size_t i)
{
    struct imapd_msg *x = &s->msgs[i];
    struct buf b;
    buf_init(&b, 0);
    buf_printf(&b, "* %zu FETCH (UID %u FLAGS ", i + 1, x->uid);
    imapd_write_flags(&b, x->flags, x->keywords);
    if (s->condstore)
        buf_printf(&b, " MODSEQ (%llu)", (unsigned long long)x->modseq);
    buf_puts(&b, ")\r\n");
    buf_append(&s->out, b.data, b.len);
    buf_free(&b);
}

void imapd_sync_selected(struct imapd_session *s, bool allow_expunge)
{
    if (s->state != ST_SELECTED || s->closing)
        return;
    struct sel_changes c = {.s = s};
    struct sync_changes_cb cb = {.folder = sel_folder_cb, .msg = sel_msg_cb, .ctx = &c};
    uint64_t modseq = 0;
    const char *why = NULL;
    int r = s->sy->ops->changes(s->sy, s->user, s->modseq, &cb, &modseq, &why);
    if (r != 0) {
        free(c.add);
        if (r < 0)
            imapd_bye(s, "[UNAVAILABLE] Server unavailable; please reconnect");
        return;
    }
    if (c.folder_gone) {
        for (size_t i = 0; i < s->n; i++)
            s->msgs[i].gone = true;
    }
    if (allow_expunge) {
        uint32_t *vanished = NULL;
        size_t nv = 0;
        size_t w = 0;
        for (size_t i = 0; i < s->n; i++) {
            if (s->msgs[i].gone) {
                if (s->qresync) {
                    vanished = xrealloc(vanished, (nv + 1) * sizeof(*vanished));
                    vanished[nv++] = s->msgs[i].uid;
                } else {
                    /* Earlier expunges shift the sequence numbers. */
                    imapd_out(s, "* %zu EXPUNGE\r\n", w + 1);
                }
                if (s->msgs[i].uid == s->cache_uid)
                    s->cache_uid = 0;
                free(s->msgs[i].keywords);
                continue;
            }
            s->msgs[w++] = s->msgs[i];
        }
        s->n = w;
        if (nv > 0) {
            struct buf b;
            buf_init(&b, 0);
            buf_puts(&b, "* VANISHED ");
            imapd_write_uidset(&b, vanished, nv);
            buf_puts(&b, "\r\n");
            buf_append(&s->out, b.data, b.len);
            buf_free(&b);
        }
        free(vanished);
    }
    if (c.n_add > 0 && !c.folder_gone) {
        qsort(c.add, c.n_add, sizeof(*c.add), sync_msg_cmp);
        for (size_t i = 0; i < c.n_add; i++)
            msgs_push(s, &c.add[i]);
        imapd_out(s, "* %zu EXISTS\r\n", s->n);
    }
    free(c.add);
    for (size_t i = 0; i < s->n; i++) {
        if (s->msgs[i].changed && !s->msgs[i].gone)
            send_fetch_flags(s, i);
        s->msgs[i].changed = false;
    }
    if (modseq > s->modseq)
        s->modseq = modseq;
}

/* Applies the changes made by others (a rename, flags) to the selected
 * folder without reporting them: for CLOSE, which closes the folder without
 * untagged EXPUNGE responses (RFC 3501 6.4.2). A BYE still goes out. */
static void sync_selected_unreported(struct imapd_session *s)
{
    struct buf keep = s->out;
    buf_init(&s->out, 0);
    imapd_sync_selected(s, true);
    buf_free(&s->out);
    s->out = keep;
}

/* The mailbox state on the store: once it is not ACTIVE, the session ends. */
static bool check_state(struct imapd_session *s)
{
    s->last_state_check_ms = time_mono_ms();
    if (s->sy == NULL)
        return true;
    struct store_mailbox mb;
    const char *why = NULL;
    int r = s->sy->ops->mailbox_get(s->sy, s->user, &mb, &why);
    if (r < 0) {
        imapd_bye(s, "[UNAVAILABLE] Server unavailable; please reconnect");
        return false;
    }
    if (r != 0 || mb.state != STORE_MBOX_ACTIVE) {
        if (r == 0 && mb.state == STORE_MBOX_MOVED)
            imapd_bye(s, "[UNAVAILABLE] Mailbox moved to another server; please reconnect");
        else
            imapd_bye(s, "[UNAVAILABLE] Mailbox is being moved; please reconnect shortly");
        log_info("imap", "%s %s: session ended: mailbox %s here", s->peer, s->user,
                 r == 0 ? store_mbox_state_str(mb.state) : "gone");
        return false;
    }
    return true;
}

/* ---- input ------------------------------------------------------------- */

/* Waits up to ms for input (or forever if ms < 0). 1 input, 0 timeout, -1
 * closed. Reads into s->in. */
static int read_more(struct imapd_session *s, int ms)
{
    if (s->in_off > 0) {
        memmove(s->in, s->in + s->in_off, s->in_len - s->in_off);
        s->in_len -= s->in_off;
        s->in_off = 0;
    }
    if (s->in_len == IMAPD_READ_BUF)
        return 1; /* the caller has unconsumed input to handle */
    if (s->tls != NULL) {
        ssize_t r = tls_conn_read(s->tls, s->in + s->in_len, IMAPD_READ_BUF - s->in_len, ms);
        if (r < 0) {
            if (strcmp(tls_conn_why(s->tls), "closed") != 0)
                log_info("imap", "%s: TLS read: %s", s->peer, tls_conn_why(s->tls));
            return -1;
        }
        if (r == 0)
            return 0;
        s->in_len += (size_t)r;
        s->last_input_ms = time_mono_ms();
        return 1;
    }
    struct pollfd pfd = {.fd = s->fd, .events = POLLIN};
    int pr = poll(&pfd, 1, ms);
    if (pr < 0)
        return errno == EINTR ? 0 : -1;
    if (pr == 0)
        return 0;
    ssize_t r = recv(s->fd, s->in + s->in_len, IMAPD_READ_BUF - s->in_len, 0);
    if (r < 0)
        return errno == EINTR || errno == EAGAIN ? 0 : -1;
    if (r == 0)
        return -1;
    s->in_len += (size_t)r;
    s->last_input_ms = time_mono_ms();
    return 1;
}

/* One raw line (for AUTHENTICATE continuations and IDLE's DONE), without
 * the CRLF, into line (at most cap - 1 octets). 1, 0 (timeout slice: call
 * again), -1 closed or too long. */
static int raw_line(struct imapd_session *s, char *line, size_t cap, int ms)
{
    for (;;) {
        const char *p = s->in + s->in_off;
        size_t avail = s->in_len - s->in_off;
        const char *lf = memchr(p, '\n', avail);
        if (lf != NULL) {
            size_t l = (size_t)(lf - p);
            s->in_off += l + 1;
            if (l > 0 && p[l - 1] == '\r')
                l--;
            if (l >= cap)
                return -1;
            memcpy(line, p, l);
            line[l] = '\0';
            return 1;
        }
        if (avail >= cap + 2)
            return -1;
        int r = read_more(s, ms);
        if (r <= 0)
            return r;
    }
}

/* ---- authentication ---------------------------------------------------- */

static void login_done(struct imapd_session *s, const char *tag, const char *user,
                       const char *password)
{
    char canon[MAIL_ADDR_MAX + 1];
    struct sync *sy = NULL;
    const char *why = "Authentication failed";
    enum imapd_auth a = IMAPD_AUTH_FAILED;
    if (strlen(user) <= MAIL_ADDR_MAX && strlen(password) <= 1024)
        a = s->env->login(s->env->ctx, user, password, canon, &sy, &why);
    switch (a) {
    case IMAPD_AUTH_OK:
        break;
    case IMAPD_AUTH_FAILED: {
        s->n_auth_fail++;
        unsigned from_addr =
            s->env->auth_failed != NULL ? s->env->auth_failed(s->env->ctx, s->peer) : 0;
        /* The delay makes guessing slow; the count ends the session, and
         * failures from the same address across sessions lengthen it. */
        uint64_t delay = s->env->auth_fail_delay_ms;
        if (s->env->auth_fail_max > 0 && from_addr > s->env->auth_fail_max) {
            unsigned shift = from_addr - s->env->auth_fail_max;
            delay <<= shift < 6 ? shift : 6;
            if (delay > 60000)
                delay = 60000;
        }
        log_info("imap",
                 "%s: failed login for '%.64s' (%u in this session, %u from this address, "
                 "%llu in all); answered after %llu ms",
                 s->peer, user, s->n_auth_fail, from_addr,
                 (unsigned long long)atomic_fetch_add(&st_login_failures, 1) + 1,
                 (unsigned long long)delay);
        if (delay > 0) {
            struct timespec ts = {.tv_sec = (time_t)(delay / 1000),
                                  .tv_nsec = (long)(delay % 1000) * 1000000};
            nanosleep(&ts, NULL);
        }
        imapd_reply(s, tag, "NO", "[AUTHENTICATIONFAILED] Authentication failed");
        if (s->env->auth_fail_max > 0 && s->n_auth_fail >= s->env->auth_fail_max)
            imapd_bye(s, "Too many failed logins");
        return;
    }
    case IMAPD_AUTH_UNAVAILABLE:
        imapd_reply(s, tag, "NO", "[UNAVAILABLE] %s", why);
        return;
    case IMAPD_AUTH_LIMIT:
        imapd_reply(s, tag, "NO", "[LIMIT] %s", why);
        return;
    }
    st_logins++;
    str_copy(s->user, canon, sizeof(s->user));
    s->sy = sy;
    s->state = ST_AUTH;
    s->last_state_check_ms = time_mono_ms();
    /* Special-use folders exist from the first login (RFC 6154), and are
     * subscribed when they are created (with INBOX), as clients that show
     * only subscribed folders expect; an unsubscribe afterwards sticks. */
    static const char *const special[] = {"Drafts", "Sent", "Trash", "Junk"};
    struct sync_folder *fl = NULL;
    size_t nf = 0;
    const char *w = NULL;
    if (sy->ops->folders(sy, s->user, &fl, &nf, &w) == 0) {
        bool created = false;
        for (size_t i = 0; i < ARRAY_SIZE(special); i++) {
            bool have = false;
            for (size_t j = 0; j < nf && !have; j++)
                have = strcmp(fl[j].name, special[i]) == 0;
            if (have || sy->ops->folder_create(sy, s->user, special[i], &w) != 0)
                continue;
            created = true;
            if (s->env->sub_set != NULL)
                (void)s->env->sub_set(s->env->ctx, s->user, special[i], true);
        }
        if (created && nf == 1 && s->env->sub_set != NULL)
            (void)s->env->sub_set(s->env->ctx, s->user, "INBOX", true);
    }
    free(fl);
    log_info("imap", "%s: login %s", s->peer, s->user);
    imapd_reply(s, tag, "OK", "[CAPABILITY %s] Logged in", caps_auth);
}

static void cmd_login(struct imapd_session *s, const struct imap_command *c)
{
    const char *u, *p;
    size_t ul, pl;
    if (c->n_args != 2 || !imap_arg_astring(&c->args[0], &u, &ul) ||
        !imap_arg_astring(&c->args[1], &p, &pl)) {
        imapd_reply(s, c->tag, "BAD", "LOGIN needs a user name and a password");
        return;
    }
    if (login_disabled(s)) {
        imapd_reply(s, c->tag, "NO", "[PRIVACYREQUIRED] Plaintext login is disabled; use STARTTLS");
        return;
    }
    if (memchr(u, '\0', ul) != NULL || memchr(p, '\0', pl) != NULL) {
        imapd_reply(s, c->tag, "NO", "[AUTHENTICATIONFAILED] Authentication failed");
        return;
    }
    char *uc = xstrdup(u), *pc = xstrdup(p);
    login_done(s, c->tag, uc, pc);
    explicit_bzero(pc, pl);
    free(uc);
    free(pc);
}

static int b64val(int ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '+')
        return 62;
    if (ch == '/')
        return 63;
    return -1;
}

/* Strict base64 (RFC 4648, padding required). -1 if malformed. */
static ssize_t b64_decode(const char *in, size_t len, char *out, size_t cap)
{
    if (len % 4 != 0)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 4) {
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            if (in[i + k] == '=' && i + 4 == len && k >= 2) {
                v[k] = 0;
                pad++;
            } else if (pad > 0 || (v[k] = b64val((unsigned char)in[i + k])) < 0) {
                return -1;
            }
        }
        uint32_t x =
            (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        char bytes[3] = {(char)(x >> 16), (char)(x >> 8), (char)x};
        for (int k = 0; k < 3 - pad; k++) {
            if (o >= cap)
                return -1;
            out[o++] = bytes[k];
        }
    }
    return (ssize_t)o;
}

static void cmd_authenticate(struct imapd_session *s, const struct imap_command *c)
{
    const char *mech, *ir = NULL;
    size_t ml, irl = 0;
    if (c->n_args < 1 || c->n_args > 2 || c->args[0].type != IMAP_ARG_ATOM) {
        imapd_reply(s, c->tag, "BAD", "AUTHENTICATE needs a mechanism");
        return;
    }
    mech = c->args[0].str;
    ml = c->args[0].len;
    (void)ml;
    if (login_disabled(s)) {
        imapd_reply(s, c->tag, "NO",
                    "[PRIVACYREQUIRED] Plaintext authentication is disabled; use STARTTLS");
        return;
    }
    if (strcasecmp(mech, "PLAIN") != 0) {
        imapd_reply(s, c->tag, "NO", "Unsupported authentication mechanism");
        return;
    }
    char line[2048];
    if (c->n_args == 2) {
        if (!imap_arg_astring(&c->args[1], &ir, &irl) || irl >= sizeof(line)) {
            imapd_reply(s, c->tag, "BAD", "Bad initial response");
            return;
        }
        memcpy(line, ir, irl);
        line[irl] = '\0';
    } else {
        imapd_out(s, "+ \r\n");
        imapd_flush(s);
        int r;
        while ((r = raw_line(s, line, sizeof(line), 1000)) == 0) {
            if ((s->env->shutdown != NULL && *s->env->shutdown) ||
                time_mono_ms() - s->last_input_ms >= (int64_t)s->env->idle_timeout_ms) {
                imapd_bye(s, "Autologout; no authentication response");
                return;
            }
        }
        if (r < 0) {
            s->closing = true;
            return;
        }
    }
    if (strcmp(line, "*") == 0) {
        imapd_reply(s, c->tag, "BAD", "Authentication cancelled");
        return;
    }
    if (strcmp(line, "=") == 0)
        line[0] = '\0';
    char dec[1600];
    ssize_t dl = b64_decode(line, strlen(line), dec, sizeof(dec) - 1);
    if (dl < 0) {
        imapd_reply(s, c->tag, "BAD", "Invalid base64");
        return;
    }
    dec[dl] = '\0';
    /* authzid NUL authcid NUL password; an authzid must be empty or the
     * same user (no proxy authorization). */
    const char *authz = dec;
    const char *n1 = memchr(dec, '\0', (size_t)dl);
    const char *n2 = n1 != NULL ? memchr(n1 + 1, '\0', (size_t)(dl - (n1 + 1 - dec))) : NULL;
    if (n1 == NULL || n2 == NULL || memchr(n2 + 1, '\0', (size_t)(dl - (n2 + 1 - dec))) != NULL) {
        imapd_reply(s, c->tag, "BAD", "Malformed PLAIN response");
        return;
    }
    const char *authc = n1 + 1, *pw = n2 + 1;
    if (authz[0] != '\0' && strcasecmp(authz, authc) != 0) {
        imapd_reply(s, c->tag, "NO", "[AUTHORIZATIONFAILED] Proxy authorization not allowed");
        return;
    }
    login_done(s, c->tag, authc, pw);
    explicit_bzero(dec, sizeof(dec));
}

/* ---- folder commands ---------------------------------------------------- */

struct msgs_load {
    struct imapd_session *s;
};

static int load_cb(void *ctx, const struct sync_msg *m)
{
    struct imapd_session *s = ctx;
    msgs_push(s, m);
    return 0;
}

static const char *special_use(const char *name)
{
    if (strcmp(name, "Sent") == 0)
        return "\\Sent";
    if (strcmp(name, "Drafts") == 0)
        return "\\Drafts";
    if (strcmp(name, "Trash") == 0)
        return "\\Trash";
    if (strcmp(name, "Junk") == 0)
        return "\\Junk";
    return NULL;
}

/* Finds folder `name` among the live ones. */
static int find_folder(struct imapd_session *s, const char *name, struct sync_folder *out, int *r_r,
                       const char **why_r)
{
    struct sync_folder *fl = NULL;
    size_t nf = 0;
    int r = s->sy->ops->folders(s->sy, s->user, &fl, &nf, why_r);
    *r_r = r;
    if (r != 0)
        return -1;
    for (size_t i = 0; i < nf; i++) {
        if (strcmp(fl[i].name, name) == 0) {
            *out = fl[i];
            free(fl);
            return 0;
        }
    }
    free(fl);
    *r_r = SYNC_NO;
    *why_r = "notfound";
    return -1;
}

static void cmd_select(struct imapd_session *s, const struct imap_command *c, bool readonly)
{
    char name[STORE_FOLDER_MAX + 1];
    if (c->n_args < 1 || c->n_args > 2) {
        imapd_reply(s, c->tag, "BAD", "%s needs a mailbox name", c->name);
        return;
    }
    /* Optional (CONDSTORE) or (QRESYNC (uidvalidity modseq [known-uids])). */
    bool qr = false;
    uint32_t qr_uidvalidity = 0;
    uint64_t qr_modseq = 0;
    const char *qr_known = NULL;
    if (c->n_args == 2) {
        const struct imap_arg *p = &c->args[1];
        if (p->type != IMAP_ARG_LIST) {
            imapd_reply(s, c->tag, "BAD", "Select parameters must be a list");
            return;
        }
        for (size_t i = 0; i < p->n; i++) {
            if (imap_arg_atom_is(&p->list[i], "CONDSTORE")) {
                s->condstore = true;
            } else if (imap_arg_atom_is(&p->list[i], "QRESYNC") && i + 1 < p->n &&
                       p->list[i + 1].type == IMAP_ARG_LIST) {
                if (!s->qresync) {
                    imapd_reply(s, c->tag, "BAD", "QRESYNC is not enabled");
                    return;
                }
                const struct imap_arg *q = &p->list[++i];
                if (q->n < 2 || q->list[0].type != IMAP_ARG_ATOM ||
                    q->list[1].type != IMAP_ARG_ATOM) {
                    imapd_reply(s, c->tag, "BAD", "QRESYNC needs UIDVALIDITY and MODSEQ");
                    return;
                }
                uint64_t v = 0, ms = 0;
                if (imapd_parse_number(q->list[0].str, UINT32_MAX, &v) < 0 || v == 0 ||
                    imapd_parse_number(q->list[1].str, IMAPD_MODSEQ_MAX, &ms) < 0 ||
                    (q->n >= 3 && q->list[2].type != IMAP_ARG_ATOM &&
                     q->list[2].type != IMAP_ARG_LIST) ||
                    q->n > 4) {
                    imapd_reply(s, c->tag, "BAD", "Invalid QRESYNC parameters");
                    return;
                }
                qr = true;
                qr_uidvalidity = (uint32_t)v;
                qr_modseq = ms;
                if (q->n >= 3 && q->list[2].type == IMAP_ARG_ATOM) {
                    struct imap_range *kr = NULL;
                    size_t nk = 0;
                    const char *err;
                    if (imap_seqset_parse(q->list[2].str, UINT32_MAX, &kr, &nk, &err) < 0) {
                        imapd_reply(s, c->tag, "BAD", "Invalid known UIDs: %s", err);
                        return;
                    }
                    free(kr);
                    qr_known = q->list[2].str;
                }
            } else {
                imapd_reply(s, c->tag, "BAD", "Unknown select parameter");
                return;
            }
        }
    }
    if (folder_arg(s, c->tag, &c->args[0], name) < 0)
        return;
    if (s->state == ST_SELECTED) {
        /* RFC 7162 3.2.11: what follows is about the new mailbox. */
        imapd_unselect(s);
        imapd_out(s, "* OK [CLOSED] Previous mailbox closed\r\n");
    }
    struct sync_folder f;
    int r;
    const char *why = NULL;
    if (find_folder(s, name, &f, &r, &why) < 0) {
        if (r == SYNC_NO && strcmp(why, "notfound") == 0)
            imapd_reply(s, c->tag, "NO", "[NONEXISTENT] Mailbox doesn't exist: %s", name);
        else
            imapd_store_failed(s, c->tag, r, why);
        return;
    }
    uint64_t modseq = 0;
    r = s->sy->ops->msgs(s->sy, s->user, name, load_cb, s, &modseq, &why);
    if (r != 0) {
        imapd_unselect(s);
        imapd_store_failed(s, c->tag, r, why);
        return;
    }
    str_copy(s->folder, name, sizeof(s->folder));
    s->uidvalidity = f.uidvalidity;
    s->uidnext = f.uidnext;
    for (size_t i = 0; i < s->n; i++)
        if (s->msgs[i].uid >= s->uidnext)
            s->uidnext = s->msgs[i].uid + 1;
    s->modseq = modseq;
    s->readonly = readonly;
    s->state = ST_SELECTED;

    struct buf b;
    buf_init(&b, 0);
    buf_puts(&b, "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n");
    if (readonly)
        buf_puts(&b, "* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n");
    else
        buf_puts(&b, "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] "
                     "Flags permitted\r\n");
    buf_printf(&b, "* %zu EXISTS\r\n* 0 RECENT\r\n", s->n);
    for (size_t i = 0; i < s->n; i++) {
        if (!(s->msgs[i].flags & STORE_F_SEEN)) {
            buf_printf(&b, "* OK [UNSEEN %zu] First unseen\r\n", i + 1);
            break;
        }
    }
    buf_printf(&b, "* OK [UIDVALIDITY %u] UIDs valid\r\n* OK [UIDNEXT %u] Predicted next UID\r\n",
               s->uidvalidity, s->uidnext);
    buf_printf(&b, "* OK [HIGHESTMODSEQ %llu] Highest\r\n", (unsigned long long)s->modseq);
    buf_append(&s->out, b.data, b.len);
    buf_free(&b);

    if (qr && qr_uidvalidity == s->uidvalidity) {
        /* VANISHED (EARLIER): every UID the client may know that is not
         * here. Computed from the live set, not from tombstones, so it is
         * right after a move too (RFC 7162 lets it name UIDs the client
         * never saw). */
        struct imap_range *kr = NULL;
        size_t nk = 0;
        const char *err;
        uint32_t top = s->uidnext > 1 ? s->uidnext - 1 : 1;
        if (qr_known != NULL && imap_seqset_parse(qr_known, top, &kr, &nk, &err) < 0) {
            kr = NULL; /* checked above; only '*' can differ, and it means all */
            nk = 0;
        }
        if (kr == NULL) {
            kr = xmalloc(sizeof(*kr));
            kr->lo = 1;
            kr->hi = top;
            nk = 1;
        }
        struct buf v;
        buf_init(&v, 0);
        uint32_t *gone = NULL;
        size_t ng = 0, capg = 0;
        for (size_t k = 0; k < nk; k++) {
            for (uint64_t u = kr[k].lo; u <= kr[k].hi && u < s->uidnext; u++) {
                size_t seq = imapd_seq_of(s, (uint32_t)u);
                if (seq != 0) {
                    continue;
                }
                /* skip to the next live UID quickly */
                if (ng == capg) {
                    capg = capg ? capg * 2 : 256;
                    gone = xrealloc(gone, capg * sizeof(*gone));
                }
                gone[ng++] = (uint32_t)u;
                if (ng > 1000000)
                    break;
            }
        }
        if (ng > 0) {
            buf_puts(&v, "* VANISHED (EARLIER) ");
            imapd_write_uidset(&v, gone, ng);
            buf_puts(&v, "\r\n");
            buf_append(&s->out, v.data, v.len);
        }
        free(gone);
        free(kr);
        buf_free(&v);
        for (size_t i = 0; i < s->n; i++)
            if (s->msgs[i].modseq > qr_modseq)
                send_fetch_flags(s, i);
    }
    imapd_reply(s, c->tag, "OK", "[%s] %s completed", readonly ? "READ-ONLY" : "READ-WRITE",
                c->name);
}

static void cmd_create(struct imapd_session *s, const struct imap_command *c)
{
    char name[STORE_FOLDER_MAX + 1];
    if (c->n_args != 1) {
        imapd_reply(s, c->tag, "BAD", "CREATE needs a mailbox name");
        return;
    }
    if (folder_arg(s, c->tag, &c->args[0], name) < 0)
        return;
    if (strcmp(name, "INBOX") == 0) {
        imapd_reply(s, c->tag, "NO", "[ALREADYEXISTS] INBOX always exists");
        return;
    }
    const char *why = NULL;
    /* Superior names first (RFC 3501 6.3.3), ignoring "exists". */
    for (char *p = strchr(name, IMAPD_HIER); p != NULL; p = strchr(p + 1, IMAPD_HIER)) {
        *p = '\0';
        int r = s->sy->ops->folder_create(s->sy, s->user, name, &why);
        *p = IMAPD_HIER;
        if (r < 0 || (r == SYNC_NO && strcmp(why, "exists") != 0)) {
            imapd_store_failed(s, c->tag, r, why);
            return;
        }
    }
    int r = s->sy->ops->folder_create(s->sy, s->user, name, &why);
    if (r != 0) {
        imapd_store_failed(s, c->tag, r, why);
        return;
    }
    imapd_reply(s, c->tag, "OK", "CREATE completed");
}

static void cmd_delete(struct imapd_session *s, const struct imap_command *c)
{
    char name[STORE_FOLDER_MAX + 1];
    if (c->n_args != 1) {
        imapd_reply(s, c->tag, "BAD", "DELETE needs a mailbox name");
        return;
    }
    if (folder_arg(s, c->tag, &c->args[0], name) < 0)
        return;
    if (strcmp(name, "INBOX") == 0) {
        imapd_reply(s, c->tag, "NO", "INBOX can't be deleted");
        return;
    }
    if (s->state == ST_SELECTED && strcmp(name, s->folder) == 0) {
        imapd_reply(s, c->tag, "NO", "Can't delete the selected mailbox; CLOSE it first");
        return;
    }
    struct sync_folder f;
    int r;
    const char *why = NULL;
    if (find_folder(s, name, &f, &r, &why) < 0) {
        imapd_store_failed(s, c->tag, r, why);
        return;
    }
    r = s->sy->ops->folder_delete(s->sy, s->user, f.uidvalidity, &why);
    if (r != 0) {
        imapd_store_failed(s, c->tag, r, why);
        return;
    }
    imapd_reply(s, c->tag, "OK", "DELETE completed");
}

static void cmd_rename(struct imapd_session *s, const struct imap_command *c)
{
    char from[STORE_FOLDER_MAX + 1], to[STORE_FOLDER_MAX + 1];
    if (c->n_args != 2) {
        imapd_reply(s, c->tag, "BAD", "RENAME needs two mailbox names");
        return;
    }
    if (folder_arg(s, c->tag, &c->args[0], from) < 0 || folder_arg(s, c->tag, &c->args[1], to) < 0)
        return;
    if (strcmp(from, "INBOX") == 0) {
        imapd_reply(s, c->tag, "NO", "Renaming INBOX is not supported");
        return;
    }
    if (strcmp(to, "INBOX") == 0) {
        imapd_reply(s, c->tag, "NO", "[ALREADYEXISTS] INBOX always exists");
        return;
    }
    size_t fl = strlen(from);
    if (strncmp(to, from, fl) == 0 && to[fl] == IMAPD_HIER) {
        imapd_reply(s, c->tag, "NO", "Can't rename a mailbox under itself");
        return;
    }
    const char *why = NULL;
    int r = s->sy->ops->folder_rename(s->sy, s->user, from, to, &why);
    if (r != 0) {
        imapd_store_failed(s, c->tag, r, why);
        return;
    }
    /* The selected folder (or one under it) keeps being served under its new
     * name: its UIDVALIDITY and messages are the same. */
    if (s->state == ST_SELECTED && strncmp(s->folder, from, fl) == 0 &&
        (s->folder[fl] == '\0' || s->folder[fl] == IMAPD_HIER)) {
        char nn[2 * STORE_FOLDER_MAX + 2];
        snprintf(nn, sizeof(nn), "%s%s", to, s->folder + fl);
        if (strlen(nn) <= STORE_FOLDER_MAX)
            str_copy(s->folder, nn, sizeof(s->folder));
    }
    /* Inferior names follow (RFC 3501 6.3.5). */
    struct sync_folder *list = NULL;
    size_t nf = 0;
    if (s->sy->ops->folders(s->sy, s->user, &list, &nf, &why) == 0) {
        for (size_t i = 0; i < nf; i++) {
            if (strncmp(list[i].name, from, fl) == 0 && list[i].name[fl] == IMAPD_HIER) {
                char nn[2 * STORE_FOLDER_MAX + 2];
                snprintf(nn, sizeof(nn), "%s%s", to, list[i].name + fl);
                if (strlen(nn) <= STORE_FOLDER_MAX)
                    s->sy->ops->folder_rename(s->sy, s->user, list[i].name, nn, &why);
            }
        }
    }
    free(list);
    imapd_reply(s, c->tag, "OK", "RENAME completed");
}

static void cmd_subscribe(struct imapd_session *s, const struct imap_command *c, bool on)
{
    char name[STORE_FOLDER_MAX + 1];
    if (c->n_args != 1) {
        imapd_reply(s, c->tag, "BAD", "%s needs a mailbox name", c->name);
        return;
    }
    if (folder_arg(s, c->tag, &c->args[0], name) < 0)
        return;
    if (s->env->sub_set == NULL || s->env->sub_set(s->env->ctx, s->user, name, on) < 0) {
        imapd_reply(s, c->tag, "NO", "[UNAVAILABLE] Can't change subscriptions now");
        return;
    }
    imapd_reply(s, c->tag, "OK", "%s completed", c->name);
}

/* LIST pattern match: '*' matches anything, '%' anything but the hierarchy
 * separator. INBOX matches case-insensitively. */
static bool pattern_match(const char *pat, const char *name)
{
    if (*pat == '\0')
        return *name == '\0';
    if (*pat == '*') {
        for (const char *n = name;; n++) {
            if (pattern_match(pat + 1, n))
                return true;
            if (*n == '\0')
                return false;
        }
    }
    if (*pat == '%') {
        for (const char *n = name;; n++) {
            if (pattern_match(pat + 1, n))
                return true;
            if (*n == '\0' || *n == IMAPD_HIER)
                return false;
        }
    }
    return *pat == *name && *name != '\0' && pattern_match(pat + 1, name + 1);
}

static bool list_match(const char *pat, const char *name)
{
    if (strncasecmp(pat, "INBOX", 5) == 0 && strcmp(name, "INBOX") == 0) {
        char p2[STORE_FOLDER_MAX * 2 + 8];
        snprintf(p2, sizeof(p2), "INBOX%s", pat + 5);
        return pattern_match(p2, name);
    }
    return pattern_match(pat, name);
}

struct sub_names {
    char **v;
    size_t n;
};

static void sub_collect(void *ctx, const char *name)
{
    struct sub_names *sn = ctx;
    sn->v = xrealloc(sn->v, (sn->n + 1) * sizeof(*sn->v));
    sn->v[sn->n++] = xstrdup(name);
}

static void cmd_list(struct imapd_session *s, const struct imap_command *c, bool lsub)
{
    const char *ref, *pat;
    size_t rl, pl;
    size_t ai = 0;
    bool only_special = false;
    if (!lsub && c->n_args >= 1 && c->args[0].type == IMAP_ARG_LIST) {
        /* RFC 5258 selection options: we know (SPECIAL-USE) (RFC 6154). */
        for (size_t i = 0; i < c->args[0].n; i++) {
            if (imap_arg_atom_is(&c->args[0].list[i], "SPECIAL-USE")) {
                only_special = true;
            } else {
                imapd_reply(s, c->tag, "BAD", "Unsupported LIST selection option");
                return;
            }
        }
        ai = 1;
    }
    /* list-mailbox: an astring or an atom with the wildcards % and *. */
    if (c->n_args >= ai + 2 && c->args[ai + 1].type == IMAP_ARG_ATOM) {
        pat = c->args[ai + 1].str;
        pl = c->args[ai + 1].len;
    } else if (c->n_args < ai + 2 || !imap_arg_astring(&c->args[ai + 1], &pat, &pl)) {
        pat = NULL;
    }
    if (c->n_args < ai + 2 || !imap_arg_astring(&c->args[ai], &ref, &rl) || pat == NULL) {
        imapd_reply(s, c->tag, "BAD", "%s needs a reference and a pattern", c->name);
        return;
    }
    /* LIST ... RETURN (SPECIAL-USE ...): every listing carries the attributes anyway. */
    if (c->n_args > ai + 2 &&
        !(c->n_args == ai + 4 && imap_arg_atom_is(&c->args[ai + 2], "RETURN") &&
          c->args[ai + 3].type == IMAP_ARG_LIST)) {
        imapd_reply(s, c->tag, "BAD", "Unexpected %s arguments", c->name);
        return;
    }
    if (rl + pl > 2 * STORE_FOLDER_MAX || memchr(ref, '\0', rl) || memchr(pat, '\0', pl)) {
        imapd_reply(s, c->tag, "BAD", "Pattern too long");
        return;
    }
    if (pl == 0 && !lsub) {
        imapd_out(s, "* LIST (\\Noselect) \"/\" \"\"\r\n");
        imapd_reply(s, c->tag, "OK", "LIST completed");
        return;
    }
    char full[2 * STORE_FOLDER_MAX + 2];
    if (rl > 0 && ref[rl - 1] != IMAPD_HIER && pl > 0 && pat[0] != IMAPD_HIER)
        snprintf(full, sizeof(full), "%s%c%s", ref, IMAPD_HIER, pat);
    else
        snprintf(full, sizeof(full), "%s%s", ref, pat);

    struct sync_folder *fl = NULL;
    size_t nf = 0;
    const char *why = NULL;
    int r = s->sy->ops->folders(s->sy, s->user, &fl, &nf, &why);
    if (r != 0) {
        imapd_store_failed(s, c->tag, r, why);
        return;
    }
    struct sub_names subs = {0};
    if (lsub && s->env->sub_list != NULL)
        s->env->sub_list(s->env->ctx, s->user, sub_collect, &subs);

    /* Names to show: the folders (or subscriptions), plus parents implied
     * by a deeper name that the '%' pattern stops at. */
    size_t ncand = lsub ? subs.n : nf;
    struct buf b;
    buf_init(&b, 0);
    char **shown = NULL;
    size_t nshown = 0;
    for (size_t i = 0; i < ncand; i++) {
        const char *name = lsub ? subs.v[i] : fl[i].name;
        char cur[STORE_FOLDER_MAX + 1];
        str_copy(cur, name, sizeof(cur));
        for (;;) {
            bool exists = false, children = false;
            for (size_t j = 0; j < nf; j++) {
                size_t cl = strlen(cur);
                if (strcmp(fl[j].name, cur) == 0)
                    exists = true;
                else if (strncmp(fl[j].name, cur, cl) == 0 && fl[j].name[cl] == IMAPD_HIER)
                    children = true;
            }
            bool is_self = strcmp(cur, name) == 0;
            if (list_match(full, cur)) {
                bool dup = false;
                for (size_t k = 0; k < nshown && !dup; k++)
                    dup = strcmp(shown[k], cur) == 0;
                const char *su = special_use(cur);
                if (!dup && (!only_special || su != NULL)) {
                    shown = xrealloc(shown, (nshown + 1) * sizeof(*shown));
                    shown[nshown++] = xstrdup(cur);
                    buf_printf(&b, "* %s (", lsub ? "LSUB" : "LIST");
                    bool sp = false;
                    if (!exists || (!is_self && lsub)) {
                        buf_puts(&b, "\\Noselect");
                        sp = true;
                    }
                    if (!lsub) {
                        buf_printf(&b, "%s%s", sp ? " " : "",
                                   children ? "\\HasChildren" : "\\HasNoChildren");
                        sp = true;
                        if (su != NULL)
                            buf_printf(&b, " %s", su);
                    }
                    buf_puts(&b, ") \"/\" ");
                    imap_write_astring(&b, cur, strlen(cur));
                    buf_puts(&b, "\r\n");
                }
                break;
            }
            /* Try the parent: "a/b/c" -> "a/b" (only for % patterns). LSUB
             * too: a parent of a subscribed name shows as \Noselect (RFC
             * 3501 6.3.9). */
            char *slash = strrchr(cur, IMAPD_HIER);
            if (slash == NULL)
                break;
            *slash = '\0';
        }
    }
    /* INBOX is always there. */
    bool inbox_listed = false;
    for (size_t k = 0; k < nshown; k++)
        inbox_listed |= strcmp(shown[k], "INBOX") == 0;
    bool inbox_in = false;
    for (size_t i = 0; i < nf; i++)
        inbox_in |= strcmp(fl[i].name, "INBOX") == 0;
    if (!lsub && !inbox_listed && !inbox_in && !only_special && list_match(full, "INBOX"))
        buf_puts(&b, "* LIST (\\HasNoChildren) \"/\" INBOX\r\n");
    for (size_t k = 0; k < nshown; k++)
        free(shown[k]);
    free(shown);
    for (size_t k = 0; k < subs.n; k++)
        free(subs.v[k]);
    free(subs.v);
    free(fl);
    buf_append(&s->out, b.data, b.len);
    buf_free(&b);
    imapd_reply(s, c->tag, "OK", "%s completed", c->name);
}

struct status_count {
    uint64_t messages, unseen;
    uint32_t maxuid;
};

static int status_cb(void *ctx, const struct sync_msg *m)
{
    struct status_count *sc = ctx;
    sc->messages++;
    if (!(m->flags & STORE_F_SEEN))
        sc->unseen++;
    if (m->uid > sc->maxuid)
        sc->maxuid = m->uid;
    return 0;
}

static void cmd_status(struct imapd_session *s, const struct imap_command *c)
{
    char name[STORE_FOLDER_MAX + 1];
    if (c->n_args != 2 || c->args[1].type != IMAP_ARG_LIST || c->args[1].n == 0) {
        imapd_reply(s, c->tag, "BAD", "STATUS needs a mailbox and a list of items");
        return;
    }
    if (folder_arg(s, c->tag, &c->args[0], name) < 0)
        return;
    const struct imap_arg *items = &c->args[1];
    for (size_t i = 0; i < items->n; i++) {
        const struct imap_arg *it = &items->list[i];
        if (!imap_arg_atom_is(it, "MESSAGES") && !imap_arg_atom_is(it, "RECENT") &&
            !imap_arg_atom_is(it, "UIDNEXT") && !imap_arg_atom_is(it, "UIDVALIDITY") &&
            !imap_arg_atom_is(it, "UNSEEN") && !imap_arg_atom_is(it, "HIGHESTMODSEQ")) {
            imapd_reply(s, c->tag, "BAD", "Unknown STATUS item");
            return;
        }
    }
    struct sync_folder f;
    int r;
    const char *why = NULL;
    if (find_folder(s, name, &f, &r, &why) < 0) {
        imapd_store_failed(s, c->tag, r, why);
        return;
    }
    struct status_count sc = {0};
    uint64_t modseq = 0;
    r = s->sy->ops->msgs(s->sy, s->user, name, status_cb, &sc, &modseq, &why);
    if (r != 0) {
        imapd_store_failed(s, c->tag, r, why);
        return;
    }
    uint32_t uidnext = f.uidnext > sc.maxuid ? f.uidnext : sc.maxuid + 1;
    struct buf b;
    buf_init(&b, 0);
    buf_puts(&b, "* STATUS ");
    imap_write_astring(&b, name, strlen(name));
    buf_puts(&b, " (");
    for (size_t i = 0; i < items->n; i++) {
        const struct imap_arg *it = &items->list[i];
        if (i > 0)
            buf_puts(&b, " ");
        if (imap_arg_atom_is(it, "MESSAGES"))
            buf_printf(&b, "MESSAGES %llu", (unsigned long long)sc.messages);
        else if (imap_arg_atom_is(it, "RECENT"))
            buf_puts(&b, "RECENT 0");
        else if (imap_arg_atom_is(it, "UIDNEXT"))
            buf_printf(&b, "UIDNEXT %u", uidnext);
        else if (imap_arg_atom_is(it, "UIDVALIDITY"))
            buf_printf(&b, "UIDVALIDITY %u", f.uidvalidity);
        else if (imap_arg_atom_is(it, "UNSEEN"))
            buf_printf(&b, "UNSEEN %llu", (unsigned long long)sc.unseen);
        else
            buf_printf(&b, "HIGHESTMODSEQ %llu", (unsigned long long)modseq);
    }
    buf_puts(&b, ")\r\n");
    buf_append(&s->out, b.data, b.len);
    buf_free(&b);
    imapd_reply(s, c->tag, "OK", "STATUS completed");
}

static void cmd_append(struct imapd_session *s, const struct imap_command *c)
{
    char name[STORE_FOLDER_MAX + 1];
    if (c->n_args < 2 || c->n_args > 4) {
        imapd_reply(s, c->tag, "BAD", "APPEND needs a mailbox and a message");
        return;
    }
    if (folder_arg(s, c->tag, &c->args[0], name) < 0)
        return;
    uint32_t flags = 0;
    struct buf kw;
    buf_init(&kw, STORE_KEYWORDS_MAX);
    int64_t date = 0;
    size_t i = 1;
    const char *why = NULL;
    if (i < c->n_args - 1 && c->args[i].type == IMAP_ARG_LIST) {
        if (imapd_parse_flags(c->args[i].list, c->args[i].n, &flags, &kw, &why) < 0) {
            imapd_reply(s, c->tag, "BAD", "%s", why);
            buf_free(&kw);
            return;
        }
        i++;
    }
    if (i < c->n_args - 1) {
        if (c->args[i].type != IMAP_ARG_STRING ||
            (date = imapd_parse_datetime(c->args[i].str)) < 0) {
            imapd_reply(s, c->tag, "BAD", "Invalid date-time");
            buf_free(&kw);
            return;
        }
        i++;
    }
    const struct imap_arg *msg = &c->args[i];
    if (i != c->n_args - 1 || (msg->type != IMAP_ARG_LITERAL && msg->type != IMAP_ARG_STRING)) {
        imapd_reply(s, c->tag, "BAD", "APPEND needs the message as a literal");
        buf_free(&kw);
        return;
    }
    if (msg->len == 0) {
        imapd_reply(s, c->tag, "NO", "Empty message");
        buf_free(&kw);
        return;
    }
    /* Lines end in CRLF in IMAP (RFC 3501 2.3.4: sizes count CRLF lines), as
     * tern stores them: a bare LF (a client appending a Unix-format file)
     * becomes CRLF. Anything else is kept as sent. */
    const char *data = msg->str;
    size_t len = msg->len;
    struct buf crlf;
    buf_init(&crlf, 0);
    size_t bare = 0;
    for (const char *q = data; (q = memchr(q, '\n', (size_t)(data + len - q))) != NULL; q++)
        bare += q == data || q[-1] != '\r';
    if (bare > 0) {
        size_t from = 0;
        for (size_t k = 0; k < len; k++) {
            if (data[k] == '\n' && (k == 0 || data[k - 1] != '\r')) {
                buf_append(&crlf, data + from, k - from);
                buf_append(&crlf, "\r", 1);
                from = k;
            }
        }
        buf_append(&crlf, data + from, len - from);
        data = crlf.data;
        len = crlf.len;
    }
    uint32_t uid = 0, uidvalidity = 0;
    int r = s->sy->ops->append_new(s->sy, s->user, name, flags, kw.data != NULL ? kw.data : "",
                                   date, data, len, &uid, &uidvalidity, &why);
    buf_free(&kw);
    buf_free(&crlf);
    if (r == SYNC_NO && strcmp(why, "notfound") == 0) {
        imapd_reply(s, c->tag, "NO", "[TRYCREATE] Mailbox doesn't exist: %s", name);
        return;
    }
    if (r != 0) {
        imapd_store_failed(s, c->tag, r, why);
        return;
    }
    /* The store committed (fsync) before answering: the OK promises storage. */
    if (s->state == ST_SELECTED && strcmp(name, s->folder) == 0)
        imapd_sync_selected(s, true);
    imapd_reply(s, c->tag, "OK", "[APPENDUID %u %u] APPEND completed", uidvalidity, uid);
}

/* One wait of IDLE on the store's WAIT: until the mailbox changes, the
 * client speaks, or the next state check is due. 0 to go on (news sent),
 * -1 when the session ends (BYE sent), 1 when the store does not know
 * WAIT (poll from now on). */
static int idle_wait(struct imapd_session *s)
{
    int64_t since_check = time_mono_ms() - s->last_state_check_ms;
    int64_t ms = (int64_t)s->env->state_check_ms - since_check;
    if (ms < 1)
        ms = 1;
    if (ms > 1000) /* the shutdown flag is looked at between waits */
        ms = 1000;
    struct store_mailbox mb;
    const char *why = NULL;
    int r = s->sy->ops->wait(s->sy, s->user, s->modseq, (unsigned)ms, s->fd, &mb, &why);
    if (r == SYNC_NO && strcmp(why, "unsupported") == 0) {
        log_info("imap", "%s %s: the store does not know WAIT; IDLE polls", s->peer, s->user);
        s->no_wait = true;
        return 1;
    }
    if (r != 0 || mb.state != STORE_MBOX_ACTIVE)
        return check_state(s) ? 0 : -1; /* it says why (BYE) */
    if (mb.modseq > s->modseq) {
        imapd_sync_selected(s, true);
        imapd_flush(s);
    }
    return s->closing ? -1 : 0;
}

static void cmd_idle(struct imapd_session *s, const struct imap_command *c)
{
    imapd_out(s, "+ idling\r\n");
    imapd_flush(s);
    int64_t started = time_mono_ms();
    for (;;) {
        char line[64];
        /* With a folder selected and a store that knows WAIT, the store
         * tells of a change as soon as it is committed; else poll every
         * idle_check_ms. */
        bool notified = s->state == ST_SELECTED && !s->no_wait && s->sy->ops->wait != NULL;
        int r = raw_line(s, line, sizeof(line), notified ? 0 : (int)s->env->idle_check_ms);
        if (r < 0) {
            s->closing = true;
            return;
        }
        if (r == 1) {
            if (strcasecmp(line, "DONE") == 0)
                break;
            imapd_reply(s, c->tag, "BAD", "Expected DONE");
            return;
        }
        if (s->env->shutdown != NULL && *s->env->shutdown) {
            imapd_bye(s, "Server shutting down");
            return;
        }
        if (time_mono_ms() - started > 2 * 3600 * 1000) {
            imapd_bye(s, "IDLE for too long");
            return;
        }
        /* Idle tick: the mailbox state every state_check_ms (moves end the
         * session), the news every tick. */
        if (time_mono_ms() - s->last_state_check_ms >= (int64_t)s->env->state_check_ms &&
            !check_state(s))
            return;
        if (notified) {
            int w = idle_wait(s);
            if (w < 0)
                return;
            continue;
        }
        imapd_sync_selected(s, true);
        imapd_flush(s);
        if (s->closing)
            return;
    }
    imapd_sync_selected(s, true);
    imapd_reply(s, c->tag, "OK", "IDLE terminated");
}

static void cmd_enable(struct imapd_session *s, const struct imap_command *c)
{
    struct buf b;
    buf_init(&b, 0);
    buf_puts(&b, "* ENABLED");
    for (size_t i = 0; i < c->n_args; i++) {
        if (imap_arg_atom_is(&c->args[i], "CONDSTORE")) {
            s->condstore = true;
            buf_puts(&b, " CONDSTORE");
        } else if (imap_arg_atom_is(&c->args[i], "QRESYNC")) {
            s->qresync = s->condstore = true;
            buf_puts(&b, " QRESYNC");
        }
    }
    buf_puts(&b, "\r\n");
    buf_append(&s->out, b.data, b.len);
    buf_free(&b);
    imapd_reply(s, c->tag, "OK", "ENABLE completed");
}

/* ---- TLS ---------------------------------------------------------------- */

static void cmd_starttls(struct imapd_session *s, const struct imap_command *c)
{
    if (c->n_args != 0) {
        imapd_reply(s, c->tag, "BAD", "STARTTLS takes no arguments");
        return;
    }
    if (s->tls != NULL) {
        imapd_reply(s, c->tag, "BAD", "TLS is already active");
        return;
    }
    if (s->state != ST_NOAUTH) {
        imapd_reply(s, c->tag, "BAD", "STARTTLS is not allowed after login");
        return;
    }
    if (s->env->tls == NULL) {
        imapd_reply(s, c->tag, "NO", "TLS is not configured on this listener");
        return;
    }
    imapd_reply(s, c->tag, "OK", "Begin TLS negotiation now");
    imapd_flush(s);
    if (s->broken)
        return;
    /* Whatever came in the clear behind STARTTLS must not be taken as sent
     * inside TLS (CVE-2011-0411): it is dropped unread. The reader holds
     * nothing of it (it stops at the end of a command). */
    size_t dropped = s->in_len - s->in_off;
    s->in_off = s->in_len = 0;
    if (dropped > 0)
        log_warn("imap", "%s: %zu octets sent in the clear after STARTTLS discarded", s->peer,
                 dropped);
    start_tls(s, "STARTTLS");
}

/* ---- dispatch ----------------------------------------------------------- */

enum { M_NOAUTH = 1, M_AUTH = 2, M_SEL = 4, M_ANY = 7 };

static void cmd_uid(struct imapd_session *s, const struct imap_command *c)
{
    if (c->n_args < 1 || c->args[0].type != IMAP_ARG_ATOM) {
        imapd_reply(s, c->tag, "BAD", "UID needs a command");
        return;
    }
    const struct imap_arg *a = c->args + 1;
    size_t n = c->n_args - 1;
    const char *sub = c->args[0].str;
    if (strcasecmp(sub, "FETCH") == 0)
        imapd_cmd_fetch(s, c, a, n, true);
    else if (strcasecmp(sub, "STORE") == 0)
        imapd_cmd_store(s, c, a, n, true);
    else if (strcasecmp(sub, "SEARCH") == 0)
        imapd_cmd_search(s, c, a, n, true);
    else if (strcasecmp(sub, "COPY") == 0)
        imapd_cmd_copy(s, c, a, n, true, false);
    else if (strcasecmp(sub, "MOVE") == 0)
        imapd_cmd_copy(s, c, a, n, true, true);
    else if (strcasecmp(sub, "EXPUNGE") == 0) {
        if (n != 1 || a[0].type != IMAP_ARG_ATOM)
            imapd_reply(s, c->tag, "BAD", "UID EXPUNGE needs a UID set");
        else
            imapd_cmd_expunge(s, c->tag, a[0].str, false);
    } else
        imapd_reply(s, c->tag, "BAD", "Unknown UID command");
}

static void execute(struct imapd_session *s, const struct imap_command *c)
{
    st_commands++;
    const char *n = c->name;
    unsigned mask = s->state == ST_NOAUTH ? M_NOAUTH : s->state == ST_AUTH ? M_AUTH : M_SEL;
    static const struct {
        const char *name;
        unsigned states;
    } known[] = {
        {"CAPABILITY", M_ANY},
        {"NOOP", M_ANY},
        {"LOGOUT", M_ANY},
        {"ID", M_ANY},
        {"LOGIN", M_NOAUTH},
        {"AUTHENTICATE", M_NOAUTH},
        {"STARTTLS", M_ANY},
        {"ENABLE", M_AUTH},
        {"SELECT", M_AUTH | M_SEL},
        {"EXAMINE", M_AUTH | M_SEL},
        {"CREATE", M_AUTH | M_SEL},
        {"DELETE", M_AUTH | M_SEL},
        {"RENAME", M_AUTH | M_SEL},
        {"SUBSCRIBE", M_AUTH | M_SEL},
        {"UNSUBSCRIBE", M_AUTH | M_SEL},
        {"LIST", M_AUTH | M_SEL},
        {"LSUB", M_AUTH | M_SEL},
        {"STATUS", M_AUTH | M_SEL},
        {"APPEND", M_AUTH | M_SEL},
        {"NAMESPACE", M_AUTH | M_SEL},
        {"IDLE", M_AUTH | M_SEL},
        {"CHECK", M_SEL},
        {"CLOSE", M_SEL},
        {"UNSELECT", M_SEL},
        {"EXPUNGE", M_SEL},
        {"SEARCH", M_SEL},
        {"FETCH", M_SEL},
        {"STORE", M_SEL},
        {"COPY", M_SEL},
        {"MOVE", M_SEL},
        {"UID", M_SEL},
    };
    size_t k;
    for (k = 0; k < ARRAY_SIZE(known); k++)
        if (strcmp(known[k].name, n) == 0)
            break;
    if (k == ARRAY_SIZE(known)) {
        imapd_reply(s, c->tag, "BAD", "Unknown command");
        return;
    }
    if (!(known[k].states & mask)) {
        imapd_reply(s, c->tag, "BAD", "%s not allowed %s", n,
                    s->state == ST_NOAUTH ? "before login"
                    : s->state == ST_AUTH ? "without a selected mailbox"
                                          : "now");
        return;
    }
    /* A session whose mailbox left this store ends before doing anything. */
    if (s->sy != NULL &&
        time_mono_ms() - s->last_state_check_ms >= (int64_t)s->env->state_check_ms &&
        !check_state(s))
        return;
    /* Expunges are not reported during FETCH, STORE, SEARCH (RFC 3501 7.4.1). */
    bool quiet = strcmp(n, "FETCH") == 0 || strcmp(n, "STORE") == 0 || strcmp(n, "SEARCH") == 0;

    if (strcmp(n, "CAPABILITY") == 0) {
        imapd_out(s, "* CAPABILITY %s\r\n", s->state == ST_NOAUTH ? caps_noauth(s) : caps_auth);
        imapd_reply(s, c->tag, "OK", "CAPABILITY completed");
    } else if (strcmp(n, "NOOP") == 0 || strcmp(n, "CHECK") == 0) {
        imapd_sync_selected(s, true);
        imapd_reply(s, c->tag, "OK", "%s completed", n);
    } else if (strcmp(n, "LOGOUT") == 0) {
        imapd_out(s, "* BYE Logging out\r\n");
        imapd_reply(s, c->tag, "OK", "LOGOUT completed");
        s->state = ST_LOGOUT;
        s->closing = true;
    } else if (strcmp(n, "ID") == 0) {
        imapd_out(s, "* ID (\"name\" \"tern\" \"support-url\" \"https://tern.invalid/\")\r\n");
        imapd_reply(s, c->tag, "OK", "ID completed");
    } else if (strcmp(n, "LOGIN") == 0) {
        cmd_login(s, c);
    } else if (strcmp(n, "AUTHENTICATE") == 0) {
        cmd_authenticate(s, c);
    } else if (strcmp(n, "STARTTLS") == 0) {
        cmd_starttls(s, c);
    } else if (strcmp(n, "ENABLE") == 0) {
        cmd_enable(s, c);
    } else if (strcmp(n, "SELECT") == 0 || strcmp(n, "EXAMINE") == 0) {
        cmd_select(s, c, strcmp(n, "EXAMINE") == 0);
    } else if (strcmp(n, "CREATE") == 0) {
        cmd_create(s, c);
    } else if (strcmp(n, "DELETE") == 0) {
        cmd_delete(s, c);
    } else if (strcmp(n, "RENAME") == 0) {
        cmd_rename(s, c);
    } else if (strcmp(n, "SUBSCRIBE") == 0 || strcmp(n, "UNSUBSCRIBE") == 0) {
        cmd_subscribe(s, c, strcmp(n, "SUBSCRIBE") == 0);
    } else if (strcmp(n, "LIST") == 0 || strcmp(n, "LSUB") == 0) {
        cmd_list(s, c, strcmp(n, "LSUB") == 0);
    } else if (strcmp(n, "STATUS") == 0) {
        cmd_status(s, c);
    } else if (strcmp(n, "APPEND") == 0) {
        cmd_append(s, c);
    } else if (strcmp(n, "NAMESPACE") == 0) {
        imapd_out(s, "* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n");
        imapd_reply(s, c->tag, "OK", "NAMESPACE completed");
    } else if (strcmp(n, "IDLE") == 0) {
        cmd_idle(s, c);
    } else if (strcmp(n, "CLOSE") == 0) {
        if (!s->readonly) {
            sync_selected_unreported(s);
            imapd_cmd_expunge(s, NULL, NULL, true);
        }
        imapd_unselect(s);
        imapd_reply(s, c->tag, "OK", "CLOSE completed");
    } else if (strcmp(n, "UNSELECT") == 0) {
        imapd_unselect(s);
        imapd_reply(s, c->tag, "OK", "UNSELECT completed");
    } else if (strcmp(n, "EXPUNGE") == 0) {
        if (c->n_args != 0)
            imapd_reply(s, c->tag, "BAD", "EXPUNGE takes no arguments");
        else
            imapd_cmd_expunge(s, c->tag, NULL, false);
    } else if (strcmp(n, "SEARCH") == 0) {
        imapd_cmd_search(s, c, c->args, c->n_args, false);
    } else if (strcmp(n, "FETCH") == 0) {
        imapd_cmd_fetch(s, c, c->args, c->n_args, false);
    } else if (strcmp(n, "STORE") == 0) {
        imapd_cmd_store(s, c, c->args, c->n_args, false);
    } else if (strcmp(n, "COPY") == 0 || strcmp(n, "MOVE") == 0) {
        imapd_cmd_copy(s, c, c->args, c->n_args, false, strcmp(n, "MOVE") == 0);
    } else if (strcmp(n, "UID") == 0) {
        quiet =
            c->n_args > 0 && c->args[0].type == IMAP_ARG_ATOM &&
            (strcasecmp(c->args[0].str, "FETCH") == 0 || strcasecmp(c->args[0].str, "STORE") == 0 ||
             strcasecmp(c->args[0].str, "SEARCH") == 0);
        (void)quiet;
        cmd_uid(s, c);
    }
    (void)quiet;
}

/* Handles one reader event; false when the session must end. */
static void on_command(struct imapd_session *s)
{
    struct imap_command c;
    const char *err = NULL;
    if (imap_parse(s->ps, imap_reader_command(s->rd), &c, &err) < 0) {
        imapd_reply(s, c.tag, "BAD", "%s", err != NULL ? err : "Syntax error");
        return;
    }
    execute(s, &c);
}

static void session_run(int fd, const char *peer, const struct imapd_env *env, bool implicit_tls)
{
    struct imapd_session *s = xcalloc(1, sizeof(*s));
    s->fd = fd;
    s->peer = peer;
    s->env = env;
    s->rd = imap_reader_new(&env->limits);
    s->ps = imap_parser_new(&env->limits);
    s->in = xmalloc(IMAPD_READ_BUF);
    buf_init(&s->out, 0);
    buf_init(&s->cache_body, 0);
    s->last_input_ms = time_mono_ms();
    st_sessions++;

    if (implicit_tls) {
        ASSERT(env->tls != NULL);
        start_tls(s, "implicit");
    }
    if (!s->closing) {
        imapd_out(s, "* OK [CAPABILITY %s] %s tern IMAP ready\r\n", caps_noauth(s), env->hostname);
        imapd_flush(s);
    }
    while (!s->closing) {
        if (s->in_off < s->in_len) {
            size_t used = 0;
            enum imap_read r =
                imap_reader_feed(s->rd, s->in + s->in_off, s->in_len - s->in_off, &used);
            s->in_off += used;
            switch (r) {
            case IMAP_READ_MORE:
                break;
            case IMAP_READ_COMMAND:
                on_command(s);
                imapd_flush(s);
                continue;
            case IMAP_READ_CONTINUE:
                imapd_out(s, "+ OK\r\n");
                imapd_flush(s);
                continue;
            case IMAP_READ_TOO_BIG: {
                /* The reader drops the command (and skips the octets of a
                 * non-synchronizing literal), so the session stays in step. */
                imapd_reply(s, imap_reader_tag(s->rd), "NO", "[TOOBIG] Literal too big");
                imapd_flush(s);
                continue;
            }
            case IMAP_READ_LINE_TOO_LONG:
                imapd_reply(s, "*", "BAD", "Line too long");
                imapd_flush(s);
                continue;
            case IMAP_READ_BAD_LITERAL:
                imapd_reply(s, imap_reader_tag(s->rd), "BAD", "Invalid literal");
                imapd_flush(s);
                continue;
            }
            if (used > 0 && s->in_off < s->in_len)
                continue;
        }
        if (env->shutdown != NULL && *env->shutdown) {
            imapd_bye(s, "Server shutting down");
            break;
        }
        int64_t now = time_mono_ms();
        if (now - s->last_input_ms >= (int64_t)env->idle_timeout_ms) {
            imapd_bye(s, "Autologout; idle for too long");
            break;
        }
        unsigned wait = env->state_check_ms > 0 ? env->state_check_ms : 1000;
        int r = read_more(s, (int)wait);
        if (r < 0)
            break;
        if (r == 0 && s->sy != NULL && now - s->last_state_check_ms >= (int64_t)env->state_check_ms)
            check_state(s);
    }
    imapd_flush(s);
    if (s->sy != NULL) {
        if (env->logout != NULL)
            env->logout(env->ctx, s->user);
        sync_close(&s->sy);
    }
    imapd_unselect(s);
    free(s->msgs);
    buf_free(&s->cache_body);
    buf_free(&s->out);
    free(s->in);
    imap_reader_free(&s->rd);
    imap_parser_free(&s->ps);
    tls_conn_free(&s->tls);
    close(fd);
    free(s);
}

void imapd_session_run(int fd, const char *peer, const struct imapd_env *env)
{
    session_run(fd, peer, env, false);
}

void imapd_session_run_tls(int fd, const char *peer, const struct imapd_env *env)
{
    session_run(fd, peer, env, true);
}
