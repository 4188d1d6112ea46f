/*
 * fuzz_smtp — libFuzzer target for the smtp input framer and command
 * parser. The first bytes pick the limits and a chunking pattern (so the
 * same session is cut at many different places); the rest is a client's
 * byte stream, driven as a server would: every LINE is parsed, and a "DATA"
 * line switches to DATA mode. A second, whole-buffer run must produce the
 * same events: splitting must never change the result.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "smtp/smtp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Events folded into a hash so two runs can be compared cheaply. */
static uint64_t mix(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3u;
    return h;
}

static void check_cmd(const char *line, size_t len)
{
    static struct smtp_cmd cmd;
    struct smtp_error err;
    if (smtp_cmd_parse(line, len, &cmd, &err) < 0) {
        ASSERT(err.code >= 500 && err.code <= 555);
        ASSERT(err.enhanced != NULL && err.enhanced[0] == '5' && err.text != NULL);
        return;
    }
    ASSERT(cmd.verb != SMTP_UNKNOWN);
    ASSERT(cmd.n_params <= SMTP_PARAMS_MAX);
    ASSERT(strlen(cmd.arg) < len + 1);
    if (cmd.verb == SMTP_MAIL || cmd.verb == SMTP_RCPT) {
        size_t alen = strlen(cmd.addr);
        ASSERT(alen <= MAIL_ADDR_MAX);
        ASSERT(cmd.verb == SMTP_MAIL || alen > 0);
        if (alen > 0) {
            char again[MAIL_ADDR_MAX + 1];
            const char *error;
            ASSERT(mail_addr_normalize(cmd.addr, alen, again, &error) == 0);
            ASSERT(strcmp(again, cmd.addr) == 0);
        }
        for (size_t i = 0; i < cmd.n_params; i++) {
            const struct smtp_param *p = &cmd.params[i];
            ASSERT(p->key[0] != '\0' && strlen(p->key) <= SMTP_PARAM_KEY_MAX);
            ASSERT(p->has_value == (p->value[0] != '\0'));
            ASSERT(smtp_cmd_param(&cmd, p->key) != NULL);
        }
    }
}

static uint64_t run(const struct smtp_limits *lim, const uint8_t *pat, size_t npat, const char *p,
                    size_t n)
{
    struct smtp_in *in = smtp_in_new(lim);
    uint64_t h = 0xcbf29ce484222325u;
    size_t pos = 0, k = 0;
    while (pos < n) {
        size_t chunk = npat == 0 ? n - pos : 1 + pat[k++ % npat];
        if (chunk > n - pos)
            chunk = n - pos;
        size_t off = 0;
        for (;;) {
            struct smtp_in_event ev;
            size_t c = smtp_in_feed(in, p + pos + off, chunk - off, &ev);
            ASSERT(c <= chunk - off);
            off += c;
            if (ev.type == SMTP_IN_NONE) {
                ASSERT(off == chunk);
                break;
            }
            h = mix(h, &ev.type, sizeof(ev.type));
            if (ev.type == SMTP_IN_LINE) {
                ASSERT(ev.len + 2 <= lim->cmd_line_max || lim->cmd_line_max < 3);
                ASSERT(ev.line[ev.len] == '\0');
                ASSERT(memchr(ev.line, '\0', ev.len) == NULL);
                h = mix(h, ev.line, ev.len);
                check_cmd(ev.line, ev.len);
                if (ev.len == 4 && strncasecmp(ev.line, "DATA", 4) == 0) {
                    smtp_in_start_data(in);
                    ASSERT(smtp_in_in_data(in));
                }
            } else if (ev.type == SMTP_IN_DATA_END) {
                const struct buf *m = smtp_in_message(in);
                ASSERT(!smtp_in_in_data(in));
                ASSERT(m->len <= lim->msg_max);
                ASSERT(ev.too_big == (smtp_in_data_seen(in) > lim->msg_max));
                ASSERT(ev.too_big || m->len == smtp_in_data_seen(in));
                ASSERT(ev.nul == (m->len > 0 && memchr(m->data, '\0', m->len) != NULL) ||
                       ev.too_big);
                /* A complete message always ends with its last line's CRLF. */
                ASSERT(ev.too_big || m->len == 0 ||
                       (m->len >= 2 && m->data[m->len - 2] == '\r' && m->data[m->len - 1] == '\n'));
                bool flags[5] = {ev.too_big, ev.line_too_long, ev.bare_lf, ev.bare_cr, ev.nul};
                h = mix(h, flags, sizeof(flags));
                h = mix(h, m->data != NULL ? m->data : "", m->len);
            }
        }
        ASSERT(!smtp_in_in_data(in) || smtp_in_message(in)->len <= lim->msg_max);
        pos += chunk;
    }
    smtp_in_free(&in);
    return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    /* Byte 0: small limits often, so the limit paths get exercised. */
    struct smtp_limits lim = {SMTP_CMD_LINE_MAX, SMTP_TEXT_LINE_MAX, 4096};
    if (data[0] & 1)
        lim.cmd_line_max = 3 + data[1] % 64;
    if (data[0] & 2)
        lim.text_line_max = 3 + data[2] % 64;
    if (data[0] & 4)
        lim.msg_max = data[3] % 128;
    /* Bits 3..5: length of the chunk-size pattern that follows. */
    size_t npat = (size_t)(data[0] >> 3) & 7;
    if (npat > size - 4)
        npat = size - 4;
    const uint8_t *pat = data + 4;
    const char *p = (const char *)data + 4 + npat;
    size_t n = size - 4 - npat;
    uint64_t h1 = run(&lim, pat, npat, p, n);
    uint64_t h2 = run(&lim, NULL, 0, p, n);
    ASSERT(h1 == h2);
    return 0;
}
