/* tern — one binary, many subcommands; see cli.h. */
#include "cli/cli.h"

int main(int argc, char **argv)
{
    return cli_main(argc, argv);
}
