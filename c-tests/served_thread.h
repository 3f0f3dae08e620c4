/* A device written in C served through vfio_io_server_* on a thread of the
 * test program, a log handler that counts error lines, and 32-bit register
 * access through the client's ops table, for the C tests of the server API. Uses CHECK (check.h).
 * Header-only; each test program is one translation unit. */
#ifndef VFIO_IO_SERVED_THREAD_H
#define VFIO_IO_SERVED_THREAD_H

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <vfio-io.h>

#include "check.h"

/* Error lines the library logged so far. */
static int log_errors;

/* The log handler: prints each line, counts the errors. */
static void count_log(int level, const char *msg, void *opaque)
{
    (void)opaque;
    if (level <= VFIO_IO_LOG_ERROR)
        log_errors++;
    fprintf(stderr, "log %d: %s\n", level, msg);
}

/* Installs count_log and makes the folder for the sockets from `templ`
 * (a mkdtemp template, rewritten in place): 0, or -1 with the reason printed. */
static inline int served_begin(char *templ)
{
    vfio_io_set_log_handler(count_log, NULL, VFIO_IO_LOG_WARNING);
    if (!mkdtemp(templ)) {
        perror("mkdtemp");
        return -1;
    }
    return 0;
}

/* A server listening on <dir>/<name>, run on its own thread. */
struct served {
    char sock[128];
    pthread_t thread;
    vfio_io_server *srv;
};

/* Creates the server of `desc` and `ops` with `opaque` on <dir>/<name>.
 * Returns vfio_io_server_create's result. */
static inline int served_create(struct served *s, const char *dir, const char *name,
                                const struct vfio_io_server_device *desc,
                                const struct vfio_io_server_ops *ops, void *opaque)
{
    snprintf(s->sock, sizeof(s->sock), "%s/%s", dir, name);
    int r = vfio_io_server_create(s->sock, desc, ops, opaque, &s->srv);
    CHECK(r == 0, "vfio_io_server_create %s: %d (%s)", name, r, strerror(-r));
    return r;
}

/* A server thread's body: vfio_io_server_run's result as the thread's. */
static void *served_run(void *srv)
{
    return (void *)(intptr_t)vfio_io_server_run(srv);
}

/* Starts serving on a new thread: 0, or -errno with the server destroyed. */
static inline int served_start(struct served *s)
{
    int r = pthread_create(&s->thread, NULL, served_run, s->srv);
    CHECK(r == 0, "server thread for %s", s->sock);
    if (r != 0)
        vfio_io_server_destroy(s->srv);
    return -r;
}

/* Stops the server, joins its thread (run must have returned 0) and frees it. */
static inline void served_stop(struct served *s)
{
    vfio_io_server_stop(s->srv);
    void *ret = NULL;
    pthread_join(s->thread, &ret);
    CHECK((intptr_t)ret == 0, "vfio_io_server_run returned %ld", (long)(intptr_t)ret);
    vfio_io_server_destroy(s->srv);
}

/* Region `index`'s 32 bits at `off`, read through the ops table (a failed
 * read is a CHECK failure and gives 0xffffffff). */
static inline uint32_t region_rd32(vfio_io_device *dev, uint32_t index, off_t off)
{
    uint32_t v = 0xffffffff;
    int r = vfio_io_device_ops(dev)->region_read(dev, index, off, 4, &v);
    CHECK(r == 4, "region %u read at %#lx returned %d", index, (long)off, r);
    return v;
}

/* BAR0's 32 bits at `off` through `ops` (a failed read is a CHECK failure
 * and gives 0xffffffff). */
static inline uint32_t rd32(vfio_io_device *dev, const vfio_io_ops *ops, off_t off)
{
    uint32_t v = 0xffffffff;
    int r = ops->region_read(dev, VFIO_PCI_BAR0_REGION_INDEX, off, 4, &v);
    CHECK(r == 4, "region_read at %#lx returned %d", (long)off, r);
    return v;
}

/* Writes `v` to BAR0 at `off` through `ops`; a failure is a CHECK failure. */
static inline void wr32(vfio_io_device *dev, const vfio_io_ops *ops, off_t off, uint32_t v)
{
    int r = ops->region_write(dev, VFIO_PCI_BAR0_REGION_INDEX, off, 4, &v, false);
    CHECK(r == 4, "region_write at %#lx returned %d", (long)off, r);
}

/* Writes `v` to region `index` at `off`: the ops table's result (4 or -errno). */
static inline int region_wr32(vfio_io_device *dev, uint32_t index, off_t off, uint32_t v)
{
    return vfio_io_device_ops(dev)->region_write(dev, index, off, 4, &v, false);
}

#endif
