#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/error.h"
#include "common/metrics.h"
#include "tests/unit/test.h"

/* Every test starts from a fresh region; the families are declared once per process (describe ignores a
 * name it already knows), in the same order for every test. */
static void fresh(unsigned nslots)
{
    ASSERT_EQ(leo_metrics_init(nslots), 0);
    leo_metrics_describe("t_requests_total", LEO_METRIC_COUNTER, "Requests handled.");
    leo_metrics_describe("t_active", LEO_METRIC_GAUGE, "Things in progress, with \\ and\nnewline.");
    leo_metrics_describe("t_latency_seconds", LEO_METRIC_HISTOGRAM, "Latency.");
}

static char *render(void)
{
    struct leo_buf b = LEO_BUF_INIT;
    leo_metrics_render(&b);
    return leo_buf_detach(&b, NULL);
}

/* The line that starts with prefix (followed by a space), without the prefix; NULL when there is none. */
static const char *line_value(const char *text, const char *prefix, char *out, size_t size)
{
    size_t n = strlen(prefix);
    for (const char *l = text; *l; l = strchr(l, '\n') + 1) {
        if (strncmp(l, prefix, n) == 0 && l[n] == ' ') {
            size_t vlen = strcspn(l + n + 1, "\n");
            snprintf(out, size, "%.*s", (int)vlen, l + n + 1);
            return out;
        }
        if (strchr(l, '\n') == NULL)
            break;
    }
    return NULL;
}

#define ASSERT_LINE(text, prefix, want)                                                                                \
    do {                                                                                                               \
        char v_[64];                                                                                                   \
        const char *got_ = line_value((text), (prefix), v_, sizeof(v_));                                               \
        if (got_ == NULL)                                                                                              \
            TEST_FAIL_("no line \"%s\" in:\n%s", (prefix), (text));                                                    \
        ASSERT_STR_EQ(got_, (want));                                                                                   \
    } while (0)

static const char dropped_block[] = "# HELP leo_metrics_dropped_series_total Metric updates dropped: series "
                                    "table full, label text too long, or undeclared family.\n"
                                    "# TYPE leo_metrics_dropped_series_total counter\n";

TEST(empty_registry_renders_headers_only)
{
    fresh(1);
    char *text = render();
    char want[1024];
    snprintf(want, sizeof(want),
             "# HELP t_requests_total Requests handled.\n"
             "# TYPE t_requests_total counter\n"
             "# HELP t_active Things in progress, with \\\\ and\\nnewline.\n"
             "# TYPE t_active gauge\n"
             "# HELP t_latency_seconds Latency.\n"
             "# TYPE t_latency_seconds histogram\n"
             "%sleo_metrics_dropped_series_total 0\n",
             dropped_block);
    ASSERT_STR_EQ(text, want);
    free(text);
}

TEST(renders_counters_gauges_histograms_exactly)
{
    fresh(1);
    leo_metrics_add("t_requests_total", "route=\"/a\",status=\"200\"", 1);
    leo_metrics_add("t_requests_total", "route=\"/b\",status=\"500\"", 1.5);
    leo_metrics_add("t_requests_total", "route=\"/a\",status=\"200\"", 2);
    leo_metrics_add("t_requests_total", "route=\"/a\",status=\"200\"", -5); /* ignored: counters only grow */
    leo_metrics_gauge_add("t_active", "", 3);
    leo_metrics_gauge_add("t_active", "", -1);
    leo_metrics_gauge_set("t_active", "pool=\"x\"", 7);
    leo_metrics_gauge_set("t_active", "pool=\"x\"", 0.25);
    leo_metrics_observe("t_latency_seconds", "route=\"/a\"", 0.00390625);
    leo_metrics_observe("t_latency_seconds", "route=\"/a\"", 0.25); /* le is inclusive */
    leo_metrics_observe("t_latency_seconds", "route=\"/a\"", 100);
    leo_metrics_observe("t_latency_seconds", "", 1);
    char *text = render();
    char want[8192];
    snprintf(want, sizeof(want),
             "# HELP t_requests_total Requests handled.\n"
             "# TYPE t_requests_total counter\n"
             "t_requests_total{route=\"/a\",status=\"200\"} 3\n"
             "t_requests_total{route=\"/b\",status=\"500\"} 1.5\n"
             "# HELP t_active Things in progress, with \\\\ and\\nnewline.\n"
             "# TYPE t_active gauge\n"
             "t_active 2\n"
             "t_active{pool=\"x\"} 0.25\n"
             "# HELP t_latency_seconds Latency.\n"
             "# TYPE t_latency_seconds histogram\n"
             "t_latency_seconds_bucket{route=\"/a\",le=\"0.0005\"} 0\n"
             "t_latency_seconds_bucket{route=\"/a\",le=\"0.001\"} 0\n"
             "t_latency_seconds_bucket{route=\"/a\",le=\"0.0025\"} 0\n"
             "t_latency_seconds_bucket{route=\"/a\",le=\"0.005\"} 1\n"
             "t_latency_seconds_bucket{route=\"/a\",le=\"0.01\"} 1\n"
             "t_latency_seconds_bucket{route=\"/a\",le=\"0.025\"} 1\n"
             "t_latency_seconds_bucket{route=\"/a\",le=\"0.05\"} 1\n"
             "t_latency_seconds_bucket{route=\"/a\",le=\"0.1\"} 1\n"
             "t_latency_seconds_bucket{route=\"/a\",le=\"0.25\"} 2\n"
             "t_latency_seconds_bucket{route=\"/a\",le=\"0.5\"} 2\n"
             "t_latency_seconds_bucket{route=\"/a\",le=\"1\"} 2\n"
             "t_latency_seconds_bucket{route=\"/a\",le=\"2.5\"} 2\n"
             "t_latency_seconds_bucket{route=\"/a\",le=\"5\"} 2\n"
             "t_latency_seconds_bucket{route=\"/a\",le=\"10\"} 2\n"
             "t_latency_seconds_bucket{route=\"/a\",le=\"30\"} 2\n"
             "t_latency_seconds_bucket{route=\"/a\",le=\"60\"} 2\n"
             "t_latency_seconds_bucket{route=\"/a\",le=\"+Inf\"} 3\n"
             "t_latency_seconds_sum{route=\"/a\"} 100.25390625\n"
             "t_latency_seconds_count{route=\"/a\"} 3\n"
             "t_latency_seconds_bucket{le=\"0.0005\"} 0\n"
             "t_latency_seconds_bucket{le=\"0.001\"} 0\n"
             "t_latency_seconds_bucket{le=\"0.0025\"} 0\n"
             "t_latency_seconds_bucket{le=\"0.005\"} 0\n"
             "t_latency_seconds_bucket{le=\"0.01\"} 0\n"
             "t_latency_seconds_bucket{le=\"0.025\"} 0\n"
             "t_latency_seconds_bucket{le=\"0.05\"} 0\n"
             "t_latency_seconds_bucket{le=\"0.1\"} 0\n"
             "t_latency_seconds_bucket{le=\"0.25\"} 0\n"
             "t_latency_seconds_bucket{le=\"0.5\"} 0\n"
             "t_latency_seconds_bucket{le=\"1\"} 1\n"
             "t_latency_seconds_bucket{le=\"2.5\"} 1\n"
             "t_latency_seconds_bucket{le=\"5\"} 1\n"
             "t_latency_seconds_bucket{le=\"10\"} 1\n"
             "t_latency_seconds_bucket{le=\"30\"} 1\n"
             "t_latency_seconds_bucket{le=\"60\"} 1\n"
             "t_latency_seconds_bucket{le=\"+Inf\"} 1\n"
             "t_latency_seconds_sum 1\n"
             "t_latency_seconds_count 1\n"
             "%sleo_metrics_dropped_series_total 0\n",
             dropped_block);
    ASSERT_STR_EQ(text, want);
    free(text);
}

TEST(number_formatting)
{
    fresh(1);
    leo_metrics_add("t_requests_total", "k=\"a\"", 0.1);
    leo_metrics_add("t_requests_total", "k=\"a\"", 0.2);
    leo_metrics_add("t_requests_total", "k=\"b\"", 0.000123);
    leo_metrics_add("t_requests_total", "k=\"c\"", 1e20);
    leo_metrics_add("t_requests_total", "k=\"d\"", 123456789012.0);
    leo_metrics_gauge_set("t_active", "k=\"e\"", -2.5);
    leo_metrics_gauge_set("t_active", "k=\"f\"", -0.0);
    char *text = render();
    ASSERT_LINE(text, "t_requests_total{k=\"a\"}", "0.30000000000000004");
    ASSERT_LINE(text, "t_requests_total{k=\"b\"}", "0.000123");
    ASSERT_LINE(text, "t_requests_total{k=\"c\"}", "1e+20");
    ASSERT_LINE(text, "t_requests_total{k=\"d\"}", "123456789012");
    ASSERT_LINE(text, "t_active{k=\"e\"}", "-2.5");
    ASSERT_LINE(text, "t_active{k=\"f\"}", "0");
    free(text);
}

TEST(label_value_escaping)
{
    struct leo_buf b = LEO_BUF_INIT;
    static const char raw[] = "a\\b\"c\nd";
    leo_metrics_label_value(&b, raw, sizeof(raw) - 1);
    ASSERT_STR_EQ(b.p, "a\\\\b\\\"c\\nd");
    leo_buf_reset(&b);
    leo_metrics_label_value(&b, "plain", 5);
    leo_metrics_label_value(&b, "", 0);
    leo_metrics_label_value(&b, "\"", 1);
    ASSERT_STR_EQ(b.p, "plain\\\"");

    /* an escaped value survives into the rendered series verbatim */
    fresh(1);
    leo_buf_reset(&b);
    leo_buf_adds(&b, "model=\"");
    leo_metrics_label_value(&b, raw, sizeof(raw) - 1);
    leo_buf_addch(&b, '"');
    leo_metrics_add("t_requests_total", b.p, 4);
    char *text = render();
    ASSERT_LINE(text, "t_requests_total{model=\"a\\\\b\\\"c\\nd\"}", "4");
    free(text);
    leo_buf_release(&b);
}

TEST(slot_overflow_is_dropped_and_counted)
{
    fresh(1);
    enum { N = 5000 };
    char lbl[32];
    for (int i = 0; i < N; i++) {
        snprintf(lbl, sizeof(lbl), "i=\"%d\"", i);
        leo_metrics_add("t_requests_total", lbl, 1);
    }
    /* existing series keep counting after the table is full; new ones keep being dropped */
    leo_metrics_add("t_requests_total", "i=\"0\"", 1);
    leo_metrics_add("t_requests_total", "i=\"new\"", 1);
    char *text = render();
    int kept = 0;
    for (const char *l = strstr(text, "\nt_requests_total{"); l; l = strstr(l + 1, "\nt_requests_total{"))
        kept++;
    ASSERT(kept >= 1024);
    ASSERT(kept < N);
    char want[32];
    snprintf(want, sizeof(want), "%d", N - kept + 1);
    ASSERT_LINE(text, "leo_metrics_dropped_series_total", want);
    ASSERT_LINE(text, "t_requests_total{i=\"0\"}", "2");
    ASSERT(strstr(text, "i=\"new\"") == NULL);
    free(text);
}

TEST(overlong_labels_and_undeclared_families_are_dropped)
{
    fresh(1);
    char lbl[200];
    memset(lbl, 'x', sizeof(lbl));
    lbl[160] = '\0';
    leo_metrics_add("t_requests_total", lbl, 1); /* 160 bytes: the longest label text kept */
    lbl[160] = 'x';
    lbl[161] = '\0';
    leo_metrics_add("t_requests_total", lbl, 1);
    leo_metrics_add("t_not_declared", "", 1);
    leo_metrics_observe("t_requests_total", "", 1); /* wrong kind */
    char *text = render();
    ASSERT_LINE(text, "leo_metrics_dropped_series_total", "3");
    lbl[160] = '\0';
    char prefix[256];
    snprintf(prefix, sizeof(prefix), "t_requests_total{%s}", lbl);
    ASSERT_LINE(text, prefix, "1");
    ASSERT(strstr(text, "t_not_declared") == NULL);
    free(text);
}

static pid_t spawn_worker(unsigned slot, double requests)
{
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        leo_metrics_attach(slot);
        for (int i = 0; i < (int)requests; i++)
            leo_metrics_add("t_requests_total", "route=\"/m\"", 1);
        leo_metrics_observe("t_latency_seconds", "route=\"/m\"", 0.25);
        leo_metrics_observe("t_latency_seconds", "route=\"/m\"", 2);
        leo_metrics_gauge_add("t_active", "", 1);
        leo_metrics_add("t_requests_total", slot == 1 ? "only=\"one\"" : "only=\"two\"", 1);
        if (slot == 1)
            leo_metrics_set_workers(2, 1);
        _exit(0);
    }
    return pid;
}

static void reap(pid_t pid)
{
    int status;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT(WIFEXITED(status));
    ASSERT_EQ(WEXITSTATUS(status), 0);
}

TEST(processes_sum_into_one_render)
{
    fresh(3);
    leo_metrics_attach(0);
    leo_metrics_add("t_requests_total", "route=\"/m\"", 100);
    pid_t a = spawn_worker(1, 5);
    pid_t b = spawn_worker(2, 7);
    reap(a);
    reap(b);
    char *text = render();
    ASSERT_LINE(text, "t_requests_total{route=\"/m\"}", "112");
    ASSERT_LINE(text, "t_requests_total{only=\"one\"}", "1");
    ASSERT_LINE(text, "t_requests_total{only=\"two\"}", "1");
    ASSERT_LINE(text, "t_latency_seconds_bucket{route=\"/m\",le=\"0.1\"}", "0");
    ASSERT_LINE(text, "t_latency_seconds_bucket{route=\"/m\",le=\"0.25\"}", "2");
    ASSERT_LINE(text, "t_latency_seconds_bucket{route=\"/m\",le=\"2.5\"}", "4");
    ASSERT_LINE(text, "t_latency_seconds_bucket{route=\"/m\",le=\"+Inf\"}", "4");
    ASSERT_LINE(text, "t_latency_seconds_sum{route=\"/m\"}", "4.5");
    ASSERT_LINE(text, "t_latency_seconds_count{route=\"/m\"}", "4");
    ASSERT_LINE(text, "t_active", "2");
    /* a merged series appears once, in order of first appearance (slot 0 first) */
    const char *first = strstr(text, "t_requests_total{route=\"/m\"}");
    ASSERT(first != NULL);
    ASSERT(strstr(first + 1, "t_requests_total{route=\"/m\"}") == NULL);
    ASSERT(first < strstr(text, "only=\"one\""));
    ASSERT(strstr(text, "only=\"one\"") < strstr(text, "only=\"two\""));
    unsigned wanted = 0, up = 0;
    leo_metrics_get_workers(&wanted, &up);
    ASSERT_EQ(wanted, 2);
    ASSERT_EQ(up, 1);
    free(text);
}

TEST(restarted_worker_keeps_counters_and_resets_gauges)
{
    fresh(2);
    leo_metrics_attach(0);
    pid_t a = spawn_worker(1, 3);
    reap(a);
    char *text = render();
    ASSERT_LINE(text, "t_requests_total{route=\"/m\"}", "3");
    ASSERT_LINE(text, "t_active", "1");
    free(text);
    /* the supervisor restarts the worker on the same slot */
    pid_t b = spawn_worker(1, 4);
    reap(b);
    text = render();
    ASSERT_LINE(text, "t_requests_total{route=\"/m\"}", "7");
    ASSERT_LINE(text, "t_latency_seconds_count{route=\"/m\"}", "4");
    ASSERT_LINE(text, "t_active", "1"); /* reset to 0 on attach, then +1: not 2 */
    free(text);

    /* the same within one process: attaching again zeroes gauges only */
    leo_metrics_attach(1);
    text = render();
    ASSERT_LINE(text, "t_active", "0");
    ASSERT_LINE(text, "t_requests_total{route=\"/m\"}", "7");
    ASSERT_LINE(text, "t_latency_seconds_sum{route=\"/m\"}", "4.5");
    free(text);
}

TEST(works_without_init)
{
    /* runs first, before any leo_metrics_init: the process gets a private region */
    leo_metrics_describe("t_requests_total", LEO_METRIC_COUNTER, "Requests handled.");
    leo_metrics_add("t_requests_total", "route=\"/p\"", 2);
    leo_metrics_add("t_requests_total", "route=\"/p\"", 3);
    leo_metrics_set_workers(4, 3);
    unsigned wanted = 0, up = 0;
    leo_metrics_get_workers(&wanted, &up);
    ASSERT_EQ(wanted, 4);
    ASSERT_EQ(up, 3);
    char *text = render();
    ASSERT_LINE(text, "t_requests_total{route=\"/p\"}", "5");
    free(text);
}

TEST(unknown_slot_is_refused)
{
    /* after init the process writes to slot 0 until it attaches; a slot that does not exist is refused */
    fresh(1);
    leo_metrics_attach(5);
    leo_metrics_add("t_requests_total", "", 2);
    char *text = render();
    ASSERT_LINE(text, "t_requests_total", "2");
    free(text);
    ASSERT_EQ(leo_metrics_init(0), LEO_EINVAL);
}

/* What the supervisor reads and counts in a dead worker's slot (leo_usage_report_worker_death). */
TEST(supervisor_reads_and_counts_in_a_dead_workers_slot)
{
    fresh(2);
    leo_metrics_attach(0);
    pid_t a = spawn_worker(1, 3); /* t_requests_total{route="/m"} 3, t_active 1 */
    reap(a);
    ASSERT(leo_metrics_slot_value(1, "t_active", "") == 1.0);
    ASSERT(leo_metrics_slot_value(1, "t_requests_total", "route=\"/m\"") == 3.0);
    ASSERT(leo_metrics_slot_value(1, "t_requests_total", "route=\"/none\"") == 0.0); /* absent: not created */
    ASSERT(leo_metrics_slot_value(1, "t_latency_seconds", "route=\"/m\"") == 0.0);   /* histograms: no value */
    ASSERT(leo_metrics_slot_value(0, "t_active", "") == 0.0);                        /* its own slot: refused */
    ASSERT(leo_metrics_slot_value(7, "t_active", "") == 0.0);                        /* no such slot */
    leo_metrics_slot_add(1, "t_requests_total", "route=\"/lost\"", 2);
    leo_metrics_slot_add(1, "t_requests_total", "route=\"/lost\"", -1); /* counters never go backwards */
    leo_metrics_slot_add(0, "t_requests_total", "route=\"/lost\"", 5);  /* its own slot: refused */
    char *text = render();
    ASSERT_LINE(text, "t_requests_total{route=\"/lost\"}", "2");
    ASSERT(strstr(text, "t_requests_total{route=\"/none\"}") == NULL);
    free(text);
    /* the next worker on the slot keeps the count */
    leo_metrics_attach(1);
    text = render();
    ASSERT_LINE(text, "t_requests_total{route=\"/lost\"}", "2");
    free(text);
}

TEST_MAIN(TEST_ENTRY(works_without_init), TEST_ENTRY(empty_registry_renders_headers_only),
          TEST_ENTRY(renders_counters_gauges_histograms_exactly), TEST_ENTRY(number_formatting),
          TEST_ENTRY(label_value_escaping), TEST_ENTRY(slot_overflow_is_dropped_and_counted),
          TEST_ENTRY(overlong_labels_and_undeclared_families_are_dropped), TEST_ENTRY(processes_sum_into_one_render),
          TEST_ENTRY(restarted_worker_keeps_counters_and_resets_gauges), TEST_ENTRY(unknown_slot_is_refused),
          TEST_ENTRY(supervisor_reads_and_counts_in_a_dead_workers_slot))
