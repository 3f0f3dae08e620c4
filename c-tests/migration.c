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

#include "edu_check.h"
#include "edu_server.h"

static uint32_t state_of(vfio_io_device *dev)
{
    uint32_t s = 0xffffffff;
    int r = vfio_io_migration_get_state(dev, &s);
    CHECK(r == 0, "get_state returned %d", r);
    return s;
}

static void migrate(vfio_io_device *src, vfio_io_device *dst)
{
    CHECK(vfio_io_device_capabilities(src) & VFIO_IO_CAP_MIGRATION, "edu migrates");

    edu_make_busy(src);
    CHECK(state_of(src) == VFIO_DEVICE_STATE_RUNNING, "source starts RUNNING");

    /* Misuse: ERROR cannot be asked for; no data moves while RUNNING. */
    char buf[512] = { 0 };
    CHECK(vfio_io_migration_set_state(src, VFIO_DEVICE_STATE_ERROR) == -EINVAL, "ERROR");
    CHECK(vfio_io_migration_read(src, buf, sizeof(buf)) == -EINVAL, "read while RUNNING");
    CHECK(vfio_io_migration_write(src, buf, sizeof(buf)) == -EINVAL, "write while RUNNING");
    CHECK(vfio_io_migration_read(src, NULL, 4) == -EINVAL, "NULL buffer");
    CHECK(vfio_io_migration_get_state(NULL, NULL) == -EINVAL, "NULL handle");

    /* RUNNING -> STOP_COPY walks through STOP. */
    int r = vfio_io_migration_set_state(src, VFIO_DEVICE_STATE_STOP_COPY);
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

    edu_check_arrived(dst);

    r = vfio_io_migration_set_state(src, VFIO_DEVICE_STATE_RUNNING);
    CHECK(r == 0, "source back to RUNNING: %d", r);
    wr32(src, FACTORIAL, 3);
    CHECK(rd32(src, FACTORIAL) == 6, "the source runs again");
}

int main(int argc, char **argv)
{
    return edu_pair_main(argc, argv, "migration", migrate);
}
