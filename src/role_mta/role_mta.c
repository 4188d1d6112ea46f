/*
 * role_mta — SMTP accept with group commit into the queue, and delivery
 * workers. See role_mta.h for the rules, docs/mta.md for the operator's view.
 *
 * Threads. The main thread runs the libevent loop: SMTP sessions (smtpd)
 * and the queue inserts. A scheduler thread finds due recipients in the
 * queue (at least once a second, so `tern queue flush` takes effect) and
 * feeds a FIFO of message ids; `workers` delivery threads take ids from it,
 * one message at a time each, so no message is worked on twice at once.
 * Every thread has its own queue handle (SQLite serializes writers); the
 * router is shared and locks itself.
 */
#include "role_mta/role_mta.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dsn/dsn.h"
#include "lmtpc/lmtpc.h"
#include "net/net.h"
#include "queue/queue.h"
#include "router/router.h"
#include "smtpd/smtpd.h"
#include "util/util.h"

#define READY_MAX     4096 /* ids waiting for a worker */
#define DUE_BATCH     256  /* ids the scheduler takes per scan */
#define PARK_SLOTS    1024 /* in-memory park counters (lost on restart: fine) */
#define POOL_MAX      16   /* LMTP connections a worker keeps, one per store */
#define REDIRECTS_MAX 4    /* "moved to" answers followed within one attempt */

struct mta_session;

struct mta {
    const struct config *cfg;
    char queue_dir[PATH_MAX];
    struct queue *q; /* main thread: inserts */
    struct router *router;
    struct net_loop *loop;
    struct net_task *commit_task;
    struct smtpd *smtpd;
    struct mta_session *pending_head, **pending_tail;

    pthread_mutex_t lock; /* everything below */
    pthread_cond_t work;  /* ready has ids, or stopping */
    pthread_cond_t tick;  /* wakes the scheduler */
    char (*ready)[QUEUE_ID_LEN + 1];
    size_t ready_head, ready_n;
    char (*busy)[QUEUE_ID_LEN + 1]; /* one slot per worker: id in flight */
    bool stopping;
    struct {
        char key[QUEUE_ID_LEN + 12];
        unsigned count;
    } park[PARK_SLOTS];
    _Atomic uint64_t n_accepted, n_delivered, n_failed, n_dsn;
};

/* ---- the ready FIFO (lock held) ---------------------------------------- */

static bool known_locked(struct mta *m, const char *id)
{
    for (size_t i = 0; i < m->ready_n; i++)
        if (strcmp(m->ready[(m->ready_head + i) % READY_MAX], id) == 0)
            return true;
    for (unsigned w = 0; w < m->cfg->queue.workers; w++)
        if (strcmp(m->busy[w], id) == 0)
            return true;
    return false;
}

static void push_locked(struct mta *m, const char *id)
{
    if (m->ready_n == READY_MAX || known_locked(m, id))
        return; /* full: the scheduler finds it again later */
    str_copy(m->ready[(m->ready_head + m->ready_n) % READY_MAX], id, QUEUE_ID_LEN + 1);
    m->ready_n++;
    pthread_cond_signal(&m->work);
}

static void push(struct mta *m, const char *id)
{
    pthread_mutex_lock(&m->lock);
    push_locked(m, id);
    pthread_mutex_unlock(&m->lock);
}

static unsigned park_next(struct mta *m, const char *id, unsigned idx)
{
    char key[QUEUE_ID_LEN + 12];
    snprintf(key, sizeof(key), "%s:%u", id, idx);
    uint32_t h = 2166136261u;
    for (const char *p = key; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    pthread_mutex_lock(&m->lock);
    unsigned slot = h % PARK_SLOTS, n;
    if (strcmp(m->park[slot].key, key) != 0) {
        str_copy(m->park[slot].key, key, sizeof(m->park[slot].key));
        m->park[slot].count = 0;
    }
    n = m->park[slot].count++;
    pthread_mutex_unlock(&m->lock);
    return n;
}

/* ---- SMTP accept --------------------------------------------------------- */

struct mta_session {
    struct mta *m;
    struct smtpd_session *s;
    struct queue_new_rcpt *rcpts;
    char (*addrs)[MAIL_ADDR_MAX + 1]; /* targets */
    char (*origs)[MAIL_ADDR_MAX + 1]; /* as given in RCPT */
    size_t n, cap;
    struct buf msg;
    struct queue_new qn;
    struct mta_session *next_pending;
};

static void *hook_session_new(void *server_ctx, struct smtpd_session *s)
{
    struct mta_session *ms = xmalloc(sizeof(*ms));
    ms->m = server_ctx;
    ms->s = s;
    buf_init(&ms->msg, 0);
    return ms;
}

static void hook_session_free(void *ctx)
{
    struct mta_session *ms = ctx;
    buf_free(&ms->msg);
    free(ms->rcpts);
    free(ms->addrs);
    free(ms->origs);
    free(ms);
}

static void hook_reset(void *ctx)
{
    struct mta_session *ms = ctx;
    ms->n = 0;
}

static void add_target(struct mta_session *ms, const char *addr, const char *orig,
                       enum router_kind kind)
{
    for (size_t i = 0; i < ms->n; i++)
        if (strcmp(ms->addrs[i], addr) == 0)
            return; /* the same user twice after expansion: delivered once */
    if (ms->n == ms->cap) {
        ms->cap = ms->cap ? ms->cap * 2 : 8;
        ms->rcpts = xrealloc(ms->rcpts, ms->cap * sizeof(*ms->rcpts));
        ms->addrs = xrealloc(ms->addrs, ms->cap * sizeof(*ms->addrs));
        ms->origs = xrealloc(ms->origs, ms->cap * sizeof(*ms->origs));
    }
    str_copy(ms->addrs[ms->n], addr, sizeof(ms->addrs[0]));
    str_copy(ms->origs[ms->n], orig, sizeof(ms->origs[0]));
    ms->rcpts[ms->n].kind = kind == ROUTER_ALTERNATE ? QUEUE_RCPT_ALTERNATE : QUEUE_RCPT_PRIMARY;
    ms->n++;
}

static int hook_rcpt(void *ctx, const struct smtp_cmd *cmd, struct smtpd_reply *r)
{
    struct mta_session *ms = ctx;
    struct router_target t[2];
    size_t n;
    switch (router_expand(ms->m->router, cmd->addr, t, &n)) {
    case ROUTER_NOTLOCAL:
        smtpd_reply_set(r, 550, "5.7.1", "<%s> relaying denied", cmd->addr);
        return -1;
    case ROUTER_UNKNOWN:
        smtpd_reply_set(r, 550, "5.1.1", "<%s> user unknown", cmd->addr);
        return -1;
    case ROUTER_TEMPFAIL:
        smtpd_reply_set(r, 451, "4.4.3", "<%s> directory unavailable, try again later", cmd->addr);
        return -1;
    case ROUTER_OK:
        break;
    }
    for (size_t i = 0; i < n; i++)
        add_target(ms, t[i].addr, cmd->addr, t[i].kind);
    smtpd_reply_set(r, 250, "2.1.5", "<%s> recipient ok", cmd->addr);
    return 0;
}

/* "Sat, 21 Nov 2026 06:00:00 +0000" */
static void rfc5322_date(int64_t secs, char *out, size_t outlen)
{
    time_t t = (time_t)secs;
    struct tm tm;
    gmtime_r(&t, &tm);
    static const char *days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *mons[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                 "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    snprintf(out, outlen, "%s, %02d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday], tm.tm_mday,
             mons[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

static void hook_data(void *ctx, const struct buf *msg)
{
    struct mta_session *ms = ctx;
    struct mta *m = ms->m;
    char date[64];
    int64_t now = time_now_ms();
    rfc5322_date(now / 1000, date, sizeof(date));
    buf_reset(&ms->msg);
    /* RFC 5321 4.4: every relay adds a Received: line at the top. The HELO
     * text is the client's; smtp_cmd_parse already refused control bytes. */
    buf_printf(&ms->msg, "Received: from %s (%s)\r\n\tby %s (tern) with %s;\r\n\t%s\r\n",
               smtpd_session_helo(ms->s), smtpd_session_peer(ms->s), m->cfg->hostname,
               smtpd_session_esmtp(ms->s) ? "ESMTP" : "SMTP", date);
    buf_append(&ms->msg, msg->data, msg->len);
    for (size_t i = 0; i < ms->n; i++) {
        ms->rcpts[i].addr = ms->addrs[i];
        ms->rcpts[i].orig = ms->origs[i];
    }
    memset(&ms->qn, 0, sizeof(ms->qn));
    ms->qn.sender = smtpd_session_sender(ms->s);
    ms->qn.body = ms->msg.data;
    ms->qn.len = ms->msg.len;
    ms->qn.rcpts = ms->rcpts;
    ms->qn.n_rcpts = ms->n;
    ms->qn.expires = now + (int64_t)m->cfg->queue.lifetime * 1000;
    ms->next_pending = NULL;
    *m->pending_tail = ms;
    m->pending_tail = &ms->next_pending;
    net_task_schedule(m->commit_task);
}

/* The group commit of accepted messages: one durable queue transaction for
 * everything completed in this loop iteration, then the 250s. */
static void commit_cb(void *ctx)
{
    struct mta *m = ctx;
    struct mta_session *list = m->pending_head;
    m->pending_head = NULL;
    m->pending_tail = &m->pending_head;
    size_t n = 0;
    for (struct mta_session *ms = list; ms != NULL; ms = ms->next_pending)
        n++;
    if (n == 0)
        return;
    struct queue_new *batch = xcalloc(n, sizeof(*batch));
    size_t i = 0;
    for (struct mta_session *ms = list; ms != NULL; ms = ms->next_pending)
        batch[i++] = ms->qn;
    const char *error = NULL;
    /* Durability point of the SMTP 250 (queue.h invariant 1). */
    int r = queue_insert(m->q, batch, n, &error);
    if (r < 0)
        log_error("mta", "queue insert of %zu messages failed: %s", n, error);
    i = 0;
    while (list != NULL) {
        struct mta_session *ms = list;
        list = ms->next_pending;
        struct smtpd_reply rep;
        if (r == 0) {
            smtpd_reply_set(&rep, 250, "2.0.0", "Ok: queued as %s", batch[i].id_r);
            log_info(smtpd_session_id(ms->s), "queued %s from <%s> for %zu recipient(s)",
                     batch[i].id_r, batch[i].sender, batch[i].n_rcpts);
            push(m, batch[i].id_r);
            m->n_accepted++;
        } else {
            smtpd_reply_set(&rep, 451, "4.3.0", "temporary queue failure, try again later");
        }
        i++;
        smtpd_data_done(ms->s, &rep, 1); /* may free ms */
    }
    free(batch);
}

/* ---- delivery ----------------------------------------------------------- */

struct pool_conn {
    char store[MAIL_NAME_MAX + 1];
    char lmtp[DIR_ENDPOINT_MAX + 1];
    struct lmtpc *c;
};

struct worker {
    struct mta *m;
    unsigned index;
    struct queue *q;
    struct pool_conn pool[POOL_MAX];
    pthread_t thread;
};

/* What happened to one recipient in this attempt. */
enum outcome { OUT_NONE = 0, OUT_DELIVERED, OUT_TEMP, OUT_PARK, OUT_FAIL, OUT_RETRY_NOW };

struct attempt {
    const struct queue_rcpt *r;
    enum outcome out;
    struct router_home home;
    char reply[LMTPC_REPLY_MAX + 128]; /* the queue keeps QUEUE_REPLY_MAX of it */
};

static struct pool_conn *pool_get(struct worker *w, const struct router_home *h, char *err,
                                  size_t errlen, bool *fresh_r)
{
    struct pool_conn *free_slot = NULL;
    *fresh_r = false;
    for (unsigned i = 0; i < POOL_MAX; i++) {
        struct pool_conn *p = &w->pool[i];
        if (p->c != NULL && strcmp(p->store, h->store) == 0 && strcmp(p->lmtp, h->lmtp) == 0)
            return p;
        if (p->c == NULL && free_slot == NULL)
            free_slot = p;
    }
    if (free_slot == NULL) {
        free_slot = &w->pool[0];
        lmtpc_close(&free_slot->c);
    }
    free_slot->c = lmtpc_connect(h->lmtp, w->m->cfg->queue.lmtp_timeout * 1000u,
                                 w->m->cfg->hostname, err, errlen);
    if (free_slot->c == NULL)
        return NULL;
    str_copy(free_slot->store, h->store, sizeof(free_slot->store));
    str_copy(free_slot->lmtp, h->lmtp, sizeof(free_slot->lmtp));
    *fresh_r = true;
    return free_slot;
}

static void classify(struct worker *w, struct attempt *a, const struct lmtpc_reply *rep)
{
    snprintf(a->reply, sizeof(a->reply), "%d %s", rep->code, rep->text);
    if (rep->code >= 200 && rep->code < 300) {
        a->out = OUT_DELIVERED;
        return;
    }
    if (rep->code >= 500) {
        a->out = OUT_FAIL;
        return;
    }
    char store[MAIL_NAME_MAX + 1];
    uint64_t epoch;
    int hint = lmtpc_hint(rep->text, store, &epoch);
    if (hint == 1) {
        /* The store says the user lives elsewhere: believe the directory,
         * now, not the cache (Q172364). */
        struct router_home fresh;
        enum router_status st = router_redirect(w->m->router, a->r->addr, &fresh);
        if (st == ROUTER_OK && strcmp(fresh.store, a->home.store) != 0) {
            log_info("mta", "%s moved from %s to %s (epoch %llu): retrying now", a->r->addr,
                     a->home.store, fresh.store, (unsigned long long)fresh.epoch);
            a->home = fresh;
            a->out = OUT_RETRY_NOW;
            return;
        }
        /* Directory and store disagree for a moment (a switch in flight). */
        a->out = OUT_PARK;
        return;
    }
    a->out = hint == 2 ? OUT_PARK : OUT_TEMP;
}

/* Delivers the attempts that go to one store in one LMTP transaction. */
static void deliver_group(struct worker *w, const struct queue_msg *msg, struct attempt **g,
                          size_t n)
{
    const struct router_home *h = &g[0]->home;
    char err[256];
    for (int tries = 0; tries < 2; tries++) {
        bool fresh;
        struct pool_conn *p = pool_get(w, h, err, sizeof(err), &fresh);
        if (p == NULL) {
            for (size_t i = 0; i < n; i++) {
                g[i]->out = OUT_TEMP;
                snprintf(g[i]->reply, sizeof(g[i]->reply), "store %s unreachable: %s", h->store,
                         err);
            }
            return;
        }
        const char **addrs = xcalloc(n, sizeof(*addrs));
        struct lmtpc_reply *reps = xcalloc(n, sizeof(*reps));
        for (size_t i = 0; i < n; i++)
            addrs[i] = g[i]->r->addr;
        int r = lmtpc_deliver(p->c, msg->sender, msg->id, addrs, n, msg->body.data, msg->body.len,
                              reps);
        bool any = false;
        for (size_t i = 0; i < n; i++)
            any |= reps[i].code != 0;
        if (r < 0) {
            lmtpc_close(&p->c);
            if (!fresh && !any) {
                /* A pooled connection the store had closed: once more. */
                free(addrs);
                free(reps);
                continue;
            }
        }
        for (size_t i = 0; i < n; i++) {
            if (reps[i].code == 0) {
                g[i]->out = OUT_TEMP;
                snprintf(g[i]->reply, sizeof(g[i]->reply), "connection to store %s lost", h->store);
            } else {
                classify(w, g[i], &reps[i]);
            }
        }
        free(addrs);
        free(reps);
        return;
    }
}

/* "550 5.1.1 <a> user unknown" → "5.1.1"; else a class default. */
static void status_of(const char *reply, bool permanent, char out[16])
{
    int a, b, c, n = 0;
    if (sscanf(reply, "%*d %d.%d.%d%n", &a, &b, &c, &n) == 3 && n > 0 && (a == 4 || a == 5))
        snprintf(out, 16, "%d.%d.%d", permanent ? 5 : a, b, c);
    else
        str_copy(out, permanent ? "5.0.0" : "4.0.0", 16);
}

static void deliver_message(struct worker *w, const char *id)
{
    struct mta *m = w->m;
    const struct config *cfg = m->cfg;
    struct queue_msg msg;
    memset(&msg, 0, sizeof(msg));
    enum queue_status qs = queue_load(w->q, id, &msg);
    if (qs == QUEUE_NOTFOUND)
        return;
    if (qs == QUEUE_DAMAGED) {
        queue_quarantine(w->q, id, "self-validation failed (body hash or recipient count)");
        return;
    }
    if (qs != QUEUE_OK) {
        sleep(1); /* the database is in trouble: do not spin */
        return;
    }
    int64_t now = time_now_ms();
    struct attempt *att = xcalloc(msg.n_rcpts, sizeof(*att));
    size_t n_att = 0;
    for (size_t i = 0; i < msg.n_rcpts; i++) {
        const struct queue_rcpt *r = &msg.rcpts[i];
        if (r->state != QUEUE_PENDING || r->next_try > now)
            continue;
        struct attempt *a = &att[n_att++];
        a->r = r;
        switch (router_home(m->router, r->addr, &a->home)) {
        case ROUTER_OK:
            a->out = OUT_RETRY_NOW;
            break;
        case ROUTER_UNKNOWN:
        case ROUTER_NOTLOCAL:
            /* A cached "unknown" never bounces mail: ask the directory. */
            {
                enum router_status fresh = router_redirect(m->router, r->addr, &a->home);
                if (fresh == ROUTER_OK) {
                    a->out = OUT_RETRY_NOW;
                    break;
                }
                if (fresh == ROUTER_TEMPFAIL) {
                    a->out = OUT_TEMP;
                    snprintf(a->reply, sizeof(a->reply), "451 4.4.3 directory unavailable");
                    break;
                }
            }
            a->out = OUT_FAIL;
            snprintf(a->reply, sizeof(a->reply), "550 5.1.1 <%s> user unknown", r->addr);
            break;
        case ROUTER_TEMPFAIL:
            a->out = OUT_TEMP;
            snprintf(a->reply, sizeof(a->reply), "451 4.4.3 directory unavailable");
            break;
        }
    }
    if (n_att == 0) { /* nothing due (another worker was quicker) */
        free(att);
        queue_msg_clear(&msg);
        return;
    }
    /* Rounds: all OUT_RETRY_NOW attempts, grouped by store; a redirect puts
     * an attempt back into the next round at its new home. */
    struct attempt **group = xcalloc(n_att + 1, sizeof(*group));
    for (int round = 0; round <= REDIRECTS_MAX; round++) {
        bool again = false;
        for (size_t i = 0; i < n_att; i++) {
            if (att[i].out != OUT_RETRY_NOW)
                continue;
            size_t k = 0;
            for (size_t j = i; j < n_att; j++)
                if (att[j].out == OUT_RETRY_NOW &&
                    strcmp(att[j].home.store, att[i].home.store) == 0)
                    group[k++] = &att[j];
            for (size_t j = 0; j < k; j++)
                group[j]->out = OUT_NONE;
            deliver_group(w, &msg, group, k);
            for (size_t j = 0; j < k; j++)
                again |= group[j]->out == OUT_RETRY_NOW;
        }
        if (!again)
            break;
    }
    free(group);

    /* Turn outcomes into durable state, and one DSN for the failures. */
    struct queue_update *ups = xcalloc(n_att + 1, sizeof(*ups));
    struct dsn_rcpt *dr = xcalloc(n_att + 1, sizeof(*dr));
    char(*status)[16] = xcalloc(n_att + 1, sizeof(*status));
    size_t n_dr = 0;
    for (size_t i = 0; i < n_att; i++) {
        struct attempt *a = &att[i];
        struct queue_update *u = &ups[i];
        u->idx = a->r->idx;
        /* A "move in progress" park is not a failed attempt: counting it
         * would stretch the next real retry (retry_min << attempts) by the
         * number of parks a move caused. */
        u->attempts = a->r->attempts + 1;
        u->reply = a->reply;
        u->state = QUEUE_PENDING;
        if (a->out == OUT_RETRY_NOW) /* redirects exhausted */
            a->out = OUT_PARK;
        if (a->out == OUT_DELIVERED) {
            u->state = QUEUE_DELIVERED;
            m->n_delivered++;
        } else if ((a->out == OUT_TEMP || a->out == OUT_PARK) && now >= msg.expires) {
            /* The lifetime is over: give up (RFC 3463 4.4.7). */
            char last[QUEUE_REPLY_MAX + 1]; /* the tail is dropped: keep it short */
            str_copy(last, a->reply, sizeof(last));
            snprintf(a->reply, sizeof(a->reply), "delivery time expired; last reply: %s", last);
            u->state = QUEUE_FAILED;
            str_copy(status[i], "4.4.7", sizeof(status[i]));
        } else if (a->out == OUT_PARK) {
            u->attempts = a->r->attempts;
            unsigned k = park_next(m, msg.id, a->r->idx);
            uint64_t d = (uint64_t)cfg->queue.park_min_ms << (k < 16 ? k : 16);
            if (d > cfg->queue.park_max_ms)
                d = cfg->queue.park_max_ms;
            u->parked = true;
            u->next_try = now + (int64_t)d;
        } else if (a->out == OUT_TEMP) {
            unsigned k = a->r->attempts < 20 ? a->r->attempts : 20;
            uint64_t d = (uint64_t)cfg->queue.retry_min * 1000 << k;
            if (d > (uint64_t)cfg->queue.retry_max * 1000)
                d = (uint64_t)cfg->queue.retry_max * 1000;
            u->next_try = now + (int64_t)d;
            if (u->next_try > msg.expires)
                u->next_try = msg.expires; /* one last try at the end of the lifetime */
        } else {
            u->state = QUEUE_FAILED;
            status_of(a->reply, true, status[i]);
        }
        if (u->state == QUEUE_FAILED) {
            m->n_failed++;
            log_warn("mta", "%s: delivery to <%s> failed: %s", msg.id, a->r->addr, a->reply);
            if (msg.sender[0] == '\0' || msg.is_dsn) {
                log_info("mta", "%s: no DSN for a null sender", msg.id);
                continue;
            }
            dr[n_dr].final_rcpt = a->r->addr;
            dr[n_dr].orig_rcpt = strcmp(a->r->orig, a->r->addr) != 0 ? a->r->orig : NULL;
            dr[n_dr].status = status[i];
            dr[n_dr].diagnostic = a->reply;
            n_dr++;
        }
    }
    struct queue_new dsn;
    struct queue_new_rcpt dsn_rcpts[2];
    struct router_target dt[2];
    struct buf dsn_body;
    buf_init(&dsn_body, 0);
    if (n_dr > 0) {
        struct dsn_info info = {.reporting_mta = cfg->hostname,
                                .sender = msg.sender,
                                .queue_id = msg.id,
                                .arrival = msg.arrival / 1000,
                                .now = now / 1000};
        dsn_compose(&dsn_body, &info, dr, n_dr, msg.body.data, msg.body.len);
        memset(&dsn, 0, sizeof(dsn));
        size_t nt = 0;
        if (router_expand(m->router, msg.sender, dt, &nt) != ROUTER_OK || nt == 0) {
            /* A remote sender: tern has no outbound relay; the DSN fails
             * later without a DSN of its own (null sender). */
            str_copy(dt[0].addr, msg.sender, sizeof(dt[0].addr));
            nt = 1;
        }
        for (size_t i = 0; i < nt; i++) {
            dsn_rcpts[i].addr = dt[i].addr;
            dsn_rcpts[i].orig = msg.sender;
            dsn_rcpts[i].kind = QUEUE_RCPT_PRIMARY;
        }
        dsn.sender = "";
        dsn.body = dsn_body.data;
        dsn.len = dsn_body.len;
        dsn.rcpts = dsn_rcpts;
        dsn.n_rcpts = nt;
        dsn.is_dsn = true;
        dsn.expires = now + (int64_t)cfg->queue.lifetime * 1000;
    }
    bool done = false;
    qs = queue_update(w->q, msg.id, ups, n_att, n_dr > 0 ? &dsn : NULL, &done);
    if (qs != QUEUE_OK) {
        log_error("mta", "%s: cannot record delivery results; they will be retried", msg.id);
    } else if (n_dr > 0) {
        m->n_dsn++;
        log_info("mta", "%s: DSN %s queued for <%s>", msg.id, dsn.id_r, msg.sender);
        push(m, dsn.id_r);
    }
    if (done)
        log_info("mta", "%s: done", msg.id);
    buf_free(&dsn_body);
    free(ups);
    free(dr);
    free(status);
    free(att);
    queue_msg_clear(&msg);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct mta *m = w->m;
    for (;;) {
        char id[QUEUE_ID_LEN + 1];
        pthread_mutex_lock(&m->lock);
        while (!m->stopping && m->ready_n == 0)
            pthread_cond_wait(&m->work, &m->lock);
        if (m->stopping) {
            pthread_mutex_unlock(&m->lock);
            break;
        }
        str_copy(id, m->ready[m->ready_head], sizeof(id));
        m->ready_head = (m->ready_head + 1) % READY_MAX;
        m->ready_n--;
        str_copy(m->busy[w->index], id, QUEUE_ID_LEN + 1);
        pthread_mutex_unlock(&m->lock);

        deliver_message(w, id);

        pthread_mutex_lock(&m->lock);
        m->busy[w->index][0] = '\0';
        pthread_mutex_unlock(&m->lock);
    }
    for (unsigned i = 0; i < POOL_MAX; i++)
        lmtpc_close(&w->pool[i].c);
    return NULL;
}

struct sched {
    struct mta *m;
    struct queue *q;
    pthread_t thread;
};

struct due_list {
    char ids[DUE_BATCH][QUEUE_ID_LEN + 1];
    size_t n;
};

static void due_cb(void *ctx, const char *id)
{
    struct due_list *d = ctx;
    if (d->n < DUE_BATCH)
        str_copy(d->ids[d->n++], id, QUEUE_ID_LEN + 1);
}

static void *scheduler_main(void *arg)
{
    struct sched *sc = arg;
    struct mta *m = sc->m;
    struct due_list *due = xmalloc(sizeof(*due));
    pthread_mutex_lock(&m->lock);
    while (!m->stopping) {
        /* The queue is read without the lock: workers keep going. */
        pthread_mutex_unlock(&m->lock);
        int64_t now = time_now_ms();
        due->n = 0;
        queue_due(sc->q, now, DUE_BATCH, due_cb, due);
        int64_t next = queue_next_due(sc->q);
        pthread_mutex_lock(&m->lock);
        for (size_t i = 0; i < due->n; i++)
            push_locked(m, due->ids[i]);
        int64_t wake = now + 1000; /* at least once a second: `tern queue flush` */
        if (next > now && next < wake)
            wake = next;
        if (next <= now && m->ready_n > 0)
            wake = now + 50; /* more due than we took: come back soon */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t ms = wake - now;
        ts.tv_sec += ms / 1000;
        ts.tv_nsec += (long)(ms % 1000) * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&m->tick, &m->lock, &ts);
    }
    pthread_mutex_unlock(&m->lock);
    free(due);
    return NULL;
}

static void on_signal(void *ctx)
{
    struct mta *m = ctx;
    log_info("mta", "stopping");
    commit_cb(m); /* answer what is being committed */
    net_loop_stop(m->loop);
}

int role_mta_main(const struct config *cfg)
{
    log_init("mta");
    struct mta m;
    memset(&m, 0, sizeof(m));
    m.cfg = cfg;
    m.pending_tail = &m.pending_head;
    snprintf(m.queue_dir, sizeof(m.queue_dir), "%s/queue", cfg->data_dir);
    if (mkdir_p(m.queue_dir, 0750) < 0)
        fatal("cannot create %s: %s", m.queue_dir, strerror(errno));
    char lockpath[PATH_MAX];
    snprintf(lockpath, sizeof(lockpath), "%s/queue/lock", cfg->data_dir);
    int lockfd;
    pid_t holder;
    int lr = lockfile_acquire(lockpath, &lockfd, &holder);
    if (lr == 1)
        fatal("the queue is already owned by another process (pid %d)", (int)holder);
    if (lr < 0)
        fatal("cannot lock %s: %s", lockpath, strerror(errno));
    const char *error;
    m.q = queue_open(m.queue_dir, &error);
    if (m.q == NULL)
        fatal("cannot open the queue: %s", error);
    m.router = router_new(cfg->directory, cfg->queue.cache_ttl * 1000u, &error);
    if (m.router == NULL)
        fatal("cannot open directory %s: %s", cfg->directory, error);

    pthread_mutex_init(&m.lock, NULL);
    pthread_cond_init(&m.work, NULL);
    pthread_cond_init(&m.tick, NULL);
    m.ready = xcalloc(READY_MAX, sizeof(*m.ready));
    m.busy = xcalloc(cfg->queue.workers, sizeof(*m.busy));
    struct worker *workers = xcalloc(cfg->queue.workers, sizeof(*workers));
    for (unsigned i = 0; i < cfg->queue.workers; i++) {
        workers[i].m = &m;
        workers[i].index = i;
        workers[i].q = queue_open(m.queue_dir, &error);
        if (workers[i].q == NULL)
            fatal("cannot open the queue: %s", error);
        pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]);
    }
    struct sched sc = {.m = &m};
    sc.q = queue_open(m.queue_dir, &error);
    if (sc.q == NULL)
        fatal("cannot open the queue: %s", error);
    pthread_create(&sc.thread, NULL, scheduler_main, &sc);

    m.loop = net_loop_new();
    m.commit_task = net_task_new(m.loop, commit_cb, &m);
    struct smtpd_config scfg = {.dialect = SMTPD_SMTP,
                                .name = "mta",
                                .hostname = cfg->hostname,
                                .max_message_size = cfg->smtp.max_message_size,
                                .max_recipients = cfg->smtp.max_recipients,
                                .max_sessions = cfg->smtp.max_sessions};
    static const struct smtpd_hooks hooks = {.session_new = hook_session_new,
                                             .rcpt = hook_rcpt,
                                             .data = hook_data,
                                             .reset = hook_reset,
                                             .session_free = hook_session_free};
    struct net_conn_limits limits = {.idle_ms = cfg->smtp.idle_timeout * 1000u,
                                     .deadline_ms = cfg->smtp.session_deadline * 1000u,
                                     .min_rate = cfg->smtp.min_data_rate};
    m.smtpd = smtpd_listen(m.loop, cfg->smtp.listen, &scfg, &hooks, &m, &limits, &error);
    if (m.smtpd == NULL)
        fatal("cannot listen on %s: %s", cfg->smtp.listen, error);
    net_loop_on_signal(m.loop, SIGTERM, on_signal, &m);
    net_loop_on_signal(m.loop, SIGINT, on_signal, &m);
    log_info("mta", "SMTP listening on %s; %ld message(s) in the queue", cfg->smtp.listen,
             queue_count(m.q));

    net_loop_run(m.loop);

    pthread_mutex_lock(&m.lock);
    m.stopping = true;
    pthread_cond_broadcast(&m.work);
    pthread_cond_broadcast(&m.tick);
    pthread_mutex_unlock(&m.lock);
    for (unsigned i = 0; i < cfg->queue.workers; i++) {
        pthread_join(workers[i].thread, NULL);
        queue_close(&workers[i].q);
    }
    pthread_join(sc.thread, NULL);
    queue_close(&sc.q);
    smtpd_free(&m.smtpd);
    net_task_free(&m.commit_task);
    net_loop_free(&m.loop);
    router_free(&m.router);
    queue_close(&m.q);
    free(workers);
    free(m.ready);
    free(m.busy);
    close(lockfd);
    log_info("mta", "stopped: %llu accepted, %llu delivered, %llu failed, %llu DSNs",
             (unsigned long long)m.n_accepted, (unsigned long long)m.n_delivered,
             (unsigned long long)m.n_failed, (unsigned long long)m.n_dsn);
    return 0;
}
