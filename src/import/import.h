/*
 * import — migration in (issue 6): an import job copies a mailbox from
 * another system — an mbox file or directory of them, a Maildir/Maildir++
 * tree, a remote IMAP server — into the user's home store. It is a job in
 * the directory like a move (kind DIR_JOB_IMPORT), run by the mover role,
 * visible in `tern moves`; it writes to the store only over sync transports
 * (TSYNC/1) and reads its source only. docs/import.md has the diagram.
 *
 *   queued → scan → copy ─┬──────────────────────────▶ complete → sweep → done
 *                         └─▶ watch (--watch: a pass every poll seconds,
 *                              until `tern import complete ID`) ─┘
 *   scan     lists the source's folders, makes the destination mailbox and
 *            folders, counts what there is (the progress bar's total);
 *   copy     one pass over every folder: every message not yet imported;
 *   watch    the same pass again every `poll` seconds (IMAP: UIDNEXT and
 *            HIGHESTMODSEQ; files: size and mtime), until completed;
 *   complete the cutover: one last pass, the time is recorded;
 *   sweep    a pass every `poll` seconds for `sweep` seconds (default 72 h:
 *            as long as DNS can keep mail flowing to the old server);
 *            what it imports is counted as stragglers (Q190423);
 *   done     nothing more. "failed": a permanent error (the reason is the
 *            job's last error). Nothing is ever deleted from the source.
 * An import without --watch is complete as soon as its copy is: it sweeps
 * right after (sweep 0 ends it at once).
 *
 * Exactly once. Every message imported is recorded in the destination
 * store as a delivery id (the store's idempotency table, which moves carry
 * along and which survives the message's expunge): "imp1.<ik>.<ck>.<m><job>"
 * with ik = SHA-256 of (user, source kind, scope, folder, source identity)
 * — mbox: offset and SHA-256; Maildir: the file's base name; IMAP:
 * UIDVALIDITY and UID — and ck = SHA-256 of the octets without the headers
 * that mailers rewrite (Status, X-Keywords, ...). A message whose identity
 * is recorded is never imported again (re-runs, resumes, overlapping
 * sources of one kind). A message whose identity is new but whose content
 * matches imported messages of the folder that no identity in the source
 * claims any more (an mbox rewritten by a client, a changed UIDVALIDITY,
 * the same mail from another source) is a duplicate: the folder gets as
 * many copies as the source has, never more. The record is written right
 * after the append's durable commit; the message's GUID is derived from its
 * identity, so a crash between the two is repaired by the next run (it
 * finds the GUID and writes the record). Checkpoints and counters are
 * saved to the job (directory, with the row's compare-and-set that renews
 * the lease) only after the records they cover are durable.
 *
 * UIDs. A source with UIDs (IMAP; Maildir with Dovecot's dovecot-uidlist;
 * mbox with X-IMAPbase and X-UID) keeps them in a destination folder that
 * has the source folder's UIDVALIDITY (a folder this import created, or an
 * INBOX of a mailbox it created), as long as each UID is at least the
 * folder's UIDNEXT (a client that already saw the folder must never get a
 * lower UID); other messages there get one at or above the source's
 * UIDNEXT, elsewhere the next UID. The report says per folder where UIDs
 * were not kept and why.
 *
 * Reported vs aborted: every trouble with a message (too big, unreadable,
 * unparsable region of an mbox) is a failure in the report with its
 * reason; trouble with the source or the store as a whole makes the job
 * wait and try again (last_error says why); nothing here aborts on input.
 *
 * Threading: import_run is called by one mover thread per job at a time.
 */
#ifndef TERN_IMPORT_H
#define TERN_IMPORT_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "directory/directory.h"
#include "sync/sync.h"

#define IMPORT_POLL_DEFAULT  10          /* seconds between watch/sweep passes */
#define IMPORT_SWEEP_DEFAULT (72 * 3600) /* seconds of straggler sweep */
#define IMPORT_PATH_MAX      1024

/* Fixed when the job is created (tern import). */
struct import_settings {
    bool watch;     /* keep syncing until completed */
    unsigned poll;  /* seconds between passes while watching and sweeping (>= 1) */
    uint64_t sweep; /* seconds of straggler sweep after the cutover */
    char secret[IMPORT_PATH_MAX + 1]; /* file holding the IMAP password ("" none) */
    /* imaps: a PEM file of CA certificates to trust instead of the system's
     * store (absolute; "": the system's). */
    char ca_file[IMPORT_PATH_MAX + 1];
};

struct import_env {
    struct directory *dir;
    /* Opens a transport to a store. NULL with a message in err. */
    struct sync *(*connect)(void *ctx, const char *store, char *err, size_t errlen);
    void *ctx;
    const char *owner; /* lease owner id */
    unsigned lease_ms;
    uint64_t msg_max; /* largest message imported (0: 64 MiB) */
    /* True when the caller wants the run to stop at the next safe point
     * (the mover shuts down). NULL: never. */
    bool (*stopping)(void *ctx);
    /* Test hook: called with the phase name before each phase; non-zero
     * stops the run there as if the mover died. */
    int (*before_phase)(void *ctx, const char *phase);
};

enum import_result {
    IMPORT_FINISHED = 0, /* done or failed */
    IMPORT_LATER,        /* run again once import_job_due says so */
    IMPORT_LOST,         /* the lease went to someone else */
    IMPORT_STOPPED,      /* before_phase or stopping asked to stop */
};

/* Runs import job id as far as it can go now; the caller holds the lease
 * (move_claim). */
enum import_result import_run(const struct import_env *env, uint64_t id);

/* True if the import job has something to do at now_ms (its next pass is
 * due: the job's `checkpoint` holds that time, unix ms). */
bool import_job_due(const struct dir_job *j, int64_t now_ms);
/* True while the job is live (not done or failed). */
bool import_phase_active(const char *phase);

/* Checks a SOURCE argument: "mbox:PATH", "maildir:PATH" (PATH absolute
 * after the caller resolved it), "imap://USER@HOST[:PORT]" or
 * "imaps://USER@HOST[:PORT]". 0, or -1 with a one-line *error_r.
 * *needs_password_r for IMAP, *tls_r for imaps (may be NULL). */
int import_source_check(const char *spec, bool *needs_password_r, bool *tls_r,
                        const char **error_r);

/* Creates an import job (phase "queued") for user into store `home`, with
 * its settings, in one directory transaction. DIR_INVALID if the user has
 * a live job already. */
enum dir_status import_job_create(struct directory *dir, const char *user, const char *home,
                                  const char *source, const struct import_settings *set,
                                  uint64_t *id_r);

/* Prints job id's report: per folder messages and bytes in the source,
 * imported, already there, duplicates skipped, stragglers after the
 * cutover, UIDs kept, and every failure with its reason. 0, or -1 with
 * *error_r. */
int import_report(struct directory *dir, uint64_t id, FILE *out, const char **error_r);

#endif
