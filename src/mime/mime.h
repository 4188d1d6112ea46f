/*
 * mime — what an IMAP server needs to know about a message's MIME
 * structure (RFC 3501 §6.4.5, §7.4.2), built on GMime 3: ENVELOPE,
 * BODYSTRUCTURE / BODY, the exact octets of a body section, and decoded
 * header and text for SEARCH.
 *
 * What GMime decides, and what it does not:
 *  - GMime (GMimeParser over the original octets, persistent stream)
 *    decides the part tree: which parts exist, their nesting, the
 *    boundaries (RFC 2231 continuations merged), message/rfc822 parts,
 *    multipart/digest's default type, the media type and subtype of each
 *    part (GMimeContentType), and which header fields belong to which
 *    part and where (g_mime_header_get_offset). A leaf's body is GMime's
 *    content substream. ONE tree serves BODYSTRUCTURE, BODY[section] and
 *    SEARCH's body text, so numbering and octets never disagree.
 *  - The octets around GMime's anchors are read here: where a part starts
 *    (after its delimiter line), where its header ends (the blank line),
 *    where a multipart or message/rfc822 body ends (before the line end
 *    of the next delimiter, RFC 2046 5.1.1), by GMime's own delimiter rule
 *    ("--" boundary ["--"], then only blanks: a line "--bX" is content,
 *    where Dovecot's prefix match would end the part).
 *  - Not GMime: the values RFC 3501 wants as sent. GMime's objects keep
 *    them decoded (RFC 2047 words, RFC 2231 parameters, address display
 *    names) and drop source routes, so ENVELOPE's strings and address
 *    lists, and BODYSTRUCTURE's parameter values, disposition and
 *    language, are parsed here from the raw field value that GMime's
 *    offset points at (mime_field.c, mime_imap.c). SEARCH's decoding
 *    (RFC 2047, charsets, base64/QP, dates) is GMime's (mime_text.c).
 *  - Only message/rfc822 is structured as a message: GMime also makes
 *    message/global and message/news message parts, but RFC 3501's grammar
 *    gives only MESSAGE/RFC822 an envelope, so they are basic parts.
 *  - Where GMime and RFC 2045/2046 (and Dovecot) part ways, they win: a
 *    part with neither header nor content, which GMime drops, is listed
 *    as an empty text/plain part (part numbers as Dovecot's); an invalid
 *    Content-Type is text/plain (RFC 2045 5.2), not GMime's
 *    application/octet-stream.
 *  - GMime's parser recurses per level and checks every open boundary on
 *    each "--" line, so deep nesting costs it depth x lines (200,000
 *    levels in 10 MB did not finish in 10 minutes). A message with more
 *    than MIME_GMIME_NEST_MAX Content-Type fields of multipart or message
 *    type (each level of nesting needs one) is structured by the line
 *    scanner in mime.c instead, with the same rules; the work stays linear.
 *
 * Any octets are a message: malformed input (no header/body separator,
 * missing boundaries, bad encodings, 8-bit headers, NULs) is parsed best
 * effort, never rejected, never crashes. Sections are the original octets
 * of the message (never re-serialized), so BODY[] sizes and partial
 * fetches agree with RFC822.SIZE.
 *
 * Limits: at most MIME_DEPTH_MAX nested multiparts / message/rfc822 parts
 * and MIME_PARTS_MAX parts are structured. A deeper multipart or
 * message/rfc822 part is an opaque leaf (written as APPLICATION/OCTET-STREAM,
 * its octets still its body), as is a message/rfc822 part with a transfer
 * encoding other than 7bit/8bit/binary. Parts past MIME_PARTS_MAX are not
 * listed (their octets stay inside the enclosing multipart's body). A
 * multipart without parts (no boundary, or none found) is written with one
 * empty TEXT/PLAIN part, its part 1 (as Dovecot does: BODYSTRUCTURE needs
 * at least one). Of a repeated Content-* field the last counts (as in
 * GMime). The work is linear in the message size.
 *
 * A part whose blank line is followed at once by a delimiter line is its
 * header fields only (the line end is the delimiter's, RFC 2046 5.1.1): its
 * MIME header has no blank line and its body is empty. A parameter whose
 * quoted string is never closed is dropped. BODYSTRUCTURE's body-fld-md5
 * is the Content-MD5 field as sent. Where tern and Dovecot differ on
 * purpose: docs/imap.md "Differences from Dovecot".
 *
 * Most strings follow Dovecot's output (address placeholders
 * "MISSING_MAILBOX"/"MISSING_DOMAIN", merged RFC 2231 parameters, line
 * counts = LF octets in the body); media type, subtype, parameter names,
 * encoding and disposition type are upper-cased (RFC 3501's examples).
 * Every IMAP string is quoted (with \ and " escaped) when it is printable
 * US-ASCII (TAB allowed) of at most 1024 octets, else a literal; NULs in
 * header values are written as '?'.
 *
 * Memory: GMime's objects live only while the structure is built (the
 * first BODYSTRUCTURE, numbered section or body text); the struct mime_msg
 * then keeps an array of offsets (at most MIME_PARTS_MAX nodes) and the
 * type strings, freed by mime_free().
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
/* more multipart/message Content-Type fields than this: the line scanner */
#define MIME_GMIME_NEST_MAX 64

void mime_init(void);

struct mime_msg;

/* Parses len octets at data (CRLF or LF lines). data is not copied and
 * must stay valid and unchanged until mime_free(). Never NULL. Cheap: the
 * MIME structure is found on first need (BODYSTRUCTURE, a numbered section,
 * body text), then kept; ENVELOPE, HEADER, TEXT and the header helpers read
 * only the top header. */
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
 * N.HEADER, N.TEXT and N.HEADER.FIELDS need part N to be message/rfc822
 * (else NONE); N.MIME is part N's MIME header with its blank line. BAD for:
 * a number that is 0, has a leading zero or exceeds 2^32-1, an empty
 * component ("1..2", "1.", ".1"), an unknown keyword ("1.FOO"), MIME without
 * a part number, HEADER.FIELDS without "(" 1*name ")", junk after it.
 * *error_r (client-safe) on BAD/NONE. */
enum mime_section mime_section_get(struct mime_msg *m, const char *spec, struct buf *out,
                                   const char **error_r);
/* The same without a copy where one is not needed: a section that is one
 * run of the message's octets (every kind but HEADER.FIELDS[.NOT]) is
 * returned as *off_r, *len_r into data and out is left alone; for
 * HEADER.FIELDS[.NOT] the octets are appended to out and *off_r is
 * SIZE_MAX. */
enum mime_section mime_section_locate(struct mime_msg *m, const char *spec, struct buf *out,
                                      size_t *off_r, size_t *len_r, const char **error_r);

/* For SEARCH. Appends the values of every top-level header field `name`
 * (case-insensitive), unfolded and with RFC 2047 encoded words decoded to
 * UTF-8, separated by "\n". Returns the number of fields found. */
size_t mime_header_text(struct mime_msg *m, const char *name, struct buf *out);
/* Appends the decoded (transfer encoding and charset to UTF-8) text of
 * every text/ * part (in document order, inside message/rfc822 parts too),
 * separated by "\n". The output is valid UTF-8; an append that would pass
 * out->max is dropped. */
void mime_body_text(struct mime_msg *m, struct buf *out);
/* The Date: header as unix seconds, or -1 if missing or unparsable. */
int64_t mime_date(struct mime_msg *m);

#endif
