/* Reading the golden files of tests/golden (whitespace-separated tokens,
 * '#' comment lines) in the C tests.  Every reader exits with status 2 and a
 * message when the file ends early or a keyword is missing: a malformed
 * golden file is a test failure, never a silent pass. */
#ifndef SW_TEST_GOLDEN_FILE_H
#define SW_TEST_GOLDEN_FILE_H
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* the next token of f into buf (truncated to cap - 1 chars); 0 at the end of the file */
static int golden_tok(FILE *f, char *buf, size_t cap)
{
    int ch;
    size_t n = 0;
    for (;;) {
        ch = fgetc(f);
        if (ch == EOF)
            return 0;
        if (ch == '#') {
            while (ch != '\n' && ch != EOF)
                ch = fgetc(f);
            continue;
        }
        if (ch == ' ' || ch == '\n' || ch == '\t' || ch == '\r')
            continue;
        break;
    }
    while (ch != EOF && ch != ' ' && ch != '\n' && ch != '\t' && ch != '\r') {
        if (n + 1 < cap)
            buf[n++] = (char)ch;
        ch = fgetc(f);
    }
    buf[n] = 0;
    return 1;
}

static void golden_need(FILE *f, char *buf, size_t cap)
{
    if (!golden_tok(f, buf, cap)) {
        printf("golden file ended early\n");
        exit(2);
    }
}

static long long golden_ll(FILE *f)
{
    char b[64];
    golden_need(f, b, sizeof b);
    return strtoll(b, NULL, 10);
}

static unsigned long long golden_hex(FILE *f)
{
    char b[64];
    golden_need(f, b, sizeof b);
    return strtoull(b, NULL, 16);
}

static void golden_word(FILE *f, const char *w)
{
    char b[64];
    if (!golden_tok(f, b, sizeof b) || strcmp(b, w) != 0) {
        printf("golden file: expected '%s', got '%s'\n", w, b);
        exit(2);
    }
}

/* an IEEE float32 written as its bit pattern in hex */
static float golden_f32(FILE *f)
{
    uint32_t u = (uint32_t)golden_hex(f);
    float v;
    memcpy(&v, &u, sizeof v);
    return v;
}

static void *golden_alloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        printf("out of memory\n");
        exit(2);
    }
    return p;
}
#endif
