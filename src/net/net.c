/* net — see net.h. The only file in tern that includes libevent. */
#include "net/net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "util/util.h"

#define PRIO_IO       0
#define PRIO_TASK     1
#define RATE_GRACE_MS 10000

#define NET_SIGNALS_MAX 8

struct sig_ctx {
    void (*cb)(void *ctx);
    void *ctx;
    struct event *ev;
};

struct net_loop {
    struct event_base *base;
    struct sig_ctx *sigs[NET_SIGNALS_MAX];
    unsigned n_sigs;
};

struct net_listener {
    struct net_loop *loop;
    struct evconnlistener *lev;
    struct net_conn_handler h;
    void *ctx;
    struct net_conn_limits limits;
    unsigned n_conns;
    struct net_conn *conns; /* open connections, to close at net_listener_free */
};

struct net_conn {
    struct net_listener *l;
    struct net_conn *prev, *next; /* on l->conns */
    struct bufferevent *bev;
    struct event *timer;   /* idle / deadline / rate */
    struct event *closer;  /* deferred free */
    struct event *drainer; /* net_conn_when_drained: already below */
    void (*drain_cb)(struct net_conn *c, void *ctx);
    size_t drain_below;
    void *ctx;
    char peer[64];
    int64_t started_ms;
    int64_t last_read_ms;
    int64_t rate_start_ms;
    uint64_t rate_bytes;
    bool rate_on;
    bool paused;
    bool closing;
};

struct net_task {
    struct event *ev;
    void (*cb)(void *ctx);
    void *ctx;
    bool scheduled;
};

struct net_loop *net_loop_new(void)
{
    struct net_loop *loop = xmalloc(sizeof(*loop));
    /* SIGPIPE from a peer that closed must not kill a role. */
    signal(SIGPIPE, SIG_IGN);
    loop->base = event_base_new();
    if (loop->base == NULL)
        fatal("event_base_new failed");
    if (event_base_priority_init(loop->base, 2) < 0)
        fatal("event_base_priority_init failed");
    return loop;
}

void net_loop_free(struct net_loop **loopp)
{
    struct net_loop *loop = *loopp;
    if (loop == NULL)
        return;
    for (unsigned i = 0; i < loop->n_sigs; i++) {
        event_free(loop->sigs[i]->ev);
        free(loop->sigs[i]);
    }
    event_base_free(loop->base);
    xfree(loopp);
}

int net_loop_run(struct net_loop *loop)
{
    return event_base_dispatch(loop->base) < 0 ? -1 : 0;
}

void net_loop_stop(struct net_loop *loop)
{
    event_base_loopbreak(loop->base);
}

static void signal_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct sig_ctx *s = arg;
    s->cb(s->ctx);
}

int net_loop_on_signal(struct net_loop *loop, int signo, void (*cb)(void *ctx), void *ctx)
{
    /* Few and fixed per role; net_loop_free() frees them. */
    if (loop->n_sigs == NET_SIGNALS_MAX)
        return -1;
    struct sig_ctx *s = xmalloc(sizeof(*s));
    s->cb = cb;
    s->ctx = ctx;
    s->ev = evsignal_new(loop->base, signo, signal_cb, s);
    if (s->ev == NULL || event_add(s->ev, NULL) < 0) {
        if (s->ev != NULL)
            event_free(s->ev);
        free(s);
        return -1;
    }
    loop->sigs[loop->n_sigs++] = s;
    return 0;
}

/* ---- connections ------------------------------------------------------ */

static void conn_free(struct net_conn *c)
{
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        c->l->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    c->l->n_conns--;
    if (c->l->h.on_close != NULL)
        c->l->h.on_close(c, c->ctx);
    bufferevent_free(c->bev);
    event_free(c->timer);
    event_free(c->closer);
    event_free(c->drainer);
    free(c);
}

static void closer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn_free(arg);
}

static void conn_finish_soon(struct net_conn *c)
{
    event_active(c->closer, EV_TIMEOUT, 0);
}

static void conn_arm_timer(struct net_conn *c)
{
    const struct net_conn_limits *lim = &c->l->limits;
    int64_t now = time_mono_ms();
    /* 0 means "no such limit": never a due time of now (that would spin). */
    int64_t due = lim->deadline_ms > 0 ? c->started_ms + lim->deadline_ms : INT64_MAX;
    if (!c->paused && lim->idle_ms > 0 && c->last_read_ms + lim->idle_ms < due)
        due = c->last_read_ms + lim->idle_ms;
    if (due == INT64_MAX && !(c->rate_on && lim->min_rate > 0)) {
        event_del(c->timer);
        return;
    }
    if (c->rate_on && lim->min_rate > 0) {
        /* Re-check the rate every second while it is on. */
        if (now + 1000 < due)
            due = now + 1000;
    }
    int64_t wait = due - now;
    if (wait < 0)
        wait = 0;
    struct timeval tv = {.tv_sec = (time_t)(wait / 1000),
                         .tv_usec = (suseconds_t)(wait % 1000) * 1000};
    event_add(c->timer, &tv);
}

static void conn_timeout(struct net_conn *c, const char *why)
{
    if (c->closing)
        return;
    log_info(c->peer, "closing connection: %s", why);
    if (c->l->h.on_timeout != NULL)
        c->l->h.on_timeout(c, c->ctx, why);
    net_conn_close(c);
}

/* Returns true when the connection is too slow now. */
static bool conn_too_slow(struct net_conn *c, int64_t now)
{
    const struct net_conn_limits *lim = &c->l->limits;
    if (!c->rate_on || lim->min_rate == 0)
        return false;
    int64_t elapsed = now - c->rate_start_ms;
    if (elapsed < RATE_GRACE_MS)
        return false;
    return c->rate_bytes * 1000 < (uint64_t)elapsed * lim->min_rate;
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct net_conn *c = arg;
    const struct net_conn_limits *lim = &c->l->limits;
    int64_t now = time_mono_ms();
    if (c->closing)
        return;
    if (lim->deadline_ms > 0 && now >= c->started_ms + lim->deadline_ms) {
        conn_timeout(c, "deadline");
        return;
    }
    if (!c->paused && lim->idle_ms > 0 && now >= c->last_read_ms + lim->idle_ms) {
        conn_timeout(c, "idle");
        return;
    }
    if (conn_too_slow(c, now)) {
        conn_timeout(c, "too slow");
        return;
    }
    conn_arm_timer(c);
}

/* Offers buffered input to the handler until it is all consumed, the
 * handler pauses, or the connection is closing. */
static void conn_pump(struct net_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    while (!c->paused && !c->closing) {
        size_t len = evbuffer_get_length(in);
        if (len == 0)
            break;
        const char *p = (const char *)evbuffer_pullup(in, -1);
        size_t used = c->l->h.on_data(c, c->ctx, p, len);
        if (used > len)
            panic("net: handler consumed %zu of %zu bytes", used, len);
        evbuffer_drain(in, used);
        if (used == 0)
            break;
    }
}

static void read_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    struct net_conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    int64_t now = time_mono_ms();
    size_t before = evbuffer_get_length(in);
    c->last_read_ms = now;
    c->rate_bytes += before;
    conn_pump(c);
    if (c->closing)
        return;
    if (conn_too_slow(c, now)) {
        conn_timeout(c, "too slow");
        return;
    }
    conn_arm_timer(c);
}

/* Stops waiting for the output to drain: the write watermark and the
 * write timeout go back to their defaults (called back when empty; none). */
static void conn_drain_reset(struct net_conn *c)
{
    c->drain_cb = NULL;
    bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
    bufferevent_set_timeouts(c->bev, NULL, NULL);
}

/* While output waits for the peer: no progress for idle_ms ends the
 * connection (event_cb). */
static void conn_write_timeout(struct net_conn *c)
{
    unsigned idle = c->l->limits.idle_ms;
    if (idle == 0)
        return;
    struct timeval tv = {.tv_sec = (time_t)(idle / 1000),
                         .tv_usec = (suseconds_t)(idle % 1000) * 1000};
    bufferevent_set_timeouts(c->bev, NULL, &tv);
}

/* Calls a pending net_conn_when_drained() callback if the output is low. */
static void conn_check_drained(struct net_conn *c)
{
    if (c->drain_cb == NULL || c->closing ||
        evbuffer_get_length(bufferevent_get_output(c->bev)) > c->drain_below)
        return;
    void (*cb)(struct net_conn *, void *) = c->drain_cb;
    conn_drain_reset(c);
    cb(c, c->ctx);
}

static void drainer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn_check_drained(arg);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    struct net_conn *c = arg;
    /* Called when the output went down to the write low watermark: 0
     * unless a drain wait raised it. A closing connection ends once the
     * output is empty. */
    if (c->closing) {
        if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
            conn_finish_soon(c);
        else
            bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
        return;
    }
    conn_check_drained(c);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    struct net_conn *c = arg;
    if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_WRITING)) {
        /* Set while a drain wait is pending or a close waits for the output
         * to go: the peer took nothing for idle_ms. No last reply: it would
         * not be read either. */
        log_info(c->peer, "closing connection: the peer reads nothing");
        c->closing = true;
        bufferevent_disable(c->bev, EV_READ | EV_WRITE);
        event_del(c->timer);
        conn_finish_soon(c);
        return;
    }
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        if (!c->closing) {
            c->closing = true;
            bufferevent_disable(c->bev, EV_READ | EV_WRITE);
        }
        conn_finish_soon(c);
    }
}

static void accept_cb(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    (void)lev;
    (void)salen;
    struct net_listener *l = arg;
    struct event_base *base = l->loop->base;
    struct net_conn *c = xmalloc(sizeof(*c));
    c->l = l;
    /* Replies are whole when written (an evbuffer gathers them), so Nagle's
     * algorithm would only hold the tail of one back until the peer's
     * delayed ACK: tens of ms per round trip of a pipelining client. */
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (c->bev == NULL) {
        evutil_closesocket(fd);
        free(c);
        return;
    }
    bufferevent_priority_set(c->bev, PRIO_IO);
    c->timer = evtimer_new(base, timer_cb, c);
    c->closer = event_new(base, -1, 0, closer_cb, c);
    event_priority_set(c->closer, PRIO_IO);
    c->drainer = event_new(base, -1, 0, drainer_cb, c);
    event_priority_set(c->drainer, PRIO_IO);
    c->drain_cb = NULL;
    if (sa->sa_family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)sa;
        char ip[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
        snprintf(c->peer, sizeof(c->peer), "%s:%u", ip, ntohs(sin->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)sa;
        char ip[INET6_ADDRSTRLEN];
        inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
        snprintf(c->peer, sizeof(c->peer), "[%s]:%u", ip, ntohs(sin6->sin6_port));
    } else {
        str_copy(c->peer, "unknown", sizeof(c->peer));
    }
    c->started_ms = c->last_read_ms = time_mono_ms();
    l->n_conns++;
    c->prev = NULL;
    c->next = l->conns;
    if (l->conns != NULL)
        l->conns->prev = c;
    l->conns = c;
    bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
    bufferevent_setwatermark(c->bev, EV_READ, 0, NET_READ_MAX);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    c->ctx = l->h.on_accept(c, l->ctx);
    if (c->ctx == NULL) {
        net_conn_close(c);
        return;
    }
    conn_arm_timer(c);
}

struct net_listener *net_listen(struct net_loop *loop, const char *endpoint,
                                const struct net_conn_handler *h, void *ctx,
                                const struct net_conn_limits *limits, const char **error_r)
{
    char host[128];
    int port;
    if (parse_hostport(endpoint, host, sizeof(host), &port) < 0) {
        *error_r = "malformed HOST:PORT";
        return NULL;
    }
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    socklen_t sl;
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        sl = sizeof(*sin);
    } else if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        sl = sizeof(*sin6);
    } else {
        *error_r = "listen address must be a numeric IPv4 or IPv6 address";
        return NULL;
    }
    struct net_listener *l = xmalloc(sizeof(*l));
    l->loop = loop;
    l->h = *h;
    l->ctx = ctx;
    l->limits = *limits;
    l->lev = evconnlistener_new_bind(
        loop->base, accept_cb, l, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
        512, (struct sockaddr *)&ss, (int)sl);
    if (l->lev == NULL) {
        *error_r = errno == EADDRINUSE ? "address already in use" : "cannot listen";
        free(l);
        return NULL;
    }
    return l;
}

void net_listener_free(struct net_listener **lp)
{
    struct net_listener *l = *lp;
    if (l == NULL)
        return;
    /* Connections still open (a role stopping) end here, each through its
     * on_close, so their sessions are freed with them. */
    while (l->conns != NULL)
        conn_free(l->conns);
    evconnlistener_free(l->lev);
    xfree(lp);
}

void net_conn_write(struct net_conn *c, const void *p, size_t n)
{
    bufferevent_write(c->bev, p, n);
}

size_t net_conn_output_len(const struct net_conn *c)
{
    return evbuffer_get_length(bufferevent_get_output(c->bev));
}

void net_conn_when_drained(struct net_conn *c, size_t below,
                           void (*cb)(struct net_conn *c, void *ctx))
{
    if (c->closing)
        return;
    conn_drain_reset(c);
    event_del(c->drainer);
    if (cb == NULL)
        return;
    c->drain_cb = cb;
    c->drain_below = below;
    if (net_conn_output_len(c) <= below) {
        event_active(c->drainer, EV_TIMEOUT, 0);
        return;
    }
    /* write_cb runs once the output is down to `below`. */
    bufferevent_setwatermark(c->bev, EV_WRITE, below, 0);
    conn_write_timeout(c);
}

void net_conn_close(struct net_conn *c)
{
    if (c->closing)
        return;
    conn_drain_reset(c);
    event_del(c->drainer);
    c->closing = true;
    bufferevent_disable(c->bev, EV_READ);
    event_del(c->timer);
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        conn_finish_soon(c);
    else /* write_cb finishes once the output has drained, or the timeout */
        conn_write_timeout(c);
}

void net_conn_pause(struct net_conn *c)
{
    if (c->paused)
        return;
    c->paused = true;
    bufferevent_disable(c->bev, EV_READ);
}

void net_conn_resume(struct net_conn *c)
{
    if (!c->paused || c->closing)
        return;
    c->paused = false;
    c->last_read_ms = time_mono_ms();
    bufferevent_enable(c->bev, EV_READ);
    /* Input may already be buffered (pipelining): offer it now. */
    conn_pump(c);
    if (!c->closing)
        conn_arm_timer(c);
}

void net_conn_rate_check(struct net_conn *c, bool on)
{
    c->rate_on = on;
    c->rate_start_ms = time_mono_ms();
    c->rate_bytes = 0;
}

const char *net_conn_peer(const struct net_conn *c)
{
    return c->peer;
}

unsigned net_conn_siblings(const struct net_conn *c)
{
    return c->l->n_conns;
}

/* ---- tasks ------------------------------------------------------------ */

static void task_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct net_task *t = arg;
    t->scheduled = false;
    t->cb(t->ctx);
}

struct net_task *net_task_new(struct net_loop *loop, void (*cb)(void *ctx), void *ctx)
{
    struct net_task *t = xmalloc(sizeof(*t));
    t->ev = event_new(loop->base, -1, 0, task_cb, t);
    event_priority_set(t->ev, PRIO_TASK);
    t->cb = cb;
    t->ctx = ctx;
    return t;
}

void net_task_schedule(struct net_task *t)
{
    if (t->scheduled)
        return;
    t->scheduled = true;
    event_active(t->ev, EV_TIMEOUT, 0);
}

void net_task_schedule_in(struct net_task *t, unsigned ms)
{
    if (t->scheduled)
        return;
    t->scheduled = true;
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    event_add(t->ev, &tv);
}

void net_task_free(struct net_task **tp)
{
    struct net_task *t = *tp;
    if (t == NULL)
        return;
    event_free(t->ev);
    xfree(tp);
}
