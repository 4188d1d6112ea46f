/*
 * maildir — a reader of Maildir and Maildir++ trees, for imports (issue 6).
 * It only reads: nothing in the tree is created, renamed or deleted.
 *
 * Folders (maildir_open). The root is INBOX: a directory with cur/ and/or
 * new/. Each directory entry of the root named ".NAME" that has cur/ or
 * new/ is a Maildir++ folder. Its IMAP name is NAME with every '.' (the
 * Maildir++ hierarchy separator) turned into '/' (tern's): ".Work.2024" is
 * "Work/2024". Names are kept in the IMAP wire form, modified UTF-7 (RFC
 * 3501 5.1.3), since tern stores folder names as clients send them:
 *  - a name that is valid modified UTF-7 (printable ASCII, each '&' opening
 *    a well-formed, canonical "&...-" shift) is kept as it is, so Dovecot's
 *    and Courier's ".Entw&APw-rfe" is "Entw&APw-rfe";
 *  - a name that is not, but is valid UTF-8 (a server storing UTF-8 names,
 *    or a bare '&') is encoded: ".Café" is "Caf&AOk-", ".R&D" is "R&-D";
 *  - anything else (invalid UTF-8, control characters), an empty level
 *    (".a..b", ".a."), a name over MAILDIR_NAME_MAX octets, more than
 *    depth_max levels, or a name equal to INBOX (any case, as IMAP compares
 *    it) is not a folder tern can hold: it is reported in the skipped list
 *    with the reason, never dropped silently.
 * Courier's "INBOX." namespace prefix is not added: folders sit beside
 * INBOX, as Dovecot shows them. Dot-entries that are not directories with
 * cur/ or new/ (dovecot-uidlist, dovecot-keywords, maildirsize, ...) and
 * everything not starting with '.' are not folders and not reported. More
 * than folders_max folders (INBOX and every directory whose name maps, a
 * duplicate included) is an error for the whole tree (a clear refusal, not
 * a partial import). Folders are sorted by name, INBOX first.
 *
 * Messages (maildir_iter_*). A folder's messages are the regular files in
 * new/ and cur/ whose names do not start with '.'; tmp/ is never read
 * (deliveries in progress). They come sorted by UID when the folder's
 * dovecot-uidlist gives UIDs (below; messages without one last), else by
 * identity. Per message:
 *  - the identity: the file's base name up to the first ':' (the info),
 *    without Dovecot's ",S=<size>" and ",W=<size>" fields, which a tool may
 *    add or drop without the message changing;
 *  - flags from the info ":2,LETTERS": D \Draft, F \Flagged, P (passed)
 *    the keyword $Forwarded, R (replied) \Answered, S \Seen, T (trashed)
 *    \Deleted; a lowercase letter a..z is keyword number 0..25 of the
 *    folder's dovecot-keywords file ("N name" lines) when that names one;
 *    an unknown letter, an unmapped or invalid keyword is a problem bit,
 *    not an error; other info versions (":1,...") carry no flags;
 *  - a message in new/ is not \Seen (whatever its name says) and has
 *    is_new set;
 *  - the internal date: the file's mtime (what Dovecot uses as the received
 *    date);
 *  - the octets with every line ending CRLF (mail_crlf) and their SHA-256.
 * A file that vanished between the listing and the read (a mail client
 * moved it from new/ to cur/ or changed its flags: the name changed) is
 * looked for again by identity in new/ and cur/ and read under its new
 * name (MAILDIR_P_RENAMED); if it is gone, it is reported as
 * MAILDIR_VANISHED and iteration goes on. A file over file_max octets is
 * reported as MAILDIR_TOO_BIG (never read), a file that cannot be read
 * (permissions, I/O error, not a regular file or a symbolic link: files are
 * opened with O_NOFOLLOW) as MAILDIR_UNREADABLE, a second file with an
 * identity already seen as MAILDIR_DUPLICATE. More than files_max files in
 * a folder is an error for that folder (maildir_iter_new).
 *
 * Errors: -1 with a short *error_r (static text; errno kept) for what stops
 * a tree or a folder: the root is missing or not a Maildir, a directory
 * cannot be listed, a limit on the number of folders or files. Everything
 * about one message is an item status, so one bad file never stops an
 * import.
 *
 * Threading: one thread at a time per struct maildir and per iterator.
 */
#ifndef TERN_MAILDIR_H
#define TERN_MAILDIR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mail/mail.h"
#include "util/util.h"

#define MAILDIR_NAME_MAX            255 /* octets of an IMAP folder name (STORE_FOLDER_MAX) */
#define MAILDIR_FOLDERS_MAX_DEFAULT 10000
#define MAILDIR_DEPTH_MAX_DEFAULT   32
#define MAILDIR_FILES_MAX_DEFAULT   2000000
#define MAILDIR_FILE_MAX_DEFAULT    (64u * 1024u * 1024u)
#define MAILDIR_KEYWORDS_FILE_MAX   (64u * 1024u)

struct maildir_limits {
    unsigned folders_max; /* 0: MAILDIR_FOLDERS_MAX_DEFAULT */
    unsigned depth_max;   /* hierarchy levels; 0: MAILDIR_DEPTH_MAX_DEFAULT */
    size_t files_max;     /* files per folder; 0: MAILDIR_FILES_MAX_DEFAULT */
    size_t file_max;      /* octets of a message file; 0: MAILDIR_FILE_MAX_DEFAULT */
};

struct maildir;

struct maildir_folder {
    const char *name; /* IMAP name, modified UTF-7, '/' separated; "INBOX" */
    const char *path; /* its directory */
};

/* A directory that looked like a folder and is not one tern can hold. */
struct maildir_skipped {
    const char *dirname; /* the entry in the root, e.g. ".a..b" */
    const char *reason;
};

/* Reads the folder tree under root. -1 with *error_r if root is not a
 * readable directory with cur/ or new/, or has more than folders_max
 * folders. lim may be NULL for the defaults. */
int maildir_open(const char *root, const struct maildir_limits *lim, struct maildir **md_r,
                 const char **error_r);
void maildir_free(struct maildir **md);
size_t maildir_folder_count(const struct maildir *md);
/* Folder i (0 is INBOX), valid until maildir_free. */
const struct maildir_folder *maildir_folder(const struct maildir *md, size_t i);
size_t maildir_skipped_count(const struct maildir *md);
const struct maildir_skipped *maildir_skipped(const struct maildir *md, size_t i);

/* Maps one Maildir++ directory name (".Work.2024") to an IMAP name in out
 * (at least MAILDIR_NAME_MAX + 1 octets). 0, or -1 with a *reason_r (the
 * rules above; INBOX and the depth limit are checked by maildir_open). */
int maildir_folder_name(const char *dirname, char *out, unsigned depth_max, const char **reason_r);

enum maildir_status {
    MAILDIR_OK = 0,
    MAILDIR_VANISHED,   /* gone between listing and reading */
    MAILDIR_TOO_BIG,    /* over file_max: not read */
    MAILDIR_UNREADABLE, /* open/read failed, or not a regular file */
    MAILDIR_DUPLICATE,  /* same identity as an earlier file */
};
const char *maildir_status_str(enum maildir_status s);

/* Problems of a message that is returned anyway. */
#define MAILDIR_P_BARE_CR      0x01u /* CRs not before a LF (made line endings) */
#define MAILDIR_P_NUL          0x02u /* NUL octets (kept) */
#define MAILDIR_P_UNKNOWN_FLAG 0x04u /* an uppercase info letter tern does not know */
#define MAILDIR_P_KEYWORD      0x08u /* a keyword letter without a (valid) name */
#define MAILDIR_P_RENAMED      0x10u /* read under a new name (flags from it) */
#define MAILDIR_P_EMPTY        0x20u /* a file of 0 octets */

struct maildir_msg {
    enum maildir_status status;
    const char *uniq;     /* the identity (see above) */
    const char *filename; /* the file's name when read (or listed) */
    bool is_new;          /* in new/ */
    uint32_t flags;       /* MAIL_F_* */
    const char *keywords; /* space-separated, "" if none */
    int64_t internal_date;
    uint64_t file_size; /* octets on disk */
    /* MAILDIR_OK: the CRLF octets and their SHA-256. */
    const char *data;
    size_t len;
    uint8_t sha256[SHA256_LEN];
    unsigned problems; /* MAILDIR_P_* */
    int error;         /* MAILDIR_UNREADABLE: the errno */
    uint32_t uid;      /* the folder's dovecot-uidlist gives this UID (0: none) */
};

struct maildir_iter;

/* Lists folder i's new/ and cur/ (the folder's dovecot-keywords is read
 * now). -1 with *error_r if a directory cannot be listed (one that does
 * not exist is empty) or holds more than files_max files. */
int maildir_iter_new(struct maildir *md, size_t folder, struct maildir_iter **it_r,
                     const char **error_r);
/* The folder's dovecot-uidlist as read by maildir_iter_new (valid until
 * maildir_iter_free), or NULL with *note_r saying why ("no
 * dovecot-uidlist", or the parser's error). */
const struct maildir_uidlist *maildir_iter_uidlist(const struct maildir_iter *it,
                                                   const char **note_r);
/* 1 with *msg filled (pointers valid until the next call or free), 0 when
 * all are done. Never fails: trouble with a file is its status. */
int maildir_iter_next(struct maildir_iter *it, struct maildir_msg *msg);
/* Files listed in the folder (each is returned once by maildir_iter_next). */
size_t maildir_iter_count(const struct maildir_iter *it);
void maildir_iter_free(struct maildir_iter **it);

/* ---- dovecot-uidlist ----------------------------------------------------------
 * Dovecot keeps a Maildir folder's UIDs in <folder>/dovecot-uidlist. The
 * reader takes version 3:
 *     3 V<uidvalidity> N<nextuid> G<guid> [more "Xvalue" fields]
 *     <uid> [Xvalue ...] :<base name>
 * and version 1 ("1 <uidvalidity> <nextuid>", then "<uid> <file name>").
 * Dovecot appends records without rewriting the header, so the next UID
 * is the larger of the header's N and the last UID + 1. Records of files
 * that are gone (expunged since the last rewrite) are normal.
 * A base name maps to the identity as a file name does (maildir_parse_name:
 * ",S=" and ",W=" dropped). It is outside input: a file over
 * MAILDIR_UIDLIST_FILE_MAX octets, a line over MAILDIR_UIDLIST_LINE_MAX, more
 * entries than entries_max (0: MAILDIR_FILES_MAX_DEFAULT), a last line
 * without its newline (being written), a NUL, a malformed or unknown
 * header, a UID of 0 or over 2^32-1, UIDs not strictly ascending, two UIDs
 * for one identity, a bad file name:
 * each is an error "dovecot-uidlist line N: reason" (or without a line),
 * never a partial list. The caller falls back to new UIDs then. */
#define MAILDIR_UIDLIST_FILE_MAX (256u * 1024u * 1024u)
#define MAILDIR_UIDLIST_LINE_MAX 4096u

struct maildir_uidlist;

/* Parses data[0..len). 0 with *ul_r, or -1 with err. */
int maildir_uidlist_parse(const char *data, size_t len, size_t entries_max,
                          struct maildir_uidlist **ul_r, char *err, size_t errlen);
/* Reads and parses <folder_path>/dovecot-uidlist (O_NOFOLLOW). 0 with
 * *ul_r, 1 if there is none (err "no dovecot-uidlist"), -1 with err. */
int maildir_uidlist_load(const char *folder_path, size_t entries_max, struct maildir_uidlist **ul_r,
                         char *err, size_t errlen);
void maildir_uidlist_free(struct maildir_uidlist **ul);
uint32_t maildir_uidlist_uidvalidity(const struct maildir_uidlist *ul);
uint32_t maildir_uidlist_uidnext(const struct maildir_uidlist *ul);
size_t maildir_uidlist_count(const struct maildir_uidlist *ul);
/* The UID of identity uniq, 0 if it has none (ul may be NULL). */
uint32_t maildir_uidlist_find(const struct maildir_uidlist *ul, const char *uniq);

/* Parses one file name's identity and flags (as above) with a folder's
 * keyword table kw (26 entries, NULL where unset; kw may be NULL). Writes
 * the identity into uniq (at least strlen(name) + 1 octets) and appends
 * keywords to `keywords`. Returns MAILDIR_P_* bits. For tests and the
 * iterator. */
unsigned maildir_parse_name(const char *name, const char *const *kw, char *uniq, uint32_t *flags_r,
                            struct buf *keywords);

#endif
