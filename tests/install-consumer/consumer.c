/* Links against an installed libvfio_io and prints one capability name. */
#include <stdio.h>
#include <vfio-io.h>

int main(void)
{
    const char *name = vfio_io_capability_name(VFIO_IO_CAP_DMA_BUF);
    if (!name)
        return 1;
    printf("%s\n", name);
    return 0;
}
