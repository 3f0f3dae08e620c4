/* `vfio-io serve MODEL` (edu unless said otherwise) in a child process, for
 * the C tests: start it on a socket in a fresh folder, connect once it
 * listens, stop it with SIGTERM.
 * Header-only; each test program is one translation unit. */
#ifndef VFIO_IO_EDU_SERVER_H
#define VFIO_IO_EDU_SERVER_H

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <vfio-io.h>

struct edu_server {
    pid_t pid;
    char dir[64];
    char sock[128];
};

static inline void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* Starts `bin serve model SOCKET [opt [val]]` on <new folder>/edu.sock
 * (opt and val may be NULL). Returns 0, or -1 with the reason printed. */
static inline int edu_server_start_opt(struct edu_server *s, const char *bin, const char *model,
                                       const char *opt, const char *val)
{
    snprintf(s->dir, sizeof(s->dir), "/tmp/vfio-io-ctest-XXXXXX");
    if (!mkdtemp(s->dir)) {
        perror("mkdtemp");
        return -1;
    }
    snprintf(s->sock, sizeof(s->sock), "%s/edu.sock", s->dir);
    s->pid = fork();
    if (s->pid < 0) {
        perror("fork");
        return -1;
    }
    if (s->pid == 0) {
        /* A NULL opt or val ends the argument list early. */
        execl(bin, "vfio-io", "serve", model, s->sock, opt, val, (char *)NULL);
        perror("exec vfio-io");
        _exit(127);
    }
    return 0;
}

/* Starts `bin serve model` on <new folder>/edu.sock. Returns 0, or -1 with
 * the reason printed. */
static inline int edu_server_start_model(struct edu_server *s, const char *bin, const char *model)
{
    return edu_server_start_opt(s, bin, model, NULL, NULL);
}

/* Starts `bin serve edu`, as edu_server_start_model does. */
static inline int edu_server_start(struct edu_server *s, const char *bin)
{
    return edu_server_start_model(s, bin, "edu");
}

/* Connects through the C ABI with client options `opts` (NULL: defaults),
 * waiting up to 30 s for the server to listen (a watchdog: a loaded machine
 * may be slow to start it). Returns 0 or -errno. */
static inline int edu_server_connect_with(const struct edu_server *s,
                                          const struct vfio_io_user_options *opts,
                                          vfio_io_device **dev)
{
    int r = -ENOENT;
    for (int i = 0; i < 3000 && (r == -ENOENT || r == -ECONNREFUSED); i++) {
        r = vfio_io_user_connect_with(s->sock, opts, dev);
        if (r != 0)
            sleep_ms(10);
    }
    return r;
}

/* Connects with the default options, as edu_server_connect_with does. */
static inline int edu_server_connect(const struct edu_server *s, vfio_io_device **dev)
{
    return edu_server_connect_with(s, NULL, dev);
}

/* Sends SIGTERM and reaps the server; returns its wait status. The folder is
 * removed only if the server removed its socket, so a leftover stays visible. */
static inline int edu_server_stop(struct edu_server *s)
{
    int status = 0;
    kill(s->pid, SIGTERM);
    waitpid(s->pid, &status, 0);
    rmdir(s->dir);
    return status;
}

#endif
