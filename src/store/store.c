/*
 * store.c — the public face of the store module: status and state names,
 * argument validation and canonicalization shared by every backend, batch
 * collection, and dispatch through struct store_ops. The backends
 * (store_fs.c, store_mem.c) therefore see only valid, canonical input and
 * behave identically on bad input by construction.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "store/store_private.h"

const char *store_status_str(enum store_status st)
{
    switch (st) {
    case STORE_OK:
        return "ok";
    case STORE_NOTFOUND:
        return "not found";
    case STORE_EXISTS:
        return "already exists";
    case STORE_NOTLIVE:
        return "mailbox not live";
    case STORE_CONFLICT:
        return "conflict";
    case STORE_INVALID:
        return "invalid argument";
    case STORE_STALE:
        return "stale token";
    case STORE_ERROR:
        return "store error";
    }
    return "unknown status";
}

static const char *const store_state_names[] = {
    [STORE_MBOX_STAGED] = "staged",     [STORE_MBOX_ACTIVE] = "active",
    [STORE_MBOX_FENCED] = "fenced",     [STORE_MBOX_MOVED] = "moved",
    [STORE_MBOX_DELETING] = "deleting",
};

const char *store_mbox_state_str(enum store_mbox_state s)
{
    if ((unsigned)s < ARRAY_SIZE(store_state_names))
        return store_state_names[s];
    return "unknown";
}

int store_mbox_state_parse(const char *s, enum store_mbox_state *out_r)
{
    for (size_t i = 0; i < ARRAY_SIZE(store_state_names); i++) {
        if (strcmp(s, store_state_names[i]) == 0) {
            *out_r = (enum store_mbox_state)i;
            return 0;
        }
    }
    return -1;
}

static bool store_state_valid(enum store_mbox_state s)
{
    return (unsigned)s <= STORE_MBOX_DELETING;
}

/* ---- validation ---- */

static bool store_user_canon(const char *user, char out[MAIL_ADDR_MAX + 1])
{
    const char *err;
    return user != NULL && mail_addr_normalize(user, strlen(user), out, &err) == 0;
}

/* 1..STORE_FOLDER_MAX octets, no control characters (which covers NUL, CR
 * and LF); any capitalization of INBOX is INBOX (RFC 3501 5.1). */
static bool store_folder_canon(const char *name, char out[STORE_FOLDER_MAX + 1])
{
    if (name == NULL)
        name = "INBOX";
    size_t len = strlen(name);
    if (len == 0 || len > STORE_FOLDER_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c < 0x20 || c == 0x7f)
            return false;
    }
    if (strcasecmp(name, "INBOX") == 0)
        name = "INBOX";
    memcpy(out, name, len + 1);
    return true;
}

bool store_folder_is_inbox(const char *name)
{
    return strcmp(name, "INBOX") == 0;
}

/* IMAP atom-char minus '\' (a keyword is a flag-keyword atom, RFC 3501). */
static bool store_kw_char(unsigned char c)
{
    if (c <= 0x20 || c >= 0x7f)
        return false;
    return strchr("(){%*\"\\]", c) == NULL;
}

/* True if the keyword [p, p+len) occurs in the space-separated list s. */
static bool store_kw_has(const char *s, size_t slen, const char *p, size_t len)
{
    size_t i = 0;
    while (i < slen) {
        size_t j = i;
        while (j < slen && s[j] != ' ')
            j++;
        if (j - i == len && strncasecmp(s + i, p, len) == 0)
            return true;
        i = j + 1;
    }
    return false;
}

/* Appends keyword [p, p+len) to out (length *olen) unless present. -1 if
 * the list would exceed STORE_KEYWORDS_MAX. */
static int store_kw_add(char *out, size_t *olen, const char *p, size_t len)
{
    if (store_kw_has(out, *olen, p, len))
        return 0;
    size_t need = *olen + (*olen > 0) + len;
    if (need > STORE_KEYWORDS_MAX)
        return -1;
    if (*olen > 0)
        out[(*olen)++] = ' ';
    memcpy(out + *olen, p, len);
    *olen += len;
    out[*olen] = '\0';
    return 0;
}

/* Atoms separated by single spaces, <= STORE_KEYWORDS_MAX octets; the
 * canonical form drops case-insensitive duplicates. NULL stays NULL. */
static bool store_keywords_canon(const char *kw, char out[STORE_KEYWORDS_MAX + 1])
{
    size_t len = strlen(kw), olen = 0;
    out[0] = '\0';
    if (len > STORE_KEYWORDS_MAX)
        return false;
    size_t i = 0;
    while (i < len) {
        size_t j = i;
        while (j < len && kw[j] != ' ') {
            if (!store_kw_char((unsigned char)kw[j]))
                return false;
            j++;
        }
        if (j == i || (j < len && j + 1 == len))
            return false; /* empty atom: leading, trailing or double space */
        if (store_kw_add(out, &olen, kw + i, j - i) < 0)
            return false;
        i = j + 1;
    }
    return true;
}

int store_keywords_apply(const char *cur, enum store_flag_mode mode, const char *kw,
                         char out[STORE_KEYWORDS_MAX + 1])
{
    size_t olen = 0;
    out[0] = '\0';
    if (mode == STORE_FLAGS_SET) {
        str_copy(out, kw != NULL ? kw : "", STORE_KEYWORDS_MAX + 1);
        return 0;
    }
    size_t clen = strlen(cur), klen = kw != NULL ? strlen(kw) : 0;
    /* Walk the current list: keep all for ADD, drop matches for REMOVE. */
    for (size_t i = 0; i < clen;) {
        size_t j = i;
        while (j < clen && cur[j] != ' ')
            j++;
        if (mode == STORE_FLAGS_ADD || !store_kw_has(kw != NULL ? kw : "", klen, cur + i, j - i))
            if (store_kw_add(out, &olen, cur + i, j - i) < 0)
                return -1;
        i = j + 1;
    }
    if (mode == STORE_FLAGS_ADD) {
        for (size_t i = 0; i < klen;) {
            size_t j = i;
            while (j < klen && kw[j] != ' ')
                j++;
            if (store_kw_add(out, &olen, kw + i, j - i) < 0)
                return -1;
            i = j + 1;
        }
    }
    return 0;
}

uint32_t store_flags_apply(uint32_t cur, enum store_flag_mode mode, uint32_t flags)
{
    switch (mode) {
    case STORE_FLAGS_ADD:
        return cur | flags;
    case STORE_FLAGS_REMOVE:
        return cur & ~flags;
    case STORE_FLAGS_SET:
        break;
    }
    return flags;
}

uint32_t store_uidvalidity_choose(uint32_t highest)
{
    uint64_t now = (uint64_t)(time_now_ms() / 1000);
    uint64_t v = (uint64_t)highest + 1;
    if (now > v)
        v = now;
    if (v > UINT32_MAX)
        v = 1; /* 2106, or a mailbox that used every value: wrap */
    return (uint32_t)v;
}

bool store_state_writable(enum store_mbox_state s)
{
    return s == STORE_MBOX_STAGED || s == STORE_MBOX_ACTIVE;
}

bool store_append_allowed(const struct store_append *a, const struct store_mailbox *mb)
{
    if (a->require_live)
        return mb->state == STORE_MBOX_ACTIVE && mb->epoch == a->epoch &&
               store_modseq_allowed(a->modseq, mb->state);
    return store_state_writable(mb->state) && store_modseq_allowed(a->modseq, mb->state);
}

bool store_modseq_allowed(uint64_t modseq, enum store_mbox_state s)
{
    return modseq == 0 || s == STORE_MBOX_STAGED;
}

uint64_t store_modseq_take(uint64_t *counter, uint64_t modseq)
{
    uint64_t m = modseq != 0 ? modseq : *counter + 1;
    if (m > *counter)
        *counter = m;
    return m;
}

static bool store_delivery_id_valid(const char *id)
{
    size_t len = strlen(id);
    if (len == 0 || len > STORE_DELIVERY_ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)id[i];
        if (c < 0x20 || c == 0x7f)
            return false;
    }
    return true;
}

/* ---- lifecycle ---- */

void store_init_base(struct store *st, const struct store_ops *ops, const char *name)
{
    st->ops = ops;
    str_copy(st->name, name, sizeof(st->name));
}

void store_close(struct store **st)
{
    if (*st == NULL)
        return;
    (*st)->ops->close(*st);
    *st = NULL;
}

const char *store_name(const struct store *st)
{
    return st->name;
}

/* ---- mailboxes ---- */

enum store_status store_mailbox_create_with(struct store *st, const char *user,
                                            enum store_mbox_state state, uint64_t epoch,
                                            uint32_t inbox_uidvalidity)
{
    char u[MAIL_ADDR_MAX + 1];
    /* MOVED needs a moved_to, which create has no way to take. */
    if (!store_user_canon(user, u) || !store_state_valid(state) || state == STORE_MBOX_MOVED)
        return STORE_INVALID;
    return st->ops->mailbox_create(st, u, state, epoch, inbox_uidvalidity);
}

enum store_status store_mailbox_create(struct store *st, const char *user,
                                       enum store_mbox_state state, uint64_t epoch)
{
    return store_mailbox_create_with(st, user, state, epoch, 0);
}

enum store_status store_mailbox_get(struct store *st, const char *user, struct store_mailbox *out)
{
    char u[MAIL_ADDR_MAX + 1];
    if (!store_user_canon(user, u))
        return STORE_INVALID;
    memset(out, 0, sizeof(*out));
    return st->ops->mailbox_get(st, u, out);
}

enum store_status store_mailbox_set_state(struct store *st, const char *user,
                                          enum store_mbox_state expect, enum store_mbox_state state,
                                          uint64_t epoch, const char *moved_to)
{
    char u[MAIL_ADDR_MAX + 1];
    if (!store_user_canon(user, u) || !store_state_valid(expect) || !store_state_valid(state))
        return STORE_INVALID;
    if (state == STORE_MBOX_MOVED) {
        if (moved_to == NULL || !mail_store_name_valid(moved_to))
            return STORE_INVALID;
    } else {
        moved_to = "";
    }
    return st->ops->mailbox_set_state(st, u, expect, state, epoch, moved_to);
}

enum store_status store_mailbox_raise_modseq(struct store *st, const char *user, uint64_t modseq)
{
    char u[MAIL_ADDR_MAX + 1];
    if (!store_user_canon(user, u) || modseq > STORE_MODSEQ_MAX)
        return STORE_INVALID;
    return st->ops->mailbox_raise_modseq(st, u, modseq);
}

enum store_status store_mailbox_purge(struct store *st, const char *user)
{
    char u[MAIL_ADDR_MAX + 1];
    if (!store_user_canon(user, u))
        return STORE_INVALID;
    return st->ops->mailbox_purge(st, u);
}

int store_token_cmp(const struct store_token *a, const struct store_token *b)
{
    if (a->job != b->job)
        return a->job < b->job ? -1 : 1;
    if (a->claim != b->claim)
        return a->claim < b->claim ? -1 : 1;
    return 0;
}

static bool store_token_none(const struct store_token *t)
{
    return t->job == 0 && t->claim == 0;
}

void store_token_set(struct store *st, const char *user, const struct store_token *t)
{
    st->token_user[0] = '\0';
    memset(&st->token, 0, sizeof(st->token));
    if (user == NULL || t == NULL || store_token_none(t) || !store_user_canon(user, st->token_user))
        st->token_user[0] = '\0';
    else
        st->token = *t;
}

enum store_status store_token_check(const struct store *st, const char *user,
                                    const struct store_token *row, bool *raise_r,
                                    struct store_token *raise_to)
{
    *raise_r = false;
    if (st->token_user[0] == '\0' || strcmp(st->token_user, user) != 0)
        return STORE_OK;
    int c = store_token_cmp(&st->token, row);
    if (c < 0)
        return STORE_STALE;
    if (c > 0) {
        *raise_r = true;
        *raise_to = st->token;
    }
    return STORE_OK;
}

enum store_status store_mailbox_token(struct store *st, const char *user,
                                      const struct store_token *t)
{
    char u[MAIL_ADDR_MAX + 1];
    if (!store_user_canon(user, u) || t == NULL || store_token_none(t) ||
        t->job > STORE_MODSEQ_MAX || t->claim > STORE_MODSEQ_MAX)
        return STORE_INVALID;
    return st->ops->mailbox_token(st, u, t);
}

enum store_status store_mailbox_list(struct store *st, struct store_mailbox **list_r, size_t *n_r)
{
    *list_r = NULL;
    *n_r = 0;
    return st->ops->mailbox_list(st, list_r, n_r);
}

/* ---- folders ---- */

enum store_status store_folder_create(struct store *st, const char *user, const char *name,
                                      uint32_t uidvalidity)
{
    return store_folder_create_at(st, user, name, uidvalidity, 0);
}

enum store_status store_folder_create_at(struct store *st, const char *user, const char *name,
                                         uint32_t uidvalidity, uint64_t modseq)
{
    char u[MAIL_ADDR_MAX + 1], f[STORE_FOLDER_MAX + 1];
    if (!store_user_canon(user, u) || name == NULL || !store_folder_canon(name, f) ||
        modseq > STORE_MODSEQ_MAX)
        return STORE_INVALID;
    return st->ops->folder_create(st, u, f, uidvalidity, modseq);
}

enum store_status store_folder_get(struct store *st, const char *user, const char *name,
                                   struct store_folder *out)
{
    char u[MAIL_ADDR_MAX + 1], f[STORE_FOLDER_MAX + 1];
    if (!store_user_canon(user, u) || name == NULL || !store_folder_canon(name, f))
        return STORE_INVALID;
    memset(out, 0, sizeof(*out));
    return st->ops->folder_get(st, u, f, out);
}

enum store_status store_folder_rename(struct store *st, const char *user, const char *from,
                                      const char *to)
{
    return store_folder_rename_at(st, user, from, to, 0);
}

enum store_status store_folder_rename_at(struct store *st, const char *user, const char *from,
                                         const char *to, uint64_t modseq)
{
    char u[MAIL_ADDR_MAX + 1], f[STORE_FOLDER_MAX + 1], t[STORE_FOLDER_MAX + 1];
    if (!store_user_canon(user, u) || from == NULL || to == NULL || !store_folder_canon(from, f) ||
        !store_folder_canon(to, t) || modseq > STORE_MODSEQ_MAX)
        return STORE_INVALID;
    if (store_folder_is_inbox(f))
        return STORE_INVALID;
    return st->ops->folder_rename(st, u, f, t, modseq);
}

enum store_status store_folder_delete(struct store *st, const char *user, const char *name)
{
    return store_folder_delete_at(st, user, name, 0);
}

enum store_status store_folder_delete_at(struct store *st, const char *user, const char *name,
                                         uint64_t modseq)
{
    char u[MAIL_ADDR_MAX + 1], f[STORE_FOLDER_MAX + 1];
    if (!store_user_canon(user, u) || name == NULL || !store_folder_canon(name, f) ||
        modseq > STORE_MODSEQ_MAX)
        return STORE_INVALID;
    if (store_folder_is_inbox(f))
        return STORE_INVALID;
    return st->ops->folder_delete(st, u, f, modseq);
}

enum store_status store_folder_list(struct store *st, const char *user,
                                    struct store_folder **list_r, size_t *n_r)
{
    char u[MAIL_ADDR_MAX + 1];
    *list_r = NULL;
    *n_r = 0;
    if (!store_user_canon(user, u))
        return STORE_INVALID;
    return st->ops->folder_list(st, u, list_r, n_r);
}

enum store_status store_folder_set_uidnext(struct store *st, const char *user, const char *name,
                                           uint32_t uidnext)
{
    return store_folder_set_uidnext_at(st, user, name, uidnext, 0);
}

enum store_status store_folder_set_uidnext_at(struct store *st, const char *user, const char *name,
                                              uint32_t uidnext, uint64_t modseq)
{
    char u[MAIL_ADDR_MAX + 1], f[STORE_FOLDER_MAX + 1];
    if (!store_user_canon(user, u) || name == NULL || !store_folder_canon(name, f) ||
        modseq > STORE_MODSEQ_MAX)
        return STORE_INVALID;
    return st->ops->folder_set_uidnext(st, u, f, uidnext, modseq);
}

/* ---- batches ---- */

struct store_batch *store_batch_begin(struct store *st)
{
    struct store_batch *b = xmalloc(sizeof(*b));
    b->st = st;
    return b;
}

/* Validates and copies one append. Canonical strings and the GUID go into
 * one allocation owned by the item; a failing item keeps strs == NULL and
 * its result already says STORE_INVALID. */
void store_batch_add(struct store_batch *b, const struct store_append *a,
                     struct store_append_result *res)
{
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 16;
        b->items = xrealloc(b->items, b->cap * sizeof(*b->items));
    }
    struct store_batch_item *it = &b->items[b->n++];
    memset(it, 0, sizeof(*it));
    memset(res, 0, sizeof(*res));
    it->a = *a;
    it->res = res;
    res->status = STORE_INVALID;

    char u[MAIL_ADDR_MAX + 1], f[STORE_FOLDER_MAX + 1], kw[STORE_KEYWORDS_MAX + 1];
    if (!store_user_canon(a->user, u) || !store_folder_canon(a->folder, f))
        return;
    if ((a->flags & ~STORE_F_ALL) != 0 || (a->data == NULL && a->len > 0) || a->uid == UINT32_MAX)
        return;
    kw[0] = '\0';
    if (a->keywords != NULL && !store_keywords_canon(a->keywords, kw))
        return;
    if (a->delivery_id != NULL && !store_delivery_id_valid(a->delivery_id))
        return;
    if (a->modseq > STORE_MODSEQ_MAX)
        return;

    size_t ul = strlen(u) + 1, fl = strlen(f) + 1, kl = strlen(kw) + 1;
    size_t dl = a->delivery_id != NULL ? strlen(a->delivery_id) + 1 : 0;
    char *p = it->strs = xmalloc(STORE_GUID_LEN + ul + fl + kl + dl);
    if (a->guid != NULL) {
        memcpy(p, a->guid, STORE_GUID_LEN);
        it->a.guid = (const uint8_t *)p;
    }
    p += STORE_GUID_LEN;
    it->a.user = memcpy(p, u, ul);
    p += ul;
    it->a.folder = memcpy(p, f, fl);
    p += fl;
    it->a.keywords = memcpy(p, kw, kl);
    p += kl;
    if (dl > 0)
        it->a.delivery_id = memcpy(p, a->delivery_id, dl);
    res->status = STORE_OK;
}

size_t store_batch_count(const struct store_batch *b)
{
    return b->n;
}

static void store_batch_free(struct store_batch **bp)
{
    struct store_batch *b = *bp;
    for (size_t i = 0; i < b->n; i++)
        free(b->items[i].strs);
    free(b->items);
    xfree(bp);
}

void store_batch_abort(struct store_batch **b)
{
    if (*b != NULL)
        store_batch_free(b);
}

int store_batch_commit(struct store_batch **bp, const char **error_r)
{
    struct store_batch *b = *bp;
    /* Hand the backend only the valid items, in order (invalid ones already
     * carry STORE_INVALID). Compacting in place keeps res pointers with
     * their items; the strs of every item are freed from the full list
     * below, so move ownership along with the item. */
    size_t nvalid = 0;
    struct store_batch_item *valid = xcalloc(b->n ? b->n : 1, sizeof(*valid));
    for (size_t i = 0; i < b->n; i++)
        if (b->items[i].strs != NULL)
            valid[nvalid++] = b->items[i];
    int ret = b->st->ops->batch_commit(b->st, valid, nvalid, error_r);
    if (ret < 0) {
        for (size_t i = 0; i < b->n; i++) {
            struct store_append_result *res = b->items[i].res;
            memset(res, 0, sizeof(*res));
            res->status = STORE_ERROR;
        }
    }
    free(valid);
    store_batch_free(bp);
    return ret;
}

/* ---- messages ---- */

enum store_status store_msg_set_flags(struct store *st, const char *user, const char *folder,
                                      uint32_t uid, enum store_flag_mode mode, uint32_t flags,
                                      const char *keywords, uint64_t unchanged_since,
                                      uint64_t *modseq_r)
{
    char u[MAIL_ADDR_MAX + 1], f[STORE_FOLDER_MAX + 1], kw[STORE_KEYWORDS_MAX + 1];
    if (!store_user_canon(user, u) || !store_folder_canon(folder, f))
        return STORE_INVALID;
    if ((flags & ~STORE_F_ALL) != 0 || (unsigned)mode > STORE_FLAGS_REMOVE)
        return STORE_INVALID;
    if (keywords != NULL && !store_keywords_canon(keywords, kw))
        return STORE_INVALID;
    /* SET with no keyword list replaces them with none, like IMAP STORE
     * FLAGS (...); ADD/REMOVE with none leaves them alone. */
    const char *k = keywords != NULL ? kw : (mode == STORE_FLAGS_SET ? "" : NULL);
    return st->ops->msg_set_flags(st, u, f, uid, mode, flags, k, unchanged_since, 0, modseq_r);
}

enum store_status store_msg_set_flags_at(struct store *st, const char *user, const char *folder,
                                         uint32_t uid, uint32_t flags, const char *keywords,
                                         uint64_t modseq)
{
    char u[MAIL_ADDR_MAX + 1], f[STORE_FOLDER_MAX + 1], kw[STORE_KEYWORDS_MAX + 1];
    if (!store_user_canon(user, u) || !store_folder_canon(folder, f))
        return STORE_INVALID;
    if ((flags & ~STORE_F_ALL) != 0 || modseq > STORE_MODSEQ_MAX)
        return STORE_INVALID;
    kw[0] = '\0';
    if (keywords != NULL && !store_keywords_canon(keywords, kw))
        return STORE_INVALID;
    return st->ops->msg_set_flags(st, u, f, uid, STORE_FLAGS_SET, flags, kw, 0, modseq, NULL);
}

enum store_status store_msg_expunge(struct store *st, const char *user, const char *folder,
                                    uint32_t uid)
{
    return store_msg_expunge_at(st, user, folder, uid, 0);
}

enum store_status store_msg_expunge_many(struct store *st, const char *user, const char *folder,
                                         const uint32_t *uids, size_t n, size_t *expunged_r)
{
    char u[MAIL_ADDR_MAX + 1], f[STORE_FOLDER_MAX + 1];
    size_t done = 0;
    if (expunged_r != NULL)
        *expunged_r = 0;
    if (!store_user_canon(user, u) || !store_folder_canon(folder, f))
        return STORE_INVALID;
    if (st->ops->msg_expunge_many != NULL)
        return st->ops->msg_expunge_many(st, u, f, uids, n, expunged_r);
    /* A backend without it (memory: nothing to commit): one by one, after
     * checking that the folder is there. */
    struct store_folder fo;
    enum store_status s = st->ops->folder_get(st, u, f, &fo);
    for (size_t i = 0; s == STORE_OK && i < n; i++) {
        enum store_status e = st->ops->msg_expunge(st, u, f, uids[i], 0);
        if (e == STORE_OK)
            done++;
        else if (e != STORE_NOTFOUND)
            s = e;
    }
    if (expunged_r != NULL)
        *expunged_r = done;
    return s;
}

enum store_status store_msg_expunge_at(struct store *st, const char *user, const char *folder,
                                       uint32_t uid, uint64_t modseq)
{
    char u[MAIL_ADDR_MAX + 1], f[STORE_FOLDER_MAX + 1];
    if (!store_user_canon(user, u) || !store_folder_canon(folder, f) || modseq > STORE_MODSEQ_MAX)
        return STORE_INVALID;
    return st->ops->msg_expunge(st, u, f, uid, modseq);
}

enum store_status store_msg_tombstone(struct store *st, const char *user, const char *folder,
                                      const struct store_msg *m)
{
    char u[MAIL_ADDR_MAX + 1], f[STORE_FOLDER_MAX + 1], kw[STORE_KEYWORDS_MAX + 1];
    if (!store_user_canon(user, u) || !store_folder_canon(folder, f) || m->modseq == 0 ||
        m->modseq > STORE_MODSEQ_MAX || m->uid == 0 || m->uid == UINT32_MAX ||
        (m->flags & ~STORE_F_ALL) != 0 || m->size > (uint64_t)INT64_MAX)
        return STORE_INVALID;
    kw[0] = '\0';
    if (m->keywords != NULL && !store_keywords_canon(m->keywords, kw))
        return STORE_INVALID;
    /* A row for the UID: expunged or re-stamped. None: a tombstone row. */
    enum store_status s = st->ops->msg_expunge(st, u, f, m->uid, m->modseq);
    if (s != STORE_NOTFOUND)
        return s;
    struct store_msg t = *m;
    t.keywords = kw;
    t.expunged = true;
    return st->ops->msg_tombstone(st, u, f, &t);
}

int store_msg_iter(struct store *st, const char *user, const char *folder, store_msg_cb *cb,
                   void *ctx, const char **error_r)
{
    char u[MAIL_ADDR_MAX + 1], f[STORE_FOLDER_MAX + 1];
    if (!store_user_canon(user, u) || !store_folder_canon(folder, f)) {
        *error_r = "invalid user or folder name";
        return -1;
    }
    return st->ops->msg_iter(st, u, f, cb, ctx, error_r);
}

enum store_status store_msg_read(struct store *st, const char *user, const char *folder,
                                 uint32_t uid, struct buf *out)
{
    char u[MAIL_ADDR_MAX + 1], f[STORE_FOLDER_MAX + 1];
    if (!store_user_canon(user, u) || !store_folder_canon(folder, f))
        return STORE_INVALID;
    return st->ops->msg_read(st, u, f, uid, out);
}

bool store_header_end(const char *p, size_t n, size_t *len_r)
{
    /* At the start of each line: is it empty? */
    for (size_t i = 0; i < n;) {
        if (p[i] == '\n') {
            *len_r = i + 1;
            return true;
        }
        if (p[i] == '\r' && i + 1 < n && p[i + 1] == '\n') {
            *len_r = i + 2;
            return true;
        }
        const char *nl = memchr(p + i, '\n', n - i);
        if (nl == NULL)
            return false;
        i = (size_t)(nl - p) + 1;
    }
    return false;
}

enum store_status store_msg_read_header(struct store *st, const char *user, const char *folder,
                                        uint32_t uid, struct buf *out)
{
    char u[MAIL_ADDR_MAX + 1], f[STORE_FOLDER_MAX + 1];
    if (!store_user_canon(user, u) || !store_folder_canon(folder, f))
        return STORE_INVALID;
    if (st->ops->msg_read_header != NULL)
        return st->ops->msg_read_header(st, u, f, uid, out);
    /* A backend without a partial read: the whole body, cut. */
    size_t start = out->len;
    enum store_status r = st->ops->msg_read(st, u, f, uid, out);
    size_t hl;
    if (r == STORE_OK && store_header_end(out->data + start, out->len - start, &hl)) {
        out->len = start + hl;
        out->data[out->len] = '\0';
    }
    return r;
}

int store_changes(struct store *st, const char *user, uint64_t since,
                  const struct store_change_cb *cb, const char **error_r)
{
    char u[MAIL_ADDR_MAX + 1];
    if (!store_user_canon(user, u)) {
        *error_r = "invalid user";
        return -1;
    }
    return st->ops->changes(st, u, since, cb, error_r);
}

/* ---- delivery ids ---- */

int store_delivery_iter(struct store *st, const char *user,
                        int (*cb)(void *ctx, const char *id, const char *folder, uint32_t uid),
                        void *ctx, const char **error_r)
{
    return store_delivery_iter_from(st, user, NULL, 0, UINT64_MAX, cb, ctx, error_r);
}

int store_delivery_iter_from(struct store *st, const char *user, const char *after, uint64_t since,
                             uint64_t upto,
                             int (*cb)(void *ctx, const char *id, const char *folder, uint32_t uid),
                             void *ctx, const char **error_r)
{
    char u[MAIL_ADDR_MAX + 1];
    if (!store_user_canon(user, u)) {
        *error_r = "invalid user";
        return -1;
    }
    return st->ops->delivery_iter(st, u, after != NULL ? after : "", since, upto, cb, ctx, error_r);
}

enum store_status store_delivery_add(struct store *st, const char *user, const char *id,
                                     const char *folder, uint32_t uid)
{
    char u[MAIL_ADDR_MAX + 1], f[STORE_FOLDER_MAX + 1];
    if (!store_user_canon(user, u) || folder == NULL || !store_folder_canon(folder, f) ||
        id == NULL || !store_delivery_id_valid(id) || uid == 0)
        return STORE_INVALID;
    return st->ops->delivery_add(st, u, id, f, uid);
}

int store_delivery_add_many(struct store *st, const char *user, const struct store_delivery *recs,
                            size_t n, enum store_status *status_out)
{
    char u[MAIL_ADDR_MAX + 1];
    bool user_ok = store_user_canon(user, u);
    /* The valid items, their folder names canonical, go to the backend. */
    struct store_delivery *ok = xcalloc(n ? n : 1, sizeof(*ok));
    char(*names)[STORE_FOLDER_MAX + 1] = xcalloc(n ? n : 1, sizeof(*names));
    size_t *idx = xcalloc(n ? n : 1, sizeof(*idx));
    enum store_status *res = xcalloc(n ? n : 1, sizeof(*res));
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const struct store_delivery *d = &recs[i];
        if (!user_ok || d->folder == NULL || !store_folder_canon(d->folder, names[k]) ||
            d->id == NULL || !store_delivery_id_valid(d->id) || d->uid == 0) {
            status_out[i] = STORE_INVALID;
            continue;
        }
        ok[k].id = d->id;
        ok[k].folder = names[k];
        ok[k].uid = d->uid;
        idx[k++] = i;
    }
    int r = k > 0 ? st->ops->delivery_add_many(st, u, ok, k, res) : 0;
    for (size_t j = 0; j < k; j++)
        status_out[idx[j]] = r < 0 ? STORE_ERROR : res[j];
    if (r < 0)
        for (size_t i = 0; i < n; i++)
            status_out[i] = STORE_ERROR;
    free(ok);
    free(names);
    free(idx);
    free(res);
    return r;
}
