/*
 * test_sync — one scenario suite run against both transports of sync.h:
 * (a) sync_local over a memory store, (b) sync_tcp talking TSYNC/1 to a
 * syncd served from a net loop in a second thread over an fs store. Both
 * must give the same answers. Plus, over TCP only, malformed and truncated
 * commands from a raw socket: answered -ERR (or the connection closed),
 * never a crash, nothing changed; and the command parser on its own.
 *
 * Each test gets two channels, s and s2, onto two different stores (for
 * the tests that compare stores: digests, delivery ids).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "net/net.h"
#include "store/store.h"
#include "sync/sync.h"
#include "syncd/syncd.h"

#define U1 "alice@example.org"
#define U2 "bob@example.org"

/* ---- the server thread (TCP) ---- */

struct server {
    char dir[64];
    char ep[2][32];
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool ready, failed;
    atomic_bool stop;
    int64_t stop_deadline;
    unsigned idle_ms;
    /* Owned by the server thread: */
    struct net_loop *loop;
    struct syncd *d[2];
    struct net_task *poll;
};

/* Runs on the loop: ends it once asked to and every session is closed (so
 * nothing is left for LeakSanitizer), or after 3 s regardless. */
static void server_poll(void *ctx)
{
    struct server *sv = ctx;
    if (atomic_load(&sv->stop)) {
        if (sv->stop_deadline == 0)
            sv->stop_deadline = time_mono_ms() + 3000;
        if ((syncd_sessions(sv->d[0]) == 0 && syncd_sessions(sv->d[1]) == 0) ||
            time_mono_ms() > sv->stop_deadline) {
            net_loop_stop(sv->loop);
            return;
        }
    }
    net_task_schedule_in(sv->poll, 5);
}

static void *server_main(void *arg)
{
    struct server *sv = arg;
    const char *err = NULL;
    struct store *st[2];
    st[0] = store_open_fs(sv->dir, "s1", &err);
    st[1] = store_open_memory("s2");
    sv->loop = net_loop_new();
    struct net_conn_limits lim = {.idle_ms = sv->idle_ms, .deadline_ms = 600000};
    bool ok = st[0] != NULL;
    for (int i = 0; i < 2 && ok; i++) {
        sv->d[i] = syncd_listen(sv->loop, sv->ep[i], st[i], i == 0 ? "s1" : "s2", &lim, &err);
        ok = sv->d[i] != NULL;
    }
    sv->poll = net_task_new(sv->loop, server_poll, sv);
    net_task_schedule_in(sv->poll, 5);
    pthread_mutex_lock(&sv->mu);
    sv->ready = true;
    sv->failed = !ok;
    pthread_cond_signal(&sv->cv);
    pthread_mutex_unlock(&sv->mu);
    if (ok)
        net_loop_run(sv->loop);
    for (int i = 0; i < 2; i++)
        syncd_free(&sv->d[i]);
    net_task_free(&sv->poll);
    net_loop_free(&sv->loop);
    store_close(&st[0]);
    store_close(&st[1]);
    return NULL;
}

/* A port that was free a moment ago (net_listen cannot report the port it
 * bound to :0). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &al) < 0)
        fail_msg("free_port: %s", strerror(errno));
    close(fd);
    return ntohs(a.sin_port);
}

static struct server *server_start_idle(unsigned idle_ms)
{
    struct server *sv = xmalloc(sizeof(*sv));
    sv->idle_ms = idle_ms;
    str_copy(sv->dir, "/tmp/test_sync.XXXXXX", sizeof(sv->dir));
    if (mkdtemp(sv->dir) == NULL)
        fail_msg("mkdtemp: %s", strerror(errno));
    int p0 = free_port(), p1;
    do
        p1 = free_port();
    while (p1 == p0);
    snprintf(sv->ep[0], sizeof(sv->ep[0]), "127.0.0.1:%d", p0);
    snprintf(sv->ep[1], sizeof(sv->ep[1]), "127.0.0.1:%d", p1);
    pthread_mutex_init(&sv->mu, NULL);
    pthread_cond_init(&sv->cv, NULL);
    atomic_init(&sv->stop, false);
    if (pthread_create(&sv->th, NULL, server_main, sv) != 0)
        fail_msg("pthread_create");
    pthread_mutex_lock(&sv->mu);
    while (!sv->ready)
        pthread_cond_wait(&sv->cv, &sv->mu);
    pthread_mutex_unlock(&sv->mu);
    if (sv->failed)
        fail_msg("server did not start");
    return sv;
}

static struct server *server_start(void)
{
    return server_start_idle(60000);
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void server_stop(struct server *sv)
{
    atomic_store(&sv->stop, true);
    pthread_join(sv->th, NULL);
    pthread_mutex_destroy(&sv->mu);
    pthread_cond_destroy(&sv->cv);
    nftw(sv->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(sv);
}

/* ---- fixture ---- */

struct env {
    bool tcp;
    struct server *sv;
    struct store *st[2]; /* local only */
    struct sync *s, *s2;
};

static bool kind_local = false, kind_tcp = true;

static struct sync *tcp_connect(const char *ep)
{
    char err[256];
    struct sync *s = sync_tcp_connect(ep, 5000, err, sizeof(err));
    if (s == NULL)
        fail_msg("sync_tcp_connect: %s", err);
    return s;
}

static int setup(void **state)
{
    struct env *e = xmalloc(sizeof(*e));
    e->tcp = *(bool *)*state;
    if (e->tcp) {
        e->sv = server_start();
        e->s = tcp_connect(e->sv->ep[0]);
        e->s2 = tcp_connect(e->sv->ep[1]);
    } else {
        e->st[0] = store_open_memory("s1");
        e->st[1] = store_open_memory("s2");
        e->s = sync_local_new(e->st[0]);
        e->s2 = sync_local_new(e->st[1]);
    }
    *state = e;
    return 0;
}

static int teardown(void **state)
{
    struct env *e = *state;
    sync_close(&e->s);
    sync_close(&e->s2);
    if (e->tcp) {
        server_stop(e->sv);
    } else {
        store_close(&e->st[0]);
        store_close(&e->st[1]);
    }
    free(e);
    return 0;
}

/* Reconnects s after a test broke its connection on purpose. */
static void reconnect(struct env *e)
{
    sync_close(&e->s);
    e->s = e->tcp ? tcp_connect(e->sv->ep[0]) : sync_local_new(e->st[0]);
}

/* ---- helpers ---- */

static const char *why;

#define OK(call)       assert_int_equal((call), 0)
#define NO(call, what) assert_no((call), what, #call)

static void assert_no(int r, const char *what, const char *call)
{
    if (r != SYNC_NO || strcmp(why, what) != 0)
        fail_msg("%s: %d (%s), expected SYNC_NO %s", call, r, r != 0 ? why : "ok", what);
}

static struct store_mailbox get_mb(struct sync *s, const char *user)
{
    struct store_mailbox mb;
    OK(s->ops->mailbox_get(s, user, &mb, &why));
    return mb;
}

static const uint8_t G1[STORE_GUID_LEN] = {0xde, 0xad, 0xbe, 0xef, 1, 2,  3,  4,
                                           5,    6,    7,    8,    9, 10, 11, 12};

static struct sync_msg mkmsg(const char *folder, uint32_t uid, const void *data, size_t len)
{
    struct sync_msg m;
    memset(&m, 0, sizeof(m));
    str_copy(m.folder, folder, sizeof(m.folder));
    m.uid = uid;
    memcpy(m.guid, G1, STORE_GUID_LEN);
    m.guid[15] = (uint8_t)uid;
    m.internal_date = 1700000000 + uid;
    m.size = len;
    sha256_buf(data, len, m.sha256);
    return m;
}

static int append(struct sync *s, const char *user, const char *folder, uint32_t uid,
                  const char *body)
{
    struct sync_msg m = mkmsg(folder, uid, body, strlen(body));
    return s->ops->append(s, user, &m, body, strlen(body), &why);
}

#define COL_MAX 16

struct col {
    size_t nf, nm;
    struct sync_folder f[COL_MAX];
    struct sync_msg m[COL_MAX];
    size_t abort_at; /* return 1 at this record (1-based), 0 = never */
};

static int col_folder(void *ctx, const struct sync_folder *f)
{
    struct col *c = ctx;
    if (c->nf < COL_MAX)
        c->f[c->nf] = *f;
    c->nf++;
    return c->abort_at != 0 && c->nf + c->nm == c->abort_at;
}

static int col_msg(void *ctx, const struct sync_msg *m)
{
    struct col *c = ctx;
    if (c->nm < COL_MAX)
        c->m[c->nm] = *m;
    c->nm++;
    return c->abort_at != 0 && c->nf + c->nm == c->abort_at;
}

/* Changes since `since`; returns the listing's modseq. c is calloc'd. */
static uint64_t changes(struct sync *s, const char *user, uint64_t since, struct col **c)
{
    *c = xcalloc(1, sizeof(**c));
    struct sync_changes_cb cb = {.folder = col_folder, .msg = col_msg, .ctx = *c};
    uint64_t modseq = 0;
    OK(s->ops->changes(s, user, since, &cb, &modseq, &why));
    return modseq;
}

static const struct sync_folder *find_f(const struct col *c, uint32_t uidvalidity)
{
    const struct sync_folder *found = NULL;
    for (size_t i = 0; i < c->nf && i < COL_MAX; i++)
        if (c->f[i].uidvalidity == uidvalidity)
            found = &c->f[i];
    return found;
}

static const struct sync_msg *find_m(const struct col *c, uint32_t uidvalidity, uint32_t uid)
{
    const struct sync_msg *found = NULL;
    for (size_t i = 0; i < c->nm && i < COL_MAX; i++)
        if (c->m[i].uidvalidity == uidvalidity && c->m[i].uid == uid)
            found = &c->m[i];
    return found;
}

static void fetch_eq(struct sync *s, const char *user, const char *folder, uint32_t uid,
                     const void *data, size_t len)
{
    struct buf b;
    buf_init(&b, 0);
    buf_puts(&b, "pre");
    OK(s->ops->fetch(s, user, folder, uid, &b, &why));
    assert_int_equal(b.len, 3 + len);
    assert_memory_equal(b.data, "pre", 3);
    if (len > 0)
        assert_memory_equal(b.data + 3, data, len);
    buf_free(&b);
}

static void digest(struct sync *s, const char *user, struct sync_digest **l, size_t *n)
{
    OK(s->ops->digest(s, user, l, n, &why));
}

/* ---- the scenarios (both transports) ---- */

static void test_mailbox(void **state)
{
    struct env *e = *state;
    struct sync *s = e->s;
    struct store_mailbox mb;
    NO(s->ops->mailbox_get(s, U1, &mb, &why), "notfound");
    NO(s->ops->mailbox_get(s, "not an address", &mb, &why), "invalid");
    OK(s->ops->mailbox_create(s, U1, STORE_MBOX_STAGED, 3, 0, &why));
    NO(s->ops->mailbox_create(s, U1, STORE_MBOX_ACTIVE, 3, 0, &why), "exists");
    NO(s->ops->mailbox_create(s, U2, STORE_MBOX_MOVED, 3, 0, &why), "invalid");
    mb = get_mb(s, U1);
    assert_int_equal(mb.state, STORE_MBOX_STAGED);
    assert_int_equal(mb.epoch, 3);
    assert_string_equal(mb.moved_to, "");
    assert_int_equal(mb.messages, 0);
    assert_int_equal(mb.bytes, 0);
    assert_true(mb.modseq > 0);

    /* Compare-and-set. */
    NO(s->ops->mailbox_state(s, U1, STORE_MBOX_ACTIVE, STORE_MBOX_FENCED, 4, NULL, &why),
       "conflict");
    OK(s->ops->mailbox_state(s, U1, STORE_MBOX_STAGED, STORE_MBOX_ACTIVE, 3, "ignored", &why));
    OK(s->ops->mailbox_state(s, U1, STORE_MBOX_ACTIVE, STORE_MBOX_FENCED, 3, NULL, &why));
    NO(s->ops->mailbox_state(s, U1, STORE_MBOX_FENCED, STORE_MBOX_MOVED, 4, NULL, &why), "invalid");
    NO(s->ops->mailbox_state(s, U1, STORE_MBOX_FENCED, STORE_MBOX_MOVED, 4, "Bad Name", &why),
       "invalid");
    OK(s->ops->mailbox_state(s, U1, STORE_MBOX_FENCED, STORE_MBOX_MOVED, 4, "s2", &why));
    mb = get_mb(s, U1);
    assert_int_equal(mb.state, STORE_MBOX_MOVED);
    assert_int_equal(mb.epoch, 4);
    assert_string_equal(mb.moved_to, "s2");
    NO(s->ops->mailbox_state(s, U2, STORE_MBOX_ACTIVE, STORE_MBOX_FENCED, 4, NULL, &why),
       "notfound");

    /* Purge: DELETING only. */
    NO(s->ops->mailbox_purge(s, U1, &why), "conflict");
    OK(s->ops->mailbox_state(s, U1, STORE_MBOX_MOVED, STORE_MBOX_DELETING, 5, NULL, &why));
    OK(s->ops->mailbox_purge(s, U1, &why));
    NO(s->ops->mailbox_get(s, U1, &mb, &why), "notfound");
    NO(s->ops->mailbox_purge(s, U1, &why), "notfound");
    /* Re-created from scratch. */
    OK(s->ops->mailbox_create(s, U1, STORE_MBOX_ACTIVE, 6, 0, &why));
    assert_int_equal(get_mb(s, U1).messages, 0);
}

static void test_folder_ensure(void **state)
{
    struct env *e = *state;
    struct sync *s = e->s;
    NO(s->ops->folder_ensure(s, U1, "Work", 1000, 5, &why), "notfound");
    OK(s->ops->mailbox_create(s, U1, STORE_MBOX_STAGED, 1, 0, &why));
    OK(s->ops->folder_ensure(s, U1, "Work", 1000, 5, &why));
    struct col *c;
    uint64_t m0 = changes(s, U1, 0, &c);
    assert_int_equal(c->nf, 2);
    assert_int_equal(c->nm, 0);
    assert_string_equal(c->f[0].name, "INBOX");
    const struct sync_folder *f = find_f(c, 1000);
    assert_non_null(f);
    assert_string_equal(f->name, "Work");
    assert_int_equal(f->uidnext, 5);
    assert_false(f->deleted);
    assert_int_equal(m0, get_mb(s, U1).modseq);
    free(c);

    /* Again: nothing to do, no change. */
    OK(s->ops->folder_ensure(s, U1, "Work", 1000, 5, &why));
    OK(s->ops->folder_ensure(s, U1, "Work", 1000, 2, &why));
    assert_int_equal(get_mb(s, U1).modseq, m0);

    /* Renamed by UIDVALIDITY; UIDNEXT never lowered. */
    OK(s->ops->folder_ensure(s, U1, "Play", 1000, 3, &why));
    uint64_t m1 = changes(s, U1, m0, &c);
    assert_int_equal(c->nf, 1);
    assert_string_equal(c->f[0].name, "Play");
    assert_int_equal(c->f[0].uidvalidity, 1000);
    assert_int_equal(c->f[0].uidnext, 5);
    free(c);
    OK(s->ops->folder_ensure(s, U1, "Play", 1000, 9, &why));
    changes(s, U1, m1, &c);
    assert_int_equal(c->nf, 1);
    assert_int_equal(c->f[0].uidnext, 9);
    free(c);

    /* Any octets in a name travel (hex on the wire). */
    static const char odd[] = "Sent Items/\xc3\xa9t\xc3\xa9 - \"x\" %";
    OK(s->ops->folder_ensure(s, U1, odd, 2000, 1, &why));
    /* Name held by another identity: conflict, for a create or a rename. */
    NO(s->ops->folder_ensure(s, U1, odd, 3000, 1, &why), "conflict");
    NO(s->ops->folder_ensure(s, U1, "Play", 2000, 1, &why), "conflict");
    NO(s->ops->folder_ensure(s, U1, "INBOX", 1000, 1, &why), "conflict");
    NO(s->ops->folder_ensure(s, U1, "X", 0, 1, &why), "invalid");
    NO(s->ops->folder_ensure(s, U1, "Bad\r\nName", 4000, 1, &why), "invalid");
    NO(s->ops->folder_ensure(s, U1, "", 4000, 1, &why), "invalid");

    struct sync_digest *l;
    size_t n;
    digest(s, U1, &l, &n);
    assert_int_equal(n, 3);
    assert_string_equal(l[0].name, "INBOX");
    assert_string_equal(l[1].name, "Play");
    assert_string_equal(l[2].name, odd);
    assert_int_equal(l[2].uidvalidity, 2000);
    uint32_t inbox_uv = l[0].uidvalidity;
    free(l);

    /* Delete by UIDVALIDITY, idempotent; INBOX cannot go. */
    uint64_t m2 = get_mb(s, U1).modseq;
    OK(s->ops->folder_delete(s, U1, 2000, &why));
    OK(s->ops->folder_delete(s, U1, 2000, &why));
    OK(s->ops->folder_delete(s, U1, 777, &why));
    NO(s->ops->folder_delete(s, U1, inbox_uv, &why), "invalid");
    NO(s->ops->folder_delete(s, U2, 2000, &why), "notfound");
    changes(s, U1, m2, &c);
    assert_int_equal(c->nf, 1);
    assert_string_equal(c->f[0].name, odd);
    assert_true(c->f[0].deleted);
    free(c);
    /* The name is free again, and the identity can come back. */
    OK(s->ops->folder_ensure(s, U1, odd, 2000, 1, &why));

    /* Fenced: refused. */
    OK(s->ops->mailbox_state(s, U1, STORE_MBOX_STAGED, STORE_MBOX_FENCED, 1, NULL, &why));
    NO(s->ops->folder_ensure(s, U1, "New", 5000, 1, &why), "notlive");
    NO(s->ops->folder_ensure(s, U1, "Play", 1000, 20, &why), "notlive");
    NO(s->ops->folder_delete(s, U1, 1000, &why), "notlive");
}

static void test_append_fetch(void **state)
{
    struct env *e = *state;
    struct sync *s = e->s;
    OK(s->ops->mailbox_create(s, U1, STORE_MBOX_STAGED, 1, 0, &why));
    OK(s->ops->folder_ensure(s, U1, "Work", 1000, 1, &why));

    /* Bytes of every kind, CRLFs, NULs, a line that looks like a reply. */
    static const char body[] = "From: a@b\r\n\r\n+OK\r\n-ERR x\r\n\0\x01\xff\r\n.\r\n";
    size_t blen = sizeof(body) - 1;
    struct sync_msg m = mkmsg("Work", 7, body, blen);
    m.flags = STORE_F_SEEN | STORE_F_FLAGGED;
    str_copy(m.keywords, "$Junk Project-X", sizeof(m.keywords));
    m.internal_date = 1234567890;
    OK(s->ops->append(s, U1, &m, body, blen, &why));
    NO(s->ops->append(s, U1, &m, body, blen, &why), "exists");
    fetch_eq(s, U1, "Work", 7, body, blen);

    /* A checksum mismatch stores nothing. */
    uint64_t ms = get_mb(s, U1).modseq;
    struct sync_msg bad = mkmsg("Work", 8, "other", 5);
    NO(s->ops->append(s, U1, &bad, body, blen, &why), "checksum");
    struct buf b;
    buf_init(&b, 0);
    NO(s->ops->fetch(s, U1, "Work", 8, &b, &why), "notfound");
    buf_free(&b);
    struct store_mailbox mb = get_mb(s, U1);
    assert_int_equal(mb.modseq, ms);
    assert_int_equal(mb.messages, 1);
    assert_int_equal(mb.bytes, blen);

    NO(append(s, U1, "Nope", 8, "x"), "notfound");
    NO(append(s, U1, "Work", 0, "x"), "invalid");
    NO(append(s, U2, "Work", 8, "x"), "notfound");
    bad = mkmsg("Work", 8, "x", 1);
    str_copy(bad.keywords, "bad(keyword", sizeof(bad.keywords));
    NO(s->ops->append(s, U1, &bad, "x", 1, &why), "invalid");
    bad = mkmsg("Work", 8, "x", 1);
    bad.flags = 0x100;
    NO(s->ops->append(s, U1, &bad, "x", 1, &why), "invalid");

    /* Empty and large messages. */
    OK(append(s, U1, "Work", 9, ""));
    fetch_eq(s, U1, "Work", 9, "", 0);
    size_t big = 3 * 1024 * 1024 + 17;
    char *data = xmalloc(big);
    for (size_t i = 0; i < big; i++)
        data[i] = (char)(i * 7 + i / 1000);
    struct sync_msg bm = mkmsg("INBOX", 100, data, big);
    OK(s->ops->append(s, U1, &bm, data, big, &why));
    fetch_eq(s, U1, "inbox", 100, data, big);
    /* A read buffer too small for it. */
    if (!e->tcp) {
        buf_init(&b, 1000);
        assert_int_equal(s->ops->fetch(s, U1, "INBOX", 100, &b, &why), -1);
        buf_free(&b);
    }
    free(data);

    /* What changes reports for it. */
    struct col *c;
    changes(s, U1, 0, &c);
    assert_int_equal(c->nm, 3);
    const struct sync_msg *r = find_m(c, 1000, 7);
    assert_non_null(r);
    assert_string_equal(r->folder, "Work");
    assert_memory_equal(r->guid, m.guid, STORE_GUID_LEN);
    assert_int_equal(r->flags, STORE_F_SEEN | STORE_F_FLAGGED);
    assert_string_equal(r->keywords, "$Junk Project-X");
    assert_int_equal(r->internal_date, 1234567890);
    assert_int_equal(r->size, blen);
    assert_memory_equal(r->sha256, m.sha256, SHA256_LEN);
    assert_false(r->expunged);
    assert_true(r->modseq > 0);
    assert_string_equal(c->m[2].folder, "INBOX");
    assert_int_equal(c->m[2].size, big);
    free(c);

    NO(s->ops->fetch(s, U1, "Work", 99, &b, &why), "notfound");
    NO(s->ops->fetch(s, U1, "Nope", 7, &b, &why), "notfound");
    NO(s->ops->fetch(s, U2, "Work", 7, &b, &why), "notfound");

    /* Several at once (pipelined over TCP): each item its own answer, and
     * the channel still usable after the refusals. */
    {
        char longf[STORE_FOLDER_MAX + 10];
        memset(longf, 'F', sizeof(longf) - 1);
        longf[sizeof(longf) - 1] = '\0';
        const char *folders[] = {"Work", "Work", longf, "Nope", "INBOX", "Work"};
        const uint32_t uids[] = {7, 99, 7, 7, 100, 9};
        struct buf outs[6];
        int rcs[6];
        const char *whys[6];
        for (size_t i = 0; i < 6; i++)
            buf_init(&outs[i], 0);
        OK(s->ops->fetch_batch(s, U1, folders, uids, 6, outs, rcs, whys));
        assert_int_equal(rcs[0], 0);
        assert_int_equal(outs[0].len, blen);
        assert_memory_equal(outs[0].data, body, blen);
        assert_int_equal(rcs[1], SYNC_NO);
        assert_string_equal(whys[1], "notfound");
        assert_int_equal(rcs[2], SYNC_NO);
        assert_string_equal(whys[2], "invalid");
        assert_int_equal(rcs[3], SYNC_NO);
        assert_string_equal(whys[3], "notfound");
        assert_int_equal(rcs[4], 0);
        assert_int_equal(outs[4].len, big);
        assert_int_equal(rcs[5], 0);
        assert_int_equal(outs[5].len, 0);
        for (size_t i = 0; i < 6; i++)
            buf_free(&outs[i]);
        OK(s->ops->fetch_batch(s, U1, folders, uids, 0, outs, rcs, whys));
        assert_int_equal(
            s->ops->fetch_batch(s, U1, folders, uids, SYNC_BATCH_MAX + 1, outs, rcs, whys), -1);
        fetch_eq(s, U1, "Work", 7, body, blen);
    }

    /* Only into STAGED or ACTIVE. */
    OK(s->ops->mailbox_state(s, U1, STORE_MBOX_STAGED, STORE_MBOX_FENCED, 1, NULL, &why));
    NO(append(s, U1, "Work", 10, "late"), "notlive");
    fetch_eq(s, U1, "Work", 7, body, blen);
    OK(s->ops->mailbox_state(s, U1, STORE_MBOX_FENCED, STORE_MBOX_ACTIVE, 1, NULL, &why));
    OK(append(s, U1, "Work", 10, "late"));
}

static void test_changes(void **state)
{
    struct env *e = *state;
    struct sync *s = e->s;
    struct col *c;
    uint64_t ms;
    NO(s->ops->changes(s, U1, 0, &(struct sync_changes_cb){0}, &ms, &why), "notfound");
    OK(s->ops->mailbox_create(s, U1, STORE_MBOX_ACTIVE, 1, 0, &why));
    OK(s->ops->folder_ensure(s, U1, "Work", 1000, 1, &why));
    for (uint32_t u = 1; u <= 3; u++)
        OK(append(s, U1, "Work", u, "work\r\n"));
    OK(append(s, U1, "INBOX", 1, "inbox\r\n"));
    uint64_t m0 = changes(s, U1, 0, &c);
    assert_int_equal(c->nf, 2);
    assert_int_equal(c->nm, 4);
    for (size_t i = 1; i < c->nm; i++)
        assert_true(c->m[i].modseq > c->m[i - 1].modseq);
    uint32_t inbox_uv = c->f[0].uidvalidity;
    free(c);

    /* Flags replaced, keywords with them; an expunge; both idempotent. */
    OK(s->ops->flags(s, U1, "Work", 1, STORE_F_FLAGGED, "$x", &why));
    OK(s->ops->flags(s, U1, "Work", 1, STORE_F_FLAGGED, "$x", &why));
    OK(s->ops->expunge(s, U1, "Work", 2, &why));
    OK(s->ops->expunge(s, U1, "Work", 2, &why));
    OK(s->ops->expunge(s, U1, "Work", 99, &why));
    NO(s->ops->expunge(s, U2, "Work", 2, &why), "notfound");
    NO(s->ops->flags(s, U1, "Work", 2, 0, NULL, &why), "notfound");
    NO(s->ops->flags(s, U1, "Work", 1, 0x100, NULL, &why), "invalid");
    NO(s->ops->flags(s, U1, "Work", 1, 0, "a(b", &why), "invalid");
    uint64_t m1 = changes(s, U1, m0, &c);
    assert_int_equal(m1, m0 + 2);
    assert_int_equal(c->nf, 0);
    assert_int_equal(c->nm, 2);
    assert_int_equal(c->m[0].uid, 1);
    assert_int_equal(c->m[0].flags, STORE_F_FLAGGED);
    assert_string_equal(c->m[0].keywords, "$x");
    assert_false(c->m[0].expunged);
    assert_int_equal(c->m[1].uid, 2);
    assert_true(c->m[1].expunged);
    assert_string_equal(c->m[1].folder, "Work");
    assert_int_equal(c->m[1].uidvalidity, 1000);
    free(c);
    /* Keywords dropped by a NULL list. */
    OK(s->ops->flags(s, U1, "Work", 1, STORE_F_FLAGGED, NULL, &why));
    m1 = changes(s, U1, m1, &c);
    assert_int_equal(c->nm, 1);
    assert_string_equal(c->m[0].keywords, "");
    free(c);

    /* A deleted folder: its tombstone and its messages' tombstones, still
     * carrying its name and UIDVALIDITY. */
    OK(s->ops->folder_delete(s, U1, 1000, &why));
    uint64_t m2 = changes(s, U1, m1, &c);
    assert_int_equal(m2, m1 + 1);
    assert_int_equal(c->nf, 1);
    assert_true(c->f[0].deleted);
    assert_string_equal(c->f[0].name, "Work");
    assert_int_equal(c->nm, 2);
    for (size_t i = 0; i < 2; i++) {
        assert_true(c->m[i].expunged);
        assert_string_equal(c->m[i].folder, "Work");
        assert_int_equal(c->m[i].uidvalidity, 1000);
    }
    assert_non_null(find_m(c, 1000, 1));
    assert_non_null(find_m(c, 1000, 3));
    free(c);
    assert_int_equal(changes(s, U1, m2, &c), m2);
    assert_int_equal(c->nf + c->nm, 0);
    free(c);

    /* Since 0: everything, tombstones included. */
    changes(s, U1, 0, &c);
    assert_int_equal(c->nf, 2);
    assert_int_equal(c->nm, 4);
    assert_non_null(find_m(c, inbox_uv, 1));
    assert_false(find_m(c, inbox_uv, 1)->expunged);
    free(c);

    /* A callback that stops the listing: -1 (for TCP the connection is
     * then unusable, the rest of the listing being unread). */
    c = xcalloc(1, sizeof(*c));
    c->abort_at = 2;
    struct sync_changes_cb cb = {.folder = col_folder, .msg = col_msg, .ctx = c};
    assert_int_equal(s->ops->changes(s, U1, 0, &cb, &ms, &why), -1);
    assert_int_equal(c->nf + c->nm, 2);
    free(c);
    if (e->tcp) {
        struct store_mailbox mb;
        assert_int_equal(s->ops->mailbox_get(s, U1, &mb, &why), -1);
        reconnect(e);
        s = e->s;
    }
    assert_int_equal(get_mb(s, U1).messages, 1);
}

static void test_digest(void **state)
{
    struct env *e = *state;
    struct sync *s[2] = {e->s, e->s2};
    for (int i = 0; i < 2; i++) {
        OK(s[i]->ops->mailbox_create(s[i], U1, STORE_MBOX_STAGED, 1, 0, &why));
        OK(s[i]->ops->folder_ensure(s[i], U1, "Work", 1000, 50, &why));
        OK(s[i]->ops->folder_ensure(s[i], U1, "Archive", 1001, 1, &why));
        for (uint32_t u = 1; u <= 5; u++) {
            struct sync_msg m = mkmsg("Work", u * 3, "same\r\n", 6);
            m.flags = u & STORE_F_ALL;
            str_copy(m.keywords, u % 2 ? "$a" : "", sizeof(m.keywords));
            OK(s[i]->ops->append(s[i], U1, &m, "same\r\n", 6, &why));
        }
        OK(append(s[i], U1, "Archive", 1, "old\r\n"));
    }
    struct sync_digest *d[2];
    size_t n[2];
    digest(s[0], U1, &d[0], &n[0]);
    digest(s[1], U1, &d[1], &n[1]);
    assert_int_equal(n[0], 3);
    assert_int_equal(n[1], 3);
    assert_string_equal(d[0][0].name, "Archive");
    assert_string_equal(d[0][1].name, "INBOX");
    assert_string_equal(d[0][2].name, "Work");
    /* INBOXes differ in UIDVALIDITY (each store chose one), not content. */
    for (size_t i = 0; i < 3; i++) {
        assert_string_equal(d[0][i].name, d[1][i].name);
        assert_int_equal(d[0][i].uidnext, d[1][i].uidnext);
        assert_int_equal(d[0][i].messages, d[1][i].messages);
        assert_memory_equal(d[0][i].digest, d[1][i].digest, SHA256_LEN);
    }
    assert_int_equal(d[0][2].uidvalidity, 1000);
    assert_int_equal(d[0][2].uidnext, 50);
    assert_int_equal(d[0][2].messages, 5);
    assert_int_equal(d[0][1].messages, 0);

    /* The definition, computed here: */
    struct buf lines;
    buf_init(&lines, 0);
    for (uint32_t u = 1; u <= 5; u++) {
        struct sync_msg m = mkmsg("Work", u * 3, "same\r\n", 6);
        char g[33], h[65];
        hex_encode(m.guid, STORE_GUID_LEN, g);
        hex_encode(m.sha256, SHA256_LEN, h);
        buf_printf(&lines, "%u %s %u %lld 6 %s %s\n", u * 3, g, u & STORE_F_ALL,
                   (long long)m.internal_date, h, u % 2 ? "$a" : "");
    }
    uint8_t want[SHA256_LEN];
    sha256_buf(lines.data, lines.len, want);
    assert_memory_equal(d[0][2].digest, want, SHA256_LEN);
    buf_free(&lines);
    uint8_t empty[SHA256_LEN];
    sha256_buf("", 0, empty);
    assert_memory_equal(d[0][1].digest, empty, SHA256_LEN);
    free(d[1]);

    /* One flag changed: that folder's digest differs, the others do not. */
    OK(s[1]->ops->flags(s[1], U1, "Work", 6, STORE_F_SEEN, "$a", &why));
    digest(s[1], U1, &d[1], &n[1]);
    assert_memory_not_equal(d[0][2].digest, d[1][2].digest, SHA256_LEN);
    assert_memory_equal(d[0][0].digest, d[1][0].digest, SHA256_LEN);
    free(d[1]);
    /* Put back: equal again. An expunge shows too. */
    OK(s[1]->ops->flags(s[1], U1, "Work", 6, 2, "", &why));
    digest(s[1], U1, &d[1], &n[1]);
    assert_memory_equal(d[0][2].digest, d[1][2].digest, SHA256_LEN);
    free(d[1]);
    OK(s[1]->ops->expunge(s[1], U1, "Archive", 1, &why));
    digest(s[1], U1, &d[1], &n[1]);
    assert_memory_not_equal(d[0][0].digest, d[1][0].digest, SHA256_LEN);
    assert_int_equal(d[1][0].messages, 0);
    free(d[1]);
    free(d[0]);
    struct sync_digest *l;
    size_t nl;
    NO(s[0]->ops->digest(s[0], U2, &l, &nl, &why), "notfound");
}

/* A move creates the destination with the source INBOX's UIDVALIDITY: the
 * FOLDER for INBOX that follows then finds it as is. */
static void test_inbox_uidvalidity(void **state)
{
    struct env *e = *state;
    struct sync *s[2] = {e->s, e->s2};
    const uint32_t uv = 3000000001u;
    NO(s[0]->ops->mailbox_create(s[0], U1, STORE_MBOX_MOVED, 1, uv, &why), "invalid");
    for (int i = 0; i < 2; i++) {
        OK(s[i]->ops->mailbox_create(s[i], U1, STORE_MBOX_STAGED, 2, uv, &why));
        NO(s[i]->ops->mailbox_create(s[i], U1, STORE_MBOX_STAGED, 2, uv, &why), "exists");
        OK(s[i]->ops->folder_ensure(s[i], U1, "INBOX", uv, 7, &why));
        OK(append(s[i], U1, "INBOX", 3, "in\r\n"));
    }
    /* Another UIDVALIDITY for INBOX is still refused. */
    NO(s[0]->ops->folder_ensure(s[0], U1, "INBOX", uv + 1, 1, &why), "conflict");
    struct store_mailbox mb = get_mb(s[0], U1);
    assert_int_equal(mb.state, STORE_MBOX_STAGED);
    assert_int_equal(mb.epoch, 2);

    /* Both stores' INBOXes are now the same, UIDVALIDITY included. */
    struct sync_digest *d[2];
    size_t n[2];
    digest(s[0], U1, &d[0], &n[0]);
    digest(s[1], U1, &d[1], &n[1]);
    assert_int_equal(n[0], 1);
    assert_int_equal(n[1], 1);
    for (int i = 0; i < 2; i++) {
        assert_string_equal(d[i][0].name, "INBOX");
        assert_int_equal(d[i][0].uidvalidity, uv);
        assert_int_equal(d[i][0].uidnext, 7);
        assert_int_equal(d[i][0].messages, 1);
    }
    assert_memory_equal(d[0][0].digest, d[1][0].digest, SHA256_LEN);
    free(d[0]);
    free(d[1]);
    struct col *c;
    changes(s[0], U1, 0, &c);
    assert_int_equal(c->nf, 1);
    assert_int_equal(c->f[0].uidvalidity, uv);
    free(c);

    /* 0: the store chooses one. */
    OK(s[0]->ops->mailbox_create(s[0], U2, STORE_MBOX_ACTIVE, 1, 0, &why));
    digest(s[0], U2, &d[0], &n[0]);
    assert_int_equal(n[0], 1);
    assert_true(d[0][0].uidvalidity != 0);
    assert_true(d[0][0].uidvalidity != uv);
    free(d[0]);
}

static void test_deliveries(void **state)
{
    struct env *e = *state;
    struct sync *s = e->s, *s2 = e->s2;
    struct sync_delivery *l;
    size_t n;
    NO(s->ops->deliveries(s, U1, &l, &n, &why), "notfound");
    OK(s->ops->mailbox_create(s, U1, STORE_MBOX_STAGED, 1, 0, &why));
    OK(s->ops->deliveries(s, U1, &l, &n, &why));
    assert_int_equal(n, 0);
    free(l);
    OK(s->ops->folder_ensure(s, U1, "Work", 1000, 1, &why));
    OK(append(s, U1, "Work", 3, "three\r\n"));
    OK(append(s, U1, "INBOX", 4, "four\r\n"));
    struct sync_delivery d = {.id = "q2.1", .folder = "Work", .uid = 3};
    OK(s->ops->delivery_add(s, U1, &d, &why));
    NO(s->ops->delivery_add(s, U1, &d, &why), "exists");
    struct sync_delivery d2 = {.id = "q1.1", .folder = "INBOX", .uid = 4};
    OK(s->ops->delivery_add(s, U1, &d2, &why));
    /* A missing message or folder: recorded all the same (the id is what
     * matters; a move copies ids of messages expunged before the copy). */
    struct sync_delivery gone = {.id = "q3.1", .folder = "Work", .uid = 4};
    OK(s->ops->delivery_add(s, U1, &gone, &why));
    NO(s->ops->delivery_add(s, U1, &gone, &why), "exists");
    struct sync_delivery nof = {.id = "q4.1", .folder = "Nope", .uid = 9};
    OK(s->ops->delivery_add(s, U1, &nof, &why));
    NO(s->ops->delivery_add(s, U2, &d, &why), "notfound");
    struct sync_delivery sp = {.id = "a b", .folder = "Work", .uid = 3};
    NO(s->ops->delivery_add(s, U1, &sp, &why), "invalid");
    str_copy(sp.id, "", sizeof(sp.id));
    NO(s->ops->delivery_add(s, U1, &sp, &why), "invalid");

    OK(s->ops->deliveries(s, U1, &l, &n, &why));
    assert_int_equal(n, 4);
    assert_string_equal(l[0].id, "q1.1");
    assert_string_equal(l[0].folder, "INBOX");
    assert_int_equal(l[0].uid, 4);
    assert_string_equal(l[1].id, "q2.1");
    assert_string_equal(l[1].folder, "Work");
    assert_int_equal(l[1].uid, 3);
    assert_string_equal(l[2].id, "q3.1");
    assert_string_equal(l[2].folder, "Work");
    assert_int_equal(l[2].uid, 4);
    assert_string_equal(l[3].id, "q4.1");
    assert_string_equal(l[3].folder, "Nope");
    assert_int_equal(l[3].uid, 9);

    /* The copy a move makes: messages first, then their ids. */
    OK(s2->ops->mailbox_create(s2, U1, STORE_MBOX_STAGED, 2, 0, &why));
    OK(s2->ops->folder_ensure(s2, U1, "Work", 1000, 1, &why));
    OK(append(s2, U1, "Work", 3, "three\r\n"));
    OK(append(s2, U1, "INBOX", 4, "four\r\n"));
    for (size_t i = 0; i < n; i++)
        OK(s2->ops->delivery_add(s2, U1, &l[i], &why));
    struct sync_delivery *l2;
    size_t n2;
    OK(s2->ops->deliveries(s2, U1, &l2, &n2, &why));
    assert_int_equal(n2, n);
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(l2[i].id, l[i].id);
        assert_string_equal(l2[i].folder, l[i].folder);
        assert_int_equal(l2[i].uid, l[i].uid);
    }
    free(l);
    free(l2);

    /* Fenced: refused. */
    OK(s2->ops->mailbox_state(s2, U1, STORE_MBOX_STAGED, STORE_MBOX_FENCED, 2, NULL, &why));
    struct sync_delivery d3 = {.id = "q9.1", .folder = "Work", .uid = 3};
    NO(s2->ops->delivery_add(s2, U1, &d3, &why), "notlive");
}

/* ---- batched appends (both transports) ---- */

#define BATCH_N 100

/* A batch's arrays, over caller-built messages and bodies. */
struct batch {
    size_t n;
    struct sync_msg m[SYNC_BATCH_MAX + 1];
    const struct sync_msg *mp[SYNC_BATCH_MAX + 1];
    char body[SYNC_BATCH_MAX + 1][64];
    const void *data[SYNC_BATCH_MAX + 1];
    size_t len[SYNC_BATCH_MAX + 1];
    int rc[SYNC_BATCH_MAX + 1];
    const char *why[SYNC_BATCH_MAX + 1];
};

static void batch_add(struct batch *b, const char *folder, uint32_t uid)
{
    size_t i = b->n++;
    int l =
        snprintf(b->body[i], sizeof(b->body[i]), "Subject: %u\r\n\r\nbody %u\r\n", uid, uid * 7);
    b->len[i] = (size_t)l;
    b->data[i] = b->body[i];
    b->m[i] = mkmsg(folder, uid, b->body[i], b->len[i]);
    b->m[i].flags = uid & STORE_F_ALL;
    str_copy(b->m[i].keywords, uid % 3 == 0 ? "$Junk $x" : "", sizeof(b->m[i].keywords));
    b->mp[i] = &b->m[i];
    b->rc[i] = 42;
    b->why[i] = NULL;
}

static int batch_run(struct sync *s, const char *user, struct batch *b)
{
    return s->ops->append_batch(s, user, b->mp, b->data, b->len, b->n, b->rc, b->why, NULL);
}

static const struct sync_digest *find_d(const struct sync_digest *l, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(l[i].name, name) == 0)
            return &l[i];
    fail_msg("no digest for %s", name);
    return NULL;
}

static void test_append_batch(void **state)
{
    struct env *e = *state;
    struct sync *s = e->s, *s2 = e->s2;
    struct batch *b = xcalloc(1, sizeof(*b));
    for (int i = 0; i < 2; i++) {
        struct sync *x = i == 0 ? s : s2;
        OK(x->ops->mailbox_create(x, U1, STORE_MBOX_STAGED, 1, 0, &why));
        OK(x->ops->folder_ensure(x, U1, "Work", 1000, 1, &why));
    }
    /* 100 in one call on s; the same one by one on s2. */
    for (uint32_t u = 1; u <= BATCH_N; u++)
        batch_add(b, "Work", u);
    OK(batch_run(s, U1, b));
    for (size_t i = 0; i < b->n; i++) {
        assert_int_equal(b->rc[i], 0);
        OK(s2->ops->append(s2, U1, &b->m[i], b->data[i], b->len[i], &why));
    }
    struct sync_digest *d[2];
    size_t n[2];
    digest(s, U1, &d[0], &n[0]);
    digest(s2, U1, &d[1], &n[1]);
    const struct sync_digest *w0 = find_d(d[0], n[0], "Work"), *w1 = find_d(d[1], n[1], "Work");
    assert_int_equal(w0->messages, BATCH_N);
    assert_int_equal(w1->messages, BATCH_N);
    assert_int_equal(w0->uidnext, BATCH_N + 1);
    assert_memory_equal(w0->digest, w1->digest, SHA256_LEN);
    free(d[0]);
    free(d[1]);
    fetch_eq(s, U1, "Work", 57, b->body[56], b->len[56]);

    /* A taken UID and a bad checksum are refused alone; the rest stored. */
    b->n = 0;
    batch_add(b, "Work", 101);
    batch_add(b, "Work", 7); /* taken */
    batch_add(b, "Work", 102);
    batch_add(b, "Work", 103);
    b->body[3][0] ^= 1; /* no longer matches its SHA-256 */
    batch_add(b, "Work", 104);
    OK(batch_run(s, U1, b));
    assert_int_equal(b->rc[0], 0);
    why = b->why[1];
    assert_no(b->rc[1], "exists", "taken UID");
    assert_int_equal(b->rc[2], 0);
    why = b->why[3];
    assert_no(b->rc[3], "checksum", "bad checksum");
    assert_int_equal(b->rc[4], 0);
    fetch_eq(s, U1, "Work", 101, b->body[0], b->len[0]);
    fetch_eq(s, U1, "Work", 104, b->body[4], b->len[4]);
    struct buf fb;
    buf_init(&fb, 0);
    NO(s->ops->fetch(s, U1, "Work", 103, &fb, &why), "notfound");
    buf_free(&fb);
    struct col *c;
    changes(s, U1, 0, &c);
    assert_int_equal(c->nm, BATCH_N + 3);
    free(c);
    struct store_mailbox mb = get_mb(s, U1);
    assert_int_equal(mb.messages, BATCH_N + 3);

    /* Per-item refusals of the mailbox or folder, as append gives them. */
    b->n = 0;
    batch_add(b, "Work", 200);
    batch_add(b, "Nope", 1);
    OK(batch_run(s, U2, b));
    why = b->why[0];
    assert_no(b->rc[0], "notfound", "no mailbox");
    why = b->why[1];
    assert_no(b->rc[1], "notfound", "no mailbox");
    OK(batch_run(s, U1, b));
    assert_int_equal(b->rc[0], 0);
    why = b->why[1];
    assert_no(b->rc[1], "notfound", "no folder");
    b->m[0].uid = 0;
    b->m[1].uid = 201;
    str_copy(b->m[1].folder, "Work", sizeof(b->m[1].folder));
    OK(batch_run(s, U1, b));
    why = b->why[0];
    assert_no(b->rc[0], "invalid", "UID 0");
    assert_int_equal(b->rc[1], 0);
    /* Nothing to do. */
    OK(s->ops->append_batch(s, U1, b->mp, b->data, b->len, 0, b->rc, b->why, NULL));

    /* The limits: the count, then the bytes; over them -1 and nothing sent
     * (the connection stays usable). Exactly at the count limit: fine. */
    b->n = 0;
    for (uint32_t u = 1; u <= SYNC_BATCH_MAX + 1; u++)
        batch_add(b, "INBOX", u);
    assert_int_equal(batch_run(s, U1, b), -1);
    b->n = SYNC_BATCH_MAX;
    OK(batch_run(s, U1, b));
    for (size_t i = 0; i < b->n; i++)
        assert_int_equal(b->rc[i], 0);
    b->n = 0;
    batch_add(b, "Work", 300);
    batch_add(b, "Work", 301);
    b->len[0] = SYNC_BATCH_BYTES; /* never read: refused before */
    assert_int_equal(batch_run(s, U1, b), -1);
    b->len[0] = SIZE_MAX; /* no overflow in the sum either */
    assert_int_equal(batch_run(s, U1, b), -1);
    mb = get_mb(s, U1);
    assert_int_equal(mb.messages, BATCH_N + 3 + 2 + SYNC_BATCH_MAX);
    free(b);
}

/* Delivery ids in an append batch (both transports): the message and its
 * id in one commit; an id seen before (earlier in the same batch, recorded
 * already, recorded without a message) stores nothing and reports the
 * first UID; a malformed id refuses its item only. */
static void test_append_batch_ids(void **state)
{
    struct env *e = *state;
    struct sync *s = e->s;
    struct batch *b = xcalloc(1, sizeof(*b));
    struct sync_append_res res[8];
    OK(s->ops->mailbox_create(s, U1, STORE_MBOX_STAGED, 1, 0, &why));
    OK(s->ops->folder_ensure(s, U1, "Work", 1000, 1, &why));
    b->n = 0;
    batch_add(b, "Work", 1);
    batch_add(b, "Work", 2);
    batch_add(b, "Work", 3);
    batch_add(b, "Work", 4);
    str_copy(b->m[0].delivery_id, "imp1.a", sizeof(b->m[0].delivery_id));
    str_copy(b->m[1].delivery_id, "imp1.a", sizeof(b->m[1].delivery_id)); /* same batch */
    str_copy(b->m[2].delivery_id, "imp1.c", sizeof(b->m[2].delivery_id));
    memset(res, 0x5a, sizeof(res));
    OK(s->ops->append_batch(s, U1, b->mp, b->data, b->len, b->n, b->rc, b->why, res));
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(b->rc[i], 0);
    assert_false(res[0].duplicate);
    assert_true(res[1].duplicate);
    assert_int_equal(res[1].uid, 1);
    assert_int_equal(res[1].uidvalidity, 1000);
    assert_false(res[2].duplicate);
    assert_false(res[3].duplicate);
    assert_int_equal(res[3].uid, 0);
    struct store_mailbox mb = get_mb(s, U1);
    assert_int_equal(mb.messages, 3); /* not the second copy */
    struct buf fb;
    buf_init(&fb, 0);
    NO(s->ops->fetch(s, U1, "Work", 2, &fb, &why), "notfound");
    buf_free(&fb);
    struct sync_delivery *l = NULL;
    size_t n = 0;
    OK(s->ops->deliveries(s, U1, &l, &n, &why));
    assert_int_equal(n, 2);
    assert_string_equal(l[0].id, "imp1.a");
    assert_int_equal(l[0].uid, 1);
    assert_string_equal(l[1].id, "imp1.c");
    assert_int_equal(l[1].uid, 3);
    assert_string_equal(l[1].folder, "Work");
    free(l);

    /* Ids recorded before: with a message (its UID), and without one
     * (DELIVERY for a message not here: UID 0); a new one is stored. */
    const struct sync_delivery pre = {.id = "lmtp.q9", .folder = "Work", .uid = 77};
    OK(s->ops->delivery_add(s, U1, &pre, &why));
    b->n = 0;
    batch_add(b, "Work", 10);
    batch_add(b, "Work", 11);
    batch_add(b, "Work", 12);
    str_copy(b->m[0].delivery_id, "imp1.c", sizeof(b->m[0].delivery_id));
    str_copy(b->m[1].delivery_id, "lmtp.q9", sizeof(b->m[1].delivery_id));
    str_copy(b->m[2].delivery_id, "imp1.d", sizeof(b->m[2].delivery_id));
    OK(s->ops->append_batch(s, U1, b->mp, b->data, b->len, b->n, b->rc, b->why, res));
    assert_int_equal(b->rc[0], 0);
    assert_true(res[0].duplicate);
    assert_int_equal(res[0].uid, 3);
    assert_int_equal(res[0].uidvalidity, 1000);
    assert_int_equal(b->rc[1], 0);
    assert_true(res[1].duplicate);
    assert_int_equal(res[1].uid, 0);
    assert_int_equal(res[1].uidvalidity, 0);
    assert_int_equal(b->rc[2], 0);
    assert_false(res[2].duplicate);
    mb = get_mb(s, U1);
    assert_int_equal(mb.messages, 4);
    /* Without res_out a duplicate is just 0, and still nothing stored. */
    b->n = 0;
    batch_add(b, "Work", 20);
    str_copy(b->m[0].delivery_id, "imp1.d", sizeof(b->m[0].delivery_id));
    OK(batch_run(s, U1, b));
    assert_int_equal(b->rc[0], 0);
    assert_int_equal(get_mb(s, U1).messages, 4);

    /* Malformed ids: that item "invalid", the others stored. */
    b->n = 0;
    batch_add(b, "Work", 30);
    batch_add(b, "Work", 31);
    batch_add(b, "Work", 32);
    batch_add(b, "Work", 33);
    str_copy(b->m[0].delivery_id, "a b", sizeof(b->m[0].delivery_id));
    str_copy(b->m[1].delivery_id, "a\x01", sizeof(b->m[1].delivery_id));
    memset(b->m[2].delivery_id, 'x', sizeof(b->m[2].delivery_id)); /* no NUL: too long */
    str_copy(b->m[3].delivery_id, "imp1.e", sizeof(b->m[3].delivery_id));
    OK(s->ops->append_batch(s, U1, b->mp, b->data, b->len, b->n, b->rc, b->why, res));
    for (size_t i = 0; i < 3; i++) {
        why = b->why[i];
        assert_no(b->rc[i], "invalid", "bad id");
    }
    assert_int_equal(b->rc[3], 0);
    assert_false(res[3].duplicate);
    assert_int_equal(get_mb(s, U1).messages, 5);
    free(b);
}

/* ---- TCP only: the wire itself ---- */

struct raw {
    int fd;
    char buf[65536];
    size_t len;
};

static void raw_open(struct raw *r, const char *ep)
{
    char host[64];
    int port;
    assert_int_equal(parse_hostport(ep, host, sizeof(host), &port), 0);
    r->fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    assert_int_equal(connect(r->fd, (struct sockaddr *)&a, sizeof(a)), 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(r->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    r->len = 0;
}

static void raw_send(struct raw *r, const void *p, size_t n)
{
    assert_int_equal(send(r->fd, p, n, MSG_NOSIGNAL), (ssize_t)n);
}

static void raw_puts(struct raw *r, const char *s)
{
    raw_send(r, s, strlen(s));
}

/* The next reply line (without CRLF) into out; false on EOF. */
static bool raw_line(struct raw *r, char *out, size_t cap)
{
    for (;;) {
        char *nl = memchr(r->buf, '\n', r->len);
        if (nl != NULL) {
            size_t l = (size_t)(nl - r->buf);
            assert_true(l > 0 && r->buf[l - 1] == '\r');
            assert_true(l - 1 < cap);
            memcpy(out, r->buf, l - 1);
            out[l - 1] = '\0';
            memmove(r->buf, nl + 1, r->len - l - 1);
            r->len -= l + 1;
            return true;
        }
        assert_true(r->len < sizeof(r->buf));
        ssize_t n = recv(r->fd, r->buf + r->len, sizeof(r->buf) - r->len, 0);
        /* A server hanging up on unread input resets the connection. */
        if (n < 0 && errno == ECONNRESET)
            return false;
        if (n < 0)
            fail_msg("raw recv: %s", strerror(errno));
        if (n == 0)
            return false;
        r->len += (size_t)n;
    }
}

/* Sends a line (CRLF added) and checks the reply starts with `want`. */
static void raw_expect(struct raw *r, const char *cmd, const char *want)
{
    char line[1024];
    raw_puts(r, cmd);
    raw_puts(r, "\r\n");
    if (!raw_line(r, line, sizeof(line)))
        fail_msg("%.60s: connection closed, expected %s", cmd, want);
    if (strncmp(line, want, strlen(want)) != 0)
        fail_msg("%.60s: got \"%s\", expected \"%s...\"", cmd, line, want);
}

static void raw_closed(struct raw *r)
{
    char line[1024];
    while (raw_line(r, line, sizeof(line)))
        ;
}

static void hexs(const char *s, char *out)
{
    hex_encode(s, strlen(s), out);
}

/* Fencing tokens: a transport whose token another one has since raised
 * gets "stale token" for every write to that mailbox and changes nothing;
 * the newer one writes on; tokenless transports and other mailboxes are
 * not affected. On the wire: TOKEN, "-NO stale token", and TOKEN's syntax. */
static void test_token(void **state)
{
    struct env *e = *state;
    struct sync *b = e->tcp ? tcp_connect(e->sv->ep[0]) : sync_local_new(e->st[0]);
    struct sync *plain = e->tcp ? tcp_connect(e->sv->ep[0]) : sync_local_new(e->st[0]);
    struct sync *a = e->s;
    OK(a->ops->token(a, U1, 7, 1, &why)); /* no mailbox yet: fine */
    OK(a->ops->mailbox_create(a, U1, STORE_MBOX_STAGED, 2, 0, &why));
    OK(plain->ops->mailbox_create(plain, U2, STORE_MBOX_STAGED, 2, 0, &why));
    OK(a->ops->folder_ensure_at(a, U1, "Work", 500, 1, 3, &why));
    struct sync_msg m = mkmsg("Work", 1, "one\r\n", 5);
    m.modseq = 4;
    OK(a->ops->append(a, U1, &m, "one\r\n", 5, &why));
    struct store_mailbox mb = get_mb(plain, U1);
    assert_int_equal(mb.modseq, 4);

    /* B claims the job: a higher token. */
    OK(b->ops->token(b, U1, 7, 2, &why));
    NO(a->ops->flags_at(a, U1, "Work", 1, STORE_F_SEEN, "", 4, &why), "stale token");
    m = mkmsg("Work", 2, "two\r\n", 5);
    m.modseq = 5;
    NO(a->ops->append(a, U1, &m, "two\r\n", 5, &why), "stale token");
    const struct sync_msg *msgs[1] = {&m};
    const void *data[1] = {"two\r\n"};
    size_t lens[1] = {5};
    int rc[1];
    const char *whys[1];
    OK(a->ops->append_batch(a, U1, msgs, data, lens, 1, rc, whys, NULL));
    assert_int_equal(rc[0], SYNC_NO);
    assert_string_equal(whys[0], "stale token");
    NO(a->ops->modseq_raise(a, U1, 9, &why), "stale token");
    NO(a->ops->folder_ensure_at(a, U1, "Other", 501, 1, 5, &why), "stale token");
    NO(a->ops->folder_delete_at(a, U1, 500, 5, &why), "stale token");
    NO(a->ops->expunge_at(a, U1, "Work", 1, 5, &why), "stale token");
    m = mkmsg("Work", 1, "one\r\n", 5);
    m.modseq = 5;
    m.expunged = true;
    NO(a->ops->tombstone(a, U1, &m, &why), "stale token");
    struct sync_delivery d = {.id = "d1", .folder = "Work", .uid = 1};
    NO(a->ops->delivery_add(a, U1, &d, &why), "stale token");
    NO(a->ops->mailbox_state(a, U1, STORE_MBOX_STAGED, STORE_MBOX_ACTIVE, 2, NULL, &why),
       "stale token");
    NO(a->ops->token(a, U1, 7, 1, &why), "stale token");
    /* Nothing of A's got in. */
    mb = get_mb(plain, U1);
    assert_int_equal(mb.modseq, 4);
    assert_int_equal(mb.state, STORE_MBOX_STAGED);
    assert_int_equal(mb.messages, 1);
    if (!e->tcp) { /* MBOX does not show the token */
        assert_int_equal(mb.token.job, 7);
        assert_int_equal(mb.token.claim, 2);
    }
    /* A's token is U1's business only; B and tokenless writes go on. */
    OK(a->ops->folder_ensure_at(a, U2, "Other", 501, 1, 5, &why));
    OK(b->ops->flags_at(b, U1, "Work", 1, STORE_F_SEEN, "", 4, &why));
    OK(plain->ops->flags_at(plain, U1, "Work", 1, STORE_F_SEEN | STORE_F_FLAGGED, "", 4, &why));
    OK(b->ops->mailbox_state(b, U1, STORE_MBOX_STAGED, STORE_MBOX_ACTIVE, 2, NULL, &why));
    /* A later job (a move back) is above every claim of this one. */
    OK(a->ops->token(a, U1, 8, 1, &why));
    NO(b->ops->mailbox_state(b, U1, STORE_MBOX_ACTIVE, STORE_MBOX_FENCED, 2, NULL, &why),
       "stale token");
    OK(a->ops->mailbox_state(a, U1, STORE_MBOX_ACTIVE, STORE_MBOX_FENCED, 2, NULL, &why));
    sync_close(&b);
    sync_close(&plain);
    if (!e->tcp)
        return;
    char u[2 * sizeof(U1)], cmd[256];
    hexs(U1, u);
    struct raw r;
    raw_open(&r, e->sv->ep[0]);
    raw_expect(&r, "HELLO TSYNC/1", "+OK TSYNC/1 s1");
    snprintf(cmd, sizeof(cmd), "TOKEN %s 7 9", u);
    raw_expect(&r, cmd, "-NO stale token");
    snprintf(cmd, sizeof(cmd), "TOKEN %s 0 9", u);
    raw_expect(&r, cmd, "-ERR bad token job");
    snprintf(cmd, sizeof(cmd), "TOKEN %s 9 0", u);
    raw_expect(&r, cmd, "-ERR bad token claim");
    snprintf(cmd, sizeof(cmd), "TOKEN %s 9 x", u);
    raw_expect(&r, cmd, "-ERR bad token claim");
    snprintf(cmd, sizeof(cmd), "TOKEN %s 9223372036854775808 1", u);
    raw_expect(&r, cmd, "-ERR bad token job");
    snprintf(cmd, sizeof(cmd), "TOKEN %s 9", u);
    raw_expect(&r, cmd, "-ERR wrong number");
    snprintf(cmd, sizeof(cmd), "TOKEN %s 8 1", u);
    raw_expect(&r, cmd, "+OK");
    snprintf(cmd, sizeof(cmd), "STATE %s fenced active 2 -", u);
    raw_expect(&r, cmd, "+OK");
    close(r.fd);
}

static void test_tcp_malformed(void **state)
{
    struct env *e = *state;
    if (!e->tcp)
        skip();
    char u[2 * sizeof(U1)], w[16], cmd[1024], line[1024];
    hexs(U1, u);
    hexs("Work", w);
    struct raw r;
    raw_open(&r, e->sv->ep[0]);
    snprintf(cmd, sizeof(cmd), "MBOX %s", u);
    raw_expect(&r, cmd, "-ERR");
    raw_expect(&r, "HELLO TSYNC/2", "-ERR unsupported version");
    raw_expect(&r, "HELLO TSYNC/1", "+OK TSYNC/1 s1");
    raw_expect(&r, cmd, "-NO notfound");
    raw_expect(&r, "MBOX zz", "-ERR");
    raw_expect(&r, "MBOX 616", "-ERR");
    raw_expect(&r, "MBOX 6100", "-ERR"); /* a NUL octet */
    raw_expect(&r, "MBOX", "-ERR wrong number");
    raw_expect(&r, "MBOX  616263", "-ERR");
    raw_expect(&r, "MBOX 616263 ", "-ERR");
    raw_expect(&r, "mbox 616263", "-ERR unknown");
    raw_expect(&r, "FROB", "-ERR unknown");
    raw_expect(&r, "", "-ERR");
    raw_expect(&r, "CHANGES 616263 -1", "-ERR");
    raw_expect(&r, "CHANGES 616263 99999999999999999999999", "-ERR");
    raw_expect(&r, "CREATE 616263 weird 1", "-ERR bad state");
    raw_expect(&r, "FETCH 616263 - 1\x01", "-ERR");
    /* Over-long but well formed: the store's refusal. */
    char *longu = xmalloc(2 * 300 + 16);
    memset(longu, '6', 600);
    longu[600] = '\0';
    snprintf(cmd, sizeof(cmd), "MBOX %s", longu);
    raw_expect(&r, cmd, "-NO invalid");
    free(longu);
    /* A line over 8192 octets, in several pieces: -ERR, and still usable. */
    char *big = xmalloc(20000);
    memset(big, 'A', 20000);
    raw_send(&r, big, 5000);
    raw_send(&r, big, 15000);
    raw_expect(&r, "", "-ERR line too long");
    free(big);
    snprintf(cmd, sizeof(cmd), "MBOX %s", u);
    raw_expect(&r, cmd, "-NO notfound");
    snprintf(cmd, sizeof(cmd), "CREATE %s staged 1", u);
    raw_expect(&r, cmd, "+OK");
    snprintf(cmd, sizeof(cmd), "FOLDER %s 1000 1 %s", u, w);
    raw_expect(&r, cmd, "+OK");

    /* APPEND: a bad argument with a readable length: the body is skipped
     * and the connection stays in step. */
    char sha[65], g[33];
    uint8_t d[SHA256_LEN];
    sha256_buf("hello", 5, d);
    hex_encode(d, SHA256_LEN, sha);
    hex_encode(G1, STORE_GUID_LEN, g);
    snprintf(cmd, sizeof(cmd), "APPEND %s %s 5 nothex %d 0 5 %s -\r\nhello", u, w, 0, sha);
    raw_expect(&r, cmd, "-ERR bad GUID");
    /* A body that does not match its SHA-256. */
    snprintf(cmd, sizeof(cmd), "APPEND %s %s 5 %s 0 0 5 %s -\r\nHELLO", u, w, g, sha);
    raw_expect(&r, cmd, "-NO checksum");
    /* Too long a folder name: -NO, body skipped. */
    char longf[601];
    for (int i = 0; i < 300; i++)
        memcpy(longf + 2 * i, "61", 2);
    longf[600] = '\0';
    snprintf(cmd, sizeof(cmd), "APPEND %s %s 5 %s 0 0 5 %s -\r\nhello", u, longf, g, sha);
    raw_expect(&r, cmd, "-NO invalid");
    /* The good one, pipelined with a MBOX. */
    snprintf(cmd, sizeof(cmd), "APPEND %s %s 5 %s 0 -5 5 %s -\r\nhello\r\nMBOX %s", u, w, g, sha,
             u);
    raw_expect(&r, cmd, "+OK");
    assert_true(raw_line(&r, line, sizeof(line)));
    assert_string_equal(line, "+OK staged 1 - 3 1 5");
    raw_expect(&r, "QUIT", "+OK bye");
    raw_closed(&r);
    close(r.fd);

    /* APPEND: body not followed by CRLF: -ERR and closed. */
    raw_open(&r, e->sv->ep[0]);
    raw_expect(&r, "HELLO TSYNC/1", "+OK");
    snprintf(cmd, sizeof(cmd), "APPEND %s %s 6 %s 0 0 5 %s -\r\nhelloXX", u, w, g, sha);
    raw_expect(&r, cmd, "-ERR");
    raw_closed(&r);
    close(r.fd);
    /* APPEND: length unreadable or too large: -ERR and closed. */
    raw_open(&r, e->sv->ep[0]);
    raw_expect(&r, "HELLO TSYNC/1", "+OK");
    snprintf(cmd, sizeof(cmd), "APPEND %s %s 6 %s 0 0 2147483649 %s -", u, w, g, sha);
    raw_expect(&r, cmd, "-ERR bad body length");
    raw_closed(&r);
    close(r.fd);
    raw_open(&r, e->sv->ep[0]);
    raw_expect(&r, "HELLO TSYNC/1", "+OK");
    raw_expect(&r, "APPEND 1 2", "-ERR wrong number");
    raw_closed(&r);
    close(r.fd);
    /* APPEND: a short body, then the client goes away. */
    raw_open(&r, e->sv->ep[0]);
    raw_expect(&r, "HELLO TSYNC/1", "+OK");
    snprintf(cmd, sizeof(cmd), "APPEND %s %s 7 %s 0 0 100 %s -\r\nonly a part", u, w, g, sha);
    raw_puts(&r, cmd);
    close(r.fd);
    /* CREATE's optional INBOX UIDVALIDITY (a connection of its own: the
     * first one is close to SYNCD_MAX_ERRORS). */
    raw_open(&r, e->sv->ep[0]);
    raw_expect(&r, "HELLO TSYNC/1", "+OK");
    raw_expect(&r, "CREATE 616263 staged 1 x", "-ERR bad number");
    raw_expect(&r, "CREATE 616263 staged 1 4294967296", "-ERR bad number");
    raw_expect(&r, "CREATE 616263 staged 1 5 6", "-ERR wrong number");
    raw_expect(&r, "CREATE 616263 staged", "-ERR wrong number");
    char u2[2 * sizeof(U2)], inbox[16];
    hexs(U2, u2);
    hexs("INBOX", inbox);
    snprintf(cmd, sizeof(cmd), "CREATE %s staged 1 4242", u2);
    raw_expect(&r, cmd, "+OK");
    snprintf(cmd, sizeof(cmd), "FOLDER %s 4242 9 %s", u2, inbox);
    raw_expect(&r, cmd, "+OK");
    snprintf(cmd, sizeof(cmd), "FOLDER %s 4243 9 %s", u2, inbox);
    raw_expect(&r, cmd, "-NO conflict");
    raw_expect(&r, "QUIT", "+OK bye");
    raw_closed(&r);
    close(r.fd);
    /* Too many errors: hung up on. */
    raw_open(&r, e->sv->ep[0]);
    for (int i = 0; i < SYNCD_MAX_ERRORS - 1; i++)
        raw_expect(&r, "FROB", "-ERR");
    raw_expect(&r, "FROB", "-ERR");
    raw_closed(&r);
    close(r.fd);

    /* Nothing of the above changed the mailbox: one message (uid 5). */
    struct sync *s = e->s;
    struct store_mailbox mb = get_mb(s, U1);
    assert_int_equal(mb.messages, 1);
    assert_int_equal(mb.bytes, 5);
    struct col *c;
    changes(s, U1, 0, &c);
    assert_int_equal(c->nm, 1);
    assert_int_equal(c->m[0].uid, 5);
    assert_int_equal(c->m[0].internal_date, -5);
    free(c);
    fetch_eq(s, U1, "Work", 5, "hello", 5);
}

/* An APPENDS record for uid with this body (SHA-256 of good_body), and the
 * body with its CRLF, appended to out. */
static void rec(struct buf *out, const char *folder_hex, uint32_t uid, const char *body,
                const char *good_body)
{
    uint8_t d[SHA256_LEN];
    char sha[65], g[33];
    sha256_buf(good_body, strlen(good_body), d);
    hex_encode(d, SHA256_LEN, sha);
    hex_encode(G1, STORE_GUID_LEN, g);
    buf_printf(out, "%s %u %s 0 0 %zu %s -\r\n%s\r\n", folder_hex, uid, g, strlen(body), sha, body);
}

/* Sends out and empties it. */
static void raw_buf(struct raw *r, struct buf *out)
{
    raw_send(r, out->data, out->len);
    buf_reset(out);
}

static void raw_want(struct raw *r, const char *want)
{
    char line[1024];
    if (!raw_line(r, line, sizeof(line)))
        fail_msg("connection closed, expected %s", want);
    if (strncmp(line, want, strlen(want)) != 0)
        fail_msg("got \"%s\", expected \"%s...\"", line, want);
}

/* Delivery ids in APPENDS records on the wire (docs/sync.md). */
static void test_tcp_appends_ids(void **state)
{
    struct env *e = *state;
    if (!e->tcp)
        skip();
    char u[2 * sizeof(U1)], w[16], cmd[1024];
    hexs(U1, u);
    hexs("Work", w);
    struct buf out;
    buf_init(&out, 0);
    struct raw r;
    raw_open(&r, e->sv->ep[0]);
    raw_expect(&r, "HELLO TSYNC/1", "+OK TSYNC/1 s1");
    snprintf(cmd, sizeof(cmd), "CREATE %s staged 1", u);
    raw_expect(&r, cmd, "+OK");
    snprintf(cmd, sizeof(cmd), "FOLDER %s 1000 1 %s", u, w);
    raw_expect(&r, cmd, "+OK");
    /* Delivery ids: a record with one stores its id in the same commit;
     * the same id again (here, in the same batch) is "+OK duplicate <uid>
     * <uidvalidity>" and nothing stored; a record without one as before;
     * an id over 64 octets is -NO invalid for that record. */
    {
        char one[512];
        buf_printf(&out, "APPENDS %s 4\r\n", u);
        rec(&out, w, 40, "forty", "forty");
        out.len -= strlen("\r\nforty\r\n");
        buf_puts(&out, " - d.40\r\nforty\r\n");
        rec(&out, w, 41, "41", "41");
        out.len -= strlen("\r\n41\r\n");
        buf_puts(&out, " - d.40\r\n41\r\n");
        rec(&out, w, 42, "42", "42");
        rec(&out, w, 43, "43", "43");
        out.len -= strlen("\r\n43\r\n");
        buf_puts(&out, " - 01234567890123456789012345678901234567890123456789012345678901234"
                       "\r\n43\r\n");
        raw_buf(&r, &out);
        raw_want(&r, "+OK");
        raw_want(&r, "+OK duplicate 40 1000");
        raw_want(&r, "+OK");
        raw_want(&r, "-NO invalid");
        raw_want(&r, "+OK 4");
        /* A malformed id refuses the whole batch; the connection stays. */
        buf_printf(&out, "APPENDS %s 2\r\n", u);
        rec(&out, w, 44, "44", "44");
        rec(&out, w, 45, "45", "45");
        out.len -= strlen("\r\n45\r\n");
        buf_puts(&out, " 7 d\x01\r\n45\r\n");
        raw_buf(&r, &out);
        raw_want(&r, "-ERR bad delivery id");
        snprintf(cmd, sizeof(cmd), "DELIVERIES %s", u);
        raw_expect(&r, cmd, "I d.40 40 576f726b");
        raw_want(&r, "+OK");
        snprintf(one, sizeof(one), "FETCH %s %s 44", u, w);
        raw_expect(&r, one, "-NO notfound");
        snprintf(one, sizeof(one), "FETCH %s %s 41", u, w);
        raw_expect(&r, one, "-NO notfound");
    }
    raw_expect(&r, "QUIT", "+OK bye");
    raw_closed(&r);
    close(r.fd);
    buf_free(&out);
    struct store_mailbox mb = get_mb(e->s, U1);
    assert_int_equal(mb.messages, 2); /* 40 and 42 */
}

/* APPENDS on the wire: answers, the limits, framing errors. */
static void test_tcp_appends(void **state)
{
    struct env *e = *state;
    if (!e->tcp)
        skip();
    char u[2 * sizeof(U1)], w[16], cmd[1024];
    hexs(U1, u);
    hexs("Work", w);
    struct buf out;
    buf_init(&out, 0);
    struct raw r;
    raw_open(&r, e->sv->ep[0]);
    /* Before HELLO: read whole, then refused. */
    buf_printf(&out, "APPENDS %s 1\r\n", u);
    rec(&out, w, 1, "one", "one");
    raw_buf(&r, &out);
    raw_want(&r, "-ERR say HELLO");
    raw_expect(&r, "HELLO TSYNC/1", "+OK TSYNC/1 s1");
    snprintf(cmd, sizeof(cmd), "CREATE %s staged 1", u);
    raw_expect(&r, cmd, "+OK");
    snprintf(cmd, sizeof(cmd), "FOLDER %s 1000 1 %s", u, w);
    raw_expect(&r, cmd, "+OK");
    /* Three records: stored, bad checksum, stored; pipelined with MBOX. */
    buf_printf(&out, "APPENDS %s 3\r\n", u);
    rec(&out, w, 1, "one", "one");
    rec(&out, w, 2, "TWO", "two");
    rec(&out, w, 3, "", "");
    buf_printf(&out, "MBOX %s\r\n", u);
    raw_buf(&r, &out);
    raw_want(&r, "+OK");
    raw_want(&r, "-NO checksum");
    raw_want(&r, "+OK");
    raw_want(&r, "+OK 3");
    raw_want(&r, "+OK staged 1 - ");
    /* A taken UID; zero records. */
    buf_printf(&out, "APPENDS %s 1\r\n", u);
    rec(&out, w, 1, "one", "one");
    buf_printf(&out, "APPENDS %s 0\r\n", u);
    raw_buf(&r, &out);
    raw_want(&r, "-NO exists");
    raw_want(&r, "+OK 1");
    raw_want(&r, "+OK 0");
    /* A malformed field in one record: the whole batch is one -ERR, its
     * bodies skipped; the connection stays usable. */
    buf_printf(&out, "APPENDS %s 2\r\n", u);
    rec(&out, w, 10, "ten", "ten");
    buf_printf(&out, "%s 11 nothex 0 0 3 %s -\r\nabc\r\n", w, "00");
    raw_buf(&r, &out);
    raw_want(&r, "-ERR bad GUID");
    /* A user too long for the store: every record -NO invalid. */
    char *longu = xmalloc(601);
    memset(longu, '6', 600);
    longu[600] = '\0';
    buf_printf(&out, "APPENDS %s 2\r\n", longu);
    free(longu);
    rec(&out, w, 12, "x", "x");
    rec(&out, w, 13, "y", "y");
    raw_buf(&r, &out);
    raw_want(&r, "-NO invalid");
    raw_want(&r, "-NO invalid");
    raw_want(&r, "+OK 2");
    snprintf(cmd, sizeof(cmd), "MBOX %s", u);
    raw_expect(&r, cmd, "+OK staged 1 - ");
    raw_expect(&r, "QUIT", "+OK bye");
    raw_closed(&r);
    close(r.fd);

    /* Framing lost: -ERR and closed, nothing of the batch stored. */
    static const char *const bad_heads[] = {
        "APPENDS %s 257\r\n", /* over SYNC_BATCH_MAX */
        "APPENDS %s x\r\n",
        "APPENDS %s\r\n",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad_heads); i++) {
        raw_open(&r, e->sv->ep[0]);
        raw_expect(&r, "HELLO TSYNC/1", "+OK");
        buf_printf(&out, bad_heads[i], u);
        raw_buf(&r, &out);
        raw_want(&r, "-ERR");
        raw_closed(&r);
        close(r.fd);
    }
    static const char *const bad_recs[] = {
        "%s 20 %s 0 0 x %s -\r\n",          /* length unreadable */
        "%s 20 %s 0 0 33554433 %s -\r\n",   /* over SYNC_BATCH_BYTES */
        "%s 20 %s 0 0 3 %s -\r\nabcXX\r\n", /* body not followed by CRLF */
        "\r\n",                             /* an empty record line */
    };
    char g[33], sha[65];
    hex_encode(G1, STORE_GUID_LEN, g);
    memset(sha, 'a', 64);
    sha[64] = '\0';
    for (size_t i = 0; i < ARRAY_SIZE(bad_recs); i++) {
        raw_open(&r, e->sv->ep[0]);
        raw_expect(&r, "HELLO TSYNC/1", "+OK");
        buf_printf(&out, "APPENDS %s 2\r\n", u);
        rec(&out, w, 30, "thirty", "thirty");
        buf_printf(&out, bad_recs[i], w, g, sha);
        raw_buf(&r, &out);
        raw_want(&r, "-ERR");
        raw_closed(&r);
        close(r.fd);
    }
    /* The sum of the lengths over SYNC_BATCH_BYTES (each one fine). */
    raw_open(&r, e->sv->ep[0]);
    raw_expect(&r, "HELLO TSYNC/1", "+OK");
    buf_printf(&out, "APPENDS %s 2\r\n", u);
    buf_printf(&out, "%s 31 %s 0 0 %u %s -\r\n", w, g, SYNC_BATCH_BYTES / 2, sha);
    raw_buf(&r, &out);
    char *half = xcalloc(1, SYNC_BATCH_BYTES / 2 + 2);
    memset(half, 'h', SYNC_BATCH_BYTES / 2);
    memcpy(half + SYNC_BATCH_BYTES / 2, "\r\n", 2);
    raw_send(&r, half, SYNC_BATCH_BYTES / 2 + 2);
    free(half);
    buf_printf(&out, "%s 32 %s 0 0 %u %s -\r\n", w, g, SYNC_BATCH_BYTES / 2 + 1, sha);
    raw_buf(&r, &out);
    raw_want(&r, "-ERR APPENDS batch over its size limit");
    raw_closed(&r);
    close(r.fd);
    /* A record line over SYNCD_LINE_MAX. */
    raw_open(&r, e->sv->ep[0]);
    raw_expect(&r, "HELLO TSYNC/1", "+OK");
    buf_printf(&out, "APPENDS %s 1\r\n", u);
    for (int i = 0; i < SYNCD_LINE_MAX + 10; i++)
        buf_puts(&out, "A");
    buf_puts(&out, "\r\n");
    raw_buf(&r, &out);
    raw_want(&r, "-ERR APPENDS record line too long");
    raw_closed(&r);
    close(r.fd);
    /* A truncated body, then the client goes away: the first, complete
     * record is not stored either. */
    raw_open(&r, e->sv->ep[0]);
    raw_expect(&r, "HELLO TSYNC/1", "+OK");
    buf_printf(&out, "APPENDS %s 2\r\n", u);
    rec(&out, w, 40, "forty", "forty");
    buf_printf(&out, "%s 41 %s 0 0 100 %s -\r\nonly a part", w, g, sha);
    raw_buf(&r, &out);
    shutdown(r.fd, SHUT_WR);
    raw_closed(&r);
    close(r.fd);
    buf_free(&out);

    /* What is stored: UIDs 1 and 3, nothing else. */
    struct sync *s = e->s;
    struct store_mailbox mb = get_mb(s, U1);
    assert_int_equal(mb.messages, 2);
    assert_int_equal(mb.bytes, 3);
    struct col *c;
    changes(s, U1, 0, &c);
    assert_int_equal(c->nm, 2);
    assert_int_equal(c->m[0].uid, 1);
    assert_int_equal(c->m[1].uid, 3);
    free(c);
    fetch_eq(s, U1, "Work", 1, "one", 3);
    fetch_eq(s, U1, "Work", 3, "", 0);
}

/* A store from before delivery ids in APPENDS, as far as the client sees
 * it: HELLO, then "-ERR wrong number of fields in an APPENDS record" for
 * the first record line with the field, and the connection closed. It
 * keeps what it read. */
struct old_store {
    int lfd;
    int port;
    pthread_t th;
    char got[4096];
    size_t len;
};

static bool old_line(int fd, struct old_store *o, const char *what)
{
    while (strstr(o->got, what) == NULL) {
        if (o->len + 1 >= sizeof(o->got))
            return false;
        ssize_t k = read(fd, o->got + o->len, sizeof(o->got) - 1 - o->len);
        if (k <= 0)
            return false;
        o->len += (size_t)k;
        o->got[o->len] = '\0';
    }
    return true;
}

static void *old_store_run(void *arg)
{
    struct old_store *o = arg;
    int fd = accept(o->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    if (old_line(fd, o, "HELLO TSYNC/1\r\n")) {
        (void)!write(fd, "+OK TSYNC/1 s9\r\n", 16);
        /* The probe: a head line, one record line and its empty body. */
        if (old_line(fd, o, " tern.probe\r\n\r\n")) {
            static const char e[] = "-ERR wrong number of fields in an APPENDS record\r\n";
            (void)!write(fd, e, sizeof(e) - 1);
        }
    }
    close(fd);
    return NULL;
}

static void test_tcp_old_store_ids(void **state)
{
    (void)state;
    struct old_store o;
    memset(&o, 0, sizeof(o));
    o.lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(o.lfd >= 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(o.lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t al = sizeof(a);
    assert_int_equal(getsockname(o.lfd, (struct sockaddr *)&a, &al), 0);
    assert_int_equal(listen(o.lfd, 1), 0);
    assert_int_equal(pthread_create(&o.th, NULL, old_store_run, &o), 0);
    char ep[64];
    snprintf(ep, sizeof(ep), "127.0.0.1:%u", ntohs(a.sin_port));
    struct sync *s = tcp_connect(ep);
    struct batch *b = xcalloc(1, sizeof(*b));
    batch_add(b, "Work", 1);
    batch_add(b, "Work", 2);
    str_copy(b->m[1].delivery_id, "imp1.x", sizeof(b->m[1].delivery_id));
    struct sync_append_res res[2];
    OK(s->ops->append_batch(s, U1, b->mp, b->data, b->len, b->n, b->rc, b->why, res));
    for (size_t i = 0; i < 2; i++) {
        why = b->why[i];
        assert_no(b->rc[i], "unsupported", "an old store");
        assert_false(res[i].duplicate);
    }
    /* Only the probe travelled, not the batch. */
    assert_non_null(strstr(o.got, " 0 00000000000000000000000000000000 0 0 0 "));
    assert_null(strstr(o.got, " 1 00112233"));
    /* Known now: a batch with ids is answered at once; the connection is
     * gone, so one without fails. */
    assert_int_equal(s->ops->append_batch(s, U1, b->mp, b->data, b->len, b->n, b->rc, b->why, res),
                     0);
    why = b->why[0];
    assert_no(b->rc[0], "unsupported", "still an old store");
    b->m[1].delivery_id[0] = '\0';
    assert_int_equal(batch_run(s, U1, b), -1);
    sync_close(&s);
    pthread_join(o.th, NULL);
    close(o.lfd);
    free(b);
}

/* The client side: connecting nowhere, refusing bad arguments locally,
 * and a broken connection staying broken. */
static void test_tcp_client(void **state)
{
    struct env *e = *state;
    if (!e->tcp)
        skip();
    char err[256];
    char ep[32];
    snprintf(ep, sizeof(ep), "127.0.0.1:%d", free_port());
    assert_null(sync_tcp_connect(ep, 1000, err, sizeof(err)));
    assert_non_null(strstr(err, "connect"));
    assert_null(sync_tcp_connect("nonsense", 1000, err, sizeof(err)));
    assert_null(sync_tcp_connect(e->sv->ep[0], 0, err, sizeof(err)));

    struct sync *s = e->s;
    char longname[STORE_FOLDER_MAX + 10];
    memset(longname, 'x', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    NO(s->ops->folder_ensure(s, U1, longname, 5, 1, &why), "invalid");
    NO(s->ops->mailbox_state(s, U1, STORE_MBOX_ACTIVE, 99, 1, NULL, &why), "invalid");
    struct sync_delivery d = {.id = "q\x01", .folder = "INBOX", .uid = 1};
    NO(s->ops->delivery_add(s, U1, &d, &why), "invalid");
    OK(s->ops->mailbox_create(s, U1, STORE_MBOX_ACTIVE, 1, 0, &why));
    get_mb(s, U1);
}

/* ---- the parser on its own ---- */

static void test_parse(void **state)
{
    (void)state;
    struct syncd_cmd c;
    const char *err = NULL;
    /* WAIT <user> <since> <timeout-ms>: every limit and error. */
    static const struct {
        const char *line;
        int r;
        const char *err;
    } waits[] = {
        {"WAIT 61 7 300000", 0, NULL},
        {"WAIT 61 18446744073709551615 0", 0, NULL},
        {"WAIT 61 7 300001", -1, "bad timeout (0 to 300000 ms)"},
        {"WAIT 61 7 -1", -1, "bad timeout (0 to 300000 ms)"},
        {"WAIT 61 18446744073709551616 5", -1, "bad number"},
        {"WAIT 61 x 5", -1, "bad number"},
        {"WAIT 6 7 5", -1, "bad user (hex or -)"},
        {"WAIT 61 7", -1, "wrong number of arguments"},
        {"WAIT 61 7 5 5", -1, "wrong number of arguments"},
        {"NOOP x", -1, "wrong number of arguments"},
        {"NOOP", 0, NULL},
        {"HEADER 61 494e424f58 4294967295", 0, NULL},
        {"HEADER 61 494e424f58 4294967296", -1, "bad number"},
        {"HEADER 61 494e424f5 1", -1, "bad folder name (hex)"},
        {"HEADER 61 494e424f58", -1, "wrong number of arguments"},
        {"HEADER 61 494e424f58 1 2", -1, "wrong number of arguments"},
        {"EXPUNGES 61 494e424f58 1:3,5", 0, NULL},
        {"EXPUNGES 61 494e424f58 -", 0, NULL},
        {"EXPUNGES 61 494e424f58 3,1", -1, "UID set not ascending"},
        {"EXPUNGES 61 494e424f58 1:501", -1, "UID set too large"},
        {"EXPUNGES 61 494e424f58 0", -1, "bad UID set"},
        {"EXPUNGES 61 zz 1", -1, "bad folder name (hex)"},
        {"EXPUNGES 61 494e424f58", -1, "wrong number of arguments"},
        {"COPIES 61 494e424f58 576f726b 1:500", 0, NULL},
        {"COPIES 61 494e424f58 576f726b 1:2:3", -1, "bad UID set"},
        {"COPIES 61 494e424f58 576f7 1", -1, "bad folder name (hex)"},
        {"COPIES 61 494e424f58 576f726b", -1, "wrong number of arguments"},
        {"COPIES 61 494e424f58 576f726b 1 2", -1, "wrong number of arguments"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(waits); i++) {
        int r = syncd_parse_line(waits[i].line, strlen(waits[i].line), &c, &err);
        if (r != waits[i].r || (r != 0 && strcmp(err, waits[i].err) != 0))
            fail_msg("%s: %d %s", waits[i].line, r, r != 0 ? err : "");
    }
    static const char w1[] = "WAIT 61 7 300000";
    assert_int_equal(syncd_parse_line(w1, strlen(w1), &c, &err), 0);
    assert_int_equal(c.verb, SYNCD_WAIT);
    assert_string_equal(c.user, "a");
    assert_int_equal(c.num, 7);
    assert_int_equal(c.wait_ms, 300000);
    char longu[2 * 256 + 32] = "WAIT ";
    for (int i = 0; i < 255; i++)
        strcat(longu, "61");
    strcat(longu, " 1 1");
    assert_int_equal(syncd_parse_line(longu, strlen(longu), &c, &err), SYNC_NO);
    assert_string_equal(err, "invalid");
    static const char ok1[] = "STATE 61 fenced moved 7 s2";
    assert_int_equal(syncd_parse_line(ok1, strlen(ok1), &c, &err), 0);
    assert_int_equal(c.verb, SYNCD_STATE);
    assert_string_equal(c.user, "a");
    assert_int_equal(c.expect, STORE_MBOX_FENCED);
    assert_int_equal(c.state, STORE_MBOX_MOVED);
    assert_int_equal(c.num, 7);
    assert_string_equal(c.moved_to, "s2");
    static const char ok2[] = "FLAGS 61 494e424f58 4294967295 31 -";
    assert_int_equal(syncd_parse_line(ok2, strlen(ok2), &c, &err), 0);
    assert_string_equal(c.folder, "INBOX");
    assert_int_equal(c.uid, UINT32_MAX);
    assert_int_equal(c.flags, 31);
    assert_string_equal(c.keywords, "");
    static const char bad1[] = "FLAGS 61 494e424f58 4294967296 31 -";
    assert_int_equal(syncd_parse_line(bad1, strlen(bad1), &c, &err), -1);
    assert_string_equal(err, "bad number");
    static const char nul[] = "MBOX 61\0 62";
    assert_int_equal(syncd_parse_line(nul, sizeof(nul) - 1, &c, &err), -1);
    static const char del[] = "DELIVERY 61 q1.1 3 -";
    assert_int_equal(syncd_parse_line(del, strlen(del), &c, &err), 0);
    assert_string_equal(c.id, "q1.1");
    static const char app[] = "APPEND 61 zz 1 00 0 0 12 00 -";
    assert_int_equal(syncd_parse_line(app, strlen(app), &c, &err), -1);
    assert_true(c.has_body);
    assert_int_equal(c.body_len, 12);
    static const char cr3[] = "CREATE 61 staged 7";
    assert_int_equal(syncd_parse_line(cr3, strlen(cr3), &c, &err), 0);
    assert_int_equal(c.verb, SYNCD_CREATE);
    assert_int_equal(c.state, STORE_MBOX_STAGED);
    assert_int_equal(c.num, 7);
    assert_int_equal(c.uidvalidity, 0);
    static const char cr4[] = "CREATE 61 active 8 4294967295";
    assert_int_equal(syncd_parse_line(cr4, strlen(cr4), &c, &err), 0);
    assert_int_equal(c.state, STORE_MBOX_ACTIVE);
    assert_int_equal(c.num, 8);
    assert_int_equal(c.uidvalidity, UINT32_MAX);
    static const char cr5[] = "CREATE 61 active 8 1 2";
    assert_int_equal(syncd_parse_line(cr5, strlen(cr5), &c, &err), -1);
    assert_string_equal(err, "wrong number of arguments");
    static const char cr6[] = "CREATE 61 active 8 -1";
    assert_int_equal(syncd_parse_line(cr6, strlen(cr6), &c, &err), -1);
    assert_string_equal(err, "bad number");
    assert_int_equal(syncd_parse_line("QUIT", 4, &c, &err), 0);
    assert_int_equal(c.verb, SYNCD_QUIT);

    /* APPENDS and its records. */
    assert_int_equal(syncd_parse_line("APPENDS 61 256", 14, &c, &err), 0);
    assert_int_equal(c.verb, SYNCD_APPENDS);
    assert_true(c.has_count);
    assert_false(c.has_body);
    assert_int_equal(c.num, 256);
    assert_int_equal(syncd_parse_line("APPENDS 61 257", 14, &c, &err), -1);
    assert_false(c.has_count);
    assert_int_equal(syncd_parse_line("APPENDS zz 3", 12, &c, &err), -1);
    assert_true(c.has_count);
    assert_string_equal(err, "bad user (hex or -)");
    static const char r1[] =
        "576f726b 42 00112233445566778899aabbccddeeff 1 -5 7 "
        "8d5fa4d2ff2b3f5fdcd4bd3a8b1b9e6bfa7ab0a3c2d2e0c1d9e7a4c6d7e1f2a3 24466f6f";
    assert_int_equal(syncd_parse_record(r1, strlen(r1), &c, &err), 0);
    assert_int_equal(c.verb, SYNCD_APPEND);
    assert_string_equal(c.folder, "Work");
    assert_string_equal(c.user, "");
    assert_int_equal(c.uid, 42);
    assert_int_equal(c.flags, 1);
    assert_int_equal(c.date, -5);
    assert_true(c.has_body);
    assert_int_equal(c.body_len, 7);
    assert_string_equal(c.keywords, "$Foo");
    static const char r2[] = "576f726b 42 0011 1 -5 7 00 -";
    assert_int_equal(syncd_parse_record(r2, strlen(r2), &c, &err), -1);
    assert_true(c.has_body);
    assert_string_equal(err, "bad GUID");
    static const char r3[] = "576f726b 42 0011 1 -5 7 00";
    assert_int_equal(syncd_parse_record(r3, strlen(r3), &c, &err), -1);
    assert_false(c.has_body);
    assert_int_equal(syncd_parse_record("", 0, &c, &err), -1);
    assert_false(c.has_body);

    /* The optional trailing modseq of a change: absent 0; 1..2^63-1. */
    assert_int_equal(syncd_parse_line(ok2, strlen(ok2), &c, &err), 0);
    assert_int_equal(c.modseq, 0);
    static const char *const with[] = {
        "FLAGS 61 494e424f58 7 31 - 9223372036854775807",
        "EXPUNGE 61 494e424f58 7 9223372036854775807",
        "FOLDER 61 5 6 576f726b 9223372036854775807",
        "FDELETE 61 5 9223372036854775807",
        ("APPEND 61 576f726b 42 00112233445566778899aabbccddeeff 1 -5 7 "
         "8d5fa4d2ff2b3f5fdcd4bd3a8b1b9e6bfa7ab0a3c2d2e0c1d9e7a4c6d7e1f2a3 - 9223372036854775807"),
    };
    for (size_t i = 0; i < ARRAY_SIZE(with); i++) {
        assert_int_equal(syncd_parse_line(with[i], strlen(with[i]), &c, &err), 0);
        assert_int_equal(c.modseq, (uint64_t)INT64_MAX);
    }
    static const char r4[] =
        "576f726b 42 00112233445566778899aabbccddeeff 1 -5 7 "
        "8d5fa4d2ff2b3f5fdcd4bd3a8b1b9e6bfa7ab0a3c2d2e0c1d9e7a4c6d7e1f2a3 24466f6f 17";
    assert_int_equal(syncd_parse_record(r4, strlen(r4), &c, &err), 0);
    assert_int_equal(c.modseq, 17);
    assert_string_equal(c.keywords, "$Foo");
    static const char *const badms[] = {
        "FLAGS 61 494e424f58 7 31 - 0",      "FLAGS 61 494e424f58 7 31 - 9223372036854775808",
        "EXPUNGE 61 494e424f58 7 x1",        "FOLDER 61 5 6 576f726b -3",
        "FDELETE 61 5 18446744073709551616",
    };
    for (size_t i = 0; i < ARRAY_SIZE(badms); i++) {
        assert_int_equal(syncd_parse_line(badms[i], strlen(badms[i]), &c, &err), -1);
        assert_string_equal(err, "bad modseq (a number from 1 to 2^63-1)");
    }
    static const char r5[] = "576f726b 42 00112233445566778899aabbccddeeff 1 -5 7 "
                             "8d5fa4d2ff2b3f5fdcd4bd3a8b1b9e6bfa7ab0a3c2d2e0c1d9e7a4c6d7e1f2a3 - 0";
    assert_int_equal(syncd_parse_record(r5, strlen(r5), &c, &err), -1);
    assert_true(c.has_body); /* the body can still be skipped */
    assert_string_equal(err, "bad modseq (a number from 1 to 2^63-1)");
    static const char r6[] =
        "576f726b 42 00112233445566778899aabbccddeeff 1 -5 7 "
        "8d5fa4d2ff2b3f5fdcd4bd3a8b1b9e6bfa7ab0a3c2d2e0c1d9e7a4c6d7e1f2a3 - 1 2 3";
    assert_int_equal(syncd_parse_record(r6, strlen(r6), &c, &err), -1);
    assert_false(c.has_body);
    assert_string_equal(err, "wrong number of fields in an APPENDS record");

    /* The optional delivery id after the modseq ("-": none): absent "". */
    assert_int_equal(syncd_parse_record(r4, strlen(r4), &c, &err), 0);
    assert_string_equal(c.id, "");
    static const struct {
        const char *name, *tail; /* after the keywords */
        int r;
        const char *err_or_id;
        uint64_t modseq;
    } ids[] = {
        {"id, no modseq", "- imp1.abc.def.c7", 0, "imp1.abc.def.c7", 0},
        {"id and modseq", "9 q-1", 0, "q-1", 9},
        {"modseq dash alone", "-", 0, "", 0},
        {"id of 64 octets", "- 0123456789012345678901234567890123456789012345678901234567890123", 0,
         "0123456789012345678901234567890123456789012345678901234567890123", 0},
        {"id of 65 octets", "- 01234567890123456789012345678901234567890123456789012345678901234",
         SYNC_NO, "invalid", 0},
        {"id with DEL", "- a\x7f", -1, "bad delivery id", 0},
        {"id with a control octet", "- a\x01b", -1, "bad delivery id", 0},
        {"id with 8-bit octets", "- caf\xc3\xa9", -1, "bad delivery id", 0},
        {"id with a bad modseq", "0 q1", -1, "bad modseq (a number from 1 to 2^63-1)", 0},
        {"an empty id (double space)", "- ", -1,
         "empty argument (leading, trailing or double space)", 0},
    };
    for (size_t i = 0; i < ARRAY_SIZE(ids); i++) {
        char line[512];
        snprintf(line, sizeof(line),
                 "576f726b 42 00112233445566778899aabbccddeeff 1 -5 7 "
                 "8d5fa4d2ff2b3f5fdcd4bd3a8b1b9e6bfa7ab0a3c2d2e0c1d9e7a4c6d7e1f2a3 - %s",
                 ids[i].tail);
        err = NULL;
        int got = syncd_parse_record(line, strlen(line), &c, &err);
        if (got != ids[i].r)
            fail_msg("%s: %d, expected %d (%s)", ids[i].name, got, ids[i].r, err ? err : "");
        if (got == 0) {
            assert_string_equal(c.id, ids[i].err_or_id);
            assert_int_equal(c.modseq, ids[i].modseq);
        } else {
            assert_string_equal(err, ids[i].err_or_id);
        }
        /* Whatever the id, the body can be skipped (the framing holds),
         * except where the line cannot be split at all. */
        assert_int_equal(c.has_body, got == 0 || strchr(ids[i].tail, ' ') == NULL ||
                                         strcmp(ids[i].tail, "- ") != 0);
    }
    /* APPEND (one message) takes no delivery id. */
    static const char a8[] =
        "APPEND 61 576f726b 42 00112233445566778899aabbccddeeff 1 -5 7 "
        "8d5fa4d2ff2b3f5fdcd4bd3a8b1b9e6bfa7ab0a3c2d2e0c1d9e7a4c6d7e1f2a3 - - q1";
    assert_int_equal(syncd_parse_line(a8, strlen(a8), &c, &err), -1);
    assert_string_equal(err, "wrong number of arguments");
    static const char f7[] = "FLAGS 61 494e424f58 7 31 - 5 6";
    assert_int_equal(syncd_parse_line(f7, strlen(f7), &c, &err), -1);
    assert_string_equal(err, "wrong number of arguments");
}

/* The mover's explicit modseqs through both transports (over TCP: the
 * optional trailing field of APPEND, APPENDS, FLAGS, EXPUNGE, FOLDER and
 * FDELETE): each row exactly as given, the counter the max, CHANGES exact. */
static void test_explicit_modseq(void **state)
{
    struct env *e = *state;
    struct sync *s = e->s;
    OK(s->ops->mailbox_create(s, U1, STORE_MBOX_STAGED, 2, 0, &why));
    OK(s->ops->modseq_raise(s, U1, 500, &why));
    assert_int_equal(get_mb(s, U1).modseq, 500);
    OK(s->ops->folder_ensure_at(s, U1, "Work", 77, 10, 300, &why));
    /* One append, then a batch of two, with modseqs below the counter. */
    struct sync_msg m = mkmsg("INBOX", 1, "one\r\n", 5);
    m.modseq = 120;
    OK(s->ops->append(s, U1, &m, "one\r\n", 5, &why));
    struct sync_msg b1 = mkmsg("Work", 3, "two\r\n", 5), b2 = mkmsg("Work", 4, "three\r\n", 7);
    b1.modseq = 250;
    b2.modseq = 90;
    const struct sync_msg *ms[2] = {&b1, &b2};
    const void *data[2] = {"two\r\n", "three\r\n"};
    size_t lens[2] = {5, 7};
    int rcs[2];
    const char *whys[2];
    OK(s->ops->append_batch(s, U1, ms, data, lens, 2, rcs, whys, NULL));
    assert_int_equal(rcs[0], 0);
    assert_int_equal(rcs[1], 0);
    OK(s->ops->flags_at(s, U1, "Work", 3, STORE_F_FLAGGED, "$x", 260, &why));
    OK(s->ops->expunge_at(s, U1, "Work", 4, 95, &why));
    OK(s->ops->expunge_at(s, U1, "Work", 4, 97, &why)); /* the tombstone re-stamped */
    OK(s->ops->folder_ensure_at(s, U1, "Old", 88, 1, 310, &why));
    OK(s->ops->folder_delete_at(s, U1, 88, 320, &why));
    assert_int_equal(get_mb(s, U1).modseq, 500);
    struct col *c;
    assert_int_equal(changes(s, U1, 96, &c), 500);
    assert_int_equal(c->nf, 2); /* Work (300), Old deleted (320) */
    assert_int_equal(c->f[0].modseq, 300);
    assert_int_equal(c->f[0].uidnext, 10);
    assert_int_equal(c->f[1].modseq, 320);
    assert_true(c->f[1].deleted);
    assert_int_equal(c->nm, 3); /* 4 (97), 1 (120), 3 (260) */
    assert_int_equal(c->m[0].uid, 4);
    assert_int_equal(c->m[0].modseq, 97);
    assert_true(c->m[0].expunged);
    assert_int_equal(c->m[1].uid, 1);
    assert_int_equal(c->m[1].modseq, 120);
    assert_int_equal(c->m[2].uid, 3);
    assert_int_equal(c->m[2].modseq, 260);
    assert_int_equal(c->m[2].flags, STORE_F_FLAGGED);
    assert_string_equal(c->m[2].keywords, "$x");
    free(c);
    /* A tombstone of a message never held here (TOMB over the wire). */
    struct sync_msg tm = mkmsg("Work", 7, "gone\r\n", 6);
    tm.flags = STORE_F_DELETED;
    str_copy(tm.keywords, "$k", sizeof(tm.keywords));
    tm.modseq = 111;
    tm.expunged = true;
    OK(s->ops->tombstone(s, U1, &tm, &why));
    tm.modseq = 112;
    OK(s->ops->tombstone(s, U1, &tm, &why)); /* again: re-stamped */
    str_copy(tm.folder, "Nope", sizeof(tm.folder));
    OK(s->ops->tombstone(s, U1, &tm, &why)); /* no such folder: as expunge */
    str_copy(tm.folder, "Work", sizeof(tm.folder));
    assert_int_equal(changes(s, U1, 111, &c), 500);
    assert_int_equal(c->nm, 3);
    assert_int_equal(c->m[0].uid, 7);
    assert_int_equal(c->m[0].modseq, 112);
    assert_true(c->m[0].expunged);
    assert_int_equal(c->m[0].size, 6);
    assert_int_equal(c->m[0].flags, STORE_F_DELETED);
    assert_string_equal(c->m[0].keywords, "$k");
    assert_memory_equal(c->m[0].sha256, tm.sha256, SHA256_LEN);
    free(c);
    tm.modseq = 0;
    NO(s->ops->tombstone(s, U1, &tm, &why), "invalid");
    /* Above the counter: it follows. */
    OK(s->ops->flags_at(s, U1, "INBOX", 1, 0, "", 900, &why));
    assert_int_equal(get_mb(s, U1).modseq, 900);
    /* Beyond 2^63 - 1: refused, on either side of the wire. */
    const uint64_t big = (uint64_t)INT64_MAX + 1;
    NO(s->ops->flags_at(s, U1, "INBOX", 1, 0, "", big, &why), "invalid");
    NO(s->ops->expunge_at(s, U1, "INBOX", 1, big, &why), "invalid");
    NO(s->ops->folder_ensure_at(s, U1, "Work", 77, 10, big, &why), "invalid");
    NO(s->ops->folder_delete_at(s, U1, 77, big, &why), "invalid");
    m.modseq = big;
    m.uid = 2;
    NO(s->ops->append(s, U1, &m, "one\r\n", 5, &why), "invalid");
    /* Not into a live mailbox: nothing changes. */
    OK(s->ops->mailbox_state(s, U1, STORE_MBOX_STAGED, STORE_MBOX_ACTIVE, 2, NULL, &why));
    NO(s->ops->flags_at(s, U1, "INBOX", 1, 0, "", 5, &why), "notlive");
    NO(s->ops->expunge_at(s, U1, "INBOX", 1, 5, &why), "notlive");
    NO(s->ops->folder_ensure_at(s, U1, "New", 99, 1, 5, &why), "notlive");
    NO(s->ops->folder_delete_at(s, U1, 77, 5, &why), "notlive");
    tm.modseq = 5;
    tm.uid = 8;
    NO(s->ops->tombstone(s, U1, &tm, &why), "notlive");
    m.modseq = 5;
    NO(s->ops->append(s, U1, &m, "one\r\n", 5, &why), "notlive");
    assert_int_equal(get_mb(s, U1).modseq, 900);
    /* A plain change (modseq 0) still works and goes above. */
    OK(s->ops->flags_at(s, U1, "INBOX", 1, STORE_F_SEEN, "", 0, &why));
    assert_int_equal(get_mb(s, U1).modseq, 901);
    if (!e->tcp)
        return;
    /* On the wire: a bad modseq is a malformed command; nothing changes. */
    struct raw r;
    char u[2 * sizeof(U1)], cmd[256];
    hexs(U1, u);
    raw_open(&r, e->sv->ep[0]);
    raw_expect(&r, "HELLO TSYNC/1", "+OK TSYNC/1 s1");
    snprintf(cmd, sizeof(cmd), "EXPUNGE %s 494e424f58 1 0", u);
    raw_expect(&r, cmd, "-ERR bad modseq");
    snprintf(cmd, sizeof(cmd), "EXPUNGE %s 494e424f58 1 9223372036854775808", u);
    raw_expect(&r, cmd, "-ERR bad modseq");
    snprintf(cmd, sizeof(cmd), "FDELETE %s 77 seven", u);
    raw_expect(&r, cmd, "-ERR bad modseq");
    snprintf(cmd, sizeof(cmd), "FLAGS %s 494e424f58 1 0 - 5", u);
    raw_expect(&r, cmd, "-NO notlive");
    char sha[2 * SHA256_LEN + 1];
    memset(sha, 'a', 2 * SHA256_LEN);
    sha[2 * SHA256_LEN] = '\0';
    snprintf(cmd, sizeof(cmd), "TOMB %s 494e424f58 9 00112233445566778899aabbccddeeff 0 0 5 %s - 0",
             u, sha);
    raw_expect(&r, cmd, "-ERR bad modseq");
    snprintf(cmd, sizeof(cmd), "TOMB %s 494e424f58 9 0011 0 0 5 %s - 4", u, sha);
    raw_expect(&r, cmd, "-ERR bad GUID");
    snprintf(cmd, sizeof(cmd), "TOMB %s 494e424f58 9 00112233445566778899aabbccddeeff 0 0 5 %s -",
             u, sha);
    raw_expect(&r, cmd, "-ERR wrong number");
    snprintf(cmd, sizeof(cmd), "TOMB %s 494e424f58 9 00112233445566778899aabbccddeeff 0 0 5 %s - 4",
             u, sha);
    raw_expect(&r, cmd, "-NO notlive");
    close(r.fd);
    assert_int_equal(get_mb(s, U1).modseq, 901);
}

/* ---- delivery ids in batches and ranges ---- */

struct ids {
    size_t n;
    char id[8][STORE_DELIVERY_ID_MAX + 1];
    int stop_at;
};

static int ids_cb(void *ctx, const struct sync_delivery *d)
{
    struct ids *c = ctx;
    if (c->n < 8)
        str_copy(c->id[c->n], d->id, sizeof(c->id[0]));
    c->n++;
    return c->stop_at != 0 && (int)c->n == c->stop_at;
}

static struct ids ids_of(struct sync *s, const char *user, uint64_t since, uint64_t upto)
{
    struct ids c;
    memset(&c, 0, sizeof(c));
    OK(s->ops->deliveries_each(s, user, since, upto, ids_cb, &c, &why));
    return c;
}

static void test_deliveries_batch(void **state)
{
    struct env *e = *state;
    struct sync *s = e->s, *s2 = e->s2;
    struct ids c;
    NO(s->ops->deliveries_each(s, U1, 0, UINT64_MAX, ids_cb, &c, &why), "notfound");
    OK(s->ops->mailbox_create(s, U1, STORE_MBOX_STAGED, 1, 0, &why));
    OK(s->ops->folder_ensure(s, U1, "Work", 1000, 1, &why));
    OK(append(s, U1, "Work", 3, "three\r\n"));
    OK(append(s, U1, "INBOX", 4, "four\r\n"));
    uint64_t ms0 = get_mb(s, U1).modseq;
    const struct sync_delivery ds[] = {
        {.id = "q2.1", .folder = "Work", .uid = 3},  {.id = "q1.1", .folder = "INBOX", .uid = 4},
        {.id = "q2.1", .folder = "Work", .uid = 3},  {.id = "a b", .folder = "Work", .uid = 3},
        {.id = "q3.1", .folder = "Work", .uid = 99},
    };
    int rcs[5];
    const char *whys[5];
    OK(s->ops->delivery_add_batch(s, U1, ds, 5, rcs, whys));
    assert_int_equal(rcs[0], 0);
    assert_int_equal(rcs[1], 0);
    assert_int_equal(rcs[2], SYNC_NO);
    assert_string_equal(whys[2], "exists");
    assert_int_equal(rcs[3], SYNC_NO);
    assert_string_equal(whys[3], "invalid");
    assert_int_equal(rcs[4], 0);
    OK(s->ops->delivery_add_batch(s, U1, ds, 0, rcs, whys));
    assert_int_equal(s->ops->delivery_add_batch(s, U1, ds, SYNC_BATCH_MAX + 1, rcs, whys), -1);
    OK(s->ops->delivery_add_batch(s, U2, ds, 2, rcs, whys));
    assert_int_equal(rcs[0], SYNC_NO);
    assert_string_equal(whys[0], "notfound");

    /* Every id, in order; or by the modseq of their message: q3.1 has none
     * here and is always listed. */
    c = ids_of(s, U1, 0, UINT64_MAX);
    assert_int_equal(c.n, 3);
    assert_string_equal(c.id[0], "q1.1");
    assert_string_equal(c.id[1], "q2.1");
    assert_string_equal(c.id[2], "q3.1");
    c = ids_of(s, U1, ms0, UINT64_MAX);
    assert_int_equal(c.n, 1);
    assert_string_equal(c.id[0], "q3.1");
    OK(s->ops->flags(s, U1, "Work", 3, STORE_F_SEEN, NULL, &why));
    c = ids_of(s, U1, ms0, UINT64_MAX);
    assert_int_equal(c.n, 2);
    assert_string_equal(c.id[0], "q2.1");
    c = ids_of(s, U1, 0, ms0);
    assert_int_equal(c.n, 2);
    assert_string_equal(c.id[0], "q1.1");
    assert_string_equal(c.id[1], "q3.1");

    /* In steps of one id (what syncd streams), resumed after the last. */
    if (!e->tcp) {
        struct sync_deliveries_cursor cur;
        memset(&c, 0, sizeof(c));
        OK(sync_local_deliveries_begin(s, U1, 0, UINT64_MAX, &cur, &why));
        size_t steps = 0;
        while (!cur.done) {
            OK(sync_local_deliveries_step(s, U1, &cur, 1, ids_cb, &c, &why));
            steps++;
        }
        assert_int_equal(c.n, 3);
        assert_int_equal(steps, 3); /* the last one ran out of ids: done */
        assert_string_equal(c.id[2], "q3.1");
        NO(sync_local_deliveries_begin(s, U2, 0, UINT64_MAX, &cur, &why), "notfound");
    }

    /* A callback that stops the listing: -1 (over TCP the connection is
     * then unusable). */
    memset(&c, 0, sizeof(c));
    c.stop_at = 1;
    assert_int_equal(s->ops->deliveries_each(s, U1, 0, UINT64_MAX, ids_cb, &c, &why), -1);
    assert_int_equal(c.n, 1);
    if (e->tcp) {
        reconnect(e);
        s = e->s;
    }

    /* The copy a move makes, in one batch: the same ids on the other side. */
    OK(s2->ops->mailbox_create(s2, U1, STORE_MBOX_STAGED, 2, 0, &why));
    OK(s2->ops->folder_ensure(s2, U1, "Work", 1000, 1, &why));
    OK(append(s2, U1, "Work", 3, "three\r\n"));
    OK(append(s2, U1, "INBOX", 4, "four\r\n"));
    struct sync_delivery *l;
    size_t n;
    OK(s->ops->deliveries(s, U1, &l, &n, &why));
    assert_int_equal(n, 3);
    OK(s2->ops->delivery_add_batch(s2, U1, l, n, rcs, whys));
    for (size_t i = 0; i < n; i++)
        assert_int_equal(rcs[i], 0);
    struct ids c2 = ids_of(s2, U1, 0, UINT64_MAX);
    assert_int_equal(c2.n, 3);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(c2.id[i], l[i].id);
    free(l);
    OK(s2->ops->mailbox_state(s2, U1, STORE_MBOX_STAGED, STORE_MBOX_FENCED, 2, NULL, &why));
    const struct sync_delivery late = {.id = "q9.1", .folder = "Work", .uid = 3};
    OK(s2->ops->delivery_add_batch(s2, U1, &late, 1, rcs, whys));
    assert_int_equal(rcs[0], SYNC_NO);
    assert_string_equal(whys[0], "notlive");
}

/* DELIVERED's framing: a malformed record refuses the batch (usable); a
 * count over the limit loses the framing (closed). */
static void test_tcp_delivered(void **state)
{
    struct env *e = *state;
    if (!e->tcp)
        skip();
    char u[2 * sizeof(U1)], cmd[512], line[1024];
    hexs(U1, u);
    OK(e->s->ops->mailbox_create(e->s, U1, STORE_MBOX_ACTIVE, 1, 0, &why));
    struct raw r;
    raw_open(&r, e->sv->ep[0]);
    raw_expect(&r, "HELLO TSYNC/1", "+OK TSYNC/1 s1");
    snprintf(cmd, sizeof(cmd), "DELIVERED %s 2\r\nq1 4 494e424f58\r\nq2 x 494e424f58", u);
    raw_expect(&r, cmd, "-ERR bad number");
    snprintf(cmd, sizeof(cmd), "DELIVERED %s 2\r\nq1 4 494e424f58\r\nq2 4", u);
    raw_expect(&r, cmd, "-ERR wrong number of fields");
    snprintf(cmd, sizeof(cmd), "DELIVERIES %s", u);
    raw_expect(&r, cmd, "+OK"); /* nothing was recorded */
    snprintf(cmd, sizeof(cmd), "DELIVERED %s 2\r\nq1 4 494e424f58\r\nq1 5 494e424f58", u);
    raw_expect(&r, cmd, "+OK");
    raw_want(&r, "-NO exists");
    raw_want(&r, "+OK 2");
    snprintf(cmd, sizeof(cmd), "DELIVERIES %s 0 18446744073709551615", u);
    raw_expect(&r, cmd, "I q1 4 494e424f58");
    raw_want(&r, "+OK");
    snprintf(cmd, sizeof(cmd), "DELIVERIES %s 1 2 3", u);
    raw_expect(&r, cmd, "-ERR wrong number");
    snprintf(cmd, sizeof(cmd), "DELIVERED %s 0", u);
    raw_expect(&r, cmd, "+OK 0");
    snprintf(cmd, sizeof(cmd), "DELIVERED %s 257", u);
    raw_expect(&r, cmd, "-ERR bad DELIVERED count");
    raw_closed(&r);
    (void)line;
}

/* ---- listings in steps, streaming and backpressure ---- */

struct steps {
    size_t nf, nm, steps;
    struct sync_folder f[64];
    struct sync_msg m[64];
    size_t step_of_m[64]; /* which step listed message i */
};

static int steps_folder(void *ctx, const struct sync_folder *f)
{
    struct steps *c = ctx;
    assert_true(c->nf < 64);
    c->f[c->nf++] = *f;
    return 0;
}

static int steps_msg(void *ctx, const struct sync_msg *m)
{
    struct steps *c = ctx;
    assert_true(c->nm < 64);
    c->step_of_m[c->nm] = c->steps;
    c->m[c->nm++] = *m;
    return 0;
}

/* Steps a listing of at least `max` records to its end (or `stop_after`
 * steps); returns the cursor. */
static struct sync_changes_cursor run_steps(struct sync *s, uint64_t since, size_t max,
                                            struct steps *c, size_t stop_after)
{
    struct sync_changes_cursor cur;
    struct sync_changes_cb cb = {.folder = steps_folder, .msg = steps_msg, .ctx = c};
    OK(sync_local_changes_begin(s, U1, since, &cur, &why));
    while (!cur.done && (stop_after == 0 || c->steps < stop_after)) {
        size_t before = c->nf + c->nm;
        OK(sync_local_changes_step(s, U1, &cur, max, &cb, &why));
        c->steps++;
        /* A step lists at least max records unless the listing ended or
         * the folder records just ran out. */
        if (!cur.done && c->nf + c->nm - before < max)
            assert_true(cur.msgs);
    }
    return cur;
}

static void test_changes_steps(void **state)
{
    struct env *e = *state;
    if (e->tcp)
        skip();
    struct sync *s = e->s;
    struct store *st = e->st[0];
    struct sync_changes_cursor cur;
    NO(sync_local_changes_begin(s, U1, 0, &cur, &why), "notfound");
    OK(s->ops->mailbox_create(s, U1, STORE_MBOX_ACTIVE, 1, 0, &why));
    OK(s->ops->folder_ensure(s, U1, "Old", 900, 1, &why));
    for (uint32_t u = 1; u <= 4; u++)
        OK(append(s, U1, "Old", u, "old\r\n"));
    OK(s->ops->folder_ensure(s, U1, "Work", 1000, 1, &why));
    for (uint32_t u = 1; u <= 6; u++)
        OK(append(s, U1, "Work", u, "work\r\n"));
    /* Old's 4 tombstones share the modseq of its deletion. */
    OK(s->ops->folder_delete(s, U1, 900, &why));
    uint64_t m0 = get_mb(s, U1).modseq;

    /* Steps of 2: everything once, in modseq order, a modseq never split
     * across steps. */
    struct steps *c = xcalloc(1, sizeof(*c));
    cur = run_steps(s, 0, 2, c, 0);
    assert_int_equal(cur.upto, m0);
    assert_int_equal(c->nf, 3); /* INBOX, Old (tombstone), Work */
    assert_int_equal(c->nm, 10);
    for (size_t i = 1; i < c->nm; i++) {
        assert_true(c->m[i].modseq >= c->m[i - 1].modseq);
        if (c->m[i].modseq == c->m[i - 1].modseq)
            assert_int_equal(c->step_of_m[i], c->step_of_m[i - 1]);
    }
    size_t tomb = 0;
    for (size_t i = 0; i < c->nm; i++)
        tomb += c->m[i].expunged;
    assert_int_equal(tomb, 4);
    /* The same as the one-call listing of both transports. */
    struct col *cc;
    assert_int_equal(changes(s, U1, 0, &cc), m0);
    assert_int_equal(cc->nf, 3);
    assert_int_equal(cc->nm, 10);
    free(cc);
    free(c);

    /* Changes between steps: a record changed before it was listed moves
     * above the listing's end and waits for the next listing; an append is
     * not listed either. Nothing is lost. */
    c = xcalloc(1, sizeof(*c));
    cur = run_steps(s, m0 - 6, 1, c, 2); /* Work 1..6 remain, after 2 steps */
    assert_false(cur.done);
    assert_int_equal(
        store_msg_set_flags(st, U1, "Work", 6, STORE_FLAGS_SET, STORE_F_SEEN, NULL, 0, NULL),
        STORE_OK);
    OK(append(s, U1, "Work", 7, "new\r\n"));
    struct sync_changes_cb cb = {.folder = steps_folder, .msg = steps_msg, .ctx = c};
    while (!cur.done)
        OK(sync_local_changes_step(s, U1, &cur, 1, &cb, &why));
    assert_int_equal(cur.upto, m0);
    for (size_t i = 0; i < c->nm; i++)
        assert_true(c->m[i].uid != 6 && c->m[i].uid != 7);
    free(c);
    c = xcalloc(1, sizeof(*c));
    run_steps(s, m0, 100, c, 0);
    assert_int_equal(c->nm, 2);
    assert_int_equal(c->m[0].uid, 6);
    assert_int_equal(c->m[0].flags, STORE_F_SEEN);
    assert_int_equal(c->m[1].uid, 7);
    free(c);

    /* A folder renamed in the middle: the listing ends before the first
     * record that would carry the new name; the next one starts with the
     * rename. */
    c = xcalloc(1, sizeof(*c));
    cur = run_steps(s, 0, 2, c, 3);
    assert_true(cur.msgs && !cur.done);
    uint64_t m1 = get_mb(s, U1).modseq;
    assert_int_equal(store_folder_rename(st, U1, "Work", "Play"), STORE_OK);
    while (!cur.done)
        OK(sync_local_changes_step(s, U1, &cur, 2, &cb, &why));
    assert_true(cur.upto < m1);
    for (size_t i = 0; i < c->nm; i++) {
        assert_string_not_equal(c->m[i].folder, "Play");
        assert_true(c->m[i].modseq <= cur.upto);
    }
    size_t listed = c->nm;
    free(c);
    c = xcalloc(1, sizeof(*c));
    cur = run_steps(s, cur.upto, 2, c, 0);
    assert_int_equal(cur.upto, m1 + 1);
    assert_int_equal(c->nf, 2); /* Old's tombstone again, and the rename */
    assert_string_equal(c->f[1].name, "Play");
    assert_int_equal(c->f[1].uidvalidity, 1000);
    for (size_t i = 0; i < c->nm; i++)
        assert_true(c->m[i].expunged ? strcmp(c->m[i].folder, "Old") == 0
                                     : strcmp(c->m[i].folder, "Play") == 0);
    assert_true(listed + c->nm >= 11);
    free(c);

    /* The mailbox gone between steps. */
    c = xcalloc(1, sizeof(*c));
    cur = run_steps(s, 0, 1, c, 1);
    assert_int_equal(
        store_mailbox_set_state(st, U1, STORE_MBOX_ACTIVE, STORE_MBOX_DELETING, 1, NULL), STORE_OK);
    assert_int_equal(store_mailbox_purge(st, U1), STORE_OK);
    NO(sync_local_changes_step(s, U1, &cur, 1, &cb, &why), "notfound");
    free(c);
}

/* Fills U1 on the TCP server's store s1 with n messages whose keywords make
 * each CHANGES record about 2.3 KB long. */
static void fill_wide(struct sync *s, size_t n)
{
    char kw[STORE_KEYWORDS_MAX + 1] = "";
    for (int i = 0; strlen(kw) + 8 < STORE_KEYWORDS_MAX; i++) {
        char k[16];
        snprintf(k, sizeof(k), "%sk%05d", i ? " " : "", i);
        strcat(kw, k);
    }
    OK(s->ops->mailbox_create(s, U1, STORE_MBOX_ACTIVE, 1, 0, &why));
    struct sync_msg *ms = xcalloc(SYNC_BATCH_MAX, sizeof(*ms));
    const struct sync_msg *mp[SYNC_BATCH_MAX];
    const void *data[SYNC_BATCH_MAX];
    size_t lens[SYNC_BATCH_MAX];
    int rcs[SYNC_BATCH_MAX];
    const char *whys[SYNC_BATCH_MAX];
    for (size_t done = 0; done < n;) {
        size_t k = n - done < SYNC_BATCH_MAX ? n - done : SYNC_BATCH_MAX;
        for (size_t i = 0; i < k; i++) {
            ms[i] = mkmsg("INBOX", (uint32_t)(done + i + 1), "x\r\n", 3);
            str_copy(ms[i].keywords, kw, sizeof(ms[i].keywords));
            mp[i] = &ms[i];
            data[i] = "x\r\n";
            lens[i] = 3;
        }
        OK(s->ops->append_batch(s, U1, mp, data, lens, k, rcs, whys, NULL));
        for (size_t i = 0; i < k; i++)
            assert_int_equal(rcs[i], 0);
        done += k;
    }
    free(ms);
}

static void test_tcp_streaming(void **state)
{
    struct env *e = *state;
    if (!e->tcp)
        skip();
    /* A listing of about 2.8 MB, asked for by a client that reads nothing
     * for a while, with a pipelined command behind it. */
    fill_wide(e->s, 1200);
    char u[2 * sizeof(U1)], cmd[256], line[4096];
    hexs(U1, u);
    struct raw r;
    raw_open(&r, e->sv->ep[0]);
    raw_expect(&r, "HELLO TSYNC/1", "+OK TSYNC/1 s1");
    snprintf(cmd, sizeof(cmd), "CHANGES %s 0\r\nMBOX %s\r\n", u, u);
    raw_puts(&r, cmd);
    usleep(300 * 1000);
    size_t nm = 0, nf = 0;
    for (;;) {
        assert_true(raw_line(&r, line, sizeof(line)));
        if (line[0] == 'M')
            nm++;
        else if (line[0] == 'F')
            nf++;
        else
            break;
    }
    assert_int_equal(nf, 1);
    assert_int_equal(nm, 1200);
    assert_true(strncmp(line, "+OK ", 4) == 0);
    /* The pipelined command's answer after the listing, not within it. */
    assert_true(raw_line(&r, line, sizeof(line)));
    assert_true(strncmp(line, "+OK active 1 - ", 15) == 0);
    /* What the server held at once: a step's records above the low mark,
     * never the whole listing. */
    size_t most = syncd_backlog_max(e->sv->d[0]);
    assert_true(most < SYNCD_OUT_LOW + 256 * 2600);

    /* Pipelined FETCHes of big messages: the commands wait while the
     * output is above the high mark. */
    size_t big = 700 * 1024;
    char *data = xmalloc(big);
    memset(data, 'b', big);
    for (uint32_t uid = 2001; uid <= 2010; uid++) {
        struct sync_msg m = mkmsg("INBOX", uid, data, big);
        OK(e->s->ops->append(e->s, U1, &m, data, big, &why));
    }
    free(data);
    struct buf all;
    buf_init(&all, 0);
    for (uint32_t uid = 2001; uid <= 2010; uid++)
        buf_printf(&all, "FETCH %s 494e424f58 %u\r\n", u, uid);
    raw_send(&r, all.data, all.len);
    buf_free(&all);
    usleep(300 * 1000);
    char *body = xmalloc(big + 2);
    for (int i = 0; i < 10; i++) {
        assert_true(raw_line(&r, line, sizeof(line)));
        assert_true(strncmp(line, "+DATA 716800 ", 13) == 0);
        /* The body follows the line in the stream: take it from the raw
         * buffer first, then the socket. */
        size_t got = r.len < big + 2 ? r.len : big + 2;
        memcpy(body, r.buf, got);
        memmove(r.buf, r.buf + got, r.len - got);
        r.len -= got;
        while (got < big + 2) {
            ssize_t k = recv(r.fd, body + got, big + 2 - got, 0);
            assert_true(k > 0);
            got += (size_t)k;
        }
        assert_int_equal(body[0], 'b');
        assert_memory_equal(body + big, "\r\n", 2);
    }
    free(body);
    most = syncd_backlog_max(e->sv->d[0]);
    assert_true(most < SYNCD_OUT_HIGH + 2 * big);
    raw_expect(&r, "QUIT", "+OK bye");
    close(r.fd);
}

/* A client that asks for much and reads nothing is cut off after the idle
 * time, even though its connection is paused (no idle timer) while the
 * server waits for the output to drain. */
static void test_tcp_stalled_reader(void **state)
{
    (void)state;
    struct server *sv = server_start_idle(500);
    char err[256];
    struct sync *s = sync_tcp_connect(sv->ep[0], 5000, err, sizeof(err));
    assert_non_null(s);
    OK(s->ops->mailbox_create(s, U1, STORE_MBOX_ACTIVE, 1, 0, &why));
    size_t big = 8 * 1024 * 1024;
    char *data = xmalloc(big);
    memset(data, 's', big);
    struct sync_msg m = mkmsg("INBOX", 1, data, big);
    OK(s->ops->append(s, U1, &m, data, big, &why));
    free(data);
    sync_close(&s);
    char u[2 * sizeof(U1)], cmd[256];
    hexs(U1, u);
    struct raw r;
    raw_open(&r, sv->ep[0]);
    int small = 4096;
    setsockopt(r.fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    raw_expect(&r, "HELLO TSYNC/1", "+OK TSYNC/1 s1");
    snprintf(cmd, sizeof(cmd), "FETCH %s 494e424f58 1\r\nFETCH %s 494e424f58 1\r\n", u, u);
    raw_puts(&r, cmd);
    int64_t deadline = time_mono_ms() + 10000;
    while (syncd_sessions(sv->d[0]) > 0 && time_mono_ms() < deadline)
        usleep(50 * 1000);
    assert_int_equal(syncd_sessions(sv->d[0]), 0);
    close(r.fd);
    server_stop(sv);
}

/* ---- header-only reads ---- */

/* fetch_headers on both transports (the memory store cuts a whole read,
 * the fs store behind syncd reads in growing pieces): the header up to and
 * including the empty line, whatever its size relative to the pieces. */
static void test_fetch_headers(void **state)
{
    struct env *e = *state;
    struct sync *s = e->s;
    OK(s->ops->mailbox_create(s, U1, STORE_MBOX_ACTIVE, 1, 0, &why));
    struct {
        size_t pad;      /* octets of filler in an X-Pad field */
        const char *end; /* what ends the header */
        bool has_body;
    } cases[] = {
        {0, "\r\n", true},     {8150, "\r\n", true}, {8170, "\r\n", true}, {8180, "\r\n", true},
        {20000, "\r\n", true}, {100, "\n", true},    {100, "", false},     {9000, "", false},
    };
    size_t nc = ARRAY_SIZE(cases);
    struct buf full[16], want[16];
    uint32_t uids[16];
    for (size_t i = 0; i < nc; i++) {
        buf_init(&full[i], 0);
        buf_init(&want[i], 0);
        buf_printf(&full[i], "Subject: case %zu\r\nX-Pad: ", i);
        for (size_t k = 0; k < cases[i].pad; k++)
            buf_puts(&full[i], "p");
        buf_puts(&full[i], "\r\n");
        buf_puts(&full[i], cases[i].end);
        buf_append(&want[i], full[i].data, full[i].len);
        if (cases[i].has_body)
            for (int k = 0; k < 3000; k++)
                buf_puts(&full[i], "body line\r\n");
        uids[i] = (uint32_t)i + 1;
        struct sync_msg m = mkmsg("INBOX", uids[i], full[i].data, full[i].len);
        OK(s->ops->append(s, U1, &m, full[i].data, full[i].len, &why));
    }
    /* A message whose first line is empty: its header is that line. */
    buf_init(&full[nc], 0);
    buf_init(&want[nc], 0);
    buf_puts(&full[nc], "\r\nno header at all\r\n");
    buf_puts(&want[nc], "\r\n");
    uids[nc] = (uint32_t)nc + 1;
    struct sync_msg m = mkmsg("INBOX", uids[nc], full[nc].data, full[nc].len);
    OK(s->ops->append(s, U1, &m, full[nc].data, full[nc].len, &why));
    nc++;
    uids[nc] = 999; /* not there */
    struct buf outs[16];
    int rc[16];
    const char *whys[16];
    for (size_t i = 0; i <= nc; i++)
        buf_init(&outs[i], 0);
    OK(s->ops->fetch_headers(s, U1, "INBOX", uids, nc + 1, outs, rc, whys));
    for (size_t i = 0; i < nc; i++) {
        assert_int_equal(rc[i], 0);
        if (outs[i].len != want[i].len || memcmp(outs[i].data, want[i].data, want[i].len) != 0)
            fail_msg("case %zu: %zu octets, want %zu", i, outs[i].len, want[i].len);
    }
    assert_int_equal(rc[nc], SYNC_NO);
    assert_string_equal(whys[nc], "notfound");
    for (size_t i = 0; i <= nc; i++)
        buf_free(&outs[i]);
    for (size_t i = 0; i < nc; i++) {
        buf_free(&full[i]);
        buf_free(&want[i]);
    }
    /* No such folder, no mailbox: every item refused; n == 0 is nothing. */
    struct buf one;
    buf_init(&one, 0);
    OK(s->ops->fetch_headers(s, U1, "Nope", uids, 1, &one, rc, whys));
    assert_int_equal(rc[0], SYNC_NO);
    assert_string_equal(whys[0], "notfound");
    OK(s->ops->fetch_headers(s, U2, "INBOX", uids, 1, &one, rc, whys));
    assert_int_equal(rc[0], SYNC_NO);
    OK(s->ops->fetch_headers(s, U1, "INBOX", uids, 0, &one, rc, whys));
    assert_int_equal(one.len, 0);
    assert_int_equal(
        s->ops->fetch_headers(s, U1, "INBOX", uids, SYNC_BATCH_MAX + 1, &one, rc, whys), -1);
    buf_free(&one);
    /* The connection is still good. */
    get_mb(s, U1);
}

static void test_header_end(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        bool found;
        size_t len;
    } cases[] = {
        {"", false, 0},
        {"\r\n", true, 2},
        {"\n", true, 1},
        {"A: b\r\n\r\nbody", true, 8},
        {"A: b\n\nbody", true, 6},
        {"A: b\r\n c\r\n\r\n", true, 12},
        {"A: b\r\n", false, 0},
        {"A: b\r\n\r", false, 0},
        {"A: b\r\r\n\r\n", true, 9},
        {"A: b\r\n \r\nx", false, 0},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        size_t l = 0;
        bool f = store_header_end(cases[i].in, strlen(cases[i].in), &l);
        if (f != cases[i].found || (f && l != cases[i].len))
            fail_msg("\"%s\": %d %zu", cases[i].in, f, l);
    }
}

/* ---- WAIT (notified IDLE) ---- */

/* Both transports: WAIT returns at once when the mailbox is past `since`,
 * after the timeout when it is not, at once when wake_fd is readable, and
 * "notfound" for no mailbox. */
static void test_wait(void **state)
{
    struct env *e = *state;
    struct sync *s = e->s;
    struct store_mailbox mb;
    NO(s->ops->wait(s, U1, 0, 50, -1, &mb, &why), "notfound");
    OK(s->ops->mailbox_create(s, U1, STORE_MBOX_ACTIVE, 1, 0, &why));
    uint64_t m0 = get_mb(s, U1).modseq;
    int64_t t0 = time_mono_ms();
    OK(s->ops->wait(s, U1, m0 - 1, 5000, -1, &mb, &why));
    assert_true(time_mono_ms() - t0 < 2000);
    assert_int_equal(mb.modseq, m0);
    assert_int_equal(mb.state, STORE_MBOX_ACTIVE);
    t0 = time_mono_ms();
    OK(s->ops->wait(s, U1, m0, 150, -1, &mb, &why));
    assert_true(time_mono_ms() - t0 >= 140);
    assert_int_equal(mb.modseq, m0);
    /* The caller's client speaks: the wait ends early, the channel stays
     * usable. */
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    assert_int_equal(write(pfd[1], "x", 1), 1);
    t0 = time_mono_ms();
    OK(s->ops->wait(s, U1, m0, 5000, pfd[0], &mb, &why));
    assert_true(time_mono_ms() - t0 < 2000);
    assert_int_equal(mb.modseq, m0);
    close(pfd[0]);
    close(pfd[1]);
    assert_int_equal(append(s, U1, "INBOX", 1, "a\r\n"), 0);
    OK(s->ops->wait(s, U1, m0, 5000, -1, &mb, &why));
    assert_true(mb.modseq > m0);
    /* A mailbox leaving (a move's fence) ends a wait at once too. */
    OK(s->ops->mailbox_state(s, U1, STORE_MBOX_ACTIVE, STORE_MBOX_FENCED, 1, NULL, &why));
    t0 = time_mono_ms();
    OK(s->ops->wait(s, U1, get_mb(s, U1).modseq, 5000, -1, &mb, &why));
    assert_true(time_mono_ms() - t0 < 2000);
    assert_int_equal(mb.state, STORE_MBOX_FENCED);
}

/* Waits until the syncd has n WAITs pending (they are taken on the loop). */
static void waiters_are(struct server *sv, unsigned n)
{
    int64_t deadline = time_mono_ms() + 5000;
    while (syncd_waiters(sv->d[0]) != n && time_mono_ms() < deadline)
        usleep(2000);
    assert_int_equal(syncd_waiters(sv->d[0]), n);
}

/* Over the wire: a WAIT is answered by another connection's commit, at its
 * timeout, by more input (NOOP), and the waiter list is cleaned up when a
 * waiting connection drops. */
static void test_tcp_wait(void **state)
{
    struct env *e = *state;
    struct sync *s = e->s;
    OK(s->ops->mailbox_create(s, U1, STORE_MBOX_ACTIVE, 1, 0, &why));
    uint64_t m0 = get_mb(s, U1).modseq;
    char u[2 * sizeof(U1)], cmd[256], line[256], want[64];
    hexs(U1, u);
    struct raw r;
    raw_open(&r, e->sv->ep[0]);
    raw_expect(&r, "HELLO TSYNC/1", "+OK TSYNC/1 s1");
    /* Answered by a commit on another connection, long before its timeout. */
    snprintf(cmd, sizeof(cmd), "WAIT %s %llu 60000\r\n", u, (unsigned long long)m0);
    raw_puts(&r, cmd);
    waiters_are(e->sv, 1);
    int64_t t0 = time_mono_ms();
    assert_int_equal(append(s, U1, "INBOX", 1, "a\r\n"), 0);
    assert_true(raw_line(&r, line, sizeof(line)));
    assert_true(time_mono_ms() - t0 < 2000);
    uint64_t m1 = get_mb(s, U1).modseq;
    snprintf(want, sizeof(want), "+OK %llu active", (unsigned long long)m1);
    assert_string_equal(line, want);
    waiters_are(e->sv, 0);
    /* A change to another mailbox does not answer it; the timeout does. */
    OK(s->ops->mailbox_create(s, U2, STORE_MBOX_ACTIVE, 1, 0, &why));
    snprintf(cmd, sizeof(cmd), "WAIT %s %llu 300\r\n", u, (unsigned long long)m1);
    t0 = time_mono_ms();
    raw_puts(&r, cmd);
    waiters_are(e->sv, 1);
    OK(s->ops->folder_create(s, U2, "Other", &why));
    assert_true(raw_line(&r, line, sizeof(line)));
    assert_true(time_mono_ms() - t0 >= 290);
    assert_string_equal(line, want);
    /* More input ends it at once: the WAIT's answer, then the NOOP's. */
    snprintf(cmd, sizeof(cmd), "WAIT %s %llu 60000\r\nNOOP\r\n", u, (unsigned long long)m1);
    t0 = time_mono_ms();
    raw_puts(&r, cmd);
    assert_true(raw_line(&r, line, sizeof(line)));
    assert_string_equal(line, want);
    assert_true(raw_line(&r, line, sizeof(line)));
    assert_string_equal(line, "+OK");
    assert_true(time_mono_ms() - t0 < 2000);
    /* Timeout 0 and a mailbox past `since` answer at once. */
    snprintf(cmd, sizeof(cmd), "WAIT %s %llu 0", u, (unsigned long long)m1);
    raw_expect(&r, cmd, want);
    snprintf(cmd, sizeof(cmd), "WAIT %s 0 60000", u);
    raw_expect(&r, cmd, want);
    char nobody[64];
    hexs("nobody@example.org", nobody);
    snprintf(cmd, sizeof(cmd), "WAIT %s 0 60000", nobody);
    raw_expect(&r, cmd, "-NO notfound");
    /* Malformed: -ERR, nothing waits, the connection stays. */
    snprintf(cmd, sizeof(cmd), "WAIT %s 0 300001", u);
    raw_expect(&r, cmd, "-ERR bad timeout");
    snprintf(cmd, sizeof(cmd), "WAIT %s 0", u);
    raw_expect(&r, cmd, "-ERR wrong number of arguments");
    waiters_are(e->sv, 0);
    /* A connection that drops while waiting leaves no waiter behind (and
     * nothing for LeakSanitizer). */
    snprintf(cmd, sizeof(cmd), "WAIT %s %llu 60000\r\n", u, (unsigned long long)m1);
    raw_puts(&r, cmd);
    waiters_are(e->sv, 1);
    close(r.fd);
    waiters_are(e->sv, 0);
    /* Several waiters of one mailbox: one commit answers them all. */
    struct raw w[3];
    for (int i = 0; i < 3; i++) {
        raw_open(&w[i], e->sv->ep[0]);
        raw_expect(&w[i], "HELLO TSYNC/1", "+OK TSYNC/1 s1");
        raw_puts(&w[i], cmd);
    }
    waiters_are(e->sv, 3);
    assert_int_equal(append(s, U1, "INBOX", 2, "b\r\n"), 0);
    snprintf(want, sizeof(want), "+OK %llu active", (unsigned long long)get_mb(s, U1).modseq);
    for (int i = 0; i < 3; i++) {
        assert_true(raw_line(&w[i], line, sizeof(line)));
        assert_string_equal(line, want);
        close(w[i].fd);
    }
    waiters_are(e->sv, 0);
}

/* A store from before WAIT answers "-ERR unknown command": the client says
 * "unsupported" (once asked, without asking again) and stays usable. A
 * one-connection fake server plays the old store. */
struct fake {
    int lfd;
    pthread_t th;
    unsigned waits;
};

static void *fake_main(void *arg)
{
    struct fake *f = arg;
    int fd = accept(f->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    FILE *in = fdopen(fd, "r");
    char line[512];
    while (fgets(line, sizeof(line), in) != NULL) {
        const char *reply = "-ERR unknown command\r\n";
        if (strncmp(line, "HELLO ", 6) == 0)
            reply = "+OK TSYNC/1 old\r\n";
        else if (strncmp(line, "MBOX ", 5) == 0)
            reply = "+OK active 1 - 9 0 0\r\n";
        else if (strncmp(line, "WAIT ", 5) == 0)
            f->waits++;
        else if (strncmp(line, "QUIT", 4) == 0)
            break;
        if (send(fd, reply, strlen(reply), MSG_NOSIGNAL) < 0)
            break;
    }
    fclose(in);
    return NULL;
}

static void test_tcp_wait_unsupported(void **state)
{
    (void)state;
    struct fake f = {.waits = 0};
    f.lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    assert_int_equal(bind(f.lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(f.lfd, 1), 0);
    assert_int_equal(getsockname(f.lfd, (struct sockaddr *)&a, &al), 0);
    char ep[32];
    snprintf(ep, sizeof(ep), "127.0.0.1:%d", ntohs(a.sin_port));
    assert_int_equal(pthread_create(&f.th, NULL, fake_main, &f), 0);
    struct sync *s = tcp_connect(ep);
    struct store_mailbox mb;
    NO(s->ops->wait(s, U1, 3, 1000, -1, &mb, &why), "unsupported");
    NO(s->ops->wait(s, U1, 3, 1000, -1, &mb, &why), "unsupported");
    assert_int_equal(get_mb(s, U1).modseq, 9);
    sync_close(&s);
    pthread_join(f.th, NULL);
    close(f.lfd);
    assert_int_equal(f.waits, 1);
}

/* ---- batches of IMAP sessions: EXPUNGES, COPIES ---- */

static int msgs_col(void *ctx, const struct sync_msg *m)
{
    return col_msg(ctx, m);
}

static void test_uid_batches(void **state)
{
    struct env *e = *state;
    struct sync *s = e->s;
    OK(s->ops->mailbox_create(s, U1, STORE_MBOX_ACTIVE, 1, 0, &why));
    for (uint32_t u = 1; u <= 6; u++) {
        char body[32];
        snprintf(body, sizeof(body), "Subject: %u\r\n\r\nm%u\r\n", u, u);
        assert_int_equal(append(s, U1, "INBOX", u, body), 0);
    }
    uint64_t ms;
    OK(s->ops->flags_ex(s, U1, "INBOX", 2, STORE_FLAGS_SET, STORE_F_FLAGGED, "$Label", 0, &ms,
                        &why));
    OK(s->ops->folder_create(s, U1, "Work", &why));
    struct sync_folder *fl = NULL;
    size_t nf = 0;
    OK(s->ops->folders(s, U1, &fl, &nf, &why));
    uint32_t work_uv = 0;
    for (size_t i = 0; i < nf; i++)
        if (strcmp(fl[i].name, "Work") == 0)
            work_uv = fl[i].uidvalidity;
    free(fl);
    assert_true(work_uv != 0);

    /* COPIES: one commit; a UID that is not there is skipped (0). */
    uint32_t ask[] = {1, 2, 4, 9}, got[4], uv = 0;
    OK(s->ops->copy_uids(s, U1, "INBOX", "Work", ask, 4, got, &uv, &why));
    assert_int_equal(uv, work_uv);
    assert_int_equal(got[0], 1);
    assert_int_equal(got[1], 2);
    assert_int_equal(got[2], 3);
    assert_int_equal(got[3], 0);
    struct col c;
    memset(&c, 0, sizeof(c));
    uint64_t m0;
    OK(s->ops->msgs(s, U1, "Work", msgs_col, &c, &m0, &why));
    assert_int_equal(c.nm, 3);
    assert_int_equal(c.m[1].flags, STORE_F_FLAGGED);
    assert_string_equal(c.m[1].keywords, "$Label");
    assert_int_equal(c.m[1].internal_date, 1700000002);
    assert_memory_not_equal(c.m[1].guid, G1, STORE_GUID_LEN); /* a GUID of its own */
    fetch_eq(s, U1, "Work", 3, "Subject: 4\r\n\r\nm4\r\n", 18);
    /* Into the same folder too. */
    uint32_t self[] = {6};
    OK(s->ops->copy_uids(s, U1, "INBOX", "INBOX", self, 1, got, &uv, &why));
    assert_int_equal(got[0], 7);
    /* Nothing asked: nothing done. */
    OK(s->ops->copy_uids(s, U1, "INBOX", "Work", ask, 0, got, &uv, &why));
    assert_int_equal(uv, work_uv);
    /* Refusals: nothing copied. */
    NO(s->ops->copy_uids(s, U1, "INBOX", "Nope", ask, 4, got, &uv, &why), "notfound");
    NO(s->ops->copy_uids(s, U1, "Nope", "Work", ask, 4, got, &uv, &why), "notfound");
    NO(s->ops->copy_uids(s, U2, "INBOX", "Work", ask, 4, got, &uv, &why), "notfound");
    uint32_t down[] = {2, 1};
    NO(s->ops->copy_uids(s, U1, "INBOX", "Work", down, 2, got, &uv, &why), "invalid");
    uint32_t zero[] = {0};
    NO(s->ops->copy_uids(s, U1, "INBOX", "Work", zero, 1, got, &uv, &why), "invalid");
    uint32_t *many = xcalloc(SYNC_UIDS_MAX + 1, sizeof(*many));
    uint32_t *many_out = xcalloc(SYNC_UIDS_MAX + 1, sizeof(*many_out));
    for (size_t i = 0; i <= SYNC_UIDS_MAX; i++)
        many[i] = (uint32_t)i + 1;
    NO(s->ops->copy_uids(s, U1, "INBOX", "Work", many, SYNC_UIDS_MAX + 1, many_out, &uv, &why),
       "invalid");
    memset(&c, 0, sizeof(c));
    OK(s->ops->msgs(s, U1, "Work", msgs_col, &c, &m0, &why));
    assert_int_equal(c.nm, 3);

    /* EXPUNGES: one commit, each its own modseq; gone ones skipped. */
    size_t done = 99;
    uint64_t before = get_mb(s, U1).modseq;
    uint32_t ex[] = {1, 3, 9};
    OK(s->ops->expunge_uids(s, U1, "INBOX", ex, 3, &done, &why));
    assert_int_equal(done, 2);
    struct col *ch;
    changes(s, U1, before, &ch);
    assert_int_equal(ch->nm, 2);
    assert_true(ch->m[0].expunged && ch->m[1].expunged);
    assert_true(ch->m[0].modseq != ch->m[1].modseq);
    assert_int_equal(get_mb(s, U1).modseq, before + 2);
    free(ch);
    OK(s->ops->expunge_uids(s, U1, "INBOX", ex, 3, &done, &why));
    assert_int_equal(done, 0);
    OK(s->ops->expunge_uids(s, U1, "INBOX", ex, 0, &done, &why));
    assert_int_equal(done, 0);
    NO(s->ops->expunge_uids(s, U1, "Nope", ex, 3, &done, &why), "notfound");
    NO(s->ops->expunge_uids(s, U1, "INBOX", down, 2, &done, &why), "invalid");
    NO(s->ops->expunge_uids(s, U1, "INBOX", many, SYNC_UIDS_MAX + 1, &done, &why), "invalid");
    /* The whole limit at once. */
    OK(s->ops->expunge_uids(s, U1, "INBOX", many, SYNC_UIDS_MAX, &done, &why));
    assert_int_equal(done, 5); /* 2, 4, 5, 6 and the copy 7 */
    free(many);
    free(many_out);
    /* Not while the mailbox is fenced. */
    OK(s->ops->mailbox_state(s, U1, STORE_MBOX_ACTIVE, STORE_MBOX_FENCED, 1, NULL, &why));
    uint32_t w1[] = {1};
    NO(s->ops->expunge_uids(s, U1, "Work", w1, 1, &done, &why), "notlive");
    NO(s->ops->copy_uids(s, U1, "Work", "INBOX", w1, 1, got, &uv, &why), "notlive");
    get_mb(s, U1);
}

static void test_uidset(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        int r;
        size_t n;
        const char *err;
    } cases[] = {
        {"-", 0, 0, NULL},
        {"1", 0, 1, NULL},
        {"1:3,5,7:8", 0, 6, NULL},
        {"4294967295", 0, 1, NULL},
        {"4294967294:4294967295", 0, 2, NULL},
        {"1:500", 0, 500, NULL},
        {"1:501", -1, 0, "UID set too large"},
        {"1:500,600", -1, 0, "UID set too large"},
        {"0", -1, 0, "bad UID set"},
        {"01", -1, 0, "bad UID set"},
        {"4294967296", -1, 0, "bad UID set"},
        {"99999999999", -1, 0, "bad UID set"},
        {"5:3", -1, 0, "bad UID set"},
        {"3,2", -1, 0, "UID set not ascending"},
        {"1:3,3", -1, 0, "UID set not ascending"},
        {"1,,2", -1, 0, "bad UID set"},
        {"1,", -1, 0, "bad UID set"},
        {"1:", -1, 0, "bad UID set"},
        {":2", -1, 0, "bad UID set"},
        {"", -1, 0, "bad UID set"},
        {"1 2", -1, 0, "bad UID set"},
        {"*", -1, 0, "bad UID set"},
        {"--", -1, 0, "bad UID set"},
    };
    uint32_t u[SYNC_UIDS_MAX];
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        size_t n = 99;
        const char *err = NULL;
        int r = sync_uidset_parse(cases[i].in, strlen(cases[i].in), u, SYNC_UIDS_MAX, &n, &err);
        if (r != cases[i].r || (r == 0 && n != cases[i].n) ||
            (r != 0 && strcmp(err, cases[i].err) != 0))
            fail_msg("\"%s\": %d %zu %s", cases[i].in, r, n, r != 0 ? err : "");
    }
    /* Written and read back. */
    uint32_t w[] = {1, 2, 3, 7, 9, 10, 4294967295u};
    struct buf b;
    buf_init(&b, 0);
    sync_uidset_write(&b, w, ARRAY_SIZE(w));
    assert_string_equal(b.data, "1:3,7,9:10,4294967295");
    size_t n = 0;
    const char *err = NULL;
    assert_int_equal(sync_uidset_parse(b.data, b.len, u, SYNC_UIDS_MAX, &n, &err), 0);
    assert_int_equal(n, ARRAY_SIZE(w));
    assert_memory_equal(u, w, sizeof(w));
    buf_reset(&b);
    sync_uidset_write(&b, w, 0);
    assert_string_equal(b.data, "-");
    buf_free(&b);
}

/* COPIES and EXPUNGES on the wire: the answers' form. */
static void test_tcp_uid_batches(void **state)
{
    struct env *e = *state;
    struct sync *s = e->s;
    OK(s->ops->mailbox_create(s, U1, STORE_MBOX_ACTIVE, 1, 0, &why));
    for (uint32_t u = 1; u <= 4; u++)
        assert_int_equal(append(s, U1, "INBOX", u, "x\r\n"), 0);
    OK(s->ops->folder_create(s, U1, "Work", &why));
    char u[2 * sizeof(U1)], cmd[512], want[128];
    hexs(U1, u);
    struct raw r;
    raw_open(&r, e->sv->ep[0]);
    raw_expect(&r, "HELLO TSYNC/1", "+OK TSYNC/1 s1");
    snprintf(cmd, sizeof(cmd), "COPIES %s 494e424f58 576f726b 1:2,4,7", u);
    raw_expect(&r, cmd, "+OK ");
    snprintf(cmd, sizeof(cmd), "COPIES %s 494e424f58 576f726b 9", u);
    raw_expect(&r, cmd, "+OK ");
    snprintf(cmd, sizeof(cmd), "EXPUNGES %s 576f726b 1:3,5", u);
    raw_expect(&r, cmd, "+OK 3");
    snprintf(cmd, sizeof(cmd), "EXPUNGES %s 576f726b -", u);
    raw_expect(&r, cmd, "+OK 0");
    snprintf(cmd, sizeof(cmd), "EXPUNGES %s 576f726b 3,1", u);
    raw_expect(&r, cmd, "-ERR UID set not ascending");
    snprintf(cmd, sizeof(cmd), "EXPUNGES %s 576f726b 1:501", u);
    raw_expect(&r, cmd, "-ERR UID set too large");
    snprintf(cmd, sizeof(cmd), "EXPUNGES %s 4e6f7065 1", u);
    raw_expect(&r, cmd, "-NO notfound");
    snprintf(cmd, sizeof(cmd), "COPIES %s 494e424f58 4e6f7065 1", u);
    raw_expect(&r, cmd, "-NO notfound");
    snprintf(cmd, sizeof(cmd), "COPIES %s 494e424f58 1", u);
    raw_expect(&r, cmd, "-ERR wrong number of arguments");
    close(r.fd);
    /* The answers in full (UIDVALIDITY known from a listing). */
    struct sync_folder *fl = NULL;
    size_t nf = 0;
    OK(s->ops->folders(s, U1, &fl, &nf, &why));
    uint32_t uv = 0;
    for (size_t i = 0; i < nf; i++)
        if (strcmp(fl[i].name, "Work") == 0)
            uv = fl[i].uidvalidity;
    free(fl);
    raw_open(&r, e->sv->ep[0]);
    raw_expect(&r, "HELLO TSYNC/1", "+OK TSYNC/1 s1");
    snprintf(cmd, sizeof(cmd), "COPIES %s 494e424f58 576f726b 1:2,4,7", u);
    snprintf(want, sizeof(want), "+OK %u 1:2,4 4:6", uv);
    raw_expect(&r, cmd, want);
    snprintf(cmd, sizeof(cmd), "COPIES %s 494e424f58 576f726b 9", u);
    snprintf(want, sizeof(want), "+OK %u - -", uv);
    raw_expect(&r, cmd, want);
    close(r.fd);
}

#define BOTH(f)                                                                                    \
    cmocka_unit_test_prestate_setup_teardown(f, setup, teardown, &kind_local),                     \
        cmocka_unit_test_prestate_setup_teardown(f, setup, teardown, &kind_tcp)
#define TCP(f)   cmocka_unit_test_prestate_setup_teardown(f, setup, teardown, &kind_tcp)
#define LOCAL(f) cmocka_unit_test_prestate_setup_teardown(f, setup, teardown, &kind_local)

int main(void)
{
    log_init("test_sync");
    const struct CMUnitTest tests[] = {
        BOTH(test_mailbox),
        BOTH(test_folder_ensure),
        BOTH(test_append_fetch),
        BOTH(test_changes),
        BOTH(test_digest),
        BOTH(test_inbox_uidvalidity),
        BOTH(test_deliveries),
        BOTH(test_append_batch),
        BOTH(test_append_batch_ids),
        BOTH(test_explicit_modseq),
        BOTH(test_token),
        TCP(test_tcp_malformed),
        TCP(test_tcp_appends),
        TCP(test_tcp_appends_ids),
        cmocka_unit_test(test_tcp_old_store_ids),
        TCP(test_tcp_client),
        cmocka_unit_test(test_parse),
        LOCAL(test_changes_steps),
        BOTH(test_deliveries_batch),
        TCP(test_tcp_delivered),
        TCP(test_tcp_streaming),
        cmocka_unit_test(test_tcp_stalled_reader),
        BOTH(test_wait),
        TCP(test_tcp_wait),
        cmocka_unit_test(test_tcp_wait_unsupported),
        BOTH(test_fetch_headers),
        cmocka_unit_test(test_header_end),
        BOTH(test_uid_batches),
        cmocka_unit_test(test_uidset),
        TCP(test_tcp_uid_batches),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
