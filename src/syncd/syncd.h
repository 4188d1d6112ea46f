/*
 * syncd — the TSYNC/1 server of a store (docs/sync.md): the far end of
 * sync_tcp_connect(), through which the mover reads and fills mailboxes on
 * another store.
 *
 * Contract.
 *  - Every command is executed through a sync_local_new(st) transport, so a
 *    command over TCP has exactly the effect and the answer of the same
 *    sync.h call made in process: "+OK ..." for 0, "-NO <why>" for SYNC_NO
 *    (notfound|exists|conflict|notlive|checksum|invalid).
 *  - A malformed command (unknown verb, wrong number of arguments, bad hex
 *    or number, a line over SYNCD_LINE_MAX octets) is answered
 *    "-ERR <text>", changes nothing, and the connection stays usable, except
 *    where the framing is lost: an APPEND whose body length cannot be read
 *    or exceeds SYNCD_BODY_MAX, or a body not followed by CRLF, is answered
 *    "-ERR" and the connection is closed. SYNCD_MAX_ERRORS -ERRs close it.
 *  - A store failure (sync's -1) is answered "-ERR store failure" and the
 *    connection is closed: the client drops it and retries later.
 *  - HELLO TSYNC/1 must come first. Idle and session limits come from the
 *    net_conn_limits given (net.h).
 *  - An APPEND is acknowledged only after its store commit returned, i.e.
 *    (fs store) it is durable.
 *  - A DELIVERED batch (at most SYNC_BATCH_MAX records, each a line) is
 *    executed once its last record is in, through delivery_add_batch: one
 *    store commit; a count over the limit or a record line over
 *    SYNCD_LINE_MAX loses the framing ("-ERR", closed); a malformed record
 *    gets the whole batch one "-ERR" (nothing recorded, still usable).
 *  - An APPENDS batch is read whole (bounded by SYNC_BATCH_MAX records and
 *    SYNC_BATCH_BYTES of bodies), then executed through the transport's
 *    append_batch: one store commit for all its messages, then one line per
 *    record and "+OK <n>". A count over the limit, a record whose length
 *    cannot be read or that goes over SYNC_BATCH_BYTES, a record line over
 *    SYNCD_LINE_MAX, or a body not followed by CRLF lose the framing: "-ERR"
 *    and the connection is closed, nothing of the batch stored. A record
 *    with another malformed field: the whole batch is answered with one
 *    "-ERR" (nothing stored) and the connection stays usable. A record
 *    may carry a delivery id (stored with its message in that commit); one
 *    whose id the mailbox recorded already (also earlier in the batch)
 *    stores nothing and is answered "+OK duplicate <uid> <uidvalidity>".
 *
 *  - WAIT <user> <since> <timeout-ms> is answered "+OK <modseq> <state>"
 *    as soon as the mailbox's modseq is above since or its state is not
 *    active (re-read after each commit of any connection of this syncd, and
 *    after each syncd_changed()), when the timeout passes, or when any more
 *    input arrives on the connection (a NOOP ends it early). A waiting
 *    session is on a list of its syncd until then; a connection that drops
 *    while waiting is taken off it. Nothing else is answered meanwhile.
 *
 *  - Replies stream with backpressure: CHANGES, DIGEST and DELIVERIES are produced a
 *    step at a time (sync.h: listings in steps), one step per loop
 *    iteration and only while the connection's queued output is at most
 *    SYNCD_OUT_LOW; no further command of the connection is read until the
 *    listing ended. Any other reply that leaves more than SYNCD_OUT_HIGH
 *    octets queued (FETCHes of big messages) stops the reading of commands
 *    until the output is down to SYNCD_OUT_LOW. A session's memory is thus
 *    bounded by these, one step's records (or one message), and an APPENDS
 *    batch — not by the mailbox. Answers stay in the order of the commands.
 *    A client that reads nothing for the idle time while output waits is
 *    disconnected (net.h).
 *
 * Runs on the loop's thread and uses st from there only (store.h: one
 * thread at a time per store).
 */
#ifndef TERN_SYNCD_H
#define TERN_SYNCD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mail/mail.h"
#include "net/net.h"
#include "store/store.h"
#include "sync/sync.h"

#define SYNCD_LINE_MAX   8192         /* octets of a command line, without CRLF */
#define SYNCD_BODY_MAX   (1ull << 31) /* octets of an APPEND body */
#define SYNCD_MAX_ERRORS 20           /* -ERR answers before the server hangs up */
#define SYNCD_OUT_HIGH   (256 * 1024) /* queued reply octets above which commands wait */
#define SYNCD_OUT_LOW    (64 * 1024)  /* ... until the output is down to this */
/* An APPENDS batch: at most SYNC_BATCH_MAX records and SYNC_BATCH_BYTES of
 * bodies (sync.h), all held in memory until the batch is executed. */

struct syncd;

struct syncd *syncd_listen(struct net_loop *loop, const char *endpoint, struct store *st,
                           const char *store_name, const struct net_conn_limits *limits,
                           const char **error_r);
/* Stops listening and frees d. Open sessions refer to d: call it when
 * syncd_sessions() is 0, or when the loop will not run again (just before
 * net_loop_free()). */
void syncd_free(struct syncd **d);
/* Open connections, for stats and an orderly shutdown. */
unsigned syncd_sessions(const struct syncd *d);
/* The most reply octets any session of d had queued at once (in net and
 * not yet sent), for tests and stats: with backpressure it stays near
 * SYNCD_OUT_HIGH plus one step or one message, however big the mailbox.
 * Readable from any thread. */
size_t syncd_backlog_max(const struct syncd *d);

/* Tells the WAITs for user's mailbox (docs/sync.md) that it may have
 * changed: each re-reads the mailbox and is answered if its modseq is now
 * above the WAIT's or its state is no longer active. For commits made
 * outside syncd on the same store and loop (role_store's LMTP group
 * commit); syncd's own commands do it themselves. Cheap when nobody waits
 * for user. d may be NULL (no sync endpoint). Loop thread only. */
void syncd_changed(struct syncd *d, const char *user);
/* WAITs pending now (stats and tests). Readable from any thread. */
unsigned syncd_waiters(const struct syncd *d);

/* ---- command parsing (exposed for tests and fuzzing) ---- */

enum syncd_verb {
    SYNCD_NONE, /* not (yet) recognized */
    SYNCD_HELLO,
    SYNCD_MBOX,
    SYNCD_CREATE,
    SYNCD_STATE,
    SYNCD_PURGE,
    SYNCD_CHANGES,
    SYNCD_FETCH,
    SYNCD_APPEND,
    SYNCD_APPENDS, /* a batch: count records follow, each as syncd_parse_record() */
    SYNCD_FOLDER,
    SYNCD_FDELETE,
    SYNCD_FLAGS,
    SYNCD_EXPUNGE,
    SYNCD_DIGEST,
    SYNCD_DELIVERIES,
    SYNCD_DELIVERY,
    SYNCD_DELIVERED, /* a batch: count records follow, each as syncd_parse_delivered() */
    SYNCD_QUIT,
    SYNCD_MODSEQ, /* raise the mailbox modseq (the mover) */
    /* for IMAP sessions (the imap role) */
    SYNCD_FOLDERS,
    SYNCD_MSGS,
    SYNCD_ADD, /* a client append: the store picks the UID; a body follows */
    SYNCD_SETFLAGS,
    SYNCD_FCREATE,
    SYNCD_FRENAME,
    SYNCD_TOMB,
    SYNCD_WAIT, /* notified IDLE: answered when the mailbox changes (or at a timeout) */
    SYNCD_NOOP,
    SYNCD_HEADER,   /* FETCH of the header only */
    SYNCD_EXPUNGES, /* expunges of a UID set, one commit */
    SYNCD_COPIES,   /* copies of a UID set into another folder, one commit */
    SYNCD_TOKEN,    /* the mover's fencing token for this connection's writes */
};

/* One parsed command; only the fields its verb has are set. Strings are
 * decoded from hex ("-" = empty) and NUL-terminated. */
struct syncd_cmd {
    enum syncd_verb verb;
    char user[MAIL_ADDR_MAX + 1];
    char folder[STORE_FOLDER_MAX + 1];  /* FETCH/APPEND/FLAGS/EXPUNGE/DELIVERY; FOLDER's name */
    char folder2[STORE_FOLDER_MAX + 1]; /* FRENAME: the new name */
    enum store_flag_mode flag_mode;     /* SETFLAGS */
    bool keywords_none;                 /* SETFLAGS: "-" given for ADD/REMOVE = leave them */
    char keywords[STORE_KEYWORDS_MAX + 1];
    char moved_to[MAIL_NAME_MAX + 1];
    char id[STORE_DELIVERY_ID_MAX + 1]; /* DELIVERY; an APPENDS record's ("" if none) */
    enum store_mbox_state expect, state;
    uint64_t num;  /* CREATE/STATE epoch, CHANGES/DELIVERIES since, APPENDS/DELIVERED count */
    uint64_t upto; /* DELIVERIES: UINT64_MAX if absent */
    uint32_t uid, uidvalidity, uidnext, flags; /* CREATE: INBOX's uidvalidity, 0 if absent */
    int64_t date;
    /* APPEND (and an APPENDS record), FOLDER, FDELETE, FLAGS, EXPUNGE: the
     * optional trailing modseq the change gets on the store (the mover;
     * store.h "Explicit modseqs"); 0 if absent. 0, over 2^63 - 1 or not a
     * number is malformed ("bad modseq"). */
    uint64_t modseq;
    uint64_t size;    /* TOMB: the message's size (it has no body) */
    uint32_t wait_ms; /* WAIT: the timeout, 0..SYNC_WAIT_MAX_MS */
    /* EXPUNGES, COPIES: the UID set (ascending, at most SYNC_UIDS_MAX). */
    uint32_t uids[SYNC_UIDS_MAX];
    size_t n_uids;
    uint8_t guid[STORE_GUID_LEN];
    uint8_t sha256[SHA256_LEN];
    /* APPEND (and an APPENDS record): a body of body_len octets (+ CRLF)
     * follows. Set as soon as the
     * length field is valid, even if another argument is not, so that the
     * server can skip the body and stay in step with the client. */
    bool has_body;
    uint64_t body_len;
    /* APPENDS, DELIVERED: the count (num) is valid, so the records can be
     * read (and skipped) even if the user is not. */
    bool has_count;
    /* TOKEN <user> <job> <claim>: job in num, the claim here (both
     * 1..2^63-1). */
    uint64_t claim;
};

/* Parses one command line (without CRLF; any octets, not NUL-terminated).
 * 0: ok. -1: malformed, *error_r the text for "-ERR". SYNC_NO: well formed,
 * but a string is longer than the store could accept (*error_r "invalid",
 * the reason for "-NO"). */
int syncd_parse_line(const char *line, size_t len, struct syncd_cmd *cmd, const char **error_r);
/* Parses one record of an APPENDS batch, "<folder> <uid> <guid> <flags>
 * <date> <len> <sha256> <keywords> [<modseq>|- [<delivery-id>]]" (APPEND's
 * arguments without the user, then the id into cmd->id: a malformed one is
 * -1 "bad delivery id", one over STORE_DELIVERY_ID_MAX octets SYNC_NO),
 * into cmd (verb SYNCD_APPEND, user left empty); returns as
 * syncd_parse_line. has_body is set whenever the length is readable. */
int syncd_parse_record(const char *line, size_t len, struct syncd_cmd *cmd, const char **error_r);
/* Parses one record of a DELIVERED batch, "<id> <uid> <folder>" (DELIVERY's
 * arguments without the user), into cmd (verb SYNCD_DELIVERY, user left
 * empty); returns as syncd_parse_line. */
int syncd_parse_delivered(const char *line, size_t len, struct syncd_cmd *cmd,
                          const char **error_r);

#endif
