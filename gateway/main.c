/*
 * leo-gateway — entry point: subcommands, options, then the supervisor.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>

#include "../common/buf.h"
#include "../common/keyhash.h"
#include "../common/log.h"
#include "../common/metrics.h"
#include "config.h"
#include "handlers.h"
#include "quota.h"
#include "router.h"
#include "../common/redis.h"
#include "hashkey_cmd.h"
#include "supervisor.h"

#define LEO_VERSION "0.1.0"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: leo-gateway [--config FILE] [--workers N] [--listen HOST:PORT] [--check]\n"
            "       leo-gateway hash-key [--secret-env NAME] [KEY]   print the keyed hash of an API key\n"
            "       leo-gateway hash-key --generate                  create a new key and its hash\n"
            "\n"
            "  -c, --config FILE     configuration file (default: $LEO_CONFIG)\n"
            "  -w, --workers N       worker processes (default: config \"workers\", else the number of cores)\n"
            "  -l, --listen H:P      listen address, overrides the config\n"
            "      --check           validate the configuration and exit\n"
            "  -V, --version         print the version\n");
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "hash-key") == 0)
        return leo_hashkey_main(argc - 1, argv + 1);

    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'}, {"workers", required_argument, NULL, 'w'},
        {"listen", required_argument, NULL, 'l'}, {"check", no_argument, NULL, 'k'},
        {"version", no_argument, NULL, 'V'},      {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config_path = getenv("LEO_CONFIG");
    const char *listen = NULL;
    long workers = -1;
    int check = 0, c;
    while ((c = getopt_long(argc, argv, "c:w:l:Vh", longopts, NULL)) != -1) {
        switch (c) {
        case 'c': config_path = optarg; break;
        case 'l': listen = optarg; break;
        case 'k': check = 1; break;
        case 'w': {
            char *end;
            workers = strtol(optarg, &end, 10);
            if (*end != '\0' || workers < 1 || workers > 256) {
                fprintf(stderr, "leo-gateway: --workers must be a number from 1 to 256, got \"%s\"\n", optarg);
                return 2;
            }
            break;
        }
        case 'V': printf("leo-gateway %s\n", LEO_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "leo-gateway: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (config_path == NULL || config_path[0] == '\0') {
        fprintf(stderr, "leo-gateway: no configuration: pass --config FILE or set LEO_CONFIG\n");
        return 2;
    }

    leo_keyhash_init();
    curl_global_init(CURL_GLOBAL_DEFAULT);
    leo_log_setup(LEO_LOG_INFO, "supervisor");

    struct leo_buf err = LEO_BUF_INIT;
    struct leo_config *cfg = NULL;
    if (leo_config_load_file(config_path, &cfg, &err) != 0) {
        leo_error("invalid configuration: %s", err.p);
        leo_buf_release(&err);
        return 1;
    }
    leo_buf_release(&err);
    if (check) {
        printf("configuration %s is valid (%zu providers, %zu models, %zu tenants)\n", config_path,
               cfg->nproviders, cfg->nmodels, cfg->ntenants);
        leo_config_unref(cfg);
        return 0;
    }
    if (workers < 0)
        workers = cfg->workers ? (long)cfg->workers : sysconf(_SC_NPROCESSORS_ONLN);
    if (workers < 1)
        workers = 1;
    struct leo_supervisor_opts so = {
        .config_path = config_path,
        .listen = listen,
        .workers = (unsigned)workers,
        .drain_timeout_ms = cfg->drain_timeout_ms,
    };
    leo_config_unref(cfg);

    if (leo_metrics_init((unsigned)workers + 1) != 0) {
        leo_error("cannot map the shared metrics region");
        return 1;
    }
    leo_gw_metrics_describe();
    leo_router_metrics_describe();
    leo_quota_metrics_describe();
    leo_redis_metrics_describe();
    int rc = leo_supervisor_run(&so);
    curl_global_cleanup();
    return rc;
}
