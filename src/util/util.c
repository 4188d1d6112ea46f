/* util — see util.h. */
#include "util/util.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

/* ---- memory ---------------------------------------------------------- */

static TERN_NORETURN void oom(size_t n)
{
    fprintf(stderr, "tern: out of memory allocating %zu bytes\n", n);
    abort();
}

void *xmalloc(size_t n)
{
    void *p = calloc(1, n ? n : 1);
    if (p == NULL)
        oom(n);
    return p;
}

void *xcalloc(size_t nmemb, size_t size)
{
    if (size != 0 && nmemb > SIZE_MAX / size)
        oom(SIZE_MAX);
    return xmalloc(nmemb * size);
}

void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (q == NULL)
        oom(n);
    return q;
}

char *xstrdup(const char *s)
{
    return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    return p;
}

char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        panic("xasprintf: bad format %s", fmt);
    char *p = xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

/* ---- buffer ----------------------------------------------------------- */

void buf_init(struct buf *b, size_t max)
{
    memset(b, 0, sizeof(*b));
    b->max = max;
}

static void buf_reserve(struct buf *b, size_t need)
{
    if (need + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need + 1)
        cap = cap > SIZE_MAX / 2 ? need + 1 : cap * 2;
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
}

int buf_append(struct buf *b, const void *p, size_t n)
{
    if (n > SIZE_MAX - b->len - 1)
        return -1;
    if (b->max != 0 && b->len + n > b->max)
        return -1;
    buf_reserve(b, b->len + n);
    if (n > 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int buf_puts(struct buf *b, const char *s)
{
    return buf_append(b, s, strlen(s));
}

int buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -1;
    if (b->max != 0 && b->len + (size_t)n > b->max)
        return -1;
    buf_reserve(b, b->len + (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void buf_consume(struct buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
    }
    if (b->data != NULL)
        b->data[b->len] = '\0';
}

void buf_reset(struct buf *b)
{
    b->len = 0;
    if (b->data != NULL)
        b->data[0] = '\0';
}

void buf_free(struct buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* ---- logging ---------------------------------------------------------- */

static char log_role[64] = "tern";
static enum log_level log_threshold = LOG_INFO;

static bool log_level_from_env;

void log_set_level(enum log_level level)
{
    if (!log_level_from_env)
        log_threshold = level;
}

void log_init(const char *role)
{
    str_copy(log_role, role, sizeof(log_role));
    const char *lv = getenv("TERN_LOG_LEVEL");
    log_level_from_env = lv != NULL;
    log_threshold = LOG_INFO;
    if (lv != NULL) {
        if (strcmp(lv, "debug") == 0)
            log_threshold = LOG_DEBUG;
        else if (strcmp(lv, "info") == 0)
            log_threshold = LOG_INFO;
        else if (strcmp(lv, "warn") == 0)
            log_threshold = LOG_WARN;
        else if (strcmp(lv, "error") == 0)
            log_threshold = LOG_ERROR;
    }
}

void log_vmsg(enum log_level level, const char *ctx, const char *fmt, va_list ap)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    if (level < log_threshold)
        return;
    char line[2048];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    int n =
        snprintf(line, sizeof(line),
                 "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s[%d] %s %s: ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                 log_role, (int)getpid(), names[level], ctx != NULL ? ctx : "-");
    if (n < 0 || (size_t)n >= sizeof(line))
        n = 0;
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    /* Control characters from outside input never reach the log raw. */
    for (size_t i = (size_t)n; i < len; i++)
        if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f)
            line[i] = '?';
    line[len++] = '\n';
    ssize_t ignored = write(STDERR_FILENO, line, len);
    (void)ignored;
}

void log_msg(enum log_level level, const char *ctx, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, ctx, fmt, ap);
    va_end(ap);
}

void fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(LOG_ERROR, "fatal", fmt, ap);
    va_end(ap);
    exit(1);
}

void panic(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(LOG_ERROR, "panic", fmt, ap);
    va_end(ap);
    abort();
}

/* ---- time ------------------------------------------------------------- */

int64_t time_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t time_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void time_format_utc(int64_t unix_secs, char *out, size_t outlen)
{
    time_t t = (time_t)unix_secs;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, outlen, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* ---- fault injection -------------------------------------------------- */

/* TERN_FAULT is a comma-separated list of up to FAULTS_MAX faults, each
 * KIND:ARG[@ROLE] (util.h). It is parsed again whenever its text changes
 * (unit tests setenv() it); each fault keeps its own call counter. All of it
 * under one mutex: the mta's threads fsync too. */
#define FAULTS_MAX      8
#define FAULT_SPEC_MAX  1024
#define FAULT_PAUSE_MAX 600 /* seconds a pause waits at most for its release */

enum fault_kind { FAULT_FSYNC, FAULT_WRITE, FAULT_CRASH, FAULT_FAIL, FAULT_PAUSE };

struct fault {
    enum fault_kind kind;
    uint64_t n;     /* fsync/write: the Nth counted call fails */
    char name[96];  /* crash/fail/pause: the point's name */
    char role[64];  /* "" = any process; else the log_init() role */
    uint64_t count; /* fsync/write: calls counted while armed */
};

static pthread_mutex_t fault_lock = PTHREAD_MUTEX_INITIALIZER;
static char fault_text[FAULT_SPEC_MAX + 1];
static const char *fault_env; /* getenv()'s pointer: a new setenv() gives a new one */
static bool fault_text_set;
static struct fault faults[FAULTS_MAX];
static size_t n_faults;

static uint64_t fsync_calls;
static uint64_t write_calls;

/* One "KIND:ARG[@ROLE]" into f. NULL, or why it is malformed. */
static const char *fault_parse_one(char *s, struct fault *f)
{
    static const struct {
        const char *name;
        enum fault_kind kind;
    } kinds[] = {{"fsync", FAULT_FSYNC},
                 {"write", FAULT_WRITE},
                 {"crash", FAULT_CRASH},
                 {"fail", FAULT_FAIL},
                 {"pause", FAULT_PAUSE}};
    memset(f, 0, sizeof(*f));
    char *at = strchr(s, '@');
    if (at != NULL) {
        *at = '\0';
        if (at[1] == '\0' || strlen(at + 1) >= sizeof(f->role))
            return "empty or over-long role";
        str_copy(f->role, at + 1, sizeof(f->role));
    }
    char *colon = strchr(s, ':');
    if (colon == NULL)
        return "no ':' between kind and argument";
    *colon = '\0';
    const char *arg = colon + 1;
    size_t k;
    for (k = 0; k < ARRAY_SIZE(kinds); k++)
        if (strcmp(s, kinds[k].name) == 0)
            break;
    if (k == ARRAY_SIZE(kinds))
        return "unknown kind";
    f->kind = kinds[k].kind;
    if (f->kind == FAULT_FSYNC || f->kind == FAULT_WRITE) {
        if (parse_u64(arg, UINT64_MAX, &f->n) < 0 || f->n == 0)
            return "the count must be a number from 1";
    } else if (arg[0] == '\0' || strlen(arg) >= sizeof(f->name)) {
        return "empty or over-long point name";
    } else {
        str_copy(f->name, arg, sizeof(f->name));
    }
    return NULL;
}

/* Makes faults[] match TERN_FAULT. Caller holds fault_lock. */
static void fault_load(void)
{
    const char *env = getenv("TERN_FAULT");
    if (env == NULL || env[0] == '\0') {
        n_faults = 0;
        fault_text_set = false;
        return;
    }
    if (fault_text_set && env == fault_env && strcmp(env, fault_text) == 0)
        return;
    n_faults = 0;
    fault_text_set = true;
    fault_env = env;
    str_copy(fault_text, env, sizeof(fault_text));
    if (strlen(env) > FAULT_SPEC_MAX) {
        log_warn("fault", "TERN_FAULT is over %d octets: ignored", FAULT_SPEC_MAX);
        return;
    }
    char copy[FAULT_SPEC_MAX + 1];
    str_copy(copy, env, sizeof(copy));
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
        char shown[FAULT_SPEC_MAX + 1];
        str_copy(shown, tok, sizeof(shown));
        if (n_faults == FAULTS_MAX) {
            log_warn("fault", "TERN_FAULT: more than %d faults; '%s' and the rest ignored",
                     FAULTS_MAX, shown);
            break;
        }
        const char *why = fault_parse_one(tok, &faults[n_faults]);
        if (why != NULL)
            log_warn("fault", "TERN_FAULT: '%s' ignored: %s", shown, why);
        else
            n_faults++;
    }
}

static bool fault_role_ok(const struct fault *f)
{
    return f->role[0] == '\0' || strcmp(f->role, log_role) == 0;
}

/* TERN_FAULT_ARMED=PATH: every fault but a pause counts and fires only while
 * PATH exists, so a test can arm a store's fault at a chosen moment. */
static bool fault_armed(void)
{
    const char *p = getenv("TERN_FAULT_ARMED");
    return p == NULL || access(p, F_OK) == 0;
}

/* TERN_FAULT_ONCE=PATH: a crash or pause fires only in the first process to
 * create its marker (PATH for the first fault of the list, PATH.K for the
 * Kth after it), so a role restarted with the same environment goes on. */
static bool fault_once(size_t k)
{
    const char *once = getenv("TERN_FAULT_ONCE");
    if (once == NULL)
        return true;
    char path[PATH_MAX];
    if (k == 0)
        str_copy(path, once, sizeof(path));
    else
        snprintf(path, sizeof(path), "%s.%zu", once, k);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return false;
    close(fd);
    return true;
}

/* One call of a counted kind, the process's `calls`th: true if it must
 * fail. Unarmed, "fsync:N" means the process's Nth call; armed (with
 * TERN_FAULT_ARMED), the Nth call made while armed. */
static bool fault_count(enum fault_kind kind, uint64_t calls)
{
    if (getenv("TERN_FAULT") == NULL)
        return false;
    bool fire = false;
    bool gated = getenv("TERN_FAULT_ARMED") != NULL;
    pthread_mutex_lock(&fault_lock);
    fault_load();
    for (size_t i = 0; i < n_faults; i++) {
        struct fault *f = &faults[i];
        if (f->kind != kind || !fault_role_ok(f))
            continue;
        if (!gated)
            fire |= calls == f->n;
        else if (fault_armed() && ++f->count == f->n)
            fire = true;
    }
    pthread_mutex_unlock(&fault_lock);
    return fire;
}

/* Waits at a pause point until the test removes the pause file. */
static void fault_pause(const char *name)
{
    const char *path = getenv("TERN_FAULT_PAUSE");
    if (path == NULL) {
        log_warn("fault", "TERN_FAULT: pause at %s needs TERN_FAULT_PAUSE=PATH; not pausing", name);
        return;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        log_warn("fault", "TERN_FAULT: cannot create %s: %s; not pausing", path, strerror(errno));
        return;
    }
    char pid[32];
    int n = snprintf(pid, sizeof(pid), "%d\n", (int)getpid());
    ssize_t ignored = write(fd, pid, (size_t)n);
    (void)ignored;
    close(fd);
    log_warn("fault", "TERN_FAULT: paused at %s until %s is removed", name, path);
    int64_t end = time_mono_ms() + FAULT_PAUSE_MAX * 1000;
    while (access(path, F_OK) == 0 && time_mono_ms() < end)
        usleep(10 * 1000);
    log_warn("fault", "TERN_FAULT: resumed at %s", name);
}

bool util_fault_point(const char *name)
{
    if (getenv("TERN_FAULT") == NULL)
        return false;
    enum fault_kind what = FAULT_FAIL; /* none */
    pthread_mutex_lock(&fault_lock);
    fault_load();
    for (size_t i = 0; i < n_faults && what == FAULT_FAIL; i++) {
        const struct fault *f = &faults[i];
        if ((f->kind != FAULT_CRASH && f->kind != FAULT_PAUSE) || strcmp(f->name, name) != 0 ||
            !fault_role_ok(f))
            continue;
        if (f->kind == FAULT_CRASH && !fault_armed())
            continue;
        if (fault_once(i))
            what = f->kind;
    }
    pthread_mutex_unlock(&fault_lock);
    if (what == FAULT_CRASH) {
        log_warn("fault", "TERN_FAULT: simulated crash at %s", name);
        _exit(137);
    }
    if (what == FAULT_PAUSE)
        fault_pause(name);
    return false;
}

bool util_fault_active(const char *name)
{
    if (getenv("TERN_FAULT") == NULL)
        return false;
    bool active = false;
    pthread_mutex_lock(&fault_lock);
    fault_load();
    for (size_t i = 0; i < n_faults && !active; i++) {
        const struct fault *f = &faults[i];
        active = f->kind == FAULT_FAIL && strcmp(f->name, name) == 0 && fault_role_ok(f) &&
                 fault_armed();
    }
    pthread_mutex_unlock(&fault_lock);
    return active;
}

bool util_fault_write(void)
{
    write_calls++;
    if (!fault_count(FAULT_WRITE, write_calls))
        return false;
    log_warn("fault", "TERN_FAULT: failing write #%llu", (unsigned long long)write_calls);
    return true;
}

/* ---- files ------------------------------------------------------------ */

int write_full(int fd, const void *p, size_t n)
{
    const char *c = p;
    if (util_fault_write()) {
        errno = EIO;
        return -1;
    }
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

int pread_full(int fd, void *p, size_t n, off_t off)
{
    char *c = p;
    while (n > 0) {
        ssize_t r = pread(fd, c, n, off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (r == 0) {
            errno = EIO;
            return -1;
        }
        c += r;
        n -= (size_t)r;
        off += r;
    }
    return 0;
}

static int do_sync(int fd, const char *why, bool data_only)
{
    ++fsync_calls;
    if (fault_count(FAULT_FSYNC, fsync_calls)) {
        log_warn("fault", "TERN_FAULT: failing fsync #%llu (%s)", (unsigned long long)fsync_calls,
                 why);
        errno = EIO;
        return -1;
    }
    int r;
    do {
        r = data_only ? fdatasync(fd) : fsync(fd);
    } while (r < 0 && errno == EINTR);
    if (r < 0)
        log_error("fsync", "%s failed (%s): %s", data_only ? "fdatasync" : "fsync", why,
                  strerror(errno));
    return r;
}

int util_fsync(int fd, const char *why)
{
    return do_sync(fd, why, false);
}

int util_fdatasync(int fd, const char *why)
{
    return do_sync(fd, why, true);
}

uint64_t util_fsync_count(void)
{
    return fsync_calls;
}

uint64_t util_write_count(void)
{
    return write_calls;
}

int util_fsync_dir(const char *dirpath, const char *why)
{
    int fd = open(dirpath, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int r = util_fsync(fd, why);
    int e = errno;
    close(fd);
    errno = e;
    return r;
}

int mkdir_p(const char *path, unsigned mode)
{
    char tmp[PATH_MAX];
    if (str_copy(tmp, path, sizeof(tmp)) >= sizeof(tmp)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, mode) < 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(tmp, mode) < 0 && errno != EEXIST)
        return -1;
    return 0;
}

int file_read_all(const char *path, size_t max, struct buf *out, const char **error_r)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        *error_r = "cannot open file";
        return -1;
    }
    char chunk[8192];
    size_t total = 0;
    for (;;) {
        ssize_t r = read(fd, chunk, sizeof(chunk));
        if (r < 0) {
            if (errno == EINTR)
                continue;
            *error_r = "read error";
            close(fd);
            return -1;
        }
        if (r == 0)
            break;
        total += (size_t)r;
        if (total > max || buf_append(out, chunk, (size_t)r) < 0) {
            *error_r = "file too large";
            close(fd);
            return -1;
        }
    }
    close(fd);
    return 0;
}

int lockfile_acquire(const char *path, int *fd_r, pid_t *holder_r)
{
    *holder_r = 0;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        if (e == EWOULDBLOCK) {
            char b[32] = {0};
            if (pread(fd, b, sizeof(b) - 1, 0) > 0) {
                uint64_t pid;
                b[strcspn(b, "\n")] = '\0';
                const char *p = b + strspn(b, " ");
                if (parse_u64(p, INT_MAX, &pid) == 0)
                    *holder_r = (pid_t)pid;
            }
            close(fd);
            return 1;
        }
        close(fd);
        errno = e;
        return -1;
    }
    /* One fixed-width write, no truncation first: a reader (the CLI, a
     * test) never sees the file empty between two holders. */
    char b[32];
    int n = snprintf(b, sizeof(b), "%10d\n", (int)getpid());
    if (pwrite(fd, b, (size_t)n, 0) != n || ftruncate(fd, n) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    *fd_r = fd;
    return 0;
}

/* ---- strings ---------------------------------------------------------- */

int parse_u64(const char *s, uint64_t max, uint64_t *out_r)
{
    if (s == NULL || *s == '\0')
        return -1;
    uint64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    if (v > max)
        return -1;
    *out_r = v;
    return 0;
}

int parse_hostport(const char *s, char *host, size_t hostlen, int *port_r)
{
    const char *colon;
    const char *h = s;
    size_t hl;
    if (*s == '[') {
        const char *end = strchr(s, ']');
        if (end == NULL || end[1] != ':')
            return -1;
        h = s + 1;
        hl = (size_t)(end - h);
        colon = end + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL)
            return -1;
        hl = (size_t)(colon - s);
    }
    if (hl == 0 || hl >= hostlen)
        return -1;
    uint64_t port;
    if (parse_u64(colon + 1, 65535, &port) < 0 || port == 0)
        return -1;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port_r = (int)port;
    return 0;
}

void str_lower(char *s)
{
    for (; *s; s++)
        *s = (char)tolower((unsigned char)*s);
}

size_t str_copy(char *dst, const char *src, size_t dstlen)
{
    size_t n = strlen(src);
    if (dstlen > 0) {
        size_t c = n < dstlen - 1 ? n : dstlen - 1;
        memcpy(dst, src, c);
        dst[c] = '\0';
    }
    return n;
}

void hex_encode(const void *in, size_t n, char *out)
{
    static const char hx[] = "0123456789abcdef";
    const uint8_t *b = in;
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hx[b[i] >> 4];
        out[2 * i + 1] = hx[b[i] & 15];
    }
    out[2 * n] = '\0';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int hex_decode(const char *in, void *out, size_t n)
{
    uint8_t *b = out;
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(in[2 * i]);
        if (hi < 0)
            return -1;
        int lo = hexval(in[2 * i + 1]);
        if (lo < 0)
            return -1;
        b[i] = (uint8_t)(hi << 4 | lo);
    }
    return in[2 * n] == '\0' ? 0 : -1;
}

/* ---- hashing ---------------------------------------------------------- */

void sha256_buf(const void *p, size_t n, uint8_t out[SHA256_LEN])
{
    unsigned int len = SHA256_LEN;
    if (EVP_Digest(p, n, out, &len, EVP_sha256(), NULL) != 1)
        panic("EVP_Digest(sha256) failed");
}

struct sha256 {
    EVP_MD_CTX *ctx;
};

struct sha256 *sha256_new(void)
{
    struct sha256 *h = xmalloc(sizeof(*h));
    h->ctx = EVP_MD_CTX_new();
    if (h->ctx == NULL || EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) != 1)
        panic("EVP_DigestInit(sha256) failed");
    return h;
}

void sha256_update(struct sha256 *h, const void *p, size_t n)
{
    if (n > 0 && EVP_DigestUpdate(h->ctx, p, n) != 1)
        panic("EVP_DigestUpdate(sha256) failed");
}

void sha256_final(struct sha256 **hp, uint8_t out[SHA256_LEN])
{
    unsigned int len = SHA256_LEN;
    if (EVP_DigestFinal_ex((*hp)->ctx, out, &len) != 1)
        panic("EVP_DigestFinal(sha256) failed");
    sha256_free(hp);
}

void sha256_free(struct sha256 **hp)
{
    struct sha256 *h = *hp;
    if (h == NULL)
        return;
    EVP_MD_CTX_free(h->ctx);
    xfree(hp);
}

void rand_bytes(void *p, size_t n)
{
    uint8_t *b = p;
    while (n > 0) {
        ssize_t r = getrandom(b, n, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            panic("getrandom: %s", strerror(errno));
        }
        b += r;
        n -= (size_t)r;
    }
}
