/* mbox — see mbox.h. */
#include "mbox/mbox.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* Where the reader is in the file.
 *
 *   START ──From_──▶ HEADERS ──empty line──▶ BODY (separator rule)
 *                                     │
 *                                     └─(Content-Length honoured)─▶ CL_BODY
 *   CL_BODY ──body ends at a line end──▶ CL_AFTER ──From_ / EOF──▶ message done
 *   CL_BODY / CL_AFTER ──does not check out──▶ back to the first From_ line
 *                        passed over (then START), or on in BODY
 *   BODY ──empty line + From_──▶ message done, the From_ line starts the next
 */
enum state { ST_START = 0, ST_HEADERS, ST_BODY, ST_CL_BODY, ST_CL_AFTER, ST_DONE };

/* Headers the reader looks at. */
enum hdr { H_NONE = 0, H_STATUS, H_XSTATUS, H_XKEYWORDS, H_CLEN, H_XIMAP, H_XUID };

struct line {
    uint64_t off; /* offset of its first octet */
    uint64_t raw; /* octets consumed, LF included */
    size_t clen;  /* content length in r->line without trailing CRs */
    size_t ncr;   /* trailing CRs */
    bool lf;      /* ended with a LF */
    bool too_long;
    bool all_nul; /* every content octet is NUL (and there is one) */
};

/* A From_ line passed over inside a Content-Length body: where to go back
 * to if that Content-Length does not check out. */
struct snapshot {
    bool set;
    uint64_t off;      /* of the From_ line */
    uint64_t msg_size; /* the message before the empty line ahead of it */
    unsigned problems;
    bool long_line;
};

struct mbox_reader {
    struct mbox_source src;
    int fd; /* mbox_reader_open's, else -1 */
    enum mbox_format format;
    bool honour_cl;
    int unquote; /* 0 none, 1 ">From " (mboxo), 2 ">+From " (mboxrd) */
    bool detect; /* detection pass: no message octets kept */
    size_t line_max, msg_max, read_size;
    uint64_t start;

    /* input */
    char *chunk;
    size_t chunk_len, chunk_pos;
    uint64_t pos; /* file offset of chunk[chunk_pos] */
    bool eof;

    /* the current line */
    struct buf line;
    struct line l;
    bool have_line; /* l / line hold a line not yet handled */

    enum state st;
    uint64_t items; /* returned so far */
    /* before the first message */
    bool garbage;
    uint64_t garbage_off;

    /* the current message */
    uint64_t msg_off;
    struct buf msg;       /* converted octets (max msg_max) */
    uint64_t msg_size;    /* converted octets counted, kept or not */
    struct buf scratch;   /* one converted line */
    bool overflow;        /* over msg_max ... */
    uint64_t overflow_at; /* ... from this many octets on */
    bool long_line;       /* a line over line_max */
    unsigned problems;
    char sender[MBOX_SENDER_MAX + 1];
    bool has_date;
    int64_t date;
    uint32_t flags;
    bool old;
    struct buf keywords;
    bool x_imap;
    uint32_t uid;               /* X-UID (0: none, malformed or repeated) */
    bool uid_seen;              /* an X-UID header was seen */
    bool pending_blank;         /* BODY: an empty line not yet known to be body */
    bool last_blank;            /* the last line added was empty */
    uint64_t size_before_blank; /* msg_size before it */
    bool cl_seen, cl_bad;
    uint64_t cl;
    uint64_t cl_end; /* file offset where the body ends by Content-Length */
    bool cl_blank;   /* CL_AFTER: the empty line after the body seen */
    bool cl_ok;      /* the item returned last honoured its Content-Length */
    struct snapshot snap;
    /* header being read */
    enum hdr hdr;
    struct buf hval;

    /* NUL padding seen at the end, to report after the message it ended */
    bool pad_pending;
    uint64_t pad_off, pad_len;

    /* detection evidence */
    bool ev_bare_from, ev_quoted_from;
};

const char *mbox_format_name(enum mbox_format f)
{
    switch (f) {
    case MBOX_FORMAT_AUTO:
        return "auto";
    case MBOX_FORMAT_RD:
        return "mboxrd";
    case MBOX_FORMAT_O:
        return "mboxo";
    case MBOX_FORMAT_CL:
        return "mboxcl";
    case MBOX_FORMAT_CL2:
        return "mboxcl2";
    }
    return "?";
}

int mbox_format_parse(const char *s, enum mbox_format *f_r)
{
    static const struct {
        const char *name;
        enum mbox_format f;
    } names[] = {
        {"auto", MBOX_FORMAT_AUTO}, {"mboxrd", MBOX_FORMAT_RD},   {"rd", MBOX_FORMAT_RD},
        {"mboxo", MBOX_FORMAT_O},   {"o", MBOX_FORMAT_O},         {"mboxcl", MBOX_FORMAT_CL},
        {"cl", MBOX_FORMAT_CL},     {"mboxcl2", MBOX_FORMAT_CL2}, {"cl2", MBOX_FORMAT_CL2},
    };
    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        if (strcasecmp(s, names[i].name) == 0) {
            *f_r = names[i].f;
            return 0;
        }
    }
    return -1;
}

const char *mbox_skip_str(enum mbox_skip s)
{
    switch (s) {
    case MBOX_SKIP_NONE:
        return "not skipped";
    case MBOX_SKIP_GARBAGE:
        return "data before the first From_ line";
    case MBOX_SKIP_TOO_BIG:
        return "message over the size limit";
    case MBOX_SKIP_LINE_TOO_LONG:
        return "line over the length limit";
    case MBOX_SKIP_EMPTY:
        return "empty message";
    case MBOX_SKIP_NUL_PADDING:
        return "NUL padding at the end of the file";
    case MBOX_SKIP_PSEUDO:
        return "folder internal data (UW-IMAP pseudo message)";
    }
    return "?";
}

void mbox_problems_str(unsigned problems, struct buf *out)
{
    static const struct {
        unsigned bit;
        const char *text;
    } names[] = {
        {MBOX_P_NUL, "NUL octets"},
        {MBOX_P_BARE_CR, "bare CR"},
        {MBOX_P_NO_NEWLINE, "last line without newline"},
        {MBOX_P_CL_WRONG, "Content-Length not honoured"},
        {MBOX_P_TRUNCATED, "Content-Length past the end of the file"},
        {MBOX_P_NO_DATE, "no date on the From_ line"},
        {MBOX_P_BAD_KEYWORD, "keyword dropped"},
    };
    bool first = true;
    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        if ((problems & names[i].bit) == 0)
            continue;
        buf_printf(out, "%s%s", first ? "" : ", ", names[i].text);
        first = false;
    }
}

/* ---- From_ line: sender and date ---------------------------------------- */

static int month_of(const char *t, size_t n)
{
    static const char *const months[] = {"jan", "feb", "mar", "apr", "may", "jun",
                                         "jul", "aug", "sep", "oct", "nov", "dec"};
    static const char *const full[] = {"january",   "february", "march",    "april",
                                       "may",       "june",     "july",     "august",
                                       "september", "october",  "november", "december"};
    for (int i = 0; i < 12; i++) {
        if ((n == 3 && strncasecmp(t, months[i], 3) == 0) ||
            (n == strlen(full[i]) && strncasecmp(t, full[i], n) == 0))
            return i;
    }
    return -1;
}

static bool is_weekday(const char *t, size_t n)
{
    static const char *const days[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};
    static const char *const full[] = {"sunday",   "monday", "tuesday", "wednesday",
                                       "thursday", "friday", "saturday"};
    for (int i = 0; i < 7; i++) {
        if ((n == 3 && strncasecmp(t, days[i], 3) == 0) ||
            (n == strlen(full[i]) && strncasecmp(t, full[i], n) == 0))
            return true;
    }
    return false;
}

static bool all_digits(const char *t, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)t[i]))
            return false;
    }
    return true;
}

static bool all_alpha(const char *t, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!isalpha((unsigned char)t[i]))
            return false;
    }
    return true;
}

static int num(const char *t, size_t n)
{
    int v = 0;
    for (size_t i = 0; i < n; i++)
        v = v * 10 + (t[i] - '0');
    return v;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int days_in_month(int y, int m)
{
    static const int dm[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m == 1 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
        return 29;
    return dm[m];
}

/* Parses a date from whitespace-separated tokens in s[0..len). */
static bool parse_date(const char *s, size_t len, int64_t *date_r)
{
    int mon = -1, day = -1, year = -1, hh = -1, mm = -1, ss = 0;
    bool any = false, have_zone = false;
    int zone_min = 0;
    size_t i = 0;
    while (i < len) {
        while (i < len && (s[i] == ' ' || s[i] == '\t'))
            i++;
        if (i >= len)
            break;
        const char *t = s + i;
        size_t n = 0;
        while (i < len && s[i] != ' ' && s[i] != '\t') {
            i++;
            n++;
        }
        bool complete = mon >= 0 && day >= 0 && year >= 0 && hh >= 0;
        if (n > 0 && t[n - 1] == ',')
            n--;
        if (n == 0)
            continue;
        if (!any && is_weekday(t, n)) {
            any = true;
            continue;
        }
        any = true;
        int m;
        if (mon < 0 && (m = month_of(t, n)) >= 0) {
            mon = m;
        } else if (hh < 0 && (n == 4 || n == 5 || n == 7 || n == 8) && memchr(t, ':', n)) {
            /* H:MM, HH:MM, H:MM:SS, HH:MM:SS */
            size_t c1 = (size_t)((const char *)memchr(t, ':', n) - t);
            if (c1 < 1 || c1 > 2 || !all_digits(t, c1) || n < c1 + 3 || !all_digits(t + c1 + 1, 2))
                return false;
            hh = num(t, c1);
            mm = num(t + c1 + 1, 2);
            if (n > c1 + 3) {
                if (n != c1 + 6 || t[c1 + 3] != ':' || !all_digits(t + c1 + 4, 2))
                    return false;
                ss = num(t + c1 + 4, 2);
            }
            if (hh > 23 || mm > 59 || ss > 60)
                return false;
        } else if (!have_zone && n == 5 && (t[0] == '+' || t[0] == '-') && all_digits(t + 1, 4)) {
            int zh = num(t + 1, 2), zm = num(t + 3, 2);
            if (zh > 23 || zm > 59) {
                if (complete)
                    break; /* not a zone: trailing information */
                return false;
            }
            zone_min = (zh * 60 + zm) * (t[0] == '-' ? -1 : 1);
            have_zone = true;
        } else if (all_digits(t, n) && n <= 2 && day < 0) {
            day = num(t, n);
        } else if (all_digits(t, n) && (n == 2 || n == 4) && year < 0) {
            year = num(t, n);
            if (n == 2)
                year += year >= 70 ? 1900 : 2000;
        } else if (all_alpha(t, n) && n <= 5 && hh >= 0) {
            /* a named zone ("GMT", "CET DST"): taken as UTC */
        } else if (complete) {
            break; /* trailing information ("remote from host") */
        } else {
            return false;
        }
    }
    if (mon < 0 || day < 1 || year < 1900 || hh < 0)
        return false;
    if (day > days_in_month(year, mon))
        return false;
    if (ss == 60)
        ss = 59;
    int64_t t = days_from_civil(year, mon + 1, day) * 86400 + hh * 3600 + mm * 60 + ss;
    *date_r = t - (int64_t)zone_min * 60;
    return true;
}

bool mbox_parse_from_line(const char *s, size_t len, char sender[MBOX_SENDER_MAX + 1],
                          int64_t *date_r)
{
    size_t i = 0;
    while (i < len && (s[i] == ' ' || s[i] == '\t'))
        i++;
    size_t b = i;
    while (i < len && s[i] != ' ' && s[i] != '\t')
        i++;
    size_t n = i - b;
    if (n > MBOX_SENDER_MAX)
        n = MBOX_SENDER_MAX;
    memcpy(sender, s + b, n);
    sender[n] = '\0';
    /* Keep the sender printable: it goes to logs and reports. */
    for (size_t k = 0; k < n; k++) {
        unsigned char c = (unsigned char)sender[k];
        if (c < 0x20 || c == 0x7f)
            sender[k] = '?';
    }
    /* "From Sat Jan  3 01:05:34 1996": no sender at all (a weekday where
     * the sender would be, and a whole date from there on). */
    if (is_weekday(s + b, i - b) && parse_date(s + b, len - b, date_r)) {
        sender[0] = '\0';
        return true;
    }
    return parse_date(s + i, len - i, date_r);
}

/* ---- input -------------------------------------------------------------- */

static int fill(struct mbox_reader *r, const char **error_r)
{
    for (;;) {
        ssize_t n = r->src.read_at(r->src.ctx, r->chunk, r->read_size, r->pos);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            *error_r = "read error";
            return -1;
        }
        if ((size_t)n > r->read_size) {
            errno = EIO;
            *error_r = "read error (source returned too much)";
            return -1;
        }
        r->chunk_len = (size_t)n;
        r->chunk_pos = 0;
        return n > 0 ? 1 : 0;
    }
}

/* Reads the next line into r->line / r->l. 1, 0 at the end, -1 error. */
static int get_line(struct mbox_reader *r, const char **error_r)
{
    struct line *l = &r->l;
    buf_reset(&r->line);
    memset(l, 0, sizeof(*l));
    l->off = r->pos;
    l->all_nul = true;
    for (;;) {
        if (r->chunk_pos == r->chunk_len) {
            if (r->eof)
                break;
            int rc = fill(r, error_r);
            if (rc < 0)
                return -1;
            if (rc == 0) {
                r->eof = true;
                break;
            }
        }
        const char *p = r->chunk + r->chunk_pos;
        size_t avail = r->chunk_len - r->chunk_pos;
        const char *nl = memchr(p, '\n', avail);
        size_t take = nl != NULL ? (size_t)(nl - p) : avail;
        for (size_t k = 0; k < take && l->all_nul; k++) {
            if (p[k] != '\0')
                l->all_nul = false;
        }
        size_t room = r->line_max > r->line.len ? r->line_max - r->line.len : 0;
        size_t copy = take < room ? take : room;
        if (copy > 0)
            buf_append(&r->line, p, copy);
        if (take > copy)
            l->too_long = true;
        size_t used = take + (nl != NULL ? 1 : 0);
        r->chunk_pos += used;
        r->pos += used;
        l->raw += used;
        if (nl != NULL) {
            l->lf = true;
            break;
        }
    }
    if (l->raw == 0)
        return 0;
    if (l->off == 0 && r->line.len >= 3 && memcmp(r->line.data, "\xef\xbb\xbf", 3) == 0) {
        /* A byte order mark before the first line: not part of anything. */
        buf_consume(&r->line, 3);
        l->off = 3;
        l->raw -= 3;
        if (l->raw == 0)
            return 0; /* the file is a byte order mark and nothing else */
    }
    if (l->raw - (l->lf ? 1 : 0) == 0)
        l->all_nul = false;
    size_t n = r->line.len;
    while (n > 0 && r->line.data[n - 1] == '\r')
        n--;
    l->clen = n;
    l->ncr = r->line.len - n;
    return 1;
}

static bool line_blank(const struct mbox_reader *r)
{
    return r->l.clen == 0 && !r->l.too_long && (r->l.lf || r->l.ncr > 0);
}

static bool line_is_from(const struct mbox_reader *r)
{
    return r->line.len >= 5 && memcmp(r->line.data, "From ", 5) == 0;
}

/* ---- the message being built ------------------------------------------- */

/* The message octets: r->msg holds the first msg_size converted octets,
 * unless the message ran over msg_max (overflow: the buffer stops at
 * overflow_at octets), met a line over line_max (long_line: the buffer stops
 * there), or this is a detection pass (no octets kept). Going back (a
 * Content-Length that did not check out) can undo both conditions. */

static void msg_reset(struct mbox_reader *r)
{
    buf_reset(&r->msg);
    buf_reset(&r->keywords);
    buf_reset(&r->hval);
    r->msg_size = 0;
    r->overflow = false;
    r->overflow_at = 0;
    r->long_line = false;
    r->problems = 0;
    r->sender[0] = '\0';
    r->has_date = false;
    r->date = 0;
    r->flags = 0;
    r->old = false;
    r->x_imap = false;
    r->uid = 0;
    r->uid_seen = false;
    r->pending_blank = false;
    r->last_blank = false;
    r->size_before_blank = 0;
    r->cl_seen = r->cl_bad = false;
    r->cl = r->cl_end = 0;
    r->cl_blank = false;
    r->cl_ok = false;
    memset(&r->snap, 0, sizeof(r->snap));
    r->hdr = H_NONE;
}

static bool msg_keeping(const struct mbox_reader *r)
{
    return !r->detect && !r->overflow && !r->long_line;
}

/* Appends converted octets (or only counts them, see above). */
static void msg_add(struct mbox_reader *r, const char *p, size_t n)
{
    if (msg_keeping(r) && buf_append(&r->msg, p, n) < 0) {
        r->overflow = true;
        r->overflow_at = r->msg_size;
    }
    r->msg_size += n;
}

/* Cuts the message back to `size` converted octets (kept octets too). */
static void msg_cut(struct mbox_reader *r, uint64_t size)
{
    ASSERT(size <= r->msg_size);
    r->msg_size = size;
    if (r->overflow && size <= r->overflow_at)
        r->overflow = false;
    if (r->msg.len > size) {
        r->msg.len = (size_t)size;
        r->msg.data[size] = '\0';
    }
}

static void msg_add_blank(struct mbox_reader *r)
{
    r->size_before_blank = r->msg_size;
    msg_add(r, "\r\n", 2);
    r->last_blank = true;
}

/* How many leading octets unquoting drops from the line (0 or 1). */
static size_t unquote_len(const struct mbox_reader *r)
{
    const char *s = r->line.data;
    size_t n = r->l.clen;
    if (r->unquote == 0 || n < 6 || s[0] != '>')
        return 0;
    size_t k = 0;
    while (k < n && s[k] == '>')
        k++;
    if (r->unquote == 1 && k != 1)
        return 0;
    if (n - k >= 5 && memcmp(s + k, "From ", 5) == 0)
        return 1;
    return 0;
}

/* Appends the current line (unquoted, CRLF) to the message. */
static void msg_add_line(struct mbox_reader *r)
{
    const struct line *l = &r->l;
    r->last_blank = false;
    if (l->too_long) {
        r->long_line = true;
        r->msg_size += l->raw;
        return;
    }
    size_t q = unquote_len(r);
    struct mail_crlf c;
    mail_crlf_init(&c);
    buf_reset(&r->scratch);
    mail_crlf_feed(&c, &r->scratch, r->line.data + q, l->clen - q);
    if (l->lf) {
        /* CR* LF: one line ending; CRs beyond the first were bare. */
        buf_append(&r->scratch, "\r\n", 2);
        if (l->ncr > 1)
            c.bare_cr += l->ncr - 1;
    } else if (l->ncr > 0) {
        /* CRs at the very end of the file: each a line ending (mail_crlf). */
        for (size_t k = 0; k < l->ncr; k++)
            buf_append(&r->scratch, "\r\n", 2);
        c.bare_cr += l->ncr;
    } else {
        r->problems |= MBOX_P_NO_NEWLINE;
    }
    if (c.bare_cr > 0)
        r->problems |= MBOX_P_BARE_CR;
    if (c.nul > 0)
        r->problems |= MBOX_P_NUL;
    msg_add(r, r->scratch.data, r->scratch.len);
}

/* ---- headers ------------------------------------------------------------ */

static void keywords_parse(struct mbox_reader *r, const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        while (i < n &&
               (s[i] == ' ' || s[i] == '\t' || s[i] == ',' || s[i] == '\r' || s[i] == '\n'))
            i++;
        size_t b = i;
        while (i < n && s[i] != ' ' && s[i] != '\t' && s[i] != ',' && s[i] != '\r' && s[i] != '\n')
            i++;
        if (i > b && mail_keywords_add(&r->keywords, s + b, i - b) != 0)
            r->problems |= MBOX_P_BAD_KEYWORD;
    }
}

/* The header r->hdr is complete: act on its value. */
static void hdr_done(struct mbox_reader *r)
{
    const char *v = r->hval.data;
    size_t n = r->hval.len;
    switch (r->hdr) {
    case H_NONE:
    case H_XIMAP:
        break;
    case H_XUID: {
        uint32_t uid = 0;
        if (!r->uid_seen && mbox_parse_uid(v, n, &uid) < 0)
            uid = 0;
        r->uid = r->uid_seen ? 0 : uid; /* two X-UIDs: neither is believed */
        r->uid_seen = true;
        break;
    }
    case H_STATUS:
        for (size_t i = 0; i < n; i++) {
            if (v[i] == 'R')
                r->flags |= MAIL_F_SEEN;
            else if (v[i] == 'O')
                r->old = true;
        }
        break;
    case H_XSTATUS:
        for (size_t i = 0; i < n; i++) {
            if (v[i] == 'A')
                r->flags |= MAIL_F_ANSWERED;
            else if (v[i] == 'F')
                r->flags |= MAIL_F_FLAGGED;
            else if (v[i] == 'D')
                r->flags |= MAIL_F_DELETED;
            else if (v[i] == 'T')
                r->flags |= MAIL_F_DRAFT;
        }
        break;
    case H_XKEYWORDS:
        keywords_parse(r, v, n);
        break;
    case H_CLEN: {
        size_t b = 0, e = n;
        while (b < e && (v[b] == ' ' || v[b] == '\t'))
            b++;
        while (e > b &&
               (v[e - 1] == ' ' || v[e - 1] == '\t' || v[e - 1] == '\r' || v[e - 1] == '\n'))
            e--;
        char tmp[24];
        uint64_t cl;
        if (r->cl_seen || e - b == 0 || e - b >= sizeof(tmp)) {
            r->cl_bad = true;
        } else {
            memcpy(tmp, v + b, e - b);
            tmp[e - b] = '\0';
            if (parse_u64(tmp, UINT64_MAX / 4, &cl) < 0)
                r->cl_bad = true;
            else
                r->cl = cl;
        }
        r->cl_seen = true;
        break;
    }
    }
    r->hdr = H_NONE;
    buf_reset(&r->hval);
}

static void hval_add(struct mbox_reader *r, const char *p, size_t n)
{
    size_t room = MBOX_HEADER_MAX - r->hval.len;
    if (n > room) {
        n = room;
        if (r->hdr == H_XKEYWORDS)
            r->problems |= MBOX_P_BAD_KEYWORD;
        if (r->hdr == H_CLEN)
            r->cl_bad = true;
    }
    buf_append(&r->hval, p, n);
}

static void header_line(struct mbox_reader *r)
{
    size_t q = unquote_len(r);
    const char *s = r->line.data + q;
    size_t n = r->l.clen - q;
    if (n > 0 && (s[0] == ' ' || s[0] == '\t')) {
        if (r->hdr != H_NONE)
            hval_add(r, s, n); /* folded: the value goes on */
        return;
    }
    if (r->hdr != H_NONE)
        hdr_done(r);
    const char *colon = memchr(s, ':', n);
    if (colon == NULL)
        return;
    size_t nlen = (size_t)(colon - s);
    static const struct {
        const char *name;
        enum hdr h;
    } names[] = {
        {"Status", H_STATUS},       {"X-Status", H_XSTATUS}, {"X-Keywords", H_XKEYWORDS},
        {"Content-Length", H_CLEN}, {"X-IMAP", H_XIMAP},     {"X-UID", H_XUID},
    };
    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        if (nlen == strlen(names[i].name) && strncasecmp(s, names[i].name, nlen) == 0) {
            r->hdr = names[i].h;
            if (r->hdr == H_XIMAP)
                r->x_imap = true;
            hval_add(r, colon + 1, n - nlen - 1);
            return;
        }
    }
}

/* ---- splitting ---------------------------------------------------------- */

static void begin_message(struct mbox_reader *r)
{
    msg_reset(r);
    r->msg_off = r->l.off;
    int64_t date = 0;
    r->has_date = mbox_parse_from_line(r->line.data + 5, r->l.clen - 5, r->sender, &date);
    r->date = r->has_date ? date : 0;
    if (!r->has_date)
        r->problems |= MBOX_P_NO_DATE;
    r->st = ST_HEADERS;
}

/* The empty line after the headers. */
static void end_headers(struct mbox_reader *r)
{
    if (r->hdr != H_NONE)
        hdr_done(r);
    if (r->honour_cl && r->cl_seen && r->cl_bad)
        r->problems |= MBOX_P_CL_WRONG;
    if (r->honour_cl && r->cl_seen && !r->cl_bad) {
        /* The body is the next cl octets of the file. */
        msg_add_blank(r);
        r->cl_end = r->l.off + r->l.raw + r->cl;
        r->cl_blank = false;
        r->st = r->cl == 0 ? ST_CL_AFTER : ST_CL_BODY;
    } else {
        r->pending_blank = true;
        r->st = ST_BODY;
    }
}

/* Evidence for auto-detection, from a body line. */
static void body_evidence(struct mbox_reader *r)
{
    if (line_is_from(r))
        r->ev_bare_from = true;
    else if (r->line.len >= 6 && memcmp(r->line.data, ">From ", 6) == 0)
        r->ev_quoted_from = true;
}

/* Fills *it with the message that ends at file offset `end`. */
static void finish(struct mbox_reader *r, struct mbox_item *it, uint64_t end, bool at_eof)
{
    if (r->hdr != H_NONE)
        hdr_done(r);
    memset(it, 0, sizeof(*it));
    it->offset = r->msg_off;
    it->raw_len = end - r->msg_off;
    it->at_eof = at_eof;
    memcpy(it->sender, r->sender, sizeof(it->sender));
    it->has_date = r->has_date;
    it->internal_date = r->date;
    it->flags = r->flags;
    it->old = r->old;
    it->keywords = r->keywords.len > 0 ? r->keywords.data : "";
    it->uid = r->uid;
    it->problems = r->problems;
    it->len = (size_t)r->msg_size;
    it->kind = MBOX_SKIPPED;
    if (r->long_line)
        it->skip = MBOX_SKIP_LINE_TOO_LONG;
    else if (r->overflow)
        it->skip = MBOX_SKIP_TOO_BIG;
    else if (r->msg_size == 0)
        it->skip = MBOX_SKIP_EMPTY;
    else if (r->x_imap && r->items == 0 && r->start == 0)
        it->skip = MBOX_SKIP_PSEUDO;
    else
        it->kind = MBOX_MESSAGE;
    if (it->kind == MBOX_MESSAGE && !r->detect) {
        it->data = r->msg.data;
        it->len = r->msg.len;
        ASSERT(r->msg.len == r->msg_size);
        sha256_buf(it->data, it->len, it->sha256);
    }
    r->items++;
}

/* Goes back to file offset off: the next line read starts there. */
static void rewind_to(struct mbox_reader *r, uint64_t off)
{
    r->pos = off;
    r->chunk_pos = r->chunk_len = 0;
    r->eof = false;
    r->have_line = false;
}

/* Content-Length did not check out. If a From_ line was passed over, the
 * message ends there (1, *it filled) and reading goes on from it; else the
 * message goes on by the separator rule (0), as if it had had no
 * Content-Length: the last empty line added becomes a pending one. */
static int cl_fail(struct mbox_reader *r, struct mbox_item *it)
{
    if (r->snap.set) {
        struct snapshot sn = r->snap;
        r->long_line = sn.long_line;
        msg_cut(r, sn.msg_size);
        r->problems = sn.problems | MBOX_P_CL_WRONG;
        finish(r, it, sn.off, false);
        rewind_to(r, sn.off);
        r->st = ST_START;
        return 1;
    }
    r->problems |= MBOX_P_CL_WRONG;
    if (r->last_blank) {
        msg_cut(r, r->size_before_blank);
        r->last_blank = false;
        r->pending_blank = true;
    }
    r->st = ST_BODY;
    return 0;
}

static void emit_garbage(struct mbox_reader *r, struct mbox_item *it, uint64_t end)
{
    memset(it, 0, sizeof(*it));
    it->kind = MBOX_SKIPPED;
    it->skip = MBOX_SKIP_GARBAGE;
    it->offset = r->garbage_off;
    it->raw_len = end - r->garbage_off;
    it->at_eof = r->eof && end == r->pos;
    it->keywords = "";
    r->garbage = false;
    r->items++;
}

/* The file ends at `end` (the end of input, or where NUL padding starts).
 * 1 with *it, 0 nothing left, 2 went back (read on). */
static int on_eof(struct mbox_reader *r, struct mbox_item *it, uint64_t end)
{
    switch (r->st) {
    case ST_START:
        r->st = ST_DONE;
        if (!r->garbage)
            return 0;
        emit_garbage(r, it, end);
        return 1;
    case ST_CL_BODY:
        if (cl_fail(r, it) == 1)
            return 2;
        r->problems |= MBOX_P_TRUNCATED;
        break;
    case ST_CL_AFTER:
        r->cl_ok = true;
        break;
    case ST_HEADERS:
    case ST_BODY:
        break;
    case ST_DONE:
        return 0;
    }
    /* A pending empty line at the end is the separator, never content. */
    finish(r, it, end, true);
    r->st = ST_DONE;
    return 1;
}

int mbox_next(struct mbox_reader *r, struct mbox_item *it, const char **error_r)
{
    if (r->pad_pending) {
        r->pad_pending = false;
        memset(it, 0, sizeof(*it));
        it->kind = MBOX_SKIPPED;
        it->skip = MBOX_SKIP_NUL_PADDING;
        it->offset = r->pad_off;
        it->raw_len = r->pad_len;
        it->at_eof = true;
        it->keywords = "";
        r->items++;
        return 1;
    }
    for (;;) {
        if (r->st == ST_DONE)
            return 0;
        if (!r->have_line) {
            int rc = get_line(r, error_r);
            if (rc < 0) {
                r->st = ST_DONE;
                return -1;
            }
            if (rc == 0) {
                rc = on_eof(r, it, r->pos);
                if (rc == 2)
                    return 1;
                return rc;
            }
        }
        r->have_line = false;
        const struct line *l = &r->l;

        if (!l->lf && l->all_nul && r->st != ST_START) {
            /* Only NULs after the last line: a writer crashed while the
             * file system had already made room. Not part of the message. */
            int rc = on_eof(r, it, l->off);
            if (rc == 1 && r->st == ST_DONE) {
                r->pad_pending = true;
                r->pad_off = l->off;
                r->pad_len = l->raw;
            }
            return rc == 0 ? 0 : 1;
        }

        switch (r->st) {
        case ST_START:
            if (line_is_from(r)) {
                if (r->garbage) {
                    r->have_line = true;
                    emit_garbage(r, it, l->off);
                    return 1;
                }
                begin_message(r);
            } else if (!r->garbage) {
                r->garbage = true;
                r->garbage_off = l->off;
            }
            break;
        case ST_HEADERS:
            if (line_blank(r)) {
                end_headers(r);
            } else {
                header_line(r);
                msg_add_line(r);
            }
            break;
        case ST_BODY:
            if (r->pending_blank && line_is_from(r)) {
                r->have_line = true;
                finish(r, it, l->off, false);
                r->st = ST_START;
                return 1;
            }
            body_evidence(r);
            if (line_blank(r)) {
                if (r->pending_blank)
                    msg_add_blank(r);
                r->pending_blank = true;
                break;
            }
            if (r->pending_blank) {
                msg_add_blank(r);
                r->pending_blank = false;
            }
            msg_add_line(r);
            break;
        case ST_CL_BODY: {
            if (r->last_blank && line_is_from(r) && !r->snap.set) {
                /* Where the separator rule would have split: remembered in
                 * case the Content-Length does not check out. */
                r->snap.set = true;
                r->snap.off = l->off;
                r->snap.msg_size = r->size_before_blank;
                r->snap.problems = r->problems;
                r->snap.long_line = r->long_line;
            }
            body_evidence(r);
            if (line_blank(r))
                msg_add_blank(r);
            else
                msg_add_line(r);
            uint64_t end = l->off + l->raw;
            if (end == r->cl_end) {
                r->st = ST_CL_AFTER;
                r->cl_blank = false;
            } else if (end > r->cl_end && cl_fail(r, it) == 1) {
                return 1; /* the body ends inside a line */
            }
            break;
        }
        case ST_CL_AFTER:
            if (line_is_from(r)) {
                r->cl_ok = true;
                r->have_line = true;
                finish(r, it, l->off, false);
                r->st = ST_START;
                return 1;
            }
            if (line_blank(r) && !r->cl_blank) {
                r->cl_blank = true;
                break;
            }
            {
                bool blank_seen = r->cl_blank;
                if (cl_fail(r, it) == 1)
                    return 1;
                /* On by the separator rule: the empty line after the body
                 * and this line are body lines. */
                if (blank_seen) {
                    if (r->pending_blank)
                        msg_add_blank(r);
                    r->pending_blank = true;
                }
                r->have_line = true;
            }
            break;
        case ST_DONE:
            return 0;
        }
    }
}

/* ---- construction --------------------------------------------------------- */

static ssize_t fd_read_at(void *ctx, void *p, size_t n, uint64_t offset)
{
    const struct mbox_reader *r = ctx;
    return pread(r->fd, p, n, (off_t)offset);
}

/* The detection pass reads through a source cut at the sample's end. */
struct clip {
    const struct mbox_source *in;
    uint64_t limit;
    bool cut; /* the file goes on past the limit */
};

static ssize_t clip_read_at(void *ctx, void *p, size_t n, uint64_t offset)
{
    struct clip *c = ctx;
    if (offset >= c->limit) {
        if (!c->cut) {
            char b;
            ssize_t k = c->in->read_at(c->in->ctx, &b, 1, offset);
            if (k < 0)
                return -1;
            c->cut = k > 0;
        }
        return 0;
    }
    if (n > c->limit - offset)
        n = (size_t)(c->limit - offset);
    return c->in->read_at(c->in->ctx, p, n, offset);
}

static struct mbox_reader *reader_alloc(const struct mbox_source *src,
                                        const struct mbox_options *opts, enum mbox_format f)
{
    struct mbox_reader *r = xmalloc(sizeof(*r));
    if (src != NULL)
        r->src = *src;
    r->fd = -1;
    r->line_max = opts->line_max != 0 ? opts->line_max : MBOX_LINE_MAX_DEFAULT;
    r->msg_max = opts->msg_max != 0 ? opts->msg_max : MBOX_MSG_MAX_DEFAULT;
    r->read_size = opts->read_size != 0 ? opts->read_size : MBOX_READ_SIZE;
    r->start = opts->start;
    r->pos = opts->start;
    r->chunk = xmalloc(r->read_size);
    buf_init(&r->line, 0);
    buf_init(&r->msg, r->msg_max);
    buf_init(&r->scratch, 0);
    buf_init(&r->keywords, 0);
    buf_init(&r->hval, 0);
    r->st = ST_START;
    r->format = f;
    r->honour_cl = f == MBOX_FORMAT_CL || f == MBOX_FORMAT_CL2;
    r->unquote = f == MBOX_FORMAT_RD ? 2 : f == MBOX_FORMAT_CL2 ? 0 : 1;
    return r;
}

/* Auto-detection (the rule is in mbox.h). */
static int detect(const struct mbox_source *src, const struct mbox_options *opts,
                  enum mbox_format *f_r, const char **error_r)
{
    struct clip c = {.in = src, .limit = opts->start + MBOX_DETECT_BYTES, .cut = false};
    struct mbox_source cs = {.read_at = clip_read_at, .ctx = &c};
    struct mbox_reader *d = reader_alloc(&cs, opts, MBOX_FORMAT_CL2);
    d->detect = true;
    uint64_t n = 0, n_cl = 0;
    struct mbox_item it;
    int rc;
    while ((rc = mbox_next(d, &it, error_r)) == 1) {
        if (it.kind == MBOX_SKIPPED &&
            (it.skip == MBOX_SKIP_GARBAGE || it.skip == MBOX_SKIP_NUL_PADDING))
            continue;
        if (it.at_eof && c.cut)
            break; /* cut by the sample's end: proves nothing */
        n++;
        if (d->cl_ok)
            n_cl++;
    }
    if (rc >= 0) {
        if (n > 0 && n_cl == n)
            *f_r = d->ev_quoted_from && !d->ev_bare_from ? MBOX_FORMAT_CL : MBOX_FORMAT_CL2;
        else
            *f_r = MBOX_FORMAT_RD;
    }
    mbox_reader_free(&d);
    return rc < 0 ? -1 : 0;
}

static int reader_new(const struct mbox_source *src, int fd, const struct mbox_options *opts,
                      struct mbox_reader **r_r, const char **error_r)
{
    static const struct mbox_options defaults;
    if (opts == NULL)
        opts = &defaults;
    struct mbox_reader *r = reader_alloc(src, opts, opts->format);
    if (fd >= 0) {
        r->fd = fd;
        r->src.read_at = fd_read_at;
        r->src.ctx = r;
    }
    if (opts->format == MBOX_FORMAT_AUTO) {
        enum mbox_format f = MBOX_FORMAT_RD;
        if (detect(&r->src, opts, &f, error_r) < 0) {
            int e = errno;
            r->fd = -1; /* the caller still owns it */
            mbox_reader_free(&r);
            errno = e;
            return -1;
        }
        r->format = f;
        r->honour_cl = f == MBOX_FORMAT_CL || f == MBOX_FORMAT_CL2;
        r->unquote = f == MBOX_FORMAT_RD ? 2 : f == MBOX_FORMAT_CL2 ? 0 : 1;
    }
    *r_r = r;
    return 0;
}

int mbox_reader_new(const struct mbox_source *src, const struct mbox_options *opts,
                    struct mbox_reader **r_r, const char **error_r)
{
    ASSERT(src != NULL && src->read_at != NULL);
    return reader_new(src, -1, opts, r_r, error_r);
}

int mbox_reader_open(const char *path, const struct mbox_options *opts, struct mbox_reader **r_r,
                     const char **error_r)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        *error_r = "cannot open the mbox file";
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        int e = errno;
        close(fd);
        *error_r = "not a regular file";
        errno = S_ISREG(st.st_mode) ? e : EINVAL;
        return -1;
    }
    if (reader_new(NULL, fd, opts, r_r, error_r) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return 0;
}

void mbox_reader_free(struct mbox_reader **rp)
{
    struct mbox_reader *r = *rp;
    if (r == NULL)
        return;
    if (r->fd >= 0)
        close(r->fd);
    buf_free(&r->line);
    buf_free(&r->msg);
    buf_free(&r->scratch);
    buf_free(&r->keywords);
    buf_free(&r->hval);
    xfree(&r->chunk);
    xfree(rp);
}

enum mbox_format mbox_reader_format(const struct mbox_reader *r)
{
    return r->format;
}

/* ---- UIDs (X-IMAPbase, X-IMAP, X-UID) ------------------------------------ */

/* A decimal 1..UINT32_MAX at *pp (advanced), after blanks. */
static int uid_num(const char **pp, const char *end, uint32_t *out)
{
    const char *p = *pp;
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    uint64_t v = 0;
    size_t digits = 0;
    while (p < end && *p >= '0' && *p <= '9' && digits <= 10) {
        v = v * 10 + (uint64_t)(*p - '0');
        p++;
        digits++;
    }
    if (digits == 0 || digits > 10 || v == 0 || v > UINT32_MAX ||
        (p < end && *p != ' ' && *p != '\t' && *p != '\r' && *p != '\n'))
        return -1;
    *pp = p;
    *out = (uint32_t)v;
    return 0;
}

int mbox_parse_uid(const char *v, size_t n, uint32_t *uid_r)
{
    const char *p = v, *end = v + n;
    if (uid_num(&p, end, uid_r) < 0)
        return -1;
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    return p == end ? 0 : -1;
}

int mbox_uid_base(const char *head, size_t len, uint32_t *uidvalidity_r, uint32_t *uidnext_r,
                  const char **why_r)
{
    *uidvalidity_r = *uidnext_r = 0;
    if (len > MBOX_UID_BASE_SCAN)
        len = MBOX_UID_BASE_SCAN;
    const char *p = head, *end = head + len;
    if (len < 5 || memcmp(head, "From ", 5) != 0) {
        *why_r = "the file does not start with a From_ line";
        return 0;
    }
    bool first = true;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL)
            break; /* the header goes on past what was read */
        const char *le = nl > p && nl[-1] == '\r' ? nl - 1 : nl;
        if (first) {
            first = false;
        } else if (le == p) {
            break; /* the end of the first message's header */
        } else {
            size_t l = (size_t)(le - p);
            const char *val = NULL;
            if (l > 11 && strncasecmp(p, "X-IMAPbase:", 11) == 0)
                val = p + 11;
            else if (l > 7 && strncasecmp(p, "X-IMAP:", 7) == 0)
                val = p + 7;
            if (val != NULL) {
                /* "<uidvalidity> <uidnext> [keywords...]" */
                const char *q = val;
                if (uid_num(&q, le, uidvalidity_r) < 0 || uid_num(&q, le, uidnext_r) < 0) {
                    *uidvalidity_r = *uidnext_r = 0;
                    *why_r = "a malformed X-IMAPbase header";
                    return -1;
                }
                return 1;
            }
        }
        p = nl + 1;
    }
    *why_r = "no X-IMAPbase header";
    return 0;
}
