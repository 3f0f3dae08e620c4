/* CHECK(cond, fmt, ...): counts and reports a failed expectation without
 * stopping the test, so one run shows every failure; main returns
 * `failures ? 1 : 0`. Header-only; each test program is one translation unit. */
#ifndef VFIO_IO_CHECK_H
#define VFIO_IO_CHECK_H

#include <stdio.h>

static int failures;

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        if (!(cond)) {                                                        \
            failures++;                                                       \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);              \
            fprintf(stderr, __VA_ARGS__);                                     \
            fputc('\n', stderr);                                              \
        }                                                                     \
    } while (0)

#endif
