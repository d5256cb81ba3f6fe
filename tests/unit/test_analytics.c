/*
 * test_analytics.c — the savings analytics: bucket arithmetic, the latency histogram and its percentiles, CSV
 * escaping, the routing saving, and batches flushed into a real redis-server (also across an outage).
 */
#include <math.h>
#include <stdlib.h>
#include <time.h>

#include "common/buf.h"
#include "common/metrics.h"
#include "common/redis.h"
#include "gateway/analytics.h"
#include "gateway/config.h"
#include "tests/unit/redis_harness.h"
#include "tests/unit/test.h"

TEST(bucket_arithmetic)
{
    /* 2024-05-01T13:47:29Z */
    uint64_t t = 1714571249;
    ASSERT_EQ(leo_analytics_bucket_start(LEO_AN_MINUTE, t), 1714571220);          /* 13:47:00 */
    ASSERT_EQ(leo_analytics_bucket_start(LEO_AN_HOUR, t), 1714568400);            /* 13:00:00 */
    ASSERT_EQ(leo_analytics_bucket_start(LEO_AN_DAY, t), 1714521600);             /* 2024-05-01T00:00:00Z */
    ASSERT_EQ(leo_analytics_bucket_start(LEO_AN_MINUTE, 1714571220), 1714571220); /* a start is its own bucket */
    ASSERT_EQ(leo_analytics_bucket_start(LEO_AN_HOUR, 1714571999), 1714568400);
    ASSERT_EQ(leo_analytics_bucket_start(LEO_AN_HOUR, 1714572000), 1714572000);
    ASSERT_EQ(leo_analytics_bucket_len(LEO_AN_MINUTE), 60);
    ASSERT_EQ(leo_analytics_bucket_len(LEO_AN_HOUR), 3600);
    ASSERT_EQ(leo_analytics_bucket_len(LEO_AN_DAY), 86400);
    ASSERT_EQ(leo_analytics_retention(LEO_AN_MINUTE), 48 * 3600);
    ASSERT_EQ(leo_analytics_retention(LEO_AN_HOUR), 90 * 86400);
    ASSERT_EQ(leo_analytics_retention(LEO_AN_DAY), 730 * 86400);
    ASSERT_EQ(leo_analytics_gran_parse("minute", 6), LEO_AN_MINUTE);
    ASSERT_EQ(leo_analytics_gran_parse("hour", 4), LEO_AN_HOUR);
    ASSERT_EQ(leo_analytics_gran_parse("day", 3), LEO_AN_DAY);
    ASSERT_EQ(leo_analytics_gran_parse("week", 4), -1);
    ASSERT_EQ(leo_analytics_gran_parse("hours", 5), -1);
}

TEST(latency_buckets_are_log_spaced)
{
    ASSERT_EQ(leo_analytics_latency_bucket(0), 0);
    ASSERT_EQ(leo_analytics_latency_bucket(0.999), 0);
    ASSERT_EQ(leo_analytics_latency_bucket(-5), 0);
    ASSERT_EQ(leo_analytics_latency_bucket(1.0), 1);
    ASSERT_EQ(leo_analytics_latency_bucket(1.18), 1); /* 2^(1/4) = 1.1892 */
    ASSERT_EQ(leo_analytics_latency_bucket(1.19), 2);
    ASSERT_EQ(leo_analytics_latency_bucket(2.0), 5);
    ASSERT_EQ(leo_analytics_latency_bucket(100.0), 27); /* 4 * log2(100) = 26.58 */
    ASSERT_EQ(leo_analytics_latency_bucket(1e9), LEO_AN_LAT_BUCKETS - 1);
    ASSERT_DBL_EQ(leo_analytics_latency_lower(0), 0.0);
    ASSERT_DBL_EQ(leo_analytics_latency_lower(1), 1.0);
    ASSERT_DBL_EQ(leo_analytics_latency_lower(5), 2.0);
    ASSERT_DBL_EQ(leo_analytics_latency_lower(9), 4.0);
    /* every bucket's lower bound falls into that bucket */
    for (unsigned i = 1; i < LEO_AN_LAT_BUCKETS; i++)
        ASSERT_EQ(leo_analytics_latency_bucket(leo_analytics_latency_lower(i) * 1.0000001), i);
}

TEST(percentile_from_histogram)
{
    uint64_t h[LEO_AN_LAT_BUCKETS];
    memset(h, 0, sizeof(h));
    ASSERT_DBL_EQ(leo_analytics_percentile(h, LEO_AN_LAT_BUCKETS, 0.5), 0.0);
    h[1] = 1; /* [1, 1.1892) */
    h[9] = 3; /* [4, 4.7568) */
    double w1 = exp2(0.25) - 1.0, w9 = exp2(2.25) - 4.0;
    /* p25: rank 1, the only observation of bucket 1, at its upper edge */
    ASSERT_DBL_EQ(leo_analytics_percentile(h, LEO_AN_LAT_BUCKETS, 0.25), 1.0 + w1);
    /* p50: rank 2, the first of three in bucket 9 */
    ASSERT_DBL_EQ(leo_analytics_percentile(h, LEO_AN_LAT_BUCKETS, 0.50), 4.0 + w9 / 3.0);
    /* p75: rank 3 */
    ASSERT_DBL_EQ(leo_analytics_percentile(h, LEO_AN_LAT_BUCKETS, 0.75), 4.0 + w9 * 2.0 / 3.0);
    /* p99: rank ceil(3.96) = 4, the last */
    ASSERT_DBL_EQ(leo_analytics_percentile(h, LEO_AN_LAT_BUCKETS, 0.99), exp2(2.25));
    /* summed histograms give the percentile of the union */
    uint64_t a[LEO_AN_LAT_BUCKETS], b[LEO_AN_LAT_BUCKETS], s[LEO_AN_LAT_BUCKETS];
    memset(a, 0, sizeof(a));
    memset(b, 0, sizeof(b));
    a[leo_analytics_latency_bucket(10)] = 90;
    b[leo_analytics_latency_bucket(1000)] = 10;
    for (int i = 0; i < LEO_AN_LAT_BUCKETS; i++)
        s[i] = a[i] + b[i];
    double p50 = leo_analytics_percentile(s, LEO_AN_LAT_BUCKETS, 0.5);
    double p95 = leo_analytics_percentile(s, LEO_AN_LAT_BUCKETS, 0.95);
    ASSERT_EQ(leo_analytics_latency_bucket(p50), leo_analytics_latency_bucket(10));
    ASSERT_EQ(leo_analytics_latency_bucket(p95), leo_analytics_latency_bucket(1000));
    /* the overflow bucket answers its lower bound */
    memset(h, 0, sizeof(h));
    h[LEO_AN_LAT_BUCKETS - 1] = 2;
    ASSERT_DBL_EQ(leo_analytics_percentile(h, LEO_AN_LAT_BUCKETS, 0.5), exp2(19.5));
}

static void csv(const char *in, const char *want)
{
    struct leo_buf b = LEO_BUF_INIT;
    leo_analytics_csv_field(&b, in, strlen(in));
    ASSERT_STR_EQ(b.p, want);
    leo_buf_release(&b);
}

TEST(csv_escaping)
{
    csv("gpt-4o-mini", "gpt-4o-mini");
    csv("", "");
    csv("a,b", "\"a,b\"");
    csv("say \"hi\"", "\"say \"\"hi\"\"\"");
    csv("two\nlines", "\"two\nlines\"");
    csv("cr\rhere", "\"cr\rhere\"");
    csv(" padded", "\" padded\"");
    csv("padded ", "\"padded \"");
    csv("in side", "in side");
}

static struct leo_config *parse(const char *json)
{
    setenv("LEO_KEY_HASH_SECRET", "unit-test-secret", 1);
    struct leo_buf err = LEO_BUF_INIT;
    struct leo_config *cfg = NULL;
    if (leo_config_parse_json(json, strlen(json), "test", &cfg, &err) != 0)
        TEST_FAIL_("parse failed: %s", err.p);
    leo_buf_release(&err);
    return cfg;
}

TEST(routing_saving)
{
    struct leo_config *cfg =
        parse("{\"providers\": [{\"name\": \"p1\", \"base_url\": \"http://127.0.0.1:1\"},"
              "{\"name\": \"p2\", \"base_url\": \"http://127.0.0.1:2\"}],"
              "\"prices\": {\"big\": {\"input\": 2.0, \"output\": 8.0}, \"small\": {\"input\": 0.1, \"output\": 0.4}},"
              "\"models\": ["
              "{\"name\": \"down\", \"deployments\": [{\"provider\": \"p1\", \"model\": \"big\", \"priority\": 0},"
              "  {\"provider\": \"p2\", \"model\": \"small\", \"priority\": 1}]},"
              "{\"name\": \"up\", \"deployments\": [{\"provider\": \"p1\", \"model\": \"small\", \"priority\": 0},"
              "  {\"provider\": \"p2\", \"model\": \"big\", \"priority\": 1}]},"
              "{\"name\": \"unpriced\", \"deployments\": [{\"provider\": \"p1\", \"model\": \"nothing-known\"},"
              "  {\"provider\": \"p2\", \"model\": \"small\", \"priority\": 1}]}]}");
    const struct leo_model *down = leo_config_find_model(cfg, leo_str_c("down"));
    const struct leo_model *up = leo_config_find_model(cfg, leo_str_c("up"));
    const struct leo_model *unpriced = leo_config_find_model(cfg, leo_str_c("unpriced"));
    ASSERT(down && up && unpriced);
    /* served by the cheaper second deployment: (1000*2 + 500*8)/1e6 - (1000*0.1 + 500*0.4)/1e6 */
    ASSERT_DBL_EQ(leo_analytics_routing_saving(cfg, down, &down->deployments[1], 1000, 500), 0.006 - 0.0003);
    /* served by the first: no saving */
    ASSERT_DBL_EQ(leo_analytics_routing_saving(cfg, down, &down->deployments[0], 1000, 500), 0);
    /* served by a dearer one: no negative saving */
    ASSERT_DBL_EQ(leo_analytics_routing_saving(cfg, up, &up->deployments[1], 1000, 500), 0);
    /* an unknown price on either side: nothing claimed */
    ASSERT_DBL_EQ(leo_analytics_routing_saving(cfg, unpriced, &unpriced->deployments[1], 1000, 500), 0);
    ASSERT_DBL_EQ(leo_analytics_routing_saving(cfg, down, NULL, 1000, 500), 0);
    leo_config_unref(cfg);
}

/* ---- flushing into a real redis-server ---- */

static struct redis_server srv;
static struct redis_loop fx;

static long long hget(const char *key, const char *field)
{
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", srv.port, tv);
    ASSERT(c && !c->err);
    redisReply *r = redisCommand(c, "HGET %s %s", key, field);
    ASSERT(r != NULL);
    long long v = r->type == REDIS_REPLY_STRING ? strtoll(r->str, NULL, 10) : -1;
    freeReplyObject(r);
    redisFree(c);
    return v;
}

static long long query_int(const char *fmt, const char *arg)
{
    redisReply *r = redis_harness_query(&srv, NULL, 0, fmt, arg);
    ASSERT(r != NULL);
    long long v = r->type == REDIS_REPLY_INTEGER ? r->integer
                  : r->type == REDIS_REPLY_ARRAY ? (long long)r->elements
                                                 : -1;
    freeReplyObject(r);
    return v;
}

/* True once Redis has acknowledged everything recorded; until then flushes (which does nothing while a flush
 * is in flight). */
static bool flushed(struct leo_analytics *a)
{
    if (leo_analytics_pending(a) == 0)
        return true;
    leo_analytics_flush(a);
    return false;
}

static void wait_flushed(struct leo_analytics *a)
{
    REDIS_LOOP_RUN_UNTIL(&fx, flushed(a), 30000);
}

TEST(batches_flush_into_redis_and_survive_an_outage)
{
    leo_redis_metrics_describe();
    leo_analytics_metrics_describe();
    redis_server_start(&srv, NULL, NULL);
    redis_loop_init(&fx);
    char url[200];
    redis_server_url(&srv, url, sizeof(url));
    struct leo_redis_opts o = {.url = url, .command_timeout_ms = 1000, .reconnect_min_ms = 20, .reconnect_max_ms = 50};
    struct leo_redis *redis = redis_loop_connect(&fx, &o);
    struct leo_analytics *a = leo_analytics_new(&fx.loop, redis);

    /* now: buckets whose expiry lies in the past would be deleted by Redis at once */
    uint64_t now = (uint64_t)time(NULL);
    struct leo_analytics_event e = {.unix_ms = now * 1000,
                                    .tenant = "acme",
                                    .key = "ci",
                                    .model = "gpt|x",
                                    .deployment = "mock/mock-small",
                                    .status = 200,
                                    .input_tokens = 11,
                                    .output_tokens = 7,
                                    .cost_usd = 0.0000039,
                                    .cache = "hit",
                                    .saved_tokens = 18,
                                    .saved_usd = 0.0000039,
                                    .latency_ms = 12.5};
    leo_analytics_record(a, &e);
    e.status = 502;
    e.cache = NULL;
    e.saved_tokens = 0;
    e.saved_usd = 0;
    e.routing_saved_usd = 0.000001;
    leo_analytics_record(a, &e);
    ASSERT_EQ(leo_analytics_pending(a), 2);
    wait_flushed(a);

    uint64_t m0 = leo_analytics_bucket_start(LEO_AN_MINUTE, now), d0 = leo_analytics_bucket_start(LEO_AN_DAY, now);
    char mkey[64], hkey[64], dkey[64];
    snprintf(mkey, sizeof(mkey), "leo:an:m:acme:%llu", (unsigned long long)m0);
    snprintf(hkey, sizeof(hkey), "leo:an:h:acme:%llu",
             (unsigned long long)leo_analytics_bucket_start(LEO_AN_HOUR, now));
    snprintf(dkey, sizeof(dkey), "leo:an:d:acme:%llu", (unsigned long long)d0);
    /* the model's '|' is escaped in the field names */
    ASSERT_EQ(hget(mkey, "gpt%7Cx|req"), 2);
    ASSERT_EQ(hget(hkey, "gpt%7Cx|req"), 2);
    ASSERT_EQ(hget(dkey, "gpt%7Cx|req"), 2);
    ASSERT_EQ(hget(mkey, "gpt%7Cx|err"), 1);
    ASSERT_EQ(hget(mkey, "gpt%7Cx|hit"), 1);
    ASSERT_EQ(hget(mkey, "gpt%7Cx|tin"), 22);
    ASSERT_EQ(hget(mkey, "gpt%7Cx|tout"), 14);
    ASSERT_EQ(hget(mkey, "gpt%7Cx|nusd"), 7800); /* nano-USD */
    ASSERT_EQ(hget(mkey, "gpt%7Cx|svnusd"), 3900);
    ASSERT_EQ(hget(mkey, "gpt%7Cx|svtok"), 18);
    ASSERT_EQ(hget(mkey, "gpt%7Cx|rtnusd"), 1000);
    ASSERT_EQ(hget(mkey, "gpt%7Cx|latus"), 25000);
    char lat[64];
    snprintf(lat, sizeof(lat), "gpt%%7Cx|lat|%u", leo_analytics_latency_bucket(12.5));
    ASSERT_EQ(hget(mkey, lat), 2);
    ASSERT_EQ(hget(mkey, "gpt%7Cx|dep|mock/mock-small"), 2);
    ASSERT_EQ(hget(mkey, "gpt%7Cx|key|ci"), 2);
    ASSERT_EQ(query_int("SISMEMBER leo:an:tenants %s", "acme"), 1);
    /* retention: the minute bucket expires 48 h after it ends, the day bucket 730 days after */
    ASSERT_EQ(query_int("EXPIRETIME %s", mkey), m0 + 60 + 48 * 3600);
    ASSERT_EQ(query_int("EXPIRETIME %s", dkey), d0 + 86400 + 730 * 86400);
    /* the batch left its marker */
    ASSERT_EQ(query_int("KEYS %s", "leo:an:flush:*"), 1);

    /* Redis goes away: requests keep accumulating and nothing is lost */
    redis_server_kill(&srv);
    REDIS_LOOP_RUN_UNTIL(&fx, !leo_redis_connected(redis), 30000);
    e.status = 200;
    for (int i = 0; i < 5; i++)
        leo_analytics_record(a, &e);
    leo_analytics_flush(a); /* refused at once: not connected */
    ASSERT_EQ(leo_analytics_pending(a), 5);
    leo_analytics_record(a, &e);
    ASSERT_EQ(leo_analytics_pending(a), 6);
    /* it comes back empty (it was killed, without persistence): only what was buffered is written */
    redis_server_restart(&srv);
    REDIS_LOOP_RUN_UNTIL(&fx, leo_redis_connected(redis), 30000);
    /* the first flush resends the batch that was refused, the second sends what came after it */
    wait_flushed(a);
    ASSERT_EQ(hget(mkey, "gpt%7Cx|req"), 6);
    ASSERT_EQ(hget(mkey, "gpt%7Cx|err"), -1);
    ASSERT_EQ(hget(mkey, "gpt%7Cx|nusd"), 6 * 3900);
    ASSERT_EQ(hget(mkey, "gpt%7Cx|rtnusd"), 6 * 1000);

    leo_analytics_stop(a);
    redis_loop_close_client(&fx, redis);
    redis_loop_done(&fx);
    leo_analytics_free(a);
    redis_server_stop(&srv);
}

TEST_MAIN(TEST_ENTRY(bucket_arithmetic), TEST_ENTRY(latency_buckets_are_log_spaced),
          TEST_ENTRY(percentile_from_histogram), TEST_ENTRY(csv_escaping), TEST_ENTRY(routing_saving),
          TEST_ENTRY(batches_flush_into_redis_and_survive_an_outage))
