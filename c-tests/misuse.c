/* Every exported function of vfio-io.h, and every op of the ops table, called
 * the wrong way: NULL pointers, a NULL handle, out-of-range indices, argsz
 * smaller than the struct, bad fds. Each must return the -errno its doc
 * comment promises, and nothing may crash. argv[1] is the vfio-io binary,
 * served as `vfio-io serve edu` for the calls that need a live device. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <vfio-io.h>

#include "check.h"
#include "edu_server.h"



/* `call` must return exactly `want` (a -errno or 0). */
#define EXPECT(call, want)                                                    \
    do {                                                                      \
        int got_ = (call);                                                    \
        CHECK(got_ == (want), "%s = %d (%s), want %d (%s)", #call, got_,     \
              strerror(got_ < 0 ? -got_ : 0), (int)(want),                    \
              strerror((want) < 0 ? -(want) : 0));                            \
    } while (0)

/* A number that is certainly not an open fd: one that was open and is now
 * closed. */
static int closed_fd(void)
{
    int fd = eventfd(0, EFD_CLOEXEC);
    close(fd);
    return fd;
}

/* Functions that take no live device. */
static void without_a_device(void)
{
    vfio_io_device *dev = (vfio_io_device *)0x1; /* must stay untouched */
    EXPECT(vfio_io_user_connect(NULL, &dev), -EINVAL);
    EXPECT(vfio_io_user_connect("/nonexistent/sock", NULL), -EINVAL);
    EXPECT(vfio_io_user_connect(NULL, NULL), -EINVAL);
    EXPECT(vfio_io_user_connect("/nonexistent/sock", &dev), -ENOENT);
    CHECK(dev == (vfio_io_device *)0x1, "a failed connect wrote *out");
    /* Something that is not a vfio-user socket: a regular file. */
    EXPECT(vfio_io_user_connect("/proc/self/status", &dev), -ECONNREFUSED);

    EXPECT(vfio_io_kernel_open(NULL, &dev), -EINVAL);
    EXPECT(vfio_io_kernel_open("0000:00:01.0", NULL), -EINVAL);
    EXPECT(vfio_io_kernel_open("0000:99:99.9", &dev), -ENODEV);

    vfio_io_device_close(NULL); /* ignored */
    CHECK(vfio_io_device_ops(NULL) == NULL, "ops of NULL");
    CHECK(vfio_io_device_capabilities(NULL) == 0, "capabilities of NULL");
    CHECK(vfio_io_backend_capabilities(NULL) == 0, "backend capabilities of NULL");

    int fd = 1234;
    EXPECT(vfio_io_region_create_dma_buf(NULL, 0, &fd), -EINVAL);
    CHECK(fd == -1, "create_dma_buf(NULL) left *out_fd = %d", fd);
    EXPECT(vfio_io_region_create_dma_buf(NULL, 0, NULL), -EINVAL);

    char mem[64];
    EXPECT(vfio_io_dma_map(NULL, 0, sizeof(mem), mem, -1, 0, VFIO_IO_DMA_READ), -EINVAL);
    EXPECT(vfio_io_dma_unmap(NULL, 0, 4096), -EINVAL);
    EXPECT(vfio_io_device_reset(NULL), -EINVAL);

    vfio_io_set_log_handler(NULL, NULL, VFIO_IO_LOG_DEBUG); /* removes none: fine */
    vfio_io_set_log_handler(NULL, NULL, 12345);              /* a bogus level too */

    CHECK(vfio_io_capability_name(0) == NULL, "name of 0");
    CHECK(vfio_io_capability_name(3) == NULL, "name of two bits");
    CHECK(vfio_io_capability_name(VFIO_IO_CAP_IOEVENTFD << 1) == NULL, "name of an unknown bit");
    CHECK(vfio_io_capability_name(1ull << 63) == NULL, "name of bit 63");
    CHECK(vfio_io_capability_name(VFIO_IO_CAP_RESET) != NULL &&
              strcmp(vfio_io_capability_name(VFIO_IO_CAP_RESET), "RESET") == 0,
          "name of RESET");
}

/* The ops table's functions called with a NULL handle: the table is only
 * reachable through a live handle, but its pointers may be called with any. */
static void ops_with_null_handle(const vfio_io_ops *ops)
{
    struct vfio_device_feature feat = { .argsz = sizeof(feat) };
    EXPECT(ops->device_feature(NULL, &feat), -EINVAL);
    struct vfio_region_info ri = { .argsz = sizeof(ri) };
    int fd = 77;
    EXPECT(ops->get_region_info(NULL, &ri, &fd), -EINVAL);
    CHECK(fd == -1, "get_region_info(NULL handle) left *fd = %d", fd);
    struct vfio_irq_info ii = { .argsz = sizeof(ii) };
    EXPECT(ops->get_irq_info(NULL, &ii), -EINVAL);
    struct vfio_irq_set is = { .argsz = sizeof(is),
                               .flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER };
    EXPECT(ops->set_irqs(NULL, &is), -EINVAL);
    uint32_t v = 0;
    EXPECT(ops->region_read(NULL, 0, 0, 4, &v), -EINVAL);
    EXPECT(ops->region_write(NULL, 0, 0, 4, &v, false), -EINVAL);
    EXPECT(ops->region_write(NULL, 0, 0, 4, &v, true), -EINVAL);
}

static void ops_misuse(vfio_io_device *dev, const vfio_io_ops *ops)
{
    /* device_feature: NULL, argsz below the fixed part, above 1 MiB, and a
     * feature edu lacks (vfio-user's "not supported" is ENOTTY). */
    EXPECT(ops->device_feature(dev, NULL), -EINVAL);
    struct vfio_device_feature feat = { .argsz = sizeof(feat) - 1,
                                        .flags = VFIO_DEVICE_FEATURE_PROBE |
                                                 VFIO_DEVICE_FEATURE_SET |
                                                 VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY };
    EXPECT(ops->device_feature(dev, &feat), -EINVAL);
    feat.argsz = 0;
    EXPECT(ops->device_feature(dev, &feat), -EINVAL);
    feat.argsz = (1u << 20) + 1;
    EXPECT(ops->device_feature(dev, &feat), -EINVAL);
    feat.argsz = sizeof(feat);
    EXPECT(ops->device_feature(dev, &feat), -ENOTTY);

    /* get_region_info */
    int fd = 55;
    EXPECT(ops->get_region_info(dev, NULL, &fd), -EINVAL);
    CHECK(fd == -1, "get_region_info(NULL info) left *fd = %d", fd);
    struct vfio_region_info ri = { .argsz = sizeof(ri) - 1, .index = 0 };
    EXPECT(ops->get_region_info(dev, &ri, NULL), -EINVAL);
    ri.argsz = 0;
    EXPECT(ops->get_region_info(dev, &ri, NULL), -EINVAL);
    ri.argsz = sizeof(ri);
    ri.index = VFIO_PCI_NUM_REGIONS; /* 9: one past edu's last region */
    fd = 55;
    EXPECT(ops->get_region_info(dev, &ri, &fd), -EINVAL);
    CHECK(fd == -1, "get_region_info(bad index) left *fd = %d", fd);
    ri.index = UINT32_MAX;
    EXPECT(ops->get_region_info(dev, &ri, NULL), -EINVAL);

    /* get_irq_info */
    EXPECT(ops->get_irq_info(dev, NULL), -EINVAL);
    struct vfio_irq_info ii = { .argsz = sizeof(ii) - 1, .index = VFIO_PCI_MSI_IRQ_INDEX };
    EXPECT(ops->get_irq_info(dev, &ii), -EINVAL);
    ii.argsz = sizeof(ii);
    ii.index = VFIO_PCI_NUM_IRQS; /* 5: one past edu's last IRQ index */
    EXPECT(ops->get_irq_info(dev, &ii), -EINVAL);
    ii.index = UINT32_MAX;
    EXPECT(ops->get_irq_info(dev, &ii), -EINVAL);

    /* set_irqs */
    EXPECT(ops->set_irqs(dev, NULL), -EINVAL);
    struct {
        struct vfio_irq_set set;
        int32_t fd[2];
    } irq;
    const uint32_t efd_trigger = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
#define IRQ(argsz_, flags_, index_, start_, count_, fd0_)                     \
    do {                                                                      \
        memset(&irq, 0, sizeof(irq));                                         \
        irq.set.argsz = (argsz_);                                             \
        irq.set.flags = (flags_);                                             \
        irq.set.index = (index_);                                             \
        irq.set.start = (start_);                                             \
        irq.set.count = (count_);                                             \
        irq.fd[0] = (fd0_);                                                   \
        irq.fd[1] = -1;                                                       \
    } while (0)
    /* argsz too small for the struct, and for the eventfd that follows it */
    IRQ(sizeof(irq.set) - 1, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
        VFIO_PCI_MSI_IRQ_INDEX, 0, 0, -1);
    EXPECT(ops->set_irqs(dev, &irq.set), -EINVAL);
    IRQ(sizeof(irq.set) + 3, efd_trigger, VFIO_PCI_MSI_IRQ_INDEX, 0, 1, -1);
    EXPECT(ops->set_irqs(dev, &irq.set), -EINVAL);
    /* no action, two actions, two data types, an unknown flag */
    IRQ(sizeof(irq), VFIO_IRQ_SET_DATA_NONE, VFIO_PCI_MSI_IRQ_INDEX, 0, 1, -1);
    EXPECT(ops->set_irqs(dev, &irq.set), -EINVAL);
    IRQ(sizeof(irq), VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_TRIGGER,
        VFIO_PCI_INTX_IRQ_INDEX, 0, 1, -1);
    EXPECT(ops->set_irqs(dev, &irq.set), -EINVAL);
    IRQ(sizeof(irq), VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_TRIGGER,
        VFIO_PCI_MSI_IRQ_INDEX, 0, 1, -1);
    EXPECT(ops->set_irqs(dev, &irq.set), -EINVAL);
    /* out-of-range index, vector range past the index's count, huge count */
    IRQ(sizeof(irq), efd_trigger, VFIO_PCI_NUM_IRQS, 0, 1, -1);
    EXPECT(ops->set_irqs(dev, &irq.set), -EINVAL);
    IRQ(sizeof(irq), efd_trigger, UINT32_MAX, 0, 1, -1);
    EXPECT(ops->set_irqs(dev, &irq.set), -EINVAL);
    IRQ(sizeof(irq), efd_trigger, VFIO_PCI_MSI_IRQ_INDEX, 0, 2, -1);
    EXPECT(ops->set_irqs(dev, &irq.set), -EINVAL);
    IRQ(sizeof(irq), efd_trigger, VFIO_PCI_MSI_IRQ_INDEX, 1, 1, -1);
    EXPECT(ops->set_irqs(dev, &irq.set), -EINVAL);
    IRQ(sizeof(irq), VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
        VFIO_PCI_MSI_IRQ_INDEX, 0, 65537, -1);
    EXPECT(ops->set_irqs(dev, &irq.set), -EINVAL);
    /* bad eventfds: a closed number and one never opened */
    IRQ(sizeof(irq), efd_trigger, VFIO_PCI_MSI_IRQ_INDEX, 0, 1, closed_fd());
    EXPECT(ops->set_irqs(dev, &irq.set), -EBADF);
    IRQ(sizeof(irq), efd_trigger, VFIO_PCI_MSI_IRQ_INDEX, 0, 1, 1000);
    EXPECT(ops->set_irqs(dev, &irq.set), -EBADF);
    /* -1 detaches a vector: valid, and so is a real eventfd */
    IRQ(sizeof(irq), efd_trigger, VFIO_PCI_MSI_IRQ_INDEX, 0, 1, -1);
    EXPECT(ops->set_irqs(dev, &irq.set), 0);
    int efd = eventfd(0, EFD_CLOEXEC);
    IRQ(sizeof(irq), efd_trigger, VFIO_PCI_MSI_IRQ_INDEX, 0, 1, efd);
    EXPECT(ops->set_irqs(dev, &irq.set), 0);
    CHECK(fcntl(efd, F_GETFD) >= 0, "set_irqs consumed the caller's eventfd");
    IRQ(sizeof(irq.set), VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
        VFIO_PCI_MSI_IRQ_INDEX, 0, 0, -1);
    EXPECT(ops->set_irqs(dev, &irq.set), 0);
    close(efd);
#undef IRQ

    /* region_read / region_write */
    uint32_t v = 0;
    EXPECT(ops->region_read(dev, 0, 0, 4, NULL), -EINVAL);
    EXPECT(ops->region_write(dev, 0, 0, 4, NULL, false), -EINVAL);
    EXPECT(ops->region_write(dev, 0, 0, 4, NULL, true), -EINVAL);
    EXPECT(ops->region_read(dev, VFIO_PCI_NUM_REGIONS, 0, 4, &v), -EINVAL);
    EXPECT(ops->region_read(dev, 255, 0, 4, &v), -EINVAL);
    EXPECT(ops->region_write(dev, 255, 0, 4, &v, false), -EINVAL);
    EXPECT(ops->region_write(dev, 255, 0, 4, &v, true), -EINVAL);
    EXPECT(ops->region_read(dev, 0, -4, 4, &v), -EINVAL);
    EXPECT(ops->region_write(dev, 0, -4, 4, &v, false), -EINVAL);
    EXPECT(ops->region_read(dev, 0, (1 << 20) - 2, 4, &v), -EINVAL);
    EXPECT(ops->region_write(dev, 0, (1 << 20) - 2, 4, &v, true), -EINVAL);
    EXPECT(ops->region_read(dev, 0, INT64_MAX, 4, &v), -EINVAL);
    /* size above INT_MAX cannot be returned as a byte count: refused before
     * the buffer is touched */
    EXPECT(ops->region_read(dev, 0, 0, (uint32_t)INT_MAX + 1, &v), -EINVAL);
    EXPECT(ops->region_write(dev, 0, 0, UINT32_MAX, &v, false), -EINVAL);
    /* a region edu declares empty (BAR1) */
    EXPECT(ops->region_read(dev, VFIO_PCI_BAR1_REGION_INDEX, 0, 4, &v), -EINVAL);

    /* After all that, the device still answers. */
    v = 0;
    EXPECT(ops->region_read(dev, 0, 0, 4, &v), 4);
    CHECK(v == 0x010000ed, "ID after the misuse: %#x", v);
}

static void dma_misuse(vfio_io_device *dev)
{
    enum { PAGE = 4096 };
    char *mem = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(mem != MAP_FAILED, "mmap");
    if (mem == MAP_FAILED)
        return;
    const uint32_t rw = VFIO_IO_DMA_READ | VFIO_IO_DMA_WRITE;

    /* nothing to map, unknown flags, empty and wrapping ranges */
    EXPECT(vfio_io_dma_map(dev, 0x1000, PAGE, NULL, -1, 0, rw), -EINVAL);
    EXPECT(vfio_io_dma_map(dev, 0x1000, PAGE, mem, -1, 0, rw | 0x4), -EINVAL);
    EXPECT(vfio_io_dma_map(dev, 0x1000, 0, mem, -1, 0, rw), -EINVAL);
    EXPECT(vfio_io_dma_map(dev, UINT64_MAX - 10, PAGE, mem, -1, 0, rw), -EINVAL);
    /* bad fds: a closed number, one never opened */
    EXPECT(vfio_io_dma_map(dev, 0x1000, PAGE, mem, closed_fd(), 0, rw), -EBADF);
    EXPECT(vfio_io_dma_map(dev, 0x1000, PAGE, NULL, closed_fd(), 0, rw), -EBADF);
    EXPECT(vfio_io_dma_map(dev, 0x1000, PAGE, mem, 1000, 0, rw), -EBADF);
    EXPECT(vfio_io_dma_map(dev, 0x1000, PAGE, NULL, 1000, 0, rw), -EBADF);
    /* an fd whose file ends before the mapping does */
    int memfd = memfd_create("misuse", MFD_CLOEXEC);
    CHECK(memfd >= 0 && ftruncate(memfd, PAGE) == 0, "memfd");
    EXPECT(vfio_io_dma_map(dev, 0x1000, 2 * PAGE, NULL, memfd, 0, rw), -EINVAL);
    EXPECT(vfio_io_dma_map(dev, 0x1000, PAGE, NULL, memfd, PAGE, rw), -EINVAL);

    /* a good mapping, then an overlap (EEXIST), then unmap misuse */
    EXPECT(vfio_io_dma_map(dev, 0x1000, PAGE, NULL, memfd, 0, rw), 0);
    CHECK(fcntl(memfd, F_GETFD) >= 0, "dma_map consumed the caller's fd");
    EXPECT(vfio_io_dma_map(dev, 0x1800, PAGE, mem, -1, 0, rw), -EEXIST);
    EXPECT(vfio_io_dma_map(dev, 0x1000, PAGE, mem, -1, 0, rw), -EEXIST);
    /* unmap takes a range, as type1 does: cutting a mapping in two is
     * refused, a range holding no mapping succeeds */
    EXPECT(vfio_io_dma_unmap(dev, 0x1000, PAGE / 2), -EINVAL);
    EXPECT(vfio_io_dma_unmap(dev, 0x9000, PAGE), 0);
    EXPECT(vfio_io_dma_unmap(dev, 0x1000, PAGE), 0);
    EXPECT(vfio_io_dma_unmap(dev, 0x1000, PAGE), 0);
    /* the range was really unmapped: the same range maps again */
    EXPECT(vfio_io_dma_map(dev, 0x1000, PAGE, mem, -1, 0, rw), 0);
    EXPECT(vfio_io_dma_unmap(dev, 0, 0x10000), 0);
    close(memfd);

    /* the mapping limit: the server offers 1024 mappings (ServerConfig's
     * default max_dma_maps); one more is ENOSPC */
    int made = 0;
    for (int i = 0; i < 1024; i++)
        if (vfio_io_dma_map(dev, 0x100000ull + (uint64_t)i * PAGE, PAGE, mem, -1, 0, rw) == 0)
            made++;
    CHECK(made == 1024, "made %d of 1024 mappings", made);
    EXPECT(vfio_io_dma_map(dev, 0x10000000, PAGE, mem + PAGE, -1, 0, rw), -ENOSPC);
    int unmapped = 0;
    for (int i = 0; i < 1024; i++)
        if (vfio_io_dma_unmap(dev, 0x100000ull + (uint64_t)i * PAGE, PAGE) == 0)
            unmapped++;
    CHECK(unmapped == 1024, "unmapped %d of 1024 mappings", unmapped);
    EXPECT(vfio_io_dma_map(dev, 0x10000000, PAGE, mem, -1, 0, rw), 0);
    EXPECT(vfio_io_dma_unmap(dev, 0x10000000, PAGE), 0);
    munmap(mem, 2 * PAGE);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PATH-TO-vfio-io\n", argv[0]);
        return 2;
    }
    without_a_device();

    struct edu_server server;
    if (edu_server_start(&server, argv[1]) != 0)
        return 2;
    vfio_io_device *dev = NULL;
    int r = edu_server_connect(&server, &dev);
    CHECK(r == 0 && dev != NULL, "vfio_io_user_connect: %d (%s)", r, strerror(-r));
    if (r == 0) {
        const vfio_io_ops *ops = vfio_io_device_ops(dev);
        CHECK(ops != NULL, "ops table");
        if (ops) {
            ops_with_null_handle(ops);
            ops_misuse(dev, ops);
        }
        /* vfio-user has no DMA-BUF: 0 and -1 whatever the region index */
        int fd = 1234;
        EXPECT(vfio_io_region_create_dma_buf(dev, 0, NULL), -EINVAL);
        EXPECT(vfio_io_region_create_dma_buf(dev, UINT32_MAX, &fd), 0);
        CHECK(fd == -1, "create_dma_buf without the capability gave fd %d", fd);
        dma_misuse(dev);
        EXPECT(vfio_io_device_reset(dev), 0);
        vfio_io_device_close(dev);
    }

    int status = edu_server_stop(&server);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "server exit status %#x", status);
    printf("%d passed, %d failed\n", passes, failures);
    return failures ? 1 : 0;
}
