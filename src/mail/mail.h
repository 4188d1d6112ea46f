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

#endif
