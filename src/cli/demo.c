/* cli — `tern demo`: see cli.h and tests/torture/demo.py.
 *
 * The show itself is the torture harness's demo mode, a Python script in the
 * source tree this binary was built from: it drives tern from outside, over
 * SMTP, IMAP and the command line, as an operator would, and checks the
 * result with the same independent reader as the torture run. This file
 * only finds the interpreter and the script and hands over (exec), with
 * TERN_BIN naming this binary so the demo runs exactly it. */
#include "cli/cli.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef TERN_SOURCE_DIR
#define TERN_SOURCE_DIR "."
#endif

#define DEMO_SCRIPT "/tests/torture/torture.py"
#define DEMO_PYTHON "/usr/bin/python3"

int cli_demo(int argc, char **argv)
{
    if (argc > 0) {
        fprintf(stderr, "tern: demo takes no arguments, not '%s' (see 'tern help')\n", argv[0]);
        return 2;
    }
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n < 0) {
        fprintf(stderr, "tern: demo: cannot find my own binary: %s\n", strerror(errno));
        return 1;
    }
    self[n] = '\0';
    const char *script = getenv("TERN_DEMO_SCRIPT");
    char path[PATH_MAX];
    if (script == NULL || script[0] == '\0') {
        if ((size_t)snprintf(path, sizeof(path), "%s%s", TERN_SOURCE_DIR, DEMO_SCRIPT) >=
            sizeof(path)) {
            fprintf(stderr, "tern: demo: source directory path too long\n");
            return 1;
        }
        script = path;
    }
    const char *python = getenv("TERN_PYTHON");
    if (python == NULL || python[0] == '\0')
        python = DEMO_PYTHON;
    if (access(script, R_OK) != 0) {
        fprintf(stderr,
                "tern: demo: the demo script %s is not there (%s); it ships with the source "
                "tree this binary was built from (or set TERN_DEMO_SCRIPT)\n",
                script, strerror(errno));
        return 1;
    }
    if (access(python, X_OK) != 0) {
        fprintf(stderr, "tern: demo needs %s (%s; or set TERN_PYTHON)\n", python, strerror(errno));
        return 1;
    }
    if (setenv("TERN_BIN", self, 1) < 0) {
        fprintf(stderr, "tern: demo: setenv: %s\n", strerror(errno));
        return 1;
    }
    /* The demo makes its own data directory and configuration. */
    unsetenv("TERN_DATA");
    unsetenv("TERN_CONFIG");
    fflush(stdout);
    char *const args[] = {(char *)python, (char *)script, "demo", NULL};
    execv(python, args);
    fprintf(stderr, "tern: demo: cannot run %s: %s\n", python, strerror(errno));
    return 1;
}
