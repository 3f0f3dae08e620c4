//! DMA messages: the client's DMA_MAP/DMA_UNMAP of its memory, and the fixed
//! part of the server's DMA_READ/DMA_WRITE into it.

/// `VFIO_USER_DMA_MAP` flags: the server may read the memory.
pub const DMA_MAP_READ: u32 = 1 << 0;
/// `VFIO_USER_DMA_MAP` flags: the server may write the memory.
pub const DMA_MAP_WRITE: u32 = 1 << 1;

wire_struct! {
    /// The DMA_MAP request payload (32 bytes).
    pub struct DmaMapMsg("DMA_MAP", 32 bytes) {
        /// Size of this structure.
        pub argsz: u32,
        /// [`DMA_MAP_READ`] | [`DMA_MAP_WRITE`].
        pub flags: u32,
        /// Offset of the memory within the passed fd (0 without one).
        pub offset: u64,
        /// DMA address of the first byte.
        pub address: u64,
        /// Length.
        pub size: u64,
    }
}

wire_struct! {
    /// The DMA_UNMAP payload (24 bytes), in the request and echoed in the reply.
    pub struct DmaUnmapMsg("DMA_UNMAP", 24 bytes) {
        /// Largest reply accepted.
        pub argsz: u32,
        /// Unused (0).
        pub flags: u32,
        /// DMA address of the mapping.
        pub address: u64,
        /// Length of the mapping.
        pub size: u64,
    }
}

wire_struct! {
    /// The fixed part of DMA_READ/DMA_WRITE (16 bytes); data follows.
    pub struct DmaAccess("DMA access", 16 bytes) {
        /// DMA address.
        pub address: u64,
        /// Byte count.
        pub count: u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn dma_messages_round_trip() {
        let m = DmaMapMsg {
            argsz: 32,
            flags: 3,
            offset: 1,
            address: 2,
            size: 3,
        };
        assert_eq!(DmaMapMsg::decode(&m.encode()).unwrap(), m);
        let u = DmaUnmapMsg {
            argsz: 24,
            flags: 0,
            address: 5,
            size: 6,
        };
        assert_eq!(DmaUnmapMsg::decode(&u.encode()).unwrap(), u);
        let d = DmaAccess {
            address: 9,
            count: 10,
        };
        assert_eq!(DmaAccess::decode(&d.encode()).unwrap(), d);
    }

    #[test]
    fn short_dma_messages_are_refused() {
        let m = [0u8; DmaMapMsg::SIZE];
        assert!(matches!(
            DmaMapMsg::decode(&m[..31]),
            Err(Error::Protocol(_))
        ));
        assert!(DmaUnmapMsg::decode(&m[..DmaUnmapMsg::SIZE - 1]).is_err());
        assert!(DmaAccess::decode(&m[..DmaAccess::SIZE - 1]).is_err());
    }
}
