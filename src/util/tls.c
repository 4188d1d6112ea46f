/*
 * tls — the TLS layer of the blocking TCP client (util.h, "TLS client"):
 * OpenSSL on a connected non-blocking socket. sock.c calls tls_read and
 * tls_write and does the waiting (poll with its timeouts); the handshake
 * waits here, bounded by the socket's timeout.
 *
 * Policy, not options: TLS 1.2 or later; the peer's certificate must chain
 * to the system's CA store (or, instead, to the CAs of one file the
 * operator names) and be for the host asked for (a name: DNS names of the
 * certificate, with SNI; an address literal: its IP addresses). There is
 * no "insecure" mode.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "util/sock_private.h"
#include "util/util.h"

struct tls {
    SSL_CTX *ctx;
    SSL *ssl;
};

/* SSL_write (and a close_notify) may write to a socket the peer closed:
 * the SIGPIPE that write() raises then is held blocked for the call and
 * swallowed, so a role that did not ignore SIGPIPE does not die of it.
 * Per thread (pthread_sigmask), as the mover runs jobs on threads. */
struct nopipe {
    sigset_t old;
    bool was_pending;
};

static void nopipe_begin(struct nopipe *np)
{
    sigset_t pipe, pending;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    sigemptyset(&pending);
    sigpending(&pending);
    np->was_pending = sigismember(&pending, SIGPIPE) == 1;
    pthread_sigmask(SIG_BLOCK, &pipe, &np->old);
}

static void nopipe_end(struct nopipe *np)
{
    if (!np->was_pending) {
        sigset_t pipe, pending;
        sigemptyset(&pipe);
        sigaddset(&pipe, SIGPIPE);
        sigemptyset(&pending);
        if (sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1) {
            struct timespec zero = {0, 0};
            (void)sigtimedwait(&pipe, NULL, &zero);
        }
    }
    pthread_sigmask(SIG_SETMASK, &np->old, NULL);
}

/* OpenSSL's first queued error as text ("" if none); clears the queue. */
static void ssl_reason(char *out, size_t outlen)
{
    unsigned long e = ERR_get_error();
    out[0] = '\0';
    if (e != 0) {
        const char *r = ERR_reason_error_string(e);
        if (r != NULL)
            snprintf(out, outlen, "%s", r);
        else
            ERR_error_string_n(e, out, outlen);
    }
    ERR_clear_error();
}

static bool is_ip_literal(const char *host)
{
    unsigned char a[16];
    return inet_pton(AF_INET, host, a) == 1 || inet_pton(AF_INET6, host, a) == 1;
}

/* The result of a failed SSL_* call: -1 with *want_r, or -1 with why. */
static ssize_t io_fail(struct tls *t, int r, short *want_r, char *why, size_t whylen)
{
    int e = SSL_get_error(t->ssl, r);
    *want_r = 0;
    if (e == SSL_ERROR_WANT_READ) {
        *want_r = POLLIN;
        return -1;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        *want_r = POLLOUT;
        return -1;
    }
    if (e == SSL_ERROR_ZERO_RETURN)
        return 0;
    char reason[160];
    int saved = errno;
    ssl_reason(reason, sizeof reason);
    if (e == SSL_ERROR_SYSCALL && reason[0] == '\0')
        snprintf(why, whylen, "TLS: %s",
                 saved != 0 ? strerror(saved) : "connection closed without close_notify");
    else
        snprintf(why, whylen, "TLS: %s", reason[0] ? reason : "protocol error");
    return -1;
}

ssize_t tls_read(struct tls *t, void *p, size_t n, short *want_r, char *why, size_t whylen)
{
    int len = n > INT32_MAX ? INT32_MAX : (int)n;
    struct nopipe np;
    nopipe_begin(&np);
    ERR_clear_error();
    errno = 0;
    int r = SSL_read(t->ssl, p, len);
    ssize_t out = r > 0 ? r : io_fail(t, r, want_r, why, whylen);
    nopipe_end(&np);
    return out;
}

ssize_t tls_write(struct tls *t, const void *p, size_t n, short *want_r, char *why, size_t whylen)
{
    int len = n > INT32_MAX ? INT32_MAX : (int)n;
    struct nopipe np;
    nopipe_begin(&np);
    ERR_clear_error();
    errno = 0;
    int r = SSL_write(t->ssl, p, len);
    ssize_t out = r > 0 ? r : io_fail(t, r, want_r, why, whylen);
    if (out == 0) {
        str_copy(why, "TLS: the peer closed the session", whylen);
        out = -1;
        *want_r = 0;
    }
    nopipe_end(&np);
    return out;
}

bool tls_pending(const struct tls *t)
{
    return SSL_pending(t->ssl) > 0;
}

void tls_free(struct tls **tp)
{
    struct tls *t = *tp;
    if (t == NULL)
        return;
    if (t->ssl != NULL) {
        struct nopipe np;
        nopipe_begin(&np);
        if (SSL_is_init_finished(t->ssl))
            (void)SSL_shutdown(t->ssl); /* close_notify if the socket takes it now */
        nopipe_end(&np);
        ERR_clear_error();
        SSL_free(t->ssl);
    }
    SSL_CTX_free(t->ctx);
    xfree(tp);
}

/* Why a handshake failed, in the words of util.h's contract. */
static void handshake_why(struct tls *t, const char *host, char *err, size_t errlen)
{
    long v = SSL_get_verify_result(t->ssl);
    char reason[160];
    ssl_reason(reason, sizeof reason);
    if (v == X509_V_ERR_HOSTNAME_MISMATCH || v == X509_V_ERR_IP_ADDRESS_MISMATCH)
        snprintf(err, errlen, "hostname mismatch: the server's certificate is not for %s", host);
    else if (v != X509_V_OK)
        snprintf(err, errlen, "certificate verify failed: %s", X509_verify_cert_error_string(v));
    else
        snprintf(err, errlen, "handshake failed: %s", reason[0] ? reason : "protocol error");
}

int sock_start_tls(struct sock *s, const char *host, const char *ca_file, char *err, size_t errlen)
{
    ASSERT(s->tls == NULL && s->rpos == s->rend);
    struct tls *t = xmalloc(sizeof *t);
    char reason[160];
    ERR_clear_error();
    t->ctx = SSL_CTX_new(TLS_client_method());
    if (t->ctx == NULL) {
        ssl_reason(reason, sizeof reason);
        snprintf(err, errlen, "TLS: cannot set up: %s", reason);
        goto fail;
    }
    SSL_CTX_set_min_proto_version(t->ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_mode(t->ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    int lr = ca_file != NULL && ca_file[0] != '\0'
                 ? SSL_CTX_load_verify_locations(t->ctx, ca_file, NULL)
                 : SSL_CTX_set_default_verify_paths(t->ctx);
    if (lr != 1) {
        ssl_reason(reason, sizeof reason);
        if (ca_file != NULL && ca_file[0] != '\0')
            snprintf(err, errlen, "TLS: cannot load the CA file %s: %s", ca_file,
                     reason[0] ? reason : "no certificate in it");
        else
            snprintf(err, errlen, "TLS: cannot load the system's CA store: %s", reason);
        goto fail;
    }
    t->ssl = SSL_new(t->ctx);
    if (t->ssl == NULL || SSL_set_fd(t->ssl, s->fd) != 1) {
        ssl_reason(reason, sizeof reason);
        snprintf(err, errlen, "TLS: cannot set up: %s", reason);
        goto fail;
    }
    if (is_ip_literal(host)) {
        X509_VERIFY_PARAM *vp = SSL_get0_param(t->ssl);
        if (X509_VERIFY_PARAM_set1_ip_asc(vp, host) != 1) {
            snprintf(err, errlen, "TLS: cannot check the address %s", host);
            goto fail;
        }
    } else {
        SSL_set_hostflags(t->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (SSL_set1_host(t->ssl, host) != 1 || SSL_set_tlsext_host_name(t->ssl, host) != 1) {
            snprintf(err, errlen, "TLS: cannot check the host name %s", host);
            goto fail;
        }
    }
    int64_t deadline = time_mono_ms() + s->timeout_ms;
    for (;;) {
        struct nopipe np;
        nopipe_begin(&np);
        ERR_clear_error();
        errno = 0;
        int r = SSL_connect(t->ssl);
        int e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(t->ssl, r);
        int saved = errno;
        nopipe_end(&np);
        if (r == 1)
            break;
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            if (sock_wait_fd(s, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline) < 0) {
                snprintf(err, errlen, "handshake failed: %s", s->why);
                goto fail;
            }
            continue;
        }
        if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 &&
            SSL_get_verify_result(t->ssl) == X509_V_OK) {
            snprintf(err, errlen, "handshake failed: %s",
                     saved != 0 ? strerror(saved) : "the server closed the connection");
            goto fail;
        }
        handshake_why(t, host, err, errlen);
        goto fail;
    }
    s->tls = t;
    return 0;
fail:
    ERR_clear_error();
    if (t->ssl != NULL)
        SSL_free(t->ssl);
    t->ssl = NULL;
    tls_free(&t);
    str_copy(s->why, err, sizeof s->why);
    return -1;
}

bool sock_is_tls(const struct sock *s)
{
    return s->tls != NULL;
}

/* ---- the server side (util.h, "TLS server") ----------------------------- */

struct tls_server {
    SSL_CTX *ctx; /* one reference; each connection holds another */
};

struct tls_conn {
    int fd;
    struct tls *t;
    char why[160];
    char info[96];
};

/* Can path be opened for reading? 0, or -1 with errno. OpenSSL's own
 * message for a missing or unreadable file is "system lib"; this one says
 * what the operator must fix. */
static int readable(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    fclose(f);
    return 0;
}

struct tls_server *tls_server_new(const char *cert_file, const char *key_file, char *err,
                                  size_t errlen)
{
    char reason[160];
    if (readable(cert_file) < 0) {
        snprintf(err, errlen, "cannot read the certificate file %s: %s", cert_file,
                 strerror(errno));
        return NULL;
    }
    if (readable(key_file) < 0) {
        snprintf(err, errlen, "cannot read the private key file %s: %s", key_file, strerror(errno));
        return NULL;
    }
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        ssl_reason(reason, sizeof reason);
        snprintf(err, errlen, "TLS: cannot set up: %s", reason);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_NO_COMPRESSION | SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    static const unsigned char sid_ctx[] = "tern";
    SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof sid_ctx - 1);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        ssl_reason(reason, sizeof reason);
        snprintf(err, errlen, "no certificate in %s: %s", cert_file,
                 reason[0] ? reason : "not a PEM certificate");
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        unsigned long e = ERR_peek_error();
        ssl_reason(reason, sizeof reason);
        if (ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH)
            snprintf(err, errlen, "the private key in %s does not match the certificate in %s",
                     key_file, cert_file);
        else
            snprintf(err, errlen, "no private key in %s: %s", key_file,
                     reason[0] ? reason : "not a PEM private key");
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "the private key in %s does not match the certificate in %s",
                 key_file, cert_file);
        goto fail;
    }
    ERR_clear_error();
    struct tls_server *ts = xmalloc(sizeof *ts);
    ts->ctx = ctx;
    return ts;
fail:
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return NULL;
}

void tls_server_free(struct tls_server **tsp)
{
    if (*tsp == NULL)
        return;
    SSL_CTX_free((*tsp)->ctx);
    xfree(tsp);
}

/* Waits for events on fd until deadline (< 0: none). 1 ready, 0 timeout,
 * -1 poll failed (why). */
static int wait_fd(int fd, short events, int64_t deadline, char *why, size_t whylen)
{
    for (;;) {
        int ms = -1;
        if (deadline >= 0) {
            int64_t left = deadline - time_mono_ms();
            ms = left <= 0 ? 0 : left > INT32_MAX ? INT32_MAX : (int)left;
        }
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, ms);
        if (r > 0)
            return 1; /* ready, or an error the next call reports */
        if (r == 0)
            return 0;
        if (errno != EINTR) {
            snprintf(why, whylen, "poll: %s", strerror(errno));
            return -1;
        }
    }
}

struct tls_conn *tls_server_accept(struct tls_server *ts, int fd, unsigned timeout_ms, char *err,
                                   size_t errlen)
{
    char reason[160];
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        snprintf(err, errlen, "handshake failed: fcntl: %s", strerror(errno));
        return NULL;
    }
    struct tls *t = xmalloc(sizeof *t);
    ERR_clear_error();
    SSL_CTX_up_ref(ts->ctx);
    t->ctx = ts->ctx;
    t->ssl = SSL_new(t->ctx);
    if (t->ssl == NULL || SSL_set_fd(t->ssl, fd) != 1) {
        ssl_reason(reason, sizeof reason);
        snprintf(err, errlen, "handshake failed: cannot set up: %s", reason);
        goto fail;
    }
    int64_t deadline = time_mono_ms() + timeout_ms;
    for (;;) {
        struct nopipe np;
        nopipe_begin(&np);
        ERR_clear_error();
        errno = 0;
        int r = SSL_accept(t->ssl);
        int e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(t->ssl, r);
        int saved = errno;
        nopipe_end(&np);
        if (r == 1)
            break;
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            int w = wait_fd(fd, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline, reason,
                            sizeof reason);
            if (w <= 0) {
                snprintf(err, errlen, "handshake failed: %s", w == 0 ? "timeout" : reason);
                goto fail;
            }
            continue;
        }
        ssl_reason(reason, sizeof reason);
        if (reason[0] == '\0')
            snprintf(reason, sizeof reason, "%s",
                     e == SSL_ERROR_SYSCALL && saved != 0 ? strerror(saved)
                     : e == SSL_ERROR_SYSCALL || e == SSL_ERROR_ZERO_RETURN
                         ? "the client closed the connection"
                         : "protocol error");
        snprintf(err, errlen, "handshake failed: %s", reason);
        goto fail;
    }
    struct tls_conn *c = xmalloc(sizeof *c);
    c->fd = fd;
    c->t = t;
    return c;
fail:
    ERR_clear_error();
    if (t->ssl != NULL)
        SSL_free(t->ssl);
    t->ssl = NULL;
    tls_free(&t);
    return NULL;
}

ssize_t tls_conn_read(struct tls_conn *c, void *p, size_t n, int ms)
{
    int64_t deadline = ms < 0 ? -1 : time_mono_ms() + ms;
    for (;;) {
        short want = 0;
        ssize_t r = tls_read(c->t, p, n, &want, c->why, sizeof c->why);
        if (r > 0)
            return r;
        if (r == 0) {
            str_copy(c->why, "closed", sizeof c->why);
            return -1;
        }
        if (want == 0)
            return -1;
        int w = wait_fd(c->fd, want, deadline, c->why, sizeof c->why);
        if (w < 0)
            return -1;
        if (w == 0)
            return 0;
    }
}

int tls_conn_write(struct tls_conn *c, const void *p, size_t n, unsigned timeout_ms)
{
    const char *d = p;
    while (n > 0) {
        short want = 0;
        ssize_t r = tls_write(c->t, d, n, &want, c->why, sizeof c->why);
        if (r > 0) {
            d += r;
            n -= (size_t)r;
            continue;
        }
        if (want == 0)
            return -1;
        int w = wait_fd(c->fd, want, time_mono_ms() + timeout_ms, c->why, sizeof c->why);
        if (w <= 0) {
            if (w == 0)
                str_copy(c->why, "write timeout", sizeof c->why);
            return -1;
        }
    }
    return 0;
}

bool tls_conn_pending(const struct tls_conn *c)
{
    return tls_pending(c->t);
}

const char *tls_conn_info(struct tls_conn *c)
{
    snprintf(c->info, sizeof c->info, "%s %s", SSL_get_version(c->t->ssl),
             SSL_get_cipher_name(c->t->ssl));
    return c->info;
}

const char *tls_conn_why(const struct tls_conn *c)
{
    return c->why;
}

void tls_conn_free(struct tls_conn **cp)
{
    if (*cp == NULL)
        return;
    tls_free(&(*cp)->t);
    xfree(cp);
}
