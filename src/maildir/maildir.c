/* maildir — see maildir.h. */
#include "maildir/maildir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

struct maildir {
    char *root;
    struct maildir_limits lim;
    struct maildir_folder *folders;
    size_t n_folders;
    struct maildir_skipped *skipped;
    size_t n_skipped;
};

/* ---- folder names: modified UTF-7 ---------------------------------------- */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

static int b64_value(char c)
{
    const char *p = c != '\0' ? strchr(b64, c) : NULL;
    return p != NULL ? (int)(p - b64) : -1;
}

/* True if s[0..n) is valid modified UTF-7 in canonical form (each shift
 * decodes to whole UTF-16 units with zero padding bits, surrogates paired,
 * no printable ASCII inside a shift). */
static bool mutf7_valid(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c > 0x7e)
            return false;
        i++;
        if (c != '&')
            continue;
        if (i < n && s[i] == '-') {
            i++; /* "&-" is '&' */
            continue;
        }
        uint32_t bits = 0;
        unsigned nbits = 0, units = 0;
        uint32_t high = 0; /* a high surrogate waiting for its pair */
        while (i < n && s[i] != '-') {
            int v = b64_value(s[i]);
            if (v < 0)
                return false;
            bits = (bits << 6) | (uint32_t)v;
            nbits += 6;
            if (nbits >= 16) {
                uint32_t u = (bits >> (nbits - 16)) & 0xffff;
                nbits -= 16;
                bits &= (1u << nbits) - 1;
                units++;
                if (high != 0) {
                    if (u < 0xdc00 || u > 0xdfff)
                        return false;
                    high = 0;
                } else if (u >= 0xd800 && u <= 0xdbff) {
                    high = u;
                } else if ((u >= 0xdc00 && u <= 0xdfff) || (u >= 0x20 && u <= 0x7e)) {
                    return false;
                }
            }
            i++;
        }
        if (i >= n || units == 0 || high != 0 || nbits >= 6 || bits != 0)
            return false;
        i++; /* the '-' */
    }
    return true;
}

/* Decodes one UTF-8 code point at s (n octets left): its length, or 0 if
 * invalid (overlong, surrogate, over U+10FFFF, truncated). */
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp_r)
{
    unsigned char c = s[0];
    size_t len;
    uint32_t cp, min;
    if (c < 0x80) {
        *cp_r = c;
        return 1;
    } else if (c >= 0xc2 && c <= 0xdf) {
        len = 2, cp = c & 0x1f, min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3, cp = c & 0x0f, min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4, cp = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t k = 1; k < len; k++) {
        if ((s[k] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[k] & 0x3fu);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    *cp_r = cp;
    return len;
}

static void mutf7_flush(struct buf *out, const uint16_t *units, size_t n)
{
    if (n == 0)
        return;
    buf_append(out, "&", 1);
    uint32_t bits = 0;
    unsigned nbits = 0;
    for (size_t i = 0; i < n; i++) {
        bits = (bits << 16) | units[i];
        nbits += 16;
        while (nbits >= 6) {
            buf_append(out, &b64[(bits >> (nbits - 6)) & 0x3f], 1);
            nbits -= 6;
        }
        bits &= (1u << nbits) - 1;
    }
    if (nbits > 0)
        buf_append(out, &b64[(bits << (6 - nbits)) & 0x3f], 1);
    buf_append(out, "-", 1);
}

/* UTF-8 (no control characters) to modified UTF-7. 0 or -1. */
static int utf8_to_mutf7(const char *s, size_t n, struct buf *out)
{
    uint16_t units[2 * MAILDIR_NAME_MAX];
    size_t nu = 0;
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        size_t len = utf8_decode((const unsigned char *)s + i, n - i, &cp);
        if (len == 0 || cp < 0x20 || (cp >= 0x7f && cp < 0xa0))
            return -1;
        i += len;
        if (cp < 0x7f) {
            mutf7_flush(out, units, nu);
            nu = 0;
            buf_append(out, cp == '&' ? "&-" : (const char *)&s[i - 1], cp == '&' ? 2 : 1);
            continue;
        }
        if (nu + 2 > ARRAY_SIZE(units))
            return -1; /* longer than any name we keep */
        if (cp >= 0x10000) {
            cp -= 0x10000;
            units[nu++] = (uint16_t)(0xd800 + (cp >> 10));
            units[nu++] = (uint16_t)(0xdc00 + (cp & 0x3ff));
        } else {
            units[nu++] = (uint16_t)cp;
        }
    }
    mutf7_flush(out, units, nu);
    return 0;
}

int maildir_folder_name(const char *dirname, char *out, unsigned depth_max, const char **reason_r)
{
    if (depth_max == 0)
        depth_max = MAILDIR_DEPTH_MAX_DEFAULT;
    if (dirname[0] != '.' || strcmp(dirname, ".") == 0 || strcmp(dirname, "..") == 0) {
        *reason_r = "not a Maildir++ folder name";
        return -1;
    }
    struct buf b;
    buf_init(&b, 0);
    const char *p = dirname + 1;
    unsigned depth = 0;
    int rc = 0;
    for (;;) {
        const char *dot = strchr(p, '.');
        size_t n = dot != NULL ? (size_t)(dot - p) : strlen(p);
        if (n == 0) {
            *reason_r = "empty hierarchy level in the name";
            rc = -1;
            break;
        }
        if (++depth > depth_max) {
            *reason_r = "folder hierarchy too deep";
            rc = -1;
            break;
        }
        if (depth > 1)
            buf_append(&b, "/", 1);
        if (memchr(p, '/', n) != NULL) {
            /* Never in a directory entry; it would read as a level. */
            *reason_r = "'/' in the name";
            rc = -1;
            break;
        }
        if (mutf7_valid(p, n)) {
            buf_append(&b, p, n);
        } else if (utf8_to_mutf7(p, n, &b) < 0) {
            *reason_r = "name is neither modified UTF-7 nor UTF-8";
            rc = -1;
            break;
        }
        if (b.len > MAILDIR_NAME_MAX) {
            *reason_r = "folder name too long";
            rc = -1;
            break;
        }
        if (dot == NULL)
            break;
        p = dot + 1;
    }
    if (rc == 0)
        memcpy(out, b.data, b.len + 1);
    buf_free(&b);
    return rc;
}

/* ---- the tree -------------------------------------------------------------- */

static bool is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* A directory with cur/ or new/. */
static bool is_maildir(const char *path)
{
    char *cur = xasprintf("%s/cur", path), *new = xasprintf("%s/new", path);
    bool yes = is_dir(cur) || is_dir(new);
    xfree(&cur);
    xfree(&new);
    return yes;
}

static void add_skipped(struct maildir *md, const char *dirname, const char *reason)
{
    md->skipped = xrealloc(md->skipped, (md->n_skipped + 1) * sizeof(*md->skipped));
    md->skipped[md->n_skipped].dirname = xstrdup(dirname);
    md->skipped[md->n_skipped].reason = reason;
    md->n_skipped++;
}

/* Folder order: INBOX first, then by name, then by directory name. */
struct folder_tmp {
    char *name;
    char *path;
    char *dirname;
};

static int folder_cmp(const void *a, const void *b)
{
    const struct folder_tmp *x = a, *y = b;
    bool xi = strcmp(x->name, "INBOX") == 0, yi = strcmp(y->name, "INBOX") == 0;
    if (xi != yi)
        return xi ? -1 : 1;
    int c = strcmp(x->name, y->name);
    return c != 0 ? c : strcmp(x->dirname, y->dirname);
}

static int skipped_cmp(const void *a, const void *b)
{
    const struct maildir_skipped *x = a, *y = b;
    return strcmp(x->dirname, y->dirname);
}

int maildir_open(const char *root, const struct maildir_limits *lim, struct maildir **md_r,
                 const char **error_r)
{
    struct maildir_limits l = {0};
    if (lim != NULL)
        l = *lim;
    if (l.folders_max == 0)
        l.folders_max = MAILDIR_FOLDERS_MAX_DEFAULT;
    if (l.depth_max == 0)
        l.depth_max = MAILDIR_DEPTH_MAX_DEFAULT;
    if (l.files_max == 0)
        l.files_max = MAILDIR_FILES_MAX_DEFAULT;
    if (l.file_max == 0)
        l.file_max = MAILDIR_FILE_MAX_DEFAULT;
    if (!is_dir(root)) {
        *error_r = "not a directory";
        return -1;
    }
    if (!is_maildir(root)) {
        *error_r = "not a Maildir (no cur/ or new/)";
        errno = EINVAL;
        return -1;
    }
    DIR *d = opendir(root);
    if (d == NULL) {
        *error_r = "cannot list the Maildir";
        return -1;
    }
    struct maildir *md = xmalloc(sizeof(*md));
    md->root = xstrdup(root);
    md->lim = l;
    struct folder_tmp *tmp = xmalloc(sizeof(*tmp));
    size_t n = 1;
    tmp[0].name = xstrdup("INBOX");
    tmp[0].path = xstrdup(root);
    tmp[0].dirname = xstrdup("");
    int rc = 0;
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (de == NULL)
            break;
        const char *dn = de->d_name;
        if (dn[0] != '.' || strcmp(dn, ".") == 0 || strcmp(dn, "..") == 0)
            continue;
        char *path = xasprintf("%s/%s", root, dn);
        if (!is_dir(path) || !is_maildir(path)) {
            xfree(&path);
            continue;
        }
        char name[MAILDIR_NAME_MAX + 1];
        const char *reason;
        if (maildir_folder_name(dn, name, l.depth_max, &reason) < 0) {
            add_skipped(md, dn, reason);
            xfree(&path);
            continue;
        }
        if (strcasecmp(name, "INBOX") == 0) {
            add_skipped(md, dn, "same name as INBOX");
            xfree(&path);
            continue;
        }
        if (n >= l.folders_max) {
            xfree(&path);
            *error_r = "more folders than the limit";
            errno = E2BIG;
            rc = -1;
            break;
        }
        tmp = xrealloc(tmp, (n + 1) * sizeof(*tmp));
        tmp[n].name = xstrdup(name);
        tmp[n].path = path;
        tmp[n].dirname = xstrdup(dn);
        n++;
    }
    if (rc == 0 && errno != 0) {
        *error_r = "cannot list the Maildir";
        rc = -1;
    }
    int e = errno;
    closedir(d);
    qsort(tmp, n, sizeof(*tmp), folder_cmp);
    md->folders = xcalloc(n, sizeof(*md->folders));
    for (size_t i = 0; i < n; i++) {
        if (md->n_folders > 0 && strcmp(tmp[i].name, md->folders[md->n_folders - 1].name) == 0) {
            /* ".Caf&AOk-" and ".Café" are both "Caf&AOk-": keep the first. */
            add_skipped(md, tmp[i].dirname, "same IMAP name as another folder");
            xfree(&tmp[i].name);
            xfree(&tmp[i].path);
        } else {
            md->folders[md->n_folders].name = tmp[i].name;
            md->folders[md->n_folders].path = tmp[i].path;
            md->n_folders++;
        }
        xfree(&tmp[i].dirname);
    }
    xfree(&tmp);
    if (md->n_skipped > 0)
        qsort(md->skipped, md->n_skipped, sizeof(*md->skipped), skipped_cmp);
    if (rc < 0) {
        maildir_free(&md);
        errno = e;
        return -1;
    }
    *md_r = md;
    return 0;
}

void maildir_free(struct maildir **mdp)
{
    struct maildir *md = *mdp;
    if (md == NULL)
        return;
    for (size_t i = 0; i < md->n_folders; i++) {
        free((char *)md->folders[i].name);
        free((char *)md->folders[i].path);
    }
    for (size_t i = 0; i < md->n_skipped; i++)
        free((char *)md->skipped[i].dirname);
    xfree(&md->folders);
    xfree(&md->skipped);
    xfree(&md->root);
    xfree(mdp);
}

size_t maildir_folder_count(const struct maildir *md)
{
    return md->n_folders;
}

const struct maildir_folder *maildir_folder(const struct maildir *md, size_t i)
{
    ASSERT(i < md->n_folders);
    return &md->folders[i];
}

size_t maildir_skipped_count(const struct maildir *md)
{
    return md->n_skipped;
}

const struct maildir_skipped *maildir_skipped(const struct maildir *md, size_t i)
{
    ASSERT(i < md->n_skipped);
    return &md->skipped[i];
}

/* ---- file names --------------------------------------------------------------- */

/* Length of a ",S=digits" / ",W=digits" field at p (up to end), or 0. */
static size_t size_field(const char *p, const char *end)
{
    if (end - p < 4 || p[0] != ',' || (p[1] != 'S' && p[1] != 'W') || p[2] != '=')
        return 0;
    const char *q = p + 3;
    while (q < end && *q >= '0' && *q <= '9')
        q++;
    if (q == p + 3 || (q < end && *q != ','))
        return 0;
    return (size_t)(q - p);
}

unsigned maildir_parse_name(const char *name, const char *const *kw, char *uniq, uint32_t *flags_r,
                            struct buf *keywords)
{
    unsigned problems = 0;
    const char *colon = strchr(name, ':');
    const char *end = colon != NULL ? colon : name + strlen(name);
    size_t u = 0;
    for (const char *p = name; p < end;) {
        size_t skip = size_field(p, end);
        if (skip > 0) {
            p += skip;
            continue;
        }
        uniq[u++] = *p++;
    }
    uniq[u] = '\0';
    uint32_t flags = 0;
    if (colon != NULL && colon[1] == '2' && colon[2] == ',') {
        for (const char *p = colon + 3; *p != '\0'; p++) {
            switch (*p) {
            case 'D':
                flags |= MAIL_F_DRAFT;
                break;
            case 'F':
                flags |= MAIL_F_FLAGGED;
                break;
            case 'P':
                if (keywords != NULL)
                    mail_keywords_add(keywords, "$Forwarded", 10);
                break;
            case 'R':
                flags |= MAIL_F_ANSWERED;
                break;
            case 'S':
                flags |= MAIL_F_SEEN;
                break;
            case 'T':
                flags |= MAIL_F_DELETED;
                break;
            default:
                if (*p >= 'a' && *p <= 'z') {
                    const char *k = kw != NULL ? kw[*p - 'a'] : NULL;
                    if (k == NULL ||
                        (keywords != NULL && mail_keywords_add(keywords, k, strlen(k)) != 0))
                        problems |= MAILDIR_P_KEYWORD;
                } else {
                    problems |= MAILDIR_P_UNKNOWN_FLAG;
                }
            }
        }
    }
    *flags_r = flags;
    return problems;
}

/* ---- messages ------------------------------------------------------------------- */

struct entry {
    char *name;
    char *uniq;
    bool is_new;
    uint32_t uid; /* from dovecot-uidlist, 0 if none */
};

struct maildir_iter {
    struct maildir *md;
    const struct maildir_folder *f;
    struct entry *e;
    size_t n, next;
    char *kw[26];
    struct buf raw, data, keywords;
    char *uniq, *fname; /* of the message returned last */
    struct maildir_uidlist *ul;
    char ul_note[160]; /* why ul is NULL */
};

static int entry_cmp(const void *a, const void *b)
{
    const struct entry *x = a, *y = b;
    /* With UIDs: in UID order (one identity, one UID: equal identities stay
     * side by side), messages without one after them. */
    uint64_t ux = x->uid != 0 ? x->uid : (uint64_t)UINT32_MAX + 1;
    uint64_t uy = y->uid != 0 ? y->uid : (uint64_t)UINT32_MAX + 1;
    if (ux != uy)
        return ux < uy ? -1 : 1;
    int c = strcmp(x->uniq, y->uniq);
    if (c != 0)
        return c;
    if (x->is_new != y->is_new)
        return x->is_new ? 1 : -1; /* cur/ first */
    return strcmp(x->name, y->name);
}

/* Reads dovecot-keywords: lines "N name", N in 0..25. Bad lines are
 * ignored (their letters then count as unmapped). */
static void read_keywords(struct maildir_iter *it)
{
    char *path = xasprintf("%s/dovecot-keywords", it->f->path);
    struct buf b;
    buf_init(&b, 0);
    const char *error;
    if (file_read_all(path, MAILDIR_KEYWORDS_FILE_MAX, &b, &error) == 0 && b.len > 0) {
        char *save = NULL;
        for (char *line = strtok_r(b.data, "\n", &save); line != NULL;
             line = strtok_r(NULL, "\n", &save)) {
            size_t len = strlen(line);
            if (len > 0 && line[len - 1] == '\r')
                line[--len] = '\0';
            char *sp = strchr(line, ' ');
            if (sp == NULL)
                continue;
            *sp = '\0';
            uint64_t idx;
            if (parse_u64(line, 25, &idx) < 0 || !mail_keyword_valid(sp + 1, strlen(sp + 1)))
                continue;
            free(it->kw[idx]);
            it->kw[idx] = xstrdup(sp + 1);
        }
    }
    buf_free(&b);
    xfree(&path);
}

static int list_dir(struct maildir_iter *it, const char *sub, bool is_new, const char **error_r)
{
    char *path = xasprintf("%s/%s", it->f->path, sub);
    DIR *d = opendir(path);
    xfree(&path);
    if (d == NULL) {
        if (errno == ENOENT)
            return 0;
        *error_r = "cannot list a folder directory";
        return -1;
    }
    int rc = 0;
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (de == NULL)
            break;
        if (de->d_name[0] == '.')
            continue;
        if (de->d_type == DT_DIR)
            continue;
        if (it->n >= it->md->lim.files_max) {
            *error_r = "more files in a folder than the limit";
            errno = E2BIG;
            rc = -1;
            break;
        }
        it->e = xrealloc(it->e, (it->n + 1) * sizeof(*it->e));
        struct entry *e = &it->e[it->n++];
        e->name = xstrdup(de->d_name);
        e->uniq = xmalloc(strlen(de->d_name) + 1);
        e->is_new = is_new;
        e->uid = 0;
        uint32_t flags;
        maildir_parse_name(e->name, NULL, e->uniq, &flags, NULL);
    }
    if (rc == 0 && errno != 0) {
        *error_r = "cannot list a folder directory";
        rc = -1;
    }
    int e = errno;
    closedir(d);
    errno = e;
    return rc;
}

int maildir_iter_new(struct maildir *md, size_t folder, struct maildir_iter **it_r,
                     const char **error_r)
{
    struct maildir_iter *it = xmalloc(sizeof(*it));
    it->md = md;
    it->f = maildir_folder(md, folder);
    buf_init(&it->raw, 0);
    buf_init(&it->data, 0);
    buf_init(&it->keywords, 0);
    if (list_dir(it, "new", true, error_r) < 0 || list_dir(it, "cur", false, error_r) < 0) {
        int e = errno;
        maildir_iter_free(&it);
        errno = e;
        return -1;
    }
    if (maildir_uidlist_load(it->f->path, md->lim.files_max, &it->ul, it->ul_note,
                             sizeof(it->ul_note)) == 0)
        for (size_t i = 0; i < it->n; i++)
            it->e[i].uid = maildir_uidlist_find(it->ul, it->e[i].uniq);
    if (it->n > 0)
        qsort(it->e, it->n, sizeof(*it->e), entry_cmp);
    read_keywords(it);
    *it_r = it;
    return 0;
}

size_t maildir_iter_count(const struct maildir_iter *it)
{
    return it->n;
}

void maildir_iter_free(struct maildir_iter **itp)
{
    struct maildir_iter *it = *itp;
    if (it == NULL)
        return;
    for (size_t i = 0; i < it->n; i++) {
        free(it->e[i].name);
        free(it->e[i].uniq);
    }
    for (size_t i = 0; i < 26; i++)
        free(it->kw[i]);
    xfree(&it->e);
    buf_free(&it->raw);
    buf_free(&it->data);
    buf_free(&it->keywords);
    xfree(&it->uniq);
    xfree(&it->fname);
    maildir_uidlist_free(&it->ul);
    xfree(itp);
}

const struct maildir_uidlist *maildir_iter_uidlist(const struct maildir_iter *it,
                                                   const char **note_r)
{
    *note_r = it->ul != NULL ? "" : it->ul_note;
    return it->ul;
}

/* Looks in new/ and cur/ for a file whose identity is uniq (a message
 * renamed since the listing). Its name (malloc'd) and where, or NULL. */
static char *find_renamed(struct maildir_iter *it, const char *uniq, bool *is_new_r)
{
    static const char *const subs[] = {"cur", "new"};
    char *found = NULL;
    for (size_t s = 0; s < 2 && found == NULL; s++) {
        char *path = xasprintf("%s/%s", it->f->path, subs[s]);
        DIR *d = opendir(path);
        xfree(&path);
        if (d == NULL)
            continue;
        struct dirent *de;
        char *u = NULL;
        size_t ucap = 0;
        while ((de = readdir(d)) != NULL) {
            if (de->d_name[0] == '.')
                continue;
            size_t need = strlen(de->d_name) + 1;
            if (need > ucap) {
                u = xrealloc(u, need);
                ucap = need;
            }
            uint32_t flags;
            maildir_parse_name(de->d_name, NULL, u, &flags, NULL);
            if (strcmp(u, uniq) == 0) {
                found = xstrdup(de->d_name);
                *is_new_r = s == 1;
                break;
            }
        }
        free(u);
        closedir(d);
    }
    return found;
}

/* Opens and reads one file into it->data. MAILDIR_OK or a status. */
static enum maildir_status read_file(struct maildir_iter *it, const char *path,
                                     struct maildir_msg *msg)
{
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        msg->error = errno;
        return errno == ENOENT ? MAILDIR_VANISHED : MAILDIR_UNREADABLE;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        msg->error = errno;
        close(fd);
        return MAILDIR_UNREADABLE;
    }
    if (!S_ISREG(st.st_mode)) {
        msg->error = EINVAL;
        close(fd);
        return MAILDIR_UNREADABLE;
    }
    msg->file_size = (uint64_t)st.st_size;
    msg->internal_date = (int64_t)st.st_mtim.tv_sec;
    size_t max = it->md->lim.file_max;
    if ((uint64_t)st.st_size > max) {
        close(fd);
        return MAILDIR_TOO_BIG;
    }
    buf_reset(&it->raw);
    char chunk[65536];
    for (;;) {
        ssize_t k = read(fd, chunk, sizeof(chunk));
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            msg->error = errno;
            close(fd);
            return MAILDIR_UNREADABLE;
        }
        if (k == 0)
            break;
        if (it->raw.len + (size_t)k > max) {
            /* It grew past the limit while we read. */
            close(fd);
            return MAILDIR_TOO_BIG;
        }
        buf_append(&it->raw, chunk, (size_t)k);
    }
    close(fd);
    msg->file_size = it->raw.len;
    struct mail_crlf c;
    mail_crlf_init(&c);
    buf_reset(&it->data);
    mail_crlf_feed(&c, &it->data, it->raw.data, it->raw.len);
    mail_crlf_finish(&c, &it->data);
    if (c.bare_cr > 0)
        msg->problems |= MAILDIR_P_BARE_CR;
    if (c.nul > 0)
        msg->problems |= MAILDIR_P_NUL;
    if (it->raw.len == 0)
        msg->problems |= MAILDIR_P_EMPTY;
    msg->data = it->data.len > 0 ? it->data.data : "";
    msg->len = it->data.len;
    sha256_buf(msg->data, msg->len, msg->sha256);
    return MAILDIR_OK;
}

static bool entry_exists(const struct maildir_iter *it, const struct entry *e)
{
    char *path = xasprintf("%s/%s/%s", it->f->path, e->is_new ? "new" : "cur", e->name);
    struct stat st;
    bool yes = lstat(path, &st) == 0;
    xfree(&path);
    return yes;
}

int maildir_iter_next(struct maildir_iter *it, struct maildir_msg *msg)
{
    for (;;) {
        if (it->next >= it->n)
            return 0;
        const struct entry *e = &it->e[it->next++];
        memset(msg, 0, sizeof(*msg));
        msg->uniq = e->uniq;
        msg->filename = e->name;
        msg->is_new = e->is_new;
        msg->uid = e->uid;
        msg->keywords = "";
        if (it->next >= 2 && strcmp(e->uniq, it->e[it->next - 2].uniq) == 0) {
            /* A second file with the same identity. Gone already: the same
             * message listed twice while a client moved it (new/ to cur/),
             * returned once. Still there: two files claim one identity. */
            if (!entry_exists(it, e))
                continue;
            msg->status = MAILDIR_DUPLICATE;
            return 1;
        }
        bool is_new = e->is_new;
        xfree(&it->fname);
        it->fname = xstrdup(e->name);
        char *path = xasprintf("%s/%s/%s", it->f->path, is_new ? "new" : "cur", it->fname);
        enum maildir_status st = read_file(it, path, msg);
        xfree(&path);
        if (st == MAILDIR_VANISHED) {
            char *renamed = find_renamed(it, e->uniq, &is_new);
            if (renamed != NULL) {
                xfree(&it->fname);
                it->fname = renamed;
                path = xasprintf("%s/%s/%s", it->f->path, is_new ? "new" : "cur", it->fname);
                msg->problems |= MAILDIR_P_RENAMED;
                st = read_file(it, path, msg);
                xfree(&path);
            }
        }
        msg->status = st;
        msg->filename = it->fname;
        msg->is_new = is_new;
        buf_reset(&it->keywords);
        xfree(&it->uniq);
        it->uniq = xmalloc(strlen(it->fname) + 1);
        msg->problems |= maildir_parse_name(it->fname, (const char *const *)it->kw, it->uniq,
                                            &msg->flags, &it->keywords);
        msg->uniq = e->uniq;
        if (is_new)
            msg->flags &= ~MAIL_F_SEEN;
        msg->keywords = it->keywords.len > 0 ? it->keywords.data : "";
        if (st != MAILDIR_OK) {
            msg->data = NULL;
            msg->len = 0;
        }
        return 1;
    }
}

const char *maildir_status_str(enum maildir_status s)
{
    switch (s) {
    case MAILDIR_OK:
        return "ok";
    case MAILDIR_VANISHED:
        return "file vanished before it could be read";
    case MAILDIR_TOO_BIG:
        return "message over the size limit";
    case MAILDIR_UNREADABLE:
        return "file cannot be read";
    case MAILDIR_DUPLICATE:
        return "another file has the same identity";
    }
    return "?";
}

/* ---- dovecot-uidlist ---------------------------------------------------------- */

struct uid_entry {
    uint32_t uid;
    char *uniq;
};

struct maildir_uidlist {
    uint32_t uidvalidity, uidnext;
    struct uid_entry *e; /* sorted by uniq once parsed */
    size_t n;
};

static int uid_entry_cmp(const void *a, const void *b)
{
    return strcmp(((const struct uid_entry *)a)->uniq, ((const struct uid_entry *)b)->uniq);
}

/* A decimal number of at most 10 digits, 1..UINT32_MAX, at *pp (advanced). */
static int uidl_num(const char **pp, const char *end, uint32_t *out)
{
    const char *p = *pp;
    uint64_t v = 0;
    size_t digits = 0;
    while (p < end && *p >= '0' && *p <= '9' && digits < 11) {
        v = v * 10 + (uint64_t)(*p - '0');
        p++;
        digits++;
    }
    if (digits == 0 || digits > 10 || v == 0 || v > UINT32_MAX)
        return -1;
    *pp = p;
    *out = (uint32_t)v;
    return 0;
}

static int uidl_fail(char *err, size_t errlen, size_t line, const char *why)
{
    if (line > 0)
        snprintf(err, errlen, "dovecot-uidlist line %zu: %s", line, why);
    else
        snprintf(err, errlen, "dovecot-uidlist: %s", why);
    return -1;
}

/* The header: "3 V<uidvalidity> N<nextuid> [G<guid>] [X<value>...]" or, for
 * version 1, "1 <uidvalidity> <nextuid>". */
static int uidl_header(struct maildir_uidlist *ul, const char *p, const char *end, int *version_r,
                       char *err, size_t errlen)
{
    if (end - p >= 2 && p[0] == '1' && p[1] == ' ') {
        p += 2;
        if (uidl_num(&p, end, &ul->uidvalidity) < 0 || p >= end || *p++ != ' ' ||
            uidl_num(&p, end, &ul->uidnext) < 0 || p != end)
            return uidl_fail(err, errlen, 1, "a malformed version 1 header");
        *version_r = 1;
        return 0;
    }
    if (end - p < 2 || p[0] != '3' || p[1] != ' ') {
        if (p < end && *p >= '0' && *p <= '9')
            return uidl_fail(err, errlen, 1, "an unsupported version (not 1 or 3)");
        return uidl_fail(err, errlen, 1, "not a dovecot-uidlist header");
    }
    p += 2;
    bool v = false, n = false;
    while (p < end) {
        const char *tok = p;
        const char *sp = memchr(p, ' ', (size_t)(end - p));
        const char *tend = sp != NULL ? sp : end;
        if (*tok < 'A' || *tok > 'Z')
            return uidl_fail(err, errlen, 1, "a header field that is not a capital letter");
        const char *q = tok + 1;
        if (*tok == 'V' || *tok == 'N') {
            uint32_t val;
            if (uidl_num(&q, tend, &val) < 0 || q != tend)
                return uidl_fail(err, errlen, 1,
                                 *tok == 'V' ? "a bad UIDVALIDITY (V)" : "a bad next UID (N)");
            if ((*tok == 'V' && v) || (*tok == 'N' && n))
                return uidl_fail(err, errlen, 1, "a header field given twice");
            if (*tok == 'V') {
                ul->uidvalidity = val;
                v = true;
            } else {
                ul->uidnext = val;
                n = true;
            }
        }
        p = sp != NULL ? sp + 1 : end;
        if (sp != NULL && p == end)
            return uidl_fail(err, errlen, 1, "a trailing space in the header");
    }
    if (!v || !n)
        return uidl_fail(err, errlen, 1, !v ? "no UIDVALIDITY (V)" : "no next UID (N)");
    *version_r = 3;
    return 0;
}

int maildir_uidlist_parse(const char *data, size_t len, size_t entries_max,
                          struct maildir_uidlist **ul_r, char *err, size_t errlen)
{
    *ul_r = NULL;
    if (entries_max == 0)
        entries_max = MAILDIR_FILES_MAX_DEFAULT;
    if (len > MAILDIR_UIDLIST_FILE_MAX)
        return uidl_fail(err, errlen, 0, "larger than the limit");
    if (len == 0)
        return uidl_fail(err, errlen, 0, "empty");
    if (data[len - 1] != '\n')
        return uidl_fail(err, errlen, 0, "the last line is not complete (being written?)");
    if (memchr(data, '\0', len) != NULL)
        return uidl_fail(err, errlen, 0, "a NUL octet");
    struct maildir_uidlist *ul = xmalloc(sizeof(*ul));
    const char *p = data, *end = data + len;
    size_t line = 0;
    int version = 0;
    uint32_t last = 0;
    char *uniq = NULL;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl;
        line++;
        if ((size_t)(le - p) > MAILDIR_UIDLIST_LINE_MAX) {
            uidl_fail(err, errlen, line, "a line longer than the limit");
            goto bad;
        }
        if (le > p && le[-1] == '\r')
            le--;
        if (line == 1) {
            if (uidl_header(ul, p, le, &version, err, errlen) < 0)
                goto bad;
            p = nl + 1;
            continue;
        }
        uint32_t uid;
        const char *q = p;
        if (uidl_num(&q, le, &uid) < 0 || q >= le || *q != ' ') {
            uidl_fail(err, errlen, line, "no UID at the start of the line");
            goto bad;
        }
        q++;
        /* Version 3: extension fields ("S1234", "W1250", "G<guid>"), then
         * ":" and the file's base name. Version 1: the file name. */
        if (version == 3) {
            while (q < le && *q != ':') {
                if (*q < 'A' || *q > 'Z') {
                    uidl_fail(err, errlen, line, "an extension field that is not a capital letter");
                    goto bad;
                }
                const char *sp = memchr(q, ' ', (size_t)(le - q));
                if (sp == NULL) {
                    uidl_fail(err, errlen, line, "no \":\" before the file name");
                    goto bad;
                }
                q = sp + 1;
            }
            if (q >= le) {
                uidl_fail(err, errlen, line, "no \":\" before the file name");
                goto bad;
            }
            q++;
        }
        size_t fl = (size_t)(le - q);
        if (fl == 0 || fl > MAILDIR_UIDLIST_LINE_MAX || memchr(q, '/', fl) != NULL ||
            memchr(q, ' ', fl) != NULL || q[0] == '.') {
            uidl_fail(err, errlen, line, fl == 0 ? "an empty file name" : "a bad file name");
            goto bad;
        }
        if (uid <= last) {
            uidl_fail(err, errlen, line, uid == last ? "a UID given twice" : "UIDs not ascending");
            goto bad;
        }
        if (ul->n >= entries_max) {
            uidl_fail(err, errlen, line, "more entries than the limit");
            goto bad;
        }
        last = uid;
        char *name = xstrndup(q, fl);
        uniq = xmalloc(fl + 1);
        uint32_t flags;
        maildir_parse_name(name, NULL, uniq, &flags, NULL);
        free(name);
        if (uniq[0] == '\0') {
            uidl_fail(err, errlen, line, "a file name without an identity");
            goto bad;
        }
        if (ul->n % 1024 == 0)
            ul->e = xrealloc(ul->e, (ul->n + 1024) * sizeof(*ul->e));
        ul->e[ul->n].uid = uid;
        ul->e[ul->n].uniq = uniq;
        uniq = NULL;
        ul->n++;
        p = nl + 1;
    }
    /* Dovecot appends records without rewriting the header: its N is the
     * next UID as of the last rewrite. */
    if (last != 0 && last >= ul->uidnext) {
        if (last == UINT32_MAX) {
            uidl_fail(err, errlen, 0, "no UIDs left after the last one");
            goto bad;
        }
        ul->uidnext = last + 1;
    }
    if (ul->n > 1) {
        qsort(ul->e, ul->n, sizeof(*ul->e), uid_entry_cmp);
        for (size_t i = 1; i < ul->n; i++)
            if (strcmp(ul->e[i].uniq, ul->e[i - 1].uniq) == 0) {
                uidl_fail(err, errlen, 0, "two UIDs for one file");
                goto bad;
            }
    }
    *ul_r = ul;
    return 0;
bad:
    free(uniq);
    maildir_uidlist_free(&ul);
    return -1;
}

int maildir_uidlist_load(const char *folder_path, size_t entries_max, struct maildir_uidlist **ul_r,
                         char *err, size_t errlen)
{
    *ul_r = NULL;
    char *path = xasprintf("%s/dovecot-uidlist", folder_path);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    xfree(&path);
    if (fd < 0 && errno == ENOENT) {
        snprintf(err, errlen, "no dovecot-uidlist");
        return 1;
    }
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "dovecot-uidlist cannot be read: %s",
                 fd < 0 ? strerror(errno) : "not a regular file");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if ((uint64_t)st.st_size > MAILDIR_UIDLIST_FILE_MAX) {
        close(fd);
        return uidl_fail(err, errlen, 0, "larger than the limit");
    }
    struct buf b;
    buf_init(&b, MAILDIR_UIDLIST_FILE_MAX);
    char chunk[65536];
    for (;;) {
        ssize_t r = read(fd, chunk, sizeof(chunk));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(err, errlen, "dovecot-uidlist cannot be read: %s", strerror(errno));
            close(fd);
            buf_free(&b);
            return -1;
        }
        if (r == 0)
            break;
        if (buf_append(&b, chunk, (size_t)r) < 0) {
            close(fd);
            buf_free(&b);
            return uidl_fail(err, errlen, 0, "larger than the limit");
        }
    }
    close(fd);
    int rc =
        maildir_uidlist_parse(b.data != NULL ? b.data : "", b.len, entries_max, ul_r, err, errlen);
    buf_free(&b);
    return rc;
}

void maildir_uidlist_free(struct maildir_uidlist **ulp)
{
    struct maildir_uidlist *ul = *ulp;
    if (ul == NULL)
        return;
    for (size_t i = 0; i < ul->n; i++)
        free(ul->e[i].uniq);
    free(ul->e);
    xfree(ulp);
}

uint32_t maildir_uidlist_uidvalidity(const struct maildir_uidlist *ul)
{
    return ul->uidvalidity;
}

uint32_t maildir_uidlist_uidnext(const struct maildir_uidlist *ul)
{
    return ul->uidnext;
}

size_t maildir_uidlist_count(const struct maildir_uidlist *ul)
{
    return ul->n;
}

uint32_t maildir_uidlist_find(const struct maildir_uidlist *ul, const char *uniq)
{
    if (ul == NULL || ul->n == 0)
        return 0;
    struct uid_entry key = {.uniq = (char *)uniq};
    const struct uid_entry *e = bsearch(&key, ul->e, ul->n, sizeof(*ul->e), uid_entry_cmp);
    return e != NULL ? e->uid : 0;
}
