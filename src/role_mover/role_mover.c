/* role_mover — see role_mover.h. */
#include "role_mover/role_mover.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "directory/directory.h"
#include "import/import.h"
#include "move/move.h"
#include "sync/sync.h"
#include "util/util.h"

#define SCAN_MS    200  /* how often the directory is scanned for jobs */
#define REVISIT_MS 1000 /* a job that has to wait is run again after this */
#define SLOTS_MAX  256

struct slot {
    struct mover *m;
    uint64_t job;
    enum dir_job_kind kind;
    int64_t not_before; /* mono ms: when a waiting job may run again */
    atomic_bool busy;
    pthread_t thread;
};

struct mover {
    const struct config *cfg;
    char owner[DIR_LEASE_OWNER_MAX + 1];
    struct slot slots[SLOTS_MAX];
    struct {
        uint64_t job;
        int64_t not_before;
    } wait[SLOTS_MAX]; /* recently deferred jobs */
};

static volatile sig_atomic_t stopping;

static void on_signal(int sig)
{
    (void)sig;
    stopping = 1;
}

static struct sync *connect_store(void *ctx, const char *store, char *err, size_t errlen)
{
    const struct config *cfg = ctx;
    const struct config_store *cs = config_store(cfg, store);
    if (cs == NULL || cs->sync[0] == '\0') {
        snprintf(err, errlen, "store %s has no sync endpoint in the configuration", store);
        return NULL;
    }
    /* No single call may outlast the lease by much: half of it, at least 1 s. */
    unsigned t = cfg->mover.lease_ms / 2 > 1000 ? cfg->mover.lease_ms / 2 : 1000;
    return sync_tcp_connect(cs->sync, t, err, errlen);
}

static bool mover_stopping(void *ctx)
{
    (void)ctx;
    return stopping != 0;
}

/* Import jobs (import.h) through the same leases and slots as moves. */
static enum move_result import_run_for_mover(const struct move_env *me, uint64_t msg_max,
                                             uint64_t id)
{
    struct import_env env = {.dir = me->dir,
                             .connect = me->connect,
                             .ctx = me->ctx,
                             .owner = me->owner,
                             .lease_ms = me->lease_ms,
                             .msg_max = msg_max,
                             .stopping = mover_stopping};
    enum import_result r = import_run(&env, id);
    return r == IMPORT_FINISHED ? MOVE_FINISHED : r == IMPORT_LOST ? MOVE_LOST : MOVE_LATER;
}

static void *slot_main(void *arg)
{
    struct slot *s = arg;
    struct mover *m = s->m;
    const char *error;
    struct directory *dir = dir_open_sqlite(m->cfg->directory, &error);
    enum move_result r = MOVE_LATER;
    if (dir != NULL) {
        struct move_env env = {.dir = dir,
                               .connect = connect_store,
                               .ctx = (void *)m->cfg,
                               .owner = m->owner,
                               .lease_ms = m->cfg->mover.lease_ms,
                               .retention = m->cfg->mover.retention,
                               .cutover_budget_ms = m->cfg->mover.cutover_budget_ms,
                               .catchup_delta = m->cfg->mover.catchup_delta};
        if (s->kind == DIR_JOB_IMPORT)
            r = import_run_for_mover(&env, m->cfg->lmtp.max_message_size, s->job);
        else
            r = move_run(&env, s->job);
        dir_close(&dir);
    }
    s->not_before = r == MOVE_FINISHED || r == MOVE_LOST ? 0 : time_mono_ms() + REVISIT_MS;
    atomic_store(&s->busy, false);
    return NULL;
}

static bool running(struct mover *m, uint64_t id)
{
    for (unsigned i = 0; i < m->cfg->mover.parallel && i < SLOTS_MAX; i++)
        if (atomic_load(&m->slots[i].busy) && m->slots[i].job == id)
            return true;
    return false;
}

/* A job that had to wait is not claimed again before its time. */
static bool deferred(struct mover *m, uint64_t id)
{
    int64_t now = time_mono_ms();
    for (unsigned i = 0; i < SLOTS_MAX; i++)
        if (m->wait[i].job == id && m->wait[i].not_before > now)
            return true;
    return false;
}

static void remember_wait(struct mover *m, uint64_t id, int64_t not_before)
{
    unsigned free_i = 0;
    for (unsigned i = 0; i < SLOTS_MAX; i++) {
        if (m->wait[i].job == id) {
            m->wait[i].not_before = not_before;
            return;
        }
        if (m->wait[i].not_before < m->wait[free_i].not_before)
            free_i = i;
    }
    m->wait[free_i].job = id;
    m->wait[free_i].not_before = not_before;
}

int role_mover_main(const struct config *cfg)
{
    log_init("mover");
    struct mover *m = xmalloc(sizeof(*m));
    m->cfg = cfg;
    char host[40] = "host";
    gethostname(host, sizeof(host) - 1);
    snprintf(m->owner, sizeof(m->owner), "mover@%s:%d", host, (int)getpid());
    const char *error;
    struct directory *dir = dir_open_sqlite(cfg->directory, &error);
    if (dir == NULL)
        fatal("cannot open directory %s: %s", cfg->directory, error);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    struct move_env env = {.dir = dir, .owner = m->owner, .lease_ms = cfg->mover.lease_ms};
    unsigned parallel = cfg->mover.parallel < SLOTS_MAX ? cfg->mover.parallel : SLOTS_MAX;
    log_info("mover", "running as %s, %u job(s) at once", m->owner, parallel);

    while (!stopping) {
        /* Collect finished slots and their wishes to come back later. */
        for (unsigned i = 0; i < parallel; i++) {
            struct slot *s = &m->slots[i];
            if (s->job != 0 && !atomic_load(&s->busy)) {
                pthread_join(s->thread, NULL);
                if (s->not_before != 0)
                    remember_wait(m, s->job, s->not_before);
                s->job = 0;
            }
        }
        struct dir_job *jobs = NULL;
        size_t n = 0;
        if (dir_job_list(dir, &jobs, &n) == DIR_OK) {
            /* Oldest first: the list comes newest first. */
            for (size_t k = n; k-- > 0 && !stopping;) {
                struct dir_job *j = &jobs[k];
                if (j->kind == DIR_JOB_IMPORT
                        ? !import_job_due(j, time_now_ms())
                        : (j->kind != DIR_JOB_MOVE ||
                           (!move_phase_active(j->phase) && strcmp(j->phase, "aborting") != 0)))
                    continue;
                if (strcmp(j->phase, "retention") == 0 && time_now_ms() / 1000 < j->retain_until)
                    continue;
                if (running(m, j->id) || deferred(m, j->id))
                    continue;
                unsigned i;
                for (i = 0; i < parallel; i++)
                    if (m->slots[i].job == 0)
                        break;
                if (i == parallel)
                    break; /* all busy */
                if (move_claim(&env, j->id) != 0)
                    continue;
                struct slot *s = &m->slots[i];
                s->m = m;
                s->job = j->id;
                s->kind = j->kind;
                s->not_before = 0;
                atomic_store(&s->busy, true);
                if (pthread_create(&s->thread, NULL, slot_main, s) != 0) {
                    atomic_store(&s->busy, false);
                    s->job = 0;
                }
            }
            free(jobs);
        }
        usleep(SCAN_MS * 1000);
    }
    log_info("mover", "stopping: waiting for running jobs to reach a safe point");
    for (unsigned i = 0; i < parallel; i++)
        if (m->slots[i].job != 0)
            pthread_join(m->slots[i].thread, NULL);
    dir_close(&dir);
    free(m);
    return 0;
}
