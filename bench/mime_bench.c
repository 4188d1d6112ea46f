/*
 * mime_bench — what one FETCH costs the mime module, per message shape.
 *
 *   mime_bench [--seconds S]
 *
 * For three built-in shapes (a 4 KB text message; a 100 KB multipart/mixed
 * with text and HTML alternatives and a 70 KB base64 attachment; a 10 MB
 * message with a 10 MB base64 attachment) it times, each from a fresh
 * mime_parse() as the IMAP server does per FETCH: ENVELOPE alone;
 * BODYSTRUCTURE; BODY[1] located (no copy); ENVELOPE + BODYSTRUCTURE +
 * BODY[HEADER.FIELDS (...)] together. Times are CPU time of this thread
 * (the machine is shared: wall time would count other processes). Prints
 * one line per shape and operation: "RESULT shape=... op=... per_s=R
 * us_per_op=U MB_per_s=M".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mime/mime.h"
#include "util/util.h"

static void make_simple(struct buf *b)
{
    buf_puts(b, "Return-Path: <alice@example.org>\r\n"
                "Received: from mx.example.org by store.example.org; Sat, 21 Nov 2026\r\n"
                " 05:40:00 +0000\r\n"
                "Date: Sat, 21 Nov 2026 05:40:00 +0000\r\n"
                "From: Alice Example <alice@example.org>\r\n"
                "To: Bob <bob@example.net>, carol@example.net\r\n"
                "Cc: \"Dave, the third\" <dave@example.com>\r\n"
                "Subject: =?utf-8?q?Quarterly_report_=E2=80=94_draft?=\r\n"
                "Message-ID: <20261121054000.1234@example.org>\r\n"
                "MIME-Version: 1.0\r\n"
                "Content-Type: text/plain; charset=utf-8\r\n"
                "Content-Transfer-Encoding: 8bit\r\n\r\n");
    while (b->len < 4096)
        buf_puts(b, "The quick brown fox jumps over the lazy dog, again and again.\r\n");
}

static void b64_lines(struct buf *b, size_t n)
{
    static const char line[] = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2"
                               "d3h5ejAx\r\n";
    for (size_t done = 0; done < n; done += sizeof(line) - 1)
        buf_puts(b, line);
}

static void make_mixed(struct buf *b, size_t attachment)
{
    buf_puts(b, "Date: Sat, 21 Nov 2026 05:40:00 +0000\r\n"
                "From: Alice Example <alice@example.org>\r\n"
                "To: Bob <bob@example.net>\r\n"
                "Subject: the report\r\n"
                "Message-ID: <20261121054001.1234@example.org>\r\n"
                "MIME-Version: 1.0\r\n"
                "Content-Type: multipart/mixed; boundary=\"=_outer_9f8e7d\"\r\n\r\n"
                "This is a multi-part message in MIME format.\r\n"
                "--=_outer_9f8e7d\r\n"
                "Content-Type: multipart/alternative; boundary=\"=_alt_1a2b3c\"\r\n\r\n"
                "--=_alt_1a2b3c\r\nContent-Type: text/plain; charset=utf-8\r\n"
                "Content-Transfer-Encoding: quoted-printable\r\n\r\n");
    for (int i = 0; i < 150; i++)
        buf_puts(b, "Hello Bob, here is the report you asked for. Regards, Alice =E2=80=94\r\n");
    buf_puts(b, "--=_alt_1a2b3c\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body>");
    for (int i = 0; i < 150; i++)
        buf_puts(b, "<p>Hello Bob, here is the report you asked for.</p>\r\n");
    buf_puts(b, "</body></html>\r\n--=_alt_1a2b3c--\r\n\r\n--=_outer_9f8e7d\r\n"
                "Content-Type: application/pdf; name=\"report.pdf\"\r\n"
                "Content-Disposition: attachment; filename=\"report.pdf\"\r\n"
                "Content-Transfer-Encoding: base64\r\n\r\n");
    b64_lines(b, attachment);
    buf_puts(b, "--=_outer_9f8e7d--\r\n");
}

typedef void (*op_fn)(const struct buf *msg, struct buf *out);

static void op_envelope(const struct buf *msg, struct buf *out)
{
    struct mime_msg *m = mime_parse(msg->data, msg->len);
    mime_envelope(m, out);
    mime_free(&m);
}

static void op_bodystructure(const struct buf *msg, struct buf *out)
{
    struct mime_msg *m = mime_parse(msg->data, msg->len);
    mime_bodystructure(m, true, out);
    mime_free(&m);
}

static void op_body1(const struct buf *msg, struct buf *out)
{
    struct mime_msg *m = mime_parse(msg->data, msg->len);
    size_t off, len;
    const char *error;
    if (mime_section_locate(m, "1", out, &off, &len, &error) != MIME_SECTION_OK)
        fatal("BODY[1]: %s", error);
    mime_free(&m);
}

static void op_all(const struct buf *msg, struct buf *out)
{
    struct mime_msg *m = mime_parse(msg->data, msg->len);
    const char *error;
    mime_envelope(m, out);
    mime_bodystructure(m, true, out);
    if (mime_section_get(m, "HEADER.FIELDS (DATE FROM SUBJECT TO CC MESSAGE-ID)", out, &error) !=
        MIME_SECTION_OK)
        fatal("HEADER.FIELDS: %s", error);
    mime_free(&m);
}

static double cpu_secs(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void run(const char *shape, const struct buf *msg, const char *name, op_fn op, double secs)
{
    struct buf out;
    buf_init(&out, 0);
    op(msg, &out); /* warm up */
    double start = cpu_secs(), now;
    uint64_t n = 0;
    do {
        for (int i = 0; i < 16; i++) {
            buf_reset(&out);
            op(msg, &out);
        }
        n += 16;
        now = cpu_secs();
    } while (now - start < secs);
    double s = now - start;
    printf("RESULT shape=%s size=%zu op=%s per_s=%.0f us_per_op=%.2f MB_per_s=%.0f\n", shape,
           msg->len, name, (double)n / s, s * 1e6 / (double)n,
           (double)n * (double)msg->len / s / 1e6);
    buf_free(&out);
}

int main(int argc, char **argv)
{
    double secs = 2.0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            secs = atof(argv[++i]);
        else
            fatal("usage: mime_bench [--seconds S]");
    }
    log_init("mime_bench");
    mime_init();
    struct buf simple, mixed, big;
    buf_init(&simple, 0);
    buf_init(&mixed, 0);
    buf_init(&big, 0);
    make_simple(&simple);
    make_mixed(&mixed, 70 * 1024);
    make_mixed(&big, 10 * 1024 * 1024);
    static const struct {
        const char *name;
        op_fn fn;
    } ops[] = {{"envelope", op_envelope},
               {"bodystructure", op_bodystructure},
               {"body1_locate", op_body1},
               {"envelope+bodystructure+header.fields", op_all}};
    for (size_t i = 0; i < ARRAY_SIZE(ops); i++) {
        run("text_4k", &simple, ops[i].name, ops[i].fn, secs);
        run("mixed_100k", &mixed, ops[i].name, ops[i].fn, secs);
        run("mixed_10m", &big, ops[i].name, ops[i].fn, secs);
    }
    buf_free(&simple);
    buf_free(&mixed);
    buf_free(&big);
    return 0;
}
