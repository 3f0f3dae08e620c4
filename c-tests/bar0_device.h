/* The device of the server threading tests, written in C against
 * vfio_io_server_*, and the client-side helpers they share. Header-only;
 * each test program is one translation unit.
 *
 * BAR0 (4 KiB, every access a callback):
 *   0x00 ID (read-only)   0x04 SCRATCH (read/write)
 *   0x08 DOORBELL: a write raises MSI vector 0 from the callback
 *   0x0c STAMP: a write of v DMA-writes 16 bytes of stamp_byte(v, k) at
 *        stamp_iova from the callback; a read gives that DMA's result
 *   0x10 a read gives what vfio_io_server_dispatch returns in a callback */
#ifndef VFIO_IO_BAR0_DEVICE_H
#define VFIO_IO_BAR0_DEVICE_H

#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/types.h>
#include <unistd.h>

#include <vfio-io.h>

#include "check.h"
#include "served_thread.h"

#define DEV_ID 0xc0de0002u
#define BAR0_SIZE 0x1000
#define STAMP_LEN 16

struct bar0_device {
    vfio_io_server *srv;
    uint64_t stamp_iova;
    uint32_t scratch;
    int doorbell_fired; /* irq_trigger calls that returned 1, in callbacks */
    int stamp_result;
    char dir[32];  /* the private directory of the socket */
    char sock[64]; /* the socket the server listens on */
};

static uint8_t stamp_byte(uint32_t v, size_t k)
{
    return (uint8_t)(v * 13 + k * 3 + 1);
}

static ssize_t bar0_read(void *opaque, uint32_t index, uint64_t offset, void *buf, uint32_t count)
{
    struct bar0_device *d = opaque;
    uint32_t v;
    if (index != VFIO_PCI_BAR0_REGION_INDEX || count != 4)
        return -EINVAL;
    switch (offset) {
    case 0x00: v = DEV_ID; break;
    case 0x04: v = d->scratch; break;
    case 0x0c: v = (uint32_t)d->stamp_result; break;
    case 0x10: v = (uint32_t)vfio_io_server_dispatch(d->srv); break;
    default: return -EINVAL;
    }
    memcpy(buf, &v, 4);
    return count;
}

static ssize_t bar0_write(void *opaque, uint32_t index, uint64_t offset, const void *buf,
                          uint32_t count)
{
    struct bar0_device *d = opaque;
    uint32_t v;
    uint8_t stamp[STAMP_LEN];
    if (index != VFIO_PCI_BAR0_REGION_INDEX || count != 4)
        return -EINVAL;
    memcpy(&v, buf, 4);
    switch (offset) {
    case 0x04: d->scratch = v; break;
    case 0x08:
        d->doorbell_fired += vfio_io_server_irq_trigger(d->srv, VFIO_PCI_MSI_IRQ_INDEX, 0) == 1;
        break;
    case 0x0c:
        for (size_t k = 0; k < sizeof(stamp); k++)
            stamp[k] = stamp_byte(v, k);
        d->stamp_result = vfio_io_server_dma_write(d->srv, d->stamp_iova, stamp, sizeof(stamp));
        break;
    default: return -EROFS;
    }
    return count;
}

/* Serves the device (d->srv) on a socket (d->sock) in a new private
 * directory: 0, or -errno (a failed check). */
static int bar0_device_create(struct bar0_device *d)
{
    strcpy(d->dir, "/tmp/vfio-io-bar0-XXXXXX");
    if (!mkdtemp(d->dir)) {
        int e = errno;
        CHECK(0, "mkdtemp: %s", strerror(e));
        return -e;
    }
    snprintf(d->sock, sizeof(d->sock), "%s/dev.sock", d->dir);
    struct vfio_io_server_region regions[] = {
        { VFIO_PCI_BAR0_REGION_INDEX, VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE,
          BAR0_SIZE, -1, 0 },
    };
    struct vfio_io_server_device desc = {
        .size = sizeof(desc), .vendor_id = 0x1234, .device_id = 0xc0de,
        .class_code = 0xff0000, .regions = regions, .num_regions = 1,
        .irq_count = { 0, 1, 0, 0, 0 },
    };
    struct vfio_io_server_ops ops = { 0 };
    ops.size = sizeof(ops);
    ops.region_read = bar0_read;
    ops.region_write = bar0_write;
    int r = vfio_io_server_create(d->sock, &desc, &ops, d, &d->srv);
    CHECK(r == 0, "vfio_io_server_create: %d (%s)", r, strerror(-r));
    return r;
}

/* Frees the server (not running) and removes its directory. */
static void bar0_device_destroy(struct bar0_device *d)
{
    vfio_io_server_destroy(d->srv);
    rmdir(d->dir);
}

/* Open fds of this process, to show that none is left behind. */
static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    if (!d)
        return -1;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

/* Attaches a new eventfd to MSI vector 0 of `dev`; returns it (or -1). */
static int attach_msi(vfio_io_device *dev, const vfio_io_ops *ops)
{
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    struct {
        struct vfio_irq_set set;
        int32_t fd;
    } irq = { { sizeof(irq), VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                VFIO_PCI_MSI_IRQ_INDEX, 0, 1 }, efd };
    CHECK(efd >= 0 && ops->set_irqs(dev, &irq.set) == 0, "attach the MSI eventfd");
    return efd;
}

#endif
