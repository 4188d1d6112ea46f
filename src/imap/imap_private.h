/*
 * imap_private.h — what the reader and the parser of the imap module share
 * (nothing outside src/imap/ includes it): the framed command and the
 * character classes of RFC 3501 §9.
 *
 * A framed command is the octets of one command as the client sent them,
 * lines and literals, without the final line's CRLF (or LF). Every literal
 * is described by a struct imap_lit: where its announcement ("{n}",
 * "{n+}", "~{n}") starts, and where its octets lie. The reader recognizes
 * an announcement only at the end of a line and outside a quoted string,
 * and the parser takes a literal only where a record says one starts, so
 * literal octets can never be mistaken for command text or the reverse.
 */
#ifndef TERN_IMAP_PRIVATE_H
#define TERN_IMAP_PRIVATE_H

#include "imap/imap.h"

struct imap_lit {
    size_t start; /* offset of '{' (of '~' for a literal8) in data */
    size_t data;  /* offset of the first literal octet (after the CRLF) */
    size_t len;   /* octets of the literal */
    bool nonsync; /* "{n+}" (RFC 7888) */
    bool binary;  /* "~{n}" (RFC 3516 literal8) */
};

struct imap_framed {
    const char *data;
    size_t len;
    const struct imap_lit *lits; /* in order of start */
    size_t n_lits;
};

/* CHAR that is not an atom-special: ( ) { SP CTL % * " \ ] and not 8-bit. */
static inline bool imap_is_atom_char(unsigned char c)
{
    if (c <= 0x20 || c >= 0x7f)
        return false;
    switch (c) {
    case '(':
    case ')':
    case '{':
    case '%':
    case '*':
    case '"':
    case '\\':
    case ']':
        return false;
    default:
        return true;
    }
}

/* ASTRING-CHAR = ATOM-CHAR / resp-specials ("]"). */
static inline bool imap_is_astring_char(unsigned char c)
{
    return imap_is_atom_char(c) || c == ']';
}

/* tag = 1*<any ASTRING-CHAR except "+"> */
static inline bool imap_is_tag_char(unsigned char c)
{
    return imap_is_astring_char(c) && c != '+';
}

#endif
