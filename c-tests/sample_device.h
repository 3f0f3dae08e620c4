/* A small device written in C against <vfio-io.h> alone, served through
 * vfio_io_server_*: the C test c_device, the program sample_device_server
 * (QEMU's vfio-user-pci enumerates it) and the fuzz target c_server all
 * serve this code.
 *
 * BAR0 (4 KiB, every access a 4-byte callback):
 *   0x00 ID (read-only)         0x04 SCRATCH (read/write, 0 after reset)
 *   0x08 DOORBELL: a write raises MSI vector 0; 0x0c reads what
 *        vfio_io_server_irq_trigger returned
 *   0x10 DMA_SRC (64 bit)       0x18 DMA_DST (64 bit)
 *   0x20 DMA_LEN                0x24 DMA_GO: a write copies DMA_LEN bytes
 *        from DMA_SRC to DMA_DST; 0x28 reads the copy's result (0 or -errno)
 * BAR2 (optional): memory behind an fd the caller gives, served by the
 * library without callbacks. */
#ifndef SAMPLE_DEVICE_H
#define SAMPLE_DEVICE_H

#include <stdint.h>

#include <vfio-io.h>

#define SAMPLE_VENDOR_ID 0x1234
#define SAMPLE_DEVICE_ID 0xc0de
#define SAMPLE_SUBSYS_VENDOR_ID 0x1af4
#define SAMPLE_SUBSYS_ID 0x0001
/* What the ID register reads. */
#define SAMPLE_ID 0xc0de0001u
#define SAMPLE_BAR0_SIZE 0x1000
/* The most DMA_LEN may ask for; a longer copy fails with -EINVAL. */
#define SAMPLE_DMA_MAX 0x4000

enum sample_reg {
    SAMPLE_REG_ID = 0x00,
    SAMPLE_REG_SCRATCH = 0x04,
    SAMPLE_REG_DOORBELL = 0x08,
    SAMPLE_REG_IRQ_RESULT = 0x0c,
    SAMPLE_REG_DMA_SRC = 0x10,
    SAMPLE_REG_DMA_DST = 0x18,
    SAMPLE_REG_DMA_LEN = 0x20,
    SAMPLE_REG_DMA_GO = 0x24,
    SAMPLE_REG_DMA_RESULT = 0x28,
};

/* The device's state: the opaque of its callbacks. */
struct sample_device {
    vfio_io_server *srv;
    uint32_t scratch, irq_result;
    uint64_t dma_src, dma_dst;
    uint32_t dma_len;
    int32_t dma_result;
    int resets;
};

/* The callbacks, for vfio_io_server_create with a struct sample_device. */
extern const struct vfio_io_server_ops sample_device_ops;

/* Fills `desc` for BAR0 and, when `bar2_fd` >= 0, a BAR2 of `bar2_size`
 * bytes at offset 0 of that fd; `regions` (two entries) backs desc->regions
 * and must outlive the use of `desc`. */
void sample_device_describe(struct vfio_io_server_device *desc,
                            struct vfio_io_server_region regions[2], int bar2_fd,
                            uint64_t bar2_size);

/* Zeroes `d` and creates its server listening on `socket_path` (see
 * sample_device_describe for `bar2_fd`): vfio_io_server_create's result. */
int sample_device_create(struct sample_device *d, const char *socket_path, int bar2_fd,
                         uint64_t bar2_size);

#endif
