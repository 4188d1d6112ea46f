/*
 * dsn.c — delivery status notifications (RFC 3464, RFC 3462/6522), see
 * dsn.h.
 *
 * Everything we write is 7-bit: every caller-supplied string goes through
 * dsn_put_clean(), which cuts it to a bound and replaces control characters
 * (TAB excepted) and 8-bit bytes with '?', so no field can inject a line
 * break or push a line past RFC 5322's 998 octets. The copied original
 * header is the only 8-bit text we pass on (as the sender wrote it); its
 * lines are normalized to CRLF and cut at 998 octets.
 */
#include "dsn/dsn.h"

#include <string.h>
#include <time.h>

#include "mail/mail.h"

#define DSN_LINE_MAX 998        /* RFC 5322 2.1.1, without the CRLF */
#define DSN_DIAG_MAX 512        /* diagnostic text kept, before "..." */
#define DSN_HDR_MAX  (64 << 10) /* original header copied, at most */
#define DSN_ID_MAX   64         /* queue id, status: generous bounds */
#define DSN_RAND     12         /* random bytes in boundary and Message-ID */

/* Appends at most max bytes of s with control characters (but TAB) and
 * 8-bit bytes replaced by '?'; a cut is marked with "...". */
static void dsn_put_clean(struct buf *out, const char *s, size_t max)
{
    if (s == NULL)
        return;
    size_t len = strlen(s), n = len > max ? max : len;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char o = (c == '\t' || (c >= 0x20 && c < 0x7f)) ? (char)c : '?';
        buf_append(out, &o, 1);
    }
    if (n < len)
        buf_puts(out, "...");
}

/* RFC 5322 date-time in UTC, e.g. "Sat, 21 Nov 2026 05:40:00 +0000". Names
 * are spelled out here: strftime's would follow the locale. */
static void dsn_put_date(struct buf *out, int64_t unix_secs)
{
    static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t t = (time_t)unix_secs;
    struct tm tm;
    if (gmtime_r(&t, &tm) == NULL) {
        t = 0;
        gmtime_r(&t, &tm);
    }
    buf_printf(out, "%s, %02d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday % 7], tm.tm_mday,
               months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

static void dsn_random_hex(char out[2 * DSN_RAND + 1])
{
    uint8_t raw[DSN_RAND];
    rand_bytes(raw, sizeof(raw));
    hex_encode(raw, sizeof(raw), out);
}

/* The length of the original's header: up to its first empty line (which
 * is not included), or all of it if there is none; at most DSN_HDR_MAX. */
static size_t dsn_header_len(const char *p, size_t len)
{
    size_t line = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] != '\n')
            continue;
        size_t end = i > line && p[i - 1] == '\r' ? i - 1 : i;
        if (end == line)
            return line;
        line = i + 1;
    }
    return len > DSN_HDR_MAX ? DSN_HDR_MAX : len;
}

/* Copies the header lines with CRLF endings, lines cut at DSN_LINE_MAX,
 * NUL and stray CRs replaced. */
static void dsn_put_header(struct buf *out, const char *p, size_t len)
{
    if (len > DSN_HDR_MAX)
        len = DSN_HDR_MAX;
    size_t i = 0;
    while (i < len) {
        const char *nl = memchr(p + i, '\n', len - i);
        size_t end = nl != NULL ? (size_t)(nl - p) : len, next = nl != NULL ? end + 1 : len;
        if (end > i && p[end - 1] == '\r')
            end--;
        size_t n = end - i > DSN_LINE_MAX ? DSN_LINE_MAX : end - i;
        for (size_t k = 0; k < n; k++) {
            char c = p[i + k];
            if (c == '\0' || c == '\r')
                c = '?';
            buf_append(out, &c, 1);
        }
        buf_puts(out, "\r\n");
        i = next;
    }
}

void dsn_compose(struct buf *out, const struct dsn_info *info, const struct dsn_rcpt *rcpts,
                 size_t n, const void *orig, size_t orig_len)
{
    char boundary[2 * DSN_RAND + 1], msgid[2 * DSN_RAND + 1];
    dsn_random_hex(boundary);
    dsn_random_hex(msgid);
    const char *mta = info->reporting_mta != NULL ? info->reporting_mta : "localhost";

    /* The header. */
    buf_puts(out, "From: \"Mail Delivery System\" <MAILER-DAEMON@");
    dsn_put_clean(out, mta, MAIL_DOMAIN_MAX);
    buf_puts(out, ">\r\nTo: <");
    dsn_put_clean(out, info->sender, MAIL_ADDR_MAX);
    buf_puts(out, ">\r\nSubject: Undelivered Mail Returned to Sender\r\nDate: ");
    dsn_put_date(out, info->now);
    buf_printf(out, "\r\nMessage-ID: <%s@", msgid);
    dsn_put_clean(out, mta, MAIL_DOMAIN_MAX);
    buf_printf(out,
               ">\r\nAuto-Submitted: auto-replied\r\n"
               "MIME-Version: 1.0\r\n"
               "Content-Type: multipart/report; report-type=delivery-status;\r\n"
               "\tboundary=\"tern-%s\"\r\n"
               "\r\n"
               "This is a MIME-encapsulated message.\r\n"
               "\r\n",
               boundary);

    /* Part 1: for the human. */
    buf_printf(out,
               "--tern-%s\r\n"
               "Content-Type: text/plain; charset=us-ascii\r\n"
               "\r\n"
               "This is the mail delivery system at ",
               boundary);
    dsn_put_clean(out, mta, MAIL_DOMAIN_MAX);
    buf_puts(out, ".\r\n\r\n"
                  "Your message could not be delivered to the following recipients:\r\n\r\n");
    for (size_t i = 0; i < n; i++) {
        buf_puts(out, "  <");
        dsn_put_clean(out, rcpts[i].final_rcpt, MAIL_ADDR_MAX);
        buf_puts(out, ">\r\n");
        if (rcpts[i].diagnostic != NULL) {
            buf_puts(out, "    ");
            dsn_put_clean(out, rcpts[i].diagnostic, DSN_DIAG_MAX);
            buf_puts(out, "\r\n");
        }
    }
    buf_puts(out, "\r\nThe header of your message is attached below.\r\n\r\n");

    /* Part 2: for the machine. */
    buf_printf(out,
               "--tern-%s\r\n"
               "Content-Type: message/delivery-status\r\n"
               "\r\n"
               "Reporting-MTA: dns; ",
               boundary);
    dsn_put_clean(out, mta, MAIL_DOMAIN_MAX);
    buf_puts(out, "\r\nX-Tern-Queue-ID: ");
    dsn_put_clean(out, info->queue_id, DSN_ID_MAX);
    buf_puts(out, "\r\nArrival-Date: ");
    dsn_put_date(out, info->arrival);
    buf_puts(out, "\r\n");
    for (size_t i = 0; i < n; i++) {
        const struct dsn_rcpt *r = &rcpts[i];
        buf_puts(out, "\r\n");
        if (r->orig_rcpt != NULL && r->final_rcpt != NULL &&
            strcmp(r->orig_rcpt, r->final_rcpt) != 0) {
            buf_puts(out, "Original-Recipient: rfc822; ");
            dsn_put_clean(out, r->orig_rcpt, MAIL_ADDR_MAX);
            buf_puts(out, "\r\n");
        }
        buf_puts(out, "Final-Recipient: rfc822; ");
        dsn_put_clean(out, r->final_rcpt, MAIL_ADDR_MAX);
        buf_puts(out, "\r\nAction: failed\r\nStatus: ");
        dsn_put_clean(out, r->status != NULL ? r->status : "5.0.0", DSN_ID_MAX);
        buf_puts(out, "\r\n");
        if (r->diagnostic != NULL) {
            buf_puts(out, "Diagnostic-Code: smtp; ");
            dsn_put_clean(out, r->diagnostic, DSN_DIAG_MAX);
            buf_puts(out, "\r\n");
        }
    }
    buf_puts(out, "\r\n");

    /* Part 3: the original's header, never its body. */
    buf_printf(out,
               "--tern-%s\r\n"
               "Content-Type: text/rfc822-headers\r\n"
               "\r\n",
               boundary);
    if (orig != NULL && orig_len > 0)
        dsn_put_header(out, orig, dsn_header_len(orig, orig_len));
    buf_printf(out, "\r\n--tern-%s--\r\n", boundary);
}
