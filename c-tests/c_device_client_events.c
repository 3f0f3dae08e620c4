/* client_connected and client_disconnected of a device written in C: each
 * client served in turn is one connect then one disconnect, both on the
 * serving thread, a disconnect before the next connect, also when the
 * server is stopped under a client. By the disconnect the client's memory
 * is unmapped: DMA from it is -ENOTCONN (the same DMA worked while the
 * client was there), and so is an interrupt. An ops struct of an older
 * size (before the client events, or before the migration fields too)
 * still makes a working server, whose hooks are never read. Served by
 * vfio_io_server_run and from a poll loop on vfio_io_server_dispatch.
 *
 * BAR0 (4 KiB, every access a callback):
 *   0x00 DMA: a write reads 4 bytes of client memory at IOVA, returns the
 *        result of vfio_io_server_dma_read as a write error if it failed
 *   0x04 DATA: the 4 bytes last read (read-only)
 * No vfio-io binary is needed. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <vfio-io.h>

#include "check.h"
#include "served_thread.h"

#define DMA 0x00
#define DATA 0x04
#define IOVA 0x100000ull
#define MEM_SIZE 0x1000
#define MAX_EVENTS 16

struct event_device {
    vfio_io_server *srv;
    pthread_t serving; /* the thread in vfio_io_server_run */
    uint32_t data;
    int connects, disconnects;
    char events[MAX_EVENTS + 1]; /* 'C' and 'D' in the order they came */
    int nevents;
    int wrong_thread; /* hooks that ran off the serving thread */
    int connected_dma, disconnected_dma, disconnected_irq; /* last results */
};

static void record(struct event_device *d, char what)
{
    d->wrong_thread += !pthread_equal(pthread_self(), d->serving);
    if (d->nevents < MAX_EVENTS)
        d->events[d->nevents++] = what;
}

static void on_connect(void *opaque)
{
    struct event_device *d = opaque;
    record(d, 'C');
    d->connects++;
    uint32_t v;
    d->connected_dma = vfio_io_server_dma_read(d->srv, IOVA, &v, sizeof(v));
}

static void on_disconnect(void *opaque)
{
    struct event_device *d = opaque;
    record(d, 'D');
    uint32_t v;
    d->disconnected_dma = vfio_io_server_dma_read(d->srv, IOVA, &v, sizeof(v));
    d->disconnected_irq = vfio_io_server_irq_trigger(d->srv, VFIO_PCI_MSI_IRQ_INDEX, 0);
    /* Last, and atomic: what the test thread reads once it sees the count. */
    __atomic_fetch_add(&d->disconnects, 1, __ATOMIC_SEQ_CST);
}

static ssize_t dev_read(void *opaque, uint32_t index, uint64_t offset, void *buf, uint32_t count)
{
    struct event_device *d = opaque;
    if (index != VFIO_PCI_BAR0_REGION_INDEX || count != 4)
        return -EINVAL;
    uint32_t v = offset == DATA ? d->data : 0;
    memcpy(buf, &v, 4);
    return count;
}

static ssize_t dev_write(void *opaque, uint32_t index, uint64_t offset, const void *buf,
                         uint32_t count)
{
    struct event_device *d = opaque;
    (void)buf;
    if (index != VFIO_PCI_BAR0_REGION_INDEX || count != 4)
        return -EINVAL;
    if (offset != DMA)
        return count;
    int r = vfio_io_server_dma_read(d->srv, IOVA, &d->data, sizeof(d->data));
    return r < 0 ? r : (ssize_t)count;
}

static const struct vfio_io_server_region bar0 = {
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE,
    0x1000, -1, 0,
};

static const struct vfio_io_server_device desc = {
    .size = sizeof(struct vfio_io_server_device), .vendor_id = 0x1234, .device_id = 0xe7e7,
    .class_code = 0xff0000, .regions = &bar0, .num_regions = 1, .irq_count = { 0, 1 },
};

static const struct vfio_io_server_ops ops = {
    .size = sizeof(ops), .region_read = dev_read, .region_write = dev_write,
    .client_connected = on_connect, .client_disconnected = on_disconnect,
};

/* One client: maps memory holding `value`, has the device DMA it, leaves
 * (closing the device) unless `stay`, in which case it is returned. */
static vfio_io_device *one_client(const char *sock, uint32_t value, int stay)
{
    vfio_io_device *dev = NULL;
    int r = vfio_io_user_connect(sock, &dev);
    CHECK(r == 0, "connect: %d (%s)", r, strerror(-r));
    if (r != 0)
        return NULL;
    int mfd = memfd_create("client-events-dma", MFD_CLOEXEC);
    CHECK(mfd >= 0 && ftruncate(mfd, MEM_SIZE) == 0, "DMA memfd");
    uint32_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    CHECK(mem != MAP_FAILED, "mmap");
    if (mem != MAP_FAILED) {
        mem[0] = value;
        uint32_t rw = VFIO_IO_DMA_READ | VFIO_IO_DMA_WRITE;
        CHECK(vfio_io_dma_map(dev, IOVA, MEM_SIZE, mem, mfd, 0, rw) == 0, "map the memfd");
        CHECK(region_wr32(dev, 0, DMA, 1) == 4, "the device DMAs while the client is there");
        CHECK(region_rd32(dev, 0, DATA) == value, "the device read the client's %#x", value);
    }
    if (!stay) {
        vfio_io_device_close(dev);
        dev = NULL;
    }
    if (mem != MAP_FAILED)
        munmap(mem, MEM_SIZE);
    close(mfd);
    return dev;
}

/* Waits (bounded by a generous watchdog) until `d` saw `n` disconnects:
 * the serving thread notices a client leaving after the client returns. */
static int await_disconnects(struct event_device *d, int n)
{
    for (int i = 0; i < 30 * 1000; i++) {
        if (__atomic_load_n(&d->disconnects, __ATOMIC_SEQ_CST) >= n)
            return 1;
        usleep(1000);
    }
    return 0;
}

/* A thread serving from a poll() loop on vfio_io_server_dispatch until
 * the server is stopped: 0, or dispatch's failure. */
static void *dispatch_loop(void *srv)
{
    int pfd = vfio_io_server_poll_fd(srv);
    for (;;) {
        struct pollfd p = { pfd, POLLIN, 0 };
        poll(&p, 1, 100);
        int r = vfio_io_server_dispatch(srv);
        if (r == -ESHUTDOWN)
            return NULL;
        if (r != 0)
            return (void *)(intptr_t)r;
    }
}

/* Two clients in turn, then a third the server is stopped under, served
 * by `serve` on a thread. */
static void clients_in_turn(const char *dir, const char *name, void *(*serve)(void *))
{
    struct event_device d = { .connected_dma = 1, .disconnected_dma = 1, .disconnected_irq = 1 };
    struct served s;
    if (served_create(&s, dir, name, &desc, &ops, &d) != 0)
        return;
    d.srv = s.srv;
    if (pthread_create(&s.thread, NULL, serve, s.srv) != 0) {
        CHECK(0, "server thread for %s", name);
        vfio_io_server_destroy(s.srv);
        return;
    }
    d.serving = s.thread;

    one_client(s.sock, 0x1111, 0);
    CHECK(await_disconnects(&d, 1), "the first client's disconnect within 30 s");
    CHECK(d.connects == 1 && d.disconnects == 1, "first client: %d connects, %d disconnects",
          d.connects, d.disconnects);
    CHECK(d.connected_dma == -ENOTCONN, "DMA from client_connected: %d", d.connected_dma);
    CHECK(d.disconnected_dma == -ENOTCONN, "DMA from client_disconnected: %d",
          d.disconnected_dma);
    CHECK(d.disconnected_irq == -ENOTCONN, "interrupt from client_disconnected: %d",
          d.disconnected_irq);

    d.disconnected_dma = 1;
    one_client(s.sock, 0x2222, 0);
    CHECK(await_disconnects(&d, 2), "the second client's disconnect within 30 s");
    CHECK(d.disconnected_dma == -ENOTCONN, "second client: DMA from client_disconnected: %d",
          d.disconnected_dma);

    /* Stopped under a client: the session ends, the device hears of it. */
    vfio_io_device *dev = one_client(s.sock, 0x3333, 1);
    served_stop(&s);
    if (dev)
        vfio_io_device_close(dev);
    CHECK(d.connects == 3 && d.disconnects == 3, "three clients: %d connects, %d disconnects",
          d.connects, d.disconnects);
    CHECK(strcmp(d.events, "CDCDCD") == 0, "each disconnect before the next connect: %s",
          d.events);
    CHECK(d.wrong_thread == 0, "%d hooks off the serving thread", d.wrong_thread);
}

/* A program compiled before the client events (or the migration fields)
 * passes a shorter size: served as before, the hooks past it unread. */
static void older_size(const char *dir, const char *name, size_t size)
{
    struct event_device d = { 0 };
    struct vfio_io_server_ops old = ops;
    old.size = (uint32_t)size;
    struct served s;
    snprintf(s.sock, sizeof(s.sock), "%s/%s", dir, name);
    int r = vfio_io_server_create(s.sock, &desc, &old, &d, &s.srv);
    CHECK(r == 0, "ops of size %zu: %d", size, r);
    if (r != 0)
        return;
    d.srv = s.srv;
    if (served_start(&s) != 0)
        return;
    d.serving = s.thread;
    one_client(s.sock, 0x4444, 0);
    served_stop(&s);
    CHECK(d.connects == 0 && d.disconnects == 0 && d.nevents == 0,
          "ops of size %zu: no hook called (%d, %d)", size, d.connects, d.disconnects);
}

int main(void)
{
    char dir[] = "/tmp/vfio-io-cevents-XXXXXX";
    if (served_begin(dir) != 0)
        return 2;
    clients_in_turn(dir, "run.sock", served_run);
    clients_in_turn(dir, "dispatch.sock", dispatch_loop);
    older_size(dir, "before-events.sock", offsetof(struct vfio_io_server_ops, client_connected));
    older_size(dir, "before-migration.sock", offsetof(struct vfio_io_server_ops, migration_stop));

    /* A size that ends inside the client events is of no version. */
    struct vfio_io_server_ops torn = ops;
    torn.size = offsetof(struct vfio_io_server_ops, client_disconnected);
    vfio_io_server *srv = NULL;
    char sock[128];
    snprintf(sock, sizeof(sock), "%s/torn.sock", dir);
    int before = log_errors;
    int r = vfio_io_server_create(sock, &desc, &torn, NULL, &srv);
    CHECK(r == -EINVAL && srv == NULL, "ops size between the two hooks: %d", r);
    CHECK(log_errors == before + 1, "refusal logged once: %d lines", log_errors - before);

    vfio_io_set_log_handler(NULL, NULL, VFIO_IO_LOG_INFO);
    rmdir(dir);
    printf("%d passed, %d failed\n", passes, failures);
    return failures ? 1 : 0;
}
