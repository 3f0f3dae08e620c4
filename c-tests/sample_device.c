/* The device of sample_device.h: its registers and callbacks. */
#include <errno.h>
#include <string.h>
#include <sys/types.h>

#include "sample_device.h"

static int dma_copy(struct sample_device *d)
{
    uint8_t buf[SAMPLE_DMA_MAX];
    if (d->dma_len > sizeof(buf))
        return -EINVAL;
    int r = vfio_io_server_dma_read(d->srv, d->dma_src, buf, d->dma_len);
    if (r == 0)
        r = vfio_io_server_dma_write(d->srv, d->dma_dst, buf, d->dma_len);
    return r;
}

static ssize_t sample_read(void *opaque, uint32_t index, uint64_t offset, void *buf,
                           uint32_t count)
{
    struct sample_device *d = opaque;
    uint32_t v;
    if (index != VFIO_PCI_BAR0_REGION_INDEX || count != 4)
        return -EINVAL;
    switch (offset) {
    case SAMPLE_REG_ID: v = SAMPLE_ID; break;
    case SAMPLE_REG_SCRATCH: v = d->scratch; break;
    case SAMPLE_REG_IRQ_RESULT: v = d->irq_result; break;
    case SAMPLE_REG_DMA_RESULT: v = (uint32_t)d->dma_result; break;
    default: return -EINVAL;
    }
    memcpy(buf, &v, 4);
    return count;
}

/* Sets the low (`high` 0) or high half of a 64-bit register. */
static void set_half(uint64_t *reg, int high, uint32_t v)
{
    if (high)
        *reg = (*reg & 0xffffffffull) | (uint64_t)v << 32;
    else
        *reg = (*reg & ~0xffffffffull) | v;
}

static ssize_t sample_write(void *opaque, uint32_t index, uint64_t offset, const void *buf,
                            uint32_t count)
{
    struct sample_device *d = opaque;
    uint32_t v;
    if (index != VFIO_PCI_BAR0_REGION_INDEX || count != 4)
        return -EINVAL;
    memcpy(&v, buf, 4);
    switch (offset) {
    case SAMPLE_REG_SCRATCH: d->scratch = v; break;
    case SAMPLE_REG_DOORBELL:
        d->irq_result = (uint32_t)vfio_io_server_irq_trigger(d->srv, VFIO_PCI_MSI_IRQ_INDEX, 0);
        break;
    case SAMPLE_REG_DMA_SRC: case SAMPLE_REG_DMA_SRC + 4:
        set_half(&d->dma_src, offset != SAMPLE_REG_DMA_SRC, v);
        break;
    case SAMPLE_REG_DMA_DST: case SAMPLE_REG_DMA_DST + 4:
        set_half(&d->dma_dst, offset != SAMPLE_REG_DMA_DST, v);
        break;
    case SAMPLE_REG_DMA_LEN: d->dma_len = v; break;
    case SAMPLE_REG_DMA_GO: d->dma_result = dma_copy(d); break;
    default: return -EROFS;
    }
    return count;
}

static int sample_reset(void *opaque)
{
    struct sample_device *d = opaque;
    d->scratch = 0;
    d->resets++;
    return 0;
}

const struct vfio_io_server_ops sample_device_ops = {
    .size = sizeof(struct vfio_io_server_ops),
    .region_read = sample_read,
    .region_write = sample_write,
    .reset = sample_reset, /* no migration callbacks: the device does not migrate */
};

void sample_device_describe(struct vfio_io_server_device *desc,
                            struct vfio_io_server_region regions[2], int bar2_fd,
                            uint64_t bar2_size)
{
    regions[0] = (struct vfio_io_server_region){
        VFIO_PCI_BAR0_REGION_INDEX, VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE,
        SAMPLE_BAR0_SIZE, -1, 0,
    };
    regions[1] = (struct vfio_io_server_region){
        VFIO_PCI_BAR2_REGION_INDEX,
        VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP,
        bar2_size, bar2_fd, 0,
    };
    *desc = (struct vfio_io_server_device){
        .size = sizeof(*desc), .vendor_id = SAMPLE_VENDOR_ID, .device_id = SAMPLE_DEVICE_ID,
        .subsystem_vendor_id = SAMPLE_SUBSYS_VENDOR_ID, .subsystem_id = SAMPLE_SUBSYS_ID,
        .class_code = 0xff0000, .regions = regions, .num_regions = bar2_fd >= 0 ? 2 : 1,
        .irq_count = { 0, 1, 0, 0, 0 },
    };
}

int sample_device_create(struct sample_device *d, const char *socket_path, int bar2_fd,
                         uint64_t bar2_size)
{
    struct vfio_io_server_region regions[2];
    struct vfio_io_server_device desc;
    memset(d, 0, sizeof(*d));
    sample_device_describe(&desc, regions, bar2_fd, bar2_size);
    return vfio_io_server_create(socket_path, &desc, &sample_device_ops, d, &d->srv);
}
