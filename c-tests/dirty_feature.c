/* DMA logging through ops->device_feature alone, as QEMU's hw/vfio drives it
 * on kernel VFIO, against `vfio-io serve edu`: PROBE of the three features,
 * START with one range, an edu DMA write into one page, a REPORT that names
 * exactly that page, a second REPORT that is clean, STOP, and a REPORT after
 * STOP that fails with -EINVAL. A report only sets bits, as the UAPI says.
 * Misuse (NULL ranges, NULL bitmap, short argsz, the wrong direction) is
 * -EINVAL. argv[1] is the vfio-io binary. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <vfio-io.h>

#include "check.h"
#include "edu_dma.h"

#define PAGE 4096ULL
#define PAGES 16ULL
#define IOVA 0x100000ULL

/* A feature header followed by the largest payload used here. */
union feature_buf {
    uint64_t align;
    uint8_t bytes[sizeof(struct vfio_device_feature) +
                  sizeof(struct vfio_device_feature_dma_logging_report)];
};

/* ops->device_feature with `flags` and `len` payload bytes from `payload`
 * (NULL: none), argsz the header plus `len`. */
static int feature(vfio_io_device *dev, uint32_t flags, const void *payload, size_t len)
{
    union feature_buf buf;
    memset(&buf, 0, sizeof(buf));
    struct vfio_device_feature *f = (struct vfio_device_feature *)buf.bytes;
    f->argsz = (uint32_t)(sizeof(*f) + len);
    f->flags = flags;
    if (payload)
        memcpy(f->data, payload, len);
    return vfio_io_device_ops(dev)->device_feature(dev, f);
}

static int start(vfio_io_device *dev, const struct vfio_device_feature_dma_logging_range *ranges,
                 uint32_t n, size_t len)
{
    struct vfio_device_feature_dma_logging_control c = {
        .page_size = PAGE, .num_ranges = n, .ranges = (uintptr_t)ranges,
    };
    return feature(dev, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START, &c, len);
}

static int report(vfio_io_device *dev, uint64_t *bitmap, size_t len)
{
    struct vfio_device_feature_dma_logging_report r = {
        .iova = IOVA, .length = PAGES * PAGE, .page_size = PAGE, .bitmap = (uintptr_t)bitmap,
    };
    return feature(dev, VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, &r, len);
}

static int stop(vfio_io_device *dev)
{
    return feature(dev, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, NULL, 0);
}

static void probes(vfio_io_device *dev)
{
    uint32_t set = VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_SET;
    uint32_t get = VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_GET;
    CHECK(feature(dev, set | VFIO_DEVICE_FEATURE_DMA_LOGGING_START, NULL, 0) == 0, "probe START");
    CHECK(feature(dev, set | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, NULL, 0) == 0, "probe STOP");
    CHECK(feature(dev, get | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, NULL, 0) == 0, "probe REPORT");
    CHECK(feature(dev, get | VFIO_DEVICE_FEATURE_DMA_LOGGING_START, NULL, 0) == -EINVAL,
          "probe of a GET of START");
    CHECK(feature(dev, set | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, NULL, 0) == -EINVAL,
          "probe of a SET of REPORT");
}

static void sequence(vfio_io_device *dev, uint8_t *mem)
{
    size_t ctl = sizeof(struct vfio_device_feature_dma_logging_control);
    size_t rep = sizeof(struct vfio_device_feature_dma_logging_report);
    struct vfio_device_feature_dma_logging_range range = { .iova = IOVA, .length = PAGES * PAGE };
    int r = start(dev, &range, 1, ctl);
    CHECK(r == 0, "START: %d (%s)", r, strerror(-r));
    uint64_t bitmap = 0;
    CHECK(report(dev, &bitmap, rep) == 0 && bitmap == 0, "clean at start: %#llx",
          (unsigned long long)bitmap);

    edu_store(dev, IOVA + 5 * PAGE + 24);
    CHECK(mem[5 * PAGE + 24] == 0x5a, "edu's write did not land");
    bitmap = 0;
    r = report(dev, &bitmap, rep);
    CHECK(r == 0 && bitmap == 1ULL << 5, "first REPORT: %d, %#llx, want page 5 alone", r,
          (unsigned long long)bitmap);
    /* Bits are only set: page 1's stale bit stays, nothing new is added. */
    bitmap = 1ULL << 1;
    r = report(dev, &bitmap, rep);
    CHECK(r == 0 && bitmap == 1ULL << 1, "second REPORT: %d, %#llx, want clean", r,
          (unsigned long long)bitmap);

    CHECK(stop(dev) == 0, "STOP");
    bitmap = 0;
    CHECK(report(dev, &bitmap, rep) == -EINVAL, "REPORT after STOP");
}

static void misuse(vfio_io_device *dev)
{
    size_t ctl = sizeof(struct vfio_device_feature_dma_logging_control);
    size_t rep = sizeof(struct vfio_device_feature_dma_logging_report);
    struct vfio_device_feature_dma_logging_range range = { .iova = IOVA, .length = PAGES * PAGE };
    CHECK(start(dev, NULL, 1, ctl) == -EINVAL, "START with NULL ranges");
    CHECK(start(dev, &range, 0, ctl) == -EINVAL, "START with no range");
    CHECK(start(dev, &range, 1, ctl - 1) == -EINVAL, "START with a short argsz");
    CHECK(start(dev, &range, 1, ctl) == 0, "START after misuse");
    uint64_t bitmap = 0;
    CHECK(report(dev, NULL, rep) == -EINVAL, "REPORT with a NULL bitmap");
    CHECK(report(dev, &bitmap, rep - 1) == -EINVAL, "REPORT with a short argsz");
    CHECK(feature(dev, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, NULL, 0) ==
              -EINVAL,
          "SET of REPORT");
    CHECK(report(dev, &bitmap, rep) == 0, "REPORT after misuse");
    CHECK(stop(dev) == 0 && stop(dev) == 0, "STOP twice");
}

/* One memfd mapped for the device; edu's buffer holds 0x5a from its page
 * 0 (a device read, not logged) before the probes, the sequence and misuse. */
static void run(vfio_io_device *dev)
{
    size_t len = PAGES * PAGE;
    int fd = memfd_create("dirty-feature-test", MFD_CLOEXEC);
    CHECK(fd >= 0 && ftruncate(fd, (off_t)len) == 0, "memfd: %s", strerror(errno));
    uint8_t *mem = fd >= 0 ? mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
    CHECK(mem != MAP_FAILED, "mmap: %s", strerror(errno));
    if (mem != MAP_FAILED) {
        uint32_t rw = VFIO_IO_DMA_READ | VFIO_IO_DMA_WRITE;
        CHECK(vfio_io_dma_map(dev, IOVA, len, mem, fd, 0, rw) == 0, "map the memfd");
        memset(mem, 0x5a, 8);
        edu_load(dev, IOVA);
        probes(dev);
        sequence(dev, mem);
        misuse(dev);
        CHECK(vfio_io_dma_unmap(dev, IOVA, len) == 0, "unmap");
        munmap(mem, len);
    }
    if (fd >= 0)
        close(fd);
}

int main(int argc, char **argv)
{
    return edu_dma_main(argc, argv, run);
}
