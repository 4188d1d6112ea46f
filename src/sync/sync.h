/*
 * sync — the move engine's channel to a store: the operations the mover
 * needs on a mailbox, behind a transport vtable (the dsync split of brain
 * and channel). Two transports:
 *   - sync_tcp_connect(): TSYNC/1, the store role's sync protocol over TCP
 *     (docs/sync.md), what the mover uses in production;
 *   - sync_local_new(): calls a struct store in this process directly, for
 *     unit tests of the mover's phases without sockets.
 * Both behave the same for every operation and return code.
 *
 * Return codes: 0 ok; SYNC_NO (1) a refusal with a reason the caller can act
 * on (*why_r: "notfound", "exists", "conflict", "notlive", "checksum"); -1
 * the channel failed (drop the connection; the step is retried later).
 *
 * Messages on the wire and in callbacks carry the folder by name; names are
 * hex-encoded on the wire so any octets travel unchanged.
 */
#ifndef TERN_SYNC_H
#define TERN_SYNC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/store.h"
#include "util/util.h"

#define SYNC_NO    1
#define SYNC_PROTO "TSYNC/1"

/* Limits of one append_batch() call (and of one APPENDS on the wire). */
#define SYNC_BATCH_MAX   256                 /* messages */
#define SYNC_BATCH_BYTES (32u * 1024 * 1024) /* total of the bodies' lengths */

struct sync_folder {
    char name[STORE_FOLDER_MAX + 1];
    uint32_t uidvalidity;
    uint32_t uidnext;
    uint64_t modseq;
    bool deleted;
};

struct sync_msg {
    char folder[STORE_FOLDER_MAX + 1];
    uint32_t uidvalidity; /* of the folder: names can change, this cannot */
    uint32_t uid;
    uint8_t guid[STORE_GUID_LEN];
    uint32_t flags;
    char keywords[STORE_KEYWORDS_MAX + 1];
    int64_t internal_date;
    uint64_t size;
    uint8_t sha256[SHA256_LEN];
    uint64_t modseq;
    bool expunged;
    /* append_batch only: "" none; else a delivery id (1..STORE_DELIVERY_ID_MAX
     * printable octets, no space) the store records with the message in the
     * same commit (store.h, as LMTP's XDELIVERYID). An id the mailbox has
     * recorded already stores nothing: the item is a duplicate
     * (sync_append_res). Listings leave it "". */
    char delivery_id[STORE_DELIVERY_ID_MAX + 1];
};

/* What append_batch adds to an item's rc 0: duplicate if its delivery id
 * was recorded already (nothing stored; also an id earlier in the same
 * batch), with the first delivery's UID and its folder's UIDVALIDITY (both
 * 0 if the id was recorded without a message here); else all 0. */
struct sync_append_res {
    bool duplicate;
    uint32_t uid;
    uint32_t uidvalidity;
};

/* Per-folder verification digest: SHA-256 over the folder's live messages in
 * UID order, each as "uid guidhex flags date size sha256hex keywords\n"
 * (date: the internal date, Unix seconds). */
struct sync_digest {
    char name[STORE_FOLDER_MAX + 1];
    uint32_t uidvalidity;
    uint32_t uidnext;
    uint64_t messages;
    uint8_t digest[SHA256_LEN];
};

struct sync_delivery {
    char id[STORE_DELIVERY_ID_MAX + 1];
    char folder[STORE_FOLDER_MAX + 1];
    uint32_t uid;
};

struct sync_changes_cb {
    int (*folder)(void *ctx, const struct sync_folder *f);
    int (*msg)(void *ctx, const struct sync_msg *m);
    void *ctx;
};

struct sync;

struct sync_ops {
    void (*close)(struct sync *s);
    int (*mailbox_get)(struct sync *s, const char *user, struct store_mailbox *out,
                       const char **why_r);
    /* Creates the mailbox with an INBOX whose UIDVALIDITY is
     * inbox_uidvalidity (0: the store chooses), as store_mailbox_create_with.
     * A move passes the source INBOX's, so folder_ensure("INBOX", it, ...)
     * then finds the INBOX as is. */
    int (*mailbox_create)(struct sync *s, const char *user, enum store_mbox_state state,
                          uint64_t epoch, uint32_t inbox_uidvalidity, const char **why_r);
    int (*mailbox_state)(struct sync *s, const char *user, enum store_mbox_state expect,
                         enum store_mbox_state state, uint64_t epoch, const char *moved_to,
                         const char **why_r);
    int (*mailbox_purge)(struct sync *s, const char *user, const char **why_r);
    /* Streams every folder and message with modseq > since (tombstones
     * included); *modseq_r is the mailbox modseq the listing is complete up
     * to. Callbacks returning non-zero abort it (-1). */
    int (*changes)(struct sync *s, const char *user, uint64_t since,
                   const struct sync_changes_cb *cb, uint64_t *modseq_r, const char **why_r);
    /* The body of one message, verified against its SHA-256 by the store. */
    int (*fetch)(struct sync *s, const char *user, const char *folder, uint32_t uid,
                 struct buf *out, const char **why_r);
    /* n fetches at once (pipelined over TCP: one round trip, not n):
     * outs[i] gets the body of folders[i]/uids[i] appended, rc_out[i] is 0
     * or SYNC_NO with why_out[i] (a static string, e.g. "notfound": gone
     * since it was listed). Returns 0 when every item has its result, -1 if
     * the channel failed (nothing is known; outs may hold partial data).
     * n <= SYNC_BATCH_MAX; n == 0 is 0 at once. */
    int (*fetch_batch)(struct sync *s, const char *user, const char *const *folders,
                       const uint32_t *uids, size_t n, struct buf *outs, int *rc_out,
                       const char **why_out);
    /* Appends with the given UID, GUID, flags, keywords and date into a
     * staged (or active) mailbox; the store checks sha256 against data.
     * SYNC_NO "exists" if the UID is taken. m->modseq: 0, or the exact
     * modseq the message gets (the mover copies a listing's record with
     * its source modseq; store.h "Explicit modseqs": only into a staged
     * mailbox, "notlive" otherwise). */
    int (*append)(struct sync *s, const char *user, const struct sync_msg *m, const void *data,
                  size_t len, const char **why_r);
    /* Appends n messages (msgs[i] with body data[i] of lens[i] octets) with
     * ONE durable store commit: the group commit of a move's copy. Each item
     * has exactly the semantics of append (UID kept, SHA-256 checked before
     * the store sees it, "exists" for a taken UID, ...) and its own result:
     * rc_out[i] is 0 or SYNC_NO with why_out[i] (a static string); an item
     * refused does not keep the others from being stored. Returns 0 when
     * every item has its result (all stored items are durable), -1 when the
     * channel or the store failed: then nothing is known about any item (a
     * retry of the whole batch answers "exists" for what got in).
     * n <= SYNC_BATCH_MAX and the total of lens <= SYNC_BATCH_BYTES: beyond
     * is a caller bug, answered -1 without sending anything (a TCP
     * connection stays usable). n == 0 is 0 at once.
     * Delivery ids (msgs[i]->delivery_id): res_out (NULL: not wanted) gets
     * each item's sync_append_res. An item with a malformed id is SYNC_NO
     * "invalid". A store from before the field (TSYNC/1 APPENDS records
     * without it) answers every item of a batch holding an id SYNC_NO
     * "unsupported", nothing stored (the TCP connection is then closed by
     * that store: -1 for the next call); the caller sends them again
     * without ids over a new connection. Over TCP the first batch with
     * ids on a connection is preceded by a probe record (one round trip,
     * nothing stored) that tells which kind of store it is (docs/sync.md). */
    int (*append_batch)(struct sync *s, const char *user, const struct sync_msg *const *msgs,
                        const void *const *data, const size_t *lens, size_t n, int *rc_out,
                        const char **why_out, struct sync_append_res *res_out);
    /* append_batch in two halves, so that the caller can work (fetch the
     * next batch from another store) while this store commits: start sends
     * the batch and returns; end waits for the answers and fills rc_out and
     * why_out as given to start (they must stay valid until then), and
     * returns what append_batch would have. start's -1 means nothing was
     * sent (end is not needed). Nothing but end may be called on s in
     * between (a bug: panic). The local transport does all in start.
     * No res_out: a duplicate is rc 0 like a stored item. */
    int (*append_batch_start)(struct sync *s, const char *user, const struct sync_msg *const *msgs,
                              const void *const *data, const size_t *lens, size_t n, int *rc_out,
                              const char **why_out);
    int (*append_batch_end)(struct sync *s);
    /* Makes the folder with this UIDVALIDITY exist under this name (create
     * with that UIDVALIDITY, or rename the one that has it), and its UIDNEXT
     * at least uidnext. */
    int (*folder_ensure)(struct sync *s, const char *user, const char *name, uint32_t uidvalidity,
                         uint32_t uidnext, const char **why_r);
    int (*folder_delete)(struct sync *s, const char *user, uint32_t uidvalidity,
                         const char **why_r);
    /* Sets (replaces) a message's flags and keywords. */
    int (*flags)(struct sync *s, const char *user, const char *folder, uint32_t uid, uint32_t flags,
                 const char *keywords, const char **why_r);
    int (*expunge)(struct sync *s, const char *user, const char *folder, uint32_t uid,
                   const char **why_r);
    /* Digests of every live folder, sorted by name; *list_r malloc'd. */
    int (*digest)(struct sync *s, const char *user, struct sync_digest **list_r, size_t *n_r,
                  const char **why_r);
    /* Delivery ids recorded for the mailbox (so idempotency survives a move),
     * and recording one on the destination. */
    int (*deliveries)(struct sync *s, const char *user, struct sync_delivery **list_r, size_t *n_r,
                      const char **why_r);
    int (*delivery_add)(struct sync *s, const char *user, const struct sync_delivery *d,
                        const char **why_r);
    /* The delivery ids one by one, sorted by id, without building a list:
     * only those whose message here (live or expunged) has a modseq in
     * (since, upto], and those with no message here (since 0 and upto
     * UINT64_MAX: every id). A move copies the ids of the messages it
     * copied before its fence, and during its pause only the delta's. cb
     * returning non-zero aborts (-1; over TCP the connection is then
     * unusable). */
    int (*deliveries_each)(struct sync *s, const char *user, uint64_t since, uint64_t upto,
                           int (*cb)(void *ctx, const struct sync_delivery *d), void *ctx,
                           const char **why_r);
    /* n delivery_adds with one store commit: rc_out[i] 0 or SYNC_NO with
     * why_out[i] ("exists" for an id recorded already, or delivery_add's
     * other reasons); returns 0 when every item has its result, -1 when the
     * channel or the store failed (nothing is known). n <= SYNC_BATCH_MAX,
     * beyond is a caller bug answered -1 without sending anything. */
    int (*delivery_add_batch)(struct sync *s, const char *user, const struct sync_delivery *ds,
                              size_t n, int *rc_out, const char **why_out);

    /* store_mailbox_raise_modseq: the mover, before each pass (on its
     * staged destination: sets the counter to exactly the source's). */
    int (*modseq_raise)(struct sync *s, const char *user, uint64_t modseq, const char **why_r);

    /* folder_ensure, folder_delete, flags and expunge with an explicit
     * modseq: the changed row gets exactly `modseq` (0: as the plain op),
     * store.h "Explicit modseqs" — a staged mailbox only ("notlive"
     * otherwise). folder_ensure_at stamps the folder with it even if
     * nothing else changes; flags_at stamps the message likewise;
     * expunge_at re-stamps a tombstone. What the mover uses, so that the
     * copy's rows carry their source modseqs (docs/move.md). */
    int (*folder_ensure_at)(struct sync *s, const char *user, const char *name,
                            uint32_t uidvalidity, uint32_t uidnext, uint64_t modseq,
                            const char **why_r);
    int (*folder_delete_at)(struct sync *s, const char *user, uint32_t uidvalidity, uint64_t modseq,
                            const char **why_r);
    int (*flags_at)(struct sync *s, const char *user, const char *folder, uint32_t uid,
                    uint32_t flags, const char *keywords, uint64_t modseq, const char **why_r);
    int (*expunge_at)(struct sync *s, const char *user, const char *folder, uint32_t uid,
                      uint64_t modseq, const char **why_r);
    /* store_msg_tombstone: m (a tombstone of the source's listing, m->modseq
     * != 0) becomes a tombstone here with exactly m->modseq — a live
     * message expunged, a tombstone re-stamped, a UID never held here a
     * tombstone row of its own. "notfound" only if the mailbox is missing
     * (no such folder: 0, as for expunge). Staged only ("notlive"). */
    int (*tombstone)(struct sync *s, const char *user, const struct sync_msg *m,
                     const char **why_r);

    /* ---- what an IMAP session needs (the imap role; docs/sync.md) ---- */

    /* Live folders, sorted by name (modseq: of the folder's last
     * create/rename; deleted always false). *list_r malloc'd. */
    int (*folders)(struct sync *s, const char *user, struct sync_folder **list_r, size_t *n_r,
                   const char **why_r);
    /* Live messages of one folder in UID order. *modseq_r is the mailbox
     * modseq read BEFORE the listing: every change after it shows up in
     * changes(since = *modseq_r), some may already be in the listing. */
    int (*msgs)(struct sync *s, const char *user, const char *folder,
                int (*cb)(void *ctx, const struct sync_msg *m), void *ctx, uint64_t *modseq_r,
                const char **why_r);
    /* Appends as a client does: the store picks the UID and GUID (into an
     * ACTIVE or STAGED mailbox, the state guard's "append"). */
    int (*append_new)(struct sync *s, const char *user, const char *folder, uint32_t flags,
                      const char *keywords, int64_t internal_date, const void *data, size_t len,
                      uint32_t *uid_r, uint32_t *uidvalidity_r, const char **why_r);
    /* store_msg_set_flags: a mode, keywords NULL = unchanged (ADD/REMOVE
     * only), CONDSTORE's unchanged_since (0 = none; "conflict" if the
     * message changed after it). *modseq_r the message's new modseq. */
    int (*flags_ex)(struct sync *s, const char *user, const char *folder, uint32_t uid,
                    enum store_flag_mode mode, uint32_t flags, const char *keywords,
                    uint64_t unchanged_since, uint64_t *modseq_r, const char **why_r);
    /* A new folder (the store picks its UIDVALIDITY); "exists". */
    int (*folder_create)(struct sync *s, const char *user, const char *name, const char **why_r);
    int (*folder_rename)(struct sync *s, const char *user, const char *from, const char *to,
                         const char **why_r);
    /* Notified IDLE: returns once the mailbox's modseq is above `since` or
     * its state is no longer ACTIVE (a commit of the store process: an LMTP
     * delivery, another session's change, a move's fence), once timeout_ms
     * (at most SYNC_WAIT_MAX_MS) have passed, or once wake_fd (if >= 0; the
     * caller's client) is readable — whichever comes first. *mb_r is the
     * mailbox then (its modseq and state: compare them, a timeout is also
     * 0). SYNC_NO "notfound" (no mailbox), SYNC_NO "unsupported" when the
     * store does not know WAIT (an older syncd: poll with changes instead;
     * the connection stays usable), -1 the channel failed. The local
     * transport cannot be woken by another thread: it checks, sleeps on
     * wake_fd for timeout_ms and checks again. */
    int (*wait)(struct sync *s, const char *user, uint64_t since, unsigned timeout_ms, int wake_fd,
                struct store_mailbox *mb_r, const char **why_r);
    /* Only the headers of n messages of one folder (store_msg_read_header:
     * the octets up to and including the first empty line, the whole
     * message if it has none): outs[i] gets uids[i]'s appended, rc_out[i]
     * is 0 or SYNC_NO with why_out[i] ("notfound": gone). Pipelined over
     * TCP like fetch_batch. Returns 0 when every item has its result, -1 if
     * the channel failed. n <= SYNC_BATCH_MAX (beyond: -1, nothing sent). */
    int (*fetch_headers)(struct sync *s, const char *user, const char *folder, const uint32_t *uids,
                         size_t n, struct buf *outs, int *rc_out, const char **why_out);
    /* Expunges the messages uids[] (strictly ascending, 1..SYNC_UIDS_MAX of
     * them) of one folder with ONE durable store commit (store.h
     * store_msg_expunge_many); a UID that is no live message is skipped.
     * *expunged_r how many were expunged. SYNC_NO "notfound" (mailbox or
     * folder), "notlive", "invalid" (also for uids not as required). */
    int (*expunge_uids)(struct sync *s, const char *user, const char *folder, const uint32_t *uids,
                        size_t n, size_t *expunged_r, const char **why_r);
    /* Copies the messages uids[] (strictly ascending, 1..SYNC_UIDS_MAX) of
     * folder `from` into folder `to` of the same mailbox, the store reading
     * each body itself (checked against its SHA-256), with one durable
     * store commit per SYNC_BATCH_BYTES of bodies (one for any COPY of
     * less). Each copy keeps flags, keywords and internal date and gets a
     * new GUID and the next UID of `to`, in the order given; uids_out[i] is
     * its UID, or 0 if uids[i] is no live message of `from` (skipped).
     * *uidvalidity_r: to's. All or nothing: on a failure no copy is left.
     * SYNC_NO "notfound" (mailbox, either folder), "notlive", "invalid". */
    int (*copy_uids)(struct sync *s, const char *user, const char *from, const char *to,
                     const uint32_t *uids, size_t n, uint32_t *uids_out, uint32_t *uidvalidity_r,
                     const char **why_r);

    /* ---- fencing (the mover; store.h "Fencing tokens", docs/move.md) ---- */

    /* Presents the mover's fencing token (job id, claim count) for user's
     * mailbox: the store raises the mailbox's token to it, and from now on
     * every write of this transport to that mailbox carries it (one token
     * per transport; a new call replaces it). SYNC_NO "stale token" if the store
     * has seen a higher token for the mailbox: another mover claimed the
     * job since, stop. No mailbox yet is 0 (its create takes the token).
     * Every write op may then answer SYNC_NO "stale token" likewise. Over TCP:
     * "unsupported" from a syncd without TOKEN (the connection stays
     * usable). */
    int (*token)(struct sync *s, const char *user, uint64_t job, uint64_t claim,
                 const char **why_r);
};

/* Limit of one expunge_uids/copy_uids call (and of EXPUNGES/COPIES on the
 * wire): their UID sets, and COPIES's answer, then fit in one line. */
#define SYNC_UIDS_MAX 500

/* A UID set on the wire: "-" (none), or comma-separated UIDs and ranges
 * "lo:hi", strictly ascending and not overlapping, UIDs 1..2^32-1. Parses
 * p[0..len) into uids (at most max); 0, or -1 with *error_r (malformed, not
 * ascending, more than max). */
int sync_uidset_parse(const char *p, size_t len, uint32_t *uids, size_t max, size_t *n_r,
                      const char **error_r);
/* Appends the set of uids (strictly ascending) to b: "-" if n == 0. */
void sync_uidset_write(struct buf *b, const uint32_t *uids, size_t n);
/* True if uids[0..n) is strictly ascending, without 0, and n <= max. */
bool sync_uids_ok(const uint32_t *uids, size_t n, size_t max);

#define SYNC_WAIT_MAX_MS 300000u /* the longest WAIT (below syncd's idle time) */

/* The condition a WAIT for `since` waits for: mb's modseq is above since,
 * or mb is no longer ACTIVE. */
bool sync_wait_done(const struct store_mailbox *mb, uint64_t since);

struct sync {
    const struct sync_ops *ops;
};

/* True if a batch of n bodies of these lengths is within SYNC_BATCH_MAX and
 * SYNC_BATCH_BYTES (what append_batch accepts). */
static inline bool sync_batch_fits(const size_t *lens, size_t n)
{
    if (n > SYNC_BATCH_MAX)
        return false;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (lens[i] > SYNC_BATCH_BYTES - total)
            return false;
        total += lens[i];
    }
    return true;
}

/* ---- listings in steps: the server side of streamed replies ----
 *
 * syncd streams CHANGES and DIGEST with backpressure: it produces the next
 * piece only when the connection's output has drained, so its memory does
 * not grow with the mailbox. These run a listing of a sync_local_new()
 * transport (anything else is a bug: panic) a step at a time; between steps
 * the store may change (the loop serves deliveries meanwhile), and the
 * listings stay exact as below. The local transport's changes and digest
 * ops are these same steps run to the end in one call.
 *
 * CHANGES. begin reads the mailbox modseq M0 (cur->upto, the final modseq
 * if nothing below intervenes). Each step lists the next records in
 * (modseq, folders first) order with modseq in (since, M0]: at least `max`
 * unless the listing ends, and never splitting the records of one modseq
 * across steps (a folder delete gives all its messages one modseq: that
 * step lists them all). A record changed after begin moves above M0 and is
 * left to the next listing; nothing below M0 is skipped, since modseqs only
 * grow. One case ends a listing early: a message whose folder was created,
 * renamed or deleted after begin (its folder row's modseq is above M0)
 * would carry a name the listing's folder records do not have, so the step
 * stops before it and cur->upto becomes its modseq - 1 — complete up to
 * there; the next listing from cur->upto lists the folder change first.
 * Returns 0 (cur->done once the listing is complete: cur->upto is then its
 * final modseq), SYNC_NO "notfound" (the mailbox is gone) or -1 (store
 * failure, or a callback returned non-zero). */
struct sync_changes_cursor {
    uint64_t since; /* as asked */
    uint64_t upto;  /* the listing's final modseq */
    uint64_t pos;   /* records up to this modseq are listed (this phase) */
    bool msgs;      /* the folder records are done */
    bool done;
};
int sync_local_changes_begin(struct sync *s, const char *user, uint64_t since,
                             struct sync_changes_cursor *cur, const char **why_r);
int sync_local_changes_step(struct sync *s, const char *user, struct sync_changes_cursor *cur,
                            size_t max, const struct sync_changes_cb *cb, const char **why_r);

/* DIGEST. begin takes the list of live folders (sorted by name); each step
 * digests one folder (a pass over its messages, hashed as they come: memory
 * stays flat) into *out. A folder deleted in between is skipped; returns 0
 * (*out filled, or cur->done when no folder is left), SYNC_NO "notfound"
 * (mailbox gone) or -1. sync_local_digest_end() frees the cursor (also
 * after an error). */
struct sync_digest_cursor {
    struct store_folder *folders;
    size_t n, next;
    bool done;
};
int sync_local_digest_begin(struct sync *s, const char *user, struct sync_digest_cursor *cur,
                            const char **why_r);
int sync_local_digest_step(struct sync *s, const char *user, struct sync_digest_cursor *cur,
                           struct sync_digest *out, const char **why_r);
void sync_local_digest_end(struct sync_digest_cursor *cur);

/* DELIVERIES. Steps of at least `max` ids (fewer at the end), resumed
 * after the last id listed; since/upto as deliveries_each. begin checks
 * that the mailbox exists. Returns 0 (cur->done at the end), SYNC_NO
 * "notfound" or -1. */
struct sync_deliveries_cursor {
    char after[STORE_DELIVERY_ID_MAX + 1];
    uint64_t since, upto;
    bool done;
};
int sync_local_deliveries_begin(struct sync *s, const char *user, uint64_t since, uint64_t upto,
                                struct sync_deliveries_cursor *cur, const char **why_r);
int sync_local_deliveries_step(struct sync *s, const char *user, struct sync_deliveries_cursor *cur,
                               size_t max, int (*cb)(void *ctx, const struct sync_delivery *d),
                               void *ctx, const char **why_r);

/* The token the writes of local transport s carry from now on, without
 * presenting it to the store (user NULL or job and claim 0: none). What
 * syncd does around each session's commands, on its one transport; the
 * token op presents a token and then does this. */
void sync_local_token_use(struct sync *s, const char *user, uint64_t job, uint64_t claim);

/* TCP: connects to a store's sync endpoint "HOST:PORT" and says HELLO.
 * NULL with a message in err. */
struct sync *sync_tcp_connect(const char *endpoint, unsigned timeout_ms, char *err, size_t errlen);
/* In-process: operates on st (not owned). */
struct sync *sync_local_new(struct store *st);
void sync_close(struct sync **s);

#endif
