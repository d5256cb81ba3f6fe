#include <math.h>

#include "common/arena.h"
#include "common/buf.h"
#include "common/alloc.h"
#include "common/error.h"
#include "tests/unit/test.h"

TEST(starts_empty_and_terminated)
{
    struct leo_buf b = LEO_BUF_INIT;
    ASSERT(b.p != NULL);
    ASSERT_EQ(b.len, 0);
    ASSERT_EQ(b.p[0], '\0');
    leo_buf_release(&b);
}

TEST(appends_and_formats)
{
    struct leo_buf b = LEO_BUF_INIT;
    ASSERT_EQ(leo_buf_adds(&b, "hello"), 0);
    ASSERT_EQ(leo_buf_addf(&b, " %d %s", 42, "x"), 0);
    ASSERT_STR_EQ(b.p, "hello 42 x");
    leo_buf_consume(&b, 6);
    ASSERT_STR_EQ(b.p, "42 x");
    size_t n;
    char *p = leo_buf_detach(&b, &n);
    ASSERT_EQ(n, 4);
    ASSERT_STR_EQ(p, "42 x");
    ASSERT_EQ(b.len, 0);
    leo_free(p);
}

TEST(long_format_grows)
{
    struct leo_buf b = LEO_BUF_INIT;
    char big[1000];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    ASSERT_EQ(leo_buf_addf(&b, "<%s>", big), 0);
    ASSERT_EQ(b.len, 1001);
    ASSERT_EQ(b.p[1000], '>');
    leo_buf_release(&b);
}

TEST(cap_is_enforced_without_partial_append)
{
    struct leo_buf b;
    leo_buf_init(&b, 8, 0);
    ASSERT_EQ(leo_buf_add(&b, "12345", 5), 0);
    ASSERT_EQ(leo_buf_add(&b, "6789", 4), LEO_ETOOBIG);
    ASSERT_STR_EQ(b.p, "12345");
    ASSERT_EQ(leo_buf_add(&b, "678", 3), 0);
    ASSERT_EQ(b.len, 8);
    leo_buf_release(&b);
}

TEST(json_escape)
{
    struct leo_buf b = LEO_BUF_INIT;
    const char in[] = "a\"b\\c\nd\x01";
    leo_buf_add_json_escaped(&b, in, sizeof(in) - 1);
    ASSERT_STR_EQ(b.p, "a\\\"b\\\\c\\nd\\u0001");
    leo_buf_release(&b);
}

TEST(numbers_match_printf)
{
    struct leo_buf b = LEO_BUF_INIT;
    char want[512];
    const unsigned long long ints[] = {0, 7, 10, 1234567890123ULL, 18446744073709551615ULL};
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
        leo_buf_reset(&b);
        leo_buf_add_uint(&b, ints[i]);
        snprintf(want, sizeof(want), "%llu", ints[i]);
        ASSERT_STR_EQ(b.p, want);
    }
    const double fixed[] = {0, 0.0004, 1.5, 12.3456, 99.9996, -3.25, 1e12, 1e300, -0.0};
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
        leo_buf_reset(&b);
        leo_buf_add_fixed(&b, fixed[i], 3);
        snprintf(want, sizeof(want), "%.3f", fixed[i]);
        ASSERT_STR_EQ(b.p, want);
    }
    /* random values: equal to printf unless the value lies within rounding error of a tie */
    uint64_t x = 88172645463325252ULL;
    int differ = 0;
    for (int i = 0; i < 200000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        unsigned d = (unsigned)(x % 10);
        double v = (double)(x >> 11) / (double)(1ULL << 53) * (double)(x % 7 == 0 ? 1e6 : 1e3);
        leo_buf_reset(&b);
        leo_buf_add_fixed(&b, v, d);
        snprintf(want, sizeof(want), "%.*f", (int)d, v);
        if (strcmp(b.p, want) != 0) {
            double scaled = v * pow(10, d);
            double frac = scaled - (double)(unsigned long long)scaled;
            double tol = scaled * 4e-16 + 1e-9; /* the error of the scaling multiplications */
            if (!(frac > 0.5 - tol && frac < 0.5 + tol))
                fprintf(stderr, "v=%.17g d=%u got %s want %s frac %.17g\n", v, d, b.p, want, frac);
            ASSERT(frac > 0.5 - tol && frac < 0.5 + tol);
            differ++;
        }
    }
    ASSERT(differ < 2000); /* near-ties are rare: about 1% of these values */
    leo_buf_release(&b);
}

static int cleanups;
static void count_cleanup(void *arg)
{
    ASSERT_EQ((long)arg, cleanups + 1);
    cleanups++;
}

TEST(arena_allocates_and_cleans_up_in_reverse)
{
    struct leo_arena a = LEO_ARENA_INIT;
    for (int i = 0; i < 1000; i++) {
        char *p = leo_arena_alloc(&a, 17);
        memset(p, 'x', 17);
    }
    char *big = leo_arena_alloc(&a, 100000);
    memset(big, 'y', 100000);
    ASSERT_STR_EQ(leo_arena_strndup(&a, "abcdef", 3), "abc");
    leo_arena_on_destroy(&a, count_cleanup, (void *)2);
    leo_arena_on_destroy(&a, count_cleanup, (void *)1);
    leo_arena_destroy(&a);
    ASSERT_EQ(cleanups, 2);
}

TEST(strerror_names_codes)
{
    ASSERT_STR_EQ(leo_strerror(LEO_ETOOBIG), "size limit exceeded");
    ASSERT_STR_EQ(leo_strerror(0), "success");
}

TEST_MAIN(TEST_ENTRY(starts_empty_and_terminated), TEST_ENTRY(appends_and_formats), TEST_ENTRY(long_format_grows),
          TEST_ENTRY(cap_is_enforced_without_partial_append), TEST_ENTRY(json_escape), TEST_ENTRY(numbers_match_printf),
          TEST_ENTRY(arena_allocates_and_cleans_up_in_reverse), TEST_ENTRY(strerror_names_codes))
