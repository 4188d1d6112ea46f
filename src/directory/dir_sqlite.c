/*
 * dir_sqlite — the SQLite directory backend. One file shared by the CLI and
 * every role process: WAL so readers never wait for a writer, a busy timeout
 * so writers queue instead of failing, BEGIN IMMEDIATE so each write
 * transaction takes the write lock before it reads what it checks (no
 * check-then-act race between processes), synchronous=FULL so a change that
 * returned DIR_OK survives a power cut. Any SQLite failure is DIR_TEMPFAIL to
 * the caller, with the detail logged here.
 *
 * Prepared statements are cached on the handle: the store role resolves a
 * user on every LMTP RCPT. Statements are always reset right after use, so a
 * handle never keeps a stale read snapshot open between calls.
 */
#include <inttypes.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "directory/directory_private.h"
#include "util/util.h"

#define DIR_SQLITE_CTX         "directory"
#define DIR_SQLITE_BUSY_MS     5000
#define DIR_SQLITE_VERSION_LEN 32
/* Must match dir_job_phase_final(). */
#define DIR_SQLITE_FINAL_PHASES "('done','failed','aborted','retention')"

/* Schema steps, applied in order inside one transaction on open; step i
 * takes the schema from version i to i+1. Never edit a released step: add
 * one. */
static const char *const dir_sqlite_migrations[] = {
    /* 1: the core tables. */
    "CREATE TABLE domains(name TEXT PRIMARY KEY, version INTEGER NOT NULL);"
    "CREATE TABLE stores(name TEXT PRIMARY KEY, lmtp TEXT NOT NULL, version INTEGER NOT NULL);"
    "CREATE TABLE users(address TEXT PRIMARY KEY, password_hash TEXT NOT NULL,"
    " home TEXT NOT NULL REFERENCES stores(name), state INTEGER NOT NULL,"
    " epoch INTEGER NOT NULL, alternate TEXT NOT NULL, deliver_both INTEGER NOT NULL,"
    " version INTEGER NOT NULL, created INTEGER NOT NULL, updated INTEGER NOT NULL);"
    "CREATE TABLE aliases(address TEXT PRIMARY KEY, target TEXT NOT NULL,"
    " version INTEGER NOT NULL);",
    /* 2: move/import jobs, and users by home store (moves, store drains).
     * Jobs keep no foreign key to users: they are history and outlive them. */
    "CREATE TABLE jobs(id INTEGER PRIMARY KEY AUTOINCREMENT, kind INTEGER NOT NULL,"
    " user TEXT NOT NULL, source TEXT NOT NULL, dest TEXT NOT NULL, phase TEXT NOT NULL,"
    " msgs_total INTEGER NOT NULL, msgs_done INTEGER NOT NULL, bytes_total INTEGER NOT NULL,"
    " bytes_done INTEGER NOT NULL, lease_owner TEXT NOT NULL, lease_expires INTEGER NOT NULL,"
    " created INTEGER NOT NULL, updated INTEGER NOT NULL, last_error TEXT NOT NULL,"
    " version INTEGER NOT NULL);"
    "CREATE INDEX jobs_user ON jobs(user, phase);"
    "CREATE INDEX users_home ON users(home);",
    /* 3: what a move job needs to resume: its change-log checkpoint, the
     * user's epoch when it started, the end of the source's retention, and
     * option bits. Existing rows get neutral values. */
    "ALTER TABLE jobs ADD COLUMN checkpoint INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE jobs ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE jobs ADD COLUMN retain_until INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE jobs ADD COLUMN options INTEGER NOT NULL DEFAULT 0;",
    /* 4: IMAP subscriptions, per user (they survive moves). */
    ("CREATE TABLE subscriptions(user TEXT NOT NULL, folder TEXT NOT NULL,"
     " PRIMARY KEY(user, folder));"),
    /* 5: a move's bounded cutover: when the source was fenced (0 = not
     * fenced by this job now) and how many cutovers the job has begun. */
    ("ALTER TABLE jobs ADD COLUMN fenced_at INTEGER NOT NULL DEFAULT 0;"
     "ALTER TABLE jobs ADD COLUMN cutovers INTEGER NOT NULL DEFAULT 0;"),
    /* 6: a job's data beside its row (an import's settings, checkpoints and
     * report), written only in the transaction that updates the row. */
    ("CREATE TABLE job_data(id INTEGER PRIMARY KEY,"
     " data BLOB NOT NULL);"),
    /* 7: how many times a mover claimed the job: with the job id, the
     * fencing token its writes carry (docs/move.md "Leases"). */
    ("ALTER TABLE jobs ADD COLUMN claims INTEGER NOT NULL DEFAULT 0;"),
};

#define USER_COLS                                                                                  \
    "address, password_hash, home, state, epoch, alternate, deliver_both, version, created, "      \
    "updated"
#define JOB_COLS                                                                                   \
    "id, kind, user, source, dest, phase, msgs_total, msgs_done, bytes_total, bytes_done, "        \
    "lease_owner, lease_expires, created, updated, last_error, version, checkpoint, epoch, "       \
    "retain_until, options, fenced_at, cutovers, claims"

enum dir_sqlite_stmt {
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_DOMAIN_INSERT,
    ST_DOMAIN_GET,
    ST_DOMAIN_LIST,
    ST_NAME_TAKEN,
    ST_USER_INSERT,
    ST_USER_GET,
    ST_USER_LIST,
    ST_USER_UPDATE,
    ST_USER_DELETE,
    ST_ALIAS_INSERT,
    ST_ALIAS_GET,
    ST_ALIAS_LIST,
    ST_ALIAS_DELETE,
    ST_STORE_INSERT,
    ST_STORE_GET,
    ST_STORE_LIST,
    ST_STORE_UPDATE,
    ST_JOB_INSERT,
    ST_JOB_GET,
    ST_JOB_LIST,
    ST_JOB_UPDATE,
    ST_JOB_LIVE,
    ST_COUNT
};

/* Parameter numbers follow the column order of USER_COLS / JOB_COLS, so one
 * binder serves both the INSERT and the UPDATE of a row. */
static const char *const dir_sqlite_sql[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_DOMAIN_INSERT] = "INSERT INTO domains(name, version) VALUES(?1, 1)",
    [ST_DOMAIN_GET] = "SELECT name, version FROM domains WHERE name = ?1",
    [ST_DOMAIN_LIST] = "SELECT name, version FROM domains ORDER BY name",
    [ST_NAME_TAKEN] = "SELECT 1 FROM users WHERE address = ?1"
                      " UNION ALL SELECT 1 FROM aliases WHERE address = ?1",
    [ST_USER_INSERT] = "INSERT INTO users(" USER_COLS ") VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8,"
                       " ?9, ?10)",
    [ST_USER_GET] = "SELECT " USER_COLS " FROM users WHERE address = ?1",
    [ST_USER_LIST] = "SELECT " USER_COLS " FROM users ORDER BY address",
    [ST_USER_UPDATE] = "UPDATE users SET password_hash = ?2, home = ?3, state = ?4, epoch = ?5,"
                       " alternate = ?6, deliver_both = ?7, version = ?8 + 1, updated = ?10"
                       " WHERE address = ?1 AND version = ?8",
    [ST_USER_DELETE] = "DELETE FROM users WHERE address = ?1 AND version = ?2",
    [ST_ALIAS_INSERT] = "INSERT INTO aliases(address, target, version) VALUES(?1, ?2, 1)",
    [ST_ALIAS_GET] = "SELECT address, target, version FROM aliases WHERE address = ?1",
    [ST_ALIAS_LIST] = "SELECT address, target, version FROM aliases ORDER BY address",
    [ST_ALIAS_DELETE] = "DELETE FROM aliases WHERE address = ?1 AND version = ?2",
    [ST_STORE_INSERT] = "INSERT INTO stores(name, lmtp, version) VALUES(?1, ?2, 1)",
    [ST_STORE_GET] = "SELECT name, lmtp, version FROM stores WHERE name = ?1",
    [ST_STORE_LIST] = "SELECT name, lmtp, version FROM stores ORDER BY name",
    [ST_STORE_UPDATE] = "UPDATE stores SET lmtp = ?2, version = ?3 + 1"
                        " WHERE name = ?1 AND version = ?3",
    [ST_JOB_INSERT] = "INSERT INTO jobs(" JOB_COLS ") VALUES(NULL, ?2, ?3, ?4, ?5, ?6, ?7, ?8,"
                      " ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)",
    [ST_JOB_GET] = "SELECT " JOB_COLS " FROM jobs WHERE id = ?1",
    [ST_JOB_LIST] = "SELECT " JOB_COLS " FROM jobs ORDER BY id DESC",
    [ST_JOB_UPDATE] = "UPDATE jobs SET source = ?4, dest = ?5, phase = ?6, msgs_total = ?7,"
                      " msgs_done = ?8, bytes_total = ?9, bytes_done = ?10, lease_owner = ?11,"
                      " lease_expires = ?12, updated = ?14, last_error = ?15, version = ?16 + 1,"
                      " checkpoint = ?17, epoch = ?18, retain_until = ?19, options = ?20,"
                      " fenced_at = ?21, cutovers = ?22, claims = ?23"
                      " WHERE id = ?1 AND version = ?16",
    [ST_JOB_LIVE] = "SELECT 1 FROM jobs WHERE user = ?1 AND id <> ?2"
                    " AND phase NOT IN " DIR_SQLITE_FINAL_PHASES " LIMIT 1",
};

struct dir_sqlite {
    struct directory base;
    sqlite3 *db;
    sqlite3_stmt *stmts[ST_COUNT];
};

static const struct dir_ops dir_sqlite_ops;

static struct dir_sqlite *dir_sqlite_h(struct directory *dir)
{
    return (struct dir_sqlite *)dir;
}

static int64_t dir_sqlite_now(void)
{
    return time_now_ms() / 1000;
}

static void dir_sqlite_log(struct dir_sqlite *h, const char *what)
{
    log_error(DIR_SQLITE_CTX, "sqlite: %s: %s (code %d)", what, sqlite3_errmsg(h->db),
              sqlite3_extended_errcode(h->db));
}

/* ---- statement helpers ------------------------------------------------ */

static sqlite3_stmt *dir_sqlite_stmt(struct dir_sqlite *h, enum dir_sqlite_stmt id)
{
    if (h->stmts[id] == NULL &&
        sqlite3_prepare_v3(h->db, dir_sqlite_sql[id], -1, SQLITE_PREPARE_PERSISTENT, &h->stmts[id],
                           NULL) != SQLITE_OK) {
        dir_sqlite_log(h, dir_sqlite_sql[id]);
        h->stmts[id] = NULL;
    }
    return h->stmts[id];
}

/* Resets st for its next use and drops bindings (they point at callers'
 * buffers, bound SQLITE_STATIC). */
static void dir_sqlite_done(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

/* One step: 1 row, 0 done, -1 error (logged; st reset). */
static int dir_sqlite_step(struct dir_sqlite *h, sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        return 1;
    if (rc == SQLITE_DONE)
        return 0;
    dir_sqlite_log(h, sqlite3_sql(st));
    dir_sqlite_done(st);
    return -1;
}

static void dir_sqlite_bind_text(sqlite3_stmt *st, int i, const char *s)
{
    sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
}

static void dir_sqlite_bind_u64(sqlite3_stmt *st, int i, uint64_t v)
{
    /* Stored as the same 64 bits; read back with a cast. */
    sqlite3_bind_int64(st, i, (sqlite3_int64)v);
}

/* Binds key (if non-NULL) to ?1 and ikey to the next parameter, if the
 * statement has one. */
static void dir_sqlite_bind_key(sqlite3_stmt *st, const char *key, int64_t ikey)
{
    int i = 1;
    if (key != NULL)
        dir_sqlite_bind_text(st, i++, key);
    if (i <= sqlite3_bind_parameter_count(st))
        sqlite3_bind_int64(st, i, ikey);
}

/* Runs a statement that returns no rows. For writes, *changes_r (if
 * non-NULL) gets the number of rows it changed. */
static enum dir_status dir_sqlite_run(struct dir_sqlite *h, sqlite3_stmt *st, int *changes_r)
{
    int r = dir_sqlite_step(h, st);
    if (r < 0)
        return DIR_TEMPFAIL;
    if (changes_r != NULL)
        *changes_r = sqlite3_changes(h->db);
    dir_sqlite_done(st);
    return DIR_OK;
}

/* Runs a keyed query; the first row (if any) goes through read into out.
 * read NULL makes it an existence probe. DIR_OK, DIR_NOTFOUND or
 * DIR_TEMPFAIL. */
static enum dir_status dir_sqlite_fetch(struct dir_sqlite *h, enum dir_sqlite_stmt id,
                                        const char *key, int64_t ikey,
                                        void (*read)(sqlite3_stmt *, void *), void *out)
{
    sqlite3_stmt *st = dir_sqlite_stmt(h, id);
    if (st == NULL)
        return DIR_TEMPFAIL;
    dir_sqlite_bind_key(st, key, ikey);
    int r = dir_sqlite_step(h, st);
    if (r < 0)
        return DIR_TEMPFAIL;
    if (r > 0 && read != NULL)
        read(st, out);
    dir_sqlite_done(st);
    return r > 0 ? DIR_OK : DIR_NOTFOUND;
}

/* Reads every row into a malloc'd array of elements of size size; NULL on
 * failure (logged). */
static void *dir_sqlite_list(struct dir_sqlite *h, enum dir_sqlite_stmt id, size_t size,
                             void (*read)(sqlite3_stmt *, void *), size_t *n_r)
{
    sqlite3_stmt *st = dir_sqlite_stmt(h, id);
    if (st == NULL)
        return NULL;
    char *list = xmalloc(size);
    size_t n = 0, cap = 1;
    int r;
    while ((r = dir_sqlite_step(h, st)) > 0) {
        if (n == cap) {
            cap *= 2;
            list = xrealloc(list, cap * size);
        }
        memset(list + n * size, 0, size);
        read(st, list + n * size);
        n++;
    }
    if (r < 0) {
        free(list);
        return NULL;
    }
    dir_sqlite_done(st);
    *n_r = n;
    return list;
}

/* ---- transactions ------------------------------------------------------ */

static enum dir_status dir_sqlite_exec_id(struct dir_sqlite *h, enum dir_sqlite_stmt id)
{
    sqlite3_stmt *st = dir_sqlite_stmt(h, id);
    return st != NULL ? dir_sqlite_run(h, st, NULL) : DIR_TEMPFAIL;
}

static enum dir_status dir_sqlite_begin(struct dir_sqlite *h)
{
    return dir_sqlite_exec_id(h, ST_BEGIN);
}

/* Commits if st is DIR_OK, else rolls back; returns the final status. */
static enum dir_status dir_sqlite_end(struct dir_sqlite *h, enum dir_status st)
{
    if (st == DIR_OK) {
        if (dir_sqlite_exec_id(h, ST_COMMIT) == DIR_OK)
            return DIR_OK;
        st = DIR_TEMPFAIL;
    }
    /* Some errors (I/O, full disk) already rolled the transaction back. */
    if (!sqlite3_get_autocommit(h->db))
        (void)dir_sqlite_exec_id(h, ST_ROLLBACK);
    return st;
}

/* ---- row readers and binders -------------------------------------------- */

static void dir_sqlite_col_text(sqlite3_stmt *st, int col, char *dst, size_t n)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    str_copy(dst, t != NULL ? (const char *)t : "", n);
}

#define COL_TEXT(st, col, field) dir_sqlite_col_text((st), (col), (field), sizeof(field))
#define COL_U64(st, col)         ((uint64_t)sqlite3_column_int64((st), (col)))

static void dir_sqlite_read_domain(sqlite3_stmt *st, void *out)
{
    struct dir_domain *d = out;
    COL_TEXT(st, 0, d->name);
    d->version = COL_U64(st, 1);
}

static void dir_sqlite_read_user(sqlite3_stmt *st, void *out)
{
    struct dir_user *u = out;
    COL_TEXT(st, 0, u->address);
    COL_TEXT(st, 1, u->password_hash);
    COL_TEXT(st, 2, u->home);
    u->state = (enum dir_user_state)sqlite3_column_int(st, 3);
    u->epoch = COL_U64(st, 4);
    COL_TEXT(st, 5, u->alternate);
    u->deliver_both = sqlite3_column_int(st, 6) != 0;
    u->version = COL_U64(st, 7);
    u->created = sqlite3_column_int64(st, 8);
    u->updated = sqlite3_column_int64(st, 9);
}

static void dir_sqlite_bind_user(sqlite3_stmt *st, const struct dir_user *u)
{
    dir_sqlite_bind_text(st, 1, u->address);
    dir_sqlite_bind_text(st, 2, u->password_hash);
    dir_sqlite_bind_text(st, 3, u->home);
    sqlite3_bind_int(st, 4, (int)u->state);
    dir_sqlite_bind_u64(st, 5, u->epoch);
    dir_sqlite_bind_text(st, 6, u->alternate);
    sqlite3_bind_int(st, 7, u->deliver_both ? 1 : 0);
    dir_sqlite_bind_u64(st, 8, u->version);
    sqlite3_bind_int64(st, 9, u->created);
    sqlite3_bind_int64(st, 10, u->updated);
}

static void dir_sqlite_read_alias(sqlite3_stmt *st, void *out)
{
    struct dir_alias *a = out;
    COL_TEXT(st, 0, a->address);
    COL_TEXT(st, 1, a->target);
    a->version = COL_U64(st, 2);
}

static void dir_sqlite_read_store(sqlite3_stmt *st, void *out)
{
    struct dir_store *s = out;
    COL_TEXT(st, 0, s->name);
    COL_TEXT(st, 1, s->lmtp);
    s->version = COL_U64(st, 2);
}

static void dir_sqlite_read_job(sqlite3_stmt *st, void *out)
{
    struct dir_job *j = out;
    j->id = COL_U64(st, 0);
    j->kind = (enum dir_job_kind)sqlite3_column_int(st, 1);
    COL_TEXT(st, 2, j->user);
    COL_TEXT(st, 3, j->source);
    COL_TEXT(st, 4, j->dest);
    COL_TEXT(st, 5, j->phase);
    j->msgs_total = COL_U64(st, 6);
    j->msgs_done = COL_U64(st, 7);
    j->bytes_total = COL_U64(st, 8);
    j->bytes_done = COL_U64(st, 9);
    COL_TEXT(st, 10, j->lease_owner);
    j->lease_expires = sqlite3_column_int64(st, 11);
    j->created = sqlite3_column_int64(st, 12);
    j->updated = sqlite3_column_int64(st, 13);
    COL_TEXT(st, 14, j->last_error);
    j->version = COL_U64(st, 15);
    j->checkpoint = COL_U64(st, 16);
    j->epoch = COL_U64(st, 17);
    j->retain_until = sqlite3_column_int64(st, 18);
    j->options = (uint32_t)sqlite3_column_int64(st, 19);
    j->fenced_at = sqlite3_column_int64(st, 20);
    j->cutovers = (uint32_t)sqlite3_column_int64(st, 21);
    j->claims = COL_U64(st, 22);
}

static void dir_sqlite_bind_job(sqlite3_stmt *st, const struct dir_job *j)
{
    dir_sqlite_bind_u64(st, 1, j->id);
    sqlite3_bind_int(st, 2, (int)j->kind);
    dir_sqlite_bind_text(st, 3, j->user);
    dir_sqlite_bind_text(st, 4, j->source);
    dir_sqlite_bind_text(st, 5, j->dest);
    dir_sqlite_bind_text(st, 6, j->phase);
    dir_sqlite_bind_u64(st, 7, j->msgs_total);
    dir_sqlite_bind_u64(st, 8, j->msgs_done);
    dir_sqlite_bind_u64(st, 9, j->bytes_total);
    dir_sqlite_bind_u64(st, 10, j->bytes_done);
    dir_sqlite_bind_text(st, 11, j->lease_owner);
    sqlite3_bind_int64(st, 12, j->lease_expires);
    sqlite3_bind_int64(st, 13, j->created);
    sqlite3_bind_int64(st, 14, j->updated);
    dir_sqlite_bind_text(st, 15, j->last_error);
    dir_sqlite_bind_u64(st, 16, j->version);
    dir_sqlite_bind_u64(st, 17, j->checkpoint);
    dir_sqlite_bind_u64(st, 18, j->epoch);
    sqlite3_bind_int64(st, 19, j->retain_until);
    sqlite3_bind_int64(st, 20, (int64_t)j->options);
    sqlite3_bind_int64(st, 21, j->fenced_at);
    sqlite3_bind_int64(st, 22, (int64_t)j->cutovers);
    dir_sqlite_bind_u64(st, 23, j->claims);
}

/* Runs a CAS write (UPDATE/DELETE ... WHERE key AND version) already bound
 * on st. No row changed means the row is gone or moved on; the probe tells
 * which, inside the same transaction. */
static enum dir_status dir_sqlite_cas(struct dir_sqlite *h, sqlite3_stmt *st,
                                      enum dir_sqlite_stmt probe, const char *key, int64_t ikey)
{
    int changes = 0;
    enum dir_status s = dir_sqlite_run(h, st, &changes);
    if (s != DIR_OK || changes > 0)
        return s;
    s = dir_sqlite_fetch(h, probe, key, ikey, NULL, NULL);
    return s == DIR_OK ? DIR_CONFLICT : s;
}

/* ---- domains ---- */

static enum dir_status dir_sqlite_domain_add(struct directory *dir, const char *name)
{
    struct dir_sqlite *h = dir_sqlite_h(dir);
    enum dir_status s = dir_sqlite_begin(h);
    if (s != DIR_OK)
        return s;
    s = dir_sqlite_fetch(h, ST_DOMAIN_GET, name, 0, NULL, NULL);
    if (s == DIR_OK) {
        s = DIR_EXISTS;
    } else if (s == DIR_NOTFOUND) {
        sqlite3_stmt *st = dir_sqlite_stmt(h, ST_DOMAIN_INSERT);
        s = DIR_TEMPFAIL;
        if (st != NULL) {
            dir_sqlite_bind_text(st, 1, name);
            s = dir_sqlite_run(h, st, NULL);
        }
    }
    return dir_sqlite_end(h, s);
}

static enum dir_status dir_sqlite_domain_get(struct directory *dir, const char *name,
                                             struct dir_domain *out)
{
    return dir_sqlite_fetch(dir_sqlite_h(dir), ST_DOMAIN_GET, name, 0, dir_sqlite_read_domain, out);
}

static enum dir_status dir_sqlite_domain_list(struct directory *dir, struct dir_domain **list_r,
                                              size_t *n_r)
{
    *list_r = dir_sqlite_list(dir_sqlite_h(dir), ST_DOMAIN_LIST, sizeof(**list_r),
                              dir_sqlite_read_domain, n_r);
    return *list_r != NULL ? DIR_OK : DIR_TEMPFAIL;
}

/* ---- users ---- */

static enum dir_status dir_sqlite_user_add(struct directory *dir, struct dir_user *u)
{
    struct dir_sqlite *h = dir_sqlite_h(dir);
    struct dir_user row = *u;
    row.version = 1;
    if (row.epoch == 0)
        row.epoch = 1;
    row.created = row.updated = dir_sqlite_now();

    enum dir_status s = dir_sqlite_begin(h);
    if (s != DIR_OK)
        return s;
    /* Check order (shared with dir_mem): domain, clash, store. */
    s = dir_sqlite_fetch(h, ST_DOMAIN_GET, mail_addr_domain(row.address), 0, NULL, NULL);
    if (s == DIR_NOTFOUND)
        s = DIR_INVALID;
    if (s == DIR_OK) {
        s = dir_sqlite_fetch(h, ST_NAME_TAKEN, row.address, 0, NULL, NULL);
        s = s == DIR_OK ? DIR_EXISTS : s == DIR_NOTFOUND ? DIR_OK : s;
    }
    if (s == DIR_OK) {
        s = dir_sqlite_fetch(h, ST_STORE_GET, row.home, 0, NULL, NULL);
        if (s == DIR_NOTFOUND)
            s = DIR_INVALID;
    }
    if (s == DIR_OK) {
        sqlite3_stmt *st = dir_sqlite_stmt(h, ST_USER_INSERT);
        s = DIR_TEMPFAIL;
        if (st != NULL) {
            dir_sqlite_bind_user(st, &row);
            s = dir_sqlite_run(h, st, NULL);
        }
    }
    s = dir_sqlite_end(h, s);
    if (s == DIR_OK)
        *u = row;
    return s;
}

static enum dir_status dir_sqlite_user_get(struct directory *dir, const char *address,
                                           struct dir_user *out)
{
    return dir_sqlite_fetch(dir_sqlite_h(dir), ST_USER_GET, address, 0, dir_sqlite_read_user, out);
}

static enum dir_status dir_sqlite_user_update(struct directory *dir, struct dir_user *u)
{
    struct dir_sqlite *h = dir_sqlite_h(dir);
    struct dir_user row = *u;
    row.updated = dir_sqlite_now();

    enum dir_status s = dir_sqlite_begin(h);
    if (s != DIR_OK)
        return s;
    /* Check order (shared with dir_mem): store, existence, version. */
    s = dir_sqlite_fetch(h, ST_STORE_GET, row.home, 0, NULL, NULL);
    if (s == DIR_NOTFOUND)
        s = DIR_INVALID;
    if (s == DIR_OK) {
        sqlite3_stmt *st = dir_sqlite_stmt(h, ST_USER_UPDATE);
        s = DIR_TEMPFAIL;
        if (st != NULL) {
            dir_sqlite_bind_user(st, &row);
            s = dir_sqlite_cas(h, st, ST_USER_GET, row.address, 0);
        }
    }
    s = dir_sqlite_end(h, s);
    if (s == DIR_OK) {
        u->version++;
        u->updated = row.updated;
    }
    return s;
}

static enum dir_status dir_sqlite_delete(struct directory *dir, enum dir_sqlite_stmt del,
                                         enum dir_sqlite_stmt probe, const char *key,
                                         uint64_t version)
{
    struct dir_sqlite *h = dir_sqlite_h(dir);
    enum dir_status s = dir_sqlite_begin(h);
    if (s != DIR_OK)
        return s;
    sqlite3_stmt *st = dir_sqlite_stmt(h, del);
    s = DIR_TEMPFAIL;
    if (st != NULL) {
        dir_sqlite_bind_text(st, 1, key);
        dir_sqlite_bind_u64(st, 2, version);
        s = dir_sqlite_cas(h, st, probe, key, 0);
    }
    return dir_sqlite_end(h, s);
}

static enum dir_status dir_sqlite_user_delete(struct directory *dir, const char *address,
                                              uint64_t version)
{
    return dir_sqlite_delete(dir, ST_USER_DELETE, ST_USER_GET, address, version);
}

static enum dir_status dir_sqlite_user_list(struct directory *dir, struct dir_user **list_r,
                                            size_t *n_r)
{
    *list_r = dir_sqlite_list(dir_sqlite_h(dir), ST_USER_LIST, sizeof(**list_r),
                              dir_sqlite_read_user, n_r);
    return *list_r != NULL ? DIR_OK : DIR_TEMPFAIL;
}

/* ---- aliases ---- */

static enum dir_status dir_sqlite_alias_add(struct directory *dir, const char *address,
                                            const char *target)
{
    struct dir_sqlite *h = dir_sqlite_h(dir);
    enum dir_status s = dir_sqlite_begin(h);
    if (s != DIR_OK)
        return s;
    s = dir_sqlite_fetch(h, ST_DOMAIN_GET, mail_addr_domain(address), 0, NULL, NULL);
    if (s == DIR_NOTFOUND)
        s = DIR_INVALID;
    if (s == DIR_OK) {
        s = dir_sqlite_fetch(h, ST_NAME_TAKEN, address, 0, NULL, NULL);
        s = s == DIR_OK ? DIR_EXISTS : s == DIR_NOTFOUND ? DIR_OK : s;
    }
    if (s == DIR_OK) {
        sqlite3_stmt *st = dir_sqlite_stmt(h, ST_ALIAS_INSERT);
        s = DIR_TEMPFAIL;
        if (st != NULL) {
            dir_sqlite_bind_text(st, 1, address);
            dir_sqlite_bind_text(st, 2, target);
            s = dir_sqlite_run(h, st, NULL);
        }
    }
    return dir_sqlite_end(h, s);
}

static enum dir_status dir_sqlite_alias_get(struct directory *dir, const char *address,
                                            struct dir_alias *out)
{
    return dir_sqlite_fetch(dir_sqlite_h(dir), ST_ALIAS_GET, address, 0, dir_sqlite_read_alias,
                            out);
}

static enum dir_status dir_sqlite_alias_delete(struct directory *dir, const char *address,
                                               uint64_t version)
{
    return dir_sqlite_delete(dir, ST_ALIAS_DELETE, ST_ALIAS_GET, address, version);
}

static enum dir_status dir_sqlite_alias_list(struct directory *dir, struct dir_alias **list_r,
                                             size_t *n_r)
{
    *list_r = dir_sqlite_list(dir_sqlite_h(dir), ST_ALIAS_LIST, sizeof(**list_r),
                              dir_sqlite_read_alias, n_r);
    return *list_r != NULL ? DIR_OK : DIR_TEMPFAIL;
}

/* ---- stores ---- */

static enum dir_status dir_sqlite_store_upsert(struct directory *dir, const char *name,
                                               const char *lmtp)
{
    struct dir_sqlite *h = dir_sqlite_h(dir);
    struct dir_store cur;
    enum dir_status s = dir_sqlite_begin(h);
    if (s != DIR_OK)
        return s;
    s = dir_sqlite_fetch(h, ST_STORE_GET, name, 0, dir_sqlite_read_store, &cur);
    if (s == DIR_OK && strcmp(cur.lmtp, lmtp) == 0)
        return dir_sqlite_end(h, DIR_OK); /* unchanged: no new version */
    if (s == DIR_OK || s == DIR_NOTFOUND) {
        bool insert = s == DIR_NOTFOUND;
        sqlite3_stmt *st = dir_sqlite_stmt(h, insert ? ST_STORE_INSERT : ST_STORE_UPDATE);
        s = DIR_TEMPFAIL;
        if (st != NULL) {
            dir_sqlite_bind_text(st, 1, name);
            dir_sqlite_bind_text(st, 2, lmtp);
            if (insert) {
                s = dir_sqlite_run(h, st, NULL);
            } else {
                dir_sqlite_bind_u64(st, 3, cur.version);
                s = dir_sqlite_cas(h, st, ST_STORE_GET, name, 0);
            }
        }
    }
    return dir_sqlite_end(h, s);
}

static enum dir_status dir_sqlite_store_get(struct directory *dir, const char *name,
                                            struct dir_store *out)
{
    return dir_sqlite_fetch(dir_sqlite_h(dir), ST_STORE_GET, name, 0, dir_sqlite_read_store, out);
}

static enum dir_status dir_sqlite_store_list(struct directory *dir, struct dir_store **list_r,
                                             size_t *n_r)
{
    *list_r = dir_sqlite_list(dir_sqlite_h(dir), ST_STORE_LIST, sizeof(**list_r),
                              dir_sqlite_read_store, n_r);
    return *list_r != NULL ? DIR_OK : DIR_TEMPFAIL;
}

/* ---- jobs ---- */

/* Replaces job id's data inside the caller's transaction (data NULL: no
 * change). Prepared per call: only imports write it. */
static enum dir_status dir_sqlite_job_data_put(struct dir_sqlite *h, uint64_t id, const void *data,
                                               size_t len)
{
    if (data == NULL)
        return DIR_OK;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(h->db, "INSERT OR REPLACE INTO job_data(id, data) VALUES(?1, ?2)", -1,
                           &st, NULL) != SQLITE_OK) {
        dir_sqlite_log(h, "preparing the job data insert");
        return DIR_TEMPFAIL;
    }
    dir_sqlite_bind_u64(st, 1, id);
    sqlite3_bind_blob64(st, 2, len > 0 ? data : "", (sqlite3_uint64)len, SQLITE_STATIC);
    int r = dir_sqlite_step(h, st);
    sqlite3_finalize(st);
    return r < 0 ? DIR_TEMPFAIL : DIR_OK;
}

static enum dir_status dir_sqlite_job_create_data(struct directory *dir, struct dir_job *j,
                                                  const void *data, size_t len)
{
    struct dir_sqlite *h = dir_sqlite_h(dir);
    struct dir_job row = *j;
    row.id = 0;
    row.version = 1;
    row.created = row.updated = dir_sqlite_now();

    enum dir_status s = dir_sqlite_begin(h);
    if (s != DIR_OK)
        return s;
    s = dir_sqlite_fetch(h, ST_USER_GET, row.user, 0, NULL, NULL);
    if (s == DIR_NOTFOUND)
        s = DIR_INVALID;
    if (s == DIR_OK) {
        s = dir_sqlite_fetch(h, ST_JOB_LIVE, row.user, 0, NULL, NULL);
        s = s == DIR_OK ? DIR_INVALID : s == DIR_NOTFOUND ? DIR_OK : s;
    }
    if (s == DIR_OK) {
        sqlite3_stmt *st = dir_sqlite_stmt(h, ST_JOB_INSERT);
        s = DIR_TEMPFAIL;
        if (st != NULL) {
            dir_sqlite_bind_job(st, &row);
            s = dir_sqlite_run(h, st, NULL);
            row.id = (uint64_t)sqlite3_last_insert_rowid(h->db);
        }
    }
    if (s == DIR_OK)
        s = dir_sqlite_job_data_put(h, row.id, data, len);
    s = dir_sqlite_end(h, s);
    if (s == DIR_OK)
        *j = row;
    return s;
}

static enum dir_status dir_sqlite_job_get(struct directory *dir, uint64_t id, struct dir_job *out)
{
    return dir_sqlite_fetch(dir_sqlite_h(dir), ST_JOB_GET, NULL, (int64_t)id, dir_sqlite_read_job,
                            out);
}

static enum dir_status dir_sqlite_job_create(struct directory *dir, struct dir_job *j)
{
    return dir_sqlite_job_create_data(dir, j, NULL, 0);
}

static enum dir_status dir_sqlite_job_update_data(struct directory *dir, struct dir_job *j,
                                                  const void *data, size_t len)
{
    struct dir_sqlite *h = dir_sqlite_h(dir);
    struct dir_job row = *j, cur;
    row.updated = dir_sqlite_now();

    enum dir_status s = dir_sqlite_begin(h);
    if (s != DIR_OK)
        return s;
    /* Check order (shared with dir_mem): reviving a job while its user has
     * another live one, existence, version. user, kind and created are
     * fixed at creation. */
    s = dir_sqlite_fetch(h, ST_JOB_GET, NULL, (int64_t)row.id, dir_sqlite_read_job, &cur);
    if (s == DIR_OK && !dir_job_phase_final(row.phase)) {
        s = dir_sqlite_fetch(h, ST_JOB_LIVE, cur.user, (int64_t)cur.id, NULL, NULL);
        s = s == DIR_OK ? DIR_INVALID : s == DIR_NOTFOUND ? DIR_OK : s;
    }
    if (s == DIR_OK) {
        str_copy(row.user, cur.user, sizeof(row.user));
        row.kind = cur.kind;
        row.created = cur.created;
        sqlite3_stmt *st = dir_sqlite_stmt(h, ST_JOB_UPDATE);
        s = DIR_TEMPFAIL;
        if (st != NULL) {
            dir_sqlite_bind_job(st, &row);
            s = dir_sqlite_cas(h, st, ST_JOB_GET, NULL, (int64_t)row.id);
        }
    }
    if (s == DIR_OK)
        s = dir_sqlite_job_data_put(h, row.id, data, len);
    s = dir_sqlite_end(h, s);
    if (s == DIR_OK) {
        row.version++;
        *j = row;
    }
    return s;
}

static enum dir_status dir_sqlite_job_update(struct directory *dir, struct dir_job *j)
{
    return dir_sqlite_job_update_data(dir, j, NULL, 0);
}

static enum dir_status dir_sqlite_job_data_get(struct directory *dir, uint64_t id, struct buf *out)
{
    struct dir_sqlite *h = dir_sqlite_h(dir);
    enum dir_status s = dir_sqlite_fetch(h, ST_JOB_GET, NULL, (int64_t)id, NULL, NULL);
    if (s != DIR_OK)
        return s;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(h->db, "SELECT data FROM job_data WHERE id = ?1", -1, &st, NULL) !=
        SQLITE_OK) {
        dir_sqlite_log(h, "preparing the job data query");
        return DIR_TEMPFAIL;
    }
    dir_sqlite_bind_u64(st, 1, id);
    int r = dir_sqlite_step(h, st);
    if (r > 0) {
        const void *p = sqlite3_column_blob(st, 0);
        size_t n = (size_t)sqlite3_column_bytes(st, 0);
        if (n > 0 && buf_append(out, p, n) < 0)
            s = DIR_INVALID; /* over the caller's limit */
    }
    sqlite3_finalize(st);
    return r < 0 ? DIR_TEMPFAIL : s;
}

static enum dir_status dir_sqlite_job_list(struct directory *dir, struct dir_job **list_r,
                                           size_t *n_r)
{
    *list_r =
        dir_sqlite_list(dir_sqlite_h(dir), ST_JOB_LIST, sizeof(**list_r), dir_sqlite_read_job, n_r);
    return *list_r != NULL ? DIR_OK : DIR_TEMPFAIL;
}

/* ---- subscriptions (rare: prepared per call) ---- */

static enum dir_status dir_sqlite_sub_set(struct directory *dir, const char *user,
                                          const char *folder, bool on)
{
    struct dir_sqlite *h = dir_sqlite_h(dir);
    sqlite3_stmt *st;
    const char *sql = on ? "INSERT OR IGNORE INTO subscriptions(user, folder) VALUES(?1, ?2)"
                         : "DELETE FROM subscriptions WHERE user = ?1 AND folder = ?2";
    if (sqlite3_prepare_v2(h->db, sql, -1, &st, NULL) != SQLITE_OK) {
        dir_sqlite_log(h, sql);
        return DIR_TEMPFAIL;
    }
    sqlite3_bind_text(st, 1, user, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, folder, -1, SQLITE_STATIC);
    int r = dir_sqlite_step(h, st);
    int changes = sqlite3_changes(h->db);
    sqlite3_finalize(st);
    if (r < 0)
        return DIR_TEMPFAIL;
    return !on && changes == 0 ? DIR_NOTFOUND : DIR_OK;
}

static enum dir_status dir_sqlite_sub_list(struct directory *dir, const char *user,
                                           void (*cb)(void *ctx, const char *folder), void *ctx)
{
    struct dir_sqlite *h = dir_sqlite_h(dir);
    sqlite3_stmt *st;
    const char *sql = "SELECT folder FROM subscriptions WHERE user = ?1 ORDER BY folder";
    if (sqlite3_prepare_v2(h->db, sql, -1, &st, NULL) != SQLITE_OK) {
        dir_sqlite_log(h, sql);
        return DIR_TEMPFAIL;
    }
    sqlite3_bind_text(st, 1, user, -1, SQLITE_STATIC);
    int r;
    while ((r = dir_sqlite_step(h, st)) > 0) {
        const unsigned char *f = sqlite3_column_text(st, 0);
        if (f != NULL)
            cb(ctx, (const char *)f);
    }
    sqlite3_finalize(st);
    return r < 0 ? DIR_TEMPFAIL : DIR_OK;
}

/* ---- open, migrate, close ---- */

static void dir_sqlite_close(struct directory *dir)
{
    struct dir_sqlite *h = dir_sqlite_h(dir);
    for (size_t i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(h->stmts[i]);
    if (h->db != NULL && sqlite3_close(h->db) != SQLITE_OK)
        dir_sqlite_log(h, "close");
    free(h);
}

static int dir_sqlite_exec(struct dir_sqlite *h, const char *sql)
{
    if (sqlite3_exec(h->db, sql, NULL, NULL, NULL) == SQLITE_OK)
        return 0;
    dir_sqlite_log(h, sql);
    return -1;
}

static int dir_sqlite_pragmas(struct dir_sqlite *h)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(h->db, "PRAGMA journal_mode=WAL", -1, &st, NULL) != SQLITE_OK) {
        dir_sqlite_log(h, "PRAGMA journal_mode=WAL");
        return -1;
    }
    int r = dir_sqlite_step(h, st);
    if (r > 0) {
        const unsigned char *mode = sqlite3_column_text(st, 0);
        /* Still correct without WAL, only slower under concurrency. */
        if (mode == NULL || strcmp((const char *)mode, "wal") != 0)
            log_warn(DIR_SQLITE_CTX, "sqlite: journal mode is %s, not wal",
                     mode != NULL ? (const char *)mode : "unknown");
    }
    sqlite3_finalize(st);
    if (r < 0)
        return -1;
    return dir_sqlite_exec(h, "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON");
}

static int dir_sqlite_read_version(void *arg, int ncol, char **vals, char **names)
{
    (void)names;
    if (ncol > 0 && vals[0] != NULL)
        str_copy(arg, vals[0], DIR_SQLITE_VERSION_LEN);
    return 0;
}

int dir_schema_version(void)
{
    return (int)ARRAY_SIZE(dir_sqlite_migrations);
}

/* Brings the schema to dir_schema_version() in one transaction. */
static int dir_sqlite_migrate(struct dir_sqlite *h, const char **error_r)
{
    const int want = dir_schema_version();
    char found[DIR_SQLITE_VERSION_LEN] = "0";
    uint64_t cur;

    if (dir_sqlite_exec(h, "BEGIN IMMEDIATE") < 0) {
        *error_r = "directory database is unavailable";
        return -1;
    }
    if (dir_sqlite_exec(h, "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY,"
                           " value TEXT NOT NULL)") < 0 ||
        sqlite3_exec(h->db, "SELECT value FROM meta WHERE key = 'schema_version'",
                     dir_sqlite_read_version, found, NULL) != SQLITE_OK) {
        dir_sqlite_log(h, "reading schema_version");
        *error_r = "cannot read the directory schema version";
        goto fail;
    }
    if (parse_u64(found, INT32_MAX, &cur) < 0) {
        log_error(DIR_SQLITE_CTX, "schema_version is not a number: '%s'", found);
        *error_r = "directory schema version is unreadable";
        goto fail;
    }
    if (cur > (uint64_t)want) {
        log_error(DIR_SQLITE_CTX, "schema version %" PRIu64 " is newer than this tern's %d", cur,
                  want);
        *error_r = "directory database is from a newer tern; refusing to open it";
        goto fail;
    }
    for (int i = (int)cur; i < want; i++) {
        if (dir_sqlite_exec(h, dir_sqlite_migrations[i]) < 0) {
            *error_r = "directory schema migration failed";
            goto fail;
        }
    }
    if (cur < (uint64_t)want) {
        char sql[128];
        snprintf(sql, sizeof(sql),
                 "INSERT OR REPLACE INTO meta(key, value) VALUES('schema_version', '%d')", want);
        if (dir_sqlite_exec(h, sql) < 0) {
            *error_r = "directory schema migration failed";
            goto fail;
        }
    }
    if (dir_sqlite_exec(h, "COMMIT") < 0) {
        *error_r = "directory schema migration failed";
        goto fail;
    }
    if (cur < (uint64_t)want)
        log_info(DIR_SQLITE_CTX, "migrated schema from version %" PRIu64 " to %d", cur, want);
    return 0;
fail:
    if (!sqlite3_get_autocommit(h->db))
        (void)dir_sqlite_exec(h, "ROLLBACK");
    return -1;
}

struct directory *dir_open_sqlite(const char *path, const char **error_r)
{
    struct dir_sqlite *h = xmalloc(sizeof(*h));
    h->base.ops = &dir_sqlite_ops;
    int rc = sqlite3_open_v2(
        path, &h->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        log_error(DIR_SQLITE_CTX, "sqlite: open %s: %s", path,
                  h->db != NULL ? sqlite3_errmsg(h->db) : sqlite3_errstr(rc));
        *error_r = "cannot open the directory database";
        goto fail;
    }
    sqlite3_extended_result_codes(h->db, 1);
    sqlite3_busy_timeout(h->db, DIR_SQLITE_BUSY_MS);
    if (dir_sqlite_pragmas(h) < 0) {
        *error_r = "cannot configure the directory database";
        goto fail;
    }
    if (dir_sqlite_migrate(h, error_r) < 0)
        goto fail;
    return &h->base;
fail:
    dir_sqlite_close(&h->base);
    return NULL;
}

void dir_sqlite_set_busy_timeout(struct directory *dir, int ms)
{
    ASSERT(dir != NULL);
    if (dir->ops == &dir_sqlite_ops)
        sqlite3_busy_timeout(dir_sqlite_h(dir)->db, ms);
}

static const struct dir_ops dir_sqlite_ops = {
    .close = dir_sqlite_close,
    .domain_add = dir_sqlite_domain_add,
    .domain_get = dir_sqlite_domain_get,
    .domain_list = dir_sqlite_domain_list,
    .user_add = dir_sqlite_user_add,
    .user_get = dir_sqlite_user_get,
    .user_update = dir_sqlite_user_update,
    .user_delete = dir_sqlite_user_delete,
    .user_list = dir_sqlite_user_list,
    .alias_add = dir_sqlite_alias_add,
    .alias_get = dir_sqlite_alias_get,
    .alias_delete = dir_sqlite_alias_delete,
    .alias_list = dir_sqlite_alias_list,
    .store_upsert = dir_sqlite_store_upsert,
    .store_get = dir_sqlite_store_get,
    .store_list = dir_sqlite_store_list,
    .job_create = dir_sqlite_job_create,
    .job_get = dir_sqlite_job_get,
    .job_update = dir_sqlite_job_update,
    .job_list = dir_sqlite_job_list,
    .job_create_data = dir_sqlite_job_create_data,
    .job_update_data = dir_sqlite_job_update_data,
    .job_data_get = dir_sqlite_job_data_get,
    .sub_set = dir_sqlite_sub_set,
    .sub_list = dir_sqlite_sub_list,
};
