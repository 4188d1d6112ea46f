/*
 * fuzz_imapd — libFuzzer target for whole IMAP sessions (imapd): the input
 * is a client's byte stream after "LOGIN" and "SELECT INBOX", run by
 * imapd_session_run() on one end of a socketpair, against an in-memory
 * store (sync_local) holding a plain and a multipart message in INBOX and a
 * second folder. So every command's own parsing (FETCH items and sections,
 * SEARCH keys and dates, STORE flags, APPEND dates, folder names, QRESYNC
 * and CONDSTORE parameters, numbers) runs on arbitrary input, with the
 * store's answers behind it. Small limits make the reader's limits fire.
 *
 * Checks: the session ends by itself (the input ends with LOGOUT and the
 * socket's write side closes), it greeted and logged in, and what it sent
 * ends with a complete line; the sanitizers do the rest.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "imapd/imapd.h"
#include "mime/mime.h"
#include "sync/sync.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define USER "fuzz@example.org"

static const char plain[] = "From: a@example.net\r\nTo: " USER "\r\nSubject: hello\r\n"
                            "Date: Mon, 16 Nov 2026 10:00:00 +0000\r\n\r\nbody text\r\n";
static const char multi[] = "From: b@example.net\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
                            "Content-Type: multipart/mixed; boundary=X\r\n\r\n--X\r\n"
                            "Content-Type: text/plain\r\n\r\none\r\n--X\r\n"
                            "Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ntwo\r\n"
                            "--X--\r\n";

struct fuzz_env {
    struct store *st;
};

static enum imapd_auth fz_login(void *ctx, const char *user, const char *password, char *user_r,
                                struct sync **sync_r, const char **why_r)
{
    struct fuzz_env *fe = ctx;
    (void)user;
    if (strcmp(password, "pw") != 0) {
        *why_r = "Authentication failed";
        return IMAPD_AUTH_FAILED;
    }
    str_copy(user_r, USER, MAIL_ADDR_MAX + 1);
    *sync_r = sync_local_new(fe->st);
    return IMAPD_AUTH_OK;
}

static void fz_logout(void *ctx, const char *user)
{
    (void)ctx;
    (void)user;
}

struct feed {
    int fd;
    const uint8_t *data;
    size_t size;
};

static void write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue; /* libFuzzer's timers */
        if (w <= 0)
            return; /* the session ended early: fine */
        c += w;
        n -= (size_t)w;
    }
}

static void *feeder(void *arg)
{
    struct feed *f = arg;
    static const char pre[] = "a LOGIN " USER " pw\r\nb SELECT INBOX\r\n";
    static const char post[] = "\r\nDONE\r\nz LOGOUT\r\n";
    write_all(f->fd, pre, sizeof(pre) - 1);
    write_all(f->fd, f->data, f->size);
    write_all(f->fd, post, sizeof(post) - 1);
    shutdown(f->fd, SHUT_WR);
    return NULL;
}

struct session {
    int fd;
    struct imapd_env *env;
};

static void *run_session(void *arg)
{
    struct session *s = arg;
    imapd_session_run(s->fd, "fuzz", s->env);
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool once;
    if (!once) {
        once = true;
        mime_init();
        log_set_level(LOG_ERROR);
    }
    if (size > 1 << 16)
        return 0;
    struct fuzz_env fe = {.st = store_open_memory("s1")};
    if (store_mailbox_create(fe.st, USER, STORE_MBOX_ACTIVE, 1) != STORE_OK)
        abort();
    struct sync *sy = sync_local_new(fe.st);
    uint32_t uid, uv;
    const char *why;
    if (sy->ops->append_new(sy, USER, "INBOX", 0, "", 1700000000, plain, sizeof(plain) - 1, &uid,
                            &uv, &why) != 0 ||
        sy->ops->append_new(sy, USER, "INBOX", STORE_F_SEEN, "$Label", 1700000100, multi,
                            sizeof(multi) - 1, &uid, &uv, &why) != 0 ||
        sy->ops->folder_create(sy, USER, "Work", &why) != 0)
        abort();
    sync_close(&sy);

    struct imapd_env env = {0};
    imap_limits_default(&env.limits);
    env.limits.line_max = 1024;
    env.limits.literal_max = 4096;
    env.limits.command_max = 8192;
    env.limits.depth_max = 8;
    env.hostname = "fuzz";
    env.idle_timeout_ms = 60000;
    env.idle_check_ms = 5;
    env.state_check_ms = 1000;
    env.auth_fail_max = 3;
    env.login = fz_login;
    env.logout = fz_logout;
    env.ctx = &fe;

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        abort();
    struct session ss = {.fd = sv[0], .env = &env};
    struct feed fd = {.fd = sv[1], .data = data, .size = size};
    pthread_t ts, tf;
    if (pthread_create(&ts, NULL, run_session, &ss) != 0 ||
        pthread_create(&tf, NULL, feeder, &fd) != 0)
        abort();
    /* Drain the responses while the feeder writes. */
    struct buf out; /* the first 4 KiB, for the greeting and the login */
    buf_init(&out, 0);
    char tmp[65536], last = '\0';
    for (;;) {
        ssize_t r = recv(sv[1], tmp, sizeof(tmp), 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        if (out.len < 4096)
            buf_append(&out, tmp, (size_t)r);
        last = tmp[r - 1];
    }
    pthread_join(tf, NULL);
    pthread_join(ts, NULL); /* the session ended: it closed sv[0] */
    close(sv[1]);

    const char *login = out.len > 0 ? memmem(out.data, out.len, "\r\na OK ", 7) : NULL;
    if (out.len < 4 || memcmp(out.data, "* OK", 4) != 0 || login == NULL || last != '\n') {
        fprintf(stderr, "fuzz_imapd: bad session output (last octet %d):\n%.*s\n", last,
                (int)out.len, out.data);
        abort();
    }
    buf_free(&out);
    store_close(&fe.st);
    return 0;
}
