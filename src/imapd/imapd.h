/*
 * imapd — one IMAP4rev1 session (RFC 3501 with IDLE, UIDPLUS, MOVE,
 * NAMESPACE, ID, ENABLE, CONDSTORE, QRESYNC, SPECIAL-USE, LITERAL+,
 * UNSELECT), run on a connected socket with blocking I/O by one thread.
 * docs/imap.md describes what clients see.
 *
 * The session never touches mail directly: after LOGIN it holds a
 * struct sync (sync.h) to the user's home store — TSYNC/1 over TCP in the
 * imap role, the in-process transport in tests — and every read and change
 * goes through it. The store stays the only writer of its data, and a crash
 * here (a parser bug, say) takes no store with it.
 *
 * Selected folder. SELECT loads the folder's live messages (UID, flags,
 * keywords, modseq) into the session. Before each command's reply, and
 * while the client idles as soon as the store says the mailbox changed
 * (sync.h "wait": the store answers after the commit; with a store that
 * does not know WAIT, every idle_check_ms instead), the session asks the
 * store for changes since the modseq it knows (cost: the changes) and reports
 * them: EXISTS for new messages, FETCH FLAGS for flag changes made by other
 * sessions, EXPUNGE (VANISHED under QRESYNC) — the latter never during
 * FETCH, STORE or SEARCH (RFC 3501 §7.4.1), only after other commands.
 *
 * Moves. Every state_check_ms (and before every command) the session
 * checks its mailbox's state on the store; once it is no longer ACTIVE (the
 * mover fenced it, or it moved) the session says
 * "* BYE [UNAVAILABLE] ..." and ends, and the client's next login is routed
 * to the new home, where UIDVALIDITY and UIDs are the same.
 *
 * Limits: struct imap_limits for commands (line, literal, nesting); a
 * literal over the limit is refused before it is read. The idle timeout
 * (at least 30 minutes by RFC 3501) ends a silent session with BYE.
 * Responses never carry internal detail (paths, SQL): store failures are
 * "NO [SERVERBUG] internal error" / "NO [UNAVAILABLE] ...".
 */
#ifndef TERN_IMAPD_H
#define TERN_IMAPD_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "imap/imap.h"
#include "mail/mail.h"
#include "sync/sync.h"

enum imapd_auth {
    IMAPD_AUTH_OK = 0,
    IMAPD_AUTH_FAILED,      /* wrong user or password: NO [AUTHENTICATIONFAILED] */
    IMAPD_AUTH_UNAVAILABLE, /* e.g. the mailbox is being moved: NO [UNAVAILABLE] */
    IMAPD_AUTH_LIMIT,       /* too many sessions for this user: NO [LIMIT] */
};

struct imapd_env {
    struct imap_limits limits;
    const char *hostname;
    unsigned idle_timeout_ms;    /* >= 30 min outside IDLE */
    unsigned idle_check_ms;      /* how often IDLE polls a store without WAIT (e.g. 250) */
    unsigned state_check_ms;     /* how often an idle session checks its mailbox state */
    unsigned auth_fail_delay_ms; /* a failed login is answered this late */
    unsigned auth_fail_max;      /* failed logins before the session ends */
    /* Checks the credentials and connects to the user's home store. On
     * IMAPD_AUTH_OK: *user_r the canonical address (MAIL_ADDR_MAX + 1) and
     * *sync_r an open channel (the session closes it). *why_r: a
     * client-safe reason for the other results. */
    enum imapd_auth (*login)(void *ctx, const char *user, const char *password, char *user_r,
                             struct sync **sync_r, const char **why_r);
    /* A failed login from peer ("ADDR:PORT"): returns how many failures
     * came from the same address recently, this one included (NULL: not
     * counted). From auth_fail_max on, each further failure from that
     * address doubles the delay (up to 64 times auth_fail_delay_ms, at most
     * a minute), so reconnecting after the per-session limit does not make
     * guessing faster. */
    unsigned (*auth_failed)(void *ctx, const char *peer);
    /* The session of user ended (to count sessions per user). */
    void (*logout)(void *ctx, const char *user);
    /* Subscriptions (LSUB): kept outside the store so they survive moves.
     * list: calls cb for each subscribed name of user. 0 or -1. */
    int (*sub_set)(void *ctx, const char *user, const char *name, bool on);
    int (*sub_list)(void *ctx, const char *user, void (*cb)(void *cbctx, const char *name),
                    void *cbctx);
    void *ctx;
    /* Set by the role to stop every session (they end with BYE). */
    const atomic_int *shutdown;
    /* TLS (util.h "TLS server"); NULL: none (STARTTLS is not offered and
     * answered NO). Shared by every session; the role owns it. */
    struct tls_server *tls;
    unsigned tls_handshake_ms; /* a handshake must finish within this */
    /* true: before TLS, CAPABILITY says LOGINDISABLED (and no AUTH=),
     * LOGIN and AUTHENTICATE get NO [PRIVACYREQUIRED] (RFC 3501 6.2.3,
     * RFC 5530). false (a zeroed env): plaintext login is allowed. */
    bool login_needs_tls;
};

/* Runs one session on the connected socket fd until the client logs out,
 * the connection breaks, a limit or the mailbox state ends it. Closes fd.
 * peer: for logs.
 *
 * TLS. With env->tls, the plaintext session offers STARTTLS (RFC 3501
 * 6.2.1, RFC 2595) until login: after its OK, whatever the client sent
 * behind the command in the clear is discarded unread (the command
 * injection of CVE-2011-0411), the handshake runs within
 * env->tls_handshake_ms, and the session goes on inside TLS with the same
 * limits and timeouts (a failed handshake ends it; the reason goes to the
 * log only). STARTTLS inside TLS or after login is BAD. */
void imapd_session_run(int fd, const char *peer, const struct imapd_env *env);
/* The same for an implicit-TLS listener (as port 993): the handshake comes
 * first (env->tls must be set), then the greeting. */
void imapd_session_run_tls(int fd, const char *peer, const struct imapd_env *env);

/* Counters since the process started (for logs and tests). */
struct imapd_stats {
    uint64_t sessions, logins, login_failures, commands, bad_commands;
};
void imapd_stats_get(struct imapd_stats *out);

#endif
