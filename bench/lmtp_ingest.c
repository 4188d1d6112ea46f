/*
 * lmtp_ingest — load generator for a tern store's LMTP endpoint.
 *
 *   lmtp_ingest --lmtp 127.0.0.1:2401 --rcpt user@example.org
 *               [--clients N] [--messages M] [--size BYTES] [--probe-dir DIR]
 *
 * N client threads each open one LMTP connection and deliver messages of
 * BYTES octets (default 4096) until M messages in total were acknowledged,
 * pipelining MAIL/RCPT/DATA and waiting for the per-recipient reply of each
 * message (as an MTA does). Every message carries a fresh XDELIVERYID. XSTATS
 * before and after gives deliveries and fsyncs done by the store, so the
 * output shows fsyncs per delivery (group commit at work). With --probe-dir,
 * it also measures this disk's raw rate of 4 KB append + fdatasync in one
 * thread, the ceiling a one-fsync-per-message design would hit.
 *
 * Prints one line: "RESULT clients=N msgs=M secs=S msg_per_s=R
 * fsyncs_per_msg=F raw_fsync_per_s=P".
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "smtp/smtp.h"
#include "util/util.h"

struct bench {
    char host[128];
    int port;
    const char *rcpt;
    unsigned clients;
    unsigned messages;
    size_t size;
    atomic_uint issued;
    atomic_uint done;
    atomic_uint failed;
    struct buf payload; /* dot-stuffed message incl. terminator */
};

static int dial(const struct bench *b)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)b->port)};
    if (inet_pton(AF_INET, b->host, &sin.sin_addr) != 1 ||
        connect(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

/* Reads one complete (possibly multi-line) reply; returns its code or -1. */
static int read_reply(int fd, char *line, size_t cap)
{
    size_t len = 0;
    for (;;) {
        char ch;
        ssize_t r = read(fd, &ch, 1);
        if (r <= 0)
            return -1;
        if (len + 1 < cap)
            line[len++] = ch;
        if (ch != '\n')
            continue;
        line[len] = '\0';
        if (len >= 4 && line[3] == '-') {
            len = 0;
            continue;
        }
        return atoi(line);
    }
}

static int send_all(int fd, const char *p, size_t n)
{
    return write_full(fd, p, n);
}

static long xstats(const struct bench *b, const char *key)
{
    int fd = dial(b);
    if (fd < 0)
        return -1;
    char line[512];
    long val = -1;
    read_reply(fd, line, sizeof(line));
    send_all(fd, "XSTATS\r\n", 8);
    size_t kl = strlen(key);
    /* Read the multi-line reply by hand to pick the key out. */
    char buf[4096];
    size_t len = 0;
    for (;;) {
        ssize_t r = read(fd, buf + len, sizeof(buf) - 1 - len);
        if (r <= 0)
            break;
        len += (size_t)r;
        buf[len] = '\0';
        if (strstr(buf, "250 ") != NULL)
            break;
    }
    for (char *p = buf; (p = strstr(p, "250-")) != NULL; p += 4)
        if (strncmp(p + 4, key, kl) == 0 && p[4 + kl] == ' ')
            val = atol(p + 5 + kl);
    send_all(fd, "QUIT\r\n", 6);
    close(fd);
    return val;
}

static void *client(void *arg)
{
    struct bench *b = arg;
    int fd = dial(b);
    char line[1024];
    if (fd < 0 || read_reply(fd, line, sizeof(line)) != 220) {
        fprintf(stderr, "lmtp_ingest: cannot connect to %s:%d\n", b->host, b->port);
        atomic_fetch_add(&b->failed, 1);
        return NULL;
    }
    send_all(fd, "LHLO bench\r\n", 12);
    if (read_reply(fd, line, sizeof(line)) != 250)
        goto fail;
    for (;;) {
        unsigned n = atomic_fetch_add(&b->issued, 1);
        if (n >= b->messages)
            break;
        char cmd[600], id[40];
        rand_bytes(id, 8);
        char hex[17];
        hex_encode(id, 8, hex);
        int cl =
            snprintf(cmd, sizeof(cmd),
                     "MAIL FROM:<bench@example.net> XDELIVERYID=%s\r\nRCPT TO:<%s>\r\nDATA\r\n",
                     hex, b->rcpt);
        if (send_all(fd, cmd, (size_t)cl) < 0)
            goto fail;
        if (read_reply(fd, line, sizeof(line)) != 250 ||
            read_reply(fd, line, sizeof(line)) != 250 || read_reply(fd, line, sizeof(line)) != 354)
            goto fail;
        if (send_all(fd, b->payload.data, b->payload.len) < 0)
            goto fail;
        if (read_reply(fd, line, sizeof(line)) != 250)
            goto fail;
        atomic_fetch_add(&b->done, 1);
    }
    send_all(fd, "QUIT\r\n", 6);
    close(fd);
    return NULL;
fail:
    fprintf(stderr, "lmtp_ingest: unexpected reply: %s", line);
    atomic_fetch_add(&b->failed, 1);
    close(fd);
    return NULL;
}

/* Raw disk ceiling: 4 KB append + fdatasync in one thread for ~2 s. */
static double probe_fsync(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/.fsync-probe", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return -1;
    char block[4096];
    memset(block, 'x', sizeof(block));
    int64_t start = time_mono_ms();
    unsigned n = 0;
    while (time_mono_ms() - start < 2000) {
        if (write_full(fd, block, sizeof(block)) < 0 || fdatasync(fd) < 0)
            break;
        n++;
    }
    double secs = (double)(time_mono_ms() - start) / 1000.0;
    close(fd);
    unlink(path);
    return n / secs;
}

int main(int argc, char **argv)
{
    struct bench b = {.clients = 1, .messages = 2000, .size = 4096};
    const char *lmtp = "127.0.0.1:2401", *probe = NULL;
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL)
            goto usage;
        if (strcmp(a, "--lmtp") == 0)
            lmtp = v;
        else if (strcmp(a, "--rcpt") == 0)
            b.rcpt = v;
        else if (strcmp(a, "--clients") == 0)
            b.clients = (unsigned)atoi(v);
        else if (strcmp(a, "--messages") == 0)
            b.messages = (unsigned)atoi(v);
        else if (strcmp(a, "--size") == 0)
            b.size = (size_t)atol(v);
        else if (strcmp(a, "--probe-dir") == 0)
            probe = v;
        else
            goto usage;
    }
    if (b.rcpt == NULL || b.clients == 0 || b.clients > 1024 ||
        parse_hostport(lmtp, b.host, sizeof(b.host), &b.port) < 0)
        goto usage;

    /* A plausible message: headers, then lines of text up to size. */
    struct buf msg;
    buf_init(&msg, 0);
    buf_printf(&msg, "From: bench@example.net\r\nTo: %s\r\nSubject: lmtp_ingest\r\n\r\n", b.rcpt);
    while (msg.len + 80 < b.size)
        buf_puts(&msg,
                 "The quick brown fox jumps over the lazy dog, again and again and again.\r\n");
    buf_init(&b.payload, 0);
    smtp_dot_stuff(msg.data, msg.len, &b.payload);
    buf_free(&msg);

    long d0 = xstats(&b, "deliveries"), f0 = xstats(&b, "fsyncs");
    if (d0 < 0 || f0 < 0) {
        fprintf(stderr, "lmtp_ingest: cannot read XSTATS from %s\n", lmtp);
        return 1;
    }
    pthread_t *th = xcalloc(b.clients, sizeof(*th));
    int64_t start = time_mono_ms();
    for (unsigned i = 0; i < b.clients; i++)
        pthread_create(&th[i], NULL, client, &b);
    for (unsigned i = 0; i < b.clients; i++)
        pthread_join(th[i], NULL);
    double secs = (double)(time_mono_ms() - start) / 1000.0;
    long d1 = xstats(&b, "deliveries"), f1 = xstats(&b, "fsyncs");
    unsigned done = atomic_load(&b.done);
    double raw = probe != NULL ? probe_fsync(probe) : -1;
    printf("RESULT clients=%u msgs=%u secs=%.2f msg_per_s=%.0f fsyncs_per_msg=%.3f "
           "raw_fsync_per_s=%.0f failed=%u\n",
           b.clients, done, secs, done / secs,
           d1 > d0 ? (double)(f1 - f0) / (double)(d1 - d0) : 0.0, raw, atomic_load(&b.failed));
    free(th);
    buf_free(&b.payload);
    return atomic_load(&b.failed) == 0 && done == b.messages ? 0 : 1;
usage:
    fprintf(stderr, "usage: lmtp_ingest --rcpt ADDR [--lmtp HOST:PORT] [--clients N] "
                    "[--messages M] [--size BYTES] [--probe-dir DIR]\n");
    return 2;
}
