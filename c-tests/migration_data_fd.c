/* Migrates edu between two `vfio-io serve edu` servers the way QEMU's
 * hw/vfio/migration.c does on kernel VFIO: SET MIG_DEVICE_STATE through
 * ops->device_feature, the stream read to EOF from the data_fd STOP_COPY
 * hands out and written into the one RESUMING hands out. Checks that a data
 * fd left open still gets every byte applied, that a corrupt stream fails
 * the next state change with -EINVAL, that a reader closing early costs no
 * SIGPIPE, and that no fd or thread is left. argv[1] is the vfio-io binary. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <vfio-io.h>

#include "edu_check.h"
#include "edu_server.h"

/* edu's stream is about 4.4 KiB. */
enum { MAX_STREAM = 64 * 1024 };

/* MIG_DEVICE_STATE with `flags` (GET or SET), as QEMU builds it. Returns
 * device_feature's result; *state and *data_fd get the struct's fields. */
static int mig_feature(vfio_io_device *dev, uint32_t flags, uint32_t *state, int *data_fd)
{
    uint64_t buf[(sizeof(struct vfio_device_feature) +
                  sizeof(struct vfio_device_feature_mig_state) + 7) / 8] = { 0 };
    struct vfio_device_feature *feature = (struct vfio_device_feature *)buf;
    struct vfio_device_feature_mig_state *mig = (void *)feature->data;
    feature->argsz = sizeof(buf);
    feature->flags = flags | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE;
    mig->device_state = *state;
    mig->data_fd = 0x5a5a;
    int r = vfio_io_device_ops(dev)->device_feature(dev, feature);
    *state = mig->device_state;
    *data_fd = mig->data_fd;
    return r;
}

/* SET: returns 0 or -errno; *data_fd is the new fd or -1. */
static int set_state(vfio_io_device *dev, uint32_t state, int *data_fd)
{
    return mig_feature(dev, VFIO_DEVICE_FEATURE_SET, &state, data_fd);
}

static uint32_t get_state(vfio_io_device *dev)
{
    uint32_t state = 0xffffffff;
    int fd = 0;
    int r = mig_feature(dev, VFIO_DEVICE_FEATURE_GET, &state, &fd);
    CHECK(r == 0 && fd == -1, "GET returned %d with data_fd %d", r, fd);
    return state;
}

/* SET with no data: data_fd must be -1. */
static void set_no_data(vfio_io_device *dev, uint32_t state)
{
    int fd = 0;
    int r = set_state(dev, state, &fd);
    CHECK(r == 0 && fd == -1, "SET %u returned %d with data_fd %d", state, r, fd);
}

/* Reads fd to EOF into buf; returns the length. */
static size_t read_to_eof(int fd, uint8_t *buf)
{
    size_t len = 0;
    while (len < MAX_STREAM) {
        ssize_t n = read(fd, buf + len, MAX_STREAM - len);
        if (n < 0 && errno == EINTR)
            continue;
        CHECK(n >= 0, "read of the data fd: %s", strerror(errno));
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    return len;
}

static void write_all(int fd, const uint8_t *buf, size_t len)
{
    for (size_t done = 0; done < len;) {
        size_t step = len - done < 1000 ? len - done : 1000;
        ssize_t n = write(fd, buf + done, step);
        if (n < 0 && errno == EINTR)
            continue;
        CHECK(n > 0, "write of the data fd: %s", strerror(errno));
        if (n <= 0)
            return;
        done += (size_t)n;
    }
}

/* Moves dst to RESUMING and writes stream into its data fd; returns the fd. */
static int load(vfio_io_device *dst, const uint8_t *stream, size_t len)
{
    int fd = -1;
    int r = set_state(dst, VFIO_DEVICE_STATE_RESUMING, &fd);
    CHECK(r == 0 && fd >= 0, "RESUMING returned %d with data_fd %d", r, fd);
    if (fd >= 0)
        write_all(fd, stream, len);
    return fd;
}

/* Entries of a /proc/self directory (fds or threads). */
static int count(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

/* Waits (at most 50 looks) for dir to hold `want` entries again: a joined
 * thread leaves /proc a moment later. */
static int settle(const char *dir, int want)
{
    int n = count(dir);
    for (int i = 0; i < 50 && n != want; i++) {
        sleep_ms(10);
        n = count(dir);
    }
    return n;
}

static void migrate_steps(vfio_io_device *src, vfio_io_device *dst)
{
    static uint8_t stream[MAX_STREAM], bad[MAX_STREAM];
    edu_make_busy(src);
    CHECK(get_state(src) == VFIO_DEVICE_STATE_RUNNING, "source starts RUNNING");

    /* A reader that closes at once: no SIGPIPE kills this process. */
    int fd = -1;
    int r = set_state(src, VFIO_DEVICE_STATE_STOP_COPY, &fd);
    CHECK(r == 0 && fd >= 0, "STOP_COPY returned %d with data_fd %d", r, fd);
    close(fd);
    set_no_data(src, VFIO_DEVICE_STATE_STOP);

    /* STOP -> STOP_COPY: the stream, read to EOF. */
    r = set_state(src, VFIO_DEVICE_STATE_STOP_COPY, &fd);
    CHECK(r == 0 && fd >= 0, "STOP_COPY returned %d with data_fd %d", r, fd);
    CHECK(get_state(src) == VFIO_DEVICE_STATE_STOP_COPY, "source in STOP_COPY");
    size_t len = fd >= 0 ? read_to_eof(fd, stream) : 0;
    close(fd);
    CHECK(len > 4096, "the stream carries the DMA buffer: %zu bytes", len);
    set_no_data(src, VFIO_DEVICE_STATE_STOP);

    /* A corrupt stream: the state change after it fails with -EINVAL. */
    memcpy(bad, stream, len);
    bad[len / 2] ^= 1;
    wr32(dst, LIVENESS, 0x1234);
    fd = load(dst, bad, len);
    close(fd);
    r = set_state(dst, VFIO_DEVICE_STATE_STOP, &fd);
    CHECK(r == -EINVAL, "STOP after a corrupt stream returned %d", r);
    CHECK(get_state(dst) == VFIO_DEVICE_STATE_RESUMING, "still RESUMING");
    CHECK(rd32(dst, LIVENESS) == ~0x1234u, "the destination kept its state");
    /* It takes a whole stream again (the explicit call: no new data fd
     * without leaving RESUMING). */
    CHECK(vfio_io_migration_write(dst, stream, len) == (ssize_t)len, "good stream");
    set_no_data(dst, VFIO_DEVICE_STATE_RUNNING);

    /* The good stream through a data fd left open across the change. */
    fd = load(dst, stream, len);
    set_no_data(dst, VFIO_DEVICE_STATE_RUNNING);
    close(fd);
    CHECK(get_state(dst) == VFIO_DEVICE_STATE_RUNNING, "destination RUNNING");
    edu_check_arrived(dst);

    set_no_data(src, VFIO_DEVICE_STATE_RUNNING);
    wr32(src, FACTORIAL, 3);
    CHECK(rd32(src, FACTORIAL) == 6, "the source runs again");
}

/* migrate_steps, and no fd or thread left after it. */
static void migrate(vfio_io_device *src, vfio_io_device *dst)
{
    int fds = count("/proc/self/fd"), threads = count("/proc/self/task");
    migrate_steps(src, dst);
    CHECK(settle("/proc/self/fd", fds) == fds, "fds leaked");
    CHECK(settle("/proc/self/task", threads) == threads, "threads leaked");
}

int main(int argc, char **argv)
{
    return edu_pair_main(argc, argv, "migration_data_fd", migrate);
}
