/* sample_device_server SOCKET: serves the device of sample_device.c (BAR0
 * only) to vfio-user clients, one after another, until SIGTERM or SIGINT;
 * then stops, removes the socket and exits 0.
 *
 * Both signals are blocked in every thread and taken by sigwait on a thread
 * of their own, which calls vfio_io_server_stop: the stop then happens
 * outside a signal handler, where any call is allowed. */
#define _POSIX_C_SOURCE 200809L /* sigwait, pthread_kill */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <vfio-io.h>

#include "sample_device.h"

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

    struct sample_device d;
    r = sample_device_create(&d, argv[1], -1, 0);
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
