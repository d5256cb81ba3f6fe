#include <stdlib.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/error.h"
#include "common/http_server.h"
#include "common/keyhash.h"
#include "common/log.h"
#include "gateway/config.h"
#include "gateway/prices.h"
#include "tests/unit/test.h"

/* Key hashes below were computed outside this code base for the passphrase "unit-test-secret":
 * BLAKE2b-256(key, key = BLAKE2b-256("leo-keyhash-v1:unit-test-secret")). */
#define CI_KEY "sk-acme-ci-000000000001"
#define CI_HASH "kh1:444c06c2d1b3c8192ec2e72e29e1edbd79771d977b46644d7ab79aebc2cdc315"
#define PROD_KEY "sk-acme-prod-00000000002"
#define PROD_HASH "kh1:2d971a066dd01db1bf458cb048c5af90400609c4b0d70b8968d2f3127a84d3ab"
#define OTHER_KEY "sk-other-000000000003"
#define OTHER_HASH "kh1:a455092b73c5d623c1fc55fcebd318ebd079bfff3a50d4f8d02f0f8a85e745c5"

/* The same document as the complete example in docs/configuration.md, with test variable names. */
static const char full_example[] =
    "{\n"
    "  \"listen\": \"127.0.0.1:9090\",\n"
    "  \"workers\": 3,\n"
    "  \"drain_timeout_ms\": 15000,\n"
    "  \"log_level\": \"warn\",\n"
    "  \"access_log\": false,\n"
    "  \"limits\": {\"max_header_bytes\": 32768, \"max_headers\": 50, \"max_body_bytes\": 8388608,\n"
    "             \"header_timeout_ms\": 5000, \"body_timeout_ms\": 20000, \"idle_timeout_ms\": 30000,\n"
    "             \"max_connections\": 500, \"max_pending_write_bytes\": 65536},\n"
    "  \"auth\": {\"key_hash_secret_env\": \"LEO_TEST_SECRET\"},\n"
    "  \"defaults\": {\"max_tokens\": 1024},\n"
    "  \"providers\": [\n"
    "    {\"name\": \"openai\", \"type\": \"openai\", \"base_url\": \"https://api.openai.com/v1/\",\n"
    "     \"api_keys\": [{\"env\": \"LEO_TEST_KEY_A\"}, {\"env\": \"LEO_TEST_KEY_B\"}],\n"
    "     \"timeouts\": {\"connect_ms\": 5000, \"first_byte_ms\": 60000, \"total_ms\": 300000}},\n"
    "    {\"name\": \"local\", \"base_url\": \"http://127.0.0.1:9100/v1\", \"api_key_env\": \"LEO_TEST_KEY_B\"},\n"
    "    {\"name\": \"mock\", \"type\": \"openai\", \"base_url\": \"http://127.0.0.1:9100\"}\n"
    "  ],\n"
    "  \"models\": [\n"
    "    {\"name\": \"gpt-4o-mini\", \"deployments\": [{\"provider\": \"openai\", \"model\": "
    "\"gpt-4o-mini-2024-07-18\"},\n"
    "                                           {\"provider\": \"local\", \"model\": \"mock-small\"}]},\n"
    "    {\"name\": \"fast\", \"deployments\": [{\"provider\": \"mock\"}]}\n"
    "  ],\n"
    "  \"prices\": {\"my-model\": {\"input\": 0.5, \"output\": 1.5}, \"gpt-4o\": {\"input\": 1, \"output\": 2}},\n"
    "  \"tenants\": [\n"
    "    {\"id\": \"acme\", \"allow_byok\": true, \"models\": [\"fast\"],\n"
    "     \"keys\": [{\"name\": \"ci\", \"hash\": \"" CI_HASH "\"}, {\"name\": \"prod\", \"hash\": \"" PROD_HASH
    "\"}]},\n"
    "    {\"id\": \"other\", \"keys\": [{\"name\": \"Other key 1\", \"hash\": \"" OTHER_HASH "\"}]}\n"
    "  ]\n"
    "}\n";

static void set_test_env(void)
{
    setenv("LEO_TEST_SECRET", "unit-test-secret", 1);
    setenv("LEO_TEST_KEY_A", "provider-secret-a", 1);
    setenv("LEO_TEST_KEY_B", "provider-secret-b", 1);
    unsetenv("LEO_TEST_UNSET_VAR");
}

static struct leo_config *parse_ok(const char *json)
{
    struct leo_buf err = LEO_BUF_INIT;
    struct leo_config *cfg = NULL;
    int rc = leo_config_parse_json(json, strlen(json), "test", &cfg, &err);
    if (rc != 0)
        TEST_FAIL_("parse failed: %s", err.p);
    ASSERT(cfg != NULL);
    ASSERT_EQ(err.len, 0);
    leo_buf_release(&err);
    return cfg;
}

/* Parses json, expects failure with exactly the message want. */
static void parse_fails(const char *json, const char *want)
{
    struct leo_buf err = LEO_BUF_INIT;
    struct leo_config *cfg = (struct leo_config *)&err; /* must be reset to NULL */
    int rc = leo_config_parse_json(json, strlen(json), "test", &cfg, &err);
    if (rc != LEO_ECONFIG)
        TEST_FAIL_("parse of %s returned %d, want LEO_ECONFIG", json, rc);
    ASSERT(cfg == NULL);
    ASSERT_STR_EQ(err.p, want);
    leo_buf_release(&err);
}

TEST(full_example_lands_everywhere)
{
    set_test_env();
    struct leo_config *cfg = parse_ok(full_example);
    ASSERT_EQ(cfg->refs, 1);
    ASSERT_STR_EQ(cfg->source, "test");
    ASSERT_STR_EQ(cfg->listen_host, "127.0.0.1");
    ASSERT_EQ(cfg->listen_port, 9090);
    ASSERT_EQ(cfg->workers, 3);
    ASSERT_EQ(cfg->drain_timeout_ms, 15000);
    ASSERT_EQ(cfg->log_level, LEO_LOG_WARN);
    ASSERT_EQ(cfg->access_log, false);
    ASSERT_EQ(cfg->limits.max_header_bytes, 32768);
    ASSERT_EQ(cfg->limits.max_headers, 50);
    ASSERT_EQ(cfg->limits.max_body_bytes, 8388608);
    ASSERT_EQ(cfg->limits.header_timeout_ms, 5000);
    ASSERT_EQ(cfg->limits.body_timeout_ms, 20000);
    ASSERT_EQ(cfg->limits.idle_timeout_ms, 30000);
    ASSERT_EQ(cfg->limits.max_connections, 500);
    ASSERT_EQ(cfg->limits.max_pending_write, 65536);
    ASSERT_EQ(cfg->default_max_tokens, 1024);

    uint8_t secret[LEO_KEYHASH_SECRET_BYTES];
    leo_keyhash_secret_from("unit-test-secret", 16, secret);
    ASSERT_MEM_EQ(cfg->key_hash_secret, sizeof(secret), secret, sizeof(secret));

    ASSERT_EQ(cfg->nproviders, 3);
    const struct leo_provider *p = &cfg->providers[0];
    ASSERT_STR_EQ(p->name, "openai");
    ASSERT_STR_EQ(p->type, "openai");
    ASSERT_STR_EQ(p->base_url, "https://api.openai.com/v1");
    ASSERT_EQ(p->nkeys, 2);
    ASSERT_STR_EQ(p->keys[0].env, "LEO_TEST_KEY_A");
    ASSERT_STR_EQ(p->keys[0].value, "provider-secret-a");
    ASSERT_STR_EQ(p->keys[1].env, "LEO_TEST_KEY_B");
    ASSERT_STR_EQ(p->keys[1].value, "provider-secret-b");
    ASSERT_EQ(p->connect_timeout_ms, 5000);
    ASSERT_EQ(p->first_byte_timeout_ms, 60000);
    ASSERT_EQ(p->total_timeout_ms, 300000);
    p = &cfg->providers[1];
    ASSERT_STR_EQ(p->name, "local");
    ASSERT_STR_EQ(p->type, "openai"); /* the default type */
    ASSERT_STR_EQ(p->base_url, "http://127.0.0.1:9100/v1");
    ASSERT_EQ(p->nkeys, 1);
    ASSERT_STR_EQ(p->keys[0].env, "LEO_TEST_KEY_B");
    ASSERT_STR_EQ(p->keys[0].value, "provider-secret-b");
    ASSERT_EQ(p->connect_timeout_ms, 10000);
    ASSERT_EQ(p->first_byte_timeout_ms, 120000);
    ASSERT_EQ(p->total_timeout_ms, 600000);
    p = &cfg->providers[2];
    ASSERT_STR_EQ(p->name, "mock");
    ASSERT_STR_EQ(p->base_url, "http://127.0.0.1:9100");
    ASSERT_EQ(p->nkeys, 0);

    ASSERT_EQ(cfg->nmodels, 2);
    const struct leo_model *m = &cfg->models[0];
    ASSERT_STR_EQ(m->name, "gpt-4o-mini");
    ASSERT_EQ(m->ndeployments, 2);
    ASSERT(m->deployments[0].provider == &cfg->providers[0]);
    ASSERT_STR_EQ(m->deployments[0].model, "gpt-4o-mini-2024-07-18");
    ASSERT(m->deployments[1].provider == &cfg->providers[1]);
    ASSERT_STR_EQ(m->deployments[1].model, "mock-small");
    m = &cfg->models[1];
    ASSERT_STR_EQ(m->name, "fast");
    ASSERT_EQ(m->ndeployments, 1);
    ASSERT(m->deployments[0].provider == &cfg->providers[2]);
    ASSERT_STR_EQ(m->deployments[0].model, "fast"); /* defaults to the client name */

    size_t ndefaults;
    leo_default_prices(&ndefaults);
    /* two config entries; "gpt-4o" replaces the default row of the same name */
    ASSERT_EQ(cfg->nprices, 2 + ndefaults - 1);
    ASSERT_STR_EQ(cfg->prices[0].model, "my-model");
    ASSERT_DBL_EQ(cfg->prices[0].input_per_mtok, 0.5);
    ASSERT_DBL_EQ(cfg->prices[0].output_per_mtok, 1.5);
    ASSERT_STR_EQ(cfg->prices[1].model, "gpt-4o");
    ASSERT_DBL_EQ(cfg->prices[1].input_per_mtok, 1);
    ASSERT_DBL_EQ(cfg->prices[1].output_per_mtok, 2);
    for (size_t i = 2; i < cfg->nprices; i++)
        ASSERT(strcmp(cfg->prices[i].model, "gpt-4o") != 0);

    ASSERT_EQ(cfg->ntenants, 2);
    const struct leo_tenant *t = &cfg->tenants[0];
    ASSERT_STR_EQ(t->id, "acme");
    ASSERT_EQ(t->allow_byok, true);
    ASSERT_EQ(t->nmodels, 1);
    ASSERT_STR_EQ(t->models[0], "fast");
    ASSERT_EQ(t->nkeys, 2);
    ASSERT_STR_EQ(t->keys[0].name, "ci");
    ASSERT(t->keys[0].tenant == t);
    uint8_t h[LEO_KEYHASH_BYTES];
    ASSERT_EQ(leo_keyhash_parse(LEO_STR_LIT(CI_HASH), h), 0);
    ASSERT_MEM_EQ(t->keys[0].hash, sizeof(h), h, sizeof(h));
    ASSERT_STR_EQ(t->keys[1].name, "prod");
    t = &cfg->tenants[1];
    ASSERT_STR_EQ(t->id, "other");
    ASSERT_EQ(t->allow_byok, false);
    ASSERT_EQ(t->nmodels, 0);
    ASSERT(t->models == NULL);
    ASSERT_EQ(t->nkeys, 1);
    ASSERT_STR_EQ(t->keys[0].name, "Other key 1");
    leo_config_unref(cfg);
}

TEST(empty_document_gets_every_default)
{
    unsetenv("LEO_KEY_HASH_SECRET");
    struct leo_config *cfg = parse_ok("{}");
    ASSERT_STR_EQ(cfg->listen_host, "0.0.0.0");
    ASSERT_EQ(cfg->listen_port, 8080);
    ASSERT_EQ(cfg->workers, 0);
    ASSERT_EQ(cfg->drain_timeout_ms, 30000);
    ASSERT_EQ(cfg->busy_poll_us, 0);
    ASSERT_EQ(cfg->log_level, LEO_LOG_INFO);
    ASSERT_EQ(cfg->access_log, true);
    ASSERT_EQ(cfg->default_max_tokens, 4096);
    struct leo_http_limits d;
    memset(&d, 0, sizeof(d)); /* the struct has padding; the snapshot's copy sits in zeroed memory */
    leo_http_limits_default(&d);
    ASSERT_EQ(cfg->limits.max_header_bytes, 16384);
    ASSERT_EQ(cfg->limits.max_headers, 100);
    ASSERT_EQ(cfg->limits.max_body_bytes, 4194304);
    ASSERT_EQ(cfg->limits.header_timeout_ms, 10000);
    ASSERT_EQ(cfg->limits.body_timeout_ms, 30000);
    ASSERT_EQ(cfg->limits.idle_timeout_ms, 60000);
    ASSERT_EQ(cfg->limits.max_connections, 10000);
    ASSERT_EQ(cfg->limits.max_pending_write, 1048576);
    ASSERT_EQ(memcmp(&cfg->limits, &d, sizeof(d)), 0);
    ASSERT_EQ(cfg->nproviders, 0);
    ASSERT_EQ(cfg->nmodels, 0);
    ASSERT_EQ(cfg->ntenants, 0);
    size_t ndefaults;
    leo_default_prices(&ndefaults);
    ASSERT_EQ(cfg->nprices, ndefaults);
    /* the development secret, since LEO_KEY_HASH_SECRET is unset */
    uint8_t secret[LEO_KEYHASH_SECRET_BYTES];
    ASSERT_EQ(leo_keyhash_secret_from_env("LEO_KEY_HASH_SECRET", secret), 1);
    ASSERT_MEM_EQ(cfg->key_hash_secret, sizeof(secret), secret, sizeof(secret));
    ASSERT(leo_config_find_model(cfg, LEO_STR_LIT("gpt-4o")) == NULL);
    ASSERT(leo_config_find_key(cfg, LEO_STR_LIT("sk-anything")) == NULL);
    leo_config_unref(cfg);
}

TEST(listen_forms)
{
    struct leo_config *cfg = parse_ok("{\"listen\": \"[::1]:8443\"}");
    ASSERT_STR_EQ(cfg->listen_host, "::1");
    ASSERT_EQ(cfg->listen_port, 8443);
    leo_config_unref(cfg);
    cfg = parse_ok("{\"listen\": \"127.0.0.1:0\"}");
    ASSERT_STR_EQ(cfg->listen_host, "127.0.0.1");
    ASSERT_EQ(cfg->listen_port, 0);
    leo_config_unref(cfg);
    parse_fails("{\"listen\": \"127.0.0.1\"}",
                "listen: expected \"host:port\" (IPv6 as \"[::1]:8080\"), got \"127.0.0.1\"");
    parse_fails("{\"listen\": \"127.0.0.1:70000\"}",
                "listen: expected \"host:port\" (IPv6 as \"[::1]:8080\"), got \"127.0.0.1:70000\"");
    parse_fails("{\"listen\": \"::1:8080\"}", "listen: an IPv6 address goes in brackets, as in \"[::1]:8080\"");
    parse_fails("{\"listen\": \"localhost:8080\"}", "listen: \"localhost\" is not an IPv4 address");
    parse_fails("{\"listen\": \"[1.2.3.4]:80\"}", "listen: \"1.2.3.4\" is not an IPv6 address");
}

TEST(unknown_fields_name_their_path)
{
    parse_fails("{\"listen\": \"0.0.0.0:80\", \"bogus\": 1}", "bogus: unknown field");
    parse_fails("{\"limits\": {\"max_body\": 1}}", "limits.max_body: unknown field");
    parse_fails("{\"auth\": {\"secret\": \"x\"}}", "auth.secret: unknown field");
    parse_fails("{\"providers\": [{\"name\": \"a\", \"base_url\": \"http://a\", \"timeouts\": {\"read_ms\": 1}}]}",
                "providers[0].timeouts.read_ms: unknown field");
    parse_fails("{\"providers\": [{\"name\": \"a\", \"base_url\": \"http://a\", \"api_keys\": [{\"value\": \"x\"}]}]}",
                "providers[0].api_keys[0].value: unknown field");
    parse_fails("{\"providers\": [{\"name\": \"a\", \"base_url\": \"http://a\"}],"
                " \"models\": [{\"name\": \"m\", \"deployments\": [{\"provider\": \"a\", \"wieght\": 2}]}]}",
                "models[0].deployments[0].wieght: unknown field");
    parse_fails("{\"tenants\": [{\"id\": \"t\", \"keys\": [{\"name\": \"k\", \"hash\": \"" CI_HASH "\", \"x\": 1}]}]}",
                "tenants[0].keys[0].x: unknown field");
    parse_fails("{\"prices\": {\"m\": {\"input\": 1, \"output\": 2, \"cached\": 0.5}}}",
                "prices[\"m\"].cached: unknown field");
}

TEST(wrong_types_name_their_path)
{
    parse_fails("[]", "(top level): expected an object");
    parse_fails("{\"workers\": \"4\"}", "workers: expected an integer");
    parse_fails("{\"workers\": 1.5}", "workers: expected an integer");
    parse_fails("{\"access_log\": \"yes\"}", "access_log: expected a boolean");
    parse_fails("{\"listen\": 8080}", "listen: expected a string");
    parse_fails("{\"limits\": []}", "limits: expected an object");
    parse_fails("{\"providers\": {}}", "providers: expected an array");
    parse_fails("{\"providers\": [{\"name\": \"a\", \"base_url\": \"http://a\"}, {\"name\": \"b\", \"base_url\": 5}]}",
                "providers[1].base_url: expected a string");
    parse_fails("{\"providers\": [\"openai\"]}", "providers[0]: expected an object");
    parse_fails("{\"prices\": {\"m\": {\"input\": \"1\", \"output\": 2}}}", "prices[\"m\"].input: expected a number");
    parse_fails("{\"tenants\": [{\"id\": \"t\", \"allow_byok\": 1}]}", "tenants[0].allow_byok: expected a boolean");
    parse_fails("{\"tenants\": [{\"id\": \"t\", \"models\": [1]}]}", "tenants[0].models[0]: expected a string");
    parse_fails("{\"defaults\": {\"max_tokens\": null}}", "defaults.max_tokens: expected an integer");
}

TEST(values_out_of_range)
{
    parse_fails("{\"limits\": {\"max_body_bytes\": 10}}", "limits.max_body_bytes: must be between 1024 and 1073741824");
    parse_fails("{\"limits\": {\"max_body_bytes\": -5}}", "limits.max_body_bytes: must be between 1024 and 1073741824");
    parse_fails("{\"workers\": 1000}", "workers: must be between 0 and 256");
    parse_fails("{\"log_level\": \"verbose\"}", "log_level: expected one of debug, info, warn, error, got \"verbose\"");
    parse_fails("{\"prices\": {\"m\": {\"input\": -1, \"output\": 2}}}",
                "prices[\"m\"].input: must be between 0 and 1000000");
    parse_fails("{\"prices\": {\"m\": {\"input\": 1}}}", "prices[\"m\"].output: missing required field");
    parse_fails("{\"providers\": [{\"name\": \"a\", \"base_url\": \"ftp://a\"}]}",
                "providers[0].base_url: must be an http:// or https:// URL with a host, got \"ftp://a\"");
    parse_fails("{\"providers\": [{\"name\": \"a\", \"base_url\": \"https://\"}]}",
                "providers[0].base_url: must be an http:// or https:// URL with a host, got \"https://\"");
    parse_fails("{\"providers\": [{\"name\": \"a b\", \"base_url\": \"http://a\"}]}",
                "providers[0].name: must be 1 to 128 printable ASCII characters without spaces, quotes or backslashes");
    parse_fails("{\"providers\": [{\"name\": \"a\", \"type\": \"anthropicx\", \"base_url\": \"http://a\"}]}",
                "providers[0].type: unknown provider type \"anthropicx\" (known: openai, azure, anthropic, gemini)");
    parse_fails("{\"auth\": {\"key_hash_secret_env\": \"1BAD\"}}",
                "auth.key_hash_secret_env: must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*)");
}

TEST(busy_poll_us)
{
    struct leo_config *cfg = parse_ok("{\"busy_poll_us\": 50}");
    ASSERT_EQ(cfg->busy_poll_us, 50);
    leo_config_unref(cfg);
    cfg = parse_ok("{\"busy_poll_us\": 100000}");
    ASSERT_EQ(cfg->busy_poll_us, 100000);
    leo_config_unref(cfg);
    cfg = parse_ok("{\"busy_poll_us\": 0}");
    ASSERT_EQ(cfg->busy_poll_us, 0);
    leo_config_unref(cfg);
    parse_fails("{\"busy_poll_us\": -1}", "busy_poll_us: must be between 0 and 100000");
    parse_fails("{\"busy_poll_us\": 100001}", "busy_poll_us: must be between 0 and 100000");
    parse_fails("{\"busy_poll_us\": 12.5}", "busy_poll_us: expected an integer");
    parse_fails("{\"busy_poll_us\": \"50\"}", "busy_poll_us: expected an integer");
    parse_fails("{\"busy_poll_us\": true}", "busy_poll_us: expected an integer");
}

TEST(references_and_duplicates)
{
    static const char prov[] = "\"providers\": [{\"name\": \"openai\", \"base_url\": \"http://a\"}]";
    char doc[1024];
    snprintf(doc, sizeof(doc), "{%s, \"models\": [{\"name\": \"m\", \"deployments\": [{\"provider\": \"opena\"}]}]}",
             prov);
    parse_fails(doc, "models[0].deployments[0].provider: unknown provider \"opena\"");
    parse_fails("{\"providers\": [{\"name\": \"a\", \"base_url\": \"http://a\"}, {\"name\": \"b\", \"base_url\": "
                "\"http://b\"}, {\"name\": \"a\", \"base_url\": \"http://c\"}]}",
                "providers[2].name: duplicate provider \"a\" (also providers[0])");
    snprintf(doc, sizeof(doc),
             "{%s, \"models\": [{\"name\": \"m\", \"deployments\": [{\"provider\": \"openai\"}]},"
             " {\"name\": \"m\", \"deployments\": [{\"provider\": \"openai\"}]}]}",
             prov);
    parse_fails(doc, "models[1].name: duplicate model \"m\" (also models[0])");
    snprintf(doc, sizeof(doc), "{%s, \"models\": [{\"name\": \"m\", \"deployments\": []}]}", prov);
    parse_fails(doc, "models[0].deployments: at least one deployment is required");
    snprintf(doc, sizeof(doc), "{%s, \"models\": [{\"name\": \"m\"}]}", prov);
    parse_fails(doc, "models[0].deployments: missing required field");
    parse_fails("{\"models\": [{\"deployments\": []}]}", "models[0].name: missing required field");
    parse_fails("{\"tenants\": [{\"id\": \"t\"}, {\"id\": \"t\"}]}",
                "tenants[1].id: duplicate tenant \"t\" (also tenants[0])");
    parse_fails("{\"tenants\": [{\"id\": \"t\", \"models\": [\"nope\"]}]}",
                "tenants[0].models[0]: unknown model \"nope\"");
    parse_fails("{\"tenants\": [{\"id\": \"t\", \"models\": []}]}",
                "tenants[0].models: must not be empty (leave it out to allow every model)");
    parse_fails("{\"tenants\": [{\"id\": \"a\", \"keys\": [{\"name\": \"k1\", \"hash\": \"" CI_HASH "\"}]},"
                " {\"id\": \"b\", \"keys\": [{\"name\": \"k2\", \"hash\": \"" PROD_HASH "\"},"
                " {\"name\": \"k3\", \"hash\": \"" CI_HASH "\"}]}]}",
                "tenants[1].keys[1].hash: duplicate key hash (also tenants[0].keys[0])");
}

TEST(bad_key_hash)
{
    parse_fails("{\"tenants\": [{\"id\": \"t\", \"keys\": [{\"name\": \"k\", \"hash\": \"sk-plaintext-key\"}]}]}",
                "tenants[0].keys[0].hash: expected \"kh1:\" followed by 64 lowercase hex digits (see leo-gateway "
                "hash-key)");
    parse_fails("{\"tenants\": [{\"id\": \"t\", \"keys\": [{\"name\": \"k\", \"hash\": "
                "\"kh1:444C06C2D1B3C8192EC2E72E29E1EDBD79771D977B46644D7AB79AEBC2CDC315\"}]}]}",
                "tenants[0].keys[0].hash: expected \"kh1:\" followed by 64 lowercase hex digits (see leo-gateway "
                "hash-key)");
    parse_fails("{\"tenants\": [{\"id\": \"t\", \"keys\": [{\"name\": \"k\"}]}]}",
                "tenants[0].keys[0].hash: missing required field");
}

TEST(missing_env_var_names_it_and_no_secret)
{
    set_test_env();
    parse_fails("{\"providers\": [{\"name\": \"a\", \"base_url\": \"http://a\", \"api_keys\": [{\"env\": "
                "\"LEO_TEST_KEY_A\"}, {\"env\": \"LEO_TEST_UNSET_VAR\"}]}]}",
                "providers[0].api_keys[1].env: environment variable \"LEO_TEST_UNSET_VAR\" is not set or empty");
    setenv("LEO_TEST_EMPTY_VAR", "", 1);
    parse_fails("{\"providers\": [{\"name\": \"a\", \"base_url\": \"http://a\", \"api_key_env\": "
                "\"LEO_TEST_EMPTY_VAR\"}]}",
                "providers[0].api_key_env: environment variable \"LEO_TEST_EMPTY_VAR\" is not set or empty");
    parse_fails("{\"providers\": [{\"name\": \"a\", \"base_url\": \"http://a\", \"api_key_env\": \"LEO_TEST_KEY_A\","
                " \"api_keys\": [{\"env\": \"LEO_TEST_KEY_B\"}]}]}",
                "providers[0].api_key_env: give either api_key_env or api_keys, not both");
    /* an error after the keys were read still carries no key value */
    struct leo_buf err = LEO_BUF_INIT;
    struct leo_config *cfg = NULL;
    const char doc[] = "{\"providers\": [{\"name\": \"a\", \"base_url\": \"http://a\", \"api_key_env\": "
                       "\"LEO_TEST_KEY_A\", \"timeouts\": {\"total_ms\": 0}}]}";
    ASSERT_EQ(leo_config_parse_json(doc, strlen(doc), "test", &cfg, &err), LEO_ECONFIG);
    ASSERT_STR_EQ(err.p, "providers[0].timeouts.total_ms: must be between 1 and 86400000");
    ASSERT(strstr(err.p, "provider-secret") == NULL);
    leo_buf_release(&err);
}

TEST(invalid_json_reports_line_and_column)
{
    struct leo_buf err = LEO_BUF_INIT;
    struct leo_config *cfg = NULL;
    const char doc[] = "{\n  \"listen\": \"0.0.0.0:80\",\n  \"workers\": ,\n}\n";
    ASSERT_EQ(leo_config_parse_json(doc, strlen(doc), "test", &cfg, &err), LEO_ECONFIG);
    ASSERT(cfg == NULL);
    if (strncmp(err.p, "invalid JSON at line 3, column 14: ", 35) != 0)
        TEST_FAIL_("unexpected message: %s", err.p);
    leo_buf_release(&err);

    const char dup[] = "{\"workers\": 1,\n \"workers\": 2}";
    ASSERT_EQ(leo_config_parse_json(dup, strlen(dup), "test", &cfg, &err), LEO_ECONFIG);
    ASSERT(strncmp(err.p, "invalid JSON at line 2, column ", 31) == 0);
    ASSERT(strstr(err.p, "duplicate object key") != NULL);
    leo_buf_release(&err);

    /* err is appended to, not replaced */
    leo_buf_adds(&err, "reload: ");
    ASSERT_EQ(leo_config_parse_json("{\"x\":1}", 7, "test", &cfg, &err), LEO_ECONFIG);
    ASSERT_STR_EQ(err.p, "reload: x: unknown field");
    leo_buf_release(&err);
}

TEST(find_model_key_and_tenant_models)
{
    set_test_env();
    struct leo_config *cfg = parse_ok(full_example);
    const struct leo_model *m = leo_config_find_model(cfg, LEO_STR_LIT("gpt-4o-mini"));
    ASSERT(m == &cfg->models[0]);
    ASSERT(leo_config_find_model(cfg, LEO_STR_LIT("fast")) == &cfg->models[1]);
    ASSERT(leo_config_find_model(cfg, LEO_STR_LIT("gpt-4o")) == NULL);
    ASSERT(leo_config_find_model(cfg, LEO_STR_LIT("fas")) == NULL);
    ASSERT(leo_config_find_model(cfg, LEO_STR_LIT("fastx")) == NULL);
    ASSERT(leo_config_find_model(cfg, leo_str_n(NULL, 0)) == NULL);
    /* a span that is not NUL-terminated */
    const char buf[] = "fastXYZ";
    ASSERT(leo_config_find_model(cfg, leo_str_n(buf, 4)) == &cfg->models[1]);

    const struct leo_tenant_key *k = leo_config_find_key(cfg, LEO_STR_LIT(CI_KEY));
    ASSERT(k == &cfg->tenants[0].keys[0]);
    ASSERT_STR_EQ(k->tenant->id, "acme");
    k = leo_config_find_key(cfg, LEO_STR_LIT(PROD_KEY));
    ASSERT(k == &cfg->tenants[0].keys[1]);
    k = leo_config_find_key(cfg, LEO_STR_LIT(OTHER_KEY));
    ASSERT(k != NULL);
    ASSERT_STR_EQ(k->tenant->id, "other");
    ASSERT_STR_EQ(k->name, "Other key 1");
    ASSERT(leo_config_find_key(cfg, LEO_STR_LIT("sk-acme-ci-000000000002")) == NULL);
    ASSERT(leo_config_find_key(cfg, LEO_STR_LIT(CI_HASH)) == NULL); /* the hash itself is not a key */
    ASSERT(leo_config_find_key(cfg, leo_str_n(NULL, 0)) == NULL);

    const struct leo_tenant *acme = &cfg->tenants[0], *other = &cfg->tenants[1];
    ASSERT(leo_tenant_allows_model(acme, LEO_STR_LIT("fast")));
    ASSERT(!leo_tenant_allows_model(acme, LEO_STR_LIT("gpt-4o-mini")));
    ASSERT(!leo_tenant_allows_model(acme, LEO_STR_LIT("fas")));
    ASSERT(leo_tenant_allows_model(other, LEO_STR_LIT("gpt-4o-mini")));
    ASSERT(leo_tenant_allows_model(other, LEO_STR_LIT("fast")));
    leo_config_unref(cfg);

    /* the same document under another secret: no key matches any more */
    setenv("LEO_TEST_SECRET", "a different secret", 1);
    cfg = parse_ok(full_example);
    ASSERT(leo_config_find_key(cfg, LEO_STR_LIT(CI_KEY)) == NULL);
    leo_config_unref(cfg);
    set_test_env();
}

/* Providers a, b and c; models: "both" at a (priority 0) and b (priority 1), "only-a" at a, "b-first" listed a
 * then b but b sorts first by priority, "c-too" at c. KEYS_ is the tenant's keys array. */
#define KEY_PROVIDERS_DOC(KEYS_)                                                                                       \
    "{\"auth\": {\"key_hash_secret_env\": \"LEO_TEST_SECRET\"},"                                                       \
    " \"providers\": [{\"name\": \"a\", \"base_url\": \"http://a\"}, {\"name\": \"b\", \"base_url\": \"http://b\"},"   \
    " {\"name\": \"c\", \"base_url\": \"http://c\"}],"                                                                 \
    " \"models\": [{\"name\": \"both\", \"aliases\": [\"both-alias\"], \"deployments\": [{\"provider\": \"a\"},"       \
    " {\"provider\": \"b\", \"priority\": 1}]}, {\"name\": \"only-a\", \"deployments\": [{\"provider\": \"a\"}]},"     \
    " {\"name\": \"b-first\", \"deployments\": [{\"provider\": \"a\", \"priority\": 2}, {\"provider\": \"b\"}]},"      \
    " {\"name\": \"c-too\", \"deployments\": [{\"provider\": \"c\"}]}],"                                               \
    " \"tenants\": [{\"id\": \"t\", \"keys\": " KEYS_ "}]}"

static uint64_t deployments_of(const struct leo_config *cfg, const char *key, const char *model)
{
    const struct leo_tenant_key *k = leo_config_find_key(cfg, leo_str_c(key));
    const struct leo_model *m = leo_config_find_model(cfg, leo_str_c(model));
    ASSERT(k != NULL);
    ASSERT(m != NULL);
    return leo_key_deployments(k, cfg, m);
}

TEST(key_providers_narrow_deployments)
{
    set_test_env();
    struct leo_config *cfg = parse_ok(
        KEY_PROVIDERS_DOC("[{\"name\": \"b\", \"hash\": \"" CI_HASH "\", \"providers\": [\"b\"]},"
                          " {\"name\": \"all\", \"hash\": \"" PROD_HASH "\"},"
                          " {\"name\": \"bc\", \"hash\": \"" OTHER_HASH "\", \"providers\": [\"c\", \"b\", \"c\"]}]"));
    /* "both": a is deployments[0], b deployments[1] */
    ASSERT_EQ(deployments_of(cfg, CI_KEY, "both"), 2);
    ASSERT_EQ(deployments_of(cfg, CI_KEY, "both-alias"), 2);
    ASSERT_EQ(deployments_of(cfg, CI_KEY, "only-a"), 0);
    ASSERT_EQ(deployments_of(cfg, CI_KEY, "b-first"), 1); /* sorted by priority before the masks are made */
    ASSERT_EQ(deployments_of(cfg, CI_KEY, "c-too"), 0);
    ASSERT_EQ(deployments_of(cfg, PROD_KEY, "only-a"), UINT64_MAX);
    ASSERT(leo_config_find_key(cfg, LEO_STR_LIT(PROD_KEY))->_deployments == NULL);
    ASSERT_EQ(deployments_of(cfg, OTHER_KEY, "both"), 2);
    ASSERT_EQ(deployments_of(cfg, OTHER_KEY, "c-too"), 1);
    ASSERT_EQ(deployments_of(cfg, OTHER_KEY, "only-a"), 0);
    leo_config_unref(cfg);

    /* the 64 deployments a plan considers, and no further */
    struct leo_buf doc = LEO_BUF_INIT;
    leo_buf_adds(&doc, "{\"auth\": {\"key_hash_secret_env\": \"LEO_TEST_SECRET\"}, \"providers\": [{\"name\": \"x\", "
                       "\"base_url\": \"http://x\"}, {\"name\": \"y\", "
                       "\"base_url\": \"http://y\"}], \"models\": [{\"name\": \"wide\", \"deployments\": [");
    for (int i = 0; i < 70; i++)
        leo_buf_addf(&doc, "%s{\"provider\": \"%s\", \"model\": \"m%d\"}", i ? "," : "", i % 2 ? "y" : "x", i);
    leo_buf_adds(&doc, "]}], \"tenants\": [{\"id\": \"t\", \"keys\": [{\"name\": \"y\", \"hash\": \"" CI_HASH
                       "\", \"providers\": [\"y\"]}]}]}");
    cfg = parse_ok(doc.p);
    ASSERT_EQ(deployments_of(cfg, CI_KEY, "wide"), 0xaaaaaaaaaaaaaaaaull);
    leo_config_unref(cfg);
    leo_buf_release(&doc);
}

TEST(key_providers_errors)
{
    parse_fails(KEY_PROVIDERS_DOC("[{\"name\": \"k\", \"hash\": \"" CI_HASH "\", \"providers\": [\"b\", \"zz\"]}]"),
                "tenants[0].keys[0].providers[1]: unknown provider \"zz\"");
    parse_fails(KEY_PROVIDERS_DOC("[{\"name\": \"k\", \"hash\": \"" CI_HASH "\", \"providers\": []}]"),
                "tenants[0].keys[0].providers: must not be empty (leave it out to allow every provider)");
    parse_fails(KEY_PROVIDERS_DOC("[{\"name\": \"k\", \"hash\": \"" CI_HASH "\", \"providers\": [\"a\", 3]}]"),
                "tenants[0].keys[0].providers[1]: expected a string");
    parse_fails(KEY_PROVIDERS_DOC("[{\"name\": \"k\", \"hash\": \"" CI_HASH "\", \"providers\": \"a\"}]"),
                "tenants[0].keys[0].providers: expected an array");
}

/* The control plane's snapshot (leo_config_parse_overlay): an unknown name grants nothing, and an empty list
 * leaves the key no deployment at all, never every one. */
TEST(key_providers_in_a_snapshot)
{
    set_test_env();
    static const char doc[] =
        KEY_PROVIDERS_DOC("[{\"name\": \"gone\", \"hash\": \"" CI_HASH "\", \"providers\": [\"gone\", \"c\"]},"
                          " {\"name\": \"none\", \"hash\": \"" PROD_HASH "\", \"providers\": []},"
                          " {\"name\": \"only-gone\", \"hash\": \"" OTHER_HASH "\", \"providers\": [\"gone\"]}]");
    struct leo_buf err = LEO_BUF_INIT;
    struct leo_config *cfg = NULL;
    int rc = leo_config_parse_overlay(doc, strlen(doc), "snapshot", &cfg, &err);
    if (rc != 0)
        TEST_FAIL_("parse failed: %s", err.p);
    ASSERT_EQ(deployments_of(cfg, CI_KEY, "c-too"), 1);
    ASSERT_EQ(deployments_of(cfg, CI_KEY, "both"), 0);
    static const char *const models[] = {"both", "only-a", "b-first", "c-too"};
    for (size_t i = 0; i < 4; i++) {
        ASSERT_EQ(deployments_of(cfg, PROD_KEY, models[i]), 0);
        ASSERT_EQ(deployments_of(cfg, OTHER_KEY, models[i]), 0);
    }
    leo_config_unref(cfg);
    leo_buf_release(&err);
}

/* A tenant's model list in the snapshot: unknown names grant nothing (the file source rejects them), and a list
 * of nothing but unknown names allows no model, never every model. */
TEST(tenant_models_in_a_snapshot)
{
    set_test_env();
    static const char doc[] =
        "{\"providers\": [{\"name\": \"a\", \"base_url\": \"http://a\"}],"
        " \"models\": [{\"name\": \"m\", \"deployments\": [{\"provider\": \"a\"}]},"
        " {\"name\": \"n\", \"deployments\": [{\"provider\": \"a\"}]}],"
        " \"tenants\": [{\"id\": \"some\", \"models\": [\"gone\", \"m\"]}, {\"id\": \"none\", \"models\": [\"gone\"]}]}";
    struct leo_buf err = LEO_BUF_INIT;
    struct leo_config *cfg = NULL;
    int rc = leo_config_parse_overlay(doc, strlen(doc), "snapshot", &cfg, &err);
    if (rc != 0)
        TEST_FAIL_("parse failed: %s", err.p);
    ASSERT_EQ(cfg->ntenants, 2);
    ASSERT(leo_tenant_allows_model(&cfg->tenants[0], leo_str_c("m")));
    ASSERT(!leo_tenant_allows_model(&cfg->tenants[0], leo_str_c("n")));
    ASSERT(!leo_tenant_allows_model(&cfg->tenants[0], leo_str_c("gone")));
    ASSERT(!leo_tenant_allows_model(&cfg->tenants[1], leo_str_c("m")));
    ASSERT(!leo_tenant_allows_model(&cfg->tenants[1], leo_str_c("n")));
    leo_config_unref(cfg);
    /* the file source still says which name is wrong */
    leo_buf_reset(&err);
    ASSERT_EQ(leo_config_parse_json(doc, strlen(doc), "test", &cfg, &err), LEO_ECONFIG);
    ASSERT(strstr(err.p, "unknown model \"gone\"") != NULL);
    leo_buf_release(&err);
}

TEST(many_models_and_keys_index)
{
    /* enough entries to exercise probing and growth of the indexes */
    enum { N = 300 };
    setenv("LEO_TEST_SECRET", "unit-test-secret", 1);
    uint8_t secret[LEO_KEYHASH_SECRET_BYTES];
    leo_keyhash_secret_from("unit-test-secret", 16, secret);
    struct leo_buf doc = LEO_BUF_INIT;
    leo_buf_adds(&doc, "{\"auth\": {\"key_hash_secret_env\": \"LEO_TEST_SECRET\"},"
                       " \"providers\": [{\"name\": \"p\", \"base_url\": \"http://p\"}], \"models\": [");
    for (int i = 0; i < N; i++)
        leo_buf_addf(&doc, "%s{\"name\": \"model-%d\", \"deployments\": [{\"provider\": \"p\"}]}", i ? "," : "", i);
    leo_buf_adds(&doc, "], \"tenants\": [{\"id\": \"t\", \"keys\": [");
    for (int i = 0; i < N; i++) {
        char key[32], text[LEO_KEYHASH_TEXT_LEN + 1];
        uint8_t h[LEO_KEYHASH_BYTES];
        snprintf(key, sizeof(key), "sk-key-%d", i);
        leo_keyhash(secret, leo_str_c(key), h);
        leo_keyhash_format(h, text);
        leo_buf_addf(&doc, "%s{\"name\": \"k%d\", \"hash\": \"%s\"}", i ? "," : "", i, text);
    }
    leo_buf_adds(&doc, "]}]}");
    struct leo_config *cfg = parse_ok(doc.p);
    leo_buf_release(&doc);
    for (int i = 0; i < N; i++) {
        char name[32];
        snprintf(name, sizeof(name), "model-%d", i);
        const struct leo_model *m = leo_config_find_model(cfg, leo_str_c(name));
        ASSERT(m == &cfg->models[i]);
        snprintf(name, sizeof(name), "sk-key-%d", i);
        const struct leo_tenant_key *k = leo_config_find_key(cfg, leo_str_c(name));
        ASSERT(k == &cfg->tenants[0].keys[i]);
    }
    ASSERT(leo_config_find_model(cfg, LEO_STR_LIT("model-300")) == NULL);
    ASSERT(leo_config_find_key(cfg, LEO_STR_LIT("sk-key-300")) == NULL);
    leo_config_unref(cfg);
}

TEST(price_lookup)
{
    set_test_env();
    struct leo_config *cfg = parse_ok(full_example);
    const struct leo_price *p;

    p = leo_config_price(cfg, LEO_STR_LIT("my-model"));
    ASSERT(p != NULL);
    ASSERT_STR_EQ(p->model, "my-model");
    p = leo_config_price(cfg, LEO_STR_LIT("my-model-v2"));
    ASSERT(p != NULL);
    ASSERT_STR_EQ(p->model, "my-model");
    ASSERT(leo_config_price(cfg, LEO_STR_LIT("my")) == NULL);
    ASSERT(leo_config_price(cfg, LEO_STR_LIT("my-modelx")) == NULL);

    /* config "gpt-4o" overrides the default, dated snapshots follow it, gpt-4o-mini keeps its own row */
    p = leo_config_price(cfg, LEO_STR_LIT("gpt-4o"));
    ASSERT_DBL_EQ(p->input_per_mtok, 1);
    p = leo_config_price(cfg, LEO_STR_LIT("gpt-4o-2024-08-06"));
    ASSERT_STR_EQ(p->model, "gpt-4o");
    ASSERT_DBL_EQ(p->output_per_mtok, 2);
    p = leo_config_price(cfg, LEO_STR_LIT("gpt-4o-mini-2024-07-18"));
    ASSERT_STR_EQ(p->model, "gpt-4o-mini");
    ASSERT_DBL_EQ(p->input_per_mtok, 0.15);
    ASSERT_DBL_EQ(p->output_per_mtok, 0.60);
    ASSERT(leo_config_price(cfg, LEO_STR_LIT("gpt-4ox")) == NULL);

    /* longest prefix wins over a shorter one */
    p = leo_config_price(cfg, LEO_STR_LIT("claude-opus-4-1-20250805"));
    ASSERT_STR_EQ(p->model, "claude-opus-4-1");
    p = leo_config_price(cfg, LEO_STR_LIT("claude-sonnet-4-5-20250929"));
    ASSERT_STR_EQ(p->model, "claude-sonnet-4-5");
    p = leo_config_price(cfg, LEO_STR_LIT("claude-sonnet-4-20250514"));
    ASSERT_STR_EQ(p->model, "claude-sonnet-4");
    p = leo_config_price(cfg, LEO_STR_LIT("gemini-2.5-flash-lite-preview-06-17"));
    ASSERT_STR_EQ(p->model, "gemini-2.5-flash-lite");
    p = leo_config_price(cfg, LEO_STR_LIT("o3-mini-2025-01-31"));
    ASSERT_STR_EQ(p->model, "o3-mini");
    p = leo_config_price(cfg, LEO_STR_LIT("mock-large"));
    ASSERT_DBL_EQ(p->input_per_mtok, 2.00);
    ASSERT_DBL_EQ(p->output_per_mtok, 8.00);
    ASSERT(leo_config_price(cfg, LEO_STR_LIT("unknown-model")) == NULL);
    ASSERT(leo_config_price(cfg, leo_str_n(NULL, 0)) == NULL);

    /* a span that is not NUL-terminated */
    const char buf[] = "mock-smallest";
    p = leo_config_price(cfg, leo_str_n(buf, 10));
    ASSERT_STR_EQ(p->model, "mock-small");

    p = leo_config_price(cfg, LEO_STR_LIT("mock-small"));
    ASSERT_DBL_EQ(leo_price_cost(p, 1000000, 0), 0.10);
    ASSERT_DBL_EQ(leo_price_cost(p, 1000, 2000), (1000 * 0.10 + 2000 * 0.40) / 1e6);
    ASSERT_DBL_EQ(leo_price_cost(NULL, 1000, 2000), 0);
    leo_config_unref(cfg);
}

TEST(default_price_table_is_sane)
{
    size_t n;
    const struct leo_default_price *d = leo_default_prices(&n);
    ASSERT(n >= 30);
    static const char *const required[] = {
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "o1",
        "o3",
        "o3-mini",
        "o4-mini",
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "gpt-3.5-turbo",
        "text-embedding-3-small",
        "text-embedding-3-large",
        "claude-opus-4",
        "claude-sonnet-4",
        "claude-3-7-sonnet",
        "claude-3-5-haiku",
        "claude-haiku-4-5",
        "claude-sonnet-4-5",
        "claude-opus-4-1",
        "gemini-2.5-pro",
        "gemini-2.5-flash",
        "gemini-2.5-flash-lite",
        "gemini-2.0-flash",
        "deepseek-chat",
        "deepseek-reasoner",
        "mock-small",
        "mock-large",
    };
    for (size_t r = 0; r < sizeof(required) / sizeof(required[0]); r++) {
        size_t i = 0;
        while (i < n && strcmp(d[i].model, required[r]) != 0)
            i++;
        if (i == n)
            TEST_FAIL_("no default price for %s", required[r]);
    }
    for (size_t i = 0; i < n; i++) {
        ASSERT(d[i].input_per_mtok >= 0 && d[i].input_per_mtok < 1000);
        ASSERT(d[i].output_per_mtok >= 0 && d[i].output_per_mtok < 1000);
        for (size_t j = i + 1; j < n; j++)
            if (strcmp(d[i].model, d[j].model) == 0)
                TEST_FAIL_("duplicate default price row %s", d[i].model);
    }
}

TEST(refcount_and_version)
{
    struct leo_config *a = parse_ok("{}");
    struct leo_config *b = parse_ok("{}");
    ASSERT_EQ(b->version, a->version + 1);
    struct leo_buf err = LEO_BUF_INIT;
    struct leo_config *bad = NULL;
    ASSERT_EQ(leo_config_parse_json("{\"x\": 1}", 8, "test", &bad, &err), LEO_ECONFIG);
    leo_buf_release(&err);
    struct leo_config *c = parse_ok("{}");
    ASSERT_EQ(c->version, b->version + 1); /* a failed parse takes no version */

    ASSERT(leo_config_ref(a) == a);
    ASSERT_EQ(a->refs, 2);
    leo_config_unref(a);
    ASSERT_EQ(a->refs, 1);
    leo_config_unref(a); /* freed: the ASan build reports a leak or a use-after-free otherwise */
    leo_config_unref(b);
    leo_config_unref(c);
    leo_config_unref(NULL);
}

TEST(failed_parse_frees_partial_snapshot)
{
    /* errors at every depth after allocations were made; the ASan build proves nothing leaks */
    set_test_env();
    const char *docs[] = {
        "{\"providers\": [{\"name\": \"a\", \"base_url\": \"http://a\", \"api_keys\": [{\"env\": \"LEO_TEST_KEY_A\"},"
        " {\"env\": \"LEO_TEST_UNSET_VAR\"}]}]}",
        "{\"providers\": [{\"name\": \"a\", \"base_url\": \"http://a\"}], \"models\": [{\"name\": \"m\","
        " \"deployments\": [{\"provider\": \"a\"}, {\"provider\": \"b\"}]}]}",
        "{\"prices\": {\"a\": {\"input\": 1, \"output\": 1}, \"b\": {\"input\": 1}}}",
        "{\"tenants\": [{\"id\": \"a\", \"keys\": [{\"name\": \"k\", \"hash\": \"" CI_HASH "\"},"
        " {\"name\": \"k2\", \"hash\": \"bad\"}]}]}",
    };
    for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
        struct leo_buf err = LEO_BUF_INIT;
        struct leo_config *cfg = NULL;
        ASSERT_EQ(leo_config_parse_json(docs[i], strlen(docs[i]), "test", &cfg, &err), LEO_ECONFIG);
        ASSERT(cfg == NULL);
        ASSERT(err.len > 0);
        leo_buf_release(&err);
    }
}

/* The source tree: LEO_SOURCE_DIR (set by ctest), else derived from this file's path. */
static void source_path(char *out, size_t size, const char *rel)
{
    const char *dir = getenv("LEO_SOURCE_DIR");
    if (dir && dir[0]) {
        snprintf(out, size, "%s/%s", dir, rel);
        return;
    }
    const char *self = __FILE__;
    const char *suffix = strstr(self, "tests/unit/test_config.c");
    ASSERT(suffix != NULL);
    snprintf(out, size, "%.*s%s", (int)(suffix - self), self, rel);
}

TEST(load_file_errors)
{
    struct leo_buf err = LEO_BUF_INIT;
    struct leo_config *cfg = NULL;
    ASSERT_EQ(leo_config_load_file("/nonexistent/leo.json", &cfg, &err), LEO_ECONFIG);
    ASSERT(cfg == NULL);
    ASSERT_STR_EQ(err.p, "cannot open /nonexistent/leo.json: No such file or directory");
    leo_buf_release(&err);

    char path[] = "/tmp/leo-test-config-XXXXXX";
    int fd = mkstemp(path);
    ASSERT(fd >= 0);
    const char doc[] = "{\"workers\": 2,\n \"log_level\": \"debug\"\n";
    ASSERT_EQ(write(fd, doc, sizeof(doc) - 1), (ssize_t)(sizeof(doc) - 1));
    close(fd);
    ASSERT_EQ(leo_config_load_file(path, &cfg, &err), LEO_ECONFIG);
    ASSERT(strncmp(err.p, "invalid JSON at line ", 21) == 0);
    leo_buf_release(&err);
    unlink(path);
}

TEST(demo_config_parses)
{
    unsetenv("LEO_KEY_HASH_SECRET");
    char path[4096];
    source_path(path, sizeof(path), "deploy/config/gateway.demo.json");
    struct leo_buf err = LEO_BUF_INIT;
    struct leo_config *cfg = NULL;
    if (leo_config_load_file(path, &cfg, &err) != 0)
        TEST_FAIL_("%s: %s", path, err.p);
    leo_buf_release(&err);
    ASSERT_STR_EQ(cfg->source, path);
    ASSERT_STR_EQ(cfg->listen_host, "0.0.0.0");
    ASSERT_EQ(cfg->listen_port, 8080);
    ASSERT_EQ(cfg->nproviders, 1);
    ASSERT_STR_EQ(cfg->providers[0].name, "mock");
    ASSERT_STR_EQ(cfg->providers[0].type, "openai");
    ASSERT_STR_EQ(cfg->providers[0].base_url, "http://127.0.0.1:9100/v1");
    ASSERT_EQ(cfg->providers[0].nkeys, 0);
    const struct leo_model *m = leo_config_find_model(cfg, LEO_STR_LIT("gpt-4o-mini"));
    ASSERT(m != NULL);
    ASSERT_STR_EQ(m->deployments[0].model, "mock-small");
    ASSERT(m->deployments[0].provider == &cfg->providers[0]);
    m = leo_config_find_model(cfg, LEO_STR_LIT("gpt-4o"));
    ASSERT(m != NULL);
    ASSERT_STR_EQ(m->deployments[0].model, "mock-large");
    ASSERT(leo_config_price(cfg, LEO_STR_LIT("mock-small")) != NULL);
    const struct leo_tenant_key *k = leo_config_find_key(cfg, LEO_STR_LIT("sk-leo-demo-0000000000000000"));
    ASSERT(k != NULL);
    ASSERT_STR_EQ(k->tenant->id, "demo");
    ASSERT_STR_EQ(k->name, "demo-key");
    ASSERT_EQ(k->tenant->allow_byok, false);
    leo_config_unref(cfg);
}

TEST(openai_config_parses)
{
    unsetenv("LEO_KEY_HASH_SECRET");
    char path[4096];
    source_path(path, sizeof(path), "deploy/config/gateway.openai.json");
    struct leo_buf err = LEO_BUF_INIT;
    struct leo_config *cfg = NULL;

    const char *saved = getenv("OPENAI_API_KEY");
    char *saved_copy = saved ? leo_strdup(saved) : NULL;
    unsetenv("OPENAI_API_KEY");
    ASSERT_EQ(leo_config_load_file(path, &cfg, &err), LEO_ECONFIG);
    ASSERT_STR_EQ(err.p, "providers[0].api_key_env: environment variable \"OPENAI_API_KEY\" is not set or empty");
    leo_buf_reset(&err);

    setenv("OPENAI_API_KEY", "sk-dummy-for-the-test", 1);
    if (leo_config_load_file(path, &cfg, &err) != 0)
        TEST_FAIL_("%s: %s", path, err.p);
    leo_buf_release(&err);
    ASSERT_EQ(cfg->nproviders, 1);
    ASSERT_STR_EQ(cfg->providers[0].name, "openai");
    ASSERT_STR_EQ(cfg->providers[0].base_url, "https://api.openai.com/v1");
    ASSERT_EQ(cfg->providers[0].nkeys, 1);
    ASSERT_STR_EQ(cfg->providers[0].keys[0].env, "OPENAI_API_KEY");
    ASSERT_STR_EQ(cfg->providers[0].keys[0].value, "sk-dummy-for-the-test");
    static const char *const models[] = {"gpt-4o-mini", "gpt-4o", "gpt-4.1-mini"};
    ASSERT_EQ(cfg->nmodels, 3);
    for (size_t i = 0; i < 3; i++) {
        const struct leo_model *m = leo_config_find_model(cfg, leo_str_c(models[i]));
        ASSERT(m != NULL);
        ASSERT_STR_EQ(m->deployments[0].model, models[i]);
        ASSERT(leo_config_price(cfg, leo_str_c(models[i])) != NULL);
    }
    ASSERT(leo_config_find_key(cfg, LEO_STR_LIT("sk-leo-demo-0000000000000000")) != NULL);
    leo_config_unref(cfg);

    if (saved_copy) {
        setenv("OPENAI_API_KEY", saved_copy, 1);
        leo_free(saved_copy);
    } else {
        unsetenv("OPENAI_API_KEY");
    }
}

TEST_MAIN(TEST_ENTRY(full_example_lands_everywhere), TEST_ENTRY(empty_document_gets_every_default),
          TEST_ENTRY(listen_forms), TEST_ENTRY(unknown_fields_name_their_path), TEST_ENTRY(wrong_types_name_their_path),
          TEST_ENTRY(values_out_of_range), TEST_ENTRY(busy_poll_us), TEST_ENTRY(references_and_duplicates), TEST_ENTRY(bad_key_hash),
          TEST_ENTRY(missing_env_var_names_it_and_no_secret), TEST_ENTRY(invalid_json_reports_line_and_column),
          TEST_ENTRY(find_model_key_and_tenant_models), TEST_ENTRY(tenant_models_in_a_snapshot), TEST_ENTRY(key_providers_narrow_deployments),
          TEST_ENTRY(key_providers_errors), TEST_ENTRY(key_providers_in_a_snapshot),
          TEST_ENTRY(many_models_and_keys_index),
          TEST_ENTRY(price_lookup), TEST_ENTRY(default_price_table_is_sane), TEST_ENTRY(refcount_and_version),
          TEST_ENTRY(failed_parse_frees_partial_snapshot), TEST_ENTRY(load_file_errors), TEST_ENTRY(demo_config_parses),
          TEST_ENTRY(openai_config_parses))
