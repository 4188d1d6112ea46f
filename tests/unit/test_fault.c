/*
 * test_fault — util's fault injection (TERN_FAULT), which the crash and
 * fault-matrix tests rely on: which call fails for each spec, role scoping,
 * arming by a file, lists, malformed entries, and (in child processes) the
 * crash and pause points with their once-markers.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util/util.h"

static char tmpdir[64];

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/tern-test-fault-XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[sizeof(tmpdir) + 16];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    assert_int_equal(system(cmd), 0);
    return 0;
}

static void path_in_tmp(char *out, size_t len, const char *name)
{
    snprintf(out, len, "%s/%s", tmpdir, name);
}

static void clear_env(void)
{
    unsetenv("TERN_FAULT");
    unsetenv("TERN_FAULT_ONCE");
    unsetenv("TERN_FAULT_ARMED");
    unsetenv("TERN_FAULT_PAUSE");
}

/* Which of `calls` fsyncs and writes fail: a string of '.' and 'F'. */
static void run_calls(int calls, char *fsyncs, char *writes)
{
    char path[PATH_MAX];
    path_in_tmp(path, sizeof(path), "file");
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    for (int i = 0; i < calls; i++) {
        fsyncs[i] = util_fsync(fd, "test") < 0 ? 'F' : '.';
        writes[i] = write_full(fd, "x", 1) < 0 ? 'F' : '.';
    }
    fsyncs[calls] = writes[calls] = '\0';
    close(fd);
}

/* spec with "fsync:+K" / "write:+K" made absolute: the process's count of
 * such calls so far plus K (fsync:N is the process's Nth fsync). */
static void expand(const char *spec, char *out, size_t outlen)
{
    out[0] = '\0';
    size_t n = 0;
    for (const char *p = spec; *p != '\0' && n + 32 < outlen;) {
        const char *kinds[] = {"fsync:+", "write:+"};
        size_t k;
        for (k = 0; k < 2; k++)
            if (strncmp(p, kinds[k], 7) == 0)
                break;
        if (k < 2) {
            char *end;
            unsigned long rel = strtoul(p + 7, &end, 10);
            uint64_t base = k == 0 ? util_fsync_count() : util_write_count();
            n += (size_t)snprintf(out + n, outlen - n, "%.6s%llu", kinds[k],
                                  (unsigned long long)(base + rel));
            p = end;
        } else {
            out[n++] = *p++;
            out[n] = '\0';
        }
    }
}

static void test_counted_faults(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        const char *spec; /* NULL: unset; "+K": the Kth call from now */
        const char *role; /* log_init() of the process */
        const char *fsyncs, *writes;
    } cases[] = {
        {"unset", NULL, "store:s1", ".....", "....."},
        {"third fsync", "fsync:+3", "store:s1", "..F..", "....."},
        {"second write", "write:+2", "mover", ".....", ".F..."},
        {"both in a list", "write:+1,fsync:+4", "mover", "...F.", "F...."},
        {"role matches", "fsync:+2@store:s2", "store:s2", ".F...", "....."},
        {"role differs", "fsync:+2@store:s2", "store:s1", ".....", "....."},
        {"one role of two", "fsync:+1@store:s1,write:+1@store:s2", "store:s2", ".....", "F...."},
        {"a past count never fires", "fsync:1", "mta", ".....", "....."},
        {"malformed entries ignored", "bogus:1,fsync,fsync:0,fsync:x,write:+3", "mta", ".....",
         "..F.."},
        {"empty role ignored", "fsync:1@", "mta", ".....", "....."},
        {"named kinds do not count", "crash:fsync,fail:x,pause:y", "mta", ".....", "....."},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        clear_env();
        char spec[256];
        if (cases[i].spec != NULL) {
            expand(cases[i].spec, spec, sizeof(spec));
            setenv("TERN_FAULT", spec, 1);
        }
        log_init(cases[i].role);
        log_set_level(LOG_ERROR); /* the warnings are expected */
        char f[8], w[8];
        run_calls(5, f, w);
        if (strcmp(f, cases[i].fsyncs) != 0 || strcmp(w, cases[i].writes) != 0)
            fail_msg("case '%s': fsyncs %s writes %s, want %s %s", cases[i].name, f, w,
                     cases[i].fsyncs, cases[i].writes);
    }
    clear_env();
}

static void test_armed(void **state)
{
    (void)state;
    char armed[PATH_MAX];
    path_in_tmp(armed, sizeof(armed), "armed");
    unlink(armed);
    clear_env();
    setenv("TERN_FAULT", "fsync:1,fail:dir_resolve", 1);
    setenv("TERN_FAULT_ARMED", armed, 1);
    log_init("store:s1");
    log_set_level(LOG_ERROR);
    char f[8], w[8];
    /* Not armed: nothing counts, nothing fails. */
    run_calls(3, f, w);
    assert_string_equal(f, "...");
    assert_false(util_fault_active("dir_resolve"));
    /* Armed: the first fsync from now on fails, and only that one. */
    int fd = open(armed, O_WRONLY | O_CREAT, 0600);
    assert_true(fd >= 0);
    close(fd);
    run_calls(3, f, w);
    assert_string_equal(f, "F..");
    assert_true(util_fault_active("dir_resolve"));
    assert_false(util_fault_active("dir_other"));
    unlink(armed);
    assert_false(util_fault_active("dir_resolve"));
    clear_env();
}

static void test_fail_role(void **state)
{
    (void)state;
    clear_env();
    setenv("TERN_FAULT", "fail:dir_resolve@mta", 1);
    log_init("mta");
    assert_true(util_fault_active("dir_resolve"));
    log_init("mover");
    assert_false(util_fault_active("dir_resolve"));
    clear_env();
    assert_false(util_fault_active("dir_resolve"));
}

/* Runs util_fault_point(point) in a child process as `role`; its exit
 * status (137: crashed there, 0: went on). */
static int child_at(const char *role, const char *point)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        log_init(role);
        log_set_level(LOG_ERROR);
        util_fault_point(point);
        _exit(0);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void test_crash_points(void **state)
{
    (void)state;
    char once[PATH_MAX], once1[PATH_MAX];
    path_in_tmp(once, sizeof(once), "once");
    path_in_tmp(once1, sizeof(once1), "once.1");
    unlink(once);
    unlink(once1);
    clear_env();
    setenv("TERN_FAULT", "crash:move.copy@mover,crash:store.bodies_synced@store:s2", 1);
    /* Without a once-marker a crash point fires every time. */
    assert_int_equal(child_at("mover", "move.copy"), 137);
    assert_int_equal(child_at("mover", "move.copy"), 137);
    assert_int_equal(child_at("mover", "move.final"), 0);
    assert_int_equal(child_at("store:s1", "store.bodies_synced"), 0);
    assert_int_equal(child_at("store:s2", "store.bodies_synced"), 137);
    /* With one, each fault fires once, each with its own marker. */
    setenv("TERN_FAULT_ONCE", once, 1);
    assert_int_equal(child_at("mover", "move.copy"), 137);
    assert_int_equal(access(once, F_OK), 0);
    assert_int_equal(child_at("mover", "move.copy"), 0);
    assert_int_equal(child_at("store:s2", "store.bodies_synced"), 137);
    assert_int_equal(access(once1, F_OK), 0);
    assert_int_equal(child_at("store:s2", "store.bodies_synced"), 0);
    clear_env();
}

static void test_pause_point(void **state)
{
    (void)state;
    char pause[PATH_MAX], once[PATH_MAX];
    path_in_tmp(pause, sizeof(pause), "pause");
    path_in_tmp(once, sizeof(once), "pause-once");
    unlink(pause);
    unlink(once);
    clear_env();
    setenv("TERN_FAULT", "pause:move.switch.cas_done@mover", 1);
    setenv("TERN_FAULT_PAUSE", pause, 1);
    setenv("TERN_FAULT_ONCE", once, 1);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        log_init("mover");
        log_set_level(LOG_ERROR);
        util_fault_point("move.switch.cas_done");
        _exit(7);
    }
    /* The child announces the pause with the file (holding its pid) and
     * waits there until the file is gone. */
    int waited = 0;
    while (access(pause, F_OK) != 0 && waited++ < 1000)
        usleep(10 * 1000);
    assert_int_equal(access(pause, F_OK), 0);
    usleep(100 * 1000);
    int st;
    assert_int_equal(waitpid(pid, &st, WNOHANG), 0); /* still paused */
    struct buf b;
    buf_init(&b, 0);
    const char *error;
    assert_int_equal(file_read_all(pause, 64, &b, &error), 0);
    assert_int_equal(atoi(b.data), (int)pid);
    buf_free(&b);
    assert_int_equal(unlink(pause), 0);
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 7);
    /* Once: the next process does not pause (it would hang the test). */
    assert_int_equal(child_at("mover", "move.switch.cas_done"), 0);
    assert_int_not_equal(access(pause, F_OK), 0);
    clear_env();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counted_faults), cmocka_unit_test(test_armed),
        cmocka_unit_test(test_fail_role),      cmocka_unit_test(test_crash_points),
        cmocka_unit_test(test_pause_point),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
