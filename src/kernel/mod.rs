//! The kernel VFIO backend.
