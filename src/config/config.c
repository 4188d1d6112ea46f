/* config — see config.h and docs/config.md. */
#include "config/config.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "util/util.h"

void config_defaults(struct config *cfg, const char *data_dir)
{
    memset(cfg, 0, sizeof(*cfg));
    str_copy(cfg->data_dir, data_dir, sizeof(cfg->data_dir));
    char db[PATH_MAX];
    snprintf(db, sizeof(db), "%s/directory.db", data_dir);
    str_copy(cfg->directory, db, sizeof(cfg->directory));
    str_copy(cfg->roles, "all", sizeof(cfg->roles));
    cfg->restart_backoff_max = 10000;
    str_copy(cfg->stores[0].name, "s1", sizeof(cfg->stores[0].name));
    str_copy(cfg->stores[0].lmtp, "127.0.0.1:2401", sizeof(cfg->stores[0].lmtp));
    str_copy(cfg->stores[0].sync, "127.0.0.1:2411", sizeof(cfg->stores[0].sync));
    str_copy(cfg->stores[1].name, "s2", sizeof(cfg->stores[1].name));
    str_copy(cfg->stores[1].lmtp, "127.0.0.1:2402", sizeof(cfg->stores[1].lmtp));
    str_copy(cfg->stores[1].sync, "127.0.0.1:2412", sizeof(cfg->stores[1].sync));
    cfg->n_stores = 2;
    cfg->lmtp.max_message_size = 25 * 1024 * 1024;
    cfg->lmtp.max_recipients = 1000;
    cfg->lmtp.max_sessions = 200;
    cfg->lmtp.session_deadline = 3600;
    cfg->lmtp.idle_timeout = 300;
    cfg->lmtp.min_data_rate = 1024;
    str_copy(cfg->smtp.listen, "127.0.0.1:2525", sizeof(cfg->smtp.listen));
    str_copy(cfg->imap.listen, "127.0.0.1:1143", sizeof(cfg->imap.listen));
    cfg->imap.max_line = 65536;
    cfg->imap.max_literal = 64 * 1024 * 1024;
    cfg->imap.max_nesting = 16;
    cfg->imap.max_sessions = 500;
    cfg->imap.max_sessions_per_user = 20;
    cfg->imap.idle_timeout = 1800;
    cfg->imap.auth_fail_delay_ms = 1000;
    cfg->imap.auth_fail_max = 3;
    cfg->imap.idle_check_ms = 250;
    cfg->imap.state_check_ms = 1000;
    cfg->imap.plaintext_login = true;
    cfg->smtp.max_message_size = 25 * 1024 * 1024;
    cfg->smtp.max_recipients = 1000;
    cfg->smtp.max_sessions = 200;
    cfg->smtp.session_deadline = 600;
    cfg->smtp.idle_timeout = 300;
    cfg->smtp.min_data_rate = 1024;
    cfg->queue.lifetime = 5 * 86400;
    cfg->queue.retry_min = 300;
    cfg->queue.retry_max = 4000;
    cfg->queue.park_min_ms = 50;
    cfg->queue.park_max_ms = 2000;
    cfg->queue.workers = 4;
    cfg->queue.cache_ttl = 60;
    cfg->queue.lmtp_timeout = 60;
    cfg->mover.lease_ms = 5000;
    cfg->mover.retention = 7 * 86400;
    cfg->mover.cutover_budget_ms = 2000;
    cfg->mover.parallel = 4;
    cfg->mover.catchup_delta = 100;
    if (gethostname(cfg->hostname, sizeof(cfg->hostname)) < 0 || cfg->hostname[0] == '\0')
        str_copy(cfg->hostname, "localhost", sizeof(cfg->hostname));
    cfg->hostname[sizeof(cfg->hostname) - 1] = '\0';
}

const struct config_store *config_store(const struct config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->n_stores; i++)
        if (strcmp(cfg->stores[i].name, name) == 0)
            return &cfg->stores[i];
    return NULL;
}

struct parse_state {
    struct config *cfg;
    unsigned line;
    char *err;
    size_t errlen;
    enum { SEC_TOP, SEC_STORE, SEC_LMTP, SEC_SMTP, SEC_QUEUE, SEC_MOVER, SEC_IMAP } section;
    struct config_store *store; /* SEC_STORE */
    bool stores_replaced;
};

static int perr(struct parse_state *ps, const char *fmt, ...) TERN_PRINTF(2, 3);
static int perr(struct parse_state *ps, const char *fmt, ...)
{
    int n = snprintf(ps->err, ps->errlen, "line %u: ", ps->line);
    va_list ap;
    va_start(ap, fmt);
    if (n >= 0 && (size_t)n < ps->errlen)
        vsnprintf(ps->err + n, ps->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
        s[--n] = '\0';
    return s;
}

static int set_uint(struct parse_state *ps, const char *key, const char *val, uint64_t min,
                    uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    if (parse_u64(val, max, &v) < 0 || v < min)
        return perr(ps, "%s must be a whole number from %llu to %llu", key, (unsigned long long)min,
                    (unsigned long long)max);
    *out = v;
    return 0;
}

static int set_unsigned(struct parse_state *ps, const char *key, const char *val, uint64_t min,
                        uint64_t max, unsigned *out)
{
    uint64_t v = 0;
    if (set_uint(ps, key, val, min, max, &v) < 0)
        return -1;
    *out = (unsigned)v;
    return 0;
}

static int set_path(struct parse_state *ps, const char *key, const char *val, char *out,
                    size_t outlen)
{
    if (val[0] == '\0' || strlen(val) >= outlen)
        return perr(ps, "%s must be a file path of 1 to %zu octets", key, outlen - 1);
    str_copy(out, val, outlen);
    return 0;
}

static int set_bool(struct parse_state *ps, const char *key, const char *val, bool *out)
{
    if (strcmp(val, "yes") == 0)
        *out = true;
    else if (strcmp(val, "no") == 0)
        *out = false;
    else
        return perr(ps, "%s must be yes or no (got '%s')", key, val);
    return 0;
}

static int check_endpoint(struct parse_state *ps, const char *key, const char *val)
{
    char host[CONFIG_ENDPOINT_MAX + 1];
    int port;
    struct in6_addr a;
    if (strlen(val) > CONFIG_ENDPOINT_MAX || parse_hostport(val, host, sizeof(host), &port) < 0 ||
        (inet_pton(AF_INET, host, &a) != 1 && inet_pton(AF_INET6, host, &a) != 1))
        return perr(ps, "%s must be HOST:PORT with a numeric IPv4 or [IPv6] host (got '%s')", key,
                    val);
    return 0;
}

static int parse_section(struct parse_state *ps, char *line)
{
    size_t n = strlen(line);
    if (line[n - 1] != ']')
        return perr(ps, "section header must end with ']'");
    line[n - 1] = '\0';
    char *name = trim(line + 1);
    char *arg = strpbrk(name, " \t");
    if (arg != NULL) {
        *arg++ = '\0';
        arg = trim(arg);
    }
    if (strcmp(name, "lmtp") == 0 && arg == NULL) {
        ps->section = SEC_LMTP;
        return 0;
    }
    if (strcmp(name, "smtp") == 0 && arg == NULL) {
        ps->section = SEC_SMTP;
        return 0;
    }
    if (strcmp(name, "queue") == 0 && arg == NULL) {
        ps->section = SEC_QUEUE;
        return 0;
    }
    if (strcmp(name, "imap") == 0 && arg == NULL) {
        ps->section = SEC_IMAP;
        return 0;
    }
    if (strcmp(name, "mover") == 0 && arg == NULL) {
        ps->section = SEC_MOVER;
        return 0;
    }
    if (strcmp(name, "store") == 0) {
        if (arg == NULL || !mail_store_name_valid(arg))
            return perr(ps, "[store NAME] needs a name of 1-32 characters a-z 0-9 _ -");
        if (!ps->stores_replaced) {
            /* The file's stores replace the defaults, not add to them. */
            ps->cfg->n_stores = 0;
            ps->stores_replaced = true;
        }
        if (config_store(ps->cfg, arg) != NULL)
            return perr(ps, "store '%s' is defined twice", arg);
        if (ps->cfg->n_stores == CONFIG_STORES_MAX)
            return perr(ps, "too many stores (at most %d)", CONFIG_STORES_MAX);
        ps->store = &ps->cfg->stores[ps->cfg->n_stores++];
        memset(ps->store, 0, sizeof(*ps->store));
        str_copy(ps->store->name, arg, sizeof(ps->store->name));
        ps->section = SEC_STORE;
        return 0;
    }
    return perr(ps, "unknown section [%s%s%s]", name, arg ? " " : "", arg ? arg : "");
}

static int parse_setting(struct parse_state *ps, const char *key, const char *val)
{
    struct config *cfg = ps->cfg;
    switch (ps->section) {
    case SEC_TOP:
        if (strcmp(key, "directory") == 0) {
            if (val[0] == '\0' || strlen(val) >= sizeof(cfg->directory))
                return perr(ps, "directory must be a path");
            str_copy(cfg->directory, val, sizeof(cfg->directory));
            return 0;
        }
        if (strcmp(key, "roles") == 0) {
            if (val[0] == '\0' || strlen(val) >= sizeof(cfg->roles))
                return perr(ps, "roles must be 'all' or a list like store:s1,store:s2");
            str_copy(cfg->roles, val, sizeof(cfg->roles));
            return 0;
        }
        if (strcmp(key, "hostname") == 0) {
            const char *e;
            if (mail_domain_normalize(val, cfg->hostname, &e) < 0)
                return perr(ps, "hostname: %s", e);
            return 0;
        }
        if (strcmp(key, "restart_backoff_max") == 0)
            return set_unsigned(ps, key, val, 100, 3600000, &cfg->restart_backoff_max);
        break;
    case SEC_STORE:
        if (strcmp(key, "lmtp") == 0) {
            if (check_endpoint(ps, key, val) < 0)
                return -1;
            str_copy(ps->store->lmtp, val, sizeof(ps->store->lmtp));
            return 0;
        }
        if (strcmp(key, "sync") == 0) {
            if (check_endpoint(ps, key, val) < 0)
                return -1;
            str_copy(ps->store->sync, val, sizeof(ps->store->sync));
            return 0;
        }
        break;
    case SEC_LMTP:
        if (strcmp(key, "max_message_size") == 0)
            return set_uint(ps, key, val, 1024, (uint64_t)1 << 31, &cfg->lmtp.max_message_size);
        if (strcmp(key, "max_recipients") == 0)
            return set_unsigned(ps, key, val, 1, 100000, &cfg->lmtp.max_recipients);
        if (strcmp(key, "max_sessions") == 0)
            return set_unsigned(ps, key, val, 1, 100000, &cfg->lmtp.max_sessions);
        if (strcmp(key, "session_deadline") == 0)
            return set_unsigned(ps, key, val, 1, 86400, &cfg->lmtp.session_deadline);
        if (strcmp(key, "idle_timeout") == 0)
            return set_unsigned(ps, key, val, 1, 86400, &cfg->lmtp.idle_timeout);
        if (strcmp(key, "min_data_rate") == 0)
            return set_unsigned(ps, key, val, 0, 1u << 30, &cfg->lmtp.min_data_rate);
        break;
    case SEC_SMTP:
        if (strcmp(key, "listen") == 0) {
            if (check_endpoint(ps, key, val) < 0)
                return -1;
            str_copy(cfg->smtp.listen, val, sizeof(cfg->smtp.listen));
            return 0;
        }
        if (strcmp(key, "max_message_size") == 0)
            return set_uint(ps, key, val, 1024, (uint64_t)1 << 31, &cfg->smtp.max_message_size);
        if (strcmp(key, "max_recipients") == 0)
            return set_unsigned(ps, key, val, 1, 100000, &cfg->smtp.max_recipients);
        if (strcmp(key, "max_sessions") == 0)
            return set_unsigned(ps, key, val, 1, 100000, &cfg->smtp.max_sessions);
        if (strcmp(key, "session_deadline") == 0)
            return set_unsigned(ps, key, val, 1, 86400, &cfg->smtp.session_deadline);
        if (strcmp(key, "idle_timeout") == 0)
            return set_unsigned(ps, key, val, 1, 86400, &cfg->smtp.idle_timeout);
        if (strcmp(key, "min_data_rate") == 0)
            return set_unsigned(ps, key, val, 0, 1u << 30, &cfg->smtp.min_data_rate);
        break;
    case SEC_QUEUE:
        if (strcmp(key, "lifetime") == 0)
            return set_unsigned(ps, key, val, 1, 365 * 86400, &cfg->queue.lifetime);
        if (strcmp(key, "retry_min") == 0)
            return set_unsigned(ps, key, val, 1, 86400, &cfg->queue.retry_min);
        if (strcmp(key, "retry_max") == 0)
            return set_unsigned(ps, key, val, 1, 7 * 86400, &cfg->queue.retry_max);
        if (strcmp(key, "park_min_ms") == 0)
            return set_unsigned(ps, key, val, 1, 60000, &cfg->queue.park_min_ms);
        if (strcmp(key, "park_max_ms") == 0)
            return set_unsigned(ps, key, val, 1, 600000, &cfg->queue.park_max_ms);
        if (strcmp(key, "workers") == 0)
            return set_unsigned(ps, key, val, 1, 256, &cfg->queue.workers);
        if (strcmp(key, "cache_ttl") == 0)
            return set_unsigned(ps, key, val, 0, 86400, &cfg->queue.cache_ttl);
        if (strcmp(key, "lmtp_timeout") == 0)
            return set_unsigned(ps, key, val, 1, 3600, &cfg->queue.lmtp_timeout);
        break;
    case SEC_MOVER:
        if (strcmp(key, "lease_ms") == 0)
            return set_unsigned(ps, key, val, 500, 600000, &cfg->mover.lease_ms);
        if (strcmp(key, "retention") == 0)
            return set_unsigned(ps, key, val, 0, 365 * 86400, &cfg->mover.retention);
        if (strcmp(key, "cutover_budget_ms") == 0)
            return set_unsigned(ps, key, val, 10, 600000, &cfg->mover.cutover_budget_ms);
        if (strcmp(key, "parallel") == 0)
            return set_unsigned(ps, key, val, 1, 256, &cfg->mover.parallel);
        if (strcmp(key, "catchup_delta") == 0)
            return set_unsigned(ps, key, val, 0, 1000000, &cfg->mover.catchup_delta);
        break;
    case SEC_IMAP:
        if (strcmp(key, "listen") == 0) {
            if (check_endpoint(ps, key, val) < 0)
                return -1;
            str_copy(cfg->imap.listen, val, sizeof(cfg->imap.listen));
            return 0;
        }
        if (strcmp(key, "max_line") == 0)
            return set_unsigned(ps, key, val, 1024, 16u << 20, &cfg->imap.max_line);
        if (strcmp(key, "max_literal") == 0)
            return set_uint(ps, key, val, 1024, (uint64_t)1 << 31, &cfg->imap.max_literal);
        if (strcmp(key, "max_nesting") == 0)
            return set_unsigned(ps, key, val, 1, 256, &cfg->imap.max_nesting);
        if (strcmp(key, "max_sessions") == 0)
            return set_unsigned(ps, key, val, 1, 100000, &cfg->imap.max_sessions);
        if (strcmp(key, "max_sessions_per_user") == 0)
            return set_unsigned(ps, key, val, 1, 10000, &cfg->imap.max_sessions_per_user);
        if (strcmp(key, "idle_timeout") == 0)
            return set_unsigned(ps, key, val, 1800, 86400, &cfg->imap.idle_timeout);
        if (strcmp(key, "auth_fail_delay_ms") == 0)
            return set_unsigned(ps, key, val, 0, 60000, &cfg->imap.auth_fail_delay_ms);
        if (strcmp(key, "auth_fail_max") == 0)
            return set_unsigned(ps, key, val, 1, 1000, &cfg->imap.auth_fail_max);
        if (strcmp(key, "idle_check_ms") == 0)
            return set_unsigned(ps, key, val, 10, 60000, &cfg->imap.idle_check_ms);
        if (strcmp(key, "state_check_ms") == 0)
            return set_unsigned(ps, key, val, 10, 600000, &cfg->imap.state_check_ms);
        if (strcmp(key, "tls_cert") == 0)
            return set_path(ps, key, val, cfg->imap.tls_cert, sizeof(cfg->imap.tls_cert));
        if (strcmp(key, "tls_key") == 0)
            return set_path(ps, key, val, cfg->imap.tls_key, sizeof(cfg->imap.tls_key));
        if (strcmp(key, "tls_listen") == 0) {
            if (check_endpoint(ps, key, val) < 0)
                return -1;
            str_copy(cfg->imap.tls_listen, val, sizeof(cfg->imap.tls_listen));
            return 0;
        }
        if (strcmp(key, "plaintext_login") == 0)
            return set_bool(ps, key, val, &cfg->imap.plaintext_login);
        break;
    }
    static const char *names[] = {"the top level", "[store]", "[lmtp]", "[smtp]",
                                  "[queue]",       "[mover]", "[imap]"};
    return perr(ps, "unknown key '%s' in %s", key, names[ps->section]);
}

int config_parse(struct config *cfg, const char *text, size_t len, char *err, size_t errlen)
{
    struct parse_state ps = {.cfg = cfg, .err = err, .errlen = errlen, .section = SEC_TOP};
    if (len > CONFIG_FILE_MAX)
        return perr(&ps, "config file larger than %d octets", CONFIG_FILE_MAX);
    const char *p = text, *end = text + len;
    while (p < end) {
        ps.line++;
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t ll = nl != NULL ? (size_t)(nl - p) : (size_t)(end - p);
        if (ll >= CONFIG_LINE_MAX)
            return perr(&ps, "line longer than %d octets", CONFIG_LINE_MAX - 1);
        char buf[CONFIG_LINE_MAX];
        memcpy(buf, p, ll);
        buf[ll] = '\0';
        p += ll + (nl != NULL);
        if (memchr(buf, '\0', ll) != NULL)
            return perr(&ps, "NUL byte in line");
        char *line = trim(buf);
        if (*line == '\0' || *line == '#')
            continue;
        if (*line == '[') {
            if (parse_section(&ps, line) < 0)
                return -1;
            continue;
        }
        char *eq = strchr(line, '=');
        if (eq == NULL)
            return perr(&ps, "expected 'key = value' or '[section]'");
        *eq = '\0';
        char *key = trim(line), *val = trim(eq + 1);
        if (*key == '\0' || strspn(key, "abcdefghijklmnopqrstuvwxyz_") != strlen(key))
            return perr(&ps, "malformed key '%s'", key);
        if (parse_setting(&ps, key, val) < 0)
            return -1;
    }
    for (size_t i = 0; i < cfg->n_stores; i++)
        if (cfg->stores[i].lmtp[0] == '\0') {
            ps.line = 0;
            snprintf(err, errlen, "store '%s' has no lmtp address", cfg->stores[i].name);
            return -1;
        }
    if (cfg->queue.retry_max < cfg->queue.retry_min ||
        cfg->queue.park_max_ms < cfg->queue.park_min_ms) {
        snprintf(err, errlen,
                 "[queue] retry_max/park_max_ms must not be below retry_min/park_min_ms");
        return -1;
    }
    if ((cfg->imap.tls_cert[0] == '\0') != (cfg->imap.tls_key[0] == '\0')) {
        snprintf(err, errlen, "[imap] tls_cert and tls_key go together: set both or neither");
        return -1;
    }
    if (cfg->imap.tls_listen[0] != '\0' && cfg->imap.tls_cert[0] == '\0') {
        snprintf(err, errlen, "[imap] tls_listen needs tls_cert and tls_key");
        return -1;
    }
    if (!cfg->imap.plaintext_login && cfg->imap.tls_cert[0] == '\0') {
        snprintf(err, errlen,
                 "[imap] plaintext_login = no needs tls_cert and tls_key (else nobody can log in)");
        return -1;
    }
    if (cfg->imap.tls_listen[0] != '\0' && strcmp(cfg->imap.tls_listen, cfg->imap.listen) == 0) {
        snprintf(err, errlen, "[imap] tls_listen must differ from listen");
        return -1;
    }
    if (cfg->n_stores == 0) {
        snprintf(err, errlen, "no stores configured");
        return -1;
    }
    return 0;
}

int config_load(struct config *cfg, const char *path, char *err, size_t errlen)
{
    struct buf b;
    const char *e;
    buf_init(&b, CONFIG_FILE_MAX);
    if (file_read_all(path, CONFIG_FILE_MAX, &b, &e) < 0) {
        snprintf(err, errlen, "%s: %s", path, e);
        buf_free(&b);
        return -1;
    }
    char inner[512];
    int r = config_parse(cfg, b.data != NULL ? b.data : "", b.len, inner, sizeof(inner));
    if (r < 0)
        snprintf(err, errlen, "%s: %s", path, inner);
    buf_free(&b);
    return r;
}
