/*
 * fuzz_maildir_name — libFuzzer target for the Maildir name parsers: a
 * Maildir++ directory name to an IMAP folder name, and a message file name
 * to its identity, flags and keywords. A folder name that is accepted is
 * printable ASCII, within MAILDIR_NAME_MAX, and maps to itself when turned
 * back into a directory name (it is canonical modified UTF-7); an identity
 * is never longer than the name and holds no ':'; keywords are valid atoms.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "maildir/maildir.h"
#include "util/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_folder(const char *s, size_t n)
{
    char *dn = xmalloc(n + 2);
    dn[0] = '.';
    memcpy(dn + 1, s, n);
    dn[n + 1] = '\0';
    char out[MAILDIR_NAME_MAX + 1];
    const char *reason = NULL;
    if (maildir_folder_name(dn, out, 0, &reason) == 0) {
        size_t len = strlen(out);
        ASSERT(len > 0 && len <= MAILDIR_NAME_MAX);
        for (size_t i = 0; i < len; i++)
            ASSERT(out[i] >= 0x20 && out[i] <= 0x7e && out[i] != '.');
        /* Back to a directory name and through again: the same name. */
        char *back = xasprintf(".%s", out);
        for (char *p = back; *p != '\0'; p++) {
            if (*p == '/')
                *p = '.';
        }
        char again[MAILDIR_NAME_MAX + 1];
        ASSERT(maildir_folder_name(back, again, 0, &reason) == 0);
        ASSERT(strcmp(again, out) == 0);
        xfree(&back);
    } else {
        ASSERT(reason != NULL && reason[0] != '\0');
    }
    xfree(&dn);
}

static void check_file(const char *name)
{
    const char *kw[26] = {0};
    kw[0] = "$Junk";
    kw[2] = "Work";
    char *uniq = xmalloc(strlen(name) + 1);
    uint32_t flags;
    struct buf k;
    buf_init(&k, 0);
    unsigned p = maildir_parse_name(name, kw, uniq, &flags, &k);
    ASSERT(strlen(uniq) <= strlen(name) && strchr(uniq, ':') == NULL);
    ASSERT((flags & ~0x1fu) == 0 && (p & ~0x3fu) == 0);
    ASSERT(k.len <= MAIL_KEYWORDS_MAX);
    for (size_t i = 0; i < k.len;) {
        const char *sp = memchr(k.data + i, ' ', k.len - i);
        size_t wl = sp != NULL ? (size_t)(sp - (k.data + i)) : k.len - i;
        ASSERT(mail_keyword_valid(k.data + i, wl));
        i += wl + 1;
    }
    buf_free(&k);
    xfree(&uniq);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    size_t n = strnlen(s, size);
    if (n > 4096)
        return 0;
    check_folder(s, n);
    char *name = xstrndup(s, n);
    check_file(name);
    xfree(&name);
    return 0;
}
