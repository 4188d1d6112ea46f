/* cli — see cli.h and docs/cli.md. */
#include "cli/cli.h"
#include "cli/cli_private.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/config.h"
#include "doctor/doctor.h"
#include "directory/directory.h"
#include "queue/queue.h"
#include "move/move.h"
#include "role_imap/role_imap.h"
#include "role_mover/role_mover.h"
#include "role_mta/role_mta.h"
#include "role_store/role_store.h"
#include "serve/serve.h"
#include "store/store.h"
#include "util/util.h"

#define TERN_VERSION "0.1.0"
#define PASSWORD_MAX 1024

struct cli {
    struct config cfg;
    const char *config_path; /* NULL = none */
    int argc;                /* what is left after global options */
    char **argv;
};

int cli_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("tern: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

int cli_usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("tern: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs(" (see 'tern help')\n", stderr);
    va_end(ap);
    return 2;
}

static const char help_text[] =
    "usage: tern [--data DIR] [--config FILE] COMMAND ...\n"
    "\n"
    "  serve [--roles LIST] [--smtp ADDR:PORT] [--imap ADDR:PORT]\n"
    "                                        run the supervisor and its roles\n"
    "  domain add NAME | list            local domains\n"
    "  user add ADDR (--password PW | --password-file F) [--store S]\n"
    "  user set ADDR [--password PW | --password-file F]\n"
    "                [--alternate ADDR | --no-alternate] [--deliver-both | --no-deliver-both]\n"
    "  user show ADDR | list | delete ADDR\n"
    "  alias add ADDR TARGET | list | delete ADDR\n"
    "  store list                        stores and their users\n"
    "  mailbox show ADDR [--store S]     a mailbox's state, folders and counts\n"
    "  mailbox export ADDR [--store S] [--folder F]   messages as mboxrd on stdout\n"
    "  mailbox fence|unfence ADDR [--store S]         freeze/unfreeze (maintenance)\n"
    "  queue [list] | show ID | flush [ID]           the mta's queue\n"
    "  move ADDR --to STORE [--wait] [--suspend-when-ready]   move a mailbox\n"
    "  move show ID | abort ID | complete ID | wait ID\n"
    "  moves                             every move job, phase and progress\n"
    "  import ADDR --from mbox:PATH|maildir:PATH|imap[s]://USER@HOST[:PORT] [--create]\n"
    "         [--watch] [--wait] [--password-file F] [--ca-file PEM] [--poll DUR]\n"
    "         [--sweep DUR]                                    migrate mail in\n"
    "  import complete ID | report ID | wait ID\n"
    "  drain STORE --to STORE [--parallel N]          move every mailbox off a store\n"
    "  doctor [--repair]                 compare the directory with the stores\n"
    "  demo                              a short show on a temporary cluster\n"
    "  version | help\n"
    "\n"
    "DIR defaults to $TERN_DATA or ./tern-data; FILE to $TERN_CONFIG or DIR/tern.conf.\n";

/* ---- option helpers --------------------------------------------------- */

/* Finds "--name VALUE" (or --name=VALUE) in args, removes it, returns the
 * value (NULL if absent). A flag without its value is a usage error (*bad). */
const char *cli_take_opt(int *argc, char **argv, const char *name, bool *bad)
{
    size_t nl = strlen(name);
    for (int i = 0; i < *argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, name, nl) != 0)
            continue;
        const char *val;
        int used;
        if (a[nl] == '=') {
            val = a + nl + 1;
            used = 1;
        } else if (a[nl] == '\0') {
            if (i + 1 >= *argc) {
                *bad = true;
                return NULL;
            }
            val = argv[i + 1];
            used = 2;
        } else {
            continue;
        }
        memmove(&argv[i], &argv[i + used], (size_t)(*argc - i - used + 1) * sizeof(char *));
        *argc -= used;
        return val;
    }
    return NULL;
}

/* Finds and removes a boolean "--name". */
bool cli_take_flag(int *argc, char **argv, const char *name)
{
    for (int i = 0; i < *argc; i++) {
        if (strcmp(argv[i], name) == 0) {
            memmove(&argv[i], &argv[i + 1], (size_t)(*argc - i) * sizeof(char *));
            (*argc)--;
            return true;
        }
    }
    return false;
}

/* After options were taken, anything starting with "--" is unknown. */
int cli_reject_leftover(int argc, char **argv, int want_pos)
{
    for (int i = 0; i < argc; i++)
        if (strncmp(argv[i], "--", 2) == 0)
            return cli_usage("unknown option %s", argv[i]);
    if (argc != want_pos)
        return cli_usage(argc < want_pos ? "missing argument" : "unexpected argument '%s'",
                         argc > want_pos ? argv[want_pos] : "");
    return 0;
}

static struct directory *open_dir(struct cli *c)
{
    if (mkdir_p(c->cfg.data_dir, 0750) < 0) {
        cli_fail("cannot create data directory %s: %s", c->cfg.data_dir, strerror(errno));
        return NULL;
    }
    const char *error;
    struct directory *dir = dir_open_sqlite(c->cfg.directory, &error);
    if (dir == NULL) {
        cli_fail("cannot open directory %s: %s", c->cfg.directory, error);
        return NULL;
    }
    /* The configured stores exist for the CLI even before the first serve. */
    for (size_t i = 0; i < c->cfg.n_stores; i++) {
        enum dir_status ds = dir_store_upsert(dir, c->cfg.stores[i].name, c->cfg.stores[i].lmtp);
        if (ds != DIR_OK) {
            cli_fail("cannot register store %s: %s", c->cfg.stores[i].name, dir_status_str(ds));
            dir_close(&dir);
            return NULL;
        }
    }
    return dir;
}

static int dir_fail(enum dir_status ds, const char *what)
{
    if (ds == DIR_TEMPFAIL)
        return cli_fail("%s: directory unavailable, try again", what);
    return cli_fail("%s: %s", what, dir_status_str(ds));
}

static int read_password(const char *pw, const char *file, char out[PASSWORD_MAX + 1])
{
    if (pw != NULL && file != NULL)
        return cli_usage("give --password or --password-file, not both");
    if (file != NULL) {
        struct buf b;
        const char *e;
        buf_init(&b, PASSWORD_MAX + 2);
        int r = strcmp(file, "-") == 0 ? file_read_all("/dev/stdin", PASSWORD_MAX + 2, &b, &e)
                                       : file_read_all(file, PASSWORD_MAX + 2, &b, &e);
        if (r < 0) {
            buf_free(&b);
            return cli_fail("password file %s: %s", file, e);
        }
        while (b.len > 0 && (b.data[b.len - 1] == '\n' || b.data[b.len - 1] == '\r'))
            b.len--;
        if (b.len > PASSWORD_MAX) {
            buf_free(&b);
            return cli_fail("password longer than %d octets", PASSWORD_MAX);
        }
        memcpy(out, b.data != NULL ? b.data : "", b.len);
        out[b.len] = '\0';
        buf_free(&b);
        pw = out;
    } else if (pw != NULL) {
        if (strlen(pw) > PASSWORD_MAX)
            return cli_fail("password longer than %d octets", PASSWORD_MAX);
        str_copy(out, pw, PASSWORD_MAX + 1);
    } else {
        out[0] = '\0';
    }
    if ((pw != NULL) && out[0] == '\0')
        return cli_fail("the password must not be empty");
    return 0;
}

static int normalize_addr(const char *in, char out[MAIL_ADDR_MAX + 1])
{
    const char *e;
    if (mail_addr_normalize(in, strlen(in), out, &e) < 0)
        return cli_fail("invalid address '%s': %s", in, e);
    return 0;
}

/* ---- domain ----------------------------------------------------------- */

static int cmd_domain(struct cli *c, int argc, char **argv)
{
    if (argc < 1)
        return cli_usage("domain needs add or list");
    if (strcmp(argv[0], "add") == 0) {
        int r = cli_reject_leftover(argc - 1, argv + 1, 1);
        if (r != 0)
            return r;
        char dom[MAIL_DOMAIN_MAX + 1];
        const char *e;
        if (mail_domain_normalize(argv[1], dom, &e) < 0)
            return cli_fail("invalid domain '%s': %s", argv[1], e);
        struct directory *dir = open_dir(c);
        if (dir == NULL)
            return 1;
        enum dir_status ds = dir_domain_add(dir, dom);
        dir_close(&dir);
        if (ds == DIR_EXISTS)
            return cli_fail("domain %s already exists", dom);
        if (ds != DIR_OK)
            return dir_fail(ds, "domain add");
        printf("domain %s added\n", dom);
        return 0;
    }
    if (strcmp(argv[0], "list") == 0) {
        int r = cli_reject_leftover(argc - 1, argv + 1, 0);
        if (r != 0)
            return r;
        struct directory *dir = open_dir(c);
        if (dir == NULL)
            return 1;
        struct dir_domain *list;
        size_t n;
        enum dir_status ds = dir_domain_list(dir, &list, &n);
        dir_close(&dir);
        if (ds != DIR_OK)
            return dir_fail(ds, "domain list");
        for (size_t i = 0; i < n; i++)
            printf("%s\n", list[i].name);
        free(list);
        return 0;
    }
    return cli_usage("unknown domain command '%s'", argv[0]);
}

/* ---- user ------------------------------------------------------------- */

int cli_pick_store(struct directory *dir, char out[MAIL_NAME_MAX + 1])
{
    struct dir_store *stores;
    struct dir_user *users;
    size_t ns, nu;
    if (dir_store_list(dir, &stores, &ns) != DIR_OK)
        return -1;
    if (dir_user_list(dir, &users, &nu) != DIR_OK) {
        free(stores);
        return -1;
    }
    size_t best = 0, best_n = SIZE_MAX;
    for (size_t i = 0; i < ns; i++) {
        size_t k = 0;
        for (size_t j = 0; j < nu; j++)
            k += strcmp(users[j].home, stores[i].name) == 0;
        if (k < best_n) {
            best_n = k;
            best = i;
        }
    }
    int r = ns > 0 ? 0 : -1;
    if (ns > 0)
        str_copy(out, stores[best].name, MAIL_NAME_MAX + 1);
    free(stores);
    free(users);
    return r;
}

static void print_user(const struct dir_user *u)
{
    char created[32], updated[32];
    time_format_utc(u->created, created, sizeof(created));
    time_format_utc(u->updated, updated, sizeof(updated));
    printf("address:      %s\n", u->address);
    printf("home:         %s\n", u->home);
    printf("state:        %s\n", dir_user_state_str(u->state));
    printf("epoch:        %llu\n", (unsigned long long)u->epoch);
    printf("alternate:    %s\n", u->alternate[0] ? u->alternate : "-");
    printf("deliver-both: %s\n", u->deliver_both ? "yes" : "no");
    printf("version:      %llu\n", (unsigned long long)u->version);
    printf("created:      %s\n", created);
    printf("updated:      %s\n", updated);
}

static int user_add(struct cli *c, int argc, char **argv)
{
    bool bad = false;
    const char *pw = cli_take_opt(&argc, argv, "--password", &bad);
    const char *pwfile = cli_take_opt(&argc, argv, "--password-file", &bad);
    const char *store = cli_take_opt(&argc, argv, "--store", &bad);
    if (bad)
        return cli_usage("option needs a value");
    int r = cli_reject_leftover(argc, argv, 1);
    if (r != 0)
        return r;
    char addr[MAIL_ADDR_MAX + 1], pwbuf[PASSWORD_MAX + 1];
    if (normalize_addr(argv[0], addr) != 0)
        return 1;
    if (pw == NULL && pwfile == NULL)
        return cli_usage("user add needs --password PW or --password-file FILE");
    if ((r = read_password(pw, pwfile, pwbuf)) != 0)
        return r;
    if (store != NULL && !mail_store_name_valid(store))
        return cli_fail("invalid store name '%s'", store);
    struct directory *dir = open_dir(c);
    if (dir == NULL)
        return 1;
    struct dir_user u;
    memset(&u, 0, sizeof(u));
    str_copy(u.address, addr, sizeof(u.address));
    if (store != NULL) {
        struct dir_store s;
        if (dir_store_get(dir, store, &s) != DIR_OK) {
            dir_close(&dir);
            return cli_fail("unknown store '%s' (see 'tern store list')", store);
        }
        str_copy(u.home, store, sizeof(u.home));
    } else if (cli_pick_store(dir, u.home) < 0) {
        dir_close(&dir);
        return cli_fail("no store to home the user on");
    }
    struct dir_domain d;
    enum dir_status ds = dir_domain_get(dir, mail_addr_domain(addr), &d);
    if (ds == DIR_NOTFOUND) {
        dir_close(&dir);
        return cli_fail("unknown domain '%s' (add it with 'tern domain add %s')",
                        mail_addr_domain(addr), mail_addr_domain(addr));
    }
    const char *e;
    if (dir_password_hash(pwbuf, u.password_hash, &e) < 0) {
        dir_close(&dir);
        return cli_fail("cannot hash password: %s", e);
    }
    u.state = DIR_USER_ACTIVE;
    ds = dir_user_add(dir, &u);
    dir_close(&dir);
    if (ds == DIR_EXISTS)
        return cli_fail("%s already exists (as a user or an alias)", addr);
    if (ds != DIR_OK)
        return dir_fail(ds, "user add");
    printf("user %s added on store %s\n", u.address, u.home);
    return 0;
}

static int user_set(struct cli *c, int argc, char **argv)
{
    bool bad = false;
    const char *pw = cli_take_opt(&argc, argv, "--password", &bad);
    const char *pwfile = cli_take_opt(&argc, argv, "--password-file", &bad);
    const char *alt = cli_take_opt(&argc, argv, "--alternate", &bad);
    bool no_alt = cli_take_flag(&argc, argv, "--no-alternate");
    bool both = cli_take_flag(&argc, argv, "--deliver-both");
    bool no_both = cli_take_flag(&argc, argv, "--no-deliver-both");
    if (bad)
        return cli_usage("option needs a value");
    int r = cli_reject_leftover(argc, argv, 1);
    if (r != 0)
        return r;
    if ((alt != NULL && no_alt) || (both && no_both))
        return cli_usage("contradictory options");
    if (pw == NULL && pwfile == NULL && alt == NULL && !no_alt && !both && !no_both)
        return cli_usage("user set needs something to set");
    char addr[MAIL_ADDR_MAX + 1], altaddr[MAIL_ADDR_MAX + 1] = "", pwbuf[PASSWORD_MAX + 1];
    if (normalize_addr(argv[0], addr) != 0)
        return 1;
    if (alt != NULL && normalize_addr(alt, altaddr) != 0)
        return 1;
    if (strcmp(altaddr, addr) == 0)
        return cli_fail("a user cannot be its own alternate");
    if ((r = read_password(pw, pwfile, pwbuf)) != 0)
        return r;
    struct directory *dir = open_dir(c);
    if (dir == NULL)
        return 1;
    struct dir_user u;
    enum dir_status ds;
    /* Read-modify-write under compare-and-set: retry if another writer won
     * (a move switching the home, say); we only touch our own fields. */
    for (int attempt = 0; attempt < 10; attempt++) {
        ds = dir_user_get(dir, addr, &u);
        if (ds != DIR_OK)
            break;
        if (pwbuf[0] != '\0') {
            const char *e;
            if (dir_password_hash(pwbuf, u.password_hash, &e) < 0) {
                dir_close(&dir);
                return cli_fail("cannot hash password: %s", e);
            }
        }
        if (alt != NULL)
            str_copy(u.alternate, altaddr, sizeof(u.alternate));
        if (no_alt) {
            u.alternate[0] = '\0';
            u.deliver_both = false;
        }
        if (both)
            u.deliver_both = true;
        if (no_both)
            u.deliver_both = false;
        if (u.deliver_both && u.alternate[0] == '\0') {
            dir_close(&dir);
            return cli_fail("--deliver-both needs an alternate recipient");
        }
        ds = dir_user_update(dir, &u);
        if (ds != DIR_CONFLICT)
            break;
    }
    dir_close(&dir);
    if (ds == DIR_NOTFOUND)
        return cli_fail("no such user %s", addr);
    if (ds != DIR_OK)
        return dir_fail(ds, "user set");
    print_user(&u);
    return 0;
}

static int cmd_user(struct cli *c, int argc, char **argv)
{
    if (argc < 1)
        return cli_usage("user needs add, set, show, list or delete");
    const char *sub = argv[0];
    argc--, argv++;
    if (strcmp(sub, "add") == 0)
        return user_add(c, argc, argv);
    if (strcmp(sub, "set") == 0)
        return user_set(c, argc, argv);
    if (strcmp(sub, "show") == 0 || strcmp(sub, "delete") == 0) {
        int r = cli_reject_leftover(argc, argv, 1);
        if (r != 0)
            return r;
        char addr[MAIL_ADDR_MAX + 1];
        if (normalize_addr(argv[0], addr) != 0)
            return 1;
        struct directory *dir = open_dir(c);
        if (dir == NULL)
            return 1;
        struct dir_user u;
        enum dir_status ds = dir_user_get(dir, addr, &u);
        if (ds == DIR_OK && strcmp(sub, "delete") == 0) {
            struct dir_job *jobs;
            size_t nj;
            if (dir_job_list(dir, &jobs, &nj) == DIR_OK) {
                for (size_t i = 0; i < nj; i++)
                    if (strcmp(jobs[i].user, addr) == 0 && !dir_job_phase_final(jobs[i].phase)) {
                        free(jobs);
                        dir_close(&dir);
                        return cli_fail("%s has a running job; abort it first", addr);
                    }
                free(jobs);
            }
            ds = dir_user_delete(dir, addr, u.version);
            if (ds == DIR_OK)
                printf("user %s deleted from the directory; the mailbox stays on %s until "
                       "purged\n",
                       addr, u.home);
        } else if (ds == DIR_OK) {
            print_user(&u);
        }
        dir_close(&dir);
        if (ds == DIR_NOTFOUND)
            return cli_fail("no such user %s", addr);
        if (ds != DIR_OK)
            return dir_fail(ds, sub);
        return 0;
    }
    if (strcmp(sub, "list") == 0) {
        int r = cli_reject_leftover(argc, argv, 0);
        if (r != 0)
            return r;
        struct directory *dir = open_dir(c);
        if (dir == NULL)
            return 1;
        struct dir_user *list;
        size_t n;
        enum dir_status ds = dir_user_list(dir, &list, &n);
        dir_close(&dir);
        if (ds != DIR_OK)
            return dir_fail(ds, "user list");
        printf("%-40s %-8s %-10s %s\n", "ADDRESS", "HOME", "STATE", "EPOCH");
        for (size_t i = 0; i < n; i++)
            printf("%-40s %-8s %-10s %llu\n", list[i].address, list[i].home,
                   dir_user_state_str(list[i].state), (unsigned long long)list[i].epoch);
        free(list);
        return 0;
    }
    return cli_usage("unknown user command '%s'", sub);
}

/* ---- alias ------------------------------------------------------------ */

static int cmd_alias(struct cli *c, int argc, char **argv)
{
    if (argc < 1)
        return cli_usage("alias needs add, list or delete");
    const char *sub = argv[0];
    argc--, argv++;
    int want = strcmp(sub, "add") == 0 ? 2 : strcmp(sub, "delete") == 0 ? 1 : 0;
    if (strcmp(sub, "add") != 0 && strcmp(sub, "delete") != 0 && strcmp(sub, "list") != 0)
        return cli_usage("unknown alias command '%s'", sub);
    int r = cli_reject_leftover(argc, argv, want);
    if (r != 0)
        return r;
    char addr[MAIL_ADDR_MAX + 1], target[MAIL_ADDR_MAX + 1];
    if (want >= 1 && normalize_addr(argv[0], addr) != 0)
        return 1;
    if (want == 2 && normalize_addr(argv[1], target) != 0)
        return 1;
    struct directory *dir = open_dir(c);
    if (dir == NULL)
        return 1;
    enum dir_status ds;
    int rc = 0;
    if (strcmp(sub, "add") == 0) {
        ds = dir_alias_add(dir, addr, target);
        if (ds == DIR_OK)
            printf("alias %s -> %s added\n", addr, target);
        else if (ds == DIR_EXISTS)
            rc = cli_fail("%s already exists (as a user or an alias)", addr);
        else if (ds == DIR_INVALID)
            rc = cli_fail("the domain of %s is not local", addr);
        else
            rc = dir_fail(ds, "alias add");
    } else if (strcmp(sub, "delete") == 0) {
        struct dir_alias a;
        ds = dir_alias_get(dir, addr, &a);
        if (ds == DIR_OK)
            ds = dir_alias_delete(dir, addr, a.version);
        if (ds == DIR_NOTFOUND)
            rc = cli_fail("no such alias %s", addr);
        else if (ds != DIR_OK)
            rc = dir_fail(ds, "alias delete");
    } else {
        struct dir_alias *list;
        size_t n;
        ds = dir_alias_list(dir, &list, &n);
        if (ds == DIR_OK) {
            for (size_t i = 0; i < n; i++)
                printf("%s -> %s\n", list[i].address, list[i].target);
            free(list);
        } else {
            rc = dir_fail(ds, "alias list");
        }
    }
    dir_close(&dir);
    return rc;
}

/* ---- store ------------------------------------------------------------ */

static int cmd_store(struct cli *c, int argc, char **argv)
{
    if (argc < 1 || strcmp(argv[0], "list") != 0)
        return cli_usage("store needs list");
    int r = cli_reject_leftover(argc - 1, argv + 1, 0);
    if (r != 0)
        return r;
    struct directory *dir = open_dir(c);
    if (dir == NULL)
        return 1;
    struct dir_store *stores;
    struct dir_user *users;
    size_t ns, nu;
    enum dir_status ds = dir_store_list(dir, &stores, &ns);
    if (ds == DIR_OK && (ds = dir_user_list(dir, &users, &nu)) != DIR_OK)
        free(stores);
    dir_close(&dir);
    if (ds != DIR_OK)
        return dir_fail(ds, "store list");
    printf("%-10s %-24s %s\n", "NAME", "LMTP", "USERS");
    for (size_t i = 0; i < ns; i++) {
        size_t k = 0;
        for (size_t j = 0; j < nu; j++)
            k += strcmp(users[j].home, stores[i].name) == 0;
        printf("%-10s %-24s %zu\n", stores[i].name, stores[i].lmtp, k);
    }
    free(stores);
    free(users);
    return 0;
}

/* ---- mailbox (reads the store's files on this host) -------------------- */

struct export_ctx {
    struct store *st;
    const char *user;
    const char *folder;
    struct buf body;
    int error;
};

/* mboxrd: "From " lines and any ">*From " line get one more '>'. */
static int export_one(void *ctx, const struct store_msg *m)
{
    struct export_ctx *x = ctx;
    buf_reset(&x->body);
    if (store_msg_read(x->st, x->user, x->folder, m->uid, &x->body) != STORE_OK) {
        x->error = 1;
        return 1;
    }
    char date[32];
    time_format_utc(m->internal_date, date, sizeof(date));
    printf("From MAILER-DAEMON %s\n", date);
    const char *p = x->body.data, *end = p + x->body.len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t ll = nl ? (size_t)(nl - p) : (size_t)(end - p);
        size_t q = 0;
        while (q < ll && p[q] == '>')
            q++;
        if (ll - q >= 5 && memcmp(p + q, "From ", 5) == 0)
            putchar('>');
        size_t out = ll;
        if (out > 0 && p[out - 1] == '\r')
            out--;
        fwrite(p, 1, out, stdout);
        putchar('\n');
        p += ll + (nl != NULL);
    }
    putchar('\n');
    return 0;
}

static int cmd_mailbox(struct cli *c, int argc, char **argv)
{
    if (argc < 1)
        return cli_usage("mailbox needs show, export, fence or unfence");
    const char *sub = argv[0];
    argc--, argv++;
    bool bad = false;
    const char *storename = cli_take_opt(&argc, argv, "--store", &bad);
    const char *folder = cli_take_opt(&argc, argv, "--folder", &bad);
    if (bad)
        return cli_usage("option needs a value");
    int r = cli_reject_leftover(argc, argv, 1);
    if (r != 0)
        return r;
    char addr[MAIL_ADDR_MAX + 1];
    if (normalize_addr(argv[0], addr) != 0)
        return 1;
    char home[MAIL_NAME_MAX + 1];
    if (storename == NULL) {
        struct directory *dir = open_dir(c);
        if (dir == NULL)
            return 1;
        struct dir_user u;
        enum dir_status ds = dir_user_get(dir, addr, &u);
        dir_close(&dir);
        if (ds == DIR_NOTFOUND)
            return cli_fail("no such user %s (give --store to read a mailbox anyway)", addr);
        if (ds != DIR_OK)
            return dir_fail(ds, "mailbox");
        str_copy(home, u.home, sizeof(home));
        storename = home;
    }
    if (!mail_store_name_valid(storename) || config_store(&c->cfg, storename) == NULL)
        return cli_fail("unknown store '%s'", storename);
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/stores/%s", c->cfg.data_dir, storename);
    struct stat sb;
    if (stat(path, &sb) < 0)
        return cli_fail("store %s has no data on this host (%s)", storename, path);
    const char *error;
    struct store *st = store_open_fs(path, storename, &error);
    if (st == NULL)
        return cli_fail("cannot open store %s: %s", storename, error);
    struct store_mailbox mb;
    enum store_status ss = store_mailbox_get(st, addr, &mb);
    if (ss == STORE_NOTFOUND) {
        store_close(&st);
        return cli_fail("no mailbox for %s on store %s", addr, storename);
    }
    if (ss != STORE_OK) {
        store_close(&st);
        return cli_fail("store %s: %s", storename, store_status_str(ss));
    }
    int rc = 0;
    if (strcmp(sub, "show") == 0) {
        printf("user:     %s\nstore:    %s\nstate:    %s\nepoch:    %llu\n", mb.user, storename,
               store_mbox_state_str(mb.state), (unsigned long long)mb.epoch);
        if (mb.state == STORE_MBOX_MOVED)
            printf("moved-to: %s\n", mb.moved_to);
        printf("modseq:   %llu\nmessages: %llu\nbytes:    %llu\n", (unsigned long long)mb.modseq,
               (unsigned long long)mb.messages, (unsigned long long)mb.bytes);
        struct store_folder *fl;
        size_t nf;
        if (store_folder_list(st, addr, &fl, &nf) == STORE_OK) {
            printf("%-32s %10s %10s %8s\n", "FOLDER", "UIDVALIDITY", "UIDNEXT", "MESSAGES");
            for (size_t i = 0; i < nf; i++)
                printf("%-32s %10u %10u %8llu\n", fl[i].name, fl[i].uidvalidity, fl[i].uidnext,
                       (unsigned long long)fl[i].messages);
            free(fl);
        }
    } else if (strcmp(sub, "export") == 0) {
        struct export_ctx x = {.st = st, .user = addr, .folder = folder ? folder : "INBOX"};
        buf_init(&x.body, 0);
        if (store_msg_iter(st, addr, x.folder, export_one, &x, &error) < 0 || x.error)
            rc = cli_fail("export of %s failed", addr);
        buf_free(&x.body);
        fflush(stdout);
    } else if (strcmp(sub, "fence") == 0 || strcmp(sub, "unfence") == 0) {
        bool fence = strcmp(sub, "fence") == 0;
        ss = store_mailbox_set_state(st, addr, fence ? STORE_MBOX_ACTIVE : STORE_MBOX_FENCED,
                                     fence ? STORE_MBOX_FENCED : STORE_MBOX_ACTIVE, mb.epoch, NULL);
        if (ss == STORE_CONFLICT)
            rc = cli_fail("mailbox of %s is %s, not %s", addr, store_mbox_state_str(mb.state),
                          fence ? "active" : "fenced");
        else if (ss != STORE_OK)
            rc = cli_fail("%s: %s", sub, store_status_str(ss));
        else
            printf("mailbox of %s on %s is now %s\n", addr, storename, fence ? "fenced" : "active");
    } else {
        rc = cli_usage("unknown mailbox command '%s'", sub);
    }
    store_close(&st);
    return rc;
}

/* ---- serve and roles -------------------------------------------------- */

static int cmd_serve(struct cli *c, int argc, char **argv)
{
    bool bad = false;
    const char *roles = cli_take_opt(&argc, argv, "--roles", &bad);
    if (bad)
        return cli_usage("--roles needs a value");
    int r = cli_reject_leftover(argc, argv, 0);
    if (r != 0)
        return r;
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n < 0)
        return cli_fail("cannot find my own binary: %s", strerror(errno));
    self[n] = '\0';
    return serve_main(&c->cfg, self, c->config_path, roles);
}

static int cmd_role(struct cli *c, int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[0], "store") == 0)
        return role_store_main(&c->cfg, argv[1]);
    if (argc == 1 && strcmp(argv[0], "mta") == 0)
        return role_mta_main(&c->cfg);
    if (argc == 1 && strcmp(argv[0], "mover") == 0)
        return role_mover_main(&c->cfg);
    if (argc == 1 && strcmp(argv[0], "imap") == 0)
        return role_imap_main(&c->cfg);
    return cli_usage("role needs: store NAME | mta | mover | imap");
}

/* ---- moves ------------------------------------------------------------ */

void cli_human_bytes(uint64_t b, char *out, size_t outlen)
{
    if (b >= 10ull << 30)
        snprintf(out, outlen, "%.1f GB", (double)b / (1 << 30));
    else if (b >= 10ull << 20)
        snprintf(out, outlen, "%.1f MB", (double)b / (1 << 20));
    else if (b >= 10ull << 10)
        snprintf(out, outlen, "%.1f KB", (double)b / (1 << 10));
    else
        snprintf(out, outlen, "%llu B", (unsigned long long)b);
}

void cli_progress_bar(const struct dir_job *j, double rate, bool full)
{
    unsigned width = 30, fill = 0;
    if (j->msgs_total > 0)
        fill = (unsigned)(width * (j->msgs_done > j->msgs_total ? j->msgs_total : j->msgs_done) /
                          j->msgs_total);
    if (full)
        fill = width;
    char bar[64], bytes[32];
    for (unsigned k = 0; k < width; k++)
        bar[k] = k < fill ? '#' : '.';
    bar[width] = '\0';
    cli_human_bytes(j->bytes_done, bytes, sizeof(bytes));
    double eta = rate > 0 && j->msgs_total > j->msgs_done
                     ? (double)(j->msgs_total - j->msgs_done) / rate
                     : 0;
    printf("\r[%s] %-9s %llu/%llu msgs  %s  %.0f msg/s  ETA %.0fs   ", bar, j->phase,
           (unsigned long long)j->msgs_done, (unsigned long long)j->msgs_total, bytes, rate, eta);
    fflush(stdout);
}

static void print_job(const struct dir_job *j)
{
    char created[32], updated[32], lease[32], bytes[32], total[32];
    time_format_utc(j->created, created, sizeof(created));
    time_format_utc(j->updated, updated, sizeof(updated));
    time_format_utc(j->lease_expires / 1000, lease, sizeof(lease));
    cli_human_bytes(j->bytes_done, bytes, sizeof(bytes));
    cli_human_bytes(j->bytes_total, total, sizeof(total));
    printf("job:        %llu (%s)\n", (unsigned long long)j->id, dir_job_kind_str(j->kind));
    printf("user:       %s\n", j->user);
    printf("from:       %s\nto:         %s\n", j->source, j->dest);
    printf("phase:      %s\n", j->phase);
    printf("messages:   %llu of %llu\n", (unsigned long long)j->msgs_done,
           (unsigned long long)j->msgs_total);
    printf("bytes:      %s of %s\n", bytes, total);
    printf("epoch:      %llu\ncheckpoint: %llu\n", (unsigned long long)j->epoch,
           (unsigned long long)j->checkpoint);
    if (j->options & DIR_JOB_OPT_SUSPEND)
        printf("cutover:    waits for 'tern move complete %llu'%s\n", (unsigned long long)j->id,
               (j->options & DIR_JOB_OPT_COMPLETE) ? " (completed)" : "");
    if (j->cutovers > 0) {
        char fenced[32] = "";
        if (j->fenced_at > 0)
            time_format_utc(j->fenced_at / 1000, fenced, sizeof(fenced));
        printf("cutovers:   %u%s%s\n", j->cutovers,
               j->fenced_at > 0 ? ", source fenced since " : "", fenced);
    }
    if (j->retain_until > 0) {
        char until[32];
        time_format_utc(j->retain_until, until, sizeof(until));
        printf("source kept until: %s\n", until);
    }
    printf("lease:      %s%s%s\n", j->lease_owner[0] ? j->lease_owner : "-",
           j->lease_owner[0] ? " until " : "", j->lease_owner[0] ? lease : "");
    if (j->kind == DIR_JOB_MOVE && j->claims > 0)
        printf("token:      %llu/%llu (claimed %llu times)\n", (unsigned long long)j->id,
               (unsigned long long)j->claims, (unsigned long long)j->claims);
    printf("created:    %s\nupdated:    %s\n", created, updated);
    if (j->last_error[0] != '\0')
        printf("last error: %s\n", j->last_error);
}

/* The move is complete for the user once the home switched. */
static bool job_succeeded(const struct dir_job *j)
{
    return strcmp(j->phase, "retention") == 0 || strcmp(j->phase, "done") == 0;
}

static bool job_ended(const struct dir_job *j)
{
    return job_succeeded(j) || strcmp(j->phase, "aborted") == 0 || strcmp(j->phase, "failed") == 0;
}

/* Waits for job id to end; a progress bar on a terminal. Exit status. */
static int wait_job(struct directory *dir, uint64_t id)
{
    bool tty = isatty(STDOUT_FILENO);
    int64_t start = time_mono_ms();
    uint64_t start_bytes = UINT64_MAX;
    char last_phase[DIR_PHASE_MAX + 1] = "";
    for (;;) {
        struct dir_job j;
        enum dir_status ds = dir_job_get(dir, id, &j);
        if (ds == DIR_NOTFOUND)
            return cli_fail("job %llu is gone", (unsigned long long)id);
        if (ds == DIR_OK) {
            if (start_bytes == UINT64_MAX)
                start_bytes = j.bytes_done;
            double secs = (double)(time_mono_ms() - start) / 1000.0;
            double rate = secs > 0.5 ? (double)(j.msgs_done) / secs : 0;
            if (tty) {
                cli_progress_bar(&j, rate, job_succeeded(&j));
            } else if (strcmp(last_phase, j.phase) != 0) {
                printf("job %llu: %s (%llu/%llu messages)\n", (unsigned long long)id, j.phase,
                       (unsigned long long)j.msgs_done, (unsigned long long)j.msgs_total);
                fflush(stdout);
            }
            str_copy(last_phase, j.phase, sizeof(last_phase));
            if (job_ended(&j)) {
                if (tty)
                    putchar('\n');
                if (job_succeeded(&j)) {
                    printf("moved %s from %s to %s (epoch %llu)\n", j.user, j.source, j.dest,
                           (unsigned long long)j.epoch + 1);
                    return 0;
                }
                return cli_fail("move of %s %s: %s", j.user, j.phase,
                                j.last_error[0] ? j.last_error : "no reason recorded");
            }
        }
        usleep(200 * 1000);
    }
}

static int parse_id(const char *s, uint64_t *id)
{
    if (parse_u64(s, UINT64_MAX, id) < 0 || *id == 0)
        return cli_usage("'%s' is not a job id", s);
    return 0;
}

/* Creates a move job for addr to dest. 0 with *id_r, or an exit status. */
static int create_move(struct directory *dir, const char *addr, const char *dest, uint32_t options,
                       uint64_t *id_r)
{
    struct dir_user u;
    enum dir_status ds = dir_user_get(dir, addr, &u);
    if (ds == DIR_NOTFOUND)
        return cli_fail("no such user %s", addr);
    if (ds != DIR_OK)
        return dir_fail(ds, "move");
    struct dir_store st;
    if (dir_store_get(dir, dest, &st) != DIR_OK)
        return cli_fail("unknown store '%s' (see 'tern store list')", dest);
    if (strcmp(u.home, dest) == 0)
        return cli_fail("%s already lives on %s", addr, dest);
    struct dir_job j;
    memset(&j, 0, sizeof(j));
    j.kind = DIR_JOB_MOVE;
    str_copy(j.user, u.address, sizeof(j.user));
    str_copy(j.source, u.home, sizeof(j.source));
    str_copy(j.dest, dest, sizeof(j.dest));
    str_copy(j.phase, "queued", sizeof(j.phase));
    j.epoch = u.epoch;
    j.options = options;
    ds = dir_job_create(dir, &j);
    if (ds == DIR_INVALID)
        return cli_fail("%s already has a move or import in progress (see 'tern moves')", addr);
    if (ds != DIR_OK)
        return dir_fail(ds, "move");
    *id_r = j.id;
    return 0;
}

static int cmd_move(struct cli *c, int argc, char **argv)
{
    if (argc < 1)
        return cli_usage("move needs ADDRESS --to STORE, or show|abort|complete|wait ID");
    const char *sub = argv[0];
    if (strcmp(sub, "show") == 0 || strcmp(sub, "abort") == 0 || strcmp(sub, "complete") == 0 ||
        strcmp(sub, "wait") == 0) {
        int r = cli_reject_leftover(argc - 1, argv + 1, 1);
        if (r != 0)
            return r;
        uint64_t id;
        if ((r = parse_id(argv[1], &id)) != 0)
            return r;
        struct directory *dir = open_dir(c);
        if (dir == NULL)
            return 1;
        int rc = 0;
        for (int attempt = 0; attempt < 10; attempt++) {
            struct dir_job j;
            enum dir_status ds = dir_job_get(dir, id, &j);
            if (ds == DIR_NOTFOUND) {
                rc = cli_fail("no job %llu", (unsigned long long)id);
                break;
            }
            if (ds != DIR_OK) {
                rc = dir_fail(ds, sub);
                break;
            }
            if (strcmp(sub, "show") == 0) {
                print_job(&j);
                break;
            }
            if (strcmp(sub, "wait") == 0) {
                rc = wait_job(dir, id);
                break;
            }
            if (strcmp(sub, "abort") == 0) {
                if (strcmp(j.phase, "aborting") == 0 || strcmp(j.phase, "aborted") == 0) {
                    printf("job %llu is already %s\n", (unsigned long long)id, j.phase);
                    break;
                }
                if (!move_phase_abortable(j.phase)) {
                    rc = cli_fail("job %llu is in phase %s: past the switch, it cannot be aborted",
                                  (unsigned long long)id, j.phase);
                    break;
                }
                str_copy(j.phase, "aborting", sizeof(j.phase));
            } else {
                if (job_ended(&j)) {
                    rc = cli_fail("job %llu has ended (%s)", (unsigned long long)id, j.phase);
                    break;
                }
                j.options |= DIR_JOB_OPT_COMPLETE;
            }
            ds = dir_job_update(dir, &j);
            if (ds == DIR_CONFLICT)
                continue; /* the mover saved progress meanwhile: read again */
            if (ds != DIR_OK)
                rc = dir_fail(ds, sub);
            else
                printf("job %llu: %s requested\n", (unsigned long long)id, sub);
            break;
        }
        dir_close(&dir);
        return rc;
    }
    bool bad = false;
    const char *to = cli_take_opt(&argc, argv, "--to", &bad);
    bool wait = cli_take_flag(&argc, argv, "--wait");
    bool suspend = cli_take_flag(&argc, argv, "--suspend-when-ready");
    if (bad)
        return cli_usage("--to needs a store");
    int r = cli_reject_leftover(argc, argv, 1);
    if (r != 0)
        return r;
    if (to == NULL)
        return cli_usage("move needs --to STORE");
    char addr[MAIL_ADDR_MAX + 1];
    if (normalize_addr(argv[0], addr) != 0)
        return 1;
    struct directory *dir = open_dir(c);
    if (dir == NULL)
        return 1;
    uint64_t id;
    r = create_move(dir, addr, to, suspend ? DIR_JOB_OPT_SUSPEND : 0, &id);
    if (r == 0) {
        printf("move job %llu: %s to %s\n", (unsigned long long)id, addr, to);
        fflush(stdout);
        if (wait)
            r = wait_job(dir, id);
    }
    dir_close(&dir);
    return r;
}

static int cmd_moves(struct cli *c, int argc, char **argv)
{
    int r = cli_reject_leftover(argc, argv, 0);
    if (r != 0)
        return r;
    struct directory *dir = open_dir(c);
    if (dir == NULL)
        return 1;
    struct dir_job *jobs;
    size_t n;
    enum dir_status ds = dir_job_list(dir, &jobs, &n);
    dir_close(&dir);
    if (ds != DIR_OK)
        return dir_fail(ds, "moves");
    if (n == 0) {
        printf("no jobs\n");
        free(jobs);
        return 0;
    }
    printf("%-5s %-6s %-28s %-6s %-6s %-10s %-16s %s\n", "ID", "KIND", "USER", "FROM", "TO",
           "PHASE", "PROGRESS", "NOTE");
    for (size_t i = 0; i < n; i++) {
        const struct dir_job *j = &jobs[i];
        char prog[32];
        snprintf(prog, sizeof(prog), "%llu/%llu", (unsigned long long)j->msgs_done,
                 (unsigned long long)j->msgs_total);
        printf("%-5llu %-6s %-28s %-6s %-6s %-10s %-16s %s\n", (unsigned long long)j->id,
               dir_job_kind_str(j->kind), j->user, j->source, j->dest, j->phase, prog,
               j->last_error);
    }
    free(jobs);
    return 0;
}

/* Moves every user homed on a store to another, N at a time. */
static int cmd_drain(struct cli *c, int argc, char **argv)
{
    bool bad = false;
    const char *to = cli_take_opt(&argc, argv, "--to", &bad);
    const char *par = cli_take_opt(&argc, argv, "--parallel", &bad);
    if (bad)
        return cli_usage("option needs a value");
    int r = cli_reject_leftover(argc, argv, 1);
    if (r != 0)
        return r;
    uint64_t parallel = 4;
    if (to == NULL)
        return cli_usage("drain needs --to STORE");
    if (par != NULL && (parse_u64(par, 256, &parallel) < 0 || parallel == 0))
        return cli_usage("--parallel needs 1..256");
    const char *from = argv[0];
    if (strcmp(from, to) == 0)
        return cli_usage("cannot drain a store into itself");
    struct directory *dir = open_dir(c);
    if (dir == NULL)
        return 1;
    struct dir_store st;
    if (dir_store_get(dir, from, &st) != DIR_OK || dir_store_get(dir, to, &st) != DIR_OK) {
        dir_close(&dir);
        return cli_fail("unknown store (see 'tern store list')");
    }
    uint64_t *live = xcalloc(parallel, sizeof(*live));
    unsigned moved = 0, failed = 0;
    int rc = 0;
    for (;;) {
        /* Reap ended jobs. */
        size_t n_live = 0;
        for (uint64_t i = 0; i < parallel; i++) {
            if (live[i] == 0)
                continue;
            struct dir_job j;
            if (dir_job_get(dir, live[i], &j) == DIR_OK && job_ended(&j)) {
                if (job_succeeded(&j))
                    moved++;
                else {
                    failed++;
                    fprintf(stderr, "tern: drain: %s %s: %s\n", j.user, j.phase, j.last_error);
                }
                live[i] = 0;
            } else {
                n_live++;
            }
        }
        struct dir_user *users;
        size_t nu;
        if (dir_user_list(dir, &users, &nu) != DIR_OK) {
            usleep(500 * 1000);
            continue;
        }
        size_t left = 0;
        for (size_t k = 0; k < nu; k++) {
            if (strcmp(users[k].home, from) != 0)
                continue;
            left++;
            if (n_live >= parallel)
                continue;
            uint64_t id;
            struct dir_job probe;
            (void)probe;
            if (create_move(dir, users[k].address, to, 0, &id) == 0) {
                for (uint64_t i = 0; i < parallel; i++)
                    if (live[i] == 0) {
                        live[i] = id;
                        break;
                    }
                n_live++;
                printf("drain: job %llu moves %s\n", (unsigned long long)id, users[k].address);
                fflush(stdout);
            }
        }
        free(users);
        if (n_live == 0 && (left == 0 || failed > 0)) {
            if (left > 0)
                rc = cli_fail("drain of %s stopped: %u mailbox(es) could not be moved", from,
                              failed);
            break;
        }
        usleep(200 * 1000);
    }
    printf("drain: %u mailbox(es) moved from %s to %s\n", moved, from, to);
    free(live);
    dir_close(&dir);
    return rc;
}

/* ---- queue ------------------------------------------------------------ */

struct queue_print {
    const char *only; /* one id, or NULL */
    bool found;
};

static void fmt_ms(int64_t ms, char *out, size_t outlen)
{
    if (ms <= 0)
        str_copy(out, "now", outlen);
    else
        time_format_utc(ms / 1000, out, outlen);
}

static int print_queued(void *ctx, const struct queue_msg *m, const char *quarantined)
{
    struct queue_print *qp = ctx;
    if (qp->only != NULL && strcmp(qp->only, m->id) != 0)
        return 0;
    qp->found = true;
    char arrival[32], expires[32];
    time_format_utc(m->arrival / 1000, arrival, sizeof(arrival));
    time_format_utc(m->expires / 1000, expires, sizeof(expires));
    printf("%s  %s  <%s>  %llu octets%s%s\n", m->id, arrival, m->sender,
           (unsigned long long)m->size, m->is_dsn ? "  (DSN)" : "",
           quarantined != NULL ? "  QUARANTINED" : "");
    if (quarantined != NULL)
        printf("    reason: %s\n", quarantined);
    if (qp->only != NULL)
        printf("    expires: %s\n", expires);
    for (size_t i = 0; i < m->n_rcpts; i++) {
        const struct queue_rcpt *r = &m->rcpts[i];
        char next[32];
        fmt_ms(r->next_try, next, sizeof(next));
        printf("    %-36s %-9s%s attempts %u", r->addr,
               r->parked && r->state == QUEUE_PENDING ? "parked" : queue_rcpt_state_str(r->state),
               r->kind == QUEUE_RCPT_ALTERNATE ? " (alternate)" : "", r->attempts);
        if (r->state == QUEUE_PENDING)
            printf("  next %s", next);
        if (strcmp(r->orig, r->addr) != 0)
            printf("  for <%s>", r->orig);
        printf("\n");
        if (r->last_reply[0] != '\0')
            printf("        last: %s\n", r->last_reply);
    }
    return 0;
}

static int cmd_queue(struct cli *c, int argc, char **argv)
{
    const char *sub = argc > 0 ? argv[0] : "list";
    if (argc > 0)
        argc--, argv++;
    int want = strcmp(sub, "show") == 0 ? 1 : 0;
    if (strcmp(sub, "flush") == 0 && argc == 1)
        want = 1;
    if (strcmp(sub, "list") != 0 && strcmp(sub, "show") != 0 && strcmp(sub, "flush") != 0)
        return cli_usage("unknown queue command '%s'", sub);
    int r = cli_reject_leftover(argc, argv, want);
    if (r != 0)
        return r;
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s/queue", c->cfg.data_dir);
    const char *error;
    struct queue *q = queue_open(dir, &error);
    if (q == NULL)
        return cli_fail("cannot open the queue in %s: %s", dir, error);
    int rc = 0;
    if (strcmp(sub, "flush") == 0) {
        long n = queue_flush(q, want ? argv[0] : NULL);
        if (n < 0)
            rc = cli_fail("flush failed");
        else
            printf("%ld recipient(s) due now\n", n);
    } else {
        struct queue_print qp = {.only = want ? argv[0] : NULL};
        if (queue_list(q, print_queued, &qp) < 0)
            rc = cli_fail("cannot read the queue");
        else if (want && !qp.found)
            rc = cli_fail("no message %s in the queue", argv[0]);
        else if (!qp.found)
            printf("queue is empty\n");
    }
    queue_close(&q);
    return rc;
}

int cli_main(int argc, char **argv)
{
    struct cli c;
    memset(&c, 0, sizeof(c));
    log_init("cli");
    /* The CLI speaks in its own words; the log only for trouble. Roles and
     * the supervisor reset the level in their own log_init(). */
    log_set_level(LOG_WARN);
    /* Global options anywhere on the line. */
    int ac = argc - 1;
    char **av = xcalloc((size_t)argc + 1, sizeof(char *));
    memcpy(av, argv + 1, (size_t)ac * sizeof(char *));
    bool bad = false;
    const char *data = cli_take_opt(&ac, av, "--data", &bad);
    const char *cfgpath = cli_take_opt(&ac, av, "--config", &bad);
    const char *smtp = cli_take_opt(&ac, av, "--smtp", &bad);
    const char *imap = cli_take_opt(&ac, av, "--imap", &bad);
    int rc;
    if (bad) {
        rc = cli_usage("--data, --config, --smtp and --imap need a value");
        goto out;
    }
    if (data == NULL)
        data = getenv("TERN_DATA");
    if (data == NULL || data[0] == '\0')
        data = "./tern-data";
    if (strlen(data) >= CONFIG_PATH_MAX - 64) {
        rc = cli_fail("data directory path too long");
        goto out;
    }
    if (cfgpath == NULL)
        cfgpath = getenv("TERN_CONFIG");
    config_defaults(&c.cfg, data);
    char deflt[PATH_MAX];
    snprintf(deflt, sizeof(deflt), "%s/tern.conf", data);
    if ((cfgpath == NULL || cfgpath[0] == '\0') && access(deflt, R_OK) == 0)
        cfgpath = deflt;
    if (cfgpath != NULL && cfgpath[0] != '\0') {
        char err[600];
        if (config_load(&c.cfg, cfgpath, err, sizeof(err)) < 0) {
            rc = cli_fail("config: %s", err);
            goto out;
        }
        c.config_path = cfgpath;
    }
    if (smtp != NULL) {
        char host[128];
        int port;
        if (strlen(smtp) >= sizeof(c.cfg.smtp.listen) ||
            parse_hostport(smtp, host, sizeof(host), &port) < 0) {
            rc = cli_usage("--smtp needs HOST:PORT");
            goto out;
        }
        str_copy(c.cfg.smtp.listen, smtp, sizeof(c.cfg.smtp.listen));
    }
    if (imap != NULL) {
        char host[128];
        int port;
        if (strlen(imap) >= sizeof(c.cfg.imap.listen) ||
            parse_hostport(imap, host, sizeof(host), &port) < 0) {
            rc = cli_usage("--imap needs HOST:PORT");
            goto out;
        }
        str_copy(c.cfg.imap.listen, imap, sizeof(c.cfg.imap.listen));
    }
    if (ac < 1) {
        fputs(help_text, stderr);
        rc = 2;
        goto out;
    }
    const char *cmd = av[0];
    int sac = ac - 1;
    char **sav = av + 1;
    if (strcmp(cmd, "serve") == 0)
        rc = cmd_serve(&c, sac, sav);
    else if (strcmp(cmd, "role") == 0)
        rc = cmd_role(&c, sac, sav);
    else if (strcmp(cmd, "domain") == 0)
        rc = cmd_domain(&c, sac, sav);
    else if (strcmp(cmd, "user") == 0)
        rc = cmd_user(&c, sac, sav);
    else if (strcmp(cmd, "alias") == 0)
        rc = cmd_alias(&c, sac, sav);
    else if (strcmp(cmd, "store") == 0)
        rc = cmd_store(&c, sac, sav);
    else if (strcmp(cmd, "mailbox") == 0)
        rc = cmd_mailbox(&c, sac, sav);
    else if (strcmp(cmd, "queue") == 0)
        rc = cmd_queue(&c, sac, sav);
    else if (strcmp(cmd, "move") == 0)
        rc = cmd_move(&c, sac, sav);
    else if (strcmp(cmd, "moves") == 0)
        rc = cmd_moves(&c, sac, sav);
    else if (strcmp(cmd, "import") == 0)
        rc = cli_import(&c.cfg, sac, sav);
    else if (strcmp(cmd, "drain") == 0)
        rc = cmd_drain(&c, sac, sav);
    else if (strcmp(cmd, "demo") == 0)
        rc = cli_demo(sac, sav);
    else if (strcmp(cmd, "doctor") == 0) {
        bool repair = cli_take_flag(&sac, sav, "--repair");
        rc = cli_reject_leftover(sac, sav, 0);
        if (rc == 0) {
            int n = doctor_run(&c.cfg, repair, stdout);
            rc = n == 0 ? 0 : 1;
        }
    } else if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("tern %s\n", TERN_VERSION);
        rc = 0;
    } else if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        fputs(help_text, stdout);
        rc = 0;
    } else {
        rc = cli_usage("unknown command '%s'", cmd);
    }
out:
    free(av);
    return rc;
}
