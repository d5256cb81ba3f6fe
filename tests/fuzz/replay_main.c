/*
 * replay_main.c — replays a fuzz target's corpus without libFuzzer, so every build runs the corpus as a
 * regression test: `fuzz_x DIR_OR_FILE...` feeds each file to LLVMFuzzerTestOneInput once.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "common/buf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "cannot open %s\n", path);
        return 1;
    }
    struct leo_buf b = LEO_BUF_INIT;
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        leo_buf_add(&b, chunk, n);
    fclose(f);
    LLVMFuzzerTestOneInput((const uint8_t *)b.p, b.len);
    leo_buf_release(&b);
    return 0;
}

int main(int argc, char **argv)
{
    size_t files = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "no such corpus: %s\n", argv[i]);
            return 1;
        }
        if (!S_ISDIR(st.st_mode)) {
            if (run_file(argv[i]))
                return 1;
            files++;
            continue;
        }
        DIR *d = opendir(argv[i]);
        struct dirent *e;
        while (d && (e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.')
                continue;
            char path[4096];
            snprintf(path, sizeof(path), "%s/%s", argv[i], e->d_name);
            if (run_file(path))
                return 1;
            files++;
        }
        if (d)
            closedir(d);
    }
    if (files == 0) {
        fprintf(stderr, "empty corpus\n");
        return 1;
    }
    printf("%zu passed, 0 failed\n", files);
    return 0;
}
