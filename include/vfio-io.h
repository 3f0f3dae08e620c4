/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
 *
 * vfio-io: capability-aware VFIO device I/O (kernel VFIO and vfio-user).
 * Generated from the Rust sources by cbindgen (see build.rs): do not edit.
 *
 * Ownership: every fd this library returns through an out parameter
 * (region fds, DMA-BUF fds, DMA_BUF device_feature results) is new and owned
 * by the caller, who closes it. fds the caller passes in (DMA memory,
 * eventfds) are borrowed: the library duplicates what it keeps.
 * Return convention: 0 (or a byte count) on success, -errno on failure. */

#ifndef VFIO_IO_H
#define VFIO_IO_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <linux/vfio.h>

// A region's mappable ranges can be exported as a DMA-BUF fd
// (`VFIO_DEVICE_FEATURE_DMA_BUF`). Kernel VFIO only, Linux >= 6.19.
#define VFIO_IO_CAP_DMA_BUF (1ULL << 0)

// The v2 migration state machine (`VFIO_DEVICE_FEATURE_MIGRATION`) is available.
#define VFIO_IO_CAP_MIGRATION (1ULL << 1)

// Device dirty-page tracking (`VFIO_DEVICE_FEATURE_DMA_LOGGING_*`) is available.
#define VFIO_IO_CAP_DIRTY_TRACKING (1ULL << 2)

// The device can enter a low-power state (`VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY`).
#define VFIO_IO_CAP_LOW_POWER (1ULL << 3)

// At least one region (or sparse area of one) can be mmapped by the caller.
#define VFIO_IO_CAP_REGION_MMAP (1ULL << 4)

// Region info can come with a region-specific fd to mmap (vfio-user),
// rather than only the device fd at an offset (kernel).
#define VFIO_IO_CAP_REGION_FDS (1ULL << 5)

// `region_write(.., post = true)` returns without waiting for the device.
#define VFIO_IO_CAP_POSTED_WRITES (1ULL << 6)

// The device supports `reset` (`VFIO_DEVICE_FLAGS_RESET`).
#define VFIO_IO_CAP_RESET (1ULL << 7)

// Small posted writes may be coalesced into one message (vfio-user
// `write_multiple` negotiated).
#define VFIO_IO_CAP_WRITE_MULTI (1ULL << 8)

// The device side may read and write mapped DMA memory through messages
// (vfio-user `DMA_READ`/`DMA_WRITE`), not only through shared fds.
#define VFIO_IO_CAP_DMA_MESSAGES (1ULL << 9)

// DMA mappings are made through an IOMMU (kernel container or iommufd IOAS):
// `dma_map` needs the mapping's host virtual address.
#define VFIO_IO_CAP_IOMMU_DMA (1ULL << 10)



// `vfio_io_dma_map` flag: the device may read the memory.
#define VFIO_IO_DMA_READ (1 << 0)

// `vfio_io_dma_map` flag: the device may write the memory.
#define VFIO_IO_DMA_WRITE (1 << 1)

// Something is really wrong (a peer broke the protocol, a device failed).
#define VFIO_IO_LOG_ERROR 3

// Something unexpected that the library worked around.
#define VFIO_IO_LOG_WARNING 4

// Noteworthy events (a client connected, a session ended).
#define VFIO_IO_LOG_INFO 6

// Detail for debugging.
#define VFIO_IO_LOG_DEBUG 7

// An open device. Opaque to C.
typedef struct vfio_io_device vfio_io_device;

// The device operations, shaped like QEMU's `VFIODeviceIOOps` with the
// capability mask first. The argument structs are `<linux/vfio.h>`'s.
typedef struct vfio_io_ops {
  // `VFIO_IO_CAP_*` bits this device really supports.
  uint64_t capabilities;
  // `VFIO_DEVICE_FEATURE`. `feature->argsz` bytes are read and, for GET,
  // written. Returns the kernel's non-negative result (a new fd, owned by
  // the caller, for DMA_BUF) or -errno.
  int (*device_feature)(struct vfio_io_device *dev, struct vfio_device_feature *feature);
  // `VFIO_DEVICE_GET_REGION_INFO`. Fills `info` (up to `info->argsz` bytes,
  // capability chain included; a larger needed size is reported in
  // `info->argsz`). If `fd` is not NULL, `*fd` receives a new fd to mmap
  // the region at `info->offset`, owned by the caller, or -1 when the
  // region is not mappable. Returns 0 or -errno.
  int (*get_region_info)(struct vfio_io_device *dev, struct vfio_region_info *info, int *fd);
  // `VFIO_DEVICE_GET_IRQ_INFO` for `irq->index`. Returns 0 or -errno.
  int (*get_irq_info)(struct vfio_io_device *dev, struct vfio_irq_info *irq);
  // `VFIO_DEVICE_SET_IRQS`; eventfds in `irqs->data` are borrowed, not
  // consumed (-1 detaches a vector). Returns 0 or -errno.
  int (*set_irqs)(struct vfio_io_device *dev, struct vfio_irq_set *irqs);
  // Reads `size` bytes at `off` of region `nr` into `data`. Returns `size` or -errno.
  int (*region_read)(struct vfio_io_device *dev, uint8_t nr, off_t off, uint32_t size, void *data);
  // Writes `size` bytes from `data` at `off` of region `nr`; with `post`
  // the call may return before the device has seen the write. Returns
  // `size` or -errno.
  int (*region_write)(struct vfio_io_device *dev,
                      uint8_t nr,
                      off_t off,
                      uint32_t size,
                      void *data,
                      bool post);
} vfio_io_ops;

// A C log handler: `level` is a `VFIO_IO_LOG_*` value, `msg` a NUL-terminated
// line valid only during the call.
typedef void (*vfio_io_log_fn)(int level, const char *msg, void *opaque);

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

// Connects to the vfio-user server listening on `socket_path` and stores a
// new handle in `*out`. Returns 0 or -errno (`-EINVAL` for NULL arguments,
// `-ENOENT`/`-ECONNREFUSED` when nothing listens, `-EPROTO` when the peer
// does not speak vfio-user, `-ETIMEDOUT` when it does not answer in 5 s).
//
// # Safety
// `socket_path` must be NULL or a NUL-terminated string; `out` NULL or writable.
int vfio_io_user_connect(const char *socket_path, struct vfio_io_device **out);

// Opens a device through kernel VFIO and stores a new handle in `*out`.
// `path` is a PCI address such as `"0000:00:01.0"` (legacy container and
// IOMMU group; devices of one group share them) or `"/dev/vfio/devices/vfioN"`
// (iommufd and the device cdev). The device's capabilities are probed once
// here; nothing is logged for a feature it lacks. Returns 0 or -errno
// (`-ENODEV` for an unknown device, `-EPERM`/`-EACCES` without access,
// `-EINVAL` for NULL arguments).
//
// # Safety
// `path` must be NULL or a NUL-terminated string; `out` NULL or writable.
int vfio_io_kernel_open(const char *path, struct vfio_io_device **out);

// Closes a device and frees its handle (NULL is ignored). Must not race with
// other calls on the same handle. fds the caller received stay open.
//
// # Safety
// `dev` must be NULL or a live handle, not used again afterwards.
void vfio_io_device_close(struct vfio_io_device *dev);

// The device's ops table, valid until `vfio_io_device_close`; its
// `capabilities` is the device's mask. NULL for a NULL or closed handle.
//
// # Safety
// `dev` must be NULL or a live handle.
const struct vfio_io_ops *vfio_io_device_ops(const struct vfio_io_device *dev);

// The device's capability mask (`VFIO_IO_CAP_*`): what this device really
// supports. 0 for a NULL handle.
//
// # Safety
// `dev` must be NULL or a live handle.
uint64_t vfio_io_device_capabilities(const struct vfio_io_device *dev);

// The backend's capability mask: what any device of this backend could
// support. 0 for a NULL handle.
//
// # Safety
// `dev` must be NULL or a live handle.
uint64_t vfio_io_backend_capabilities(const struct vfio_io_device *dev);

// Exports the mappable ranges of region `region_index` as a DMA-BUF.
// Without `VFIO_IO_CAP_DMA_BUF` this returns 0 with `*out_fd = -1`, tries
// nothing and logs nothing. On success `*out_fd` is a new fd owned by the
// caller. Returns 0 or -errno.
//
// # Safety
// `dev` must be NULL or a live handle; `out_fd` NULL or writable.
int vfio_io_region_create_dma_buf(struct vfio_io_device *dev, uint32_t region_index, int *out_fd);

// Maps `size` bytes for device DMA at `iova`. `vaddr` is the memory's
// address in this process (kernel VFIO needs it; vfio-user uses it to answer
// the server's DMA messages); `fd`/`offset` the memory's fd, or -1 (vfio-user
// passes it to the server; it is borrowed, not consumed). `flags` is
// `VFIO_IO_DMA_READ | VFIO_IO_DMA_WRITE`. Returns 0 or -errno (`-EEXIST` for
// an overlap, `-ENOSPC` past the device's mapping limit).
//
// # Safety
// `dev` must be NULL or a live handle; `[vaddr, vaddr+size)` must stay
// mapped until unmapped or the device is closed.
int vfio_io_dma_map(struct vfio_io_device *dev,
                    uint64_t iova,
                    uint64_t size,
                    void *vaddr,
                    int fd,
                    uint64_t offset,
                    uint32_t flags);

// Removes the mapping made with exactly this `iova` and `size`.
// Returns 0 or -errno.
//
// # Safety
// `dev` must be NULL or a live handle.
int vfio_io_dma_unmap(struct vfio_io_device *dev, uint64_t iova, uint64_t size);

// Resets the device. Returns 0 or -errno.
//
// # Safety
// `dev` must be NULL or a live handle.
int vfio_io_device_reset(struct vfio_io_device *dev);

// Sets the handler that receives the library's log lines at `max_level`
// (`VFIO_IO_LOG_*`) and above in severity; NULL removes it. Nothing is
// printed without a handler. `fn` may be called from any thread.
//
// # Safety
// `fn` must be callable with `opaque` from any thread until replaced.
void vfio_io_set_log_handler(vfio_io_log_fn f, void *opaque, int max_level);

// The name of one capability bit (`"DMA_BUF"` for `VFIO_IO_CAP_DMA_BUF`), or
// NULL for an unknown or multi-bit value. The string is static.
const char *vfio_io_capability_name(uint64_t bit);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* VFIO_IO_H */
