//! Migration messages: the data of the migration features of
//! DEVICE_FEATURE, and the fixed part of MIG_DATA_READ/MIG_DATA_WRITE.

wire_struct! {
    /// `struct vfio_device_feature_migration`: GET MIGRATION's data.
    pub struct MigrationFeature("VFIO_DEVICE_FEATURE_MIGRATION", 8 bytes) {
        /// `VFIO_MIGRATION_*`: the optional states the device has.
        pub flags: u64,
    }
}

wire_struct! {
    /// `struct vfio_device_feature_mig_state`: GET and SET MIG_DEVICE_STATE's
    /// data (the SET reply echoes it).
    pub struct MigStateMsg("VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE", 8 bytes) {
        /// `enum vfio_device_mig_state`.
        pub device_state: u32,
        /// Unused over vfio-user (the data goes by MIG_DATA_READ/WRITE).
        pub data_fd: u32,
    }
}

wire_struct! {
    /// `struct vfio_device_feature_mig_data_size`: GET MIG_DATA_SIZE's data.
    pub struct MigDataSize("VFIO_DEVICE_FEATURE_MIG_DATA_SIZE", 8 bytes) {
        /// Bytes left to read before STOP_COPY's stream ends.
        pub stop_copy_length: u64,
    }
}

wire_struct! {
    /// The fixed part of MIG_DATA_READ (request and reply) and
    /// MIG_DATA_WRITE (request); in a reply and a write the data follows.
    pub struct MigDataMsg("MIG_DATA", 8 bytes) {
        /// Request: the largest reply payload accepted. Reply: the size of
        /// this fixed part and the data.
        pub argsz: u32,
        /// Request of a read: bytes wanted. Reply of a read: bytes sent
        /// (fewer than wanted at the end of the stream). Write: bytes sent.
        pub size: u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_messages_round_trip_and_need_their_size() {
        let m = MigDataMsg {
            argsz: 24,
            size: 16,
        };
        assert_eq!(MigDataMsg::decode(&m.encode()).unwrap(), m);
        assert!(MigDataMsg::decode(&m.encode()[..7]).is_err());
        let s = MigStateMsg {
            device_state: 3,
            data_fd: u32::MAX,
        };
        assert_eq!(&s.encode()[..4], &3u32.to_ne_bytes());
        assert_eq!(MigStateMsg::decode(&s.encode()).unwrap(), s);
        let f = MigrationFeature { flags: 1 };
        assert_eq!(MigrationFeature::decode(&f.encode()).unwrap(), f);
        let d = MigDataSize {
            stop_copy_length: 4,
        };
        assert_eq!(MigDataSize::decode(&d.encode()).unwrap(), d);
    }
}
