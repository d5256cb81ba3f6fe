/*
 * metrics.h — Prometheus metrics shared by all worker processes.
 *
 * The supervisor maps one anonymous shared-memory region before it forks (leo_metrics_init); each worker
 * owns one slot in it (leo_metrics_attach) and is the only writer of its slot, so updates need no locks
 * (relaxed atomics). GET /metrics on any worker renders the sum over all slots, so a scrape through the
 * load balancer sees the whole process group. A restarted worker re-attaches to the same slot: counters and
 * histograms keep counting (they never go backwards), gauges of the slot are reset.
 *
 * Series are identified by family name + label text (already formatted: `route="/v1/x",status="200"`; use
 * leo_metrics_label_value to escape values). Each slot holds a bounded number of series; past the bound,
 * updates to new series are dropped and counted in leo_metrics_dropped_series_total. Callers must keep label
 * cardinality bounded (configured model names, not what clients send).
 *
 * Works without leo_metrics_init too (a single process, e.g. tests): then the region is private memory.
 */
#ifndef LEO_METRICS_H
#define LEO_METRICS_H

#include <stddef.h>

#include "buf.h"

enum leo_metric_kind { LEO_METRIC_COUNTER, LEO_METRIC_GAUGE, LEO_METRIC_HISTOGRAM };

/** Maps the shared region for nslots processes. Call once in the supervisor before forking. 0 or error. */
int leo_metrics_init(unsigned nslots);
/** Binds this process to slot idx (a worker after fork); resets that slot's gauges. */
void leo_metrics_attach(unsigned idx);
/** Declares a family (name, kind, help text). Histogram buckets are the latency buckets in seconds
 *  (0.0005 ... 60). Families must be declared in every process in the same order before use; the gateway
 *  does it in one function called before forking. */
void leo_metrics_describe(const char *name, enum leo_metric_kind kind, const char *help);
/** Counter += v. */
void leo_metrics_add(const char *name, const char *labels, double v);
/** Gauge += v (v may be negative). */
void leo_metrics_gauge_add(const char *name, const char *labels, double v);
/** Gauge = v. */
void leo_metrics_gauge_set(const char *name, const char *labels, double v);
/** For the supervisor, about a worker that has died (its slot has no writer until a new worker attaches to it):
 *  the value of the counter or gauge series (name, labels) in slot idx, 0 when there is none or idx is this
 *  process's own slot. */
double leo_metrics_slot_value(unsigned idx, const char *name, const char *labels);
/** The same: counter += v in slot idx (not this process's own), so that the count stays with that worker's. */
void leo_metrics_slot_add(unsigned idx, const char *name, const char *labels, double v);
/** Histogram observation (seconds for latencies). */
void leo_metrics_observe(const char *name, const char *labels, double v);
/** Renders every family in Prometheus text format 0.0.4, summed over all slots. */
void leo_metrics_render(struct leo_buf *out);
/** Appends a label value escaped for the exposition format (\\, \", \n). */
void leo_metrics_label_value(struct leo_buf *out, const char *s, size_t len);

/** Shared supervisor state, readable by every worker: workers wanted and workers currently up. */
void leo_metrics_set_workers(unsigned wanted, unsigned up);
void leo_metrics_get_workers(unsigned *wanted, unsigned *up);

#endif
