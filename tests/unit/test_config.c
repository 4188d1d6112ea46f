/* Unit tests for config: defaults, every setting, every error class. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "config/config.h"

static int parse(struct config *cfg, const char *text, char *err)
{
    config_defaults(cfg, "/data");
    return config_parse(cfg, text, strlen(text), err, 256);
}

static void test_defaults(void **state)
{
    (void)state;
    struct config cfg;
    config_defaults(&cfg, "/data");
    assert_int_equal(cfg.n_stores, 2);
    assert_string_equal(cfg.stores[0].name, "s1");
    assert_string_equal(cfg.stores[0].lmtp, "127.0.0.1:2401");
    assert_string_equal(cfg.stores[1].lmtp, "127.0.0.1:2402");
    assert_string_equal(cfg.directory, "/data/directory.db");
    assert_int_equal(cfg.lmtp.max_message_size, 25 * 1024 * 1024);
    assert_int_equal(cfg.lmtp.max_recipients, 1000);
    assert_string_equal(cfg.roles, "all");
    assert_string_equal(cfg.smtp.listen, "127.0.0.1:2525");
    assert_int_equal(cfg.smtp.max_recipients, 1000);
    assert_int_equal(cfg.queue.lifetime, 5 * 86400);
    assert_int_equal(cfg.queue.cache_ttl, 60);
    assert_string_equal(cfg.imap.tls_cert, "");
    assert_string_equal(cfg.imap.tls_listen, "");
    assert_true(cfg.imap.plaintext_login);
}

static void test_settings(void **state)
{
    (void)state;
    struct config cfg;
    char err[256];
    assert_int_equal(parse(&cfg,
                           "  # comment\n\ndirectory = /x/dir.db\nroles = store:b\n"
                           "restart_backoff_max = 250\n"
                           "[store a]\nlmtp = 127.0.0.1:1\n[store b]\n  lmtp =  [::1]:2  \n"
                           "[lmtp]\nmax_message_size = 4096\nmax_recipients = 7\n"
                           "max_sessions = 3\nsession_deadline = 9\nidle_timeout = 8\n"
                           "min_data_rate = 0\n"
                           "[smtp]\nlisten = 127.0.0.1:2626\nmax_recipients = 5\n"
                           "[queue]\nlifetime = 3\nretry_min = 1\nretry_max = 2\nworkers = 2\n"
                           "cache_ttl = 0\npark_min_ms = 10\npark_max_ms = 20\n",
                           err),
                     0);
    assert_int_equal(cfg.n_stores, 2); /* the file's stores replace s1, s2 */
    assert_non_null(config_store(&cfg, "a"));
    assert_null(config_store(&cfg, "s1"));
    assert_string_equal(config_store(&cfg, "b")->lmtp, "[::1]:2");
    assert_string_equal(cfg.directory, "/x/dir.db");
    assert_string_equal(cfg.roles, "store:b");
    assert_int_equal(cfg.restart_backoff_max, 250);
    assert_int_equal(cfg.lmtp.max_message_size, 4096);
    assert_int_equal(cfg.lmtp.max_recipients, 7);
    assert_int_equal(cfg.lmtp.max_sessions, 3);
    assert_int_equal(cfg.lmtp.session_deadline, 9);
    assert_int_equal(cfg.lmtp.idle_timeout, 8);
    assert_int_equal(cfg.lmtp.min_data_rate, 0);
    assert_string_equal(cfg.smtp.listen, "127.0.0.1:2626");
    assert_int_equal(cfg.smtp.max_recipients, 5);
    assert_int_equal(cfg.queue.lifetime, 3);
    assert_int_equal(cfg.queue.retry_min, 1);
    assert_int_equal(cfg.queue.retry_max, 2);
    assert_int_equal(cfg.queue.workers, 2);
    assert_int_equal(cfg.queue.cache_ttl, 0);
    assert_int_equal(cfg.queue.park_min_ms, 10);
    assert_int_equal(cfg.queue.park_max_ms, 20);
    assert_int_equal(parse(&cfg,
                           "[imap]\ntls_cert = /etc/tern/cert.pem\ntls_key = /etc/tern/key.pem\n"
                           "tls_listen = [::1]:993\nplaintext_login = no\n",
                           err),
                     0);
    assert_string_equal(cfg.imap.tls_cert, "/etc/tern/cert.pem");
    assert_string_equal(cfg.imap.tls_key, "/etc/tern/key.pem");
    assert_string_equal(cfg.imap.tls_listen, "[::1]:993");
    assert_false(cfg.imap.plaintext_login);
}

static const struct {
    const char *name, *text, *error;
} bad[] = {
    {"unknown top key", "colour = blue\n", "line 1: unknown key 'colour' in the top level"},
    {"unknown lmtp key", "[lmtp]\nfoo = 1\n", "line 2: unknown key 'foo' in [lmtp]"},
    {"not a number", "[lmtp]\nmax_recipients = ten\n", "line 2: max_recipients must be"},
    {"below minimum", "[lmtp]\nmax_recipients = 0\n", "line 2: max_recipients must be"},
    {"above maximum", "[lmtp]\nmax_message_size = 99999999999\n", "max_message_size must be"},
    {"negative", "[lmtp]\nidle_timeout = -1\n", "idle_timeout must be"},
    {"unknown section", "[mailq]\n", "line 1: unknown section [mailq]"},
    {"unknown smtp key", "[smtp]\nport = 25\n", "line 2: unknown key 'port' in [smtp]"},
    {"bad smtp listen", "[smtp]\nlisten = *:25\n", "line 2: listen must be HOST:PORT"},
    {"workers zero", "[queue]\nworkers = 0\n", "line 2: workers must be"},
    {"retry order", "[queue]\nretry_min = 100\nretry_max = 10\n", "retry_max/park_max_ms"},
    {"bad hostname", "hostname = -bad-\n", "line 1: hostname:"},
    {"store without name", "[store]\n", "line 1: [store NAME] needs a name"},
    {"bad store name", "[store S1]\n", "[store NAME] needs a name"},
    {"unterminated section", "[lmtp\n", "line 1: section header must end with ']'"},
    {"duplicate store", "[store a]\nlmtp=1.1.1.1:1\n[store a]\n", "line 3: store 'a' is defined"},
    {"bad endpoint", "[store a]\nlmtp = localhost\n", "line 2: lmtp must be HOST:PORT"},
    {"port zero", "[store a]\nlmtp = 127.0.0.1:0\n", "lmtp must be HOST:PORT"},
    {"missing lmtp", "[store a]\n", "store 'a' has no lmtp address"},
    {"no equals", "words only\n", "line 1: expected 'key = value'"},
    {"bad key", "Key = 1\n", "line 1: malformed key"},
    {"empty key", " = 1\n", "line 1: malformed key"},
    {"lmtp outside store", "lmtp = 127.0.0.1:1\n", "unknown key 'lmtp' in the top level"},
    {"tls cert alone", "[imap]\ntls_cert = /c.pem\n", "tls_cert and tls_key go together"},
    {"tls key alone", "[imap]\ntls_key = /k.pem\n", "tls_cert and tls_key go together"},
    {"tls empty path", "[imap]\ntls_cert =\n", "line 2: tls_cert must be a file path"},
    {"tls listen alone", "[imap]\ntls_listen = 127.0.0.1:993\n", "tls_listen needs tls_cert"},
    {"tls listen bad", "[imap]\ntls_listen = imaps\n", "line 2: tls_listen must be HOST:PORT"},
    {"tls listen same",
     "[imap]\nlisten = 127.0.0.1:1\ntls_listen = 127.0.0.1:1\ntls_cert = c\ntls_key = k\n",
     "tls_listen must differ from listen"},
    {"plaintext_login without tls", "[imap]\nplaintext_login = no\n",
     "plaintext_login = no needs tls_cert"},
    {"plaintext_login", "[imap]\nplaintext_login = true\n",
     "line 2: plaintext_login must be yes or no (got 'true')"},
};

static void test_errors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct config cfg;
        char err[256] = "";
        int r = parse(&cfg, bad[i].text, err);
        if (r != -1 || strstr(err, bad[i].error) == NULL)
            fail_msg("case '%s': got %d '%s', want '%s'", bad[i].name, r, err, bad[i].error);
    }
}

static void test_limits(void **state)
{
    (void)state;
    struct config cfg;
    char err[256];
    char line[CONFIG_LINE_MAX + 16];
    memset(line, 'a', sizeof(line));
    line[sizeof(line) - 1] = '\0';
    assert_int_equal(parse(&cfg, line, err), -1);
    assert_non_null(strstr(err, "line 1: line longer than"));
    const char nul[] = "roles = a\0b\n";
    config_defaults(&cfg, "/d");
    assert_int_equal(config_parse(&cfg, nul, sizeof(nul) - 1, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "NUL"));
    /* 65 stores is one too many. */
    static char many[65 * 48];
    size_t off = 0;
    for (int i = 0; i < 65; i++)
        off += (size_t)snprintf(many + off, sizeof(many) - off, "[store x%d]\nlmtp = 1.1.1.1:%d\n",
                                i, i + 1);
    assert_int_equal(parse(&cfg, many, err), -1);
    assert_non_null(strstr(err, "too many stores"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_settings),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
