/*
 * test_maildir — the Maildir/Maildir++ reader on real directory trees built
 * in a temporary directory: folder names (spaces, dots as hierarchy,
 * modified UTF-7 kept, UTF-8 encoded, bad names reported), flags and
 * dovecot-keywords, identities, CRLF octets and hashes, internal dates from
 * mtimes, tmp/ ignored, files that vanish or are renamed between listing and
 * reading, duplicates, limits and unreadable files.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "maildir/maildir.h"
#include "store/store.h"
#include "util/util.h"

/* The flag bits are the store's: an import passes them straight through. */
_Static_assert(MAIL_F_SEEN == STORE_F_SEEN, "flag bits");
_Static_assert(MAIL_F_ANSWERED == STORE_F_ANSWERED, "flag bits");
_Static_assert(MAIL_F_FLAGGED == STORE_F_FLAGGED, "flag bits");
_Static_assert(MAIL_F_DELETED == STORE_F_DELETED, "flag bits");
_Static_assert(MAIL_F_DRAFT == STORE_F_DRAFT, "flag bits");
_Static_assert(MAIL_KEYWORDS_MAX == STORE_KEYWORDS_MAX, "keyword list size");
_Static_assert(MAILDIR_NAME_MAX == STORE_FOLDER_MAX, "folder name size");

/* ---- helpers -------------------------------------------------------------- */

static char *root_dir(void)
{
    char tmpl[] = "/tmp/test_maildir.XXXXXX";
    assert_non_null(mkdtemp(tmpl));
    return xstrdup(tmpl);
}

static void mkdirs(const char *base, const char *sub)
{
    char *p = xasprintf("%s/%s", base, sub);
    assert_int_equal(mkdir_p(p, 0700), 0);
    xfree(&p);
}

/* A Maildir (cur, new, tmp) at base/sub ("" for base itself). */
static void make_maildir(const char *base, const char *sub)
{
    char *p = sub[0] != '\0' ? xasprintf("%s/%s", base, sub) : xstrdup(base);
    mkdirs(p, "cur");
    mkdirs(p, "new");
    mkdirs(p, "tmp");
    xfree(&p);
}

static void write_file(const char *base, const char *rel, const char *text, size_t len,
                       time_t mtime)
{
    char *p = xasprintf("%s/%s", base, rel);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write_full(fd, text, len), 0);
    if (mtime != 0) {
        struct timespec ts[2] = {{mtime, 0}, {mtime, 0}};
        assert_int_equal(futimens(fd, ts), 0);
    }
    close(fd);
    xfree(&p);
}

static void put(const char *base, const char *rel, const char *text, time_t mtime)
{
    write_file(base, rel, text, strlen(text), mtime);
}

static void rm_rf(const char *path)
{
    char *cmd = xasprintf("rm -rf '%s'", path);
    assert_int_equal(system(cmd), 0);
    xfree(&cmd);
}

static void mv(const char *base, const char *from, const char *to)
{
    char *a = xasprintf("%s/%s", base, from), *b = xasprintf("%s/%s", base, to);
    assert_int_equal(rename(a, b), 0);
    xfree(&a);
    xfree(&b);
}

/* ---- folder names ---------------------------------------------------------- */

static void test_folder_names(void **state)
{
    (void)state;
    static const struct {
        const char *dirname, *name; /* name NULL: refused with reason */
        const char *reason;
        unsigned depth_max;
    } cases[] = {
        {".Sent", "Sent", NULL, 0},
        {".Work.2024", "Work/2024", NULL, 0},
        {".Work.2024.Q1", "Work/2024/Q1", NULL, 0},
        {".My Folder", "My Folder", NULL, 0},
        {".Entw&APw-rfe", "Entw&APw-rfe", NULL, 0},
        {".Caf\xc3\xa9", "Caf&AOk-", NULL, 0},
        {".Entw\xc3\xbcrfe.Caf&AOk-", "Entw&APw-rfe/Caf&AOk-", NULL, 0},
        {".R&D", "R&-D", NULL, 0},
        {".&-", "&-", NULL, 0},
        {".&AOk", "&-AOk", NULL, 0},   /* unterminated shift: taken as text */
        {".&AGE-", "&-AGE-", NULL, 0}, /* shift of printable 'a': not canonical */
        {".&2D3eAA-", "&2D3eAA-", NULL, 0},
        {".\xf0\x9f\x98\x80", "&2D3eAA-", NULL, 0},
        {".\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e", "&ZeVnLIqe-", NULL, 0},
        {".&2D0-", "&-2D0-", NULL, 0},   /* lone high surrogate */
        {".&3gA-", "&-3gA-", NULL, 0},   /* lone low surrogate */
        {".&AOl-", "&-AOl-", NULL, 0},   /* padding bits not zero */
        {".&AOkA-", "&-AOkA-", NULL, 0}, /* a sextet too many */
        {".&-&AOk-", "&-&AOk-", NULL, 0},
        {".&AOk-&AOk-", "&AOk-&AOk-", NULL, 0},
        {".\xc3\x9c"
         "n\xc3\xaf",
         "&ANw-n&AO8-", NULL, 0},
        {".INBOX.sub", "INBOX/sub", NULL, 0},
        {".a.b", "a/b", NULL, 2},
        {".a.b.c", NULL, "folder hierarchy too deep", 2},
        {".a..b", NULL, "empty hierarchy level in the name", 0},
        {".a.", NULL, "empty hierarchy level in the name", 0},
        {"..", NULL, "not a Maildir++ folder name", 0},
        {".", NULL, "not a Maildir++ folder name", 0},
        {"Sent", NULL, "not a Maildir++ folder name", 0},
        {".Work/.x", NULL, "'/' in the name", 0},
        {".tab\there", NULL, "name is neither modified UTF-7 nor UTF-8", 0},
        {".bad\xff", NULL, "name is neither modified UTF-7 nor UTF-8", 0},
        {".over\xc0\xaflong", NULL, "name is neither modified UTF-7 nor UTF-8", 0},
        {".c1\xc2\x85", NULL, "name is neither modified UTF-7 nor UTF-8", 0},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char out[MAILDIR_NAME_MAX + 1];
        const char *reason = NULL;
        int rc = maildir_folder_name(cases[i].dirname, out, cases[i].depth_max, &reason);
        if (cases[i].name != NULL) {
            if (rc != 0)
                fail_msg("'%s': refused: %s", cases[i].dirname, reason);
            if (strcmp(out, cases[i].name) != 0)
                fail_msg("'%s': got '%s' want '%s'", cases[i].dirname, out, cases[i].name);
        } else {
            if (rc != -1)
                fail_msg("'%s': accepted as '%s'", cases[i].dirname, out);
            assert_string_equal(reason, cases[i].reason);
        }
    }
    /* Length: 255 octets of name is fine, 256 is not. */
    char dn[300], out[MAILDIR_NAME_MAX + 1];
    const char *reason;
    dn[0] = '.';
    memset(dn + 1, 'x', 255);
    dn[256] = '\0';
    assert_int_equal(maildir_folder_name(dn, out, 0, &reason), 0);
    assert_int_equal(strlen(out), 255);
    dn[256] = 'x';
    dn[257] = '\0';
    assert_int_equal(maildir_folder_name(dn, out, 0, &reason), -1);
    assert_string_equal(reason, "folder name too long");
    /* Encoding can make it too long: 100 x U+00E9 is over 255 octets. */
    dn[0] = '.';
    for (int k = 0; k < 100; k++)
        memcpy(dn + 1 + 2 * k, "\xc3\xa9", 2);
    dn[201] = '\0';
    assert_int_equal(maildir_folder_name(dn, out, 0, &reason), -1);
    /* Depth: the default allows MAILDIR_DEPTH_MAX_DEFAULT levels. */
    struct buf b;
    buf_init(&b, 0);
    for (int k = 0; k < MAILDIR_DEPTH_MAX_DEFAULT; k++)
        buf_puts(&b, ".a");
    assert_int_equal(maildir_folder_name(b.data, out, 0, &reason), 0);
    buf_puts(&b, ".a");
    assert_int_equal(maildir_folder_name(b.data, out, 0, &reason), -1);
    buf_free(&b);
}

/* ---- the tree --------------------------------------------------------------- */

static void test_tree(void **state)
{
    (void)state;
    char *root = root_dir();
    make_maildir(root, "");
    const char *folders[] = {".Sent",         ".Work.2024",   ".Work",     ".My Folder",
                             ".Entw&APw-rfe", ".Caf\xc3\xa9", ".Caf&AOk-", ".a..b",
                             ".INBOX",        ".inbox",       ".x.",       ".bad\xff"};
    for (size_t i = 0; i < ARRAY_SIZE(folders); i++)
        make_maildir(root, folders[i]);
    /* Only cur/: still a folder. A dot-directory without either: not one. */
    mkdirs(root, ".OnlyCur/cur");
    mkdirs(root, ".NoMaildir/tmp");
    put(root, "dovecot-uidlist", "3 V1 N1\n", 0);
    put(root, ".hidden-file", "x", 0);
    put(root, "dovecot-keywords", "0 $Junk\n", 0);
    mkdirs(root, "NotDotted/cur");

    struct maildir *md;
    const char *error;
    assert_int_equal(maildir_open(root, NULL, &md, &error), 0);
    const char *want[] = {"INBOX",   "Caf&AOk-", "Entw&APw-rfe", "My Folder",
                          "OnlyCur", "Sent",     "Work",         "Work/2024"};
    assert_int_equal(maildir_folder_count(md), ARRAY_SIZE(want));
    for (size_t i = 0; i < ARRAY_SIZE(want); i++)
        assert_string_equal(maildir_folder(md, i)->name, want[i]);
    assert_string_equal(maildir_folder(md, 0)->path, root);
    char *sent = xasprintf("%s/.Sent", root);
    assert_string_equal(maildir_folder(md, 5)->path, sent);
    xfree(&sent);
    /* ".Caf&AOk-" sorts before ".Café" and wins; the other is reported. */
    char *cafe = xasprintf("%s/.Caf&AOk-", root);
    assert_string_equal(maildir_folder(md, 1)->path, cafe);
    xfree(&cafe);
    const struct {
        const char *dirname, *reason;
    } skipped[] = {
        {".Caf\xc3\xa9", "same IMAP name as another folder"},
        {".INBOX", "same name as INBOX"},
        {".a..b", "empty hierarchy level in the name"},
        {".bad\xff", "name is neither modified UTF-7 nor UTF-8"},
        {".inbox", "same name as INBOX"},
        {".x.", "empty hierarchy level in the name"},
    };
    assert_int_equal(maildir_skipped_count(md), ARRAY_SIZE(skipped));
    for (size_t i = 0; i < ARRAY_SIZE(skipped); i++) {
        assert_string_equal(maildir_skipped(md, i)->dirname, skipped[i].dirname);
        assert_string_equal(maildir_skipped(md, i)->reason, skipped[i].reason);
    }
    maildir_free(&md);
    assert_null(md);

    /* The folder count limit refuses the tree. It counts INBOX and every
     * directory that maps to a name (the duplicate too): 9 here. */
    struct maildir_limits lim = {.folders_max = 8};
    assert_int_equal(maildir_open(root, &lim, &md, &error), -1);
    assert_string_equal(error, "more folders than the limit");
    assert_int_equal(errno, E2BIG);
    lim.folders_max = 9;
    assert_int_equal(maildir_open(root, &lim, &md, &error), 0);
    maildir_free(&md);
    /* Depth limit: "Work/2024" is two levels. */
    lim = (struct maildir_limits){.depth_max = 1};
    assert_int_equal(maildir_open(root, &lim, &md, &error), 0);
    assert_int_equal(maildir_folder_count(md), ARRAY_SIZE(want) - 1);
    assert_int_equal(maildir_skipped_count(md), ARRAY_SIZE(skipped) + 1);
    maildir_free(&md);

    /* Not a Maildir, not a directory. */
    char *sub = xasprintf("%s/NotDotted", root);
    char *nocur = xasprintf("%s/.NoMaildir", root);
    char *missing = xasprintf("%s/missing", root);
    char *file = xasprintf("%s/dovecot-uidlist", root);
    assert_int_equal(maildir_open(sub, NULL, &md, &error), 0); /* has cur/: a Maildir */
    assert_int_equal(maildir_folder_count(md), 1);
    maildir_free(&md);
    assert_int_equal(maildir_open(nocur, NULL, &md, &error), -1);
    assert_string_equal(error, "not a Maildir (no cur/ or new/)");
    assert_int_equal(maildir_open(missing, NULL, &md, &error), -1);
    assert_string_equal(error, "not a directory");
    assert_int_equal(maildir_open(file, NULL, &md, &error), -1);
    assert_string_equal(error, "not a directory");
    xfree(&sub);
    xfree(&nocur);
    xfree(&missing);
    xfree(&file);
    rm_rf(root);
    xfree(&root);
}

/* ---- names and flags ------------------------------------------------------------ */

static void test_parse_name(void **state)
{
    (void)state;
    const char *kw[26] = {0};
    kw[0] = "$Junk";
    kw[1] = "Important";
    kw[25] = "last";
    static const struct {
        const char *name, *uniq;
        uint32_t flags;
        const char *keywords;
        unsigned problems;
    } cases[] = {
        {"1000.M1P1.host", "1000.M1P1.host", 0, "", 0},
        {"1000.M1P1.host:2,", "1000.M1P1.host", 0, "", 0},
        {"1000.M1P1.host:2,S", "1000.M1P1.host", MAIL_F_SEEN, "", 0},
        {"1000.M1P1.host:2,DFPRST", "1000.M1P1.host",
         MAIL_F_DRAFT | MAIL_F_FLAGGED | MAIL_F_ANSWERED | MAIL_F_SEEN | MAIL_F_DELETED,
         "$Forwarded", 0},
        {"1000.M1P1.host,S=1234,W=1260:2,Sab", "1000.M1P1.host", MAIL_F_SEEN, "$Junk Important", 0},
        {"1000.M1P1.host,W=1260,S=1234:2,z", "1000.M1P1.host", 0, "last", 0},
        {"1000.M1P1,S=12,host:2,", "1000.M1P1,host", 0, "", 0},
        {"1000.M1P1.host,S=:2,", "1000.M1P1.host,S=", 0, "", 0},
        {"1000.M1P1.host,S=12x:2,", "1000.M1P1.host,S=12x", 0, "", 0},
        {"1000.M1P1.host,X=12:2,", "1000.M1P1.host,X=12", 0, "", 0},
        {"1000.M1P1.host:2,Sc", "1000.M1P1.host", MAIL_F_SEEN, "", MAILDIR_P_KEYWORD},
        {"1000.M1P1.host:2,SXa", "1000.M1P1.host", MAIL_F_SEEN, "$Junk", MAILDIR_P_UNKNOWN_FLAG},
        {"1000.M1P1.host:1,S", "1000.M1P1.host", 0, "", 0},
        {"1000.M1P1.host:2,aa", "1000.M1P1.host", 0, "$Junk", 0},
        {"odd:name:2,S", "odd", 0, "", 0},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char uniq[128];
        uint32_t flags = 99;
        struct buf k;
        buf_init(&k, 0);
        unsigned p = maildir_parse_name(cases[i].name, kw, uniq, &flags, &k);
        if (strcmp(uniq, cases[i].uniq) != 0 || flags != cases[i].flags ||
            strcmp(k.len > 0 ? k.data : "", cases[i].keywords) != 0 || p != cases[i].problems)
            fail_msg("'%s': uniq '%s' flags 0x%x keywords '%s' problems 0x%x", cases[i].name, uniq,
                     flags, k.len > 0 ? k.data : "", p);
        buf_free(&k);
    }
}

/* ---- messages -------------------------------------------------------------------- */

struct seen {
    enum maildir_status status;
    char *uniq, *filename, *keywords, *data;
    size_t len;
    bool is_new;
    uint32_t flags;
    int64_t date;
    uint64_t file_size;
    uint8_t sha[SHA256_LEN];
    unsigned problems;
    int error;
};

static size_t read_folder(struct maildir *md, size_t folder, struct seen *out, size_t max)
{
    struct maildir_iter *it;
    const char *error;
    assert_int_equal(maildir_iter_new(md, folder, &it, &error), 0);
    struct maildir_msg m;
    size_t n = 0;
    int rc;
    while ((rc = maildir_iter_next(it, &m)) == 1) {
        assert_true(n < max);
        struct seen *s = &out[n++];
        s->status = m.status;
        s->uniq = xstrdup(m.uniq);
        s->filename = xstrdup(m.filename);
        s->keywords = xstrdup(m.keywords);
        s->data = m.data != NULL ? xstrndup(m.data, m.len) : NULL;
        s->len = m.len;
        s->is_new = m.is_new;
        s->flags = m.flags;
        s->date = m.internal_date;
        s->file_size = m.file_size;
        memcpy(s->sha, m.sha256, SHA256_LEN);
        s->problems = m.problems;
        s->error = m.error;
        if (m.status == MAILDIR_OK) {
            uint8_t h[SHA256_LEN];
            sha256_buf(m.data, m.len, h);
            assert_memory_equal(h, m.sha256, SHA256_LEN);
        } else {
            assert_null(m.data);
        }
    }
    assert_int_equal(rc, 0);
    assert_int_equal(maildir_iter_next(it, &m), 0);
    maildir_iter_free(&it);
    assert_null(it);
    return n;
}

static void seen_free(struct seen *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(s[i].uniq);
        free(s[i].filename);
        free(s[i].keywords);
        free(s[i].data);
    }
    memset(s, 0, n * sizeof(*s));
}

static void test_messages(void **state)
{
    (void)state;
    char *root = root_dir();
    make_maildir(root, "");
    make_maildir(root, ".Work.2024");
    put(root, "dovecot-keywords", "0 $Junk\n1 Important\r\n3 bad(kw\n26 toolarge\nbroken\n", 0);
    put(root, "new/1000.M1P1.host", "Subject: new\n\nunseen\n", 1000000000);
    put(root, "new/1001.M2P2.host:2,S", "Subject: new2\n\nseen in name\n", 1000000001);
    put(root, "cur/1002.M3P3.host,S=120,W=125:2,FRS", "Subject: cur\r\n\r\ncrlf\r\n", 1000000002);
    put(root, "cur/1003.M4P4.host:2,PTabcdX", "Subject: kw\n\nbody\rbare\n", 1000000003);
    put(root, "cur/1004.M5P5.host:2,D", "", 1000000004);
    write_file(root, "cur/1005.M6P6.host:2,", "A: b\n\nnul\0in\n", 13, 1000000005);
    put(root, "tmp/1006.M7P7.host", "Subject: in delivery\n\n", 0);
    put(root, "cur/.hidden", "not a message", 0);
    mkdirs(root, "cur/subdir");
    put(root, ".Work.2024/cur/2000.M1.host:2,a", "Subject: work\n\nw\n", 1700000000);

    struct maildir *md;
    const char *error;
    assert_int_equal(maildir_open(root, NULL, &md, &error), 0);
    assert_int_equal(maildir_folder_count(md), 2);
    struct seen s[16] = {{0}};
    size_t n = read_folder(md, 0, s, 16);
    assert_int_equal(n, 6);
    const struct {
        const char *uniq, *data, *keywords;
        bool is_new;
        uint32_t flags;
        int64_t date;
        unsigned problems;
        size_t len; /* 0: strlen(data) */
    } want[] = {
        {"1000.M1P1.host", "Subject: new\r\n\r\nunseen\r\n", "", true, 0, 1000000000, 0, 0},
        {"1001.M2P2.host", "Subject: new2\r\n\r\nseen in name\r\n", "", true, 0, 1000000001, 0, 0},
        {"1002.M3P3.host", "Subject: cur\r\n\r\ncrlf\r\n", "", false,
         MAIL_F_FLAGGED | MAIL_F_ANSWERED | MAIL_F_SEEN, 1000000002, 0, 0},
        {"1003.M4P4.host", "Subject: kw\r\n\r\nbody\r\nbare\r\n", "$Forwarded $Junk Important",
         false, MAIL_F_DELETED, 1000000003,
         MAILDIR_P_BARE_CR | MAILDIR_P_KEYWORD | MAILDIR_P_UNKNOWN_FLAG, 0},
        {"1004.M5P5.host", "", "", false, MAIL_F_DRAFT, 1000000004, MAILDIR_P_EMPTY, 0},
        {"1005.M6P6.host", "A: b\r\n\r\nnul\0in\r\n", "", false, 0, 1000000005, MAILDIR_P_NUL, 16},
    };
    for (size_t i = 0; i < n; i++) {
        size_t len = want[i].len != 0 ? want[i].len : strlen(want[i].data);
        if (s[i].status != MAILDIR_OK || strcmp(s[i].uniq, want[i].uniq) != 0 || s[i].len != len ||
            memcmp(s[i].data, want[i].data, len) != 0 ||
            strcmp(s[i].keywords, want[i].keywords) != 0 || s[i].is_new != want[i].is_new ||
            s[i].flags != want[i].flags || s[i].date != want[i].date ||
            s[i].problems != want[i].problems)
            fail_msg("message %zu (%s): status %d uniq '%s' keywords '%s' new %d flags 0x%x "
                     "date %lld problems 0x%x len %zu",
                     i, want[i].uniq, s[i].status, s[i].uniq, s[i].keywords, s[i].is_new,
                     s[i].flags, (long long)s[i].date, s[i].problems, s[i].len);
        uint8_t h[SHA256_LEN];
        sha256_buf(want[i].data, len, h);
        assert_memory_equal(h, s[i].sha, SHA256_LEN);
    }
    assert_int_equal(s[2].file_size, strlen("Subject: cur\r\n\r\ncrlf\r\n"));
    assert_string_equal(s[2].filename, "1002.M3P3.host,S=120,W=125:2,FRS");

    /* Reading again gives the same identities and hashes. */
    struct seen again[16] = {{0}};
    assert_int_equal(read_folder(md, 0, again, 16), n);
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(again[i].uniq, s[i].uniq);
        assert_memory_equal(again[i].sha, s[i].sha, SHA256_LEN);
    }
    seen_free(again, n);
    seen_free(s, n);

    /* The subfolder: its own dovecot-keywords (none): 'a' is unmapped. */
    n = read_folder(md, 1, s, 16);
    assert_int_equal(n, 1);
    assert_string_equal(s[0].keywords, "");
    assert_int_equal(s[0].problems, MAILDIR_P_KEYWORD);
    assert_int_equal(s[0].date, 1700000000);
    seen_free(s, n);
    maildir_free(&md);
    rm_rf(root);
    xfree(&root);
}

/* A mail client at work: files vanish, move from new/ to cur/ and change
 * flags between the listing and the read. */
static void test_concurrent_client(void **state)
{
    (void)state;
    char *root = root_dir();
    make_maildir(root, "");
    put(root, "cur/1.A.host:2,", "Subject: 1\n\n", 100);
    put(root, "cur/2.A.host:2,", "Subject: 2\n\n", 200);
    put(root, "new/3.A.host", "Subject: 3\n\n", 300);
    put(root, "cur/4.A.host:2,S", "Subject: 4\n\n", 400);
    put(root, "new/5.A.host", "Subject: 5\n\n", 500);
    put(root, "cur/5.A.host:2,S", "Subject: 5\n\n", 500);
    put(root, "cur/6.A.host:2,", "Subject: 6a\n\n", 600);
    put(root, "cur/6.A.host:2,F", "Subject: 6b\n\n", 600);

    struct maildir *md;
    const char *error;
    assert_int_equal(maildir_open(root, NULL, &md, &error), 0);
    struct maildir_iter *it;
    assert_int_equal(maildir_iter_new(md, 0, &it, &error), 0);
    assert_int_equal(maildir_iter_count(it), 8);
    /* After the listing: 1 deleted, 2 flagged Seen, 3 moved to cur/ and
     * answered; 5 was listed twice while moving and is now only in cur/. */
    char *p = xasprintf("%s/cur/1.A.host:2,", root);
    assert_int_equal(unlink(p), 0);
    xfree(&p);
    mv(root, "cur/2.A.host:2,", "cur/2.A.host:2,S");
    mv(root, "new/3.A.host", "cur/3.A.host:2,RS");
    p = xasprintf("%s/new/5.A.host", root);
    assert_int_equal(unlink(p), 0);
    xfree(&p);

    struct maildir_msg m;
    assert_int_equal(maildir_iter_next(it, &m), 1);
    assert_string_equal(m.uniq, "1.A.host");
    assert_int_equal(m.status, MAILDIR_VANISHED);
    assert_null(m.data);

    assert_int_equal(maildir_iter_next(it, &m), 1);
    assert_string_equal(m.uniq, "2.A.host");
    assert_int_equal(m.status, MAILDIR_OK);
    assert_int_equal(m.problems, MAILDIR_P_RENAMED);
    assert_int_equal(m.flags, MAIL_F_SEEN);
    assert_string_equal(m.filename, "2.A.host:2,S");
    assert_int_equal(m.internal_date, 200);

    assert_int_equal(maildir_iter_next(it, &m), 1);
    assert_string_equal(m.uniq, "3.A.host");
    assert_int_equal(m.status, MAILDIR_OK);
    assert_int_equal(m.problems, MAILDIR_P_RENAMED);
    assert_false(m.is_new);
    assert_int_equal(m.flags, MAIL_F_SEEN | MAIL_F_ANSWERED);
    assert_int_equal(m.len, strlen("Subject: 3\r\n\r\n"));

    assert_int_equal(maildir_iter_next(it, &m), 1);
    assert_string_equal(m.uniq, "4.A.host");
    assert_int_equal(m.status, MAILDIR_OK);
    assert_int_equal(m.problems, 0);

    /* 5: once (cur/ first), the vanished new/ listing is not a message. */
    assert_int_equal(maildir_iter_next(it, &m), 1);
    assert_string_equal(m.uniq, "5.A.host");
    assert_int_equal(m.status, MAILDIR_OK);
    assert_false(m.is_new);

    /* 6: two files claim one identity: the second is reported. */
    assert_int_equal(maildir_iter_next(it, &m), 1);
    assert_string_equal(m.uniq, "6.A.host");
    assert_int_equal(m.status, MAILDIR_OK);
    assert_string_equal(m.filename, "6.A.host:2,");
    assert_int_equal(maildir_iter_next(it, &m), 1);
    assert_string_equal(m.uniq, "6.A.host");
    assert_int_equal(m.status, MAILDIR_DUPLICATE);
    assert_string_equal(m.filename, "6.A.host:2,F");
    assert_int_equal(maildir_iter_next(it, &m), 0);
    maildir_iter_free(&it);
    maildir_free(&md);
    rm_rf(root);
    xfree(&root);
}

static void test_limits_and_bad_files(void **state)
{
    (void)state;
    char *root = root_dir();
    make_maildir(root, "");
    char big[300];
    memset(big, 'x', sizeof(big));
    big[sizeof(big) - 1] = '\n';
    write_file(root, "cur/1.big:2,", big, 200, 0);
    write_file(root, "cur/2.limit:2,", big, 100, 0);
    char *target = xasprintf("%s/cur/2.limit:2,", root);
    char *link = xasprintf("%s/cur/3.link:2,", root);
    assert_int_equal(symlink(target, link), 0);
    char *fifo = xasprintf("%s/cur/4.fifo:2,", root);
    assert_int_equal(mkfifo(fifo, 0600), 0);

    struct maildir_limits lim = {.file_max = 100};
    struct maildir *md;
    const char *error;
    assert_int_equal(maildir_open(root, &lim, &md, &error), 0);
    struct seen s[8] = {{0}};
    size_t n = read_folder(md, 0, s, 8);
    assert_int_equal(n, 4);
    assert_int_equal(s[0].status, MAILDIR_TOO_BIG);
    assert_int_equal(s[0].file_size, 200);
    assert_int_equal(s[1].status, MAILDIR_OK); /* exactly at the limit */
    assert_int_equal(s[1].len, 100);
    assert_int_equal(s[2].status, MAILDIR_UNREADABLE);
    assert_int_equal(s[2].error, ELOOP);
    assert_int_equal(s[3].status, MAILDIR_UNREADABLE);
    assert_int_equal(s[3].error, EINVAL);
    for (size_t i = 0; i < 4; i++)
        assert_true(strlen(maildir_status_str(s[i].status)) > 1);
    seen_free(s, n);
    maildir_free(&md);

    /* More files than the limit: the folder is refused, not cut short. */
    lim = (struct maildir_limits){.files_max = 3};
    assert_int_equal(maildir_open(root, &lim, &md, &error), 0);
    struct maildir_iter *it;
    assert_int_equal(maildir_iter_new(md, 0, &it, &error), -1);
    assert_string_equal(error, "more files in a folder than the limit");
    lim.files_max = 4;
    maildir_free(&md);
    assert_int_equal(maildir_open(root, &lim, &md, &error), 0);
    assert_int_equal(maildir_iter_new(md, 0, &it, &error), 0);
    assert_int_equal(maildir_iter_count(it), 4);
    maildir_iter_free(&it);
    maildir_free(&md);

    /* A folder with cur/ only, and an empty one. */
    rm_rf(root);
    mkdirs(root, "cur");
    put(root, "cur/1.x:2,S", "A: b\n\n", 0);
    mkdirs(root, ".Empty/new");
    assert_int_equal(maildir_open(root, NULL, &md, &error), 0);
    assert_int_equal(maildir_folder_count(md), 2);
    assert_int_equal(read_folder(md, 0, s, 8), 1);
    seen_free(s, 1);
    assert_int_equal(read_folder(md, 1, s, 8), 0);
    maildir_free(&md);

    xfree(&target);
    xfree(&link);
    xfree(&fifo);
    rm_rf(root);
    xfree(&root);
}

/* ---- dovecot-uidlist ------------------------------------------------------------- */

struct uidl_case {
    const char *name;
    const char *text;
    const char *err;   /* NULL: parses */
    uint32_t uv, next; /* when it parses */
    const char *look;  /* "uniq=uid,uniq=uid" lookups (uid 0: none) */
};

static void test_uidlist(void **state)
{
    (void)state;
    static const struct uidl_case cases[] = {
        {"dovecot v3",
         "3 V1795260809 N5 Gf992ee0d8781016b012f000083ecc375\n"
         "1 :1795260807.M251231P12033.vm,S=29,W=33\n"
         "2 :1795260807.M259825P12033.vm,S=29,W=32\n",
         NULL, 1795260809, 5, "1795260807.M251231P12033.vm=1,1795260807.M259825P12033.vm=2,x=0"},
        {"records past the header's N", "3 V7 N1 G00\n1 :a\n5 :b\n", NULL, 7, 6, "a=1,b=5"},
        {"extension fields", "3 V7 N9 G00 Xfoo\n3 W120 S100 :m.h,S=100\n", NULL, 7, 9, "m.h=3"},
        {"header only", "3 V7 N1 G00\n", NULL, 7, 1, "a=0"},
        {"CRLF lines", "3 V7 N9\r\n2 :a\r\n", NULL, 7, 9, "a=2"},
        {"version 1", "1 77 10\n4 m.h:2,S\n", NULL, 77, 10, "m.h=4"},
        {"empty", "", "dovecot-uidlist: empty", 0, 0, NULL},
        {"unfinished", "3 V7 N9\n2 :a", "dovecot-uidlist: the last line is not complete", 0, 0,
         NULL},
        {"NUL", "3 V7 N9\n2 :a\0b\n", "dovecot-uidlist: a NUL", 0, 0, NULL},
        {"version 2", "2 V7 N9\n", "dovecot-uidlist line 1: an unsupported version", 0, 0, NULL},
        {"not a header", "hello\n", "dovecot-uidlist line 1: not a dovecot-uidlist header", 0, 0,
         NULL},
        {"no V", "3 N9 G1\n", "dovecot-uidlist line 1: no UIDVALIDITY", 0, 0, NULL},
        {"no N", "3 V9\n", "dovecot-uidlist line 1: no next UID", 0, 0, NULL},
        {"V zero", "3 V0 N9\n", "dovecot-uidlist line 1: a bad UIDVALIDITY", 0, 0, NULL},
        {"V too big", "3 V4294967296 N9\n", "dovecot-uidlist line 1: a bad UIDVALIDITY", 0, 0,
         NULL},
        {"V twice", "3 V1 V2 N9\n", "dovecot-uidlist line 1: a header field given twice", 0, 0,
         NULL},
        {"lowercase field", "3 V1 N9 x\n", "dovecot-uidlist line 1: a header field", 0, 0, NULL},
        {"trailing space", "3 V1 N9 \n", "dovecot-uidlist line 1: a trailing space", 0, 0, NULL},
        {"bad v1", "1 77\n", "dovecot-uidlist line 1: a malformed version 1 header", 0, 0, NULL},
        {"no uid", "3 V1 N9\n:a\n", "dovecot-uidlist line 2: no UID", 0, 0, NULL},
        {"uid zero", "3 V1 N9\n0 :a\n", "dovecot-uidlist line 2: no UID", 0, 0, NULL},
        {"no colon", "3 V1 N9\n1 a\n", "dovecot-uidlist line 2: an extension field", 0, 0, NULL},
        {"no colon after fields", "3 V1 N9\n1 W12\n", "dovecot-uidlist line 2: no \":\"", 0, 0,
         NULL},
        {"empty name", "3 V1 N9\n1 :\n", "dovecot-uidlist line 2: an empty file name", 0, 0, NULL},
        {"slash in name", "3 V1 N9\n1 :../x\n", "dovecot-uidlist line 2: a bad file name", 0, 0,
         NULL},
        {"dot name", "3 V1 N9\n1 :.x\n", "dovecot-uidlist line 2: a bad file name", 0, 0, NULL},
        {"descending", "3 V1 N9\n2 :a\n1 :b\n", "dovecot-uidlist line 3: UIDs not ascending", 0, 0,
         NULL},
        {"repeated uid", "3 V1 N9\n2 :a\n2 :b\n", "dovecot-uidlist line 3: a UID given twice", 0, 0,
         NULL},
        {"one file twice", "3 V1 N9\n2 :a,S=1\n3 :a,S=2\n", "dovecot-uidlist: two UIDs for one", 0,
         0, NULL},
        {"last uid", "3 V1 N9\n4294967295 :a\n", "dovecot-uidlist: no UIDs left", 0, 0, NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct uidl_case *c = &cases[i];
        size_t len = strlen(c->text);
        if (strcmp(c->name, "NUL") == 0)
            len = 15; /* strlen stops at the NUL */
        struct maildir_uidlist *ul = NULL;
        char err[200] = "";
        int r = maildir_uidlist_parse(c->text, len, 0, &ul, err, sizeof(err));
        if (c->err != NULL) {
            if (r != -1 || ul != NULL)
                fail_msg("%s: parsed", c->name);
            if (strncmp(err, c->err, strlen(c->err)) != 0)
                fail_msg("%s: got \"%s\", want \"%s...\"", c->name, err, c->err);
            continue;
        }
        if (r != 0)
            fail_msg("%s: %s", c->name, err);
        assert_int_equal(maildir_uidlist_uidvalidity(ul), c->uv);
        assert_int_equal(maildir_uidlist_uidnext(ul), c->next);
        char look[256];
        snprintf(look, sizeof(look), "%s", c->look);
        char *save = NULL;
        for (char *kv = strtok_r(look, ",", &save); kv != NULL; kv = strtok_r(NULL, ",", &save)) {
            char *eq = strchr(kv, '=');
            *eq = '\0';
            uint32_t got = maildir_uidlist_find(ul, kv);
            if (got != (uint32_t)atoi(eq + 1))
                fail_msg("%s: %s has UID %u, want %s", c->name, kv, got, eq + 1);
        }
        maildir_uidlist_free(&ul);
        assert_null(ul);
    }
    /* The entry limit. */
    struct maildir_uidlist *ul = NULL;
    char err[200];
    assert_int_equal(
        maildir_uidlist_parse("3 V1 N9\n1 :a\n2 :b\n3 :c\n", 23, 2, &ul, err, sizeof(err)), -1);
    assert_string_equal(err, "dovecot-uidlist line 4: more entries than the limit");
    /* A line over the limit. */
    struct buf b;
    buf_init(&b, 0);
    buf_puts(&b, "3 V1 N9\n1 :");
    for (unsigned i = 0; i < MAILDIR_UIDLIST_LINE_MAX; i++)
        buf_puts(&b, "x");
    buf_puts(&b, "\n");
    assert_int_equal(maildir_uidlist_parse(b.data, b.len, 0, &ul, err, sizeof(err)), -1);
    assert_string_equal(err, "dovecot-uidlist line 2: a line longer than the limit");
    buf_free(&b);
}

/* A folder with a dovecot-uidlist: messages come in UID order (those
 * without a UID after them), each with its UID. */
static void test_uidlist_iter(void **state)
{
    (void)state;
    char root[] = "/tmp/tern-test-uidl-XXXXXX";
    assert_non_null(mkdtemp(root));
    char p[512];
    static const char *const subs[] = {"cur", "new", "tmp"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(p, sizeof(p), "%s/%s", root, subs[i]);
        assert_int_equal(mkdir(p, 0700), 0);
    }
    /* Identity order (M10 before M9) is not UID order. */
    static const char *const files[] = {"cur/1.M10P1.h,S=5:2,S", "cur/1.M9P1.h:2,", "new/2.M1P1.h",
                                        "new/0.M1P1.h"};
    for (size_t i = 0; i < 4; i++) {
        snprintf(p, sizeof(p), "%s/%s", root, files[i]);
        FILE *f = fopen(p, "w");
        assert_non_null(f);
        fputs("Subject: x\n\nx\n", f);
        fclose(f);
    }
    snprintf(p, sizeof(p), "%s/dovecot-uidlist", root);
    FILE *f = fopen(p, "w");
    fputs("3 V99 N5 G0\n1 :1.M9P1.h\n2 :1.M10P1.h,S=5\n4 :2.M1P1.h\n", f);
    fclose(f);
    struct maildir *md;
    const char *e;
    assert_int_equal(maildir_open(root, NULL, &md, &e), 0);
    struct maildir_iter *it;
    assert_int_equal(maildir_iter_new(md, 0, &it, &e), 0);
    const char *note;
    const struct maildir_uidlist *ul = maildir_iter_uidlist(it, &note);
    assert_non_null(ul);
    assert_int_equal(maildir_uidlist_uidvalidity(ul), 99);
    static const struct {
        const char *uniq;
        uint32_t uid;
    } want[] = {{"1.M9P1.h", 1}, {"1.M10P1.h", 2}, {"2.M1P1.h", 4}, {"0.M1P1.h", 0}};
    struct maildir_msg m;
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(maildir_iter_next(it, &m), 1);
        assert_string_equal(m.uniq, want[i].uniq);
        assert_int_equal(m.uid, want[i].uid);
    }
    assert_int_equal(maildir_iter_next(it, &m), 0);
    maildir_iter_free(&it);
    /* A broken uidlist: no UIDs, the reason, the messages all the same. */
    f = fopen(p, "w");
    fputs("3 V99 N5 G0\n2 :1.M9P1.h\n1 :1.M10P1.h,S=5\n", f);
    fclose(f);
    assert_int_equal(maildir_iter_new(md, 0, &it, &e), 0);
    assert_null(maildir_iter_uidlist(it, &note));
    assert_string_equal(note, "dovecot-uidlist line 3: UIDs not ascending");
    size_t n = 0;
    while (maildir_iter_next(it, &m) == 1) {
        assert_int_equal(m.uid, 0);
        n++;
    }
    assert_int_equal(n, 4);
    maildir_iter_free(&it);
    unlink(p);
    assert_int_equal(maildir_iter_new(md, 0, &it, &e), 0);
    assert_null(maildir_iter_uidlist(it, &note));
    assert_string_equal(note, "no dovecot-uidlist");
    maildir_iter_free(&it);
    maildir_free(&md);
    for (size_t i = 0; i < 4; i++) {
        snprintf(p, sizeof(p), "%s/%s", root, files[i]);
        unlink(p);
    }
    for (size_t i = 0; i < 3; i++) {
        snprintf(p, sizeof(p), "%s/%s", root, subs[i]);
        rmdir(p);
    }
    rmdir(root);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_folder_names),      cmocka_unit_test(test_tree),
        cmocka_unit_test(test_parse_name),        cmocka_unit_test(test_messages),
        cmocka_unit_test(test_concurrent_client), cmocka_unit_test(test_limits_and_bad_files),
        cmocka_unit_test(test_uidlist),           cmocka_unit_test(test_uidlist_iter),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
