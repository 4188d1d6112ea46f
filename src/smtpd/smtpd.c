/* smtpd — see smtpd.h. */
#include "smtpd/smtpd.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SMTPD_MAX_ERRORS 10
#define SMTPD_HELO_MAX   255

struct smtpd {
    struct net_listener *l;
    struct smtpd_config cfg;
    struct smtpd_hooks h;
    void *server_ctx;
    uint64_t next_id;
};

struct smtpd_session {
    struct smtpd *d;
    struct net_conn *conn; /* NULL once the connection is gone */
    struct smtp_in *in;
    void *sctx;
    char id[48];
    char helo[SMTPD_HELO_MAX + 1];
    bool greeted;
    bool esmtp;
    bool in_mail;
    char sender[MAIL_ADDR_MAX + 1];
    size_t n_rcpts;
    bool rcpt_tried; /* a well-formed RCPT reached the handler in this transaction */
    unsigned errors;
    bool pending; /* data() outstanding */
    struct buf out;
};

void smtpd_reply_set(struct smtpd_reply *r, int code, const char *enhanced, const char *fmt, ...)
{
    r->code = code;
    r->enhanced = enhanced;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->text, sizeof(r->text), fmt, ap);
    va_end(ap);
}

static void say(struct smtpd_session *s, int code, const char *enh, const char *fmt, ...)
    TERN_PRINTF(4, 5);
static void say(struct smtpd_session *s, int code, const char *enh, const char *fmt, ...)
{
    if (s->conn == NULL)
        return;
    char text[SMTPD_TEXT_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    buf_reset(&s->out);
    smtp_reply(&s->out, code, enh, text);
    net_conn_write(s->conn, s->out.data, s->out.len);
}

void smtpd_send(struct smtpd_session *s, const struct smtpd_reply *r)
{
    say(s, r->code, r->enhanced, "%s", r->text);
}

/* Counts a client error; too many end the session. */
static void client_error(struct smtpd_session *s)
{
    if (++s->errors < SMTPD_MAX_ERRORS || s->conn == NULL)
        return;
    say(s, 421, "4.7.0", "too many errors, closing connection");
    net_conn_close(s->conn);
}

static void txn_reset(struct smtpd_session *s)
{
    bool had = s->in_mail;
    s->in_mail = false;
    s->sender[0] = '\0';
    s->n_rcpts = 0;
    s->rcpt_tried = false;
    if (had && s->d->h.reset != NULL)
        s->d->h.reset(s->sctx);
}

static bool lmtp(const struct smtpd_session *s)
{
    return s->d->cfg.dialect == SMTPD_LMTP;
}

/* ---- commands --------------------------------------------------------- */

static void cmd_hello(struct smtpd_session *s, const struct smtp_cmd *cmd)
{
    const struct smtpd_config *cfg = &s->d->cfg;
    if (lmtp(s) != (cmd->verb == SMTP_LHLO)) {
        say(s, 500, "5.5.1", lmtp(s) ? "this is LMTP: use LHLO" : "this is SMTP: use EHLO");
        client_error(s);
        return;
    }
    txn_reset(s);
    str_copy(s->helo, cmd->arg, sizeof(s->helo));
    s->greeted = true;
    s->esmtp = cmd->verb != SMTP_HELO;
    if (!s->esmtp) {
        say(s, 250, NULL, "%s", cfg->hostname);
        return;
    }
    struct buf text;
    buf_init(&text, 0);
    buf_printf(&text, "%s\nPIPELINING\nENHANCEDSTATUSCODES\n8BITMIME\nSIZE %llu", cfg->hostname,
               (unsigned long long)cfg->max_message_size);
    for (const char *const *e = cfg->extensions; e != NULL && *e != NULL; e++)
        buf_printf(&text, "\n%s", *e);
    buf_reset(&s->out);
    smtp_reply(&s->out, 250, NULL, text.data);
    net_conn_write(s->conn, s->out.data, s->out.len);
    buf_free(&text);
}

static bool role_param(const struct smtpd_config *cfg, const char *key)
{
    for (const char *const *p = cfg->mail_params; p != NULL && *p != NULL; p++)
        if (strcmp(*p, key) == 0)
            return true;
    return false;
}

static void cmd_mail(struct smtpd_session *s, const struct smtp_cmd *cmd)
{
    const struct smtpd_config *cfg = &s->d->cfg;
    if (!s->greeted) {
        say(s, 503, "5.5.1", "send %s first", lmtp(s) ? "LHLO" : "EHLO or HELO");
        client_error(s);
        return;
    }
    if (s->in_mail) {
        say(s, 503, "5.5.1", "nested MAIL command");
        client_error(s);
        return;
    }
    for (size_t i = 0; i < cmd->n_params; i++) {
        const struct smtp_param *p = &cmd->params[i];
        if (!s->esmtp) {
            say(s, 555, "5.5.4", "parameters need EHLO");
            client_error(s);
            return;
        }
        if (strcmp(p->key, "SIZE") == 0) {
            uint64_t size;
            if (!p->has_value || parse_u64(p->value, UINT64_MAX, &size) < 0) {
                say(s, 501, "5.5.4", "malformed SIZE parameter");
                client_error(s);
                return;
            }
            if (size > cfg->max_message_size) {
                say(s, 552, "5.3.4", "message size exceeds fixed limit of %llu octets",
                    (unsigned long long)cfg->max_message_size);
                return;
            }
        } else if (strcmp(p->key, "BODY") == 0) {
            if (!p->has_value ||
                (strcasecmp(p->value, "7BIT") != 0 && strcasecmp(p->value, "8BITMIME") != 0)) {
                say(s, 501, "5.5.4", "BODY must be 7BIT or 8BITMIME");
                client_error(s);
                return;
            }
        } else if (!role_param(cfg, p->key)) {
            say(s, 555, "5.5.4", "unsupported parameter %s", p->key);
            client_error(s);
            return;
        }
    }
    struct smtpd_reply r;
    if (s->d->h.mail != NULL && s->d->h.mail(s->sctx, cmd, &r) < 0) {
        smtpd_send(s, &r);
        if (r.code >= 500)
            client_error(s);
        return;
    }
    s->in_mail = true;
    s->n_rcpts = 0;
    s->rcpt_tried = false;
    str_copy(s->sender, cmd->addr, sizeof(s->sender));
    say(s, 250, "2.1.0", "sender ok");
}

static void cmd_rcpt(struct smtpd_session *s, const struct smtp_cmd *cmd)
{
    if (!s->in_mail) {
        say(s, 503, "5.5.1", "need MAIL before RCPT");
        client_error(s);
        return;
    }
    if (cmd->n_params > 0) {
        say(s, 555, "5.5.4", "unsupported parameter %s", cmd->params[0].key);
        client_error(s);
        return;
    }
    if (s->n_rcpts >= s->d->cfg.max_recipients) {
        say(s, 452, "4.5.3", "too many recipients");
        return;
    }
    struct smtpd_reply r;
    s->rcpt_tried = true;
    if (s->d->h.rcpt(s->sctx, cmd, &r) == 0)
        s->n_rcpts++;
    smtpd_send(s, &r);
}

static void cmd_data(struct smtpd_session *s)
{
    if (!s->in_mail) {
        say(s, 503, "5.5.1", "need MAIL before DATA");
        client_error(s);
        return;
    }
    if (s->n_rcpts == 0) {
        say(s, 503, "5.5.1", "no valid recipients");
        /* A pipelining client sends DATA before it sees its RCPT replies
         * (RFC 2920), so DATA after recipients that were all refused (a
         * mailbox being moved, say) is normal, not a client error: counting
         * it would close the mta's pooled connection after a few parks. */
        if (!s->rcpt_tried)
            client_error(s);
        return;
    }
    say(s, 354, NULL, "send the message, end with <CRLF>.<CRLF>");
    smtp_in_start_data(s->in);
    net_conn_rate_check(s->conn, true);
}

static void handle_line(struct smtpd_session *s, const char *line, size_t len)
{
    struct smtp_cmd cmd;
    struct smtp_error err;
    if (smtp_cmd_parse(line, len, &cmd, &err) < 0) {
        say(s, err.code, err.enhanced, "%s", err.text);
        client_error(s);
        return;
    }
    switch (cmd.verb) {
    case SMTP_HELO:
    case SMTP_EHLO:
    case SMTP_LHLO:
        cmd_hello(s, &cmd);
        break;
    case SMTP_MAIL:
        cmd_mail(s, &cmd);
        break;
    case SMTP_RCPT:
        cmd_rcpt(s, &cmd);
        break;
    case SMTP_DATA:
        cmd_data(s);
        break;
    case SMTP_RSET:
        txn_reset(s);
        say(s, 250, "2.0.0", "reset");
        break;
    case SMTP_NOOP:
        say(s, 250, "2.0.0", "ok");
        break;
    case SMTP_QUIT:
        say(s, 221, "2.0.0", "bye");
        net_conn_close(s->conn);
        break;
    case SMTP_VRFY:
        say(s, 252, "2.5.0", "cannot verify, but will accept and attempt delivery");
        break;
    case SMTP_HELP:
        say(s, 214, "2.0.0", "commands: %s MAIL RCPT DATA RSET NOOP QUIT VRFY HELP",
            lmtp(s) ? "LHLO" : "EHLO HELO");
        break;
    default:
        if (s->d->h.command != NULL && s->d->h.command(s->sctx, &cmd, s) == 0)
            break;
        say(s, 502, "5.5.1", "command not implemented");
        client_error(s);
        break;
    }
}

/* DATA is complete: refuse it whole for any framing flag, else hand it to
 * the role, pausing input until smtpd_data_done(). */
static void data_end(struct smtpd_session *s, const struct smtp_in_event *ev)
{
    net_conn_rate_check(s->conn, false);
    int code = 0;
    const char *enh = NULL, *why = NULL;
    if (ev->too_big)
        code = 552, enh = "5.3.4", why = "message exceeds the size limit";
    else if (ev->nul)
        code = 554, enh = "5.6.0", why = "message contains NUL bytes";
    else if (ev->bare_lf || ev->bare_cr)
        code = 554, enh = "5.6.0", why = "message contains a bare CR or LF";
    else if (ev->line_too_long)
        code = 554, enh = "5.6.0", why = "message has a line longer than 998 octets";
    if (code != 0) {
        size_t n = lmtp(s) ? s->n_rcpts : 1;
        for (size_t i = 0; i < n; i++)
            say(s, code, enh, "%s", why);
        txn_reset(s);
        return;
    }
    s->pending = true;
    net_conn_pause(s->conn);
    s->d->h.data(s->sctx, smtp_in_message(s->in));
}

static void session_free(struct smtpd_session *s)
{
    if (s->d->h.session_free != NULL)
        s->d->h.session_free(s->sctx);
    smtp_in_free(&s->in);
    buf_free(&s->out);
    free(s);
}

void smtpd_data_done(struct smtpd_session *s, const struct smtpd_reply *replies, size_t n)
{
    ASSERT(s->pending);
    s->pending = false;
    if (s->conn == NULL) {
        /* The client left while we committed: nobody to tell. */
        session_free(s);
        return;
    }
    for (size_t i = 0; i < n; i++)
        smtpd_send(s, &replies[i]);
    txn_reset(s);
    net_conn_resume(s->conn);
}

/* ---- connection callbacks -------------------------------------------- */

static void *on_accept(struct net_conn *c, void *ctx)
{
    struct smtpd *d = ctx;
    struct smtpd_session *s = xmalloc(sizeof(*s));
    struct smtp_limits lim = {.cmd_line_max = SMTP_CMD_LINE_MAX,
                              .text_line_max = SMTP_TEXT_LINE_MAX,
                              .msg_max = d->cfg.max_message_size};
    s->d = d;
    s->conn = c;
    s->in = smtp_in_new(&lim);
    snprintf(s->id, sizeof(s->id), "%s/%c%llu", d->cfg.name, lmtp(s) ? 'L' : 'S',
             (unsigned long long)++d->next_id);
    buf_init(&s->out, 0);
    s->sctx = d->h.session_new(d->server_ctx, s);
    if (net_conn_siblings(c) > d->cfg.max_sessions) {
        say(s, 421, "4.3.2", "too many connections, try again later");
        net_conn_close(c);
        return s;
    }
    say(s, 220, NULL, "%s %s ready", d->cfg.hostname, lmtp(s) ? "LMTP" : "ESMTP tern");
    return s;
}

static size_t on_data(struct net_conn *c, void *ctx, const char *p, size_t n)
{
    (void)c;
    struct smtpd_session *s = ctx;
    size_t used = 0;
    while (used < n) {
        struct smtp_in_event ev;
        used += smtp_in_feed(s->in, p + used, n - used, &ev);
        switch (ev.type) {
        case SMTP_IN_NONE:
            return used;
        case SMTP_IN_LINE:
            handle_line(s, ev.line, ev.len);
            break;
        case SMTP_IN_TOO_LONG:
            say(s, 500, "5.5.2", "line too long");
            client_error(s);
            break;
        case SMTP_IN_BARE_LF:
        case SMTP_IN_BARE_CR:
            say(s, 500, "5.5.2", "bare CR or LF not allowed, use CRLF");
            client_error(s);
            break;
        case SMTP_IN_NUL:
            say(s, 500, "5.5.2", "NUL byte not allowed");
            client_error(s);
            break;
        case SMTP_IN_DATA_END:
            data_end(s, &ev);
            break;
        }
        /* A pending commit or too many errors stop input here; net offers
         * the rest again after net_conn_resume(). */
        if (s->pending || s->errors >= SMTPD_MAX_ERRORS)
            return used;
    }
    return used;
}

static void on_timeout(struct net_conn *c, void *ctx, const char *why)
{
    (void)c;
    say(ctx, 421, "4.4.2", "%s timeout, closing connection", why);
}

static void on_close(struct net_conn *c, void *ctx)
{
    (void)c;
    struct smtpd_session *s = ctx;
    s->conn = NULL;
    if (!s->pending)
        session_free(s);
    /* else smtpd_data_done() frees it. */
}

struct smtpd *smtpd_listen(struct net_loop *loop, const char *endpoint,
                           const struct smtpd_config *cfg, const struct smtpd_hooks *hooks,
                           void *server_ctx, const struct net_conn_limits *limits,
                           const char **error_r)
{
    static const struct net_conn_handler h = {
        .on_accept = on_accept, .on_data = on_data, .on_timeout = on_timeout, .on_close = on_close};
    struct smtpd *d = xmalloc(sizeof(*d));
    d->cfg = *cfg;
    d->h = *hooks;
    d->server_ctx = server_ctx;
    d->l = net_listen(loop, endpoint, &h, d, limits, error_r);
    if (d->l == NULL) {
        free(d);
        return NULL;
    }
    return d;
}

void smtpd_free(struct smtpd **dp)
{
    struct smtpd *d = *dp;
    if (d == NULL)
        return;
    net_listener_free(&d->l);
    xfree(dp);
}

const char *smtpd_session_id(const struct smtpd_session *s)
{
    return s->id;
}

const char *smtpd_session_peer(const struct smtpd_session *s)
{
    return s->conn != NULL ? net_conn_peer(s->conn) : "gone";
}

const char *smtpd_session_helo(const struct smtpd_session *s)
{
    return s->helo;
}

const char *smtpd_session_sender(const struct smtpd_session *s)
{
    return s->sender;
}

size_t smtpd_session_rcpts(const struct smtpd_session *s)
{
    return s->n_rcpts;
}

bool smtpd_session_esmtp(const struct smtpd_session *s)
{
    return s->esmtp;
}
