/*
 * role_store — the LMTP server of one store, with group commit. See
 * role_store.h for the delivery rules and docs/lmtp.md for the dialogue.
 *
 * Group commit. When a session's DATA ends, its appends join the store
 * role's open batch, the session is paused (no more input is read), and the
 * commit task is scheduled. The task runs after every I/O callback of this
 * loop iteration, so all messages completed in one iteration share one body
 * fdatasync and one metadata commit. While the commit blocks on the disk,
 * new input piles up in the kernel's socket buffers and forms the next batch.
 * Replies go out only after the commit returned: that is the durability
 * promise of the 250.
 */
#include "role_store/role_store.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "directory/directory.h"
#include "net/net.h"
#include "smtp/smtp.h"
#include "store/store.h"
#include "util/util.h"

#define LMTP_MAX_ERRORS 10

struct lmtp_rcpt {
    char addr[MAIL_ADDR_MAX + 1]; /* as given (normalized) */
    char user[MAIL_ADDR_MAX + 1]; /* the mailbox it resolved to */
    uint64_t epoch;
    size_t item; /* index into the session's appends (shared by duplicates) */
};

struct lmtp_session {
    struct store_role *sr;
    struct net_conn *conn;
    struct smtp_in *in;
    char id[24];
    bool lhlo;
    bool in_mail;
    char sender[MAIL_ADDR_MAX + 1];
    char delivery_id[STORE_DELIVERY_ID_MAX + 1];
    struct lmtp_rcpt *rcpts;
    size_t n_rcpts, cap_rcpts;
    unsigned errors;
    struct buf out;
    /* A pending commit: */
    bool pending;
    bool dead; /* the connection closed while the commit was pending */
    struct buf msg;
    struct store_append *appends;
    struct store_append_result *results;
    size_t n_items;
    struct lmtp_session *next_pending;
};

struct store_role {
    const struct config *cfg;
    const char *name;
    struct store *st;
    struct directory *dir;
    struct net_loop *loop;
    struct net_task *commit_task;
    struct store_batch *batch;
    struct lmtp_session *pending_head, **pending_tail;
    uint64_t n_sessions, n_deliveries, n_duplicates, n_commits;
    uint64_t next_session;
};

/* ---- replies ---------------------------------------------------------- */

static void reply(struct lmtp_session *s, int code, const char *enh, const char *fmt, ...)
    TERN_PRINTF(4, 5);
static void reply(struct lmtp_session *s, int code, const char *enh, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    buf_reset(&s->out);
    smtp_reply(&s->out, code, enh, text);
    net_conn_write(s->conn, s->out.data, s->out.len);
}

/* Counts a client error; too many end the session. Returns true if closed. */
static bool client_error(struct lmtp_session *s)
{
    if (++s->errors < LMTP_MAX_ERRORS)
        return false;
    reply(s, 421, "4.7.0", "too many errors, closing connection");
    net_conn_close(s->conn);
    return true;
}

static void txn_reset(struct lmtp_session *s)
{
    s->in_mail = false;
    s->sender[0] = '\0';
    s->delivery_id[0] = '\0';
    s->n_rcpts = 0;
}

/* The hint of brief invariant 3, from the mailbox's state here. */
static void reply_notlive(struct lmtp_session *s, const char *addr, const struct store_mailbox *mb)
{
    if (mb->state == STORE_MBOX_MOVED)
        reply(s, 451, "4.2.1", "<%s> moved to %s epoch %llu", addr, mb->moved_to,
              (unsigned long long)mb->epoch);
    else
        reply(s, 451, "4.2.1", "<%s> move in progress", addr);
}

/* ---- commands --------------------------------------------------------- */

static void cmd_lhlo(struct lmtp_session *s, const struct smtp_cmd *cmd)
{
    (void)cmd;
    txn_reset(s);
    s->lhlo = true;
    char text[256];
    snprintf(text, sizeof(text),
             "%s.tern\nPIPELINING\nENHANCEDSTATUSCODES\n8BITMIME\nSIZE %llu\nXDELIVERYID",
             s->sr->name, (unsigned long long)s->sr->cfg->lmtp.max_message_size);
    buf_reset(&s->out);
    smtp_reply(&s->out, 250, NULL, text);
    net_conn_write(s->conn, s->out.data, s->out.len);
}

static bool delivery_id_valid(const char *v)
{
    size_t n = strlen(v);
    if (n == 0 || n > STORE_DELIVERY_ID_MAX)
        return false;
    return strspn(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

static void cmd_mail(struct lmtp_session *s, const struct smtp_cmd *cmd)
{
    if (!s->lhlo) {
        reply(s, 503, "5.5.1", "send LHLO first");
        client_error(s);
        return;
    }
    if (s->in_mail) {
        reply(s, 503, "5.5.1", "nested MAIL command");
        client_error(s);
        return;
    }
    char did[STORE_DELIVERY_ID_MAX + 1] = "";
    for (size_t i = 0; i < cmd->n_params; i++) {
        const struct smtp_param *p = &cmd->params[i];
        if (strcmp(p->key, "SIZE") == 0) {
            uint64_t size;
            if (!p->has_value || parse_u64(p->value, UINT64_MAX, &size) < 0) {
                reply(s, 501, "5.5.4", "malformed SIZE parameter");
                client_error(s);
                return;
            }
            if (size > s->sr->cfg->lmtp.max_message_size) {
                reply(s, 552, "5.3.4", "message size exceeds fixed limit of %llu octets",
                      (unsigned long long)s->sr->cfg->lmtp.max_message_size);
                return;
            }
        } else if (strcmp(p->key, "BODY") == 0) {
            if (!p->has_value ||
                (strcasecmp(p->value, "7BIT") != 0 && strcasecmp(p->value, "8BITMIME") != 0)) {
                reply(s, 501, "5.5.4", "BODY must be 7BIT or 8BITMIME");
                client_error(s);
                return;
            }
        } else if (strcmp(p->key, "XDELIVERYID") == 0) {
            if (!p->has_value || !delivery_id_valid(p->value)) {
                reply(s, 501, "5.5.4", "XDELIVERYID must be 1-64 of [A-Za-z0-9._-]");
                client_error(s);
                return;
            }
            str_copy(did, p->value, sizeof(did));
        } else {
            reply(s, 555, "5.5.4", "unsupported parameter %s", p->key);
            client_error(s);
            return;
        }
    }
    txn_reset(s);
    s->in_mail = true;
    str_copy(s->sender, cmd->addr, sizeof(s->sender));
    str_copy(s->delivery_id, did, sizeof(s->delivery_id));
    reply(s, 250, "2.1.0", "sender ok");
}

static void cmd_rcpt(struct lmtp_session *s, const struct smtp_cmd *cmd)
{
    struct store_role *sr = s->sr;
    if (!s->in_mail) {
        reply(s, 503, "5.5.1", "need MAIL before RCPT");
        client_error(s);
        return;
    }
    if (cmd->n_params > 0) {
        reply(s, 555, "5.5.4", "unsupported parameter %s", cmd->params[0].key);
        client_error(s);
        return;
    }
    if (s->n_rcpts >= sr->cfg->lmtp.max_recipients) {
        reply(s, 452, "4.5.3", "too many recipients");
        return;
    }
    struct dir_user u;
    enum dir_status ds = dir_resolve(sr->dir, cmd->addr, &u);
    if (ds == DIR_NOTFOUND || ds == DIR_INVALID) {
        reply(s, 550, "5.1.1", "<%s> user unknown", cmd->addr);
        return;
    }
    if (ds != DIR_OK) {
        log_warn(s->id, "directory lookup of <%s>: %s", cmd->addr, dir_status_str(ds));
        reply(s, 451, "4.4.3", "<%s> directory unavailable, try again later", cmd->addr);
        return;
    }
    if (strcmp(u.home, sr->name) != 0) {
        reply(s, 451, "4.2.1", "<%s> moved to %s epoch %llu", cmd->addr, u.home,
              (unsigned long long)u.epoch);
        return;
    }
    struct store_mailbox mb;
    enum store_status ss = store_mailbox_get(sr->st, u.address, &mb);
    if (ss == STORE_NOTFOUND && u.epoch == 1) {
        ss = store_mailbox_create(sr->st, u.address, STORE_MBOX_ACTIVE, u.epoch);
        if (ss == STORE_OK || ss == STORE_EXISTS) {
            log_info(s->id, "created mailbox of %s at epoch 1", u.address);
            ss = store_mailbox_get(sr->st, u.address, &mb);
        }
    }
    if (ss == STORE_NOTFOUND) {
        log_error(s->id, "directory homes %s here at epoch %llu but there is no mailbox", u.address,
                  (unsigned long long)u.epoch);
        reply(s, 451, "4.3.0", "<%s> mailbox unavailable", cmd->addr);
        return;
    }
    if (ss != STORE_OK) {
        reply(s, 451, "4.3.0", "<%s> temporary store failure", cmd->addr);
        return;
    }
    if (mb.state != STORE_MBOX_ACTIVE || mb.epoch != u.epoch) {
        reply_notlive(s, cmd->addr, &mb);
        return;
    }
    if (s->n_rcpts == s->cap_rcpts) {
        s->cap_rcpts = s->cap_rcpts ? s->cap_rcpts * 2 : 8;
        s->rcpts = xrealloc(s->rcpts, s->cap_rcpts * sizeof(*s->rcpts));
    }
    struct lmtp_rcpt *r = &s->rcpts[s->n_rcpts++];
    memset(r, 0, sizeof(*r));
    str_copy(r->addr, cmd->addr, sizeof(r->addr));
    str_copy(r->user, u.address, sizeof(r->user));
    r->epoch = u.epoch;
    reply(s, 250, "2.1.5", "<%s> recipient ok", cmd->addr);
}

static void schedule_commit(struct lmtp_session *s);

/* DATA is complete: refuse it whole for any framing flag, else queue it for
 * the group commit. */
static void data_end(struct lmtp_session *s, const struct smtp_in_event *ev)
{
    struct store_role *sr = s->sr;
    net_conn_rate_check(s->conn, false);
    int code = 0;
    const char *enh = NULL, *why = NULL;
    if (ev->too_big) {
        code = 552, enh = "5.3.4", why = "message exceeds the size limit";
    } else if (ev->nul) {
        code = 554, enh = "5.6.0", why = "message contains NUL bytes";
    } else if (ev->bare_lf || ev->bare_cr) {
        code = 554, enh = "5.6.0", why = "message contains a bare CR or LF";
    } else if (ev->line_too_long) {
        code = 554, enh = "5.6.0", why = "message has a line longer than 998 octets";
    }
    if (code != 0) {
        for (size_t i = 0; i < s->n_rcpts; i++)
            reply(s, code, enh, "<%s> %s", s->rcpts[i].addr, why);
        txn_reset(s);
        return;
    }
    /* RFC 5321 4.4: the final delivery adds Return-Path. */
    const struct buf *m = smtp_in_message(s->in);
    buf_reset(&s->msg);
    buf_printf(&s->msg, "Return-Path: <%s>\r\n", s->sender);
    buf_append(&s->msg, m->data, m->len);

    s->appends = xrealloc(s->appends, s->n_rcpts * sizeof(*s->appends));
    s->results = xrealloc(s->results, s->n_rcpts * sizeof(*s->results));
    s->n_items = 0;
    for (size_t i = 0; i < s->n_rcpts; i++) {
        struct lmtp_rcpt *r = &s->rcpts[i];
        size_t j;
        /* Two RCPTs (or an alias and its user) for one mailbox: one copy. */
        for (j = 0; j < i; j++)
            if (strcmp(s->rcpts[j].user, r->user) == 0)
                break;
        if (j < i) {
            r->item = s->rcpts[j].item;
            continue;
        }
        r->item = s->n_items++;
        struct store_append *a = &s->appends[r->item];
        memset(a, 0, sizeof(*a));
        memset(&s->results[r->item], 0, sizeof(s->results[r->item]));
        a->user = r->user;
        a->data = s->msg.data;
        a->len = s->msg.len;
        a->delivery_id = s->delivery_id[0] != '\0' ? s->delivery_id : NULL;
        a->require_live = true;
        a->epoch = r->epoch;
    }
    if (sr->batch == NULL)
        sr->batch = store_batch_begin(sr->st);
    for (size_t k = 0; k < s->n_items; k++)
        store_batch_add(sr->batch, &s->appends[k], &s->results[k]);
    schedule_commit(s);
}

static void cmd_data(struct lmtp_session *s)
{
    if (!s->in_mail) {
        reply(s, 503, "5.5.1", "need MAIL before DATA");
        client_error(s);
        return;
    }
    if (s->n_rcpts == 0) {
        reply(s, 503, "5.5.1", "no valid recipients");
        client_error(s);
        return;
    }
    reply(s, 354, NULL, "send the message, end with <CRLF>.<CRLF>");
    smtp_in_start_data(s->in);
    net_conn_rate_check(s->conn, true);
}

static void cmd_xstats(struct lmtp_session *s)
{
    struct store_role *sr = s->sr;
    char text[512];
    snprintf(text, sizeof(text),
             "sessions %llu\ndeliveries %llu\nduplicates %llu\ncommits %llu\nfsyncs %llu\nok",
             (unsigned long long)sr->n_sessions, (unsigned long long)sr->n_deliveries,
             (unsigned long long)sr->n_duplicates, (unsigned long long)sr->n_commits,
             (unsigned long long)util_fsync_count());
    buf_reset(&s->out);
    smtp_reply(&s->out, 250, NULL, text);
    net_conn_write(s->conn, s->out.data, s->out.len);
}

static void handle_line(struct lmtp_session *s, const char *line, size_t len)
{
    struct smtp_cmd cmd;
    struct smtp_error err;
    if (smtp_cmd_parse(line, len, &cmd, &err) < 0) {
        reply(s, err.code, err.enhanced, "%s", err.text);
        client_error(s);
        return;
    }
    switch (cmd.verb) {
    case SMTP_LHLO:
        cmd_lhlo(s, &cmd);
        break;
    case SMTP_HELO:
    case SMTP_EHLO:
        reply(s, 500, "5.5.1", "this is LMTP: use LHLO");
        client_error(s);
        break;
    case SMTP_MAIL:
        cmd_mail(s, &cmd);
        break;
    case SMTP_RCPT:
        cmd_rcpt(s, &cmd);
        break;
    case SMTP_DATA:
        cmd_data(s);
        break;
    case SMTP_RSET:
        txn_reset(s);
        reply(s, 250, "2.0.0", "reset");
        break;
    case SMTP_NOOP:
        reply(s, 250, "2.0.0", "ok");
        break;
    case SMTP_QUIT:
        reply(s, 221, "2.0.0", "bye");
        net_conn_close(s->conn);
        break;
    case SMTP_VRFY:
        reply(s, 252, "2.5.0", "cannot verify, but will accept and attempt delivery");
        break;
    case SMTP_HELP:
        reply(s, 214, "2.0.0", "see docs/lmtp.md; commands: LHLO MAIL RCPT DATA RSET NOOP QUIT");
        break;
    case SMTP_XSTATS:
        cmd_xstats(s);
        break;
    default:
        reply(s, 502, "5.5.1", "command not implemented");
        client_error(s);
        break;
    }
}

/* ---- group commit ----------------------------------------------------- */

static void session_free(struct lmtp_session *s)
{
    smtp_in_free(&s->in);
    buf_free(&s->out);
    buf_free(&s->msg);
    free(s->rcpts);
    free(s->appends);
    free(s->results);
    free(s);
}

static void schedule_commit(struct lmtp_session *s)
{
    struct store_role *sr = s->sr;
    s->pending = true;
    net_conn_pause(s->conn);
    s->next_pending = NULL;
    *sr->pending_tail = s;
    sr->pending_tail = &s->next_pending;
    net_task_schedule(sr->commit_task);
}

static void reply_results(struct lmtp_session *s)
{
    struct store_role *sr = s->sr;
    for (size_t i = 0; i < s->n_rcpts; i++) {
        const struct lmtp_rcpt *r = &s->rcpts[i];
        const struct store_append_result *res = &s->results[r->item];
        switch (res->status) {
        case STORE_OK:
            if (res->duplicate) {
                sr->n_duplicates++;
                reply(s, 250, "2.0.0", "<%s> already delivered (uid %u)", r->addr, res->uid);
            } else {
                sr->n_deliveries++;
                reply(s, 250, "2.0.0", "<%s> delivered (uid %u)", r->addr, res->uid);
            }
            break;
        case STORE_NOTLIVE:
            reply_notlive(s, r->addr, &res->mailbox);
            break;
        case STORE_NOTFOUND:
            reply(s, 451, "4.2.1", "<%s> move in progress", r->addr);
            break;
        default:
            reply(s, 451, "4.3.0", "<%s> temporary store failure", r->addr);
            break;
        }
    }
}

static void commit_cb(void *ctx)
{
    struct store_role *sr = ctx;
    struct store_batch *b = sr->batch;
    struct lmtp_session *list = sr->pending_head;
    sr->batch = NULL;
    sr->pending_head = NULL;
    sr->pending_tail = &sr->pending_head;
    if (b == NULL)
        return;
    const char *error = NULL;
    size_t n = store_batch_count(b);
    /* Durability point: store_batch_commit returns only after the bodies and
     * the metadata are on stable storage (see store.h). No reply before. */
    if (store_batch_commit(&b, &error) < 0)
        log_error(sr->name, "group commit of %zu deliveries failed: %s", n, error);
    sr->n_commits++;
    while (list != NULL) {
        struct lmtp_session *s = list;
        list = s->next_pending;
        s->pending = false;
        if (s->dead) {
            session_free(s);
            continue;
        }
        reply_results(s);
        txn_reset(s);
        net_conn_resume(s->conn);
    }
}

/* ---- connection callbacks -------------------------------------------- */

static void *on_accept(struct net_conn *c, void *ctx)
{
    struct store_role *sr = ctx;
    struct lmtp_session *s = xmalloc(sizeof(*s));
    struct smtp_limits lim = {.cmd_line_max = SMTP_CMD_LINE_MAX,
                              .text_line_max = SMTP_TEXT_LINE_MAX,
                              .msg_max = sr->cfg->lmtp.max_message_size};
    s->sr = sr;
    s->conn = c;
    s->in = smtp_in_new(&lim);
    snprintf(s->id, sizeof(s->id), "%s/L%llu", sr->name, (unsigned long long)++sr->next_session);
    buf_init(&s->out, 0);
    buf_init(&s->msg, 0);
    sr->n_sessions++;
    if (net_conn_siblings(c) > sr->cfg->lmtp.max_sessions) {
        reply(s, 421, "4.3.2", "too many connections, try again later");
        net_conn_close(c);
        return s;
    }
    reply(s, 220, NULL, "%s.tern LMTP ready", sr->name);
    return s;
}

static size_t on_data(struct net_conn *c, void *ctx, const char *p, size_t n)
{
    (void)c;
    struct lmtp_session *s = ctx;
    size_t used = 0;
    while (used < n) {
        struct smtp_in_event ev;
        size_t k = smtp_in_feed(s->in, p + used, n - used, &ev);
        used += k;
        switch (ev.type) {
        case SMTP_IN_NONE:
            return used;
        case SMTP_IN_LINE:
            handle_line(s, ev.line, ev.len);
            break;
        case SMTP_IN_TOO_LONG:
            reply(s, 500, "5.5.2", "line too long");
            client_error(s);
            break;
        case SMTP_IN_BARE_LF:
        case SMTP_IN_BARE_CR:
            reply(s, 500, "5.5.2", "bare CR or LF not allowed, use CRLF");
            client_error(s);
            break;
        case SMTP_IN_NUL:
            reply(s, 500, "5.5.2", "NUL byte not allowed");
            client_error(s);
            break;
        case SMTP_IN_DATA_END:
            data_end(s, &ev);
            break;
        }
        /* A pending commit or a close stops input here; net offers the
         * rest again after net_conn_resume(). */
        if (s->pending || s->errors >= LMTP_MAX_ERRORS)
            return used;
    }
    return used;
}

static void on_timeout(struct net_conn *c, void *ctx, const char *why)
{
    (void)c;
    struct lmtp_session *s = ctx;
    reply(s, 421, "4.4.2", "%s timeout, closing connection", why);
}

static void on_close(struct net_conn *c, void *ctx)
{
    (void)c;
    struct lmtp_session *s = ctx;
    if (s->pending) {
        /* The commit still references this session: it frees it. */
        s->dead = true;
        return;
    }
    session_free(s);
}

static void on_signal(void *ctx)
{
    struct store_role *sr = ctx;
    log_info(sr->name, "stopping");
    /* Finish what is in flight: it may already be promised to nobody, but a
     * commit in progress must not be torn. */
    commit_cb(sr);
    net_loop_stop(sr->loop);
}

int role_store_main(const struct config *cfg, const char *name)
{
    const struct config_store *cs = config_store(cfg, name);
    char ctx[64];
    snprintf(ctx, sizeof(ctx), "store:%s", name);
    log_init(ctx);
    if (cs == NULL)
        fatal("no store named '%s' in the configuration", name);

    char dir[PATH_MAX], lockpath[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s/stores/%s", cfg->data_dir, name);
    snprintf(lockpath, sizeof(lockpath), "%s/stores/%s/lock", cfg->data_dir, name);
    if (mkdir_p(dir, 0750) < 0)
        fatal("cannot create %s: %s", dir, strerror(errno));
    int lockfd;
    pid_t holder;
    int lr = lockfile_acquire(lockpath, &lockfd, &holder);
    if (lr == 1)
        fatal("store %s is already served by another process (pid %d)", name, (int)holder);
    if (lr < 0)
        fatal("cannot lock %s: %s", lockpath, strerror(errno));

    const char *error;
    struct store_role sr = {.cfg = cfg, .name = name};
    sr.pending_tail = &sr.pending_head;
    sr.st = store_open_fs(dir, name, &error);
    if (sr.st == NULL)
        fatal("cannot open store %s: %s", name, error);
    sr.dir = dir_open_sqlite(cfg->directory, &error);
    if (sr.dir == NULL)
        fatal("cannot open directory %s: %s", cfg->directory, error);

    sr.loop = net_loop_new();
    sr.commit_task = net_task_new(sr.loop, commit_cb, &sr);
    static const struct net_conn_handler h = {
        .on_accept = on_accept, .on_data = on_data, .on_timeout = on_timeout, .on_close = on_close};
    struct net_conn_limits limits = {.idle_ms = cfg->lmtp.idle_timeout * 1000u,
                                     .deadline_ms = cfg->lmtp.session_deadline * 1000u,
                                     .min_rate = cfg->lmtp.min_data_rate};
    struct net_listener *l = net_listen(sr.loop, cs->lmtp, &h, &sr, &limits, &error);
    if (l == NULL)
        fatal("cannot listen on %s: %s", cs->lmtp, error);
    net_loop_on_signal(sr.loop, SIGTERM, on_signal, &sr);
    net_loop_on_signal(sr.loop, SIGINT, on_signal, &sr);
    log_info(sr.name, "LMTP listening on %s", cs->lmtp);

    net_loop_run(sr.loop);

    net_listener_free(&l);
    net_task_free(&sr.commit_task);
    net_loop_free(&sr.loop);
    store_close(&sr.st);
    dir_close(&sr.dir);
    close(lockfd);
    return 0;
}
