/*
 * net — tern's small wrapper around libevent 2 for servers: a loop, TCP
 * listeners, connections with enforced time limits, deferred tasks and
 * signals. libevent's types never leave this module.
 *
 * Connections. Bytes that arrive are handed to on_data() as contiguous
 * chunks; it returns how many it consumed (the rest stays buffered and is
 * offered again). Protocol engines enforce their own size limits (see
 * smtp.h), so nothing here buffers without bound: while a handler has
 * paused a connection (net_conn_pause), the socket is not read at all, and
 * at most NET_READ_MAX octets wait in user space.
 *
 * Time limits, each closing the connection after on_timeout() had the chance
 * to write a last reply (e.g. "421 4.4.2 ..."):
 *   - idle: no byte received for idle_ms while not paused;
 *   - deadline: the whole session lasted deadline_ms;
 *   - min rate: once rate checking is on (net_conn_rate_check), fewer than
 *     min_rate octets/s averaged since it was switched on, after a 10 s grace.
 * A slow-drip peer that sends one byte a second defeats an idle timeout but
 * not the deadline or the rate check.
 *
 * Output and backpressure. net_conn_write() queues without limit; a handler
 * that produces a long reply (a listing) keeps its memory bounded by asking
 * net_conn_when_drained() to call it back once the queued output has gone
 * down to a bound, and producing the next piece only then. While such a
 * wait is pending, and while a closed connection waits for its last output
 * to leave, a peer that takes none of it for idle_ms is cut off (closed at
 * once, without on_timeout: it reads nothing anyway).
 *
 * Ownership: a struct net_conn is owned by the loop; the handler's context
 * pointer is owned by the handler and must be freed in on_close(), after
 * which the connection is gone. Everything runs on the loop's one thread.
 */
#ifndef TERN_NET_H
#define TERN_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NET_READ_MAX (256 * 1024)

struct net_loop;
struct net_listener;
struct net_conn;
struct net_task;

struct net_conn_limits {
    unsigned idle_ms;
    unsigned deadline_ms;
    unsigned min_rate; /* octets/s; 0 = off */
};

struct net_conn_handler {
    /* A new connection; return the per-connection context (or NULL to
     * refuse: the connection is closed at once). */
    void *(*on_accept)(struct net_conn *c, void *listener_ctx);
    /* Returns the number of bytes consumed (0..n). */
    size_t (*on_data)(struct net_conn *c, void *ctx, const char *p, size_t n);
    /* A limit hit; write a last reply if wanted; the connection closes after
     * the output is flushed. why: "idle", "deadline", "too slow". */
    void (*on_timeout)(struct net_conn *c, void *ctx, const char *why);
    /* The connection is gone (peer closed, error, closed by us). Free ctx. */
    void (*on_close)(struct net_conn *c, void *ctx);
};

struct net_loop *net_loop_new(void);
/* Frees the loop and its signal handlers; listeners and tasks first. */
void net_loop_free(struct net_loop **loop);
/* Runs until net_loop_stop(). 0 or -1. */
int net_loop_run(struct net_loop *loop);
void net_loop_stop(struct net_loop *loop);
/* Calls cb on the loop when signal signo arrives. At most 8 per loop;
 * -1 past that or if the event cannot be added. */
int net_loop_on_signal(struct net_loop *loop, int signo, void (*cb)(void *ctx), void *ctx);

/* Listens on "HOST:PORT" (SO_REUSEADDR). NULL with *error_r on failure. */
struct net_listener *net_listen(struct net_loop *loop, const char *endpoint,
                                const struct net_conn_handler *h, void *ctx,
                                const struct net_conn_limits *limits, const char **error_r);
/* Stops listening and closes every connection still open, each through its
 * on_close (unsent output is dropped). */
void net_listener_free(struct net_listener **l);

/* Queues bytes for sending. */
void net_conn_write(struct net_conn *c, const void *p, size_t n);
/* Octets queued by net_conn_write() and not yet handed to the kernel. */
size_t net_conn_output_len(const struct net_conn *c);
/* Calls cb(c, ctx) once, on the loop, when the queued output is at most
 * `below` octets — at once (from the loop, never from inside this call) if
 * it is already. ctx is the handler's per-connection context. One wait per
 * connection: a second call replaces the first; cb NULL cancels it. Nothing
 * is called once the connection is closing. */
void net_conn_when_drained(struct net_conn *c, size_t below,
                           void (*cb)(struct net_conn *c, void *ctx));
/* Closes after the queued output is flushed (on_close follows). */
void net_conn_close(struct net_conn *c);
/* Stops/starts delivering input to on_data (and reading the socket). */
void net_conn_pause(struct net_conn *c);
void net_conn_resume(struct net_conn *c);
/* Switches minimum-rate checking on (true) or off, restarting its clock. */
void net_conn_rate_check(struct net_conn *c, bool on);
/* "127.0.0.1:53412" */
const char *net_conn_peer(const struct net_conn *c);
/* Open connections of the listener this one came from. */
unsigned net_conn_siblings(const struct net_conn *c);

/* A deferred task: net_task_schedule() makes cb run once on the loop after
 * every pending I/O callback of this iteration (lower priority than I/O), so
 * work triggered by many connections in one iteration is done once — the
 * group commit. Scheduling an already scheduled task is a no-op. */
struct net_task *net_task_new(struct net_loop *loop, void (*cb)(void *ctx), void *ctx);
void net_task_schedule(struct net_task *t);
/* Runs cb after ms milliseconds instead. */
void net_task_schedule_in(struct net_task *t, unsigned ms);
void net_task_free(struct net_task **t);

#endif
