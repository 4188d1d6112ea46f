/*
 * import — the job's persisted state: settings, per-folder checkpoints and
 * the report, kept as the job's data in the directory (dir_job_update_data).
 *
 * Text, one record per line, fields "key=value"; strings are hex ("-" when
 * empty) so any octets survive:
 *   tern-import 1
 *   S watch=1 poll=10 sweep=259200 secret=<hex>
 *   R inflight=0 cutover=0 note=<hex>
 *   F name=<hex> src=<hex> cp=... (one per folder; see struct import_fstate)
 *   X where=<hex> why=<hex>            (a failure of the folder above)
 * Unknown keys are ignored (a newer writer may add some); anything else that
 * is wrong refuses the whole text.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "import/import_private.h"

#define STATE_LINE_MAX (16u * 1024)

void import_state_init(struct import_state *s)
{
    memset(s, 0, sizeof(*s));
    s->set.poll = IMPORT_POLL_DEFAULT;
    s->set.sweep = IMPORT_SWEEP_DEFAULT;
}

void import_fstate_clear_fails(struct import_fstate *f)
{
    free(f->fails);
    f->fails = NULL;
    f->n_fails = 0;
    f->failed = 0;
}

void import_state_free(struct import_state *s)
{
    for (size_t i = 0; i < s->n; i++)
        import_fstate_clear_fails(&s->f[i]);
    free(s->f);
    s->f = NULL;
    s->n = 0;
}

struct import_fstate *import_state_folder(struct import_state *s, const char *name)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->f[i].name, name) == 0)
            return &s->f[i];
    s->f = xrealloc(s->f, (s->n + 1) * sizeof(*s->f));
    struct import_fstate *f = &s->f[s->n++];
    memset(f, 0, sizeof(*f));
    str_copy(f->name, name, sizeof(f->name));
    return f;
}

void import_fstate_fail(struct import_fstate *f, const char *where, const char *why)
{
    f->failed++;
    if (f->n_fails >= IMPORT_FAILS_KEPT)
        return;
    f->fails = xrealloc(f->fails, (f->n_fails + 1) * sizeof(*f->fails));
    struct import_fail *x = &f->fails[f->n_fails++];
    str_copy(x->where, where, sizeof(x->where));
    str_copy(x->why, why, sizeof(x->why));
}

/* ---- writing ---- */

static void put_str(struct buf *b, const char *key, const char *v)
{
    size_t n = strlen(v);
    buf_printf(b, " %s=", key);
    if (n == 0) {
        buf_puts(b, "-");
        return;
    }
    char *h = xmalloc(2 * n + 1);
    hex_encode(v, n, h);
    buf_append(b, h, 2 * n);
    free(h);
}

static void put_u64(struct buf *b, const char *key, uint64_t v)
{
    buf_printf(b, " %s=%llu", key, (unsigned long long)v);
}

void import_state_write(const struct import_state *s, struct buf *out)
{
    buf_puts(out, IMPORT_STATE_MAGIC "\n");
    buf_puts(out, "S");
    put_u64(out, "watch", s->set.watch ? 1 : 0);
    put_u64(out, "poll", s->set.poll);
    put_u64(out, "sweep", s->set.sweep);
    put_str(out, "secret", s->set.secret);
    if (s->set.ca_file[0] != '\0')
        put_str(out, "cafile", s->set.ca_file);
    buf_puts(out, "\nR");
    put_u64(out, "inflight", s->inflight ? 1 : 0);
    put_u64(out, "cutover", (uint64_t)s->cutover);
    put_str(out, "note", s->note);
    buf_puts(out, "\n");
    for (size_t i = 0; i < s->n; i++) {
        const struct import_fstate *f = &s->f[i];
        buf_puts(out, "F");
        put_str(out, "name", f->name);
        put_str(out, "src", f->src);
        put_u64(out, "seen", f->seen ? 1 : 0);
        put_u64(out, "cp", f->cp);
        put_u64(out, "uv", f->uidvalidity);
        put_u64(out, "unext", f->uidnext);
        put_u64(out, "modseq", f->modseq);
        put_u64(out, "fmt", (uint64_t)f->mbox_format);
        put_u64(out, "size", f->size);
        put_u64(out, "ino", f->ino);
        put_u64(out, "mtime", (uint64_t)f->mtime_ns);
        put_str(out, "tail", f->tail);
        put_u64(out, "smsgs", f->src_msgs);
        put_u64(out, "sbytes", f->src_bytes);
        put_u64(out, "already", f->already);
        put_u64(out, "imported", f->imported);
        put_u64(out, "stragglers", f->stragglers);
        put_u64(out, "dups", f->dups);
        put_u64(out, "malformed", f->malformed);
        put_u64(out, "kept", f->uids_kept);
        put_u64(out, "renum", f->uids_new);
        put_str(out, "uidnote", f->uid_note);
        put_u64(out, "failed", f->failed);
        put_u64(out, "flagsync", f->flags_synced);
        buf_puts(out, "\n");
        for (size_t k = 0; k < f->n_fails; k++) {
            /* The listing is bounded so the state always fits the job's data
             * (DIR_JOB_DATA_MAX); the counts stay exact. */
            if (out->len > IMPORT_STATE_FAILS_BUDGET)
                break;
            buf_puts(out, "X");
            put_str(out, "where", f->fails[k].where);
            put_str(out, "why", f->fails[k].why);
            buf_puts(out, "\n");
        }
    }
}

/* ---- reading ---- */

struct kv {
    const char *k;
    size_t kl;
    const char *v;
    size_t vl;
};

static bool key_is(const struct kv *kv, const char *k)
{
    return kv->kl == strlen(k) && memcmp(kv->k, k, kv->kl) == 0;
}

static int get_u64(const struct kv *kv, uint64_t *out)
{
    char b[24];
    if (kv->vl == 0 || kv->vl >= sizeof(b))
        return -1;
    memcpy(b, kv->v, kv->vl);
    b[kv->vl] = '\0';
    return parse_u64(b, UINT64_MAX, out);
}

static int get_str(const struct kv *kv, char *out, size_t cap)
{
    if (kv->vl == 1 && kv->v[0] == '-') {
        out[0] = '\0';
        return 0;
    }
    if (kv->vl == 0 || kv->vl % 2 != 0 || kv->vl / 2 >= cap || kv->vl >= STATE_LINE_MAX)
        return -1;
    /* hex_decode wants the digits to end the string: copy them out. */
    char tmp[STATE_LINE_MAX + 1];
    memcpy(tmp, kv->v, kv->vl);
    tmp[kv->vl] = '\0';
    if (hex_decode(tmp, out, kv->vl / 2) < 0)
        return -1;
    out[kv->vl / 2] = '\0';
    if (strlen(out) != kv->vl / 2)
        return -1; /* a NUL inside */
    return 0;
}

/* Splits "T k=v k=v" after its tag; calls set for each pair. */
static int each_kv(const char *line, size_t len, int (*set)(void *ctx, const struct kv *kv),
                   void *ctx)
{
    size_t i = 1;
    while (i < len) {
        if (line[i] != ' ')
            return -1;
        i++;
        size_t s = i;
        while (i < len && line[i] != ' ')
            i++;
        const char *eq = memchr(line + s, '=', i - s);
        if (eq == NULL || eq == line + s)
            return -1;
        struct kv kv = {line + s, (size_t)(eq - (line + s)), eq + 1, (size_t)(line + i - eq - 1)};
        if (set(ctx, &kv) < 0)
            return -1;
    }
    return 0;
}

static int set_S(void *ctx, const struct kv *kv)
{
    struct import_state *s = ctx;
    uint64_t v;
    if (key_is(kv, "watch")) {
        if (get_u64(kv, &v) < 0 || v > 1)
            return -1;
        s->set.watch = v == 1;
    } else if (key_is(kv, "poll")) {
        if (get_u64(kv, &v) < 0 || v == 0 || v > UINT32_MAX)
            return -1;
        s->set.poll = (unsigned)v;
    } else if (key_is(kv, "sweep")) {
        if (get_u64(kv, &s->set.sweep) < 0)
            return -1;
    } else if (key_is(kv, "secret")) {
        return get_str(kv, s->set.secret, sizeof(s->set.secret));
    } else if (key_is(kv, "cafile")) {
        return get_str(kv, s->set.ca_file, sizeof(s->set.ca_file));
    }
    return 0;
}

static int set_R(void *ctx, const struct kv *kv)
{
    struct import_state *s = ctx;
    uint64_t v;
    if (key_is(kv, "inflight")) {
        if (get_u64(kv, &v) < 0 || v > 1)
            return -1;
        s->inflight = v == 1;
    } else if (key_is(kv, "cutover")) {
        if (get_u64(kv, &v) < 0 || v > INT64_MAX)
            return -1;
        s->cutover = (int64_t)v;
    } else if (key_is(kv, "note")) {
        return get_str(kv, s->note, sizeof(s->note));
    }
    return 0;
}

static int set_F(void *ctx, const struct kv *kv)
{
    struct import_fstate *f = ctx;
    if (key_is(kv, "name"))
        return get_str(kv, f->name, sizeof(f->name));
    if (key_is(kv, "src"))
        return get_str(kv, f->src, sizeof(f->src));
    if (key_is(kv, "tail"))
        return get_str(kv, f->tail, sizeof(f->tail));
    if (key_is(kv, "uidnote"))
        return get_str(kv, f->uid_note, sizeof(f->uid_note));
    static const char *const nums[] = {
        "seen", "cp",        "uv",    "unext",  "modseq",  "fmt",      "size",
        "ino",  "mtime",     "smsgs", "sbytes", "already", "imported", "stragglers",
        "dups", "malformed", "kept",  "renum",  "failed",  "flagsync",
    };
    size_t k;
    for (k = 0; k < ARRAY_SIZE(nums); k++)
        if (key_is(kv, nums[k]))
            break;
    if (k == ARRAY_SIZE(nums))
        return 0; /* unknown: ignored */
    uint64_t v;
    if (get_u64(kv, &v) < 0)
        return -1;
    switch (k) {
    case 0:
        f->seen = v != 0;
        break;
    case 1:
        f->cp = v;
        break;
    case 2:
        if (v > UINT32_MAX)
            return -1;
        f->uidvalidity = (uint32_t)v;
        break;
    case 3:
        if (v > UINT32_MAX)
            return -1;
        f->uidnext = (uint32_t)v;
        break;
    case 4:
        f->modseq = v;
        break;
    case 5:
        if (v > 16)
            return -1;
        f->mbox_format = (int)v;
        break;
    case 6:
        f->size = v;
        break;
    case 7:
        f->ino = v;
        break;
    case 8:
        if (v > INT64_MAX)
            return -1;
        f->mtime_ns = (int64_t)v;
        break;
    case 9:
        f->src_msgs = v;
        break;
    case 10:
        f->src_bytes = v;
        break;
    case 11:
        f->already = v;
        break;
    case 12:
        f->imported = v;
        break;
    case 13:
        f->stragglers = v;
        break;
    case 14:
        f->dups = v;
        break;
    case 15:
        f->malformed = v;
        break;
    case 16:
        f->uids_kept = v;
        break;
    case 17:
        f->uids_new = v;
        break;
    case 18:
        f->failed = v;
        break;
    case 19:
        f->flags_synced = v;
        break;
    }
    return 0;
}

static int set_X(void *ctx, const struct kv *kv)
{
    struct import_fail *x = ctx;
    if (key_is(kv, "where"))
        return get_str(kv, x->where, sizeof(x->where));
    if (key_is(kv, "why"))
        return get_str(kv, x->why, sizeof(x->why));
    return 0;
}

int import_state_read(struct import_state *s, const char *p, size_t len, const char **error_r)
{
    import_state_free(s);
    import_state_init(s);
    size_t i = 0;
    bool magic = false;
    struct import_fstate *cur = NULL;
    while (i < len) {
        const char *nl = memchr(p + i, '\n', len - i);
        if (nl == NULL) {
            *error_r = "import state: last line unterminated";
            goto bad;
        }
        const char *line = p + i;
        size_t ll = (size_t)(nl - line);
        i += ll + 1;
        if (ll > STATE_LINE_MAX) {
            *error_r = "import state: line too long";
            goto bad;
        }
        if (!magic) {
            if (ll != strlen(IMPORT_STATE_MAGIC) || memcmp(line, IMPORT_STATE_MAGIC, ll) != 0) {
                *error_r = "import state: not written by this version";
                goto bad;
            }
            magic = true;
            continue;
        }
        int r = -1;
        if (ll == 0) {
            r = 0;
        } else if (line[0] == 'S') {
            r = each_kv(line, ll, set_S, s);
        } else if (line[0] == 'R') {
            r = each_kv(line, ll, set_R, s);
        } else if (line[0] == 'F') {
            if (s->n >= IMPORT_FOLDERS_MAX) {
                *error_r = "import state: too many folders";
                goto bad;
            }
            struct import_fstate f;
            memset(&f, 0, sizeof(f));
            r = each_kv(line, ll, set_F, &f);
            if (r == 0) {
                if (f.name[0] == '\0') {
                    *error_r = "import state: a folder without a name";
                    goto bad;
                }
                for (size_t k = 0; k < s->n; k++)
                    if (strcmp(s->f[k].name, f.name) == 0) {
                        *error_r = "import state: a folder twice";
                        goto bad;
                    }
                uint64_t failed = f.failed;
                cur = import_state_folder(s, f.name);
                *cur = f;
                cur->failed = failed;
                cur->fails = NULL;
                cur->n_fails = 0;
            }
        } else if (line[0] == 'X') {
            struct import_fail x;
            memset(&x, 0, sizeof(x));
            r = each_kv(line, ll, set_X, &x);
            if (r == 0) {
                if (cur == NULL || cur->n_fails >= IMPORT_FAILS_KEPT) {
                    *error_r = "import state: a failure out of place";
                    goto bad;
                }
                cur->fails = xrealloc(cur->fails, (cur->n_fails + 1) * sizeof(*cur->fails));
                cur->fails[cur->n_fails++] = x;
            }
        }
        if (r < 0) {
            *error_r = "import state: malformed line";
            goto bad;
        }
    }
    if (!magic) {
        *error_r = "import state: empty";
        goto bad;
    }
    return 0;
bad:
    import_state_free(s);
    import_state_init(s);
    return -1;
}
