/*
 * serve — the supervisor behind `tern serve`. It takes the data directory's
 * lock (a second `tern serve` on the same data refuses to start), registers
 * the configured stores in the directory, then starts each role as its own
 * process — the same binary, `tern role KIND [NAME]` — and keeps them
 * running:
 *   - a role that exits or dies is restarted after a backoff that starts at
 *     100 ms and doubles up to 10 s; one that ran 30 s counts as healthy
 *     again (its backoff resets);
 *   - SIGTERM or SIGINT stops every role (SIGTERM, then SIGKILL after 10 s)
 *     and exits 0;
 *   - each role gets PR_SET_PDEATHSIG, so a supervisor killed with -9 does
 *     not leave roles behind.
 * Roles talk to each other only over sockets and real protocols; the
 * supervisor passes them nothing but their argv.
 *
 * Role specs: "all" (every role of this build: the mta, the mover and every
 * store), "mta", "mover", "store" (every configured store), "store:NAME",
 * comma-separated.
 */
#ifndef TERN_SERVE_H
#define TERN_SERVE_H

#include "config/config.h"

/* Runs the supervisor. self_exe is the path of the tern binary to exec for
 * roles; config_path may be NULL. Returns the process exit status. */
int serve_main(const struct config *cfg, const char *self_exe, const char *config_path,
               const char *roles);

#endif
