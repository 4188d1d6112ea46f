/* mail — flags, keywords and line endings; see mail.h. */
#include "mail/mail.h"

#include <string.h>
#include <strings.h>

/* RFC 3501 ATOM-CHAR: any CHAR except atom-specials. */
static bool is_atom_char(unsigned char c)
{
    if (c <= 0x20 || c >= 0x7f)
        return false;
    return strchr("(){%*\"\\]", c) == NULL;
}

bool mail_keyword_valid(const char *s, size_t len)
{
    if (len == 0 || len > MAIL_KEYWORDS_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (!is_atom_char((unsigned char)s[i]))
            return false;
    }
    return true;
}

int mail_keywords_add(struct buf *list, const char *kw, size_t len)
{
    if (!mail_keyword_valid(kw, len))
        return -1;
    /* Already there? Walk the space-separated words. */
    const char *p = list->data, *end = list->len > 0 ? list->data + list->len : NULL;
    while (end != NULL && p < end) {
        const char *sp = memchr(p, ' ', (size_t)(end - p));
        size_t wlen = sp != NULL ? (size_t)(sp - p) : (size_t)(end - p);
        if (wlen == len && strncasecmp(p, kw, len) == 0)
            return 0;
        p = sp != NULL ? sp + 1 : end;
    }
    size_t need = len + (list->len > 0 ? 1 : 0);
    if (list->len + need > MAIL_KEYWORDS_MAX)
        return 1;
    if (list->len > 0 && buf_append(list, " ", 1) < 0)
        return 1;
    if (buf_append(list, kw, len) < 0) {
        if (list->len > 0 && list->data[list->len - 1] == ' ')
            list->data[--list->len] = '\0';
        return 1;
    }
    return 0;
}

void mail_crlf_init(struct mail_crlf *c)
{
    memset(c, 0, sizeof(*c));
}

/* Emits `n` line endings (each pending bare CR becomes one). */
static int crlf_lines(struct buf *out, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
        if (buf_append(out, "\r\n", 2) < 0)
            return -1;
    }
    return 0;
}

int mail_crlf_feed(struct mail_crlf *c, struct buf *out, const void *p, size_t n)
{
    const char *s = p;
    size_t i = 0;
    while (i < n) {
        /* Copy a run of ordinary octets in one append. */
        size_t j = i;
        while (j < n && s[j] != '\r' && s[j] != '\n') {
            if (s[j] == '\0')
                c->nul++;
            j++;
        }
        if (j > i) {
            if (c->pending_cr > 0) {
                /* CRs followed by text: each was a bare CR, a line end. */
                c->bare_cr += c->pending_cr;
                uint64_t k = c->pending_cr;
                c->pending_cr = 0;
                if (crlf_lines(out, k) < 0)
                    return -1;
            }
            if (buf_append(out, s + i, j - i) < 0)
                return -1;
            i = j;
            continue;
        }
        if (s[i] == '\r') {
            c->pending_cr++;
        } else {
            /* LF: the CRs right before it (if any) and it are one line
             * end; more than one CR counts the extra ones as bare. */
            if (c->pending_cr > 1)
                c->bare_cr += c->pending_cr - 1;
            c->pending_cr = 0;
            if (buf_append(out, "\r\n", 2) < 0)
                return -1;
        }
        i++;
    }
    return 0;
}

int mail_crlf_finish(struct mail_crlf *c, struct buf *out)
{
    uint64_t k = c->pending_cr;
    c->bare_cr += k;
    c->pending_cr = 0;
    return crlf_lines(out, k);
}
