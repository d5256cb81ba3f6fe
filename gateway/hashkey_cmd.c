/*
 * hashkey_cmd.c — `leo-gateway hash-key`.
 */
#include "hashkey_cmd.h"

#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "../common/keyhash.h"

#define DEFAULT_SECRET_ENV "LEO_KEY_HASH_SECRET"
#define KEY_PREFIX "sk-leo-"
#define KEY_RANDOM_BYTES 30 /* 30 bytes are exactly 40 base64 characters, without padding */
#define STDIN_KEY_MAX 4096

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "leo-gateway hash-key: ");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nusage: leo-gateway hash-key [--secret-env NAME] [KEY]\n"
                    "       leo-gateway hash-key [--secret-env NAME] --generate\n");
    return 2;
}

static void print_hash(const uint8_t secret[LEO_KEYHASH_SECRET_BYTES], struct leo_str key)
{
    uint8_t h[LEO_KEYHASH_BYTES];
    char text[LEO_KEYHASH_TEXT_LEN + 1];
    leo_keyhash(secret, key, h);
    leo_keyhash_format(h, text);
    printf("%s\n", text);
}

/* One line from stdin without its line ending; 0, 1 on a read error or overlong line, 2 when empty. */
static int read_key_line(char *buf, size_t size, size_t *len)
{
    if (fgets(buf, (int)size, stdin) == NULL) {
        if (ferror(stdin)) {
            fprintf(stderr, "leo-gateway hash-key: cannot read the key from stdin\n");
            return 1;
        }
        buf[0] = '\0';
    }
    size_t n = strlen(buf);
    if (n == size - 1 && buf[n - 1] != '\n') {
        fprintf(stderr, "leo-gateway hash-key: the key on stdin is longer than %d bytes\n", STDIN_KEY_MAX);
        return 1;
    }
    if (n && buf[n - 1] == '\n')
        n--;
    if (n && buf[n - 1] == '\r')
        n--;
    *len = n;
    return n ? 0 : 2;
}

int leo_hashkey_main(int argc, char **argv)
{
    const char *secret_env = DEFAULT_SECRET_ENV;
    const char *key = NULL;
    int generate = 0, rest = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!rest && strcmp(a, "--") == 0) {
            rest = 1;
        } else if (!rest && strcmp(a, "--generate") == 0) {
            generate = 1;
        } else if (!rest && strcmp(a, "--secret-env") == 0) {
            if (i + 1 >= argc)
                return usage_error("%s needs a variable name", a);
            secret_env = argv[++i];
        } else if (!rest && strncmp(a, "--secret-env=", 13) == 0) {
            secret_env = a + 13;
        } else if (!rest && (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0)) {
            printf("usage: leo-gateway hash-key [--secret-env NAME] [KEY]\n"
                   "       leo-gateway hash-key [--secret-env NAME] --generate\n"
                   "Prints the keyed hash (kh1:...) of KEY, or of one line read from stdin, using the secret in\n"
                   "$NAME (default " DEFAULT_SECRET_ENV
                   "). --generate creates a new key and prints it and its hash.\n");
            return 0;
        } else if (!rest && a[0] == '-' && a[1] != '\0') {
            return usage_error("unknown option \"%s\"", a);
        } else if (key == NULL) {
            key = a;
        } else {
            return usage_error("unexpected argument \"%s\"", a);
        }
    }
    if (secret_env[0] == '\0')
        return usage_error("--secret-env needs a variable name");
    if (generate && key)
        return usage_error("--generate takes no KEY (got \"%s\")", key);
    if (key && key[0] == '\0')
        return usage_error("the key is empty");

    leo_keyhash_init();
    uint8_t secret[LEO_KEYHASH_SECRET_BYTES];
    if (leo_keyhash_secret_from_env(secret_env, secret))
        fprintf(stderr,
                "leo-gateway hash-key: warning: %s is not set; using the public development secret, so this hash "
                "only matches a gateway that also runs without %s\n",
                secret_env, secret_env);

    int rc = 0;
    if (generate) {
        uint8_t rnd[KEY_RANDOM_BYTES];
        char b64[sodium_base64_ENCODED_LEN(KEY_RANDOM_BYTES, sodium_base64_VARIANT_URLSAFE_NO_PADDING)];
        char newkey[sizeof(KEY_PREFIX) + sizeof(b64)];
        randombytes_buf(rnd, sizeof(rnd));
        sodium_bin2base64(b64, sizeof(b64), rnd, sizeof(rnd), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        snprintf(newkey, sizeof(newkey), "%s%s", KEY_PREFIX, b64);
        printf("%s\n", newkey);
        print_hash(secret, leo_str_c(newkey));
        sodium_memzero(rnd, sizeof(rnd));
        sodium_memzero(newkey, sizeof(newkey));
    } else if (key) {
        print_hash(secret, leo_str_c(key));
    } else {
        char line[STDIN_KEY_MAX + 2]; /* the key, its line ending and the NUL */
        size_t len = 0;
        rc = read_key_line(line, sizeof(line), &len);
        if (rc == 0)
            print_hash(secret, leo_str_n(line, len));
        else if (rc == 2)
            rc = usage_error("no key on stdin");
        sodium_memzero(line, sizeof(line));
    }
    sodium_memzero(secret, sizeof(secret));
    fflush(stdout);
    return rc;
}
