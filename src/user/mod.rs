//! vfio-user: the wire protocol, a client backend, and a device server.
//!
//! A device model served on a socket ([`server::Server::bind`] and
//! [`server::Server::serve`]) and driven through the client backend
//! ([`client::Client::connect`]), as [`DeviceIo`](crate::DeviceIo):
//!
//! ```
//! use vfio_io::caps::Capabilities;
//! use vfio_io::device::DeviceIo;
//! use vfio_io::models::edu::Edu;
//! use vfio_io::user::client::{Client, ClientConfig};
//! use vfio_io::user::server::{Server, ServerConfig};
//!
//! let dir = std::env::temp_dir().join(format!("vfio-io-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let path = dir.join("edu.sock");
//!
//! // The server listens once bound, so the client can connect right away.
//! let mut server = Server::bind(&path, Edu::new(), ServerConfig::default())?;
//! let stopper = server.stopper();
//! let serving = std::thread::spawn(move || server.serve());
//!
//! let dev = Client::connect(&path, ClientConfig::default())?;
//! assert_eq!(dev.backend_name(), "vfio-user");
//! assert!(dev.capabilities().contains(Capabilities::POSTED_WRITES));
//! assert!(!dev.capabilities().contains(Capabilities::DMA_BUF));
//!
//! // BAR0 (region 0) offset 0: edu's identification register.
//! let mut id = [0u8; 4];
//! dev.region_read(0, 0, &mut id)?;
//! assert_eq!(u32::from_ne_bytes(id), 0x010000ed);
//!
//! drop(dev);
//! stopper.stop();
//! serving.join().unwrap()?;
//! std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod client;
pub mod proto;
pub mod server;
pub mod version;
pub mod wire;
