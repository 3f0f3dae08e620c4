//! vfio-user: the wire protocol, a client backend, and a device server.

pub mod server;
