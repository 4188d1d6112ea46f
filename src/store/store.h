/*
 * store — the mailboxes homed on one store: folders, messages, flags, a
 * per-mailbox modification sequence (modseq) and a change log answerable in
 * time proportional to the changes.
 *
 * Model.
 *  - A store has a name ("s1") and holds mailboxes keyed by user address.
 *  - A mailbox has a state (staged | active | fenced | moved | deleting), the
 *    epoch at which it holds that state, for "moved" the store it moved to,
 *    and a modseq that every change raises by one.
 *  - A mailbox has folders ("INBOX" always, created with the mailbox, plus
 *    any IMAP name up to STORE_FOLDER_MAX octets). A folder has a stable id,
 *    UIDVALIDITY, UIDNEXT and the modseq of its last create/rename/delete.
 *  - A message has a 128-bit GUID (stable across moves), a UID unique in its
 *    folder under that folder's UIDVALIDITY, system flags, keywords, an
 *    internal date, a size and the SHA-256 of its bytes, and the modseq of its
 *    last change. Bodies are immutable.
 *
 * Change log. Every change (append, flag change, expunge, folder create,
 * rename, delete) takes mailbox.modseq + 1 and stamps it on the changed row.
 * Expunged messages and deleted folders stay as tombstones (flagged, body
 * released), so store_changes(since = N) visits only rows whose modseq > N,
 * through an index: cost proportional to the changes, not the mailbox.
 * A mailbox state change (store_mailbox_set_state) is not a change of the
 * log: the modseq stays.
 *
 * Explicit modseqs (the mover only). A move gives every row of the copy
 * exactly the modseq it has on the source, so that a client's CONDSTORE /
 * QRESYNC state stays exact (docs/move.md "What clients keep"). The `_at`
 * variants below and store_append.modseq take such a modseq m != 0: the
 * row gets exactly m (also when nothing else about it changes, and also if
 * m is below its modseq now), and the mailbox modseq becomes max(modseq, m).
 * They are accepted only on a STAGED mailbox (STORE_NOTLIVE otherwise: on a
 * live mailbox a modseq below a client's HIGHESTMODSEQ would hide the
 * change from it); m above 2^63 - 1 is STORE_INVALID. m == 0 is the plain
 * function. The change log stays exact with such rows (it is an index on
 * the modseq, not an append order), but a listing taken while explicit
 * modseqs are written may miss rows stamped below its position: nothing
 * lists a staged copy while the mover fills it.
 *
 * Fencing tokens (the mover only; docs/move.md "Leases"). Every claim of a
 * move job gets a token (job id, claim count), strictly increasing: a later
 * job, or a later claim of the same job, is greater. A mailbox row keeps
 * the highest token that was presented for it (0/0: none). While a caller
 * has set a token for a user on a struct store (store_token_set), every
 * change of that user's mailbox through that handle — append, flags,
 * expunge, tombstone, folder create/rename/delete, UIDNEXT, delivery ids,
 * the modseq counter, the state, the purge, the create — is checked inside
 * its transaction, before the state guard: a row token above the caller's
 * refuses it with STORE_STALE (nothing changes; the caller's claim was
 * superseded by another mover's), a row token below is raised to it in the
 * same transaction. Changes without a token set (deliveries, IMAP clients,
 * imports, a mover's retention purge) are not checked and change no token.
 *
 * State guard. The mailbox state decides which operations the store
 * accepts; it is checked on the mailbox row inside the same transaction as
 * the change (fs: under BEGIN IMMEDIATE), so a state change that commits
 * first, from any process, is always seen:
 *
 *                       staged  active  fenced  moved  deleting
 *   append                ok      ok      -       -       -
 *   append require_live   -      ok(1)    -       -       -
 *   set_flags, expunge    ok      ok      -       -       -
 *   folder create/rename/
 *   delete, set_uidnext   ok      ok      -       -       -
 *   delivery_add          ok      ok      -       -       -
 *   mailbox_set_state     ok      ok      ok      ok      ok    (the mover)
 *   mailbox_purge         -       -       -       -       ok    (else CONFLICT)
 *   reads (get, list,
 *   iter, read, changes)  ok      ok      ok      ok      ok
 *
 *   - = STORE_NOTLIVE and nothing changes (for an append, that item only;
 *   its result carries the mailbox). (1) only at exactly the given epoch.
 *   The state is checked after the mailbox is found and before the folder
 *   or message is, so a refused change reports NOTLIVE, not NOTFOUND or
 *   EXISTS. Invalid arguments are still STORE_INVALID first.
 *
 * Delivery and liveness (brief invariants 3 and 4).
 *  - store_batch_commit() with `require_live` appends a message only if, at
 *    commit time and inside the commit's transaction, the mailbox is ACTIVE
 *    at exactly the given epoch; otherwise that item reports STORE_NOTLIVE
 *    with the mailbox's state, epoch and moved_to, and nothing is written for
 *    it. A fence that commits first is therefore always seen.
 *  - An item with a delivery id that the mailbox already recorded reports
 *    STORE_OK with `duplicate` set and the first delivery's UID, whatever
 *    the state: a retried delivery after a lost acknowledgement stores
 *    nothing twice (and writes nothing, so the guard is not needed). If the
 *    id was recorded by store_delivery_add() without a message here (a move
 *    copied it, the message had been expunged on the source), the result
 *    has uid, uidvalidity, guid and modseq all 0.
 *
 * Durability (the fs backend). A commit writes all bodies of the batch,
 * makes them durable with one fdatasync, then commits all metadata in one
 * SQLite transaction (WAL, synchronous=FULL: one more fsync). Only after
 * store_batch_commit() returns 0 may a caller acknowledge. After kill -9 or
 * power loss at any instant, every committed message is present and
 * readable, and nothing uncommitted is visible (bodies without metadata are
 * unreachable bytes, reclaimed later). Many deliveries share those two
 * fsyncs: that is the group commit.
 *
 * Backends: store_open_fs (durable, the real one) and store_open_memory
 * (tests). Both keep every contract above except durability.
 *
 * Threading: one thread at a time per struct store. Several processes may
 * open the same fs store (the store role and the CLI); SQLite's locking keeps
 * them consistent. Only the process holding the store's lock file (the store
 * role) appends.
 *
 * Errors: functions return 0 / -1 (or an enum store_status); a -1 or
 * STORE_ERROR comes with a client-safe *error_r, and the internal detail
 * (paths, SQL) goes to the log. Nothing aborts except on bugs.
 */
#ifndef TERN_STORE_H
#define TERN_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mail/mail.h"
#include "util/util.h"

#define STORE_FOLDER_MAX      255  /* octets of a folder name (UTF-8 / mUTF-7 as given) */
#define STORE_KEYWORDS_MAX    1024 /* octets of the space-separated keyword list */
#define STORE_GUID_LEN        16
#define STORE_DELIVERY_ID_MAX 64
#define STORE_MODSEQ_MAX      ((uint64_t)INT64_MAX) /* modseqs are SQLite integers */

enum store_status {
    STORE_OK = 0,
    STORE_NOTFOUND, /* no such mailbox / folder / message */
    STORE_EXISTS,   /* create: already there */
    STORE_NOTLIVE,  /* mailbox state refuses the change (see the state guard) */
    STORE_CONFLICT, /* compare-and-set lost (state changed, unchanged_since) */
    STORE_INVALID,  /* bad argument: folder name, flags */
    STORE_STALE,    /* the caller's fencing token is below the mailbox's */
    STORE_ERROR,    /* I/O or database trouble; temporary for callers */
};
const char *store_status_str(enum store_status st);

enum store_mbox_state {
    STORE_MBOX_STAGED = 0, /* being filled by a move/import; not deliverable */
    STORE_MBOX_ACTIVE,     /* live: deliveries and clients allowed */
    STORE_MBOX_FENCED,     /* immutable while a move finishes */
    STORE_MBOX_MOVED,      /* moved_to holds the new home, epoch the new epoch */
    STORE_MBOX_DELETING,   /* being purged after retention */
};
const char *store_mbox_state_str(enum store_mbox_state s);
/* Parses "staged", "active", ... 0 or -1. */
int store_mbox_state_parse(const char *s, enum store_mbox_state *out_r);

/* A fencing token: (job, claim) ordered lexicographically; 0/0 = none. */
struct store_token {
    uint64_t job;
    uint64_t claim;
};
/* <0, 0, >0 as a is below, equal to, above b. */
int store_token_cmp(const struct store_token *a, const struct store_token *b);

struct store_mailbox {
    char user[MAIL_ADDR_MAX + 1];
    enum store_mbox_state state;
    uint64_t epoch;
    char moved_to[MAIL_NAME_MAX + 1]; /* "" unless MOVED */
    uint64_t modseq;                  /* highest modseq in the mailbox */
    uint64_t messages;                /* live (not expunged) messages */
    uint64_t bytes;                   /* their total size */
    int64_t created;                  /* unix seconds */
    struct store_token token;         /* the highest fencing token presented */
};

struct store_folder {
    uint64_t id; /* stable across renames */
    char name[STORE_FOLDER_MAX + 1];
    uint32_t uidvalidity;
    uint32_t uidnext;
    uint64_t modseq; /* of its last create/rename/delete */
    uint64_t messages;
    bool deleted; /* tombstone (only seen through store_changes) */
};

/* System flags. */
#define STORE_F_SEEN     0x01u
#define STORE_F_ANSWERED 0x02u
#define STORE_F_FLAGGED  0x04u
#define STORE_F_DELETED  0x08u
#define STORE_F_DRAFT    0x10u
#define STORE_F_ALL      0x1fu

struct store_msg {
    uint64_t folder_id;
    uint32_t uid;
    uint8_t guid[STORE_GUID_LEN];
    uint32_t flags;
    const char *keywords;  /* space-separated, "" if none; valid during callback */
    int64_t internal_date; /* unix seconds */
    uint64_t size;
    uint8_t sha256[SHA256_LEN];
    uint64_t modseq;
    bool expunged; /* tombstone */
};

struct store;

/* Opens or creates the durable store `name` in directory dir (created if
 * missing). NULL with *error_r on failure. */
struct store *store_open_fs(const char *dir, const char *name, const char **error_r);
/* A new empty in-memory store. */
struct store *store_open_memory(const char *name);
void store_close(struct store **st);
const char *store_name(const struct store *st);

/* ---- mailboxes ---- */

/* Creates the mailbox of user in `state` at `epoch`, with an INBOX whose
 * UIDVALIDITY is inbox_uidvalidity, or one the store chooses if that is 0 (a
 * move gives the destination's INBOX the source INBOX's UIDVALIDITY, so that
 * clients' cached UIDs stay valid). MOVED cannot be created (STORE_INVALID).
 * STORE_EXISTS if any mailbox row for user exists (in any state). */
enum store_status store_mailbox_create_with(struct store *st, const char *user,
                                            enum store_mbox_state state, uint64_t epoch,
                                            uint32_t inbox_uidvalidity);
/* store_mailbox_create_with(st, user, state, epoch, 0). */
enum store_status store_mailbox_create(struct store *st, const char *user,
                                       enum store_mbox_state state, uint64_t epoch);
enum store_status store_mailbox_get(struct store *st, const char *user, struct store_mailbox *out);
/* Compare-and-set of the state: only if the current state is `expect` does
 * it become `state` at `epoch` (moved_to for MOVED, else ignored). The
 * modseq stays (a move keeps HIGHESTMODSEQ exactly). STORE_CONFLICT
 * otherwise. */
enum store_status store_mailbox_set_state(struct store *st, const char *user,
                                          enum store_mbox_state expect, enum store_mbox_state state,
                                          uint64_t epoch, const char *moved_to);
/* ACTIVE: raises the mailbox's modseq to at least `modseq` (never lowers
 * it; no change and STORE_OK if it is already there). STAGED: sets it to
 * exactly max(modseq, the highest modseq of any of its rows, tombstones
 * included) — it may go down. A move sets the staged destination's counter
 * to the source's before each pass and then copies every change with its
 * source modseq (all <= that counter), so after the final pass the copy's
 * counter, HIGHESTMODSEQ to clients, equals the source's. State guard:
 * STAGED and ACTIVE; modseq above 2^63 - 1 is STORE_INVALID. */
enum store_status store_mailbox_raise_modseq(struct store *st, const char *user, uint64_t modseq);
/* Removes the mailbox and all its data. Only allowed in DELETING state
 * (STORE_CONFLICT otherwise). */
enum store_status store_mailbox_purge(struct store *st, const char *user);
/* From now until the next call, every change of user's mailbox made
 * through st carries token t (see "Fencing tokens"); t NULL or 0/0 (or user
 * NULL): none. Not a change itself. The caller scopes it: set it before
 * the mover's calls and clear it after, since the handle may be shared
 * (the store role's LMTP deliveries use the same one). */
void store_token_set(struct store *st, const char *user, const struct store_token *t);
/* Presents token t (not 0/0) for user's mailbox: raises the mailbox's
 * token to t if it is below (a write of its own), STORE_OK if it is t
 * already, STORE_STALE if it is above; STORE_NOTFOUND without a mailbox.
 * Any mailbox state. What a mover does first on each session, so that a
 * mover with an older claim is refused from then on. */
enum store_status store_mailbox_token(struct store *st, const char *user,
                                      const struct store_token *t);
/* *list_r malloc'd (free()), sorted by user. */
enum store_status store_mailbox_list(struct store *st, struct store_mailbox **list_r, size_t *n_r);

/* ---- folders ---- */

/* uidvalidity 0 = choose one (unique in the mailbox, from the clock). */
enum store_status store_folder_create(struct store *st, const char *user, const char *name,
                                      uint32_t uidvalidity);
enum store_status store_folder_get(struct store *st, const char *user, const char *name,
                                   struct store_folder *out);
/* Renaming INBOX is refused (STORE_INVALID); STORE_EXISTS if `to` exists. */
enum store_status store_folder_rename(struct store *st, const char *user, const char *from,
                                      const char *to);
/* Deletes the folder and expunges its messages (tombstones). INBOX cannot be
 * deleted (STORE_INVALID). */
enum store_status store_folder_delete(struct store *st, const char *user, const char *name);
/* Live folders, sorted by name; *list_r malloc'd. */
enum store_status store_folder_list(struct store *st, const char *user,
                                    struct store_folder **list_r, size_t *n_r);
/* Raises the folder's UIDNEXT to at least uidnext (never lowers it), so a
 * copy made by the mover hands out no UID its original already used. Only
 * a raise is a change (new modseq on the folder and the mailbox); otherwise
 * STORE_OK with nothing written. Obeys the state guard like a rename. */
enum store_status store_folder_set_uidnext(struct store *st, const char *user, const char *name,
                                           uint32_t uidnext);
/* The folder operations with an explicit modseq (see "Explicit modseqs"
 * above; modseq 0 = the plain function). store_folder_set_uidnext_at()
 * with modseq != 0 also stamps the folder with it when UIDNEXT is already
 * there (a copy's folder gets its source's modseq either way). */
enum store_status store_folder_create_at(struct store *st, const char *user, const char *name,
                                         uint32_t uidvalidity, uint64_t modseq);
enum store_status store_folder_rename_at(struct store *st, const char *user, const char *from,
                                         const char *to, uint64_t modseq);
enum store_status store_folder_delete_at(struct store *st, const char *user, const char *name,
                                         uint64_t modseq);
enum store_status store_folder_set_uidnext_at(struct store *st, const char *user, const char *name,
                                              uint32_t uidnext, uint64_t modseq);

/* ---- appends, one or many (group commit) ---- */

struct store_append {
    const char *user;
    const char *folder; /* NULL = "INBOX" */
    const void *data;   /* the message bytes (CRLF lines); not copied:
                           must stay valid until commit returns */
    size_t len;
    int64_t internal_date; /* 0 = now */
    uint32_t flags;
    const char *keywords;    /* NULL or space-separated */
    const uint8_t *guid;     /* NULL = new random GUID; else STORE_GUID_LEN */
    uint32_t uid;            /* 0 = next UID; else keep (move/import) */
    const char *delivery_id; /* NULL = none */
    bool require_live;       /* deliveries: mailbox ACTIVE at epoch */
    uint64_t epoch;
    uint64_t modseq; /* 0 = the mailbox's next; else exactly this (the mover:
                        STAGED only, see "Explicit modseqs") */
};

struct store_append_result {
    enum store_status status;
    bool duplicate; /* delivery id seen before: nothing stored */
    uint32_t uid;
    uint32_t uidvalidity;
    uint8_t guid[STORE_GUID_LEN];
    uint64_t modseq;
    struct store_mailbox mailbox; /* filled when status == STORE_NOTLIVE */
};

struct store_batch;

struct store_batch *store_batch_begin(struct store *st);
/* Queues one append; res is filled by commit (caller keeps it alive). */
void store_batch_add(struct store_batch *b, const struct store_append *a,
                     struct store_append_result *res);
size_t store_batch_count(const struct store_batch *b);
/* Makes every queued append durable or reports why not, per item, then frees
 * the batch. Returns 0 if the batch was committed (items may still carry
 * per-item NOTLIVE/NOTFOUND/INVALID), -1 if nothing was committed (I/O or
 * database failure: every item has STORE_ERROR, *error_r set). */
int store_batch_commit(struct store_batch **b, const char **error_r);
/* Drops a batch without committing. */
void store_batch_abort(struct store_batch **b);

/* ---- messages ---- */

enum store_flag_mode { STORE_FLAGS_SET = 0, STORE_FLAGS_ADD, STORE_FLAGS_REMOVE };

/* Changes flags/keywords of one message. If unchanged_since != 0 and the
 * message's modseq is greater, nothing changes and STORE_CONFLICT is returned
 * (CONDSTORE). On success *modseq_r (if not NULL) is the new modseq. */
enum store_status store_msg_set_flags(struct store *st, const char *user, const char *folder,
                                      uint32_t uid, enum store_flag_mode mode, uint32_t flags,
                                      const char *keywords, uint64_t unchanged_since,
                                      uint64_t *modseq_r);
/* Expunges one message: leaves a tombstone with a new modseq. */
enum store_status store_msg_expunge(struct store *st, const char *user, const char *folder,
                                    uint32_t uid);
/* Expunges the n messages uids[] of one folder with ONE commit (the fs
 * store: one transaction, so one fsync for all): each leaves a tombstone
 * with a new modseq of its own, in the order given. A UID that is not a
 * live message (expunged already, never there) is skipped. *expunged_r
 * (if not NULL): how many were expunged. STORE_NOTFOUND for no such
 * mailbox or folder; the state guard is store_msg_expunge's; on any
 * failure nothing is expunged. */
enum store_status store_msg_expunge_many(struct store *st, const char *user, const char *folder,
                                         const uint32_t *uids, size_t n, size_t *expunged_r);
/* With an explicit modseq (see "Explicit modseqs"; 0 = the plain
 * function): set_flags_at replaces flags and keywords (STORE_FLAGS_SET)
 * and stamps the message with modseq even if they did not change;
 * expunge_at also re-stamps a message that is a tombstone already (its
 * folder live), so a copy's tombstone carries its source's modseq. */
enum store_status store_msg_set_flags_at(struct store *st, const char *user, const char *folder,
                                         uint32_t uid, uint32_t flags, const char *keywords,
                                         uint64_t modseq);
enum store_status store_msg_expunge_at(struct store *st, const char *user, const char *folder,
                                       uint32_t uid, uint64_t modseq);
/* The mover's copy of a source tombstone: makes folder/m->uid a tombstone
 * with exactly m->modseq. A live message is expunged, a tombstone
 * re-stamped (as store_msg_expunge_at), and a UID the folder never had gets
 * a tombstone row of its own — m's GUID, flags, keywords, internal date,
 * size and SHA-256, no body — with the folder's UIDNEXT raised above it, so
 * that the copy lists the expunge like its source (and a later move from it
 * expunges the message on a copy that still holds it). m->modseq must be
 * 1..2^63-1 (STORE_INVALID); a staged mailbox only (STORE_NOTLIVE). */
enum store_status store_msg_tombstone(struct store *st, const char *user, const char *folder,
                                      const struct store_msg *m);
/* Calls cb for each live message of the folder in UID order; stops when cb
 * returns non-zero (and returns that value). */
typedef int store_msg_cb(void *ctx, const struct store_msg *m);
int store_msg_iter(struct store *st, const char *user, const char *folder, store_msg_cb *cb,
                   void *ctx, const char **error_r);
/* Reads a message body into out (appended). */
enum store_status store_msg_read(struct store *st, const char *user, const char *folder,
                                 uint32_t uid, struct buf *out);
/* Reads only the message's header into out (appended): its octets up to and
 * including the first empty line (store_header_end), or the whole message
 * if it has none. The fs store reads only as much of the body as it takes
 * to find that line (in growing pieces from 8 KiB): the record header is
 * checked (magic, size, GUID), but not the body's SHA-256, which needs the
 * whole body (store_msg_read checks it). What IMAP's header-only FETCH
 * items read. */
enum store_status store_msg_read_header(struct store *st, const char *user, const char *folder,
                                        uint32_t uid, struct buf *out);
/* True if p[0..n) holds the end of a message header: an empty line ("\n"
 * or "\r\n" at the start of a line, the first line included); *len_r the
 * header's length including it. */
bool store_header_end(const char *p, size_t n, size_t *len_r);

/* ---- delivery ids ---- */

/* Calls cb for each delivery id the mailbox recorded, sorted by id (bytes),
 * with the folder the message was delivered to (its current name; that
 * folder may since have been deleted) and the message's UID (the message
 * may since have been expunged). For an id store_delivery_add() recorded
 * without a message here: the folder name and UID it was given. Stops when cb returns non-zero and
 * returns that value; -1 with *error_r if the mailbox is missing or on failure. */
int store_delivery_iter(struct store *st, const char *user,
                        int (*cb)(void *ctx, const char *id, const char *folder, uint32_t uid),
                        void *ctx, const char **error_r);
/* store_delivery_iter from the first id after `after` in that order (NULL
 * or "" = from the first), so that a long listing can be taken in steps;
 * and only the ids whose message here (live or expunged) has a modseq in
 * (since, upto], or that have no message here: since 0 and upto UINT64_MAX
 * list every id. What a move uses to copy, during its final pause, only
 * the ids of the messages changed since it copied the others. */
int store_delivery_iter_from(struct store *st, const char *user, const char *after, uint64_t since,
                             uint64_t upto,
                             int (*cb)(void *ctx, const char *id, const char *folder, uint32_t uid),
                             void *ctx, const char **error_r);
/* Records delivery id `id` for the message folder/uid, so a retried delivery
 * stays a duplicate after the mailbox moved here. The id is what matters:
 * it is recorded even if the folder or the message does not exist here (a
 * message delivered and expunged on the source before the move copied it);
 * then folder/uid are kept as given, informational only, and never linked
 * to a message appended here later. If the message exists here (live or
 * expunged) the id points at it. STORE_EXISTS if the id is already recorded
 * (whatever it points at). State guard: STAGED and ACTIVE only. Not a
 * change: the modseq stays. */
enum store_status store_delivery_add(struct store *st, const char *user, const char *id,
                                     const char *folder, uint32_t uid);
/* n store_delivery_add()s for one mailbox in one transaction (one durable
 * commit on the fs store instead of n): status_out[i] is what
 * store_delivery_add would answer for recs[i] (an item refused does not
 * keep the others out). Returns 0 when committed, -1 when nothing was
 * (every status STORE_ERROR). */
struct store_delivery {
    const char *id;
    const char *folder;
    uint32_t uid;
};
int store_delivery_add_many(struct store *st, const char *user, const struct store_delivery *recs,
                            size_t n, enum store_status *status_out);

/* ---- change log ---- */

struct store_change_cb {
    /* Folders with modseq > since (deleted ones as tombstones), then messages
     * with modseq > since (expunged ones as tombstones), each ascending by
     * modseq. Return non-zero to stop. */
    int (*folder)(void *ctx, const struct store_folder *f);
    int (*msg)(void *ctx, const struct store_folder *f, const struct store_msg *m);
    void *ctx;
};
int store_changes(struct store *st, const char *user, uint64_t since,
                  const struct store_change_cb *cb, const char **error_r);

#endif
