/*
 * imap_parse — the argument parser (see imap.h, part 2).
 *
 * One pass over the framed command, without recursion: a stack of pending
 * argument nodes, and per open list the stack index where its elements
 * begin. When a list closes, its elements move from the stack into the
 * node array as one contiguous run, which is what struct imap_arg's
 * list/n needs. Nodes and strings refer to each other by index while the
 * arrays may still grow; the struct imap_arg tree handed out is built from
 * them at the end, so no pointer ever points into memory that moved.
 *
 * The text is scanned in segments that end where the next literal's
 * announcement starts: no scanner but the literal one can step onto a
 * literal, so its octets are never read as text.
 */
#include "imap/imap_private.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* A string arena that held a large literal is released rather than kept. */
#define PARSER_KEEP_CAP (256 * 1024)

struct pnode {
    enum imap_arg_type type;
    bool literal8;
    size_t str, len; /* ATOM/STRING/LITERAL/NIL: offset in the arena */
    size_t first, n; /* LIST: its elements in nodes[] */
};

struct imap_parser {
    struct imap_limits lim;
    struct pnode *nodes; /* final places */
    size_t n_nodes, cap_nodes;
    struct pnode *stack; /* elements of the lists still open */
    size_t n_stack, cap_stack;
    size_t *base; /* per depth: where its elements begin in stack */
    struct imap_arg *out;
    size_t cap_out;
    struct buf str; /* every string, NUL-terminated */
};

/* The parse of one command. */
struct pstate {
    struct imap_parser *p;
    const struct imap_framed *f;
    size_t pos;
    size_t li;      /* the next literal record */
    size_t seg_end; /* where the next literal's announcement starts */
    unsigned count; /* nodes so far, against args_max */
    const char *error;
};

struct imap_parser *imap_parser_new(const struct imap_limits *limits)
{
    ASSERT(limits != NULL);
    ASSERT(limits->depth_max > 0 && limits->args_max > 0);
    struct imap_parser *p = xmalloc(sizeof(*p));
    p->lim = *limits;
    p->base = xcalloc((size_t)p->lim.depth_max + 1, sizeof(*p->base));
    buf_init(&p->str, 0);
    return p;
}

void imap_parser_free(struct imap_parser **pp)
{
    struct imap_parser *p = *pp;
    if (p == NULL)
        return;
    free(p->nodes);
    free(p->stack);
    free(p->base);
    free(p->out);
    buf_free(&p->str);
    xfree(pp);
}

static void set_segment(struct pstate *s)
{
    s->seg_end = s->li < s->f->n_lits ? s->f->lits[s->li].start : s->f->len;
}

static const struct imap_lit *literal_here(const struct pstate *s)
{
    if (s->li < s->f->n_lits && s->f->lits[s->li].start == s->pos)
        return &s->f->lits[s->li];
    return NULL;
}

static size_t str_add(struct imap_parser *p, const char *data, size_t len)
{
    size_t off = p->str.len;
    if (buf_append(&p->str, data, len) < 0 || buf_append(&p->str, "", 1) < 0)
        panic("imap: string arena refused %zu octets", len);
    return off;
}

static struct pnode *stack_add(struct imap_parser *p, enum imap_arg_type type)
{
    if (p->n_stack == p->cap_stack) {
        p->cap_stack = p->cap_stack == 0 ? 16 : p->cap_stack * 2;
        p->stack = xrealloc(p->stack, p->cap_stack * sizeof(*p->stack));
    }
    struct pnode *nd = &p->stack[p->n_stack++];
    memset(nd, 0, sizeof(*nd));
    nd->type = type;
    return nd;
}

/* Counts one more argument node against args_max. */
static int count_node(struct pstate *s)
{
    if (s->count >= s->p->lim.args_max) {
        s->error = "too many arguments";
        return -1;
    }
    s->count++;
    return 0;
}

static struct pnode *push(struct pstate *s, enum imap_arg_type type)
{
    return count_node(s) < 0 ? NULL : stack_add(s->p, type);
}

/* Moves the stack's elements from index `from` to the node array; returns
 * where they start there. */
static size_t settle(struct imap_parser *p, size_t from)
{
    size_t n = p->n_stack - from;
    if (p->n_nodes + n > p->cap_nodes) {
        size_t cap = p->cap_nodes == 0 ? 16 : p->cap_nodes;
        while (cap < p->n_nodes + n)
            cap *= 2;
        p->nodes = xrealloc(p->nodes, cap * sizeof(*p->nodes));
        p->cap_nodes = cap;
    }
    size_t first = p->n_nodes;
    if (n > 0)
        memcpy(p->nodes + first, p->stack + from, n * sizeof(*p->nodes));
    p->n_nodes += n;
    p->n_stack = from;
    return first;
}

static const char *ctl_error(unsigned char c)
{
    if (c == '\0')
        return "NUL in command";
    if (c == '\r' || c == '\n')
        return "CR or LF in command";
    if (c >= 0x80)
        return "8-bit octet in command (use a literal)";
    return "control character in command";
}

/* "[" ... "]" inside an atom: any printable 7-bit text, quoted strings
 * included (header-fld-name is an astring), up to the matching "]". */
static int parse_bracket(struct pstate *s)
{
    const char *d = s->f->data;
    bool in_quote = false, escape = false;
    s->pos++; /* '[' */
    while (s->pos < s->seg_end) {
        unsigned char c = (unsigned char)d[s->pos];
        if (c < 0x20 || c >= 0x7f) {
            s->error = ctl_error(c);
            return -1;
        }
        s->pos++;
        if (in_quote) {
            if (escape)
                escape = false;
            else if (c == '\\')
                escape = true;
            else if (c == '"')
                in_quote = false;
        } else if (c == '"') {
            in_quote = true;
        } else if (c == '[') {
            s->error = "nested '[' in atom";
            return -1;
        } else if (c == ']') {
            return 0;
        }
    }
    if (literal_here(s) != NULL)
        s->error = "literal inside [...] is not supported";
    else if (in_quote)
        s->error = "unterminated quoted string";
    else
        s->error = "missing ']'";
    return -1;
}

static int parse_atom(struct pstate *s)
{
    const char *d = s->f->data;
    size_t start = s->pos;
    bool bracket = false;
    if (d[s->pos] == '\\') {
        /* flag = "\" atom, flag-perm "\*" */
        s->pos++;
        if (s->pos < s->seg_end && d[s->pos] == '*') {
            s->pos++;
        } else if (s->pos >= s->seg_end || !imap_is_atom_char((unsigned char)d[s->pos])) {
            s->error = "'\\' must start a flag name";
            return -1;
        }
    }
    while (s->pos < s->seg_end) {
        unsigned char c = (unsigned char)d[s->pos];
        if (c == '[') {
            bracket = true;
            if (parse_bracket(s) < 0)
                return -1;
            continue;
        }
        if (imap_is_atom_char(c) || c == '%' || c == '*' || c == ']') {
            s->pos++;
            continue;
        }
        if (c == ' ' || c == '(' || c == ')' || c == '"' || c == '{')
            break; /* the caller judges what follows */
        if (c == '\\') {
            s->error = "'\\' inside an atom";
            return -1;
        }
        s->error = ctl_error(c);
        return -1;
    }
    size_t len = s->pos - start;
    if (len == 0) {
        s->error = "unexpected character";
        return -1;
    }
    bool nil = !bracket && len == 3 && strncasecmp(d + start, "NIL", 3) == 0;
    struct pnode *nd = push(s, nil ? IMAP_ARG_NIL : IMAP_ARG_ATOM);
    if (nd == NULL)
        return -1;
    nd->str = str_add(s->p, d + start, len);
    nd->len = len;
    return 0;
}

/* quoted = DQUOTE *QUOTED-CHAR DQUOTE; the only escapes are \\ and \". */
static int parse_quoted(struct pstate *s)
{
    const char *d = s->f->data;
    struct imap_parser *p = s->p;
    size_t off = p->str.len;
    s->pos++; /* '"' */
    size_t run = s->pos;
    for (;;) {
        if (s->pos >= s->seg_end) {
            s->error = "unterminated quoted string";
            return -1;
        }
        unsigned char c = (unsigned char)d[s->pos];
        if (c == '"' || c == '\\') {
            if (buf_append(&p->str, d + run, s->pos - run) < 0)
                panic("imap: string arena refused a quoted string");
            if (c == '"') {
                s->pos++;
                break;
            }
            if (s->pos + 1 >= s->seg_end) {
                s->error = "unterminated quoted string";
                return -1;
            }
            char e = d[s->pos + 1];
            if (e != '"' && e != '\\') {
                s->error = "invalid escape in quoted string (only \\\\ and \\\")";
                return -1;
            }
            if (buf_append(&p->str, &e, 1) < 0)
                panic("imap: string arena refused a quoted string");
            s->pos += 2;
            run = s->pos;
            continue;
        }
        if (c == '\0') {
            s->error = "NUL in quoted string";
            return -1;
        }
        if (c == '\r' || c == '\n') {
            s->error = "CR or LF in quoted string";
            return -1;
        }
        if (c >= 0x80) {
            s->error = "8-bit octet in quoted string (use a literal)";
            return -1;
        }
        s->pos++;
    }
    size_t len = p->str.len - off;
    if (buf_append(&p->str, "", 1) < 0)
        panic("imap: string arena refused a quoted string");
    struct pnode *nd = push(s, IMAP_ARG_STRING);
    if (nd == NULL)
        return -1;
    nd->str = off;
    nd->len = len;
    return 0;
}

static int parse_literal(struct pstate *s, const struct imap_lit *lit)
{
    /* The reader's framing, checked where it is relied on. */
    ASSERT(lit->start < lit->data && lit->data <= s->f->len && lit->len <= s->f->len - lit->data);
    struct pnode *nd = push(s, IMAP_ARG_LITERAL);
    if (nd == NULL)
        return -1;
    nd->str = str_add(s->p, s->f->data + lit->data, lit->len);
    nd->len = lit->len;
    nd->literal8 = lit->binary;
    s->pos = lit->data + lit->len;
    s->li++;
    set_segment(s);
    return 0;
}

static void skip_spaces(struct pstate *s)
{
    while (s->pos < s->seg_end && s->f->data[s->pos] == ' ')
        s->pos++;
}

/* tag SP name: fills cmd->tag as soon as a valid tag was read. */
static int parse_head(struct pstate *s, struct imap_command *cmd)
{
    const char *d = s->f->data;
    size_t start = s->pos;
    while (s->pos < s->seg_end && imap_is_tag_char((unsigned char)d[s->pos]))
        s->pos++;
    size_t len = s->pos - start;
    if (len == 0) {
        s->error = s->f->len == 0                           ? "empty command"
                   : s->pos < s->f->len && d[s->pos] == ' ' ? "missing tag"
                                                            : "invalid tag";
        return -1;
    }
    if (s->pos < s->f->len && d[s->pos] != ' ') {
        s->error = "invalid tag";
        return -1;
    }
    if (len > IMAP_TAG_MAX) {
        s->error = "tag too long";
        return -1;
    }
    memcpy(cmd->tag, d + start, len);
    cmd->tag[len] = '\0';
    skip_spaces(s);
    start = s->pos;
    while (s->pos < s->seg_end &&
           ((d[s->pos] >= 'A' && d[s->pos] <= 'Z') || (d[s->pos] >= 'a' && d[s->pos] <= 'z')))
        s->pos++;
    len = s->pos - start;
    if (len == 0 && s->pos >= s->f->len) {
        s->error = "missing command name";
        return -1;
    }
    if (len == 0 || (s->pos < s->f->len && d[s->pos] != ' ')) {
        s->error = "invalid command name";
        return -1;
    }
    if (len >= sizeof(cmd->name)) {
        s->error = "command name too long";
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        char c = d[start + i];
        cmd->name[i] = c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : c;
    }
    cmd->name[len] = '\0';
    return 0;
}

/* The arguments after the name, up to the end of the command. */
static int parse_args(struct pstate *s)
{
    struct imap_parser *p = s->p;
    const char *d = s->f->data;
    unsigned depth = 0;
    p->base[0] = p->n_stack;
    /* After the name, and after every argument but "(", a separator (one
     * or more SP, or a closing ")") must come before the next one. */
    bool need_space = true;
    for (;;) {
        size_t before = s->pos;
        skip_spaces(s);
        bool spaced = s->pos > before;
        if (s->pos >= s->f->len) {
            if (depth > 0) {
                s->error = "unbalanced parenthesis: missing ')'";
                return -1;
            }
            return 0;
        }
        const struct imap_lit *lit = literal_here(s);
        unsigned char c = (unsigned char)d[s->pos];
        if (lit == NULL && c == ')') {
            if (depth == 0) {
                s->error = "unbalanced parenthesis: unexpected ')'";
                return -1;
            }
            size_t from = p->base[depth];
            size_t n = p->n_stack - from;
            size_t first = settle(p, from);
            depth--;
            /* The list node itself was counted when "(" opened it. */
            struct pnode *nd = stack_add(p, IMAP_ARG_LIST);
            nd->first = first;
            nd->n = n;
            s->pos++;
            need_space = true;
            continue;
        }
        if (need_space && !spaced) {
            s->error = "missing space between arguments";
            return -1;
        }
        if (lit != NULL) {
            if (parse_literal(s, lit) < 0)
                return -1;
        } else if (c == '(') {
            if (depth >= p->lim.depth_max) {
                s->error = "nesting too deep";
                return -1;
            }
            if (count_node(s) < 0)
                return -1;
            p->base[++depth] = p->n_stack;
            s->pos++;
            need_space = false;
            continue;
        } else if (c == '"') {
            if (parse_quoted(s) < 0)
                return -1;
        } else if (c == '{' || (c == '~' && s->pos + 1 < s->f->len && d[s->pos + 1] == '{')) {
            s->error = "a literal must end its line";
            return -1;
        } else {
            if (parse_atom(s) < 0)
                return -1;
        }
        need_space = true;
    }
}

/* Builds the struct imap_arg tree from the nodes. */
static void build(struct imap_parser *p, size_t args_first, size_t n_args, struct imap_command *cmd)
{
    if (p->n_nodes > p->cap_out) {
        free(p->out);
        p->cap_out = p->n_nodes;
        p->out = xcalloc(p->cap_out, sizeof(*p->out));
    }
    for (size_t i = 0; i < p->n_nodes; i++) {
        const struct pnode *nd = &p->nodes[i];
        struct imap_arg *a = &p->out[i];
        memset(a, 0, sizeof(*a));
        a->type = nd->type;
        a->literal8 = nd->literal8;
        if (nd->type == IMAP_ARG_LIST) {
            a->list = nd->n > 0 ? &p->out[nd->first] : NULL;
            a->n = nd->n;
            a->str = "";
        } else {
            a->str = p->str.data + nd->str;
            a->len = nd->len;
        }
    }
    cmd->args = n_args > 0 ? &p->out[args_first] : NULL;
    cmd->n_args = n_args;
}

int imap_parse(struct imap_parser *p, const struct imap_framed *f, struct imap_command *cmd,
               const char **error_r)
{
    memset(cmd, 0, sizeof(*cmd));
    p->n_nodes = p->n_stack = 0;
    if (p->str.cap > PARSER_KEEP_CAP)
        buf_free(&p->str);
    buf_reset(&p->str);
    struct pstate s = {.p = p, .f = f};
    set_segment(&s);
    if (parse_head(&s, cmd) < 0 || parse_args(&s) < 0) {
        *error_r = s.error;
        cmd->name[0] = '\0';
        return -1;
    }
    /* Every literal was taken as an argument: a record is only ever passed
     * by parse_literal(), and the text ended. */
    ASSERT(s.li == f->n_lits);
    size_t n_args = p->n_stack;
    size_t first = settle(p, 0);
    build(p, first, n_args, cmd);
    return 0;
}

int imap_parse_text(struct imap_parser *p, const char *text, size_t len, struct imap_command *cmd,
                    const char **error_r)
{
    struct imap_framed f = {.data = text, .len = len};
    return imap_parse(p, &f, cmd, error_r);
}

bool imap_arg_astring(const struct imap_arg *a, const char **s_r, size_t *len_r)
{
    switch (a->type) {
    case IMAP_ARG_ATOM:
    case IMAP_ARG_NIL:
        for (size_t i = 0; i < a->len; i++)
            if (!imap_is_astring_char((unsigned char)a->str[i]))
                return false;
        break;
    case IMAP_ARG_STRING:
    case IMAP_ARG_LITERAL:
        break;
    case IMAP_ARG_LIST:
        return false;
    }
    *s_r = a->str;
    *len_r = a->len;
    return true;
}

bool imap_arg_atom_is(const struct imap_arg *a, const char *word)
{
    return (a->type == IMAP_ARG_ATOM || a->type == IMAP_ARG_NIL) && strlen(word) == a->len &&
           strncasecmp(a->str, word, a->len) == 0;
}
