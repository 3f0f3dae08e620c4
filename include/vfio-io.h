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

// The v2 migration state machine (`VFIO_DEVICE_FEATURE_MIGRATION`,
// STOP_COPY at least) is available, data path included, on both
// roads: `device_feature` and the data fd it returns, and
// `vfio_io_migration_*` (vfio-user carries both over MIG_DATA_READ/WRITE).
#define VFIO_IO_CAP_MIGRATION (1ULL << 1)

// Device dirty-page tracking (DMA logging) is available: on kernel VFIO
// through `device_feature` (`VFIO_DEVICE_FEATURE_DMA_LOGGING_*`); on
// vfio-user through `vfio_io_dirty_start`/`_report`/`_stop`, a server of
// this library logging every page its device writes to client memory.
#define VFIO_IO_CAP_DIRTY_TRACKING (1ULL << 2)

// The device can enter a low-power state (`VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY`).
#define VFIO_IO_CAP_LOW_POWER (1ULL << 3)

// At least one region (or sparse area of one) can be mmapped by the caller.
#define VFIO_IO_CAP_REGION_MMAP (1ULL << 4)

// Region info can come with a region-specific fd to mmap (vfio-user),
// rather than only the device fd at an offset (kernel).
#define VFIO_IO_CAP_REGION_FDS (1ULL << 5)

// `region_write(.., post = true)` returns without waiting for the device;
// a later read or non-posted write still sees it. Clear where posted
// writes wait (a vfio-user device with a mapped area or doorbells, whose
// stores or eventfd writes could otherwise overtake them).
#define VFIO_IO_CAP_POSTED_WRITES (1ULL << 6)

// The device supports `reset` (`VFIO_DEVICE_FLAGS_RESET`).
#define VFIO_IO_CAP_RESET (1ULL << 7)

// Several small writes can go to the device in one message (vfio-user
// `write_multiple` negotiated): `Client::region_write_multi` sends them.
#define VFIO_IO_CAP_WRITE_MULTI (1ULL << 8)

// The device side reaches DMA memory mapped without an fd through
// messages (vfio-user `DMA_READ`/`DMA_WRITE`), which the library answers
// from the memory at the map's `vaddr`.
#define VFIO_IO_CAP_DMA_MESSAGES (1ULL << 9)

// DMA mappings are programmed into the host IOMMU (a type1 container or
// an iommufd IOAS) from the mapping's host virtual address, which every
// kernel road takes (only iommufd can also map from an fd alone).
#define VFIO_IO_CAP_IOMMU_DMA (1ULL << 10)

// Some region writes are delivered through an eventfd with no message:
// the server offered ioeventfds (vfio-user `DEVICE_GET_REGION_IO_FDS`),
// and a `region_write` matching one (offset, size and any datamatch
// value) signals it; the device still sees it before any later access.
#define VFIO_IO_CAP_IOEVENTFD (1ULL << 11)



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

// `vfio_io_server_doorbell` flag: only writes of exactly `datamatch` go
// through the eventfd, and each reaches `region_write` as a write of that
// value.
#define VFIO_IO_DOORBELL_DATAMATCH (1 << 0)

// `vfio_io_server_options` flag: log every command a client sends, at
// info level (`VFIO_IO_LOG_INFO`), to the log handler.
#define VFIO_IO_SERVER_TRACE (1 << 0)

// An open device. Opaque to C: created by `vfio_io_user_connect` or
// `vfio_io_kernel_open`, freed by `vfio_io_device_close`. One handle may be
// used from many threads at once, except that closing it must not race
// with other calls on it.
typedef struct vfio_io_device vfio_io_device;

// A served device. Opaque to C: made by `vfio_io_server_create`, freed by
// `vfio_io_server_destroy`.
typedef struct vfio_io_server vfio_io_server;

// The device operations, shaped like QEMU's `VFIODeviceIOOps` with the
// capability mask first. The argument structs are `<linux/vfio.h>`'s. Get
// the table with `vfio_io_device_ops`; every member is non-NULL, and `dev`
// must be the handle the table came from (NULL gives -EINVAL; a closed
// handle must never be passed: its memory is freed).
typedef struct vfio_io_ops {
  // `VFIO_IO_CAP_*` bits this device really supports (the same value as
  // `vfio_io_device_capabilities`). Check a bit before trying what it
  // names: nothing is logged for an operation the device lacks.
  uint64_t capabilities;
  // `VFIO_DEVICE_FEATURE`. `feature` points to `feature->argsz` bytes
  // (header and data), read and, for GET, written. Returns the
  // operation's non-negative result or -errno (-EINVAL for a NULL
  // `feature` or an argsz outside [sizeof(struct vfio_device_feature),
  // 1 MiB]). For `VFIO_DEVICE_FEATURE_DMA_BUF` the result is a new fd,
  // owned by the caller. A SET of `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE`
  // writes `data_fd` back as the kernel does, on every backend: a new fd
  // the caller owns entering STOP_COPY (read it to EOF) or RESUMING
  // (write the stream into it), else -1. Over vfio-user the next state
  // change first hands the device every byte written into it, closed or
  // not, and reports there a failure to do so. Over vfio-user the
  // `VFIO_DEVICE_FEATURE_DMA_LOGGING_*` features behave as on the kernel:
  // START reads the array its control's `ranges` points to, REPORT sets
  // (never clears) bits in the words its `bitmap` points to, and PROBE
  // answers 0 with `VFIO_IO_CAP_DIRTY_TRACKING` (else -ENOTTY); a NULL
  // `ranges` or `bitmap` or an argsz short of the struct is -EINVAL.
  int (*device_feature)(struct vfio_io_device *dev, struct vfio_device_feature *feature);
  // `VFIO_DEVICE_GET_REGION_INFO` for region `info->index`. `info` points
  // to `info->argsz` bytes (at least sizeof(struct vfio_region_info)),
  // filled with the region info and as much of the capability chain as
  // fits; when the chain needs more, `info->argsz` is set to the size
  // needed and the caller asks again with a larger buffer. `fd` may be
  // NULL; otherwise `*fd` receives a new fd, owned by the caller, to mmap
  // the region at `info->offset`, or -1 when it is not mappable (also on
  // failure). Returns 0 or -errno (-EINVAL for an index past the
  // device's regions or a short argsz).
  int (*get_region_info)(struct vfio_io_device *dev, struct vfio_region_info *info, int *fd);
  // `VFIO_DEVICE_GET_IRQ_INFO` for IRQ index `irq->index`: fills
  // `irq->flags` and `irq->count`. `irq->argsz` must be at least
  // sizeof(struct vfio_irq_info). Returns 0 or -errno (-EINVAL for an
  // index the device lacks).
  int (*get_irq_info)(struct vfio_io_device *dev, struct vfio_irq_info *irq);
  // `VFIO_DEVICE_SET_IRQS`. `irqs` points to `irqs->argsz` bytes: the
  // struct and its data (`count` bools or `count` int32 eventfds). The
  // eventfds are borrowed, not consumed: the caller still owns and
  // closes them (the library duplicates what it keeps); -1 detaches a
  // vector. Returns 0 or -errno (-EBADF for a closed eventfd).
  int (*set_irqs)(struct vfio_io_device *dev, struct vfio_irq_set *irqs);
  // Reads `size` bytes at offset `off` of region `nr` into `data`, which
  // holds `size` bytes. Returns `size` or -errno (-EINVAL for a NULL
  // `data` or a range outside the region).
  int (*region_read)(struct vfio_io_device *dev, uint8_t nr, off_t off, uint32_t size, void *data);
  // Writes `size` bytes from `data` at offset `off` of region `nr`. With
  // `post` the call may return before the device has seen the write
  // (`VFIO_IO_CAP_POSTED_WRITES`); later reads still see it. `data` is
  // only read. Returns `size` or -errno (-EINVAL for a NULL `data` or a
  // range outside the region).
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

// Options of `vfio_io_user_connect_with`. Zero-fill it (`= {0}` or
// memset), set `size` to `sizeof(struct vfio_io_user_options)`, then the
// fields wanted: a zero field means its default, so fields a later version
// adds keep today's behaviour when left zero.
typedef struct vfio_io_user_options {
  // sizeof(struct vfio_io_user_options) as the caller was compiled: the
  // struct may grow. At least 12 (the three fields here) and at most
  // 4096.
  uint32_t size;
  // How long one request may wait for its reply (and a send for the
  // socket), in milliseconds. 0: the default, 5000.
  uint32_t timeout_ms;
  // Polling mode: a thread waiting for a reply first polls the socket
  // with non-blocking receives for up to this many microseconds before it
  // blocks. It pays off when the server runs on another core (it saves a
  // thread wake-up per reply) and costs a busy CPU while it waits. 0:
  // block at once.
  uint32_t spin_us;
} vfio_io_user_options;

// One region of a served device.
typedef struct vfio_io_server_region {
  // `VFIO_PCI_BAR0_REGION_INDEX` .. `VFIO_PCI_BAR5_REGION_INDEX`, another
  // vfio-pci index, or a device-specific index below 64. Index
  // `VFIO_PCI_CONFIG_REGION_INDEX` (7) replaces the emulated
  // configuration space: the callbacks then serve it (at least 256 bytes).
  uint32_t index;
  // `VFIO_REGION_INFO_FLAG_READ | _WRITE | _MMAP`: READ or WRITE at
  // least; MMAP exactly when `fd` is given.
  uint32_t flags;
  // Size in bytes, not 0. For BARs 0..5 with emulated configuration
  // space: a power of two of at least 16 (above 2 GiB the BAR is 64-bit
  // and takes the next index too).
  uint64_t size;
  // -1: every access is a callback. Otherwise memory the client may
  // mmap; the library duplicates it (the caller keeps and closes its fd)
  // and answers accesses of a client that did not map it from its own
  // mapping, so callbacks never see this region.
  int fd;
  // Where the region starts in `fd`: a multiple of 4096; the fd (a
  // memfd or file) must hold `fd_offset + size` bytes.
  uint64_t fd_offset;
} vfio_io_server_region;

// A doorbell of a served device: a register of a region without an fd
// whose writes a client that takes the server's eventfds
// (`VFIO_IO_CAP_IOEVENTFD` on its side) signals through an eventfd, with no
// message and no reply. The library reads the eventfd and calls
// `region_write` on the serving thread, before the next command of that
// client, so the device sees every write once and in order with the
// client's other accesses. A write that does not match a doorbell (another
// width, or another value than `datamatch`) comes as a message, as ever.
//
// Checked by `vfio_io_server_create` (-EINVAL, with the reason logged):
// `region` is in the device's `regions`, has no fd and is writable; the
// register lies inside it; no two doorbells overlap.
typedef struct vfio_io_server_doorbell {
  // Index of the region.
  uint32_t region;
  // Width of the register: 1, 2, 4 or 8 bytes.
  uint32_t size;
  // Offset of the register in the region.
  uint64_t offset;
  // With `VFIO_IO_DOORBELL_DATAMATCH`: the one value (of `size` bytes)
  // that goes through the eventfd. Without it every write of `size`
  // bytes does, and the eventfd carries only how many there were: the
  // device gets one `region_write` whose value is that count (an 8-byte
  // count cut to `size` bytes, little-endian), not the values written.
  uint64_t datamatch;
  // `VFIO_IO_DOORBELL_DATAMATCH` or 0; other bits are refused (-EINVAL).
  uint32_t flags;
  // 0; room for a later field.
  uint32_t reserved;
} vfio_io_server_doorbell;

// A served device's identity, regions and interrupts.
typedef struct vfio_io_server_device {
  // sizeof(struct vfio_io_server_device) as the caller was compiled: the
  // whole struct, or its size up to and including `irq_count`.
  uint32_t size;
  // PCI vendor ID.
  uint16_t vendor_id;
  // PCI device ID.
  uint16_t device_id;
  // PCI subsystem vendor ID.
  uint16_t subsystem_vendor_id;
  // PCI subsystem ID.
  uint16_t subsystem_id;
  // PCI class code (24 bits: base class, subclass, programming interface).
  uint32_t class_code;
  // `num_regions` regions, each index once (NULL when `num_regions` is 0).
  // Read during `vfio_io_server_create` only.
  const struct vfio_io_server_region *regions;
  // Number of entries in `regions` (at most 64).
  uint32_t num_regions;
  // Vectors of each IRQ index: INTX, MSI, MSIX, ERR, REQ. INTX, ERR and
  // REQ at most 1, MSI at most 1 with emulated configuration space (32
  // otherwise), MSIX at most 2048. An INTx vector sets the interrupt pin
  // to INTA#; an MSI vector adds an MSI capability. MSIX vectors with
  // emulated configuration space add an MSI-X capability whose table
  // (at offset 0) and PBA (after it) the library serves in a BAR of its
  // own: the first of BARs 0..5 no region takes (create fails with
  // -EINVAL when none is free), a power of two of at least 4 KiB,
  // trapped; callbacks never see it. Vectors fire as the client's
  // SET_IRQS on `VFIO_PCI_MSIX_IRQ_INDEX` says, as on kernel vfio-pci.
  uint32_t irq_count[5];
  // `num_doorbells` doorbells (NULL when `num_doorbells` is 0): registers
  // whose writes a client may deliver through an eventfd instead of a
  // message. Read during `vfio_io_server_create` only.
  //
  // `doorbells` and `num_doorbells` came after `irq_count`: a program
  // compiled before them passes the shorter `size` (up to and including
  // `irq_count`), accepted as a device without doorbells.
  const struct vfio_io_server_doorbell *doorbells;
  // Number of entries in `doorbells` (at most 64).
  uint32_t num_doorbells;
} vfio_io_server_device;

// The callbacks of a served device, called on the thread in
// `vfio_io_server_run`, one at a time, with the `opaque` given to
// `vfio_io_server_create`.
//
// The migration fields came after `reset`, and `client_connected` and
// `client_disconnected` after them: a program compiled before either
// passes a shorter `size`, which is accepted as if the fields it lacks
// were NULL and 0.
typedef struct vfio_io_server_ops {
  // sizeof(struct vfio_io_server_ops) as the caller was compiled: the
  // whole struct, its size up to and including `migration_max_state_len`,
  // or up to and including `reset`.
  uint32_t size;
  // Reads `count` bytes at `offset` of region `index` into `buf` (range
  // and READ flag already checked). Returns `count`, or -errno, which
  // becomes the client's error reply (any other value: EIO). May be NULL
  // only if no region without an fd is readable.
  ssize_t (*region_read)(void *opaque, uint32_t index, uint64_t offset, void *buf, uint32_t count);
  // Writes the `count` bytes of `buf` at `offset` of region `index`
  // (range and WRITE flag checked). Returns `count` or -errno, as
  // `region_read`. May be NULL only if no region without an fd is
  // writable.
  ssize_t (*region_write)(void *opaque,
                          uint32_t index,
                          uint64_t offset,
                          const void *buf,
                          uint32_t count);
  // Resets the device: 0 or -errno. NULL: the device offers no reset.
  // The emulated configuration space is reset before it is called.
  int (*reset)(void *opaque);
  // Migration: stops the device (RUNNING -> STOP). Work in flight
  // completes, or is kept in the state `migration_save` writes, and no
  // new work starts until `migration_resume`. Returns 0 or -errno; on
  // failure the device stays RUNNING. `vfio_io_server_irq_trigger` and
  // the DMA calls work inside it.
  //
  // The four migration callbacks are all given or all NULL. All NULL:
  // the device does not migrate and a client sees no
  // `VFIO_IO_CAP_MIGRATION`. Given: the library runs the migration
  // state machine and moves the stream; with emulated configuration
  // space the stream carries that too, so the callbacks save only the
  // device's own state (including what it keeps in region fds).
  int (*migration_stop)(void *opaque);
  // Migration: starts a stopped device again (STOP -> RUNNING), on the
  // source after a cancelled migration or on the destination after a
  // load. Interrupts the loaded state holds pending are raised here,
  // with `vfio_io_server_irq_trigger`, so that this client sees them.
  // Returns 0 or -errno; on failure the device stays stopped.
  int (*migration_resume)(void *opaque);
  // Migration: writes the stopped device's state, a byte stream of the
  // device's own format, into `buf` (`len` writable bytes, owned by the
  // library) and returns the state's length. A state longer than `len`
  // returns its length without needing to write anything; the library
  // calls again with a buffer that long (snprintf's convention), so the
  // state may have any length up to `migration_max_state_len`. Returns
  // the length, or -errno. The device is stopped and must not change
  // between the calls; no interrupt or DMA is possible here (-EBUSY).
  ssize_t (*migration_save)(void *opaque, void *buf, size_t len);
  // Migration: replaces the stopped device's state with the `len`
  // bytes at `buf` (only read, valid during the call), a state
  // `migration_save` wrote, perhaps in another process. All or nothing:
  // returns 0 once loaded, or -EINVAL for a stream that is truncated,
  // corrupted or of another device or version, leaving the device's
  // state as it was (the client may then send a whole stream again).
  // No interrupt or DMA is possible here (-EBUSY): raise pending ones
  // in `migration_resume`.
  int (*migration_load)(void *opaque, const void *buf, size_t len);
  // Migration: the longest state `migration_save` writes and
  // `migration_load` accepts, in bytes; more than 0 when the callbacks
  // are given. The library refuses a longer incoming stream before it
  // reaches `migration_load`, and a longer saved state (EIO).
  size_t migration_max_state_len;
  // A client was accepted: called on the serving thread (the one in
  // `vfio_io_server_run`, or in the `vfio_io_server_dispatch` that
  // accepts it) before the library reads the client's first command.
  // The client has mapped no memory and attached no interrupt yet:
  // interrupts and DMA from here are -ENOTCONN. NULL: not called.
  void (*client_connected)(void *opaque);
  // The client's session is over: the client left, was dropped for
  // breaking the protocol, or the server was stopped. Called once per
  // `client_connected`, on the serving thread (for a session
  // `vfio_io_server_dispatch` served that is still open at
  // `vfio_io_server_destroy`: the thread in destroy), after the library
  // returned a stopped device to RUNNING (through `migration_resume`)
  // and unmapped the client's memory, and before the next client is
  // accepted. Interrupts and DMA from here are -ENOTCONN; the place to
  // drop what the device kept for this client, such as DMA work that
  // would touch its memory. NULL: not called.
  void (*client_disconnected)(void *opaque);
} vfio_io_server_ops;

// Options of `vfio_io_server_create_with`. Zero-fill it (`= {0}` or
// memset), set `size` to `sizeof(struct vfio_io_server_options)`, then the
// fields wanted: a zero field means its default, so fields a later version
// adds keep today's behaviour when left zero.
typedef struct vfio_io_server_options {
  // sizeof(struct vfio_io_server_options) as the caller was compiled:
  // the struct may grow. At least 20 (the five fields here) and at most
  // 4096.
  uint32_t size;
  // How long a send to the client may take before the session is ended,
  // in milliseconds. 0: the default, 5000.
  uint32_t timeout_ms;
  // How long a DMA by message (`vfio_io_server_dma_read`/`_write` on
  // memory the client mapped without an fd) waits for the client's
  // answer, and a call from another thread for the serving thread to
  // take it up, in milliseconds; past it the call gives -ETIMEDOUT and
  // the session goes on. 0: the default, 5000.
  uint32_t dma_timeout_ms;
  // Polling mode: the serving thread polls the client's socket with
  // non-blocking receives for up to this many microseconds before it
  // blocks for the next command (or DMA answer). It pays off when the
  // server has a core of its own (it saves a thread wake-up per message)
  // and costs a busy CPU while it waits. 0: block at once.
  uint32_t spin_us;
  // `VFIO_IO_SERVER_TRACE` or 0; other bits are refused (-EINVAL).
  uint32_t flags;
} vfio_io_server_options;

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

// Connects to the vfio-user server listening on the Unix socket
// `socket_path` (a NUL-terminated UTF-8 path) and negotiates the protocol.
// On success `*out` receives a new handle, owned by the caller, who frees
// it with `vfio_io_device_close`; on failure `*out` is left alone.
// Returns 0 or -errno: -EINVAL for a NULL argument, -ENOENT or
// -ECONNREFUSED when nothing listens, -EPROTO when the peer does not speak
// vfio-user, -ETIMEDOUT when it does not answer within 5 s.
int vfio_io_user_connect(const char *socket_path, struct vfio_io_device **out);

// Opens a device through kernel VFIO and stores a new handle in `*out`.
// `path` (NUL-terminated) is a PCI address such as `"0000:00:01.0"` (legacy container and
// IOMMU group; devices of one group share them) or `"/dev/vfio/devices/vfioN"`
// (iommufd and the device cdev). The device's capabilities are probed once
// here; nothing is logged for a feature it lacks. Returns 0 or -errno
// (`-ENODEV` for an unknown device or one not bound to vfio-pci or without
// an IOMMU group, `-EBUSY` for a group that is not viable, `-EPERM`/`-EACCES`
// without access to /dev/vfio, `-EINVAL` for a NULL argument). On success
// `*out` receives a new handle, owned by the caller, who frees it with
// `vfio_io_device_close`; on failure `*out` is left alone. The device, group
// and container fds stay inside the handle.
int vfio_io_kernel_open(const char *path, struct vfio_io_device **out);

// Closes a device and frees its handle; NULL is ignored. `dev` must be NULL
// or a live handle, and is invalid afterwards; the call must not race with
// other calls on the same handle. fds the caller received from the library
// (region fds, DMA-BUFs) stay open and the caller's to close; the library
// closes its own (device, group, container, socket, duplicated eventfds).
void vfio_io_device_close(struct vfio_io_device *dev);

// The device's ops table, owned by the handle and valid until
// `vfio_io_device_close(dev)`; its `capabilities` is the device's mask.
// `dev` must be NULL or a live handle; NULL gives NULL.
const struct vfio_io_ops *vfio_io_device_ops(const struct vfio_io_device *dev);

// The device's capability mask (`VFIO_IO_CAP_*`): what this device really
// supports, learned once at open. `dev` must be NULL or a live handle; NULL
// gives 0.
uint64_t vfio_io_device_capabilities(const struct vfio_io_device *dev);

// The backend's capability mask: what any device of this backend could
// support (a superset of the device's). `dev` must be NULL or a live
// handle; NULL gives 0.
uint64_t vfio_io_backend_capabilities(const struct vfio_io_device *dev);

// Exports the mappable ranges of region `region_index` as a DMA-BUF.
// `dev` must be NULL or a live handle; `out_fd` must point to an int.
// `*out_fd` is set to -1 first; on success it is a new DMA-BUF fd, owned
// by the caller, who closes it. Without `VFIO_IO_CAP_DMA_BUF` this returns
// 0 with `*out_fd` = -1, tries nothing and logs nothing. Returns 0 or
// -errno (-EINVAL for a NULL argument or an unknown region; the kernel's
// error for a region with nothing mappable).
int vfio_io_region_create_dma_buf(struct vfio_io_device *dev, uint32_t region_index, int *out_fd);

// Maps `size` bytes for device DMA at `iova`. `vaddr` is the memory's
// address in this process (kernel VFIO needs it; vfio-user uses it to answer
// the server's DMA messages); `fd`/`offset` the memory's fd, or -1 (vfio-user
// passes it to the server; it is borrowed, not consumed). `flags` is
// `VFIO_IO_DMA_READ | VFIO_IO_DMA_WRITE`. Returns 0 or -errno (`-EINVAL`
// for a NULL `dev`, unknown flags, or neither `vaddr` nor `fd`; `-EBADF`
// for a closed `fd`; `-EEXIST` for an overlap; `-ENOSPC` past the
// device's mapping limit).
//
// `dev` must be NULL or a live handle. `fd` stays the caller's: the
// library duplicates what it keeps. When `vaddr` is not NULL,
// `[vaddr, vaddr + size)` must stay mapped until `vfio_io_dma_unmap` or
// `vfio_io_device_close`: the device reads and writes it.
int vfio_io_dma_map(struct vfio_io_device *dev,
                    uint64_t iova,
                    uint64_t size,
                    void *vaddr,
                    int fd,
                    uint64_t offset,
                    uint32_t flags);

// Removes every mapping that lies wholly inside `[iova, iova + size)`, as
// type1 does; the device no longer reaches that memory when this returns.
// `dev` must be NULL or a live handle. Returns 0 or -errno (`-EINVAL` for a
// NULL `dev`, or for a range that would cut a mapping in two; a range
// holding no mapping succeeds on vfio-user and type1, while iommufd answers
// `-ENOENT`).
int vfio_io_dma_unmap(struct vfio_io_device *dev, uint64_t iova, uint64_t size);

// Resets the device (`VFIO_DEVICE_RESET`). `dev` must be NULL or a live
// handle. Returns 0 or -errno (`-EINVAL` for NULL; a device without
// `VFIO_IO_CAP_RESET` fails with its backend's error).
int vfio_io_device_reset(struct vfio_io_device *dev);

// Sets the handler that receives the library's log lines at `max_level`
// (`VFIO_IO_LOG_*`) and above in severity; NULL removes it. Nothing is
// printed without a handler. `f` is called with `opaque`, a
// `VFIO_IO_LOG_*` level and a NUL-terminated line that is valid only during
// the call; it may be called from any thread, concurrently, until another
// call replaces it, so it and `opaque` must stay valid that long. The
// handler is process-wide.
void vfio_io_set_log_handler(vfio_io_log_fn f, void *opaque, int max_level);

// The name of one capability bit (`"DMA_BUF"` for `VFIO_IO_CAP_DMA_BUF`), or
// NULL for 0, an unknown bit or several bits. The string is static: never
// free it.
const char *vfio_io_capability_name(uint64_t bit);

// Connects to the vfio-user server listening on the Unix socket
// `socket_path` (a NUL-terminated UTF-8 path) as `vfio_io_user_connect`
// does, with the client options in `opts` (NULL: all defaults). On success
// `*out` receives a new handle, owned by the caller, who frees it with
// `vfio_io_device_close`; on failure `*out` is left alone. `opts->size`
// follows the kernel's extensible structs (as `openat2`'s `struct
// open_how`): smaller than the fields of the first version (12 bytes) is
// -EINVAL; larger than this library's struct is accepted if every byte
// past it is zero (a newer caller leaving newer fields at their defaults)
// and -E2BIG otherwise, or when larger than 4096. Returns 0 or -errno:
// -EINVAL for a NULL `socket_path` or `out` or a short `size`, -E2BIG as
// said, -ENOENT or -ECONNREFUSED when nothing listens, -EPROTO when the
// peer does not speak vfio-user, -ETIMEDOUT when it does not answer within
// the timeout.
int vfio_io_user_connect_with(const char *socket_path,
                              const struct vfio_io_user_options *opts,
                              struct vfio_io_device **out);

// Starts logging the pages the device writes in `nr_ranges` IOVA ranges
// at `ranges` (non-empty, not overlapping; read only during the call), at
// the granularity `page_size` (a power of two from 4096 to 1 GiB). Pages
// written before the start are not logged; only device writes are.
// `dev` must be NULL or a live handle. Returns 0 or -errno: -EINVAL for a
// NULL `dev` or `ranges`, no range, a bad page size, an empty, wrapping or
// overlapping range; -E2BIG for more than 256 ranges or more than 2^29
// pages in all (a bitmap of 64 MiB); -EBUSY when already started;
// -ENOTTY when the device lacks `VFIO_IO_CAP_DIRTY_TRACKING` over
// vfio-user, and on kernel VFIO (use `device_feature` there).
int vfio_io_dirty_start(struct vfio_io_device *dev,
                        uint64_t page_size,
                        const struct vfio_device_feature_dma_logging_range *ranges,
                        uint32_t nr_ranges);

// Reads and clears the log of `[iova, iova + length)` into `bitmap`: one
// bit per `page_size` page (a power of two from 4096 to 1 GiB, which need
// not be the start's), bit `n % 64` of `bitmap[n / 64]` for the page at
// `iova + n * page_size`, set when the device wrote any byte of it since
// the last report. `bitmap` must hold ceil(ceil(length / page_size) / 64)
// uint64_t words; they are overwritten (bits past the range are 0).
// Reading clears: a second report of the same range shows only writes made
// after the first. `dev` must be NULL or a live handle. Returns 0 or -errno:
// -EINVAL for a NULL `dev` or `bitmap`, logging not started (or stopped),
// a bad page size, an empty or wrapping range, or one outside the started
// ranges; -E2BIG for more than 2^29 pages; -ENOTTY as for
// `vfio_io_dirty_start`. On an error other than -EINVAL and -ENOTTY the log
// may have lost bits: treat all memory as dirty.
int vfio_io_dirty_report(struct vfio_io_device *dev,
                         uint64_t iova,
                         uint64_t length,
                         uint64_t page_size,
                         uint64_t *bitmap);

// Stops logging and frees the log; a stop while not started succeeds.
// `dev` must be NULL or a live handle. Returns 0 or -errno: -EINVAL for a
// NULL `dev`; -ENOTTY as for `vfio_io_dirty_start`.
int vfio_io_dirty_stop(struct vfio_io_device *dev);

// Writes the device's migration state (`enum vfio_device_mig_state`:
// `VFIO_DEVICE_STATE_RUNNING`, `_STOP`, `_STOP_COPY`, `_RESUMING`) to
// `*state`. `dev` must be NULL or a live handle; `state` must point to a
// uint32_t. Returns 0 or -errno: -EINVAL for a NULL argument, -ENOTTY for
// a device without `VFIO_IO_CAP_MIGRATION` (on kernel VFIO the kernel's
// answer: a driver without migration), the peer's or kernel's error
// otherwise.
int vfio_io_migration_get_state(struct vfio_io_device *dev, uint32_t *state);

// Moves the device to migration state `state`, through STOP where no
// direct arc leads (RUNNING -> STOP_COPY is RUNNING -> STOP -> STOP_COPY),
// as the kernel does. Entering STOP_COPY saves the device's state for
// `vfio_io_migration_read`; leaving RESUMING for STOP loads what
// `vfio_io_migration_write` gave. `dev` must be NULL or a live handle.
// Returns 0 or -errno: -EINVAL for NULL, for `VFIO_DEVICE_STATE_ERROR`, a
// state the device lacks (the P2P and PRE_COPY states), or a stream the
// device refuses on RESUMING -> STOP (the device keeps its state and stays
// RESUMING, ready for a whole stream again); -ENOTTY as for
// `vfio_io_migration_get_state`. A failed step leaves the device where the
// steps before it took it.
int vfio_io_migration_set_state(struct vfio_io_device *dev, uint32_t state);

// Reads up to `len` bytes of the device's state stream into `buf`, which
// holds `len` bytes; call it until it returns 0. STOP_COPY only. `dev`
// must be NULL or a live handle. Returns the number of bytes read (fewer
// than `len` is not the end: only 0 is), 0 at the end of the stream, or
// -errno: -EINVAL for NULL or outside STOP_COPY, -EPROTO when the server
// sends more than it announced or a malformed reply, -ENOTTY as for
// `vfio_io_migration_get_state`.
ssize_t vfio_io_migration_read(struct vfio_io_device *dev, void *buf, size_t len);

// Appends `len` bytes at `buf` (only read) to the incoming state stream.
// RESUMING only; the stream is loaded by `vfio_io_migration_set_state` to
// STOP. `dev` must be NULL or a live handle. Returns the number of bytes
// taken (all of them unless a later chunk of a large write failed), or
// -errno: -EINVAL for NULL, outside RESUMING, or past the longest stream
// the device loads; -ENOTTY as for `vfio_io_migration_get_state`.
ssize_t vfio_io_migration_write(struct vfio_io_device *dev, const void *buf, size_t len);

// Describes a device and listens for vfio-user clients on the Unix socket
// `socket_path` (NUL-terminated UTF-8; it must not exist), with the
// default server options: `vfio_io_server_create_with` with NULL options.
// `dev` and `ops` are read during the call only; `opaque` is handed to
// every callback. Region fds in `dev` are borrowed: the library duplicates
// them, the caller still closes its own. Configuration space (region 7) is
// emulated from `dev` unless it lists region 7. On success `*out` receives
// a new server, owned by the caller, freed with `vfio_io_server_destroy`;
// on failure `*out` is left alone. Returns 0 or -errno: -EINVAL for a NULL
// argument, a `dev->size` or `ops->size` of no version, migration
// callbacks given in part, or an inconsistent description or doorbell
// (what is wrong goes to the log handler at error level), -EBADF for a
// region fd that is not open, -EADDRINUSE when `socket_path` exists.
int vfio_io_server_create(const char *socket_path,
                          const struct vfio_io_server_device *dev,
                          const struct vfio_io_server_ops *ops,
                          void *opaque,
                          struct vfio_io_server **out);

// `vfio_io_server_create` with server options `opts` (NULL: all
// defaults): timeouts, polling and tracing of the server (see `struct
// vfio_io_server_options`). `opts` is read during the call only.
// `opts->size` follows the kernel's extensible structs (as `openat2`'s
// `struct open_how`): smaller than the fields of the first version (20
// bytes) is -EINVAL; larger than this library's struct is accepted if
// every byte past it is zero (a newer caller leaving newer fields at their
// defaults) and -E2BIG otherwise, or when larger than 4096. Returns 0 or
// -errno as `vfio_io_server_create`, and besides -EINVAL for a short
// `opts->size` or unknown `opts->flags`, -E2BIG as said.
int vfio_io_server_create_with(const char *socket_path,
                               const struct vfio_io_server_device *dev,
                               const struct vfio_io_server_ops *ops,
                               void *opaque,
                               const struct vfio_io_server_options *opts,
                               struct vfio_io_server **out);

// Serves clients one after another on the calling thread until
// `vfio_io_server_stop`; the callbacks run on this thread. A client that
// breaks the protocol is dropped (logged) and the next one served. Returns
// 0 once stopped (at once if it was stopped before), -EBUSY if `run` or
// `vfio_io_server_dispatch` is already under way on another thread, -EINVAL for a NULL `srv`, or the
// -errno of a failing accept. `srv` must be NULL or a live server.
int vfio_io_server_run(struct vfio_io_server *srv);

// The fd to poll for `vfio_io_server_dispatch`, for serving the device
// from the caller's own event loop instead of `vfio_io_server_run`: it is
// readable (level-triggered, `POLLIN`) while `dispatch` has work (a client
// to accept, a command, an interrupt eventfd, a request of another thread).
// It belongs to the server: the same fd for the server's whole life, closed
// by `vfio_io_server_destroy`; do not close, read or write it, only poll
// it (poll, select, or add it to an epoll set). Callable from any thread.
// Returns the fd, or -EINVAL for a NULL `srv`. `srv` must be NULL or a
// live server.
int vfio_io_server_poll_fd(struct vfio_io_server *srv);

// Does what is ready on the server, without waiting for input, and returns:
// accepts a waiting client, or handles the commands already received (a
// bounded number; the poll fd stays readable for the rest), the interrupt
// eventfds that fired and the requests of other threads. The callbacks run
// on the calling thread, within this call. Call it when
// `vfio_io_server_poll_fd` is readable; a call with nothing ready returns 0
// at once. A command whose callback does DMA by message waits for the
// client's reply (at most the DMA timeout), as under `run`.
//
// One call at a time: a call while another thread's `dispatch` or
// `vfio_io_server_run` is under way, or from within a callback of this
// server, gets -EBUSY. Which thread calls may change from call to call. While no
// `dispatch` is under way, `vfio_io_server_irq_trigger` and the DMA calls
// act at once on the session from any thread; during one, another thread's
// call is handed to it (the poll fd wakes the loop), as under `run`.
//
// Returns 0 (also when the client left or was dropped for breaking the
// protocol: the next call accepts the next client), -ESHUTDOWN after
// `vfio_io_server_stop` (the session is ended), -EBUSY as above, -EINVAL
// for a NULL `srv`, or another -errno of a failing accept or epoll call.
// `srv` must be NULL or a live server.
int vfio_io_server_dispatch(struct vfio_io_server *srv);

// Makes `vfio_io_server_run` return soon, from any thread (or from a
// callback): the current client is disconnected at once (a request whose
// callback stops the server gets no reply) and no other is accepted, now
// or by a later `run`; `vfio_io_server_dispatch` returns -ESHUTDOWN from
// then on. `srv` must be NULL (ignored) or a live server.
void vfio_io_server_stop(struct vfio_io_server *srv);

// Frees a server: closes its socket and the library's duplicates of region
// fds, and removes the socket file. `srv` must be NULL (ignored) or a live
// server whose `vfio_io_server_run` or `vfio_io_server_dispatch` is not
// under way (stop it and join its thread first), nor any other call on it;
// it is invalid afterwards, and so is its poll fd.
void vfio_io_server_destroy(struct vfio_io_server *srv);

// Raises vector `vector` of IRQ index `irq_index` (`VFIO_PCI_MSI_IRQ_INDEX`
// ...) by signalling the eventfd the client attached to it.
//
// Callable from any thread, concurrently. Inside a callback of this server
// it acts at once on the session the callback serves. From any other
// thread it is queued for the thread in `vfio_io_server_run` (or in
// `vfio_io_server_dispatch`), which runs it between client commands, and
// the caller waits for it: at most the server's DMA timeout (5 s) for it
// to begin, so a callback that waits for such a thread delays it, but
// cannot hang it, and gets -ETIMEDOUT back. When no thread is serving (a
// device served by `dispatch`, between calls) the caller acts at once.
//
// Returns 1 when an eventfd was signalled, 0 when the client attached none
// or masked the vector; -EINVAL for a NULL `srv` or a vector the device
// does not have, -ENOTCONN when no client is being served (none connected,
// or `run` not under way), -ETIMEDOUT as above. `srv` must be NULL or a
// live server.
int vfio_io_server_irq_trigger(struct vfio_io_server *srv, uint32_t irq_index, uint32_t vector);

// Reads `len` bytes of client memory at DMA address `iova` into `buf`:
// through the memory the client mapped with an fd, else by a DMA_READ
// message the client answers.
//
// Callable from any thread, concurrently, as `vfio_io_server_irq_trigger`:
// inside a callback of this server at once, from another thread queued for
// the serving thread (the bytes are copied into `buf` before it returns).
//
// Returns 0 or -errno: -EINVAL for a NULL `srv` or `buf` (with `len` > 0),
// -EFAULT for a range the client has not mapped readable, -ETIMEDOUT when
// the client does not answer or (from another thread) the serving thread
// does not get to it within the DMA timeout, -ENOTCONN when no client is
// being served. `srv` must be NULL or a live server; `buf` holds `len` bytes.
int vfio_io_server_dma_read(struct vfio_io_server *srv, uint64_t iova, void *buf, size_t len);

// Writes the `len` bytes of `buf` into client memory at DMA address
// `iova`, as `vfio_io_server_dma_read` reads (mapped memory, else a
// DMA_WRITE message); the write is logged for dirty-page tracking.
// Callable from any thread, concurrently, as `vfio_io_server_dma_read`
// (from another thread `buf` is copied before the call is queued).
// Returns 0 or -errno (-EINVAL for a NULL `srv` or `buf`, -EFAULT for a
// range not mapped writable, -ETIMEDOUT, -ENOTCONN as for
// `vfio_io_server_dma_read`). `buf` is only read.
int vfio_io_server_dma_write(struct vfio_io_server *srv,
                             uint64_t iova,
                             const void *buf,
                             size_t len);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* VFIO_IO_H */
