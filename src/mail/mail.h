/*
 * mail — the smallest mail vocabulary shared by every module above util:
 * address syntax and normalization, store/folder name rules and limits.
 * Depends only on util. Pure functions, no I/O, no allocation unless noted.
 *
 * Addresses. tern handles addresses of the form local@domain where local is
 * an RFC 5321 dot-string (atext and single dots, no leading/trailing dot, no
 * "..") and domain is a DNS name (LDH labels of 1..63 octets separated by
 * single dots, at least one dot not required so "localhost" is accepted).
 * Quoted local parts and address literals ([1.2.3.4]) are refused with a
 * clear error: they are legal in SMTP but tern does not host such mailboxes.
 * The normal form is all lowercase (local parts are treated as
 * case-insensitive, as nearly every mail system does in practice).
 */
#ifndef TERN_MAIL_H
#define TERN_MAIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/util.h"

#define MAIL_LOCAL_MAX  64  /* RFC 5321 4.5.3.1.1 */
#define MAIL_DOMAIN_MAX 253 /* DNS name, no trailing dot */
#define MAIL_ADDR_MAX   254 /* RFC 5321 path limit 256 minus the brackets */
#define MAIL_NAME_MAX   32  /* store names: [a-z0-9_-]{1,32} */

/* Validates and normalizes an address given as `len` bytes at `in` (no angle
 * brackets, not NUL-terminated necessarily). On success writes the lowercase
 * form into out (MAIL_ADDR_MAX + 1 bytes) and returns 0; on failure returns
 * -1 with *error_r set to a static, client-safe text such as
 * "local part too long". */
int mail_addr_normalize(const char *in, size_t len, char out[MAIL_ADDR_MAX + 1],
                        const char **error_r);

/* Points into addr just past the '@' (addr must be normalized). */
const char *mail_addr_domain(const char *addr);

/* Validates a domain name (as above) and writes its lowercase form into out
 * (MAIL_DOMAIN_MAX + 1 bytes). 0 or -1 with *error_r. */
int mail_domain_normalize(const char *in, char out[MAIL_DOMAIN_MAX + 1], const char **error_r);

/* True if name is a valid store name: 1..MAIL_NAME_MAX of [a-z0-9_-]. */
bool mail_store_name_valid(const char *name);

/* ---- message flags, keywords and line endings (mail_text.c) ------------
 * Shared by the readers of foreign mail formats (mbox, maildir) and the
 * modules that store or serve messages. */

/* IMAP system flags as bits; the same values as the store's STORE_F_*
 * (test_maildir.c checks that they agree). \Recent is not a stored flag. */
#define MAIL_F_SEEN     0x01u
#define MAIL_F_ANSWERED 0x02u
#define MAIL_F_FLAGGED  0x04u
#define MAIL_F_DELETED  0x08u
#define MAIL_F_DRAFT    0x10u

/* Octets of a space-separated keyword list (the store's STORE_KEYWORDS_MAX). */
#define MAIL_KEYWORDS_MAX 1024

/* True if s[0..len) is an IMAP flag-keyword: 1..len atom characters (RFC
 * 3501: no SP, CTL, 8-bit, "(){%*\"\\]"), so never a system flag. */
bool mail_keyword_valid(const char *s, size_t len);

/* Adds a keyword to a space-separated list in `list` unless the list holds
 * it already (compared ASCII case-insensitively, as IMAP does). Returns 0
 * (added or already there), -1 if it is not a valid keyword (list
 * unchanged), 1 if the list would exceed MAIL_KEYWORDS_MAX octets (list
 * unchanged). Allocates through `list`. */
int mail_keywords_add(struct buf *list, const char *kw, size_t len);

/* Line-ending normalizer: turns any text into CRLF lines as tern stores
 * them. LF, and CR...CR LF (any CRs right before a LF), end a line as one
 * CRLF; a CR that is not followed by CRs and a LF (a bare CR) ends a line
 * too. So the output never holds a bare CR or a bare LF, and CRLF input is
 * unchanged. Streaming: the result does not depend on how input is cut. */
struct mail_crlf {
    uint64_t pending_cr; /* CRs seen, not yet known to precede a LF */
    uint64_t bare_cr;    /* CRs that were not part of a line ending "CR* LF" */
    uint64_t nul;        /* NUL octets seen (kept as they are) */
};
void mail_crlf_init(struct mail_crlf *c);
/* Appends the normalized form of p[0..n) to out. -1 (out is then partly
 * appended) if out->max would be exceeded, else 0. */
int mail_crlf_feed(struct mail_crlf *c, struct buf *out, const void *p, size_t n);
/* End of input: pending CRs become line endings. 0 or -1 as above. */
int mail_crlf_finish(struct mail_crlf *c, struct buf *out);

#endif
