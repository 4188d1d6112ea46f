/*
 * imapd_private — the session state shared by the files of src/imapd/.
 * Only src/imapd/ includes this.
 */
#ifndef TERN_IMAPD_PRIVATE_H
#define TERN_IMAPD_PRIVATE_H

#include "imapd/imapd.h"
#include "mime/mime.h"

#define IMAPD_HIER     '/'
#define IMAPD_BAD_MAX  20 /* BAD replies before the session is ended */
#define IMAPD_READ_BUF 65536

enum imapd_state { ST_NOAUTH = 0, ST_AUTH, ST_SELECTED, ST_LOGOUT };

/* One message of the selected folder, in sequence order. */
struct imapd_msg {
    uint32_t uid;
    uint32_t flags;
    char *keywords; /* malloc'd, space-separated, "" if none */
    uint64_t modseq;
    uint64_t size;
    int64_t internal_date;
    bool gone;    /* expunged on the store, EXPUNGE not yet sent */
    bool changed; /* flags changed by someone else, FETCH not yet sent */
};

struct imapd_session {
    int fd;
    struct tls_conn *tls; /* NULL: plaintext */
    const char *peer;
    const struct imapd_env *env;
    struct imap_reader *rd;
    struct imap_parser *ps;
    char *in;
    size_t in_off, in_len;
    struct buf out;
    bool closing; /* end the session after flushing */
    bool broken;  /* the connection failed: write nothing more */
    enum imapd_state state;
    unsigned n_bad, n_auth_fail;
    int64_t last_input_ms, last_state_check_ms;

    char user[MAIL_ADDR_MAX + 1];
    struct sync *sy;
    bool no_wait; /* the store does not know WAIT: IDLE polls */
    bool condstore, qresync;

    /* the selected folder */
    char folder[STORE_FOLDER_MAX + 1];
    uint32_t uidvalidity, uidnext;
    bool readonly;
    struct imapd_msg *msgs;
    size_t n, cap;
    uint64_t modseq; /* changes up to this are applied */

    /* one parsed message, for FETCH and SEARCH */
    uint32_t cache_uid;
    bool cache_header_only; /* cache_body holds only the header */
    struct buf cache_body;
    struct mime_msg *cache_mime;
};

/* Responses. */
void imapd_out(struct imapd_session *s, const char *fmt, ...) TERN_PRINTF(2, 3);
void imapd_flush(struct imapd_session *s);
void imapd_reply(struct imapd_session *s, const char *tag, const char *status, const char *fmt, ...)
    TERN_PRINTF(4, 5);
/* A store failure as a reply: NO with a client-safe text, or BYE when the
 * channel is gone or the mailbox is no longer here. */
void imapd_store_failed(struct imapd_session *s, const char *tag, int r, const char *why);
void imapd_write_flags(struct buf *b, uint32_t flags, const char *keywords);
void imapd_write_date(struct buf *b, int64_t t);

/* The selected folder. */
void imapd_sync_selected(struct imapd_session *s, bool allow_expunge);
void imapd_unselect(struct imapd_session *s);
/* Sequence number (1-based) of uid, or 0. */
size_t imapd_seq_of(const struct imapd_session *s, uint32_t uid);
/* The set argument as a list of sequence indexes (0-based) into s->msgs,
 * ascending. -1 with *error_r (BAD). */
int imapd_set_resolve(struct imapd_session *s, const char *set, bool uid, size_t **idx_r,
                      size_t *n_r, const char **error_r);
/* Loads (and caches) the body and MIME parse of message i. 0, or -1 with
 * the reply already chosen by the caller (store failure / gone). */
int imapd_load(struct imapd_session *s, size_t i, const char **why_r, int *r_r);
/* Writes "a,b:c" for a sorted uid list. */
void imapd_write_uidset(struct buf *b, const uint32_t *uids, size_t n);

/* Folder names. 0 and the canonical stored name ("inbox" any case ->
 * "INBOX", a trailing '/' dropped) in out, or -1 with *why_r. */
int imapd_folder_name(const char *in, size_t len, char *out, const char **why_r);

/* Commands in imapd_msg.c. */
void imapd_cmd_fetch(struct imapd_session *s, const struct imap_command *c,
                     const struct imap_arg *a, size_t n, bool uid);
void imapd_cmd_store(struct imapd_session *s, const struct imap_command *c,
                     const struct imap_arg *a, size_t n, bool uid);
void imapd_cmd_search(struct imapd_session *s, const struct imap_command *c,
                      const struct imap_arg *a, size_t n, bool uid);
void imapd_cmd_copy(struct imapd_session *s, const struct imap_command *c, const struct imap_arg *a,
                    size_t n, bool uid, bool move);
void imapd_cmd_expunge(struct imapd_session *s, const char *tag, const char *uidset, bool silent);

/* Parses an IMAP date-time ("dd-Mon-yyyy hh:mm:ss +zzzz") or date
 * ("d-Mon-yyyy"); -1 if malformed. */
int64_t imapd_parse_datetime(const char *s);
int64_t imapd_parse_date(const char *s);
/* A number: digits only, no sign, no overflow, at most max (RFC 3501's
 * number is 32 bits, RFC 7162's mod-sequence-value 63). 0 or -1. */
int imapd_parse_number(const char *s, uint64_t max, uint64_t *out_r);
#define IMAPD_MODSEQ_MAX ((uint64_t)INT64_MAX)
/* Flag list / single flag into flags + keywords (buf, space-separated).
 * -1 with *why_r for an unknown system flag or a bad keyword. */
int imapd_parse_flags(const struct imap_arg *a, size_t n, uint32_t *flags_r, struct buf *kw,
                      const char **why_r);

#endif
