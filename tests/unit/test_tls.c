/*
 * test_tls — util's TLS client (sock_start_tls) against an in-process
 * OpenSSL server on loopback, with certificates made here: a trusted
 * session carries lines and large data both ways; an untrusted
 * certificate, a certificate for another name or address, a server that
 * does not speak TLS, one that never answers and a bad CA file each fail
 * with their own words. (The test may use OpenSSL itself; src/ outside
 * util may not.)
 *
 * The server side (tls_server_*, tls_conn_*) against that client: a
 * session with lines, a read timeout and large data both ways, the shared
 * context outliving tls_server_free; each way a certificate/key pair can
 * be wrong; handshakes that time out, are not TLS or are abandoned.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "util/util.h"

#define BIG (300u * 1024) /* more than the socket's and TLS's buffers */

/* A self-signed certificate for san ("DNS:x" or "IP:x"), with its key. */
static X509 *make_cert(const char *san, EVP_PKEY **key_r)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    assert_non_null(key);
    X509 *x = X509_new();
    assert_non_null(x);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), (long)(getpid() & 0xffff) + 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"tern test", -1, -1,
                               0);
    X509_set_issuer_name(x, name);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
    assert_non_null(ext);
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    ext = X509V3_EXT_conf_nid(NULL, &v3, NID_basic_constraints, "critical,CA:TRUE");
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    assert_true(X509_sign(x, key, EVP_sha256()) > 0);
    *key_r = key;
    return x;
}

/* Writes x as PEM to a temporary file; returns its path (static). */
static const char *pem_file(X509 *x, char *path, size_t len)
{
    snprintf(path, len, "/tmp/tern-test-tls-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    if (x != NULL)
        PEM_write_X509(f, x);
    else
        fputs("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n", f);
    fclose(f);
    return path;
}

enum behaviour { SERVE_ECHO, SERVE_PLAIN, SERVE_SILENT, SERVE_HANDSHAKE_ONLY };

struct server {
    int lfd;
    int port;
    enum behaviour how;
    X509 *cert;
    EVP_PKEY *key;
    pthread_t th;
    bool ok; /* the server's side of the exchange went as expected */
};

/* ECHO: reads lines and answers each with "echo: LINE"; a line "BIG"
 * makes it send BIG octets of a pattern then read BIG octets back and
 * check them; "QUIT" ends. */
static void *serve(void *arg)
{
    struct server *sv = arg;
    /* The server's writes may hit a client that gave up (that is the
     * point of most cases): SIGPIPE stays pending on this thread, blocked.
     * The client's thread keeps it unblocked, with the default action. */
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, NULL);
    int fd = accept(sv->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    if (sv->how == SERVE_PLAIN) {
        static const char g[] = "* OK not TLS at all\r\n";
        (void)write(fd, g, sizeof(g) - 1);
        char b[512];
        (void)read(fd, b, sizeof(b));
        close(fd);
        sv->ok = true;
        return NULL;
    }
    if (sv->how == SERVE_SILENT) {
        char b[4096];
        while (read(fd, b, sizeof(b)) > 0) {
        }
        close(fd);
        sv->ok = true;
        return NULL;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    SSL_CTX_use_certificate(ctx, sv->cert);
    SSL_CTX_use_PrivateKey(ctx, sv->key);
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    if (SSL_accept(ssl) != 1 || sv->how == SERVE_HANDSHAKE_ONLY) {
        sv->ok = sv->how == SERVE_HANDSHAKE_ONLY;
        goto out;
    }
    char line[1024];
    size_t n = 0;
    for (;;) {
        char ch;
        if (SSL_read(ssl, &ch, 1) != 1)
            goto out;
        if (ch != '\n') {
            if (n + 1 < sizeof(line))
                line[n++] = ch;
            continue;
        }
        line[n > 0 && line[n - 1] == '\r' ? n - 1 : n] = '\0';
        n = 0;
        if (strcmp(line, "QUIT") == 0) {
            sv->ok = true;
            SSL_shutdown(ssl);
            goto out;
        }
        if (strcmp(line, "BIG") == 0) {
            char *b = malloc(BIG);
            for (size_t i = 0; i < BIG; i++)
                b[i] = (char)('a' + i % 23);
            if (SSL_write(ssl, b, (int)BIG) != (int)BIG)
                goto out;
            size_t got = 0;
            bool same = true;
            while (got < BIG) {
                int r = SSL_read(ssl, b, (int)(BIG - got < 65536 ? BIG - got : 65536));
                if (r <= 0)
                    break;
                for (int i = 0; i < r; i++)
                    if (b[i] != (char)('A' + (got + (size_t)i) % 19))
                        same = false;
                got += (size_t)r;
            }
            free(b);
            if (got != BIG || !same)
                goto out;
            continue;
        }
        char reply[1100];
        int k = snprintf(reply, sizeof(reply), "echo: %s\r\n", line);
        SSL_write(ssl, reply, k);
    }
out:
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(fd);
    return NULL;
}

static void server_start(struct server *sv, enum behaviour how, X509 *cert, EVP_PKEY *key)
{
    memset(sv, 0, sizeof(*sv));
    sv->how = how;
    sv->cert = cert;
    sv->key = key;
    sv->lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(sv->lfd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(sv->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(sv->lfd, 4), 0);
    socklen_t al = sizeof(a);
    getsockname(sv->lfd, (struct sockaddr *)&a, &al);
    sv->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&sv->th, NULL, serve, sv), 0);
}

static void server_stop(struct server *sv)
{
    shutdown(sv->lfd, SHUT_RDWR);
    pthread_join(sv->th, NULL);
    close(sv->lfd);
}

static struct sock *connect_to(const struct server *sv, unsigned timeout_ms)
{
    char ep[64], err[200];
    snprintf(ep, sizeof(ep), "127.0.0.1:%d", sv->port);
    struct sock *s = sock_connect(ep, timeout_ms, err, sizeof(err));
    assert_non_null(s);
    return s;
}

static void test_trusted_session(void **state)
{
    (void)state;
    EVP_PKEY *key;
    X509 *cert = make_cert("DNS:localhost", &key);
    char ca[64];
    pem_file(cert, ca, sizeof(ca));
    struct server sv;
    server_start(&sv, SERVE_ECHO, cert, key);
    struct sock *s = connect_to(&sv, 5000);
    char err[300];
    assert_false(sock_is_tls(s));
    int r = sock_start_tls(s, "localhost", ca, err, sizeof(err));
    if (r != 0)
        fail_msg("%s", err);
    assert_true(sock_is_tls(s));
    /* Lines. */
    assert_int_equal(sock_send(s, "hello\r\n", 7), 0);
    char line[128];
    size_t len;
    assert_int_equal(sock_read_line(s, line, sizeof(line), &len), 0);
    assert_string_equal(line, "echo: hello");
    /* Large data both ways, through partial reads and writes. */
    assert_int_equal(sock_send(s, "BIG\r\n", 5), 0);
    struct buf b;
    buf_init(&b, BIG);
    assert_int_equal(sock_read_buf(s, &b, BIG), 0);
    for (size_t i = 0; i < BIG; i++)
        if (b.data[i] != (char)('a' + i % 23))
            fail_msg("octet %zu differs", i);
    for (size_t i = 0; i < BIG; i++)
        b.data[i] = (char)('A' + i % 19);
    assert_int_equal(sock_send(s, b.data, BIG), 0);
    buf_free(&b);
    assert_int_equal(sock_send(s, "after\r\n", 7), 0);
    assert_int_equal(sock_read_line(s, line, sizeof(line), &len), 0);
    assert_string_equal(line, "echo: after");
    assert_int_equal(sock_send(s, "QUIT\r\n", 6), 0);
    /* The server's close_notify: a clean end, reported as such. */
    assert_int_equal(sock_read_line(s, line, sizeof(line), &len), -1);
    assert_string_equal(sock_why(s), "connection closed by the server");
    sock_close(&s);
    server_stop(&sv);
    assert_true(sv.ok);
    unlink(ca);
    X509_free(cert);
    EVP_PKEY_free(key);
}

struct fail_case {
    const char *name;
    const char *san; /* the server certificate's */
    enum behaviour how;
    const char *host; /* asked for */
    int ca;           /* 0: system store, 1: the server's cert, 2: a broken file */
    unsigned timeout_ms;
    const char *want;    /* start of the error */
    const char *want_in; /* and a part of it (NULL: none) */
};

static void test_failures(void **state)
{
    (void)state;
    static const struct fail_case cases[] = {
        {"untrusted (system CAs)", "DNS:localhost", SERVE_HANDSHAKE_ONLY, "localhost", 0, 5000,
         "certificate verify failed: ", "self-signed"},
        {"another host name", "DNS:other.example", SERVE_HANDSHAKE_ONLY, "localhost", 1, 5000,
         "hostname mismatch: ", "not for localhost"},
        {"no partial wildcards", "DNS:l*.example", SERVE_HANDSHAKE_ONLY, "localhost.example", 1,
         5000, "hostname mismatch: ", NULL},
        {"an address the cert has", "IP:127.0.0.1", SERVE_HANDSHAKE_ONLY, "127.0.0.1", 1, 5000,
         NULL, NULL},
        {"an address the cert lacks", "IP:127.0.0.2", SERVE_HANDSHAKE_ONLY, "127.0.0.1", 1, 5000,
         "hostname mismatch: ", "not for 127.0.0.1"},
        {"a name where an address is", "DNS:localhost", SERVE_HANDSHAKE_ONLY, "127.0.0.1", 1, 5000,
         "hostname mismatch: ", NULL},
        {"not TLS", "DNS:localhost", SERVE_PLAIN, "localhost", 1, 5000, "handshake failed: ", NULL},
        {"silent server", "DNS:localhost", SERVE_SILENT, "localhost", 1, 300,
         "handshake failed: timeout", NULL},
        {"broken CA file", "DNS:localhost", SERVE_SILENT, "localhost", 2, 5000,
         "TLS: cannot load the CA file ", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct fail_case *c = &cases[i];
        EVP_PKEY *key;
        X509 *cert = make_cert(c->san, &key);
        char ca[64] = "";
        if (c->ca > 0)
            pem_file(c->ca == 1 ? cert : NULL, ca, sizeof(ca));
        struct server sv;
        server_start(&sv, c->how, cert, key);
        struct sock *s = connect_to(&sv, c->timeout_ms);
        char err[300] = "";
        int64_t t0 = time_mono_ms();
        int r = sock_start_tls(s, c->host, c->ca > 0 ? ca : NULL, err, sizeof(err));
        int64_t took = time_mono_ms() - t0;
        sock_close(&s);
        server_stop(&sv);
        if (c->want == NULL) {
            if (r != 0)
                fail_msg("%s: %s", c->name, err);
        } else {
            if (r != -1)
                fail_msg("%s: succeeded", c->name);
            if (strncmp(err, c->want, strlen(c->want)) != 0)
                fail_msg("%s: got \"%s\", want \"%s...\"", c->name, err, c->want);
            if (c->want_in != NULL && strstr(err, c->want_in) == NULL)
                fail_msg("%s: got \"%s\", want \"%s\" in it", c->name, err, c->want_in);
        }
        assert_true(took < 4000); /* nothing waits longer than its timeout */
        if (ca[0] != '\0')
            unlink(ca);
        X509_free(cert);
        EVP_PKEY_free(key);
    }
}

/* The server dies mid-session: the next read fails, no SIGPIPE kills us on
 * the next write. */
static void test_peer_gone(void **state)
{
    (void)state;
    EVP_PKEY *key;
    X509 *cert = make_cert("DNS:localhost", &key);
    char ca[64];
    pem_file(cert, ca, sizeof(ca));
    struct server sv;
    server_start(&sv, SERVE_HANDSHAKE_ONLY, cert, key);
    struct sock *s = connect_to(&sv, 2000);
    char err[300];
    assert_int_equal(sock_start_tls(s, "localhost", ca, err, sizeof(err)), 0);
    server_stop(&sv); /* the server closed without close_notify */
    char line[64];
    size_t len;
    assert_int_equal(sock_read_line(s, line, sizeof(line), &len), -1);
    assert_true(strlen(sock_why(s)) > 0);
    static char data[256 * 1024];
    int sent = 0;
    for (int i = 0; i < 4 && sent == 0; i++)
        sent = sock_send(s, data, sizeof(data));
    assert_int_equal(sent, -1);
    sock_close(&s);
    unlink(ca);
    X509_free(cert);
    EVP_PKEY_free(key);
}

/* ---- the server side ---------------------------------------------------- */

/* Writes key as PEM to a temporary file named into path. */
static void key_file(EVP_PKEY *key, char *path, size_t len)
{
    snprintf(path, len, "/tmp/tern-test-tlskey-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL), 1);
    fclose(f);
}

/* A listener on loopback; its port. */
static int listen_any(int *port_r)
{
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(lfd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(lfd, 4), 0);
    socklen_t al = sizeof(a);
    getsockname(lfd, (struct sockaddr *)&a, &al);
    *port_r = ntohs(a.sin_port);
    return lfd;
}

struct tserver {
    int lfd;
    struct tls_server *ts; /* freed by the thread right after the handshake */
    unsigned handshake_ms;
    bool echo;     /* else: the handshake only */
    char err[300]; /* tls_server_accept's, if it failed */
    int64_t handshake_took;
    int64_t idle_took; /* a 150 ms read with nothing to read */
    ssize_t idle_read; /* what it returned (0) */
    char end_why[160]; /* tls_conn_why at the end */
    bool ok;           /* the exchange went as expected */
    pthread_t th;
};

/* ECHO over tls_conn_*: first a read that must time out, then "ready";
 * then lines answered "echo: LINE", "BIG" as in serve(), until the client
 * closes. */
static void *tserve(void *arg)
{
    struct tserver *sv = arg;
    int fd = accept(sv->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    int64_t t0 = time_mono_ms();
    struct tls_conn *c = tls_server_accept(sv->ts, fd, sv->handshake_ms, sv->err, sizeof(sv->err));
    sv->handshake_took = time_mono_ms() - t0;
    tls_server_free(&sv->ts); /* the connection keeps the context alive */
    if (c == NULL || !sv->echo) {
        tls_conn_free(&c);
        close(fd);
        return NULL;
    }
    char line[1024];
    t0 = time_mono_ms();
    sv->idle_read = tls_conn_read(c, line, sizeof(line), 150);
    sv->idle_took = time_mono_ms() - t0;
    if (tls_conn_write(c, "ready\r\n", 7, 5000) < 0)
        goto out;
    struct buf in;
    buf_init(&in, 0);
    char *big = malloc(BIG);
    for (;;) {
        char *nl;
        while ((nl = in.len > 0 ? memchr(in.data, '\n', in.len) : NULL) == NULL) {
            ssize_t r = tls_conn_read(c, line, sizeof(line), 5000);
            if (r <= 0)
                goto done;
            buf_append(&in, line, (size_t)r);
        }
        size_t ll = (size_t)(nl - in.data);
        char cmd[1024];
        snprintf(cmd, sizeof(cmd), "%.*s", (int)(ll > 0 && in.data[ll - 1] == '\r' ? ll - 1 : ll),
                 in.data);
        buf_consume(&in, ll + 1);
        if (strcmp(cmd, "BIG") == 0) {
            for (size_t i = 0; i < BIG; i++)
                big[i] = (char)('a' + i % 23);
            if (tls_conn_write(c, big, BIG, 5000) < 0)
                goto done;
            size_t got = 0;
            bool same = true;
            while (got < BIG) {
                if (in.len == 0) {
                    ssize_t r = tls_conn_read(c, big, BIG - got < 65536 ? BIG - got : 65536, 5000);
                    if (r <= 0)
                        goto done;
                    buf_append(&in, big, (size_t)r);
                }
                size_t take = in.len < BIG - got ? in.len : BIG - got;
                for (size_t i = 0; i < take; i++)
                    if (in.data[i] != (char)('A' + (got + i) % 19))
                        same = false;
                buf_consume(&in, take);
                got += take;
            }
            if (!same)
                goto done;
            continue;
        }
        char reply[1100];
        int k = snprintf(reply, sizeof(reply), "echo: %s\r\n", cmd);
        if (tls_conn_write(c, reply, (size_t)k, 5000) < 0)
            goto done;
    }
done:
    sv->ok = true;
    str_copy(sv->end_why, tls_conn_why(c), sizeof(sv->end_why));
    free(big);
    buf_free(&in);
out:
    tls_conn_free(&c);
    close(fd);
    return NULL;
}

static void tserver_start(struct tserver *sv, struct tls_server *ts, unsigned handshake_ms,
                          bool echo, int *port_r)
{
    memset(sv, 0, sizeof(*sv));
    sv->ts = ts;
    sv->handshake_ms = handshake_ms;
    sv->echo = echo;
    sv->lfd = listen_any(port_r);
    assert_int_equal(pthread_create(&sv->th, NULL, tserve, sv), 0);
}

static void tserver_stop(struct tserver *sv)
{
    pthread_join(sv->th, NULL);
    close(sv->lfd);
    tls_server_free(&sv->ts);
}

static void test_server_session(void **state)
{
    (void)state;
    EVP_PKEY *key;
    X509 *cert = make_cert("DNS:localhost", &key);
    char certf[64], keyf[64], err[300];
    pem_file(cert, certf, sizeof(certf));
    key_file(key, keyf, sizeof(keyf));
    struct tls_server *ts = tls_server_new(certf, keyf, err, sizeof(err));
    if (ts == NULL)
        fail_msg("%s", err);
    struct tserver sv;
    int port;
    tserver_start(&sv, ts, 5000, true, &port);
    char ep[64];
    snprintf(ep, sizeof(ep), "127.0.0.1:%d", port);
    struct sock *s = sock_connect(ep, 5000, err, sizeof(err));
    assert_non_null(s);
    /* util's own client, verifying the server's certificate. */
    if (sock_start_tls(s, "localhost", certf, err, sizeof(err)) != 0)
        fail_msg("%s", err);
    char line[128];
    size_t len;
    assert_int_equal(sock_read_line(s, line, sizeof(line), &len), 0);
    assert_string_equal(line, "ready");
    assert_int_equal(sock_send(s, "hello\r\n", 7), 0);
    assert_int_equal(sock_read_line(s, line, sizeof(line), &len), 0);
    assert_string_equal(line, "echo: hello");
    assert_int_equal(sock_send(s, "BIG\r\n", 5), 0);
    struct buf b;
    buf_init(&b, BIG);
    assert_int_equal(sock_read_buf(s, &b, BIG), 0);
    for (size_t i = 0; i < BIG; i++)
        if (b.data[i] != (char)('a' + i % 23))
            fail_msg("octet %zu differs", i);
    for (size_t i = 0; i < BIG; i++)
        b.data[i] = (char)('A' + i % 19);
    assert_int_equal(sock_send(s, b.data, BIG), 0);
    buf_free(&b);
    /* Two lines in one write: both answered. */
    assert_int_equal(sock_send(s, "one\r\ntwo\r\n", 10), 0);
    assert_int_equal(sock_read_line(s, line, sizeof(line), &len), 0);
    assert_string_equal(line, "echo: one");
    assert_int_equal(sock_read_line(s, line, sizeof(line), &len), 0);
    assert_string_equal(line, "echo: two");
    sock_close(&s); /* close_notify: the server reads a clean end */
    tserver_stop(&sv);
    assert_true(sv.ok);
    assert_int_equal(sv.idle_read, 0);
    assert_true(sv.idle_took >= 140 && sv.idle_took < 2000);
    assert_string_equal(sv.end_why, "closed");
    unlink(certf);
    unlink(keyf);
    X509_free(cert);
    EVP_PKEY_free(key);
}

static void test_server_load_errors(void **state)
{
    (void)state;
    EVP_PKEY *key, *key2;
    X509 *cert = make_cert("DNS:localhost", &key);
    X509 *cert2 = make_cert("DNS:localhost", &key2);
    char certf[64], keyf[64], key2f[64], garbage[64];
    pem_file(cert, certf, sizeof(certf));
    key_file(key, keyf, sizeof(keyf));
    key_file(key2, key2f, sizeof(key2f));
    pem_file(NULL, garbage, sizeof(garbage));
    const char *missing = "/nonexistent/tern/cert.pem";
    struct {
        const char *name, *cert, *key;
        char want[300];
    } cases[] = {
        {"missing cert", missing, keyf, ""}, {"missing key", certf, missing, ""},
        {"garbage cert", garbage, keyf, ""}, {"garbage key", certf, garbage, ""},
        {"cert as key", certf, certf, ""},   {"mismatch", certf, key2f, ""},
        {"directory", "/tmp", keyf, ""},
    };
    snprintf(cases[0].want, 300, "cannot read the certificate file %s: No such file", missing);
    snprintf(cases[1].want, 300, "cannot read the private key file %s: No such file", missing);
    snprintf(cases[2].want, 300, "no certificate in %s: ", garbage);
    snprintf(cases[3].want, 300, "no private key in %s: ", garbage);
    snprintf(cases[4].want, 300, "no private key in %s: ", certf);
    snprintf(cases[5].want, 300, "the private key in %s does not match the certificate in %s",
             key2f, certf);
    snprintf(cases[6].want, 300, "no certificate in /tmp: ");
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char err[300] = "";
        struct tls_server *ts = tls_server_new(cases[i].cert, cases[i].key, err, sizeof(err));
        if (ts != NULL)
            fail_msg("%s: loaded", cases[i].name);
        if (strncmp(err, cases[i].want, strlen(cases[i].want)) != 0)
            fail_msg("%s: got \"%s\", want \"%s...\"", cases[i].name, err, cases[i].want);
    }
    /* And the right pair loads. */
    char err[300];
    struct tls_server *ts = tls_server_new(certf, keyf, err, sizeof(err));
    assert_non_null(ts);
    tls_server_free(&ts);
    assert_null(ts);
    tls_server_free(&ts); /* NULL is fine */
    unlink(certf);
    unlink(keyf);
    unlink(key2f);
    unlink(garbage);
    X509_free(cert);
    X509_free(cert2);
    EVP_PKEY_free(key);
    EVP_PKEY_free(key2);
}

static void test_server_handshake_failures(void **state)
{
    (void)state;
    EVP_PKEY *key;
    X509 *cert = make_cert("DNS:localhost", &key);
    char certf[64], keyf[64], err[300];
    pem_file(cert, certf, sizeof(certf));
    key_file(key, keyf, sizeof(keyf));
    static const struct {
        const char *name;
        const char *send; /* what the client sends (NULL: nothing) */
        bool close_at_once;
        const char *want;
        int64_t min_ms;
    } cases[] = {
        {"silent client", NULL, false, "handshake failed: timeout", 250},
        {"plaintext IMAP", "a LOGIN alice secret\r\n", false, "handshake failed: ", 0},
        {"client gone", NULL, true, "handshake failed: the client closed the connection", 0},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        struct tls_server *ts = tls_server_new(certf, keyf, err, sizeof(err));
        assert_non_null(ts);
        struct tserver sv;
        int port;
        tserver_start(&sv, ts, 300, false, &port);
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
        if (cases[i].send != NULL)
            assert_true(write(fd, cases[i].send, strlen(cases[i].send)) > 0);
        if (cases[i].close_at_once)
            close(fd);
        tserver_stop(&sv);
        if (!cases[i].close_at_once)
            close(fd);
        if (strncmp(sv.err, cases[i].want, strlen(cases[i].want)) != 0)
            fail_msg("%s: got \"%s\", want \"%s...\"", cases[i].name, sv.err, cases[i].want);
        if (sv.handshake_took < cases[i].min_ms || sv.handshake_took > 3000)
            fail_msg("%s: took %lld ms", cases[i].name, (long long)sv.handshake_took);
    }
    /* A client that does not trust the certificate: its own error. */
    struct tls_server *ts = tls_server_new(certf, keyf, err, sizeof(err));
    struct tserver sv;
    int port;
    tserver_start(&sv, ts, 2000, false, &port);
    char ep[64];
    snprintf(ep, sizeof(ep), "127.0.0.1:%d", port);
    struct sock *s = sock_connect(ep, 2000, err, sizeof(err));
    assert_non_null(s);
    assert_int_equal(sock_start_tls(s, "localhost", NULL, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "certificate verify failed"));
    sock_close(&s);
    tserver_stop(&sv);
    unlink(certf);
    unlink(keyf);
    X509_free(cert);
    EVP_PKEY_free(key);
}

int main(void)
{
    signal(SIGPIPE, SIG_DFL); /* a SIGPIPE would kill the test */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_trusted_session),    cmocka_unit_test(test_failures),
        cmocka_unit_test(test_peer_gone),          cmocka_unit_test(test_server_session),
        cmocka_unit_test(test_server_load_errors), cmocka_unit_test(test_server_handshake_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
