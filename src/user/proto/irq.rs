//! IRQ messages: DEVICE_GET_IRQ_INFO and the fixed part of DEVICE_SET_IRQS.

use crate::device::IrqInfo;
use crate::error::Result;

/// IRQ info payload size.
pub const IRQ_INFO_SIZE: usize = IrqInfoMsg::SIZE;

wire_struct! {
    /// `struct vfio_irq_info` as DEVICE_GET_IRQ_INFO carries it.
    struct IrqInfoMsg("DEVICE_GET_IRQ_INFO", 16 bytes) {
        argsz: u32,
        flags: u32,
        index: u32,
        count: u32,
    }
}

/// Encodes a DEVICE_GET_IRQ_INFO payload.
pub fn encode_irq_info(argsz: u32, info: &IrqInfo) -> [u8; IRQ_INFO_SIZE] {
    IrqInfoMsg {
        argsz,
        flags: info.flags,
        index: info.index,
        count: info.count,
    }
    .encode()
}

/// Decodes a DEVICE_GET_IRQ_INFO payload.
pub fn decode_irq_info(b: &[u8]) -> Result<IrqInfo> {
    let m = IrqInfoMsg::decode(b)?;
    Ok(IrqInfo {
        flags: m.flags,
        index: m.index,
        count: m.count,
    })
}

/// Fixed part of a SET_IRQS payload.
pub const IRQ_SET_SIZE: usize = IrqSetMsg::SIZE;

wire_struct! {
    /// The fixed part of `struct vfio_irq_set`; the data follows at
    /// [`IRQ_SET_SIZE`].
    pub struct IrqSetMsg("DEVICE_SET_IRQS", 20 bytes) {
        /// Size of the request payload, data included.
        pub argsz: u32,
        /// `VFIO_IRQ_SET_DATA_*` | `VFIO_IRQ_SET_ACTION_*`.
        pub flags: u32,
        /// IRQ index.
        pub index: u32,
        /// First vector.
        pub start: u32,
        /// Number of vectors.
        pub count: u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn irq_messages_round_trip() {
        let s = IrqSetMsg {
            argsz: 24,
            flags: 0x24,
            index: 1,
            start: 0,
            count: 1,
        };
        assert_eq!(IrqSetMsg::decode(&s.encode()).unwrap(), s);
        let i = IrqInfo {
            index: 1,
            flags: 9,
            count: 1,
        };
        assert_eq!(decode_irq_info(&encode_irq_info(16, &i)).unwrap(), i);
    }

    #[test]
    fn short_irq_messages_are_refused() {
        let i = IrqInfo {
            index: 0,
            flags: 0,
            count: 0,
        };
        let b = encode_irq_info(16, &i);
        assert!(decode_irq_info(&b[..IRQ_INFO_SIZE - 1]).is_err());
        let s = [0u8; IRQ_SET_SIZE];
        assert!(IrqSetMsg::decode(&s[..IRQ_SET_SIZE - 1]).is_err());
    }
}
