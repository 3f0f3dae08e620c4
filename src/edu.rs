//! QEMU's edu device as a vfio-user device model.
