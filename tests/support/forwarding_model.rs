//! A device model that forwards every call to an inner model, except where
//! its [`Hooks`] step in: for tests that change one or two things about a
//! real model (count its accesses, make it panic, record its DMA errors).
//! Include it with
//! `#[path = "support/forwarding_model.rs"] mod forwarding_model;`.

use vfio_io::device::{DeviceInfo, IrqInfo, RegionInfo};
use vfio_io::user::server::{DeviceContext, DeviceModel};
use vfio_io::Result;

/// `inner`, served with `hooks` in front of it.
pub struct Wrapped<M, H> {
    /// The model that does the work.
    pub inner: M,
    /// What the test changes.
    pub hooks: H,
}

impl<M, H> Wrapped<M, H> {
    /// `inner` with `hooks` in front of it.
    pub fn new(inner: M, hooks: H) -> Self {
        Wrapped { inner, hooks }
    }
}

/// A call that acts on the device, as the server made it.
pub enum Call<'a> {
    /// [`DeviceModel::region_read`].
    Read {
        index: u32,
        offset: u64,
        data: &'a mut [u8],
    },
    /// [`DeviceModel::region_write`].
    Write {
        index: u32,
        offset: u64,
        data: &'a [u8],
    },
    /// [`DeviceModel::reset`].
    Reset,
}

impl Call<'_> {
    /// Makes this call on `model` with `ctx`.
    pub fn apply<M: DeviceModel>(self, model: &mut M, ctx: &mut dyn DeviceContext) -> Result<()> {
        match self {
            Call::Read {
                index,
                offset,
                data,
            } => model.region_read(ctx, index, offset, data),
            Call::Write {
                index,
                offset,
                data,
            } => model.region_write(ctx, index, offset, data),
            Call::Reset => model.reset(ctx),
        }
    }
}

/// Where a test steps in; each hook forwards to the inner model unless
/// overridden.
pub trait Hooks<M: DeviceModel>: Send {
    /// [`DeviceModel::device_info`].
    fn device_info(&self, inner: &M) -> DeviceInfo {
        inner.device_info()
    }

    /// Region reads, region writes and resets.
    fn call(&mut self, inner: &mut M, ctx: &mut dyn DeviceContext, call: Call<'_>) -> Result<()> {
        call.apply(inner, ctx)
    }

    /// [`DeviceModel::device_feature`].
    fn device_feature(&mut self, inner: &mut M, flags: u32, data: &[u8]) -> Result<Vec<u8>> {
        inner.device_feature(flags, data)
    }
}

impl<M: DeviceModel, H: Hooks<M>> DeviceModel for Wrapped<M, H> {
    fn device_info(&self) -> DeviceInfo {
        self.hooks.device_info(&self.inner)
    }
    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        self.inner.region_info(index)
    }
    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        self.inner.irq_info(index)
    }
    fn region_read(
        &mut self,
        ctx: &mut dyn DeviceContext,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<()> {
        let call = Call::Read {
            index,
            offset,
            data,
        };
        self.hooks.call(&mut self.inner, ctx, call)
    }
    fn region_write(
        &mut self,
        ctx: &mut dyn DeviceContext,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        let call = Call::Write {
            index,
            offset,
            data,
        };
        self.hooks.call(&mut self.inner, ctx, call)
    }
    fn reset(&mut self, ctx: &mut dyn DeviceContext) -> Result<()> {
        self.hooks.call(&mut self.inner, ctx, Call::Reset)
    }
    fn device_feature(&mut self, flags: u32, data: &[u8]) -> Result<Vec<u8>> {
        self.hooks.device_feature(&mut self.inner, flags, data)
    }
    fn client_connected(&mut self) {
        self.inner.client_connected()
    }
    fn client_disconnected(&mut self) {
        self.inner.client_disconnected()
    }
    fn doorbells(&self) -> Vec<vfio_io::user::server::Doorbell> {
        self.inner.doorbells()
    }
}
