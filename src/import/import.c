/* import — the import job engine: phases, passes, exactly-once records. See
 * import.h (the contract) and docs/import.md. */
#include "import/import.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "import/import_private.h"
#include "mail/mail.h"

#define SAVE_EVERY_MS   1000
#define BATCH_MSGS      128
#define BATCH_BYTES     (8u << 20)
#define RETRY_MS        5000 /* a pass that could not run: try again after */
#define UID_ROUNDS      8    /* appends retried after "exists" (a UID taken meanwhile) */
#define MSG_MAX_DEFAULT (64u << 20)

enum step {
    STEP_NEXT,  /* done; job.phase names the next phase */
    STEP_LATER, /* wait: run again when due (job.checkpoint) */
    STEP_FAIL,  /* cannot go on: the job ends "failed" */
    STEP_LOST,  /* the lease is someone else's */
    STEP_STOP,  /* asked to stop */
};

/* ---- what the destination holds: import records ----------------------------- */

/* A destination message some import made (or a link to one). */
struct dmsg {
    uint32_t folder; /* index into names */
    uint32_t uid;
    uint8_t ck[IMPORT_CK_LEN];
    uint32_t claim;     /* the pass that found its identity in the source */
    uint32_t next_same; /* next dmsg with the same folder and ck (+1; 0 = none) */
};

struct ident {
    uint8_t ik[IMPORT_IK_LEN];
    uint32_t dmsg;
    bool mine; /* recorded by the job that runs now */
};

/* Open addressing over indices (+1; 0 = empty). */
struct hidx {
    uint32_t *slot;
    size_t cap;
};

struct records {
    bool loaded;
    char **names;
    size_t n_names;
    struct dmsg *m;
    size_t n_m;
    struct ident *id;
    size_t n_id;
    struct hidx by_ik;  /* -> id */
    struct hidx by_msg; /* (folder, uid) -> m */
    struct hidx by_ck;  /* (folder, ck) -> first m of the chain */
    uint32_t claim;     /* the current pass */
    /* GUIDs in the destination (only after a crash: see reconcile) */
    struct recon {
        uint8_t guid[STORE_GUID_LEN];
        uint32_t folder, uid;
    } * rc;
    size_t n_rc;
    struct hidx by_guid;
};

static uint64_t mix(uint64_t h)
{
    h ^= h >> 33;
    h *= UINT64_C(0xff51afd7ed558ccd);
    h ^= h >> 33;
    h *= UINT64_C(0xc4ceb9fe1a85ec53);
    h ^= h >> 33;
    return h;
}

static uint64_t bytes_hash(const uint8_t *p, size_t n)
{
    uint64_t h = 0;
    memcpy(&h, p, n < 8 ? n : 8);
    return mix(h);
}

static void hidx_free(struct hidx *h)
{
    free(h->slot);
    h->slot = NULL;
    h->cap = 0;
}

/* Rebuilds h for n entries with hash fn. */
typedef uint64_t hidx_hash_fn(const struct records *r, uint32_t i);

static void hidx_insert(struct hidx *h, uint64_t hash, uint32_t i)
{
    size_t k = hash & (h->cap - 1);
    while (h->slot[k] != 0)
        k = (k + 1) & (h->cap - 1);
    h->slot[k] = i + 1;
}

static void hidx_grow(struct hidx *h, const struct records *r, size_t n, hidx_hash_fn *fn)
{
    if (h->cap >= 2 * (n + 1) && h->cap > 0)
        return;
    size_t cap = 64;
    while (cap < 4 * (n + 1))
        cap *= 2;
    free(h->slot);
    h->slot = xcalloc(cap, sizeof(*h->slot));
    h->cap = cap;
    for (size_t i = 0; i < n; i++)
        hidx_insert(h, fn(r, (uint32_t)i), (uint32_t)i);
}

static uint64_t hash_ik(const struct records *r, uint32_t i)
{
    return bytes_hash(r->id[i].ik, IMPORT_IK_LEN);
}

static uint64_t hash_msg_key(uint32_t folder, uint32_t uid)
{
    return mix((uint64_t)folder << 32 | uid);
}

static uint64_t hash_msg(const struct records *r, uint32_t i)
{
    return hash_msg_key(r->m[i].folder, r->m[i].uid);
}

static uint64_t hash_ck_key(uint32_t folder, const uint8_t *ck)
{
    return mix(bytes_hash(ck, IMPORT_CK_LEN) ^ folder);
}

static uint64_t hash_ck(const struct records *r, uint32_t i)
{
    return hash_ck_key(r->m[i].folder, r->m[i].ck);
}

static uint64_t hash_guid(const struct records *r, uint32_t i)
{
    return bytes_hash(r->rc[i].guid, STORE_GUID_LEN);
}

static void records_free(struct records *r)
{
    for (size_t i = 0; i < r->n_names; i++)
        free(r->names[i]);
    free(r->names);
    free(r->m);
    free(r->id);
    free(r->rc);
    hidx_free(&r->by_ik);
    hidx_free(&r->by_msg);
    hidx_free(&r->by_ck);
    hidx_free(&r->by_guid);
    memset(r, 0, sizeof(*r));
}

static uint32_t name_index(struct records *r, const char *name)
{
    for (size_t i = r->n_names; i-- > 0;)
        if (strcmp(r->names[i], name) == 0)
            return (uint32_t)i;
    r->names = xrealloc(r->names, (r->n_names + 1) * sizeof(*r->names));
    r->names[r->n_names] = xstrdup(name);
    return (uint32_t)r->n_names++;
}

static const struct ident *find_ik(const struct records *r, const uint8_t *ik)
{
    if (r->by_ik.cap == 0)
        return NULL;
    size_t k = bytes_hash(ik, IMPORT_IK_LEN) & (r->by_ik.cap - 1);
    for (; r->by_ik.slot[k] != 0; k = (k + 1) & (r->by_ik.cap - 1)) {
        const struct ident *e = &r->id[r->by_ik.slot[k] - 1];
        if (memcmp(e->ik, ik, IMPORT_IK_LEN) == 0)
            return e;
    }
    return NULL;
}

static int64_t find_msg(const struct records *r, uint32_t folder, uint32_t uid)
{
    if (r->by_msg.cap == 0)
        return -1;
    size_t k = hash_msg_key(folder, uid) & (r->by_msg.cap - 1);
    for (; r->by_msg.slot[k] != 0; k = (k + 1) & (r->by_msg.cap - 1)) {
        const struct dmsg *d = &r->m[r->by_msg.slot[k] - 1];
        if (d->folder == folder && d->uid == uid)
            return r->by_msg.slot[k] - 1;
    }
    return -1;
}

/* The first dmsg of (folder, ck)'s chain, or -1. */
static int64_t find_ck(const struct records *r, uint32_t folder, const uint8_t *ck)
{
    if (r->by_ck.cap == 0)
        return -1;
    size_t k = hash_ck_key(folder, ck) & (r->by_ck.cap - 1);
    for (; r->by_ck.slot[k] != 0; k = (k + 1) & (r->by_ck.cap - 1)) {
        const struct dmsg *d = &r->m[r->by_ck.slot[k] - 1];
        if (d->folder == folder && memcmp(d->ck, ck, IMPORT_CK_LEN) == 0)
            return r->by_ck.slot[k] - 1;
    }
    return -1;
}

/* Adds a record: the identity ik names destination message (folder, uid)
 * of content ck. Returns the dmsg index. */
static uint32_t records_add(struct records *r, const uint8_t *ik, const uint8_t *ck,
                            const char *folder, uint32_t uid, bool mine)
{
    uint32_t fi = name_index(r, folder);
    int64_t mi = find_msg(r, fi, uid);
    if (mi < 0) {
        r->m = xrealloc(r->m, (r->n_m + 1) * sizeof(*r->m));
        struct dmsg *d = &r->m[r->n_m];
        memset(d, 0, sizeof(*d));
        d->folder = fi;
        d->uid = uid;
        memcpy(d->ck, ck, IMPORT_CK_LEN);
        int64_t head = find_ck(r, fi, ck);
        mi = (int64_t)r->n_m++;
        if (head >= 0) {
            /* Chain behind the head (the head stays in the index). */
            d->next_same = r->m[head].next_same;
            r->m[head].next_same = (uint32_t)mi + 1;
        }
        size_t before = r->by_msg.cap;
        hidx_grow(&r->by_msg, r, r->n_m, hash_msg);
        if (before == r->by_msg.cap)
            hidx_insert(&r->by_msg, hash_msg(r, (uint32_t)mi), (uint32_t)mi);
        if (head < 0) {
            before = r->by_ck.cap;
            /* by_ck holds chain heads only: rebuild from heads when growing. */
            if (r->by_ck.cap < 4 * (r->n_m + 1)) {
                size_t cap = r->by_ck.cap ? r->by_ck.cap : 64;
                while (cap < 4 * (r->n_m + 1))
                    cap *= 2;
                struct hidx nh = {xcalloc(cap, sizeof(uint32_t)), cap};
                for (size_t i = 0; i < r->by_ck.cap; i++)
                    if (r->by_ck.slot[i] != 0)
                        hidx_insert(&nh, hash_ck(r, r->by_ck.slot[i] - 1), r->by_ck.slot[i] - 1);
                hidx_free(&r->by_ck);
                r->by_ck = nh;
            }
            hidx_insert(&r->by_ck, hash_ck(r, (uint32_t)mi), (uint32_t)mi);
        }
    }
    if (find_ik(r, ik) == NULL) {
        r->id = xrealloc(r->id, (r->n_id + 1) * sizeof(*r->id));
        memcpy(r->id[r->n_id].ik, ik, IMPORT_IK_LEN);
        r->id[r->n_id].dmsg = (uint32_t)mi;
        r->id[r->n_id].mine = mine;
        r->n_id++;
        size_t before = r->by_ik.cap;
        hidx_grow(&r->by_ik, r, r->n_id, hash_ik);
        if (before == r->by_ik.cap)
            hidx_insert(&r->by_ik, hash_ik(r, (uint32_t)(r->n_id - 1)), (uint32_t)(r->n_id - 1));
    }
    return (uint32_t)mi;
}

/* Messages of (folder, ck) whose identity the current pass has not found. */
static struct dmsg *unclaimed(struct records *r, const char *folder, const uint8_t *ck,
                              size_t *count_r)
{
    *count_r = 0;
    uint32_t fi = name_index(r, folder);
    int64_t i = find_ck(r, fi, ck);
    struct dmsg *first = NULL;
    while (i >= 0) {
        struct dmsg *d = &r->m[i];
        if (d->claim != r->claim) {
            (*count_r)++;
            if (first == NULL)
                first = d;
        }
        i = (int64_t)d->next_same - 1;
    }
    return first;
}

static const struct recon *find_guid(const struct records *r, const uint8_t *guid)
{
    if (r->by_guid.cap == 0)
        return NULL;
    size_t k = bytes_hash(guid, STORE_GUID_LEN) & (r->by_guid.cap - 1);
    for (; r->by_guid.slot[k] != 0; k = (k + 1) & (r->by_guid.cap - 1)) {
        const struct recon *e = &r->rc[r->by_guid.slot[k] - 1];
        if (memcmp(e->guid, guid, STORE_GUID_LEN) == 0)
            return e;
    }
    return NULL;
}

/* ---- the run --------------------------------------------------------------- */

struct run {
    const struct import_env *env;
    struct dir_job job;
    struct import_state st;
    char ctx[48];
    char err[DIR_ERROR_MAX + 1];
    struct dir_user user;
    struct sync *dst;
    struct import_src *src;
    struct records rec;
    bool reconcile; /* the state said appends may lack their records */
    int64_t last_save_ms;
    size_t msg_max;
    bool hold_lease;        /* the last save: keep the lease until the job is due */
    struct sync_folder *df; /* destination folders as last listed */
    size_t n_df;
    bool mailbox_ok;
    /* The store takes no delivery ids in APPENDS (older than them): this
     * run appends without and records with DELIVERED afterwards. */
    bool no_ids;
};

static void set_err(struct run *r, const char *fmt, ...) TERN_PRINTF(2, 3);
static void set_err(struct run *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err, sizeof(r->err), fmt, ap);
    va_end(ap);
    log_warn(r->ctx, "%s", r->err);
}

bool import_phase_active(const char *phase)
{
    return !dir_job_phase_final(phase);
}

bool import_job_due(const struct dir_job *j, int64_t now_ms)
{
    return import_phase_active(j->phase) && (int64_t)j->checkpoint <= now_ms;
}

static bool stopping(const struct run *r)
{
    return r->env->stopping != NULL && r->env->stopping(r->env->ctx);
}

/* Saves the job row and its state in one compare-and-set that renews the
 * lease. 0, -2 the lease is someone else's, -1 the directory cannot answer. */
static int job_save(struct run *r)
{
    const struct import_env *env = r->env;
    struct buf data;
    buf_init(&data, 0);
    import_state_write(&r->st, &data);
    int ret = -1;
    for (int attempt = 0; attempt < 20; attempt++) {
        r->job.lease_expires = time_now_ms() + env->lease_ms;
        /* A job that waits for its next pass stays ours until then: nothing
         * is to be done before, and `tern doctor` does not see it stuck. */
        if (r->hold_lease && (int64_t)r->job.checkpoint > r->job.lease_expires)
            r->job.lease_expires = (int64_t)r->job.checkpoint;
        str_copy(r->job.lease_owner, env->owner, sizeof(r->job.lease_owner));
        str_copy(r->job.last_error, r->err, sizeof(r->job.last_error));
        if (r->job.msgs_done > r->job.msgs_total)
            r->job.msgs_total = r->job.msgs_done;
        if (r->job.bytes_done > r->job.bytes_total)
            r->job.bytes_total = r->job.bytes_done;
        enum dir_status st = dir_job_update_data(env->dir, &r->job, data.data, data.len);
        if (st == DIR_OK) {
            r->last_save_ms = time_mono_ms();
            ret = 0;
            break;
        }
        if (st == DIR_TEMPFAIL) {
            usleep(200 * 1000);
            continue;
        }
        if (st != DIR_CONFLICT)
            break;
        struct dir_job cur;
        if (dir_job_get(env->dir, r->job.id, &cur) != DIR_OK)
            break;
        /* Someone else holds the job now: stop touching it at once. */
        if (strcmp(cur.lease_owner, env->owner) != 0) {
            ret = -2;
            break;
        }
        /* The CLI asked to complete: take that in and save again. */
        r->job.version = cur.version;
        r->job.options = cur.options;
    }
    buf_free(&data);
    return ret;
}

static enum step save_step(struct run *r)
{
    int s = job_save(r);
    return s == 0 ? STEP_NEXT : s == -2 ? STEP_LOST : STEP_LATER;
}

static enum step next_phase(struct run *r, const char *phase)
{
    str_copy(r->job.phase, phase, sizeof(r->job.phase));
    r->err[0] = '\0';
    r->job.checkpoint = 0; /* due at once */
    enum step s = save_step(r);
    if (s == STEP_NEXT)
        log_info(r->ctx, "%s: phase %s", r->job.user, phase);
    return s;
}

/* Try again in ms (the job's checkpoint is when it is due). */
static enum step later(struct run *r, int64_t ms)
{
    r->job.checkpoint = (uint64_t)(time_now_ms() + ms);
    return STEP_LATER;
}

/* ---- the destination ---------------------------------------------------------- */

static enum step dst_fail(struct run *r, const char *what)
{
    set_err(r, "store %s: %s failed (connection lost)", r->job.dest, what);
    sync_close(&r->dst);
    return later(r, RETRY_MS);
}

static enum step connect_dst(struct run *r)
{
    if (r->dst != NULL)
        return STEP_NEXT;
    enum dir_status ds = dir_user_get(r->env->dir, r->job.user, &r->user);
    if (ds == DIR_NOTFOUND) {
        set_err(r, "user %s no longer exists", r->job.user);
        return STEP_FAIL;
    }
    if (ds != DIR_OK) {
        set_err(r, "directory unavailable");
        return later(r, RETRY_MS);
    }
    str_copy(r->job.dest, r->user.home, sizeof(r->job.dest));
    char e[200];
    r->dst = r->env->connect(r->env->ctx, r->user.home, e, sizeof(e));
    if (r->dst == NULL) {
        set_err(r, "cannot reach store %s: %s", r->user.home, e);
        return later(r, RETRY_MS);
    }
    return STEP_NEXT;
}

static enum step list_dst_folders(struct run *r)
{
    free(r->df);
    r->df = NULL;
    r->n_df = 0;
    const char *why = "";
    int rc = r->dst->ops->folders(r->dst, r->job.user, &r->df, &r->n_df, &why);
    if (rc < 0)
        return dst_fail(r, "listing folders");
    if (rc == SYNC_NO) {
        set_err(r, "folders of %s: %s", r->job.user, why);
        return later(r, RETRY_MS);
    }
    return STEP_NEXT;
}

static const struct sync_folder *dst_folder(const struct run *r, const char *name)
{
    for (size_t i = 0; i < r->n_df; i++)
        if (strcmp(r->df[i].name, name) == 0)
            return &r->df[i];
    return NULL;
}

/* The destination mailbox exists and takes appends; created ACTIVE (as a
 * first delivery would) when the user has never had one (epoch 1). */
static enum step ensure_mailbox(struct run *r, uint32_t inbox_uidvalidity)
{
    if (r->mailbox_ok)
        return STEP_NEXT;
    struct store_mailbox mb;
    const char *why = "";
    for (int attempt = 0; attempt < 2; attempt++) {
        int rc = r->dst->ops->mailbox_get(r->dst, r->job.user, &mb, &why);
        if (rc < 0)
            return dst_fail(r, "reading the mailbox");
        if (rc == 0) {
            if (mb.state != STORE_MBOX_ACTIVE && mb.state != STORE_MBOX_STAGED) {
                set_err(r, "the mailbox of %s on %s is %s: waiting", r->job.user, r->user.home,
                        store_mbox_state_str(mb.state));
                sync_close(&r->dst);
                return later(r, RETRY_MS);
            }
            r->mailbox_ok = true;
            return STEP_NEXT;
        }
        if (strcmp(why, "notfound") != 0) {
            set_err(r, "mailbox of %s: %s", r->job.user, why);
            return later(r, RETRY_MS);
        }
        if (r->user.epoch != 1) {
            /* Nothing is decided because information is missing (Q252869). */
            set_err(r, "the mailbox of %s is missing on %s at epoch %llu (see tern doctor)",
                    r->job.user, r->user.home, (unsigned long long)r->user.epoch);
            return STEP_FAIL;
        }
        rc = r->dst->ops->mailbox_create(r->dst, r->job.user, STORE_MBOX_ACTIVE, 1,
                                         inbox_uidvalidity, &why);
        if (rc < 0)
            return dst_fail(r, "creating the mailbox");
        if (rc == 0) {
            snprintf(r->st.note, sizeof(r->st.note), "the mailbox was created by this import");
            log_info(r->ctx, "%s: mailbox created on %s", r->job.user, r->user.home);
        }
    }
    set_err(r, "the mailbox of %s cannot be created: %s", r->job.user, why);
    return later(r, RETRY_MS);
}

/* ---- records: load, recount, reconcile ---------------------------------------- */

static enum step load_records(struct run *r)
{
    if (r->rec.loaded)
        return STEP_NEXT;
    struct sync_delivery *l = NULL;
    size_t n = 0;
    const char *why = "";
    int rc = r->dst->ops->deliveries(r->dst, r->job.user, &l, &n, &why);
    if (rc < 0)
        return dst_fail(r, "listing import records");
    if (rc == SYNC_NO) {
        set_err(r, "import records of %s: %s", r->job.user, why);
        return later(r, RETRY_MS);
    }
    for (size_t i = 0; i < r->st.n; i++)
        r->st.f[i].imported = r->st.f[i].stragglers = r->st.f[i].dups = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t ik[IMPORT_IK_LEN], ck[IMPORT_CK_LEN];
        enum import_mark mark;
        uint64_t job;
        if (import_id_parse(l[i].id, ik, ck, &mark, &job) < 0)
            continue; /* an LMTP delivery's id */
        records_add(&r->rec, ik, ck, l[i].folder, l[i].uid, job == r->job.id);
        if (job != r->job.id)
            continue;
        /* This job's counts come from its records: exact after any crash. */
        for (size_t k = 0; k < r->st.n; k++) {
            struct import_fstate *f = &r->st.f[k];
            if (strcmp(f->name, l[i].folder) != 0)
                continue;
            if (mark == IMPORT_MARK_DUP) {
                f->dups++;
            } else {
                f->imported++;
                if (mark == IMPORT_MARK_STRAGGLER)
                    f->stragglers++;
            }
            break;
        }
    }
    free(l);
    r->rec.loaded = true;
    return STEP_NEXT;
}

static int recon_folder(void *ctx, const struct sync_folder *f)
{
    (void)ctx;
    (void)f;
    return 0;
}

static int recon_msg(void *ctx, const struct sync_msg *m)
{
    struct records *r = ctx;
    r->rc = xrealloc(r->rc, (r->n_rc + 1) * sizeof(*r->rc));
    memcpy(r->rc[r->n_rc].guid, m->guid, STORE_GUID_LEN);
    r->rc[r->n_rc].folder = name_index(r, m->folder);
    r->rc[r->n_rc].uid = m->uid;
    r->n_rc++;
    return 0;
}

static enum step load_reconcile(struct run *r)
{
    if (!r->reconcile || r->rec.by_guid.cap != 0)
        return STEP_NEXT;
    struct sync_changes_cb cb = {.folder = recon_folder, .msg = recon_msg, .ctx = &r->rec};
    uint64_t modseq = 0;
    const char *why = "";
    int rc = r->dst->ops->changes(r->dst, r->job.user, 0, &cb, &modseq, &why);
    if (rc < 0)
        return dst_fail(r, "listing the mailbox");
    if (rc == SYNC_NO) {
        set_err(r, "mailbox of %s: %s", r->job.user, why);
        return later(r, RETRY_MS);
    }
    hidx_grow(&r->rec.by_guid, &r->rec, r->rec.n_rc, hash_guid);
    log_info(r->ctx, "%s: checking %zu messages for appends without a record", r->job.user,
             r->rec.n_rc);
    return STEP_NEXT;
}

/* ---- one folder -------------------------------------------------------------- */

struct pending {
    struct import_keys k;
    struct buf data;
    uint8_t sha256[SHA256_LEN];
    uint32_t src_uid;
    uint32_t flags;
    char keywords[STORE_KEYWORDS_MAX + 1];
    int64_t date;
    bool malformed;
    uint32_t uid; /* assigned */
    int state;    /* 0 to send, 1 stored, 2 given up, 3 there already (its id) */
};

/* A record to write. What it counts once it is durable: an append of this
 * run (appended), an append a crash left without its record (reconciled),
 * or a new identity linked to a copy that is there (a duplicate). */
enum prec_kind { PREC_APPENDED, PREC_RECONCILED, PREC_DUP };

struct prec {
    struct import_keys k;
    enum import_mark mark;
    enum prec_kind kind;
    uint32_t folder; /* index into the records' names */
    uint32_t uid;
    uint64_t len;     /* appended, reconciled: the message's size */
    uint32_t src_uid; /* appended: the UID the source gave (0: none) */
    bool malformed;   /* appended */
};

/* A flush writes the batch's records and those queued since the last one
 * (at most BATCH_MSGS of each: handle_msg flushes when the queue is full),
 * in one DELIVERED. */
#define RECS_MAX (2 * BATCH_MSGS)
_Static_assert(RECS_MAX <= SYNC_BATCH_MAX, "one delivery_add_batch per flush");

struct fpass {
    struct run *r;
    const struct import_sfolder *sf;
    struct import_fstate *fs;
    struct import_iter *it;
    bool keep;      /* the destination folder has the source's UIDVALIDITY */
    uint32_t dnext; /* the destination folder's UIDNEXT as far as we know */
    struct pending batch[BATCH_MSGS];
    size_t nb;
    size_t bytes;
    /* Records waiting for the next flush, which writes them all with one
     * delivery_add_batch (one store commit), then counts them. */
    struct prec recs[RECS_MAX];
    size_t nrec;
    uint64_t last_end; /* position after the last item handled or queued */
    bool deferred_any;
    uint64_t first_deferred; /* position before the first deferred item */
    struct buf deferred;     /* identity keys of deferred items, IMPORT_IK_LEN each */
    bool phase2;
    /* What the latest scan found since the checkpoint last moved: counted
     * into the folder's state only with the checkpoint that covers it, so
     * an item read again after a crash is never counted twice. */
    uint64_t pend_msgs, pend_bytes, pend_already;
    struct import_fail *pend_f;
    size_t n_pend_f;
    /* Flag sync while watching: the destination folder's flags, by UID. */
    bool sync_flags;
    bool dfl_loaded;
    struct dflag {
        uint32_t uid;
        uint32_t flags;
        char *keywords;
    } * dfl;
    size_t n_dfl;
};

static int dfl_cb(void *ctx, const struct sync_msg *m)
{
    struct fpass *p = ctx;
    p->dfl = xrealloc(p->dfl, (p->n_dfl + 1) * sizeof(*p->dfl));
    p->dfl[p->n_dfl].uid = m->uid;
    p->dfl[p->n_dfl].flags = m->flags;
    p->dfl[p->n_dfl].keywords = xstrdup(m->keywords);
    p->n_dfl++;
    return 0;
}

static void dfl_free(struct fpass *p)
{
    for (size_t i = 0; i < p->n_dfl; i++)
        free(p->dfl[i].keywords);
    free(p->dfl);
    p->dfl = NULL;
    p->n_dfl = 0;
}

/* True if two space-separated keyword lists hold the same keywords (in any
 * order, ASCII case-insensitively, as IMAP compares them). */
static bool keywords_equal(const char *a, const char *b)
{
    for (int pass = 0; pass < 2; pass++) {
        const char *x = pass == 0 ? a : b, *y = pass == 0 ? b : a;
        for (const char *w = x; *w != '\0';) {
            while (*w == ' ')
                w++;
            size_t n = strcspn(w, " ");
            if (n == 0)
                break;
            bool found = false;
            for (const char *v = y; *v != '\0' && !found;) {
                while (*v == ' ')
                    v++;
                size_t m = strcspn(v, " ");
                found = m == n && strncasecmp(v, w, n) == 0;
                v += m;
            }
            if (!found)
                return false;
            w += n;
        }
    }
    return true;
}

/* The source is the master until the cutover: a message imported before
 * (destination message d) whose flags changed there gets them in tern too. */
static enum step sync_flags(struct fpass *p, const struct dmsg *d, const struct import_item *it)
{
    struct run *r = p->r;
    if (strcmp(r->rec.names[d->folder], p->fs->name) != 0)
        return STEP_NEXT; /* the user moved it elsewhere in tern meanwhile */
    if (!p->dfl_loaded) {
        const char *why = "";
        uint64_t modseq;
        int rc = r->dst->ops->msgs(r->dst, r->job.user, p->fs->name, dfl_cb, p, &modseq, &why);
        if (rc < 0)
            return dst_fail(r, "listing a folder");
        p->dfl_loaded = true;
    }
    size_t lo = 0, hi = p->n_dfl;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (p->dfl[mid].uid < d->uid)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == p->n_dfl || p->dfl[lo].uid != d->uid)
        return STEP_NEXT; /* expunged in tern: nothing to update */
    uint32_t want = it->flags & STORE_F_ALL;
    const char *kw = it->keywords != NULL ? it->keywords : "";
    if (p->dfl[lo].flags == want && keywords_equal(p->dfl[lo].keywords, kw))
        return STEP_NEXT;
    const char *why = "";
    int rc = r->dst->ops->flags(r->dst, r->job.user, p->fs->name, d->uid, want, kw, &why);
    if (rc < 0)
        return dst_fail(r, "setting flags");
    if (rc == 0) {
        p->fs->flags_synced++;
        p->dfl[lo].flags = want;
        free(p->dfl[lo].keywords);
        p->dfl[lo].keywords = xstrdup(kw);
    }
    return STEP_NEXT;
}

static void pend_fail(struct fpass *p, const char *where, const char *why)
{
    p->pend_f = xrealloc(p->pend_f, (p->n_pend_f + 1) * sizeof(*p->pend_f));
    str_copy(p->pend_f[p->n_pend_f].where, where, sizeof(p->pend_f[0].where));
    str_copy(p->pend_f[p->n_pend_f].why, why, sizeof(p->pend_f[0].why));
    p->n_pend_f++;
}

static void commit_pending(struct fpass *p)
{
    p->fs->src_msgs += p->pend_msgs;
    p->fs->src_bytes += p->pend_bytes;
    p->fs->already += p->pend_already;
    for (size_t i = 0; i < p->n_pend_f; i++)
        import_fstate_fail(p->fs, p->pend_f[i].where, p->pend_f[i].why);
    free(p->pend_f);
    p->pend_f = NULL;
    p->n_pend_f = 0;
    p->pend_msgs = p->pend_bytes = p->pend_already = 0;
}

static enum import_mark mark_now(const struct run *r)
{
    return strcmp(r->job.phase, "sweep") == 0 ? IMPORT_MARK_STRAGGLER : IMPORT_MARK_COPY;
}

static void count_imported(struct fpass *p, enum import_mark mark, uint64_t bytes)
{
    p->fs->imported++;
    if (mark == IMPORT_MARK_STRAGGLER)
        p->fs->stragglers++;
    p->r->job.bytes_done += bytes;
}

static void update_cp(struct fpass *p)
{
    if (p->nb != 0 || p->nrec != 0)
        return;
    uint64_t cp = p->last_end;
    if (p->deferred_any && p->first_deferred < cp)
        cp = p->first_deferred;
    else
        commit_pending(p); /* everything read so far is behind the checkpoint */
    if (cp > p->fs->cp || p->fs->cp == 0)
        p->fs->cp = cp;
}

/* A save in the middle of a folder: the checkpoint so far. */
static enum step folder_save(struct fpass *p, bool force)
{
    if (!force && time_mono_ms() - p->r->last_save_ms < SAVE_EVERY_MS)
        return STEP_NEXT;
    update_cp(p);
    if (p->it != NULL)
        p->r->src->ops->finish(p->it, p->fs, false);
    return save_step(p->r);
}

/* Queues the record of a message in the destination (folder, uid); the
 * next flush writes it. */
static void record_queue(struct fpass *p, const struct import_keys *k, enum import_mark mark,
                         enum prec_kind kind, const char *folder, uint32_t uid)
{
    if (p->nrec == RECS_MAX)
        panic("import: record queue overflow (%zu)", p->nrec);
    struct prec *q = &p->recs[p->nrec++];
    memset(q, 0, sizeof(*q));
    q->k = *k;
    q->mark = mark;
    q->kind = kind;
    q->folder = name_index(&p->r->rec, folder);
    q->uid = uid;
}

/* A record is durable: into the run's index, and counted. */
static void record_done(struct fpass *p, const struct prec *q)
{
    struct run *r = p->r;
    uint32_t mi = records_add(&r->rec, q->k.ik, q->k.ck, r->rec.names[q->folder], q->uid, true);
    r->rec.m[mi].claim = r->rec.claim;
    if (q->kind == PREC_DUP) {
        p->fs->dups++;
        return;
    }
    count_imported(p, q->mark, q->len);
    if (q->kind != PREC_APPENDED)
        return;
    if (q->malformed)
        p->fs->malformed++;
    if (q->src_uid != 0 || p->sf->uidvalidity != 0) {
        if (q->uid == q->src_uid) {
            p->fs->uids_kept++;
        } else {
            p->fs->uids_new++;
            if (p->fs->uid_note[0] == '\0' && p->keep)
                snprintf(p->fs->uid_note, sizeof(p->fs->uid_note), "%s",
                         q->src_uid == 0
                             ? "messages the source gave no UID"
                             : "UIDs below the destination folder's next UID (taken, or "
                               "duplicate or not ascending in the source)");
        }
    }
}

/* Writes the queued records with one delivery_add_batch: one round trip and
 * one store commit for a whole batch, not one per message. A record already
 * there ("exists") is as good as written. If the batch fails, or an item is
 * refused, the appends it covers have no record yet: the run ends with the
 * state's inflight flag set and the next run finds them by their GUIDs. */
static enum step write_records(struct fpass *p)
{
    struct run *r = p->r;
    size_t n = p->nrec;
    if (n == 0)
        return STEP_NEXT;
    p->nrec = 0;
    struct sync_delivery *ds = xcalloc(n, sizeof(*ds));
    int *rcs = xcalloc(n, sizeof(*rcs));
    const char **whys = xcalloc(n, sizeof(*whys));
    for (size_t i = 0; i < n; i++) {
        import_id_make(&p->recs[i].k, p->recs[i].mark, r->job.id, ds[i].id);
        str_copy(ds[i].folder, r->rec.names[p->recs[i].folder], sizeof(ds[i].folder));
        ds[i].uid = p->recs[i].uid;
    }
    enum step result = STEP_NEXT;
    int rc = r->dst->ops->delivery_add_batch(r->dst, r->job.user, ds, n, rcs, whys);
    if (rc < 0) {
        result = dst_fail(r, "recording imports");
    } else {
        for (size_t i = 0; i < n; i++) {
            const char *why = whys[i] != NULL ? whys[i] : "";
            if (rcs[i] == 0 || strcmp(why, "exists") == 0) {
                record_done(p, &p->recs[i]);
            } else if (result == STEP_NEXT) {
                set_err(r, "recording an import in %s: %s", ds[i].folder, why);
                result = later(r, RETRY_MS);
            }
        }
        /* A simulated kill -9 after the records and before the checkpoint
         * that covers them is saved (tests). */
        if (result == STEP_NEXT)
            util_fault_point("import.recorded");
    }
    free(ds);
    free(rcs);
    free(whys);
    return result;
}

static enum step refresh_dnext(struct fpass *p)
{
    enum step s = list_dst_folders(p->r);
    if (s != STEP_NEXT)
        return s;
    const struct sync_folder *f = dst_folder(p->r, p->fs->name);
    if (f != NULL && f->uidnext > p->dnext)
        p->dnext = f->uidnext;
    return STEP_NEXT;
}

/* An append that came back a duplicate of its delivery id: the message is
 * there already (an earlier item of the same batch, or recorded since the
 * records were loaded), counted as "already there"; nothing was stored. */
static void dup_done(struct fpass *p, const struct pending *pe, const struct sync_append_res *res)
{
    struct run *r = p->r;
    const char *folder = p->fs->name;
    for (size_t i = 0; i < r->n_df && res->uidvalidity != 0; i++)
        if (r->df[i].uidvalidity == res->uidvalidity)
            folder = r->df[i].name;
    uint32_t mi = records_add(&r->rec, pe->k.ik, pe->k.ck, folder, res->uid, false);
    r->rec.m[mi].claim = r->rec.claim;
    p->pend_already++;
}

/* Appends the queued messages with their records: each record is the
 * append's delivery id, written by the store in the batch's own commit
 * (one store commit, no window between a message and its record). Then the
 * records queued without a message (duplicates, reconciled appends) go in
 * one DELIVERED. With a store older than delivery ids in APPENDS
 * (r->no_ids), the appends go without and their records follow in that
 * DELIVERED: two commits, the window covered by inflight and the GUIDs. */
static enum step flush(struct fpass *p)
{
    struct run *r = p->r;
    if (p->nb == 0) {
        if (p->nrec == 0)
            return STEP_NEXT;
        enum step s = write_records(p);
        return s != STEP_NEXT ? s : folder_save(p, false);
    }
    if (r->no_ids && !r->st.inflight) {
        /* Durable before the first append: a crash from here on is
         * reconciled by the next run. */
        r->st.inflight = true;
        enum step s = folder_save(p, true);
        if (s != STEP_NEXT)
            return s;
    }
    struct sync_msg *msgs = xcalloc(p->nb, sizeof(*msgs));
    const struct sync_msg **mp = xcalloc(p->nb, sizeof(*mp));
    const void **data = xcalloc(p->nb, sizeof(*data));
    size_t *lens = xcalloc(p->nb, sizeof(*lens));
    int *rcs = xcalloc(p->nb, sizeof(*rcs));
    const char **whys = xcalloc(p->nb, sizeof(*whys));
    size_t *idx = xcalloc(p->nb, sizeof(*idx));
    struct sync_append_res *res = xcalloc(p->nb, sizeof(*res));
    enum import_mark mark = mark_now(r);
    enum step result = STEP_NEXT;
    for (int round = 0; round < UID_ROUNDS && result == STEP_NEXT; round++) {
        uint32_t dnext0 = p->dnext;
        size_t n = 0;
        for (size_t i = 0; i < p->nb; i++) {
            struct pending *pe = &p->batch[i];
            if (pe->state != 0)
                continue;
            bool keep = p->keep && round == 0 && pe->src_uid != 0 && pe->src_uid >= p->dnext;
            /* A message that cannot keep its UID in a folder that keeps the
             * source's gets one at or above the source's UIDNEXT: a UID
             * below it may be one a client of the source saw (an expunged
             * message's, a later message's). */
            uint32_t next = p->dnext;
            if (p->keep && p->sf->uidnext > next)
                next = p->sf->uidnext;
            pe->uid = keep ? pe->src_uid : next;
            if (pe->uid == 0 || pe->uid == UINT32_MAX) {
                import_fstate_fail(p->fs, "(uid)", "the destination folder has no UIDs left");
                pe->state = 2;
                continue;
            }
            p->dnext = pe->uid + 1;
            struct sync_msg *m = &msgs[n];
            memset(m, 0, sizeof(*m));
            str_copy(m->folder, p->fs->name, sizeof(m->folder));
            m->uid = pe->uid;
            memcpy(m->guid, pe->k.guid, STORE_GUID_LEN);
            m->flags = pe->flags;
            str_copy(m->keywords, pe->keywords, sizeof(m->keywords));
            m->internal_date = pe->date;
            m->size = pe->data.len;
            memcpy(m->sha256, pe->sha256, SHA256_LEN);
            if (!r->no_ids)
                import_id_make(&pe->k, mark, r->job.id, m->delivery_id);
            mp[n] = m;
            data[n] = pe->data.data != NULL ? pe->data.data : "";
            lens[n] = pe->data.len;
            rcs[n] = 0;
            whys[n] = "";
            idx[n++] = i;
        }
        if (n == 0)
            break;
        int rc = r->dst->ops->append_batch(r->dst, r->job.user, mp, data, lens, n, rcs, whys, res);
        if (rc < 0) {
            result = dst_fail(r, "appending");
            break;
        }
        bool unsupported = false;
        for (size_t j = 0; j < n && !r->no_ids; j++)
            if (rcs[j] == SYNC_NO && whys[j] != NULL && strcmp(whys[j], "unsupported") == 0)
                unsupported = true;
        if (unsupported) {
            /* A store from before delivery ids in APPENDS stored nothing of
             * the batch (and closed the connection): again without them,
             * and the records in a DELIVERED, as it knows. */
            log_warn(r->ctx, "store %s takes no delivery ids in APPENDS: recording separately",
                     r->job.dest);
            r->no_ids = true;
            sync_close(&r->dst);
            p->dnext = dnext0;
            round--;
            result = connect_dst(r);
            if (result == STEP_NEXT && !r->st.inflight) {
                r->st.inflight = true;
                result = folder_save(p, true);
            }
            continue;
        }
        /* A simulated kill -9 right after the commit (tests). */
        util_fault_point("import.appended");
        bool retry = false;
        for (size_t j = 0; j < n; j++) {
            struct pending *pe = &p->batch[idx[j]];
            const char *why = whys[j] != NULL ? whys[j] : "";
            if (rcs[j] == 0 && res[j].duplicate) {
                pe->state = 3;
                dup_done(p, pe, &res[j]);
            } else if (rcs[j] == 0) {
                pe->state = 1;
            } else if (strcmp(why, "exists") == 0) {
                retry = true; /* a delivery took the UID meanwhile */
            } else if (strcmp(why, "notlive") == 0) {
                set_err(r, "the mailbox of %s stopped taking appends", r->job.user);
                r->mailbox_ok = false;
                sync_close(&r->dst);
                result = later(r, RETRY_MS);
            } else if (strcmp(why, "notfound") == 0) {
                set_err(r, "folder %s vanished from the destination", p->fs->name);
                result = later(r, RETRY_MS);
            } else {
                char where[64];
                snprintf(where, sizeof(where), "message %zu of a batch", idx[j] + 1);
                char reason[IMPORT_TEXT_MAX + 1];
                snprintf(reason, sizeof(reason), "the store refused it: %s", why);
                import_fstate_fail(p->fs, where, reason);
                pe->state = 2;
            }
        }
        if (retry && result == STEP_NEXT)
            result = refresh_dnext(p);
    }
    /* What got in, in order: recorded already by its own commit (ids), or
     * queued for the DELIVERED below with those queued before (no_ids; if
     * something went wrong, none: the next run reconciles). An item stored
     * with its id is counted even if another item of the batch failed. */
    for (size_t i = 0; i < p->nb; i++) {
        struct pending *pe = &p->batch[i];
        if (pe->state != 1 || (r->no_ids && result != STEP_NEXT))
            continue;
        struct prec q;
        memset(&q, 0, sizeof(q));
        q.k = pe->k;
        q.mark = mark;
        q.kind = PREC_APPENDED;
        q.folder = name_index(&r->rec, p->fs->name);
        q.uid = pe->uid;
        q.len = pe->data.len;
        q.src_uid = pe->src_uid;
        q.malformed = pe->malformed;
        if (r->no_ids) {
            if (p->nrec == RECS_MAX)
                panic("import: record queue overflow (%zu)", p->nrec);
            p->recs[p->nrec++] = q;
        } else {
            record_done(p, &q);
        }
    }
    /* Recorded by the batch's own commit: a simulated kill -9 before the
     * checkpoint that covers them is saved (tests). */
    if (!r->no_ids && result == STEP_NEXT)
        util_fault_point("import.recorded");
    if (result == STEP_NEXT)
        for (size_t i = 0; i < p->nb; i++)
            if (p->batch[i].state == 0) {
                import_fstate_fail(p->fs, "(uid)", "no free UID after several attempts");
                p->batch[i].state = 2;
            }
    for (size_t i = 0; i < p->nb; i++)
        buf_free(&p->batch[i].data);
    free(msgs);
    free(mp);
    free(data);
    free(lens);
    free(rcs);
    free(whys);
    free(idx);
    free(res);
    p->nb = 0;
    p->bytes = 0;
    if (result != STEP_NEXT) {
        p->nrec = 0; /* read again, or reconciled by the next run */
        return result;
    }
    result = write_records(p);
    if (result != STEP_NEXT)
        return result;
    return folder_save(p, false);
}

static bool is_deferred(const struct fpass *p, const uint8_t *ik)
{
    for (size_t i = 0; i + IMPORT_IK_LEN <= p->deferred.len; i += IMPORT_IK_LEN)
        if (memcmp(p->deferred.data + i, ik, IMPORT_IK_LEN) == 0)
            return true;
    return false;
}

/* One message of the source. */
static enum step handle_msg(struct fpass *p, const struct import_item *it)
{
    struct run *r = p->r;
    struct import_keys k;
    import_key_ident(&k, r->job.user, r->src->ops->kind, r->src->scope, p->fs->name, it->ident);
    if (p->phase2 && !is_deferred(p, k.ik))
        return STEP_NEXT;
    if (it->flags_only) {
        const struct ident *kn = find_ik(&r->rec, k.ik);
        return kn != NULL && p->sync_flags ? sync_flags(p, &r->rec.m[kn->dmsg], it) : STEP_NEXT;
    }
    if (!p->phase2) {
        p->pend_msgs++;
        p->pend_bytes += it->len;
    }
    const struct ident *known = find_ik(&r->rec, k.ik);
    if (known == NULL && it->data == NULL) {
        /* The source skipped the body of a message known a moment ago:
         * cannot happen (records only grow during a run). */
        panic("import: no body for unknown identity %s", it->ident);
    }
    if (known != NULL) {
        r->rec.m[known->dmsg].claim = r->rec.claim;
        /* Imported before this job (this job's own count as imported). */
        if (!known->mine)
            p->pend_already++;
        r->job.msgs_done++;
        return p->sync_flags ? sync_flags(p, &r->rec.m[known->dmsg], it) : STEP_NEXT;
    }
    /* An append whose record a crash cut off: its GUID is there. */
    const struct recon *rc = r->reconcile ? find_guid(&r->rec, k.guid) : NULL;
    import_key_content(&k, it->data, it->len);
    if (rc != NULL) {
        record_queue(p, &k, mark_now(r), PREC_RECONCILED, r->rec.names[rc->folder], rc->uid);
        p->recs[p->nrec - 1].len = it->len;
        r->job.msgs_done++;
        return p->nrec >= BATCH_MSGS ? flush(p) : STEP_NEXT;
    }
    size_t free_copies;
    struct dmsg *same = unclaimed(&r->rec, p->fs->name, k.ck, &free_copies);
    if (free_copies > 0) {
        if (!p->phase2) {
            /* Maybe a copy imported under another identity, maybe a second
             * copy in the source: decided once the whole folder is read. */
            if (!p->deferred_any || it->pos_before < p->first_deferred)
                p->first_deferred = it->pos_before;
            p->deferred_any = true;
            buf_append(&p->deferred, k.ik, IMPORT_IK_LEN);
            return STEP_NEXT;
        }
        /* A duplicate: link its identity to the copy that is there
         * (claimed now, recorded with the next flush). */
        size_t si = (size_t)(same - r->rec.m);
        same->claim = r->rec.claim;
        record_queue(p, &k, IMPORT_MARK_DUP, PREC_DUP, r->rec.names[same->folder], same->uid);
        r->job.msgs_done++;
        /* An mbox a client rewrote to change a message's Status or
         * X-Keywords: the same content under a new identity, whose flags
         * follow while the source is the master. */
        enum step s = p->sync_flags ? sync_flags(p, &r->rec.m[si], it) : STEP_NEXT;
        if (s == STEP_NEXT && p->nrec >= BATCH_MSGS)
            s = flush(p);
        return s;
    }
    if (it->len > r->msg_max) {
        char why[IMPORT_TEXT_MAX + 1];
        snprintf(why, sizeof(why), "message over the size limit (%zu octets, limit %zu)", it->len,
                 r->msg_max);
        pend_fail(p, it->where, why);
        r->job.msgs_done++;
        return STEP_NEXT;
    }
    struct pending *pe = &p->batch[p->nb++];
    memset(pe, 0, sizeof(*pe));
    pe->k = k;
    buf_init(&pe->data, 0);
    buf_append(&pe->data, it->data, it->len);
    memcpy(pe->sha256, it->sha256, SHA256_LEN);
    pe->src_uid = it->uid;
    pe->flags = it->flags & STORE_F_ALL;
    str_copy(pe->keywords, it->keywords != NULL ? it->keywords : "", sizeof(pe->keywords));
    pe->date = it->internal_date;
    pe->malformed = it->malformed;
    p->bytes += it->len;
    r->job.msgs_done++;
    if (p->nb == BATCH_MSGS || p->bytes >= BATCH_BYTES)
        return flush(p);
    return STEP_NEXT;
}

/* The destination folder for a source folder: found, or created with the
 * source's UIDVALIDITY when no folder has it, so that UIDs can be kept. */
static enum step ensure_folder(struct run *r, const struct import_sfolder *sf,
                               struct import_fstate *fs, bool *keep_r, uint32_t *dnext_r)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        if (r->df == NULL || attempt > 0) {
            enum step s = list_dst_folders(r);
            if (s != STEP_NEXT)
                return s;
        }
        const struct sync_folder *d = dst_folder(r, sf->name);
        if (d != NULL) {
            *keep_r = sf->uidvalidity != 0 && d->uidvalidity == sf->uidvalidity;
            *dnext_r = d->uidnext;
            if (sf->uidvalidity != 0 && !*keep_r && fs->uid_note[0] == '\0')
                snprintf(fs->uid_note, sizeof(fs->uid_note),
                         "the destination folder existed with another UIDVALIDITY (%u, source %u)",
                         d->uidvalidity, sf->uidvalidity);
            return STEP_NEXT;
        }
        bool uv_free = sf->uidvalidity != 0;
        for (size_t i = 0; i < r->n_df && uv_free; i++)
            if (r->df[i].uidvalidity == sf->uidvalidity)
                uv_free = false;
        const char *why = "";
        int rc;
        if (uv_free) {
            rc =
                r->dst->ops->folder_ensure(r->dst, r->job.user, sf->name, sf->uidvalidity, 1, &why);
        } else {
            if (sf->uidvalidity != 0)
                snprintf(fs->uid_note, sizeof(fs->uid_note),
                         "another destination folder has the source's UIDVALIDITY %u",
                         sf->uidvalidity);
            rc = r->dst->ops->folder_create(r->dst, r->job.user, sf->name, &why);
        }
        if (rc < 0)
            return dst_fail(r, "creating a folder");
        if (rc == SYNC_NO && strcmp(why, "exists") != 0 && strcmp(why, "conflict") != 0) {
            char reason[IMPORT_TEXT_MAX + 1];
            snprintf(reason, sizeof(reason), "the store refused the folder: %s", why);
            import_fstate_clear_fails(fs);
            import_fstate_fail(fs, "(folder)", reason);
            *dnext_r = 0;
            return STEP_NEXT;
        }
    }
    set_err(r, "folder %s cannot be created", sf->name);
    return later(r, RETRY_MS);
}

/* The source's question: is this message imported already? */
static bool source_knows(void *ctx, const char *folder, const char *ident)
{
    struct run *r = ctx;
    if (!r->rec.loaded)
        return false;
    struct import_keys k;
    import_key_ident(&k, r->job.user, r->src->ops->kind, r->src->scope, folder, ident);
    return find_ik(&r->rec, k.ik) != NULL;
}

static enum step folder_pass(struct run *r, const struct import_sfolder *sf,
                             struct import_fstate *fs)
{
    fs->seen = true;
    str_copy(fs->src, sf->src, sizeof(fs->src));
    if (sf->error[0] != '\0') {
        import_fstate_clear_fails(fs);
        import_fstate_fail(fs, "(folder)", sf->error);
        return STEP_NEXT;
    }
    struct fpass p;
    memset(&p, 0, sizeof(p));
    p.r = r;
    p.sf = sf;
    p.fs = fs;
    enum step s = ensure_folder(r, sf, fs, &p.keep, &p.dnext);
    if (s != STEP_NEXT)
        return s;
    if (p.dnext == 0)
        return STEP_NEXT; /* the folder was refused (listed as a failure) */
    const char *e = NULL;
    /* A watching import keeps tern's copy like the source until the
     * cutover (flags too); after it the user's changes in tern win. */
    p.sync_flags = r->st.set.watch && r->st.cutover == 0 &&
                   (strcmp(r->job.phase, "copy") == 0 || strcmp(r->job.phase, "watch") == 0);
    r->src->flag_changes = p.sync_flags;
    r->src->known = source_knows;
    r->src->known_ctx = r;
    if (r->src->ops->open(r->src, sf, fs, false, &p.it, &e) < 0) {
        set_err(r, "source folder %s: %s", sf->name, e != NULL ? e : "cannot be read");
        return later(r, RETRY_MS);
    }
    if (p.it == NULL) {
        if (sf->count_exact)
            fs->src_msgs = sf->count;
        return STEP_NEXT; /* unchanged since the last pass */
    }
    if (fs->cp == 0) {
        /* Read from the start: what the latest scan found starts over. */
        fs->src_msgs = fs->src_bytes = fs->already = fs->malformed = 0;
        import_fstate_clear_fails(fs);
    }
    /* Only now (a folder with news): the records, which the source's
     * known() and every decision need. */
    s = load_records(r);
    if (s == STEP_NEXT)
        s = load_reconcile(r);
    if (s != STEP_NEXT) {
        r->src->ops->iter_free(&p.it);
        return s;
    }
    buf_init(&p.deferred, 0);
    p.last_end = fs->cp;
    r->rec.claim++;
    bool done = false;
    for (int round = 0; round < 2 && s == STEP_NEXT; round++) {
        p.phase2 = round == 1;
        if (p.phase2) {
            if (!p.deferred_any)
                break;
            /* Read again from the first deferred item. */
            r->src->ops->iter_free(&p.it);
            uint64_t keep_cp = fs->cp;
            fs->cp = p.first_deferred;
            int orc = r->src->ops->open(r->src, sf, fs, false, &p.it, &e);
            if (orc == 0 && p.it == NULL)
                orc = r->src->ops->open(r->src, sf, fs, true, &p.it, &e);
            if (orc < 0) {
                fs->cp = keep_cp;
                set_err(r, "source folder %s: %s", sf->name, e != NULL ? e : "cannot be read");
                s = later(r, RETRY_MS);
                break;
            }
        }
        for (;;) {
            struct import_item it;
            int nr = r->src->ops->next(p.it, &it, &e);
            if (nr < 0) {
                set_err(r, "source folder %s: %s", sf->name, e != NULL ? e : "read error");
                s = later(r, RETRY_MS);
                break;
            }
            if (nr == 0) {
                done = true;
                break;
            }
            if (it.kind == IMPORT_ITEM_WAIT)
                break; /* half written: the next pass */
            /* Before handling it: a flush it triggers covers it. */
            if (!p.phase2 && it.pos_after > p.last_end)
                p.last_end = it.pos_after;
            if (it.kind == IMPORT_ITEM_FAIL) {
                if (!p.phase2) {
                    p.pend_msgs++;
                    pend_fail(&p, it.where, it.why);
                    r->job.msgs_done++;
                }
            } else {
                s = handle_msg(&p, &it);
            }
            if (s != STEP_NEXT)
                break;
            update_cp(&p);
            if (stopping(r)) {
                s = STEP_STOP;
                break;
            }
            s = folder_save(&p, false);
            if (s != STEP_NEXT)
                break;
        }
        if (s == STEP_NEXT)
            s = flush(&p);
        if (s == STEP_NEXT && p.phase2) {
            p.deferred_any = false; /* all decided */
            update_cp(&p);
        }
        if (!p.phase2 && !done)
            break; /* stopped early: no decisions on what was deferred */
        if (p.phase2)
            done = true;
    }
    if (s == STEP_NEXT || s == STEP_STOP) {
        update_cp(&p);
        if (p.it != NULL)
            r->src->ops->finish(p.it, fs, s == STEP_NEXT && done && !p.deferred_any);
    } else {
        /* Whatever is still queued was never appended: it is read again. */
        for (size_t i = 0; i < p.nb; i++)
            buf_free(&p.batch[i].data);
    }
    if (sf->count_exact && s == STEP_NEXT)
        fs->src_msgs = sf->count;
    r->src->ops->iter_free(&p.it);
    buf_free(&p.deferred);
    free(p.pend_f);
    dfl_free(&p);
    if (s == STEP_NEXT && p.keep && sf->uidnext > p.dnext) {
        /* Later stragglers can keep their UIDs too. */
        const char *why = "";
        int rc = r->dst->ops->folder_ensure(r->dst, r->job.user, sf->name, sf->uidvalidity,
                                            sf->uidnext, &why);
        if (rc < 0)
            return dst_fail(r, "raising UIDNEXT");
    }
    return s;
}

/* ---- a pass over the whole source --------------------------------------------- */

static enum step open_src(struct run *r)
{
    if (r->src != NULL)
        return STEP_NEXT;
    char e[300];
    if (import_src_open(r->job.source, &r->st.set, r->msg_max, &r->src, e, sizeof(e)) < 0) {
        set_err(r, "%s", e);
        /* A password file that vanished or a bad spec will not heal by itself
         * quickly: look again now and then, never silently. */
        return later(r, 30 * 1000);
    }
    return STEP_NEXT;
}

static enum step pass(struct run *r)
{
    enum step s = connect_dst(r);
    if (s == STEP_NEXT)
        s = open_src(r);
    if (s != STEP_NEXT)
        return s;
    struct import_sfolder *list = NULL;
    size_t n = 0;
    const char *e = NULL;
    r->src->counting = false;
    if (r->src->ops->list(r->src, &list, &n, &e) < 0) {
        set_err(r, "source %s: %s", r->job.source, e != NULL ? e : "cannot be read");
        return later(r, RETRY_MS);
    }
    uint32_t inbox_uv = 0;
    for (size_t i = 0; i < n; i++)
        if (strcmp(list[i].name, "INBOX") == 0)
            inbox_uv = list[i].uidvalidity;
    s = ensure_mailbox(r, inbox_uv);
    if (s == STEP_NEXT)
        s = list_dst_folders(r);
    for (size_t i = 0; i < r->st.n; i++)
        r->st.f[i].seen = false;
    for (size_t i = 0; i < n && s == STEP_NEXT; i++) {
        struct import_fstate *fs = import_state_folder(&r->st, list[i].name);
        s = folder_pass(r, &list[i], fs);
        if (s == STEP_NEXT && stopping(r))
            s = STEP_STOP;
    }
    free(list);
    if (s == STEP_NEXT && r->st.inflight) {
        /* Every append of this run has its record. */
        r->st.inflight = false;
        r->reconcile = false;
    }
    if (s == STEP_NEXT || s == STEP_STOP) {
        enum step sv = save_step(r);
        if (sv != STEP_NEXT)
            return sv;
    }
    return s;
}

/* ---- phases ------------------------------------------------------------------- */

static enum step phase_queued(struct run *r)
{
    return next_phase(r, "scan");
}

static enum step phase_scan(struct run *r)
{
    /* The listing with counts for the progress bar; makes the mailbox and
     * every folder (a pass that finds nothing new is cheap). */
    enum step s = connect_dst(r);
    if (s == STEP_NEXT)
        s = open_src(r);
    if (s != STEP_NEXT)
        return s;
    struct import_sfolder *list = NULL;
    size_t n = 0;
    const char *e = NULL;
    r->src->counting = true;
    if (r->src->ops->list(r->src, &list, &n, &e) < 0) {
        set_err(r, "source %s: %s", r->job.source, e != NULL ? e : "cannot be read");
        return later(r, RETRY_MS);
    }
    uint32_t inbox_uv = 0;
    uint64_t msgs = 0, bytes = 0;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(list[i].name, "INBOX") == 0)
            inbox_uv = list[i].uidvalidity;
        msgs += list[i].count;
        bytes += list[i].bytes;
    }
    s = ensure_mailbox(r, inbox_uv);
    for (size_t i = 0; i < n && s == STEP_NEXT; i++) {
        struct import_fstate *fs = import_state_folder(&r->st, list[i].name);
        fs->seen = true;
        str_copy(fs->src, list[i].src, sizeof(fs->src));
        if (list[i].error[0] != '\0')
            continue;
        bool keep;
        uint32_t dnext;
        s = ensure_folder(r, &list[i], fs, &keep, &dnext);
    }
    free(list);
    if (s != STEP_NEXT)
        return s;
    r->job.msgs_total = msgs;
    r->job.bytes_total = bytes;
    r->job.msgs_done = 0;
    r->job.bytes_done = 0;
    return next_phase(r, "copy");
}

static enum step phase_copy(struct run *r)
{
    enum step s = pass(r);
    if (s != STEP_NEXT)
        return s;
    return next_phase(r, r->st.set.watch ? "watch" : "complete");
}

static enum step phase_watch(struct run *r)
{
    if (r->job.options & DIR_JOB_OPT_COMPLETE)
        return next_phase(r, "complete");
    if ((int64_t)r->job.checkpoint > time_now_ms())
        return STEP_LATER;
    enum step s = pass(r);
    if (s != STEP_NEXT)
        return s;
    if (r->job.options & DIR_JOB_OPT_COMPLETE)
        return next_phase(r, "complete");
    s = later(r, (int64_t)r->st.set.poll * 1000);
    enum step sv = save_step(r);
    return sv != STEP_NEXT ? sv : s;
}

static enum step phase_complete(struct run *r)
{
    /* The cutover: what arrives from now on is a straggler. */
    if (r->st.cutover == 0)
        r->st.cutover = time_now_ms() / 1000;
    enum step s = pass(r);
    if (s != STEP_NEXT)
        return s;
    r->job.retain_until = r->st.cutover + (int64_t)r->st.set.sweep;
    return next_phase(r, "sweep");
}

static enum step phase_sweep(struct run *r)
{
    bool last = time_now_ms() / 1000 >= r->job.retain_until;
    if (!last && (int64_t)r->job.checkpoint > time_now_ms())
        return STEP_LATER;
    enum step s = pass(r);
    if (s != STEP_NEXT)
        return s;
    if (last)
        return next_phase(r, "done");
    int64_t next = (int64_t)r->st.set.poll * 1000;
    int64_t left = r->job.retain_until * 1000 - time_now_ms();
    s = later(r, left < next ? (left > 0 ? left : 0) : next);
    enum step sv = save_step(r);
    return sv != STEP_NEXT ? sv : s;
}

static const struct {
    const char *name;
    enum step (*run)(struct run *r);
} import_phases[] = {
    {"queued", phase_queued}, {"scan", phase_scan},         {"copy", phase_copy},
    {"watch", phase_watch},   {"complete", phase_complete}, {"sweep", phase_sweep},
};

static void finished(struct run *r)
{
    /* The password is not needed any more. */
    if (r->st.set.secret[0] != '\0' && unlink(r->st.set.secret) < 0)
        log_debug(r->ctx, "password file %s: already gone", r->st.set.secret);
}

enum import_result import_run(const struct import_env *env, uint64_t id)
{
    struct run r;
    memset(&r, 0, sizeof(r));
    r.env = env;
    r.msg_max = env->msg_max != 0 ? (size_t)env->msg_max : MSG_MAX_DEFAULT;
    if (r.msg_max > SYNC_BATCH_BYTES)
        r.msg_max = SYNC_BATCH_BYTES;
    snprintf(r.ctx, sizeof(r.ctx), "import:%llu", (unsigned long long)id);
    import_state_init(&r.st);
    if (dir_job_get(env->dir, id, &r.job) != DIR_OK)
        return IMPORT_LATER;
    if (strcmp(r.job.lease_owner, env->owner) != 0)
        return IMPORT_LOST;
    str_copy(r.err, r.job.last_error, sizeof(r.err));
    r.last_save_ms = time_mono_ms();
    enum import_result result = IMPORT_LATER;
    struct buf data;
    buf_init(&data, DIR_JOB_DATA_MAX);
    enum dir_status ds = dir_job_data_get(env->dir, id, &data);
    const char *e = NULL;
    if (ds != DIR_OK) {
        buf_free(&data);
        return IMPORT_LATER;
    }
    if (import_state_read(&r.st, data.data != NULL ? data.data : "", data.len, &e) < 0) {
        buf_free(&data);
        set_err(&r, "%s", e);
        str_copy(r.job.phase, "failed", sizeof(r.job.phase));
        job_save(&r);
        return IMPORT_FINISHED;
    }
    buf_free(&data);
    r.reconcile = r.st.inflight;
    for (;;) {
        const char *ph = r.job.phase;
        if (!import_phase_active(ph)) {
            if (strcmp(ph, "done") == 0)
                finished(&r);
            result = IMPORT_FINISHED;
            break;
        }
        /* Fault injection (tests): "crash:import.PHASE" dies before PHASE. */
        char point[DIR_PHASE_MAX + 8];
        snprintf(point, sizeof(point), "import.%s", ph);
        util_fault_point(point);
        if (env->before_phase != NULL && env->before_phase(env->ctx, ph) != 0) {
            result = IMPORT_STOPPED;
            break;
        }
        size_t k;
        for (k = 0; k < ARRAY_SIZE(import_phases); k++)
            if (strcmp(ph, import_phases[k].name) == 0)
                break;
        enum step s = STEP_FAIL;
        if (k < ARRAY_SIZE(import_phases))
            s = import_phases[k].run(&r);
        else
            set_err(&r, "unknown phase '%s'", ph);
        if (s == STEP_NEXT)
            continue;
        if (s == STEP_FAIL) {
            str_copy(r.job.phase, "failed", sizeof(r.job.phase));
            result = job_save(&r) == -2 ? IMPORT_LOST : IMPORT_FINISHED;
            if (result == IMPORT_FINISHED)
                finished(&r);
            break;
        }
        if (s == STEP_LOST) {
            result = IMPORT_LOST;
            break;
        }
        if (s == STEP_STOP) {
            job_save(&r);
            result = IMPORT_STOPPED;
            break;
        }
        /* STEP_LATER: record why and when, keep the lease fresh. */
        r.hold_lease = true;
        result = job_save(&r) == -2 ? IMPORT_LOST : IMPORT_LATER;
        break;
    }
    sync_close(&r.dst);
    import_src_close(&r.src);
    records_free(&r.rec);
    free(r.df);
    import_state_free(&r.st);
    return result;
}

/* ---- for the CLI ---------------------------------------------------------------- */

int import_source_check(const char *spec, bool *needs_password_r, bool *tls_r, const char **error_r)
{
    *needs_password_r = false;
    if (tls_r != NULL)
        *tls_r = false;
    if (strlen(spec) > DIR_JOB_ARG_MAX) {
        *error_r = "the source is too long";
        return -1;
    }
    if (strncmp(spec, "imap://", 7) == 0 || strncmp(spec, "imaps://", 8) == 0) {
        char user[256], host[256];
        int port;
        bool tls;
        if (import_imap_url(spec, user, sizeof(user), host, sizeof(host), &port, &tls, error_r) < 0)
            return -1;
        if (tls_r != NULL)
            *tls_r = tls;
        *needs_password_r = true;
        return 0;
    }
    const char *path;
    if (strncmp(spec, "mbox:", 5) == 0)
        path = spec + 5;
    else if (strncmp(spec, "maildir:", 8) == 0)
        path = spec + 8;
    else {
        *error_r = "SOURCE is mbox:PATH, maildir:PATH, imap://USER@HOST[:PORT] or "
                   "imaps://USER@HOST[:PORT]";
        return -1;
    }
    if (path[0] != '/') {
        *error_r = "the source path must be absolute";
        return -1;
    }
    if (strlen(spec) > DIR_JOB_ARG_MAX) {
        *error_r = "the source is too long";
        return -1;
    }
    if (access(path, R_OK) < 0) {
        *error_r = "the source path cannot be read";
        return -1;
    }
    return 0;
}

enum dir_status import_job_create(struct directory *dir, const char *user, const char *home,
                                  const char *source, const struct import_settings *set,
                                  uint64_t *id_r)
{
    struct import_state st;
    import_state_init(&st);
    st.set = *set;
    if (st.set.poll == 0)
        st.set.poll = 1;
    struct buf data;
    buf_init(&data, 0);
    import_state_write(&st, &data);
    struct dir_job j;
    memset(&j, 0, sizeof(j));
    j.kind = DIR_JOB_IMPORT;
    str_copy(j.user, user, sizeof(j.user));
    str_copy(j.source, source, sizeof(j.source));
    str_copy(j.dest, home, sizeof(j.dest));
    str_copy(j.phase, "queued", sizeof(j.phase));
    if (set->watch)
        j.options |= DIR_JOB_OPT_SUSPEND;
    enum dir_status ds = dir_job_create_data(dir, &j, data.data, data.len);
    buf_free(&data);
    import_state_free(&st);
    if (ds == DIR_OK)
        *id_r = j.id;
    return ds;
}

int import_report(struct directory *dir, uint64_t id, FILE *out, const char **error_r)
{
    struct dir_job j;
    enum dir_status ds = dir_job_get(dir, id, &j);
    if (ds != DIR_OK || j.kind != DIR_JOB_IMPORT) {
        *error_r = ds == DIR_TEMPFAIL ? "directory unavailable, try again" : "no such import job";
        return -1;
    }
    struct buf data;
    buf_init(&data, DIR_JOB_DATA_MAX);
    struct import_state st;
    import_state_init(&st);
    ds = dir_job_data_get(dir, id, &data);
    if (ds != DIR_OK ||
        import_state_read(&st, data.data != NULL ? data.data : "", data.len, error_r) < 0) {
        if (ds != DIR_OK)
            *error_r = "directory unavailable, try again";
        buf_free(&data);
        return -1;
    }
    buf_free(&data);
    char t1[32];
    fprintf(out, "import %llu: %s from %s into %s\n", (unsigned long long)j.id, j.user, j.source,
            j.dest);
    fprintf(out, "phase: %s%s\n", j.phase, st.set.watch ? " (watching until completed)" : "");
    if (st.cutover > 0) {
        time_format_utc(st.cutover, t1, sizeof(t1));
        fprintf(out, "cutover: %s\n", t1);
        if (j.retain_until > 0) {
            time_format_utc(j.retain_until, t1, sizeof(t1));
            fprintf(out, "straggler sweep %s: %s\n",
                    strcmp(j.phase, "done") == 0 ? "ended" : "until", t1);
        }
    }
    if (st.note[0] != '\0')
        fprintf(out, "note: %s\n", st.note);
    if (j.last_error[0] != '\0')
        fprintf(out, "last error: %s\n", j.last_error);
    fprintf(out, "%-24s %9s %11s %9s %9s %6s %11s %7s  %s\n", "FOLDER", "SOURCE", "BYTES",
            "IMPORTED", "ALREADY", "DUPS", "STRAGGLERS", "FAILED", "UIDS");
    uint64_t tot[7] = {0};
    for (size_t i = 0; i < st.n; i++) {
        const struct import_fstate *f = &st.f[i];
        char uids[IMPORT_TEXT_MAX + 64];
        if (f->uidvalidity == 0 && f->imported == 0)
            snprintf(uids, sizeof(uids), "-");
        else if (f->uidvalidity == 0)
            snprintf(uids, sizeof(uids), "new: %s",
                     f->uid_note[0] ? f->uid_note : "the source has no UIDs");
        else if (f->uids_kept + f->uids_new == 0)
            snprintf(uids, sizeof(uids), "-");
        else if (f->uids_new == 0)
            snprintf(uids, sizeof(uids), "kept");
        else if (f->uids_kept == 0)
            snprintf(uids, sizeof(uids), "new: %s",
                     f->uid_note[0] ? f->uid_note : "UIDs taken in the destination folder");
        else
            snprintf(uids, sizeof(uids), "%llu kept, %llu new%s%s",
                     (unsigned long long)f->uids_kept, (unsigned long long)f->uids_new,
                     f->uid_note[0] ? ": " : "", f->uid_note);
        fprintf(out, "%-24s %9llu %11llu %9llu %9llu %6llu %11llu %7llu  %s%s\n", f->name,
                (unsigned long long)f->src_msgs, (unsigned long long)f->src_bytes,
                (unsigned long long)f->imported, (unsigned long long)f->already,
                (unsigned long long)f->dups, (unsigned long long)f->stragglers,
                (unsigned long long)f->failed, uids, f->seen ? "" : " (not in the source now)");
        uint64_t v[7] = {f->src_msgs, f->src_bytes,  f->imported, f->already,
                         f->dups,     f->stragglers, f->failed};
        for (int k = 0; k < 7; k++)
            tot[k] += v[k];
    }
    fprintf(out, "%-24s %9llu %11llu %9llu %9llu %6llu %11llu %7llu\n", "TOTAL",
            (unsigned long long)tot[0], (unsigned long long)tot[1], (unsigned long long)tot[2],
            (unsigned long long)tot[3], (unsigned long long)tot[4], (unsigned long long)tot[5],
            (unsigned long long)tot[6]);
    uint64_t malformed = 0, flagsync = 0;
    for (size_t i = 0; i < st.n; i++) {
        malformed += st.f[i].malformed;
        flagsync += st.f[i].flags_synced;
    }
    if (flagsync > 0)
        fprintf(out, "flag changes at the source carried over before the cutover: %llu\n",
                (unsigned long long)flagsync);
    if (malformed > 0)
        fprintf(out, "imported as they are despite a problem (malformed): %llu\n",
                (unsigned long long)malformed);
    bool any = false;
    for (size_t i = 0; i < st.n; i++) {
        const struct import_fstate *f = &st.f[i];
        if (f->failed == 0)
            continue;
        if (!any)
            fprintf(out, "not imported:\n");
        any = true;
        for (size_t k = 0; k < f->n_fails; k++)
            fprintf(out, "  %s: %s: %s\n", f->name, f->fails[k].where, f->fails[k].why);
        if (f->failed > f->n_fails)
            fprintf(out, "  %s: ... and %llu more\n", f->name,
                    (unsigned long long)(f->failed - f->n_fails));
    }
    import_state_free(&st);
    return 0;
}
