/* A device written in C with migration callbacks, served twice through
 * vfio_io_server_* (a source and a destination, each on its own thread)
 * and moved from one to the other with the vfio_io_migration_* calls.
 *
 * BAR0 (16 KiB, every access a callback):
 *   0x00 ID (read-only)      0x04 A          0x08 B (read/write)
 *   0x0c FETCHES: how many FETCH writes ran (read-only)
 *   0x10 DMA_ADDR (64 bit)   0x18 FETCH: a write reads BUF_SIZE bytes of
 *        client memory at DMA_ADDR into BUF by DMA (-EBUSY while stopped)
 *   0x1c STOPPED (read-only): 1 between migration_stop and _resume
 *   0x2000 BUF (read-only, BUF_SIZE bytes)
 * The state (about 8 KiB) is longer than the library's first save buffer,
 * so migration_save is asked twice. migration_stop raises MSI vector 0.
 * No vfio-io binary is needed. */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <vfio-io.h>

#include "check.h"
#include "irq_eventfds.h"
#include "served_thread.h"

#define DEV_ID 0xc0de0002u
#define BAR0_SIZE 0x4000
#define BUF_OFF 0x2000
#define BUF_SIZE 0x2000
#define IOVA 0x100000ull
#define STATE_MAGIC "CMIG"
#define MAX_STATE 0x4000

/* Registers by dword: BAR0 offset / 4. */
enum { REG_ID, REG_A, REG_B, REG_FETCHES, REG_DMA_LO, REG_DMA_HI, REG_FETCH, REG_STOPPED, NREGS };
/* The registers a client write stores. */
static const uint32_t writable = 1u << REG_A | 1u << REG_B | 1u << REG_DMA_LO | 1u << REG_DMA_HI;

struct mig_device {
    vfio_io_server *srv;
    uint32_t regs[NREGS];
    uint8_t buf[BUF_SIZE];
    /* What the test looks at directly. */
    int save_calls, load_calls, loads_refused, resumes;
    int stop_irq, save_irq;
};

/* The state stream: magic, the registers, BUF. */
struct mig_state {
    char magic[4];
    uint32_t regs[NREGS];
    uint8_t buf[BUF_SIZE];
};

static ssize_t dev_read(void *opaque, uint32_t index, uint64_t offset, void *buf, uint32_t count)
{
    struct mig_device *d = opaque;
    if (index != VFIO_PCI_BAR0_REGION_INDEX || count != 4 || offset % 4)
        return -EINVAL;
    if (offset >= BUF_OFF)
        memcpy(buf, d->buf + (offset - BUF_OFF), 4);
    else if (offset / 4 < NREGS)
        memcpy(buf, &d->regs[offset / 4], 4);
    else
        return -EINVAL;
    return count;
}

/* FETCH: BUF_SIZE bytes of client memory at DMA_ADDR into BUF. */
static ssize_t fetch(struct mig_device *d)
{
    if (d->regs[REG_STOPPED])
        return -EBUSY;
    uint64_t iova = (uint64_t)d->regs[REG_DMA_HI] << 32 | d->regs[REG_DMA_LO];
    int r = vfio_io_server_dma_read(d->srv, iova, d->buf, BUF_SIZE);
    if (r < 0)
        return r;
    d->regs[REG_FETCHES]++;
    return 4;
}

static ssize_t dev_write(void *opaque, uint32_t index, uint64_t offset, const void *buf,
                         uint32_t count)
{
    struct mig_device *d = opaque;
    if (index != VFIO_PCI_BAR0_REGION_INDEX || count != 4 || offset % 4 || offset / 4 >= NREGS)
        return -EINVAL;
    if (offset / 4 == REG_FETCH)
        return fetch(d);
    if (!(writable & 1u << (offset / 4)))
        return -EROFS;
    memcpy(&d->regs[offset / 4], buf, 4);
    return count;
}

static int mig_stop(void *opaque)
{
    struct mig_device *d = opaque;
    d->regs[REG_STOPPED] = 1;
    d->stop_irq = vfio_io_server_irq_trigger(d->srv, VFIO_PCI_MSI_IRQ_INDEX, 0);
    return 0;
}

static int mig_resume(void *opaque)
{
    struct mig_device *d = opaque;
    d->regs[REG_STOPPED] = 0;
    d->resumes++;
    return 0;
}

static ssize_t mig_save(void *opaque, void *buf, size_t len)
{
    struct mig_device *d = opaque;
    d->save_calls++;
    d->save_irq = vfio_io_server_irq_trigger(d->srv, VFIO_PCI_MSI_IRQ_INDEX, 0);
    struct mig_state s;
    if (len < sizeof(s))
        return sizeof(s);
    memcpy(s.magic, STATE_MAGIC, 4);
    memcpy(s.regs, d->regs, sizeof(s.regs));
    memcpy(s.buf, d->buf, BUF_SIZE);
    memcpy(buf, &s, sizeof(s));
    return sizeof(s);
}

static int mig_load(void *opaque, const void *buf, size_t len)
{
    struct mig_device *d = opaque;
    struct mig_state s;
    d->load_calls++;
    if (len != sizeof(s) || memcmp(buf, STATE_MAGIC, 4) != 0) {
        d->loads_refused++;
        return -EINVAL;
    }
    memcpy(&s, buf, sizeof(s));
    if (s.regs[REG_ID] != DEV_ID || s.regs[REG_STOPPED] != 1) {
        d->loads_refused++;
        return -EINVAL;
    }
    /* Loaded into a stopped device, which stays stopped until resumed. */
    memcpy(d->regs, s.regs, sizeof(d->regs));
    memcpy(d->buf, s.buf, BUF_SIZE);
    return 0;
}

static uint32_t mig_state_of(vfio_io_device *dev)
{
    uint32_t s = 0xffffffff;
    int r = vfio_io_migration_get_state(dev, &s);
    CHECK(r == 0, "get_state returned %d", r);
    return s;
}

/* Serves mig_device `d` on <dir>/<name>: 0 or -errno. */
static int serve_device(struct served *s, const char *dir, const char *name,
                        const struct vfio_io_server_device *desc,
                        const struct vfio_io_server_ops *ops, struct mig_device *d)
{
    int r = served_create(s, dir, name, desc, ops, d);
    if (r != 0)
        return r;
    d->srv = s->srv;
    d->regs[REG_ID] = DEV_ID;
    return served_start(s);
}

/* Hooks given in part, or without a longest state, are refused and logged;
 * ops of the size before the migration fields serve a device without
 * migration, as do ops whose hooks are all NULL. */
static void create_checks(const char *dir, const struct vfio_io_server_device *desc,
                          const struct vfio_io_server_ops *ops)
{
    char sock[128];
    snprintf(sock, sizeof(sock), "%s/refused.sock", dir);
    vfio_io_server *srv = (vfio_io_server *)0x1;
    struct vfio_io_server_ops o;
    int before = log_errors;
    o = *ops; o.migration_stop = NULL;
    CHECK(vfio_io_server_create(sock, desc, &o, NULL, &srv) == -EINVAL, "no migration_stop");
    o = *ops; o.migration_resume = NULL;
    CHECK(vfio_io_server_create(sock, desc, &o, NULL, &srv) == -EINVAL, "no migration_resume");
    o = *ops; o.migration_save = NULL;
    CHECK(vfio_io_server_create(sock, desc, &o, NULL, &srv) == -EINVAL, "no migration_save");
    o = *ops; o.migration_load = NULL;
    CHECK(vfio_io_server_create(sock, desc, &o, NULL, &srv) == -EINVAL, "no migration_load");
    o = *ops; o.migration_max_state_len = 0;
    CHECK(vfio_io_server_create(sock, desc, &o, NULL, &srv) == -EINVAL, "longest state 0");
    o = *ops; o.size = offsetof(struct vfio_io_server_ops, migration_stop) + 4;
    CHECK(vfio_io_server_create(sock, desc, &o, NULL, &srv) == -EINVAL, "a size of neither version");
    CHECK(srv == (vfio_io_server *)0x1, "*out written on failure");
    CHECK(log_errors - before == 6, "each refusal logged: %d lines", log_errors - before);

    /* The struct as programs compiled before the migration fields pass it:
     * only its first bytes exist (a heap block of that size, so that
     * reading past it is caught by sanitizers and valgrind). */
    size_t old_size = offsetof(struct vfio_io_server_ops, migration_stop);
    struct vfio_io_server_ops *old = malloc(old_size);
    CHECK(old != NULL, "malloc");
    memcpy(old, ops, old_size);
    old->size = (uint32_t)old_size;
    struct vfio_io_server_ops none = *ops;
    none.migration_stop = NULL;
    none.migration_resume = NULL;
    none.migration_save = NULL;
    none.migration_load = NULL;
    none.migration_max_state_len = 0;
    const struct vfio_io_server_ops *without[] = { old, &none };
    const char *what[] = { "ops of the old size", "ops without hooks" };
    for (int i = 0; i < 2; i++) {
        struct mig_device d = { 0 };
        struct served s;
        if (serve_device(&s, dir, "plain.sock", desc, without[i], &d) != 0)
            continue;
        vfio_io_device *dev = NULL;
        int r = vfio_io_user_connect(s.sock, &dev);
        CHECK(r == 0, "%s: connect %d", what[i], r);
        if (r == 0) {
            CHECK(!(vfio_io_device_capabilities(dev) & VFIO_IO_CAP_MIGRATION),
                  "%s: MIGRATION is clear", what[i]);
            CHECK(region_rd32(dev, 0, 0x00) == DEV_ID, "%s: the region callbacks serve", what[i]);
            uint32_t st;
            CHECK(vfio_io_migration_get_state(dev, &st) == -ENOTTY, "%s: no migration state", what[i]);
            vfio_io_device_close(dev);
        }
        served_stop(&s);
    }
    free(old);
}

/* Reads the source's whole stream into *out (malloc'd); returns its length. */
static size_t read_stream(vfio_io_device *src, uint8_t **out)
{
    size_t cap = MAX_STATE + 4096, total = 0;
    uint8_t *b = malloc(cap);
    CHECK(b != NULL, "malloc");
    for (int i = 0; i < 1000 && b; i++) { /* a bound on reads: the stream is ~8.5 KiB */
        size_t want = cap - total < 1000 ? cap - total : 1000;
        ssize_t n = vfio_io_migration_read(src, b + total, want);
        CHECK(n >= 0, "read returned %zd", n);
        if (n <= 0)
            break;
        total += (size_t)n;
    }
    *out = b;
    return total;
}

static void write_stream(vfio_io_device *dst, const uint8_t *b, size_t len)
{
    for (size_t off = 0; off < len;) {
        size_t n = len - off < 1500 ? len - off : 1500;
        ssize_t w = vfio_io_migration_write(dst, b + off, n);
        CHECK(w == (ssize_t)n, "write of %zu returned %zd", n, w);
        if (w <= 0)
            return;
        off += (size_t)w;
    }
}

static void migrate(vfio_io_device *src, vfio_io_device *dst, struct mig_device *s,
                    struct mig_device *t)
{
    CHECK(vfio_io_device_capabilities(src) & VFIO_IO_CAP_MIGRATION, "MIGRATION set with hooks");
    CHECK(vfio_io_device_capabilities(dst) & VFIO_IO_CAP_MIGRATION, "MIGRATION set on the destination");

    /* The source's state: registers, a DMA-fetched buffer, config space. */
    int mfd = memfd_create("c-mig-dma", MFD_CLOEXEC);
    CHECK(mfd >= 0 && ftruncate(mfd, BUF_SIZE) == 0, "DMA memfd");
    uint8_t *mem = mmap(NULL, BUF_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    CHECK(mem != MAP_FAILED, "mmap");
    if (mem == MAP_FAILED)
        return;
    for (int i = 0; i < BUF_SIZE; i++)
        mem[i] = (uint8_t)(i * 13 + 5);
    CHECK(vfio_io_dma_map(src, IOVA, BUF_SIZE, mem, mfd, 0, VFIO_IO_DMA_READ) == 0, "DMA map");
    CHECK(region_wr32(src, 0, 0x04, 0x11112222) == 4 && region_wr32(src, 0, 0x08, 0x33334444) == 4, "A and B");
    CHECK(region_wr32(src, 0, 0x10, (uint32_t)IOVA) == 4 && region_wr32(src, 0, 0x14, 0) == 4, "DMA_ADDR");
    CHECK(region_wr32(src, 0, 0x18, 1) == 4, "FETCH");
    CHECK(region_wr32(src, 0, 0x00, 1) == -EROFS, "ID is read-only");
    CHECK(region_rd32(src, 0, 0x0c) == 1, "one fetch");
    CHECK(region_wr32(src, VFIO_PCI_CONFIG_REGION_INDEX, 0x10, 0xfebf0000) == 4, "BAR0 address");
    CHECK(region_wr32(src, VFIO_PCI_CONFIG_REGION_INDEX, 0x04, 0x6) == 4, "COMMAND: memory, bus master");

    int32_t efd = eventfd(0, EFD_CLOEXEC);
    CHECK(set_irq_eventfds(src, VFIO_PCI_MSI_IRQ_INDEX, 0, &efd, 1) == 0, "attach the MSI eventfd");

    /* RUNNING -> STOP: migration_stop runs with the context lent. */
    int r = vfio_io_migration_set_state(src, VFIO_DEVICE_STATE_STOP);
    CHECK(r == 0, "source to STOP: %d", r);
    CHECK(s->stop_irq == 1, "irq_trigger inside migration_stop returned %d", s->stop_irq);
    CHECK(eventfd_signalled(efd, 30000), "migration_stop's MSI reached the eventfd");
    close(efd);
    CHECK(region_rd32(src, 0, 0x1c) == 1, "the device knows it is stopped");
    CHECK(region_wr32(src, 0, 0x18, 1) == -EBUSY, "no new work while stopped");

    r = vfio_io_migration_set_state(src, VFIO_DEVICE_STATE_STOP_COPY);
    CHECK(r == 0, "source to STOP_COPY: %d", r);
    CHECK(s->save_calls == 2, "a state past the first buffer is saved in 2 calls: %d", s->save_calls);
    CHECK(s->save_irq == -EBUSY, "no interrupt inside migration_save: %d", s->save_irq);
    uint8_t *stream = NULL;
    size_t len = read_stream(src, &stream);
    CHECK(len > sizeof(struct mig_state) + 256, "the stream carries state and config: %zu bytes", len);
    if (!stream)
        return;

    /* The destination keeps its state through refused streams. */
    CHECK(region_wr32(dst, 0, 0x04, 0xdead) == 4, "destination A before");
    r = vfio_io_migration_set_state(dst, VFIO_DEVICE_STATE_RESUMING);
    CHECK(r == 0, "destination to RESUMING: %d", r);
    uint8_t *magic = memmem(stream, len, STATE_MAGIC, 4);
    CHECK(magic != NULL, "the device's own stream is in the library's");
    if (magic) {
        magic[0] ^= 0xff;
        write_stream(dst, stream, len);
        magic[0] ^= 0xff;
        r = vfio_io_migration_set_state(dst, VFIO_DEVICE_STATE_STOP);
        CHECK(r == -EINVAL, "a stream migration_load refuses: %d", r);
        CHECK(t->load_calls == 1 && t->loads_refused == 1, "migration_load refused it: %d calls",
              t->load_calls);
        CHECK(mig_state_of(dst) == VFIO_DEVICE_STATE_RESUMING, "still RESUMING");
    }
    write_stream(dst, stream, len - 1);
    r = vfio_io_migration_set_state(dst, VFIO_DEVICE_STATE_STOP);
    CHECK(r == -EINVAL, "a truncated stream: %d", r);
    CHECK(t->load_calls == 1, "the library refused it before migration_load: %d", t->load_calls);
    CHECK(region_rd32(dst, 0, 0x04) == 0xdead, "the destination kept its A");
    CHECK((region_rd32(dst, VFIO_PCI_CONFIG_REGION_INDEX, 0x04) & 0xffff) == 0, "the destination kept its COMMAND");

    write_stream(dst, stream, len);
    free(stream);
    r = vfio_io_migration_set_state(dst, VFIO_DEVICE_STATE_RUNNING);
    CHECK(r == 0, "destination to RUNNING: %d", r);
    CHECK(t->load_calls == 2 && t->resumes == 1, "loaded (%d calls) and resumed (%d)",
          t->load_calls, t->resumes);

    /* Register by register. */
    CHECK(region_rd32(dst, 0, 0x04) == 0x11112222, "A arrived");
    CHECK(region_rd32(dst, 0, 0x08) == 0x33334444, "B arrived");
    CHECK(region_rd32(dst, 0, 0x0c) == 1, "FETCHES arrived");
    CHECK(region_rd32(dst, 0, 0x10) == (uint32_t)IOVA && region_rd32(dst, 0, 0x14) == 0, "DMA_ADDR arrived");
    CHECK(region_rd32(dst, 0, 0x1c) == 0, "the destination runs");
    int same = 1;
    for (int off = 0; off < BUF_SIZE; off += 4) {
        uint32_t v = region_rd32(dst, 0, BUF_OFF + off);
        same &= memcmp(&v, mem + off, 4) == 0;
    }
    CHECK(same, "the DMA-fetched buffer arrived");
    CHECK((region_rd32(dst, VFIO_PCI_CONFIG_REGION_INDEX, 0x04) & 0xffff) == 0x6, "COMMAND arrived");
    CHECK(region_rd32(dst, VFIO_PCI_CONFIG_REGION_INDEX, 0x10) == 0xfebf0000, "BAR0 address arrived");
    CHECK(region_rd32(dst, VFIO_PCI_CONFIG_REGION_INDEX, 0x00) == 0xc0de1234, "IDs unchanged");

    r = vfio_io_migration_set_state(src, VFIO_DEVICE_STATE_RUNNING);
    CHECK(r == 0, "source back to RUNNING: %d", r);
    CHECK(s->resumes == 1 && region_rd32(src, 0, 0x1c) == 0, "the source resumed");
    CHECK(region_wr32(src, 0, 0x18, 1) == 4 && region_rd32(src, 0, 0x0c) == 2, "the source works again");
    vfio_io_dma_unmap(src, IOVA, BUF_SIZE);
    munmap(mem, BUF_SIZE);
    close(mfd);
}

int main(void)
{
    char dir[] = "/tmp/vfio-io-cmig-XXXXXX";
    if (served_begin(dir) != 0)
        return 2;
    struct vfio_io_server_region bar0 = {
        VFIO_PCI_BAR0_REGION_INDEX, VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE,
        BAR0_SIZE, -1, 0,
    };
    struct vfio_io_server_device desc = {
        .size = sizeof(desc), .vendor_id = 0x1234, .device_id = 0xc0de, .class_code = 0xff0000,
        .regions = &bar0, .num_regions = 1, .irq_count = { 0, 1, 0, 0, 0 },
    };
    struct vfio_io_server_ops ops = {
        .size = sizeof(ops), .region_read = dev_read, .region_write = dev_write,
        .migration_stop = mig_stop, .migration_resume = mig_resume,
        .migration_save = mig_save, .migration_load = mig_load,
        .migration_max_state_len = MAX_STATE,
    };
    create_checks(dir, &desc, &ops);

    static struct mig_device src_dev, dst_dev;
    struct served src, dst;
    if (serve_device(&src, dir, "src.sock", &desc, &ops, &src_dev) != 0 ||
        serve_device(&dst, dir, "dst.sock", &desc, &ops, &dst_dev) != 0)
        return 1;
    vfio_io_device *s = NULL, *t = NULL;
    int r1 = vfio_io_user_connect(src.sock, &s);
    int r2 = vfio_io_user_connect(dst.sock, &t);
    CHECK(r1 == 0 && r2 == 0, "connect: %d %d", r1, r2);
    if (r1 == 0 && r2 == 0)
        migrate(s, t, &src_dev, &dst_dev);
    vfio_io_device_close(s);
    vfio_io_device_close(t);
    served_stop(&src);
    served_stop(&dst);
    rmdir(dir);
    printf("%d passed, %d failed\n", passes, failures);
    return failures ? 1 : 0;
}
