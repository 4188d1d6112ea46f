/*
 * role_mover — the mover role: finds move jobs in the directory, claims
 * each under a lease (a compare-and-set on the job row), and runs it with
 * the move engine (move.h) over TSYNC/1 connections to the stores' sync
 * endpoints. At most `[mover] parallel` jobs run at once, one thread each.
 *
 * A mover that dies leaves its leases to expire (lease_ms, a few seconds);
 * the supervisor restarts it, and it — or any other mover — claims the jobs
 * again and resumes each at its persisted phase. Jobs waiting for something
 * (a store down, retention, a suspended cutover) are revisited every second.
 */
#ifndef TERN_ROLE_MOVER_H
#define TERN_ROLE_MOVER_H

#include "config/config.h"

/* Runs the mover until SIGTERM/SIGINT. Returns the exit status. */
int role_mover_main(const struct config *cfg);

#endif
