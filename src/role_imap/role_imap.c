/*
 * role_imap — the listener, the sessions' threads, login and routing. See
 * role_imap.h; the protocol is imapd's.
 */
#include "role_imap/role_imap.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "directory/directory.h"
#include "imapd/imapd.h"
#include "mime/mime.h"
#include "sync/sync.h"
#include "util/util.h"

struct user_count {
    char user[MAIL_ADDR_MAX + 1];
    unsigned n;
};

/* Recent failed logins of one client address. */
struct addr_fail {
    char addr[NI_MAXHOST];
    unsigned n;
    int64_t last_ms;
};
#define ADDR_FAIL_MAX         4096           /* addresses remembered */
#define ADDR_FAIL_WINDOW_MS   (15 * 60000LL) /* forgotten after this long without a failure */
#define IMAP_TLS_HANDSHAKE_MS 30000          /* a client's TLS handshake must end within this */

struct role_imap {
    const struct config *cfg;
    struct imapd_env env;
    pthread_mutex_t lock; /* dir, counts, fails */
    struct directory *dir;
    struct user_count *counts;
    size_t n_counts;
    struct addr_fail *fails;
    size_t n_fails;
    atomic_uint sessions;
};

static volatile sig_atomic_t stop_flag;
static atomic_int shutdown_flag;

static void on_stop(int sig)
{
    (void)sig;
    stop_flag = 1;
}

/* A hash of a password nobody has, so an unknown user costs the same
 * verification time as a wrong password. */
static char dummy_hash[DIR_HASH_MAX + 1];

static bool count_take(struct role_imap *ri, const char *user)
{
    bool ok = true;
    pthread_mutex_lock(&ri->lock);
    size_t i;
    for (i = 0; i < ri->n_counts; i++)
        if (strcmp(ri->counts[i].user, user) == 0)
            break;
    if (i == ri->n_counts) {
        ri->counts = xrealloc(ri->counts, (ri->n_counts + 1) * sizeof(*ri->counts));
        memset(&ri->counts[i], 0, sizeof(ri->counts[i]));
        str_copy(ri->counts[i].user, user, sizeof(ri->counts[i].user));
        ri->n_counts++;
    }
    if (ri->counts[i].n >= ri->cfg->imap.max_sessions_per_user)
        ok = false;
    else
        ri->counts[i].n++;
    pthread_mutex_unlock(&ri->lock);
    return ok;
}

static void imap_logout(void *ctx, const char *user)
{
    struct role_imap *ri = ctx;
    pthread_mutex_lock(&ri->lock);
    for (size_t i = 0; i < ri->n_counts; i++) {
        if (strcmp(ri->counts[i].user, user) == 0) {
            if (ri->counts[i].n > 0)
                ri->counts[i].n--;
            if (ri->counts[i].n == 0) {
                ri->counts[i] = ri->counts[--ri->n_counts];
            }
            break;
        }
    }
    pthread_mutex_unlock(&ri->lock);
}

/* imapd_env.auth_failed: counts a failure of the peer's address (the
 * peer without its ":PORT") and returns the recent count. */
static unsigned imap_auth_failed(void *ctx, const char *peer)
{
    struct role_imap *ri = ctx;
    char addr[NI_MAXHOST];
    str_copy(addr, peer, sizeof(addr));
    char *colon = strrchr(addr, ':');
    if (colon != NULL)
        *colon = '\0';
    int64_t now = time_mono_ms();
    pthread_mutex_lock(&ri->lock);
    size_t i, oldest = 0;
    for (i = 0; i < ri->n_fails; i++) {
        if (strcmp(ri->fails[i].addr, addr) == 0)
            break;
        if (ri->fails[i].last_ms < ri->fails[oldest].last_ms)
            oldest = i;
    }
    if (i == ri->n_fails) {
        if (ri->n_fails < ADDR_FAIL_MAX) {
            ri->fails = xrealloc(ri->fails, (ri->n_fails + 1) * sizeof(*ri->fails));
            ri->n_fails++;
        } else {
            i = oldest; /* the table is bounded: forget the quietest address */
        }
        memset(&ri->fails[i], 0, sizeof(ri->fails[i]));
        str_copy(ri->fails[i].addr, addr, sizeof(ri->fails[i].addr));
    }
    struct addr_fail *f = &ri->fails[i];
    if (now - f->last_ms > ADDR_FAIL_WINDOW_MS)
        f->n = 0;
    if (f->n < UINT32_MAX)
        f->n++;
    f->last_ms = now;
    unsigned n = f->n;
    pthread_mutex_unlock(&ri->lock);
    return n;
}

static enum dir_status user_get(struct role_imap *ri, const char *addr, struct dir_user *u)
{
    pthread_mutex_lock(&ri->lock);
    enum dir_status st = dir_user_get(ri->dir, addr, u);
    pthread_mutex_unlock(&ri->lock);
    return st;
}

static enum imapd_auth imap_login(void *ctx, const char *user, const char *password, char *user_r,
                                  struct sync **sync_r, const char **why_r)
{
    struct role_imap *ri = ctx;
    char addr[MAIL_ADDR_MAX + 1];
    const char *e;
    struct dir_user u;
    *why_r = "Authentication failed";
    if (mail_addr_normalize(user, strlen(user), addr, &e) < 0) {
        dir_password_verify(password, dummy_hash);
        return IMAPD_AUTH_FAILED;
    }
    enum dir_status st = user_get(ri, addr, &u);
    if (st == DIR_NOTFOUND) {
        dir_password_verify(password, dummy_hash);
        return IMAPD_AUTH_FAILED;
    }
    if (st != DIR_OK) {
        *why_r = "Directory unavailable; try again later";
        return IMAPD_AUTH_UNAVAILABLE;
    }
    if (!dir_password_verify(password, u.password_hash))
        return IMAPD_AUTH_FAILED;

    for (int attempt = 0; attempt < 2; attempt++) {
        if (u.state == DIR_USER_FINALIZING) {
            *why_r = "Mailbox is being moved; try again in a moment";
            return IMAPD_AUTH_UNAVAILABLE;
        }
        const struct config_store *cs = config_store(ri->cfg, u.home);
        if (cs == NULL || cs->sync[0] == '\0') {
            log_error("imap", "%s: home store '%s' has no sync endpoint in the configuration", addr,
                      u.home);
            *why_r = "Mailbox unavailable";
            return IMAPD_AUTH_UNAVAILABLE;
        }
        char err[256];
        struct sync *sy = sync_tcp_connect(cs->sync, 5000, err, sizeof(err));
        if (sy == NULL) {
            log_warn("imap", "%s: store %s unreachable: %s", addr, u.home, err);
            *why_r = "Mailbox server unavailable; try again later";
            return IMAPD_AUTH_UNAVAILABLE;
        }
        struct store_mailbox mb;
        const char *w = NULL;
        int r = sy->ops->mailbox_get(sy, addr, &mb, &w);
        if (r == SYNC_NO && strcmp(w, "notfound") == 0 && u.epoch == 1) {
            /* Never delivered to yet: create it as a first delivery would
             * (only at epoch 1, so never where a move left nothing). */
            int cr = sy->ops->mailbox_create(sy, addr, STORE_MBOX_ACTIVE, 1, 0, &w);
            if (cr == 0 || (cr == SYNC_NO && strcmp(w, "exists") == 0))
                r = sy->ops->mailbox_get(sy, addr, &mb, &w);
        }
        if (r == 0 && mb.state == STORE_MBOX_ACTIVE) {
            if (!count_take(ri, addr)) {
                sync_close(&sy);
                *why_r = "Too many sessions for this user";
                return IMAPD_AUTH_LIMIT;
            }
            str_copy(user_r, addr, MAIL_ADDR_MAX + 1);
            *sync_r = sy;
            return IMAPD_AUTH_OK;
        }
        sync_close(&sy);
        if (r == 0 && mb.state == STORE_MBOX_MOVED && attempt == 0) {
            /* Our directory read was older than the switch: read again. */
            if (user_get(ri, addr, &u) != DIR_OK)
                break;
            continue;
        }
        if (r == 0 && (mb.state == STORE_MBOX_FENCED || mb.state == STORE_MBOX_STAGED ||
                       mb.state == STORE_MBOX_MOVED)) {
            *why_r = "Mailbox is being moved; try again in a moment";
            return IMAPD_AUTH_UNAVAILABLE;
        }
        log_warn("imap", "%s: no usable mailbox on home store %s (%s)", addr, u.home,
                 r == 0 ? store_mbox_state_str(mb.state) : (w != NULL ? w : "?"));
        break;
    }
    *why_r = "Mailbox unavailable";
    return IMAPD_AUTH_UNAVAILABLE;
}

static int imap_sub_set(void *ctx, const char *user, const char *name, bool on)
{
    struct role_imap *ri = ctx;
    pthread_mutex_lock(&ri->lock);
    enum dir_status st = dir_sub_set(ri->dir, user, name, on);
    pthread_mutex_unlock(&ri->lock);
    return st == DIR_OK || (!on && st == DIR_NOTFOUND) ? 0 : -1;
}

static int imap_sub_list(void *ctx, const char *user, void (*cb)(void *cbctx, const char *name),
                         void *cbctx)
{
    struct role_imap *ri = ctx;
    pthread_mutex_lock(&ri->lock);
    enum dir_status st = dir_sub_list(ri->dir, user, cb, cbctx);
    pthread_mutex_unlock(&ri->lock);
    return st == DIR_OK ? 0 : -1;
}

struct conn {
    struct role_imap *ri;
    int fd;
    bool tls; /* from the implicit-TLS listener */
    char peer[NI_MAXHOST + NI_MAXSERV + 2];
};

static void *session_thread(void *arg)
{
    struct conn *c = arg;
    struct role_imap *ri = c->ri;
    if (c->tls)
        imapd_session_run_tls(c->fd, c->peer, &ri->env);
    else
        imapd_session_run(c->fd, c->peer, &ri->env);
    atomic_fetch_sub(&ri->sessions, 1);
    free(c);
    return NULL;
}

static int listen_on(const char *endpoint)
{
    char host[128];
    int port;
    if (parse_hostport(endpoint, host, sizeof(host), &port) < 0)
        fatal("imap: bad listen address '%s'", endpoint);
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICHOST | AI_PASSIVE};
    struct addrinfo *ai;
    char ps[16];
    snprintf(ps, sizeof(ps), "%d", port);
    if (getaddrinfo(host, ps, &hints, &ai) != 0)
        fatal("imap: cannot resolve '%s'", endpoint);
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 128) < 0)
        fatal("imap: cannot listen on %s: %s", endpoint, strerror(errno));
    freeaddrinfo(ai);
    return fd;
}

int role_imap_main(const struct config *cfg)
{
    log_init("imap");
    struct role_imap ri = {.cfg = cfg};
    pthread_mutex_init(&ri.lock, NULL);
    const char *error;
    ri.dir = dir_open_sqlite(cfg->directory, &error);
    if (ri.dir == NULL)
        fatal("cannot open directory %s: %s", cfg->directory, error);
    if (dir_password_hash("tern-no-such-user-password", dummy_hash, &error) < 0)
        fatal("password hashing: %s", error);

    imap_limits_default(&ri.env.limits);
    ri.env.limits.line_max = cfg->imap.max_line;
    ri.env.limits.literal_max = (size_t)cfg->imap.max_literal;
    ri.env.limits.command_max = (size_t)cfg->imap.max_literal + 1024 * 1024;
    ri.env.limits.depth_max = cfg->imap.max_nesting;
    ri.env.hostname = cfg->hostname[0] != '\0' ? cfg->hostname : "localhost";
    ri.env.idle_timeout_ms = cfg->imap.idle_timeout * 1000u;
    ri.env.idle_check_ms = cfg->imap.idle_check_ms;
    ri.env.state_check_ms = cfg->imap.state_check_ms;
    ri.env.auth_fail_delay_ms = cfg->imap.auth_fail_delay_ms;
    ri.env.auth_fail_max = cfg->imap.auth_fail_max;
    ri.env.login = imap_login;
    ri.env.logout = imap_logout;
    ri.env.auth_failed = imap_auth_failed;
    ri.env.sub_set = imap_sub_set;
    ri.env.sub_list = imap_sub_list;
    ri.env.ctx = &ri;
    ri.env.shutdown = &shutdown_flag;
    ri.env.tls_handshake_ms = IMAP_TLS_HANDSHAKE_MS;
    ri.env.login_needs_tls = !cfg->imap.plaintext_login;
    if (cfg->imap.tls_cert[0] != '\0') {
        char err[512];
        ri.env.tls = tls_server_new(cfg->imap.tls_cert, cfg->imap.tls_key, err, sizeof(err));
        if (ri.env.tls == NULL)
            fatal("imap: [imap] TLS: %s", err);
    }

    struct sigaction sa = {.sa_handler = on_stop};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* GMime's initialisation is not thread-safe: done here, before any
     * session thread parses a message. */
    mime_init();
    int lfds[2] = {listen_on(cfg->imap.listen), -1};
    log_info("imap", "IMAP listening on %s (idle timeout %u s, %u sessions, %u per user%s%s)",
             cfg->imap.listen, cfg->imap.idle_timeout, cfg->imap.max_sessions,
             cfg->imap.max_sessions_per_user, ri.env.tls != NULL ? ", STARTTLS" : "",
             cfg->imap.plaintext_login ? "" : ", no plaintext login");
    if (cfg->imap.tls_listen[0] != '\0') {
        lfds[1] = listen_on(cfg->imap.tls_listen);
        log_info("imap", "IMAP over TLS listening on %s (certificate %s)", cfg->imap.tls_listen,
                 cfg->imap.tls_cert);
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    while (!stop_flag) {
        struct pollfd pfd[2] = {{.fd = lfds[0], .events = POLLIN},
                                {.fd = lfds[1], .events = POLLIN}};
        int pr = poll(pfd, lfds[1] >= 0 ? 2 : 1, 200);
        if (pr <= 0)
            continue;
        bool tls = lfds[1] >= 0 && pfd[1].revents != 0 && pfd[0].revents == 0;
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(lfds[tls ? 1 : 0], (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (atomic_load(&ri.sessions) >= cfg->imap.max_sessions) {
            static const char bye[] = "* BYE Too many connections; try again later\r\n";
            if (!tls) /* a TLS client would take it for a broken handshake */
                (void)!send(fd, bye, sizeof(bye) - 1, MSG_NOSIGNAL);
            close(fd);
            log_warn("imap", "connection refused: %u sessions", cfg->imap.max_sessions);
            continue;
        }
        struct conn *c = xcalloc(1, sizeof(*c));
        c->ri = &ri;
        c->fd = fd;
        c->tls = tls;
        char host[NI_MAXHOST], port[NI_MAXSERV];
        if (getnameinfo((struct sockaddr *)&ss, sl, host, sizeof(host), port, sizeof(port),
                        NI_NUMERICHOST | NI_NUMERICSERV) == 0)
            snprintf(c->peer, sizeof(c->peer), "%s:%s", host, port);
        else
            str_copy(c->peer, "?", sizeof(c->peer));
        atomic_fetch_add(&ri.sessions, 1);
        pthread_t th;
        if (pthread_create(&th, &attr, session_thread, c) != 0) {
            atomic_fetch_sub(&ri.sessions, 1);
            close(fd);
            free(c);
        }
    }
    log_info("imap", "stopping");
    close(lfds[0]);
    if (lfds[1] >= 0)
        close(lfds[1]);
    shutdown_flag = 1;
    /* Sessions notice within a poll slice and say BYE. */
    for (int i = 0; i < 50 && atomic_load(&ri.sessions) > 0; i++) {
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 100 * 1000000};
        nanosleep(&ts, NULL);
    }
    struct imapd_stats stt;
    imapd_stats_get(&stt);
    log_info("imap", "%llu sessions, %llu logins, %llu failed logins, %llu commands",
             (unsigned long long)stt.sessions, (unsigned long long)stt.logins,
             (unsigned long long)stt.login_failures, (unsigned long long)stt.commands);
    if (atomic_load(&ri.sessions) > 0)
        _exit(0); /* threads still in flight: do not free what they use */
    pthread_attr_destroy(&attr);
    dir_close(&ri.dir);
    tls_server_free(&ri.env.tls);
    free(ri.counts);
    free(ri.fails);
    return 0;
}
