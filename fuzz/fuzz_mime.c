/*
 * fuzz_mime — libFuzzer target for the mime module: any octets are a
 * message. For each input: ENVELOPE, BODY and BODYSTRUCTURE must follow
 * RFC 3501's grammar (tests/unit/mime_grammar.h, an independent checker),
 * every part BODYSTRUCTURE lists must be fetchable with the announced size
 * and its MIME header must end where its body starts; HEADER + TEXT is the
 * whole message; sections given by the input (its first line as a spec,
 * and part paths built from its first octets) stay inside the message; the
 * SEARCH text is valid UTF-8.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "../tests/unit/mime_grammar.h"
#include "mime/mime.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool utf8_ok(const char *s, size_t n)
{
    if (n == 0)
        return true;
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    while (p < end) {
        unsigned c = *p++;
        size_t more = c < 0x80 ? 0 : (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2 : 3;
        if (c >= 0x80 && ((c & 0xc0) == 0x80 || c >= 0xf8))
            return false;
        if ((size_t)(end - p) < more)
            return false;
        for (size_t i = 0; i < more; i++)
            if ((p[i] & 0xc0) != 0x80)
                return false;
        p += more;
    }
    return true;
}

struct ctx {
    struct mime_msg *m;
    size_t len;
};

static void section_in_bounds(struct ctx *c, const char *spec)
{
    struct buf out;
    buf_init(&out, 0);
    size_t off, len;
    const char *error = NULL;
    enum mime_section r = mime_section_locate(c->m, spec, &out, &off, &len, &error);
    if (r != MIME_SECTION_OK) {
        ASSERT(r == MIME_SECTION_BAD || r == MIME_SECTION_NONE);
        ASSERT(error != NULL && error[0] != '\0' && out.len == 0);
    } else if (off == SIZE_MAX) { /* HEADER.FIELDS[.NOT] */
        ASSERT(out.len >= 2 && memcmp(out.data + out.len - 2, "\r\n", 2) == 0);
    } else {
        ASSERT(off <= c->len && len <= c->len - off && out.len == 0);
    }
    buf_free(&out);
}

static void check_part(void *vc, const char *section, unsigned long size, bool multi, bool msg)
{
    struct ctx *c = vc;
    struct buf out;
    buf_init(&out, 0);
    size_t off, len, moff, mlen;
    const char *error;
    char spec[600];
    ASSERT(mime_section_locate(c->m, section, &out, &off, &len, &error) == MIME_SECTION_OK);
    ASSERT(multi || len == size);
    snprintf(spec, sizeof(spec), "%s.MIME", section);
    ASSERT(mime_section_locate(c->m, spec, &out, &moff, &mlen, &error) == MIME_SECTION_OK);
    ASSERT(len == 0 || moff + mlen == off);
    /* inside its parent's body (a top-level part: inside the message) */
    const char *dot = strrchr(section, '.');
    if (dot == NULL)
        spec[0] = '\0';
    else
        snprintf(spec, sizeof(spec), "%.*s", (int)(dot - section), section);
    size_t poff, plen;
    ASSERT(mime_section_locate(c->m, spec, &out, &poff, &plen, &error) == MIME_SECTION_OK);
    ASSERT(moff >= poff && off + len <= poff + plen);
    if (msg) {
        size_t hoff, hlen, toff, tlen;
        snprintf(spec, sizeof(spec), "%s.HEADER", section);
        ASSERT(mime_section_locate(c->m, spec, &out, &hoff, &hlen, &error) == MIME_SECTION_OK);
        snprintf(spec, sizeof(spec), "%s.TEXT", section);
        ASSERT(mime_section_locate(c->m, spec, &out, &toff, &tlen, &error) == MIME_SECTION_OK);
        ASSERT(hoff == off && hoff + hlen == toff && toff + tlen == off + len);
    }
    ASSERT(out.len == 0);
    buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *d = (const char *)data;
    struct mime_msg *m = mime_parse(d, size);
    struct ctx c = {.m = m, .len = size};
    struct buf b;
    buf_init(&b, 0);

    mime_envelope(m, &b);
    ASSERT(gram_check_envelope(b.data, b.len));
    for (int ext = 0; ext < 2; ext++) {
        buf_reset(&b);
        mime_bodystructure(m, ext, &b);
        bool ext_seen;
        ASSERT(gram_check_body(b.data, b.len, check_part, &c, &ext_seen));
        ASSERT(ext_seen == (ext == 1));
    }

    size_t off, hl, tl;
    const char *error;
    buf_reset(&b);
    ASSERT(mime_section_locate(m, "HEADER", &b, &off, &hl, &error) == MIME_SECTION_OK);
    ASSERT(mime_section_locate(m, "TEXT", &b, &off, &tl, &error) == MIME_SECTION_OK);
    ASSERT(off == hl && hl + tl == size);

    /* the first line as a spec: the fuzzer explores the spec parser there */
    char spec[201];
    size_t n = 0;
    while (n < size && n < sizeof(spec) - 1 && d[n] != '\n' && d[n] != '\0')
        n++;
    memcpy(spec, d, n);
    spec[n] = '\0';
    section_in_bounds(&c, spec);
    /* part paths from the first octets, with each kind of suffix */
    static const char *const suffix[] = {"",
                                         ".MIME",
                                         ".HEADER",
                                         ".TEXT",
                                         ".HEADER.FIELDS (Subject From)",
                                         ".HEADER.FIELDS.NOT (To)"};
    for (size_t k = 0; k < 6 && k < size; k++) {
        char path[64] = "";
        size_t pl = 0;
        for (size_t i = 0; i <= k && i < 4; i++)
            pl += (size_t)snprintf(path + pl, sizeof(path) - pl, "%s%u", i ? "." : "",
                                   (unsigned)(data[i] % 4) + 1);
        char full[128];
        snprintf(full, sizeof(full), "%s%s", path, suffix[data[k] % 6]);
        section_in_bounds(&c, full);
    }
    section_in_bounds(&c, "HEADER.FIELDS (Subject Content-Type)");

    buf_reset(&b);
    mime_body_text(m, &b);
    ASSERT(utf8_ok(b.data, b.len));
    buf_reset(&b);
    mime_header_text(m, "subject", &b);
    ASSERT(utf8_ok(b.data, b.len));
    (void)mime_date(m);

    buf_free(&b);
    mime_free(&m);
    return 0;
}
