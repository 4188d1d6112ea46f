/*
 * lmtpc — a blocking LMTP client (see lmtpc.h).
 *
 * The socket stays non-blocking; every wait goes through poll() with the
 * connection's timeout. Reading a reply (all of its lines) must finish within
 * one timeout; a send waits at most one timeout for each bit of progress, so
 * a large message to a slow but live peer is not cut off.
 *
 * After any I/O or protocol error the connection is marked broken: further
 * deliveries fail at once and lmtpc_close() sends no QUIT (which could land
 * in the middle of a message).
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lmtpc/lmtpc.h"
#include "smtp/smtp.h"
#include "util/util.h"

#define LINE_KEEP       (4 + LMTPC_REPLY_MAX) /* "CODE-" + text, cut */
#define REPLY_LINES_MAX 1000
#define ENDPOINT_MAX    300
#define DELIVERY_ID_MAX 64
#define EXT_PIPELINING  1u
#define EXT_XDELIVERYID 2u

struct lmtpc {
    struct sock *sock;
    unsigned timeout_ms;
    bool pipelining;
    bool xdeliveryid;
    bool broken;
    char endpoint[ENDPOINT_MAX];
    char why[160]; /* the last failure, for the log */
};

/* ---- low-level I/O (util's blocking TCP client) ------------------------ */

static int send_buf(struct lmtpc *c, struct buf *b)
{
    int r = sock_send(c->sock, b->data, b->len);
    buf_reset(b);
    if (r < 0)
        str_copy(c->why, sock_why(c->sock), sizeof c->why);
    return r;
}

/* Reads one line without its CRLF; a longer line is cut but consumed. */
static int read_line(struct lmtpc *c, int64_t deadline, char *line, size_t cap, size_t *len_r)
{
    if (sock_read_line_until(c->sock, deadline, line, cap, len_r) < 0) {
        str_copy(c->why, sock_why(c->sock), sizeof c->why);
        return -1;
    }
    return 0;
}

static bool is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

/* Notes an LHLO keyword ("PIPELINING", "XDELIVERYID") in *ext. */
static void note_ext(const char *text, unsigned *ext)
{
    size_t w = strcspn(text, " ");
    if (w == 10 && strncasecmp(text, "PIPELINING", w) == 0)
        *ext |= EXT_PIPELINING;
    else if (w == 11 && strncasecmp(text, "XDELIVERYID", w) == 0)
        *ext |= EXT_XDELIVERYID;
}

/* Reads one (possibly multi-line) reply; r->text is the last line's text.
 * The whole reply must arrive within one timeout. */
static int read_reply(struct lmtpc *c, struct lmtpc_reply *r, unsigned *ext_r)
{
    int64_t deadline = time_mono_ms() + c->timeout_ms;
    char line[LINE_KEEP + 1];
    for (int nlines = 0;; nlines++) {
        size_t len;
        if (nlines >= REPLY_LINES_MAX) {
            str_copy(c->why, "reply with too many lines", sizeof c->why);
            return -1;
        }
        if (read_line(c, deadline, line, sizeof line, &len) < 0)
            return -1;
        if (len < 3 || line[0] < '2' || line[0] > '5' || !is_digit(line[1]) || !is_digit(line[2]) ||
            (len > 3 && line[3] != ' ' && line[3] != '-')) {
            snprintf(c->why, sizeof c->why, "malformed reply line \"%.60s\"", line);
            return -1;
        }
        int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
        if (nlines > 0 && code != r->code) {
            snprintf(c->why, sizeof c->why, "reply code changes within a reply (%d, %d)", r->code,
                     code);
            return -1;
        }
        r->code = code;
        str_copy(r->text, len > 4 ? line + 4 : "", sizeof r->text);
        if (ext_r != NULL)
            note_ext(r->text, ext_r);
        if (len == 3 || line[3] == ' ')
            return 0;
    }
}

/* ---- connection ----------------------------------------------------------- */

static void set_err(char *err, size_t errlen, const char *fmt, ...) TERN_PRINTF(3, 4);

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* True if s is non-empty and has no byte that could break a command line. */
static bool arg_ok(const char *s, bool allow_empty)
{
    if (s[0] == '\0')
        return allow_empty;
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch <= ' ' || ch == 0x7f || ch == '<' || ch == '>')
            return false;
    }
    return true;
}

static bool delivery_id_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > DELIVERY_ID_MAX)
        return false;
    for (; *s; s++) {
        char ch = *s;
        if (!(is_digit(ch) || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '.' ||
              ch == '_' || ch == '-'))
            return false;
    }
    return true;
}

struct lmtpc *lmtpc_connect(const char *endpoint, unsigned timeout_ms, const char *helo, char *err,
                            size_t errlen)
{
    if (timeout_ms == 0 || timeout_ms > 24u * 3600 * 1000) {
        set_err(err, errlen, "%s: bad timeout %u ms", endpoint, timeout_ms);
        return NULL;
    }
    if (!arg_ok(helo, false) || strlen(helo) > MAIL_DOMAIN_MAX + 2) {
        set_err(err, errlen, "%s: bad LHLO name", endpoint);
        return NULL;
    }
    struct sock *sock = sock_connect(endpoint, timeout_ms, err, errlen);
    if (sock == NULL)
        return NULL;
    struct lmtpc *c = xmalloc(sizeof *c);
    c->sock = sock;
    c->timeout_ms = timeout_ms;
    str_copy(c->endpoint, endpoint, sizeof c->endpoint);

    struct lmtpc_reply r;
    unsigned ext = 0;
    struct buf b;
    buf_init(&b, 0);
    if (read_reply(c, &r, NULL) < 0) {
        set_err(err, errlen, "%s: greeting: %s", endpoint, c->why);
        goto fail;
    }
    if (r.code != 220) {
        set_err(err, errlen, "%s: greeting: %d %s", endpoint, r.code, r.text);
        goto fail;
    }
    buf_printf(&b, "LHLO %s\r\n", helo);
    if (send_buf(c, &b) < 0) {
        set_err(err, errlen, "%s: LHLO: %s", endpoint, c->why);
        goto fail;
    }
    if (read_reply(c, &r, &ext) < 0) {
        set_err(err, errlen, "%s: LHLO: %s", endpoint, c->why);
        goto fail;
    }
    if (r.code != 250) {
        set_err(err, errlen, "%s: LHLO: %d %s", endpoint, r.code, r.text);
        goto fail;
    }
    c->pipelining = (ext & EXT_PIPELINING) != 0;
    c->xdeliveryid = (ext & EXT_XDELIVERYID) != 0;
    buf_free(&b);
    return c;
fail:
    buf_free(&b);
    c->broken = true;
    lmtpc_close(&c);
    return NULL;
}

void lmtpc_close(struct lmtpc **cp)
{
    struct lmtpc *c = *cp;
    if (c == NULL)
        return;
    if (!c->broken) /* best effort, never waits */
        sock_send_nowait(c->sock, "QUIT\r\n", 6);
    sock_close(&c->sock);
    xfree(cp);
}

/* ---- delivery ------------------------------------------------------------- */

/* A final answer to MAIL, RCPT or a message: 2xx, 4xx or 5xx. */
static int final_reply(struct lmtpc *c, struct lmtpc_reply *r, const char *what)
{
    if (read_reply(c, r, NULL) < 0)
        return -1;
    if (r->code / 100 == 3) {
        snprintf(c->why, sizeof c->why, "unexpected %d reply to %s", r->code, what);
        return -1;
    }
    return 0;
}

int lmtpc_deliver(struct lmtpc *c, const char *sender, const char *delivery_id,
                  const char *const *rcpts, size_t n, const void *msg, size_t len,
                  struct lmtpc_reply *replies)
{
    for (size_t i = 0; i < n; i++) {
        replies[i].code = 0;
        replies[i].text[0] = '\0';
    }
    if (n == 0)
        return 0;
    if (c->broken) {
        log_warn("lmtpc", "%s: delivery on a broken connection", c->endpoint);
        return -1;
    }
    bool args_ok = arg_ok(sender, true) && strlen(sender) <= MAIL_ADDR_MAX &&
                   (delivery_id == NULL || delivery_id_ok(delivery_id));
    for (size_t i = 0; args_ok && i < n; i++)
        args_ok = arg_ok(rcpts[i], false) && strlen(rcpts[i]) <= MAIL_ADDR_MAX;
    if (!args_ok) {
        log_error("lmtpc", "%s: refusing to send a malformed address or delivery id", c->endpoint);
        return -1;
    }
    /* The server said something (or closed) while the connection was idle
     * in the pool, e.g. "421 4.4.2 timeout": the connection is unusable. */
    if (sock_readable_now(c->sock)) {
        c->broken = true;
        str_copy(c->why, "the server spoke or closed while idle", sizeof c->why);
        log_warn("lmtpc", "%s: %s", c->endpoint, c->why);
        return -1;
    }

    /* pending[i]: accepted at RCPT, final answer still to come */
    bool *pending = xcalloc(n, sizeof *pending);
    struct buf out;
    buf_init(&out, 0);
    struct lmtpc_reply r;
    size_t rcpt_sent = 0;
    bool data_sent = false;
    int rc = -1;

    buf_printf(&out, "MAIL FROM:<%s>", sender);
    if (delivery_id != NULL && c->xdeliveryid)
        buf_printf(&out, " XDELIVERYID=%s", delivery_id);
    buf_puts(&out, "\r\n");
    if (c->pipelining) {
        for (size_t i = 0; i < n; i++)
            buf_printf(&out, "RCPT TO:<%s>\r\n", rcpts[i]);
        buf_puts(&out, "DATA\r\n");
        rcpt_sent = n;
        data_sent = true;
    }
    if (send_buf(c, &out) < 0 || final_reply(c, &r, "MAIL") < 0)
        goto out;

    if (r.code / 100 != 2) {
        /* Refused sender: every recipient gets that answer. Drain the replies
         * to what was pipelined (503s); no transaction is open. */
        for (size_t i = 0; i < n; i++)
            replies[i] = r;
        for (size_t i = 0; i < rcpt_sent; i++)
            if (read_reply(c, &r, NULL) < 0)
                goto out;
        if (data_sent) {
            if (read_reply(c, &r, NULL) < 0)
                goto out;
            if (r.code == 354) {
                str_copy(c->why, "354 to DATA after a refused MAIL", sizeof c->why);
                goto out;
            }
        }
        rc = 0;
        goto out;
    }

    size_t accepted = 0;
    for (size_t i = 0; i < n; i++) {
        if (!c->pipelining) {
            buf_printf(&out, "RCPT TO:<%s>\r\n", rcpts[i]);
            if (send_buf(c, &out) < 0)
                goto out;
        }
        if (final_reply(c, &r, "RCPT") < 0)
            goto out;
        if (r.code / 100 == 2) {
            pending[i] = true;
            accepted++;
        } else {
            replies[i] = r;
        }
    }
    if (!data_sent && accepted > 0) {
        buf_puts(&out, "DATA\r\n");
        if (send_buf(c, &out) < 0)
            goto out;
        data_sent = true;
    }
    if (data_sent) {
        if (read_reply(c, &r, NULL) < 0)
            goto out;
        if (r.code == 354) {
            if (accepted == 0) {
                str_copy(c->why, "354 to DATA without an accepted recipient", sizeof c->why);
                goto out;
            }
            smtp_dot_stuff(msg, len, &out);
            if (send_buf(c, &out) < 0)
                goto out;
            for (size_t i = 0; i < n; i++) {
                if (!pending[i])
                    continue;
                if (final_reply(c, &r, "the message") < 0)
                    goto out;
                replies[i] = r;
                pending[i] = false;
            }
            rc = 0;
            goto out;
        }
        if (r.code / 100 == 2) {
            snprintf(c->why, sizeof c->why, "unexpected %d reply to DATA", r.code);
            goto out;
        }
        /* DATA refused (503 when no recipient was accepted): the accepted
         * recipients get its answer. */
        for (size_t i = 0; i < n; i++) {
            if (pending[i]) {
                replies[i] = r;
                pending[i] = false;
            }
        }
    }
    /* MAIL was accepted but no message went through: close the transaction. */
    buf_puts(&out, "RSET\r\n");
    if (send_buf(c, &out) < 0 || read_reply(c, &r, NULL) < 0)
        goto out;
    if (r.code / 100 != 2) {
        snprintf(c->why, sizeof c->why, "RSET refused: %d %.100s", r.code, r.text);
        goto out;
    }
    rc = 0;
out:
    if (rc < 0) {
        c->broken = true;
        for (size_t i = 0; i < n; i++) {
            if (pending[i]) {
                replies[i].code = 0;
                replies[i].text[0] = '\0';
            }
        }
        log_warn("lmtpc", "%s: %s", c->endpoint, c->why);
    }
    buf_free(&out);
    xfree(&pending);
    return rc;
}

/* ---- hints -------------------------------------------------------------- */

int lmtpc_hint(const char *text, char store[MAIL_NAME_MAX + 1], uint64_t *epoch_r)
{
    static const char moved[] = "moved to ";
    for (const char *p = strstr(text, moved); p != NULL; p = strstr(p + 1, moved)) {
        if (p != text && p[-1] != ' ')
            continue;
        const char *name = p + strlen(moved);
        size_t nl = strcspn(name, " ");
        if (nl == 0 || nl > MAIL_NAME_MAX || strncmp(name + nl, " epoch ", 7) != 0)
            continue;
        char nbuf[MAIL_NAME_MAX + 1];
        memcpy(nbuf, name, nl);
        nbuf[nl] = '\0';
        const char *num = name + nl + 7;
        size_t dl = strspn(num, "0123456789");
        if (dl == 0 || dl > 20 || (num[dl] != '\0' && num[dl] != ' '))
            continue;
        char dbuf[21];
        memcpy(dbuf, num, dl);
        dbuf[dl] = '\0';
        uint64_t epoch;
        if (!mail_store_name_valid(nbuf) || parse_u64(dbuf, UINT64_MAX, &epoch) < 0)
            continue;
        memcpy(store, nbuf, nl + 1);
        *epoch_r = epoch;
        return 1;
    }
    const char *ip = strstr(text, "move in progress");
    if (ip != NULL && (ip == text || ip[-1] == ' '))
        return 2;
    return 0;
}
