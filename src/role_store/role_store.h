/*
 * role_store — the store role: one process per store that owns the store's
 * data directory (DATA/stores/NAME, guarded by a lock file) and speaks LMTP
 * (RFC 2033) on the store's endpoint for deliveries.
 *
 * Delivery rules (brief invariants 3 and 4), checked at RCPT against the
 * directory (never a cache) and again atomically at commit in the store:
 *  - a recipient is accepted only if the directory homes the user on this
 *    store and the user's mailbox here is ACTIVE at the directory's epoch;
 *  - a user homed elsewhere gets "451 4.2.1 <addr> moved to S epoch E", a
 *    fenced or staged mailbox "451 4.2.1 <addr> move in progress";
 *  - an address the directory does not know gets 550 5.1.1; a directory
 *    that cannot answer gets 451 4.4.3 (never a 5xx);
 *  - each recipient's 250 after DATA is sent only after the group commit
 *    that made its message durable returned (store_batch_commit);
 *  - MAIL FROM:<s> XDELIVERYID=id makes a retry of the same delivery answer
 *    250 without a second copy.
 * A user's first mailbox is created ACTIVE at the first delivery when the
 * directory homes the user here at epoch 1 (a user that has never moved). A
 * mailbox missing at a later epoch is an anomaly: 451 4.3.0 and a log line,
 * never a new empty mailbox.
 *
 * Extension: XSTATS (not advertised to strangers' tools, documented in
 * docs/lmtp.md) replies with counters: sessions, deliveries, duplicates,
 * commits, fsyncs — used by bench/lmtp_ingest.
 */
#ifndef TERN_ROLE_STORE_H
#define TERN_ROLE_STORE_H

#include "config/config.h"

/* Runs the store role for store `name` until SIGTERM/SIGINT. Returns the
 * process exit status. */
int role_store_main(const struct config *cfg, const char *name);

#endif
