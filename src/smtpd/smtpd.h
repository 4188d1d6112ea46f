/*
 * smtpd — the server side of an SMTP (RFC 5321) or LMTP (RFC 2033) session,
 * shared by the mta's SMTP server and each store's LMTP server. It owns the
 * dialogue — greeting, HELO/EHLO/LHLO, the MAIL/RCPT/DATA state machine,
 * RSET/NOOP/QUIT/VRFY/HELP, the limits of the smtp engine, error counting,
 * timeouts — and asks its user (the role) only what only the role knows:
 * is this sender/recipient acceptable, and where does a finished message go.
 *
 * Flow of a message: the engine checks command order, SIZE and BODY, and
 * the recipient limit; the role's rcpt() hook accepts or refuses each
 * recipient; when DATA ends cleanly the engine pauses the connection (no
 * more input is read) and calls data(); the role commits the message —
 * typically batching many sessions into one durable commit — and then calls
 * smtpd_data_done() with the replies: one per accepted recipient (LMTP) or
 * one for the message (SMTP). Only then are replies sent and input resumed.
 * A message with framing problems (too big, bare CR/LF, NUL, a line over
 * 998 octets) never reaches data(): the engine refuses it whole.
 *
 * Replies the engine sends on its own (docs/lmtp.md, docs/smtp.md): 500
 * 5.5.2 for over-long lines, bare CR/LF and NUL in commands; 500 5.5.1 for
 * unknown verbs; 502 for STARTTLS/AUTH/BDAT; 503 5.5.1 for commands out of
 * order; 501/555 for malformed arguments and unknown parameters; 552 5.3.4
 * for SIZE; 452 4.5.3 beyond max_recipients; 421 on 10 errors, on too many
 * sessions and on timeouts (idle, deadline, minimum data rate in DATA).
 *
 * Everything runs on the net loop's thread. A session whose connection
 * closes while data() is outstanding stays alive (without a connection)
 * until smtpd_data_done() is called for it.
 */
#ifndef TERN_SMTPD_H
#define TERN_SMTPD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "net/net.h"
#include "smtp/smtp.h"
#include "util/util.h"

#define SMTPD_TEXT_MAX 400

enum smtpd_dialect { SMTPD_SMTP = 0, SMTPD_LMTP };

struct smtpd_config {
    enum smtpd_dialect dialect;
    const char *name;          /* for session ids in logs: "s1", "mta" */
    const char *hostname;      /* in the greeting and the EHLO/LHLO reply */
    uint64_t max_message_size; /* octets, advertised as SIZE */
    unsigned max_recipients;
    unsigned max_sessions;
    const char *const *extensions;  /* more EHLO/LHLO keywords, NULL-terminated */
    const char *const *mail_params; /* MAIL parameters the role handles itself
                                       (besides SIZE and BODY), NULL-terminated */
};

struct smtpd_reply {
    int code;
    const char *enhanced; /* "2.0.0"; NULL for none */
    char text[SMTPD_TEXT_MAX];
};

/* Fills r (printf-style text). */
void smtpd_reply_set(struct smtpd_reply *r, int code, const char *enhanced, const char *fmt, ...)
    TERN_PRINTF(4, 5);

struct smtpd_session;

struct smtpd_hooks {
    /* A new session; returns the role's per-session context. */
    void *(*session_new)(void *server_ctx, struct smtpd_session *s);
    /* MAIL was accepted by the engine (order, path, SIZE, BODY); the role
     * checks its own parameters. Return 0 to accept, -1 with r filled. */
    int (*mail)(void *sctx, const struct smtp_cmd *cmd, struct smtpd_reply *r);
    /* RCPT: fill r; return 0 if the recipient is accepted, -1 if refused. */
    int (*rcpt)(void *sctx, const struct smtp_cmd *cmd, struct smtpd_reply *r);
    /* A clean message for the accepted recipients. msg stays valid until
     * smtpd_data_done(), which the role must call exactly once. */
    void (*data)(void *sctx, const struct buf *msg);
    /* The transaction is over or abandoned (RSET, new HELO, after DATA). */
    void (*reset)(void *sctx);
    /* A verb the engine does not handle (e.g. XSTATS): return 0 after
     * replying with smtpd_send(), -1 for "not implemented". May be NULL. */
    int (*command)(void *sctx, const struct smtp_cmd *cmd, struct smtpd_session *s);
    /* The session is gone: free sctx. */
    void (*session_free)(void *sctx);
};

struct smtpd;

/* Listens on endpoint. NULL with *error_r. cfg strings must outlive it. */
struct smtpd *smtpd_listen(struct net_loop *loop, const char *endpoint,
                           const struct smtpd_config *cfg, const struct smtpd_hooks *hooks,
                           void *server_ctx, const struct net_conn_limits *limits,
                           const char **error_r);
void smtpd_free(struct smtpd **d);

/* Completes the data() call: n replies, one per accepted recipient in RCPT
 * order (LMTP) or exactly one (SMTP). Sends them and resumes the session. */
void smtpd_data_done(struct smtpd_session *s, const struct smtpd_reply *replies, size_t n);

/* Sends one reply now (for command hooks). */
void smtpd_send(struct smtpd_session *s, const struct smtpd_reply *r);

const char *smtpd_session_id(const struct smtpd_session *s);     /* "s1/L12" style */
const char *smtpd_session_peer(const struct smtpd_session *s);   /* "127.0.0.1:5555" */
const char *smtpd_session_helo(const struct smtpd_session *s);   /* as given */
const char *smtpd_session_sender(const struct smtpd_session *s); /* "" for <> */
size_t smtpd_session_rcpts(const struct smtpd_session *s);       /* accepted so far */
bool smtpd_session_esmtp(const struct smtpd_session *s);         /* EHLO/LHLO, not HELO */

#endif
