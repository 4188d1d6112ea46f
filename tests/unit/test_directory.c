/*
 * test_directory — the directory contract. The common suite runs once per
 * backend (memory, SQLite) so both answer alike; the SQLite-only tests cover
 * what only a shared file has: cross-process CAS, reopening, schema
 * migration, and lock timeouts turning into DIR_TEMPFAIL.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "directory/directory.h"
#include "util/util.h"

enum backend { BE_MEM, BE_SQLITE };

struct fixture {
    enum backend be;
    char tmpdir[64];
    char path[96];
    struct directory *d;
};

static struct fixture fx_mem = {.be = BE_MEM};
static struct fixture fx_sqlite = {.be = BE_SQLITE};

static struct directory *open_sqlite_ok(const char *path)
{
    const char *err = NULL;
    struct directory *d = dir_open_sqlite(path, &err);
    if (d == NULL)
        fail_msg("dir_open_sqlite: %s", err);
    return d;
}

/* Every test starts with domain example.org and store s1. */
static int setup(void **state)
{
    struct fixture *fx = *state;
    if (fx->be == BE_MEM) {
        fx->d = dir_open_memory();
    } else {
        strcpy(fx->tmpdir, "/tmp/tern-dirtest-XXXXXX");
        assert_non_null(mkdtemp(fx->tmpdir));
        snprintf(fx->path, sizeof(fx->path), "%s/dir.db", fx->tmpdir);
        fx->d = open_sqlite_ok(fx->path);
    }
    assert_int_equal(dir_domain_add(fx->d, "example.org"), DIR_OK);
    assert_int_equal(dir_store_upsert(fx->d, "s1", "127.0.0.1:2401"), DIR_OK);
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    dir_close(&fx->d);
    if (fx->be == BE_SQLITE) {
        static const char *const sfx[] = {"", "-wal", "-shm", "-journal"};
        char p[128];
        for (size_t i = 0; i < ARRAY_SIZE(sfx); i++) {
            snprintf(p, sizeof(p), "%s%s", fx->path, sfx[i]);
            unlink(p);
        }
        rmdir(fx->tmpdir);
    }
    return 0;
}

/* A second handle on the same directory: a new connection for SQLite, the
 * same object for memory (release with close_second). */
static struct directory *open_second(struct fixture *fx)
{
    return fx->be == BE_SQLITE ? open_sqlite_ok(fx->path) : fx->d;
}

static void close_second(struct fixture *fx, struct directory **d)
{
    if (fx->be == BE_SQLITE)
        dir_close(d);
}

static enum dir_status add_user(struct directory *d, const char *addr, const char *home)
{
    struct dir_user u;
    memset(&u, 0, sizeof(u));
    str_copy(u.address, addr, sizeof(u.address));
    str_copy(u.home, home, sizeof(u.home));
    str_copy(u.password_hash, "$y$fake", sizeof(u.password_hash));
    return dir_user_add(d, &u);
}

/* Raw SQL on the fixture's file, behind the directory's back. */
static void raw_sql(struct fixture *fx, const char *sql)
{
    sqlite3 *db;
    assert_int_equal(sqlite3_open(fx->path, &db), SQLITE_OK);
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
        fail_msg("%s: %s", sql, err);
    sqlite3_close(db);
}

/* ---- pure functions ---- */

static void test_strings(void **state)
{
    (void)state;
    assert_string_equal(dir_status_str(DIR_OK), "ok");
    assert_string_equal(dir_status_str(DIR_NOTFOUND), "not found");
    assert_string_equal(dir_user_state_str(DIR_USER_MOVING), "moving");
    assert_string_equal(dir_job_kind_str(DIR_JOB_IMPORT), "import");
    static const struct {
        const char *phase;
        bool final;
    } phases[] = {{"done", true},       {"failed", true},    {"aborted", true},
                  {"provision", false}, {"copy", false},     {"", false},
                  {"Done", false},      {"retention", true}, {"switch", false}};
    for (size_t i = 0; i < ARRAY_SIZE(phases); i++)
        assert_int_equal(dir_job_phase_final(phases[i].phase), phases[i].final);
}

static void test_password(void **state)
{
    (void)state;
    char h1[DIR_HASH_MAX + 1], h2[DIR_HASH_MAX + 1];
    const char *err = NULL;
    assert_int_equal(dir_password_hash("correct horse", h1, &err), 0);
    assert_memory_equal(h1, "$y$", 3);
    assert_true(dir_password_verify("correct horse", h1));
    assert_false(dir_password_verify("correct hors", h1));
    assert_false(dir_password_verify("", h1));
    assert_false(dir_password_verify("correct horse", ""));
    assert_false(dir_password_verify("correct horse", "garbage"));
    /* Salted: the same password hashes differently each time. */
    assert_int_equal(dir_password_hash("correct horse", h2, &err), 0);
    assert_string_not_equal(h1, h2);
    assert_true(dir_password_verify("correct horse", h2));

    err = NULL;
    assert_int_equal(dir_password_hash("", h1, &err), -1);
    assert_non_null(err);
    char big[1100];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    err = NULL;
    assert_int_equal(dir_password_hash(big, h1, &err), -1);
    assert_non_null(err);
}

/* ---- common suite ---- */

static void test_domains(void **state)
{
    struct fixture *fx = *state;
    struct dir_domain dom;
    assert_int_equal(dir_domain_add(fx->d, "Example.NET"), DIR_OK);
    assert_int_equal(dir_domain_add(fx->d, "example.net"), DIR_EXISTS);
    assert_int_equal(dir_domain_add(fx->d, "bad..name"), DIR_INVALID);
    assert_int_equal(dir_domain_add(fx->d, "a.example"), DIR_OK);
    assert_int_equal(dir_domain_get(fx->d, "EXAMPLE.net", &dom), DIR_OK);
    assert_string_equal(dom.name, "example.net");
    assert_int_equal(dom.version, 1);
    assert_int_equal(dir_domain_get(fx->d, "nowhere.example", &dom), DIR_NOTFOUND);

    struct dir_domain *l;
    size_t n;
    assert_int_equal(dir_domain_list(fx->d, &l, &n), DIR_OK);
    assert_int_equal(n, 3);
    assert_string_equal(l[0].name, "a.example");
    assert_string_equal(l[1].name, "example.net");
    assert_string_equal(l[2].name, "example.org");
    free(l);
}

static void test_user_add(void **state)
{
    struct fixture *fx = *state;
    assert_int_equal(dir_alias_add(fx->d, "list@example.org", "alice@example.org"), DIR_OK);
    static const struct {
        const char *addr, *home;
        enum dir_status want;
    } cases[] = {
        {"alice@example.org", "s1", DIR_OK},
        {"alice@example.org", "s1", DIR_EXISTS},
        {"ALICE@Example.ORG", "s1", DIR_EXISTS},
        {"list@example.org", "s1", DIR_EXISTS},      /* is an alias */
        {"bob@unknown.example", "s1", DIR_INVALID},  /* domain not local */
        {"bob@example.org", "nostore", DIR_INVALID}, /* store unknown */
        {"bob@example.org", "Bad Store", DIR_INVALID},
        {"not an address", "s1", DIR_INVALID},
        {"", "s1", DIR_INVALID},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        enum dir_status st = add_user(fx->d, cases[i].addr, cases[i].home);
        if (st != cases[i].want)
            fail_msg("case %zu (%s): got %s, want %s", i, cases[i].addr, dir_status_str(st),
                     dir_status_str(cases[i].want));
    }

    struct dir_user u;
    memset(&u, 0, sizeof(u));
    str_copy(u.address, "Dave@Example.org", sizeof(u.address));
    str_copy(u.home, "s1", sizeof(u.home));
    u.epoch = 7;
    assert_int_equal(dir_user_add(fx->d, &u), DIR_OK);
    assert_string_equal(u.address, "dave@example.org");
    assert_int_equal(u.version, 1);
    assert_int_equal(u.epoch, 7); /* a given epoch is kept */
    assert_true(u.created > 0 && u.updated == u.created);
    assert_int_equal(dir_user_get(fx->d, "alice@example.org", &u), DIR_OK);
    assert_int_equal(u.epoch, 1);
    assert_int_equal(u.version, 1);
}

static void test_user_get(void **state)
{
    struct fixture *fx = *state;
    struct dir_user u, g;
    memset(&u, 0, sizeof(u));
    str_copy(u.address, "Carol@Example.Org", sizeof(u.address));
    str_copy(u.home, "s1", sizeof(u.home));
    str_copy(u.password_hash, "$y$j9T$abc$def", sizeof(u.password_hash));
    str_copy(u.alternate, "Carol@Elsewhere.Example", sizeof(u.alternate));
    u.deliver_both = true;
    u.state = DIR_USER_MOVING;
    assert_int_equal(dir_user_add(fx->d, &u), DIR_OK);

    assert_int_equal(dir_user_get(fx->d, "CAROL@example.ORG", &g), DIR_OK);
    assert_string_equal(g.address, "carol@example.org");
    assert_string_equal(g.password_hash, "$y$j9T$abc$def");
    assert_string_equal(g.home, "s1");
    assert_string_equal(g.alternate, "carol@elsewhere.example");
    assert_true(g.deliver_both);
    assert_int_equal(g.state, DIR_USER_MOVING);
    assert_int_equal(g.epoch, 1);
    assert_int_equal(g.version, 1);
    assert_int_equal(g.created, u.created);
    assert_int_equal(dir_user_get(fx->d, "nobody@example.org", &g), DIR_NOTFOUND);
    assert_int_equal(dir_user_get(fx->d, "no at sign", &g), DIR_INVALID);
}

static void test_user_update_cas(void **state)
{
    struct fixture *fx = *state;
    struct directory *d2 = open_second(fx);
    struct dir_user a, b;
    assert_int_equal(add_user(fx->d, "alice@example.org", "s1"), DIR_OK);
    assert_int_equal(dir_store_upsert(fx->d, "s2", "127.0.0.1:2402"), DIR_OK);

    /* Both read version 1; only one write can win. */
    assert_int_equal(dir_user_get(fx->d, "alice@example.org", &a), DIR_OK);
    assert_int_equal(dir_user_get(d2, "alice@example.org", &b), DIR_OK);
    str_copy(a.home, "s2", sizeof(a.home));
    a.epoch++;
    b.deliver_both = true;
    assert_int_equal(dir_user_update(fx->d, &a), DIR_OK);
    assert_int_equal(a.version, 2);
    assert_int_equal(dir_user_update(d2, &b), DIR_CONFLICT);
    assert_int_equal(b.version, 1); /* a loser's struct is untouched */

    assert_int_equal(dir_user_get(d2, "alice@example.org", &b), DIR_OK);
    assert_string_equal(b.home, "s2");
    assert_int_equal(b.epoch, 2);
    assert_false(b.deliver_both);
    assert_int_equal(b.version, 2);

    /* Unknown store is checked first, then existence, then version. */
    str_copy(b.home, "nostore", sizeof(b.home));
    assert_int_equal(dir_user_update(d2, &b), DIR_INVALID);
    str_copy(b.home, "s1", sizeof(b.home));
    str_copy(b.address, "ghost@example.org", sizeof(b.address));
    assert_int_equal(dir_user_update(d2, &b), DIR_NOTFOUND);
    close_second(fx, &d2);
}

static void test_user_delete_cas(void **state)
{
    struct fixture *fx = *state;
    struct dir_user u;
    assert_int_equal(add_user(fx->d, "alice@example.org", "s1"), DIR_OK);
    assert_int_equal(dir_user_get(fx->d, "alice@example.org", &u), DIR_OK);
    assert_int_equal(dir_user_update(fx->d, &u), DIR_OK);
    assert_int_equal(dir_user_delete(fx->d, "alice@example.org", 1), DIR_CONFLICT);
    assert_int_equal(dir_user_delete(fx->d, "Alice@Example.org", 2), DIR_OK);
    assert_int_equal(dir_user_delete(fx->d, "alice@example.org", 2), DIR_NOTFOUND);
    assert_int_equal(dir_user_get(fx->d, "alice@example.org", &u), DIR_NOTFOUND);
    /* The address is free again, as a user or an alias. */
    assert_int_equal(dir_alias_add(fx->d, "alice@example.org", "bob@example.org"), DIR_OK);
}

static void test_user_list(void **state)
{
    struct fixture *fx = *state;
    static const char *const in[] = {"zed@example.org", "Alice@example.org", "mike@example.org"};
    for (size_t i = 0; i < ARRAY_SIZE(in); i++)
        assert_int_equal(add_user(fx->d, in[i], "s1"), DIR_OK);
    struct dir_user *l;
    size_t n;
    assert_int_equal(dir_user_list(fx->d, &l, &n), DIR_OK);
    assert_int_equal(n, 3);
    assert_string_equal(l[0].address, "alice@example.org");
    assert_string_equal(l[1].address, "mike@example.org");
    assert_string_equal(l[2].address, "zed@example.org");
    free(l);
}

static void test_aliases(void **state)
{
    struct fixture *fx = *state;
    struct dir_alias a;
    assert_int_equal(add_user(fx->d, "alice@example.org", "s1"), DIR_OK);
    static const struct {
        const char *addr, *target;
        enum dir_status want;
    } cases[] = {
        {"Postmaster@example.org", "Alice@example.org", DIR_OK},
        {"postmaster@EXAMPLE.org", "bob@example.org", DIR_EXISTS},
        {"alice@example.org", "bob@example.org", DIR_EXISTS},    /* is a user */
        {"x@unknown.example", "alice@example.org", DIR_INVALID}, /* not local */
        {"fwd@example.org", "someone@remote.example", DIR_OK},   /* any target */
        {"self@example.org", "SELF@example.org", DIR_INVALID},
        {"bad address", "alice@example.org", DIR_INVALID},
        {"abuse@example.org", "bad address", DIR_INVALID},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        enum dir_status st = dir_alias_add(fx->d, cases[i].addr, cases[i].target);
        if (st != cases[i].want)
            fail_msg("case %zu (%s): got %s, want %s", i, cases[i].addr, dir_status_str(st),
                     dir_status_str(cases[i].want));
    }
    assert_int_equal(dir_alias_get(fx->d, "POSTMASTER@example.org", &a), DIR_OK);
    assert_string_equal(a.address, "postmaster@example.org");
    assert_string_equal(a.target, "alice@example.org");
    assert_int_equal(a.version, 1);
    assert_int_equal(dir_alias_get(fx->d, "abuse@example.org", &a), DIR_NOTFOUND);

    struct dir_alias *l;
    size_t n;
    assert_int_equal(dir_alias_list(fx->d, &l, &n), DIR_OK);
    assert_int_equal(n, 2);
    assert_string_equal(l[0].address, "fwd@example.org");
    assert_string_equal(l[1].address, "postmaster@example.org");
    free(l);

    assert_int_equal(dir_alias_delete(fx->d, "fwd@example.org", 5), DIR_CONFLICT);
    assert_int_equal(dir_alias_delete(fx->d, "fwd@example.org", 1), DIR_OK);
    assert_int_equal(dir_alias_delete(fx->d, "fwd@example.org", 1), DIR_NOTFOUND);
    /* The freed name can become a user. */
    assert_int_equal(add_user(fx->d, "fwd@example.org", "s1"), DIR_OK);
}

static void test_resolve(void **state)
{
    struct fixture *fx = *state;
    struct dir_user u;
    char a[64], t[64];
    assert_int_equal(add_user(fx->d, "alice@example.org", "s1"), DIR_OK);
    /* c1 -> alice, c2 -> c1, ..., c9 -> c8 */
    for (int i = 1; i <= 9; i++) {
        snprintf(a, sizeof(a), "c%d@example.org", i);
        if (i == 1)
            snprintf(t, sizeof(t), "alice@example.org");
        else
            snprintf(t, sizeof(t), "c%d@example.org", i - 1);
        assert_int_equal(dir_alias_add(fx->d, a, t), DIR_OK);
    }
    assert_int_equal(dir_alias_add(fx->d, "x@example.org", "y@example.org"), DIR_OK);
    assert_int_equal(dir_alias_add(fx->d, "y@example.org", "x@example.org"), DIR_OK);
    assert_int_equal(dir_alias_add(fx->d, "dangling@example.org", "nobody@example.org"), DIR_OK);
    assert_int_equal(dir_alias_add(fx->d, "ext@example.org", "a@remote.example"), DIR_OK);

    static const struct {
        const char *addr;
        enum dir_status want;
    } cases[] = {
        {"ALICE@example.org", DIR_OK},
        {"c1@example.org", DIR_OK},
        {"C8@Example.Org", DIR_OK},       /* 8 hops: the limit */
        {"c9@example.org", DIR_NOTFOUND}, /* 9 hops: too deep */
        {"x@example.org", DIR_NOTFOUND},  /* loop */
        {"dangling@example.org", DIR_NOTFOUND},
        {"ext@example.org", DIR_NOTFOUND},
        {"nobody@example.org", DIR_NOTFOUND},
        {"@@", DIR_INVALID},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        memset(&u, 0, sizeof(u));
        enum dir_status st = dir_resolve(fx->d, cases[i].addr, &u);
        if (st != cases[i].want)
            fail_msg("case %zu (%s): got %s, want %s", i, cases[i].addr, dir_status_str(st),
                     dir_status_str(cases[i].want));
        if (st == DIR_OK)
            assert_string_equal(u.address, "alice@example.org");
    }
}

static void test_stores(void **state)
{
    struct fixture *fx = *state;
    struct dir_store s;
    assert_int_equal(dir_store_upsert(fx->d, "s2", "127.0.0.1:2402"), DIR_OK);
    assert_int_equal(dir_store_upsert(fx->d, "s2", "127.0.0.1:2402"), DIR_OK);
    assert_int_equal(dir_store_get(fx->d, "s2", &s), DIR_OK);
    assert_int_equal(s.version, 1); /* unchanged upsert writes nothing */
    assert_int_equal(dir_store_upsert(fx->d, "s2", "[::1]:2402"), DIR_OK);
    assert_int_equal(dir_store_get(fx->d, "s2", &s), DIR_OK);
    assert_string_equal(s.name, "s2");
    assert_string_equal(s.lmtp, "[::1]:2402");
    assert_int_equal(s.version, 2);
    assert_int_equal(dir_store_get(fx->d, "s9", &s), DIR_NOTFOUND);
    assert_int_equal(dir_store_upsert(fx->d, "Bad Name", "127.0.0.1:1"), DIR_INVALID);
    assert_int_equal(dir_store_upsert(fx->d, "s3", ""), DIR_INVALID);
    assert_int_equal(dir_store_upsert(fx->d, "a-0_", "127.0.0.1:2403"), DIR_OK);

    struct dir_store *l;
    size_t n;
    assert_int_equal(dir_store_list(fx->d, &l, &n), DIR_OK);
    assert_int_equal(n, 3);
    assert_string_equal(l[0].name, "a-0_");
    assert_string_equal(l[1].name, "s1");
    assert_string_equal(l[2].name, "s2");
    free(l);
}

static void init_job(struct dir_job *j, const char *user, const char *phase)
{
    memset(j, 0, sizeof(*j));
    j->kind = DIR_JOB_MOVE;
    str_copy(j->user, user, sizeof(j->user));
    str_copy(j->source, "s1", sizeof(j->source));
    str_copy(j->dest, "s2", sizeof(j->dest));
    str_copy(j->phase, phase, sizeof(j->phase));
}

static void test_jobs(void **state)
{
    struct fixture *fx = *state;
    struct dir_job j1, j2, g, other;
    assert_int_equal(add_user(fx->d, "alice@example.org", "s1"), DIR_OK);
    assert_int_equal(add_user(fx->d, "bob@example.org", "s1"), DIR_OK);

    init_job(&j1, "ghost@example.org", "provision");
    assert_int_equal(dir_job_create(fx->d, &j1), DIR_INVALID); /* unknown user */
    init_job(&j1, "bad", "provision");
    assert_int_equal(dir_job_create(fx->d, &j1), DIR_INVALID);

    init_job(&j1, "Alice@Example.org", "provision");
    assert_int_equal(dir_job_create(fx->d, &j1), DIR_OK);
    assert_true(j1.id > 0);
    assert_int_equal(j1.version, 1);
    assert_string_equal(j1.user, "alice@example.org");
    init_job(&j2, "alice@example.org", "provision");
    assert_int_equal(dir_job_create(fx->d, &j2), DIR_INVALID); /* one live per user */
    init_job(&other, "bob@example.org", "provision");
    other.kind = DIR_JOB_IMPORT;
    str_copy(other.source, "mbox:/tmp/bob.mbox", sizeof(other.source));
    assert_int_equal(dir_job_create(fx->d, &other), DIR_OK);

    /* CAS update of the progress fields. */
    g = j1;
    str_copy(j1.phase, "copy", sizeof(j1.phase));
    j1.msgs_total = 10;
    j1.msgs_done = 3;
    j1.bytes_total = UINT64_C(1) << 40;
    j1.bytes_done = 12345;
    str_copy(j1.lease_owner, "mover:1", sizeof(j1.lease_owner));
    j1.lease_expires = INT64_C(1800000000000);
    str_copy(j1.last_error, "transient", sizeof(j1.last_error));
    assert_int_equal(dir_job_update(fx->d, &j1), DIR_OK);
    assert_int_equal(j1.version, 2);
    assert_int_equal(dir_job_update(fx->d, &g), DIR_CONFLICT); /* stale copy */
    assert_int_equal(dir_job_get(fx->d, j1.id, &g), DIR_OK);
    assert_string_equal(g.phase, "copy");
    assert_int_equal(g.msgs_total, 10);
    assert_int_equal(g.msgs_done, 3);
    assert_int_equal(g.bytes_total, UINT64_C(1) << 40);
    assert_int_equal(g.bytes_done, 12345);
    assert_string_equal(g.lease_owner, "mover:1");
    assert_int_equal(g.lease_expires, INT64_C(1800000000000));
    assert_string_equal(g.last_error, "transient");
    assert_string_equal(g.dest, "s2");
    assert_int_equal(g.kind, DIR_JOB_MOVE);
    assert_int_equal(g.version, 2);
    assert_int_equal(dir_job_get(fx->d, 9999, &g), DIR_NOTFOUND);
    g.id = 9999;
    assert_int_equal(dir_job_update(fx->d, &g), DIR_NOTFOUND);

    /* Finished: a new job for the user is allowed; reviving the old one is
     * not while the new one is live. */
    str_copy(j1.phase, "done", sizeof(j1.phase));
    assert_int_equal(dir_job_update(fx->d, &j1), DIR_OK);
    init_job(&j2, "alice@example.org", "provision");
    assert_int_equal(dir_job_create(fx->d, &j2), DIR_OK);
    assert_true(j2.id > other.id && other.id > j1.id);
    str_copy(j1.phase, "copy", sizeof(j1.phase));
    assert_int_equal(dir_job_update(fx->d, &j1), DIR_INVALID);

    struct dir_job *l;
    size_t n;
    assert_int_equal(dir_job_list(fx->d, &l, &n), DIR_OK);
    assert_int_equal(n, 3);
    assert_int_equal(l[0].id, j2.id);
    assert_int_equal(l[1].id, other.id);
    assert_string_equal(l[1].source, "mbox:/tmp/bob.mbox");
    assert_int_equal(l[1].kind, DIR_JOB_IMPORT);
    assert_int_equal(l[2].id, j1.id);
    assert_string_equal(l[2].phase, "done");
    free(l);
}

/* A job's data goes with its row: created together, replaced only by the
 * row's compare-and-set, never by a stale writer. */
static void test_job_data(void **state)
{
    struct fixture *fx = *state;
    struct dir_job j, stale;
    struct buf b;
    buf_init(&b, 0);
    assert_int_equal(add_user(fx->d, "alice@example.org", "s1"), DIR_OK);
    assert_int_equal(add_user(fx->d, "bob@example.org", "s1"), DIR_OK);
    init_job(&j, "alice@example.org", "queued");
    j.kind = DIR_JOB_IMPORT;
    assert_int_equal(dir_job_create_data(fx->d, &j, "v1\0x", 4), DIR_OK);
    assert_int_equal(dir_job_data_get(fx->d, j.id, &b), DIR_OK);
    assert_int_equal(b.len, 4);
    assert_memory_equal(b.data, "v1\0x", 4);

    stale = j;
    str_copy(j.phase, "copy", sizeof(j.phase));
    assert_int_equal(dir_job_update_data(fx->d, &j, "second", 6), DIR_OK);
    assert_int_equal(dir_job_update_data(fx->d, &stale, "stale", 5), DIR_CONFLICT);
    buf_reset(&b);
    assert_int_equal(dir_job_data_get(fx->d, j.id, &b), DIR_OK);
    assert_int_equal(b.len, 6);
    assert_memory_equal(b.data, "second", 6);
    /* A plain update keeps the data. */
    assert_int_equal(dir_job_update(fx->d, &j), DIR_OK);
    buf_reset(&b);
    assert_int_equal(dir_job_data_get(fx->d, j.id, &b), DIR_OK);
    assert_int_equal(b.len, 6);

    /* A job without data has none; unknown jobs and small buffers. */
    struct dir_job k;
    init_job(&k, "bob@example.org", "queued");
    assert_int_equal(dir_job_create(fx->d, &k), DIR_OK);
    buf_reset(&b);
    assert_int_equal(dir_job_data_get(fx->d, k.id, &b), DIR_OK);
    assert_int_equal(b.len, 0);
    assert_int_equal(dir_job_data_get(fx->d, 9999, &b), DIR_NOTFOUND);
    struct buf small;
    buf_init(&small, 3);
    assert_int_equal(dir_job_data_get(fx->d, j.id, &small), DIR_INVALID);
    buf_free(&small);
    /* Over the limit: refused, nothing changes. */
    char *big = xmalloc(DIR_JOB_DATA_MAX + 1);
    assert_int_equal(dir_job_update_data(fx->d, &j, big, DIR_JOB_DATA_MAX + 1), DIR_INVALID);
    free(big);
    buf_reset(&b);
    assert_int_equal(dir_job_data_get(fx->d, j.id, &b), DIR_OK);
    assert_memory_equal(b.data, "second", 6);
    buf_free(&b);
}

/* ---- SQLite only ---- */

#define RACE_ROUNDS 100

/* In a child: RACE_ROUNDS read-increment-CAS attempts; exits with the
 * number that won. Uses its own handle, never the inherited one, and starts
 * when the parent closes the barrier pipe so both really overlap. */
static void race_child(const char *path, int barrier)
{
    const char *err;
    char c;
    struct directory *d = dir_open_sqlite(path, &err);
    if (d == NULL || read(barrier, &c, 1) != 0)
        _exit(255);
    int won = 0;
    for (int i = 0; i < RACE_ROUNDS; i++) {
        struct dir_user u;
        if (dir_user_get(d, "alice@example.org", &u) != DIR_OK)
            _exit(254);
        u.epoch++;
        usleep(200); /* widen the read-to-write window so the two collide */
        enum dir_status st = dir_user_update(d, &u);
        if (st == DIR_OK)
            won++;
        else if (st != DIR_CONFLICT)
            _exit(253);
    }
    dir_close(&d);
    _exit(won);
}

static void test_sqlite_fork_race(void **state)
{
    struct fixture *fx = *state;
    assert_int_equal(add_user(fx->d, "alice@example.org", "s1"), DIR_OK);
    pid_t pids[2];
    int barrier[2];
    assert_int_equal(pipe(barrier), 0);
    for (int i = 0; i < 2; i++) {
        pids[i] = fork();
        assert_true(pids[i] >= 0);
        if (pids[i] == 0) {
            close(barrier[1]);
            race_child(fx->path, barrier[0]);
        }
    }
    close(barrier[0]);
    close(barrier[1]);
    int total = 0;
    for (int i = 0; i < 2; i++) {
        int ws;
        assert_int_equal(waitpid(pids[i], &ws, 0), pids[i]);
        assert_true(WIFEXITED(ws));
        assert_true(WEXITSTATUS(ws) <= RACE_ROUNDS);
        total += WEXITSTATUS(ws);
    }
    struct dir_user u;
    assert_int_equal(dir_user_get(fx->d, "alice@example.org", &u), DIR_OK);
    assert_true(total > 0);
    assert_int_equal(u.epoch - 1, (uint64_t)total); /* no lost update */
    assert_int_equal(u.version - 1, (uint64_t)total);
}

static void test_sqlite_reopen(void **state)
{
    struct fixture *fx = *state;
    struct dir_user u;
    struct dir_job j;
    assert_int_equal(add_user(fx->d, "alice@example.org", "s1"), DIR_OK);
    init_job(&j, "alice@example.org", "provision");
    assert_int_equal(dir_job_create(fx->d, &j), DIR_OK);
    dir_close(&fx->d);
    fx->d = open_sqlite_ok(fx->path);
    assert_int_equal(dir_user_get(fx->d, "alice@example.org", &u), DIR_OK);
    assert_int_equal(dir_job_get(fx->d, j.id, &j), DIR_OK);
    assert_int_equal(dir_domain_add(fx->d, "example.org"), DIR_EXISTS);
}

/* A directory written by a version-2 tern (jobs without the move fields)
 * keeps its jobs when steps 3 and 4 add them, and the new fields
 * round-trip. */
static void test_sqlite_migrate_v2_jobs(void **state)
{
    struct fixture *fx = *state;
    struct dir_job j, g;
    assert_int_equal(add_user(fx->d, "alice@example.org", "s1"), DIR_OK);
    init_job(&j, "alice@example.org", "copy");
    assert_int_equal(dir_job_create(fx->d, &j), DIR_OK);
    dir_close(&fx->d);
    raw_sql(fx, "ALTER TABLE jobs DROP COLUMN checkpoint; ALTER TABLE jobs DROP COLUMN epoch;"
                "ALTER TABLE jobs DROP COLUMN retain_until; ALTER TABLE jobs DROP COLUMN options;"
                "ALTER TABLE jobs DROP COLUMN fenced_at; ALTER TABLE jobs DROP COLUMN cutovers;"
                "ALTER TABLE jobs DROP COLUMN claims;"
                "DROP TABLE subscriptions; DROP TABLE job_data;"
                "UPDATE meta SET value = '2' WHERE key = 'schema_version'");
    fx->d = open_sqlite_ok(fx->path);
    assert_int_equal(dir_job_get(fx->d, j.id, &g), DIR_OK);
    assert_string_equal(g.phase, "copy");
    assert_int_equal(g.checkpoint, 0);
    assert_int_equal(g.options, 0);
    assert_int_equal(g.fenced_at, 0);
    assert_int_equal(g.cutovers, 0);
    assert_int_equal(g.claims, 0);
    g.checkpoint = 12345;
    g.epoch = 7;
    g.retain_until = 1800000000;
    g.options = DIR_JOB_OPT_SUSPEND | DIR_JOB_OPT_COMPLETE;
    g.fenced_at = 1800000000123;
    g.cutovers = 3;
    g.claims = 5;
    assert_int_equal(dir_job_update(fx->d, &g), DIR_OK);
    assert_int_equal(dir_job_get(fx->d, j.id, &j), DIR_OK);
    assert_int_equal(j.checkpoint, 12345);
    assert_int_equal(j.epoch, 7);
    assert_int_equal(j.retain_until, 1800000000);
    assert_int_equal(j.options, DIR_JOB_OPT_SUSPEND | DIR_JOB_OPT_COMPLETE);
    assert_int_equal(j.fenced_at, 1800000000123);
    assert_int_equal(j.cutovers, 3);
    assert_int_equal(j.claims, 5);
}

static void test_sqlite_migrate_forward(void **state)
{
    struct fixture *fx = *state;
    assert_int_equal(add_user(fx->d, "alice@example.org", "s1"), DIR_OK);
    dir_close(&fx->d);
    /* Rewind to what step 1 alone leaves behind. */
    raw_sql(fx,
            "DROP TABLE jobs; DROP INDEX users_home; DROP TABLE subscriptions; DROP TABLE job_data;"
            "UPDATE meta SET value = '1' WHERE key = 'schema_version'");
    fx->d = open_sqlite_ok(fx->path);

    sqlite3 *db;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_open(fx->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key = 'schema_version'",
                                        -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), dir_schema_version());
    sqlite3_finalize(st);
    sqlite3_close(db);
    assert_true(dir_schema_version() >= 3);

    struct dir_user u;
    struct dir_job j;
    assert_int_equal(dir_user_get(fx->d, "alice@example.org", &u), DIR_OK);
    init_job(&j, "alice@example.org", "provision");
    assert_int_equal(dir_job_create(fx->d, &j), DIR_OK);
}

static void test_sqlite_newer_refused(void **state)
{
    struct fixture *fx = *state;
    dir_close(&fx->d);
    raw_sql(fx, "UPDATE meta SET value = '999' WHERE key = 'schema_version'");
    const char *err = NULL;
    assert_null(dir_open_sqlite(fx->path, &err));
    assert_non_null(err);
    assert_non_null(strstr(err, "newer"));
    /* Refusing must not have rewritten the version: still refused. */
    assert_null(dir_open_sqlite(fx->path, &err));
}

static void test_sqlite_tempfail(void **state)
{
    struct fixture *fx = *state;
    struct dir_user u;
    struct dir_job j;
    assert_int_equal(add_user(fx->d, "alice@example.org", "s1"), DIR_OK);
    assert_int_equal(dir_user_get(fx->d, "alice@example.org", &u), DIR_OK);

    sqlite3 *db;
    assert_int_equal(sqlite3_open(fx->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK);
    dir_sqlite_set_busy_timeout(fx->d, 50);

    /* Writes cannot take the lock: temporary, never "not found". */
    assert_int_equal(dir_user_update(fx->d, &u), DIR_TEMPFAIL);
    assert_int_equal(u.version, 1);
    assert_int_equal(dir_user_delete(fx->d, "ghost@example.org", 1), DIR_TEMPFAIL);
    assert_int_equal(dir_domain_add(fx->d, "example.net"), DIR_TEMPFAIL);
    assert_int_equal(add_user(fx->d, "bob@example.org", "s1"), DIR_TEMPFAIL);
    assert_int_equal(dir_alias_add(fx->d, "pm@example.org", "alice@example.org"), DIR_TEMPFAIL);
    assert_int_equal(dir_store_upsert(fx->d, "s2", "127.0.0.1:2"), DIR_TEMPFAIL);
    init_job(&j, "alice@example.org", "provision");
    assert_int_equal(dir_job_create(fx->d, &j), DIR_TEMPFAIL);
    assert_int_equal(j.id, 0);
    /* WAL: readers still get answers while a writer holds the lock. */
    assert_int_equal(dir_user_get(fx->d, "alice@example.org", &u), DIR_OK);

    assert_int_equal(sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(dir_user_update(fx->d, &u), DIR_OK);
    assert_int_equal(dir_domain_add(fx->d, "example.net"), DIR_OK);
}

static void test_sqlite_open_fails(void **state)
{
    (void)state;
    const char *err = NULL;
    assert_null(dir_open_sqlite("/nonexistent-dir/sub/dir.db", &err));
    assert_non_null(err);
}

/* Each common test twice, named by backend. */
/* clang-format off */
#define BOTH(f) {#f "/mem", f, setup, teardown, &fx_mem}, \
                {#f "/sqlite", f, setup, teardown, &fx_sqlite}
#define SQLITE(f) {#f, f, setup, teardown, &fx_sqlite}
/* clang-format on */

int main(void)
{
    log_init("test");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strings),
        cmocka_unit_test(test_password),
        BOTH(test_domains),
        BOTH(test_user_add),
        BOTH(test_user_get),
        BOTH(test_user_update_cas),
        BOTH(test_user_delete_cas),
        BOTH(test_user_list),
        BOTH(test_aliases),
        BOTH(test_resolve),
        BOTH(test_stores),
        BOTH(test_jobs),
        BOTH(test_job_data),
        SQLITE(test_sqlite_fork_race),
        SQLITE(test_sqlite_reopen),
        SQLITE(test_sqlite_migrate_forward),
        SQLITE(test_sqlite_migrate_v2_jobs),
        SQLITE(test_sqlite_newer_refused),
        SQLITE(test_sqlite_tempfail),
        cmocka_unit_test(test_sqlite_open_fails),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
