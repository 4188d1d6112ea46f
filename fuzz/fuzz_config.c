/* libFuzzer target for the config file parser (config_parse): any input
 * either parses into a configuration that keeps the documented limits or is
 * refused with a message; nothing crashes or reads out of bounds. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "util/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct config cfg;
    char err[512];
    config_defaults(&cfg, "/nonexistent");
    int r = config_parse(&cfg, (const char *)data, size, err, sizeof(err));
    if (r == 0) {
        if (cfg.n_stores == 0 || cfg.n_stores > CONFIG_STORES_MAX)
            abort();
        for (size_t i = 0; i < cfg.n_stores; i++) {
            if (!mail_store_name_valid(cfg.stores[i].name) || cfg.stores[i].lmtp[0] == '\0')
                abort();
            if (config_store(&cfg, cfg.stores[i].name) != &cfg.stores[i])
                abort(); /* names are unique */
        }
        if (cfg.lmtp.max_recipients == 0 || cfg.lmtp.max_message_size < 1024)
            abort();
    } else if (err[0] == '\0' || memchr(err, '\0', sizeof(err)) == NULL) {
        abort();
    }
    return 0;
}
