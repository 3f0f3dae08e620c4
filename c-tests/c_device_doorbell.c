/* Doorbells and server options of a device written in C: the device lists
 * doorbell registers in `struct vfio_io_server_device`, vfio-io's client
 * takes their eventfds (VFIO_IO_CAP_IOEVENTFD) and rings them with no
 * message, and every ring reaches region_write on the serving thread, in
 * order with the client's other accesses. The same device described with
 * the struct's size before its doorbell fields has none. The server is made
 * with vfio_io_server_create_with: polling (spin_us) and tracing, and the
 * errnos of bad option sizes.
 *
 * BAR0 (4 KiB, every access a callback):
 *   0x00 RING: a write adds its value to COUNTER; doorbell with datamatch 1
 *   0x04 RING_COUNT: a write adds its value; doorbell without datamatch,
 *        so through its eventfd the value is the number of writes
 *   0x08 COUNTER (read-only)
 *   0x0c callbacks that ran on a thread other than the serving one
 * No vfio-io binary is needed. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
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

#define RING 0x00
#define RING_COUNT 0x04
#define COUNTER 0x08
#define WRONG_THREAD 0x0c
#define RINGS 1000

struct bell_device {
    pthread_t serving; /* the thread in vfio_io_server_run */
    uint32_t counter;
    uint32_t wrong_thread;
};

static ssize_t dev_read(void *opaque, uint32_t index, uint64_t offset, void *buf, uint32_t count)
{
    struct bell_device *d = opaque;
    uint32_t v;
    if (index != VFIO_PCI_BAR0_REGION_INDEX || count != 4)
        return -EINVAL;
    switch (offset) {
    case COUNTER: v = d->counter; break;
    case WRONG_THREAD: v = d->wrong_thread; break;
    default: v = 0;
    }
    memcpy(buf, &v, 4);
    return count;
}

static ssize_t dev_write(void *opaque, uint32_t index, uint64_t offset, const void *buf,
                         uint32_t count)
{
    struct bell_device *d = opaque;
    uint32_t v;
    if (index != VFIO_PCI_BAR0_REGION_INDEX || count != 4)
        return -EINVAL;
    d->wrong_thread += !pthread_equal(pthread_self(), d->serving);
    memcpy(&v, buf, 4);
    if (offset == RING || offset == RING_COUNT)
        d->counter += v;
    return count;
}

/* Trace lines of REGION_READ commands the log handler saw. */
static atomic_int traced_reads;

/* count_log for warnings and errors; info lines are counted when they
 * trace a REGION_READ. */
static void trace_log(int level, const char *msg, void *opaque)
{
    if (level >= VFIO_IO_LOG_INFO) {
        /* Trace lines, one per command: counted, not printed. */
        if (strncmp(msg, "REGION_READ id=", 15) == 0)
            atomic_fetch_add(&traced_reads, 1);
        return;
    }
    count_log(level, msg, opaque);
}

static const struct vfio_io_server_region bar0 = {
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE,
    0x1000, -1, 0,
};

static const struct vfio_io_server_doorbell bells[] = {
    { .region = VFIO_PCI_BAR0_REGION_INDEX, .size = 4, .offset = RING, .datamatch = 1,
      .flags = VFIO_IO_DOORBELL_DATAMATCH },
    { .region = VFIO_PCI_BAR0_REGION_INDEX, .size = 4, .offset = RING_COUNT },
};

static struct vfio_io_server_device bell_desc(void)
{
    return (struct vfio_io_server_device){
        .size = sizeof(struct vfio_io_server_device), .vendor_id = 0x1234, .device_id = 0xd0bf,
        .class_code = 0xff0000, .regions = &bar0, .num_regions = 1,
        .doorbells = bells, .num_doorbells = 2,
    };
}

static const struct vfio_io_server_ops ops = {
    .size = sizeof(ops), .region_read = dev_read, .region_write = dev_write,
};

static void ring(vfio_io_device *dev, uint32_t offset, uint32_t v)
{
    int r = region_wr32(dev, 0, offset, v);
    CHECK(r == 4, "write %u at %#x: %d", v, offset, r);
}

/* The client of the device with doorbells. */
static void drive_doorbells(vfio_io_device *dev)
{
    CHECK(vfio_io_device_capabilities(dev) & VFIO_IO_CAP_IOEVENTFD, "IOEVENTFD granted");
    CHECK(vfio_io_device_ops(dev)->capabilities & VFIO_IO_CAP_IOEVENTFD, "in the ops table too");

    /* Each ring reaches the device before the read that follows it. */
    for (uint32_t i = 1; i <= 100; i++) {
        ring(dev, RING, 1);
        CHECK(region_rd32(dev, 0, COUNTER) == i, "ring %u seen by the next read", i);
    }
    for (int i = 0; i < RINGS; i++)
        ring(dev, RING, 1);
    uint32_t c = region_rd32(dev, 0, COUNTER);
    CHECK(c == 100 + RINGS, "%d rings, then a read: counter %u", RINGS, c);

    /* Another value than the datamatch goes by message: 5 is added. */
    ring(dev, RING, 5);
    CHECK(region_rd32(dev, 0, COUNTER) == 105 + RINGS, "a datamatch mismatch reaches the device");

    /* Without datamatch the eventfd carries a count, not the values: a
     * counter that grows by 1 per write of 7 proves no message carried them. */
    for (int i = 0; i < RINGS; i++)
        ring(dev, RING_COUNT, 7);
    c = region_rd32(dev, 0, COUNTER);
    CHECK(c == 105 + 2 * RINGS, "%d writes of 7 through the eventfd count %u", RINGS,
          c - 105 - RINGS);
    CHECK(region_rd32(dev, 0, WRONG_THREAD) == 0, "every callback on the serving thread");
}

/* A server of `desc` made with `opts`, served on a thread; `drive` runs a
 * client against it. */
static void serve_and_drive(const char *dir, const char *name,
                            const struct vfio_io_server_device *desc,
                            const struct vfio_io_server_options *opts,
                            void (*drive)(vfio_io_device *))
{
    struct bell_device d = { 0 };
    struct served s;
    snprintf(s.sock, sizeof(s.sock), "%s/%s", dir, name);
    int r = vfio_io_server_create_with(s.sock, desc, &ops, &d, opts, &s.srv);
    CHECK(r == 0, "vfio_io_server_create_with %s: %d", name, r);
    if (r != 0 || served_start(&s) != 0)
        return;
    d.serving = s.thread;
    vfio_io_device *dev = NULL;
    r = vfio_io_user_connect(s.sock, &dev);
    CHECK(r == 0, "connect %s: %d", name, r);
    if (r == 0) {
        drive(dev);
        vfio_io_device_close(dev);
    }
    served_stop(&s);
}

/* The client of the same device described without doorbells. */
static void drive_without(vfio_io_device *dev)
{
    CHECK(!(vfio_io_device_capabilities(dev) & VFIO_IO_CAP_IOEVENTFD), "IOEVENTFD clear");
    ring(dev, RING_COUNT, 7);
    ring(dev, RING_COUNT, 7);
    CHECK(region_rd32(dev, 0, COUNTER) == 14, "writes by message carry their values");
}

/* Reads through a traced server. */
static void drive_traced(vfio_io_device *dev)
{
    int before = atomic_load(&traced_reads);
    for (int i = 0; i < 10; i++)
        region_rd32(dev, 0, COUNTER);
    int n = atomic_load(&traced_reads) - before;
    CHECK(n == 10, "10 reads traced: %d lines", n);
    drive_doorbells(dev);
}

/* Each bad doorbell is refused with -EINVAL and one error line. */
static void refused_doorbells(const char *dir)
{
    int memfd = memfd_create("bar2", MFD_CLOEXEC);
    CHECK(memfd >= 0 && ftruncate(memfd, 0x1000) == 0, "memfd");
    const struct vfio_io_server_region regions[] = {
        bar0,
        { VFIO_PCI_BAR1_REGION_INDEX, VFIO_REGION_INFO_FLAG_READ, 0x1000, -1, 0 },
        { VFIO_PCI_BAR2_REGION_INDEX,
          VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP,
          0x1000, memfd, 0 },
    };
    const struct vfio_io_server_doorbell ok = { .region = 0, .size = 4, .offset = 0x10 };
    struct {
        const char *what;
        struct vfio_io_server_doorbell b;
    } bad[] = {
        { "no such region", { .region = 3, .size = 4 } },
        { "emulated config space", { .region = VFIO_PCI_CONFIG_REGION_INDEX, .size = 4 } },
        { "read-only region", { .region = 1, .size = 4 } },
        { "region with an fd", { .region = 2, .size = 4 } },
        { "size 3", { .region = 0, .size = 3 } },
        { "past the end", { .region = 0, .size = 8, .offset = 0xffc } },
        { "overlaps another", { .region = 0, .size = 8, .offset = 0x0c } },
        { "unknown flag", { .region = 0, .size = 4, .flags = 2 } },
        { "reserved set", { .region = 0, .size = 4, .reserved = 1 } },
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct vfio_io_server_doorbell two[] = { ok, bad[i].b };
        struct vfio_io_server_device desc = bell_desc();
        desc.regions = regions;
        desc.num_regions = 3;
        desc.doorbells = two;
        char sock[128];
        snprintf(sock, sizeof(sock), "%s/refused.sock", dir);
        vfio_io_server *srv = NULL;
        int before = log_errors;
        int r = vfio_io_server_create(sock, &desc, &ops, NULL, &srv);
        CHECK(r == -EINVAL && srv == NULL, "%s: %d", bad[i].what, r);
        CHECK(log_errors == before + 1, "%s: logged %d lines", bad[i].what, log_errors - before);
        CHECK(access(sock, F_OK) != 0, "%s: no socket left", bad[i].what);
    }
    struct vfio_io_server_device desc = bell_desc();
    desc.doorbells = NULL;
    vfio_io_server *srv = NULL;
    char sock[128];
    snprintf(sock, sizeof(sock), "%s/refused.sock", dir);
    CHECK(vfio_io_server_create(sock, &desc, &ops, NULL, &srv) == -EINVAL, "NULL doorbells");
    close(memfd);
}

/* Option sizes follow the kernel's extensible structs. */
static void option_sizes(const char *dir)
{
    struct {
        struct vfio_io_server_options o;
        uint8_t tail[16];
    } big;
    struct vfio_io_server_device desc = bell_desc();
    struct bell_device d = { 0 };
    char sock[128];
    snprintf(sock, sizeof(sock), "%s/options.sock", dir);
    struct {
        const char *what;
        uint32_t size;
        uint32_t flags;
        uint8_t tail;
        int want;
    } cases[] = {
        { "size 0", 0, 0, 0, -EINVAL },
        { "size below the first version", 16, 0, 0, -EINVAL },
        { "unknown flag", sizeof(big.o), 1u << 7, 0, -EINVAL },
        { "larger, tail set", sizeof(big), 0, 1, -E2BIG },
        { "larger than a page", 4097, 0, 0, -E2BIG },
        { "larger, tail zero", sizeof(big), 0, 0, 0 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        memset(&big, 0, sizeof(big));
        memset(big.tail, cases[i].tail, sizeof(big.tail));
        big.o.size = cases[i].size;
        big.o.flags = cases[i].flags;
        vfio_io_server *srv = NULL;
        int r = vfio_io_server_create_with(sock, &desc, &ops, &d, &big.o, &srv);
        CHECK(r == cases[i].want, "%s: %d, want %d", cases[i].what, r, cases[i].want);
        CHECK((r == 0) == (srv != NULL), "%s: *out set exactly on success", cases[i].what);
        vfio_io_server_destroy(srv);
    }
}

int main(void)
{
    char dir[] = "/tmp/vfio-io-cbell-XXXXXX";
    if (served_begin(dir) != 0)
        return 2;
    vfio_io_set_log_handler(trace_log, NULL, VFIO_IO_LOG_INFO);

    struct vfio_io_server_device desc = bell_desc();
    serve_and_drive(dir, "bells.sock", &desc, NULL, drive_doorbells);

    /* A program built before the doorbell fields: its size ends at
     * irq_count, so what follows is not read. */
    struct vfio_io_server_device old = bell_desc();
    old.size = offsetof(struct vfio_io_server_device, doorbells);
    serve_and_drive(dir, "old.sock", &old, NULL, drive_without);

    /* Polling and tracing from the options. */
    struct vfio_io_server_options opts = {
        .size = sizeof(opts), .spin_us = 200, .dma_timeout_ms = 1000,
        .flags = VFIO_IO_SERVER_TRACE,
    };
    serve_and_drive(dir, "spin.sock", &desc, &opts, drive_traced);
    /* Not traced without the flag. */
    opts.flags = 0;
    int before = atomic_load(&traced_reads);
    serve_and_drive(dir, "quiet.sock", &desc, &opts, drive_doorbells);
    CHECK(atomic_load(&traced_reads) == before, "no trace without VFIO_IO_SERVER_TRACE");

    refused_doorbells(dir);
    option_sizes(dir);
    vfio_io_set_log_handler(NULL, NULL, VFIO_IO_LOG_INFO);
    rmdir(dir);
    printf("%d passed, %d failed\n", passes, failures);
    return failures ? 1 : 0;
}
