/*
 * smtp — see smtp.h. The input framer is a small state machine per mode:
 * COMMAND mode copies at most cmd_line_max - 2 octets into a fixed buffer
 * (so memory never depends on what the peer sends) and skips the rest of a
 * bad line with memchr; DATA mode is the hot path and moves whole runs of
 * bytes between CRs with memchr/memcpy, stepping byte by byte only at line
 * boundaries where dot-stuffing and the terminator are decided.
 */
#include "smtp/smtp.h"

#include <stdlib.h>
#include <string.h>

/* Command-mode states. */
enum smtp_cmd_state {
    SMTP_C_TEXT,    /* inside a line */
    SMTP_C_CR,      /* saw CR; LF must follow */
    SMTP_C_DISCARD, /* bad line already reported: skip through the next LF */
};

/* DATA-mode states. Only CR can change the state in the middle of a line:
 * bare LF and NUL are merely flagged, which is what lets SMTP_D_TEXT scan
 * with memchr for '\r' alone. */
enum smtp_data_state {
    SMTP_D_LINE_START, /* just after CRLF (or the 354) */
    SMTP_D_DOT,        /* line started with '.', which is never stored */
    SMTP_D_DOT_CR,     /* "." CR at line start: LF ends the message */
    SMTP_D_TEXT,       /* inside a line */
    SMTP_D_CR,         /* inside a line, saw CR (already stored) */
};

/* A buffer that held a big message is released at the next DATA rather than
 * kept for the connection's lifetime. */
#define SMTP_MSG_KEEP_CAP (256 * 1024)

struct smtp_in {
    struct smtp_limits lim;
    bool data_mode;

    enum smtp_cmd_state cstate;
    char *line; /* cmd_line_max - 2 octets + NUL, allocated once */
    size_t line_len;

    enum smtp_data_state dstate;
    struct buf msg;
    uint64_t seen;     /* unstuffed octets of this message, incl. excess */
    uint64_t text_len; /* octets of the current line, excluding CRLF */
    bool too_big, line_too_long, bare_lf, bare_cr, nul;
};

struct smtp_in *smtp_in_new(const struct smtp_limits *limits)
{
    ASSERT(limits != NULL);
    struct smtp_in *in = xmalloc(sizeof(*in));
    in->lim = *limits;
    /* Zero means the RFC value; below 3 no line could hold a single octet. */
    if (in->lim.cmd_line_max == 0)
        in->lim.cmd_line_max = SMTP_CMD_LINE_MAX;
    if (in->lim.cmd_line_max < 3)
        in->lim.cmd_line_max = 3;
    if (in->lim.text_line_max == 0)
        in->lim.text_line_max = SMTP_TEXT_LINE_MAX;
    if (in->lim.text_line_max < 3)
        in->lim.text_line_max = 3;
    in->line = xmalloc(in->lim.cmd_line_max - 1);
    /* msg_max is enforced by data_store(); the buf max is a second fence. A
     * msg_max of 0 accepts only the empty message. */
    buf_init(&in->msg, in->lim.msg_max);
    in->cstate = SMTP_C_TEXT;
    return in;
}

void smtp_in_free(struct smtp_in **inp)
{
    struct smtp_in *in = *inp;
    if (in == NULL)
        return;
    buf_free(&in->msg);
    free(in->line);
    xfree(inp);
}

void smtp_in_start_data(struct smtp_in *in)
{
    if (in->msg.cap > SMTP_MSG_KEEP_CAP)
        buf_free(&in->msg);
    buf_reset(&in->msg);
    in->data_mode = true;
    in->dstate = SMTP_D_LINE_START;
    in->seen = 0;
    in->text_len = 0;
    in->too_big = in->line_too_long = in->bare_lf = in->bare_cr = in->nul = false;
    in->cstate = SMTP_C_TEXT;
    in->line_len = 0;
}

const struct buf *smtp_in_message(const struct smtp_in *in)
{
    return &in->msg;
}

uint64_t smtp_in_data_seen(const struct smtp_in *in)
{
    return in->seen;
}

bool smtp_in_in_data(const struct smtp_in *in)
{
    return in->data_mode;
}

/* ---- COMMAND mode ----------------------------------------------------- */

static size_t cmd_feed(struct smtp_in *in, const char *p, size_t n, struct smtp_in_event *ev)
{
    size_t content_max = in->lim.cmd_line_max - 2;
    size_t i = 0;
    while (i < n) {
        if (in->cstate == SMTP_C_DISCARD) {
            const char *lf = memchr(p + i, '\n', n - i);
            if (lf == NULL)
                return n;
            i = (size_t)(lf - p) + 1;
            in->cstate = SMTP_C_TEXT;
            in->line_len = 0;
            continue;
        }
        char c = p[i++];
        if (in->cstate == SMTP_C_CR) {
            if (c == '\n') {
                in->line[in->line_len] = '\0';
                ev->type = SMTP_IN_LINE;
                ev->line = in->line;
                ev->len = in->line_len;
                /* The text stays in in->line until the next feed overwrites
                 * it, which is exactly the lifetime smtp.h promises. */
                in->line_len = 0;
                in->cstate = SMTP_C_TEXT;
                return i;
            }
            /* c is not LF so it cannot end the line: it is discarded too. */
            in->cstate = SMTP_C_DISCARD;
            ev->type = SMTP_IN_BARE_CR;
            return i;
        }
        if (c == '\r') {
            in->cstate = SMTP_C_CR;
        } else if (c == '\n') {
            in->line_len = 0;
            ev->type = SMTP_IN_BARE_LF;
            return i;
        } else if (c == '\0') {
            in->cstate = SMTP_C_DISCARD;
            ev->type = SMTP_IN_NUL;
            return i;
        } else if (in->line_len >= content_max) {
            /* Reported now, not at the LF, so a peer streaming an endless
             * line gets its answer (and can be dropped) without waiting. */
            in->cstate = SMTP_C_DISCARD;
            ev->type = SMTP_IN_TOO_LONG;
            return i;
        } else {
            in->line[in->line_len++] = c;
        }
    }
    return n;
}

/* ---- DATA mode -------------------------------------------------------- */

/* Appends message octets, keeping only the first msg_max. */
static void data_store(struct smtp_in *in, const char *p, size_t n)
{
    in->seen += n;
    size_t room = in->lim.msg_max - in->msg.len;
    if (n > room) {
        in->too_big = true;
        n = room;
    }
    if (n > 0 && buf_append(&in->msg, p, n) < 0)
        panic("smtp: message buffer refused %zu octets below msg_max", n);
}

static void data_text(struct smtp_in *in, uint64_t add)
{
    in->text_len += add;
    if (in->text_len > in->lim.text_line_max - 2)
        in->line_too_long = true;
}

static size_t data_feed(struct smtp_in *in, const char *p, size_t n, struct smtp_in_event *ev)
{
    size_t i = 0;
    size_t span = 0; /* p[span..i) is stored verbatim, flushed lazily */
    while (i < n) {
        switch (in->dstate) {
        case SMTP_D_LINE_START:
            if (p[i] == '.') {
                data_store(in, p + span, i - span);
                span = ++i;
                in->dstate = SMTP_D_DOT;
            } else {
                in->dstate = SMTP_D_TEXT;
            }
            break;
        case SMTP_D_DOT:
            if (p[i] == '\r') {
                /* Held back: stored only if no LF follows. */
                span = ++i;
                in->dstate = SMTP_D_DOT_CR;
            } else {
                /* RFC 5321 4.5.2: the leading dot is removed; this byte is
                 * ordinary text (a second dot, a bare LF, ...). */
                in->dstate = SMTP_D_TEXT;
            }
            break;
        case SMTP_D_DOT_CR:
            if (p[i] == '\n') {
                i++;
                ev->type = SMTP_IN_DATA_END;
                ev->too_big = in->too_big;
                ev->line_too_long = in->line_too_long;
                ev->bare_lf = in->bare_lf;
                ev->bare_cr = in->bare_cr;
                ev->nul = in->nul;
                in->data_mode = false;
                in->cstate = SMTP_C_TEXT;
                in->line_len = 0;
                return i;
            }
            data_store(in, p + span, i - span);
            span = i;
            data_store(in, "\r", 1);
            in->bare_cr = true;
            data_text(in, 1);
            in->dstate = SMTP_D_TEXT;
            break;
        case SMTP_D_CR:
            if (p[i] == '\n') {
                i++;
                in->text_len = 0;
                in->dstate = SMTP_D_LINE_START;
            } else {
                in->bare_cr = true;
                data_text(in, 1);
                in->dstate = SMTP_D_TEXT;
            }
            break;
        case SMTP_D_TEXT: {
            const char *cr = memchr(p + i, '\r', n - i);
            size_t end = cr != NULL ? (size_t)(cr - p) : n;
            size_t seg = end - i;
            /* Once a flag is set the message is refused anyway, so later
             * runs need not be searched for it again. */
            if (!in->bare_lf && memchr(p + i, '\n', seg) != NULL)
                in->bare_lf = true;
            if (!in->nul && memchr(p + i, '\0', seg) != NULL)
                in->nul = true;
            data_text(in, seg);
            i = end;
            if (cr != NULL) {
                i++;
                in->dstate = SMTP_D_CR;
            }
            break;
        }
        }
    }
    data_store(in, p + span, n - span);
    return n;
}

size_t smtp_in_feed(struct smtp_in *in, const char *p, size_t n, struct smtp_in_event *ev)
{
    memset(ev, 0, sizeof(*ev));
    if (n == 0)
        return 0;
    return in->data_mode ? data_feed(in, p, n, ev) : cmd_feed(in, p, n, ev);
}

/* ---- command parsing -------------------------------------------------- */

static const struct {
    const char *name;
    enum smtp_verb verb;
} smtp_verbs[] = {
    {"HELO", SMTP_HELO}, {"EHLO", SMTP_EHLO}, {"LHLO", SMTP_LHLO},     {"MAIL", SMTP_MAIL},
    {"RCPT", SMTP_RCPT}, {"DATA", SMTP_DATA}, {"RSET", SMTP_RSET},     {"NOOP", SMTP_NOOP},
    {"QUIT", SMTP_QUIT}, {"VRFY", SMTP_VRFY}, {"HELP", SMTP_HELP},     {"STARTTLS", SMTP_STARTTLS},
    {"AUTH", SMTP_AUTH}, {"BDAT", SMTP_BDAT}, {"XSTATS", SMTP_XSTATS},
};

/* ASCII-only so the locale can never change what a verb means. */
static char smtp_upper(char c)
{
    return c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : c;
}

static bool smtp_ieq(const char *s, size_t len, const char *upper)
{
    size_t i;
    for (i = 0; i < len && upper[i] != '\0'; i++) {
        if (smtp_upper(s[i]) != upper[i])
            return false;
    }
    return i == len && upper[i] == '\0';
}

static bool smtp_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static int smtp_fail(struct smtp_error *err, int code, const char *enhanced, const char *text)
{
    err->code = code;
    err->enhanced = enhanced;
    err->text = text;
    return -1;
}

/* ESMTP parameters after a path: (SP+ esmtp-keyword ["=" esmtp-value])*. */
static int parse_params(const char *s, size_t len, struct smtp_cmd *cmd, struct smtp_error *err)
{
    size_t i = 0;
    while (i < len) {
        while (i < len && s[i] == ' ')
            i++;
        if (i == len)
            break;
        if (cmd->n_params == SMTP_PARAMS_MAX)
            return smtp_fail(err, 555, "5.5.4", "Too many parameters");
        struct smtp_param *prm = &cmd->params[cmd->n_params];
        size_t k = i;
        if (!smtp_alnum(s[i]))
            return smtp_fail(err, 555, "5.5.4", "Malformed parameter");
        while (i < len && (smtp_alnum(s[i]) || s[i] == '-'))
            i++;
        if (i - k > SMTP_PARAM_KEY_MAX)
            return smtp_fail(err, 555, "5.5.4", "Parameter keyword too long");
        for (size_t j = 0; j < i - k; j++)
            prm->key[j] = smtp_upper(s[k + j]);
        prm->key[i - k] = '\0';
        prm->has_value = false;
        prm->value[0] = '\0';
        if (i < len && s[i] == '=') {
            size_t v = ++i;
            while (i < len && s[i] > ' ' && s[i] < 127 && s[i] != '=')
                i++;
            if (i == v)
                return smtp_fail(err, 555, "5.5.4", "Malformed parameter value");
            if (i - v > SMTP_PARAM_VALUE_MAX)
                return smtp_fail(err, 555, "5.5.4", "Parameter value too long");
            memcpy(prm->value, s + v, i - v);
            prm->value[i - v] = '\0';
            prm->has_value = true;
        }
        if (i < len && s[i] != ' ')
            return smtp_fail(err, 555, "5.5.4", "Malformed parameter");
        cmd->n_params++;
    }
    return 0;
}

/* "FROM:<path> params" / "TO:<path> params". */
static int parse_path_cmd(const char *s, size_t len, bool is_mail, struct smtp_cmd *cmd,
                          struct smtp_error *err)
{
    const char *enh = is_mail ? "5.1.7" : "5.1.3";
    const char *kw = is_mail ? "FROM:" : "TO:";
    size_t kwlen = strlen(kw);
    if (len < kwlen || !smtp_ieq(s, kwlen, kw))
        return smtp_fail(err, 501, "5.5.4",
                         is_mail ? "Syntax: MAIL FROM:<address>" : "Syntax: RCPT TO:<address>");
    size_t i = kwlen;
    /* RFC 5321 has no space here, but enough clients send one that Postfix
     * accepts it; exactly one, so "FROM:" followed by junk still fails. */
    if (i < len && s[i] == ' ')
        i++;
    if (i == len || s[i] != '<')
        return smtp_fail(err, 501, enh, "Address must be enclosed in <>");
    const char *path = s + i + 1;
    const char *close = memchr(path, '>', len - i - 1);
    if (close == NULL)
        return smtp_fail(err, 501, enh, "Address must be enclosed in <>");
    size_t plen = (size_t)(close - path);
    if (plen > 0 && path[0] == '@') {
        /* A-d-l ":" — a source route, which RFC 5321 says to accept and
         * ignore. Checked for shape only: "@dom" items joined by ','. */
        const char *colon = memchr(path, ':', plen);
        if (colon == NULL)
            return smtp_fail(err, 501, enh, "Malformed source route");
        for (const char *r = path;;) {
            const char *e = r;
            while (e < colon && *e != ',')
                e++;
            if (*r != '@' || e - r < 2)
                return smtp_fail(err, 501, enh, "Malformed source route");
            if (e == colon)
                break;
            r = e + 1;
        }
        plen -= (size_t)(colon + 1 - path);
        path = colon + 1;
        if (plen == 0)
            return smtp_fail(err, 501, enh, "empty address");
    }
    if (plen == 0) {
        if (!is_mail)
            return smtp_fail(err, 501, enh, "Null recipient address not allowed");
        cmd->addr[0] = '\0';
    } else {
        const char *etext = NULL;
        if (mail_addr_normalize(path, plen, cmd->addr, &etext) < 0)
            return smtp_fail(err, 501, enh, etext);
    }
    size_t rest = (size_t)(close + 1 - s);
    if (rest == len)
        return 0;
    if (s[rest] != ' ')
        return smtp_fail(err, 501, "5.5.4", "Syntax error after address");
    return parse_params(s + rest, len - rest, cmd, err);
}

/* "BDAT chunk-size [SP LAST]" (RFC 3030). */
static bool bdat_arg_valid(const char *s, size_t len)
{
    size_t i = 0;
    while (i < len && s[i] >= '0' && s[i] <= '9')
        i++;
    if (i == 0 || i > 19) /* fits in uint64_t */
        return false;
    return i == len || (len - i == 5 && s[i] == ' ' && smtp_ieq(s + i + 1, 4, "LAST"));
}

int smtp_cmd_parse(const char *line, size_t len, struct smtp_cmd *cmd, struct smtp_error *err)
{
    cmd->verb = SMTP_UNKNOWN;
    cmd->arg[0] = '\0';
    cmd->addr[0] = '\0';
    cmd->n_params = 0;
    if (len > SMTP_CMD_LINE_MAX - 2)
        return smtp_fail(err, 500, "5.5.2", "Line too long");
    if (memchr(line, '\0', len) != NULL)
        return smtp_fail(err, 500, "5.5.2", "Invalid character in command");
    /* Trailing spaces are not arguments ("QUIT " from sloppy clients). */
    while (len > 0 && line[len - 1] == ' ')
        len--;
    size_t vlen = 0;
    while (vlen < len && line[vlen] != ' ')
        vlen++;
    if (vlen == 0)
        return smtp_fail(err, 500, "5.5.2", "Syntax error");
    for (size_t i = 0; i < ARRAY_SIZE(smtp_verbs); i++) {
        if (smtp_ieq(line, vlen, smtp_verbs[i].name)) {
            cmd->verb = smtp_verbs[i].verb;
            break;
        }
    }
    if (cmd->verb == SMTP_UNKNOWN)
        return smtp_fail(err, 500, "5.5.1", "Command unrecognized");

    const char *a = line + vlen;
    size_t alen = len - vlen;
    while (alen > 0 && *a == ' ') {
        a++;
        alen--;
    }
    switch (cmd->verb) {
    case SMTP_HELO:
    case SMTP_EHLO:
    case SMTP_LHLO:
        if (alen == 0 || memchr(a, ' ', alen) != NULL)
            return smtp_fail(err, 501, "5.5.4", "Syntax: HELO/EHLO/LHLO hostname");
        break;
    case SMTP_MAIL:
    case SMTP_RCPT:
        return parse_path_cmd(a, alen, cmd->verb == SMTP_MAIL, cmd, err);
    case SMTP_DATA:
    case SMTP_RSET:
    case SMTP_QUIT:
    case SMTP_STARTTLS:
        if (alen != 0)
            return smtp_fail(err, 501, "5.5.4", "No arguments allowed");
        return 0;
    case SMTP_VRFY:
        if (alen == 0)
            return smtp_fail(err, 501, "5.5.4", "Syntax: VRFY address");
        break;
    case SMTP_AUTH:
        if (alen == 0)
            return smtp_fail(err, 501, "5.5.4", "Syntax: AUTH mechanism");
        break;
    case SMTP_BDAT:
        if (!bdat_arg_valid(a, alen))
            return smtp_fail(err, 501, "5.5.4", "Syntax: BDAT size [LAST]");
        break;
    case SMTP_NOOP:
    case SMTP_HELP:
    case SMTP_XSTATS:
    case SMTP_UNKNOWN:
        break;
    }
    memcpy(cmd->arg, a, alen);
    cmd->arg[alen] = '\0';
    return 0;
}

const struct smtp_param *smtp_cmd_param(const struct smtp_cmd *cmd, const char *key)
{
    for (size_t i = 0; i < cmd->n_params; i++) {
        if (strcmp(cmd->params[i].key, key) == 0)
            return &cmd->params[i];
    }
    return NULL;
}

/* ---- output ----------------------------------------------------------- */

void smtp_reply(struct buf *out, int code, const char *enhanced, const char *text)
{
    size_t old_len = out->len;
    bool has_enh = enhanced != NULL && enhanced[0] != '\0';
    if (text == NULL)
        text = "";
    size_t tlen = strlen(text);
    /* A trailing '\n' would only add an empty last line. */
    if (tlen > 0 && text[tlen - 1] == '\n')
        tlen--;
    size_t pos = 0;
    int rc = 0;
    for (;;) {
        const char *nl = memchr(text + pos, '\n', tlen - pos);
        size_t end = nl != NULL ? (size_t)(nl - text) : tlen;
        rc |= buf_printf(out, "%03d%c", code, nl != NULL ? '-' : ' ');
        if (has_enh)
            rc |= buf_printf(out, "%s ", enhanced);
        size_t start = out->len;
        rc |= buf_append(out, text + pos, end - pos);
        /* Texts may quote peer input: never let a CR or other control
         * byte through, it could forge reply lines. */
        if (rc == 0) {
            for (size_t j = start; j < out->len; j++) {
                if ((unsigned char)out->data[j] < 0x20 || out->data[j] == 0x7f)
                    out->data[j] = '?';
            }
        }
        rc |= buf_append(out, "\r\n", 2);
        if (nl == NULL)
            break;
        pos = end + 1;
    }
    if (rc != 0 && out->data != NULL) {
        /* out->max reached: all or nothing, never half a reply. */
        out->len = old_len;
        out->data[old_len] = '\0';
    }
}

void smtp_dot_stuff(const void *msg, size_t len, struct buf *out)
{
    const char *p = msg;
    size_t pos = 0;
    if (len > 0 && p[0] == '.')
        buf_append(out, ".", 1);
    /* Lines start only after CRLF, exactly as smtp_in reads them back, so
     * stuffing and unstuffing are inverse even for messages with bare LF. */
    while (pos < len) {
        const char *hit = memmem(p + pos, len - pos, "\r\n.", 3);
        if (hit == NULL) {
            buf_append(out, p + pos, len - pos);
            break;
        }
        size_t upto = (size_t)(hit - p) + 2;
        buf_append(out, p + pos, upto - pos);
        buf_append(out, ".", 1);
        pos = upto;
    }
    if (len > 0 && (len < 2 || p[len - 2] != '\r' || p[len - 1] != '\n'))
        buf_append(out, "\r\n", 2);
    buf_append(out, ".\r\n", 3);
}
