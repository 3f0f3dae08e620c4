//! VERSION negotiation: the JSON capabilities each side proposes and accepts.

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Protocol major version spoken here.
pub const MAJOR: u16 = 0;
/// Protocol minor version spoken here.
pub const MINOR: u16 = 0;
/// Largest VERSION JSON accepted from a peer.
pub const MAX_JSON_LEN: usize = 4096;
/// Default `max_data_xfer_size` when the peer does not give one.
pub const DEFAULT_MAX_DATA_XFER: u32 = 1 << 20;
/// Default `max_dma_maps`.
pub const DEFAULT_MAX_DMA_MAPS: u32 = 65535;

/// Migration parameters from the `migration` capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationCaps {
    /// Dirty-bitmap page size.
    pub pgsize: u64,
    /// Largest dirty bitmap.
    pub max_bitmap_size: u64,
}

/// The capabilities of one side, as carried in the VERSION JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionCaps {
    /// Most fds the sender can receive in one message.
    pub max_msg_fds: u32,
    /// Largest data count of a read/write message.
    pub max_data_xfer_size: u32,
    /// Most simultaneous DMA mappings.
    pub max_dma_maps: u32,
    /// Supported DMA page sizes, or'ed.
    pub pgsizes: u64,
    /// REGION_WRITE_MULTI accepted.
    pub write_multiple: bool,
    /// Migration parameters, when offered.
    pub migration: Option<MigrationCaps>,
    /// Twin-socket mode supported (or, in a reply, enabled).
    pub twin_socket: bool,
    /// In a reply: index in the fd array of the server-to-client socket.
    pub twin_fd_index: Option<u32>,
}

impl Default for VersionCaps {
    fn default() -> Self {
        VersionCaps {
            max_msg_fds: 1,
            max_data_xfer_size: DEFAULT_MAX_DATA_XFER,
            max_dma_maps: DEFAULT_MAX_DMA_MAPS,
            pgsizes: 4096,
            write_multiple: false,
            migration: None,
            twin_socket: false,
            twin_fd_index: None,
        }
    }
}

fn bad(what: &str) -> Error {
    Error::Protocol(format!("VERSION capabilities: {what}"))
}

fn get_u64(obj: &Map<String, Value>, key: &str) -> Result<Option<u64>> {
    match obj.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(&format!("{key} is not a non-negative integer"))),
    }
}

fn get_u32(obj: &Map<String, Value>, key: &str) -> Result<Option<u32>> {
    match get_u64(obj, key)? {
        None => Ok(None),
        Some(v) => u32::try_from(v)
            .map(Some)
            .map_err(|_| bad(&format!("{key} out of range"))),
    }
}

fn get_bool(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>> {
    match obj.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| bad(&format!("{key} is not a boolean"))),
    }
}

impl VersionCaps {
    /// Parses the JSON of a VERSION message. Unknown keys are ignored; known
    /// keys with the wrong type are refused. Empty text means all defaults.
    pub fn parse(json: &str) -> Result<Self> {
        let mut caps = VersionCaps::default();
        if json.trim().is_empty() {
            return Ok(caps);
        }
        if json.len() > MAX_JSON_LEN {
            return Err(bad("JSON too long"));
        }
        let root: Value =
            serde_json::from_str(json).map_err(|e| bad(&format!("invalid JSON: {e}")))?;
        let root = root.as_object().ok_or_else(|| bad("not a JSON object"))?;
        let obj = match root.get("capabilities") {
            None => return Ok(caps),
            Some(v) => v
                .as_object()
                .ok_or_else(|| bad("capabilities is not an object"))?,
        };
        if let Some(v) = get_u32(obj, "max_msg_fds")? {
            caps.max_msg_fds = v;
        }
        if let Some(v) = get_u32(obj, "max_data_xfer_size")? {
            caps.max_data_xfer_size = v;
        }
        if let Some(v) = get_u32(obj, "max_dma_maps")? {
            caps.max_dma_maps = v;
        }
        if let Some(v) = get_u64(obj, "pgsizes")? {
            caps.pgsizes = v;
        }
        if let Some(v) = get_bool(obj, "write_multiple")? {
            caps.write_multiple = v;
        }
        if let Some(m) = obj.get("migration") {
            let m = m
                .as_object()
                .ok_or_else(|| bad("migration is not an object"))?;
            caps.migration = Some(MigrationCaps {
                pgsize: get_u64(m, "pgsize")?.unwrap_or(4096),
                max_bitmap_size: get_u64(m, "max_bitmap_size")?.unwrap_or(0),
            });
        }
        if let Some(t) = obj.get("twin_socket") {
            let t = t
                .as_object()
                .ok_or_else(|| bad("twin_socket is not an object"))?;
            caps.twin_socket = get_bool(t, "supported")?.unwrap_or(false);
            caps.twin_fd_index = get_u32(t, "fd_index")?;
        }
        Ok(caps)
    }

    /// Renders these capabilities as VERSION JSON.
    pub fn to_json(&self) -> String {
        let mut obj = Map::new();
        obj.insert("max_msg_fds".into(), self.max_msg_fds.into());
        obj.insert("max_data_xfer_size".into(), self.max_data_xfer_size.into());
        obj.insert("max_dma_maps".into(), self.max_dma_maps.into());
        obj.insert("pgsizes".into(), self.pgsizes.into());
        if self.write_multiple {
            obj.insert("write_multiple".into(), true.into());
        }
        if let Some(m) = self.migration {
            let mut mo = Map::new();
            mo.insert("pgsize".into(), m.pgsize.into());
            mo.insert("max_bitmap_size".into(), m.max_bitmap_size.into());
            obj.insert("migration".into(), mo.into());
        }
        if self.twin_socket {
            let mut t = Map::new();
            t.insert("supported".into(), true.into());
            if let Some(i) = self.twin_fd_index {
                t.insert("fd_index".into(), i.into());
            }
            obj.insert("twin_socket".into(), t.into());
        }
        let mut root = Map::new();
        root.insert("capabilities".into(), obj.into());
        Value::Object(root).to_string()
    }

    /// The server's answer to a client's proposal: each limit is the smaller of
    /// the two sides', each feature on only if both offer it.
    pub fn accept(ours: &VersionCaps, theirs: &VersionCaps) -> VersionCaps {
        VersionCaps {
            max_msg_fds: ours.max_msg_fds,
            max_data_xfer_size: ours.max_data_xfer_size.min(theirs.max_data_xfer_size),
            max_dma_maps: ours.max_dma_maps.min(theirs.max_dma_maps),
            pgsizes: ours.pgsizes & theirs.pgsizes,
            write_multiple: ours.write_multiple && theirs.write_multiple,
            migration: if theirs.migration.is_some() {
                ours.migration
            } else {
                None
            },
            twin_socket: ours.twin_socket && theirs.twin_socket,
            twin_fd_index: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemus_proposal_and_ignores_unknown_keys() {
        let j = r#"{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,
            "max_dma_maps":65535,"migration":{"pgsize":4096,"max_bitmap_size":268435456},
            "write_multiple":true,"future_thing":[1,2]}}"#;
        let c = VersionCaps::parse(j).unwrap();
        assert_eq!(c.max_msg_fds, 16);
        assert!(c.write_multiple);
        assert_eq!(c.migration.unwrap().max_bitmap_size, 268435456);
        assert!(!c.twin_socket);
    }

    #[test]
    fn defaults_apply_when_absent() {
        let c = VersionCaps::parse("{}").unwrap();
        assert_eq!(c, VersionCaps::default());
        assert_eq!(VersionCaps::parse("").unwrap().max_msg_fds, 1);
    }

    #[test]
    fn wrong_types_invalid_huge_and_nested_are_refused() {
        assert!(VersionCaps::parse(r#"{"capabilities":{"max_msg_fds":"16"}}"#).is_err());
        assert!(VersionCaps::parse(r#"{"capabilities":{"max_msg_fds":-1}}"#).is_err());
        assert!(VersionCaps::parse(r#"{"capabilities":{"max_msg_fds":4294967296}}"#).is_err());
        assert!(VersionCaps::parse(r#"{"capabilities":[]}"#).is_err());
        assert!(VersionCaps::parse("{not json").is_err());
        assert!(VersionCaps::parse("[1]").is_err());
        let huge = format!(
            r#"{{"capabilities":{{"x":"{}"}}}}"#,
            "a".repeat(MAX_JSON_LEN)
        );
        assert!(VersionCaps::parse(&huge).is_err());
        let deep = format!("{}{}", "[".repeat(2000), "]".repeat(2000));
        assert!(VersionCaps::parse(&deep).is_err());
    }

    #[test]
    fn json_round_trips() {
        let c = VersionCaps {
            max_msg_fds: 8,
            write_multiple: true,
            twin_socket: true,
            twin_fd_index: Some(0),
            migration: Some(MigrationCaps {
                pgsize: 4096,
                max_bitmap_size: 1,
            }),
            ..VersionCaps::default()
        };
        assert_eq!(VersionCaps::parse(&c.to_json()).unwrap(), c);
    }

    #[test]
    fn accept_takes_the_smaller_limits_and_common_features() {
        let ours = VersionCaps {
            max_data_xfer_size: 1 << 20,
            write_multiple: true,
            twin_socket: true,
            ..Default::default()
        };
        let theirs = VersionCaps {
            max_data_xfer_size: 4096,
            write_multiple: false,
            twin_socket: true,
            ..Default::default()
        };
        let a = VersionCaps::accept(&ours, &theirs);
        assert_eq!(a.max_data_xfer_size, 4096);
        assert!(!a.write_multiple);
        assert!(a.twin_socket);
    }
}
