//! Fixed-layout messages declared once as a field list: `wire_struct!`
//! derives the struct, its encoded size, its encoder and its length-checked
//! decoder from the same list, so layout and code cannot drift apart.

/// A field type with a fixed size on the wire, in host byte order.
pub(crate) trait WireField: Sized {
    /// Bytes the field takes.
    const SIZE: usize;
    /// Reads the field at `at`; `None` when `b` ends first.
    fn get(b: &[u8], at: usize) -> Option<Self>;
    /// Writes the field at `at` of a buffer the caller sized.
    fn put(&self, b: &mut [u8], at: usize);
}

/// Integers: their native-endian bytes, as the protocol wants.
macro_rules! wire_int {
    ($($t:ty),+) => {$(
        impl WireField for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn get(b: &[u8], at: usize) -> Option<Self> {
                <[u8; std::mem::size_of::<$t>()]>::get(b, at).map(<$t>::from_ne_bytes)
            }
            fn put(&self, b: &mut [u8], at: usize) {
                self.to_ne_bytes().put(b, at)
            }
        }
    )+};
}

wire_int!(u16, u32, u64);

impl<const N: usize> WireField for [u8; N] {
    const SIZE: usize = N;
    fn get(b: &[u8], at: usize) -> Option<Self> {
        b.get(at..at.checked_add(N)?)?.try_into().ok()
    }
    fn put(&self, b: &mut [u8], at: usize) {
        b[at..at + N].copy_from_slice(self)
    }
}

/// Declares a fixed-layout message: the fields in wire order, each one
/// [`WireField`], with `[pad N]` after a field for N reserved bytes (written
/// as zeros, ignored when read; not allowed after the last field).
///
/// ```ignore
/// wire_struct! {
///     /// The DMA_UNMAP payload.
///     pub struct DmaUnmapMsg("DMA_UNMAP", 24 bytes) {
///         /// Largest reply accepted.
///         pub argsz: u32,
///         pub flags: u32,
///         pub address: u64,
///         pub size: u64,
///     }
/// }
/// ```
///
/// generates the struct, `SIZE` (checked against the stated size at compile
/// time), `encode(&self) -> [u8; SIZE]`, and `decode(&[u8]) -> Result<Self>`,
/// which reads the first `SIZE` bytes and refuses shorter input with a
/// "message too short" protocol error naming the message. Bytes past `SIZE`
/// are the caller's (a message's variable part). A message whose decoder must
/// also validate names the raw decoder instead:
/// `struct Header("header", 16 bytes, fn decode_fields)`.
macro_rules! wire_struct {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident ($what:literal, $size:literal bytes) $body:tt
    ) => {
        wire_struct! {
            $(#[$meta])*
            $vis struct $name ($what, $size bytes, pub fn decode) $body
        }
    };
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident ($what:literal, $size:literal bytes, $dvis:vis fn $decode:ident) {
            $( $(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty $([pad $pad:literal])? ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis struct $name {
            $( $(#[$fmeta])* $fvis $field: $ty, )+
        }

        impl $name {
            /// Encoded size in bytes.
            pub const SIZE: usize =
                0 $( + <$ty as $crate::user::proto::layout::WireField>::SIZE $( + $pad)? )+;

            /// Encodes the fields in wire order.
            pub fn encode(&self) -> [u8; Self::SIZE] {
                use $crate::user::proto::layout::WireField;
                let mut b = [0u8; Self::SIZE];
                let mut at = 0;
                $(
                    self.$field.put(&mut b, at);
                    at += <$ty as WireField>::SIZE $( + $pad)?;
                )+
                debug_assert_eq!(at, Self::SIZE);
                b
            }

            /// Decodes the fields from the start of `b`.
            $dvis fn $decode(b: &[u8]) -> $crate::error::Result<Self> {
                use $crate::user::proto::layout::WireField;
                let mut at = 0;
                $(
                    let $field = <$ty as WireField>::get(b, at)
                        .ok_or_else(|| $crate::bytes::short($what))?;
                    at += <$ty as WireField>::SIZE $( + $pad)?;
                )+
                debug_assert_eq!(at, Self::SIZE);
                Ok($name { $($field),+ })
            }
        }

        const _: () = assert!($name::SIZE == $size, "wire size differs from the stated size");
    };
}

#[cfg(test)]
mod tests {
    use crate::error::Error;

    wire_struct! {
        /// Every field kind, with padding in the middle.
        struct Sample("sample", 24 bytes) {
            a: u16,
            b: u16 [pad 4],
            c: u64,
            d: [u8; 8],
        }
    }

    #[test]
    fn fields_land_in_order_with_padding_zeroed() {
        let s = Sample {
            a: 0x0102,
            b: 0x0304,
            c: 0x0506_0708_090a_0b0c,
            d: [1, 2, 3, 4, 5, 6, 7, 8],
        };
        let b = s.encode();
        assert_eq!(b.len(), 24);
        assert_eq!(&b[0..2], &0x0102u16.to_ne_bytes());
        assert_eq!(&b[2..4], &0x0304u16.to_ne_bytes());
        assert_eq!(&b[4..8], &[0; 4]);
        assert_eq!(&b[8..16], &0x0506_0708_090a_0b0cu64.to_ne_bytes());
        assert_eq!(&b[16..24], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(Sample::decode(&b).unwrap(), s);
    }

    #[test]
    fn padding_is_ignored_and_trailing_bytes_left_alone() {
        let mut b = [0xffu8; 30];
        b[4..8].copy_from_slice(&[9, 9, 9, 9]);
        let s = Sample::decode(&b).unwrap();
        assert_eq!((s.a, s.b, s.c, s.d), (0xffff, 0xffff, u64::MAX, [0xff; 8]));
    }

    #[test]
    fn every_short_length_is_refused_with_the_message_name() {
        let b = [0u8; 24];
        for n in 0..24 {
            match Sample::decode(&b[..n]) {
                Err(Error::Protocol(m)) => assert!(m.starts_with("sample:"), "{m}"),
                other => panic!("{n} bytes decoded as {other:?}"),
            }
        }
    }
}
