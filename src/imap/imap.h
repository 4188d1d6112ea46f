/*
 * imap — IMAP4rev1 syntax (RFC 3501 §9, RFC 7888 LITERAL+), pure: no I/O,
 * no mailbox knowledge. Three parts, each with hard limits and a
 * client-safe error for every way input can be wrong:
 *
 *  1. The command reader frames a byte stream into whole commands: a line,
 *     or lines joined by literals ("{12}\r\n" + 12 octets, or "{12+}\r\n"
 *     for LITERAL+). It tells the caller when a synchronizing literal needs
 *     a "+ " continuation, and refuses a literal over the limit *before*
 *     any of its octets is read.
 *  2. The argument parser turns one framed command into a tag, a command
 *     name and a tree of arguments (atoms, strings, NIL, lists).
 *  3. Helpers: sequence sets, modified UTF-7 (RFC 3501 §5.1.3), and writing
 *     strings in responses (atom/quoted/literal as the bytes require).
 *
 * Limits (struct imap_limits, all > 0; 0 is a bug and panics): line_max
 * octets per line (not counting literals, nor the line's CRLF), literal_max
 * octets per literal, command_max octets of one framed command in all
 * (lines with the CRLFs that end literal announcements, and literal
 * octets; not the final CRLF), depth_max nesting of parenthesized lists,
 * args_max argument nodes per command (atoms, strings, NILs and lists all
 * count; it also caps the literals of one command).
 *
 * Lines end in CRLF; a bare LF is accepted as a line end too (as Dovecot
 * does), any other CR is text the parser refuses. Nothing here aborts on
 * input: every malformed input is an IMAP_READ_* event or a -1 with a
 * client-safe text. Nothing is thread-safe; each object belongs to one
 * session.
 */
#ifndef TERN_IMAP_H
#define TERN_IMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/util.h"

#define IMAP_TAG_MAX 64 /* octets of a tag */
/* Not enforced by the parser: sequence sets and FETCH items such as
 * BODY.PEEK[HEADER.FIELDS (...)] legitimately run longer, and line_max
 * already bounds every atom. The longest flag keyword the server should
 * accept. */
#define IMAP_ATOM_MAX 1024
/* The most elements ("a" or "a:b") a sequence set may have. */
#define IMAP_SEQSET_MAX 10000
/* imap_write_string quotes strings shorter than this; longer is a literal. */
#define IMAP_QUOTED_MAX 1024

struct imap_limits {
    size_t line_max;    /* default 65536 */
    size_t literal_max; /* default 64 MiB (APPEND) */
    size_t command_max; /* default literal_max + 1 MiB */
    unsigned depth_max; /* default 16 */
    unsigned args_max;  /* default 4096 */
};
void imap_limits_default(struct imap_limits *l);

/* ---- 1. the command reader -------------------------------------------- */

enum imap_read {
    IMAP_READ_MORE = 0,      /* consumed what it could; feed more bytes */
    IMAP_READ_COMMAND,       /* a whole command is ready: imap_reader_command() */
    IMAP_READ_CONTINUE,      /* a synchronizing literal {n} was announced and is
                                within limits: send "+ OK\r\n", then feed more */
    IMAP_READ_TOO_BIG,       /* a literal over literal_max was announced, or the
                                command would exceed command_max (by a literal or
                                by line text) or hold more than args_max
                                literals. The command is dropped. Synchronizing
                                {n}: the client will not send it; the reader is
                                ready for the next command (reply
                                "tag NO [TOOBIG] ..."). Non-synchronizing {n+}
                                (or limit crossed inside a line): the client
                                sends the rest anyway; the reader discards it
                                (the literal's octets, the rest of the command,
                                including further {n+} literals) and then is
                                ready. Reply "tag NO [TOOBIG]" (or BYE and close,
                                as RFC 7888 allows). */
    IMAP_READ_LINE_TOO_LONG, /* a line over line_max: the reader skips input up
                                to the next LF outside any literal, then is
                                ready again (reply "* BAD line too long").
                                Reported once, when the limit is crossed. */
    IMAP_READ_BAD_LITERAL,   /* a line ends in "{...}" that is not "{" 1*19DIGIT
                                ["+"] "}" (e.g. {12a}, {}, {+}, or
                                {99999999999999999999}, too many digits): the
                                command so far, that line included, is dropped
                                and the reader is ready for the next one; reply
                                BAD. */
};

struct imap_reader;
struct imap_framed; /* one framed command, owned by the reader */

struct imap_reader *imap_reader_new(const struct imap_limits *limits);
void imap_reader_free(struct imap_reader **r);
/* Consumes up to n octets from p; *used_r is how many it took (the rest must
 * be offered again after the caller acted on the result). Never buffers more
 * than line_max + command_max octets. */
enum imap_read imap_reader_feed(struct imap_reader *r, const char *p, size_t n, size_t *used_r);
/* After IMAP_READ_COMMAND: the framed command (NULL after any other
 * result). Literal octets are kept verbatim and marked so the argument
 * parser can tell "{3}\r\nabc" from text. Valid until the next feed. The
 * reader is then ready for the next command. */
const struct imap_framed *imap_reader_command(struct imap_reader *r);
/* The tag of the command being read so far, or of the one just returned or
 * dropped ("" if none yet, or if it is not a valid tag): for replies to
 * IMAP_READ_TOO_BIG and friends. A tag counts once its SP (or the end of
 * its line) was read; it is forgotten when the next command begins. */
const char *imap_reader_tag(const struct imap_reader *r);

/* ---- 2. arguments ----------------------------------------------------- */

enum imap_arg_type {
    IMAP_ARG_ATOM = 0, /* includes numbers and flags like \Seen; an atom that
                          contains '[' runs to the matching ']' including
                          spaces and parentheses inside, then continues with
                          atom characters, so BODY[HEADER.FIELDS (A B)]<0.9>
                          is one atom */
    IMAP_ARG_STRING,   /* quoted string (unescaped) */
    IMAP_ARG_LITERAL,  /* literal string (octets as sent; may contain NUL;
                          literal8 tells "~{n}" from "{n}") */
    IMAP_ARG_NIL,      /* the atom NIL, any case */
    IMAP_ARG_LIST,     /* ( ... ) */
};

struct imap_arg {
    enum imap_arg_type type;
    const char *str; /* ATOM/NIL/STRING/LITERAL: NUL-terminated (a LITERAL
                        may also hold NULs: use len); "" for a LIST */
    size_t len;
    const struct imap_arg *list; /* LIST: its elements (NULL if none) */
    size_t n;                    /* LIST: how many */
    bool literal8;               /* LITERAL sent as "~{n}" (RFC 3516) */
};

struct imap_command {
    char tag[IMAP_TAG_MAX + 1];
    char name[32];               /* upper-cased: "UID FETCH" is name "UID" */
    const struct imap_arg *args; /* the arguments after the name (NULL if none) */
    size_t n_args;
};

struct imap_parser;
struct imap_parser *imap_parser_new(const struct imap_limits *limits);
void imap_parser_free(struct imap_parser **p);
/* Parses one framed command into cmd (storage owned by the parser, valid
 * until the next parse; literal octets are copied, so the reader may be fed
 * meanwhile). 0, or -1 with a client-safe static *error_r ("unbalanced
 * parenthesis: missing ')'", "missing tag", "invalid tag", "unterminated
 * quoted string", "8-bit octet in quoted string (use a literal)", "nesting
 * too deep", "too many arguments", ...). On -1 cmd->tag is filled if a
 * valid tag was read (reply "tag BAD ..."), else it is "" (reply
 * "* BAD ..."). Tags are 1..IMAP_TAG_MAX ASTRING-CHARs except '+'. Command
 * names are 1..31 letters. Arguments are separated by one or more SP (a
 * trailing SP is tolerated); quoted strings are 7-bit without CR, LF or NUL
 * and know only the escapes \\ and \"; atoms are RFC 3501 ATOM-CHARs plus
 * what commands need: '%' and '*' (LIST patterns, sequence sets), ']', a
 * leading '\' (flags, "\*"), and "[...]" sections as described above (a
 * literal inside "[...]" is refused). */
int imap_parse(struct imap_parser *p, const struct imap_framed *f, struct imap_command *cmd,
               const char **error_r);
/* Parses text (no literals) the same way, for tests and fuzzing. */
int imap_parse_text(struct imap_parser *p, const char *text, size_t len, struct imap_command *cmd,
                    const char **error_r);

/* Helpers over arguments: an astring (atom, quoted or literal) as a string;
 * false for a list or for an atom with other than ASTRING-CHARs (e.g.
 * "\Seen", "a*", "BODY[1 2]"). The atom NIL is the string "NIL" here, as
 * the RFC 3501 astring grammar has it (a mailbox may be called NIL). */
bool imap_arg_astring(const struct imap_arg *a, const char **s_r, size_t *len_r);
/* An atom (or NIL) equal (ASCII case-insensitive) to word. */
bool imap_arg_atom_is(const struct imap_arg *a, const char *word);

/* ---- 3. helpers -------------------------------------------------------- */

/* A sequence set (RFC 3501 seq-set): numbers 1..4294967295 (no leading
 * zeros) or '*', ranges a:b in either order, elements separated by ','.
 * '*' stands for star_value (the highest sequence number or UID; 0 when
 * the mailbox is empty). Returns 0 and a malloc'd array of normalized
 * ranges (lo <= hi, sorted, merged; the caller frees it) or -1 with a
 * static *error_r for bad syntax (empty set or element, trailing ',', any
 * other character), 0, a number over 4294967295, or more than
 * IMAP_SEQSET_MAX elements. With star_value == 0 a '*' is an error ("no
 * messages"). The caller checks numbers against the mailbox. */
struct imap_range {
    uint32_t lo, hi;
};
int imap_seqset_parse(const char *s, uint32_t star_value, struct imap_range **ranges_r, size_t *n_r,
                      const char **error_r);
bool imap_seqset_contains(const struct imap_range *r, size_t n, uint32_t v);

/* Modified UTF-7 (RFC 3501 §5.1.3). mutf7 -> UTF-8 appended to out; -1
 * (out unchanged) if invalid or not in canonical form: a raw octet outside
 * 0x20..0x7e, "&" not followed by "-" or base64, a shift not closed by "-",
 * a character outside the modified base64 alphabet in a shift, an encoded
 * printable ASCII character (or "&": that is "&-"), a shift with
 * superfluous characters or non-zero padding bits, a shift right after
 * another ("&AOk-&AOk-" is "&AOkA6Q-"), an unpaired UTF-16 surrogate, an
 * encoded U+0000; or if out's max is reached. */
int imap_mutf7_to_utf8(const char *in, size_t len, struct buf *out);
/* UTF-8 -> canonical modified UTF-7 appended to out; -1 (out unchanged) if
 * in is not valid UTF-8 (overlong forms, surrogates, over U+10FFFF,
 * truncated sequences), holds a NUL, or out's max is reached. */
int imap_utf8_to_mutf7(const char *in, size_t len, struct buf *out);

/* Appends s as an IMAP string: quoted (with '"' and '\\' escaped) if it is
 * shorter than IMAP_QUOTED_MAX and only printable 7-bit (0x20..0x7e), else
 * as a literal {n}\r\n... (a NUL cannot be sent in a literal either: that is
 * the caller's to avoid). out must have room (max 0 or large enough): a
 * refused append is a bug and panics. */
void imap_write_string(struct buf *out, const char *s, size_t len);
/* As imap_write_string, but NIL for s == NULL. */
void imap_write_nstring(struct buf *out, const char *s, size_t len);
/* An astring: a bare atom when s is a non-empty atom without "[" (which
 * parsers take for a section) and not "NIL" in any case, else as
 * imap_write_string. */
void imap_write_astring(struct buf *out, const char *s, size_t len);

#endif
