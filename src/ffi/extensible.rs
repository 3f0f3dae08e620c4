//! Extensible option structs of the C ABI: a struct whose first field is
//! its `size` as the caller was compiled, checked the way the kernel checks
//! `openat2`'s `struct open_how`, so callers built against an older or
//! newer header keep working.

use crate::error::{Error, Result};

/// Largest `size` accepted: a page, as the kernel bounds its extensible
/// structs, so a garbage size is refused instead of scanned.
pub(super) const MAX_SIZE: usize = 4096;

/// The bytes of the caller's options struct, this library's `known` bytes
/// of it: `None` for NULL (every default). A `size` below `first` (the
/// struct of the first version) is `EINVAL`; one past `known` is accepted
/// when every byte past `known` is zero (a newer caller leaving newer
/// fields at their defaults), else `E2BIG`, as is one above [`MAX_SIZE`].
/// A shorter struct of an older version reads as zeros past its end.
///
/// # Safety
/// `opts` must be NULL or point to a uint32_t `size` followed by readable
/// memory up to `size` bytes in all (only the first 4 bytes are read when
/// `size` is out of range).
pub(super) unsafe fn options_bytes(
    opts: *const u8,
    first: usize,
    known: usize,
) -> Result<Option<Vec<u8>>> {
    if opts.is_null() {
        return Ok(None);
    }
    // SAFETY: per the contract the struct starts with its 4-byte size;
    // read unaligned, so a packed caller struct is fine too.
    let size = unsafe { opts.cast::<u32>().read_unaligned() } as usize;
    if size < first {
        return Err(Error::InvalidArgument(
            "options size is smaller than the struct's first version",
        ));
    }
    if size > MAX_SIZE {
        return Err(Error::Errno {
            op: "options size larger than a page",
            errno: libc::E2BIG,
        });
    }
    // SAFETY: per the contract `size` bytes from `opts` are readable, and
    // `size` was just bounded.
    let bytes = unsafe { std::slice::from_raw_parts(opts, size) };
    if bytes
        .get(known..)
        .is_some_and(|tail| tail.iter().any(|&b| b != 0))
    {
        return Err(Error::Errno {
            op: "options set fields this library does not know",
            errno: libc::E2BIG,
        });
    }
    let mut ours = bytes[..size.min(known)].to_vec();
    ours.resize(known, 0);
    Ok(Some(ours))
}

/// The native-endian u32 at byte `at` of `bytes` (within the known struct).
pub(super) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_ne_bytes(b)
}
