/* The device of bar0_device.h served from this program's own poll() loop
 * on vfio_io_server_poll_fd / vfio_io_server_dispatch (no
 * vfio_io_server_run), while the library's client drives it from another
 * thread: registers, interrupts raised in callbacks, by the loop thread
 * between dispatches and by the client's thread, DMA from a callback and
 * from the client's thread; then a second client after the first left.
 * Exact values throughout; no fd is left open. */
#define _GNU_SOURCE
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bar0_device.h"

#define IOVA_FD 0x100000ull
#define MEM_SIZE 0x2000
#define SCRATCH_ROUNDS 100
#define DOORBELLS 20
#define CLIENT_IRQS 15
#define LOOP_IRQS 5

/* What the loop thread and the client's thread share. */
struct shared {
    const char *sock;
    struct bar0_device *d;
    atomic_int loop_irqs_wanted; /* set by the client, raised by the loop */
    atomic_int loop_irqs_fired;
    atomic_int done;
};

/* The first client: everything the device does. */
static void first_client(struct shared *sh)
{
    vfio_io_device *dev = NULL;
    int r = vfio_io_user_connect(sh->sock, &dev);
    CHECK(r == 0, "vfio_io_user_connect: %d (%s)", r, strerror(-r));
    if (r != 0)
        return;
    const vfio_io_ops *ops = vfio_io_device_ops(dev);
    CHECK(rd32(dev, ops, 0x00) == DEV_ID, "ID register");
    int right = 0;
    for (uint32_t i = 0; i < SCRATCH_ROUNDS; i++) {
        wr32(dev, ops, 0x04, 0xa0000000u + i);
        right += rd32(dev, ops, 0x04) == 0xa0000000u + i;
    }
    CHECK(right == SCRATCH_ROUNDS, "scratch round trips: %d", right);
    CHECK((int)rd32(dev, ops, 0x10) == -EBUSY, "dispatch from a callback");

    int efd = attach_msi(dev, ops);
    for (int i = 0; i < DOORBELLS; i++)
        wr32(dev, ops, 0x08, 1);
    int fired = 0;
    for (int i = 0; i < CLIENT_IRQS; i++)
        fired += vfio_io_server_irq_trigger(sh->d->srv, VFIO_PCI_MSI_IRQ_INDEX, 0) == 1;
    CHECK(fired == CLIENT_IRQS, "interrupts from the client's thread: %d", fired);
    atomic_store(&sh->loop_irqs_wanted, LOOP_IRQS);
    for (int i = 0; i < 30000 && atomic_load(&sh->loop_irqs_fired) < LOOP_IRQS; i++)
        usleep(1000);
    CHECK(atomic_load(&sh->loop_irqs_fired) == LOOP_IRQS, "interrupts from the loop thread: %d",
          atomic_load(&sh->loop_irqs_fired));
    CHECK(sh->d->doorbell_fired == DOORBELLS, "doorbell interrupts: %d", sh->d->doorbell_fired);
    uint64_t n = 0;
    CHECK(read(efd, &n, 8) == 8 && n == DOORBELLS + CLIENT_IRQS + LOOP_IRQS,
          "interrupts on the eventfd: %llu", (unsigned long long)n);

    int mfd = memfd_create("c-loop-dma", MFD_CLOEXEC);
    CHECK(mfd >= 0 && ftruncate(mfd, MEM_SIZE) == 0, "DMA memfd");
    uint8_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    CHECK(mem != MAP_FAILED, "mmap");
    uint32_t rw = VFIO_IO_DMA_READ | VFIO_IO_DMA_WRITE;
    CHECK(vfio_io_dma_map(dev, IOVA_FD, MEM_SIZE, mem, mfd, 0, rw) == 0, "map the memfd");
    wr32(dev, ops, 0x0c, 7);
    CHECK(rd32(dev, ops, 0x0c) == 0, "stamp DMA result");
    int same = 1;
    for (size_t k = 0; k < STAMP_LEN; k++)
        same &= mem[k] == stamp_byte(7, k);
    CHECK(same, "stamp in client memory");
    /* DMA from this thread too: through the session, whichever thread serves it. */
    uint8_t out[256], back[256];
    for (size_t k = 0; k < sizeof(out); k++)
        out[k] = stamp_byte(9, k);
    CHECK(vfio_io_server_dma_write(sh->d->srv, IOVA_FD + 0x1000, out, sizeof(out)) == 0, "dma_write");
    CHECK(memcmp(mem + 0x1000, out, sizeof(out)) == 0, "dma_write's bytes in client memory");
    memset(back, 0, sizeof(back));
    CHECK(vfio_io_server_dma_read(sh->d->srv, IOVA_FD, back, STAMP_LEN) == 0 &&
          memcmp(back, mem, STAMP_LEN) == 0, "dma_read of the stamp");
    CHECK(vfio_io_server_dma_read(sh->d->srv, 0x900000, back, 4) == -EFAULT, "dma_read unmapped");

    vfio_io_device_close(dev);
    munmap(mem, MEM_SIZE);
    close(mfd);
    close(efd);
}

static void *client_thread(void *arg)
{
    struct shared *sh = arg;
    first_client(sh);
    /* A second client after the first left: the device state goes on. */
    vfio_io_device *dev = NULL;
    int r = vfio_io_user_connect(sh->sock, &dev);
    CHECK(r == 0, "second client: %d", r);
    if (r == 0) {
        const vfio_io_ops *ops = vfio_io_device_ops(dev);
        CHECK(rd32(dev, ops, 0x00) == DEV_ID, "ID for the second client");
        CHECK(rd32(dev, ops, 0x04) == 0xa0000000u + SCRATCH_ROUNDS - 1, "scratch kept");
        wr32(dev, ops, 0x04, 0x5eca);
        CHECK(rd32(dev, ops, 0x04) == 0x5eca, "scratch for the second client");
        vfio_io_device_close(dev);
    }
    atomic_store(&sh->done, 1);
    return NULL;
}

int main(void)
{
    int fds_before = count_fds();

    struct bar0_device d = { .stamp_iova = IOVA_FD };
    if (bar0_device_create(&d) != 0)
        return 1;
    int r;

    int pfd = vfio_io_server_poll_fd(d.srv);
    CHECK(pfd >= 0, "poll fd: %d", pfd);
    CHECK(vfio_io_server_poll_fd(d.srv) == pfd, "the poll fd stays the same");
    CHECK(vfio_io_server_poll_fd(NULL) == -EINVAL, "poll_fd(NULL)");
    CHECK(vfio_io_server_dispatch(NULL) == -EINVAL, "dispatch(NULL)");
    /* Nothing to do yet: dispatch returns at once. */
    CHECK(vfio_io_server_dispatch(d.srv) == 0, "dispatch without a client");
    CHECK(vfio_io_server_irq_trigger(d.srv, VFIO_PCI_MSI_IRQ_INDEX, 0) == -ENOTCONN, "irq, no client");

    struct shared sh = { .sock = d.sock, .d = &d };
    pthread_t client;
    CHECK(pthread_create(&client, NULL, client_thread, &sh) == 0, "client thread");
    int dispatch_errors = 0;
    while (!atomic_load(&sh.done)) {
        struct pollfd p = { pfd, POLLIN, 0 };
        int n = poll(&p, 1, 100);
        if (n == 1) {
            r = vfio_io_server_dispatch(d.srv);
            dispatch_errors += r != 0;
            if (r != 0)
                fprintf(stderr, "dispatch: %d (%s)\n", r, strerror(-r));
        }
        /* Between dispatches, the loop's own thread raises interrupts. */
        while (atomic_load(&sh.loop_irqs_fired) < atomic_load(&sh.loop_irqs_wanted)) {
            r = vfio_io_server_irq_trigger(d.srv, VFIO_PCI_MSI_IRQ_INDEX, 0);
            CHECK(r == 1, "irq from the loop thread: %d", r);
            atomic_fetch_add(&sh.loop_irqs_fired, 1);
        }
    }
    pthread_join(client, NULL);
    CHECK(dispatch_errors == 0, "%d dispatches failed", dispatch_errors);

    vfio_io_server_stop(d.srv);
    CHECK(vfio_io_server_dispatch(d.srv) == -ESHUTDOWN, "dispatch after stop");
    CHECK(vfio_io_server_run(d.srv) == 0, "run after stop returns at once");
    bar0_device_destroy(&d);
    CHECK(count_fds() == fds_before, "fds: %d before, %d after", fds_before, count_fds());
    printf("%d passed, %d failed\n", passes, failures);
    return failures ? 1 : 0;
}
