/*
 * supervisor.h — the parent process: starts N workers, restarts the ones that die, forwards SIGHUP (after
 * checking that the new config is valid) and SIGTERM (drain), and exits 0 once every worker has exited.
 *
 * The supervisor runs no event loop: it waits for signals with sigtimedwait, so nothing of its state is
 * inherited by the workers it forks except the metrics region mapped before the first fork.
 */
#ifndef LEO_SUPERVISOR_H
#define LEO_SUPERVISOR_H

#include "worker.h"

struct leo_supervisor_opts {
    const char *config_path;
    const char *listen;      /* override, or NULL */
    unsigned workers;        /* >= 1 */
    uint64_t drain_timeout_ms;
};

/** Runs until SIGTERM/SIGINT has drained every worker; returns the process exit code. */
int leo_supervisor_run(const struct leo_supervisor_opts *opts);

#endif
