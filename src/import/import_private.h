/*
 * import_private — what the files of src/import/ share: the job's persisted
 * state (import_state.c), the sources behind one small vtable
 * (import_file.c: mbox and Maildir; import_imap.c: a remote IMAP server),
 * the blocking IMAP client (import_imapc.c) and the identity keys
 * (import_key.c). Nothing outside src/import/ includes this.
 */
#ifndef TERN_IMPORT_PRIVATE_H
#define TERN_IMPORT_PRIVATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "import/import.h"
#include "store/store.h"
#include "util/util.h"

#define IMPORT_STATE_MAGIC "tern-import 1"
#define IMPORT_FOLDERS_MAX 10000 /* folders of one source */
#define IMPORT_FAILS_KEPT  100   /* failures listed per folder (all are counted) */
#define IMPORT_STATE_FAILS_BUDGET                                                                  \
    (4u << 20)                  /* state octets after which no more failures are listed */
#define IMPORT_TEXT_MAX    255  /* a failure's place or reason */
#define IMPORT_SETTLE_MS   2000 /* an mbox tail younger than this may be half written */
#define IMPORT_IDENT_MAX   255  /* a source identity string */
#define IMPORT_SRC_KEY_MAX 1024 /* a folder's locator in its source */
#define IMPORT_SECRET_MAX  1024 /* octets of a password */
#define IMPORT_ID_PREFIX   "imp1."
#define IMPORT_IK_LEN      15 /* octets of the identity key in a delivery id */
#define IMPORT_CK_LEN      15 /* octets of the content key in a delivery id */

/* ---- the persisted state (import_state.c) -------------------------------- */

struct import_fail {
    char where[IMPORT_TEXT_MAX + 1];
    char why[IMPORT_TEXT_MAX + 1];
};

/* One source folder: its checkpoint and its line in the report. */
struct import_fstate {
    char name[STORE_FOLDER_MAX + 1];  /* destination name (the key) */
    char src[IMPORT_SRC_KEY_MAX + 1]; /* locator in the source */
    bool seen;                        /* listed by the latest scan of the source */
    /* checkpoints */
    uint64_t cp;                   /* mbox: offset to read on from; imap: every UID <= cp handled */
    uint32_t uidvalidity;          /* imap: of cp */
    uint32_t uidnext;              /* imap: at the latest pass */
    uint64_t modseq;               /* imap: HIGHESTMODSEQ at the latest pass (0: none) */
    int mbox_format;               /* enum mbox_format the first pass detected (0: not yet) */
    uint64_t size, ino;            /* mbox: the file at the checkpoint */
    int64_t mtime_ns;              /* mbox: the file's; maildir: new/ + cur/ */
    char tail[2 * SHA256_LEN + 1]; /* mbox: SHA-256 of up to 4 KiB before cp */
    /* the report */
    uint64_t src_msgs, src_bytes;        /* in the source (as of the latest scan) */
    uint64_t already;                    /* found already imported by the latest scan */
    uint64_t imported, stragglers, dups; /* by this job (recounted from the records) */
    uint64_t malformed;                  /* imported as they are, with a problem */
    uint64_t uids_kept, uids_new;        /* source UIDs kept, or not (imap) */
    char uid_note[IMPORT_TEXT_MAX + 1];  /* why source UIDs were not kept */
    uint64_t failed;                     /* messages that could not be imported */
    uint64_t flags_synced;               /* flag changes carried over while watching */
    struct import_fail *fails;           /* the first IMPORT_FAILS_KEPT of them */
    size_t n_fails;
};

struct import_state {
    /* settings, fixed at creation */
    struct import_settings set;
    /* progress */
    bool inflight;                  /* appends may have been made without their record */
    int64_t cutover;                /* unix s: when `complete` ran (0: not yet) */
    char note[IMPORT_TEXT_MAX + 1]; /* a note for the whole job (mailbox created, ...) */
    struct import_fstate *f;
    size_t n;
};

void import_state_init(struct import_state *s);
void import_state_free(struct import_state *s);
/* Serializes s (text, hex for strings) into out. */
void import_state_write(const struct import_state *s, struct buf *out);
/* Parses what import_state_write wrote. -1 with *error_r if it is not. */
int import_state_read(struct import_state *s, const char *p, size_t len, const char **error_r);
/* The folder named name, created (zeroed) if missing. */
struct import_fstate *import_state_folder(struct import_state *s, const char *name);
/* Adds a failure to a folder (counted; listed while under the cap). */
void import_fstate_fail(struct import_fstate *f, const char *where, const char *why);
void import_fstate_clear_fails(struct import_fstate *f);

/* ---- identities and keys (import_key.c) ---------------------------------- */

struct import_keys {
    uint8_t ik[IMPORT_IK_LEN];    /* identity key: user, kind, scope, folder, identity */
    uint8_t guid[STORE_GUID_LEN]; /* the GUID the message gets (same hash) */
    uint8_t ck[IMPORT_CK_LEN];    /* content key: the octets minus volatile headers */
};

/* The identity key and GUID of a source message. scope tells sources of
 * one kind apart where identities could repeat ("" for files, the server
 * for IMAP). */
void import_key_ident(struct import_keys *k, const char *user, const char *kind, const char *scope,
                      const char *folder, const char *ident);
/* The content key: SHA-256 of the message without the headers mail stores
 * and clients rewrite (Status, X-Status, X-Keywords, X-UID, Content-Length,
 * Lines, X-IMAP, X-IMAPbase, X-Mozilla-Status, X-Mozilla-Status2,
 * X-Mozilla-Keys). */
void import_key_content(struct import_keys *k, const char *data, size_t len);

enum import_mark { IMPORT_MARK_COPY = 'c', IMPORT_MARK_STRAGGLER = 's', IMPORT_MARK_DUP = 'd' };
/* The delivery id recording a message: "imp1.<ik>.<ck>.<mark><job>" (base64url
 * keys, job in base 36), at most STORE_DELIVERY_ID_MAX octets. */
void import_id_make(const struct import_keys *k, enum import_mark mark, uint64_t job,
                    char out[STORE_DELIVERY_ID_MAX + 1]);
/* Parses an id import_id_make wrote: 0 with ik, ck, mark and job, -1 for
 * any other id (a delivery's, a malformed one). */
int import_id_parse(const char *id, uint8_t ik[IMPORT_IK_LEN], uint8_t ck[IMPORT_CK_LEN],
                    enum import_mark *mark_r, uint64_t *job_r);

/* ---- sources (import_file.c, import_imap.c) --------------------------------- */

struct import_sfolder {
    char name[STORE_FOLDER_MAX + 1];  /* destination name ("INBOX", "Work/2024") */
    char src[IMPORT_SRC_KEY_MAX + 1]; /* locator in the source */
    uint32_t uidvalidity;             /* imap */
    uint32_t uidnext;                 /* imap */
    uint64_t modseq;                  /* imap: HIGHESTMODSEQ, 0 if none */
    uint64_t count;                   /* messages (estimate for the progress bar) */
    bool count_exact;                 /* count is the source's own (IMAP STATUS) */
    uint64_t bytes;                   /* octets (estimate) */
    char error[IMPORT_TEXT_MAX + 1];  /* a folder that cannot be imported: why */
    /* Files: uidvalidity and uidnext from dovecot-uidlist or X-IMAPbase;
     * when uidvalidity is 0, why the source gives no UIDs. */
    char uid_note[IMPORT_TEXT_MAX + 1];
};

enum import_item_kind {
    IMPORT_ITEM_MSG = 0, /* a message */
    IMPORT_ITEM_FAIL,    /* something that cannot be imported: where, why */
    IMPORT_ITEM_WAIT,    /* the rest may be half written: stop here, look again later */
};

struct import_item {
    enum import_item_kind kind;
    char ident[IMPORT_IDENT_MAX + 1];
    uint64_t pos_before, pos_after; /* checkpoints that re-read / skip this item */
    uint32_t uid;                   /* a source UID to keep (0: none) */
    uint32_t flags;                 /* MAIL_F_* */
    const char *keywords;           /* space-separated */
    int64_t internal_date;
    const char *data; /* CRLF octets, valid until the next call; NULL if known */
    size_t len;       /* octets (known: the source's size) */
    bool known;       /* the source asked known(): imported already, no body */
    bool flags_only;  /* known, below the checkpoint, its flags changed */
    uint8_t sha256[SHA256_LEN];
    bool malformed; /* imported as it is, with a problem */
    char where[IMPORT_TEXT_MAX + 1];
    char why[IMPORT_TEXT_MAX + 1];
};

struct import_src;
struct import_iter;

struct import_src_ops {
    const char *kind; /* "mbox", "maildir", "imap" */
    /* The source's folders (*list_r malloc'd). -1 with *error_r: the source
     * cannot be read now (try later). */
    int (*list)(struct import_src *s, struct import_sfolder **list_r, size_t *n_r,
                const char **error_r);
    /* Starts reading folder f at checkpoint st (which it may reset for a
     * full rescan, and update as it reads: mtime, size). *iter_r NULL when
     * nothing changed since st. full: read everything from the start. */
    int (*open)(struct import_src *s, const struct import_sfolder *f, struct import_fstate *st,
                bool full, struct import_iter **iter_r, const char **error_r);
    /* 1 with *it, 0 at the end, -1 with *error_r if the source failed. */
    int (*next)(struct import_iter *i, struct import_item *it, const char **error_r);
    /* Completes st for the checkpoint st->cp the engine set (mbox: the
     * tail hash); done: the pass read everything (only then may st say the
     * folder is unchanged as of now). */
    void (*finish)(struct import_iter *i, struct import_fstate *st, bool done);
    void (*iter_free)(struct import_iter **i);
    void (*close)(struct import_src *s);
};

struct import_src {
    const struct import_src_ops *ops;
    char scope[IMPORT_SRC_KEY_MAX + 1]; /* see import_key_ident */
    size_t msg_max;
    bool counting; /* list() also estimates counts (costs a read of mbox files) */
    /* Set by the engine: true if a message of folder with this identity is
     * imported already, so a source that can (IMAP) skips its body. */
    bool (*known)(void *ctx, const char *folder, const char *ident);
    void *known_ctx;
    /* Set by the engine while the source is the master (watching, before
     * the cutover): a source that can (IMAP with CONDSTORE) also returns
     * messages below its checkpoint whose flags changed (flags_only). */
    bool flag_changes;
};

/* Opens a source for spec ("mbox:PATH", "maildir:PATH", "imap://..."). The
 * password (IMAP) comes from settings->secret. -1 with *error_r. */
int import_src_open(const char *spec, const struct import_settings *set, size_t msg_max,
                    struct import_src **s_r, char *err, size_t errlen);
int import_src_open_file(const char *spec, size_t msg_max, struct import_src **s_r, char *err,
                         size_t errlen);
/* ca_file: see import_settings (imaps only; NULL or "" the system's CAs). */
int import_src_open_imap(const char *spec, const char *password, const char *ca_file,
                         size_t msg_max, struct import_src **s_r, char *err, size_t errlen);
void import_src_close(struct import_src **s);

/* Parses "imap://USER@HOST[:PORT]" (and imaps://): user (percent-decoded),
 * host, port. -1 with *error_r. */
int import_imap_url(const char *spec, char *user, size_t userlen, char *host, size_t hostlen,
                    int *port_r, bool *tls_r, const char **error_r);

/* ---- the IMAP client (import_imapc.c) ---------------------------------------- */

struct imapc;

struct imapc_box {
    uint32_t uidvalidity, uidnext, exists;
    uint64_t highestmodseq; /* 0: the server has no CONDSTORE */
};

struct imapc_msg {
    uint32_t uid;
    uint32_t flags; /* MAIL_F_* */
    struct buf keywords;
    int64_t internal_date;
    bool has_date;
    bool too_big;  /* the body was over the limit: skipped, not kept */
    uint64_t size; /* octets of the body as the server sent it */
    struct buf body;
    unsigned bad_keywords;
};

/* Connects ("HOST" resolved here), with tls starts TLS at once (imaps:
 * the certificate checked against ca_file or the system's CAs and host;
 * sock_start_tls) and reads the greeting. NULL with err. */
struct imapc *imapc_connect(const char *host, int port, bool tls, const char *ca_file,
                            unsigned timeout_ms, char *err, size_t errlen);
void imapc_free(struct imapc **c);
/* A client whose server says p[0..n) (nothing is sent anywhere): for tests
 * and fuzzing of the response parser. p must outlive it. */
struct imapc *imapc_new_mem(const char *p, size_t n);
/* LOGIN. 0, 1 refused (wrong user or password: *error_r the server's
 * words), -1 failure. */
int imapc_login(struct imapc *c, const char *user, const char *password, const char **error_r);
/* LIST "" "*": cb per selectable mailbox with its name (as sent) and the
 * hierarchy delimiter (0 if none). */
int imapc_list(struct imapc *c, int (*cb)(void *ctx, const char *name, size_t len, char delim),
               void *ctx, const char **error_r);
/* EXAMINE name (read-only: nothing in the source changes). 0, 1 if the
 * server refused (gone), -1. */
int imapc_examine(struct imapc *c, const char *name, size_t len, struct imapc_box *out,
                  const char **error_r);
/* UID FETCH from:* (UID FLAGS INTERNALDATE BODY.PEEK[]) on the examined
 * mailbox, streamed: imapc_fetch_next gives one message at a time (1), 0 at
 * the end, -1 on failure. Bodies over max are read and dropped (too_big). */
int imapc_fetch_start(struct imapc *c, uint32_t from, uint32_t to, size_t max,
                      const char **error_r);
int imapc_fetch_next(struct imapc *c, struct imapc_msg *m, const char **error_r);
/* UID FETCH from:* (UID FLAGS INTERNALDATE RFC822.SIZE): what is there,
 * without bodies (imapc_fetch_next gives size, no body). */
int imapc_fetch_meta_start(struct imapc *c, uint32_t from, const char **error_r);
/* UID FETCH SET (UID FLAGS INTERNALDATE BODY.PEEK[]) for a set of UIDs
 * ("3,7:9"). */
int imapc_fetch_set_start(struct imapc *c, const char *set, size_t max, const char **error_r);
/* UID FETCH 1:to (UID FLAGS) (CHANGEDSINCE since): messages whose flags
 * changed (CONDSTORE), without bodies. */
int imapc_fetch_changed_start(struct imapc *c, uint32_t to, uint64_t since, const char **error_r);
void imapc_msg_init(struct imapc_msg *m);
void imapc_msg_free(struct imapc_msg *m);
/* LOGOUT and close. */
void imapc_logout(struct imapc **c);
/* True if the server announced the capability. */
bool imapc_has_cap(const struct imapc *c, const char *cap);

/* Parses an IMAP date-time "17-Jul-1996 02:44:25 -0700" (day may be one
 * digit or space-padded). 0 with unix seconds, or -1. */
int imapc_parse_date(const char *s, size_t len, int64_t *out_r);

#endif
