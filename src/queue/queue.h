/*
 * queue — the mta's durable message queue: DATA/queue/queue.db, SQLite in
 * WAL mode. Exactly one process (the mta role, holding DATA/queue/lock)
 * writes it; the CLI reads it (and may flush or bounce by request).
 *
 * A queue entry is a message (sender, body, arrival, expiry, SHA-256 of the
 * body) and its recipients, each with its own durable status:
 *
 *     pending ──(store acknowledged)──────────────────▶ delivered
 *        │  ╰─(4xx: attempts+1, next_try later;  "move in progress":
 *        │     parked, short backoff) ─╮
 *        │◀────────────────────────────╯
 *        ╰──(5xx, or lifetime over)──▶ failed (+ DSN queued in the same
 *                                              transaction, unless the
 *                                              sender is <>)
 *
 * Invariants:
 *  1. queue_insert() returns only after its transaction committed with
 *     synchronous=FULL: the message and every recipient's status are on
 *     stable storage. Many messages share one commit (the caller batches).
 *  2. A message row is deleted only in the transaction that makes its last
 *     recipient final (delivered, or failed with its DSN inserted).
 *  3. Status updates (queue_update) commit without waiting for fsync
 *     (synchronous=NORMAL on that path): losing one to a power failure only
 *     repeats a delivery, which the store's delivery ids make harmless, or
 *     repeats a failure and its DSN in one piece.
 *  4. Entries are self-validating: queue_load() checks the body's SHA-256
 *     and the recipient count recorded at insert; a damaged entry is
 *     reported (QUEUE_DAMAGED) and queue_quarantine() moves it aside, where
 *     `tern queue` shows it. Nothing is ever dropped silently.
 *
 * Threading: a struct queue is used by one thread at a time; open one per
 * thread (SQLite serializes the writers).
 */
#ifndef TERN_QUEUE_H
#define TERN_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mail/mail.h"
#include "util/util.h"

#define QUEUE_ID_LEN    16  /* hex characters */
#define QUEUE_REPLY_MAX 255 /* last reply text kept per recipient */

enum queue_status {
    QUEUE_OK = 0,
    QUEUE_NOTFOUND,
    QUEUE_DAMAGED, /* self-validation failed: quarantine it */
    QUEUE_ERROR,   /* database trouble (logged); temporary */
};

enum queue_rcpt_state { QUEUE_PENDING = 0, QUEUE_DELIVERED, QUEUE_FAILED };
const char *queue_rcpt_state_str(enum queue_rcpt_state s);

enum queue_rcpt_kind { QUEUE_RCPT_PRIMARY = 0, QUEUE_RCPT_ALTERNATE };

struct queue_rcpt {
    unsigned idx;                 /* position in the entry, from 0 */
    char addr[MAIL_ADDR_MAX + 1]; /* the user to deliver to */
    char orig[MAIL_ADDR_MAX + 1]; /* as given in RCPT TO (for the DSN) */
    enum queue_rcpt_kind kind;
    enum queue_rcpt_state state;
    bool parked; /* last answer was "move in progress" */
    unsigned attempts;
    int64_t next_try; /* unix ms */
    char last_reply[QUEUE_REPLY_MAX + 1];
};

struct queue_msg {
    char id[QUEUE_ID_LEN + 1];
    char sender[MAIL_ADDR_MAX + 1]; /* "" = null sender */
    int64_t arrival;                /* unix ms */
    int64_t expires;                /* unix ms: lifetime end */
    bool is_dsn;
    uint64_t size;
    struct buf body;          /* filled by queue_load only */
    struct queue_rcpt *rcpts; /* malloc'd */
    size_t n_rcpts;
};
/* Frees body and rcpts (not msg itself). */
void queue_msg_clear(struct queue_msg *m);

/* A message to insert: fill and pass an array of them. */
struct queue_new_rcpt {
    const char *addr;
    const char *orig;
    enum queue_rcpt_kind kind;
};
struct queue_new {
    const char *sender; /* "" for <> */
    const void *body;   /* must stay valid during the call */
    size_t len;
    const struct queue_new_rcpt *rcpts;
    size_t n_rcpts;
    bool is_dsn;
    int64_t expires;             /* unix ms */
    char id_r[QUEUE_ID_LEN + 1]; /* out: the new queue id */
};

struct queue;

/* Opens (creating) DIR/queue.db. NULL with *error_r. */
struct queue *queue_open(const char *dir, const char **error_r);
void queue_close(struct queue **q);

/* Inserts n messages in one durable transaction (invariant 1); fills each
 * id_r. 0, or -1 with nothing inserted. */
int queue_insert(struct queue *q, struct queue_new *msgs, size_t n, const char **error_r);

/* Loads a message with its body and all recipients; verifies it. */
enum queue_status queue_load(struct queue *q, const char *id, struct queue_msg *out);

/* Calls cb with the id of every message that has a pending recipient due at
 * or before now (unix ms), oldest next_try first, at most `max`. */
int queue_due(struct queue *q, int64_t now, size_t max, void (*cb)(void *ctx, const char *id),
              void *ctx);
/* The earliest next_try of any pending recipient (unix ms), or INT64_MAX. */
int64_t queue_next_due(struct queue *q);

/* One recipient's new state after an attempt. */
struct queue_update {
    unsigned idx;
    enum queue_rcpt_state state;
    bool parked;
    unsigned attempts;
    int64_t next_try;
    const char *reply; /* stored as last_reply */
};
/* Applies the updates of one message in one transaction; if `dsn` is not
 * NULL it is inserted in the same transaction (its id_r filled). If every
 * recipient is then final, the message is deleted in that transaction and
 * *done_r is true. */
enum queue_status queue_update(struct queue *q, const char *id, const struct queue_update *ups,
                               size_t n, struct queue_new *dsn, bool *done_r);

/* Moves a damaged message to the quarantine table with a reason. */
enum queue_status queue_quarantine(struct queue *q, const char *id, const char *reason);

/* Lists messages (without bodies), oldest first. cb returns non-zero to
 * stop. Quarantined entries come with quarantined = reason, else NULL. */
int queue_list(struct queue *q,
               int (*cb)(void *ctx, const struct queue_msg *m, const char *quarantined), void *ctx);
/* Makes every pending recipient (or those of one message) due now. Returns
 * the number of recipients touched, or -1. */
long queue_flush(struct queue *q, const char *id);
/* Number of messages in the queue (not quarantined). -1 on error. */
long queue_count(struct queue *q);

#endif
