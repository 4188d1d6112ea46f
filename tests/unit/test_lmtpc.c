/*
 * test_lmtpc — unit tests for the LMTP client against a scripted fake LMTP
 * server running in a thread on 127.0.0.1:0. The fake records every byte the
 * client sends, so each test checks the exact dialogue, and flags "<EARLY>"
 * when the client sent more than the lines a step expected before getting an
 * answer (pipelining without PIPELINING, commands past a refusal).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "lmtpc/lmtpc.h"
#include "util/util.h"

/* ---- the fake server ---------------------------------------------------- */

/* Script steps (NULL-terminated array):
 *   "S<text>"  send text verbatim
 *   "R<n>"     read n lines (then flag <EARLY> if more input is waiting)
 *   "D"        read a message up to and including CRLF.CRLF
 *   "H"        shut down our sending side (the client sees EOF)
 *   "C"        close the connection now (no final read)
 * After the last step the fake reads until the client closes. */
struct fake {
    int lfd;
    char endpoint[64];
    const char *const *script;
    struct buf got; /* everything the client sent, plus markers */
    pthread_t th;
};

static int fake_recv(int fd, struct buf *in)
{
    char tmp[4096];
    ssize_t r = recv(fd, tmp, sizeof tmp, 0);
    if (r <= 0)
        return -1;
    buf_append(in, tmp, (size_t)r);
    return 0;
}

/* Makes in.data non-NULL, so memchr/memmem never see a null pointer. */
static void buf_reserve_empty(struct buf *b)
{
    buf_append(b, "", 0);
}

static void *fake_run(void *arg)
{
    struct fake *f = arg;
    int fd = accept(f->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct buf in;
    buf_init(&in, 0);
    buf_reserve_empty(&in);
    for (const char *const *s = f->script; *s != NULL; s++) {
        const char *step = *s;
        if (step[0] == 'S') {
            send(fd, step + 1, strlen(step + 1), MSG_NOSIGNAL);
        } else if (step[0] == 'R') {
            for (int k = atoi(step + 1); k > 0; k--) {
                char *nl;
                while ((nl = memchr(in.data, '\n', in.len)) == NULL)
                    if (fake_recv(fd, &in) < 0)
                        goto eof;
                size_t n = (size_t)(nl - in.data) + 1;
                buf_append(&f->got, in.data, n);
                buf_consume(&in, n);
            }
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (in.len > 0 || poll(&p, 1, 30) > 0)
                buf_puts(&f->got, "<EARLY>");
        } else if (step[0] == 'D') {
            char *end;
            while ((end = memmem(in.data, in.len, "\r\n.\r\n", 5)) == NULL)
                if (fake_recv(fd, &in) < 0)
                    goto eof;
            size_t n = (size_t)(end - in.data) + 5;
            buf_append(&f->got, in.data, n);
            buf_consume(&in, n);
        } else if (step[0] == 'H') {
            shutdown(fd, SHUT_WR);
        } else if (step[0] == 'C') {
            close(fd);
            buf_free(&in);
            return NULL;
        }
    }
eof:
    buf_append(&f->got, in.data, in.len);
    buf_reset(&in);
    while (fake_recv(fd, &in) == 0) {
        buf_append(&f->got, in.data, in.len);
        buf_reset(&in);
    }
    buf_free(&in);
    close(fd);
    return NULL;
}

/* Starts a fake on 127.0.0.1:0 (or [::1]:0); -1 if that family is missing. */
static int fake_start_af(struct fake *f, const char *const *script, int af)
{
    memset(f, 0, sizeof *f);
    buf_init(&f->got, 0);
    f->script = script;
    f->lfd = socket(af, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (f->lfd < 0)
        return -1;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t sl;
    if (af == AF_INET) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sl = sizeof *s4;
    } else {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_addr = in6addr_loopback;
        sl = sizeof *s6;
    }
    if (bind(f->lfd, (struct sockaddr *)&ss, sl) < 0 || listen(f->lfd, 4) < 0 ||
        getsockname(f->lfd, (struct sockaddr *)&ss, &sl) < 0) {
        close(f->lfd);
        buf_free(&f->got);
        return -1;
    }
    if (af == AF_INET)
        snprintf(f->endpoint, sizeof f->endpoint, "127.0.0.1:%d",
                 ntohs(((struct sockaddr_in *)&ss)->sin_port));
    else
        snprintf(f->endpoint, sizeof f->endpoint, "[::1]:%d",
                 ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
    assert_int_equal(pthread_create(&f->th, NULL, fake_run, f), 0);
    return 0;
}

static void fake_start(struct fake *f, const char *const *script)
{
    assert_int_equal(fake_start_af(f, script, AF_INET), 0);
}

/* Waits for the fake to finish; f->got stays valid until fake_free(). */
static void fake_join(struct fake *f)
{
    pthread_join(f->th, NULL);
    close(f->lfd);
}

static void fake_free(struct fake *f)
{
    buf_free(&f->got);
}

static void check_got(struct fake *f, const char *want)
{
    fake_join(f);
    assert_string_equal(f->got.data != NULL ? f->got.data : "", want);
    fake_free(f);
}

#define GREET           "S220 s1.tern LMTP ready\r\n", "R1"
#define LHLO_FULL       "S250-s1.tern\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250 XDELIVERYID\r\n"
#define WANT_LHLO       "LHLO mta.test\r\n"
#define TIMEOUT_DEFAULT 3000

static struct lmtpc *conn(struct fake *f, unsigned timeout_ms)
{
    char err[256] = "";
    struct lmtpc *c = lmtpc_connect(f->endpoint, timeout_ms, "mta.test", err, sizeof err);
    if (c == NULL)
        fail_msg("connect: %s", err);
    return c;
}

static void check_reply(const struct lmtpc_reply *r, int code, const char *text)
{
    assert_int_equal(r->code, code);
    assert_string_equal(r->text, text);
}

static const char *const AB[] = {"a@x.org", "b@x.org"};

/* ---- deliveries ------------------------------------------------------------ */

static void test_deliver_pipelined(void **state)
{
    (void)state;
    static const char *const script[] = {
        GREET,
        LHLO_FULL,
        "R4",
        "S250 2.1.0 sender ok\r\n250 2.1.5 <a@x.org> recipient ok\r\n"
        "250 2.1.5 <b@x.org> recipient ok\r\n354 go ahead\r\n",
        "D",
        "S250 2.0.0 <a@x.org> delivered (uid 42)\r\n451 4.2.1 <b@x.org> moved to s2 epoch 7\r\n",
        NULL};
    struct fake f;
    fake_start(&f, script);
    struct lmtpc *c = conn(&f, TIMEOUT_DEFAULT);
    static const char msg[] = "Subject: t\r\n\r\n.hidden\r\nbody\r\n";
    struct lmtpc_reply rep[2];
    assert_int_equal(lmtpc_deliver(c, "s@x.org", "q1.1", AB, 2, msg, strlen(msg), rep), 0);
    check_reply(&rep[0], 250, "2.0.0 <a@x.org> delivered (uid 42)");
    check_reply(&rep[1], 451, "4.2.1 <b@x.org> moved to s2 epoch 7");
    char store[MAIL_NAME_MAX + 1];
    uint64_t epoch = 0;
    assert_int_equal(lmtpc_hint(rep[1].text, store, &epoch), 1);
    assert_string_equal(store, "s2");
    assert_int_equal(epoch, 7);
    lmtpc_close(&c);
    assert_null(c);
    check_got(&f, WANT_LHLO "MAIL FROM:<s@x.org> XDELIVERYID=q1.1\r\n"
                            "RCPT TO:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nDATA\r\n"
                            "Subject: t\r\n\r\n..hidden\r\nbody\r\n.\r\nQUIT\r\n");
}

static void test_rcpt_refused(void **state)
{
    (void)state;
    static const char *const script[] = {
        GREET, LHLO_FULL,
        "R4",  "S250 2.1.0 ok\r\n550 5.1.1 <a@x.org> user unknown\r\n250 2.1.5 ok\r\n354 go\r\n",
        "D",   "S250 2.0.0 <b@x.org> delivered (uid 7)\r\n",
        NULL};
    struct fake f;
    fake_start(&f, script);
    struct lmtpc *c = conn(&f, TIMEOUT_DEFAULT);
    struct lmtpc_reply rep[2];
    assert_int_equal(lmtpc_deliver(c, "s@x.org", "q1.2", AB, 2, "hi\r\n", 4, rep), 0);
    check_reply(&rep[0], 550, "5.1.1 <a@x.org> user unknown");
    check_reply(&rep[1], 250, "2.0.0 <b@x.org> delivered (uid 7)");
    lmtpc_close(&c);
    check_got(&f,
              WANT_LHLO "MAIL FROM:<s@x.org> XDELIVERYID=q1.2\r\n"
                        "RCPT TO:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n");
}

/* All refused: DATA gets 503, the client resets, and the connection is still
 * in step for the next delivery. */
static void test_all_refused(void **state)
{
    (void)state;
    static const char *const script[] = {
        GREET,
        LHLO_FULL,
        "R4",
        "S250 2.1.0 ok\r\n550 5.1.1 <a@x.org> user unknown\r\n"
        "451 4.2.1 <b@x.org> move in progress\r\n503 5.5.1 no valid recipients\r\n",
        "R1",
        "S250 2.0.0 ok\r\n",
        "R3",
        "S250 ok\r\n250 ok\r\n354 go\r\n",
        "D",
        "S250 2.0.0 done\r\n",
        NULL};
    struct fake f;
    fake_start(&f, script);
    struct lmtpc *c = conn(&f, TIMEOUT_DEFAULT);
    struct lmtpc_reply rep[2];
    assert_int_equal(lmtpc_deliver(c, "s@x.org", "q1", AB, 2, "x\r\n", 3, rep), 0);
    check_reply(&rep[0], 550, "5.1.1 <a@x.org> user unknown");
    check_reply(&rep[1], 451, "4.2.1 <b@x.org> move in progress");
    const char *const one[] = {"c@x.org"};
    assert_int_equal(lmtpc_deliver(c, "s@x.org", "q2", one, 1, "hi", 2, rep), 0);
    check_reply(&rep[0], 250, "2.0.0 done");
    lmtpc_close(&c);
    check_got(&f, WANT_LHLO "MAIL FROM:<s@x.org> XDELIVERYID=q1\r\n"
                            "RCPT TO:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nDATA\r\nRSET\r\n"
                            "MAIL FROM:<s@x.org> XDELIVERYID=q2\r\nRCPT TO:<c@x.org>\r\nDATA\r\n"
                            "hi\r\n.\r\nQUIT\r\n");
}

/* MAIL refused: every recipient gets its reply, the pipelined RCPT/DATA
 * answers are drained, no RSET, and the next delivery is in step. */
static void test_mail_refused(void **state)
{
    (void)state;
    static const char *const script[] = {
        GREET,
        LHLO_FULL,
        "R4",
        "S452 4.3.1 insufficient storage\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n"
        "503 5.5.1 need MAIL\r\n",
        "R3",
        "S250 ok\r\n250 ok\r\n354 go\r\n",
        "D",
        "S250 2.0.0 done\r\n",
        NULL};
    struct fake f;
    fake_start(&f, script);
    struct lmtpc *c = conn(&f, TIMEOUT_DEFAULT);
    struct lmtpc_reply rep[2];
    assert_int_equal(lmtpc_deliver(c, "", NULL, AB, 2, "x\r\n", 3, rep), 0);
    check_reply(&rep[0], 452, "4.3.1 insufficient storage");
    check_reply(&rep[1], 452, "4.3.1 insufficient storage");
    assert_int_equal(lmtpc_deliver(c, "", NULL, AB, 1, "x\r\n", 3, rep), 0);
    check_reply(&rep[0], 250, "2.0.0 done");
    lmtpc_close(&c);
    check_got(&f, WANT_LHLO "MAIL FROM:<>\r\nRCPT TO:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nDATA\r\n"
                            "MAIL FROM:<>\r\nRCPT TO:<a@x.org>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n");
}

/* Without PIPELINING (and XDELIVERYID): one command at a time, no DATA when
 * nothing was accepted, nothing after a refused MAIL. */
static void test_no_pipelining(void **state)
{
    (void)state;
    static const char *const script[] = {
        GREET, "S250-s1.tern\r\n250 8BITMIME\r\n",
        /* 1: a ok, b refused, c ok */
        "R1", "S250 ok\r\n", "R1", "S250 ok\r\n", "R1", "S550 5.1.1 <b@x.org> user unknown\r\n",
        "R1", "S250 ok\r\n", "R1", "S354 go\r\n", "D", "S250 2.0.0 a done\r\n250 2.0.0 c done\r\n",
        /* 2: the one recipient refused */
        "R1", "S250 ok\r\n", "R1", "S550 5.1.1 no\r\n", "R1", "S250 2.0.0 reset\r\n",
        /* 3: MAIL refused */
        "R1", "S451 4.3.0 try later\r\n", NULL};
    struct fake f;
    fake_start(&f, script);
    struct lmtpc *c = conn(&f, TIMEOUT_DEFAULT);
    const char *const abc[] = {"a@x.org", "b@x.org", "c@x.org"};
    struct lmtpc_reply rep[3];
    assert_int_equal(lmtpc_deliver(c, "s@x.org", "id1", abc, 3, ".x\r\n", 4, rep), 0);
    check_reply(&rep[0], 250, "2.0.0 a done");
    check_reply(&rep[1], 550, "5.1.1 <b@x.org> user unknown");
    check_reply(&rep[2], 250, "2.0.0 c done");
    assert_int_equal(lmtpc_deliver(c, "s@x.org", "id2", abc, 1, "y\r\n", 3, rep), 0);
    check_reply(&rep[0], 550, "5.1.1 no");
    assert_int_equal(lmtpc_deliver(c, "s@x.org", "id3", abc, 2, "z\r\n", 3, rep), 0);
    check_reply(&rep[0], 451, "4.3.0 try later");
    check_reply(&rep[1], 451, "4.3.0 try later");
    lmtpc_close(&c);
    check_got(&f, WANT_LHLO "MAIL FROM:<s@x.org>\r\nRCPT TO:<a@x.org>\r\nRCPT TO:<b@x.org>\r\n"
                            "RCPT TO:<c@x.org>\r\nDATA\r\n..x\r\n.\r\n"
                            "MAIL FROM:<s@x.org>\r\nRCPT TO:<a@x.org>\r\nRSET\r\n"
                            "MAIL FROM:<s@x.org>\r\nQUIT\r\n");
}

/* Multi-line replies keep the last line's text; an over-long line is cut to
 * LMTPC_REPLY_MAX but consumed whole; a bare "250" is a valid reply. */
static void test_multiline(void **state)
{
    (void)state;
    static char longreply[700];
    static char want_long[LMTPC_REPLY_MAX + 1];
    memset(want_long, 'y', LMTPC_REPLY_MAX);
    memcpy(want_long, "2.0.0 ", 6);
    want_long[LMTPC_REPLY_MAX] = '\0';
    struct buf lb;
    buf_init(&lb, 0);
    buf_puts(&lb, "S250 2.0.0 ");
    for (int i = 0; i < 600; i++)
        buf_puts(&lb, "y");
    buf_puts(&lb, "\r\n");
    assert_true(lb.len < sizeof longreply);
    memcpy(longreply, lb.data, lb.len + 1);
    buf_free(&lb);
    const char *const script[] = {GREET,
                                  "S250-s1.tern\r\n250-pipelining\r\n250 SIZE 1000\r\n",
                                  "R4",
                                  "S250-first\r\n250 2.1.0 ok\r\n451-4.2.1 note\r\n451 4.2.1 "
                                  "<a@x.org> moved to s2 epoch 7\r\n"
                                  "250 ok\r\n354 go\r\n",
                                  "D",
                                  longreply,
                                  "R3",
                                  "S250\r\n250-x\r\n250-y\r\n250 2.1.5 ok\r\n354 go\r\n",
                                  "D",
                                  "S250-2.0.0 one\r\n250 2.0.0 two\r\n",
                                  NULL};
    struct fake f;
    fake_start(&f, script);
    struct lmtpc *c = conn(&f, TIMEOUT_DEFAULT);
    struct lmtpc_reply rep[2];
    assert_int_equal(lmtpc_deliver(c, "s@x.org", "q", AB, 2, "m\r\n", 3, rep), 0);
    check_reply(&rep[0], 451, "4.2.1 <a@x.org> moved to s2 epoch 7");
    check_reply(&rep[1], 250, want_long);
    assert_int_equal(strlen(rep[1].text), LMTPC_REPLY_MAX);
    assert_int_equal(lmtpc_deliver(c, "s@x.org", "q", AB, 1, "m\r\n", 3, rep), 0);
    check_reply(&rep[0], 250, "2.0.0 two");
    lmtpc_close(&c);
    /* lowercase "pipelining" counts; XDELIVERYID was not advertised */
    check_got(&f,
              WANT_LHLO "MAIL FROM:<s@x.org>\r\nRCPT TO:<a@x.org>\r\nRCPT TO:<b@x.org>\r\n"
                        "DATA\r\nm\r\n.\r\n"
                        "MAIL FROM:<s@x.org>\r\nRCPT TO:<a@x.org>\r\nDATA\r\nm\r\n.\r\nQUIT\r\n");
}

/* A malformed reply line is a protocol error: -1, no answers, no QUIT. */
static void test_malformed_reply(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "S25x ok\r\n",   "S250ok\r\n",    "S25\r\n",      "S\r\n",
        "S150 wait\r\n", "S650 what\r\n", "S 250 ok\r\n", "S250-a\r\n251 b\r\n",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        const char *const script[] = {GREET, LHLO_FULL, "R3", bad[i], "H", NULL};
        struct fake f;
        fake_start(&f, script);
        struct lmtpc *c = conn(&f, TIMEOUT_DEFAULT);
        struct lmtpc_reply rep[1];
        rep[0].code = 99;
        assert_int_equal(lmtpc_deliver(c, "s@x.org", "q", AB, 1, "m\r\n", 3, rep), -1);
        assert_int_equal(rep[0].code, 0);
        /* a broken connection refuses further work at once */
        assert_int_equal(lmtpc_deliver(c, "s@x.org", "q", AB, 1, "m\r\n", 3, rep), -1);
        lmtpc_close(&c);
        check_got(&f, WANT_LHLO "MAIL FROM:<s@x.org> XDELIVERYID=q\r\nRCPT TO:<a@x.org>\r\n"
                                "DATA\r\n");
    }
}

static void test_close_mid_data(void **state)
{
    (void)state;
    static const char *const script[] = {
        GREET, LHLO_FULL, "R4", "S250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n", "C", NULL};
    struct fake f;
    fake_start(&f, script);
    struct lmtpc *c = conn(&f, TIMEOUT_DEFAULT);
    struct lmtpc_reply rep[2];
    assert_int_equal(lmtpc_deliver(c, "s@x.org", "q", AB, 2, "m\r\n", 3, rep), -1);
    assert_int_equal(rep[0].code, 0);
    assert_int_equal(rep[1].code, 0);
    lmtpc_close(&c);
    fake_join(&f);
    fake_free(&f);
}

static void test_close_after_first_reply(void **state)
{
    (void)state;
    static const char *const script[] = {GREET, LHLO_FULL,
                                         "R4",  "S250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n",
                                         "D",   "S250 2.0.0 <a@x.org> delivered (uid 1)\r\n",
                                         "C",   NULL};
    struct fake f;
    fake_start(&f, script);
    struct lmtpc *c = conn(&f, TIMEOUT_DEFAULT);
    struct lmtpc_reply rep[2];
    assert_int_equal(lmtpc_deliver(c, "s@x.org", "q", AB, 2, "m\r\n", 3, rep), -1);
    check_reply(&rep[0], 250, "2.0.0 <a@x.org> delivered (uid 1)");
    check_reply(&rep[1], 0, "");
    lmtpc_close(&c);
    fake_join(&f);
    fake_free(&f);
}

/* A server that stops answering: -1 after the timeout, not a hang. */
static void test_timeout(void **state)
{
    (void)state;
    static const char *const script[] = {GREET, LHLO_FULL, "R4", NULL};
    struct fake f;
    fake_start(&f, script);
    struct lmtpc *c = conn(&f, 300);
    struct lmtpc_reply rep[2];
    int64_t t0 = time_mono_ms();
    assert_int_equal(lmtpc_deliver(c, "s@x.org", "q", AB, 2, "m\r\n", 3, rep), -1);
    int64_t dt = time_mono_ms() - t0;
    assert_true(dt >= 250);
    assert_true(dt < 2000);
    assert_int_equal(rep[0].code, 0);
    assert_int_equal(rep[1].code, 0);
    lmtpc_close(&c);
    check_got(&f, WANT_LHLO "MAIL FROM:<s@x.org> XDELIVERYID=q\r\n"
                            "RCPT TO:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nDATA\r\n");
}

static void test_greeting_timeout(void **state)
{
    (void)state;
    static const char *const script[] = {NULL};
    struct fake f;
    fake_start(&f, script);
    char err[256] = "";
    int64_t t0 = time_mono_ms();
    struct lmtpc *c = lmtpc_connect(f.endpoint, 300, "mta.test", err, sizeof err);
    assert_null(c);
    assert_true(time_mono_ms() - t0 < 2000);
    assert_non_null(strstr(err, "timeout"));
    check_got(&f, "");
}

static void test_bad_greeting(void **state)
{
    (void)state;
    static const char *const script[] = {"S421 4.3.2 too many sessions\r\n", "H", NULL};
    struct fake f;
    fake_start(&f, script);
    char err[256] = "";
    struct lmtpc *c = lmtpc_connect(f.endpoint, TIMEOUT_DEFAULT, "mta.test", err, sizeof err);
    assert_null(c);
    assert_non_null(strstr(err, "421 4.3.2 too many sessions"));
    check_got(&f, "");
}

static void test_lhlo_refused(void **state)
{
    (void)state;
    static const char *const script[] = {GREET, "S500 5.5.1 what\r\n", NULL};
    struct fake f;
    fake_start(&f, script);
    char err[256] = "";
    assert_null(lmtpc_connect(f.endpoint, TIMEOUT_DEFAULT, "mta.test", err, sizeof err));
    assert_non_null(strstr(err, "500 5.5.1 what"));
    check_got(&f, WANT_LHLO);
}

/* The server closed a pooled connection (idle timeout): deliver fails
 * before sending anything, so a retry on a new connection is clean. */
static void test_stale_pooled(void **state)
{
    (void)state;
    static const char *const script[] = {GREET, LHLO_FULL, "S421 4.4.2 s1.tern idle timeout\r\n",
                                         "H", NULL};
    struct fake f;
    fake_start(&f, script);
    struct lmtpc *c = conn(&f, TIMEOUT_DEFAULT);
    usleep(100 * 1000);
    struct lmtpc_reply rep[2];
    assert_int_equal(lmtpc_deliver(c, "s@x.org", "q", AB, 2, "m\r\n", 3, rep), -1);
    assert_int_equal(rep[0].code, 0);
    assert_int_equal(rep[1].code, 0);
    lmtpc_close(&c);
    check_got(&f, WANT_LHLO);
}

static void test_connect_errors(void **state)
{
    (void)state;
    /* a port nobody listens on */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sin;
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sl), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
    close(fd);
    char ep[64];
    snprintf(ep, sizeof ep, "127.0.0.1:%d", ntohs(sin.sin_port));
    char err[256] = "";
    int64_t t0 = time_mono_ms();
    assert_null(lmtpc_connect(ep, TIMEOUT_DEFAULT, "mta.test", err, sizeof err));
    assert_true(time_mono_ms() - t0 < 2000);
    assert_true(strlen(err) > 0);
    assert_non_null(strstr(err, ep));

    static const char *const bad[] = {
        "localhost:2401",   "127.0.0.1", "127.0.0.1:0", "::1:2401",
        "[127.0.0.1]:2401", "[::1:2401", "1.2.3.4:x",   "",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        err[0] = '\0';
        assert_null(lmtpc_connect(bad[i], TIMEOUT_DEFAULT, "mta.test", err, sizeof err));
        assert_true(strlen(err) > 0);
    }
    err[0] = '\0';
    assert_null(lmtpc_connect(ep, TIMEOUT_DEFAULT, "bad\r\nhelo", err, sizeof err));
    assert_true(strlen(err) > 0);
    err[0] = '\0';
    assert_null(lmtpc_connect(ep, 0, "mta.test", err, sizeof err));
    assert_true(strlen(err) > 0);
}

static void test_ipv6(void **state)
{
    (void)state;
    static const char *const script[] = {GREET, LHLO_FULL, NULL};
    struct fake f;
    if (fake_start_af(&f, script, AF_INET6) < 0)
        skip();
    struct lmtpc *c = conn(&f, TIMEOUT_DEFAULT);
    lmtpc_close(&c);
    check_got(&f, WANT_LHLO "QUIT\r\n");
}

/* ---- hints ------------------------------------------------------------------ */

static void test_hint(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        int want;
        const char *store;
        uint64_t epoch;
    } cases[] = {
        {"4.2.1 <a@x.org> moved to s2 epoch 7", 1, "s2", 7},
        {"4.2.1 <a@x.org> moved to store_9-b epoch 18446744073709551615", 1, "store_9-b",
         UINT64_MAX},
        {"moved to s1 epoch 0", 1, "s1", 0},
        {"4.2.1 <a@x.org> moved to s2 epoch 7 (directory)", 1, "s2", 7},
        {"4.2.1 <a@x.org> move in progress", 2, NULL, 0},
        {"move in progress", 2, NULL, 0},
        {"2.0.0 <a@x.org> delivered (uid 42)", 0, NULL, 0},
        {"", 0, NULL, 0},
        {"4.2.1 <a@x.org> moved to s2 epoch", 0, NULL, 0},
        {"4.2.1 <a@x.org> moved to s2 epoch x7", 0, NULL, 0},
        {"4.2.1 <a@x.org> moved to s2 epoch 7x", 0, NULL, 0},
        {"4.2.1 <a@x.org> moved to s2 epoch -1", 0, NULL, 0},
        {"4.2.1 <a@x.org> moved to s2 epoch 18446744073709551616", 0, NULL, 0},
        {"4.2.1 <a@x.org> moved to s2 epoch 123456789012345678901", 0, NULL, 0},
        {"4.2.1 <a@x.org> moved to S2 epoch 7", 0, NULL, 0},
        {"4.2.1 <a@x.org> moved to s.2 epoch 7", 0, NULL, 0},
        {"4.2.1 <a@x.org> moved to  epoch 7", 0, NULL, 0},
        {"4.2.1 <a@x.org> moved to aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa epoch 7", 0, NULL, 0},
        {"4.2.1 <a@x.org> moved to aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa epoch 7", 1,
         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 7},
        {"4.2.1 <a@x.org> unmoved to s2 epoch 7", 0, NULL, 0},
        {"4.2.1 <a@x.org> move in progressive", 2, NULL, 0},
        {"4.2.1 <a@x.org> removal move in progress", 2, NULL, 0},
        {"4.2.1 <a@x.org> remove in progress", 0, NULL, 0},
        {"4.2.1 moved to S9 epoch 1, moved to s3 epoch 4", 1, "s3", 4},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char store[MAIL_NAME_MAX + 1] = "unset";
        uint64_t epoch = 12345;
        int got = lmtpc_hint(cases[i].text, store, &epoch);
        if (got != cases[i].want)
            fail_msg("case %zu \"%s\": got %d, want %d", i, cases[i].text, got, cases[i].want);
        if (got == 1) {
            assert_string_equal(store, cases[i].store);
            assert_int_equal(epoch, cases[i].epoch);
        } else {
            assert_string_equal(store, "unset");
            assert_int_equal(epoch, 12345);
        }
    }
}

int main(void)
{
    log_set_level(LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_deliver_pipelined),
        cmocka_unit_test(test_rcpt_refused),
        cmocka_unit_test(test_all_refused),
        cmocka_unit_test(test_mail_refused),
        cmocka_unit_test(test_no_pipelining),
        cmocka_unit_test(test_multiline),
        cmocka_unit_test(test_malformed_reply),
        cmocka_unit_test(test_close_mid_data),
        cmocka_unit_test(test_close_after_first_reply),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_greeting_timeout),
        cmocka_unit_test(test_bad_greeting),
        cmocka_unit_test(test_lhlo_refused),
        cmocka_unit_test(test_stale_pooled),
        cmocka_unit_test(test_connect_errors),
        cmocka_unit_test(test_ipv6),
        cmocka_unit_test(test_hint),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
