/* The capability mask through the public C ABI, checked against what each
 * device then does: `vfio-io serve edu` traps every access (posted writes,
 * nothing to mmap); `vfio-io serve scratch` offers BAR2 as shared memory, so
 * the library maps it and posted writes wait (POSTED_WRITES clear), while the
 * caller can mmap the region fd itself (REGION_MMAP, REGION_FDS).
 * argv[1] is the vfio-io binary. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <vfio-io.h>

#include "check.h"
#include "edu_server.h"



static vfio_io_device *serve_and_connect(struct edu_server *srv, const char *bin, const char *model)
{
    vfio_io_device *dev = NULL;
    if (edu_server_start_model(srv, bin, model) != 0)
        return NULL;
    int r = edu_server_connect(srv, &dev);
    CHECK(r == 0 && dev, "connect to %s: %d (%s)", model, r, strerror(-r));
    return r == 0 ? dev : NULL;
}

/* A posted write followed by a read of the same register: the read sees it. */
static void posted_then_read(vfio_io_device *dev, const vfio_io_ops *ops, uint8_t bar, off_t off)
{
    uint32_t v = 0x5a5a1234, back = 0;
    CHECK(ops->region_write(dev, bar, off, 4, &v, true) == 4, "posted write");
    CHECK(ops->region_read(dev, bar, off, 4, &back) == 4, "read after posted write");
    /* edu's liveness register reads back inverted; scratch's as written. */
    CHECK(back == v || back == ~v, "read %#x after posting %#x", back, v);
}

static void trapped_device(const char *bin)
{
    struct edu_server srv;
    vfio_io_device *dev = serve_and_connect(&srv, bin, "edu");
    if (!dev)
        return;
    const vfio_io_ops *ops = vfio_io_device_ops(dev);
    uint64_t caps = ops->capabilities;
    CHECK(caps & VFIO_IO_CAP_POSTED_WRITES, "trapped device lacks POSTED_WRITES: %#llx",
          (unsigned long long)caps);
    CHECK(!(caps & (VFIO_IO_CAP_REGION_MMAP | VFIO_IO_CAP_REGION_FDS)),
          "trapped device claims mmap: %#llx", (unsigned long long)caps);
    struct vfio_region_info ri = { .argsz = sizeof(ri), .index = VFIO_PCI_BAR0_REGION_INDEX };
    int fd = -2;
    CHECK(ops->get_region_info(dev, &ri, &fd) == 0 && fd == -1 && !(ri.flags & VFIO_REGION_INFO_FLAG_MMAP),
          "BAR0 of a trapped device offers memory (fd %d, flags %#x)", fd, ri.flags);
    posted_then_read(dev, ops, VFIO_PCI_BAR0_REGION_INDEX, 0x04);
    vfio_io_device_close(dev);
    edu_server_stop(&srv);
}

static void mapped_device(const char *bin)
{
    struct edu_server srv;
    vfio_io_device *dev = serve_and_connect(&srv, bin, "scratch");
    if (!dev)
        return;
    const vfio_io_ops *ops = vfio_io_device_ops(dev);
    uint64_t caps = ops->capabilities;
    CHECK(!(caps & VFIO_IO_CAP_POSTED_WRITES), "mapped device claims POSTED_WRITES: %#llx",
          (unsigned long long)caps);
    CHECK((caps & (VFIO_IO_CAP_REGION_MMAP | VFIO_IO_CAP_REGION_FDS)) ==
              (VFIO_IO_CAP_REGION_MMAP | VFIO_IO_CAP_REGION_FDS),
          "mapped device lacks REGION_MMAP|REGION_FDS: %#llx", (unsigned long long)caps);
    CHECK(caps & VFIO_IO_CAP_RESET, "scratch declares reset: %#llx", (unsigned long long)caps);

    /* REGION_FDS and REGION_MMAP: the fd comes with the info and maps the memory. */
    struct vfio_region_info ri = { .argsz = sizeof(ri), .index = VFIO_PCI_BAR2_REGION_INDEX };
    int fd = -1;
    int r = ops->get_region_info(dev, &ri, &fd);
    CHECK(r == 0 && fd >= 0 && (ri.flags & VFIO_REGION_INFO_FLAG_MMAP), "BAR2 info: r=%d fd=%d flags=%#x",
          r, fd, ri.flags);
    if (r == 0 && fd >= 0) {
        uint32_t *p = mmap(NULL, ri.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)ri.offset);
        CHECK(p != MAP_FAILED, "mmap of BAR2: %s", strerror(errno));
        if (p != MAP_FAILED) {
            p[16] = 0xfeedf00d;
            uint32_t v = 0;
            CHECK(ops->region_read(dev, VFIO_PCI_BAR2_REGION_INDEX, 64, 4, &v) == 4 && v == 0xfeedf00d,
                  "the caller's mapping and the library's read disagree: %#x", v);
            munmap(p, ri.size);
        }
        close(fd);
    }
    posted_then_read(dev, ops, VFIO_PCI_BAR0_REGION_INDEX, 0x10);

    /* RESET: the scratch device zeroes its registers. */
    CHECK(vfio_io_device_reset(dev) == 0, "reset");
    uint32_t after = 1;
    CHECK(ops->region_read(dev, VFIO_PCI_BAR0_REGION_INDEX, 0x10, 4, &after) == 4 && after == 0,
          "register after reset: %#x", after);
    vfio_io_device_close(dev);
    edu_server_stop(&srv);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s VFIO_IO_BINARY\n", argv[0]);
        return 2;
    }
    for (uint64_t bit = 1; bit; bit <<= 1) {
        const char *name = vfio_io_capability_name(bit);
        if (bit <= VFIO_IO_CAP_IOEVENTFD) /* the highest bit defined */
            CHECK(name != NULL, "bit %#llx has no name", (unsigned long long)bit);
        else
            CHECK(name == NULL, "unknown bit %#llx named %s", (unsigned long long)bit, name);
    }
    CHECK(strcmp(vfio_io_capability_name(VFIO_IO_CAP_POSTED_WRITES), "POSTED_WRITES") == 0, "name");
    trapped_device(argv[1]);
    mapped_device(argv[1]);
    if (failures)
        fprintf(stderr, "%d check(s) failed\n", failures);
    return failures ? 1 : 0;
}
