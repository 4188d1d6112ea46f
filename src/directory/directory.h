/*
 * directory — who exists and where they live: domains, users (password hash,
 * home store, state, epoch, alternate recipient, deliver-both), aliases,
 * stores, and move/import jobs.
 *
 * Backends sit behind a vtable (struct dir_ops in directory_private.h):
 *  - SQLite (dir_open_sqlite): the embedded default. WAL journal, a busy
 *    timeout, so the CLI and every role process may use one file at once.
 *    Writes use BEGIN IMMEDIATE and synchronous=FULL: a directory change the
 *    caller was told succeeded is on stable storage.
 *  - memory (dir_open_memory): for unit tests of higher layers.
 *  (PostgreSQL comes later behind the same operations.)
 *
 * Invariants every backend keeps:
 *  1. Every row carries a version that starts at 1 and grows by one on each
 *     change. Every update and delete is a compare-and-set on that version:
 *     if the row changed since the caller read it, nothing is written and the
 *     call returns DIR_CONFLICT (never a silent overwrite).
 *  2. A backend that cannot answer (locked too long, I/O error, unreachable
 *     server) returns DIR_TEMPFAIL. Callers must treat it as temporary: a
 *     directory outage is never "user unknown".
 *  3. Addresses are stored normalized (mail_addr_normalize); lookups
 *     normalize their argument, so "Alice@Example.ORG" finds alice.
 *  4. A user's address is never also an alias, and vice versa.
 *  5. At most one job per user is live (phase not "done"/"failed"/
 *     "aborted"/"retention") at a time. A move in "retention" is complete:
 *     only the purge of the old copy remains, which never blocks a new job.
 *  6. The schema carries its version (table meta, key schema_version) and is
 *     migrated forward on open, inside one transaction; a database from a
 *     newer tern is refused.
 *
 * Threading: a struct directory is used by one thread at a time.
 * Nothing here aborts on bad input; programming errors (NULL handles) panic.
 */
#ifndef TERN_DIRECTORY_H
#define TERN_DIRECTORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mail/mail.h"

#define DIR_HASH_MAX        255
#define DIR_PHASE_MAX       31
#define DIR_ERROR_MAX       255
#define DIR_LEASE_OWNER_MAX 63
#define DIR_ENDPOINT_MAX    127
#define DIR_JOB_ARG_MAX     511

enum dir_status {
    DIR_OK = 0,
    DIR_NOTFOUND, /* no such row */
    DIR_EXISTS,   /* an insert found the key (or an alias/user clash) */
    DIR_CONFLICT, /* compare-and-set lost: the row's version changed */
    DIR_INVALID,  /* a reference does not exist: unknown domain or store,
                     alias target unknown, job already live for the user */
    DIR_TEMPFAIL, /* the backend cannot answer now; retry later */
};

/* "ok", "not found", ... for messages. */
const char *dir_status_str(enum dir_status st);

enum dir_user_state {
    DIR_USER_ACTIVE = 0, /* home store serves the mailbox */
    DIR_USER_MOVING,     /* a move job runs; home still serves */
    DIR_USER_FINALIZING, /* source fenced, switch pending (brief inv. 5) */
};
const char *dir_user_state_str(enum dir_user_state s);

struct dir_domain {
    char name[MAIL_DOMAIN_MAX + 1];
    uint64_t version;
};

struct dir_user {
    char address[MAIL_ADDR_MAX + 1];
    char password_hash[DIR_HASH_MAX + 1]; /* crypt(3) yescrypt "$y$..." */
    char home[MAIL_NAME_MAX + 1];         /* store name */
    enum dir_user_state state;
    uint64_t epoch;                    /* starts at 1; +1 per home change */
    char alternate[MAIL_ADDR_MAX + 1]; /* "" = none */
    bool deliver_both;                 /* alternate AND primary */
    uint64_t version;
    int64_t created; /* unix seconds */
    int64_t updated;
};

struct dir_alias {
    char address[MAIL_ADDR_MAX + 1];
    char target[MAIL_ADDR_MAX + 1];
    uint64_t version;
};

struct dir_store {
    char name[MAIL_NAME_MAX + 1];
    char lmtp[DIR_ENDPOINT_MAX + 1]; /* "127.0.0.1:2401" */
    uint64_t version;
};

enum dir_job_kind { DIR_JOB_MOVE = 0, DIR_JOB_IMPORT };
const char *dir_job_kind_str(enum dir_job_kind k);

struct dir_job {
    uint64_t id; /* assigned by dir_job_create */
    enum dir_job_kind kind;
    char user[MAIL_ADDR_MAX + 1];
    char source[DIR_JOB_ARG_MAX + 1]; /* store name, or "mbox:/path" ... */
    char dest[MAIL_NAME_MAX + 1];
    char phase[DIR_PHASE_MAX + 1]; /* "provision", ..., "done" */
    uint64_t msgs_total, msgs_done;
    uint64_t bytes_total, bytes_done;
    char lease_owner[DIR_LEASE_OWNER_MAX + 1]; /* "" = unleased */
    int64_t lease_expires;                     /* unix ms */
    int64_t created, updated;                  /* unix seconds */
    char last_error[DIR_ERROR_MAX + 1];
    uint64_t version;
    uint64_t checkpoint;  /* moves: source modseq copied up to */
    uint64_t epoch;       /* moves: the user's epoch when the job began */
    int64_t retain_until; /* moves: unix seconds; the source copy is kept until */
    uint32_t options;     /* DIR_JOB_OPT_* */
    int64_t fenced_at;    /* moves: unix ms when this cutover fenced the source; 0 = none */
    uint32_t cutovers;    /* moves: cutovers begun (each fence is one) */
    uint64_t claims;      /* moves: times a mover claimed it; with id, the fencing token */
};

#define DIR_JOB_OPT_SUSPEND  0x1u /* stop when ready to cut over, until completed */
#define DIR_JOB_OPT_COMPLETE 0x2u /* the operator asked to complete */
#define DIR_JOB_OPT_REUSED   0x4u /* moves: the destination was a retained copy */

/* True for the phases after which a job is no longer live (for the
 * one-live-job rule; a mover still visits "retention" jobs to purge). */
bool dir_job_phase_final(const char *phase);

struct directory;

/* Opens (creating if needed) the SQLite directory at path and migrates its
 * schema. Returns NULL with *error_r (static text) on failure. */
struct directory *dir_open_sqlite(const char *path, const char **error_r);
/* An empty in-memory directory. Never fails. */
struct directory *dir_open_memory(void);
void dir_close(struct directory **dir);
/* How long a SQLite handle waits for another writer's lock before a write
 * returns DIR_TEMPFAIL (default 5000 ms). For tests and tools; a no-op on
 * other backends. */
void dir_sqlite_set_busy_timeout(struct directory *dir, int ms);

/* The schema version this build writes (and the one found on open). */
int dir_schema_version(void);

/* ---- domains ---- */
enum dir_status dir_domain_add(struct directory *dir, const char *name);
enum dir_status dir_domain_get(struct directory *dir, const char *name, struct dir_domain *out);
/* *list_r is malloc'd (free() it); *n_r entries, sorted by name. */
enum dir_status dir_domain_list(struct directory *dir, struct dir_domain **list_r, size_t *n_r);

/* ---- users ---- */
/* Inserts u (address normalized by the caller or not; it is normalized).
 * Sets u->version = 1, u->epoch = 1 if 0, created/updated = now.
 * DIR_INVALID if the domain or the home store is unknown; DIR_EXISTS if the
 * address is a user or an alias already. */
enum dir_status dir_user_add(struct directory *dir, struct dir_user *u);
enum dir_status dir_user_get(struct directory *dir, const char *address, struct dir_user *out);
/* Compare-and-set: writes every field of u where the stored version equals
 * u->version; on success u->version is incremented (and u->updated set).
 * DIR_CONFLICT if the version differs, DIR_NOTFOUND if the user is gone,
 * DIR_INVALID if u->home names an unknown store. */
enum dir_status dir_user_update(struct directory *dir, struct dir_user *u);
/* Compare-and-set delete. */
enum dir_status dir_user_delete(struct directory *dir, const char *address, uint64_t version);
enum dir_status dir_user_list(struct directory *dir, struct dir_user **list_r, size_t *n_r);
/* Resolves an address through at most 8 levels of aliases to a user.
 * DIR_NOTFOUND if it ends nowhere (or loops). */
enum dir_status dir_resolve(struct directory *dir, const char *address, struct dir_user *out);

/* ---- aliases ---- */
/* DIR_EXISTS if address is a user or alias; DIR_INVALID if its domain is not
 * local. The target may be any valid address. */
enum dir_status dir_alias_add(struct directory *dir, const char *address, const char *target);
enum dir_status dir_alias_get(struct directory *dir, const char *address, struct dir_alias *out);
enum dir_status dir_alias_delete(struct directory *dir, const char *address, uint64_t version);
enum dir_status dir_alias_list(struct directory *dir, struct dir_alias **list_r, size_t *n_r);

/* ---- stores ---- */
/* Inserts the store, or updates its endpoint if it differs (CAS inside). */
enum dir_status dir_store_upsert(struct directory *dir, const char *name, const char *lmtp);
enum dir_status dir_store_get(struct directory *dir, const char *name, struct dir_store *out);
enum dir_status dir_store_list(struct directory *dir, struct dir_store **list_r, size_t *n_r);

/* ---- jobs ---- */
/* Inserts j; assigns j->id, version = 1, timestamps. DIR_INVALID if the user
 * is unknown or already has a live job. */
enum dir_status dir_job_create(struct directory *dir, struct dir_job *j);
enum dir_status dir_job_get(struct directory *dir, uint64_t id, struct dir_job *out);
/* Compare-and-set of every field, like dir_user_update. */
enum dir_status dir_job_update(struct directory *dir, struct dir_job *j);
/* All jobs, newest first. */
enum dir_status dir_job_list(struct directory *dir, struct dir_job **list_r, size_t *n_r);

/* A job's data: octets kept beside its row, opaque here (an import keeps
 * its settings, per-folder checkpoints and report there: docs/import.md),
 * at most DIR_JOB_DATA_MAX. It is written only together with the row, in
 * the same transaction and under the row's compare-and-set, so a job's row
 * and its data never disagree. A job created without data has 0 octets. */
#define DIR_JOB_DATA_MAX (16u * 1024 * 1024)
/* dir_job_create, with data stored in the same transaction. DIR_INVALID
 * also for data over DIR_JOB_DATA_MAX. */
enum dir_status dir_job_create_data(struct directory *dir, struct dir_job *j, const void *data,
                                    size_t len);
/* dir_job_update (the same compare-and-set), replacing the data in the
 * same transaction. */
enum dir_status dir_job_update_data(struct directory *dir, struct dir_job *j, const void *data,
                                    size_t len);
/* Appends job id's data to out. DIR_NOTFOUND if there is no such job,
 * DIR_INVALID if out's maximum is too small. */
enum dir_status dir_job_data_get(struct directory *dir, uint64_t id, struct buf *out);

/* ---- IMAP subscriptions ----
 * Kept with the user, not in a store, so they survive moves. Names are
 * folder names as IMAP clients send them (at most DIR_FOLDER_MAX octets);
 * the folder need not exist (RFC 3501 6.3.6). */
#define DIR_FOLDER_MAX 255
/* on: subscribe (already subscribed is OK); off: unsubscribe (not
 * subscribed is DIR_NOTFOUND). DIR_INVALID for a bad name. */
enum dir_status dir_sub_set(struct directory *dir, const char *user, const char *folder, bool on);
/* Calls cb for each subscribed name of user, sorted. */
enum dir_status dir_sub_list(struct directory *dir, const char *user,
                             void (*cb)(void *ctx, const char *folder), void *ctx);

/* ---- passwords (libxcrypt) ---- */
/* Hashes pw with yescrypt into out (DIR_HASH_MAX + 1). 0, or -1 with
 * *error_r. */
int dir_password_hash(const char *pw, char out[DIR_HASH_MAX + 1], const char **error_r);
/* Constant-time verification of pw against a crypt(3) hash. */
bool dir_password_verify(const char *pw, const char *hash);

#endif
