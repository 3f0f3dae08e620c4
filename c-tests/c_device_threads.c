/* Interrupts and DMA from many threads at once: a device written in C,
 * served through vfio_io_server_* on one thread, while worker threads call
 * vfio_io_server_dma_read/_write and vfio_io_server_irq_trigger and the
 * library's client drives the device (its callbacks raise interrupts and do
 * DMA of their own meanwhile). Every byte of client memory and every
 * interrupt on the client's eventfd is checked, and no fd is left open.
 *
 * BAR0 (4 KiB, every access a callback):
 *   0x00 ID (read-only)   0x04 SCRATCH (read/write)
 *   0x08 DOORBELL: a write raises MSI vector 0 from the callback
 *   0x0c STAMP: a write of v DMA-writes 16 bytes of v's pattern at
 *        IOVA_STAMP from the callback; a read gives that DMA's result. */
#define _GNU_SOURCE
#include <dirent.h>
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
#include <time.h>
#include <unistd.h>

#include <vfio-io.h>

#include "check.h"

#define DEV_ID 0xc0de0002u
#define BAR0_SIZE 0x1000
#define IOVA_FD 0x100000ull   /* client memory shared with a memfd */
#define IOVA_NOFD 0x200000ull /* client memory reached by DMA messages */
#define MEM_SIZE 0x8000
#define IOVA_STAMP (IOVA_FD + MEM_SIZE - 16) /* past every worker's slice */
#define WORKERS 4
#define ROUNDS 50
#define IRQS_PER_ROUND 3
#define SLICE 0x1000
#define CLIENT_ROUNDS 200

struct dev {
    vfio_io_server *srv;
    uint32_t scratch;
    int doorbell_fired; /* what irq_trigger returned 1 for, in callbacks */
    int stamp_result;
};

static uint8_t pattern(int who, int round, size_t k)
{
    return (uint8_t)(who * 37 + round * 11 + (int)k);
}

static ssize_t dev_read(void *opaque, uint32_t index, uint64_t offset, void *buf, uint32_t count)
{
    struct dev *d = opaque;
    uint32_t v;
    if (index != VFIO_PCI_BAR0_REGION_INDEX || count != 4)
        return -EINVAL;
    switch (offset) {
    case 0x00: v = DEV_ID; break;
    case 0x04: v = d->scratch; break;
    case 0x0c: v = (uint32_t)d->stamp_result; break;
    default: return -EINVAL;
    }
    memcpy(buf, &v, 4);
    return count;
}

static ssize_t dev_write(void *opaque, uint32_t index, uint64_t offset, const void *buf,
                         uint32_t count)
{
    struct dev *d = opaque;
    uint32_t v;
    uint8_t stamp[16];
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
            stamp[k] = pattern(WORKERS, (int)v, k);
        d->stamp_result = vfio_io_server_dma_write(d->srv, IOVA_STAMP, stamp, sizeof(stamp));
        break;
    default: return -EROFS;
    }
    return count;
}

static void *serve(void *srv)
{
    return (void *)(intptr_t)vfio_io_server_run(srv);
}

struct worker {
    pthread_t thread;
    vfio_io_server *srv;
    int id;
    int rounds_right; /* rounds whose bytes read back right, in both memories */
    int fired;        /* irq_trigger calls that returned 1 */
    int errors;       /* any other return value */
};

static void *work(void *arg)
{
    struct worker *w = arg;
    uint8_t out[SLICE], back[SLICE];
    for (int i = 0; i < ROUNDS; i++) {
        size_t len = 1 + (size_t)(w->id * 131 + i * 977) % SLICE;
        for (size_t k = 0; k < len; k++)
            out[k] = pattern(w->id, i, k);
        int right = 1;
        const uint64_t bases[2] = { IOVA_FD, IOVA_NOFD };
        for (int b = 0; b < 2; b++) {
            uint64_t iova = bases[b] + (uint64_t)w->id * SLICE;
            memset(back, 0, len);
            int r1 = vfio_io_server_dma_write(w->srv, iova, out, len);
            int r2 = vfio_io_server_dma_read(w->srv, iova, back, len);
            w->errors += (r1 != 0) + (r2 != 0);
            right &= r1 == 0 && r2 == 0 && memcmp(out, back, len) == 0;
        }
        w->rounds_right += right;
        for (int k = 0; k < IRQS_PER_ROUND; k++) {
            int r = vfio_io_server_irq_trigger(w->srv, VFIO_PCI_MSI_IRQ_INDEX, 0);
            w->fired += r == 1;
            w->errors += r != 1;
        }
    }
    return NULL;
}

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

static uint32_t rd32(vfio_io_device *dev, const vfio_io_ops *ops, off_t off)
{
    uint32_t v = 0xffffffff;
    int r = ops->region_read(dev, VFIO_PCI_BAR0_REGION_INDEX, off, 4, &v);
    CHECK(r == 4, "region_read at %#lx returned %d", (long)off, r);
    return v;
}

static void wr32(vfio_io_device *dev, const vfio_io_ops *ops, off_t off, uint32_t v)
{
    int r = ops->region_write(dev, VFIO_PCI_BAR0_REGION_INDEX, off, 4, &v, false);
    CHECK(r == 4, "region_write at %#lx returned %d", (long)off, r);
}

/* Drives the device from the client while the workers run: scratch round
 * trips, doorbells, DMA from the callback. Returns the doorbells rung. */
static int drive(vfio_io_device *dev, const vfio_io_ops *ops, const uint8_t *shared)
{
    int rung = 0;
    for (int i = 0; i < CLIENT_ROUNDS; i++) {
        wr32(dev, ops, 0x04, 0x1000u + (uint32_t)i);
        CHECK(rd32(dev, ops, 0x04) == 0x1000u + (uint32_t)i, "scratch round %d", i);
        wr32(dev, ops, 0x08, 1);
        rung++;
        if (i % 10 == 0) {
            wr32(dev, ops, 0x0c, (uint32_t)i);
            CHECK(rd32(dev, ops, 0x0c) == 0, "stamp DMA result in round %d", i);
            int same = 1;
            for (size_t k = 0; k < 16; k++)
                same &= shared[MEM_SIZE - 16 + k] == pattern(WORKERS, i, k);
            CHECK(same, "stamp of round %d in client memory", i);
        }
    }
    return rung;
}

int main(void)
{
    char dir[] = "/tmp/vfio-io-cthreads-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 2;
    }
    char sock[64];
    snprintf(sock, sizeof(sock), "%s/dev.sock", dir);
    int fds_before = count_fds();

    struct vfio_io_server_region regions[] = {
        { VFIO_PCI_BAR0_REGION_INDEX, VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE,
          BAR0_SIZE, -1, 0 },
    };
    struct vfio_io_server_device desc = {
        .size = sizeof(desc), .vendor_id = 0x1234, .device_id = 0xc0de,
        .class_code = 0xff0000, .regions = regions, .num_regions = 1,
        .irq_count = { 0, 1, 0, 0, 0 },
    };
    struct vfio_io_server_ops ops_s = { 0 };
    ops_s.size = sizeof(ops_s);
    ops_s.region_read = dev_read;
    ops_s.region_write = dev_write;
    struct dev d = { 0 };
    int r = vfio_io_server_create(sock, &desc, &ops_s, &d, &d.srv);
    CHECK(r == 0, "vfio_io_server_create: %d (%s)", r, strerror(-r));
    if (r != 0)
        return 1;

    /* No client yet: nothing to raise an interrupt in, or to DMA from. */
    uint8_t tmp[4] = { 0 };
    CHECK(vfio_io_server_irq_trigger(d.srv, VFIO_PCI_MSI_IRQ_INDEX, 0) == -ENOTCONN, "irq, no run");
    pthread_t server;
    CHECK(pthread_create(&server, NULL, serve, d.srv) == 0, "server thread");
    CHECK(vfio_io_server_dma_read(d.srv, IOVA_FD, tmp, 4) == -ENOTCONN, "dma_read, no client");
    CHECK(vfio_io_server_dma_write(d.srv, IOVA_FD, tmp, 4) == -ENOTCONN, "dma_write, no client");
    CHECK(vfio_io_server_irq_trigger(d.srv, VFIO_PCI_MSI_IRQ_INDEX, 1) == -EINVAL, "vector past irq_count");
    CHECK(vfio_io_server_dma_read(d.srv, IOVA_FD, NULL, 4) == -EINVAL, "NULL buf");

    vfio_io_device *dev = NULL;
    r = vfio_io_user_connect(sock, &dev);
    CHECK(r == 0, "vfio_io_user_connect: %d (%s)", r, strerror(-r));
    if (r != 0)
        goto stop;
    const vfio_io_ops *ops = vfio_io_device_ops(dev);

    int mfd = memfd_create("c-threads-dma", MFD_CLOEXEC);
    CHECK(mfd >= 0 && ftruncate(mfd, MEM_SIZE) == 0, "DMA memfd");
    uint8_t *shared = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    uint8_t *private = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(shared != MAP_FAILED && private != MAP_FAILED, "mmap");
    uint32_t rw = VFIO_IO_DMA_READ | VFIO_IO_DMA_WRITE;
    CHECK(vfio_io_dma_map(dev, IOVA_FD, MEM_SIZE, shared, mfd, 0, rw) == 0, "map the memfd");
    CHECK(vfio_io_dma_map(dev, IOVA_NOFD, MEM_SIZE, private, -1, 0, rw) == 0, "map without an fd");

    /* Connected, nothing attached yet: no eventfd to signal. */
    CHECK(vfio_io_server_irq_trigger(d.srv, VFIO_PCI_MSI_IRQ_INDEX, 0) == 0, "irq before set_irqs");
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    struct {
        struct vfio_irq_set set;
        int32_t fd;
    } irq = { { sizeof(irq), VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                VFIO_PCI_MSI_IRQ_INDEX, 0, 1 }, efd };
    CHECK(ops->set_irqs(dev, &irq.set) == 0, "attach the MSI eventfd");

    struct worker workers[WORKERS];
    for (int t = 0; t < WORKERS; t++) {
        workers[t] = (struct worker){ .srv = d.srv, .id = t };
        CHECK(pthread_create(&workers[t].thread, NULL, work, &workers[t]) == 0, "worker %d", t);
    }
    int rung = drive(dev, ops, shared);
    int fired = d.doorbell_fired;
    for (int t = 0; t < WORKERS; t++) {
        pthread_join(workers[t].thread, NULL);
        CHECK(workers[t].rounds_right == ROUNDS, "worker %d: %d of %d rounds right", t,
              workers[t].rounds_right, ROUNDS);
        CHECK(workers[t].errors == 0, "worker %d: %d failed calls", t, workers[t].errors);
        CHECK(workers[t].fired == ROUNDS * IRQS_PER_ROUND, "worker %d: %d interrupts", t,
              workers[t].fired);
        fired += workers[t].fired;
    }
    CHECK(d.doorbell_fired == rung, "doorbell interrupts %d of %d", d.doorbell_fired, rung);
    uint64_t n = 0;
    CHECK(read(efd, &n, 8) == 8 && n == (uint64_t)fired && fired == rung + WORKERS * ROUNDS * IRQS_PER_ROUND,
          "interrupts on the eventfd: %llu, raised %d", (unsigned long long)n, fired);

    /* Each worker's last round, byte for byte, in both memories. */
    for (int t = 0; t < WORKERS; t++) {
        int i = ROUNDS - 1;
        size_t len = 1 + (size_t)(t * 131 + i * 977) % SLICE;
        int same = 1;
        for (size_t k = 0; k < len; k++)
            same &= shared[t * SLICE + k] == pattern(t, i, k) &&
                    private[t * SLICE + k] == pattern(t, i, k);
        CHECK(same, "worker %d's last bytes", t);
    }

    vfio_io_device_close(dev);
    close(efd);
    munmap(shared, MEM_SIZE);
    munmap(private, MEM_SIZE);
    close(mfd);

    /* Once the server has seen the client leave, calls say so again. */
    int left = 0;
    for (int i = 0; i < 30000 && !left; i++) {
        left = vfio_io_server_irq_trigger(d.srv, VFIO_PCI_MSI_IRQ_INDEX, 0) == -ENOTCONN;
        if (!left)
            nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
    }
    CHECK(left, "irq_trigger after the client left");

stop:
    vfio_io_server_stop(d.srv);
    void *ret = NULL;
    pthread_join(server, &ret);
    CHECK((intptr_t)ret == 0, "vfio_io_server_run returned %ld", (long)(intptr_t)ret);
    vfio_io_server_destroy(d.srv);
    CHECK(count_fds() == fds_before, "fds: %d before, %d after", fds_before, count_fds());
    rmdir(dir);
    printf("%d passed, %d failed\n", passes, failures);
    return failures ? 1 : 0;
}
