/*
 * cli — `tern import`: start an import job, complete it, report on it
 * (docs/import.md, docs/cli.md). The job runs in the mover; this only
 * writes the directory and reads it back.
 *
 * The IMAP password never travels on the command line: it comes from
 * --password-file FILE or $TERN_IMPORT_PASSWORD, and is copied into
 * DATA/imports/ (mode 0600, fsync'd) for the mover, which deletes it when
 * the job ends.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/cli_private.h"
#include "config/config.h"
#include "directory/directory.h"
#include "import/import.h"
#include "mail/mail.h"
#include "util/util.h"

#define SECRET_MAX 1024

/* "90", "90s", "15m", "72h", "3d" into seconds. */
static int parse_duration(const char *s, uint64_t max, uint64_t *out)
{
    char b[32];
    size_t n = strlen(s);
    if (n == 0 || n >= sizeof(b))
        return -1;
    memcpy(b, s, n + 1);
    uint64_t mult = 1;
    char u = b[n - 1];
    if (u == 's' || u == 'm' || u == 'h' || u == 'd') {
        mult = u == 's' ? 1 : u == 'm' ? 60 : u == 'h' ? 3600 : 86400;
        b[--n] = '\0';
    }
    uint64_t v;
    if (parse_u64(b, max / mult, &v) < 0)
        return -1;
    *out = v * mult;
    return 0;
}

static struct directory *idir(const struct config *cfg)
{
    if (mkdir_p(cfg->data_dir, 0750) < 0) {
        cli_fail("cannot create data directory %s: %s", cfg->data_dir, strerror(errno));
        return NULL;
    }
    const char *error;
    struct directory *dir = dir_open_sqlite(cfg->directory, &error);
    if (dir == NULL)
        cli_fail("cannot open directory %s: %s", cfg->directory, error);
    return dir;
}

static int dir_trouble(enum dir_status ds, const char *what)
{
    if (ds == DIR_TEMPFAIL)
        return cli_fail("%s: directory unavailable, try again", what);
    return cli_fail("%s: %s", what, dir_status_str(ds));
}

/* The password for an IMAP source: from a file or the environment; copied
 * to DATA/imports/ for the mover. 0 with the copy's path, or exit status. */
static int keep_secret(const struct config *cfg, const char *file, char out[IMPORT_PATH_MAX + 1])
{
    struct buf pw;
    buf_init(&pw, SECRET_MAX + 2);
    if (file != NULL) {
        const char *e;
        if (file_read_all(strcmp(file, "-") == 0 ? "/dev/stdin" : file, SECRET_MAX + 2, &pw, &e) <
            0) {
            buf_free(&pw);
            return cli_fail("password file %s: %s", file, e);
        }
    } else {
        const char *env = getenv("TERN_IMPORT_PASSWORD");
        if (env == NULL || env[0] == '\0') {
            buf_free(&pw);
            return cli_usage("an IMAP source needs --password-file FILE or $TERN_IMPORT_PASSWORD "
                             "(never the command line)");
        }
        if (buf_puts(&pw, env) < 0) {
            buf_free(&pw);
            return cli_fail("the password is longer than %d octets", SECRET_MAX);
        }
    }
    while (pw.len > 0 && (pw.data[pw.len - 1] == '\n' || pw.data[pw.len - 1] == '\r'))
        pw.len--;
    if (pw.len == 0 || pw.len > SECRET_MAX || memchr(pw.data, '\0', pw.len) != NULL) {
        buf_free(&pw);
        return cli_fail(pw.len == 0 ? "the password is empty" : "the password is not usable");
    }
    char dirpath[PATH_MAX];
    snprintf(dirpath, sizeof(dirpath), "%s/imports", cfg->data_dir);
    if (mkdir_p(dirpath, 0700) < 0) {
        buf_free(&pw);
        return cli_fail("cannot create %s: %s", dirpath, strerror(errno));
    }
    uint8_t rnd[12];
    char hex[25];
    rand_bytes(rnd, sizeof(rnd));
    hex_encode(rnd, sizeof(rnd), hex);
    if (snprintf(out, IMPORT_PATH_MAX + 1, "%s/%s.password", dirpath, hex) > IMPORT_PATH_MAX) {
        buf_free(&pw);
        return cli_fail("data directory path too long");
    }
    int fd = open(out, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    int r = fd < 0 ? -1 : write_full(fd, pw.data, pw.len);
    /* The job refers to this file: it must be on disk before the job is. */
    if (r == 0)
        r = util_fsync(fd, "import password");
    if (fd >= 0)
        close(fd);
    if (r == 0)
        r = util_fsync_dir(dirpath, "import password");
    memset(pw.data, 0, pw.len);
    buf_free(&pw);
    if (r < 0) {
        unlink(out);
        return cli_fail("cannot write %s: %s", out, strerror(errno));
    }
    return 0;
}

/* --create: a user with a random password nobody knows (set one with
 * `tern user set ADDR --password-file F`). */
static int create_user(struct directory *dir, const char *addr, const char *store,
                       struct dir_user *u)
{
    memset(u, 0, sizeof(*u));
    str_copy(u->address, addr, sizeof(u->address));
    if (store != NULL) {
        struct dir_store s;
        if (dir_store_get(dir, store, &s) != DIR_OK)
            return cli_fail("unknown store '%s' (see 'tern store list')", store);
        str_copy(u->home, store, sizeof(u->home));
    } else if (cli_pick_store(dir, u->home) < 0) {
        return cli_fail("no store to home the user on");
    }
    struct dir_domain d;
    if (dir_domain_get(dir, mail_addr_domain(addr), &d) != DIR_OK)
        return cli_fail("unknown domain '%s' (add it with 'tern domain add %s')",
                        mail_addr_domain(addr), mail_addr_domain(addr));
    uint8_t rnd[24];
    char pw[49];
    const char *e;
    rand_bytes(rnd, sizeof(rnd));
    hex_encode(rnd, sizeof(rnd), pw);
    if (dir_password_hash(pw, u->password_hash, &e) < 0)
        return cli_fail("cannot hash a password: %s", e);
    u->state = DIR_USER_ACTIVE;
    enum dir_status ds = dir_user_add(dir, u);
    if (ds == DIR_EXISTS)
        return cli_fail("%s exists as an alias", addr);
    if (ds != DIR_OK)
        return dir_trouble(ds, "creating the user");
    printf("user %s created on store %s (set a password with 'tern user set %s "
           "--password-file F')\n",
           u->address, u->home, u->address);
    return 0;
}

/* The initial copy is over once the job watches, sweeps (a sweep that is
 * about to end: once it is done) or is done. */
static bool copied(const struct dir_job *j)
{
    if (strcmp(j->phase, "sweep") == 0)
        return j->retain_until > time_now_ms() / 1000;
    return strcmp(j->phase, "watch") == 0 || strcmp(j->phase, "done") == 0;
}

/* Waits like `tern move --wait`: a progress bar on a terminal, each phase
 * otherwise. 0 once the initial copy is over, 1 if the job failed. */
static int wait_import(struct directory *dir, uint64_t id)
{
    bool tty = isatty(STDOUT_FILENO);
    int64_t start = time_mono_ms();
    char last[DIR_PHASE_MAX + 1] = "";
    for (;;) {
        struct dir_job j;
        enum dir_status ds = dir_job_get(dir, id, &j);
        if (ds == DIR_NOTFOUND)
            return cli_fail("job %llu is gone", (unsigned long long)id);
        if (ds == DIR_OK) {
            double secs = (double)(time_mono_ms() - start) / 1000.0;
            double rate = secs > 0.5 ? (double)j.msgs_done / secs : 0;
            if (tty) {
                cli_progress_bar(&j, rate, copied(&j));
            } else if (strcmp(last, j.phase) != 0) {
                printf("job %llu: %s (%llu/%llu messages)\n", (unsigned long long)id, j.phase,
                       (unsigned long long)j.msgs_done, (unsigned long long)j.msgs_total);
                fflush(stdout);
            }
            str_copy(last, j.phase, sizeof(last));
            if (strcmp(j.phase, "failed") == 0) {
                if (tty)
                    putchar('\n');
                return cli_fail("import of %s failed: %s", j.user,
                                j.last_error[0] ? j.last_error : "no reason recorded");
            }
            if (copied(&j)) {
                if (tty)
                    putchar('\n');
                if (strcmp(j.phase, "watch") == 0)
                    printf("imported %s from %s; watching for new mail until 'tern import "
                           "complete %llu'\n",
                           j.user, j.source, (unsigned long long)id);
                else
                    printf("imported %s from %s (%s)\n", j.user, j.source,
                           strcmp(j.phase, "done") == 0 ? "done"
                                                        : "sweeping the source for stragglers");
                return 0;
            }
        }
        usleep(200 * 1000);
    }
}

static int parse_job_id(const char *s, uint64_t *id)
{
    if (parse_u64(s, UINT64_MAX, id) < 0 || *id == 0)
        return cli_usage("'%s' is not a job id", s);
    return 0;
}

static int import_sub(const struct config *cfg, const char *sub, int argc, char **argv)
{
    int r = cli_reject_leftover(argc, argv, 1);
    uint64_t id;
    if (r != 0 || (r = parse_job_id(argv[0], &id)) != 0)
        return r;
    struct directory *dir = idir(cfg);
    if (dir == NULL)
        return 1;
    int rc = 0;
    if (strcmp(sub, "report") == 0) {
        const char *e;
        if (import_report(dir, id, stdout, &e) < 0)
            rc = cli_fail("report of job %llu: %s", (unsigned long long)id, e);
    } else if (strcmp(sub, "wait") == 0) {
        rc = wait_import(dir, id);
    } else { /* complete */
        for (int attempt = 0;; attempt++) {
            struct dir_job j;
            enum dir_status ds = dir_job_get(dir, id, &j);
            if (ds != DIR_OK || j.kind != DIR_JOB_IMPORT) {
                rc = ds == DIR_OK || ds == DIR_NOTFOUND
                         ? cli_fail("no import job %llu", (unsigned long long)id)
                         : dir_trouble(ds, "import complete");
                break;
            }
            if (!import_phase_active(j.phase) || strcmp(j.phase, "sweep") == 0 ||
                strcmp(j.phase, "complete") == 0) {
                rc = cli_fail("import job %llu is past its cutover (%s)", (unsigned long long)id,
                              j.phase);
                break;
            }
            j.options |= DIR_JOB_OPT_COMPLETE;
            /* Due now: the mover picks it up at once. */
            j.checkpoint = 0;
            ds = dir_job_update(dir, &j);
            if (ds == DIR_CONFLICT && attempt < 50)
                continue; /* the mover saved progress meanwhile */
            if (ds != DIR_OK)
                rc = dir_trouble(ds, "import complete");
            else
                printf("job %llu: complete requested: one last pass, then the straggler "
                       "sweep\n",
                       (unsigned long long)id);
            break;
        }
    }
    dir_close(&dir);
    return rc;
}

int cli_import(const struct config *cfg, int argc, char **argv)
{
    if (argc < 1)
        return cli_usage("import needs ADDRESS --from SOURCE, or complete|report|wait ID");
    if (strcmp(argv[0], "complete") == 0 || strcmp(argv[0], "report") == 0 ||
        strcmp(argv[0], "wait") == 0)
        return import_sub(cfg, argv[0], argc - 1, argv + 1);
    bool bad = false;
    const char *from = cli_take_opt(&argc, argv, "--from", &bad);
    const char *pwfile = cli_take_opt(&argc, argv, "--password-file", &bad);
    const char *ca_file = cli_take_opt(&argc, argv, "--ca-file", &bad);
    const char *store = cli_take_opt(&argc, argv, "--store", &bad);
    const char *poll = cli_take_opt(&argc, argv, "--poll", &bad);
    const char *sweep = cli_take_opt(&argc, argv, "--sweep", &bad);
    bool create = cli_take_flag(&argc, argv, "--create");
    bool watch = cli_take_flag(&argc, argv, "--watch");
    bool wait = cli_take_flag(&argc, argv, "--wait");
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--password") == 0 || strncmp(argv[i], "--password=", 11) == 0)
            return cli_usage("the source password is never given on the command line: use "
                             "--password-file FILE or $TERN_IMPORT_PASSWORD");
    if (bad)
        return cli_usage("option needs a value");
    int r = cli_reject_leftover(argc, argv, 1);
    if (r != 0)
        return r;
    if (from == NULL)
        return cli_usage("import needs --from SOURCE (mbox:PATH, maildir:PATH, "
                         "imap://USER@HOST[:PORT] or imaps://USER@HOST[:PORT])");
    struct import_settings set;
    memset(&set, 0, sizeof(set));
    set.watch = watch;
    set.poll = IMPORT_POLL_DEFAULT;
    set.sweep = IMPORT_SWEEP_DEFAULT;
    uint64_t v;
    if (poll != NULL) {
        if (parse_duration(poll, 86400, &v) < 0 || v == 0)
            return cli_usage("--poll needs a duration of 1s to 1d (e.g. 10s)");
        set.poll = (unsigned)v;
    }
    if (sweep != NULL) {
        if (parse_duration(sweep, 366ull * 86400, &v) < 0)
            return cli_usage("--sweep needs a duration up to a year (e.g. 72h; 0 for none)");
        set.sweep = v;
    }
    char addr[MAIL_ADDR_MAX + 1];
    const char *e;
    if (mail_addr_normalize(argv[0], strlen(argv[0]), addr, &e) < 0)
        return cli_fail("invalid address '%s': %s", argv[0], e);
    /* A relative path is the operator's current directory's. */
    char spec[DIR_JOB_ARG_MAX + 1];
    const char *colon = strchr(from, ':');
    if (colon != NULL && (strncmp(from, "mbox:", 5) == 0 || strncmp(from, "maildir:", 8) == 0) &&
        colon[1] != '/' && colon[1] != '\0') {
        char cwd[PATH_MAX];
        if (getcwd(cwd, sizeof(cwd)) == NULL ||
            snprintf(spec, sizeof(spec), "%.*s%s/%s", (int)(colon - from + 1), from, cwd,
                     colon + 1) >= (int)sizeof(spec))
            return cli_fail("the source path is too long");
    } else if (str_copy(spec, from, sizeof(spec)) >= sizeof(spec)) {
        return cli_fail("the source is too long");
    }
    bool needs_pw, tls;
    if (import_source_check(spec, &needs_pw, &tls, &e) < 0)
        return cli_fail("%s: %s", from, e);
    if (!needs_pw && (pwfile != NULL))
        return cli_usage("--password-file is for an IMAP source");
    if (ca_file != NULL) {
        /* The mover reads it at each connection: an absolute path, and one
         * that can be read now, so a typo fails here and not in the job. */
        if (!tls)
            return cli_usage("--ca-file is for an imaps:// source");
        char abs[PATH_MAX];
        if (realpath(ca_file, abs) == NULL)
            return cli_fail("--ca-file %s: %s", ca_file, strerror(errno));
        struct buf pem;
        buf_init(&pem, 0);
        int fr = file_read_all(abs, 1u << 20, &pem, &e);
        bool looks = fr == 0 && pem.data != NULL && strstr(pem.data, "-----BEGIN CERTIFICATE-----");
        buf_free(&pem);
        if (fr < 0)
            return cli_fail("--ca-file %s: %s", ca_file, e);
        if (!looks)
            return cli_fail("--ca-file %s: no PEM certificate in it", ca_file);
        if (str_copy(set.ca_file, abs, sizeof(set.ca_file)) >= sizeof(set.ca_file))
            return cli_fail("--ca-file: the path is too long");
    }
    if (store != NULL && !create)
        return cli_usage("--store only goes with --create");
    struct directory *dir = idir(cfg);
    if (dir == NULL)
        return 1;
    for (size_t i = 0; i < cfg->n_stores; i++)
        dir_store_upsert(dir, cfg->stores[i].name, cfg->stores[i].lmtp);
    struct dir_user u;
    enum dir_status ds = dir_user_get(dir, addr, &u);
    if (ds == DIR_NOTFOUND && create)
        r = create_user(dir, addr, store, &u);
    else if (ds == DIR_NOTFOUND)
        r = cli_fail("no such user %s (add it, or give --create)", addr);
    else if (ds != DIR_OK)
        r = dir_trouble(ds, "import");
    if (r == 0 && needs_pw)
        r = keep_secret(cfg, pwfile, set.secret);
    uint64_t id = 0;
    if (r == 0) {
        ds = import_job_create(dir, u.address, u.home, spec, &set, &id);
        if (ds == DIR_INVALID)
            r = cli_fail("%s already has a move or import in progress (see 'tern moves')", addr);
        else if (ds != DIR_OK)
            r = dir_trouble(ds, "import");
        if (r != 0 && set.secret[0] != '\0')
            unlink(set.secret);
    }
    if (r == 0) {
        printf("import job %llu: %s from %s into %s%s\n", (unsigned long long)id, u.address, spec,
               u.home, watch ? " (watching until 'tern import complete')" : "");
        fflush(stdout);
        if (wait)
            r = wait_import(dir, id);
    }
    dir_close(&dir);
    return r;
}
