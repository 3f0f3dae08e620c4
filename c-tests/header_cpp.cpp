// The header compiles as C++ with -Wall -Wextra -Werror.
#include <cstddef>
#include <vfio-io.h>

static_assert(offsetof(vfio_io_ops, capabilities) == 0, "capabilities first");
static_assert(VFIO_IO_CAP_DMA_BUF == (1ULL << 0), "QEMU's DMA-BUF bit");

int main()
{
    return vfio_io_device_capabilities(nullptr) == 0 ? 0 : 1;
}
