/*
 * password — yescrypt hashing and verification through libxcrypt. struct
 * crypt_data is ~32 KiB, so it lives on the heap, and it is wiped after use
 * because it held the plaintext.
 */
#include <crypt.h>
#include <stdlib.h>
#include <string.h>

#include "directory/directory.h"
#include "util/util.h"

/* Longer inputs only buy an attacker hashing work per guess. */
#define DIR_PASSWORD_MAX 1024

int dir_password_hash(const char *pw, char out[DIR_HASH_MAX + 1], const char **error_r)
{
    char salt[CRYPT_GENSALT_OUTPUT_SIZE];
    size_t pwlen = pw != NULL ? strlen(pw) : 0;

    if (pwlen == 0) {
        *error_r = "empty password";
        return -1;
    }
    if (pwlen > DIR_PASSWORD_MAX) {
        *error_r = "password too long";
        return -1;
    }
    /* NULL random bytes: libxcrypt draws the salt from the OS itself. */
    if (crypt_gensalt_rn("$y$", 0, NULL, 0, salt, sizeof(salt)) == NULL) {
        *error_r = "cannot generate password salt";
        return -1;
    }
    struct crypt_data *cd = xmalloc(sizeof(*cd));
    const char *h = crypt_r(pw, salt, cd);
    int ret = -1;
    /* Failures come back as NULL or as a "*..." marker depending on build. */
    if (h == NULL || h[0] == '*')
        *error_r = "password hashing failed";
    else if (str_copy(out, h, DIR_HASH_MAX + 1) > DIR_HASH_MAX)
        *error_r = "password hash too long";
    else
        ret = 0;
    explicit_bzero(cd, sizeof(*cd));
    free(cd);
    return ret;
}

bool dir_password_verify(const char *pw, const char *hash)
{
    if (pw == NULL || hash == NULL || pw[0] == '\0' || hash[0] == '\0' ||
        strlen(pw) > DIR_PASSWORD_MAX)
        return false;
    struct crypt_data *cd = xmalloc(sizeof(*cd));
    const char *h = crypt_r(pw, hash, cd);
    bool ok = false;
    if (h != NULL && h[0] != '*') {
        size_t n = strlen(hash);
        if (strlen(h) == n) {
            /* Constant time in the content: no early exit on a mismatch. */
            unsigned char diff = 0;
            for (size_t i = 0; i < n; i++)
                diff |= (unsigned char)(h[i] ^ hash[i]);
            ok = diff == 0;
        }
    }
    explicit_bzero(cd, sizeof(*cd));
    free(cd);
    return ok;
}
