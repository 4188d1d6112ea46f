/*
 * test_util — util's incremental SHA-256 against the one-shot one and known
 * values.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "util/util.h"

static void hex_of(const uint8_t d[SHA256_LEN], char out[2 * SHA256_LEN + 1])
{
    hex_encode(d, SHA256_LEN, out);
}

static void test_sha256_incremental(void **state)
{
    (void)state;
    uint8_t one[SHA256_LEN], inc[SHA256_LEN];
    char hex[2 * SHA256_LEN + 1];

    /* Nothing hashed at all: the SHA-256 of the empty string. */
    struct sha256 *h = sha256_new();
    sha256_update(h, "", 0);
    sha256_final(&h, inc);
    assert_null(h);
    hex_of(inc, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");

    /* "abc" in three pieces (FIPS 180-2's example). */
    h = sha256_new();
    sha256_update(h, "a", 1);
    sha256_update(h, "b", 1);
    sha256_update(h, "c", 1);
    sha256_final(&h, inc);
    hex_of(inc, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");

    /* Pieces of every size across block boundaries give the one-shot hash. */
    static char data[10000];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (char)(i * 31 + i / 97);
    sha256_buf(data, sizeof(data), one);
    static const size_t steps[] = {1, 7, 63, 64, 65, 1000, 4096};
    for (size_t s = 0; s < sizeof(steps) / sizeof(steps[0]); s++) {
        h = sha256_new();
        for (size_t off = 0; off < sizeof(data); off += steps[s]) {
            size_t n = sizeof(data) - off < steps[s] ? sizeof(data) - off : steps[s];
            sha256_update(h, data + off, n);
        }
        sha256_final(&h, inc);
        assert_memory_equal(one, inc, SHA256_LEN);
    }
    /* A different input, a different hash (the test can fail). */
    h = sha256_new();
    sha256_update(h, data, sizeof(data) - 1);
    sha256_final(&h, inc);
    assert_memory_not_equal(one, inc, SHA256_LEN);

    /* Dropping an unfinished one. */
    h = sha256_new();
    sha256_update(h, data, 100);
    sha256_free(&h);
    assert_null(h);
    sha256_free(&h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_incremental),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
