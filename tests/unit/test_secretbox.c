#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/error.h"
#include "common/secretbox.h"
#include "tests/unit/test.h"

#define HEX_A "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
/* the same 32 bytes in standard base64 */
#define B64_A "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define HEX_B "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"

static struct leo_secretbox_key key_of(const char *text)
{
    struct leo_secretbox_key k;
    const char *why = NULL;
    int rc = leo_secretbox_key_parse(leo_str_c(text), &k, &why);
    if (rc != 0)
        TEST_FAIL_("parse %s: %s", text, why);
    return k;
}

TEST(round_trip)
{
    struct leo_secretbox_ring ring = {.nkeys = 0};
    struct leo_secretbox_key a = key_of(HEX_A);
    ASSERT(leo_secretbox_ring_add(&ring, &a));
    struct leo_buf sealed = LEO_BUF_INIT, plain = LEO_BUF_INIT;
    ASSERT_EQ(leo_secretbox_seal(&a, LEO_STR_LIT("sk-upstream-secret-abcd"), LEO_STR_LIT("cred-1"), &sealed), 0);
    ASSERT(strncmp(sealed.p, "sb1.mk", 6) == 0);
    ASSERT(strstr(sealed.p, "sk-upstream") == NULL);
    ASSERT_EQ(leo_secretbox_open(&ring, leo_buf_str(&sealed), LEO_STR_LIT("cred-1"), &plain, NULL), 0);
    ASSERT_STR_EQ(plain.p, "sk-upstream-secret-abcd");
    /* a second seal of the same secret differs (fresh nonce) */
    struct leo_buf again = LEO_BUF_INIT;
    leo_secretbox_seal(&a, LEO_STR_LIT("sk-upstream-secret-abcd"), LEO_STR_LIT("cred-1"), &again);
    ASSERT(strcmp(again.p, sealed.p) != 0);
    leo_buf_release(&again);
    leo_buf_release(&sealed);
    leo_secretbox_wipe(&plain);
}

TEST(key_formats_and_ids)
{
    struct leo_secretbox_key h = key_of(HEX_A), b = key_of(B64_A), b2 = key_of("  " B64_A "\n");
    ASSERT_MEM_EQ(h.key, 32, b.key, 32);
    ASSERT_STR_EQ(h.id, b.id);
    ASSERT_STR_EQ(h.id, b2.id);
    ASSERT_EQ(strlen(h.id), LEO_SECRETBOX_KEY_ID_LEN);
    struct leo_secretbox_key o = key_of(HEX_B);
    ASSERT(strcmp(o.id, h.id) != 0);
    /* the id is not the key */
    ASSERT(strstr(HEX_A, h.id + 2) == NULL);
    struct leo_secretbox_key bad;
    const char *why = NULL;
    ASSERT_EQ(leo_secretbox_key_parse(LEO_STR_LIT("abcd"), &bad, &why), LEO_EINVAL);
    ASSERT(why != NULL);
    ASSERT_EQ(leo_secretbox_key_parse(LEO_STR_LIT(HEX_A "00"), &bad, &why), LEO_EINVAL);
    ASSERT_EQ(leo_secretbox_key_parse(LEO_STR_LIT("zz0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"),
                                      &bad, &why),
              LEO_EINVAL);
}

TEST(wrong_key_is_refused)
{
    struct leo_secretbox_key a = key_of(HEX_A), b = key_of(HEX_B);
    struct leo_buf sealed = LEO_BUF_INIT, plain = LEO_BUF_INIT;
    leo_secretbox_seal(&a, LEO_STR_LIT("secret"), LEO_STR_LIT("x"), &sealed);
    struct leo_secretbox_ring ring = {.nkeys = 0};
    leo_secretbox_ring_add(&ring, &b);
    const char *why = NULL;
    ASSERT_EQ(leo_secretbox_open(&ring, leo_buf_str(&sealed), LEO_STR_LIT("x"), &plain, &why), LEO_ENOTFOUND);
    /* the same bytes relabelled with b's id: the key id is authenticated, and b is the wrong key anyway */
    struct leo_buf relabel = LEO_BUF_INIT;
    leo_buf_addf(&relabel, "sb1.%s.%s", b.id, sealed.p + 4 + LEO_SECRETBOX_KEY_ID_LEN + 1);
    ASSERT_EQ(leo_secretbox_open(&ring, leo_buf_str(&relabel), LEO_STR_LIT("x"), &plain, &why), LEO_EAUTH);
    ASSERT_EQ(plain.len, 0);
    /* an empty ring says so */
    struct leo_secretbox_ring empty = {.nkeys = 0};
    ASSERT_EQ(leo_secretbox_open(&empty, leo_buf_str(&sealed), LEO_STR_LIT("x"), &plain, &why), LEO_ENOTFOUND);
    ASSERT_STR_EQ(why, "no master key is configured");
    leo_buf_release(&relabel);
    leo_buf_release(&sealed);
}

TEST(tampered_bytes_are_refused)
{
    struct leo_secretbox_key a = key_of(HEX_A);
    struct leo_secretbox_ring ring = {.nkeys = 0};
    leo_secretbox_ring_add(&ring, &a);
    struct leo_buf sealed = LEO_BUF_INIT, plain = LEO_BUF_INIT;
    leo_secretbox_seal(&a, LEO_STR_LIT("a secret of some length"), LEO_STR_LIT("row"), &sealed);
    size_t start = 4 + LEO_SECRETBOX_KEY_ID_LEN + 1;
    for (size_t i = start; i < sealed.len; i += 7) {
        char saved = sealed.p[i];
        sealed.p[i] = saved == 'A' ? 'B' : 'A';
        int rc = leo_secretbox_open(&ring, leo_buf_str(&sealed), LEO_STR_LIT("row"), &plain, NULL);
        if (rc == 0)
            TEST_FAIL_("byte %zu changed and the seal still opened", i);
        ASSERT_EQ(plain.len, 0);
        sealed.p[i] = saved;
    }
    /* truncated and garbage forms */
    ASSERT_EQ(leo_secretbox_open(&ring, leo_str_n(sealed.p, sealed.len - 5), LEO_STR_LIT("row"), &plain, NULL) != 0, 1);
    ASSERT_EQ(leo_secretbox_open(&ring, LEO_STR_LIT("plaintext"), LEO_STR_LIT("row"), &plain, NULL), LEO_EPARSE);
    ASSERT_EQ(leo_secretbox_open(&ring, LEO_STR_LIT("sb1.x"), LEO_STR_LIT("row"), &plain, NULL), LEO_EPARSE);
    ASSERT_EQ(leo_secretbox_open(&ring, leo_buf_str(&sealed), LEO_STR_LIT("row"), &plain, NULL), 0);
    leo_secretbox_wipe(&plain);
    leo_buf_release(&sealed);
}

TEST(wrong_associated_data_is_refused)
{
    struct leo_secretbox_key a = key_of(HEX_A);
    struct leo_secretbox_ring ring = {.nkeys = 0};
    leo_secretbox_ring_add(&ring, &a);
    struct leo_buf sealed = LEO_BUF_INIT, plain = LEO_BUF_INIT;
    leo_secretbox_seal(&a, LEO_STR_LIT("secret"), LEO_STR_LIT("credential-1"), &sealed);
    ASSERT_EQ(leo_secretbox_open(&ring, leo_buf_str(&sealed), LEO_STR_LIT("credential-2"), &plain, NULL), LEO_EAUTH);
    ASSERT_EQ(leo_secretbox_open(&ring, leo_buf_str(&sealed), LEO_STR_LIT(""), &plain, NULL), LEO_EAUTH);
    ASSERT_EQ(plain.len, 0);
    leo_buf_release(&sealed);
}

TEST(ring_lookup_by_key_id)
{
    struct leo_secretbox_key a = key_of(HEX_A), b = key_of(HEX_B);
    struct leo_secretbox_ring ring = {.nkeys = 0};
    ASSERT(leo_secretbox_ring_add(&ring, &b));
    ASSERT(leo_secretbox_ring_add(&ring, &a));
    ASSERT(leo_secretbox_ring_add(&ring, &a)); /* already there */
    ASSERT_EQ(ring.nkeys, 2);
    ASSERT(leo_secretbox_ring_find(&ring, leo_str_c(a.id)) == &ring.keys[1]);
    ASSERT(leo_secretbox_ring_find(&ring, LEO_STR_LIT("mk0000000000000000")) == NULL);
    /* secrets sealed under either key open with the ring; the sealed form names its key */
    struct leo_buf s1 = LEO_BUF_INIT, s2 = LEO_BUF_INIT, p = LEO_BUF_INIT;
    leo_secretbox_seal(&a, LEO_STR_LIT("one"), LEO_STR_LIT("r"), &s1);
    leo_secretbox_seal(&b, LEO_STR_LIT("two"), LEO_STR_LIT("r"), &s2);
    ASSERT(leo_str_eqc(leo_secretbox_key_id(leo_buf_str(&s1)), a.id));
    ASSERT(leo_str_eqc(leo_secretbox_key_id(leo_buf_str(&s2)), b.id));
    ASSERT_EQ(leo_secretbox_open(&ring, leo_buf_str(&s1), LEO_STR_LIT("r"), &p, NULL), 0);
    ASSERT_EQ(leo_secretbox_open(&ring, leo_buf_str(&s2), LEO_STR_LIT("r"), &p, NULL), 0);
    ASSERT_STR_EQ(p.p, "onetwo");
    leo_secretbox_wipe(&p);
    leo_buf_release(&s1);
    leo_buf_release(&s2);
    leo_secretbox_ring_clear(&ring);
    ASSERT_EQ(ring.nkeys, 0);
}

TEST(ring_from_env_and_file)
{
    unsetenv("LEO_MASTER_KEY");
    unsetenv("LEO_MASTER_KEY_FILE");
    unsetenv("LEO_MASTER_KEY_NEW");
    unsetenv("LEO_MASTER_KEY_NEW_FILE");
    unsetenv("LEO_MASTER_KEY_PREVIOUS");
    unsetenv("LEO_MASTER_KEY_PREVIOUS_FILE");
    struct leo_secretbox_ring ring;
    struct leo_buf err = LEO_BUF_INIT;
    ASSERT_EQ(leo_secretbox_ring_from_env(&ring, &err), 0);
    ASSERT_EQ(ring.nkeys, 0);

    char path[] = "/tmp/leo-test-mk-XXXXXX";
    int fd = mkstemp(path);
    ASSERT(fd >= 0);
    ASSERT_EQ(write(fd, B64_A "\n", strlen(B64_A) + 1), (ssize_t)strlen(B64_A) + 1);
    close(fd);
    setenv("LEO_MASTER_KEY_FILE", path, 1);
    setenv("LEO_MASTER_KEY_NEW", HEX_B, 1);
    ASSERT_EQ(leo_secretbox_ring_from_env(&ring, &err), 0);
    ASSERT_EQ(ring.nkeys, 2);
    ASSERT_STR_EQ(ring.keys[0].id, key_of(HEX_A).id);
    ASSERT_STR_EQ(ring.keys[1].id, key_of(HEX_B).id);

    /* a malformed key is an error that names the variable, not the value */
    setenv("LEO_MASTER_KEY_PREVIOUS", "not-a-key-value", 1);
    ASSERT_EQ(leo_secretbox_ring_from_env(&ring, &err), LEO_EINVAL);
    ASSERT(strstr(err.p, "LEO_MASTER_KEY_PREVIOUS") != NULL);
    ASSERT(strstr(err.p, "not-a-key-value") == NULL);
    ASSERT_EQ(ring.nkeys, 0);
    leo_buf_reset(&err);
    unsetenv("LEO_MASTER_KEY_PREVIOUS");
    setenv("LEO_MASTER_KEY_FILE", "/nonexistent/leo-master-key", 1);
    ASSERT_EQ(leo_secretbox_ring_from_env(&ring, &err), LEO_EIO);
    ASSERT(strstr(err.p, "LEO_MASTER_KEY_FILE") != NULL);
    unsetenv("LEO_MASTER_KEY_FILE");
    unsetenv("LEO_MASTER_KEY_NEW");
    unlink(path);
    leo_buf_release(&err);
}

TEST_MAIN(TEST_ENTRY(round_trip), TEST_ENTRY(key_formats_and_ids), TEST_ENTRY(wrong_key_is_refused),
          TEST_ENTRY(tampered_bytes_are_refused), TEST_ENTRY(wrong_associated_data_is_refused),
          TEST_ENTRY(ring_lookup_by_key_id), TEST_ENTRY(ring_from_env_and_file))
