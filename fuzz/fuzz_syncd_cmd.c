/*
 * fuzz_syncd_cmd — libFuzzer target for the TSYNC/1 command parser
 * (syncd_parse_line) and the parsers of batch records (syncd_parse_record
 * for APPENDS, with its optional delivery id; syncd_parse_delivered for
 * DELIVERED), each fed the same
 * octets. Any octets make one command line; the parser must
 * classify it without crashing or reading past it, give a reason for every
 * refusal, and only ever hand out NUL-terminated strings within their
 * fields. An accepted line's hex strings, re-encoded, must parse again to
 * the same command (the encoding is unambiguous); so must an accepted UID
 * set (EXPUNGES, COPIES) written again by sync_uidset_write.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "syncd/syncd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_str(const char *s, size_t cap)
{
    ASSERT(memchr(s, '\0', cap) != NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > SYNCD_LINE_MAX)
        return 0;
    /* A copy of exactly size octets: ASan catches any read past it. */
    char *line = malloc(size ? size : 1);
    if (line == NULL)
        return 0;
    memcpy(line, data, size);
    static struct syncd_cmd cmd, again;
    const char *err = NULL;
    int r = syncd_parse_line(line, size, &cmd, &err);
    ASSERT(r == 0 || r == -1 || r == SYNC_NO);
    if (r != 0)
        ASSERT(err != NULL && err[0] != '\0');
    int r_line = r;
    check_str(cmd.user, sizeof(cmd.user));
    check_str(cmd.folder, sizeof(cmd.folder));
    check_str(cmd.keywords, sizeof(cmd.keywords));
    check_str(cmd.moved_to, sizeof(cmd.moved_to));
    check_str(cmd.id, sizeof(cmd.id));
    if (cmd.has_body) {
        ASSERT(cmd.verb == SYNCD_APPEND || cmd.verb == SYNCD_ADD);
        ASSERT(cmd.body_len <= SYNCD_BODY_MAX);
    }
    if (cmd.has_count) {
        ASSERT(cmd.verb == SYNCD_APPENDS || cmd.verb == SYNCD_DELIVERED);
        ASSERT(cmd.num <= SYNC_BATCH_MAX);
    }
    /* An explicit modseq only on the changes that take one, within 1..2^63-1;
     * TOMB requires it. */
    if (r_line == 0 && cmd.modseq != 0)
        ASSERT(cmd.modseq <= STORE_MODSEQ_MAX &&
               (cmd.verb == SYNCD_APPEND || cmd.verb == SYNCD_FOLDER || cmd.verb == SYNCD_FDELETE ||
                cmd.verb == SYNCD_FLAGS || cmd.verb == SYNCD_EXPUNGE || cmd.verb == SYNCD_TOMB));
    if (r_line == 0 && cmd.verb == SYNCD_TOMB)
        ASSERT(cmd.modseq != 0 && cmd.size <= (uint64_t)INT64_MAX);
    if (r_line == 0 && cmd.verb == SYNCD_WAIT)
        ASSERT(cmd.wait_ms <= SYNC_WAIT_MAX_MS);
    /* A UID set: at most SYNC_UIDS_MAX, strictly ascending, no 0; written
     * again, it reads back the same. */
    if (r_line == 0 && (cmd.verb == SYNCD_EXPUNGES || cmd.verb == SYNCD_COPIES)) {
        ASSERT(sync_uids_ok(cmd.uids, cmd.n_uids, SYNC_UIDS_MAX));
        struct buf b;
        buf_init(&b, 0);
        sync_uidset_write(&b, cmd.uids, cmd.n_uids);
        size_t n2 = 0;
        const char *e2 = NULL;
        ASSERT(sync_uidset_parse(b.data, b.len, again.uids, SYNC_UIDS_MAX, &n2, &e2) == 0);
        ASSERT(n2 == cmd.n_uids && memcmp(again.uids, cmd.uids, n2 * sizeof(cmd.uids[0])) == 0);
        buf_free(&b);
    }
    /* The same octets as a record of each batch. */
    r = syncd_parse_record(line, size, &again, &err);
    if (r == 0)
        ASSERT(again.modseq <= STORE_MODSEQ_MAX);
    ASSERT(r == 0 || r == -1 || r == SYNC_NO);
    if (r != 0)
        ASSERT(err != NULL && err[0] != '\0');
    if (again.has_body)
        ASSERT(again.body_len <= SYNCD_BODY_MAX);
    check_str(again.folder, sizeof(again.folder));
    check_str(again.keywords, sizeof(again.keywords));
    check_str(again.id, sizeof(again.id));
    /* A record's delivery id: printable, no space, within its limit. */
    if (r == 0)
        for (const char *q = again.id; *q != '\0'; q++)
            ASSERT((unsigned char)*q > 0x20 && (unsigned char)*q < 0x7f);
    r = syncd_parse_delivered(line, size, &again, &err);
    ASSERT(r == 0 || r == -1 || r == SYNC_NO);
    if (r != 0)
        ASSERT(err != NULL && err[0] != '\0');
    check_str(again.id, sizeof(again.id));
    check_str(again.folder, sizeof(again.folder));
    if (r == 0)
        ASSERT(again.id[0] != '\0' && again.verb == SYNCD_DELIVERY);
    if (r_line == 0 && cmd.verb == SYNCD_MBOX) {
        /* Re-encode the user: the same command must come back. */
        size_t n = strlen(cmd.user);
        char *l2 = malloc(5 + 2 * n + 2);
        if (l2 != NULL) {
            memcpy(l2, "MBOX ", 5);
            if (n == 0) {
                l2[5] = '-';
                l2[6] = '\0';
            } else {
                hex_encode(cmd.user, n, l2 + 5);
            }
            ASSERT(syncd_parse_line(l2, strlen(l2), &again, &err) == 0);
            ASSERT(strcmp(again.user, cmd.user) == 0);
            free(l2);
        }
    }
    free(line);
    return 0;
}
