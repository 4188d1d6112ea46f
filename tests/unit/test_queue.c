/*
 * test_queue — the mta queue: insert/load round trips, scheduling, status
 * updates with their DSN in one transaction, self-validation and the
 * quarantine, flush, reopen, and kill -9 while inserting.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ftw.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "queue/queue.h"

struct tctx {
    char dir[64];
    char qdir[96];
    struct queue *q;
};

static struct queue *open_q(const char *dir)
{
    const char *err = NULL;
    struct queue *q = queue_open(dir, &err);
    if (q == NULL)
        fail_msg("queue_open: %s", err);
    return q;
}

static int setup(void **state)
{
    struct tctx *t = xmalloc(sizeof(*t));
    str_copy(t->dir, "/tmp/test_queue.XXXXXX", sizeof(t->dir));
    if (mkdtemp(t->dir) == NULL)
        return -1;
    /* A subdirectory that does not exist yet: queue_open creates it. */
    snprintf(t->qdir, sizeof(t->qdir), "%s/q/queue", t->dir);
    t->q = open_q(t->qdir);
    *state = t;
    return 0;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int teardown(void **state)
{
    struct tctx *t = *state;
    queue_close(&t->q);
    nftw(t->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(t);
    return 0;
}

static void reopen(struct tctx *t)
{
    queue_close(&t->q);
    assert_null(t->q);
    t->q = open_q(t->qdir);
}

/* Runs raw SQL against the queue database (to damage it). */
static void raw_sql(struct tctx *t, const char *sql)
{
    char path[160];
    sqlite3 *db;
    snprintf(path, sizeof(path), "%s/queue.db", t->qdir);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
        fail_msg("%s: %s", sql, err);
    sqlite3_close(db);
}

static const struct queue_new_rcpt R1[] = {
    {"alice@example.org", "Alice@Example.org", QUEUE_RCPT_PRIMARY},
    {"bob@example.org", NULL, QUEUE_RCPT_ALTERNATE},
};
static const struct queue_new_rcpt R_ONE[] = {{"carol@example.org", NULL, QUEUE_RCPT_PRIMARY}};

/* Inserts one message with the given recipients; returns its id in id. */
static void insert1(struct tctx *t, const char *body, const struct queue_new_rcpt *r, size_t n,
                    char id[QUEUE_ID_LEN + 1])
{
    struct queue_new m = {.sender = "sender@example.net",
                          .body = body,
                          .len = strlen(body),
                          .rcpts = r,
                          .n_rcpts = n,
                          .expires = 1000};
    const char *err = NULL;
    if (queue_insert(t->q, &m, 1, &err) != 0)
        fail_msg("queue_insert: %s", err);
    str_copy(id, m.id_r, QUEUE_ID_LEN + 1);
}

static enum queue_status upd1(struct tctx *t, const char *id, unsigned idx, enum queue_rcpt_state s,
                              int64_t next_try, bool *done)
{
    struct queue_update u = {.idx = idx,
                             .state = s,
                             .attempts = 1,
                             .next_try = next_try,
                             .reply = s == QUEUE_DELIVERED ? "250 ok" : "550 5.1.1 no such user"};
    return queue_update(t->q, id, &u, 1, NULL, done);
}

static bool is_hex_id(const char *id)
{
    if (strlen(id) != QUEUE_ID_LEN)
        return false;
    for (const char *p = id; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return false;
    return true;
}

static void test_insert_load(void **state)
{
    struct tctx *t = *state;
    static const char body2[] = "Subject: two\r\n\r\nbinary\0inside";
    struct queue_new m[3] = {
        {.sender = "s@example.net",
         .body = "Subject: one\r\n\r\nhi\r\n",
         .len = 20,
         .rcpts = R1,
         .n_rcpts = 2,
         .expires = 111},
        {.sender = "",
         .body = body2,
         .len = sizeof(body2) - 1,
         .rcpts = R_ONE,
         .n_rcpts = 1,
         .is_dsn = true,
         .expires = 222},
        {.sender = "x@example.net",
         .body = "",
         .len = 0,
         .rcpts = R_ONE,
         .n_rcpts = 1,
         .expires = 333},
    };
    const char *err = NULL;
    int64_t before = time_now_ms();
    assert_int_equal(queue_insert(t->q, m, 3, &err), 0);
    int64_t after = time_now_ms();
    assert_int_equal(queue_count(t->q), 3);
    for (int i = 0; i < 3; i++) {
        assert_true(is_hex_id(m[i].id_r));
        for (int j = 0; j < i; j++)
            assert_string_not_equal(m[i].id_r, m[j].id_r);
    }
    for (int i = 0; i < 3; i++) {
        struct queue_msg out;
        assert_int_equal(queue_load(t->q, m[i].id_r, &out), QUEUE_OK);
        assert_string_equal(out.id, m[i].id_r);
        assert_string_equal(out.sender, m[i].sender);
        assert_true(out.arrival >= before && out.arrival <= after);
        assert_int_equal(out.expires, m[i].expires);
        assert_int_equal(out.is_dsn, m[i].is_dsn);
        assert_int_equal(out.size, m[i].len);
        assert_int_equal(out.body.len, m[i].len);
        assert_memory_equal(out.body.data, m[i].len ? m[i].body : "", m[i].len);
        assert_int_equal(out.n_rcpts, m[i].n_rcpts);
        for (size_t k = 0; k < out.n_rcpts; k++) {
            const struct queue_rcpt *r = &out.rcpts[k];
            const struct queue_new_rcpt *w = &m[i].rcpts[k];
            assert_int_equal(r->idx, k);
            assert_string_equal(r->addr, w->addr);
            assert_string_equal(r->orig, w->orig != NULL ? w->orig : w->addr);
            assert_int_equal(r->kind, w->kind);
            assert_int_equal(r->state, QUEUE_PENDING);
            assert_false(r->parked);
            assert_int_equal(r->attempts, 0);
            assert_int_equal(r->next_try, out.arrival);
            assert_string_equal(r->last_reply, "");
        }
        queue_msg_clear(&out);
    }

    struct queue_msg out;
    assert_int_equal(queue_load(t->q, "0000000000000000", &out), QUEUE_NOTFOUND);
    queue_msg_clear(&out);

    /* A bad message fails the whole batch, nothing inserted. */
    struct queue_new bad[2] = {m[0], m[0]};
    bad[1].n_rcpts = 0;
    err = NULL;
    assert_int_equal(queue_insert(t->q, bad, 2, &err), -1);
    assert_non_null(err);
    assert_int_equal(queue_count(t->q), 3);
    assert_string_equal(queue_rcpt_state_str(QUEUE_FAILED), "failed");
}

struct ids {
    char id[16][QUEUE_ID_LEN + 1];
    size_t n;
};

static void collect(void *ctx, const char *id)
{
    struct ids *ids = ctx;
    assert_true(ids->n < 16);
    str_copy(ids->id[ids->n++], id, QUEUE_ID_LEN + 1);
}

static void test_due(void **state)
{
    struct tctx *t = *state;
    char a[17], b[17], c[17];
    assert_int_equal(queue_next_due(t->q), INT64_MAX);
    insert1(t, "a", R1, 2, a);
    insert1(t, "b", R_ONE, 1, b);
    insert1(t, "c", R_ONE, 1, c);
    int64_t now = time_now_ms();

    /* a: idx0 at +300, idx1 at +100 (parked); b at +200; c at +50000. */
    struct queue_update ua[2] = {
        {.idx = 0, .state = QUEUE_PENDING, .attempts = 1, .next_try = now + 300, .reply = "451"},
        {.idx = 1,
         .state = QUEUE_PENDING,
         .parked = true,
         .attempts = 2,
         .next_try = now + 100,
         .reply = "451 4.2.0 move in progress"},
    };
    bool done = true;
    assert_int_equal(queue_update(t->q, a, ua, 2, NULL, &done), QUEUE_OK);
    assert_false(done);
    assert_int_equal(upd1(t, b, 0, QUEUE_PENDING, now + 200, &done), QUEUE_OK);
    assert_int_equal(upd1(t, c, 0, QUEUE_PENDING, now + 50000, &done), QUEUE_OK);

    struct queue_msg m;
    assert_int_equal(queue_load(t->q, a, &m), QUEUE_OK);
    assert_false(m.rcpts[0].parked);
    assert_true(m.rcpts[1].parked);
    assert_int_equal(m.rcpts[1].attempts, 2);
    assert_int_equal(m.rcpts[1].next_try, now + 100);
    assert_string_equal(m.rcpts[1].last_reply, "451 4.2.0 move in progress");
    queue_msg_clear(&m);

    assert_int_equal(queue_next_due(t->q), now + 100);
    struct ids ids = {0};
    assert_int_equal(queue_due(t->q, now, 10, collect, &ids), 0);
    assert_int_equal(ids.n, 0);
    assert_int_equal(queue_due(t->q, now + 100, 10, collect, &ids), 0);
    assert_int_equal(ids.n, 1);
    assert_string_equal(ids.id[0], a);
    /* Each message once, ordered by its earliest due recipient. */
    ids.n = 0;
    assert_int_equal(queue_due(t->q, now + 1000, 10, collect, &ids), 0);
    assert_int_equal(ids.n, 2);
    assert_string_equal(ids.id[0], a);
    assert_string_equal(ids.id[1], b);
    ids.n = 0;
    assert_int_equal(queue_due(t->q, INT64_MAX, 2, collect, &ids), 0);
    assert_int_equal(ids.n, 2);
    ids.n = 0;
    assert_int_equal(queue_due(t->q, INT64_MAX, 10, collect, &ids), 0);
    assert_int_equal(ids.n, 3);
    assert_string_equal(ids.id[2], c);

    /* A final recipient is no longer due. */
    assert_int_equal(upd1(t, a, 1, QUEUE_DELIVERED, 0, &done), QUEUE_OK);
    assert_int_equal(queue_next_due(t->q), now + 200);
}

static void test_update_partial_then_final(void **state)
{
    struct tctx *t = *state;
    char a[17], b[17];
    bool done = true;
    insert1(t, "Subject: x\r\n\r\nbody\r\n", R1, 2, a);
    insert1(t, "other", R_ONE, 1, b);
    assert_int_equal(queue_count(t->q), 2);

    assert_int_equal(upd1(t, a, 0, QUEUE_DELIVERED, 0, &done), QUEUE_OK);
    assert_false(done);
    struct queue_msg m;
    assert_int_equal(queue_load(t->q, a, &m), QUEUE_OK);
    assert_int_equal(m.rcpts[0].state, QUEUE_DELIVERED);
    assert_string_equal(m.rcpts[0].last_reply, "250 ok");
    assert_int_equal(m.rcpts[0].attempts, 1);
    assert_int_equal(m.rcpts[1].state, QUEUE_PENDING);
    queue_msg_clear(&m);
    assert_int_equal(queue_count(t->q), 2);

    /* A long reply is cut to QUEUE_REPLY_MAX. */
    char longreply[600];
    memset(longreply, 'r', sizeof(longreply) - 1);
    longreply[sizeof(longreply) - 1] = '\0';
    struct queue_update u = {.idx = 1, .state = QUEUE_PENDING, .next_try = 5, .reply = longreply};
    assert_int_equal(queue_update(t->q, a, &u, 1, NULL, &done), QUEUE_OK);
    assert_int_equal(queue_load(t->q, a, &m), QUEUE_OK);
    assert_int_equal(strlen(m.rcpts[1].last_reply), QUEUE_REPLY_MAX);
    queue_msg_clear(&m);

    assert_int_equal(upd1(t, a, 1, QUEUE_DELIVERED, 0, &done), QUEUE_OK);
    assert_true(done);
    assert_int_equal(queue_load(t->q, a, &m), QUEUE_NOTFOUND);
    assert_int_equal(queue_count(t->q), 1);
    assert_int_equal(upd1(t, a, 0, QUEUE_DELIVERED, 0, &done), QUEUE_NOTFOUND);
    assert_false(done);
    assert_int_equal(queue_load(t->q, b, &m), QUEUE_OK);
    queue_msg_clear(&m);
}

static const char DSN_BODY[] = "From: MAILER-DAEMON\r\nSubject: bounce\r\n\r\nfailed\r\n";

static void test_update_with_dsn(void **state)
{
    struct tctx *t = *state;
    char a[17];
    bool done = true;
    insert1(t, "Subject: x\r\n\r\nbody\r\n", R1, 2, a);
    const struct queue_new_rcpt back[] = {{"sender@example.net", NULL, QUEUE_RCPT_PRIMARY}};
    struct queue_new dsn = {.sender = "",
                            .body = DSN_BODY,
                            .len = sizeof(DSN_BODY) - 1,
                            .rcpts = back,
                            .n_rcpts = 1,
                            .is_dsn = true,
                            .expires = 42};

    /* Atomicity: if the DSN cannot be inserted, the failure is not
     * recorded either. */
    raw_sql(t, "CREATE TRIGGER no_dsn BEFORE INSERT ON messages WHEN NEW.is_dsn = 1"
               " BEGIN SELECT RAISE(ABORT, 'no'); END");
    struct queue_update u = {.idx = 0, .state = QUEUE_FAILED, .attempts = 1, .reply = "550 no"};
    assert_int_equal(queue_update(t->q, a, &u, 1, &dsn, &done), QUEUE_ERROR);
    assert_false(done);
    assert_string_equal(dsn.id_r, "");
    struct queue_msg m;
    assert_int_equal(queue_load(t->q, a, &m), QUEUE_OK);
    assert_int_equal(m.rcpts[0].state, QUEUE_PENDING);
    queue_msg_clear(&m);
    assert_int_equal(queue_count(t->q), 1);
    raw_sql(t, "DROP TRIGGER no_dsn");

    assert_int_equal(queue_update(t->q, a, &u, 1, &dsn, &done), QUEUE_OK);
    assert_false(done);
    assert_true(is_hex_id(dsn.id_r));
    assert_int_equal(queue_count(t->q), 2);
    assert_int_equal(queue_load(t->q, dsn.id_r, &m), QUEUE_OK);
    assert_true(m.is_dsn);
    assert_string_equal(m.sender, "");
    assert_int_equal(m.expires, 42);
    assert_int_equal(m.body.len, sizeof(DSN_BODY) - 1);
    assert_string_equal(m.rcpts[0].addr, "sender@example.net");
    queue_msg_clear(&m);
    assert_int_equal(queue_load(t->q, a, &m), QUEUE_OK);
    assert_int_equal(m.rcpts[0].state, QUEUE_FAILED);
    assert_string_equal(m.rcpts[0].last_reply, "550 no");
    queue_msg_clear(&m);

    /* The last recipient fails too, with its DSN: the message goes in the
     * same transaction. */
    struct queue_new dsn2 = dsn;
    u.idx = 1;
    assert_int_equal(queue_update(t->q, a, &u, 1, &dsn2, &done), QUEUE_OK);
    assert_true(done);
    assert_true(is_hex_id(dsn2.id_r));
    assert_string_not_equal(dsn.id_r, dsn2.id_r);
    assert_int_equal(queue_load(t->q, a, &m), QUEUE_NOTFOUND);
    assert_int_equal(queue_count(t->q), 2);
}

static void test_final_is_final(void **state)
{
    struct tctx *t = *state;
    char a[17];
    bool done;
    insert1(t, "x", R1, 2, a);
    assert_int_equal(upd1(t, a, 0, QUEUE_FAILED, 0, &done), QUEUE_OK);
    struct queue_update u[2] = {
        {.idx = 0, .state = QUEUE_DELIVERED, .attempts = 9, .reply = "250 late"},
        {.idx = 0, .state = QUEUE_PENDING, .attempts = 9, .next_try = 1, .reply = "451"},
    };
    assert_int_equal(queue_update(t->q, a, u, 2, NULL, &done), QUEUE_OK);
    assert_false(done);
    struct queue_msg m;
    assert_int_equal(queue_load(t->q, a, &m), QUEUE_OK);
    assert_int_equal(m.rcpts[0].state, QUEUE_FAILED);
    assert_int_equal(m.rcpts[0].attempts, 1);
    assert_string_equal(m.rcpts[0].last_reply, "550 5.1.1 no such user");
    queue_msg_clear(&m);

    /* A DSN for a failure that was ignored is not queued (the first one
     * was reported by whoever made it final). */
    struct queue_new dsn = {.sender = "",
                            .body = DSN_BODY,
                            .len = sizeof(DSN_BODY) - 1,
                            .rcpts = R_ONE,
                            .n_rcpts = 1,
                            .is_dsn = true};
    u[0].state = QUEUE_FAILED;
    assert_int_equal(queue_update(t->q, a, u, 1, &dsn, &done), QUEUE_OK);
    assert_string_equal(dsn.id_r, "");
    assert_int_equal(queue_count(t->q), 1);
}

struct listed {
    char id[8][QUEUE_ID_LEN + 1];
    char reason[8][64];
    size_t n_rcpts[8];
    size_t n;
};

static int list_cb(void *ctx, const struct queue_msg *m, const char *quarantined)
{
    struct listed *l = ctx;
    assert_true(l->n < 8);
    assert_int_equal(m->body.len, 0);
    str_copy(l->id[l->n], m->id, sizeof(l->id[0]));
    str_copy(l->reason[l->n], quarantined != NULL ? quarantined : "", sizeof(l->reason[0]));
    l->n_rcpts[l->n] = m->n_rcpts;
    l->n++;
    return 0;
}

static void test_damaged_and_quarantine(void **state)
{
    struct tctx *t = *state;
    char a[17], b[17], c[17];
    insert1(t, "Subject: a\r\n\r\naaaa\r\n", R1, 2, a);
    insert1(t, "Subject: b\r\n\r\nbbbb\r\n", R1, 2, b);
    insert1(t, "Subject: c\r\n\r\ncccc\r\n", R_ONE, 1, c);
    char sql[256];
    snprintf(sql, sizeof(sql),
             "UPDATE messages SET body = CAST('Subject: a\r\n\r\naaab\r\n' AS BLOB)"
             " WHERE id = '%s'",
             a);
    raw_sql(t, sql);
    snprintf(sql, sizeof(sql), "DELETE FROM rcpts WHERE msg_id = '%s' AND idx = 1", b);
    raw_sql(t, sql);

    struct queue_msg m;
    assert_int_equal(queue_load(t->q, a, &m), QUEUE_DAMAGED);
    assert_null(m.rcpts);
    assert_int_equal(queue_load(t->q, b, &m), QUEUE_DAMAGED);
    assert_int_equal(queue_load(t->q, c, &m), QUEUE_OK);
    queue_msg_clear(&m);

    assert_int_equal(queue_quarantine(t->q, a, "body checksum mismatch"), QUEUE_OK);
    assert_int_equal(queue_quarantine(t->q, b, "recipient count mismatch"), QUEUE_OK);
    assert_int_equal(queue_quarantine(t->q, b, "again"), QUEUE_NOTFOUND);
    assert_int_equal(queue_count(t->q), 1);
    assert_int_equal(queue_load(t->q, a, &m), QUEUE_NOTFOUND);
    assert_int_equal(queue_load(t->q, b, &m), QUEUE_NOTFOUND);
    struct ids ids = {0};
    assert_int_equal(queue_due(t->q, INT64_MAX, 10, collect, &ids), 0);
    assert_int_equal(ids.n, 1);
    assert_string_equal(ids.id[0], c);

    struct listed l = {0};
    assert_int_equal(queue_list(t->q, list_cb, &l), 0);
    assert_int_equal(l.n, 3);
    assert_string_equal(l.id[0], c);
    assert_string_equal(l.reason[0], "");
    assert_int_equal(l.n_rcpts[0], 1);
    assert_string_equal(l.id[1], a);
    assert_string_equal(l.reason[1], "body checksum mismatch");
    assert_string_equal(l.id[2], b);
    assert_string_equal(l.reason[2], "recipient count mismatch");

    /* The quarantine keeps the body and a readable recipient list. */
    reopen(t);
    char path[160];
    sqlite3 *db;
    sqlite3_stmt *st;
    snprintf(path, sizeof(path), "%s/queue.db", t->qdir);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(
        sqlite3_prepare_v2(db, "SELECT body, rcpts FROM quarantine WHERE id = ?1", -1, &st, NULL),
        SQLITE_OK);
    sqlite3_bind_text(st, 1, a, -1, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_bytes(st, 0), 20);
    const char *dump = (const char *)sqlite3_column_text(st, 1);
    assert_non_null(strstr(dump, "0 alice@example.org (Alice@Example.org) pending"));
    assert_non_null(strstr(dump, "1 bob@example.org pending"));
    sqlite3_finalize(st);
    sqlite3_close(db);

    /* Recipients whose message row is gone are damage too. */
    snprintf(sql, sizeof(sql), "DELETE FROM messages WHERE id = '%s'", c);
    raw_sql(t, sql);
    assert_int_equal(queue_load(t->q, c, &m), QUEUE_DAMAGED);
    assert_int_equal(queue_quarantine(t->q, c, "orphan recipients"), QUEUE_OK);
    assert_int_equal(queue_load(t->q, c, &m), QUEUE_NOTFOUND);
    assert_int_equal(queue_next_due(t->q), INT64_MAX);
    memset(&l, 0, sizeof(l));
    assert_int_equal(queue_list(t->q, list_cb, &l), 0);
    assert_int_equal(l.n, 3);
    assert_string_equal(l.reason[2], "orphan recipients");
}

static void test_list_order(void **state)
{
    struct tctx *t = *state;
    char id[4][17];
    for (int i = 0; i < 4; i++)
        insert1(t, "x", i % 2 ? R1 : R_ONE, i % 2 ? 2 : 1, id[i]);
    struct listed l = {0};
    assert_int_equal(queue_list(t->q, list_cb, &l), 0);
    assert_int_equal(l.n, 4);
    for (int i = 0; i < 4; i++) {
        assert_string_equal(l.id[i], id[i]);
        assert_int_equal(l.n_rcpts[i], i % 2 ? 2 : 1);
    }
}

static void test_flush(void **state)
{
    struct tctx *t = *state;
    char a[17], b[17];
    bool done;
    insert1(t, "a", R1, 2, a);
    insert1(t, "b", R1, 2, b);
    int64_t later = time_now_ms() + 3600000;
    struct queue_update u[2] = {
        {.idx = 0, .state = QUEUE_PENDING, .parked = true, .attempts = 1, .next_try = later},
        {.idx = 1, .state = QUEUE_PENDING, .attempts = 1, .next_try = later},
    };
    assert_int_equal(queue_update(t->q, a, u, 2, NULL, &done), QUEUE_OK);
    assert_int_equal(queue_update(t->q, b, u, 2, NULL, &done), QUEUE_OK);
    assert_int_equal(upd1(t, b, 1, QUEUE_DELIVERED, 0, &done), QUEUE_OK);

    struct ids ids = {0};
    int64_t now = time_now_ms();
    assert_int_equal(queue_due(t->q, now, 10, collect, &ids), 0);
    assert_int_equal(ids.n, 0);

    assert_int_equal(queue_flush(t->q, a), 2);
    assert_int_equal(queue_due(t->q, now, 10, collect, &ids), 0);
    assert_int_equal(ids.n, 1);
    assert_string_equal(ids.id[0], a);
    struct queue_msg m;
    assert_int_equal(queue_load(t->q, a, &m), QUEUE_OK);
    assert_false(m.rcpts[0].parked);
    assert_int_equal(m.rcpts[0].next_try, 0);
    queue_msg_clear(&m);

    /* All pending: a's two and b's one (b's delivered one is final). */
    assert_int_equal(queue_flush(t->q, NULL), 3);
    assert_int_equal(queue_flush(t->q, "ffffffffffffffff"), 0);
    ids.n = 0;
    assert_int_equal(queue_due(t->q, now, 10, collect, &ids), 0);
    assert_int_equal(ids.n, 2);
    assert_int_equal(queue_next_due(t->q), 0);
}

static void test_reopen(void **state)
{
    struct tctx *t = *state;
    char a[17], b[17];
    bool done;
    insert1(t, "Subject: keep\r\n\r\nme\r\n", R1, 2, a);
    insert1(t, "b", R_ONE, 1, b);
    assert_int_equal(upd1(t, a, 0, QUEUE_DELIVERED, 0, &done), QUEUE_OK);
    assert_int_equal(upd1(t, b, 0, QUEUE_DELIVERED, 0, &done), QUEUE_OK);
    assert_int_equal(upd1(t, a, 1, QUEUE_PENDING, 77, &done), QUEUE_OK);
    reopen(t);
    reopen(t); /* opening an up-to-date schema twice is a no-op */
    assert_int_equal(queue_count(t->q), 1);
    struct queue_msg m;
    assert_int_equal(queue_load(t->q, a, &m), QUEUE_OK);
    assert_memory_equal(m.body.data, "Subject: keep\r\n\r\nme\r\n", m.body.len);
    assert_int_equal(m.rcpts[0].state, QUEUE_DELIVERED);
    assert_int_equal(m.rcpts[1].state, QUEUE_PENDING);
    assert_int_equal(m.rcpts[1].next_try, 77);
    queue_msg_clear(&m);
    assert_int_equal(queue_load(t->q, b, &m), QUEUE_NOTFOUND);
    assert_int_equal(queue_next_due(t->q), 77);
}

/* The child: inserts batches forever, reporting each committed id. */
TERN_NORETURN static void crash_child(const char *dir, int wfd)
{
    const char *err;
    struct queue *q = queue_open(dir, &err);
    if (q == NULL)
        _exit(2);
    char body[4096];
    for (unsigned round = 0;; round++) {
        struct queue_new m[4];
        for (size_t i = 0; i < ARRAY_SIZE(m); i++) {
            size_t len = 64 + (round * 37 + i * 101) % (sizeof(body) - 64);
            memset(body, 'a' + (int)((round + i) % 26), len);
            memcpy(body, "Subject: crash\r\n\r\n", 18);
            m[i] = (struct queue_new){.sender = "s@example.net",
                                      .body = body,
                                      .len = len,
                                      .rcpts = R1,
                                      .n_rcpts = 2,
                                      .expires = 1};
        }
        if (queue_insert(q, m, ARRAY_SIZE(m), &err) != 0)
            _exit(3);
        for (size_t i = 0; i < ARRAY_SIZE(m); i++) {
            char line[QUEUE_ID_LEN + 1];
            memcpy(line, m[i].id_r, QUEUE_ID_LEN);
            line[QUEUE_ID_LEN] = '\n';
            if (write_full(wfd, line, sizeof(line)) < 0)
                _exit(4);
        }
    }
}

static void test_crash_insert(void **state)
{
    struct tctx *t = *state;
    for (int rep = 0; rep < 5; rep++) {
        char dir[128];
        snprintf(dir, sizeof(dir), "%s/crash%d", t->dir, rep);
        int fds[2];
        assert_int_equal(pipe(fds), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(fds[0]);
            crash_child(dir, fds[1]);
        }
        close(fds[1]);
        /* Kill at a random moment after the first commit (so there is
         * always something to check, however slow fsync is here). */
        struct buf got;
        buf_init(&got, 0);
        char chunk[4096];
        ssize_t n;
        while (got.len < QUEUE_ID_LEN + 1 && (n = read(fds[0], chunk, sizeof(chunk))) > 0)
            buf_append(&got, chunk, (size_t)n);
        uint16_t r;
        rand_bytes(&r, sizeof(r));
        usleep((useconds_t)(r % 150) * 1000);
        kill(pid, SIGKILL);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
        while ((n = read(fds[0], chunk, sizeof(chunk))) > 0)
            buf_append(&got, chunk, (size_t)n);
        close(fds[0]);

        struct queue *q = open_q(dir);
        size_t reported = 0;
        for (size_t off = 0; off + QUEUE_ID_LEN + 1 <= got.len; off += QUEUE_ID_LEN + 1) {
            char id[QUEUE_ID_LEN + 1];
            memcpy(id, got.data + off, QUEUE_ID_LEN);
            id[QUEUE_ID_LEN] = '\0';
            struct queue_msg m;
            assert_int_equal(queue_load(q, id, &m), QUEUE_OK);
            assert_int_equal(m.n_rcpts, 2);
            queue_msg_clear(&m);
            reported++;
        }
        assert_true(reported > 0);
        assert_true(queue_count(q) >= (long)reported);
        queue_close(&q);
        buf_free(&got);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_insert_load, setup, teardown),
        cmocka_unit_test_setup_teardown(test_due, setup, teardown),
        cmocka_unit_test_setup_teardown(test_update_partial_then_final, setup, teardown),
        cmocka_unit_test_setup_teardown(test_update_with_dsn, setup, teardown),
        cmocka_unit_test_setup_teardown(test_final_is_final, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damaged_and_quarantine, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flush, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_insert, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
