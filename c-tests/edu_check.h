/* What the C tests migrating edu share: edu's BAR0 registers through the
 * ops table, the state a migration carries, and a main that runs a test on
 * two servers.
 * Header-only; each test program is one translation unit. */
#ifndef VFIO_IO_EDU_CHECK_H
#define VFIO_IO_EDU_CHECK_H

#include <stdint.h>
#include <stdio.h>

#include <vfio-io.h>

#include "check.h"
#include "edu_server.h"

enum { LIVENESS = 0x04, FACTORIAL = 0x08, IRQ_STATUS = 0x24, IRQ_RAISE = 0x60 };

static inline uint32_t rd32(vfio_io_device *dev, off_t off)
{
    uint32_t v = 0xffffffff;
    int r = vfio_io_device_ops(dev)->region_read(dev, 0, off, 4, &v);
    CHECK(r == 4, "region_read at %#lx returned %d", (long)off, r);
    return v;
}

static inline void wr32(vfio_io_device *dev, off_t off, uint32_t v)
{
    int r = vfio_io_device_ops(dev)->region_write(dev, 0, off, 4, &v, false);
    CHECK(r == 4, "region_write at %#lx returned %d", (long)off, r);
}

/* Moves edu away from power-on: factorial, liveness, interrupt status. */
static inline void edu_make_busy(vfio_io_device *dev)
{
    wr32(dev, FACTORIAL, 6);
    wr32(dev, LIVENESS, 0xc0ffee);
    wr32(dev, IRQ_RAISE, 0x8);
}

/* Checks that what edu_make_busy set arrived on dev. */
static inline void edu_check_arrived(vfio_io_device *dev)
{
    CHECK(rd32(dev, FACTORIAL) == 720, "factorial arrived");
    CHECK(rd32(dev, LIVENESS) == ~0xc0ffeeu, "liveness arrived");
    CHECK(rd32(dev, IRQ_STATUS) == 0x8, "interrupt status arrived");
}

/* main of a test on two `vfio-io serve edu` servers (argv[1] is the binary):
 * runs test(src, dst) on a client of each, closes everything and returns
 * the exit status. */
static inline int edu_pair_main(int argc, char **argv, const char *name,
                                void (*test)(vfio_io_device *src, vfio_io_device *dst))
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s VFIO_IO_BINARY\n", argv[0]);
        return 2;
    }
    struct edu_server a, b;
    vfio_io_device *src = NULL, *dst = NULL;
    if (edu_server_start(&a, argv[1]) || edu_server_start(&b, argv[1]))
        return 1;
    int r = edu_server_connect(&a, &src);
    CHECK(r == 0, "connect to the source: %d", r);
    r = edu_server_connect(&b, &dst);
    CHECK(r == 0, "connect to the destination: %d", r);
    if (src && dst)
        test(src, dst);
    vfio_io_device_close(src);
    vfio_io_device_close(dst);
    edu_server_stop(&a);
    edu_server_stop(&b);
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("%s: ok\n", name);
    return 0;
}

#endif
