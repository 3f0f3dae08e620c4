//! The 16-byte header that starts every message, and its flag bits.

use crate::error::{Error, Result};

/// Size of the message header.
pub const HEADER_SIZE: usize = Header::SIZE;

/// Header flag bits 0-3: the message type.
pub const FLAG_TYPE_MASK: u32 = 0xf;
/// Message type: a command.
pub const FLAG_TYPE_COMMAND: u32 = 0;
/// Message type: a reply.
pub const FLAG_TYPE_REPLY: u32 = 1;
/// The command wants no reply.
pub const FLAG_NO_REPLY: u32 = 1 << 4;
/// The reply reports an error in the header's error field.
pub const FLAG_ERROR: u32 = 1 << 5;

wire_struct! {
    /// The 16-byte header that starts every message.
    ///
    /// ```
    /// use vfio_io::user::proto::{cmd, Header, HEADER_SIZE};
    ///
    /// let req = Header::command(7, cmd::DEVICE_GET_INFO, 32); // message id 7, 32-byte payload
    /// let bytes = req.encode();
    /// assert_eq!(bytes.len(), HEADER_SIZE);
    /// let back = Header::decode(&bytes, 4096)?;
    /// assert_eq!(back, req);
    /// assert_eq!(back.payload_len(), 32);
    /// assert!(!back.is_reply());
    ///
    /// let err = Header::decode(&Header::error_reply(&req, libc::EINVAL).encode(), 4096)?;
    /// assert!(err.is_reply());
    /// assert_eq!(err.error_errno(), Some(libc::EINVAL));
    ///
    /// // A size field past the receiver's limit is refused before any payload is read.
    /// assert!(Header::decode(&Header::command(1, cmd::DMA_MAP, 8192).encode(), 4096).is_err());
    /// # Ok::<(), vfio_io::Error>(())
    /// ```
    #[derive(Default)]
    pub struct Header("header", 16 bytes, fn decode_fields) {
        /// Message id, chosen by the sender of a command and echoed in its reply.
        pub id: u16,
        /// Command number.
        pub command: u16,
        /// Whole message size, header included.
        pub size: u32,
        /// Type, no-reply and error bits.
        pub flags: u32,
        /// errno of a failed command (in a reply with [`FLAG_ERROR`]).
        pub error: u32,
    }
}

impl Header {
    /// A command header for a payload of `payload_len` bytes.
    pub fn command(id: u16, command: u16, payload_len: usize) -> Self {
        Header {
            id,
            command,
            size: (HEADER_SIZE + payload_len) as u32,
            flags: FLAG_TYPE_COMMAND,
            error: 0,
        }
    }

    /// A successful reply to `req` with a payload of `payload_len` bytes.
    pub fn reply(req: &Header, payload_len: usize) -> Self {
        Header {
            id: req.id,
            command: req.command,
            size: (HEADER_SIZE + payload_len) as u32,
            flags: FLAG_TYPE_REPLY,
            error: 0,
        }
    }

    /// An error reply to `req`: the header alone.
    pub fn error_reply(req: &Header, errno: i32) -> Self {
        Header {
            id: req.id,
            command: req.command,
            size: HEADER_SIZE as u32,
            flags: FLAG_TYPE_REPLY | FLAG_ERROR,
            error: errno as u32,
        }
    }

    /// Decodes a header and checks its size field against `max_size`.
    pub fn decode(b: &[u8], max_size: usize) -> Result<Self> {
        let h = Self::decode_fields(b)?;
        if (h.size as usize) < HEADER_SIZE {
            return Err(Error::Protocol(format!(
                "message size {} is smaller than the header",
                h.size
            )));
        }
        if h.size as usize > max_size {
            return Err(Error::Protocol(format!(
                "message size {} exceeds the limit {max_size}",
                h.size
            )));
        }
        match h.flags & FLAG_TYPE_MASK {
            FLAG_TYPE_COMMAND | FLAG_TYPE_REPLY => Ok(h),
            t => Err(Error::Protocol(format!("unknown message type {t}"))),
        }
    }

    /// Whether this is a reply.
    pub fn is_reply(&self) -> bool {
        self.flags & FLAG_TYPE_MASK == FLAG_TYPE_REPLY
    }

    /// Whether the command asks for no reply.
    pub fn no_reply(&self) -> bool {
        self.flags & FLAG_NO_REPLY != 0
    }

    /// The errno of an error reply, if this is one (`EIO` when the peer sent 0).
    pub fn error_errno(&self) -> Option<i32> {
        if self.flags & FLAG_ERROR == 0 {
            return None;
        }
        let e = self.error as i32;
        Some(if e <= 0 || e > 4095 { libc::EIO } else { e })
    }

    /// Payload length (size minus header).
    pub fn payload_len(&self) -> usize {
        self.size as usize - HEADER_SIZE
    }
}

#[cfg(test)]
mod tests {
    use super::super::cmd;
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_bad_sizes() {
        let h = Header {
            id: 7,
            command: cmd::REGION_READ,
            size: 32,
            flags: FLAG_TYPE_REPLY,
            error: 0,
        };
        assert_eq!(Header::decode(&h.encode(), 64).unwrap(), h);
        let mut small = h;
        small.size = 8;
        assert!(matches!(
            Header::decode(&small.encode(), 64),
            Err(Error::Protocol(_))
        ));
        assert!(matches!(
            Header::decode(&h.encode(), 31),
            Err(Error::Protocol(_))
        ));
        assert!(Header::decode(&h.encode()[..15], 64).is_err());
        let mut bad_type = h;
        bad_type.flags = 7;
        assert!(Header::decode(&bad_type.encode(), 64).is_err());
    }

    #[test]
    fn error_reply_carries_errno_and_zero_becomes_eio() {
        let req = Header::command(3, cmd::DMA_MAP, 32);
        let r = Header::error_reply(&req, libc::EEXIST);
        assert_eq!(r.error_errno(), Some(libc::EEXIST));
        assert_eq!(r.payload_len(), 0);
        let mut z = r;
        z.error = 0;
        assert_eq!(z.error_errno(), Some(libc::EIO));
        assert_eq!(Header::reply(&req, 0).error_errno(), None);
    }
}
