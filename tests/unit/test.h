/*
 * test.h — a tiny unit-test harness in the manner of libuv's: asserts that print both values and never
 * compile out, one function per behaviour, and a main() that runs them in order and prints a summary line
 * "N passed, 0 failed". A failed assertion aborts the whole executable (ctest reports it).
 */
#ifndef LEO_TEST_H
#define LEO_TEST_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TEST_FAIL_(...)                                                                                      \
    do {                                                                                                     \
        fprintf(stderr, "%s:%d: assertion failed: ", __FILE__, __LINE__);                                    \
        fprintf(stderr, __VA_ARGS__);                                                                        \
        fprintf(stderr, "\n");                                                                               \
        abort();                                                                                             \
    } while (0)

#define ASSERT(expr)                                                                                         \
    do {                                                                                                     \
        if (!(expr))                                                                                         \
            TEST_FAIL_("%s", #expr);                                                                         \
    } while (0)

#define ASSERT_EQ(a, b)                                                                                      \
    do {                                                                                                     \
        int64_t a_ = (int64_t)(a), b_ = (int64_t)(b);                                                        \
        if (a_ != b_)                                                                                        \
            TEST_FAIL_("%s == %s (%" PRId64 " vs %" PRId64 ")", #a, #b, a_, b_);                             \
    } while (0)

#define ASSERT_NE(a, b)                                                                                      \
    do {                                                                                                     \
        int64_t a_ = (int64_t)(a), b_ = (int64_t)(b);                                                        \
        if (a_ == b_)                                                                                        \
            TEST_FAIL_("%s != %s (both %" PRId64 ")", #a, #b, a_);                                           \
    } while (0)

#define ASSERT_DBL_EQ(a, b)                                                                                  \
    do {                                                                                                     \
        double a_ = (a), b_ = (b);                                                                           \
        if (!(a_ - b_ < 1e-9 && b_ - a_ < 1e-9))                                                             \
            TEST_FAIL_("%s == %s (%.12g vs %.12g)", #a, #b, a_, b_);                                         \
    } while (0)

#define ASSERT_STR_EQ(a, b)                                                                                  \
    do {                                                                                                     \
        const char *a_ = (a), *b_ = (b);                                                                     \
        if (a_ == NULL || b_ == NULL || strcmp(a_, b_) != 0)                                                 \
            TEST_FAIL_("%s == %s (\"%s\" vs \"%s\")", #a, #b, a_ ? a_ : "(null)", b_ ? b_ : "(null)");       \
    } while (0)

#define ASSERT_MEM_EQ(a, alen, b, blen)                                                                      \
    do {                                                                                                     \
        size_t al_ = (alen), bl_ = (blen);                                                                   \
        if (al_ != bl_ || memcmp((a), (b), al_) != 0)                                                        \
            TEST_FAIL_("%s == %s (\"%.*s\" vs \"%.*s\")", #a, #b, (int)al_, (const char *)(a), (int)bl_,     \
                       (const char *)(b));                                                                   \
    } while (0)

struct test_case {
    const char *name;
    void (*fn)(void);
};

#define TEST(name) static void test_##name(void)
#define TEST_ENTRY(name) {#name, test_##name}

static inline int test_run_all(const struct test_case *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        fprintf(stderr, "running %s\n", cases[i].name);
        cases[i].fn();
        fprintf(stderr, "ok %s\n", cases[i].name);
    }
    printf("%zu passed, 0 failed\n", n);
    return 0;
}

#define TEST_MAIN(...)                                                                                       \
    int main(void)                                                                                           \
    {                                                                                                        \
        static const struct test_case cases_[] = {__VA_ARGS__};                                              \
        return test_run_all(cases_, sizeof(cases_) / sizeof(cases_[0]));                                     \
    }

/* A seeded xorshift generator for tests that generate their cases: the same sequence on every run. */
static inline unsigned test_rnd(uint64_t *state, unsigned n)
{
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return (unsigned)(*state % n);
}

#endif
