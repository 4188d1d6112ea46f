/*
 * store_mem.c — the in-memory store backend, for tests. It keeps every
 * contract of store.h except durability, with the same return codes as the
 * fs backend (store_fs.c); the unit tests run one suite against both.
 * Linear searches everywhere: simplicity over speed, it holds test data.
 */
#include <stdlib.h>
#include <string.h>

#include "store/store_private.h"

struct store_mem_msg {
    uint64_t seq; /* insertion order: the tie-break of equal modseqs */
    uint32_t uid;
    uint8_t guid[STORE_GUID_LEN];
    uint32_t flags;
    char *keywords;
    int64_t internal_date;
    uint64_t size;
    uint8_t sha256[SHA256_LEN];
    uint64_t modseq;
    bool expunged;
    char *body; /* NULL once expunged: tombstones keep no body */
};

struct store_mem_folder {
    uint64_t id;
    char name[STORE_FOLDER_MAX + 1];
    uint32_t uidvalidity;
    uint64_t uidnext; /* 64-bit so exhaustion of the UID space is visible */
    uint64_t modseq;
    uint64_t messages;
    bool deleted;
    struct store_mem_msg **msgs; /* ascending uid, tombstones included */
    size_t n, cap;
};

struct store_mem_delivery {
    char id[STORE_DELIVERY_ID_MAX + 1];
    uint64_t folder_id;                /* 0: no such message here (see store.h) ... */
    char folder[STORE_FOLDER_MAX + 1]; /* ... then its folder's name */
    uint32_t uid;
};

struct store_mem_mbox {
    struct store_mailbox info;
    struct store_mem_folder **folders; /* tombstones included */
    size_t nfolders;
    struct store_mem_delivery *dels;
    size_t ndels, capdels;
};

struct store_mem {
    struct store base;
    struct store_mem_mbox **mboxes;
    size_t n;
    uint64_t next_folder_id;
    uint64_t next_seq;
};

/* ---- lookups ---- */

static struct store_mem_mbox *store_mem_mbox_find(struct store_mem *sm, const char *user)
{
    for (size_t i = 0; i < sm->n; i++)
        if (strcmp(sm->mboxes[i]->info.user, user) == 0)
            return sm->mboxes[i];
    return NULL;
}

static struct store_mem_folder *store_mem_folder_find(struct store_mem_mbox *mb, const char *name)
{
    for (size_t i = 0; i < mb->nfolders; i++)
        if (!mb->folders[i]->deleted && strcmp(mb->folders[i]->name, name) == 0)
            return mb->folders[i];
    return NULL;
}

static struct store_mem_folder *store_mem_folder_by_id(struct store_mem_mbox *mb, uint64_t id)
{
    for (size_t i = 0; i < mb->nfolders; i++)
        if (mb->folders[i]->id == id)
            return mb->folders[i];
    return NULL;
}

/* Index of uid in f->msgs, or where it would go (*found false). */
static size_t store_mem_msg_pos(const struct store_mem_folder *f, uint32_t uid, bool *found)
{
    size_t lo = 0, hi = f->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (f->msgs[mid]->uid < uid)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < f->n && f->msgs[lo]->uid == uid;
    return lo;
}

static struct store_mem_msg *store_mem_msg_find(struct store_mem_folder *f, uint32_t uid)
{
    bool found;
    size_t i = store_mem_msg_pos(f, uid, &found);
    return found ? f->msgs[i] : NULL;
}

/* The fencing check of a change to mb (store.h "Fencing tokens"):
 * STORE_STALE, or STORE_OK with mb's token raised to the handle's. */
static enum store_status store_mem_fence(const struct store *st, struct store_mem_mbox *mb)
{
    bool raise;
    struct store_token to;
    enum store_status s = store_token_check(st, mb->info.user, &mb->info.token, &raise, &to);
    if (s == STORE_OK && raise)
        mb->info.token = to;
    return s;
}

/* Resolves user + folder; *msg_r (if asked) must be a live message. With
 * `write`, a mailbox in a state that refuses changes is STORE_NOTLIVE
 * (checked before the folder, as store_fs_resolve() does). */
static enum store_status store_mem_resolve(struct store *st, const char *user, const char *folder,
                                           uint32_t uid, bool write, struct store_mem_mbox **mb_r,
                                           struct store_mem_folder **f_r,
                                           struct store_mem_msg **msg_r)
{
    struct store_mem *sm = (struct store_mem *)st;
    struct store_mem_mbox *mb = store_mem_mbox_find(sm, user);
    if (mb == NULL)
        return STORE_NOTFOUND;
    enum store_status fs = write ? store_mem_fence(st, mb) : STORE_OK;
    if (fs != STORE_OK)
        return fs;
    if (write && !store_state_writable(mb->info.state))
        return STORE_NOTLIVE;
    struct store_mem_folder *f = store_mem_folder_find(mb, folder);
    if (f == NULL)
        return STORE_NOTFOUND;
    *mb_r = mb;
    *f_r = f;
    if (msg_r != NULL) {
        struct store_mem_msg *m = store_mem_msg_find(f, uid);
        if (m == NULL || m->expunged)
            return STORE_NOTFOUND;
        *msg_r = m;
    }
    return STORE_OK;
}

static void store_mem_folder_fill(const struct store_mem_folder *f, struct store_folder *out)
{
    memset(out, 0, sizeof(*out));
    out->id = f->id;
    str_copy(out->name, f->name, sizeof(out->name));
    out->uidvalidity = f->uidvalidity;
    out->uidnext = (uint32_t)f->uidnext;
    out->modseq = f->modseq;
    out->messages = f->messages;
    out->deleted = f->deleted;
}

static void store_mem_msg_fill(const struct store_mem_folder *f, const struct store_mem_msg *m,
                               struct store_msg *out)
{
    memset(out, 0, sizeof(*out));
    out->folder_id = f->id;
    out->uid = m->uid;
    memcpy(out->guid, m->guid, STORE_GUID_LEN);
    out->flags = m->flags;
    out->keywords = m->keywords;
    out->internal_date = m->internal_date;
    out->size = m->size;
    memcpy(out->sha256, m->sha256, SHA256_LEN);
    out->modseq = m->modseq;
    out->expunged = m->expunged;
}

/* ---- lifecycle ---- */

static void store_mem_folder_free(struct store_mem_folder *f)
{
    for (size_t i = 0; i < f->n; i++) {
        free(f->msgs[i]->keywords);
        free(f->msgs[i]->body);
        free(f->msgs[i]);
    }
    free(f->msgs);
    free(f);
}

static void store_mem_mbox_free(struct store_mem_mbox *mb)
{
    for (size_t i = 0; i < mb->nfolders; i++)
        store_mem_folder_free(mb->folders[i]);
    free(mb->folders);
    free(mb->dels);
    free(mb);
}

static void store_mem_close(struct store *st)
{
    struct store_mem *sm = (struct store_mem *)st;
    for (size_t i = 0; i < sm->n; i++)
        store_mem_mbox_free(sm->mboxes[i]);
    free(sm->mboxes);
    free(sm);
}

/* ---- mailboxes ---- */

static struct store_mem_folder *store_mem_folder_add(struct store_mem *sm,
                                                     struct store_mem_mbox *mb, const char *name,
                                                     uint32_t uidvalidity, uint64_t modseq)
{
    if (uidvalidity == 0) {
        uint32_t highest = 0;
        for (size_t i = 0; i < mb->nfolders; i++)
            if (mb->folders[i]->uidvalidity > highest)
                highest = mb->folders[i]->uidvalidity;
        uidvalidity = store_uidvalidity_choose(highest);
    }
    struct store_mem_folder *f = xmalloc(sizeof(*f));
    f->id = ++sm->next_folder_id;
    str_copy(f->name, name, sizeof(f->name));
    f->uidvalidity = uidvalidity;
    f->uidnext = 1;
    f->modseq = store_modseq_take(&mb->info.modseq, modseq);
    mb->folders = xrealloc(mb->folders, (mb->nfolders + 1) * sizeof(*mb->folders));
    mb->folders[mb->nfolders++] = f;
    return f;
}

static enum store_status store_mem_mailbox_create(struct store *st, const char *user,
                                                  enum store_mbox_state state, uint64_t epoch,
                                                  uint32_t inbox_uidvalidity)
{
    struct store_mem *sm = (struct store_mem *)st;
    if (store_mem_mbox_find(sm, user) != NULL)
        return STORE_EXISTS;
    struct store_mem_mbox *mb = xmalloc(sizeof(*mb));
    str_copy(mb->info.user, user, sizeof(mb->info.user));
    mb->info.state = state;
    mb->info.epoch = epoch;
    mb->info.created = time_now_ms() / 1000;
    (void)store_mem_fence(st, mb); /* the new row gets the caller's token */
    store_mem_folder_add(sm, mb, "INBOX", inbox_uidvalidity, 0);
    sm->mboxes = xrealloc(sm->mboxes, (sm->n + 1) * sizeof(*sm->mboxes));
    sm->mboxes[sm->n++] = mb;
    return STORE_OK;
}

static enum store_status store_mem_mailbox_get(struct store *st, const char *user,
                                               struct store_mailbox *out)
{
    struct store_mem_mbox *mb = store_mem_mbox_find((struct store_mem *)st, user);
    if (mb == NULL)
        return STORE_NOTFOUND;
    *out = mb->info;
    return STORE_OK;
}

static enum store_status store_mem_mailbox_set_state(struct store *st, const char *user,
                                                     enum store_mbox_state expect,
                                                     enum store_mbox_state state, uint64_t epoch,
                                                     const char *moved_to)
{
    struct store_mem_mbox *mb = store_mem_mbox_find((struct store_mem *)st, user);
    if (mb == NULL)
        return STORE_NOTFOUND;
    if (store_mem_fence(st, mb) != STORE_OK)
        return STORE_STALE;
    if (mb->info.state != expect)
        return STORE_CONFLICT;
    mb->info.state = state;
    mb->info.epoch = epoch;
    str_copy(mb->info.moved_to, moved_to, sizeof(mb->info.moved_to));
    return STORE_OK;
}

static enum store_status store_mem_mailbox_raise_modseq(struct store *st, const char *user,
                                                        uint64_t modseq)
{
    struct store_mem_mbox *mb = store_mem_mbox_find((struct store_mem *)st, user);
    if (mb == NULL)
        return STORE_NOTFOUND;
    if (store_mem_fence(st, mb) != STORE_OK)
        return STORE_STALE;
    if (mb->info.state != STORE_MBOX_STAGED && mb->info.state != STORE_MBOX_ACTIVE)
        return STORE_NOTLIVE;
    if (mb->info.state == STORE_MBOX_STAGED) {
        /* Exactly modseq, but never below a row (store.h). */
        for (size_t i = 0; i < mb->nfolders; i++) {
            const struct store_mem_folder *f = mb->folders[i];
            if (f->modseq > modseq)
                modseq = f->modseq;
            for (size_t j = 0; j < f->n; j++)
                if (f->msgs[j]->modseq > modseq)
                    modseq = f->msgs[j]->modseq;
        }
        mb->info.modseq = modseq;
    } else if (mb->info.modseq < modseq) {
        mb->info.modseq = modseq;
    }
    return STORE_OK;
}

static enum store_status store_mem_mailbox_purge(struct store *st, const char *user)
{
    struct store_mem *sm = (struct store_mem *)st;
    for (size_t i = 0; i < sm->n; i++) {
        struct store_mem_mbox *mb = sm->mboxes[i];
        if (strcmp(mb->info.user, user) != 0)
            continue;
        if (store_mem_fence(st, mb) != STORE_OK)
            return STORE_STALE;
        if (mb->info.state != STORE_MBOX_DELETING)
            return STORE_CONFLICT;
        store_mem_mbox_free(mb);
        memmove(&sm->mboxes[i], &sm->mboxes[i + 1], (sm->n - i - 1) * sizeof(*sm->mboxes));
        sm->n--;
        return STORE_OK;
    }
    return STORE_NOTFOUND;
}

static enum store_status store_mem_mailbox_token(struct store *st, const char *user,
                                                 const struct store_token *t)
{
    struct store_mem_mbox *mb = store_mem_mbox_find((struct store_mem *)st, user);
    if (mb == NULL)
        return STORE_NOTFOUND;
    int c = store_token_cmp(t, &mb->info.token);
    if (c < 0)
        return STORE_STALE;
    if (c > 0)
        mb->info.token = *t;
    return STORE_OK;
}

static int store_mem_mailbox_cmp(const void *a, const void *b)
{
    return strcmp(((const struct store_mailbox *)a)->user, ((const struct store_mailbox *)b)->user);
}

static enum store_status store_mem_mailbox_list(struct store *st, struct store_mailbox **list_r,
                                                size_t *n_r)
{
    struct store_mem *sm = (struct store_mem *)st;
    struct store_mailbox *list = xcalloc(sm->n ? sm->n : 1, sizeof(*list));
    for (size_t i = 0; i < sm->n; i++)
        list[i] = sm->mboxes[i]->info;
    qsort(list, sm->n, sizeof(*list), store_mem_mailbox_cmp);
    *list_r = list;
    *n_r = sm->n;
    return STORE_OK;
}

/* ---- folders ---- */

static enum store_status store_mem_folder_create(struct store *st, const char *user,
                                                 const char *name, uint32_t uidvalidity,
                                                 uint64_t modseq)
{
    struct store_mem *sm = (struct store_mem *)st;
    struct store_mem_mbox *mb = store_mem_mbox_find(sm, user);
    if (mb == NULL)
        return STORE_NOTFOUND;
    if (store_mem_fence(st, mb) != STORE_OK)
        return STORE_STALE;
    if (!store_state_writable(mb->info.state) || !store_modseq_allowed(modseq, mb->info.state))
        return STORE_NOTLIVE;
    if (store_mem_folder_find(mb, name) != NULL)
        return STORE_EXISTS;
    store_mem_folder_add(sm, mb, name, uidvalidity, modseq);
    return STORE_OK;
}

static enum store_status store_mem_folder_get(struct store *st, const char *user, const char *name,
                                              struct store_folder *out)
{
    struct store_mem_mbox *mb;
    struct store_mem_folder *f;
    enum store_status s = store_mem_resolve(st, user, name, 0, false, &mb, &f, NULL);
    if (s == STORE_OK)
        store_mem_folder_fill(f, out);
    return s;
}

static enum store_status store_mem_folder_rename(struct store *st, const char *user,
                                                 const char *from, const char *to, uint64_t modseq)
{
    struct store_mem_mbox *mb;
    struct store_mem_folder *f;
    enum store_status s = store_mem_resolve(st, user, from, 0, true, &mb, &f, NULL);
    if (s == STORE_OK && !store_modseq_allowed(modseq, mb->info.state))
        s = STORE_NOTLIVE;
    if (s != STORE_OK)
        return s;
    if (store_mem_folder_find(mb, to) != NULL)
        return STORE_EXISTS;
    str_copy(f->name, to, sizeof(f->name));
    f->modseq = store_modseq_take(&mb->info.modseq, modseq);
    return STORE_OK;
}

/* One change: the folder's tombstone and its messages' tombstones share
 * the new modseq. */
static enum store_status store_mem_folder_delete(struct store *st, const char *user,
                                                 const char *name, uint64_t explicit_modseq)
{
    struct store_mem_mbox *mb;
    struct store_mem_folder *f;
    enum store_status s = store_mem_resolve(st, user, name, 0, true, &mb, &f, NULL);
    if (s == STORE_OK && !store_modseq_allowed(explicit_modseq, mb->info.state))
        s = STORE_NOTLIVE;
    if (s != STORE_OK)
        return s;
    uint64_t modseq = store_modseq_take(&mb->info.modseq, explicit_modseq);
    f->deleted = true;
    f->modseq = modseq;
    for (size_t i = 0; i < f->n; i++) {
        struct store_mem_msg *m = f->msgs[i];
        if (m->expunged)
            continue;
        m->expunged = true;
        m->modseq = modseq;
        xfree(&m->body);
        mb->info.messages--;
        mb->info.bytes -= m->size;
    }
    f->messages = 0;
    return STORE_OK;
}

static int store_mem_folder_cmp(const void *a, const void *b)
{
    return strcmp(((const struct store_folder *)a)->name, ((const struct store_folder *)b)->name);
}

static enum store_status store_mem_folder_list(struct store *st, const char *user,
                                               struct store_folder **list_r, size_t *n_r)
{
    struct store_mem_mbox *mb = store_mem_mbox_find((struct store_mem *)st, user);
    if (mb == NULL)
        return STORE_NOTFOUND;
    struct store_folder *list = xcalloc(mb->nfolders, sizeof(*list));
    size_t n = 0;
    for (size_t i = 0; i < mb->nfolders; i++)
        if (!mb->folders[i]->deleted)
            store_mem_folder_fill(mb->folders[i], &list[n++]);
    qsort(list, n, sizeof(*list), store_mem_folder_cmp);
    *list_r = list;
    *n_r = n;
    return STORE_OK;
}

static enum store_status store_mem_folder_set_uidnext(struct store *st, const char *user,
                                                      const char *name, uint32_t uidnext,
                                                      uint64_t modseq)
{
    struct store_mem_mbox *mb;
    struct store_mem_folder *f;
    enum store_status s = store_mem_resolve(st, user, name, 0, true, &mb, &f, NULL);
    if (s == STORE_OK && !store_modseq_allowed(modseq, mb->info.state))
        s = STORE_NOTLIVE;
    if (s != STORE_OK)
        return s;
    if (uidnext > f->uidnext || (modseq != 0 && f->modseq != modseq)) {
        if (uidnext > f->uidnext)
            f->uidnext = uidnext;
        f->modseq = store_modseq_take(&mb->info.modseq, modseq);
    }
    return STORE_OK;
}

/* ---- appends ---- */

static struct store_mem_delivery *store_mem_delivery_find(struct store_mem_mbox *mb, const char *id)
{
    for (size_t i = 0; i < mb->ndels; i++)
        if (strcmp(mb->dels[i].id, id) == 0)
            return &mb->dels[i];
    return NULL;
}

/* The same decisions, in the same order, as store_fs_resolve_item(). */
static void store_mem_append_one(struct store_mem *sm, const struct store_append *a,
                                 struct store_append_result *res)
{
    memset(res, 0, sizeof(*res));
    struct store_mem_mbox *mb = store_mem_mbox_find(sm, a->user);
    if (mb == NULL) {
        res->status = STORE_NOTFOUND;
        return;
    }
    if (store_mem_fence(&sm->base, mb) != STORE_OK) {
        res->status = STORE_STALE;
        return;
    }
    if (a->delivery_id != NULL) {
        struct store_mem_delivery *d = store_mem_delivery_find(mb, a->delivery_id);
        if (d != NULL) {
            res->status = STORE_OK;
            res->duplicate = true;
            /* Copied here by a move without its message: nothing to report. */
            if (d->folder_id == 0)
                return;
            struct store_mem_folder *df = store_mem_folder_by_id(mb, d->folder_id);
            struct store_mem_msg *dm = store_mem_msg_find(df, d->uid);
            res->uid = d->uid;
            res->uidvalidity = df->uidvalidity;
            memcpy(res->guid, dm->guid, STORE_GUID_LEN);
            res->modseq = dm->modseq;
            return;
        }
    }
    if (!store_append_allowed(a, &mb->info)) {
        res->status = STORE_NOTLIVE;
        res->mailbox = mb->info;
        return;
    }
    struct store_mem_folder *f = store_mem_folder_find(mb, a->folder);
    if (f == NULL) {
        res->status = STORE_NOTFOUND;
        return;
    }
    uint32_t uid = a->uid;
    if (uid != 0) {
        if (store_mem_msg_find(f, uid) != NULL) {
            res->status = STORE_EXISTS;
            return;
        }
    } else {
        if (f->uidnext >= UINT32_MAX) {
            res->status = STORE_INVALID; /* UID space of the folder exhausted */
            return;
        }
        uid = (uint32_t)f->uidnext;
    }
    if ((uint64_t)uid + 1 > f->uidnext)
        f->uidnext = (uint64_t)uid + 1;

    struct store_mem_msg *m = xmalloc(sizeof(*m));
    m->seq = ++sm->next_seq;
    m->uid = uid;
    if (a->guid != NULL)
        memcpy(m->guid, a->guid, STORE_GUID_LEN);
    else
        rand_bytes(m->guid, STORE_GUID_LEN);
    m->flags = a->flags;
    m->keywords = xstrdup(a->keywords != NULL ? a->keywords : "");
    m->internal_date = a->internal_date != 0 ? a->internal_date : time_now_ms() / 1000;
    m->size = a->len;
    sha256_buf(a->data, a->len, m->sha256);
    m->modseq = store_modseq_take(&mb->info.modseq, a->modseq);
    m->body = xmalloc(a->len);
    if (a->len > 0)
        memcpy(m->body, a->data, a->len);

    bool found;
    size_t pos = store_mem_msg_pos(f, uid, &found);
    if (f->n == f->cap) {
        f->cap = f->cap ? f->cap * 2 : 16;
        f->msgs = xrealloc(f->msgs, f->cap * sizeof(*f->msgs));
    }
    memmove(&f->msgs[pos + 1], &f->msgs[pos], (f->n - pos) * sizeof(*f->msgs));
    f->msgs[pos] = m;
    f->n++;
    f->messages++;
    mb->info.messages++;
    mb->info.bytes += a->len;

    if (a->delivery_id != NULL) {
        if (mb->ndels == mb->capdels) {
            mb->capdels = mb->capdels ? mb->capdels * 2 : 16;
            mb->dels = xrealloc(mb->dels, mb->capdels * sizeof(*mb->dels));
        }
        struct store_mem_delivery *d = &mb->dels[mb->ndels++];
        str_copy(d->id, a->delivery_id, sizeof(d->id));
        d->folder_id = f->id;
        d->folder[0] = '\0';
        d->uid = uid;
    }

    res->status = STORE_OK;
    res->uid = uid;
    res->uidvalidity = f->uidvalidity;
    memcpy(res->guid, m->guid, STORE_GUID_LEN);
    res->modseq = m->modseq;
}

static int store_mem_batch_commit(struct store *st, struct store_batch_item *items, size_t n,
                                  const char **error_r)
{
    (void)error_r;
    for (size_t i = 0; i < n; i++)
        store_mem_append_one((struct store_mem *)st, &items[i].a, items[i].res);
    return 0;
}

/* ---- messages ---- */

static enum store_status store_mem_msg_set_flags(struct store *st, const char *user,
                                                 const char *folder, uint32_t uid,
                                                 enum store_flag_mode mode, uint32_t flags,
                                                 const char *keywords, uint64_t unchanged_since,
                                                 uint64_t modseq, uint64_t *modseq_r)
{
    struct store_mem_mbox *mb;
    struct store_mem_folder *f;
    struct store_mem_msg *m;
    enum store_status s = store_mem_resolve(st, user, folder, uid, true, &mb, &f, &m);
    if (s == STORE_OK && !store_modseq_allowed(modseq, mb->info.state))
        s = STORE_NOTLIVE;
    if (s != STORE_OK)
        return s;
    if (unchanged_since != 0 && m->modseq > unchanged_since)
        return STORE_CONFLICT;
    uint32_t nflags = store_flags_apply(m->flags, mode, flags);
    char kw[STORE_KEYWORDS_MAX + 1];
    if (keywords == NULL)
        str_copy(kw, m->keywords, sizeof(kw));
    else if (store_keywords_apply(m->keywords, mode, keywords, kw) < 0)
        return STORE_INVALID;
    if (nflags != m->flags || strcmp(kw, m->keywords) != 0 ||
        (modseq != 0 && m->modseq != modseq)) {
        m->flags = nflags;
        free(m->keywords);
        m->keywords = xstrdup(kw);
        m->modseq = store_modseq_take(&mb->info.modseq, modseq);
    }
    if (modseq_r != NULL)
        *modseq_r = m->modseq;
    return STORE_OK;
}

static enum store_status store_mem_msg_expunge(struct store *st, const char *user,
                                               const char *folder, uint32_t uid, uint64_t modseq)
{
    struct store_mem_mbox *mb;
    struct store_mem_folder *f;
    struct store_mem_msg *m;
    enum store_status s = store_mem_resolve(st, user, folder, 0, true, &mb, &f, NULL);
    if (s == STORE_OK && !store_modseq_allowed(modseq, mb->info.state))
        s = STORE_NOTLIVE;
    if (s != STORE_OK)
        return s;
    m = store_mem_msg_find(f, uid);
    if (m == NULL || (m->expunged && modseq == 0))
        return STORE_NOTFOUND;
    if (m->expunged) {
        /* A copy's tombstone takes its source's modseq (store.h). */
        m->modseq = store_modseq_take(&mb->info.modseq, modseq);
        return STORE_OK;
    }
    m->expunged = true;
    m->modseq = store_modseq_take(&mb->info.modseq, modseq);
    xfree(&m->body);
    f->messages--;
    mb->info.messages--;
    mb->info.bytes -= m->size;
    return STORE_OK;
}

static enum store_status store_mem_msg_tombstone(struct store *st, const char *user,
                                                 const char *folder, const struct store_msg *t)
{
    struct store_mem *sm = (struct store_mem *)st;
    struct store_mem_mbox *mb;
    struct store_mem_folder *f;
    enum store_status s = store_mem_resolve(st, user, folder, 0, true, &mb, &f, NULL);
    if (s == STORE_OK && !store_modseq_allowed(t->modseq, mb->info.state))
        s = STORE_NOTLIVE;
    if (s != STORE_OK)
        return s;
    bool found;
    size_t pos = store_mem_msg_pos(f, t->uid, &found);
    if (found)
        return STORE_EXISTS;
    struct store_mem_msg *m = xmalloc(sizeof(*m));
    m->seq = ++sm->next_seq;
    m->uid = t->uid;
    memcpy(m->guid, t->guid, STORE_GUID_LEN);
    m->flags = t->flags;
    m->keywords = xstrdup(t->keywords);
    m->internal_date = t->internal_date;
    m->size = t->size;
    memcpy(m->sha256, t->sha256, SHA256_LEN);
    m->modseq = store_modseq_take(&mb->info.modseq, t->modseq);
    m->expunged = true;
    m->body = NULL;
    if (f->n == f->cap) {
        f->cap = f->cap ? f->cap * 2 : 16;
        f->msgs = xrealloc(f->msgs, f->cap * sizeof(*f->msgs));
    }
    memmove(&f->msgs[pos + 1], &f->msgs[pos], (f->n - pos) * sizeof(*f->msgs));
    f->msgs[pos] = m;
    f->n++;
    if ((uint64_t)t->uid + 1 > f->uidnext)
        f->uidnext = (uint64_t)t->uid + 1;
    return STORE_OK;
}

static int store_mem_msg_iter(struct store *st, const char *user, const char *folder,
                              store_msg_cb *cb, void *ctx, const char **error_r)
{
    struct store_mem_mbox *mb;
    struct store_mem_folder *f;
    if (store_mem_resolve(st, user, folder, 0, false, &mb, &f, NULL) != STORE_OK) {
        *error_r = "no such mailbox or folder";
        return -1;
    }
    /* By uid rather than by index: the callback may append or expunge. */
    uint32_t next = 1;
    for (;;) {
        bool found;
        size_t i = store_mem_msg_pos(f, next, &found);
        while (i < f->n && f->msgs[i]->expunged)
            i++;
        if (i >= f->n)
            return 0;
        struct store_msg m;
        store_mem_msg_fill(f, f->msgs[i], &m);
        int r = cb(ctx, &m);
        if (r != 0)
            return r;
        if (m.uid == UINT32_MAX)
            return 0;
        next = m.uid + 1;
    }
}

static enum store_status store_mem_msg_read(struct store *st, const char *user, const char *folder,
                                            uint32_t uid, struct buf *out)
{
    struct store_mem_mbox *mb;
    struct store_mem_folder *f;
    struct store_mem_msg *m;
    enum store_status s = store_mem_resolve(st, user, folder, uid, false, &mb, &f, &m);
    if (s != STORE_OK)
        return s;
    if (buf_append(out, m->body, m->size) < 0) {
        log_error("store", "%s: message of %llu bytes exceeds the read buffer limit", st->name,
                  (unsigned long long)m->size);
        return STORE_ERROR;
    }
    return STORE_OK;
}

/* ---- change log ---- */

struct store_mem_change {
    struct store_mem_folder *f;
    struct store_mem_msg *m;
};

static int store_mem_change_cmp(const void *a, const void *b)
{
    const struct store_mem_change *x = a, *y = b;
    uint64_t xm = x->m != NULL ? x->m->modseq : x->f->modseq;
    uint64_t ym = y->m != NULL ? y->m->modseq : y->f->modseq;
    uint64_t xs = x->m != NULL ? x->m->seq : x->f->id;
    uint64_t ys = y->m != NULL ? y->m->seq : y->f->id;
    if (xm != ym)
        return xm < ym ? -1 : 1;
    return xs < ys ? -1 : xs > ys;
}

static int store_mem_changes(struct store *st, const char *user, uint64_t since,
                             const struct store_change_cb *cb, const char **error_r)
{
    struct store_mem_mbox *mb = store_mem_mbox_find((struct store_mem *)st, user);
    if (mb == NULL) {
        *error_r = "no such mailbox";
        return -1;
    }
    /* Snapshot first (callbacks may change the store), then visit. */
    size_t nf = 0, nm = 0, cap = 16;
    struct store_mem_change *fs = xcalloc(mb->nfolders ? mb->nfolders : 1, sizeof(*fs));
    struct store_mem_change *ms = xcalloc(cap, sizeof(*ms));
    for (size_t i = 0; i < mb->nfolders; i++) {
        struct store_mem_folder *f = mb->folders[i];
        if (f->modseq > since)
            fs[nf++].f = f;
        for (size_t j = 0; j < f->n; j++) {
            if (f->msgs[j]->modseq <= since)
                continue;
            if (nm == cap) {
                cap *= 2;
                ms = xrealloc(ms, cap * sizeof(*ms));
            }
            ms[nm].f = f;
            ms[nm++].m = f->msgs[j];
        }
    }
    qsort(fs, nf, sizeof(*fs), store_mem_change_cmp);
    qsort(ms, nm, sizeof(*ms), store_mem_change_cmp);

    /* Copies, so a callback that changes the store sees consistent data. */
    struct store_folder *fcopy = xcalloc(nf + nm + 1, sizeof(*fcopy));
    struct store_msg *mcopy = xcalloc(nm + 1, sizeof(*mcopy));
    char **kws = xcalloc(nm + 1, sizeof(*kws));
    for (size_t i = 0; i < nf; i++)
        store_mem_folder_fill(fs[i].f, &fcopy[i]);
    for (size_t i = 0; i < nm; i++) {
        store_mem_folder_fill(ms[i].f, &fcopy[nf + i]);
        store_mem_msg_fill(ms[i].f, ms[i].m, &mcopy[i]);
        kws[i] = xstrdup(ms[i].m->keywords);
        mcopy[i].keywords = kws[i];
    }
    int r = 0;
    for (size_t i = 0; i < nf && r == 0; i++)
        if (cb->folder != NULL)
            r = cb->folder(cb->ctx, &fcopy[i]);
    for (size_t i = 0; i < nm && r == 0; i++)
        if (cb->msg != NULL)
            r = cb->msg(cb->ctx, &fcopy[nf + i], &mcopy[i]);
    for (size_t i = 0; i < nm; i++)
        free(kws[i]);
    free(kws);
    free(mcopy);
    free(fcopy);
    free(ms);
    free(fs);
    return r;
}

/* ---- delivery ids ---- */

static int store_mem_delivery_cmp(const void *a, const void *b)
{
    return strcmp(((const struct store_mem_delivery *)a)->id,
                  ((const struct store_mem_delivery *)b)->id);
}

static int store_mem_delivery_iter(struct store *st, const char *user, const char *after,
                                   uint64_t since, uint64_t upto,
                                   int (*cb)(void *ctx, const char *id, const char *folder,
                                             uint32_t uid),
                                   void *ctx, const char **error_r)
{
    struct store_mem_mbox *mb = store_mem_mbox_find((struct store_mem *)st, user);
    if (mb == NULL) {
        *error_r = "no such mailbox";
        return -1;
    }
    /* A sorted snapshot with the folder names resolved: the callback may
     * change the store (even add deliveries, moving mb->dels). */
    size_t n = mb->ndels;
    struct store_mem_delivery *dels = xcalloc(n ? n : 1, sizeof(*dels));
    char(*names)[STORE_FOLDER_MAX + 1] = xcalloc(n ? n : 1, sizeof(*names));
    bool *in = xcalloc(n ? n : 1, sizeof(*in));
    if (n > 0)
        memcpy(dels, mb->dels, n * sizeof(*dels));
    qsort(dels, n, sizeof(*dels), store_mem_delivery_cmp);
    for (size_t i = 0; i < n; i++) {
        struct store_mem_folder *f =
            dels[i].folder_id != 0 ? store_mem_folder_by_id(mb, dels[i].folder_id) : NULL;
        str_copy(names[i], f != NULL ? f->name : dels[i].folder, sizeof(names[i]));
        /* The message's modseq decides, if there is a message here. */
        struct store_mem_msg *m = f != NULL ? store_mem_msg_find(f, dels[i].uid) : NULL;
        in[i] = m == NULL || (m->modseq > since && m->modseq <= upto);
    }
    int r = 0;
    for (size_t i = 0; i < n && r == 0; i++)
        if (in[i] && strcmp(dels[i].id, after) > 0)
            r = cb(ctx, dels[i].id, names[i], dels[i].uid);
    free(in);
    free(names);
    free(dels);
    return r;
}

/* The same decisions, in the same order, as store_fs_delivery_add(). */
static enum store_status store_mem_delivery_add(struct store *st, const char *user, const char *id,
                                                const char *folder, uint32_t uid)
{
    struct store_mem_mbox *mb = store_mem_mbox_find((struct store_mem *)st, user);
    if (mb == NULL)
        return STORE_NOTFOUND;
    if (store_mem_fence(st, mb) != STORE_OK)
        return STORE_STALE;
    if (!store_state_writable(mb->info.state))
        return STORE_NOTLIVE;
    if (store_mem_delivery_find(mb, id) != NULL)
        return STORE_EXISTS;
    /* Linked to the message if there is one here (tombstones included), else
     * kept with the folder name: the id only has to keep a retried delivery
     * from being stored twice. */
    struct store_mem_folder *f = store_mem_folder_find(mb, folder);
    bool linked = f != NULL && store_mem_msg_find(f, uid) != NULL;
    if (mb->ndels == mb->capdels) {
        mb->capdels = mb->capdels ? mb->capdels * 2 : 16;
        mb->dels = xrealloc(mb->dels, mb->capdels * sizeof(*mb->dels));
    }
    struct store_mem_delivery *d = &mb->dels[mb->ndels++];
    str_copy(d->id, id, sizeof(d->id));
    d->folder_id = linked ? f->id : 0;
    str_copy(d->folder, linked ? "" : folder, sizeof(d->folder));
    d->uid = uid;
    return STORE_OK;
}

static int store_mem_delivery_add_many(struct store *st, const char *user,
                                       const struct store_delivery *recs, size_t n,
                                       enum store_status *status_out)
{
    for (size_t i = 0; i < n; i++)
        status_out[i] = store_mem_delivery_add(st, user, recs[i].id, recs[i].folder, recs[i].uid);
    return 0;
}

static const struct store_ops store_mem_ops = {
    .close = store_mem_close,
    .mailbox_create = store_mem_mailbox_create,
    .mailbox_get = store_mem_mailbox_get,
    .mailbox_set_state = store_mem_mailbox_set_state,
    .mailbox_purge = store_mem_mailbox_purge,
    .mailbox_raise_modseq = store_mem_mailbox_raise_modseq,
    .mailbox_list = store_mem_mailbox_list,
    .mailbox_token = store_mem_mailbox_token,
    .folder_create = store_mem_folder_create,
    .folder_get = store_mem_folder_get,
    .folder_rename = store_mem_folder_rename,
    .folder_delete = store_mem_folder_delete,
    .folder_list = store_mem_folder_list,
    .folder_set_uidnext = store_mem_folder_set_uidnext,
    .batch_commit = store_mem_batch_commit,
    .msg_set_flags = store_mem_msg_set_flags,
    .msg_expunge = store_mem_msg_expunge,
    .msg_tombstone = store_mem_msg_tombstone,
    .msg_iter = store_mem_msg_iter,
    .msg_read = store_mem_msg_read,
    .changes = store_mem_changes,
    .delivery_iter = store_mem_delivery_iter,
    .delivery_add = store_mem_delivery_add,
    .delivery_add_many = store_mem_delivery_add_many,
};

struct store *store_open_memory(const char *name)
{
    struct store_mem *sm = xmalloc(sizeof(*sm));
    store_init_base(&sm->base, &store_mem_ops, name);
    return &sm->base;
}
