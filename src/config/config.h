/*
 * config — tern's settings: built-in defaults (the embedded one-machine
 * setup) overridden by an optional config file. The file format is described
 * in docs/config.md; in short:
 *
 *     # comment
 *     key = value                 top-level keys
 *     [store s1]                  a section with a name
 *     lmtp = 127.0.0.1:2401
 *     [lmtp]                      a section without one
 *     max_message_size = 26214400
 *
 * Rules: one setting per line; '#' starts a comment only at the start of a
 * line (after blanks); keys are [a-z_]+; values run to the end of the line
 * with surrounding blanks removed. Unknown sections or keys, duplicate
 * stores, malformed or out-of-range values are errors with the line number:
 * a typo never silently falls back to a default. If the file names any
 * [store] sections, they replace the default stores s1 and s2.
 *
 * Limits: file at most CONFIG_FILE_MAX octets, lines at most
 * CONFIG_LINE_MAX, at most CONFIG_STORES_MAX stores.
 */
#ifndef TERN_CONFIG_H
#define TERN_CONFIG_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mail/mail.h"

#define CONFIG_FILE_MAX     (1024 * 1024)
#define CONFIG_LINE_MAX     1024
#define CONFIG_STORES_MAX   64
#define CONFIG_ENDPOINT_MAX 127
#define CONFIG_PATH_MAX     1024 /* data dir and directory path; leaves room below PATH_MAX */

struct config_store {
    char name[MAIL_NAME_MAX + 1];
    char lmtp[CONFIG_ENDPOINT_MAX + 1]; /* "127.0.0.1:2401" */
    char sync[CONFIG_ENDPOINT_MAX + 1]; /* TSYNC/1 for moves; "" = none */
};

struct config_lmtp {
    uint64_t max_message_size; /* octets; default 25 MiB */
    unsigned max_recipients;   /* per transaction; default 1000 */
    unsigned max_sessions;     /* per store; default 200 */
    unsigned session_deadline; /* seconds for a whole session; default 3600 */
    unsigned idle_timeout;     /* seconds between commands; default 300 */
    unsigned min_data_rate;    /* octets/s in DATA after 10 s; 0 = off */
};

struct config_smtp {
    char listen[CONFIG_ENDPOINT_MAX + 1]; /* default 127.0.0.1:2525 */
    uint64_t max_message_size;            /* default 25 MiB */
    unsigned max_recipients;              /* default 1000 */
    unsigned max_sessions;                /* default 200 */
    unsigned session_deadline;            /* seconds; default 600 */
    unsigned idle_timeout;                /* seconds; default 300 */
    unsigned min_data_rate;               /* octets/s in DATA after 10 s; default 1024 */
};

struct config_queue {
    unsigned lifetime;     /* seconds a message may wait; default 5 days */
    unsigned retry_min;    /* seconds before the first retry; default 300 */
    unsigned retry_max;    /* seconds between retries at most; default 4000 */
    unsigned park_min_ms;  /* "move in progress": first retry; default 50 */
    unsigned park_max_ms;  /* ... doubling up to; default 2000 */
    unsigned workers;      /* delivery threads; default 4 */
    unsigned cache_ttl;    /* seconds; routing cache; default 60 (0 = off) */
    unsigned lmtp_timeout; /* seconds per LMTP operation; default 60 */
};

struct config_mover {
    unsigned lease_ms;          /* a job's lease; default 5000 */
    unsigned retention;         /* seconds the source copy is kept; default 7 days */
    unsigned cutover_budget_ms; /* longest final sync while fenced; default 2000 */
    unsigned parallel;          /* jobs run at once by one mover; default 4 */
    unsigned catchup_delta;     /* changes at most in a pass before fencing; default 100 */
};

struct config_imap {
    char listen[CONFIG_ENDPOINT_MAX + 1];     /* default 127.0.0.1:1143 */
    unsigned max_line;                        /* octets per command line; default 65536 */
    uint64_t max_literal;                     /* octets per literal (APPEND); default 64 MiB */
    unsigned max_nesting;                     /* parenthesized lists; default 16 */
    unsigned max_sessions;                    /* in all; default 500 */
    unsigned max_sessions_per_user;           /* default 20 */
    unsigned idle_timeout;                    /* seconds; at least 1800 (RFC 3501) */
    unsigned auth_fail_delay_ms;              /* a failed login is answered this late; 1000 */
    unsigned auth_fail_max;                   /* failed logins before BYE; default 3 */
    unsigned idle_check_ms;                   /* IDLE looks for news this often; default 250 */
    unsigned state_check_ms;                  /* sessions check for a move this often; 1000 */
    char tls_cert[CONFIG_PATH_MAX];           /* PEM certificate chain; "" = no TLS */
    char tls_key[CONFIG_PATH_MAX];            /* PEM private key; set with tls_cert or not at all */
    char tls_listen[CONFIG_ENDPOINT_MAX + 1]; /* implicit TLS (as port 993); "" = off */
    bool plaintext_login;                     /* LOGIN/AUTHENTICATE before TLS; default yes */
};
struct config {
    char data_dir[CONFIG_PATH_MAX];     /* set by the caller (--data); not in the file */
    char directory[CONFIG_PATH_MAX];    /* SQLite directory path; default DATA/directory.db */
    char roles[256];                    /* "all" or "store:s1,store:s2" */
    unsigned restart_backoff_max;       /* ms; the supervisor's longest restart delay */
    char hostname[MAIL_DOMAIN_MAX + 1]; /* in greetings, Received:, DSNs */
    struct config_store stores[CONFIG_STORES_MAX];
    size_t n_stores;
    struct config_lmtp lmtp;
    struct config_smtp smtp;
    struct config_queue queue;
    struct config_mover mover;
    struct config_imap imap;
};

/* Fills cfg with the defaults for data_dir (stores s1, s2 on 2401/2402). */
void config_defaults(struct config *cfg, const char *data_dir);
/* Applies the settings in text (len octets) on top of cfg. 0, or -1 with a
 * message ("line 7: unknown key 'foo' in [lmtp]") in err. cfg may be
 * partially changed on error; callers exit. */
int config_parse(struct config *cfg, const char *text, size_t len, char *err, size_t errlen);
/* Reads path and calls config_parse. 0 or -1 with err. */
int config_load(struct config *cfg, const char *path, char *err, size_t errlen);
/* The store named name, or NULL. */
const struct config_store *config_store(const struct config *cfg, const char *name);

#endif
