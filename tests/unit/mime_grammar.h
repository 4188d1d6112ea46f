/*
 * mime_grammar.h — a checker of RFC 3501's grammar (section 9) for ENVELOPE
 * and BODYSTRUCTURE / BODY output, written independently of src/mime from
 * the RFC's ABNF, for test_mime.c and fuzz_mime.c. While it walks a body
 * it reports every part with its section number ("1", "2.1", ...), its
 * size in octets and its kind, so a caller can check each part's size
 * against the section's octets.
 *
 * Header-only (static functions): both programs include it.
 */
#ifndef TERN_TEST_MIME_GRAMMAR_H
#define TERN_TEST_MIME_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct gram {
    const char *p, *end;
    bool ext_seen; /* the body had extension data */
    /* called for each part: section, size, multipart?, message/rfc822? */
    void (*part)(void *ctx, const char *section, unsigned long size, bool multi, bool msg);
    void *ctx;
    int depth;
};

static bool gram_lit(struct gram *g, const char *s)
{
    size_t n = strlen(s);
    if ((size_t)(g->end - g->p) < n || memcmp(g->p, s, n) != 0)
        return false;
    g->p += n;
    return true;
}

/* string = quoted / literal; the unescaped value's first 63 octets into
 * val (if not NULL). */
static bool gram_string(struct gram *g, char *val)
{
    size_t vn = 0;
    if (g->p < g->end && *g->p == '"') {
        g->p++;
        while (g->p < g->end && *g->p != '"') {
            unsigned char c = (unsigned char)*g->p;
            if (c == '\\') {
                g->p++;
                if (g->p >= g->end || (*g->p != '"' && *g->p != '\\'))
                    return false;
                c = (unsigned char)*g->p;
            } else if (c == 0 || c >= 0x80 || c == '\r' || c == '\n') {
                return false; /* TEXT-CHAR only */
            }
            if (val != NULL && vn < 63)
                val[vn++] = (char)c;
            g->p++;
        }
        if (g->p >= g->end)
            return false;
        g->p++;
    } else if (g->p < g->end && *g->p == '{') {
        char *e;
        unsigned long n = strtoul(g->p + 1, &e, 10);
        if (e == g->p + 1 || (size_t)(g->end - e) < 3 || memcmp(e, "}\r\n", 3) != 0)
            return false;
        g->p = e + 3;
        if ((size_t)(g->end - g->p) < n)
            return false;
        for (unsigned long i = 0; i < n; i++) {
            if (g->p[i] == '\0')
                return false; /* CHAR8 excludes NUL */
            if (val != NULL && vn < 63)
                val[vn++] = g->p[i];
        }
        g->p += n;
    } else {
        return false;
    }
    if (val != NULL)
        val[vn] = '\0';
    return true;
}

static bool gram_nil(struct gram *g)
{
    return gram_lit(g, "NIL");
}

static bool gram_nstring(struct gram *g, char *val)
{
    if (gram_nil(g)) {
        if (val != NULL)
            val[0] = '\0';
        return true;
    }
    return gram_string(g, val);
}

static bool gram_number(struct gram *g, unsigned long *n_r)
{
    const char *s = g->p;
    unsigned long n = 0;
    while (g->p < g->end && *g->p >= '0' && *g->p <= '9')
        n = n * 10 + (unsigned long)(*g->p++ - '0');
    if (n_r != NULL)
        *n_r = n;
    return g->p > s;
}

/* address = "(" addr-name SP addr-adl SP addr-mailbox SP addr-host ")" */
static bool gram_address(struct gram *g)
{
    return gram_lit(g, "(") && gram_nstring(g, NULL) && gram_lit(g, " ") && gram_nstring(g, NULL) &&
           gram_lit(g, " ") && gram_nstring(g, NULL) && gram_lit(g, " ") && gram_nstring(g, NULL) &&
           gram_lit(g, ")");
}

/* env-from etc. = "(" 1*address ")" / nil */
static bool gram_addrs(struct gram *g)
{
    if (gram_nil(g))
        return true;
    if (!gram_lit(g, "(") || !gram_address(g))
        return false;
    while (g->p < g->end && *g->p == '(')
        if (!gram_address(g))
            return false;
    return gram_lit(g, ")");
}

static bool gram_envelope(struct gram *g)
{
    if (!gram_lit(g, "(") || !gram_nstring(g, NULL) || !gram_lit(g, " ") || !gram_nstring(g, NULL))
        return false;
    for (int i = 0; i < 6; i++)
        if (!gram_lit(g, " ") || !gram_addrs(g))
            return false;
    return gram_lit(g, " ") && gram_nstring(g, NULL) && gram_lit(g, " ") && gram_nstring(g, NULL) &&
           gram_lit(g, ")");
}

/* body-fld-param = "(" string SP string *(SP string SP string) ")" / nil */
static bool gram_params(struct gram *g)
{
    if (gram_nil(g))
        return true;
    if (!gram_lit(g, "("))
        return false;
    do {
        if (!gram_string(g, NULL) || !gram_lit(g, " ") || !gram_string(g, NULL))
            return false;
    } while (gram_lit(g, " "));
    return gram_lit(g, ")");
}

/* [SP body-fld-dsp [SP body-fld-lang [SP body-fld-loc]]] after md5/params:
 * tern always writes all three. */
static bool gram_ext_tail(struct gram *g)
{
    if (!gram_lit(g, " "))
        return false;
    if (!gram_nil(g)) { /* body-fld-dsp = "(" string SP body-fld-param ")" */
        if (!gram_lit(g, "(") || !gram_string(g, NULL) || !gram_lit(g, " ") || !gram_params(g) ||
            !gram_lit(g, ")"))
            return false;
    }
    if (!gram_lit(g, " "))
        return false;
    if (gram_lit(g, "(")) { /* body-fld-lang = nstring / "(" string *(SP string) ")" */
        do {
            if (!gram_string(g, NULL))
                return false;
        } while (gram_lit(g, " "));
        if (!gram_lit(g, ")"))
            return false;
    } else if (!gram_nstring(g, NULL)) {
        return false;
    }
    g->ext_seen = true;
    return gram_lit(g, " ") && gram_nstring(g, NULL);
}

static bool gram_body(struct gram *g, const char *section, bool msg_body);

static void gram_child_section(char *out, size_t cap, const char *section, int i)
{
    if (section[0] == '\0')
        snprintf(out, cap, "%d", i);
    else
        snprintf(out, cap, "%s.%d", section, i);
}

/* body-type-mpart = 1*body SP media-subtype [SP body-ext-mpart], after "(" */
static bool gram_mpart(struct gram *g, const char *section)
{
    char child[512];
    int i = 0;
    while (g->p < g->end && *g->p == '(') {
        gram_child_section(child, sizeof(child), section, ++i);
        if (!gram_body(g, child, false))
            return false;
    }
    if (i == 0 || !gram_lit(g, " ") || !gram_string(g, NULL))
        return false;
    if (gram_lit(g, " ")) { /* body-ext-mpart */
        if (!gram_params(g) || !gram_ext_tail(g))
            return false;
    }
    return gram_lit(g, ")");
}

/* body = "(" (body-type-1part / body-type-mpart) ")". msg_body: this is
 * the body of a message (the top one: section "", or an encapsulated one),
 * whose parts are numbered under section, or which is part section.1 if it
 * is not multipart (RFC 3501 6.4.5). */
static bool gram_body(struct gram *g, const char *section, bool msg_body)
{
    if (++g->depth > 200 || !gram_lit(g, "("))
        return false;
    if (g->p < g->end && *g->p == '(') {
        if (g->part != NULL && !msg_body)
            g->part(g->ctx, section, 0, true, false);
        bool ok = gram_mpart(g, section);
        g->depth--;
        return ok;
    }
    char type[64], sub[64];
    unsigned long size, lines;
    if (!gram_string(g, type) || !gram_lit(g, " ") || !gram_string(g, sub) || !gram_lit(g, " ") ||
        !gram_params(g) || !gram_lit(g, " ") || !gram_nstring(g, NULL) || !gram_lit(g, " ") ||
        !gram_nstring(g, NULL) || !gram_lit(g, " ") || !gram_string(g, NULL) || !gram_lit(g, " ") ||
        !gram_number(g, &size))
        return false;
    bool msg = strcasecmp(type, "MESSAGE") == 0 && strcasecmp(sub, "RFC822") == 0;
    bool text = strcasecmp(type, "TEXT") == 0;
    char me[512];
    if (!msg_body)
        snprintf(me, sizeof(me), "%s", section);
    else
        gram_child_section(me, sizeof(me), section, 1);
    if (g->part != NULL)
        g->part(g->ctx, me, size, false, msg);
    if (msg) {
        /* the encapsulated message's parts are numbered under this one */
        if (!gram_lit(g, " ") || !gram_envelope(g) || !gram_lit(g, " ") ||
            !gram_body(g, me, true) || !gram_lit(g, " ") || !gram_number(g, &lines))
            return false;
    } else if (text) {
        if (!gram_lit(g, " ") || !gram_number(g, &lines))
            return false;
    }
    if (gram_lit(g, " ")) { /* body-ext-1part: md5 then the rest */
        if (!gram_nstring(g, NULL) || !gram_ext_tail(g))
            return false;
    }
    g->depth--;
    return gram_lit(g, ")");
}

/* Whole-output checks: 1 if [p, p + n) is exactly one body / envelope. */
static bool gram_check_body(const char *p, size_t n,
                            void (*part)(void *, const char *, unsigned long, bool, bool),
                            void *ctx, bool *ext_r)
{
    struct gram g = {.p = p, .end = p + n, .part = part, .ctx = ctx};
    bool ok = gram_body(&g, "", true) && g.p == g.end;
    if (ext_r != NULL)
        *ext_r = g.ext_seen;
    return ok;
}

static bool gram_check_envelope(const char *p, size_t n)
{
    struct gram g = {.p = p, .end = p + n};
    return gram_envelope(&g) && g.p == g.end;
}

#endif
