#include "mock_faults.h"

#include <stdio.h>

/* Upper bound on every millisecond and count value: large enough for any test, small enough that a typo
 * cannot park a request for days. */
#define FAULT_MAX_VALUE 600000

enum item_kind { ITEM_FLAG, ITEM_INT };

static const struct {
    const char *name;
    enum item_kind kind;
    size_t offset; /* of a bool (ITEM_FLAG) or an int (ITEM_INT) in struct mock_fault */
    int min, max;
} fault_items[] = {
    {"status", ITEM_INT, offsetof(struct mock_fault, status), 400, 599},
    {"retry_after", ITEM_INT, offsetof(struct mock_fault, retry_after_s), 0, 86400},
    {"retry_after_ms", ITEM_INT, offsetof(struct mock_fault, retry_after_ms), 0, FAULT_MAX_VALUE},
    {"delay_headers_ms", ITEM_INT, offsetof(struct mock_fault, delay_headers_ms), 0, FAULT_MAX_VALUE},
    {"delay_events_ms", ITEM_INT, offsetof(struct mock_fault, delay_events_ms), 0, FAULT_MAX_VALUE},
    {"trickle_ms", ITEM_INT, offsetof(struct mock_fault, trickle_ms), 0, FAULT_MAX_VALUE},
    {"reset_after_events", ITEM_INT, offsetof(struct mock_fault, reset_after_events), 0, FAULT_MAX_VALUE},
    {"reset_before_headers", ITEM_FLAG, offsetof(struct mock_fault, reset_before_headers), 0, 0},
    {"malformed", ITEM_FLAG, offsetof(struct mock_fault, malformed), 0, 0},
    {"tool_then_reset", ITEM_FLAG, offsetof(struct mock_fault, tool_then_reset), 0, 0},
    {"blocked", ITEM_FLAG, offsetof(struct mock_fault, blocked), 0, 0},
};

void mock_fault_init(struct mock_fault *f)
{
    *f = (struct mock_fault){
        .status = 0,
        .retry_after_s = -1,
        .retry_after_ms = -1,
        .trickle_ms = -1,
        .reset_after_events = -1,
    };
}

bool mock_fault_is_none(const struct mock_fault *f)
{
    struct mock_fault none;
    mock_fault_init(&none);
    return f->status == none.status && f->retry_after_s == none.retry_after_s &&
           f->retry_after_ms == none.retry_after_ms && f->delay_headers_ms == none.delay_headers_ms &&
           f->delay_events_ms == none.delay_events_ms && f->trickle_ms == none.trickle_ms &&
           f->reset_after_events == none.reset_after_events && !f->reset_before_headers && !f->malformed &&
           !f->tool_then_reset && !f->blocked;
}

/* Strict decimal: digits only, no sign, no overflow beyond max. */
static int parse_uint(struct leo_str s, int max, int *out)
{
    if (s.len == 0 || s.len > 9)
        return -1;
    int v = 0;
    for (size_t i = 0; i < s.len; i++) {
        if (s.p[i] < '0' || s.p[i] > '9')
            return -1;
        v = v * 10 + (s.p[i] - '0');
    }
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

static int parse_item(struct leo_str item, struct mock_fault *f, char *err, size_t errsize)
{
    struct leo_str name = item, value = {NULL, 0};
    bool has_value = false;
    const char *eq = memchr(item.p, '=', item.len);
    if (eq != NULL) {
        name = leo_str_trim(leo_str_n(item.p, (size_t)(eq - item.p)));
        value = leo_str_trim(leo_str_n(eq + 1, item.len - (size_t)(eq + 1 - item.p)));
        has_value = true;
    }
    for (size_t i = 0; i < sizeof(fault_items) / sizeof(fault_items[0]); i++) {
        if (!leo_str_eqc(name, fault_items[i].name))
            continue;
        char *field = (char *)f + fault_items[i].offset;
        if (fault_items[i].kind == ITEM_FLAG) {
            if (has_value) {
                snprintf(err, errsize, "fault item \"%.*s\" takes no value", (int)item.len, item.p);
                return -1;
            }
            *(bool *)field = true;
            return 0;
        }
        int v;
        if (!has_value || parse_uint(value, fault_items[i].max, &v) != 0 || v < fault_items[i].min) {
            snprintf(err, errsize, "fault item \"%.*s\" needs an integer value %d..%d", (int)item.len, item.p,
                     fault_items[i].min, fault_items[i].max);
            return -1;
        }
        *(int *)field = v;
        return 0;
    }
    snprintf(err, errsize, "unknown fault item \"%.*s\"", (int)name.len, name.p);
    return -1;
}

int mock_fault_parse(struct leo_str spec, struct mock_fault *f, char *err, size_t errsize)
{
    mock_fault_init(f);
    if (errsize)
        err[0] = '\0';
    size_t start = 0;
    for (size_t i = 0; i <= spec.len; i++) {
        if (i < spec.len && spec.p[i] != ';')
            continue;
        struct leo_str item = leo_str_trim(leo_str_n(spec.p + start, i - start));
        start = i + 1;
        if (item.len == 0)
            continue;
        if (parse_item(item, f, err, errsize) != 0)
            return -1;
    }
    return 0;
}

int mock_fault_find_marker(struct leo_str text, struct leo_str *spec)
{
    static const char open[] = "[[mock:";
    const size_t olen = sizeof(open) - 1;
    if (text.len < olen)
        return 0;
    for (size_t i = 0; i + olen <= text.len; i++) {
        if (memcmp(text.p + i, open, olen) != 0)
            continue;
        size_t s = i + olen;
        for (size_t j = s; j + 1 < text.len; j++) {
            if (text.p[j] == ']' && text.p[j + 1] == ']') {
                *spec = leo_str_n(text.p + s, j - s);
                return 1;
            }
        }
        return -1;
    }
    return 0;
}
