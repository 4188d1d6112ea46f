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
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
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
