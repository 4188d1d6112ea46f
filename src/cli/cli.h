/*
 * cli — the `tern` command line: global options, the subcommands an
 * operator types, and the dispatch to the supervisor and the roles.
 *
 * Conventions for every subcommand: exit status 0 on success, 1 when the
 * request was refused or failed (one clear line on stderr, "tern: ..."),
 * 2 for a usage error; a refused request changes nothing. Global options
 * --data DIR and --config FILE may stand before or after the subcommand;
 * TERN_DATA and TERN_CONFIG in the environment are the fallbacks; the data
 * directory defaults to ./tern-data and the config file to DATA/tern.conf
 * when that file exists.
 */
#ifndef TERN_CLI_H
#define TERN_CLI_H

/* The whole program: returns the exit status. */
int cli_main(int argc, char **argv);

/* `tern import ...` (cli_import.c), called by cli_main with the arguments
 * after "import". Returns the exit status. */
struct config;
int cli_import(const struct config *cfg, int argc, char **argv);

/* `tern demo` (demo.c), called by cli_main with the arguments after
 * "demo": replaces the process with the demo script of the source tree the
 * binary was built from (tests/torture/torture.py demo; TERN_DEMO_SCRIPT
 * and TERN_PYTHON override the paths), which starts a temporary cluster,
 * shows a move under load and a store crash, checks every mailbox and
 * cleans up. Returns only on failure: 1 (script or interpreter missing), 2
 * for a usage error. */
int cli_demo(int argc, char **argv);

#endif
