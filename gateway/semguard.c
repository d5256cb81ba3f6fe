/*
 * semguard.c — eligibility of a request for the semantic cache, and the false-hit guard (see semguard.h).
 *
 * The guard reads each prompt once into a signature: for each rule a list of 64-bit hashes of the items that
 * rule compares (a number's canonical form, a quantity "5|km", a month, a quoted string...), the count of
 * negations, the hashes of all words but fillers (for the entity and dropped-word rules) and of the content
 * words among them, and a language guess. Two signatures are then compared rule by rule, by the comparison the
 * rule table names. Words are classified by tables (word → class, canonical value; function and filler words)
 * looked up through a hash index, not by if-chains.
 *
 * Known limits: the guard is lexical. It does not see that "the larger of 3 and 5" and "the smaller of 3 and
 * 5" differ (that is the embedder's job, and a lexical embedder is weak at it); number words are English
 * only; entities are recognised only by their capital letter, so "paris" typed in lower case is a plain word;
 * the language guess knows English, Spanish, French, German, Italian and Portuguese by their function words,
 * and other scripts by their Unicode block. The dropped-word rule compares two prompts only: it cannot know
 * whether the word one of them lacks told stored prompts apart, so it also refuses a prompt whose dropped word
 * did not ("a good idea" → "a idea"); and it leaves a prompt that drops a word and adds another to the
 * embedding.
 */
#include "semguard.h"

#include <sodium.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/alloc.h"
#include "../common/metrics.h"

/* ---- names ---- */

static const char *const reason_names[LEO_SEMGUARD_NREASONS] = {
    [LEO_SEMGUARD_ELIGIBLE] = "eligible",       [LEO_SEMGUARD_NO_MESSAGES] = "no_messages",
    [LEO_SEMGUARD_BAD_MESSAGE] = "bad_message", [LEO_SEMGUARD_TOOLS] = "tools",
    [LEO_SEMGUARD_TOOL_RESULT] = "tool_result", [LEO_SEMGUARD_TOOL_CALLS] = "tool_calls",
    [LEO_SEMGUARD_IMAGE] = "image",             [LEO_SEMGUARD_NON_TEXT] = "non_text",
    [LEO_SEMGUARD_LAST_NOT_USER] = "last_not_user", [LEO_SEMGUARD_EMPTY] = "empty",
    [LEO_SEMGUARD_TOO_MANY_TURNS] = "too_many_turns", [LEO_SEMGUARD_TOO_LONG] = "too_long",
};

static const char *const rule_names[LEO_SEMGUARD_NRULES] = {
    [LEO_SEMGUARD_OK] = "ok",           [LEO_SEMGUARD_CODE] = "code",         [LEO_SEMGUARD_QUOTE] = "quote",
    [LEO_SEMGUARD_NUMBER] = "number",   [LEO_SEMGUARD_UNIT] = "unit",         [LEO_SEMGUARD_DATE] = "date",
    [LEO_SEMGUARD_NEGATION] = "negation", [LEO_SEMGUARD_ENTITY] = "entity", [LEO_SEMGUARD_LANGUAGE] = "language",
    [LEO_SEMGUARD_DROPPED_WORD] = "dropped_word", [LEO_SEMGUARD_TOO_COMPLEX] = "too_complex",
};

const char *leo_semguard_reason_name(enum leo_semguard_reason r)
{
    return (unsigned)r < LEO_SEMGUARD_NREASONS ? reason_names[r] : "unknown";
}

const char *leo_semguard_rule_name(enum leo_semguard_rule r)
{
    return (unsigned)r < LEO_SEMGUARD_NRULES ? rule_names[r] : "unknown";
}

void leo_semguard_metrics_describe(void)
{
    leo_metrics_describe("leo_semcache_eligibility_total", LEO_METRIC_COUNTER,
                         "Requests examined for the semantic cache, by result (eligible or the reason why not).");
    leo_metrics_describe("leo_semcache_guard_total", LEO_METRIC_COUNTER,
                         "Candidate semantic hits checked by the false-hit guard, by rule (ok or the rule that refused).");
}

/* ---- eligibility ---- */

enum role { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT, ROLE_TOOL, ROLE_UNKNOWN };

static const struct {
    const char *name;
    enum role role;
} role_table[] = {
    {"system", ROLE_SYSTEM}, {"developer", ROLE_SYSTEM}, {"user", ROLE_USER},
    {"assistant", ROLE_ASSISTANT}, {"tool", ROLE_TOOL}, {"function", ROLE_TOOL},
};

/* Content part types: text is kept, images and the rest make the request ineligible. */
static const struct {
    const char *type;
    enum leo_semguard_reason reason; /* ELIGIBLE for text */
} part_table[] = {
    {"text", LEO_SEMGUARD_ELIGIBLE},      {"input_text", LEO_SEMGUARD_ELIGIBLE},
    {"image_url", LEO_SEMGUARD_IMAGE},    {"input_image", LEO_SEMGUARD_IMAGE},
    {"image", LEO_SEMGUARD_IMAGE},
};

static enum role role_of(const json_t *msg)
{
    const char *r = json_string_value(json_object_get(msg, "role"));
    if (!r)
        return ROLE_UNKNOWN;
    for (size_t i = 0; i < sizeof(role_table) / sizeof(role_table[0]); i++) {
        if (strcmp(role_table[i].name, r) == 0)
            return role_table[i].role;
    }
    return ROLE_UNKNOWN;
}

/* Appends the text of a message's content to out (parts concatenated); the reason when it is not text. */
static enum leo_semguard_reason content_text(const json_t *msg, struct leo_buf *out)
{
    const json_t *c = json_object_get(msg, "content");
    if (c == NULL || json_is_null(c))
        return LEO_SEMGUARD_ELIGIBLE;
    if (json_is_string(c)) {
        leo_buf_add(out, json_string_value(c), json_string_length(c));
        return LEO_SEMGUARD_ELIGIBLE;
    }
    if (!json_is_array(c))
        return LEO_SEMGUARD_NON_TEXT;
    size_t i;
    const json_t *part;
    json_array_foreach (c, i, part) {
        const char *type = json_string_value(json_object_get(part, "type"));
        enum leo_semguard_reason r = LEO_SEMGUARD_NON_TEXT;
        for (size_t k = 0; type && k < sizeof(part_table) / sizeof(part_table[0]); k++) {
            if (strcmp(part_table[k].type, type) == 0)
                r = part_table[k].reason;
        }
        if (r != LEO_SEMGUARD_ELIGIBLE)
            return r;
        const json_t *t = json_object_get(part, "text");
        if (!json_is_string(t))
            return LEO_SEMGUARD_NON_TEXT;
        leo_buf_add(out, json_string_value(t), json_string_length(t));
    }
    return LEO_SEMGUARD_ELIGIBLE;
}

static size_t utf8_chars(const char *p, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += ((unsigned char)p[i] & 0xc0) != 0x80;
    return c;
}

/* Feeds one message into a running hash: role, then length-prefixed text, so no two conversations that
 * differ can feed the same bytes. */
static void hash_message(crypto_generichash_state *st, enum role role, const struct leo_buf *text)
{
    unsigned char head[9];
    uint64_t len = text->len;
    head[0] = (unsigned char)role;
    for (int i = 0; i < 8; i++)
        head[1 + i] = (unsigned char)(len >> (8 * i));
    crypto_generichash_update(st, head, sizeof(head));
    crypto_generichash_update(st, (const unsigned char *)text->p, text->len);
}

static enum leo_semguard_reason eligible(const json_t *req, const struct leo_semguard_limits *lim,
                                         struct leo_semguard_input *out)
{
    unsigned max_turns = lim && lim->max_turns ? lim->max_turns : LEO_SEMGUARD_DEFAULT_MAX_TURNS;
    size_t max_chars = lim && lim->max_chars ? lim->max_chars : LEO_SEMGUARD_DEFAULT_MAX_CHARS;
    const json_t *msgs = json_object_get(req, "messages");
    size_t n = json_array_size(msgs);
    if (n == 0)
        return LEO_SEMGUARD_NO_MESSAGES;
    if (!(lim && lim->allow_tools)) {
        const json_t *tools = json_object_get(req, "tools"), *fns = json_object_get(req, "functions");
        if (json_array_size(tools) > 0 || json_array_size(fns) > 0)
            return LEO_SEMGUARD_TOOLS;
    }

    /* the last message must be the user's; find the turns and check every message's form */
    unsigned turns = 0;
    for (size_t i = 0; i < n; i++) {
        const json_t *m = json_array_get(msgs, i);
        enum role r = role_of(m);
        if (!json_is_object(m) || r == ROLE_UNKNOWN)
            return LEO_SEMGUARD_BAD_MESSAGE;
        if (r == ROLE_TOOL)
            return LEO_SEMGUARD_TOOL_RESULT;
        if (r == ROLE_ASSISTANT && (json_array_size(json_object_get(m, "tool_calls")) > 0 ||
                                    json_object_get(m, "function_call") != NULL))
            return LEO_SEMGUARD_TOOL_CALLS;
        turns += r == ROLE_USER;
    }
    if (role_of(json_array_get(msgs, n - 1)) != ROLE_USER)
        return LEO_SEMGUARD_LAST_NOT_USER;
    if (turns > max_turns)
        return LEO_SEMGUARD_TOO_MANY_TURNS;

    crypto_generichash_state sys, ctx;
    crypto_generichash_init(&sys, NULL, 0, LEO_SEMGUARD_HASH_BYTES);
    crypto_generichash_init(&ctx, NULL, 0, LEO_SEMGUARD_HASH_BYTES);
    struct leo_buf t = LEO_BUF_INIT;
    enum leo_semguard_reason reason = LEO_SEMGUARD_ELIGIBLE;
    for (size_t i = 0; i + 1 < n; i++) {
        const json_t *m = json_array_get(msgs, i);
        enum role r = role_of(m);
        leo_buf_reset(&t);
        reason = content_text(m, &t);
        if (reason != LEO_SEMGUARD_ELIGIBLE)
            break;
        hash_message(r == ROLE_SYSTEM ? &sys : &ctx, r, &t);
    }
    leo_buf_release(&t);
    if (reason != LEO_SEMGUARD_ELIGIBLE)
        return reason;
    leo_buf_reset(&out->text);
    reason = content_text(json_array_get(msgs, n - 1), &out->text);
    if (reason != LEO_SEMGUARD_ELIGIBLE)
        return reason;
    struct leo_str s = leo_buf_str(&out->text);
    while (s.len && (s.p[0] == ' ' || s.p[0] == '\n' || s.p[0] == '\t' || s.p[0] == '\r')) {
        s.p++;
        s.len--;
    }
    if (s.len == 0)
        return LEO_SEMGUARD_EMPTY;
    if (utf8_chars(out->text.p, out->text.len) > max_chars)
        return LEO_SEMGUARD_TOO_LONG;
    crypto_generichash_final(&sys, out->system_hash, LEO_SEMGUARD_HASH_BYTES);
    crypto_generichash_final(&ctx, out->context_hash, LEO_SEMGUARD_HASH_BYTES);
    return LEO_SEMGUARD_ELIGIBLE;
}

enum leo_semguard_reason leo_semguard_eligible(const json_t *req, const struct leo_semguard_limits *lim,
                                               struct leo_semguard_input *out)
{
    enum leo_semguard_reason r = eligible(req, lim, out);
    char labels[64];
    snprintf(labels, sizeof(labels), "result=\"%s\"", leo_semguard_reason_name(r));
    leo_metrics_add("leo_semcache_eligibility_total", labels, 1);
    return r;
}

/* ---- the word table ---- */

enum wclass {
    W_NONE,
    W_NUMBER,     /* a number word: value is its canonical number */
    W_NEGATION,   /* not, never, without... */
    W_DATE,       /* a month, weekday, relative day: value is its canonical name */
    W_DATE_AMBIG, /* "may", "march": a month only when capitalised mid-sentence or next to a number */
    W_TIME_AFTER, /* am/pm: a date item only right after a number */
    W_UNIT,       /* a unit anywhere: value is its canonical unit */
    W_UNIT_AFTER, /* a unit only right after a number ("m", "in", "g", "second") */
    W_ORDINAL,    /* st, nd, rd, th right after digits: ignored */
};

struct word {
    const char *w;
    enum wclass cls;
    const char *value;
};

/* clang-format off */
static const struct word word_table[] = {
    /* number words (English) */
    {"zero", W_NUMBER, "0"}, {"two", W_NUMBER, "2"}, {"three", W_NUMBER, "3"}, {"four", W_NUMBER, "4"},
    {"five", W_NUMBER, "5"}, {"six", W_NUMBER, "6"}, {"seven", W_NUMBER, "7"}, {"eight", W_NUMBER, "8"},
    {"nine", W_NUMBER, "9"}, {"ten", W_NUMBER, "10"}, {"eleven", W_NUMBER, "11"}, {"twelve", W_NUMBER, "12"},
    {"thirteen", W_NUMBER, "13"}, {"fourteen", W_NUMBER, "14"}, {"fifteen", W_NUMBER, "15"},
    {"sixteen", W_NUMBER, "16"}, {"seventeen", W_NUMBER, "17"}, {"eighteen", W_NUMBER, "18"},
    {"nineteen", W_NUMBER, "19"}, {"twenty", W_NUMBER, "20"}, {"thirty", W_NUMBER, "30"},
    {"forty", W_NUMBER, "40"}, {"fifty", W_NUMBER, "50"}, {"sixty", W_NUMBER, "60"}, {"seventy", W_NUMBER, "70"},
    {"eighty", W_NUMBER, "80"}, {"ninety", W_NUMBER, "90"}, {"hundred", W_NUMBER, "100"},
    {"thousand", W_NUMBER, "1000"}, {"million", W_NUMBER, "1000000"}, {"billion", W_NUMBER, "1000000000"},
    {"dozen", W_NUMBER, "12"}, {"half", W_NUMBER, "0.5"}, {"twice", W_NUMBER, "x2"}, {"double", W_NUMBER, "x2"},
    {"triple", W_NUMBER, "x3"}, {"quarter", W_NUMBER, "0.25"},
    /* negations */
    {"not", W_NEGATION, NULL}, {"no", W_NEGATION, NULL}, {"never", W_NEGATION, NULL}, {"none", W_NEGATION, NULL},
    {"nothing", W_NEGATION, NULL}, {"nobody", W_NEGATION, NULL}, {"nowhere", W_NEGATION, NULL},
    {"neither", W_NEGATION, NULL}, {"nor", W_NEGATION, NULL}, {"without", W_NEGATION, NULL},
    {"cannot", W_NEGATION, NULL}, {"except", W_NEGATION, NULL}, {"excluding", W_NEGATION, NULL},
    {"dont", W_NEGATION, NULL}, {"doesnt", W_NEGATION, NULL}, {"didnt", W_NEGATION, NULL},
    {"isnt", W_NEGATION, NULL}, {"arent", W_NEGATION, NULL}, {"wasnt", W_NEGATION, NULL},
    {"werent", W_NEGATION, NULL}, {"cant", W_NEGATION, NULL}, {"wont", W_NEGATION, NULL},
    {"shouldnt", W_NEGATION, NULL}, {"wouldnt", W_NEGATION, NULL}, {"couldnt", W_NEGATION, NULL},
    {"hasnt", W_NEGATION, NULL}, {"havent", W_NEGATION, NULL}, {"hadnt", W_NEGATION, NULL},
    {"mustnt", W_NEGATION, NULL}, {"nunca", W_NEGATION, NULL}, {"jamais", W_NEGATION, NULL},
    {"pas", W_NEGATION, NULL}, {"nicht", W_NEGATION, NULL}, {"kein", W_NEGATION, NULL},
    {"keine", W_NEGATION, NULL}, {"nie", W_NEGATION, NULL},
    /* dates and times */
    {"january", W_DATE, "m01"}, {"jan", W_DATE, "m01"}, {"february", W_DATE, "m02"}, {"feb", W_DATE, "m02"},
    {"march", W_DATE_AMBIG, "m03"}, {"mar", W_DATE, "m03"}, {"april", W_DATE, "m04"}, {"apr", W_DATE, "m04"},
    {"may", W_DATE_AMBIG, "m05"}, {"june", W_DATE, "m06"}, {"jun", W_DATE, "m06"}, {"july", W_DATE, "m07"},
    {"jul", W_DATE, "m07"}, {"august", W_DATE, "m08"}, {"aug", W_DATE, "m08"}, {"september", W_DATE, "m09"},
    {"sep", W_DATE, "m09"}, {"sept", W_DATE, "m09"}, {"october", W_DATE, "m10"}, {"oct", W_DATE, "m10"},
    {"november", W_DATE, "m11"}, {"nov", W_DATE, "m11"}, {"december", W_DATE, "m12"}, {"dec", W_DATE, "m12"},
    {"monday", W_DATE, "d1"}, {"tuesday", W_DATE, "d2"}, {"wednesday", W_DATE, "d3"}, {"thursday", W_DATE, "d4"},
    {"friday", W_DATE, "d5"}, {"saturday", W_DATE, "d6"}, {"sunday", W_DATE, "d7"},
    {"today", W_DATE, "today"}, {"tonight", W_DATE, "today"}, {"tomorrow", W_DATE, "tomorrow"},
    {"yesterday", W_DATE, "yesterday"}, {"weekend", W_DATE, "weekend"}, {"weekday", W_DATE, "weekday"},
    {"morning", W_DATE, "morning"}, {"afternoon", W_DATE, "afternoon"}, {"evening", W_DATE, "evening"},
    {"noon", W_DATE, "noon"}, {"midnight", W_DATE, "midnight"}, {"summer", W_DATE, "summer"},
    {"winter", W_DATE, "winter"}, {"autumn", W_DATE, "autumn"},
    {"am", W_TIME_AFTER, "am"}, {"pm", W_TIME_AFTER, "pm"},
    /* units: length, mass, volume, temperature, speed, data, time, money */
    {"km", W_UNIT, "km"}, {"kms", W_UNIT, "km"}, {"kilometer", W_UNIT, "km"}, {"kilometers", W_UNIT, "km"},
    {"kilometre", W_UNIT, "km"}, {"kilometres", W_UNIT, "km"}, {"mile", W_UNIT, "mi"}, {"miles", W_UNIT, "mi"},
    {"mi", W_UNIT_AFTER, "mi"}, {"meter", W_UNIT, "m"}, {"meters", W_UNIT, "m"}, {"metre", W_UNIT, "m"},
    {"metres", W_UNIT, "m"}, {"m", W_UNIT_AFTER, "m"}, {"cm", W_UNIT, "cm"}, {"centimeter", W_UNIT, "cm"},
    {"centimeters", W_UNIT, "cm"}, {"mm", W_UNIT, "mm"}, {"millimeter", W_UNIT, "mm"},
    {"millimeters", W_UNIT, "mm"}, {"inch", W_UNIT, "in"}, {"inches", W_UNIT, "in"}, {"in", W_UNIT_AFTER, "in"},
    {"foot", W_UNIT, "ft"}, {"feet", W_UNIT, "ft"}, {"ft", W_UNIT, "ft"}, {"yard", W_UNIT, "yd"},
    {"yards", W_UNIT, "yd"}, {"kg", W_UNIT, "kg"}, {"kgs", W_UNIT, "kg"}, {"kilogram", W_UNIT, "kg"},
    {"kilograms", W_UNIT, "kg"}, {"kilo", W_UNIT, "kg"}, {"kilos", W_UNIT, "kg"}, {"g", W_UNIT_AFTER, "g"},
    {"gram", W_UNIT, "g"}, {"grams", W_UNIT, "g"}, {"mg", W_UNIT, "mg"}, {"lb", W_UNIT, "lb"},
    {"lbs", W_UNIT, "lb"}, {"pound", W_UNIT, "lb"}, {"pounds", W_UNIT, "lb"}, {"oz", W_UNIT, "oz"},
    {"ounce", W_UNIT, "oz"}, {"ounces", W_UNIT, "oz"}, {"ton", W_UNIT, "t"}, {"tons", W_UNIT, "t"},
    {"tonne", W_UNIT, "t"}, {"tonnes", W_UNIT, "t"}, {"liter", W_UNIT, "l"}, {"liters", W_UNIT, "l"},
    {"litre", W_UNIT, "l"}, {"litres", W_UNIT, "l"}, {"l", W_UNIT_AFTER, "l"}, {"ml", W_UNIT_AFTER, "ml"},
    {"milliliter", W_UNIT, "ml"}, {"milliliters", W_UNIT, "ml"}, {"gallon", W_UNIT, "gal"},
    {"gallons", W_UNIT, "gal"}, {"gal", W_UNIT, "gal"}, {"cup", W_UNIT, "cup"}, {"cups", W_UNIT, "cup"},
    {"tbsp", W_UNIT, "tbsp"}, {"tablespoon", W_UNIT, "tbsp"}, {"tablespoons", W_UNIT, "tbsp"},
    {"tsp", W_UNIT, "tsp"}, {"teaspoon", W_UNIT, "tsp"}, {"teaspoons", W_UNIT, "tsp"},
    {"celsius", W_UNIT, "degc"}, {"centigrade", W_UNIT, "degc"}, {"fahrenheit", W_UNIT, "degf"},
    {"kelvin", W_UNIT, "kelvin"}, {"c", W_UNIT_AFTER, "degc"}, {"f", W_UNIT_AFTER, "degf"},
    {"mph", W_UNIT, "mph"}, {"kph", W_UNIT, "kmh"}, {"kmh", W_UNIT, "kmh"},
    {"byte", W_UNIT, "b"}, {"bytes", W_UNIT, "b"}, {"bit", W_UNIT, "bit"}, {"bits", W_UNIT, "bit"},
    {"kb", W_UNIT, "kb"}, {"mb", W_UNIT, "mb"}, {"gb", W_UNIT, "gb"}, {"tb", W_UNIT, "tb"},
    {"kib", W_UNIT, "kib"}, {"mib", W_UNIT, "mib"}, {"gib", W_UNIT, "gib"},
    {"second", W_UNIT_AFTER, "s"}, {"seconds", W_UNIT, "s"}, {"sec", W_UNIT_AFTER, "s"}, {"secs", W_UNIT, "s"},
    {"s", W_UNIT_AFTER, "s"}, {"ms", W_UNIT, "ms"}, {"millisecond", W_UNIT, "ms"}, {"milliseconds", W_UNIT, "ms"},
    {"minute", W_UNIT, "min"}, {"minutes", W_UNIT, "min"}, {"min", W_UNIT_AFTER, "min"}, {"mins", W_UNIT, "min"},
    {"hour", W_UNIT, "h"}, {"hours", W_UNIT, "h"}, {"hr", W_UNIT, "h"}, {"hrs", W_UNIT, "h"},
    {"h", W_UNIT_AFTER, "h"}, {"day", W_UNIT, "day"}, {"days", W_UNIT, "day"}, {"week", W_UNIT, "week"},
    {"weeks", W_UNIT, "week"}, {"month", W_UNIT, "month"}, {"months", W_UNIT, "month"},
    {"year", W_UNIT, "year"}, {"years", W_UNIT, "year"}, {"decade", W_UNIT, "decade"},
    {"usd", W_UNIT, "usd"}, {"dollar", W_UNIT, "usd"}, {"dollars", W_UNIT, "usd"}, {"eur", W_UNIT, "eur"},
    {"euro", W_UNIT, "eur"}, {"euros", W_UNIT, "eur"}, {"gbp", W_UNIT, "gbp"}, {"yen", W_UNIT, "jpy"},
    {"jpy", W_UNIT, "jpy"}, {"percent", W_UNIT, "%"}, {"k", W_UNIT_AFTER, "thousand"},
    {"st", W_ORDINAL, NULL}, {"nd", W_ORDINAL, NULL}, {"rd", W_ORDINAL, NULL}, {"th", W_ORDINAL, NULL},
};

/* Function words by language: a prompt's language is the one with the most of its words present. */
enum lang { LANG_UNKNOWN, LANG_EN, LANG_ES, LANG_FR, LANG_DE, LANG_IT, LANG_PT,
            LANG_CYRILLIC, LANG_GREEK, LANG_ARABIC, LANG_HEBREW, LANG_CJK, LANG_HANGUL, LANG_DEVANAGARI, NLANGS };
#define L(x) (1u << LANG_##x)
static const struct {
    const char *w;
    unsigned langs;
} lang_words[] = {
    {"the", L(EN)}, {"is", L(EN)}, {"are", L(EN)}, {"how", L(EN)}, {"what", L(EN)}, {"do", L(EN)},
    {"does", L(EN)}, {"i", L(EN)}, {"you", L(EN)}, {"my", L(EN)}, {"of", L(EN)}, {"and", L(EN)}, {"to", L(EN)},
    {"with", L(EN)}, {"can", L(EN)}, {"why", L(EN)}, {"which", L(EN)}, {"this", L(EN)}, {"for", L(EN)},
    {"it", L(EN)}, {"should", L(EN)}, {"where", L(EN)}, {"when", L(EN)}, {"from", L(EN)}, {"an", L(EN)},
    {"el", L(ES)}, {"los", L(ES)}, {"las", L(ES)}, {"es", L(ES) | L(FR)}, {"cómo", L(ES)}, {"como", L(ES) | L(PT) | L(IT)},
    {"qué", L(ES)}, {"que", L(ES) | L(FR) | L(PT)}, {"de", L(ES) | L(FR) | L(PT)}, {"en", L(ES) | L(FR)},
    {"para", L(ES) | L(PT)}, {"por", L(ES) | L(PT)}, {"una", L(ES) | L(IT)}, {"mi", L(ES)}, {"puedo", L(ES)},
    {"hacer", L(ES)}, {"está", L(ES)}, {"son", L(ES) | L(FR)}, {"del", L(ES) | L(IT)}, {"y", L(ES)},
    {"cuál", L(ES)}, {"cuánto", L(ES)}, {"dónde", L(ES)}, {"con", L(ES) | L(IT)}, {"lista", L(ES) | L(IT) | L(PT)},
    {"le", L(FR)}, {"les", L(FR)}, {"est", L(FR)}, {"comment", L(FR)}, {"quel", L(FR)}, {"quelle", L(FR)},
    {"des", L(FR)}, {"du", L(FR)}, {"pour", L(FR)}, {"une", L(FR)}, {"mon", L(FR)}, {"ma", L(FR)},
    {"je", L(FR)}, {"faire", L(FR)}, {"et", L(FR)}, {"avec", L(FR)}, {"où", L(FR)}, {"combien", L(FR)},
    {"pourquoi", L(FR)}, {"qu", L(FR)}, {"c", L(FR)}, {"l", L(FR) | L(IT)}, {"d", L(FR)}, {"dans", L(FR)},
    {"der", L(DE)}, {"die", L(DE)}, {"das", L(DE)}, {"ist", L(DE)}, {"wie", L(DE)},
    {"ich", L(DE)}, {"und", L(DE)}, {"mit", L(DE)}, {"für", L(DE)}, {"ein", L(DE)}, {"eine", L(DE)},
    {"kann", L(DE)}, {"zu", L(DE)}, {"von", L(DE)}, {"den", L(DE)}, {"dem", L(DE)}, {"mein", L(DE)},
    {"warum", L(DE)}, {"wo", L(DE)}, {"einen", L(DE)},
    {"il", L(IT)}, {"lo", L(IT) | L(ES)}, {"gli", L(IT)}, {"è", L(IT)}, {"che", L(IT)}, {"di", L(IT)},
    {"mio", L(IT)}, {"sono", L(IT)}, {"posso", L(IT) | L(PT)}, {"fare", L(IT)}, {"perché", L(IT)},
    {"dove", L(IT)}, {"quanto", L(IT) | L(PT)}, {"un", L(FR) | L(IT) | L(ES)}, {"nel", L(IT)}, {"della", L(IT)},
    {"o", L(PT)}, {"os", L(PT)}, {"é", L(PT)}, {"um", L(PT)}, {"uma", L(PT)}, {"meu", L(PT)}, {"eu", L(PT)},
    {"fazer", L(PT)}, {"com", L(PT)}, {"onde", L(PT)}, {"não", L(PT)}, {"em", L(PT)}, {"qual", L(PT)},
    {"da", L(PT) | L(IT)}, {"no", L(PT) | L(ES)}, {"la", L(ES) | L(FR) | L(IT)}, {"e", L(IT) | L(PT)},
};
#undef L

/* Words that carry no content of their own, for the dropped-word rule: a prompt that lacks one of these
 * (and adds nothing) asks the same question, and a prompt that adds one of them rewords (it has a word of its
 * own). English articles and determiners, pronouns, question words, auxiliaries, prepositions and
 * conjunctions, and what an apostrophe leaves ("what's" is read as "what" and "s"); the articles, prepositions,
 * pronouns and auxiliaries of the other languages the guard recognises, leaving out those that are English
 * content words ("die", "son", "os"). Number words, negations, dates and units are not listed: their own rules
 * compare them, and they never count as content here. Particles stay content: "log out" is not "log". */
static const char *const function_words[] = {
    /* English: articles and determiners, pronouns, question words */
    "a", "an", "the", "this", "that", "these", "those", "some", "any", "each", "every", "all", "another", "other",
    "such", "i", "me", "my", "mine", "myself", "you", "your", "yours", "yourself", "he", "him", "his", "she",
    "her", "hers", "it", "its", "itself", "we", "us", "our", "ours", "they", "them", "their", "theirs", "one",
    "someone", "something", "what", "which", "who", "whom", "whose", "when", "where", "why", "how", "there",
    "here",
    /* auxiliaries and modals */
    "am", "is", "are", "was", "were", "be", "been", "being", "do", "does", "did", "doing", "have", "has", "had",
    "having", "can", "could", "will", "would", "shall", "should", "may", "might", "must", "let", "lets",
    /* prepositions and conjunctions */
    "of", "in", "on", "at", "to", "for", "from", "by", "with", "about", "as", "into", "onto", "via", "per",
    "and", "or", "but", "if", "so", "then", "than", "whether",
    /* request framings: "Explain what a race condition is" asks "What is a race condition?" */
    "explain", "describe", "tell",
    /* what apostrophes leave */
    "s", "t", "m", "re", "ve", "ll", "d",
    /* Spanish, French, German, Italian, Portuguese */
    "el", "los", "las", "la", "lo", "le", "les", "un", "una", "uno", "une", "unos", "unas", "del", "de", "des",
    "du", "al", "au", "aux", "der", "das", "dem", "ein", "eine", "einen", "einem", "il", "gli", "di",
    "della", "dello", "nel", "nella", "o", "um", "uma", "da", "dos", "y", "e", "et", "und",
    "en", "em", "para", "por", "pour", "avec", "con", "mit", "dans", "que", "qu", "c", "l", "ce", "es", "est",
    "ist", "\xc3\xa8", "\xc3\xa9", "yo", "je", "ich", "io", "eu", "mi", "mon", "ma", "mein", "meine", "mio",
    "meu", "c\xc3\xb3mo", "como", "comment", "wie", "puedo", "posso", "kann", "peux", "hacer", "faire", "fare",
    "fazer",
};

/* Filler words: politeness and discourse markers. They say nothing about the question, so the dropped-word rule
 * ignores them on both sides: "Please, how do I a diff in Spark?" is as ambiguous as "How do I a diff in
 * Spark?". They are not names either (a capitalised "Please" mid-sentence is no entity). */
static const char *const filler_words[] = {
    "please", "pls", "plz", "kindly", "just", "hey", "hi", "hello", "thanks", "thank", "thx", "really",
    "actually", "exactly", "basically", "simply", "quickly", "also", "ok", "okay", "bitte",
};
/* clang-format on */

/* The hash index over the tables: open addressing on the word's hash, built on first use. */
#define INDEX_SIZE 1024
static struct {
    bool built;
    int16_t word[INDEX_SIZE]; /* index into word_table + 1, 0 empty */
    int16_t lang[INDEX_SIZE]; /* index into lang_words + 1, 0 empty */
    int16_t func[INDEX_SIZE]; /* index into function_words + 1, or -(index into filler_words + 1); 0 empty */
} idx;

static uint64_t hash_bytes(const void *p, size_t n)
{
    /* FNV-1a then a final mix: short words, no adversary (a collision only costs a table probe) */
    const unsigned char *s = p;
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= UINT64_C(0x100000001b3);
    }
    h ^= h >> 33;
    h *= UINT64_C(0xff51afd7ed558ccd);
    h ^= h >> 33;
    return h;
}

static void index_build(void)
{
    for (size_t i = 0; i < sizeof(word_table) / sizeof(word_table[0]); i++) {
        uint64_t h = hash_bytes(word_table[i].w, strlen(word_table[i].w));
        size_t s = h & (INDEX_SIZE - 1);
        while (idx.word[s])
            s = (s + 1) & (INDEX_SIZE - 1);
        idx.word[s] = (int16_t)(i + 1);
    }
    for (size_t i = 0; i < sizeof(lang_words) / sizeof(lang_words[0]); i++) {
        uint64_t h = hash_bytes(lang_words[i].w, strlen(lang_words[i].w));
        size_t s = h & (INDEX_SIZE - 1);
        while (idx.lang[s])
            s = (s + 1) & (INDEX_SIZE - 1);
        idx.lang[s] = (int16_t)(i + 1);
    }
    for (size_t i = 0; i < sizeof(function_words) / sizeof(function_words[0]); i++) {
        uint64_t h = hash_bytes(function_words[i], strlen(function_words[i]));
        size_t s = h & (INDEX_SIZE - 1);
        while (idx.func[s])
            s = (s + 1) & (INDEX_SIZE - 1);
        idx.func[s] = (int16_t)(i + 1);
    }
    for (size_t i = 0; i < sizeof(filler_words) / sizeof(filler_words[0]); i++) {
        uint64_t h = hash_bytes(filler_words[i], strlen(filler_words[i]));
        size_t s = h & (INDEX_SIZE - 1);
        while (idx.func[s])
            s = (s + 1) & (INDEX_SIZE - 1);
        idx.func[s] = (int16_t)(-(int)(i + 1));
    }
    idx.built = true;
}

static const struct word *word_find(const char *w, size_t n, uint64_t h)
{
    for (size_t s = h & (INDEX_SIZE - 1); idx.word[s]; s = (s + 1) & (INDEX_SIZE - 1)) {
        const struct word *x = &word_table[idx.word[s] - 1];
        if (strlen(x->w) == n && memcmp(x->w, w, n) == 0)
            return x;
    }
    return NULL;
}

static unsigned lang_find(const char *w, size_t n, uint64_t h)
{
    for (size_t s = h & (INDEX_SIZE - 1); idx.lang[s]; s = (s + 1) & (INDEX_SIZE - 1)) {
        const char *x = lang_words[idx.lang[s] - 1].w;
        if (strlen(x) == n && memcmp(x, w, n) == 0)
            return lang_words[idx.lang[s] - 1].langs;
    }
    return 0;
}

/* What a word is to the dropped-word rule. */
enum wweight { WW_CONTENT, WW_FUNCTION, WW_FILLER };

static enum wweight weight_find(const char *w, size_t n, uint64_t h)
{
    for (size_t s = h & (INDEX_SIZE - 1); idx.func[s]; s = (s + 1) & (INDEX_SIZE - 1)) {
        int v = idx.func[s];
        const char *x = v > 0 ? function_words[v - 1] : filler_words[-v - 1];
        if (strlen(x) == n && memcmp(x, w, n) == 0)
            return v > 0 ? WW_FUNCTION : WW_FILLER;
    }
    return WW_CONTENT;
}

/* ---- signatures ---- */

#define MAX_ITEMS 64
#define MAX_WORDS 1024

/* the lists a signature keeps, one per compared rule */
enum list { LIST_CODE, LIST_QUOTE, LIST_NUMBER, LIST_UNIT, LIST_DATE, LIST_ENTITY, NLISTS };

/* The counters come first: sig_build zeroes them and leaves the arrays, which are read only up to them. */
struct sig {
    unsigned n[NLISTS];
    unsigned nwords;
    unsigned ncontent;
    unsigned negations;
    unsigned lang_score[NLANGS];
    bool overflow;
    uint64_t items[NLISTS][MAX_ITEMS];
    uint64_t words[MAX_WORDS];   /* every word but the fillers, lower case, sorted after the scan */
    uint64_t content[MAX_WORDS]; /* the content words among them: no function word, nothing another rule
                                  * compares (a number word, a negation, a date, a unit); sorted */
};

static void sig_add(struct sig *s, enum list l, uint64_t h)
{
    if (s->n[l] == MAX_ITEMS) {
        s->overflow = true;
        return;
    }
    s->items[l][s->n[l]++] = h;
}

static uint64_t hash_tagged(const char *tag, const char *p, size_t n)
{
    return hash_bytes(p, n) ^ hash_bytes(tag, strlen(tag)) * UINT64_C(0x9e3779b97f4a7c15);
}

/* Hashes s with runs of whitespace collapsed and the ends trimmed: "a  b\n" and "a b" are the same code. */
static uint64_t hash_collapsed(const char *tag, const char *p, size_t n)
{
    struct leo_buf b = LEO_BUF_INIT;
    bool space = false;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            space = b.len > 0;
            continue;
        }
        if (space)
            leo_buf_addch(&b, ' ');
        space = false;
        leo_buf_addch(&b, c);
    }
    uint64_t h = hash_tagged(tag, b.p, b.len);
    leo_buf_release(&b);
    return h;
}

static bool is_digit(int c)
{
    return c >= '0' && c <= '9';
}

static bool is_upper(const unsigned char *p, size_t n)
{
    if (p[0] >= 'A' && p[0] <= 'Z')
        return true;
    return n >= 2 && p[0] == 0xc3 && p[1] >= 0x80 && p[1] <= 0x9e && p[1] != 0x97; /* À..Þ */
}

/* A letter: ASCII, or any byte of a multibyte UTF-8 sequence that is not punctuation we know of. */
static size_t letter_len(const unsigned char *p, size_t n)
{
    unsigned char c = p[0];
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return 1;
    if (c < 0xc2)
        return 0;
    size_t l = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
    if (l > n)
        return 0;
    if (c == 0xc2 || (c == 0xc3 && (p[1] == 0x97 || p[1] == 0xb7)))
        return 0; /* Latin-1 punctuation and symbols, × and ÷ */
    if (c == 0xe2)
        return 0; /* U+2000..U+2FFF: punctuation, symbols, arrows */
    if (c == 0xe3 && p[1] == 0x80)
        return 0; /* CJK punctuation */
    return l;
}

static enum lang script_of(const unsigned char *p)
{
    unsigned char c = p[0];
    if (c >= 0xd0 && c <= 0xd3)
        return LANG_CYRILLIC;
    if (c == 0xce || c == 0xcf)
        return LANG_GREEK;
    if (c == 0xd7)
        return LANG_HEBREW;
    if (c >= 0xd8 && c <= 0xdb)
        return LANG_ARABIC;
    if (c == 0xe0 && (p[1] == 0xa4 || p[1] == 0xa5))
        return LANG_DEVANAGARI;
    if (c >= 0xea && c <= 0xed)
        return LANG_HANGUL;
    if (c >= 0xe3 && c <= 0xe9)
        return LANG_CJK;
    return LANG_UNKNOWN;
}

/* Canonical form of a number written with digits: thousands separators dropped ("1,000"), a decimal comma
 * read as a point ("3,5"), leading zeros and trailing decimal zeros dropped ("05" → "5", "2.50" → "2.5"). */
static size_t number_canon(const char *p, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    /* a comma followed by exactly three digits is a thousands separator; otherwise a decimal mark */
    for (size_t i = 0; i < n && o + 1 < cap; i++) {
        char c = p[i];
        if (c == ',') {
            size_t d = 0;
            while (i + 1 + d < n && is_digit((unsigned char)p[i + 1 + d]))
                d++;
            if (d == 3)
                continue;
            c = '.';
        }
        out[o++] = c;
    }
    out[o] = '\0';
    char *dot = memchr(out, '.', o);
    if (dot) {
        while (o > (size_t)(dot - out) + 1 && out[o - 1] == '0')
            o--;
        if (out[o - 1] == '.')
            o--;
        out[o] = '\0';
    }
    size_t neg = out[0] == '-';
    size_t z = neg;
    while (z + 1 < o && out[z] == '0' && out[z + 1] != '.')
        z++;
    if (z > neg) {
        memmove(out + neg, out + z, o - z + 1);
        o -= z - neg;
    }
    return o;
}

struct scan {
    struct sig *s;
    bool sentence_start;
    char last_number[48]; /* the number just read, for a unit right after it; "" when the last token was not */
    size_t last_number_len;
    const char *pending_unit; /* a currency sign waiting for its number ("$20") */
};

static void add_unit(struct scan *sc, const char *unit)
{
    if (sc->last_number_len) {
        /* a quantity: the number and its unit together, so 5 km and 5 miles differ */
        char q[80];
        int n = snprintf(q, sizeof(q), "%s|%s", sc->last_number, unit);
        sig_add(sc->s, LIST_UNIT, hash_tagged("q", q, (size_t)n));
    } else {
        sig_add(sc->s, LIST_UNIT, hash_tagged("u", unit, strlen(unit)));
    }
}

static void add_number(struct scan *sc, const char *canon, size_t n)
{
    sig_add(sc->s, LIST_NUMBER, hash_tagged("n", canon, n));
    size_t k = n < sizeof(sc->last_number) - 1 ? n : sizeof(sc->last_number) - 1;
    memcpy(sc->last_number, canon, k);
    sc->last_number[k] = '\0';
    sc->last_number_len = k;
}

static void on_word(struct scan *sc, const char *raw, size_t n, bool upper)
{
    struct sig *s = sc->s;
    char w[64];
    size_t k = 0;
    /* lower case, apostrophes dropped (don't → dont, l'eau → leau is not wanted: split there instead) */
    for (size_t i = 0; i < n && k < sizeof(w) - 1; i++) {
        unsigned char c = (unsigned char)raw[i];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c + 32);
        else if (c == 0xc3 && i + 1 < n && (unsigned char)raw[i + 1] >= 0x80 && (unsigned char)raw[i + 1] <= 0x9e &&
                 (unsigned char)raw[i + 1] != 0x97) {
            w[k++] = (char)c;
            c = (unsigned char)(raw[++i] + 0x20);
            if (k >= sizeof(w) - 1)
                break;
        }
        w[k++] = (char)c;
    }
    w[k] = '\0';
    uint64_t h = hash_bytes(w, k);
    enum wweight weight = weight_find(w, k, h);
    if (weight != WW_FILLER) { /* a filler is not a word of the prompt's own: see filler_words */
        if (s->nwords < MAX_WORDS)
            s->words[s->nwords++] = h;
        else
            s->overflow = true;
    }

    unsigned langs = lang_find(w, k, h);
    for (unsigned l = 0; langs; l++, langs >>= 1)
        s->lang_score[l] += langs & 1;

    bool after_number = sc->last_number_len > 0;
    const struct word *x = word_find(w, k, h);
    enum wclass cls = x ? x->cls : W_NONE;
    /* "n't" endings: isn't, don’t (the apostrophe was kept for this) */
    if (cls == W_NONE && k > 3 && strcmp(w + k - 3, "n't") == 0)
        cls = W_NEGATION;
    bool compared = true; /* another rule compares this word: it is not content for the dropped-word rule */
    switch (cls) {
    case W_NUMBER:
        add_number(sc, x->value, strlen(x->value));
        return; /* keep last_number: "five km" */
    case W_NEGATION:
        s->negations++;
        break;
    case W_DATE:
        sig_add(s, LIST_DATE, hash_tagged("d", x->value, strlen(x->value)));
        break;
    case W_DATE_AMBIG:
        compared = (upper && !sc->sentence_start) || after_number;
        if (compared)
            sig_add(s, LIST_DATE, hash_tagged("d", x->value, strlen(x->value)));
        break;
    case W_TIME_AFTER:
        compared = after_number;
        if (compared)
            sig_add(s, LIST_DATE, hash_tagged("d", x->value, strlen(x->value)));
        break;
    case W_UNIT:
        add_unit(sc, x->value);
        break;
    case W_UNIT_AFTER:
        compared = after_number;
        if (compared)
            add_unit(sc, x->value);
        break;
    case W_ORDINAL:
        break;
    case W_NONE:
        compared = false;
        break;
    }
    if (!compared && weight == WW_CONTENT && s->ncontent < MAX_WORDS)
        s->content[s->ncontent++] = h;
    /* a capitalised word not at a sentence start names something; "I" and its contractions do not */
    if (cls == W_NONE && weight != WW_FILLER && upper && !sc->sentence_start &&
        !(raw[0] == 'I' && (n == 1 || raw[1] == '\'')))
        sig_add(s, LIST_ENTITY, h);
    sc->last_number_len = 0;
}

static int u64_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Finds the end of a fenced block or inline code span starting at i (the first backtick); 0 if unclosed. */
static size_t code_end(const char *p, size_t n, size_t i, size_t *cstart, size_t *clen)
{
    size_t ticks = 0;
    while (i + ticks < n && p[i + ticks] == '`')
        ticks++;
    for (size_t j = i + ticks; j + ticks <= n; j++) {
        size_t t = 0;
        while (t < ticks && p[j + t] == '`')
            t++;
        if (t == ticks) {
            size_t s = i + ticks;
            if (ticks >= 3) {
                /* a fence's info string ("```python") is not part of the code */
                while (s < j && p[s] != '\n')
                    s++;
            }
            *cstart = s;
            *clen = j - s;
            return j + ticks;
        }
    }
    return 0;
}

/* Quote marks: openers and their closers (straight quotes are handled apart: they open and close alike). */
static const struct {
    const char *open, *close;
} quote_marks[] = {
    {"\xe2\x80\x9c", "\xe2\x80\x9d"}, /* “ ” */
    {"\xe2\x80\x98", "\xe2\x80\x99"}, /* ‘ ’ */
    {"\xc2\xab", "\xc2\xbb"},         /* « » */
    {"\"", "\""},
};

static bool starts(const char *p, size_t n, size_t i, const char *m)
{
    size_t l = strlen(m);
    return i + l <= n && memcmp(p + i, m, l) == 0;
}

static void sig_build(struct sig *s, struct leo_str text)
{
    if (!idx.built)
        index_build();
    memset(s, 0, offsetof(struct sig, items));
    /* the working copy: code spans and quoted strings are recorded, then blanked so their words are not read
     * as prose (identical code compares equal as a whole already) */
    char *p = leo_malloc(text.len + 1);
    memcpy(p, text.p, text.len);
    p[text.len] = '\0';
    size_t n = text.len;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '`') {
            size_t cs, cl, end = code_end(p, n, i, &cs, &cl);
            if (end) {
                sig_add(s, LIST_CODE, hash_collapsed("code", p + cs, cl));
                memset(p + i, ' ', end - i);
                i = end - 1;
            }
            continue;
        }
        for (size_t q = 0; q < sizeof(quote_marks) / sizeof(quote_marks[0]); q++) {
            if (!starts(p, n, i, quote_marks[q].open))
                continue;
            size_t ol = strlen(quote_marks[q].open), cl = strlen(quote_marks[q].close);
            const char *close = NULL;
            for (size_t j = i + ol; j + cl <= n; j++) {
                if (memcmp(p + j, quote_marks[q].close, cl) == 0) {
                    close = p + j;
                    break;
                }
            }
            if (!close)
                break;
            size_t cstart = i + ol, clen = (size_t)(close - p) - cstart;
            sig_add(s, LIST_QUOTE, hash_collapsed("quote", p + cstart, clen));
            /* the words inside still count (a quoted entity or number is still one); only the marks go */
            memset(p + i, ' ', ol);
            memset(p + cstart + clen, ' ', cl);
            i = cstart + clen + cl - 1;
            break;
        }
        /* a straight single quote opens a quotation only after a space or an opening bracket */
        if (p[i] == '\'' && (i == 0 || p[i - 1] == ' ' || p[i - 1] == '(' || p[i - 1] == '\n')) {
            const char *close = NULL;
            for (size_t j = i + 1; j < n; j++) {
                if (p[j] == '\'' && (j + 1 == n || !((p[j + 1] | 32) >= 'a' && (p[j + 1] | 32) <= 'z'))) {
                    close = p + j;
                    break;
                }
            }
            if (close && close > p + i + 1) {
                size_t cstart = i + 1, clen = (size_t)(close - p) - cstart;
                sig_add(s, LIST_QUOTE, hash_collapsed("quote", p + cstart, clen));
                p[i] = ' ';
                p[cstart + clen] = ' ';
                i = cstart + clen;
            }
        }
    }

    struct scan sc = {.s = s, .sentence_start = true};
    const unsigned char *u = (const unsigned char *)p;
    for (size_t i = 0; i < n;) {
        unsigned char c = u[i];
        /* numbers: digits with inner . or , ; a sign when nothing alphanumeric precedes; a leading ".5" */
        bool sign = (c == '-' || c == '+') && i + 1 < n && is_digit(u[i + 1]) &&
                    (i == 0 || u[i - 1] == ' ' || u[i - 1] == '(' || u[i - 1] == '\n' || u[i - 1] == '=');
        if (is_digit(c) || sign || (c == '.' && i + 1 < n && is_digit(u[i + 1]) && (i == 0 || !is_digit(u[i - 1])))) {
            char raw[48];
            size_t k = 0;
            if (c == '.')
                raw[k++] = '0';
            if (c == '-')
                raw[k++] = '-';
            size_t j = i + (sign ? 1 : 0);
            while (j < n && k < sizeof(raw) - 1 &&
                   (is_digit(u[j]) || ((u[j] == '.' || u[j] == ',') && j + 1 < n && is_digit(u[j + 1]) &&
                                       (k > 0 || u[j] == '.'))))
                raw[k++] = (char)u[j++];
            while (j < n && (is_digit(u[j]) || u[j] == '.' || u[j] == ','))
                j++; /* an overlong number: the rest is part of it */
            char canon[48];
            size_t cl = number_canon(raw, k, canon, sizeof(canon));
            if (j < n && u[j] == '%') {
                canon[cl++] = '%';
                canon[cl] = '\0';
                j++;
            }
            add_number(&sc, canon, cl);
            if (sc.pending_unit) {
                add_unit(&sc, sc.pending_unit);
                sc.pending_unit = NULL;
            }
            sc.sentence_start = false;
            i = j;
            continue;
        }
        /* currency signs and ° before or after a number */
        static const struct {
            const char *mark;
            const char *unit;
            bool prefix; /* binds to the number that follows: $20 */
        } signs[] = {{"$", "usd", true}, {"\xe2\x82\xac", "eur", true}, {"\xc2\xa3", "gbp", true},
                     {"\xc2\xa5", "jpy", true}, {"\xc2\xb0" "C", "degc", false}, {"\xc2\xb0" "c", "degc", false},
                     {"\xc2\xb0" "F", "degf", false}, {"\xc2\xb0" "f", "degf", false}};
        bool matched = false;
        for (size_t k = 0; k < sizeof(signs) / sizeof(signs[0]); k++) {
            if (starts(p, n, i, signs[k].mark)) {
                size_t after = i + strlen(signs[k].mark);
                if (signs[k].prefix && !sc.last_number_len && after < n && is_digit(u[after]))
                    sc.pending_unit = signs[k].unit;
                else
                    add_unit(&sc, signs[k].unit);
                i = after;
                matched = true;
                break;
            }
        }
        if (matched)
            continue;
        size_t l = letter_len(u + i, n - i);
        if (l) {
            size_t j = i;
            bool upper = is_upper(u + i, n - i);
            enum lang script = LANG_UNKNOWN;
            while (j < n) {
                size_t ll = letter_len(u + j, n - j);
                if (ll) {
                    enum lang sc2 = script_of(u + j);
                    if (sc2 != LANG_UNKNOWN)
                        script = sc2;
                    j += ll;
                } else if ((u[j] == '\'' || starts(p, n, j, "\xe2\x80\x99")) && j + 1 < n) {
                    /* an apostrophe inside a word: "don't" stays whole, "l'eau" splits (French elision) */
                    size_t al = u[j] == '\'' ? 1 : 3;
                    if (j + al < n && letter_len(u + j + al, n - j - al) && (u[j + al] | 32) == 't' &&
                        j > i && (u[j - 1] | 32) == 'n') {
                        j += al;
                        continue;
                    }
                    break;
                } else {
                    break;
                }
            }
            if (script != LANG_UNKNOWN)
                s->lang_score[script] += 2;
            /* normalise ’ to ' for the n't test */
            char wbuf[64];
            size_t wl = 0;
            for (size_t t = i; t < j && wl < sizeof(wbuf) - 1;) {
                if (starts(p, n, t, "\xe2\x80\x99")) {
                    wbuf[wl++] = '\'';
                    t += 3;
                } else {
                    wbuf[wl++] = p[t++];
                }
            }
            on_word(&sc, wbuf, wl, upper);
            sc.sentence_start = false;
            i = j;
            continue;
        }
        if (c == '.' || c == '!' || c == '?' || c == ':' || c == '\n' || starts(p, n, i, "\xc2\xbf") ||
            starts(p, n, i, "\xc2\xa1"))
            sc.sentence_start = true;
        if (c != ' ' && c != '\t' && c != '\r')
            sc.last_number_len = 0; /* "5, km" is not a quantity; "5 km" is */
        i += c < 0x80 ? 1 : (c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2);
    }
    leo_free(p);
    qsort(s->words, s->nwords, sizeof(uint64_t), u64_cmp);
    qsort(s->content, s->ncontent, sizeof(uint64_t), u64_cmp);
}

static enum lang sig_lang(const struct sig *s)
{
    unsigned best = 0, second = 0;
    enum lang l = LANG_UNKNOWN;
    for (unsigned i = 1; i < NLANGS; i++) {
        if (s->lang_score[i] > best) {
            second = best;
            best = s->lang_score[i];
            l = (enum lang)i;
        } else if (s->lang_score[i] > second) {
            second = s->lang_score[i];
        }
    }
    /* one function word is weak evidence, and a tie says nothing */
    if (best < 2 || best == second)
        return LANG_UNKNOWN;
    return l;
}

/* ---- comparisons ---- */

/* Same items in the same order (numbers, units: "10 minus 3" is not "3 minus 10"). */
static bool same_sequence(const struct sig *a, const struct sig *b, enum list l)
{
    return a->n[l] == b->n[l] && memcmp(a->items[l], b->items[l], sizeof(uint64_t) * a->n[l]) == 0;
}

/* Same items, each as often, in any order. */
static bool same_multiset(const struct sig *a, const struct sig *b, enum list l)
{
    if (a->n[l] != b->n[l])
        return false;
    uint64_t x[MAX_ITEMS], y[MAX_ITEMS];
    memcpy(x, a->items[l], sizeof(uint64_t) * a->n[l]);
    memcpy(y, b->items[l], sizeof(uint64_t) * b->n[l]);
    qsort(x, a->n[l], sizeof(uint64_t), u64_cmp);
    qsort(y, b->n[l], sizeof(uint64_t), u64_cmp);
    return memcmp(x, y, sizeof(uint64_t) * a->n[l]) == 0;
}

/* Same set (repetitions do not matter: "Monday ... on Monday"). */
static bool subset(const struct sig *a, const struct sig *b, enum list l)
{
    for (unsigned i = 0; i < a->n[l]; i++) {
        bool found = false;
        for (unsigned j = 0; j < b->n[l] && !found; j++)
            found = a->items[l][i] == b->items[l][j];
        if (!found)
            return false;
    }
    return true;
}

static bool has_word(const struct sig *s, uint64_t h)
{
    return bsearch(&h, s->words, s->nwords, sizeof(uint64_t), u64_cmp) != NULL;
}

static bool ok_code(const struct sig *a, const struct sig *b)
{
    return same_multiset(a, b, LIST_CODE);
}

static bool ok_quote(const struct sig *a, const struct sig *b)
{
    return same_multiset(a, b, LIST_QUOTE);
}

static bool ok_number(const struct sig *a, const struct sig *b)
{
    return same_multiset(a, b, LIST_NUMBER) && same_sequence(a, b, LIST_NUMBER);
}

static bool ok_unit(const struct sig *a, const struct sig *b)
{
    return same_multiset(a, b, LIST_UNIT);
}

static bool ok_date(const struct sig *a, const struct sig *b)
{
    return subset(a, b, LIST_DATE) && subset(b, a, LIST_DATE);
}

static bool ok_negation(const struct sig *a, const struct sig *b)
{
    return a->negations == b->negations;
}

/* Each side's entities must appear among the other's words, in any case and position: "Python" at a
 * sentence start in one prompt and mid-sentence in the other is the same name. */
static bool ok_entity(const struct sig *a, const struct sig *b)
{
    for (unsigned i = 0; i < a->n[LIST_ENTITY]; i++) {
        if (!has_word(b, a->items[LIST_ENTITY][i]))
            return false;
    }
    for (unsigned i = 0; i < b->n[LIST_ENTITY]; i++) {
        if (!has_word(a, b->items[LIST_ENTITY][i]))
            return false;
    }
    return true;
}

/* Different detected languages refuse; so does an unrecognised prompt against one in a language other than
 * English (the cached answer's language would be a guess). */
static bool ok_language(const struct sig *a, const struct sig *b)
{
    enum lang la = sig_lang(a), lb = sig_lang(b);
    if (la == lb)
        return true;
    if (la == LANG_UNKNOWN)
        return lb == LANG_EN;
    if (lb == LANG_UNKNOWN)
        return la == LANG_EN;
    return false;
}

/* Every word of a is among b's words (a adds no word of its own). */
static bool words_within(const struct sig *a, const struct sig *b)
{
    for (unsigned i = 0; i < a->nwords; i++) {
        if (!has_word(b, a->words[i]))
            return false;
    }
    return true;
}

/* b has a content word that a lacks. */
static bool content_beyond(const struct sig *a, const struct sig *b)
{
    for (unsigned i = 0; i < b->ncontent; i++) {
        if (!has_word(a, b->content[i]))
            return true;
    }
    return false;
}

/* One prompt is the other with a content word dropped: "How do I a diff in Spark?" against "How do I merge a
 * diff in Spark?". The shorter prompt is ambiguous (it is as close to "How do I retry a diff in Spark?"), so
 * no answer stored for a longer one is right for it; and an answer to the shorter one does not answer the
 * longer, more specific question ("reverse a list" is not "reverse a linked list"). So the rule refuses both
 * ways, and stays symmetric like every other. A prompt that rewords (adds a word of its own) is left to the
 * embedding; one that lacks only function or filler words ("please", "the") asks the same question. */
static bool ok_dropped_word(const struct sig *a, const struct sig *b)
{
    if (words_within(a, b) && content_beyond(a, b))
        return false;
    return !(words_within(b, a) && content_beyond(b, a));
}

static const struct {
    enum leo_semguard_rule rule;
    bool (*ok)(const struct sig *a, const struct sig *b);
} rules[] = {
    {LEO_SEMGUARD_CODE, ok_code},         {LEO_SEMGUARD_QUOTE, ok_quote},   {LEO_SEMGUARD_NUMBER, ok_number},
    {LEO_SEMGUARD_UNIT, ok_unit},         {LEO_SEMGUARD_DATE, ok_date},     {LEO_SEMGUARD_NEGATION, ok_negation},
    {LEO_SEMGUARD_ENTITY, ok_entity},     {LEO_SEMGUARD_LANGUAGE, ok_language},
    {LEO_SEMGUARD_DROPPED_WORD, ok_dropped_word},
};

enum leo_semguard_rule leo_semguard_check(struct leo_str a, struct leo_str b)
{
    struct sig *sa = leo_malloc(sizeof(struct sig)), *sb = leo_malloc(sizeof(struct sig));
    sig_build(sa, a);
    sig_build(sb, b);
    enum leo_semguard_rule r = LEO_SEMGUARD_OK;
    if (sa->overflow || sb->overflow) {
        r = LEO_SEMGUARD_TOO_COMPLEX;
    } else {
        for (size_t i = 0; i < sizeof(rules) / sizeof(rules[0]); i++) {
            if (!rules[i].ok(sa, sb)) {
                r = rules[i].rule;
                break;
            }
        }
    }
    leo_free(sa);
    leo_free(sb);
    char labels[48];
    snprintf(labels, sizeof(labels), "rule=\"%s\"", leo_semguard_rule_name(r));
    leo_metrics_add("leo_semcache_guard_total", labels, 1);
    return r;
}
