/*
 * dsn — composes delivery status notifications (RFC 3464) as complete
 * RFC 5322 messages, ready to be queued from the null sender. Pure: no I/O.
 *
 * The result is a multipart/report; report-type=delivery-status with three
 * parts: a human-readable text/plain explanation, a message/delivery-status
 * part (Reporting-MTA, Arrival-Date; per recipient Final-Recipient,
 * Original-Recipient when it differs, Action, Status, Diagnostic-Code), and
 * a text/rfc822-headers part with the original message's header. Lines end
 * in CRLF and stay under 998 octets (long diagnostics are cut, control
 * characters replaced). The header carries Auto-Submitted: auto-replied.
 */
#ifndef TERN_DSN_H
#define TERN_DSN_H

#include <stddef.h>
#include <stdint.h>

#include "util/util.h"

struct dsn_rcpt {
    const char *final_rcpt; /* the address that failed */
    const char *orig_rcpt;  /* as given in RCPT TO; NULL if the same */
    const char *status;     /* "5.1.1", "4.4.7" */
    const char *diagnostic; /* the last reply, e.g. "550 5.1.1 <a> user unknown" */
};

struct dsn_info {
    const char *reporting_mta; /* host name */
    const char *sender;        /* the original envelope sender (the DSN's To) */
    const char *queue_id;
    int64_t arrival; /* unix seconds */
    int64_t now;     /* unix seconds: Date */
};

/* Appends the DSN message to out. orig/orig_len: the original message (only
 * its header is copied). */
void dsn_compose(struct buf *out, const struct dsn_info *info, const struct dsn_rcpt *rcpts,
                 size_t n, const void *orig, size_t orig_len);

#endif
