/* Reading the golden vector files (tests/golden/core_v1.txt, learn_v1.txt) in the C tests, and
 * the FNV-1a 64 hash they pin outputs with (tests/golden/golden_io.py is the
 * Python side).  One reader for every C test; include after check.h.
 *
 * Format: '#' starts a comment to the end of the line; everything else is
 * whitespace-separated tokens, one `case NAME ... end` block per case. */
#ifndef SW_TEST_GOLDEN_H
#define SW_TEST_GOLDEN_H
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- FNV-1a 64 (little-endian for wider integers) -------------------------- */
static inline uint64_t fnv(uint64_t h, const uint8_t *p, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        h ^= p[i];
        h *= UINT64_C(0x100000001B3);
    }
    return h;
}

static inline uint64_t fnv_i16le(uint64_t h, const int16_t *v, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        uint8_t b[2];
        uint16_t u = (uint16_t)v[i];
        b[0] = (uint8_t)u;
        b[1] = (uint8_t)(u >> 8);
        h = fnv(h, b, 2);
    }
    return h;
}

static inline uint64_t fnv_i32le(uint64_t h, const int32_t *v, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        uint8_t b[4];
        uint32_t u = (uint32_t)v[i];
        b[0] = (uint8_t)u;
        b[1] = (uint8_t)(u >> 8);
        b[2] = (uint8_t)(u >> 16);
        b[3] = (uint8_t)(u >> 24);
        h = fnv(h, b, 4);
    }
    return h;
}

/* ---- the tokenizer ---------------------------------------------------------- */
static FILE *golden_file;

/* The next token into buf (cut at cap - 1 characters); 0 at the end of the file. */
static inline int golden_tok(char *buf, size_t cap)
{
    int ch;
    size_t n = 0;
    for (;;) {
        ch = fgetc(golden_file);
        if (ch == EOF)
            return 0;
        if (ch == '#') {
            while (ch != '\n' && ch != EOF)
                ch = fgetc(golden_file);
            continue;
        }
        if (ch != ' ' && ch != '\n' && ch != '\t' && ch != '\r')
            break;
    }
    while (ch != EOF && ch != ' ' && ch != '\n' && ch != '\t' && ch != '\r') {
        if (n + 1 < cap)
            buf[n++] = (char)ch;
        ch = fgetc(golden_file);
    }
    buf[n] = 0;
    return 1;
}

/* A token that must be there (the file is malformed otherwise: exit 2). */
static inline void golden_need(char *buf, size_t cap)
{
    if (!golden_tok(buf, cap)) {
        printf("golden file ended early\n");
        exit(2);
    }
}

static inline long long golden_ll(void)
{
    char b[64];
    golden_need(b, sizeof b);
    return strtoll(b, NULL, 10);
}

static inline unsigned long long golden_ull(int base)
{
    char b[64];
    golden_need(b, sizeof b);
    return strtoull(b, NULL, base);
}

static inline void golden_expect(const char *w)
{
    char b[64];
    if (!golden_tok(b, sizeof b) || strcmp(b, w) != 0) {
        printf("golden file: expected '%s', got '%s'\n", w, b);
        exit(2);
    }
}

static inline void *golden_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        printf("out of memory\n");
        exit(2);
    }
    return p;
}

/* Run run_case(name) for every `case NAME` block of the file at path; the
 * number of cases, or -1 if the file cannot be opened (the message is printed).
 * A token other than `case` between blocks ends the program with status 2. */
static inline int golden_each_case(const char *path, void (*run_case)(const char *name))
{
    char word[64];
    int cases = 0;
    golden_file = fopen(path, "r");
    if (!golden_file) {
        printf("cannot open golden file %s\n", path);
        return -1;
    }
    while (golden_tok(word, sizeof word)) {
        char name[64];
        if (strcmp(word, "case") != 0) {
            printf("golden file: expected 'case', got '%s'\n", word);
            exit(2);
        }
        golden_need(name, sizeof name);
        run_case(name);
        cases++;
    }
    fclose(golden_file);
    golden_file = NULL;
    return cases;
}

#endif
