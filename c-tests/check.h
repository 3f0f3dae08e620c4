/* The C tests' one assertion, CHECK(cond, fmt, ...): counts passes and
 * failures and prints each failure with its file and line. Header-only; each
 * test program is one translation unit. */
#ifndef VFIO_IO_CHECK_H
#define VFIO_IO_CHECK_H

#include <stdio.h>

static int failures;
static int passes;

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        if (cond) {                                                           \
            passes++;                                                         \
        } else {                                                              \
            failures++;                                                       \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);              \
            fprintf(stderr, __VA_ARGS__);                                     \
            fputc('\n', stderr);                                              \
        }                                                                     \
    } while (0)

#endif
