/*
 * fuzz_mbox — libFuzzer target for the mbox reader. The first three octets
 * pick the variant (auto included), a read size and the limits; the rest is
 * the file. Every run checks the reader's promises: the items cover the
 * file without gaps or overlaps, a message is CRLF-only and within
 * msg_max, its SHA-256 is of its octets, keywords are valid atoms; and a
 * second run with another read size and short reads gives the same items.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mbox/mbox.h"
#include "util/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct src {
    const uint8_t *p;
    size_t n;
    size_t max_per_read;
};

static ssize_t read_at(void *ctx, void *p, size_t n, uint64_t off)
{
    struct src *s = ctx;
    if (off >= s->n)
        return 0;
    size_t k = s->n - (size_t)off;
    if (k > n)
        k = n;
    if (s->max_per_read != 0 && k > s->max_per_read)
        k = s->max_per_read;
    memcpy(p, s->p + off, k);
    return (ssize_t)k;
}

static uint64_t mix(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3u;
    return h;
}

static void check_item(const struct mbox_item *it, size_t msg_max)
{
    ASSERT(it->raw_len > 0);
    ASSERT(it->keywords != NULL);
    if (it->kind == MBOX_SKIPPED) {
        ASSERT(it->skip != MBOX_SKIP_NONE && it->data == NULL);
        return;
    }
    ASSERT(it->skip == MBOX_SKIP_NONE && it->data != NULL);
    ASSERT(it->len > 0 && it->len <= msg_max);
    for (size_t k = 0; k < it->len; k++) {
        if (it->data[k] == '\n')
            ASSERT(k > 0 && it->data[k - 1] == '\r');
        if (it->data[k] == '\r')
            ASSERT(k + 1 < it->len && it->data[k + 1] == '\n');
    }
    uint8_t h[SHA256_LEN];
    sha256_buf(it->data, it->len, h);
    ASSERT(memcmp(h, it->sha256, SHA256_LEN) == 0);
    ASSERT((it->flags & ~0x1fu) == 0);
    size_t kl = strlen(it->keywords);
    ASSERT(kl <= MAIL_KEYWORDS_MAX);
    const char *w = it->keywords;
    while (kl > 0 && *w != '\0') {
        const char *sp = strchr(w, ' ');
        size_t wl = sp != NULL ? (size_t)(sp - w) : strlen(w);
        ASSERT(mail_keyword_valid(w, wl));
        w += wl + (sp != NULL ? 1 : 0);
    }
}

/* Reads the whole file; returns a hash of every item. */
static uint64_t run(const uint8_t *p, size_t n, const struct mbox_options *o, size_t max_per_read,
                    enum mbox_format *f_r)
{
    struct src s = {.p = p, .n = n, .max_per_read = max_per_read};
    struct mbox_source src = {.read_at = read_at, .ctx = &s};
    struct mbox_reader *r;
    const char *error;
    ASSERT(mbox_reader_new(&src, o, &r, &error) == 0);
    *f_r = mbox_reader_format(r);
    size_t msg_max = o->msg_max;
    uint64_t h = 0xcbf29ce484222325u, at = 0;
    bool bom = n >= 3 && memcmp(p, "\xef\xbb\xbf", 3) == 0;
    struct mbox_item it;
    int rc;
    while ((rc = mbox_next(r, &it, &error)) == 1) {
        check_item(&it, msg_max);
        if (at == 0 && bom && it.offset == 3)
            at = 3;
        ASSERT(it.offset == at);
        at += it.raw_len;
        h = mix(h, &it.kind, sizeof(it.kind));
        h = mix(h, &it.skip, sizeof(it.skip));
        h = mix(h, &it.offset, sizeof(it.offset));
        h = mix(h, &it.raw_len, sizeof(it.raw_len));
        h = mix(h, &it.len, sizeof(it.len));
        h = mix(h, it.sha256, SHA256_LEN);
        h = mix(h, &it.flags, sizeof(it.flags));
        h = mix(h, &it.problems, sizeof(it.problems));
        h = mix(h, it.sender, strlen(it.sender));
        h = mix(h, it.keywords, strlen(it.keywords));
        h = mix(h, &it.internal_date, sizeof(it.internal_date));
    }
    ASSERT(rc == 0);
    ASSERT(at == n || (n == 3 && bom));
    mbox_reader_free(&r);
    return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    struct mbox_options o = {0};
    o.format = (enum mbox_format)(data[0] % 5);
    size_t read_size = (size_t)data[1] % 64 + 1;
    o.line_max = (size_t)(data[2] & 0x0f) * 16 + 8;
    o.msg_max = (size_t)(data[2] >> 4) * 64 + 16;
    data += 3;
    size -= 3;
    enum mbox_format f1, f2;
    uint64_t a = run(data, size, &o, 0, &f1);
    struct mbox_options o2 = o;
    o2.read_size = read_size;
    uint64_t b = run(data, size, &o2, (read_size * 7) % 13 + 1, &f2);
    ASSERT(a == b && f1 == f2);
    return 0;
}
