/* doctor — see doctor.h. */
#include "doctor/doctor.h"

#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "directory/directory.h"
#include "move/move.h"
#include "store/store.h"
#include "util/util.h"

#define STUCK_MS 60000

struct doc {
    const struct config *cfg;
    FILE *out;
    int problems;
    struct dir_user *users;
    size_t n_users;
    struct dir_job *jobs;
    size_t n_jobs;
};

static void problem(struct doc *d, const char *fmt, ...) TERN_PRINTF(2, 3);
static void problem(struct doc *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("problem: ", d->out);
    vfprintf(d->out, fmt, ap);
    fputc('\n', d->out);
    va_end(ap);
    d->problems++;
}

static const struct dir_user *user_of(const struct doc *d, const char *addr)
{
    for (size_t i = 0; i < d->n_users; i++)
        if (strcmp(d->users[i].address, addr) == 0)
            return &d->users[i];
    return NULL;
}

/* A job that is still working on this user (or keeps its old copy). */
static const struct dir_job *job_for(const struct doc *d, const char *user, bool with_retention)
{
    for (size_t i = 0; i < d->n_jobs; i++) {
        const struct dir_job *j = &d->jobs[i];
        if (strcmp(j->user, user) != 0)
            continue;
        if (!dir_job_phase_final(j->phase) || strcmp(j->phase, "aborting") == 0 ||
            (with_retention && strcmp(j->phase, "retention") == 0))
            return j;
    }
    return NULL;
}

static void check_store(struct doc *d, const struct config_store *cs)
{
    char path[PATH_MAX];
    struct stat sb;
    snprintf(path, sizeof(path), "%s/stores/%s", d->cfg->data_dir, cs->name);
    if (stat(path, &sb) < 0) {
        fprintf(d->out, "store %s: no data on this host (%s), not checked\n", cs->name, path);
        return;
    }
    const char *error;
    struct store *st = store_open_fs(path, cs->name, &error);
    if (st == NULL) {
        problem(d, "store %s cannot be opened: %s", cs->name, error);
        return;
    }
    struct store_mailbox *mb;
    size_t n;
    if (store_mailbox_list(st, &mb, &n) != STORE_OK) {
        problem(d, "store %s: cannot list mailboxes", cs->name);
        store_close(&st);
        return;
    }
    fprintf(d->out, "store %s: %zu mailbox(es)\n", cs->name, n);
    for (size_t i = 0; i < n; i++) {
        const struct store_mailbox *m = &mb[i];
        const struct dir_user *u = user_of(d, m->user);
        bool live = m->state == STORE_MBOX_ACTIVE || m->state == STORE_MBOX_STAGED ||
                    m->state == STORE_MBOX_FENCED;
        if (u == NULL) {
            problem(d, "%s on %s (%s): not in the directory; kept", m->user, cs->name,
                    store_mbox_state_str(m->state));
            continue;
        }
        bool home = strcmp(u->home, cs->name) == 0;
        const struct dir_job *j = job_for(d, m->user, !home);
        if (home && m->state == STORE_MBOX_ACTIVE && m->epoch != u->epoch)
            problem(d, "%s on %s: active at epoch %llu, the directory says %llu", m->user, cs->name,
                    (unsigned long long)m->epoch, (unsigned long long)u->epoch);
        if (home && m->state != STORE_MBOX_ACTIVE && j == NULL)
            problem(d, "%s on its home %s is %s and no job is running", m->user, cs->name,
                    store_mbox_state_str(m->state));
        if (!home && live && j == NULL)
            problem(d, "%s has a %s mailbox on %s but lives on %s: a mailbox on two stores",
                    m->user, store_mbox_state_str(m->state), cs->name, u->home);
    }
    /* Users homed here must have their mailbox here once they have moved. */
    for (size_t k = 0; k < d->n_users; k++) {
        const struct dir_user *u = &d->users[k];
        if (strcmp(u->home, cs->name) != 0 || u->epoch <= 1)
            continue;
        bool found = false;
        for (size_t i = 0; i < n && !found; i++)
            found = strcmp(mb[i].user, u->address) == 0;
        if (!found)
            problem(d, "%s is homed on %s at epoch %llu but has no mailbox there", u->address,
                    cs->name, (unsigned long long)u->epoch);
    }
    free(mb);
    store_close(&st);
}

static void check_jobs(struct doc *d, struct directory *dir, bool repair)
{
    int64_t now = time_now_ms();
    for (size_t i = 0; i < d->n_jobs; i++) {
        struct dir_job j = d->jobs[i];
        if (!move_phase_active(j.phase) && strcmp(j.phase, "aborting") != 0)
            continue;
        if (strcmp(j.phase, "retention") == 0 && now / 1000 < j.retain_until)
            continue;
        /* A mover unfences a cutover over its budget when it resumes the
         * job; one that keeps the source fenced far longer is stuck there,
         * and the user's mail is parked meanwhile. */
        int64_t fenced_ms = j.fenced_at > 0 ? now - j.fenced_at : 0;
        if (move_phase_abortable(j.phase) &&
            fenced_ms > (int64_t)d->cfg->mover.cutover_budget_ms + STUCK_MS)
            problem(d,
                    "job %llu (%s, phase %s) has kept the source %s fenced for %llds (cutover "
                    "budget %u ms)",
                    (unsigned long long)j.id, j.user, j.phase, j.source,
                    (long long)(fenced_ms / 1000), d->cfg->mover.cutover_budget_ms);
        if (j.lease_owner[0] == '\0' || j.lease_expires + STUCK_MS > now)
            continue;
        problem(d, "job %llu (%s, phase %s) is stuck: lease of %s expired %llds ago",
                (unsigned long long)j.id, j.user, j.phase, j.lease_owner,
                (long long)((now - j.lease_expires) / 1000));
        if (!repair)
            continue;
        /* Resume: clear the lease so any mover claims it at its phase. */
        j.lease_owner[0] = '\0';
        j.lease_expires = 0;
        if (dir_job_update(dir, &j) == DIR_OK)
            fprintf(d->out, "repair: job %llu released; a mover resumes it at %s\n",
                    (unsigned long long)j.id, j.phase);
    }
}

int doctor_run(const struct config *cfg, bool repair, FILE *out)
{
    const char *error;
    struct directory *dir = dir_open_sqlite(cfg->directory, &error);
    if (dir == NULL) {
        fprintf(out, "cannot open the directory: %s\n", error);
        return -1;
    }
    struct doc d = {.cfg = cfg, .out = out};
    if (dir_user_list(dir, &d.users, &d.n_users) != DIR_OK ||
        dir_job_list(dir, &d.jobs, &d.n_jobs) != DIR_OK) {
        fprintf(out, "cannot read the directory\n");
        dir_close(&dir);
        return -1;
    }
    fprintf(out, "directory: %zu user(s), %zu job(s)\n", d.n_users, d.n_jobs);
    for (size_t i = 0; i < cfg->n_stores; i++)
        check_store(&d, &cfg->stores[i]);
    check_jobs(&d, dir, repair);
    fprintf(out,
            d.problems == 0 ? "doctor: everything is consistent\n"
                            : "doctor: %d problem(s) found; nothing was deleted\n",
            d.problems);
    free(d.users);
    free(d.jobs);
    dir_close(&dir);
    return d.problems;
}
