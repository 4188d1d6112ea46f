/*
 * test_dsn — the structure of a composed DSN: header fields, the three MIME
 * parts, the per-recipient delivery-status groups, line discipline (CRLF,
 * <= 998 octets), sanitized and cut diagnostics, and that only the
 * original's header travels back.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsn/dsn.h"

static const struct dsn_info INFO = {
    .reporting_mta = "mx.example.org",
    .sender = "s@example.net",
    .queue_id = "0123456789abcdef",
    .arrival = 1699990000,
    .now = 1700000000,
};

/* Every line ends in CRLF, has no other CR or LF, and is <= 998 octets. */
static void assert_lines_ok(const struct buf *b)
{
    assert_true(b->len >= 2);
    assert_memory_equal(b->data + b->len - 2, "\r\n", 2);
    size_t line = 0;
    for (size_t i = 0; i < b->len; i++) {
        if (b->data[i] == '\r') {
            assert_true(i + 1 < b->len && b->data[i + 1] == '\n');
            assert_true(i - line <= 998);
            i++;
            line = i + 1;
        } else {
            assert_true(b->data[i] != '\n'); /* no bare LF */
        }
    }
}

/* The text between start and the first occurrence of end (exclusive), as a
 * malloc'd string; fails if either is missing. */
static char *between(const char *s, const char *start, const char *end)
{
    const char *p = strstr(s, start);
    if (p == NULL)
        fail_msg("missing %s", start);
    p += strlen(start);
    const char *e = strstr(p, end);
    if (e == NULL)
        fail_msg("missing %s after %s", end, start);
    return xstrndup(p, (size_t)(e - p));
}

static size_t count(const char *s, const char *needle)
{
    size_t n = 0;
    for (const char *p = s; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

/* Checks the header and the MIME skeleton; returns the three parts
 * (headers and content), malloc'd. */
static void split_parts(const char *msg, char *parts[3])
{
    char *fields = between(msg, "", "\r\n\r\n");
    char *hdr = xasprintf("%s\r\n", fields); /* every field with its CRLF */
    free(fields);
    assert_non_null(strstr(hdr, "From: \"Mail Delivery System\" <MAILER-DAEMON@mx.example.org>"
                                "\r\n"));
    assert_non_null(strstr(hdr, "\r\nTo: <s@example.net>\r\n"));
    assert_non_null(strstr(hdr, "\r\nSubject: Undelivered Mail Returned to Sender\r\n"));
    assert_non_null(strstr(hdr, "\r\nDate: Tue, 14 Nov 2023 22:13:20 +0000\r\n"));
    assert_non_null(strstr(hdr, "\r\nAuto-Submitted: auto-replied\r\n"));
    assert_non_null(strstr(hdr, "\r\nMIME-Version: 1.0\r\n"));
    char *mid = between(hdr, "\r\nMessage-ID: <", ">");
    assert_true(strlen(mid) > 16);
    assert_non_null(strstr(mid, "@mx.example.org"));
    free(mid);

    /* Unfold, then find the declared boundary. */
    char *unfolded = xstrdup(hdr);
    char *w = unfolded;
    for (const char *r = hdr; *r; r++) {
        if (r[0] == '\r' && r[1] == '\n' && (r[2] == ' ' || r[2] == '\t')) {
            r++;
            continue;
        }
        *w++ = *r;
    }
    *w = '\0';
    char *ct = between(unfolded, "Content-Type: ", "\r\n");
    assert_non_null(strstr(ct, "multipart/report;"));
    assert_non_null(strstr(ct, "report-type=delivery-status;"));
    char *boundary = between(ct, "boundary=\"", "\"");
    assert_true(strlen(boundary) >= 8);
    free(ct);
    free(unfolded);
    free(hdr);

    char delim[128], close_delim[128];
    snprintf(delim, sizeof(delim), "\r\n--%s\r\n", boundary);
    snprintf(close_delim, sizeof(close_delim), "\r\n--%s--\r\n", boundary);
    assert_int_equal(count(msg, delim), 3);
    assert_int_equal(count(msg, close_delim), 1);
    /* The closing delimiter ends the message. */
    size_t cl = strlen(close_delim);
    assert_string_equal(msg + strlen(msg) - cl, close_delim);

    const char *p = msg;
    for (int i = 0; i < 3; i++) {
        p = strstr(p, delim) + strlen(delim);
        const char *e = strstr(p, i < 2 ? delim : close_delim);
        /* The CRLF before a delimiter belongs to it (RFC 2046). */
        parts[i] = xstrndup(p, (size_t)(e - p) + 2);
    }
    free(boundary);
    assert_true(strncmp(parts[0], "Content-Type: text/plain; charset=us-ascii\r\n\r\n", 46) == 0);
    assert_true(strncmp(parts[1], "Content-Type: message/delivery-status\r\n\r\n", 41) == 0);
    assert_true(strncmp(parts[2], "Content-Type: text/rfc822-headers\r\n\r\n", 37) == 0);
}

static void test_compose(void **state)
{
    (void)state;
    char longdiag[5001];
    memset(longdiag, 'd', 5000);
    longdiag[5000] = '\0';
    const struct dsn_rcpt r[2] = {
        {"alice@example.org", "Alice@Example.ORG", "5.1.1",
         "550 5.1.1 <alice@example.org> user unknown\r\nX-Injected: yes\x01\x7f\t."},
        {"bob@example.org", NULL, "5.1.1", longdiag},
    };
    static const char orig[] = "From: s@example.net\n"
                               "Subject: hello\r\n"
                               "To: alice@example.org,\n"
                               "\tbob@example.org\n"
                               "\n"
                               "BODY-SECRET\r\n";
    struct buf out;
    buf_init(&out, 0);
    buf_puts(&out, "prefix"); /* appends */
    dsn_compose(&out, &INFO, r, 2, orig, sizeof(orig) - 1);
    assert_true(strncmp(out.data, "prefixFrom: ", 12) == 0);
    buf_consume(&out, 6);
    assert_lines_ok(&out);
    assert_null(strstr(out.data, "BODY-SECRET"));

    char *parts[3];
    split_parts(out.data, parts);

    /* Part 1: every failed recipient with its (clean, cut) diagnostic. */
    assert_non_null(strstr(parts[0], "alice@example.org"));
    assert_non_null(strstr(parts[0], "bob@example.org"));
    assert_non_null(strstr(parts[0], "user unknown??X-Injected: yes??\t."));

    /* Part 2: the per-message fields, then one group per recipient. */
    const char *ds = parts[1] + 41;
    assert_true(strncmp(ds, "Reporting-MTA: dns; mx.example.org\r\n", 36) == 0);
    assert_non_null(strstr(ds, "\r\nX-Tern-Queue-ID: 0123456789abcdef\r\n"));
    assert_non_null(strstr(ds, "\r\nArrival-Date: Tue, 14 Nov 2023 19:26:40 +0000\r\n"));
    char *g1 = between(ds, "\r\n\r\n", "\r\n\r\n");
    const char *g2s = strstr(ds, g1) + strlen(g1) + 4;
    char *g2body = between(g2s, "", "\r\n\r\n");
    char *g2 = xasprintf("%s\r\n", g2body);
    free(g2body);
    assert_non_null(strstr(g1, "Original-Recipient: rfc822; Alice@Example.ORG\r\n"));
    assert_non_null(strstr(g1, "Final-Recipient: rfc822; alice@example.org\r\n"));
    assert_non_null(strstr(g1, "Action: failed\r\n"));
    assert_non_null(strstr(g1, "Status: 5.1.1\r\n"));
    assert_non_null(strstr(g1, "Diagnostic-Code: smtp; 550 5.1.1 <alice@example.org> user "
                               "unknown??X-Injected: yes??\t."));
    assert_null(strstr(out.data, "\r\nX-Injected"));
    assert_null(strstr(g2, "Original-Recipient"));
    assert_non_null(strstr(g2, "Final-Recipient: rfc822; bob@example.org\r\n"));
    assert_non_null(strstr(g2, "Action: failed\r\n"));
    assert_non_null(strstr(g2, "Status: 5.1.1\r\n"));
    char *diag = between(g2, "Diagnostic-Code: smtp; ", "\r\n");
    assert_true(strlen(diag) >= 100 && strlen(diag) < 1000);
    assert_non_null(strstr(diag, "..."));
    free(diag);
    free(g1);
    free(g2);

    /* Part 3: the original header with CRLF, not the body. */
    assert_string_equal(parts[2] + 37, "From: s@example.net\r\n"
                                       "Subject: hello\r\n"
                                       "To: alice@example.org,\r\n"
                                       "\tbob@example.org\r\n"
                                       "\r\n");

    /* Fresh boundary and Message-ID each time. */
    struct buf out2;
    buf_init(&out2, 0);
    dsn_compose(&out2, &INFO, r, 2, orig, sizeof(orig) - 1);
    char *b1 = between(out.data, "boundary=\"", "\"");
    char *b2 = between(out2.data, "boundary=\"", "\"");
    assert_string_not_equal(b1, b2);
    free(b1);
    free(b2);
    for (int i = 0; i < 3; i++)
        free(parts[i]);
    buf_free(&out);
    buf_free(&out2);
}

/* No empty line: the whole original, at most 64 KiB, lines cut to 998. */
static void test_header_only_original(void **state)
{
    (void)state;
    struct buf orig, out;
    buf_init(&orig, 0);
    buf_init(&out, 0);
    buf_puts(&orig, "Subject: long\r\nX-Long: ");
    for (int i = 0; i < 3000; i++)
        buf_puts(&orig, "L");
    buf_puts(&orig, "\r\n");
    while (orig.len < 100000)
        buf_puts(&orig, "X-Filler: 0123456789012345678901234567890123456789\n");
    const struct dsn_rcpt r = {"a@example.org", "a@example.org", "4.4.7", NULL};
    dsn_compose(&out, &INFO, &r, 1, orig.data, orig.len);
    assert_lines_ok(&out);

    char *parts[3];
    split_parts(out.data, parts);
    assert_true(strncmp(parts[2] + 37, "Subject: long\r\nX-Long: LLL", 26) == 0);
    assert_true(strlen(parts[2]) < (64 << 10) + 1024);
    assert_true(strlen(parts[2]) > (60 << 10));
    /* Same orig: no Original-Recipient; no diagnostic: no Diagnostic-Code. */
    assert_null(strstr(parts[1], "Original-Recipient"));
    assert_null(strstr(parts[1], "Diagnostic-Code"));
    assert_non_null(strstr(parts[1], "Status: 4.4.7\r\n"));
    for (int i = 0; i < 3; i++)
        free(parts[i]);
    buf_free(&orig);
    buf_free(&out);
}

static void test_empty_original(void **state)
{
    (void)state;
    struct buf out;
    buf_init(&out, 0);
    const struct dsn_rcpt r = {"a@example.org", NULL, "5.1.1", "550 no"};
    dsn_compose(&out, &INFO, &r, 1, "\r\nbody only\r\n", 13);
    assert_lines_ok(&out);
    assert_null(strstr(out.data, "body only"));
    char *parts[3];
    split_parts(out.data, parts);
    assert_string_equal(parts[2] + 37, "\r\n");
    for (int i = 0; i < 3; i++)
        free(parts[i]);
    buf_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_compose),
        cmocka_unit_test(test_header_only_original),
        cmocka_unit_test(test_empty_original),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
