/*
 * mbox — an incremental reader of mbox files, for imports (issue 6). Pure
 * apart from reading its source: no writes, no clocks, no global state.
 *
 * Memory is flat in the file's size: the reader holds one read chunk
 * (read_size), one line (at most line_max), one message (at most msg_max
 * after conversion) and a few header values, whatever the file holds.
 *
 * Splitting (the "loose" rule, which tern follows). A message starts at a
 * From_ line: a line whose first five octets are "From " and that is the
 * first line of the file or follows an empty line. Nothing else on the
 * line decides (sender and date are parsed best effort, see below): mutt's
 * "strict" rule, which also demands a parsable date, merges two messages
 * into one when a writer put an odd date there, and a merged message is a
 * lost one; the loose rule can only split a message whose body holds an
 * unquoted "From " line after an empty line, which writers of the quoted
 * variants never produce, and which Content-Length protects in mboxcl2.
 * Before the first message, any line starting with "From " starts it (the
 * octets before it are reported, see SKIPPED). The empty line before a
 * From_ line (and one empty line at the end of the file) belongs to the
 * separator, not to the message. A UTF-8 byte order mark at the very start
 * of the file is ignored. Lines end at LF; a CR right before it is part of
 * the line ending (CRLF files read like LF files). A file with CR-only line
 * endings (classic Mac OS) is one long line to this reader: it is reported
 * (a line over line_max, or an empty message), never split wrongly.
 *
 * Variants (enum mbox_format), i.e. how a body line that starts with
 * "From " was written and is undone here:
 *   mboxrd   ">From ", ">>From ", ... (any number of '>' then "From ") lose
 *            one '>'. Faithful: the writer quoted every such line.
 *   mboxo    only ">From " loses its '>'. Ambiguous by nature: a body that
 *            really held ">From " reads back as "From " (the writer never
 *            quoted that line, so nobody can tell the two apart).
 *   mboxcl   mboxo quoting, plus a Content-Length: header giving the body's
 *            length in octets as stored in the file.
 *   mboxcl2  no quoting at all; Content-Length: decides where a body ends.
 * In mboxcl and mboxcl2 a message's Content-Length is honoured only when it
 * checks out: the body ends exactly at a line end, followed by the end of
 * the file, a From_ line, or an empty line and then a From_ line or the end
 * of the file. A body shorter than the header says, a missing or malformed
 * header, or one that does not check out, gives the split the separator
 * rule gives (the reader goes back to the first From_ line it passed over,
 * if any), with MBOX_P_CL_WRONG on the message. mboxrd and mboxo ignore
 * Content-Length (a header copied from a message's origin proves nothing).
 *
 * Auto-detection (MBOX_FORMAT_AUTO), on at most the first MBOX_DETECT_BYTES
 * octets (from the start offset): if every message that ends in that sample
 * has a Content-Length that checks out, the file is mboxcl when some body
 * line starts with ">From " and none with "From ", else mboxcl2; in every
 * other case (including an empty sample) it is mboxrd. mboxo is never
 * guessed: read as mboxrd, an mboxo file differs only in a body line that
 * was ">>From ..." before writing, which loses one '>'. The result depends
 * on the file's first octets only; an import records it
 * (mbox_reader_format()) and passes it explicitly on a re-run, so a file
 * that grew is read the same way and every message keeps its identity.
 *
 * Per message (struct mbox_item, kind MBOX_MESSAGE):
 *  - the octets, unquoted and with every line ending CRLF (see
 *    mail_crlf: a bare CR becomes a line ending too), and their SHA-256;
 *  - the byte offset of its From_ line in the file and the octets it takes
 *    there (From_ line and separator included): offset + SHA-256 is the
 *    message's source identity;
 *  - the envelope sender (first word after "From ") and the date after it
 *    (asctime "Sat Jan  3 01:05:34 1996", with an optional numeric or named
 *    zone before or after the year, an optional weekday, two-digit years
 *    read as 1970..2069, trailing text such as "remote from" ignored) as the
 *    internal date in UTC; a date without a numeric zone is taken as UTC
 *    (the writer's zone is unknown); no parsable date: has_date false and
 *    MBOX_P_NO_DATE;
 *  - flags from Status: (R \Seen, O old: not \Recent) and X-Status: (A
 *    \Answered, F \Flagged, D \Deleted, T \Draft), other letters ignored;
 *    keywords from X-Keywords: (separated by spaces and/or commas), each a
 *    valid IMAP atom, duplicates dropped, at most MAIL_KEYWORDS_MAX octets
 *    (an invalid or excess keyword: MBOX_P_BAD_KEYWORD). These headers stay
 *    in the message octets, as every other header does.
 *
 * Everything that can be wrong with input is reported, never a silent stop
 * and never a crash:
 *  - kind MBOX_SKIPPED, a region of the file that yields no message, with
 *    its offset, length and reason (enum mbox_skip): octets before the
 *    first From_ line (binary garbage, or a file that is not an mbox at
 *    all); a message over msg_max octets (its converted size in `len`);
 *    a message with a line over line_max octets; an empty message; NUL
 *    padding at the end of the file (left by a crash while appending); the
 *    "folder internal data" pseudo message UW-IMAP and Pine keep first in a
 *    file (an X-IMAP: header in the first message). Reading goes on after.
 *  - problems (MBOX_P_* bits) on a message that is still returned: NUL
 *    octets, bare CRs, a last line without a newline (a truncated file),
 *    a Content-Length that did not check out or reaches past the end of the
 *    file, no parsable date, a dropped keyword.
 *  - -1 from mbox_next: only a read error of the source (errno kept).
 *
 * A message that ends at the end of the file has `at_eof` set: a reader of
 * a live mailbox that is being appended to cannot tell a finished last
 * message from one half written, and should look again later (or lock the
 * file as its writers do) before trusting it.
 *
 * Threading: a reader is used by one thread at a time.
 */
#ifndef TERN_MBOX_H
#define TERN_MBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "mail/mail.h"
#include "util/util.h"

#define MBOX_LINE_MAX_DEFAULT (1024u * 1024u)       /* octets of one line */
#define MBOX_MSG_MAX_DEFAULT  (64u * 1024u * 1024u) /* octets of one message */
#define MBOX_READ_SIZE        (64u * 1024u)         /* octets per read */
#define MBOX_DETECT_BYTES     (1024u * 1024u)       /* sample for auto-detection */
#define MBOX_SENDER_MAX       255                   /* longer senders are cut */
#define MBOX_HEADER_MAX       (8u * 1024u)          /* a parsed header's value */

enum mbox_format {
    MBOX_FORMAT_AUTO = 0,
    MBOX_FORMAT_RD,
    MBOX_FORMAT_O,
    MBOX_FORMAT_CL,
    MBOX_FORMAT_CL2,
};
/* "auto", "mboxrd", "mboxo", "mboxcl", "mboxcl2". */
const char *mbox_format_name(enum mbox_format f);
/* The inverse of mbox_format_name (also "rd", "o", "cl", "cl2"). 0 or -1. */
int mbox_format_parse(const char *s, enum mbox_format *f_r);

/* Where the octets come from: pread()-like. Returns the number of octets
 * put at p (0 only at the end of the source; fewer than n is fine), or -1
 * with errno set. The reader asks for every offset in increasing order,
 * except that it may go back once per message (a Content-Length that did
 * not check out). */
struct mbox_source {
    ssize_t (*read_at)(void *ctx, void *p, size_t n, uint64_t offset);
    void *ctx;
};

struct mbox_options {
    enum mbox_format format; /* MBOX_FORMAT_AUTO to detect */
    size_t line_max;         /* 0: MBOX_LINE_MAX_DEFAULT */
    size_t msg_max;          /* 0: MBOX_MSG_MAX_DEFAULT */
    size_t read_size;        /* 0: MBOX_READ_SIZE */
    /* Where to start: 0, or the offset of a From_ line (e.g. the end of the
     * last message an earlier pass read); read as if the file began there. */
    uint64_t start;
};

enum mbox_kind {
    MBOX_MESSAGE = 0,
    MBOX_SKIPPED,
};

enum mbox_skip {
    MBOX_SKIP_NONE = 0,
    MBOX_SKIP_GARBAGE,       /* octets before the first From_ line */
    MBOX_SKIP_TOO_BIG,       /* message over msg_max */
    MBOX_SKIP_LINE_TOO_LONG, /* a line over line_max */
    MBOX_SKIP_EMPTY,         /* a From_ line and nothing else */
    MBOX_SKIP_NUL_PADDING,   /* only NULs after the last line */
    MBOX_SKIP_PSEUDO,        /* UW-IMAP's folder internal data */
};
/* A short reason ("message over the size limit", ...). */
const char *mbox_skip_str(enum mbox_skip s);

/* Problems of a message that is returned anyway. */
#define MBOX_P_NUL         0x01u /* NUL octets (kept) */
#define MBOX_P_BARE_CR     0x02u /* CRs not before a LF (made line endings) */
#define MBOX_P_NO_NEWLINE  0x04u /* last line has no newline: truncated? */
#define MBOX_P_CL_WRONG    0x08u /* Content-Length present but not honoured */
#define MBOX_P_TRUNCATED   0x10u /* Content-Length reaches past the end */
#define MBOX_P_NO_DATE     0x20u /* no parsable date on the From_ line */
#define MBOX_P_BAD_KEYWORD 0x40u /* a keyword was dropped */
/* Appends a comma-separated description of problem bits to out. */
void mbox_problems_str(unsigned problems, struct buf *out);

struct mbox_item {
    enum mbox_kind kind;
    enum mbox_skip skip; /* MBOX_SKIPPED: why */
    uint64_t offset;     /* of the From_ line (or of the skipped region) */
    uint64_t raw_len;    /* octets in the file from offset */
    bool at_eof;         /* ended at the end of the file */
    /* MBOX_MESSAGE: the message, valid until the next mbox_next() or
     * mbox_reader_free(). MBOX_SKIPPED for size: data NULL, len the octets
     * it would have had (counted up to its end). */
    const char *data;
    size_t len;
    uint8_t sha256[SHA256_LEN];
    char sender[MBOX_SENDER_MAX + 1];
    bool has_date;
    int64_t internal_date; /* unix seconds, UTC */
    uint32_t flags;        /* MAIL_F_* */
    bool old;              /* Status: O */
    const char *keywords;  /* space-separated, "" if none; valid as data */
    uint32_t uid;          /* X-UID: (0: none, malformed, or given twice) */
    unsigned problems;     /* MBOX_P_* */
};

struct mbox_reader;

/* A reader of `src` (borrowed: it must outlive the reader). opts may be
 * NULL for the defaults. With MBOX_FORMAT_AUTO this reads the detection
 * sample first; -1 then means a read error (*error_r, errno kept). */
int mbox_reader_new(const struct mbox_source *src, const struct mbox_options *opts,
                    struct mbox_reader **r_r, const char **error_r);
/* Opens a file and reads it through a reader (the fd is closed by
 * mbox_reader_free). -1 with *error_r if it cannot be opened or is not a
 * regular file. */
int mbox_reader_open(const char *path, const struct mbox_options *opts, struct mbox_reader **r_r,
                     const char **error_r);
void mbox_reader_free(struct mbox_reader **r);
/* The variant in use (the detected one after MBOX_FORMAT_AUTO). */
enum mbox_format mbox_reader_format(const struct mbox_reader *r);

/* The next message or skipped region: 1 with *item filled, 0 at the end of
 * the file, -1 on a read error (*error_r, errno kept; the reader is then
 * done). Items come in file order and cover the file from the start offset
 * without gaps or overlaps: each item's offset is the previous one's offset
 * + raw_len (a leading byte order mark excepted). */
int mbox_next(struct mbox_reader *r, struct mbox_item *item, const char **error_r);

/* UIDs. UW-IMAP and Dovecot keep an mbox folder's UIDVALIDITY and next UID
 * in the first message's header, "X-IMAPbase: <uidvalidity> <uidnext>
 * [keywords]" (UW-IMAP's pseudo message: "X-IMAP: ..."), and each
 * message's UID in "X-UID: <uid>" (in mbox_item.uid). mbox_uid_base looks
 * at the start of a file (at most MBOX_UID_BASE_SCAN octets of head, which
 * must be the file's first octets): 1 with both numbers (each 1..2^32-1),
 * 0 when the first header has none (*why_r "no X-IMAPbase header", or the
 * file does not start with a From_ line), -1 when it is malformed
 * (*why_r). Nothing of the rest of the file is checked here. */
#define MBOX_UID_BASE_SCAN (64u * 1024u)
int mbox_uid_base(const char *head, size_t len, uint32_t *uidvalidity_r, uint32_t *uidnext_r,
                  const char **why_r);
/* An X-UID value: one number 1..2^32-1 between blanks. 0 or -1. */
int mbox_parse_uid(const char *v, size_t n, uint32_t *uid_r);

/* Parses the part of a From_ line after "From " (sender and date, as
 * above). For tests and the reader. Returns true if a date was found. */
bool mbox_parse_from_line(const char *s, size_t len, char sender[MBOX_SENDER_MAX + 1],
                          int64_t *date_r);

#endif
