#include "supervisor.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../common/alloc.h"
#include "../common/log.h"
#include "../common/metrics.h"
#include "config.h"
#include "usage.h"

struct worker_slot {
    pid_t pid;           /* 0 when not running */
    uint64_t started_ms; /* for crash-loop backoff */
    uint64_t restart_at_ms;
    unsigned quick_deaths;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static pid_t spawn(const struct leo_supervisor_opts *opts, unsigned idx, const sigset_t *blocked)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    /* child */
    sigprocmask(SIG_UNBLOCK, blocked, NULL);
    struct leo_worker_opts wo = {.config_path = opts->config_path, .listen = opts->listen, .index = idx};
    int rc = leo_worker_run(&wo);
    _exit(rc == 0 ? 0 : 3);
}

static unsigned count_up(const struct worker_slot *s, unsigned n)
{
    unsigned up = 0;
    for (unsigned i = 0; i < n; i++)
        up += s[i].pid != 0;
    return up;
}

int leo_supervisor_run(const struct leo_supervisor_opts *opts)
{
    leo_log_setup(LEO_LOG_INFO, "supervisor");
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    unsigned n = opts->workers;
    struct worker_slot *slots = leo_calloc(n, sizeof(*slots));
    leo_metrics_attach(0);
    leo_metrics_set_workers(n, 0); /* before the first fork: a worker may read the count as it starts */
    for (unsigned i = 0; i < n; i++) {
        slots[i].pid = spawn(opts, i, &set);
        slots[i].started_ms = now_ms();
        if (slots[i].pid < 0) {
            leo_error("fork failed: %s", strerror(errno));
            slots[i].pid = 0;
            slots[i].restart_at_ms = now_ms() + 1000;
        }
    }
    leo_metrics_set_workers(n, count_up(slots, n));
    leo_info("started %u workers", n);

    bool stopping = false;
    uint64_t kill_at = 0;
    int exit_code = 0;
    for (;;) {
        if (stopping && count_up(slots, n) == 0)
            break;
        /* wake for the earliest pending restart or the drain deadline */
        uint64_t now = now_ms(), wake = now + 1000;
        for (unsigned i = 0; i < n; i++)
            if (!stopping && slots[i].pid == 0 && slots[i].restart_at_ms < wake)
                wake = slots[i].restart_at_ms;
        if (kill_at && kill_at < wake)
            wake = kill_at;
        uint64_t wait = wake > now ? wake - now : 0;
        struct timespec ts = {(time_t)(wait / 1000), (long)(wait % 1000) * 1000000};
        siginfo_t info;
        int sig = sigtimedwait(&set, &info, &ts);
        now = now_ms();

        if (sig == SIGCHLD || sig < 0) {
            pid_t pid;
            int st;
            while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
                for (unsigned i = 0; i < n; i++) {
                    if (slots[i].pid != pid)
                        continue;
                    slots[i].pid = 0;
                    bool clean = WIFEXITED(st) && WEXITSTATUS(st) == 0;
                    if (!clean)
                        leo_usage_report_worker_death(i + 1, i, (long)pid); /* slot i + 1: see leo_worker_run */
                    if (stopping) {
                        if (!clean)
                            exit_code = 1;
                        break;
                    }
                    if (WIFSIGNALED(st))
                        leo_error("worker %u (pid %d) died from signal %d; restarting", i, (int)pid, WTERMSIG(st));
                    else
                        leo_error("worker %u (pid %d) exited with status %d; restarting", i, (int)pid,
                                  WEXITSTATUS(st));
                    /* back off when a worker keeps dying right after start (bad port, broken config) */
                    slots[i].quick_deaths = now - slots[i].started_ms < 1000 ? slots[i].quick_deaths + 1 : 0;
                    unsigned shift = slots[i].quick_deaths > 5 ? 5 : slots[i].quick_deaths;
                    slots[i].restart_at_ms = now + (slots[i].quick_deaths ? (100ull << shift) : 0);
                    leo_metrics_add("leo_worker_restarts_total", "", 1);
                }
            }
        } else if (sig == SIGHUP) {
            struct leo_buf err = LEO_BUF_INIT;
            struct leo_config *cfg = NULL;
            if (leo_config_load_file(opts->config_path, &cfg, &err) != 0) {
                leo_error("config reload rejected, workers keep the running config: %s", err.p);
            } else {
                leo_info("config %s is valid; telling workers to reload", opts->config_path);
                if (cfg->workers && cfg->workers != n)
                    leo_warn("a new worker count (%u) takes effect only after a restart", cfg->workers);
                for (unsigned i = 0; i < n; i++)
                    if (slots[i].pid)
                        kill(slots[i].pid, SIGHUP);
            }
            leo_config_unref(cfg);
            leo_buf_release(&err);
        } else if (sig == SIGTERM || sig == SIGINT) {
            if (!stopping) {
                stopping = true;
                kill_at = now + opts->drain_timeout_ms + 5000;
                leo_info("received %s: draining %u workers", sig == SIGTERM ? "SIGTERM" : "SIGINT",
                         count_up(slots, n));
                for (unsigned i = 0; i < n; i++)
                    if (slots[i].pid)
                        kill(slots[i].pid, SIGTERM);
            }
        }

        if (stopping && kill_at && now >= kill_at) {
            for (unsigned i = 0; i < n; i++)
                if (slots[i].pid) {
                    leo_error("worker %u did not exit after the drain timeout; killing it", i);
                    kill(slots[i].pid, SIGKILL);
                }
            kill_at = 0;
            exit_code = 1;
        }
        if (!stopping) {
            for (unsigned i = 0; i < n; i++) {
                if (slots[i].pid == 0 && now >= slots[i].restart_at_ms) {
                    pid_t pid = spawn(opts, i, &set);
                    if (pid > 0) {
                        slots[i].pid = pid;
                        slots[i].started_ms = now;
                        leo_info("worker %u restarted as pid %d", i, (int)pid);
                    } else {
                        slots[i].restart_at_ms = now + 1000;
                    }
                }
            }
        }
        leo_metrics_set_workers(n, count_up(slots, n));
    }
    leo_free(slots);
    leo_info("all workers exited; bye");
    return exit_code;
}
