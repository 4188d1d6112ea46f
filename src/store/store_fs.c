/*
 * store_fs.c — the durable store backend: metadata in SQLite, bodies in
 * append-only segment files.
 *
 * Layout of the store directory:
 *   store.db            SQLite (WAL, synchronous=FULL): mailboxes, folders,
 *                       messages, deliveries, meta(schema_version)
 *   segments/NNNNNNNN.seg  append-only body files, numbered from 00000001;
 *                       a new one is started past STORE_FS_SEG_MAX bytes
 *
 * Segment record (all integers little-endian), STORE_FS_REC_HDR = 64 bytes
 * of header immediately followed by the body:
 *   0  8  magic "TERNMSG1"
 *   8  8  body length (u64)
 *   16 16 message GUID
 *   32 32 SHA-256 of the body
 * so a segment can be rescanned to rebuild or check metadata. messages.off
 * is the offset of the body (the header sits 64 bytes before it).
 *
 * Commit of a batch (the group commit), in this order:
 *   1. outside any lock: SHA-256 and GUIDs of every body (pure CPU);
 *   2. BEGIN IMMEDIATE — the SQLite write lock. Inside it every item is
 *      resolved against the rows as they are now: mailbox exists, delivery
 *      id already recorded (then: duplicate, nothing written), the state
 *      guard (require_live: ACTIVE at exactly the epoch, otherwise STAGED or
 *      ACTIVE; else NOTLIVE), folder exists, UID allocated. Holding the
 *      lock from here to COMMIT means a fence that commits first is always
 *      seen, and it also serializes the segment append position between
 *      processes (it is taken by fstat under it);
 *   3. one pwritev of all headers+bodies at the end of the open segment;
 *   4. one fdatasync of the segment (+ the directory if the segment is new):
 *      bodies must be on disk before any row can point at them;
 *   5. all INSERTs and counter UPDATEs, then COMMIT (SQLite fsyncs the WAL).
 * Only then does store_batch_commit() return 0 and the caller acknowledge.
 *
 * Crash safety. A crash before COMMIT leaves bodies that no row references:
 * unreachable bytes in a segment (including a torn record at the tail of the
 * last segment). On open we simply append after whatever is there, so a
 * rescanner must treat a record whose length runs past the file end or
 * whose SHA-256 mismatches as garbage and resynchronize on the next magic.
 * A crash after COMMIT loses nothing: bodies were synced first. If a write
 * or fdatasync fails, the batch is rolled back and the segment is abandoned:
 * the next batch starts a fresh segment, so bytes whose durability is
 * unknown (Linux may drop dirty pages after a failed fsync while the file
 * size still covers them) are never referenced by a later commit.
 *
 * Several processes may open the store; SQLite's locking keeps them
 * consistent. Expunged bodies stay in their segment until a future
 * compaction rewrites segments (not implemented: space is not reclaimed).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "store/store_private.h"

#ifndef STORE_FS_SEG_MAX /* overridable so tests can exercise rotation */
#define STORE_FS_SEG_MAX (256ull << 20)
#endif
#define STORE_FS_REC_MAGIC      "TERNMSG1"
#define STORE_FS_REC_HDR        64
#define STORE_FS_SCHEMA_VERSION 3
#define STORE_FS_RFDS           8

static const char store_fs_schema[] =
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS mailboxes("
    " id INTEGER PRIMARY KEY, user TEXT NOT NULL UNIQUE, state INTEGER NOT NULL,"
    " epoch INTEGER NOT NULL, moved_to TEXT NOT NULL DEFAULT '', modseq INTEGER NOT NULL,"
    " messages INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0,"
    " created INTEGER NOT NULL);"
    /* AUTOINCREMENT: folder ids are handed to clients and must never be
     * reused, even after a purge removed the highest one. */
    "CREATE TABLE IF NOT EXISTS folders("
    " id INTEGER PRIMARY KEY AUTOINCREMENT, mailbox_id INTEGER NOT NULL, name TEXT NOT NULL,"
    " uidvalidity INTEGER NOT NULL, uidnext INTEGER NOT NULL, modseq INTEGER NOT NULL,"
    " messages INTEGER NOT NULL DEFAULT 0, deleted INTEGER NOT NULL DEFAULT 0);"
    "CREATE UNIQUE INDEX IF NOT EXISTS folders_live ON folders(mailbox_id, name)"
    " WHERE deleted = 0;"
    "CREATE INDEX IF NOT EXISTS folders_modseq ON folders(mailbox_id, modseq);"
    "CREATE TABLE IF NOT EXISTS messages("
    " id INTEGER PRIMARY KEY, folder_id INTEGER NOT NULL, mailbox_id INTEGER NOT NULL,"
    " uid INTEGER NOT NULL, guid BLOB NOT NULL, flags INTEGER NOT NULL,"
    " keywords TEXT NOT NULL, internal_date INTEGER NOT NULL, size INTEGER NOT NULL,"
    " sha256 BLOB NOT NULL, modseq INTEGER NOT NULL, expunged INTEGER NOT NULL DEFAULT 0,"
    " seg INTEGER NOT NULL, off INTEGER NOT NULL, UNIQUE(folder_id, uid));"
    "CREATE INDEX IF NOT EXISTS messages_modseq ON messages(mailbox_id, modseq);"
    /* deliveries.created: so old delivery ids can be pruned by age later. */
    "CREATE TABLE IF NOT EXISTS deliveries("
    " mailbox_id INTEGER NOT NULL, delivery_id TEXT NOT NULL, folder_id INTEGER NOT NULL,"
    " uid INTEGER NOT NULL, created INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY(mailbox_id, delivery_id)) WITHOUT ROWID;"
    "INSERT OR IGNORE INTO meta(key, value) VALUES('schema_version', 1);";

/* Schema migrations: step i takes version i+1 to i+2. Released steps are
 * never edited; a change adds a step (and bumps STORE_FS_SCHEMA_VERSION). */
static const char *const store_fs_migrations[] = {
    /* 1 -> 2: a delivery id copied by a move for a message that does not
     * exist here (delivered, then expunged on the source before the copy) is
     * kept with folder_id 0 and the source's folder name in `folder`. */
    "ALTER TABLE deliveries ADD COLUMN folder TEXT NOT NULL DEFAULT '';"
    "UPDATE meta SET value = 2 WHERE key = 'schema_version';",
    /* 2 -> 3: the highest fencing token a mover presented for the mailbox
     * (store.h "Fencing tokens"); 0/0 = none. */
    "ALTER TABLE mailboxes ADD COLUMN token_job INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE mailboxes ADD COLUMN token_claim INTEGER NOT NULL DEFAULT 0;"
    "UPDATE meta SET value = 3 WHERE key = 'schema_version';",
};

#define MBOX_COLS                                                                                  \
    "id, user, state, epoch, moved_to, modseq, messages, bytes, created, token_job, token_claim"
#define FOLDER_COLS "id, name, uidvalidity, uidnext, modseq, messages, deleted"
#define MSG_COLS    "uid, guid, flags, keywords, internal_date, size, sha256, modseq, expunged"

enum store_fs_sql {
    SQL_BEGIN,
    SQL_COMMIT,
    SQL_ROLLBACK,
    SQL_MBOX_GET,
    SQL_MBOX_INSERT,
    SQL_MBOX_BUMP,
    SQL_MBOX_SET_STATE,
    SQL_MBOX_LIST,
    SQL_MBOX_RAISE_MODSEQ,
    SQL_MBOX_SET_MODSEQ,
    SQL_MBOX_ROWS_MODSEQ,
    SQL_MBOX_DELETE,
    SQL_MBOX_SET_TOKEN,
    SQL_PURGE_MSGS,
    SQL_PURGE_FOLDERS,
    SQL_PURGE_DELIVERIES,
    SQL_FOLDER_GET,
    SQL_FOLDER_MAXUV,
    SQL_FOLDER_INSERT,
    SQL_FOLDER_RENAME,
    SQL_FOLDER_DELETE,
    SQL_FOLDER_SUM,
    SQL_FOLDER_APPENDED,
    SQL_FOLDER_ADD_MSGS,
    SQL_FOLDER_LIST,
    SQL_FOLDER_CHANGES,
    SQL_FOLDER_SET_UIDNEXT,
    SQL_MSG_GET,
    SQL_MSG_EXISTS,
    SQL_MSG_TOMB,
    SQL_MSG_INSERT_TOMB,
    SQL_MSG_STAMP,
    SQL_MSG_INSERT,
    SQL_MSG_SET_FLAGS,
    SQL_MSG_EXPUNGE,
    SQL_MSGS_EXPUNGE_FOLDER,
    SQL_MSG_ITER,
    SQL_MSG_CHANGES,
    SQL_DELIVERY_GET,
    SQL_DELIVERY_INSERT,
    SQL_DELIVERY_ITER,
    SQL_COUNT
};

static const char *const store_fs_sql_text[SQL_COUNT] = {
    [SQL_BEGIN] = "BEGIN IMMEDIATE",
    [SQL_COMMIT] = "COMMIT",
    [SQL_ROLLBACK] = "ROLLBACK",
    [SQL_MBOX_GET] = "SELECT " MBOX_COLS " FROM mailboxes WHERE user = ?1",
    [SQL_MBOX_INSERT] = "INSERT INTO mailboxes(user, state, epoch, moved_to, modseq, created)"
                        " VALUES(?1, ?2, ?3, '', 0, ?4)",
    /* MAX: a change with an explicit modseq (store.h) may stamp below it. */
    [SQL_MBOX_BUMP] = "UPDATE mailboxes SET modseq = MAX(modseq, ?2), messages = messages + ?3,"
                      " bytes = bytes + ?4 WHERE id = ?1",
    [SQL_MBOX_SET_STATE] = "UPDATE mailboxes SET state = ?2, epoch = ?3, moved_to = ?4"
                           " WHERE id = ?1",
    [SQL_MBOX_LIST] = "SELECT " MBOX_COLS " FROM mailboxes ORDER BY user",
    [SQL_MBOX_RAISE_MODSEQ] = "UPDATE mailboxes SET modseq = ?2 WHERE id = ?1 AND modseq < ?2",
    [SQL_MBOX_SET_MODSEQ] = "UPDATE mailboxes SET modseq = ?2 WHERE id = ?1",
    /* Both through the (mailbox_id, modseq) indexes: two index lookups. */
    [SQL_MBOX_ROWS_MODSEQ] = "SELECT MAX(COALESCE((SELECT MAX(modseq) FROM messages"
                             " WHERE mailbox_id = ?1), 0), COALESCE((SELECT MAX(modseq)"
                             " FROM folders WHERE mailbox_id = ?1), 0))",
    [SQL_MBOX_DELETE] = "DELETE FROM mailboxes WHERE id = ?1",
    [SQL_MBOX_SET_TOKEN] = "UPDATE mailboxes SET token_job = ?2, token_claim = ?3 WHERE id = ?1",
    [SQL_PURGE_MSGS] = "DELETE FROM messages WHERE mailbox_id = ?1",
    [SQL_PURGE_FOLDERS] = "DELETE FROM folders WHERE mailbox_id = ?1",
    [SQL_PURGE_DELIVERIES] = "DELETE FROM deliveries WHERE mailbox_id = ?1",
    [SQL_FOLDER_GET] = "SELECT " FOLDER_COLS " FROM folders"
                       " WHERE mailbox_id = ?1 AND name = ?2 AND deleted = 0",
    [SQL_FOLDER_MAXUV] = "SELECT MAX(uidvalidity) FROM folders WHERE mailbox_id = ?1",
    [SQL_FOLDER_INSERT] = "INSERT INTO folders(mailbox_id, name, uidvalidity, uidnext, modseq)"
                          " VALUES(?1, ?2, ?3, 1, ?4)",
    [SQL_FOLDER_RENAME] = "UPDATE folders SET name = ?2, modseq = ?3 WHERE id = ?1",
    [SQL_FOLDER_DELETE] = "UPDATE folders SET deleted = 1, messages = 0, modseq = ?2"
                          " WHERE id = ?1",
    [SQL_FOLDER_SUM] = "SELECT COUNT(*), TOTAL(size) FROM messages"
                       " WHERE folder_id = ?1 AND expunged = 0",
    [SQL_FOLDER_APPENDED] = "UPDATE folders SET uidnext = ?2, messages = messages + ?3"
                            " WHERE id = ?1",
    [SQL_FOLDER_ADD_MSGS] = "UPDATE folders SET messages = messages + ?2 WHERE id = ?1",
    [SQL_FOLDER_LIST] = "SELECT " FOLDER_COLS " FROM folders"
                        " WHERE mailbox_id = ?1 AND deleted = 0 ORDER BY name",
    [SQL_FOLDER_CHANGES] = "SELECT " FOLDER_COLS " FROM folders"
                           " WHERE mailbox_id = ?1 AND modseq > ?2 ORDER BY modseq, id",
    [SQL_FOLDER_SET_UIDNEXT] = "UPDATE folders SET uidnext = ?2, modseq = ?3 WHERE id = ?1",
    [SQL_MSG_GET] = "SELECT id, flags, keywords, modseq, size, seg, off, guid, sha256"
                    " FROM messages WHERE folder_id = ?1 AND uid = ?2 AND expunged = 0",
    [SQL_MSG_EXISTS] = "SELECT 1 FROM messages WHERE folder_id = ?1 AND uid = ?2",
    [SQL_MSG_TOMB] = "SELECT id, modseq FROM messages"
                     " WHERE folder_id = ?1 AND uid = ?2 AND expunged = 1",
    [SQL_MSG_STAMP] = "UPDATE messages SET modseq = ?2 WHERE id = ?1",
    /* A tombstone copied from a move's source: no body (segment 0 does not
     * exist; nothing reads an expunged message's body). */
    [SQL_MSG_INSERT_TOMB] = "INSERT INTO messages(folder_id, mailbox_id, uid, guid, flags,"
                            " keywords, internal_date, size, sha256, modseq, seg, off, expunged)"
                            " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, 0, 1)",
    [SQL_MSG_INSERT] = "INSERT INTO messages(folder_id, mailbox_id, uid, guid, flags, keywords,"
                       " internal_date, size, sha256, modseq, seg, off)"
                       " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    [SQL_MSG_SET_FLAGS] = "UPDATE messages SET flags = ?2, keywords = ?3, modseq = ?4"
                          " WHERE id = ?1",
    [SQL_MSG_EXPUNGE] = "UPDATE messages SET expunged = 1, modseq = ?2 WHERE id = ?1",
    [SQL_MSGS_EXPUNGE_FOLDER] = "UPDATE messages SET expunged = 1, modseq = ?2"
                                " WHERE folder_id = ?1 AND expunged = 0",
    [SQL_MSG_ITER] = "SELECT " MSG_COLS " FROM messages"
                     " WHERE folder_id = ?1 AND expunged = 0 ORDER BY uid",
    [SQL_MSG_CHANGES] = "SELECT m.uid, m.guid, m.flags, m.keywords, m.internal_date, m.size,"
                        " m.sha256, m.modseq, m.expunged, f.id, f.name, f.uidvalidity,"
                        " f.uidnext, f.modseq, f.messages, f.deleted"
                        " FROM messages m JOIN folders f ON f.id = m.folder_id"
                        " WHERE m.mailbox_id = ?1 AND m.modseq > ?2 ORDER BY m.modseq, m.id",
    /* folder_id 0 (no such folder, see the migrations): no message row, so
     * column 4 is NULL and the duplicate reports uid 0. */
    [SQL_DELIVERY_GET] = "SELECT d.uid, f.uidvalidity, m.guid, m.modseq, m.uid IS NOT NULL"
                         " FROM deliveries d"
                         " LEFT JOIN folders f ON f.id = d.folder_id"
                         " LEFT JOIN messages m ON m.folder_id = d.folder_id AND m.uid = d.uid"
                         " WHERE d.mailbox_id = ?1 AND d.delivery_id = ?2",
    [SQL_DELIVERY_INSERT] = "INSERT INTO deliveries(mailbox_id, delivery_id, folder_id, uid,"
                            " created, folder) VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
    [SQL_DELIVERY_ITER] = "SELECT d.delivery_id, COALESCE(f.name, d.folder), d.uid"
                          " FROM deliveries d LEFT JOIN folders f ON f.id = d.folder_id"
                          " LEFT JOIN messages m ON m.folder_id = d.folder_id AND m.uid = d.uid"
                          " WHERE d.mailbox_id = ?1 AND d.delivery_id > ?2"
                          " AND (m.modseq IS NULL OR (m.modseq > ?3 AND m.modseq <= ?4))"
                          " ORDER BY d.delivery_id",
};

struct store_fs_rfd {
    uint32_t seg;
    int fd;
};

struct store_fs {
    struct store base;
    sqlite3 *db;
    sqlite3_stmt *stmts[SQL_COUNT];
    char *dir;
    char *segdir;
    uint32_t seg_high;                       /* highest segment number known to exist (0 = none) */
    uint32_t seg;                            /* number of seg_fd */
    int seg_fd;                              /* append fd, -1 until the first commit needs it */
    bool seg_broken;                         /* a write or sync failed on seg_fd: abandon it */
    bool seg_dir_dirty;                      /* seg_fd was created and segments/ not yet synced */
    struct store_fs_rfd rfds[STORE_FS_RFDS]; /* read fds of other segments */
    unsigned rfd_next;
};

static const struct store_ops store_fs_ops;

static const char store_fs_dberr[] = "store database error";
static const char store_fs_ioerr[] = "store I/O error";

/* ---- SQLite helpers ---- */

static void store_fs_sqlerr(struct store_fs *fs, const char *what)
{
    log_error("store", "%s: %s: %s", fs->base.name, what, sqlite3_errmsg(fs->db));
}

/* A cached statement, reset and ready to bind. */
static sqlite3_stmt *store_fs_q(struct store_fs *fs, enum store_fs_sql i)
{
    sqlite3_reset(fs->stmts[i]);
    return fs->stmts[i];
}

/* Runs a statement that returns no rows. 0 or -1 (logged). */
static int store_fs_exec(struct store_fs *fs, sqlite3_stmt *s, const char *what)
{
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) {
        store_fs_sqlerr(fs, what);
        return -1;
    }
    return 0;
}

/* Steps a statement expected to return at most one row: 1 = row (caller
 * reads columns, then resets via the next store_fs_q()), 0 = none, -1. */
static int store_fs_row(struct store_fs *fs, sqlite3_stmt *s, const char *what)
{
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        return 1;
    sqlite3_reset(s);
    if (rc == SQLITE_DONE)
        return 0;
    store_fs_sqlerr(fs, what);
    return -1;
}

static int store_fs_begin(struct store_fs *fs)
{
    return store_fs_exec(fs, store_fs_q(fs, SQL_BEGIN), "begin");
}

static void store_fs_rollback(struct store_fs *fs)
{
    if (!sqlite3_get_autocommit(fs->db))
        (void)store_fs_exec(fs, store_fs_q(fs, SQL_ROLLBACK), "rollback");
}

/* Ends the transaction of a single operation: COMMIT if s is STORE_OK
 * (STORE_ERROR if that fails), else ROLLBACK. Returns the final status. */
static enum store_status store_fs_finish(struct store_fs *fs, enum store_status s)
{
    if (s == STORE_OK && store_fs_exec(fs, store_fs_q(fs, SQL_COMMIT), "commit") < 0)
        s = STORE_ERROR;
    if (s != STORE_OK)
        store_fs_rollback(fs);
    return s;
}

static const char *store_fs_text(sqlite3_stmt *s, int col)
{
    const unsigned char *t = sqlite3_column_text(s, col);
    return t != NULL ? (const char *)t : "";
}

static void store_fs_blob(sqlite3_stmt *s, int col, void *out, size_t len)
{
    const void *p = sqlite3_column_blob(s, col);
    if (p != NULL && (size_t)sqlite3_column_bytes(s, col) == len)
        memcpy(out, p, len);
    else
        memset(out, 0, len);
}

static void store_fs_mbox_cols(sqlite3_stmt *s, struct store_mailbox *out)
{
    memset(out, 0, sizeof(*out));
    str_copy(out->user, store_fs_text(s, 1), sizeof(out->user));
    out->state = (enum store_mbox_state)sqlite3_column_int(s, 2);
    out->epoch = (uint64_t)sqlite3_column_int64(s, 3);
    str_copy(out->moved_to, store_fs_text(s, 4), sizeof(out->moved_to));
    out->modseq = (uint64_t)sqlite3_column_int64(s, 5);
    out->messages = (uint64_t)sqlite3_column_int64(s, 6);
    out->bytes = (uint64_t)sqlite3_column_int64(s, 7);
    out->created = sqlite3_column_int64(s, 8);
    out->token.job = (uint64_t)sqlite3_column_int64(s, 9);
    out->token.claim = (uint64_t)sqlite3_column_int64(s, 10);
}

/* FOLDER_COLS starting at column c. */
static void store_fs_folder_cols(sqlite3_stmt *s, int c, struct store_folder *out)
{
    memset(out, 0, sizeof(*out));
    out->id = (uint64_t)sqlite3_column_int64(s, c);
    str_copy(out->name, store_fs_text(s, c + 1), sizeof(out->name));
    out->uidvalidity = (uint32_t)sqlite3_column_int64(s, c + 2);
    out->uidnext = (uint32_t)sqlite3_column_int64(s, c + 3);
    out->modseq = (uint64_t)sqlite3_column_int64(s, c + 4);
    out->messages = (uint64_t)sqlite3_column_int64(s, c + 5);
    out->deleted = sqlite3_column_int(s, c + 6) != 0;
}

/* MSG_COLS from column 0. keywords points into the statement's row. */
static void store_fs_msg_cols(sqlite3_stmt *s, uint64_t folder_id, struct store_msg *out)
{
    memset(out, 0, sizeof(*out));
    out->folder_id = folder_id;
    out->uid = (uint32_t)sqlite3_column_int64(s, 0);
    store_fs_blob(s, 1, out->guid, STORE_GUID_LEN);
    out->flags = (uint32_t)sqlite3_column_int64(s, 2);
    out->keywords = store_fs_text(s, 3);
    out->internal_date = sqlite3_column_int64(s, 4);
    out->size = (uint64_t)sqlite3_column_int64(s, 5);
    store_fs_blob(s, 6, out->sha256, SHA256_LEN);
    out->modseq = (uint64_t)sqlite3_column_int64(s, 7);
    out->expunged = sqlite3_column_int(s, 8) != 0;
}

/* Loads the mailbox of user: STORE_OK (id and out filled), NOTFOUND, ERROR. */
static enum store_status store_fs_mbox_load(struct store_fs *fs, const char *user, int64_t *id_r,
                                            struct store_mailbox *out)
{
    sqlite3_stmt *s = store_fs_q(fs, SQL_MBOX_GET);
    sqlite3_bind_text(s, 1, user, -1, SQLITE_STATIC);
    int r = store_fs_row(fs, s, "mailbox lookup");
    if (r <= 0)
        return r == 0 ? STORE_NOTFOUND : STORE_ERROR;
    *id_r = sqlite3_column_int64(s, 0);
    store_fs_mbox_cols(s, out);
    sqlite3_reset(s);
    return STORE_OK;
}

static enum store_status store_fs_folder_load(struct store_fs *fs, int64_t mbox_id,
                                              const char *name, struct store_folder *out)
{
    sqlite3_stmt *s = store_fs_q(fs, SQL_FOLDER_GET);
    sqlite3_bind_int64(s, 1, mbox_id);
    sqlite3_bind_text(s, 2, name, -1, SQLITE_STATIC);
    int r = store_fs_row(fs, s, "folder lookup");
    if (r <= 0)
        return r == 0 ? STORE_NOTFOUND : STORE_ERROR;
    store_fs_folder_cols(s, 0, out);
    sqlite3_reset(s);
    return STORE_OK;
}

/* The fencing check of a change to the mailbox row `id` (mb as read in
 * this transaction): STORE_STALE, or STORE_OK with the row's token raised
 * to the one set on the handle if that is higher (store.h). */
static enum store_status store_fs_fence(struct store_fs *fs, const char *user, int64_t id,
                                        struct store_mailbox *mb)
{
    bool raise;
    struct store_token to;
    enum store_status s = store_token_check(&fs->base, user, &mb->token, &raise, &to);
    if (s != STORE_OK || !raise)
        return s;
    sqlite3_stmt *q = store_fs_q(fs, SQL_MBOX_SET_TOKEN);
    sqlite3_bind_int64(q, 1, id);
    sqlite3_bind_int64(q, 2, (int64_t)to.job);
    sqlite3_bind_int64(q, 3, (int64_t)to.claim);
    if (store_fs_exec(fs, q, "mailbox token") < 0)
        return STORE_ERROR;
    mb->token = to;
    return STORE_OK;
}

/* store_fs_mbox_load for a change: the fencing check included. */
static enum store_status store_fs_mbox_load_w(struct store_fs *fs, const char *user, int64_t *id_r,
                                              struct store_mailbox *out)
{
    enum store_status s = store_fs_mbox_load(fs, user, id_r, out);
    if (s == STORE_OK)
        s = store_fs_fence(fs, user, *id_r, out);
    return s;
}

/* Mailbox and live folder by names. With `write` (the caller is inside
 * its BEGIN IMMEDIATE transaction, about to change the mailbox), a mailbox
 * in a state that refuses changes is STORE_NOTLIVE, before the folder. */
static enum store_status store_fs_resolve(struct store_fs *fs, const char *user, const char *folder,
                                          bool write, int64_t *mbox_id_r, struct store_mailbox *mb,
                                          struct store_folder *f)
{
    enum store_status s = write ? store_fs_mbox_load_w(fs, user, mbox_id_r, mb)
                                : store_fs_mbox_load(fs, user, mbox_id_r, mb);
    if (s == STORE_OK && write && !store_state_writable(mb->state))
        s = STORE_NOTLIVE;
    if (s == STORE_OK && folder != NULL)
        s = store_fs_folder_load(fs, *mbox_id_r, folder, f);
    return s;
}

struct store_fs_msgrow {
    int64_t id;
    uint32_t flags;
    char keywords[STORE_KEYWORDS_MAX + 1];
    uint64_t modseq;
    uint64_t size;
    uint32_t seg;
    uint64_t off;
    uint8_t guid[STORE_GUID_LEN];
    uint8_t sha256[SHA256_LEN];
};

static enum store_status store_fs_msg_load(struct store_fs *fs, uint64_t folder_id, uint32_t uid,
                                           struct store_fs_msgrow *out)
{
    sqlite3_stmt *s = store_fs_q(fs, SQL_MSG_GET);
    sqlite3_bind_int64(s, 1, (int64_t)folder_id);
    sqlite3_bind_int64(s, 2, uid);
    int r = store_fs_row(fs, s, "message lookup");
    if (r <= 0)
        return r == 0 ? STORE_NOTFOUND : STORE_ERROR;
    out->id = sqlite3_column_int64(s, 0);
    out->flags = (uint32_t)sqlite3_column_int64(s, 1);
    str_copy(out->keywords, store_fs_text(s, 2), sizeof(out->keywords));
    out->modseq = (uint64_t)sqlite3_column_int64(s, 3);
    out->size = (uint64_t)sqlite3_column_int64(s, 4);
    out->seg = (uint32_t)sqlite3_column_int64(s, 5);
    out->off = (uint64_t)sqlite3_column_int64(s, 6);
    store_fs_blob(s, 7, out->guid, STORE_GUID_LEN);
    store_fs_blob(s, 8, out->sha256, SHA256_LEN);
    sqlite3_reset(s);
    return STORE_OK;
}

/* Stamps a change on the mailbox row: new modseq and counter deltas. */
static int store_fs_mbox_bump(struct store_fs *fs, int64_t mbox_id, uint64_t modseq, int64_t dmsgs,
                              int64_t dbytes)
{
    sqlite3_stmt *s = store_fs_q(fs, SQL_MBOX_BUMP);
    sqlite3_bind_int64(s, 1, mbox_id);
    sqlite3_bind_int64(s, 2, (int64_t)modseq);
    sqlite3_bind_int64(s, 3, dmsgs);
    sqlite3_bind_int64(s, 4, dbytes);
    return store_fs_exec(fs, s, "mailbox update");
}

/* ---- segments ---- */

static char *store_fs_seg_path(const struct store_fs *fs, uint32_t seg)
{
    return xasprintf("%s/%08u.seg", fs->segdir, seg);
}

/* Highest NNNNNNNN.seg in segments/, 0 if none. -1 on error. */
static int store_fs_seg_scan(struct store_fs *fs)
{
    DIR *d = opendir(fs->segdir);
    if (d == NULL)
        return -1;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *n = de->d_name;
        if (strlen(n) != 12 || strcmp(n + 8, ".seg") != 0)
            continue;
        char digits[9];
        memcpy(digits, n, 8);
        digits[8] = '\0';
        uint64_t v;
        if (parse_u64(digits, UINT32_MAX, &v) == 0 && v > fs->seg_high)
            fs->seg_high = (uint32_t)v;
    }
    closedir(d);
    return 0;
}

static void store_fs_seg_close(struct store_fs *fs)
{
    if (fs->seg_fd >= 0)
        close(fs->seg_fd);
    fs->seg_fd = -1;
    fs->seg_broken = false;
    fs->seg_dir_dirty = false;
}

/* Makes seg_fd the segment to append `need` bytes to and returns its
 * current end in *off_r. Called under the SQLite write lock, so the end
 * found by fstat is ours alone until COMMIT/ROLLBACK. */
static int store_fs_seg_prepare(struct store_fs *fs, uint64_t need, uint64_t *off_r)
{
    struct stat sb;
    if (fs->seg_fd < 0 && !fs->seg_broken && fs->seg_high > 0) {
        char *path = store_fs_seg_path(fs, fs->seg_high);
        fs->seg_fd = open(path, O_RDWR | O_CLOEXEC);
        if (fs->seg_fd < 0)
            log_error("store", "%s: open %s: %s", fs->base.name, path, strerror(errno));
        free(path);
        if (fs->seg_fd < 0)
            return -1;
        fs->seg = fs->seg_high;
    }
    if (fs->seg_fd >= 0 && !fs->seg_broken) {
        if (fstat(fs->seg_fd, &sb) < 0) {
            log_error("store", "%s: fstat segment %u: %s", fs->base.name, fs->seg, strerror(errno));
            return -1;
        }
        if (sb.st_size == 0 || (uint64_t)sb.st_size + need <= STORE_FS_SEG_MAX) {
            *off_r = (uint64_t)sb.st_size;
            return 0;
        }
    }
    /* Start a new segment: first one, full one, or one abandoned after a
     * failed write/sync. O_EXCL: never append to a file we did not find
     * empty and numbered above everything we know. */
    store_fs_seg_close(fs);
    for (int tries = 0; tries < 100; tries++) {
        uint32_t next = (fs->seg_high > fs->seg ? fs->seg_high : fs->seg) + 1;
        char *path = store_fs_seg_path(fs, next);
        int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        int e = errno;
        if (fd < 0 && e != EEXIST)
            log_error("store", "%s: create %s: %s", fs->base.name, path, strerror(e));
        free(path);
        fs->seg_high = next;
        if (fd >= 0) {
            fs->seg_fd = fd;
            fs->seg = next;
            fs->seg_dir_dirty = true;
            *off_r = 0;
            return 0;
        }
        if (e != EEXIST)
            return -1;
    }
    return -1;
}

/* pwritev() all of iov (modified in place), in IOV_MAX chunks. */
static int store_fs_pwritev_full(int fd, struct iovec *iov, size_t cnt, uint64_t off)
{
    if (util_fault_write()) { /* TERN_FAULT=write:N (tests) */
        errno = EIO;
        return -1;
    }
    while (cnt > 0) {
        int n = cnt > IOV_MAX ? IOV_MAX : (int)cnt;
        ssize_t w = pwritev(fd, iov, n, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        off += (uint64_t)w;
        size_t left = (size_t)w;
        while (cnt > 0 && left >= iov->iov_len) {
            left -= iov->iov_len;
            iov++;
            cnt--;
        }
        if (cnt > 0) {
            iov->iov_base = (char *)iov->iov_base + left;
            iov->iov_len -= left;
        }
    }
    return 0;
}

static void store_fs_put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t store_fs_get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static void store_fs_rec_header(uint8_t hdr[STORE_FS_REC_HDR], uint64_t len,
                                const uint8_t guid[STORE_GUID_LEN], const uint8_t sha[SHA256_LEN])
{
    memcpy(hdr, STORE_FS_REC_MAGIC, 8);
    store_fs_put_le64(hdr + 8, len);
    memcpy(hdr + 16, guid, STORE_GUID_LEN);
    memcpy(hdr + 32, sha, SHA256_LEN);
}

/* A read fd for segment seg (cached; not to be closed by the caller). */
static int store_fs_seg_rfd(struct store_fs *fs, uint32_t seg)
{
    if (fs->seg_fd >= 0 && seg == fs->seg)
        return fs->seg_fd;
    for (unsigned i = 0; i < STORE_FS_RFDS; i++)
        if (fs->rfds[i].fd >= 0 && fs->rfds[i].seg == seg)
            return fs->rfds[i].fd;
    char *path = store_fs_seg_path(fs, seg);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        log_error("store", "%s: open %s: %s", fs->base.name, path, strerror(errno));
    free(path);
    if (fd < 0)
        return -1;
    struct store_fs_rfd *slot = &fs->rfds[fs->rfd_next++ % STORE_FS_RFDS];
    if (slot->fd >= 0)
        close(slot->fd);
    slot->fd = fd;
    slot->seg = seg;
    return fd;
}

/* ---- lifecycle ---- */

static void store_fs_close(struct store *st)
{
    struct store_fs *fs = (struct store_fs *)st;
    for (int i = 0; i < SQL_COUNT; i++)
        sqlite3_finalize(fs->stmts[i]);
    if (fs->db != NULL)
        sqlite3_close(fs->db);
    store_fs_seg_close(fs);
    for (unsigned i = 0; i < STORE_FS_RFDS; i++)
        if (fs->rfds[i].fd >= 0)
            close(fs->rfds[i].fd);
    free(fs->dir);
    free(fs->segdir);
    free(fs);
}

/* Reads the schema version and applies the missing migration steps, each in
 * its own transaction (re-reading the version under the write lock, so two
 * processes opening at once apply a step once). *version_r: the version
 * now, -1 if unknown. */
static int store_fs_migrate(struct store_fs *fs, int *version_r, const char **error_r)
{
    const int nsteps = (int)(sizeof(store_fs_migrations) / sizeof(store_fs_migrations[0]));
    for (;;) {
        char *err = NULL;
        int version = -1;
        bool ok = sqlite3_exec(fs->db, "BEGIN IMMEDIATE;", NULL, NULL, &err) == SQLITE_OK;
        if (ok) {
            sqlite3_stmt *s;
            if (sqlite3_prepare_v2(fs->db, "SELECT value FROM meta WHERE key = 'schema_version'",
                                   -1, &s, NULL) == SQLITE_OK) {
                if (sqlite3_step(s) == SQLITE_ROW)
                    version = sqlite3_column_int(s, 0);
                sqlite3_finalize(s);
            }
            *version_r = version;
            if (version < 1 || version > nsteps) {
                sqlite3_exec(fs->db, "ROLLBACK;", NULL, NULL, NULL);
                return 0; /* current, or unknown: the caller checks */
            }
            ok = sqlite3_exec(fs->db, store_fs_migrations[version - 1], NULL, NULL, &err) ==
                     SQLITE_OK &&
                 sqlite3_exec(fs->db, "COMMIT;", NULL, NULL, &err) == SQLITE_OK;
            if (!ok)
                sqlite3_exec(fs->db, "ROLLBACK;", NULL, NULL, NULL);
        }
        if (!ok) {
            log_error("store", "%s: schema migration: %s", fs->base.name, err != NULL ? err : "?");
            sqlite3_free(err);
            *error_r = "cannot migrate the store database";
            return -1;
        }
        log_info("store", "%s: store.db schema migrated to version %d", fs->base.name, version + 1);
    }
}

static int store_fs_open_db(struct store_fs *fs, const char **error_r)
{
    char *path = xasprintf("%s/store.db", fs->dir);
    int rc = sqlite3_open_v2(
        path, &fs->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    free(path);
    if (rc != SQLITE_OK) {
        log_error("store", "%s: open store.db in %s: %s", fs->base.name, fs->dir,
                  fs->db != NULL ? sqlite3_errmsg(fs->db) : sqlite3_errstr(rc));
        *error_r = "cannot open the store database";
        return -1;
    }
    sqlite3_busy_timeout(fs->db, 5000);
    /* WAL: readers (the CLI) never block the appender. synchronous=FULL:
     * every COMMIT fsyncs the WAL, so a commit we acknowledge survives
     * power loss, not just a process crash. */
    char *err = NULL;
    if (sqlite3_exec(fs->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", NULL, NULL,
                     &err) != SQLITE_OK ||
        sqlite3_exec(fs->db, "BEGIN IMMEDIATE;", NULL, NULL, &err) != SQLITE_OK ||
        sqlite3_exec(fs->db, store_fs_schema, NULL, NULL, &err) != SQLITE_OK ||
        sqlite3_exec(fs->db, "COMMIT;", NULL, NULL, &err) != SQLITE_OK) {
        log_error("store", "%s: schema: %s", fs->base.name, err != NULL ? err : "?");
        sqlite3_free(err);
        *error_r = "cannot initialize the store database";
        return -1;
    }
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(fs->db, "PRAGMA journal_mode", -1, &s, NULL) == SQLITE_OK) {
        if (sqlite3_step(s) == SQLITE_ROW && strcmp(store_fs_text(s, 0), "wal") != 0)
            log_warn("store", "%s: store.db is not in WAL mode (%s): readers will block",
                     fs->base.name, store_fs_text(s, 0));
        sqlite3_finalize(s);
    }
    int version = -1;
    if (store_fs_migrate(fs, &version, error_r) < 0)
        return -1;
    if (version != STORE_FS_SCHEMA_VERSION) {
        log_error("store", "%s: store.db schema version %d, expected %d", fs->base.name, version,
                  STORE_FS_SCHEMA_VERSION);
        *error_r = "unsupported store database version";
        return -1;
    }
    for (int i = 0; i < SQL_COUNT; i++) {
        if (sqlite3_prepare_v3(fs->db, store_fs_sql_text[i], -1, SQLITE_PREPARE_PERSISTENT,
                               &fs->stmts[i], NULL) != SQLITE_OK) {
            store_fs_sqlerr(fs, store_fs_sql_text[i]);
            *error_r = "cannot prepare store statements";
            return -1;
        }
    }
    return 0;
}

struct store *store_open_fs(const char *dir, const char *name, const char **error_r)
{
    struct store_fs *fs = xmalloc(sizeof(*fs));
    store_init_base(&fs->base, NULL, name);
    fs->seg_fd = -1;
    for (unsigned i = 0; i < STORE_FS_RFDS; i++)
        fs->rfds[i].fd = -1;
    fs->dir = xstrdup(dir);
    fs->segdir = xasprintf("%s/segments", dir);

    struct stat sb;
    char *dbpath = xasprintf("%s/store.db", dir);
    bool created = stat(dbpath, &sb) < 0 || stat(fs->segdir, &sb) < 0;
    free(dbpath);
    if (mkdir_p(fs->segdir, 0700) < 0) {
        log_error("store", "%s: mkdir %s: %s", name, fs->segdir, strerror(errno));
        *error_r = "cannot create the store directory";
        goto fail;
    }
    if (store_fs_open_db(fs, error_r) < 0)
        goto fail;
    /* A new store.db or segments/ is a new directory entry: make it (and
     * the store directory itself, which mkdir_p may just have created)
     * durable before anything acknowledged can live in it. SQLite syncs the
     * directory for the WAL's entry, not for the main database file's. */
    if (created) {
        char *parent = xstrdup(dir);
        char *slash = strrchr(parent, '/');
        if (slash != NULL)
            *(slash == parent ? slash + 1 : slash) = '\0';
        int r = util_fsync_dir(dir, "store: new store directory entries");
        if (r == 0 && slash != NULL)
            r = util_fsync_dir(parent, "store: new store directory");
        free(parent);
        if (r < 0) {
            *error_r = "cannot sync the store directory";
            goto fail;
        }
    }
    if (store_fs_seg_scan(fs) < 0) {
        log_error("store", "%s: scan %s: %s", name, fs->segdir, strerror(errno));
        *error_r = "cannot read the segments directory";
        goto fail;
    }
    fs->base.ops = &store_fs_ops;
    return &fs->base;
fail:
    store_fs_close(&fs->base);
    return NULL;
}

/* ---- mailboxes ---- */

static enum store_status store_fs_folder_insert(struct store_fs *fs, int64_t mbox_id,
                                                const char *name, uint32_t uidvalidity,
                                                uint64_t modseq)
{
    sqlite3_stmt *s;
    if (uidvalidity == 0) {
        s = store_fs_q(fs, SQL_FOLDER_MAXUV);
        sqlite3_bind_int64(s, 1, mbox_id);
        int r = store_fs_row(fs, s, "folder uidvalidity");
        if (r < 0)
            return STORE_ERROR;
        uint32_t highest = r > 0 ? (uint32_t)sqlite3_column_int64(s, 0) : 0;
        sqlite3_reset(s);
        uidvalidity = store_uidvalidity_choose(highest);
    }
    s = store_fs_q(fs, SQL_FOLDER_INSERT);
    sqlite3_bind_int64(s, 1, mbox_id);
    sqlite3_bind_text(s, 2, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, uidvalidity);
    sqlite3_bind_int64(s, 4, (int64_t)modseq);
    if (store_fs_exec(fs, s, "folder insert") < 0 ||
        store_fs_mbox_bump(fs, mbox_id, modseq, 0, 0) < 0)
        return STORE_ERROR;
    return STORE_OK;
}

static enum store_status store_fs_mailbox_create(struct store *st, const char *user,
                                                 enum store_mbox_state state, uint64_t epoch,
                                                 uint32_t inbox_uidvalidity)
{
    struct store_fs *fs = (struct store_fs *)st;
    if (store_fs_begin(fs) < 0)
        return STORE_ERROR;
    int64_t id;
    struct store_mailbox mb;
    enum store_status s = store_fs_mbox_load(fs, user, &id, &mb);
    if (s == STORE_OK)
        return store_fs_finish(fs, STORE_EXISTS);
    if (s != STORE_NOTFOUND)
        return store_fs_finish(fs, s);
    sqlite3_stmt *q = store_fs_q(fs, SQL_MBOX_INSERT);
    sqlite3_bind_text(q, 1, user, -1, SQLITE_STATIC);
    sqlite3_bind_int(q, 2, (int)state);
    sqlite3_bind_int64(q, 3, (int64_t)epoch);
    sqlite3_bind_int64(q, 4, time_now_ms() / 1000);
    if (store_fs_exec(fs, q, "mailbox insert") < 0)
        return store_fs_finish(fs, STORE_ERROR);
    id = sqlite3_last_insert_rowid(fs->db);
    memset(&mb, 0, sizeof(mb));
    s = store_fs_fence(fs, user, id, &mb); /* the new row gets the caller's token */
    if (s == STORE_OK)
        s = store_fs_folder_insert(fs, id, "INBOX", inbox_uidvalidity, 1);
    return store_fs_finish(fs, s);
}

static enum store_status store_fs_mailbox_get(struct store *st, const char *user,
                                              struct store_mailbox *out)
{
    int64_t id;
    return store_fs_mbox_load((struct store_fs *)st, user, &id, out);
}

static enum store_status store_fs_mailbox_set_state(struct store *st, const char *user,
                                                    enum store_mbox_state expect,
                                                    enum store_mbox_state state, uint64_t epoch,
                                                    const char *moved_to)
{
    struct store_fs *fs = (struct store_fs *)st;
    if (store_fs_begin(fs) < 0)
        return STORE_ERROR;
    int64_t id;
    struct store_mailbox mb;
    enum store_status s = store_fs_mbox_load_w(fs, user, &id, &mb);
    if (s == STORE_OK && mb.state != expect)
        s = STORE_CONFLICT;
    if (s == STORE_OK) {
        sqlite3_stmt *q = store_fs_q(fs, SQL_MBOX_SET_STATE);
        sqlite3_bind_int64(q, 1, id);
        sqlite3_bind_int(q, 2, (int)state);
        sqlite3_bind_int64(q, 3, (int64_t)epoch);
        sqlite3_bind_text(q, 4, moved_to, -1, SQLITE_STATIC);
        if (store_fs_exec(fs, q, "mailbox state") < 0)
            s = STORE_ERROR;
    }
    return store_fs_finish(fs, s);
}

static enum store_status store_fs_mailbox_raise_modseq(struct store *st, const char *user,
                                                       uint64_t modseq)
{
    struct store_fs *fs = (struct store_fs *)st;
    if (store_fs_begin(fs) < 0)
        return STORE_ERROR;
    int64_t id;
    struct store_mailbox mb;
    enum store_status s = store_fs_mbox_load_w(fs, user, &id, &mb);
    if (s == STORE_OK && mb.state != STORE_MBOX_STAGED && mb.state != STORE_MBOX_ACTIVE)
        s = STORE_NOTLIVE;
    if (s == STORE_OK && mb.state == STORE_MBOX_STAGED) {
        /* Exactly modseq, but never below a row (store.h). */
        sqlite3_stmt *q = store_fs_q(fs, SQL_MBOX_ROWS_MODSEQ);
        sqlite3_bind_int64(q, 1, id);
        if (store_fs_row(fs, q, "mailbox rows modseq") <= 0)
            return store_fs_finish(fs, STORE_ERROR);
        uint64_t rows = (uint64_t)sqlite3_column_int64(q, 0);
        sqlite3_reset(q);
        if (rows > modseq)
            modseq = rows;
        if (modseq != mb.modseq) {
            q = store_fs_q(fs, SQL_MBOX_SET_MODSEQ);
            sqlite3_bind_int64(q, 1, id);
            sqlite3_bind_int64(q, 2, (int64_t)modseq);
            if (store_fs_exec(fs, q, "mailbox modseq") < 0)
                s = STORE_ERROR;
        }
    } else if (s == STORE_OK && mb.modseq < modseq) {
        sqlite3_stmt *q = store_fs_q(fs, SQL_MBOX_RAISE_MODSEQ);
        sqlite3_bind_int64(q, 1, id);
        sqlite3_bind_int64(q, 2, (int64_t)modseq);
        if (store_fs_exec(fs, q, "mailbox modseq") < 0)
            s = STORE_ERROR;
    }
    return store_fs_finish(fs, s);
}

static enum store_status store_fs_mailbox_token(struct store *st, const char *user,
                                                const struct store_token *t)
{
    struct store_fs *fs = (struct store_fs *)st;
    if (store_fs_begin(fs) < 0)
        return STORE_ERROR;
    int64_t id;
    struct store_mailbox mb;
    enum store_status s = store_fs_mbox_load(fs, user, &id, &mb);
    int c = s == STORE_OK ? store_token_cmp(t, &mb.token) : 0;
    if (c < 0)
        s = STORE_STALE;
    if (c > 0) {
        sqlite3_stmt *q = store_fs_q(fs, SQL_MBOX_SET_TOKEN);
        sqlite3_bind_int64(q, 1, id);
        sqlite3_bind_int64(q, 2, (int64_t)t->job);
        sqlite3_bind_int64(q, 3, (int64_t)t->claim);
        if (store_fs_exec(fs, q, "mailbox token") < 0)
            s = STORE_ERROR;
    }
    return store_fs_finish(fs, s);
}

static enum store_status store_fs_mailbox_purge(struct store *st, const char *user)
{
    struct store_fs *fs = (struct store_fs *)st;
    if (store_fs_begin(fs) < 0)
        return STORE_ERROR;
    int64_t id;
    struct store_mailbox mb;
    enum store_status s = store_fs_mbox_load_w(fs, user, &id, &mb);
    if (s == STORE_OK && mb.state != STORE_MBOX_DELETING)
        s = STORE_CONFLICT;
    static const enum store_fs_sql purge[] = {SQL_PURGE_MSGS, SQL_PURGE_FOLDERS,
                                              SQL_PURGE_DELIVERIES, SQL_MBOX_DELETE};
    for (size_t i = 0; s == STORE_OK && i < ARRAY_SIZE(purge); i++) {
        sqlite3_stmt *q = store_fs_q(fs, purge[i]);
        sqlite3_bind_int64(q, 1, id);
        if (store_fs_exec(fs, q, "mailbox purge") < 0)
            s = STORE_ERROR;
    }
    return store_fs_finish(fs, s);
}

static enum store_status store_fs_mailbox_list(struct store *st, struct store_mailbox **list_r,
                                               size_t *n_r)
{
    struct store_fs *fs = (struct store_fs *)st;
    sqlite3_stmt *s = store_fs_q(fs, SQL_MBOX_LIST);
    struct store_mailbox *list = NULL;
    size_t n = 0, cap = 0;
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            list = xrealloc(list, cap * sizeof(*list));
        }
        store_fs_mbox_cols(s, &list[n++]);
    }
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) {
        store_fs_sqlerr(fs, "mailbox list");
        free(list);
        return STORE_ERROR;
    }
    *list_r = list != NULL ? list : xmalloc(1);
    *n_r = n;
    return STORE_OK;
}

/* ---- folders ---- */

static enum store_status store_fs_folder_create(struct store *st, const char *user,
                                                const char *name, uint32_t uidvalidity,
                                                uint64_t modseq)
{
    struct store_fs *fs = (struct store_fs *)st;
    if (store_fs_begin(fs) < 0)
        return STORE_ERROR;
    int64_t id;
    struct store_mailbox mb;
    struct store_folder f;
    enum store_status s = store_fs_mbox_load_w(fs, user, &id, &mb);
    if (s == STORE_OK &&
        (!store_state_writable(mb.state) || !store_modseq_allowed(modseq, mb.state)))
        s = STORE_NOTLIVE;
    if (s == STORE_OK) {
        s = store_fs_folder_load(fs, id, name, &f);
        if (s == STORE_OK)
            s = STORE_EXISTS;
        else if (s == STORE_NOTFOUND)
            s = store_fs_folder_insert(fs, id, name, uidvalidity,
                                       store_modseq_take(&mb.modseq, modseq));
    }
    return store_fs_finish(fs, s);
}

static enum store_status store_fs_folder_get(struct store *st, const char *user, const char *name,
                                             struct store_folder *out)
{
    int64_t id;
    struct store_mailbox mb;
    return store_fs_resolve((struct store_fs *)st, user, name, false, &id, &mb, out);
}

static enum store_status store_fs_folder_rename(struct store *st, const char *user,
                                                const char *from, const char *to, uint64_t modseq)
{
    struct store_fs *fs = (struct store_fs *)st;
    if (store_fs_begin(fs) < 0)
        return STORE_ERROR;
    int64_t id;
    struct store_mailbox mb;
    struct store_folder f, t;
    enum store_status s = store_fs_resolve(fs, user, from, true, &id, &mb, &f);
    if (s == STORE_OK && !store_modseq_allowed(modseq, mb.state))
        s = STORE_NOTLIVE;
    if (s == STORE_OK) {
        s = store_fs_folder_load(fs, id, to, &t);
        s = s == STORE_OK ? STORE_EXISTS : s == STORE_NOTFOUND ? STORE_OK : s;
    }
    if (s == STORE_OK) {
        uint64_t m = store_modseq_take(&mb.modseq, modseq);
        sqlite3_stmt *q = store_fs_q(fs, SQL_FOLDER_RENAME);
        sqlite3_bind_int64(q, 1, (int64_t)f.id);
        sqlite3_bind_text(q, 2, to, -1, SQLITE_STATIC);
        sqlite3_bind_int64(q, 3, (int64_t)m);
        if (store_fs_exec(fs, q, "folder rename") < 0 || store_fs_mbox_bump(fs, id, m, 0, 0) < 0)
            s = STORE_ERROR;
    }
    return store_fs_finish(fs, s);
}

/* One change: the folder's tombstone and its messages' tombstones share
 * the new modseq (one UPDATE, not one change per message). */
static enum store_status store_fs_folder_delete(struct store *st, const char *user,
                                                const char *name, uint64_t explicit_modseq)
{
    struct store_fs *fs = (struct store_fs *)st;
    if (store_fs_begin(fs) < 0)
        return STORE_ERROR;
    int64_t id;
    struct store_mailbox mb;
    struct store_folder f;
    enum store_status s = store_fs_resolve(fs, user, name, true, &id, &mb, &f);
    if (s == STORE_OK && !store_modseq_allowed(explicit_modseq, mb.state))
        s = STORE_NOTLIVE;
    if (s != STORE_OK)
        return store_fs_finish(fs, s);
    uint64_t modseq = store_modseq_take(&mb.modseq, explicit_modseq);
    sqlite3_stmt *q = store_fs_q(fs, SQL_FOLDER_SUM);
    sqlite3_bind_int64(q, 1, (int64_t)f.id);
    if (store_fs_row(fs, q, "folder sum") <= 0)
        return store_fs_finish(fs, STORE_ERROR);
    int64_t count = sqlite3_column_int64(q, 0);
    int64_t bytes = (int64_t)sqlite3_column_double(q, 1);
    sqlite3_reset(q);
    q = store_fs_q(fs, SQL_FOLDER_DELETE);
    sqlite3_bind_int64(q, 1, (int64_t)f.id);
    sqlite3_bind_int64(q, 2, (int64_t)modseq);
    if (store_fs_exec(fs, q, "folder delete") < 0)
        return store_fs_finish(fs, STORE_ERROR);
    q = store_fs_q(fs, SQL_MSGS_EXPUNGE_FOLDER);
    sqlite3_bind_int64(q, 1, (int64_t)f.id);
    sqlite3_bind_int64(q, 2, (int64_t)modseq);
    if (store_fs_exec(fs, q, "folder expunge") < 0 ||
        store_fs_mbox_bump(fs, id, modseq, -count, -bytes) < 0)
        return store_fs_finish(fs, STORE_ERROR);
    return store_fs_finish(fs, STORE_OK);
}

static enum store_status store_fs_folder_list(struct store *st, const char *user,
                                              struct store_folder **list_r, size_t *n_r)
{
    struct store_fs *fs = (struct store_fs *)st;
    int64_t id;
    struct store_mailbox mb;
    enum store_status s = store_fs_mbox_load(fs, user, &id, &mb);
    if (s != STORE_OK)
        return s;
    sqlite3_stmt *q = store_fs_q(fs, SQL_FOLDER_LIST);
    sqlite3_bind_int64(q, 1, id);
    struct store_folder *list = NULL;
    size_t n = 0, cap = 0;
    int rc;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            list = xrealloc(list, cap * sizeof(*list));
        }
        store_fs_folder_cols(q, 0, &list[n++]);
    }
    sqlite3_reset(q);
    if (rc != SQLITE_DONE) {
        store_fs_sqlerr(fs, "folder list");
        free(list);
        return STORE_ERROR;
    }
    *list_r = list != NULL ? list : xmalloc(1);
    *n_r = n;
    return STORE_OK;
}

static enum store_status store_fs_folder_set_uidnext(struct store *st, const char *user,
                                                     const char *name, uint32_t uidnext,
                                                     uint64_t modseq)
{
    struct store_fs *fs = (struct store_fs *)st;
    if (store_fs_begin(fs) < 0)
        return STORE_ERROR;
    int64_t id;
    struct store_mailbox mb;
    struct store_folder f;
    enum store_status s = store_fs_resolve(fs, user, name, true, &id, &mb, &f);
    if (s == STORE_OK && !store_modseq_allowed(modseq, mb.state))
        s = STORE_NOTLIVE;
    if (s == STORE_OK && (uidnext > f.uidnext || (modseq != 0 && f.modseq != modseq))) {
        uint64_t m = store_modseq_take(&mb.modseq, modseq);
        sqlite3_stmt *q = store_fs_q(fs, SQL_FOLDER_SET_UIDNEXT);
        sqlite3_bind_int64(q, 1, (int64_t)f.id);
        sqlite3_bind_int64(q, 2, uidnext > f.uidnext ? uidnext : f.uidnext);
        sqlite3_bind_int64(q, 3, (int64_t)m);
        if (store_fs_exec(fs, q, "folder uidnext") < 0 || store_fs_mbox_bump(fs, id, m, 0, 0) < 0)
            s = STORE_ERROR;
    }
    return store_fs_finish(fs, s);
}

/* ---- appends (the group commit) ---- */

/* A mailbox or folder touched by the batch, with the changes to write back.
 * id 0 records "looked up, does not exist". */
struct store_fs_bmbox {
    const char *user;
    int64_t id;
    struct store_mailbox info; /* as read, modseq advanced by the batch */
    uint64_t modseq0;
    int64_t dmsgs, dbytes;
    bool stale; /* its fencing check refused: every item is STORE_STALE */
};

struct store_fs_bfolder {
    size_t mbox;
    const char *name;
    struct store_folder f;
    uint64_t uidnext; /* 64-bit: exhaustion of the UID space is visible */
    int64_t dmsgs;
};

struct store_fs_pend {
    uint8_t sha[SHA256_LEN];
    uint8_t guid[STORE_GUID_LEN];
    size_t mbox, folder;
    uint32_t uid;
    uint64_t modseq;
    uint64_t off;
    bool write; /* a new message: body to append, rows to insert */
};

struct store_fs_bctx {
    struct store_fs *fs;
    struct store_batch_item *items;
    struct store_fs_pend *pend;
    struct store_fs_bmbox *mboxes;
    size_t nmboxes;
    struct store_fs_bfolder *folders;
    size_t nfolders;
};

/* Index into c->mboxes for user, loading it on first use; SIZE_MAX on a
 * database error. Searched from the newest: batches are usually runs of
 * the same few mailboxes. */
static size_t store_fs_bmbox_get(struct store_fs_bctx *c, const char *user)
{
    for (size_t i = c->nmboxes; i-- > 0;)
        if (strcmp(c->mboxes[i].user, user) == 0)
            return i;
    struct store_fs_bmbox *m = &c->mboxes[c->nmboxes];
    memset(m, 0, sizeof(*m));
    m->user = user;
    enum store_status s = store_fs_mbox_load_w(c->fs, user, &m->id, &m->info);
    if (s == STORE_ERROR)
        return SIZE_MAX;
    m->stale = s == STORE_STALE;
    if (s == STORE_NOTFOUND)
        m->id = 0;
    m->modseq0 = m->info.modseq;
    return c->nmboxes++;
}

static size_t store_fs_bfolder_get(struct store_fs_bctx *c, size_t mbox, const char *name)
{
    for (size_t i = c->nfolders; i-- > 0;)
        if (c->folders[i].mbox == mbox && strcmp(c->folders[i].name, name) == 0)
            return i;
    struct store_fs_bfolder *f = &c->folders[c->nfolders];
    memset(f, 0, sizeof(*f));
    f->mbox = mbox;
    f->name = name;
    enum store_status s = store_fs_folder_load(c->fs, c->mboxes[mbox].id, name, &f->f);
    if (s == STORE_ERROR)
        return SIZE_MAX;
    if (s == STORE_NOTFOUND)
        f->f.id = 0;
    else
        f->uidnext = f->f.uidnext;
    return c->nfolders++;
}

/* Decides item i against the rows as they are inside the transaction (and
 * the earlier items of the batch). Fills res; sets pend->write for a new
 * message. -1 on a database error. store_mem_append_one() makes the same
 * decisions in the same order. */
static int store_fs_resolve_item(struct store_fs_bctx *c, size_t i)
{
    const struct store_append *a = &c->items[i].a;
    struct store_append_result *res = c->items[i].res;
    struct store_fs_pend *p = &c->pend[i];
    struct store_fs *fs = c->fs;
    memset(res, 0, sizeof(*res));

    size_t mi = store_fs_bmbox_get(c, a->user);
    if (mi == SIZE_MAX)
        return -1;
    struct store_fs_bmbox *mb = &c->mboxes[mi];
    if (mb->id == 0) {
        res->status = STORE_NOTFOUND;
        return 0;
    }
    if (mb->stale) {
        res->status = STORE_STALE;
        return 0;
    }
    /* A retried delivery: first within this batch, then in the table. */
    if (a->delivery_id != NULL) {
        for (size_t j = 0; j < i; j++) {
            const struct store_fs_pend *q = &c->pend[j];
            if (q->write && q->mbox == mi && c->items[j].a.delivery_id != NULL &&
                strcmp(c->items[j].a.delivery_id, a->delivery_id) == 0) {
                *res = *c->items[j].res;
                res->duplicate = true;
                return 0;
            }
        }
        sqlite3_stmt *s = store_fs_q(fs, SQL_DELIVERY_GET);
        sqlite3_bind_int64(s, 1, mb->id);
        sqlite3_bind_text(s, 2, a->delivery_id, -1, SQLITE_STATIC);
        int r = store_fs_row(fs, s, "delivery lookup");
        if (r < 0)
            return -1;
        if (r > 0) {
            res->status = STORE_OK;
            res->duplicate = true;
            /* The id may have been copied here by a move without its
             * message (see store.h): then there is nothing to report. */
            if (sqlite3_column_int(s, 4) != 0) {
                res->uid = (uint32_t)sqlite3_column_int64(s, 0);
                res->uidvalidity = (uint32_t)sqlite3_column_int64(s, 1);
                store_fs_blob(s, 2, res->guid, STORE_GUID_LEN);
                res->modseq = (uint64_t)sqlite3_column_int64(s, 3);
            }
            sqlite3_reset(s);
            return 0;
        }
    }
    if (!store_append_allowed(a, &mb->info)) {
        res->status = STORE_NOTLIVE;
        res->mailbox = mb->info;
        res->mailbox.messages = (uint64_t)((int64_t)mb->info.messages + mb->dmsgs);
        res->mailbox.bytes = (uint64_t)((int64_t)mb->info.bytes + mb->dbytes);
        return 0;
    }
    size_t fi = store_fs_bfolder_get(c, mi, a->folder);
    if (fi == SIZE_MAX)
        return -1;
    struct store_fs_bfolder *f = &c->folders[fi];
    if (f->f.id == 0) {
        res->status = STORE_NOTFOUND;
        return 0;
    }
    uint32_t uid = a->uid;
    if (uid != 0) {
        for (size_t j = 0; j < i; j++) {
            if (c->pend[j].write && c->pend[j].folder == fi && c->pend[j].uid == uid) {
                res->status = STORE_EXISTS;
                return 0;
            }
        }
        sqlite3_stmt *s = store_fs_q(fs, SQL_MSG_EXISTS);
        sqlite3_bind_int64(s, 1, (int64_t)f->f.id);
        sqlite3_bind_int64(s, 2, uid);
        int r = store_fs_row(fs, s, "uid lookup");
        if (r < 0)
            return -1;
        if (r > 0) {
            sqlite3_reset(s);
            res->status = STORE_EXISTS;
            return 0;
        }
    } else {
        if (f->uidnext >= UINT32_MAX) {
            res->status = STORE_INVALID; /* UID space of the folder exhausted */
            return 0;
        }
        uid = (uint32_t)f->uidnext;
    }
    if ((uint64_t)uid + 1 > f->uidnext)
        f->uidnext = (uint64_t)uid + 1;
    f->dmsgs++;
    mb->dmsgs++;
    mb->dbytes += (int64_t)a->len;
    p->mbox = mi;
    p->folder = fi;
    p->uid = uid;
    p->modseq = store_modseq_take(&mb->info.modseq, a->modseq);
    p->write = true;
    res->status = STORE_OK;
    res->uid = uid;
    res->uidvalidity = f->f.uidvalidity;
    memcpy(res->guid, p->guid, STORE_GUID_LEN);
    res->modseq = p->modseq;
    return 0;
}

/* Appends the bodies of the new messages to the segment and makes them
 * durable. -1 (segment abandoned) on failure. */
static int store_fs_write_bodies(struct store_fs_bctx *c, size_t n, size_t nwrite, uint64_t bytes)
{
    struct store_fs *fs = c->fs;
    uint64_t off;
    if (store_fs_seg_prepare(fs, bytes, &off) < 0)
        return -1;
    uint8_t(*hdrs)[STORE_FS_REC_HDR] = xcalloc(nwrite, STORE_FS_REC_HDR);
    struct iovec *iov = xcalloc(2 * nwrite, sizeof(*iov));
    size_t k = 0;
    uint64_t pos = off;
    for (size_t i = 0; i < n; i++) {
        struct store_fs_pend *p = &c->pend[i];
        if (!p->write)
            continue;
        const struct store_append *a = &c->items[i].a;
        store_fs_rec_header(hdrs[k], a->len, p->guid, p->sha);
        iov[2 * k].iov_base = hdrs[k];
        iov[2 * k].iov_len = STORE_FS_REC_HDR;
        iov[2 * k + 1].iov_base = (void *)a->data;
        iov[2 * k + 1].iov_len = a->len;
        p->off = pos + STORE_FS_REC_HDR;
        pos += STORE_FS_REC_HDR + a->len;
        k++;
    }
    int ret = 0;
    if (store_fs_pwritev_full(fs->seg_fd, iov, 2 * nwrite, off) < 0) {
        log_error("store", "%s: write segment %u: %s", fs->base.name, fs->seg, strerror(errno));
        ret = -1;
    } else if (util_fdatasync(fs->seg_fd, "store: bodies before metadata") < 0) {
        /* Bodies must be durable before the COMMIT that makes rows point
         * at them; one fdatasync covers the whole batch. */
        ret = -1;
    } else if (fs->seg_dir_dirty) {
        /* A new segment file's directory entry must be durable too, or a
         * power loss could drop the whole file under committed rows. */
        if (util_fsync_dir(fs->segdir, "store: new segment file") < 0)
            ret = -1;
        else
            fs->seg_dir_dirty = false;
    }
    if (ret < 0)
        fs->seg_broken = true;
    free(iov);
    free(hdrs);
    return ret;
}

static int store_fs_insert_rows(struct store_fs_bctx *c, size_t n, int64_t now)
{
    struct store_fs *fs = c->fs;
    for (size_t i = 0; i < n; i++) {
        const struct store_fs_pend *p = &c->pend[i];
        if (!p->write)
            continue;
        const struct store_append *a = &c->items[i].a;
        const struct store_fs_bfolder *f = &c->folders[p->folder];
        int64_t mbox_id = c->mboxes[p->mbox].id;
        sqlite3_stmt *s = store_fs_q(fs, SQL_MSG_INSERT);
        sqlite3_bind_int64(s, 1, (int64_t)f->f.id);
        sqlite3_bind_int64(s, 2, mbox_id);
        sqlite3_bind_int64(s, 3, p->uid);
        sqlite3_bind_blob(s, 4, p->guid, STORE_GUID_LEN, SQLITE_STATIC);
        sqlite3_bind_int64(s, 5, a->flags);
        sqlite3_bind_text(s, 6, a->keywords, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 7, a->internal_date != 0 ? a->internal_date : now);
        sqlite3_bind_int64(s, 8, (int64_t)a->len);
        sqlite3_bind_blob(s, 9, p->sha, SHA256_LEN, SQLITE_STATIC);
        sqlite3_bind_int64(s, 10, (int64_t)p->modseq);
        sqlite3_bind_int64(s, 11, fs->seg);
        sqlite3_bind_int64(s, 12, (int64_t)p->off);
        if (store_fs_exec(fs, s, "message insert") < 0)
            return -1;
        if (a->delivery_id != NULL) {
            s = store_fs_q(fs, SQL_DELIVERY_INSERT);
            sqlite3_bind_int64(s, 1, mbox_id);
            sqlite3_bind_text(s, 2, a->delivery_id, -1, SQLITE_STATIC);
            sqlite3_bind_int64(s, 3, (int64_t)f->f.id);
            sqlite3_bind_int64(s, 4, p->uid);
            sqlite3_bind_int64(s, 5, now);
            sqlite3_bind_text(s, 6, "", -1, SQLITE_STATIC);
            if (store_fs_exec(fs, s, "delivery insert") < 0)
                return -1;
        }
    }
    for (size_t i = 0; i < c->nfolders; i++) {
        const struct store_fs_bfolder *f = &c->folders[i];
        if (f->f.id == 0 || f->dmsgs == 0)
            continue;
        sqlite3_stmt *s = store_fs_q(fs, SQL_FOLDER_APPENDED);
        sqlite3_bind_int64(s, 1, (int64_t)f->f.id);
        sqlite3_bind_int64(s, 2, (int64_t)f->uidnext);
        sqlite3_bind_int64(s, 3, f->dmsgs);
        if (store_fs_exec(fs, s, "folder update") < 0)
            return -1;
    }
    for (size_t i = 0; i < c->nmboxes; i++) {
        const struct store_fs_bmbox *m = &c->mboxes[i];
        /* Explicit modseqs (store.h) may leave the counter where it was
         * while messages were added. */
        if (m->id != 0 && (m->info.modseq != m->modseq0 || m->dmsgs != 0) &&
            store_fs_mbox_bump(fs, m->id, m->info.modseq, m->dmsgs, m->dbytes) < 0)
            return -1;
    }
    return 0;
}

static int store_fs_batch_commit(struct store *st, struct store_batch_item *items, size_t n,
                                 const char **error_r)
{
    struct store_fs *fs = (struct store_fs *)st;
    if (n == 0)
        return 0;
    struct store_fs_bctx c = {
        .fs = fs,
        .items = items,
        .pend = xcalloc(n, sizeof(*c.pend)),
        .mboxes = xcalloc(n, sizeof(*c.mboxes)),
        .folders = xcalloc(n, sizeof(*c.folders)),
    };
    /* CPU work before taking the write lock: hashes and GUIDs. */
    uint8_t *rnd = xcalloc(n, STORE_GUID_LEN);
    rand_bytes(rnd, n * STORE_GUID_LEN);
    for (size_t i = 0; i < n; i++) {
        const struct store_append *a = &items[i].a;
        sha256_buf(a->data, a->len, c.pend[i].sha);
        memcpy(c.pend[i].guid, a->guid != NULL ? a->guid : rnd + i * STORE_GUID_LEN,
               STORE_GUID_LEN);
    }
    free(rnd);

    int ret = -1;
    const char *err = store_fs_dberr;
    if (store_fs_begin(fs) < 0)
        goto out;
    size_t nwrite = 0;
    uint64_t bytes = 0;
    for (size_t i = 0; i < n; i++) {
        if (store_fs_resolve_item(&c, i) < 0)
            goto out;
        if (c.pend[i].write) {
            nwrite++;
            bytes += STORE_FS_REC_HDR + items[i].a.len;
        }
    }
    if (nwrite > 0) {
        if (store_fs_write_bodies(&c, n, nwrite, bytes) < 0) {
            err = store_fs_ioerr;
            goto out;
        }
        /* Bodies are durable, no row points at them yet: a crash here must
         * leave nothing visible. */
        util_fault_point("store.bodies_synced");
        if (store_fs_insert_rows(&c, n, time_now_ms() / 1000) < 0)
            goto out;
    }
    /* COMMIT fsyncs the WAL (synchronous=FULL): after it, the batch is
     * durable and may be acknowledged. */
    if (store_fs_exec(fs, store_fs_q(fs, SQL_COMMIT), "batch commit") < 0)
        goto out;
    ret = 0;
out:
    if (ret < 0) {
        store_fs_rollback(fs);
        *error_r = err;
    }
    free(c.pend);
    free(c.mboxes);
    free(c.folders);
    return ret;
}

/* ---- messages ---- */

static enum store_status store_fs_msg_set_flags(struct store *st, const char *user,
                                                const char *folder, uint32_t uid,
                                                enum store_flag_mode mode, uint32_t flags,
                                                const char *keywords, uint64_t unchanged_since,
                                                uint64_t explicit_modseq, uint64_t *modseq_r)
{
    struct store_fs *fs = (struct store_fs *)st;
    if (store_fs_begin(fs) < 0)
        return STORE_ERROR;
    int64_t id;
    struct store_mailbox mb;
    struct store_folder f;
    struct store_fs_msgrow m;
    enum store_status s = store_fs_resolve(fs, user, folder, true, &id, &mb, &f);
    if (s == STORE_OK && !store_modseq_allowed(explicit_modseq, mb.state))
        s = STORE_NOTLIVE;
    if (s == STORE_OK)
        s = store_fs_msg_load(fs, f.id, uid, &m);
    if (s != STORE_OK)
        return store_fs_finish(fs, s);
    if (unchanged_since != 0 && m.modseq > unchanged_since)
        return store_fs_finish(fs, STORE_CONFLICT);
    uint32_t nflags = store_flags_apply(m.flags, mode, flags);
    char kw[STORE_KEYWORDS_MAX + 1];
    if (keywords == NULL)
        str_copy(kw, m.keywords, sizeof(kw));
    else if (store_keywords_apply(m.keywords, mode, keywords, kw) < 0)
        return store_fs_finish(fs, STORE_INVALID);
    uint64_t modseq = m.modseq;
    if (nflags != m.flags || strcmp(kw, m.keywords) != 0 ||
        (explicit_modseq != 0 && m.modseq != explicit_modseq)) {
        modseq = store_modseq_take(&mb.modseq, explicit_modseq);
        sqlite3_stmt *q = store_fs_q(fs, SQL_MSG_SET_FLAGS);
        sqlite3_bind_int64(q, 1, m.id);
        sqlite3_bind_int64(q, 2, nflags);
        sqlite3_bind_text(q, 3, kw, -1, SQLITE_STATIC);
        sqlite3_bind_int64(q, 4, (int64_t)modseq);
        if (store_fs_exec(fs, q, "message flags") < 0 ||
            store_fs_mbox_bump(fs, id, modseq, 0, 0) < 0)
            return store_fs_finish(fs, STORE_ERROR);
    }
    s = store_fs_finish(fs, STORE_OK);
    if (s == STORE_OK && modseq_r != NULL)
        *modseq_r = modseq;
    return s;
}

/* A tombstone re-stamped with an explicit modseq (store_msg_expunge_at):
 * inside the transaction; STORE_NOTFOUND if uid is no tombstone either. */
static enum store_status store_fs_tomb_stamp(struct store_fs *fs, int64_t mbox_id,
                                             struct store_mailbox *mb, uint64_t folder_id,
                                             uint32_t uid, uint64_t modseq)
{
    sqlite3_stmt *q = store_fs_q(fs, SQL_MSG_TOMB);
    sqlite3_bind_int64(q, 1, (int64_t)folder_id);
    sqlite3_bind_int64(q, 2, uid);
    int r = store_fs_row(fs, q, "tombstone lookup");
    if (r <= 0)
        return r == 0 ? STORE_NOTFOUND : STORE_ERROR;
    int64_t msg_id = sqlite3_column_int64(q, 0);
    uint64_t cur = (uint64_t)sqlite3_column_int64(q, 1);
    sqlite3_reset(q);
    if (cur == modseq)
        return STORE_OK;
    store_modseq_take(&mb->modseq, modseq);
    q = store_fs_q(fs, SQL_MSG_STAMP);
    sqlite3_bind_int64(q, 1, msg_id);
    sqlite3_bind_int64(q, 2, (int64_t)modseq);
    if (store_fs_exec(fs, q, "tombstone stamp") < 0 ||
        store_fs_mbox_bump(fs, mbox_id, modseq, 0, 0) < 0)
        return STORE_ERROR;
    return STORE_OK;
}

static enum store_status store_fs_msg_expunge(struct store *st, const char *user,
                                              const char *folder, uint32_t uid,
                                              uint64_t explicit_modseq)
{
    struct store_fs *fs = (struct store_fs *)st;
    if (store_fs_begin(fs) < 0)
        return STORE_ERROR;
    int64_t id;
    struct store_mailbox mb;
    struct store_folder f = {.id = 0};
    struct store_fs_msgrow m;
    enum store_status s = store_fs_resolve(fs, user, folder, true, &id, &mb, &f);
    if (s == STORE_OK && !store_modseq_allowed(explicit_modseq, mb.state))
        s = STORE_NOTLIVE;
    if (s == STORE_OK)
        s = store_fs_msg_load(fs, f.id, uid, &m);
    if (s == STORE_NOTFOUND && explicit_modseq != 0 && f.id != 0)
        return store_fs_finish(fs, store_fs_tomb_stamp(fs, id, &mb, f.id, uid, explicit_modseq));
    if (s != STORE_OK)
        return store_fs_finish(fs, s);
    uint64_t modseq = store_modseq_take(&mb.modseq, explicit_modseq);
    sqlite3_stmt *q = store_fs_q(fs, SQL_MSG_EXPUNGE);
    sqlite3_bind_int64(q, 1, m.id);
    sqlite3_bind_int64(q, 2, (int64_t)modseq);
    if (store_fs_exec(fs, q, "message expunge") < 0)
        return store_fs_finish(fs, STORE_ERROR);
    q = store_fs_q(fs, SQL_FOLDER_ADD_MSGS);
    sqlite3_bind_int64(q, 1, (int64_t)f.id);
    sqlite3_bind_int64(q, 2, -1);
    if (store_fs_exec(fs, q, "folder update") < 0 ||
        store_fs_mbox_bump(fs, id, modseq, -1, -(int64_t)m.size) < 0)
        return store_fs_finish(fs, STORE_ERROR);
    return store_fs_finish(fs, STORE_OK);
}

/* Many expunges in one transaction: one commit, one fsync (store.h). */
static enum store_status store_fs_msg_expunge_many(struct store *st, const char *user,
                                                   const char *folder, const uint32_t *uids,
                                                   size_t n, size_t *expunged_r)
{
    struct store_fs *fs = (struct store_fs *)st;
    if (store_fs_begin(fs) < 0)
        return STORE_ERROR;
    int64_t id;
    struct store_mailbox mb;
    struct store_folder f = {.id = 0};
    enum store_status s = store_fs_resolve(fs, user, folder, true, &id, &mb, &f);
    if (s != STORE_OK)
        return store_fs_finish(fs, s);
    size_t done = 0;
    uint64_t bytes = 0, modseq = 0;
    for (size_t i = 0; i < n; i++) {
        struct store_fs_msgrow m;
        s = store_fs_msg_load(fs, f.id, uids[i], &m);
        if (s == STORE_NOTFOUND)
            continue; /* gone already */
        if (s != STORE_OK)
            return store_fs_finish(fs, s);
        modseq = store_modseq_take(&mb.modseq, 0);
        sqlite3_stmt *q = store_fs_q(fs, SQL_MSG_EXPUNGE);
        sqlite3_bind_int64(q, 1, m.id);
        sqlite3_bind_int64(q, 2, (int64_t)modseq);
        if (store_fs_exec(fs, q, "message expunge") < 0)
            return store_fs_finish(fs, STORE_ERROR);
        done++;
        bytes += m.size;
    }
    if (done > 0) {
        sqlite3_stmt *q = store_fs_q(fs, SQL_FOLDER_ADD_MSGS);
        sqlite3_bind_int64(q, 1, (int64_t)f.id);
        sqlite3_bind_int64(q, 2, -(int64_t)done);
        if (store_fs_exec(fs, q, "folder update") < 0 ||
            store_fs_mbox_bump(fs, id, modseq, -(int64_t)done, -(int64_t)bytes) < 0)
            return store_fs_finish(fs, STORE_ERROR);
    }
    /* Durability: the transaction's commit is the one sync of the batch. */
    s = store_fs_finish(fs, STORE_OK);
    if (s == STORE_OK && expunged_r != NULL)
        *expunged_r = done;
    return s;
}

static enum store_status store_fs_msg_tombstone(struct store *st, const char *user,
                                                const char *folder, const struct store_msg *t)
{
    struct store_fs *fs = (struct store_fs *)st;
    if (store_fs_begin(fs) < 0)
        return STORE_ERROR;
    int64_t id;
    struct store_mailbox mb;
    struct store_folder f;
    enum store_status s = store_fs_resolve(fs, user, folder, true, &id, &mb, &f);
    if (s == STORE_OK && !store_modseq_allowed(t->modseq, mb.state))
        s = STORE_NOTLIVE;
    if (s != STORE_OK)
        return store_fs_finish(fs, s);
    sqlite3_stmt *q = store_fs_q(fs, SQL_MSG_EXISTS);
    sqlite3_bind_int64(q, 1, (int64_t)f.id);
    sqlite3_bind_int64(q, 2, t->uid);
    int r = store_fs_row(fs, q, "uid lookup");
    if (r != 0) {
        if (r > 0)
            sqlite3_reset(q);
        return store_fs_finish(fs, r > 0 ? STORE_EXISTS : STORE_ERROR);
    }
    uint64_t modseq = store_modseq_take(&mb.modseq, t->modseq);
    q = store_fs_q(fs, SQL_MSG_INSERT_TOMB);
    sqlite3_bind_int64(q, 1, (int64_t)f.id);
    sqlite3_bind_int64(q, 2, id);
    sqlite3_bind_int64(q, 3, t->uid);
    sqlite3_bind_blob(q, 4, t->guid, STORE_GUID_LEN, SQLITE_STATIC);
    sqlite3_bind_int64(q, 5, t->flags);
    sqlite3_bind_text(q, 6, t->keywords, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 7, t->internal_date);
    sqlite3_bind_int64(q, 8, (int64_t)t->size);
    sqlite3_bind_blob(q, 9, t->sha256, SHA256_LEN, SQLITE_STATIC);
    sqlite3_bind_int64(q, 10, (int64_t)modseq);
    if (store_fs_exec(fs, q, "tombstone insert") < 0)
        return store_fs_finish(fs, STORE_ERROR);
    if ((uint64_t)t->uid + 1 > f.uidnext) {
        q = store_fs_q(fs, SQL_FOLDER_APPENDED);
        sqlite3_bind_int64(q, 1, (int64_t)f.id);
        sqlite3_bind_int64(q, 2, (int64_t)t->uid + 1);
        sqlite3_bind_int64(q, 3, 0);
        if (store_fs_exec(fs, q, "folder update") < 0)
            return store_fs_finish(fs, STORE_ERROR);
    }
    if (store_fs_mbox_bump(fs, id, modseq, 0, 0) < 0)
        return store_fs_finish(fs, STORE_ERROR);
    return store_fs_finish(fs, STORE_OK);
}

/* The cached statement i, or a fresh one if it is still stepping (a
 * callback of an iteration re-entered the same kind of iteration). */
static sqlite3_stmt *store_fs_iter_stmt(struct store_fs *fs, enum store_fs_sql i, bool *temp_r)
{
    *temp_r = false;
    if (!sqlite3_stmt_busy(fs->stmts[i]))
        return store_fs_q(fs, i);
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(fs->db, store_fs_sql_text[i], -1, &s, NULL) != SQLITE_OK) {
        store_fs_sqlerr(fs, "prepare");
        return NULL;
    }
    *temp_r = true;
    return s;
}

static void store_fs_iter_done(sqlite3_stmt *s, bool temp)
{
    if (temp)
        sqlite3_finalize(s);
    else
        sqlite3_reset(s);
}

static int store_fs_msg_iter(struct store *st, const char *user, const char *folder,
                             store_msg_cb *cb, void *ctx, const char **error_r)
{
    struct store_fs *fs = (struct store_fs *)st;
    int64_t id;
    struct store_mailbox mb;
    struct store_folder f;
    enum store_status s = store_fs_resolve(fs, user, folder, false, &id, &mb, &f);
    if (s != STORE_OK) {
        *error_r = s == STORE_NOTFOUND ? "no such mailbox or folder" : store_fs_dberr;
        return -1;
    }
    bool temp;
    sqlite3_stmt *q = store_fs_iter_stmt(fs, SQL_MSG_ITER, &temp);
    if (q == NULL) {
        *error_r = store_fs_dberr;
        return -1;
    }
    sqlite3_bind_int64(q, 1, (int64_t)f.id);
    int rc, r = 0;
    while (r == 0 && (rc = sqlite3_step(q)) == SQLITE_ROW) {
        struct store_msg m;
        store_fs_msg_cols(q, f.id, &m);
        r = cb(ctx, &m);
    }
    if (r == 0 && rc != SQLITE_DONE) {
        store_fs_sqlerr(fs, "message iteration");
        *error_r = store_fs_dberr;
        r = -1;
    }
    store_fs_iter_done(q, temp);
    return r;
}

/* Makes room for n more bytes in out, the way buf_append() would, so the
 * body can be read straight into it. -1 if out->max forbids. */
static int store_fs_buf_room(struct buf *out, uint64_t n)
{
    if (n > SIZE_MAX - out->len - 1 || (out->max != 0 && out->len + n > out->max))
        return -1;
    size_t need = out->len + (size_t)n + 1;
    if (need > out->cap) {
        size_t cap = out->cap > SIZE_MAX / 2 ? need : out->cap * 2;
        if (cap < need)
            cap = need;
        out->data = xrealloc(out->data, cap);
        out->cap = cap;
    }
    return 0;
}

/* Finds message uid of user's folder and checks its record header in its
 * segment: *m_r its row, *fd_r the segment to read the body from. */
static enum store_status store_fs_msg_open(struct store *st, const char *user, const char *folder,
                                           uint32_t uid, struct store_fs_msgrow *m_r, int *fd_r)
{
    struct store_fs *fs = (struct store_fs *)st;
    int64_t id;
    struct store_mailbox mb;
    struct store_folder f;
    struct store_fs_msgrow m;
    enum store_status s = store_fs_resolve(fs, user, folder, false, &id, &mb, &f);
    if (s == STORE_OK)
        s = store_fs_msg_load(fs, f.id, uid, &m);
    if (s != STORE_OK)
        return s;
    if (m.off < STORE_FS_REC_HDR) {
        log_error("store", "%s: %s/%s uid %u: bad body offset %llu", st->name, user, folder, uid,
                  (unsigned long long)m.off);
        return STORE_ERROR;
    }
    int fd = store_fs_seg_rfd(fs, m.seg);
    if (fd < 0)
        return STORE_ERROR;
    uint8_t hdr[STORE_FS_REC_HDR];
    if (pread_full(fd, hdr, sizeof(hdr), (off_t)(m.off - STORE_FS_REC_HDR)) < 0) {
        log_error("store", "%s: read segment %u at %llu: %s", st->name, m.seg,
                  (unsigned long long)m.off, strerror(errno));
        return STORE_ERROR;
    }
    if (memcmp(hdr, STORE_FS_REC_MAGIC, 8) != 0 || store_fs_get_le64(hdr + 8) != m.size ||
        memcmp(hdr + 16, m.guid, STORE_GUID_LEN) != 0 ||
        memcmp(hdr + 32, m.sha256, SHA256_LEN) != 0) {
        log_error("store", "%s: corrupt record header in segment %u at %llu (%s uid %u)", st->name,
                  m.seg, (unsigned long long)m.off, user, uid);
        return STORE_ERROR;
    }
    *m_r = m;
    *fd_r = fd;
    return STORE_OK;
}

static enum store_status store_fs_msg_read(struct store *st, const char *user, const char *folder,
                                           uint32_t uid, struct buf *out)
{
    struct store_fs_msgrow m;
    int fd;
    enum store_status s = store_fs_msg_open(st, user, folder, uid, &m, &fd);
    if (s != STORE_OK)
        return s;
    if (store_fs_buf_room(out, m.size) < 0) {
        log_error("store", "%s: message of %llu bytes exceeds the read buffer limit", st->name,
                  (unsigned long long)m.size);
        return STORE_ERROR;
    }
    char *dst = out->data + out->len;
    if (pread_full(fd, dst, (size_t)m.size, (off_t)m.off) < 0) {
        log_error("store", "%s: read segment %u at %llu: %s", st->name, m.seg,
                  (unsigned long long)m.off, strerror(errno));
        out->data[out->len] = '\0';
        return STORE_ERROR;
    }
    /* Verify the bytes against the hash recorded at delivery: a reader must
     * never be handed silently corrupted mail. */
    uint8_t sha[SHA256_LEN];
    sha256_buf(dst, (size_t)m.size, sha);
    if (memcmp(sha, m.sha256, SHA256_LEN) != 0) {
        log_error("store", "%s: corrupt body in segment %u at %llu (%s uid %u): sha256 mismatch",
                  st->name, m.seg, (unsigned long long)m.off, user, uid);
        out->data[out->len] = '\0';
        return STORE_ERROR;
    }
    out->len += (size_t)m.size;
    out->data[out->len] = '\0';
    return STORE_OK;
}

/* Only the header: the record header checked, then the body read in
 * growing pieces until its empty line (store.h). */
static enum store_status store_fs_msg_read_header(struct store *st, const char *user,
                                                  const char *folder, uint32_t uid, struct buf *out)
{
    struct store_fs_msgrow m;
    int fd;
    enum store_status s = store_fs_msg_open(st, user, folder, uid, &m, &fd);
    if (s != STORE_OK)
        return s;
    size_t start = out->len, have = 0, want = 8192, hl = 0;
    for (;;) {
        if (want > m.size)
            want = (size_t)m.size;
        if (store_fs_buf_room(out, want) < 0) { /* out->len is still start */
            log_error("store", "%s: message header over the read buffer limit", st->name);
            out->len = start;
            return STORE_ERROR;
        }
        if (pread_full(fd, out->data + start + have, want - have, (off_t)(m.off + have)) < 0) {
            log_error("store", "%s: read segment %u at %llu: %s", st->name, m.seg,
                      (unsigned long long)m.off, strerror(errno));
            out->len = start;
            out->data[start] = '\0';
            return STORE_ERROR;
        }
        /* Each look starts over: the pieces double, so that costs at most
         * twice the octets read. */
        have = want;
        if (store_header_end(out->data + start, have, &hl))
            break;
        if (have == m.size) {
            hl = have;
            break;
        }
        want = have * 2;
    }
    out->len = start + hl;
    out->data[out->len] = '\0';
    return STORE_OK;
}

/* ---- change log ---- */

static int store_fs_changes(struct store *st, const char *user, uint64_t since,
                            const struct store_change_cb *cb, const char **error_r)
{
    struct store_fs *fs = (struct store_fs *)st;
    int64_t id;
    struct store_mailbox mb;
    enum store_status s = store_fs_mbox_load(fs, user, &id, &mb);
    if (s != STORE_OK) {
        *error_r = s == STORE_NOTFOUND ? "no such mailbox" : store_fs_dberr;
        return -1;
    }
    static const enum store_fs_sql which[] = {SQL_FOLDER_CHANGES, SQL_MSG_CHANGES};
    int r = 0;
    for (size_t w = 0; r == 0 && w < ARRAY_SIZE(which); w++) {
        bool temp;
        sqlite3_stmt *q = store_fs_iter_stmt(fs, which[w], &temp);
        if (q == NULL) {
            *error_r = store_fs_dberr;
            return -1;
        }
        sqlite3_bind_int64(q, 1, id);
        sqlite3_bind_int64(q, 2, (int64_t)since);
        int rc;
        while (r == 0 && (rc = sqlite3_step(q)) == SQLITE_ROW) {
            struct store_folder f;
            if (which[w] == SQL_FOLDER_CHANGES) {
                store_fs_folder_cols(q, 0, &f);
                if (cb->folder != NULL)
                    r = cb->folder(cb->ctx, &f);
            } else {
                struct store_msg m;
                store_fs_folder_cols(q, 9, &f);
                store_fs_msg_cols(q, f.id, &m);
                if (cb->msg != NULL)
                    r = cb->msg(cb->ctx, &f, &m);
            }
        }
        if (r == 0 && rc != SQLITE_DONE) {
            store_fs_sqlerr(fs, "changes");
            *error_r = store_fs_dberr;
            r = -1;
        }
        store_fs_iter_done(q, temp);
    }
    return r;
}

/* ---- delivery ids ---- */

static int store_fs_delivery_iter(struct store *st, const char *user, const char *after,
                                  uint64_t since, uint64_t upto,
                                  int (*cb)(void *ctx, const char *id, const char *folder,
                                            uint32_t uid),
                                  void *ctx, const char **error_r)
{
    struct store_fs *fs = (struct store_fs *)st;
    int64_t id;
    struct store_mailbox mb;
    enum store_status s = store_fs_mbox_load(fs, user, &id, &mb);
    if (s != STORE_OK) {
        *error_r = s == STORE_NOTFOUND ? "no such mailbox" : store_fs_dberr;
        return -1;
    }
    bool temp;
    sqlite3_stmt *q = store_fs_iter_stmt(fs, SQL_DELIVERY_ITER, &temp);
    if (q == NULL) {
        *error_r = store_fs_dberr;
        return -1;
    }
    sqlite3_bind_int64(q, 1, id);
    sqlite3_bind_text(q, 2, after, -1, SQLITE_STATIC);
    /* modseqs are stored as SQLite's signed integers. */
    sqlite3_bind_int64(q, 3, since > INT64_MAX ? INT64_MAX : (int64_t)since);
    sqlite3_bind_int64(q, 4, upto > INT64_MAX ? INT64_MAX : (int64_t)upto);
    int rc, r = 0;
    while (r == 0 && (rc = sqlite3_step(q)) == SQLITE_ROW)
        r = cb(ctx, store_fs_text(q, 0), store_fs_text(q, 1), (uint32_t)sqlite3_column_int64(q, 2));
    if (r == 0 && rc != SQLITE_DONE) {
        store_fs_sqlerr(fs, "delivery iteration");
        *error_r = store_fs_dberr;
        r = -1;
    }
    store_fs_iter_done(q, temp);
    return r;
}

/* Records one delivery id inside the caller's write transaction on a
 * mailbox that may be changed: STORE_OK, STORE_EXISTS or STORE_ERROR.
 * store_mem_delivery_add() makes the same decisions in the same order. */
static enum store_status store_fs_delivery_put(struct store_fs *fs, int64_t id, const char *did,
                                               const char *folder, uint32_t uid)
{
    sqlite3_stmt *q = store_fs_q(fs, SQL_DELIVERY_GET);
    sqlite3_bind_int64(q, 1, id);
    sqlite3_bind_text(q, 2, did, -1, SQLITE_STATIC);
    int r = store_fs_row(fs, q, "delivery lookup");
    if (r > 0)
        sqlite3_reset(q);
    enum store_status s = r < 0 ? STORE_ERROR : r > 0 ? STORE_EXISTS : STORE_OK;
    /* Linked to the message row if there is one here (tombstones included),
     * else kept with folder_id 0 and the folder name (see store.h). */
    int64_t folder_id = 0;
    if (s == STORE_OK) {
        struct store_folder f;
        enum store_status fst = store_fs_folder_load(fs, id, folder, &f);
        if (fst == STORE_OK) {
            q = store_fs_q(fs, SQL_MSG_EXISTS);
            sqlite3_bind_int64(q, 1, (int64_t)f.id);
            sqlite3_bind_int64(q, 2, uid);
            r = store_fs_row(fs, q, "uid lookup");
            if (r > 0) {
                sqlite3_reset(q);
                folder_id = (int64_t)f.id;
            }
            if (r < 0)
                s = STORE_ERROR;
        } else if (fst != STORE_NOTFOUND) {
            s = fst;
        }
    }
    if (s == STORE_OK) {
        q = store_fs_q(fs, SQL_DELIVERY_INSERT);
        sqlite3_bind_int64(q, 1, id);
        sqlite3_bind_text(q, 2, did, -1, SQLITE_STATIC);
        sqlite3_bind_int64(q, 3, folder_id);
        sqlite3_bind_int64(q, 4, uid);
        sqlite3_bind_int64(q, 5, time_now_ms() / 1000);
        sqlite3_bind_text(q, 6, folder_id != 0 ? "" : folder, -1, SQLITE_STATIC);
        if (store_fs_exec(fs, q, "delivery insert") < 0)
            s = STORE_ERROR;
    }
    return s;
}

static enum store_status store_fs_delivery_add(struct store *st, const char *user, const char *did,
                                               const char *folder, uint32_t uid)
{
    struct store_fs *fs = (struct store_fs *)st;
    if (store_fs_begin(fs) < 0)
        return STORE_ERROR;
    int64_t id;
    struct store_mailbox mb;
    struct store_folder f;
    enum store_status s = store_fs_resolve(fs, user, NULL, true, &id, &mb, &f);
    if (s == STORE_OK)
        s = store_fs_delivery_put(fs, id, did, folder, uid);
    return store_fs_finish(fs, s);
}

static int store_fs_delivery_add_many(struct store *st, const char *user,
                                      const struct store_delivery *recs, size_t n,
                                      enum store_status *status_out)
{
    struct store_fs *fs = (struct store_fs *)st;
    for (size_t i = 0; i < n; i++)
        status_out[i] = STORE_ERROR;
    if (store_fs_begin(fs) < 0)
        return -1;
    int64_t id;
    struct store_mailbox mb;
    struct store_folder f;
    enum store_status s = store_fs_resolve(fs, user, NULL, true, &id, &mb, &f);
    if (s != STORE_OK) {
        /* Every item gets the mailbox's answer; nothing was written. */
        store_fs_rollback(fs);
        for (size_t i = 0; i < n; i++)
            status_out[i] = s;
        return s == STORE_ERROR ? -1 : 0;
    }
    for (size_t i = 0; i < n; i++) {
        status_out[i] = store_fs_delivery_put(fs, id, recs[i].id, recs[i].folder, recs[i].uid);
        if (status_out[i] == STORE_ERROR) {
            store_fs_rollback(fs);
            for (size_t j = 0; j < n; j++)
                status_out[j] = STORE_ERROR;
            return -1;
        }
    }
    /* One commit (one fsync of the WAL) for all of them; a batch of ids
     * that were all recorded already writes nothing. */
    if (store_fs_finish(fs, STORE_OK) != STORE_OK) {
        for (size_t i = 0; i < n; i++)
            status_out[i] = STORE_ERROR;
        return -1;
    }
    return 0;
}

static const struct store_ops store_fs_ops = {
    .close = store_fs_close,
    .mailbox_create = store_fs_mailbox_create,
    .mailbox_get = store_fs_mailbox_get,
    .mailbox_set_state = store_fs_mailbox_set_state,
    .mailbox_raise_modseq = store_fs_mailbox_raise_modseq,
    .mailbox_purge = store_fs_mailbox_purge,
    .mailbox_list = store_fs_mailbox_list,
    .mailbox_token = store_fs_mailbox_token,
    .folder_create = store_fs_folder_create,
    .folder_get = store_fs_folder_get,
    .folder_rename = store_fs_folder_rename,
    .folder_delete = store_fs_folder_delete,
    .folder_list = store_fs_folder_list,
    .folder_set_uidnext = store_fs_folder_set_uidnext,
    .batch_commit = store_fs_batch_commit,
    .msg_set_flags = store_fs_msg_set_flags,
    .msg_expunge = store_fs_msg_expunge,
    .msg_expunge_many = store_fs_msg_expunge_many,
    .msg_tombstone = store_fs_msg_tombstone,
    .msg_iter = store_fs_msg_iter,
    .msg_read = store_fs_msg_read,
    .msg_read_header = store_fs_msg_read_header,
    .changes = store_fs_changes,
    .delivery_iter = store_fs_delivery_iter,
    .delivery_add = store_fs_delivery_add,
    .delivery_add_many = store_fs_delivery_add_many,
};
