/*
 * import — the file sources: mbox (a file, or a directory of them: a folder
 * per file) and Maildir/Maildir++, read through src/mbox and src/maildir.
 * See import.h for what the engine does with what they return, and
 * docs/import.md for the folder names.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "imap/imap.h"
#include "import/import_private.h"
#include "maildir/maildir.h"
#include "mbox/mbox.h"

#define MBOX_DEPTH_MAX 16
#define TAIL_OCTETS    4096

struct file_src {
    struct import_src base;
    bool is_mbox;
    bool root_is_file;
    char root[PATH_MAX];
    struct maildir *md; /* the tree as of the latest list() */
};

struct file_iter {
    struct file_src *s;
    int fd;
    char path[PATH_MAX];
    struct mbox_reader *r;
    uint64_t size;
    int64_t mtime_ns;
    uint64_t ino;
    int64_t file_mtime; /* unix s, for messages without a date */
    struct maildir_iter *mi;
    int64_t md_mtime;     /* maildir: the combined mtime at open, 0 if too recent */
    uint32_t uidvalidity; /* the folder's as listed: UIDs of this one are kept (0: none) */
};

/* The listing's UIDs of a folder into its state: the report's UIDS column. */
static void note_uids(const struct import_sfolder *f, struct import_fstate *st)
{
    st->uidvalidity = f->uidvalidity;
    if (f->uidvalidity == 0 && f->uid_note[0] != '\0')
        str_copy(st->uid_note, f->uid_note, sizeof(st->uid_note));
}

/* An mbox file's X-IMAPbase (mbox_uid_base) into f. */
static void mbox_list_uids(const char *path, struct import_sfolder *f)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    char head[MBOX_UID_BASE_SCAN];
    ssize_t n = -1;
    if (fd >= 0) {
        do {
            n = pread(fd, head, sizeof(head), 0);
        } while (n < 0 && errno == EINTR);
        close(fd);
    }
    const char *why = "the file cannot be read";
    if (n < 0 || mbox_uid_base(head, (size_t)n, &f->uidvalidity, &f->uidnext, &why) <= 0) {
        f->uidvalidity = f->uidnext = 0;
        str_copy(f->uid_note, why, sizeof(f->uid_note));
    }
}

/* A Maildir folder's dovecot-uidlist (maildir_uidlist_load) into f. */
static void maildir_list_uids(const char *path, struct import_sfolder *f)
{
    struct maildir_uidlist *ul;
    char err[IMPORT_TEXT_MAX + 1];
    if (maildir_uidlist_load(path, 0, &ul, err, sizeof(err)) == 0) {
        f->uidvalidity = maildir_uidlist_uidvalidity(ul);
        f->uidnext = maildir_uidlist_uidnext(ul);
        maildir_uidlist_free(&ul);
    } else {
        str_copy(f->uid_note, err, sizeof(f->uid_note));
    }
}

static int64_t stat_mtime_ns(const struct stat *st)
{
    return (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

/* ---- folder names --------------------------------------------------------- */

/* One level of a name from a file or directory name: kept if it is valid
 * modified UTF-7 already (what Dovecot writes), else encoded from UTF-8.
 * -1 with a reason. */
static int name_level(const char *in, struct buf *out, const char **why_r)
{
    size_t n = strlen(in);
    struct buf tmp;
    buf_init(&tmp, 4 * STORE_FOLDER_MAX);
    bool ok = imap_mutf7_to_utf8(in, n, &tmp) == 0;
    buf_free(&tmp);
    if (ok && strchr(in, '/') == NULL) {
        if (buf_append(out, in, n) < 0) {
            *why_r = "folder name too long";
            return -1;
        }
        return 0;
    }
    if (imap_utf8_to_mutf7(in, n, out) < 0) {
        *why_r = out->len + n > STORE_FOLDER_MAX ? "folder name too long"
                                                 : "file name is not valid UTF-8";
        return -1;
    }
    return 0;
}

/* ---- mbox: listing -------------------------------------------------------- */

/* Quick estimate of a file's messages: lines starting "From " that open the
 * file or follow an empty line. Only for the progress bar. */
static uint64_t mbox_quick_count(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    char buf[65536 + 8];
    uint64_t n = 0;
    /* state: how many of "\n\nFrom " precede the current position */
    char last[2] = {'\n', '\n'};
    ssize_t r;
    while ((r = read(fd, buf + 2, 65536)) > 0) {
        buf[0] = last[0];
        buf[1] = last[1];
        size_t len = (size_t)r + 2;
        for (size_t i = 0; i + 7 <= len; i++)
            if (buf[i] == '\n' && buf[i + 1] == '\n' && memcmp(buf + i + 2, "From ", 5) == 0)
                n++;
        /* A "From " cut by the chunk end is missed: an estimate. */
        last[0] = buf[len - 2];
        last[1] = buf[len - 1];
    }
    close(fd);
    return n;
}

struct walk {
    struct file_src *s;
    struct import_sfolder *list;
    size_t n;
    bool counting;
    const char *error;
};

static int walk_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool mbox_skip_name(const char *n)
{
    size_t l = strlen(n);
    static const char *const sfx[] = {".msf", ".lock", ".lck", "~", ".tmp", ".bak"};
    if (n[0] == '.')
        return true;
    for (size_t i = 0; i < ARRAY_SIZE(sfx); i++) {
        size_t k = strlen(sfx[i]);
        if (l >= k && strcmp(n + l - k, sfx[i]) == 0)
            return true;
    }
    return false;
}

static struct import_sfolder *walk_add(struct walk *w)
{
    w->list = xrealloc(w->list, (w->n + 1) * sizeof(*w->list));
    struct import_sfolder *f = &w->list[w->n++];
    memset(f, 0, sizeof(*f));
    return f;
}

/* rel: path below the root ("" for the root); name: IMAP name so far. */
static int walk_dir(struct walk *w, const char *rel, const char *name, unsigned depth)
{
    char dirpath[PATH_MAX];
    if (snprintf(dirpath, sizeof(dirpath), "%s%s%s", w->s->root, rel[0] ? "/" : "", rel) >=
        (int)sizeof(dirpath)) {
        w->error = "path too long";
        return -1;
    }
    DIR *d = opendir(dirpath);
    if (d == NULL) {
        w->error = "cannot list a directory of the mbox source";
        return -1;
    }
    char **names = NULL;
    size_t nn = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (mbox_skip_name(e->d_name))
            continue;
        if (nn >= IMPORT_FOLDERS_MAX) {
            for (size_t i = 0; i < nn; i++)
                free(names[i]);
            free(names);
            closedir(d);
            w->error = "too many files in the mbox source";
            return -1;
        }
        names = xrealloc(names, (nn + 1) * sizeof(*names));
        names[nn++] = xstrdup(e->d_name);
    }
    closedir(d);
    qsort(names, nn, sizeof(*names), walk_cmp);
    int ret = 0;
    for (size_t i = 0; i < nn && ret == 0; i++) {
        char crel[PATH_MAX], cpath[PATH_MAX];
        int l1 = snprintf(crel, sizeof(crel), "%s%s%s", rel, rel[0] ? "/" : "", names[i]);
        int l2 = l1 >= 0 && (size_t)l1 < sizeof(crel)
                     ? snprintf(cpath, sizeof(cpath), "%s/%s", w->s->root, crel)
                     : -1;
        if (l2 < 0 || (size_t)l2 >= sizeof(cpath) || strlen(crel) > IMPORT_SRC_KEY_MAX)
            continue; /* a path too long to name: not a folder */
        struct stat st;
        if (lstat(cpath, &st) < 0 || (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)))
            continue; /* vanished, a link, a device: not a folder */
        /* Thunderbird keeps X's subfolders in "X.sbd". */
        char level[NAME_MAX + 1];
        str_copy(level, names[i], sizeof(level));
        size_t ll = strlen(level);
        bool sbd = S_ISDIR(st.st_mode) && ll > 4 && strcmp(level + ll - 4, ".sbd") == 0;
        if (sbd)
            level[ll - 4] = '\0';
        struct buf nm;
        buf_init(&nm, STORE_FOLDER_MAX);
        const char *why = NULL;
        if (name[0] != '\0') {
            buf_puts(&nm, name);
            buf_puts(&nm, "/");
        }
        int nr = -1;
        if (depth == 0 && S_ISREG(st.st_mode) && strcasecmp(level, "inbox") == 0)
            nr = buf_puts(&nm, "INBOX");
        else
            nr = name_level(level, &nm, &why);
        if (S_ISDIR(st.st_mode)) {
            if (nr == 0 && depth + 1 < MBOX_DEPTH_MAX)
                ret = walk_dir(w, crel, nm.data, depth + 1);
            else if (nr == 0)
                why = "folders nested too deep";
            if (why != NULL) {
                struct import_sfolder *f = walk_add(w);
                str_copy(f->name, crel, sizeof(f->name));
                str_copy(f->src, crel, sizeof(f->src));
                str_copy(f->error, why, sizeof(f->error));
            }
        } else {
            if (w->n >= IMPORT_FOLDERS_MAX) {
                w->error = "too many folders in the mbox source";
                ret = -1;
            } else {
                struct import_sfolder *f = walk_add(w);
                str_copy(f->src, crel, sizeof(f->src));
                if (nr < 0) {
                    str_copy(f->name, crel, sizeof(f->name));
                    str_copy(f->error, why != NULL ? why : "bad name", sizeof(f->error));
                } else {
                    str_copy(f->name, nm.data, sizeof(f->name));
                    f->bytes = (uint64_t)st.st_size;
                    if (w->counting)
                        f->count = mbox_quick_count(cpath);
                    mbox_list_uids(cpath, f);
                }
            }
        }
        buf_free(&nm);
    }
    for (size_t i = 0; i < nn; i++)
        free(names[i]);
    free(names);
    return ret;
}

/* Two files mapping to one name: the later ones are failures. */
static void dedupe_names(struct import_sfolder *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < i; k++)
            if (list[i].error[0] == '\0' && list[k].error[0] == '\0' &&
                strcmp(list[i].name, list[k].name) == 0) {
                str_copy(list[i].error, "maps to the same folder name as another file",
                         sizeof(list[i].error));
                str_copy(list[i].name, list[i].src, sizeof(list[i].name));
            }
}

static int mbox_list(struct file_src *s, bool counting, struct import_sfolder **list_r, size_t *n_r,
                     const char **error_r)
{
    struct stat st;
    if (stat(s->root, &st) < 0) {
        *error_r = "the mbox source cannot be found";
        return -1;
    }
    struct walk w = {.s = s, .counting = counting};
    if (S_ISREG(st.st_mode)) {
        s->root_is_file = true;
        struct import_sfolder *f = walk_add(&w);
        str_copy(f->name, "INBOX", sizeof(f->name));
        f->bytes = (uint64_t)st.st_size;
        if (counting)
            f->count = mbox_quick_count(s->root);
        mbox_list_uids(s->root, f);
    } else if (S_ISDIR(st.st_mode)) {
        s->root_is_file = false;
        if (walk_dir(&w, "", "", 0) < 0) {
            free(w.list);
            *error_r = w.error;
            return -1;
        }
        dedupe_names(w.list, w.n);
    } else {
        *error_r = "the mbox source is neither a file nor a directory";
        return -1;
    }
    *list_r = w.list != NULL ? w.list : xmalloc(1);
    *n_r = w.n;
    return 0;
}

/* ---- mbox: reading -------------------------------------------------------- */

static ssize_t fd_read_at(void *ctx, void *p, size_t n, uint64_t offset)
{
    struct file_iter *it = ctx;
    ssize_t r;
    do {
        r = pread(it->fd, p, n, (off_t)offset);
    } while (r < 0 && errno == EINTR);
    return r;
}

/* SHA-256 (hex) of up to TAIL_OCTETS before off: tells whether the part of
 * the file already read is still what it was. */
static int mbox_tail(int fd, uint64_t off, char out[2 * SHA256_LEN + 1])
{
    uint64_t from = off > TAIL_OCTETS ? off - TAIL_OCTETS : 0;
    char b[TAIL_OCTETS];
    size_t n = (size_t)(off - from);
    if (n > 0 && pread_full(fd, b, n, (off_t)from) < 0)
        return -1;
    uint8_t h[SHA256_LEN];
    sha256_buf(b, n, h);
    hex_encode(h, SHA256_LEN, out);
    return 0;
}

static int mbox_open(struct file_src *s, const struct import_sfolder *f, struct import_fstate *st,
                     bool full, struct import_iter **iter_r, const char **error_r)
{
    struct file_iter *it = xmalloc(sizeof(*it));
    it->s = s;
    if (s->root_is_file)
        str_copy(it->path, s->root, sizeof(it->path));
    else if (snprintf(it->path, sizeof(it->path), "%s/%s", s->root, f->src) >=
             (int)sizeof(it->path))
        it->path[0] = '\0'; /* cannot be opened: reported below */
    it->fd = open(it->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat sb;
    if (it->fd < 0 || fstat(it->fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
        if (it->fd >= 0)
            close(it->fd);
        free(it);
        *error_r = "an mbox file of the source cannot be opened";
        return -1;
    }
    it->size = (uint64_t)sb.st_size;
    it->mtime_ns = stat_mtime_ns(&sb);
    it->ino = (uint64_t)sb.st_ino;
    it->file_mtime = sb.st_mtim.tv_sec;
    it->uidvalidity = f->uidvalidity;
    note_uids(f, st);
    bool same_file = st->ino == it->ino && st->cp > 0 && st->cp <= it->size;
    if (!full && same_file && st->cp == it->size && st->size == it->size &&
        st->mtime_ns == it->mtime_ns) {
        close(it->fd);
        free(it);
        *iter_r = NULL; /* nothing changed */
        return 0;
    }
    uint64_t start = 0;
    /* While the source is the master (flag_changes: watching, before the
     * cutover), a changed file is read from the start: a client changes
     * flags by rewriting messages anywhere in it, perhaps without changing
     * the part before the checkpoint that the tail hash covers. */
    if (!full && same_file && !s->base.flag_changes) {
        /* Read on from the checkpoint only if what lies before it is still
         * what was read, and a message (or the end) starts there. */
        char tail[2 * SHA256_LEN + 1];
        char from[5] = {0};
        bool at_from = st->cp == it->size || (pread_full(it->fd, from, 5, (off_t)st->cp) == 0 &&
                                              memcmp(from, "From ", 5) == 0);
        if (at_from && mbox_tail(it->fd, st->cp, tail) == 0 && strcmp(tail, st->tail) == 0)
            start = st->cp;
    }
    /* start 0: a full read (the file is new, changed before the checkpoint
     * as when a client rewrote it, or this is a rescan): identities and
     * content keys make it safe. */
    st->cp = start;
    struct mbox_options o = {
        .format = (enum mbox_format)st->mbox_format, .msg_max = s->base.msg_max, .start = start};
    struct mbox_source src = {.read_at = fd_read_at, .ctx = it};
    if (mbox_reader_new(&src, &o, &it->r, error_r) < 0) {
        close(it->fd);
        free(it);
        return -1;
    }
    st->mbox_format = (int)mbox_reader_format(it->r);
    *iter_r = (struct import_iter *)it;
    return 0;
}

/* The file is still being written if it changed since it was opened or
 * less than IMPORT_SETTLE_MS ago. */
static bool mbox_unsettled(struct file_iter *it)
{
    struct stat sb;
    if (fstat(it->fd, &sb) < 0)
        return true;
    if ((uint64_t)sb.st_size != it->size || stat_mtime_ns(&sb) != it->mtime_ns)
        return true;
    int64_t age_ms = time_now_ms() - stat_mtime_ns(&sb) / 1000000;
    return age_ms < IMPORT_SETTLE_MS;
}

static int mbox_next_item(struct file_iter *it, struct import_item *out, const char **error_r)
{
    struct mbox_item m;
    int r = mbox_next(it->r, &m, error_r);
    if (r <= 0)
        return r;
    memset(out, 0, sizeof(*out));
    out->pos_before = m.offset;
    out->pos_after = m.offset + m.raw_len;
    if (m.kind == MBOX_SKIPPED) {
        if (m.at_eof && mbox_unsettled(it)) {
            out->kind = IMPORT_ITEM_WAIT;
            return 1;
        }
        out->kind = IMPORT_ITEM_FAIL;
        snprintf(out->where, sizeof(out->where), "offset %llu, %llu octets",
                 (unsigned long long)m.offset, (unsigned long long)m.raw_len);
        if (m.skip == MBOX_SKIP_TOO_BIG)
            snprintf(out->why, sizeof(out->why), "%s (%zu octets, limit %zu)",
                     mbox_skip_str(m.skip), m.len, it->s->base.msg_max);
        else
            str_copy(out->why, mbox_skip_str(m.skip), sizeof(out->why));
        return 1;
    }
    if (m.at_eof && mbox_unsettled(it)) {
        out->kind = IMPORT_ITEM_WAIT; /* may be half written: next pass */
        return 1;
    }
    out->kind = IMPORT_ITEM_MSG;
    char sha[2 * SHA256_LEN + 1];
    hex_encode(m.sha256, SHA256_LEN, sha);
    snprintf(out->ident, sizeof(out->ident), "%llu:%s", (unsigned long long)m.offset, sha);
    out->flags = m.flags;
    out->keywords = m.keywords;
    out->uid = it->uidvalidity != 0 ? m.uid : 0;
    out->internal_date = m.has_date ? m.internal_date : it->file_mtime;
    out->data = m.data;
    out->len = m.len;
    memcpy(out->sha256, m.sha256, SHA256_LEN);
    if (m.problems != 0) {
        out->malformed = true;
        struct buf p;
        buf_init(&p, IMPORT_TEXT_MAX);
        mbox_problems_str(m.problems, &p);
        str_copy(out->why, p.data != NULL ? p.data : "", sizeof(out->why));
        buf_free(&p);
    }
    snprintf(out->where, sizeof(out->where), "offset %llu", (unsigned long long)m.offset);
    return 1;
}

/* ---- Maildir ---------------------------------------------------------------- */

static int maildir_list(struct file_src *s, bool counting, struct import_sfolder **list_r,
                        size_t *n_r, const char **error_r)
{
    maildir_free(&s->md);
    if (maildir_open(s->root, NULL, &s->md, error_r) < 0)
        return -1;
    size_t nf = maildir_folder_count(s->md), ns = maildir_skipped_count(s->md);
    struct import_sfolder *l = xcalloc(nf + ns + 1, sizeof(*l));
    for (size_t i = 0; i < nf; i++) {
        const struct maildir_folder *f = maildir_folder(s->md, i);
        str_copy(l[i].name, f->name, sizeof(l[i].name));
        str_copy(l[i].src, f->path, sizeof(l[i].src));
        maildir_list_uids(f->path, &l[i]);
        if (counting) {
            struct maildir_iter *mi;
            const char *e;
            if (maildir_iter_new(s->md, i, &mi, &e) == 0) {
                l[i].count = maildir_iter_count(mi);
                maildir_iter_free(&mi);
            }
        }
    }
    for (size_t i = 0; i < ns; i++) {
        const struct maildir_skipped *k = maildir_skipped(s->md, i);
        str_copy(l[nf + i].name, k->dirname, sizeof(l[nf + i].name));
        str_copy(l[nf + i].src, k->dirname, sizeof(l[nf + i].src));
        str_copy(l[nf + i].error, k->reason, sizeof(l[nf + i].error));
    }
    *list_r = l;
    *n_r = nf + ns;
    return 0;
}

/* The two directories' mtimes in one number; 0 if either changed so
 * recently that a file could still arrive within the same tick. */
static int64_t maildir_mtime(const char *folder_path)
{
    uint64_t m = 0;
    static const char *const sub[] = {"new", "cur"};
    for (size_t i = 0; i < 2; i++) {
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "%s/%s", folder_path, sub[i]);
        struct stat st;
        if (stat(p, &st) < 0)
            continue;
        int64_t t = stat_mtime_ns(&st);
        if (time_now_ms() - t / 1000000 < IMPORT_SETTLE_MS)
            return 0;
        m = m * 1000003u + (uint64_t)t;
    }
    /* Positive (it is stored as a signed number) and never 0. */
    return (int64_t)(m >> 1) | 1;
}

static int maildir_open_folder(struct file_src *s, const struct import_sfolder *f,
                               struct import_fstate *st, bool full, struct import_iter **iter_r,
                               const char **error_r)
{
    size_t idx, nf = s->md != NULL ? maildir_folder_count(s->md) : 0;
    for (idx = 0; idx < nf; idx++)
        if (strcmp(maildir_folder(s->md, idx)->name, f->name) == 0)
            break;
    if (idx == nf) {
        *error_r = "the folder is gone from the Maildir";
        return -1;
    }
    note_uids(f, st);
    int64_t mt = maildir_mtime(maildir_folder(s->md, idx)->path);
    if (!full && mt != 0 && mt == st->mtime_ns) {
        *iter_r = NULL;
        return 0;
    }
    struct file_iter *it = xmalloc(sizeof(*it));
    it->s = s;
    it->fd = -1;
    it->md_mtime = mt;
    if (maildir_iter_new(s->md, idx, &it->mi, error_r) < 0) {
        free(it);
        return -1;
    }
    /* UIDs are kept only from the uidlist the listing saw (a Dovecot that
     * reset its UIDVALIDITY since then gives new UIDs this pass). */
    const char *note;
    const struct maildir_uidlist *ul = maildir_iter_uidlist(it->mi, &note);
    it->uidvalidity =
        ul != NULL && maildir_uidlist_uidvalidity(ul) == f->uidvalidity ? f->uidvalidity : 0;
    st->cp = 0; /* every pass reads the whole folder */
    *iter_r = (struct import_iter *)it;
    return 0;
}

static int maildir_next_item(struct file_iter *it, struct import_item *out)
{
    struct maildir_msg m;
    for (;;) {
        if (maildir_iter_next(it->mi, &m) == 0)
            return 0;
        if (m.status != MAILDIR_VANISHED)
            break; /* a file deleted in the source since the listing: gone */
    }
    memset(out, 0, sizeof(*out));
    str_copy(out->where, m.filename, sizeof(out->where));
    if (m.status != MAILDIR_OK) {
        out->kind = IMPORT_ITEM_FAIL;
        if (m.status == MAILDIR_UNREADABLE && m.error != 0)
            snprintf(out->why, sizeof(out->why), "%s: %s", maildir_status_str(m.status),
                     strerror(m.error));
        else if (m.status == MAILDIR_TOO_BIG)
            snprintf(out->why, sizeof(out->why), "%s (%llu octets, limit %zu)",
                     maildir_status_str(m.status), (unsigned long long)m.file_size,
                     it->s->base.msg_max);
        else
            str_copy(out->why, maildir_status_str(m.status), sizeof(out->why));
        return 1;
    }
    out->kind = IMPORT_ITEM_MSG;
    str_copy(out->ident, m.uniq, sizeof(out->ident));
    out->uid = it->uidvalidity != 0 ? m.uid : 0;
    out->flags = m.flags;
    out->keywords = m.keywords;
    out->internal_date = m.internal_date;
    out->data = m.data;
    out->len = m.len;
    memcpy(out->sha256, m.sha256, SHA256_LEN);
    unsigned bad = MAILDIR_P_BARE_CR | MAILDIR_P_NUL | MAILDIR_P_UNKNOWN_FLAG | MAILDIR_P_KEYWORD |
                   MAILDIR_P_EMPTY;
    if (m.problems & bad) {
        out->malformed = true;
        snprintf(out->why, sizeof(out->why), "%s%s%s%s%s",
                 (m.problems & MAILDIR_P_BARE_CR) ? "bare CR " : "",
                 (m.problems & MAILDIR_P_NUL) ? "NUL octets " : "",
                 (m.problems & MAILDIR_P_UNKNOWN_FLAG) ? "unknown flag " : "",
                 (m.problems & MAILDIR_P_KEYWORD) ? "unmapped keyword " : "",
                 (m.problems & MAILDIR_P_EMPTY) ? "empty file " : "");
    }
    return 1;
}

/* ---- the vtable -------------------------------------------------------------- */

static int file_list(struct import_src *s, struct import_sfolder **list_r, size_t *n_r,
                     const char **error_r)
{
    struct file_src *fs = (struct file_src *)s;
    return fs->is_mbox ? mbox_list(fs, s->counting, list_r, n_r, error_r)
                       : maildir_list(fs, s->counting, list_r, n_r, error_r);
}

static int file_open(struct import_src *s, const struct import_sfolder *f, struct import_fstate *st,
                     bool full, struct import_iter **iter_r, const char **error_r)
{
    struct file_src *fs = (struct file_src *)s;
    return fs->is_mbox ? mbox_open(fs, f, st, full, iter_r, error_r)
                       : maildir_open_folder(fs, f, st, full, iter_r, error_r);
}

static int file_next(struct import_iter *i, struct import_item *it, const char **error_r)
{
    struct file_iter *fi = (struct file_iter *)i;
    return fi->s->is_mbox ? mbox_next_item(fi, it, error_r) : maildir_next_item(fi, it);
}

static void file_finish(struct import_iter *i, struct import_fstate *st, bool done)
{
    struct file_iter *fi = (struct file_iter *)i;
    if (fi->s->is_mbox) {
        st->ino = fi->ino;
        st->size = fi->size;
        st->mtime_ns = fi->mtime_ns;
        if (mbox_tail(fi->fd, st->cp, st->tail) < 0)
            st->tail[0] = '\0'; /* the next pass reads from the start */
    } else if (done) {
        /* Only a whole pass may say the folder was read as of this mtime. */
        st->mtime_ns = fi->md_mtime;
    }
}

static void file_iter_free(struct import_iter **ip)
{
    struct file_iter *fi = (struct file_iter *)*ip;
    if (fi == NULL)
        return;
    mbox_reader_free(&fi->r);
    maildir_iter_free(&fi->mi);
    if (fi->fd >= 0)
        close(fi->fd);
    free(fi);
    *ip = NULL;
}

static void file_close(struct import_src *s)
{
    struct file_src *fs = (struct file_src *)s;
    maildir_free(&fs->md);
    free(fs);
}

static const struct import_src_ops mbox_ops = {
    .kind = "mbox",
    .list = file_list,
    .open = file_open,
    .next = file_next,
    .finish = file_finish,
    .iter_free = file_iter_free,
    .close = file_close,
};

static const struct import_src_ops maildir_ops = {
    .kind = "maildir",
    .list = file_list,
    .open = file_open,
    .next = file_next,
    .finish = file_finish,
    .iter_free = file_iter_free,
    .close = file_close,
};

int import_src_open_file(const char *spec, size_t msg_max, struct import_src **s_r, char *err,
                         size_t errlen)
{
    bool is_mbox = strncmp(spec, "mbox:", 5) == 0;
    const char *path = spec + (is_mbox ? 5 : 8);
    if (!is_mbox && strncmp(spec, "maildir:", 8) != 0) {
        snprintf(err, errlen, "not a file source: %s", spec);
        return -1;
    }
    if (path[0] != '/' || strlen(path) >= PATH_MAX - 256) {
        snprintf(err, errlen, "the source path must be absolute and shorter than %d octets",
                 PATH_MAX - 256);
        return -1;
    }
    struct file_src *s = xmalloc(sizeof(*s));
    s->base.ops = is_mbox ? &mbox_ops : &maildir_ops;
    s->base.msg_max = msg_max;
    s->is_mbox = is_mbox;
    str_copy(s->root, path, sizeof(s->root));
    /* Trailing slashes do not make another source. */
    size_t n = strlen(s->root);
    while (n > 1 && s->root[n - 1] == '/')
        s->root[--n] = '\0';
    *s_r = &s->base;
    return 0;
}
