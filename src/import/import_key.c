/* import — identity keys, content keys and delivery ids. See import_private.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "import/import_private.h"

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* n octets (a multiple of 3) as base64url without padding. */
static void b64_put(const uint8_t *in, size_t n, char *out)
{
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *out++ = b64url[(v >> 18) & 63];
        *out++ = b64url[(v >> 12) & 63];
        *out++ = b64url[(v >> 6) & 63];
        *out++ = b64url[v & 63];
    }
    *out = '\0';
}

static int b64_val(char c)
{
    const char *p = c != '\0' ? strchr(b64url, c) : NULL;
    return p != NULL ? (int)(p - b64url) : -1;
}

/* Exactly 4n/3 characters into n octets. */
static int b64_get(const char *in, size_t chars, uint8_t *out)
{
    for (size_t i = 0; i < chars; i += 4) {
        uint32_t v = 0;
        for (size_t k = 0; k < 4; k++) {
            int x = b64_val(in[i + k]);
            if (x < 0)
                return -1;
            v = v << 6 | (uint32_t)x;
        }
        *out++ = (uint8_t)(v >> 16);
        *out++ = (uint8_t)(v >> 8);
        *out++ = (uint8_t)v;
    }
    return 0;
}

void import_key_ident(struct import_keys *k, const char *user, const char *kind, const char *scope,
                      const char *folder, const char *ident)
{
    struct buf b;
    buf_init(&b, 0);
    /* NUL-separated: no field can run into the next. */
    const char *parts[] = {"tern-import-1", user, kind, scope, folder, ident};
    for (size_t i = 0; i < ARRAY_SIZE(parts); i++)
        buf_append(&b, parts[i], strlen(parts[i]) + 1);
    uint8_t h[SHA256_LEN];
    sha256_buf(b.data, b.len, h);
    buf_free(&b);
    memcpy(k->ik, h, IMPORT_IK_LEN);
    memcpy(k->guid, h + 16, STORE_GUID_LEN);
}

/* Headers mail stores write into messages and mail clients rewrite when a
 * flag changes: they do not make a message another one. */
static bool volatile_header(const char *p, size_t n)
{
    static const char *const names[] = {
        "status",           "x-status",
        "x-keywords",       "x-uid",
        "content-length",   "lines",
        "x-imap",           "x-imapbase",
        "x-mozilla-status", "x-mozilla-status2",
        "x-mozilla-keys",
    };
    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        size_t l = strlen(names[i]);
        if (n == l && strncasecmp(p, names[i], l) == 0)
            return true;
    }
    return false;
}

void import_key_content(struct import_keys *k, const char *data, size_t len)
{
    /* Walk the header lines (up to the first empty line); drop volatile
     * ones with their continuation lines. Only copy when there is one. */
    struct buf out;
    buf_init(&out, 0);
    bool copying = false;
    size_t i = 0, kept_to = 0;
    bool dropping = false;
    while (i < len) {
        const char *nl = memchr(data + i, '\n', len - i);
        size_t end = nl != NULL ? (size_t)(nl - data) + 1 : len;
        const char *line = data + i;
        size_t ll = end - i;
        if (ll <= 2 && (line[0] == '\n' || (line[0] == '\r' && ll == 2 && line[1] == '\n')))
            break; /* the empty line: the body follows */
        bool cont = line[0] == ' ' || line[0] == '\t';
        if (!cont) {
            const char *colon = memchr(line, ':', ll);
            dropping = colon != NULL && volatile_header(line, (size_t)(colon - line));
        }
        if (dropping) {
            if (!copying) {
                buf_append(&out, data, i);
                copying = true;
            } else {
                buf_append(&out, data + kept_to, i - kept_to);
            }
            kept_to = end;
        }
        i = end;
    }
    uint8_t h[SHA256_LEN];
    if (copying) {
        buf_append(&out, data + kept_to, len - kept_to);
        sha256_buf(out.data, out.len, h);
    } else {
        sha256_buf(data, len, h);
    }
    buf_free(&out);
    memcpy(k->ck, h, IMPORT_CK_LEN);
}

void import_id_make(const struct import_keys *k, enum import_mark mark, uint64_t job,
                    char out[STORE_DELIVERY_ID_MAX + 1])
{
    char ik[IMPORT_IK_LEN * 4 / 3 + 1], ck[IMPORT_CK_LEN * 4 / 3 + 1], jb[16];
    b64_put(k->ik, IMPORT_IK_LEN, ik);
    b64_put(k->ck, IMPORT_CK_LEN, ck);
    size_t n = 0;
    char rev[16];
    do {
        rev[n++] = "0123456789abcdefghijklmnopqrstuvwxyz"[job % 36];
        job /= 36;
    } while (job > 0);
    for (size_t i = 0; i < n; i++)
        jb[i] = rev[n - 1 - i];
    jb[n] = '\0';
    int w = snprintf(out, STORE_DELIVERY_ID_MAX + 1, IMPORT_ID_PREFIX "%s.%s.%c%s", ik, ck,
                     (char)mark, jb);
    ASSERT(w > 0 && w <= STORE_DELIVERY_ID_MAX);
}

int import_id_parse(const char *id, uint8_t ik[IMPORT_IK_LEN], uint8_t ck[IMPORT_CK_LEN],
                    enum import_mark *mark_r, uint64_t *job_r)
{
    const size_t pl = strlen(IMPORT_ID_PREFIX), il = IMPORT_IK_LEN * 4 / 3,
                 cl = IMPORT_CK_LEN * 4 / 3;
    size_t n = strlen(id);
    if (n < pl + il + 1 + cl + 1 + 2 || strncmp(id, IMPORT_ID_PREFIX, pl) != 0)
        return -1;
    const char *p = id + pl;
    if (b64_get(p, il, ik) < 0 || p[il] != '.')
        return -1;
    p += il + 1;
    if (b64_get(p, cl, ck) < 0 || p[cl] != '.')
        return -1;
    p += cl + 1;
    if (*p != IMPORT_MARK_COPY && *p != IMPORT_MARK_STRAGGLER && *p != IMPORT_MARK_DUP)
        return -1;
    *mark_r = (enum import_mark) * p++;
    uint64_t job = 0;
    if (*p == '\0' || strlen(p) > 13)
        return -1;
    for (; *p != '\0'; p++) {
        const char *d = strchr("0123456789abcdefghijklmnopqrstuvwxyz", *p);
        if (d == NULL || *p == '\0')
            return -1;
        job = job * 36 + (uint64_t)(d - "0123456789abcdefghijklmnopqrstuvwxyz");
    }
    *job_r = job;
    return 0;
}
