/*
 * store_private — the backend vtable behind store.h and the helpers shared by
 * the backends. Only files in src/store/ include this.
 *
 * Division of labour: store.c validates and canonicalizes every argument
 * (users normalized, folder names checked and "inbox" turned into "INBOX",
 * keywords checked and deduplicated, flags within STORE_F_ALL) before it
 * calls a backend, so the backends see only well-formed, canonical input and
 * never return STORE_INVALID for syntax (they still do for semantics, such as
 * renaming INBOX). Each backend embeds struct store as the first member of its
 * own handle and fills a struct store_ops.
 */
#ifndef TERN_STORE_PRIVATE_H
#define TERN_STORE_PRIVATE_H

#include "store/store.h"

/* One queued append. `a` is a copy of the caller's struct whose string
 * members point into `strs` (owned, canonical forms), so the caller may
 * reuse its own strings after store_batch_add(); only a.data is borrowed. */
struct store_batch_item {
    struct store_append a;
    struct store_append_result *res;
    char *strs;
};

struct store_batch {
    struct store *st;
    struct store_batch_item *items;
    size_t n, cap;
};

struct store_ops {
    void (*close)(struct store *st);
    /* inbox_uidvalidity 0 = the backend chooses (store_uidvalidity_choose). */
    enum store_status (*mailbox_create)(struct store *st, const char *user,
                                        enum store_mbox_state state, uint64_t epoch,
                                        uint32_t inbox_uidvalidity);
    enum store_status (*mailbox_get)(struct store *st, const char *user, struct store_mailbox *out);
    enum store_status (*mailbox_set_state)(struct store *st, const char *user,
                                           enum store_mbox_state expect,
                                           enum store_mbox_state state, uint64_t epoch,
                                           const char *moved_to);
    enum store_status (*mailbox_purge)(struct store *st, const char *user);
    enum store_status (*mailbox_raise_modseq)(struct store *st, const char *user, uint64_t modseq);
    enum store_status (*mailbox_list)(struct store *st, struct store_mailbox **list_r, size_t *n_r);
    /* store_mailbox_token (t valid, not 0/0). */
    enum store_status (*mailbox_token)(struct store *st, const char *user,
                                       const struct store_token *t);
    /* modseq (here and below): 0 = the mailbox's next; else explicit, valid
     * (<= INT64_MAX): the backend checks the state (store_modseq_allowed). */
    enum store_status (*folder_create)(struct store *st, const char *user, const char *name,
                                       uint32_t uidvalidity, uint64_t modseq);
    enum store_status (*folder_get)(struct store *st, const char *user, const char *name,
                                    struct store_folder *out);
    enum store_status (*folder_rename)(struct store *st, const char *user, const char *from,
                                       const char *to, uint64_t modseq);
    enum store_status (*folder_delete)(struct store *st, const char *user, const char *name,
                                       uint64_t modseq);
    enum store_status (*folder_list)(struct store *st, const char *user,
                                     struct store_folder **list_r, size_t *n_r);
    /* uidnext: raise only (see store_folder_set_uidnext). */
    enum store_status (*folder_set_uidnext)(struct store *st, const char *user, const char *name,
                                            uint32_t uidnext, uint64_t modseq);
    /* Commits items[0..n) (all already validated; n may be 0). Fills every
     * res. Returns 0, or -1 with *error_r when nothing was committed (the
     * caller then marks every item STORE_ERROR). */
    int (*batch_commit)(struct store *st, struct store_batch_item *items, size_t n,
                        const char **error_r);
    /* keywords: canonical; NULL = leave keywords alone (ADD/REMOVE only). */
    enum store_status (*msg_set_flags)(struct store *st, const char *user, const char *folder,
                                       uint32_t uid, enum store_flag_mode mode, uint32_t flags,
                                       const char *keywords, uint64_t unchanged_since,
                                       uint64_t modseq, uint64_t *modseq_r);
    /* store_msg_expunge_many; NULL: msg_expunge one by one (store.c). */
    enum store_status (*msg_expunge_many)(struct store *st, const char *user, const char *folder,
                                          const uint32_t *uids, size_t n, size_t *expunged_r);
    /* modseq != 0: a tombstone is re-stamped (store_msg_expunge_at). */
    enum store_status (*msg_expunge)(struct store *st, const char *user, const char *folder,
                                     uint32_t uid, uint64_t modseq);
    /* Inserts the tombstone m (uid, guid, flags, keywords canonical, date,
     * size, sha256, modseq != 0) if the folder has no row for m->uid;
     * STORE_EXISTS if it has one. State guard: STAGED only. */
    enum store_status (*msg_tombstone)(struct store *st, const char *user, const char *folder,
                                       const struct store_msg *m);
    int (*msg_iter)(struct store *st, const char *user, const char *folder, store_msg_cb *cb,
                    void *ctx, const char **error_r);
    enum store_status (*msg_read)(struct store *st, const char *user, const char *folder,
                                  uint32_t uid, struct buf *out);
    /* store_msg_read_header; NULL: msg_read, cut (store.c). */
    enum store_status (*msg_read_header)(struct store *st, const char *user, const char *folder,
                                         uint32_t uid, struct buf *out);
    int (*changes)(struct store *st, const char *user, uint64_t since,
                   const struct store_change_cb *cb, const char **error_r);
    /* after: "" = from the first id; since/upto as store_delivery_iter_from. */
    int (*delivery_iter)(struct store *st, const char *user, const char *after, uint64_t since,
                         uint64_t upto,
                         int (*cb)(void *ctx, const char *id, const char *folder, uint32_t uid),
                         void *ctx, const char **error_r);
    /* id valid, uid != 0 (checked by store.c). */
    enum store_status (*delivery_add)(struct store *st, const char *user, const char *id,
                                      const char *folder, uint32_t uid);
    /* Every item valid (store.c answers the others); 0 or -1 as
     * store_delivery_add_many. */
    int (*delivery_add_many)(struct store *st, const char *user, const struct store_delivery *recs,
                             size_t n, enum store_status *status_out);
};

struct store {
    const struct store_ops *ops;
    char name[MAIL_NAME_MAX + 1];
    /* store_token_set: the token the changes of token_user carry ("" and
     * 0/0: none). */
    char token_user[MAIL_ADDR_MAX + 1];
    struct store_token token;
};

/* ---- helpers shared by the backends (store.c) ---- */

/* Fills st->name and st->ops. */
void store_init_base(struct store *st, const struct store_ops *ops, const char *name);

/* The new keyword list after applying `mode` with `kw` (canonical, NULL =
 * none) to `cur` (canonical). SET replaces; ADD appends the missing ones;
 * REMOVE drops matches (ASCII case-insensitive, as IMAP keywords are).
 * Returns -1 if the result would exceed STORE_KEYWORDS_MAX. */
int store_keywords_apply(const char *cur, enum store_flag_mode mode, const char *kw,
                         char out[STORE_KEYWORDS_MAX + 1]);

/* New system flags after applying mode. */
uint32_t store_flags_apply(uint32_t cur, enum store_flag_mode mode, uint32_t flags);

/* UIDVALIDITY for a new folder: max(now, highest in mailbox + 1) as uint32,
 * never 0. */
uint32_t store_uidvalidity_choose(uint32_t highest);

/* True if name is canonical INBOX. */
bool store_folder_is_inbox(const char *name);

/* The state guard (see the table in store.h). Backends call these inside
 * the transaction of the change, on the mailbox row as read there, and
 * refuse with STORE_NOTLIVE (changing nothing) when they return false. */

/* May a mailbox in state s be changed (append, flags, expunge, folder
 * create/rename/delete)? Only STAGED and ACTIVE. */
bool store_state_writable(enum store_mbox_state s);

/* May append a be written to mailbox mb? require_live: ACTIVE at exactly
 * a->epoch; otherwise store_state_writable(). */
bool store_append_allowed(const struct store_append *a, const struct store_mailbox *mb);

/* May a change with this modseq (0 = the next one) be written to a mailbox
 * in state s? An explicit modseq only to a STAGED one (store.h, "Explicit
 * modseqs"). Checked after store_state_writable(); false = STORE_NOTLIVE. */
bool store_modseq_allowed(uint64_t modseq, enum store_mbox_state s);

/* The fencing check (store.h "Fencing tokens"), for backends inside the
 * transaction of a change of user's mailbox whose row holds *row:
 * STORE_STALE if the token set on st for user is below *row; otherwise
 * STORE_OK, with *raise_r true if the backend must set the row's token to
 * *raise_to (the token set is above it) in the same transaction. */
enum store_status store_token_check(const struct store *st, const char *user,
                                    const struct store_token *row, bool *raise_r,
                                    struct store_token *raise_to);

/* The modseq a change stamps: `modseq` if explicit, else *counter + 1; the
 * counter becomes max(counter, that). */
uint64_t store_modseq_take(uint64_t *counter, uint64_t modseq);

#endif
