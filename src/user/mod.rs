//! vfio-user: the wire protocol, a client backend, and a device server.

pub mod client;
pub mod proto;
pub mod server;
pub mod version;
pub mod wire;
