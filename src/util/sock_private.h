/*
 * sock_private — what sock.c (the blocking TCP client) and tls.c (its TLS
 * layer) share. Nothing outside src/util/ includes this; OpenSSL's types
 * stay inside tls.c.
 */
#ifndef TERN_SOCK_PRIVATE_H
#define TERN_SOCK_PRIVATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "util/util.h"

#define SOCK_RBUF (64 * 1024)

struct tls;

struct sock {
    int fd;
    unsigned timeout_ms;
    char why[160];   /* the last failure, for the log */
    struct tls *tls; /* NULL: plain TCP */
    size_t rpos, rend;
    char rbuf[SOCK_RBUF];
};

/* Waits for events on s->fd until deadline (monotonic ms). 0 when ready,
 * -1 with s->why (timeout, poll error). */
int sock_wait_fd(struct sock *s, short events, int64_t deadline);

/* TLS on a connected non-blocking fd (tls.c). tls_read/tls_write return
 * the octets moved (> 0), 0 for a clean close by the peer (read only), or
 * -1: *want_r is POLLIN or POLLOUT when the call must be repeated after
 * that event (with the same arguments), 0 for a failure described in why
 * (at least 160 octets). */
ssize_t tls_read(struct tls *t, void *p, size_t n, short *want_r, char *why, size_t whylen);
ssize_t tls_write(struct tls *t, const void *p, size_t n, short *want_r, char *why, size_t whylen);
/* True if decrypted octets wait inside the TLS layer. */
bool tls_pending(const struct tls *t);
/* Sends close_notify if it can without waiting, and frees *t. */
void tls_free(struct tls **t);

#endif
