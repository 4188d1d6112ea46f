/* mail — see mail.h. */
#include "mail/mail.h"

#include <ctype.h>
#include <string.h>

/* RFC 5322 atext. */
static bool is_atext(unsigned char c)
{
    if (isalnum(c))
        return true;
    return c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

static int domain_check(const char *d, size_t len, const char **error_r)
{
    if (len == 0) {
        *error_r = "empty domain";
        return -1;
    }
    if (len > MAIL_DOMAIN_MAX) {
        *error_r = "domain too long";
        return -1;
    }
    if (d[0] == '[') {
        *error_r = "address literals are not supported";
        return -1;
    }
    size_t label = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)d[i];
        if (c == '.') {
            if (label == 0 || d[i - 1] == '-') {
                *error_r = "malformed domain";
                return -1;
            }
            label = 0;
            continue;
        }
        if (!isalnum(c) && c != '-') {
            *error_r = "invalid character in domain";
            return -1;
        }
        if (label == 0 && c == '-') {
            *error_r = "malformed domain";
            return -1;
        }
        if (++label > 63) {
            *error_r = "domain label too long";
            return -1;
        }
    }
    if (label == 0 || d[len - 1] == '-') {
        *error_r = "malformed domain";
        return -1;
    }
    return 0;
}

int mail_addr_normalize(const char *in, size_t len, char out[MAIL_ADDR_MAX + 1],
                        const char **error_r)
{
    if (len == 0) {
        *error_r = "empty address";
        return -1;
    }
    if (len > MAIL_ADDR_MAX) {
        *error_r = "address too long";
        return -1;
    }
    const char *at = memrchr(in, '@', len);
    if (at == NULL) {
        *error_r = "address has no domain";
        return -1;
    }
    size_t llen = (size_t)(at - in);
    if (llen == 0) {
        *error_r = "empty local part";
        return -1;
    }
    if (llen > MAIL_LOCAL_MAX) {
        *error_r = "local part too long";
        return -1;
    }
    if (in[0] == '"') {
        *error_r = "quoted local parts are not supported";
        return -1;
    }
    for (size_t i = 0; i < llen; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == '.') {
            if (i == 0 || i == llen - 1 || in[i - 1] == '.') {
                *error_r = "malformed local part";
                return -1;
            }
            continue;
        }
        if (!is_atext(c)) {
            *error_r = "invalid character in local part";
            return -1;
        }
    }
    if (domain_check(at + 1, len - llen - 1, error_r) < 0)
        return -1;
    for (size_t i = 0; i < len; i++)
        out[i] = (char)tolower((unsigned char)in[i]);
    out[len] = '\0';
    return 0;
}

const char *mail_addr_domain(const char *addr)
{
    const char *at = strrchr(addr, '@');
    return at != NULL ? at + 1 : addr + strlen(addr);
}

int mail_domain_normalize(const char *in, char out[MAIL_DOMAIN_MAX + 1], const char **error_r)
{
    size_t len = strlen(in);
    if (domain_check(in, len, error_r) < 0)
        return -1;
    for (size_t i = 0; i <= len; i++)
        out[i] = (char)tolower((unsigned char)in[i]);
    return 0;
}

bool mail_store_name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > MAIL_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
}
