/*
 * mime — what an IMAP server needs to know about a message's MIME
 * structure (RFC 3501 §6.4.5, §7.4.2), built on GMime 3: ENVELOPE,
 * BODYSTRUCTURE / BODY, the exact octets of a body section, and decoded
 * header and text for SEARCH.
 *
 * Any octets are a message: malformed input (no header/body separator,
 * missing boundaries, bad encodings, 8-bit headers, NULs) is parsed best
 * effort, never rejected, never crashes. Sections are the original octets
 * of the message (never re-serialized), so BODY[] sizes and partial
 * fetches agree with RFC822.SIZE.
 *
 * Limits: at most MIME_DEPTH_MAX nested multiparts / message/rfc822 parts
 * and MIME_PARTS_MAX parts are structured; deeper or further parts are
 * treated as opaque leaves (text/plain or application/octet-stream).
 *
 * Threading: GMime is initialised once (mime_init(), idempotent, not
 * thread-safe; the first mime_parse() calls it). A struct mime_msg is used
 * by one thread at a time.
 */
#ifndef TERN_MIME_H
#define TERN_MIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/util.h"

#define MIME_DEPTH_MAX 32
#define MIME_PARTS_MAX 2000

void mime_init(void);

struct mime_msg;

/* Parses len octets at data (CRLF or LF lines). data is not copied and
 * must stay valid and unchanged until mime_free(). Never NULL. */
struct mime_msg *mime_parse(const char *data, size_t len);
void mime_free(struct mime_msg **m);

/* Appends the ENVELOPE list: (date subject from sender reply-to to cc bcc
 * in-reply-to message-id), with sender and reply-to defaulting to from as
 * RFC 3501 says, addresses as (name adl mailbox host) with group syntax,
 * strings as imap quoted/literal (headers are given as sent: encoded words
 * stay encoded, as RFC 3501 requires). */
void mime_envelope(struct mime_msg *m, struct buf *out);

/* Appends BODYSTRUCTURE (extensible = true: with the extension data) or
 * BODY (false) for the whole message. */
void mime_bodystructure(struct mime_msg *m, bool extensible, struct buf *out);

enum mime_section {
    MIME_SECTION_OK = 0,
    MIME_SECTION_BAD,  /* the spec is malformed: reply BAD */
    MIME_SECTION_NONE, /* well-formed, but no such part: reply NO */
};
/* Appends the octets of section `spec`, the text between '[' and ']' of a
 * FETCH BODY[...] (RFC 3501 §6.4.5): "" (whole message), "HEADER", "TEXT",
 * "HEADER.FIELDS (A B)", "HEADER.FIELDS.NOT (A B)", "1", "1.2", "1.2.MIME",
 * "2.HEADER" (of a message/rfc822 part), "2.TEXT", "2.HEADER.FIELDS (A)".
 * Part numbers follow RFC 3501: a non-multipart message has part 1 (its
 * body). HEADER.FIELDS returns the matching header lines as sent, in
 * message order, followed by the blank line. Case-insensitive keywords.
 * *error_r (client-safe) on BAD/NONE. */
enum mime_section mime_section_get(struct mime_msg *m, const char *spec, struct buf *out,
                                   const char **error_r);

/* For SEARCH. Appends the values of every top-level header field `name`
 * (case-insensitive), unfolded and with RFC 2047 encoded words decoded to
 * UTF-8, separated by "\n". Returns the number of fields found. */
size_t mime_header_text(struct mime_msg *m, const char *name, struct buf *out);
/* Appends the decoded (transfer encoding and charset to UTF-8) text of
 * every text/ * part, separated by "\n". */
void mime_body_text(struct mime_msg *m, struct buf *out);
/* The Date: header as unix seconds, or -1 if missing or unparsable. */
int64_t mime_date(struct mime_msg *m);

#endif
