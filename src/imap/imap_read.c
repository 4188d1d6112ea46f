/*
 * imap_read — the command reader (see imap.h, part 1).
 *
 * The reader is a state machine over four modes:
 *
 *   LINE ──LF, line ends in "{n}"──▶ LITERAL ──n octets──▶ LINE (same command)
 *     │  LF, no announcement: IMAP_READ_COMMAND, next command
 *     │  line over line_max / command over command_max: reported, then
 *     ▼
 *   SKIP ──LF, line ended in "{n+}"──▶ SKIP_LITERAL ──n octets──▶ SKIP
 *     │  LF otherwise: next command (nothing more reported)
 *
 * Every octet of a line goes through scan(), which follows quoted strings
 * (so "{5}" inside quotes is text) and a small automaton for the literal
 * announcement at the end of the line ("{" digits ["+"] "}", with a "~"
 * just before the "{" for literal8). SKIP runs the same scanner without
 * storing the octets, so a dropped command that goes on with a
 * non-synchronizing literal is skipped whole and the reader resynchronizes
 * on the next command, never inside literal octets.
 *
 * Literal octets are copied with one buf_append per chunk; only line text
 * is looked at octet by octet. The command buffer has the hard maximum
 * command_max, and every limit is checked before the octets are stored.
 */
#include "imap/imap_private.h"

#include <stdlib.h>
#include <string.h>

/* A buffer that held a large command is released rather than kept. */
#define READER_KEEP_CAP (256 * 1024)
/* Digits of a literal's length: 19 always fit in 64 bits. */
#define LIT_DIGITS_MAX 19

enum reader_mode {
    R_LINE,
    R_LITERAL,
    R_SKIP,
    R_SKIP_LITERAL,
};

/* The literal-announcement automaton over the octets of one line (outside
 * quoted strings). A_CLOSE at the end of the line is an announcement;
 * A_BAD_CLOSE ("{" junk "}") is a malformed one. */
enum ann_state {
    A_NONE,      /* no "{" since the last quoted string or malformed text */
    A_OPEN,      /* "{" digits */
    A_PLUS,      /* "{" digits "+" */
    A_CLOSE,     /* "{" digits ["+"] "}" */
    A_BAD,       /* "{" followed by something that cannot be a length */
    A_BAD_CLOSE, /* ... and then "}" */
};

enum tag_state {
    T_READING,
    T_OK,
    T_BAD,
};

struct imap_reader {
    struct imap_limits lim;
    enum reader_mode mode;
    struct buf cmd; /* the command so far */
    struct imap_lit *lits;
    size_t n_lits, cap_lits;
    struct imap_framed framed;
    bool handed_out; /* framed was returned: reset at the next feed */

    /* the current line */
    size_t line_len; /* octets so far (a CR that may end the line included) */
    bool first_line;
    bool in_quote, escape;
    bool prev_tilde; /* the previous octet was '~' outside quotes */
    bool cr_pending; /* a CR right after "}" that may end the line */
    enum ann_state ann;
    bool plus; /* the announcement has "+" (non-synchronizing) */
    unsigned digits;
    uint64_t value;
    bool binary;
    size_t ann_start; /* offset in the line of '{' or '~' */

    uint64_t left; /* LITERAL / SKIP_LITERAL: octets still to come */

    char tag[IMAP_TAG_MAX + 1];
    size_t tag_len;
    enum tag_state tag_state;
    bool tag_stale; /* the next octet starts a new command: forget the tag */
};

static void line_reset(struct imap_reader *r, bool first)
{
    r->line_len = 0;
    r->first_line = first;
    r->in_quote = r->escape = r->prev_tilde = r->cr_pending = false;
    r->ann = A_NONE;
    r->plus = false;
    r->digits = 0;
    r->value = 0;
    r->binary = false;
    r->ann_start = 0;
}

/* Drops whatever the command holds; the next octet starts a new one. */
static void command_reset(struct imap_reader *r)
{
    if (r->cmd.cap > READER_KEEP_CAP) {
        size_t max = r->cmd.max;
        buf_free(&r->cmd);
        buf_init(&r->cmd, max);
    }
    buf_reset(&r->cmd);
    r->n_lits = 0;
    r->handed_out = false;
    line_reset(r, true);
    r->tag_stale = true;
}

struct imap_reader *imap_reader_new(const struct imap_limits *limits)
{
    ASSERT(limits != NULL);
    ASSERT(limits->line_max > 0 && limits->literal_max > 0 && limits->command_max > 0);
    ASSERT(limits->command_max < SIZE_MAX);
    ASSERT(limits->depth_max > 0 && limits->args_max > 0);
    struct imap_reader *r = xmalloc(sizeof(*r));
    r->lim = *limits;
    /* The structural fence: every path checks command_max before it
     * appends (+1: a final CR), so a refused append is a bug (panic). */
    buf_init(&r->cmd, r->lim.command_max + 1);
    r->mode = R_LINE;
    command_reset(r);
    r->tag_state = T_READING;
    r->tag_stale = false;
    return r;
}

void imap_reader_free(struct imap_reader **rp)
{
    struct imap_reader *r = *rp;
    if (r == NULL)
        return;
    buf_free(&r->cmd);
    free(r->lits);
    xfree(rp);
}

const char *imap_reader_tag(const struct imap_reader *r)
{
    return r->tag_state == T_OK ? r->tag : "";
}

const struct imap_framed *imap_reader_command(struct imap_reader *r)
{
    return r->handed_out ? &r->framed : NULL;
}

static void store(struct imap_reader *r, const char *p, size_t n)
{
    if (buf_append(&r->cmd, p, n) < 0)
        panic("imap: command buffer refused %zu octets below command_max", n);
}

static void tag_octet(struct imap_reader *r, unsigned char c)
{
    if (r->tag_stale) {
        r->tag_stale = false;
        r->tag_len = 0;
        r->tag[0] = '\0';
        r->tag_state = T_READING;
    }
    if (!r->first_line || r->tag_state != T_READING)
        return;
    if (c == ' ') {
        r->tag_state = r->tag_len > 0 ? T_OK : T_BAD;
    } else if (imap_is_tag_char(c) && r->tag_len < IMAP_TAG_MAX) {
        r->tag[r->tag_len++] = (char)c;
        r->tag[r->tag_len] = '\0';
    } else {
        r->tag_state = T_BAD;
    }
}

/* The LF of the command's first line ends a tag that had no SP after it;
 * an empty command has no tag. */
static void tag_line_end(struct imap_reader *r)
{
    if (r->tag_stale) {
        r->tag_stale = false;
        r->tag_len = 0;
        r->tag[0] = '\0';
        r->tag_state = T_BAD;
    } else if (r->first_line && r->tag_state == T_READING) {
        r->tag_state = r->tag_len > 0 ? T_OK : T_BAD;
    }
}

/* One octet of a line that is not its LF. */
static void scan(struct imap_reader *r, unsigned char c)
{
    tag_octet(r, c);
    if (r->cr_pending) {
        /* The CR after "}" did not end the line: "}" was not the last
         * octet, so the text since "{" cannot be an announcement. */
        r->cr_pending = false;
        r->ann = A_BAD;
    }
    if (r->in_quote) {
        if (r->escape)
            r->escape = false;
        else if (c == '\\')
            r->escape = true;
        else if (c == '"')
            r->in_quote = false;
        return;
    }
    bool tilde = r->prev_tilde;
    r->prev_tilde = false;
    switch (c) {
    case '"':
        r->in_quote = true;
        r->ann = A_NONE;
        return;
    case '{':
        r->ann = A_OPEN;
        r->plus = false;
        r->digits = 0;
        r->value = 0;
        r->binary = tilde;
        r->ann_start = tilde ? r->line_len - 1 : r->line_len;
        return;
    case '}':
        if ((r->ann == A_OPEN && r->digits > 0) || r->ann == A_PLUS)
            r->ann = A_CLOSE;
        else if (r->ann != A_NONE)
            r->ann = A_BAD_CLOSE;
        return;
    case '+':
        if (r->ann == A_OPEN && r->digits > 0) {
            r->ann = A_PLUS;
            r->plus = true;
        } else if (r->ann != A_NONE) {
            r->ann = A_BAD;
        }
        return;
    case '\r':
        if (r->ann == A_CLOSE || r->ann == A_BAD_CLOSE) {
            r->cr_pending = true;
            return;
        }
        break;
    case '~':
        r->prev_tilde = true;
        break;
    default:
        if (c >= '0' && c <= '9' && r->ann == A_OPEN) {
            if (++r->digits > LIT_DIGITS_MAX)
                r->ann = A_BAD;
            else
                r->value = r->value * 10 + (uint64_t)(c - '0');
            return;
        }
        break;
    }
    if (r->ann != A_NONE)
        r->ann = A_BAD;
}

/* The LF of a line being kept. Returns the event, or IMAP_READ_MORE to go
 * on reading (a non-synchronizing literal follows). */
static enum imap_read line_end(struct imap_reader *r)
{
    tag_line_end(r);
    if (r->ann == A_BAD_CLOSE) {
        command_reset(r);
        return IMAP_READ_BAD_LITERAL;
    }
    if (r->ann != A_CLOSE) {
        /* The last line: the framed command ends before its CR LF. A CR
         * before the LF belongs to the line only if the line has octets:
         * otherwise it is a literal's last octet. */
        size_t len = r->cmd.len;
        if (r->line_len > 0 && r->cmd.data[len - 1] == '\r')
            r->cmd.len = --len;
        r->framed.data = r->cmd.data != NULL ? r->cmd.data : "";
        r->framed.len = len;
        r->framed.lits = r->lits;
        r->framed.n_lits = r->n_lits;
        r->handed_out = true;
        r->tag_stale = true;
        line_reset(r, true);
        return IMAP_READ_COMMAND;
    }
    bool nonsync = r->plus;
    uint64_t n = r->value;
    /* The announcement's LF is stored too: it needs one more octet. */
    if (n > r->lim.literal_max || r->cmd.len >= r->lim.command_max ||
        n > r->lim.command_max - r->cmd.len - 1 || r->n_lits >= r->lim.args_max) {
        if (nonsync) {
            /* The octets come anyway: skip them and the rest of the
             * command, which the client sends without waiting. */
            buf_reset(&r->cmd);
            r->n_lits = 0;
            r->mode = n > 0 ? R_SKIP_LITERAL : R_SKIP;
            r->left = n;
            line_reset(r, false);
        } else {
            /* The client waits for "+": it will send nothing of this
             * command, so the next octet starts the next one. */
            command_reset(r);
        }
        return IMAP_READ_TOO_BIG;
    }
    if (r->n_lits == r->cap_lits) {
        r->cap_lits = r->cap_lits == 0 ? 4 : r->cap_lits * 2;
        r->lits = xrealloc(r->lits, r->cap_lits * sizeof(*r->lits));
    }
    store(r, "\n", 1);
    size_t line_start = r->cmd.len - r->line_len - 1;
    struct imap_lit *lit = &r->lits[r->n_lits++];
    lit->start = line_start + r->ann_start;
    lit->data = r->cmd.len;
    lit->len = (size_t)n;
    lit->nonsync = nonsync;
    lit->binary = r->binary;
    line_reset(r, false);
    r->left = n;
    r->mode = n > 0 ? R_LITERAL : R_LINE;
    return nonsync ? IMAP_READ_MORE : IMAP_READ_CONTINUE;
}

/* The LF of a line being skipped: a non-synchronizing literal announced at
 * its end belongs to the dropped command and is skipped too (the client
 * sends it without waiting); otherwise the dropped command ends here. */
static void skip_end(struct imap_reader *r)
{
    tag_line_end(r);
    if (r->ann == A_CLOSE && r->plus) {
        r->left = r->value;
        r->mode = r->left > 0 ? R_SKIP_LITERAL : R_SKIP;
        line_reset(r, false);
        return;
    }
    r->mode = R_LINE;
    command_reset(r);
}

/* Gives up on the command being read: the rest of the current line (and
 * what belongs to the command after it) is skipped. */
static void drop_to_skip(struct imap_reader *r)
{
    buf_reset(&r->cmd);
    r->n_lits = 0;
    r->mode = R_SKIP;
}

static enum imap_read feed_line(struct imap_reader *r, const char *p, size_t n, size_t *ip)
{
    size_t i = *ip, run = i;
    enum imap_read ev = IMAP_READ_MORE;
    while (i < n) {
        unsigned char c = (unsigned char)p[i];
        if (c == '\n') {
            store(r, p + run, i - run);
            *ip = i + 1;
            return line_end(r);
        }
        /* A CR may still be the line's end: it is allowed one past
         * line_max and judged by the octet after it. */
        if (r->line_len > r->lim.line_max || (r->line_len == r->lim.line_max && c != '\r')) {
            ev = IMAP_READ_LINE_TOO_LONG;
            break;
        }
        /* Likewise the final CR is not counted to command_max. */
        if (r->cmd.len + (i - run) >= r->lim.command_max &&
            (c != '\r' || r->cmd.len + (i - run) > r->lim.command_max)) {
            ev = IMAP_READ_TOO_BIG;
            break;
        }
        scan(r, c);
        r->line_len++;
        i++;
    }
    *ip = i;
    if (ev != IMAP_READ_MORE) {
        drop_to_skip(r);
        return ev;
    }
    store(r, p + run, i - run);
    return IMAP_READ_MORE;
}

static void feed_skip(struct imap_reader *r, const char *p, size_t n, size_t *ip)
{
    size_t i = *ip;
    while (i < n) {
        unsigned char c = (unsigned char)p[i++];
        if (c == '\n') {
            skip_end(r);
            break;
        }
        scan(r, c);
        r->line_len++;
    }
    *ip = i;
}

enum imap_read imap_reader_feed(struct imap_reader *r, const char *p, size_t n, size_t *used_r)
{
    if (r->handed_out)
        command_reset(r);
    size_t i = 0;
    enum imap_read ev = IMAP_READ_MORE;
    while (i < n && ev == IMAP_READ_MORE) {
        size_t k;
        switch (r->mode) {
        case R_LINE:
            ev = feed_line(r, p, n, &i);
            break;
        case R_LITERAL:
            k = n - i < r->left ? n - i : (size_t)r->left;
            store(r, p + i, k);
            i += k;
            r->left -= k;
            if (r->left == 0)
                r->mode = R_LINE;
            break;
        case R_SKIP:
            feed_skip(r, p, n, &i);
            break;
        case R_SKIP_LITERAL:
            k = n - i < r->left ? n - i : (size_t)r->left;
            i += k;
            r->left -= k;
            if (r->left == 0)
                r->mode = R_SKIP;
            break;
        }
    }
    *used_r = i;
    return ev;
}
