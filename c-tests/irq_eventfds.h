/* Attaching eventfds to a device's interrupt vectors through the ops table,
 * and waiting for one, for the C tests.
 * Header-only; each test program is one translation unit. */
#ifndef VFIO_IO_IRQ_EVENTFDS_H
#define VFIO_IO_IRQ_EVENTFDS_H

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <vfio-io.h>

/* Attaches fds[0..n) as the triggers of vectors start..start+n of IRQ
 * index `index` (an fd of -1 detaches its vector). Returns set_irqs'
 * result, or -ENOMEM. */
static inline int set_irq_eventfds(vfio_io_device *dev, uint32_t index, uint32_t start,
                                   const int32_t *fds, uint32_t n)
{
    size_t len = sizeof(struct vfio_irq_set) + n * sizeof(int32_t);
    struct vfio_irq_set *set = calloc(1, len);
    if (!set)
        return -ENOMEM;
    set->argsz = (uint32_t)len;
    set->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
    set->index = index;
    set->start = start;
    set->count = n;
    memcpy(set->data, fds, n * sizeof(int32_t));
    int r = vfio_io_device_ops(dev)->set_irqs(dev, set);
    free(set);
    return r;
}

/* Whether eventfd `fd` is signalled within `ms` milliseconds (a watchdog,
 * not a bound on speed). */
static inline int eventfd_signalled(int fd, int ms)
{
    struct pollfd pfd = { fd, POLLIN, 0 };
    return poll(&pfd, 1, ms) == 1;
}

#endif
