/*
 * lmtpc — a blocking LMTP client (RFC 2033) for the mta's delivery workers.
 * One struct lmtpc is one connection, used by one thread; the worker keeps it
 * open between messages (the pool) and drops it after any failure.
 *
 * Every socket operation has a timeout; a peer that stops answering yields
 * an error, never a hang. Replies longer than LMTPC_REPLY_MAX are cut.
 */
#ifndef TERN_LMTPC_H
#define TERN_LMTPC_H

#include <stddef.h>
#include <stdint.h>

#include "mail/mail.h"

#define LMTPC_REPLY_MAX 511

struct lmtpc_reply {
    int code;                       /* 0 = no answer (connection failed) */
    char text[LMTPC_REPLY_MAX + 1]; /* after the code: "4.2.1 <a> moved to s2 epoch 7" */
};

struct lmtpc;

/* Connects to "HOST:PORT", reads the greeting and sends LHLO. NULL with a
 * message in err on failure. */
struct lmtpc *lmtpc_connect(const char *endpoint, unsigned timeout_ms, const char *helo, char *err,
                            size_t errlen);
void lmtpc_close(struct lmtpc **c);

/* One transaction: MAIL FROM:<sender> [XDELIVERYID=id], RCPT TO for each of
 * the n recipients, and (if any was accepted) DATA with msg (dot-stuffed
 * here), all pipelined. replies[i] is the RCPT reply for a refused recipient,
 * else its reply after DATA. Returns 0 when the dialogue completed (all
 * replies valid), -1 when the connection failed midway (recipients without
 * an answer have code 0; close the connection). */
int lmtpc_deliver(struct lmtpc *c, const char *sender, const char *delivery_id,
                  const char *const *rcpts, size_t n, const void *msg, size_t len,
                  struct lmtpc_reply *replies);

/* Reads a store's temporary-failure hint (docs/lmtp.md): returns 1 for
 * "moved to S epoch E" (S into store, E into *epoch_r), 2 for "move in
 * progress", 0 otherwise. */
int lmtpc_hint(const char *text, char store[MAIL_NAME_MAX + 1], uint64_t *epoch_r);

#endif
