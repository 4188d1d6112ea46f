/* move — the move engine's phases. See move.h and docs/move.md. */
#include "move/move.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util/util.h"

#define SAVE_EVERY_MSGS    500
#define SAVE_EVERY_MS      1000
#define CATCHUP_PASSES_MAX 20
#define BATCH_MSGS         128        /* appends sent to the destination at once */
#define BATCH_BYTES        (8u << 20) /* ... and their bodies at most: memory stays flat */
#define CUTOVERS_MAX       10 /* cutovers over budget before the job gives up (source stays) */
#define SWAP_PREFIX        ".tern-move-swap-" /* a folder moved out of another's way */

/* What a phase function tells the loop. */
enum step {
    STEP_NEXT,  /* the phase is done; job.phase names the next one */
    STEP_LATER, /* wait and run again (transport down, retention, suspended) */
    STEP_ABORT, /* an abort was requested (job.phase is "aborting") */
    STEP_FAIL,  /* cannot go on: clean up like an abort, end as "failed" */
    STEP_LOST,  /* the lease is gone */
};

struct run {
    const struct move_env *env;
    struct dir_job job;
    struct sync *src, *src2, *dst; /* src2: fetches while src streams changes */
    char ctx[64];                  /* log context: "move:12" */
    char err[DIR_ERROR_MAX + 1];
    int64_t last_save_ms;
    unsigned since_save;
    bool fenced_here; /* this run fenced the source: the cutover goes straight through */
    /* The delivery ids of the messages up to this modseq were copied before
     * the fence (ids_copied): the pause copies only the later ones. */
    bool ids_copied;
    uint64_t ids_upto;
    /* A store refused our fencing token as stale: another mover claimed
     * the job since. The run stops without writing anything more. */
    bool stale;
};

bool move_phase_active(const char *phase)
{
    return !dir_job_phase_final(phase) || strcmp(phase, "retention") == 0;
}

bool move_phase_abortable(const char *phase)
{
    static const char *const ok[] = {"queued", "provision", "copy",  "catchup",
                                     "ready",  "fence",     "final", "verify"};
    for (size_t i = 0; i < ARRAY_SIZE(ok); i++)
        if (strcmp(phase, ok[i]) == 0)
            return true;
    return false;
}

static void set_err(struct run *r, const char *fmt, ...) TERN_PRINTF(2, 3);
static void set_err(struct run *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err, sizeof(r->err), fmt, ap);
    va_end(ap);
    log_warn(r->ctx, "%s", r->err);
}

static void drop_transports(struct run *r)
{
    sync_close(&r->src);
    sync_close(&r->src2);
    sync_close(&r->dst);
}

/* ---- the job row: every save is a compare-and-set that renews the lease - */

/* 0 saved; 1 an abort was requested (job.phase is now "aborting"); -2 the
 * lease is someone else's; -1 the directory cannot answer. */
static int job_save(struct run *r)
{
    const struct move_env *env = r->env;
    for (int attempt = 0; attempt < 20; attempt++) {
        r->job.lease_expires = time_now_ms() + env->lease_ms;
        str_copy(r->job.lease_owner, env->owner, sizeof(r->job.lease_owner));
        str_copy(r->job.last_error, r->err, sizeof(r->job.last_error));
        enum dir_status st = dir_job_update(env->dir, &r->job);
        if (st == DIR_OK) {
            r->last_save_ms = time_mono_ms();
            r->since_save = 0;
            return 0;
        }
        if (st == DIR_TEMPFAIL) {
            usleep(200 * 1000);
            continue;
        }
        if (st != DIR_CONFLICT)
            return -1;
        struct dir_job cur;
        if (dir_job_get(env->dir, r->job.id, &cur) != DIR_OK)
            return -1;
        /* Another mover claimed the job (our lease lapsed during a long
         * call): stop at once, even if its lease has lapsed too — two
         * movers must never both write a job. */
        if (strcmp(cur.lease_owner, env->owner) != 0) {
            log_warn(r->ctx, "%s: lease lost to %s (ours, as %s, lapsed): stopping this run",
                     r->job.user, cur.lease_owner[0] ? cur.lease_owner : "nobody", env->owner);
            return -2;
        }
        /* The CLI may have asked to abort or to complete: take that in,
         * keeping the bit only the mover sets (REUSED: set or cleared in
         * this run and not saved yet). */
        r->job.version = cur.version;
        r->job.options =
            (cur.options & ~DIR_JOB_OPT_REUSED) | (r->job.options & DIR_JOB_OPT_REUSED);
        if (strcmp(cur.phase, "aborting") == 0 && move_phase_abortable(r->job.phase)) {
            str_copy(r->job.phase, "aborting", sizeof(r->job.phase));
            if (job_save(r) == 0)
                return 1;
            return -1;
        }
    }
    return -1;
}

/* Persists the next phase before it runs. */
static enum step next_phase(struct run *r, const char *phase)
{
    str_copy(r->job.phase, phase, sizeof(r->job.phase));
    r->err[0] = '\0';
    int s = job_save(r);
    if (s == 1)
        return STEP_ABORT;
    if (s == -2)
        return STEP_LOST;
    if (s < 0)
        return STEP_LATER;
    log_info(r->ctx, "%s: phase %s", r->job.user, phase);
    return STEP_NEXT;
}

static enum step save_now(struct run *r)
{
    int s = job_save(r);
    return s == 1 ? STEP_ABORT : s == -2 ? STEP_LOST : s < 0 ? STEP_LATER : STEP_NEXT;
}

/* True when the lease wants renewing: at least three times per lease. */
static bool lease_due(const struct run *r)
{
    int64_t every = r->env->lease_ms / 3 < SAVE_EVERY_MS ? r->env->lease_ms / 3 : SAVE_EVERY_MS;
    return time_mono_ms() - r->last_save_ms >= every;
}

/* Renews the lease and saves progress now and then during long phases:
 * every SAVE_EVERY_MSGS records, and whenever the lease is due. */
static enum step maybe_save(struct run *r)
{
    if (++r->since_save < SAVE_EVERY_MSGS && !lease_due(r))
        return STEP_NEXT;
    return save_now(r);
}

/* Before a write to the destination: a run that stalled (SIGSTOP, a long
 * pause) since its last save finds out here that its lease went to another
 * mover, instead of writing first. This only narrows the window; what
 * closes it is the store: every write of a pass carries an explicit modseq,
 * which only a STAGED mailbox accepts (store.h), so a write that a stall
 * carries past another mover's switch is refused (dest_not_staged). */
static enum step lease_check(struct run *r)
{
    return lease_due(r) ? save_now(r) : STEP_NEXT;
}

/* The destination refused a write of this pass as "notlive": its mailbox
 * is not staged any more. While this run holds the lease nothing makes it
 * live, so another mover took the job over (our lease lapsed during a
 * stall) and switched it: stop without writing anything more. (The failure
 * path saves the job first, which finds the lease gone and ends the run;
 * a run that does hold the lease aborts, before the switch.) */
static enum step dest_not_staged(struct run *r, const char *what)
{
    set_err(r, "%s: %s on %s is no longer staged: its writes are refused, stopping", what,
            r->job.user, r->job.dest);
    return STEP_FAIL;
}

/* A store answered "stale token": a mover with a later claim of this job
 * has presented its token there since ours (our lease lapsed while we
 * stalled). True then, after saying so; the run stops at once and never
 * writes the job row or a store again. */
static bool token_stale(struct run *r, int rc, const char *why, const char *what, const char *store)
{
    if (rc != SYNC_NO || strcmp(why, "stale token") != 0)
        return false;
    if (!r->stale)
        log_warn(r->ctx,
                 "%s: %s on %s refused: stale token %llu/%llu, another mover claimed the job "
                 "since: stopping",
                 r->job.user, what, store, (unsigned long long)r->job.id,
                 (unsigned long long)r->job.claims);
    r->stale = true;
    return true;
}

/* The fencing token (job id, claims) on a new channel to `store`: from
 * then on, each of its writes is refused if another mover claimed the job
 * since (store.h "Fencing tokens"). Only while the job is live: retention
 * writes by state (moved -> deleting) alone, without a token, since a
 * later job's token would be above it. 0, or -1 with r->err (r->stale for
 * a refusal). */
static int present_token(struct run *r, struct sync *s, const char *store)
{
    if (r->job.claims == 0 || strcmp(r->job.phase, "retention") == 0)
        return 0;
    const char *why = "";
    int rc = s->ops->token(s, r->job.user, r->job.id, r->job.claims, &why);
    if (rc == 0)
        return 0;
    if (token_stale(r, rc, why, "TOKEN", store))
        set_err(r, "stale token on %s: another mover claimed the job", store);
    else
        set_err(r, "cannot present the fencing token to %s: %s", store,
                rc < 0 ? "connection failed" : why);
    return -1;
}

static struct sync *connect_one(struct run *r, const char *store, char *e, size_t elen)
{
    const struct move_env *env = r->env;
    struct sync *s = env->connect(env->ctx, store, e, elen);
    if (s != NULL && present_token(r, s, store) < 0) {
        str_copy(e, r->err, elen);
        sync_close(&s);
    }
    return s;
}

static int connect_all(struct run *r)
{
    char e[200];
    if (r->src == NULL && (r->src = connect_one(r, r->job.source, e, sizeof(e))) == NULL)
        goto fail;
    if (r->src2 == NULL && (r->src2 = connect_one(r, r->job.source, e, sizeof(e))) == NULL)
        goto fail;
    if (r->dst == NULL && (r->dst = connect_one(r, r->job.dest, e, sizeof(e))) == NULL)
        goto fail;
    return 0;
fail:
    set_err(r, "cannot reach a store: %s", e);
    drop_transports(r);
    return -1;
}

/* Only the source: what unfencing needs, even with the destination down. */
static int connect_src(struct run *r)
{
    char e[200];
    if (r->src == NULL && (r->src = connect_one(r, r->job.source, e, sizeof(e))) == NULL) {
        set_err(r, "cannot reach %s: %s", r->job.source, e);
        return -1;
    }
    return 0;
}

/* A transport call's result: -1 drops the channels (the step is retried). */
static enum step io_fail(struct run *r, const char *what)
{
    set_err(r, "%s: store connection failed", what);
    drop_transports(r);
    return STEP_LATER;
}

/* ---- one sync pass: apply the source's changes since a checkpoint ------ */

/* A message fetched from the source, waiting for the next batch append. */
struct pending {
    struct sync_msg m;
    struct buf body;
};

struct pass {
    struct run *r;
    uint64_t since;
    uint64_t limit;      /* the source's modseq when the pass began */
    int64_t deadline_ms; /* mono; 0 = none */
    uint64_t changes;
    enum step result;
    bool over_budget;
    struct pending *batch; /* BATCH_MSGS slots */
    size_t nb;
    size_t bytes;
    /* UIDVALIDITYs of the folders this listing shows deleted. Their
     * messages' tombstones share the folder's modseq, so they are always in
     * the same listing; folder_delete already took them on the destination,
     * where the name may belong to a new folder by now. */
    uint32_t *gone;
    size_t ngone;
    /* The batch sent to the destination whose answers are not read yet
     * (append_batch_start): the source is read meanwhile. in_flight may
     * hold no message (all gone): it still moves the checkpoint. */
    struct pending *flight; /* BATCH_MSGS slots */
    size_t nf;
    bool in_flight;
    uint64_t flight_last; /* modseq of the listing's last record in it */
    const struct sync_msg **f_msgs;
    const void **f_data;
    size_t *f_lens;
    int *f_rcs;
    const char **f_whys;
};

/* A transport call inside a pass failed. The channels are dropped only
 * once the listing has returned (sync_pass): a callback closing the source
 * under the listing that calls it would leave it a freed connection. */
static enum step pass_io_fail(struct run *r, const char *what)
{
    set_err(r, "%s: store connection failed", what);
    return STEP_LATER;
}

static void batch_drop(struct pass *p)
{
    for (size_t i = 0; i < p->nb; i++)
        buf_free(&p->batch[i].body);
    p->nb = 0;
    p->bytes = 0;
}

static void flight_drop(struct pass *p)
{
    for (size_t i = 0; i < p->nf; i++)
        buf_free(&p->flight[i].body);
    p->nf = 0;
    p->in_flight = false;
}

/* Fetches the bodies of the queued messages from the source in one
 * pipelined round trip (fetch_batch) instead of one per message; a message
 * gone since it was listed leaves the batch (its tombstone comes in a later
 * pass). 0, or -1 with p->result set. */
static int batch_fetch(struct pass *p)
{
    struct run *r = p->r;
    const char **folders = xcalloc(p->nb, sizeof(*folders));
    uint32_t *uids = xcalloc(p->nb, sizeof(*uids));
    struct buf *outs = xcalloc(p->nb, sizeof(*outs));
    int *rcs = xcalloc(p->nb, sizeof(*rcs));
    const char **whys = xcalloc(p->nb, sizeof(*whys));
    for (size_t i = 0; i < p->nb; i++) {
        folders[i] = p->batch[i].m.folder;
        uids[i] = p->batch[i].m.uid;
        buf_init(&outs[i], 0);
    }
    int rc = r->src2->ops->fetch_batch(r->src2, r->job.user, folders, uids, p->nb, outs, rcs, whys);
    size_t k = 0;
    for (size_t i = 0; i < p->nb; i++) {
        if (rc == 0 && rcs[i] == 0) {
            p->batch[k].m = p->batch[i].m;
            p->batch[k++].body = outs[i];
        } else {
            buf_free(&outs[i]);
        }
    }
    p->nb = rc == 0 ? k : 0;
    free(folders);
    free(uids);
    free(outs);
    free(rcs);
    free(whys);
    if (rc < 0) {
        p->result = pass_io_fail(r, "fetch");
        return -1;
    }
    return 0;
}

/* Reads the answers of the batch in flight and acts on them; the
 * checkpoint moves past it only now. 0, or -1 with p->result set. */
static int batch_settle(struct pass *p)
{
    struct run *r = p->r;
    if (!p->in_flight)
        return 0;
    p->in_flight = false;
    int rc = p->nf > 0 ? r->dst->ops->append_batch_end(r->dst) : 0;
    if (rc < 0) {
        flight_drop(p);
        p->result = pass_io_fail(r, "copy");
        return -1;
    }
    int ret = 0;
    for (size_t i = 0; ret == 0 && i < p->nf; i++) {
        const struct sync_msg *m = &p->flight[i].m;
        const char *why = p->f_whys[i];
        int x = p->f_rcs[i];
        if (x == 0) {
            r->job.msgs_done++;
            r->job.bytes_done += m->size;
        } else if (x == SYNC_NO && strcmp(why, "exists") == 0) {
            x = r->dst->ops->flags_at(r->dst, r->job.user, m->folder, m->uid, m->flags, m->keywords,
                                      m->modseq, &why);
            if (x < 0) {
                p->result = pass_io_fail(r, "flags");
                ret = -1;
            } else if (token_stale(r, x, why, "flags", r->job.dest)) {
                p->result = STEP_LOST;
                ret = -1;
            } else if (x == SYNC_NO && strcmp(why, "notlive") == 0) {
                p->result = dest_not_staged(r, "flags");
                ret = -1;
            } else if (x == SYNC_NO && strcmp(why, "notfound") != 0) {
                set_err(r, "message %s/%u: %s", m->folder, m->uid, why);
                p->result = STEP_FAIL;
                ret = -1;
            }
        } else if (token_stale(r, x, why, "copy", r->job.dest)) {
            p->result = STEP_LOST;
            ret = -1;
        } else if (x == SYNC_NO && strcmp(why, "notlive") == 0) {
            p->result = dest_not_staged(r, "copy");
            ret = -1;
        } else if (x == SYNC_NO && strcmp(why, "notfound") == 0) {
            /* Gone on the source since it was listed: its tombstone comes in
             * a later pass. */
        } else {
            set_err(r, "message %s/%u: %s", m->folder, m->uid, why);
            p->result = STEP_FAIL;
            ret = -1;
        }
    }
    if (ret == 0 && p->nf > 0) {
        /* Fault injection (tests): the batch is durable on the destination,
         * the checkpoint does not know it yet. */
        util_fault_point("move.batch");
    }
    /* Everything up to the last record of this batch is applied. Only
     * records up to the pass's limit are queued (pass_msg), so this never
     * passes it; the bound keeps that so. */
    uint64_t upto = p->flight_last > 0 ? p->flight_last - 1 : 0;
    if (upto > p->limit)
        upto = p->limit;
    if (ret == 0 && upto > r->job.checkpoint)
        r->job.checkpoint = upto;
    flight_drop(p);
    return ret;
}

/* The queued messages: their bodies fetched from the source (while the
 * destination commits the batch in flight), that batch settled, then these
 * sent as the new batch in flight (one commit on the destination for all).
 * 0, or -1 with p->result set. */
static int batch_push(struct pass *p)
{
    struct run *r = p->r;
    if (p->nb == 0)
        return 0;
    /* The listing's last record in the batch bounds the checkpoint, even if
     * its message is gone by now. */
    uint64_t last_modseq = p->batch[p->nb - 1].m.modseq;
    if (batch_fetch(p) < 0 || batch_settle(p) < 0)
        return -1;
    struct pending *t = p->flight;
    p->flight = p->batch;
    p->batch = t;
    p->nf = p->nb;
    p->nb = 0;
    p->bytes = 0;
    p->flight_last = last_modseq;
    p->in_flight = true;
    if (p->nf == 0)
        return 0;
    for (size_t i = 0; i < p->nf; i++) {
        p->f_msgs[i] = &p->flight[i].m;
        p->f_data[i] = p->flight[i].body.data != NULL ? p->flight[i].body.data : "";
        p->f_lens[i] = p->flight[i].body.len;
        p->f_whys[i] = "";
    }
    if (r->dst->ops->append_batch_start(r->dst, r->job.user, p->f_msgs, p->f_data, p->f_lens, p->nf,
                                        p->f_rcs, p->f_whys) < 0) {
        flight_drop(p);
        p->result = pass_io_fail(r, "copy");
        return -1;
    }
    return 0;
}

/* Everything queued is applied on the destination. 0, or -1 with p->result
 * set. */
static int batch_flush(struct pass *p)
{
    if (batch_push(p) < 0 || batch_settle(p) < 0)
        return -1;
    return 0;
}

/* The destination folder called `name` has another UIDVALIDITY than the
 * source's folder of that name (a swap of names on the source, applied one
 * folder record at a time): rename it out of the way, to a name that carries
 * its UIDVALIDITY. Its own record, later in the listing, names it again (and
 * gives it its own modseq; until then it has `modseq`, the record's being
 * applied); a name left over would fail verify, never pass it. 0, SYNC_NO
 * (r->err) or -1. */
static int folder_unblock(struct run *r, const char *name, uint32_t uidvalidity, uint64_t modseq)
{
    const char *why = "";
    struct sync_digest *dg = NULL;
    size_t n = 0;
    int rc = r->dst->ops->digest(r->dst, r->job.user, &dg, &n, &why);
    if (rc != 0) {
        free(dg);
        return rc;
    }
    uint32_t blocker = 0;
    for (size_t i = 0; i < n; i++)
        if (strcmp(dg[i].name, name) == 0)
            blocker = dg[i].uidvalidity;
    free(dg);
    if (blocker == 0 || blocker == uidvalidity) {
        set_err(r, "folder %s on %s: conflict, but no other folder holds the name", name,
                r->job.dest);
        return SYNC_NO;
    }
    char tmp[STORE_FOLDER_MAX + 1];
    snprintf(tmp, sizeof(tmp), SWAP_PREFIX "%u", blocker);
    log_info(r->ctx, "%s: folder %s (UIDVALIDITY %u) on %s makes way as %s", r->job.user, name,
             blocker, r->job.dest, tmp);
    rc = r->dst->ops->folder_ensure_at(r->dst, r->job.user, tmp, blocker, 0, modseq, &why);
    if (rc == SYNC_NO)
        set_err(r, "folder %s on %s cannot make way: %s", name, r->job.dest, why);
    return rc;
}

static int pass_folder(void *ctx, const struct sync_folder *f)
{
    struct pass *p = ctx;
    struct run *r = p->r;
    const char *why = "";
    int rc;
    p->changes++;
    if (batch_flush(p) < 0)
        return -1;
    enum step ls = lease_check(r);
    if (ls != STEP_NEXT) {
        p->result = ls;
        return -1;
    }
    if (f->deleted) {
        p->gone = xrealloc(p->gone, (p->ngone + 1) * sizeof(*p->gone));
        p->gone[p->ngone++] = f->uidvalidity;
        rc = r->dst->ops->folder_delete_at(r->dst, r->job.user, f->uidvalidity, f->modseq, &why);
    } else {
        /* With the source's modseq: the copy's folder carries it exactly. */
        rc = r->dst->ops->folder_ensure_at(r->dst, r->job.user, f->name, f->uidvalidity, f->uidnext,
                                           f->modseq, &why);
        if (rc == SYNC_NO && strcmp(why, "conflict") == 0) {
            rc = folder_unblock(r, f->name, f->uidvalidity, f->modseq);
            if (rc == SYNC_NO) {
                p->result = STEP_FAIL;
                return -1;
            }
            if (rc == 0)
                rc = r->dst->ops->folder_ensure_at(r->dst, r->job.user, f->name, f->uidvalidity,
                                                   f->uidnext, f->modseq, &why);
        }
    }
    if (rc < 0) {
        p->result = pass_io_fail(r, "folder");
        return -1;
    }
    if (token_stale(r, rc, why, "folder", r->job.dest)) {
        p->result = STEP_LOST;
        return -1;
    }
    if (rc == SYNC_NO && strcmp(why, "notlive") == 0) {
        p->result = dest_not_staged(r, "folder");
        return -1;
    }
    if (rc == SYNC_NO && strcmp(why, "notfound") != 0) {
        set_err(r, "folder %s on %s: %s", f->name, r->job.dest, why);
        p->result = STEP_FAIL;
        return -1;
    }
    return 0;
}

static bool pass_folder_gone(const struct pass *p, uint32_t uidvalidity)
{
    for (size_t i = 0; i < p->ngone; i++)
        if (p->gone[i] == uidvalidity)
            return true;
    return false;
}

static int pass_msg(void *ctx, const struct sync_msg *m)
{
    struct pass *p = ctx;
    struct run *r = p->r;
    const char *why = "";
    int rc;
    /* A change newer than the pass's start waits for the next pass (which
     * lists it again: the checkpoint is the start): every change applied
     * here has a source modseq <= limit, the destination's counter was set
     * to limit first, and each change is applied with its source modseq
     * (the append through m->modseq), so the counter stays limit. */
    if (m->modseq > p->limit)
        return 0;
    p->changes++;
    if (p->deadline_ms != 0)
        util_fault_point("move.final.record"); /* tests: a slow final sync */
    if (p->deadline_ms != 0 && time_mono_ms() > p->deadline_ms) {
        p->over_budget = true;
        return -1;
    }
    enum step ls = lease_check(r);
    if (ls != STEP_NEXT) {
        p->result = ls;
        return -1;
    }
    if (pass_folder_gone(p, m->uidvalidity)) {
        /* A tombstone of a deleted folder: applying it by name could hit a
         * new folder of the same name (another incarnation). */
    } else if (m->expunged) {
        if (batch_flush(p) < 0)
            return -1;
        /* Also a message the destination never held gets its tombstone: the
         * copy lists the expunge as the source does (a later move from it
         * must expunge the message on a copy that still holds it). */
        rc = r->dst->ops->tombstone(r->dst, r->job.user, m, &why);
        if (rc < 0) {
            p->result = pass_io_fail(r, "expunge");
            return -1;
        }
        if (token_stale(r, rc, why, "expunge", r->job.dest)) {
            p->result = STEP_LOST;
            return -1;
        }
        if (rc == SYNC_NO && strcmp(why, "notlive") == 0) {
            p->result = dest_not_staged(r, "expunge");
            return -1;
        }
    } else {
        /* In an incremental pass most records are flag changes of messages
         * the destination has: try that first, fetch only what is new. */
        rc = SYNC_NO;
        if (p->since > 0) {
            if (batch_flush(p) < 0)
                return -1;
            /* Fault injection (tests): a mover that stalls at the worst
             * instant, its lease checked, a flag change in hand. */
            util_fault_point("move.pass.flags");
            rc = r->dst->ops->flags_at(r->dst, r->job.user, m->folder, m->uid, m->flags,
                                       m->keywords, m->modseq, &why);
            if (rc < 0) {
                p->result = pass_io_fail(r, "flags");
                return -1;
            }
            if (token_stale(r, rc, why, "flags", r->job.dest)) {
                p->result = STEP_LOST;
                return -1;
            }
            if (rc == SYNC_NO && strcmp(why, "notlive") == 0) {
                p->result = dest_not_staged(r, "flags");
                return -1;
            }
        }
        if (rc == SYNC_NO) {
            /* New on the destination: queued for the next batch, whose
             * bodies are fetched together (batch_fetch) and appended with
             * one commit on the destination. */
            struct pending *pe = &p->batch[p->nb];
            pe->m = *m;
            buf_init(&pe->body, 0);
            p->nb++;
            p->bytes += m->size;
            if ((p->nb == BATCH_MSGS || p->bytes >= BATCH_BYTES) && batch_push(p) < 0)
                return -1;
            enum step s2 = maybe_save(r);
            if (s2 != STEP_NEXT) {
                p->result = s2;
                return -1;
            }
            return 0;
        }
    }
    /* All changes below this modseq are applied (the listing is ordered,
     * and nothing is waiting in the batch: it was flushed above). */
    if (p->nb == 0 && !p->in_flight && m->modseq > 0 && m->modseq - 1 > r->job.checkpoint)
        r->job.checkpoint = m->modseq - 1;
    enum step s = maybe_save(r);
    if (s != STEP_NEXT) {
        p->result = s;
        return -1;
    }
    return 0;
}

/* Applies everything the source changed since `since`. STEP_NEXT with
 * job.checkpoint at the listing's modseq, or why not. */
static enum step sync_pass(struct run *r, uint64_t since, int64_t deadline_ms, uint64_t *changes_r,
                           bool *over_budget_r)
{
    struct pass p = {.r = r, .since = since, .deadline_ms = deadline_ms, .result = STEP_NEXT};
    int64_t t0 = time_mono_ms();
    uint64_t msgs0 = r->job.msgs_done, bytes0 = r->job.bytes_done;
    struct sync_changes_cb cb = {.folder = pass_folder, .msg = pass_msg, .ctx = &p};
    uint64_t modseq = 0;
    const char *why = "";
    if (connect_all(r) < 0)
        return STEP_LATER;
    /* Modseqs for clients (CONDSTORE/QRESYNC): the staged destination's
     * counter is set to the source's before anything of this pass is
     * applied, and every change is applied with its own source modseq
     * (<= that counter), so after the final pass every row and the counter
     * (HIGHESTMODSEQ) are exactly the source's. docs/move.md. */
    struct store_mailbox smb;
    int rc = r->src->ops->mailbox_get(r->src, r->job.user, &smb, &why);
    if (rc == 0)
        rc = r->dst->ops->modseq_raise(r->dst, r->job.user, smb.modseq, &why);
    if (rc < 0)
        return io_fail(r, "modseq");
    if (token_stale(r, rc, why, "MODSEQ", r->job.dest))
        return STEP_LOST;
    if (rc == SYNC_NO) {
        set_err(r, "modseq of %s: %s", r->job.user, why);
        return STEP_FAIL;
    }
    p.limit = smb.modseq;
    p.batch = xcalloc(BATCH_MSGS, sizeof(*p.batch));
    p.flight = xcalloc(BATCH_MSGS, sizeof(*p.flight));
    p.f_msgs = xcalloc(BATCH_MSGS, sizeof(*p.f_msgs));
    p.f_data = xcalloc(BATCH_MSGS, sizeof(*p.f_data));
    p.f_lens = xcalloc(BATCH_MSGS, sizeof(*p.f_lens));
    p.f_rcs = xcalloc(BATCH_MSGS, sizeof(*p.f_rcs));
    p.f_whys = xcalloc(BATCH_MSGS, sizeof(*p.f_whys));
    rc = r->src->ops->changes(r->src, r->job.user, since, &cb, &modseq, &why);
    if (rc == 0 && p.result == STEP_NEXT && !p.over_budget && batch_flush(&p) < 0)
        rc = 1; /* p.result says why */
    /* A batch still in flight (the pass stopped early): its answers are
     * read and dropped; the checkpoint stays before it. */
    if (p.in_flight && p.nf > 0 && r->dst != NULL)
        (void)r->dst->ops->append_batch_end(r->dst);
    flight_drop(&p);
    batch_drop(&p);
    free(p.batch);
    free(p.gone);
    free(p.flight);
    free(p.f_msgs);
    free(p.f_data);
    free(p.f_lens);
    free(p.f_rcs);
    free(p.f_whys);
    if (changes_r != NULL)
        *changes_r = p.changes;
    if (over_budget_r != NULL)
        *over_budget_r = p.over_budget;
    if (p.over_budget || p.result != STEP_NEXT) {
        /* The listing was cut short (or a store failed under it): the
         * source channel is mid-listing; start fresh next time. */
        drop_transports(r);
        return p.over_budget ? STEP_NEXT : p.result;
    }
    if (rc < 0)
        return io_fail(r, "changes");
    if (rc == SYNC_NO) {
        set_err(r, "listing changes on %s: %s", r->job.source, why);
        return STEP_FAIL;
    }
    /* Not the listing's modseq as such: what came after limit was left for
     * the next pass. But a listing can end early (a folder changed under it:
     * sync.h), complete only up to its modseq; then that is the checkpoint. */
    r->job.checkpoint = modseq < p.limit ? modseq : p.limit;
    /* What a pass cost (bench/move reads it: a catch-up pass costs the delta). */
    log_info(r->ctx,
             "%s: pass since %llu: %llu changes, %llu messages (%llu octets) copied in %lld ms",
             r->job.user, (unsigned long long)since, (unsigned long long)p.changes,
             (unsigned long long)(r->job.msgs_done - msgs0),
             (unsigned long long)(r->job.bytes_done - bytes0), (long long)(time_mono_ms() - t0));
    return STEP_NEXT;
}

/* ---- the directory side ------------------------------------------------ */

/* Sets the user's state from `from` to `to` while homed on the source at the
 * job's epoch (a CAS, retried on unrelated changes). 0, or -1 with r->err. */
static int user_state(struct run *r, enum dir_user_state from, enum dir_user_state to)
{
    for (int attempt = 0; attempt < 10; attempt++) {
        struct dir_user u;
        enum dir_status st = dir_user_get(r->env->dir, r->job.user, &u);
        if (st == DIR_NOTFOUND) {
            set_err(r, "user %s is no longer in the directory", r->job.user);
            return -1;
        }
        if (st != DIR_OK) {
            set_err(r, "directory unavailable");
            return -1;
        }
        if (strcmp(u.home, r->job.source) != 0 || u.epoch != r->job.epoch) {
            set_err(r, "user %s is now homed on %s at epoch %llu, not %s at %llu", u.address,
                    u.home, (unsigned long long)u.epoch, r->job.source,
                    (unsigned long long)r->job.epoch);
            return -1;
        }
        if (u.state == to)
            return 0;
        if (u.state != from) {
            set_err(r, "user %s is %s, expected %s", u.address, dir_user_state_str(u.state),
                    dir_user_state_str(from));
            return -1;
        }
        u.state = to;
        st = dir_user_update(r->env->dir, &u);
        if (st == DIR_OK)
            return 0;
        if (st != DIR_CONFLICT) {
            set_err(r, "directory unavailable");
            return -1;
        }
    }
    set_err(r, "user %s keeps changing", r->job.user);
    return -1;
}

/* 0 if the source is fenced at the job's epoch, 1 if not (r->err says
 * what it is), -1 on transport trouble. Final, verify and switch run only
 * against a frozen source. */
static int source_fenced(struct run *r)
{
    const char *why = "";
    struct store_mailbox mb;
    int rc = r->src->ops->mailbox_get(r->src, r->job.user, &mb, &why);
    if (rc < 0)
        return -1;
    if (rc == 0 && mb.state == STORE_MBOX_FENCED && mb.epoch == r->job.epoch)
        return 0;
    set_err(r, "source mailbox is %s, not fenced at epoch %llu: fencing again",
            rc == 0 ? store_mbox_state_str(mb.state) : why, (unsigned long long)r->job.epoch);
    return 1;
}

/* ---- the phases -------------------------------------------------------- */

static enum step phase_provision(struct run *r)
{
    const char *why = "";
    struct dir_user u;
    enum dir_status ds = dir_user_get(r->env->dir, r->job.user, &u);
    if (ds == DIR_NOTFOUND) {
        set_err(r, "user %s is not in the directory", r->job.user);
        return STEP_FAIL;
    }
    if (ds != DIR_OK)
        return STEP_LATER;
    if (r->job.epoch == 0)
        r->job.epoch = u.epoch;
    if (user_state(r, DIR_USER_ACTIVE, DIR_USER_MOVING) < 0)
        return STEP_FAIL;
    if (connect_all(r) < 0)
        return STEP_LATER;

    /* The source must have a mailbox row to fence, even if no mail came. */
    struct store_mailbox mb;
    int rc = r->src->ops->mailbox_get(r->src, r->job.user, &mb, &why);
    if (rc == SYNC_NO && strcmp(why, "notfound") == 0) {
        rc = r->src->ops->mailbox_create(r->src, r->job.user, STORE_MBOX_ACTIVE, r->job.epoch, 0,
                                         &why);
        if (rc == SYNC_NO && strcmp(why, "exists") == 0)
            rc = 0;
        if (rc == 0)
            rc = r->src->ops->mailbox_get(r->src, r->job.user, &mb, &why);
    }
    if (rc < 0)
        return io_fail(r, "source mailbox");
    if (rc == SYNC_NO || mb.state != STORE_MBOX_ACTIVE || mb.epoch != r->job.epoch) {
        set_err(r, "source mailbox on %s is not active at epoch %llu", r->job.source,
                (unsigned long long)r->job.epoch);
        return STEP_FAIL;
    }
    r->job.msgs_total = mb.messages;
    r->job.bytes_total = mb.bytes;
    /* The staged INBOX is born with the source INBOX's UIDVALIDITY: clients
     * keep their caches across the move. */
    uint32_t inbox_uv = 0;
    struct sync_digest *dg = NULL;
    size_t ndg = 0;
    rc = r->src->ops->digest(r->src, r->job.user, &dg, &ndg, &why);
    if (rc < 0)
        return io_fail(r, "source folders");
    for (size_t i = 0; rc == 0 && i < ndg; i++)
        if (strcmp(dg[i].name, "INBOX") == 0)
            inbox_uv = dg[i].uidvalidity;
    free(dg);

    /* The destination copy is born STAGED, in the step that creates it:
     * nothing can be delivered into it before the switch (Q277911). */
    uint64_t new_epoch = r->job.epoch + 1;
    rc = r->dst->ops->mailbox_get(r->dst, r->job.user, &mb, &why);
    if (rc == SYNC_NO && strcmp(why, "notfound") == 0) {
        rc = r->dst->ops->mailbox_create(r->dst, r->job.user, STORE_MBOX_STAGED, new_epoch,
                                         inbox_uv, &why);
        if (rc == SYNC_NO && strcmp(why, "exists") == 0)
            rc = 0; /* a crash after the create: fine */
    } else if (rc == 0 && mb.state == STORE_MBOX_STAGED) {
        if (mb.epoch != new_epoch)
            rc = r->dst->ops->mailbox_state(r->dst, r->job.user, STORE_MBOX_STAGED,
                                            STORE_MBOX_STAGED, new_epoch, NULL, &why);
    } else if (rc == 0 && mb.state == STORE_MBOX_MOVED) {
        /* A copy kept from an earlier move away from this store: it becomes
         * the staged base and is brought up to date like any other. */
        log_info(r->ctx, "%s: reusing the retained copy on %s as the staged destination",
                 r->job.user, r->job.dest);
        r->job.options |= DIR_JOB_OPT_REUSED;
        if (job_save(r) != 0)
            return STEP_LATER;
        /* Fault injection (tests): the earlier move's retention may purge
         * the copy right here. */
        util_fault_point("move.provision.reuse");
        rc = r->dst->ops->mailbox_state(r->dst, r->job.user, STORE_MBOX_MOVED, STORE_MBOX_STAGED,
                                        new_epoch, NULL, &why);
        if (rc == SYNC_NO && (strcmp(why, "notfound") == 0 || strcmp(why, "conflict") == 0)) {
            /* The earlier move's retention purged (or began purging) that
             * copy between our read and our compare-and-set: not ours to
             * reuse after all. Provision again from the start. */
            log_info(r->ctx, "%s: the retained copy on %s went away (%s); provisioning again",
                     r->job.user, r->job.dest, why);
            r->job.options &= ~DIR_JOB_OPT_REUSED;
            (void)job_save(r);
            return STEP_LATER;
        }
    } else if (rc == 0 && mb.state == STORE_MBOX_DELETING) {
        /* An earlier move's retention is purging the old copy here: wait
         * for it to finish, then create a fresh staged copy. */
        log_info(r->ctx, "%s: waiting for the purge of the old copy on %s", r->job.user,
                 r->job.dest);
        return STEP_LATER;
    } else if (rc == 0) {
        /* Never delete or overwrite a live mailbox (Q252869). */
        set_err(r, "%s already has a %s mailbox for %s", r->job.dest,
                store_mbox_state_str(mb.state), r->job.user);
        return STEP_FAIL;
    }
    if (rc < 0)
        return io_fail(r, "destination mailbox");
    if (token_stale(r, rc, why, "provision", r->job.dest))
        return STEP_LOST;
    if (rc == SYNC_NO) {
        set_err(r, "cannot provision on %s: %s", r->job.dest, why);
        return STEP_FAIL;
    }
    r->job.checkpoint = 0;
    r->job.msgs_done = r->job.bytes_done = 0;
    return next_phase(r, "copy");
}

/* Delivery ids streamed from the source and recorded on the destination
 * SYNC_BATCH_MAX at a time (one commit each). */
struct id_copy {
    struct run *r;
    size_t n;
    int rc;
    struct sync_delivery ds[SYNC_BATCH_MAX];
    int rcs[SYNC_BATCH_MAX];
    const char *whys[SYNC_BATCH_MAX];
};

static int id_flush(struct id_copy *c)
{
    struct run *r = c->r;
    if (c->n == 0)
        return 0;
    /* Per item, SYNC_NO is "already recorded there" (or refused): nothing
     * to keep. */
    int rc = r->dst->ops->delivery_add_batch(r->dst, r->job.user, c->ds, c->n, c->rcs, c->whys);
    for (size_t i = 0; rc == 0 && i < c->n; i++)
        if (token_stale(r, c->rcs[i], c->whys[i], "delivery ids", r->job.dest))
            rc = -1;
    c->n = 0;
    if (rc < 0)
        c->rc = -1;
    return rc;
}

static int id_one(void *ctx, const struct sync_delivery *d)
{
    struct id_copy *c = ctx;
    c->ds[c->n++] = *d;
    return c->n == SYNC_BATCH_MAX && id_flush(c) < 0 ? 1 : 0;
}

/* Copies the delivery ids of the source's messages with a modseq in
 * (since, upto] (and those with no message there), so that a delivery
 * retried after the switch stays a duplicate. */
static enum step copy_deliveries(struct run *r, uint64_t since, uint64_t upto)
{
    const char *why = "";
    struct id_copy *c = xcalloc(1, sizeof(*c));
    c->r = r;
    int rc = r->src->ops->deliveries_each(r->src, r->job.user, since, upto, id_one, c, &why);
    if (rc == 0 && id_flush(c) < 0)
        rc = -1;
    if (c->rc < 0)
        rc = -1;
    free(c);
    if (r->stale)
        return STEP_LOST;
    if (rc < 0)
        return io_fail(r, "delivery ids");
    return STEP_NEXT;
}

/* Before the fence, while the source is live: the ids of everything copied
 * so far, so that the pause copies only those of the final delta. */
static enum step ids_before_fence(struct run *r)
{
    if (connect_all(r) < 0)
        return STEP_LATER;
    uint64_t upto = r->job.checkpoint;
    enum step s = copy_deliveries(r, 0, upto);
    if (s != STEP_NEXT)
        return s;
    r->ids_copied = true;
    r->ids_upto = upto;
    return STEP_NEXT;
}

static enum step phase_copy(struct run *r)
{
    enum step s = sync_pass(r, r->job.checkpoint, 0, NULL, NULL);
    if (s != STEP_NEXT)
        return s;
    return next_phase(r, "catchup");
}

/* Catch-up runs against a live source. Found fenced at the job's epoch, it
 * is an unfence that a crash interrupted (unfence() persists "catchup"
 * first): finish it. 0, or -1 on transport trouble. */
static int source_live_again(struct run *r)
{
    const char *why = "";
    struct store_mailbox mb;
    if (connect_src(r) < 0)
        return -1;
    int rc = r->src->ops->mailbox_get(r->src, r->job.user, &mb, &why);
    if (rc < 0)
        return -1;
    if (rc == 0 && mb.state == STORE_MBOX_FENCED && mb.epoch == r->job.epoch) {
        log_info(r->ctx, "%s: the source is still fenced from an earlier cutover: unfencing",
                 r->job.user);
        if (r->src->ops->mailbox_state(r->src, r->job.user, STORE_MBOX_FENCED, STORE_MBOX_ACTIVE,
                                       r->job.epoch, NULL, &why) < 0)
            return -1;
    }
    struct dir_user u;
    if (dir_user_get(r->env->dir, r->job.user, &u) == DIR_OK && u.state == DIR_USER_FINALIZING)
        (void)user_state(r, DIR_USER_FINALIZING, DIR_USER_MOVING);
    return 0;
}

static enum step phase_catchup(struct run *r)
{
    if (source_live_again(r) < 0)
        return io_fail(r, "source state");
    for (int pass = 0; pass < CATCHUP_PASSES_MAX; pass++) {
        uint64_t n = 0;
        enum step s = sync_pass(r, r->job.checkpoint, 0, &n, NULL);
        if (s != STEP_NEXT)
            return s;
        s = maybe_save(r);
        if (s != STEP_NEXT)
            return s;
        if (n <= r->env->catchup_delta)
            break;
    }
    if ((r->job.options & DIR_JOB_OPT_SUSPEND) && !(r->job.options & DIR_JOB_OPT_COMPLETE))
        return next_phase(r, "ready");
    enum step s = ids_before_fence(r);
    if (s != STEP_NEXT)
        return s;
    return next_phase(r, "fence");
}

/* Suspended before the cutover: keep in step until `tern move complete`. */
static enum step phase_ready(struct run *r)
{
    enum step s = sync_pass(r, r->job.checkpoint, 0, NULL, NULL);
    if (s != STEP_NEXT)
        return s;
    int saved = job_save(r);
    if (saved == 1)
        return STEP_ABORT;
    if (saved == -2)
        return STEP_LOST;
    if (r->job.options & DIR_JOB_OPT_COMPLETE) {
        s = ids_before_fence(r);
        if (s != STEP_NEXT)
            return s;
        return next_phase(r, "fence");
    }
    return STEP_LATER;
}

static enum step phase_fence(struct run *r)
{
    const char *why = "";
    if (r->job.fenced_at == 0) {
        /* A new cutover. Its start is persisted before the source is
         * fenced, so whoever resumes the job measures the fence from no
         * later than it began (the budget bounds it across crashes). */
        if (r->job.cutovers >= CUTOVERS_MAX) {
            set_err(r, "%u cutovers did not fit the %u ms budget ([mover] cutover_budget_ms)",
                    r->job.cutovers, r->env->cutover_budget_ms);
            return STEP_FAIL;
        }
        r->job.fenced_at = time_now_ms();
        r->job.cutovers++;
        int sv = job_save(r);
        if (sv == 1)
            return STEP_ABORT;
        if (sv == -2)
            return STEP_LOST;
        if (sv < 0)
            return STEP_LATER;
    }
    if (user_state(r, DIR_USER_MOVING, DIR_USER_FINALIZING) < 0)
        return STEP_FAIL;
    if (connect_all(r) < 0)
        return STEP_LATER;
    /* From here the source refuses every change: deliveries get "451 4.2.1
     * move in progress" and are parked by the mta. */
    int rc = r->src->ops->mailbox_state(r->src, r->job.user, STORE_MBOX_ACTIVE, STORE_MBOX_FENCED,
                                        r->job.epoch, NULL, &why);
    if (rc == SYNC_NO && strcmp(why, "conflict") == 0) {
        struct store_mailbox mb;
        rc = r->src->ops->mailbox_get(r->src, r->job.user, &mb, &why);
        if (rc == 0 && mb.state != STORE_MBOX_FENCED) {
            set_err(r, "source mailbox is %s, cannot fence", store_mbox_state_str(mb.state));
            return STEP_FAIL;
        }
    }
    if (rc < 0)
        return io_fail(r, "fence");
    if (token_stale(r, rc, why, "fence", r->job.source))
        return STEP_LOST;
    if (rc == SYNC_NO) {
        set_err(r, "cannot fence: %s", why);
        return STEP_FAIL;
    }
    r->fenced_here = true;
    return next_phase(r, "final");
}

/* Unfences the source and goes back to catch-up: the cutover did not fit
 * its budget. Needs only the source. */
static enum step unfence(struct run *r, const char *why_over)
{
    const char *why = "";
    log_warn(r->ctx, "%s: cutover %u %s (budget %u ms): unfencing, catching up, trying again",
             r->job.user, r->job.cutovers, why_over, r->env->cutover_budget_ms);
    /* The phase goes back first: whoever resumes this job after a crash
     * must fence again before any final sync, never switch from a source
     * that was live again; catchup finishes an unfence a crash cut short. */
    r->job.fenced_at = 0;
    r->fenced_here = false;
    enum step s = next_phase(r, "catchup");
    if (s != STEP_NEXT)
        return s;
    set_err(r, "cutover %u %s; retrying", r->job.cutovers, why_over);
    if (connect_src(r) < 0)
        return STEP_LATER;
    int rc = r->src->ops->mailbox_state(r->src, r->job.user, STORE_MBOX_FENCED, STORE_MBOX_ACTIVE,
                                        r->job.epoch, NULL, &why);
    if (rc < 0)
        return io_fail(r, "unfence");
    (void)user_state(r, DIR_USER_FINALIZING, DIR_USER_MOVING);
    return STEP_NEXT;
}

/* True if the source has been fenced longer than the budget allows. A run
 * that fenced it itself goes straight through final (whose sync has the
 * budget as its deadline), verify and switch; a run that resumes a cutover
 * (after a failure or a crash) checks this before each step. */
static bool fence_overdue(const struct run *r)
{
    return r->job.fenced_at != 0 &&
           time_now_ms() - r->job.fenced_at > (int64_t)r->env->cutover_budget_ms;
}

static enum step phase_final(struct run *r)
{
    bool over = false;
    if (r->job.fenced_at == 0) /* a job of an older mover: fenced just now */
        r->job.fenced_at = time_now_ms();
    if (fence_overdue(r))
        return unfence(r, "was over budget before its final sync");
    if (connect_all(r) < 0)
        return STEP_LATER;
    int f = source_fenced(r);
    if (f < 0)
        return io_fail(r, "source state");
    if (f > 0)
        return next_phase(r, "fence");
    /* The final delta must fit what is left of the budget since the fence. */
    int64_t left = r->job.fenced_at + (int64_t)r->env->cutover_budget_ms - time_now_ms();
    int64_t deadline = time_mono_ms() + (left > 1 ? left : 1);
    enum step s = sync_pass(r, r->job.checkpoint, deadline, NULL, &over);
    if (s != STEP_NEXT)
        return s;
    if (over)
        return unfence(r, "exceeded its budget in the final sync");
    if (connect_all(r) < 0)
        return STEP_LATER;
    /* UIDNEXT moves without a folder record when a message is appended and
     * expunged between passes: align every folder from the frozen source
     * (with the folder's modseq, which such an append does not change). */
    struct sync_folder *fl = NULL;
    size_t n = 0;
    const char *why = "";
    int rc = r->src->ops->folders(r->src, r->job.user, &fl, &n, &why);
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = r->dst->ops->folder_ensure_at(r->dst, r->job.user, fl[i].name, fl[i].uidvalidity,
                                           fl[i].uidnext, fl[i].modseq, &why);
    free(fl);
    if (rc < 0)
        return io_fail(r, "folder UIDNEXT");
    if (token_stale(r, rc, why, "folder UIDNEXT", r->job.dest))
        return STEP_LOST;
    if (rc == SYNC_NO && strcmp(why, "notlive") == 0)
        return dest_not_staged(r, "folder UIDNEXT");
    /* Only the final delta's ids if the others were copied before the
     * fence by this run; all of them after a restart. */
    s = copy_deliveries(r, r->ids_copied ? r->ids_upto : 0, UINT64_MAX);
    if (s != STEP_NEXT)
        return s;
    return next_phase(r, "verify");
}

/* 0 equal, 1 different (r->err says how), -1 transport trouble. */
static int compare(struct run *r)
{
    struct sync_digest *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    const char *why = "";
    int rc = r->src->ops->digest(r->src, r->job.user, &a, &na, &why);
    if (rc == 0)
        rc = r->dst->ops->digest(r->dst, r->job.user, &b, &nb, &why);
    if (rc != 0) {
        free(a);
        free(b);
        return -1;
    }
    int diff = 0;
    if (na != nb) {
        set_err(r, "verify: %zu folders on %s, %zu on %s", na, r->job.source, nb, r->job.dest);
        diff = 1;
    }
    for (size_t i = 0; !diff && i < na; i++) {
        if (strcmp(a[i].name, b[i].name) != 0 || a[i].uidvalidity != b[i].uidvalidity ||
            a[i].uidnext != b[i].uidnext || a[i].messages != b[i].messages ||
            memcmp(a[i].digest, b[i].digest, SHA256_LEN) != 0) {
            set_err(r, "verify: folder %s differs (%llu vs %llu messages)", a[i].name,
                    (unsigned long long)a[i].messages, (unsigned long long)b[i].messages);
            diff = 1;
        }
    }
    free(a);
    free(b);
    /* The modseq counters (HIGHESTMODSEQ) should be equal too (docs/move.md
     * "What clients keep"); a difference does not endanger a message, so it
     * is reported, not a reason to stay. */
    struct store_mailbox sm, dm;
    if (diff == 0 && r->src->ops->mailbox_get(r->src, r->job.user, &sm, &why) == 0 &&
        r->dst->ops->mailbox_get(r->dst, r->job.user, &dm, &why) == 0 && sm.modseq != dm.modseq)
        log_warn(r->ctx, "%s: verify: modseq %llu on %s, %llu on %s", r->job.user,
                 (unsigned long long)sm.modseq, r->job.source, (unsigned long long)dm.modseq,
                 r->job.dest);
    return diff;
}

static enum step phase_verify(struct run *r)
{
    if (!r->fenced_here && fence_overdue(r))
        return unfence(r, "was over budget when verify resumed");
    if (connect_all(r) < 0)
        return STEP_LATER;
    int f = source_fenced(r);
    if (f < 0)
        return io_fail(r, "source state");
    if (f > 0)
        return next_phase(r, "fence");
    int c = compare(r);
    if (c < 0)
        return io_fail(r, "verify");
    if (c == 1) {
        /* Repair once with a full pass from the (immutable) source. */
        log_warn(r->ctx, "%s: %s; repairing with a full sync", r->job.user, r->err);
        enum step s = sync_pass(r, 0, 0, NULL, NULL);
        if (s != STEP_NEXT)
            return s;
        c = compare(r);
        if (c < 0)
            return io_fail(r, "verify");
        if (c == 1)
            return STEP_FAIL; /* never switch on a mismatch */
    }
    return next_phase(r, "switch");
}

static enum step phase_switch(struct run *r)
{
    const char *why = "";
    uint64_t e = r->job.epoch;
    /* The one compare-and-set that changes the home (brief invariant 5). */
    for (int attempt = 0;; attempt++) {
        struct dir_user u;
        enum dir_status ds = dir_user_get(r->env->dir, r->job.user, &u);
        if (ds != DIR_OK) {
            set_err(r, "directory unavailable at the switch");
            return ds == DIR_NOTFOUND ? STEP_FAIL : STEP_LATER;
        }
        if (strcmp(u.home, r->job.dest) == 0 && u.epoch == e + 1)
            break; /* done before a crash */
        if (strcmp(u.home, r->job.source) != 0 || u.epoch != e || u.state != DIR_USER_FINALIZING) {
            set_err(r, "user %s changed under the move (home %s, epoch %llu, %s)", u.address,
                    u.home, (unsigned long long)u.epoch, dir_user_state_str(u.state));
            /* The home did not change: nothing to keep going for. */
            str_copy(r->job.phase, "aborting", sizeof(r->job.phase));
            return STEP_ABORT;
        }
        if (attempt == 0) {
            if (!r->fenced_here && fence_overdue(r))
                return unfence(r, "was over budget when the switch resumed");
            if (connect_all(r) < 0)
                return STEP_LATER;
            int f = source_fenced(r);
            if (f < 0)
                return io_fail(r, "source state");
            if (f > 0)
                return next_phase(r, "fence");
        }
        str_copy(u.home, r->job.dest, sizeof(u.home));
        u.epoch = e + 1;
        u.state = DIR_USER_ACTIVE;
        ds = dir_user_update(r->env->dir, &u);
        if (ds == DIR_OK)
            break;
        if (ds == DIR_TEMPFAIL || attempt >= 10)
            return STEP_LATER;
    }
    log_info(r->ctx, "%s: directory switched to %s at epoch %llu", r->job.user, r->job.dest,
             (unsigned long long)(e + 1));
    /* Fault injection (tests): after the home changed, before the stores
     * know it; then between the two store state changes; then after both. */
    util_fault_point("move.switch.cas_done");
    if (connect_all(r) < 0)
        return STEP_LATER;
    struct store_mailbox mb;
    int rc = r->dst->ops->mailbox_state(r->dst, r->job.user, STORE_MBOX_STAGED, STORE_MBOX_ACTIVE,
                                        e + 1, NULL, &why);
    if (rc == SYNC_NO && strcmp(why, "conflict") == 0) {
        /* Only "already done by a run before a crash" is acceptable. */
        rc = r->dst->ops->mailbox_get(r->dst, r->job.user, &mb, &why);
        if (rc == 0 && !(mb.state == STORE_MBOX_ACTIVE && mb.epoch == e + 1)) {
            set_err(r, "destination mailbox is %s at epoch %llu after the switch",
                    store_mbox_state_str(mb.state), (unsigned long long)mb.epoch);
            rc = SYNC_NO;
        }
    }
    if (rc == 0) {
        util_fault_point("move.switch.dst_active");
        rc = r->src->ops->mailbox_state(r->src, r->job.user, STORE_MBOX_FENCED, STORE_MBOX_MOVED,
                                        e + 1, r->job.dest, &why);
        if (rc == SYNC_NO && strcmp(why, "conflict") == 0) {
            rc = r->src->ops->mailbox_get(r->src, r->job.user, &mb, &why);
            if (rc == 0 && !(mb.state == STORE_MBOX_MOVED && mb.epoch == e + 1 &&
                             strcmp(mb.moved_to, r->job.dest) == 0)) {
                set_err(r, "source mailbox is %s at epoch %llu after the switch",
                        store_mbox_state_str(mb.state), (unsigned long long)mb.epoch);
                log_error(r->ctx, "%s: %s", r->job.user, r->err);
                rc = SYNC_NO;
            }
        }
    }
    if (rc < 0)
        return io_fail(r, "switch");
    if (token_stale(r, rc, why, "switch", r->job.dest))
        return STEP_LOST;
    if (rc == SYNC_NO) {
        set_err(r, "after the switch: %s", why);
        return STEP_LATER;
    }
    util_fault_point("move.switch.src_moved");
    r->job.fenced_at = 0; /* the source is moved now, no longer fenced */
    r->job.retain_until = time_now_ms() / 1000 + r->env->retention;
    return next_phase(r, "retention");
}

/* Purges the source copy once it is safe by every rule (invariant 6). */
static enum step phase_retention(struct run *r)
{
    const char *why = "";
    if (time_now_ms() / 1000 < r->job.retain_until)
        return STEP_LATER;
    struct dir_user u;
    enum dir_status ds = dir_user_get(r->env->dir, r->job.user, &u);
    if (ds == DIR_NOTFOUND) {
        /* Missing information never deletes anything (Q252869). */
        set_err(r, "user %s left the directory: the copy on %s is kept", r->job.user,
                r->job.source);
        return next_phase(r, "done");
    }
    if (ds != DIR_OK)
        return STEP_LATER;
    if (strcmp(u.home, r->job.source) == 0 || u.epoch <= r->job.epoch) {
        set_err(r, "directory does not show a later home: the copy on %s is kept", r->job.source);
        return next_phase(r, "done");
    }
    /* A later move reusing the old copy as its staged destination: wait
     * for it. If it completes, the copy is a home again (nothing to purge);
     * if it aborts, the copy is restored as this move left it. */
    struct store_mailbox old;
    if (connect_src(r) < 0)
        return STEP_LATER;
    int rc = r->src->ops->mailbox_get(r->src, r->job.user, &old, &why);
    if (rc < 0)
        return io_fail(r, "old copy");
    if (rc == 0 && old.state == STORE_MBOX_STAGED) {
        set_err(r, "the copy on %s is staged for another move: waiting for it", r->job.source);
        return STEP_LATER;
    }
    /* Re-verify the current home: live at the directory's epoch, and every
     * message's metadata readable (the digest walks them all). */
    char e[200];
    struct sync *home = r->env->connect(r->env->ctx, u.home, e, sizeof(e));
    if (home == NULL) {
        set_err(r, "retention: cannot reach %s: %s", u.home, e);
        return STEP_LATER;
    }
    struct store_mailbox mb;
    struct sync_digest *d = NULL;
    size_t nd = 0;
    rc = home->ops->mailbox_get(home, r->job.user, &mb, &why);
    bool ok = rc == 0 && mb.state == STORE_MBOX_ACTIVE && mb.epoch == u.epoch;
    if (ok)
        ok = home->ops->digest(home, r->job.user, &d, &nd, &why) == 0;
    free(d);
    sync_close(&home);
    if (!ok) {
        set_err(r, "retention: %s does not re-verify; the copy on %s is kept", u.home,
                r->job.source);
        return STEP_LATER;
    }
    if (connect_all(r) < 0)
        return STEP_LATER;
    /* Only the copy this job left behind: a later move may have reused the
     * old copy, moved away again and left a newer one in its grace period. */
    rc = r->src->ops->mailbox_get(r->src, r->job.user, &old, &why);
    if (rc < 0)
        return io_fail(r, "old copy");
    if (rc == SYNC_NO || !(old.state == STORE_MBOX_DELETING ||
                           (old.state == STORE_MBOX_MOVED && old.epoch == r->job.epoch + 1 &&
                            strcmp(old.moved_to, r->job.dest) == 0))) {
        log_info(r->ctx, "%s: the copy on %s is not the one this move left: nothing to purge",
                 r->job.user, r->job.source);
        return next_phase(r, "done");
    }
    rc = r->src->ops->mailbox_state(r->src, r->job.user, STORE_MBOX_MOVED, STORE_MBOX_DELETING,
                                    r->job.epoch + 1, NULL, &why);
    if (rc == SYNC_NO) {
        /* Not the moved copy any more (reused by a later move, or gone). */
        struct store_mailbox cur;
        if (r->src->ops->mailbox_get(r->src, r->job.user, &cur, &why) == 0 &&
            cur.state == STORE_MBOX_DELETING)
            rc = 0;
        else {
            log_info(r->ctx, "%s: the copy on %s is no longer the moved one: nothing to purge",
                     r->job.user, r->job.source);
            return next_phase(r, "done");
        }
    }
    if (rc == 0)
        rc = r->src->ops->mailbox_purge(r->src, r->job.user, &why);
    if (rc < 0)
        return io_fail(r, "purge");
    log_info(r->ctx, "%s: purged the old copy on %s", r->job.user, r->job.source);
    return next_phase(r, "done");
}

/* The state a retained copy on this job's destination had before the job
 * reused it: moved(to, epoch) as left by the last move away from that store
 * that switched — the user's home at the next epoch. (Not simply this job's
 * source and epoch: the user may have moved on since, s1 → s2 → s3 → s1.)
 * The directory's job history has it; without such a job, (source, job
 * epoch). 0, or -1 if the directory cannot answer. */
static int retained_state(struct run *r, char *to, size_t tolen, uint64_t *epoch_r)
{
    struct dir_job *jobs = NULL;
    size_t n = 0;
    if (dir_job_list(r->env->dir, &jobs, &n) != DIR_OK) {
        set_err(r, "directory unavailable");
        return -1;
    }
    str_copy(to, r->job.source, tolen);
    *epoch_r = r->job.epoch;
    uint64_t best = 0;
    for (size_t i = 0; i < n; i++) {
        const struct dir_job *j = &jobs[i];
        if (j->id == r->job.id || j->kind != DIR_JOB_MOVE || strcmp(j->user, r->job.user) != 0 ||
            strcmp(j->source, r->job.dest) != 0 ||
            (strcmp(j->phase, "retention") != 0 && strcmp(j->phase, "done") != 0))
            continue;
        if (j->epoch + 1 > best && j->epoch + 1 <= r->job.epoch) {
            best = j->epoch + 1;
            str_copy(to, j->dest, tolen);
        }
    }
    if (best != 0)
        *epoch_r = best;
    free(jobs);
    return 0;
}

/* Before the switch: the source stays the only home; the staged copy goes. */
static enum step phase_abort(struct run *r, const char *final_phase)
{
    const char *why = "";
    struct dir_user u;
    enum dir_status ds = dir_user_get(r->env->dir, r->job.user, &u);
    if (ds == DIR_TEMPFAIL)
        return STEP_LATER;
    if (ds == DIR_OK && strcmp(u.home, r->job.dest) == 0 && u.epoch == r->job.epoch + 1) {
        /* The switch happened: too late to abort; finish the move. */
        log_warn(r->ctx, "%s: abort requested after the switch: completing instead", r->job.user);
        return next_phase(r, "switch");
    }
    if (ds == DIR_OK && strcmp(u.home, r->job.source) == 0 && u.state != DIR_USER_ACTIVE) {
        u.state = DIR_USER_ACTIVE;
        if (dir_user_update(r->env->dir, &u) != DIR_OK)
            return STEP_LATER; /* try again */
    }
    if (connect_all(r) < 0)
        return STEP_LATER;
    int rc = r->src->ops->mailbox_state(r->src, r->job.user, STORE_MBOX_FENCED, STORE_MBOX_ACTIVE,
                                        r->job.epoch, NULL, &why);
    if (rc < 0)
        return io_fail(r, "unfence");
    struct store_mailbox mb;
    rc = r->dst->ops->mailbox_get(r->dst, r->job.user, &mb, &why);
    if (rc == 0 && mb.state == STORE_MBOX_STAGED && (r->job.options & DIR_JOB_OPT_REUSED)) {
        /* It was the copy an earlier move kept: it goes back to exactly the
         * state that move left, which is what its retention purges by. */
        char to[MAIL_NAME_MAX + 1];
        uint64_t epoch;
        if (retained_state(r, to, sizeof(to), &epoch) < 0)
            return STEP_LATER;
        rc = r->dst->ops->mailbox_state(r->dst, r->job.user, STORE_MBOX_STAGED, STORE_MBOX_MOVED,
                                        epoch, to, &why);
        mb.state = STORE_MBOX_MOVED;
    } else if (rc == 0 && mb.state == STORE_MBOX_STAGED)
        rc = r->dst->ops->mailbox_state(r->dst, r->job.user, STORE_MBOX_STAGED, STORE_MBOX_DELETING,
                                        mb.epoch, NULL, &why);
    if (rc == 0 && (mb.state == STORE_MBOX_STAGED || mb.state == STORE_MBOX_DELETING))
        rc = r->dst->ops->mailbox_purge(r->dst, r->job.user, &why);
    if (rc < 0)
        return io_fail(r, "drop staged copy");
    r->job.fenced_at = 0;
    str_copy(r->job.phase, final_phase, sizeof(r->job.phase));
    int s = job_save(r);
    if (s == -2)
        return STEP_LOST;
    if (s < 0)
        return STEP_LATER;
    log_info(r->ctx, "%s: move %s; %s stays the home", r->job.user, final_phase, r->job.source);
    return STEP_NEXT;
}

/* ---- the loop ------------------------------------------------------------ */

static enum step phase_queued(struct run *r)
{
    return next_phase(r, "provision");
}

static enum step phase_aborting(struct run *r)
{
    return phase_abort(r, "aborted");
}

/* Every persisted phase and the function that runs it (docs/move.md). */
static const struct {
    const char *name;
    enum step (*run)(struct run *r);
} move_phases[] = {
    {"queued", phase_queued},       {"provision", phase_provision}, {"copy", phase_copy},
    {"catchup", phase_catchup},     {"ready", phase_ready},         {"fence", phase_fence},
    {"final", phase_final},         {"verify", phase_verify},       {"switch", phase_switch},
    {"retention", phase_retention}, {"aborting", phase_aborting},
};

int move_claim(const struct move_env *env, uint64_t id)
{
    struct dir_job j;
    if (dir_job_get(env->dir, id, &j) != DIR_OK)
        return -1;
    int64_t now = time_now_ms();
    if (j.lease_owner[0] != '\0' && strcmp(j.lease_owner, env->owner) != 0 && j.lease_expires > now)
        return 1;
    str_copy(j.lease_owner, env->owner, sizeof(j.lease_owner));
    j.lease_expires = now + env->lease_ms;
    /* A new fencing token with every claim, in the same compare-and-set:
     * (id, claims) only grows, so a mover that claimed the job before is
     * refused by every store this one presented its token to. */
    j.claims++;
    enum dir_status st = dir_job_update(env->dir, &j);
    return st == DIR_OK ? 0 : st == DIR_CONFLICT ? 1 : -1;
}

enum move_result move_run(const struct move_env *env, uint64_t id)
{
    struct run r;
    memset(&r, 0, sizeof(r));
    r.env = env;
    snprintf(r.ctx, sizeof(r.ctx), "move:%llu", (unsigned long long)id);
    if (dir_job_get(env->dir, id, &r.job) != DIR_OK)
        return MOVE_LATER;
    if (strcmp(r.job.lease_owner, env->owner) != 0)
        return MOVE_LOST;
    r.last_save_ms = time_mono_ms();
    str_copy(r.err, r.job.last_error, sizeof(r.err));
    enum move_result result = MOVE_LATER;
    for (;;) {
        const char *ph = r.job.phase;
        if (!move_phase_active(ph) && strcmp(ph, "aborting") != 0) {
            result = MOVE_FINISHED;
            break;
        }
        /* Fault injection (tests): "crash:move.PHASE" dies before PHASE. */
        char point[DIR_PHASE_MAX + 8];
        snprintf(point, sizeof(point), "move.%s", ph);
        util_fault_point(point);
        if (env->before_phase != NULL && env->before_phase(env->ctx, ph) != 0) {
            result = MOVE_STOPPED;
            break;
        }
        enum step s = STEP_FAIL;
        size_t k;
        for (k = 0; k < ARRAY_SIZE(move_phases); k++)
            if (strcmp(ph, move_phases[k].name) == 0)
                break;
        if (k < ARRAY_SIZE(move_phases))
            s = move_phases[k].run(&r);
        else
            set_err(&r, "unknown phase '%s'", ph);
        if (r.stale) {
            /* Another mover claimed the job: nothing more is ours to write,
             * not even the job row. */
            result = MOVE_LOST;
            break;
        }
        if (s == STEP_NEXT)
            continue;
        if (s == STEP_ABORT) {
            str_copy(r.job.phase, "aborting", sizeof(r.job.phase));
            continue;
        }
        if (s == STEP_FAIL) {
            if (move_phase_abortable(r.job.phase) || strcmp(r.job.phase, "aborting") == 0) {
                /* Persist the abort (with the reason) before cleaning up, so
                 * a retry after a crash continues the abort, never the
                 * phase that failed. */
                str_copy(r.job.phase, "aborting", sizeof(r.job.phase));
                int sv = job_save(&r);
                if (sv == -2) {
                    result = MOVE_LOST;
                    break;
                }
                enum step a = sv == 0 ? phase_abort(&r, "failed") : STEP_LATER;
                if (a == STEP_NEXT) {
                    result = MOVE_FINISHED;
                    break;
                }
                result = a == STEP_LOST ? MOVE_LOST : MOVE_LATER;
                break;
            }
            /* After the switch nothing is undone: wait and try again. */
            job_save(&r);
            result = MOVE_LATER;
            break;
        }
        if (s == STEP_LOST) {
            result = MOVE_LOST;
            break;
        }
        /* STEP_LATER: record why, keep the lease fresh, come back. */
        if (job_save(&r) == -2)
            result = MOVE_LOST;
        else
            result = MOVE_LATER;
        break;
    }
    drop_transports(&r);
    return result;
}
