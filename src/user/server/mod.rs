//! The device side of vfio-user.

mod model;

pub use model::{DeviceContext, DeviceModel};
