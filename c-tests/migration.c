/* Migrates edu between two `vfio-io serve edu` servers through the four
 * vfio_io_migration_* calls: the source's registers arrive at the
 * destination, and misuse gets its documented -errno. argv[1] is the
 * vfio-io binary. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <vfio-io.h>

#include "check.h"
#include "edu_server.h"



enum { LIVENESS = 0x04, FACTORIAL = 0x08, IRQ_STATUS = 0x24, IRQ_RAISE = 0x60 };

static uint32_t rd32(vfio_io_device *dev, off_t off)
{
    uint32_t v = 0xffffffff;
    int r = vfio_io_device_ops(dev)->region_read(dev, 0, off, 4, &v);
    CHECK(r == 4, "region_read at %#lx returned %d", (long)off, r);
    return v;
}

static void wr32(vfio_io_device *dev, off_t off, uint32_t v)
{
    int r = vfio_io_device_ops(dev)->region_write(dev, 0, off, 4, &v, false);
    CHECK(r == 4, "region_write at %#lx returned %d", (long)off, r);
}

static uint32_t state_of(vfio_io_device *dev)
{
    uint32_t s = 0xffffffff;
    int r = vfio_io_migration_get_state(dev, &s);
    CHECK(r == 0, "get_state returned %d", r);
    return s;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s VFIO_IO_BINARY\n", argv[0]);
        return 2;
    }
    struct edu_server a, b;
    vfio_io_device *src = NULL, *dst = NULL;
    if (edu_server_start(&a, argv[1]) || edu_server_start(&b, argv[1]))
        return 1;
    int r = edu_server_connect(&a, &src);
    CHECK(r == 0, "connect to the source: %d", r);
    r = edu_server_connect(&b, &dst);
    CHECK(r == 0, "connect to the destination: %d", r);
    if (!src || !dst)
        goto out;
    CHECK(vfio_io_device_capabilities(src) & VFIO_IO_CAP_MIGRATION, "edu migrates");

    wr32(src, FACTORIAL, 6);
    wr32(src, LIVENESS, 0xc0ffee);
    wr32(src, IRQ_RAISE, 0x8);
    CHECK(state_of(src) == VFIO_DEVICE_STATE_RUNNING, "source starts RUNNING");

    /* Misuse: ERROR cannot be asked for; no data moves while RUNNING. */
    char buf[512];
    CHECK(vfio_io_migration_set_state(src, VFIO_DEVICE_STATE_ERROR) == -EINVAL, "ERROR");
    CHECK(vfio_io_migration_read(src, buf, sizeof(buf)) == -EINVAL, "read while RUNNING");
    CHECK(vfio_io_migration_write(src, buf, sizeof(buf)) == -EINVAL, "write while RUNNING");
    CHECK(vfio_io_migration_read(src, NULL, 4) == -EINVAL, "NULL buffer");
    CHECK(vfio_io_migration_get_state(NULL, NULL) == -EINVAL, "NULL handle");

    /* RUNNING -> STOP_COPY walks through STOP. */
    r = vfio_io_migration_set_state(src, VFIO_DEVICE_STATE_STOP_COPY);
    CHECK(r == 0, "source to STOP_COPY: %d", r);
    r = vfio_io_migration_set_state(dst, VFIO_DEVICE_STATE_RESUMING);
    CHECK(r == 0, "destination to RESUMING: %d", r);
    size_t total = 0;
    for (int i = 0; i < 1000; i++) { /* a bound on reads: edu's stream is ~4.4 KiB */
        ssize_t n = vfio_io_migration_read(src, buf, sizeof(buf));
        CHECK(n >= 0, "read returned %zd", n);
        if (n <= 0)
            break;
        ssize_t w = vfio_io_migration_write(dst, buf, (size_t)n);
        CHECK(w == n, "write of %zd returned %zd", n, w);
        total += (size_t)n;
    }
    CHECK(total > 4096, "the stream carries the DMA buffer: %zu bytes", total);
    r = vfio_io_migration_set_state(dst, VFIO_DEVICE_STATE_RUNNING);
    CHECK(r == 0, "destination to RUNNING: %d", r);
    CHECK(state_of(dst) == VFIO_DEVICE_STATE_RUNNING, "destination RUNNING");

    CHECK(rd32(dst, FACTORIAL) == 720, "factorial arrived");
    CHECK(rd32(dst, LIVENESS) == ~0xc0ffeeu, "liveness arrived");
    CHECK(rd32(dst, IRQ_STATUS) == 0x8, "interrupt status arrived");

    r = vfio_io_migration_set_state(src, VFIO_DEVICE_STATE_RUNNING);
    CHECK(r == 0, "source back to RUNNING: %d", r);
    wr32(src, FACTORIAL, 3);
    CHECK(rd32(src, FACTORIAL) == 6, "the source runs again");

out:
    vfio_io_device_close(src);
    vfio_io_device_close(dst);
    edu_server_stop(&a);
    edu_server_stop(&b);
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("migration: ok\n");
    return 0;
}
