/*
 * test_mail — table tests for the mail vocabulary: address and domain
 * normalization (every rule and both sides of every length limit) and store
 * name validation.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mail/mail.h"
#include "util/util.h"

/* n copies of c, in one of a few static slots (tables reference them). */
static const char *rep(int slot, char c, size_t n)
{
    static char bufs[8][512];
    ASSERT(slot < 8 && n < sizeof(bufs[0]));
    memset(bufs[slot], c, n);
    bufs[slot][n] = '\0';
    return bufs[slot];
}

static char *join(const char *a, const char *b, const char *c)
{
    return xasprintf("%s%s%s", a, b, c);
}

static char *dupn(const char *p, size_t n)
{
    char *s = xmalloc(n + 1);
    memcpy(s, p, n);
    return s;
}

struct addr_case {
    const char *name;
    char *in;        /* owned when built at run time */
    size_t len;      /* 0: strlen */
    const char *out; /* NULL: must fail */
    const char *error;
};

static void check_addr(const struct addr_case *c)
{
    char out[MAIL_ADDR_MAX + 1];
    const char *error = NULL;
    size_t len = c->len != 0 ? c->len : strlen(c->in);
    int rc = mail_addr_normalize(c->in, len, out, &error);
    if (c->out != NULL) {
        if (rc != 0)
            fail_msg("case '%s': refused: %s", c->name, error);
        if (strcmp(out, c->out) != 0)
            fail_msg("case '%s': got '%s' want '%s'", c->name, out, c->out);
        /* Normal forms are fixed points. */
        char again[MAIL_ADDR_MAX + 1];
        assert_int_equal(mail_addr_normalize(out, strlen(out), again, &error), 0);
        assert_string_equal(again, out);
    } else {
        if (rc != -1)
            fail_msg("case '%s': accepted as '%s'", c->name, out);
        if (error == NULL || strcmp(error, c->error) != 0)
            fail_msg("case '%s': error '%s' want '%s'", c->name, error ? error : "(null)",
                     c->error);
    }
}

static void test_addr_static(void **state)
{
    (void)state;
    static const struct {
        const char *name, *in, *out, *error;
    } cases[] = {
        {"simple", "a@b", "a@b", NULL},
        {"dotted", "first.last@mail.example.com", "first.last@mail.example.com", NULL},
        {"uppercase lowered", "User.Name@Example.COM", "user.name@example.com", NULL},
        {"atext", "a!#$%&'*+-/=?^_`{|}~@x", "a!#$%&'*+-/=?^_`{|}~@x", NULL},
        {"digits and hyphens", "1@a-1.2-b.c", "1@a-1.2-b.c", NULL},
        {"localhost", "root@localhost", "root@localhost", NULL},
        {"empty", "", NULL, "empty address"},
        {"no at", "user", NULL, "address has no domain"},
        {"empty local", "@b", NULL, "empty local part"},
        {"empty domain", "a@", NULL, "empty domain"},
        {"two ats", "a@b@c", NULL, "invalid character in local part"},
        {"quoted", "\"a\"@b", NULL, "quoted local parts are not supported"},
        {"quoted with space", "\"a b\"@b", NULL, "quoted local parts are not supported"},
        {"literal", "a@[127.0.0.1]", NULL, "address literals are not supported"},
        {"leading dot", ".a@b", NULL, "malformed local part"},
        {"trailing dot", "a.@b", NULL, "malformed local part"},
        {"double dot", "a..b@b", NULL, "malformed local part"},
        {"only dot", ".@b", NULL, "malformed local part"},
        {"space", "a b@c", NULL, "invalid character in local part"},
        {"paren", "a(b)@c", NULL, "invalid character in local part"},
        {"comma", "a,b@c", NULL, "invalid character in local part"},
        {"8-bit local", "\xc3\xa4@c", NULL, "invalid character in local part"},
        {"angle", "<a@b>", NULL, "invalid character in local part"},
        {"underscore domain", "a@b_c", NULL, "invalid character in domain"},
        {"8-bit domain", "a@\xc3\xa4", NULL, "invalid character in domain"},
        {"space in domain", "a@b c", NULL, "invalid character in domain"},
        {"domain leading hyphen", "a@-b", NULL, "malformed domain"},
        {"domain trailing hyphen", "a@b-", NULL, "malformed domain"},
        {"label trailing hyphen", "a@b-.c", NULL, "malformed domain"},
        {"label leading hyphen", "a@b.-c", NULL, "malformed domain"},
        {"domain double dot", "a@b..c", NULL, "malformed domain"},
        {"domain leading dot", "a@.b", NULL, "malformed domain"},
        {"domain trailing dot", "a@b.", NULL, "malformed domain"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        struct addr_case c = {cases[i].name, (char *)cases[i].in, 0, cases[i].out, cases[i].error};
        if (cases[i].in[0] == '\0') {
            char out[MAIL_ADDR_MAX + 1];
            const char *error = NULL;
            assert_int_equal(mail_addr_normalize("", 0, out, &error), -1);
            assert_string_equal(error, "empty address");
            continue;
        }
        check_addr(&c);
    }
}

static void test_addr_lengths(void **state)
{
    (void)state;
    /* 189 = 63 + 1 + 63 + 1 + 61: with a 64-octet local part, 254 total. */
    char *d189 = xasprintf("%s.%s.%s", rep(0, 'd', 63), rep(1, 'e', 63), rep(2, 'f', 61));
    char *d190 = xasprintf("%s.%s.%s", rep(0, 'd', 63), rep(1, 'e', 63), rep(2, 'f', 62));
    struct addr_case cases[] = {
        {"local 64", join(rep(3, 'L', 64), "@x", ""), 0, NULL, NULL},
        {"local 65", join(rep(3, 'l', 65), "@x", ""), 0, NULL, "local part too long"},
        {"label 63", join("a@", rep(4, 'b', 63), ".c"), 0, NULL, NULL},
        {"label 64", join("a@", rep(4, 'b', 64), ".c"), 0, NULL, "domain label too long"},
        {"last label 64", join("a@c.", rep(4, 'b', 64), ""), 0, NULL, "domain label too long"},
        {"total 254", join(rep(3, 'l', 64), "@", d189), 0, NULL, NULL},
        {"total 255", join(rep(3, 'l', 64), "@", d190), 0, NULL, "address too long"},
        {"NUL inside", dupn("a\0b@c", 5), 5, NULL, "invalid character in local part"},
        {"not NUL-terminated", xstrdup("a@bXYZ"), 3, NULL, NULL},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        if (cases[i].error == NULL) {
            /* Expected output: the input, lowercased (and cut at len). */
            size_t len = cases[i].len != 0 ? cases[i].len : strlen(cases[i].in);
            char *want = xstrndup(cases[i].in, len);
            str_lower(want);
            cases[i].out = want;
        }
        check_addr(&cases[i]);
        if (cases[i].error == NULL)
            free((char *)cases[i].out);
        free(cases[i].in);
    }
    free(d189);
    free(d190);
}

static void test_addr_domain(void **state)
{
    (void)state;
    assert_string_equal(mail_addr_domain("a@b.c"), "b.c");
    assert_string_equal(mail_addr_domain("nodomain"), "");
}

static void test_domain(void **state)
{
    (void)state;
    char *l63 = join("a.", rep(0, 'x', 63), "");
    char *l64 = join("a.", rep(0, 'x', 64), "");
    /* 253 = 63 * 3 + 61 + 3 dots; 254 one more. */
    char *d253 = xasprintf("%s.%s.%s.%s", rep(1, 'a', 63), rep(1, 'a', 63), rep(1, 'a', 63),
                           rep(2, 'b', 61));
    char *d254 = xasprintf("%s.%s.%s.%s", rep(1, 'a', 63), rep(1, 'a', 63), rep(1, 'a', 63),
                           rep(2, 'b', 62));
    const struct {
        const char *name, *in, *out, *error;
    } cases[] = {
        {"simple", "example.com", "example.com", NULL},
        {"uppercase", "Example.COM", "example.com", NULL},
        {"single label", "localhost", "localhost", NULL},
        {"digits hyphen", "a-1.2b", "a-1.2b", NULL},
        {"label 63", l63, l63, NULL},
        {"label 64", l64, NULL, "domain label too long"},
        {"253", d253, d253, NULL},
        {"254", d254, NULL, "domain too long"},
        {"empty", "", NULL, "empty domain"},
        {"leading hyphen", "-a.b", NULL, "malformed domain"},
        {"trailing hyphen", "a.b-", NULL, "malformed domain"},
        {"double dot", "a..b", NULL, "malformed domain"},
        {"leading dot", ".a", NULL, "malformed domain"},
        {"trailing dot", "a.", NULL, "malformed domain"},
        {"only dot", ".", NULL, "malformed domain"},
        {"underscore", "a_b.c", NULL, "invalid character in domain"},
        {"at sign", "a@b", NULL, "invalid character in domain"},
        {"literal", "[1.2.3.4]", NULL, "address literals are not supported"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char out[MAIL_DOMAIN_MAX + 1];
        const char *error = NULL;
        int rc = mail_domain_normalize(cases[i].in, out, &error);
        if (cases[i].out != NULL) {
            if (rc != 0 || strcmp(out, cases[i].out) != 0)
                fail_msg("case '%s': rc %d out '%s' error %s", cases[i].name, rc,
                         rc == 0 ? out : "", error ? error : "-");
        } else if (rc != -1 || error == NULL || strcmp(error, cases[i].error) != 0) {
            fail_msg("case '%s': rc %d error '%s' want '%s'", cases[i].name, rc,
                     error ? error : "-", cases[i].error);
        }
    }
    free(l63);
    free(l64);
    free(d253);
    free(d254);
}

static void test_store_name(void **state)
{
    (void)state;
    const struct {
        const char *name;
        bool valid;
    } cases[] = {
        {"s1", true},
        {"a_b-c", true},
        {"0", true},
        {"abcdefghijklmnopqrstuvwxyz012345", true},   /* 32 */
        {"abcdefghijklmnopqrstuvwxyz0123456", false}, /* 33 */
        {"", false},
        {"S1", false},
        {"a.b", false},
        {"a b", false},
        {"../x", false},
        {"a/b", false},
        {"\xc3\xa4", false},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        if (mail_store_name_valid(cases[i].name) != cases[i].valid)
            fail_msg("store name '%s': want %s", cases[i].name,
                     cases[i].valid ? "valid" : "invalid");
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_addr_static), cmocka_unit_test(test_addr_lengths),
        cmocka_unit_test(test_addr_domain), cmocka_unit_test(test_domain),
        cmocka_unit_test(test_store_name),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
