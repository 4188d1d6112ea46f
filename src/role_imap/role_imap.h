/*
 * role_imap — the imap role: IMAP4rev1 for mail clients on [imap] listen
 * (127.0.0.1:1143 by default), one thread per session (imapd.h).
 *
 * Routing. LOGIN / AUTHENTICATE PLAIN checks the password against the
 * directory's hash, looks up the user's home store, and opens a TSYNC/1
 * connection to that store's sync endpoint; the session then serves the
 * mailbox through it (docs/imap.md). The role never reads mail files, so a
 * crash here (a parser bug, say) takes no store or queue with it.
 *
 * A login to a mailbox that is being moved (fenced, or the directory
 * finalizing the switch) is refused "NO [UNAVAILABLE]" for the moment; a
 * stale home (the store says "moved") is looked up again once.
 *
 * TLS. With [imap] tls_cert and tls_key, the certificate is loaded once at
 * the start (a bad, unreadable or mismatched pair is fatal, naming the
 * file) and shared by every session: STARTTLS on the plaintext listener,
 * and implicit TLS on [imap] tls_listen if set (the handshake runs on the
 * session's thread, bounded by 30 s, and counts as a session).
 * [imap] plaintext_login = no refuses a login before TLS (imapd.h).
 *
 * Limits: [imap] max_sessions in all (further connections get "* BYE"),
 * max_sessions_per_user ("NO [LIMIT]" at login), and the session limits of
 * imapd.h. Failed logins are delayed (auth_fail_delay_ms), counted per
 * session (auth_fail_max, then BYE) and per client address across sessions
 * (the delay doubles past auth_fail_max in 15 minutes; a bounded table),
 * and logged with the peer.
 */
#ifndef TERN_ROLE_IMAP_H
#define TERN_ROLE_IMAP_H

#include "config/config.h"

/* Runs the imap role until SIGTERM/SIGINT. Returns the exit status. */
int role_imap_main(const struct config *cfg);

#endif
