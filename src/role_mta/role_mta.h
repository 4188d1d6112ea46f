/*
 * role_mta — the mta role: the SMTP server for the local domains, the
 * owner of the durable queue (DATA/queue, one process: lock file), the
 * router and the LMTP delivery to the stores. docs/mta.md describes it for
 * operators; the queue's states are in queue.h.
 *
 * Accept (main thread, libevent via smtpd): RCPT is checked against the
 * router (550 5.7.1 relaying denied for a domain that is not local, 550
 * 5.1.1 for an unknown user, 451 4.4.3 when the directory cannot answer)
 * and expanded into the users to deliver to (aliases, alternates,
 * deliver-both), duplicates once. When DATA ends, the message (with a
 * Received: header) joins a batch; all messages completed in one loop
 * iteration are inserted in one durable queue transaction, and only then
 * does each get its 250 (brief invariant 1).
 *
 * Delivery (worker threads, blocking LMTP over pooled connections): each
 * due recipient goes to its home store with XDELIVERYID = queue id — the
 * store scopes it by mailbox, so (queue id, mailbox) names the delivery and
 * a retry after a lost reply stores nothing twice (invariant 4). Answers:
 *   250                          delivered
 *   451 4.2.1 ... moved to S     the directory is asked at once (never the
 *                                cache), the cache replaced, and the
 *                                recipient retried immediately at S
 *   451 4.2.1 ... move in progress  parked: retry after park_min_ms,
 *                                doubling to park_max_ms, until it passes
 *   other 4xx, no answer         retry_min doubling to retry_max
 *   5xx                          failed
 * A recipient still temporary at the end of the lifetime fails with 4.4.7.
 * A failed recipient's DSN (RFC 3464, from <>) is inserted in the same queue
 * transaction that marks it final (invariant 2); none for a null sender or
 * a DSN. A directory outage is always temporary.
 */
#ifndef TERN_ROLE_MTA_H
#define TERN_ROLE_MTA_H

#include "config/config.h"

/* Runs the mta role until SIGTERM/SIGINT. Returns the exit status. */
int role_mta_main(const struct config *cfg);

#endif
