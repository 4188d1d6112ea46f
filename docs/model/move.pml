/*
 * move.pml — tern's move and delivery protocol as a Promela model.
 *
 * One user, two stores (SRC = the home before the move, DST = the
 * destination), NM messages for that user in the mta's durable queue, one
 * move job SRC -> DST. Processes:
 *
 *   Mover   the move engine: the persisted phases of move.c; it may die
 *           before any of its transactions and resumes at the persisted
 *           phase;
 *   Mta     the mta's delivery worker: a routing cache that may be wrong,
 *           LMTP to a store, the redirect on "moved to", parking on "move in
 *           progress", retries after a store died mid-delivery or an
 *           acknowledgement was lost (delivery ids make those duplicates);
 *   Admin   the command line racing the mover: `tern user set` (a
 *           read-modify-write of the user's directory row) and `tern move
 *           abort`;
 *   one monitor per safety property (PROPS below).
 *
 * Stores are not processes: their committed state (mailbox state and epoch,
 * messages, delivery ids) is global and nothing resets it — the durability
 * contract of store.h, tested in C by test_store's crash tests. A store
 * crash shows where the protocol sees it: an uncommitted LMTP transaction
 * is gone, an acknowledgement is lost after its commit, or a mover call
 * fails (the phase runs again from the persisted job row — the same as the
 * mover dying there).
 *
 * Every atomic step is one transaction of the C code (a directory
 * compare-and-set, a store commit or state change, one TSYNC call); the
 * comment on each names the function that implements it (file:function).
 * docs/model/README.md has the whole map, what is abstracted away, and how
 * to run this; tests/model/check.sh runs it (CTest `model`).
 *
 * Broken variants (each must fail; docs/model/checks lists them with the
 * property that catches each):
 *   -DBROKEN_NO_FENCE        the fence does not fence the source store
 *   -DBROKEN_RCPT_ONLY       the store checks the mailbox state at RCPT
 *                            only, not again inside the commit
 *   -DBROKEN_NO_CAS          directory updates are blind writes, no
 *                            compare-and-set on the row version
 *   -DBROKEN_STAGED_ACTIVE   provision creates the destination active
 *   -DBROKEN_NO_DELIVERY_IDS the final sync does not copy delivery ids
 *   -DBROKEN_NO_REDIRECT     the mta believes its cache on "moved to"
 *
 * -DPROPS=N selects the safety checks (bits): 1 no_loss, 2 no_dup,
 * 4 one_home, 8 verify_clean; default all. -DLIVENESS adds the LTL formula
 * `progress` (pan -a -f: weak fairness; the faults are bounded below, so
 * they stop). -DREACH turns the probes on.
 */

/* ---- bounds -------------------------------------------------------------- */

#ifndef NM
#define NM 2 /* messages: 2 or 3 */
#endif
#ifndef MAX_MOVER_CRASH
#define MAX_MOVER_CRASH 1 /* the mover dies (or a store under its call) */
#endif
#ifndef MAX_STORE_FAULT
#define MAX_STORE_FAULT 1 /* a store dies mid-delivery, or an ack is lost */
#endif
#ifndef MAX_OVERBUDGET
#define MAX_OVERBUDGET 1 /* the final sync overruns the cutover budget */
#endif
#ifndef PROPS
#define PROPS 15
#endif
#ifndef ADMIN
#define ADMIN 3 /* bits: 1 `tern user set` races the mover, 2 `tern move abort` */
#endif
/* -DREACH: every probe REACHED(n, c) "fails" where its scenario c is
 * reached, to show that the model gets there at all (a vacuity check: the
 * properties hold in runs that do exercise the protocol). check.sh runs
 * pan -c0 and requires every probe number to appear. */
#ifdef REACH
#define REACHED(n, c) assert(!(c) || (n) == 0)
#else
#define REACHED(n, c) skip
#endif

#define SRC 0
#define DST 1
#define E0 1 /* the user's epoch before the move: the job's epoch */
#define E1 2 /* ... after the switch */
#define ALL ((1 << NM) - 1)
#define BIT(m) (1 << (m))

/* ---- the directory: the user's row and the job's row ----------------------- */

#define U_ACTIVE 0
#define U_MOVING 1
#define U_FINALIZING 2

byte d_home = SRC;       /* dir_user.home */
byte d_epoch = E0;       /* dir_user.epoch */
byte d_state = U_ACTIVE; /* dir_user.state */
/* dir_user.version as the one reader that holds it across time (Admin)
 * sees it: true while nothing updated the row since its read. Every update
 * is a compare-and-set on the version (dir_sqlite.c:dir_sqlite_user_update
 * → dir_sqlite_cas). The mover's read and CAS are one step here: a CAS that
 * loses re-reads, so its one winning attempt is what counts. */
bool d_unchanged;
#define DIR_UPDATED d_unchanged = false
#ifdef BROKEN_NO_CAS
#define CAS_OK true
#else
#define CAS_OK d_unchanged
#endif

/* dir_job.phase: the only coordinator state (brief invariant 8) */
#define P_QUEUED 0
#define P_PROVISION 1
#define P_COPY 2
#define P_CATCHUP 3
#define P_FENCE 4
#define P_FINAL 5
#define P_VERIFY 6
#define P_SWITCH 7
#define P_RETENTION 8
#define P_ABORTING 9
#define P_DONE 10
#define P_ABORTED 11
#define P_FAILED 12
byte j_phase = P_QUEUED;
#define ABORTABLE(p) ((p) <= P_VERIFY) /* move.c:move_phase_abortable */
#define FINISHED (j_phase >= P_DONE)

/* ---- the stores ------------------------------------------------------------ */

#define MB_NONE 0
#define MB_STAGED 1
#define MB_ACTIVE 2
#define MB_FENCED 3
#define MB_MOVED 4 /* moved_to: the other store */
#define MB_DELETING 5

byte mb_state[2]; /* store_mailbox.state on each store (init: SRC active) */
byte mb_epoch[2]; /* store_mailbox.epoch */
byte cnt[2 * NM]; /* committed copies (UIDs) of message m on store s */
byte did[2];      /* bit m: store s recorded message m's delivery id */

#define C(s, m) cnt[(s) * NM + (m)]
#define WRITABLE(s) (mb_state[s] == MB_STAGED || mb_state[s] == MB_ACTIVE)
#define SRC_FENCED (mb_state[SRC] == MB_FENCED && mb_epoch[SRC] == E0)

/* ---- the mta --------------------------------------------------------------- */

byte acked; /* bit m: a store acknowledged message m; the queue dropped it */
byte cache; /* router.c's cached home of the user: a hint */

/* ---- bounded faults -------------------------------------------------------- */

byte n_mover_crash, n_store_fault, n_overbudget;

/* ---- the properties ---------------------------------------------------------- */

/* no_loss: an acknowledged message is in the live home, the store the
 * directory names (the mta dropped it from its queue when it was acked). */
#define KEPT(m) (!(acked & BIT(m)) || C(d_home, m) >= 1)
/* no_dup: no message is stored twice (under two UIDs) in the live home. */
#define ONCE(m) (C(d_home, m) <= 1)
#if NM > 2
#define NO_LOSS (KEPT(0) && KEPT(1) && KEPT(2))
#define NO_DUP (ONCE(0) && ONCE(1) && ONCE(2))
#else
#define NO_LOSS (KEPT(0) && KEPT(1))
#define NO_DUP (ONCE(0) && ONCE(1))
#endif
/* one_home: a mailbox that takes deliveries (active) exists only on the
 * directory's home at the directory's epoch, and the home's mailbox is
 * there at that epoch: active, fenced (a move finishing), or staged only
 * between the directory switch and the store states that follow it in
 * phase_switch. */
#define LIVE_OK(s) (mb_state[s] != MB_ACTIVE || (d_home == (s) && mb_epoch[s] == d_epoch))
#define HOME_OK                                                              \
    (mb_epoch[d_home] == d_epoch &&                                          \
     (mb_state[d_home] == MB_ACTIVE || mb_state[d_home] == MB_FENCED ||      \
      (mb_state[d_home] == MB_STAGED && j_phase == P_SWITCH)))
#define ONE_HOME (LIVE_OK(SRC) && LIVE_OK(DST) && HOME_OK)

proctype no_loss() { end: atomic { !NO_LOSS -> assert(NO_LOSS) } }
proctype no_dup() { end: atomic { !NO_DUP -> assert(NO_DUP) } }
proctype one_home() { end: atomic { !ONE_HOME -> assert(ONE_HOME) } }
/* verify_clean (PROPS & 8) is an assertion in phase_verify: after the
 * fence and the final sync, verify never finds the copies different. */

#ifdef LIVENESS
/* Progress once the faults stopped: every queued message is delivered and
 * the move ends (done; or aborted/failed, the source still the home). */
ltl progress { <> (acked == ALL && FINISHED) }
#endif

/* ---- the mover ------------------------------------------------------------- */

/* The mover dies before this transaction: role_mover's process is killed,
 * or a store call fails (io_fail → STEP_LATER). What it held in memory is
 * gone; serve.c restarts it, move.c:move_claim and move.c:move_run resume
 * at the phase in the job row. */
#define MAY_CRASH                                                            \
    if                                                                       \
    :: n_mover_crash < MAX_MOVER_CRASH -> n_mover_crash++; goto restart      \
    :: true -> skip                                                          \
    fi

/* move.c:next_phase → job_save: the next phase is persisted before it
 * runs, by a CAS on the job row. A `tern move abort` that came first is
 * taken in if the next phase can still be aborted; otherwise the mover's
 * save wins (the abort was too late). */
inline next_phase(p)
{
    atomic {
        MAY_CRASH;
        if
        :: j_phase == P_ABORTING && ABORTABLE(p) -> skip
        :: else -> j_phase = p
        fi
    }
}

/* move.c:move_run on STEP_FAIL: "aborting" is persisted before the
 * clean-up, which then ends the job as failed. */
inline fail_job()
{
    atomic { MAY_CRASH; j_phase = P_ABORTING; failing = true }
}

/* move.c:user_state(from, to): read the user row; home and epoch must be
 * the job's; "already done" is fine; else a CAS of the state. */
inline user_state(from, to)
{
    atomic {
        MAY_CRASH;
        if
        :: d_home != SRC || d_epoch != E0 -> failing = true
        :: else ->
            if
            :: d_state == to -> skip
            :: d_state == from -> d_state = to; DIR_UPDATED
            :: else -> failing = true
            fi
        fi
    }
}

/* One message of move.c:sync_pass (pass_msg → batch_flush): a message the
 * source has is appended to the destination under its UID (TSYNC APPENDS:
 * syncd.c:syncd_batch_run → store_batch_commit, without require_live); a
 * UID the destination has answers "exists", so nothing is stored twice. One
 * message per step: deliveries interleave with the pass. */
inline sync_msg(m)
{
    atomic {
        MAY_CRASH;
        if
        :: !failing && C(SRC, m) > 0 && C(DST, m) == 0 ->
            if
            :: WRITABLE(DST) -> C(DST, m) = 1
            :: else -> failing = true /* NOTLIVE on the destination: STEP_FAIL */
            fi
        :: else -> skip /* not on the source (yet), or "exists" */
        fi
    }
}

inline sync_pass()
{
    sync_msg(0);
    sync_msg(1);
#if NM > 2
    sync_msg(2);
#endif
}

/* move.c:compare: TSYNC DIGEST on both sides (it covers every UID: a
 * second copy of a message differs) */
#if NM > 2
#define SAME (C(SRC, 0) == C(DST, 0) && C(SRC, 1) == C(DST, 1) && C(SRC, 2) == C(DST, 2))
#else
#define SAME (C(SRC, 0) == C(DST, 0) && C(SRC, 1) == C(DST, 1))
#endif

/* move.c:phase_abort: the source stays the only home; the staged copy is
 * dropped. Every step accepts "already done". */
inline phase_abort(final)
{
    atomic {
        MAY_CRASH;
        if
        :: d_home == DST && d_epoch == E1 -> flag = true /* too late: complete instead */
        :: d_home == SRC && d_state != U_ACTIVE -> d_state = U_ACTIVE; DIR_UPDATED
        :: else -> skip
        fi
    }
    if
    :: flag -> next_phase(P_SWITCH)
    :: else ->
        /* unfence: TSYNC STATE fenced → active at E0
         * (store_fs.c:store_fs_mailbox_set_state; a conflict is fine) */
        atomic {
            MAY_CRASH;
            if
            :: mb_state[SRC] == MB_FENCED -> mb_state[SRC] = MB_ACTIVE
            :: else -> skip
            fi
        }
        /* the staged copy: staged → deleting (set_state) */
        atomic {
            MAY_CRASH;
            if
            :: mb_state[DST] == MB_STAGED -> mb_state[DST] = MB_DELETING
            :: else -> skip
            fi
        }
        /* ... then purged (store_fs.c:store_fs_mailbox_purge, only in
         * DELETING); the job ends (job_save) */
        atomic {
            MAY_CRASH;
            if
            :: mb_state[DST] == MB_DELETING ->
                REACHED(5, C(DST, 0) + C(DST, 1) > 0);
                mb_state[DST] = MB_NONE; mb_epoch[DST] = 0; did[DST] = 0;
                C(DST, 0) = 0; C(DST, 1) = 0; C(DST, NM - 1) = 0
            :: else -> skip
            fi
        }
        atomic { MAY_CRASH; j_phase = final }
    fi
}

proctype Mover()
{
    byte ph;       /* the phase this run is in: move.c's r->job.phase */
    bool failing;  /* a step answered STEP_FAIL */
    bool flag;     /* a step's yes/no: the directory switched already
                    * (abort), the user changed under the move (switch), the
                    * copies are the same (verify), the old copy is kept
                    * (retention) */

    /* role_mover.c:role_mover_main claims the job (move.c:move_claim),
     * slot_main runs it (move.c:move_run) from the persisted phase. */
restart:
    atomic { ph = 0; failing = false; flag = false };
    do
    :: atomic {
        FINISHED ->
        REACHED(4, j_phase == P_DONE && n_overbudget > 0 && n_mover_crash > 0);
        break
       }
    :: atomic { !FINISHED -> ph = j_phase; failing = false; flag = false };
        if
        /* ---- move.c:phase_queued */
        :: ph == P_QUEUED -> next_phase(P_PROVISION)

        /* ---- move.c:phase_provision: user active → moving */
        :: ph == P_PROVISION ->
            user_state(U_ACTIVE, U_MOVING);
            /* the source's mailbox must be active at the job's epoch; the
             * destination is born STAGED at E1 in the step that creates it
             * (Q277911): TSYNC CREATE → store_fs.c:store_fs_mailbox_create */
            atomic {
                MAY_CRASH;
                if
                :: failing || !(mb_state[SRC] == MB_ACTIVE && mb_epoch[SRC] == E0) -> failing = true
                :: else ->
                    if
                    :: mb_state[DST] == MB_NONE ->
#ifdef BROKEN_STAGED_ACTIVE
                        mb_state[DST] = MB_ACTIVE;
#else
                        mb_state[DST] = MB_STAGED;
#endif
                        mb_epoch[DST] = E1
                    :: mb_state[DST] == MB_STAGED -> mb_epoch[DST] = E1
                    :: else -> failing = true /* a live mailbox there: never overwritten */
                    fi
                fi
            };
            if
            :: failing -> fail_job()
            :: else -> next_phase(P_COPY)
            fi

        /* ---- move.c:phase_copy, move.c:phase_catchup: a pass each (more
         * catch-up passes add nothing the interleavings do not) */
        :: ph == P_COPY || ph == P_CATCHUP ->
            sync_pass();
            if
            :: failing -> fail_job()
            :: !failing && ph == P_COPY -> next_phase(P_CATCHUP)
            :: !failing && ph == P_CATCHUP -> next_phase(P_FENCE)
            fi

        /* ---- move.c:phase_fence: user moving → finalizing, then the
         * source active → fenced (TSYNC STATE): from now on it refuses
         * every change and deliveries get "move in progress" */
        :: ph == P_FENCE ->
            user_state(U_MOVING, U_FINALIZING);
            atomic {
                MAY_CRASH;
                if
                :: failing -> skip
#ifdef BROKEN_NO_FENCE
                :: else -> skip
#else
                :: !failing && mb_state[SRC] == MB_ACTIVE -> mb_state[SRC] = MB_FENCED
                :: !failing && mb_state[SRC] == MB_FENCED -> skip /* already done */
                :: else -> failing = true
#endif
                fi
            };
            if
            :: failing -> fail_job()
            :: else -> next_phase(P_FINAL)
            fi

        /* ---- move.c:phase_final: only from a fenced source
         * (move.c:source_fenced), the last pass */
        :: ph == P_FINAL ->
#ifndef BROKEN_NO_FENCE
            if
            :: !SRC_FENCED -> next_phase(P_FENCE)
            :: else ->
#endif
                sync_pass();
                if
                :: failing -> fail_job()
                :: !failing && n_overbudget < MAX_OVERBUDGET ->
                    /* over the cutover budget: move.c:unfence. The phase
                     * goes back first, then the source is live again and
                     * the user moving. */
                    n_overbudget++;
                    next_phase(P_CATCHUP);
                    if
                    :: j_phase == P_CATCHUP ->
                        atomic {
                            MAY_CRASH;
                            if
                            :: mb_state[SRC] == MB_FENCED -> mb_state[SRC] = MB_ACTIVE
                            :: else -> skip
                            fi
                        };
                        user_state(U_FINALIZING, U_MOVING) /* its result is ignored */
                    :: else -> skip /* an abort came in first */
                    fi
                :: !failing ->
                    /* move.c:copy_deliveries: TSYNC DELIVERIES from the
                     * frozen source, DELIVERY to the destination
                     * (store_fs.c:store_fs_delivery_add) */
                    atomic {
                        MAY_CRASH;
#ifndef BROKEN_NO_DELIVERY_IDS
                        if
                        :: WRITABLE(DST) -> did[DST] = did[DST] | did[SRC]
                        :: else -> skip
                        fi
#else
                        skip
#endif
                    };
                    next_phase(P_VERIFY)
                fi
#ifndef BROKEN_NO_FENCE
            fi
#endif

        /* ---- move.c:phase_verify: compare (move.c:compare), one repair
         * pass on a mismatch, never a switch on a mismatch */
        :: ph == P_VERIFY ->
#ifndef BROKEN_NO_FENCE
            if
            :: !SRC_FENCED -> next_phase(P_FENCE)
            :: else ->
#endif
                atomic {
                    MAY_CRASH;
#if (PROPS & 8)
                    assert(SAME); /* verify_clean */
#endif
                    flag = SAME
                };
                if
                :: !flag ->
                    sync_pass();
                    atomic { MAY_CRASH; failing = failing || !SAME }
                :: else -> skip
                fi;
                if
                :: failing -> fail_job()
                :: else -> next_phase(P_SWITCH)
                fi
#ifndef BROKEN_NO_FENCE
            fi
#endif

        /* ---- move.c:phase_switch */
        :: ph == P_SWITCH ->
            /* the one compare-and-set that changes the home (brief
             * invariant 5): directory.c:dir_user_update from (SRC,
             * finalizing, E0) to (DST, active, E1) — only from a fenced
             * source (checked first in the C) */
            atomic {
                MAY_CRASH;
                if
                :: d_home == DST && d_epoch == E1 -> skip /* done before a crash */
                :: d_home == SRC && d_epoch == E0 && d_state == U_FINALIZING ->
#ifndef BROKEN_NO_FENCE
                    if
                    :: !SRC_FENCED -> failing = true /* back to the fence */
                    :: else ->
#endif
                        d_home = DST; d_epoch = E1; d_state = U_ACTIVE; DIR_UPDATED
#ifndef BROKEN_NO_FENCE
                    fi
#endif
                :: else -> flag = true /* the user changed under the move: abort */
                fi
            };
            if
            :: flag -> flag = false; phase_abort(P_ABORTED)
            :: failing -> next_phase(P_FENCE)
            :: else ->
                /* destination staged → active at E1 (TSYNC STATE); a
                 * conflict is fine only if it is active at E1 already */
                atomic {
                    MAY_CRASH;
                    if
                    :: mb_state[DST] == MB_STAGED -> mb_state[DST] = MB_ACTIVE; mb_epoch[DST] = E1
                    :: else -> skip
                    fi
                };
                /* source fenced → moved(DST, E1): a stale delivery is
                 * redirected at once (Q172364) */
                atomic {
                    MAY_CRASH;
                    if
                    :: mb_state[SRC] == MB_FENCED -> mb_state[SRC] = MB_MOVED; mb_epoch[SRC] = E1
#ifdef BROKEN_NO_FENCE
                    :: mb_state[SRC] == MB_ACTIVE -> mb_state[SRC] = MB_MOVED; mb_epoch[SRC] = E1
#endif
                    :: else -> skip
                    fi
                };
                if
                :: mb_state[DST] == MB_ACTIVE && mb_epoch[DST] == E1 &&
                   mb_state[SRC] == MB_MOVED && mb_epoch[SRC] == E1 ->
                    next_phase(P_RETENTION)
                :: else -> skip /* STEP_LATER: the phase runs again */
                fi
            fi

        /* ---- move.c:phase_retention, once the grace period has passed:
         * purge the old copy only if the directory shows a later home that
         * re-verifies (active at the directory's epoch); missing
         * information keeps the copy (Q252869) */
        :: ph == P_RETENTION ->
            atomic {
                MAY_CRASH;
                if
                :: d_home == SRC || d_epoch <= E0 -> flag = true /* keep it */
                :: else ->
                    if
                    :: mb_state[d_home] == MB_ACTIVE && mb_epoch[d_home] == d_epoch ->
                        /* the copy this move left: moved → deleting */
                        if
                        :: mb_state[SRC] == MB_MOVED && mb_epoch[SRC] == E1 -> mb_state[SRC] = MB_DELETING
                        :: else -> skip
                        fi
                    :: else -> failing = true /* does not re-verify: later */
                    fi
                fi
            };
            if
            :: flag -> next_phase(P_DONE)
            :: failing -> skip
            :: else ->
                /* store_fs.c:store_fs_mailbox_purge (DELETING only) */
                atomic {
                    MAY_CRASH;
                    if
                    :: mb_state[SRC] == MB_DELETING ->
                        mb_state[SRC] = MB_NONE; mb_epoch[SRC] = 0; did[SRC] = 0;
                        C(SRC, 0) = 0; C(SRC, 1) = 0; C(SRC, NM - 1) = 0
                    :: else -> skip
                    fi
                };
                next_phase(P_DONE)
            fi

        /* ---- move.c:phase_aborting */
        :: ph == P_ABORTING -> phase_abort(P_ABORTED)
        fi;
        /* STEP_FAIL persisted "aborting": the clean-up follows at once,
         * ending as failed (move.c:move_run) */
        if
        :: failing && j_phase == P_ABORTING -> flag = false; phase_abort(P_FAILED)
        :: else -> skip
        fi
    od
}

/* ---- the mta ---------------------------------------------------------------- */

#define R_OK 0    /* 250: delivered, or "already delivered" (a known id) */
#define R_MOVED 1 /* 451 4.2.1 moved to S epoch E */
#define R_PARK 2  /* 451 4.2.1 move in progress (or another 451) */
#define R_TEMP 3  /* no answer: the store or the connection died */
#define R_RETRY 4 /* redirected: try the new home now */
#define R_RCPT 5  /* RCPT accepted: DATA and the commit follow */

proctype Mta()
{
    byte m; /* the message */
    byte t; /* the store it is tried at */
    byte e; /* the epoch the store's RCPT check saw */
    byte r; /* the store's answer */

    do
    :: atomic { acked == ALL -> REACHED(6, j_phase == P_DONE && mb_state[SRC] == MB_NONE); break }
    :: atomic {
        acked != ALL;
        /* role_mta.c:deliver_message: a due message, in any order (a
         * park or a retry only delays it: time is abstracted away) */
        if
        :: !(acked & BIT(0)) -> m = 0
        :: !(acked & BIT(1)) -> m = 1
#if NM > 2
        :: !(acked & BIT(2)) -> m = 2
#endif
        fi;
        t = cache; /* router.c:router_home: the cache, a hint */
        r = R_RETRY
       };
        do
        :: r == R_RETRY ->
            /* role_store.c:hook_rcpt: the directory decides (not the
             * cache), then the mailbox's state at the directory's epoch;
             * the refusals carry role_store.c:hint_notlive's hint */
            atomic {
                if
                :: d_home != t -> r = R_MOVED
                :: else ->
                    e = d_epoch;
                    if
                    :: mb_state[t] == MB_ACTIVE && mb_epoch[t] == e -> r = R_RCPT
                    :: mb_state[t] == MB_MOVED -> r = R_MOVED
                    :: else -> r = R_PARK /* move in progress; no mailbox: 451 4.3.0 */
                    fi
                fi
            };
            if
            :: r == R_RCPT ->
                /* DATA: role_store.c:hook_data queues the append,
                 * commit_cb → store_fs.c:store_fs_batch_commit →
                 * store_fs_resolve_item decides inside the write
                 * transaction: the mailbox, then the delivery id (a retry
                 * stores nothing twice, whatever the state), then the state
                 * guard (store.c:store_append_allowed: require_live, active
                 * at exactly the RCPT's epoch). */
                atomic {
                    if
                    :: n_store_fault < MAX_STORE_FAULT ->
                        /* the store dies before the commit: the transaction
                         * is gone, the mta sees the connection drop
                         * (role_mta.c:deliver_group) */
                        n_store_fault++; r = R_TEMP
                    :: mb_state[t] == MB_NONE -> r = R_PARK /* STORE_NOTFOUND */
                    :: mb_state[t] != MB_NONE && (did[t] & BIT(m)) ->
                        REACHED(2, t == DST && d_home == DST);
                        r = R_OK /* duplicate */
                    :: mb_state[t] != MB_NONE && !(did[t] & BIT(m)) ->
                        if
#ifdef BROKEN_RCPT_ONLY
                        :: true ->
#else
                        :: mb_state[t] == MB_ACTIVE && mb_epoch[t] == e ->
#endif
                            C(t, m)++; did[t] = did[t] | BIT(m); r = R_OK
                        :: else ->
                            /* STORE_NOTLIVE: role_store.c:reply_results →
                             * hint_notlive */
                            REACHED(1, mb_state[t] == MB_FENCED);
                            if
                            :: mb_state[t] == MB_MOVED -> r = R_MOVED
                            :: else -> r = R_PARK
                            fi
                        fi
                    fi;
                    /* the 250 comes only after the commit; the queue marks
                     * the recipient delivered (role_mta.c:deliver_message →
                     * queue.c:queue_update) — unless the reply is lost:
                     * the store died after its commit, or the connection */
                    if
                    :: r == R_OK && n_store_fault < MAX_STORE_FAULT -> n_store_fault++; r = R_TEMP
                    :: r == R_OK -> acked = acked | BIT(m)
                    :: else -> skip
                    fi
                }
            :: else -> skip
            fi;
            if
            :: r == R_MOVED ->
#ifdef BROKEN_NO_REDIRECT
                r = R_PARK /* the cached home is believed until its TTL */
#else
                /* role_mta.c:classify → router.c:router_redirect: ask the
                 * directory now, replace the cached entry, retry at once at
                 * a new home; park while directory and store disagree */
                atomic {
                    cache = d_home;
                    REACHED(3, t == SRC && cache == DST);
                    if
                    :: cache != t -> t = cache; r = R_RETRY
                    :: else -> r = R_PARK
                    fi
                }
#endif
            :: else -> skip
            fi
        :: r != R_RETRY -> atomic { m = 0; t = 0; e = 0; r = 0; break }
        od
        /* R_PARK: parked, retried soon (role_mta.c:park_next); R_TEMP:
         * retried with backoff; either way the message comes back here */
    od
}

/* ---- the command line -------------------------------------------------------- */

proctype Admin()
{
    byte h, e, s;
    bool done;

    /* `tern user set ADDR --alternate ...` (cli.c:user_set): read the row,
     * change the alternate (not modelled), write every field back with
     * directory.c:dir_user_update — a CAS; on a conflict, read again */
    if
    :: ADMIN & 1 ->
        do
        :: !done ->
            atomic { h = d_home; e = d_epoch; s = d_state; d_unchanged = true } /* dir_user_get */
            atomic {
                if
                :: CAS_OK -> d_home = h; d_epoch = e; d_state = s; done = true
                :: else -> REACHED(7, d_home == DST) /* DIR_CONFLICT */
                fi;
                h = 0; e = 0; s = 0; d_unchanged = false
            }
        :: done -> break
        od
    :: true -> skip
    fi;
    /* `tern move abort ID` (cli.c:cmd_move): the job row's phase becomes
     * "aborting" by a CAS, only in a phase that can be aborted */
    if
    :: atomic { (ADMIN & 2) && ABORTABLE(j_phase) -> j_phase = P_ABORTING }
    :: true -> skip
    fi
}

init
{
    atomic {
        /* the user's mailbox, active on SRC at epoch 1 (the first delivery
         * creates it: role_store.c:hook_rcpt) */
        mb_state[SRC] = MB_ACTIVE;
        mb_epoch[SRC] = E0;
        /* the mta's cache may say either store: it is only a hint */
        if
        :: cache = SRC
        :: cache = DST
        fi;
#if (PROPS & 1)
        run no_loss();
#endif
#if (PROPS & 2)
        run no_dup();
#endif
#if (PROPS & 4)
        run one_home();
#endif
        run Mover();
        run Mta();
        run Admin()
    }
}
