/*
 * doctor — `tern doctor`: compares the directory with every store whose
 * data is on this host and reports what does not add up:
 *   - a user whose home store has no mailbox for it (after its first move,
 *     when one must exist), or whose mailbox there is not active at the
 *     user's epoch;
 *   - a mailbox live (active, staged or fenced) on a store that is not the
 *     user's home and that no live job explains — a mailbox on two stores;
 *   - a mailbox for an address the directory does not know (kept, reported);
 *   - a fenced mailbox without a live job;
 *   - a job that has kept its source fenced a minute past the cutover budget
 *     ([mover] cutover_budget_ms: a mover resuming it unfences it);
 *   - a job whose lease expired more than a minute ago (stuck).
 * With repair, stuck jobs are resumed (lease cleared, so a mover claims
 * them) or, if still before the switch and asked to, aborted. Nothing is
 * ever deleted: data found where the directory does not expect it is only
 * reported (Q252869).
 */
#ifndef TERN_DOCTOR_H
#define TERN_DOCTOR_H

#include <stdbool.h>
#include <stdio.h>

#include "config/config.h"

/* Prints findings to out; returns the number of problems found (0 = all
 * consistent), or -1 if the directory could not be read. */
int doctor_run(const struct config *cfg, bool repair, FILE *out);

#endif
