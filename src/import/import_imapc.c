/*
 * import — a small blocking IMAP4rev1 client (RFC 3501), just what an import
 * needs from a source server: LOGIN, LIST, STATUS, EXAMINE (read-only, with
 * CONDSTORE where offered) and a streamed UID FETCH of bodies, flags and
 * internal dates. Nothing it sends changes the source (BODY.PEEK, EXAMINE).
 *
 * Limits, each with its own error: a response line (without literals) of
 * IMAPC_LINE_MAX octets, the text and small literals of one response
 * IMAPC_RESP_MAX, IMAPC_PARTS_MAX literals in one response; a body over the
 * caller's maximum is read and dropped (the message is reported too big),
 * never kept. Every read waits at most the connection's timeout (sock.c).
 */
#include <ctype.h>
#include <inttypes.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "import/import_private.h"
#include "mail/mail.h"

#define IMAPC_LINE_MAX  (64u * 1024)
#define IMAPC_SMALL_LIT (64u * 1024)
#define IMAPC_RESP_MAX  (1024u * 1024)
#define IMAPC_PARTS_MAX 1024
#define IMAPC_CAPS_MAX  2048

enum part_kind { PART_TEXT = 0, PART_LIT, PART_BIG };

struct part {
    enum part_kind kind;
    size_t off, len; /* in resp.text (PART_BIG: len is the literal's size) */
};

struct resp {
    struct buf text;
    struct part parts[IMAPC_PARTS_MAX];
    size_t n;
    bool big_used;    /* the one big literal went to the caller's buffer */
    bool big_dropped; /* ... or was over its limit and dropped */
};

struct imapc {
    struct sock *s;
    /* Without a socket (tests, fuzzing): the server's words from memory,
     * what the client sends goes nowhere. */
    const char *mem;
    size_t mem_len, mem_pos;
    unsigned tagn;
    char tag[16];
    char caps[IMAPC_CAPS_MAX + 1]; /* " CAP1 CAP2 " upper case */
    char line[IMAPC_LINE_MAX + 2];
    char err[256];
    struct resp r;
    bool fetching;
    bool fetch_bodies; /* BODY[] is asked for (else RFC822.SIZE) */
    uint32_t fetch_from;
    size_t fetch_max;
};

/* ---- tokens over a response ------------------------------------------------ */

enum tok_kind { TOK_END = 0, TOK_ATOM, TOK_STRING, TOK_LPAREN, TOK_RPAREN, TOK_NIL };

struct tok {
    enum tok_kind kind;
    const char *p; /* ATOM and STRING (literal or quoted, unescaped) */
    size_t len;
    bool big; /* a STRING that is the big literal (caller's buffer) */
};

struct cursor {
    const struct resp *r;
    size_t part, off;
    struct buf scratch; /* unescaped quoted strings */
};

static void cursor_init(struct cursor *c, const struct resp *r)
{
    memset(c, 0, sizeof(*c));
    c->r = r;
    buf_init(&c->scratch, IMAPC_LINE_MAX);
}

static void cursor_free(struct cursor *c)
{
    buf_free(&c->scratch);
}

static bool atom_char(char ch)
{
    return ch != ' ' && ch != '(' && ch != ')' && ch != '{' && ch != '"' && ch != '\0' &&
           (unsigned char)ch > 0x1f && (unsigned char)ch != 0x7f;
}

/* The next token; -1 on malformed text. */
static int tok_next(struct cursor *c, struct tok *t)
{
    memset(t, 0, sizeof(*t));
    while (c->part < c->r->n) {
        const struct part *p = &c->r->parts[c->part];
        if (p->kind != PART_TEXT) {
            c->part++;
            c->off = 0;
            t->kind = TOK_STRING;
            t->big = p->kind == PART_BIG;
            t->p = p->kind == PART_LIT ? c->r->text.data + p->off : NULL;
            t->len = p->len;
            return 0;
        }
        const char *s = c->r->text.data + p->off;
        size_t n = p->len;
        while (c->off < n && s[c->off] == ' ')
            c->off++;
        if (c->off == n) {
            c->part++;
            c->off = 0;
            continue;
        }
        char ch = s[c->off];
        if (ch == '(' || ch == ')') {
            c->off++;
            t->kind = ch == '(' ? TOK_LPAREN : TOK_RPAREN;
            return 0;
        }
        if (ch == '"') {
            buf_reset(&c->scratch);
            size_t i = c->off + 1;
            for (;;) {
                if (i >= n)
                    return -1; /* unterminated */
                if (s[i] == '"')
                    break;
                if (s[i] == '\\' && i + 1 < n)
                    i++;
                if (buf_append(&c->scratch, &s[i], 1) < 0)
                    return -1;
                i++;
            }
            c->off = i + 1;
            t->kind = TOK_STRING;
            t->p = c->scratch.data != NULL ? c->scratch.data : "";
            t->len = c->scratch.len;
            return 0;
        }
        if (!atom_char(ch))
            return -1;
        size_t i = c->off;
        int depth = 0;
        while (i < n && (depth > 0 || atom_char(s[i]))) {
            if (s[i] == '[')
                depth++;
            else if (s[i] == ']' && depth > 0)
                depth--;
            i++;
        }
        t->p = s + c->off;
        t->len = i - c->off;
        c->off = i;
        t->kind = (t->len == 3 && strncasecmp(t->p, "NIL", 3) == 0) ? TOK_NIL : TOK_ATOM;
        return 0;
    }
    t->kind = TOK_END;
    return 0;
}

static bool tok_is(const struct tok *t, const char *word)
{
    return t->kind == TOK_ATOM && t->len == strlen(word) && strncasecmp(t->p, word, t->len) == 0;
}

static int tok_u64(const struct tok *t, uint64_t max, uint64_t *out)
{
    char b[24];
    if (t->kind != TOK_ATOM || t->len == 0 || t->len >= sizeof(b))
        return -1;
    memcpy(b, t->p, t->len);
    b[t->len] = '\0';
    return parse_u64(b, max, out);
}

/* Skips one value (an atom, string or a whole list). */
static int tok_skip_value(struct cursor *c, const struct tok *first)
{
    if (first->kind != TOK_LPAREN)
        return first->kind == TOK_END || first->kind == TOK_RPAREN ? -1 : 0;
    int depth = 1;
    struct tok t;
    while (depth > 0) {
        if (tok_next(c, &t) < 0 || t.kind == TOK_END)
            return -1;
        if (t.kind == TOK_LPAREN)
            depth++;
        else if (t.kind == TOK_RPAREN)
            depth--;
    }
    return 0;
}

/* ---- reading responses ------------------------------------------------------ */

static int fail(struct imapc *c, const char *fmt, ...) TERN_PRINTF(2, 3);
static int fail(struct imapc *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof(c->err), fmt, ap);
    va_end(ap);
    return -1;
}

static int sock_fail(struct imapc *c, const char *what)
{
    return fail(c, "IMAP source: %s: %s", what,
                c->s != NULL ? sock_why(c->s) : "end of input or no CRLF");
}

/* sock_read_line's contract, over the socket or the memory input. */
static int in_line(struct imapc *c, char *line, size_t cap, size_t *len_r)
{
    if (c->s != NULL)
        return sock_read_line(c->s, line, cap, len_r);
    const char *start = c->mem + c->mem_pos;
    const char *nl = memchr(start, '\n', c->mem_len - c->mem_pos);
    if (nl == NULL || nl == start || nl[-1] != '\r')
        return -1;
    size_t take = (size_t)(nl - start) - 1;
    c->mem_pos += take + 2;
    bool cut = take > cap - 1;
    size_t k = cut ? cap - 1 : take;
    memcpy(line, start, k);
    line[k] = '\0';
    *len_r = k;
    return cut ? 1 : 0;
}

/* Exactly n octets appended to b (b != NULL) or into p. */
static int in_exact(struct imapc *c, struct buf *b, void *p, size_t n)
{
    if (c->s != NULL)
        return b != NULL ? sock_read_buf(c->s, b, n) : sock_read_exact(c->s, p, n);
    if (c->mem_len - c->mem_pos < n)
        return -1;
    const char *src = c->mem + c->mem_pos;
    c->mem_pos += n;
    if (b != NULL)
        return buf_append(b, src, n);
    memcpy(p, src, n);
    return 0;
}

static int out_send(struct imapc *c, const void *p, size_t n)
{
    return c->s != NULL ? sock_send(c->s, p, n) : 0;
}

/* A literal announced at the end of a line: "{123}" (or "{123+}"). Returns
 * the text length before it and *n_r, or -1 if the line has none. */
static ssize_t literal_at_end(const char *line, size_t len, uint64_t *n_r)
{
    if (len < 3 || line[len - 1] != '}')
        return -1;
    size_t i = len - 1;
    if (i > 0 && line[i - 1] == '+')
        i--;
    size_t end = i;
    while (i > 0 && isdigit((unsigned char)line[i - 1]))
        i--;
    if (i == 0 || i == end || line[i - 1] != '{' || end - i > 19)
        return -1;
    char b[24];
    memcpy(b, line + i, end - i);
    b[end - i] = '\0';
    if (parse_u64(b, UINT64_MAX, n_r) < 0)
        return -1;
    return (ssize_t)(i - 1);
}

static int add_part(struct imapc *c, enum part_kind k, size_t off, size_t len)
{
    struct resp *r = &c->r;
    if (r->n >= IMAPC_PARTS_MAX)
        return fail(c, "IMAP source: a response with more than %u literals", IMAPC_PARTS_MAX);
    r->parts[r->n].kind = k;
    r->parts[r->n].off = off;
    r->parts[r->n].len = len;
    r->n++;
    return 0;
}

/* Reads one whole response (a line, with its literals) into c->r. A literal
 * over IMAPC_SMALL_LIT goes into big (at most big_max octets kept; more is
 * read and dropped: r.big_dropped); without big it is an error. */
static int read_resp(struct imapc *c, struct buf *big, size_t big_max)
{
    struct resp *r = &c->r;
    buf_reset(&r->text);
    r->n = 0;
    r->big_used = r->big_dropped = false;
    for (;;) {
        size_t len;
        int lr = in_line(c, c->line, sizeof(c->line), &len);
        if (lr < 0)
            return sock_fail(c, "reading a response");
        if (lr == 1)
            return fail(c, "IMAP source: a response line over %u octets", IMAPC_LINE_MAX);
        uint64_t lit = 0;
        ssize_t tl = literal_at_end(c->line, len, &lit);
        size_t textlen = tl >= 0 ? (size_t)tl : len;
        size_t off = r->text.len;
        if (buf_append(&r->text, c->line, textlen) < 0)
            return fail(c, "IMAP source: a response over %u octets", IMAPC_RESP_MAX);
        if (add_part(c, PART_TEXT, off, textlen) < 0)
            return -1;
        if (tl < 0)
            return 0;
        if (lit <= IMAPC_SMALL_LIT) {
            off = r->text.len;
            if (buf_append(&r->text, "", 0) < 0 || r->text.len + lit > IMAPC_RESP_MAX)
                return fail(c, "IMAP source: a response over %u octets", IMAPC_RESP_MAX);
            if (lit > 0 && in_exact(c, &r->text, NULL, (size_t)lit) < 0)
                return sock_fail(c, "reading a literal");
            if (add_part(c, PART_LIT, off, (size_t)lit) < 0)
                return -1;
            continue;
        }
        if (big == NULL || r->big_used || r->big_dropped)
            return fail(c, "IMAP source: an unexpected literal of %llu octets",
                        (unsigned long long)lit);
        if (lit <= big_max) {
            buf_reset(big);
            if (in_exact(c, big, NULL, (size_t)lit) < 0)
                return sock_fail(c, "reading a message");
            r->big_used = true;
        } else {
            /* Over the limit: read it off the wire, keep nothing. */
            char sink[16384];
            uint64_t left = lit;
            while (left > 0) {
                size_t k = left < sizeof(sink) ? (size_t)left : sizeof(sink);
                if (in_exact(c, NULL, sink, k) < 0)
                    return sock_fail(c, "reading a message");
                left -= k;
            }
            r->big_dropped = true;
        }
        if (add_part(c, PART_BIG, 0, (size_t)lit) < 0)
            return -1;
    }
}

/* ---- commands ------------------------------------------------------------------ */

static void next_tag(struct imapc *c)
{
    snprintf(c->tag, sizeof(c->tag), "t%u", ++c->tagn);
}

/* Appends s as an IMAP string: quoted when it can be, else a literal
 * (LITERAL+ if offered; else a synchronizing one, for which the command so
 * far is sent and the server's "+" awaited). */
static int put_string(struct imapc *c, struct buf *cmd, const char *s, size_t len)
{
    bool quotable = len < 1000;
    for (size_t i = 0; i < len && quotable; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
            quotable = false;
    if (quotable) {
        buf_puts(cmd, "\"");
        for (size_t i = 0; i < len; i++) {
            if (s[i] == '"' || s[i] == '\\')
                buf_puts(cmd, "\\");
            buf_append(cmd, &s[i], 1);
        }
        buf_puts(cmd, "\"");
        return 0;
    }
    if (memchr(s, '\0', len) != NULL)
        return fail(c, "IMAP source: a NUL cannot be sent");
    bool plus = imapc_has_cap(c, "LITERAL+");
    buf_printf(cmd, "{%zu%s}\r\n", len, plus ? "+" : "");
    if (!plus) {
        if (out_send(c, cmd->data, cmd->len) < 0)
            return sock_fail(c, "sending a command");
        buf_reset(cmd);
        if (read_resp(c, NULL, 0) < 0)
            return -1;
        if (c->r.text.len == 0 || c->r.text.data[0] != '+')
            return fail(c, "IMAP source: the server refused a literal");
    }
    buf_append(cmd, s, len);
    return 0;
}

static int send_cmd(struct imapc *c, struct buf *cmd)
{
    buf_puts(cmd, "\r\n");
    if (out_send(c, cmd->data, cmd->len) < 0)
        return sock_fail(c, "sending a command");
    return 0;
}

/* The tagged answer to the current command: 0 OK, 1 NO, -1 BAD or failure.
 * Untagged responses in between go to cb (may be NULL). */
static int wait_tagged(struct imapc *c, int (*cb)(struct imapc *c, void *ctx), void *ctx)
{
    size_t tl = strlen(c->tag);
    for (;;) {
        if (read_resp(c, NULL, 0) < 0)
            return -1;
        const char *t = c->r.text.data != NULL ? c->r.text.data : "";
        if (strncmp(t, c->tag, tl) == 0 && t[tl] == ' ') {
            const char *st = t + tl + 1;
            if (strncasecmp(st, "OK", 2) == 0)
                return 0;
            size_t n = strlen(st);
            snprintf(c->err, sizeof(c->err), "IMAP source said: %.*s", (int)(n > 200 ? 200 : n),
                     st);
            return strncasecmp(st, "NO", 2) == 0 ? 1 : -1;
        }
        if (t[0] == '+')
            return fail(c, "IMAP source: an unexpected continuation request");
        if (strncmp(t, "* BYE", 5) == 0)
            return fail(c, "IMAP source closed the connection: %.200s", t);
        if (cb != NULL && cb(c, ctx) < 0)
            return -1;
    }
}

static void parse_caps(struct imapc *c, const char *s)
{
    /* s points just after "CAPABILITY" */
    size_t n = 0;
    c->caps[n++] = ' ';
    for (; *s != '\0' && *s != ']' && n < IMAPC_CAPS_MAX - 1; s++)
        c->caps[n++] = (char)toupper((unsigned char)*s);
    c->caps[n++] = ' ';
    c->caps[n] = '\0';
}

bool imapc_has_cap(const struct imapc *c, const char *cap)
{
    char want[64];
    snprintf(want, sizeof(want), " %s ", cap);
    for (char *p = want; *p; p++)
        *p = (char)toupper((unsigned char)*p);
    return strstr(c->caps, want) != NULL;
}

static int caps_cb(struct imapc *c, void *ctx)
{
    (void)ctx;
    const char *t = c->r.text.data;
    if (strncasecmp(t, "* CAPABILITY ", 13) == 0)
        parse_caps(c, t + 12);
    return 0;
}

struct imapc *imapc_connect(const char *host, int port, bool tls, const char *ca_file,
                            unsigned timeout_ms, char *err, size_t errlen)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    char ps[16];
    snprintf(ps, sizeof(ps), "%d", port);
    int gr = getaddrinfo(host, ps, &hints, &res);
    if (gr != 0 || res == NULL) {
        snprintf(err, errlen, "IMAP source %s: %s", host, gai_strerror(gr));
        return NULL;
    }
    char num[NI_MAXHOST];
    int nr = getnameinfo(res->ai_addr, res->ai_addrlen, num, sizeof(num), NULL, 0, NI_NUMERICHOST);
    int fam = res->ai_family;
    freeaddrinfo(res);
    if (nr != 0) {
        snprintf(err, errlen, "IMAP source %s: cannot use its address", host);
        return NULL;
    }
    char ep[NI_MAXHOST + 16];
    snprintf(ep, sizeof(ep), fam == AF_INET6 ? "[%s]:%d" : "%s:%d", num, port);
    struct sock *s = sock_connect(ep, timeout_ms, err, errlen);
    if (s == NULL)
        return NULL;
    if (tls) {
        char terr[300];
        if (sock_start_tls(s, host, ca_file, terr, sizeof(terr)) < 0) {
            snprintf(err, errlen, "IMAP source %s:%d: %s", host, port, terr);
            sock_close(&s);
            return NULL;
        }
    }
    struct imapc *c = xmalloc(sizeof(*c));
    c->s = s;
    buf_init(&c->r.text, IMAPC_RESP_MAX);
    if (read_resp(c, NULL, 0) < 0) {
        snprintf(err, errlen, "%s", c->err);
        imapc_free(&c);
        return NULL;
    }
    const char *g = c->r.text.data != NULL ? c->r.text.data : "";
    if (strncasecmp(g, "* OK", 4) != 0 && strncasecmp(g, "* PREAUTH", 9) != 0) {
        snprintf(err, errlen, "IMAP source greeted with: %.200s", g);
        imapc_free(&c);
        return NULL;
    }
    const char *cap = strcasestr(g, "[CAPABILITY ");
    if (cap != NULL)
        parse_caps(c, cap + 11);
    if (cap == NULL || strstr(c->caps, " IMAP4REV1 ") == NULL) {
        struct buf cmd;
        buf_init(&cmd, 0);
        next_tag(c);
        buf_printf(&cmd, "%s CAPABILITY", c->tag);
        int r = send_cmd(c, &cmd);
        buf_free(&cmd);
        if (r < 0 || wait_tagged(c, caps_cb, NULL) != 0) {
            snprintf(err, errlen, "%s", c->err);
            imapc_free(&c);
            return NULL;
        }
    }
    return c;
}

struct imapc *imapc_new_mem(const char *p, size_t n)
{
    struct imapc *c = xmalloc(sizeof(*c));
    c->mem = p;
    c->mem_len = n;
    buf_init(&c->r.text, IMAPC_RESP_MAX);
    return c;
}

void imapc_free(struct imapc **cp)
{
    struct imapc *c = *cp;
    if (c == NULL)
        return;
    sock_close(&c->s);
    buf_free(&c->r.text);
    xfree(cp);
}

void imapc_logout(struct imapc **cp)
{
    struct imapc *c = *cp;
    if (c == NULL)
        return;
    if (!c->fetching && c->s != NULL) {
        static const char bye[] = "z LOGOUT\r\n";
        sock_send_nowait(c->s, bye, sizeof(bye) - 1);
    }
    imapc_free(cp);
}

int imapc_login(struct imapc *c, const char *user, const char *password, const char **error_r)
{
    if (imapc_has_cap(c, "LOGINDISABLED")) {
        *error_r = "the IMAP source refuses LOGIN without TLS (LOGINDISABLED): use "
                   "imaps://USER@HOST (STARTTLS is not supported)";
        return 1;
    }
    struct buf cmd;
    buf_init(&cmd, 0);
    next_tag(c);
    buf_printf(&cmd, "%s LOGIN ", c->tag);
    int r = put_string(c, &cmd, user, strlen(user));
    if (r == 0) {
        buf_puts(&cmd, " ");
        r = put_string(c, &cmd, password, strlen(password));
    }
    if (r == 0)
        r = send_cmd(c, &cmd);
    buf_free(&cmd);
    if (r == 0)
        r = wait_tagged(c, caps_cb, NULL);
    *error_r = c->err;
    if (r == 0) {
        /* Capabilities may change after login. */
        const char *t = c->r.text.data;
        const char *cap = strcasestr(t, "[CAPABILITY ");
        if (cap != NULL)
            parse_caps(c, cap + 11);
    }
    return r;
}

/* ---- LIST ------------------------------------------------------------------- */

struct list_ctx {
    int (*cb)(void *ctx, const char *name, size_t len, char delim);
    void *ctx;
};

static int list_cb(struct imapc *c, void *arg)
{
    struct list_ctx *l = arg;
    struct cursor cu;
    cursor_init(&cu, &c->r);
    struct tok t;
    int ret = 0;
    if (tok_next(&cu, &t) < 0 || !tok_is(&t, "*") || tok_next(&cu, &t) < 0 || !tok_is(&t, "LIST"))
        goto out; /* not a LIST response */
    ret = -1;
    if (tok_next(&cu, &t) < 0 || t.kind != TOK_LPAREN)
        goto bad;
    bool noselect = false;
    for (;;) {
        if (tok_next(&cu, &t) < 0 || t.kind == TOK_END)
            goto bad;
        if (t.kind == TOK_RPAREN)
            break;
        if (tok_is(&t, "\\Noselect") || tok_is(&t, "\\NonExistent"))
            noselect = true;
    }
    char delim = 0;
    if (tok_next(&cu, &t) < 0)
        goto bad;
    if (t.kind == TOK_STRING && t.len == 1)
        delim = t.p[0];
    else if (t.kind != TOK_NIL)
        goto bad;
    if (tok_next(&cu, &t) < 0 || (t.kind != TOK_STRING && t.kind != TOK_ATOM) || t.big)
        goto bad;
    ret = noselect ? 0 : l->cb(l->ctx, t.p, t.len, delim);
    goto out;
bad:
    fail(c, "IMAP source: a malformed LIST response");
out:
    cursor_free(&cu);
    return ret;
}

int imapc_list(struct imapc *c, int (*cb)(void *ctx, const char *name, size_t len, char delim),
               void *ctx, const char **error_r)
{
    struct buf cmd;
    buf_init(&cmd, 0);
    next_tag(c);
    buf_printf(&cmd, "%s LIST \"\" \"*\"", c->tag);
    int r = send_cmd(c, &cmd);
    buf_free(&cmd);
    struct list_ctx l = {cb, ctx};
    if (r == 0)
        r = wait_tagged(c, list_cb, &l);
    *error_r = c->err;
    return r == 0 ? 0 : -1;
}

/* ---- EXAMINE ----------------------------------------------------------------- */

static int examine_cb(struct imapc *c, void *arg)
{
    struct imapc_box *b = arg;
    const char *t = c->r.text.data;
    uint64_t v;
    const char *p;
    if ((p = strcasestr(t, "[UIDVALIDITY ")) != NULL) {
        if (sscanf(p + 13, "%" SCNu64, &v) == 1 && v <= UINT32_MAX)
            b->uidvalidity = (uint32_t)v;
    } else if ((p = strcasestr(t, "[UIDNEXT ")) != NULL) {
        if (sscanf(p + 9, "%" SCNu64, &v) == 1 && v <= UINT32_MAX)
            b->uidnext = (uint32_t)v;
    } else if ((p = strcasestr(t, "[HIGHESTMODSEQ ")) != NULL) {
        if (sscanf(p + 15, "%" SCNu64, &v) == 1)
            b->highestmodseq = v;
    } else if (strncmp(t, "* ", 2) == 0 && isdigit((unsigned char)t[2])) {
        char word[16];
        if (sscanf(t + 2, "%" SCNu64 " %15s", &v, word) == 2 && strcasecmp(word, "EXISTS") == 0 &&
            v <= UINT32_MAX)
            b->exists = (uint32_t)v;
    }
    return 0;
}

int imapc_examine(struct imapc *c, const char *name, size_t len, struct imapc_box *out,
                  const char **error_r)
{
    memset(out, 0, sizeof(*out));
    struct buf cmd;
    buf_init(&cmd, 0);
    next_tag(c);
    buf_printf(&cmd, "%s EXAMINE ", c->tag);
    int r = put_string(c, &cmd, name, len);
    if (r == 0 && imapc_has_cap(c, "CONDSTORE"))
        buf_puts(&cmd, " (CONDSTORE)");
    if (r == 0)
        r = send_cmd(c, &cmd);
    buf_free(&cmd);
    if (r == 0)
        r = wait_tagged(c, examine_cb, out);
    *error_r = c->err;
    if (r == 0 && out->uidvalidity == 0) {
        *error_r = "IMAP source: EXAMINE gave no UIDVALIDITY";
        return -1;
    }
    return r;
}

/* ---- UID FETCH, streamed ----------------------------------------------------- */

static int fetch_begin(struct imapc *c, const char *set, const char *items, uint32_t from,
                       bool bodies, size_t max, const char **error_r)
{
    struct buf cmd;
    buf_init(&cmd, 0);
    next_tag(c);
    buf_printf(&cmd, "%s UID FETCH %s %s", c->tag, set, items);
    int r = send_cmd(c, &cmd);
    buf_free(&cmd);
    *error_r = c->err;
    if (r < 0)
        return -1;
    c->fetching = true;
    c->fetch_from = from;
    c->fetch_bodies = bodies;
    c->fetch_max = max;
    return 0;
}

int imapc_fetch_start(struct imapc *c, uint32_t from, uint32_t to, size_t max, const char **error_r)
{
    char set[32];
    if (to == 0)
        snprintf(set, sizeof(set), "%u:*", from);
    else
        snprintf(set, sizeof(set), "%u:%u", from, to);
    return fetch_begin(c, set, "(UID FLAGS INTERNALDATE BODY.PEEK[])", from, true, max, error_r);
}

int imapc_fetch_meta_start(struct imapc *c, uint32_t from, const char **error_r)
{
    char set[32];
    snprintf(set, sizeof(set), "%u:*", from);
    return fetch_begin(c, set, "(UID FLAGS INTERNALDATE RFC822.SIZE)", from, false, 0, error_r);
}

int imapc_fetch_changed_start(struct imapc *c, uint32_t to, uint64_t since, const char **error_r)
{
    char set[32], items[64];
    snprintf(set, sizeof(set), "1:%u", to);
    snprintf(items, sizeof(items), "(UID FLAGS) (CHANGEDSINCE %llu)", (unsigned long long)since);
    return fetch_begin(c, set, items, 0, false, 0, error_r);
}

int imapc_fetch_set_start(struct imapc *c, const char *set, size_t max, const char **error_r)
{
    if (strlen(set) > IMAPC_LINE_MAX / 2 || strspn(set, "0123456789:,") != strlen(set)) {
        *error_r = "IMAP source: a bad UID set (a bug)";
        return -1;
    }
    return fetch_begin(c, set, "(UID FLAGS INTERNALDATE BODY.PEEK[])", 0, true, max, error_r);
}

void imapc_msg_init(struct imapc_msg *m)
{
    memset(m, 0, sizeof(*m));
    buf_init(&m->keywords, MAIL_KEYWORDS_MAX);
    buf_init(&m->body, 0);
}

void imapc_msg_free(struct imapc_msg *m)
{
    buf_free(&m->keywords);
    buf_free(&m->body);
}

static int parse_flags(struct cursor *cu, struct imapc_msg *m)
{
    struct tok t;
    if (tok_next(cu, &t) < 0 || t.kind != TOK_LPAREN)
        return -1;
    static const struct {
        const char *name;
        uint32_t bit;
    } sys[] = {{"\\Seen", MAIL_F_SEEN},
               {"\\Answered", MAIL_F_ANSWERED},
               {"\\Flagged", MAIL_F_FLAGGED},
               {"\\Deleted", MAIL_F_DELETED},
               {"\\Draft", MAIL_F_DRAFT}};
    for (;;) {
        if (tok_next(cu, &t) < 0 || t.kind == TOK_END)
            return -1;
        if (t.kind == TOK_RPAREN)
            return 0;
        if (t.kind != TOK_ATOM)
            return -1;
        size_t k;
        for (k = 0; k < ARRAY_SIZE(sys); k++)
            if (tok_is(&t, sys[k].name))
                break;
        if (k < ARRAY_SIZE(sys)) {
            m->flags |= sys[k].bit;
        } else if (t.p[0] == '\\') {
            /* \Recent and extensions: not stored flags */
        } else if (mail_keywords_add(&m->keywords, t.p, t.len) != 0) {
            m->bad_keywords++;
        }
    }
}

/* One FETCH response into m: 1 a message with a body, 0 another response. */
static int parse_fetch(struct imapc *c, struct imapc_msg *m)
{
    struct cursor cu;
    cursor_init(&cu, &c->r);
    struct tok t;
    uint64_t v;
    int ret = 0;
    bool have_body = false, have_uid = false;
    if (tok_next(&cu, &t) < 0 || !tok_is(&t, "*") || tok_next(&cu, &t) < 0 ||
        tok_u64(&t, UINT32_MAX, &v) < 0 || tok_next(&cu, &t) < 0 || !tok_is(&t, "FETCH"))
        goto out;
    ret = -1;
    if (tok_next(&cu, &t) < 0 || t.kind != TOK_LPAREN)
        goto bad;
    for (;;) {
        if (tok_next(&cu, &t) < 0 || t.kind == TOK_END)
            goto bad;
        if (t.kind == TOK_RPAREN)
            break;
        if (tok_is(&t, "UID")) {
            if (tok_next(&cu, &t) < 0 || tok_u64(&t, UINT32_MAX, &v) < 0 || v == 0)
                goto bad;
            m->uid = (uint32_t)v;
            have_uid = true;
        } else if (tok_is(&t, "FLAGS")) {
            if (parse_flags(&cu, m) < 0)
                goto bad;
        } else if (tok_is(&t, "INTERNALDATE")) {
            if (tok_next(&cu, &t) < 0 || t.kind != TOK_STRING)
                goto bad;
            m->has_date = imapc_parse_date(t.p, t.len, &m->internal_date) == 0;
        } else if (tok_is(&t, "BODY[]")) {
            if (tok_next(&cu, &t) < 0)
                goto bad;
            if (t.kind == TOK_NIL) {
                buf_reset(&m->body);
            } else if (t.kind != TOK_STRING) {
                goto bad;
            } else if (t.big) {
                m->size = t.len;
                m->too_big = c->r.big_dropped;
            } else {
                m->size = t.len;
                buf_reset(&m->body);
                if (t.len > c->fetch_max)
                    m->too_big = true;
                else if (t.len > 0)
                    buf_append(&m->body, t.p, t.len);
            }
            have_body = true;
        } else if (tok_is(&t, "RFC822.SIZE") && !c->fetch_bodies) {
            if (tok_next(&cu, &t) < 0 || tok_u64(&t, UINT32_MAX, &v) < 0)
                goto bad;
            m->size = v;
        } else {
            /* another item (MODSEQ, ...): its value is skipped */
            if (tok_next(&cu, &t) < 0 || tok_skip_value(&cu, &t) < 0)
                goto bad;
        }
    }
    ret = have_uid && (have_body || !c->fetch_bodies) ? 1 : 0;
    goto out;
bad:
    fail(c, "IMAP source: a malformed FETCH response");
out:
    cursor_free(&cu);
    return ret;
}

int imapc_fetch_next(struct imapc *c, struct imapc_msg *m, const char **error_r)
{
    size_t tl = strlen(c->tag);
    *error_r = c->err;
    if (!c->fetching)
        return 0;
    for (;;) {
        m->uid = 0;
        m->flags = 0;
        m->has_date = false;
        m->too_big = false;
        m->size = 0;
        m->bad_keywords = 0;
        buf_reset(&m->keywords);
        buf_reset(&m->body);
        if (read_resp(c, &m->body, c->fetch_max) < 0) {
            c->fetching = false;
            return -1;
        }
        const char *t = c->r.text.data != NULL ? c->r.text.data : "";
        if (strncmp(t, c->tag, tl) == 0 && t[tl] == ' ') {
            c->fetching = false;
            if (strncasecmp(t + tl + 1, "OK", 2) == 0)
                return 0;
            fail(c, "IMAP source said: %.200s", t + tl + 1);
            return -1;
        }
        if (strncmp(t, "* BYE", 5) == 0) {
            c->fetching = false;
            fail(c, "IMAP source closed the connection: %.200s", t);
            return -1;
        }
        int r = parse_fetch(c, m);
        if (r < 0) {
            c->fetching = false;
            return -1;
        }
        /* "from:*" includes the highest UID even below from. */
        if (r == 1 && m->uid >= c->fetch_from)
            return 1;
    }
}

/* ---- dates ------------------------------------------------------------------- */

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

int imapc_parse_date(const char *s, size_t len, int64_t *out_r)
{
    char b[40];
    if (len >= sizeof(b))
        return -1;
    memcpy(b, s, len);
    b[len] = '\0';
    const char *p = b;
    while (*p == ' ')
        p++;
    unsigned day, hh, mm, ss;
    char mon[4];
    int year, n = 0;
    char sign;
    unsigned zone;
    if (sscanf(p, "%2u-%3c-%4d %2u:%2u:%2u %c%4u%n", &day, mon, &year, &hh, &mm, &ss, &sign, &zone,
               &n) != 8 ||
        p[n] != '\0')
        return -1;
    mon[3] = '\0';
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    unsigned m;
    for (m = 0; m < 12; m++)
        if (strcasecmp(mon, months[m]) == 0)
            break;
    if (m == 12 || day < 1 || day > 31 || hh > 23 || mm > 59 || ss > 60 || year < 1900 ||
        year > 9999 || (sign != '+' && sign != '-') || zone % 100 > 59 || zone > 2359)
        return -1;
    int64_t t = days_from_civil(year, m + 1, day) * 86400 + hh * 3600 + mm * 60 + ss;
    int64_t off = (int64_t)(zone / 100) * 3600 + (zone % 100) * 60;
    *out_r = sign == '+' ? t - off : t + off;
    return 0;
}
