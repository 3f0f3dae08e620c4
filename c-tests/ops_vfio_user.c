/* Drives `vfio-io serve edu` through the C ABI, the way a QEMU-style VMM
 * would: ops table, capability bits, the quiet DMA-BUF path, region I/O and
 * an interrupt on an eventfd. argv[1] is the vfio-io binary. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <vfio-io.h>

#include "check.h"
#include "edu_server.h"

static int log_lines;


static void count_log(int level, const char *msg, void *opaque)
{
    (void)opaque;
    log_lines++;
    fprintf(stderr, "log %d: %s\n", level, msg);
}

static uint32_t rd32(vfio_io_device *dev, const vfio_io_ops *ops, off_t off)
{
    uint32_t v = 0xffffffff;
    int r = ops->region_read(dev, 0, off, 4, &v);
    CHECK(r == 4, "region_read at %#lx returned %d", (long)off, r);
    return v;
}

static void wr32(vfio_io_device *dev, const vfio_io_ops *ops, off_t off, uint32_t v)
{
    int r = ops->region_write(dev, 0, off, 4, &v, false);
    CHECK(r == 4, "region_write at %#lx returned %d", (long)off, r);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PATH-TO-vfio-io\n", argv[0]);
        return 2;
    }
    struct edu_server server;
    if (edu_server_start(&server, argv[1]) != 0)
        return 2;

    vfio_io_set_log_handler(count_log, NULL, VFIO_IO_LOG_DEBUG);

    vfio_io_device *dev = NULL;
    int r = edu_server_connect(&server, &dev);
    CHECK(r == 0 && dev != NULL, "vfio_io_user_connect: %d (%s)", r, strerror(-r));
    if (r != 0)
        goto out;

    const vfio_io_ops *ops = vfio_io_device_ops(dev);
    CHECK(ops != NULL, "ops table");
    CHECK(offsetof(vfio_io_ops, capabilities) == 0, "capabilities is the first member");
    uint64_t caps = vfio_io_device_capabilities(dev);
    CHECK(ops->capabilities == caps, "ops->capabilities %#llx != device mask %#llx",
          (unsigned long long)ops->capabilities, (unsigned long long)caps);
    CHECK(!(caps & VFIO_IO_CAP_DMA_BUF), "vfio-user device claims DMA-BUF");
    CHECK((vfio_io_backend_capabilities(dev) & caps) == caps, "device mask within backend mask");
    CHECK(!(vfio_io_backend_capabilities(dev) & VFIO_IO_CAP_DMA_BUF), "vfio-user backend claims DMA-BUF");

    /* The capability bit says no: the library must not try, and not log. */
    int buf_fd = 1234;
    r = vfio_io_region_create_dma_buf(dev, 0, &buf_fd);
    CHECK(r == 0 && buf_fd == -1, "create_dma_buf: r=%d fd=%d", r, buf_fd);
    CHECK(log_lines == 0, "the log handler got %d lines", log_lines);

    CHECK(rd32(dev, ops, 0x00) == 0x010000ed, "identification register");
    wr32(dev, ops, 0x04, 0x12345678);
    CHECK(rd32(dev, ops, 0x04) == ~0x12345678u, "liveness inversion");

    wr32(dev, ops, 0x08, 10);
    for (int i = 0; i < 1000 && (rd32(dev, ops, 0x20) & 1); i++)
        sleep_ms(1);
    uint32_t fact = rd32(dev, ops, 0x08);
    CHECK(fact == 3628800, "factorial(10) = %u", fact);

    /* Region info with the kernel's struct and argsz convention. */
    struct vfio_region_info ri = { .argsz = sizeof(ri), .index = VFIO_PCI_BAR0_REGION_INDEX };
    int rfd = 99;
    r = ops->get_region_info(dev, &ri, &rfd);
    CHECK(r == 0 && ri.size == 1u << 20, "BAR0 info: r=%d size=%llu", r, (unsigned long long)ri.size);
    CHECK(rfd == -1, "BAR0 traps every access, yet an fd came back");
    ri.index = VFIO_PCI_CONFIG_REGION_INDEX;
    r = ops->get_region_info(dev, &ri, NULL);
    CHECK(r == 0 && ri.size == 256, "config info: r=%d size=%llu", r, (unsigned long long)ri.size);
    uint32_t ids = 0;
    r = ops->region_read(dev, VFIO_PCI_CONFIG_REGION_INDEX, 0, 4, &ids);
    CHECK(r == 4 && ids == 0x11e81234, "config vendor/device %#x", ids);

    /* An interrupt raised through 0x60 arrives on the MSI eventfd. */
    struct vfio_irq_info ii = { .argsz = sizeof(ii), .index = VFIO_PCI_MSI_IRQ_INDEX };
    r = ops->get_irq_info(dev, &ii);
    CHECK(r == 0 && ii.count == 1 && (ii.flags & VFIO_IRQ_INFO_EVENTFD), "MSI info r=%d", r);
    int efd = eventfd(0, EFD_CLOEXEC);
    struct {
        struct vfio_irq_set set;
        int32_t fd;
    } irq = { { sizeof(irq), VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                VFIO_PCI_MSI_IRQ_INDEX, 0, 1 }, efd };
    r = ops->set_irqs(dev, &irq.set);
    CHECK(r == 0, "set_irqs(MSI eventfd) = %d", r);
    wr32(dev, ops, 0x60, 0x40);
    struct pollfd pfd = { efd, POLLIN, 0 };
    /* Signalled within the write; the wait is only a watchdog. */
    CHECK(poll(&pfd, 1, 30000) == 1, "no MSI on the eventfd");
    CHECK(rd32(dev, ops, 0x24) == 0x40, "interrupt status");
    wr32(dev, ops, 0x64, 0x40);
    CHECK(rd32(dev, ops, 0x24) == 0, "interrupt acknowledged");
    struct vfio_irq_set off = { sizeof(off), VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
                                VFIO_PCI_MSI_IRQ_INDEX, 0, 0 };
    CHECK(ops->set_irqs(dev, &off) == 0, "disable MSI");
    close(efd);

    /* Bad input: clear errors, no crash. */
    uint32_t v;
    CHECK(ops->region_read(dev, 0, (1 << 20) - 2, 4, &v) == -EINVAL, "read past the end");
    CHECK(ops->region_read(dev, 42, 0, 4, &v) == -EINVAL, "region index past num_regions");
    CHECK(ops->region_read(dev, 0, 0, 4, NULL) == -EINVAL, "NULL buffer");
    CHECK(vfio_io_dma_map(dev, 0x1000, 4096, NULL, -1, 0, VFIO_IO_DMA_READ) == -EINVAL, "map of nothing");
    CHECK(vfio_io_dma_map(dev, 0x1000, 4096, NULL, 1000, 0, VFIO_IO_DMA_READ) == -EBADF, "bad fd");
    CHECK(log_lines == 0, "the log handler got %d lines", log_lines);

    vfio_io_device_close(dev);

out:;
    int status = edu_server_stop(&server);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "server exit status %#x", status);
    struct stat st;
    CHECK(stat(server.sock, &st) != 0, "socket file left behind");
    printf("%d passed, %d failed\n", passes, failures);
    return failures ? 1 : 0;
}
