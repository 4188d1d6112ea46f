/*
 * smtp — the SMTP/LMTP protocol engine shared by the LMTP server in each
 * store, and later the mta's SMTP server and LMTP client. Pure: no I/O, no
 * sockets, no clocks. It turns bytes from a peer into events and command
 * structs, with hard limits enforced while bytes arrive (before a newline),
 * so a server built on it cannot be made to buffer without bound.
 *
 * Input framing (struct smtp_in):
 *  - COMMAND mode yields one command line at a time (without CRLF).
 *    Limits and errors, each reported as an event, never a crash:
 *      SMTP_IN_TOO_LONG  line longer than cmd_line_max octets (512 in RFC
 *                        5321 including CRLF); the rest of the line up to
 *                        the next LF is discarded, then parsing resumes.
 *      SMTP_IN_BARE_LF   a LF not preceded by CR (line discarded);
 *      SMTP_IN_BARE_CR   a CR not followed by LF (line discarded);
 *      SMTP_IN_NUL       a NUL byte in the line (line discarded).
 *  - DATA mode (after the server's 354) collects the message, undoing
 *    dot-stuffing, until the only terminator tern accepts: CRLF "." CRLF
 *    (so "\n.\n" or "\r.\r" can never end a message: no SMTP smuggling).
 *    The message's lines keep their CRLF. Problems do not stop collection;
 *    they are flags on the SMTP_IN_DATA_END event, so the server reads to the
 *    real end and then refuses the whole message:
 *      too_big       more than msg_max octets (the excess is not stored);
 *      line_too_long a line over text_line_max octets incl. CRLF (1000);
 *      bare_lf / bare_cr / nul  as above, inside the message.
 *    tern's one documented rule: any such message is refused (5xx) whole.
 *
 * Command parsing (smtp_cmd_parse) knows every SMTP/LMTP verb tern speaks,
 * the MAIL/RCPT path syntax (with the address normalized by
 * mail_addr_normalize, "<>" as the null path for MAIL) and ESMTP parameters
 * (KEY or KEY=VALUE, at most SMTP_PARAMS_MAX). Errors carry the reply code
 * and enhanced status the server should send (smtp_error).
 */
#ifndef TERN_SMTP_H
#define TERN_SMTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mail/mail.h"
#include "util/util.h"

#define SMTP_CMD_LINE_MAX    512  /* RFC 5321 4.5.3.1.4, incl. CRLF */
#define SMTP_TEXT_LINE_MAX   1000 /* RFC 5321 4.5.3.1.6, incl. CRLF */
#define SMTP_PARAMS_MAX      16
#define SMTP_PARAM_KEY_MAX   32
#define SMTP_PARAM_VALUE_MAX 128

struct smtp_limits {
    size_t cmd_line_max;  /* octets incl. CRLF; default SMTP_CMD_LINE_MAX */
    size_t text_line_max; /* octets incl. CRLF; default SMTP_TEXT_LINE_MAX */
    size_t msg_max;       /* octets of the message after unstuffing */
};

enum smtp_in_event_type {
    SMTP_IN_NONE = 0, /* all input consumed, need more bytes */
    SMTP_IN_LINE,     /* a command line: ev.line / ev.len (NUL-terminated) */
    SMTP_IN_TOO_LONG,
    SMTP_IN_BARE_LF,
    SMTP_IN_BARE_CR,
    SMTP_IN_NUL,
    SMTP_IN_DATA_END, /* the message is complete: smtp_in_message() */
};

struct smtp_in_event {
    enum smtp_in_event_type type;
    const char *line; /* SMTP_IN_LINE: valid until the next smtp_in_feed() */
    size_t len;
    /* SMTP_IN_DATA_END flags: */
    bool too_big;
    bool line_too_long;
    bool bare_lf;
    bool bare_cr;
    bool nul;
};

struct smtp_in;

struct smtp_in *smtp_in_new(const struct smtp_limits *limits);
void smtp_in_free(struct smtp_in **in);
/* Switches to DATA mode (call after sending 354). */
void smtp_in_start_data(struct smtp_in *in);
/* Feeds up to n bytes. Consumes bytes until one event is complete or the
 * input runs out; returns the number of bytes consumed and fills *ev
 * (SMTP_IN_NONE if it needs more). Call again with the remaining bytes until
 * it consumes all of them and reports SMTP_IN_NONE. After SMTP_IN_DATA_END
 * the parser is back in COMMAND mode. */
size_t smtp_in_feed(struct smtp_in *in, const char *p, size_t n, struct smtp_in_event *ev);
/* The message collected by the last DATA: valid until smtp_in_start_data()
 * or smtp_in_free(). With too_big, only the first msg_max octets. */
const struct buf *smtp_in_message(const struct smtp_in *in);
/* Octets of the message seen so far in DATA mode (including excess). */
uint64_t smtp_in_data_seen(const struct smtp_in *in);
/* True while in DATA mode. */
bool smtp_in_in_data(const struct smtp_in *in);

enum smtp_verb {
    SMTP_UNKNOWN = 0,
    SMTP_HELO,
    SMTP_EHLO,
    SMTP_LHLO,
    SMTP_MAIL,
    SMTP_RCPT,
    SMTP_DATA,
    SMTP_RSET,
    SMTP_NOOP,
    SMTP_QUIT,
    SMTP_VRFY,
    SMTP_HELP,
    SMTP_STARTTLS,
    SMTP_AUTH,
    SMTP_BDAT,
    SMTP_XSTATS, /* tern extension: counters (LMTP on stores) */
};

struct smtp_param {
    char key[SMTP_PARAM_KEY_MAX + 1]; /* uppercased */
    char value[SMTP_PARAM_VALUE_MAX + 1];
    bool has_value;
};

struct smtp_cmd {
    enum smtp_verb verb;
    /* HELO/EHLO/LHLO: the domain/literal; VRFY/HELP/AUTH: the raw argument */
    char arg[SMTP_CMD_LINE_MAX + 1];
    /* MAIL/RCPT: normalized address, "" for the null path <> in MAIL */
    char addr[MAIL_ADDR_MAX + 1];
    struct smtp_param params[SMTP_PARAMS_MAX];
    size_t n_params;
};

/* A parse error: the reply the server should send. */
struct smtp_error {
    int code;             /* 500, 501, 502, 504, 553, 555 */
    const char *enhanced; /* "5.5.2", "5.1.3", ... */
    const char *text;     /* client-safe */
};

/* Parses one command line (without CRLF). 0 with *cmd filled, or -1 with
 * *err. A known verb with bad syntax gives 501 (5.5.4, or 5.1.3/5.1.7 for a
 * bad address), an unknown verb 500 5.5.1, a malformed parameter 555 5.5.4.
 * RCPT with "<>" is a syntax error. The address is normalized. */
int smtp_cmd_parse(const char *line, size_t len, struct smtp_cmd *cmd, struct smtp_error *err);

/* Returns the parameter with this (uppercase) key or NULL. */
const struct smtp_param *smtp_cmd_param(const struct smtp_cmd *cmd, const char *key);

/* Appends "CODE ENH text\r\n" (or a multi-line reply when text holds '\n':
 * each line "CODE-..." but the last) to out. */
void smtp_reply(struct buf *out, int code, const char *enhanced, const char *text);

/* Encodes a message for DATA: dot-stuffs lines starting with '.', appends
 * ".\r\n" (and a CRLF first if the message does not end with one). For the
 * client side (mta, tests, benchmarks). */
void smtp_dot_stuff(const void *msg, size_t len, struct buf *out);

#endif
