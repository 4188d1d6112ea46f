/* router — see router.h. */
#include "router/router.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"

#define ROUTER_SLOTS 4096 /* direct-mapped cache: a collision just evicts */

struct router_entry {
    char key[MAIL_ADDR_MAX + 1]; /* address looked up ("" = empty slot) */
    bool is_domain;              /* key is a domain: exists or not */
    enum dir_status status;      /* DIR_OK or DIR_NOTFOUND */
    struct dir_user user;
    char lmtp[DIR_ENDPOINT_MAX + 1];
    int64_t expires; /* mono ms */
};

struct router {
    pthread_mutex_t lock;
    struct directory *dir;
    unsigned ttl_ms;
    struct router_entry *slots;
    uint64_t hits, misses;
};

struct router *router_new(const char *directory_path, unsigned ttl_ms, const char **error_r)
{
    struct directory *dir = dir_open_sqlite(directory_path, error_r);
    if (dir == NULL)
        return NULL;
    struct router *r = xmalloc(sizeof(*r));
    pthread_mutex_init(&r->lock, NULL);
    r->dir = dir;
    r->ttl_ms = ttl_ms;
    r->slots = xcalloc(ROUTER_SLOTS, sizeof(*r->slots));
    return r;
}

void router_free(struct router **rp)
{
    struct router *r = *rp;
    if (r == NULL)
        return;
    dir_close(&r->dir);
    pthread_mutex_destroy(&r->lock);
    free(r->slots);
    xfree(rp);
}

static struct router_entry *slot(struct router *r, const char *key, bool is_domain)
{
    /* FNV-1a */
    uint32_t h = 2166136261u ^ (is_domain ? 0x9e37u : 0);
    for (const char *p = key; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    return &r->slots[h % ROUTER_SLOTS];
}

static struct router_entry *cache_get(struct router *r, const char *key, bool is_domain)
{
    if (r->ttl_ms == 0)
        return NULL;
    struct router_entry *e = slot(r, key, is_domain);
    if (e->key[0] != '\0' && e->is_domain == is_domain && strcmp(e->key, key) == 0 &&
        e->expires > time_mono_ms()) {
        r->hits++;
        return e;
    }
    r->misses++;
    return NULL;
}

static struct router_entry *cache_put(struct router *r, const char *key, bool is_domain,
                                      enum dir_status st)
{
    struct router_entry *e = slot(r, key, is_domain);
    memset(e, 0, sizeof(*e));
    str_copy(e->key, key, sizeof(e->key));
    e->is_domain = is_domain;
    e->status = st;
    e->expires = r->ttl_ms == 0 ? 0 : time_mono_ms() + r->ttl_ms;
    return e;
}

/* Resolves addr (through aliases) to a user and its store endpoint, from the
 * cache unless fresh is set. Called with the lock held. */
static enum router_status lookup(struct router *r, const char *addr, bool fresh,
                                 struct router_entry *out)
{
    struct router_entry *e = fresh ? NULL : cache_get(r, addr, false);
    if (e == NULL) {
        struct dir_user u;
        enum dir_status ds = dir_resolve(r->dir, addr, &u);
        if (ds != DIR_OK && ds != DIR_NOTFOUND && ds != DIR_INVALID)
            return ROUTER_TEMPFAIL;
        struct dir_store st;
        if (ds == DIR_OK) {
            enum dir_status ss = dir_store_get(r->dir, u.home, &st);
            if (ss == DIR_TEMPFAIL)
                return ROUTER_TEMPFAIL;
            if (ss != DIR_OK) {
                log_error("router", "user %s is homed on unknown store %s", u.address, u.home);
                return ROUTER_TEMPFAIL;
            }
        }
        e = cache_put(r, addr, false, ds == DIR_OK ? DIR_OK : DIR_NOTFOUND);
        if (ds == DIR_OK) {
            e->user = u;
            str_copy(e->lmtp, st.lmtp, sizeof(e->lmtp));
        }
    }
    *out = *e;
    return e->status == DIR_OK ? ROUTER_OK : ROUTER_UNKNOWN;
}

static enum router_status domain_local(struct router *r, const char *domain)
{
    struct router_entry *e = cache_get(r, domain, true);
    if (e == NULL) {
        struct dir_domain d;
        enum dir_status ds = dir_domain_get(r->dir, domain, &d);
        if (ds != DIR_OK && ds != DIR_NOTFOUND && ds != DIR_INVALID)
            return ROUTER_TEMPFAIL;
        e = cache_put(r, domain, true, ds == DIR_OK ? DIR_OK : DIR_NOTFOUND);
    }
    return e->status == DIR_OK ? ROUTER_OK : ROUTER_NOTLOCAL;
}

enum router_status router_expand(struct router *r, const char *addr, struct router_target out[2],
                                 size_t *n_r)
{
    *n_r = 0;
    pthread_mutex_lock(&r->lock);
    struct router_entry e;
    enum router_status st = domain_local(r, mail_addr_domain(addr));
    if (st == ROUTER_OK)
        st = lookup(r, addr, false, &e);
    if (st == ROUTER_OK && e.user.alternate[0] != '\0') {
        struct router_entry alt;
        enum router_status as = lookup(r, e.user.alternate, false, &alt);
        if (as == ROUTER_TEMPFAIL) {
            st = ROUTER_TEMPFAIL;
        } else if (as == ROUTER_UNKNOWN) {
            /* A dangling alternate must not swallow mail: keep the user. */
            log_warn("router", "alternate %s of %s is unknown; delivering to %s", e.user.alternate,
                     e.user.address, e.user.address);
        } else {
            if (e.user.deliver_both) {
                str_copy(out[*n_r].addr, e.user.address, sizeof(out[0].addr));
                out[(*n_r)++].kind = ROUTER_PRIMARY;
            }
            str_copy(out[*n_r].addr, alt.user.address, sizeof(out[0].addr));
            out[(*n_r)++].kind = ROUTER_ALTERNATE;
            pthread_mutex_unlock(&r->lock);
            return ROUTER_OK;
        }
    }
    if (st == ROUTER_OK) {
        str_copy(out[0].addr, e.user.address, sizeof(out[0].addr));
        out[0].kind = ROUTER_PRIMARY;
        *n_r = 1;
    }
    pthread_mutex_unlock(&r->lock);
    return st;
}

static enum router_status home(struct router *r, const char *user, bool fresh,
                               struct router_home *out)
{
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&r->lock);
    uint64_t hits = r->hits;
    struct router_entry e;
    enum router_status st = lookup(r, user, fresh, &e);
    if (st == ROUTER_OK) {
        str_copy(out->store, e.user.home, sizeof(out->store));
        str_copy(out->lmtp, e.lmtp, sizeof(out->lmtp));
        out->epoch = e.user.epoch;
        out->cached = r->hits != hits;
    }
    pthread_mutex_unlock(&r->lock);
    return st;
}

enum router_status router_home(struct router *r, const char *user, struct router_home *out)
{
    return home(r, user, false, out);
}

enum router_status router_redirect(struct router *r, const char *user, struct router_home *out)
{
    return home(r, user, true, out);
}

void router_stats(struct router *r, uint64_t *hits_r, uint64_t *misses_r)
{
    pthread_mutex_lock(&r->lock);
    *hits_r = r->hits;
    *misses_r = r->misses;
    pthread_mutex_unlock(&r->lock);
}
