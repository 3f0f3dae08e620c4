/* The C device of sample_device.c, served through vfio_io_server_* on a
 * thread of this program and driven by the library's client through the
 * ops table; BAR2 is a 64 KiB memfd the library serves. No vfio-io binary
 * is needed. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <vfio-io.h>

#include "check.h"
#include "sample_device.h"
#include "served_thread.h"

#define DEV_ID SAMPLE_ID
#define BAR0_SIZE SAMPLE_BAR0_SIZE
#define BAR2_SIZE 0x10000
#define IOVA_FD 0x100000ull   /* client memory shared with a memfd */
#define IOVA_NOFD 0x200000ull /* client memory reached by DMA messages */
#define MEM_SIZE 0x4000

static void wr64(vfio_io_device *dev, const vfio_io_ops *ops, off_t off, uint64_t v)
{
    wr32(dev, ops, off, (uint32_t)v);
    wr32(dev, ops, off + 4, (uint32_t)(v >> 32));
}

/* Descriptions the library must refuse with -EINVAL, each logged. */
static void misuse(const char *sock, struct vfio_io_server_device good,
                   const struct vfio_io_server_ops *ops)
{
    vfio_io_server *srv = (vfio_io_server *)0x1;
    struct vfio_io_server_device d;
    struct vfio_io_server_region bad_region[2] = {
        { VFIO_PCI_BAR0_REGION_INDEX, VFIO_REGION_INFO_FLAG_READ, 100, -1, 0 }, /* not a power of two */
        { VFIO_PCI_BAR0_REGION_INDEX, VFIO_REGION_INFO_FLAG_READ, 0x1000, -1, 0 },
    };
    struct vfio_io_server_ops no_read = *ops;
    no_read.region_read = NULL;
    struct vfio_io_server_ops short_ops = *ops;
    short_ops.size = 4;

    int before = log_errors;
    CHECK(vfio_io_server_create(NULL, &good, ops, NULL, &srv) == -EINVAL, "NULL path");
    CHECK(vfio_io_server_create(sock, NULL, ops, NULL, &srv) == -EINVAL, "NULL device");
    CHECK(vfio_io_server_create(sock, &good, NULL, NULL, &srv) == -EINVAL, "NULL ops");
    CHECK(vfio_io_server_create(sock, &good, ops, NULL, NULL) == -EINVAL, "NULL out");
    CHECK(vfio_io_server_create(sock, &good, &short_ops, NULL, &srv) == -EINVAL, "ops->size");
    CHECK(vfio_io_server_create(sock, &good, &no_read, NULL, &srv) == -EINVAL, "readable BAR0 without region_read");
    d = good; d.size = 8;
    CHECK(vfio_io_server_create(sock, &d, ops, NULL, &srv) == -EINVAL, "device->size");
    d = good; d.regions = NULL;
    CHECK(vfio_io_server_create(sock, &d, ops, NULL, &srv) == -EINVAL, "NULL regions");
    d = good; d.regions = bad_region; d.num_regions = 1;
    CHECK(vfio_io_server_create(sock, &d, ops, NULL, &srv) == -EINVAL, "BAR of 100 bytes");
    d = good; d.regions = bad_region; d.num_regions = 2;
    CHECK(vfio_io_server_create(sock, &d, ops, NULL, &srv) == -EINVAL, "region given twice");
    d = good; d.irq_count[VFIO_PCI_MSI_IRQ_INDEX] = 4;
    CHECK(vfio_io_server_create(sock, &d, ops, NULL, &srv) == -EINVAL, "4 MSI vectors on emulated config");
    d = good; d.class_code = 0x1000000;
    CHECK(vfio_io_server_create(sock, &d, ops, NULL, &srv) == -EINVAL, "class code over 24 bits");
    struct vfio_io_server_region closed_fd = { 2, VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_MMAP, 0x1000, 1000, 0 };
    d = good; d.regions = &closed_fd; d.num_regions = 1;
    CHECK(vfio_io_server_create(sock, &d, ops, NULL, &srv) == -EBADF, "closed region fd");
    CHECK(srv == (vfio_io_server *)0x1, "*out written on failure");
    CHECK(log_errors - before >= 13, "each refusal logged: %d lines", log_errors - before);
    struct stat st;
    CHECK(stat(sock, &st) != 0, "a refused create left a socket file");

    CHECK(vfio_io_server_run(NULL) == -EINVAL, "run(NULL)");
    CHECK(vfio_io_server_irq_trigger(NULL, 1, 0) == -EINVAL, "irq_trigger(NULL)");
    CHECK(vfio_io_server_dma_read(NULL, 0, NULL, 0) == -EINVAL, "dma_read(NULL)");
    vfio_io_server_stop(NULL);
    vfio_io_server_destroy(NULL);
}

int main(void)
{
    vfio_io_set_log_handler(count_log, NULL, VFIO_IO_LOG_WARNING);
    char dir[] = "/tmp/vfio-io-cdev-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 2;
    }
    char sock[64];
    snprintf(sock, sizeof(sock), "%s/dev.sock", dir);

    int bar2 = memfd_create("c-device-bar2", MFD_CLOEXEC);
    CHECK(bar2 >= 0 && ftruncate(bar2, BAR2_SIZE) == 0, "BAR2 memfd: %s", strerror(errno));
    struct vfio_io_server_region regions[2];
    struct vfio_io_server_device desc;
    sample_device_describe(&desc, regions, bar2, BAR2_SIZE);
    misuse(sock, desc, &sample_device_ops);

    struct sample_device d;
    int r = sample_device_create(&d, sock, bar2, BAR2_SIZE);
    CHECK(r == 0, "vfio_io_server_create: %d (%s)", r, strerror(-r));
    if (r != 0)
        return 1;
    close(bar2); /* the library keeps its own duplicate */
    pthread_t thread;
    CHECK(pthread_create(&thread, NULL, served_run, d.srv) == 0, "server thread");

    /* Before a client connects there is no session for DMA and interrupts. */
    uint8_t tmp[4];
    CHECK(vfio_io_server_irq_trigger(d.srv, VFIO_PCI_MSI_IRQ_INDEX, 0) == -ENOTCONN, "irq from another thread");
    CHECK(vfio_io_server_dma_read(d.srv, IOVA_FD, tmp, 4) == -ENOTCONN, "dma_read from another thread");
    CHECK(vfio_io_server_dma_write(d.srv, IOVA_FD, tmp, 4) == -ENOTCONN, "dma_write from another thread");
    CHECK(vfio_io_server_irq_trigger(d.srv, VFIO_PCI_MSI_IRQ_INDEX, 1) == -EINVAL, "vector past irq_count");

    vfio_io_device *dev = NULL;
    r = vfio_io_user_connect(sock, &dev);
    CHECK(r == 0, "vfio_io_user_connect: %d (%s)", r, strerror(-r));
    if (r != 0)
        goto stop;
    const vfio_io_ops *ops = vfio_io_device_ops(dev);

    CHECK(rd32(dev, ops, 0x00) == DEV_ID, "ID register");
    wr32(dev, ops, 0x04, 0x5a5aa5a5);
    CHECK(rd32(dev, ops, 0x04) == 0x5a5aa5a5, "scratch round trip");
    uint32_t v = 0;
    CHECK(ops->region_write(dev, 0, 0x00, 4, &v, false) == -EROFS, "a callback's -errno reaches the client");
    CHECK(ops->region_read(dev, 0, BAR0_SIZE, 4, &v) == -EINVAL, "read past BAR0");

    /* Configuration space emulated from the description. */
    uint32_t ids = 0, subsys = 0, bar = 0xffffffff;
    CHECK(ops->region_read(dev, VFIO_PCI_CONFIG_REGION_INDEX, 0, 4, &ids) == 4 && ids == 0xc0de1234,
          "config vendor/device %#x", ids);
    CHECK(ops->region_read(dev, VFIO_PCI_CONFIG_REGION_INDEX, 0x2c, 4, &subsys) == 4 &&
          subsys == 0x00011af4, "config subsystem %#x", subsys);
    CHECK(ops->region_write(dev, VFIO_PCI_CONFIG_REGION_INDEX, 0x10, 4, &bar, false) == 4, "size BAR0");
    CHECK(ops->region_read(dev, VFIO_PCI_CONFIG_REGION_INDEX, 0x10, 4, &bar) == 4 &&
          bar == ~(uint32_t)(BAR0_SIZE - 1), "BAR0 sized %#x", bar);
    uint8_t cap = 0;
    CHECK(ops->region_read(dev, VFIO_PCI_CONFIG_REGION_INDEX, 0x34, 1, &cap) == 1 && cap >= 0x40,
          "capability pointer %#x", cap);
    uint8_t cap_id = 0;
    CHECK(ops->region_read(dev, VFIO_PCI_CONFIG_REGION_INDEX, cap, 1, &cap_id) == 1 && cap_id == 0x05,
          "MSI capability id %#x", cap_id);

    /* BAR2 is the memfd: offered for mmap, served by the library. */
    struct vfio_region_info ri = { .argsz = sizeof(ri), .index = VFIO_PCI_BAR2_REGION_INDEX };
    int rfd = -1;
    r = ops->get_region_info(dev, &ri, &rfd);
    CHECK(r == 0 && ri.size == BAR2_SIZE && (ri.flags & VFIO_REGION_INFO_FLAG_MMAP) && rfd >= 0,
          "BAR2 info: r=%d size=%llu fd=%d", r, (unsigned long long)ri.size, rfd);
    if (rfd >= 0)
        close(rfd);
    v = 0xfeedf00d;
    CHECK(ops->region_write(dev, VFIO_PCI_BAR2_REGION_INDEX, 0x100, 4, &v, false) == 4, "BAR2 write");
    v = 0;
    CHECK(ops->region_read(dev, VFIO_PCI_BAR2_REGION_INDEX, 0x100, 4, &v) == 4 && v == 0xfeedf00d,
          "BAR2 round trip %#x", v);

    /* The doorbell raises MSI through vfio_io_server_irq_trigger. */
    int efd = eventfd(0, EFD_CLOEXEC);
    struct {
        struct vfio_irq_set set;
        int32_t fd;
    } irq = { { sizeof(irq), VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                VFIO_PCI_MSI_IRQ_INDEX, 0, 1 }, efd };
    CHECK(ops->set_irqs(dev, &irq.set) == 0, "attach the MSI eventfd");
    wr32(dev, ops, 0x08, 1);
    struct pollfd pfd = { efd, POLLIN, 0 };
    /* Signalled within the write; the wait is only a watchdog. */
    CHECK(poll(&pfd, 1, 30000) == 1, "no MSI on the eventfd");
    uint64_t n = 0;
    CHECK(read(efd, &n, 8) == 8 && n == 1, "one interrupt, got %llu", (unsigned long long)n);
    CHECK(rd32(dev, ops, 0x0c) == 1, "irq_trigger reported a signalled eventfd");
    close(efd);

    /* DMA: client memory from a memfd (mapped by the server) and memory
     * without an fd (DMA messages the client answers). */
    int mfd = memfd_create("c-device-dma", MFD_CLOEXEC);
    CHECK(mfd >= 0 && ftruncate(mfd, MEM_SIZE) == 0, "DMA memfd");
    uint8_t *shared = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    uint8_t *private = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(shared != MAP_FAILED && private != MAP_FAILED, "mmap");
    uint32_t rw = VFIO_IO_DMA_READ | VFIO_IO_DMA_WRITE;
    CHECK(vfio_io_dma_map(dev, IOVA_FD, MEM_SIZE, shared, mfd, 0, rw) == 0, "map the memfd");
    CHECK(vfio_io_dma_map(dev, IOVA_NOFD, MEM_SIZE, private, -1, 0, rw) == 0, "map without an fd");
    for (int i = 0; i < 256; i++)
        shared[i] = (uint8_t)(i * 7 + 1);
    wr64(dev, ops, 0x10, IOVA_FD);
    wr64(dev, ops, 0x18, IOVA_FD + 0x1000);
    wr32(dev, ops, 0x20, 256);
    wr32(dev, ops, 0x24, 1);
    CHECK(rd32(dev, ops, 0x28) == 0, "DMA copy result %d", (int)rd32(dev, ops, 0x28));
    CHECK(memcmp(shared, shared + 0x1000, 256) == 0, "DMA copied within mapped memory");
    wr64(dev, ops, 0x18, IOVA_NOFD + 0x80);
    wr32(dev, ops, 0x24, 1);
    CHECK(rd32(dev, ops, 0x28) == 0, "DMA copy by message result %d", (int)rd32(dev, ops, 0x28));
    CHECK(memcmp(shared, private + 0x80, 256) == 0, "DMA copied into memory without an fd");
    wr64(dev, ops, 0x18, 0x900000);
    wr32(dev, ops, 0x24, 1);
    CHECK((int)rd32(dev, ops, 0x28) == -EFAULT, "DMA to unmapped memory: %d", (int)rd32(dev, ops, 0x28));

    /* Reset reaches the device and the emulated config. */
    CHECK(vfio_io_device_reset(dev) == 0 && d.resets == 1, "reset: %d resets", d.resets);
    CHECK(rd32(dev, ops, 0x04) == 0, "scratch cleared by reset");

    vfio_io_device_close(dev);
    munmap(shared, MEM_SIZE);
    munmap(private, MEM_SIZE);
    close(mfd);

    /* A second client after the first left. */
    r = vfio_io_user_connect(sock, &dev);
    CHECK(r == 0, "second client: %d", r);
    if (r == 0) {
        CHECK(rd32(dev, vfio_io_device_ops(dev), 0x00) == DEV_ID, "ID for the second client");
        vfio_io_device_close(dev);
    }

stop:
    vfio_io_server_stop(d.srv);
    void *ret = NULL;
    pthread_join(thread, &ret);
    CHECK((intptr_t)ret == 0, "vfio_io_server_run returned %ld", (long)(intptr_t)ret);
    CHECK(vfio_io_server_run(d.srv) == 0, "run after stop returns at once");
    vfio_io_server_destroy(d.srv);
    struct stat st;
    CHECK(stat(sock, &st) != 0, "socket file left behind");
    rmdir(dir);
    printf("%d passed, %d failed\n", passes, failures);
    return failures ? 1 : 0;
}
