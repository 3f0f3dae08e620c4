/* The header compiles as C11 with -Wall -Wextra -Werror and the ops table
 * keeps QEMU's shape: capabilities first. */
#include <stddef.h>
#include <vfio-io.h>

_Static_assert(offsetof(vfio_io_ops, capabilities) == 0, "capabilities first");
_Static_assert(VFIO_IO_CAP_DMA_BUF == (1ULL << 0), "QEMU's DMA-BUF bit");

int main(void)
{
    return vfio_io_device_ops(NULL) == NULL ? 0 : 1;
}
