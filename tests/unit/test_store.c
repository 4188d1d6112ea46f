/*
 * test_store — one suite run against both store backends (memory and fs),
 * so they keep identical semantics, plus fs-only durability tests: a crash
 * between the body fdatasync and the metadata commit, a failing fdatasync,
 * and kill -9 at random moments while committing.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "store/store.h"

#define U1 "alice@example.org"
#define U2 "bob@example.org"

struct tctx {
    bool fs;
    char dir[64];
    struct store *st;
};

static bool kind_mem = false, kind_fs = true;

static struct store *open_fs(const char *dir)
{
    const char *err = NULL;
    struct store *st = store_open_fs(dir, "s1", &err);
    if (st == NULL)
        fail_msg("store_open_fs: %s", err);
    return st;
}

static int setup(void **state)
{
    struct tctx *t = xmalloc(sizeof(*t));
    t->fs = *(bool *)*state;
    if (t->fs) {
        str_copy(t->dir, "/tmp/test_store.XXXXXX", sizeof(t->dir));
        if (mkdtemp(t->dir) == NULL)
            return -1;
        t->st = open_fs(t->dir);
    } else {
        t->st = store_open_memory("s1");
    }
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
    store_close(&t->st);
    if (t->fs)
        nftw(t->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(t);
    return 0;
}

/* Closes and reopens a fs store (no-op for memory). */
static void reopen(struct tctx *t)
{
    if (!t->fs)
        return;
    store_close(&t->st);
    t->st = open_fs(t->dir);
}

/* ---- helpers ---- */

static struct store_append mk(const char *user, const char *folder, const char *body)
{
    struct store_append a = {.user = user, .folder = folder, .data = body, .len = strlen(body)};
    return a;
}

static enum store_status append1(struct store *st, const struct store_append *a,
                                 struct store_append_result *res)
{
    struct store_batch *b = store_batch_begin(st);
    store_batch_add(b, a, res);
    const char *err = NULL;
    assert_int_equal(store_batch_commit(&b, &err), 0);
    assert_null(b);
    return res->status;
}

static uint32_t deliver(struct store *st, const char *user, const char *body)
{
    struct store_append a = mk(user, NULL, body);
    struct store_append_result res;
    assert_int_equal(append1(st, &a, &res), STORE_OK);
    return res.uid;
}

static int count_cb(void *ctx, const struct store_msg *m)
{
    (void)m;
    (*(size_t *)ctx)++;
    return 0;
}

static size_t count_msgs(struct store *st, const char *user, const char *folder)
{
    size_t n = 0;
    const char *err = NULL;
    assert_int_equal(store_msg_iter(st, user, folder, count_cb, &n, &err), 0);
    return n;
}

static void assert_body(struct store *st, const char *user, const char *folder, uint32_t uid,
                        const void *data, size_t len)
{
    struct buf b;
    buf_init(&b, 0);
    buf_puts(&b, "prefix");
    assert_int_equal(store_msg_read(st, user, folder, uid, &b), STORE_OK);
    assert_int_equal(b.len, 6 + len);
    assert_memory_equal(b.data + 6, data, len);
    buf_free(&b);
}

struct msg_find {
    uint32_t uid;
    bool found;
    struct store_msg m;
    char kw[STORE_KEYWORDS_MAX + 1];
};

static int find_cb(void *ctx, const struct store_msg *m)
{
    struct msg_find *f = ctx;
    if (m->uid != f->uid)
        return 0;
    f->found = true;
    f->m = *m;
    str_copy(f->kw, m->keywords, sizeof(f->kw));
    f->m.keywords = f->kw;
    return 1;
}

static bool find_msg(struct store *st, const char *user, const char *folder, uint32_t uid,
                     struct msg_find *f)
{
    const char *err = NULL;
    memset(f, 0, sizeof(*f));
    f->uid = uid;
    int r = store_msg_iter(st, user, folder, find_cb, f, &err);
    assert_true(r == 0 || r == 1);
    return f->found;
}

struct changes {
    size_t nfolders, nmsgs;
    uint64_t last_modseq;
    struct store_folder folders[8];
    struct store_msg msgs[8];
    bool ordered;
};

static int ch_folder(void *ctx, const struct store_folder *f)
{
    struct changes *c = ctx;
    if (c->nfolders < ARRAY_SIZE(c->folders))
        c->folders[c->nfolders] = *f;
    if (f->modseq < c->last_modseq)
        c->ordered = false;
    c->last_modseq = f->modseq;
    c->nfolders++;
    return 0;
}

static int ch_msg(void *ctx, const struct store_folder *f, const struct store_msg *m)
{
    struct changes *c = ctx;
    (void)f;
    if (c->nmsgs == 0)
        c->last_modseq = 0;
    if (c->nmsgs < ARRAY_SIZE(c->msgs)) {
        c->msgs[c->nmsgs] = *m;
        c->msgs[c->nmsgs].keywords = NULL;
    }
    if (m->modseq < c->last_modseq)
        c->ordered = false;
    c->last_modseq = m->modseq;
    c->nmsgs++;
    return 0;
}

static void get_changes(struct store *st, const char *user, uint64_t since, struct changes *c)
{
    memset(c, 0, sizeof(*c));
    c->ordered = true;
    struct store_change_cb cb = {.folder = ch_folder, .msg = ch_msg, .ctx = c};
    const char *err = NULL;
    assert_int_equal(store_changes(st, user, since, &cb, &err), 0);
    assert_true(c->ordered);
}

static uint64_t mbox_modseq(struct store *st, const char *user)
{
    struct store_mailbox mb;
    assert_int_equal(store_mailbox_get(st, user, &mb), STORE_OK);
    return mb.modseq;
}

/* ---- both backends ---- */

static void test_mailbox(void **state)
{
    struct tctx *t = *state;
    struct store *st = t->st;
    assert_string_equal(store_name(st), "s1");
    struct store_mailbox mb;
    assert_int_equal(store_mailbox_get(st, U1, &mb), STORE_NOTFOUND);
    assert_int_equal(store_mailbox_create(st, U1, STORE_MBOX_ACTIVE, 3), STORE_OK);
    assert_int_equal(store_mailbox_create(st, "Alice@Example.org", STORE_MBOX_STAGED, 1),
                     STORE_EXISTS);
    assert_int_equal(store_mailbox_create(st, U2, STORE_MBOX_STAGED, 1), STORE_OK);
    assert_int_equal(store_mailbox_create(st, "not an address", STORE_MBOX_ACTIVE, 1),
                     STORE_INVALID);

    assert_int_equal(store_mailbox_get(st, U1, &mb), STORE_OK);
    assert_string_equal(mb.user, U1);
    assert_int_equal(mb.state, STORE_MBOX_ACTIVE);
    assert_int_equal(mb.epoch, 3);
    assert_string_equal(mb.moved_to, "");
    assert_int_equal(mb.messages, 0);
    assert_true(mb.created > 0);
    uint64_t m0 = mb.modseq;

    struct store_folder f;
    assert_int_equal(store_folder_get(st, U1, "inbox", &f), STORE_OK);
    assert_string_equal(f.name, "INBOX");
    assert_true(f.uidvalidity > 0);
    assert_int_equal(f.uidnext, 1);

    /* Compare-and-set of the state. */
    assert_int_equal(store_mailbox_set_state(st, U1, STORE_MBOX_STAGED, STORE_MBOX_FENCED, 4, NULL),
                     STORE_CONFLICT);
    assert_int_equal(store_mailbox_set_state(st, U1, STORE_MBOX_ACTIVE, STORE_MBOX_FENCED, 4, NULL),
                     STORE_OK);
    assert_int_equal(
        store_mailbox_set_state(st, U1, STORE_MBOX_FENCED, STORE_MBOX_MOVED, 5, "bad name!"),
        STORE_INVALID);
    assert_int_equal(store_mailbox_set_state(st, U1, STORE_MBOX_FENCED, STORE_MBOX_MOVED, 5, "s2"),
                     STORE_OK);
    assert_int_equal(store_mailbox_set_state(st, "carol@example.org", STORE_MBOX_ACTIVE,
                                             STORE_MBOX_FENCED, 4, NULL),
                     STORE_NOTFOUND);
    reopen(t);
    st = t->st;
    assert_int_equal(store_mailbox_get(st, U1, &mb), STORE_OK);
    assert_int_equal(mb.state, STORE_MBOX_MOVED);
    assert_int_equal(mb.epoch, 5);
    assert_string_equal(mb.moved_to, "s2");
    /* A state change is no change of the log: a move keeps HIGHESTMODSEQ. */
    assert_true(mb.modseq == m0);

    struct store_mailbox *list;
    size_t n;
    assert_int_equal(store_mailbox_list(st, &list, &n), STORE_OK);
    assert_int_equal(n, 2);
    assert_string_equal(list[0].user, U1);
    assert_string_equal(list[1].user, U2);
    free(list);

    /* Purge only from DELETING. */
    deliver(st, U2, "x\r\n");
    assert_int_equal(store_mailbox_purge(st, U2), STORE_CONFLICT);
    assert_int_equal(
        store_mailbox_set_state(st, U2, STORE_MBOX_STAGED, STORE_MBOX_DELETING, 2, NULL), STORE_OK);
    assert_int_equal(store_mailbox_purge(st, U2), STORE_OK);
    assert_int_equal(store_mailbox_get(st, U2, &mb), STORE_NOTFOUND);
    assert_int_equal(store_mailbox_purge(st, U2), STORE_NOTFOUND);
    assert_int_equal(store_mailbox_create(st, U2, STORE_MBOX_ACTIVE, 1), STORE_OK);
    assert_int_equal(count_msgs(st, U2, "INBOX"), 0);

    assert_string_equal(store_mbox_state_str(STORE_MBOX_FENCED), "fenced");
    enum store_mbox_state s;
    assert_int_equal(store_mbox_state_parse("deleting", &s), 0);
    assert_int_equal(s, STORE_MBOX_DELETING);
    assert_int_equal(store_mbox_state_parse("bogus", &s), -1);
    assert_string_equal(store_status_str(STORE_NOTLIVE), "mailbox not live");
}

/* A move gives the new INBOX the source INBOX's UIDVALIDITY. */
static void test_mailbox_create_with(void **state)
{
    struct tctx *t = *state;
    /* Far enough ahead of the clock that "greater than the highest" is
     * what makes a chosen value unique, not the clock. */
    const uint32_t uv = (uint32_t)(time(NULL) + 100000);
    assert_int_equal(store_mailbox_create_with(t->st, U1, STORE_MBOX_STAGED, 9, uv), STORE_OK);
    assert_int_equal(store_mailbox_create_with(t->st, U1, STORE_MBOX_STAGED, 9, 0), STORE_EXISTS);
    assert_int_equal(store_mailbox_create_with(t->st, U2, STORE_MBOX_MOVED, 9, uv), STORE_INVALID);
    assert_int_equal(store_mailbox_create_with(t->st, "not an address", STORE_MBOX_STAGED, 9, uv),
                     STORE_INVALID);
    /* 0: the store chooses, as store_mailbox_create does. */
    assert_int_equal(store_mailbox_create_with(t->st, U2, STORE_MBOX_ACTIVE, 1, 0), STORE_OK);
    reopen(t);

    struct store_mailbox mb;
    assert_int_equal(store_mailbox_get(t->st, U1, &mb), STORE_OK);
    assert_int_equal(mb.state, STORE_MBOX_STAGED);
    assert_int_equal(mb.epoch, 9);
    struct store_folder f, g;
    assert_int_equal(store_folder_get(t->st, U1, "INBOX", &f), STORE_OK);
    assert_int_equal(f.uidvalidity, uv);
    assert_int_equal(f.uidnext, 1);
    assert_int_equal(store_folder_get(t->st, U2, "INBOX", &g), STORE_OK);
    assert_true(g.uidvalidity > 0);
    assert_true(g.uidvalidity < uv);

    /* A folder created later still gets a UIDVALIDITY unique in the
     * mailbox: above the INBOX's. */
    assert_int_equal(store_folder_create(t->st, U1, "Sent", 0), STORE_OK);
    assert_int_equal(store_folder_get(t->st, U1, "Sent", &f), STORE_OK);
    assert_true(f.uidvalidity > uv);
    assert_int_equal(store_folder_create(t->st, U1, "Drafts", 0), STORE_OK);
    assert_int_equal(store_folder_get(t->st, U1, "Drafts", &g), STORE_OK);
    assert_true(g.uidvalidity > f.uidvalidity);
    /* Delivery works into it. */
    deliver(t->st, U1, "x\r\n");
    assert_int_equal(count_msgs(t->st, U1, "INBOX"), 1);
}

static void test_append_single(void **state)
{
    struct tctx *t = *state;
    assert_int_equal(store_mailbox_create(t->st, U1, STORE_MBOX_ACTIVE, 1), STORE_OK);
    const char *body = "From: a@b\r\nSubject: hi\r\n\r\nhello\r\n";
    struct store_append a = mk(U1, NULL, body);
    a.internal_date = 1700000000;
    a.flags = STORE_F_SEEN;
    a.keywords = "$Junk";
    struct store_append_result res;
    assert_int_equal(append1(t->st, &a, &res), STORE_OK);
    assert_false(res.duplicate);
    assert_int_equal(res.uid, 1);
    assert_true(res.modseq > 0);
    assert_int_equal(res.modseq, mbox_modseq(t->st, U1));
    uint8_t zero[STORE_GUID_LEN] = {0};
    assert_memory_not_equal(res.guid, zero, STORE_GUID_LEN);

    reopen(t);
    struct store_folder f;
    assert_int_equal(store_folder_get(t->st, U1, "INBOX", &f), STORE_OK);
    assert_int_equal(res.uidvalidity, f.uidvalidity);
    assert_int_equal(f.uidnext, 2);
    assert_int_equal(f.messages, 1);
    struct store_mailbox mb;
    assert_int_equal(store_mailbox_get(t->st, U1, &mb), STORE_OK);
    assert_int_equal(mb.messages, 1);
    assert_int_equal(mb.bytes, strlen(body));

    assert_body(t->st, U1, "inbox", 1, body, strlen(body));
    struct msg_find m;
    assert_true(find_msg(t->st, U1, "INBOX", 1, &m));
    uint8_t sha[SHA256_LEN];
    sha256_buf(body, strlen(body), sha);
    assert_memory_equal(m.m.sha256, sha, SHA256_LEN);
    assert_memory_equal(m.m.guid, res.guid, STORE_GUID_LEN);
    assert_int_equal(m.m.size, strlen(body));
    assert_int_equal(m.m.internal_date, 1700000000);
    assert_int_equal(m.m.flags, STORE_F_SEEN);
    assert_string_equal(m.kw, "$Junk");
    assert_int_equal(m.m.modseq, res.modseq);
    assert_int_equal(m.m.folder_id, f.id);
    assert_false(m.m.expunged);

    /* An empty message is still a message. */
    struct store_append e = mk(U1, NULL, "");
    assert_int_equal(append1(t->st, &e, &res), STORE_OK);
    assert_int_equal(res.uid, 2);
    struct buf b;
    buf_init(&b, 0);
    assert_int_equal(store_msg_read(t->st, U1, "INBOX", 2, &b), STORE_OK);
    assert_int_equal(b.len, 0);
    assert_int_equal(store_msg_read(t->st, U1, "INBOX", 3, &b), STORE_NOTFOUND);
    buf_free(&b);
    assert_int_equal(count_msgs(t->st, U1, "INBOX"), 2);
}

static void test_append_batch(void **state)
{
    struct tctx *t = *state;
    assert_int_equal(store_mailbox_create(t->st, U1, STORE_MBOX_ACTIVE, 1), STORE_OK);
    assert_int_equal(store_mailbox_create(t->st, U2, STORE_MBOX_ACTIVE, 1), STORE_OK);
    assert_int_equal(store_folder_create(t->st, U1, "Archive", 0), STORE_OK);

    enum { N = 40 };
    char bodies[N][64];
    struct store_append a[N];
    struct store_append_result res[N];
    uint8_t guid[STORE_GUID_LEN];
    memset(guid, 0xab, sizeof(guid));
    struct store_batch *b = store_batch_begin(t->st);
    for (int i = 0; i < N; i++) {
        snprintf(bodies[i], sizeof(bodies[i]), "Subject: %d\r\n\r\nbody %d\r\n", i, i);
        a[i] = mk(i % 3 == 2 ? U2 : U1, NULL, bodies[i]);
    }
    a[5].guid = guid;
    a[7].user = a[8].user = a[9].user = U1;
    a[7].folder = "Archive";
    a[7].uid = 100;          /* kept */
    a[8].folder = "Archive"; /* next after 100 */
    a[9].folder = "Archive";
    a[9].uid = 100;          /* taken within the batch */
    a[10].folder = "NoSuch"; /* not found */
    a[11].user = "nobody@example.org";
    a[12].flags = 0x100;   /* invalid */
    a[13].folder = "a\nb"; /* invalid */
    const char *users[N];
    for (int i = 0; i < N; i++) {
        users[i] = a[i].user;
        store_batch_add(b, &a[i], &res[i]);
    }
    /* The batch owns copies of the strings: clobbering ours is harmless. */
    for (int i = 0; i < N; i++)
        a[i].folder = a[i].user = "garbage";
    assert_int_equal(store_batch_count(b), N);
    const char *err = NULL;
    assert_int_equal(store_batch_commit(&b, &err), 0);

    assert_int_equal(res[7].status, STORE_OK);
    assert_int_equal(res[7].uid, 100);
    assert_int_equal(res[8].status, STORE_OK);
    assert_int_equal(res[8].uid, 101);
    assert_int_equal(res[9].status, STORE_EXISTS);
    assert_int_equal(res[10].status, STORE_NOTFOUND);
    assert_int_equal(res[11].status, STORE_NOTFOUND);
    assert_int_equal(res[12].status, STORE_INVALID);
    assert_int_equal(res[13].status, STORE_INVALID);
    assert_memory_equal(res[5].guid, guid, STORE_GUID_LEN);

    uint32_t last_uid[2] = {0, 0};
    uint64_t last_modseq[2] = {0, 0};
    size_t ok[2] = {0, 0};
    for (int i = 0; i < N; i++) {
        if (i >= 7 && i <= 13)
            continue;
        int u = i % 3 == 2;
        assert_int_equal(res[i].status, STORE_OK);
        assert_true(res[i].uid > last_uid[u]);
        assert_true(res[i].modseq > last_modseq[u]);
        last_uid[u] = res[i].uid;
        last_modseq[u] = res[i].modseq;
        ok[u]++;
        for (int j = 0; j < i; j++)
            if (res[j].status == STORE_OK)
                assert_memory_not_equal(res[i].guid, res[j].guid, STORE_GUID_LEN);
    }
    reopen(t);
    for (int i = 0; i < N; i++) {
        if (i >= 9 && i <= 13)
            continue;
        const char *user = users[i];
        const char *folder = (i == 7 || i == 8) ? "Archive" : "INBOX";
        assert_body(t->st, user, folder, res[i].uid, bodies[i], strlen(bodies[i]));
        struct msg_find m;
        assert_true(find_msg(t->st, user, folder, res[i].uid, &m));
        uint8_t sha[SHA256_LEN];
        sha256_buf(bodies[i], strlen(bodies[i]), sha);
        assert_memory_equal(m.m.sha256, sha, SHA256_LEN);
        assert_memory_equal(m.m.guid, res[i].guid, STORE_GUID_LEN);
    }
    assert_int_equal(count_msgs(t->st, U1, "INBOX"), ok[0]);
    assert_int_equal(count_msgs(t->st, U2, "INBOX"), ok[1]);
    assert_int_equal(count_msgs(t->st, U1, "Archive"), 2);
    assert_int_equal(mbox_modseq(t->st, U1), last_modseq[0]);
    struct store_mailbox mb;
    assert_int_equal(store_mailbox_get(t->st, U1, &mb), STORE_OK);
    assert_int_equal(mb.messages, ok[0] + 2);

    /* An empty batch and an aborted one. */
    b = store_batch_begin(t->st);
    assert_int_equal(store_batch_commit(&b, &err), 0);
    b = store_batch_begin(t->st);
    struct store_append x = mk(U1, NULL, "x");
    struct store_append_result xr;
    store_batch_add(b, &x, &xr);
    store_batch_abort(&b);
    assert_null(b);
    assert_int_equal(count_msgs(t->st, U1, "INBOX"), ok[0]);
}

static void test_require_live(void **state)
{
    struct tctx *t = *state;
    assert_int_equal(store_mailbox_create(t->st, U1, STORE_MBOX_ACTIVE, 7), STORE_OK);
    assert_int_equal(store_mailbox_create(t->st, U2, STORE_MBOX_ACTIVE, 7), STORE_OK);
    struct store_append a = mk(U1, NULL, "live\r\n");
    a.require_live = true;
    a.epoch = 7;
    struct store_append_result res;
    assert_int_equal(append1(t->st, &a, &res), STORE_OK);

    a.epoch = 6;
    assert_int_equal(append1(t->st, &a, &res), STORE_NOTLIVE);
    assert_int_equal(res.mailbox.state, STORE_MBOX_ACTIVE);
    assert_int_equal(res.mailbox.epoch, 7);
    assert_string_equal(res.mailbox.user, U1);
    assert_int_equal(count_msgs(t->st, U1, "INBOX"), 1);

    /* Fenced: nothing is written, the state is reported. */
    assert_int_equal(
        store_mailbox_set_state(t->st, U2, STORE_MBOX_ACTIVE, STORE_MBOX_FENCED, 8, NULL),
        STORE_OK);
    uint64_t m2 = mbox_modseq(t->st, U2);
    struct store_append c = mk(U2, NULL, "late\r\n");
    c.require_live = true;
    c.epoch = 7;
    assert_int_equal(append1(t->st, &c, &res), STORE_NOTLIVE);
    assert_int_equal(res.mailbox.state, STORE_MBOX_FENCED);
    assert_int_equal(res.mailbox.epoch, 8);
    assert_int_equal(count_msgs(t->st, U2, "INBOX"), 0);
    assert_int_equal(mbox_modseq(t->st, U2), m2);

    /* Mixed batch: the NOTLIVE item fails alone. */
    a.epoch = 7;
    struct store_append items[3] = {a, c, a};
    struct store_append_result r[3];
    struct store_batch *b = store_batch_begin(t->st);
    for (int i = 0; i < 3; i++)
        store_batch_add(b, &items[i], &r[i]);
    const char *err = NULL;
    assert_int_equal(store_batch_commit(&b, &err), 0);
    assert_int_equal(r[0].status, STORE_OK);
    assert_int_equal(r[1].status, STORE_NOTLIVE);
    assert_int_equal(r[1].mailbox.state, STORE_MBOX_FENCED);
    assert_int_equal(r[2].status, STORE_OK);
    assert_true(r[2].uid > r[0].uid);
    reopen(t);
    assert_int_equal(count_msgs(t->st, U1, "INBOX"), 3);
    assert_int_equal(count_msgs(t->st, U2, "INBOX"), 0);

    /* Without require_live a fenced mailbox refuses too (it is immutable);
     * a staged one accepts (test_state_staged). */
    c.require_live = false;
    assert_int_equal(append1(t->st, &c, &res), STORE_NOTLIVE);
    assert_int_equal(res.mailbox.state, STORE_MBOX_FENCED);
    assert_int_equal(count_msgs(t->st, U2, "INBOX"), 0);
}

static void test_delivery_dup(void **state)
{
    struct tctx *t = *state;
    assert_int_equal(store_mailbox_create(t->st, U1, STORE_MBOX_ACTIVE, 1), STORE_OK);
    struct store_append a = mk(U1, NULL, "once\r\n");
    a.delivery_id = "q123.1";
    a.require_live = true;
    a.epoch = 1;
    struct store_append_result r1, r2;
    assert_int_equal(append1(t->st, &a, &r1), STORE_OK);
    assert_false(r1.duplicate);
    uint64_t ms = mbox_modseq(t->st, U1);
    assert_int_equal(append1(t->st, &a, &r2), STORE_OK);
    assert_true(r2.duplicate);
    assert_int_equal(r2.uid, r1.uid);
    assert_int_equal(r2.uidvalidity, r1.uidvalidity);
    assert_memory_equal(r2.guid, r1.guid, STORE_GUID_LEN);
    assert_int_equal(count_msgs(t->st, U1, "INBOX"), 1);
    assert_int_equal(mbox_modseq(t->st, U1), ms);

    /* Twice in one batch, plus a new one. */
    struct store_append b2 = a;
    b2.delivery_id = "q124.1";
    struct store_append_result r[3];
    struct store_batch *b = store_batch_begin(t->st);
    store_batch_add(b, &b2, &r[0]);
    store_batch_add(b, &b2, &r[1]);
    store_batch_add(b, &a, &r[2]);
    const char *err = NULL;
    assert_int_equal(store_batch_commit(&b, &err), 0);
    assert_int_equal(r[0].status, STORE_OK);
    assert_false(r[0].duplicate);
    assert_int_equal(r[1].status, STORE_OK);
    assert_true(r[1].duplicate);
    assert_int_equal(r[1].uid, r[0].uid);
    assert_true(r[2].duplicate);
    assert_int_equal(r[2].uid, r1.uid);
    assert_int_equal(count_msgs(t->st, U1, "INBOX"), 2);

    /* Survives a reopen; and a duplicate is reported even once fenced: the
     * first delivery did happen. */
    reopen(t);
    assert_int_equal(
        store_mailbox_set_state(t->st, U1, STORE_MBOX_ACTIVE, STORE_MBOX_FENCED, 2, NULL),
        STORE_OK);
    assert_int_equal(append1(t->st, &a, &r2), STORE_OK);
    assert_true(r2.duplicate);
    assert_int_equal(r2.uid, r1.uid);
    struct store_mailbox mb;
    assert_int_equal(store_mailbox_get(t->st, U1, &mb), STORE_OK);
    assert_int_equal(mb.messages, 2);
}

static void test_flags(void **state)
{
    struct tctx *t = *state;
    assert_int_equal(store_mailbox_create(t->st, U1, STORE_MBOX_ACTIVE, 1), STORE_OK);
    uint32_t uid = deliver(t->st, U1, "flags\r\n");
    uint64_t m0 = mbox_modseq(t->st, U1), m;
    struct msg_find f;

    assert_int_equal(store_msg_set_flags(t->st, U1, "INBOX", uid, STORE_FLAGS_ADD,
                                         STORE_F_SEEN | STORE_F_FLAGGED, "$Work $todo", 0, &m),
                     STORE_OK);
    assert_true(m > m0);
    assert_int_equal(m, mbox_modseq(t->st, U1));
    assert_true(find_msg(t->st, U1, "INBOX", uid, &f));
    assert_int_equal(f.m.flags, STORE_F_SEEN | STORE_F_FLAGGED);
    assert_string_equal(f.kw, "$Work $todo");
    assert_int_equal(f.m.modseq, m);

    uint64_t m1;
    assert_int_equal(store_msg_set_flags(t->st, U1, "INBOX", uid, STORE_FLAGS_ADD, STORE_F_ANSWERED,
                                         "$TODO $x", 0, &m1),
                     STORE_OK);
    assert_true(m1 > m);
    assert_true(find_msg(t->st, U1, "INBOX", uid, &f));
    assert_int_equal(f.m.flags, STORE_F_SEEN | STORE_F_FLAGGED | STORE_F_ANSWERED);
    assert_string_equal(f.kw, "$Work $todo $x");

    assert_int_equal(store_msg_set_flags(t->st, U1, "INBOX", uid, STORE_FLAGS_REMOVE, STORE_F_SEEN,
                                         "$work", 0, &m1),
                     STORE_OK);
    assert_true(find_msg(t->st, U1, "INBOX", uid, &f));
    assert_int_equal(f.m.flags, STORE_F_FLAGGED | STORE_F_ANSWERED);
    assert_string_equal(f.kw, "$todo $x");

    /* CONDSTORE: changed since m → conflict, nothing changes. */
    uint64_t before = mbox_modseq(t->st, U1);
    assert_int_equal(
        store_msg_set_flags(t->st, U1, "INBOX", uid, STORE_FLAGS_SET, STORE_F_DRAFT, NULL, m, NULL),
        STORE_CONFLICT);
    assert_int_equal(mbox_modseq(t->st, U1), before);
    assert_int_equal(store_msg_set_flags(t->st, U1, "INBOX", uid, STORE_FLAGS_SET, STORE_F_DRAFT,
                                         NULL, before, &m1),
                     STORE_OK);
    reopen(t);
    assert_true(find_msg(t->st, U1, "INBOX", uid, &f));
    assert_int_equal(f.m.flags, STORE_F_DRAFT);
    assert_string_equal(f.kw, "");
    assert_int_equal(f.m.modseq, m1);

    /* A no-op store changes nothing, not even the modseq. */
    uint64_t m2;
    assert_int_equal(
        store_msg_set_flags(t->st, U1, "INBOX", uid, STORE_FLAGS_ADD, STORE_F_DRAFT, NULL, 0, &m2),
        STORE_OK);
    assert_int_equal(m2, m1);

    assert_int_equal(
        store_msg_set_flags(t->st, U1, "INBOX", uid, STORE_FLAGS_ADD, 0x40, NULL, 0, NULL),
        STORE_INVALID);
    assert_int_equal(
        store_msg_set_flags(t->st, U1, "INBOX", uid, STORE_FLAGS_ADD, 0, "a  b", 0, NULL),
        STORE_INVALID);
    assert_int_equal(store_msg_set_flags(t->st, U1, "INBOX", uid + 1, STORE_FLAGS_ADD, STORE_F_SEEN,
                                         NULL, 0, NULL),
                     STORE_NOTFOUND);
    assert_int_equal(
        store_msg_set_flags(t->st, U1, "Nope", uid, STORE_FLAGS_ADD, STORE_F_SEEN, NULL, 0, NULL),
        STORE_NOTFOUND);
}

static void test_expunge(void **state)
{
    struct tctx *t = *state;
    assert_int_equal(store_mailbox_create(t->st, U1, STORE_MBOX_ACTIVE, 1), STORE_OK);
    uint32_t u1 = deliver(t->st, U1, "one\r\n");
    uint32_t u2 = deliver(t->st, U1, "two!\r\n");
    uint64_t since = mbox_modseq(t->st, U1);
    assert_int_equal(store_msg_expunge(t->st, U1, "INBOX", u1), STORE_OK);
    assert_int_equal(store_msg_expunge(t->st, U1, "INBOX", u1), STORE_NOTFOUND);
    reopen(t);
    assert_int_equal(count_msgs(t->st, U1, "INBOX"), 1);
    struct msg_find f;
    assert_false(find_msg(t->st, U1, "INBOX", u1, &f));
    assert_true(find_msg(t->st, U1, "INBOX", u2, &f));
    struct buf b;
    buf_init(&b, 0);
    assert_int_equal(store_msg_read(t->st, U1, "INBOX", u1, &b), STORE_NOTFOUND);
    buf_free(&b);

    struct changes c;
    get_changes(t->st, U1, since, &c);
    assert_int_equal(c.nfolders, 0);
    assert_int_equal(c.nmsgs, 1);
    assert_int_equal(c.msgs[0].uid, u1);
    assert_true(c.msgs[0].expunged);
    assert_true(c.msgs[0].modseq > since);
    assert_int_equal(c.msgs[0].modseq, mbox_modseq(t->st, U1));

    struct store_mailbox mb;
    assert_int_equal(store_mailbox_get(t->st, U1, &mb), STORE_OK);
    assert_int_equal(mb.messages, 1);
    assert_int_equal(mb.bytes, strlen("two!\r\n"));
    struct store_folder fo;
    assert_int_equal(store_folder_get(t->st, U1, "INBOX", &fo), STORE_OK);
    assert_int_equal(fo.messages, 1);

    /* A UID is never reused, even after an expunge. */
    assert_true(deliver(t->st, U1, "three\r\n") > u2);
}

static void test_folders(void **state)
{
    struct tctx *t = *state;
    struct store *st = t->st;
    assert_int_equal(store_folder_create(st, U1, "Sent", 0), STORE_NOTFOUND);
    assert_int_equal(store_mailbox_create(st, U1, STORE_MBOX_ACTIVE, 1), STORE_OK);
    uint64_t m0 = mbox_modseq(st, U1);
    assert_int_equal(store_folder_create(st, U1, "Sent", 0), STORE_OK);
    assert_int_equal(store_folder_create(st, U1, "Sent", 0), STORE_EXISTS);
    assert_int_equal(store_folder_create(st, U1, "iNbOx", 0), STORE_EXISTS);
    assert_int_equal(store_folder_create(st, U1, "Work/2024", 1234), STORE_OK);
    struct store_folder sent, work, inbox;
    assert_int_equal(store_folder_get(st, U1, "Sent", &sent), STORE_OK);
    assert_int_equal(store_folder_get(st, U1, "Work/2024", &work), STORE_OK);
    assert_int_equal(store_folder_get(st, U1, "INBOX", &inbox), STORE_OK);
    assert_int_equal(sent.modseq, m0 + 1);
    assert_int_equal(work.modseq, m0 + 2);
    assert_int_equal(work.uidvalidity, 1234);
    assert_true(sent.uidvalidity > inbox.uidvalidity);
    assert_int_equal(sent.uidnext, 1);
    assert_false(sent.deleted);

    struct store_append a = mk(U1, "Sent", "sent mail\r\n");
    struct store_append_result res;
    assert_int_equal(append1(st, &a, &res), STORE_OK);
    assert_int_equal(res.uidvalidity, sent.uidvalidity);

    /* Rename keeps the id and the messages. */
    assert_int_equal(store_folder_rename(st, U1, "Sent", "Work/2024"), STORE_EXISTS);
    assert_int_equal(store_folder_rename(st, U1, "Sent", "inbox"), STORE_EXISTS);
    assert_int_equal(store_folder_rename(st, U1, "INBOX", "Old"), STORE_INVALID);
    assert_int_equal(store_folder_rename(st, U1, "Nope", "Old"), STORE_NOTFOUND);
    assert_int_equal(store_folder_rename(st, U1, "Sent", "Sent Items"), STORE_OK);
    assert_int_equal(store_folder_get(st, U1, "Sent", &sent), STORE_NOTFOUND);
    struct store_folder si;
    assert_int_equal(store_folder_get(st, U1, "Sent Items", &si), STORE_OK);
    assert_int_equal(si.modseq, mbox_modseq(st, U1));
    assert_int_equal(si.messages, 1);
    assert_body(st, U1, "Sent Items", res.uid, "sent mail\r\n", 11);

    struct store_folder *list;
    size_t n;
    assert_int_equal(store_folder_list(st, U1, &list, &n), STORE_OK);
    assert_int_equal(n, 3);
    assert_string_equal(list[0].name, "INBOX");
    assert_string_equal(list[1].name, "Sent Items");
    assert_string_equal(list[2].name, "Work/2024");
    free(list);

    /* Delete: tombstones for the folder and its messages. */
    uint64_t since = mbox_modseq(st, U1);
    assert_int_equal(store_folder_delete(st, U1, "INBOX"), STORE_INVALID);
    assert_int_equal(store_folder_delete(st, U1, "inbox"), STORE_INVALID);
    assert_int_equal(store_folder_delete(st, U1, "Nope"), STORE_NOTFOUND);
    assert_int_equal(store_folder_delete(st, U1, "Sent Items"), STORE_OK);
    assert_int_equal(store_folder_delete(st, U1, "Sent Items"), STORE_NOTFOUND);
    reopen(t);
    st = t->st;
    assert_int_equal(store_folder_get(st, U1, "Sent Items", &sent), STORE_NOTFOUND);
    struct changes c;
    get_changes(st, U1, since, &c);
    assert_int_equal(c.nfolders, 1);
    assert_true(c.folders[0].deleted);
    assert_int_equal(c.folders[0].id, si.id);
    assert_true(c.folders[0].modseq > since);
    assert_int_equal(c.nmsgs, 1);
    assert_true(c.msgs[0].expunged);
    assert_int_equal(c.msgs[0].folder_id, si.id);
    struct store_mailbox mb;
    assert_int_equal(store_mailbox_get(st, U1, &mb), STORE_OK);
    assert_int_equal(mb.messages, 0);
    assert_int_equal(mb.bytes, 0);

    /* The name is free again; a new folder gets a new id and UIDVALIDITY. */
    assert_int_equal(store_folder_create(st, U1, "Sent Items", 0), STORE_OK);
    struct store_folder again;
    assert_int_equal(store_folder_get(st, U1, "Sent Items", &again), STORE_OK);
    assert_true(again.id != si.id);
    assert_true(again.uidvalidity > si.uidvalidity);
    assert_int_equal(again.messages, 0);

    /* Everything since 0: every folder once, ascending. */
    get_changes(st, U1, 0, &c);
    assert_int_equal(c.nfolders, 4);
    assert_string_equal(c.folders[0].name, "INBOX");
}

static void test_changes_since(void **state)
{
    struct tctx *t = *state;
    assert_int_equal(store_mailbox_create(t->st, U1, STORE_MBOX_ACTIVE, 1), STORE_OK);
    assert_int_equal(store_mailbox_create(t->st, U2, STORE_MBOX_ACTIVE, 1), STORE_OK);
    enum { N = 1000 };
    struct store_append_result *res = xcalloc(N, sizeof(*res));
    struct store_batch *b = store_batch_begin(t->st);
    struct store_append a = mk(U1, NULL, "bulk message\r\n");
    for (int i = 0; i < N; i++)
        store_batch_add(b, &a, &res[i]);
    const char *err = NULL;
    assert_int_equal(store_batch_commit(&b, &err), 0);
    for (int i = 0; i < N; i++)
        assert_int_equal(res[i].uid, (uint32_t)i + 1);
    free(res);
    deliver(t->st, U2, "other mailbox\r\n");

    uint64_t since = mbox_modseq(t->st, U1);
    struct changes c;
    get_changes(t->st, U1, since, &c);
    assert_int_equal(c.nfolders + c.nmsgs, 0);

    assert_int_equal(
        store_msg_set_flags(t->st, U1, "INBOX", 500, STORE_FLAGS_ADD, STORE_F_SEEN, NULL, 0, NULL),
        STORE_OK);
    assert_int_equal(store_msg_expunge(t->st, U1, "INBOX", 10), STORE_OK);
    uint32_t u = deliver(t->st, U1, "new\r\n");
    deliver(t->st, U2, "other mailbox again\r\n");
    reopen(t);
    get_changes(t->st, U1, since, &c);
    assert_int_equal(c.nfolders, 0);
    assert_int_equal(c.nmsgs, 3);
    assert_int_equal(c.msgs[0].uid, 500);
    assert_int_equal(c.msgs[0].flags, STORE_F_SEEN);
    assert_int_equal(c.msgs[1].uid, 10);
    assert_true(c.msgs[1].expunged);
    assert_int_equal(c.msgs[2].uid, u);
    assert_int_equal(c.msgs[0].modseq, since + 1);
    assert_int_equal(c.msgs[2].modseq, since + 3);
    get_changes(t->st, U1, since + 2, &c);
    assert_int_equal(c.nmsgs, 1);
    get_changes(t->st, U1, 0, &c);
    assert_int_equal(c.nfolders, 1);
    assert_int_equal(c.nmsgs, N + 1);
    assert_int_equal(count_msgs(t->st, U1, "INBOX"), N);
}

static void test_invalid(void **state)
{
    struct tctx *t = *state;
    struct store *st = t->st;
    assert_int_equal(store_mailbox_create(st, U1, STORE_MBOX_ACTIVE, 1), STORE_OK);
    char longname[STORE_FOLDER_MAX + 2];
    memset(longname, 'x', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    const char *bad_folders[] = {"", longname, "a\r\nb", "a\nb", "tab\there", "del\x7f"};
    for (size_t i = 0; i < ARRAY_SIZE(bad_folders); i++) {
        assert_int_equal(store_folder_create(st, U1, bad_folders[i], 0), STORE_INVALID);
        struct store_append a = mk(U1, bad_folders[i], "x");
        struct store_append_result res;
        assert_int_equal(append1(st, &a, &res), STORE_INVALID);
    }
    longname[STORE_FOLDER_MAX] = '\0'; /* exactly the maximum is fine */
    assert_int_equal(store_folder_create(st, U1, longname, 0), STORE_OK);
    assert_int_equal(store_folder_create(st, U1, "Caf\xc3\xa9 & more", 0), STORE_OK);

    const char *bad_kw[] = {"a  b", " a", "a ", "\\Seen", "(x", "a\tb", "x]"};
    for (size_t i = 0; i < ARRAY_SIZE(bad_kw); i++) {
        struct store_append a = mk(U1, NULL, "x");
        a.keywords = bad_kw[i];
        struct store_append_result res;
        assert_int_equal(append1(st, &a, &res), STORE_INVALID);
    }
    char longkw[STORE_KEYWORDS_MAX + 2];
    memset(longkw, 'k', sizeof(longkw) - 1);
    longkw[sizeof(longkw) - 1] = '\0';
    struct store_append a = mk(U1, NULL, "x");
    struct store_append_result res;
    a.keywords = longkw;
    assert_int_equal(append1(st, &a, &res), STORE_INVALID);
    a.keywords = "$ok $Also_ok";
    a.flags = STORE_F_ALL + 1;
    assert_int_equal(append1(st, &a, &res), STORE_INVALID);
    a.flags = STORE_F_ALL;
    a.delivery_id = "0123456789012345678901234567890123456789012345678901234567890123456789";
    assert_int_equal(append1(st, &a, &res), STORE_INVALID);
    a.delivery_id = NULL;
    a.user = "no-at-sign";
    assert_int_equal(append1(st, &a, &res), STORE_INVALID);
    a.user = U1;
    assert_int_equal(append1(st, &a, &res), STORE_OK);
    assert_int_equal(count_msgs(st, U1, "INBOX"), 1);

    struct store_folder f;
    assert_int_equal(store_folder_get(st, U1, "", &f), STORE_INVALID);
    assert_int_equal(store_folder_rename(st, U1, "INBOX", "a\rb"), STORE_INVALID);
    assert_int_equal(store_folder_delete(st, U1, "a\rb"), STORE_INVALID);
    const char *err = NULL;
    size_t n = 0;
    assert_int_equal(store_msg_iter(st, U1, "a\rb", count_cb, &n, &err), -1);
    assert_non_null(err);
    assert_int_equal(store_msg_iter(st, U1, "Nope", count_cb, &n, &err), -1);
    struct changes c;
    struct store_change_cb cb = {.folder = ch_folder, .msg = ch_msg, .ctx = &c};
    assert_int_equal(store_changes(st, U2, 0, &cb, &err), -1);
}

static int stop_cb(void *ctx, const struct store_msg *m)
{
    (void)m;
    return ++*(int *)ctx == 2 ? 42 : 0;
}

static void test_iter_stop(void **state)
{
    struct tctx *t = *state;
    assert_int_equal(store_mailbox_create(t->st, U1, STORE_MBOX_ACTIVE, 1), STORE_OK);
    for (int i = 0; i < 5; i++)
        deliver(t->st, U1, "m\r\n");
    int calls = 0;
    const char *err = NULL;
    assert_int_equal(store_msg_iter(t->st, U1, "INBOX", stop_cb, &calls, &err), 42);
    assert_int_equal(calls, 2);
}

/* UIDNEXT is only ever raised, and only a raise is a change. */
static void test_raise_modseq(void **state)
{
    struct tctx *t = *state;
    assert_int_equal(store_mailbox_raise_modseq(t->st, U1, 5), STORE_NOTFOUND);
    assert_int_equal(store_mailbox_create(t->st, U1, STORE_MBOX_STAGED, 1), STORE_OK);
    uint64_t ms = mbox_modseq(t->st, U1);
    assert_int_equal(store_mailbox_raise_modseq(t->st, U1, ms + 1000), STORE_OK);
    assert_int_equal(mbox_modseq(t->st, U1), ms + 1000);
    /* Staged: set exactly, down too, but never below a row (INBOX has ms). */
    assert_int_equal(store_mailbox_raise_modseq(t->st, U1, ms + 3), STORE_OK);
    assert_int_equal(mbox_modseq(t->st, U1), ms + 3);
    assert_int_equal(store_mailbox_raise_modseq(t->st, U1, 0), STORE_OK);
    assert_int_equal(mbox_modseq(t->st, U1), ms);
    assert_int_equal(store_mailbox_raise_modseq(t->st, U1, ms + 1000), STORE_OK);
    /* The next change is stamped above the counter. */
    assert_int_equal(store_folder_create(t->st, U1, "Work", 0), STORE_OK);
    assert_int_equal(mbox_modseq(t->st, U1), ms + 1001);
    struct store_folder f;
    assert_int_equal(store_folder_get(t->st, U1, "Work", &f), STORE_OK);
    assert_int_equal(f.modseq, ms + 1001);
    reopen(t);
    assert_int_equal(mbox_modseq(t->st, U1), ms + 1001);
    /* Not below the folder row either. */
    assert_int_equal(store_mailbox_raise_modseq(t->st, U1, 1), STORE_OK);
    assert_int_equal(mbox_modseq(t->st, U1), ms + 1001);
    assert_int_equal(store_mailbox_raise_modseq(t->st, U1, (uint64_t)INT64_MAX + 1), STORE_INVALID);
    /* Active: raise only, never lowers it. */
    assert_int_equal(
        store_mailbox_set_state(t->st, U1, STORE_MBOX_STAGED, STORE_MBOX_ACTIVE, 1, NULL),
        STORE_OK);
    assert_int_equal(store_mailbox_raise_modseq(t->st, U1, ms + 2000), STORE_OK);
    assert_int_equal(store_mailbox_raise_modseq(t->st, U1, ms + 1500), STORE_OK);
    assert_int_equal(mbox_modseq(t->st, U1), ms + 2000);
    /* State guard: not while fenced. */
    assert_int_equal(
        store_mailbox_set_state(t->st, U1, STORE_MBOX_ACTIVE, STORE_MBOX_FENCED, 1, NULL),
        STORE_OK);
    uint64_t fenced = mbox_modseq(t->st, U1);
    assert_int_equal(store_mailbox_raise_modseq(t->st, U1, fenced + 50), STORE_NOTLIVE);
    assert_int_equal(mbox_modseq(t->st, U1), fenced);
}

static void test_set_uidnext(void **state)
{
    struct tctx *t = *state;
    assert_int_equal(store_mailbox_create(t->st, U1, STORE_MBOX_STAGED, 1), STORE_OK);
    assert_int_equal(store_folder_create(t->st, U1, "Work", 0), STORE_OK);
    uint64_t ms = mbox_modseq(t->st, U1);
    assert_int_equal(store_folder_set_uidnext(t->st, U1, "Work", 10), STORE_OK);
    assert_int_equal(mbox_modseq(t->st, U1), ms + 1);
    struct changes c;
    get_changes(t->st, U1, ms, &c);
    assert_int_equal(c.nfolders, 1);
    assert_int_equal(c.nmsgs, 0);
    assert_string_equal(c.folders[0].name, "Work");
    assert_int_equal(c.folders[0].uidnext, 10);
    assert_int_equal(c.folders[0].modseq, ms + 1);

    /* Lower or equal: nothing written. */
    assert_int_equal(store_folder_set_uidnext(t->st, U1, "Work", 5), STORE_OK);
    assert_int_equal(store_folder_set_uidnext(t->st, U1, "work", 10), STORE_NOTFOUND);
    assert_int_equal(store_folder_set_uidnext(t->st, U1, "Work", 10), STORE_OK);
    assert_int_equal(store_folder_set_uidnext(t->st, U1, "Work", 0), STORE_OK);
    assert_int_equal(mbox_modseq(t->st, U1), ms + 1);

    reopen(t);
    struct store_folder f;
    assert_int_equal(store_folder_get(t->st, U1, "Work", &f), STORE_OK);
    assert_int_equal(f.uidnext, 10);
    assert_int_equal(f.modseq, ms + 1);
    struct store_append a = mk(U1, "Work", "next\r\n");
    struct store_append_result res;
    assert_int_equal(append1(t->st, &a, &res), STORE_OK);
    assert_int_equal(res.uid, 10);
    assert_int_equal(store_folder_set_uidnext(t->st, U1, "inbox", UINT32_MAX), STORE_OK);
    assert_int_equal(store_folder_get(t->st, U1, "INBOX", &f), STORE_OK);
    assert_int_equal(f.uidnext, UINT32_MAX);

    assert_int_equal(store_folder_set_uidnext(t->st, U1, "Nope", 10), STORE_NOTFOUND);
    assert_int_equal(store_folder_set_uidnext(t->st, U2, "INBOX", 10), STORE_NOTFOUND);
    assert_int_equal(store_folder_set_uidnext(t->st, U1, "", 10), STORE_INVALID);
    assert_int_equal(store_folder_set_uidnext(t->st, U1, NULL, 10), STORE_INVALID);
    assert_int_equal(store_folder_set_uidnext(t->st, "not an address", "INBOX", 10), STORE_INVALID);
}

struct dl {
    size_t n;
    char id[8][STORE_DELIVERY_ID_MAX + 1];
    char folder[8][STORE_FOLDER_MAX + 1];
    uint32_t uid[8];
    int stop_at; /* return 7 at this call (1-based), 0 = never */
};

static int dl_cb(void *ctx, const char *id, const char *folder, uint32_t uid)
{
    struct dl *d = ctx;
    if (d->n < 8) {
        str_copy(d->id[d->n], id, sizeof(d->id[0]));
        str_copy(d->folder[d->n], folder, sizeof(d->folder[0]));
        d->uid[d->n] = uid;
    }
    d->n++;
    return (int)d->n == d->stop_at ? 7 : 0;
}

static void get_dl(struct store *st, const char *user, struct dl *d)
{
    memset(d, 0, sizeof(*d));
    const char *err = NULL;
    assert_int_equal(store_delivery_iter(st, user, dl_cb, d, &err), 0);
}

static void get_dl_from(struct store *st, const char *user, const char *after, struct dl *d)
{
    memset(d, 0, sizeof(*d));
    const char *err = NULL;
    assert_int_equal(store_delivery_iter_from(st, user, after, 0, UINT64_MAX, dl_cb, d, &err), 0);
}

/* Many delivery ids in one transaction, each with its own answer; a
 * listing resumed after a given id. */
static void test_delivery_many(void **state)
{
    struct tctx *t = *state;
    struct store *st = t->st;
    struct dl d;
    assert_int_equal(store_mailbox_create(st, U1, STORE_MBOX_STAGED, 1), STORE_OK);
    assert_int_equal(store_folder_create(st, U1, "Work", 0), STORE_OK);
    struct store_append a = mk(U1, "Work", "copied\r\n");
    a.uid = 5;
    struct store_append_result res;
    assert_int_equal(append1(st, &a, &res), STORE_OK);
    uint64_t ms = mbox_modseq(st, U1);
    const struct store_delivery recs[] = {
        {"q.b", "Work", 5}, {"q.a", "work2", 9}, {"q.b", "INBOX", 1},
        {"", "Work", 5},    {"q.c", "Work", 0},  {"q.d", NULL, 1},
    };
    enum store_status out[6];
    assert_int_equal(store_delivery_add_many(st, U1, recs, 6, out), 0);
    assert_int_equal(out[0], STORE_OK);
    assert_int_equal(out[1], STORE_OK);
    assert_int_equal(out[2], STORE_EXISTS); /* the same id earlier in the batch */
    assert_int_equal(out[3], STORE_INVALID);
    assert_int_equal(out[4], STORE_INVALID);
    assert_int_equal(out[5], STORE_INVALID);
    assert_int_equal(mbox_modseq(st, U1), ms); /* not a change */
    assert_int_equal(store_delivery_add_many(st, U1, recs, 0, out), 0);

    reopen(t);
    st = t->st;
    get_dl_from(st, U1, NULL, &d);
    assert_int_equal(d.n, 2);
    assert_string_equal(d.id[0], "q.a");
    assert_string_equal(d.folder[0], "work2");
    assert_int_equal(d.uid[0], 9);
    assert_string_equal(d.id[1], "q.b");
    assert_string_equal(d.folder[1], "Work");
    get_dl_from(st, U1, "q.a", &d);
    assert_int_equal(d.n, 1);
    assert_string_equal(d.id[0], "q.b");
    get_dl_from(st, U1, "q.a0", &d);
    assert_int_equal(d.n, 1);
    get_dl_from(st, U1, "q.b", &d);
    assert_int_equal(d.n, 0);
    get_dl_from(st, U1, "", &d);
    assert_int_equal(d.n, 2);

    /* By the modseq of their message: q.b's message (Work/5) was appended
     * at or before ms; q.a has no message here and is always listed. */
    const char *err = NULL;
    memset(&d, 0, sizeof(d));
    assert_int_equal(store_delivery_iter_from(st, U1, NULL, ms, UINT64_MAX, dl_cb, &d, &err), 0);
    assert_int_equal(d.n, 1);
    assert_string_equal(d.id[0], "q.a");
    memset(&d, 0, sizeof(d));
    assert_int_equal(store_delivery_iter_from(st, U1, NULL, 0, ms, dl_cb, &d, &err), 0);
    assert_int_equal(d.n, 2);
    assert_int_equal(
        store_msg_set_flags(st, U1, "Work", 5, STORE_FLAGS_SET, STORE_F_SEEN, NULL, 0, NULL),
        STORE_OK);
    memset(&d, 0, sizeof(d));
    assert_int_equal(store_delivery_iter_from(st, U1, NULL, ms, UINT64_MAX, dl_cb, &d, &err), 0);
    assert_int_equal(d.n, 2);
    memset(&d, 0, sizeof(d));
    assert_int_equal(store_delivery_iter_from(st, U1, "q.a", 0, ms, dl_cb, &d, &err), 0);
    assert_int_equal(d.n, 0);

    /* No mailbox, or one that refuses changes: every item says so. */
    assert_int_equal(store_delivery_add_many(st, U2, recs, 2, out), 0);
    assert_int_equal(out[0], STORE_NOTFOUND);
    assert_int_equal(out[1], STORE_NOTFOUND);
    assert_int_equal(store_mailbox_set_state(st, U1, STORE_MBOX_STAGED, STORE_MBOX_FENCED, 1, NULL),
                     STORE_OK);
    const struct store_delivery more[] = {{"q.e", "Work", 5}, {"q.f", "Work", 5}};
    assert_int_equal(store_delivery_add_many(st, U1, more, 2, out), 0);
    assert_int_equal(out[0], STORE_NOTLIVE);
    assert_int_equal(out[1], STORE_NOTLIVE);
    get_dl_from(st, U1, NULL, &d);
    assert_int_equal(d.n, 2);
}

/* Delivery ids: listed sorted with their folder's current name; added for
 * existing messages (a move's copy), after which a retried delivery is a
 * duplicate. */
static void test_delivery_ids(void **state)
{
    struct tctx *t = *state;
    struct store *st = t->st;
    struct dl d;
    const char *err = NULL;
    assert_int_equal(store_delivery_iter(st, U1, dl_cb, &d, &err), -1);
    assert_non_null(err);
    assert_int_equal(store_mailbox_create(st, U1, STORE_MBOX_STAGED, 1), STORE_OK);
    get_dl(st, U1, &d);
    assert_int_equal(d.n, 0);
    assert_int_equal(store_folder_create(st, U1, "Work", 0), STORE_OK);
    struct store_append a = mk(U1, "Work", "copied\r\n");
    a.uid = 5;
    struct store_append_result res;
    assert_int_equal(append1(st, &a, &res), STORE_OK);
    a.uid = 6;
    assert_int_equal(append1(st, &a, &res), STORE_OK);
    assert_int_equal(store_msg_expunge(st, U1, "Work", 6), STORE_OK);
    uint64_t ms = mbox_modseq(st, U1);

    assert_int_equal(store_delivery_add(st, U1, "q2.1", "Work", 5), STORE_OK);
    /* An expunged message keeps its id: a retry must still be a dup. */
    assert_int_equal(store_delivery_add(st, U1, "q1.1", "Work", 6), STORE_OK);
    assert_int_equal(store_delivery_add(st, U1, "q2.1", "Work", 5), STORE_EXISTS);
    assert_int_equal(store_delivery_add(st, U1, "q2.1", "INBOX", 1), STORE_EXISTS);
    assert_int_equal(store_delivery_add(st, U2, "q3.1", "Work", 5), STORE_NOTFOUND);
    assert_int_equal(store_delivery_add(st, U1, "q3.1", "Work", 0), STORE_INVALID);
    assert_int_equal(store_delivery_add(st, U1, "", "Work", 5), STORE_INVALID);
    assert_int_equal(store_delivery_add(st, U1, "a\nb", "Work", 5), STORE_INVALID);
    assert_int_equal(store_delivery_add(st, U1, NULL, "Work", 5), STORE_INVALID);
    assert_int_equal(store_delivery_add(st, U1, "q3.1", NULL, 5), STORE_INVALID);
    assert_int_equal(mbox_modseq(st, U1), ms);

    reopen(t);
    st = t->st;
    get_dl(st, U1, &d);
    assert_int_equal(d.n, 2);
    assert_string_equal(d.id[0], "q1.1");
    assert_string_equal(d.folder[0], "Work");
    assert_int_equal(d.uid[0], 6);
    assert_string_equal(d.id[1], "q2.1");
    assert_int_equal(d.uid[1], 5);

    /* A delivery after activation: listed too; retries are duplicates. */
    assert_int_equal(store_mailbox_set_state(st, U1, STORE_MBOX_STAGED, STORE_MBOX_ACTIVE, 1, NULL),
                     STORE_OK);
    struct store_append l = mk(U1, NULL, "live\r\n");
    l.delivery_id = "q0.1";
    assert_int_equal(append1(st, &l, &res), STORE_OK);
    uint32_t luid = res.uid;
    l.delivery_id = "q2.1";
    assert_int_equal(append1(st, &l, &res), STORE_OK);
    assert_true(res.duplicate);
    assert_int_equal(res.uid, 5);
    l.delivery_id = "q1.1";
    assert_int_equal(append1(st, &l, &res), STORE_OK);
    assert_true(res.duplicate);
    assert_int_equal(res.uid, 6);
    assert_int_equal(count_msgs(st, U1, "INBOX"), 1);

    /* Folder names as they are now, deleted folders included. */
    assert_int_equal(store_folder_rename(st, U1, "Work", "Play"), STORE_OK);
    get_dl(st, U1, &d);
    assert_int_equal(d.n, 3);
    assert_string_equal(d.id[0], "q0.1");
    assert_string_equal(d.folder[0], "INBOX");
    assert_int_equal(d.uid[0], luid);
    assert_string_equal(d.folder[1], "Play");
    assert_string_equal(d.folder[2], "Play");
    assert_int_equal(store_folder_delete(st, U1, "Play"), STORE_OK);
    get_dl(st, U1, &d);
    assert_int_equal(d.n, 3);
    assert_string_equal(d.folder[2], "Play");

    memset(&d, 0, sizeof(d));
    d.stop_at = 2;
    assert_int_equal(store_delivery_iter(st, U1, dl_cb, &d, &err), 7);
    assert_int_equal(d.n, 2);

    /* Deleting: refused (the guard); purged: the ids are gone too. */
    assert_int_equal(
        store_mailbox_set_state(st, U1, STORE_MBOX_ACTIVE, STORE_MBOX_DELETING, 2, NULL), STORE_OK);
    assert_int_equal(store_delivery_add(st, U1, "q9.1", "INBOX", luid), STORE_NOTLIVE);
    assert_int_equal(store_mailbox_purge(st, U1), STORE_OK);
    assert_int_equal(store_mailbox_create(st, U1, STORE_MBOX_ACTIVE, 3), STORE_OK);
    get_dl(st, U1, &d);
    assert_int_equal(d.n, 0);
}

/* An id a move copies for a message that never reached this store
 * (delivered, then expunged on the source before the copy): recorded all the
 * same, so a retried delivery after the switch is a duplicate and stores
 * nothing. */
static void test_delivery_ids_orphan(void **state)
{
    struct tctx *t = *state;
    struct store *st = t->st;
    struct dl d;
    assert_int_equal(store_mailbox_create(st, U1, STORE_MBOX_STAGED, 1), STORE_OK);
    assert_int_equal(store_folder_create(st, U1, "Work", 0), STORE_OK);
    uint64_t ms = mbox_modseq(st, U1);
    /* A folder that exists without the message, and no folder at all. */
    assert_int_equal(store_delivery_add(st, U1, "q3.1", "Work", 7), STORE_OK);
    assert_int_equal(store_delivery_add(st, U1, "q4.1", "Nope", 5), STORE_OK);
    assert_int_equal(store_delivery_add(st, U1, "q3.1", "Work", 7), STORE_EXISTS);
    assert_int_equal(store_delivery_add(st, U1, "q4.1", "INBOX", 1), STORE_EXISTS);
    assert_int_equal(store_delivery_add(st, U2, "q5.1", "Work", 5), STORE_NOTFOUND);
    assert_int_equal(store_delivery_add(st, U1, "a\nb", "Work", 5), STORE_INVALID);
    assert_int_equal(mbox_modseq(st, U1), ms);

    reopen(t);
    st = t->st;
    get_dl(st, U1, &d);
    assert_int_equal(d.n, 2);
    assert_string_equal(d.id[0], "q3.1");
    assert_string_equal(d.folder[0], "Work");
    assert_int_equal(d.uid[0], 7);
    assert_string_equal(d.id[1], "q4.1");
    assert_string_equal(d.folder[1], "Nope");
    assert_int_equal(d.uid[1], 5);

    /* The retried deliveries after the switch: duplicates, nothing stored. */
    assert_int_equal(store_mailbox_set_state(st, U1, STORE_MBOX_STAGED, STORE_MBOX_ACTIVE, 1, NULL),
                     STORE_OK);
    const char *ids[] = {"q3.1", "q4.1"};
    for (size_t i = 0; i < 2; i++) {
        struct store_append l = mk(U1, NULL, "retry\r\n");
        l.delivery_id = ids[i];
        l.require_live = true;
        l.epoch = 1;
        struct store_append_result res;
        assert_int_equal(append1(st, &l, &res), STORE_OK);
        assert_int_equal(res.status, STORE_OK);
        assert_true(res.duplicate);
        assert_int_equal(res.uid, 0);
    }
    /* Both in one batch, next to a new delivery. */
    struct store_append a[3] = {mk(U1, NULL, "one\r\n"), mk(U1, "Work", "two\r\n"),
                                mk(U1, NULL, "new\r\n")};
    a[0].delivery_id = "q3.1";
    a[1].delivery_id = "q4.1";
    a[2].delivery_id = "q6.1";
    struct store_append_result res[3];
    struct store_batch *b = store_batch_begin(st);
    for (size_t i = 0; i < 3; i++) {
        a[i].require_live = true;
        a[i].epoch = 1;
        store_batch_add(b, &a[i], &res[i]);
    }
    const char *err = NULL;
    assert_int_equal(store_batch_commit(&b, &err), 0);
    assert_true(res[0].duplicate);
    assert_true(res[1].duplicate);
    assert_int_equal(res[2].status, STORE_OK);
    assert_false(res[2].duplicate);
    assert_int_equal(count_msgs(st, U1, "INBOX"), 1);
    assert_int_equal(count_msgs(st, U1, "Work"), 0);
    struct store_mailbox mb;
    assert_int_equal(store_mailbox_get(st, U1, &mb), STORE_OK);
    assert_int_equal(mb.messages, 1);
    get_dl(st, U1, &d);
    assert_int_equal(d.n, 3);

    /* Fenced: refused by the guard, nothing recorded. */
    assert_int_equal(store_mailbox_set_state(st, U1, STORE_MBOX_ACTIVE, STORE_MBOX_FENCED, 1, NULL),
                     STORE_OK);
    assert_int_equal(store_delivery_add(st, U1, "q7.1", "Nope", 3), STORE_NOTLIVE);
    get_dl(st, U1, &d);
    assert_int_equal(d.n, 3);
}

/* ---- the state guard ---- */

/* A mailbox with something to change: INBOX uids 1 and 2, folder "Work". */
static void guard_fill(struct store *st, const char *user)
{
    assert_int_equal(store_mailbox_create(st, user, STORE_MBOX_ACTIVE, 1), STORE_OK);
    assert_int_equal(store_folder_create(st, user, "Work", 0), STORE_OK);
    assert_int_equal(deliver(st, user, "one\r\n"), 1);
    assert_int_equal(deliver(st, user, "two!\r\n"), 2);
}

static const uint8_t guard_guid[STORE_GUID_LEN] = {1, 2,  3,  4,  5,  6,  7,  8,
                                                   9, 10, 11, 12, 13, 14, 15, 16};

/* Every kind of change is refused with STORE_NOTLIVE in the mailbox's
 * current state, and nothing changes (durably); every read still works. */
static void guard_refused(struct tctx *t, const char *user, enum store_mbox_state state)
{
    struct store *st = t->st;
    struct store_mailbox mb0, mb;
    assert_int_equal(store_mailbox_get(st, user, &mb0), STORE_OK);
    assert_int_equal(mb0.state, state);

    struct store_append a = mk(user, NULL, "refused\r\n");
    struct store_append_result res;
    assert_int_equal(append1(st, &a, &res), STORE_NOTLIVE);
    assert_string_equal(res.mailbox.user, user);
    assert_int_equal(res.mailbox.state, state);
    assert_int_equal(res.mailbox.epoch, mb0.epoch);
    assert_int_equal(res.mailbox.messages, 2);
    a.require_live = true;
    a.epoch = mb0.epoch;
    assert_int_equal(append1(st, &a, &res), STORE_NOTLIVE);
    assert_int_equal(res.mailbox.state, state);
    a.require_live = false; /* a move's copy: uid and guid given */
    a.folder = "Work";
    a.uid = 7;
    a.guid = guard_guid;
    assert_int_equal(append1(st, &a, &res), STORE_NOTLIVE);

    uint64_t ms = 0;
    assert_int_equal(
        store_msg_set_flags(st, user, "INBOX", 1, STORE_FLAGS_ADD, STORE_F_SEEN, "$Junk", 0, &ms),
        STORE_NOTLIVE);
    assert_int_equal(ms, 0);
    /* The state is checked before the message or folder is looked up. */
    assert_int_equal(store_msg_set_flags(st, user, "INBOX", 99, STORE_FLAGS_SET, 0, NULL, 0, NULL),
                     STORE_NOTLIVE);
    assert_int_equal(store_msg_expunge(st, user, "INBOX", 2), STORE_NOTLIVE);
    assert_int_equal(store_folder_create(st, user, "New", 0), STORE_NOTLIVE);
    assert_int_equal(store_folder_create(st, user, "Work", 0), STORE_NOTLIVE);
    assert_int_equal(store_folder_rename(st, user, "Work", "Play"), STORE_NOTLIVE);
    assert_int_equal(store_folder_delete(st, user, "Work"), STORE_NOTLIVE);
    assert_int_equal(store_folder_set_uidnext(st, user, "Work", 50), STORE_NOTLIVE);
    assert_int_equal(store_folder_set_uidnext(st, user, "Nope", 50), STORE_NOTLIVE);
    assert_int_equal(store_delivery_add(st, user, "q1.1", "INBOX", 1), STORE_NOTLIVE);

    reopen(t);
    st = t->st;
    assert_int_equal(store_mailbox_get(st, user, &mb), STORE_OK);
    assert_int_equal(mb.state, state);
    assert_int_equal(mb.modseq, mb0.modseq);
    assert_int_equal(mb.messages, 2);
    assert_int_equal(mb.bytes, mb0.bytes);
    struct changes c;
    get_changes(st, user, mb0.modseq, &c);
    assert_int_equal(c.nfolders + c.nmsgs, 0);
    get_changes(st, user, 0, &c);
    assert_int_equal(c.nfolders, 2);
    assert_int_equal(c.nmsgs, 2);
    struct store_folder *fl;
    size_t n;
    assert_int_equal(store_folder_list(st, user, &fl, &n), STORE_OK);
    assert_int_equal(n, 2);
    assert_string_equal(fl[0].name, "INBOX");
    assert_string_equal(fl[1].name, "Work");
    assert_int_equal(fl[1].messages, 0);
    free(fl);
    struct store_folder f;
    assert_int_equal(store_folder_get(st, user, "Work", &f), STORE_OK);
    assert_int_equal(f.uidnext, 1);
    assert_int_equal(store_folder_get(st, user, "New", &f), STORE_NOTFOUND);
    struct dl d;
    get_dl(st, user, &d);
    assert_int_equal(d.n, 0);
    assert_int_equal(count_msgs(st, user, "INBOX"), 2);
    assert_int_equal(count_msgs(st, user, "Work"), 0);
    struct msg_find m;
    assert_true(find_msg(st, user, "INBOX", 1, &m));
    assert_int_equal(m.m.flags, 0);
    assert_string_equal(m.kw, "");
    assert_body(st, user, "INBOX", 2, "two!\r\n", 6);
    struct store_mailbox *list;
    assert_int_equal(store_mailbox_list(st, &list, &n), STORE_OK);
    free(list);
}

/* The same changes are all accepted (mailbox ACTIVE at epoch). */
static void guard_accepted(struct store *st, const char *user, uint64_t epoch)
{
    uint64_t ms = mbox_modseq(st, user);
    struct store_append a = mk(user, NULL, "accepted\r\n");
    struct store_append_result res;
    assert_int_equal(append1(st, &a, &res), STORE_OK);
    a.require_live = true;
    a.epoch = epoch;
    assert_int_equal(append1(st, &a, &res), STORE_OK);
    a.require_live = false;
    a.folder = "Work";
    a.uid = 7;
    a.guid = guard_guid;
    assert_int_equal(append1(st, &a, &res), STORE_OK);
    assert_int_equal(res.uid, 7);
    assert_int_equal(
        store_msg_set_flags(st, user, "INBOX", 1, STORE_FLAGS_ADD, STORE_F_SEEN, "$Junk", 0, NULL),
        STORE_OK);
    assert_int_equal(store_msg_expunge(st, user, "INBOX", 2), STORE_OK);
    assert_int_equal(store_folder_create(st, user, "New", 0), STORE_OK);
    assert_int_equal(store_folder_rename(st, user, "Work", "Play"), STORE_OK);
    assert_int_equal(store_folder_delete(st, user, "New"), STORE_OK);
    assert_int_equal(mbox_modseq(st, user), ms + 8);
    assert_int_equal(count_msgs(st, user, "INBOX"), 3);
    assert_int_equal(count_msgs(st, user, "Play"), 1);
}

static void test_state_guard(void **state)
{
    struct tctx *t = *state;
    static const struct {
        const char *user;
        enum store_mbox_state state;
        const char *moved_to;
    } cases[] = {
        {"fenced@example.org", STORE_MBOX_FENCED, NULL},
        {"moved@example.org", STORE_MBOX_MOVED, "s2"},
        {"deleting@example.org", STORE_MBOX_DELETING, NULL},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        guard_fill(t->st, cases[i].user);
        assert_int_equal(store_mailbox_set_state(t->st, cases[i].user, STORE_MBOX_ACTIVE,
                                                 cases[i].state, 2, cases[i].moved_to),
                         STORE_OK);
        guard_refused(t, cases[i].user, cases[i].state);
    }

    /* set_state is always allowed: unfenced, everything works again. */
    assert_int_equal(store_mailbox_set_state(t->st, cases[0].user, STORE_MBOX_FENCED,
                                             STORE_MBOX_ACTIVE, 3, NULL),
                     STORE_OK);
    guard_accepted(t->st, cases[0].user, 3);
    /* Purge stays DELETING-only. */
    assert_int_equal(store_mailbox_purge(t->st, cases[1].user), STORE_CONFLICT);
    assert_int_equal(store_mailbox_purge(t->st, cases[2].user), STORE_OK);
}

/* STAGED: a move's copy (plain appends keeping uid and guid) and other
 * changes are accepted; deliveries (require_live) are not until ACTIVE. */
static void test_state_staged(void **state)
{
    struct tctx *t = *state;
    assert_int_equal(store_mailbox_create(t->st, U1, STORE_MBOX_STAGED, 4), STORE_OK);
    assert_int_equal(store_folder_create(t->st, U1, "Work", 0), STORE_OK);
    struct store_append a = mk(U1, "Work", "copied\r\n");
    a.uid = 41;
    a.guid = guard_guid;
    struct store_append_result res;
    assert_int_equal(append1(t->st, &a, &res), STORE_OK);
    assert_int_equal(res.uid, 41);
    assert_memory_equal(res.guid, guard_guid, STORE_GUID_LEN);

    struct store_append d = mk(U1, NULL, "delivery\r\n");
    d.require_live = true;
    d.epoch = 4;
    uint64_t ms = mbox_modseq(t->st, U1);
    assert_int_equal(append1(t->st, &d, &res), STORE_NOTLIVE);
    assert_int_equal(res.mailbox.state, STORE_MBOX_STAGED);
    assert_int_equal(res.mailbox.epoch, 4);
    assert_int_equal(mbox_modseq(t->st, U1), ms);
    assert_int_equal(count_msgs(t->st, U1, "INBOX"), 0);
    assert_int_equal(
        store_msg_set_flags(t->st, U1, "Work", 41, STORE_FLAGS_SET, STORE_F_SEEN, NULL, 0, NULL),
        STORE_OK);
    assert_int_equal(store_folder_rename(t->st, U1, "Work", "Play"), STORE_OK);

    /* Activated, it takes deliveries. */
    assert_int_equal(
        store_mailbox_set_state(t->st, U1, STORE_MBOX_STAGED, STORE_MBOX_ACTIVE, 4, NULL),
        STORE_OK);
    assert_int_equal(append1(t->st, &d, &res), STORE_OK);
    assert_int_equal(count_msgs(t->st, U1, "INBOX"), 1);
    assert_int_equal(count_msgs(t->st, U1, "Play"), 1);
}

/* fs: another process (here a second handle) fences the mailbox between
 * store_batch_add() and store_batch_commit(): the commit's transaction sees
 * the fence, for plain and require_live items alike. */
static void test_fence_other_handle(void **state)
{
    struct tctx *t = *state;
    assert_int_equal(store_mailbox_create(t->st, U1, STORE_MBOX_ACTIVE, 1), STORE_OK);
    assert_int_equal(store_mailbox_create(t->st, U2, STORE_MBOX_ACTIVE, 1), STORE_OK);
    struct store *other = open_fs(t->dir);
    struct store_append a[3] = {mk(U1, NULL, "plain\r\n"), mk(U1, NULL, "live\r\n"),
                                mk(U2, NULL, "bystander\r\n")};
    a[1].require_live = true;
    a[1].epoch = 1;
    struct store_append_result res[3];
    struct store_batch *b = store_batch_begin(t->st);
    for (int i = 0; i < 3; i++)
        store_batch_add(b, &a[i], &res[i]);
    assert_int_equal(
        store_mailbox_set_state(other, U1, STORE_MBOX_ACTIVE, STORE_MBOX_FENCED, 2, NULL),
        STORE_OK);
    uint64_t ms = mbox_modseq(other, U1);
    const char *err = NULL;
    assert_int_equal(store_batch_commit(&b, &err), 0);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(res[i].status, STORE_NOTLIVE);
        assert_int_equal(res[i].mailbox.state, STORE_MBOX_FENCED);
        assert_int_equal(res[i].mailbox.epoch, 2);
    }
    assert_int_equal(res[2].status, STORE_OK);
    assert_int_equal(count_msgs(other, U1, "INBOX"), 0);
    assert_int_equal(mbox_modseq(other, U1), ms);
    assert_int_equal(count_msgs(other, U2, "INBOX"), 1);

    /* Unfenced by the other process, the first one appends again. */
    assert_int_equal(
        store_mailbox_set_state(other, U1, STORE_MBOX_FENCED, STORE_MBOX_ACTIVE, 2, NULL),
        STORE_OK);
    a[1].epoch = 2;
    b = store_batch_begin(t->st);
    for (int i = 0; i < 2; i++)
        store_batch_add(b, &a[i], &res[i]);
    assert_int_equal(store_batch_commit(&b, &err), 0);
    assert_int_equal(res[0].status, STORE_OK);
    assert_int_equal(res[1].status, STORE_OK);
    assert_int_equal(count_msgs(other, U1, "INBOX"), 2);
    store_close(&other);
}

/* ---- fs only: durability ---- */

static size_t commit_n(struct store *st, const char *user, int n, const char *tag)
{
    char bodies[16][64];
    struct store_append a[16];
    struct store_append_result res[16];
    assert_true(n <= 16);
    struct store_batch *b = store_batch_begin(st);
    for (int i = 0; i < n; i++) {
        snprintf(bodies[i], sizeof(bodies[i]), "Subject: %s %d\r\n\r\nbody\r\n", tag, i);
        a[i] = mk(user, NULL, bodies[i]);
        store_batch_add(b, &a[i], &res[i]);
    }
    const char *err = NULL;
    int r = store_batch_commit(&b, &err);
    for (int i = 0; i < n; i++)
        assert_int_equal(res[i].status, r == 0 ? STORE_OK : STORE_ERROR);
    return r == 0 ? (size_t)n : 0;
}

static void test_crash_bodies_synced(void **state)
{
    struct tctx *t = *state;
    assert_int_equal(store_mailbox_create(t->st, U1, STORE_MBOX_ACTIVE, 1), STORE_OK);
    uint32_t u1 = deliver(t->st, U1, "before the crash\r\n");
    store_close(&t->st); /* no SQLite connection across fork() */

    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setenv("TERN_FAULT", "crash:store.bodies_synced", 1);
        const char *err;
        struct store *st = store_open_fs(t->dir, "s1", &err);
        if (st == NULL)
            _exit(2);
        commit_n(st, U1, 5, "doomed");
        _exit(3); /* the fault point should have ended us */
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 137);

    t->st = open_fs(t->dir);
    assert_int_equal(count_msgs(t->st, U1, "INBOX"), 1);
    struct store_mailbox mb;
    assert_int_equal(store_mailbox_get(t->st, U1, &mb), STORE_OK);
    assert_int_equal(mb.messages, 1);
    struct store_folder f;
    assert_int_equal(store_folder_get(t->st, U1, "INBOX", &f), STORE_OK);
    assert_int_equal(f.uidnext, u1 + 1);
    /* The next commit appends after the orphaned bodies and reads back. */
    uint32_t u2 = deliver(t->st, U1, "after the crash\r\n");
    assert_int_equal(u2, u1 + 1);
    reopen(t);
    assert_body(t->st, U1, "INBOX", u1, "before the crash\r\n", 18);
    assert_body(t->st, U1, "INBOX", u2, "after the crash\r\n", 17);
}

static void test_fsync_failure(void **state)
{
    struct tctx *t = *state;
    assert_int_equal(store_mailbox_create(t->st, U1, STORE_MBOX_ACTIVE, 1), STORE_OK);
    uint32_t u1 = deliver(t->st, U1, "first\r\n");
    uint64_t ms = mbox_modseq(t->st, U1);

    char spec[32];
    snprintf(spec, sizeof(spec), "fsync:%llu", (unsigned long long)util_fsync_count() + 1);
    setenv("TERN_FAULT", spec, 1);
    struct store_append a[3] = {mk(U1, NULL, "lost 1\r\n"), mk(U1, NULL, "lost 2\r\n"),
                                mk(U1, NULL, "lost 3\r\n")};
    struct store_append_result res[3];
    struct store_batch *b = store_batch_begin(t->st);
    for (int i = 0; i < 3; i++)
        store_batch_add(b, &a[i], &res[i]);
    const char *err = NULL;
    assert_int_equal(store_batch_commit(&b, &err), -1);
    unsetenv("TERN_FAULT");
    assert_non_null(err);
    for (int i = 0; i < 3; i++)
        assert_int_equal(res[i].status, STORE_ERROR);
    assert_int_equal(count_msgs(t->st, U1, "INBOX"), 1);
    assert_int_equal(mbox_modseq(t->st, U1), ms);

    uint32_t u2 = deliver(t->st, U1, "second\r\n");
    assert_int_equal(u2, u1 + 1);
    assert_body(t->st, U1, "INBOX", u1, "first\r\n", 7);
    assert_body(t->st, U1, "INBOX", u2, "second\r\n", 8);
    reopen(t);
    assert_int_equal(count_msgs(t->st, U1, "INBOX"), 2);
    assert_body(t->st, U1, "INBOX", u1, "first\r\n", 7);
    assert_body(t->st, U1, "INBOX", u2, "second\r\n", 8);
}

static void test_corrupt_body(void **state)
{
    struct tctx *t = *state;
    assert_int_equal(store_mailbox_create(t->st, U1, STORE_MBOX_ACTIVE, 1), STORE_OK);
    uint32_t u = deliver(t->st, U1, "precious bytes\r\n");
    store_close(&t->st);
    char path[128];
    snprintf(path, sizeof(path), "%s/segments/00000001.seg", t->dir);
    FILE *fp = fopen(path, "r+");
    assert_non_null(fp);
    assert_int_equal(fseek(fp, -3, SEEK_END), 0);
    fputc('X', fp);
    fclose(fp);
    t->st = open_fs(t->dir);
    struct buf b;
    buf_init(&b, 0);
    assert_int_equal(store_msg_read(t->st, U1, "INBOX", u, &b), STORE_ERROR);
    assert_int_equal(b.len, 0);
    buf_free(&b);
}

/* Body of the n-th message of the kill test: derived from n alone. */
static size_t kill_body(uint32_t n, char *out, size_t cap)
{
    size_t len = 40 + (n * 7919u) % 3000;
    if (len > cap)
        len = cap;
    int h = snprintf(out, cap, "Subject: kill test %u\r\n\r\n", n);
    for (size_t i = (size_t)h; i < len; i++)
        out[i] = (char)('a' + (n + i) % 26);
    return len;
}

struct kill_report {
    uint32_t uid;
    uint32_t n;
};

static TERN_NORETURN void kill_child(const char *dir, int wfd, uint32_t n0)
{
    const char *err;
    struct store *st = store_open_fs(dir, "s1", &err);
    if (st == NULL)
        _exit(2);
    static char bodies[8][4096];
    uint32_t n = n0;
    for (;;) {
        struct store_append a[8];
        struct store_append_result res[8];
        uint32_t ns[8];
        int k = 1 + (int)(n % 8);
        struct store_batch *b = store_batch_begin(st);
        for (int i = 0; i < k; i++) {
            ns[i] = n++;
            size_t len = kill_body(ns[i], bodies[i], sizeof(bodies[i]));
            a[i] = (struct store_append){.user = U1, .data = bodies[i], .len = len};
            store_batch_add(b, &a[i], &res[i]);
        }
        if (store_batch_commit(&b, &err) < 0)
            _exit(4);
        for (int i = 0; i < k; i++) {
            struct kill_report r = {res[i].uid, ns[i]};
            if (res[i].status != STORE_OK || write_full(wfd, &r, sizeof(r)) < 0)
                _exit(5);
        }
    }
}

static void test_kill9_loop(void **state)
{
    struct tctx *t = *state;
    assert_int_equal(store_mailbox_create(t->st, U1, STORE_MBOX_ACTIVE, 1), STORE_OK);
    store_close(&t->st);
    struct kill_report *all = NULL;
    size_t nall = 0, cap = 0;
    static char body[4096];
    for (int round = 0; round < 10; round++) {
        int p[2];
        assert_int_equal(pipe(p), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(p[0]);
            kill_child(t->dir, p[1], (uint32_t)round * 1000000u);
        }
        close(p[1]);
        /* Wait for the first report, then kill at a random moment. */
        struct kill_report r;
        ssize_t got = read(p[0], &r, sizeof(r));
        assert_int_equal(got, (ssize_t)sizeof(r));
        if (nall == cap) {
            cap = cap ? cap * 2 : 1024;
            all = xrealloc(all, cap * sizeof(*all));
        }
        all[nall++] = r;
        uint32_t delay;
        rand_bytes(&delay, sizeof(delay));
        usleep(delay % 30000);
        kill(pid, SIGKILL);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFSIGNALED(status));
        /* Every report in the pipe was sent after a successful commit. */
        for (;;) {
            got = read(p[0], &r, sizeof(r));
            if (got == 0)
                break;
            if (got < 0 && errno == EINTR)
                continue;
            assert_int_equal(got, (ssize_t)sizeof(r));
            if (nall == cap) {
                cap *= 2;
                all = xrealloc(all, cap * sizeof(*all));
            }
            all[nall++] = r;
        }
        close(p[0]);

        struct store *st = open_fs(t->dir);
        for (size_t i = 0; i < nall; i++) {
            size_t len = kill_body(all[i].n, body, sizeof(body));
            assert_body(st, U1, "INBOX", all[i].uid, body, len);
            if (i % 64 == 0) {
                struct msg_find f;
                assert_true(find_msg(st, U1, "INBOX", all[i].uid, &f));
                uint8_t sha[SHA256_LEN];
                sha256_buf(body, len, sha);
                assert_memory_equal(f.m.sha256, sha, SHA256_LEN);
            }
        }
        /* The store still works after the kill. */
        uint32_t u = deliver(st, U1, "after kill\r\n");
        assert_body(st, U1, "INBOX", u, "after kill\r\n", 12);
        store_close(&st);
    }
    print_message("kill -9 test: %zu acknowledged messages verified\n", nall);
    free(all);
    t->st = open_fs(t->dir);
}

/* Explicit modseqs (store.h): the row gets exactly the modseq, the counter
 * max(counter, it); only on a staged mailbox; CHANGES stays exact with rows
 * whose modseqs are not the newest. */
static void test_explicit_modseq(void **state)
{
    struct tctx *t = *state;
    assert_int_equal(store_mailbox_create(t->st, U1, STORE_MBOX_STAGED, 1), STORE_OK);
    assert_int_equal(store_mailbox_raise_modseq(t->st, U1, 100), STORE_OK);
    /* Appends: one batch, modseqs out of order, one plain item after them. */
    const uint64_t want[] = {40, 90, 7, 0};
    struct store_append_result res[4];
    struct store_batch *b = store_batch_begin(t->st);
    for (size_t i = 0; i < 4; i++) {
        struct store_append a = mk(U1, NULL, "explicit\r\n");
        a.uid = (uint32_t)(10 + i);
        a.modseq = want[i];
        store_batch_add(b, &a, &res[i]);
    }
    const char *err = NULL;
    assert_int_equal(store_batch_commit(&b, &err), 0);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(res[i].status, STORE_OK);
        assert_int_equal(res[i].modseq, want[i]);
    }
    assert_int_equal(res[3].modseq, 101); /* the plain one: counter + 1 */
    assert_int_equal(mbox_modseq(t->st, U1), 101);
    struct store_mailbox mb;
    assert_int_equal(store_mailbox_get(t->st, U1, &mb), STORE_OK);
    assert_int_equal(mb.messages, 4);
    assert_int_equal(mb.bytes, 4 * 10);
    /* Above the counter: the counter follows. */
    assert_int_equal(store_folder_create_at(t->st, U1, "Work", 0, 150), STORE_OK);
    assert_int_equal(mbox_modseq(t->st, U1), 150);
    struct store_folder f;
    assert_int_equal(store_folder_get(t->st, U1, "Work", &f), STORE_OK);
    assert_int_equal(f.modseq, 150);
    /* Flags: stamped even when flags and keywords stay, and down too. */
    assert_int_equal(store_msg_set_flags_at(t->st, U1, "INBOX", 11, 0, NULL, 20), STORE_OK);
    struct msg_find mf;
    assert_true(find_msg(t->st, U1, "INBOX", 11, &mf));
    assert_int_equal(mf.m.modseq, 20);
    assert_int_equal(store_msg_set_flags_at(t->st, U1, "INBOX", 11, STORE_F_SEEN, "$A", 60),
                     STORE_OK);
    assert_true(find_msg(t->st, U1, "INBOX", 11, &mf));
    assert_int_equal(mf.m.modseq, 60);
    assert_int_equal(mf.m.flags, STORE_F_SEEN);
    assert_string_equal(mf.m.keywords, "$A");
    /* Expunge, then a tombstone re-stamped; no such UID: notfound. */
    assert_int_equal(store_msg_expunge_at(t->st, U1, "INBOX", 12, 30), STORE_OK);
    assert_int_equal(store_msg_expunge_at(t->st, U1, "INBOX", 12, 33), STORE_OK);
    assert_int_equal(store_msg_expunge_at(t->st, U1, "INBOX", 99, 33), STORE_NOTFOUND);
    assert_int_equal(store_msg_expunge(t->st, U1, "INBOX", 12), STORE_NOTFOUND);
    /* Folders: rename, uidnext (stamped even without a raise), delete. */
    assert_int_equal(store_folder_rename_at(t->st, U1, "Work", "Job", 45), STORE_OK);
    assert_int_equal(store_folder_set_uidnext_at(t->st, U1, "Job", 1, 47), STORE_OK);
    assert_int_equal(store_folder_get(t->st, U1, "Job", &f), STORE_OK);
    assert_int_equal(f.modseq, 47);
    assert_int_equal(f.uidnext, 1);
    assert_int_equal(store_folder_set_uidnext_at(t->st, U1, "Job", 9, 48), STORE_OK);
    assert_int_equal(store_folder_get(t->st, U1, "Job", &f), STORE_OK);
    assert_int_equal(f.modseq, 48);
    assert_int_equal(f.uidnext, 9);
    assert_int_equal(store_folder_create_at(t->st, U1, "Old", 0, 50), STORE_OK);
    assert_int_equal(store_folder_delete_at(t->st, U1, "Old", 52), STORE_OK);
    reopen(t);
    assert_int_equal(mbox_modseq(t->st, U1), 150);
    /* The change log: exactly the rows above N, in modseq order. */
    struct changes c;
    get_changes(t->st, U1, 29, &c);
    assert_int_equal(c.nfolders, 2); /* Job (48), Old (52) */
    assert_int_equal(c.folders[0].modseq, 48);
    assert_string_equal(c.folders[0].name, "Job");
    assert_int_equal(c.folders[1].modseq, 52);
    assert_true(c.folders[1].deleted);
    assert_int_equal(c.nmsgs, 4); /* 12 (33), 10 (40), 11 (60), 13 (101) */
    const uint32_t uids[] = {12, 10, 11, 13};
    const uint64_t ms[] = {33, 40, 60, 101};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(c.msgs[i].uid, uids[i]);
        assert_int_equal(c.msgs[i].modseq, ms[i]);
    }
    assert_true(c.msgs[0].expunged);
    get_changes(t->st, U1, 60, &c);
    assert_int_equal(c.nfolders, 0);
    assert_int_equal(c.nmsgs, 1);
    get_changes(t->st, U1, 33, &c); /* the tombstone's old 7 and 30 are gone */
    assert_int_equal(c.nmsgs, 3);
    assert_int_equal(c.msgs[0].uid, 10);
    get_changes(t->st, U1, 0, &c);
    assert_int_equal(c.nfolders, 3);
    assert_string_equal(c.folders[0].name, "INBOX");
    assert_int_equal(c.nmsgs, 4);
    /* Bad values: beyond 2^63 - 1. */
    const uint64_t big = (uint64_t)INT64_MAX + 1;
    assert_int_equal(store_msg_set_flags_at(t->st, U1, "INBOX", 11, 0, NULL, big), STORE_INVALID);
    assert_int_equal(store_msg_expunge_at(t->st, U1, "INBOX", 11, big), STORE_INVALID);
    assert_int_equal(store_folder_create_at(t->st, U1, "X", 0, big), STORE_INVALID);
    assert_int_equal(store_folder_rename_at(t->st, U1, "Job", "X", big), STORE_INVALID);
    assert_int_equal(store_folder_delete_at(t->st, U1, "Job", big), STORE_INVALID);
    assert_int_equal(store_folder_set_uidnext_at(t->st, U1, "Job", 1, big), STORE_INVALID);
    struct store_append a = mk(U1, NULL, "big\r\n");
    a.modseq = big;
    assert_int_equal(append1(t->st, &a, &res[0]), STORE_INVALID);
    /* Only a staged mailbox takes explicit modseqs; nothing changes. */
    assert_int_equal(
        store_mailbox_set_state(t->st, U1, STORE_MBOX_STAGED, STORE_MBOX_ACTIVE, 1, NULL),
        STORE_OK);
    assert_int_equal(store_msg_set_flags_at(t->st, U1, "INBOX", 11, 0, NULL, 5), STORE_NOTLIVE);
    assert_int_equal(store_msg_expunge_at(t->st, U1, "INBOX", 11, 5), STORE_NOTLIVE);
    assert_int_equal(store_folder_create_at(t->st, U1, "X", 0, 5), STORE_NOTLIVE);
    assert_int_equal(store_folder_rename_at(t->st, U1, "Job", "X", 5), STORE_NOTLIVE);
    assert_int_equal(store_folder_delete_at(t->st, U1, "Job", 5), STORE_NOTLIVE);
    assert_int_equal(store_folder_set_uidnext_at(t->st, U1, "Job", 1, 5), STORE_NOTLIVE);
    a.modseq = 5;
    assert_int_equal(append1(t->st, &a, &res[0]), STORE_NOTLIVE);
    /* modseq 0 is the plain operation, also when active. */
    assert_int_equal(store_msg_set_flags_at(t->st, U1, "INBOX", 11, 0, NULL, 0), STORE_OK);
    assert_true(find_msg(t->st, U1, "INBOX", 11, &mf));
    assert_int_equal(mf.m.modseq, 151);
    assert_int_equal(mbox_modseq(t->st, U1), 151);
    get_changes(t->st, U1, 150, &c);
    assert_int_equal(c.nmsgs, 1);
    assert_int_equal(c.msgs[0].uid, 11);
}

/* store_msg_tombstone: a live message expunged, a tombstone re-stamped, a
 * UID never held a tombstone row (no body, UIDNEXT above it); staged only. */
static void test_tombstone(void **state)
{
    struct tctx *t = *state;
    assert_int_equal(store_mailbox_create(t->st, U1, STORE_MBOX_STAGED, 1), STORE_OK);
    assert_int_equal(store_mailbox_raise_modseq(t->st, U1, 50), STORE_OK);
    struct store_append a = mk(U1, NULL, "live\r\n");
    a.uid = 4;
    a.modseq = 10;
    struct store_append_result res;
    assert_int_equal(append1(t->st, &a, &res), STORE_OK);
    struct store_msg m;
    memset(&m, 0, sizeof(m));
    m.uid = 4;
    m.modseq = 20;
    m.keywords = "";
    assert_int_equal(store_msg_tombstone(t->st, U1, "INBOX", &m), STORE_OK); /* expunged */
    assert_int_equal(count_msgs(t->st, U1, "INBOX"), 0);
    m.modseq = 22;
    assert_int_equal(store_msg_tombstone(t->st, U1, "INBOX", &m), STORE_OK); /* re-stamped */
    /* Never held: a row of its own, with the source's metadata. */
    memset(m.guid, 0xab, STORE_GUID_LEN);
    memset(m.sha256, 0xcd, SHA256_LEN);
    m.uid = 9;
    m.flags = STORE_F_SEEN | STORE_F_DELETED;
    m.keywords = "$Gone";
    m.internal_date = 1700000009;
    m.size = 1234;
    m.modseq = 30;
    assert_int_equal(store_msg_tombstone(t->st, U1, "INBOX", &m), STORE_OK);
    m.modseq = 60; /* above the counter: the counter follows */
    m.uid = 12;
    assert_int_equal(store_msg_tombstone(t->st, U1, "INBOX", &m), STORE_OK);
    reopen(t);
    assert_int_equal(mbox_modseq(t->st, U1), 60);
    struct store_folder f;
    assert_int_equal(store_folder_get(t->st, U1, "INBOX", &f), STORE_OK);
    assert_int_equal(f.uidnext, 13);
    assert_int_equal(f.messages, 0);
    struct store_mailbox mb;
    assert_int_equal(store_mailbox_get(t->st, U1, &mb), STORE_OK);
    assert_int_equal(mb.messages, 0);
    assert_int_equal(mb.bytes, 0);
    struct buf b;
    buf_init(&b, 0);
    assert_int_equal(store_msg_read(t->st, U1, "INBOX", 9, &b), STORE_NOTFOUND);
    buf_free(&b);
    struct changes c;
    get_changes(t->st, U1, 0, &c);
    assert_int_equal(c.nmsgs, 3);
    assert_int_equal(c.msgs[0].uid, 4);
    assert_int_equal(c.msgs[0].modseq, 22);
    assert_int_equal(c.msgs[1].uid, 9);
    assert_int_equal(c.msgs[1].modseq, 30);
    assert_true(c.msgs[1].expunged);
    assert_int_equal(c.msgs[1].size, 1234);
    assert_int_equal(c.msgs[1].flags, STORE_F_SEEN | STORE_F_DELETED);
    assert_int_equal(c.msgs[1].internal_date, 1700000009);
    assert_memory_equal(c.msgs[1].guid, m.guid, STORE_GUID_LEN);
    assert_memory_equal(c.msgs[1].sha256, m.sha256, SHA256_LEN);
    assert_int_equal(c.msgs[2].uid, 12);
    /* The UID is taken now: an append of it is refused. */
    a.uid = 9;
    assert_int_equal(append1(t->st, &a, &res), STORE_EXISTS);
    /* Bad values; no folder; not staged. */
    m.uid = 20;
    m.modseq = 0;
    assert_int_equal(store_msg_tombstone(t->st, U1, "INBOX", &m), STORE_INVALID);
    m.modseq = (uint64_t)INT64_MAX + 1;
    assert_int_equal(store_msg_tombstone(t->st, U1, "INBOX", &m), STORE_INVALID);
    m.modseq = 70;
    m.uid = 0;
    assert_int_equal(store_msg_tombstone(t->st, U1, "INBOX", &m), STORE_INVALID);
    m.uid = 20;
    assert_int_equal(store_msg_tombstone(t->st, U1, "Nope", &m), STORE_NOTFOUND);
    assert_int_equal(
        store_mailbox_set_state(t->st, U1, STORE_MBOX_STAGED, STORE_MBOX_ACTIVE, 1, NULL),
        STORE_OK);
    assert_int_equal(store_msg_tombstone(t->st, U1, "INBOX", &m), STORE_NOTLIVE);
    assert_int_equal(mbox_modseq(t->st, U1), 60);
}

/* ---- fencing tokens ---- */

static struct store_token tok(uint64_t job, uint64_t claim)
{
    struct store_token t = {.job = job, .claim = claim};
    return t;
}

static struct store_token mbox_token(struct store *st, const char *user)
{
    struct store_mailbox mb;
    assert_int_equal(store_mailbox_get(st, user, &mb), STORE_OK);
    return mb.token;
}

/* Every mover write with a token below the mailbox's is refused as STALE
 * and changes nothing; one above raises it; tokenless writes and other
 * mailboxes are not affected; the token survives a reopen. */
static void test_token(void **state)
{
    struct tctx *t = *state;
    struct store_token t12 = tok(1, 2), t13 = tok(1, 3), t21 = tok(2, 1);
    /* The create takes the token set for its user. */
    store_token_set(t->st, U1, &t12);
    assert_int_equal(store_mailbox_create(t->st, U1, STORE_MBOX_STAGED, 2), STORE_OK);
    assert_int_equal(store_folder_create_at(t->st, U1, "Work", 77, 5), STORE_OK);
    struct store_append a = mk(U1, "Work", "copied\r\n");
    a.uid = 3;
    a.guid = guard_guid;
    a.modseq = 6;
    struct store_append_result res;
    assert_int_equal(append1(t->st, &a, &res), STORE_OK);
    assert_int_equal(store_delivery_add(t->st, U1, "d1", "Work", 3), STORE_OK);
    store_token_set(t->st, NULL, NULL);
    assert_int_equal(store_mailbox_create(t->st, U2, STORE_MBOX_STAGED, 2), STORE_OK);
    assert_int_equal(store_token_cmp(&(struct store_token){0, 0}, &(struct store_token){0, 0}), 0);
    struct store_token got = mbox_token(t->st, U1);
    assert_int_equal(store_token_cmp(&got, &t12), 0);
    got = mbox_token(t->st, U2);
    assert_int_equal(got.job, 0);
    assert_int_equal(got.claim, 0);

    /* Presenting: lower is stale, equal fine, higher raises. */
    struct store_token t11 = tok(1, 1), t00 = tok(0, 0);
    assert_int_equal(store_mailbox_token(t->st, U1, &t11), STORE_STALE);
    assert_int_equal(store_mailbox_token(t->st, U1, &t12), STORE_OK);
    assert_int_equal(store_mailbox_token(t->st, U1, &t13), STORE_OK);
    assert_int_equal(store_mailbox_token(t->st, U1, &t00), STORE_INVALID);
    assert_int_equal(store_mailbox_token(t->st, "nobody@example.org", &t13), STORE_NOTFOUND);
    got = mbox_token(t->st, U1);
    assert_int_equal(store_token_cmp(&got, &t13), 0);

    /* A mover still holding (1,2): every kind of write is refused. */
    uint64_t ms = mbox_modseq(t->st, U1);
    store_token_set(t->st, U1, &t12);
    a.uid = 4;
    a.modseq = ms + 1;
    assert_int_equal(append1(t->st, &a, &res), STORE_STALE);
    assert_int_equal(store_msg_set_flags_at(t->st, U1, "Work", 3, STORE_F_SEEN, NULL, ms + 1),
                     STORE_STALE);
    assert_int_equal(
        store_msg_set_flags(t->st, U1, "Work", 3, STORE_FLAGS_SET, STORE_F_SEEN, NULL, 0, NULL),
        STORE_STALE);
    assert_int_equal(store_msg_expunge_at(t->st, U1, "Work", 3, ms + 1), STORE_STALE);
    struct store_msg m = {.uid = 9, .size = 3, .modseq = ms + 1, .keywords = ""};
    assert_int_equal(store_msg_tombstone(t->st, U1, "Work", &m), STORE_STALE);
    assert_int_equal(store_folder_create_at(t->st, U1, "New", 88, ms + 1), STORE_STALE);
    assert_int_equal(store_folder_rename_at(t->st, U1, "Work", "Play", ms + 1), STORE_STALE);
    assert_int_equal(store_folder_set_uidnext_at(t->st, U1, "Work", 50, ms + 1), STORE_STALE);
    assert_int_equal(store_folder_delete_at(t->st, U1, "Work", ms + 1), STORE_STALE);
    assert_int_equal(store_mailbox_raise_modseq(t->st, U1, ms + 5), STORE_STALE);
    assert_int_equal(store_delivery_add(t->st, U1, "d2", "Work", 3), STORE_STALE);
    struct store_delivery dr = {.id = "d3", .folder = "Work", .uid = 3};
    enum store_status dst;
    assert_int_equal(store_delivery_add_many(t->st, U1, &dr, 1, &dst), 0);
    assert_int_equal(dst, STORE_STALE);
    assert_int_equal(
        store_mailbox_set_state(t->st, U1, STORE_MBOX_STAGED, STORE_MBOX_ACTIVE, 2, NULL),
        STORE_STALE);
    assert_int_equal(
        store_mailbox_set_state(t->st, U1, STORE_MBOX_STAGED, STORE_MBOX_DELETING, 2, NULL),
        STORE_STALE);
    assert_int_equal(store_mailbox_purge(t->st, U1), STORE_STALE);
    /* Per mailbox: U2 is not U1's token's business. */
    assert_int_equal(store_folder_create_at(t->st, U2, "Other", 99, 4), STORE_OK);
    store_token_set(t->st, NULL, NULL);
    struct store_mailbox mb;
    assert_int_equal(store_mailbox_get(t->st, U1, &mb), STORE_OK);
    assert_int_equal(mb.modseq, ms);
    assert_int_equal(mb.state, STORE_MBOX_STAGED);
    assert_int_equal(count_msgs(t->st, U1, "Work"), 1);
    struct store_folder f;
    assert_int_equal(store_folder_get(t->st, U1, "Work", &f), STORE_OK);
    assert_int_equal(f.uidnext, 4);
    assert_int_equal(store_folder_get(t->st, U1, "New", &f), STORE_NOTFOUND);

    /* A later claim of the job, then a later job: each raises it. */
    reopen(t);
    got = mbox_token(t->st, U1);
    assert_int_equal(store_token_cmp(&got, &t13), 0);
    struct store_token t14 = tok(1, 4);
    store_token_set(t->st, U1, &t14);
    assert_int_equal(store_msg_set_flags_at(t->st, U1, "Work", 3, STORE_F_SEEN, NULL, ms),
                     STORE_OK);
    store_token_set(t->st, NULL, NULL);
    got = mbox_token(t->st, U1);
    assert_int_equal(store_token_cmp(&got, &t14), 0);
    store_token_set(t->st, U1, &t21);
    assert_int_equal(
        store_mailbox_set_state(t->st, U1, STORE_MBOX_STAGED, STORE_MBOX_ACTIVE, 2, NULL),
        STORE_OK);
    store_token_set(t->st, NULL, NULL);
    got = mbox_token(t->st, U1);
    assert_int_equal(store_token_cmp(&got, &t21), 0);
    /* Tokenless changes (deliveries, clients) are not checked. */
    assert_int_equal(deliver(t->st, U1, "after\r\n"), 1);
    assert_int_equal(
        store_msg_set_flags(t->st, U1, "Work", 3, STORE_FLAGS_ADD, STORE_F_FLAGGED, NULL, 0, NULL),
        STORE_OK);
    /* And the stale one still is refused on the live mailbox. */
    store_token_set(t->st, U1, &t14);
    assert_int_equal(
        store_mailbox_set_state(t->st, U1, STORE_MBOX_ACTIVE, STORE_MBOX_FENCED, 2, NULL),
        STORE_STALE);
    store_token_set(t->st, NULL, NULL);
    assert_int_equal(store_mailbox_get(t->st, U1, &mb), STORE_OK);
    assert_int_equal(mb.state, STORE_MBOX_ACTIVE);
}

#define BOTH(f)                                                                                    \
    cmocka_unit_test_prestate_setup_teardown(f, setup, teardown, &kind_mem),                       \
        cmocka_unit_test_prestate_setup_teardown(f, setup, teardown, &kind_fs)
#define FS(f) cmocka_unit_test_prestate_setup_teardown(f, setup, teardown, &kind_fs)

int main(void)
{
    log_init("test_store");
    const struct CMUnitTest tests[] = {
        BOTH(test_mailbox),
        BOTH(test_mailbox_create_with),
        BOTH(test_append_single),
        BOTH(test_append_batch),
        BOTH(test_require_live),
        BOTH(test_delivery_dup),
        BOTH(test_flags),
        BOTH(test_expunge),
        BOTH(test_folders),
        BOTH(test_changes_since),
        BOTH(test_invalid),
        BOTH(test_iter_stop),
        BOTH(test_state_guard),
        BOTH(test_state_staged),
        BOTH(test_set_uidnext),
        BOTH(test_raise_modseq),
        BOTH(test_explicit_modseq),
        BOTH(test_tombstone),
        BOTH(test_delivery_ids),
        BOTH(test_delivery_many),
        BOTH(test_delivery_ids_orphan),
        BOTH(test_token),
        FS(test_fence_other_handle),
        FS(test_crash_bodies_synced),
        FS(test_fsync_failure),
        FS(test_corrupt_body),
        FS(test_kill9_loop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
