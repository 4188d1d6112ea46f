/* serve — the supervisor. See serve.h. */
#include "serve/serve.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "directory/directory.h"
#include "util/util.h"

#define BACKOFF_MIN_MS 100
#define HEALTHY_MS     30000
#define STOP_GRACE_MS  10000
#define ROLES_MAX      (CONFIG_STORES_MAX + 8)

struct role_proc {
    char kind[16];
    char arg[MAIL_NAME_MAX + 1];
    char spec[64];
    pid_t pid;
    unsigned failures;
    int64_t started_ms;
    int64_t restart_at_ms; /* 0 = start now */
};

static int add_role(struct role_proc *roles, size_t *n, const char *kind, const char *arg)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp(roles[i].kind, kind) == 0 && strcmp(roles[i].arg, arg) == 0)
            return 0;
    if (*n == ROLES_MAX)
        return -1;
    struct role_proc *r = &roles[(*n)++];
    memset(r, 0, sizeof(*r));
    str_copy(r->kind, kind, sizeof(r->kind));
    str_copy(r->arg, arg, sizeof(r->arg));
    snprintf(r->spec, sizeof(r->spec), "%s%s%s", kind, arg[0] ? ":" : "", arg);
    return 0;
}

/* Parses a role list into roles. 0 or -1 with a message on stderr. */
static int parse_roles(const struct config *cfg, const char *spec, struct role_proc *roles,
                       size_t *n)
{
    char copy[256];
    if (str_copy(copy, spec, sizeof(copy)) >= sizeof(copy)) {
        fprintf(stderr, "tern serve: role list too long\n");
        return -1;
    }
    char *save = NULL;
    for (char *tok = strtok_r(copy, ", ", &save); tok != NULL; tok = strtok_r(NULL, ", ", &save)) {
        char *colon = strchr(tok, ':');
        const char *arg = "";
        if (colon != NULL) {
            *colon = '\0';
            arg = colon + 1;
        }
        if (strcmp(tok, "all") == 0 || (strcmp(tok, "store") == 0 && arg[0] == '\0')) {
            for (size_t i = 0; i < cfg->n_stores; i++)
                add_role(roles, n, "store", cfg->stores[i].name);
            if (strcmp(tok, "all") == 0) {
                add_role(roles, n, "mta", "");
                add_role(roles, n, "mover", "");
                add_role(roles, n, "imap", "");
            }
        } else if ((strcmp(tok, "mta") == 0 || strcmp(tok, "mover") == 0 ||
                    strcmp(tok, "imap") == 0) &&
                   arg[0] == '\0') {
            add_role(roles, n, tok, "");
        } else if (strcmp(tok, "store") == 0) {
            if (config_store(cfg, arg) == NULL) {
                fprintf(stderr, "tern serve: no store named '%s' in the configuration\n", arg);
                return -1;
            }
            add_role(roles, n, "store", arg);
        } else {
            fprintf(
                stderr,
                "tern serve: unknown role '%s' (known: all, mta, mover, imap, store, store:NAME)\n",
                tok);
            return -1;
        }
    }
    if (*n == 0) {
        fprintf(stderr, "tern serve: no roles to run\n");
        return -1;
    }
    return 0;
}

static void start_role(struct role_proc *r, const char *self_exe, const struct config *cfg,
                       const char *config_path, const sigset_t *orig_mask)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        log_error("serve", "fork for %s: %s", r->spec, strerror(errno));
        r->restart_at_ms = time_mono_ms() + cfg->restart_backoff_max;
        return;
    }
    if (pid == 0) {
        /* The role must not outlive its supervisor, even after kill -9. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(1);
        sigprocmask(SIG_SETMASK, orig_mask, NULL);
        const char *argv[14];
        int a = 0;
        argv[a++] = "tern";
        argv[a++] = "--data";
        argv[a++] = cfg->data_dir;
        /* The --smtp override travels with the role's argv. */
        argv[a++] = "--smtp";
        argv[a++] = cfg->smtp.listen;
        argv[a++] = "--imap";
        argv[a++] = cfg->imap.listen;
        if (config_path != NULL) {
            argv[a++] = "--config";
            argv[a++] = config_path;
        }
        argv[a++] = "role";
        argv[a++] = r->kind;
        if (r->arg[0] != '\0')
            argv[a++] = r->arg;
        argv[a] = NULL;
        execv(self_exe, (char *const *)argv);
        fprintf(stderr, "tern serve: exec %s: %s\n", self_exe, strerror(errno));
        _exit(127);
    }
    r->pid = pid;
    r->started_ms = time_mono_ms();
    r->restart_at_ms = 0;
    log_info("serve", "started %s (pid %d)", r->spec, (int)pid);
}

static void reap(const struct config *cfg, struct role_proc *roles, size_t n, bool stopping)
{
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0)
            return;
        for (size_t i = 0; i < n; i++) {
            struct role_proc *r = &roles[i];
            if (r->pid != pid)
                continue;
            r->pid = 0;
            int64_t now = time_mono_ms();
            /* During a stop, exits are expected; otherwise they are news. */
            enum log_level lv = stopping ? LOG_INFO : LOG_WARN;
            if (WIFSIGNALED(status))
                log_msg(lv, "serve", "%s (pid %d) killed by signal %d", r->spec, (int)pid,
                        WTERMSIG(status));
            else
                log_msg(lv, "serve", "%s (pid %d) exited with status %d", r->spec, (int)pid,
                        WEXITSTATUS(status));
            if (stopping)
                break;
            if (now - r->started_ms >= HEALTHY_MS)
                r->failures = 0;
            unsigned shift = r->failures < 7 ? r->failures : 7;
            int64_t delay = (int64_t)BACKOFF_MIN_MS << shift;
            if (delay > cfg->restart_backoff_max)
                delay = cfg->restart_backoff_max;
            r->failures++;
            r->restart_at_ms = now + delay;
            log_info("serve", "restarting %s in %lld ms", r->spec, (long long)delay);
            break;
        }
    }
}

static size_t running(const struct role_proc *roles, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += roles[i].pid != 0;
    return k;
}

static void stop_all(const struct config *cfg, struct role_proc *roles, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (roles[i].pid != 0)
            kill(roles[i].pid, SIGTERM);
    int64_t until = time_mono_ms() + STOP_GRACE_MS;
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    while (running(roles, n) > 0) {
        reap(cfg, roles, n, true);
        if (running(roles, n) == 0)
            break;
        int64_t left = until - time_mono_ms();
        if (left <= 0) {
            for (size_t i = 0; i < n; i++)
                if (roles[i].pid != 0) {
                    log_warn("serve", "%s did not stop in time: SIGKILL", roles[i].spec);
                    kill(roles[i].pid, SIGKILL);
                }
            until = time_mono_ms() + 1000;
            continue;
        }
        struct timespec ts = {.tv_sec = left / 1000, .tv_nsec = (left % 1000) * 1000000};
        sigtimedwait(&chld, NULL, &ts);
    }
}

int serve_main(const struct config *cfg, const char *self_exe, const char *config_path,
               const char *roles_spec)
{
    log_init("serve");
    struct role_proc roles[ROLES_MAX];
    size_t n = 0;
    if (parse_roles(cfg, roles_spec != NULL ? roles_spec : cfg->roles, roles, &n) < 0)
        return 2;
    /* A TLS certificate the imap role cannot load is refused here, once and
     * clearly, rather than by a role that dies and is restarted forever. */
    for (size_t i = 0; i < n && cfg->imap.tls_cert[0] != '\0'; i++) {
        if (strcmp(roles[i].kind, "imap") != 0)
            continue;
        char err[600];
        struct tls_server *ts =
            tls_server_new(cfg->imap.tls_cert, cfg->imap.tls_key, err, sizeof(err));
        if (ts == NULL) {
            fprintf(stderr, "tern serve: [imap] TLS: %s\n", err);
            return 1;
        }
        tls_server_free(&ts);
    }
    if (mkdir_p(cfg->data_dir, 0750) < 0) {
        fprintf(stderr, "tern serve: cannot create %s: %s\n", cfg->data_dir, strerror(errno));
        return 1;
    }
    char lockpath[PATH_MAX];
    snprintf(lockpath, sizeof(lockpath), "%s/serve.lock", cfg->data_dir);
    int lockfd;
    pid_t holder;
    int lr = lockfile_acquire(lockpath, &lockfd, &holder);
    if (lr == 1) {
        fprintf(stderr,
                "tern serve: another tern serve (pid %d) is already running on %s; stop it "
                "first\n",
                (int)holder, cfg->data_dir);
        return 1;
    }
    if (lr < 0) {
        fprintf(stderr, "tern serve: cannot lock %s: %s\n", lockpath, strerror(errno));
        return 1;
    }

    /* Register the configured stores so the CLI and every role see them. */
    const char *error;
    struct directory *dir = dir_open_sqlite(cfg->directory, &error);
    if (dir == NULL) {
        fprintf(stderr, "tern serve: cannot open directory %s: %s\n", cfg->directory, error);
        return 1;
    }
    for (size_t i = 0; i < cfg->n_stores; i++) {
        enum dir_status ds = dir_store_upsert(dir, cfg->stores[i].name, cfg->stores[i].lmtp);
        if (ds != DIR_OK) {
            fprintf(stderr, "tern serve: cannot register store %s: %s\n", cfg->stores[i].name,
                    dir_status_str(ds));
            dir_close(&dir);
            return 1;
        }
    }
    dir_close(&dir);

    sigset_t mask, orig;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    sigprocmask(SIG_BLOCK, &mask, &orig);

    log_info("serve", "data %s, %zu role(s)", cfg->data_dir, n);
    for (;;) {
        int64_t now = time_mono_ms();
        int64_t next = now + 60000;
        for (size_t i = 0; i < n; i++) {
            struct role_proc *r = &roles[i];
            if (r->pid != 0)
                continue;
            if (r->restart_at_ms <= now)
                start_role(r, self_exe, cfg, config_path, &orig);
            else if (r->restart_at_ms < next)
                next = r->restart_at_ms;
        }
        int64_t wait = next - time_mono_ms();
        if (wait < 0)
            wait = 0;
        struct timespec ts = {.tv_sec = wait / 1000, .tv_nsec = (wait % 1000) * 1000000};
        int sig = sigtimedwait(&mask, NULL, &ts);
        if (sig == SIGCHLD) {
            reap(cfg, roles, n, false);
        } else if (sig == SIGTERM || sig == SIGINT) {
            log_info("serve", "signal %d: stopping all roles", sig);
            stop_all(cfg, roles, n);
            log_info("serve", "stopped");
            close(lockfd);
            return 0;
        }
        /* SIGHUP and timeouts: loop (restarts due roles). */
    }
}
