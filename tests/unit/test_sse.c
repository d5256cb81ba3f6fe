#include "common/buf.h"
#include "common/error.h"
#include "gateway/sse.h"
#include "tests/unit/test.h"

/* Every callback is recorded as "[event|data|id]\n" so whole runs compare as one string. */
struct rec {
    struct leo_buf log;
    unsigned events;
    unsigned stop_after;    /* stop the parser from the callback after this many events (0: never) */
    unsigned release_after; /* release the parser from the callback after this many events (0: never) */
    struct leo_sse_parser *p;
};

static void on_event(void *ud, struct leo_str event, struct leo_str data, struct leo_str id)
{
    struct rec *r = ud;
    ASSERT_EQ(data.p[data.len], '\0');
    leo_buf_addch(&r->log, '[');
    leo_buf_addstr(&r->log, event);
    leo_buf_addch(&r->log, '|');
    leo_buf_addstr(&r->log, data);
    leo_buf_addch(&r->log, '|');
    leo_buf_addstr(&r->log, id);
    leo_buf_adds(&r->log, "]\n");
    r->events++;
    if (r->stop_after && r->events == r->stop_after)
        leo_sse_parser_stop(r->p);
    if (r->release_after && r->events == r->release_after)
        leo_sse_parser_release(r->p);
}

static void rec_init(struct rec *r, struct leo_sse_parser *p, size_t max)
{
    memset(r, 0, sizeof(*r));
    r->log = (struct leo_buf)LEO_BUF_INIT;
    r->p = p;
    leo_sse_parser_init(p, max, on_event, r);
}

static void rec_release(struct rec *r)
{
    leo_sse_parser_release(r->p);
    leo_buf_release(&r->log);
}

/* Feeds s in the pieces given by the cut points (ascending), then finishes; returns finish()'s result and
 * leaves the callback log in *out. Every feed must succeed. */
static int run_cuts(const char *s, size_t len, const size_t *cuts, size_t ncuts, struct leo_buf *out)
{
    struct leo_sse_parser p;
    struct rec r;
    rec_init(&r, &p, 1024);
    size_t at = 0;
    for (size_t i = 0; i <= ncuts; i++) {
        size_t end = i < ncuts ? cuts[i] : len;
        ASSERT_EQ(leo_sse_parser_feed(&p, s + at, end - at), 0);
        at = end;
    }
    int rc = leo_sse_parser_finish(&p);
    leo_buf_reset(out);
    leo_buf_addstr(out, leo_buf_str(&r.log));
    rec_release(&r);
    return rc;
}

static void parse_whole(const char *s, size_t len, int want_finish, const char *want_log)
{
    struct leo_buf out = LEO_BUF_INIT;
    ASSERT_EQ(run_cuts(s, len, NULL, 0, &out), want_finish);
    ASSERT_STR_EQ(out.p, want_log);
    leo_buf_release(&out);
}

/* Literal lengths come from sizeof, never from counting by hand. */
#define PARSE(lit, fin, log) parse_whole(lit, sizeof(lit) - 1, fin, log)
#define FEED(p, lit) leo_sse_parser_feed(p, lit, sizeof(lit) - 1)

static const char sample[] = ": comment\r\n"
                             "event: delta\n"
                             "data: {\"a\":1}\n"
                             "\n"
                             "data: line1\r"
                             "data:line2\r\n"
                             "data:  two spaces\n"
                             "id: 7\n"
                             "retry: 100\n"
                             "unknown: x\n"
                             "\r\n"
                             "data\n"
                             "\n"
                             "event: ping\n"
                             "\r"
                             "\n"
                             ": only a comment\n"
                             "\n"
                             "id\n"
                             "data: [DONE]\r\n"
                             "\r\n";

static const char sample_log[] = "[delta|{\"a\":1}|]\n"
                                 "[|line1\nline2\n two spaces|7]\n"
                                 "[||7]\n"
                                 "[ping||7]\n"
                                 "[|[DONE]|]\n";

TEST(parses_sample_stream)
{
    parse_whole(sample, sizeof(sample) - 1, 0, sample_log);
}

TEST(every_single_split_gives_the_same_events)
{
    struct leo_buf out = LEO_BUF_INIT;
    size_t len = sizeof(sample) - 1;
    for (size_t k = 0; k <= len; k++) {
        ASSERT_EQ(run_cuts(sample, len, &k, 1, &out), 0);
        if (strcmp(out.p, sample_log) != 0)
            TEST_FAIL_("split at %zu: \"%s\"", k, out.p);
    }
    leo_buf_release(&out);
}

TEST(every_pair_of_splits_gives_the_same_events)
{
    struct leo_buf out = LEO_BUF_INIT;
    size_t len = sizeof(sample) - 1;
    for (size_t a = 0; a <= len; a++)
        for (size_t b = a; b <= len; b++) {
            size_t cuts[2] = {a, b};
            ASSERT_EQ(run_cuts(sample, len, cuts, 2, &out), 0);
            if (strcmp(out.p, sample_log) != 0)
                TEST_FAIL_("splits at %zu and %zu: \"%s\"", a, b, out.p);
        }
    leo_buf_release(&out);
}

TEST(byte_by_byte_gives_the_same_events)
{
    size_t len = sizeof(sample) - 1;
    size_t cuts[sizeof(sample)];
    for (size_t i = 0; i < len; i++)
        cuts[i] = i;
    struct leo_buf out = LEO_BUF_INIT;
    ASSERT_EQ(run_cuts(sample, len, cuts, len, &out), 0);
    ASSERT_STR_EQ(out.p, sample_log);
    leo_buf_release(&out);
}

TEST(line_endings_are_equivalent)
{
    PARSE("event: e\ndata: a\ndata: b\n\n", 0, "[e|a\nb|]\n");
    PARSE("event: e\rdata: a\rdata: b\r\r", 0, "[e|a\nb|]\n");
    PARSE("event: e\r\ndata: a\r\ndata: b\r\n\r\n", 0, "[e|a\nb|]\n");
    /* "\r\r" is two line ends, "\n\r" too; only "\r\n" is one */
    PARSE("data: a\r\rdata: b\n\r", 0, "[|a|]\n[|b|]\n");
}

TEST(split_crlf_is_one_line_end)
{
    /* "data: a\r" | "\ndata: b\n\n": the "\n" must not be read as an empty line dispatching "a" alone */
    static const char s[] = "data: a\r\ndata: b\n\n";
    size_t cut = 8;
    struct leo_buf out = LEO_BUF_INIT;
    ASSERT_EQ(run_cuts(s, sizeof(s) - 1, &cut, 1, &out), 0);
    ASSERT_STR_EQ(out.p, "[|a\nb|]\n");
    leo_buf_release(&out);
}

TEST(comments_and_unknown_fields_dispatch_nothing)
{
    PARSE(": hello\n\n: world\nretry: 5\nfoo: bar\n\n", 0, "");
}

TEST(field_value_strips_exactly_one_space)
{
    PARSE("data:x\n\ndata: x\n\ndata:  x\n\ndata:\n\n", 0, "[|x|]\n[|x|]\n[| x|]\n[||]\n");
    /* a colon inside the value stays */
    PARSE("data: a: b\n\n", 0, "[|a: b|]\n");
}

TEST(id_persists_and_nul_id_is_ignored)
{
    static const char s[] = "id: 1\ndata: a\n\ndata: b\n\nid: x\0y\ndata: c\n\nid:\ndata: d\n\n";
    parse_whole(s, sizeof(s) - 1, 0, "[|a|1]\n[|b|1]\n[|c|1]\n[|d|]\n");
}

TEST(byte_order_mark_is_skipped_once)
{
    static const char bom[] = "\xEF\xBB\xBF"
                              "data: x\n\n";
    struct leo_buf out = LEO_BUF_INIT;
    for (size_t k = 0; k <= sizeof(bom) - 1; k++) {
        ASSERT_EQ(run_cuts(bom, sizeof(bom) - 1, &k, 1, &out), 0);
        ASSERT_STR_EQ(out.p, "[|x|]\n");
    }
    /* a second mark, or a partial one, is part of the first field name: "\xEF\xBBdata" is an unknown field */
    static const char twice[] = "\xEF\xBB\xBF\xEF\xBB\xBF"
                                "data: x\n\n";
    static const char partial[] = "\xEF\xBB"
                                  "data: x\n\n";
    for (size_t k = 0; k <= sizeof(partial) - 1; k++) {
        ASSERT_EQ(run_cuts(partial, sizeof(partial) - 1, &k, 1, &out), 0);
        ASSERT_STR_EQ(out.p, "");
    }
    parse_whole(twice, sizeof(twice) - 1, 0, "");
    /* the mark alone, or part of it, at the end is an unterminated line */
    PARSE("\xEF\xBB", LEO_EUPSTREAM, "");
    PARSE("\xEF\xBB\xBF", 0, "");
    leo_buf_release(&out);
}

TEST(finish_tells_clean_end_from_truncated_event)
{
    PARSE("data: x\n\n", 0, "[|x|]\n");
    PARSE("data: x\n\n: bye\n", 0, "[|x|]\n");
    PARSE("data: x\n\n\n\n", 0, "[|x|]\n");
    PARSE("data: x\n\r", 0, "[|x|]\n");
    PARSE("", 0, "");
    PARSE("data: x\n", LEO_EUPSTREAM, "");
    PARSE("data: x\r", LEO_EUPSTREAM, "");
    PARSE("data: x", LEO_EUPSTREAM, "");
    PARSE("data: x\n\ndata: y\n", LEO_EUPSTREAM, "[|x|]\n");
    PARSE("data: x\n\n: partial", LEO_EUPSTREAM, "[|x|]\n");
    PARSE("data: x\n\nid: 3\n", LEO_EUPSTREAM, "[|x|]\n");
}

TEST(long_line_over_the_cap_is_too_big_at_any_split)
{
    static const char s[] = "data: ok\n\ndata: 0123456789abc\n\n"; /* second line is 21 bytes, cap 16 */
    size_t len = sizeof(s) - 1;
    for (size_t k = 0; k <= len; k++) {
        struct leo_sse_parser p;
        struct rec r;
        rec_init(&r, &p, 16);
        int rc1 = leo_sse_parser_feed(&p, s, k);
        int rc2 = rc1 ? rc1 : leo_sse_parser_feed(&p, s + k, len - k);
        ASSERT_EQ(rc2, LEO_ETOOBIG);
        ASSERT_STR_EQ(r.log.p, "[|ok|]\n");
        ASSERT_EQ(leo_sse_parser_feed(&p, "\n", 1), LEO_ETOOBIG);
        ASSERT_EQ(leo_sse_parser_finish(&p), LEO_ETOOBIG);
        rec_release(&r);
    }
}

TEST(event_over_the_cap_is_too_big)
{
    struct leo_sse_parser p;
    struct rec r;
    rec_init(&r, &p, 16);
    /* data "abcdef\nabcdef" is 13 bytes: fits */
    ASSERT_EQ(FEED(&p, "data: abcdef\ndata: abcdef\n\n"), 0);
    ASSERT_STR_EQ(r.log.p, "[|abcdef\nabcdef|]\n");
    /* 16 bytes exactly still fits, one more does not */
    ASSERT_EQ(FEED(&p, "data: abcdefgh\ndata: abcdefg\n\n"), 0);
    ASSERT_EQ(FEED(&p, "data: abcdefgh\ndata: abcdefgh\n\n"), LEO_ETOOBIG);
    ASSERT_EQ(r.events, 2);
    rec_release(&r);

    /* the event name counts too */
    rec_init(&r, &p, 16);
    ASSERT_EQ(FEED(&p, "event: 12345678\ndata: 123456789\n"), LEO_ETOOBIG);
    ASSERT_EQ(r.events, 0);
    rec_release(&r);
}

TEST(large_event_within_the_cap)
{
    size_t n = 1 << 20;
    struct leo_buf s = LEO_BUF_INIT;
    leo_buf_adds(&s, "data: ");
    for (size_t i = 0; i < n; i++)
        leo_buf_addch(&s, (char)('a' + i % 26));
    leo_buf_adds(&s, "\n\n");
    struct leo_sse_parser p;
    struct rec r;
    rec_init(&r, &p, n + 6); /* the line is "data: " and n bytes */
    /* odd-sized pieces: the line crosses many feeds */
    for (size_t at = 0; at < s.len; at += 4093) {
        size_t k = s.len - at < 4093 ? s.len - at : 4093;
        ASSERT_EQ(leo_sse_parser_feed(&p, s.p + at, k), 0);
    }
    ASSERT_EQ(r.events, 1);
    ASSERT_EQ(r.log.len, n + 5);
    ASSERT_MEM_EQ(r.log.p + 2, n, s.p + 6, n);
    ASSERT_EQ(leo_sse_parser_finish(&p), 0);
    rec_release(&r);
    leo_buf_release(&s);
}

TEST(stop_from_the_callback)
{
    static const char s[] = "data: 1\n\ndata: 2\n\ndata: 3\n\n";
    struct leo_sse_parser p;
    struct rec r;
    rec_init(&r, &p, 64);
    r.stop_after = 1;
    ASSERT_EQ(leo_sse_parser_feed(&p, s, sizeof(s) - 1), LEO_ECANCELED);
    ASSERT_EQ(r.events, 1);
    ASSERT_STR_EQ(r.log.p, "[|1|]\n");
    ASSERT_EQ(leo_sse_parser_feed(&p, s, sizeof(s) - 1), LEO_ECANCELED);
    ASSERT_EQ(r.events, 1);
    ASSERT_EQ(leo_sse_parser_finish(&p), LEO_ECANCELED);
    rec_release(&r);
}

TEST(release_from_the_callback)
{
    /* the pending partial line and data buffers are freed only after the callback returns (ASan checks) */
    static const char s[] = "data: 1\n\ndata: 2\n\ndata: partial";
    struct leo_sse_parser p;
    struct rec r;
    rec_init(&r, &p, 64);
    ASSERT_EQ(leo_sse_parser_feed(&p, "data: ", 6), 0);
    r.release_after = 1;
    ASSERT_EQ(leo_sse_parser_feed(&p, s + 6, sizeof(s) - 7), LEO_ECANCELED);
    ASSERT_EQ(r.events, 1);
    ASSERT_EQ(leo_sse_parser_feed(&p, s, sizeof(s) - 1), LEO_ECANCELED);
    rec_release(&r); /* a second release */
}

static void append(const char *event, const char *data, size_t len, const char *want)
{
    struct leo_buf out = LEO_BUF_INIT;
    leo_buf_adds(&out, "<");
    ASSERT_EQ(leo_sse_append_event(&out, event, data, len), 0);
    ASSERT_STR_EQ(out.p + 1, want);
    leo_buf_release(&out);
}

TEST(append_event_framing)
{
    append(NULL, "{\"x\":1}", 7, "data: {\"x\":1}\n\n");
    append("delta", "a\nb", 3, "event: delta\ndata: a\ndata: b\n\n");
    append(NULL, "", 0, "data: \n\n");
    append(NULL, NULL, 0, "data: \n\n");
    append(NULL, "a\r\nb\rc\n", 7, "data: a\ndata: b\ndata: c\ndata: \n\n");
    append("ev\nil", "x", 1, "event: ev\ndata: x\n\n");
}

TEST(append_event_round_trips_through_the_parser)
{
    static const char *const datas[] = {"x", "", "a\nb", "\n", "\n\n", "a\n\nb\n", " lead", "[DONE]"};
    struct leo_buf framed = LEO_BUF_INIT, want = LEO_BUF_INIT;
    for (size_t i = 0; i < sizeof(datas) / sizeof(datas[0]); i++) {
        leo_sse_append_event(&framed, i % 2 ? "e" : NULL, datas[i], strlen(datas[i]));
        leo_buf_addf(&want, "[%s|%s|]\n", i % 2 ? "e" : "", datas[i]);
    }
    parse_whole(framed.p, framed.len, 0, want.p);
    leo_buf_release(&framed);
    leo_buf_release(&want);
}

TEST(append_event_respects_the_cap)
{
    struct leo_buf out;
    leo_buf_init(&out, 20, 0);
    ASSERT_EQ(leo_buf_adds(&out, "keep"), 0);
    ASSERT_EQ(leo_sse_append_event(&out, "e", "0123456789", 10), LEO_ETOOBIG);
    ASSERT_STR_EQ(out.p, "keep");
    ASSERT_EQ(leo_sse_append_event(&out, NULL, "01", 2), 0);
    ASSERT_STR_EQ(out.p, "keepdata: 01\n\n");
    leo_buf_release(&out);
}

TEST_MAIN(TEST_ENTRY(parses_sample_stream), TEST_ENTRY(every_single_split_gives_the_same_events),
          TEST_ENTRY(every_pair_of_splits_gives_the_same_events), TEST_ENTRY(byte_by_byte_gives_the_same_events),
          TEST_ENTRY(line_endings_are_equivalent), TEST_ENTRY(split_crlf_is_one_line_end),
          TEST_ENTRY(comments_and_unknown_fields_dispatch_nothing), TEST_ENTRY(field_value_strips_exactly_one_space),
          TEST_ENTRY(id_persists_and_nul_id_is_ignored), TEST_ENTRY(byte_order_mark_is_skipped_once),
          TEST_ENTRY(finish_tells_clean_end_from_truncated_event),
          TEST_ENTRY(long_line_over_the_cap_is_too_big_at_any_split), TEST_ENTRY(event_over_the_cap_is_too_big),
          TEST_ENTRY(large_event_within_the_cap), TEST_ENTRY(stop_from_the_callback),
          TEST_ENTRY(release_from_the_callback), TEST_ENTRY(append_event_framing),
          TEST_ENTRY(append_event_round_trips_through_the_parser), TEST_ENTRY(append_event_respects_the_cap))
