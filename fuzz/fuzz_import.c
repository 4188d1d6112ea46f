/*
 * fuzz_import — libFuzzer target for what an import parses from outside:
 * an IMAP server's responses (the client in src/import reading a memory
 * stream: LIST, EXAMINE, then a streamed UID FETCH to the end), the job's
 * persisted state, delivery ids and imap:// sources. The first octet picks
 * the body limit of the FETCH. Checks the client's promises: a message it
 * returns has a UID at or above the one asked for, a body within the limit
 * unless marked too big, valid keywords; a state that parses writes back to
 * a text that parses to the same text.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "import/import_private.h"
#include "mail/mail.h"
#include "util/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int name_cb(void *ctx, const char *name, size_t len, char delim)
{
    (void)delim;
    size_t *n = ctx;
    ASSERT(name != NULL);
    *n += len;
    return 0;
}

static void fuzz_client(const char *p, size_t n, size_t max)
{
    struct imapc *c = imapc_new_mem(p, n);
    const char *e = NULL;
    size_t names = 0;
    struct imapc_box b;
    if (imapc_list(c, name_cb, &names, &e) == 0 && imapc_examine(c, "INBOX", 5, &b, &e) == 0 &&
        imapc_fetch_start(c, 3, 0, max, &e) == 0) {
        struct imapc_msg m;
        imapc_msg_init(&m);
        int r;
        while ((r = imapc_fetch_next(c, &m, &e)) == 1) {
            ASSERT(m.uid >= 3);
            ASSERT(m.too_big || m.body.len <= max);
            ASSERT(m.keywords.len <= MAIL_KEYWORDS_MAX);
        }
        ASSERT(r == 0 || (e != NULL && e[0] != '\0'));
        /* Then a listing without bodies, and the flag changes. */
        if (r == 0 && imapc_fetch_meta_start(c, 1, &e) == 0) {
            while ((r = imapc_fetch_next(c, &m, &e)) == 1)
                ASSERT(m.uid >= 1 && m.body.len == 0);
            if (r == 0 && imapc_fetch_changed_start(c, 100, 7, &e) == 0)
                while (imapc_fetch_next(c, &m, &e) == 1)
                    ASSERT(m.body.len == 0);
        }
        imapc_msg_free(&m);
    }
    imapc_free(&c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    log_set_level(LOG_ERROR);
    if (size == 0)
        return 0;
    size_t max = (size_t)data[0] * 64;
    const char *p = (const char *)data + 1;
    size_t n = size - 1;
    fuzz_client(p, n, max);

    struct import_state st;
    import_state_init(&st);
    const char *e;
    if (import_state_read(&st, p, n, &e) == 0) {
        struct buf a, b2;
        buf_init(&a, 0);
        buf_init(&b2, 0);
        import_state_write(&st, &a);
        ASSERT(import_state_read(&st, a.data, a.len, &e) == 0);
        import_state_write(&st, &b2);
        ASSERT(a.len == b2.len && memcmp(a.data, b2.data, a.len) == 0);
        buf_free(&a);
        buf_free(&b2);
    }
    import_state_free(&st);

    char s[600];
    size_t k = n < sizeof(s) - 1 ? n : sizeof(s) - 1;
    memcpy(s, p, k);
    s[k] = '\0';
    uint8_t ik[IMPORT_IK_LEN], ck[IMPORT_CK_LEN];
    enum import_mark mark;
    uint64_t job;
    if (import_id_parse(s, ik, ck, &mark, &job) == 0) {
        struct import_keys keys;
        char id[STORE_DELIVERY_ID_MAX + 1];
        memcpy(keys.ik, ik, IMPORT_IK_LEN);
        memcpy(keys.ck, ck, IMPORT_CK_LEN);
        import_id_make(&keys, mark, job, id);
        ASSERT(strlen(id) <= STORE_DELIVERY_ID_MAX);
    }
    char user[256], host[256];
    int port;
    bool tls;
    if (import_imap_url(s, user, sizeof(user), host, sizeof(host), &port, &tls, &e) == 0)
        ASSERT(port > 0 && port < 65536 && host[0] != '\0' && user[0] != '\0');
    int64_t t;
    (void)imapc_parse_date(s, k, &t);
    struct import_keys kk;
    import_key_content(&kk, p, n);
    return 0;
}
