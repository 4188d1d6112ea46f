/*
 * move — the move engine's brain: runs one move job through its phases,
 * talking to the two stores only through sync transports (sync.h) and to
 * the directory only through compare-and-set. docs/move.md has the diagram.
 *
 *   queued → provision → copy → catchup ⇄ (ready) → fence → final → verify
 *          → switch → retention → done
 *   any phase before switch → aborting → aborted
 *
 * Each phase is a named function, its name is persisted in the job before
 * it starts, and it is idempotent: a mover that crashes anywhere and starts
 * again (or another mover that takes the lease over) re-runs the persisted
 * phase and ends in the same state. The job row is the only coordinator
 * state (brief invariant 8).
 *
 * The invariants it keeps:
 *  - provision creates the destination mailbox STAGED in the step that
 *    creates it: nothing can deliver there before the switch (Q277911);
 *  - the source stays the only home until one directory compare-and-set
 *    from (home=src, finalizing, epoch e) to (home=dst, active, e+1), made
 *    only after verify found the fenced source and the destination equal
 *    (brief invariant 5);
 *  - the source copy is purged only when the directory shows another home
 *    at a later epoch, the destination re-verifies, and the retention period
 *    is over (invariant 6); missing or unreadable information postpones the
 *    purge, it never causes one (Q252869);
 *  - every save of the job renews the lease by compare-and-set; a mover that
 *    loses it stops touching the job.
 */
#ifndef TERN_MOVE_H
#define TERN_MOVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "directory/directory.h"
#include "sync/sync.h"

struct move_env {
    struct directory *dir;
    /* Opens a transport to a store (for the TCP mover: its sync endpoint).
     * NULL with a message in err. */
    struct sync *(*connect)(void *ctx, const char *store, char *err, size_t errlen);
    void *ctx;
    const char *owner; /* lease owner id, e.g. "mover:1234" */
    unsigned lease_ms;
    unsigned retention; /* seconds */
    unsigned cutover_budget_ms;
    unsigned catchup_delta;
    /* Test hook: called with the phase name before each phase runs; a
     * non-zero return stops the run as if the mover died there. */
    int (*before_phase)(void *ctx, const char *phase);
};

enum move_result {
    MOVE_FINISHED = 0, /* done, aborted or failed: nothing more to do */
    MOVE_LATER,        /* waiting (retention, suspended, a store down): run again later */
    MOVE_LOST,         /* the lease went to someone else */
    MOVE_STOPPED,      /* before_phase asked to stop */
};

/* Runs job id as far as it can go now. The caller holds the lease. */
enum move_result move_run(const struct move_env *env, uint64_t id);

/* Claims job id for env->owner if its lease is free or expired: 0 claimed,
 * 1 someone else holds it, -1 error. */
int move_claim(const struct move_env *env, uint64_t id);

/* True if phase is one the engine still works on (including retention). */
bool move_phase_active(const char *phase);
/* True if a job in this phase may still be aborted (before the switch). */
bool move_phase_abortable(const char *phase);

#endif
