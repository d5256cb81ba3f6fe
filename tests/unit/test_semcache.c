/* Unit tests of gateway/semcache.c: namespaces, thresholds, guards, feedback, and sharing through a real
 * redis-server between several caches (as several workers would). */
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

#include "../../common/error.h"
#include "../../common/redis.h"
#include "../../gateway/embed.h"
#include "../../gateway/semcache.h"
#include "redis_harness.h"
#include "test.h"

#define PARA_A "How do I reverse a list in Python?"
#define PARA_B "how can I reverse a list in Python"

static json_t *chat(const char *system, const char *user, double temperature)
{
    json_t *msgs = json_array();
    if (system)
        json_array_append_new(msgs, json_pack("{s:s,s:s}", "role", "system", "content", system));
    json_array_append_new(msgs, json_pack("{s:s,s:s}", "role", "user", "content", user));
    return json_pack("{s:s,s:o,s:f}", "model", "m", "messages", msgs, "temperature", temperature);
}

static struct leo_cache_key key_of(const char *s)
{
    struct leo_cache_key k;
    snprintf(k.s, sizeof(k.s), "%s", s);
    k.len = strlen(k.s);
    return k;
}

/* Looks text up (synchronously: the local embedder never needs I/O); returns the hit's similarity or -1. */
static double look(struct leo_semcache *sc, const char *tenant, const char *model, const char *system, const char *text,
                   double temperature, struct leo_semcache_match *m)
{
    json_t *req = chat(system, text, temperature);
    struct leo_semcache_query q;
    bool ok = leo_semcache_query_init(sc, tenant, LEO_DIALECT_OPENAI, model, req, &q);
    ASSERT(ok);
    struct leo_semcache_match mm;
    int rc = leo_semcache_lookup(sc, &q, &mm, NULL, NULL, NULL);
    ASSERT(rc == LEO_SEMCACHE_HIT || rc == LEO_SEMCACHE_MISS);
    leo_semcache_query_release(&q);
    json_decref(req);
    if (rc == LEO_SEMCACHE_HIT && m)
        *m = mm;
    return rc == LEO_SEMCACHE_HIT ? mm.similarity : -1;
}

static void add(struct leo_semcache *sc, const char *tenant, const char *model, const char *system, const char *text,
                double temperature, const char *answer)
{
    json_t *req = chat(system, text, temperature);
    struct leo_semcache_query q;
    ASSERT(leo_semcache_query_init(sc, tenant, LEO_DIALECT_OPENAI, model, req, &q));
    struct leo_cache_key k = key_of(answer);
    ASSERT_EQ(leo_semcache_add(sc, &q, &k, 60000, NULL), 0);
    leo_semcache_query_release(&q);
    json_decref(req);
}

static double similarity(struct leo_embedder *e, const char *a, const char *b)
{
    float va[LEO_EMBED_MAX_DIM], vb[LEO_EMBED_MAX_DIM];
    ASSERT_EQ(leo_embed_now(e, leo_str_c(a), va), 0);
    ASSERT_EQ(leo_embed_now(e, leo_str_c(b), vb), 0);
    return leo_embed_cosine(va, vb, leo_embedder_dim(e));
}

struct fb {
    int calls;
    enum leo_semcache_feedback_result r;
    double thr;
};

static void on_fb(enum leo_semcache_feedback_result r, double thr, void *ud)
{
    struct fb *f = ud;
    f->calls++;
    f->r = r;
    f->thr = thr;
}

TEST(hit_miss_and_namespaces)
{
    struct leo_embedder *e = leo_embed_local_new(LEO_EMBED_DEFAULT_SEED);
    double sim = similarity(e, PARA_A, PARA_B);
    ASSERT(sim > 0.3 && sim < 0.999);
    struct leo_semcache_opts o = {.embedder = e, .threshold = sim - 0.05};
    struct leo_semcache *sc = leo_semcache_new(&o);

    ASSERT(look(sc, "t1", "m", NULL, PARA_A, 0, NULL) < 0);
    add(sc, "t1", "m", NULL, PARA_A, 0, "t1:answer-a");
    ASSERT_EQ(leo_semcache_entries(sc), 1u);
    struct leo_semcache_match m;
    ASSERT(look(sc, "t1", "m", NULL, PARA_A, 0, &m) > 0.999);
    ASSERT_STR_EQ(m.answer.s, "t1:answer-a");
    ASSERT(look(sc, "t1", "m", NULL, PARA_B, 0, &m) > 0);
    ASSERT_STR_EQ(m.answer.s, "t1:answer-a");

    /* nothing crosses tenants, models, system prompts or sampling parameters */
    ASSERT(look(sc, "t2", "m", NULL, PARA_A, 0, NULL) < 0);
    ASSERT(look(sc, "t1", "other", NULL, PARA_A, 0, NULL) < 0);
    ASSERT(look(sc, "t1", "m", "You answer in French.", PARA_A, 0, NULL) < 0);
    ASSERT(look(sc, "t1", "m", NULL, PARA_A, 0.7, NULL) < 0);

    /* the same prompt but for case, spacing and punctuation is its own entry, found without the index */
    struct leo_semcache_match me;
    ASSERT(look(sc, "t1", "m", NULL, "  how DO i reverse a list in Python??", 0, &me) > 0.999999);
    ASSERT_STR_EQ(me.answer.s, "t1:answer-a");
    ASSERT(me.similarity == 1.0);

    /* unrelated prompts stay below the threshold */
    ASSERT(look(sc, "t1", "m", NULL, "Write a haiku about the sea at night.", 0, NULL) < 0);

    leo_semcache_free(sc);
    leo_embedder_free(e);
}

TEST(guard_refuses_different_numbers)
{
    struct leo_embedder *e = leo_embed_local_new(LEO_EMBED_DEFAULT_SEED);
    struct leo_semcache_opts o = {.embedder = e, .threshold = 0.3};
    struct leo_semcache *sc = leo_semcache_new(&o);
    add(sc, "t1", "m", NULL, "What is 2+3?", 0, "t1:five");
    ASSERT(look(sc, "t1", "m", NULL, "What is 2+3?", 0, NULL) > 0.999);
    ASSERT(look(sc, "t1", "m", NULL, "What is 2+4?", 0, NULL) < 0);
    ASSERT(look(sc, "t1", "m", NULL, "What is not 2+3?", 0, NULL) < 0);
    struct leo_buf stats = LEO_BUF_INIT;
    leo_semcache_stats_json(sc, "t1", &stats);
    json_t *j = json_loads(stats.p, 0, NULL);
    ASSERT(json_is_array(j));
    ASSERT_EQ(json_array_size(j), 1u);
    ASSERT_EQ(json_integer_value(json_object_get(json_array_get(j, 0), "guard_refusals")), 2);
    ASSERT_EQ(json_integer_value(json_object_get(json_array_get(j, 0), "hits")), 1);
    json_decref(j);
    leo_buf_release(&stats);
    leo_semcache_free(sc);
    leo_embedder_free(e);
}

/* A prompt that dropped the word telling cached prompts apart is ambiguous: the lookup stops at the first such
 * candidate instead of going on to a less similar one that the guard would let through (a swapped word). */
TEST(dropped_word_stops_the_search)
{
    struct leo_embedder *e = leo_embed_local_new(LEO_EMBED_DEFAULT_SEED);
    const char *query = "How do I a diff in Spark?";
    const char *own = "How do I merge a diff in Spark?", *swapped = "How do I merge a patch in Spark?";
    double s_own = similarity(e, query, own), s_swapped = similarity(e, query, swapped);
    /* the case this test needs: the query's own prompt is nearer, the swapped one still above the threshold */
    ASSERT(s_own > s_swapped);
    struct leo_semcache_opts o = {.embedder = e, .threshold = s_swapped - 0.02};
    struct leo_semcache *sc = leo_semcache_new(&o);
    add(sc, "t1", "m", NULL, swapped, 0, "t1:swapped");
    /* alone, the swapped prompt passes the guard: no rule sees a swapped word */
    struct leo_semcache_match m;
    ASSERT(look(sc, "t1", "m", NULL, query, 0, &m) > 0);
    ASSERT_STR_EQ(m.answer.s, "t1:swapped");
    /* with the prompt the query dropped a word from, nothing is served */
    add(sc, "t1", "m", NULL, own, 0, "t1:own");
    ASSERT(look(sc, "t1", "m", NULL, query, 0, NULL) < 0);
    /* and the stored prompts themselves still hit */
    ASSERT(look(sc, "t1", "m", NULL, own, 0, &m) > 0.999);
    ASSERT_STR_EQ(m.answer.s, "t1:own");
    leo_semcache_free(sc);
    leo_embedder_free(e);
}

TEST(ineligible_requests)
{
    struct leo_embedder *e = leo_embed_local_new(LEO_EMBED_DEFAULT_SEED);
    struct leo_semcache_opts o = {.embedder = e};
    struct leo_semcache *sc = leo_semcache_new(&o);
    json_t *req = json_pack("{s:s,s:[{s:s,s:s},{s:s,s:s,s:s}]}", "model", "m", "messages", "role", "user", "content",
                            "hi", "role", "tool", "tool_call_id", "c1", "content", "42");
    struct leo_semcache_query q;
    ASSERT(!leo_semcache_query_init(sc, "t1", LEO_DIALECT_OPENAI, "m", req, &q));
    ASSERT(q.reason != LEO_SEMGUARD_ELIGIBLE);
    struct leo_cache_key k = key_of("t1:x");
    ASSERT_EQ(leo_semcache_add(sc, &q, &k, 1000, NULL), LEO_EINVAL);
    leo_semcache_query_release(&q);
    json_decref(req);
    leo_semcache_free(sc);
    leo_embedder_free(e);
}

TEST(feedback_raises_then_evicts)
{
    struct leo_embedder *e = leo_embed_local_new(LEO_EMBED_DEFAULT_SEED);
    double sim = similarity(e, PARA_A, PARA_B);
    struct leo_semcache_opts o = {.embedder = e, .threshold = sim - 0.05};
    struct leo_semcache *sc = leo_semcache_new(&o);
    add(sc, "t1", "m", NULL, PARA_A, 0, "t1:a");
    struct leo_semcache_match m;
    ASSERT(look(sc, "t1", "m", NULL, PARA_B, 0, &m) > 0);
    leo_semcache_served(sc, "req-1", &m);

    struct fb f = {0};
    leo_semcache_feedback(sc, "t2", "req-1", false, on_fb, &f); /* another tenant's request: unknown */
    ASSERT_EQ(f.calls, 1);
    ASSERT_EQ(f.r, LEO_SEMCACHE_FB_UNKNOWN);
    leo_semcache_feedback(sc, "t1", "req-404", false, on_fb, &f);
    ASSERT_EQ(f.r, LEO_SEMCACHE_FB_UNKNOWN);

    leo_semcache_feedback(sc, "t1", "req-1", false, on_fb, &f);
    ASSERT_EQ(f.calls, 3);
    ASSERT_EQ(f.r, LEO_SEMCACHE_FB_APPLIED);
    ASSERT(f.thr > m.similarity);
    /* the paraphrase no longer hits that entry; the original prompt still does */
    ASSERT(look(sc, "t1", "m", NULL, PARA_B, 0, NULL) < 0);
    ASSERT(look(sc, "t1", "m", NULL, PARA_A, 0, NULL) > 0.999);

    leo_semcache_feedback(sc, "t1", "req-1", false, on_fb, &f);
    ASSERT_EQ(f.r, LEO_SEMCACHE_FB_EVICTED);
    ASSERT_EQ(leo_semcache_entries(sc), 0u);
    ASSERT(look(sc, "t1", "m", NULL, PARA_A, 0, NULL) < 0);
    leo_semcache_free(sc);
    leo_embedder_free(e);
}

TEST(runtime_threshold_and_purge)
{
    struct leo_embedder *e = leo_embed_local_new(LEO_EMBED_DEFAULT_SEED);
    double sim = similarity(e, PARA_A, PARA_B);
    struct leo_semcache_opts o = {.embedder = e, .threshold = sim - 0.05};
    struct leo_semcache *sc = leo_semcache_new(&o);
    add(sc, "t1", "m", NULL, PARA_A, 0, "t1:a");
    add(sc, "t2", "m", NULL, PARA_A, 0, "t2:a");
    ASSERT_EQ(leo_semcache_set_threshold(sc, "t1", "m", 0.9999), 0);
    ASSERT(look(sc, "t1", "m", NULL, PARA_B, 0, NULL) < 0);
    ASSERT(look(sc, "t2", "m", NULL, PARA_B, 0, NULL) > 0); /* another tenant's threshold is untouched */
    ASSERT_EQ(leo_semcache_set_threshold(sc, "t1", "m", 0), 0);
    ASSERT(look(sc, "t1", "m", NULL, PARA_B, 0, NULL) > 0);
    ASSERT_EQ(leo_semcache_set_threshold(sc, "t1", NULL, 1.5), LEO_EINVAL);

    /* one namespace's own threshold wins over its model's and its tenant's */
    add(sc, "t1", "m2", NULL, PARA_A, 0, "t1:m2");
    struct leo_buf st = LEO_BUF_INIT;
    leo_semcache_stats_json(sc, "t1", &st);
    json_t *arr = json_loads(st.p, 0, NULL);
    leo_buf_release(&st);
    char rule[64] = "";
    for (size_t i = 0; i < json_array_size(arr); i++)
        if (strcmp(json_string_value(json_object_get(json_array_get(arr, i), "model")), "m") == 0)
            snprintf(rule, sizeof(rule), "ns:%s", json_string_value(json_object_get(json_array_get(arr, i), "namespace")));
    json_decref(arr);
    ASSERT(rule[0] != '\0');
    ASSERT_EQ(leo_semcache_set_threshold(sc, "t1", rule, 0.9999), 0);
    ASSERT(look(sc, "t1", "m", NULL, PARA_B, 0, NULL) < 0);
    ASSERT(look(sc, "t1", "m2", NULL, PARA_B, 0, NULL) > 0); /* another namespace of the tenant */
    ASSERT_EQ(leo_semcache_set_threshold(sc, "t1", rule, 0), 0);
    ASSERT(look(sc, "t1", "m", NULL, PARA_B, 0, NULL) > 0);

    leo_semcache_purge(sc, "t1");
    ASSERT_EQ(leo_semcache_entries(sc), 1u);
    ASSERT(look(sc, "t1", "m", NULL, PARA_A, 0, NULL) < 0);
    ASSERT(look(sc, "t2", "m", NULL, PARA_A, 0, NULL) > 0.999);
    leo_semcache_free(sc);
    leo_embedder_free(e);
}

/* ---- shared through Redis ---- */

static struct redis_server srv;

struct rfix {
    struct redis_loop l;
    struct leo_redis *redis;
};

static void rfix_init(struct rfix *rf)
{
    redis_loop_init(&rf->l);
    char url[200];
    snprintf(url, sizeof(url), "unix://%s", srv.sock);
    struct leo_redis_opts o = {.url = url, .command_timeout_ms = 500, .reconnect_min_ms = 20, .reconnect_max_ms = 50};
    rf->redis = redis_loop_connect(&rf->l, &o);
}

static void rfix_done(struct rfix *rf)
{
    redis_loop_close_client(&rf->l, rf->redis);
    redis_loop_done(&rf->l);
}

/* Runs the loop until cond holds (each poll of the stream is an event; at most 10 s). */
#define RUN_UNTIL(rf, cond) REDIS_LOOP_RUN_UNTIL(&(rf)->l, cond, 10000)

TEST(shared_through_redis)
{
    redis_server_start(&srv, NULL, NULL);
    struct rfix rf;
    rfix_init(&rf);
    struct leo_embedder *e = leo_embed_local_new(LEO_EMBED_DEFAULT_SEED);
    double sim = similarity(e, PARA_A, PARA_B);
    struct leo_semcache_opts o = {.loop = &rf.l.loop, .redis = rf.redis, .embedder = e, .threshold = sim - 0.05,
                                  .poll_ms = 10};
    struct leo_semcache *a = leo_semcache_new(&o), *b = leo_semcache_new(&o);
    RUN_UNTIL(&rf, leo_semcache_synced(a) && leo_semcache_synced(b));

    add(a, "t1", "m", NULL, PARA_A, 0, "t1:shared");
    RUN_UNTIL(&rf, leo_semcache_entries(b) == 1);
    struct leo_semcache_match m;
    ASSERT(look(b, "t1", "m", NULL, PARA_B, 0, &m) > 0);
    ASSERT_STR_EQ(m.answer.s, "t1:shared");
    ASSERT(look(b, "t2", "m", NULL, PARA_B, 0, NULL) < 0);

    /* a worker started later rebuilds from the stream */
    struct leo_semcache *c = leo_semcache_new(&o);
    RUN_UNTIL(&rf, leo_semcache_synced(c));
    ASSERT_EQ(leo_semcache_entries(c), 1u);

    /* feedback on a hit served by b, received by a: found through Redis, and the raised threshold reaches b */
    leo_semcache_served(b, "req-r1", &m);
    struct fb f = {0};
    /* the served record is written before the feedback's GET on the same connection, so it is there */
    leo_semcache_feedback(a, "t1", "req-r1", false, on_fb, &f);
    RUN_UNTIL(&rf, f.calls == 1);
    ASSERT_EQ(f.r, LEO_SEMCACHE_FB_APPLIED);
    RUN_UNTIL(&rf, look(b, "t1", "m", NULL, PARA_B, 0, NULL) < 0);
    ASSERT(look(c, "t1", "m", NULL, PARA_A, 0, NULL) > 0.999);

    /* a purge on one worker empties the others */
    leo_semcache_purge(c, "t1");
    RUN_UNTIL(&rf, leo_semcache_entries(a) == 0 && leo_semcache_entries(b) == 0);

    /* Redis gone: the cache goes on as the worker's own */
    redis_server_kill(&srv);
    add(a, "t1", "m", NULL, PARA_A, 0, "t1:local");
    ASSERT(look(a, "t1", "m", NULL, PARA_A, 0, NULL) > 0.999);

    leo_semcache_free(a);
    leo_semcache_free(b);
    leo_semcache_free(c);
    rfix_done(&rf);
    leo_embedder_free(e);
    redis_server_stop(&srv);
}

TEST_MAIN(TEST_ENTRY(hit_miss_and_namespaces), TEST_ENTRY(guard_refuses_different_numbers),
          TEST_ENTRY(dropped_word_stops_the_search),
          TEST_ENTRY(ineligible_requests), TEST_ENTRY(feedback_raises_then_evicts),
          TEST_ENTRY(runtime_threshold_and_purge), TEST_ENTRY(shared_through_redis))
