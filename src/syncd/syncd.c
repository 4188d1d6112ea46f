/*
 * syncd — the TSYNC/1 server (see syncd.h for the contract, docs/sync.md
 * for the protocol).
 *
 * Each connection is a small state machine over the bytes net hands in:
 * command lines; a too-long line being skipped up to its LF; an APPEND body
 * being collected; the CRLF after it. An APPENDS batch goes through the same
 * modes once per record (s->batch set: lines are its records), and is
 * executed once its last body is in: one append_batch, one store commit.
 * Commands run synchronously on the loop through one sync_local transport
 * over the store, and their replies are queued in order, so a pipelining
 * client gets its answers in the order it asked.
 */
#include "syncd/syncd.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SYNCD_TOKENS_MAX 12
#define SYNCD_FLUSH_AT   (64 * 1024) /* stream replies out in pieces of this */
/* A listing makes one step per loop iteration: SYNCD_STEP_RECORDS CHANGES
 * records, or one DIGEST folder (backpressure: syncd.h). */
#define SYNCD_STEP_RECORDS 256
#define SYNCD_BODY_KEEP    (1024 * 1024) /* body buffer kept between APPENDs */

struct syncd_session;

struct syncd {
    struct net_loop *loop;
    struct net_listener *l;
    struct syncd_session *waiters; /* sessions with a WAIT pending */
    atomic_uint n_waiters;         /* read by syncd_waiters() from any thread */
    struct sync *sync;
    char name[MAIL_NAME_MAX + 1];
    unsigned n_sessions;
    uint64_t next_id;
    atomic_size_t backlog_max;
};

/* An APPENDS batch being read: its records' fields, and where each body
 * lies in the session's body buffer. */
struct syncd_batch {
    char user[MAIL_ADDR_MAX + 1];
    int user_r; /* how the user parsed: 0, SYNC_NO or -1 */
    const char *user_err;
    const char *bad; /* a malformed record's -ERR text: the batch is refused */
    size_t n, got;
    uint64_t bytes;
    struct sync_msg *msgs;
    int *parse_r; /* per record: 0 or SYNC_NO ("invalid") */
    size_t *off, *len;
};

/* A DELIVERED batch being read: its records, parsed. */
struct syncd_dbatch {
    char user[MAIL_ADDR_MAX + 1];
    int user_r; /* how the user parsed: 0, SYNC_NO or -1 */
    const char *user_err;
    const char *bad; /* a malformed record's -ERR text: the batch is refused */
    size_t n, got;
    struct sync_delivery *ds;
    int *parse_r; /* per record: 0 or SYNC_NO ("invalid") */
};

enum syncd_mode {
    SYNCD_M_LINE,     /* reading a command line */
    SYNCD_M_SKIP,     /* discarding a too-long line up to its LF */
    SYNCD_M_BODY,     /* collecting an APPEND body */
    SYNCD_M_BODY_END, /* expecting the CRLF after the body */
};

struct syncd_session {
    struct syncd *d;
    struct net_conn *conn;
    char id[48];
    bool hello;
    bool closing;
    unsigned errors;
    enum syncd_mode mode;
    /* The APPEND whose body is being read, and how its line parsed. */
    struct syncd_cmd cmd;
    int parse_r;
    const char *parse_err;
    struct buf body;
    struct syncd_batch *batch; /* an APPENDS being read, or NULL */
    uint64_t body_left;
    unsigned crlf_seen;
    struct buf out;
    /* A listing being streamed (SYNCD_CHANGES or SYNCD_DIGEST), or
     * SYNCD_NONE; its user and cursor. Input is paused meanwhile. */
    enum syncd_verb streaming;
    char suser[MAIL_ADDR_MAX + 1];
    struct sync_changes_cursor ccur;
    struct sync_digest_cursor dcur;
    struct sync_deliveries_cursor lcur;
    struct syncd_dbatch *dbatch; /* a DELIVERED being read, or NULL */
    bool paused;                 /* input paused until the output drains (or the listing ends) */
    /* A pending WAIT: on d->waiters until answered. */
    bool waiting;
    char wuser[MAIL_ADDR_MAX + 1];
    uint64_t wsince;
    struct net_task *wtimer;
    struct syncd_session *wprev, *wnext;
    /* The mover's fencing token (TOKEN), "" and 0/0 if none: every command
     * of this session writes with it (syncd_on_data). */
    char tuser[MAIL_ADDR_MAX + 1];
    uint64_t tjob, tclaim;
};

/* ---- parsing ---- */

struct syncd_tok {
    const char *p;
    size_t len;
};

/* The worst outcome of a line's fields so far: a malformed field (-1)
 * beats a merely over-long string (SYNC_NO). */
struct syncd_parse {
    int r;
    const char *err;
};

static void syncd_note(struct syncd_parse *p, int r, const char *what)
{
    if (r < 0 && p->r >= 0) {
        p->r = -1;
        p->err = what;
    } else if (r > 0 && p->r == 0) {
        p->r = SYNC_NO;
        p->err = "invalid";
    }
}

static int syncd_hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int syncd_tok_u64(const struct syncd_tok *t, uint64_t max, uint64_t *out)
{
    char b[24];
    if (t->len == 0 || t->len >= sizeof(b))
        return -1;
    memcpy(b, t->p, t->len);
    b[t->len] = '\0';
    return parse_u64(b, max, out);
}

static int syncd_tok_u32(const struct syncd_tok *t, uint32_t *out)
{
    uint64_t v;
    if (syncd_tok_u64(t, UINT32_MAX, &v) < 0)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

/* Unix seconds, possibly before 1970: an optional '-'. */
static int syncd_tok_date(const struct syncd_tok *t, int64_t *out)
{
    struct syncd_tok u = *t;
    bool neg = u.len > 1 && u.p[0] == '-';
    if (neg) {
        u.p++;
        u.len--;
    }
    uint64_t v;
    if (syncd_tok_u64(&u, INT64_MAX, &v) < 0)
        return -1;
    *out = neg ? -(int64_t)v : (int64_t)v;
    return 0;
}

/* A hex-encoded string ("-" = empty) into out (cap octets with the NUL):
 * 0, -1 if malformed (odd length, not hex, a NUL octet), 1 if too long. */
static int syncd_tok_str(const struct syncd_tok *t, char *out, size_t cap)
{
    out[0] = '\0';
    if (t->len == 1 && t->p[0] == '-')
        return 0;
    if (t->len == 0 || t->len % 2 != 0)
        return -1;
    size_t n = t->len / 2;
    for (size_t i = 0; i < n; i++) {
        int hi = syncd_hexval(t->p[2 * i]), lo = syncd_hexval(t->p[2 * i + 1]);
        if (hi < 0 || lo < 0 || (hi | lo) == 0)
            return -1;
    }
    if (n >= cap)
        return 1;
    for (size_t i = 0; i < n; i++)
        out[i] = (char)(syncd_hexval(t->p[2 * i]) << 4 | syncd_hexval(t->p[2 * i + 1]));
    out[n] = '\0';
    return 0;
}

/* Exactly 2n hex digits into n octets. */
static int syncd_tok_bin(const struct syncd_tok *t, uint8_t *out, size_t n)
{
    if (t->len != 2 * n)
        return -1;
    for (size_t i = 0; i < n; i++) {
        int hi = syncd_hexval(t->p[2 * i]), lo = syncd_hexval(t->p[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

/* A raw token (delivery id, store name) of printable ASCII; "-" = empty if
 * dash_empty. Every other kind of token is checked by its own syntax. */
static int syncd_tok_atom(const struct syncd_tok *t, char *out, size_t cap, bool dash_empty)
{
    out[0] = '\0';
    for (size_t i = 0; i < t->len; i++)
        if ((unsigned char)t->p[i] < 0x21 || (unsigned char)t->p[i] > 0x7e)
            return -1;
    if (dash_empty && t->len == 1 && t->p[0] == '-')
        return 0;
    if (t->len >= cap)
        return 1;
    memcpy(out, t->p, t->len);
    out[t->len] = '\0';
    return 0;
}

static int syncd_tok_state(const struct syncd_tok *t, enum store_mbox_state *out)
{
    char b[16];
    if (t->len >= sizeof(b))
        return -1;
    memcpy(b, t->p, t->len);
    b[t->len] = '\0';
    return store_mbox_state_parse(b, out);
}

static const struct {
    const char *name;
    enum syncd_verb verb;
    size_t nargs, nopt; /* required arguments, then optional trailing ones */
} syncd_verbs[] = {
    {"HELLO", SYNCD_HELLO, 1, 0},
    {"MBOX", SYNCD_MBOX, 1, 0},
    {"CREATE", SYNCD_CREATE, 3, 1},
    {"STATE", SYNCD_STATE, 5, 0},
    {"PURGE", SYNCD_PURGE, 1, 0},
    {"CHANGES", SYNCD_CHANGES, 2, 0},
    {"FETCH", SYNCD_FETCH, 3, 0},
    {"APPEND", SYNCD_APPEND, 9, 1},
    {"APPENDS", SYNCD_APPENDS, 2, 0},
    {"FOLDER", SYNCD_FOLDER, 4, 1},
    {"FDELETE", SYNCD_FDELETE, 2, 1},
    {"FLAGS", SYNCD_FLAGS, 5, 1},
    {"EXPUNGE", SYNCD_EXPUNGE, 3, 1},
    {"DIGEST", SYNCD_DIGEST, 1, 0},
    {"DELIVERIES", SYNCD_DELIVERIES, 1, 2},
    {"DELIVERY", SYNCD_DELIVERY, 4, 0},
    {"DELIVERED", SYNCD_DELIVERED, 2, 0},
    {"QUIT", SYNCD_QUIT, 0, 0},
    {"MODSEQ", SYNCD_MODSEQ, 2, 0},
    {"FOLDERS", SYNCD_FOLDERS, 1, 0},
    {"MSGS", SYNCD_MSGS, 2, 0},
    {"ADD", SYNCD_ADD, 7, 0},
    {"SETFLAGS", SYNCD_SETFLAGS, 7, 0},
    {"FCREATE", SYNCD_FCREATE, 2, 0},
    {"FRENAME", SYNCD_FRENAME, 3, 0},
    {"TOMB", SYNCD_TOMB, 10, 0},
    {"WAIT", SYNCD_WAIT, 3, 0},
    {"NOOP", SYNCD_NOOP, 0, 0},
    {"HEADER", SYNCD_HEADER, 3, 0},
    {"EXPUNGES", SYNCD_EXPUNGES, 3, 0},
    {"COPIES", SYNCD_COPIES, 4, 0},
    {"TOKEN", SYNCD_TOKEN, 3, 0},
};

/* Splits a line at single spaces into t (SYNCD_TOKENS_MAX); *n_r tokens. */
static int syncd_tokenize(const char *line, size_t len, struct syncd_tok *t, size_t *n_r,
                          const char **error_r)
{
    size_t n = 0;
    for (size_t i = 0;;) {
        size_t j = i;
        while (j < len && line[j] != ' ')
            j++;
        if (j == i) {
            *error_r = "empty argument (leading, trailing or double space)";
            return -1;
        }
        if (n == SYNCD_TOKENS_MAX) {
            *error_r = "too many arguments";
            return -1;
        }
        t[n].p = line + i;
        t[n++].len = j - i;
        if (j == len)
            break;
        i = j + 1;
    }
    *n_r = n;
    return 0;
}

static const char syncd_bad_folder[] = "bad folder name (hex)";
static const char syncd_bad_kw[] = "bad keywords (hex or -)";
static const char syncd_bad_num[] = "bad number";
static const char syncd_bad_modseq[] = "bad modseq (a number from 1 to 2^63-1)";

/* The optional trailing modseq of a change (syncd.h): t, if given. */
static void syncd_parse_modseq(struct syncd_parse *p, const struct syncd_tok *t,
                               struct syncd_cmd *cmd)
{
    if (t == NULL)
        return;
    if (syncd_tok_u64(t, STORE_MODSEQ_MAX, &cmd->modseq) < 0 || cmd->modseq == 0)
        syncd_note(p, -1, syncd_bad_modseq);
}

/* APPEND's arguments after the user, a[0..7], the optional modseq a[8]
 * ("-": none) and, in an APPENDS record (n == 10), the delivery id a[9];
 * user the APPEND's user token, or NULL. */
static void syncd_parse_append(struct syncd_parse *p, const struct syncd_tok *a, size_t n,
                               const struct syncd_tok *user, struct syncd_cmd *cmd)
{
    /* The length first: with it known, the body can be skipped even when
     * another argument is bad, and the connection survives. */
    if (syncd_tok_u64(&a[5], SYNCD_BODY_MAX, &cmd->body_len) == 0)
        cmd->has_body = true;
    else
        syncd_note(p, -1, "bad body length");
    if (user != NULL)
        syncd_note(p, syncd_tok_str(user, cmd->user, sizeof(cmd->user)), "bad user (hex or -)");
    syncd_note(p, syncd_tok_str(&a[0], cmd->folder, sizeof(cmd->folder)), syncd_bad_folder);
    syncd_note(p, syncd_tok_u32(&a[1], &cmd->uid), syncd_bad_num);
    syncd_note(p, syncd_tok_bin(&a[2], cmd->guid, STORE_GUID_LEN), "bad GUID");
    syncd_note(p, syncd_tok_u32(&a[3], &cmd->flags), syncd_bad_num);
    syncd_note(p, syncd_tok_date(&a[4], &cmd->date), "bad date");
    syncd_note(p, syncd_tok_bin(&a[6], cmd->sha256, SHA256_LEN), "bad SHA-256");
    syncd_note(p, syncd_tok_str(&a[7], cmd->keywords, sizeof(cmd->keywords)), syncd_bad_kw);
    bool no_modseq = n > 8 && a[8].len == 1 && a[8].p[0] == '-';
    syncd_parse_modseq(p, n > 8 && !no_modseq ? &a[8] : NULL, cmd);
    if (n > 9)
        syncd_note(p, syncd_tok_atom(&a[9], cmd->id, sizeof(cmd->id), false), "bad delivery id");
}

int syncd_parse_record(const char *line, size_t len, struct syncd_cmd *cmd, const char **error_r)
{
    memset(cmd, 0, sizeof(*cmd));
    cmd->verb = SYNCD_APPEND;
    struct syncd_tok t[SYNCD_TOKENS_MAX];
    size_t n;
    if (len == 0) {
        *error_r = "empty APPENDS record";
        return -1;
    }
    if (syncd_tokenize(line, len, t, &n, error_r) < 0)
        return -1;
    if (n < 8 || n > 10) {
        *error_r = "wrong number of fields in an APPENDS record";
        return -1;
    }
    struct syncd_parse p = {0, NULL};
    syncd_parse_append(&p, t, n, NULL, cmd);
    if (p.r != 0)
        *error_r = p.err;
    return p.r;
}

int syncd_parse_delivered(const char *line, size_t len, struct syncd_cmd *cmd, const char **error_r)
{
    memset(cmd, 0, sizeof(*cmd));
    cmd->verb = SYNCD_DELIVERY;
    struct syncd_tok t[SYNCD_TOKENS_MAX];
    size_t n;
    if (len == 0) {
        *error_r = "empty DELIVERED record";
        return -1;
    }
    if (syncd_tokenize(line, len, t, &n, error_r) < 0)
        return -1;
    if (n != 3) {
        *error_r = "wrong number of fields in a DELIVERED record";
        return -1;
    }
    struct syncd_parse p = {0, NULL};
    syncd_note(&p, syncd_tok_atom(&t[0], cmd->id, sizeof(cmd->id), false), "bad id");
    syncd_note(&p, syncd_tok_u32(&t[1], &cmd->uid), syncd_bad_num);
    syncd_note(&p, syncd_tok_str(&t[2], cmd->folder, sizeof(cmd->folder)), syncd_bad_folder);
    if (p.r != 0)
        *error_r = p.err;
    return p.r;
}

int syncd_parse_line(const char *line, size_t len, struct syncd_cmd *cmd, const char **error_r)
{
    memset(cmd, 0, sizeof(*cmd));
    if (len == 0) {
        *error_r = "empty command";
        return -1;
    }
    struct syncd_tok t[SYNCD_TOKENS_MAX];
    size_t n;
    if (syncd_tokenize(line, len, t, &n, error_r) < 0)
        return -1;
    size_t v;
    for (v = 0; v < ARRAY_SIZE(syncd_verbs); v++)
        if (t[0].len == strlen(syncd_verbs[v].name) &&
            memcmp(t[0].p, syncd_verbs[v].name, t[0].len) == 0)
            break;
    if (v == ARRAY_SIZE(syncd_verbs)) {
        *error_r = "unknown command";
        return -1;
    }
    cmd->verb = syncd_verbs[v].verb;
    if (n - 1 < syncd_verbs[v].nargs || n - 1 > syncd_verbs[v].nargs + syncd_verbs[v].nopt) {
        *error_r = "wrong number of arguments";
        return -1;
    }

    struct syncd_parse p = {0, NULL};
    const struct syncd_tok *a = t + 1;
    static const char bad_user[] = "bad user (hex or -)";
    switch (cmd->verb) {
    case SYNCD_NONE:
        break;
    case SYNCD_HELLO:
        if (a[0].len != strlen(SYNC_PROTO) || memcmp(a[0].p, SYNC_PROTO, a[0].len) != 0)
            syncd_note(&p, -1, "unsupported version");
        break;
    case SYNCD_QUIT:
    case SYNCD_NOOP:
        break;
    case SYNCD_WAIT: {
        syncd_note(&p, syncd_tok_str(&a[0], cmd->user, sizeof(cmd->user)), bad_user);
        syncd_note(&p, syncd_tok_u64(&a[1], UINT64_MAX, &cmd->num), syncd_bad_num);
        uint64_t ms = 0;
        if (syncd_tok_u64(&a[2], SYNC_WAIT_MAX_MS, &ms) < 0)
            syncd_note(&p, -1, "bad timeout (0 to 300000 ms)");
        cmd->wait_ms = (uint32_t)ms;
        break;
    }
    case SYNCD_EXPUNGES:
    case SYNCD_COPIES: {
        /* EXPUNGES <user> <folder> <uidset>; COPIES <user> <from> <to> <uidset> */
        syncd_note(&p, syncd_tok_str(&a[0], cmd->user, sizeof(cmd->user)), bad_user);
        syncd_note(&p, syncd_tok_str(&a[1], cmd->folder, sizeof(cmd->folder)), syncd_bad_folder);
        const struct syncd_tok *set = &a[2];
        if (cmd->verb == SYNCD_COPIES) {
            syncd_note(&p, syncd_tok_str(&a[2], cmd->folder2, sizeof(cmd->folder2)),
                       syncd_bad_folder);
            set = &a[3];
        }
        const char *serr = NULL;
        if (sync_uidset_parse(set->p, set->len, cmd->uids, SYNC_UIDS_MAX, &cmd->n_uids, &serr) < 0)
            syncd_note(&p, -1, serr);
        break;
    }
    case SYNCD_MBOX:
    case SYNCD_PURGE:
    case SYNCD_DIGEST:
        syncd_note(&p, syncd_tok_str(&a[0], cmd->user, sizeof(cmd->user)), bad_user);
        break;
    case SYNCD_DELIVERIES:
        /* Optional: since (default 0), then upto (default all). */
        syncd_note(&p, syncd_tok_str(&a[0], cmd->user, sizeof(cmd->user)), bad_user);
        cmd->upto = UINT64_MAX;
        if (n - 1 > 1)
            syncd_note(&p, syncd_tok_u64(&a[1], UINT64_MAX, &cmd->num), syncd_bad_num);
        if (n - 1 > 2)
            syncd_note(&p, syncd_tok_u64(&a[2], UINT64_MAX, &cmd->upto), syncd_bad_num);
        break;
    case SYNCD_DELIVERED:
        /* The count frames the records, as for APPENDS. */
        if (syncd_tok_u64(&a[1], SYNC_BATCH_MAX, &cmd->num) == 0)
            cmd->has_count = true;
        else
            syncd_note(&p, -1, "bad DELIVERED count");
        syncd_note(&p, syncd_tok_str(&a[0], cmd->user, sizeof(cmd->user)), bad_user);
        break;
    case SYNCD_CREATE:
        syncd_note(&p, syncd_tok_str(&a[0], cmd->user, sizeof(cmd->user)), bad_user);
        syncd_note(&p, syncd_tok_state(&a[1], &cmd->state), "bad state");
        syncd_note(&p, syncd_tok_u64(&a[2], UINT64_MAX, &cmd->num), syncd_bad_num);
        /* The INBOX's UIDVALIDITY; absent or 0: the store chooses. */
        if (n - 1 > 3)
            syncd_note(&p, syncd_tok_u32(&a[3], &cmd->uidvalidity), syncd_bad_num);
        break;
    case SYNCD_STATE:
        syncd_note(&p, syncd_tok_str(&a[0], cmd->user, sizeof(cmd->user)), bad_user);
        syncd_note(&p, syncd_tok_state(&a[1], &cmd->expect), "bad state");
        syncd_note(&p, syncd_tok_state(&a[2], &cmd->state), "bad state");
        syncd_note(&p, syncd_tok_u64(&a[3], UINT64_MAX, &cmd->num), syncd_bad_num);
        syncd_note(&p, syncd_tok_atom(&a[4], cmd->moved_to, sizeof(cmd->moved_to), true),
                   "bad store name");
        break;
    case SYNCD_CHANGES:
        syncd_note(&p, syncd_tok_str(&a[0], cmd->user, sizeof(cmd->user)), bad_user);
        syncd_note(&p, syncd_tok_u64(&a[1], UINT64_MAX, &cmd->num), syncd_bad_num);
        break;
    case SYNCD_FETCH:
    case SYNCD_HEADER:
    case SYNCD_EXPUNGE:
        syncd_note(&p, syncd_tok_str(&a[0], cmd->user, sizeof(cmd->user)), bad_user);
        syncd_note(&p, syncd_tok_str(&a[1], cmd->folder, sizeof(cmd->folder)), syncd_bad_folder);
        syncd_note(&p, syncd_tok_u32(&a[2], &cmd->uid), syncd_bad_num);
        syncd_parse_modseq(&p, n - 1 > 3 ? &a[3] : NULL, cmd);
        break;
    case SYNCD_APPEND:
        syncd_parse_append(&p, a + 1, n - 2, &a[0], cmd);
        break;
    case SYNCD_APPENDS:
        /* The count frames what follows: one past the limit cannot be
         * skipped (the caller closes the connection on it). */
        if (syncd_tok_u64(&a[1], SYNC_BATCH_MAX, &cmd->num) == 0)
            cmd->has_count = true;
        else
            syncd_note(&p, -1, "bad APPENDS count");
        syncd_note(&p, syncd_tok_str(&a[0], cmd->user, sizeof(cmd->user)), bad_user);
        break;
    case SYNCD_FOLDER:
        syncd_note(&p, syncd_tok_str(&a[0], cmd->user, sizeof(cmd->user)), bad_user);
        syncd_note(&p, syncd_tok_u32(&a[1], &cmd->uidvalidity), syncd_bad_num);
        syncd_note(&p, syncd_tok_u32(&a[2], &cmd->uidnext), syncd_bad_num);
        syncd_note(&p, syncd_tok_str(&a[3], cmd->folder, sizeof(cmd->folder)), syncd_bad_folder);
        syncd_parse_modseq(&p, n - 1 > 4 ? &a[4] : NULL, cmd);
        break;
    case SYNCD_FDELETE:
        syncd_note(&p, syncd_tok_str(&a[0], cmd->user, sizeof(cmd->user)), bad_user);
        syncd_note(&p, syncd_tok_u32(&a[1], &cmd->uidvalidity), syncd_bad_num);
        syncd_parse_modseq(&p, n - 1 > 2 ? &a[2] : NULL, cmd);
        break;
    case SYNCD_FLAGS:
        syncd_note(&p, syncd_tok_str(&a[0], cmd->user, sizeof(cmd->user)), bad_user);
        syncd_note(&p, syncd_tok_str(&a[1], cmd->folder, sizeof(cmd->folder)), syncd_bad_folder);
        syncd_note(&p, syncd_tok_u32(&a[2], &cmd->uid), syncd_bad_num);
        syncd_note(&p, syncd_tok_u32(&a[3], &cmd->flags), syncd_bad_num);
        syncd_note(&p, syncd_tok_str(&a[4], cmd->keywords, sizeof(cmd->keywords)), syncd_bad_kw);
        syncd_parse_modseq(&p, n - 1 > 5 ? &a[5] : NULL, cmd);
        break;
    case SYNCD_FOLDERS:
        syncd_note(&p, syncd_tok_str(&a[0], cmd->user, sizeof(cmd->user)), bad_user);
        break;
    case SYNCD_MODSEQ:
        syncd_note(&p, syncd_tok_str(&a[0], cmd->user, sizeof(cmd->user)), bad_user);
        syncd_note(&p, syncd_tok_u64(&a[1], (uint64_t)INT64_MAX, &cmd->num), syncd_bad_num);
        break;
    case SYNCD_TOKEN:
        syncd_note(&p, syncd_tok_str(&a[0], cmd->user, sizeof(cmd->user)), bad_user);
        syncd_note(
            &p, syncd_tok_u64(&a[1], (uint64_t)INT64_MAX, &cmd->num) < 0 || cmd->num == 0 ? -1 : 0,
            "bad token job (a number from 1 to 2^63-1)");
        syncd_note(
            &p,
            syncd_tok_u64(&a[2], (uint64_t)INT64_MAX, &cmd->claim) < 0 || cmd->claim == 0 ? -1 : 0,
            "bad token claim (a number from 1 to 2^63-1)");
        break;
    case SYNCD_MSGS:
    case SYNCD_FCREATE:
        syncd_note(&p, syncd_tok_str(&a[0], cmd->user, sizeof(cmd->user)), bad_user);
        syncd_note(&p, syncd_tok_str(&a[1], cmd->folder, sizeof(cmd->folder)), syncd_bad_folder);
        break;
    case SYNCD_FRENAME:
        syncd_note(&p, syncd_tok_str(&a[0], cmd->user, sizeof(cmd->user)), bad_user);
        syncd_note(&p, syncd_tok_str(&a[1], cmd->folder, sizeof(cmd->folder)), syncd_bad_folder);
        syncd_note(&p, syncd_tok_str(&a[2], cmd->folder2, sizeof(cmd->folder2)), syncd_bad_folder);
        break;
    case SYNCD_TOMB:
        /* TOMB <user> <folder> <uid> <guid> <flags> <date> <size> <sha256> <keywords> <modseq> */
        syncd_note(&p, syncd_tok_str(&a[0], cmd->user, sizeof(cmd->user)), bad_user);
        syncd_note(&p, syncd_tok_str(&a[1], cmd->folder, sizeof(cmd->folder)), syncd_bad_folder);
        syncd_note(&p, syncd_tok_u32(&a[2], &cmd->uid), syncd_bad_num);
        syncd_note(&p, syncd_tok_bin(&a[3], cmd->guid, STORE_GUID_LEN), "bad GUID");
        syncd_note(&p, syncd_tok_u32(&a[4], &cmd->flags), syncd_bad_num);
        syncd_note(&p, syncd_tok_date(&a[5], &cmd->date), "bad date");
        syncd_note(&p, syncd_tok_u64(&a[6], (uint64_t)INT64_MAX, &cmd->size), syncd_bad_num);
        syncd_note(&p, syncd_tok_bin(&a[7], cmd->sha256, SHA256_LEN), "bad SHA-256");
        syncd_note(&p, syncd_tok_str(&a[8], cmd->keywords, sizeof(cmd->keywords)), syncd_bad_kw);
        syncd_parse_modseq(&p, &a[9], cmd);
        break;
    case SYNCD_ADD:
        /* ADD <user> <folder> <flags> <date> <len> <sha256> <keywords> */
        if (syncd_tok_u64(&a[4], SYNCD_BODY_MAX, &cmd->body_len) == 0)
            cmd->has_body = true;
        else
            syncd_note(&p, -1, "bad body length");
        syncd_note(&p, syncd_tok_str(&a[0], cmd->user, sizeof(cmd->user)), bad_user);
        syncd_note(&p, syncd_tok_str(&a[1], cmd->folder, sizeof(cmd->folder)), syncd_bad_folder);
        syncd_note(&p, syncd_tok_u32(&a[2], &cmd->flags), syncd_bad_num);
        syncd_note(&p, syncd_tok_date(&a[3], &cmd->date), "bad date");
        syncd_note(&p, syncd_tok_bin(&a[5], cmd->sha256, SHA256_LEN), "bad SHA-256");
        syncd_note(&p, syncd_tok_str(&a[6], cmd->keywords, sizeof(cmd->keywords)), syncd_bad_kw);
        break;
    case SYNCD_SETFLAGS:
        /* SETFLAGS <user> <folder> <uid> <=|+|-> <flags> <keywords|-> <unchanged_since> */
        syncd_note(&p, syncd_tok_str(&a[0], cmd->user, sizeof(cmd->user)), bad_user);
        syncd_note(&p, syncd_tok_str(&a[1], cmd->folder, sizeof(cmd->folder)), syncd_bad_folder);
        syncd_note(&p, syncd_tok_u32(&a[2], &cmd->uid), syncd_bad_num);
        if (a[3].len == 1 && (a[3].p[0] == '=' || a[3].p[0] == '+' || a[3].p[0] == '-'))
            cmd->flag_mode = a[3].p[0] == '='   ? STORE_FLAGS_SET
                             : a[3].p[0] == '+' ? STORE_FLAGS_ADD
                                                : STORE_FLAGS_REMOVE;
        else
            syncd_note(&p, -1, "bad flag mode");
        syncd_note(&p, syncd_tok_u32(&a[4], &cmd->flags), syncd_bad_num);
        cmd->keywords_none = a[5].len == 1 && a[5].p[0] == '-';
        syncd_note(&p, syncd_tok_str(&a[5], cmd->keywords, sizeof(cmd->keywords)), syncd_bad_kw);
        syncd_note(&p, syncd_tok_u64(&a[6], UINT64_MAX, &cmd->num), syncd_bad_num);
        break;
    case SYNCD_DELIVERY:
        syncd_note(&p, syncd_tok_str(&a[0], cmd->user, sizeof(cmd->user)), bad_user);
        syncd_note(&p, syncd_tok_atom(&a[1], cmd->id, sizeof(cmd->id), false), "bad id");
        syncd_note(&p, syncd_tok_u32(&a[2], &cmd->uid), syncd_bad_num);
        syncd_note(&p, syncd_tok_str(&a[3], cmd->folder, sizeof(cmd->folder)), syncd_bad_folder);
        break;
    }
    if (p.r != 0)
        *error_r = p.err;
    return p.r;
}

/* ---- replies ---- */

static void syncd_say(struct syncd_session *s, const char *fmt, ...) TERN_PRINTF(2, 3);
static void syncd_say(struct syncd_session *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char line[256];
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    buf_puts(&s->out, line);
    buf_puts(&s->out, "\r\n");
}

static void syncd_flush(struct syncd_session *s)
{
    if (s->conn != NULL && s->out.len > 0)
        net_conn_write(s->conn, s->out.data, s->out.len);
    buf_reset(&s->out);
}

/* Appends the hex form of string v ("-" if empty) and a separator. */
static void syncd_put_hex(struct buf *b, const char *v, const char *sep)
{
    size_t n = strlen(v);
    if (n == 0) {
        buf_puts(b, "-");
    } else {
        char *h = xmalloc(2 * n + 1);
        hex_encode(v, n, h);
        buf_append(b, h, 2 * n);
        free(h);
    }
    buf_puts(b, sep);
}

static void syncd_close(struct syncd_session *s)
{
    if (s->closing)
        return;
    s->closing = true;
    syncd_flush(s);
    net_conn_close(s->conn);
}

/* A malformed command: "-ERR text"; too many of them end the session. */
static void syncd_err(struct syncd_session *s, const char *text)
{
    syncd_say(s, "-ERR %s", text);
    if (++s->errors >= SYNCD_MAX_ERRORS) {
        syncd_say(s, "-ERR too many errors, closing");
        syncd_close(s);
    }
}

/* The framing is lost (an APPEND body of unknown length): answer, hang up. */
static void syncd_err_close(struct syncd_session *s, const char *text)
{
    syncd_say(s, "-ERR %s", text);
    syncd_close(s);
}

/* Answers a non-zero sync result: "-NO why", or for a store failure
 * "-ERR store failure" and the end of the session (the client drops the
 * connection and retries later; a half-sent stream is cut off cleanly). */
static void syncd_fail(struct syncd_session *s, int r, const char *why)
{
    if (r == SYNC_NO) {
        syncd_say(s, "-NO %s", why);
        return;
    }
    log_error(s->id, "store failure: %s", why != NULL ? why : "?");
    syncd_say(s, "-ERR store failure");
    syncd_close(s);
}

static void syncd_result(struct syncd_session *s, int r, const char *why)
{
    if (r == 0)
        syncd_say(s, "+OK");
    else
        syncd_fail(s, r, why);
}

/* ---- commands ---- */

static int syncd_change_folder(void *ctx, const struct sync_folder *f)
{
    struct syncd_session *s = ctx;
    buf_printf(&s->out, "F %u %u %llu %d ", f->uidvalidity, f->uidnext,
               (unsigned long long)f->modseq, f->deleted ? 1 : 0);
    syncd_put_hex(&s->out, f->name, "\r\n");
    if (s->out.len >= SYNCD_FLUSH_AT)
        syncd_flush(s);
    return 0;
}

static int syncd_change_msg(void *ctx, const struct sync_msg *m)
{
    struct syncd_session *s = ctx;
    char guid[2 * STORE_GUID_LEN + 1], sha[2 * SHA256_LEN + 1];
    hex_encode(m->guid, STORE_GUID_LEN, guid);
    hex_encode(m->sha256, SHA256_LEN, sha);
    buf_printf(&s->out, "M %u %u %s %u %lld %llu %s %llu %d ", m->uidvalidity, m->uid, guid,
               m->flags, (long long)m->internal_date, (unsigned long long)m->size, sha,
               (unsigned long long)m->modseq, m->expunged ? 1 : 0);
    syncd_put_hex(&s->out, m->keywords, " ");
    syncd_put_hex(&s->out, m->folder, "\r\n");
    if (s->out.len >= SYNCD_FLUSH_AT)
        syncd_flush(s);
    return 0;
}

static void syncd_cmd_fetch(struct syncd_session *s, struct sync *sy, const struct syncd_cmd *c)
{
    const char *why = NULL;
    struct buf b;
    buf_init(&b, 0);
    int r1 = 0;
    int r = c->verb == SYNCD_HEADER
                ? sy->ops->fetch_headers(sy, c->user, c->folder, &c->uid, 1, &b, &r1, &why)
                : sy->ops->fetch(sy, c->user, c->folder, c->uid, &b, &why);
    if (r == 0)
        r = r1;
    if (r != 0) {
        syncd_fail(s, r, why);
    } else {
        /* The body is hashed again here, after the store read it: what
         * the client verifies is what we send. */
        uint8_t sha[SHA256_LEN];
        char hex[2 * SHA256_LEN + 1];
        sha256_buf(b.data, b.len, sha);
        hex_encode(sha, SHA256_LEN, hex);
        syncd_say(s, "+DATA %zu %s", b.len, hex);
        syncd_flush(s);
        if (s->conn != NULL)
            net_conn_write(s->conn, b.data, b.len);
        buf_puts(&s->out, "\r\n");
    }
    buf_free(&b);
}

/* Starts streaming a listing: the records follow in steps, from the loop
 * (syncd_stream_step), as the connection's output drains. */
static void syncd_stream_start(struct syncd_session *s, const struct syncd_cmd *c)
{
    struct sync *sy = s->d->sync;
    const char *why = NULL;
    int r;
    if (c->verb == SYNCD_CHANGES)
        r = sync_local_changes_begin(sy, c->user, c->num, &s->ccur, &why);
    else if (c->verb == SYNCD_DELIVERIES)
        r = sync_local_deliveries_begin(sy, c->user, c->num, c->upto, &s->lcur, &why);
    else
        r = sync_local_digest_begin(sy, c->user, &s->dcur, &why);
    if (r != 0) {
        if (c->verb == SYNCD_DIGEST)
            sync_local_digest_end(&s->dcur);
        syncd_fail(s, r, why);
        return;
    }
    s->streaming = c->verb;
    str_copy(s->suser, c->user, sizeof(s->suser));
}

/* Ends the listing with its final line (or a failure's). */
static void syncd_stream_end(struct syncd_session *s, int r, const char *why)
{
    if (s->streaming == SYNCD_DIGEST)
        sync_local_digest_end(&s->dcur);
    if (r == 0 && s->streaming == SYNCD_CHANGES)
        syncd_say(s, "+OK %llu", (unsigned long long)s->ccur.upto);
    else if (r == 0)
        syncd_say(s, "+OK");
    else
        syncd_fail(s, r, why);
    s->streaming = SYNCD_NONE;
}

static int syncd_delivery_line(void *ctx, const struct sync_delivery *d)
{
    struct syncd_session *s = ctx;
    /* Ids are single tokens: sync_local lists no others. */
    buf_printf(&s->out, "I %s %u ", d->id, d->uid);
    syncd_put_hex(&s->out, d->folder, "\r\n");
    return 0;
}

/* One step of the listing being streamed. */
static void syncd_stream_step(struct syncd_session *s)
{
    struct sync *sy = s->d->sync;
    const char *why = NULL;
    bool done;
    int r;
    if (s->streaming == SYNCD_CHANGES) {
        struct sync_changes_cb cb = {
            .folder = syncd_change_folder, .msg = syncd_change_msg, .ctx = s};
        r = sync_local_changes_step(sy, s->suser, &s->ccur, SYNCD_STEP_RECORDS, &cb, &why);
        done = s->ccur.done;
    } else if (s->streaming == SYNCD_DELIVERIES) {
        r = sync_local_deliveries_step(sy, s->suser, &s->lcur, SYNCD_STEP_RECORDS,
                                       syncd_delivery_line, s, &why);
        done = s->lcur.done;
    } else {
        struct sync_digest d;
        r = sync_local_digest_step(sy, s->suser, &s->dcur, &d, &why);
        done = s->dcur.done;
        if (r == 0 && !done) {
            char hex[2 * SHA256_LEN + 1];
            hex_encode(d.digest, SHA256_LEN, hex);
            buf_printf(&s->out, "D %u %u %llu %s ", d.uidvalidity, d.uidnext,
                       (unsigned long long)d.messages, hex);
            syncd_put_hex(&s->out, d.name, "\r\n");
        }
    }
    if (r != 0 || done)
        syncd_stream_end(s, r, why);
}

static void syncd_cmd_append(struct syncd_session *s)
{
    struct sync *sy = s->d->sync;
    const struct syncd_cmd *c = &s->cmd;
    struct sync_msg m;
    memset(&m, 0, sizeof(m));
    str_copy(m.folder, c->folder, sizeof(m.folder));
    m.uid = c->uid;
    memcpy(m.guid, c->guid, STORE_GUID_LEN);
    m.flags = c->flags;
    str_copy(m.keywords, c->keywords, sizeof(m.keywords));
    m.internal_date = c->date;
    m.size = s->body.len;
    memcpy(m.sha256, c->sha256, SHA256_LEN);
    m.modseq = c->modseq;
    const char *why = NULL;
    /* Each APPEND is its own store batch: one body fdatasync and one
     * metadata commit per message. A client with many messages sends them
     * as APPENDS (syncd_batch_run), which shares one commit. */
    int r = sy->ops->append(sy, c->user, &m, s->body.data, s->body.len, &why);
    syncd_result(s, r, why);
}

/* ADD: a client append (the imap role's APPEND/COPY); the store picks the
 * UID. Answered "+OK <uid> <uidvalidity>" once committed (fsync'd). */
static void syncd_cmd_add(struct syncd_session *s)
{
    struct sync *sy = s->d->sync;
    const struct syncd_cmd *c = &s->cmd;
    uint8_t sha[SHA256_LEN];
    sha256_buf(s->body.data, s->body.len, sha);
    if (memcmp(sha, c->sha256, SHA256_LEN) != 0) {
        syncd_say(s, "-NO checksum");
        return;
    }
    const char *why = NULL;
    uint32_t uid = 0, uidvalidity = 0;
    int r = sy->ops->append_new(sy, c->user, c->folder, c->flags, c->keywords, c->date,
                                s->body.data, s->body.len, &uid, &uidvalidity, &why);
    if (r != 0)
        syncd_fail(s, r, why);
    else
        syncd_say(s, "+OK %u %u", uid, uidvalidity);
}

static int syncd_msgs_cb(void *ctx, const struct sync_msg *m)
{
    return syncd_change_msg(ctx, m);
}

/* ---- WAIT ---- */

static void syncd_wait_unlink(struct syncd_session *s)
{
    if (!s->waiting)
        return;
    struct syncd *d = s->d;
    if (s->wprev != NULL)
        s->wprev->wnext = s->wnext;
    else
        d->waiters = s->wnext;
    if (s->wnext != NULL)
        s->wnext->wprev = s->wprev;
    s->wprev = s->wnext = NULL;
    s->waiting = false;
    atomic_fetch_sub(&d->n_waiters, 1);
    net_task_free(&s->wtimer);
}

/* Answers the pending WAIT with the mailbox as it is now, if done or if
 * `force` (timeout, more input); 1 if answered. */
static int syncd_wait_check(struct syncd_session *s, bool force)
{
    struct sync *sy = s->d->sync;
    struct store_mailbox mb;
    const char *why = NULL;
    int r = sy->ops->mailbox_get(sy, s->wuser, &mb, &why);
    if (r == 0 && !force && !sync_wait_done(&mb, s->wsince))
        return 0;
    syncd_wait_unlink(s);
    if (r != 0)
        syncd_fail(s, r, why);
    else
        syncd_say(s, "+OK %llu %s", (unsigned long long)mb.modseq, store_mbox_state_str(mb.state));
    syncd_flush(s);
    return 1;
}

static void syncd_wait_timeout(void *ctx)
{
    struct syncd_session *s = ctx;
    /* The timer fired: it is done with (unlink frees it). */
    syncd_wait_check(s, true);
}

static void syncd_wait_start(struct syncd_session *s, const struct syncd_cmd *c)
{
    struct syncd *d = s->d;
    str_copy(s->wuser, c->user, sizeof(s->wuser));
    s->wsince = c->num;
    s->waiting = true;
    s->wprev = NULL;
    s->wnext = d->waiters;
    if (d->waiters != NULL)
        d->waiters->wprev = s;
    d->waiters = s;
    atomic_fetch_add(&d->n_waiters, 1);
    if (syncd_wait_check(s, c->wait_ms == 0) == 1)
        return;
    s->wtimer = net_task_new(d->loop, syncd_wait_timeout, s);
    net_task_schedule_in(s->wtimer, c->wait_ms);
}

void syncd_changed(struct syncd *d, const char *user)
{
    if (d == NULL || atomic_load(&d->n_waiters) == 0 || user == NULL)
        return;
    /* Each WAIT of this user re-reads its mailbox; answered ones leave the
     * list, so walk it from a saved next. */
    for (struct syncd_session *s = d->waiters, *next; s != NULL; s = next) {
        next = s->wnext;
        if (strcmp(s->wuser, user) == 0)
            syncd_wait_check(s, false);
    }
}

unsigned syncd_waiters(const struct syncd *d)
{
    return atomic_load(&d->n_waiters);
}

static void syncd_execute_client(struct syncd_session *s, struct sync *sy,
                                 const struct syncd_cmd *c)
{
    const char *why = NULL;
    int r;
    switch (c->verb) {
    case SYNCD_FOLDERS: {
        struct sync_folder *list = NULL;
        size_t n = 0;
        r = sy->ops->folders(sy, c->user, &list, &n, &why);
        if (r != 0) {
            syncd_fail(s, r, why);
            return;
        }
        for (size_t i = 0; i < n; i++)
            syncd_change_folder(s, &list[i]);
        free(list);
        syncd_say(s, "+OK");
        return;
    }
    case SYNCD_MSGS: {
        uint64_t modseq = 0;
        r = sy->ops->msgs(sy, c->user, c->folder, syncd_msgs_cb, s, &modseq, &why);
        if (r != 0)
            syncd_fail(s, r, why);
        else
            syncd_say(s, "+OK %llu", (unsigned long long)modseq);
        return;
    }
    case SYNCD_SETFLAGS: {
        uint64_t modseq = 0;
        const char *kw = c->keywords_none && c->flag_mode != STORE_FLAGS_SET ? NULL : c->keywords;
        r = sy->ops->flags_ex(sy, c->user, c->folder, c->uid, c->flag_mode, c->flags, kw, c->num,
                              &modseq, &why);
        if (r != 0)
            syncd_fail(s, r, why);
        else
            syncd_say(s, "+OK %llu", (unsigned long long)modseq);
        return;
    }
    case SYNCD_MODSEQ:
        r = sy->ops->modseq_raise(sy, c->user, c->num, &why);
        syncd_result(s, r, why);
        return;
    case SYNCD_EXPUNGES: {
        size_t done = 0;
        r = sy->ops->expunge_uids(sy, c->user, c->folder, c->uids, c->n_uids, &done, &why);
        if (r != 0)
            syncd_fail(s, r, why);
        else
            syncd_say(s, "+OK %zu", done);
        return;
    }
    case SYNCD_COPIES: {
        uint32_t *out = xcalloc(c->n_uids + 1, sizeof(*out));
        uint32_t uv = 0;
        r = sy->ops->copy_uids(sy, c->user, c->folder, c->folder2, c->uids, c->n_uids, out, &uv,
                               &why);
        if (r != 0) {
            syncd_fail(s, r, why);
        } else {
            /* The pairs copied: source UIDs and their new UIDs, in order. */
            uint32_t *src = xcalloc(c->n_uids + 1, sizeof(*src));
            size_t k = 0;
            for (size_t i = 0; i < c->n_uids; i++)
                if (out[i] != 0) {
                    src[k] = c->uids[i];
                    out[k++] = out[i];
                }
            buf_printf(&s->out, "+OK %u ", uv);
            sync_uidset_write(&s->out, src, k);
            buf_puts(&s->out, " ");
            sync_uidset_write(&s->out, out, k);
            buf_puts(&s->out, "\r\n");
            free(src);
        }
        free(out);
        return;
    }
    case SYNCD_FCREATE:
        r = sy->ops->folder_create(sy, c->user, c->folder, &why);
        syncd_result(s, r, why);
        return;
    case SYNCD_FRENAME:
        r = sy->ops->folder_rename(sy, c->user, c->folder, c->folder2, &why);
        syncd_result(s, r, why);
        return;
    default:
        return;
    }
}

static void syncd_execute(struct syncd_session *s, const struct syncd_cmd *c)
{
    struct sync *sy = s->d->sync;
    const char *why = NULL;
    int r;
    switch (c->verb) {
    case SYNCD_MODSEQ:
    case SYNCD_FOLDERS:
    case SYNCD_MSGS:
    case SYNCD_SETFLAGS:
    case SYNCD_FCREATE:
    case SYNCD_FRENAME:
    case SYNCD_EXPUNGES:
    case SYNCD_COPIES:
        syncd_execute_client(s, sy, c);
        break;
    case SYNCD_NONE:
    case SYNCD_ADD:       /* after its body: syncd_body_done() */
    case SYNCD_APPEND:    /* after its body: syncd_body_done() */
    case SYNCD_APPENDS:   /* after all records: syncd_batch_run() */
    case SYNCD_DELIVERED: /* after all records: syncd_dbatch_run() */
        break;
    case SYNCD_HELLO:
        s->hello = true;
        syncd_say(s, "+OK %s %s", SYNC_PROTO, s->d->name);
        break;
    case SYNCD_QUIT:
        syncd_say(s, "+OK bye");
        syncd_close(s);
        break;
    case SYNCD_NOOP:
        syncd_say(s, "+OK");
        break;
    case SYNCD_TOKEN:
        /* Kept for the session: syncd_on_data puts it on the transport
         * around each of this session's commands. */
        r = sy->ops->token(sy, c->user, c->num, c->claim, &why);
        if (r == 0) {
            str_copy(s->tuser, c->user, sizeof(s->tuser));
            s->tjob = c->num;
            s->tclaim = c->claim;
        } else if (r == SYNC_NO) {
            log_info(s->id, "TOKEN %llu/%llu for %s refused: a mover claimed the job since",
                     (unsigned long long)c->num, (unsigned long long)c->claim, c->user);
        }
        syncd_result(s, r, why);
        break;
    case SYNCD_WAIT:
        syncd_wait_start(s, c);
        break;
    case SYNCD_MBOX: {
        struct store_mailbox mb;
        r = sy->ops->mailbox_get(sy, c->user, &mb, &why);
        if (r != 0)
            syncd_fail(s, r, why);
        else
            syncd_say(s, "+OK %s %llu %s %llu %llu %llu", store_mbox_state_str(mb.state),
                      (unsigned long long)mb.epoch, mb.moved_to[0] != '\0' ? mb.moved_to : "-",
                      (unsigned long long)mb.modseq, (unsigned long long)mb.messages,
                      (unsigned long long)mb.bytes);
        break;
    }
    case SYNCD_CREATE:
        r = sy->ops->mailbox_create(sy, c->user, c->state, c->num, c->uidvalidity, &why);
        syncd_result(s, r, why);
        break;
    case SYNCD_STATE:
        r = sy->ops->mailbox_state(sy, c->user, c->expect, c->state, c->num,
                                   c->moved_to[0] != '\0' ? c->moved_to : NULL, &why);
        syncd_result(s, r, why);
        break;
    case SYNCD_PURGE:
        r = sy->ops->mailbox_purge(sy, c->user, &why);
        syncd_result(s, r, why);
        break;
    case SYNCD_CHANGES:
    case SYNCD_DIGEST:
    case SYNCD_DELIVERIES:
        syncd_stream_start(s, c);
        break;
    case SYNCD_FETCH:
    case SYNCD_HEADER:
        syncd_cmd_fetch(s, sy, c);
        break;
    case SYNCD_FOLDER:
        r = sy->ops->folder_ensure_at(sy, c->user, c->folder, c->uidvalidity, c->uidnext, c->modseq,
                                      &why);
        syncd_result(s, r, why);
        break;
    case SYNCD_FDELETE:
        r = sy->ops->folder_delete_at(sy, c->user, c->uidvalidity, c->modseq, &why);
        syncd_result(s, r, why);
        break;
    case SYNCD_FLAGS:
        r = sy->ops->flags_at(sy, c->user, c->folder, c->uid, c->flags, c->keywords, c->modseq,
                              &why);
        syncd_result(s, r, why);
        break;
    case SYNCD_TOMB: {
        struct sync_msg m;
        memset(&m, 0, sizeof(m));
        str_copy(m.folder, c->folder, sizeof(m.folder));
        m.uid = c->uid;
        memcpy(m.guid, c->guid, STORE_GUID_LEN);
        m.flags = c->flags;
        str_copy(m.keywords, c->keywords, sizeof(m.keywords));
        m.internal_date = c->date;
        m.size = c->size;
        memcpy(m.sha256, c->sha256, SHA256_LEN);
        m.modseq = c->modseq;
        m.expunged = true;
        r = sy->ops->tombstone(sy, c->user, &m, &why);
        syncd_result(s, r, why);
        break;
    }
    case SYNCD_EXPUNGE:
        r = sy->ops->expunge_at(sy, c->user, c->folder, c->uid, c->modseq, &why);
        syncd_result(s, r, why);
        break;
    case SYNCD_DELIVERY: {
        struct sync_delivery d;
        memset(&d, 0, sizeof(d));
        str_copy(d.id, c->id, sizeof(d.id));
        str_copy(d.folder, c->folder, sizeof(d.folder));
        d.uid = c->uid;
        r = sy->ops->delivery_add(sy, c->user, &d, &why);
        syncd_result(s, r, why);
        break;
    }
    }
}

/* False for the commands that only read (they cannot end a WAIT). */
static bool syncd_verb_writes(enum syncd_verb v)
{
    switch (v) {
    case SYNCD_NONE:
    case SYNCD_HELLO:
    case SYNCD_QUIT:
    case SYNCD_NOOP:
    case SYNCD_WAIT:
    case SYNCD_MBOX:
    case SYNCD_CHANGES:
    case SYNCD_DIGEST:
    case SYNCD_DELIVERIES:
    case SYNCD_FETCH:
    case SYNCD_HEADER:
    case SYNCD_FOLDERS:
    case SYNCD_MSGS:
        return false;
    default:
        return true;
    }
}

/* A parsed line (r, err from syncd_parse_line) is ready to be answered. */
static void syncd_dispatch(struct syncd_session *s, int r, const char *err)
{
    if (r < 0) {
        syncd_err(s, err);
        return;
    }
    if (!s->hello && s->cmd.verb != SYNCD_HELLO && s->cmd.verb != SYNCD_QUIT) {
        syncd_err(s, "say HELLO " SYNC_PROTO " first");
        return;
    }
    if (r == SYNC_NO) {
        syncd_say(s, "-NO %s", err);
        return;
    }
    if (s->cmd.verb == SYNCD_APPEND)
        syncd_cmd_append(s);
    else if (s->cmd.verb == SYNCD_ADD)
        syncd_cmd_add(s);
    else
        syncd_execute(s, &s->cmd);
    /* Whatever it committed may end WAITs on this mailbox. */
    if (syncd_verb_writes(s->cmd.verb))
        syncd_changed(s->d, s->cmd.user);
}

/* ---- APPENDS ---- */

static void syncd_batch_free(struct syncd_batch **bp)
{
    struct syncd_batch *b = *bp;
    if (b == NULL)
        return;
    free(b->msgs);
    free(b->parse_r);
    free(b->off);
    free(b->len);
    xfree(bp);
}

/* A body is done with: a huge buffer is not kept for the next one. */
static void syncd_body_release(struct syncd_session *s)
{
    if (s->body.cap > SYNCD_BODY_KEEP)
        buf_free(&s->body);
    else
        buf_reset(&s->body);
}

/* Every record of the batch is in: one append_batch (one store commit),
 * then a line per record and "+OK <n>"; or one -ERR for the whole batch. */
static void syncd_batch_run(struct syncd_session *s)
{
    struct syncd_batch *b = s->batch;
    s->batch = NULL;
    if (!s->hello) {
        syncd_err(s, "say HELLO " SYNC_PROTO " first");
    } else if (b->user_r < 0) {
        syncd_err(s, b->user_err);
    } else if (b->bad != NULL) {
        syncd_err(s, b->bad);
    } else {
        const struct sync_msg **msgs = xcalloc(b->n ? b->n : 1, sizeof(*msgs));
        const void **data = xcalloc(b->n ? b->n : 1, sizeof(*data));
        size_t *lens = xcalloc(b->n ? b->n : 1, sizeof(*lens));
        size_t *idx = xcalloc(b->n ? b->n : 1, sizeof(*idx));
        int *rc = xcalloc(b->n ? b->n : 1, sizeof(*rc));
        const char **why = xcalloc(b->n ? b->n : 1, sizeof(*why));
        struct sync_append_res *res = xcalloc(b->n ? b->n : 1, sizeof(*res));
        size_t k = 0;
        for (size_t i = 0; i < b->n; i++) {
            if (b->user_r != 0 || b->parse_r[i] != 0)
                continue;
            msgs[k] = &b->msgs[i];
            data[k] = s->body.data != NULL ? s->body.data + b->off[i] : NULL;
            lens[k] = b->len[i];
            idx[k++] = i;
        }
        struct sync *sy = s->d->sync;
        int r = k == 0 ? 0 : sy->ops->append_batch(sy, b->user, msgs, data, lens, k, rc, why, res);
        if (r < 0) {
            syncd_fail(s, -1, why[0]);
        } else {
            for (size_t i = 0, j = 0; i < b->n; i++) {
                if (j < k && idx[j] == i) {
                    if (rc[j] == 0 && res[j].duplicate)
                        syncd_say(s, "+OK duplicate %u %u", res[j].uid, res[j].uidvalidity);
                    else
                        syncd_result(s, rc[j], why[j]);
                    j++;
                } else {
                    syncd_say(s, "-NO invalid");
                }
            }
            syncd_say(s, "+OK %zu", b->n);
        }
        free(msgs);
        free(data);
        free(lens);
        free(idx);
        free(rc);
        free(why);
        free(res);
        syncd_changed(s->d, b->user);
    }
    syncd_batch_free(&b);
    syncd_body_release(s);
}

/* "APPENDS <user> <n>" parsed (r, err): the n records follow. */
static void syncd_batch_start(struct syncd_session *s, int r, const char *err)
{
    if (!s->cmd.has_count) {
        syncd_err_close(s, err);
        return;
    }
    struct syncd_batch *b = xcalloc(1, sizeof(*b));
    str_copy(b->user, s->cmd.user, sizeof(b->user));
    b->user_r = r;
    b->user_err = err;
    b->n = (size_t)s->cmd.num;
    size_t cap = b->n ? b->n : 1;
    b->msgs = xcalloc(cap, sizeof(*b->msgs));
    b->parse_r = xcalloc(cap, sizeof(*b->parse_r));
    b->off = xcalloc(cap, sizeof(*b->off));
    b->len = xcalloc(cap, sizeof(*b->len));
    s->batch = b;
    buf_reset(&s->body);
    if (b->n == 0)
        syncd_batch_run(s);
}

/* One record line of the batch: its body follows. */
static void syncd_batch_record(struct syncd_session *s, const char *line, size_t len)
{
    struct syncd_batch *b = s->batch;
    const char *err = NULL;
    int r = syncd_parse_record(line, len, &s->cmd, &err);
    const struct syncd_cmd *c = &s->cmd;
    if (!c->has_body) {
        syncd_err_close(s, err);
        return;
    }
    if (c->body_len > SYNC_BATCH_BYTES - b->bytes) {
        syncd_err_close(s, "APPENDS batch over its size limit");
        return;
    }
    b->bytes += c->body_len;
    if (r < 0 && b->bad == NULL)
        b->bad = err;
    size_t i = b->got;
    struct sync_msg *m = &b->msgs[i];
    str_copy(m->folder, c->folder, sizeof(m->folder));
    m->uid = c->uid;
    memcpy(m->guid, c->guid, STORE_GUID_LEN);
    m->flags = c->flags;
    str_copy(m->keywords, c->keywords, sizeof(m->keywords));
    m->internal_date = c->date;
    m->size = c->body_len;
    memcpy(m->sha256, c->sha256, SHA256_LEN);
    m->modseq = c->modseq;
    str_copy(m->delivery_id, c->id, sizeof(m->delivery_id));
    b->parse_r[i] = r;
    b->off[i] = s->body.len;
    b->len[i] = (size_t)c->body_len;
    /* Bodies that will not be stored are only skipped (parse_r != 0). */
    s->parse_r = r == 0 && b->bad == NULL && b->user_r == 0 ? 0 : SYNC_NO;
    s->body_left = c->body_len;
    s->crlf_seen = 0;
    s->mode = s->body_left > 0 ? SYNCD_M_BODY : SYNCD_M_BODY_END;
}

/* ---- DELIVERED ---- */

static void syncd_dbatch_free(struct syncd_dbatch **bp)
{
    struct syncd_dbatch *b = *bp;
    if (b == NULL)
        return;
    free(b->ds);
    free(b->parse_r);
    xfree(bp);
}

/* Every record is in: one delivery_add_batch (one store commit), then a
 * line per record and "+OK <n>"; or one -ERR for the whole batch. */
static void syncd_dbatch_run(struct syncd_session *s)
{
    struct syncd_dbatch *b = s->dbatch;
    s->dbatch = NULL;
    if (!s->hello) {
        syncd_err(s, "say HELLO " SYNC_PROTO " first");
    } else if (b->user_r < 0) {
        syncd_err(s, b->user_err);
    } else if (b->bad != NULL) {
        syncd_err(s, b->bad);
    } else {
        size_t cap = b->n ? b->n : 1;
        struct sync_delivery *ds = xcalloc(cap, sizeof(*ds));
        size_t *idx = xcalloc(cap, sizeof(*idx));
        int *rc = xcalloc(cap, sizeof(*rc));
        const char **why = xcalloc(cap, sizeof(*why));
        size_t k = 0;
        for (size_t i = 0; i < b->n; i++) {
            if (b->user_r != 0 || b->parse_r[i] != 0)
                continue;
            ds[k] = b->ds[i];
            idx[k++] = i;
        }
        struct sync *sy = s->d->sync;
        int r = k == 0 ? 0 : sy->ops->delivery_add_batch(sy, b->user, ds, k, rc, why);
        if (r < 0) {
            syncd_fail(s, -1, why[0]);
        } else {
            for (size_t i = 0, j = 0; i < b->n; i++) {
                if (j < k && idx[j] == i) {
                    syncd_result(s, rc[j], why[j]);
                    j++;
                } else {
                    syncd_say(s, "-NO invalid");
                }
            }
            syncd_say(s, "+OK %zu", b->n);
        }
        free(ds);
        free(idx);
        free(rc);
        free(why);
        syncd_changed(s->d, b->user);
    }
    syncd_dbatch_free(&b);
}

/* "DELIVERED <user> <n>" parsed (r, err): the n record lines follow. */
static void syncd_dbatch_start(struct syncd_session *s, int r, const char *err)
{
    if (!s->cmd.has_count) {
        syncd_err_close(s, err);
        return;
    }
    struct syncd_dbatch *b = xcalloc(1, sizeof(*b));
    str_copy(b->user, s->cmd.user, sizeof(b->user));
    b->user_r = r;
    b->user_err = err;
    b->n = (size_t)s->cmd.num;
    b->ds = xcalloc(b->n ? b->n : 1, sizeof(*b->ds));
    b->parse_r = xcalloc(b->n ? b->n : 1, sizeof(*b->parse_r));
    s->dbatch = b;
    if (b->n == 0)
        syncd_dbatch_run(s);
}

static void syncd_dbatch_record(struct syncd_session *s, const char *line, size_t len)
{
    struct syncd_dbatch *b = s->dbatch;
    const char *err = NULL;
    struct syncd_cmd c;
    int r = syncd_parse_delivered(line, len, &c, &err);
    if (r < 0 && b->bad == NULL)
        b->bad = err;
    size_t i = b->got++;
    str_copy(b->ds[i].id, c.id, sizeof(b->ds[i].id));
    str_copy(b->ds[i].folder, c.folder, sizeof(b->ds[i].folder));
    b->ds[i].uid = c.uid;
    b->parse_r[i] = r;
    if (b->got == b->n)
        syncd_dbatch_run(s);
}

static void syncd_line(struct syncd_session *s, const char *line, size_t len)
{
    if (s->batch != NULL) {
        syncd_batch_record(s, line, len);
        return;
    }
    if (s->dbatch != NULL) {
        syncd_dbatch_record(s, line, len);
        return;
    }
    const char *err = NULL;
    int r = syncd_parse_line(line, len, &s->cmd, &err);
    if (s->cmd.verb == SYNCD_APPENDS) {
        syncd_batch_start(s, r, err);
        return;
    }
    if (s->cmd.verb == SYNCD_DELIVERED) {
        syncd_dbatch_start(s, r, err);
        return;
    }
    if (s->cmd.verb == SYNCD_APPEND || s->cmd.verb == SYNCD_ADD) {
        if (!s->cmd.has_body) {
            syncd_err_close(s, err);
            return;
        }
        /* Answered once the body and its CRLF are in (or skipped). */
        s->parse_r = r;
        s->parse_err = err;
        s->body_left = s->cmd.body_len;
        s->crlf_seen = 0;
        s->mode = s->body_left > 0 ? SYNCD_M_BODY : SYNCD_M_BODY_END;
        return;
    }
    syncd_dispatch(s, r, err);
}

static void syncd_body_done(struct syncd_session *s)
{
    s->mode = SYNCD_M_LINE;
    if (s->batch != NULL) {
        if (++s->batch->got == s->batch->n)
            syncd_batch_run(s);
        return;
    }
    syncd_dispatch(s, s->parse_r, s->parse_err);
    syncd_body_release(s);
}

/* ---- connections ---- */

static void *syncd_on_accept(struct net_conn *c, void *ctx)
{
    struct syncd *d = ctx;
    struct syncd_session *s = xmalloc(sizeof(*s));
    s->d = d;
    s->conn = c;
    snprintf(s->id, sizeof(s->id), "syncd:%s/%llu", d->name, (unsigned long long)++d->next_id);
    buf_init(&s->body, SYNCD_BODY_MAX);
    s->batch = NULL;
    buf_init(&s->out, 0);
    s->streaming = SYNCD_NONE;
    s->paused = false;
    s->waiting = false;
    s->wtimer = NULL;
    s->wprev = s->wnext = NULL;
    d->n_sessions++;
    log_debug(s->id, "connection from %s", net_conn_peer(c));
    return s;
}

/* Octets of reply not yet sent: queued in net and still in s->out. */
static size_t syncd_backlog(const struct syncd_session *s)
{
    return net_conn_output_len(s->conn) + s->out.len;
}

static void syncd_on_drained(struct net_conn *c, void *ctx);

/* After input was handled or a listing made a step: flushes, and while a
 * listing is streaming or the output is above SYNCD_OUT_HIGH, keeps input
 * paused and asks to be called back once the output has drained (at once,
 * from the loop, if it is low already: the listing's next step). */
static void syncd_pace(struct syncd_session *s)
{
    syncd_flush(s);
    if (s->closing)
        return;
    size_t backlog = net_conn_output_len(s->conn);
    if (backlog > atomic_load(&s->d->backlog_max))
        atomic_store(&s->d->backlog_max, backlog);
    if (s->streaming != SYNCD_NONE || syncd_backlog(s) > SYNCD_OUT_HIGH) {
        if (!s->paused) {
            s->paused = true;
            net_conn_pause(s->conn);
        }
        net_conn_when_drained(s->conn, SYNCD_OUT_LOW, syncd_on_drained);
        return;
    }
    if (s->paused) {
        s->paused = false;
        /* Offers the input that waited (pipelined commands): on_data runs
         * from here, and paces itself again. */
        net_conn_resume(s->conn);
    }
}

static void syncd_on_drained(struct net_conn *c, void *ctx)
{
    (void)c;
    struct syncd_session *s = ctx;
    if (s->streaming != SYNCD_NONE)
        syncd_stream_step(s);
    syncd_pace(s);
}

/* syncd_on_data's loop: what it returns. */
static size_t syncd_on_data_run(struct syncd_session *s, const char *p, size_t n)
{
    size_t used = 0;
    /* Commands are taken one at a time while nothing holds them back: a
     * listing being streamed, or too much output waiting to be read. */
    while (used < n && !s->closing && s->streaming == SYNCD_NONE &&
           (s->mode != SYNCD_M_LINE || syncd_backlog(s) <= SYNCD_OUT_HIGH)) {
        /* More input ends a pending WAIT: its answer comes first. */
        if (s->waiting)
            syncd_wait_check(s, true);
        const char *at = p + used;
        size_t avail = n - used;
        switch (s->mode) {
        case SYNCD_M_LINE: {
            const char *nl = memchr(at, '\n', avail);
            if (nl == NULL) {
                /* LINE_MAX octets and a CR may still end well; more may not. */
                if (avail > SYNCD_LINE_MAX + 1) {
                    if (s->batch != NULL || s->dbatch != NULL) { /* a record's framing is lost */
                        syncd_err_close(s, s->batch != NULL ? "APPENDS record line too long"
                                                            : "DELIVERED record line too long");
                        break;
                    }
                    s->mode = SYNCD_M_SKIP;
                    used = n;
                    break;
                }
                syncd_flush(s);
                return used;
            }
            size_t len = (size_t)(nl - at);
            used += len + 1;
            if (len > 0 && at[len - 1] == '\r')
                len--;
            if (len > SYNCD_LINE_MAX && (s->batch != NULL || s->dbatch != NULL))
                syncd_err_close(s, s->batch != NULL ? "APPENDS record line too long"
                                                    : "DELIVERED record line too long");
            else if (len > SYNCD_LINE_MAX)
                syncd_err(s, "line too long");
            else
                syncd_line(s, at, len);
            break;
        }
        case SYNCD_M_SKIP: {
            const char *nl = memchr(at, '\n', avail);
            if (nl == NULL) {
                used = n;
                break;
            }
            used += (size_t)(nl - at) + 1;
            s->mode = SYNCD_M_LINE;
            syncd_err(s, "line too long");
            break;
        }
        case SYNCD_M_BODY: {
            size_t take = avail < s->body_left ? avail : (size_t)s->body_left;
            /* A refused APPEND's body is only skipped. */
            if (s->parse_r == 0 && buf_append(&s->body, at, take) < 0) {
                syncd_err_close(s, "APPEND body too large");
                break;
            }
            used += take;
            s->body_left -= take;
            if (s->body_left == 0)
                s->mode = SYNCD_M_BODY_END;
            break;
        }
        case SYNCD_M_BODY_END:
            if (*at != (s->crlf_seen == 0 ? '\r' : '\n')) {
                syncd_err_close(s, "APPEND body not followed by CRLF");
                break;
            }
            used++;
            if (++s->crlf_seen == 2)
                syncd_body_done(s);
            break;
        }
    }
    syncd_pace(s);
    return s->closing ? n : used;
}

static size_t syncd_on_data(struct net_conn *c, void *ctx, const char *p, size_t n)
{
    (void)c;
    struct syncd_session *s = ctx;
    /* The transport is shared by every session: this session's fencing
     * token is on it only while its commands run (APPENDS and DELIVERED
     * batches run from here too). */
    sync_local_token_use(s->d->sync, s->tuser[0] != '\0' ? s->tuser : NULL, s->tjob, s->tclaim);
    size_t got = syncd_on_data_run(s, p, n);
    sync_local_token_use(s->d->sync, NULL, 0, 0);
    return got;
}

static void syncd_on_timeout(struct net_conn *c, void *ctx, const char *why)
{
    (void)c;
    struct syncd_session *s = ctx;
    syncd_say(s, "-ERR %s timeout, closing", why);
    syncd_flush(s);
}

static void syncd_on_close(struct net_conn *c, void *ctx)
{
    (void)c;
    struct syncd_session *s = ctx;
    log_debug(s->id, "connection closed");
    s->d->n_sessions--;
    syncd_wait_unlink(s);
    if (s->streaming == SYNCD_DIGEST)
        sync_local_digest_end(&s->dcur);
    syncd_batch_free(&s->batch);
    syncd_dbatch_free(&s->dbatch);
    buf_free(&s->body);
    buf_free(&s->out);
    free(s);
}

struct syncd *syncd_listen(struct net_loop *loop, const char *endpoint, struct store *st,
                           const char *store_name, const struct net_conn_limits *limits,
                           const char **error_r)
{
    static const struct net_conn_handler h = {.on_accept = syncd_on_accept,
                                              .on_data = syncd_on_data,
                                              .on_timeout = syncd_on_timeout,
                                              .on_close = syncd_on_close};
    struct syncd *d = xmalloc(sizeof(*d));
    atomic_init(&d->backlog_max, 0);
    d->loop = loop;
    d->waiters = NULL;
    atomic_init(&d->n_waiters, 0);
    str_copy(d->name, store_name, sizeof(d->name));
    d->sync = sync_local_new(st);
    d->l = net_listen(loop, endpoint, &h, d, limits, error_r);
    if (d->l == NULL) {
        sync_close(&d->sync);
        free(d);
        return NULL;
    }
    return d;
}

void syncd_free(struct syncd **dp)
{
    struct syncd *d = *dp;
    if (d == NULL)
        return;
    net_listener_free(&d->l);
    sync_close(&d->sync);
    xfree(dp);
}

unsigned syncd_sessions(const struct syncd *d)
{
    return d->n_sessions;
}

size_t syncd_backlog_max(const struct syncd *d)
{
    return atomic_load(&d->backlog_max);
}
