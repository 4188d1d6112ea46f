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
