//! Region messages: REGION_READ/REGION_WRITE, REGION_WRITE_MULTI and
//! DEVICE_GET_REGION_IO_FDS. DEVICE_GET_REGION_INFO shares its layout with the
//! kernel ioctl and lives in `crate::region_info`.

use crate::error::{Error, Result};

wire_struct! {
    /// The fixed part of REGION_READ/REGION_WRITE (16 bytes); data follows.
    pub struct RegionAccess("region access", 16 bytes) {
        /// Offset into the region.
        pub offset: u64,
        /// Region index.
        pub region: u32,
        /// Byte count.
        pub count: u32,
    }
}

wire_struct! {
    /// One write of REGION_WRITE_MULTI (24 bytes; at most 8 data bytes).
    pub struct MultiWrite("REGION_WRITE_MULTI", 24 bytes) {
        /// Offset into the region.
        pub offset: u64,
        /// Region index.
        pub region: u32,
        /// Byte count, 1..=8.
        pub count: u32,
        /// The data, first `count` bytes used.
        pub data: [u8; 8],
    }
}

impl MultiWrite {
    /// Most entries one message may carry.
    pub const MAX_ENTRIES: usize = 1024;
}

/// Encodes a REGION_WRITE_MULTI payload.
pub fn encode_write_multi(writes: &[MultiWrite], out: &mut Vec<u8>) {
    out.extend_from_slice(&(writes.len() as u64).to_ne_bytes());
    for w in writes {
        out.extend_from_slice(&w.encode());
    }
}

/// Decodes a REGION_WRITE_MULTI payload.
pub fn decode_write_multi(b: &[u8]) -> Result<Vec<MultiWrite>> {
    let n = crate::bytes::u64_at(b, 0).ok_or_else(|| crate::bytes::short("REGION_WRITE_MULTI"))?;
    if n as usize > MultiWrite::MAX_ENTRIES || b.len() < 8 + n as usize * MultiWrite::SIZE {
        return Err(Error::Protocol(format!(
            "REGION_WRITE_MULTI claims {n} writes"
        )));
    }
    b[8..]
        .chunks_exact(MultiWrite::SIZE)
        .take(n as usize)
        .map(|e| {
            let w = MultiWrite::decode(e)?;
            if w.count == 0 || w.count > 8 {
                return Err(Error::Protocol(format!(
                    "REGION_WRITE_MULTI entry of {} bytes",
                    w.count
                )));
            }
            Ok(w)
        })
        .collect()
}

wire_struct! {
    /// The fixed part of DEVICE_GET_REGION_IO_FDS (16 bytes), request and
    /// reply alike; a reply's `count` sub-regions follow it.
    pub struct RegionIoFds("DEVICE_GET_REGION_IO_FDS", 16 bytes) {
        /// Request: room for the reply. Reply: the size the whole reply needs.
        pub argsz: u32,
        /// Zero.
        pub flags: u32,
        /// Region index.
        pub index: u32,
        /// Request: zero. Reply: number of sub-regions.
        pub count: u32,
    }
}

wire_struct! {
    /// One sub-region of a DEVICE_GET_REGION_IO_FDS reply (40 bytes).
    pub struct IoFdSubRegion("DEVICE_GET_REGION_IO_FDS", 40 bytes) {
        /// Offset within the region.
        pub offset: u64,
        /// Length (0: any access size).
        pub size: u64,
        /// Index of the fd in the message's fd array.
        pub fd_index: u32,
        /// 0 ioeventfd, 1 ioregionfd.
        pub kind: u32,
        /// KVM ioeventfd/ioregionfd flags.
        pub flags: u32 [pad 4],
        /// Datamatch value (ioeventfd) or user data (ioregionfd).
        pub data: u64,
    }
}

/// A DEVICE_GET_REGION_IO_FDS request for region `index`, accepting `argsz`
/// bytes back.
pub fn encode_io_fds_request(argsz: u32, index: u32) -> [u8; RegionIoFds::SIZE] {
    RegionIoFds {
        argsz,
        flags: 0,
        index,
        count: 0,
    }
    .encode()
}

/// The (argsz, index) of a DEVICE_GET_REGION_IO_FDS request. The spec wants
/// flags and count zero, and the reply's fixed part needs 16 bytes of room.
/// A request that breaks these is the client's mistake, not a broken stream:
/// the errors are [`Error::InvalidArgument`], answered with `EINVAL`.
pub fn decode_io_fds_request(b: &[u8]) -> Result<(u32, u32)> {
    let r = RegionIoFds::decode(b)
        .map_err(|_| Error::InvalidArgument("DEVICE_GET_REGION_IO_FDS too short"))?;
    if (r.argsz as usize) < RegionIoFds::SIZE {
        return Err(Error::InvalidArgument(
            "DEVICE_GET_REGION_IO_FDS argsz below its reply's 16 bytes",
        ));
    }
    if r.flags != 0 || r.count != 0 {
        return Err(Error::InvalidArgument(
            "DEVICE_GET_REGION_IO_FDS flags and count must be zero",
        ));
    }
    Ok((r.argsz, r.index))
}

/// Encodes a DEVICE_GET_REGION_IO_FDS reply; sub-regions are dropped (count
/// still reported through argsz) when they do not fit `argsz`.
pub fn encode_io_fds(argsz: u32, index: u32, subs: &[IoFdSubRegion]) -> Vec<u8> {
    let needed = RegionIoFds::SIZE + subs.len() * IoFdSubRegion::SIZE;
    let fixed = RegionIoFds {
        argsz: needed as u32,
        flags: 0,
        index,
        count: subs.len() as u32,
    };
    let mut out = fixed.encode().to_vec();
    if needed <= argsz as usize {
        for s in subs {
            out.extend_from_slice(&s.encode());
        }
    }
    out
}

/// Decodes a DEVICE_GET_REGION_IO_FDS reply: (index, sub-regions).
pub fn decode_io_fds(b: &[u8]) -> Result<(u32, Vec<IoFdSubRegion>)> {
    let fixed = RegionIoFds::decode(b)?;
    let count = fixed.count as usize;
    let entries = &b[RegionIoFds::SIZE..];
    let have = entries.len() / IoFdSubRegion::SIZE;
    if count > have {
        return Err(Error::Protocol(format!(
            "REGION_IO_FDS claims {count} sub-regions, carries {have}"
        )));
    }
    let subs = entries
        .chunks_exact(IoFdSubRegion::SIZE)
        .take(count)
        .map(IoFdSubRegion::decode)
        .collect::<Result<_>>()?;
    Ok((fixed.index, subs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bytes::{put_u32, put_u64};

    #[test]
    fn region_access_round_trips_and_needs_16_bytes() {
        let r = RegionAccess {
            offset: 8,
            region: 7,
            count: 4,
        };
        assert_eq!(RegionAccess::decode(&r.encode()).unwrap(), r);
        assert!(RegionAccess::decode(&r.encode()[..15]).is_err());
    }

    #[test]
    fn write_multi_round_trips_and_bounds_entries() {
        let w = MultiWrite {
            offset: 4,
            region: 0,
            count: 4,
            data: [1, 2, 3, 4, 0, 0, 0, 0],
        };
        let mut b = Vec::new();
        encode_write_multi(&[w, w], &mut b);
        assert_eq!(decode_write_multi(&b).unwrap(), vec![w, w]);
        put_u64(&mut b, 0, 3);
        assert!(decode_write_multi(&b).is_err());
        put_u64(&mut b, 0, MultiWrite::MAX_ENTRIES as u64 + 1);
        assert!(decode_write_multi(&b).is_err());
        for count in [0, 9] {
            let mut b = Vec::new();
            encode_write_multi(&[MultiWrite { count, ..w }], &mut b);
            assert!(decode_write_multi(&b).is_err(), "count {count}");
        }
        assert!(decode_write_multi(&[0; 7]).is_err());
        assert_eq!(decode_write_multi(&[0; 8]).unwrap(), Vec::new());
    }

    fn sub() -> IoFdSubRegion {
        IoFdSubRegion {
            offset: 0x1000,
            size: 4,
            fd_index: 0,
            kind: 0,
            flags: 1,
            data: 7,
        }
    }

    #[test]
    fn io_fds_round_trip_and_count_check() {
        let s = sub();
        let b = encode_io_fds(4096, 0, &[s]);
        assert_eq!(decode_io_fds(&b).unwrap(), (0, vec![s]));
        let mut bad = b.clone();
        put_u32(&mut bad, 12, 2);
        assert!(decode_io_fds(&bad).is_err());
        assert!(decode_io_fds(&b[..15]).is_err());
    }

    #[test]
    fn io_fds_reply_without_room_reports_the_size_needed() {
        let b = encode_io_fds(16, 3, &[sub(), sub()]);
        assert_eq!(b.len(), RegionIoFds::SIZE);
        let fixed = RegionIoFds::decode(&b).unwrap();
        assert_eq!((fixed.argsz, fixed.index, fixed.count), (96, 3, 2));
    }

    #[test]
    fn io_fds_request_round_trips() {
        let b = encode_io_fds_request(4096, 2);
        assert_eq!(decode_io_fds_request(&b).unwrap(), (4096, 2));
        assert_eq!(
            decode_io_fds_request(&encode_io_fds_request(16, 0)).unwrap(),
            (16, 0)
        );
    }

    #[test]
    fn io_fds_request_rejections_are_einval() {
        let good = encode_io_fds_request(4096, 2);
        let mut small_argsz = good;
        put_u32(&mut small_argsz, 0, 15);
        let mut flags = good;
        put_u32(&mut flags, 4, 1);
        let mut count = good;
        put_u32(&mut count, 12, 1);
        for bad in [&good[..15], &small_argsz[..], &flags[..], &count[..]] {
            let e = decode_io_fds_request(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
            assert_eq!(e.errno(), libc::EINVAL);
        }
    }
}
