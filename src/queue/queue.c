/*
 * queue.c — the mta's queue in SQLite (see queue.h for the contract).
 *
 * DIR/queue.db in WAL mode, busy timeout 5 s, BEGIN IMMEDIATE for every
 * write transaction (the write lock is taken before anything is read, so a
 * concurrent CLI flush/bounce cannot interleave with a check-then-act).
 *
 * Durability is chosen per transaction (PRAGMA synchronous may not change
 * inside one, so it is set just before BEGIN and remembered on the handle):
 *  - FULL for queue_insert (the durability point of the SMTP 250), the
 *    schema migration and queue_quarantine (an operator-visible move we do
 *    not want to see undone);
 *  - NORMAL for queue_update and queue_flush (queue.h invariant 3). In WAL
 *    mode NORMAL still commits atomically and in order; a power failure can
 *    only lose a suffix of the most recent NORMAL commits, never tear one,
 *    and the next FULL commit (any insert) syncs every earlier one with it.
 *    A lost status update repeats a delivery (deduplicated by the store's
 *    delivery ids) or a failure together with its DSN.
 *
 * Any SQLite failure is logged here and reported as QUEUE_ERROR / -1 with a
 * client-safe text. Statements are prepared once, cached on the handle, and
 * reset right after use so no read snapshot stays open between calls.
 */
#include "queue/queue.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define QUEUE_CTX         "queue"
#define QUEUE_BUSY_MS     5000
#define QUEUE_VERSION_LEN 32
/* queue_next_due() on a database error: try again this much later. */
#define QUEUE_RETRY_MS 1000

/* Schema steps, applied in order inside one transaction on open; step i
 * takes the schema from version i to i+1. Never edit a released step: add
 * one. */
static const char *const queue_migrations[] = {
    /* 1: messages, their recipients, the quarantine. rcpts_due holds only
     * pending recipients, so the scheduler's scans stay as small as the
     * work left, however much history passes through. */
    "CREATE TABLE messages(id TEXT PRIMARY KEY, sender TEXT NOT NULL,"
    " arrival INTEGER NOT NULL, expires INTEGER NOT NULL, is_dsn INTEGER NOT NULL,"
    " size INTEGER NOT NULL, body BLOB NOT NULL, sha256 BLOB NOT NULL,"
    " n_rcpts INTEGER NOT NULL);"
    "CREATE TABLE rcpts(msg_id TEXT NOT NULL, idx INTEGER NOT NULL, addr TEXT NOT NULL,"
    " orig TEXT NOT NULL, kind INTEGER NOT NULL, state INTEGER NOT NULL,"
    " parked INTEGER NOT NULL, attempts INTEGER NOT NULL, next_try INTEGER NOT NULL,"
    " last_reply TEXT NOT NULL, PRIMARY KEY(msg_id, idx)) WITHOUT ROWID;"
    "CREATE INDEX rcpts_due ON rcpts(next_try) WHERE state = 0;"
    "CREATE TABLE quarantine(id TEXT PRIMARY KEY, reason TEXT NOT NULL, at INTEGER NOT NULL,"
    " sender TEXT NOT NULL, arrival INTEGER NOT NULL, size INTEGER NOT NULL, body BLOB,"
    " rcpts TEXT NOT NULL);",
};

#define RCPT_COLS "idx, addr, orig, kind, state, parked, attempts, next_try, last_reply"

enum queue_stmt {
    ST_BEGIN,
    ST_BEGIN_READ,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_SYNC_FULL,
    ST_SYNC_NORMAL,
    ST_ID_TAKEN,
    ST_MSG_INSERT,
    ST_RCPT_INSERT,
    ST_MSG_GET,
    ST_MSG_EXISTS,
    ST_RCPTS_GET,
    ST_RCPTS_COUNT,
    ST_DUE,
    ST_NEXT_DUE,
    ST_RCPT_UPDATE,
    ST_PENDING_COUNT,
    ST_MSG_DELETE,
    ST_RCPTS_DELETE,
    ST_QUAR_FROM_MSG,
    ST_QUAR_ORPHAN,
    ST_MSG_LIST,
    ST_QUAR_LIST,
    ST_FLUSH_ALL,
    ST_FLUSH_ONE,
    ST_COUNT_MSGS,
    ST_COUNT
};

static const char *const queue_sql[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_BEGIN_READ] = "BEGIN",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_SYNC_FULL] = "PRAGMA synchronous=FULL",
    [ST_SYNC_NORMAL] = "PRAGMA synchronous=NORMAL",
    [ST_ID_TAKEN] = "SELECT 1 FROM messages WHERE id = ?1"
                    " UNION ALL SELECT 1 FROM quarantine WHERE id = ?1",
    [ST_MSG_INSERT] = "INSERT INTO messages(id, sender, arrival, expires, is_dsn, size, body,"
                      " sha256, n_rcpts) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    [ST_RCPT_INSERT] = "INSERT INTO rcpts(msg_id, " RCPT_COLS ")"
                       " VALUES(?1, ?2, ?3, ?4, ?5, 0, 0, 0, ?6, '')",
    [ST_MSG_GET] = "SELECT sender, arrival, expires, is_dsn, size, body, sha256, n_rcpts"
                   " FROM messages WHERE id = ?1",
    [ST_MSG_EXISTS] = "SELECT 1 FROM messages WHERE id = ?1",
    [ST_RCPTS_GET] = "SELECT " RCPT_COLS " FROM rcpts WHERE msg_id = ?1 ORDER BY idx",
    [ST_RCPTS_COUNT] = "SELECT COUNT(*) FROM rcpts WHERE msg_id = ?1",
    /* Both read rcpts_due (the WHERE repeats its "state = 0"). ST_DUE names
     * it: left alone, the planner prefers a full scan in msg_id order to
     * save the GROUP BY sort. */
    [ST_DUE] = "SELECT msg_id, MIN(next_try) AS t FROM rcpts INDEXED BY rcpts_due"
               " WHERE state = 0 AND next_try <= ?1 GROUP BY msg_id ORDER BY t, msg_id LIMIT ?2",
    [ST_NEXT_DUE] = "SELECT MIN(next_try) FROM rcpts WHERE state = 0",
    [ST_RCPT_UPDATE] = "UPDATE rcpts SET state = ?3, parked = ?4, attempts = ?5, next_try = ?6,"
                       " last_reply = ?7 WHERE msg_id = ?1 AND idx = ?2 AND state = 0",
    [ST_PENDING_COUNT] = "SELECT COUNT(*) FROM rcpts WHERE msg_id = ?1 AND state = 0",
    [ST_MSG_DELETE] = "DELETE FROM messages WHERE id = ?1",
    [ST_RCPTS_DELETE] = "DELETE FROM rcpts WHERE msg_id = ?1",
    [ST_QUAR_FROM_MSG] = "INSERT INTO quarantine(id, reason, at, sender, arrival, size, body,"
                         " rcpts) SELECT id, ?2, ?3, sender, arrival, size, body, ?4"
                         " FROM messages WHERE id = ?1",
    [ST_QUAR_ORPHAN] = "INSERT INTO quarantine(id, reason, at, sender, arrival, size, body,"
                       " rcpts) VALUES(?1, ?2, ?3, '', 0, 0, NULL, ?4)",
    [ST_MSG_LIST] = "SELECT id, sender, arrival, expires, is_dsn, size, n_rcpts FROM messages"
                    " ORDER BY arrival, rowid",
    [ST_QUAR_LIST] = "SELECT id, reason, sender, arrival, size FROM quarantine"
                     " ORDER BY at, rowid",
    [ST_FLUSH_ALL] = "UPDATE rcpts SET next_try = 0, parked = 0 WHERE state = 0",
    [ST_FLUSH_ONE] = "UPDATE rcpts SET next_try = 0, parked = 0 WHERE state = 0 AND msg_id = ?1",
    [ST_COUNT_MSGS] = "SELECT COUNT(*) FROM messages",
};

enum queue_sync { QUEUE_SYNC_UNSET = 0, QUEUE_SYNC_NORMAL, QUEUE_SYNC_FULL };

struct queue {
    sqlite3 *db;
    sqlite3_stmt *stmts[ST_COUNT];
    enum queue_sync sync; /* the connection's current synchronous level */
};

const char *queue_rcpt_state_str(enum queue_rcpt_state s)
{
    switch (s) {
    case QUEUE_PENDING:
        return "pending";
    case QUEUE_DELIVERED:
        return "delivered";
    case QUEUE_FAILED:
        return "failed";
    }
    return "unknown";
}

void queue_msg_clear(struct queue_msg *m)
{
    buf_free(&m->body);
    xfree(&m->rcpts);
    m->n_rcpts = 0;
}

static void queue_log(struct queue *q, const char *what)
{
    log_error(QUEUE_CTX, "sqlite: %s: %s (code %d)", what, sqlite3_errmsg(q->db),
              sqlite3_extended_errcode(q->db));
}

/* ---- statement helpers ------------------------------------------------ */

static sqlite3_stmt *queue_stmt(struct queue *q, enum queue_stmt id)
{
    if (q->stmts[id] == NULL &&
        sqlite3_prepare_v3(q->db, queue_sql[id], -1, SQLITE_PREPARE_PERSISTENT, &q->stmts[id],
                           NULL) != SQLITE_OK) {
        queue_log(q, queue_sql[id]);
        q->stmts[id] = NULL;
    }
    return q->stmts[id];
}

/* Resets st for its next use and drops bindings (they point at callers'
 * buffers, bound SQLITE_STATIC). */
static void queue_done(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

/* One step: 1 row, 0 done, -1 error (logged; st reset). */
static int queue_step(struct queue *q, sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        return 1;
    if (rc == SQLITE_DONE)
        return 0;
    queue_log(q, sqlite3_sql(st));
    queue_done(st);
    return -1;
}

static void queue_bind_text(sqlite3_stmt *st, int i, const char *s)
{
    sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
}

/* Runs a statement that returns no rows; *changes_r (if non-NULL) gets the
 * number of rows it changed. 0 or -1 (logged). */
static int queue_run(struct queue *q, sqlite3_stmt *st, int *changes_r)
{
    if (queue_step(q, st) < 0)
        return -1;
    if (changes_r != NULL)
        *changes_r = sqlite3_changes(q->db);
    queue_done(st);
    return 0;
}

static int queue_exec_id(struct queue *q, enum queue_stmt id)
{
    sqlite3_stmt *st = queue_stmt(q, id);
    return st != NULL ? queue_run(q, st, NULL) : -1;
}

/* A single-row, single-integer query keyed by id (or unkeyed). 0 or -1. */
static int queue_scalar(struct queue *q, enum queue_stmt id, const char *key, int64_t *out_r)
{
    sqlite3_stmt *st = queue_stmt(q, id);
    if (st == NULL)
        return -1;
    if (key != NULL)
        queue_bind_text(st, 1, key);
    int r = queue_step(q, st);
    if (r < 0)
        return -1;
    *out_r = r > 0 ? sqlite3_column_int64(st, 0) : 0;
    queue_done(st);
    return 0;
}

/* Runs a write keyed by id into ?1; *changes_r as queue_run. 0 or -1. */
static int queue_exec_keyed_n(struct queue *q, enum queue_stmt id, const char *key, int *changes_r)
{
    sqlite3_stmt *st = queue_stmt(q, id);
    if (st == NULL)
        return -1;
    if (key != NULL)
        queue_bind_text(st, 1, key);
    return queue_run(q, st, changes_r);
}

static int queue_exec_keyed(struct queue *q, enum queue_stmt id, const char *key)
{
    return queue_exec_keyed_n(q, id, key, NULL);
}

/* ---- transactions ------------------------------------------------------ */

/* Writers of one process (the mta's accept thread and its delivery workers,
 * each with its own handle) take turns here instead of in SQLite: SQLite's
 * busy handler waits by sleeping (1, 2, 5, 10 ms ...), which under load
 * costs more than the transactions themselves. The busy timeout still
 * covers writers in other processes (the CLI). */
static pthread_mutex_t queue_write_lock = PTHREAD_MUTEX_INITIALIZER;

/* Starts a write transaction at the given durability (see the top of the
 * file). The pragma must run outside a transaction, hence here. Every
 * successful queue_begin() is paired with one queue_end(). */
static int queue_begin(struct queue *q, enum queue_sync sync)
{
    pthread_mutex_lock(&queue_write_lock);
    if (q->sync != sync) {
        if (queue_exec_id(q, sync == QUEUE_SYNC_FULL ? ST_SYNC_FULL : ST_SYNC_NORMAL) < 0) {
            pthread_mutex_unlock(&queue_write_lock);
            return -1;
        }
        q->sync = sync;
    }
    if (queue_exec_id(q, ST_BEGIN) < 0) {
        pthread_mutex_unlock(&queue_write_lock);
        return -1;
    }
    return 0;
}

/* Commits if ok is 0, else rolls back; returns 0 only if committed. */
static int queue_end(struct queue *q, int ok)
{
    int r = -1;
    if (ok == 0 && queue_exec_id(q, ST_COMMIT) == 0)
        r = 0;
    /* Some errors (I/O, full disk) already rolled the transaction back. */
    else if (!sqlite3_get_autocommit(q->db))
        (void)queue_exec_id(q, ST_ROLLBACK);
    pthread_mutex_unlock(&queue_write_lock);
    return r;
}

/* Ends a read transaction (nothing to keep: COMMIT just drops the snapshot). */
static void queue_end_read(struct queue *q)
{
    if (!sqlite3_get_autocommit(q->db) && queue_exec_id(q, ST_COMMIT) < 0 &&
        !sqlite3_get_autocommit(q->db))
        (void)queue_exec_id(q, ST_ROLLBACK);
}

/* ---- insert ------------------------------------------------------------- */

/* Checks a message before any write, so a bad one fails the batch cleanly. */
static const char *queue_new_check(const struct queue_new *m)
{
    if (m->sender == NULL || strlen(m->sender) > MAIL_ADDR_MAX)
        return "bad sender";
    if (m->n_rcpts == 0 || m->rcpts == NULL)
        return "message has no recipients";
    if (m->body == NULL && m->len > 0)
        return "message has no body";
    for (size_t i = 0; i < m->n_rcpts; i++) {
        const struct queue_new_rcpt *r = &m->rcpts[i];
        if (r->addr == NULL || r->addr[0] == '\0' || strlen(r->addr) > MAIL_ADDR_MAX ||
            (r->orig != NULL && strlen(r->orig) > MAIL_ADDR_MAX))
            return "bad recipient address";
    }
    return NULL;
}

/* A fresh id, unused by any message or quarantined entry (inside the write
 * transaction, so it stays unused until we insert it). 0 or -1. */
static int queue_new_id(struct queue *q, char id[QUEUE_ID_LEN + 1])
{
    sqlite3_stmt *st = queue_stmt(q, ST_ID_TAKEN);
    if (st == NULL)
        return -1;
    for (;;) {
        uint8_t raw[QUEUE_ID_LEN / 2];
        rand_bytes(raw, sizeof(raw));
        hex_encode(raw, sizeof(raw), id);
        queue_bind_text(st, 1, id);
        int r = queue_step(q, st);
        if (r < 0)
            return -1;
        queue_done(st);
        if (r == 0)
            return 0;
    }
}

/* Inserts one message and its recipients inside the caller's transaction;
 * fills m->id_r. 0 or -1 (logged). */
static int queue_insert_one(struct queue *q, struct queue_new *m, int64_t now)
{
    uint8_t sha[SHA256_LEN];
    sqlite3_stmt *st = queue_stmt(q, ST_MSG_INSERT);
    sqlite3_stmt *rst = queue_stmt(q, ST_RCPT_INSERT);
    if (st == NULL || rst == NULL || queue_new_id(q, m->id_r) < 0)
        return -1;
    sha256_buf(m->body != NULL ? m->body : "", m->len, sha);
    queue_bind_text(st, 1, m->id_r);
    queue_bind_text(st, 2, m->sender);
    sqlite3_bind_int64(st, 3, now);
    sqlite3_bind_int64(st, 4, m->expires);
    sqlite3_bind_int(st, 5, m->is_dsn ? 1 : 0);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)m->len);
    /* zeroblob for an empty body: a NULL blob would fail NOT NULL. */
    if (m->len > 0)
        sqlite3_bind_blob64(st, 7, m->body, m->len, SQLITE_STATIC);
    else
        sqlite3_bind_zeroblob(st, 7, 0);
    sqlite3_bind_blob(st, 8, sha, SHA256_LEN, SQLITE_STATIC);
    sqlite3_bind_int64(st, 9, (sqlite3_int64)m->n_rcpts);
    if (queue_run(q, st, NULL) < 0)
        return -1;
    for (size_t i = 0; i < m->n_rcpts; i++) {
        const struct queue_new_rcpt *r = &m->rcpts[i];
        queue_bind_text(rst, 1, m->id_r);
        sqlite3_bind_int64(rst, 2, (sqlite3_int64)i);
        queue_bind_text(rst, 3, r->addr);
        queue_bind_text(rst, 4, r->orig != NULL ? r->orig : r->addr);
        sqlite3_bind_int(rst, 5, (int)r->kind);
        /* Due at once: the first attempt follows the 250 immediately. */
        sqlite3_bind_int64(rst, 6, now);
        if (queue_run(q, rst, NULL) < 0)
            return -1;
    }
    return 0;
}

int queue_insert(struct queue *q, struct queue_new *msgs, size_t n, const char **error_r)
{
    for (size_t i = 0; i < n; i++) {
        const char *err = queue_new_check(&msgs[i]);
        if (err != NULL) {
            *error_r = err;
            return -1;
        }
    }
    if (n == 0)
        return 0;
    int64_t now = time_now_ms();
    /* synchronous=FULL: COMMIT fsyncs the WAL, so once this returns every
     * message and recipient survives a power cut — the caller answers 250
     * on the strength of it (queue.h invariant 1). */
    if (queue_begin(q, QUEUE_SYNC_FULL) < 0) {
        *error_r = "queue is unavailable";
        return -1;
    }
    int ok = 0;
    for (size_t i = 0; i < n && ok == 0; i++)
        ok = queue_insert_one(q, &msgs[i], now);
    if (queue_end(q, ok) < 0) {
        for (size_t i = 0; i < n; i++)
            msgs[i].id_r[0] = '\0';
        *error_r = "cannot write to the queue";
        return -1;
    }
    return 0;
}

/* ---- load ---------------------------------------------------------------- */

static void queue_col_text(sqlite3_stmt *st, int col, char *dst, size_t n)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    str_copy(dst, t != NULL ? (const char *)t : "", n);
}

#define COL_TEXT(st, col, field) queue_col_text((st), (col), (field), sizeof(field))

static void queue_read_rcpt(sqlite3_stmt *st, struct queue_rcpt *r)
{
    r->idx = (unsigned)sqlite3_column_int64(st, 0);
    COL_TEXT(st, 1, r->addr);
    COL_TEXT(st, 2, r->orig);
    r->kind = (enum queue_rcpt_kind)sqlite3_column_int(st, 3);
    r->state = (enum queue_rcpt_state)sqlite3_column_int(st, 4);
    r->parked = sqlite3_column_int(st, 5) != 0;
    r->attempts = (unsigned)sqlite3_column_int64(st, 6);
    r->next_try = sqlite3_column_int64(st, 7);
    COL_TEXT(st, 8, r->last_reply);
}

/* Reads the recipients of id into m (appending to m->rcpts). 0 or -1. */
static int queue_read_rcpts(struct queue *q, const char *id, struct queue_msg *m)
{
    sqlite3_stmt *st = queue_stmt(q, ST_RCPTS_GET);
    if (st == NULL)
        return -1;
    size_t cap = 0;
    int r;
    queue_bind_text(st, 1, id);
    while ((r = queue_step(q, st)) > 0) {
        if (m->n_rcpts == cap) {
            cap = cap ? cap * 2 : 4;
            m->rcpts = xrealloc(m->rcpts, cap * sizeof(*m->rcpts));
        }
        struct queue_rcpt *rc = &m->rcpts[m->n_rcpts++];
        memset(rc, 0, sizeof(*rc));
        queue_read_rcpt(st, rc);
    }
    if (r < 0)
        return -1;
    queue_done(st);
    return 0;
}

/* Reads the message row and its recipients, and verifies them. */
static enum queue_status queue_load_locked(struct queue *q, const char *id, struct queue_msg *out)
{
    sqlite3_stmt *st = queue_stmt(q, ST_MSG_GET);
    if (st == NULL)
        return QUEUE_ERROR;
    queue_bind_text(st, 1, id);
    int r = queue_step(q, st);
    if (r < 0)
        return QUEUE_ERROR;
    if (r == 0) {
        queue_done(st);
        /* Recipients without their message: damage, not absence. */
        int64_t orphans;
        if (queue_scalar(q, ST_RCPTS_COUNT, id, &orphans) < 0)
            return QUEUE_ERROR;
        if (orphans == 0)
            return QUEUE_NOTFOUND;
        log_error(QUEUE_CTX, "%s: damaged: %" PRId64 " recipients without a message", id, orphans);
        return QUEUE_DAMAGED;
    }
    str_copy(out->id, id, sizeof(out->id));
    COL_TEXT(st, 0, out->sender);
    out->arrival = sqlite3_column_int64(st, 1);
    out->expires = sqlite3_column_int64(st, 2);
    out->is_dsn = sqlite3_column_int(st, 3) != 0;
    out->size = (uint64_t)sqlite3_column_int64(st, 4);
    const void *body = sqlite3_column_blob(st, 5);
    size_t body_len = (size_t)sqlite3_column_bytes(st, 5);
    buf_append(&out->body, body != NULL ? body : "", body_len);
    uint8_t want[SHA256_LEN], got[SHA256_LEN];
    bool sha_ok = sqlite3_column_bytes(st, 6) == SHA256_LEN;
    if (sha_ok)
        memcpy(want, sqlite3_column_blob(st, 6), SHA256_LEN);
    int64_t n_rcpts = sqlite3_column_int64(st, 7);
    queue_done(st);

    sha256_buf(out->body.data != NULL ? out->body.data : "", out->body.len, got);
    if (!sha_ok || memcmp(want, got, SHA256_LEN) != 0 || out->size != out->body.len) {
        log_error(QUEUE_CTX, "%s: damaged: body does not match its SHA-256 or size", id);
        return QUEUE_DAMAGED;
    }
    if (queue_read_rcpts(q, id, out) < 0)
        return QUEUE_ERROR;
    if (n_rcpts <= 0 || (uint64_t)n_rcpts != out->n_rcpts) {
        log_error(QUEUE_CTX, "%s: damaged: %zu recipients, %" PRId64 " recorded", id, out->n_rcpts,
                  n_rcpts);
        return QUEUE_DAMAGED;
    }
    for (size_t i = 0; i < out->n_rcpts; i++) {
        if (out->rcpts[i].idx != i || out->rcpts[i].state > QUEUE_FAILED) {
            log_error(QUEUE_CTX, "%s: damaged: recipient %zu is inconsistent", id, i);
            return QUEUE_DAMAGED;
        }
    }
    return QUEUE_OK;
}

enum queue_status queue_load(struct queue *q, const char *id, struct queue_msg *out)
{
    memset(out, 0, sizeof(*out));
    buf_init(&out->body, 0);
    /* One read transaction: the message and its recipients from the same
     * snapshot, even while another process updates them. */
    if (queue_exec_id(q, ST_BEGIN_READ) < 0)
        return QUEUE_ERROR;
    enum queue_status s = queue_load_locked(q, id, out);
    queue_end_read(q);
    if (s != QUEUE_OK)
        queue_msg_clear(out);
    return s;
}

/* ---- scheduling -------------------------------------------------------- */

int queue_due(struct queue *q, int64_t now, size_t max, void (*cb)(void *ctx, const char *id),
              void *ctx)
{
    sqlite3_stmt *st = queue_stmt(q, ST_DUE);
    if (st == NULL)
        return -1;
    if (max == 0)
        return 0;
    /* Collected first and called back after the reset, so cb may use q
     * (load, update) without a statement of ours still running. */
    char(*ids)[QUEUE_ID_LEN + 1] = NULL;
    size_t n = 0, cap = 0;
    int r;
    sqlite3_bind_int64(st, 1, now);
    sqlite3_bind_int64(st, 2, max > INT64_MAX ? INT64_MAX : (sqlite3_int64)max);
    while ((r = queue_step(q, st)) > 0) {
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            ids = xrealloc(ids, cap * sizeof(*ids));
        }
        queue_col_text(st, 0, ids[n++], sizeof(*ids));
    }
    if (r < 0) {
        free(ids);
        return -1;
    }
    queue_done(st);
    for (size_t i = 0; i < n; i++)
        cb(ctx, ids[i]);
    free(ids);
    return 0;
}

int64_t queue_next_due(struct queue *q)
{
    sqlite3_stmt *st = queue_stmt(q, ST_NEXT_DUE);
    /* On a database error (logged) the caller looks again shortly rather
     * than sleeping forever. */
    if (st == NULL)
        return time_now_ms() + QUEUE_RETRY_MS;
    int r = queue_step(q, st);
    if (r < 0)
        return time_now_ms() + QUEUE_RETRY_MS;
    int64_t t = INT64_MAX;
    if (r > 0 && sqlite3_column_type(st, 0) != SQLITE_NULL)
        t = sqlite3_column_int64(st, 0);
    queue_done(st);
    return t;
}

/* ---- update ------------------------------------------------------------ */

/* The body of queue_update, inside its transaction. *failed_r counts the
 * recipients this call turned into failures. */
static int queue_apply(struct queue *q, const char *id, const struct queue_update *ups, size_t n,
                       unsigned *failed_r)
{
    sqlite3_stmt *st = queue_stmt(q, ST_RCPT_UPDATE);
    if (st == NULL)
        return -1;
    for (size_t i = 0; i < n; i++) {
        const struct queue_update *u = &ups[i];
        ASSERT(u->state <= QUEUE_FAILED);
        const char *reply = u->reply != NULL ? u->reply : "";
        size_t rlen = strnlen(reply, QUEUE_REPLY_MAX);
        int changed = 0;
        queue_bind_text(st, 1, id);
        sqlite3_bind_int64(st, 2, u->idx);
        sqlite3_bind_int(st, 3, (int)u->state);
        sqlite3_bind_int(st, 4, u->parked ? 1 : 0);
        sqlite3_bind_int64(st, 5, u->attempts);
        sqlite3_bind_int64(st, 6, u->next_try);
        sqlite3_bind_text(st, 7, reply, (int)rlen, SQLITE_STATIC);
        if (queue_run(q, st, &changed) < 0)
            return -1;
        /* "AND state = 0" in the UPDATE: a final recipient never changes
         * again (e.g. the CLI bounced it while this attempt ran). */
        if (changed == 0)
            log_debug(QUEUE_CTX, "%s: recipient %u is not pending; update ignored", id, u->idx);
        else if (u->state == QUEUE_FAILED)
            (*failed_r)++;
    }
    return 0;
}

enum queue_status queue_update(struct queue *q, const char *id, const struct queue_update *ups,
                               size_t n, struct queue_new *dsn, bool *done_r)
{
    bool done = false;
    if (done_r != NULL)
        *done_r = false;
    if (dsn != NULL) {
        dsn->id_r[0] = '\0';
        const char *err = queue_new_check(dsn);
        if (err != NULL) {
            log_error(QUEUE_CTX, "%s: DSN refused: %s", id, err);
            return QUEUE_ERROR;
        }
    }
    /* synchronous=NORMAL (queue.h invariant 3): no fsync wait per status
     * change; see the top of the file for what a power cut may undo. */
    if (queue_begin(q, QUEUE_SYNC_NORMAL) < 0)
        return QUEUE_ERROR;
    int64_t exists = 0, pending = 0;
    unsigned failed = 0;
    int ok = queue_scalar(q, ST_MSG_EXISTS, id, &exists);
    if (ok == 0 && exists == 0) {
        (void)queue_end(q, -1);
        return QUEUE_NOTFOUND;
    }
    if (ok == 0)
        ok = queue_apply(q, id, ups, n, &failed);
    /* The DSN goes in with the failures it reports, or not at all: if every
     * failure was ignored (already final), someone else reported it. */
    if (ok == 0 && dsn != NULL && failed > 0)
        ok = queue_insert_one(q, dsn, time_now_ms());
    if (ok == 0)
        ok = queue_scalar(q, ST_PENDING_COUNT, id, &pending);
    if (ok == 0 && pending == 0) {
        /* Invariant 2: the message goes in the transaction that makes its
         * last recipient final. */
        ok = queue_exec_keyed(q, ST_RCPTS_DELETE, id);
        if (ok == 0)
            ok = queue_exec_keyed(q, ST_MSG_DELETE, id);
        done = ok == 0;
    }
    if (queue_end(q, ok) < 0) {
        if (dsn != NULL)
            dsn->id_r[0] = '\0';
        return QUEUE_ERROR;
    }
    if (done_r != NULL)
        *done_r = done;
    return QUEUE_OK;
}

/* ---- quarantine ---------------------------------------------------------- */

/* A readable dump of id's recipients, one per line. 0 or -1. */
static int queue_rcpts_dump(struct queue *q, const char *id, struct buf *out)
{
    struct queue_msg m = {0};
    if (queue_read_rcpts(q, id, &m) < 0)
        return -1;
    for (size_t i = 0; i < m.n_rcpts; i++) {
        const struct queue_rcpt *r = &m.rcpts[i];
        buf_printf(out, "%u %s%s%s%s %s attempts=%u%s%s%s\n", r->idx, r->addr,
                   strcmp(r->orig, r->addr) != 0 ? " (" : "",
                   strcmp(r->orig, r->addr) != 0 ? r->orig : "",
                   strcmp(r->orig, r->addr) != 0 ? ")" : "", queue_rcpt_state_str(r->state),
                   r->attempts, r->last_reply[0] != '\0' ? " \"" : "", r->last_reply,
                   r->last_reply[0] != '\0' ? "\"" : "");
    }
    queue_msg_clear(&m);
    return 0;
}

/* The body of queue_quarantine, inside its transaction: 0, -1 on error, 1
 * if there is nothing under id. */
static int queue_quarantine_locked(struct queue *q, const char *id, const char *reason)
{
    struct buf dump;
    int changed = 0;
    buf_init(&dump, 0);
    int r = queue_rcpts_dump(q, id, &dump);
    sqlite3_stmt *st = queue_stmt(q, ST_QUAR_FROM_MSG);
    if (r == 0 && st == NULL)
        r = -1;
    if (r == 0) {
        queue_bind_text(st, 1, id);
        queue_bind_text(st, 2, reason);
        sqlite3_bind_int64(st, 3, time_now_ms());
        queue_bind_text(st, 4, dump.data != NULL ? dump.data : "");
        r = queue_run(q, st, &changed);
    }
    /* No message row but recipients left: keep those (they are the
     * evidence), under the same id. */
    if (r == 0 && changed == 0 && dump.len > 0) {
        st = queue_stmt(q, ST_QUAR_ORPHAN);
        if (st == NULL) {
            r = -1;
        } else {
            queue_bind_text(st, 1, id);
            queue_bind_text(st, 2, reason);
            sqlite3_bind_int64(st, 3, time_now_ms());
            queue_bind_text(st, 4, dump.data);
            r = queue_run(q, st, &changed);
        }
    }
    buf_free(&dump);
    if (r < 0)
        return -1;
    if (changed == 0)
        return 1;
    if (queue_exec_keyed(q, ST_RCPTS_DELETE, id) < 0 || queue_exec_keyed(q, ST_MSG_DELETE, id) < 0)
        return -1;
    return 0;
}

enum queue_status queue_quarantine(struct queue *q, const char *id, const char *reason)
{
    if (reason == NULL)
        reason = "";
    /* synchronous=FULL: rare, and an operator-visible move that a power cut
     * should not undo (the entry would fail validation again anyway). */
    if (queue_begin(q, QUEUE_SYNC_FULL) < 0)
        return QUEUE_ERROR;
    int r = queue_quarantine_locked(q, id, reason);
    if (r > 0) {
        (void)queue_end(q, -1);
        return QUEUE_NOTFOUND;
    }
    if (queue_end(q, r) < 0)
        return QUEUE_ERROR;
    log_error(QUEUE_CTX, "%s: quarantined: %s", id, reason);
    return QUEUE_OK;
}

/* ---- listing and maintenance ------------------------------------------ */

/* Streams messages, then quarantined entries. 0, 1 if cb stopped, -1. */
static int queue_list_locked(struct queue *q,
                             int (*cb)(void *ctx, const struct queue_msg *m,
                                       const char *quarantined),
                             void *ctx)
{
    sqlite3_stmt *st = queue_stmt(q, ST_MSG_LIST);
    if (st == NULL)
        return -1;
    int r;
    while ((r = queue_step(q, st)) > 0) {
        struct queue_msg m = {0};
        COL_TEXT(st, 0, m.id);
        COL_TEXT(st, 1, m.sender);
        m.arrival = sqlite3_column_int64(st, 2);
        m.expires = sqlite3_column_int64(st, 3);
        m.is_dsn = sqlite3_column_int(st, 4) != 0;
        m.size = (uint64_t)sqlite3_column_int64(st, 5);
        int stop = queue_read_rcpts(q, m.id, &m) < 0 ? -1 : cb(ctx, &m, NULL);
        queue_msg_clear(&m);
        if (stop != 0) {
            queue_done(st);
            return stop < 0 ? -1 : 1;
        }
    }
    if (r < 0)
        return -1;
    queue_done(st);

    if ((st = queue_stmt(q, ST_QUAR_LIST)) == NULL)
        return -1;
    while ((r = queue_step(q, st)) > 0) {
        struct queue_msg m = {0};
        char reason[512];
        COL_TEXT(st, 0, m.id);
        COL_TEXT(st, 1, reason);
        COL_TEXT(st, 2, m.sender);
        m.arrival = sqlite3_column_int64(st, 3);
        m.size = (uint64_t)sqlite3_column_int64(st, 4);
        if (cb(ctx, &m, reason) != 0) {
            queue_done(st);
            return 1;
        }
    }
    if (r < 0)
        return -1;
    queue_done(st);
    return 0;
}

int queue_list(struct queue *q,
               int (*cb)(void *ctx, const struct queue_msg *m, const char *quarantined), void *ctx)
{
    /* One snapshot for the whole listing. cb runs inside it and must not
     * use q. */
    if (queue_exec_id(q, ST_BEGIN_READ) < 0)
        return -1;
    int r = queue_list_locked(q, cb, ctx);
    queue_end_read(q);
    return r < 0 ? -1 : 0;
}

long queue_flush(struct queue *q, const char *id)
{
    int changed = 0;
    /* synchronous=NORMAL: a flush lost to a power cut only leaves the
     * recipients on their earlier schedule. */
    if (queue_begin(q, QUEUE_SYNC_NORMAL) < 0)
        return -1;
    int ok = queue_exec_keyed_n(q, id != NULL ? ST_FLUSH_ONE : ST_FLUSH_ALL, id, &changed);
    if (queue_end(q, ok) < 0)
        return -1;
    return changed;
}

long queue_count(struct queue *q)
{
    int64_t n;
    return queue_scalar(q, ST_COUNT_MSGS, NULL, &n) < 0 ? -1 : (long)n;
}

/* ---- open, migrate, close ---------------------------------------------- */

void queue_close(struct queue **qp)
{
    struct queue *q = *qp;
    if (q == NULL)
        return;
    for (size_t i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(q->stmts[i]);
    if (q->db != NULL && sqlite3_close(q->db) != SQLITE_OK)
        queue_log(q, "close");
    xfree(qp);
}

static int queue_exec(struct queue *q, const char *sql)
{
    if (sqlite3_exec(q->db, sql, NULL, NULL, NULL) == SQLITE_OK)
        return 0;
    queue_log(q, sql);
    return -1;
}

static int queue_read_version(void *arg, int ncol, char **vals, char **names)
{
    (void)names;
    if (ncol > 0 && vals[0] != NULL)
        str_copy(arg, vals[0], QUEUE_VERSION_LEN);
    return 0;
}

/* WAL: the CLI reads while the mta writes, and the mta's commits are
 * appends. The level set here (FULL) is the safe default; each write
 * transaction then chooses its own (queue_begin). */
static int queue_pragmas(struct queue *q)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(q->db, "PRAGMA journal_mode=WAL", -1, &st, NULL) != SQLITE_OK) {
        queue_log(q, "PRAGMA journal_mode=WAL");
        return -1;
    }
    int r = queue_step(q, st);
    if (r > 0) {
        const unsigned char *mode = sqlite3_column_text(st, 0);
        /* Still correct without WAL, only slower under concurrency. */
        if (mode == NULL || strcmp((const char *)mode, "wal") != 0)
            log_warn(QUEUE_CTX, "sqlite: journal mode is %s, not wal",
                     mode != NULL ? (const char *)mode : "unknown");
    }
    sqlite3_finalize(st);
    if (r < 0 || queue_exec(q, "PRAGMA synchronous=FULL") < 0)
        return -1;
    q->sync = QUEUE_SYNC_FULL;
    return 0;
}

/* Brings the schema to the current version in one transaction. */
static int queue_migrate(struct queue *q, const char **error_r)
{
    const int want = (int)ARRAY_SIZE(queue_migrations);
    char found[QUEUE_VERSION_LEN] = "0";
    uint64_t cur;

    /* synchronous=FULL (set by queue_pragmas): the schema is durable before
     * the first message can be accepted. */
    if (queue_exec(q, "BEGIN IMMEDIATE") < 0) {
        *error_r = "queue database is unavailable";
        return -1;
    }
    if (queue_exec(q, "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY,"
                      " value TEXT NOT NULL)") < 0 ||
        sqlite3_exec(q->db, "SELECT value FROM meta WHERE key = 'schema_version'",
                     queue_read_version, found, NULL) != SQLITE_OK) {
        queue_log(q, "reading schema_version");
        *error_r = "cannot read the queue schema version";
        goto fail;
    }
    if (parse_u64(found, INT32_MAX, &cur) < 0) {
        log_error(QUEUE_CTX, "schema_version is not a number: '%s'", found);
        *error_r = "queue schema version is unreadable";
        goto fail;
    }
    if (cur > (uint64_t)want) {
        log_error(QUEUE_CTX, "schema version %" PRIu64 " is newer than this tern's %d", cur, want);
        *error_r = "queue database is from a newer tern; refusing to open it";
        goto fail;
    }
    for (int i = (int)cur; i < want; i++) {
        if (queue_exec(q, queue_migrations[i]) < 0) {
            *error_r = "queue schema migration failed";
            goto fail;
        }
    }
    if (cur < (uint64_t)want) {
        char sql[128];
        snprintf(sql, sizeof(sql),
                 "INSERT OR REPLACE INTO meta(key, value) VALUES('schema_version', '%d')", want);
        if (queue_exec(q, sql) < 0) {
            *error_r = "queue schema migration failed";
            goto fail;
        }
    }
    if (queue_exec(q, "COMMIT") < 0) {
        *error_r = "queue schema migration failed";
        goto fail;
    }
    if (cur < (uint64_t)want)
        log_info(QUEUE_CTX, "migrated schema from version %" PRIu64 " to %d", cur, want);
    return 0;
fail:
    if (!sqlite3_get_autocommit(q->db))
        (void)queue_exec(q, "ROLLBACK");
    return -1;
}

struct queue *queue_open(const char *dir, const char **error_r)
{
    if (mkdir_p(dir, 0700) < 0) {
        log_error(QUEUE_CTX, "mkdir %s: %s", dir, strerror(errno));
        *error_r = "cannot create the queue directory";
        return NULL;
    }
    struct queue *q = xmalloc(sizeof(*q));
    char *path = xasprintf("%s/queue.db", dir);
    int rc = sqlite3_open_v2(
        path, &q->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        log_error(QUEUE_CTX, "sqlite: open %s: %s", path,
                  q->db != NULL ? sqlite3_errmsg(q->db) : sqlite3_errstr(rc));
        *error_r = "cannot open the queue database";
        goto fail;
    }
    sqlite3_extended_result_codes(q->db, 1);
    sqlite3_busy_timeout(q->db, QUEUE_BUSY_MS);
    if (queue_pragmas(q) < 0) {
        *error_r = "cannot configure the queue database";
        goto fail;
    }
    if (queue_migrate(q, error_r) < 0)
        goto fail;
    free(path);
    return q;
fail:
    free(path);
    queue_close(&q);
    return NULL;
}
