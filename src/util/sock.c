/* sock — the blocking TCP client of util.h ("blocking TCP client"). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "util/sock_private.h"
#include "util/util.h"

static void set_err(char *err, size_t errlen, const char *fmt, ...) TERN_PRINTF(3, 4);

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static void set_why_errno(struct sock *s, const char *what)
{
    snprintf(s->why, sizeof s->why, "%s: %s", what, strerror(errno));
}

static int connect_fd(const char *endpoint, unsigned timeout_ms, char *err, size_t errlen)
{
    char host[64];
    int port;
    struct sockaddr_storage ss;
    socklen_t sl;
    memset(&ss, 0, sizeof ss);
    if (parse_hostport(endpoint, host, sizeof host, &port) < 0) {
        set_err(err, errlen, "%s: not HOST:PORT or [V6]:PORT", endpoint);
        return -1;
    }
    if (endpoint[0] == '[') {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        if (inet_pton(AF_INET6, host, &s6->sin6_addr) != 1) {
            set_err(err, errlen, "%s: not a numeric IPv6 address", endpoint);
            return -1;
        }
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        sl = sizeof *s6;
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        if (inet_pton(AF_INET, host, &s4->sin_addr) != 1) {
            set_err(err, errlen, "%s: not a numeric IPv4 address", endpoint);
            return -1;
        }
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        sl = sizeof *s4;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        set_err(err, errlen, "%s: socket: %s", endpoint, strerror(errno));
        return -1;
    }
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&ss, sl) == 0)
        return fd;
    if (errno != EINPROGRESS && errno != EINTR) {
        set_err(err, errlen, "%s: connect: %s", endpoint, strerror(errno));
        close(fd);
        return -1;
    }
    int64_t deadline = time_mono_ms() + timeout_ms;
    for (;;) {
        int64_t left = deadline - time_mono_ms();
        if (left <= 0) {
            set_err(err, errlen, "%s: connect: timeout", endpoint);
            close(fd);
            return -1;
        }
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int r = poll(&p, 1, (int)left);
        if (r > 0)
            break;
        if (r < 0 && errno != EINTR) {
            set_err(err, errlen, "%s: poll: %s", endpoint, strerror(errno));
            close(fd);
            return -1;
        }
    }
    int soerr = 0;
    socklen_t el = sizeof soerr;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &el) < 0 || soerr != 0) {
        set_err(err, errlen, "%s: connect: %s", endpoint, strerror(soerr != 0 ? soerr : errno));
        close(fd);
        return -1;
    }
    return fd;
}

struct sock *sock_connect(const char *endpoint, unsigned timeout_ms, char *err, size_t errlen)
{
    int fd = connect_fd(endpoint, timeout_ms, err, errlen);
    if (fd < 0)
        return NULL;
    struct sock *s = xmalloc(sizeof *s);
    s->fd = fd;
    s->timeout_ms = timeout_ms;
    return s;
}

void sock_close(struct sock **sp)
{
    struct sock *s = *sp;
    if (s == NULL)
        return;
    tls_free(&s->tls);
    close(s->fd);
    xfree(sp);
}

int sock_wait_fd(struct sock *s, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - time_mono_ms();
        if (left <= 0) {
            str_copy(s->why, "timeout", sizeof s->why);
            return -1;
        }
        struct pollfd p = {.fd = s->fd, .events = events};
        int r = poll(&p, 1, (int)left);
        if (r > 0)
            return 0; /* ready, or an error the next recv/send reports */
        if (r < 0 && errno != EINTR) {
            set_why_errno(s, "poll");
            return -1;
        }
    }
}

int sock_send(struct sock *s, const void *p, size_t n)
{
    const char *d = p;
    while (n > 0) {
        if (s->tls != NULL) {
            short want = 0;
            ssize_t r = tls_write(s->tls, d, n, &want, s->why, sizeof s->why);
            if (r > 0) {
                d += r;
                n -= (size_t)r;
            } else if (want == 0 || sock_wait_fd(s, want, time_mono_ms() + s->timeout_ms) < 0) {
                return -1;
            }
            continue;
        }
        ssize_t r = send(s->fd, d, n, MSG_NOSIGNAL);
        if (r > 0) {
            d += r;
            n -= (size_t)r;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (sock_wait_fd(s, POLLOUT, time_mono_ms() + s->timeout_ms) < 0)
                return -1;
            continue;
        }
        set_why_errno(s, "send");
        return -1;
    }
    return 0;
}

void sock_send_nowait(struct sock *s, const void *p, size_t n)
{
    if (s->tls != NULL) {
        /* One attempt; a record the socket cannot take now is dropped with
         * the connection. */
        short want = 0;
        char why[160];
        (void)tls_write(s->tls, p, n, &want, why, sizeof why);
        return;
    }
    (void)send(s->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
}

/* Refills the (empty) read buffer by deadline. */
static int fill(struct sock *s, int64_t deadline)
{
    s->rpos = s->rend = 0;
    for (;;) {
        if (s->tls != NULL) {
            short want = 0;
            ssize_t r = tls_read(s->tls, s->rbuf, sizeof s->rbuf, &want, s->why, sizeof s->why);
            if (r > 0) {
                s->rend = (size_t)r;
                return 0;
            }
            if (r == 0) {
                str_copy(s->why, "connection closed by the server", sizeof s->why);
                return -1;
            }
            if (want == 0 || sock_wait_fd(s, want, deadline) < 0)
                return -1;
            continue;
        }
        ssize_t r = recv(s->fd, s->rbuf, sizeof s->rbuf, 0);
        if (r > 0) {
            s->rend = (size_t)r;
            return 0;
        }
        if (r == 0) {
            str_copy(s->why, "connection closed by the server", sizeof s->why);
            return -1;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            set_why_errno(s, "recv");
            return -1;
        }
        if (sock_wait_fd(s, POLLIN, deadline) < 0)
            return -1;
    }
}

int sock_read_line_until(struct sock *s, int64_t deadline, char *line, size_t cap, size_t *len_r)
{
    size_t len = 0;
    bool cut = false;
    char last = '\0'; /* the last byte before the LF, kept or not */
    for (;;) {
        if (s->rpos == s->rend && fill(s, deadline) < 0)
            return -1;
        const char *start = s->rbuf + s->rpos;
        size_t avail = s->rend - s->rpos;
        const char *nl = memchr(start, '\n', avail);
        size_t take = nl != NULL ? (size_t)(nl - start) : avail;
        if (take > 0)
            last = start[take - 1];
        size_t k = take < cap - 1 - len ? take : cap - 1 - len;
        if (k < take)
            cut = true;
        memcpy(line + len, start, k);
        len += k;
        s->rpos += take;
        if (nl != NULL) {
            s->rpos++;
            break;
        }
    }
    if (last != '\r') {
        str_copy(s->why, "line not ended by CRLF", sizeof s->why);
        return -1;
    }
    if (len > 0 && line[len - 1] == '\r')
        len--;
    line[len] = '\0';
    *len_r = len;
    return cut ? 1 : 0;
}

int sock_read_line(struct sock *s, char *line, size_t cap, size_t *len_r)
{
    return sock_read_line_until(s, time_mono_ms() + s->timeout_ms, line, cap, len_r);
}

/* Reads exactly n bytes into raw, or appended to b if not NULL. */
static int read_exact(struct sock *s, void *raw, struct buf *b, size_t n)
{
    char *d = raw;
    while (n > 0) {
        if (s->rpos == s->rend && fill(s, time_mono_ms() + s->timeout_ms) < 0)
            return -1;
        size_t avail = s->rend - s->rpos;
        size_t take = avail < n ? avail : n;
        if (b == NULL) {
            memcpy(d, s->rbuf + s->rpos, take);
            d += take;
        } else if (buf_append(b, s->rbuf + s->rpos, take) < 0) {
            str_copy(s->why, "data larger than the buffer allows", sizeof s->why);
            return -1;
        }
        s->rpos += take;
        n -= take;
    }
    return 0;
}

int sock_read_exact(struct sock *s, void *p, size_t n)
{
    return read_exact(s, p, NULL, n);
}

int sock_read_buf(struct sock *s, struct buf *b, size_t n)
{
    return read_exact(s, NULL, b, n);
}

bool sock_readable_now(struct sock *s)
{
    if (s->rpos < s->rend || (s->tls != NULL && tls_pending(s->tls)))
        return true;
    struct pollfd p = {.fd = s->fd, .events = POLLIN};
    return poll(&p, 1, 0) > 0;
}

int sock_wait_readable(struct sock *s, int other_fd, int ms)
{
    if (sock_readable_now(s))
        return 1;
    int64_t deadline = time_mono_ms() + ms;
    for (;;) {
        struct pollfd p[2] = {{.fd = s->fd, .events = POLLIN}, {.fd = other_fd, .events = POLLIN}};
        int64_t left = deadline - time_mono_ms();
        int r = poll(p, other_fd >= 0 ? 2 : 1, left > 0 ? (int)left : 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(s->why, sizeof(s->why), "poll: %s", strerror(errno));
            return -1;
        }
        if (r == 0)
            return 0;
        return p[0].revents != 0 ? 1 : 2;
    }
}

const char *sock_why(const struct sock *s)
{
    return s->why;
}
