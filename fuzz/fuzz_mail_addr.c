/*
 * fuzz_mail_addr — libFuzzer target for mail_addr_normalize: no crash on
 * any bytes, and the normal form is a fixed point (normalizing it again
 * gives the same string), lowercase, within the limits, with a valid domain.
 */
#include <stdint.h>
#include <string.h>

#include "mail/mail.h"
#include "util/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char out[MAIL_ADDR_MAX + 1];
    const char *error = NULL;
    if (mail_addr_normalize((const char *)data, size, out, &error) < 0) {
        ASSERT(error != NULL && error[0] != '\0');
        return 0;
    }
    size_t len = strlen(out);
    ASSERT(len == size && len <= MAIL_ADDR_MAX);
    for (size_t i = 0; i < len; i++)
        ASSERT(!(out[i] >= 'A' && out[i] <= 'Z'));
    char again[MAIL_ADDR_MAX + 1];
    ASSERT(mail_addr_normalize(out, len, again, &error) == 0);
    ASSERT(strcmp(again, out) == 0);
    const char *dom = mail_addr_domain(out);
    ASSERT(dom > out + 1 && (size_t)(dom - out - 1) <= MAIL_LOCAL_MAX);
    char d[MAIL_DOMAIN_MAX + 1];
    ASSERT(mail_domain_normalize(dom, d, &error) == 0);
    ASSERT(strcmp(d, dom) == 0);
    return 0;
}
