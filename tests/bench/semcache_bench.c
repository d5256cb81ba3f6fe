/*
 * semcache_bench.c — the semantic cache (gateway/semcache.c) measured through its public API at one size:
 * time to add N entries, lookup latency for exact repeats, light paraphrases and unrelated prompts, recall
 * against an exhaustive scan, and memory per entry. Driven by tests/bench/semcache.sh (one process per size, so
 * that the resident-set growth belongs to one size); a benchmark, not a test: it prints figures and fails only
 * on bad arguments.
 *
 *   semcache_bench --size N [--queries Q] [--recall-queries R] [--threshold T] [--seed S] [--raw FILE]
 *
 * The cache runs as a worker runs it with the `local` embedder and no Redis (leo_semcache_new with redis NULL,
 * max_entries N), every entry in one namespace (one tenant, model, system prompt and set of parameters: the
 * worst case, one index holding everything).
 *
 * Data. Stored prompts are questions about programming, from 10 templates ("How do I <verb> a <noun> in
 * <language>?", "Which library should I use to <verb> a <adjective> <noun> in <language>?", ...) filled from
 * word lists (about 100 verbs, 170 nouns, 65 adjectives, 50 languages and tools): many distinct prompts with
 * shared structure, so that every prompt has many near neighbours. Entry i uses template i % 10 and the
 * combination (i / 10) * P + O mod the template's number of combinations, P coprime with it: no two entries
 * are the same prompt. Queries, each of the three kinds interleaved:
 *   repeat      a stored prompt, unchanged;
 *   paraphrase  a stored prompt with one light edit: a word dropped, a filler word added ("please",
 *               "really", ...), the first letter lowercased, the final punctuation dropped, or a comma added;
 *   unrelated   a prompt from other templates and word lists (cooking, travel, hobbies) never stored.
 *
 * Latency is CLOCK_MONOTONIC around what the gateway does per request once it has the parsed body:
 * leo_semcache_query_init (eligibility, namespace hash) + leo_semcache_lookup (embedding, HNSW search,
 * thresholds, false-hit guard) + leo_semcache_query_release, and the thread's CPU time
 * (CLOCK_THREAD_CPUTIME_ID) around the same calls: on a machine shared with other work the wall time includes
 * the time the process waited for a core, the CPU time does not. Building the request JSON is not timed. The
 * embedding alone is timed (CPU) on the recall queries, to show how the lookup's time splits.
 *
 * Recall. For the first R repeat and R paraphrase queries, a second pass embeds every stored prompt again
 * (leo_embed_now) and scores it against each query with leo_embed_cosine, keeping the 32 best per query; the
 * exhaustive answer is the most similar stored prompt whose similarity reaches the threshold and that the
 * false-hit guard (leo_semguard_check) accepts, as the cache's own rule says, or none. A lookup agrees when
 * both say none, or both return the same prompt (or one exactly as similar: a tie). Recall = agreeing
 * lookups among those where the exhaustive answer is a hit. A query whose 32 best all pass the threshold and
 * are all refused by the guard has no exhaustive answer within reach and is counted apart ("undecided").
 *
 * Memory. The process's resident set (/proc/self/statm) and the malloc heap in use (mallinfo2: uordblks +
 * hblkhd) before and after the adds, divided by N: everything an entry costs (its text, its record, its
 * vector and links in the index, the tables), including capacity the index and the tables reserved by
 * doubling.
 *
 * Answers from another prompt. Every repeat and paraphrase is also scored (untimed) against the stored prompt it
 * was made from: its similarity, and whether the cache may serve that prompt for it (threshold and guard). A
 * hit on another stored prompt is then one of two things: an index miss, when the query's own prompt was
 * acceptable and more similar than the one served (the exhaustive scan would not have served that one), or the
 * embedding's and the guard's verdict, when the other prompt is at least as similar (or the query's own is
 * not acceptable): the exhaustive scan would not serve the query's own prompt either. A miss while the query's
 * own prompt was acceptable is an index miss that cost a hit.
 *
 * Output: "key value" lines for tests/bench/semcache.sh, and with --raw one CSV row per timed query
 * (kind,query,hit,entry,similarity,init_us,lookup_us,cpu_us,source,source_similarity,source_ok,text,entry_text,
 * source_text: the query, the stored prompt it was made from and its similarity to the query, the stored prompt
 * of the hit, and the texts).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <malloc.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/str.h"
#include "gateway/embed.h"
#include "gateway/semcache.h"
#include "gateway/semguard.h"

#define TOP 32
#define TEXT_MAX 256

/* ---- word lists ---- */

static const char *const VERBS[] = {
    "sort",      "parse",     "serialize", "deserialize", "validate",  "cache",    "compress", "decompress", "encrypt",
    "decrypt",   "hash",      "sign",      "verify",      "index",     "search",   "filter",   "map",        "reduce",
    "merge",     "split",     "join",      "copy",        "clone",     "move",     "rename",   "delete",     "remove",
    "insert",    "update",    "upsert",    "query",       "fetch",     "download", "upload",   "stream",     "buffer",
    "flush",     "log",       "trace",     "profile",     "benchmark", "test",     "mock",     "stub",       "debug",
    "refactor",  "document",  "format",    "lint",        "compile",   "build",    "package",  "deploy",     "release",
    "publish",   "install",   "configure", "initialize",  "reset",     "restore",  "back up",  "migrate",    "convert",
    "transform", "normalize", "sanitize",  "escape",      "encode",    "decode",   "tokenize", "render",     "draw",
    "resize",    "crop",      "rotate",    "scale",       "paginate",  "batch",    "schedule", "queue",      "retry",
    "throttle",  "cancel",    "pause",     "resume",      "lock",      "unlock",   "share",    "sync",       "watch",
    "monitor",   "inspect",   "measure",   "shuffle",     "flatten",   "reverse",  "dedupe",   "archive",    "mirror",
    "patch",     "replay",    "snapshot",  "shard",
};
static const char *const NOUNS[] = {
    "list",
    "array",
    "dictionary",
    "hash table",
    "linked list",
    "queue",
    "stack",
    "heap",
    "tree",
    "graph",
    "matrix",
    "vector",
    "string",
    "buffer",
    "file",
    "directory",
    "folder",
    "path",
    "socket",
    "connection",
    "request",
    "response",
    "header",
    "cookie",
    "session",
    "token",
    "password",
    "certificate",
    "key pair",
    "database",
    "table",
    "column",
    "row",
    "record",
    "schema",
    "view",
    "transaction",
    "cursor",
    "migration",
    "query plan",
    "stored procedure",
    "document",
    "collection",
    "bucket",
    "blob",
    "image",
    "thumbnail",
    "video",
    "audio clip",
    "spreadsheet",
    "report",
    "chart",
    "dashboard",
    "form",
    "button",
    "menu",
    "modal dialog",
    "page",
    "component",
    "template",
    "stylesheet",
    "script",
    "module",
    "library",
    "dependency",
    "container",
    "pod",
    "cluster",
    "node",
    "service",
    "endpoint",
    "route",
    "handler",
    "middleware",
    "controller",
    "model",
    "event",
    "listener",
    "callback",
    "promise",
    "future",
    "thread",
    "process",
    "coroutine",
    "task",
    "job",
    "worker",
    "pipeline",
    "workflow",
    "config file",
    "environment variable",
    "secret",
    "feature flag",
    "log file",
    "stack trace",
    "error message",
    "exception",
    "warning",
    "metric",
    "alert",
    "histogram",
    "counter",
    "gauge",
    "cache entry",
    "lock file",
    "checksum",
    "signature",
    "zip file",
    "tarball",
    "diff",
    "commit",
    "branch",
    "tag",
    "pull request",
    "issue",
    "changelog",
    "readme",
    "manifest",
    "binary",
    "executable",
    "shared object",
    "object file",
    "symbol table",
    "regular expression",
    "grammar",
    "parser",
    "lexer",
    "syntax tree",
    "bytecode",
    "virtual machine",
    "interpreter",
    "compiler",
    "debugger",
    "profiler",
    "notebook",
    "dataset",
    "data frame",
    "training set",
    "embedding",
    "tensor",
    "neural network",
    "decision tree",
    "random forest",
    "prompt",
    "chat history",
    "user profile",
    "shopping cart",
    "invoice",
    "order",
    "payment",
    "subscription",
    "customer record",
    "email",
    "notification",
    "message queue",
    "webhook",
    "sitemap",
    "font",
    "icon",
    "color palette",
    "layout",
    "grid",
    "carousel",
    "tooltip",
    "search box",
    "login form",
    "avatar",
    "upload form",
    "access log",
    "audit trail",
    "permission",
    "role",
    "user group",
    "tenant",
    "quota",
    "rate limiter",
};
static const char *const ADJS[] = {
    "large",      "small",        "nested",      "empty",      "sorted",    "immutable",  "mutable",   "shared",
    "private",    "public",       "temporary",   "persistent", "encrypted", "compressed", "remote",    "local",
    "cached",     "stale",        "corrupted",   "partial",    "complete",  "duplicate",  "unique",    "optional",
    "required",   "deprecated",   "legacy",      "modern",     "generic",   "typed",      "dynamic",   "static",
    "global",     "recursive",    "circular",    "sparse",     "dense",     "binary",     "textual",   "huge",
    "tiny",       "slow",         "fast",        "flaky",      "broken",    "valid",      "malformed", "secure",
    "concurrent", "asynchronous", "synchronous", "paginated",  "versioned", "signed",     "raw",       "formatted",
    "minified",   "verbose",      "noisy",       "internal",   "external",  "fragile",    "hidden",    "default",
    "custom",
};
static const char *const LANGS[] = {
    "Python",     "Java",   "Rust",       "Go",     "Kotlin",     "Swift",      "Ruby",    "PHP",    "Perl",
    "Haskell",    "Scala",  "Elixir",     "Erlang", "Clojure",    "Julia",      "Lua",     "Dart",   "TypeScript",
    "JavaScript", "Bash",   "PowerShell", "Zig",    "Nim",        "OCaml",      "Fortran", "COBOL",  "Crystal",
    "Groovy",     "Django", "Flask",      "Rails",  "Laravel",    "Spring",     "React",   "Vue",    "Angular",
    "Svelte",     "Node",   "Deno",       "Pandas", "NumPy",      "PostgreSQL", "MySQL",   "SQLite", "Redis",
    "MongoDB",    "Kafka",  "Spark",      "Docker", "Kubernetes", "Terraform",  "Ansible",
};

static const char *const INGREDIENTS[] = {
    "chicken",     "rice",     "lentils",  "spinach", "mushrooms", "tofu",   "salmon",       "potatoes", "carrots",
    "chickpeas",   "broccoli", "eggs",     "pasta",   "tomatoes",  "garlic", "ginger",       "onions",   "beef",
    "shrimp",      "quinoa",   "oats",     "yogurt",  "cheese",    "beans",  "peppers",      "zucchini", "eggplant",
    "cauliflower", "cabbage",  "kale",     "avocado", "lemon",     "lime",   "coconut milk", "peanuts",  "almonds",
    "honey",       "basil",    "cilantro", "mint",    "pork",      "turkey", "duck",         "cod",      "tuna",
    "noodles",     "barley",   "corn",     "peas",    "pumpkin",
};
static const char *const CITIES[] = {
    "Lisbon",   "Porto",    "Madrid",   "Seville",   "Barcelona", "Paris",      "Lyon",      "Marseille",  "Rome",
    "Florence", "Venice",   "Naples",   "Milan",     "Berlin",    "Munich",     "Hamburg",   "Vienna",     "Prague",
    "Budapest", "Krakow",   "Warsaw",   "Amsterdam", "Rotterdam", "Brussels",   "Bruges",    "Copenhagen", "Stockholm",
    "Oslo",     "Helsinki", "Dublin",   "Edinburgh", "London",    "Manchester", "Athens",    "Istanbul",   "Tokyo",
    "Kyoto",    "Osaka",    "Seoul",    "Taipei",    "Hanoi",     "Bangkok",    "Singapore", "Sydney",     "Melbourne",
    "Auckland", "Toronto",  "Montreal", "Vancouver", "Chicago",   "Boston",     "Denver",    "Austin",     "Seattle",
    "Lima",     "Cusco",    "Bogota",   "Santiago",  "Marrakesh", "Cairo",
};
static const char *const TRAVELLERS[] = {
    "family with toddlers",
    "retired couple",
    "solo backpacker",
    "group of friends",
    "business traveller",
    "photographer",
    "food lover",
    "history buff",
    "art student",
    "cyclist",
    "hiker",
    "wine enthusiast",
    "music fan",
    "architecture fan",
    "first-time visitor",
    "digital nomad",
    "honeymoon couple",
    "birdwatcher",
    "runner",
    "vegetarian traveller",
    "wheelchair user",
    "teenager",
    "budget traveller",
    "luxury traveller",
    "night owl",
};
static const char *const SKILLS[] = {
    "public speaking",
    "sight reading",
    "piano technique",
    "guitar strumming",
    "watercolour painting",
    "sketching",
    "pottery",
    "knitting",
    "baking",
    "bread making",
    "sourdough baking",
    "gardening",
    "composting",
    "swimming technique",
    "running form",
    "posture",
    "sleep routine",
    "note taking",
    "touch typing",
    "speed reading",
    "memory",
    "vocabulary",
    "pronunciation",
    "handstand balance",
    "climbing technique",
    "photo composition",
    "video editing",
    "singing voice",
    "breathing technique",
    "meditation practice",
    "negotiation",
    "interview answers",
    "cover letter",
    "resume",
    "budgeting",
    "knife skills",
    "calligraphy",
    "woodworking",
    "sewing",
    "chess endgames",
};
static const char *const EVENTS[] = {
    "job interview",  "wedding speech", "marathon",       "piano recital",     "driving test",
    "exam season",    "house move",     "first date",     "team offsite",      "conference talk",
    "family reunion", "school play",    "art exhibition", "book club meeting", "hiking trip",
    "camping trip",   "dinner party",   "charity run",    "chess tournament",  "choir concert",
    "bake sale",      "garden show",    "photo contest",  "dance audition",    "debate final",
};
static const char *const HOBBIES[] = {
    "mystery novels",    "space documentaries", "long hikes",        "board games",      "jazz records",
    "old maps",          "ocean sailing",       "mountain villages", "street food",      "vintage cameras",
    "bird songs",        "folk tales",          "science fiction",   "medieval history", "quiet cafes",
    "crossword puzzles", "detective stories",   "magic tricks",      "horse riding",     "ancient myths",
    "desert landscapes", "botanical gardens",   "handmade ceramics", "classical opera",  "puppet theatre",
    "graphic novels",    "stargazing",          "fly fishing",       "poetry readings",  "road trips",
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

struct slot {
    const char *const *words;
    size_t n;
};
#define SLOT(a)                                                                                                        \
    {                                                                                                                  \
        a, COUNT(a)                                                                                                    \
    }

/* A template: text with %s where the slots go, in order. */
struct tmpl {
    const char *fmt;
    struct slot slots[4];
    size_t nslots;
    uint64_t space; /* combinations */
    uint64_t mul;   /* coprime with space */
};

static struct tmpl STORED[] = {
    {"How do I %s a %s in %s?", {SLOT(VERBS), SLOT(NOUNS), SLOT(LANGS)}, 3, 0, 0},
    {"What is the fastest way to %s a %s %s in %s?", {SLOT(VERBS), SLOT(ADJS), SLOT(NOUNS), SLOT(LANGS)}, 4, 0, 0},
    {"Can you explain how to %s a %s %s with %s?", {SLOT(VERBS), SLOT(ADJS), SLOT(NOUNS), SLOT(LANGS)}, 4, 0, 0},
    {"Why does my %s code crash when I try to %s the %s?", {SLOT(LANGS), SLOT(VERBS), SLOT(NOUNS)}, 3, 0, 0},
    {"Write a short guide on how to %s a %s %s.", {SLOT(VERBS), SLOT(ADJS), SLOT(NOUNS)}, 3, 0, 0},
    {"What are common mistakes when people %s a %s in %s?", {SLOT(VERBS), SLOT(NOUNS), SLOT(LANGS)}, 3, 0, 0},
    {"Is it a good idea to %s every %s %s before saving it?", {SLOT(VERBS), SLOT(ADJS), SLOT(NOUNS)}, 3, 0, 0},
    {"Show me an example of how to %s a %s using %s.", {SLOT(VERBS), SLOT(NOUNS), SLOT(LANGS)}, 3, 0, 0},
    {"Which library should I use to %s a %s %s in %s?", {SLOT(VERBS), SLOT(ADJS), SLOT(NOUNS), SLOT(LANGS)}, 4, 0, 0},
    {"Give me tips to %s a %s and keep the %s %s working.",
     {SLOT(VERBS), SLOT(NOUNS), SLOT(ADJS), SLOT(NOUNS)},
     4,
     0,
     0},
};
static struct tmpl UNRELATED[] = {
    {"What should I cook for dinner with %s and %s?", {SLOT(INGREDIENTS), SLOT(INGREDIENTS)}, 2, 0, 0},
    {"Plan a relaxing weekend in %s for a %s.", {SLOT(CITIES), SLOT(TRAVELLERS)}, 2, 0, 0},
    {"How can I improve my %s before the %s?", {SLOT(SKILLS), SLOT(EVENTS)}, 2, 0, 0},
    {"Recommend a book for someone who enjoys %s and %s.", {SLOT(HOBBIES), SLOT(HOBBIES)}, 2, 0, 0},
    {"Is %s a good place to visit for a %s who loves %s?", {SLOT(CITIES), SLOT(TRAVELLERS), SLOT(HOBBIES)}, 3, 0, 0},
};

static uint64_t gcd(uint64_t a, uint64_t b)
{
    while (b) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

static void tmpl_prepare(struct tmpl *t, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        t[i].space = 1;
        for (size_t s = 0; s < t[i].nslots; s++)
            t[i].space *= t[i].slots[s].n;
        t[i].mul = 2654435761u % t[i].space; /* Knuth's multiplier, moved to the next coprime value */
        while (t[i].mul < 2 || gcd(t[i].mul, t[i].space) != 1)
            t[i].mul++;
    }
}

/* Writes combination k of template t (k < t->space) into out. */
static void tmpl_fill(const struct tmpl *t, uint64_t k, char *out, size_t size)
{
    uint64_t c = (k % t->space * t->mul + 12345) % t->space; /* a bijection on [0, space) */
    const char *w[4];
    for (size_t s = 0; s < t->nslots; s++) {
        w[s] = t->slots[s].words[c % t->slots[s].n];
        c /= t->slots[s].n;
    }
    switch (t->nslots) { /* the formats are this file's own constants */
    case 2: snprintf(out, size, t->fmt, w[0], w[1]); break;
    case 3: snprintf(out, size, t->fmt, w[0], w[1], w[2]); break;
    default: snprintf(out, size, t->fmt, w[0], w[1], w[2], w[3]); break;
    }
}

/* The stored prompt i (distinct for every i below 10 times the smallest template's space). */
static void stored_text(uint64_t i, char *out)
{
    tmpl_fill(&STORED[i % COUNT(STORED)], i / COUNT(STORED), out, TEXT_MAX);
}

static void unrelated_text(uint64_t i, char *out)
{
    tmpl_fill(&UNRELATED[i % COUNT(UNRELATED)], i / COUNT(UNRELATED), out, TEXT_MAX);
}

static int check_unique(const char *const *w, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++)
            if (strcmp(w[i], w[j]) == 0) {
                fprintf(stderr, "semcache_bench: word list %s holds \"%s\" twice\n", name, w[i]);
                return -1;
            }
    return 0;
}

/* ---- random numbers, clocks, statistics ---- */

static uint64_t rng_state;

static uint64_t rnd(void)
{
    uint64_t z = (rng_state += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* v must be sorted */
static double pct(const double *v, size_t n, double p)
{
    return n ? v[(size_t)((double)(n - 1) * p + 0.5)] : 0;
}

static size_t rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, resident = 0;
    if (f) {
        if (fscanf(f, "%lu %lu", &size, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}

static size_t heap_bytes(void)
{
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}

/* ---- paraphrases ---- */

/* One light edit of src into out: drop a word, add a filler word, lowercase the first letter, drop the final
 * punctuation, or add a comma after the first word. */
static void paraphrase(const char *src, char *out, uint64_t r)
{
    static const char *const fillers[] = {"please", "really", "actually", "exactly", "just", "quickly"};
    const char *words[64];
    size_t lens[64], n = 0;
    for (const char *p = src; *p && n < 64;) {
        while (*p == ' ')
            p++;
        if (!*p)
            break;
        const char *s = p;
        while (*p && *p != ' ')
            p++;
        words[n] = s;
        lens[n++] = (size_t)(p - s);
    }
    struct leo_buf b = LEO_BUF_INIT;
    unsigned op = (unsigned)(r % 5);
    size_t at = n > 1 ? (size_t)((r >> 8) % n) : 0;
    for (size_t i = 0; i < n; i++) {
        if (op == 0 && i == at && n > 1)
            continue; /* dropped */
        if (b.len)
            leo_buf_addch(&b, ' ');
        if (op == 1 && i == at) {
            leo_buf_adds(&b, fillers[(r >> 16) % COUNT(fillers)]);
            leo_buf_addch(&b, ' ');
        }
        size_t len = lens[i];
        if (op == 3 && i == n - 1 && len > 1 && (words[i][len - 1] == '?' || words[i][len - 1] == '.'))
            len--;
        size_t start = b.len;
        leo_buf_add(&b, words[i], len);
        if (op == 2 && i == 0 && b.p[start] >= 'A' && b.p[start] <= 'Z')
            b.p[start] = (char)(b.p[start] - 'A' + 'a');
        if (op == 4 && i == 0)
            leo_buf_addch(&b, ',');
    }
    snprintf(out, TEXT_MAX, "%s", b.p);
    leo_buf_release(&b);
}

/* ---- the cache ---- */

static json_t *request_for(const char *text)
{
    return json_pack("{s:s, s:[{s:s, s:s}], s:i}", "model", "gpt-4o-mini", "messages", "role", "user", "content", text,
                     "temperature", 0);
}

enum kind { K_REPEAT, K_PARA, K_UNRELATED, K_N };
static const char *const KIND_NAME[K_N] = {"repeat", "paraphrase", "unrelated"};

struct query {
    char text[TEXT_MAX];
    uint64_t source; /* the stored prompt it came from (repeat, paraphrase) */
    bool hit;
    int64_t entry; /* the stored prompt of the hit, -1 */
    double sim;
    double init_us, lookup_us; /* wall time */
    double cpu_us;             /* this thread's CPU time for both */
    double src_sim;            /* similarity to the prompt it came from (repeat, paraphrase) */
    bool src_ok;               /* that prompt passes the threshold and the guard: the cache may serve it */
};

/* The exhaustive scan's best candidates for one query, most similar first. */
struct top {
    float vec[LEO_EMBED_MAX_DIM];
    double sim[TOP];
    uint64_t idx[TOP];
    size_t n;
};

static void top_offer(struct top *t, double s, uint64_t idx)
{
    if (t->n == TOP && s <= t->sim[TOP - 1])
        return;
    size_t j = t->n < TOP ? t->n++ : TOP - 1;
    while (j > 0 && t->sim[j - 1] < s) {
        t->sim[j] = t->sim[j - 1];
        t->idx[j] = t->idx[j - 1];
        j--;
    }
    t->sim[j] = s;
    t->idx[j] = idx;
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || *end || errno)
        return -1;
    *out = v;
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: semcache_bench --size N [--queries Q] [--recall-queries R] [--threshold T] [--seed S] "
                    "[--raw FILE]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    uint64_t size = 0, n_queries = 2000, n_recall = 200, seed = 1;
    double threshold = 0;
    const char *raw = NULL;
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = v == NULL;
        if (bad)
            usage();
        if (strcmp(a, "--size") == 0)
            bad = parse_u64(v, &size) || size == 0;
        else if (strcmp(a, "--queries") == 0)
            bad = parse_u64(v, &n_queries) || n_queries == 0;
        else if (strcmp(a, "--recall-queries") == 0)
            bad = parse_u64(v, &n_recall);
        else if (strcmp(a, "--seed") == 0)
            bad = parse_u64(v, &seed);
        else if (strcmp(a, "--threshold") == 0) {
            char *end;
            threshold = strtod(v, &end);
            bad = *end || !(threshold > 0 && threshold <= 1);
        } else if (strcmp(a, "--raw") == 0)
            raw = v;
        else
            bad = 1;
        if (bad)
            usage();
    }
    if (n_recall > n_queries)
        n_recall = n_queries;
    if (check_unique(VERBS, COUNT(VERBS), "verbs") || check_unique(NOUNS, COUNT(NOUNS), "nouns") ||
        check_unique(ADJS, COUNT(ADJS), "adjectives") || check_unique(LANGS, COUNT(LANGS), "languages"))
        return 1;
    tmpl_prepare(STORED, COUNT(STORED));
    tmpl_prepare(UNRELATED, COUNT(UNRELATED));
    uint64_t smallest = UINT64_MAX;
    for (size_t t = 0; t < COUNT(STORED); t++)
        smallest = STORED[t].space < smallest ? STORED[t].space : smallest;
    if (size > smallest * COUNT(STORED)) {
        fprintf(stderr, "semcache_bench: at most %" PRIu64 " distinct prompts\n", smallest * COUNT(STORED));
        return 2;
    }
    rng_state = seed;

    struct leo_embedder *emb = leo_embed_local_new(LEO_EMBED_DEFAULT_SEED);
    unsigned dim = leo_embedder_dim(emb);
    struct leo_semcache_opts o = {.embedder = emb, .threshold = threshold, .max_entries = size};
    struct leo_semcache *sc = leo_semcache_new(&o);
    double thr = threshold > 0 ? threshold : LEO_SEMCACHE_DEFAULT_THRESHOLD;
    char text[TEXT_MAX];

    /* A warm-up entry-less lookup so that the guard's word tables and the first namespace exist before the
     * memory baseline. */
    {
        json_t *req = request_for("How do I warm up a cache?");
        struct leo_semcache_query q;
        struct leo_semcache_match m;
        if (leo_semcache_query_init(sc, "bench", LEO_DIALECT_OPENAI, "gpt-4o-mini", req, &q))
            leo_semcache_lookup(sc, &q, &m, NULL, NULL, NULL);
        leo_semcache_query_release(&q);
        json_decref(req);
        leo_semguard_check(LEO_STR_LIT("a b"), LEO_STR_LIT("a c"));
    }
    malloc_trim(0);
    size_t rss0 = rss_bytes(), heap0 = heap_bytes();

    /* ---- adds ---- */
    double add_timed = 0, wall0 = now_s(), cpu0 = cpu_s();
    size_t add_failed = 0;
    for (uint64_t i = 0; i < size; i++) {
        stored_text(i, text);
        json_t *req = request_for(text);
        struct leo_cache_key key;
        int kl = snprintf(key.s, sizeof(key.s), "bench:%" PRIu64, i);
        key.len = (size_t)kl;
        double t0 = now_s();
        struct leo_semcache_query q;
        if (!leo_semcache_query_init(sc, "bench", LEO_DIALECT_OPENAI, "gpt-4o-mini", req, &q) ||
            leo_semcache_add(sc, &q, &key, UINT64_C(86400000) * 30, NULL) != 0)
            add_failed++;
        leo_semcache_query_release(&q);
        add_timed += now_s() - t0;
        json_decref(req);
    }
    double add_wall = now_s() - wall0, add_cpu = cpu_s() - cpu0;
    size_t rss1 = rss_bytes(), heap1 = heap_bytes();

    /* ---- lookups, the three kinds interleaved ---- */
    struct query *qs[K_N];
    for (int k = 0; k < K_N; k++)
        qs[k] = leo_calloc(n_queries, sizeof(struct query));
    for (uint64_t j = 0; j < n_queries; j++) {
        for (int k = 0; k < K_N; k++) {
            struct query *x = &qs[k][j];
            x->source = rnd() % size;
            if (k == K_REPEAT) {
                stored_text(x->source, x->text);
            } else if (k == K_PARA) {
                stored_text(x->source, text);
                paraphrase(text, x->text, rnd());
            } else {
                unrelated_text(j * 7919 + seed, x->text);
            }
            json_t *req = request_for(x->text);
            struct leo_semcache_query q;
            struct leo_semcache_match m;
            double c0 = cpu_s(), t0 = now_s();
            bool ok = leo_semcache_query_init(sc, "bench", LEO_DIALECT_OPENAI, "gpt-4o-mini", req, &q);
            double t1 = now_s();
            int rc = ok ? leo_semcache_lookup(sc, &q, &m, NULL, NULL, NULL) : LEO_SEMCACHE_MISS;
            leo_semcache_query_release(&q);
            double t2 = now_s(), c2 = cpu_s();
            json_decref(req);
            x->cpu_us = (c2 - c0) * 1e6;
            x->init_us = (t1 - t0) * 1e6;
            x->lookup_us = (t2 - t1) * 1e6;
            x->hit = rc == LEO_SEMCACHE_HIT;
            x->entry = -1;
            if (x->hit) {
                uint64_t e;
                if (sscanf(m.answer.s, "bench:%" SCNu64, &e) == 1)
                    x->entry = (int64_t)e;
                x->sim = m.similarity;
            }
        }
    }

    /* ---- each repeat and paraphrase against the prompt it came from (untimed) ---- */
    {
        float *qv = leo_malloc(sizeof(float) * LEO_EMBED_MAX_DIM), *sv = leo_malloc(sizeof(float) * LEO_EMBED_MAX_DIM);
        for (int k = 0; k < K_UNRELATED; k++)
            for (uint64_t j = 0; j < n_queries; j++) {
                struct query *x = &qs[k][j];
                stored_text(x->source, text);
                leo_embed_now(emb, leo_str_c(x->text), qv);
                leo_embed_now(emb, leo_str_c(text), sv);
                x->src_sim = leo_embed_cosine(qv, sv, dim);
                x->src_ok = x->src_sim >= thr - 1e-6 &&
                            leo_semguard_check(leo_str_c(x->text), leo_str_c(text)) == LEO_SEMGUARD_OK;
            }
        leo_free(qv);
        leo_free(sv);
    }

    /* ---- the exhaustive answer for the first n_recall repeats and paraphrases ---- */
    size_t nr = (size_t)n_recall * 2;
    struct top *tops = leo_calloc(nr ? nr : 1, sizeof(struct top));
    double *emb_us = leo_malloc(sizeof(double) * (nr ? nr : 1));
    for (size_t r = 0; r < nr; r++) {
        const struct query *x = &qs[r < n_recall ? K_REPEAT : K_PARA][r % (n_recall ? n_recall : 1)];
        double c0 = cpu_s();
        leo_embed_now(emb, leo_str_c(x->text), tops[r].vec);
        emb_us[r] = (cpu_s() - c0) * 1e6;
    }
    qsort(emb_us, nr, sizeof(double), cmp_double);
    double scan0 = now_s();
    if (nr) {
        float *v = leo_malloc(sizeof(float) * LEO_EMBED_MAX_DIM);
        for (uint64_t i = 0; i < size; i++) {
            stored_text(i, text);
            leo_embed_now(emb, leo_str_c(text), v);
            for (size_t r = 0; r < nr; r++) {
                double s = leo_embed_cosine(tops[r].vec, v, dim);
                if (s >= thr - 1e-6)
                    top_offer(&tops[r], s, i);
            }
        }
        leo_free(v);
    }
    double scan_s = now_s() - scan0;
    /* agreement per kind: [0] exhaustive hits, [1] of them agreed, [2] exhaustive misses, [3] of them agreed,
     * [4] undecided, [5] lookups that hit the very prompt they came from */
    size_t agree[2][6] = {{0}};
    for (size_t r = 0; r < nr; r++) {
        int k = r < n_recall ? 0 : 1;
        const struct query *x = &qs[k][r % n_recall];
        struct top *t = &tops[r];
        int64_t best = -1;
        double best_sim = 0;
        bool undecided = t->n == TOP;
        for (size_t c = 0; c < t->n; c++) {
            if (t->sim[c] < thr)
                break;
            stored_text(t->idx[c], text);
            enum leo_semguard_rule g = leo_semguard_check(leo_str_c(x->text), leo_str_c(text));
            if (g == LEO_SEMGUARD_OK) {
                best = (int64_t)t->idx[c];
                best_sim = t->sim[c];
                undecided = false;
                break;
            }
            if (g == LEO_SEMGUARD_DROPPED_WORD) {
                undecided = false;
                break;
            }
        }
        if (undecided && t->sim[TOP - 1] >= thr) {
            agree[k][4]++;
            continue;
        }
        if (best < 0) {
            agree[k][2]++;
            agree[k][3] += !x->hit;
        } else {
            agree[k][0]++;
            agree[k][1] += x->hit && (x->entry == best || fabs(x->sim - best_sim) < 1e-5);
        }
    }
    for (int k = 0; k < 2; k++)
        for (uint64_t j = 0; j < n_queries; j++)
            agree[k][5] += qs[k][j].hit && qs[k][j].entry == (int64_t)qs[k][j].source;

    /* ---- report ---- */
    printf("size %" PRIu64 "\n", size);
    printf("entries %zu\n", leo_semcache_entries(sc));
    printf("add_failed %zu\n", add_failed);
    printf("threshold %.3f\n", thr);
    printf("dim %u\n", dim);
    printf("add_wall_s %.3f\n", add_wall);
    printf("add_cpu_s %.3f\n", add_cpu);
    printf("add_us_per_entry %.2f\n", add_timed * 1e6 / (double)size);
    printf("rss_before_mib %.1f\n", (double)rss0 / 1048576.0);
    printf("rss_after_mib %.1f\n", (double)rss1 / 1048576.0);
    printf("rss_bytes_per_entry %.0f\n", ((double)rss1 - (double)rss0) / (double)size);
    /* a sanitizer's allocator is not glibc's: mallinfo2 then sees nothing (printed as nan) */
    printf("heap_bytes_per_entry %.0f\n", heap1 > heap0 ? ((double)heap1 - (double)heap0) / (double)size : NAN);
    printf("embed_cpu_p50_us %.1f\n", pct(emb_us, nr, 0.50));
    leo_free(emb_us);
    double *lat = leo_malloc(sizeof(double) * n_queries), *lk = leo_malloc(sizeof(double) * n_queries),
           *cpu = leo_malloc(sizeof(double) * n_queries);
    for (int k = 0; k < K_N; k++) {
        size_t hits = 0, self = 0;
        for (uint64_t j = 0; j < n_queries; j++) {
            lat[j] = qs[k][j].init_us + qs[k][j].lookup_us;
            lk[j] = qs[k][j].lookup_us;
            cpu[j] = qs[k][j].cpu_us;
            hits += qs[k][j].hit;
            self += qs[k][j].hit && qs[k][j].entry == (int64_t)qs[k][j].source;
        }
        qsort(lat, n_queries, sizeof(double), cmp_double);
        qsort(lk, n_queries, sizeof(double), cmp_double);
        qsort(cpu, n_queries, sizeof(double), cmp_double);
        printf("%s_queries %" PRIu64 "\n", KIND_NAME[k], n_queries);
        printf("%s_hit_rate %.4f\n", KIND_NAME[k], (double)hits / (double)n_queries);
        if (k != K_UNRELATED) {
            /* answers from another prompt, and the index misses among them; misses that cost a hit */
            size_t other = 0, other_index = 0, own_missed = 0;
            for (uint64_t j = 0; j < n_queries; j++) {
                const struct query *x = &qs[k][j];
                if (x->hit && x->entry != (int64_t)x->source) {
                    other++;
                    other_index += x->src_ok && x->src_sim > x->sim + 1e-5;
                }
                own_missed += !x->hit && x->src_ok;
            }
            printf("%s_source_hit_rate %.4f\n", KIND_NAME[k], (double)self / (double)n_queries);
            printf("%s_other_hits %zu\n", KIND_NAME[k], other);
            printf("%s_other_hits_index_miss %zu\n", KIND_NAME[k], other_index);
            printf("%s_own_missed %zu\n", KIND_NAME[k], own_missed);
        }
        printf("%s_p50_us %.1f\n", KIND_NAME[k], pct(lat, n_queries, 0.50));
        printf("%s_p99_us %.1f\n", KIND_NAME[k], pct(lat, n_queries, 0.99));
        printf("%s_lookup_p50_us %.1f\n", KIND_NAME[k], pct(lk, n_queries, 0.50));
        printf("%s_cpu_p50_us %.1f\n", KIND_NAME[k], pct(cpu, n_queries, 0.50));
        printf("%s_cpu_p99_us %.1f\n", KIND_NAME[k], pct(cpu, n_queries, 0.99));
    }
    for (int k = 0; k < 2; k++) {
        const size_t *a = agree[k];
        printf("%s_recall_queries %" PRIu64 "\n", KIND_NAME[k], n_recall);
        printf("%s_exhaustive_hits %zu\n", KIND_NAME[k], a[0]);
        printf("%s_recall %.4f\n", KIND_NAME[k], a[0] ? (double)a[1] / (double)a[0] : NAN);
        printf("%s_exhaustive_misses %zu\n", KIND_NAME[k], a[2]);
        printf("%s_miss_agreement %.4f\n", KIND_NAME[k], a[2] ? (double)a[3] / (double)a[2] : NAN);
        printf("%s_undecided %zu\n", KIND_NAME[k], a[4]);
    }
    printf("exhaustive_scan_s %.3f\n", scan_s);
    leo_free(lat);
    leo_free(lk);
    leo_free(cpu);

    if (raw) {
        FILE *f = fopen(raw, "w");
        if (f == NULL) {
            fprintf(stderr, "semcache_bench: cannot write %s: %s\n", raw, strerror(errno));
        } else {
            fprintf(f, "kind,query,hit,entry,similarity,init_us,lookup_us,cpu_us,source,source_similarity,source_ok,"
                       "text,entry_text,source_text\n");
            for (int k = 0; k < K_N; k++)
                for (uint64_t j = 0; j < n_queries; j++) {
                    const struct query *x = &qs[k][j];
                    char src[TEXT_MAX] = "";
                    text[0] = '\0';
                    if (x->entry >= 0)
                        stored_text((uint64_t)x->entry, text);
                    if (k != K_UNRELATED)
                        stored_text(x->source, src);
                    fprintf(f,
                            "%s,%" PRIu64 ",%d,%" PRId64 ",%.6f,%.2f,%.2f,%.2f,%" PRId64 ",%.6f,%d,\"%s\",\"%s\","
                            "\"%s\"\n",
                            KIND_NAME[k], j, x->hit, x->entry, x->hit ? x->sim : 0.0, x->init_us, x->lookup_us,
                            x->cpu_us, k == K_UNRELATED ? (int64_t)-1 : (int64_t)x->source,
                            k == K_UNRELATED ? 0.0 : x->src_sim, k != K_UNRELATED && x->src_ok, x->text, text, src);
                }
            fclose(f);
        }
    }

    leo_free(tops);
    for (int k = 0; k < K_N; k++)
        leo_free(qs[k]);
    leo_semcache_free(sc);
    leo_embedder_free(emb);
    return 0;
}
