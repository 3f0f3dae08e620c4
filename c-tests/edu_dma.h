/* What the C tests of dirty-page tracking share: edu's DMA engine driven
 * through the ops table, and a main that runs a test on a device of
 * `vfio-io serve edu` with VFIO_IO_CAP_DIRTY_TRACKING.
 * Header-only; each test program is one translation unit. */
#ifndef VFIO_IO_EDU_DMA_H
#define VFIO_IO_EDU_DMA_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <vfio-io.h>

#include "check.h"
#include "edu_server.h"

/* edu's DMA registers and its internal buffer (QEMU docs/specs/edu.rst). */
#define EDU_DMA_SRC 0x80
#define EDU_DMA_DST 0x88
#define EDU_DMA_COUNT 0x90
#define EDU_DMA_CMD 0x98
#define EDU_DMA_BUF 0x40000ULL
#define EDU_DMA_START 1ULL
#define EDU_DMA_TO_RAM 2ULL

static inline void edu_reg(vfio_io_device *dev, off_t off, uint64_t v)
{
    const vfio_io_ops *ops = vfio_io_device_ops(dev);
    CHECK(ops->region_write(dev, VFIO_PCI_BAR0_REGION_INDEX, off, 8, &v, false) == 8,
          "edu register %#lx", (long)off);
}

/* Has edu copy 8 bytes from its buffer to `iova`: one device write. */
static inline void edu_store(vfio_io_device *dev, uint64_t iova)
{
    edu_reg(dev, EDU_DMA_SRC, EDU_DMA_BUF);
    edu_reg(dev, EDU_DMA_DST, iova);
    edu_reg(dev, EDU_DMA_COUNT, 8);
    edu_reg(dev, EDU_DMA_CMD, EDU_DMA_START | EDU_DMA_TO_RAM);
}

/* Has edu copy 8 bytes from `iova` into its buffer: a device read. */
static inline void edu_load(vfio_io_device *dev, uint64_t iova)
{
    edu_reg(dev, EDU_DMA_SRC, iova);
    edu_reg(dev, EDU_DMA_DST, EDU_DMA_BUF);
    edu_reg(dev, EDU_DMA_COUNT, 8);
    edu_reg(dev, EDU_DMA_CMD, EDU_DMA_START);
}

/* Starts `argv[1] serve edu`, connects, checks DIRTY_TRACKING, runs `test`
 * on the device, closes it and stops the server. Returns main's status. */
static inline int edu_dma_main(int argc, char **argv, void (*test)(vfio_io_device *dev))
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s VFIO_IO_BINARY\n", argv[0]);
        return 2;
    }
    struct edu_server srv;
    vfio_io_device *dev = NULL;
    if (edu_server_start(&srv, argv[1]) != 0)
        return 1;
    int r = edu_server_connect(&srv, &dev);
    CHECK(r == 0 && dev, "connect: %d (%s)", r, strerror(-r));
    if (r != 0) {
        edu_server_stop(&srv);
        return 1;
    }
    uint64_t caps = vfio_io_device_capabilities(dev);
    CHECK(caps & VFIO_IO_CAP_DIRTY_TRACKING, "edu over vfio-user lacks DIRTY_TRACKING: %#llx",
          (unsigned long long)caps);
    test(dev);
    vfio_io_device_close(dev);
    edu_server_stop(&srv);
    printf("%d passed, %d failed\n", passes, failures);
    return failures ? 1 : 0;
}

#endif
