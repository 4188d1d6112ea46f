/*
 * router — where mail for an address goes, for the mta.
 *
 *  - At accept time, router_expand() turns a recipient address into the
 *    users to deliver to: aliases are followed (through the directory), and
 *    a user's alternate recipient becomes a target of its own — with
 *    deliver-both the user and the alternate, otherwise only the alternate
 *    (brief invariant 9). A domain that is not local is ROUTER_NOTLOCAL
 *    (relaying denied), an unknown user ROUTER_UNKNOWN, a directory that
 *    cannot answer ROUTER_TEMPFAIL (never "unknown").
 *  - At delivery time, router_home() says which store (and LMTP endpoint)
 *    holds a user now.
 *
 * Both answer from a cache of directory lookups with a TTL (default 60 s).
 * The cache is a hint and never decides correctness (brief invariant 7): a
 * store refuses mail for a mailbox it does not own at the current epoch
 * with a redirect, and router_redirect() then asks the directory at once,
 * replaces the cached entry and returns the fresh home — a move costs the
 * mta one extra round trip, not a TTL.
 *
 * Thread-safe: one mutex guards the cache and the router's own directory
 * handle; the delivery workers share one router.
 */
#ifndef TERN_ROUTER_H
#define TERN_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "directory/directory.h"
#include "mail/mail.h"

enum router_status { ROUTER_OK = 0, ROUTER_UNKNOWN, ROUTER_NOTLOCAL, ROUTER_TEMPFAIL };

enum router_kind { ROUTER_PRIMARY = 0, ROUTER_ALTERNATE };

struct router_target {
    char addr[MAIL_ADDR_MAX + 1]; /* a user's address */
    enum router_kind kind;
};

struct router_home {
    char store[MAIL_NAME_MAX + 1];
    char lmtp[DIR_ENDPOINT_MAX + 1];
    uint64_t epoch;
    bool cached; /* answered from the cache */
};

struct router;

/* Opens its own handle on the SQLite directory at path. ttl_ms 0 disables
 * the cache. NULL with *error_r. */
struct router *router_new(const char *directory_path, unsigned ttl_ms, const char **error_r);
void router_free(struct router **r);

/* Expands addr into at most 2 targets (*n_r of them). */
enum router_status router_expand(struct router *r, const char *addr, struct router_target out[2],
                                 size_t *n_r);
/* The home of user (a user's address). */
enum router_status router_home(struct router *r, const char *user, struct router_home *out);
/* A store said the user lives elsewhere: ask the directory now (never the
 * cache), refresh the cache, return the directory's answer. */
enum router_status router_redirect(struct router *r, const char *user, struct router_home *out);

/* Cache counters for logs and tests. */
void router_stats(struct router *r, uint64_t *hits_r, uint64_t *misses_r);

#endif
