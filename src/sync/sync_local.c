/*
 * sync_local — the in-process transport of sync.h: every operation mapped
 * onto the store API of one struct store. The TSYNC/1 server (syncd)
 * executes its commands through this same transport, so the two transports
 * agree by construction; only the wire sits between them.
 *
 * Store statuses become return codes: STORE_OK 0; NOTFOUND, EXISTS,
 * CONFLICT, NOTLIVE and INVALID SYNC_NO with that reason; STORE_ERROR -1.
 * The composite operations (folder_ensure, folder_delete by UIDVALIDITY,
 * digest) are several store calls, not one transaction: the store role is
 * the only writer of its store, and each step is idempotent, so a retry
 * after a failure in the middle converges.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "sync/sync_private.h"

struct sync_local {
    struct sync base;
    struct store *st;
    /* The fencing token the writes of this transport carry (token op,
     * sync_local_token_use); "" and 0/0: none. */
    char tok_user[MAIL_ADDR_MAX + 1];
    struct store_token tok;
};

struct store *sync_local_store(struct sync *s)
{
    return ((struct sync_local *)s)->st;
}

int sync_local_status(enum store_status st, const char **why_r)
{
    switch (st) {
    case STORE_OK:
        return 0;
    case STORE_NOTFOUND:
        *why_r = "notfound";
        return SYNC_NO;
    case STORE_EXISTS:
        *why_r = "exists";
        return SYNC_NO;
    case STORE_CONFLICT:
        *why_r = "conflict";
        return SYNC_NO;
    case STORE_NOTLIVE:
        *why_r = "notlive";
        return SYNC_NO;
    case STORE_INVALID:
        *why_r = "invalid";
        return SYNC_NO;
    case STORE_STALE:
        *why_r = "stale token";
        return SYNC_NO;
    case STORE_ERROR:
        break;
    }
    *why_r = "store error";
    return -1;
}

static int sync_local_no(const char *why, const char **why_r)
{
    *why_r = why;
    return SYNC_NO;
}

/* A delivery id that travels as one TSYNC/1 token: 1..64 printable octets
 * without space. LMTP only records [A-Za-z0-9._-]; anything else could only
 * come from the store API directly, and is refused (delivery_add) or left
 * out (deliveries) by both transports alike. */
static bool sync_local_id_ok(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > STORE_DELIVERY_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)id[i] <= 0x20 || (unsigned char)id[i] >= 0x7f)
            return false;
    return true;
}

/* ---- mailboxes ---- */

static void sync_local_close(struct sync *s)
{
    free(s);
}

static int sync_local_mailbox_get(struct sync *s, const char *user, struct store_mailbox *out,
                                  const char **why_r)
{
    return sync_local_status(store_mailbox_get(sync_local_store(s), user, out), why_r);
}

static int sync_local_mailbox_create(struct sync *s, const char *user, enum store_mbox_state state,
                                     uint64_t epoch, uint32_t inbox_uidvalidity, const char **why_r)
{
    return sync_local_status(
        store_mailbox_create_with(sync_local_store(s), user, state, epoch, inbox_uidvalidity),
        why_r);
}

static int sync_local_mailbox_state(struct sync *s, const char *user, enum store_mbox_state expect,
                                    enum store_mbox_state state, uint64_t epoch,
                                    const char *moved_to, const char **why_r)
{
    return sync_local_status(
        store_mailbox_set_state(sync_local_store(s), user, expect, state, epoch, moved_to), why_r);
}

static int sync_local_mailbox_purge(struct sync *s, const char *user, const char **why_r)
{
    return sync_local_status(store_mailbox_purge(sync_local_store(s), user), why_r);
}

/* ---- changes ---- */

static const struct sync_ops sync_local_ops;

static void sync_local_check(struct sync *s)
{
    if (s->ops != &sync_local_ops)
        panic("sync: a listing in steps needs the local transport");
}

/* One step's state between the store's callbacks. */
struct sync_local_changes {
    const struct sync_changes_cb *cb;
    struct sync_changes_cursor *cur;
    size_t max, n;
    uint64_t last; /* modseq of the last record listed in this step */
    int r;         /* a callback's non-zero */
    bool stop;     /* the step ends (this is not an error) */
    bool end;      /* ... and so does the listing */
};

/* Whether the record at modseq ends the step: past the listing's end, or
 * the step has its records and this one starts a new modseq. */
static bool sync_local_step_full(struct sync_local_changes *c, uint64_t modseq)
{
    if (modseq > c->cur->upto) {
        c->stop = c->end = true;
        return true;
    }
    if (c->n >= c->max && modseq != c->last) {
        c->stop = true;
        return true;
    }
    return false;
}

static int sync_local_change_folder(void *ctx, const struct store_folder *f)
{
    struct sync_local_changes *c = ctx;
    if (c->cur->msgs)
        return 0; /* listed in an earlier step */
    if (f->modseq > c->cur->upto) {
        /* Every folder record of the listing is out: messages follow. */
        c->cur->msgs = true;
        c->cur->pos = c->cur->since;
        c->stop = true;
        return 1;
    }
    if (sync_local_step_full(c, f->modseq))
        return 1;
    struct sync_folder sf;
    memset(&sf, 0, sizeof(sf));
    str_copy(sf.name, f->name, sizeof(sf.name));
    sf.uidvalidity = f->uidvalidity;
    sf.uidnext = f->uidnext;
    sf.modseq = f->modseq;
    sf.deleted = f->deleted;
    c->n++;
    c->last = f->modseq;
    c->cur->pos = f->modseq;
    if (c->cb->folder != NULL && (c->r = c->cb->folder(c->cb->ctx, &sf)) != 0)
        return 1;
    return 0;
}

/* The store hands each message record its folder row (live or tombstone,
 * as it is now), so name and UIDVALIDITY need no lookup by folder id. */
void sync_local_msg_from_store(struct sync_msg *sm, const struct store_folder *f,
                               const struct store_msg *m)
{
    memset(sm, 0, sizeof(*sm));
    str_copy(sm->folder, f->name, sizeof(sm->folder));
    sm->uidvalidity = f->uidvalidity;
    sm->uid = m->uid;
    memcpy(sm->guid, m->guid, STORE_GUID_LEN);
    sm->flags = m->flags;
    str_copy(sm->keywords, m->keywords != NULL ? m->keywords : "", sizeof(sm->keywords));
    sm->internal_date = m->internal_date;
    sm->size = m->size;
    memcpy(sm->sha256, m->sha256, SHA256_LEN);
    sm->modseq = m->modseq;
    sm->expunged = m->expunged;
}

static int sync_local_change_msg(void *ctx, const struct store_folder *f, const struct store_msg *m)
{
    struct sync_local_changes *c = ctx;
    if (!c->cur->msgs) {
        /* The store went on to the messages: every folder record is out. */
        c->cur->msgs = true;
        c->cur->pos = c->cur->since;
        c->stop = true;
        return 1;
    }
    if (sync_local_step_full(c, m->modseq))
        return 1;
    if (f->modseq > c->cur->upto) {
        /* The folder changed since the listing began: this record would
         * carry a name the listing's folder records do not (see sync.h). */
        c->cur->upto = m->modseq - 1;
        c->stop = c->end = true;
        return 1;
    }
    struct sync_msg sm;
    sync_local_msg_from_store(&sm, f, m);
    c->n++;
    c->last = m->modseq;
    c->cur->pos = m->modseq;
    if (c->cb->msg != NULL && (c->r = c->cb->msg(c->cb->ctx, &sm)) != 0)
        return 1;
    return 0;
}

int sync_local_changes_begin(struct sync *s, const char *user, uint64_t since,
                             struct sync_changes_cursor *cur, const char **why_r)
{
    sync_local_check(s);
    memset(cur, 0, sizeof(*cur));
    struct store_mailbox mb;
    /* The modseq is read before the listing: rows only ever move up, so
     * whatever changes during the listing has a modseq above it and the
     * next pass (since = the final modseq) sees it again. Reading it after
     * could claim a change the listing missed. */
    int r = sync_local_status(store_mailbox_get(sync_local_store(s), user, &mb), why_r);
    if (r != 0)
        return r;
    cur->since = cur->pos = since;
    cur->upto = mb.modseq;
    cur->done = since >= mb.modseq;
    return 0;
}

int sync_local_changes_step(struct sync *s, const char *user, struct sync_changes_cursor *cur,
                            size_t max, const struct sync_changes_cb *cb, const char **why_r)
{
    sync_local_check(s);
    struct store *st = sync_local_store(s);
    if (cur->done)
        return 0;
    struct store_mailbox mb;
    int r = sync_local_status(store_mailbox_get(st, user, &mb), why_r);
    if (r != 0)
        return r;
    struct sync_local_changes c = {.cb = cb, .cur = cur, .max = max ? max : 1};
    c.last = cur->pos;
    struct store_change_cb scb = {
        .folder = sync_local_change_folder, .msg = sync_local_change_msg, .ctx = &c};
    const char *error = NULL;
    r = store_changes(st, user, cur->pos, &scb, &error);
    if (c.r != 0) {
        *why_r = "aborted";
        return -1;
    }
    if (r != 0 && !c.stop) {
        *why_r = error != NULL ? error : "store error";
        return -1;
    }
    if (!c.stop && !cur->msgs) {
        /* The folders ran out with no message after them: the messages
         * still have to be listed from `since`. */
        cur->msgs = true;
        cur->pos = cur->since;
        return 0;
    }
    if (!c.stop || c.end)
        cur->done = true; /* the store ran out of records, or upto is reached */
    return 0;
}

static int sync_local_changes(struct sync *s, const char *user, uint64_t since,
                              const struct sync_changes_cb *cb, uint64_t *modseq_r,
                              const char **why_r)
{
    struct sync_changes_cursor cur;
    int r = sync_local_changes_begin(s, user, since, &cur, why_r);
    while (r == 0 && !cur.done)
        r = sync_local_changes_step(s, user, &cur, 4096, cb, why_r);
    if (r != 0)
        return r;
    *modseq_r = cur.upto;
    return 0;
}

/* ---- messages ---- */

static int sync_local_fetch(struct sync *s, const char *user, const char *folder, uint32_t uid,
                            struct buf *out, const char **why_r)
{
    return sync_local_status(store_msg_read(sync_local_store(s), user, folder, uid, out), why_r);
}

static int sync_local_fetch_batch(struct sync *s, const char *user, const char *const *folders,
                                  const uint32_t *uids, size_t n, struct buf *outs, int *rc_out,
                                  const char **why_out)
{
    if (n > SYNC_BATCH_MAX)
        return -1;
    for (size_t i = 0; i < n; i++) {
        why_out[i] = NULL;
        rc_out[i] = sync_local_fetch(s, user, folders[i], uids[i], &outs[i], &why_out[i]);
        if (rc_out[i] < 0)
            return -1;
    }
    return 0;
}

static int sync_local_fetch_headers(struct sync *s, const char *user, const char *folder,
                                    const uint32_t *uids, size_t n, struct buf *outs, int *rc_out,
                                    const char **why_out)
{
    if (n > SYNC_BATCH_MAX)
        return -1;
    for (size_t i = 0; i < n; i++) {
        why_out[i] = NULL;
        rc_out[i] = sync_local_status(
            store_msg_read_header(sync_local_store(s), user, folder, uids[i], &outs[i]),
            &why_out[i]);
        if (rc_out[i] < 0)
            return -1;
    }
    return 0;
}

static int sync_local_append(struct sync *s, const char *user, const struct sync_msg *m,
                             const void *data, size_t len, const char **why_r)
{
    /* A move keeps UIDs: letting the store choose one would hide a bug. */
    if (m->uid == 0 || (data == NULL && len > 0))
        return sync_local_no("invalid", why_r);
    /* Verified before the store sees it: bytes that differ from what the
     * source recorded must never become a message. */
    uint8_t sha[SHA256_LEN];
    sha256_buf(data, len, sha);
    if (memcmp(sha, m->sha256, SHA256_LEN) != 0)
        return sync_local_no("checksum", why_r);
    struct store_append a = {
        .user = user,
        .folder = m->folder,
        .data = data,
        .len = len,
        .internal_date = m->internal_date,
        .flags = m->flags,
        .keywords = m->keywords,
        .guid = m->guid,
        .uid = m->uid,
        .modseq = m->modseq,
    };
    struct store_append_result res;
    const char *error = NULL;
    struct store_batch *b = store_batch_begin(sync_local_store(s));
    store_batch_add(b, &a, &res);
    if (store_batch_commit(&b, &error) < 0) {
        *why_r = error != NULL ? error : "store error";
        return -1;
    }
    return sync_local_status(res.status, why_r);
}

/* The group commit of append: every item checked as append checks it, the
 * good ones queued into one store batch, one commit for all. */
static int sync_local_append_batch(struct sync *s, const char *user,
                                   const struct sync_msg *const *msgs, const void *const *data,
                                   const size_t *lens, size_t n, int *rc_out, const char **why_out,
                                   struct sync_append_res *res_out)
{
    if (!sync_batch_fits(lens, n)) {
        log_warn("sync", "append_batch over its limits (%zu messages): not sent", n);
        return -1;
    }
    if (n == 0)
        return 0;
    struct store_append_result *res = xcalloc(n, sizeof(*res));
    bool *queued = xcalloc(n, sizeof(*queued));
    struct store_batch *b = store_batch_begin(sync_local_store(s));
    for (size_t i = 0; i < n; i++) {
        const struct sync_msg *m = msgs[i];
        rc_out[i] = 0;
        why_out[i] = NULL;
        if (res_out != NULL)
            memset(&res_out[i], 0, sizeof(res_out[i]));
        bool id_bad = strnlen(m->delivery_id, sizeof(m->delivery_id)) == sizeof(m->delivery_id) ||
                      (m->delivery_id[0] != '\0' && !sync_local_id_ok(m->delivery_id));
        if (m->uid == 0 || (data[i] == NULL && lens[i] > 0) || id_bad) {
            rc_out[i] = sync_local_no("invalid", &why_out[i]);
            continue;
        }
        uint8_t sha[SHA256_LEN];
        sha256_buf(data[i], lens[i], sha);
        if (memcmp(sha, m->sha256, SHA256_LEN) != 0) {
            rc_out[i] = sync_local_no("checksum", &why_out[i]);
            continue;
        }
        struct store_append a = {
            .user = user,
            .folder = m->folder,
            .data = data[i],
            .len = lens[i],
            .internal_date = m->internal_date,
            .flags = m->flags,
            .keywords = m->keywords,
            .guid = m->guid,
            .uid = m->uid,
            .delivery_id = m->delivery_id[0] != '\0' ? m->delivery_id : NULL,
            .modseq = m->modseq,
        };
        store_batch_add(b, &a, &res[i]);
        queued[i] = true;
    }
    int r = 0;
    const char *error = NULL;
    if (store_batch_count(b) == 0) {
        store_batch_abort(&b);
    } else if (store_batch_commit(&b, &error) < 0) {
        for (size_t i = 0; i < n; i++)
            why_out[i] = error != NULL ? error : "store error";
        r = -1;
    }
    for (size_t i = 0; i < n && r == 0; i++) {
        if (!queued[i])
            continue;
        rc_out[i] = sync_local_status(res[i].status, &why_out[i]);
        if (rc_out[i] < 0) {
            /* A committed batch has no STORE_ERROR items; if one did, the
             * caller could not tell what is stored. */
            why_out[i] = "store error";
            r = -1;
        } else if (rc_out[i] == 0 && res_out != NULL && res[i].duplicate) {
            res_out[i].duplicate = true;
            res_out[i].uid = res[i].uid;
            res_out[i].uidvalidity = res[i].uidvalidity;
        }
    }
    free(queued);
    free(res);
    return r;
}

/* The local transport has nothing to overlap: start does the whole batch
 * (a -1 from it needs no end), end has nothing left to report. */
static int sync_local_append_batch_start(struct sync *s, const char *user,
                                         const struct sync_msg *const *msgs,
                                         const void *const *data, const size_t *lens, size_t n,
                                         int *rc_out, const char **why_out)
{
    return sync_local_append_batch(s, user, msgs, data, lens, n, rc_out, why_out, NULL);
}

static int sync_local_append_batch_end(struct sync *s)
{
    (void)s;
    return 0;
}

/* ---- folders ---- */

/* The live folder with this UIDVALIDITY, and whether `name` is held by
 * another live folder. 0, or a sync status from the listing. */
static int sync_local_folder_find(struct store *st, const char *user, uint32_t uidvalidity,
                                  const char *name, struct store_folder *found_r, bool *found,
                                  bool *name_taken, const char **why_r)
{
    struct store_folder *list;
    size_t n;
    int r = sync_local_status(store_folder_list(st, user, &list, &n), why_r);
    if (r != 0)
        return r;
    *found = false;
    *name_taken = false;
    for (size_t i = 0; i < n; i++) {
        if (!*found && list[i].uidvalidity == uidvalidity) {
            *found_r = list[i];
            *found = true;
        } else if (name != NULL && strcmp(list[i].name, name) == 0) {
            *name_taken = true;
        }
    }
    free(list);
    return 0;
}

static int sync_local_folder_ensure_at(struct sync *s, const char *user, const char *name,
                                       uint32_t uidvalidity, uint32_t uidnext, uint64_t modseq,
                                       const char **why_r)
{
    struct store *st = sync_local_store(s);
    /* UIDVALIDITY 0 would ask the store to choose one: never what a copy
     * wants. */
    if (uidvalidity == 0 || name == NULL || strlen(name) > STORE_FOLDER_MAX)
        return sync_local_no("invalid", why_r);
    /* Compare against the store's canonical spelling ("inbox" is INBOX). */
    char canon[STORE_FOLDER_MAX + 1];
    str_copy(canon, name, sizeof(canon));
    if (strcasecmp(canon, "INBOX") == 0)
        str_copy(canon, "INBOX", sizeof(canon));
    struct store_folder f;
    bool found, taken;
    int r = sync_local_folder_find(st, user, uidvalidity, canon, &f, &found, &taken, why_r);
    if (r != 0)
        return r;
    if (found && strcmp(f.name, canon) != 0) {
        /* The folder was renamed at the source: rename it here, unless its
         * new name is held by a folder of another identity (the caller
         * must move or delete that one first). */
        if (taken)
            return sync_local_no("conflict", why_r);
        r = sync_local_status(store_folder_rename_at(st, user, f.name, canon, modseq), why_r);
    } else if (!found) {
        enum store_status ss = store_folder_create_at(st, user, canon, uidvalidity, modseq);
        r = ss == STORE_EXISTS ? sync_local_no("conflict", why_r) : sync_local_status(ss, why_r);
    }
    if (r != 0)
        return r;
    return sync_local_status(store_folder_set_uidnext_at(st, user, canon, uidnext, modseq), why_r);
}

static int sync_local_folder_ensure(struct sync *s, const char *user, const char *name,
                                    uint32_t uidvalidity, uint32_t uidnext, const char **why_r)
{
    return sync_local_folder_ensure_at(s, user, name, uidvalidity, uidnext, 0, why_r);
}

static int sync_local_folder_delete_at(struct sync *s, const char *user, uint32_t uidvalidity,
                                       uint64_t modseq, const char **why_r)
{
    struct store *st = sync_local_store(s);
    struct store_folder f;
    bool found, taken;
    int r = sync_local_folder_find(st, user, uidvalidity, NULL, &f, &found, &taken, why_r);
    if (r != 0 || !found)
        return r; /* gone already: deleting is idempotent */
    enum store_status ss = store_folder_delete_at(st, user, f.name, modseq);
    return ss == STORE_NOTFOUND ? 0 : sync_local_status(ss, why_r);
}

static int sync_local_folder_delete(struct sync *s, const char *user, uint32_t uidvalidity,
                                    const char **why_r)
{
    return sync_local_folder_delete_at(s, user, uidvalidity, 0, why_r);
}

/* A NOTFOUND from a change to one message is fine (it is gone already, a
 * retry) unless the mailbox itself is missing. */
static int sync_local_gone_ok(struct store *st, const char *user, enum store_status ss,
                              const char **why_r)
{
    if (ss != STORE_NOTFOUND)
        return sync_local_status(ss, why_r);
    struct store_mailbox mb;
    return sync_local_status(store_mailbox_get(st, user, &mb), why_r);
}

static int sync_local_flags(struct sync *s, const char *user, const char *folder, uint32_t uid,
                            uint32_t flags, const char *keywords, const char **why_r)
{
    return sync_local_status(store_msg_set_flags(sync_local_store(s), user, folder, uid,
                                                 STORE_FLAGS_SET, flags,
                                                 keywords != NULL ? keywords : "", 0, NULL),
                             why_r);
}

static int sync_local_flags_at(struct sync *s, const char *user, const char *folder, uint32_t uid,
                               uint32_t flags, const char *keywords, uint64_t modseq,
                               const char **why_r)
{
    if (modseq == 0)
        return sync_local_flags(s, user, folder, uid, flags, keywords, why_r);
    return sync_local_status(store_msg_set_flags_at(sync_local_store(s), user, folder, uid, flags,
                                                    keywords != NULL ? keywords : "", modseq),
                             why_r);
}

static int sync_local_expunge_at(struct sync *s, const char *user, const char *folder, uint32_t uid,
                                 uint64_t modseq, const char **why_r)
{
    struct store *st = sync_local_store(s);
    return sync_local_gone_ok(st, user, store_msg_expunge_at(st, user, folder, uid, modseq), why_r);
}

static int sync_local_tombstone(struct sync *s, const char *user, const struct sync_msg *m,
                                const char **why_r)
{
    struct store *st = sync_local_store(s);
    struct store_msg t;
    memset(&t, 0, sizeof(t));
    t.uid = m->uid;
    memcpy(t.guid, m->guid, STORE_GUID_LEN);
    t.flags = m->flags;
    t.keywords = m->keywords;
    t.internal_date = m->internal_date;
    t.size = m->size;
    memcpy(t.sha256, m->sha256, SHA256_LEN);
    t.modseq = m->modseq;
    t.expunged = true;
    return sync_local_gone_ok(st, user, store_msg_tombstone(st, user, m->folder, &t), why_r);
}

static int sync_local_expunge(struct sync *s, const char *user, const char *folder, uint32_t uid,
                              const char **why_r)
{
    return sync_local_expunge_at(s, user, folder, uid, 0, why_r);
}

/* ---- digest ---- */

struct sync_local_digest {
    struct sha256 *h;
    uint64_t n;
};

static int sync_local_digest_msg(void *ctx, const struct store_msg *m)
{
    struct sync_local_digest *d = ctx;
    char line[2 * STORE_GUID_LEN + 2 * SHA256_LEN + STORE_KEYWORDS_MAX + 80];
    char guid[2 * STORE_GUID_LEN + 1], sha[2 * SHA256_LEN + 1];
    hex_encode(m->guid, STORE_GUID_LEN, guid);
    hex_encode(m->sha256, SHA256_LEN, sha);
    int n = snprintf(line, sizeof(line), "%u %s %u %lld %llu %s %s\n", m->uid, guid, m->flags,
                     (long long)m->internal_date, (unsigned long long)m->size, sha,
                     m->keywords != NULL ? m->keywords : "");
    if (n < 0 || (size_t)n >= sizeof(line))
        return -1;
    sha256_update(d->h, line, (size_t)n);
    d->n++;
    return 0;
}

int sync_local_digest_begin(struct sync *s, const char *user, struct sync_digest_cursor *cur,
                            const char **why_r)
{
    sync_local_check(s);
    memset(cur, 0, sizeof(*cur));
    return sync_local_status(store_folder_list(sync_local_store(s), user, &cur->folders, &cur->n),
                             why_r);
}

int sync_local_digest_step(struct sync *s, const char *user, struct sync_digest_cursor *cur,
                           struct sync_digest *out, const char **why_r)
{
    sync_local_check(s);
    struct store *st = sync_local_store(s);
    for (; cur->next < cur->n; cur->next++) {
        const struct store_folder *f = &cur->folders[cur->next];
        /* The folder as it is now: deleted or renamed since the list was
         * taken, it is left out (a digest taken while the mailbox changes
         * is stale anyway; the mover digests frozen mailboxes). */
        struct store_folder now;
        enum store_status ss = store_folder_get(st, user, f->name, &now);
        if (ss == STORE_NOTFOUND) {
            struct store_mailbox mb;
            int r = sync_local_status(store_mailbox_get(st, user, &mb), why_r);
            if (r != 0)
                return r;
            continue;
        }
        int r = sync_local_status(ss, why_r);
        if (r != 0)
            return r;
        if (now.uidvalidity != f->uidvalidity)
            continue;
        /* The lines are hashed as they come: nothing per message is kept. */
        struct sync_local_digest d = {.h = sha256_new(), .n = 0};
        const char *error = NULL;
        if (store_msg_iter(st, user, now.name, sync_local_digest_msg, &d, &error) != 0) {
            sha256_free(&d.h);
            *why_r = error != NULL ? error : "store error";
            return -1;
        }
        memset(out, 0, sizeof(*out));
        str_copy(out->name, now.name, sizeof(out->name));
        out->uidvalidity = now.uidvalidity;
        out->uidnext = now.uidnext;
        out->messages = d.n;
        sha256_final(&d.h, out->digest);
        cur->next++;
        return 0;
    }
    cur->done = true;
    return 0;
}

void sync_local_digest_end(struct sync_digest_cursor *cur)
{
    free(cur->folders);
    memset(cur, 0, sizeof(*cur));
}

static int sync_local_digest(struct sync *s, const char *user, struct sync_digest **list_r,
                             size_t *n_r, const char **why_r)
{
    *list_r = NULL;
    *n_r = 0;
    struct sync_digest_cursor cur;
    int r = sync_local_digest_begin(s, user, &cur, why_r);
    if (r != 0)
        return r;
    struct sync_digest *list = xcalloc(cur.n ? cur.n : 1, sizeof(*list));
    size_t n = 0;
    while (r == 0 && n < cur.n) {
        r = sync_local_digest_step(s, user, &cur, &list[n], why_r);
        if (r == 0 && !cur.done)
            n++;
        else
            break;
    }
    sync_local_digest_end(&cur);
    if (r != 0) {
        free(list);
        return r;
    }
    *list_r = list;
    *n_r = n;
    return 0;
}

/* ---- delivery ids ---- */

struct sync_local_dels {
    struct sync_deliveries_cursor *cur;
    int (*cb)(void *ctx, const struct sync_delivery *d);
    void *ctx;
    size_t max, n;
    int r; /* the callback's non-zero */
};

static int sync_local_del_cb(void *ctx, const char *id, const char *folder, uint32_t uid)
{
    struct sync_local_dels *d = ctx;
    if (d->n >= d->max)
        return 1; /* the step is full: resumed after cur->after */
    str_copy(d->cur->after, id, sizeof(d->cur->after));
    d->n++;
    if (!sync_local_id_ok(id)) {
        log_warn("sync", "delivery id with unsendable octets left out of the list");
        return 0;
    }
    struct sync_delivery e;
    memset(&e, 0, sizeof(e));
    str_copy(e.id, id, sizeof(e.id));
    str_copy(e.folder, folder, sizeof(e.folder));
    e.uid = uid;
    if ((d->r = d->cb(d->ctx, &e)) != 0)
        return 1;
    return 0;
}

int sync_local_deliveries_begin(struct sync *s, const char *user, uint64_t since, uint64_t upto,
                                struct sync_deliveries_cursor *cur, const char **why_r)
{
    sync_local_check(s);
    memset(cur, 0, sizeof(*cur));
    cur->since = since;
    cur->upto = upto;
    struct store_mailbox mb;
    return sync_local_status(store_mailbox_get(sync_local_store(s), user, &mb), why_r);
}

int sync_local_deliveries_step(struct sync *s, const char *user, struct sync_deliveries_cursor *cur,
                               size_t max, int (*cb)(void *ctx, const struct sync_delivery *d),
                               void *ctx, const char **why_r)
{
    sync_local_check(s);
    struct store *st = sync_local_store(s);
    if (cur->done)
        return 0;
    struct store_mailbox mb;
    int r = sync_local_status(store_mailbox_get(st, user, &mb), why_r);
    if (r != 0)
        return r;
    struct sync_local_dels d = {.cur = cur, .cb = cb, .ctx = ctx, .max = max ? max : 1};
    const char *error = NULL;
    r = store_delivery_iter_from(st, user, cur->after, cur->since, cur->upto, sync_local_del_cb, &d,
                                 &error);
    if (d.r != 0) {
        *why_r = "aborted";
        return -1;
    }
    if (r < 0) {
        *why_r = error != NULL ? error : "store error";
        return -1;
    }
    if (r == 0)
        cur->done = true; /* the store ran out of ids */
    return 0;
}

static int sync_local_deliveries_each(struct sync *s, const char *user, uint64_t since,
                                      uint64_t upto,
                                      int (*cb)(void *ctx, const struct sync_delivery *d),
                                      void *ctx, const char **why_r)
{
    struct sync_deliveries_cursor cur;
    int r = sync_local_deliveries_begin(s, user, since, upto, &cur, why_r);
    while (r == 0 && !cur.done)
        r = sync_local_deliveries_step(s, user, &cur, 4096, cb, ctx, why_r);
    return r;
}

struct sync_local_list {
    struct sync_delivery *list;
    size_t n, cap;
};

static int sync_local_list_add(void *ctx, const struct sync_delivery *d)
{
    struct sync_local_list *l = ctx;
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        l->list = xrealloc(l->list, l->cap * sizeof(*l->list));
    }
    l->list[l->n++] = *d;
    return 0;
}

static int sync_local_deliveries(struct sync *s, const char *user, struct sync_delivery **list_r,
                                 size_t *n_r, const char **why_r)
{
    struct sync_local_list l = {0};
    *list_r = NULL;
    *n_r = 0;
    int r = sync_local_deliveries_each(s, user, 0, UINT64_MAX, sync_local_list_add, &l, why_r);
    if (r != 0) {
        free(l.list);
        return r;
    }
    *list_r = l.list != NULL ? l.list : xmalloc(1);
    *n_r = l.n;
    return 0;
}

static int sync_local_delivery_add(struct sync *s, const char *user, const struct sync_delivery *d,
                                   const char **why_r)
{
    if (!sync_local_id_ok(d->id))
        return sync_local_no("invalid", why_r);
    return sync_local_status(
        store_delivery_add(sync_local_store(s), user, d->id, d->folder, d->uid), why_r);
}

static int sync_local_delivery_add_batch(struct sync *s, const char *user,
                                         const struct sync_delivery *ds, size_t n, int *rc_out,
                                         const char **why_out)
{
    if (n > SYNC_BATCH_MAX) {
        log_warn("sync", "delivery_add_batch over its limit (%zu ids): not sent", n);
        return -1;
    }
    if (n == 0)
        return 0;
    struct store_delivery *recs = xcalloc(n, sizeof(*recs));
    enum store_status *st = xcalloc(n, sizeof(*st));
    size_t *idx = xcalloc(n, sizeof(*idx));
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        rc_out[i] = 0;
        why_out[i] = NULL;
        if (!sync_local_id_ok(ds[i].id)) {
            rc_out[i] = sync_local_no("invalid", &why_out[i]);
            continue;
        }
        recs[k].id = ds[i].id;
        recs[k].folder = ds[i].folder;
        recs[k].uid = ds[i].uid;
        idx[k++] = i;
    }
    int r = k > 0 ? store_delivery_add_many(sync_local_store(s), user, recs, k, st) : 0;
    for (size_t j = 0; r == 0 && j < k; j++)
        rc_out[idx[j]] = sync_local_status(st[j], &why_out[idx[j]]);
    if (r < 0)
        for (size_t i = 0; i < n; i++)
            why_out[i] = "store error";
    free(recs);
    free(st);
    free(idx);
    return r < 0 ? -1 : 0;
}

/* ---- fencing tokens (store.h "Fencing tokens") ----
 *
 * The token is set on the store only for the duration of one write of this
 * transport (the store handle is shared: other transports, the store role's
 * deliveries), so every write op runs between enter and leave. */

static void sync_local_enter(struct sync *s)
{
    struct sync_local *l = (struct sync_local *)s;
    store_token_set(l->st, l->tok_user[0] != '\0' ? l->tok_user : NULL, &l->tok);
}

static void sync_local_leave(struct sync *s)
{
    store_token_set(((struct sync_local *)s)->st, NULL, NULL);
}

void sync_local_token_use(struct sync *s, const char *user, uint64_t job, uint64_t claim)
{
    sync_local_check(s);
    struct sync_local *l = (struct sync_local *)s;
    if (user == NULL || (job == 0 && claim == 0)) {
        l->tok_user[0] = '\0';
        memset(&l->tok, 0, sizeof(l->tok));
        return;
    }
    str_copy(l->tok_user, user, sizeof(l->tok_user));
    l->tok.job = job;
    l->tok.claim = claim;
}

static int sync_local_token(struct sync *s, const char *user, uint64_t job, uint64_t claim,
                            const char **why_r)
{
    struct store_token t = {.job = job, .claim = claim};
    enum store_status ss = store_mailbox_token(sync_local_store(s), user, &t);
    if (ss == STORE_NOTFOUND)
        ss = STORE_OK; /* no mailbox yet: its create carries the token */
    int r = sync_local_status(ss, why_r);
    if (r == 0)
        sync_local_token_use(s, user, job, claim);
    return r;
}

static int sync_local_t_mailbox_create(struct sync *s, const char *user,
                                       enum store_mbox_state state, uint64_t epoch,
                                       uint32_t inbox_uidvalidity, const char **why_r)
{
    sync_local_enter(s);
    int r = sync_local_mailbox_create(s, user, state, epoch, inbox_uidvalidity, why_r);
    sync_local_leave(s);
    return r;
}

static int sync_local_t_mailbox_state(struct sync *s, const char *user,
                                      enum store_mbox_state expect, enum store_mbox_state state,
                                      uint64_t epoch, const char *moved_to, const char **why_r)
{
    sync_local_enter(s);
    int r = sync_local_mailbox_state(s, user, expect, state, epoch, moved_to, why_r);
    sync_local_leave(s);
    return r;
}

static int sync_local_t_mailbox_purge(struct sync *s, const char *user, const char **why_r)
{
    sync_local_enter(s);
    int r = sync_local_mailbox_purge(s, user, why_r);
    sync_local_leave(s);
    return r;
}

static int sync_local_t_append(struct sync *s, const char *user, const struct sync_msg *m,
                               const void *data, size_t len, const char **why_r)
{
    sync_local_enter(s);
    int r = sync_local_append(s, user, m, data, len, why_r);
    sync_local_leave(s);
    return r;
}

static int sync_local_t_append_batch(struct sync *s, const char *user,
                                     const struct sync_msg *const *msgs, const void *const *data,
                                     const size_t *lens, size_t n, int *rc_out,
                                     const char **why_out, struct sync_append_res *res_out)
{
    sync_local_enter(s);
    int r = sync_local_append_batch(s, user, msgs, data, lens, n, rc_out, why_out, res_out);
    sync_local_leave(s);
    return r;
}

static int sync_local_t_append_batch_start(struct sync *s, const char *user,
                                           const struct sync_msg *const *msgs,
                                           const void *const *data, const size_t *lens, size_t n,
                                           int *rc_out, const char **why_out)
{
    sync_local_enter(s);
    int r = sync_local_append_batch_start(s, user, msgs, data, lens, n, rc_out, why_out);
    sync_local_leave(s);
    return r;
}

static int sync_local_t_folder_ensure(struct sync *s, const char *user, const char *name,
                                      uint32_t uidvalidity, uint32_t uidnext, const char **why_r)
{
    sync_local_enter(s);
    int r = sync_local_folder_ensure(s, user, name, uidvalidity, uidnext, why_r);
    sync_local_leave(s);
    return r;
}

static int sync_local_t_folder_delete(struct sync *s, const char *user, uint32_t uidvalidity,
                                      const char **why_r)
{
    sync_local_enter(s);
    int r = sync_local_folder_delete(s, user, uidvalidity, why_r);
    sync_local_leave(s);
    return r;
}

static int sync_local_t_flags(struct sync *s, const char *user, const char *folder, uint32_t uid,
                              uint32_t flags, const char *keywords, const char **why_r)
{
    sync_local_enter(s);
    int r = sync_local_flags(s, user, folder, uid, flags, keywords, why_r);
    sync_local_leave(s);
    return r;
}

static int sync_local_t_expunge(struct sync *s, const char *user, const char *folder, uint32_t uid,
                                const char **why_r)
{
    sync_local_enter(s);
    int r = sync_local_expunge(s, user, folder, uid, why_r);
    sync_local_leave(s);
    return r;
}

static int sync_local_t_delivery_add(struct sync *s, const char *user,
                                     const struct sync_delivery *d, const char **why_r)
{
    sync_local_enter(s);
    int r = sync_local_delivery_add(s, user, d, why_r);
    sync_local_leave(s);
    return r;
}

static int sync_local_t_modseq_raise(struct sync *s, const char *user, uint64_t modseq,
                                     const char **why_r)
{
    sync_local_enter(s);
    int r = sync_local_modseq_raise(s, user, modseq, why_r);
    sync_local_leave(s);
    return r;
}

static int sync_local_t_folder_ensure_at(struct sync *s, const char *user, const char *name,
                                         uint32_t uidvalidity, uint32_t uidnext, uint64_t modseq,
                                         const char **why_r)
{
    sync_local_enter(s);
    int r = sync_local_folder_ensure_at(s, user, name, uidvalidity, uidnext, modseq, why_r);
    sync_local_leave(s);
    return r;
}

static int sync_local_t_folder_delete_at(struct sync *s, const char *user, uint32_t uidvalidity,
                                         uint64_t modseq, const char **why_r)
{
    sync_local_enter(s);
    int r = sync_local_folder_delete_at(s, user, uidvalidity, modseq, why_r);
    sync_local_leave(s);
    return r;
}

static int sync_local_t_flags_at(struct sync *s, const char *user, const char *folder, uint32_t uid,
                                 uint32_t flags, const char *keywords, uint64_t modseq,
                                 const char **why_r)
{
    sync_local_enter(s);
    int r = sync_local_flags_at(s, user, folder, uid, flags, keywords, modseq, why_r);
    sync_local_leave(s);
    return r;
}

static int sync_local_t_expunge_at(struct sync *s, const char *user, const char *folder,
                                   uint32_t uid, uint64_t modseq, const char **why_r)
{
    sync_local_enter(s);
    int r = sync_local_expunge_at(s, user, folder, uid, modseq, why_r);
    sync_local_leave(s);
    return r;
}

static int sync_local_t_tombstone(struct sync *s, const char *user, const struct sync_msg *m,
                                  const char **why_r)
{
    sync_local_enter(s);
    int r = sync_local_tombstone(s, user, m, why_r);
    sync_local_leave(s);
    return r;
}

static int sync_local_t_append_new(struct sync *s, const char *user, const char *folder,
                                   uint32_t flags, const char *keywords, int64_t internal_date,
                                   const void *data, size_t len, uint32_t *uid_r,
                                   uint32_t *uidvalidity_r, const char **why_r)
{
    sync_local_enter(s);
    int r = sync_local_append_new(s, user, folder, flags, keywords, internal_date, data, len, uid_r,
                                  uidvalidity_r, why_r);
    sync_local_leave(s);
    return r;
}

static int sync_local_t_flags_ex(struct sync *s, const char *user, const char *folder, uint32_t uid,
                                 enum store_flag_mode mode, uint32_t flags, const char *keywords,
                                 uint64_t unchanged_since, uint64_t *modseq_r, const char **why_r)
{
    sync_local_enter(s);
    int r = sync_local_flags_ex(s, user, folder, uid, mode, flags, keywords, unchanged_since,
                                modseq_r, why_r);
    sync_local_leave(s);
    return r;
}

static int sync_local_t_folder_create(struct sync *s, const char *user, const char *name,
                                      const char **why_r)
{
    sync_local_enter(s);
    int r = sync_local_folder_create(s, user, name, why_r);
    sync_local_leave(s);
    return r;
}

static int sync_local_t_folder_rename(struct sync *s, const char *user, const char *from,
                                      const char *to, const char **why_r)
{
    sync_local_enter(s);
    int r = sync_local_folder_rename(s, user, from, to, why_r);
    sync_local_leave(s);
    return r;
}

static int sync_local_t_delivery_add_batch(struct sync *s, const char *user,
                                           const struct sync_delivery *ds, size_t n, int *rc_out,
                                           const char **why_out)
{
    sync_local_enter(s);
    int r = sync_local_delivery_add_batch(s, user, ds, n, rc_out, why_out);
    sync_local_leave(s);
    return r;
}

static int sync_local_t_expunge_uids(struct sync *s, const char *user, const char *folder,
                                     const uint32_t *uids, size_t n, size_t *expunged_r,
                                     const char **why_r)
{
    sync_local_enter(s);
    int r = sync_local_expunge_uids(s, user, folder, uids, n, expunged_r, why_r);
    sync_local_leave(s);
    return r;
}

static int sync_local_t_copy_uids(struct sync *s, const char *user, const char *from,
                                  const char *to, const uint32_t *uids, size_t n,
                                  uint32_t *uids_out, uint32_t *uidvalidity_r, const char **why_r)
{
    sync_local_enter(s);
    int r = sync_local_copy_uids(s, user, from, to, uids, n, uids_out, uidvalidity_r, why_r);
    sync_local_leave(s);
    return r;
}

static const struct sync_ops sync_local_ops = {
    .close = sync_local_close,
    .mailbox_get = sync_local_mailbox_get,
    .mailbox_create = sync_local_t_mailbox_create,
    .mailbox_state = sync_local_t_mailbox_state,
    .mailbox_purge = sync_local_t_mailbox_purge,
    .changes = sync_local_changes,
    .fetch = sync_local_fetch,
    .fetch_batch = sync_local_fetch_batch,
    .append = sync_local_t_append,
    .append_batch = sync_local_t_append_batch,
    .append_batch_start = sync_local_t_append_batch_start,
    .append_batch_end = sync_local_append_batch_end,
    .folder_ensure = sync_local_t_folder_ensure,
    .folder_delete = sync_local_t_folder_delete,
    .flags = sync_local_t_flags,
    .expunge = sync_local_t_expunge,
    .digest = sync_local_digest,
    .deliveries = sync_local_deliveries,
    .delivery_add = sync_local_t_delivery_add,
    .modseq_raise = sync_local_t_modseq_raise,
    .folder_ensure_at = sync_local_t_folder_ensure_at,
    .folder_delete_at = sync_local_t_folder_delete_at,
    .flags_at = sync_local_t_flags_at,
    .expunge_at = sync_local_t_expunge_at,
    .tombstone = sync_local_t_tombstone,
    .folders = sync_local_folders,
    .msgs = sync_local_msgs,
    .append_new = sync_local_t_append_new,
    .flags_ex = sync_local_t_flags_ex,
    .folder_create = sync_local_t_folder_create,
    .folder_rename = sync_local_t_folder_rename,
    .deliveries_each = sync_local_deliveries_each,
    .delivery_add_batch = sync_local_t_delivery_add_batch,
    .wait = sync_local_wait,
    .fetch_headers = sync_local_fetch_headers,
    .expunge_uids = sync_local_t_expunge_uids,
    .copy_uids = sync_local_t_copy_uids,
    .token = sync_local_token,
};

struct sync *sync_local_new(struct store *st)
{
    struct sync_local *l = xmalloc(sizeof(*l));
    l->base.ops = &sync_local_ops;
    l->st = st;
    return &l->base;
}

void sync_close(struct sync **s)
{
    if (*s == NULL)
        return;
    (*s)->ops->close(*s);
    *s = NULL;
}
