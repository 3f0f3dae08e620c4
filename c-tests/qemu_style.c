/* Sets a device up the way QEMU's hw/vfio does, through vfio-io's ops table:
 * one `const vfio_io_ops *` per device, region info with the argsz retry and
 * the capability chain (sparse mmap, type), mmap of what is mappable through
 * the returned fd at info.offset, IRQ info, and a DMA-BUF only where the
 * capability bit says the device has it. Prints a report.
 *
 * The same code runs on both backends:
 *   qemu_style PATH-TO-vfio-io              starts `vfio-io serve edu SOCKET`, vfio-user
 *   VFIO_IO_TEST_DEVICE=0000:00:03.0 qemu_style   kernel VFIO (PCI address or
 *                                           /dev/vfio/devices/vfioN), no server
 * Any library log line is a failure: a caller that checks the capability bits
 * must never provoke a warning. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <vfio-io.h>

#include "edu_server.h"

#define MAX_MMAPS 16

typedef struct {
    void *mmap;
    uint64_t offset; /* within the region */
    uint64_t size;
} Mmap;

typedef struct {
    struct vfio_region_info *info; /* as returned, capability chain included */
    int fd;                        /* for mmap at info->offset, or -1 */
    uint32_t type, subtype;        /* VFIO_REGION_INFO_CAP_TYPE, or 0 */
    int nr_mmaps;
    Mmap mmaps[MAX_MMAPS];
} Region;

typedef struct {
    vfio_io_device *dev;
    const vfio_io_ops *io_ops; /* like VFIODevice::io_ops */
    Region regions[VFIO_PCI_NUM_REGIONS];
    struct vfio_irq_info irqs[VFIO_PCI_NUM_IRQS];
} Device;

static const char *const region_names[VFIO_PCI_NUM_REGIONS] = {
    "BAR0", "BAR1", "BAR2", "BAR3", "BAR4", "BAR5", "ROM", "CONFIG", "VGA",
};
static const char *const irq_names[VFIO_PCI_NUM_IRQS] = {
    "INTX", "MSI", "MSIX", "ERR", "REQ",
};

static int log_lines;
static int failures;

static void count_log(int level, const char *msg, void *opaque)
{
    (void)opaque;
    log_lines++;
    fprintf(stderr, "library log (level %d): %s\n", level, msg);
}

#define FAIL(...)                                                             \
    do {                                                                      \
        failures++;                                                           \
        fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                  \
        fprintf(stderr, __VA_ARGS__);                                         \
        fputc('\n', stderr);                                                  \
    } while (0)

/* QEMU's vfio_device_get_region_info: ask with the fixed size, and if the
 * capability chain does not fit, grow to the argsz the device reported and
 * ask again. */
static int get_region_info(Device *d, uint32_t index, struct vfio_region_info **out, int *fd)
{
    size_t argsz = sizeof(struct vfio_region_info);
    struct vfio_region_info *info = calloc(1, argsz);
    for (;;) {
        info->argsz = argsz;
        info->index = index;
        int r = d->io_ops->get_region_info(d->dev, info, fd);
        if (r < 0) {
            free(info);
            return r;
        }
        if (info->argsz <= argsz)
            break;
        /* Too small: the region fd of this attempt is not needed. */
        if (*fd >= 0)
            close(*fd);
        argsz = info->argsz;
        info = realloc(info, argsz);
        memset(info, 0, argsz);
    }
    *out = info;
    return 0;
}

/* Walks the capability chain (offsets from the start of info). */
static void parse_region_caps(Region *reg)
{
    struct vfio_region_info *info = reg->info;
    if (!(info->flags & VFIO_REGION_INFO_FLAG_CAPS))
        return;
    uint32_t off = info->cap_offset;
    for (int hops = 0; off && hops < 64; hops++) {
        if (off < sizeof(*info) || off + sizeof(struct vfio_info_cap_header) > info->argsz) {
            FAIL("region %u: capability at %u outside argsz %u", info->index, off, info->argsz);
            return;
        }
        struct vfio_info_cap_header *hdr = (void *)((char *)info + off);
        if (hdr->id == VFIO_REGION_INFO_CAP_SPARSE_MMAP) {
            struct vfio_region_info_cap_sparse_mmap *sparse = (void *)hdr;
            for (uint32_t i = 0; i < sparse->nr_areas && reg->nr_mmaps < MAX_MMAPS; i++) {
                reg->mmaps[reg->nr_mmaps].offset = sparse->areas[i].offset;
                reg->mmaps[reg->nr_mmaps].size = sparse->areas[i].size;
                reg->nr_mmaps++;
            }
        } else if (hdr->id == VFIO_REGION_INFO_CAP_TYPE) {
            struct vfio_region_info_cap_type *type = (void *)hdr;
            reg->type = type->type;
            reg->subtype = type->subtype;
        }
        off = hdr->next;
    }
}

/* QEMU's vfio_region_mmap: the whole region, or each sparse area. */
static void map_region(Region *reg)
{
    struct vfio_region_info *info = reg->info;
    if (!(info->flags & VFIO_REGION_INFO_FLAG_MMAP) || reg->fd < 0 || !info->size)
        return;
    bool sparse = reg->nr_mmaps > 0;
    if (!sparse) {
        reg->mmaps[0].offset = 0;
        reg->mmaps[0].size = info->size;
        reg->nr_mmaps = 1;
    }
    int prot = (info->flags & VFIO_REGION_INFO_FLAG_READ ? PROT_READ : 0) |
               (info->flags & VFIO_REGION_INFO_FLAG_WRITE ? PROT_WRITE : 0);
    for (int i = 0; i < reg->nr_mmaps; i++) {
        Mmap *m = &reg->mmaps[i];
        if (!m->size)
            continue;
        m->mmap = mmap(NULL, m->size, prot, MAP_SHARED, reg->fd, info->offset + m->offset);
        if (m->mmap == MAP_FAILED) {
            m->mmap = NULL;
            FAIL("region %u: mmap of [%#llx, +%#llx): %s", info->index,
                 (unsigned long long)m->offset, (unsigned long long)m->size, strerror(errno));
        }
    }
}

/* Optional indices: a device without VGA, or a conventional PCI device
 * without AER, answers -EINVAL for them, and QEMU carries on. */
static bool optional_region(uint32_t i) { return i == VFIO_PCI_VGA_REGION_INDEX; }
static bool optional_irq(uint32_t i) { return i == VFIO_PCI_ERR_IRQ_INDEX || i == VFIO_PCI_REQ_IRQ_INDEX; }

static void setup_device(Device *d)
{
    d->io_ops = vfio_io_device_ops(d->dev);
    printf("capabilities %#llx:", (unsigned long long)d->io_ops->capabilities);
    for (int b = 0; b < 64; b++) {
        const char *name = vfio_io_capability_name(1ULL << b);
        if (name && (d->io_ops->capabilities & (1ULL << b)))
            printf(" %s", name);
    }
    printf("\n");

    for (uint32_t i = 0; i < VFIO_PCI_NUM_REGIONS; i++) {
        Region *reg = &d->regions[i];
        reg->fd = -1;
        int r = get_region_info(d, i, &reg->info, &reg->fd);
        if (r < 0) {
            if (!(r == -EINVAL && optional_region(i)))
                FAIL("get_region_info(%s): %s", region_names[i], strerror(-r));
            printf("region %-6s absent\n", region_names[i]);
            continue;
        }
        parse_region_caps(reg);
        map_region(reg);
        printf("region %-6s size %#llx offset %#llx flags %#x fd %s", region_names[i],
               (unsigned long long)reg->info->size, (unsigned long long)reg->info->offset,
               reg->info->flags, reg->fd >= 0 ? "yes" : "no");
        if (reg->type)
            printf(" type %u/%u", reg->type, reg->subtype);
        for (int m = 0; m < reg->nr_mmaps; m++)
            if (reg->mmaps[m].mmap)
                printf(" mmap[%#llx,+%#llx)", (unsigned long long)reg->mmaps[m].offset,
                       (unsigned long long)reg->mmaps[m].size);
        printf("\n");
    }

    for (uint32_t i = 0; i < VFIO_PCI_NUM_IRQS; i++) {
        d->irqs[i] = (struct vfio_irq_info){ .argsz = sizeof(d->irqs[i]), .index = i };
        int r = d->io_ops->get_irq_info(d->dev, &d->irqs[i]);
        if (r < 0) {
            if (!(r == -EINVAL && optional_irq(i)))
                FAIL("get_irq_info(%s): %s", irq_names[i], strerror(-r));
            printf("irq    %-6s absent\n", irq_names[i]);
            continue;
        }
        printf("irq    %-6s count %u flags %#x\n", irq_names[i], d->irqs[i].count, d->irqs[i].flags);
    }

    /* A DMA-BUF only where the device has one: no attempt, no warning. */
    if (d->io_ops->capabilities & VFIO_IO_CAP_DMA_BUF) {
        for (uint32_t i = VFIO_PCI_BAR0_REGION_INDEX; i <= VFIO_PCI_BAR5_REGION_INDEX; i++) {
            Region *reg = &d->regions[i];
            if (!reg->info || !reg->info->size || !(reg->info->flags & VFIO_REGION_INFO_FLAG_MMAP))
                continue;
            int fd = -1;
            int r = vfio_io_region_create_dma_buf(d->dev, i, &fd);
            if (r < 0)
                FAIL("create_dma_buf(%s): %s", region_names[i], strerror(-r));
            printf("dmabuf %-6s %s\n", region_names[i], fd >= 0 ? "fd" : "none");
            if (fd >= 0)
                close(fd); /* ours */
        }
    } else {
        printf("dmabuf not offered by this device\n");
    }
}

/* Checks that the edu identification register reads the same through the
 * ops table and, where BAR0 is mapped, through the mapping. */
static void check_edu(Device *d)
{
    uint32_t id = 0;
    int r = d->io_ops->region_read(d->dev, VFIO_PCI_BAR0_REGION_INDEX, 0, sizeof(id), &id);
    if (r != (int)sizeof(id) || id != 0x010000ed)
        FAIL("BAR0 id register: r=%d id=%#x", r, id);
    Region *bar0 = &d->regions[VFIO_PCI_BAR0_REGION_INDEX];
    for (int m = 0; m < bar0->nr_mmaps; m++) {
        if (bar0->mmaps[m].mmap && bar0->mmaps[m].offset == 0) {
            uint32_t mapped = *(volatile uint32_t *)bar0->mmaps[m].mmap;
            if (mapped != id)
                FAIL("BAR0 id register through the mapping: %#x", mapped);
        }
    }
    printf("edu id %#x\n", id);
}

static void teardown_device(Device *d)
{
    for (int i = 0; i < VFIO_PCI_NUM_REGIONS; i++) {
        Region *reg = &d->regions[i];
        for (int m = 0; m < reg->nr_mmaps; m++)
            if (reg->mmaps[m].mmap)
                munmap(reg->mmaps[m].mmap, reg->mmaps[m].size);
        if (reg->fd >= 0)
            close(reg->fd);
        free(reg->info);
    }
    vfio_io_device_close(d->dev);
}

int main(int argc, char **argv)
{
    const char *kernel_dev = getenv("VFIO_IO_TEST_DEVICE");
    if (!kernel_dev && argc < 2) {
        fprintf(stderr, "usage: %s PATH-TO-vfio-io  (or VFIO_IO_TEST_DEVICE=ADDR %s)\n", argv[0], argv[0]);
        return 2;
    }
    vfio_io_set_log_handler(count_log, NULL, VFIO_IO_LOG_DEBUG);

    Device d = { 0 };
    int r;
    struct edu_server server = { .pid = -1 };
    if (kernel_dev) {
        printf("backend kernel VFIO: %s\n", kernel_dev);
        r = vfio_io_kernel_open(kernel_dev, &d.dev);
    } else {
        if (edu_server_start(&server, argv[1]) != 0)
            return 2;
        printf("backend vfio-user: %s\n", server.sock);
        r = edu_server_connect(&server, &d.dev);
    }
    if (r != 0) {
        FAIL("open: %s", strerror(-r));
    } else {
        setup_device(&d);
        check_edu(&d);
        teardown_device(&d);
    }

    if (server.pid > 0) {
        int status = edu_server_stop(&server);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            FAIL("server exit status %#x", status);
    }
    if (log_lines)
        FAIL("the library logged %d lines", log_lines);
    printf("%s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
