/* MSI-X of a device written in C: with irq_count[MSIX] vectors the library
 * adds the MSI-X capability and serves its table and PBA in the first free
 * BAR; the client attaches an eventfd per vector (SET_IRQS on
 * VFIO_PCI_MSIX_IRQ_INDEX) and a vector the device raises fires exactly
 * its eventfd.
 *
 * BAR0 (4 KiB, every access a callback):
 *   0x00 RAISE: a write of k raises MSI-X vector k
 *   0x04 what vfio_io_server_irq_trigger returned for the last RAISE
 * No vfio-io binary is needed. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <vfio-io.h>

#include "check.h"
#include "irq_eventfds.h"
#include "served_thread.h"

#define VECTORS 70 /* a PBA of two QWORDs */
#define CAP_ID_MSIX 0x11

struct msix_device {
    vfio_io_server *srv;
    int32_t last;
};

static ssize_t dev_read(void *opaque, uint32_t index, uint64_t offset, void *buf, uint32_t count)
{
    struct msix_device *d = opaque;
    if (index != VFIO_PCI_BAR0_REGION_INDEX || count != 4 || offset != 0x04)
        return -EINVAL;
    memcpy(buf, &d->last, 4);
    return count;
}

static ssize_t dev_write(void *opaque, uint32_t index, uint64_t offset, const void *buf,
                         uint32_t count)
{
    struct msix_device *d = opaque;
    uint32_t k;
    if (index != VFIO_PCI_BAR0_REGION_INDEX || count != 4 || offset != 0x00)
        return -EINVAL;
    memcpy(&k, buf, 4);
    d->last = vfio_io_server_irq_trigger(d->srv, VFIO_PCI_MSIX_IRQ_INDEX, k);
    return count;
}

static uint32_t cfg_rd(vfio_io_device *dev, off_t off, int len)
{
    uint32_t v = 0;
    int r = vfio_io_device_ops(dev)->region_read(dev, VFIO_PCI_CONFIG_REGION_INDEX, off, len, &v);
    CHECK(r == len, "config read at %#lx: %d", (long)off, r);
    return v;
}

static void bar_wr(vfio_io_device *dev, uint32_t index, off_t off, uint32_t v)
{
    int r = region_wr32(dev, index, off, v);
    CHECK(r == 4, "BAR%u write at %#lx: %d", index, (long)off, r);
}

/* The MSI-X capability's offset, walking the list; 0 if absent. */
static uint8_t find_msix(vfio_io_device *dev)
{
    uint8_t ptr = (uint8_t)cfg_rd(dev, 0x34, 1);
    for (int i = 0; i < 48 && ptr >= 0x40; i++) {
        if (cfg_rd(dev, ptr, 1) == CAP_ID_MSIX)
            return ptr;
        ptr = (uint8_t)cfg_rd(dev, ptr + 1, 1);
    }
    return 0;
}

/* Raises vector k and checks that exactly eventfd k fired (the eventfd is
 * signalled within the write; only the wait on the expected one is long,
 * a watchdog). */
static void raise_one(vfio_io_device *dev, const int32_t *efds, uint32_t k)
{
    bar_wr(dev, 0, 0x00, k);
    CHECK((int32_t)region_rd32(dev, 0, 0x04) == 1, "vector %u: irq_trigger signalled an eventfd", k);
    CHECK(eventfd_signalled(efds[k], 30000), "vector %u: its eventfd fired", k);
    int others = 0;
    for (uint32_t v = 0; v < VECTORS; v++)
        others += v != k && eventfd_signalled(efds[v], 0);
    CHECK(others == 0, "vector %u: %d other eventfds fired", k, others);
    uint64_t n = 0;
    CHECK(read(efds[k], &n, 8) == 8 && n == 1, "vector %u: one interrupt, got %llu", k,
          (unsigned long long)n);
}

static void drive(vfio_io_device *dev)
{
    /* The capability as the PCI spec lays it out and QEMU's vfio reads it. */
    uint8_t cap = find_msix(dev);
    CHECK(cap != 0, "an MSI-X capability");
    if (!cap)
        return;
    uint32_t ctrl = cfg_rd(dev, cap + 2, 2), table = cfg_rd(dev, cap + 4, 4),
             pba = cfg_rd(dev, cap + 8, 4);
    CHECK((ctrl & 0x7ff) == VECTORS - 1 && !(ctrl & 0x8000), "control %#x", ctrl);
    CHECK(table == 1, "table at 0 of BAR1 (BAR0 is the device's): %#x", table);
    CHECK((pba & 7) == 1 && (pba & ~7u) == VECTORS * 16, "PBA after the table: %#x", pba);
    struct vfio_region_info ri = { .argsz = sizeof(ri), .index = VFIO_PCI_BAR1_REGION_INDEX };
    int rfd = -1;
    int r = vfio_io_device_ops(dev)->get_region_info(dev, &ri, &rfd);
    CHECK(r == 0 && ri.size == 4096 && (ri.flags & VFIO_REGION_INFO_FLAG_READ) &&
          !(ri.flags & VFIO_REGION_INFO_FLAG_MMAP) && rfd < 0,
          "BAR1 info: r=%d size=%llu flags=%#x", r, (unsigned long long)ri.size, ri.flags);
    uint32_t bar1 = 0xffffffff;
    vfio_io_device_ops(dev)->region_write(dev, VFIO_PCI_CONFIG_REGION_INDEX, 0x14, 4, &bar1, false);
    CHECK(cfg_rd(dev, 0x14, 4) == ~(uint32_t)(4096 - 1), "BAR1 sizes to 4 KiB in config space");
    struct vfio_irq_info ii = { .argsz = sizeof(ii), .index = VFIO_PCI_MSIX_IRQ_INDEX };
    r = vfio_io_device_ops(dev)->get_irq_info(dev, &ii);
    CHECK(r == 0 && ii.count == VECTORS && (ii.flags & VFIO_IRQ_INFO_EVENTFD), "MSI-X info");

    /* The table keeps what is written; vectors start masked; the PBA is zero. */
    CHECK(region_rd32(dev, 1, 5 * 16 + 12) == 1, "vector 5 masked at reset");
    bar_wr(dev, 1, 5 * 16, 0xfee01003);
    bar_wr(dev, 1, 5 * 16 + 8, 0x4025);
    bar_wr(dev, 1, 5 * 16 + 12, 0xfffffffe);
    CHECK(region_rd32(dev, 1, 5 * 16) == 0xfee01000, "address low, bits 1:0 read-only zero");
    CHECK(region_rd32(dev, 1, 5 * 16 + 8) == 0x4025, "message data");
    CHECK(region_rd32(dev, 1, 5 * 16 + 12) == 0, "unmasked; reserved bits stay zero");
    bar_wr(dev, 1, VECTORS * 16, 0xffffffff);
    CHECK(region_rd32(dev, 1, VECTORS * 16) == 0 && region_rd32(dev, 1, VECTORS * 16 + 12) == 0, "PBA zero");

    /* An eventfd per vector; a raised vector fires exactly its own. */
    bar_wr(dev, 0, 0x00, 3);
    CHECK((int32_t)region_rd32(dev, 0, 0x04) == 0, "no eventfd attached yet");
    int32_t efds[VECTORS];
    for (int v = 0; v < VECTORS; v++) {
        efds[v] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        CHECK(efds[v] >= 0, "eventfd");
    }
    r = set_irq_eventfds(dev, VFIO_PCI_MSIX_IRQ_INDEX, 0, efds, VECTORS);
    CHECK(r == 0, "SET_IRQS on MSI-X, %d eventfds: %d", VECTORS, r);
    raise_one(dev, efds, 3);
    raise_one(dev, efds, 0);
    raise_one(dev, efds, VECTORS - 1);
    bar_wr(dev, 0, 0x00, VECTORS);
    CHECK((int32_t)region_rd32(dev, 0, 0x04) == -EINVAL, "a vector past irq_count is -EINVAL");

    /* A detached vector fires nothing. */
    int32_t none = -1;
    CHECK(set_irq_eventfds(dev, VFIO_PCI_MSIX_IRQ_INDEX, 3, &none, 1) == 0, "detach vector 3");
    bar_wr(dev, 0, 0x00, 3);
    CHECK((int32_t)region_rd32(dev, 0, 0x04) == 0, "vector 3 detached");
    CHECK(!eventfd_signalled(efds[3], 0), "eventfd 3 quiet");
    for (int v = 0; v < VECTORS; v++)
        close(efds[v]);
}

int main(void)
{
    char dir[] = "/tmp/vfio-io-cmsix-XXXXXX";
    if (served_begin(dir) != 0)
        return 2;
    struct vfio_io_server_region regions[6];
    for (uint32_t i = 0; i < 6; i++)
        regions[i] = (struct vfio_io_server_region){
            i, VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE, 0x1000, -1, 0,
        };
    struct vfio_io_server_device desc = {
        .size = sizeof(desc), .vendor_id = 0x1234, .device_id = 0xc0de, .class_code = 0xff0000,
        .regions = regions, .num_regions = 6, .irq_count = { 0, 0, VECTORS, 0, 0 },
    };
    struct vfio_io_server_ops ops = {
        .size = sizeof(ops), .region_read = dev_read, .region_write = dev_write,
    };
    struct msix_device d = { 0 };
    struct served s;

    /* Six BARs leave the table no room. */
    int before = log_errors;
    vfio_io_server *srv = NULL;
    snprintf(s.sock, sizeof(s.sock), "%s/refused.sock", dir);
    CHECK(vfio_io_server_create(s.sock, &desc, &ops, &d, &srv) == -EINVAL, "no free BAR");
    CHECK(log_errors == before + 1, "the refusal logged: %d lines", log_errors - before);

    desc.num_regions = 1;
    if (served_create(&s, dir, "dev.sock", &desc, &ops, &d) != 0)
        return 1;
    d.srv = s.srv;
    if (served_start(&s) != 0)
        return 1;
    vfio_io_device *dev = NULL;
    int r = vfio_io_user_connect(s.sock, &dev);
    CHECK(r == 0, "connect: %d", r);
    if (r == 0) {
        drive(dev);
        vfio_io_device_close(dev);
    }
    served_stop(&s);
    rmdir(dir);
    printf("%d passed, %d failed\n", passes, failures);
    return failures ? 1 : 0;
}
