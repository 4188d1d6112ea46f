/*
 * mime_private.h — shared inside the mime module only (mime.c: structure
 * and sections; mime_imap.c: ENVELOPE and BODYSTRUCTURE; mime_text.c: the
 * GMime-backed SEARCH helpers). Nothing outside src/mime includes it.
 *
 * The structure is a tree of nodes in one array (indices, not pointers),
 * built from GMime's parse of the message (mime.c; the line scanner there
 * only for messages GMime cannot parse in linear time). Every node has a
 * header [hdr_start, hdr_end) followed by an optional blank line, and a
 * body [body_start, body_end); all are offsets into the caller's octets,
 * so every section is the original bytes. Node 0 is the message. A
 * MULTIPART node's children are its parts; a MESSAGE node (message/rfc822)
 * has exactly one child: the encapsulated message, whose header starts
 * where the part's body starts. The array is in document order.
 */
#ifndef TERN_MIME_PRIVATE_H
#define TERN_MIME_PRIVATE_H

#include "mime/mime.h"

#define MIME_NONE UINT32_MAX /* no node */

enum mime_kind {
    MIME_LEAF = 0,  /* a basic part: its body is opaque octets */
    MIME_MULTIPART, /* children are the parts (maybe none: see mime_imap.c) */
    MIME_MESSAGE,   /* message/rfc822 (7bit/8bit/binary): one child */
    MIME_OPAQUE,    /* a multipart or message/rfc822 not structured (depth,
                       part count or encoding): written as
                       application/octet-stream */
};

/* A raw field value in the message: [off, off + len); set = present. */
struct mime_range {
    size_t off, len;
    bool set;
};

struct mime_node {
    size_t hdr_start, hdr_end, body_start, body_end;
    enum mime_kind kind;
    bool digest_child; /* default type message/rfc822 (RFC 2046 5.1.5) */
    struct mime_range ctype, cte, cid, cdesc, cdisp, clang, cloc, cmd5;
    /* GMime's media type and subtype (GMimeContentType), in mime_msg.strs;
     * len 0 when the node did not come from GMime */
    size_t gtype, gtype_len, gsub, gsub_len;
    uint32_t first_child, next, n_children;
};

struct mime_ctype;

struct mime_msg {
    const char *data;
    size_t len;
    bool parsed;   /* the structure below was built (lazily, on first need) */
    bool by_gmime; /* the structure came from GMime (else: the line scanner) */
    struct mime_node *nodes;
    uint32_t n_nodes;
    struct buf strs; /* the nodes' GMime type and subtype strings */
    /* scratch, reused by every call on this message: */
    struct buf tmp;        /* an unfolded field value */
    struct buf sb;         /* parameter names and values */
    struct buf scratch[4]; /* address parts, merged RFC 2231 values */
    struct mime_ctype *ct; /* parsed Content-Type / -Disposition */
};

/* Builds the structure if not done yet. */
void mime_structure(struct mime_msg *m);
/* The header at pos without boundaries: the empty line's start (or end),
 * and where the body starts. */
void mime_header_bounds(const char *d, size_t pos, size_t end, size_t *hdr_end_r,
                        size_t *body_start_r);

/* One header field: [start, end) with its continuation lines and final line
 * end; the name is [start, start + name_len) without trailing blanks; the
 * raw value [value, value_end) excludes the final line end. */
struct mime_field {
    size_t start, end, name_len, value, value_end;
};
/* Iterates the fields of the header [*pos, end): 1 and *f, or 0 at the end.
 * A line without ':' is a field whose name is the whole line. */
int mime_field_next(const char *d, size_t *pos, size_t end, struct mime_field *f);
bool mime_field_is(const char *d, const struct mime_field *f, const char *name);

/* The value [off, off + len) unfolded (every CR/LF removed, so folds become
 * their blanks), without leading and trailing blanks, NULs made '?'. Into
 * out (reset first); returns out->data (NUL-terminated). */
const char *mime_unfold(const char *p, size_t len, struct buf *out);

/* ---- tokens of structured fields (RFC 5322 3.2, RFC 2045 5.1) ---------- */

/* Skips blanks, line ends and (nested) comments; the last comment's text
 * (without its outer parentheses) in *comment_r/_len_r if not NULL. */
const char *mime_skip_cfws(const char *p, const char *end, const char **comment_r,
                           size_t *comment_len_r);
/* At '"': appends the unescaped content to out, returns past the closing
 * quote (or end if unterminated). */
const char *mime_quoted(const char *p, const char *end, struct buf *out);

/* RFC 2045 token characters (type, subtype, parameter names). */
bool mime_is_token(unsigned char c);

/* Content-Type / Content-Disposition: the leading token(s) and the
 * parameters. Parameter names and values are copied (unquoted) into sb and
 * referred to by offset; at most MIME_PARAMS_MAX are kept. */
#define MIME_PARAMS_MAX 64
struct mime_param {
    size_t name, name_len, value, value_len; /* offsets into sb->data */
};
struct mime_ctype {
    bool valid;             /* type "/" subtype parsed (else text/plain) */
    const char *type, *sub; /* into the message (valid only) */
    size_t type_len, sub_len;
    struct mime_param params[MIME_PARAMS_MAX];
    size_t n_params;
};
/* Parses a Content-Type value [p, p + len). With sb == NULL parameters are
 * skipped. */
void mime_ctype_parse(const char *p, size_t len, struct mime_ctype *ct, struct buf *sb);
/* Parses a Content-Disposition value: the type token in [*type_r,
 * *type_len_r) (0 if none), parameters as above. */
void mime_disp_parse(const char *p, size_t len, const char **type_r, size_t *type_len_r,
                     struct mime_ctype *params, struct buf *sb);
/* The value of parameter `name` (case-insensitive) or NULL. */
const char *mime_param_get(const struct mime_ctype *ct, const struct buf *sb, const char *name,
                           size_t *len_r);
bool mime_eq(const char *p, size_t len, const char *word); /* ASCII case-insensitive */

/* ---- IMAP strings (RFC 3501 4.3) ----------------------------------------- */

/* Quoted (with \ and " escaped) if printable US-ASCII (or TAB) and at most
 * 1024 octets; else a literal {n}\r\n with NUL octets written as '?'. */
void mime_put_string(struct buf *out, const char *s, size_t len);
/* The same, upper-casing ASCII letters. */
void mime_put_upper(struct buf *out, const char *s, size_t len);
void mime_put_nstring(struct buf *out, const struct mime_range *r, const char *data,
                      struct buf *tmp);

#endif
