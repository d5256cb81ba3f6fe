#include <sodium.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/error.h"
#include "common/keyhash.h"
#include "gateway/hashkey_cmd.h"
#include "tests/unit/test.h"

#define DEV_PASSPHRASE "leo-optima-development-key-hash-secret"
/* BLAKE2b-256 keyed with BLAKE2b-256("leo-keyhash-v1:" DEV_PASSPHRASE), of "sk-leo-demo-0000000000000000";
 * also what deploy/config/gateway.demo.json holds. */
#define DEMO_KEY "sk-leo-demo-0000000000000000"
#define DEMO_HASH "kh1:0d9e53bf7e30861dd3eb1d78906f05cb8c8408d78195124559c2fe87f169492d"

/* The derivation written out with one-shot libsodium calls, independent of keyhash.c's streaming code. */
static void reference_hash(const char *passphrase, const char *key, uint8_t out[32])
{
    char input[256];
    int n = snprintf(input, sizeof(input), "leo-keyhash-v1:%s", passphrase);
    uint8_t secret[32];
    crypto_generichash(secret, sizeof(secret), (const unsigned char *)input, (size_t)n, NULL, 0);
    crypto_generichash(out, 32, (const unsigned char *)key, strlen(key), secret, sizeof(secret));
}

static void reference_text(const uint8_t h[32], char out[69])
{
    memcpy(out, "kh1:", 4);
    sodium_bin2hex(out + 4, 65, h, 32);
}

TEST(known_answer_matches_reference_derivation)
{
    leo_keyhash_init();
    uint8_t secret[LEO_KEYHASH_SECRET_BYTES], got[LEO_KEYHASH_BYTES], want[32];
    leo_keyhash_secret_from("correct horse", 13, secret);
    leo_keyhash(secret, LEO_STR_LIT("sk-test-abcdef"), got);
    reference_hash("correct horse", "sk-test-abcdef", want);
    ASSERT_MEM_EQ(got, 32, want, 32);

    leo_keyhash_secret_from(DEV_PASSPHRASE, strlen(DEV_PASSPHRASE), secret);
    leo_keyhash(secret, LEO_STR_LIT(DEMO_KEY), got);
    char text[LEO_KEYHASH_TEXT_LEN + 1];
    leo_keyhash_format(got, text);
    ASSERT_STR_EQ(text, DEMO_HASH);
}

TEST(different_secret_or_key_gives_different_hash)
{
    uint8_t s1[32], s2[32], a[32], b[32], c[32];
    leo_keyhash_secret_from("one", 3, s1);
    leo_keyhash_secret_from("two", 3, s2);
    leo_keyhash(s1, LEO_STR_LIT("key"), a);
    leo_keyhash(s2, LEO_STR_LIT("key"), b);
    leo_keyhash(s1, LEO_STR_LIT("kez"), c);
    ASSERT(!leo_keyhash_equal(a, b));
    ASSERT(!leo_keyhash_equal(a, c));
    leo_keyhash(s1, LEO_STR_LIT("key"), b);
    ASSERT(leo_keyhash_equal(a, b));
}

TEST(secret_from_env_set_unset_empty)
{
    uint8_t got[32], want[32];
    unsetenv("LEO_TEST_KH_SECRET");
    ASSERT_EQ(leo_keyhash_secret_from_env("LEO_TEST_KH_SECRET", got), 1);
    leo_keyhash_secret_from(DEV_PASSPHRASE, strlen(DEV_PASSPHRASE), want);
    ASSERT_MEM_EQ(got, 32, want, 32);

    setenv("LEO_TEST_KH_SECRET", "", 1);
    ASSERT_EQ(leo_keyhash_secret_from_env("LEO_TEST_KH_SECRET", got), 1);
    ASSERT_MEM_EQ(got, 32, want, 32);

    setenv("LEO_TEST_KH_SECRET", "production passphrase", 1);
    ASSERT_EQ(leo_keyhash_secret_from_env("LEO_TEST_KH_SECRET", got), 0);
    leo_keyhash_secret_from("production passphrase", 21, want);
    ASSERT_MEM_EQ(got, 32, want, 32);
    unsetenv("LEO_TEST_KH_SECRET");
}

TEST(format_parse_round_trip)
{
    uint8_t h[32], back[32];
    for (int round = 0; round < 16; round++) {
        randombytes_buf(h, sizeof(h));
        char text[LEO_KEYHASH_TEXT_LEN + 1], ref[69];
        leo_keyhash_format(h, text);
        reference_text(h, ref);
        ASSERT_STR_EQ(text, ref);
        ASSERT_EQ(strlen(text), LEO_KEYHASH_TEXT_LEN);
        ASSERT_EQ(leo_keyhash_parse(leo_str_c(text), back), 0);
        ASSERT_MEM_EQ(back, 32, h, 32);
    }
}

TEST(parse_rejects_bad_input)
{
    uint8_t out[32], before[32];
    memset(out, 0x5a, sizeof(out));
    memcpy(before, out, sizeof(out));
    const char *bad[] = {
        "",
        "kh1:",
        "kh1:0d9e53bf7e30861dd3eb1d78906f05cb8c8408d78195124559c2fe87f169492",   /* 63 digits */
        "kh1:0d9e53bf7e30861dd3eb1d78906f05cb8c8408d78195124559c2fe87f169492d0", /* 65 digits */
        "kh2:0d9e53bf7e30861dd3eb1d78906f05cb8c8408d78195124559c2fe87f169492d",
        "KH1:0d9e53bf7e30861dd3eb1d78906f05cb8c8408d78195124559c2fe87f169492d",
        "kh1:0D9E53BF7E30861DD3EB1D78906F05CB8C8408D78195124559C2FE87F169492D", /* upper-case hex */
        "kh1:0d9e53bf7e30861dd3eb1d78906f05cb8c8408d78195124559c2fe87f169492g",
        "kh1 0d9e53bf7e30861dd3eb1d78906f05cb8c8408d78195124559c2fe87f169492d",
        " kh1:0d9e53bf7e30861dd3eb1d78906f05cb8c8408d78195124559c2fe87f169492",
        "0d9e53bf7e30861dd3eb1d78906f05cb8c8408d78195124559c2fe87f169492d0000",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (leo_keyhash_parse(leo_str_c(bad[i]), out) != LEO_EPARSE)
            TEST_FAIL_("accepted \"%s\"", bad[i]);
        ASSERT_MEM_EQ(out, 32, before, 32);
    }
    /* an embedded NUL inside the right length */
    char withnul[] = DEMO_HASH;
    withnul[10] = '\0';
    ASSERT_EQ(leo_keyhash_parse(leo_str_n(withnul, LEO_KEYHASH_TEXT_LEN), out), LEO_EPARSE);
    ASSERT_EQ(leo_keyhash_parse(LEO_STR_LIT(DEMO_HASH), out), 0);
}

TEST(mask)
{
    char out[32];
    leo_secret_mask(LEO_STR_LIT(DEMO_KEY), out, sizeof(out));
    ASSERT_STR_EQ(out, "sk-\xe2\x80\xa6"
                       "0000");
    leo_secret_mask(LEO_STR_LIT("sk-abcdefghijklmnop1234"), out, sizeof(out));
    ASSERT_STR_EQ(out, "sk-\xe2\x80\xa6"
                       "1234");
    leo_secret_mask(LEO_STR_LIT("abcdefghijkl"), out, sizeof(out)); /* exactly 12 */
    ASSERT_STR_EQ(out, "abc\xe2\x80\xa6"
                       "ijkl");
    leo_secret_mask(LEO_STR_LIT("abcdefghijk"), out, sizeof(out)); /* 11: nothing of it shown */
    ASSERT_STR_EQ(out, "\xe2\x80\xa6");
    leo_secret_mask(leo_str_n(NULL, 0), out, sizeof(out));
    ASSERT_STR_EQ(out, "\xe2\x80\xa6");
    /* a span that is not NUL-terminated: only its own bytes are read */
    const char longer[] = "sk-abcdefghijklmnopXYZ";
    leo_secret_mask(leo_str_n(longer, 16), out, sizeof(out));
    ASSERT_STR_EQ(out, "sk-\xe2\x80\xa6"
                       "jklm");
    /* a short output buffer is truncated, still terminated */
    char small[5];
    leo_secret_mask(LEO_STR_LIT(DEMO_KEY), small, sizeof(small));
    ASSERT_EQ(strlen(small), 4);
}

/* Runs leo_hashkey_main with stdout (and stdin, when given) redirected to temporary files; returns what it
 * printed (free with leo_free). */
static char *run_hashkey(int argc, char **argv, const char *stdin_text, int *rc)
{
    fflush(stdout);
    FILE *out = tmpfile();
    ASSERT(out != NULL);
    int saved_out = dup(1);
    ASSERT(saved_out >= 0);
    ASSERT(dup2(fileno(out), 1) == 1);
    FILE *in = NULL;
    int saved_in = -1;
    if (stdin_text) {
        in = tmpfile();
        ASSERT(in != NULL);
        fputs(stdin_text, in);
        fflush(in);
        rewind(in);
        saved_in = dup(0);
        ASSERT(dup2(fileno(in), 0) == 0);
        __fpurge(stdin);
        clearerr(stdin);
    }
    *rc = leo_hashkey_main(argc, argv);
    fflush(stdout);
    ASSERT(dup2(saved_out, 1) == 1);
    close(saved_out);
    if (in) {
        __fpurge(stdin);
        clearerr(stdin);
        ASSERT(dup2(saved_in, 0) == 0);
        close(saved_in);
        fclose(in);
    }
    long n = ftell(out);
    ASSERT(n >= 0);
    rewind(out);
    char *text = leo_malloc((size_t)n + 1);
    ASSERT_EQ(fread(text, 1, (size_t)n, out), (size_t)n);
    text[n] = '\0';
    fclose(out);
    return text;
}

TEST(hash_key_command_argument_and_stdin)
{
    unsetenv("LEO_KEY_HASH_SECRET");
    int rc;
    char *argv1[] = {"hash-key", DEMO_KEY, NULL};
    char *got = run_hashkey(2, argv1, NULL, &rc);
    ASSERT_EQ(rc, 0);
    ASSERT_STR_EQ(got, DEMO_HASH "\n");
    leo_free(got);

    char *argv2[] = {"hash-key", NULL};
    got = run_hashkey(1, argv2, DEMO_KEY "\n", &rc);
    ASSERT_EQ(rc, 0);
    ASSERT_STR_EQ(got, DEMO_HASH "\n");
    leo_free(got);

    got = run_hashkey(1, argv2, DEMO_KEY "\r\nsecond line\n", &rc);
    ASSERT_EQ(rc, 0);
    ASSERT_STR_EQ(got, DEMO_HASH "\n");
    leo_free(got);

    got = run_hashkey(1, argv2, "", &rc);
    ASSERT_EQ(rc, 2);
    ASSERT_STR_EQ(got, "");
    leo_free(got);
}

TEST(hash_key_command_secret_env)
{
    setenv("LEO_TEST_HK_SECRET", "another passphrase", 1);
    int rc;
    char *argv1[] = {"hash-key", "--secret-env", "LEO_TEST_HK_SECRET", "sk-some-key", NULL};
    char *got = run_hashkey(4, argv1, NULL, &rc);
    ASSERT_EQ(rc, 0);
    uint8_t want[32];
    char text[69];
    reference_hash("another passphrase", "sk-some-key", want);
    reference_text(want, text);
    ASSERT_EQ(strlen(got), LEO_KEYHASH_TEXT_LEN + 1);
    ASSERT_MEM_EQ(got, LEO_KEYHASH_TEXT_LEN, text, LEO_KEYHASH_TEXT_LEN);
    leo_free(got);

    char *argv2[] = {"hash-key", "--secret-env=LEO_TEST_HK_SECRET", "sk-some-key", NULL};
    got = run_hashkey(3, argv2, NULL, &rc);
    ASSERT_EQ(rc, 0);
    ASSERT_MEM_EQ(got, LEO_KEYHASH_TEXT_LEN, text, LEO_KEYHASH_TEXT_LEN);
    leo_free(got);
    unsetenv("LEO_TEST_HK_SECRET");
}

static bool urlsafe_b64_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

TEST(hash_key_command_generate)
{
    setenv("LEO_TEST_HK_SECRET", "generate passphrase", 1);
    int rc;
    char *argv[] = {"hash-key", "--secret-env", "LEO_TEST_HK_SECRET", "--generate", NULL};
    char *first = run_hashkey(4, argv, NULL, &rc);
    ASSERT_EQ(rc, 0);
    char *nl = strchr(first, '\n');
    ASSERT(nl != NULL);
    size_t keylen = (size_t)(nl - first);
    ASSERT_EQ(keylen, 7 + 40);
    ASSERT(strncmp(first, "sk-leo-", 7) == 0);
    for (size_t i = 7; i < keylen; i++)
        if (!urlsafe_b64_char(first[i]))
            TEST_FAIL_("character %zu of the key is not url-safe base64: '%c'", i, first[i]);
    /* line 2 is the hash of line 1 under the chosen secret */
    const char *hashline = nl + 1;
    ASSERT_EQ(strlen(hashline), LEO_KEYHASH_TEXT_LEN + 1);
    ASSERT_EQ(hashline[LEO_KEYHASH_TEXT_LEN], '\n');
    uint8_t parsed[32], want[32];
    ASSERT_EQ(leo_keyhash_parse(leo_str_n(hashline, LEO_KEYHASH_TEXT_LEN), parsed), 0);
    char key[64];
    memcpy(key, first, keylen);
    key[keylen] = '\0';
    reference_hash("generate passphrase", key, want);
    ASSERT_MEM_EQ(parsed, 32, want, 32);

    char *second = run_hashkey(4, argv, NULL, &rc);
    ASSERT_EQ(rc, 0);
    ASSERT(strncmp(first, second, keylen) != 0);
    leo_free(first);
    leo_free(second);
    unsetenv("LEO_TEST_HK_SECRET");
}

TEST(hash_key_command_usage_errors)
{
    struct {
        int argc;
        char *argv[5];
    } cases[] = {
        {2, {"hash-key", "--bogus"}},
        {3, {"hash-key", "a", "b"}},
        {3, {"hash-key", "--generate", "sk-x"}},
        {2, {"hash-key", "--secret-env"}},
        {3, {"hash-key", "--secret-env=", "k"}},
        {2, {"hash-key", ""}},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int rc;
        char *got = run_hashkey(cases[i].argc, cases[i].argv, NULL, &rc);
        if (rc != 2)
            TEST_FAIL_("case %zu: exit %d, want 2", i, rc);
        ASSERT_STR_EQ(got, "");
        leo_free(got);
    }
    /* "--" ends the options, so a key may start with a dash */
    int rc;
    char *argv[] = {"hash-key", "--", "--generate", NULL};
    char *got = run_hashkey(3, argv, NULL, &rc);
    ASSERT_EQ(rc, 0);
    ASSERT_EQ(strlen(got), LEO_KEYHASH_TEXT_LEN + 1);
    leo_free(got);
}

TEST_MAIN(TEST_ENTRY(known_answer_matches_reference_derivation),
          TEST_ENTRY(different_secret_or_key_gives_different_hash), TEST_ENTRY(secret_from_env_set_unset_empty),
          TEST_ENTRY(format_parse_round_trip), TEST_ENTRY(parse_rejects_bad_input), TEST_ENTRY(mask),
          TEST_ENTRY(hash_key_command_argument_and_stdin), TEST_ENTRY(hash_key_command_secret_env),
          TEST_ENTRY(hash_key_command_generate), TEST_ENTRY(hash_key_command_usage_errors))
