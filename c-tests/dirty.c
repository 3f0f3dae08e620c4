/* Dirty-page tracking through the C ABI against `vfio-io serve edu`: edu's
 * DMA engine writes client memory mapped from a memfd (the server mmaps it)
 * and memory mapped without an fd (the server sends DMA_WRITE messages); a
 * report names exactly the page written, once; pages written before the
 * start are not reported; after a stop a report is -EINVAL; bad page sizes
 * and ranges are -EINVAL and a start too large is -E2BIG.
 * argv[1] is the vfio-io binary. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <vfio-io.h>

#include "check.h"
#include "edu_dma.h"

#define PAGE 4096ULL
#define PAGES 16ULL
/* Memory from the memfd, and memory mapped without an fd, for the device. */
#define IOVA_FD 0x100000ULL
#define IOVA_NOFD 0x200000ULL

/* The report of the whole memory at `iova`, one word for 16 pages. */
static uint64_t report(vfio_io_device *dev, uint64_t iova)
{
    uint64_t bitmap = ~0ULL;
    int r = vfio_io_dirty_report(dev, iova, PAGES * PAGE, PAGE, &bitmap);
    CHECK(r == 0, "report at %#llx: %d (%s)", (unsigned long long)iova, r, strerror(-r));
    return bitmap;
}

/* One memory, reached as `iova` says: a write is reported at its page, once. */
static void track(vfio_io_device *dev, uint8_t *mem, uint64_t iova)
{
    struct vfio_device_feature_dma_logging_range range = { .iova = iova, .length = PAGES * PAGE };
    memset(mem + 0, 0x77, 8);
    edu_load(dev, iova); /* the pattern into edu's buffer; reads are not logged */
    edu_store(dev, iova + 3 * PAGE);
    CHECK(vfio_io_dirty_start(dev, PAGE, &range, 1) == 0, "start at %#llx", (unsigned long long)iova);
    CHECK(report(dev, iova) == 0, "page 3, written before the start, is reported");
    edu_store(dev, iova + 9 * PAGE + 16);
    CHECK(mem[9 * PAGE + 16] == 0x77, "edu's write did not land");
    uint64_t first = report(dev, iova);
    CHECK(first == 1ULL << 9, "first report %#llx, want page 9 alone", (unsigned long long)first);
    uint64_t second = report(dev, iova);
    CHECK(second == 0, "second report %#llx: reading did not clear", (unsigned long long)second);
    CHECK(vfio_io_dirty_stop(dev) == 0, "stop");
    uint64_t b = 0;
    int r = vfio_io_dirty_report(dev, iova, PAGE, PAGE, &b);
    CHECK(r == -EINVAL, "report after stop: %d", r);
}

static void bad_arguments(vfio_io_device *dev)
{
    struct vfio_device_feature_dma_logging_range good = { .iova = IOVA_FD, .length = PAGES * PAGE };
    uint64_t sizes[] = { 0, 1, 2048, 3000, 4097, 3 * PAGE, 1ULL << 31 };
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
        CHECK(vfio_io_dirty_start(dev, sizes[i], &good, 1) == -EINVAL, "start at page size %llu",
              (unsigned long long)sizes[i]);
    struct vfio_device_feature_dma_logging_range overlap[2] = {
        { .iova = IOVA_FD, .length = 2 * PAGE },
        { .iova = IOVA_FD + PAGE, .length = PAGE },
    };
    struct vfio_device_feature_dma_logging_range empty = { .iova = IOVA_FD, .length = 0 };
    CHECK(vfio_io_dirty_start(dev, PAGE, overlap, 2) == -EINVAL, "overlapping ranges");
    CHECK(vfio_io_dirty_start(dev, PAGE, &empty, 1) == -EINVAL, "empty range");
    CHECK(vfio_io_dirty_start(dev, PAGE, &good, 0) == -EINVAL, "no range");
    CHECK(vfio_io_dirty_start(dev, PAGE, NULL, 1) == -EINVAL, "NULL ranges");
    CHECK(vfio_io_dirty_start(NULL, PAGE, &good, 1) == -EINVAL, "NULL device");
    /* 2^40 pages: refused, not allocated. */
    struct vfio_device_feature_dma_logging_range huge = { .iova = 0, .length = 1ULL << 52 };
    CHECK(vfio_io_dirty_start(dev, PAGE, &huge, 1) == -E2BIG, "huge range");

    uint64_t b[2] = { 0, 0 };
    CHECK(vfio_io_dirty_report(dev, IOVA_FD, PAGE, PAGE, b) == -EINVAL, "report never started");
    CHECK(vfio_io_dirty_start(dev, PAGE, &good, 1) == 0, "start");
    CHECK(vfio_io_dirty_report(dev, IOVA_FD, PAGE, 2048, b) == -EINVAL, "report at 2048");
    CHECK(vfio_io_dirty_report(dev, IOVA_FD, PAGE, 3 * PAGE, b) == -EINVAL, "report at 12 KiB");
    CHECK(vfio_io_dirty_report(dev, IOVA_FD, 0, PAGE, b) == -EINVAL, "empty report");
    CHECK(vfio_io_dirty_report(dev, IOVA_NOFD, PAGE, PAGE, b) == -EINVAL, "report outside the start");
    CHECK(vfio_io_dirty_report(dev, IOVA_FD, PAGE, PAGE, NULL) == -EINVAL, "NULL bitmap");
    CHECK(vfio_io_dirty_report(dev, IOVA_FD, PAGE, PAGE, b) == 0, "a good report after bad ones");
    CHECK(vfio_io_dirty_stop(dev) == 0 && vfio_io_dirty_stop(dev) == 0, "stop twice");
    CHECK(vfio_io_dirty_stop(NULL) == -EINVAL, "stop on NULL");
}

/* Memory from a memfd and memory without an fd, each tracked; then misuse. */
static void run(vfio_io_device *dev)
{
    size_t len = PAGES * PAGE;
    int fd = memfd_create("dirty-test", MFD_CLOEXEC);
    CHECK(fd >= 0 && ftruncate(fd, (off_t)len) == 0, "memfd: %s", strerror(errno));
    uint8_t *shared = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    uint8_t *private = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(shared != MAP_FAILED && private != MAP_FAILED, "mmap: %s", strerror(errno));
    if (fd >= 0 && shared != MAP_FAILED && private != MAP_FAILED) {
        uint32_t rw = VFIO_IO_DMA_READ | VFIO_IO_DMA_WRITE;
        CHECK(vfio_io_dma_map(dev, IOVA_FD, len, shared, fd, 0, rw) == 0, "map the memfd");
        CHECK(vfio_io_dma_map(dev, IOVA_NOFD, len, private, -1, 0, rw) == 0, "map without an fd");
        track(dev, shared, IOVA_FD);
        track(dev, private, IOVA_NOFD);
        bad_arguments(dev);
    }
    if (fd >= 0)
        close(fd);
}

int main(int argc, char **argv)
{
    return edu_dma_main(argc, argv, run);
}
