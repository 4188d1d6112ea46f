/*
 * cli_private — helpers the files of src/cli/ share (the move and import
 * commands draw the same progress bar and choose a home the same way).
 * Only src/cli/ includes this.
 */
#ifndef TERN_CLI_PRIVATE_H
#define TERN_CLI_PRIVATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "directory/directory.h"
#include "mail/mail.h"
#include "util/util.h"

/* "tern: MESSAGE" on stderr; returns 1 (a failed command). */
int cli_fail(const char *fmt, ...) TERN_PRINTF(1, 2);
/* The same with "(see 'tern help')"; returns 2 (a usage error). */
int cli_usage(const char *fmt, ...) TERN_PRINTF(1, 2);
/* Finds "--name VALUE" (or --name=VALUE) in argv, removes it, returns the
 * value (NULL if absent). A flag without its value sets *bad. */
const char *cli_take_opt(int *argc, char **argv, const char *name, bool *bad);
/* Finds and removes a boolean "--name". */
bool cli_take_flag(int *argc, char **argv, const char *name);
/* After options were taken: an unknown "--x", or not exactly want_pos
 * arguments, is a usage error (2); else 0. */
int cli_reject_leftover(int argc, char **argv, int want_pos);

/* The store with the fewest users (ties: first by name). 0 or -1. */
int cli_pick_store(struct directory *dir, char out[MAIL_NAME_MAX + 1]);
/* "12.3 MB" and the like. */
void cli_human_bytes(uint64_t b, char *out, size_t outlen);
/* Redraws the one-line progress bar of job j on the terminal: phase,
 * messages, bytes, rate (msg/s) and ETA; full draws the bar complete. */
void cli_progress_bar(const struct dir_job *j, double rate, bool full);

#endif
