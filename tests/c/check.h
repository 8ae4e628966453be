/* Minimal check macro shared by the C tests: counts passes/failures and
 * prints each failure with its location.  Each test file defines
 * `static int n_pass, n_fail;` via SW_CHECK_COUNTERS. */
#ifndef SW_TEST_CHECK_H
#define SW_TEST_CHECK_H
#include <stdio.h>

#define SW_CHECK_COUNTERS static int n_pass, n_fail

#define CHECK(cond, ...)                                    \
    do {                                                    \
        if (cond) {                                         \
            n_pass++;                                       \
        } else {                                            \
            n_fail++;                                       \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);     \
            printf(__VA_ARGS__);                            \
            printf("\n");                                   \
        }                                                   \
    } while (0)

#endif
