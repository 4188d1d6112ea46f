/*
 * sync_local_client — the in-process transport's operations for IMAP
 * sessions (the second half of struct sync_ops; see sync.h). Same mapping
 * of store statuses as sync_local.c.
 */
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "sync/sync_private.h"

int sync_local_folders(struct sync *s, const char *user, struct sync_folder **list_r, size_t *n_r,
                       const char **why_r)
{
    struct store_folder *fl = NULL;
    size_t n = 0;
    *list_r = NULL;
    *n_r = 0;
    int r = sync_local_status(store_folder_list(sync_local_store(s), user, &fl, &n), why_r);
    if (r != 0)
        return r;
    struct sync_folder *list = xcalloc(n ? n : 1, sizeof(*list));
    for (size_t i = 0; i < n; i++) {
        str_copy(list[i].name, fl[i].name, sizeof(list[i].name));
        list[i].uidvalidity = fl[i].uidvalidity;
        list[i].uidnext = fl[i].uidnext;
        list[i].modseq = fl[i].modseq;
    }
    free(fl);
    *list_r = list;
    *n_r = n;
    return 0;
}

struct sync_local_msgs {
    int (*cb)(void *ctx, const struct sync_msg *m);
    void *ctx;
    const struct store_folder *f;
};

static int sync_local_msgs_cb(void *ctx, const struct store_msg *m)
{
    struct sync_local_msgs *c = ctx;
    struct sync_msg sm;
    sync_local_msg_from_store(&sm, c->f, m);
    return c->cb(c->ctx, &sm);
}

int sync_local_msgs(struct sync *s, const char *user, const char *folder,
                    int (*cb)(void *ctx, const struct sync_msg *m), void *ctx, uint64_t *modseq_r,
                    const char **why_r)
{
    struct store *st = sync_local_store(s);
    struct store_mailbox mb;
    struct store_folder f;
    /* The modseq first, as in changes(): see sync_local_changes. */
    int r = sync_local_status(store_mailbox_get(st, user, &mb), why_r);
    if (r == 0)
        r = sync_local_status(store_folder_get(st, user, folder, &f), why_r);
    if (r != 0)
        return r;
    struct sync_local_msgs c = {.cb = cb, .ctx = ctx, .f = &f};
    const char *error = NULL;
    if (store_msg_iter(st, user, folder, sync_local_msgs_cb, &c, &error) != 0) {
        *why_r = error != NULL ? error : "aborted";
        return -1;
    }
    *modseq_r = mb.modseq;
    return 0;
}

int sync_local_append_new(struct sync *s, const char *user, const char *folder, uint32_t flags,
                          const char *keywords, int64_t internal_date, const void *data, size_t len,
                          uint32_t *uid_r, uint32_t *uidvalidity_r, const char **why_r)
{
    if (data == NULL && len > 0) {
        *why_r = "invalid";
        return SYNC_NO;
    }
    struct store_append a = {.user = user,
                             .folder = folder,
                             .data = data,
                             .len = len,
                             .internal_date = internal_date,
                             .flags = flags,
                             .keywords = keywords};
    struct store_append_result res;
    struct store_batch *b = store_batch_begin(sync_local_store(s));
    store_batch_add(b, &a, &res);
    const char *error = NULL;
    /* Durability: store_batch_commit returns after the body fdatasync and
     * the metadata commit (store.h); the caller may then acknowledge. */
    if (store_batch_commit(&b, &error) < 0) {
        *why_r = error != NULL ? error : "store error";
        return -1;
    }
    int r = sync_local_status(res.status, why_r);
    if (r != 0)
        return r;
    *uid_r = res.uid;
    *uidvalidity_r = res.uidvalidity;
    return 0;
}

int sync_local_flags_ex(struct sync *s, const char *user, const char *folder, uint32_t uid,
                        enum store_flag_mode mode, uint32_t flags, const char *keywords,
                        uint64_t unchanged_since, uint64_t *modseq_r, const char **why_r)
{
    uint64_t ms = 0;
    int r = sync_local_status(store_msg_set_flags(sync_local_store(s), user, folder, uid, mode,
                                                  flags, keywords, unchanged_since, &ms),
                              why_r);
    if (r == 0 && modseq_r != NULL)
        *modseq_r = ms;
    return r;
}

int sync_local_folder_create(struct sync *s, const char *user, const char *name, const char **why_r)
{
    return sync_local_status(store_folder_create(sync_local_store(s), user, name, 0), why_r);
}

int sync_local_folder_rename(struct sync *s, const char *user, const char *from, const char *to,
                             const char **why_r)
{
    return sync_local_status(store_folder_rename(sync_local_store(s), user, from, to), why_r);
}

int sync_local_modseq_raise(struct sync *s, const char *user, uint64_t modseq, const char **why_r)
{
    return sync_local_status(store_mailbox_raise_modseq(sync_local_store(s), user, modseq), why_r);
}

/* True when a WAIT for `since` is over: the mailbox changed or is leaving. */
bool sync_wait_done(const struct store_mailbox *mb, uint64_t since)
{
    return mb->modseq > since || mb->state != STORE_MBOX_ACTIVE;
}

int sync_local_wait(struct sync *s, const char *user, uint64_t since, unsigned timeout_ms,
                    int wake_fd, struct store_mailbox *mb_r, const char **why_r)
{
    struct store *st = sync_local_store(s);
    int r = sync_local_status(store_mailbox_get(st, user, mb_r), why_r);
    if (r != 0 || sync_wait_done(mb_r, since) || timeout_ms == 0)
        return r;
    if (timeout_ms > SYNC_WAIT_MAX_MS)
        timeout_ms = SYNC_WAIT_MAX_MS;
    /* Nothing else can commit to st while this thread holds it (store.h:
     * one thread at a time): sleep, or until the caller's client speaks. */
    struct pollfd p = {.fd = wake_fd, .events = POLLIN};
    (void)poll(&p, wake_fd >= 0 ? 1 : 0, (int)timeout_ms);
    return sync_local_status(store_mailbox_get(st, user, mb_r), why_r);
}

/* ---- UID sets and the batches of IMAP sessions ---- */

bool sync_uids_ok(const uint32_t *uids, size_t n, size_t max)
{
    if (n > max)
        return false;
    for (size_t i = 0; i < n; i++)
        if (uids[i] == 0 || (i > 0 && uids[i] <= uids[i - 1]))
            return false;
    return true;
}

void sync_uidset_write(struct buf *b, const uint32_t *uids, size_t n)
{
    if (n == 0) {
        buf_puts(b, "-");
        return;
    }
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j + 1 < n && uids[j + 1] == uids[j] + 1)
            j++;
        if (j > i)
            buf_printf(b, "%s%u:%u", i > 0 ? "," : "", uids[i], uids[j]);
        else
            buf_printf(b, "%s%u", i > 0 ? "," : "", uids[i]);
        i = j + 1;
    }
}

/* One decimal UID of p[*i..len): 1..2^32-1, no leading zero; advances *i. */
static int sync_uidset_num(const char *p, size_t len, size_t *i, uint32_t *out)
{
    uint64_t v = 0;
    size_t start = *i;
    while (*i < len && p[*i] >= '0' && p[*i] <= '9') {
        if (*i - start >= 10)
            return -1;
        v = v * 10 + (uint64_t)(p[*i] - '0');
        (*i)++;
    }
    if (*i == start || v == 0 || v > UINT32_MAX || p[start] == '0')
        return -1;
    *out = (uint32_t)v;
    return 0;
}

int sync_uidset_parse(const char *p, size_t len, uint32_t *uids, size_t max, size_t *n_r,
                      const char **error_r)
{
    *n_r = 0;
    if (len == 1 && p[0] == '-')
        return 0;
    size_t n = 0, i = 0;
    for (;;) {
        uint32_t lo, hi;
        if (sync_uidset_num(p, len, &i, &lo) < 0) {
            *error_r = "bad UID set";
            return -1;
        }
        hi = lo;
        if (i < len && p[i] == ':') {
            i++;
            if (sync_uidset_num(p, len, &i, &hi) < 0 || hi < lo) {
                *error_r = "bad UID set";
                return -1;
            }
        }
        if (n > 0 && lo <= uids[n - 1]) {
            *error_r = "UID set not ascending";
            return -1;
        }
        if (n >= max || (uint64_t)hi - lo >= max - n) {
            *error_r = "UID set too large";
            return -1;
        }
        for (uint64_t u = lo; u <= hi; u++)
            uids[n++] = (uint32_t)u;
        if (i == len)
            break;
        if (p[i] != ',') {
            *error_r = "bad UID set";
            return -1;
        }
        i++;
    }
    *n_r = n;
    return 0;
}

int sync_local_expunge_uids(struct sync *s, const char *user, const char *folder,
                            const uint32_t *uids, size_t n, size_t *expunged_r, const char **why_r)
{
    *expunged_r = 0;
    if (!sync_uids_ok(uids, n, SYNC_UIDS_MAX)) {
        *why_r = "invalid";
        return SYNC_NO;
    }
    return sync_local_status(
        store_msg_expunge_many(sync_local_store(s), user, folder, uids, n, expunged_r), why_r);
}

/* The source messages' metadata, picked from one pass over the folder in
 * UID order (stopped after the last UID wanted). */
struct sync_local_pick {
    const uint32_t *uids;
    size_t n;
    struct store_msg *out; /* out[i] for uids[i]; uid 0 if not found */
    char (*kw)[STORE_KEYWORDS_MAX + 1];
};

static int sync_local_pick_cb(void *ctx, const struct store_msg *m)
{
    struct sync_local_pick *p = ctx;
    if (m->uid > p->uids[p->n - 1])
        return 1;
    size_t lo = 0, hi = p->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (p->uids[mid] < m->uid)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < p->n && p->uids[lo] == m->uid && !m->expunged) {
        p->out[lo] = *m;
        str_copy(p->kw[lo], m->keywords, sizeof(p->kw[lo]));
        p->out[lo].keywords = p->kw[lo];
    }
    return 0;
}

/* Commits the appends a[0..k) (for uids[at[j]]) as one store batch. */
static int sync_local_copy_commit(struct sync *s, const struct store_append *a, const size_t *at,
                                  size_t k, uint32_t *uids_out, uint32_t *uidvalidity_r,
                                  const char **why_r)
{
    if (k == 0)
        return 0;
    struct store_append_result *res = xcalloc(k, sizeof(*res));
    struct store_batch *b = store_batch_begin(sync_local_store(s));
    for (size_t j = 0; j < k; j++)
        store_batch_add(b, &a[j], &res[j]);
    const char *error = NULL;
    int r = 0;
    /* Durability: one body fdatasync and one metadata commit for the k
     * copies (store.h); the caller acknowledges only after. */
    if (store_batch_commit(&b, &error) < 0) {
        *why_r = error != NULL ? error : "store error";
        r = -1;
    }
    /* Every copy that got in is noted (the caller takes them back if
     * another did not); the first refusal is the answer. */
    for (size_t j = 0; j < k && r >= 0; j++) {
        if (res[j].status == STORE_OK) {
            uids_out[at[j]] = res[j].uid;
            *uidvalidity_r = res[j].uidvalidity;
        } else if (r == 0) {
            r = sync_local_status(res[j].status, why_r);
        }
    }
    free(res);
    return r;
}

int sync_local_copy_uids(struct sync *s, const char *user, const char *from, const char *to,
                         const uint32_t *uids, size_t n, uint32_t *uids_out,
                         uint32_t *uidvalidity_r, const char **why_r)
{
    struct store *st = sync_local_store(s);
    for (size_t i = 0; i < n; i++)
        uids_out[i] = 0;
    *uidvalidity_r = 0;
    if (!sync_uids_ok(uids, n, SYNC_UIDS_MAX)) {
        *why_r = "invalid";
        return SYNC_NO;
    }
    struct store_folder tf;
    int r = sync_local_status(store_folder_get(st, user, from, &tf), why_r);
    if (r == 0)
        r = sync_local_status(store_folder_get(st, user, to, &tf), why_r);
    if (r == 0)
        *uidvalidity_r = tf.uidvalidity;
    if (r != 0 || n == 0)
        return r;
    struct sync_local_pick p = {.uids = uids, .n = n};
    p.out = xcalloc(n, sizeof(*p.out));
    p.kw = xcalloc(n, sizeof(*p.kw));
    struct store_append *a = xcalloc(n, sizeof(*a));
    struct buf *bodies = xcalloc(n, sizeof(*bodies));
    size_t *at = xcalloc(n, sizeof(*at));
    const char *error = NULL;
    if (store_msg_iter(st, user, from, sync_local_pick_cb, &p, &error) < 0) {
        *why_r = error != NULL ? error : "store error";
        r = -1;
    }
    /* The bodies are read here, then committed SYNC_BATCH_BYTES at a time. */
    size_t k = 0, bytes = 0;
    for (size_t i = 0; i < n && r == 0; i++) {
        if (p.out[i].uid == 0)
            continue; /* no live message */
        enum store_status ss = store_msg_read(st, user, from, uids[i], &bodies[i]);
        if (ss == STORE_NOTFOUND)
            continue;
        if ((r = sync_local_status(ss, why_r)) != 0)
            break;
        if (k > 0 && bodies[i].len > SYNC_BATCH_BYTES - bytes) {
            r = sync_local_copy_commit(s, a, at, k, uids_out, uidvalidity_r, why_r);
            k = bytes = 0;
            if (r != 0)
                break;
        }
        a[k] = (struct store_append){.user = user,
                                     .folder = to,
                                     .data = bodies[i].data != NULL ? bodies[i].data : "",
                                     .len = bodies[i].len,
                                     .internal_date = p.out[i].internal_date,
                                     .flags = p.out[i].flags,
                                     .keywords = p.out[i].keywords};
        at[k++] = i;
        bytes += bodies[i].len;
    }
    if (r == 0)
        r = sync_local_copy_commit(s, a, at, k, uids_out, uidvalidity_r, why_r);
    if (r != 0) {
        /* All or nothing: take back the copies already committed. */
        uint32_t *done = xcalloc(n, sizeof(*done));
        size_t nd = 0;
        for (size_t i = 0; i < n; i++)
            if (uids_out[i] != 0)
                done[nd++] = uids_out[i];
        if (nd > 0)
            (void)store_msg_expunge_many(st, user, to, done, nd, NULL);
        free(done);
        for (size_t i = 0; i < n; i++)
            uids_out[i] = 0;
    }
    for (size_t i = 0; i < n; i++)
        buf_free(&bodies[i]);
    free(bodies);
    free(at);
    free(a);
    free(p.kw);
    free(p.out);
    return r;
}
