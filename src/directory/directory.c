/*
 * directory — the public face of the directory: validates and normalizes
 * every argument once, here, so each backend only ever sees well-formed,
 * lowercase keys and can keep its own code to storage semantics.
 */
#include <string.h>

#include "directory/directory_private.h"
#include "util/util.h"

#define DIR_RESOLVE_DEPTH 8

const char *dir_status_str(enum dir_status st)
{
    switch (st) {
    case DIR_OK:
        return "ok";
    case DIR_NOTFOUND:
        return "not found";
    case DIR_EXISTS:
        return "already exists";
    case DIR_CONFLICT:
        return "changed concurrently, retry";
    case DIR_INVALID:
        return "invalid or unknown reference";
    case DIR_TEMPFAIL:
        return "directory temporarily unavailable";
    }
    return "unknown status";
}

const char *dir_user_state_str(enum dir_user_state s)
{
    switch (s) {
    case DIR_USER_ACTIVE:
        return "active";
    case DIR_USER_MOVING:
        return "moving";
    case DIR_USER_FINALIZING:
        return "finalizing";
    }
    return "unknown";
}

const char *dir_job_kind_str(enum dir_job_kind k)
{
    switch (k) {
    case DIR_JOB_MOVE:
        return "move";
    case DIR_JOB_IMPORT:
        return "import";
    }
    return "unknown";
}

bool dir_job_phase_final(const char *phase)
{
    /* Keep in step with DIR_SQLITE_FINAL_PHASES in dir_sqlite.c. */
    return strcmp(phase, "done") == 0 || strcmp(phase, "failed") == 0 ||
           strcmp(phase, "aborted") == 0 || strcmp(phase, "retention") == 0;
}

void dir_close(struct directory **dir)
{
    if (*dir == NULL)
        return;
    (*dir)->ops->close(*dir);
    *dir = NULL;
}

/* ---- argument checks -------------------------------------------------- */

/* Fixed-size string fields come from callers' structs: refuse any that is
 * not terminated inside its array rather than let a backend read past it. */
#define FIELD_OK(f) (memchr((f), '\0', sizeof(f)) != NULL)

static bool norm_addr(const char *in, char out[MAIL_ADDR_MAX + 1])
{
    const char *err;
    return in != NULL && mail_addr_normalize(in, strlen(in), out, &err) == 0;
}

static bool norm_domain(const char *in, char out[MAIL_DOMAIN_MAX + 1])
{
    const char *err;
    return in != NULL && mail_domain_normalize(in, out, &err) == 0;
}

static bool store_name_ok(const char *name)
{
    return name != NULL && mail_store_name_valid(name);
}

/* Normalizes u in place; false if any field is malformed. */
static bool user_check(struct dir_user *u)
{
    char addr[MAIL_ADDR_MAX + 1];

    if (!FIELD_OK(u->address) || !FIELD_OK(u->password_hash) || !FIELD_OK(u->home) ||
        !FIELD_OK(u->alternate))
        return false;
    if (!norm_addr(u->address, addr) || !store_name_ok(u->home))
        return false;
    memcpy(u->address, addr, sizeof(addr));
    if (u->alternate[0] != '\0') {
        if (!norm_addr(u->alternate, addr))
            return false;
        memcpy(u->alternate, addr, sizeof(addr));
    }
    return u->state == DIR_USER_ACTIVE || u->state == DIR_USER_MOVING ||
           u->state == DIR_USER_FINALIZING;
}

static bool job_check(struct dir_job *j)
{
    char addr[MAIL_ADDR_MAX + 1];

    if (!FIELD_OK(j->user) || !FIELD_OK(j->source) || !FIELD_OK(j->dest) || !FIELD_OK(j->phase) ||
        !FIELD_OK(j->lease_owner) || !FIELD_OK(j->last_error))
        return false;
    if (j->kind != DIR_JOB_MOVE && j->kind != DIR_JOB_IMPORT)
        return false;
    if (!norm_addr(j->user, addr))
        return false;
    memcpy(j->user, addr, sizeof(addr));
    return j->dest[0] == '\0' || mail_store_name_valid(j->dest);
}

static bool list_args_ok(const void *list_r, const size_t *n_r)
{
    return list_r != NULL && n_r != NULL;
}

/* ---- dispatch --------------------------------------------------------- */

enum dir_status dir_domain_add(struct directory *dir, const char *name)
{
    char d[MAIL_DOMAIN_MAX + 1];

    ASSERT(dir != NULL);
    if (!norm_domain(name, d))
        return DIR_INVALID;
    return dir->ops->domain_add(dir, d);
}

enum dir_status dir_domain_get(struct directory *dir, const char *name, struct dir_domain *out)
{
    char d[MAIL_DOMAIN_MAX + 1];

    ASSERT(dir != NULL && out != NULL);
    if (!norm_domain(name, d))
        return DIR_INVALID;
    return dir->ops->domain_get(dir, d, out);
}

enum dir_status dir_domain_list(struct directory *dir, struct dir_domain **list_r, size_t *n_r)
{
    ASSERT(dir != NULL && list_args_ok(list_r, n_r));
    return dir->ops->domain_list(dir, list_r, n_r);
}

enum dir_status dir_user_add(struct directory *dir, struct dir_user *u)
{
    ASSERT(dir != NULL && u != NULL);
    if (!user_check(u))
        return DIR_INVALID;
    return dir->ops->user_add(dir, u);
}

enum dir_status dir_user_get(struct directory *dir, const char *address, struct dir_user *out)
{
    char a[MAIL_ADDR_MAX + 1];

    ASSERT(dir != NULL && out != NULL);
    if (!norm_addr(address, a))
        return DIR_INVALID;
    return dir->ops->user_get(dir, a, out);
}

enum dir_status dir_user_update(struct directory *dir, struct dir_user *u)
{
    ASSERT(dir != NULL && u != NULL);
    if (!user_check(u))
        return DIR_INVALID;
    return dir->ops->user_update(dir, u);
}

enum dir_status dir_user_delete(struct directory *dir, const char *address, uint64_t version)
{
    char a[MAIL_ADDR_MAX + 1];

    ASSERT(dir != NULL);
    if (!norm_addr(address, a))
        return DIR_INVALID;
    return dir->ops->user_delete(dir, a, version);
}

enum dir_status dir_user_list(struct directory *dir, struct dir_user **list_r, size_t *n_r)
{
    ASSERT(dir != NULL && list_args_ok(list_r, n_r));
    return dir->ops->user_list(dir, list_r, n_r);
}

enum dir_status dir_resolve(struct directory *dir, const char *address, struct dir_user *out)
{
    char a[MAIL_ADDR_MAX + 1];
    struct dir_alias al;

    ASSERT(dir != NULL && out != NULL);
    /* Fault injection (tests): the backend is unreachable. */
    if (util_fault_active("dir_resolve"))
        return DIR_TEMPFAIL;
    if (!norm_addr(address, a))
        return DIR_INVALID;
    /* The address itself plus up to DIR_RESOLVE_DEPTH alias hops; a loop
     * simply runs out of hops, so no visited set is needed. */
    for (int hop = 0; hop <= DIR_RESOLVE_DEPTH; hop++) {
        enum dir_status st = dir->ops->user_get(dir, a, out);
        if (st != DIR_NOTFOUND)
            return st;
        st = dir->ops->alias_get(dir, a, &al);
        if (st != DIR_OK)
            return st;
        /* Targets are stored normalized, but re-check: a backend row is
         * data, and a bad one must end the chain, not confuse it. */
        if (!norm_addr(al.target, a))
            return DIR_NOTFOUND;
    }
    return DIR_NOTFOUND;
}

enum dir_status dir_alias_add(struct directory *dir, const char *address, const char *target)
{
    char a[MAIL_ADDR_MAX + 1], t[MAIL_ADDR_MAX + 1];

    ASSERT(dir != NULL);
    if (!norm_addr(address, a) || !norm_addr(target, t) || strcmp(a, t) == 0)
        return DIR_INVALID;
    return dir->ops->alias_add(dir, a, t);
}

enum dir_status dir_alias_get(struct directory *dir, const char *address, struct dir_alias *out)
{
    char a[MAIL_ADDR_MAX + 1];

    ASSERT(dir != NULL && out != NULL);
    if (!norm_addr(address, a))
        return DIR_INVALID;
    return dir->ops->alias_get(dir, a, out);
}

enum dir_status dir_alias_delete(struct directory *dir, const char *address, uint64_t version)
{
    char a[MAIL_ADDR_MAX + 1];

    ASSERT(dir != NULL);
    if (!norm_addr(address, a))
        return DIR_INVALID;
    return dir->ops->alias_delete(dir, a, version);
}

enum dir_status dir_alias_list(struct directory *dir, struct dir_alias **list_r, size_t *n_r)
{
    ASSERT(dir != NULL && list_args_ok(list_r, n_r));
    return dir->ops->alias_list(dir, list_r, n_r);
}

enum dir_status dir_store_upsert(struct directory *dir, const char *name, const char *lmtp)
{
    ASSERT(dir != NULL);
    if (!store_name_ok(name) || lmtp == NULL || lmtp[0] == '\0' || strlen(lmtp) > DIR_ENDPOINT_MAX)
        return DIR_INVALID;
    return dir->ops->store_upsert(dir, name, lmtp);
}

enum dir_status dir_store_get(struct directory *dir, const char *name, struct dir_store *out)
{
    ASSERT(dir != NULL && out != NULL);
    if (!store_name_ok(name))
        return DIR_INVALID;
    return dir->ops->store_get(dir, name, out);
}

enum dir_status dir_store_list(struct directory *dir, struct dir_store **list_r, size_t *n_r)
{
    ASSERT(dir != NULL && list_args_ok(list_r, n_r));
    return dir->ops->store_list(dir, list_r, n_r);
}

enum dir_status dir_job_create(struct directory *dir, struct dir_job *j)
{
    ASSERT(dir != NULL && j != NULL);
    if (!job_check(j))
        return DIR_INVALID;
    return dir->ops->job_create(dir, j);
}

enum dir_status dir_job_get(struct directory *dir, uint64_t id, struct dir_job *out)
{
    ASSERT(dir != NULL && out != NULL);
    /* Ids live in a signed 64-bit SQL column. */
    if (id == 0 || id > INT64_MAX)
        return DIR_NOTFOUND;
    return dir->ops->job_get(dir, id, out);
}

enum dir_status dir_job_update(struct directory *dir, struct dir_job *j)
{
    ASSERT(dir != NULL && j != NULL);
    if (!job_check(j))
        return DIR_INVALID;
    if (j->id == 0 || j->id > INT64_MAX)
        return DIR_NOTFOUND;
    return dir->ops->job_update(dir, j);
}

enum dir_status dir_job_create_data(struct directory *dir, struct dir_job *j, const void *data,
                                    size_t len)
{
    ASSERT(dir != NULL && j != NULL && (data != NULL || len == 0));
    if (!job_check(j) || len > DIR_JOB_DATA_MAX)
        return DIR_INVALID;
    return dir->ops->job_create_data(dir, j, data != NULL ? data : "", len);
}

enum dir_status dir_job_update_data(struct directory *dir, struct dir_job *j, const void *data,
                                    size_t len)
{
    ASSERT(dir != NULL && j != NULL && (data != NULL || len == 0));
    if (!job_check(j) || len > DIR_JOB_DATA_MAX)
        return DIR_INVALID;
    if (j->id == 0 || j->id > INT64_MAX)
        return DIR_NOTFOUND;
    return dir->ops->job_update_data(dir, j, data != NULL ? data : "", len);
}

enum dir_status dir_job_data_get(struct directory *dir, uint64_t id, struct buf *out)
{
    ASSERT(dir != NULL && out != NULL);
    if (id == 0 || id > INT64_MAX)
        return DIR_NOTFOUND;
    return dir->ops->job_data_get(dir, id, out);
}

enum dir_status dir_job_list(struct directory *dir, struct dir_job **list_r, size_t *n_r)
{
    ASSERT(dir != NULL && list_args_ok(list_r, n_r));
    return dir->ops->job_list(dir, list_r, n_r);
}

/* ---- subscriptions ---- */

static bool dir_sub_args_ok(const char *user, const char *folder)
{
    size_t fl = folder != NULL ? strlen(folder) : 0;
    return user != NULL && strlen(user) <= MAIL_ADDR_MAX && fl > 0 && fl <= DIR_FOLDER_MAX;
}

enum dir_status dir_sub_set(struct directory *dir, const char *user, const char *folder, bool on)
{
    if (!dir_sub_args_ok(user, folder))
        return DIR_INVALID;
    return dir->ops->sub_set(dir, user, folder, on);
}

enum dir_status dir_sub_list(struct directory *dir, const char *user,
                             void (*cb)(void *ctx, const char *folder), void *ctx)
{
    if (user == NULL || strlen(user) > MAIL_ADDR_MAX)
        return DIR_INVALID;
    return dir->ops->sub_list(dir, user, cb, ctx);
}
