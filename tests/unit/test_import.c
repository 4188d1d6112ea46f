/*
 * test_import — the import engine over an in-memory directory and store
 * (sync_local), with real mbox files and Maildir trees in a temporary
 * directory: keys and ids, the persisted state, a whole import, re-runs that
 * import nothing, an mbox rewritten by a client, identical messages, an
 * overlapping second source, a crash between an append and its record
 * (through a transport that fails on cue), watch → complete → sweep with
 * stragglers, bad messages in the report.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "directory/directory.h"
#include "import/import.h"
#include "import/import_private.h"
#include "store/store.h"
#include "sync/sync.h"
#include "util/util.h"

#define USER "alice@example.org"

/* ---- a transport that can fail on cue ----------------------------------- */

/* What the engine asked of its transports (all of a fixture's, summed). */
struct flaky_counts {
    int records;            /* records asked for, single or in batches */
    int delivery_add_calls; /* one record each */
    int delivery_batches;
    int append_batches;
    int ids;         /* appends sent with a delivery id */
    int duplicates;  /* appends the store answered as duplicates of their id */
    int refused_ids; /* appends refused "unsupported" (no_ids) */
};

struct flaky {
    struct sync base;
    struct sync *inner;
    struct flaky_counts *counts;
    int fail_delivery_add; /* the call that would write the Nth record fails (-1), 0 = never */
    int refuse_record;     /* the Nth record is refused (SYNC_NO "notlive"), the others of
                              its batch are written; 0 = never */
    int delivery_adds;     /* records asked for on this connection */
    int appends;
    bool no_ids;     /* a store from before delivery ids in APPENDS */
    int *give_back;  /* no_ids: the fixture's fail_delivery_add and refuse_record, which a
                        connection that refused ids hands on to the next one */
    bool pre_record; /* the first batch's first id is recorded just before it */
    bool same_id;    /* the first batch's second item gets the first's id */
};

static struct sync_ops flaky_ops;

static void flaky_close(struct sync *s)
{
    struct flaky *f = (struct flaky *)s;
    sync_close(&f->inner);
    free(f);
}

static int flaky_delivery_add(struct sync *s, const char *user, const struct sync_delivery *d,
                              const char **why_r)
{
    struct flaky *f = (struct flaky *)s;
    f->counts->delivery_add_calls++;
    f->counts->records++;
    if (++f->delivery_adds == f->fail_delivery_add) {
        *why_r = "simulated failure";
        return -1;
    }
    return f->inner->ops->delivery_add(f->inner, user, d, why_r);
}

/* A batch that holds the record fail_delivery_add fails as a whole before
 * anything is written (the connection dropped): every append it covers is
 * left without its record. refuse_record refuses one item only. */
static int flaky_delivery_add_batch(struct sync *s, const char *user,
                                    const struct sync_delivery *ds, size_t n, int *rc_out,
                                    const char **why_out)
{
    struct flaky *f = (struct flaky *)s;
    f->counts->delivery_batches++;
    f->counts->records += (int)n;
    int first = f->delivery_adds + 1;
    f->delivery_adds += (int)n;
    if (f->fail_delivery_add >= first && f->fail_delivery_add <= f->delivery_adds)
        return -1;
    if (f->refuse_record < first || f->refuse_record > f->delivery_adds)
        return f->inner->ops->delivery_add_batch(f->inner, user, ds, n, rc_out, why_out);
    size_t k = (size_t)(f->refuse_record - first);
    struct sync_delivery *rest = xcalloc(n, sizeof(*rest));
    int *rrc = xcalloc(n, sizeof(*rrc));
    const char **rwhy = xcalloc(n, sizeof(*rwhy));
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (i != k)
            rest[m++] = ds[i];
    int r = f->inner->ops->delivery_add_batch(f->inner, user, rest, m, rrc, rwhy);
    for (size_t i = 0, j = 0; r == 0 && i < n; i++) {
        if (i == k) {
            rc_out[i] = SYNC_NO;
            why_out[i] = "notlive";
        } else {
            rc_out[i] = rrc[j];
            why_out[i] = rwhy[j++];
        }
    }
    free(rest);
    free(rrc);
    free(rwhy);
    return r;
}

static int flaky_append_batch(struct sync *s, const char *user, const struct sync_msg *const *msgs,
                              const void *const *data, const size_t *lens, size_t n, int *rc_out,
                              const char **why_out, struct sync_append_res *res_out)
{
    struct flaky *f = (struct flaky *)s;
    f->appends += (int)n;
    f->counts->append_batches++;
    bool ids = false;
    for (size_t i = 0; i < n; i++)
        if (msgs[i]->delivery_id[0] != '\0')
            ids = true;
    if (ids && f->no_ids) {
        /* What sync_tcp reports for a store that refused the field. */
        for (size_t i = 0; i < n; i++) {
            rc_out[i] = SYNC_NO;
            why_out[i] = "unsupported";
        }
        f->counts->refused_ids += (int)n;
        if (f->delivery_adds == 0) {
            f->give_back[0] = f->fail_delivery_add;
            f->give_back[1] = f->refuse_record;
        }
        return 0;
    }
    const struct sync_msg **mp = xcalloc(n ? n : 1, sizeof(*mp));
    struct sync_msg *copy = xcalloc(n ? n : 1, sizeof(*copy));
    for (size_t i = 0; i < n; i++) {
        copy[i] = *msgs[i];
        mp[i] = &copy[i];
        if (copy[i].delivery_id[0] != '\0')
            f->counts->ids++;
    }
    if (f->same_id && n >= 2) {
        f->same_id = false;
        str_copy(copy[1].delivery_id, copy[0].delivery_id, sizeof(copy[1].delivery_id));
    }
    if (f->pre_record && n >= 1) {
        /* Another writer recorded the id meanwhile (without a message). */
        f->pre_record = false;
        struct sync_delivery d;
        memset(&d, 0, sizeof(d));
        str_copy(d.id, copy[0].delivery_id, sizeof(d.id));
        str_copy(d.folder, copy[0].folder, sizeof(d.folder));
        d.uid = 4242;
        const char *why = NULL;
        assert_int_equal(f->inner->ops->delivery_add(f->inner, user, &d, &why), 0);
    }
    int r =
        f->inner->ops->append_batch(f->inner, user, mp, data, lens, n, rc_out, why_out, res_out);
    for (size_t i = 0; r == 0 && res_out != NULL && i < n; i++)
        if (rc_out[i] == 0 && res_out[i].duplicate)
            f->counts->duplicates++;
    free(mp);
    free(copy);
    return r;
}

/* Forwarders for everything else, generated by hand for the few used. */
#define FWD(name, params, args)                                                                    \
    static int flaky_##name params                                                                 \
    {                                                                                              \
        struct flaky *f = (struct flaky *)s;                                                       \
        return f->inner->ops->name args;                                                           \
    }
FWD(mailbox_get, (struct sync * s, const char *u, struct store_mailbox *o, const char **w),
    (f->inner, u, o, w))
FWD(mailbox_create,
    (struct sync * s, const char *u, enum store_mbox_state st, uint64_t e, uint32_t uv,
     const char **w),
    (f->inner, u, st, e, uv, w))
FWD(changes,
    (struct sync * s, const char *u, uint64_t since, const struct sync_changes_cb *cb, uint64_t *m,
     const char **w),
    (f->inner, u, since, cb, m, w))
FWD(folder_ensure,
    (struct sync * s, const char *u, const char *n, uint32_t uv, uint32_t un, const char **w),
    (f->inner, u, n, uv, un, w))
FWD(deliveries,
    (struct sync * s, const char *u, struct sync_delivery **l, size_t *n, const char **w),
    (f->inner, u, l, n, w))
FWD(folders, (struct sync * s, const char *u, struct sync_folder **l, size_t *n, const char **w),
    (f->inner, u, l, n, w))
FWD(folder_create, (struct sync * s, const char *u, const char *n, const char **w),
    (f->inner, u, n, w))
FWD(msgs,
    (struct sync * s, const char *u, const char *fo, int (*cb)(void *, const struct sync_msg *),
     void *ctx, uint64_t *m, const char **w),
    (f->inner, u, fo, cb, ctx, m, w))
FWD(flags,
    (struct sync * s, const char *u, const char *fo, uint32_t uid, uint32_t fl, const char *kw,
     const char **w),
    (f->inner, u, fo, uid, fl, kw, w))

/* ---- fixture -------------------------------------------------------------- */

struct fx {
    char dir[64];
    struct directory *d;
    struct store *st;
    struct import_env env;
    int faults[2];   /* for the next transport opened: fail_delivery_add, refuse_record */
    bool no_ids;     /* every transport: the store is older than ids in APPENDS */
    bool pre_record; /* the next transport opened: see struct flaky */
    bool same_id;    /* likewise */
    struct flaky_counts counts;
    struct flaky *last;
};

static struct sync *connect_cb(void *ctx, const char *store, char *err, size_t errlen)
{
    struct fx *fx = ctx;
    if (strcmp(store, "s1") != 0) {
        snprintf(err, errlen, "no store %s", store);
        return NULL;
    }
    struct flaky *f = xmalloc(sizeof(*f));
    memset(f, 0, sizeof(*f));
    f->base.ops = &flaky_ops;
    f->inner = sync_local_new(fx->st);
    f->fail_delivery_add = fx->faults[0];
    fx->faults[0] = 0;
    f->refuse_record = fx->faults[1];
    f->counts = &fx->counts;
    fx->faults[1] = 0;
    f->no_ids = fx->no_ids;
    f->give_back = fx->faults;
    f->pre_record = fx->pre_record;
    f->same_id = fx->same_id;
    fx->pre_record = fx->same_id = false;
    fx->last = f;
    return &f->base;
}

static int setup(void **state)
{
    /* Every operation the engine uses is forwarded; any other one would be
     * called with the wrong object: NULL makes that a crash, not a guess. */
    memset(&flaky_ops, 0, sizeof(flaky_ops));
    flaky_ops.msgs = flaky_msgs;
    flaky_ops.flags = flaky_flags;
    flaky_ops.close = flaky_close;
    flaky_ops.delivery_add = flaky_delivery_add;
    flaky_ops.delivery_add_batch = flaky_delivery_add_batch;
    flaky_ops.append_batch = flaky_append_batch;
    flaky_ops.mailbox_get = flaky_mailbox_get;
    flaky_ops.mailbox_create = flaky_mailbox_create;
    flaky_ops.changes = flaky_changes;
    flaky_ops.folder_ensure = flaky_folder_ensure;
    flaky_ops.deliveries = flaky_deliveries;
    flaky_ops.folders = flaky_folders;
    flaky_ops.folder_create = flaky_folder_create;
    struct fx *fx = xmalloc(sizeof(*fx));
    strcpy(fx->dir, "/tmp/test_import.XXXXXX");
    assert_non_null(mkdtemp(fx->dir));
    fx->d = dir_open_memory();
    fx->st = store_open_memory("s1");
    assert_int_equal(dir_domain_add(fx->d, "example.org"), DIR_OK);
    assert_int_equal(dir_store_upsert(fx->d, "s1", "127.0.0.1:1"), DIR_OK);
    struct dir_user u;
    memset(&u, 0, sizeof(u));
    str_copy(u.address, USER, sizeof(u.address));
    str_copy(u.home, "s1", sizeof(u.home));
    str_copy(u.password_hash, "$y$x", sizeof(u.password_hash));
    assert_int_equal(dir_user_add(fx->d, &u), DIR_OK);
    fx->env.dir = fx->d;
    fx->env.connect = connect_cb;
    fx->env.ctx = fx;
    fx->env.owner = "test-mover";
    fx->env.lease_ms = 60000;
    fx->env.msg_max = 1 << 20;
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", fx->dir);
    assert_int_equal(system(cmd), 0);
    dir_close(&fx->d);
    store_close(&fx->st);
    free(fx);
    return 0;
}

/* Writes a file (creating directories), with its mtime in the past so an
 * mbox counts as settled. */
static void put_file(const char *path, const char *text)
{
    char *dir = xstrdup(path);
    *strrchr(dir, '/') = '\0';
    assert_int_equal(mkdir_p(dir, 0700), 0);
    free(dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write_full(fd, text, strlen(text)), 0);
    struct timespec ts[2] = {{time(NULL) - 100, 0}, {time(NULL) - 100, 0}};
    assert_int_equal(futimens(fd, ts), 0);
    close(fd);
}

static void append_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_APPEND);
    assert_true(fd >= 0);
    assert_int_equal(write_full(fd, text, strlen(text)), 0);
    struct timespec ts[2] = {{time(NULL) - 50, 0}, {time(NULL) - 50, 0}};
    assert_int_equal(futimens(fd, ts), 0);
    close(fd);
}

static uint64_t start_job(struct fx *fx, const char *spec, bool watch, uint64_t sweep)
{
    struct import_settings set;
    memset(&set, 0, sizeof(set));
    set.watch = watch;
    set.poll = 1;
    set.sweep = sweep;
    uint64_t id = 0;
    assert_int_equal(import_job_create(fx->d, USER, "s1", spec, &set, &id), DIR_OK);
    return id;
}

static struct dir_job job(struct fx *fx, uint64_t id)
{
    struct dir_job j;
    assert_int_equal(dir_job_get(fx->d, id, &j), DIR_OK);
    return j;
}

/* Claims the job and makes it due now (the mover's part). */
static void claim_due(struct fx *fx, uint64_t id)
{
    struct dir_job j = job(fx, id);
    str_copy(j.lease_owner, fx->env.owner, sizeof(j.lease_owner));
    j.lease_expires = time_now_ms() + 60000;
    j.checkpoint = 0;
    assert_int_equal(dir_job_update(fx->d, &j), DIR_OK);
}

/* Runs the job until it reaches `phase` (or ends), at most n runs. */
static void run_to(struct fx *fx, uint64_t id, const char *phase, int n)
{
    for (int i = 0; i < n; i++) {
        struct dir_job j = job(fx, id);
        if (strcmp(j.phase, phase) == 0)
            return;
        assert_string_not_equal(j.phase, "failed");
        claim_due(fx, id);
        import_run(&fx->env, id);
    }
    struct dir_job j = job(fx, id);
    fail_msg("job in phase %s (%s), wanted %s", j.phase, j.last_error, phase);
}

static void set_complete(struct fx *fx, uint64_t id)
{
    struct dir_job j = job(fx, id);
    j.options |= DIR_JOB_OPT_COMPLETE;
    assert_int_equal(dir_job_update(fx->d, &j), DIR_OK);
}

struct seen {
    char subjects[64][64];
    uint32_t flags[64];
    char keywords[64][128];
    uint32_t uids[64];
    size_t n;
};

/* Subjects of a folder's live messages, in UID order. */
static void folder_msgs(struct fx *fx, const char *folder, struct seen *s)
{
    memset(s, 0, sizeof(*s));
    struct store_folder f;
    if (store_folder_get(fx->st, USER, folder, &f) != STORE_OK)
        return;
    for (uint32_t uid = 1; uid < f.uidnext && s->n < 64; uid++) {
        struct buf b;
        buf_init(&b, 0);
        if (store_msg_read(fx->st, USER, folder, uid, &b) == STORE_OK) {
            const char *p = strstr(b.data, "Subject: ");
            size_t k = 0;
            if (p != NULL)
                for (p += 9; *p != '\r' && k < 63; p++)
                    s->subjects[s->n][k++] = *p;
            s->subjects[s->n][k] = '\0';
            s->uids[s->n] = uid;
            s->n++;
        }
        buf_free(&b);
    }
}

static size_t count_subject(const struct seen *s, const char *subj)
{
    size_t n = 0;
    for (size_t i = 0; i < s->n; i++)
        n += strcmp(s->subjects[i], subj) == 0;
    return n;
}

static struct import_state job_state(struct fx *fx, uint64_t id)
{
    struct buf b;
    buf_init(&b, 0);
    assert_int_equal(dir_job_data_get(fx->d, id, &b), DIR_OK);
    struct import_state st;
    import_state_init(&st);
    const char *e = NULL;
    if (import_state_read(&st, b.data, b.len, &e) < 0)
        fail_msg("state: %s", e);
    buf_free(&b);
    return st;
}

static const struct import_fstate *fstate(const struct import_state *st, const char *name)
{
    for (size_t i = 0; i < st->n; i++)
        if (strcmp(st->f[i].name, name) == 0)
            return &st->f[i];
    fail_msg("no folder %s in the state", name);
    return NULL;
}

static char *msg(const char *subj, const char *extra)
{
    return xasprintf("From a@b Sat Jan  3 01:05:34 1996\nSubject: %s\n%s\nbody of %s\n\n", subj,
                     extra, subj);
}

/* ---- keys, ids, state -------------------------------------------------------- */

static void test_keys_and_ids(void **state)
{
    (void)state;
    struct import_keys a, b;
    import_key_ident(&a, USER, "mbox", "", "INBOX", "0:abc");
    import_key_ident(&b, USER, "mbox", "", "INBOX", "0:abd");
    assert_memory_not_equal(a.ik, b.ik, IMPORT_IK_LEN);
    import_key_ident(&b, USER, "mbox", "", "INBOX", "0:abc");
    assert_memory_equal(a.ik, b.ik, IMPORT_IK_LEN);
    assert_memory_equal(a.guid, b.guid, STORE_GUID_LEN);
    /* Fields cannot run into each other. */
    import_key_ident(&b, USER, "mbox", "", "INBOX0", ":abc");
    assert_memory_not_equal(a.ik, b.ik, IMPORT_IK_LEN);

    /* Volatile headers do not change the content key; others do. */
    const char m1[] = "Subject: x\r\nStatus: RO\r\nX-Keywords: a\r\n  b\r\n\r\nStatus: body\r\n";
    const char m2[] = "Subject: x\r\n\r\nStatus: body\r\n";
    const char m3[] = "Subject: y\r\n\r\nStatus: body\r\n";
    const char m4[] = "Subject: x\r\n\r\nbody\r\n";
    import_key_content(&a, m1, strlen(m1));
    import_key_content(&b, m2, strlen(m2));
    assert_memory_equal(a.ck, b.ck, IMPORT_CK_LEN);
    import_key_content(&b, m3, strlen(m3));
    assert_memory_not_equal(a.ck, b.ck, IMPORT_CK_LEN);
    import_key_content(&b, m4, strlen(m4));
    assert_memory_not_equal(a.ck, b.ck, IMPORT_CK_LEN);

    char id[STORE_DELIVERY_ID_MAX + 1];
    uint64_t jobs[] = {1, 35, 36, 123456789, UINT64_C(4000000000000000000)};
    for (size_t i = 0; i < ARRAY_SIZE(jobs); i++) {
        import_id_make(&a, IMPORT_MARK_STRAGGLER, jobs[i], id);
        assert_true(strlen(id) <= STORE_DELIVERY_ID_MAX);
        uint8_t ik[IMPORT_IK_LEN], ck[IMPORT_CK_LEN];
        enum import_mark mark;
        uint64_t j;
        assert_int_equal(import_id_parse(id, ik, ck, &mark, &j), 0);
        assert_memory_equal(ik, a.ik, IMPORT_IK_LEN);
        assert_memory_equal(ck, a.ck, IMPORT_CK_LEN);
        assert_int_equal(mark, IMPORT_MARK_STRAGGLER);
        assert_int_equal(j, jobs[i]);
    }
    uint8_t ik[IMPORT_IK_LEN], ck[IMPORT_CK_LEN];
    enum import_mark mark;
    uint64_t j;
    static const char *const bad[] = {"",
                                      "q1a2b3",
                                      "imp1.",
                                      "imp2.AAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAA.c1",
                                      "imp1.AAAAAAAAAAAAAAAAAAA!.AAAAAAAAAAAAAAAAAAAA.c1",
                                      "imp1.AAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAA.x1",
                                      "imp1.AAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAA.c",
                                      "imp1.AAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAA.c1?"};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
        assert_int_equal(import_id_parse(bad[i], ik, ck, &mark, &j), -1);
}

static void test_state_round_trip(void **state)
{
    (void)state;
    struct import_state s, t;
    import_state_init(&s);
    import_state_init(&t);
    s.set.watch = true;
    s.set.poll = 7;
    s.set.sweep = 3600;
    str_copy(s.set.secret, "/tmp/x y.pw", sizeof(s.set.secret));
    s.inflight = true;
    s.cutover = 1800000000;
    struct import_fstate *f = import_state_folder(&s, "Entw&APw-rfe/Sub Folder");
    f->cp = 12345;
    f->uidvalidity = 77;
    f->mbox_format = 2;
    f->src_msgs = 9;
    f->imported = 4;
    str_copy(f->uid_note, "why not", sizeof(f->uid_note));
    for (int i = 0; i < IMPORT_FAILS_KEPT + 5; i++)
        import_fstate_fail(f, "offset 1", "message over the size limit");
    import_state_folder(&s, "INBOX")->already = 3;
    struct buf b;
    buf_init(&b, 0);
    import_state_write(&s, &b);
    const char *e = NULL;
    assert_int_equal(import_state_read(&t, b.data, b.len, &e), 0);
    assert_true(t.set.watch);
    assert_int_equal(t.set.poll, 7);
    assert_int_equal(t.set.sweep, 3600);
    assert_string_equal(t.set.secret, "/tmp/x y.pw");
    assert_true(t.inflight);
    assert_int_equal(t.cutover, 1800000000);
    assert_int_equal(t.n, 2);
    const struct import_fstate *g = fstate(&t, "Entw&APw-rfe/Sub Folder");
    assert_int_equal(g->cp, 12345);
    assert_int_equal(g->uidvalidity, 77);
    assert_int_equal(g->mbox_format, 2);
    assert_int_equal(g->imported, 4);
    assert_int_equal(g->failed, IMPORT_FAILS_KEPT + 5);
    assert_int_equal(g->n_fails, IMPORT_FAILS_KEPT);
    assert_string_equal(g->uid_note, "why not");
    assert_int_equal(fstate(&t, "INBOX")->already, 3);

    /* Damaged texts are refused whole. */
    static const char *const bad[] = {
        "",
        "tern-import 2\n",
        "tern-import 1\nS watch=2\n",
        "tern-import 1\nS poll=0\n",
        "tern-import 1\nF src=41\n",
        "tern-import 1\nF name=4\n",
        "tern-import 1\nF name=41 cp=x\n",
        "tern-import 1\nX where=41 why=41\n",
        "tern-import 1\nQ\n",
        "tern-import 1\nF name=41",
        "tern-import 1\nF  name=41\n",
        "tern-import 1\nF name=4100\n",
        "tern-import 1\nF name=41\nX where=41 why=41\nF name=41\n",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        e = NULL;
        assert_int_equal(import_state_read(&t, bad[i], strlen(bad[i]), &e), -1);
        assert_non_null(e);
    }
    /* Unknown keys are ignored (a newer writer). */
    const char ok[] = "tern-import 1\nS future=1\nF name=41 future=zz\n";
    assert_int_equal(import_state_read(&t, ok, strlen(ok), &e), 0);
    assert_int_equal(t.n, 1);
    buf_free(&b);
    import_state_free(&s);
    import_state_free(&t);
}

static void test_imap_url_and_date(void **state)
{
    (void)state;
    char user[256], host[256];
    int port;
    bool tls;
    const char *e;
    assert_int_equal(import_imap_url("imap://bob@mail.example.com:10143", user, sizeof(user), host,
                                     sizeof(host), &port, &tls, &e),
                     0);
    assert_string_equal(user, "bob");
    assert_string_equal(host, "mail.example.com");
    assert_int_equal(port, 10143);
    assert_false(tls);
    assert_int_equal(import_imap_url("imaps://a%40b.org@[::1]/", user, sizeof(user), host,
                                     sizeof(host), &port, &tls, &e),
                     0);
    assert_string_equal(user, "a@b.org");
    assert_string_equal(host, "::1");
    assert_int_equal(port, 993);
    assert_true(tls);
    assert_int_equal(import_imap_url("imap://x@y@127.0.0.1", user, sizeof(user), host, sizeof(host),
                                     &port, &tls, &e),
                     0);
    assert_string_equal(user, "x@y");
    assert_int_equal(port, 143);
    static const char *const bad[] = {"imap://host",    "imap://@host",     "imap://u@",
                                      "imap://u@h:0",   "imap://u@h:70000", "imap://u@h:1/INBOX",
                                      "imap://u%4@h",   "pop3://u@h",       "imap://u@[::1",
                                      "imap://u@h o:1", "imap://u\x01@h"};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
        assert_int_equal(
            import_imap_url(bad[i], user, sizeof(user), host, sizeof(host), &port, &tls, &e), -1);
    int64_t t;
    assert_int_equal(imapc_parse_date("17-Jul-1996 02:44:25 -0700", 26, &t), 0);
    assert_int_equal(t, 837596665);
    assert_int_equal(imapc_parse_date(" 1-Jan-1970 00:00:00 +0000", 26, &t), 0);
    assert_int_equal(t, 0);
    assert_int_equal(imapc_parse_date("1-Jan-2000 01:00:00 +0100", 25, &t), 0);
    assert_int_equal(t, 946684800);
    static const char *const bad_dates[] = {
        "17-Jux-1996 02:44:25 -0700", "17-Jul-1996 02:44:25",       "32-Jul-1996 02:44:25 -0700",
        "17-Jul-1996 24:44:25 -0700", "17-Jul-1996 02:44:25 -0799", "17-Jul-1996 02:44:25 -0700x"};
    for (size_t i = 0; i < ARRAY_SIZE(bad_dates); i++)
        assert_int_equal(imapc_parse_date(bad_dates[i], strlen(bad_dates[i]), &t), -1);
}

/* ---- the IMAP client's response parser (from memory) ----------------------- */

struct names {
    char n[8][64];
    char delim[8];
    size_t count;
};

static int name_cb(void *ctx, const char *name, size_t len, char delim)
{
    struct names *ns = ctx;
    assert_true(ns->count < 8 && len < 64);
    memcpy(ns->n[ns->count], name, len);
    ns->n[ns->count][len] = '\0';
    ns->delim[ns->count++] = delim;
    return 0;
}

static void test_imapc_responses(void **state)
{
    (void)state;
    const char srv[] = "* LIST (\\HasNoChildren) \".\" INBOX\r\n"
                       "* LIST (\\Noselect \\HasChildren) \".\" \"Parent\"\r\n"
                       "* LIST () \".\" {10}\r\nwe\"ird one\r\n"
                       "* LIST () NIL \"Sent \\\"Items\\\"\"\r\n"
                       "t1 OK done\r\n"
                       "* 3 EXISTS\r\n* OK [UIDVALIDITY 42] x\r\n* OK [UIDNEXT 9] x\r\n"
                       "* OK [HIGHESTMODSEQ 77] x\r\nt2 OK [READ-ONLY] done\r\n"
                       "* 1 FETCH (UID 4 FLAGS (\\Seen \\Recent $Label1 \\Unknown) "
                       "INTERNALDATE \"17-Jul-1996 02:44:25 -0700\" BODY[] {6}\r\nhi\r\nxx)\r\n"
                       "* 2 FETCH (FLAGS (\\Deleted))\r\n"
                       "* 9 EXPUNGE\r\n"
                       "* 3 FETCH (UID 9 MODSEQ (12) BODY[] NIL FLAGS ())\r\n"
                       "* 4 FETCH (UID 10 BODY[] {30}\r\n123456789012345678901234567890)\r\n"
                       "* 5 FETCH (UID 2 BODY[] \"x\")\r\n" /* under from: "n:*" quirk */
                       "t3 OK fetched\r\n";
    struct imapc *c = imapc_new_mem(srv, strlen(srv));
    struct names ns = {0};
    const char *e;
    assert_int_equal(imapc_list(c, name_cb, &ns, &e), 0);
    assert_int_equal(ns.count, 3);
    assert_string_equal(ns.n[0], "INBOX");
    assert_int_equal(ns.delim[0], '.');
    assert_string_equal(ns.n[1], "we\"ird one");
    assert_string_equal(ns.n[2], "Sent \"Items\"");
    assert_int_equal(ns.delim[2], 0);
    struct imapc_box b;
    assert_int_equal(imapc_examine(c, "INBOX", 5, &b, &e), 0);
    assert_int_equal(b.uidvalidity, 42);
    assert_int_equal(b.uidnext, 9);
    assert_int_equal(b.exists, 3);
    assert_int_equal(b.highestmodseq, 77);
    assert_int_equal(imapc_fetch_start(c, 3, 0, 20, &e), 0);
    struct imapc_msg m;
    imapc_msg_init(&m);
    assert_int_equal(imapc_fetch_next(c, &m, &e), 1);
    assert_int_equal(m.uid, 4);
    assert_int_equal(m.flags, MAIL_F_SEEN);
    assert_string_equal(m.keywords.data, "$Label1");
    assert_true(m.has_date);
    assert_int_equal(m.internal_date, 837596665);
    assert_int_equal(m.body.len, 6);
    assert_memory_equal(m.body.data, "hi\r\nxx", 6);
    assert_int_equal(imapc_fetch_next(c, &m, &e), 1);
    assert_int_equal(m.uid, 9);
    assert_int_equal(m.body.len, 0);
    assert_false(m.too_big);
    assert_int_equal(imapc_fetch_next(c, &m, &e), 1);
    assert_int_equal(m.uid, 10);
    assert_true(m.too_big);
    assert_int_equal(m.size, 30);
    assert_int_equal(imapc_fetch_next(c, &m, &e), 0);
    imapc_msg_free(&m);
    imapc_free(&c);

    /* A listing without bodies, then bodies for a set. */
    const char srv2[] = "* 1 FETCH (UID 3 FLAGS (\\Seen) RFC822.SIZE 123)\r\n"
                        "* 2 FETCH (UID 5 RFC822.SIZE 7 FLAGS ())\r\nt1 OK\r\n"
                        "* 2 FETCH (UID 5 FLAGS () BODY[] {3}\r\nabc)\r\nt2 OK\r\n";
    c = imapc_new_mem(srv2, strlen(srv2));
    imapc_msg_init(&m);
    assert_int_equal(imapc_fetch_meta_start(c, 1, &e), 0);
    assert_int_equal(imapc_fetch_next(c, &m, &e), 1);
    assert_int_equal(m.uid, 3);
    assert_int_equal(m.size, 123);
    assert_int_equal(m.flags, MAIL_F_SEEN);
    assert_int_equal(imapc_fetch_next(c, &m, &e), 1);
    assert_int_equal(m.uid, 5);
    assert_int_equal(m.size, 7);
    assert_int_equal(imapc_fetch_next(c, &m, &e), 0);
    assert_int_equal(imapc_fetch_set_start(c, "5", 100, &e), 0);
    assert_int_equal(imapc_fetch_next(c, &m, &e), 1);
    assert_int_equal(m.body.len, 3);
    assert_int_equal(imapc_fetch_next(c, &m, &e), 0);
    assert_int_equal(imapc_fetch_set_start(c, "5 BODY[]", 100, &e), -1); /* a bug: refused */
    imapc_msg_free(&m);
    imapc_free(&c);

    /* Every way a response can be wrong: an error, never a crash. */
    static const struct {
        const char *name, *text;
        int op; /* 0 list, 1 examine, 2 fetch */
    } bad[] = {
        {"unbalanced LIST", "* LIST (\\HasNoChildren \".\" INBOX\r\nt1 OK\r\n", 0},
        {"LIST without a name", "* LIST () \".\"\r\nt1 OK\r\n", 0},
        {"NO to LIST", "t1 NO no way\r\n", 0},
        {"no CRLF", "* LIST () \".\" INBOX\n", 0},
        {"end of input", "* LIST () \".\" INBOX\r\n", 0},
        {"continuation out of place", "+ go on\r\n", 0},
        {"BYE", "* BYE bye\r\n", 0},
        {"literal cut short", "* LIST () \".\" {10}\r\nabc", 0},
        {"no UIDVALIDITY", "* 3 EXISTS\r\nt1 OK\r\n", 1},
        {"BAD examine", "t1 BAD what\r\n", 1},
        {"unterminated quote", "* 1 FETCH (UID 1 BODY[] \"abc)\r\nt1 OK\r\n", 2},
        {"huge literal count", "* 1 FETCH (UID 1 BODY[] {99999999999999999999}\r\nt1 OK\r\n", 2},
        {"bad UID", "* 1 FETCH (UID x BODY[] NIL)\r\nt1 OK\r\n", 2},
        {"UID 0", "* 1 FETCH (UID 0 BODY[] NIL)\r\nt1 OK\r\n", 2},
        {"bad flags", "* 1 FETCH (UID 1 FLAGS \\Seen BODY[] NIL)\r\nt1 OK\r\n", 2},
        {"unknown item without value", "* 1 FETCH (UID 1 X-THING)\r\nt1 OK\r\n", 2},
        {"BYE in a fetch", "* BYE going down\r\n", 2},
        {"NO to a fetch", "t1 NO gone\r\n", 2},
        {"big literal cut short", "* 1 FETCH (UID 1 BODY[] {70000}\r\n", 2},
    };
    char *longline = xmalloc(70 * 1024 + 8);
    memset(longline, 'a', 70 * 1024);
    strcpy(longline + 70 * 1024, "\r\n");
    for (size_t i = 0; i <= ARRAY_SIZE(bad); i++) {
        const char *text = i < ARRAY_SIZE(bad) ? bad[i].text : longline;
        int op = i < ARRAY_SIZE(bad) ? bad[i].op : 0;
        c = imapc_new_mem(text, strlen(text));
        int r;
        e = NULL;
        if (op == 0) {
            ns.count = 0;
            r = imapc_list(c, name_cb, &ns, &e);
        } else if (op == 1) {
            r = imapc_examine(c, "INBOX", 5, &b, &e);
        } else {
            imapc_msg_init(&m);
            assert_int_equal(imapc_fetch_start(c, 1, 0, 100000, &e), 0);
            r = imapc_fetch_next(c, &m, &e);
            imapc_msg_free(&m);
        }
        if (r >= 0 && !(op == 1 && r == 1))
            fail_msg("case %zu (%s) was accepted", i, i < ARRAY_SIZE(bad) ? bad[i].name : "long");
        assert_non_null(e);
        assert_true(strlen(e) > 0);
        imapc_free(&c);
    }
    free(longline);
}

/* ---- whole imports ------------------------------------------------------------ */

static void test_mbox_import_and_rerun(void **state)
{
    struct fx *fx = *state;
    char *path = xasprintf("%s/mail/inbox", fx->dir);
    char *m1 = msg("one", "Status: RO\nX-Status: F\nX-Keywords: $Label1 work"),
         *m2 = msg("two", ""), *m3 = msg("three", "");
    char *text = xasprintf("%s%s%s", m1, m2, m3);
    put_file(path, text);
    char *sub = xasprintf("%s/mail/Work.sbd/Projects", fx->dir);
    put_file(sub, m2);
    char *spec = xasprintf("mbox:%s/mail", fx->dir);

    uint64_t id = start_job(fx, spec, false, 0);
    run_to(fx, id, "done", 10);
    struct seen s;
    folder_msgs(fx, "INBOX", &s);
    assert_int_equal(s.n, 3);
    assert_string_equal(s.subjects[0], "one");
    assert_string_equal(s.subjects[2], "three");
    folder_msgs(fx, "Work/Projects", &s);
    assert_int_equal(s.n, 1);
    /* Flags and keywords from Status:/X-Status:/X-Keywords:. */
    struct sync *sy = sync_local_new(fx->st);
    struct sync_folder *fl;
    size_t nf;
    const char *why;
    assert_int_equal(sy->ops->folders(sy, USER, &fl, &nf, &why), 0);
    free(fl);
    sync_close(&sy);
    struct import_state st = job_state(fx, id);
    const struct import_fstate *f = fstate(&st, "INBOX");
    assert_int_equal(f->src_msgs, 3);
    assert_int_equal(f->imported, 3);
    assert_int_equal(f->already, 0);
    assert_int_equal(f->failed, 0);
    import_state_free(&st);
    struct dir_job j = job(fx, id);
    assert_int_equal(j.msgs_done, 4);

    /* A second job over the same source imports nothing. */
    uint64_t id2 = start_job(fx, spec, false, 0);
    run_to(fx, id2, "done", 10);
    folder_msgs(fx, "INBOX", &s);
    assert_int_equal(s.n, 3);
    st = job_state(fx, id2);
    f = fstate(&st, "INBOX");
    assert_int_equal(f->imported, 0);
    assert_int_equal(f->already, 3);
    assert_int_equal(fstate(&st, "Work/Projects")->already, 1);
    import_state_free(&st);

    /* The report says so. */
    char *rep = NULL;
    size_t replen = 0;
    FILE *out = open_memstream(&rep, &replen);
    const char *e;
    assert_int_equal(import_report(fx->d, id2, out, &e), 0);
    fclose(out);
    assert_non_null(strstr(rep, "INBOX"));
    assert_non_null(strstr(rep, "Work/Projects"));
    free(rep);
    free(m1);
    free(m2);
    free(m3);
    free(text);
    free(sub);
    free(spec);
    free(path);
}

/* A client rewrites the mbox (deletes the first message, changes a Status
 * header): offsets shift, contents stay; a new message comes in once. */
static void test_mbox_rewritten(void **state)
{
    struct fx *fx = *state;
    char *path = xasprintf("%s/box", fx->dir);
    char *a = msg("a", "Status: O"), *b = msg("b", "Status: O"), *c = msg("c", ""),
         *b2 = msg("b", "Status: RO"), *d = msg("d", "");
    char *t1 = xasprintf("%s%s%s", a, b, c);
    put_file(path, t1);
    char *spec = xasprintf("mbox:%s", path);
    uint64_t id = start_job(fx, spec, true, 0);
    run_to(fx, id, "watch", 10);
    struct seen s;
    folder_msgs(fx, "INBOX", &s);
    assert_int_equal(s.n, 3);

    char *t2 = xasprintf("%s%s%s", b2, c, d);
    put_file(path, t2);
    claim_due(fx, id);
    import_run(&fx->env, id);
    folder_msgs(fx, "INBOX", &s);
    assert_int_equal(s.n, 4);
    assert_int_equal(count_subject(&s, "b"), 1);
    assert_int_equal(count_subject(&s, "c"), 1);
    assert_int_equal(count_subject(&s, "d"), 1);
    struct import_state st = job_state(fx, id);
    assert_int_equal(fstate(&st, "INBOX")->dups, 2);
    assert_int_equal(fstate(&st, "INBOX")->imported, 4);
    import_state_free(&st);
    /* Appending after the rewrite is read from the checkpoint. */
    char *e1 = msg("e", "");
    append_file(path, e1);
    claim_due(fx, id);
    import_run(&fx->env, id);
    folder_msgs(fx, "INBOX", &s);
    assert_int_equal(s.n, 5);
    assert_int_equal(count_subject(&s, "e"), 1);
    free(a);
    free(b);
    free(c);
    free(b2);
    free(d);
    free(e1);
    free(t1);
    free(t2);
    free(spec);
    free(path);
}

/* Two identical messages are two; a re-run keeps them two. */
static void test_identical_messages(void **state)
{
    struct fx *fx = *state;
    char *path = xasprintf("%s/box", fx->dir);
    char *a = msg("same", "");
    char *t = xasprintf("%s%s%s", a, a, a);
    put_file(path, t);
    char *spec = xasprintf("mbox:%s", path);
    uint64_t id = start_job(fx, spec, false, 0);
    run_to(fx, id, "done", 10);
    struct seen s;
    folder_msgs(fx, "INBOX", &s);
    assert_int_equal(count_subject(&s, "same"), 3);
    uint64_t id2 = start_job(fx, spec, false, 0);
    run_to(fx, id2, "done", 10);
    folder_msgs(fx, "INBOX", &s);
    assert_int_equal(count_subject(&s, "same"), 3);
    free(a);
    free(t);
    free(spec);
    free(path);
}

static void put_maildir_msg(const char *root, const char *sub, const char *name, const char *text)
{
    char *p = xasprintf("%s/%s/%s", root, sub, name);
    put_file(p, text);
    free(p);
    for (const char *d = "tmp"; d != NULL; d = NULL) {
        char *q = xasprintf("%s/%s/../%s", root, sub, d);
        mkdir_p(q, 0700);
        free(q);
    }
}

/* The same mail from an mbox and then from a Maildir: once. */
static void test_overlapping_sources(void **state)
{
    struct fx *fx = *state;
    char *box = xasprintf("%s/box", fx->dir);
    char *t = xasprintf("From a@b Sat Jan  3 01:05:34 1996\nSubject: x\nStatus: RO\n\nhi\n\n"
                        "From a@b Sat Jan  3 01:05:34 1996\nSubject: y\n\nyo\n");
    put_file(box, t);
    char *spec = xasprintf("mbox:%s", box);
    uint64_t id = start_job(fx, spec, false, 0);
    run_to(fx, id, "done", 10);
    char *md = xasprintf("%s/Maildir", fx->dir);
    put_maildir_msg(md, "cur", "1000.a.host:2,S", "Subject: x\n\nhi\n");
    put_maildir_msg(md, "new", "1001.b.host", "Subject: z\n\nnew one\n");
    put_maildir_msg(md, "new", "1002.c.host", "Subject: y\n\nyo\n");
    char *spec2 = xasprintf("maildir:%s", md);
    uint64_t id2 = start_job(fx, spec2, false, 0);
    run_to(fx, id2, "done", 10);
    struct seen s;
    folder_msgs(fx, "INBOX", &s);
    assert_int_equal(s.n, 3);
    assert_int_equal(count_subject(&s, "x"), 1);
    assert_int_equal(count_subject(&s, "y"), 1);
    assert_int_equal(count_subject(&s, "z"), 1);
    struct import_state st = job_state(fx, id2);
    assert_int_equal(fstate(&st, "INBOX")->dups, 2);
    assert_int_equal(fstate(&st, "INBOX")->imported, 1);
    import_state_free(&st);
    free(t);
    free(box);
    free(spec);
    free(md);
    free(spec2);
}

/* A store older than delivery ids in APPENDS (the fallback: appends
 * without, records in a DELIVERED afterwards). The record of an append
 * fails (the connection drops after the commit): the next run finds the
 * message by its GUID and records it; nothing twice, and the counts are
 * exact. */
static void test_crash_between_append_and_record(void **state)
{
    struct fx *fx = *state;
    fx->no_ids = true;
    char *md = xasprintf("%s/Maildir", fx->dir);
    for (int i = 0; i < 10; i++) {
        char name[32], text[64];
        snprintf(name, sizeof(name), "%d.m%d.host:2,", 2000 + i, i);
        snprintf(text, sizeof(text), "Subject: m%d\n\nbody %d\n", i, i);
        put_maildir_msg(md, "cur", name, text);
    }
    put_maildir_msg(md, ".Archive/cur", "3000.x.host:2,S", "Subject: arch\n\nold\n");
    char *spec = xasprintf("maildir:%s", md);
    uint64_t id = start_job(fx, spec, false, 0);
    fx->faults[0] = 4; /* after the append, the 4th record fails */
    claim_due(fx, id);
    assert_int_equal(import_run(&fx->env, id), IMPORT_LATER);
    struct import_state st = job_state(fx, id);
    assert_true(st.inflight);
    import_state_free(&st);
    run_to(fx, id, "done", 10);
    struct seen s;
    folder_msgs(fx, "INBOX", &s);
    assert_int_equal(s.n, 10);
    for (int i = 0; i < 10; i++) {
        char subj[16];
        snprintf(subj, sizeof(subj), "m%d", i);
        assert_int_equal(count_subject(&s, subj), 1);
    }
    folder_msgs(fx, "Archive", &s);
    assert_int_equal(s.n, 1);
    st = job_state(fx, id);
    assert_false(st.inflight);
    assert_int_equal(fstate(&st, "INBOX")->imported, 10);
    assert_int_equal(fstate(&st, "Archive")->imported, 1);
    assert_int_equal(fx->counts.ids, 0); /* every id the old store got was refused */
    assert_true(fx->counts.refused_ids >= 10);
    import_state_free(&st);
    free(md);
    free(spec);
}

/* The number of live messages in a folder of the destination. */
static uint64_t live_msgs(struct fx *fx, const char *folder)
{
    struct store_folder f;
    assert_int_equal(store_folder_get(fx->st, USER, folder, &f), STORE_OK);
    return f.messages;
}

/* The records of a batch travel in its APPENDS as delivery ids: one store
 * commit per batch for messages and records together, no DELIVERED, every
 * message recorded once. With a store from before the ids: the first
 * batch of a run is refused "unsupported" and sent again without them,
 * then as many record batches as append batches. */
static void test_records_one_batch_per_commit(void **state)
{
    struct fx *fx = *state;
    char *md = xasprintf("%s/Maildir", fx->dir);
    for (int i = 0; i < 300; i++) {
        char name[32], text[64];
        snprintf(name, sizeof(name), "%d.m%d.host:2,S", 5000 + i, i);
        snprintf(text, sizeof(text), "Subject: m%d\n\nbody %d\n", i, i);
        put_maildir_msg(md, "cur", name, text);
    }
    for (int i = 0; i < 5; i++) {
        char name[32], text[64];
        snprintf(name, sizeof(name), "%d.a%d.host:2,", 6000 + i, i);
        snprintf(text, sizeof(text), "Subject: a%d\n\nold %d\n", i, i);
        put_maildir_msg(md, ".Archive/cur", name, text);
    }
    char *spec = xasprintf("maildir:%s", md);
    uint64_t id = start_job(fx, spec, false, 0);
    run_to(fx, id, "done", 10);
    assert_int_equal(live_msgs(fx, "INBOX"), 300);
    assert_int_equal(live_msgs(fx, "Archive"), 5);
    /* 128 + 128 + 44 in INBOX, 5 in Archive. */
    assert_int_equal(fx->counts.append_batches, 4);
    assert_int_equal(fx->counts.ids, 305);
    assert_int_equal(fx->counts.duplicates, 0);
    assert_int_equal(fx->counts.delivery_batches, 0);
    assert_int_equal(fx->counts.delivery_add_calls, 0);
    assert_int_equal(fx->counts.records, 0);
    struct import_state st = job_state(fx, id);
    assert_false(st.inflight);
    assert_int_equal(fstate(&st, "INBOX")->imported, 300);
    assert_int_equal(fstate(&st, "Archive")->imported, 5);
    import_state_free(&st);
    /* A second job over the same source: nothing appended, nothing recorded. */
    memset(&fx->counts, 0, sizeof(fx->counts));
    uint64_t id2 = start_job(fx, spec, false, 0);
    run_to(fx, id2, "done", 10);
    assert_int_equal(fx->counts.append_batches, 0);
    assert_int_equal(fx->counts.records, 0);
    assert_int_equal(live_msgs(fx, "INBOX"), 300);
    free(spec);

    /* The same into another mailbox-less run against an old store. */
    char *md2 = xasprintf("%s/Maildir2", fx->dir);
    for (int i = 0; i < 200; i++) {
        char name[32], text[64];
        snprintf(name, sizeof(name), "%d.n%d.host:2,S", 7000 + i, i);
        snprintf(text, sizeof(text), "Subject: n%d\n\nbody %d\n", i, i);
        put_maildir_msg(md2, "cur", name, text);
    }
    memset(&fx->counts, 0, sizeof(fx->counts));
    fx->no_ids = true;
    spec = xasprintf("maildir:%s", md2);
    uint64_t id3 = start_job(fx, spec, false, 0);
    run_to(fx, id3, "done", 10);
    assert_int_equal(live_msgs(fx, "INBOX"), 500);
    /* 128 + 72; the first batch once more, refused whole. */
    assert_int_equal(fx->counts.refused_ids, 128);
    assert_int_equal(fx->counts.append_batches, 3);
    assert_int_equal(fx->counts.ids, 0);
    assert_int_equal(fx->counts.delivery_batches, 2);
    assert_int_equal(fx->counts.records, 200);
    st = job_state(fx, id3);
    assert_false(st.inflight);
    assert_int_equal(fstate(&st, "INBOX")->imported, 200);
    import_state_free(&st);
    free(md2);
    free(md);
    free(spec);
}

/* Ids the store has already: the first batch's first id recorded by
 * another writer just before (no message), and one batch in which two
 * records carry the same id. Each duplicate stores nothing and counts as
 * "already there"; everything else is imported once. */
static void test_ids_already_there(void **state)
{
    struct fx *fx = *state;
    char *md = xasprintf("%s/Maildir", fx->dir);
    for (int i = 0; i < 10; i++) {
        char name[32], text[64];
        snprintf(name, sizeof(name), "%d.m%d.host:2,", 2000 + i, i);
        snprintf(text, sizeof(text), "Subject: m%d\n\nbody %d\n", i, i);
        put_maildir_msg(md, "cur", name, text);
    }
    char *spec = xasprintf("maildir:%s", md);
    uint64_t id = start_job(fx, spec, false, 0);
    fx->pre_record = true;
    run_to(fx, id, "done", 10);
    assert_int_equal(fx->counts.duplicates, 1);
    assert_int_equal(fx->counts.delivery_batches, 0);
    assert_int_equal(live_msgs(fx, "INBOX"), 9); /* the first: recorded, no copy */
    struct import_state st = job_state(fx, id);
    assert_false(st.inflight);
    assert_int_equal(fstate(&st, "INBOX")->imported, 9);
    assert_int_equal(fstate(&st, "INBOX")->already, 1);
    import_state_free(&st);

    /* Two records of one batch with one id: the second is a duplicate of
     * the first (its UID), not a second message. */
    char *md2 = xasprintf("%s/Maildir2", fx->dir);
    for (int i = 0; i < 5; i++) {
        char name[32], text[64];
        snprintf(name, sizeof(name), "%d.k%d.host:2,", 3000 + i, i);
        snprintf(text, sizeof(text), "Subject: k%d\n\nbody %d\n", i, i);
        put_maildir_msg(md2, "cur", name, text);
    }
    char *spec2 = xasprintf("maildir:%s", md2);
    memset(&fx->counts, 0, sizeof(fx->counts));
    uint64_t id2 = start_job(fx, spec2, false, 0);
    fx->same_id = true;
    run_to(fx, id2, "done", 10);
    assert_int_equal(fx->counts.duplicates, 1);
    assert_int_equal(fx->counts.append_batches, 1);
    assert_int_equal(live_msgs(fx, "INBOX"), 9 + 4);
    st = job_state(fx, id2);
    assert_int_equal(fstate(&st, "INBOX")->imported, 4);
    assert_int_equal(fstate(&st, "INBOX")->already, 1);
    import_state_free(&st);
    struct seen sn;
    folder_msgs(fx, "INBOX", &sn);
    assert_int_equal(count_subject(&sn, "k0"), 1);
    assert_int_equal(count_subject(&sn, "k1"), 0);
    assert_int_equal(count_subject(&sn, "m0"), 0);
    assert_int_equal(count_subject(&sn, "m1"), 1);
    free(md);
    free(spec);
    free(md2);
    free(spec2);
}

/* The store refuses one record of a batch (the others are written): the
 * run waits with inflight set, the next finds that message by its GUID and
 * records it; every message once, the counts exact. */
static void test_one_record_of_a_batch_refused(void **state)
{
    struct fx *fx = *state;
    fx->no_ids = true; /* records in a DELIVERED: an old store */
    char *md = xasprintf("%s/Maildir", fx->dir);
    for (int i = 0; i < 10; i++) {
        char name[32], text[64];
        snprintf(name, sizeof(name), "%d.m%d.host:2,", 2000 + i, i);
        snprintf(text, sizeof(text), "Subject: m%d\n\nbody %d\n", i, i);
        put_maildir_msg(md, "cur", name, text);
    }
    char *spec = xasprintf("maildir:%s", md);
    uint64_t id = start_job(fx, spec, false, 0);
    fx->faults[1] = 4;
    claim_due(fx, id);
    assert_int_equal(import_run(&fx->env, id), IMPORT_LATER);
    struct import_state st = job_state(fx, id);
    assert_true(st.inflight);
    import_state_free(&st);
    assert_int_equal(fx->counts.records, 10);
    run_to(fx, id, "done", 10);
    struct seen s;
    folder_msgs(fx, "INBOX", &s);
    assert_int_equal(s.n, 10);
    for (int i = 0; i < 10; i++) {
        char subj[16];
        snprintf(subj, sizeof(subj), "m%d", i);
        assert_int_equal(count_subject(&s, subj), 1);
    }
    /* Only the refused one was recorded again. The batch went twice: with
     * ids (refused whole by the old store), then without. */
    assert_int_equal(fx->counts.records, 11);
    assert_int_equal(fx->counts.append_batches, 2);
    assert_int_equal(fx->counts.refused_ids, 10);
    st = job_state(fx, id);
    assert_false(st.inflight);
    assert_int_equal(fstate(&st, "INBOX")->imported, 10);
    import_state_free(&st);
    free(md);
    free(spec);
}

struct flagmap {
    uint32_t uid[16], flags[16];
    char kw[16][64];
    size_t n;
};

static int flag_cb(void *ctx, const struct store_msg *m)
{
    struct flagmap *f = ctx;
    if (f->n < 16) {
        f->uid[f->n] = m->uid;
        f->flags[f->n] = m->flags;
        str_copy(f->kw[f->n], m->keywords, sizeof(f->kw[0]));
        f->n++;
    }
    return 0;
}

static uint32_t flags_of(struct fx *fx, uint32_t uid)
{
    struct flagmap f = {0};
    const char *e;
    assert_int_equal(store_msg_iter(fx->st, USER, "INBOX", flag_cb, &f, &e), 0);
    for (size_t i = 0; i < f.n; i++)
        if (f.uid[i] == uid)
            return f.flags[i];
    fail_msg("no UID %u", uid);
    return 0;
}

/* --watch: new mail is imported until complete; after it, a straggler is
 * imported once and counted; then the sweep ends. */
static void test_watch_complete_sweep(void **state)
{
    struct fx *fx = *state;
    char *md = xasprintf("%s/Maildir", fx->dir);
    put_maildir_msg(md, "cur", "1.a.h:2,S", "Subject: first\n\n1\n");
    char *spec = xasprintf("maildir:%s", md);
    uint64_t id = start_job(fx, spec, true, 3600);
    run_to(fx, id, "watch", 10);
    put_maildir_msg(md, "new", "2.b.h", "Subject: second\n\n2\n");
    /* A client at the source flags the first: carried over while watching. */
    char *from = xasprintf("%s/cur/1.a.h:2,S", md), *to = xasprintf("%s/cur/1.a.h:2,FS", md);
    assert_int_equal(rename(from, to), 0);
    claim_due(fx, id);
    import_run(&fx->env, id);
    assert_string_equal(job(fx, id).phase, "watch");
    struct seen s;
    folder_msgs(fx, "INBOX", &s);
    assert_int_equal(s.n, 2);
    assert_int_equal(flags_of(fx, 1), STORE_F_SEEN | STORE_F_FLAGGED);
    set_complete(fx, id);
    run_to(fx, id, "sweep", 10);
    /* After the cutover tern's flags are the user's: not overwritten. */
    assert_int_equal(rename(to, from), 0);
    claim_due(fx, id);
    import_run(&fx->env, id);
    assert_int_equal(flags_of(fx, 1), STORE_F_SEEN | STORE_F_FLAGGED);
    free(from);
    free(to);
    put_maildir_msg(md, "new", "3.c.h", "Subject: late\n\n3\n");
    claim_due(fx, id);
    import_run(&fx->env, id);
    claim_due(fx, id);
    import_run(&fx->env, id);
    folder_msgs(fx, "INBOX", &s);
    assert_int_equal(s.n, 3);
    assert_int_equal(count_subject(&s, "late"), 1);
    struct import_state st = job_state(fx, id);
    assert_int_equal(fstate(&st, "INBOX")->imported, 3);
    assert_int_equal(fstate(&st, "INBOX")->stragglers, 1);
    assert_int_equal(fstate(&st, "INBOX")->flags_synced, 1);
    assert_true(st.cutover > 0);
    import_state_free(&st);
    /* The sweep ends when its time is up. */
    struct dir_job j = job(fx, id);
    j.retain_until = time_now_ms() / 1000 - 1;
    assert_int_equal(dir_job_update(fx->d, &j), DIR_OK);
    run_to(fx, id, "done", 5);
    free(md);
    free(spec);
}

/* Bad messages: too big and garbage are listed with reasons; a malformed
 * one is imported as it is and counted. */
static void test_bad_messages(void **state)
{
    struct fx *fx = *state;
    fx->env.msg_max = 200;
    char *path = xasprintf("%s/box", fx->dir);
    char big[400];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    char *t =
        xasprintf("garbage before\n\nFrom a@b Sat Jan  3 01:05:34 1996\nSubject: ok\n\nfine\n\n"
                  "From a@b Sat Jan  3 01:05:34 1996\nSubject: big\n\n%s\n\n"
                  "From a@b Sat Jan  3 01:05:34 1996\nSubject: cr\n\nbare\rcr\n",
                  big);
    put_file(path, t);
    char *spec = xasprintf("mbox:%s", path);
    uint64_t id = start_job(fx, spec, false, 0);
    run_to(fx, id, "done", 10);
    struct seen s;
    folder_msgs(fx, "INBOX", &s);
    assert_int_equal(s.n, 2);
    assert_int_equal(count_subject(&s, "ok"), 1);
    assert_int_equal(count_subject(&s, "cr"), 1);
    struct import_state st = job_state(fx, id);
    const struct import_fstate *f = fstate(&st, "INBOX");
    assert_int_equal(f->failed, 2);
    assert_int_equal(f->imported, 2);
    assert_int_equal(f->malformed, 1);
    assert_non_null(strstr(f->fails[0].why, "before the first"));
    assert_non_null(strstr(f->fails[1].why, "size limit"));
    import_state_free(&st);
    free(t);
    free(spec);
    free(path);
}

/* A missing source waits with a reason; a mailbox missing at epoch > 1 is
 * never created empty: the job fails. */
static void test_source_missing_and_epoch(void **state)
{
    struct fx *fx = *state;
    char *spec = xasprintf("mbox:%s/nothing", fx->dir);
    uint64_t id = start_job(fx, spec, false, 0);
    claim_due(fx, id);
    assert_int_equal(import_run(&fx->env, id), IMPORT_LATER);
    struct dir_job j = job(fx, id);
    assert_string_equal(j.phase, "scan");
    assert_non_null(strstr(j.last_error, "cannot be found"));
    assert_true((int64_t)j.checkpoint > time_now_ms());
    assert_false(import_job_due(&j, time_now_ms()));
    str_copy(j.phase, "failed", sizeof(j.phase));
    assert_int_equal(dir_job_update(fx->d, &j), DIR_OK);

    struct dir_user u;
    assert_int_equal(dir_user_get(fx->d, USER, &u), DIR_OK);
    u.epoch = 3;
    assert_int_equal(dir_user_update(fx->d, &u), DIR_OK);
    char *path = xasprintf("%s/box", fx->dir);
    char *m = msg("x", "");
    put_file(path, m);
    char *spec2 = xasprintf("mbox:%s", path);
    uint64_t id2 = start_job(fx, spec2, false, 0);
    claim_due(fx, id2);
    assert_int_equal(import_run(&fx->env, id2), IMPORT_FINISHED);
    j = job(fx, id2);
    assert_string_equal(j.phase, "failed");
    assert_non_null(strstr(j.last_error, "missing"));
    struct store_mailbox mb;
    assert_int_equal(store_mailbox_get(fx->st, USER, &mb), STORE_NOTFOUND);
    free(spec);
    free(spec2);
    free(path);
    free(m);
}

int main(void)
{
    log_init("test");
    log_set_level(LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys_and_ids),
        cmocka_unit_test(test_state_round_trip),
        cmocka_unit_test(test_imap_url_and_date),
        cmocka_unit_test(test_imapc_responses),
        cmocka_unit_test_setup_teardown(test_mbox_import_and_rerun, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mbox_rewritten, setup, teardown),
        cmocka_unit_test_setup_teardown(test_identical_messages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_overlapping_sources, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_between_append_and_record, setup, teardown),
        cmocka_unit_test_setup_teardown(test_records_one_batch_per_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_record_of_a_batch_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ids_already_there, setup, teardown),
        cmocka_unit_test_setup_teardown(test_watch_complete_sweep, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_messages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_source_missing_and_epoch, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
