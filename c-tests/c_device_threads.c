/* Interrupts and DMA from many threads at once: the device of
 * bar0_device.h, served through vfio_io_server_run on one thread, while
 * worker threads call vfio_io_server_dma_read/_write and
 * vfio_io_server_irq_trigger and the library's client drives the device
 * (its callbacks raise interrupts and do DMA of their own meanwhile). Every
 * byte of client memory and every interrupt on the client's eventfd is
 * checked, and no fd is left open. */
#define _GNU_SOURCE
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "bar0_device.h"

#define IOVA_FD 0x100000ull   /* client memory shared with a memfd */
#define IOVA_NOFD 0x200000ull /* client memory reached by DMA messages */
#define MEM_SIZE 0x8000
#define IOVA_STAMP (IOVA_FD + MEM_SIZE - STAMP_LEN) /* past every worker's slice */
#define WORKERS 4
#define ROUNDS 50
#define IRQS_PER_ROUND 3
#define SLICE 0x1000
#define CLIENT_ROUNDS 200

static uint8_t pattern(int who, int round, size_t k)
{
    return (uint8_t)(who * 37 + round * 11 + (int)k);
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
            for (size_t k = 0; k < STAMP_LEN; k++)
                same &= shared[MEM_SIZE - STAMP_LEN + k] == stamp_byte((uint32_t)i, k);
            CHECK(same, "stamp of round %d in client memory", i);
        }
    }
    return rung;
}

int main(void)
{
    int fds_before = count_fds();

    struct bar0_device d = { .stamp_iova = IOVA_STAMP };
    if (bar0_device_create(&d) != 0)
        return 1;
    int r;

    /* No client yet: nothing to raise an interrupt in, or to DMA from. */
    uint8_t tmp[4] = { 0 };
    CHECK(vfio_io_server_irq_trigger(d.srv, VFIO_PCI_MSI_IRQ_INDEX, 0) == -ENOTCONN, "irq, no run");
    pthread_t server;
    CHECK(pthread_create(&server, NULL, served_run, d.srv) == 0, "server thread");
    CHECK(vfio_io_server_dma_read(d.srv, IOVA_FD, tmp, 4) == -ENOTCONN, "dma_read, no client");
    CHECK(vfio_io_server_dma_write(d.srv, IOVA_FD, tmp, 4) == -ENOTCONN, "dma_write, no client");
    CHECK(vfio_io_server_irq_trigger(d.srv, VFIO_PCI_MSI_IRQ_INDEX, 1) == -EINVAL, "vector past irq_count");
    CHECK(vfio_io_server_dma_read(d.srv, IOVA_FD, NULL, 4) == -EINVAL, "NULL buf");

    vfio_io_device *dev = NULL;
    r = vfio_io_user_connect(d.sock, &dev);
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
    int efd = attach_msi(dev, ops);

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
    bar0_device_destroy(&d);
    CHECK(count_fds() == fds_before, "fds: %d before, %d after", fds_before, count_fds());
    printf("%d passed, %d failed\n", passes, failures);
    return failures ? 1 : 0;
}
