/*
 * test_mail_text — the mail module's keyword rules and the CRLF line-ending
 * normalizer: a table of inputs, each fed whole and cut at every point
 * (the result must not depend on the cut), and the buffer limit.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "mail/mail.h"
#include "util/util.h"

static void test_keyword_valid(void **state)
{
    (void)state;
    static const struct {
        const char *kw;
        bool ok;
    } cases[] = {
        {"$Forwarded", true}, {"Junk", true},    {"a", true},   {"x-y.z_1+2", true},
        {"", false},          {"a b", false},    {"(a", false}, {"a)", false},
        {"a{", false},        {"a%", false},     {"a*", false}, {"a\"", false},
        {"a\\", false},       {"\\Seen", false}, {"a]", false}, {"caf\xc3\xa9", false},
        {"a\x7f", false},     {"a\x01", false},  {"[ok", true},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        if (mail_keyword_valid(cases[i].kw, strlen(cases[i].kw)) != cases[i].ok)
            fail_msg("'%s': want %d", cases[i].kw, cases[i].ok);
    }
    char big[MAIL_KEYWORDS_MAX + 2];
    memset(big, 'k', sizeof(big));
    assert_true(mail_keyword_valid(big, MAIL_KEYWORDS_MAX));
    assert_false(mail_keyword_valid(big, MAIL_KEYWORDS_MAX + 1));
}

static void test_keywords_add(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 0);
    assert_int_equal(mail_keywords_add(&b, "Junk", 4), 0);
    assert_int_equal(mail_keywords_add(&b, "$Label1", 7), 0);
    assert_int_equal(mail_keywords_add(&b, "junk", 4), 0); /* already there */
    assert_int_equal(mail_keywords_add(&b, "Jun", 3), 0);  /* a prefix is another */
    assert_int_equal(mail_keywords_add(&b, "bad kw", 6), -1);
    assert_string_equal(b.data, "Junk $Label1 Jun");
    /* Fill up to exactly MAIL_KEYWORDS_MAX octets, then one more fails. */
    char kw[40];
    int i = 0;
    for (;;) {
        int n = snprintf(kw, sizeof(kw), "k%05d", i++);
        size_t before = b.len;
        int rc = mail_keywords_add(&b, kw, (size_t)n);
        if (rc == 1) {
            assert_int_equal(b.len, before);
            assert_true(b.len + 1 + (size_t)n > MAIL_KEYWORDS_MAX);
            break;
        }
        assert_int_equal(rc, 0);
        assert_true(b.len <= MAIL_KEYWORDS_MAX);
    }
    assert_int_equal(strlen(b.data), b.len);
    buf_free(&b);
}

struct crlf_case {
    const char *in;
    size_t in_len; /* 0: strlen */
    const char *out;
    size_t out_len; /* 0: strlen */
    uint64_t bare_cr, nul;
};

static void run_crlf(const char *in, size_t n, size_t cut, size_t piece, struct buf *out,
                     struct mail_crlf *c)
{
    mail_crlf_init(c);
    buf_reset(out);
    size_t at = 0;
    if (cut > 0) {
        assert_int_equal(mail_crlf_feed(c, out, in, cut), 0);
        at = cut;
    }
    while (at < n) {
        size_t k = piece != 0 && piece < n - at ? piece : n - at;
        assert_int_equal(mail_crlf_feed(c, out, in + at, k), 0);
        at += k;
    }
    assert_int_equal(mail_crlf_finish(c, out), 0);
}

static void test_crlf(void **state)
{
    (void)state;
    static const struct crlf_case cases[] = {
        {"", 0, "", 0, 0, 0},
        {"a", 0, "a", 0, 0, 0},
        {"a\nb\n", 0, "a\r\nb\r\n", 0, 0, 0},
        {"a\r\nb\r\n", 0, "a\r\nb\r\n", 0, 0, 0},
        {"a\rb\r", 0, "a\r\nb\r\n", 0, 2, 0},
        {"a\r\r\nb", 0, "a\r\nb", 0, 1, 0},
        {"\r\r\r", 0, "\r\n\r\n\r\n", 0, 3, 0},
        {"\n\n", 0, "\r\n\r\n", 0, 0, 0},
        {"a\r\n\rb", 0, "a\r\n\r\nb", 0, 1, 0},
        {"x\0y\n", 4, "x\0y\r\n", 5, 0, 1},
        {"mixed\r\nlf\ncr\rend", 0, "mixed\r\nlf\r\ncr\r\nend", 0, 1, 0},
    };
    struct buf out;
    buf_init(&out, 0);
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        const struct crlf_case *c = &cases[i];
        size_t n = c->in_len != 0 ? c->in_len : strlen(c->in);
        size_t on = c->out_len != 0 ? c->out_len : strlen(c->out);
        for (size_t cut = 0; cut <= n; cut++) {
            for (size_t piece = 0; piece <= 3; piece++) {
                struct mail_crlf st;
                run_crlf(c->in, n, cut, piece, &out, &st);
                if (out.len != on || (on > 0 && memcmp(out.data, c->out, on) != 0) ||
                    st.bare_cr != c->bare_cr || st.nul != c->nul)
                    fail_msg("case %zu cut %zu piece %zu: %zu octets, bare %llu nul %llu", i, cut,
                             piece, out.len, (unsigned long long)st.bare_cr,
                             (unsigned long long)st.nul);
            }
        }
    }
    buf_free(&out);
    /* The buffer's maximum is respected. */
    struct buf small;
    buf_init(&small, 4);
    struct mail_crlf st;
    mail_crlf_init(&st);
    assert_int_equal(mail_crlf_feed(&st, &small, "ab\n", 3), 0);
    assert_int_equal(small.len, 4);
    assert_int_equal(mail_crlf_feed(&st, &small, "c", 1), -1);
    buf_free(&small);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keyword_valid),
        cmocka_unit_test(test_keywords_add),
        cmocka_unit_test(test_crlf),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
