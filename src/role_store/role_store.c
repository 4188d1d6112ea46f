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
#include "smtpd/smtpd.h"
#include "store/store.h"
#include "syncd/syncd.h"
#include "util/util.h"

struct lmtp_rcpt {
    char addr[MAIL_ADDR_MAX + 1]; /* as given (normalized) */
    char user[MAIL_ADDR_MAX + 1]; /* the mailbox it resolved to */
    uint64_t epoch;
    size_t item; /* index into the session's appends (shared by duplicates) */
};

/* The store's side of one LMTP session (smtpd owns the dialogue). */
struct lmtp_session {
    struct store_role *sr;
    struct smtpd_session *s;
    char delivery_id[STORE_DELIVERY_ID_MAX + 1];
    struct lmtp_rcpt *rcpts;
    size_t n_rcpts, cap_rcpts;
    /* A pending commit: */
    struct buf msg;
    struct store_append *appends;
    struct store_append_result *results;
    size_t n_items;
    struct lmtp_session *next_pending;
};

struct store_role {
    const struct config *cfg;
    const char *name;
    char hostname[MAIL_NAME_MAX + 8];
    struct store *st;
    struct directory *dir;
    struct net_loop *loop;
    struct net_task *commit_task;
    struct syncd *sd; /* TSYNC/1, or NULL: told of each commit (WAIT) */
    struct store_batch *batch;
    struct lmtp_session *pending_head, **pending_tail;
    uint64_t n_sessions, n_deliveries, n_duplicates, n_commits;
};

/* The hint of brief invariant 3, from the mailbox's state here. */
static void hint_notlive(struct smtpd_reply *r, const char *addr, const struct store_mailbox *mb)
{
    if (mb->state == STORE_MBOX_MOVED)
        smtpd_reply_set(r, 451, "4.2.1", "<%s> moved to %s epoch %llu", addr, mb->moved_to,
                        (unsigned long long)mb->epoch);
    else
        smtpd_reply_set(r, 451, "4.2.1", "<%s> move in progress", addr);
}

/* ---- hooks ------------------------------------------------------------ */

static void *hook_session_new(void *server_ctx, struct smtpd_session *s)
{
    struct store_role *sr = server_ctx;
    struct lmtp_session *ls = xmalloc(sizeof(*ls));
    ls->sr = sr;
    ls->s = s;
    buf_init(&ls->msg, 0);
    sr->n_sessions++;
    return ls;
}

static void hook_session_free(void *ctx)
{
    struct lmtp_session *ls = ctx;
    buf_free(&ls->msg);
    free(ls->rcpts);
    free(ls->appends);
    free(ls->results);
    free(ls);
}

static void hook_reset(void *ctx)
{
    struct lmtp_session *ls = ctx;
    ls->delivery_id[0] = '\0';
    ls->n_rcpts = 0;
}

static bool delivery_id_valid(const char *v)
{
    size_t n = strlen(v);
    if (n == 0 || n > STORE_DELIVERY_ID_MAX)
        return false;
    return strspn(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

static int hook_mail(void *ctx, const struct smtp_cmd *cmd, struct smtpd_reply *r)
{
    struct lmtp_session *ls = ctx;
    const struct smtp_param *p = smtp_cmd_param(cmd, "XDELIVERYID");
    ls->delivery_id[0] = '\0';
    ls->n_rcpts = 0;
    if (p != NULL) {
        if (!p->has_value || !delivery_id_valid(p->value)) {
            smtpd_reply_set(r, 501, "5.5.4", "XDELIVERYID must be 1-64 of [A-Za-z0-9._-]");
            return -1;
        }
        str_copy(ls->delivery_id, p->value, sizeof(ls->delivery_id));
    }
    return 0;
}

static int hook_rcpt(void *ctx, const struct smtp_cmd *cmd, struct smtpd_reply *r)
{
    struct lmtp_session *ls = ctx;
    struct store_role *sr = ls->sr;
    const char *id = smtpd_session_id(ls->s);
    struct dir_user u;
    enum dir_status ds = dir_resolve(sr->dir, cmd->addr, &u);
    if (ds == DIR_NOTFOUND || ds == DIR_INVALID) {
        smtpd_reply_set(r, 550, "5.1.1", "<%s> user unknown", cmd->addr);
        return -1;
    }
    if (ds != DIR_OK) {
        log_warn(id, "directory lookup of <%s>: %s", cmd->addr, dir_status_str(ds));
        smtpd_reply_set(r, 451, "4.4.3", "<%s> directory unavailable, try again later", cmd->addr);
        return -1;
    }
    if (strcmp(u.home, sr->name) != 0) {
        smtpd_reply_set(r, 451, "4.2.1", "<%s> moved to %s epoch %llu", cmd->addr, u.home,
                        (unsigned long long)u.epoch);
        return -1;
    }
    struct store_mailbox mb;
    enum store_status ss = store_mailbox_get(sr->st, u.address, &mb);
    if (ss == STORE_NOTFOUND && u.epoch == 1) {
        ss = store_mailbox_create(sr->st, u.address, STORE_MBOX_ACTIVE, u.epoch);
        if (ss == STORE_OK || ss == STORE_EXISTS) {
            log_info(id, "created mailbox of %s at epoch 1", u.address);
            ss = store_mailbox_get(sr->st, u.address, &mb);
        }
    }
    if (ss == STORE_NOTFOUND) {
        log_error(id, "directory homes %s here at epoch %llu but there is no mailbox", u.address,
                  (unsigned long long)u.epoch);
        smtpd_reply_set(r, 451, "4.3.0", "<%s> mailbox unavailable", cmd->addr);
        return -1;
    }
    if (ss != STORE_OK) {
        smtpd_reply_set(r, 451, "4.3.0", "<%s> temporary store failure", cmd->addr);
        return -1;
    }
    if (mb.state != STORE_MBOX_ACTIVE || mb.epoch != u.epoch) {
        hint_notlive(r, cmd->addr, &mb);
        return -1;
    }
    if (ls->n_rcpts == ls->cap_rcpts) {
        ls->cap_rcpts = ls->cap_rcpts ? ls->cap_rcpts * 2 : 8;
        ls->rcpts = xrealloc(ls->rcpts, ls->cap_rcpts * sizeof(*ls->rcpts));
    }
    struct lmtp_rcpt *rc = &ls->rcpts[ls->n_rcpts++];
    memset(rc, 0, sizeof(*rc));
    str_copy(rc->addr, cmd->addr, sizeof(rc->addr));
    str_copy(rc->user, u.address, sizeof(rc->user));
    rc->epoch = u.epoch;
    smtpd_reply_set(r, 250, "2.1.5", "<%s> recipient ok", cmd->addr);
    return 0;
}

/* A clean message: queue its appends for the group commit. */
static void hook_data(void *ctx, const struct buf *m)
{
    struct lmtp_session *ls = ctx;
    struct store_role *sr = ls->sr;
    /* RFC 5321 4.4: the final delivery adds Return-Path. */
    buf_reset(&ls->msg);
    buf_printf(&ls->msg, "Return-Path: <%s>\r\n", smtpd_session_sender(ls->s));
    buf_append(&ls->msg, m->data, m->len);

    ls->appends = xrealloc(ls->appends, ls->n_rcpts * sizeof(*ls->appends));
    ls->results = xrealloc(ls->results, ls->n_rcpts * sizeof(*ls->results));
    ls->n_items = 0;
    for (size_t i = 0; i < ls->n_rcpts; i++) {
        struct lmtp_rcpt *rc = &ls->rcpts[i];
        size_t j;
        /* Two RCPTs (or an alias and its user) for one mailbox: one copy. */
        for (j = 0; j < i; j++)
            if (strcmp(ls->rcpts[j].user, rc->user) == 0)
                break;
        if (j < i) {
            rc->item = ls->rcpts[j].item;
            continue;
        }
        rc->item = ls->n_items++;
        struct store_append *a = &ls->appends[rc->item];
        memset(a, 0, sizeof(*a));
        memset(&ls->results[rc->item], 0, sizeof(ls->results[rc->item]));
        a->user = rc->user;
        a->data = ls->msg.data;
        a->len = ls->msg.len;
        a->delivery_id = ls->delivery_id[0] != '\0' ? ls->delivery_id : NULL;
        a->require_live = true;
        a->epoch = rc->epoch;
    }
    if (sr->batch == NULL)
        sr->batch = store_batch_begin(sr->st);
    for (size_t k = 0; k < ls->n_items; k++)
        store_batch_add(sr->batch, &ls->appends[k], &ls->results[k]);
    ls->next_pending = NULL;
    *sr->pending_tail = ls;
    sr->pending_tail = &ls->next_pending;
    net_task_schedule(sr->commit_task);
}

static int hook_command(void *ctx, const struct smtp_cmd *cmd, struct smtpd_session *s)
{
    struct lmtp_session *ls = ctx;
    struct store_role *sr = ls->sr;
    if (cmd->verb != SMTP_XSTATS)
        return -1;
    struct smtpd_reply r;
    smtpd_reply_set(&r, 250, NULL,
                    "sessions %llu\ndeliveries %llu\nduplicates %llu\ncommits %llu\nfsyncs "
                    "%llu\nok",
                    (unsigned long long)sr->n_sessions, (unsigned long long)sr->n_deliveries,
                    (unsigned long long)sr->n_duplicates, (unsigned long long)sr->n_commits,
                    (unsigned long long)util_fsync_count());
    smtpd_send(s, &r);
    return 0;
}

/* ---- group commit ----------------------------------------------------- */

static void reply_results(struct lmtp_session *ls)
{
    struct store_role *sr = ls->sr;
    struct smtpd_reply *replies = xcalloc(ls->n_rcpts, sizeof(*replies));
    for (size_t i = 0; i < ls->n_rcpts; i++) {
        const struct lmtp_rcpt *rc = &ls->rcpts[i];
        const struct store_append_result *res = &ls->results[rc->item];
        struct smtpd_reply *r = &replies[i];
        switch (res->status) {
        case STORE_OK:
            if (res->duplicate) {
                sr->n_duplicates++;
                smtpd_reply_set(r, 250, "2.0.0", "<%s> already delivered (uid %u)", rc->addr,
                                res->uid);
            } else {
                sr->n_deliveries++;
                smtpd_reply_set(r, 250, "2.0.0", "<%s> delivered (uid %u)", rc->addr, res->uid);
            }
            break;
        case STORE_NOTLIVE:
            hint_notlive(r, rc->addr, &res->mailbox);
            break;
        case STORE_NOTFOUND:
            smtpd_reply_set(r, 451, "4.2.1", "<%s> move in progress", rc->addr);
            break;
        default:
            smtpd_reply_set(r, 451, "4.3.0", "<%s> temporary store failure", rc->addr);
            break;
        }
    }
    /* May free ls (a client that left): nothing of ls is used after. */
    smtpd_data_done(ls->s, replies, ls->n_rcpts);
    free(replies);
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
        struct lmtp_session *ls = list;
        list = ls->next_pending;
        /* IMAP sessions idling on these mailboxes hear of it now. */
        for (size_t k = 0; k < ls->n_items; k++)
            syncd_changed(sr->sd, ls->appends[k].user);
        reply_results(ls);
    }
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
    snprintf(sr.hostname, sizeof(sr.hostname), "%s.tern", name);
    static const char *const extensions[] = {"XDELIVERYID", NULL};
    static const char *const params[] = {"XDELIVERYID", NULL};
    struct smtpd_config scfg = {.dialect = SMTPD_LMTP,
                                .name = name,
                                .hostname = sr.hostname,
                                .max_message_size = cfg->lmtp.max_message_size,
                                .max_recipients = cfg->lmtp.max_recipients,
                                .max_sessions = cfg->lmtp.max_sessions,
                                .extensions = extensions,
                                .mail_params = params};
    static const struct smtpd_hooks hooks = {.session_new = hook_session_new,
                                             .mail = hook_mail,
                                             .rcpt = hook_rcpt,
                                             .data = hook_data,
                                             .reset = hook_reset,
                                             .command = hook_command,
                                             .session_free = hook_session_free};
    struct net_conn_limits limits = {.idle_ms = cfg->lmtp.idle_timeout * 1000u,
                                     .deadline_ms = cfg->lmtp.session_deadline * 1000u,
                                     .min_rate = cfg->lmtp.min_data_rate};
    struct smtpd *d = smtpd_listen(sr.loop, cs->lmtp, &scfg, &hooks, &sr, &limits, &error);
    if (d == NULL)
        fatal("cannot listen on %s: %s", cs->lmtp, error);
    /* TSYNC/1 for the mover (docs/sync.md), on the same loop and store. */
    struct syncd *sd = NULL;
    if (cs->sync[0] != '\0') {
        struct net_conn_limits sl = {.idle_ms = 600 * 1000u, .deadline_ms = 0, .min_rate = 0};
        sd = syncd_listen(sr.loop, cs->sync, sr.st, name, &sl, &error);
        if (sd == NULL)
            fatal("cannot listen on %s for sync: %s", cs->sync, error);
        log_info(sr.name, "sync listening on %s", cs->sync);
    }
    sr.sd = sd;
    net_loop_on_signal(sr.loop, SIGTERM, on_signal, &sr);
    net_loop_on_signal(sr.loop, SIGINT, on_signal, &sr);
    log_info(sr.name, "LMTP listening on %s", cs->lmtp);

    net_loop_run(sr.loop);

    smtpd_free(&d);
    sr.sd = NULL;
    syncd_free(&sd);
    net_task_free(&sr.commit_task);
    net_loop_free(&sr.loop);
    store_close(&sr.st);
    dir_close(&sr.dir);
    close(lockfd);
    return 0;
}
