/*
 * fuzz_uidlist — libFuzzer target for the dovecot-uidlist parser
 * (maildir_uidlist_parse) and the mbox UID headers (mbox_uid_base,
 * mbox_parse_uid). The parser's promises: it accepts or gives a non-empty
 * reason, never both; an accepted list has a UIDVALIDITY and a next UID
 * (both non-zero) above every UID in it; every UID found for a name of the
 * input is non-zero and below that next UID; a small entry limit is obeyed.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "maildir/maildir.h"
#include "mbox/mbox.h"
#include "util/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_uidlist(const char *p, size_t n, size_t entries_max)
{
    struct maildir_uidlist *ul = NULL;
    char err[256] = "";
    int r = maildir_uidlist_parse(p, n, entries_max, &ul, err, sizeof(err));
    if (r < 0) {
        ASSERT(ul == NULL && err[0] != '\0');
        return;
    }
    ASSERT(r == 0 && ul != NULL);
    uint32_t uv = maildir_uidlist_uidvalidity(ul), next = maildir_uidlist_uidnext(ul);
    ASSERT(uv != 0 && next != 0);
    ASSERT(entries_max == 0 || maildir_uidlist_count(ul) <= entries_max);
    /* Look up every ":name" of the input. */
    const char *end = p + n;
    for (const char *q = p; q < end; q++) {
        if (*q != ':')
            continue;
        const char *e = q + 1;
        while (e < end && *e != '\n' && *e != '\r')
            e++;
        char *name = xstrndup(q + 1, (size_t)(e - q - 1));
        char *uniq = xmalloc(strlen(name) + 1);
        uint32_t flags;
        maildir_parse_name(name, NULL, uniq, &flags, NULL);
        uint32_t uid = maildir_uidlist_find(ul, uniq);
        ASSERT(uid == 0 || uid < next);
        free(uniq);
        free(name);
    }
    ASSERT(maildir_uidlist_find(ul, "") == 0);
    maildir_uidlist_free(&ul);
    ASSERT(ul == NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data;
    check_uidlist(p, size, 0);
    check_uidlist(p, size, 3);
    uint32_t uv = 1, next = 1;
    const char *why = NULL;
    int r = mbox_uid_base(p, size, &uv, &next, &why);
    if (r == 1)
        ASSERT(uv != 0 && next != 0);
    else
        ASSERT(uv == 0 && next == 0 && why != NULL && why[0] != '\0');
    uint32_t uid = 0;
    if (mbox_parse_uid(p, size, &uid) == 0)
        ASSERT(uid != 0);
    return 0;
}
