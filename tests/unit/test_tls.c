/*
 * test_tls — util's TLS client (sock_start_tls) against an in-process
 * OpenSSL server on loopback, with certificates made here: a trusted
 * session carries lines and large data both ways; an untrusted
 * certificate, a certificate for another name or address, a server that
 * does not speak TLS, one that never answers and a bad CA file each fail
 * with their own words. (The test may use OpenSSL itself; src/ outside
 * util may not.)
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

int main(void)
{
    signal(SIGPIPE, SIG_DFL); /* a SIGPIPE would kill the test */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_trusted_session),
        cmocka_unit_test(test_failures),
        cmocka_unit_test(test_peer_gone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
