/* vfio_io_user_connect_with against `vfio-io serve edu --spin-us 50`: a
 * polling client reads and writes edu's registers, a caller with a larger
 * (newer) options struct is accepted while its extra bytes are zero, and
 * misuse gets its documented -errno with *out left alone. argv[1] is the
 * vfio-io binary. */
#define _GNU_SOURCE
#include <string.h>

#include "check.h"
#include "edu_server.h"

enum { ID = 0x00, LIVENESS = 0x04, EDU_ID = 0x010000ed };

/* What a caller built against a later header might pass: today's fields,
 * then one this library does not know. */
struct newer_options {
    struct vfio_io_user_options known;
    uint64_t later_field;
};

/* Reads ID and flips LIVENESS `rounds` times through the ops table. */
static void exercise(vfio_io_device *dev, int rounds)
{
    const struct vfio_io_ops *ops = vfio_io_device_ops(dev);
    for (int i = 0; i < rounds; i++) {
        uint32_t id = 0, v = (uint32_t)i, back = 0;
        int r = ops->region_read(dev, 0, ID, 4, &id);
        CHECK(r == 4 && id == EDU_ID, "read %d: %d, id %#x", i, r, id);
        r = ops->region_write(dev, 0, LIVENESS, 4, &v, false);
        CHECK(r == 4, "write %d: %d", i, r);
        r = ops->region_read(dev, 0, LIVENESS, 4, &back);
        CHECK(r == 4 && back == ~v, "liveness %d: %d, %#x", i, r, back);
    }
}

/* Connecting with `opts` fails with `want` and leaves *out alone. */
static void refused(const char *sock, const void *opts, int want, const char *what)
{
    vfio_io_device *dev = (vfio_io_device *)&failures; /* a sentinel */
    int r = vfio_io_user_connect_with(sock, (const struct vfio_io_user_options *)opts, &dev);
    CHECK(r == want, "%s: %d, want %d", what, r, want);
    CHECK(dev == (vfio_io_device *)&failures, "%s: *out changed", what);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s VFIO_IO_BINARY\n", argv[0]);
        return 2;
    }
    struct edu_server s;
    if (edu_server_start_opt(&s, argv[1], "edu", "--spin-us", "50"))
        return 1;

    struct vfio_io_user_options opts = { 0 };
    opts.size = sizeof(opts);
    opts.timeout_ms = 10000;
    opts.spin_us = 50;
    vfio_io_device *dev = NULL;
    int r = edu_server_connect_with(&s, &opts, &dev);
    CHECK(r == 0 && dev, "connect with options: %d", r);
    if (dev) {
        exercise(dev, 1000);
        vfio_io_device_close(dev);
    }

    /* A newer caller's struct: larger, its unknown field zero, is accepted. */
    struct newer_options newer;
    memset(&newer, 0, sizeof(newer));
    newer.known.size = sizeof(newer);
    newer.known.spin_us = 20;
    dev = NULL;
    r = vfio_io_user_connect_with(s.sock, &newer.known, &dev);
    CHECK(r == 0 && dev, "larger struct, zero tail: %d", r);
    if (dev) {
        exercise(dev, 100);
        vfio_io_device_close(dev);
    }
    /* NULL options: the defaults (blocking). */
    dev = NULL;
    r = vfio_io_user_connect_with(s.sock, NULL, &dev);
    CHECK(r == 0 && dev, "NULL options: %d", r);
    if (dev) {
        exercise(dev, 10);
        vfio_io_device_close(dev);
    }

    /* Misuse. */
    newer.later_field = 1;
    refused(s.sock, &newer, -E2BIG, "unknown field set");
    newer.later_field = 0;
    struct vfio_io_user_options bad = opts;
    bad.size = 8;
    refused(s.sock, &bad, -EINVAL, "size short of the first fields");
    bad.size = 0;
    refused(s.sock, &bad, -EINVAL, "size 0");
    bad.size = 4097;
    refused(s.sock, &bad, -E2BIG, "size past a page");
    refused(NULL, &opts, -EINVAL, "NULL path");
    CHECK(vfio_io_user_connect_with(s.sock, &opts, NULL) == -EINVAL, "NULL out");
    char gone[160];
    snprintf(gone, sizeof(gone), "%s/none.sock", s.dir);
    refused(gone, &opts, -ENOENT, "nothing listening");

    int status = edu_server_stop(&s);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "server exit status %#x", status);
    if (failures)
        fprintf(stderr, "%d failures\n", failures);
    return failures ? 1 : 0;
}
