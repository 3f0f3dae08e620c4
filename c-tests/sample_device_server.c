/* sample_device_server SOCKET: serves the device of sample_device.c to
 * vfio-user clients, one after another, until SIGTERM or SIGINT; then stops,
 * removes the socket and exits 0. BAR2 is a 4 KiB memfd offered for mmap
 * (its region info carries capabilities), holding SAMPLE_BAR2_MARK at 0.
 *
 * Both signals are blocked in every thread and taken by sigwait on a thread
 * of their own, which calls vfio_io_server_stop: the stop then happens
 * outside a signal handler, where any call is allowed. */
#define _GNU_SOURCE /* memfd_create; sigwait, pthread_kill */
#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <vfio-io.h>

#include "sample_device.h"

#define BAR2_SIZE 4096
/* What a client reads at offset 0 of BAR2 (vm/qemu-client-test checks it). */
#define SAMPLE_BAR2_MARK 0xb2b2c0deu

/* A memfd of BAR2_SIZE bytes holding SAMPLE_BAR2_MARK at 0, or -1. */
static int bar2_memfd(void)
{
    int fd = memfd_create("sample-device-bar2", MFD_CLOEXEC);
    uint32_t mark = SAMPLE_BAR2_MARK;
    if (fd < 0)
        return -1;
    if (ftruncate(fd, BAR2_SIZE) != 0 || pwrite(fd, &mark, sizeof(mark), 0) != sizeof(mark)) {
        close(fd);
        return -1;
    }
    return fd;
}

static void log_line(int level, const char *msg, void *opaque)
{
    (void)opaque;
    fprintf(stderr, "sample_device_server: log %d: %s\n", level, msg);
}

struct watch {
    sigset_t set;
    vfio_io_server *srv;
};

static void *watch_signals(void *arg)
{
    struct watch *w = arg;
    int sig = 0;
    if (sigwait(&w->set, &sig) == 0)
        fprintf(stderr, "sample_device_server: signal %d, stopping\n", sig);
    vfio_io_server_stop(w->srv);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s SOCKET\n", argv[0]);
        return 2;
    }
    vfio_io_set_log_handler(log_line, NULL, VFIO_IO_LOG_INFO);

    /* Blocked before any thread starts, so every thread inherits the mask. */
    struct watch w;
    sigemptyset(&w.set);
    sigaddset(&w.set, SIGTERM);
    sigaddset(&w.set, SIGINT);
    int r = pthread_sigmask(SIG_BLOCK, &w.set, NULL);
    if (r != 0) {
        fprintf(stderr, "sample_device_server: pthread_sigmask: %s\n", strerror(r));
        return 1;
    }

    int bar2 = bar2_memfd();
    if (bar2 < 0) {
        fprintf(stderr, "sample_device_server: BAR2 memfd: %s\n", strerror(errno));
        return 1;
    }
    struct sample_device d;
    r = sample_device_create(&d, argv[1], bar2, BAR2_SIZE);
    close(bar2); /* the library keeps its own duplicate */
    if (r != 0) {
        fprintf(stderr, "sample_device_server: vfio_io_server_create(%s): %s\n", argv[1],
                strerror(-r));
        return 1;
    }
    w.srv = d.srv;
    pthread_t watcher;
    r = pthread_create(&watcher, NULL, watch_signals, &w);
    if (r != 0) {
        fprintf(stderr, "sample_device_server: pthread_create: %s\n", strerror(r));
        vfio_io_server_destroy(d.srv);
        return 1;
    }
    fprintf(stderr, "sample_device_server: serving %04x:%04x on %s\n", SAMPLE_VENDOR_ID,
            SAMPLE_DEVICE_ID, argv[1]);

    r = vfio_io_server_run(d.srv);
    if (r != 0) {
        /* run failed on its own: stop it and wake the watcher. */
        fprintf(stderr, "sample_device_server: vfio_io_server_run: %s\n", strerror(-r));
        pthread_kill(watcher, SIGTERM);
    }
    pthread_join(watcher, NULL);
    vfio_io_server_destroy(d.srv); /* removes the socket file */
    fprintf(stderr, "sample_device_server: stopped after %d resets\n", d.resets);
    return r == 0 ? 0 : 1;
}
