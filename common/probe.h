/*
 * probe.h — named timing points on the request path, for the latency benchmark (tests/bench/latency_probe.sh).
 *
 * Compiled in only when the build is configured with -DLEO_PROBES=ON; otherwise LEO_PROBE(name) is nothing.
 * In a probe build each point calls leo_probe(name) when a library loaded with LD_PRELOAD defines that symbol
 * (tests/bench/probe_shim.c, which also times the system calls between the points); without one the weak
 * reference is NULL and a point costs one test. Names are string literals; the shim compares them.
 */
#ifndef LEO_PROBE_H
#define LEO_PROBE_H

#ifdef LEO_PROBES
void leo_probe(const char *point) __attribute__((weak));
#define LEO_PROBE(point)                                                                                               \
    do {                                                                                                               \
        if (leo_probe)                                                                                                 \
            leo_probe(point);                                                                                          \
    } while (0)
#else
#define LEO_PROBE(point) ((void)0)
#endif

#endif
