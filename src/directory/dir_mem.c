/*
 * dir_mem — the in-memory directory backend for unit tests of higher layers.
 * It must answer exactly like dir_sqlite.c (same status in every case, same
 * order of checks), so tests written against it hold for production. Plain
 * arrays and linear scans: sizes in tests are tiny.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "directory/directory_private.h"
#include "util/util.h"

struct dir_mem {
    struct directory base;
    struct dir_domain *domains;
    size_t n_domains;
    struct dir_user *users;
    size_t n_users;
    struct dir_alias *aliases;
    size_t n_aliases;
    struct dir_store *stores;
    size_t n_stores;
    struct dir_job *jobs; /* in id order */
    struct buf *job_data; /* parallel to jobs */
    size_t n_jobs;
    uint64_t next_job_id;
    char **subs; /* "user\nfolder", sorted */
    size_t n_subs;
};

/* arr (n elements of size size) grown by one zeroed element at index n. */
static void *dir_mem_grow(void *arr, size_t n, size_t size)
{
    char *a = xrealloc(arr, (n + 1) * size);
    memset(a + n * size, 0, size);
    return a;
}

/* Removes element i from an array of n elements. */
static void dir_mem_remove(void *arr, size_t *n, size_t size, size_t i)
{
    char *a = arr;
    memmove(a + i * size, a + (i + 1) * size, (*n - i - 1) * size);
    (*n)--;
}

/* A malloc'd copy of n elements (callers free() it even when n is 0). */
static void *dir_mem_dup(const void *arr, size_t n, size_t size)
{
    void *c = xcalloc(n > 0 ? n : 1, size);
    if (n > 0)
        memcpy(c, arr, n * size);
    return c;
}

static int64_t dir_mem_now(void)
{
    return time_now_ms() / 1000;
}

static struct dir_domain *dir_mem_find_domain(struct dir_mem *m, const char *name)
{
    for (size_t i = 0; i < m->n_domains; i++)
        if (strcmp(m->domains[i].name, name) == 0)
            return &m->domains[i];
    return NULL;
}

static struct dir_user *dir_mem_find_user(struct dir_mem *m, const char *addr, size_t *idx_r)
{
    for (size_t i = 0; i < m->n_users; i++) {
        if (strcmp(m->users[i].address, addr) == 0) {
            if (idx_r != NULL)
                *idx_r = i;
            return &m->users[i];
        }
    }
    return NULL;
}

static struct dir_alias *dir_mem_find_alias(struct dir_mem *m, const char *addr, size_t *idx_r)
{
    for (size_t i = 0; i < m->n_aliases; i++) {
        if (strcmp(m->aliases[i].address, addr) == 0) {
            if (idx_r != NULL)
                *idx_r = i;
            return &m->aliases[i];
        }
    }
    return NULL;
}

static struct dir_store *dir_mem_find_store(struct dir_mem *m, const char *name)
{
    for (size_t i = 0; i < m->n_stores; i++)
        if (strcmp(m->stores[i].name, name) == 0)
            return &m->stores[i];
    return NULL;
}

static struct dir_job *dir_mem_find_job(struct dir_mem *m, uint64_t id)
{
    for (size_t i = 0; i < m->n_jobs; i++)
        if (m->jobs[i].id == id)
            return &m->jobs[i];
    return NULL;
}

/* True if user has a live job other than except_id. */
static bool dir_mem_live_job(struct dir_mem *m, const char *user, uint64_t except_id)
{
    for (size_t i = 0; i < m->n_jobs; i++) {
        const struct dir_job *j = &m->jobs[i];
        if (j->id != except_id && strcmp(j->user, user) == 0 && !dir_job_phase_final(j->phase))
            return true;
    }
    return false;
}

static void dir_mem_close(struct directory *dir)
{
    struct dir_mem *m = (struct dir_mem *)dir;
    free(m->domains);
    free(m->users);
    free(m->aliases);
    free(m->stores);
    for (size_t i = 0; i < m->n_jobs; i++)
        buf_free(&m->job_data[i]);
    free(m->job_data);
    free(m->jobs);
    for (size_t i = 0; i < m->n_subs; i++)
        free(m->subs[i]);
    free(m->subs);
    free(m);
}

/* ---- domains ---- */

static enum dir_status dir_mem_domain_add(struct directory *dir, const char *name)
{
    struct dir_mem *m = (struct dir_mem *)dir;
    if (dir_mem_find_domain(m, name) != NULL)
        return DIR_EXISTS;
    m->domains = dir_mem_grow(m->domains, m->n_domains, sizeof(*m->domains));
    struct dir_domain *d = &m->domains[m->n_domains++];
    str_copy(d->name, name, sizeof(d->name));
    d->version = 1;
    return DIR_OK;
}

static enum dir_status dir_mem_domain_get(struct directory *dir, const char *name,
                                          struct dir_domain *out)
{
    struct dir_domain *d = dir_mem_find_domain((struct dir_mem *)dir, name);
    if (d == NULL)
        return DIR_NOTFOUND;
    *out = *d;
    return DIR_OK;
}

static int dir_mem_cmp_domain(const void *a, const void *b)
{
    return strcmp(((const struct dir_domain *)a)->name, ((const struct dir_domain *)b)->name);
}

static enum dir_status dir_mem_domain_list(struct directory *dir, struct dir_domain **list_r,
                                           size_t *n_r)
{
    struct dir_mem *m = (struct dir_mem *)dir;
    *list_r = dir_mem_dup(m->domains, m->n_domains, sizeof(**list_r));
    *n_r = m->n_domains;
    qsort(*list_r, *n_r, sizeof(**list_r), dir_mem_cmp_domain);
    return DIR_OK;
}

/* ---- users ---- */

static enum dir_status dir_mem_user_add(struct directory *dir, struct dir_user *u)
{
    struct dir_mem *m = (struct dir_mem *)dir;
    /* Check order (shared with dir_sqlite): domain, clash, store. */
    if (dir_mem_find_domain(m, mail_addr_domain(u->address)) == NULL)
        return DIR_INVALID;
    if (dir_mem_find_user(m, u->address, NULL) != NULL ||
        dir_mem_find_alias(m, u->address, NULL) != NULL)
        return DIR_EXISTS;
    if (dir_mem_find_store(m, u->home) == NULL)
        return DIR_INVALID;
    u->version = 1;
    if (u->epoch == 0)
        u->epoch = 1;
    u->created = u->updated = dir_mem_now();
    m->users = dir_mem_grow(m->users, m->n_users, sizeof(*m->users));
    m->users[m->n_users++] = *u;
    return DIR_OK;
}

static enum dir_status dir_mem_user_get(struct directory *dir, const char *address,
                                        struct dir_user *out)
{
    struct dir_user *u = dir_mem_find_user((struct dir_mem *)dir, address, NULL);
    if (u == NULL)
        return DIR_NOTFOUND;
    *out = *u;
    return DIR_OK;
}

static enum dir_status dir_mem_user_update(struct directory *dir, struct dir_user *u)
{
    struct dir_mem *m = (struct dir_mem *)dir;
    /* Check order (shared with dir_sqlite): store, existence, version. */
    if (dir_mem_find_store(m, u->home) == NULL)
        return DIR_INVALID;
    struct dir_user *cur = dir_mem_find_user(m, u->address, NULL);
    if (cur == NULL)
        return DIR_NOTFOUND;
    if (cur->version != u->version)
        return DIR_CONFLICT;
    int64_t created = cur->created; /* fixed at creation */
    u->version++;
    u->updated = dir_mem_now();
    *cur = *u;
    cur->created = created;
    return DIR_OK;
}

static enum dir_status dir_mem_user_delete(struct directory *dir, const char *address,
                                           uint64_t version)
{
    struct dir_mem *m = (struct dir_mem *)dir;
    size_t i;
    struct dir_user *cur = dir_mem_find_user(m, address, &i);
    if (cur == NULL)
        return DIR_NOTFOUND;
    if (cur->version != version)
        return DIR_CONFLICT;
    dir_mem_remove(m->users, &m->n_users, sizeof(*cur), i);
    return DIR_OK;
}

static int dir_mem_cmp_user(const void *a, const void *b)
{
    return strcmp(((const struct dir_user *)a)->address, ((const struct dir_user *)b)->address);
}

static enum dir_status dir_mem_user_list(struct directory *dir, struct dir_user **list_r,
                                         size_t *n_r)
{
    struct dir_mem *m = (struct dir_mem *)dir;
    *list_r = dir_mem_dup(m->users, m->n_users, sizeof(**list_r));
    *n_r = m->n_users;
    qsort(*list_r, *n_r, sizeof(**list_r), dir_mem_cmp_user);
    return DIR_OK;
}

/* ---- aliases ---- */

static enum dir_status dir_mem_alias_add(struct directory *dir, const char *address,
                                         const char *target)
{
    struct dir_mem *m = (struct dir_mem *)dir;
    if (dir_mem_find_domain(m, mail_addr_domain(address)) == NULL)
        return DIR_INVALID;
    if (dir_mem_find_user(m, address, NULL) != NULL || dir_mem_find_alias(m, address, NULL) != NULL)
        return DIR_EXISTS;
    m->aliases = dir_mem_grow(m->aliases, m->n_aliases, sizeof(*m->aliases));
    struct dir_alias *a = &m->aliases[m->n_aliases++];
    str_copy(a->address, address, sizeof(a->address));
    str_copy(a->target, target, sizeof(a->target));
    a->version = 1;
    return DIR_OK;
}

static enum dir_status dir_mem_alias_get(struct directory *dir, const char *address,
                                         struct dir_alias *out)
{
    struct dir_alias *a = dir_mem_find_alias((struct dir_mem *)dir, address, NULL);
    if (a == NULL)
        return DIR_NOTFOUND;
    *out = *a;
    return DIR_OK;
}

static enum dir_status dir_mem_alias_delete(struct directory *dir, const char *address,
                                            uint64_t version)
{
    struct dir_mem *m = (struct dir_mem *)dir;
    size_t i;
    struct dir_alias *a = dir_mem_find_alias(m, address, &i);
    if (a == NULL)
        return DIR_NOTFOUND;
    if (a->version != version)
        return DIR_CONFLICT;
    dir_mem_remove(m->aliases, &m->n_aliases, sizeof(*a), i);
    return DIR_OK;
}

static int dir_mem_cmp_alias(const void *a, const void *b)
{
    return strcmp(((const struct dir_alias *)a)->address, ((const struct dir_alias *)b)->address);
}

static enum dir_status dir_mem_alias_list(struct directory *dir, struct dir_alias **list_r,
                                          size_t *n_r)
{
    struct dir_mem *m = (struct dir_mem *)dir;
    *list_r = dir_mem_dup(m->aliases, m->n_aliases, sizeof(**list_r));
    *n_r = m->n_aliases;
    qsort(*list_r, *n_r, sizeof(**list_r), dir_mem_cmp_alias);
    return DIR_OK;
}

/* ---- stores ---- */

static enum dir_status dir_mem_store_upsert(struct directory *dir, const char *name,
                                            const char *lmtp)
{
    struct dir_mem *m = (struct dir_mem *)dir;
    struct dir_store *s = dir_mem_find_store(m, name);
    if (s == NULL) {
        m->stores = dir_mem_grow(m->stores, m->n_stores, sizeof(*m->stores));
        s = &m->stores[m->n_stores++];
        str_copy(s->name, name, sizeof(s->name));
        s->version = 0;
    } else if (strcmp(s->lmtp, lmtp) == 0) {
        return DIR_OK; /* unchanged: no new version */
    }
    str_copy(s->lmtp, lmtp, sizeof(s->lmtp));
    s->version++;
    return DIR_OK;
}

static enum dir_status dir_mem_store_get(struct directory *dir, const char *name,
                                         struct dir_store *out)
{
    struct dir_store *s = dir_mem_find_store((struct dir_mem *)dir, name);
    if (s == NULL)
        return DIR_NOTFOUND;
    *out = *s;
    return DIR_OK;
}

static int dir_mem_cmp_store(const void *a, const void *b)
{
    return strcmp(((const struct dir_store *)a)->name, ((const struct dir_store *)b)->name);
}

static enum dir_status dir_mem_store_list(struct directory *dir, struct dir_store **list_r,
                                          size_t *n_r)
{
    struct dir_mem *m = (struct dir_mem *)dir;
    *list_r = dir_mem_dup(m->stores, m->n_stores, sizeof(**list_r));
    *n_r = m->n_stores;
    qsort(*list_r, *n_r, sizeof(**list_r), dir_mem_cmp_store);
    return DIR_OK;
}

/* ---- jobs ---- */

static enum dir_status dir_mem_job_create(struct directory *dir, struct dir_job *j)
{
    struct dir_mem *m = (struct dir_mem *)dir;
    if (dir_mem_find_user(m, j->user, NULL) == NULL || dir_mem_live_job(m, j->user, 0))
        return DIR_INVALID;
    j->id = m->next_job_id++;
    j->version = 1;
    j->created = j->updated = dir_mem_now();
    m->jobs = dir_mem_grow(m->jobs, m->n_jobs, sizeof(*m->jobs));
    m->job_data = dir_mem_grow(m->job_data, m->n_jobs, sizeof(*m->job_data));
    buf_init(&m->job_data[m->n_jobs], 0);
    m->jobs[m->n_jobs++] = *j;
    return DIR_OK;
}

static enum dir_status dir_mem_job_create_data(struct directory *dir, struct dir_job *j,
                                               const void *data, size_t len)
{
    struct dir_mem *m = (struct dir_mem *)dir;
    enum dir_status s = dir_mem_job_create(dir, j);
    if (s == DIR_OK && data != NULL)
        buf_append(&m->job_data[m->n_jobs - 1], data, len);
    return s;
}

static enum dir_status dir_mem_job_get(struct directory *dir, uint64_t id, struct dir_job *out)
{
    struct dir_job *j = dir_mem_find_job((struct dir_mem *)dir, id);
    if (j == NULL)
        return DIR_NOTFOUND;
    *out = *j;
    return DIR_OK;
}

static enum dir_status dir_mem_job_update(struct directory *dir, struct dir_job *j)
{
    struct dir_mem *m = (struct dir_mem *)dir;
    struct dir_job *cur = dir_mem_find_job(m, j->id);
    /* Check order (shared with dir_sqlite): revived job clash, existence,
     * version. user, kind and created are fixed at creation. */
    if (cur != NULL && !dir_job_phase_final(j->phase) && dir_mem_live_job(m, cur->user, cur->id))
        return DIR_INVALID;
    if (cur == NULL)
        return DIR_NOTFOUND;
    if (cur->version != j->version)
        return DIR_CONFLICT;
    str_copy(j->user, cur->user, sizeof(j->user));
    j->kind = cur->kind;
    j->created = cur->created;
    j->version++;
    j->updated = dir_mem_now();
    *cur = *j;
    return DIR_OK;
}

static enum dir_status dir_mem_job_update_data(struct directory *dir, struct dir_job *j,
                                               const void *data, size_t len)
{
    struct dir_mem *m = (struct dir_mem *)dir;
    enum dir_status s = dir_mem_job_update(dir, j);
    if (s == DIR_OK && data != NULL) {
        struct buf *b = &m->job_data[dir_mem_find_job(m, j->id) - m->jobs];
        buf_reset(b);
        buf_append(b, data, len);
    }
    return s;
}

static enum dir_status dir_mem_job_data_get(struct directory *dir, uint64_t id, struct buf *out)
{
    struct dir_mem *m = (struct dir_mem *)dir;
    struct dir_job *j = dir_mem_find_job(m, id);
    if (j == NULL)
        return DIR_NOTFOUND;
    const struct buf *b = &m->job_data[j - m->jobs];
    if (b->len > 0 && buf_append(out, b->data, b->len) < 0)
        return DIR_INVALID;
    return DIR_OK;
}

static enum dir_status dir_mem_job_list(struct directory *dir, struct dir_job **list_r, size_t *n_r)
{
    struct dir_mem *m = (struct dir_mem *)dir;
    struct dir_job *l = xcalloc(m->n_jobs > 0 ? m->n_jobs : 1, sizeof(*l));
    for (size_t i = 0; i < m->n_jobs; i++)
        l[i] = m->jobs[m->n_jobs - 1 - i];
    *list_r = l;
    *n_r = m->n_jobs;
    return DIR_OK;
}

static int dir_mem_sub_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static enum dir_status dir_mem_sub_set(struct directory *dir, const char *user, const char *folder,
                                       bool on)
{
    struct dir_mem *m = (struct dir_mem *)dir;
    size_t l = strlen(user) + strlen(folder) + 2;
    char *key = xmalloc(l);
    snprintf(key, l, "%s\n%s", user, folder);
    for (size_t i = 0; i < m->n_subs; i++) {
        if (strcmp(m->subs[i], key) == 0) {
            free(key);
            if (!on) {
                free(m->subs[i]);
                memmove(&m->subs[i], &m->subs[i + 1], (m->n_subs - i - 1) * sizeof(*m->subs));
                m->n_subs--;
            }
            return DIR_OK;
        }
    }
    if (!on) {
        free(key);
        return DIR_NOTFOUND;
    }
    m->subs = xrealloc(m->subs, (m->n_subs + 1) * sizeof(*m->subs));
    m->subs[m->n_subs++] = key;
    qsort(m->subs, m->n_subs, sizeof(*m->subs), dir_mem_sub_cmp);
    return DIR_OK;
}

static enum dir_status dir_mem_sub_list(struct directory *dir, const char *user,
                                        void (*cb)(void *ctx, const char *folder), void *ctx)
{
    struct dir_mem *m = (struct dir_mem *)dir;
    size_t ul = strlen(user);
    for (size_t i = 0; i < m->n_subs; i++)
        if (strncmp(m->subs[i], user, ul) == 0 && m->subs[i][ul] == '\n')
            cb(ctx, m->subs[i] + ul + 1);
    return DIR_OK;
}

static const struct dir_ops dir_mem_ops = {
    .close = dir_mem_close,
    .domain_add = dir_mem_domain_add,
    .domain_get = dir_mem_domain_get,
    .domain_list = dir_mem_domain_list,
    .user_add = dir_mem_user_add,
    .user_get = dir_mem_user_get,
    .user_update = dir_mem_user_update,
    .user_delete = dir_mem_user_delete,
    .user_list = dir_mem_user_list,
    .alias_add = dir_mem_alias_add,
    .alias_get = dir_mem_alias_get,
    .alias_delete = dir_mem_alias_delete,
    .alias_list = dir_mem_alias_list,
    .store_upsert = dir_mem_store_upsert,
    .store_get = dir_mem_store_get,
    .store_list = dir_mem_store_list,
    .job_create = dir_mem_job_create,
    .job_get = dir_mem_job_get,
    .job_update = dir_mem_job_update,
    .job_list = dir_mem_job_list,
    .job_create_data = dir_mem_job_create_data,
    .job_update_data = dir_mem_job_update_data,
    .job_data_get = dir_mem_job_data_get,
    .sub_set = dir_mem_sub_set,
    .sub_list = dir_mem_sub_list,
};

struct directory *dir_open_memory(void)
{
    struct dir_mem *m = xmalloc(sizeof(*m));
    m->base.ops = &dir_mem_ops;
    m->next_job_id = 1;
    return &m->base;
}
